//! # cart: the shopping cart, an observed-remove map from item to quantity
//!
//! The resolver cartwheel exists for: a cart must never lose an add, whatever the network
//! does. A cart is a [`DotMap`] (see [`crate::causal`]) whose keys are item ids and whose
//! dots are the writes that gave the item its quantity. A dot carries either an **add**
//! (an amount) or a **set** (a value, from a set-quantity). An item's quantity is
//!
//! ```text
//! quantity = (the largest value of its live set dots, or 0 if none) + (the sum of its live add dots)
//! ```
//!
//! and the cart's version vector records every write seen. That makes the state:
//!
//! - **an observed-remove map**: removing an item drops the dots the client's context
//!   observed; an add concurrent with the remove has a dot the remover never saw, so the
//!   item stays (**add wins**) and no acknowledged add is lost;
//! - **a counter per item**: adds are dots of their own, so concurrent adds of one item
//!   through any coordinators **add up** after merge;
//! - **a register per item for set-quantity**: a set replaces what it observed with one set
//!   dot; concurrent sets leave several set dots, and the item reads the **largest** value
//!   set (one of the values a shopper chose, never their sum), with the adds concurrent
//!   with the sets on top;
//! - **bounded by items × actors**: each coordinator keeps at most [`ADD_DOTS_MAX`] add
//!   dots and one set dot per item (below), removed items leave nothing behind (the clock
//!   remembers them), so a cart that saw a hundred thousand operations is as large as one
//!   that saw ten on the same items.
//!
//! ## Operations
//! - [`Op::CartAdd`] `{item, quantity > 0}` gives the item a fresh add dot of that amount.
//!   A quantity of 0 or less is [`ResolveError::BadRequest`].
//! - [`Op::CartRemove`] removes what the context observed of the item. No context (empty
//!   bytes) stands for the coordinator's state at that point of the write (as in `orset`): it
//!   removes the item as the coordinator holds it.
//! - [`Op::CartSetQuantity`] `{item, q ≥ 0}` removes what the context observed of the item
//!   (adds and earlier sets), then, if `q > 0`, writes a set dot of value `q`: the client
//!   says "what I saw becomes q". Sequentially that sets the quantity to `q`; two devices
//!   that concurrently set an item from 3 to 1 read 1; one that sets 1 while another sets
//!   4 reads 4; an add concurrent with a set counts on top of it (set 1, add 2: 3); an add
//!   the set observed does not come back. A negative `q` is `BadRequest`.
//! - [`Op::CartClear`] removes every item the context observed, as a remove of each
//!   (items and amounts added concurrently stay); no context clears what the coordinator
//!   holds. A context ahead of the coordinator becomes a deferred clear.
//! - Operations of one write apply in order under one context; puts, deletes and other
//!   resolvers' operations are [`ResolveError::WrongOperation`].
//! - **read** returns items in byte order with their quantities (`None` for an empty cart)
//!   and the clock as the context (header with the `cart` tag, context version 1, then the
//!   vector).
//!
//! ## Bounding the dots, and what it costs
//! A coordinator's add to an item is a new dot rather than a bigger old one, because a
//! remove or set must be able to tell the adds it observed from the ones it did not: had
//! the coordinator folded its earlier contribution into the new dot, a set that observed
//! the earlier one would see it come back with the concurrent add. To keep the size bounded,
//! a coordinator keeps at most [`ADD_DOTS_MAX`] add dots per item: one more folds its two
//! oldest into the newer of them (that dot's amount grows; merge keeps the larger amount of
//! a dot). A remove or set is therefore exact for every context fewer than
//! [`ADD_DOTS_MAX`] adds (by one coordinator, to that item) behind; a context further behind
//! that observed the older half of a folded pair and not the newer sees the older amount
//! come back with it. The item is never lost and the quantity is never lower than the
//! operations say; it can only be higher, in that case. A coordinator also keeps one set dot
//! per item: a set replaces its own earlier set that the context did not observe, taking
//! the larger of the two values, which is what the two concurrent sets would read anyway.
//!
//! ## Quantities at the edges
//! A client sees an item's quantity as an `i64`. An add (or set-quantity) that would leave
//! the item's quantity, as the coordinator holds it, above `i64::MAX`, or one dot's amount
//! above `u64::MAX`, is refused with [`ResolveError::Overflow`] and produces no state: it is
//! never acknowledged and then silently cut to the limit. Replicas that each stayed within
//! the limit can still merge to more (merge is never refused); a **read** then sums in 128
//! bits and shows the quantity **saturated** at `i64::MAX`, never wrapped, and a further add
//! of the item is refused until a set-quantity or remove brings it down.
//!
//! ## Encoding
//! Body layout, version 2: the [`DotMap`] body of [`crate::causal`] with a 9-byte payload
//! (dots of one item ascending by actor, then counter; deferred clears allowed):
//!
//! | size   | field                                                             |
//! |--------|-------------------------------------------------------------------|
//! | ..     | clock (version vector)                                            |
//! | 4 + .. | item count, then per item: id (u32 length + bytes), dot count, dots (actor index u32, counter u64, kind u8: 0 add / 1 set, amount or value u64 ≥ 1) |
//! | 4 + .. | deferred remove count, then the deferred removes                  |
//!
//! Version 1 (before set dots) had an 8-byte payload, the amount of an add dot, one dot per
//! (item, actor), and no deferred clears. It decodes as a version 2 state whose dots are all
//! adds, and is written back as version 2. Contexts did not change (version 1).

use crate::causal::{check_actor, decode_context, encode_context, DotMap, Payload};
use crate::codec::{Decoder, Encoder, Tag};
use crate::{Op, Read, ResolveError, Resolver, ResolverKind, Stamp, Value, Write};

/// Current body format version.
pub const VERSION: u8 = 2;

/// The body format version before set dots: add amounts only, one dot per (item, actor).
pub const VERSION_ADDS_ONLY: u8 = 1;

/// The version of the contexts a read returns (a version vector).
pub const CONTEXT_VERSION: u8 = 1;

/// Most add dots one coordinator keeps for one item; one more folds its two oldest (see
/// "Bounding the dots"). 3: a set or remove is exact for contexts up to two of one
/// coordinator's adds behind, and a cart is at most about three times as large as with one
/// dot per (item, actor).
pub const ADD_DOTS_MAX: usize = 3;

// Folding needs two add dots to fold.
const _: () = assert!(ADD_DOTS_MAX >= 2);

/// The shopping-cart resolver. See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cart;

/// What one dot of an item carries; its number is never 0 in a state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Dot {
    /// Adds: this many.
    Add(u64),
    /// A set-quantity to this value.
    Set(u64),
}

impl Payload for Dot {
    const BYTES: usize = 1 + 8;

    fn encode(&self, e: &mut Encoder) {
        match self {
            Dot::Add(n) => e.u8(0).u64(*n),
            Dot::Set(n) => e.u8(1).u64(*n),
        };
    }

    fn parse(bytes: &[u8]) -> Result<Self, ResolveError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[1..]);
        match (bytes[0], u64::from_be_bytes(b)) {
            (_, 0) => Err(ResolveError::Corrupt("cart dot of 0".into())),
            (0, n) => Ok(Dot::Add(n)),
            (1, n) => Ok(Dot::Set(n)),
            (kind, _) => Err(ResolveError::Corrupt(format!("cart dot of kind {kind}"))),
        }
    }
}

/// A version 1 dot: an add amount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct AddsOnly(u64);

impl Payload for AddsOnly {
    const BYTES: usize = 8;

    fn encode(&self, e: &mut Encoder) {
        e.u64(self.0);
    }

    fn parse(bytes: &[u8]) -> Result<Self, ResolveError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(bytes);
        match u64::from_be_bytes(b) {
            0 => Err(ResolveError::Corrupt("cart dot with quantity 0".into())),
            q => Ok(AddsOnly(q)),
        }
    }
}

fn decode(bytes: &[u8]) -> Result<DotMap<'_, Dot>, ResolveError> {
    let (mut d, version) = Decoder::new(bytes, Tag::Cart)?;
    let map = match version {
        VERSION => DotMap::decode(&mut d)?,
        VERSION_ADDS_ONLY => {
            let old: DotMap<'_, AddsOnly> = DotMap::decode(&mut d)?;
            let one_per_actor =
                old.entries().windows(2).all(|w| (w[0].key, w[0].actor) != (w[1].key, w[1].actor));
            if old.deferred_clears() > 0 || !one_per_actor {
                return Err(ResolveError::Corrupt("cart version 1 state of version 2".into()));
            }
            old.map_payloads(|AddsOnly(q)| Dot::Add(q))
        }
        _ => return Err(ResolveError::Corrupt(format!("cart state version {version} is unknown"))),
    };
    d.finish()?;
    Ok(map)
}

fn encode(map: &DotMap<'_, Dot>) -> Vec<u8> {
    let mut e = Encoder::new(Tag::Cart, VERSION);
    map.encode(&mut e);
    e.finish()
}

/// The exact quantity of an item from its dots, in 128 bits: a state holds far fewer than
/// 2^64 dots of one item.
fn quantity<'e>(dots: impl IntoIterator<Item = &'e Dot>) -> u128 {
    let (mut set, mut added) = (0u128, 0u128);
    for dot in dots {
        match dot {
            Dot::Set(v) => set = set.max(u128::from(*v)),
            Dot::Add(n) => added += u128::from(*n),
        }
    }
    set + added
}

/// Items in byte order with their quantities, saturated at `i64::MAX` (see "Quantities at
/// the edges").
fn items(map: &DotMap<'_, Dot>) -> Vec<(Vec<u8>, i64)> {
    let mut out = Vec::new();
    let mut rest = map.entries();
    while let Some(first) = rest.first() {
        let n = rest.iter().take_while(|e| e.key == first.key).count();
        let q = quantity(rest[..n].iter().map(|e| &e.payload));
        out.push((first.key.to_vec(), i64::try_from(q).unwrap_or(i64::MAX)));
        rest = &rest[n..];
    }
    out
}

/// The exact quantity of `item` as `map` holds it.
fn quantity_of(map: &DotMap<'_, Dot>, item: &[u8]) -> u128 {
    quantity(map.key_entries(item).iter().map(|e| &e.payload))
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
            Op::CartAdd { .. } | Op::CartRemove(_) | Op::CartSetQuantity { .. } | Op::CartClear => {
            }
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

/// Refuse a write that would leave `item`'s quantity above `i64::MAX`.
fn check_quantity(map: &DotMap<'_, Dot>, item: &[u8], doing: &str) -> Result<(), ResolveError> {
    let total = quantity_of(map, item);
    if total > i64::MAX as u128 {
        return Err(ResolveError::Overflow(format!(
            "{doing} would make the item's quantity {total}, over {}",
            i64::MAX
        )));
    }
    Ok(())
}

fn dot_overflow() -> ResolveError {
    ResolveError::Overflow(format!("one dot's amount would pass {}", u64::MAX))
}

/// Add `quantity` (checked positive by [`check_ops`]) of `item` at `actor`: a fresh add dot,
/// folding `actor`'s two oldest add dots of the item if it then has more than
/// [`ADD_DOTS_MAX`]; [`ResolveError::Overflow`] if an amount would pass `u64::MAX` or the
/// item's quantity `i64::MAX`.
fn add<'a>(
    map: &mut DotMap<'a, Dot>,
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
    map.rewrite(item, actor, |dots, counter| {
        dots.push((counter, Dot::Add(q)));
        let adds: Vec<usize> =
            (0..dots.len()).filter(|&i| matches!(dots[i].1, Dot::Add(_))).collect();
        if adds.len() > ADD_DOTS_MAX {
            // Fold the oldest into the second oldest: that dot's amount grows.
            let (Dot::Add(older), Dot::Add(newer)) = (dots[adds[0]].1, dots[adds[1]].1) else {
                unreachable!("indexes of add dots")
            };
            dots[adds[1]].1 = Dot::Add(older.checked_add(newer).ok_or_else(dot_overflow)?);
            dots.remove(adds[0]);
        }
        Ok(())
    })
}

/// Set `item` to `value` (> 0) at `actor`, after the observed dots were removed: a fresh
/// set dot that replaces `actor`'s own remaining set dot of the item, taking the larger
/// value (see "Bounding the dots").
fn set<'a>(
    map: &mut DotMap<'a, Dot>,
    item: &'a [u8],
    actor: &'a [u8],
    value: i64,
) -> Result<(), ResolveError> {
    let value = value.unsigned_abs();
    map.rewrite(item, actor, |dots, counter| {
        let mut kept = value;
        dots.retain(|(_, dot)| match dot {
            Dot::Set(v) => {
                kept = kept.max(*v);
                false
            }
            Dot::Add(_) => true,
        });
        dots.push((counter, Dot::Set(kept)));
        Ok(())
    })?;
    check_quantity(map, item, "setting it")
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
        let context = decode_context(Tag::Cart, CONTEXT_VERSION, context)?;
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
                        set(&mut map, item, actor, *quantity)?;
                    }
                }
                Op::CartClear => map.clear(context.as_ref())?,
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
        Ok(Read { context: encode_context(Tag::Cart, CONTEXT_VERSION, map.clock()), value })
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
        let late = Cart
            .apply(Some(&added), &update(vec![remove("x")], &ctx(&base)), &stamp("n1"))
            .unwrap();
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
        let other =
            Cart.apply(Some(&s), &update(vec![set("x", 1)], &ctx(&s)), &stamp("n3")).unwrap();
        assert_eq!(cart(&Cart.merge(&one, &other).unwrap()), owned(&[("x", 1)]));
        let four =
            Cart.apply(Some(&s), &update(vec![set("x", 4)], &ctx(&s)), &stamp("n3")).unwrap();
        assert_eq!(cart(&Cart.merge(&one, &four).unwrap()), owned(&[("x", 4)]));
        assert_eq!(cart(&Cart.merge(&four, &one).unwrap()), owned(&[("x", 4)]));
        // Concurrent with an add of 2 by the coordinator of the observed add, and by another.
        for adder in ["n1", "n4"] {
            let added =
                Cart.apply(Some(&s), &update(vec![add("x", 2)], b""), &stamp(adder)).unwrap();
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
        let four =
            Cart.apply(Some(&s), &update(vec![set("x", 4)], &ctx(&s)), &stamp("n2")).unwrap();
        let one =
            Cart.apply(Some(&four), &update(vec![set("x", 1)], &ctx(&s)), &stamp("n2")).unwrap();
        assert_eq!(cart(&one), owned(&[("x", 4)]));
        assert_eq!(decode(&one).unwrap().key_entries(b"x").len(), 1);
    }

    /// A coordinator keeps at most ADD_DOTS_MAX add dots of an item: the next add folds the
    /// two oldest, and the quantity is unchanged by it.
    #[test]
    fn add_dots_are_bounded() {
        let mut s: Option<Vec<u8>> = None;
        for i in 1..=10 {
            let next =
                Cart.apply(s.as_deref(), &update(vec![add("x", 1)], b""), &stamp("n1")).unwrap();
            assert_eq!(cart(&next), owned(&[("x", i)]));
            assert_eq!(
                decode(&next).unwrap().key_entries(b"x").len(),
                (i as usize).min(ADD_DOTS_MAX)
            );
            s = Some(next);
        }
    }

    /// Clear removes every item the context observed, and keeps items and amounts added
    /// concurrently; no context clears what the coordinator holds; a context ahead of the
    /// coordinator is a deferred clear, applied once the coordinator catches up.
    #[test]
    fn clear() {
        let s =
            Cart.apply(None, &update(vec![add("x", 3), add("y", 1)], b""), &stamp("n1")).unwrap();
        let cleared =
            Cart.apply(Some(&s), &update(vec![Op::CartClear], &ctx(&s)), &stamp("n2")).unwrap();
        assert_eq!(cart(&cleared), owned(&[]));
        let added = Cart
            .apply(Some(&s), &update(vec![add("x", 2), add("z", 1)], b""), &stamp("n1"))
            .unwrap();
        assert_eq!(cart(&Cart.merge(&cleared, &added).unwrap()), owned(&[("x", 2), ("z", 1)]));
        let blind =
            Cart.apply(Some(&added), &update(vec![Op::CartClear], b""), &stamp("n3")).unwrap();
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
        let set =
            Cart.apply(Some(&old), &update(vec![set("x", 1)], &ctx(&old)), &stamp("n1")).unwrap();
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
                0..=29 => {
                    Op::CartAdd { item: item.into_bytes(), quantity: 1 + (next() % 3) as i64 }
                }
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
        let merged =
            states[1..].iter().fold(states[0].clone(), |acc, s| Cart.merge(&acc, s).unwrap());
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
        fn live<'o>(
            &'o self,
            ops: &'o Ops,
        ) -> impl Iterator<Item = (usize, (u8, usize, bool))> + 'o {
            self.seen.iter().filter(|id| !self.gone.contains(id)).map(|id| (*id, ops[id]))
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
            let mut replicas: Vec<Option<Vec<u8>>> = vec![None; 3];
            let mut models: Vec<Model> = vec![Model::default(); 3];
            let mut what: Ops = Ops::new();
            for (id, op) in ops.iter().enumerate() {
                let (r, from) = match *op {
                    ModelOp::Add(r, ..) => (r, None),
                    ModelOp::Set(r, _, _, f) | ModelOp::Remove(r, _, f) | ModelOp::Clear(r, f) => (r, f),
                    ModelOp::Sync(f, t) => {
                        if let Some(from) = replicas[f].clone() {
                            replicas[t] = Some(match &replicas[t] {
                                Some(to) => Cart.merge(to, &from).unwrap(),
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
                    ModelOp::Sync(..) => unreachable!(),
                };
                let next = Cart.apply(replicas[r].as_deref(), &update(vec![write], &context), &stamp(&format!("n{r}"))).unwrap();
                replicas[r] = Some(next);
                let m = &mut models[r];
                let observed_of = |item: Option<u8>| -> Vec<usize> {
                    observed.iter().copied().filter(|o| what.get(o).is_some_and(|w| item.is_none_or(|i| w.0 == i))).collect()
                };
                match *op {
                    ModelOp::Add(_, i, q) => {
                        what.insert(id, (i, r, false));
                        m.seen.insert(id);
                        m.amounts.insert(id, q.into());
                        let mine: Vec<usize> = m.live(&what).filter(|(_, w)| *w == (i, r, false)).map(|(o, _)| o).collect();
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
                            let own: Vec<usize> = m.live(&what).filter(|(_, w)| *w == (i, r, true)).map(|(o, _)| o).collect();
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
                    ModelOp::Sync(..) => unreachable!(),
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
        }
    }

    fn add_op(item: u8, quantity: i64) -> Op {
        Op::CartAdd { item: vec![item], quantity }
    }

    fn quantities(state: &[u8]) -> std::collections::BTreeMap<u8, i64> {
        match Cart.read(state).unwrap().value {
            Some(Value::Cart(items)) => items.into_iter().map(|(i, q)| (i[0], q)).collect(),
            None => std::collections::BTreeMap::new(),
            other => panic!("unexpected {other:?}"),
        }
    }
}
