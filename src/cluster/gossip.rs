//! # Gossip: exchanging views of the membership every round
//!
//! Every `gossip_interval_ms` this node ticks its membership state machine
//! ([`super::membership`]), sends its view to one peer (a random member, or a seed while it
//! knows too few) and merges the answer; a view a peer sends is merged the same way. The
//! same round also sends the view to a few members this node has not proven yet
//! ([`Membership::probes`](super::membership::Membership::probes)): an answer that names the
//! member at the address dialled proves it, and only proven members are given partitions.
//! The view is written to the membership file when its shape changed. All decisions (who is
//! up, who owns what, whom to gossip with, which views and rings to refuse) are
//! [`super::membership`]'s; this room carries them and logs what they noticed.
//!
//! The revoked client tokens travel in the view too: [`Cluster::revoke_token`] adds one and
//! writes the membership file at once, [`Cluster::is_token_revoked`] is one set lookup.

use super::membership::{Notice, View};
use super::{membership_file, Cluster};
use crate::error::Error;
use crate::rng::splitmix;

impl Cluster {
    /// Merge a view a peer sent, the sender unknown (it proves no one); answer with ours.
    pub fn receive_gossip(&self, view: View) -> View {
        let notices = self.membership.borrow_mut().merge(view, self.now_ms());
        self.log_notices(&notices);
        self.membership.borrow().view()
    }

    /// Merge a view that the member `from` sent; answer with ours. `from` must be the
    /// sender's authenticated identity (the certificate or connection it came by), never a
    /// name the message itself claims: if the view names `from`, that proves `from` to this
    /// node ("it gossiped to us naming itself"), which lets the claimant give it partitions,
    /// and brings it back if it was forgotten.
    pub fn receive_gossip_from(&self, from: &str, view: View) -> View {
        let notices = self.membership.borrow_mut().merge_from(from, view, self.now_ms());
        self.log_notices(&notices);
        self.membership.borrow().view()
    }

    pub(super) fn log_notices(&self, notices: &[Notice]) {
        for notice in notices {
            match notice {
                Notice::Joined(id) => tracing::info!(member = %id, "member joined"),
                Notice::RingChanged(epoch) => tracing::info!(epoch, "ring changed"),
                Notice::ConfigMismatch(id) => tracing::error!(
                    member = %id,
                    "BUCKET CONFIGURATION DIFFERS between this node and {id}: fix the config files"
                ),
                Notice::RingRefused { epoch, reason } => {
                    tracing::warn!(epoch, %reason, "a gossiped ring was refused")
                }
                Notice::MemberRefused { id, reason } => {
                    tracing::warn!(member = %id, %reason, "a gossiped member entry was refused")
                }
                Notice::Forgotten(id) => {
                    tracing::info!(member = %id, "member forgotten: never reached, owns nothing")
                }
                Notice::RevokedTokensFull { refused } => tracing::error!(
                    refused,
                    "revoked tokens from a peer were not taken (malformed, or over the limit): \
                     tokens other nodes refuse may still work here"
                ),
                Notice::EpochExhausted => tracing::error!(
                    "the ring epoch is at its maximum: this node cannot rebalance the ring"
                ),
            }
        }
    }

    /// This node's view of the membership, as it gossips it.
    pub fn view(&self) -> View {
        self.membership.borrow().view()
    }

    /// Add a client token id (16 lowercase hex digits) to the cluster's revoked set, and
    /// write the membership file at once so that the revocation survives a restart; gossip
    /// carries it to the other nodes. Revoking a revoked token again is `Ok`.
    ///
    /// [`Error::BadRequest`] for a malformed id or a full set; [`Error::Internal`] when the
    /// file could not be written (the token is revoked on this node and gossiped, and the
    /// next gossip round tries the write again). The write blocks the calling thread for one
    /// small file and its fsync: revocation is a rare administrative call.
    pub fn revoke_token(&self, id: &str) -> Result<(), Error> {
        let added = self.membership.borrow_mut().revoke_token(id)?;
        let Some(path) = self.membership_file.as_deref() else { return Ok(()) };
        if !added {
            return Ok(());
        }
        let view = self.membership.borrow().view();
        membership_file::save(path, &view).map_err(|e| {
            Error::Internal(format!(
                "token {id} is revoked, but the membership file could not be written ({e}); \
                 it is retried every gossip round"
            ))
        })?;
        *self.saved_shape.borrow_mut() = Some(membership_file::shape(&view));
        Ok(())
    }

    /// Whether the client token `id` was revoked anywhere in the cluster (as far as gossip
    /// has told this node): one set lookup, for every client request.
    pub fn is_token_revoked(&self, id: &str) -> bool {
        self.membership.borrow().is_token_revoked(id)
    }

    /// Write the view to the membership file when its shape changed since the last write.
    /// Called every gossip round and at a clean stop.
    pub async fn save_membership(&self) {
        let Some(path) = self.membership_file.clone() else { return };
        let view = self.membership.borrow().view();
        let shape = membership_file::shape(&view);
        if self.saved_shape.borrow().as_ref() == Some(&shape) {
            return;
        }
        match tokio::task::spawn_blocking(move || membership_file::save(&path, &view)).await {
            Ok(Ok(())) => *self.saved_shape.borrow_mut() = Some(shape),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the membership file"),
            Err(e) => tracing::warn!(error = %e, "membership file task failed"),
        }
    }

    pub(super) async fn gossip_round(&self, round: u64) {
        self.save_membership().await;
        let data_bytes = self.store.buckets().map(|b| b.engine.stats().live_bytes).sum();
        self.membership.borrow_mut().set_data_bytes(data_bytes);
        let ticked = self.membership.borrow_mut().tick(self.now_ms());
        let (view, notices) = match ticked {
            Ok(ticked) => ticked,
            Err(e) => {
                tracing::error!(error = %e, "this node cannot gossip any more: restart it");
                return;
            }
        };
        self.log_notices(&notices);
        let random = splitmix(round ^ (self.started.elapsed().as_nanos() as u64));
        let mut exchanges: Vec<(Option<String>, String)> = Vec::new();
        {
            let membership = self.membership.borrow();
            if let Some(address) = membership.gossip_peer(&self.seeds, random) {
                exchanges.push((membership.id_at(&address).map(str::to_string), address));
            }
            let probe = membership.recovery_probe(random);
            for (id, address) in membership.probes().into_iter().chain(probe) {
                if exchanges.iter().all(|(_, a)| *a != address) {
                    exchanges.push((Some(id), address));
                }
            }
        }
        let view = &view;
        let exchanges = exchanges.into_iter().map(|(id, a)| self.exchange_views(id, a, view));
        futures::future::join_all(exchanges).await;
    }

    /// Send `view` to the node at `address` (member `id`, or a seed not yet known by id) and
    /// merge its answer. The answer's entry at `address` is the node that answered: a
    /// direct exchange, which proves it.
    async fn exchange_views(&self, id: Option<String>, address: String, view: &View) {
        match self.gossip_with(id.as_deref(), &address, view).await {
            Ok(theirs) => {
                self.gossiped.set(true);
                let answerer = theirs.members.iter().find(|m| m.address == address);
                let answerer = answerer.map(|m| m.id.clone());
                let now = self.now_ms();
                let notices = match answerer {
                    Some(answerer) => {
                        self.membership.borrow_mut().merge_from(&answerer, theirs, now)
                    }
                    None => self.membership.borrow_mut().merge(theirs, now),
                };
                self.log_notices(&notices);
            }
            Err(e) => tracing::debug!(%address, error = %e, "gossip failed"),
        }
    }
}
