//! # Causal machinery: dots, version vectors and dot maps
//!
//! The causal resolvers (`siblings`, `orset`, `cart`) track *which writes a state has seen*
//! with the same three pieces, defined here once, and the CRDTs among them compute their
//! deltas here.
//!
//! - A **dot** `(actor, counter)` names one write: the `counter`-th write coordinated by
//!   `actor`. Actors are node ids (server-side actors), so a clock holds one entry per node
//!   that ever coordinated a write to the key, never one per client.
//! - A **version vector** maps each actor to the highest counter seen from it, and so stands
//!   for the set of dots `(actor, 1..=counter)`. A state's vector is its *causal context*:
//!   every dot it covers was either seen and is still in the state, or seen and superseded.
//!   That is why a state needs no tombstones: a dot covered by one side's clock and absent
//!   from its payload was removed there, and the merge drops it.
//! - A **dot map** ([`DotMap`]) is a keyed store of live dots with a small payload each:
//!   the optimized observed-remove set of Bieniusa et al. ("An optimized conflict-free
//!   replicated set", 2012) generalised to a payload, the way Riak's `riak_dt_orswot` and its
//!   embedded counters are built. A key may hold several dots of one actor (ascending by
//!   counter); the resolvers bound how many. [`DotMap::write`] replaces the actor's dots of
//!   the key with one fresh dot (`orset`: one dot per `(key, actor)`), [`DotMap::rewrite`]
//!   lets the caller keep a few (`cart`: a few per `(item, actor)`, so that a remove can tell
//!   observed adds from concurrent ones). Either way the size is bounded by keys × actors ×
//!   a constant, never by the number of writes.
//!
//! ## Contexts ahead of the coordinator: deferred removes
//! A client may read from a replica that has seen more than the coordinator of its next write
//! (sloppy quorum, read repair not yet done). Merging such a context into the coordinator's
//! clock would claim dots it never saw, and the merge rule would then drop them for *every*
//! key, not only the removed one. So a remove whose context the coordinator's clock does not
//! cover removes what it can at once and is kept as a **deferred remove** `(context, keys)`
//! (as `riak_dt_orswot` does); every replica that holds it removes the dots it covers as they
//! arrive, and forgets it after the first merge that makes its clock cover the context. A state is kept *normalised*: no deferred remove whose
//! context its clock covers.
//!
//! ## Deltas and dot clouds
//! A write changes a few dots of a map that may hold thousands. [`DotMap::delta_from`]
//! takes the map before and after a write and returns its **delta**: a map holding only the
//! dots the write added or whose payload grew, the deferred removes (or keys of one) it added,
//! and a clock of exactly the dots it touched: issued, removed, changed (Almeida, Shoker and
//! Baquero's delta mutators, computed as a difference instead of written per operation, so
//! that every operation and any sequence of them in one write has one). Merging it into any
//! replica state that has seen the map before the write gives what merging the whole new map
//! would: the dots it removed are covered by the delta's clock and absent from it, so the
//! merge drops them; every other dot of the replica is outside the delta's clock and stays.
//!
//! That clock covers a few scattered dots, `{n1:7}` say, not `n1:1..=7`: read as a plain
//! version vector it would claim `n1:1..=6` seen and remove them from the receiver. So a
//! version vector carries a **dot cloud**, the dots seen beyond its contiguous counters; a
//! receiver that had `n1:1..=5` and takes `{n1:7}` holds `n1:1..=5` and the cloud `{n1:7}`,
//! and once `n1:6` arrives the cloud is folded into the counter. A client context read from
//! a state with a cloud carries the cloud too ([`CONTEXT_VERSION_WITH_CLOUD`]), so that a
//! remove takes exactly what its client saw. States and contexts without a cloud keep their
//! plain encoding and bytes.
//!
//! A replica that missed some of a coordinator's deltas holds less than the coordinator had:
//! anti-entropy or read repair brings the rest, as for any message lost. Until then it may
//! hold a dot whose removal it missed: an `orset` element with an older dot of one actor
//! beside a newer one, or (the cart folds a coordinator's oldest add dots into a newer one)
//! an older add dot beside the newer dot that absorbed its amount, which reads higher than
//! the coordinator's cart until the missed delta or a whole state arrives. Never lower, and
//! no add is lost.
//!
//! ## Clearing the whole map
//! [`DotMap::clear`] is a remove of every key at once: it drops every dot the context
//! covers, so a write concurrent with the clear (a dot the context does not cover) survives
//! it. A clear whose context is ahead of the coordinator is deferred like a remove, as a
//! deferred remove with an empty key list, which stands for *every* key: the coordinator
//! cannot list the keys the client saw. It is joined with other deferred removes of the
//! same context by absorbing them (every key covers any keys).
//!
//! ## Encoding
//! Actors are length-prefixed with one byte (at most [`ACTOR_BYTES_MAX`](crate::codec::ACTOR_BYTES_MAX)); a dot inside a
//! payload names its actor by index into the state's clock, which is sorted, so index order
//! is actor byte order. A version vector is encoded as:
//!
//! | size   | field                                        |
//! |--------|----------------------------------------------|
//! | 4      | actor count N (u32)                          |
//! | N × .. | per actor, ascending: length (u8), actor id, counter (u64, ≥ 1) |
//!
//! and, with a dot cloud (in the formats that hold one: `cart` version 3, `orset` version 3,
//! contexts version 2), as:
//!
//! | size   | field                                                          |
//! |--------|----------------------------------------------------------------|
//! | 4      | actor count N (u32)                                            |
//! | N × .. | per actor, ascending: length (u8), actor id, counter (u64; 0 only for an actor with cloud dots) |
//! | 4      | cloud dot count C (u32)                                        |
//! | C × 12 | per dot, ascending: actor index (u32), counter (u64, above its actor's counter + 1) |
//!
//! A dot map body is encoded as:
//!
//! | size   | field                                                        |
//! |--------|--------------------------------------------------------------|
//! | ..     | clock (version vector above)                                 |
//! | 4      | key count K (u32)                                            |
//! | K × .. | per key, ascending: key (u32 length + bytes), dot count E (u32, ≥ 1), then E × (actor index u32, counter u64, payload), actor indexes ascending |
//! | 4      | deferred remove count D (u32)                                |
//! | D × .. | per deferred remove, contexts ascending (entry by entry: actor, then counter): context (version vector), key count M (u32; 0 = every key, a deferred clear), M × key (u32 length + bytes), ascending |
//!
//! A map with a cloud in its clock or in a deferred remove's context encodes every vector of
//! it with the cloud encoding, else every one plain. Within a key, dots are ascending by
//! actor index, then by counter. Decoding checks every ordering, that every cloud is compact
//! and that every dot is covered by the clock, so a state that decodes is canonical
//! and re-encodes to the same bytes. A resolver whose format version predates deferred
//! clears refuses a state that holds one ([`DotMap::deferred_clears`]).

use std::cmp::Ordering;

use crate::codec::{Decoder, Encoder};
use crate::ResolveError;

/// Most deferred removes a client write may leave in a state. A remove that would add one
/// more is refused with [`ResolveError::BadContext`]: the coordinator is too far behind the
/// replica the client read from; read again (read repair catches it up) and retry. Merges
/// are never refused, so a state may hold more after merging several replicas.
pub const DEFERRED_REMOVES_MAX: usize = 64;

/// Most dots a delta's clock may name as issued by one write ([`DotMap::delta_from`]). A
/// write issues one dot per operation, far fewer; only a forged context that made a counter
/// jump gets past it, and the coordinator then sends its whole state instead.
pub const DELTA_ISSUED_DOTS_MAX: u64 = 1 << 16;

/// Encoded dot inside a dot map: actor index (u32) and counter (u64).
mod clock;
mod keys;
pub(crate) mod sparse;
pub use clock::*;
use clock::{dot_overflow, DOT_BYTES};
use keys::{count_keys, key_cmp, key_group_end};

/// A dot's payload in a [`DotMap`]: `()` for a set, a quantity for a cart. Fixed-width, so
/// a dot and its payload are read with one bounds check.
pub trait Payload: Copy + Ord + std::fmt::Debug {
    /// Encoded size in bytes.
    const BYTES: usize;
    /// Append the encoding ([`Self::BYTES`] bytes).
    fn encode(&self, e: &mut Encoder);
    /// Parse and validate exactly [`Self::BYTES`] bytes.
    fn parse(bytes: &[u8]) -> Result<Self, ResolveError>;
}

impl Payload for () {
    const BYTES: usize = 0;
    fn encode(&self, _: &mut Encoder) {}
    fn parse(_: &[u8]) -> Result<Self, ResolveError> {
        Ok(())
    }
}

/// One live dot of a [`DotMap`]: `key` was written by the actor at index `actor` of the
/// map's clock, at `counter`, with `payload`.
///
/// Actors are indexes rather than byte strings so that the hot loops (decode, merge, encode)
/// compare and look up integers; the clock is sorted, so index order is actor byte order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DotEntry<'a, P> {
    /// The key (set element, cart item).
    pub key: &'a [u8],
    /// The actor of the dot, as an index into the map's clock.
    pub actor: u32,
    /// The counter of the dot.
    pub counter: u64,
    /// What the dot carries.
    pub payload: P,
}

/// A deferred remove: remove the dots of `keys` that `context` covers, once the clock does.
/// An empty `keys` is a deferred clear: every key.
type Deferred<'a> = (VersionVector<'a>, Vec<&'a [u8]>);

/// Whether a deferred remove's key list covers `key` (an empty list is every key).
fn deferred_covers(keys: &[&[u8]], key: &[u8]) -> bool {
    keys.is_empty() || keys.binary_search(&key).is_ok()
}

/// A keyed dot store with a causal context; see the module documentation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DotMap<'a, P> {
    /// The causal context: every dot seen.
    clock: VersionVector<'a>,
    /// Live dots, sorted by `(key, actor, counter)`, each covered by `clock`.
    entries: Vec<DotEntry<'a, P>>,
    /// Deferred removes, sorted by context, keys sorted; no context covered by `clock`.
    deferred: Vec<Deferred<'a>>,
}

impl<P> Default for DotMap<'_, P> {
    fn default() -> Self {
        Self { clock: VersionVector::default(), entries: Vec::new(), deferred: Vec::new() }
    }
}

/// What one vector has seen of one actor: its contiguous counter and its cloud counters.
#[derive(Debug, Default)]
struct Seen {
    counter: u64,
    cloud: Vec<u64>,
}

impl Seen {
    /// Whether the dot of this actor at `counter` was seen.
    fn covers(&self, counter: u64) -> bool {
        counter <= self.counter
            || (!self.cloud.is_empty() && self.cloud.binary_search(&counter).is_ok())
    }
}

/// For each actor of `clock`, what `other` has seen of it (indexed as `clock`'s actors, so
/// the hot loops look dots up by integer).
fn seen_in(clock: &VersionVector<'_>, other: &VersionVector<'_>) -> Vec<Seen> {
    clock
        .iter()
        .map(|(actor, _)| Seen {
            counter: other.get(actor),
            cloud: other.cloud_of(actor).iter().map(|(_, counter)| *counter).collect(),
        })
        .collect()
}

/// For each actor of `from`, its index in `into` (which holds every actor of `from`).
fn reindex(from: &VersionVector<'_>, into: &VersionVector<'_>) -> Vec<u32> {
    // Both are sorted: one merge-like pass.
    let mut out = Vec::with_capacity(from.len());
    let mut j = 0;
    for (actor, _) in from.iter() {
        while into.entries[j].0 != actor {
            j += 1;
        }
        out.push(j as u32);
    }
    out
}

impl<'a, P: Payload> DotMap<'a, P> {
    /// The causal context: every dot this map has seen.
    pub fn clock(&self) -> &VersionVector<'a> {
        &self.clock
    }

    /// Live dots, sorted by key then actor.
    pub fn entries(&self) -> &[DotEntry<'a, P>] {
        &self.entries
    }

    /// The entries of `key`, ascending by actor and counter.
    pub fn key_entries(&self, key: &[u8]) -> &[DotEntry<'a, P>] {
        let start = self.entries.partition_point(|e| e.key < key);
        let end = start + self.entries[start..].partition_point(|e| e.key == key);
        &self.entries[start..end]
    }

    /// The same map with every payload converted by `f` (a format migration).
    pub fn map_payloads<Q: Payload>(self, f: impl Fn(P) -> Q) -> DotMap<'a, Q> {
        let entries = self
            .entries
            .into_iter()
            .map(|e| DotEntry {
                key: e.key,
                actor: e.actor,
                counter: e.counter,
                payload: f(e.payload),
            })
            .collect();
        DotMap { clock: self.clock, entries, deferred: self.deferred }
    }

    /// How many deferred removes the map holds (for tests and stats).
    pub fn deferred_count(&self) -> usize {
        self.deferred.len()
    }

    /// How many of the deferred removes are deferred clears (every key).
    pub fn deferred_clears(&self) -> usize {
        self.deferred.iter().filter(|(_, keys)| keys.is_empty()).count()
    }

    /// A new dot for `actor`, greater than anything the clock or a pending deferred remove
    /// covers (so no deferred remove can ever take a write made after it).
    fn next_counter(&self, actor: &[u8]) -> Result<u64, ResolveError> {
        let deferred_max =
            self.deferred.iter().map(|(ctx, _)| ctx.highest(actor)).max().unwrap_or(0);
        self.clock.highest(actor).max(deferred_max).checked_add(1).ok_or_else(dot_overflow)
    }

    /// The index of `actor` in the clock, adding it (and shifting the indexes of the dots
    /// of later actors) if it is new.
    fn actor_index(&mut self, actor: &'a [u8]) -> u32 {
        match self.clock.entries.binary_search_by(|(a, _)| (*a).cmp(actor)) {
            Ok(i) => i as u32,
            Err(i) => {
                // The counter is raised by the caller right after; 0 never survives.
                self.clock.entries.insert(i, (actor, 0));
                let i = i as u32;
                for e in &mut self.entries {
                    if e.actor >= i {
                        e.actor += 1;
                    }
                }
                i
            }
        }
    }

    /// Write `key` at `actor`: a fresh dot replaces that actor's dots for the key, carrying
    /// `payload(payload of this actor's newest dot of the key, if any)`. A refused payload
    /// (an overflowing quantity) or dot counter leaves the map unchanged.
    pub fn write(
        &mut self,
        key: &'a [u8],
        actor: &'a [u8],
        payload: impl FnOnce(Option<P>) -> Result<P, ResolveError>,
    ) -> Result<(), ResolveError> {
        self.rewrite(key, actor, |dots, counter| {
            let fresh = payload(dots.last().map(|(_, p)| *p))?;
            *dots = vec![(counter, fresh)];
            Ok(())
        })
    }

    /// Rewrite `actor`'s dots of `key`: `edit` gets them as `(counter, payload)`, ascending,
    /// and the counter of a fresh dot, and leaves the dots the key should hold. It may drop
    /// dots, change payloads (a payload may only grow: [`DotMap::join`] keeps the greater of
    /// two payloads of one dot) and must add the fresh dot, last. A refused edit (an
    /// overflowing quantity) or dot counter leaves the map unchanged.
    pub fn rewrite(
        &mut self,
        key: &'a [u8],
        actor: &'a [u8],
        edit: impl FnOnce(&mut Vec<(u64, P)>, u64) -> Result<(), ResolveError>,
    ) -> Result<(), ResolveError> {
        let counter = self.next_counter(actor)?;
        let (start, end) = match self.clock.entries.binary_search_by(|(a, _)| (*a).cmp(actor)) {
            Ok(index) => self.actor_range(key, index as u32),
            Err(index) => {
                // A new actor: its dots go before those of the actor now at its index.
                let at = self.entries.partition_point(|e| (e.key, e.actor) < (key, index as u32));
                (at, at)
            }
        };
        let mut dots: Vec<(u64, P)> =
            self.entries[start..end].iter().map(|e| (e.counter, e.payload)).collect();
        let before: Vec<u64> = dots.iter().map(|(c, _)| *c).collect();
        edit(&mut dots, counter)?;
        assert_eq!(dots.last().map(|(c, _)| *c), Some(counter), "rewrite must add the fresh dot");
        assert!(
            dots.windows(2).all(|w| w[0].0 < w[1].0)
                && dots[..dots.len() - 1].iter().all(|(c, _)| before.contains(c)),
            "rewrite keeps some of the actor's dots, ascending, and adds one"
        );
        let index = self.actor_index(actor);
        // Exactly the fresh dot: a counter past a deferred remove's context does not claim
        // the dots in between (they stay unseen, in the cloud).
        self.clock.add_dot(actor, counter);
        // `actor_index` may have shifted later actors' indexes, never this range's positions.
        let fresh = dots.into_iter().map(|(counter, payload)| DotEntry {
            key,
            actor: index,
            counter,
            payload,
        });
        self.entries.splice(start..end, fresh);
        Ok(())
    }

    /// The positions of `actor`'s dots of `key` in `entries` (an empty range where they
    /// would go if there are none).
    fn actor_range(&self, key: &[u8], actor: u32) -> (usize, usize) {
        let start = self.entries.partition_point(|e| (e.key, e.actor) < (key, actor));
        let end =
            start + self.entries[start..].partition_point(|e| (e.key, e.actor) == (key, actor));
        (start, end)
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
        let seen = seen_in(&self.clock, context);
        self.entries.retain(|e| e.key != key || !seen[e.actor as usize].covers(e.counter));
        self.defer(context, Some(key))
    }

    /// Remove every dot that `context` covers, of every key: a clear. No context stands for
    /// this map's own clock (remove everything the coordinator holds). A context this map's
    /// clock does not cover is also kept as a deferred clear; see the module documentation.
    pub fn clear(&mut self, context: Option<&VersionVector<'a>>) -> Result<(), ResolveError> {
        let Some(context) = context else {
            self.entries.clear();
            return Ok(());
        };
        let seen = seen_in(&self.clock, context);
        self.entries.retain(|e| !seen[e.actor as usize].covers(e.counter));
        self.defer(context, None)
    }

    /// Keep a remove of `key` (`None`: every key) as a deferred remove, if the clock does
    /// not cover its context.
    fn defer(
        &mut self,
        context: &VersionVector<'a>,
        key: Option<&'a [u8]>,
    ) -> Result<(), ResolveError> {
        if self.clock.descends(context) {
            return Ok(());
        }
        match self.deferred.binary_search_by(|(ctx, _)| ctx.cmp(context)) {
            Ok(i) => {
                let keys = &mut self.deferred[i].1;
                match key {
                    // Already a clear: it covers the key.
                    _ if keys.is_empty() => {}
                    None => keys.clear(),
                    Some(key) => {
                        if let Err(at) = keys.binary_search(&key) {
                            keys.insert(at, key);
                        }
                    }
                }
            }
            Err(i) => {
                if self.deferred.len() >= DEFERRED_REMOVES_MAX {
                    return Err(ResolveError::BadContext(format!(
                        "the context is ahead of this replica, which already holds \
                         {DEFERRED_REMOVES_MAX} deferred removes: read again and retry"
                    )));
                }
                self.deferred.insert(i, (context.clone(), key.into_iter().collect()));
            }
        }
        Ok(())
    }

    /// The least upper bound of two dot maps.
    pub fn join(&self, other: &DotMap<'a, P>) -> DotMap<'a, P> {
        let clock = self.clock.join(&other.clock);
        // Per-actor tables, so the loop below compares and looks up integers only: each
        // side's actor index in the joined clock, and what the other side has seen of it.
        let (a_index, b_index) = (reindex(&self.clock, &clock), reindex(&other.clock, &clock));
        let (a_seen_by_b, b_seen_by_a) =
            (seen_in(&self.clock, &other.clock), seen_in(&other.clock, &self.clock));
        let (a, b) = (&self.entries, &other.entries);
        let mut entries = Vec::with_capacity(a.len().max(b.len()));
        let from_a = |e: &DotEntry<'a, P>| DotEntry { actor: a_index[e.actor as usize], ..*e };
        let from_b = |e: &DotEntry<'a, P>| DotEntry { actor: b_index[e.actor as usize], ..*e };
        // A dot present on one side only survives unless the other side has seen it (its
        // clock covers it), which means the other side removed or replaced it.
        let a_keeps = |e: &DotEntry<'a, P>| !a_seen_by_b[e.actor as usize].covers(e.counter);
        let b_keeps = |e: &DotEntry<'a, P>| !b_seen_by_a[e.actor as usize].covers(e.counter);
        // Walk both sides key by key (one byte comparison per key, not per dot), and within
        // a key dot by dot (actor in the joined clock's order, then counter: integers).
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            let (a_end, b_end) = (key_group_end(a, i), key_group_end(b, j));
            match key_cmp(a[i].key, b[j].key) {
                Ordering::Less => {
                    entries.extend(a[i..a_end].iter().filter(|e| a_keeps(e)).map(from_a));
                    i = a_end;
                }
                Ordering::Greater => {
                    entries.extend(b[j..b_end].iter().filter(|e| b_keeps(e)).map(from_b));
                    j = b_end;
                }
                Ordering::Equal => {
                    // Both sides' dots of the key share one key slice from here on, so that
                    // encoding groups them without comparing bytes.
                    let key = a[i].key;
                    while i < a_end || j < b_end {
                        let x = (i < a_end).then(|| from_a(&a[i]));
                        let y = (j < b_end).then(|| DotEntry { key, ..from_b(&b[j]) });
                        match (x, y) {
                            (Some(x), Some(y)) if (x.actor, x.counter) == (y.actor, y.counter) => {
                                // One dot on both sides: its payload may have grown on one
                                // (see `rewrite`); keep the greater.
                                entries.push(if x.payload >= y.payload { x } else { y });
                                i += 1;
                                j += 1;
                            }
                            (Some(x), Some(y)) if (x.actor, x.counter) > (y.actor, y.counter) => {
                                if b_keeps(&b[j]) {
                                    entries.push(y);
                                }
                                j += 1;
                            }
                            (Some(x), _) => {
                                if a_keeps(&a[i]) {
                                    entries.push(x);
                                }
                                i += 1;
                            }
                            (None, Some(y)) => {
                                if b_keeps(&b[j]) {
                                    entries.push(y);
                                }
                                j += 1;
                            }
                            (None, None) => unreachable!("loop condition"),
                        }
                    }
                }
            }
        }
        entries.extend(a[i..].iter().filter(|e| a_keeps(e)).map(from_a));
        entries.extend(b[j..].iter().filter(|e| b_keeps(e)).map(from_b));
        let deferred = join_deferred(&self.deferred, &other.deferred);
        let mut out = DotMap { clock, entries, deferred };
        out.normalize();
        out
    }

    /// Apply every deferred remove to the dots the map holds, and forget those whose
    /// context the clock now covers (no dot they remove can arrive any more). A dot that a
    /// deferred remove's context covers was observed by its client, so it goes as soon as
    /// any replica holding the remove holds it, not only once the clock has caught up.
    pub fn normalize(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        for (ctx, keys) in &self.deferred {
            let seen = seen_in(&self.clock, ctx);
            self.entries.retain(|e| {
                !deferred_covers(keys, e.key) || !seen[e.actor as usize].covers(e.counter)
            });
        }
        let clock = &self.clock;
        self.deferred.retain(|(ctx, _)| !clock.descends(ctx));
    }

    /// The delta of `self` over `old`, for a `self` that a write made from `old`: the
    /// smallest map `δ` with `old ⊔ δ = self` and `self ⊔ δ = self`, so that any replica
    /// state `x` that descends from `old` gets `x ⊔ δ = x ⊔ self` (see "Deltas" in the
    /// module documentation). It holds the dots that are new or whose payload changed,
    /// the deferred removes that are new, and a clock of exactly the dots the write
    /// touched: those it issued, those it removed, those it changed. `None` when the clock
    /// moved by more than [`DELTA_ISSUED_DOTS_MAX`] dots (a forged context; the caller then
    /// sends the state).
    pub fn delta_from(&self, old: &DotMap<'a, P>) -> Option<DotMap<'a, P>> {
        let mut dots: Vec<(&'a [u8], u64)> = Vec::new();
        // The dots the write issued: what the clock covers now and did not before.
        for (actor, counter) in self.clock.iter() {
            let was = old.clock.get(actor);
            if counter > was {
                if counter - was > DELTA_ISSUED_DOTS_MAX {
                    return None;
                }
                let issued = (was + 1..=counter).filter(|c| !old.clock.covers(actor, *c));
                dots.extend(issued.map(|c| (actor, c)));
            }
        }
        let cloud = self.clock.cloud.iter().filter(|(actor, c)| !old.clock.covers(actor, *c));
        dots.extend(cloud);
        if dots.len() as u64 > DELTA_ISSUED_DOTS_MAX {
            return None;
        }
        // The dots removed, added or changed: both sides walked in (key, actor, counter)
        // order (actor index order is actor byte order on each side).
        let actor_of =
            |map: &DotMap<'a, P>, e: &DotEntry<'a, P>| map.clock.entries[e.actor as usize].0;
        let (a, b) = (&old.entries, &self.entries);
        let mut changed: Vec<DotEntry<'a, P>> = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < a.len() || j < b.len() {
            let order = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => {
                    (x.key, actor_of(old, x), x.counter).cmp(&(y.key, actor_of(self, y), y.counter))
                }
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            match order {
                Ordering::Less => {
                    dots.push((actor_of(old, &a[i]), a[i].counter));
                    i += 1;
                }
                Ordering::Greater => {
                    dots.push((actor_of(self, &b[j]), b[j].counter));
                    changed.push(b[j]);
                    j += 1;
                }
                Ordering::Equal => {
                    if a[i].payload != b[j].payload {
                        dots.push((actor_of(self, &b[j]), b[j].counter));
                        changed.push(b[j]);
                    }
                    i += 1;
                    j += 1;
                }
            }
        }
        let clock = VersionVector::from_dots(dots);
        let entries = changed
            .into_iter()
            .map(|e| {
                let actor = clock.index_of(actor_of(self, &e)).expect("a changed dot's actor");
                DotEntry { actor: actor as u32, ..e }
            })
            .collect();
        // New deferred removes, and the keys a write added to one of the same context (the
        // join takes the union of their keys; a clear, no keys, absorbs them).
        let deferred: Vec<Deferred<'a>> = self
            .deferred
            .iter()
            .filter_map(|(ctx, keys)| {
                let Ok(i) = old.deferred.binary_search_by(|(c, _)| c.cmp(ctx)) else {
                    return Some((ctx.clone(), keys.clone()));
                };
                let had = &old.deferred[i].1;
                match (had == keys, keys.is_empty()) {
                    (true, _) => None,
                    (false, true) => Some((ctx.clone(), Vec::new())),
                    (false, false) => Some((
                        ctx.clone(),
                        keys.iter().filter(|k| !had.contains(k)).copied().collect(),
                    )),
                }
            })
            .collect();
        // `self` is normalised and the delta's clock is part of its clock.
        debug_assert!(deferred.iter().all(|(ctx, _)| !clock.descends(ctx)));
        Some(DotMap { clock, entries, deferred })
    }

    /// Whether the clock or a deferred remove's context has a cloud: the map then needs the
    /// encoding with clouds ([`DotMap::encode`]).
    pub fn has_cloud(&self) -> bool {
        self.clock.has_cloud() || self.deferred.iter().any(|(ctx, _)| ctx.has_cloud())
    }

    /// Append the body encoding (see the module table): every version vector plain while
    /// [`DotMap::has_cloud`] is false, every one with its cloud otherwise.
    pub fn encode(&self, e: &mut Encoder) {
        self.encode_between(&[], e);
    }

    /// [`DotMap::encode`], with `runs` of key groups already encoded (from another body of
    /// the same actors, see [`sparse::Sparse`]) placed between this map's keys in key order.
    fn encode_between(&self, runs: &[sparse::Run<'_>], e: &mut Encoder) {
        let clouds = self.has_cloud();
        let clock = |vv: &VersionVector<'_>, e: &mut Encoder| match clouds {
            true => vv.encode_with_cloud(e),
            false => vv.encode(e),
        };
        clock(&self.clock, e);
        let keys = count_keys(&self.entries) + runs.iter().map(|run| run.keys).sum::<usize>();
        e.u32(keys as u32);
        let mut rest = &self.entries[..];
        let mut runs = runs.iter().peekable();
        while let Some(first) = rest.first() {
            while let Some(run) = runs.next_if(|run| key_cmp(run.first_key, first.key).is_lt()) {
                e.raw(run.bytes);
            }
            let n = key_group_end(rest, 0);
            e.bytes(first.key).u32(n as u32);
            for entry in &rest[..n] {
                e.u32(entry.actor).u64(entry.counter);
                entry.payload.encode(e);
            }
            rest = &rest[n..];
        }
        for run in runs {
            e.raw(run.bytes);
        }
        e.u32(self.deferred.len() as u32);
        for (ctx, keys) in &self.deferred {
            clock(ctx, e);
            e.u32(keys.len() as u32);
            for key in keys {
                e.bytes(key);
            }
        }
    }

    /// Whether an encoded body holds no key, reading only its clock and its key count: for a
    /// valid body, what `decode(..)?.entries().is_empty()` tells, without decoding (or
    /// checking) the entries. For the store's tombstone test, which runs on every write of a
    /// state the resolver just made or checked; a corrupt body is refused by every read.
    pub fn holds_no_keys(d: &mut Decoder<'a>, clouds: bool) -> Result<bool, ResolveError> {
        VersionVector::decode_either(d, clouds)?;
        Ok(d.count("keys", 4 + 4)? == 0)
    }

    /// Decode a body and check every invariant (order, coverage, normal form). `clouds`:
    /// the encoding with clouds, which must then hold one ([`DotMap::has_cloud`]), or a
    /// lower format version would hold the map.
    pub fn decode(d: &mut Decoder<'a>, clouds: bool) -> Result<Self, ResolveError> {
        let vector = |d: &mut Decoder<'a>| VersionVector::decode_either(d, clouds);
        let clock = vector(d)?;
        let seen = seen_in(&clock, &clock);
        let key_count = d.count("keys", 4 + 4)?;
        // A guess of a few dots per key; not keys × actors, which a corrupt state could make
        // huge (both counts are only bounded by the input length, their product is not).
        let mut entries: Vec<DotEntry<'a, P>> =
            Vec::with_capacity(key_count.saturating_mul(clock.len().clamp(1, 4)));
        let mut last_key: Option<&[u8]> = None;
        for _ in 0..key_count {
            let key = d.bytes("key")?;
            if last_key.is_some_and(|last| key_cmp(last, key) != Ordering::Less) {
                return Err(ResolveError::Corrupt("keys out of order".into()));
            }
            last_key = Some(key);
            let dots = group_dots::<P>(d)?;
            decode_group(key, dots, &seen, &mut entries)?;
        }
        let deferred_count = d.count("deferred removes", 4 + 4 + 4)?;
        let mut deferred: Vec<Deferred<'a>> = Vec::with_capacity(deferred_count);
        for _ in 0..deferred_count {
            let ctx = vector(d)?;
            if clock.descends(&ctx) {
                return Err(ResolveError::Corrupt("a deferred remove the clock covers".into()));
            }
            if deferred.last().is_some_and(|(last, _)| *last >= ctx) {
                return Err(ResolveError::Corrupt("deferred removes out of order".into()));
            }
            // 0 keys: a deferred clear (every key).
            let m = d.count("deferred keys", 4)?;
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
        let map = Self { clock, entries, deferred };
        if clouds && !map.has_cloud() {
            return Err(ResolveError::Corrupt("a state with clouds that holds none".into()));
        }
        Ok(map)
    }
}

/// The dots of one key group, after its key: their count (at least one) and their bytes.
fn group_dots<'a, P: Payload>(d: &mut Decoder<'a>) -> Result<&'a [u8], ResolveError> {
    let n = d.count("dots", DOT_BYTES + P::BYTES)?;
    if n == 0 {
        return Err(ResolveError::Corrupt("a key without dots".into()));
    }
    d.take_exact(n * (DOT_BYTES + P::BYTES), "dots")
}

/// An encoded dot's actor index and counter.
fn dot_at(dot: &[u8]) -> (u32, u64) {
    let actor = u32::from_be_bytes([dot[0], dot[1], dot[2], dot[3]]);
    let counter =
        u64::from_be_bytes([dot[4], dot[5], dot[6], dot[7], dot[8], dot[9], dot[10], dot[11]]);
    (actor, counter)
}

/// Decode the dots of `key` ([`group_dots`]) into `entries`, checking their order and that
/// the clock (`seen`: what it has seen of each of its actors) covers each.
fn decode_group<'a, P: Payload>(
    key: &'a [u8],
    dots: &'a [u8],
    seen: &[Seen],
    entries: &mut Vec<DotEntry<'a, P>>,
) -> Result<(), ResolveError> {
    let mut last_index = None;
    for dot in dots.chunks_exact(DOT_BYTES + P::BYTES) {
        let (actor, counter) = dot_at(dot);
        let payload = P::parse(&dot[DOT_BYTES..])?;
        let Some(seen) = seen.get(actor as usize) else {
            return Err(ResolveError::Corrupt(format!("actor index {actor} outside the clock")));
        };
        if last_index.is_some_and(|last| last >= (actor, counter)) {
            return Err(ResolveError::Corrupt("dots of a key out of order".into()));
        }
        last_index = Some((actor, counter));
        if counter == 0 || !seen.covers(counter) {
            return Err(ResolveError::Corrupt("a dot the clock does not cover".into()));
        }
        entries.push(DotEntry { key, actor, counter, payload });
    }
    Ok(())
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
                // A clear (no keys) absorbs any keys.
                let mut keys: Vec<&'a [u8]> = if a[i].1.is_empty() || b[j].1.is_empty() {
                    Vec::new()
                } else {
                    a[i].1.iter().chain(&b[j].1).copied().collect()
                };
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
mod tests;
