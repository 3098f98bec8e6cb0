//! # Ownership changes in flight: moving partitions without hiding data
//!
//! A membership change (a join, a leave, a replacement, a removal) is planned as a whole
//! new owner layout, the **next ring**, and committed by the claimant as a [`Transition`] on
//! the current ring. From then on until the last partition has moved, each key partition is
//! in one of two states:
//!
//! - **moving** (not in [`Transition::moved`]): its replicas are still the current ring's,
//!   and they keep serving it. Reads go to the current replicas only (they hold everything
//!   acknowledged so far). Writes go to the union of the current and the next replicas and
//!   are acknowledged only when W nodes of *each* set stored them (a node in both counts for
//!   both): every write acknowledged during the move is on W of the replicas that will serve
//!   the partition afterwards, so a read quorum there meets it (R + W > N holds across the
//!   switch, as in joint consensus).
//! - **moved**: its replicas are the next ring's, for reads and writes.
//!
//! A partition moves when every node that is a replica of it in the next ring and was not
//! one in the current ring (its **receivers**) has copied it from the current replicas and
//! verified the copy by comparing hash trees with each of them ([`Ownership::sources`]: the
//! current replicas not forced out). Each receiver says which partitions it holds in its own
//! gossiped entry; the claimant, seeing every receiver of a partition say so, adds it to
//! `moved` ([`Ownership::settle`]), and when every partition has moved the next ring becomes
//! the ring ([`Ownership::settle`] again). Writes acknowledged before the transition are on
//! W current replicas; a receiver that synced with all of them has them. Writes during the
//! move reach the receivers directly (W of the next set).
//!
//! Old replicas drop a moved partition's copy only after the switch (ownership handoff sends
//! what they hold to the new replicas first and deletes once those stored it), so a
//! coordinator whose ring is a few gossip rounds old still finds the data where it looks.
//!
//! Receivers are counted over the largest N of the buckets (`target_n`): a node that moves
//! up the preference list for a bucket with a smaller N (it was the third replica, it becomes
//! the second) is a receiver too, so a partition moves only when every bucket has its
//! replicas.
//!
//! A member forced out ([`Transition::removed`], a node gone for good) is no source: its
//! partitions are rebuilt from the other replicas. Members that left (by a leave, a
//! replacement or a removal) are listed in [`Ownership::left`] and get no partition again
//! until joined anew.

use std::collections::BTreeSet;

use super::{walk, EpochExhausted, Ownership};

/// A committed ownership change on its way (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The ring epoch that committed it: receivers name it when they say what they hold.
    pub id: u64,
    /// `owners[p]` of the next ring; the length is Q.
    pub owners: Vec<String>,
    /// Key partitions whose replicas are the next ring's already.
    pub moved: BTreeSet<u16>,
    /// Members forced out: gone for good, no data is taken from them.
    pub removed: BTreeSet<String>,
}

/// Where a key partition's writes go while its ring changes: the replicas of the current
/// layout and, while the partition moves, those of the next one. W is counted in each.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WriteSets<'a> {
    /// The replicas that serve it now (reads go here).
    pub serving: Vec<&'a str>,
    /// While it moves: the next ring's replicas, which must get W copies too.
    pub next: Option<Vec<&'a str>>,
}

impl Ownership {
    /// Whether a committed change is on its way.
    pub fn in_transition(&self) -> bool {
        self.next.is_some()
    }

    /// The first `n` distinct nodes that serve key partition `partition` now: the next
    /// ring's once the partition moved, the current ring's before. Reads go here.
    pub fn serving(&self, partition: u16, n: usize) -> Vec<&str> {
        match &self.next {
            Some(next) if next.moved.contains(&partition) => walk(&next.owners, partition, n),
            _ => walk(&self.owners, partition, n),
        }
    }

    /// Where a write to `partition` goes, with N = `n` (see [`WriteSets`]).
    pub fn write_sets(&self, partition: u16, n: usize) -> WriteSets<'_> {
        let serving = self.serving(partition, n);
        let next = match &self.next {
            Some(next) if !next.moved.contains(&partition) => {
                let next = walk(&next.owners, partition, n);
                (next != serving).then_some(next)
            }
            _ => None,
        };
        WriteSets { serving, next }
    }

    /// The nodes that must copy `partition` before it moves: those whose place in the next
    /// ring's first `target_n` is earlier than in the current ring's (or that are new there).
    /// Empty when the partition moved, or when nothing changes for it.
    pub fn receivers(&self, partition: u16, target_n: usize) -> Vec<&str> {
        let Some(next) = &self.next else { return Vec::new() };
        if next.moved.contains(&partition) {
            return Vec::new();
        }
        let now = walk(&self.owners, partition, target_n);
        let then = walk(&next.owners, partition, target_n);
        then.iter()
            .enumerate()
            .filter(|(i, node)| now.iter().position(|n| n == *node).is_none_or(|j| j > *i))
            .map(|(_, node)| *node)
            .collect()
    }

    /// Whether `node` must copy the data of `partition` for a bucket with N = `n` before it
    /// moves: it is among the next ring's first `n` and not among the current ring's.
    pub fn receives(&self, partition: u16, n: usize, node: &str) -> bool {
        let Some(next) = &self.next else { return false };
        !next.moved.contains(&partition)
            && walk(&next.owners, partition, n).contains(&node)
            && !walk(&self.owners, partition, n).contains(&node)
    }

    /// The nodes a receiver copies `partition` from, for a bucket with N = `n`: its current
    /// replicas, but for members forced out.
    pub fn sources(&self, partition: u16, n: usize) -> Vec<&str> {
        let removed = self.next.as_ref().map(|t| &t.removed);
        walk(&self.owners, partition, n)
            .into_iter()
            .filter(|node| removed.is_none_or(|r| !r.contains(*node)))
            .collect()
    }

    /// Whether `node` keeps a copy of `partition` (N = `n`): it serves it, or it will once
    /// the partition moved.
    pub fn holds(&self, partition: u16, n: usize, node: &str) -> bool {
        let sets = self.write_sets(partition, n);
        sets.serving.contains(&node) || sets.next.is_some_and(|next| next.contains(&node))
    }

    /// Commit a change to `next_owners` (the claimant): the partitions with no receiver
    /// move at once. `removed` are members forced out. Members that own nothing in the next
    /// ring join [`Ownership::left`] when it finishes.
    pub fn begin(
        &self,
        next_owners: Vec<String>,
        removed: BTreeSet<String>,
        target_n: usize,
    ) -> Result<Ownership, EpochExhausted> {
        assert_eq!(next_owners.len(), self.owners.len(), "the next ring keeps Q");
        let epoch = self.epoch.checked_add(1).ok_or(EpochExhausted)?;
        let mut ring = self.clone();
        ring.epoch = epoch;
        ring.next =
            Some(Transition { id: epoch, owners: next_owners, moved: BTreeSet::new(), removed });
        let idle: Vec<u16> = (0..ring.partitions() as u16)
            .filter(|&p| ring.receivers(p, target_n).is_empty())
            .collect();
        if let Some(next) = ring.next.as_mut() {
            next.moved.extend(idle);
        }
        ring.finish_if_done();
        Ok(ring)
    }

    /// The claimant's step: mark moved every moving partition whose receivers all hold it
    /// (`holds(node, partition)`: the node said so for this transition), and finish the
    /// transition when none is left. `None` when nothing changes.
    pub fn settle(
        &self,
        target_n: usize,
        holds: impl Fn(&str, u16) -> bool,
    ) -> Result<Option<Ownership>, EpochExhausted> {
        let Some(next) = &self.next else { return Ok(None) };
        let ready: Vec<u16> = (0..self.partitions() as u16)
            .filter(|p| !next.moved.contains(p))
            .filter(|&p| self.receivers(p, target_n).iter().all(|node| holds(node, p)))
            .collect();
        if ready.is_empty() && next.moved.len() < self.owners.len() {
            return Ok(None);
        }
        let mut ring = self.clone();
        ring.epoch = self.epoch.checked_add(1).ok_or(EpochExhausted)?;
        if let Some(next) = ring.next.as_mut() {
            next.moved.extend(ready);
        }
        ring.finish_if_done();
        Ok(Some(ring))
    }

    /// Partitions `node` owns once the change in flight is done (now, when none is).
    pub fn will_own(&self, node: &str) -> usize {
        let owners = self.next.as_ref().map_or(&self.owners, |t| &t.owners);
        owners.iter().filter(|o| *o == node).count()
    }

    /// Partitions still moving.
    pub fn moving(&self) -> usize {
        self.next.as_ref().map_or(0, |t| self.owners.len() - t.moved.len())
    }

    fn finish_if_done(&mut self) {
        let done = self.next.as_ref().is_some_and(|t| t.moved.len() == self.owners.len());
        if !done {
            return;
        }
        let Some(next) = self.next.take() else { return };
        let gone: Vec<String> = self
            .owners
            .iter()
            .filter(|o| !next.owners.contains(o))
            .cloned()
            .chain(next.removed.iter().cloned())
            .collect();
        self.left.extend(gone);
        for owner in &next.owners {
            self.left.remove(owner);
        }
        self.owners = next.owners;
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{grow as grown, names};
    use super::*;

    /// A join: while a partition moves, reads go to the current replicas and writes to
    /// both sets; its receivers are the nodes new to its first N; once they hold it, it
    /// moves; when all moved, the next ring is the ring.
    #[test]
    fn a_join_moves_partition_by_partition() {
        let before = grown(16, 3);
        let members = names(4);
        let next = before.rebalance(&members, 3).owners;
        let ring = before.begin(next.clone(), BTreeSet::new(), 3).unwrap();
        assert_eq!(ring.epoch, before.epoch + 1);
        assert!(ring.in_transition());
        let moving: Vec<u16> = (0..16).filter(|p| !ring.receivers(*p, 3).is_empty()).collect();
        assert!(!moving.is_empty());
        for p in 0..16u16 {
            let receivers = ring.receivers(p, 3);
            assert!(receivers.iter().all(|r| *r == "n04"), "only the newcomer receives");
            let sets = ring.write_sets(p, 3);
            assert_eq!(sets.serving, before.primaries(p, 3), "reads stay on the current ring");
            if receivers.is_empty() {
                assert_eq!(sets.next, None);
            } else {
                let then = Ownership { owners: next.clone(), ..before.clone() };
                assert_eq!(sets.next, Some(then.primaries(p, 3)));
                assert!(ring.holds(p, 3, "n04"));
            }
        }
        // n4 holds the first moving partition: only that one moves.
        let first = moving[0];
        let step = ring.settle(3, |node, p| node == "n04" && p == first).unwrap().unwrap();
        assert_eq!(step.epoch, ring.epoch + 1);
        assert!(step.next.as_ref().unwrap().moved.contains(&first));
        let then = Ownership { owners: next.clone(), ..before.clone() };
        assert_eq!(step.serving(first, 3), then.primaries(first, 3));
        assert_eq!(step.write_sets(first, 3).next, None);
        assert_eq!(step.settle(3, |_, p| p == first).unwrap(), None, "nothing new: no change");
        // Everything held: the transition ends on the next ring.
        let done = step.settle(3, |_, _| true).unwrap().unwrap();
        assert!(!done.in_transition());
        assert_eq!(done.owners, next);
        assert!(done.left.is_empty());
    }

    /// A leave: the leaver is a source, never a receiver; when done it owns nothing and is
    /// listed as left. A removal: the removed member is no source.
    #[test]
    fn a_leave_and_a_removal() {
        let before = grown(16, 4);
        let members = names(4);
        let next = before.rebalance(&members[..3], 3).owners;
        let leave = before.begin(next.clone(), BTreeSet::new(), 3).unwrap();
        for p in 0..16u16 {
            assert!(!leave.receivers(p, 3).contains(&"n04"));
        }
        let sources_with_n4 = (0..16u16).filter(|&p| leave.sources(p, 3).contains(&"n04"));
        assert!(sources_with_n4.count() > 0);
        let done = leave.settle(3, |_, _| true).unwrap().unwrap();
        assert_eq!(done.owned_by("n04"), 0);
        assert!(done.left.contains("n04"));

        let removal = before.begin(next, BTreeSet::from(["n04".to_string()]), 3).unwrap();
        for p in 0..16u16 {
            assert!(!removal.sources(p, 3).contains(&"n04"), "a removed member is no source");
        }
    }

    /// A node that moves up a preference list receives (for buckets with a smaller N).
    #[test]
    fn moving_up_the_list_is_receiving() {
        let ring = Ownership::single("a", 4);
        let mut ring =
            Ownership { owners: ["a", "b", "c", "d"].map(String::from).to_vec(), ..ring };
        ring.epoch = 3;
        // Partition 0: [a, b, c] now; next [a, c, b]: c moves up from third to second.
        let next = ["a", "c", "b", "d"].map(String::from).to_vec();
        let moving = ring.begin(next, BTreeSet::new(), 3).unwrap();
        assert_eq!(moving.receivers(0, 3), vec!["c"]);
        assert!(moving.receives(0, 2, "c"));
        assert!(!moving.receives(0, 3, "c"), "with N = 3 c holds it already");
    }

    /// A change that moves nothing ends at once.
    #[test]
    fn nothing_to_move() {
        let ring = grown(16, 3);
        let same = ring.begin(ring.owners.clone(), BTreeSet::new(), 3).unwrap();
        assert!(!same.in_transition());
        assert_eq!(same.owners, ring.owners);
    }
}
