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
//! Version 3 is version 2 with dot clouds in its version vectors (the encoding with clouds of
//! [`crate::causal`]): a delta, or a replica that took a delta ahead of an earlier one. A
//! state is written in the lowest version that holds it (version 2 without a cloud), so
//! carts written before deltas keep their bytes.
//!
//! Version 1 (before set dots) had an 8-byte payload, the amount of an add dot, one dot per
//! (item, actor), and no deferred clears. It decodes as a version 2 state whose dots are all
//! adds, and is written back as version 2. Contexts are version 1 (a version vector), or
//! version 2 (with its cloud) when read from a state with a cloud.
//!
//! ## Deltas
//! A write's delta ([`Resolver::apply_with_delta`], [`crate::causal`]) holds the dots it
//! added or grew and a clock of the dots it issued or removed: an add sends its new dot (and,
//! when it folds, the grown dot and the folded one), a set its set dot and the dots it
//! replaced, a remove or clear the dots it removed and a deferred remove when its context was
//! ahead. Its size depends on what the write touched, not on the cart's size (a clear of a
//! large cart names every dot it removed). A replica that missed an earlier fold's delta can
//! read an item higher than the coordinator until it catches up ([`crate::causal`], "Deltas
//! and dot clouds").

use crate::causal::sparse::{self, BeforeAfter, DotState};
use crate::causal::{
    check_actor, decode_dots_context, encode_dots_context, DotMap, Payload, VersionVector,
};
use crate::codec::{Decoder, Encoder, Tag};
use crate::{
    Applied, DeltaApplied, Op, Read, ResolveError, Resolver, ResolverKind, Stamp, Value, Write,
};

/// Current body format version of a state without dot clouds.
pub const VERSION: u8 = 2;

/// The body format version of a state with a dot cloud (a delta, or a replica that took a
/// delta ahead of one it has not had yet): version 2 with clouds.
pub const VERSION_WITH_CLOUD: u8 = 3;

/// The body format version before set dots: add amounts only, one dot per (item, actor).
pub const VERSION_ADDS_ONLY: u8 = 1;

/// The version of the contexts a read returns while the cart's clock has no cloud (a
/// version vector); with a cloud, [`crate::causal::CONTEXT_VERSION_WITH_CLOUD`].
pub const CONTEXT_VERSION: u8 = crate::causal::CONTEXT_VERSION;

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
pub(crate) enum Dot {
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
        VERSION => DotMap::decode(&mut d, false)?,
        VERSION_WITH_CLOUD => DotMap::decode(&mut d, true)?,
        VERSION_ADDS_ONLY => {
            let old: DotMap<'_, AddsOnly> = DotMap::decode(&mut d, false)?;
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

impl DotState for Cart {
    type Payload = Dot;
    const TAG: Tag = Tag::Cart;

    fn clouds(version: u8) -> Result<Option<bool>, ResolveError> {
        match version {
            VERSION => Ok(Some(false)),
            VERSION_WITH_CLOUD => Ok(Some(true)),
            // Version 1 is migrated by the whole decode.
            VERSION_ADDS_ONLY => Ok(None),
            _ => Err(ResolveError::Corrupt(format!("cart state version {version} is unknown"))),
        }
    }

    /// The lowest version that holds `map`.
    fn version_of(map: &DotMap<'_, Dot>) -> u8 {
        if map.has_cloud() {
            VERSION_WITH_CLOUD
        } else {
            VERSION
        }
    }

    fn decode(state: &[u8]) -> Result<DotMap<'_, Dot>, ResolveError> {
        decode(state)
    }

    fn key_of(op: &Op) -> Option<&[u8]> {
        match op {
            Op::CartAdd { item, .. } | Op::CartSetQuantity { item, .. } | Op::CartRemove(item) => {
                Some(item)
            }
            _ => None,
        }
    }

    fn apply_ops<'a>(
        old: DotMap<'a, Dot>,
        write: &'a Write,
        stamp: &'a Stamp,
    ) -> Result<BeforeAfter<'a, Dot>, ResolveError> {
        apply_ops(old, write, stamp)
    }
}

/// Encode in the lowest version that holds `map`.
fn encode(map: &DotMap<'_, Dot>) -> Vec<u8> {
    sparse::encode::<Cart>(map)
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

/// Apply a write to `old`, the current state's map: the map before and after it.
fn apply_ops<'a>(
    old: DotMap<'a, Dot>,
    write: &'a Write,
    stamp: &'a Stamp,
) -> Result<BeforeAfter<'a, Dot>, ResolveError> {
    check_actor(&stamp.actor)?;
    let Write::Update { ops, context } = write else {
        return Err(ResolveError::WrongOperation { resolver: "cart", operation: write.name() });
    };
    check_ops(ops)?;
    let context = decode_dots_context(Tag::Cart, context)?;
    let mut map = old.clone();
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
    Ok((old, map))
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
        let (_, new) = apply_ops(sparse::decode_or_empty::<Cart>(current)?, write, stamp)?;
        Ok(encode(&new))
    }

    fn apply_with_delta(
        &self,
        current: Option<&[u8]>,
        write: &Write,
        stamp: &Stamp,
    ) -> Result<Applied, ResolveError> {
        sparse::apply_with_delta::<Cart>(current, write, stamp)
    }

    fn apply_for_delta(
        &self,
        stored: &[u8],
        parts: &[&[u8]],
        write: &Write,
        stamp: &Stamp,
    ) -> Result<Option<DeltaApplied>, ResolveError> {
        sparse::apply_delta::<Cart>(stored, parts, write, stamp)
    }

    fn merge(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, ResolveError> {
        sparse::merge::<Cart>(a, b)
    }

    fn merge_into(&self, stored: &[u8], incoming: &[u8]) -> Result<Vec<u8>, ResolveError> {
        // A delta into a larger stored state: only what it touches is decoded.
        sparse::merge_into_stored::<Cart>(stored, incoming)
    }

    fn issued(&self, state: &[u8], actor: &[u8]) -> Result<u64, ResolveError> {
        Ok(decode(state)?.clock().highest(actor))
    }

    fn max_timestamp_ms(&self, _state: &[u8]) -> Result<Option<u64>, ResolveError> {
        // Dots and a version vector, no clock readings: see the trait.
        Ok(None)
    }

    fn read(&self, state: &[u8]) -> Result<Read, ResolveError> {
        let map = decode(state)?;
        let items = items(&map);
        let value = (!items.is_empty()).then_some(Value::Cart(items));
        Ok(Read { context: encode_dots_context(Tag::Cart, map.clock()), value })
    }

    fn context(&self, state: &[u8]) -> Result<Vec<u8>, ResolveError> {
        let (mut d, clouds) = header(state)?;
        Ok(encode_dots_context(Tag::Cart, &VersionVector::decode_either(&mut d, clouds)?))
    }
}

/// Whether `state` reads as not found (holds no item): what [`Resolver::read`] would tell
/// with `value: None`, from the clock and the item count alone.
pub fn is_tombstone(state: &[u8]) -> Result<bool, ResolveError> {
    let (mut d, clouds) = header(state)?;
    DotMap::<Dot>::holds_no_keys(&mut d, clouds)
}

/// A decoder past a cart state's header, and whether its clock has clouds. Every version's
/// body starts with its clock and its item count.
fn header(state: &[u8]) -> Result<(Decoder<'_>, bool), ResolveError> {
    let (d, version) = Decoder::new(state, Tag::Cart)?;
    // Version 1 has no clouds either.
    Ok((d, Cart::clouds(version)?.unwrap_or(false)))
}

#[cfg(test)]
#[path = "cart_tests.rs"]
mod tests;
