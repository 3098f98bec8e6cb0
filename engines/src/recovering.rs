//! # An engine that recovers by itself after a failed write or sync
//!
//! After a failed write or fsync an engine is *failed* (see "After a failed write or sync" on
//! [`StorageEngine`]): it refuses writes and syncs, and only reopening its files, which runs
//! crash recovery, brings it back. [`Recovering`] wraps an engine with what it takes to reopen
//! it (kind, directory, options) and does that when asked ([`Recovering::try_recover`]): the
//! node asks every round, so a bucket whose disk filled up turns read-only with a typed error
//! and takes writes again by itself once space is back.
//!
//! ## The contract
//! - Every call goes to the current engine. While it is failed, reads are served and writes
//!   and syncs fail (nothing after the failure is acknowledged as durable).
//! - `try_recover` does nothing unless the engine is failed. Then it drops the failed engine
//!   (which releases its directory lock) and opens the directory again. It does so only when
//!   nothing else holds the engine (a scan or a sync running on another thread): otherwise it
//!   waits for a later call. While it reopens, calls fail with [`EngineError::Io`] ("the engine
//!   is being reopened"); if the reopen fails (the disk is still full), the engine stays
//!   closed, every call fails the same way, and a later `try_recover` tries again.
//! - What recovery keeps is the crash contract's: every write a completed `sync` covered, and
//!   a prefix of the rest. Writes that were acknowledged without a sync (dw = 0) may be gone,
//!   exactly as after a crash; the caller must treat a recovery like a restart of this engine
//!   (the node renews its actor epochs: src/actors.rs).
//! - [`Recovering::recoveries`] counts the reopens that succeeded.

use std::fmt;
use std::io;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::{open, EngineError, EngineKind, EngineOptions, EngineStats, StorageEngine};

/// An engine reopened from its files after it failed. See the module documentation.
pub struct Recovering {
    kind: EngineKind,
    dir: PathBuf,
    options: EngineOptions,
    /// The open engine; `None` while it is reopened or after a reopen failed.
    current: RwLock<Option<Arc<dyn StorageEngine>>>,
    recoveries: AtomicU64,
}

impl fmt::Debug for Recovering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Recovering").field("kind", &self.kind).field("dir", &self.dir).finish()
    }
}

/// What [`Recovering::try_recover`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recovery {
    /// The engine had not failed: nothing to do.
    Healthy,
    /// The engine failed, but something else holds it (a scan, a sync): try again later.
    Busy,
    /// The engine was reopened from its files and takes writes again.
    Reopened,
}

impl Recovering {
    /// Open an engine of `kind` on `dir` (see [`crate::open`]), ready to be reopened.
    pub fn open(
        kind: EngineKind,
        dir: PathBuf,
        options: EngineOptions,
    ) -> Result<Self, EngineError> {
        let engine = open(kind, &dir, &options)?;
        Ok(Self {
            kind,
            dir,
            options,
            current: RwLock::new(Some(engine)),
            recoveries: AtomicU64::new(0),
        })
    }

    /// The engine to run one call on, or the error of a closed engine.
    fn engine(&self) -> Result<Arc<dyn StorageEngine>, EngineError> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current.clone().ok_or_else(|| EngineError::Io {
            during: "using an engine that is being reopened after a failure",
            source: io::Error::other(format!(
                "the engine in {} failed and is not reopened yet",
                self.dir.display()
            )),
        })
    }

    /// Reopen the engine from its files if it failed (see the module documentation).
    /// An error is the reopen's: the engine stays closed and a later call tries again.
    fn reopen(&self) -> Result<Recovery, EngineError> {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        match current.as_ref() {
            Some(engine) if !engine.failed() => return Ok(Recovery::Healthy),
            // Only this handle holds it: dropping it releases the directory.
            Some(engine) if Arc::strong_count(engine) > 1 => return Ok(Recovery::Busy),
            _ => {}
        }
        *current = None;
        let engine = open(self.kind, &self.dir, &self.options)?;
        *current = Some(engine);
        self.recoveries.fetch_add(1, Ordering::Relaxed);
        Ok(Recovery::Reopened)
    }

    /// Reopens that succeeded.
    pub fn recoveries(&self) -> u64 {
        self.recoveries.load(Ordering::Relaxed)
    }
}

impl StorageEngine for Recovering {
    fn kind(&self) -> EngineKind {
        self.kind
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.engine()?.get(key)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        self.engine()?.put(key, value)
    }

    fn append(&self, key: &[u8], part: &[u8]) -> Result<Option<u32>, EngineError> {
        self.engine()?.append(key, part)
    }

    fn delete(&self, key: &[u8]) -> Result<(), EngineError> {
        self.engine()?.delete(key)
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), EngineError> {
        self.engine()?.scan_prefix(prefix, visit)
    }

    fn sync(&self) -> Result<(), EngineError> {
        self.engine()?.sync()
    }

    fn sync_then(&self, done: crate::SyncDone) -> Result<(), crate::SyncDone> {
        match self.engine() {
            Ok(engine) => engine.sync_then(done),
            Err(e) => {
                done(Err(e));
                Ok(())
            }
        }
    }

    fn is_durable(&self) -> bool {
        self.kind != EngineKind::Memory
    }

    fn stats(&self) -> EngineStats {
        self.engine().map(|engine| engine.stats()).unwrap_or_default()
    }

    fn failed(&self) -> bool {
        self.engine().map_or(true, |engine| engine.failed())
    }

    fn try_recover(&self) -> Result<Recovery, EngineError> {
        self.reopen()
    }
}
