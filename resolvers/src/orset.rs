//! # orset: add-wins observed-remove set, without tombstones
//!
//! The optimized OR-set (Bieniusa et al., "An optimized conflict-free replicated set",
//! 2012; Riak's `riak_dt_orswot`): each element carries the **dots** of the adds that put it
//! there, at most one per actor, and the whole set carries one **version vector** of every
//! add it has seen. A remove drops the element's dots; nothing else is kept, because the
//! clock alone says "this replica has seen that add, and it is gone" and the merge drops a
//! dot the other side has seen but no longer holds. See [`crate::causal`] for the machinery
//! (the [`DotMap`] with a `()` payload), including deferred removes.
//!
//! ## Semantics
//! - **add(e)** at actor `A` gives `e` a fresh dot `(A, n)` that replaces `A`'s earlier dots
//!   of `e`, if any (so an element holds at most one dot per actor at its coordinator; a
//!   replica that took deltas out of order may hold an older one of `A` too, until the
//!   delta that replaced it arrives and removes it). Nobody has observed
//!   that dot yet, so an add concurrent with a remove of the same element survives the
//!   remove: **add wins**.
//! - **remove(e)** drops the dots of `e` that the write's **context** observed. An element
//!   added concurrently (a dot the context does not cover) stays; removing an element the
//!   context never saw removes nothing. A context ahead of the coordinator becomes a deferred
//!   remove, applied once the coordinator catches up.
//! - **No context** (empty bytes: the client did not read) on a remove stands for the
//!   coordinator's state *at that point of the write*: it removes every dot of `e` the
//!   coordinator holds, including one added by an earlier operation of the same write. This
//!   is what a client that never read expects ("remove it"), and it still loses against adds
//!   the coordinator has not seen. A client that wants the precise observed-remove semantics
//!   sends the context of its read (the context of a read that found nothing is not "no
//!   context": it observed nothing and removes nothing).
//! - **clear** ([`Op::SetClear`]) is a remove of every element at once: it drops every dot
//!   the context observed, so an element added concurrently stays (with only its
//!   unobserved dots), and the clear never removes what its context did not see. No context
//!   clears what the coordinator holds. A context ahead of the coordinator becomes a
//!   deferred clear ([`crate::causal`]).
//! - Operations of one write apply in order. A context is the same for all of them, so
//!   `[add e, remove e]` with a context keeps `e` (the add was not observed).
//! - **read** returns the members in byte order, or `None` for the empty set, and the clock
//!   as the context (header with the `orset` tag, version 1, then the version vector).
//!
//! Only [`Op::SetAdd`], [`Op::SetRemove`] and [`Op::SetClear`] are taken; puts, deletes and
//! other resolvers' operations are [`ResolveError::WrongOperation`].
//!
//! The size is bounded by elements × actors plus the clock (one entry per actor), never by
//! the number of operations; removed elements leave nothing behind.
//!
//! Body layout, versions 1, 2 and 3: the [`DotMap`] body of [`crate::causal`] with an empty
//! payload:
//!
//! | size   | field                                                             |
//! |--------|-------------------------------------------------------------------|
//! | ..     | clock (version vector)                                            |
//! | 4 + .. | element count, then per element: bytes (u32 length), dot count, dots (actor index u32, counter u64) |
//! | 4 + .. | deferred remove count, then the deferred removes                  |
//!
//! Version 2 is version 1 plus deferred clears (a deferred remove with no keys); version 3
//! is version 2 with dot clouds in its version vectors (the encoding with clouds of
//! [`crate::causal`]): a delta, or a replica that took a delta ahead of an earlier one. A
//! state is written in the lowest version that holds it: version 1 unless it has a deferred
//! clear or a cloud, version 2 unless it has a cloud, so the states of sets that were never
//! cleared by a coordinator behind its client and that hold no gap keep their bytes (and
//! stay readable by nodes that only know version 1). Decoding takes all three and refuses a
//! state written in a higher version than it needs (it would not be canonical).

use crate::causal::sparse::{self, BeforeAfter, DotState};
use crate::causal::{check_actor, decode_dots_context, encode_dots_context, DotMap, VersionVector};
use crate::codec::{Decoder, Tag};
use crate::{
    Applied, DeltaApplied, Op, Read, ResolveError, Resolver, ResolverKind, Stamp, Value, Write,
};

/// The version of a state without deferred clears, and of the contexts reads return.
pub const VERSION: u8 = 1;

/// The version of a state that holds a deferred clear.
pub const VERSION_WITH_CLEARS: u8 = 2;

/// The version of a state with a dot cloud (deferred clears or not).
pub const VERSION_WITH_CLOUD: u8 = 3;

/// The observed-remove set resolver. See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct OrSet;

/// A decoder past a set state's header, its version, and whether its clock has clouds.
fn header(bytes: &[u8]) -> Result<(Decoder<'_>, u8, bool), ResolveError> {
    let (d, version) = Decoder::new(bytes, Tag::Orset)?;
    // Every known version is one the sparse paths take: `clouds` is `Some` for each.
    let clouds = OrSet::clouds(version)?.unwrap_or(false);
    Ok((d, version, clouds))
}

fn decode(bytes: &[u8]) -> Result<DotMap<'_, ()>, ResolveError> {
    let (mut d, version, clouds) = header(bytes)?;
    let map = DotMap::decode(&mut d, clouds)?;
    d.finish()?;
    if version != version_of(&map) {
        return Err(ResolveError::Corrupt(format!(
            "orset state of version {version} with {} deferred clears and clouds: {}",
            map.deferred_clears(),
            map.has_cloud()
        )));
    }
    Ok(map)
}

/// The lowest version that holds `map`.
fn version_of(map: &DotMap<'_, ()>) -> u8 {
    if map.has_cloud() {
        VERSION_WITH_CLOUD
    } else if map.deferred_clears() > 0 {
        VERSION_WITH_CLEARS
    } else {
        VERSION
    }
}

fn encode(map: &DotMap<'_, ()>) -> Vec<u8> {
    sparse::encode::<OrSet>(map)
}

impl DotState for OrSet {
    type Payload = ();
    const TAG: Tag = Tag::Orset;

    fn clouds(version: u8) -> Result<Option<bool>, ResolveError> {
        match version {
            VERSION | VERSION_WITH_CLEARS => Ok(Some(false)),
            VERSION_WITH_CLOUD => Ok(Some(true)),
            _ => Err(ResolveError::Corrupt(format!("orset state version {version} is unknown"))),
        }
    }

    fn version_of(map: &DotMap<'_, ()>) -> u8 {
        version_of(map)
    }

    fn decode(state: &[u8]) -> Result<DotMap<'_, ()>, ResolveError> {
        decode(state)
    }

    fn key_of(op: &Op) -> Option<&[u8]> {
        match op {
            Op::SetAdd(element) | Op::SetRemove(element) => Some(element),
            _ => None,
        }
    }

    fn apply_ops<'a>(
        old: DotMap<'a, ()>,
        write: &'a Write,
        stamp: &'a Stamp,
    ) -> Result<BeforeAfter<'a, ()>, ResolveError> {
        apply_ops(old, write, stamp)
    }
}

/// The members of a set, in byte order.
fn members<'a>(map: &DotMap<'a, ()>) -> Vec<&'a [u8]> {
    let mut out: Vec<&'a [u8]> = map.entries().iter().map(|e| e.key).collect();
    out.dedup();
    out
}

/// Apply a write to `old`, the current state's map: the map before and after it.
fn apply_ops<'a>(
    old: DotMap<'a, ()>,
    write: &'a Write,
    stamp: &'a Stamp,
) -> Result<BeforeAfter<'a, ()>, ResolveError> {
    check_actor(&stamp.actor)?;
    let wrong = |operation| ResolveError::WrongOperation { resolver: "orset", operation };
    let Write::Update { ops, context } = write else {
        return Err(wrong(write.name()));
    };
    let ours = |op: &&Op| matches!(op, Op::SetAdd(_) | Op::SetRemove(_) | Op::SetClear);
    if let Some(op) = ops.iter().find(|op| !ours(op)) {
        return Err(wrong(op.name()));
    }
    let context = decode_dots_context(Tag::Orset, context)?;
    let mut map = old.clone();
    for op in ops {
        match op {
            Op::SetAdd(element) => map.write(element, &stamp.actor, |_| Ok(()))?,
            Op::SetRemove(element) => map.remove(element, context.as_ref())?,
            Op::SetClear => map.clear(context.as_ref())?,
            _ => unreachable!("operations were checked above"),
        }
    }
    map.normalize();
    Ok((old, map))
}

impl Resolver for OrSet {
    fn kind(&self) -> ResolverKind {
        ResolverKind::Orset
    }

    fn apply(
        &self,
        current: Option<&[u8]>,
        write: &Write,
        stamp: &Stamp,
    ) -> Result<Vec<u8>, ResolveError> {
        let (_, new) = apply_ops(sparse::decode_or_empty::<OrSet>(current)?, write, stamp)?;
        Ok(encode(&new))
    }

    fn apply_with_delta(
        &self,
        current: Option<&[u8]>,
        write: &Write,
        stamp: &Stamp,
    ) -> Result<Applied, ResolveError> {
        sparse::apply_with_delta::<OrSet>(current, write, stamp)
    }

    fn apply_for_delta(
        &self,
        stored: &[u8],
        parts: &[&[u8]],
        write: &Write,
        stamp: &Stamp,
    ) -> Result<Option<DeltaApplied>, ResolveError> {
        sparse::apply_delta::<OrSet>(stored, parts, write, stamp)
    }

    fn merge(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, ResolveError> {
        sparse::merge::<OrSet>(a, b)
    }

    fn merge_into(&self, stored: &[u8], incoming: &[u8]) -> Result<Vec<u8>, ResolveError> {
        // A delta into a larger stored state: only what it touches is decoded.
        sparse::merge_into_stored::<OrSet>(stored, incoming)
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
        let members = members(&map);
        let value = (!members.is_empty())
            .then(|| Value::Set(members.into_iter().map(<[u8]>::to_vec).collect()));
        Ok(Read { context: encode_dots_context(Tag::Orset, map.clock()), value })
    }

    fn context(&self, state: &[u8]) -> Result<Vec<u8>, ResolveError> {
        let (mut d, _, clouds) = header(state)?;
        Ok(encode_dots_context(Tag::Orset, &VersionVector::decode_either(&mut d, clouds)?))
    }
}

/// Whether `state` reads as not found (holds no member): what [`Resolver::read`] would tell
/// with `value: None`, from the clock and the member count alone.
pub fn is_tombstone(state: &[u8]) -> Result<bool, ResolveError> {
    let (mut d, _, clouds) = header(state)?;
    DotMap::<()>::holds_no_keys(&mut d, clouds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn stamp(actor: &str) -> Stamp {
        Stamp { actor: actor.as_bytes().to_vec(), time: Timestamp::default() }
    }

    fn update(ops: Vec<Op>, context: &[u8]) -> Write {
        Write::Update { ops, context: context.to_vec() }
    }

    fn add(e: &str) -> Op {
        Op::SetAdd(e.as_bytes().to_vec())
    }

    fn remove(e: &str) -> Op {
        Op::SetRemove(e.as_bytes().to_vec())
    }

    /// The members `state` reads as; every state a test reads is also checked against
    /// [`is_tombstone`], which must say "not found" exactly when the read does, and against
    /// [`Resolver::context`], which must give the read's context.
    fn set(state: &[u8]) -> Vec<String> {
        let Read { value, context } = OrSet.read(state).unwrap();
        assert_eq!(is_tombstone(state).unwrap(), value.is_none(), "is_tombstone against read");
        assert_eq!(OrSet.context(state).unwrap(), context, "context against read");
        match value {
            Some(Value::Set(v)) => v.into_iter().map(|v| String::from_utf8(v).unwrap()).collect(),
            None => Vec::new(),
            other => panic!("unexpected value {other:?}"),
        }
    }

    fn ctx(state: &[u8]) -> Vec<u8> {
        OrSet.read(state).unwrap().context
    }

    /// A remove concurrent with an add of the same element keeps the element (add wins).
    #[test]
    fn add_wins_over_concurrent_remove() {
        let base = OrSet.apply(None, &update(vec![add("x")], b""), &stamp("n1")).unwrap();
        let removed = OrSet
            .apply(Some(&base), &update(vec![remove("x")], &ctx(&base)), &stamp("n1"))
            .unwrap();
        let re_added =
            OrSet.apply(Some(&base), &update(vec![add("x")], b""), &stamp("n2")).unwrap();
        assert_eq!(set(&removed), Vec::<String>::new());
        assert_eq!(set(&OrSet.merge(&removed, &re_added).unwrap()), ["x"]);
        assert_eq!(set(&OrSet.merge(&re_added, &removed).unwrap()), ["x"]);
    }

    /// A remove with a context that never saw the element removes nothing, even after merge.
    #[test]
    fn remove_of_unobserved_element_removes_nothing() {
        let empty = OrSet.apply(None, &update(vec![add("y")], b""), &stamp("n1")).unwrap();
        let stale = ctx(&empty);
        let other = OrSet.apply(None, &update(vec![add("x")], b""), &stamp("n2")).unwrap();
        let here = OrSet.merge(&empty, &other).unwrap();
        let after =
            OrSet.apply(Some(&here), &update(vec![remove("x")], &stale), &stamp("n1")).unwrap();
        assert_eq!(set(&after), ["x", "y"]);
    }

    /// No context removes what the coordinator holds, including an add earlier in the
    /// same write; with a context, that add is not observed and survives.
    #[test]
    fn no_context_removes_what_the_coordinator_holds() {
        let s = OrSet.apply(None, &update(vec![add("x"), add("y")], b""), &stamp("n1")).unwrap();
        let s2 = OrSet.apply(Some(&s), &update(vec![remove("x")], b""), &stamp("n2")).unwrap();
        assert_eq!(set(&s2), ["y"]);
        let s3 = OrSet
            .apply(Some(&s2), &update(vec![add("z"), remove("z")], b""), &stamp("n2"))
            .unwrap();
        assert_eq!(set(&s3), ["y"]);
        let s4 = OrSet
            .apply(Some(&s2), &update(vec![add("z"), remove("z")], &ctx(&s2)), &stamp("n2"))
            .unwrap();
        assert_eq!(set(&s4), ["y", "z"]);
    }

    /// A remove whose context is ahead of the coordinator takes effect once the coordinator
    /// merges what the client had read, and does not take other elements with it.
    #[test]
    fn remove_with_a_context_ahead_is_deferred() {
        let behind = OrSet.apply(None, &update(vec![add("a")], b""), &stamp("n1")).unwrap();
        let ahead = OrSet
            .apply(Some(&behind), &update(vec![add("b"), add("c")], b""), &stamp("n2"))
            .unwrap();
        let removed = OrSet
            .apply(Some(&behind), &update(vec![remove("b")], &ctx(&ahead)), &stamp("n1"))
            .unwrap();
        assert_eq!(decode(&removed).unwrap().deferred_count(), 1);
        let merged = OrSet.merge(&removed, &ahead).unwrap();
        assert_eq!(set(&merged), ["a", "c"]);
        assert_eq!(decode(&merged).unwrap().deferred_count(), 0);
    }

    /// Clear removes every element the context observed and keeps the ones added
    /// concurrently; a context ahead of the coordinator is a deferred clear, written as
    /// version 2 until it applies, then as version 1 again.
    #[test]
    fn clear_removes_what_it_observed() {
        let s = OrSet.apply(None, &update(vec![add("x"), add("y")], b""), &stamp("n1")).unwrap();
        let cleared =
            OrSet.apply(Some(&s), &update(vec![Op::SetClear], &ctx(&s)), &stamp("n2")).unwrap();
        assert_eq!(set(&cleared), Vec::<String>::new());
        let added =
            OrSet.apply(Some(&s), &update(vec![add("x"), add("z")], b""), &stamp("n3")).unwrap();
        assert_eq!(set(&OrSet.merge(&cleared, &added).unwrap()), ["x", "z"]);
        let deferred =
            OrSet.apply(Some(&s), &update(vec![Op::SetClear], &ctx(&added)), &stamp("n1")).unwrap();
        assert_eq!(deferred[1], VERSION_WITH_CLEARS);
        assert_eq!(set(&deferred), Vec::<String>::new());
        let caught_up = OrSet.merge(&deferred, &added).unwrap();
        assert_eq!(set(&caught_up), Vec::<String>::new());
        assert_eq!(caught_up[1], VERSION);
        let blind =
            OrSet.apply(Some(&added), &update(vec![Op::SetClear], b""), &stamp("n1")).unwrap();
        assert_eq!(set(&blind), Vec::<String>::new());
    }

    /// Other resolvers' operations, puts and deletes are WrongOperation; bad contexts are
    /// BadContext.
    #[test]
    fn refusals() {
        for write in [
            update(vec![Op::CounterIncrement(1)], b""),
            update(vec![add("x"), Op::CartRemove(b"x".to_vec())], b""),
            Write::Put { value: b"v".to_vec(), context: Vec::new() },
            Write::Delete { context: Vec::new() },
        ] {
            assert!(matches!(
                OrSet.apply(None, &write, &stamp("n1")),
                Err(ResolveError::WrongOperation { resolver: "orset", .. })
            ));
        }
        assert!(matches!(
            OrSet.apply(None, &update(vec![remove("x")], b"\x03\x01\xff"), &stamp("n1")),
            Err(ResolveError::BadContext(_))
        ));
    }

    /// Encoding round-trips; every truncation is Corrupt.
    #[test]
    fn encoding() {
        let a = OrSet.apply(None, &update(vec![add("x"), add("y")], b""), &stamp("n1")).unwrap();
        let b = OrSet.apply(None, &update(vec![add("x")], b""), &stamp("n2")).unwrap();
        let s = OrSet.merge(&a, &b).unwrap();
        assert_eq!(encode(&decode(&s).unwrap()), s);
        for cut in 0..s.len() {
            assert!(matches!(OrSet.read(&s[..cut]), Err(ResolveError::Corrupt(_))));
        }
    }

    #[derive(Clone, Debug)]
    enum ModelOp {
        Add(usize, u8),
        /// Remove with the context of a read of `from`'s replica.
        Remove(usize, u8, usize),
        /// Clear with the context of a read of `from`'s replica.
        Clear(usize, usize),
        Sync(usize, usize),
    }

    fn model_op() -> impl Strategy<Value = ModelOp> {
        prop_oneof![
            (0usize..3, 0u8..4).prop_map(|(r, e)| ModelOp::Add(r, e)),
            (0usize..3, 0u8..4, 0usize..3).prop_map(|(r, e, f)| ModelOp::Remove(r, e, f)),
            (0usize..3, 0usize..3).prop_map(|(r, f)| ModelOp::Clear(r, f)),
            (0usize..3, 0usize..3).prop_map(|(f, t)| ModelOp::Sync(f, t)),
        ]
    }

    /// A write's new state, by `apply_with_delta` checked against the whole path (and its
    /// delta merged into `current` by the sparse merge): see `sparse::checked`.
    fn applied(current: Option<&[u8]>, write: &Write, stamp: &Stamp) -> Vec<u8> {
        sparse::checked::apply_with_delta(&OrSet, current, write, stamp).state
    }

    proptest! {
        /// Against a model that tracks every add by a unique id: after all replicas merge,
        /// the set is exactly the elements with an add that no remove or clear observed.
        #[test]
        fn set_is_adds_not_observed_removed(ops in proptest::collection::vec(model_op(), 1..60)) {
            let mut replicas: Vec<Option<Vec<u8>>> = vec![None; 3];
            // Model: each replica's set of seen add ids; the global set of removed add ids.
            let mut seen: Vec<BTreeSet<(u8, usize)>> = vec![BTreeSet::new(); 3];
            let mut removed: BTreeSet<(u8, usize)> = BTreeSet::new();
            for (i, op) in ops.iter().enumerate() {
                match *op {
                    ModelOp::Add(r, e) => {
                        let w = update(vec![Op::SetAdd(vec![e])], b"");
                        replicas[r] = Some(applied(replicas[r].as_deref(), &w, &stamp(&format!("n{r}"))));
                        seen[r].insert((e, i));
                    }
                    ModelOp::Remove(r, e, from) => {
                        let context = replicas[from].as_deref().map(ctx).unwrap_or_default();
                        if context.is_empty() {
                            continue;
                        }
                        let w = update(vec![Op::SetRemove(vec![e])], &context);
                        replicas[r] = Some(applied(replicas[r].as_deref(), &w, &stamp(&format!("n{r}"))));
                        let observed: Vec<_> = seen[from].iter().filter(|(x, _)| *x == e).copied().collect();
                        // The remover's replica does not learn `from`'s adds from the
                        // context: a context ahead of it becomes a deferred remove.
                        removed.extend(observed);
                    }
                    ModelOp::Clear(r, from) => {
                        let context = replicas[from].as_deref().map(ctx).unwrap_or_default();
                        if context.is_empty() {
                            continue;
                        }
                        let w = update(vec![Op::SetClear], &context);
                        replicas[r] = Some(OrSet.apply(replicas[r].as_deref(), &w, &stamp(&format!("n{r}"))).unwrap());
                        removed.extend(seen[from].iter().copied());
                    }
                    ModelOp::Sync(f, t) => {
                        if let Some(from) = replicas[f].clone() {
                            replicas[t] = Some(match &replicas[t] {
                                Some(to) => sparse::checked::merge_into(&OrSet, to, &from),
                                None => from,
                            });
                            seen[t] = seen[t].union(&seen[f]).copied().collect();
                        }
                    }
                }
            }
            let states: Vec<Vec<u8>> = replicas.into_iter().flatten().collect();
            if let Some(first) = states.first() {
                let merged = states[1..].iter().fold(first.clone(), |acc, s| OrSet.merge(&acc, s).unwrap());
                let all: BTreeSet<(u8, usize)> = seen.iter().flatten().copied().collect();
                let expected: BTreeSet<u8> = all.difference(&removed).map(|(e, _)| *e).collect();
                let got: BTreeSet<u8> = match OrSet.read(&merged).unwrap().value {
                    Some(Value::Set(v)) => v.into_iter().map(|e| e[0]).collect(),
                    None => BTreeSet::new(),
                    other => panic!("unexpected {other:?}"),
                };
                prop_assert_eq!(got, expected);
                prop_assert_eq!(decode(&merged).unwrap().deferred_count(), 0);
            }
        }
    }
}
