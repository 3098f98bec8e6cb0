//! # The byte budget: what a node holds for the requests it has in flight
//!
//! capnp-rpc has no back-pressure on ordinary calls, and the node's other bounds count
//! requests, not bytes: `limits.inflight_per_connection_max` lets 256 puts of 1 MiB in on
//! each connection, and a node took 669 MB of RSS under 1 MiB puts at full speed
//! (docs/BENCHMARKS.md, "Bounded memory"). The budget bounds the bytes: one counter per node,
//! `limits.inflight_bytes_max`, on the node's one thread (an `Rc<Cell>`, no atomics). Work
//! that takes bytes in charges them first and holds a [`Charge`], which gives them back when
//! dropped, however the work ends (answered, failed, cancelled by a stopping node).
//!
//! ## What is charged
//! | work | bytes | charged | given back |
//! |---|---|---|---|
//! | a client write (put, delete, update) | key, value, context, operations | at admission (src/node/server.rs) | when answered |
//! | its replication by the coordinator | the new state, per target other than this node | reserved before the write is applied, trued up once the state is known | when that target answered or missed its deadline, which may be after the client's answer |
//! | a write forwarded to a primary | as the client write | before it is sent | when the primary answered |
//! | any other state sent to a peer (read repair, hint delivery, handoff, anti-entropy) | key and state | before it is sent | when the peer answered |
//! | a peer's `replicate` | key and state | at admission | when stored (and synced, if asked) |
//! | the entries a peer's `segmentEntries` answers with | keys and states | after the scan | when the answer is built |
//! | the answers a coordinated read fetches | key plus [`super::coordinator::READ_ANSWER_FLOOR_BYTES`] per remote target, then each answer's real size as it arrives | before anything is asked; as answers arrive | when the read and its read repair are done |
//! | any other request (status, gossip, ...) | its key, or nothing | at admission | when answered |
//!
//! Bytes are counted once, as the data: the node holds each of them a few times over while
//! the work runs (the message it came in, the decoded copy, the new state, the message it goes
//! out in). The memory model in src/node/server.rs multiplies accordingly.
//!
//! ## At the budget
//! A charge that would take the bytes in use past the budget is refused at once with
//! `overloaded`, before the work has done anything: the client or peer is told to back off,
//! and nothing was stored. A charge of zero bytes is never refused, so gossip (the
//! heartbeat) always gets through.
//!
//! The replication of a write is charged in two steps so that the refusal stays clean. Before
//! the write is applied, the coordinator reserves what the write itself weighs once per
//! remote target; a refusal there is `overloaded` with nothing done. Once the new state is
//! known, each target's send takes its share of the reservation ([`Charge::split`]), and any
//! excess (a state larger than the write: a cart that grew, siblings) is charged on its own.
//! If that excess is refused, that target is not sent and counts as a failed replica: the
//! write may then fail W with `quorumNotMet` (outcome unknown: it is stored here, and read
//! repair or anti-entropy carries it on).
//!
//! ## Why this cannot deadlock
//! Nothing waits for budget: every charge is taken at once or refused at once. A coordinator
//! that holds budget while its replicas are at theirs gets `overloaded` from each `replicate`
//! at once, counts each as a failed replica, and fails the write with `quorumNotMet` as soon
//! as W can no longer be met. No node ever waits on another node's budget.
//!
//! A read's answer that does not fit counts as a failed answer; a read that fails for that
//! answers `overloaded` (a read changes nothing, so it may be retried as it is).
//!
//! ## Not charged
//! Answers queued in capnp-rpc for a client that does not read them, and the partition an
//! ownership handoff loads to send (it holds one partition's entries at a time). Hints
//! live in a `log` engine on disk; the node keeps none in memory beyond the engine's own
//! keydir and one delivery batch ([`crate::store::hints::HINT_BATCH_BYTES_MAX`]).

use std::cell::Cell;
use std::rc::Rc;

use crate::error::Error;

/// The node's budget of bytes in flight. Clones share one counter.
#[derive(Clone, Debug)]
pub struct Budget {
    inner: Rc<Inner>,
}

#[derive(Debug)]
struct Inner {
    /// Bytes charged and not yet given back.
    used: Cell<usize>,
    /// `limits.inflight_bytes_max`.
    max: usize,
}

impl Inner {
    /// Take `bytes` if they fit under the budget; zero bytes always fit.
    fn take(&self, bytes: usize, what: &str) -> Result<(), Error> {
        let used = self.used.get();
        match used.checked_add(bytes) {
            Some(after) if after <= self.max || bytes == 0 => {
                self.used.set(after);
                Ok(())
            }
            _ => Err(Error::Overloaded(format!(
                "{what} needs {bytes} bytes and this node holds {used} of its {} bytes for \
                 requests in flight (limits.inflight_bytes_max): retry later",
                self.max
            ))),
        }
    }
}

impl Budget {
    /// A budget of `max` bytes, none in use.
    pub fn new(max: usize) -> Self {
        Self { inner: Rc::new(Inner { used: Cell::new(0), max }) }
    }

    /// Charge `bytes` for `what` (said in the refusal), or refuse at once with `overloaded`
    /// when they would take the bytes in use past the budget.
    pub fn try_charge(&self, bytes: usize, what: &str) -> Result<Charge, Error> {
        self.inner.take(bytes, what)?;
        Ok(Charge { budget: Rc::clone(&self.inner), bytes })
    }

    /// Bytes charged and not yet given back.
    pub fn used(&self) -> usize {
        self.inner.used.get()
    }

    /// The budget, `limits.inflight_bytes_max`.
    pub fn max(&self) -> usize {
        self.inner.max
    }
}

/// Bytes of a [`Budget`] held by one piece of work; given back when dropped.
#[derive(Debug)]
#[must_use = "a charge gives its bytes back when dropped"]
pub struct Charge {
    budget: Rc<Inner>,
    bytes: usize,
}

impl Charge {
    /// The bytes this charge holds.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Move `bytes` out of this charge into a charge of their own (for work that goes on
    /// elsewhere, such as one target's replication). Whatever this charge does not hold is
    /// charged to the budget, at once or refused with `overloaded` (then nothing moves).
    pub fn split(&mut self, bytes: usize, what: &str) -> Result<Charge, Error> {
        let moved = bytes.min(self.bytes);
        let extra = bytes - moved;
        if extra > 0 {
            self.budget.take(extra, what)?;
        }
        self.bytes -= moved;
        Ok(Charge { budget: Rc::clone(&self.budget), bytes })
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        let used = self.budget.used.get();
        debug_assert!(used >= self.bytes, "a charge gives back more than was charged");
        self.budget.used.set(used - self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Charges fit up to the budget exactly, the next is refused with `overloaded` and takes
    /// nothing, and dropping a charge gives its bytes back.
    #[test]
    fn charges_fit_up_to_the_budget_and_are_given_back() {
        let budget = Budget::new(100);
        let a = budget.try_charge(60, "a").unwrap();
        let b = budget.try_charge(40, "b").unwrap();
        assert_eq!(budget.used(), 100);
        let refused = budget.try_charge(1, "c").unwrap_err();
        assert!(matches!(refused, Error::Overloaded(_)), "{refused:?}");
        assert!(refused.to_string().contains("limits.inflight_bytes_max"), "{refused}");
        assert_eq!(budget.used(), 100, "a refusal takes nothing");
        let zero = budget.try_charge(0, "gossip").expect("zero bytes always fit");
        drop(a);
        assert_eq!(budget.used(), 40);
        let c = budget.try_charge(60, "c").unwrap();
        drop((b, c, zero));
        assert_eq!(budget.used(), 0);
        assert!(budget.try_charge(101, "too large alone").is_err());
        assert!(budget.try_charge(usize::MAX, "overflowing").is_err());
        assert_eq!(budget.used(), 0);
    }

    /// A split moves bytes out of a reservation and charges only what the reservation does
    /// not hold; a refused split moves nothing; every part gives back its own bytes.
    #[test]
    fn a_split_takes_from_the_reservation_then_from_the_budget() {
        let budget = Budget::new(100);
        let mut reserved = budget.try_charge(50, "reservation").unwrap();
        let first = reserved.split(30, "first").unwrap();
        assert_eq!((reserved.bytes(), first.bytes(), budget.used()), (20, 30, 50));
        // 20 from the reservation, 20 more from the budget.
        let second = reserved.split(40, "second").unwrap();
        assert_eq!((reserved.bytes(), second.bytes(), budget.used()), (0, 40, 70));
        let refused = reserved.split(31, "third").unwrap_err();
        assert!(matches!(refused, Error::Overloaded(_)));
        assert_eq!(budget.used(), 70, "a refused split charges nothing");
        drop(reserved);
        assert_eq!(budget.used(), 70, "an emptied reservation holds nothing");
        drop(first);
        assert_eq!(budget.used(), 40);
        let clone = budget.clone();
        drop(second);
        assert_eq!(clone.used(), 0, "clones share one counter");
    }
}
