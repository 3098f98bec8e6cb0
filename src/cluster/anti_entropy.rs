//! # Anti-entropy: finding what replicas disagree on without sending everything
//!
//! Read repair fixes keys that are read; hinted handoff fixes writes a fallback held. Keys
//! that are never read after a replica missed them (a hint refused at its bound, a node
//! killed before its flusher ran, a fallback that died) are found by comparing hash trees.
//!
//! ## Trees kept up to date
//! Per (bucket, partition) a replica keeps a two-level tree in memory
//! ([`crate::store::trees`]): [`SEGMENTS`] segments by the first byte of the MD5 of the key,
//! each holding its keys' 64-bit (key, state) hashes, and a leaf per segment, the wrapping
//! sum of them. Every store write, merge and delete updates the tree of its partition (the
//! old hash out, the new one in), so a tree is built once, by a paced background scan the
//! first time it is asked for, and never rescanned (after an engine reopen it is built
//! again). Equal states are equal bytes (resolver encodings are canonical), so converged
//! replicas have equal leaves.
//!
//! ## An exchange
//! Each round compares `anti_entropy_partitions_per_round` (bucket, partition) pairs this
//! node is a primary of, each with one other primary that is up:
//! 1. both sides' leaves (2 KiB each, from memory: no value is read);
//! 2. for the segments whose leaves differ, the peer's entries (`segmentEntries`: the peer
//!    reads the values of those segments' keys only, which its tree lists, at most half a
//!    message, from a rotating start);
//! 3. each entry whose hash differs from this node's hash of the key is merged here
//!    ([`crate::store::Store::merge`]; one stamped too far ahead of this node's clock is
//!    refused and skipped, and the rest of the segment is still repaired);
//! 4. each key of those segments whose state here differs from the peer's (by hash, then
//!    read) is sent to the peer.
//!
//! So this side reads the values of the keys that differ, and the peer those of the
//! differing segments' keys: for a million keys in 64 partitions about 61 per differing
//! segment, whatever the partition's size beyond that (docs/BENCHMARKS.md).
//!
//! ## Deletes that end: collecting tombstones
//! A delete leaves a **tombstone** (a `siblings` state with a clock and no sibling, an `lww`
//! state with a stamp and no value): it must stay until no older state of the key is left
//! anywhere that could come back and win against nothing. Cassandra drops tombstones after
//! `gc_grace` of wall-clock time, and a replica that was down longer brings the data back
//! (zombies). Here a tombstone is collected on what is known of every copy, never on age:
//!
//! A node P collects its own copy of key k, holding tombstone T, in its anti-entropy round,
//! when all of this holds (`collect_tombstone`, at most [`TOMBSTONE_CHECKS_PER_ROUND`] keys
//! per round, found in the trees without a scan):
//! 1. P is one of k's primaries, holds no hint for k, and every member of P's view is up;
//! 2. every other member answers a `fetch` of k (its stored state merged with every hint it
//!    holds for k): each primary with exactly T or nothing, each other node with nothing
//!    (no stray copy and no hint: sloppy-quorum fallbacks are never primaries);
//! 3. every primary that answered T has it durable: P sends it T again with `sync` (a no-op
//!    merge, then a sync), and syncs its own engine;
//! 4. P deletes k if it still holds T, and remembers (k, T) for
//!    [`COLLECT_FENCE_TIMEOUTS`] request timeouts.
//!
//! Every primary decides for itself, by the same check: a primary that collected answers
//! "nothing", which the others accept, so the last copy goes as soon as the others checked.
//!
//! **Why a node that was down cannot resurrect the key.** A member that is down (or
//! suspect, or cut off) answers nothing, so nobody collects while any node is unreachable;
//! the down node's old state S comes back with it, is answered in step 2 (S is not T), and
//! is repaired to T first (anti-entropy, read repair), and only then can the check pass.
//! Hints are held by fallbacks, which are not primaries, and a fallback holding one answers
//! it, so no tombstone is collected while a hint for its key waits anywhere. Step 3 makes
//! sure that a primary that answered T cannot crash and come back with the older state its
//! disk still held.
//!
//! **Why collection ends.** A peer that still holds T sends it in an exchange; the collector
//! merges it with the remembered T, finds nothing new, and stores nothing
//! ([`crate::store::Store::merge`]), so T does not ping-pong back while the others finish
//! their own checks. A state *newer* than T (a write after the delete) is stored as usual,
//! merged with the remembered T so no dot is reissued. A client write to k at P within the
//! fence applies to the remembered T for the same reason; after a collection that deleted
//! dots of P's replica actor, P takes a new replica epoch (once per round: [`crate::actors`]).
//!
//! **Messages in flight.** A replicate or read repair sent before the delete can reach P
//! after it collected. While (k, T) is remembered such a state merges into T and is dropped
//! (counted: `Store::states_fenced`). Remembering is bounded ([`crate::store::trees::COLLECTED_REMEMBERED_MAX`];
//! at the bound collection pauses, nothing is forgotten early) and lasts
//! [`COLLECT_FENCE_TIMEOUTS`] request timeouts: a read repair reads, waits up to one
//! timeout for the slower replicas, then sends, and every peer call has the request timeout
//! as its deadline.
//!
//! **What it does not guarantee.** (a) A message older than T delivered more than the fence
//! after the collection (a peer that kept a state in a queue past every deadline) brings it
//! back. (b) A node restored from a backup taken before the collection brings back what the
//! backup holds; so does a disk that loses *synced* data. (c) A hint or stray copy whose
//! deletion was not synced when its node crashed may come back with the node (a stray copy
//! is then handed on, a hint delivered). (d) The check trusts P's ring: during a ring change
//! a node that became a primary in another node's view, holding an older state, answers it
//! and blocks the collection, but a transfer stream read before T arrived and delivered
//! after the fence is (a). (e) A member that never comes back blocks collection of every
//! tombstone until it is removed from the cluster; that is the price of never guessing.
//! `orset` and `cart` keep no tombstones inside a state (dots and a version vector); a
//! whole state that reads as not found is collected like any other tombstone.

use std::collections::BTreeMap;

use super::coordinator::Target;
use super::membership::Health;
use super::Cluster;
use crate::error::Error;
use crate::store::Entry;

pub use crate::store::trees::{entry_hash, segment_of, Leaves, SEGMENTS};

/// Tombstones a node checks for collection per anti-entropy round, each costing one `fetch`
/// per other member and one synced `replicate` per primary that holds it.
pub const TOMBSTONE_CHECKS_PER_ROUND: usize = 32;

/// How many request timeouts a collected tombstone is remembered against older states in
/// flight: a read repair may read, wait one timeout for slow replicas, then send with a
/// deadline of one more.
pub const COLLECT_FENCE_TIMEOUTS: u64 = 3;

/// The leaves of a partition given its (key, state) pairs in any order (what a tree kept up
/// to date holds; tests and benchmarks compare with it).
pub fn leaves<'a>(entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Leaves {
    let mut leaves = vec![0u64; SEGMENTS];
    for (key, state) in entries {
        let segment = segment_of(key) as usize;
        leaves[segment] = leaves[segment].wrapping_add(entry_hash(key, state));
    }
    leaves
}

/// Segments whose leaves differ. Leaves of the wrong length differ everywhere.
pub fn differing(ours: &[u64], theirs: &[u64]) -> Vec<u16> {
    if ours.len() != SEGMENTS || theirs.len() != SEGMENTS {
        return (0..SEGMENTS as u16).collect();
    }
    (0..SEGMENTS).filter(|&s| ours[s] != theirs[s]).map(|s| s as u16).collect()
}

/// One anti-entropy comparison: a partition of a bucket, with one other primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    /// The bucket.
    pub bucket: String,
    /// The partition.
    pub partition: u16,
    /// The primary to compare with.
    pub peer: String,
}

/// What [`plan_exchanges`] chooses from.
#[derive(Clone, Copy, Debug)]
pub struct ExchangeInput<'a> {
    /// The ring.
    pub ring: &'a crate::ring::Ownership,
    /// Every bucket with its N.
    pub buckets: &'a [(String, usize)],
    /// This node.
    pub me: &'a str,
    /// The round number (rotates the peer among a partition's primaries).
    pub round: u64,
}

/// Choose this round's comparisons. Pure.
///
/// Walks the (bucket, partition) pairs from `cursor`, round-robin over rounds, and takes at
/// most `per_round` pairs this node is a primary of that have another primary up; the peer
/// rotates with the round. Returns the comparisons and the cursor for the next round.
pub fn plan_exchanges(
    input: &ExchangeInput<'_>,
    cursor: usize,
    per_round: usize,
    health: impl Fn(&str) -> Health,
) -> (Vec<Exchange>, usize) {
    let partitions = input.ring.partitions() as usize;
    let pairs = input.buckets.len() * partitions;
    let mut chosen = Vec::new();
    let mut cursor = cursor;
    if pairs == 0 {
        return (chosen, cursor);
    }
    for _ in 0..pairs {
        if chosen.len() >= per_round {
            break;
        }
        let at = cursor % pairs;
        cursor = at + 1;
        let (bucket, n) = &input.buckets[at / partitions];
        let partition = (at % partitions) as u16;
        let primaries: Vec<&str> = input.ring.primaries(partition, *n);
        if !primaries.contains(&input.me) {
            continue;
        }
        let peers: Vec<&str> =
            primaries.into_iter().filter(|p| *p != input.me && health(p) == Health::Up).collect();
        if peers.is_empty() {
            continue;
        }
        let peer = peers[(input.round as usize) % peers.len()].to_string();
        chosen.push(Exchange { bucket: bucket.clone(), partition, peer });
    }
    (chosen, cursor)
}

impl Cluster {
    /// The anti-entropy leaves of one partition of a bucket on this node, from its tree
    /// kept up to date (built first, paced, if it is not yet:
    /// [`crate::store::Store::tree_leaves`]).
    pub async fn tree_leaves(&self, bucket: &str, partition: u16) -> Result<Leaves, Error> {
        self.store.tree_leaves(bucket, partition).await
    }

    /// This node's (key, state) pairs in some segments of a partition: the tree lists the
    /// segments' keys, and only their values are read, off the RPC thread, at most half a
    /// message from a rotating start.
    pub async fn segment_entries(
        &self,
        bucket: &str,
        partition: u16,
        segments: &[u16],
    ) -> Result<Vec<Entry>, Error> {
        self.store.tree_leaves(bucket, partition).await?;
        let mut keys: Vec<Vec<u8>> = self
            .store
            .tree_hashes(bucket, partition, segments)?
            .unwrap_or_default()
            .into_iter()
            .map(|(key, _)| key)
            .collect();
        let budget = self.store.limits().message_bytes_max() / 2;
        if !keys.is_empty() {
            let turn = self.now_ms() as usize % keys.len();
            keys.rotate_left(turn);
        }
        let entries = self.store.fetch_many(bucket, keys, budget).await?;
        Ok(fit_answer(entries, budget, 0))
    }

    /// Compare a few partitions with another primary and merge what differs, both ways.
    pub(super) async fn anti_entropy_round(&self, round: u64) {
        let ring = self.ring();
        let buckets: Vec<(String, usize)> =
            self.store.buckets().map(|b| (b.name.clone(), b.config.n as usize)).collect();
        let me = self.me();
        let (exchanges, cursor) = plan_exchanges(
            &ExchangeInput { ring: &ring, buckets: &buckets, me: &me, round },
            self.anti_entropy_cursor.get(),
            self.anti_entropy_per_round,
            |id| self.health(id),
        );
        self.anti_entropy_cursor.set(cursor);
        for Exchange { bucket, partition, peer } in exchanges {
            if let Err(e) = self.exchange_partition(&peer, &bucket, partition).await {
                tracing::debug!(%peer, %bucket, partition, error = %e, "anti-entropy exchange failed");
            }
        }
        let collected = self.collect_tombstones(round).await;
        self.anti_entropy_progress.borrow_mut().tombstones_collected += collected as u64;
    }

    pub(super) async fn exchange_partition(
        &self,
        peer: &str,
        bucket: &str,
        partition: u16,
    ) -> Result<(), Error> {
        let theirs = self.tree_leaves_of(peer, bucket, partition).await?;
        let ours = self.tree_leaves(bucket, partition).await?;
        let segments = differing(&ours, &theirs);
        self.metrics().anti_entropy_exchange(bucket);
        self.anti_entropy_progress.borrow_mut().exchanged();
        if segments.is_empty() {
            return Ok(());
        }
        let remote = self.segment_entries_of(peer, bucket, partition, &segments).await?;
        let hashes: BTreeMap<Vec<u8>, u64> = self
            .store
            .tree_hashes(bucket, partition, &segments)?
            .unwrap_or_default()
            .into_iter()
            .collect();
        let same = |key: &[u8], state: &[u8]| hashes.get(key) == Some(&entry_hash(key, state));
        let mut merged = Vec::new();
        for (key, state) in &remote {
            if same(key, state) {
                continue;
            }
            match self.store.merge(bucket, key, state) {
                // The ring may have moved the partition away while the exchange ran.
                Ok(_) => {
                    self.note_if_stray(bucket, key);
                    merged.push(key.clone());
                }
                // Refused (stamped too far ahead: counted and logged by the store, or a bad
                // key): the peer's other entries are still merged, and this node's own
                // state of the key goes back to it below.
                Err(Error::BadRequest(_) | Error::KeyTooLarge(_)) => {}
                Err(e) => return Err(e),
            }
        }
        // What the peer lacks or holds otherwise: keys whose hash here differs from the
        // peer's entry, and those just merged (the merge may hold more than the peer's).
        let differ = hashes.iter().filter(|(key, _)| match remote.get(*key) {
            Some(state) => !same(key, state),
            None => true,
        });
        let mut candidates: Vec<Vec<u8>> = differ.map(|(key, _)| key.clone()).collect();
        candidates.extend(merged);
        candidates.sort();
        candidates.dedup();
        let target = Target { id: peer.to_string(), hint_for: None };
        let mut repaired = 0usize;
        for key in candidates {
            let Some(state) = self.store.fetch(bucket, &key)? else { continue };
            if remote.get(&key) != Some(&state) {
                self.replicate(&target, bucket, &key, &state, false).await;
                repaired += 1;
            }
        }
        tracing::info!(%peer, %bucket, partition, segments = segments.len(), received = remote.len(), sent = repaired, "anti-entropy repaired a partition");
        self.metrics().anti_entropy_repairs(bucket, remote.len(), repaired);
        self.anti_entropy_progress.borrow_mut().repaired(remote.len(), repaired);
        Ok(())
    }

    /// Collect the tombstones that every copy is known to hold (the module doc, "Deletes
    /// that end"): at most [`TOMBSTONE_CHECKS_PER_ROUND`] checks, only while every member is
    /// up. Returns how many this node collected.
    pub(super) async fn collect_tombstones(&self, round: u64) -> usize {
        let me = self.me();
        let members = self.members();
        if members.iter().any(|(_, health)| *health != Health::Up) {
            return 0;
        }
        let others: Vec<String> =
            members.into_iter().map(|(member, _)| member.id).filter(|id| *id != me).collect();
        let ring = self.ring();
        let fence_ms =
            COLLECT_FENCE_TIMEOUTS.saturating_mul(self.store.limits().request_timeout_ms);
        let buckets: Vec<(String, usize)> =
            self.store.buckets().map(|b| (b.name.clone(), b.config.n as usize)).collect();
        let per_bucket = TOMBSTONE_CHECKS_PER_ROUND / buckets.len().max(1) + 1;
        let skip = (round as usize).wrapping_mul(per_bucket);
        let (mut collected, mut recorded) = (0, 0);
        for (bucket, n) in buckets {
            let candidates = match self.store.tombstones(&bucket, per_bucket, skip) {
                Ok(candidates) => candidates,
                Err(e) => {
                    tracing::debug!(%bucket, error = %e, "tombstones not listed");
                    continue;
                }
            };
            for (partition, key) in candidates {
                let primaries: Vec<String> =
                    ring.primaries(partition, n).into_iter().map(str::to_string).collect();
                if !primaries.contains(&me) {
                    continue;
                }
                let check =
                    Check { bucket: &bucket, key: &key, primaries: &primaries, others: &others };
                match self.collect_tombstone(check, fence_ms).await {
                    Ok(Some(dots)) => {
                        collected += 1;
                        recorded = recorded.max(dots);
                    }
                    Ok(None) => {}
                    Err(e) => tracing::debug!(%bucket, error = %e, "tombstone not collected"),
                }
            }
        }
        if self.store.actors().dropped(crate::actors::Role::Replica, recorded) {
            tracing::debug!("collected tombstones held this node's writes: new replica epoch");
        }
        if collected > 0 {
            tracing::debug!(collected, "tombstones collected");
        }
        collected
    }

    /// Check one tombstone and collect this node's copy when every copy is known to hold
    /// it (steps 1 to 4 of the module doc). `Some(what the deleted state recorded of the
    /// replica actor)` when collected.
    async fn collect_tombstone(
        &self,
        check: Check<'_>,
        fence_ms: u64,
    ) -> Result<Option<u64>, Error> {
        let Check { bucket, key, primaries, others } = check;
        let Some(tombstone) = self.store.fetch(bucket, key)? else { return Ok(None) };
        if !self.store.bucket(bucket)?.is_tombstone(&tombstone)
            || self.hinted_state(bucket, key)?.is_some()
        {
            return Ok(None);
        }
        let target = |id: &String| Target { id: id.clone(), hint_for: None };
        let answers = futures::future::join_all(
            others
                .iter()
                .map(|id| async move { (id, self.fetch_remote(&target(id), bucket, key).await) }),
        )
        .await;
        let mut holders = Vec::new();
        for (id, answer) in answers {
            match answer? {
                None => {}
                Some(state) if state == tombstone && primaries.contains(id) => holders.push(id),
                Some(_) => return Ok(None),
            }
        }
        let state = tombstone.as_slice();
        let synced =
            futures::future::join_all(holders.into_iter().map(|id| async move {
                self.replicate(&target(id), bucket, key, state, true).await
            }))
            .await;
        if !synced.into_iter().all(|stored| stored) {
            return Ok(None);
        }
        let engine = std::sync::Arc::clone(&self.store.bucket(bucket)?.engine);
        self.sync_engine(&engine).await?;
        let until_ms = self.store.wall_ms().saturating_add(fence_ms);
        let (collected, recorded) = self.store.collect(bucket, key, &tombstone, until_ms)?;
        Ok(collected.then_some(recorded))
    }

    /// Wait until everything `engine` took is durable: through the sync groups on the
    /// blocking pool, or at once on this thread when the store scans on the calling thread
    /// (the simulation, whose runs must not depend on thread timing).
    pub(super) async fn sync_engine(
        &self,
        engine: &std::sync::Arc<dyn cartwheel_engines::StorageEngine>,
    ) -> Result<(), Error> {
        if self.store.scans_on_calling_thread() {
            return Ok(engine.sync()?);
        }
        self.syncs.sync(engine).await
    }
}

/// What one tombstone check is about.
#[derive(Clone, Copy)]
struct Check<'a> {
    bucket: &'a str,
    key: &'a [u8],
    primaries: &'a [String],
    others: &'a [String],
}

/// Bytes an entry adds to a `segmentEntries` answer beyond its key and state (list and
/// pointer overhead, rounded up).
const ENTRY_OVERHEAD_BYTES: usize = 32;

/// What of `entries` one `segmentEntries` answer carries: all of them when they fit in
/// `budget` bytes (half the message limit), else as many as fit, starting at `turn` (mod
/// the count) and wrapping. A partition whose differing segments hold more than one message
/// (large values) is then repaired over several rounds: the leaves still differ after a
/// partial answer, the next comparison asks again, and another `turn` starts elsewhere, so
/// every entry is carried in time. An entry too large for the budget alone is still sent
/// alone (a state always fits one message: `Limits::state_bytes_max`).
pub(super) fn fit_answer(entries: Vec<Entry>, budget: usize, turn: usize) -> Vec<Entry> {
    let size = |(key, state): &Entry| key.len() + state.len() + ENTRY_OVERHEAD_BYTES;
    if entries.iter().map(size).sum::<usize>() <= budget {
        return entries;
    }
    let count = entries.len();
    let start = turn % count;
    let mut rotated = entries;
    rotated.rotate_left(start);
    let mut used = 0;
    let mut out = Vec::new();
    for entry in rotated {
        let bytes = size(&entry);
        if !out.is_empty() && used + bytes > budget {
            break;
        }
        used += bytes;
        out.push(entry);
    }
    out
}

/// What anti-entropy did on this node since it started, for `status`.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// Partitions compared with another replica.
    pub exchanges: u64,
    /// Keys repaired here from the other replica.
    pub keys_received: u64,
    /// Keys repaired at the other replica.
    pub keys_sent: u64,
    /// When the last comparison ran.
    pub last_exchange: Option<tokio::time::Instant>,
    /// Deletes whose storage this node reclaimed.
    pub tombstones_collected: u64,
}

impl Progress {
    fn exchanged(&mut self) {
        self.exchanges += 1;
        self.last_exchange = Some(tokio::time::Instant::now());
    }

    fn repaired(&mut self, received: usize, sent: usize) {
        self.keys_received += received as u64;
        self.keys_sent += sent as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An answer over the budget carries what fits, from a rotating start, so that every
    /// entry is carried by some answer; one that fits is whole.
    #[test]
    fn answers_fit_the_message_and_rotate() {
        let entries: Vec<Entry> =
            (0..10u8).map(|i| (vec![i], vec![i; 100 - ENTRY_OVERHEAD_BYTES - 1])).collect();
        assert_eq!(fit_answer(entries.clone(), 1_000, 3), entries);
        let mut carried = std::collections::BTreeSet::new();
        for turn in 0..10 {
            let answer = fit_answer(entries.clone(), 350, turn);
            assert_eq!(answer.len(), 3, "three of 100 bytes fit in 350");
            carried.extend(answer.into_iter().map(|(key, _)| key));
        }
        assert_eq!(carried.len(), 10, "every entry carried by some answer");
        let huge = vec![(vec![1], vec![0; 5_000])];
        assert_eq!(fit_answer(huge.clone(), 350, 0), huge, "one entry always goes");
    }

    fn entries(pairs: &[(&str, &str)]) -> Leaves {
        leaves(pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
    }

    /// Leaves do not depend on scan order; one changed state changes exactly its segment.
    #[test]
    fn leaves_find_the_changed_segment() {
        let a = entries(&[("k1", "v1"), ("k2", "v2"), ("k3", "v3")]);
        let b = entries(&[("k3", "v3"), ("k1", "v1"), ("k2", "v2")]);
        assert_eq!(a, b);
        let c = entries(&[("k1", "v1"), ("k2", "changed"), ("k3", "v3")]);
        assert_eq!(differing(&a, &c), vec![segment_of(b"k2")]);
        let d = entries(&[("k1", "v1"), ("k3", "v3")]);
        assert_eq!(differing(&a, &d), vec![segment_of(b"k2")], "a missing key shows too");
        assert!(differing(&a, &a).is_empty());
    }

    /// Malformed leaves (wrong length) compare as different everywhere.
    #[test]
    fn wrong_length_differs_everywhere() {
        assert_eq!(differing(&[0; SEGMENTS], &[0; 3]).len(), SEGMENTS);
    }

    /// A round compares at most `per_round` partitions this node is a primary of, each with
    /// another primary that is up, and goes on from where the last round stopped.
    #[test]
    fn exchanges_walk_the_partitions_this_node_replicates() {
        let mut ring = crate::ring::Ownership::single("a", 4);
        (ring.epoch, ring.owners) =
            (1, ["a", "b", "c", "d"].iter().map(|o| o.to_string()).collect());
        let buckets = [("k".to_string(), 2)];
        let input = ExchangeInput { ring: &ring, buckets: &buckets, me: "b", round: 0 };
        let up = |_: &str| Health::Up;
        // b is a primary of partition 0 (a, b) and 1 (b, c).
        let (first, cursor) = plan_exchanges(&input, 0, 1, up);
        assert_eq!(first, vec![Exchange { bucket: "k".into(), partition: 0, peer: "a".into() }]);
        let (second, cursor) = plan_exchanges(&input, cursor, 1, up);
        assert_eq!(second, vec![Exchange { bucket: "k".into(), partition: 1, peer: "c".into() }]);
        let (third, _) = plan_exchanges(&input, cursor, 1, up);
        assert_eq!(third[0].partition, 0, "wraps around");
        let c_down = |id: &str| if id == "c" { Health::Down } else { Health::Up };
        let (only_a, _) = plan_exchanges(&input, 0, 4, c_down);
        assert_eq!(only_a.len(), 1, "{only_a:?}");
    }
}
