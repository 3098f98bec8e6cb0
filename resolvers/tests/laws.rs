//! The shared law suite: every resolver must satisfy the merge laws and converge.
//!
//! Each resolver is instantiated with `law_suite!(name, resolver, write_strategy)`. The suite
//! simulates three replicas (actors `n0`, `n1`, `n2`) that apply random client writes with
//! increasing HLC readings and now and then merge each other's states, as replication and read
//! repair would. Every state that arises is collected; then, on those states:
//!
//! - merge is commutative, associative and idempotent, as bytes;
//! - merging every state in any order, with duplicates, gives the same bytes (convergence);
//! - every state reads without error, and `apply` results descend from their input;
//! - states re-encode to themselves (merge with self is the identity, byte for byte);
//! - `issued` never goes back: an apply or a merge records at least as much of every actor
//!   as its inputs did (the node relies on it to tell which copies hold its own dots);
//! - `max_timestamp_ms` of a merge is the greater of its inputs' (the node refuses states
//!   stamped too far ahead by it, so a merge must not hide or invent a timestamp), and no
//!   state is stamped later than the latest clock reading of the run;
//! - random garbage, and real states with a flipped byte or cut short, never panic.
//!
//! The CRDTs run the delta laws on top (`delta_laws!`): replicas that send each write's
//! delta ([`Resolver::apply_with_delta`]) to the others, delivered out of order, some never,
//! with whole-state merges in between (anti-entropy), and for every write, with `old` its
//! input, `new` its state and `δ` its delta:
//!
//! - `apply_with_delta` gives the state `apply` gives, and `apply_for_delta`, where it
//!   answers, the same delta and the new state's context;
//! - `old ⊔ δ = new` and `new ⊔ δ = new`;
//! - for every replica state `y`, `x = old ⊔ y` descends from `old` and `x ⊔ δ = x ⊔ new`,
//!   and `merge_into(x, δ)`, the replica's merge into its stored state, gives those bytes;
//! - `δ` is shorter than `new`;
//! - deltas, and the states with gaps (dot clouds) they leave, obey the merge laws above,
//!   and merging every replica at the end gives the merge of every state ever written.
//!
//! A resolver whose merge broke a law (say, kept the left side on a tie) fails here.

use std::sync::Arc;

use cartwheel_resolvers::{
    Applied, HybridClock, Op, Resolver, ResolverConfig, ResolverKind, Stamp, Write,
};
use proptest::prelude::*;

/// One simulation step.
#[derive(Clone, Debug)]
enum Step {
    /// Replica `replica` coordinates a client write.
    Write { replica: usize, write: Write },
    /// Replica `to` merges in replica `from`'s state.
    Sync { from: usize, to: usize },
}

const REPLICAS: usize = 3;

fn steps(writes: BoxedStrategy<Write>) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        3 => (0..REPLICAS, writes).prop_map(|(replica, write)| Step::Write { replica, write }),
        1 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Sync { from, to }),
    ];
    proptest::collection::vec(step, 1..40)
}

/// Run the steps; return every state that existed. Writes the resolver refuses are skipped
/// (refusal is part of the contract, e.g. a sibling limit).
fn simulate(resolver: &dyn Resolver, steps: &[Step], seed: u64) -> Vec<Vec<u8>> {
    let wall = Arc::new(std::sync::atomic::AtomicU64::new(1_000 + seed % 1_000));
    let clocks: Vec<HybridClock> = (0..REPLICAS)
        .map(|_| {
            let wall = Arc::clone(&wall);
            HybridClock::with_wall_clock(move || wall.load(std::sync::atomic::Ordering::SeqCst))
        })
        .collect();
    let mut replicas: Vec<Option<Vec<u8>>> = vec![None; REPLICAS];
    let mut seen = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        // Time moves on irregularly: sometimes not at all, so logical counters and ties occur.
        if (seed >> (i % 64)) & 1 == 1 {
            wall.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        match step {
            Step::Write { replica, write } => {
                let other = replicas[(*replica + 1 + i % 2) % REPLICAS].as_deref();
                let write =
                    with_read_context(resolver, replicas[*replica].as_deref(), other, write, i);
                let stamp = Stamp {
                    actor: format!("n{replica}").into_bytes(),
                    time: clocks[*replica].now().unwrap(),
                };
                let current = replicas[*replica].as_deref();
                if let Ok(next) = resolver.apply(current, &write, &stamp) {
                    if let Some(current) = current {
                        let joined = resolver.merge(current, &next).unwrap();
                        assert_eq!(joined, next, "apply's result must descend from its input");
                        check_issued_grows(resolver, &[current], &next);
                    }
                    seen.push(next.clone());
                    replicas[*replica] = Some(next);
                }
            }
            Step::Sync { from, to } => {
                if let Some(from_state) = replicas[*from].clone() {
                    let merged = match &replicas[*to] {
                        Some(to_state) => {
                            let merged = resolver.merge(to_state, &from_state).unwrap();
                            check_issued_grows(resolver, &[to_state, &from_state], &merged);
                            merged
                        }
                        None => from_state,
                    };
                    seen.push(merged.clone());
                    replicas[*to] = Some(merged);
                }
            }
        }
    }
    seen
}

/// Run the steps with writes replicated as deltas: every write's delta (or its state, when
/// it has none) is queued for the other replicas; a `Sync` from a replica to itself takes
/// one queued delta, chosen by the seed (out of order), and other `Sync`s merge whole
/// states. Check the delta laws on every write and convergence at the end; return every
/// replica state and delta that existed.
fn simulate_deltas(
    resolver: &dyn Resolver,
    steps: &[Step],
    seed: u64,
) -> Result<Vec<Vec<u8>>, TestCaseError> {
    let clock = HybridClock::with_wall_clock(move || 1_000 + seed % 1_000);
    let mut replicas: Vec<Option<Vec<u8>>> = vec![None; REPLICAS];
    let mut in_flight: Vec<(usize, Vec<u8>)> = Vec::new();
    let (mut seen, mut written) = (Vec::new(), Vec::new());
    for (i, step) in steps.iter().enumerate() {
        match step {
            Step::Write { replica, write } => {
                let other = replicas[(*replica + 1 + i % 2) % REPLICAS].as_deref();
                let write =
                    with_read_context(resolver, replicas[*replica].as_deref(), other, write, i);
                let stamp =
                    Stamp { actor: format!("n{replica}").into_bytes(), time: clock.now().unwrap() };
                let old = replicas[*replica].clone();
                let Ok(Applied { state: new, delta }) =
                    resolver.apply_with_delta(old.as_deref(), &write, &stamp)
                else {
                    continue;
                };
                let plain = resolver.apply(old.as_deref(), &write, &stamp).unwrap();
                prop_assert_eq!(&plain, &new, "apply_with_delta's state is apply's");
                if let (Some(old), Some(delta)) = (&old, &delta) {
                    // The store's chain: the state alone, or with parts it already holds.
                    for parts in [&[][..], &[old.as_slice()][..]] {
                        let fast = resolver.apply_for_delta(old, parts, &write, &stamp).unwrap();
                        if let Some(fast) = fast {
                            prop_assert_eq!(&fast.delta, delta, "apply_for_delta's delta");
                            let context = resolver.context(&new).unwrap();
                            prop_assert_eq!(fast.context, context, "apply_for_delta's context");
                        }
                    }
                }
                if let Some(delta) = &delta {
                    prop_assert!(delta.len() < new.len(), "a delta is shorter than the state");
                    check_delta(resolver, old.as_deref(), &new, delta, &replicas)?;
                    seen.push(delta.clone());
                }
                let sent = delta.unwrap_or_else(|| new.clone());
                for to in (0..REPLICAS).filter(|to| to != replica) {
                    in_flight.push((to, sent.clone()));
                }
                written.push(new.clone());
                seen.push(new.clone());
                replicas[*replica] = Some(new);
            }
            Step::Sync { from, to } if from == to => {
                let mine: Vec<usize> =
                    (0..in_flight.len()).filter(|k| in_flight[*k].0 == *to).collect();
                if mine.is_empty() {
                    continue;
                }
                let (_, delta) = in_flight.remove(mine[(seed as usize ^ i) % mine.len()]);
                let merged = match &replicas[*to] {
                    Some(state) => resolver.merge(state, &delta).unwrap(),
                    None => delta,
                };
                seen.push(merged.clone());
                replicas[*to] = Some(merged);
            }
            Step::Sync { from, to } => {
                if let Some(from_state) = replicas[*from].clone() {
                    let merged = match &replicas[*to] {
                        Some(to_state) => resolver.merge(to_state, &from_state).unwrap(),
                        None => from_state,
                    };
                    seen.push(merged.clone());
                    replicas[*to] = Some(merged);
                }
            }
        }
    }
    let finals: Vec<Vec<u8>> = replicas.iter().flatten().cloned().collect();
    if !written.is_empty() {
        // Every write is kept by its coordinator, so the replicas hold them all between them.
        prop_assert_eq!(merge_all(resolver, &finals), merge_all(resolver, &written), "convergence");
    }
    Ok(seen)
}

/// The delta laws of one write from `old` to `new` with delta `delta`, against every
/// replica state `y` as `x = old ⊔ y`.
fn check_delta(
    resolver: &dyn Resolver,
    old: Option<&[u8]>,
    new: &[u8],
    delta: &[u8],
    replicas: &[Option<Vec<u8>>],
) -> Result<(), TestCaseError> {
    resolver.read(delta).unwrap();
    let merge = |a: &[u8], b: &[u8]| resolver.merge(a, b).unwrap();
    prop_assert_eq!(merge(new, delta), new.to_vec(), "new ⊔ δ = new");
    match old {
        Some(old) => prop_assert_eq!(merge(old, delta), new.to_vec(), "old ⊔ δ = new"),
        None => prop_assert_eq!(delta, new, "from nothing, the delta is the state"),
    }
    for y in replicas.iter().flatten() {
        let x = match old {
            Some(old) => merge(old, y),
            None => y.clone(),
        };
        prop_assert_eq!(merge(&x, delta), merge(&x, new), "x ⊔ δ = x ⊔ new for x ≥ old");
        // A replica merges a delta into its stored state by `merge_into`, which may decode
        // only what the delta touches: the same bytes.
        let into = resolver.merge_into(&x, delta).unwrap();
        prop_assert_eq!(into, merge(&x, delta), "merge_into(x, δ) = x ⊔ δ");
    }
    Ok(())
}

/// `result` records at least as much of every replica's actor as each of `inputs` does.
fn check_issued_grows(resolver: &dyn Resolver, inputs: &[&[u8]], result: &[u8]) {
    for replica in 0..REPLICAS {
        let actor = format!("n{replica}").into_bytes();
        let after = resolver.issued(result, &actor).unwrap();
        for input in inputs {
            let before = resolver.issued(input, &actor).unwrap();
            assert!(after >= before, "issued of n{replica} went back from {before} to {after}");
        }
    }
}

/// The client reads before it writes, most of the time: from the coordinator (steps 0 and 1
/// of every 4), or from another replica that may be ahead of or behind the coordinator (step
/// 2), and sends that context; otherwise it writes blind.
fn with_read_context(
    resolver: &dyn Resolver,
    current: Option<&[u8]>,
    other: Option<&[u8]>,
    write: &Write,
    i: usize,
) -> Write {
    let context = match (i % 4, current, other) {
        (0 | 1, Some(state), _) => resolver.read(state).unwrap().context,
        (2, _, Some(state)) => resolver.read(state).unwrap().context,
        _ => Vec::new(),
    };
    match write.clone() {
        Write::Put { value, .. } => Write::Put { value, context },
        Write::Delete { .. } => Write::Delete { context },
        Write::Update { ops, .. } => Write::Update { ops, context },
    }
}

fn merge_all(resolver: &dyn Resolver, states: &[Vec<u8>]) -> Vec<u8> {
    let mut iter = states.iter();
    let first = iter.next().unwrap().clone();
    iter.fold(first, |acc, s| resolver.merge(&acc, s).unwrap())
}

/// No state of a run is stamped later than the run's wall clock: the law suite's clocks
/// start at 1 000 to 1 999 ms and move at most one millisecond per step.
fn check_stamps(resolver: &dyn Resolver, states: &[Vec<u8>]) -> Result<(), TestCaseError> {
    for state in states {
        if let Some(ms) = resolver.max_timestamp_ms(state).unwrap() {
            prop_assert!((1_000..3_000).contains(&ms), "stamped at {} ms", ms);
        }
    }
    Ok(())
}

/// Check every law on the states a run produced.
fn check_laws(
    resolver: &dyn Resolver,
    states: &[Vec<u8>],
    shuffle_seed: u64,
) -> Result<(), TestCaseError> {
    for a in states {
        resolver.read(a).unwrap();
        prop_assert_eq!(&resolver.merge(a, a).unwrap(), a, "idempotence / canonical encoding");
    }
    // Pairs and triples, bounded so that long runs stay fast.
    let sample: Vec<&Vec<u8>> = states.iter().rev().take(8).collect();
    for a in &sample {
        for b in &sample {
            let ab = resolver.merge(a, b).unwrap();
            let ba = resolver.merge(b, a).unwrap();
            prop_assert_eq!(&ab, &ba, "commutativity");
            let stamp = |s: &[u8]| resolver.max_timestamp_ms(s).unwrap();
            prop_assert_eq!(stamp(&ab), stamp(a).max(stamp(b)), "max_timestamp_ms of a merge");
            for c in &sample {
                let left = resolver.merge(&ab, c).unwrap();
                let right = resolver.merge(a, &resolver.merge(b, c).unwrap()).unwrap();
                prop_assert_eq!(left, right, "associativity");
            }
        }
    }
    if !states.is_empty() {
        let in_order = merge_all(resolver, states);
        // Another order, with duplicates: reverse, rotate by the seed, and repeat some states.
        let mut shuffled: Vec<Vec<u8>> = states.iter().rev().cloned().collect();
        let rotate = (shuffle_seed as usize) % shuffled.len();
        shuffled.rotate_left(rotate);
        shuffled.extend(states.iter().step_by(2).cloned());
        prop_assert_eq!(in_order, merge_all(resolver, &shuffled), "convergence");
    }
    Ok(())
}

macro_rules! law_suite {
    ($name:ident, $resolver:expr, $writes:expr) => {
        mod $name {
            use super::*;

            fn resolver() -> Arc<dyn Resolver> {
                $resolver
            }

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(128))]

                /// Merge laws and convergence over states from random replicated histories.
                #[test]
                fn laws(steps in steps($writes.boxed()), seed in any::<u64>()) {
                    let resolver = resolver();
                    let states = simulate(&*resolver, &steps, seed);
                    check_laws(&*resolver, &states, seed)?;
                    check_stamps(&*resolver, &states)?;
                }

                /// Real states with a flipped byte or cut short never panic `read`, `merge`,
                /// `merge_into`, `apply` or `apply_with_delta`: they decode to a state or fail
                /// with a typed error.
                #[test]
                fn damaged_states_never_panic(
                    steps in steps($writes.boxed()),
                    seed in any::<u64>(),
                    flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..8),
                ) {
                    let resolver = resolver();
                    let states = simulate(&*resolver, &steps, seed);
                    for state in states.iter().rev().take(4) {
                        for (at, mask) in &flips {
                            let mut damaged = state.clone();
                            damaged[at % state.len()] ^= mask;
                            let cut = &state[..at % state.len()];
                            for bad in [damaged.as_slice(), cut] {
                                let _ = resolver.read(bad);
                                let _ = resolver.merge(state, bad);
                                let _ = resolver.merge(bad, state);
                                let _ = resolver.merge_into(state, bad);
                                let _ = resolver.merge_into(bad, state);
                                if let Some(Step::Write { write, .. }) = steps.first() {
                                    let stamp = Stamp {
                                        actor: b"n0".to_vec(),
                                        time: HybridClock::with_wall_clock(|| 1)
                                            .now()
                                            .unwrap(),
                                    };
                                    let _ = resolver.apply(Some(bad), write, &stamp);
                                    let _ = resolver.apply_with_delta(Some(bad), write, &stamp);
                                }
                            }
                        }
                    }
                }

                /// Arbitrary bytes never panic `read` or `merge`.
                #[test]
                fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
                    let resolver = resolver();
                    let _ = resolver.read(&bytes);
                    let _ = resolver.merge(&bytes, &bytes);
                }
            }
        }
    };
}

/// Puts and deletes with small values, so collisions happen.
fn value_writes() -> impl Strategy<Value = Write> {
    prop_oneof![
        4 => proptest::collection::vec(0u8..4, 0..3)
            .prop_map(|value| Write::Put { value, context: Vec::new() }),
        1 => Just(Write::Delete { context: Vec::new() }),
    ]
}

/// Operations of every resolver, for checking refusals do not break anything.
fn any_op() -> impl Strategy<Value = Op> {
    let item = proptest::collection::vec(0u8..3, 1..2);
    prop_oneof![
        (-5i64..5).prop_map(Op::CounterIncrement),
        item.clone().prop_map(Op::SetAdd),
        item.clone().prop_map(Op::SetRemove),
        (item.clone(), 1i64..4).prop_map(|(item, quantity)| Op::CartAdd { item, quantity }),
        item.clone().prop_map(Op::CartRemove),
        (item, 0i64..4).prop_map(|(item, quantity)| Op::CartSetQuantity { item, quantity }),
        Just(Op::CartClear),
        Just(Op::SetClear),
        Just(Op::CounterReset),
    ]
}

/// Updates of one to three operations, mostly from `ops` and now and then any operation (so
/// refusals are exercised too), and now and then a put or delete.
fn update_writes(ops: BoxedStrategy<Op>) -> impl Strategy<Value = Write> {
    let op = prop_oneof![8 => ops, 1 => any_op()];
    prop_oneof![
        10 => proptest::collection::vec(op, 1..4)
            .prop_map(|ops| Write::Update { ops, context: Vec::new() }),
        1 => value_writes(),
    ]
}

/// Counter increments, including the extremes.
fn counter_ops() -> BoxedStrategy<Op> {
    prop_oneof![
        8 => (-5i64..5).prop_map(Op::CounterIncrement),
        1 => prop_oneof![Just(i64::MIN), Just(i64::MAX)].prop_map(Op::CounterIncrement),
        2 => Just(Op::CounterReset),
    ]
    .boxed()
}

/// Set adds and removes over three elements.
fn set_ops() -> BoxedStrategy<Op> {
    let element = proptest::collection::vec(0u8..3, 1..2);
    prop_oneof![
        3 => element.clone().prop_map(Op::SetAdd),
        2 => element.prop_map(Op::SetRemove),
        1 => Just(Op::SetClear),
    ]
    .boxed()
}

/// Cart adds, removes, set-quantities and clears over three items, with some bad
/// quantities.
fn cart_ops() -> BoxedStrategy<Op> {
    let item = proptest::collection::vec(0u8..3, 1..2);
    prop_oneof![
        4 => (item.clone(), 1i64..4).prop_map(|(item, quantity)| Op::CartAdd { item, quantity }),
        2 => item.clone().prop_map(Op::CartRemove),
        2 => (item.clone(), 0i64..4)
            .prop_map(|(item, quantity)| Op::CartSetQuantity { item, quantity }),
        1 => (item, -2i64..1).prop_map(|(item, quantity)| Op::CartAdd { item, quantity }),
        1 => Just(Op::CartClear),
    ]
    .boxed()
}

/// Puts (mostly) and deletes, and now and then an update, which `siblings` refuses.
fn sibling_writes() -> impl Strategy<Value = Write> {
    prop_oneof![
        8 => value_writes(),
        1 => any_op().prop_map(|op| Write::Update { ops: vec![op], context: Vec::new() }),
    ]
}

macro_rules! delta_laws {
    ($name:ident, $resolver:expr, $writes:expr) => {
        mod $name {
            use super::*;

            proptest! {
                #![proptest_config(ProptestConfig::with_cases(128))]

                /// The delta laws on every write of random histories replicated by deltas,
                /// and the merge laws on the deltas and the states they leave.
                #[test]
                fn delta_laws(steps in steps($writes.boxed()), seed in any::<u64>()) {
                    let resolver: Arc<dyn Resolver> = $resolver;
                    let states = simulate_deltas(&*resolver, &steps, seed)?;
                    check_laws(&*resolver, &states, seed)?;
                }
            }
        }
    };
}

law_suite!(lww, Arc::new(cartwheel_resolvers::lww::Lww), value_writes());
law_suite!(
    siblings,
    cartwheel_resolvers::build(ResolverKind::Siblings, ResolverConfig::default()),
    sibling_writes()
);
// A hard limit of 2, so that refused puts happen between merges that go past it.
law_suite!(
    siblings_at_the_limit,
    Arc::new(cartwheel_resolvers::siblings::Siblings::new(ResolverConfig {
        siblings_soft_max: 1,
        siblings_hard_max: 2,
    })),
    sibling_writes()
);
law_suite!(orset, Arc::new(cartwheel_resolvers::orset::OrSet), update_writes(set_ops()));
law_suite!(
    pncounter,
    Arc::new(cartwheel_resolvers::pncounter::PnCounter),
    update_writes(counter_ops())
);
law_suite!(cart, Arc::new(cartwheel_resolvers::cart::Cart), update_writes(cart_ops()));

delta_laws!(orset_deltas, Arc::new(cartwheel_resolvers::orset::OrSet), update_writes(set_ops()));
delta_laws!(
    pncounter_deltas,
    Arc::new(cartwheel_resolvers::pncounter::PnCounter),
    update_writes(counter_ops())
);
delta_laws!(cart_deltas, Arc::new(cartwheel_resolvers::cart::Cart), update_writes(cart_ops()));

/// `lww` and `siblings` have no delta: the new state is the write, and it is sent whole.
#[test]
fn value_resolvers_send_the_state() {
    use cartwheel_resolvers::Timestamp;
    let stamp = Stamp { actor: b"n1".to_vec(), time: Timestamp { physical_ms: 10, logical: 0 } };
    let put = Write::Put { value: b"v".to_vec(), context: Vec::new() };
    for kind in [ResolverKind::Lww, ResolverKind::Siblings] {
        let resolver = cartwheel_resolvers::build(kind, ResolverConfig::default());
        let first = resolver.apply(None, &put, &stamp).unwrap();
        let applied = resolver.apply_with_delta(Some(&first), &put, &stamp).unwrap();
        assert_eq!(applied.delta, None, "{kind}");
        assert_eq!(applied.state, resolver.apply(Some(&first), &put, &stamp).unwrap(), "{kind}");
    }
}

/// States written before dot clouds decode, read and re-encode to the same bytes, and a
/// write with a delta applies to them. Method: a version 2 cart and a version 1 orset
/// built byte by byte from their format tables (clock {n1: 1}, item or element "a" with the
/// dot (n1, 1), an add of 2 for the cart, no deferred removes).
#[test]
fn states_before_clouds_still_decode() {
    use cartwheel_resolvers::{Timestamp, Value};
    let clock = [&[0, 0, 0, 1, 2][..], b"n1", &[0, 0, 0, 0, 0, 0, 0, 1]].concat();
    let item = [&[0, 0, 0, 1][..], &[0, 0, 0, 1], b"a", &[0, 0, 0, 1]].concat();
    let dot = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let cart = [&[5, 2][..], &clock, &item, &dot, &[0, 0, 0, 0, 0, 0, 0, 0, 2], &[0; 4]].concat();
    let set = [&[3, 1][..], &clock, &item, &dot, &[0; 4]].concat();
    let stamp = Stamp { actor: b"n2".to_vec(), time: Timestamp { physical_ms: 10, logical: 0 } };
    let cases = [
        (
            ResolverKind::Cart,
            cart,
            Value::Cart(vec![(b"a".to_vec(), 2)]),
            Op::CartAdd { item: b"b".to_vec(), quantity: 1 },
        ),
        (ResolverKind::Orset, set, Value::Set(vec![b"a".to_vec()]), Op::SetAdd(b"b".to_vec())),
    ];
    for (kind, state, value, op) in cases {
        let resolver = cartwheel_resolvers::build(kind, ResolverConfig::default());
        let read = resolver.read(&state).unwrap();
        assert_eq!(read.value, Some(value), "{kind}");
        assert_eq!(resolver.merge(&state, &state).unwrap(), state, "{kind}");
        let write = Write::Update { ops: vec![op], context: read.context };
        let applied = resolver.apply_with_delta(Some(&state), &write, &stamp).unwrap();
        assert_eq!(applied.state[1], state[1], "{kind}: no cloud, same version");
        let delta = applied.delta.expect("a delta smaller than the state");
        assert_eq!(resolver.merge(&state, &delta).unwrap(), applied.state, "{kind}");
    }
}

/// Every resolver name builds, and builds the resolver of that kind.
#[test]
fn build_covers_every_kind() {
    for kind in ResolverKind::ALL {
        let resolver = cartwheel_resolvers::build(kind, ResolverConfig::default());
        assert_eq!(resolver.kind(), kind);
    }
}

/// Every resolver refuses a context it did not produce with BadContext, on every kind of
/// write it takes, and takes the context its own read returned. Method: one state per
/// resolver, then each write kind with garbage, a truncated context, and another
/// resolver's context.
#[test]
fn every_resolver_refuses_a_garbage_context() {
    use cartwheel_resolvers::{ResolveError, Timestamp};
    let stamp = Stamp { actor: b"n1".to_vec(), time: Timestamp { physical_ms: 10, logical: 0 } };
    let writes = |kind: ResolverKind, context: Vec<u8>| -> Vec<Write> {
        let update = |op: Op| Write::Update { ops: vec![op], context: context.clone() };
        match kind {
            ResolverKind::Siblings | ResolverKind::Lww => vec![
                Write::Put { value: b"v".to_vec(), context: context.clone() },
                Write::Delete { context: context.clone() },
            ],
            ResolverKind::Orset => vec![
                update(Op::SetAdd(b"e".to_vec())),
                update(Op::SetRemove(b"e".to_vec())),
                update(Op::SetClear),
            ],
            ResolverKind::Pncounter => {
                vec![update(Op::CounterIncrement(1)), update(Op::CounterReset)]
            }
            ResolverKind::Cart => vec![
                update(Op::CartAdd { item: b"i".to_vec(), quantity: 1 }),
                update(Op::CartRemove(b"i".to_vec())),
                update(Op::CartSetQuantity { item: b"i".to_vec(), quantity: 2 }),
                update(Op::CartClear),
            ],
        }
    };
    let resolvers: Vec<Arc<dyn Resolver>> = ResolverKind::ALL
        .into_iter()
        .map(|kind| cartwheel_resolvers::build(kind, ResolverConfig::default()))
        .collect();
    let states: Vec<Vec<u8>> = resolvers
        .iter()
        .map(|r| {
            let first = writes(r.kind(), Vec::new()).remove(0);
            r.apply(None, &first, &stamp).unwrap()
        })
        .collect();
    for (i, resolver) in resolvers.iter().enumerate() {
        let kind = resolver.kind();
        let own = resolver.read(&states[i]).unwrap().context;
        for write in writes(kind, own.clone()) {
            resolver.apply(Some(&states[i]), &write, &stamp).unwrap();
        }
        let mut garbage = vec![b"garbage!".to_vec(), vec![0xff; 13]];
        if own.len() > 1 {
            garbage.push(own[..own.len() - 1].to_vec());
        }
        for (j, other) in resolvers.iter().enumerate() {
            let theirs = other.read(&states[j]).unwrap().context;
            if j != i && !theirs.is_empty() && theirs.len() != own.len() {
                garbage.push(theirs);
            }
        }
        for context in garbage {
            for write in writes(kind, context.clone()) {
                let refused = resolver.apply(Some(&states[i]), &write, &stamp);
                assert!(
                    matches!(refused, Err(ResolveError::BadContext(_))),
                    "{kind}: {write:?} gave {refused:?}"
                );
            }
        }
    }
}

/// Only lww states carry a timestamp: max_timestamp_ms reads it there and is None for the
/// others, which order causally.
#[test]
fn only_lww_states_carry_a_timestamp() {
    use cartwheel_resolvers::Timestamp;
    let time = Timestamp { physical_ms: 1_234, logical: 5 };
    let stamp = Stamp { actor: b"n1".to_vec(), time };
    for kind in ResolverKind::ALL {
        let resolver = cartwheel_resolvers::build(kind, ResolverConfig::default());
        let write = match kind {
            ResolverKind::Siblings | ResolverKind::Lww => {
                Write::Put { value: b"v".to_vec(), context: Vec::new() }
            }
            ResolverKind::Orset => {
                Write::Update { ops: vec![Op::SetAdd(b"e".to_vec())], context: Vec::new() }
            }
            ResolverKind::Pncounter => {
                Write::Update { ops: vec![Op::CounterIncrement(1)], context: Vec::new() }
            }
            ResolverKind::Cart => Write::Update {
                ops: vec![Op::CartAdd { item: b"i".to_vec(), quantity: 1 }],
                context: Vec::new(),
            },
        };
        let state = resolver.apply(None, &write, &stamp).unwrap();
        let expected = (kind == ResolverKind::Lww).then_some(1_234);
        assert_eq!(resolver.max_timestamp_ms(&state).unwrap(), expected, "{kind}");
    }
}
