//! Resolver costs: `apply` (the coordinator's work per write) and `merge` (every replica's
//! work per replicated write, read repair and anti-entropy) as states grow in siblings, set
//! elements, cart items and actors. States are built through the public `Resolver` API, as
//! the node builds them, and each measurement includes decoding its inputs and encoding its
//! output (that is what a request pays).
//!
//! Run: `cargo bench --bench resolvers -- --warm-up-time 1 --measurement-time 3`.
//! The figures and the command that produced them are in `docs/BENCHMARKS.md`.

// `criterion_group!` defines an undocumented public function.
#![allow(missing_docs)]

use std::hint::black_box;

use cartwheel_resolvers::cart::Cart;
use cartwheel_resolvers::orset::OrSet;
use cartwheel_resolvers::pncounter::PnCounter;
use cartwheel_resolvers::siblings::Siblings;
use cartwheel_resolvers::{Op, Resolver, ResolverConfig, Stamp, Timestamp, Write};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

fn stamp(actor: &str) -> Stamp {
    Stamp { actor: actor.as_bytes().to_vec(), time: Timestamp { physical_ms: 1, logical: 0 } }
}

fn update(ops: Vec<Op>) -> Write {
    Write::Update { ops, context: Vec::new() }
}

fn item(i: usize) -> Vec<u8> {
    format!("sku-{i:06}").into_bytes()
}

fn actor(a: usize) -> String {
    format!("node-{a}")
}

/// A siblings state with `n` concurrent values of 100 bytes, from 3 coordinators.
fn siblings_state(resolver: &Siblings, n: usize) -> Vec<u8> {
    let mut state: Option<Vec<u8>> = None;
    for i in 0..n {
        let write = Write::Put { value: vec![i as u8; 100], context: Vec::new() };
        state = Some(resolver.apply(state.as_deref(), &write, &stamp(&actor(i % 3))).unwrap());
    }
    state.unwrap()
}

fn bench_siblings(c: &mut Criterion) {
    let resolver =
        Siblings::new(ResolverConfig { siblings_soft_max: 1_000, siblings_hard_max: 10_000 });
    let mut group = c.benchmark_group("siblings");
    for n in [1usize, 10, 100] {
        let state = siblings_state(&resolver, n);
        let context = resolver.read(&state).unwrap().context;
        let blind = Write::Put { value: vec![7; 100], context: Vec::new() };
        group.bench_with_input(BenchmarkId::new("apply blind put", n), &n, |b, _| {
            b.iter(|| resolver.apply(Some(black_box(&state)), &blind, &stamp("node-0")).unwrap())
        });
        let resolving = Write::Put { value: vec![7; 100], context };
        group.bench_with_input(BenchmarkId::new("apply put with context", n), &n, |b, _| {
            b.iter(|| {
                resolver.apply(Some(black_box(&state)), &resolving, &stamp("node-0")).unwrap()
            })
        });
        // The other replica has the same siblings plus one it coordinated.
        let other = resolver.apply(Some(&state), &blind, &stamp("node-1")).unwrap();
        group.bench_with_input(BenchmarkId::new("merge", n), &n, |b, _| {
            b.iter(|| resolver.merge(black_box(&state), black_box(&other)).unwrap())
        });
    }
    group.finish();
}

/// A set of `n` elements added round-robin by `actors` coordinators.
fn set_state(n: usize, actors: usize) -> Vec<u8> {
    let mut state: Option<Vec<u8>> = None;
    for i in 0..n {
        let write = update(vec![Op::SetAdd(item(i))]);
        state = Some(OrSet.apply(state.as_deref(), &write, &stamp(&actor(i % actors))).unwrap());
    }
    state.unwrap()
}

fn bench_orset(c: &mut Criterion) {
    let mut group = c.benchmark_group("orset");
    for n in [10usize, 100, 1_000] {
        let state = set_state(n, 3);
        let add = update(vec![Op::SetAdd(item(n / 2))]);
        group.bench_with_input(BenchmarkId::new("apply add", n), &n, |b, _| {
            b.iter(|| OrSet.apply(Some(black_box(&state)), &add, &stamp("node-0")).unwrap())
        });
        let remove = update(vec![Op::SetRemove(item(n / 2))]);
        group.bench_with_input(BenchmarkId::new("apply remove", n), &n, |b, _| {
            b.iter(|| OrSet.apply(Some(black_box(&state)), &remove, &stamp("node-0")).unwrap())
        });
        let other = OrSet.apply(Some(&state), &remove, &stamp("node-1")).unwrap();
        let other = OrSet.apply(Some(&other), &add, &stamp("node-2")).unwrap();
        group.bench_with_input(BenchmarkId::new("merge", n), &n, |b, _| {
            b.iter(|| OrSet.merge(black_box(&state), black_box(&other)).unwrap())
        });
    }
    group.finish();
}

fn bench_pncounter(c: &mut Criterion) {
    let mut group = c.benchmark_group("pncounter");
    for actors in [3usize, 16, 64] {
        let mut state: Option<Vec<u8>> = None;
        for a in 0..actors {
            let write = update(vec![Op::CounterIncrement(a as i64 - 5)]);
            state = Some(PnCounter.apply(state.as_deref(), &write, &stamp(&actor(a))).unwrap());
        }
        let state = state.unwrap();
        let incr = update(vec![Op::CounterIncrement(1)]);
        group.bench_with_input(BenchmarkId::new("apply", actors), &actors, |b, _| {
            b.iter(|| PnCounter.apply(Some(black_box(&state)), &incr, &stamp("node-1")).unwrap())
        });
        let other = PnCounter.apply(Some(&state), &incr, &stamp("node-2")).unwrap();
        group.bench_with_input(BenchmarkId::new("merge", actors), &actors, |b, _| {
            b.iter(|| PnCounter.merge(black_box(&state), black_box(&other)).unwrap())
        });
    }
    group.finish();
}

/// A cart of `n` items, each added once by every one of `actors` coordinators.
fn cart_state(n: usize, actors: usize) -> Vec<u8> {
    let mut state: Option<Vec<u8>> = None;
    for a in 0..actors {
        let ops = (0..n).map(|i| Op::CartAdd { item: item(i), quantity: 1 }).collect();
        state = Some(Cart.apply(state.as_deref(), &update(ops), &stamp(&actor(a))).unwrap());
    }
    state.unwrap()
}

/// Two replicas of `base` that diverged: one added to a tenth of the items, the other
/// removed another tenth (with the context of its read).
fn diverged_carts(base: &[u8], n: usize) -> (Vec<u8>, Vec<u8>) {
    let adds = (0..n / 10).map(|i| Op::CartAdd { item: item(i), quantity: 2 }).collect();
    let a = Cart.apply(Some(base), &update(adds), &stamp(&actor(0))).unwrap();
    let context = Cart.read(base).unwrap().context;
    let removes = (n / 2..n / 2 + n / 10).map(|i| Op::CartRemove(item(i))).collect();
    let b = Cart
        .apply(Some(base), &Write::Update { ops: removes, context }, &stamp(&actor(1)))
        .unwrap();
    (a, b)
}

fn bench_cart(c: &mut Criterion) {
    let mut group = c.benchmark_group("cart");
    for (n, actors) in [(10usize, 3usize), (100, 1), (100, 3), (100, 8), (1_000, 3)] {
        let id = format!("{n} items x {actors} actors");
        let base = cart_state(n, actors);
        let add = update(vec![Op::CartAdd { item: item(n / 2), quantity: 1 }]);
        group.bench_function(BenchmarkId::new("apply add", &id), |b| {
            b.iter(|| Cart.apply(Some(black_box(&base)), &add, &stamp(&actor(0))).unwrap())
        });
        let (a, b) = diverged_carts(&base, n);
        group.bench_function(BenchmarkId::new("merge", &id), |bench| {
            bench.iter(|| Cart.merge(black_box(&a), black_box(&b)).unwrap())
        });
        group.bench_function(BenchmarkId::new("read", &id), |bench| {
            bench.iter(|| Cart.read(black_box(&base)).unwrap())
        });
        // What a write's answer costs without a body, and the tree's tombstone test.
        group.bench_function(BenchmarkId::new("context", &id), |bench| {
            bench.iter(|| Cart.context(black_box(&base)).unwrap())
        });
        group.bench_function(BenchmarkId::new("is_tombstone", &id), |bench| {
            bench.iter(|| cartwheel_resolvers::cart::is_tombstone(black_box(&base)).unwrap())
        });
    }
    group.finish();

    // The headline figure: two diverged replicas of a 100-item cart written by 3 nodes.
    let base = cart_state(100, 3);
    let (a, b) = diverged_carts(&base, 100);
    c.bench_function("merge two 100-item carts", |bench| {
        bench.iter(|| Cart.merge(black_box(&a), black_box(&b)).unwrap())
    });
}

criterion_group!(benches, bench_siblings, bench_orset, bench_pncounter, bench_cart);
criterion_main!(benches);
