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

use crate::codec::{Decoder, Encoder};
use crate::ResolveError;

use super::{
    decode_group, dot_at, group_dots, key_cmp, seen_in, DotMap, Payload, Seen, VersionVector,
    DOT_BYTES,
};

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
            let (run_start, run) = open.get_or_insert((start, Run { first_key: key, bytes: &[], keys: 0 }));
            run.bytes = d.read_since(*run_start);
            run.keys += 1;
        }
        runs.extend(open.map(|(_, run)| run));
        if d.count("deferred removes", 4 + 4 + 4)? > 0 {
            return Ok(None);
        }
        Ok(Some(Self { map: DotMap { clock, entries, deferred: Vec::new() }, runs }))
    }

    /// The body's clock and the dots of its touched keys, as a map to write to or join.
    pub fn map(&self) -> &DotMap<'a, P> {
        &self.map
    }

    /// Whether `map` (made from [`Sparse::map`] by a write or a join) can be encoded with
    /// this body's untouched groups: its clock names the same actors, so their dots' actor
    /// indexes still hold.
    pub fn fits(&self, map: &DotMap<'_, P>) -> bool {
        let (mine, theirs) = (&self.map.clock.entries, &map.clock.entries);
        mine.len() == theirs.len() && mine.iter().zip(theirs).all(|(a, b)| a.0 == b.0)
    }

    /// Append `map`'s body encoding ([`DotMap::encode`]) with this body's untouched groups
    /// between its keys: the state the whole path would encode. `map` must
    /// [fit](Sparse::fits).
    pub fn encode(&self, map: &DotMap<'a, P>, e: &mut Encoder) {
        debug_assert!(self.fits(map), "the runs' actor indexes name the body's actors");
        map.encode_between(&self.runs, e);
    }

    /// How many bytes the untouched groups take.
    pub fn untouched_bytes(&self) -> usize {
        self.runs.iter().map(|run| run.bytes.len()).sum()
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
