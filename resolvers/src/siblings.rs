//! # siblings: Dynamo versioning with dotted version vectors
//!
//! A state is a set of **siblings** (values written concurrently, none of which has seen
//! the others) and one **version vector**, the state's causal context: the writes it has
//! seen, whether their values are still here or were superseded. Each sibling carries the
//! **dot** `(actor, counter)` of the write that made it, covered by the vector. This is the
//! "dotted version vector set" of Preguiça et al. ("Dotted Version Vectors: Efficient
//! Causality Tracking for Distributed Key-Value Stores") in its container form: one vector
//! for the key, one dot per value.
//!
//! Why dots: with a plain version vector per value and server-side actors, two clients that
//! write through the same coordinator look concurrent or one is lost. Keeping the context a
//! client read (what it supersedes) apart from the dot of its new write (which coordinator
//! made it, which number) lets a coordinator tell "this client saw version 3, and versions 4
//! and 5 came from others in the meantime": the new value supersedes 1..=3 and becomes a
//! sibling of 4 and 5, and nothing else. Interleaved read-modify-write cycles therefore never
//! produce false siblings, whichever coordinators they go through.
//!
//! ## Operations
//! - **put(value, context)** at actor `A`: the context (a vector from an earlier read, empty
//!   for a blind write) is joined into the clock, every sibling it covers is dropped, and the
//!   value becomes a sibling with dot `(A, clock[A] + 1)`. A blind put supersedes nothing.
//! - **delete(context)** drops the siblings the context covers and joins it into the clock;
//!   it adds no sibling. A state with no sibling and a non-empty clock is a **tombstone with
//!   a clock**: it reads as not found, and its clock still makes the writes it deleted lose
//!   against it. A delete with **no context** (empty bytes: the client did not read) stands
//!   for the coordinator's own clock: it deletes what the coordinator holds (a delete that
//!   could delete nothing would be useless). The context of a read of an empty state is not
//!   "no context": it observed nothing and deletes nothing.
//! - **merge** keeps a sibling present on both sides, and a sibling present on one side only
//!   if the other side's clock does not cover its dot (if it does, the other side superseded
//!   it); the clocks are joined. This is a least upper bound, so merge is commutative,
//!   associative and idempotent.
//! - **read** returns the live values in dot order (actor bytes, then counter) and the
//!   encoded clock as the context. Equal values written concurrently stay separate siblings.
//!
//! ## Limits
//! [`ResolverConfig::siblings_hard_max`]: a put that would leave more siblings than that is
//! refused with [`ResolveError::TooManySiblings`] and stores nothing; the client must read,
//! resolve and write back with the context (which shrinks the set). Deletes are never
//! refused (they only shrink it), and neither are merges: a replica must always take in what
//! another has, so a merged state may exceed the limit. [`sibling_count`] lets the node warn
//! at [`ResolverConfig::siblings_soft_max`].
//!
//! Body layout, version 1 (a version vector is encoded as in [`crate::causal`]):
//!
//! | size   | field                                                         |
//! |--------|---------------------------------------------------------------|
//! | ..     | clock (version vector)                                        |
//! | 4      | sibling count S (u32)                                         |
//! | S × .. | per sibling, ascending by dot: actor index into the clock (u32), counter (u64), value (u32 length + bytes) |
//!
//! The context returned by a read is the header (`siblings` tag, version 1) and the clock.

use std::cmp::Ordering;

use crate::causal::{check_actor, decode_context, encode_context, VersionVector};
use crate::codec::{Decoder, Encoder, Tag};
use crate::{Read, ResolveError, Resolver, ResolverConfig, ResolverKind, Stamp, Value, Write};

/// Current body format version.
pub const VERSION: u8 = 1;

/// Smallest encoded sibling: actor index, counter, empty value.
const SIBLING_BYTES_MIN: usize = 4 + 8 + 4;

/// The dotted-version-vector resolver. See the module documentation.
#[derive(Clone, Copy, Debug, Default)]
pub struct Siblings {
    config: ResolverConfig,
}

/// One sibling: the dot of the write that made it, and its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Sibling<'a> {
    actor: &'a [u8],
    counter: u64,
    value: &'a [u8],
}

impl Sibling<'_> {
    fn dot_order(&self, other: &Self) -> Ordering {
        (self.actor, self.counter).cmp(&(other.actor, other.counter))
    }
}

/// A decoded siblings state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct State<'a> {
    clock: VersionVector<'a>,
    /// Sorted by dot; every dot covered by `clock`.
    siblings: Vec<Sibling<'a>>,
}

impl<'a> State<'a> {
    fn decode(bytes: &'a [u8]) -> Result<Self, ResolveError> {
        let (mut d, version) = Decoder::new(bytes, Tag::Siblings)?;
        if version != VERSION {
            return Err(ResolveError::Corrupt(format!(
                "siblings state version {version} is unknown"
            )));
        }
        let clock = VersionVector::decode(&mut d)?;
        let actors: Vec<&'a [u8]> = clock.iter().map(|(a, _)| a).collect();
        let n = d.count("siblings", SIBLING_BYTES_MIN)?;
        let mut siblings: Vec<Sibling<'a>> = Vec::with_capacity(n);
        for _ in 0..n {
            let index = d.u32("actor index")? as usize;
            let counter = d.u64("counter")?;
            let value = d.bytes("value")?;
            let actor = *actors.get(index).ok_or_else(|| {
                ResolveError::Corrupt(format!("actor index {index} outside the clock"))
            })?;
            let sibling = Sibling { actor, counter, value };
            if counter == 0 || !clock.covers(actor, counter) {
                return Err(ResolveError::Corrupt("a sibling the clock does not cover".into()));
            }
            if siblings.last().is_some_and(|last| last.dot_order(&sibling) != Ordering::Less) {
                return Err(ResolveError::Corrupt("siblings out of order".into()));
            }
            siblings.push(sibling);
        }
        d.finish()?;
        Ok(Self { clock, siblings })
    }

    fn encode(&self) -> Vec<u8> {
        let mut e = Encoder::new(Tag::Siblings, VERSION);
        self.clock.encode(&mut e);
        e.u32(self.siblings.len() as u32);
        for s in &self.siblings {
            let index = self.clock.index_of(s.actor).expect("sibling actor missing from clock");
            e.u32(index as u32).u64(s.counter).bytes(s.value);
        }
        e.finish()
    }

    /// Drop the siblings `context` covers and join it into the clock.
    fn supersede(&mut self, context: &VersionVector<'a>) {
        self.siblings.retain(|s| !context.covers(s.actor, s.counter));
        self.clock = self.clock.join(context);
    }

    fn join(&self, other: &State<'a>) -> State<'a> {
        let (a, b) = (&self.siblings, &other.siblings);
        let mut siblings = Vec::with_capacity(a.len().max(b.len()));
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            match a[i].dot_order(&b[j]) {
                Ordering::Less => {
                    if !other.clock.covers(a[i].actor, a[i].counter) {
                        siblings.push(a[i]);
                    }
                    i += 1;
                }
                Ordering::Greater => {
                    if !self.clock.covers(b[j].actor, b[j].counter) {
                        siblings.push(b[j]);
                    }
                    j += 1;
                }
                Ordering::Equal => {
                    // One dot is one write, so both values are the same; the maximum keeps
                    // the merge a least upper bound even for states that break that rule.
                    siblings.push(if a[i].value >= b[j].value { a[i] } else { b[j] });
                    i += 1;
                    j += 1;
                }
            }
        }
        siblings.extend(a[i..].iter().filter(|s| !other.clock.covers(s.actor, s.counter)));
        siblings.extend(b[j..].iter().filter(|s| !self.clock.covers(s.actor, s.counter)));
        State { clock: self.clock.join(&other.clock), siblings }
    }
}

impl Siblings {
    /// A siblings resolver with the bucket's limits.
    pub fn new(config: ResolverConfig) -> Self {
        Self { config }
    }

    /// The bucket's limits.
    pub fn config(&self) -> ResolverConfig {
        self.config
    }

    /// How many siblings `state` holds; see [`sibling_count`].
    pub fn sibling_count(&self, state: &[u8]) -> Result<usize, ResolveError> {
        sibling_count(state)
    }

    /// Whether `state` is a tombstone; see [`is_tombstone`].
    pub fn is_tombstone(&self, state: &[u8]) -> Result<bool, ResolveError> {
        is_tombstone(state)
    }
}

/// How many siblings a `siblings` state holds (0 for a tombstone). The node calls this on
/// the states it stores for a `siblings` bucket (it holds the resolver as `dyn Resolver`, so
/// this is a free function) and warns at [`ResolverConfig::siblings_soft_max`].
pub fn sibling_count(state: &[u8]) -> Result<usize, ResolveError> {
    Ok(State::decode(state)?.siblings.len())
}

/// Whether a `siblings` state is a tombstone: no sibling left, only the clock of what was
/// deleted.
pub fn is_tombstone(state: &[u8]) -> Result<bool, ResolveError> {
    Ok(State::decode(state)?.siblings.is_empty())
}

impl Resolver for Siblings {
    fn kind(&self) -> ResolverKind {
        ResolverKind::Siblings
    }

    fn apply(
        &self,
        current: Option<&[u8]>,
        write: &Write,
        stamp: &Stamp,
    ) -> Result<Vec<u8>, ResolveError> {
        check_actor(&stamp.actor)?;
        let mut state = match current {
            Some(bytes) => State::decode(bytes)?,
            None => State::default(),
        };
        match write {
            Write::Put { value, context } => {
                if let Some(context) = decode_context(Tag::Siblings, VERSION, context)? {
                    state.supersede(&context);
                }
                let actor = stamp.actor.as_slice();
                let counter = state.clock.next_counter(actor)?;
                let sibling = Sibling { actor, counter, value };
                let at = state.siblings.partition_point(|s| s.dot_order(&sibling).is_lt());
                state.siblings.insert(at, sibling);
                state.clock.raise(actor, counter);
                if state.siblings.len() > self.config.siblings_hard_max {
                    return Err(ResolveError::TooManySiblings {
                        count: state.siblings.len(),
                        max: self.config.siblings_hard_max,
                    });
                }
            }
            Write::Delete { context } => match decode_context(Tag::Siblings, VERSION, context)? {
                Some(context) => state.supersede(&context),
                None => state.siblings.clear(),
            },
            Write::Update { .. } => {
                return Err(ResolveError::WrongOperation {
                    resolver: "siblings",
                    operation: write.name(),
                })
            }
        }
        Ok(state.encode())
    }

    fn merge(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, ResolveError> {
        let (sa, sb) = (State::decode(a)?, State::decode(b)?);
        Ok(sa.join(&sb).encode())
    }

    fn issued(&self, state: &[u8], actor: &[u8]) -> Result<u64, ResolveError> {
        Ok(State::decode(state)?.clock.get(actor))
    }

    fn max_timestamp_ms(&self, _state: &[u8]) -> Result<Option<u64>, ResolveError> {
        // Dots and a version vector, no clock readings: see the trait.
        Ok(None)
    }

    fn read(&self, state: &[u8]) -> Result<Read, ResolveError> {
        let state = State::decode(state)?;
        let value = (!state.siblings.is_empty())
            .then(|| Value::Siblings(state.siblings.iter().map(|s| s.value.to_vec()).collect()));
        Ok(Read { context: encode_context(Tag::Siblings, VERSION, &state.clock), value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Op, Timestamp};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const R: Siblings =
        Siblings { config: ResolverConfig { siblings_soft_max: 2, siblings_hard_max: 3 } };

    fn stamp(actor: &str) -> Stamp {
        Stamp { actor: actor.as_bytes().to_vec(), time: Timestamp::default() }
    }

    fn put(value: &str, context: &[u8]) -> Write {
        Write::Put { value: value.as_bytes().to_vec(), context: context.to_vec() }
    }

    fn values(state: &[u8]) -> Vec<String> {
        match R.read(state).unwrap().value {
            Some(Value::Siblings(v)) => {
                v.into_iter().map(|v| String::from_utf8(v).unwrap()).collect()
            }
            None => Vec::new(),
            other => panic!("unexpected value {other:?}"),
        }
    }

    fn context(state: &[u8]) -> Vec<u8> {
        R.read(state).unwrap().context
    }

    /// Two blind writers through different coordinators make two siblings, in dot order.
    #[test]
    fn blind_writes_become_siblings() {
        let a = R.apply(None, &put("a", b""), &stamp("n1")).unwrap();
        let b = R.apply(None, &put("b", b""), &stamp("n2")).unwrap();
        let merged = R.merge(&a, &b).unwrap();
        assert_eq!(values(&merged), ["a", "b"]);
        assert_eq!(R.merge(&b, &a).unwrap(), merged);
        assert_eq!(R.sibling_count(&merged).unwrap(), 2);
    }

    /// Two blind writers through the *same* coordinator also make siblings (not a lost write).
    #[test]
    fn blind_writes_at_one_coordinator_become_siblings() {
        let a = R.apply(None, &put("a", b""), &stamp("n1")).unwrap();
        let b = R.apply(Some(&a), &put("b", b""), &stamp("n1")).unwrap();
        assert_eq!(values(&b), ["a", "b"]);
    }

    /// A put with the context of a read supersedes exactly what was read, and a concurrent
    /// write the reader did not see stays as a sibling (the DVV case a plain vector gets wrong).
    #[test]
    fn context_supersedes_exactly_what_was_read() {
        let v1 = R.apply(None, &put("v1", b""), &stamp("n1")).unwrap();
        let ctx1 = context(&v1);
        // Another client writes blind through the same coordinator after the read.
        let v2 = R.apply(Some(&v1), &put("other", b""), &stamp("n1")).unwrap();
        let v3 = R.apply(Some(&v2), &put("v1-edited", &ctx1), &stamp("n1")).unwrap();
        assert_eq!(values(&v3), ["other", "v1-edited"]);
        // A put with the full context resolves both.
        let v4 = R.apply(Some(&v3), &put("resolved", &context(&v3)), &stamp("n2")).unwrap();
        assert_eq!(values(&v4), ["resolved"]);
        assert_eq!(R.merge(&v3, &v4).unwrap(), v4);
    }

    /// Two clients alternating read-modify-write, each through its own coordinator, with
    /// and without replication in between, never produce a sibling.
    #[test]
    fn alternating_read_modify_write_makes_no_siblings() {
        for replicate in [true, false] {
            let mut replicas: Vec<Option<Vec<u8>>> = vec![None, None];
            for round in 0..20 {
                let client = round % 2;
                // Each client reads from the replica the last write went to (R=1 there),
                // then writes through its own coordinator.
                let read_from = if round == 0 { 0 } else { 1 - client };
                let ctx = replicas[read_from].as_deref().map(context).unwrap_or_default();
                let actor = if client == 0 { "n1" } else { "n2" };
                let next = R
                    .apply(
                        replicas[client].as_deref(),
                        &put(&format!("w{round}"), &ctx),
                        &stamp(actor),
                    )
                    .unwrap();
                replicas[client] = Some(next.clone());
                if replicate {
                    let other = &mut replicas[1 - client];
                    *other = Some(match other {
                        Some(s) => R.merge(s, &next).unwrap(),
                        None => next.clone(),
                    });
                }
                let merged = match &replicas[1 - client] {
                    Some(s) => R.merge(s, &next).unwrap(),
                    None => next.clone(),
                };
                assert_eq!(values(&merged), [format!("w{round}")], "replicate={replicate}");
            }
        }
    }

    /// A delete with a context leaves a tombstone with a clock: it reads as not found, with
    /// a context, and wins against the deleted value on merge; a concurrent put survives it.
    #[test]
    fn delete_is_a_tombstone_with_a_clock() {
        let v = R.apply(None, &put("v", b""), &stamp("n1")).unwrap();
        let del = Write::Delete { context: context(&v) };
        let t = R.apply(Some(&v), &del, &stamp("n2")).unwrap();
        let read = R.read(&t).unwrap();
        assert_eq!(read.value, None);
        assert!(!read.context.is_empty());
        assert!(R.is_tombstone(&t).unwrap());
        assert_eq!(R.merge(&v, &t).unwrap(), t);
        let concurrent = R.apply(Some(&v), &put("new", b""), &stamp("n1")).unwrap();
        assert_eq!(values(&R.merge(&t, &concurrent).unwrap()), ["new"]);
        // An empty-context delete removes what the coordinator holds.
        let t2 = R.apply(Some(&v), &Write::Delete { context: Vec::new() }, &stamp("n1")).unwrap();
        assert_eq!(values(&t2), Vec::<String>::new());
        assert_eq!(R.merge(&v, &t2).unwrap(), t2);
    }

    /// At the hard limit a blind put is refused with TooManySiblings, a put with the context
    /// still goes through, and merge past the limit is never refused.
    #[test]
    fn hard_limit_refuses_puts_but_not_merges() {
        let mut state: Option<Vec<u8>> = None;
        for i in 0..3 {
            let s = R.apply(state.as_deref(), &put(&format!("{i}"), b""), &stamp("n1")).unwrap();
            state = Some(s);
        }
        let full = state.unwrap();
        assert_eq!(R.sibling_count(&full).unwrap(), 3);
        let err = R.apply(Some(&full), &put("one-too-many", b""), &stamp("n1")).unwrap_err();
        assert_eq!(err, ResolveError::TooManySiblings { count: 4, max: 3 });
        let other = R.apply(None, &put("elsewhere", b""), &stamp("n2")).unwrap();
        let merged = R.merge(&full, &other).unwrap();
        assert_eq!(R.sibling_count(&merged).unwrap(), 4);
        let resolved = R.apply(Some(&merged), &put("r", &context(&merged)), &stamp("n1")).unwrap();
        assert_eq!(values(&resolved), ["r"]);
    }

    #[derive(Clone, Debug)]
    enum ModelStep {
        /// A put at `replica` with the context of a read of `read_from` (or blind).
        Put {
            replica: usize,
            read_from: Option<usize>,
        },
        /// A delete at `replica` with the context of a read of `read_from` (or none).
        Delete {
            replica: usize,
            read_from: Option<usize>,
        },
        Sync {
            from: usize,
            to: usize,
        },
    }

    fn model_step() -> impl Strategy<Value = ModelStep> {
        let from = proptest::option::weighted(0.8, 0usize..3);
        prop_oneof![
            4 => (0usize..3, from.clone()).prop_map(|(replica, read_from)| ModelStep::Put { replica, read_from }),
            1 => (0usize..3, from).prop_map(|(replica, read_from)| ModelStep::Delete { replica, read_from }),
            3 => (0usize..3, 0usize..3).prop_map(|(from, to)| ModelStep::Sync { from, to }),
        ]
    }

    proptest! {
        /// Against a model that names every write: after all replicas merge, the siblings
        /// are exactly the writes that no later write's context (or no-context delete at a
        /// replica that had seen them) observed. No false siblings, no lost writes.
        #[test]
        fn siblings_are_the_writes_nobody_superseded(
            steps in proptest::collection::vec(model_step(), 1..60),
        ) {
            let r = Siblings::new(ResolverConfig { siblings_soft_max: 1_000, siblings_hard_max: 1_000 });
            let mut replicas: Vec<Option<Vec<u8>>> = vec![None; 3];
            let mut seen: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); 3];
            let mut writes: BTreeSet<usize> = BTreeSet::new();
            let mut superseded: BTreeSet<usize> = BTreeSet::new();
            for (id, step) in steps.iter().enumerate() {
                match *step {
                    ModelStep::Put { replica, read_from } | ModelStep::Delete { replica, read_from } => {
                        let context = read_from
                            .and_then(|f| replicas[f].as_deref())
                            .map(|s| r.read(s).unwrap().context)
                            .unwrap_or_default();
                        let observed = match (read_from, context.is_empty()) {
                            (Some(f), false) => seen[f].clone(),
                            _ => BTreeSet::new(),
                        };
                        let write = match step {
                            ModelStep::Put { .. } => Write::Put { value: id.to_string().into_bytes(), context: context.clone() },
                            _ => Write::Delete { context: context.clone() },
                        };
                        let next = r.apply(replicas[replica].as_deref(), &write, &stamp(&format!("n{replica}"))).unwrap();
                        replicas[replica] = Some(next);
                        if matches!(step, ModelStep::Delete { .. }) && context.is_empty() {
                            superseded.extend(seen[replica].iter().copied());
                        }
                        superseded.extend(observed.iter().copied());
                        seen[replica].extend(observed);
                        if matches!(step, ModelStep::Put { .. }) {
                            writes.insert(id);
                            seen[replica].insert(id);
                        }
                    }
                    ModelStep::Sync { from, to } => {
                        if let Some(f) = replicas[from].clone() {
                            replicas[to] = Some(match &replicas[to] {
                                Some(t) => r.merge(t, &f).unwrap(),
                                None => f,
                            });
                            let from_seen = seen[from].clone();
                            seen[to].extend(from_seen);
                        }
                    }
                }
            }
            let states: Vec<Vec<u8>> = replicas.into_iter().flatten().collect();
            let Some(first) = states.first() else { return Ok(()) };
            let merged = states[1..].iter().fold(first.clone(), |acc, s| r.merge(&acc, s).unwrap());
            let got: BTreeSet<usize> = values(&merged).iter().map(|v| v.parse().unwrap()).collect();
            let expected: BTreeSet<usize> = writes.difference(&superseded).copied().collect();
            prop_assert_eq!(got, expected);
        }
    }

    /// CRDT operations are refused, and so are contexts that do not decode.
    #[test]
    fn refusals() {
        let write = Write::Update { ops: vec![Op::SetAdd(b"x".to_vec())], context: Vec::new() };
        assert_eq!(
            R.apply(None, &write, &stamp("n1")).unwrap_err(),
            ResolveError::WrongOperation { resolver: "siblings", operation: "set add" }
        );
        assert!(matches!(
            R.apply(None, &put("v", b"\x01\x01garbage"), &stamp("n1")),
            Err(ResolveError::BadContext(_))
        ));
    }

    /// Encoding round-trips byte for byte; truncations and bad orders are Corrupt.
    #[test]
    fn encoding() {
        let a = R.apply(None, &put("a", b""), &stamp("n1")).unwrap();
        let b = R.apply(None, &put("b", b""), &stamp("n2")).unwrap();
        let s = R.merge(&a, &b).unwrap();
        assert_eq!(State::decode(&s).unwrap().encode(), s);
        for cut in 0..s.len() {
            assert!(matches!(R.read(&s[..cut]), Err(ResolveError::Corrupt(_))), "cut {cut}");
        }
        // Swap the two siblings' actor indexes: out of order.
        let mut swapped = State::decode(&s).unwrap();
        swapped.siblings.reverse();
        assert!(R.read(&swapped.encode()).is_err());
    }
}
