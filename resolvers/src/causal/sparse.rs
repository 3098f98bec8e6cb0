//! # Decoding only what a write touches
//!
//! A write to one item of a 1 000-item cart, or a replica's merge of that write's delta,
//! changes one key group of the state, and its clock. Decoding every group, then joining or
//! writing, then encoding every group again made the cost of an update grow with the cart
//! (docs/BENCHMARKS.md, issue 15 item 5). A [`Sparse`] body is decoded only where a write or
//! a delta touches it: its clock, and the dots of the touched keys. Every other key group
//! keeps its bytes, in runs of consecutive groups, and [`Sparse::encode`] copies them as
//! they are into the new state. What still grows with the cart is one pass over the bytes (a
//! key comparison per group, and for a merge a coverage test per dot) and one copy.
//!
//! ## Why the result is the whole path's, byte for byte
//! The cart's tests check the two paths against each other; the reasons are these.
//! - An untouched group is one whose key no operation of the write names, or, for a merge,
//!   one the delta holds no dot of and none of whose dots the delta's clock covers. The
//!   join keeps each of its dots as it is (see [`DotMap::join`]: a dot one side holds
//!   survives unless the other side's clock covers it), and a write changes only the keys
//!   it names.
//! - The new map's clock has the actors of the body's clock ([`Sparse::fits`]), so the
//!   actor indexes inside the runs still name the same actors. A write or delta that brings
//!   a new actor takes the whole path.
//! - The body holds no deferred remove ([`Sparse::decode`] answers `None`): normalising
//!   could then take dots from any group.
//!
//! ## What is not checked
//! The untouched groups are not checked again: their order, payloads and coverage were
//! checked when their state was made or came in (a stored state is a resolver's output, or
//! a peer's state decoded whole on its way in), and every read decodes the whole state. A
//! group whose lengths run past the end is still refused as corrupt. That is why only
//! [`crate::Resolver::merge_into`], whose first state is one this node stored, takes this
//! path, never a merge of two states from elsewhere.

use crate::codec::{Decoder, Encoder, Tag};
use crate::{Applied, DeltaApplied, Op, ResolveError, Stamp, Write};

use super::{
    decode_group, dot_at, group_dots, key_cmp, seen_in, DotMap, Payload, Seen, VersionVector,
    DOT_BYTES,
};

/// A state merged into a stored one takes the sparse path ([`merge_into_stored`]) only when
/// the stored state is at least this many times its size.
pub(crate) const MERGE_INTO_RATIO: usize = 4;

/// A resolver whose states are a header and a [`DotMap`] body (`cart`, `orset`): what the
/// sparse paths need to know of its states.
pub(crate) trait DotState {
    /// The payload of its dots.
    type Payload: Payload;
    /// Its states' type tag.
    const TAG: Tag;
    /// Whether a body of format `version` is encoded with clouds; `None` for a version the
    /// sparse paths leave to the whole path (an older format that decoding migrates), and an
    /// error for a version that does not exist.
    fn clouds(version: u8) -> Result<Option<bool>, ResolveError>;
    /// The format version `map` is written in.
    fn version_of(map: &DotMap<'_, Self::Payload>) -> u8;
    /// Decode a whole state, checking everything.
    fn decode(state: &[u8]) -> Result<DotMap<'_, Self::Payload>, ResolveError>;
    /// The one key an operation touches; `None` for one that may touch any (a clear), or
    /// that is not this resolver's (the whole path then refuses it).
    fn key_of(op: &Op) -> Option<&[u8]>;
    /// Apply a client write to `old`, the map of the current state (whole, or only the
    /// keys the write touches): the map before and after the write.
    fn apply_ops<'a>(
        old: DotMap<'a, Self::Payload>,
        write: &'a Write,
        stamp: &'a Stamp,
    ) -> Result<BeforeAfter<'a, Self::Payload>, ResolveError>;
}

/// A map before and after a write.
pub(crate) type BeforeAfter<'a, P> = (DotMap<'a, P>, DotMap<'a, P>);

/// Decode a whole state of `F` (none: the empty map).
pub(crate) fn decode_or_empty<F: DotState>(
    state: Option<&[u8]>,
) -> Result<DotMap<'_, F::Payload>, ResolveError> {
    state.map_or_else(|| Ok(DotMap::default()), F::decode)
}

/// `Resolver::apply_with_delta` for `F`: the sparse write ([`apply`]) when it applies, else
/// the whole one (decode the whole state, write, encode it and the delta).
pub(crate) fn apply_with_delta<F: DotState>(
    current: Option<&[u8]>,
    write: &Write,
    stamp: &Stamp,
) -> Result<Applied, ResolveError> {
    if let Some(current) = current {
        if let Some(applied) = apply::<F>(current, write, stamp)? {
            return Ok(applied);
        }
    }
    let (old, new) = F::apply_ops(decode_or_empty::<F>(current)?, write, stamp)?;
    let delta = new.delta_from(&old).map(|delta| encode::<F>(&delta));
    Ok(Applied::new(encode::<F>(&new), delta))
}

/// `Resolver::merge` for `F`: both states decoded whole, joined, encoded.
pub(crate) fn merge<F: DotState>(a: &[u8], b: &[u8]) -> Result<Vec<u8>, ResolveError> {
    Ok(encode::<F>(&F::decode(a)?.join(&F::decode(b)?)))
}

/// `Resolver::merge_into` for `F`: a state at most `1 / MERGE_INTO_RATIO` of the stored
/// one's size (a delta) by the sparse merge ([`merge_into`]) when it applies, else
/// [`merge`]. A state of about the stored one's size (a read repair, a whole state from
/// anti-entropy) touches most of it: decoding it whole is then cheaper.
pub(crate) fn merge_into_stored<F: DotState>(
    stored: &[u8],
    incoming: &[u8],
) -> Result<Vec<u8>, ResolveError> {
    if incoming.len().saturating_mul(MERGE_INTO_RATIO) <= stored.len() {
        if let Some(merged) = merge_into::<F>(stored, incoming)? {
            return Ok(merged);
        }
    }
    merge::<F>(stored, incoming)
}

/// Encode a whole map as a state of `F`.
pub(crate) fn encode<F: DotState>(map: &DotMap<'_, F::Payload>) -> Vec<u8> {
    let mut e = Encoder::new(F::TAG, F::version_of(map));
    map.encode(&mut e);
    e.finish()
}

/// `F`'s merge of `incoming` (decoded whole) into `stored`, decoding only the keys
/// `incoming` touches: the bytes of the whole merge, or `None` when this path does not
/// apply (see the module documentation). It applies whatever the sizes;
/// [`merge_into_stored`] takes it for a small `incoming`.
pub(crate) fn merge_into<F: DotState>(
    stored: &[u8],
    incoming: &[u8],
) -> Result<Option<Vec<u8>>, ResolveError> {
    let delta = F::decode(incoming)?;
    if delta.deferred_count() > 0 {
        return Ok(None);
    }
    let mut keys: Vec<&[u8]> = delta.entries().iter().map(|e| e.key).collect();
    keys.dedup();
    let Some(body) = decode_state::<F>(stored, &keys, Some(delta.clock()))? else {
        return Ok(None);
    };
    Ok(body.encode_state::<F>(&body.map.join(&delta)))
}

/// `F`'s `write` to `current`, decoding only the keys its operations name
/// ([`DotState::key_of`]) and applying it to them ([`DotState::apply_ops`]). The new state
/// and its delta are the whole path's, or `None` when this path does not apply (an
/// operation that may touch any key, and see the module documentation).
pub(crate) fn apply<F: DotState>(
    current: &[u8],
    write: &Write,
    stamp: &Stamp,
) -> Result<Option<Applied>, ResolveError> {
    let Some(body) = decode_named::<F>(current, write)? else { return Ok(None) };
    let (old, new) = F::apply_ops(body.map.clone(), write, stamp)?;
    let Some(state) = body.encode_state::<F>(&new) else { return Ok(None) };
    Ok(Some(Applied::new(state, new.delta_from(&old).map(|delta| encode::<F>(&delta)))))
}

/// `F`'s `write` to `stored ⊔ parts…`, decoding of `stored` only the keys its operations
/// name: the write's delta and the new context, without encoding the new state; `None` when
/// this path does not apply (as [`apply`], and when the write has no delta).
///
/// Why the delta is the whole path's: the map written to holds the stored state's clock
/// and the named keys' dots, joined with `parts`; the named keys' dots and the clock are
/// then those of `stored ⊔ parts` (a join decides each dot by the two clocks and that key's
/// dots on both sides), and the other keys, which the write leaves as they are, give
/// nothing to [`DotMap::delta_from`].
pub(crate) fn apply_delta<F: DotState>(
    stored: &[u8],
    parts: &[&[u8]],
    write: &Write,
    stamp: &Stamp,
) -> Result<Option<DeltaApplied>, ResolveError> {
    let Some(body) = decode_named::<F>(stored, write)? else { return Ok(None) };
    // The parts are joined decoded: never encoded in between.
    let mut map = body.map;
    for part in parts {
        let part = F::decode(part)?;
        if part.deferred_count() > 0 {
            return Ok(None);
        }
        map = map.join(&part);
    }
    let (old, new) = F::apply_ops(map, write, stamp)?;
    let Some(delta) = new.delta_from(&old) else { return Ok(None) };
    let context = super::encode_dots_context(F::TAG, new.clock());
    Ok(Some(DeltaApplied { delta: encode::<F>(&delta), context }))
}

/// A stored state of `F`, decoded at the keys the operations of `write` name; `None` for a
/// write whose operations may touch any key, and where [`decode_state`] gives none.
fn decode_named<'a, F: DotState>(
    stored: &'a [u8],
    write: &Write,
) -> Result<Option<Sparse<'a, F::Payload>>, ResolveError> {
    let Write::Update { ops, .. } = write else { return Ok(None) };
    let Some(mut keys) = ops.iter().map(F::key_of).collect::<Option<Vec<&[u8]>>>() else {
        return Ok(None);
    };
    keys.sort_unstable();
    keys.dedup();
    decode_state::<F>(stored, &keys, None)
}

/// A stored state of `F`, decoded where `keys` (sorted, no duplicates) or the clock
/// `covered` touch it; `None` for a version or a body the sparse paths leave to the whole
/// path.
fn decode_state<'a, F: DotState>(
    stored: &'a [u8],
    keys: &[&[u8]],
    covered: Option<&VersionVector<'_>>,
) -> Result<Option<Sparse<'a, F::Payload>>, ResolveError> {
    let (mut d, version) = Decoder::new(stored, F::TAG)?;
    let Some(clouds) = F::clouds(version)? else { return Ok(None) };
    let Some(body) = Sparse::decode(&mut d, clouds, keys, covered)? else { return Ok(None) };
    d.finish()?;
    Ok(Some(body))
}

/// Consecutive key groups of a body that nothing touched, as they are encoded.
#[derive(Clone, Copy, Debug)]
pub(super) struct Run<'a> {
    /// The key of its first group.
    pub(super) first_key: &'a [u8],
    /// Its groups' bytes.
    pub(super) bytes: &'a [u8],
    /// How many groups (keys) it holds.
    pub(super) keys: usize,
}

/// A dot map body decoded where a write or a delta touches it; see the module documentation.
#[derive(Debug)]
pub struct Sparse<'a, P> {
    /// The clock and the touched keys' dots (and no deferred remove).
    map: DotMap<'a, P>,
    /// The untouched groups, in key order, between the touched keys.
    runs: Vec<Run<'a>>,
}

impl<'a, P: Payload> Sparse<'a, P> {
    /// Decode a body (`clouds`: its encoding with clouds) where it is touched: the groups
    /// of `keys` (sorted, no duplicates) and, given a delta's clock as `covered`, every
    /// group holding a dot that clock covers. `None` when the body holds a deferred remove.
    pub fn decode(
        d: &mut Decoder<'a>,
        clouds: bool,
        keys: &[&[u8]],
        covered: Option<&VersionVector<'_>>,
    ) -> Result<Option<Self>, ResolveError> {
        let clock = VersionVector::decode_either(d, clouds)?;
        let seen = seen_in(&clock, &clock);
        let covered = covered.map(|delta_clock| seen_in(&clock, delta_clock));
        let key_count = d.count("keys", 4 + 4)?;
        let mut entries = Vec::new();
        let mut runs: Vec<Run<'a>> = Vec::new();
        // The run being gathered: where it starts in the input, and the run so far.
        let mut open: Option<(usize, Run<'a>)> = None;
        let mut wanted = keys.iter().peekable();
        for _ in 0..key_count {
            let start = d.position();
            let key = d.bytes("key")?;
            let dots = group_dots::<P>(d)?;
            // A wanted key that this body lacks goes between the groups: end the run there.
            let mut passed = false;
            while wanted.next_if(|w| key_cmp(w, key).is_lt()).is_some() {
                passed = true;
            }
            let touched = wanted.next_if(|w| key_cmp(w, key).is_eq()).is_some()
                || match &covered {
                    Some(covered) => covers_any::<P>(covered, dots)?,
                    None => false,
                };
            if passed || touched {
                runs.extend(open.take().map(|(_, run)| run));
            }
            if touched {
                decode_group(key, dots, &seen, &mut entries)?;
                continue;
            }
            let (run_start, run) =
                open.get_or_insert((start, Run { first_key: key, bytes: &[], keys: 0 }));
            run.bytes = d.read_since(*run_start);
            run.keys += 1;
        }
        runs.extend(open.map(|(_, run)| run));
        if d.count("deferred removes", 4 + 4 + 4)? > 0 {
            return Ok(None);
        }
        Ok(Some(Self { map: DotMap { clock, entries, deferred: Vec::new() }, runs }))
    }

    /// Whether `map` (made from this body's map by a write or a join) can be encoded with
    /// this body's untouched groups: its clock names the same actors, so their dots' actor
    /// indexes still hold.
    fn fits(&self, map: &DotMap<'_, P>) -> bool {
        let (mine, theirs) = (&self.map.clock.entries, &map.clock.entries);
        mine.len() == theirs.len() && mine.iter().zip(theirs).all(|(a, b)| a.0 == b.0)
    }

    /// Append `map`'s body encoding ([`DotMap::encode`]) with this body's untouched groups
    /// between its keys: the state the whole path would encode. `map` must
    /// [fit](Sparse::fits).
    fn encode(&self, map: &DotMap<'a, P>, e: &mut Encoder) {
        debug_assert!(self.fits(map), "the runs' actor indexes name the body's actors");
        map.encode_between(&self.runs, e);
    }

    /// `map` as a state of `F`, with this body's untouched groups: what [`encode`] gives for
    /// the whole map. `None` when `map` does not [fit](Sparse::fits).
    fn encode_state<F: DotState<Payload = P>>(&self, map: &DotMap<'a, P>) -> Option<Vec<u8>> {
        if !self.fits(map) {
            return None;
        }
        // The untouched groups, and about what the touched ones hold.
        let untouched: usize = self.runs.iter().map(|run| run.bytes.len()).sum();
        let capacity = untouched + 256 + 64 * map.entries.len();
        let mut e = Encoder::with_capacity(F::TAG, F::version_of(map), capacity);
        self.encode(map, &mut e);
        Some(e.finish())
    }
}

/// Whether some dot of a group (its dots' bytes) is one that `covered` (per actor of the
/// body's clock, what a delta has seen of it) covers.
fn covers_any<P: Payload>(covered: &[Seen], dots: &[u8]) -> Result<bool, ResolveError> {
    for dot in dots.chunks_exact(DOT_BYTES + P::BYTES) {
        let (actor, counter) = dot_at(dot);
        let Some(seen) = covered.get(actor as usize) else {
            return Err(ResolveError::Corrupt(format!("actor index {actor} outside the clock")));
        };
        if seen.covers(counter) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Checks of the sparse paths against the whole ones, for the resolvers' tests.
#[cfg(test)]
pub(crate) mod checked {
    use super::DotState;
    use crate::{Applied, Resolver, Stamp, Write};

    /// `resolver.merge_into`, checked against the whole merge: it gives the same bytes, and
    /// so does the sparse path ([`super::merge_into`]) taken whatever the sizes, whenever it
    /// applies.
    pub(crate) fn merge_into<F: DotState + Resolver>(
        resolver: &F,
        stored: &[u8],
        incoming: &[u8],
    ) -> Vec<u8> {
        let whole = resolver.merge(stored, incoming).unwrap();
        assert_eq!(resolver.merge_into(stored, incoming).unwrap(), whole, "merge_into is merge");
        if let Some(sparse) = super::merge_into::<F>(stored, incoming).unwrap() {
            assert_eq!(sparse, whole, "the sparse merge is the whole merge");
        }
        whole
    }

    /// `resolver.apply_with_delta`, checked against `apply` (the whole path): the same state,
    /// and a delta that takes `current` to it (`current ⊔ δ = new`, also by the sparse merge).
    pub(crate) fn apply_with_delta<F: DotState + Resolver>(
        resolver: &F,
        current: Option<&[u8]>,
        write: &Write,
        stamp: &Stamp,
    ) -> Applied {
        let applied = resolver.apply_with_delta(current, write, stamp).unwrap();
        let whole = resolver.apply(current, write, stamp).unwrap();
        assert_eq!(applied.state, whole, "the sparse write's state is the whole write's");
        if let (Some(current), Some(delta)) = (current, &applied.delta) {
            assert_eq!(merge_into(resolver, current, delta), whole, "current ⊔ δ = new");
        }
        applied
    }
}
