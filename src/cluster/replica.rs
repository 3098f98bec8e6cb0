//! # The replica side: what this node keeps of what peers send, and what it answers
//!
//! A state sent to this node is merged into its own copy ([`Cluster::receive_replica`]), or,
//! when it comes with a hint for another node, kept in the hint store for that node. A fetch
//! answers with the node's copy merged with every hint it holds for the key. This room owns
//! those rules; it sends nothing.
//!
//! ## What is refused
//! A peer's word is checked before anything is stored, and a refusal is `badRequest` to the
//! sender with nothing stored:
//! - a state stamped further ahead of this node's clock than `cluster.max_clock_offset_ms`
//!   ([`crate::store::Store::check_incoming`], counted in [`Cluster::states_refused`]), on
//!   both paths, replica and hint;
//! - a hint for a node that is not a current member, that owns no partition in this node's
//!   ring, or that is this node itself ([`Cluster::check_hint_owner`]): a hint is kept only
//!   for a real owner that will come back for it, never for a name a peer made up (it would
//!   never be delivered, count against the hint bounds, and show nowhere).

use std::rc::Rc;

use super::peers::{PeerReply, PeerRequest};
use super::Cluster;
use crate::error::Error;
use crate::node::wire::WriteOptions;

impl Cluster {
    /// Answer a node-to-node call carried as a value (the simulation's network): the same
    /// methods the Cap'n Proto peer API calls (src/node/server.rs). The sender is not known:
    /// its gossip proves no one.
    pub async fn serve_peer(self: &Rc<Self>, request: PeerRequest) -> Result<PeerReply, Error> {
        self.serve_peer_from(None, request).await
    }

    /// [`Cluster::serve_peer`] for a call from the member `from`, known by the channel it
    /// came by (the simulation's network knows who sends): its gossip goes through
    /// [`Cluster::receive_gossip_from`].
    pub async fn serve_peer_from(
        self: &Rc<Self>,
        from: Option<&str>,
        request: PeerRequest,
    ) -> Result<PeerReply, Error> {
        Ok(match request {
            PeerRequest::Replicate { bucket, key, state, sync, hint_for } => {
                self.receive_replica_synced(&bucket, &key, &state, &hint_for, sync).await?;
                PeerReply::Stored(true)
            }
            PeerRequest::Fetch { bucket, key } => {
                PeerReply::State(self.fetch_for_peer(&bucket, &key)?)
            }
            PeerRequest::Gossip(view) => PeerReply::View(match from {
                Some(from) => self.receive_gossip_from(from, view),
                None => self.receive_gossip(view),
            }),
            PeerRequest::TreeLeaves { bucket, partition } => {
                PeerReply::Leaves(self.tree_leaves(&bucket, partition).await?)
            }
            PeerRequest::SegmentEntries { bucket, partition, segments } => {
                PeerReply::Entries(self.segment_entries(&bucket, partition, &segments).await?)
            }
            PeerRequest::Forward { bucket, key, write, options } => {
                let options = WriteOptions { forwarded: true, ..options };
                PeerReply::Written(self.write(&bucket, &key, write, options).await?)
            }
        })
    }

    /// The merge of every hint this node holds for a key, whatever its owner.
    pub(super) fn hinted_state(&self, bucket: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let owners = self.hints.counts();
        if owners.is_empty() {
            return Ok(None);
        }
        let resolver = std::sync::Arc::clone(&self.store.bucket(bucket)?.resolver);
        let mut state: Option<Vec<u8>> = None;
        for owner in owners.keys() {
            if let Some(hinted) = self.hints.get(owner, bucket, key)? {
                state = Some(match state {
                    Some(current) => resolver.merge(&current, &hinted)?,
                    None => hinted,
                });
            }
        }
        Ok(state)
    }

    /// Whether a state sent with `hint_for` is this node's own replica (not a hint it keeps
    /// for another node): no hint named. A hint naming this node itself is refused by
    /// [`Cluster::check_hint_owner`].
    pub(super) fn is_own_replica(&self, hint_for: &str) -> bool {
        hint_for.is_empty()
    }

    /// Refuse (`badRequest`) to keep a hint for `owner` unless it is a current member, other
    /// than this node, that owns at least one partition in this node's ring. Every hint
    /// path checks it: a peer's `replicate`, a local read repair, a write kept as a hint.
    pub fn check_hint_owner(&self, owner: &str) -> Result<(), Error> {
        let membership = self.membership.borrow();
        let refuse =
            |why: &str| Err(Error::BadRequest(format!("no hint is kept for {owner:?}: {why}")));
        if owner == membership.me() {
            refuse("that is this node")
        } else if !membership.is_member(owner) {
            refuse("it is not a member")
        } else if membership.ring().owned_by(owner) == 0 {
            refuse("it owns no partition")
        } else {
            Ok(())
        }
    }

    /// States from peers this node refused for being stamped too far ahead of its clock
    /// (see [`crate::store::Store::check_incoming`]), since it started.
    pub fn states_refused(&self) -> u64 {
        self.store.states_refused()
    }

    /// Take in a state as [`Cluster::receive_replica`] does, then, when `sync`, wait until
    /// the engine that took it (the bucket's, or the hint store's) has synced it.
    pub async fn receive_replica_synced(
        &self,
        bucket: &str,
        key: &[u8],
        state: &[u8],
        hint_for: &str,
        sync: bool,
    ) -> Result<(), Error> {
        self.receive_replica(bucket, key, state, hint_for)?;
        if sync {
            let engine = if self.is_own_replica(hint_for) {
                std::sync::Arc::clone(&self.store.bucket(bucket)?.engine)
            } else {
                std::sync::Arc::clone(self.hints.engine())
            };
            self.sync_engine(&engine).await?;
        }
        Ok(())
    }

    /// Take in a state from a peer: as a replica, or as a hint for `hint_for`.
    pub fn receive_replica(
        &self,
        bucket: &str,
        key: &[u8],
        state: &[u8],
        hint_for: &str,
    ) -> Result<(), Error> {
        if self.is_own_replica(hint_for) {
            self.store.merge(bucket, key, state)?;
            // A copy of a key this node no longer replicates (a hint or a repair sent by a
            // node whose ring is older): hand it on rather than keep a stray copy.
            self.note_if_stray(bucket, key);
        } else {
            self.check_hint_owner(hint_for)?;
            self.store.check_key(key)?;
            self.store.check_incoming(bucket, state)?;
            let resolver = std::sync::Arc::clone(&self.store.bucket(bucket)?.resolver);
            resolver.read(state)?;
            self.hints.add(hint_for, bucket, key, state, &*resolver)?;
        }
        Ok(())
    }

    /// The node's own state for a key as a peer asks for it: stored, merged with hints this
    /// node holds for the key for any owner.
    pub fn fetch_for_peer(&self, bucket: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let stored = self.store.fetch(bucket, key)?;
        Ok(match (stored, self.hinted_state(bucket, key)?) {
            (Some(a), Some(b)) => Some(self.store.bucket(bucket)?.resolver.merge(&a, &b)?),
            (a, b) => a.or(b),
        })
    }
}
