//! # Group commit: the flusher thread
//!
//! One flusher thread per log writes the pending bytes and makes them durable with one
//! `fdatasync` for every waiting writer at once (after one for each segment a roll sealed
//! since the last flush: a roll leaves that to the flusher, see `active.rs`): on its own every `flush_interval_ms`, and at
//! once when a [`MemLog::sync`] caller waits. Each caller sleeps until the append count it
//! needs is durable and is woken on its own. The thread makes its two calls as plain system
//! calls or through an io_uring of its own ([`crate::FlusherBackend`]).
//!
//! A failed write or `fdatasync` is never retried into success: the failure is recorded and
//! every later `sync` reports it until the log is reopened.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::active::{failed_error, write_pending_with};
use super::segment::Segment;
use super::{lock, sys, EngineError, MemLog, Shared};

#[derive(Debug, Default)]
pub(super) struct SyncState {
    /// Appends counted so far that are durable.
    pub(super) synced: u64,
    /// The highest append count a waiting `sync` caller asked for.
    wanted: u64,
    pub(super) shutdown: bool,
    /// Set when a write or fdatasync failed; every later `sync` fails with it.
    failed: Option<(io::ErrorKind, String)>,
    /// `sync` callers asleep until the append count they wait for is durable. Each is woken
    /// on its own (`unpark`), so a group commit does not wake them all onto one mutex.
    waiters: Vec<(u64, std::thread::Thread)>,
}

impl MemLog {
    /// Make every append that returned before this call durable. Concurrent callers share one
    /// `fdatasync` (group commit).
    pub fn sync(&self) -> Result<(), EngineError> {
        let target = self.shared.appended.load(Ordering::Acquire);
        if self.shared.synced.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        {
            let mut state = lock(&self.shared.sync);
            if state.failed.is_none() && state.synced < target {
                if state.wanted < target {
                    state.wanted = target;
                    self.shared.flush_wanted.notify_one();
                }
                state.waiters.push((target, std::thread::current()));
            }
        }
        loop {
            if self.shared.synced.load(Ordering::Acquire) >= target {
                return Ok(());
            }
            if self.shared.sync_failed.load(Ordering::Acquire) {
                let state = lock(&self.shared.sync);
                let (kind, message) = state.failed.clone().expect("failure recorded");
                return Err(EngineError::Io {
                    during: "group commit",
                    source: io::Error::new(kind, message),
                });
            }
            // Woken by the flusher once `synced` covers `target` or the log failed; a
            // spurious wake-up just goes round again.
            std::thread::park();
        }
    }
}

impl MemLog {
    /// Flushes that made appends durable with an `fdatasync` since open (group commits:
    /// one serves every `sync` caller waiting for it).
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }
}

impl Shared {
    /// Write what is pending and fdatasync it, through `ring` when the flusher has one:
    /// first every segment a roll sealed since the last flush (their last bytes and seal
    /// records), oldest first, then the active segment. Returns the append count now durable.
    pub(super) fn flush(
        &self,
        synced: u64,
        mut ring: Option<&mut sys::Uring>,
    ) -> Result<u64, EngineError> {
        let (sealed, target, segment, written) = {
            let mut active = lock(&self.active);
            if active.failed {
                return Err(failed_error());
            }
            write_pending_with(&mut active, ring.as_deref_mut())?;
            let sealed: Vec<(Arc<Segment>, u64)> =
                active.sealed.iter().map(|s| (Arc::clone(&s.segment), s.end)).collect();
            let target = self.appended.load(Ordering::Acquire);
            (sealed, target, Arc::clone(&active.segment), active.end)
        };
        // Oldest first: a later segment's records are durable only once every segment before
        // it is, seal included (recovery reads nothing past a segment that lacks its seal).
        for (old, end) in &sealed {
            sync_data(&mut ring, old)?;
            self.durable_to(old.id, *end);
        }
        if !sealed.is_empty() {
            // Rolls only ever add at the end: the first ones are those just synced.
            lock(&self.active).sealed.drain(..sealed.len());
        }
        if target > synced {
            sync_data(&mut ring, &segment)?;
            self.syncs.fetch_add(1, Ordering::Relaxed);
            self.durable_to(segment.id, written);
        }
        Ok(target)
    }

    pub(super) fn run_flusher(&self, mut ring: Option<sys::Uring>) {
        let interval = Duration::from_millis(self.options.flush_interval_ms.max(1));
        let mut state = lock(&self.sync);
        loop {
            if state.shutdown {
                return;
            }
            if state.wanted <= state.synced {
                let (guard, _) = self
                    .flush_wanted
                    .wait_timeout(state, interval)
                    .unwrap_or_else(|p| p.into_inner());
                state = guard;
                if state.shutdown {
                    return;
                }
            }
            if state.failed.is_some() {
                // Nothing more can be made durable; wake waiters so they see the failure.
                for (_, waiter) in state.waiters.drain(..) {
                    waiter.unpark();
                }
                state = self.flush_wanted.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let synced = state.synced;
            drop(state);
            let result = self.flush(synced, ring.as_mut());
            state = lock(&self.sync);
            match result {
                Ok(target) => {
                    state.synced = state.synced.max(target);
                    self.synced.store(state.synced, Ordering::Release);
                }
                Err(e) => {
                    let source = std::error::Error::source(&e)
                        .and_then(|s| s.downcast_ref::<io::Error>())
                        .map_or(io::ErrorKind::Other, io::Error::kind);
                    state.failed = Some((source, e.to_string()));
                    self.sync_failed.store(true, Ordering::Release);
                }
            }
            let synced = state.synced;
            let failed = state.failed.is_some();
            let mut ready = Vec::new();
            state.waiters.retain(|(target, waiter)| {
                let done = failed || *target <= synced;
                if done {
                    ready.push(waiter.clone());
                }
                !done
            });
            drop(state);
            for waiter in ready {
                waiter.unpark();
            }
            state = lock(&self.sync);
        }
    }
}

/// `fdatasync` of `segment`'s file, through `ring` when there is one.
fn sync_data(ring: &mut Option<&mut sys::Uring>, segment: &Segment) -> Result<(), EngineError> {
    match ring {
        Some(ring) => ring.sync_data(&segment.file),
        None => segment.file.sync_data(),
    }
    .map_err(EngineError::io("fdatasync segment"))
}
