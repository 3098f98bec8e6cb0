//! # Handoff: moving data to the nodes that should hold it
//!
//! Two kinds. **Hinted handoff**: hints this node holds for an owner that is up again are
//! delivered, at most `hint_replay_per_round` per owner per round, and deleted once the owner
//! stored them (unless they changed meanwhile). **Ownership handoff**: after a ring change,
//! each node walks the (bucket, partition) pairs it holds data for, about
//! `hint_replay_per_round` keys per round:
//! - a partition this node no longer is a primary of is sent, key by key, to all its new
//!   primaries; once every one of them stored a key, the local copy is deleted, unless a
//!   write changed it meanwhile (then it goes again next pass); a deleted copy that holds
//!   writes of this node's current replica actor makes it take a new epoch;
//! - a partition it still is a primary of is sent to the primaries that are new since the
//!   ring this node had before (known only for changes seen since it started).
//!
//! A copy of a key this node does not replicate that arrives later (a hint or a repair sent
//! by a node whose ring is older) queues its partition again (`note_if_stray`),
//! so no stray copy stays. A partition whose targets are not all up waits for a later round. Until a partition is
//! handed off, reads still find its data: the old holders answer the coordinators that ask
//! them, and read repair copies what a new primary lacks.

use super::coordinator::Target;
use super::membership::Health;
use super::Cluster;
use crate::ring::Ownership;

/// Progress of ownership handoff after a ring change.
#[derive(Debug, Default)]
pub(super) struct Handoff {
    /// The ring the pending work was planned for.
    ring: Option<Ownership>,
    /// The ring before it, if this node saw the change.
    previous: Option<Ownership>,
    /// (bucket, partition) pairs still to walk.
    pending: std::collections::VecDeque<(String, u16)>,
}

/// What this node does with one partition's data after a ring change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionPlan {
    /// Whether this node stays a primary of the partition (keeps its copy).
    pub keep: bool,
    /// The nodes to send the partition's data to.
    pub targets: Vec<String>,
}

/// Plan one partition after a ring change. Pure.
///
/// A partition `me` no longer is a primary of goes to all its new primaries (and the copy is
/// dropped once they have it); one it still is a primary of goes to the primaries that were
/// not primaries in `previous` (nothing, when this node did not see the ring before). `None`
/// when there is nothing to send.
pub fn plan_partition(
    ring: &Ownership,
    previous: Option<&Ownership>,
    me: &str,
    partition: u16,
    n: usize,
) -> Option<PartitionPlan> {
    let primaries = |ring: &Ownership| -> Vec<String> {
        ring.primaries(partition, n).into_iter().map(str::to_string).collect()
    };
    let now = primaries(ring);
    // A node keeps what it serves, and, during a transition, what it will serve once the
    // partition moved (a receiver's copy).
    let keep = ring.holds(partition, n, me);
    let targets: Vec<String> = if keep {
        let before = primaries(previous?);
        now.into_iter().filter(|p| p != me && !before.contains(p)).collect()
    } else {
        now
    };
    (!targets.is_empty()).then_some(PartitionPlan { keep, targets })
}

/// The owners whose hints to deliver this round: those held for, that this node sees up.
/// Pure.
pub fn owners_to_deliver(
    held: &std::collections::BTreeMap<String, u64>,
    health: impl Fn(&str) -> Health,
) -> Vec<String> {
    held.iter()
        .filter(|(owner, count)| **count > 0 && health(owner) == Health::Up)
        .map(|(o, _)| o.clone())
        .collect()
}

impl Cluster {
    /// Walk pending (bucket, partition) pairs after a ring change; see the module docs.
    pub(super) async fn handoff_round(&self) {
        let ring = self.ring();
        {
            let mut handoff = self.handoff.borrow_mut();
            if handoff.ring.as_ref().map(|r| r.epoch) != Some(ring.epoch) {
                handoff.previous = handoff.ring.take();
                handoff.pending = self
                    .store
                    .buckets()
                    .flat_map(|b| (0..ring.partitions()).map(move |p| (b.name.clone(), p as u16)))
                    .collect();
                handoff.ring = Some(ring.clone());
            }
        }
        let me = self.me();
        let mut budget = self.hint_replay_per_round;
        while budget > 0 {
            let Some((bucket, partition)) = self.handoff.borrow_mut().pending.pop_front() else {
                return;
            };
            let Ok(n) = self.store.bucket(&bucket).map(|b| b.config.n as usize) else { continue };
            let previous = self.handoff.borrow().previous.clone();
            let Some(PartitionPlan { keep, targets }) =
                plan_partition(&ring, previous.as_ref(), &me, partition, n)
            else {
                continue;
            };
            if targets.is_empty() {
                continue;
            }
            let entries = match self.store.partition_entries(&bucket, partition).await {
                Ok(entries) => entries,
                Err(e) => {
                    tracing::warn!(%bucket, partition, error = %e, "handoff cannot read a partition");
                    continue;
                }
            };
            if entries.is_empty() {
                continue;
            }
            if targets.iter().any(|t| self.health(t) != Health::Up) {
                // Try again once every target is up.
                self.handoff.borrow_mut().pending.push_back((bucket, partition));
                return;
            }
            let mut complete = true;
            for (key, state) in &entries {
                let mut stored_everywhere = true;
                for target in &targets {
                    let target = Target { id: target.clone(), hint_for: None };
                    stored_everywhere &= self.replicate(&target, &bucket, key, state, false).await;
                }
                complete &= stored_everywhere;
                if stored_everywhere && !keep {
                    match self.store.delete_if_unchanged(&bucket, key, state) {
                        Ok(true) => {}
                        // Written meanwhile: send the newer state on the next pass.
                        Ok(false) => complete = false,
                        Err(e) => {
                            tracing::warn!(%bucket, error = %e, "handoff cannot drop a moved key");
                            complete = false;
                        }
                    }
                }
            }
            budget = budget.saturating_sub(entries.len());
            self.metrics().transfer(&bucket, entries.len() as u64, complete);
            if complete {
                tracing::info!(%bucket, partition, keys = entries.len(), to = ?targets, "partition handed off");
            } else {
                self.handoff.borrow_mut().pending.push_back((bucket, partition));
                return;
            }
        }
    }

    /// If this node neither serves `key` by its ring nor will once a transition moved it, queue the key's
    /// partition for ownership handoff (which sends the copy on and drops it), unless it is
    /// queued already.
    pub(super) fn note_if_stray(&self, bucket: &str, key: &[u8]) {
        let Ok(n) = self.store.bucket(bucket).map(|b| b.config.n as usize) else { return };
        let partition = {
            let membership = self.membership.borrow();
            let ring = membership.ring();
            let partition =
                crate::ring::partition_of(crate::ring::key_hash(bucket, key), ring.partitions());
            if ring.holds(partition, n, membership.me()) {
                return;
            }
            partition
        };
        let mut handoff = self.handoff.borrow_mut();
        let pair = (bucket.to_string(), partition);
        if !handoff.pending.contains(&pair) {
            handoff.pending.push_back(pair);
        }
    }

    pub(super) async fn deliver_hints(&self) {
        let held = self.hints.counts();
        for owner in owners_to_deliver(&held, |id| self.health(id)) {
            let hints = match self.hints.pending(&owner, self.hint_replay_per_round) {
                Ok(hints) => hints,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read hints");
                    continue;
                }
            };
            let target = Target { id: owner.clone(), hint_for: None };
            let mut delivered = 0usize;
            for hint in hints {
                if !self.replicate(&target, &hint.bucket, &hint.key, &hint.state, true).await {
                    break;
                }
                match self.hints.delivered(&hint) {
                    Ok(true) => {
                        if let Err(e) = self.store.hint_dropped(&hint.bucket, &hint.state) {
                            tracing::warn!(error = %e, "cannot check a delivered hint");
                            self.store.actors().renew(crate::actors::Role::Hint);
                        }
                    }
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot delete a delivered hint"),
                }
                delivered += 1;
            }
            if delivered > 0 {
                tracing::info!(owner = %owner, delivered, "hints delivered");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(owners: &[&str]) -> Ownership {
        let mut ring = Ownership::single("a", owners.len() as u32);
        (ring.epoch, ring.owners) = (1, owners.iter().map(|o| o.to_string()).collect());
        ring
    }

    /// A node that lost a partition sends it to every new primary; one that keeps it sends
    /// it only to primaries that are new; a node that saw no earlier ring sends nothing of
    /// what it keeps.
    #[test]
    fn a_partition_goes_to_its_new_primaries() {
        let before = ring(&["a", "b", "c", "a", "b", "c", "a", "b"]);
        let after = ring(&["d", "b", "c", "a", "b", "c", "a", "b"]);
        // Partition 0: primaries were a, b, c; now d, b, c.
        let lost = plan_partition(&after, Some(&before), "a", 0, 3).unwrap();
        assert_eq!(
            lost,
            PartitionPlan { keep: false, targets: vec!["d".into(), "b".into(), "c".into()] }
        );
        let kept = plan_partition(&after, Some(&before), "b", 0, 3).unwrap();
        assert_eq!(kept, PartitionPlan { keep: true, targets: vec!["d".into()] });
        assert_eq!(plan_partition(&after, None, "b", 0, 3), None);
        // Partition 1 did not change for b: nothing to send.
        assert_eq!(plan_partition(&after, Some(&before), "b", 1, 3), None);
    }

    /// Hints go only to owners seen up, and only where some are held.
    #[test]
    fn hints_go_to_owners_that_are_up() {
        let held: std::collections::BTreeMap<String, u64> =
            [("a".to_string(), 3), ("b".to_string(), 1), ("c".to_string(), 0)].into();
        let health = |id: &str| if id == "b" { Health::Down } else { Health::Up };
        assert_eq!(owners_to_deliver(&held, health), vec!["a".to_string()]);
    }
}
