//! Ownership changes in the membership state machine: the claimant, staged changes and
//! their commit ([`crate::cluster::changes`]), what members say they hold of a ring transition,
//! and the claimant's step each round (moving a transition on, or joining new members).

use std::collections::BTreeSet;

use super::super::changes::{self, Change, Plan};
use super::{Health, Holds, Membership, Notice};
use crate::error::Error;

impl Membership {
    /// The claimant as this node sees it: the smallest id among the members that count for
    /// ownership and are up.
    pub fn claimant(&self, now_ms: u64) -> Option<String> {
        let owners = self.owners();
        self.members
            .values()
            .filter(|k| self.counts_for_ownership(k, &owners))
            .filter(|k| self.health_of(k, now_ms) == Health::Up)
            .map(|k| k.info.id.clone())
            .min()
    }

    /// Say which partitions of the transition in flight this node holds (gossiped with its
    /// entry from the next round on).
    pub fn set_holds(&mut self, holds: Holds) {
        if let Some(me) = self.members.get_mut(&self.me) {
            me.info.holds = holds;
        }
    }

    /// Say how many live bytes this node stores (gossiped with its entry).
    pub fn set_data_bytes(&mut self, bytes: u64) {
        if let Some(me) = self.members.get_mut(&self.me) {
            me.info.data_bytes = bytes;
        }
    }

    /// What this node said it holds.
    pub fn holds(&self) -> &Holds {
        &self.members[&self.me].info.holds
    }

    /// What member `id` said it holds, as this node last heard.
    pub fn holds_of(&self, id: &str) -> Option<&Holds> {
        self.members.get(id).map(|k| &k.info.holds)
    }

    /// The changes staged here.
    pub fn staged(&self) -> &[Change] {
        &self.staged
    }

    /// Stage a change ([`crate::cluster::changes::check`]).
    pub fn stage(&mut self, change: Change) -> Result<(), Error> {
        let proven: BTreeSet<String> =
            self.members.values().filter(|k| k.proven).map(|k| k.info.id.clone()).collect();
        changes::check(&change, &self.ring, &self.staged, &proven)?;
        self.staged.push(change);
        Ok(())
    }

    /// Drop the staged changes.
    pub fn cancel(&mut self) {
        self.staged.clear();
    }

    /// What committing the staged changes would do.
    pub fn plan(&self) -> Result<Plan, Error> {
        changes::plan(&self.ring, &self.staged, self.target_n)
    }

    /// Commit the staged changes as a ring transition, if no transition is in flight.
    pub fn commit(&mut self) -> Result<Plan, Error> {
        if self.ring.in_transition() {
            return Err(Error::BadRequest(format!(
                "a change is still moving {} partitions: commit once it is done",
                self.ring.moving()
            )));
        }
        let plan = self.plan()?;
        self.ring = self
            .ring
            .begin(plan.next_owners.clone(), plan.removed.clone(), self.target_n)
            .map_err(|e| Error::Overflow(e.to_string()))?;
        self.staged.clear();
        Ok(plan)
    }

    /// If this node is the claimant: move the transition in flight on (mark moved the
    /// partitions every receiver holds, finish when all moved), or else, with
    /// `auto_join`, begin one that joins the members that count for ownership, own nothing
    /// and have not left.
    pub(super) fn claim(&mut self, now_ms: u64) -> Vec<Notice> {
        if self.claimant(now_ms).as_deref() != Some(self.me.as_str()) {
            return Vec::new();
        }
        if let Some(transition) = &self.ring.next {
            let id = transition.id;
            let holds = |node: &str, p: u16| {
                self.members.get(node).is_some_and(|k| {
                    k.info.holds.transition == id && k.info.holds.partitions.contains(&p)
                })
            };
            return match self.ring.settle(self.target_n, holds) {
                Ok(Some(ring)) => {
                    self.ring = ring;
                    vec![Notice::RingChanged(self.ring.epoch)]
                }
                Ok(None) => Vec::new(),
                Err(_) => vec![Notice::EpochExhausted],
            };
        }
        if !self.auto_join {
            return Vec::new();
        }
        let owners = self.owners();
        let joining: Vec<String> = self
            .members
            .values()
            .filter(|k| self.counts_for_ownership(k, &owners))
            .filter(|k| !k.info.leaving && !self.ring.left.contains(&k.info.id))
            .filter(|k| !owners.contains(k.info.id.as_str()))
            .map(|k| k.info.id.clone())
            .collect();
        if joining.is_empty() {
            return Vec::new();
        }
        let mut members: Vec<String> = owners.iter().map(|o| o.to_string()).collect();
        members.extend(joining);
        members.sort();
        members.dedup();
        // With more members than partitions some own nothing however the ring is laid out:
        // change it only when the layout moves something, or the claimant would begin a
        // transition every round and the ring would never settle.
        let Ok(rebalanced) = self.ring.try_rebalance(&members, self.target_n) else {
            return vec![Notice::EpochExhausted];
        };
        if rebalanced.owners == self.ring.owners {
            return Vec::new();
        }
        match self.ring.begin(rebalanced.owners, BTreeSet::new(), self.target_n) {
            Ok(ring) => {
                self.ring = ring;
                vec![Notice::RingChanged(self.ring.epoch)]
            }
            Err(_) => vec![Notice::EpochExhausted],
        }
    }
}
