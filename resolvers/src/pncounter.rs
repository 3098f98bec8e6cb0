//! # pncounter: a positive-negative counter with an observed reset
//!
//! A state holds, for each actor (coordinating node) that ever changed the counter, two
//! grow-only totals: how much it added (`increments`) and how much it subtracted
//! (`decrements`). An actor only ever changes its own totals, so merge takes each actor's
//! maximum of each total. The size is bounded by the number of actors (nodes), never by the
//! number of operations.
//!
//! ## Reset: per-actor baselines
//! A reset ([`Op::CounterReset`]) takes off what its client observed and nothing else. Each
//! actor's entry also holds two grow-only **baselines**: the largest increments and
//! decrements totals of that actor that a reset observed. The value counts, per actor, only
//! what lies above its baselines:
//!
//! ```text
//! value = Σ over actors  (increments ∸ increments_reset) − (decrements ∸ decrements_reset)
//! ```
//!
//! (`∸` is subtraction stopping at 0.) A reset raises every actor's baselines to the totals
//! its context observed. Because an actor's totals only grow, "what the reset observed" is a
//! prefix of that actor's history, and the baseline names it exactly: increments made
//! concurrently with the reset lie above the baseline and still count, increments the reset
//! observed never come back, and two resets that observed different prefixes combine into
//! the longer one. Merge takes the maximum of all four numbers per actor: a pointwise
//! maximum over a product of chains, so merge stays a join (commutative, associative,
//! idempotent) and needs no tombstones beyond the entries of actors that already exist.
//! A baseline may be ahead of the totals it names (the reset's client read a replica that
//! had seen more of that actor than the coordinator); `∸` then counts nothing for that
//! actor until its totals catch up, and then only what lies above.
//!
//! This is why the counter's **context** is no longer empty: a read returns the totals it
//! saw, per actor (header with the `pncounter` tag, context version 1; the table below).
//! Increments ignore the context (they commute), but check it: anything but a context a
//! read returned, or nothing, is [`ResolveError::BadContext`]. A reset with no context (the
//! client did not read) resets what the coordinator holds at that point of the write, as a
//! remove without a context does in `orset` and `cart`.
//!
//! ## Arithmetic at the edges
//! Nothing wraps and no write is silently cut short:
//! - Totals are `u64`. An increment that would take the coordinator's total past `u64::MAX`
//!   is refused with [`ResolveError::Overflow`] and produces no state (it would otherwise
//!   be acknowledged and then not counted).
//! - The value a client sees is an `i64`. A write that would leave the value, as the
//!   coordinator holds it, outside the `i64` range, or further outside it than it was, is
//!   refused with [`ResolveError::Overflow`]. A write that brings a value back towards the
//!   range is taken. (A reset whose context observed one actor's increments but not its
//!   decrements can move the value away from 0; the same rule applies to it.)
//! - **Reading** computes the value exactly in 128 bits (one actor's share is within
//!   ±(2^64 - 1), and a state holds far fewer than 2^63 actors) and then **saturates** it to
//!   the `i64` range. A value can still pass the range without any refused write: two
//!   coordinators that each stayed within it, merged. A read then shows `i64::MAX` (or
//!   `i64::MIN`), never a wrapped value, and a decrement brings it back. Merge is never
//!   refused (replicas must take in each other's states) and takes per-actor maxima, so it
//!   cannot overflow.
//!
//! A write's delta ([`Resolver::apply_with_delta`]) is the entries it changed, whole: an
//! increment's is its coordinator's entry, a reset's the entries whose baselines it raised.
//! Merge takes each number's maximum and a write only raises numbers, so the old state
//! merged with the delta is the new one.
//!
//! Writes take [`Op::CounterIncrement`] (negative = decrement) and [`Op::CounterReset`]. A
//! read always returns a counter value (0 for a counter nobody changed). An increment of 0
//! changes nothing.
//!
//! ## Encoding
//! Body layout, version 1 (no baselines):
//!
//! | size   | field                                                            |
//! |--------|------------------------------------------------------------------|
//! | 4      | actor count N (u32)                                              |
//! | N × .. | per actor, ascending: length (u8), actor id, increments (u64), decrements (u64); never both 0 |
//!
//! Version 2 adds the baselines:
//!
//! | size   | field                                                            |
//! |--------|------------------------------------------------------------------|
//! | 4      | actor count N (u32)                                              |
//! | N × .. | per actor, ascending: length (u8), actor id, increments (u64), decrements (u64), increments_reset (u64), decrements_reset (u64); never all 0 |
//!
//! A state is written in the lowest version that holds it: version 1 while every baseline
//! is 0 (a counter that was never reset keeps its bytes, and nodes that only know version 1
//! still read it), version 2 otherwise. Decoding reads both; a version 2 state whose
//! baselines are all 0 is refused as not canonical.
//!
//! The context a read returns, version 1: the header, then the version 1 body of the state's
//! totals (actors whose totals are both 0 left out).

use crate::causal::check_actor;
use crate::codec::{Decoder, Encoder, Tag};
use crate::{Applied, Op, Read, ResolveError, Resolver, ResolverKind, Stamp, Value, Write};

/// The version of a state without baselines (never reset), and of the contexts.
pub const VERSION: u8 = 1;

/// The version of a state with baselines.
pub const VERSION_WITH_RESETS: u8 = 2;

/// Smallest encoded actor entry of version 1 (and of a context): length byte, empty actor,
/// two totals.
const ENTRY_BYTES_MIN: usize = 1 + 8 + 8;

/// Smallest encoded actor entry of version 2: length byte, empty actor, four numbers.
const ENTRY_WITH_RESETS_BYTES_MIN: usize = ENTRY_BYTES_MIN + 8 + 8;

/// The PN-counter resolver. See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct PnCounter;

/// One actor's totals and baselines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry<'a> {
    actor: &'a [u8],
    increments: u64,
    decrements: u64,
    /// The largest `increments` of this actor a reset observed.
    increments_reset: u64,
    /// The largest `decrements` of this actor a reset observed.
    decrements_reset: u64,
}

impl<'a> Entry<'a> {
    fn new(actor: &'a [u8]) -> Self {
        Self { actor, increments: 0, decrements: 0, increments_reset: 0, decrements_reset: 0 }
    }

    fn has_baselines(&self) -> bool {
        self.increments_reset != 0 || self.decrements_reset != 0
    }

    /// This actor's share of the value: what lies above its baselines.
    fn share(&self) -> i128 {
        i128::from(self.increments.saturating_sub(self.increments_reset))
            - i128::from(self.decrements.saturating_sub(self.decrements_reset))
    }
}

/// A decoded counter: entries sorted by actor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State<'a> {
    entries: Vec<Entry<'a>>,
}

/// Read `count` entries of version 1 (`with_resets` false) or 2, checking their order.
fn decode_entries<'a>(
    d: &mut Decoder<'a>,
    with_resets: bool,
) -> Result<Vec<Entry<'a>>, ResolveError> {
    let min = if with_resets { ENTRY_WITH_RESETS_BYTES_MIN } else { ENTRY_BYTES_MIN };
    let n = d.count("actors", min)?;
    let mut entries: Vec<Entry<'a>> = Vec::with_capacity(n);
    for _ in 0..n {
        let len = d.u8("actor length")? as usize;
        let actor = d.take_exact(len, "actor")?;
        let mut entry = Entry::new(actor);
        entry.increments = d.u64("increments")?;
        entry.decrements = d.u64("decrements")?;
        if with_resets {
            entry.increments_reset = d.u64("increments reset")?;
            entry.decrements_reset = d.u64("decrements reset")?;
        }
        if entries.last().is_some_and(|last| last.actor >= actor) {
            return Err(ResolveError::Corrupt("pncounter actors out of order".into()));
        }
        if entry == Entry::new(actor) {
            return Err(ResolveError::Corrupt("pncounter entry of zeros".into()));
        }
        entries.push(entry);
    }
    Ok(entries)
}

impl<'a> State<'a> {
    fn decode(bytes: &'a [u8]) -> Result<Self, ResolveError> {
        let (mut d, version) = Decoder::new(bytes, Tag::Pncounter)?;
        let with_resets = match version {
            VERSION => false,
            VERSION_WITH_RESETS => true,
            _ => {
                return Err(ResolveError::Corrupt(format!(
                    "pncounter state version {version} is unknown"
                )))
            }
        };
        let entries = decode_entries(&mut d, with_resets)?;
        d.finish()?;
        let state = Self { entries };
        if with_resets && !state.has_baselines() {
            return Err(ResolveError::Corrupt("pncounter version 2 state without resets".into()));
        }
        Ok(state)
    }

    fn has_baselines(&self) -> bool {
        self.entries.iter().any(Entry::has_baselines)
    }

    /// Encode in the lowest version that holds the state.
    fn encode(&self) -> Vec<u8> {
        let with_resets = self.has_baselines();
        let version = if with_resets { VERSION_WITH_RESETS } else { VERSION };
        let mut e = Encoder::new(Tag::Pncounter, version);
        e.u32(self.entries.len() as u32);
        for entry in &self.entries {
            e.u8(entry.actor.len() as u8).raw(entry.actor);
            e.u64(entry.increments).u64(entry.decrements);
            if with_resets {
                e.u64(entry.increments_reset).u64(entry.decrements_reset);
            }
        }
        e.finish()
    }

    /// The context a read returns: every actor's totals (see the module documentation).
    fn context(&self) -> Vec<u8> {
        let seen: Vec<&Entry<'a>> =
            self.entries.iter().filter(|e| e.increments != 0 || e.decrements != 0).collect();
        let mut e = Encoder::new(Tag::Pncounter, VERSION);
        e.u32(seen.len() as u32);
        for entry in seen {
            e.u8(entry.actor.len() as u8).raw(entry.actor);
            e.u64(entry.increments).u64(entry.decrements);
        }
        e.finish()
    }

    /// The entry of `actor`, added (all zeros) if it is new.
    fn entry(&mut self, actor: &'a [u8]) -> &mut Entry<'a> {
        let i = match self.entries.binary_search_by(|e| e.actor.cmp(actor)) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, Entry::new(actor));
                i
            }
        };
        &mut self.entries[i]
    }

    /// Add `delta` to `actor`'s totals; [`ResolveError::Overflow`] (and the state unchanged)
    /// if a total would pass `u64::MAX`.
    fn add(&mut self, actor: &'a [u8], delta: i64) -> Result<(), ResolveError> {
        if delta == 0 {
            return Ok(());
        }
        let entry = self.entry(actor);
        let (total, direction) = if delta > 0 {
            (&mut entry.increments, "increments")
        } else {
            (&mut entry.decrements, "decrements")
        };
        *total = total.checked_add(delta.unsigned_abs()).ok_or_else(|| {
            ResolveError::Overflow(format!(
                "this coordinator's {direction} total would pass {}",
                u64::MAX
            ))
        })?;
        Ok(())
    }

    /// Raise every actor's baselines to the totals `observed` holds (a reset with a
    /// context), or to the state's own totals (`None`: a reset without one).
    fn reset(&mut self, observed: Option<&[Entry<'a>]>) {
        match observed {
            None => {
                for e in &mut self.entries {
                    e.increments_reset = e.increments_reset.max(e.increments);
                    e.decrements_reset = e.decrements_reset.max(e.decrements);
                }
            }
            Some(observed) => {
                for seen in observed {
                    let e = self.entry(seen.actor);
                    e.increments_reset = e.increments_reset.max(seen.increments);
                    e.decrements_reset = e.decrements_reset.max(seen.decrements);
                }
            }
        }
    }

    fn join(&self, other: &State<'a>) -> State<'a> {
        let mut entries: Vec<Entry<'a>> =
            self.entries.iter().chain(&other.entries).copied().collect();
        entries.sort_by(|a, b| a.actor.cmp(b.actor));
        entries.dedup_by(|next, kept| {
            if next.actor != kept.actor {
                return false;
            }
            kept.increments = kept.increments.max(next.increments);
            kept.decrements = kept.decrements.max(next.decrements);
            kept.increments_reset = kept.increments_reset.max(next.increments_reset);
            kept.decrements_reset = kept.decrements_reset.max(next.decrements_reset);
            true
        });
        State { entries }
    }

    /// The delta of `self` over `old`, for a `self` that a write made from `old`: the
    /// entries that changed, whole (merge takes each number's maximum, and every number of
    /// a changed entry is at least its old value).
    fn delta_from(&self, old: &State<'a>) -> State<'a> {
        let unchanged = |e: &Entry<'a>| {
            old.entries
                .binary_search_by(|o| o.actor.cmp(e.actor))
                .is_ok_and(|i| old.entries[i] == *e)
        };
        State { entries: self.entries.iter().filter(|e| !unchanged(e)).copied().collect() }
    }

    /// The exact value, in 128 bits (see "Arithmetic at the edges").
    fn exact(&self) -> i128 {
        self.entries.iter().map(Entry::share).sum()
    }

    /// The value a client sees: the exact value saturated to the `i64` range.
    fn value(&self) -> i64 {
        self.exact().clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }
}

/// Decode a write's context: `None` for no context (empty bytes), the observed totals
/// otherwise; anything a read did not return is [`ResolveError::BadContext`].
fn decode_context(bytes: &[u8]) -> Result<Option<Vec<Entry<'_>>>, ResolveError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let bad = |e: ResolveError| match e {
        ResolveError::Corrupt(why) => ResolveError::BadContext(why),
        other => other,
    };
    let (mut d, version) = Decoder::new(bytes, Tag::Pncounter).map_err(bad)?;
    if version != VERSION {
        return Err(ResolveError::BadContext(format!("context version {version} is unknown")));
    }
    let entries = decode_entries(&mut d, false).map_err(bad)?;
    d.finish().map_err(bad)?;
    Ok(Some(entries))
}

/// How far `value` is outside the `i64` range (0 inside it).
fn excess(value: i128) -> u128 {
    value.abs_diff(value.clamp(i128::from(i64::MIN), i128::from(i64::MAX)))
}

/// Apply a write to `current`: the counter before and after it.
fn apply_ops<'a>(
    current: Option<&'a [u8]>,
    write: &'a Write,
    stamp: &'a Stamp,
) -> Result<(State<'a>, State<'a>), ResolveError> {
    check_actor(&stamp.actor)?;
    let wrong = |operation| ResolveError::WrongOperation { resolver: "pncounter", operation };
    let Write::Update { ops, context } = write else {
        return Err(wrong(write.name()));
    };
    let ours = |op: &&Op| matches!(op, Op::CounterIncrement(_) | Op::CounterReset);
    if let Some(op) = ops.iter().find(|op| !ours(op)) {
        return Err(wrong(op.name()));
    }
    let observed = decode_context(context)?;
    let old = match current {
        Some(bytes) => State::decode(bytes)?,
        None => State::default(),
    };
    let mut state = old.clone();
    let before = state.exact();
    for op in ops {
        match op {
            Op::CounterIncrement(delta) => state.add(&stamp.actor, *delta)?,
            Op::CounterReset => state.reset(observed.as_deref()),
            _ => unreachable!("operations were checked above"),
        }
    }
    let after = state.exact();
    if excess(after) > excess(before) {
        return Err(ResolveError::Overflow(format!(
            "the counter would be {after}, outside the 64-bit range [{}, {}]",
            i64::MIN,
            i64::MAX
        )));
    }
    Ok((old, state))
}

impl Resolver for PnCounter {
    fn kind(&self) -> ResolverKind {
        ResolverKind::Pncounter
    }

    fn apply(
        &self,
        current: Option<&[u8]>,
        write: &Write,
        stamp: &Stamp,
    ) -> Result<Vec<u8>, ResolveError> {
        let (_, new) = apply_ops(current, write, stamp)?;
        Ok(new.encode())
    }

    fn apply_with_delta(
        &self,
        current: Option<&[u8]>,
        write: &Write,
        stamp: &Stamp,
    ) -> Result<Applied, ResolveError> {
        let (old, new) = apply_ops(current, write, stamp)?;
        let delta = new.delta_from(&old).encode();
        Ok(Applied::new(new.encode(), Some(delta)))
    }

    fn merge(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, ResolveError> {
        let (sa, sb) = (State::decode(a)?, State::decode(b)?);
        Ok(sa.join(&sb).encode())
    }

    fn issued(&self, state: &[u8], actor: &[u8]) -> Result<u64, ResolveError> {
        let state = State::decode(state)?;
        Ok(state
            .entries
            .iter()
            .find(|e| e.actor == actor)
            .map_or(0, |e| e.increments.saturating_add(e.decrements)))
    }

    fn read(&self, state: &[u8]) -> Result<Read, ResolveError> {
        let state = State::decode(state)?;
        Ok(Read { context: state.context(), value: Some(Value::Counter(state.value())) })
    }

    fn max_timestamp_ms(&self, _state: &[u8]) -> Result<Option<u64>, ResolveError> {
        // Totals, no clock readings: see the trait.
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;
    use proptest::prelude::*;

    fn stamp(actor: &str) -> Stamp {
        Stamp { actor: actor.as_bytes().to_vec(), time: Timestamp::default() }
    }

    fn incr(deltas: &[i64]) -> Write {
        Write::Update {
            ops: deltas.iter().copied().map(Op::CounterIncrement).collect(),
            context: Vec::new(),
        }
    }

    fn value(state: &[u8]) -> i64 {
        match PnCounter.read(state).unwrap().value {
            Some(Value::Counter(v)) => v,
            other => panic!("unexpected value {other:?}"),
        }
    }

    proptest! {
        /// The merged value of replicas that each applied some increments is the sum of all
        /// increments minus all decrements, whatever the merge order.
        #[test]
        fn value_is_sum_of_operations(
            ops in proptest::collection::vec((0usize..3, -1_000i64..1_000), 0..60),
        ) {
            let mut replicas: Vec<Option<Vec<u8>>> = vec![None; 3];
            for (replica, delta) in &ops {
                let actor = format!("n{replica}");
                let next = PnCounter
                    .apply(replicas[*replica].as_deref(), &incr(&[*delta]), &stamp(&actor))
                    .unwrap();
                replicas[*replica] = Some(next);
            }
            let states: Vec<Vec<u8>> = replicas.into_iter().flatten().collect();
            let expected: i64 = ops.iter().map(|(_, d)| d).sum();
            if let Some(first) = states.first() {
                let merged = states[1..]
                    .iter()
                    .fold(first.clone(), |acc, s| PnCounter.merge(&acc, s).unwrap());
                prop_assert_eq!(value(&merged), expected);
                let reversed = states[..states.len() - 1]
                    .iter()
                    .rev()
                    .fold(states[states.len() - 1].clone(), |acc, s| PnCounter.merge(s, &acc).unwrap());
                prop_assert_eq!(reversed, merged);
            }
        }
    }

    /// Merging a replica's state twice, or an older state of it, does not count it twice.
    #[test]
    fn merge_does_not_double_count() {
        let a1 = PnCounter.apply(None, &incr(&[5]), &stamp("n1")).unwrap();
        let a2 = PnCounter.apply(Some(&a1), &incr(&[-2]), &stamp("n1")).unwrap();
        let b = PnCounter.apply(None, &incr(&[10]), &stamp("n2")).unwrap();
        let m = PnCounter.merge(&PnCounter.merge(&a2, &b).unwrap(), &a1).unwrap();
        assert_eq!(value(&m), 13);
        assert_eq!(PnCounter.merge(&m, &a2).unwrap(), m);
    }

    fn overflows(current: Option<&[u8]>, deltas: &[i64], actor: &str) -> bool {
        matches!(
            PnCounter.apply(current, &incr(deltas), &stamp(actor)),
            Err(ResolveError::Overflow(_))
        )
    }

    /// A write that would take the value past the i64 range, or an actor's total past
    /// u64::MAX, is Overflow and produces no state; one that stays inside, or comes back
    /// towards the range, is taken. Method: increments and decrements at both edges.
    #[test]
    fn overflow_is_refused() {
        let max = PnCounter.apply(None, &incr(&[i64::MAX]), &stamp("n1")).unwrap();
        assert_eq!(value(&max), i64::MAX);
        assert!(overflows(Some(&max), &[1], "n1"), "past i64::MAX through the same actor");
        assert!(overflows(Some(&max), &[1], "n2"), "past i64::MAX through another actor");
        assert!(overflows(None, &[i64::MAX, i64::MAX, i64::MAX], "n1"), "within one write");
        let min = PnCounter.apply(None, &incr(&[i64::MIN]), &stamp("n1")).unwrap();
        assert_eq!(value(&min), i64::MIN);
        assert!(overflows(Some(&min), &[-1], "n1"));
        // Back and forth through one actor: the value stays near 0, the totals grow until
        // the increments total would pass u64::MAX.
        let mut s = max.clone();
        s = PnCounter.apply(Some(&s), &incr(&[-i64::MAX]), &stamp("n1")).unwrap();
        s = PnCounter.apply(Some(&s), &incr(&[i64::MAX]), &stamp("n1")).unwrap();
        s = PnCounter.apply(Some(&s), &incr(&[-i64::MAX]), &stamp("n1")).unwrap();
        assert_eq!(value(&s), 0);
        assert!(overflows(Some(&s), &[i64::MAX], "n1"), "the increments total is full");
        assert!(!overflows(Some(&s), &[i64::MAX], "n2"), "another actor's total is not");
        assert!(!overflows(Some(&max), &[-1], "n2"), "a decrement from the edge is taken");
    }

    /// A merged value past the i64 range (two coordinators each within it) reads saturated,
    /// never wrapped, and a decrement that brings it back is taken while an increment is not.
    #[test]
    fn a_merged_value_past_the_range_reads_saturated() {
        let a = PnCounter.apply(None, &incr(&[i64::MAX]), &stamp("n1")).unwrap();
        let b = PnCounter.apply(None, &incr(&[i64::MAX]), &stamp("n2")).unwrap();
        let m = PnCounter.merge(&a, &b).unwrap();
        assert_eq!(value(&m), i64::MAX);
        assert!(overflows(Some(&m), &[1], "n3"));
        let back = PnCounter.apply(Some(&m), &incr(&[-5]), &stamp("n3")).unwrap();
        assert_eq!(value(&back), i64::MAX, "still past the range: still saturated");
        let a = PnCounter.apply(None, &incr(&[i64::MIN]), &stamp("n1")).unwrap();
        let b = PnCounter.apply(None, &incr(&[i64::MIN]), &stamp("n2")).unwrap();
        assert_eq!(value(&PnCounter.merge(&a, &b).unwrap()), i64::MIN);
    }

    /// A context other than the empty one a read returns is BadContext.
    #[test]
    fn garbage_context_is_bad_context() {
        let write = Write::Update { ops: vec![Op::CounterIncrement(1)], context: b"x".to_vec() };
        assert!(matches!(
            PnCounter.apply(None, &write, &stamp("n1")),
            Err(ResolveError::BadContext(_))
        ));
        let s = PnCounter.apply(None, &incr(&[1]), &stamp("n1")).unwrap();
        let context = PnCounter.read(&s).unwrap().context;
        let write = Write::Update { ops: vec![Op::CounterIncrement(1)], context };
        assert!(PnCounter.apply(Some(&s), &write, &stamp("n1")).is_ok());
    }

    /// Puts, deletes and other resolvers' operations are WrongOperation; an increment of 0
    /// leaves the state as it was.
    #[test]
    fn refusals_and_zero() {
        for write in [
            Write::Put { value: b"1".to_vec(), context: Vec::new() },
            Write::Delete { context: Vec::new() },
            Write::Update {
                ops: vec![Op::CounterIncrement(1), Op::SetAdd(b"x".to_vec())],
                context: Vec::new(),
            },
        ] {
            assert!(matches!(
                PnCounter.apply(None, &write, &stamp("n1")),
                Err(ResolveError::WrongOperation { resolver: "pncounter", .. })
            ));
        }
        let s = PnCounter.apply(None, &incr(&[3]), &stamp("n1")).unwrap();
        assert_eq!(PnCounter.apply(Some(&s), &incr(&[0]), &stamp("n2")).unwrap(), s);
    }

    /// Encoding round-trips; every truncation and a zero entry are Corrupt.
    #[test]
    fn encoding() {
        let a = PnCounter.apply(None, &incr(&[3, -1]), &stamp("n1")).unwrap();
        let b = PnCounter.apply(None, &incr(&[4]), &stamp("n2")).unwrap();
        let s = PnCounter.merge(&a, &b).unwrap();
        assert_eq!(State::decode(&s).unwrap().encode(), s);
        for cut in 0..s.len() {
            assert!(matches!(PnCounter.read(&s[..cut]), Err(ResolveError::Corrupt(_))));
        }
        let zero = State { entries: vec![Entry::new(b"n1")] };
        assert!(PnCounter.read(&zero.encode()).is_err());
    }

    fn reset_with(context: &[u8]) -> Write {
        Write::Update { ops: vec![Op::CounterReset], context: context.to_vec() }
    }

    fn ctx(state: &[u8]) -> Vec<u8> {
        PnCounter.read(state).unwrap().context
    }

    /// A reset takes off what its context observed: sequentially the counter reads 0;
    /// increments and decrements concurrent with it still count, through any coordinator;
    /// two resets that observed different amounts combine into the larger; no context
    /// resets what the coordinator holds.
    #[test]
    fn reset_takes_off_what_it_observed() {
        let s = PnCounter.apply(None, &incr(&[5, -2]), &stamp("n1")).unwrap();
        let zero = PnCounter.apply(Some(&s), &reset_with(&ctx(&s)), &stamp("n2")).unwrap();
        assert_eq!(value(&zero), 0);
        for actor in ["n1", "n3"] {
            let more = PnCounter.apply(Some(&s), &incr(&[4, -1]), &stamp(actor)).unwrap();
            assert_eq!(value(&PnCounter.merge(&zero, &more).unwrap()), 3, "{actor}");
            // The same through one coordinator, with the context of the earlier read.
            let late = PnCounter.apply(Some(&more), &reset_with(&ctx(&s)), &stamp(actor)).unwrap();
            assert_eq!(value(&late), 3, "{actor}");
            // A reset that observed more wins over one that observed less.
            let all = PnCounter.apply(Some(&more), &reset_with(&ctx(&more)), &stamp("n2")).unwrap();
            assert_eq!(value(&PnCounter.merge(&all, &late).unwrap()), 0, "{actor}");
        }
        let blind = PnCounter.apply(Some(&s), &reset_with(b""), &stamp("n3")).unwrap();
        assert_eq!(value(&blind), 0);
        // An increment after the reset counts.
        let after = PnCounter.apply(Some(&zero), &incr(&[7]), &stamp("n1")).unwrap();
        assert_eq!(value(&after), 7);
    }

    /// A reset whose context is ahead of the coordinator takes off nothing it has not
    /// seen, and exactly what was observed once it catches up.
    #[test]
    fn a_reset_ahead_of_the_coordinator_waits_for_what_it_observed() {
        let behind = PnCounter.apply(None, &incr(&[1]), &stamp("n1")).unwrap();
        let ahead = PnCounter.apply(Some(&behind), &incr(&[10]), &stamp("n2")).unwrap();
        let reset =
            PnCounter.apply(Some(&behind), &reset_with(&ctx(&ahead)), &stamp("n1")).unwrap();
        assert_eq!(value(&reset), 0);
        let more = PnCounter.apply(Some(&ahead), &incr(&[3]), &stamp("n2")).unwrap();
        assert_eq!(value(&PnCounter.merge(&reset, &more).unwrap()), 3);
    }

    /// States are written in the lowest version that holds them: a counter never reset
    /// keeps version 1 bytes; a reset one is version 2, round-trips, and a version 2 state
    /// without baselines is Corrupt.
    #[test]
    fn versions() {
        let s = PnCounter.apply(None, &incr(&[3, -1]), &stamp("n1")).unwrap();
        assert_eq!(s[1], VERSION);
        let r = PnCounter.apply(Some(&s), &reset_with(&ctx(&s)), &stamp("n1")).unwrap();
        assert_eq!(r[1], VERSION_WITH_RESETS);
        assert_eq!(State::decode(&r).unwrap().encode(), r);
        for cut in 0..r.len() {
            assert!(matches!(PnCounter.read(&r[..cut]), Err(ResolveError::Corrupt(_))));
        }
        let mut forged = r.clone();
        forged.truncate(forged.len() - 16);
        forged.extend_from_slice(&[0; 16]);
        assert!(matches!(PnCounter.read(&forged), Err(ResolveError::Corrupt(_))));
    }

    proptest! {
        /// Against a model that records, per actor, the increments and decrements each
        /// replica has seen and the largest totals a reset observed: every replica and the
        /// merge of all of them read the sum over actors of what lies above the baselines.
        #[test]
        fn resets_follow_the_model(
            ops in proptest::collection::vec((0usize..3, 0u8..4, -5i64..6, 0usize..3), 1..60),
        ) {
            // Per replica: per actor (increments, decrements, increments reset, decrements reset).
            type Totals = [[u64; 4]; 3];
            let mut replicas: Vec<Option<Vec<u8>>> = vec![None; 3];
            let mut models: Vec<Totals> = vec![[[0; 4]; 3]; 3];
            let merge = |a: &mut Totals, b: &Totals| {
                for (x, y) in a.iter_mut().zip(b) {
                    for (p, q) in x.iter_mut().zip(y) {
                        *p = (*p).max(*q);
                    }
                }
            };
            let value_of = |m: &Totals| -> i64 {
                m.iter().map(|t| t[0].saturating_sub(t[2]) as i64 - t[1].saturating_sub(t[3]) as i64).sum()
            };
            for (r, kind, delta, from) in ops {
                match kind {
                    0 | 1 => {
                        replicas[r] = Some(PnCounter.apply(replicas[r].as_deref(), &incr(&[delta]), &stamp(&format!("n{r}"))).unwrap());
                        let t = &mut models[r][r];
                        if delta > 0 { t[0] += delta as u64 } else { t[1] += delta.unsigned_abs() }
                    }
                    2 => {
                        let (context, observed) = match replicas[from].as_deref() {
                            Some(state) => (ctx(state), models[from]),
                            None => continue,
                        };
                        replicas[r] = Some(PnCounter.apply(replicas[r].as_deref(), &reset_with(&context), &stamp(&format!("n{r}"))).unwrap());
                        for (t, o) in models[r].iter_mut().zip(&observed) {
                            t[2] = t[2].max(o[0]);
                            t[3] = t[3].max(o[1]);
                        }
                    }
                    _ => {
                        if let Some(state) = replicas[from].clone() {
                            replicas[r] = Some(match &replicas[r] {
                                Some(to) => PnCounter.merge(to, &state).unwrap(),
                                None => state,
                            });
                            let m = models[from];
                            merge(&mut models[r], &m);
                        }
                    }
                }
                if let Some(state) = replicas[r].as_deref() {
                    prop_assert_eq!(value(state), value_of(&models[r]));
                }
            }
            let states: Vec<Vec<u8>> = replicas.into_iter().flatten().collect();
            if let Some(first) = states.first() {
                let merged = states[1..].iter().fold(first.clone(), |acc, s| PnCounter.merge(&acc, s).unwrap());
                let mut all = models[0];
                merge(&mut all, &models[1]);
                merge(&mut all, &models[2]);
                prop_assert_eq!(value(&merged), value_of(&all));
            }
        }
    }
}
