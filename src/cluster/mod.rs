//! # The cluster: replicas, quorum, gossip and handoff
//!
//! Everything a node does with other nodes. The decisions are pure functions and state
//! machines, unit-tested without sockets; the async methods on [`Cluster`] carry messages and
//! apply those decisions, all on the node's one RPC thread.
//!
//! ## The rooms
//! | room | decides (pure) | carries (async) |
//! |---|---|---|
//! | [`coordinator`] | targets and sloppy-quorum fallbacks ([`plan_targets`]), who coordinates a write ([`plan_write`]), effective R/W/DW | client writes and reads, read repair |
//! | [`quorum`] | when a request has met R, W and DW; which replicas a read repairs | |
//! | [`replica`] | what this node keeps of a state a peer sends (its copy, or a hint), and what it refuses | |
//! | [`peers`] | | every call to another node: deadline, in-flight bound, typed errors, failure detector |
//! | [`budget`] | how many bytes the node may hold for work in flight, and who holds them | |
//! | [`membership`] | members, failure detection, the ring and the claimant; which views, rings and entries to refuse; revoked tokens | |
//! | [`gossip`] | | the view exchange and probes each round, the membership file ([`membership_file`]), token revocation |
//! | [`handoff`] | which partitions go where after a ring change; which hints to deliver | ownership and hinted handoff |
//! | [`anti_entropy`] | hash-tree leaves, differing segments, which partition and peer to compare | the exchange |
//!
//! The local half of every request is [`crate::store`]'s; which actor issues a dot is
//! [`crate::actors`]'s.
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
//! ## Peer input is validated, never trusted
//! Authentication (DESIGN §6) says a caller is a member; it does not make what the member
//! says true. Every decision a peer's message feeds is checked where it is made:
//! membership changes come only from members this node has exchanged with directly, and
//! epochs and incarnations move by bounded steps ([`membership`], "Peer input is
//! validated"); a state stamped further ahead of this node's clock than
//! `cluster.max_clock_offset_ms` is refused on every path into the store
//! ([`crate::store::Store::check_incoming`], counted in [`Cluster::states_refused`]); hints
//! are kept only for members that own partitions ([`Cluster::check_hint_owner`]); and no
//! counter, clock, dot or quantity wraps (the resolvers answer `overflow`).
//!
//! ## Background rounds
//! Every `gossip_interval_ms` ([`Cluster::run_rounds`]), each on a timer of its own so that
//! none waits for another: exchange views with one peer; deliver up to
//! `hint_replay_per_round` hints to each owner that is up again; hand off partitions after a
//! ring change; compare `anti_entropy_partitions_per_round` partitions with another primary;
//! copy up to `transfer_limit` partitions this node takes over in a ring transition
//! ([`transfer`]).
//! Each peer call has a deadline ([`peers`]), so an unreachable peer delays its own kind of
//! round by at most that, and never the heartbeat.

pub mod anti_entropy;
pub mod budget;
pub mod changes;
pub mod coordinator;
pub mod gossip;
pub mod handoff;
pub mod membership;
pub mod membership_file;
pub mod peers;
pub mod quorum;
pub mod replica;
pub mod transfer;

pub use coordinator::{plan_targets, plan_write, Target, WritePlan};
pub use peers::Network;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use tokio::time::Instant;

use crate::cartwheel_capnp::NodeState;
use crate::config::Config;
use crate::ring::{key_hash, partition_of, Ownership};
use crate::store::hints::Hints;
use crate::store::Store;
use budget::Budget;
use handoff::Handoff;
use membership::{Health, Holds, MemberInfo, Membership, Timing};
use peers::PeerConnection;

/// The node's cluster state, shared by every connection on the RPC thread.
pub struct Cluster {
    /// The local store.
    store: Store,
    /// The hint store.
    hints: Hints,
    membership: RefCell<Membership>,
    /// How peers are reached; TCP connections by address when it is [`Network::Tcp`] (TLS or plain).
    network: Network,
    connections: RefCell<HashMap<String, PeerConnection>>,
    /// This run's incarnation (gossiped; a restart's beats the run before).
    incarnation: u64,
    /// Whether a gossip exchange has succeeded since the start.
    gossiped: std::cell::Cell<bool>,
    seeds: Vec<String>,
    started: Instant,
    gossip_interval: Duration,
    hint_replay_per_round: usize,
    handoff: RefCell<Handoff>,
    anti_entropy_per_round: usize,
    /// Partitions copied at once during a ring transition (`cluster.transfer_limit`).
    transfer_limit: usize,
    /// Bytes per second copied at most during a ring transition (`None`: no limit).
    transfer_bytes_per_s: Option<u64>,
    /// Progress of this node's copies during a ring transition ([`transfer`]).
    transfers: RefCell<transfer::Transfers>,
    /// What anti-entropy did since the start.
    anti_entropy_progress: RefCell<anti_entropy::Progress>,
    /// When a refused write was last logged (`now_ms`, 0: never).
    quorum_refusal_warned_ms: std::cell::Cell<u64>,
    /// Index into the (bucket, partition) pairs of the next anti-entropy exchange.
    anti_entropy_cursor: std::cell::Cell<usize>,
    /// Peer addresses a connection is being opened to, and how to wake the calls waiting for
    /// it (src/cluster/peers.rs).
    connecting: RefCell<HashMap<String, (Rc<tokio::sync::Notify>, tokio::time::Instant)>>,
    /// The hint store's failure was seen (and the hint actor renewed), until it is reopened.
    hints_failure_noticed: std::cell::Cell<bool>,
    /// dw > 0 waits: one blocking sync at a time per engine.
    syncs: crate::store::sync_group::SyncGroups,
    /// Where the view is kept across restarts ([`crate::cluster::membership_file`]); none
    /// in the simulation.
    membership_file: Option<std::path::PathBuf>,
    /// The shape of the view last written there.
    saved_shape: RefCell<Option<membership_file::Shape>>,
    /// Bytes held for work in flight, against `limits.inflight_bytes_max`.
    budget: Budget,
    /// What this node counts ([`crate::metrics`]).
    metrics: crate::metrics::Metrics,
}

/// What a node runs in: a real process, or the seeded simulation.
pub struct Environment {
    /// The address this node listens on (its identity on the network).
    pub address: String,
    /// The digest of its bucket configuration, gossiped.
    pub config_digest: Vec<u8>,
    /// This run's incarnation: greater than every earlier run's of the same node.
    pub incarnation: u64,
    /// How it reaches its peers.
    pub network: Network,
    /// Where its view is kept across restarts, if anywhere.
    pub membership_file: Option<std::path::PathBuf>,
    /// A view to start from where there is no file (the simulation keeps it in memory).
    pub restored_view: Option<membership::View>,
}

impl Cluster {
    /// Build the cluster state for a node whose store is open, listening at `address`,
    /// reaching its peers over `network`.
    pub fn new(
        config: &Config,
        store: Store,
        hints: Hints,
        address: &str,
        config_digest: Vec<u8>,
        network: Network,
    ) -> Self {
        let environment = Environment {
            address: address.to_string(),
            config_digest,
            incarnation: incarnation(),
            network,
            membership_file: Some(membership_file::path(&config.node.data_dir)),
            restored_view: None,
        };
        Self::in_environment(config, store, hints, environment)
    }

    /// Build the cluster state of a node in `environment`.
    pub fn in_environment(
        config: &Config,
        store: Store,
        hints: Hints,
        environment: Environment,
    ) -> Self {
        let me = MemberInfo {
            id: config.node.id.clone(),
            address: environment.address,
            incarnation: environment.incarnation,
            heartbeat: 0,
            leaving: false,
            config_digest: environment.config_digest,
            holds: Holds::default(),
            data_bytes: 0,
        };
        let target_n = config.buckets.values().map(|b| b.n as usize).max().unwrap_or(3);
        let timing = Timing::for_interval(config.cluster.gossip_interval_ms);
        let mut membership = Membership::new(me, config.partitions, target_n, timing, 0);
        membership.set_auto_join(config.cluster.auto_join);
        let mut saved_shape = None;
        let restored = match environment.membership_file.as_deref().map(membership_file::load) {
            None => Some(Ok(environment.restored_view)),
            loaded => loaded,
        };
        match restored {
            Some(Ok(Some(view))) => {
                saved_shape = Some(membership_file::shape(&view));
                let members = view.members.len();
                membership.restore(view, 0);
                tracing::info!(members, epoch = membership.ring().epoch, "membership restored");
            }
            None | Some(Ok(None)) => {}
            Some(Err(e)) => {
                tracing::warn!(error = %e, "membership file ignored; starting as a new node")
            }
        }
        let metrics = crate::metrics::Metrics::new(config);
        Self {
            store,
            hints,
            membership: RefCell::new(membership),
            network: environment.network,
            connections: RefCell::new(HashMap::new()),
            incarnation: environment.incarnation,
            gossiped: std::cell::Cell::new(false),
            seeds: config.node.seeds.clone(),
            started: Instant::now(),
            gossip_interval: Duration::from_millis(config.cluster.gossip_interval_ms),
            hint_replay_per_round: config.cluster.hint_replay_per_round,
            handoff: RefCell::new(Handoff::default()),
            anti_entropy_per_round: config.cluster.anti_entropy_partitions_per_round,
            transfer_limit: config.cluster.transfer_limit,
            transfer_bytes_per_s: Some(config.cluster.transfer_bytes_per_s).filter(|r| *r > 0),
            transfers: RefCell::new(transfer::Transfers::default()),
            anti_entropy_progress: RefCell::new(anti_entropy::Progress::default()),
            quorum_refusal_warned_ms: std::cell::Cell::new(0),
            anti_entropy_cursor: std::cell::Cell::new(0),
            hints_failure_noticed: std::cell::Cell::new(false),
            connecting: RefCell::new(HashMap::new()),
            syncs: crate::store::sync_group::SyncGroups::observed_by(metrics.sync_observer()),
            membership_file: environment.membership_file,
            saved_shape: RefCell::new(saved_shape),
            budget: Budget::new(config.limits.inflight_bytes_max),
            metrics,
        }
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// The local store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The hint store.
    pub fn hints(&self) -> &Hints {
        &self.hints
    }

    /// The node's budget of bytes in flight ([`budget`]).
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// What this node counts ([`crate::metrics`]).
    pub fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
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

    fn targets(&self, bucket: &str, key: &[u8], n: usize) -> Vec<Target> {
        let membership = self.membership.borrow();
        let ring = membership.ring();
        let partition = partition_of(key_hash(bucket, key), ring.partitions());
        let preference = ring.preference_list(partition, membership.member_count());
        let now = self.now_ms();
        plan_targets(&preference, n, |id| membership.health(id, now))
    }

    /// The nodes that must also store a write to `key` while its partition moves in a ring
    /// transition ([`crate::ring::transition`]): its next replicas that do not serve it yet,
    /// but for those this node sees down (they copy what they missed before the partition
    /// moves).
    fn receivers(&self, bucket: &str, key: &[u8], n: usize) -> Vec<String> {
        let membership = self.membership.borrow();
        let ring = membership.ring();
        let partition = partition_of(key_hash(bucket, key), ring.partitions());
        let sets = ring.write_sets(partition, n);
        let now = self.now_ms();
        sets.next
            .unwrap_or_default()
            .into_iter()
            .filter(|id| !sets.serving.contains(id))
            .filter(|id| membership.health(id, now) != Health::Down)
            .map(str::to_string)
            .collect()
    }

    /// Whether this node knows the cluster it is part of: it has heard of another member,
    /// exchanged views with a seed (which may be itself under another name), or its seeds
    /// name only itself (a cluster that starts here).
    fn knows_cluster(&self) -> bool {
        if self.gossiped.get() {
            return true;
        }
        let membership = self.membership.borrow();
        let me = membership.address_of(membership.me()).unwrap_or_default();
        membership.member_count() > 1 || self.seeds.iter().all(|seed| seed == me)
    }

    fn health(&self, id: &str) -> Health {
        self.membership.borrow().health(id, self.now_ms())
    }

    /// Run the background rounds forever (until the task is dropped): gossip, hint
    /// delivery, ownership handoff and anti-entropy, each every `gossip_interval_ms` on a
    /// timer of its own, so that a slow round (a peer that answers only at the deadline)
    /// never holds up another. Gossip above all: it carries this node's heartbeat, and a
    /// node whose heartbeat stalls is marked down by the others.
    pub async fn run_rounds(self: Rc<Self>) {
        futures::join!(
            self.every_round(|round| self.gossip_round(round)),
            self.every_round(|_| self.deliver_hints()),
            self.every_round(|_| self.handoff_round()),
            self.every_round(|round| self.anti_entropy_round(round)),
            self.every_round(|_| self.transfer_round()),
            self.every_round(|_| self.recovery_round()),
        );
    }

    /// Run `round` every gossip interval, numbering the rounds from 1; a round that overruns
    /// delays the next one rather than bunching them.
    async fn every_round<F, Fut>(&self, mut round: F)
    where
        F: FnMut(u64) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let mut interval = tokio::time::interval(self.gossip_interval);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for number in 1.. {
            interval.tick().await;
            round(number).await;
        }
    }

    /// Reopen the engines that failed a write or a sync, on the blocking pool (see
    /// [`Store::failed_buckets`]); one that cannot be reopened yet (the disk is still full) is
    /// tried again next round.
    async fn recovery_round(&self) {
        let hints = std::sync::Arc::clone(self.hints.engine());
        if hints.failed() {
            // As for a bucket: the hint actor takes a new epoch before anything is reopened
            // (a reopen may drop unsynced hints, and with them dots of the hint actor).
            if !self.hints_failure_noticed.replace(true) {
                self.store.renew_actor(crate::actors::Role::Hint);
                tracing::error!("the hint store failed a write or a sync: reopened each round");
            }
            match tokio::task::spawn_blocking(move || hints.try_recover()).await {
                Ok(Ok(cartwheel_engines::Recovery::Reopened)) => {
                    self.hints_failure_noticed.set(false);
                    if let Err(e) = self.hints.recount() {
                        tracing::error!(error = %e, "cannot count the reopened hints");
                    }
                    tracing::warn!("hint store reopened from its files; hints resume");
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "cannot reopen the hint store yet"),
                Err(e) => tracing::error!(error = %e, "the reopen panicked"),
            }
        }
        for (bucket, engine) in self.store.failed_buckets() {
            match tokio::task::spawn_blocking(move || engine.try_recover()).await {
                Ok(Ok(cartwheel_engines::Recovery::Reopened)) => {
                    self.store.engine_reopened(&bucket)
                }
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(%bucket, error = %e, "cannot reopen the engine yet")
                }
                Err(e) => tracing::error!(%bucket, error = %e, "the reopen panicked"),
            }
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
    /// How `status` and `ring` show member `id`: its health, or where it stands in the ring
    /// change in flight (joining, leaving), or left.
    pub fn member_state(&self, id: &str, health: Health, leaving: bool) -> NodeState {
        let membership = self.membership.borrow();
        let ring = membership.ring();
        if ring.left.contains(id) && ring.owned_by(id) == 0 {
            return NodeState::Left;
        }
        if ring.in_transition() && health != Health::Down {
            match (ring.owned_by(id) > 0, ring.will_own(id) > 0) {
                (false, true) => return NodeState::Joining,
                (true, false) => return NodeState::Leaving,
                _ => {}
            }
        }
        Self::node_state(health, leaving)
    }

    /// What anti-entropy did on this node since it started.
    pub fn anti_entropy_progress(&self) -> anti_entropy::Progress {
        self.anti_entropy_progress.borrow().clone()
    }

    /// This node's transfer progress in the ring change in flight.
    pub fn transfers(&self) -> transfer::Transfers {
        self.transfers.borrow().clone()
    }

    /// The claimant, as this node sees it.
    pub fn claimant(&self) -> Option<String> {
        self.membership.borrow().claimant(self.now_ms())
    }

    /// A member's state from its health alone (and whether it asked to leave).
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
