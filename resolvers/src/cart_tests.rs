//! The cart resolver's unit tests (src/cart.rs holds the resolver).

use super::*;
use crate::causal::DEFERRED_REMOVES_MAX;
use crate::Timestamp;
use proptest::prelude::*;

fn stamp(actor: &str) -> Stamp {
    Stamp { actor: actor.as_bytes().to_vec(), time: Timestamp::default() }
}

fn update(ops: Vec<Op>, context: &[u8]) -> Write {
    Write::Update { ops, context: context.to_vec() }
}

fn add(item: &str, quantity: i64) -> Op {
    Op::CartAdd { item: item.as_bytes().to_vec(), quantity }
}

fn set(item: &str, quantity: i64) -> Op {
    Op::CartSetQuantity { item: item.as_bytes().to_vec(), quantity }
}

fn remove(item: &str) -> Op {
    Op::CartRemove(item.as_bytes().to_vec())
}

/// The items `state` reads as; every state a test reads is also checked against
/// [`is_tombstone`], which must say "not found" exactly when the read does, and against
/// [`Resolver::context`], which must give the read's context.
fn cart(state: &[u8]) -> Vec<(String, i64)> {
    let Read { value, context } = Cart.read(state).unwrap();
    assert_eq!(is_tombstone(state).unwrap(), value.is_none(), "is_tombstone against read");
    assert_eq!(Cart.context(state).unwrap(), context, "context against read");
    match value {
        Some(Value::Cart(items)) => {
            items.into_iter().map(|(i, q)| (String::from_utf8(i).unwrap(), q)).collect()
        }
        None => Vec::new(),
        other => panic!("unexpected value {other:?}"),
    }
}

fn ctx(state: &[u8]) -> Vec<u8> {
    Cart.read(state).unwrap().context
}

fn owned(items: &[(&str, i64)]) -> Vec<(String, i64)> {
    items.iter().map(|(i, q)| (i.to_string(), *q)).collect()
}

/// Concurrent adds of one item through different coordinators add up; each add is a dot
/// of its own; items read in byte order.
#[test]
fn quantities_add_up() {
    let a = Cart
        .apply(None, &update(vec![add("pear", 1), add("apple", 2)], b""), &stamp("n1"))
        .unwrap();
    let a = Cart.apply(Some(&a), &update(vec![add("apple", 1)], b""), &stamp("n1")).unwrap();
    let b = Cart.apply(None, &update(vec![add("apple", 4)], b""), &stamp("n2")).unwrap();
    let m = Cart.merge(&a, &b).unwrap();
    assert_eq!(cart(&m), owned(&[("apple", 7), ("pear", 1)]));
    assert_eq!(decode(&m).unwrap().key_entries(b"apple").len(), 3, "one dot per add");
}

/// A remove concurrent with an add keeps the item with the concurrent add's quantity
/// (add wins); a remove that observed everything removes the item everywhere.
#[test]
fn concurrent_add_and_remove_keeps_the_item() {
    let base = Cart.apply(None, &update(vec![add("x", 2)], b""), &stamp("n1")).unwrap();
    let removed =
        Cart.apply(Some(&base), &update(vec![remove("x")], &ctx(&base)), &stamp("n1")).unwrap();
    let added = Cart.apply(Some(&base), &update(vec![add("x", 3)], b""), &stamp("n2")).unwrap();
    assert_eq!(cart(&removed), owned(&[]));
    assert_eq!(cart(&Cart.merge(&removed, &added).unwrap()), owned(&[("x", 3)]));
    assert_eq!(cart(&Cart.merge(&added, &removed).unwrap()), owned(&[("x", 3)]));
    // Once the remover has seen the add, a remove with its context removes it all.
    let both = Cart.merge(&removed, &added).unwrap();
    let gone =
        Cart.apply(Some(&both), &update(vec![remove("x")], &ctx(&both)), &stamp("n3")).unwrap();
    assert_eq!(cart(&Cart.merge(&gone, &added).unwrap()), owned(&[]));
}

/// A remove that observed an actor's earlier add does not bring it back when the same
/// actor adds concurrently: only the concurrent add stays.
#[test]
fn an_observed_add_does_not_come_back_with_a_concurrent_add() {
    let base = Cart.apply(None, &update(vec![add("x", 2)], b""), &stamp("n1")).unwrap();
    let removed =
        Cart.apply(Some(&base), &update(vec![remove("x")], &ctx(&base)), &stamp("n2")).unwrap();
    let added = Cart.apply(Some(&base), &update(vec![add("x", 1)], b""), &stamp("n1")).unwrap();
    assert_eq!(cart(&Cart.merge(&removed, &added).unwrap()), owned(&[("x", 1)]));
    // The same through one coordinator: the remove arrives after the add, with the
    // context of a read before it.
    let late =
        Cart.apply(Some(&added), &update(vec![remove("x")], &ctx(&base)), &stamp("n1")).unwrap();
    assert_eq!(cart(&late), owned(&[("x", 1)]));
}

/// Set-quantity, as a shopper expects: sequentially it sets; two devices that set an
/// item from 3 to 1 concurrently read 1 (not 2), and to 1 and 4 read 4; an add
/// concurrent with a set counts on top of it; the add the set observed does not come
/// back, whichever coordinator made it; 0 removes the item.
#[test]
fn set_quantity() {
    let s = Cart.apply(None, &update(vec![add("x", 3)], b""), &stamp("n1")).unwrap();
    let one = Cart.apply(Some(&s), &update(vec![set("x", 1)], &ctx(&s)), &stamp("n2")).unwrap();
    assert_eq!(cart(&one), owned(&[("x", 1)]));
    let other = Cart.apply(Some(&s), &update(vec![set("x", 1)], &ctx(&s)), &stamp("n3")).unwrap();
    assert_eq!(cart(&Cart.merge(&one, &other).unwrap()), owned(&[("x", 1)]));
    let four = Cart.apply(Some(&s), &update(vec![set("x", 4)], &ctx(&s)), &stamp("n3")).unwrap();
    assert_eq!(cart(&Cart.merge(&one, &four).unwrap()), owned(&[("x", 4)]));
    assert_eq!(cart(&Cart.merge(&four, &one).unwrap()), owned(&[("x", 4)]));
    // Concurrent with an add of 2 by the coordinator of the observed add, and by another.
    for adder in ["n1", "n4"] {
        let added = Cart.apply(Some(&s), &update(vec![add("x", 2)], b""), &stamp(adder)).unwrap();
        assert_eq!(cart(&Cart.merge(&one, &added).unwrap()), owned(&[("x", 3)]), "{adder}");
        let both = Cart.merge(&Cart.merge(&one, &four).unwrap(), &added).unwrap();
        assert_eq!(cart(&both), owned(&[("x", 6)]), "{adder}");
    }
    // Sequentially, an add after a set adds to the set value; a set after both sets.
    let more = Cart.apply(Some(&one), &update(vec![add("x", 2)], b""), &stamp("n1")).unwrap();
    assert_eq!(cart(&more), owned(&[("x", 3)]));
    let again =
        Cart.apply(Some(&more), &update(vec![set("x", 5)], &ctx(&more)), &stamp("n1")).unwrap();
    assert_eq!(cart(&again), owned(&[("x", 5)]));
    assert_eq!(decode(&again).unwrap().key_entries(b"x").len(), 1);
    let zero = Cart.apply(Some(&one), &update(vec![set("x", 0)], b""), &stamp("n1")).unwrap();
    assert_eq!(cart(&zero), owned(&[]));
    assert_eq!(Cart.merge(&one, &zero).unwrap(), zero);
}

/// A coordinator's set that did not observe its own earlier set keeps the larger value,
/// as two concurrent sets through two coordinators read.
#[test]
fn a_set_replaces_its_coordinators_unobserved_set_with_the_larger_value() {
    let s = Cart.apply(None, &update(vec![add("x", 3)], b""), &stamp("n1")).unwrap();
    let four = Cart.apply(Some(&s), &update(vec![set("x", 4)], &ctx(&s)), &stamp("n2")).unwrap();
    let one = Cart.apply(Some(&four), &update(vec![set("x", 1)], &ctx(&s)), &stamp("n2")).unwrap();
    assert_eq!(cart(&one), owned(&[("x", 4)]));
    assert_eq!(decode(&one).unwrap().key_entries(b"x").len(), 1);
}

/// A coordinator keeps at most ADD_DOTS_MAX add dots of an item: the next add folds the
/// two oldest, and the quantity is unchanged by it.
#[test]
fn add_dots_are_bounded() {
    let mut s: Option<Vec<u8>> = None;
    for i in 1..=10 {
        let next = Cart.apply(s.as_deref(), &update(vec![add("x", 1)], b""), &stamp("n1")).unwrap();
        assert_eq!(cart(&next), owned(&[("x", i)]));
        assert_eq!(decode(&next).unwrap().key_entries(b"x").len(), (i as usize).min(ADD_DOTS_MAX));
        s = Some(next);
    }
}

/// Clear removes every item the context observed, and keeps items and amounts added
/// concurrently; no context clears what the coordinator holds; a context ahead of the
/// coordinator is a deferred clear, applied once the coordinator catches up.
#[test]
fn clear() {
    let s = Cart.apply(None, &update(vec![add("x", 3), add("y", 1)], b""), &stamp("n1")).unwrap();
    let cleared =
        Cart.apply(Some(&s), &update(vec![Op::CartClear], &ctx(&s)), &stamp("n2")).unwrap();
    assert_eq!(cart(&cleared), owned(&[]));
    let added =
        Cart.apply(Some(&s), &update(vec![add("x", 2), add("z", 1)], b""), &stamp("n1")).unwrap();
    assert_eq!(cart(&Cart.merge(&cleared, &added).unwrap()), owned(&[("x", 2), ("z", 1)]));
    let blind = Cart.apply(Some(&added), &update(vec![Op::CartClear], b""), &stamp("n3")).unwrap();
    assert_eq!(cart(&blind), owned(&[]));
    // Ahead: a client read `added`, the coordinator only holds `s`.
    let deferred =
        Cart.apply(Some(&s), &update(vec![Op::CartClear], &ctx(&added)), &stamp("n2")).unwrap();
    assert_eq!(cart(&deferred), owned(&[]));
    assert_eq!(decode(&deferred).unwrap().deferred_clears(), 1);
    let caught_up = Cart.merge(&deferred, &added).unwrap();
    assert_eq!(cart(&caught_up), owned(&[]));
    assert_eq!(decode(&caught_up).unwrap().deferred_count(), 0);
}

/// A version 1 state (one add amount per item and actor) decodes as a version 2 state
/// of add dots, reads the same, and is written back as version 2.
#[test]
fn version_1_states_decode() {
    let mut e = Encoder::new(Tag::Cart, VERSION_ADDS_ONLY);
    // Clock: n1 at 2, n2 at 1.
    e.u32(2).u8(2).raw(b"n1").u64(2).u8(2).raw(b"n2").u64(1);
    // Item x: n1's dot 2 of 3, n2's dot 1 of 4.
    e.u32(1).bytes(b"x").u32(2).u32(0).u64(2).u64(3).u32(1).u64(1).u64(4);
    e.u32(0);
    let old = e.finish();
    assert_eq!(cart(&old), owned(&[("x", 7)]));
    let merged = Cart.merge(&old, &old).unwrap();
    assert_eq!(merged[1], VERSION);
    assert_eq!(cart(&merged), owned(&[("x", 7)]));
    assert_eq!(Cart.read(&old).unwrap().context, Cart.read(&merged).unwrap().context);
    let set = Cart.apply(Some(&old), &update(vec![set("x", 1)], &ctx(&old)), &stamp("n1")).unwrap();
    assert_eq!(cart(&set), owned(&[("x", 1)]));
}

/// Bad quantities are BadRequest; other operations WrongOperation; nothing is stored.
#[test]
fn refusals() {
    for op in [add("x", 0), add("x", -1), set("x", -1)] {
        assert!(matches!(
            Cart.apply(None, &update(vec![op], b""), &stamp("n1")),
            Err(ResolveError::BadRequest(_))
        ));
    }
    for write in [
        Write::Put { value: b"v".to_vec(), context: Vec::new() },
        Write::Delete { context: Vec::new() },
        update(vec![add("x", 1), Op::SetAdd(b"x".to_vec())], b""),
    ] {
        assert!(matches!(
            Cart.apply(None, &write, &stamp("n1")),
            Err(ResolveError::WrongOperation { resolver: "cart", .. })
        ));
    }
}

/// A coordinator far behind the client's context refuses new deferred removes past the
/// limit, with BadContext.
#[test]
fn deferred_removes_are_bounded() {
    let mut ahead = Cart.apply(None, &update(vec![add("x", 1)], b""), &stamp("n2")).unwrap();
    let mut behind: Option<Vec<u8>> = None;
    for i in 0..DEFERRED_REMOVES_MAX {
        ahead = Cart.apply(Some(&ahead), &update(vec![add("x", 1)], b""), &stamp("n2")).unwrap();
        let w = update(vec![remove(&format!("i{i}"))], &ctx(&ahead));
        behind = Some(Cart.apply(behind.as_deref(), &w, &stamp("n1")).unwrap());
    }
    ahead = Cart.apply(Some(&ahead), &update(vec![add("x", 1)], b""), &stamp("n2")).unwrap();
    let w = update(vec![remove("x")], &ctx(&ahead));
    assert!(matches!(
        Cart.apply(behind.as_deref(), &w, &stamp("n1")),
        Err(ResolveError::BadContext(_))
    ));
    let caught_up = Cart.merge(behind.as_deref().unwrap(), &ahead).unwrap();
    assert_eq!(decode(&caught_up).unwrap().deferred_count(), 0);
}

fn overflows(current: Option<&[u8]>, ops: Vec<Op>, actor: &str) -> bool {
    matches!(Cart.apply(current, &update(ops, b""), &stamp(actor)), Err(ResolveError::Overflow(_)))
}

/// An add that would take an item's quantity past i64::MAX is Overflow and produces no
/// state, whichever actors contributed; a set-quantity that replaces what it observed
/// is taken; other items are unaffected.
#[test]
fn quantities_never_pass_the_limit() {
    let max = Cart.apply(None, &update(vec![add("x", i64::MAX)], b""), &stamp("n1")).unwrap();
    assert_eq!(cart(&max), owned(&[("x", i64::MAX)]));
    assert!(overflows(Some(&max), vec![add("x", 1)], "n1"));
    assert!(overflows(Some(&max), vec![add("x", 1)], "n2"));
    assert!(overflows(None, vec![add("x", i64::MAX), add("x", 1)], "n1"), "in one write");
    let other = Cart.apply(Some(&max), &update(vec![add("y", 5)], b""), &stamp("n2")).unwrap();
    assert_eq!(cart(&other), owned(&[("x", i64::MAX), ("y", 5)]));
    let set = Cart.apply(Some(&max), &update(vec![set("x", 3)], &ctx(&max)), &stamp("n2")).unwrap();
    assert_eq!(cart(&set), owned(&[("x", 3)]));
}

/// Two replicas each at the limit merge to a quantity past it: a read shows it
/// saturated at i64::MAX (never wrapped), and a further add is refused.
#[test]
fn a_merged_quantity_past_the_limit_reads_saturated() {
    let a = Cart.apply(None, &update(vec![add("x", i64::MAX)], b""), &stamp("n1")).unwrap();
    let b = Cart.apply(None, &update(vec![add("x", i64::MAX)], b""), &stamp("n2")).unwrap();
    let merged = Cart.merge(&a, &b).unwrap();
    assert_eq!(cart(&merged), owned(&[("x", i64::MAX)]));
    assert!(overflows(Some(&merged), vec![add("x", 1)], "n3"));
}

/// A context that does not decode, or is another resolver's, is BadContext.
#[test]
fn garbage_context_is_bad_context() {
    let s = Cart.apply(None, &update(vec![add("x", 1)], b""), &stamp("n1")).unwrap();
    let orset_context = crate::causal::encode_context(
        Tag::Orset,
        VERSION,
        &crate::causal::VersionVector::default(),
    );
    for garbage in [b"x".as_slice(), &ctx(&s)[..3], &orset_context] {
        let w = update(vec![remove("x")], garbage);
        assert!(matches!(Cart.apply(Some(&s), &w, &stamp("n1")), Err(ResolveError::BadContext(_))));
    }
}

/// Encoding round-trips; every truncation is Corrupt.
#[test]
fn encoding() {
    let a = Cart.apply(None, &update(vec![add("x", 2), add("y", 1)], b""), &stamp("n1")).unwrap();
    let b = Cart.apply(None, &update(vec![add("x", 5)], b""), &stamp("n2")).unwrap();
    let s = Cart.merge(&a, &b).unwrap();
    assert_eq!(encode(&decode(&s).unwrap()), s);
    for cut in 0..s.len() {
        assert!(matches!(Cart.read(&s[..cut]), Err(ResolveError::Corrupt(_))));
    }
}

/// Encoded size bound for a cart of `items` items of `item_bytes` bytes each, written
/// by `actors` actors of `actor_bytes` bytes each, with no deferred remove pending:
/// header, clock, and per item its id and, per actor, ADD_DOTS_MAX add dots and a set
/// dot.
fn size_bound(items: usize, item_bytes: usize, actors: usize, actor_bytes: usize) -> usize {
    2 + 4
        + actors * (1 + actor_bytes + 8)
        + 4
        + items * (4 + item_bytes + 4 + actors * (ADD_DOTS_MAX + 1) * (4 + 8 + 9))
        + 4
}

/// 100 000 operations by 3 actors on 10 items, with replication now and then: every
/// state stays within the items × actors bound (plus its pending deferred removes), and
/// once all replicas merge, within the bound without them: 2 667 bytes (ADD_DOTS_MAX add
/// dots and a set dot per item and actor).
#[test]
fn size_is_bounded_by_items_and_actors() {
    const ITEMS: usize = 10;
    const ACTORS: usize = 3;
    let bound = size_bound(ITEMS, 2, ACTORS, 2);
    assert_eq!(bound, 2_667);
    let mut replicas: Vec<Option<Vec<u8>>> = vec![None; ACTORS];
    // A small deterministic generator, so the test is reproducible.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..100_000 {
        let r = (next() % ACTORS as u64) as usize;
        let item = format!("i{}", next() % ITEMS as u64);
        let from = (next() % ACTORS as u64) as usize;
        let context = match next() % 3 {
            0 => replicas[from].as_deref().map(ctx).unwrap_or_default(),
            _ => Vec::new(),
        };
        let op = match next() % 50 {
            0..=29 => Op::CartAdd { item: item.into_bytes(), quantity: 1 + (next() % 3) as i64 },
            30..=39 => {
                Op::CartSetQuantity { item: item.into_bytes(), quantity: (next() % 4) as i64 }
            }
            40 => Op::CartClear,
            _ => Op::CartRemove(item.into_bytes()),
        };
        let actor = format!("n{r}");
        let write = update(vec![op], &context);
        if let Ok(s) = Cart.apply(replicas[r].as_deref(), &write, &stamp(&actor)) {
            let deferred = decode(&s).unwrap().deferred_count();
            // A deferred remove: a 3-actor context, one 2-byte key.
            assert!(s.len() <= bound + deferred * (4 + ACTORS * 11 + 4 + 6), "{}", s.len());
            replicas[r] = Some(s);
        }
        if next() % 8 == 0 {
            let (f, t) = ((next() % ACTORS as u64) as usize, (next() % ACTORS as u64) as usize);
            if let (Some(from), Some(to)) = (replicas[f].clone(), replicas[t].clone()) {
                replicas[t] = Some(Cart.merge(&to, &from).unwrap());
            }
        }
    }
    let states: Vec<Vec<u8>> = replicas.into_iter().flatten().collect();
    let merged = states[1..].iter().fold(states[0].clone(), |acc, s| Cart.merge(&acc, s).unwrap());
    assert!(merged.len() <= bound, "{} > {bound}", merged.len());
    assert_eq!(decode(&merged).unwrap().deferred_count(), 0);
}

#[derive(Clone, Debug)]
enum ModelOp {
    /// Replica `r` adds `q` of item `i`.
    Add(usize, u8, u8),
    /// Replica `r` sets item `i` to `q` with the context of replica `from` (`None`: no
    /// context).
    Set(usize, u8, u8, Option<usize>),
    /// Replica `r` removes item `i` with the context of `from`.
    Remove(usize, u8, Option<usize>),
    /// Replica `r` clears the cart with the context of `from`.
    Clear(usize, Option<usize>),
    /// Replica `to` merges replica `from`'s state.
    Sync(usize, usize),
    /// Replica `to` takes the `k`-th (modulo) of the deltas sent to it and not yet taken,
    /// when writes replicate by deltas: out of order, and some never.
    Deliver(usize, usize),
}

fn model_op() -> impl Strategy<Value = ModelOp> {
    let from = proptest::option::weighted(0.8, 0usize..3);
    prop_oneof![
        4 => (0usize..3, 0u8..3, 1u8..4).prop_map(|(r, i, q)| ModelOp::Add(r, i, q)),
        2 => (0usize..3, 0u8..3, 0u8..5, from.clone())
            .prop_map(|(r, i, q, f)| ModelOp::Set(r, i, q, f)),
        1 => (0usize..3, 0u8..3, from.clone()).prop_map(|(r, i, f)| ModelOp::Remove(r, i, f)),
        1 => (0usize..3, from).prop_map(|(r, f)| ModelOp::Clear(r, f)),
        3 => (0usize..3, 0usize..3).prop_map(|(f, t)| ModelOp::Sync(f, t)),
        3 => (0usize..3, 0usize..4).prop_map(|(t, k)| ModelOp::Deliver(t, k)),
    ]
}

/// The model: every add and set is an operation with an id. A replica knows the
/// operations it has seen, the ones it knows are gone (observed by a remove, set or
/// clear, or folded or replaced by their own coordinator), and their amounts (which a
/// fold makes grow). Removes take exactly the operations their context (the `seen` of
/// the replica the client read) observed, including ones the coordinator has not seen
/// yet. An item's quantity is the largest live set plus the live adds.
#[derive(Clone, Debug, Default)]
struct Model {
    seen: std::collections::BTreeSet<usize>,
    gone: std::collections::BTreeSet<usize>,
    amounts: std::collections::BTreeMap<usize, u64>,
}

/// What each operation id is: (item, replica, is a set).
type Ops = std::collections::BTreeMap<usize, (u8, usize, bool)>;

impl Model {
    fn live<'o>(&'o self, ops: &'o Ops) -> impl Iterator<Item = (usize, (u8, usize, bool))> + 'o {
        self.seen.iter().filter(|id| !self.gone.contains(id)).map(|id| (*id, ops[id]))
    }

    /// What `self` knows and `old` did not: the model of a delta. An operation whose
    /// amount grew (a fold) travels whole with it, as its dot does.
    fn since(&self, old: &Model) -> Model {
        let amounts: std::collections::BTreeMap<usize, u64> = self
            .amounts
            .iter()
            .filter(|(id, q)| old.amounts.get(id) != Some(q))
            .map(|(id, q)| (*id, *q))
            .collect();
        let mut seen: std::collections::BTreeSet<usize> =
            self.seen.difference(&old.seen).copied().collect();
        seen.extend(amounts.keys().filter(|id| self.seen.contains(id)));
        Model { seen, gone: self.gone.difference(&old.gone).copied().collect(), amounts }
    }

    fn merge(&mut self, other: &Model) {
        self.seen.extend(&other.seen);
        self.gone.extend(&other.gone);
        for (id, q) in &other.amounts {
            let mine = self.amounts.entry(*id).or_default();
            *mine = (*mine).max(*q);
        }
    }

    fn quantities(&self, ops: &Ops) -> std::collections::BTreeMap<u8, i64> {
        let mut sets = std::collections::BTreeMap::<u8, u64>::new();
        let mut adds = std::collections::BTreeMap::<u8, u64>::new();
        for (id, (item, _, is_set)) in self.live(ops) {
            if is_set {
                let v = sets.entry(item).or_default();
                *v = (*v).max(self.amounts[&id]);
            } else {
                *adds.entry(item).or_default() += self.amounts[&id];
            }
        }
        let mut out = std::collections::BTreeMap::new();
        for item in sets.keys().chain(adds.keys()) {
            let q = sets.get(item).copied().unwrap_or(0) + adds.get(item).copied().unwrap_or(0);
            out.insert(*item, q as i64);
        }
        out
    }
}

proptest! {
    /// Against the per-operation model above, with adds, sets, removes and clears with
    /// contexts from any replica (behind or ahead of the coordinator) or none, and
    /// merges in between: every replica, and the merge of all of them, reads exactly the
    /// model's items and quantities. The model folds a coordinator's two oldest adds of
    /// an item when it has more than ADD_DOTS_MAX, as the resolver does, and nothing else.
    #[test]
    fn carts_follow_the_per_operation_model(ops in proptest::collection::vec(model_op(), 1..60)) {
        check_model(&ops, false)?;
    }

    /// The same, with every write replicated as its delta to the other replicas, taken out
    /// of order and some never, and whole-state merges in between (anti-entropy): replicas
    /// with gaps in what they saw (dot clouds) read the model's quantities, and a context
    /// read from one of them observes exactly what it holds.
    #[test]
    fn carts_follow_the_model_with_deltas(ops in proptest::collection::vec(model_op(), 1..60)) {
        check_model(&ops, true)?;
    }
}

/// Run `ops` against the resolver and the model; `deltas`: writes replicate as deltas.
fn check_model(ops: &[ModelOp], deltas: bool) -> Result<(), TestCaseError> {
    let mut replicas: Vec<Option<Vec<u8>>> = vec![None; 3];
    let mut models: Vec<Model> = vec![Model::default(); 3];
    let mut what: Ops = Ops::new();
    // Deltas sent and not taken yet: (to, delta, its model).
    let mut in_flight: Vec<(usize, Vec<u8>, Model)> = Vec::new();
    for (id, op) in ops.iter().enumerate() {
        let (r, from) = match *op {
            ModelOp::Deliver(to, k) => {
                let mine: Vec<usize> =
                    (0..in_flight.len()).filter(|i| in_flight[*i].0 == to).collect();
                if let Some(&i) = mine.get(k % mine.len().max(1)) {
                    let (_, delta, m) = in_flight.remove(i);
                    replicas[to] = Some(match &replicas[to] {
                        Some(state) => merged_into(state, &delta),
                        None => delta,
                    });
                    models[to].merge(&m);
                    let got = quantities(replicas[to].as_deref().unwrap());
                    prop_assert_eq!(
                        &got,
                        &models[to].quantities(&what),
                        "replica {} after a delta",
                        to
                    );
                }
                continue;
            }
            ModelOp::Add(r, ..) => (r, None),
            ModelOp::Set(r, _, _, f) | ModelOp::Remove(r, _, f) | ModelOp::Clear(r, f) => (r, f),
            ModelOp::Sync(f, t) => {
                if let Some(from) = replicas[f].clone() {
                    replicas[t] = Some(match &replicas[t] {
                        Some(to) => merged_into(to, &from),
                        None => from,
                    });
                    let m = models[f].clone();
                    models[t].merge(&m);
                }
                continue;
            }
        };
        // The context, and what it observed (no context: the coordinator's state).
        let (context, observed) = match from {
            Some(f) => match replicas[f].as_deref() {
                Some(state) => (ctx(state), models[f].seen.clone()),
                None => continue,
            },
            None => (Vec::new(), models[r].seen.clone()),
        };
        let write = match *op {
            ModelOp::Add(_, i, q) => add_op(i, q.into()),
            ModelOp::Set(_, i, q, _) => Op::CartSetQuantity { item: vec![i], quantity: q.into() },
            ModelOp::Remove(_, i, _) => Op::CartRemove(vec![i]),
            ModelOp::Clear(..) => Op::CartClear,
            ModelOp::Sync(..) | ModelOp::Deliver(..) => unreachable!(),
        };
        let applied = applied_with_delta(
            replicas[r].as_deref(),
            &update(vec![write], &context),
            &stamp(&format!("n{r}")),
        );
        let whole = applied.delta.is_none();
        let sent = applied.delta.unwrap_or_else(|| applied.state.clone());
        replicas[r] = Some(applied.state);
        let before = models[r].clone();
        let m = &mut models[r];
        let observed_of = |item: Option<u8>| -> Vec<usize> {
            observed
                .iter()
                .copied()
                .filter(|o| what.get(o).is_some_and(|w| item.is_none_or(|i| w.0 == i)))
                .collect()
        };
        match *op {
            ModelOp::Add(_, i, q) => {
                what.insert(id, (i, r, false));
                m.seen.insert(id);
                m.amounts.insert(id, q.into());
                let mine: Vec<usize> =
                    m.live(&what).filter(|(_, w)| *w == (i, r, false)).map(|(o, _)| o).collect();
                if mine.len() > ADD_DOTS_MAX {
                    let older = m.amounts[&mine[0]];
                    *m.amounts.get_mut(&mine[1]).unwrap() += older;
                    m.gone.insert(mine[0]);
                }
            }
            ModelOp::Set(_, i, q, _) => {
                m.gone.extend(observed_of(Some(i)));
                if q > 0 {
                    let mut value = u64::from(q);
                    let own: Vec<usize> =
                        m.live(&what).filter(|(_, w)| *w == (i, r, true)).map(|(o, _)| o).collect();
                    for o in own {
                        value = value.max(m.amounts[&o]);
                        m.gone.insert(o);
                    }
                    what.insert(id, (i, r, true));
                    m.seen.insert(id);
                    m.amounts.insert(id, value);
                }
            }
            ModelOp::Remove(_, i, _) => m.gone.extend(observed_of(Some(i))),
            ModelOp::Clear(..) => m.gone.extend(observed_of(None)),
            ModelOp::Sync(..) | ModelOp::Deliver(..) => unreachable!(),
        }
        if deltas {
            // No delta (not smaller): the whole state went, and all its coordinator knew.
            // A delta carries what the write changed; the dots it removed from the
            // coordinator are in its clock (seen), and a remove it deferred (a context
            // ahead of the coordinator) travels whole, with everything its context observed.
            let delta_model =
                if whole {
                    models[r].clone()
                } else {
                    let mut m = models[r].since(&before);
                    m.seen.extend(m.gone.intersection(&before.seen).copied().collect::<Vec<_>>());
                    if decode(&sent).unwrap().deferred_count() > 0 {
                        let item = match *op {
                            ModelOp::Set(_, i, ..) | ModelOp::Remove(_, i, _) => Some(i),
                            _ => None,
                        };
                        m.gone.extend(observed.iter().copied().filter(|o| {
                            what.get(o).is_some_and(|w| item.is_none_or(|i| w.0 == i))
                        }));
                    }
                    m
                };
            for to in (0..3).filter(|to| *to != r) {
                in_flight.push((to, sent.clone(), delta_model.clone()));
            }
        }
        let got = quantities(replicas[r].as_deref().unwrap());
        prop_assert_eq!(&got, &models[r].quantities(&what), "replica {} after {:?}", r, op);
    }
    let states: Vec<Vec<u8>> = replicas.into_iter().flatten().collect();
    let Some(first) = states.first() else { return Ok(()) };
    let merged = states[1..].iter().fold(first.clone(), |acc, s| Cart.merge(&acc, s).unwrap());
    let mut all = Model::default();
    for m in &models {
        all.merge(m);
    }
    prop_assert_eq!(quantities(&merged), all.quantities(&what), "after every merge");
    Ok(())
}

fn add_op(item: u8, quantity: i64) -> Op {
    Op::CartAdd { item: vec![item], quantity }
}

/// The items of `state` by their one-byte names; checks [`is_tombstone`] and
/// [`Resolver::context`] against the read too, on every state the model test reads (clouds
/// and deferred removes included).
fn quantities(state: &[u8]) -> std::collections::BTreeMap<u8, i64> {
    let Read { value, context } = Cart.read(state).unwrap();
    assert_eq!(is_tombstone(state).unwrap(), value.is_none(), "is_tombstone against read");
    assert_eq!(Cart.context(state).unwrap(), context, "context against read");
    match value {
        Some(Value::Cart(items)) => items.into_iter().map(|(i, q)| (i[0], q)).collect(),
        None => std::collections::BTreeMap::new(),
        other => panic!("unexpected {other:?}"),
    }
}

/// `Cart.merge_into`, checked against the whole merge (`sparse::checked::merge_into`).
fn merged_into(stored: &[u8], incoming: &[u8]) -> Vec<u8> {
    sparse::checked::merge_into(&Cart, stored, incoming)
}

/// `Cart.apply_with_delta`, checked against the whole path (`sparse::checked`), and its
/// delta against the whole path's (decode the whole state, write, take the difference).
fn applied_with_delta(current: Option<&[u8]>, write: &Write, stamp: &Stamp) -> Applied {
    let applied = sparse::checked::apply_with_delta(&Cart, current, write, stamp);
    let (old, new) =
        apply_ops(sparse::decode_or_empty::<Cart>(current).unwrap(), write, stamp).unwrap();
    let whole = Applied::new(encode(&new), new.delta_from(&old).map(|delta| encode(&delta)));
    assert_eq!(applied.delta, whole.delta, "the sparse write's delta is the whole write's");
    applied
}

/// One step on a large cart: replica `r` adds to, sets or removes item `i` (of a few more
/// than the cart holds, so that new items fall between old ones and at either end), with the
/// context of replica `from`; the delta goes to the replica after `r`.
#[derive(Clone, Debug)]
struct LargeStep {
    r: usize,
    from: usize,
    item: usize,
    kind: u8,
}

fn large_step() -> impl Strategy<Value = LargeStep> {
    (0usize..3, 0usize..3, 0usize..90, 0u8..4).prop_map(|(r, from, item, kind)| LargeStep {
        r,
        from,
        item,
        kind,
    })
}

/// The item ids of the large-cart test: the cart starts with the even ones from 2 to 80; the
/// steps also name the odd ones, which fall between them, and some before and after.
fn large_item(n: usize) -> Vec<u8> {
    format!("item-{n:04}").into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// On carts of 40 items and more, written through three coordinators, every write and
    /// every merge of a delta or a whole state gives, by the paths that decode only what
    /// they touch, the bytes of the paths that decode the whole cart: adds (also of new items,
    /// which go between untouched ones), sets and removes with contexts from other replicas
    /// (ahead of the coordinator, too: deferred removes), deltas merged out of turn.
    #[test]
    fn sparse_paths_give_the_whole_paths_bytes(steps in proptest::collection::vec(large_step(), 1..40)) {
        let mut replicas: Vec<Vec<u8>> = Vec::new();
        let mut base: Option<Vec<u8>> = None;
        for i in 0..40 {
            let write = update(vec![Op::CartAdd { item: large_item(2 * i + 2), quantity: 1 }], &[]);
            let state = Cart.apply(base.as_deref(), &write, &stamp(&format!("n{}", i % 3))).unwrap();
            base = Some(state);
        }
        replicas.extend(std::iter::repeat_n(base.unwrap(), 3));
        // Each replica's state as a store keeps it: a stored state and the deltas appended
        // to it since, folded every fifth.
        let mut chains: Vec<(Vec<u8>, Vec<Vec<u8>>)> =
            replicas.iter().map(|state| (state.clone(), Vec::new())).collect();
        for (n, step) in steps.into_iter().enumerate() {
            let item = large_item(step.item);
            let op = match step.kind {
                0 | 1 => Op::CartAdd { item, quantity: 2 },
                2 => Op::CartSetQuantity { item, quantity: 5 },
                _ => Op::CartRemove(item),
            };
            let context = ctx(&replicas[step.from]);
            let write = update(vec![op], &context);
            let actor = stamp(&format!("n{}", step.r));
            if n == 0 {
                // All replicas alike, no deferred remove, no new actor: the sparse paths apply.
                let current = &replicas[step.r];
                let sparse = sparse::apply::<Cart>(current, &write, &actor).unwrap();
                let sent = sparse.expect("a sparse write").delta.expect("a delta");
                let to = (step.r + 1) % 3;
                prop_assert!(sparse::merge_into::<Cart>(&replicas[to], &sent).unwrap().is_some());
            }
            let applied = applied_with_delta(
                Some(&replicas[step.r]),
                &write,
                &actor,
            );
            // The write applied to the chain, without its state: the same delta and context.
            let (stored, parts) = &chains[step.r];
            let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
            let fast = Cart.apply_for_delta(stored, &parts, &write, &actor).unwrap();
            if let (Some(fast), Some(delta)) = (&fast, &applied.delta) {
                prop_assert_eq!(&fast.delta, delta, "apply_for_delta's delta");
                prop_assert_eq!(&fast.context, &Cart.context(&applied.state).unwrap());
            }
            let sent = applied.delta.unwrap_or_else(|| applied.state.clone());
            replicas[step.r] = applied.state;
            let to = (step.r + 1) % 3;
            replicas[to] = merged_into(&replicas[to], &sent);
            for (r, part) in [(step.r, &sent), (to, &sent)] {
                let chain = &mut chains[r];
                chain.1.push(part.clone());
                if chain.1.len() == 5 {
                    let folded = chain.1.drain(..).fold(chain.0.clone(), |acc, p| Cart.merge(&acc, &p).unwrap());
                    chain.0 = folded;
                }
                let whole = chain.1.iter().fold(chain.0.clone(), |acc, p| Cart.merge(&acc, p).unwrap());
                prop_assert_eq!(&whole, &replicas[r], "the chain folds to the replica's state");
            }
        }
        // And whole states into each other, in two orders: the replicas converge.
        let forward = replicas[1..].iter().fold(replicas[0].clone(), |acc, s| merged_into(&acc, s));
        let backward = replicas[..2].iter().rev().fold(replicas[2].clone(), |acc, s| merged_into(s, &acc));
        prop_assert_eq!(forward, backward);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// A stored cart with a flipped byte or cut short never panics the sparse paths, which
    /// skip the checks of the untouched items: they give a state or a typed error.
    #[test]
    fn damaged_stored_carts_never_panic_the_sparse_paths(
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..8),
    ) {
        let actor = stamp("n0");
        let mut state: Option<Vec<u8>> = None;
        for i in 0..12 {
            let write = update(vec![Op::CartAdd { item: large_item(i * 3), quantity: 1 }], &[]);
            state = Some(Cart.apply(state.as_deref(), &write, &stamp(&format!("n{}", i % 3))).unwrap());
        }
        let state = state.unwrap();
        let write = update(vec![add("item-0007", 1)], &ctx(&state));
        let delta = Cart.apply_with_delta(Some(&state), &write, &actor).unwrap().delta.unwrap();
        for (at, mask) in flips {
            let mut damaged = state.clone();
            damaged[at % state.len()] ^= mask;
            for bad in [damaged.as_slice(), &state[..at % state.len()]] {
                let _ = sparse::merge_into::<Cart>(bad, &delta);
                let _ = sparse::apply::<Cart>(bad, &write, &actor);
            }
        }
    }
}
