//! # Group commit: the flusher thread
//!
//! One flusher thread per log writes the pending bytes and makes them durable with one `fdatasync`
//! for every waiting writer at once (after one for each segment a roll sealed since the last flush:
//! a roll leaves that to the flusher, see `active.rs`): on its own every `flush_interval_ms`, and
//! at once when a [`MemLog::sync`] caller waits. Each caller sleeps until the append count it needs
//! is durable and is woken on its own; a [`MemLog::sync_then`] caller does not sleep at all: the
//! flusher calls its answer right after the `fdatasync`, so a node waits for a durable write
//! without a thread of its own blocked in `sync`. The thread makes its two calls as plain system
//! calls or through an io_uring of its own ([`crate::FlusherBackend`]).
//!
//! ## Idle logs cost nothing
//! A flusher with nothing appended since its last flush sleeps without a timeout ([`crate::idle`]):
//! the first append after that wakes it once, and it then waits the flush interval before it
//! flushes, exactly as a busy flusher does, so group commit and the window a crash may lose are
//! unchanged. A `sync` caller, a [`MemLog::roll`] call (whose seal is synced at once) and shutdown
//! wake it too. A node has many logs (one per bucket and the hint store), most of them idle;
//! without this each would wake every `flush_interval_ms` for nothing.
//!
//! A failed write or `fdatasync` is never retried into success: the failure is recorded, and
//! every later `sync` and `append` is refused with it until the log is reopened.

use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::active::failed_error;
use super::segment::Segment;
use super::{lock, sys, EngineError, MemLog, Shared};
use crate::SyncDone;

#[derive(Debug, Default)]
pub(super) struct SyncState {
    /// Appends counted so far that are durable.
    pub(super) synced: u64,
    /// The highest append count a waiting `sync` caller asked for.
    wanted: u64,
    /// A roll sealed a segment since the last flush: flush now, so the seal is durable soon.
    pub(super) rolled: bool,
    pub(super) shutdown: bool,
    /// Set when a write or fdatasync failed; every later `sync` fails with it.
    failed: Option<(io::ErrorKind, String)>,
    /// Callers waiting until the append count they name is durable. Each is answered on its
    /// own (a thread is unparked), so a group commit does not wake them all onto one mutex.
    pub(super) waiters: Vec<(u64, Waiter)>,
}

/// Someone waiting for appends to be durable.
pub(super) enum Waiter {
    /// A [`MemLog::sync`] caller, asleep in `park`.
    Thread(std::thread::Thread),
    /// A [`MemLog::sync_then`] caller's answer, called with the outcome.
    Call(SyncDone),
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Thread(thread) => write!(f, "Thread({:?})", thread.id()),
            Self::Call(_) => f.write_str("Call"),
        }
    }
}

impl MemLog {
    /// Make every append that returned before this call durable. Concurrent callers share one
    /// `fdatasync` (group commit).
    pub fn sync(&self) -> Result<(), EngineError> {
        let target = self.shared.appended.load(Ordering::Acquire);
        if let Some(outcome) = self.shared.settled(target) {
            return outcome;
        }
        // Queued or not, the loop below sees the outcome.
        let _ = self.shared.enqueue(target, Waiter::Thread(std::thread::current()));
        loop {
            if let Some(outcome) = self.shared.settled(target) {
                return outcome;
            }
            // Woken by the flusher once `synced` covers `target` or the log failed; a
            // spurious wake-up just goes round again.
            std::thread::park();
        }
    }

    /// [`MemLog::sync`] without blocking: `done` is called with the outcome, here when it is
    /// known at once, else on the flusher thread right after the `fdatasync` that made every
    /// append before this call durable (or failed). See [`crate::StorageEngine::sync_then`].
    pub fn sync_then(&self, done: SyncDone) {
        let target = self.shared.appended.load(Ordering::Acquire);
        if let Some(outcome) = self.shared.settled(target) {
            return done(outcome);
        }
        if let Some(Waiter::Call(done)) = self.shared.enqueue(target, Waiter::Call(done)) {
            let outcome = self.shared.settled(target).expect("settled when not queued");
            done(outcome);
        }
    }
}

impl Shared {
    /// The outcome of a sync up to append count `target` if it is known without waiting:
    /// refused once the log failed (even with nothing new to sync: the log acknowledges
    /// nothing more), done once `synced` covers it.
    fn settled(&self, target: u64) -> Option<Result<(), EngineError>> {
        if self.sync_failed.load(Ordering::Acquire) {
            return Some(Err(self.sync_failure()));
        }
        (self.synced.load(Ordering::Acquire) >= target).then_some(Ok(()))
    }

    /// Queue `waiter` for the flusher to answer once appends up to `target` are durable, and
    /// ask it to flush them now. Hands `waiter` back when the outcome is already settled
    /// (looked at under the lock the flusher answers under, so no answer is missed).
    pub(super) fn enqueue(&self, target: u64, waiter: Waiter) -> Option<Waiter> {
        let mut state = lock(&self.sync);
        if state.failed.is_some() || state.synced >= target {
            return Some(waiter);
        }
        if state.wanted < target {
            state.wanted = target;
            self.flush_wanted.notify_one();
        }
        state.waiters.push((target, waiter));
        None
    }

    /// Answer every waiter left when the log closes, after its last flush (`flushed`), which
    /// covered every append counted before it and so every waiter's: no `sync_then` answer is
    /// dropped unanswered. After an earlier failure the answer is that failure, whatever the
    /// last flush did: an `fdatasync` that succeeds after one that failed proves nothing about
    /// the pages the failed one lost.
    pub(super) fn answer_at_close(&self, flushed: Result<u64, EngineError>) {
        let mut state = lock(&self.sync);
        if let Err(e) = &flushed {
            if state.failed.is_none() {
                self.record_failure(&mut state, e);
            }
        }
        let failed = state.failed.is_some();
        let waiters = std::mem::take(&mut state.waiters).into_iter().map(|(_, w)| w).collect();
        drop(state);
        self.answer(waiters, failed);
    }

    /// Answer `waiters` (taken out of the sync state, whose lock is not held): with the
    /// failure if the log `failed`, else done.
    fn answer(&self, waiters: Vec<Waiter>, failed: bool) {
        for waiter in waiters {
            match waiter {
                Waiter::Thread(thread) => thread.unpark(),
                Waiter::Call(done) => {
                    done(if failed { Err(self.sync_failure()) } else { Ok(()) });
                }
            }
        }
    }
}

impl MemLog {
    /// Flushes that made appends durable with an `fdatasync` since open (group commits:
    /// one serves every `sync` caller waiting for it).
    pub fn syncs(&self) -> u64 {
        self.shared.syncs.load(Ordering::Relaxed)
    }

    /// Records appended since open: a counter that moves with every append (read
    /// sequentially consistent, so an engine's background thread can sleep until it moves,
    /// see `crate::idle`).
    pub fn appended(&self) -> u64 {
        self.shared.appended.load(Ordering::SeqCst)
    }

    /// Times the flusher thread woke from a wait since open; it stays put while nothing is
    /// appended. For tests.
    pub fn for_testing_flusher_wakes(&self) -> u64 {
        self.shared.flusher_wakes.load(Ordering::Relaxed)
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
        let active = lock(&self.active);
        if self.write_failed.load(Ordering::Acquire) {
            return Err(failed_error());
        }
        let sealed: Vec<(Arc<Segment>, u64)> =
            active.sealed.iter().map(|s| (Arc::clone(&s.segment), s.end)).collect();
        let target = self.appended.load(Ordering::Acquire);
        let (segment, written) = (Arc::clone(&active.segment), active.end);
        // Everything appended up to `target` is in the buffers this writes.
        self.write_unlocked(active, ring.as_deref_mut())?;
        // Oldest first: a later segment's records are durable only once every segment before
        // it is, seal included (recovery reads nothing past a segment that lacks its seal).
        for (old, end) in &sealed {
            sync_data(&mut ring, old)?;
            self.durable_to(old.id, *end);
        }
        if !sealed.is_empty() {
            // Rolls only ever add at the end: the first ones are those just synced.
            let mut active = lock(&self.active);
            let done: Vec<_> = active.sealed.drain(..sealed.len()).collect();
            for old in done {
                active.recycle(old.pending);
            }
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
            if state.failed.is_some() {
                // Nothing more can be made durable; answer waiters so they see the failure.
                let waiters: Vec<Waiter> = state.waiters.drain(..).map(|(_, w)| w).collect();
                if waiters.is_empty() {
                    state = self.flush_wanted.wait(state).unwrap_or_else(|p| p.into_inner());
                } else {
                    drop(state);
                    self.answer(waiters, true);
                    state = lock(&self.sync);
                }
                continue;
            }
            if state.wanted <= state.synced && !state.rolled {
                // No one waits: with nothing appended since the last flush, sleep until
                // something happens (see the module documentation), else wait the interval.
                let idle = self.nothing_appended(state.synced);
                state = if idle {
                    self.flush_wanted.wait(state).unwrap_or_else(|p| p.into_inner())
                } else {
                    let waited = self.flush_wanted.wait_timeout(state, interval);
                    waited.map_or_else(|p| p.into_inner().0, |(guard, _)| guard)
                };
                self.flusher_idle.clear();
                self.flusher_wakes.fetch_add(1, Ordering::Relaxed);
                if idle || state.shutdown {
                    // Look again: an append starts the interval, a caller or roll flushes now.
                    continue;
                }
            }
            state.rolled = false;
            let synced = state.synced;
            drop(state);
            let result = self.flush(synced, ring.as_mut());
            state = lock(&self.sync);
            match result {
                Ok(target) => {
                    state.synced = state.synced.max(target);
                    self.synced.store(state.synced, Ordering::Release);
                }
                Err(e) => self.record_failure(&mut state, &e),
            }
            let synced = state.synced;
            let failed = state.failed.is_some();
            let (ready, waiting) = std::mem::take(&mut state.waiters)
                .into_iter()
                .partition(|(target, _)| failed || *target <= synced);
            state.waiters = waiting;
            drop(state);
            self.answer(ready.into_iter().map(|(_, waiter)| waiter).collect(), failed);
            state = lock(&self.sync);
        }
    }
}

impl Shared {
    /// Whether nothing was appended past `synced`, the append count of the last flush. When
    /// so, the flusher's idle flag is up on return (the handshake of [`crate::idle`]; called
    /// with the `sync` lock held), and the flusher may sleep until an append wakes it.
    fn nothing_appended(&self, synced: u64) -> bool {
        if self.appended.load(Ordering::Acquire) > synced {
            return false;
        }
        self.flusher_idle.announce();
        self.appended.load(Ordering::SeqCst) <= synced
    }

    /// Wake the flusher if it sleeps until the next append; called after an append counted.
    pub(super) fn wake_idle_flusher(&self) {
        if self.flusher_idle.take() {
            let _state = lock(&self.sync);
            self.flush_wanted.notify_one();
        }
    }

    /// Ask the flusher to flush now (a roll sealed a segment). Called with the active lock
    /// held (the active lock comes before the `sync` lock).
    pub(super) fn flush_soon(&self) {
        lock(&self.sync).rolled = true;
        self.flush_wanted.notify_one();
    }

    /// Record that a flush failed: every later `sync` and `append` is refused with it.
    pub(super) fn record_failure(&self, state: &mut SyncState, e: &EngineError) {
        let source = std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<io::Error>())
            .map_or(io::ErrorKind::Other, io::Error::kind);
        state.failed = Some((source, e.to_string()));
        self.sync_failed.store(true, Ordering::Release);
    }

    /// The error a `sync` or `append` gets once a flush failed.
    pub(super) fn sync_failure(&self) -> EngineError {
        let state = lock(&self.sync);
        let (kind, message) = state.failed.clone().expect("failure recorded");
        EngineError::Io { during: "group commit", source: io::Error::new(kind, message) }
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
