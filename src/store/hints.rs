//! # Hints: writes held for a replica that was down
//!
//! With sloppy quorum, a write whose primary replica is down goes to a fallback node with a
//! **hint** naming the intended owner. The fallback keeps the state here, in a `log` engine of
//! its own (`data_dir/hints/`), and delivers it when the owner is seen up again (hinted
//! handoff); a hint is deleted only after the owner acknowledged it, and only if it did not
//! change meanwhile.
//!
//! Key layout (one engine for all hints; owner first so one owner's hints are one prefix):
//!
//! | size | field                 |
//! |------|-----------------------|
//! | 1    | owner id length O     |
//! | O    | owner id              |
//! | 1    | bucket name length B  |
//! | B    | bucket name           |
//! | ..   | key                   |
//!
//! The value is the resolver state. A second hint for the same owner and key is merged into
//! the first, so a burst of writes to one key while its owner is down costs one hint.
//!
//! ## Bounds
//! At most `hint_count_max` hints and `hint_bytes_max` bytes of hints. A hinted write that
//! would pass either bound is refused (the coordinator counts it as a failed replica, so the
//! write may still meet W elsewhere) and counted in `hints_refused`, shown by `status`. Hints
//! are durable once the hint engine's flusher synced them (or at once for `dw` writes).
//!
//! ## Memory
//! Hints live in the engine, on disk: the node holds none in memory beyond the `log` engine's
//! keydir (one entry per hint) and the per-owner counts here. Delivery reads one batch at a
//! time ([`Hints::pending`]): at most `hint_replay_per_round` hints and about
//! [`HINT_BATCH_BYTES_MAX`] of states (always at least one hint), so a round that delivers
//! hints of 1 MiB does not read hundreds of them into memory at once.
//!
//! Only the RPC thread touches a `Hints` (it is `!Sync`), so its read-merge-write of a hint is
//! atomic in the same way the store's is.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use cartwheel_engines::{EngineKind, EngineOptions, StorageEngine};
use cartwheel_resolvers::Resolver;

use crate::error::Error;

/// Default bound on the number of hints a node holds.
pub const HINT_COUNT_MAX_DEFAULT: u64 = 1_000_000;

/// Default bound on the bytes of hints a node holds: 1 GiB.
pub const HINT_BYTES_MAX_DEFAULT: u64 = 1 << 30;

/// Bytes of hint states one delivery batch reads into memory ([`Hints::pending`]): it stops
/// at the first hint that reaches this total (always taking at least one), and the rest wait
/// for the next round.
pub const HINT_BATCH_BYTES_MAX: usize = 4 << 20;

/// One hint to deliver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    /// The intended owner.
    pub owner: String,
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: Vec<u8>,
    /// The state to deliver.
    pub state: Vec<u8>,
}

/// The hint store of one node.
#[derive(Debug)]
pub struct Hints {
    engine: Arc<dyn StorageEngine>,
    count_max: u64,
    bytes_max: u64,
    refused: Cell<u64>,
    /// States kept as hints since start (new hints and merges into one held).
    queued: Cell<u64>,
    /// Hints delivered and dropped since start.
    delivered: Cell<u64>,
    /// Hints held per owner, kept in step with the engine (counted once at open), so the
    /// read path can skip owners without hints without scanning.
    counts: RefCell<BTreeMap<String, u64>>,
}

fn hint_key(owner: &str, bucket: &str, key: &[u8]) -> Vec<u8> {
    debug_assert!(
        owner.len() <= 255 && bucket.len() <= 255,
        "ids and bucket names are at most 255 bytes"
    );
    let mut out = Vec::with_capacity(2 + owner.len() + bucket.len() + key.len());
    out.push(owner.len() as u8);
    out.extend_from_slice(owner.as_bytes());
    out.push(bucket.len() as u8);
    out.extend_from_slice(bucket.as_bytes());
    out.extend_from_slice(key);
    out
}

fn owner_prefix(owner: &str) -> Vec<u8> {
    let mut out = vec![owner.len() as u8];
    out.extend_from_slice(owner.as_bytes());
    out
}

/// Hints held per owner in `engine`.
fn count(
    engine: &dyn StorageEngine,
) -> Result<BTreeMap<String, u64>, cartwheel_engines::EngineError> {
    let mut counts = BTreeMap::new();
    engine.scan_prefix(&[], &mut |stored, _| {
        if let Some((owner, _, _)) = parse_hint_key(stored) {
            *counts.entry(owner).or_insert(0) += 1;
        }
        ControlFlow::Continue(())
    })?;
    Ok(counts)
}

fn parse_hint_key(stored: &[u8]) -> Option<(String, String, Vec<u8>)> {
    let (&owner_len, rest) = stored.split_first()?;
    let owner = rest.get(..owner_len as usize)?;
    let rest = &rest[owner_len as usize..];
    let (&bucket_len, rest) = rest.split_first()?;
    let bucket = rest.get(..bucket_len as usize)?;
    let key = &rest[bucket_len as usize..];
    Some((
        String::from_utf8(owner.to_vec()).ok()?,
        String::from_utf8(bucket.to_vec()).ok()?,
        key.to_vec(),
    ))
}

impl Hints {
    /// Open the hint store in `dir`.
    pub fn open(
        dir: &Path,
        count_max: u64,
        bytes_max: u64,
    ) -> Result<Self, cartwheel_engines::EngineError> {
        // Reopened in place after a failed write or sync, like the buckets' engines.
        let engine = cartwheel_engines::recovering::Recovering::open(
            EngineKind::Log,
            dir.to_path_buf(),
            EngineOptions::default(),
        )?;
        Self::with_engine(Arc::new(engine), count_max, bytes_max)
    }

    /// The hint store kept in `engine` (the seeded simulation's disk).
    pub fn with_engine(
        engine: Arc<dyn StorageEngine>,
        count_max: u64,
        bytes_max: u64,
    ) -> Result<Self, cartwheel_engines::EngineError> {
        let counts = count(engine.as_ref())?;
        Ok(Self {
            engine,
            count_max,
            bytes_max,
            refused: Cell::new(0),
            queued: Cell::new(0),
            delivered: Cell::new(0),
            counts: RefCell::new(counts),
        })
    }

    /// Count the hints again from the engine: after it was reopened from its files (which may
    /// have dropped hints no sync covered).
    pub fn recount(&self) -> Result<(), cartwheel_engines::EngineError> {
        *self.counts.borrow_mut() = count(self.engine.as_ref())?;
        Ok(())
    }

    /// Keep `state` for `owner`, merged with any hint already held for the same key.
    pub fn add(
        &self,
        owner: &str,
        bucket: &str,
        key: &[u8],
        state: &[u8],
        resolver: &dyn Resolver,
    ) -> Result<(), Error> {
        let stored_key = hint_key(owner, bucket, key);
        let merged = match self.engine.get(&stored_key)? {
            Some(current) => resolver.merge_into(&current, state)?,
            None => {
                let stats = self.engine.stats();
                let bytes = (stored_key.len() + state.len()) as u64;
                if stats.entries >= self.count_max || stats.live_bytes + bytes > self.bytes_max {
                    self.refused.set(self.refused.get() + 1);
                    return Err(Error::Overloaded(format!(
                        "hint store full ({} hints, {} bytes): not keeping a hint for {owner}",
                        stats.entries, stats.live_bytes
                    )));
                }
                *self.counts.borrow_mut().entry(owner.to_string()).or_insert(0) += 1;
                state.to_vec()
            }
        };
        self.engine.put(&stored_key, &merged)?;
        self.queued.set(self.queued.get() + 1);
        Ok(())
    }

    /// The hint held for `owner` and key, if any.
    pub fn get(&self, owner: &str, bucket: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.engine.get(&hint_key(owner, bucket, key))?)
    }

    /// Up to `max` hints for `owner`, and no more once their states reach
    /// [`HINT_BATCH_BYTES_MAX`] bytes (at least one hint when there is any).
    pub fn pending(&self, owner: &str, max: usize) -> Result<Vec<Hint>, Error> {
        let mut out = Vec::new();
        let mut bytes = 0usize;
        self.engine.scan_prefix(&owner_prefix(owner), &mut |stored, state| {
            if let Some((owner, bucket, key)) = parse_hint_key(stored) {
                bytes += state.len();
                out.push(Hint { owner, bucket, key, state: state.to_vec() });
            }
            if out.len() >= max || bytes >= HINT_BATCH_BYTES_MAX {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })?;
        Ok(out)
    }

    /// Delete a delivered hint, unless it changed since it was read (then the newer state
    /// is delivered next round).
    pub fn delivered(&self, hint: &Hint) -> Result<bool, Error> {
        let stored_key = hint_key(&hint.owner, &hint.bucket, &hint.key);
        if self.engine.get(&stored_key)?.as_deref() == Some(hint.state.as_slice()) {
            self.engine.delete(&stored_key)?;
            self.delivered.set(self.delivered.get() + 1);
            let mut counts = self.counts.borrow_mut();
            if let Some(count) = counts.get_mut(&hint.owner) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(&hint.owner);
                }
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Hints held, per owner (owners without hints are absent).
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.counts.borrow().clone()
    }

    /// Hinted writes refused at the bounds since start.
    pub fn refused(&self) -> u64 {
        self.refused.get()
    }

    /// States kept as hints since start: new hints and merges into one held.
    pub fn queued_count(&self) -> u64 {
        self.queued.get()
    }

    /// Hints delivered to their owner (and dropped here) since start.
    pub fn delivered_count(&self) -> u64 {
        self.delivered.get()
    }

    /// The engine, for syncing.
    pub fn engine(&self) -> &Arc<dyn StorageEngine> {
        &self.engine
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cartwheel_resolvers::lww::Lww;
    use cartwheel_resolvers::{Stamp, Timestamp, Write};

    fn state(value: &str, ms: u64) -> Vec<u8> {
        let stamp =
            Stamp { actor: b"n1".to_vec(), time: Timestamp { physical_ms: ms, logical: 0 } };
        Lww.apply(None, &Write::Put { value: value.into(), context: vec![] }, &stamp).unwrap()
    }

    /// Hints are kept per owner, merged per key, listed and deleted once delivered.
    #[test]
    fn add_merge_deliver() {
        let dir = tempfile::tempdir().unwrap();
        let hints = Hints::open(dir.path(), 10, 1 << 20).unwrap();
        hints.add("n2", "b", b"k", &state("old", 1), &Lww).unwrap();
        hints.add("n2", "b", b"k", &state("new", 2), &Lww).unwrap();
        hints.add("n3", "b", b"k", &state("other", 1), &Lww).unwrap();
        let pending = hints.pending("n2", 10).unwrap();
        assert_eq!(pending.len(), 1, "two hints for one key merge into one");
        assert_eq!(pending[0].state, state("new", 2));
        assert_eq!(hints.counts().get("n3"), Some(&1));

        // A hint that changed after it was read is not deleted.
        let stale = Hint { state: state("old", 1), ..pending[0].clone() };
        assert!(!hints.delivered(&stale).unwrap());
        assert!(hints.delivered(&pending[0]).unwrap());
        assert!(hints.pending("n2", 10).unwrap().is_empty());
        assert_eq!(hints.counts().get("n2"), None, "an owner without hints is dropped");
    }

    /// At the count bound a new hint is refused and counted; merges into existing hints
    /// still work.
    #[test]
    fn bound_refuses_and_counts() {
        let dir = tempfile::tempdir().unwrap();
        let hints = Hints::open(dir.path(), 2, 1 << 20).unwrap();
        hints.add("n2", "b", b"a", &state("1", 1), &Lww).unwrap();
        hints.add("n2", "b", b"b", &state("1", 1), &Lww).unwrap();
        let err = hints.add("n2", "b", b"c", &state("1", 1), &Lww).unwrap_err();
        assert!(matches!(err, Error::Overloaded(_)), "{err:?}");
        assert_eq!(hints.refused(), 1);
        hints.add("n2", "b", b"a", &state("2", 2), &Lww).unwrap();
    }

    /// A delivery batch stops once its states reach the byte bound, and always holds at
    /// least one hint, however large.
    #[test]
    fn a_batch_is_bounded_in_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let hints = Hints::open(dir.path(), 100, 1 << 30).unwrap();
        let large = "x".repeat(HINT_BATCH_BYTES_MAX / 3);
        for key in [b"a", b"b", b"c", b"d", b"e"] {
            hints.add("n2", "b", key, &state(&large, 1), &Lww).unwrap();
        }
        assert_eq!(hints.pending("n2", 100).unwrap().len(), 3, "the third reaches the bound");
        assert_eq!(hints.pending("n2", 2).unwrap().len(), 2);
        let huge = "y".repeat(HINT_BATCH_BYTES_MAX + 1);
        hints.add("n3", "b", b"k", &state(&huge, 1), &Lww).unwrap();
        hints.add("n3", "b", b"l", &state("small", 1), &Lww).unwrap();
        assert_eq!(hints.pending("n3", 100).unwrap().len(), 1, "one hint over the bound alone");
    }

    /// Hints survive a restart.
    #[test]
    fn hints_are_durable() {
        let dir = tempfile::tempdir().unwrap();
        {
            let hints = Hints::open(dir.path(), 10, 1 << 20).unwrap();
            hints.add("n2", "b", b"k", &state("v", 1), &Lww).unwrap();
            hints.engine().sync().unwrap();
        }
        let hints = Hints::open(dir.path(), 10, 1 << 20).unwrap();
        assert_eq!(hints.get("n2", "b", b"k").unwrap(), Some(state("v", 1)));
        assert_eq!(hints.counts().get("n2"), Some(&1), "counts are rebuilt at open");
    }
}
