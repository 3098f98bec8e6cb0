//! # The memory engine: a hash map and an ordered key set behind a reader-writer lock
//!
//! Every value lives in a hash map (hashbrown, xxh3 with a per-engine random seed, so that
//! chosen keys cannot flood one bucket); every key is also in an ordered set, so that a
//! partition (a key prefix) is a range scan. Both share each key's one allocation (an
//! `Arc<[u8]>`). A get is one hash lookup: an ordered map alone costs a pointer chase to a key
//! on the heap at every comparison on the way down, several times slower at a million keys.
//! Reads take the lock shared, writes take it exclusively; a write holds it only for the two
//! inserts, so readers never wait on I/O (there is none).
//!
//! This is the in-memory half of the `buffer` engine, which adds a write-ahead log and
//! snapshots on the memory log. On its own it is volatile: [`StorageEngine::is_durable`] is
//! false, `sync` returns at once, and a restart starts empty. Use it for tests, benchmarks of
//! the rest of the node, and data that may be lost.
//!
//! Memory accounting counts key and value bytes plus a fixed per-entry estimate of the map's
//! own overhead ([`ENTRY_OVERHEAD_BYTES`]); it is an estimate, not an allocator reading.

use std::collections::BTreeSet;
use std::hash::{BuildHasher, RandomState};
use std::ops::{Bound, ControlFlow};
use std::sync::{Arc, RwLock};

use xxhash_rust::xxh3::Xxh3Builder;

use crate::{check_sizes, EngineError, EngineKind, EngineStats, StorageEngine};

/// Estimated bytes an entry costs beyond its key and value: the key's `Arc` header (16), its
/// hash map slot (a key and a value pointer, 32, at about 3/4 load) and its ordered-set slot
/// (16, at about 2/3 node fill), and allocator rounding of the two allocations.
pub const ENTRY_OVERHEAD_BYTES: u64 = 112;

/// The volatile in-memory engine. See the module documentation.
#[derive(Debug, Default)]
pub struct MemoryEngine {
    inner: RwLock<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Point lookups.
    values: hashbrown::HashMap<Arc<[u8]>, Box<[u8]>, Xxh3Builder>,
    /// Key order, for prefix scans; exactly the keys of `values`.
    keys: BTreeSet<Arc<[u8]>>,
    live_bytes: u64,
}

impl Default for Inner {
    fn default() -> Self {
        let seed = RandomState::new().hash_one(0u64);
        Inner {
            values: hashbrown::HashMap::with_hasher(Xxh3Builder::new().with_seed(seed)),
            keys: BTreeSet::new(),
            live_bytes: 0,
        }
    }
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the map half-updated (each update is one
        // `insert` or `remove`), so a poisoned lock is safe to keep using.
        self.inner.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether `key` has a value.
    pub(crate) fn contains(&self, key: &[u8]) -> bool {
        self.read().values.contains_key(key)
    }

    /// How many pieces `key`'s value has in the chain encoding (1 for a value with no
    /// part), or `None` when it has no value.
    pub(crate) fn pieces(&self, key: &[u8]) -> Option<u32> {
        self.read().values.get(key).map(|value| crate::chain::parts(value) + 1)
    }

    /// Visit entries in key order, starting just after `after` (at the first key when
    /// `None`), holding the read lock for this chunk only: up to and including the first entry
    /// for which `visit` breaks. Returns the last key visited, or `None` when the map has no
    /// more entries. The `buffer` engine walks the map this way to write a snapshot without
    /// stalling writers for the whole walk.
    #[allow(clippy::type_complexity)] // the visitor type of `StorageEngine::scan_prefix`
    pub(crate) fn visit_chunk(
        &self,
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Option<Vec<u8>> {
        let inner = self.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut last = None;
        for key in inner.keys.range::<[u8], _>((start, Bound::Unbounded)) {
            last = Some(key);
            if visit(key, &inner.values[&**key]).is_break() {
                break;
            }
        }
        last.map(|key| key.to_vec())
    }
}

impl StorageEngine for MemoryEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Memory
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.read().values.get(key).map(|value| value.to_vec()))
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        check_sizes(key, value)?;
        let value: Box<[u8]> = value.into();
        let mut inner = self.write();
        let inner = &mut *inner;
        let added = (key.len() + value.len()) as u64;
        if let Some(old) = inner.values.get_mut(key) {
            let old = std::mem::replace(old, value);
            inner.live_bytes -= (key.len() + old.len()) as u64;
        } else {
            let key: Arc<[u8]> = key.into();
            inner.keys.insert(Arc::clone(&key));
            inner.values.insert(key, value);
        }
        inner.live_bytes += added;
        Ok(())
    }

    fn append(&self, key: &[u8], part: &[u8]) -> Result<Option<u32>, EngineError> {
        check_sizes(key, part)?;
        let mut inner = self.write();
        let inner = &mut *inner;
        let Some(value) = inner.values.get_mut(key) else { return Ok(None) };
        let chained: Box<[u8]> = crate::chain::push(value, part).into();
        check_sizes(key, &chained)?;
        inner.live_bytes += (chained.len() - value.len()) as u64;
        let parts = crate::chain::parts(&chained);
        *value = chained;
        Ok(Some(parts))
    }

    fn delete(&self, key: &[u8]) -> Result<(), EngineError> {
        let mut inner = self.write();
        if let Some((key, old)) = inner.values.remove_entry(key) {
            inner.keys.remove(&key);
            inner.live_bytes -= (key.len() + old.len()) as u64;
        }
        Ok(())
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), EngineError> {
        let inner = self.read();
        let range = inner.keys.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded));
        for key in range {
            if !key.starts_with(prefix) {
                break;
            }
            if visit(key, &inner.values[&**key]).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), EngineError> {
        // Nothing is ever durable here; see `is_durable`.
        Ok(())
    }

    fn sync_then(&self, done: crate::SyncDone) -> Result<(), crate::SyncDone> {
        done(Ok(()));
        Ok(())
    }

    fn is_durable(&self) -> bool {
        false
    }

    fn stats(&self) -> EngineStats {
        let inner = self.read();
        let entries = inner.values.len() as u64;
        EngineStats {
            entries,
            live_bytes: inner.live_bytes,
            dead_bytes: 0,
            memory_bytes: inner.live_bytes + entries * ENTRY_OVERHEAD_BYTES,
            merges: 0,
            syncs: 0,
        }
    }
}
