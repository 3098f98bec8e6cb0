//! # Hybrid logical clock
//!
//! A timestamp is a wall-clock millisecond reading plus a logical counter that breaks ties
//! inside one millisecond and carries causality when a node's wall clock is behind what it has
//! seen (Kulkarni et al., "Logical Physical Clocks", 2014). On one node, readings never go
//! backwards even when the wall clock does; after a node observes a timestamp, its next
//! reading is greater than it.
//!
//! The wall clock is injected ([`HybridClock::with_wall_clock`]) so tests and simulations run
//! with chosen time. A remote timestamp further ahead of our wall clock than
//! [`OBSERVE_AHEAD_MS_MAX`] is refused by [`HybridClock::observe`] rather than dragging this
//! node's clock into the future.
//!
//! ## At the end of time
//! Nothing here wraps. [`Timestamp::successor`] is `None` for the greatest timestamp
//! `(u64::MAX, u32::MAX)`, and a clock whose next reading would pass it answers
//! [`ResolveError::Overflow`] (from [`HybridClock::now`]) or [`ClockError::Overflow`] (from
//! [`HybridClock::observe`]) and keeps its last reading. A wall clock cannot get there; a
//! forged timestamp can, which is why the node also refuses replicated states stamped too far
//! ahead of its clock (`Resolver::max_timestamp_ms`). A wrapped reading would be *smaller*
//! than every earlier one, and a last-write-wins write stamped with it would be acknowledged
//! and then lose to the very state it was meant to replace.
//!
//! Byte layout of an encoded timestamp (big-endian, so byte order = time order):
//!
//! | offset | size | field       |
//! |--------|------|-------------|
//! | 0      | 8    | physical_ms |
//! | 8      | 4    | logical     |

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::ResolveError;

/// Encoded size of a [`Timestamp`].
pub const TIMESTAMP_BYTES: usize = 8 + 4;

/// How far ahead of the local wall clock an observed timestamp may be, in milliseconds.
/// Beyond this `observe` refuses it: the sender's clock is broken, and following it would make
/// every later local write look older than it is.
pub const OBSERVE_AHEAD_MS_MAX: u64 = 60_000;

/// A hybrid logical clock reading. Ordered by `physical_ms`, then `logical`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    /// Milliseconds since the Unix epoch, as the clock last knew it.
    pub physical_ms: u64,
    /// Tie-breaking counter within one `physical_ms`.
    pub logical: u32,
}

impl Timestamp {
    /// The greatest timestamp: it has no successor.
    pub const MAX: Self = Self { physical_ms: u64::MAX, logical: u32::MAX };

    /// The smallest timestamp greater than `self`, or `None` for [`Timestamp::MAX`] (never a
    /// wrap to a smaller one).
    pub fn successor(self) -> Option<Self> {
        match self.logical.checked_add(1) {
            Some(logical) => Some(Self { physical_ms: self.physical_ms, logical }),
            None => Some(Self { physical_ms: self.physical_ms.checked_add(1)?, logical: 0 }),
        }
    }

    /// The 12-byte big-endian encoding.
    pub fn to_bytes(self) -> [u8; TIMESTAMP_BYTES] {
        let mut out = [0u8; TIMESTAMP_BYTES];
        out[..8].copy_from_slice(&self.physical_ms.to_be_bytes());
        out[8..].copy_from_slice(&self.logical.to_be_bytes());
        out
    }

    /// Decode the 12-byte encoding.
    pub fn from_bytes(bytes: [u8; TIMESTAMP_BYTES]) -> Self {
        let mut physical = [0u8; 8];
        physical.copy_from_slice(&bytes[..8]);
        let mut logical = [0u8; 4];
        logical.copy_from_slice(&bytes[8..]);
        Self { physical_ms: u64::from_be_bytes(physical), logical: u32::from_be_bytes(logical) }
    }
}

/// Why [`HybridClock::observe`] refused a remote timestamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClockError {
    /// The timestamp is too far in the future; see [`OBSERVE_AHEAD_MS_MAX`].
    #[error("timestamp {remote_ms} ms is {ahead_ms} ms ahead of the local clock")]
    Ahead {
        /// The refused reading's physical part.
        remote_ms: u64,
        /// How far ahead of the local wall clock it was.
        ahead_ms: u64,
    },
    /// A reading past it would pass the greatest timestamp.
    #[error("the hybrid logical clock is at its maximum")]
    Overflow,
}

fn overflow() -> ResolveError {
    ResolveError::Overflow(
        "the hybrid logical clock is at its maximum timestamp: a forged timestamp reached it"
            .into(),
    )
}

type WallClock = Box<dyn Fn() -> u64 + Send + Sync>;

/// A node's hybrid logical clock. Thread-safe; readings are strictly increasing.
pub struct HybridClock {
    last: Mutex<Timestamp>,
    wall_ms: WallClock,
}

impl std::fmt::Debug for HybridClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HybridClock").field("last", &self.last()).finish()
    }
}

impl Default for HybridClock {
    fn default() -> Self {
        Self::new()
    }
}

impl HybridClock {
    /// A clock reading the system wall clock.
    pub fn new() -> Self {
        Self::with_wall_clock(system_wall_ms)
    }

    /// A clock reading `wall_ms` for the physical time (tests, simulations).
    pub fn with_wall_clock(wall_ms: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        Self { last: Mutex::new(Timestamp::default()), wall_ms: Box::new(wall_ms) }
    }

    /// The last reading handed out (or observed).
    pub fn last(&self) -> Timestamp {
        *self.lock()
    }

    /// The wall clock's reading in milliseconds since the Unix epoch (not a timestamp: it
    /// may go backwards). The node compares replicated timestamps with it.
    pub fn wall_ms(&self) -> u64 {
        (self.wall_ms)()
    }

    /// A new reading, greater than every earlier reading and observed timestamp; or
    /// [`ResolveError::Overflow`] when the last one is [`Timestamp::MAX`] (the clock then
    /// keeps it).
    pub fn now(&self) -> Result<Timestamp, ResolveError> {
        let wall = (self.wall_ms)();
        let mut last = self.lock();
        *last = if wall > last.physical_ms {
            Timestamp { physical_ms: wall, logical: 0 }
        } else {
            last.successor().ok_or_else(overflow)?
        };
        Ok(*last)
    }

    /// Take in a timestamp seen in a message so that the next reading is greater than it.
    /// Returns the new reading. Refuses timestamps too far ahead of the wall clock, and the
    /// greatest timestamp (nothing can follow it).
    pub fn observe(&self, remote: Timestamp) -> Result<Timestamp, ClockError> {
        let wall = (self.wall_ms)();
        if remote.physical_ms > wall.saturating_add(OBSERVE_AHEAD_MS_MAX) {
            return Err(ClockError::Ahead {
                remote_ms: remote.physical_ms,
                ahead_ms: remote.physical_ms - wall,
            });
        }
        let mut last = self.lock();
        let newest = (*last).max(remote);
        *last = if wall > newest.physical_ms {
            Timestamp { physical_ms: wall, logical: 0 }
        } else {
            newest.successor().ok_or(ClockError::Overflow)?
        };
        Ok(*last)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Timestamp> {
        // The guarded value is a plain `Copy` timestamp, always whole: poison is harmless.
        self.last.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn system_wall_ms() -> u64 {
    // A clock set before 1970 reads as 0; the logical counter then carries ordering.
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    fn manual_clock(start: u64) -> (Arc<AtomicU64>, HybridClock) {
        let wall = Arc::new(AtomicU64::new(start));
        let reader = Arc::clone(&wall);
        (wall, HybridClock::with_wall_clock(move || reader.load(Ordering::SeqCst)))
    }

    /// Readings follow the wall clock when it moves forward.
    #[test]
    fn follows_wall_clock() {
        let (wall, clock) = manual_clock(1_000);
        assert_eq!(clock.now(), Ok(Timestamp { physical_ms: 1_000, logical: 0 }));
        wall.store(1_005, Ordering::SeqCst);
        assert_eq!(clock.now(), Ok(Timestamp { physical_ms: 1_005, logical: 0 }));
    }

    /// Within one millisecond, and when the wall clock goes backwards, readings still increase
    /// through the logical counter.
    #[test]
    fn never_goes_backwards() {
        let (wall, clock) = manual_clock(2_000);
        let a = clock.now().unwrap();
        let b = clock.now().unwrap();
        wall.store(1_500, Ordering::SeqCst);
        let c = clock.now().unwrap();
        assert!(a < b && b < c, "{a:?} {b:?} {c:?}");
        assert_eq!(c, Timestamp { physical_ms: 2_000, logical: 2 });
    }

    /// After observing a remote timestamp ahead of the wall clock, the next reading is past it.
    #[test]
    fn observe_moves_past_remote() {
        let (_wall, clock) = manual_clock(10_000);
        let remote = Timestamp { physical_ms: 10_050, logical: 7 };
        let seen = clock.observe(remote).unwrap();
        assert!(seen > remote);
        assert!(clock.now().unwrap() > seen);
    }

    /// A remote timestamp further ahead than the bound is refused and changes nothing.
    #[test]
    fn observe_refuses_far_future() {
        let (_wall, clock) = manual_clock(10_000);
        let before = clock.now().unwrap();
        let remote = Timestamp { physical_ms: 10_000 + OBSERVE_AHEAD_MS_MAX + 1, logical: 0 };
        let err = clock.observe(remote).unwrap_err();
        assert_eq!(
            err,
            ClockError::Ahead { remote_ms: remote.physical_ms, ahead_ms: OBSERVE_AHEAD_MS_MAX + 1 }
        );
        assert_eq!(clock.last(), before);
    }

    /// The logical counter overflowing carries into the physical part; the greatest
    /// timestamp has no successor (no wrap to zero).
    #[test]
    fn successor_carries_and_stops_at_the_end() {
        let t = Timestamp { physical_ms: 5, logical: u32::MAX };
        assert_eq!(t.successor(), Some(Timestamp { physical_ms: 6, logical: 0 }));
        let last_ms = Timestamp { physical_ms: u64::MAX, logical: 7 };
        assert_eq!(last_ms.successor(), Some(Timestamp { physical_ms: u64::MAX, logical: 8 }));
        assert_eq!(Timestamp::MAX.successor(), None);
    }

    /// A clock whose next reading would pass the greatest timestamp gives a typed error and
    /// keeps its last reading; observing the greatest timestamp is refused the same way.
    /// Method: a wall clock stuck at u64::MAX ms, read until the logical counter runs out.
    #[test]
    fn the_clock_never_wraps() {
        let (wall, clock) = manual_clock(u64::MAX);
        {
            *clock.lock() = Timestamp { physical_ms: u64::MAX, logical: u32::MAX - 1 };
        }
        assert_eq!(clock.now(), Ok(Timestamp::MAX));
        assert!(matches!(clock.now(), Err(ResolveError::Overflow(_))));
        assert_eq!(clock.last(), Timestamp::MAX, "the last reading stays");
        wall.store(1_000, Ordering::SeqCst);
        assert!(matches!(clock.now(), Err(ResolveError::Overflow(_))));
        let (_wall, fresh) = manual_clock(u64::MAX);
        assert_eq!(fresh.observe(Timestamp::MAX), Err(ClockError::Overflow));
    }

    /// The encoding round-trips and preserves order as byte order.
    #[test]
    fn encoding_orders_like_time() {
        let a = Timestamp { physical_ms: 1, logical: 300 };
        let b = Timestamp { physical_ms: 2, logical: 0 };
        assert_eq!(Timestamp::from_bytes(a.to_bytes()), a);
        assert!(a.to_bytes() < b.to_bytes());
    }

    /// Readings from many threads are all distinct.
    #[test]
    fn concurrent_readings_are_unique() {
        let (_wall, clock) = manual_clock(42);
        let clock = Arc::new(clock);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let clock = Arc::clone(&clock);
                std::thread::spawn(move || {
                    (0..1000).map(|_| clock.now().unwrap()).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<_> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 4000);
    }
}
