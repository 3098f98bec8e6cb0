//! # Causal machinery: dots, version vectors and dot maps
//!
//! The causal resolvers (`siblings`, `orset`, `cart`) track *which writes a state has seen*
//! with the same three pieces, defined here once.
//!
//! - A **dot** `(actor, counter)` names one write: the `counter`-th write coordinated by
//!   `actor`. Actors are node ids (server-side actors), so a clock holds one entry per node
//!   that ever coordinated a write to the key, never one per client.
//! - A **version vector** maps each actor to the highest counter seen from it, and so stands
//!   for the set of dots `(actor, 1..=counter)`. A state's vector is its *causal context*:
//!   every dot it covers was either seen and is still in the state, or seen and superseded.
//!   That is why a state needs no tombstones: a dot covered by one side's clock and absent
//!   from its payload was removed there, and the merge drops it.
//! - A **dot map** ([`DotMap`]) is a keyed store of live dots with a small payload each, at
//!   most one dot per `(key, actor)`: the optimized observed-remove set of Bieniusa et al.
//!   ("An optimized conflict-free replicated set", 2012) generalised to a payload, the way
//!   Riak's `riak_dt_orswot` and its embedded counters are built. A new write by `actor`
//!   to `key` replaces that actor's dot for the key, so the size is bounded by keys × actors,
//!   never by the number of writes.
//!
//! ## Contexts ahead of the coordinator: deferred removes
//! A client may read from a replica that has seen more than the coordinator of its next write
//! (sloppy quorum, read repair not yet done). Merging such a context into the coordinator's
//! clock would claim dots it never saw, and the merge rule would then drop them for *every*
//! key, not only the removed one. So a remove whose context the coordinator's clock does not
//! cover removes what it can at once and is kept as a **deferred remove** `(context, keys)`
//! (as `riak_dt_orswot` does); it is applied by the first merge after which the clock covers
//! the context, and then forgotten. A state is kept *normalised*: no deferred remove whose
//! context its clock covers.
//!
//! ## Encoding
//! Actors are length-prefixed with one byte (at most [`ACTOR_BYTES_MAX`]); a dot inside a
//! payload names its actor by index into the state's clock, which is sorted, so index order
//! is actor byte order. A version vector is encoded as:
//!
//! | size   | field                                        |
//! |--------|----------------------------------------------|
//! | 4      | actor count N (u32)                          |
//! | N × .. | per actor, ascending: length (u8), actor id, counter (u64, ≥ 1) |
//!
//! A dot map body is encoded as:
//!
//! | size   | field                                                        |
//! |--------|--------------------------------------------------------------|
//! | ..     | clock (version vector above)                                 |
//! | 4      | key count K (u32)                                            |
//! | K × .. | per key, ascending: key (u32 length + bytes), dot count E (u32, ≥ 1), then E × (actor index u32, counter u64, payload), actor indexes ascending |
//! | 4      | deferred remove count D (u32)                                |
//! | D × .. | per deferred remove, contexts ascending: context (version vector), key count M (u32, ≥ 1), M × key (u32 length + bytes), ascending |
//!
//! Decoding checks every ordering and that every dot is covered by the clock, so a state that
//! decodes is canonical and re-encodes to the same bytes.

use std::cmp::Ordering;

use crate::codec::{Decoder, Encoder, Tag, ACTOR_BYTES_MAX};
use crate::ResolveError;

/// Most deferred removes a client write may leave in a state. A remove that would add one
/// more is refused with [`ResolveError::BadContext`]: the coordinator is too far behind the
/// replica the client read from; read again (read repair catches it up) and retry. Merges
/// are never refused, so a state may hold more after merging several replicas.
pub const DEFERRED_REMOVES_MAX: usize = 64;

/// Smallest encoded version vector entry: length byte, empty actor, counter.
const VV_ENTRY_BYTES_MIN: usize = 1 + 8;

/// Check an actor id against [`ACTOR_BYTES_MAX`].
pub fn check_actor(actor: &[u8]) -> Result<(), ResolveError> {
    if actor.len() > ACTOR_BYTES_MAX {
        return Err(ResolveError::BadRequest(format!(
            "actor id of {} bytes is over {ACTOR_BYTES_MAX}",
            actor.len()
        )));
    }
    Ok(())
}

/// A version vector: for each actor, the highest counter seen. Sorted by actor, counters ≥ 1.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct VersionVector<'a> {
    entries: Vec<(&'a [u8], u64)>,
}

impl<'a> VersionVector<'a> {
    /// The counter seen from `actor` (0 if none).
    pub fn get(&self, actor: &[u8]) -> u64 {
        match self.entries.binary_search_by(|(a, _)| (*a).cmp(actor)) {
            Ok(i) => self.entries[i].1,
            Err(_) => 0,
        }
    }

    /// Whether the dot `(actor, counter)` is covered.
    pub fn covers(&self, actor: &[u8], counter: u64) -> bool {
        counter <= self.get(actor)
    }

    /// Whether every dot `other` covers, `self` covers too (`self` descends from `other`).
    pub fn descends(&self, other: &VersionVector<'_>) -> bool {
        other.entries.iter().all(|(actor, counter)| self.covers(actor, *counter))
    }

    /// Whether no actor is present.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Number of actors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The actors and counters, ascending by actor.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], u64)> + '_ {
        self.entries.iter().copied()
    }

    /// The index of `actor` in the sorted actor list, as dots are encoded.
    pub fn index_of(&self, actor: &[u8]) -> Option<usize> {
        self.entries.binary_search_by(|(a, _)| (*a).cmp(actor)).ok()
    }

    /// Raise `actor`'s counter to at least `counter`.
    pub fn raise(&mut self, actor: &'a [u8], counter: u64) {
        if counter == 0 {
            return;
        }
        match self.entries.binary_search_by(|(a, _)| (*a).cmp(actor)) {
            Ok(i) => self.entries[i].1 = self.entries[i].1.max(counter),
            Err(i) => self.entries.insert(i, (actor, counter)),
        }
    }

    /// The least upper bound: the pointwise maximum.
    pub fn join(&self, other: &VersionVector<'a>) -> VersionVector<'a> {
        let mut out = Vec::with_capacity(self.entries.len().max(other.entries.len()));
        let (mut i, mut j) = (0, 0);
        while i < self.entries.len() && j < other.entries.len() {
            let (a, b) = (self.entries[i], other.entries[j]);
            match a.0.cmp(b.0) {
                Ordering::Less => {
                    out.push(a);
                    i += 1;
                }
                Ordering::Greater => {
                    out.push(b);
                    j += 1;
                }
                Ordering::Equal => {
                    out.push((a.0, a.1.max(b.1)));
                    i += 1;
                    j += 1;
                }
            }
        }
        out.extend_from_slice(&self.entries[i..]);
        out.extend_from_slice(&other.entries[j..]);
        VersionVector { entries: out }
    }

    /// The counter of a new dot for `actor`: one past what this vector has seen, or a
    /// [`ResolveError::BadContext`] if that would overflow (only a forged context gets there).
    pub fn next_counter(&self, actor: &[u8]) -> Result<u64, ResolveError> {
        self.get(actor).checked_add(1).ok_or_else(|| {
            ResolveError::BadContext("a version vector counter is at its maximum".into())
        })
    }

    /// Append the encoding (see the module table).
    pub fn encode(&self, e: &mut Encoder) {
        e.u32(self.entries.len() as u32);
        for (actor, counter) in &self.entries {
            e.u8(actor.len() as u8).raw(actor).u64(*counter);
        }
    }

    /// Decode and check order and counters.
    pub fn decode(d: &mut Decoder<'a>) -> Result<Self, ResolveError> {
        let n = d.count("version vector", VV_ENTRY_BYTES_MIN)?;
        let mut entries: Vec<(&'a [u8], u64)> = Vec::with_capacity(n);
        for _ in 0..n {
            let len = d.u8("actor length")? as usize;
            let actor = d.take_exact(len, "actor")?;
            let counter = d.u64("counter")?;
            if counter == 0 {
                return Err(ResolveError::Corrupt("version vector counter of 0".into()));
            }
            if entries.last().is_some_and(|(last, _)| *last >= actor) {
                return Err(ResolveError::Corrupt("version vector actors out of order".into()));
            }
            entries.push((actor, counter));
        }
        Ok(Self { entries })
    }
}

/// Encode a version vector as a client context: the resolver's header, then the vector.
pub fn encode_context(tag: Tag, version: u8, clock: &VersionVector<'_>) -> Vec<u8> {
    let mut e = Encoder::new(tag, version);
    clock.encode(&mut e);
    e.finish()
}

/// Decode a client context written by [`encode_context`]: `None` when the client sent no
/// context (empty bytes: it did not read), which is not the same as the context of a state
/// whose clock is empty (it read, and saw nothing). Anything that does not decode is
/// [`ResolveError::BadContext`].
pub fn decode_context<'a>(
    tag: Tag,
    version: u8,
    bytes: &'a [u8],
) -> Result<Option<VersionVector<'a>>, ResolveError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let bad = |e: ResolveError| match e {
        ResolveError::Corrupt(why) => ResolveError::BadContext(why),
        other => other,
    };
    let (mut d, found) = Decoder::new(bytes, tag).map_err(bad)?;
    if found != version {
        return Err(ResolveError::BadContext(format!("context version {found} is unknown")));
    }
    let clock = VersionVector::decode(&mut d).map_err(bad)?;
    d.finish().map_err(bad)?;
    Ok(Some(clock))
}

/// A dot's payload in a [`DotMap`]: `()` for a set, a quantity for a cart.
pub trait Payload: Copy + Ord + std::fmt::Debug {
    /// Smallest encoded size, for [`Decoder::count`].
    const BYTES_MIN: usize;
    /// Append the encoding.
    fn encode(&self, e: &mut Encoder);
    /// Decode and validate.
    fn decode(d: &mut Decoder<'_>) -> Result<Self, ResolveError>;
}

impl Payload for () {
    const BYTES_MIN: usize = 0;
    fn encode(&self, _: &mut Encoder) {}
    fn decode(_: &mut Decoder<'_>) -> Result<Self, ResolveError> {
        Ok(())
    }
}

/// One live dot of a [`DotMap`]: `key` was written by `actor` at `counter`, with `payload`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DotEntry<'a, P> {
    /// The key (set element, cart item).
    pub key: &'a [u8],
    /// The actor of the dot.
    pub actor: &'a [u8],
    /// The counter of the dot.
    pub counter: u64,
    /// What the dot carries.
    pub payload: P,
}

/// A deferred remove: remove the dots of `keys` that `context` covers, once the clock does.
type Deferred<'a> = (VersionVector<'a>, Vec<&'a [u8]>);

/// A keyed dot store with a causal context; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DotMap<'a, P> {
    /// The causal context: every dot seen.
    pub clock: VersionVector<'a>,
    /// Live dots, sorted by `(key, actor)`, at most one per pair, each covered by `clock`.
    pub entries: Vec<DotEntry<'a, P>>,
    /// Deferred removes, sorted by context, keys sorted; no context covered by `clock`.
    deferred: Vec<Deferred<'a>>,
}

impl<P> Default for DotMap<'_, P> {
    fn default() -> Self {
        Self { clock: VersionVector::default(), entries: Vec::new(), deferred: Vec::new() }
    }
}

impl<'a, P: Payload> DotMap<'a, P> {
    /// The entries of `key`, one per actor.
    pub fn key_entries(&self, key: &[u8]) -> &[DotEntry<'a, P>] {
        let start = self.entries.partition_point(|e| e.key < key);
        let end = start + self.entries[start..].partition_point(|e| e.key == key);
        &self.entries[start..end]
    }

    /// Whether the map holds deferred removes (for tests and stats).
    pub fn deferred_count(&self) -> usize {
        self.deferred.len()
    }

    /// A new dot for `actor`, greater than anything the clock or a pending deferred remove
    /// covers (so no deferred remove can ever take a write made after it).
    pub fn next_counter(&self, actor: &[u8]) -> Result<u64, ResolveError> {
        let deferred_max = self.deferred.iter().map(|(ctx, _)| ctx.get(actor)).max().unwrap_or(0);
        self.clock.get(actor).max(deferred_max).checked_add(1).ok_or_else(|| {
            ResolveError::BadContext("a version vector counter is at its maximum".into())
        })
    }

    /// Write `key` at `actor`: a fresh dot replaces that actor's dot for the key, carrying
    /// `payload(previous payload of this actor's dot, if any)`.
    pub fn write(
        &mut self,
        key: &'a [u8],
        actor: &'a [u8],
        payload: impl FnOnce(Option<P>) -> P,
    ) -> Result<(), ResolveError> {
        let counter = self.next_counter(actor)?;
        let entry = |payload| DotEntry { key, actor, counter, payload };
        match self.entries.binary_search_by(|e| (e.key, e.actor).cmp(&(key, actor))) {
            Ok(i) => self.entries[i] = entry(payload(Some(self.entries[i].payload))),
            Err(i) => self.entries.insert(i, entry(payload(None))),
        }
        self.clock.raise(actor, counter);
        Ok(())
    }

    /// Remove the dots of `key` that `context` covers. No context stands for this map's own
    /// clock (remove what the coordinator holds). A context this map's clock does not cover
    /// is also kept as a deferred remove; see the module documentation.
    pub fn remove(
        &mut self,
        key: &'a [u8],
        context: Option<&VersionVector<'a>>,
    ) -> Result<(), ResolveError> {
        let Some(context) = context else {
            self.entries.retain(|e| e.key != key);
            return Ok(());
        };
        self.entries.retain(|e| e.key != key || !context.covers(e.actor, e.counter));
        if self.clock.descends(context) {
            return Ok(());
        }
        match self.deferred.binary_search_by(|(ctx, _)| ctx.cmp(context)) {
            Ok(i) => {
                let keys = &mut self.deferred[i].1;
                if let Err(at) = keys.binary_search(&key) {
                    keys.insert(at, key);
                }
            }
            Err(i) => {
                if self.deferred.len() >= DEFERRED_REMOVES_MAX {
                    return Err(ResolveError::BadContext(format!(
                        "the context is ahead of this replica, which already holds \
                         {DEFERRED_REMOVES_MAX} deferred removes: read again and retry"
                    )));
                }
                self.deferred.insert(i, (context.clone(), vec![key]));
            }
        }
        Ok(())
    }

    /// The least upper bound of two dot maps.
    pub fn join(&self, other: &DotMap<'a, P>) -> DotMap<'a, P> {
        let clock = self.clock.join(&other.clock);
        let mut entries = Vec::with_capacity(self.entries.len().max(other.entries.len()));
        let (a, b) = (&self.entries, &other.entries);
        let (mut i, mut j) = (0, 0);
        // A dot present on one side only survives unless the other side has seen it (its
        // clock covers it), which means the other side removed or replaced it.
        while i < a.len() && j < b.len() {
            match (a[i].key, a[i].actor).cmp(&(b[j].key, b[j].actor)) {
                Ordering::Less => {
                    if !other.clock.covers(a[i].actor, a[i].counter) {
                        entries.push(a[i]);
                    }
                    i += 1;
                }
                Ordering::Greater => {
                    if !self.clock.covers(b[j].actor, b[j].counter) {
                        entries.push(b[j]);
                    }
                    j += 1;
                }
                Ordering::Equal => {
                    let (x, y) = (a[i], b[j]);
                    if x.counter == y.counter {
                        entries.push(if x.payload >= y.payload { x } else { y });
                    } else {
                        // The older dot is covered by the side holding the newer one; the
                        // newer survives unless the other side saw it and removed it.
                        let newer = if x.counter > y.counter { x } else { y };
                        let other_clock =
                            if x.counter > y.counter { &other.clock } else { &self.clock };
                        if !other_clock.covers(newer.actor, newer.counter) {
                            entries.push(newer);
                        }
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        entries.extend(a[i..].iter().filter(|e| !other.clock.covers(e.actor, e.counter)));
        entries.extend(b[j..].iter().filter(|e| !self.clock.covers(e.actor, e.counter)));
        let deferred = join_deferred(&self.deferred, &other.deferred);
        let mut out = DotMap { clock, entries, deferred };
        out.normalize();
        out
    }

    /// Apply and forget every deferred remove whose context the clock now covers.
    pub fn normalize(&mut self) {
        if self.deferred.iter().all(|(ctx, _)| !self.clock.descends(ctx)) {
            return;
        }
        let (ready, pending): (Vec<_>, Vec<_>) = std::mem::take(&mut self.deferred)
            .into_iter()
            .partition(|(ctx, _)| self.clock.descends(ctx));
        self.deferred = pending;
        for (ctx, keys) in ready {
            self.entries
                .retain(|e| keys.binary_search(&e.key).is_err() || !ctx.covers(e.actor, e.counter));
        }
    }

    /// Append the body encoding (see the module table).
    pub fn encode(&self, e: &mut Encoder) {
        self.clock.encode(e);
        let keys = count_keys(&self.entries);
        e.u32(keys as u32);
        let mut rest = &self.entries[..];
        while let Some(first) = rest.first() {
            let n = rest.iter().take_while(|x| x.key == first.key).count();
            e.bytes(first.key).u32(n as u32);
            for entry in &rest[..n] {
                // Every live dot is covered by the clock, so its actor is in it.
                let index = self.clock.index_of(entry.actor).expect("dot actor missing from clock");
                e.u32(index as u32).u64(entry.counter);
                entry.payload.encode(e);
            }
            rest = &rest[n..];
        }
        e.u32(self.deferred.len() as u32);
        for (ctx, keys) in &self.deferred {
            ctx.encode(e);
            e.u32(keys.len() as u32);
            for key in keys {
                e.bytes(key);
            }
        }
    }

    /// Decode a body and check every invariant (order, coverage, normal form).
    pub fn decode(d: &mut Decoder<'a>) -> Result<Self, ResolveError> {
        let clock = VersionVector::decode(d)?;
        let actors: Vec<&'a [u8]> = clock.iter().map(|(a, _)| a).collect();
        let key_count = d.count("keys", 4 + 4)?;
        let mut entries: Vec<DotEntry<'a, P>> = Vec::with_capacity(key_count);
        let mut last_key: Option<&[u8]> = None;
        for _ in 0..key_count {
            let key = d.bytes("key")?;
            if last_key.is_some_and(|last| last >= key) {
                return Err(ResolveError::Corrupt("keys out of order".into()));
            }
            last_key = Some(key);
            let n = d.count("dots", 4 + 8 + P::BYTES_MIN)?;
            if n == 0 {
                return Err(ResolveError::Corrupt("a key without dots".into()));
            }
            let mut last_index = None;
            for _ in 0..n {
                let index = d.u32("actor index")? as usize;
                let counter = d.u64("counter")?;
                let payload = P::decode(d)?;
                let actor = *actors.get(index).ok_or_else(|| {
                    ResolveError::Corrupt(format!("actor index {index} outside the clock"))
                })?;
                if last_index.is_some_and(|last| last >= index) {
                    return Err(ResolveError::Corrupt("dots of a key out of order".into()));
                }
                last_index = Some(index);
                if counter == 0 || !clock.covers(actor, counter) {
                    return Err(ResolveError::Corrupt("a dot the clock does not cover".into()));
                }
                entries.push(DotEntry { key, actor, counter, payload });
            }
        }
        let deferred_count = d.count("deferred removes", 4 + 4 + 4)?;
        let mut deferred: Vec<Deferred<'a>> = Vec::with_capacity(deferred_count);
        for _ in 0..deferred_count {
            let ctx = VersionVector::decode(d)?;
            if clock.descends(&ctx) {
                return Err(ResolveError::Corrupt("a deferred remove the clock covers".into()));
            }
            if deferred.last().is_some_and(|(last, _)| *last >= ctx) {
                return Err(ResolveError::Corrupt("deferred removes out of order".into()));
            }
            let m = d.count("deferred keys", 4)?;
            if m == 0 {
                return Err(ResolveError::Corrupt("a deferred remove without keys".into()));
            }
            let mut keys: Vec<&'a [u8]> = Vec::with_capacity(m);
            for _ in 0..m {
                let key = d.bytes("deferred key")?;
                if keys.last().is_some_and(|last| *last >= key) {
                    return Err(ResolveError::Corrupt("deferred keys out of order".into()));
                }
                keys.push(key);
            }
            deferred.push((ctx, keys));
        }
        Ok(Self { clock, entries, deferred })
    }
}

/// Number of distinct keys in entries sorted by key.
fn count_keys<P>(entries: &[DotEntry<'_, P>]) -> usize {
    entries.iter().enumerate().filter(|(i, e)| *i == 0 || entries[i - 1].key != e.key).count()
}

/// Union of two sorted deferred lists; equal contexts get the union of their keys.
fn join_deferred<'a>(a: &[Deferred<'a>], b: &[Deferred<'a>]) -> Vec<Deferred<'a>> {
    if b.is_empty() {
        return a.to_vec();
    }
    if a.is_empty() {
        return b.to_vec();
    }
    let mut out: Vec<Deferred<'a>> = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let order = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => x.0.cmp(&y.0),
            (Some(_), None) => Ordering::Less,
            _ => Ordering::Greater,
        };
        match order {
            Ordering::Less => {
                out.push(a[i].clone());
                i += 1;
            }
            Ordering::Greater => {
                out.push(b[j].clone());
                j += 1;
            }
            Ordering::Equal => {
                let mut keys: Vec<&'a [u8]> = a[i].1.iter().chain(&b[j].1).copied().collect();
                keys.sort_unstable();
                keys.dedup();
                out.push((a[i].0.clone(), keys));
                i += 1;
                j += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vv(entries: &[(&'static str, u64)]) -> VersionVector<'static> {
        let mut v = VersionVector::default();
        for (actor, counter) in entries {
            v.raise(actor.as_bytes(), *counter);
        }
        v
    }

    /// Join is the pointwise maximum and descends from both sides.
    #[test]
    fn version_vector_join_and_descends() {
        let a = vv(&[("a", 3), ("b", 1)]);
        let b = vv(&[("b", 4), ("c", 2)]);
        let j = a.join(&b);
        assert_eq!(j, vv(&[("a", 3), ("b", 4), ("c", 2)]));
        assert!(j.descends(&a) && j.descends(&b));
        assert!(!a.descends(&b) && !b.descends(&a));
        assert!(a.covers(b"a", 3) && !a.covers(b"a", 4) && !a.covers(b"z", 1));
    }

    /// A context round-trips, no context is `None`, garbage is BadContext.
    #[test]
    fn context_encoding() {
        let v = vv(&[("n1", 7), ("n2", 1)]);
        let bytes = encode_context(Tag::Orset, 1, &v);
        assert_eq!(decode_context(Tag::Orset, 1, &bytes).unwrap(), Some(v));
        assert_eq!(decode_context(Tag::Orset, 1, b"").unwrap(), None);
        let empty = encode_context(Tag::Orset, 1, &VersionVector::default());
        assert_eq!(decode_context(Tag::Orset, 1, &empty).unwrap(), Some(VersionVector::default()));
        for bad in [&bytes[..bytes.len() - 1], b"\x03\x01zz", &[Tag::Cart as u8, 1, 0, 0, 0, 0]] {
            assert!(matches!(decode_context(Tag::Orset, 1, bad), Err(ResolveError::BadContext(_))));
        }
    }

    /// A remove whose context is ahead of the clock waits for the clock, then applies, and
    /// leaves other keys' unseen dots alone.
    #[test]
    fn deferred_remove_applies_once_covered() {
        let mut a: DotMap<'_, ()> = DotMap::default();
        a.write(b"x", b"n1", |_| ()).unwrap();
        let mut b = a.clone();
        b.write(b"x", b"n1", |_| ()).unwrap(); // n1:2 for x
        b.write(b"y", b"n1", |_| ()).unwrap(); // n1:3 for y
                                               // A client read b and removes x through a, which has not seen b's writes.
        let ctx = b.clock.clone();
        a.remove(b"x", Some(&ctx)).unwrap();
        assert_eq!(a.deferred_count(), 1);
        let joined = a.join(&b);
        assert_eq!(joined.deferred_count(), 0);
        let keys: Vec<&[u8]> = joined.entries.iter().map(|e| e.key).collect();
        assert_eq!(keys, vec![b"y".as_slice()], "x removed, y kept");
    }
}
