//! # cart: the shopping cart, an observed-remove map from item to quantity
//!
//! The resolver cartwheel exists for: a cart must never lose an add, whatever the network
//! does. A cart is a [`DotMap`] (see [`crate::causal`]) whose keys are item ids and whose
//! dots carry a quantity: for each item, each actor (coordinating node) that added to it
//! holds **one** dot with the total it contributed since the item was last removed where it
//! was. The item's quantity is the sum of its actors' contributions; the cart's version
//! vector records every write seen. That makes the state:
//!
//! - **an observed-remove map**: removing an item drops the dots the client's context
//!   observed; an add concurrent with the remove has a dot the remover never saw, so the
//!   item stays (**add wins**) and no acknowledged add is lost;
//! - **a counter per item**: adds through different coordinators are separate dots, so
//!   concurrent adds of one item **add up** after merge; adds through one coordinator fold
//!   into its one dot (a fresh dot carrying the old total plus the new amount);
//! - **bounded by items × actors**: a coordinator's next write to an item replaces its dot,
//!   removed items leave nothing behind (the clock remembers them), so a cart that saw a
//!   hundred thousand operations is as large as one that saw ten on the same items.
//!
//! ## Operations
//! - [`Op::CartAdd`] `{item, quantity > 0}` adds to the coordinator's contribution. A
//!   quantity of 0 or less is [`ResolveError::BadRequest`].
//! - [`Op::CartRemove`] removes what the context observed of the item. No context (empty
//!   bytes) stands for the coordinator's state at that point of the write (as in `orset`): it
//!   removes the item as the coordinator holds it.
//! - [`Op::CartSetQuantity`] `{item, q ≥ 0}` is a remove followed, if `q > 0`, by an add of
//!   `q`: the client says "what I saw becomes q". A negative `q` is `BadRequest`.
//! - Operations of one write apply in order under one context; puts, deletes and other
//!   resolvers' operations are [`ResolveError::WrongOperation`].
//! - **read** returns items in byte order with their quantities (`None` for an empty cart)
//!   and the clock as the context (header with the `cart` tag, version 1, then the vector).
//!
//! ## What concurrency does to quantities (the trade-off)
//! A set-quantity is a reset of what was observed plus a new contribution, not a decrement:
//! two devices that concurrently set an item from 3 to 1 end with 2 (each contributed 1),
//! never with a negative quantity, which a decrement-based set (a plain PN-counter) would
//! give (3 - 2 - 2). And because each actor keeps *one* dot per item (the price of the size
//! bound), observation works per (item, actor): if actor B adds to an item concurrently with
//! a remove that had observed B's earlier contribution, B's new dot carries B's whole total,
//! so the item comes back with B's earlier quantity included. The item is never lost; its
//! quantity may be higher than a per-operation model would say. Riak's embedded counters
//! make the same trade.
//!
//! ## Quantities at the edges
//! A client sees an item's quantity as an `i64`. An add (or set-quantity) that would leave
//! the item's quantity, as the coordinator holds it, above `i64::MAX`, or the coordinator's
//! own contribution above `u64::MAX`, is refused with [`ResolveError::Overflow`] and produces
//! no state: it is never acknowledged and then silently cut to the limit. Replicas that each
//! stayed within the limit can still merge to more (merge is never refused); a **read** then
//! sums in 128 bits and shows the quantity **saturated** at `i64::MAX`, never wrapped, and a
//! further add of the item is refused until a set-quantity or remove brings it down.
//!
//! Body layout, version 1: the [`DotMap`] body of [`crate::causal`] with an 8-byte payload:
//!
//! | size   | field                                                             |
//! |--------|-------------------------------------------------------------------|
//! | ..     | clock (version vector)                                            |
//! | 4 + .. | item count, then per item: id (u32 length + bytes), dot count, dots (actor index u32, counter u64, quantity u64 ≥ 1) |
//! | 4 + .. | deferred remove count, then the deferred removes                  |

use crate::causal::{check_actor, decode_context, encode_context, DotMap, Payload};
use crate::codec::{Decoder, Encoder, Tag};
use crate::{Op, Read, ResolveError, Resolver, ResolverKind, Stamp, Value, Write};

/// Current body format version.
pub const VERSION: u8 = 1;

/// The shopping-cart resolver. See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cart;

/// One actor's contribution to an item's quantity; never 0 in a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Quantity(u64);

impl Payload for Quantity {
    const BYTES: usize = 8;

    fn encode(&self, e: &mut Encoder) {
        e.u64(self.0);
    }

    fn parse(bytes: &[u8]) -> Result<Self, ResolveError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        match u64::from_be_bytes(b) {
            0 => Err(ResolveError::Corrupt("cart dot with quantity 0".into())),
            q => Ok(Quantity(q)),
        }
    }
}

fn decode(bytes: &[u8]) -> Result<DotMap<'_, Quantity>, ResolveError> {
    let (mut d, version) = Decoder::new(bytes, Tag::Cart)?;
    if version != VERSION {
        return Err(ResolveError::Corrupt(format!("cart state version {version} is unknown")));
    }
    let map = DotMap::decode(&mut d)?;
    d.finish()?;
    Ok(map)
}

fn encode(map: &DotMap<'_, Quantity>) -> Vec<u8> {
    let mut e = Encoder::new(Tag::Cart, VERSION);
    map.encode(&mut e);
    e.finish()
}

/// Items in byte order with their summed quantities, saturated at `i64::MAX` (see
/// "Quantities at the edges").
fn items(map: &DotMap<'_, Quantity>) -> Vec<(Vec<u8>, i64)> {
    let mut out: Vec<(Vec<u8>, u128)> = Vec::new();
    for entry in map.entries() {
        match out.last_mut() {
            Some((item, total)) if item.as_slice() == entry.key => {
                *total += u128::from(entry.payload.0)
            }
            _ => out.push((entry.key.to_vec(), u128::from(entry.payload.0))),
        }
    }
    out.into_iter().map(|(item, q)| (item, i64::try_from(q).unwrap_or(i64::MAX))).collect()
}

/// The exact quantity of `item` (the sum of its actors' contributions), in 128 bits: a
/// state holds far fewer than 2^64 dots of one item.
fn quantity_of(map: &DotMap<'_, Quantity>, item: &[u8]) -> u128 {
    map.key_entries(item).iter().map(|e| u128::from(e.payload.0)).sum()
}

/// Check a write's operations before touching the state.
fn check_ops(ops: &[Op]) -> Result<(), ResolveError> {
    for op in ops {
        match op {
            Op::CartAdd { quantity, .. } if *quantity <= 0 => {
                return Err(ResolveError::BadRequest(format!(
                    "cart add of quantity {quantity}: it must be at least 1"
                )))
            }
            Op::CartSetQuantity { quantity, .. } if *quantity < 0 => {
                return Err(ResolveError::BadRequest(format!(
                    "cart quantity {quantity}: it must be 0 (remove) or more"
                )))
            }
            Op::CartAdd { .. } | Op::CartRemove(_) | Op::CartSetQuantity { .. } => {}
            other => {
                return Err(ResolveError::WrongOperation {
                    resolver: "cart",
                    operation: other.name(),
                })
            }
        }
    }
    Ok(())
}

/// Add `quantity` (checked positive by [`check_ops`]) to `actor`'s contribution to `item`;
/// [`ResolveError::Overflow`] if the contribution would pass `u64::MAX` or the item's
/// quantity `i64::MAX`.
fn add<'a>(
    map: &mut DotMap<'a, Quantity>,
    item: &'a [u8],
    actor: &'a [u8],
    quantity: i64,
) -> Result<(), ResolveError> {
    let q = quantity.unsigned_abs();
    let total = quantity_of(map, item) + u128::from(q);
    if total > i64::MAX as u128 {
        return Err(ResolveError::Overflow(format!(
            "adding {q} would make the item's quantity {total}, over {}",
            i64::MAX
        )));
    }
    map.write(item, actor, |old| {
        let contribution = old.map_or(0, |o| o.0).checked_add(q).ok_or_else(|| {
            ResolveError::Overflow(format!("this coordinator's quantity would pass {}", u64::MAX))
        })?;
        Ok(Quantity(contribution))
    })
}

impl Resolver for Cart {
    fn kind(&self) -> ResolverKind {
        ResolverKind::Cart
    }

    fn apply(
        &self,
        current: Option<&[u8]>,
        write: &Write,
        stamp: &Stamp,
    ) -> Result<Vec<u8>, ResolveError> {
        check_actor(&stamp.actor)?;
        let Write::Update { ops, context } = write else {
            return Err(ResolveError::WrongOperation { resolver: "cart", operation: write.name() });
        };
        check_ops(ops)?;
        let context = decode_context(Tag::Cart, VERSION, context)?;
        let mut map = match current {
            Some(bytes) => decode(bytes)?,
            None => DotMap::default(),
        };
        let actor = stamp.actor.as_slice();
        for op in ops {
            match op {
                Op::CartAdd { item, quantity } => add(&mut map, item, actor, *quantity)?,
                Op::CartRemove(item) => map.remove(item, context.as_ref())?,
                Op::CartSetQuantity { item, quantity } => {
                    map.remove(item, context.as_ref())?;
                    if *quantity > 0 {
                        add(&mut map, item, actor, *quantity)?;
                    }
                }
                _ => unreachable!("operations were checked above"),
            }
        }
        map.normalize();
        Ok(encode(&map))
    }

    fn merge(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, ResolveError> {
        let (ma, mb) = (decode(a)?, decode(b)?);
        Ok(encode(&ma.join(&mb)))
    }

    fn issued(&self, state: &[u8], actor: &[u8]) -> Result<u64, ResolveError> {
        Ok(decode(state)?.clock().get(actor))
    }

    fn max_timestamp_ms(&self, _state: &[u8]) -> Result<Option<u64>, ResolveError> {
        // Dots and a version vector, no clock readings: see the trait.
        Ok(None)
    }

    fn read(&self, state: &[u8]) -> Result<Read, ResolveError> {
        let map = decode(state)?;
        let items = items(&map);
        let value = (!items.is_empty()).then_some(Value::Cart(items));
        Ok(Read { context: encode_context(Tag::Cart, VERSION, map.clock()), value })
    }
}

#[cfg(test)]
mod tests {
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

    fn cart(state: &[u8]) -> Vec<(String, i64)> {
        match Cart.read(state).unwrap().value {
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

    /// Concurrent adds of one item through different coordinators add up; adds through one
    /// coordinator fold into one dot; items read in byte order.
    #[test]
    fn quantities_add_up() {
        let a = Cart
            .apply(None, &update(vec![add("pear", 1), add("apple", 2)], b""), &stamp("n1"))
            .unwrap();
        let a = Cart.apply(Some(&a), &update(vec![add("apple", 1)], b""), &stamp("n1")).unwrap();
        let b = Cart.apply(None, &update(vec![add("apple", 4)], b""), &stamp("n2")).unwrap();
        let m = Cart.merge(&a, &b).unwrap();
        assert_eq!(cart(&m), owned(&[("apple", 7), ("pear", 1)]));
        assert_eq!(decode(&m).unwrap().key_entries(b"apple").len(), 2, "one dot per actor");
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

    /// The documented per-(item, actor) granularity: a concurrent add by the actor whose
    /// earlier contribution the remove observed brings that contribution back too.
    #[test]
    fn concurrent_add_by_the_same_actor_revives_its_total() {
        let base = Cart.apply(None, &update(vec![add("x", 2)], b""), &stamp("n1")).unwrap();
        let removed =
            Cart.apply(Some(&base), &update(vec![remove("x")], &ctx(&base)), &stamp("n2")).unwrap();
        let added = Cart.apply(Some(&base), &update(vec![add("x", 1)], b""), &stamp("n1")).unwrap();
        assert_eq!(cart(&Cart.merge(&removed, &added).unwrap()), owned(&[("x", 3)]));
    }

    /// Set-quantity resets what was observed: sequentially it sets, concurrently two sets
    /// add up (never negative), and 0 removes the item.
    #[test]
    fn set_quantity() {
        let s = Cart.apply(None, &update(vec![add("x", 3)], b""), &stamp("n1")).unwrap();
        let one = Cart.apply(Some(&s), &update(vec![set("x", 1)], &ctx(&s)), &stamp("n2")).unwrap();
        assert_eq!(cart(&one), owned(&[("x", 1)]));
        let other =
            Cart.apply(Some(&s), &update(vec![set("x", 1)], &ctx(&s)), &stamp("n3")).unwrap();
        assert_eq!(cart(&Cart.merge(&one, &other).unwrap()), owned(&[("x", 2)]));
        let zero = Cart.apply(Some(&one), &update(vec![set("x", 0)], b""), &stamp("n1")).unwrap();
        assert_eq!(cart(&zero), owned(&[]));
        assert_eq!(Cart.merge(&one, &zero).unwrap(), zero);
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
            ahead =
                Cart.apply(Some(&ahead), &update(vec![add("x", 1)], b""), &stamp("n2")).unwrap();
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
        matches!(
            Cart.apply(current, &update(ops, b""), &stamp(actor)),
            Err(ResolveError::Overflow(_))
        )
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
        let set =
            Cart.apply(Some(&max), &update(vec![set("x", 3)], &ctx(&max)), &stamp("n2")).unwrap();
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
            assert!(matches!(
                Cart.apply(Some(&s), &w, &stamp("n1")),
                Err(ResolveError::BadContext(_))
            ));
        }
    }

    /// Encoding round-trips; every truncation is Corrupt.
    #[test]
    fn encoding() {
        let a =
            Cart.apply(None, &update(vec![add("x", 2), add("y", 1)], b""), &stamp("n1")).unwrap();
        let b = Cart.apply(None, &update(vec![add("x", 5)], b""), &stamp("n2")).unwrap();
        let s = Cart.merge(&a, &b).unwrap();
        assert_eq!(encode(&decode(&s).unwrap()), s);
        for cut in 0..s.len() {
            assert!(matches!(Cart.read(&s[..cut]), Err(ResolveError::Corrupt(_))));
        }
    }

    /// Encoded size bound for a cart of `items` items of `item_bytes` bytes each, written
    /// by `actors` actors of `actor_bytes` bytes each, with no deferred remove pending:
    /// header, clock, and per item its id and one dot per actor.
    fn size_bound(items: usize, item_bytes: usize, actors: usize, actor_bytes: usize) -> usize {
        2 + 4
            + actors * (1 + actor_bytes + 8)
            + 4
            + items * (4 + item_bytes + 4 + actors * (4 + 8 + 8))
            + 4
    }

    /// 100 000 operations by 3 actors on 10 items, with replication now and then: every
    /// state stays within the items × actors bound (plus its pending deferred removes), and
    /// once all replicas merge, within the bound without them: 747 bytes.
    #[test]
    fn size_is_bounded_by_items_and_actors() {
        const ITEMS: usize = 10;
        const ACTORS: usize = 3;
        let bound = size_bound(ITEMS, 2, ACTORS, 2);
        assert_eq!(bound, 747);
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
            let op = match next() % 10 {
                0..=5 => Op::CartAdd { item: item.into_bytes(), quantity: 1 + (next() % 3) as i64 },
                6 | 7 => {
                    Op::CartSetQuantity { item: item.into_bytes(), quantity: (next() % 4) as i64 }
                }
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
        let merged =
            states[1..].iter().fold(states[0].clone(), |acc, s| Cart.merge(&acc, s).unwrap());
        assert!(merged.len() <= bound, "{} > {bound}", merged.len());
        assert_eq!(decode(&merged).unwrap().deferred_count(), 0);
    }

    #[derive(Clone, Debug)]
    enum ModelOp {
        Add(usize, u8, u8),
        /// Remove at replica 0 with the context of replica `from`.
        Remove(usize, u8, usize),
        Sync(usize, usize),
    }

    fn model_op() -> impl Strategy<Value = ModelOp> {
        prop_oneof![
            3 => (0usize..3, 0u8..3, 1u8..4).prop_map(|(r, i, q)| ModelOp::Add(r, i, q)),
            1 => (0usize..3, 0u8..3, 0usize..3).prop_map(|(r, i, f)| ModelOp::Remove(r, i, f)),
            2 => (0usize..3, 0usize..3).prop_map(|(f, t)| ModelOp::Sync(f, t)),
        ]
    }

    proptest! {
        /// Against an add-wins model that tracks every add by id: after all replicas merge,
        /// an item is in the cart exactly when some add of it was not observed by a remove of
        /// it; its quantity is at least the sum of those adds and at most the sum of all its
        /// adds (the per-(item, actor) granularity may revive observed amounts), and exactly
        /// the sum of all adds when nothing was removed.
        #[test]
        fn membership_and_quantities_follow_the_model(ops in proptest::collection::vec(model_op(), 1..50)) {
            use std::collections::{BTreeMap, BTreeSet};
            let mut replicas: Vec<Option<Vec<u8>>> = vec![None; 3];
            // Each add: (item, id) -> quantity; per replica the add ids it has seen.
            let mut adds: BTreeMap<(u8, usize), u64> = BTreeMap::new();
            let mut seen: Vec<BTreeSet<(u8, usize)>> = vec![BTreeSet::new(); 3];
            let mut removed: BTreeSet<(u8, usize)> = BTreeSet::new();
            let mut any_remove = false;
            for (i, op) in ops.iter().enumerate() {
                match *op {
                    ModelOp::Add(r, item, q) => {
                        let w = update(vec![Op::CartAdd { item: vec![item], quantity: q.into() }], b"");
                        replicas[r] = Some(Cart.apply(replicas[r].as_deref(), &w, &stamp(&format!("n{r}"))).unwrap());
                        adds.insert((item, i), q.into());
                        seen[r].insert((item, i));
                    }
                    ModelOp::Remove(r, item, from) => {
                        let Some(from_state) = replicas[from].as_deref() else { continue };
                        let w = update(vec![Op::CartRemove(vec![item])], &ctx(from_state));
                        replicas[r] = Some(Cart.apply(replicas[r].as_deref(), &w, &stamp(&format!("n{r}"))).unwrap());
                        removed.extend(seen[from].iter().filter(|(x, _)| *x == item));
                        any_remove = true;
                    }
                    ModelOp::Sync(f, t) => {
                        if let Some(from) = replicas[f].clone() {
                            replicas[t] = Some(match &replicas[t] {
                                Some(to) => Cart.merge(to, &from).unwrap(),
                                None => from,
                            });
                            seen[t] = seen[t].union(&seen[f]).copied().collect();
                        }
                    }
                }
            }
            let states: Vec<Vec<u8>> = replicas.into_iter().flatten().collect();
            let Some(first) = states.first() else { return Ok(()) };
            let merged = states[1..].iter().fold(first.clone(), |acc, s| Cart.merge(&acc, s).unwrap());
            let got: BTreeMap<u8, i64> = match Cart.read(&merged).unwrap().value {
                Some(Value::Cart(items)) => items.into_iter().map(|(i, q)| (i[0], q)).collect(),
                None => BTreeMap::new(),
                other => panic!("unexpected {other:?}"),
            };
            let mut expected: BTreeMap<u8, i64> = BTreeMap::new();
            let mut all: BTreeMap<u8, i64> = BTreeMap::new();
            for ((item, id), q) in &adds {
                *all.entry(*item).or_default() += *q as i64;
                if !removed.contains(&(*item, *id)) {
                    *expected.entry(*item).or_default() += *q as i64;
                }
            }
            let got_items: BTreeSet<u8> = got.keys().copied().collect();
            let expected_items: BTreeSet<u8> = expected.keys().copied().collect();
            prop_assert_eq!(got_items, expected_items, "membership");
            if !any_remove {
                prop_assert_eq!(&got, &expected, "quantities add up");
            }
            for (item, q) in &got {
                prop_assert!(*q >= expected[item] && *q <= all[item], "quantity of {} is {}", item, q);
            }
        }
    }
}
