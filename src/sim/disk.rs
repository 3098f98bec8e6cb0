//! # A simulated disk: what a crash keeps and what it loses
//!
//! A [`Disk`] outlives the node runs that use it. Each run gets an engine bound to the disk's
//! current generation ([`Disk::engine`]). A put or delete is visible at once (as in every real
//! engine) and joins the disk's unsynced tail; [`Disk::flush`] makes the tail durable, as a
//! real engine's flusher does shortly after each write with dw = 0, and `sync` does it at
//! once. [`Disk::crash`] is kill -9: the unsynced tail is lost, and the crashed run's engine
//! refuses every later call (its tasks may still be running in the simulation). [`Disk::wipe`]
//! is a disk replaced by an empty one, and [`Disk::restore`] one restored from a backup.
//!
//! Everything is ordered maps, so scans run in key order and a run is deterministic.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex};

use cartwheel_engines::{EngineError, EngineKind, EngineStats, StorageEngine};

/// What a disk holds: keys and values in order.
pub type Contents = BTreeMap<Vec<u8>, Vec<u8>>;

/// One node's disk for one engine (a bucket, or the hint store).
#[derive(Debug, Default)]
pub struct Disk {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// What survives a crash.
    durable: BTreeMap<Vec<u8>, Vec<u8>>,
    /// What the running engine sees: durable plus the unsynced tail.
    visible: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Whether anything was written since the last flush.
    dirty: bool,
    /// Bumped by every crash; engines of older generations refuse calls.
    generation: u64,
}

impl Disk {
    /// An empty disk.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// An engine for a new run on this disk.
    pub fn engine(self: &Arc<Self>) -> Arc<dyn StorageEngine> {
        let generation = self.lock().generation;
        Arc::new(DiskEngine { disk: Arc::clone(self), generation })
    }

    /// Make the unsynced tail durable.
    pub fn flush(&self) {
        let mut state = self.lock();
        if state.dirty {
            state.durable = state.visible.clone();
            state.dirty = false;
        }
    }

    /// Kill -9: lose the unsynced tail; the running engine refuses every later call.
    pub fn crash(&self) {
        let mut state = self.lock();
        state.visible = state.durable.clone();
        state.dirty = false;
        state.generation += 1;
    }

    /// The disk is replaced by an empty one (after a crash).
    pub fn wipe(&self) {
        let mut state = self.lock();
        state.durable.clear();
        state.visible.clear();
        state.dirty = false;
        state.generation += 1;
    }

    /// A copy of what is durable now (a backup).
    pub fn backup(&self) -> Contents {
        self.lock().durable.clone()
    }

    /// The node's disk is restored from `backup` (after a crash): whatever was written
    /// since is lost.
    pub fn restore(&self, backup: &Contents) {
        let mut state = self.lock();
        state.durable = backup.clone();
        state.visible = backup.clone();
        state.dirty = false;
        state.generation += 1;
    }

    /// The value the running engine sees under `key`.
    pub fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.lock().visible.get(key).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("no panic while held")
    }
}

/// An engine on a [`Disk`], for one run.
#[derive(Debug)]
struct DiskEngine {
    disk: Arc<Disk>,
    generation: u64,
}

impl DiskEngine {
    /// The disk's state, unless this engine's run has crashed.
    fn state(&self) -> Result<std::sync::MutexGuard<'_, State>, EngineError> {
        let state = self.disk.lock();
        if state.generation != self.generation {
            return Err(EngineError::Io {
                during: "a call after the node crashed",
                source: std::io::Error::other("simulated crash"),
            });
        }
        Ok(state)
    }
}

impl StorageEngine for DiskEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Log
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        Ok(self.state()?.visible.get(key).cloned())
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        let mut state = self.state()?;
        state.visible.insert(key.to_vec(), value.to_vec());
        state.dirty = true;
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<(), EngineError> {
        let mut state = self.state()?;
        state.visible.remove(key);
        state.dirty = true;
        Ok(())
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), EngineError> {
        // Visit a copy: the visitor may call back into the store.
        let entries: Vec<(Vec<u8>, Vec<u8>)> = {
            let state = self.state()?;
            let range = state.visible.range(prefix.to_vec()..);
            range
                .take_while(|(k, _)| k.starts_with(prefix))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        for (key, value) in &entries {
            if visit(key, value).is_break() {
                break;
            }
        }
        Ok(())
    }

    fn sync(&self) -> Result<(), EngineError> {
        drop(self.state()?);
        self.disk.flush();
        Ok(())
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn stats(&self) -> EngineStats {
        let state = self.disk.lock();
        EngineStats {
            entries: state.visible.len() as u64,
            live_bytes: state.visible.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum(),
            dead_bytes: 0,
            memory_bytes: 0,
            merges: 0,
            syncs: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A crash keeps what was flushed and loses the tail; the crashed run's engine refuses
    /// calls; a new run sees the durable state; a wipe loses everything.
    #[test]
    fn a_crash_loses_the_unsynced_tail() {
        let disk = Disk::new();
        let run = disk.engine();
        run.put(b"a", b"1").unwrap();
        disk.flush();
        run.put(b"b", b"2").unwrap();
        assert_eq!(run.get(b"b").unwrap(), Some(b"2".to_vec()));
        disk.crash();
        assert!(run.get(b"a").is_err());
        let next = disk.engine();
        assert_eq!(next.get(b"a").unwrap(), Some(b"1".to_vec()));
        assert_eq!(next.get(b"b").unwrap(), None);
        next.put(b"c", b"3").unwrap();
        next.sync().unwrap();
        disk.crash();
        assert_eq!(disk.engine().get(b"c").unwrap(), Some(b"3".to_vec()));
        disk.wipe();
        assert_eq!(disk.engine().stats().entries, 0);
    }
}
