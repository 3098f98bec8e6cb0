//! Version vectors with dot clouds, and the client contexts built on them (see the parent
//! module's "Deltas and dot clouds" and "Encoding" for the formats).

use std::cmp::Ordering;

use crate::codec::{Decoder, Encoder, Tag, ACTOR_BYTES_MAX};
use crate::ResolveError;

pub(super) const DOT_BYTES: usize = 4 + 8;

// Actor ids are length-prefixed with one byte.
const _: () = assert!(ACTOR_BYTES_MAX <= u8::MAX as usize);

/// Smallest encoded version vector entry: length byte, empty actor, counter.
const VV_ENTRY_BYTES_MIN: usize = 1 + 8;

/// Encoded cloud dot: actor index (u32) and counter (u64), as a dot of a dot map.
const CLOUD_DOT_BYTES: usize = 4 + 8;
const _: () = assert!(CLOUD_DOT_BYTES == DOT_BYTES);

pub(super) fn dot_overflow() -> ResolveError {
    ResolveError::Overflow(
        "a version vector counter is at its maximum (a forged context or state)".into(),
    )
}

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

/// A version vector with a dot cloud: the set of dots a state has seen.
///
/// For each actor, a **contiguous counter** `n` stands for the dots `1..=n`; the **cloud**
/// holds the dots seen beyond them, which a delta brings (see "Deltas" in the module
/// documentation). It is kept compact: a cloud dot is never next to its actor's counter (it
/// would be folded into it) nor below it, so equal sets of dots are equal vectors, and a
/// vector without a cloud is exactly the plain version vector it always was. Actors are
/// sorted; a counter is ≥ 1, or 0 for an actor seen only through cloud dots.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct VersionVector<'a> {
    /// Per actor, ascending: the contiguous counter.
    pub(super) entries: Vec<(&'a [u8], u64)>,
    /// Dots beyond the contiguous counters, ascending by actor then counter; every actor
    /// of the cloud has an entry, and each counter is above that entry's counter + 1.
    pub(super) cloud: Vec<(&'a [u8], u64)>,
}

impl<'a> VersionVector<'a> {
    /// The contiguous counter of `actor` (0 if none): every dot up to it is covered.
    pub fn get(&self, actor: &[u8]) -> u64 {
        match self.entries.binary_search_by(|(a, _)| (*a).cmp(actor)) {
            Ok(i) => self.entries[i].1,
            Err(_) => 0,
        }
    }

    /// The highest counter of `actor` this vector covers, in the cloud included (0 if none).
    pub fn highest(&self, actor: &[u8]) -> u64 {
        self.cloud_of(actor).last().map_or_else(|| self.get(actor), |(_, counter)| *counter)
    }

    /// The cloud dots of `actor`, ascending.
    pub(super) fn cloud_of(&self, actor: &[u8]) -> &[(&'a [u8], u64)] {
        let start = self.cloud.partition_point(|(a, _)| *a < actor);
        let end = start + self.cloud[start..].partition_point(|(a, _)| *a == actor);
        &self.cloud[start..end]
    }

    /// Whether the dot `(actor, counter)` is covered.
    pub fn covers(&self, actor: &[u8], counter: u64) -> bool {
        counter <= self.get(actor)
            || (!self.cloud.is_empty() && self.cloud.binary_search(&(actor, counter)).is_ok())
    }

    /// Whether every dot `other` covers, `self` covers too (`self` descends from `other`).
    pub fn descends(&self, other: &VersionVector<'_>) -> bool {
        // A cloud dot is never next to its counter, so `1..=n` is covered only if the
        // contiguous counter reaches `n`.
        other.entries.iter().all(|(actor, counter)| self.get(actor) >= *counter)
            && other.cloud.iter().all(|(actor, counter)| self.covers(actor, *counter))
    }

    /// Whether no actor is present.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether some dots are covered beyond the contiguous counters.
    pub fn has_cloud(&self) -> bool {
        !self.cloud.is_empty()
    }

    /// Number of actors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The actors and contiguous counters, ascending by actor.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], u64)> + '_ {
        self.entries.iter().copied()
    }

    /// The index of `actor` in the sorted actor list, as dots are encoded.
    pub fn index_of(&self, actor: &[u8]) -> Option<usize> {
        self.entries.binary_search_by(|(a, _)| (*a).cmp(actor)).ok()
    }

    /// The index of `actor`, added with a counter of 0 if it is new.
    pub(super) fn entry_index(&mut self, actor: &'a [u8]) -> usize {
        match self.entries.binary_search_by(|(a, _)| (*a).cmp(actor)) {
            Ok(i) => i,
            Err(i) => {
                self.entries.insert(i, (actor, 0));
                i
            }
        }
    }

    /// Cover every dot of `actor` up to `counter`.
    pub fn raise(&mut self, actor: &'a [u8], counter: u64) {
        if counter == 0 {
            return;
        }
        let i = self.entry_index(actor);
        self.entries[i].1 = self.entries[i].1.max(counter);
        self.compact();
    }

    /// Cover the one dot `(actor, counter)`, and no other.
    pub fn add_dot(&mut self, actor: &'a [u8], counter: u64) {
        if counter == 0 || self.covers(actor, counter) {
            return;
        }
        let i = self.entry_index(actor);
        if counter == self.entries[i].1 + 1 {
            self.entries[i].1 = counter;
        } else {
            let at = self.cloud.partition_point(|dot| *dot < (actor, counter));
            self.cloud.insert(at, (actor, counter));
        }
        self.compact();
    }

    /// The vector that covers exactly `dots` (in any order, duplicates allowed).
    pub fn from_dots(mut dots: Vec<(&'a [u8], u64)>) -> Self {
        dots.retain(|(_, counter)| *counter > 0);
        dots.sort_unstable();
        dots.dedup();
        let mut entries: Vec<(&'a [u8], u64)> = dots.iter().map(|(actor, _)| (*actor, 0)).collect();
        entries.dedup();
        let mut out = VersionVector { entries, cloud: dots };
        out.compact();
        out
    }

    /// Fold cloud dots next to their counters into them and drop those below: the one
    /// representation of a set of dots.
    pub(super) fn compact(&mut self) {
        if self.cloud.is_empty() {
            return;
        }
        let mut kept = Vec::with_capacity(self.cloud.len());
        let mut i = 0;
        for &(actor, counter) in &self.cloud {
            // Both are sorted by actor and every cloud actor has an entry.
            while self.entries[i].0 != actor {
                i += 1;
            }
            let seen = &mut self.entries[i].1;
            if counter == *seen + 1 {
                *seen = counter;
            } else if counter > *seen {
                kept.push((actor, counter));
            }
        }
        self.cloud = kept;
    }

    /// The least upper bound: the pointwise maximum of the counters, the union of the clouds.
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
        let cloud = match (self.cloud.is_empty(), other.cloud.is_empty()) {
            (true, true) => Vec::new(),
            _ => {
                let mut cloud: Vec<(&'a [u8], u64)> =
                    self.cloud.iter().chain(&other.cloud).copied().collect();
                cloud.sort_unstable();
                cloud.dedup();
                cloud
            }
        };
        let mut joined = VersionVector { entries: out, cloud };
        joined.compact();
        joined
    }

    /// The counter of a new dot for `actor`: one past the highest this vector covers, or
    /// [`ResolveError::Overflow`] if that would pass `u64::MAX` (only a forged context or
    /// state gets there: a dot is never reissued by wrapping).
    pub fn next_counter(&self, actor: &[u8]) -> Result<u64, ResolveError> {
        self.highest(actor).checked_add(1).ok_or_else(dot_overflow)
    }

    /// Append the plain encoding (see the module table). Only for a vector without a cloud:
    /// the formats that predate clouds cannot hold one.
    pub fn encode(&self, e: &mut Encoder) {
        assert!(self.cloud.is_empty(), "a version vector with a cloud in a plain encoding");
        e.u32(self.entries.len() as u32);
        for (actor, counter) in &self.entries {
            e.u8(actor.len() as u8).raw(actor).u64(*counter);
        }
    }

    /// Append the encoding with a cloud (see the module table).
    pub fn encode_with_cloud(&self, e: &mut Encoder) {
        e.u32(self.entries.len() as u32);
        for (actor, counter) in &self.entries {
            e.u8(actor.len() as u8).raw(actor).u64(*counter);
        }
        e.u32(self.cloud.len() as u32);
        let mut i = 0;
        for &(actor, counter) in &self.cloud {
            while self.entries[i].0 != actor {
                i += 1;
            }
            e.u32(i as u32).u64(counter);
        }
    }

    /// Decode the encoding with a cloud if `clouds`, else the plain one.
    pub fn decode_either(d: &mut Decoder<'a>, clouds: bool) -> Result<Self, ResolveError> {
        if clouds {
            Self::decode_with_cloud(d)
        } else {
            Self::decode(d)
        }
    }

    /// Decode the plain encoding and check order and counters.
    pub fn decode(d: &mut Decoder<'a>) -> Result<Self, ResolveError> {
        let entries = decode_entries(d, false)?;
        Ok(Self { entries, cloud: Vec::new() })
    }

    /// Decode the encoding with a cloud and check that it is compact.
    pub fn decode_with_cloud(d: &mut Decoder<'a>) -> Result<Self, ResolveError> {
        let entries = decode_entries(d, true)?;
        let n = d.count("cloud dots", CLOUD_DOT_BYTES)?;
        let mut cloud: Vec<(&'a [u8], u64)> = Vec::with_capacity(n);
        let mut last: Option<(u32, u64)> = None;
        for _ in 0..n {
            let index = d.u32("cloud actor")?;
            let counter = d.u64("cloud counter")?;
            let Some(&(actor, seen)) = entries.get(index as usize) else {
                return Err(ResolveError::Corrupt(format!(
                    "cloud actor {index} outside the clock"
                )));
            };
            if last.is_some_and(|last| last >= (index, counter)) {
                return Err(ResolveError::Corrupt("cloud dots out of order".into()));
            }
            if counter <= seen.saturating_add(1) {
                return Err(ResolveError::Corrupt(
                    "a cloud dot next to or below its counter".into(),
                ));
            }
            last = Some((index, counter));
            cloud.push((actor, counter));
        }
        let clock = Self { entries, cloud };
        if clock
            .entries
            .iter()
            .any(|(actor, counter)| *counter == 0 && clock.cloud_of(actor).is_empty())
        {
            return Err(ResolveError::Corrupt(
                "a version vector counter of 0 without cloud dots".into(),
            ));
        }
        Ok(clock)
    }
}

/// Read a version vector's actors and counters; `zeros` lets a counter be 0 (the encoding
/// with a cloud, whose caller checks the actor has cloud dots).
fn decode_entries<'a>(
    d: &mut Decoder<'a>,
    zeros: bool,
) -> Result<Vec<(&'a [u8], u64)>, ResolveError> {
    let n = d.count("version vector", VV_ENTRY_BYTES_MIN)?;
    let mut entries: Vec<(&'a [u8], u64)> = Vec::with_capacity(n);
    for _ in 0..n {
        let len = d.u8("actor length")? as usize;
        let actor = d.take_exact(len, "actor")?;
        let counter = d.u64("counter")?;
        if counter == 0 && !zeros {
            return Err(ResolveError::Corrupt("version vector counter of 0".into()));
        }
        if entries.last().is_some_and(|(last, _)| *last >= actor) {
            return Err(ResolveError::Corrupt("version vector actors out of order".into()));
        }
        entries.push((actor, counter));
    }
    Ok(entries)
}

/// The version of a dot-map context (`orset`, `cart`) whose clock has no cloud: the plain
/// version vector, as it always was.
pub const CONTEXT_VERSION: u8 = 1;

/// The version of a dot-map context whose clock has a cloud: the vector with its cloud.
pub const CONTEXT_VERSION_WITH_CLOUD: u8 = 2;

/// Encode a version vector as a client context: the resolver's header, then the vector
/// (plain: `siblings`, whose clocks never have a cloud).
pub fn encode_context(tag: Tag, version: u8, clock: &VersionVector<'_>) -> Vec<u8> {
    let mut e = Encoder::new(tag, version);
    clock.encode(&mut e);
    e.finish()
}

/// Encode a dot map's clock as a client context: [`CONTEXT_VERSION`] and the plain vector
/// while it has no cloud, [`CONTEXT_VERSION_WITH_CLOUD`] and the vector with its cloud
/// otherwise. A context must name exactly the dots its client saw, no more: a remove with
/// it takes what it covers.
pub fn encode_dots_context(tag: Tag, clock: &VersionVector<'_>) -> Vec<u8> {
    if !clock.has_cloud() {
        return encode_context(tag, CONTEXT_VERSION, clock);
    }
    let mut e = Encoder::new(tag, CONTEXT_VERSION_WITH_CLOUD);
    clock.encode_with_cloud(&mut e);
    e.finish()
}

/// Map a decoding error of a client's bytes to [`ResolveError::BadContext`].
fn bad_context(e: ResolveError) -> ResolveError {
    match e {
        ResolveError::Corrupt(why) => ResolveError::BadContext(why),
        other => other,
    }
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
    let (mut d, found) = Decoder::new(bytes, tag).map_err(bad_context)?;
    if found != version {
        return Err(ResolveError::BadContext(format!("context version {found} is unknown")));
    }
    let clock = VersionVector::decode(&mut d).map_err(bad_context)?;
    d.finish().map_err(bad_context)?;
    Ok(Some(clock))
}

/// Decode a client context written by [`encode_dots_context`], either version; as
/// [`decode_context`] otherwise.
pub fn decode_dots_context(
    tag: Tag,
    bytes: &[u8],
) -> Result<Option<VersionVector<'_>>, ResolveError> {
    if bytes.is_empty() {
        return Ok(None);
    }
    let (mut d, found) = Decoder::new(bytes, tag).map_err(bad_context)?;
    let clock = match found {
        CONTEXT_VERSION => VersionVector::decode(&mut d),
        CONTEXT_VERSION_WITH_CLOUD => {
            VersionVector::decode_with_cloud(&mut d).and_then(|clock| match clock.has_cloud() {
                true => Ok(clock),
                false => {
                    Err(ResolveError::Corrupt("a context of version 2 without a cloud".into()))
                }
            })
        }
        _ => return Err(ResolveError::BadContext(format!("context version {found} is unknown"))),
    }
    .map_err(bad_context)?;
    d.finish().map_err(bad_context)?;
    Ok(Some(clock))
}
