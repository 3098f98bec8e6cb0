//! # The cluster shell: replicas, quorum, gossip and hints over RPC
//!
//! This module is the I/O around the pure parts: [`crate::membership`] decides who is up and
//! who owns what, [`crate::quorum`] decides when a request is done, [`crate::store`] does the
//! local half. Everything here runs on the node's one RPC thread.
//!
//! ## A write (DESIGN §2)
//! 1. The key's preference list comes from the ring; its first N nodes are the primaries.
//!    A primary this node sees down is replaced by the next healthy node past the first N,
//!    which gets the write with a hint naming the primary (sloppy quorum).
//! 2. [`plan_write`] decides who coordinates. A primary coordinates on its own copy, with its
//!    replica actor. A node that is not one of the primaries forwards the write to the first
//!    one it sees up (once: the forwarded request is marked and never forwarded again).
//!    When no primary is up, or a forwarded write reached a node that no longer is a primary,
//!    the node coordinates with its hint actor on the hints it holds for the key, and keeps
//!    the new state only as a hint, never as a stray copy in the bucket's engine; when it is
//!    itself a fallback target that hint counts toward W like any other fallback's, so the
//!    cluster stays writeable while W nodes are up. Why this never issues a dot twice:
//!    [`crate::actors`].
//! 3. The coordinator applies the write and keeps the new state before it yields, sends the
//!    state to the other targets (`replicate`), and answers once W stored it and DW synced
//!    it, or with `quorumNotMet` as soon as that can no longer happen, or `timeout`. The
//!    replication RPCs go on after the answer, so every reachable target gets the write.
//!
//! ## A read
//! Any node coordinates a read: it fetches the state from the N targets, answers once R have
//! answered with the merge of what they sent, and then, in the background, waits for the
//! rest (up to the timeout) and sends the merge of everything to each replica that answered
//! with something else or nothing (read repair).
//!
//! ## Background rounds
//! Every `gossip_interval_ms`: exchange views with one peer; deliver up to
//! `hint_replay_per_round` hints to each owner that is up again; and hand off partitions
//! after a ring change (below).
//!
//! ## Ownership handoff
//! A key's replicas are the first N nodes of its partition's preference list, so a ring
//! change moves whole partitions. After one, each node walks the (bucket, partition) pairs it
//! holds data for, about `hint_replay_per_round` keys per round:
//! - a partition this node no longer is a primary of is sent, key by key, to all its new
//!   primaries; once every one of them stored a key, the local copy is deleted, unless a
//!   write changed it meanwhile (then it goes again next pass); a deleted copy that holds
//!   writes of this node's current replica actor makes it take a new epoch;
//! - a partition it still is a primary of is sent to the primaries that are new since the
//!   ring this node had before (known only for changes seen since it started).
//!
//! Anti-entropy (see [`crate::antientropy`]) compares `anti_entropy_partitions_per_round`
//! partitions per round, each with one other up primary, and merges the segments that differ
//! on both sides.
//!
//! A partition whose targets are not all up waits for a later round. Until a partition is
//! handed off, reads still find its data: the old holders answer the coordinators that ask
//! them, and read repair copies what a new primary lacks.
//!
//! ## Peer connections
//! One Cap'n Proto connection per peer address, opened on first use and dropped on the first
//! failure (the next use reconnects). Each RPC outcome feeds the failure detector.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

use capnp_rpc::{rpc_twoparty_capnp, RpcSystem};
use cartwheel_resolvers::{Read, Write};
use futures::StreamExt;
use tokio::net::TcpStream;

use crate::antientropy::{self, Leaves};
use crate::cartwheel_capnp::{cartwheel, fetch_result, peer, replica_result, NodeState};
use crate::config::Config;
use crate::error::Error;
use crate::hints::Hints;
use crate::membership::{Health, MemberInfo, Membership, Notice, Timing, View};
use crate::membership_file;
use crate::quorum::{Outcome, ReadQuorum, WriteQuorum};
use crate::ring::{key_hash, partition_of, Ownership};
use crate::store::{Entry, Store};
use crate::wire::{self, ReadOptions, WriteOptions};

/// How long a peer connection attempt may take.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 1_000;

/// One replica a request goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The node's id.
    pub id: String,
    /// The primary this node stands in for, when it is a fallback.
    pub hint_for: Option<String>,
}

/// Choose the targets for a key: the first `n` nodes of the preference list, each one this
/// node sees down replaced by the next healthy node past them, with a hint. Pure.
pub fn plan_targets(preference: &[&str], n: usize, health: impl Fn(&str) -> Health) -> Vec<Target> {
    let n = n.min(preference.len());
    let mut fallbacks = preference[n..].iter().filter(|id| health(id) != Health::Down);
    preference[..n]
        .iter()
        .map(|primary| match health(primary) {
            Health::Down => match fallbacks.next() {
                Some(fallback) => {
                    Target { id: fallback.to_string(), hint_for: Some(primary.to_string()) }
                }
                None => Target { id: primary.to_string(), hint_for: None },
            },
            Health::Up | Health::Suspect => Target { id: primary.to_string(), hint_for: None },
        })
        .collect()
}

/// How this node takes a client write, decided from the key's targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WritePlan {
    /// This node is one of the key's primaries: it coordinates, with its replica actor, on
    /// its own copy.
    Coordinate,
    /// Forward the write to this primary, which coordinates it.
    Forward(String),
    /// No primary can take it here (none is up, or the write was forwarded once already):
    /// coordinate with the hint actor on the hints this node holds for the key, and keep the
    /// new state as a hint for `owner`, never in the bucket's engine. It counts toward W when
    /// this node is one of the targets (a fallback standing in for `owner`).
    CoordinateAsHint {
        /// The primary the hint is kept for.
        owner: String,
        /// Whether this node is a target, so its hint counts toward W.
        counts: bool,
    },
}

/// Decide how `me` takes a write whose targets are `targets` ([`plan_targets`]). Pure.
///
/// Dot-issuing writes must be coordinated where the actor's history of the key is complete
/// ([`crate::actors`]): a primary, on its own copy, or any node on its own hints with its hint
/// actor. A node that is neither forwards to the first primary it sees up.
pub fn plan_write(
    me: &str,
    targets: &[Target],
    forwarded: bool,
    health: impl Fn(&str) -> Health,
) -> Option<WritePlan> {
    if targets.iter().any(|t| t.id == me && t.hint_for.is_none()) {
        return Some(WritePlan::Coordinate);
    }
    if !forwarded {
        let up = targets.iter().find(|t| t.hint_for.is_none() && health(&t.id) == Health::Up);
        if let Some(primary) = up {
            return Some(WritePlan::Forward(primary.id.clone()));
        }
    }
    if let Some(owner) = targets.iter().find(|t| t.id == me).and_then(|t| t.hint_for.clone()) {
        return Some(WritePlan::CoordinateAsHint { owner, counts: true });
    }
    let first = targets.first()?;
    let owner = first.hint_for.clone().unwrap_or_else(|| first.id.clone());
    Some(WritePlan::CoordinateAsHint { owner, counts: false })
}

/// A connection to one peer: its client API (for forwarding) and its peer API.
#[derive(Clone)]
struct PeerConnection {
    api: cartwheel::Client,
    peer: peer::Client,
}

/// The node's cluster state, shared by every connection on the RPC thread.
pub struct Cluster {
    /// The local store.
    pub store: Store,
    /// The hint store.
    pub hints: Hints,
    membership: RefCell<Membership>,
    connections: RefCell<HashMap<String, PeerConnection>>,
    seeds: Vec<String>,
    started: Instant,
    gossip_interval: Duration,
    hint_replay_per_round: usize,
    handoff: RefCell<Handoff>,
    anti_entropy_per_round: usize,
    /// Index into the (bucket, partition) pairs of the next anti-entropy exchange.
    anti_entropy_cursor: std::cell::Cell<usize>,
    /// dw > 0 waits: one blocking sync at a time per engine.
    syncs: crate::sync_group::SyncGroups,
    /// Where the view is kept across restarts ([`crate::membership_file`]).
    membership_file: std::path::PathBuf,
    /// The shape of the view last written there.
    saved_shape: RefCell<Option<membership_file::Shape>>,
}

/// Progress of ownership handoff after a ring change.
#[derive(Debug, Default)]
struct Handoff {
    /// The ring the pending work was planned for.
    ring: Option<Ownership>,
    /// The ring before it, if this node saw the change.
    previous: Option<Ownership>,
    /// (bucket, partition) pairs still to walk.
    pending: std::collections::VecDeque<(String, u16)>,
}

impl Cluster {
    /// Build the cluster state for a node whose store is open, listening at `address`.
    pub fn new(
        config: &Config,
        store: Store,
        hints: Hints,
        address: &str,
        config_digest: Vec<u8>,
    ) -> Self {
        let me = MemberInfo {
            id: config.node.id.clone(),
            address: address.to_string(),
            incarnation: incarnation(),
            heartbeat: 0,
            leaving: false,
            config_digest,
        };
        let target_n = config.buckets.values().map(|b| b.n as usize).max().unwrap_or(3);
        let timing = Timing::for_interval(config.cluster.gossip_interval_ms);
        let mut membership = Membership::new(me, config.partitions, target_n, timing, 0);
        let membership_file = membership_file::path(&config.node.data_dir);
        let mut saved_shape = None;
        match membership_file::load(&membership_file) {
            Ok(Some(view)) => {
                saved_shape = Some(membership_file::shape(&view));
                let members = view.members.len();
                membership.merge(view, 0);
                tracing::info!(members, epoch = membership.ring().epoch, "membership restored");
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "membership file ignored; starting as a new node"),
        }
        Self {
            store,
            hints,
            membership: RefCell::new(membership),
            connections: RefCell::new(HashMap::new()),
            seeds: config.node.seeds.clone(),
            started: Instant::now(),
            gossip_interval: Duration::from_millis(config.cluster.gossip_interval_ms),
            hint_replay_per_round: config.cluster.hint_replay_per_round,
            handoff: RefCell::new(Handoff::default()),
            anti_entropy_per_round: config.cluster.anti_entropy_partitions_per_round,
            anti_entropy_cursor: std::cell::Cell::new(0),
            syncs: crate::sync_group::SyncGroups::default(),
            membership_file,
            saved_shape: RefCell::new(saved_shape),
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// This node's id.
    pub fn me(&self) -> String {
        self.membership.borrow().me().to_string()
    }

    /// The current ring.
    pub fn ring(&self) -> Ownership {
        self.membership.borrow().ring().clone()
    }

    /// Members with their health, as this node sees them.
    pub fn members(&self) -> Vec<(MemberInfo, Health)> {
        self.membership.borrow().members(self.now_ms())
    }

    /// Members whose bucket configuration differs from this node's.
    pub fn config_mismatches(&self) -> Vec<String> {
        self.membership.borrow().config_mismatches()
    }

    /// Merge a view a peer sent; answer with ours.
    pub fn receive_gossip(&self, view: View) -> View {
        let notices = self.membership.borrow_mut().merge(view, self.now_ms());
        self.log_notices(&notices);
        self.membership.borrow().view()
    }

    fn log_notices(&self, notices: &[Notice]) {
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

    fn targets(&self, bucket: &str, key: &[u8], n: usize) -> Vec<Target> {
        let membership = self.membership.borrow();
        let ring = membership.ring();
        let partition = partition_of(key_hash(bucket, key), ring.partitions());
        let preference = ring.preference_list(partition, membership.member_count());
        let now = self.now_ms();
        plan_targets(&preference, n, |id| membership.health(id, now))
    }

    fn health(&self, id: &str) -> Health {
        self.membership.borrow().health(id, self.now_ms())
    }

    // -----------------------------------------------------------------------------------------
    // Writes

    /// Coordinate (or forward) a client write. See the module documentation.
    pub async fn write(
        self: &Rc<Self>,
        bucket: &str,
        key: &[u8],
        write: Write,
        options: WriteOptions,
    ) -> Result<Read, Error> {
        let config = self.store.bucket(bucket)?.config.clone();
        self.store.check_key(key)?;
        let n = config.n as usize;
        let w = if options.w == 0 { config.w } else { options.w } as usize;
        let dw = options.dw.unwrap_or(config.dw) as usize;
        if w > n {
            return Err(Error::BadRequest(format!("w = {w} is over the bucket's n = {n}")));
        }
        if dw > w {
            return Err(Error::BadRequest(format!("dw = {dw} is over w = {w}")));
        }
        let engine = std::sync::Arc::clone(&self.store.bucket(bucket)?.engine);
        if dw > 0 && !engine.is_durable() {
            return Err(Error::BadRequest(format!(
                "dw = {dw} on bucket {bucket:?}, whose {} engine keeps nothing across restarts",
                engine.kind()
            )));
        }
        let me = self.me();
        let targets = self.targets(bucket, key, n);
        // A small cluster has fewer replicas than N: W and DW count what exists.
        let (w, dw) = (w.min(targets.len()), dw.min(targets.len()));
        let plan = plan_write(&me, &targets, options.forwarded, |id| self.health(id))
            .ok_or_else(|| Error::QuorumNotMet("no member is known to own the key".into()))?;
        let timeout = self.timeout(options.timeout_ms);
        let mut quorum = WriteQuorum::new(targets.len().max(1), w, dw);
        let (events, mut answers) = futures::channel::mpsc::unbounded::<bool>();
        // Apply the write and keep the new state on this node before anything yields, so no
        // other write to the key reads the state in between (crate::actors).
        let (state, read) = match plan {
            WritePlan::Forward(primary) => {
                return self.forward(&primary, bucket, key, &write, options).await
            }
            WritePlan::Coordinate => {
                let (state, read) = self.store.write(bucket, key, &write)?;
                if dw > 0 {
                    self.sync_then_answer(&engine, &events);
                } else {
                    quorum.stored(false);
                }
                (state, read)
            }
            WritePlan::CoordinateAsHint { owner, counts } => {
                let hinted = self.hinted_state(bucket, key)?;
                let (state, read) =
                    self.store.write_as_hint(bucket, key, hinted.as_deref(), &write)?;
                let resolver = std::sync::Arc::clone(&self.store.bucket(bucket)?.resolver);
                self.hints.add(&owner, bucket, key, &state, &*resolver)?;
                if counts && dw > 0 {
                    self.sync_then_answer(self.hints.engine(), &events);
                } else if counts {
                    quorum.stored(false);
                }
                (state, read)
            }
        };
        for target in targets.into_iter().filter(|t| t.id != me) {
            let cluster = Rc::clone(self);
            let events = events.clone();
            let (bucket, key, state) = (bucket.to_string(), key.to_vec(), state.clone());
            tokio::task::spawn_local(async move {
                let stored = cluster.replicate(&target, &bucket, &key, &state, dw > 0).await;
                let _ = events.unbounded_send(stored);
            });
        }
        drop(events);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match quorum.outcome() {
                Outcome::Succeeded => return Ok(read),
                Outcome::Failed => {
                    return Err(Error::QuorumNotMet(format!(
                        "{} of w = {w} (dw = {dw}) replicas stored the write",
                        quorum.stored_count()
                    )))
                }
                Outcome::Pending => {}
            }
            match tokio::time::timeout_at(deadline, answers.next()).await {
                Err(_) => return Err(Error::Timeout(format!("no quorum within {timeout:?}"))),
                Ok(None) => {
                    return Err(Error::QuorumNotMet(
                        "every replica answered; too few stored".into(),
                    ))
                }
                Ok(Some(true)) => {
                    quorum.stored(dw > 0);
                }
                Ok(Some(false)) => {
                    quorum.failed();
                }
            }
        }
    }

    /// Sync `engine` (shared with other waiting writes), then report the outcome on `events`.
    fn sync_then_answer(
        self: &Rc<Self>,
        engine: &std::sync::Arc<dyn cartwheel_engines::StorageEngine>,
        events: &futures::channel::mpsc::UnboundedSender<bool>,
    ) {
        let (cluster, engine, events) =
            (Rc::clone(self), std::sync::Arc::clone(engine), events.clone());
        tokio::task::spawn_local(async move {
            let synced = cluster.syncs.sync(&engine).await;
            let _ = events.unbounded_send(synced.is_ok());
        });
    }

    /// The merge of every hint this node holds for a key, whatever its owner.
    fn hinted_state(&self, bucket: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
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
    /// for another node).
    fn is_own_replica(&self, hint_for: &str) -> bool {
        hint_for.is_empty() || hint_for == self.me()
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
            self.syncs.sync(&engine).await?;
        }
        Ok(())
    }

    /// Send a state to one target; true once it stored it. Feeds the failure detector.
    async fn replicate(
        &self,
        target: &Target,
        bucket: &str,
        key: &[u8],
        state: &[u8],
        sync: bool,
    ) -> bool {
        let Some(address) = self.membership.borrow().address_of(&target.id).map(str::to_string)
        else {
            return false;
        };
        let outcome = async {
            let connection = self.connect(&address).await?;
            let mut request = connection.peer.replicate_request();
            {
                let mut p = request.get();
                p.set_bucket(bucket);
                p.set_key(key);
                p.set_state(state);
                p.set_sync(sync);
                p.set_hint_for(target.hint_for.as_deref().unwrap_or(""));
            }
            let response = request.send().promise.await?;
            match response
                .get()?
                .get_result()?
                .which()
                .map_err(|e| Error::Transport(e.to_string()))?
            {
                replica_result::Stored(stored) => Ok(stored),
                replica_result::Error(e) => Err(wire::get_error(e?)),
            }
        }
        .await;
        self.record(&target.id, &address, &outcome);
        matches!(outcome, Ok(true))
    }

    /// Forward a write to `primary`, marked so it is not forwarded again.
    async fn forward(
        &self,
        primary: &str,
        bucket: &str,
        key: &[u8],
        write: &Write,
        options: WriteOptions,
    ) -> Result<Read, Error> {
        let address = self.membership.borrow().address_of(primary).map(str::to_string);
        let address =
            address.ok_or_else(|| Error::Internal(format!("no address for {primary}")))?;
        let connection = self.connect(&address).await;
        let outcome = match connection {
            Ok(connection) => {
                let client =
                    crate::client::Client::from_capability(connection.api, address.clone());
                let options = WriteOptions { forwarded: true, ..options };
                match write {
                    Write::Put { value, context } => {
                        client.put_with(bucket, key, value, context, &options).await
                    }
                    Write::Delete { context } => {
                        client.delete_with(bucket, key, context, &options).await
                    }
                    Write::Update { ops, context } => {
                        client.update(bucket, key, ops, context, &options).await
                    }
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e @ (Error::Transport(_) | Error::Connect { .. })) = &outcome {
            self.record::<()>(primary, &address, &Err(e.clone()));
        }
        outcome
    }

    // -----------------------------------------------------------------------------------------
    // Reads

    /// Coordinate a read: R answers, merged; then read repair in the background.
    pub async fn read(
        self: &Rc<Self>,
        bucket: &str,
        key: &[u8],
        options: ReadOptions,
    ) -> Result<Option<Read>, Error> {
        let bucket_ref = self.store.bucket(bucket)?;
        let (n, resolver) =
            (bucket_ref.config.n as usize, std::sync::Arc::clone(&bucket_ref.resolver));
        let r = if options.r == 0 { bucket_ref.config.r } else { options.r } as usize;
        if r > n {
            return Err(Error::BadRequest(format!("r = {r} is over the bucket's n = {n}")));
        }
        self.store.check_key(key)?;
        let targets = self.targets(bucket, key, n);
        let r = r.min(targets.len());
        let timeout = self.timeout(options.timeout_ms);
        let (reply, replied) =
            futures::channel::oneshot::channel::<Result<Option<Vec<u8>>, Error>>();
        let cluster = Rc::clone(self);
        let (bucket_name, key) = (bucket.to_string(), key.to_vec());
        tokio::task::spawn_local(async move {
            cluster.read_and_repair(targets, r, &bucket_name, &key, timeout, reply).await;
        });
        let merged = match replied.await {
            Ok(result) => result?,
            Err(_) => return Err(Error::Internal("read task ended without an answer".into())),
        };
        match merged {
            None => Ok(None),
            Some(state) => Ok(Some(resolver.read(&state)?)),
        }
    }

    async fn read_and_repair(
        self: Rc<Self>,
        targets: Vec<Target>,
        r: usize,
        bucket: &str,
        key: &[u8],
        timeout: Duration,
        reply: futures::channel::oneshot::Sender<Result<Option<Vec<u8>>, Error>>,
    ) {
        let Ok(resolver) = self.store.bucket(bucket).map(|b| std::sync::Arc::clone(&b.resolver))
        else {
            let _ = reply.send(Err(Error::UnknownBucket(bucket.to_string())));
            return;
        };
        let me = self.me();
        let mut quorum: ReadQuorum<Target> = ReadQuorum::new(targets.len(), r);
        let mut pending = futures::stream::FuturesUnordered::new();
        for target in targets {
            let cluster = Rc::clone(&self);
            let me = me.clone();
            pending.push(async move {
                let answer = if target.id == me {
                    cluster.fetch_local(&target, bucket, key)
                } else {
                    cluster.fetch_remote(&target, bucket, key).await
                };
                (target, answer)
            });
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut reply = Some(reply);
        let merge = |a: &[u8], b: &[u8]| resolver.merge(a, b);
        while !quorum.complete() {
            let Ok(Some((target, answer))) =
                tokio::time::timeout_at(deadline, pending.next()).await
            else {
                break;
            };
            match answer {
                Ok(state) => quorum.answered(target, state),
                Err(_) => quorum.failed(),
            };
            if reply.is_some() {
                let decided = match quorum.outcome() {
                    Outcome::Pending => None,
                    Outcome::Succeeded => Some(quorum.merged(merge).map_err(Error::from)),
                    Outcome::Failed => Some(Err(Error::QuorumNotMet(format!(
                        "fewer than r = {r} replicas answered"
                    )))),
                };
                if let Some(result) = decided {
                    let _ = reply.take().expect("checked").send(result);
                }
            }
        }
        if let Some(reply) = reply {
            let _ = reply.send(Err(Error::Timeout(format!(
                "fewer than r = {r} replicas answered within {timeout:?}"
            ))));
        }
        // Read repair: everyone who answered with something other than the merge gets it.
        let Ok(Some(merged)) = quorum.merged(merge) else { return };
        for target in quorum.stale(&merged) {
            if target.id == me {
                // A fallback's repair goes to its hint, never into a stray copy.
                let hint_for = target.hint_for.as_deref().unwrap_or("");
                if let Err(e) = self.receive_replica(bucket, key, &merged, hint_for) {
                    tracing::warn!(error = %e, "local read repair failed");
                }
            } else {
                tracing::debug!(replica = %target.id, "read repair");
                self.replicate(&target, bucket, key, &merged, false).await;
            }
        }
    }

    /// The local state for a key (merged with any hint this node holds for it when it stands
    /// in for `target.hint_for`).
    fn fetch_local(
        &self,
        target: &Target,
        bucket: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        let stored = self.store.fetch(bucket, key)?;
        match &target.hint_for {
            None => Ok(stored),
            Some(owner) => {
                let hinted = self.hints.get(owner, bucket, key)?;
                let resolver = &self.store.bucket(bucket)?.resolver;
                Ok(match (stored, hinted) {
                    (Some(a), Some(b)) => Some(resolver.merge(&a, &b)?),
                    (a, b) => a.or(b),
                })
            }
        }
    }

    async fn fetch_remote(
        &self,
        target: &Target,
        bucket: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        let address = self.membership.borrow().address_of(&target.id).map(str::to_string);
        let address =
            address.ok_or_else(|| Error::Internal(format!("no address for {}", target.id)))?;
        let outcome = async {
            let connection = self.connect(&address).await?;
            let mut request = connection.peer.fetch_request();
            request.get().set_bucket(bucket);
            request.get().set_key(key);
            let response = request.send().promise.await?;
            match response
                .get()?
                .get_result()?
                .which()
                .map_err(|e| Error::Transport(e.to_string()))?
            {
                fetch_result::NotFound(()) => Ok(None),
                fetch_result::State(state) => Ok(Some(state?.to_vec())),
                fetch_result::Error(e) => Err(wire::get_error(e?)),
            }
        }
        .await;
        self.record(&target.id, &address, &outcome);
        outcome
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
        } else {
            self.store.check_key(key)?;
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

    // -----------------------------------------------------------------------------------------
    // Background rounds

    /// Run gossip and hint delivery rounds forever (until the task is dropped).
    pub async fn run_rounds(self: Rc<Self>) {
        let mut interval = tokio::time::interval(self.gossip_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut round: u64 = 0;
        loop {
            interval.tick().await;
            round += 1;
            self.gossip_round(round).await;
            self.deliver_hints().await;
            self.handoff_round().await;
            self.anti_entropy_round(round).await;
        }
    }

    /// The anti-entropy leaves of one partition of a bucket on this node.
    pub fn tree_leaves(&self, bucket: &str, partition: u16) -> Result<Leaves, Error> {
        let entries = self.store.partition_entries(bucket, partition)?;
        Ok(antientropy::leaves(entries.iter().map(|(k, s)| (k.as_slice(), s.as_slice()))))
    }

    /// This node's (key, state) pairs in some segments of a partition.
    pub fn segment_entries(
        &self,
        bucket: &str,
        partition: u16,
        segments: &[u16],
    ) -> Result<Vec<Entry>, Error> {
        let mut entries = self.store.partition_entries(bucket, partition)?;
        entries.retain(|(key, _)| segments.contains(&antientropy::segment_of(key)));
        Ok(entries)
    }

    /// Compare a few partitions with another primary and merge what differs, both ways.
    async fn anti_entropy_round(&self, round: u64) {
        let ring = self.ring();
        let buckets: Vec<(String, usize)> =
            self.store.buckets().map(|b| (b.name.clone(), b.config.n as usize)).collect();
        let pairs = buckets.len() * ring.partitions() as usize;
        if pairs == 0 {
            return;
        }
        let me = self.me();
        let limit = self.membership.borrow().member_count();
        let mut compared = 0;
        for _ in 0..pairs {
            if compared >= self.anti_entropy_per_round {
                break;
            }
            let at = self.anti_entropy_cursor.get() % pairs;
            self.anti_entropy_cursor.set(at + 1);
            let (bucket, n) = &buckets[at / ring.partitions() as usize];
            let partition = (at % ring.partitions() as usize) as u16;
            let primaries: Vec<&str> =
                ring.preference_list(partition, limit).into_iter().take(*n).collect();
            if !primaries.contains(&me.as_str()) {
                continue;
            }
            let peers: Vec<&str> = primaries
                .into_iter()
                .filter(|p| *p != me && self.health(p) == Health::Up)
                .collect();
            if peers.is_empty() {
                continue;
            }
            let peer = peers[(round as usize) % peers.len()].to_string();
            compared += 1;
            if let Err(e) = self.exchange_partition(&peer, bucket, partition).await {
                tracing::debug!(%peer, %bucket, partition, error = %e, "anti-entropy exchange failed");
            }
        }
    }

    async fn exchange_partition(
        &self,
        peer: &str,
        bucket: &str,
        partition: u16,
    ) -> Result<(), Error> {
        let address = self.membership.borrow().address_of(peer).map(str::to_string);
        let address = address.ok_or_else(|| Error::Internal(format!("no address for {peer}")))?;
        let connection = self.connect(&address).await?;
        let mut request = connection.peer.tree_leaves_request();
        request.get().set_bucket(bucket);
        request.get().set_partition(partition);
        let response = request.send().promise.await?;
        let theirs: Vec<u64> = response.get()?.get_leaves()?.iter().collect();
        let ours = self.tree_leaves(bucket, partition)?;
        let segments = antientropy::differing(&ours, &theirs);
        if segments.is_empty() {
            return Ok(());
        }
        let mut request = connection.peer.segment_entries_request();
        request.get().set_bucket(bucket);
        request.get().set_partition(partition);
        {
            let mut list = request.get().init_segments(segments.len() as u32);
            for (i, segment) in segments.iter().enumerate() {
                list.set(i as u32, *segment);
            }
        }
        let response = request.send().promise.await?;
        let mut remote: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
        for entry in response.get()?.get_entries()?.iter() {
            remote.insert(entry.get_key()?.to_vec(), entry.get_state()?.to_vec());
        }
        for (key, state) in &remote {
            self.store.merge(bucket, key, state)?;
        }
        let target = Target { id: peer.to_string(), hint_for: None };
        let mut repaired = 0usize;
        for (key, state) in self.segment_entries(bucket, partition, &segments)? {
            if remote.get(&key) != Some(&state) {
                self.replicate(&target, bucket, &key, &state, false).await;
                repaired += 1;
            }
        }
        tracing::info!(%peer, %bucket, partition, segments = segments.len(), received = remote.len(), sent = repaired, "anti-entropy repaired a partition");
        Ok(())
    }

    /// Walk pending (bucket, partition) pairs after a ring change; see the module docs.
    async fn handoff_round(&self) {
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

    /// Write the view to the membership file when its shape changed since the last write.
    /// Called every gossip round and at a clean stop.
    pub async fn save_membership(&self) {
        let view = self.membership.borrow().view();
        let shape = membership_file::shape(&view);
        if self.saved_shape.borrow().as_ref() == Some(&shape) {
            return;
        }
        let path = self.membership_file.clone();
        match tokio::task::spawn_blocking(move || membership_file::save(&path, &view)).await {
            Ok(Ok(())) => *self.saved_shape.borrow_mut() = Some(shape),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the membership file"),
            Err(e) => tracing::warn!(error = %e, "membership file task failed"),
        }
    }

    async fn gossip_round(&self, round: u64) {
        self.save_membership().await;
        let (view, notices) = self.membership.borrow_mut().tick(self.now_ms());
        self.log_notices(&notices);
        let random = splitmix(round ^ (self.started.elapsed().as_nanos() as u64));
        let Some(address) = self.membership.borrow().gossip_peer(&self.seeds, random) else {
            return;
        };
        let outcome = async {
            let connection = self.connect(&address).await?;
            let mut request = connection.peer.gossip_request();
            wire::set_view(request.get().init_view(), &view);
            let response = request.send().promise.await?;
            wire::get_view(response.get()?.get_view()?)
        }
        .await;
        let id = self.membership.borrow().id_at(&address).map(str::to_string);
        match outcome {
            Ok(theirs) => {
                let notices = self.membership.borrow_mut().merge(theirs, self.now_ms());
                self.log_notices(&notices);
                if let Some(id) = id {
                    self.membership.borrow_mut().rpc_succeeded(&id);
                }
            }
            Err(e) => {
                tracing::debug!(%address, error = %e, "gossip failed");
                self.connections.borrow_mut().remove(&address);
                if let Some(id) = id {
                    self.membership.borrow_mut().rpc_failed(&id);
                }
            }
        }
    }

    async fn deliver_hints(&self) {
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

    // -----------------------------------------------------------------------------------------
    // Connections

    async fn connect(&self, address: &str) -> Result<PeerConnection, Error> {
        if let Some(connection) = self.connections.borrow().get(address) {
            return Ok(connection.clone());
        }
        let failed = |reason: String| Error::Connect { address: address.to_string(), reason };
        let stream = tokio::time::timeout(
            Duration::from_millis(PEER_CONNECT_TIMEOUT_MS),
            TcpStream::connect(address),
        )
        .await
        .map_err(|_| failed("timed out".into()))?
        .map_err(|e| failed(e.to_string()))?;
        let mut options = capnp::message::ReaderOptions::new();
        options.traversal_limit_in_words(Some(self.store.limits().message_bytes_max() / 8));
        let limits = self.store.limits();
        let timeout = Duration::from_millis(limits.message_read_timeout_ms);
        let network =
            crate::transport::network(stream, rpc_twoparty_capnp::Side::Client, options, timeout)
                .map_err(|e| failed(e.to_string()))?;
        let mut rpc = RpcSystem::new(Box::new(network), None);
        let api: cartwheel::Client = rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
        tokio::task::spawn_local(async move {
            let _ = rpc.await;
        });
        let mut request = api.peer_request();
        request.get().set_from(self.me());
        let peer = request.send().pipeline.get_peer();
        let connection = PeerConnection { api, peer };
        self.connections.borrow_mut().insert(address.to_string(), connection.clone());
        Ok(connection)
    }

    fn record<T>(&self, id: &str, address: &str, outcome: &Result<T, Error>) {
        match outcome {
            Ok(_) => self.membership.borrow_mut().rpc_succeeded(id),
            Err(Error::Connect { .. } | Error::Transport(_)) => {
                self.connections.borrow_mut().remove(address);
                self.membership.borrow_mut().rpc_failed(id);
            }
            // The peer answered: it is up, whatever it said.
            Err(_) => self.membership.borrow_mut().rpc_succeeded(id),
        }
    }

    /// The request timeout: the request's own, or the node's default.
    pub fn timeout(&self, timeout_ms: u32) -> Duration {
        match timeout_ms {
            0 => Duration::from_millis(self.store.limits().request_timeout_ms),
            ms => Duration::from_millis(ms.into()),
        }
    }

    /// A member's state as the wire names it.
    pub fn node_state(health: Health, leaving: bool) -> NodeState {
        match (health, leaving) {
            (_, true) => NodeState::Leaving,
            (Health::Up, false) => NodeState::Up,
            (Health::Suspect, false) => NodeState::Suspect,
            (Health::Down, false) => NodeState::Down,
        }
    }
}

/// A new incarnation at each start: wall-clock milliseconds, so a restarted node's gossip
/// beats what its previous run said.
fn incarnation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64)
}

/// A well-mixed 64-bit value from a seed (SplitMix64), for choosing gossip peers.
fn splitmix(seed: u64) -> u64 {
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Down primaries are replaced by the next healthy fallbacks, each with a hint; suspect
    /// ones are still tried.
    #[test]
    fn sloppy_quorum_targets() {
        let preference = ["a", "b", "c", "d", "e"];
        let health = |id: &str| match id {
            "b" => Health::Down,
            "c" => Health::Suspect,
            "d" => Health::Down,
            _ => Health::Up,
        };
        let targets = plan_targets(&preference, 3, health);
        assert_eq!(
            targets,
            vec![
                Target { id: "a".into(), hint_for: None },
                Target { id: "e".into(), hint_for: Some("b".into()) },
                Target { id: "c".into(), hint_for: None },
            ]
        );
    }

    fn target(id: &str, hint_for: Option<&str>) -> Target {
        Target { id: id.into(), hint_for: hint_for.map(str::to_string) }
    }

    /// A primary coordinates; a node that is not one forwards to the first primary it sees
    /// up, never to a suspect or down one, and never a write that was forwarded already.
    #[test]
    fn writes_are_coordinated_at_a_primary() {
        let targets = [target("a", None), target("b", None), target("c", None)];
        let up = |_: &str| Health::Up;
        assert_eq!(plan_write("b", &targets, false, up), Some(WritePlan::Coordinate));
        assert_eq!(plan_write("b", &targets, true, up), Some(WritePlan::Coordinate));
        assert_eq!(plan_write("x", &targets, false, up), Some(WritePlan::Forward("a".into())));
        let a_suspect = |id: &str| if id == "a" { Health::Suspect } else { Health::Up };
        assert_eq!(
            plan_write("x", &targets, false, a_suspect),
            Some(WritePlan::Forward("b".into()))
        );
    }

    /// A node that no primary can take the write from keeps it as a hint: counting toward W
    /// when it is a fallback target itself, for the first primary otherwise.
    #[test]
    fn a_write_no_primary_takes_is_kept_as_a_hint() {
        let targets = [target("d", Some("a")), target("e", Some("b")), target("c", None)];
        let only_fallbacks_up =
            |id: &str| if "de".contains(id) { Health::Up } else { Health::Down };
        assert_eq!(
            plan_write("e", &targets, false, only_fallbacks_up),
            Some(WritePlan::CoordinateAsHint { owner: "b".into(), counts: true })
        );
        assert_eq!(
            plan_write("x", &targets, false, only_fallbacks_up),
            Some(WritePlan::CoordinateAsHint { owner: "a".into(), counts: false })
        );
        // Forwarded here although this node is no primary (the views differ): no second hop.
        let up = |_: &str| Health::Up;
        assert_eq!(
            plan_write("x", &targets, true, up),
            Some(WritePlan::CoordinateAsHint { owner: "a".into(), counts: false })
        );
        assert_eq!(plan_write("x", &[], false, up), None);
    }

    /// With no healthy fallback, the down primary stays (and will fail); small clusters get
    /// fewer than N targets.
    #[test]
    fn no_fallback_left() {
        let targets =
            plan_targets(&["a", "b"], 3, |id| if id == "b" { Health::Down } else { Health::Up });
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[1], Target { id: "b".into(), hint_for: None });
    }
}
