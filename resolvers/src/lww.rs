//! # lww: last write wins
//!
//! A state is one value (or a tombstone) with the hybrid-logical-clock timestamp of the write
//! that made it and the id of the actor that coordinated that write. Merge keeps the greater
//! state under one total order: timestamp, then actor id, then tombstone-before-value, then
//! value bytes. The last two keys only matter for states that share timestamp and actor,
//! which one coordinator never produces; they keep merge a true least upper bound (and so
//! commutative) even for such states.
//!
//! **Concurrent writes are lost, by contract.** Two clients that write the same key at about
//! the same time each get an acknowledgement, and afterwards only the one with the greater
//! timestamp is seen. Use `siblings` or a CRDT resolver where that is not acceptable.
//!
//! The context is ignored on writes: the HLC makes a coordinator's new write greater than the
//! state it holds for the key (apply stamps `max(stamp, current.successor())`), which is what
//! a read-modify-write through that coordinator needs. A read returns the 12-byte timestamp
//! as its context so that clients can see what they read. A write's context must still be
//! one a read returned (empty, or 12 bytes): anything else is [`ResolveError::BadContext`],
//! as with every resolver, so a client that mixes up buckets hears of it.
//!
//! ## The end of time
//! A current state stamped with the greatest timestamp `(u64::MAX, u32::MAX)` has no
//! successor: a write on it is refused with [`ResolveError::Overflow`] rather than stamped
//! with a smaller timestamp, which would be acknowledged and then lose to the state it was
//! meant to replace. The node keeps such states out in the first place: it refuses
//! replicated states stamped further ahead of its clock than the cluster's maximum clock
//! offset ([`Resolver::max_timestamp_ms`]).
//!
//! Body layout, version 1:
//!
//! | offset  | size | field                                   |
//! |---------|------|-----------------------------------------|
//! | 0       | 12   | timestamp (physical_ms u64, logical u32) |
//! | 12      | 1    | actor length A                          |
//! | 13      | A    | actor id                                |
//! | 13+A    | 1    | kind: 0 tombstone, 1 value              |
//! | 14+A    | 4+V  | value (u32 length + bytes), kind 1 only  |

use std::cmp::Ordering;

use crate::codec::{Decoder, Encoder, Tag, ACTOR_BYTES_MAX};
use crate::hlc::{Timestamp, TIMESTAMP_BYTES};
use crate::{Read, ResolveError, Resolver, ResolverKind, Stamp, Value, Write};

/// Current body format version.
pub const VERSION: u8 = 1;

const KIND_TOMBSTONE: u8 = 0;
const KIND_VALUE: u8 = 1;

/// The last-write-wins resolver. See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Lww;

/// A decoded lww state.
#[derive(Clone, Debug, PartialEq, Eq)]
struct State<'a> {
    time: Timestamp,
    actor: &'a [u8],
    /// `None` for a tombstone.
    value: Option<&'a [u8]>,
}

impl<'a> State<'a> {
    fn decode(bytes: &'a [u8]) -> Result<Self, ResolveError> {
        let (mut d, version) = Decoder::new(bytes, Tag::Lww)?;
        if version != VERSION {
            return Err(ResolveError::Corrupt(format!("lww state version {version} is unknown")));
        }
        let time = d.timestamp("timestamp")?;
        let actor_len = d.u8("actor length")? as usize;
        let actor = d.take_exact(actor_len, "actor")?;
        let value = match d.u8("kind")? {
            KIND_TOMBSTONE => None,
            KIND_VALUE => Some(d.bytes("value")?),
            other => return Err(ResolveError::Corrupt(format!("lww kind byte {other}"))),
        };
        d.finish()?;
        Ok(Self { time, actor, value })
    }

    fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Tag::Lww, VERSION);
        e.timestamp(self.time);
        e.u8(self.actor.len() as u8);
        e.raw(self.actor);
        match self.value {
            None => e.u8(KIND_TOMBSTONE),
            Some(value) => e.u8(KIND_VALUE).bytes(value),
        };
        e.finish()
    }

    /// The total order merge takes the maximum of.
    fn order(&self, other: &Self) -> Ordering {
        (self.time, self.actor, self.value).cmp(&(other.time, other.actor, other.value))
    }
}

impl Resolver for Lww {
    fn kind(&self) -> ResolverKind {
        ResolverKind::Lww
    }

    fn apply(
        &self,
        current: Option<&[u8]>,
        write: &Write,
        stamp: &Stamp,
    ) -> Result<Vec<u8>, ResolveError> {
        if stamp.actor.len() > ACTOR_BYTES_MAX {
            return Err(ResolveError::BadRequest(format!(
                "actor id of {} bytes is over {ACTOR_BYTES_MAX}",
                stamp.actor.len()
            )));
        }
        let (value, context) = match write {
            Write::Put { value, context } => (Some(value.as_slice()), context),
            Write::Delete { context } => (None, context),
            Write::Update { .. } => {
                return Err(ResolveError::WrongOperation {
                    resolver: "lww",
                    operation: write.name(),
                })
            }
        };
        check_context(context)?;
        let floor = match current {
            Some(bytes) => State::decode(bytes)?.time.successor().ok_or_else(|| {
                ResolveError::Overflow(
                    "the key's state carries the greatest timestamp: no write can follow it".into(),
                )
            })?,
            None => Timestamp::default(),
        };
        let time = stamp.time.max(floor);
        Ok(State { time, actor: &stamp.actor, value }.encode())
    }

    fn merge(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, ResolveError> {
        let (sa, sb) = (State::decode(a)?, State::decode(b)?);
        Ok(match sa.order(&sb) {
            Ordering::Less => b.to_vec(),
            Ordering::Equal | Ordering::Greater => a.to_vec(),
        })
    }

    fn issued(&self, state: &[u8], _actor: &[u8]) -> Result<u64, ResolveError> {
        // Checked, so that a corrupt state is reported as it is everywhere else.
        State::decode(state)?;
        Ok(0)
    }

    fn read(&self, state: &[u8]) -> Result<Read, ResolveError> {
        let state = State::decode(state)?;
        Ok(Read {
            context: state.time.to_bytes().to_vec(),
            value: state.value.map(|v| Value::Siblings(vec![v.to_vec()])),
        })
    }

    fn max_timestamp_ms(&self, state: &[u8]) -> Result<Option<u64>, ResolveError> {
        Ok(Some(State::decode(state)?.time.physical_ms))
    }
}

/// Whether an `lww` state is a tombstone (a delete won), decoded without copying its value:
/// the node asks it of every state it stores, to keep its anti-entropy trees.
pub fn is_tombstone(state: &[u8]) -> Result<bool, ResolveError> {
    Ok(State::decode(state)?.value.is_none())
}

/// A write's context must be one a read returned: none, or a 12-byte timestamp.
fn check_context(context: &[u8]) -> Result<(), ResolveError> {
    if context.is_empty() || context.len() == TIMESTAMP_BYTES {
        return Ok(());
    }
    Err(ResolveError::BadContext(format!(
        "an lww context is the {TIMESTAMP_BYTES}-byte timestamp a read returned, not {} bytes",
        context.len()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Op;

    fn stamp(actor: &str, physical_ms: u64, logical: u32) -> Stamp {
        Stamp { actor: actor.as_bytes().to_vec(), time: Timestamp { physical_ms, logical } }
    }

    fn put(value: &str) -> Write {
        Write::Put { value: value.as_bytes().to_vec(), context: Vec::new() }
    }

    fn visible(state: &[u8]) -> Option<Value> {
        Lww.read(state).unwrap().value
    }

    /// The later timestamp wins a merge, whichever side it is on.
    #[test]
    fn later_write_wins() {
        let old = Lww.apply(None, &put("old"), &stamp("n1", 10, 0)).unwrap();
        let new = Lww.apply(None, &put("new"), &stamp("n2", 11, 0)).unwrap();
        let expected = Some(Value::Siblings(vec![b"new".to_vec()]));
        assert_eq!(visible(&Lww.merge(&old, &new).unwrap()), expected);
        assert_eq!(visible(&Lww.merge(&new, &old).unwrap()), expected);
    }

    /// Equal timestamps are broken by actor id, the same way on both sides.
    #[test]
    fn ties_break_by_actor() {
        let a = Lww.apply(None, &put("from-a"), &stamp("a", 10, 0)).unwrap();
        let b = Lww.apply(None, &put("from-b"), &stamp("b", 10, 0)).unwrap();
        assert_eq!(Lww.merge(&a, &b).unwrap(), b);
        assert_eq!(Lww.merge(&b, &a).unwrap(), b);
    }

    /// A write at a coordinator whose clock is behind the stored state still supersedes it.
    #[test]
    fn apply_supersedes_current_even_with_a_slow_clock() {
        let current = Lww.apply(None, &put("first"), &stamp("n2", 500, 0)).unwrap();
        let next = Lww.apply(Some(&current), &put("second"), &stamp("n1", 100, 0)).unwrap();
        assert_eq!(Lww.merge(&current, &next).unwrap(), next);
        assert_eq!(visible(&next), Some(Value::Siblings(vec![b"second".to_vec()])));
    }

    /// A delete is a timestamped tombstone: it reads as not found and beats older writes.
    #[test]
    fn delete_is_a_tombstone() {
        let v = Lww.apply(None, &put("v"), &stamp("n1", 10, 0)).unwrap();
        let d = Lww
            .apply(Some(&v), &Write::Delete { context: Vec::new() }, &stamp("n1", 11, 0))
            .unwrap();
        let read = Lww.read(&d).unwrap();
        assert_eq!(read.value, None);
        assert_eq!(read.context, Timestamp { physical_ms: 11, logical: 0 }.to_bytes().to_vec());
        assert_eq!(Lww.merge(&v, &d).unwrap(), d);
        assert_eq!((is_tombstone(&v).unwrap(), is_tombstone(&d).unwrap()), (false, true));
        assert!(is_tombstone(b"not a state").is_err());
    }

    /// Two concurrent writes: exactly one survives (the documented loss).
    #[test]
    fn concurrent_writes_lose_one() {
        let a = Lww.apply(None, &put("a"), &stamp("n1", 10, 0)).unwrap();
        let b = Lww.apply(None, &put("b"), &stamp("n2", 10, 1)).unwrap();
        assert_eq!(
            visible(&Lww.merge(&a, &b).unwrap()),
            Some(Value::Siblings(vec![b"b".to_vec()]))
        );
    }

    /// CRDT operations are refused with WrongOperation.
    #[test]
    fn update_is_wrong_operation() {
        let write = Write::Update { ops: vec![Op::CounterIncrement(1)], context: Vec::new() };
        let err = Lww.apply(None, &write, &stamp("n1", 1, 0)).unwrap_err();
        assert_eq!(
            err,
            ResolveError::WrongOperation { resolver: "lww", operation: "counter increment" }
        );
    }

    /// A context that is neither empty nor a read's 12-byte timestamp is BadContext, on puts
    /// and deletes; a read's context is taken.
    #[test]
    fn garbage_context_is_bad_context() {
        let current = Lww.apply(None, &put("v"), &stamp("n1", 10, 0)).unwrap();
        let read = Lww.read(&current).unwrap().context;
        let ok = Write::Put { value: b"w".to_vec(), context: read.clone() };
        assert!(Lww.apply(Some(&current), &ok, &stamp("n1", 11, 0)).is_ok());
        for garbage in [b"x".to_vec(), vec![0; 13], [read.as_slice(), b"!"].concat()] {
            for write in [
                Write::Put { value: b"w".to_vec(), context: garbage.clone() },
                Write::Delete { context: garbage.clone() },
            ] {
                let err = Lww.apply(Some(&current), &write, &stamp("n1", 11, 0)).unwrap_err();
                assert!(matches!(err, ResolveError::BadContext(_)), "{err:?}");
            }
        }
    }

    /// A state stamped with the greatest timestamp cannot be followed: a write on it is
    /// Overflow (never a smaller, losing timestamp); max_timestamp_ms reads the stamp.
    #[test]
    fn the_greatest_timestamp_has_no_successor() {
        let forged = Lww.apply(None, &put("forged"), &stamp("x", u64::MAX, u32::MAX)).unwrap();
        assert_eq!(Lww.max_timestamp_ms(&forged), Ok(Some(u64::MAX)));
        let err = Lww.apply(Some(&forged), &put("mine"), &stamp("n1", 10, 0)).unwrap_err();
        assert!(matches!(err, ResolveError::Overflow(_)), "{err:?}");
        let almost = Lww.apply(None, &put("a"), &stamp("x", u64::MAX, u32::MAX - 1)).unwrap();
        let next = Lww.apply(Some(&almost), &put("b"), &stamp("n1", 10, 0)).unwrap();
        assert_eq!(Lww.merge(&almost, &next).unwrap(), next, "the one step left is taken");
        assert!(Lww.max_timestamp_ms(b"garbage").is_err());
    }

    /// Encoding round-trips byte for byte, and garbage is a typed error.
    #[test]
    fn encoding() {
        let s = Lww.apply(None, &put("value"), &stamp("node-7", 123, 4)).unwrap();
        let decoded = State::decode(&s).unwrap();
        assert_eq!(decoded.encode(), s);
        assert!(Lww.read(&s[..s.len() - 1]).is_err());
        assert!(Lww.read(b"\x02\x09whatever").is_err());
        assert!(Lww.merge(&s, b"").is_err());
    }
}
