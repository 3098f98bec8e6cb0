//! # Hash trees kept up to date as writes land
//!
//! Anti-entropy ([`crate::cluster::anti_entropy`]) compares replicas partition by partition.
//! Per (bucket, partition) a node keeps a two-level tree in memory: each key falls in one of
//! [`SEGMENTS`] segments by the first byte of the MD5 of the key; a segment remembers each of
//! its keys with the 64-bit hash of its (key, state) pair ([`entry_hash`]), and its **leaf**
//! is the wrapping sum of those hashes. The sum is order independent and can be updated in
//! place: a write subtracts the key's old hash and adds its new one, so a leaf never needs a
//! scan once the tree is built.
//!
//! ## What it costs, and what it saves
//! - Every store write, merge and delete of a key whose partition has a built tree costs one
//!   XXH3 of the key and state (well under 0.1 µs per KiB) and one hash-map update, on the
//!   RPC thread, with no I/O. A write to a partition whose tree is not built costs nothing.
//! - Memory: per key, the key bytes, 8 bytes of hash and the ordered map's overhead (about
//!   50 bytes plus the key). Bitcask (the `log` engine) already keeps every key in memory;
//!   this is a second copy, the price of never scanning values to compare.
//! - An exchange of two equal partitions reads no values: the leaves are in memory. A
//!   differing segment's keys and hashes are in memory too, so an exchange reads the values
//!   of the keys whose hashes differ on the side that compares, and of the differing
//!   segments' keys on the side that answers `segmentEntries` (about keys / (Q × 256) per
//!   segment: 61 for a million keys in 64 partitions).
//!
//! ## Building, once
//! A tree is built the first time it is asked for (by this node's anti-entropy round or by
//! a peer's `treeLeaves`): one scan of the partition on the blocking pool, one build at a
//! time per node ([`crate::store::Store::tree_leaves`]), paced at
//! [`TREE_BUILD_KEYS_PER_SECOND`] so that a build leaves the disk and the pool to requests.
//! Writes go on while the scan runs and may or may not be seen by it (the engines' iteration
//! contract), so a building tree records the keys written meanwhile ([`Slot::Building`]),
//! and when the scan ends each of them is re-read on the RPC thread, where no write
//! interleaves: the built tree is exact. More than [`TOUCHED_KEYS_MAX`] keys written during
//! one build abandons it (it is tried again later) rather than hold an unbounded list.
//! After an engine was reopened from its files (crash recovery may have dropped unsynced
//! writes) every tree of its bucket is dropped and built again when next asked for.
//!
//! ## Keys marked dirty
//! A CRDT update reaches a replica as a small delta, which the store appends to the key's
//! stored value without reading it ([`crate::store`], "Deltas appended"), so the key's new
//! state, and its hash, are not at hand. The tree marks the key dirty instead
//! ([`Trees::note_dirty`]); before its leaves are given out, the store reads and folds the
//! dirty keys' states off the RPC thread and sets their hashes ([`Trees::settle`]), unless a
//! key was written again meanwhile (each mark has a number). A key written while its hash is
//! being settled keeps its mark for the next time: leaves may lag the latest writes by that
//! much, which costs an exchange at most a few extra states, as a write racing with an
//! exchange always could.
//!
//! ## Tombstones
//! A tree also knows which of its keys hold a **tombstone**: a state that reads as not found
//! (a `siblings` delete's clock, an `lww` delete), whose only job is to make older writes
//! lose. Those are the candidates that tombstone collection checks
//! ([`crate::cluster::anti_entropy`], "Deletes that end"), found without a scan.
//!
//! A sum of hashes can be fooled by crafted data (two changes that cancel); for detecting
//! divergence between replicas that is an accepted risk, and the next write to either key
//! changes the sum again.

use std::collections::{BTreeMap, BTreeSet};

use cartwheel_resolvers::{Resolver, ResolverKind};
use md5::{Digest, Md5};
use xxhash_rust::xxh3::Xxh3;

/// Segments per partition tree.
pub const SEGMENTS: usize = 256;

/// Keys a tree build reads per second, at most (on the blocking pool). A million keys in 64
/// partitions build in about 4 s of background time, one partition at a time.
pub const TREE_BUILD_KEYS_PER_SECOND: u64 = 250_000;

/// Keys written to a partition while its tree is being built that the build remembers to
/// re-read; past it the build is abandoned and tried again later.
pub const TOUCHED_KEYS_MAX: usize = 100_000;

/// A partition's tree leaves.
pub type Leaves = Vec<u64>;

/// Keys with their entry hashes ([`entry_hash`]).
pub type KeyHashes = Vec<(Vec<u8>, u64)>;

/// The segment a key falls in.
pub fn segment_of(key: &[u8]) -> u16 {
    u16::from(Md5::digest(key)[0])
}

/// The 64-bit hash of a (key, state) pair: XXH3-64 of the key's length (u32, big-endian),
/// the key and the state.
///
/// Not MD5 (as before): every write of a built partition hashes its whole new state on the
/// RPC thread, and for a 40 KB cart MD5 was 15 % of the node's CPU (docs/BENCHMARKS.md,
/// "Where a 1 000-item cart's update goes"). Nodes compare these hashes, so all nodes of a
/// cluster must use the same one: while nodes of a version that used MD5 run beside newer
/// ones, every anti-entropy round between the two finds every segment different and
/// exchanges its keys' states (merging equal states changes nothing, but it is traffic).
pub fn entry_hash(key: &[u8], state: &[u8]) -> u64 {
    let mut hasher = Xxh3::new();
    hasher.update(&(key.len() as u32).to_be_bytes());
    hasher.update(key);
    hasher.update(state);
    hasher.digest()
}

/// Whether `state` of `resolver` reads as not found (a tombstone).
pub(super) fn is_tombstone(resolver: &dyn Resolver, state: &[u8]) -> bool {
    match resolver.kind() {
        // Decodes without copying the values.
        ResolverKind::Siblings => {
            cartwheel_resolvers::siblings::is_tombstone(state).unwrap_or(false)
        }
        ResolverKind::Lww => cartwheel_resolvers::lww::is_tombstone(state).unwrap_or(false),
        ResolverKind::Cart => cartwheel_resolvers::cart::is_tombstone(state).unwrap_or(false),
        ResolverKind::Orset => cartwheel_resolvers::orset::is_tombstone(state).unwrap_or(false),
        // A counter always reads as a number.
        ResolverKind::Pncounter => false,
    }
}

/// What a tree keeps of `key` holding `state`.
pub(super) fn summary(resolver: &dyn Resolver, key: &[u8], state: &[u8]) -> Summary {
    Summary { hash: entry_hash(key, state), tombstone: is_tombstone(resolver, state) }
}

/// What a tree holds of one key: its entry hash and whether its state is a tombstone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Summary {
    /// [`entry_hash`] of the key and its state.
    pub hash: u64,
    /// Whether the state reads as not found.
    pub tombstone: bool,
}

/// One partition's tree: per segment, each key's hash; the leaves; the tombstones; the keys
/// whose hash is out of date.
#[derive(Debug, Clone)]
pub struct PartitionTree {
    leaves: Leaves,
    segments: Vec<BTreeMap<Box<[u8]>, u64>>,
    tombstones: BTreeSet<Box<[u8]>>,
    /// Keys written by appending a part ("Keys marked dirty"), each with the mark's number.
    dirty: BTreeMap<Box<[u8]>, u64>,
}

impl Default for PartitionTree {
    fn default() -> Self {
        Self {
            leaves: vec![0; SEGMENTS],
            segments: vec![BTreeMap::new(); SEGMENTS],
            tombstones: BTreeSet::new(),
            dirty: BTreeMap::new(),
        }
    }
}

impl PartitionTree {
    /// Set `key`'s summary (`None`: the key has no state). The key's hash is up to date.
    pub fn set(&mut self, key: &[u8], summary: Option<Summary>) {
        if !self.dirty.is_empty() {
            self.dirty.remove(key);
        }
        let segment = segment_of(key) as usize;
        let old = match summary {
            Some(Summary { hash, tombstone }) => {
                if tombstone {
                    self.tombstones.insert(key.into());
                } else {
                    self.tombstones.remove(key);
                }
                let old = self.segments[segment].insert(key.into(), hash);
                self.leaves[segment] = self.leaves[segment].wrapping_add(hash);
                old
            }
            None => {
                self.tombstones.remove(key);
                self.segments[segment].remove(key)
            }
        };
        if let Some(old) = old {
            self.leaves[segment] = self.leaves[segment].wrapping_sub(old);
        }
    }

    /// The leaves.
    pub fn leaves(&self) -> &Leaves {
        &self.leaves
    }

    /// The keys of some segments with their hashes.
    pub fn hashes(&self, segments: &[u16]) -> KeyHashes {
        let mut out = Vec::new();
        for &segment in segments {
            if let Some(keys) = self.segments.get(segment as usize) {
                out.extend(keys.iter().map(|(key, hash)| (key.to_vec(), *hash)));
            }
        }
        out
    }

    /// A key's hash, if the tree holds it.
    pub fn hash_of(&self, key: &[u8]) -> Option<u64> {
        self.segments[segment_of(key) as usize].get(key).copied()
    }

    /// Keys in the tree.
    pub fn len(&self) -> usize {
        self.segments.iter().map(BTreeMap::len).sum()
    }

    /// Whether the tree holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The keys that hold a tombstone, in key order.
    pub fn tombstones(&self) -> impl Iterator<Item = &[u8]> + '_ {
        self.tombstones.iter().map(|key| &key[..])
    }

    /// How many keys hold a tombstone.
    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }

    /// The keys whose hash is out of date, with their marks' numbers.
    pub fn dirty(&self) -> Vec<(Vec<u8>, u64)> {
        self.dirty.iter().map(|(key, mark)| (key.to_vec(), *mark)).collect()
    }
}

/// Where one partition's tree is.
#[derive(Debug)]
pub enum Slot {
    /// A scan is building it; the keys written since the scan began, to re-read at its end
    /// (`None` once more than [`TOUCHED_KEYS_MAX`] were: the build is abandoned).
    Building(Option<BTreeSet<Vec<u8>>>),
    /// Built and kept up to date.
    Built(PartitionTree),
}

/// The trees of one bucket, by partition. A partition without a slot has no tree.
#[derive(Debug, Default)]
pub struct Trees {
    slots: BTreeMap<u16, Slot>,
    /// The number of the latest dirty mark.
    marks: u64,
}

impl Trees {
    /// A key of `partition` was written without its new state at hand (a part appended to
    /// it): its hash is out of date until [`Trees::settle`] gives it.
    pub fn note_dirty(&mut self, partition: u16, key: &[u8]) {
        match self.slots.get_mut(&partition) {
            Some(Slot::Built(tree)) => {
                self.marks += 1;
                tree.dirty.insert(key.into(), self.marks);
            }
            _ => self.touched(partition, key),
        }
    }

    /// A key of `partition` was written while its tree is being built: the build re-reads
    /// it at its end. Nothing for a partition with no tree, or a built one.
    fn touched(&mut self, partition: u16, key: &[u8]) {
        if let Some(Slot::Building(Some(touched))) = self.slots.get_mut(&partition) {
            touched.insert(key.to_vec());
            if touched.len() > TOUCHED_KEYS_MAX {
                self.slots.insert(partition, Slot::Building(None));
            }
        }
    }

    /// The summary of a key marked dirty, computed from its state as read after mark
    /// `mark`: kept unless the key was written again since (its hash then waits for the
    /// next settle, or was set by that write).
    pub fn settle(&mut self, partition: u16, key: &[u8], mark: u64, summary: Option<Summary>) {
        if let Some(Slot::Built(tree)) = self.slots.get_mut(&partition) {
            if tree.dirty.get(key) == Some(&mark) {
                tree.set(key, summary);
            }
        }
    }

    /// A key of `partition` was written: `summary` computes what the tree keeps of its new
    /// state (called only when the tree is built).
    pub fn note(&mut self, partition: u16, key: &[u8], summary: impl FnOnce() -> Option<Summary>) {
        match self.slots.get_mut(&partition) {
            Some(Slot::Built(tree)) => tree.set(key, summary()),
            _ => self.touched(partition, key),
        }
    }

    /// The tree of `partition`, if built.
    pub fn built(&self, partition: u16) -> Option<&PartitionTree> {
        match self.slots.get(&partition) {
            Some(Slot::Built(tree)) => Some(tree),
            _ => None,
        }
    }

    /// Every built tree, by partition.
    pub fn all_built(&self) -> impl Iterator<Item = (u16, &PartitionTree)> {
        self.slots.iter().filter_map(|(p, slot)| match slot {
            Slot::Built(tree) => Some((*p, tree)),
            Slot::Building(_) => None,
        })
    }

    /// Start building `partition`'s tree: true when it had no slot (it is now building).
    pub fn begin_build(&mut self, partition: u16) -> bool {
        if self.slots.contains_key(&partition) {
            return false;
        }
        self.slots.insert(partition, Slot::Building(Some(BTreeSet::new())));
        true
    }

    /// A build's scan ended with `tree`: re-read the keys written meanwhile with `reread`
    /// and keep the tree. False, and nothing kept, when the build was abandoned or the slot
    /// dropped meanwhile (an engine reopened).
    pub fn finish_build(
        &mut self,
        partition: u16,
        mut tree: PartitionTree,
        mut reread: impl FnMut(&[u8]) -> Option<Summary>,
    ) -> bool {
        match self.slots.remove(&partition) {
            Some(Slot::Building(Some(touched))) => {
                for key in touched {
                    tree.set(&key, reread(&key));
                }
                self.slots.insert(partition, Slot::Built(tree));
                true
            }
            Some(Slot::Built(tree)) => {
                debug_assert!(false, "a tree was built twice at once");
                self.slots.insert(partition, Slot::Built(tree));
                false
            }
            Some(Slot::Building(None)) | None => false,
        }
    }

    /// A build ended without a tree (its scan failed, or its caller went away).
    pub fn abandon_build(&mut self, partition: u16) {
        if matches!(self.slots.get(&partition), Some(Slot::Building(_))) {
            self.slots.remove(&partition);
        }
    }

    /// Forget every tree (the engine was reopened from its files).
    pub fn clear(&mut self) {
        self.slots.clear();
    }
}

/// Tombstones this node collected recently, per bucket: a state older than the collected
/// tombstone that reaches the store while it is remembered (a replicate or a read repair
/// that was in flight when the tombstone was collected) is recognised as superseded and
/// dropped instead of bringing the key back ([`crate::cluster::anti_entropy`], "Deletes
/// that end"). Each entry is kept until its deadline; never evicted early, so at
/// [`COLLECTED_REMEMBERED_MAX`] entries collection pauses instead.
#[derive(Debug, Default)]
pub struct Collected {
    entries: BTreeMap<Vec<u8>, (Vec<u8>, u64)>,
}

/// Collected tombstones a node remembers at once (all buckets together, per bucket in
/// practice); at the limit no more tombstones are collected until some are forgotten.
pub const COLLECTED_REMEMBERED_MAX: usize = 100_000;

impl Collected {
    /// Remember `key`'s collected `tombstone` until `until_ms`.
    pub fn remember(&mut self, key: &[u8], tombstone: &[u8], until_ms: u64) {
        self.entries.insert(key.to_vec(), (tombstone.to_vec(), until_ms));
    }

    /// The tombstone collected for `key`, if still remembered at `now_ms`.
    pub fn get(&mut self, key: &[u8], now_ms: u64) -> Option<&[u8]> {
        let expired = self.entries.get(key).is_some_and(|(_, until)| *until <= now_ms);
        if expired {
            self.entries.remove(key);
        }
        self.entries.get(key).map(|(state, _)| state.as_slice())
    }

    /// Forget the entries past their deadline; how many are left.
    pub fn prune(&mut self, now_ms: u64) -> usize {
        self.entries.retain(|_, (_, until)| *until > now_ms);
        self.entries.len()
    }

    /// Forget `key` (a state was stored for it again).
    pub fn forget(&mut self, key: &[u8]) {
        self.entries.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(key: &str, state: &str) -> Option<Summary> {
        Some(Summary { hash: entry_hash(key.as_bytes(), state.as_bytes()), tombstone: false })
    }

    fn tree(pairs: &[(&str, &str)]) -> PartitionTree {
        let mut tree = PartitionTree::default();
        for (key, state) in pairs {
            tree.set(key.as_bytes(), summary(key, state));
        }
        tree
    }

    /// Updating a tree in place gives the leaves of a tree built from scratch over the final
    /// states, in any order: overwrites subtract the old hash, deletes remove it.
    #[test]
    fn incremental_leaves_equal_a_fresh_build() {
        let mut updated = tree(&[("k1", "v1"), ("k2", "v2"), ("k3", "v3")]);
        updated.set(b"k2", summary("k2", "changed"));
        updated.set(b"k3", None);
        updated.set(b"k4", summary("k4", "v4"));
        let fresh = tree(&[("k4", "v4"), ("k2", "changed"), ("k1", "v1")]);
        assert_eq!(updated.leaves(), fresh.leaves());
        assert_eq!(updated.len(), 3);
        assert_eq!(updated.hash_of(b"k2"), Some(entry_hash(b"k2", b"changed")));
        let everything: Vec<u16> = (0..SEGMENTS as u16).collect();
        assert_eq!(updated.hashes(&everything).len(), 3);
        let mut emptied = updated.clone();
        for key in ["k1", "k2", "k4"] {
            emptied.set(key.as_bytes(), None);
        }
        assert_eq!(emptied.leaves(), &vec![0; SEGMENTS]);
        assert!(emptied.is_empty());
    }

    /// Tombstones are tracked as keys are written, and leave when overwritten or deleted.
    #[test]
    fn tombstones_are_tracked() {
        let mut tree = PartitionTree::default();
        let dead = Some(Summary { hash: 1, tombstone: true });
        tree.set(b"a", dead);
        tree.set(b"b", dead);
        assert_eq!(tree.tombstone_count(), 2);
        assert_eq!(tree.tombstones().collect::<Vec<_>>(), [&b"a"[..], &b"b"[..]]);
        tree.set(b"a", summary("a", "back"));
        tree.set(b"b", None);
        assert_eq!(tree.tombstone_count(), 0);
    }

    /// A build re-reads the keys written while it scanned, so a write the scan missed is
    /// in the built tree; too many writes abandon it; a cleared slot discards it.
    #[test]
    fn builds_take_in_writes_made_while_they_scan() {
        let mut trees = Trees::default();
        assert!(trees.begin_build(3));
        assert!(!trees.begin_build(3), "one build per partition");
        trees.note(3, b"late", || unreachable!("not built yet"));
        let scanned = tree(&[("early", "e")]);
        assert!(
            trees.finish_build(3, scanned, |key| summary("late", "l").filter(|_| key == b"late"))
        );
        let expected = tree(&[("early", "e"), ("late", "l")]);
        assert_eq!(trees.built(3).unwrap().leaves(), expected.leaves());
        trees.note(3, b"early", || None);
        assert_eq!(trees.built(3).unwrap().len(), 1);

        assert!(trees.begin_build(4));
        for i in 0..=TOUCHED_KEYS_MAX {
            trees.note(4, format!("k{i}").as_bytes(), || None);
        }
        assert!(!trees.finish_build(4, PartitionTree::default(), |_| None), "abandoned");
        assert!(trees.built(4).is_none());
        assert!(trees.begin_build(4), "tried again later");
        trees.clear();
        assert!(!trees.finish_build(4, PartitionTree::default(), |_| None), "cleared meanwhile");
    }

    /// A collected tombstone is remembered until its deadline, then forgotten.
    #[test]
    fn collected_tombstones_are_remembered_until_their_deadline() {
        let mut collected = Collected::default();
        collected.remember(b"k", b"t", 100);
        assert_eq!(collected.get(b"k", 99), Some(&b"t"[..]));
        assert_eq!(collected.prune(99), 1);
        assert_eq!(collected.get(b"k", 100), None);
        assert_eq!(collected.prune(100), 0);
    }
}
