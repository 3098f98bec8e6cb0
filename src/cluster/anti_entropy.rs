//! # Anti-entropy: finding what replicas disagree on without sending everything
//!
//! Read repair fixes keys that are read; hinted handoff fixes writes a fallback held. Keys
//! that are never read after a replica missed them (a hint refused at its bound, a node
//! killed before its flusher ran, a fallback that died) are found by comparing hash trees.
//!
//! Per (bucket, partition), a replica builds a two-level tree: each key falls in one of
//! [`SEGMENTS`] segments by the first byte of the MD5 of the key, and a segment's leaf hash is
//! the wrapping sum of a 64-bit hash of each (key, state) pair in it. The sum is order
//! independent, so a leaf is computed in one pass over the partition, in whatever order the
//! engine scans it. Two replicas exchange leaves (2 KiB), and for each segment whose leaves
//! differ they exchange that segment's entries, merge them with the resolver, and store the
//! merge on both sides. Equal states are equal bytes (resolver encodings are canonical), so
//! converged replicas have equal leaves.
//!
//! A sum of hashes can be fooled by crafted data (two changes that cancel); for detecting
//! divergence between replicas that is an accepted risk, and the next write to either key
//! changes the sum again.
//!
//! Trees are rebuilt for each exchange (one partition scan, reading only that partition, on
//! the blocking pool: [`crate::store::Store::fold_partition`]), not kept up to date on every
//! write: the cost is paid in the background, one partition per round, off the RPC thread,
//! and nothing is added to the write path.
//!
//! Each round compares `anti_entropy_partitions_per_round` (bucket, partition) pairs this
//! node is a primary of, each with one other primary that is up, and merges the segments
//! that differ on both sides. A peer's entry is merged like any replicated state
//! ([`crate::store::Store::merge`]): one stamped too far ahead of this node's clock is
//! refused and skipped, and the rest of the segment is still repaired.

use md5::{Digest, Md5};

use super::coordinator::Target;
use super::membership::Health;
use super::Cluster;
use crate::error::Error;
use crate::store::Entry;

/// Segments per partition tree.
pub const SEGMENTS: usize = 256;

/// A partition's tree leaves.
pub type Leaves = Vec<u64>;

/// The segment a key falls in.
pub fn segment_of(key: &[u8]) -> u16 {
    u16::from(Md5::digest(key)[0])
}

fn entry_hash(key: &[u8], state: &[u8]) -> u64 {
    let mut md5 = Md5::new();
    md5.update((key.len() as u32).to_be_bytes());
    md5.update(key);
    md5.update(state);
    let digest = md5.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The leaves of a partition given its (key, state) pairs in any order.
pub fn leaves<'a>(entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Leaves {
    let mut leaves = vec![0u64; SEGMENTS];
    for (key, state) in entries {
        add_to_leaves(&mut leaves, key, state);
    }
    leaves
}

/// Add one (key, state) pair to a partition's leaves.
fn add_to_leaves(leaves: &mut Leaves, key: &[u8], state: &[u8]) {
    let segment = segment_of(key) as usize;
    leaves[segment] = leaves[segment].wrapping_add(entry_hash(key, state));
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
    /// The anti-entropy leaves of one partition of a bucket on this node, hashed as the
    /// partition is scanned, off the RPC thread ([`crate::store::Store::fold_partition`]).
    pub async fn tree_leaves(&self, bucket: &str, partition: u16) -> Result<Leaves, Error> {
        let empty = vec![0u64; SEGMENTS];
        self.store.fold_partition(bucket, partition, empty, add_to_leaves).await
    }

    /// This node's (key, state) pairs in some segments of a partition, picked as the
    /// partition is scanned, off the RPC thread.
    pub async fn segment_entries(
        &self,
        bucket: &str,
        partition: u16,
        segments: &[u16],
    ) -> Result<Vec<Entry>, Error> {
        let mut wanted = [false; SEGMENTS];
        for &segment in segments {
            if let Some(slot) = wanted.get_mut(segment as usize) {
                *slot = true;
            }
        }
        let pick = move |out: &mut Vec<Entry>, key: &[u8], state: &[u8]| {
            if wanted[segment_of(key) as usize] {
                out.push((key.to_vec(), state.to_vec()));
            }
        };
        let entries = self.store.fold_partition(bucket, partition, Vec::new(), pick).await?;
        let budget = self.store.limits().message_bytes_max() / 2;
        Ok(fit_answer(entries, budget, self.now_ms() as usize))
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
        if segments.is_empty() {
            return Ok(());
        }
        let remote = self.segment_entries_of(peer, bucket, partition, &segments).await?;
        for (key, state) in &remote {
            match self.store.merge(bucket, key, state) {
                // The ring may have moved the partition away while the exchange ran.
                Ok(_) => self.note_if_stray(bucket, key),
                // Refused (stamped too far ahead: counted and logged by the store, or a bad
                // key): the peer's other entries are still merged, and this node's own
                // state of the key goes back to it below.
                Err(Error::BadRequest(_) | Error::KeyTooLarge(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let target = Target { id: peer.to_string(), hint_for: None };
        let mut repaired = 0usize;
        for (key, state) in self.segment_entries(bucket, partition, &segments).await? {
            if remote.get(&key) != Some(&state) {
                self.replicate(&target, bucket, &key, &state, false).await;
                repaired += 1;
            }
        }
        tracing::info!(%peer, %bucket, partition, segments = segments.len(), received = remote.len(), sent = repaired, "anti-entropy repaired a partition");
        Ok(())
    }
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
