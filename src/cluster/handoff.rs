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
//! A partition whose targets are not all up waits for a later round. Until a partition is
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
            let limit = self.membership.borrow().member_count();
            let primaries: Vec<String> = ring
                .preference_list(partition, limit)
                .into_iter()
                .take(n)
                .map(str::to_string)
                .collect();
            let keep = primaries.contains(&me);
            let targets: Vec<String> = if keep {
                let previous = self.handoff.borrow().previous.clone();
                let Some(previous) = previous else { continue };
                let before: Vec<String> = previous
                    .preference_list(partition, limit)
                    .into_iter()
                    .take(n)
                    .map(str::to_string)
                    .collect();
                primaries.iter().filter(|p| **p != me && !before.contains(p)).cloned().collect()
            } else {
                primaries
            };
            if targets.is_empty() {
                continue;
            }
            let entries = match self.store.partition_entries(&bucket, partition) {
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
            if complete {
                tracing::info!(%bucket, partition, keys = entries.len(), to = ?targets, "partition handed off");
            } else {
                self.handoff.borrow_mut().pending.push_back((bucket, partition));
                return;
            }
        }
    }

    pub(super) async fn deliver_hints(&self) {
        let owners: Vec<String> = self.hints.counts().into_keys().collect();
        for owner in owners {
            if self.health(&owner) != Health::Up {
                continue;
            }
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
