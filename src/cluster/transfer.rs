//! # Transfers: copying the partitions a node takes over in a ring transition
//!
//! While a ring transition is in flight ([`crate::ring::transition`]), each node copies
//! the partitions it receives: for every bucket in which it is among a partition's next
//! replicas but not its current ones, it runs an anti-entropy exchange with each of the
//! partition's sources (its current replicas, but for members forced out), merging both
//! ways, and then compares hash-tree leaves with that source: equal leaves verify the copy.
//! A partition whose every bucket verified against every source is *held*; the node says
//! so in its gossiped entry ([`super::membership::Holds`]), and the claimant moves the
//! partition once all its receivers hold it.
//!
//! Throttled: at most `cluster.transfer_limit` partitions are copied at once, batch after
//! batch for at most one gossip interval per round, and at most
//! `cluster.transfer_bytes_per_s` bytes per second (0: no limit). A source that is down makes the partition wait
//! (its data may be the only copy of some writes): `remove` the source if it is gone for
//! good. Resumable: what a node holds is in memory, and after a restart it copies again
//! only the partitions that have not moved yet; an exchange of equal partitions reads no
//! values, so that costs little.
//!
//! Writes that arrive during the copy reach the receiver directly (the coordinator sends
//! them to the receivers as well as the current replicas), so the copy stays complete until
//! the partition moves. Leaves may differ for a moment while such a write is in flight to
//! one side only: the comparison is retried ([`VERIFY_ATTEMPTS`]), and a partition that still
//! differs is tried again next round.

use std::collections::BTreeSet;
use tokio::time::Instant;

use super::anti_entropy::differing;
use super::membership::{Health, Holds};
use super::Cluster;
use crate::error::Error;

/// Exchanges with one source before a partition waits for the next round.
pub const VERIFY_ATTEMPTS: usize = 3;

/// This node's transfer progress, for `status`.
#[derive(Clone, Debug, Default)]
pub struct Transfers {
    /// The transition the figures are about (0: none).
    pub transition: u64,
    /// Partitions this node receives in it.
    pub receiving: usize,
    /// Of those, partitions it holds (copied and verified).
    pub held: usize,
    /// Partitions being copied now.
    pub running: Vec<u16>,
    /// Hash-tree segments found differing and exchanged in this transition.
    pub segments: u64,
    /// Entries received from sources in this transition.
    pub keys: u64,
    /// Their bytes (keys and states).
    pub bytes: u64,
    /// When the transition's first copy started.
    pub started: Option<Instant>,
    /// Why a partition waits, if one does (a source down).
    pub waiting: Option<String>,
}

impl Cluster {
    /// One transfer round: copy up to `transfer_limit` of the partitions this node receives
    /// and does not hold yet, and say which it holds. See the module documentation.
    pub(super) async fn transfer_round(&self) {
        let ring = self.ring();
        let me = self.me();
        let Some(next) = &ring.next else {
            if self.membership.borrow().holds().transition != 0 {
                self.membership.borrow_mut().set_holds(Holds::default());
            }
            return;
        };
        let target_n = self.membership.borrow().target_n();
        let mut holds = self.membership.borrow().holds().clone();
        if holds.transition != next.id {
            holds = Holds { transition: next.id, partitions: BTreeSet::new() };
            *self.transfers.borrow_mut() = Transfers { transition: next.id, ..Default::default() };
        }
        let receiving: Vec<u16> = (0..ring.partitions() as u16)
            .filter(|&p| ring.receivers(p, target_n).contains(&me.as_str()))
            .collect();
        {
            let mut transfers = self.transfers.borrow_mut();
            transfers.receiving = receiving.len();
            transfers.held = holds.partitions.len();
            transfers.started.get_or_insert_with(Instant::now);
        }
        // Batches of `transfer_limit` partitions, one after another, for at most one round
        // interval: empty or equal partitions cost one comparison each, so a new cluster's
        // ring settles in a round or two.
        let round_started = Instant::now();
        let mut waiting = None;
        let mut tried: BTreeSet<u16> = BTreeSet::new();
        while round_started.elapsed() < self.gossip_interval {
            let todo: Vec<u16> = receiving
                .iter()
                .copied()
                .filter(|p| !holds.partitions.contains(p) && !tried.contains(p))
                .take(self.transfer_limit)
                .collect();
            if todo.is_empty() {
                break;
            }
            tried.extend(&todo);
            self.transfers.borrow_mut().running = todo.clone();
            let copies = todo.iter().map(|&p| self.copy_partition(&ring, p));
            let results = futures::future::join_all(copies).await;
            for (&partition, result) in todo.iter().zip(results) {
                match result {
                    Ok(None) => {
                        holds.partitions.insert(partition);
                    }
                    Ok(Some(why)) => waiting = Some(format!("partition {partition}: {why}")),
                    Err(e) => {
                        tracing::debug!(partition, error = %e, "partition copy failed; next round");
                        waiting = Some(format!("partition {partition}: {e}"));
                    }
                }
            }
            self.transfers.borrow_mut().held = holds.partitions.len();
        }
        {
            let mut transfers = self.transfers.borrow_mut();
            transfers.held = holds.partitions.len();
            transfers.running.clear();
            transfers.waiting = waiting;
        }
        if holds != *self.membership.borrow().holds() {
            tracing::info!(
                transition = holds.transition,
                held = holds.partitions.len(),
                receiving = receiving.len(),
                "partitions copied and verified"
            );
            self.membership.borrow_mut().set_holds(holds);
        }
    }

    /// Copy `partition` from its sources for every bucket this node receives it in, and
    /// verify each copy. `Ok(None)` when every copy verified, `Ok(Some(why))` when it has to
    /// wait (a source down, leaves still differing).
    async fn copy_partition(
        &self,
        ring: &crate::ring::Ownership,
        partition: u16,
    ) -> Result<Option<String>, Error> {
        let me = self.me();
        let buckets: Vec<(String, usize)> =
            self.store.buckets().map(|b| (b.name.clone(), b.config.n as usize)).collect();
        for (bucket, n) in buckets {
            if !ring.receives(partition, n, &me) {
                continue;
            }
            for source in ring.sources(partition, n) {
                if source == me {
                    continue;
                }
                if self.health(source) == Health::Down {
                    return Ok(Some(format!("source {source} is down")));
                }
                if !self.verify_copy(source, &bucket, partition).await? {
                    return Ok(Some(format!("leaves still differ from {source}'s")));
                }
            }
        }
        Ok(None)
    }

    /// Copy `bucket`'s `partition` from `source` and verify it, up to [`VERIFY_ATTEMPTS`]
    /// times: compare leaves; pull the entries of the segments that differ and merge them
    /// (throttled to `cluster.transfer_bytes_per_s`); when leaves still differ (this node
    /// holds something the source lacks: a write it missed), exchange both ways. Whether
    /// the leaves came out equal.
    async fn verify_copy(&self, source: &str, bucket: &str, partition: u16) -> Result<bool, Error> {
        for attempt in 0..VERIFY_ATTEMPTS {
            let theirs = self.tree_leaves_of(source, bucket, partition).await?;
            let ours = self.tree_leaves(bucket, partition).await?;
            let segments = differing(&ours, &theirs);
            if segments.is_empty() {
                return Ok(true);
            }
            self.transfers.borrow_mut().segments += segments.len() as u64;
            if attempt > 0 {
                self.exchange_partition(source, bucket, partition).await?;
                continue;
            }
            let entries = self.segment_entries_of(source, bucket, partition, &segments).await?;
            let mut bytes = 0u64;
            for (key, state) in &entries {
                match self.store.merge(bucket, key, state) {
                    Ok(_) => {}
                    // Refused (stamped too far ahead): the next comparison shows it.
                    Err(Error::BadRequest(_) | Error::KeyTooLarge(_)) => {}
                    Err(e) => return Err(e),
                }
                bytes += (key.len() + state.len()) as u64;
            }
            {
                let mut transfers = self.transfers.borrow_mut();
                transfers.keys += entries.len() as u64;
                transfers.bytes += bytes;
            }
            self.metrics().transfer(bucket, entries.len() as u64, false);
            self.throttle().await;
        }
        Ok(false)
    }

    /// Sleep until this transition's copies are back under `cluster.transfer_bytes_per_s`.
    async fn throttle(&self) {
        let Some(rate) = self.transfer_bytes_per_s else { return };
        let (bytes, started) = {
            let transfers = self.transfers.borrow();
            (transfers.bytes, transfers.started)
        };
        let Some(started) = started else { return };
        let due = std::time::Duration::from_secs_f64(bytes as f64 / rate as f64);
        if let Some(wait) = due.checked_sub(started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
    }
}
