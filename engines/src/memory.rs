//! # The memory engine: an ordered map behind a reader-writer lock
//!
//! Every entry lives in one `BTreeMap<Vec<u8>, Vec<u8>>`. Reads take the lock shared, writes
//! take it exclusively; a write holds it only for the map insert, so readers never wait on I/O
//! (there is none). The map is ordered so that a partition (a key prefix) is a range scan.
//!
//! This is the in-memory half of the `buffer` engine, which adds a write-ahead log and
//! snapshots on the memory log. On its own it is volatile: [`StorageEngine::is_durable`] is
//! false, `sync` returns at once, and a restart starts empty. Use it for tests, benchmarks of
//! the rest of the node, and data that may be lost.
//!
//! Memory accounting counts key and value bytes plus a fixed per-entry estimate of the map's
//! own overhead ([`ENTRY_OVERHEAD_BYTES`]); it is an estimate, not an allocator reading.

use std::collections::BTreeMap;
use std::ops::{Bound, ControlFlow};
use std::sync::RwLock;

use crate::{check_sizes, EngineError, EngineKind, EngineStats, StorageEngine};

/// Estimated bytes a `BTreeMap` entry costs beyond its key and value: two `Vec` headers (48
/// bytes) and the node slot share (about 16 bytes).
pub const ENTRY_OVERHEAD_BYTES: u64 = 64;

/// The volatile in-memory engine. See the module documentation.
#[derive(Debug, Default)]
pub struct MemoryEngine {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
    live_bytes: u64,
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

    /// Visit up to `max` entries in key order, starting just after `after` (at the first key
    /// when `None`), holding the read lock for this chunk only. Returns the last key visited,
    /// or `None` when the map has no more entries. The `buffer` engine walks the map this way
    /// to write a snapshot without stalling writers for the whole walk.
    pub(crate) fn visit_chunk(
        &self,
        after: Option<&[u8]>,
        max: usize,
        visit: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Option<Vec<u8>> {
        let inner = self.read();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut last = None;
        for (key, value) in inner.map.range::<[u8], _>((start, Bound::Unbounded)).take(max) {
            visit(key, value);
            last = Some(key);
        }
        last.cloned()
    }
}

impl StorageEngine for MemoryEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Memory
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.read().map.get(key).cloned())
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        check_sizes(key, value)?;
        let mut inner = self.write();
        let added = (key.len() + value.len()) as u64;
        if let Some(old) = inner.map.insert(key.to_vec(), value.to_vec()) {
            inner.live_bytes -= (key.len() + old.len()) as u64;
        }
        inner.live_bytes += added;
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<(), EngineError> {
        let mut inner = self.write();
        if let Some(old) = inner.map.remove(key) {
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
        let range = inner.map.range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded));
        for (key, value) in range {
            if !key.starts_with(prefix) {
                break;
            }
            if visit(key, value).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), EngineError> {
        // Nothing is ever durable here; see `is_durable`.
        Ok(())
    }

    fn is_durable(&self) -> bool {
        false
    }

    fn stats(&self) -> EngineStats {
        let inner = self.read();
        let entries = inner.map.len() as u64;
        EngineStats {
            entries,
            live_bytes: inner.live_bytes,
            dead_bytes: 0,
            memory_bytes: inner.live_bytes + entries * ENTRY_OVERHEAD_BYTES,
        }
    }
}
