//! Delta-state replication (issue 15, item 5): what one cart update costs on the wire and in
//! CPU for carts of 1, 100 and 1 000 items, before (the coordinator sends its whole new
//! state) and after (it sends the write's delta).
//!
//! For each cart size and operation it prints the bytes sent per remote replica, state and
//! delta (the state, marked, where the delta would not be smaller), then measures:
//! - the coordinator's work: `apply`, which decodes and encodes the whole cart, and
//!   `apply_with_delta`, which the node calls: it decodes only the items the write names
//!   and copies the others' bytes (`causal::Sparse`);
//! - `apply_for_delta`, which the node's coordinator calls now: the delta and the new
//!   context from the stored state, without making the new state (the node appends the
//!   delta to the stored value, `src/store`, "Deltas appended");
//! - a replica's work: merging the whole new state or the delta into its copy of the cart
//!   by `merge_into` (a delta: only the items it touches are decoded), and the delta by
//!   `merge`, which decodes both whole; and what the node's replica does now, check that
//!   the delta decodes (`read`) before it appends it.
//!
//! Carts are filled by three coordinators (`node-0..2`), a third of the items each, as a
//! cart written through several nodes is. The update is made at `node-0`.
//!
//! Run: `cargo bench --bench deltas -- --warm-up-time 1 --measurement-time 3`.
//! The figures and the command that produced them are in `docs/BENCHMARKS.md`.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use cartwheel_resolvers::cart::Cart;
use cartwheel_resolvers::{Op, Resolver, Stamp, Timestamp, Write};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

/// The cart sizes of the figures.
const SIZES: [usize; 3] = [1, 100, 1_000];

fn stamp(actor: usize) -> Stamp {
    Stamp {
        actor: format!("node-{actor}").into_bytes(),
        time: Timestamp { physical_ms: 1, logical: 0 },
    }
}

fn item(i: usize) -> Vec<u8> {
    format!("sku-{i:06}").into_bytes()
}

/// A cart of `n` items, one add each, from three coordinators.
fn cart(n: usize) -> Vec<u8> {
    let mut state: Option<Vec<u8>> = None;
    for i in 0..n {
        let write = Write::Update {
            ops: vec![Op::CartAdd { item: item(i), quantity: 1 }],
            context: Vec::new(),
        };
        state = Some(Cart.apply(state.as_deref(), &write, &stamp(i % 3)).unwrap());
    }
    state.unwrap()
}

/// The updates measured, on a cart of `n` items whose read context is `context`.
fn updates(n: usize, context: &[u8]) -> Vec<(&'static str, Write)> {
    let with = |ops: Vec<Op>| Write::Update { ops, context: context.to_vec() };
    vec![
        ("add a new item", with(vec![Op::CartAdd { item: item(n), quantity: 1 }])),
        ("add to an item", with(vec![Op::CartAdd { item: item(0), quantity: 2 }])),
        ("set a quantity", with(vec![Op::CartSetQuantity { item: item(0), quantity: 5 }])),
        ("remove an item", with(vec![Op::CartRemove(item(0))])),
    ]
}

fn bench_deltas(c: &mut Criterion) {
    let key_bytes = 16;
    println!("bytes sent per remote replica for one update (key of {key_bytes} bytes included):");
    println!("{:>6} {:<16} {:>10} {:>10}", "items", "update", "state", "delta");
    let mut group = c.benchmark_group("cart update");
    for n in SIZES {
        let state = cart(n);
        let context = Cart.read(&state).unwrap().context;
        // A replica's copy: the cart as the coordinator held it before the update.
        let replica = state.clone();
        for (name, write) in updates(n, &context) {
            let applied = Cart.apply_with_delta(Some(&state), &write, &stamp(0)).unwrap();
            // No delta where it would not be smaller: the state is sent.
            let (delta, what) = match applied.delta.clone() {
                Some(delta) => (delta, ""),
                None => (applied.state.clone(), " (state)"),
            };
            println!(
                "{n:>6} {name:<16} {:>10} {:>10}{what}",
                key_bytes + applied.state.len(),
                key_bytes + delta.len()
            );
            group.bench_with_input(BenchmarkId::new(format!("{name}: apply"), n), &n, |b, _| {
                b.iter(|| Cart.apply(Some(black_box(&state)), &write, &stamp(0)).unwrap())
            });
            group.bench_with_input(
                BenchmarkId::new(format!("{name}: apply_with_delta"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        Cart.apply_with_delta(Some(black_box(&state)), &write, &stamp(0)).unwrap()
                    })
                },
            );
            // The node's coordinator now: the delta and context only, from the stored
            // state, which it never makes new (`Resolver::apply_for_delta`).
            group.bench_with_input(
                BenchmarkId::new(format!("{name}: apply_for_delta"), n),
                &n,
                |b, _| {
                    b.iter(|| {
                        Cart.apply_for_delta(black_box(&state), &[], &write, &stamp(0)).unwrap()
                    })
                },
            );
            // The node's replica now: it checks that the delta decodes, then appends it.
            group.bench_with_input(
                BenchmarkId::new(format!("{name}: replica checks delta"), n),
                &n,
                |b, _| b.iter(|| Cart.read(black_box(&delta)).unwrap()),
            );
            // A replica merges into its stored copy by `merge_into`, which decodes only the
            // items a small incoming state touches; `merge` decodes both whole.
            group.bench_with_input(
                BenchmarkId::new(format!("{name}: replica merges state"), n),
                &n,
                |b, _| b.iter(|| Cart.merge_into(black_box(&replica), &applied.state).unwrap()),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{name}: replica merges delta"), n),
                &n,
                |b, _| b.iter(|| Cart.merge_into(black_box(&replica), &delta).unwrap()),
            );
            group.bench_with_input(
                BenchmarkId::new(format!("{name}: replica merges delta, whole"), n),
                &n,
                |b, _| b.iter(|| Cart.merge(black_box(&replica), &delta).unwrap()),
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_deltas);
criterion_main!(benches);
