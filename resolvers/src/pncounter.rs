//! # pncounter: a positive-negative counter
//!
//! A state holds, for each actor (coordinating node) that ever changed the counter, two
//! grow-only totals: how much it added (`increments`) and how much it subtracted
//! (`decrements`). An actor only ever changes its own totals, so merge takes each actor's
//! maximum of each total; the value is the sum of increments minus the sum of decrements.
//! The size is bounded by the number of actors (nodes), never by the number of operations.
//!
//! ## Arithmetic at the edges
//! Nothing wraps and no write is silently cut short:
//! - Totals are `u64`. An increment that would take the coordinator's total past `u64::MAX`
//!   is refused with [`ResolveError::Overflow`] and produces no state (it would otherwise
//!   be acknowledged and then not counted).
//! - The value a client sees is an `i64`. A write that would leave the value, as the
//!   coordinator holds it, outside the `i64` range, or further outside it than it was, is
//!   refused with [`ResolveError::Overflow`]. A write that brings a value back towards the
//!   range is taken.
//! - **Reading** computes the value exactly in 128 bits (one actor's share is within
//!   ±(2^64 - 1), and a state holds far fewer than 2^63 actors) and then **saturates** it to
//!   the `i64` range. A value can still pass the range without any refused write: two
//!   coordinators that each stayed within it, merged. A read then shows `i64::MAX` (or
//!   `i64::MIN`), never a wrapped value, and a decrement brings it back. Merge is never
//!   refused (replicas must take in each other's states) and takes per-actor maxima, so it
//!   cannot overflow.
//!
//! Writes take only [`Op::CounterIncrement`] (negative = decrement). The context is not
//! used (counter operations commute, there is nothing to supersede), but a read's context is
//! empty and a write must send back that or nothing: any other context is
//! [`ResolveError::BadContext`], as with every resolver. A read always returns a counter
//! value (0 for a counter nobody changed) and an empty context. An increment of 0 changes
//! nothing.
//!
//! Body layout, version 1:
//!
//! | size   | field                                                            |
//! |--------|------------------------------------------------------------------|
//! | 4      | actor count N (u32)                                              |
//! | N × .. | per actor, ascending: length (u8), actor id, increments (u64), decrements (u64); never both 0 |

use crate::causal::check_actor;
use crate::codec::{Decoder, Encoder, Tag};
use crate::{Op, Read, ResolveError, Resolver, ResolverKind, Stamp, Value, Write};

/// Current body format version.
pub const VERSION: u8 = 1;

/// Smallest encoded actor entry: length byte, empty actor, two totals.
const ENTRY_BYTES_MIN: usize = 1 + 8 + 8;

/// The PN-counter resolver. See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct PnCounter;

/// One actor's totals.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry<'a> {
    actor: &'a [u8],
    increments: u64,
    decrements: u64,
}

/// A decoded counter: entries sorted by actor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State<'a> {
    entries: Vec<Entry<'a>>,
}

impl<'a> State<'a> {
    fn decode(bytes: &'a [u8]) -> Result<Self, ResolveError> {
        let (mut d, version) = Decoder::new(bytes, Tag::Pncounter)?;
        if version != VERSION {
            return Err(ResolveError::Corrupt(format!(
                "pncounter state version {version} is unknown"
            )));
        }
        let n = d.count("actors", ENTRY_BYTES_MIN)?;
        let mut entries: Vec<Entry<'a>> = Vec::with_capacity(n);
        for _ in 0..n {
            let len = d.u8("actor length")? as usize;
            let actor = d.take_exact(len, "actor")?;
            let entry =
                Entry { actor, increments: d.u64("increments")?, decrements: d.u64("decrements")? };
            if entries.last().is_some_and(|last| last.actor >= actor) {
                return Err(ResolveError::Corrupt("pncounter actors out of order".into()));
            }
            if entry.increments == 0 && entry.decrements == 0 {
                return Err(ResolveError::Corrupt("pncounter entry of zeros".into()));
            }
            entries.push(entry);
        }
        d.finish()?;
        Ok(Self { entries })
    }

    fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Tag::Pncounter, VERSION);
        e.u32(self.entries.len() as u32);
        for entry in &self.entries {
            e.u8(entry.actor.len() as u8).raw(entry.actor);
            e.u64(entry.increments).u64(entry.decrements);
        }
        e.finish()
    }

    /// Add `delta` to `actor`'s totals; [`ResolveError::Overflow`] (and the state unchanged)
    /// if a total would pass `u64::MAX`.
    fn add(&mut self, actor: &'a [u8], delta: i64) -> Result<(), ResolveError> {
        if delta == 0 {
            return Ok(());
        }
        let i = match self.entries.binary_search_by(|e| e.actor.cmp(actor)) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, Entry { actor, increments: 0, decrements: 0 });
                i
            }
        };
        let entry = &mut self.entries[i];
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
            true
        });
        State { entries }
    }

    /// The exact value, in 128 bits (see "Arithmetic at the edges").
    fn exact(&self) -> i128 {
        self.entries.iter().map(|e| i128::from(e.increments) - i128::from(e.decrements)).sum()
    }

    /// The value a client sees: the exact value saturated to the `i64` range.
    fn value(&self) -> i64 {
        self.exact().clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }
}

/// How far `value` is outside the `i64` range (0 inside it).
fn excess(value: i128) -> u128 {
    value.abs_diff(value.clamp(i128::from(i64::MIN), i128::from(i64::MAX)))
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
        check_actor(&stamp.actor)?;
        let wrong = |operation| ResolveError::WrongOperation { resolver: "pncounter", operation };
        let Write::Update { ops, context } = write else {
            return Err(wrong(write.name()));
        };
        if let Some(op) = ops.iter().find(|op| !matches!(op, Op::CounterIncrement(_))) {
            return Err(wrong(op.name()));
        }
        if !context.is_empty() {
            return Err(ResolveError::BadContext(format!(
                "a counter's context is empty, as a read returns it, not {} bytes",
                context.len()
            )));
        }
        let mut state = match current {
            Some(bytes) => State::decode(bytes)?,
            None => State::default(),
        };
        let before = state.exact();
        for op in ops {
            if let Op::CounterIncrement(delta) = op {
                state.add(&stamp.actor, *delta)?;
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
        Ok(state.encode())
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
        Ok(Read { context: Vec::new(), value: Some(Value::Counter(state.value())) })
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
        let zero = State { entries: vec![Entry { actor: b"n1", increments: 0, decrements: 0 }] };
        assert!(PnCounter.read(&zero.encode()).is_err());
    }
}
