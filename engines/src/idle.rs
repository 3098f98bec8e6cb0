//! # Idle: background threads that sleep until there is work
//!
//! Every durable engine has background threads that work on a timer: the memory log's flusher
//! (every `flush_interval_ms`), the `log` engine's merge thread and the `buffer` engine's
//! snapshot thread (every `background_interval_ms`), the `btree` committer (every
//! `flush_interval_ms`). A node holds several engines per bucket set (one per bucket, plus the
//! hint store), most of them idle most of the time, and a timer that fires for an idle engine
//! still wakes a thread: dozens of such threads on a two-core machine preempt the request
//! threads thousands of times a second for nothing. So a thread whose engine saw no write since
//! its last round of work waits *without* a timeout, and the first write after that wakes it
//! once; from there it runs on its timer as before (a write is still synced within the flush
//! interval, and many writes still share one sync).
//!
//! ## The handshake
//! The sleeper and the writers share one [`Idle`] flag and a counter of work (the log's append
//! count, the btree's "changed" mark) that writers bump with a sequentially consistent write
//! before they look at the flag. The sleeper, holding the mutex its condition variable waits
//! with:
//!
//! 1. [`Idle::announce`]s that it is going to sleep,
//! 2. reads the work counter again (sequentially consistent), and sleeps only if it did not move.
//!
//! A writer, after bumping the counter, calls [`Idle::take`]; when it returns true (only for the
//! first writer after the announcement), it locks the sleeper's mutex and notifies. Either the
//! sleeper's second read sees the writer's bump, or the writer's read of the flag sees the
//! announcement (both are sequentially consistent, so they cannot both miss); and the sleeper
//! holds its mutex from the announcement until its wait releases it, so a notification sent
//! under that mutex cannot fall between the check and the wait. Writers that find the flag down
//! pay one atomic load.
//!
//! Shutdown, `sync` callers and other urgent wake-ups notify the same condition variable under
//! the same mutex, as they did with the timer.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Whether a background thread is asleep until the next write. See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Idle {
    asleep: AtomicBool,
}

impl Idle {
    /// The sleeper, holding its mutex, is about to sleep until woken: it must read the work
    /// counter again after this and before it waits.
    pub(crate) fn announce(&self) {
        self.asleep.store(true, Ordering::SeqCst);
    }

    /// The sleeper is awake (woken, or it found work after announcing): writers need not wake it.
    pub(crate) fn clear(&self) {
        self.asleep.store(false, Ordering::Relaxed);
    }

    /// A writer, after making its work visible with a sequentially consistent write: true when
    /// the sleeper announced it sleeps and this caller is the one to wake it (lock its mutex,
    /// notify its condition variable). Cheap when the sleeper is awake: one load.
    pub(crate) fn take(&self) -> bool {
        self.asleep.load(Ordering::SeqCst) && self.asleep.swap(false, Ordering::SeqCst)
    }
}

/// What an engine's background thread (the `log` merge, the `buffer` snapshot, the `btree`
/// committer) shares with the engine: its stop flag, and its two ways of sleeping: for a while
/// (its timer), or until the engine's work counter moves (idle, no timer). The memory log's
/// flusher has more to wait for (`sync` callers) and uses [`Idle`] under its own lock.
#[derive(Debug, Default)]
pub(crate) struct Background {
    stop: Mutex<bool>,
    wake: Condvar,
    idle: Idle,
    /// Times the thread woke from an idle sleep, since it started.
    idle_wakes: AtomicU64,
}

impl Background {
    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        // A bool cannot be left half-written by a panic.
        self.stop.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the engine is stopping.
    pub(crate) fn stopped(&self) -> bool {
        *self.lock()
    }

    /// Tell the thread to stop, waking it from either sleep at once.
    pub(crate) fn stop(&self) {
        *self.lock() = true;
        self.wake.notify_all();
    }

    /// Sleep up to `duration`; true if the engine is stopping.
    pub(crate) fn sleep(&self, duration: Duration) -> bool {
        let stop = self.lock();
        let (stop, _) = self
            .wake
            .wait_timeout_while(stop, duration, |stop| !*stop)
            .unwrap_or_else(|p| p.into_inner());
        *stop
    }

    /// Sleep, without a timer, until `moved` says the work counter moved (it must read it
    /// sequentially consistent: see the module documentation) or the engine stops; true if
    /// stopping. Returns at once if it moved already.
    pub(crate) fn sleep_until(&self, moved: impl Fn() -> bool) -> bool {
        let mut stop = self.lock();
        loop {
            if *stop {
                return true;
            }
            self.idle.announce();
            if moved() {
                self.idle.clear();
                return false;
            }
            stop = self.wake.wait(stop).unwrap_or_else(|p| p.into_inner());
            self.idle.clear();
            self.idle_wakes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A writer, after moving the work counter (sequentially consistent): wake the thread if
    /// it sleeps until then. One atomic load when it does not.
    pub(crate) fn wake_if_idle(&self) {
        if self.idle.take() {
            let _stop = self.lock();
            self.wake.notify_all();
        }
    }

    /// Times the thread woke from an idle sleep since it started.
    pub(crate) fn idle_wakes(&self) -> u64 {
        self.idle_wakes.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;
    use std::sync::{Arc, Condvar, Mutex};

    /// No wake-up is lost: a sleeper that waits without a timeout after the handshake sees
    /// every bump of the work counter, whatever the interleaving (many rounds of one writer
    /// against one sleeper that sleeps whenever it has caught up).
    #[test]
    fn no_lost_wake_ups() {
        struct Shared {
            idle: Idle,
            work: AtomicU64,
            lock: Mutex<()>,
            wake: Condvar,
        }
        let shared = Arc::new(Shared {
            idle: Idle::default(),
            work: AtomicU64::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        const ROUNDS: u64 = 20_000;
        let sleeper = {
            let shared = Arc::clone(&shared);
            std::thread::spawn(move || {
                let mut seen = 0;
                let mut guard = shared.lock.lock().unwrap();
                while seen < ROUNDS {
                    shared.idle.announce();
                    let now = shared.work.load(Ordering::SeqCst);
                    if now == seen {
                        guard = shared.wake.wait(guard).unwrap();
                    }
                    shared.idle.clear();
                    seen = shared.work.load(Ordering::SeqCst);
                }
                seen
            })
        };
        for _ in 0..ROUNDS {
            shared.work.fetch_add(1, Ordering::SeqCst);
            if shared.idle.take() {
                let _guard = shared.lock.lock().unwrap();
                shared.wake.notify_one();
            }
            if shared.work.load(Ordering::Relaxed) % 64 == 0 {
                std::thread::yield_now();
            }
        }
        // A lost wake-up would leave the sleeper waiting forever here.
        assert_eq!(sleeper.join().unwrap(), ROUNDS);
    }
}
