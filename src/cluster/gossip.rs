//! # Gossip: exchanging views of the membership every round
//!
//! Every `gossip_interval_ms` this node ticks its membership state machine
//! ([`super::membership`]), sends its view to one peer (a random member, or a seed while it
//! knows too few) and merges the answer; a view a peer sends is merged the same way. The
//! view is written to the membership file when its shape changed. All decisions (who is up,
//! who owns what, whom to gossip with) are [`super::membership`]'s; this room carries them.

use super::membership::{Notice, View};
use super::{membership_file, Cluster};
use crate::rng::splitmix;

impl Cluster {
    /// Merge a view a peer sent; answer with ours.
    pub fn receive_gossip(&self, view: View) -> View {
        let notices = self.membership.borrow_mut().merge(view, self.now_ms());
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
            }
        }
    }

    /// This node's view of the membership, as it gossips it.
    pub fn view(&self) -> View {
        self.membership.borrow().view()
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
        let (view, notices) = self.membership.borrow_mut().tick(self.now_ms());
        self.log_notices(&notices);
        let random = splitmix(round ^ (self.started.elapsed().as_nanos() as u64));
        let Some(address) = self.membership.borrow().gossip_peer(&self.seeds, random) else {
            return;
        };
        let id = self.membership.borrow().id_at(&address).map(str::to_string);
        match self.gossip_with(id.as_deref(), &address, &view).await {
            Ok(theirs) => {
                self.gossiped.set(true);
                let notices = self.membership.borrow_mut().merge(theirs, self.now_ms());
                self.log_notices(&notices);
            }
            Err(e) => tracing::debug!(%address, error = %e, "gossip failed"),
        }
    }
}
