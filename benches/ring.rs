//! The ring's costs on every request: hashing a key (MD5 of bucket and key), finding its
//! partition and its preference list, and a rebalance when a node joins.
//!
//! Run: `cargo bench --bench ring`. Figures are in `docs/BENCHMARKS.md`.

// `criterion_group!`-style functions need no docs.
#![allow(missing_docs)]

use std::hint::black_box;

use cartwheel::ring::{key_hash, partition_of, Ownership};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn members(count: usize) -> Vec<String> {
    (1..=count).map(|i| format!("n{i}")).collect()
}

fn ring(count: usize, partitions: u32) -> Ownership {
    Ownership::single("n1", partitions).rebalance(&members(count), 3)
}

fn bench_ring(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring");
    let key = b"user:0000001234:cart";
    group.bench_function("key_hash_and_partition", |b| {
        b.iter(|| partition_of(key_hash(black_box("carts"), black_box(key)), 64))
    });
    for nodes in [3usize, 5, 16] {
        let ring = ring(nodes, 64);
        group.bench_with_input(
            BenchmarkId::new("preference_list_n3_plus_2", nodes),
            &ring,
            |b, r| {
                let mut partition = 0u16;
                b.iter(|| {
                    partition = (partition + 1) % 64;
                    black_box(r.preference_list(partition, 5).len())
                })
            },
        );
    }
    for (nodes, partitions) in [(3usize, 64u32), (16, 1024)] {
        let before = ring(nodes, partitions);
        let grown = members(nodes + 1);
        group.bench_function(
            BenchmarkId::new("rebalance_on_join", format!("{nodes}+1 nodes, Q={partitions}")),
            |b| b.iter(|| black_box(before.rebalance(&grown, 3).epoch)),
        );
    }
    group.finish();
}

criterion_group!(benches, bench_ring);
criterion_main!(benches);
