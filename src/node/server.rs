//! # The node: Cap'n Proto RPC over TCP on one thread
//!
//! A node serves the `Cartwheel` interface of schema/cartwheel.capnp to clients and peers.
//! capnp-rpc is single-threaded (`!Send`), so each node runs its accept loop, every connection
//! and every request on one current-thread tokio runtime inside a `LocalSet` (DESIGN §7).
//! Blocking work leaves that thread, so other requests go on meanwhile: a durable write
//! waits for its engine's flusher to answer its sync (the `btree`'s blocking `sync` runs on
//! tokio's blocking pool; [`crate::store::sync_group`]), and a peer's `treeLeaves` or
//! `segmentEntries` waits for its partition scan on that pool.
//!
//! ## Limits, and what happens at them
//! - Connections over `limits.connections_max` are closed on accept (counted as refused).
//! - Every connection gets its own `Cartwheel` capability with an in-flight counter; a request
//!   arriving while `limits.inflight_per_connection_max` are in flight is answered at once
//!   with `overloaded`, and nothing is done for it. capnp-rpc itself has no back-pressure on
//!   ordinary calls, so this bound is ours. A member's connection (one that opened the
//!   node-to-node API) carries all of that peer's traffic to this node and has its own,
//!   larger bound, `limits.inflight_per_peer_connection_max`.
//! - Incoming messages are read with capnp's traversal limit set from
//!   `Limits::message_bytes_max`: a larger message (or any bytes that are not Cap'n Proto)
//!   ends that connection only; the node keeps serving everyone else.
//! - Keys and values over the limits get `keyTooLarge` / `valueTooLarge` and store nothing.
//! - The bytes a request brings (a put's key, value and context; a peer's state) are charged
//!   to the node's budget, `limits.inflight_bytes_max`, when it is admitted, and given back
//!   when it is answered ([`crate::cluster::budget`], which also lists what the coordinator
//!   charges for replication). A request they do not fit is answered at once with
//!   `overloaded` and nothing is done for it; both refusals count in `requestsRefused`.
//!
//! ## Memory
//! What a node's resident memory (RSS) is made of, with the defaults (1 MiB values, so
//! `Limits::message_bytes_max` is 2.06 MiB; a 64 MiB budget):
//!
//! ```text
//! anonymous  <=  base + c * inflight_bytes_max + busy connections * 6.2 MiB
//!                     + idle connections * ~0.2 MiB
//! file       =   pages of the log engine's segment files the node has read through its
//!                mappings (page cache, reclaimable; bounded by the files, not by load)
//! ```
//!
//! - **base**, about 16 to 18 MB idle: the binary, the runtime, the tables; plus what the
//!   engines keep in memory by design (the `log` engine's keydir grows with the keys, the
//!   `memory` and `buffer` engines hold their data), which grows with the data, not the load.
//! - **c × the budget**: the budget counts each byte once, the node holds it a few times
//!   over: the message it came in, the decoded value, the new state (one copy for all its
//!   targets), the message it goes out in to each replica. Measured with 1 MiB puts at full
//!   speed on three nodes, c is 2.2 to 2.5: anonymous memory peaked at 159 to 187 MB per
//!   node (docs/BENCHMARKS.md, "Bounded memory"; 0.57 to 2.6 GB before the budget).
//! - **per connection**, while busy: one message being read (at most `message_bytes_max`;
//!   it is charged once it is admitted, and dropped at once when refused) and the coalescing
//!   writer's two buffers of at most
//!   [`WRITE_BUFFER_BYTES_MAX`](crate::node::transport::WRITE_BUFFER_BYTES_MAX) (1 MiB) or
//!   one message each. Idle: the 8 KiB read buffer, at most
//!   [`WRITE_BUFFER_RETAINED_BYTES`](crate::node::transport::WRITE_BUFFER_RETAINED_BYTES)
//!   (64 KiB) in each write buffer, TLS state. `limits.connections_max`
//!   (1024) times the busy figure is a far bound; a connection is busy only while a large
//!   message passes, and a message begun must arrive whole within
//!   `limits.message_read_timeout_ms`.
//! - **file pages**: the `log` engine maps its segment files read-only; every page it reads
//!   through a mapping (the old state at each overwrite, a merge) counts in RSS until the
//!   kernel reclaims it or the segment is deleted. With 1 MiB puts on one node this was
//!   nearly all of the RSS: 0.86 to 1.34 GB at the peak, with 19 to 30 MB anonymous.
//!
//! Not bounded in bytes, only by the request counts: the states a read fetches from its
//! replicas (R to N per read, until it and its read repair end), answers capnp-rpc queues for
//! a client that does not read them, and a handoff's read of a whole partition (an
//! anti-entropy answer is at most half a message).
//!
//! ## Requests
//! This module is the Cap'n Proto glue: it admits a request, decodes it, hands it to
//! [`crate::cluster::Cluster`] (which coordinates it over the replicas) and encodes the
//! answer. The node-to-node `Peer` interface is served here too: replicate, fetch, gossip,
//! tree leaves and segment entries, each under the connection's in-flight bound and each
//! answering a refusal with a typed error.
//!
//! Every TCP connection has `TCP_NODELAY` set: requests are small and latency-bound.
//!
//! ## Stopping
//! A stopped node must leave nothing behind: a node started right after on the same data
//! directory has to be able to take its engines' directory locks, which go only when the
//! last reference to the store does. So [`serve`] runs every task of the node (connections,
//! rounds, replication, read repair, syncs, outgoing peer connections) in a `LocalSet` of
//! its own, and stops in this order:
//! 1. stop accepting and cancel the rounds;
//! 2. disconnect every accepted connection, and drive it until the peer was told and the
//!    socket shut (at most [`CLOSE_TIMEOUT_MS`]); its calls in flight are cancelled;
//! 3. drop the `LocalSet`, which cancels every task left;
//! 4. sync every bucket and the hints, save the membership view, and check that nothing
//!    holds the cluster any more (a panic says what leaked);
//! 5. wait for blocking-pool work that still holds an engine (it cannot be cancelled; at most
//!    [`ENGINE_RELEASE_TIMEOUT_MS`]), then drop the store: the locks are released.
//!
//! Step 2 is not only politeness. capnp-rpc keeps each call in flight in its connection's
//! answer table, and the call holds the connection state back (its results are written
//! there): a reference cycle. Dropping an `RpcSystem` with calls in flight therefore leaks
//! the connection state, and with it the `Api` it serves, `Shared`, the [`Cluster`] and the
//! store. Disconnecting first takes every call out of the tables and breaks the cycle.
//! Outgoing peer connections serve nothing (no bootstrap capability), so they hold no such
//! cycle and go with the `LocalSet` and the cluster.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use capnp_rpc::{rpc_twoparty_capnp, RpcSystem};
use md5::{Digest, Md5};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::cartwheel_capnp::gate;
use crate::cluster::{Cluster, Network};
use crate::config::Config;
use crate::node::api::{Caller, Gate};
use crate::node::connections::Connections;
use crate::security::{NodeSecurity, SecurityError};
use crate::store::hints::Hints;
use crate::store::{OpenError, Store};

/// Why a node could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A bucket's engine did not open.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The listen address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The runtime could not be built or the node thread failed.
    #[error("node runtime failed: {0}")]
    Runtime(String),
    /// The cluster secret could not be read, or TLS could not be set up.
    #[error(transparent)]
    Security(#[from] SecurityError),
}

/// State shared by every connection of one node (one thread).
pub(super) struct Shared {
    pub(super) cluster: Rc<Cluster>,
    pub(super) address: SocketAddr,
    pub(super) started: Instant,
    pub(super) connections: RefCell<Connections>,
    pub(super) requests_served: Cell<u64>,
    pub(super) requests_refused: Cell<u64>,
    pub(super) config_digest: Vec<u8>,
    /// TLS and the cluster's keys; `None` in insecure mode.
    pub(super) security: Option<NodeSecurity>,
}

impl Shared {
    pub(super) fn store(&self) -> &Store {
        self.cluster.store()
    }

    /// Count a request answered with `overloaded`.
    pub(super) fn refused(&self) {
        self.requests_refused.set(self.requests_refused.get() + 1);
    }
}

/// Bind `config.node.listen`. Separate from [`serve`] so a caller learns the bound address
/// (port 0 picks a free one) before serving.
pub fn bind(config: &Config) -> Result<std::net::TcpListener, ServeError> {
    let address = config.node.listen;
    let listener = std::net::TcpListener::bind(address)
        .map_err(|source| ServeError::Bind { address, source })?;
    listener.set_nonblocking(true).map_err(|source| ServeError::Bind { address, source })?;
    Ok(listener)
}

/// Bind `config.node.metrics_listen`, if set: the metrics endpoint ([`crate::metrics::http`]).
pub fn bind_metrics(config: &Config) -> Result<Option<std::net::TcpListener>, ServeError> {
    let Some(address) = config.node.metrics_listen else { return Ok(None) };
    let listener = std::net::TcpListener::bind(address)
        .map_err(|source| ServeError::Bind { address, source })?;
    listener.set_nonblocking(true).map_err(|source| ServeError::Bind { address, source })?;
    Ok(Some(listener))
}

/// How long a stopping node gives each connection to be told (a capnp `abort`) and shut.
/// At the limit the connection is dropped as it is; its calls are cancelled either way.
pub const CLOSE_TIMEOUT_MS: u64 = 1_000;

/// How long a stopping node waits for blocking-pool work (a sync, a partition scan) that
/// still holds one of its engines. At the limit `serve` returns anyway, with an error logged;
/// the engine (and its directory lock) goes when that work ends.
pub const ENGINE_RELEASE_TIMEOUT_MS: u64 = 10_000;

/// Serve `config`'s node on `listener` until `shutdown` completes; then stop it (see "Stopping"
/// in the module doc): every connection closed, every task cancelled, every bucket synced and
/// the store closed, its directory locks released, before this returns.
/// Must run on a current-thread runtime, inside a `LocalSet`.
pub async fn serve(
    config: Config,
    listener: std::net::TcpListener,
    metrics: Option<std::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let address = listener.local_addr().map_err(|e| ServeError::Runtime(e.to_string()))?;
    let listener =
        TcpListener::from_std(listener).map_err(|source| ServeError::Bind { address, source })?;
    // The node's own lock first: a second node given this data directory by mistake stops
    // here, before it creates or opens anything in it.
    let data_dir = &config.node.data_dir;
    let _node_lock = cartwheel_engines::data_dir::lock_dir(data_dir).map_err(|source| {
        OpenError { bucket: "(node)".into(), dir: data_dir.display().to_string(), source }
    })?;
    let security = NodeSecurity::start(&config)?;
    if security.is_none() {
        tracing::warn!(
            node = %config.node.id,
            "INSECURE MODE (security.mode = \"insecure\"): plain TCP, no authentication; anyone \
             who can reach {address} can read, write and delete every bucket and rewrite the \
             cluster"
        );
    }
    let store = Store::open(&config)?;
    let hints_dir = config.node.data_dir.join("hints");
    let hints =
        Hints::open(&hints_dir, config.cluster.hint_count_max, config.cluster.hint_bytes_max)
            .map_err(|source| OpenError {
                bucket: "(hints)".into(),
                dir: hints_dir.display().to_string(),
                source,
            })?;
    let digest = config_digest(&config);
    let network = Network::Tcp(security.as_ref().map(|s| s.connector.clone()));
    let cluster =
        Rc::new(Cluster::new(&config, store, hints, &address.to_string(), digest.clone(), network));
    let shared = Rc::new(Shared {
        cluster,
        address,
        started: Instant::now(),
        connections: RefCell::new(Connections::default()),
        requests_served: Cell::new(0),
        requests_refused: Cell::new(0),
        config_digest: digest,
        security,
    });
    let mode = if shared.security.is_some() { "tls" } else { "insecure" };
    tracing::info!(node = %config.node.id, %address, buckets = config.buckets.len(), mode, "serving");
    // Every task of the node is spawned in `tasks`: dropping it cancels whatever is left.
    let tasks = tokio::task::LocalSet::new();
    tasks.run_until(accept_until(&shared, listener, metrics, shutdown)).await;
    drop(tasks);
    tracing::info!(node = %config.node.id, "stopping: syncing buckets and hints");
    for bucket in shared.store().buckets() {
        if let Err(e) = bucket.engine.sync() {
            tracing::error!(bucket = %bucket.name, error = %e, "final sync failed");
        }
    }
    if let Err(e) = shared.cluster.hints().engine().sync() {
        tracing::error!(error = %e, "final sync of hints failed");
    }
    shared.cluster.save_membership().await;
    let cluster = sole_owner(shared);
    engines_released(&cluster).await;
    drop(cluster);
    tracing::info!(node = %config.node.id, "stopped");
    Ok(())
}

/// Run the rounds and accept connections until `shutdown`; then close every connection.
/// Runs inside the node's `LocalSet`.
async fn accept_until(
    shared: &Rc<Shared>,
    listener: TcpListener,
    metrics: Option<std::net::TcpListener>,
    shutdown: impl Future<Output = ()>,
) {
    let rounds = tokio::task::spawn_local(Rc::clone(&shared.cluster).run_rounds());
    let metrics = metrics.and_then(|listener| serve_metrics(shared, listener));
    let (open, mut all_closed) = tokio::sync::mpsc::channel::<()>(1);
    let closing = Closing { stop: CancellationToken::new(), open };
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => accept(shared, &closing, stream, peer),
                Err(e) => {
                    // Usually out of file descriptors: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    rounds.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    let Closing { stop, open } = closing;
    stop.cancel();
    drop(open);
    // `recv` answers `None` once every connection task has ended (and dropped its sender).
    let timeout = Duration::from_millis(CLOSE_TIMEOUT_MS);
    if tokio::time::timeout(timeout, all_closed.recv()).await.is_err() {
        let open = shared.connections.borrow().open.len();
        tracing::warn!(open, "connections still closing; dropped");
    }
}

/// Serve `GET /metrics` on `listener` ([`crate::metrics::http`]), in a task of the node's.
fn serve_metrics(
    shared: &Rc<Shared>,
    listener: std::net::TcpListener,
) -> Option<tokio::task::JoinHandle<()>> {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "metrics: cannot serve");
            return None;
        }
    };
    let scraped = Rc::clone(shared);
    let render = Rc::new(move || scrape(&scraped));
    Some(tokio::task::spawn_local(crate::metrics::http::serve(listener, render)))
}

/// The metrics text: the node's counters and what the other rooms count themselves.
fn scrape(shared: &Shared) -> String {
    let cluster = &shared.cluster;
    let engines = shared.store().buckets().map(|bucket| crate::metrics::EngineScrape {
        bucket: bucket.name.clone(),
        stats: bucket.engine.stats(),
        failed: bucket.engine.failed(),
    });
    let members = cluster.members();
    let connections = shared.connections.borrow();
    let scrape = crate::metrics::Scrape {
        engines: engines.collect(),
        hints_held: cluster.hints().counts().values().sum(),
        hints_queued: cluster.hints().queued_count(),
        hints_delivered: cluster.hints().delivered_count(),
        hints_refused: cluster.hints().refused(),
        requests_refused: shared.requests_refused.get(),
        states_refused: cluster.states_refused(),
        connections_open: connections.open.len(),
        connections_unauthenticated: connections.unauthenticated(),
        inflight_bytes: cluster.budget().used(),
        inflight_bytes_max: cluster.budget().max(),
        members: members
            .iter()
            .map(|(member, health)| {
                match cluster.member_state(&member.id, *health, member.leaving) {
                    crate::cartwheel_capnp::NodeState::Up => "up",
                    crate::cartwheel_capnp::NodeState::Suspect => "suspect",
                    crate::cartwheel_capnp::NodeState::Down => "down",
                    crate::cartwheel_capnp::NodeState::Joining => "joining",
                    crate::cartwheel_capnp::NodeState::Leaving => "leaving",
                    crate::cartwheel_capnp::NodeState::Left => "left",
                }
            })
            .collect(),
        partitions_owned: cluster.ring().owned_by(&cluster.me()),
    };
    drop(connections);
    cluster.metrics().collect(&scrape)
}

/// What every connection task gets to be closed at a stop: the signal, and a sender whose
/// drop tells that the task has ended.
struct Closing {
    stop: CancellationToken,
    open: tokio::sync::mpsc::Sender<()>,
}

/// Take the cluster out of `shared` once nothing else holds either. Every task that held
/// one is gone by now, so another owner is a leak (a reference cycle: see "Stopping" in the
/// module doc) that would keep the store and its directory locks after the node stopped.
fn sole_owner(shared: Rc<Shared>) -> Cluster {
    let shared = Rc::try_unwrap(shared).unwrap_or_else(|shared| {
        panic!(
            "a stopped node's shared state is still held {} more times (a capnp-rpc connection \
             not disconnected?): a reference cycle keeps its store and directory locks",
            Rc::strong_count(&shared) - 1
        )
    });
    Rc::try_unwrap(shared.cluster).unwrap_or_else(|cluster| {
        panic!(
            "a stopped node's cluster is still held {} more times: a reference cycle keeps its \
             store and directory locks",
            Rc::strong_count(&cluster) - 1
        )
    })
}

/// Wait until the cluster holds the only reference to each of its engines: blocking-pool work
/// cannot be cancelled, and a scan or a sync still running holds its engine (and with it the
/// directory lock) until it ends. At most [`ENGINE_RELEASE_TIMEOUT_MS`].
async fn engines_released(cluster: &Cluster) {
    let held = || {
        let engines = cluster.store().buckets().map(|b| &b.engine);
        engines.chain([cluster.hints().engine()]).any(|e| std::sync::Arc::strong_count(e) > 1)
    };
    let deadline = Instant::now() + Duration::from_millis(ENGINE_RELEASE_TIMEOUT_MS);
    while held() {
        if Instant::now() >= deadline {
            tracing::error!(
                "blocking work still holds an engine: its directory stays locked until it ends"
            );
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn accept(shared: &Rc<Shared>, closing: &Closing, stream: TcpStream, peer: SocketAddr) {
    let limits = shared.store().limits().clone();
    let admitted = shared.connections.borrow_mut().admit(peer.ip(), &limits);
    shared.cluster.metrics().connection(admitted.is_some());
    let Some((id, evicted)) = admitted else {
        shared.requests_refused.set(shared.requests_refused.get() + 1);
        tracing::warn!(%peer, "connection refused: at the connection limits, all logged in");
        return;
    };
    let conn = Rc::new(Connection {
        id,
        authenticated: Cell::new(false),
        logged_in: tokio::sync::Notify::new(),
        last_call: Cell::new(Instant::now()),
        inflight: Rc::new(Cell::new(0)),
        peer: Cell::new(false),
    });
    let (shared, stop, open) = (Rc::clone(shared), closing.stop.clone(), closing.open.clone());
    tokio::task::spawn_local(async move {
        let handshake_deadline =
            tokio::time::Instant::now() + Duration::from_millis(limits.handshake_timeout_ms);
        let opening = open_connection(&shared, &limits, stream, handshake_deadline);
        let opened = tokio::select! {
            opened = opening => opened,
            () = stop.cancelled() => None,
            () = evicted.cancelled() => None,
        };
        if let Some((network, caller)) = opened {
            let gate: gate::Client = capnp_rpc::new_client(Gate {
                shared: Rc::clone(&shared),
                conn: Rc::clone(&conn),
                caller,
            });
            let mut rpc = RpcSystem::new(Box::new(network), Some(gate.client));
            let disconnect = rpc.get_disconnector();
            let idle = Duration::from_millis(limits.idle_timeout_ms);
            let ended = tokio::select! {
                biased;
                ended = &mut rpc => ended,
                () = stop.cancelled() => close(disconnect, &mut rpc).await,
                () = evicted.cancelled() => {
                    tracing::debug!(%peer, "closed to make room for a new connection");
                    close(disconnect, &mut rpc).await
                }
                why = expired(&conn, handshake_deadline, idle) => {
                    tracing::debug!(%peer, why, "connection closed");
                    close(disconnect, &mut rpc).await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(%peer, error = %e, "connection ended");
            }
            drop(rpc);
        }
        shared.connections.borrow_mut().closed(id);
        drop(open);
    });
}

/// Set up a new connection's network: the TLS handshake (unless insecure), within the
/// handshake deadline. Also says who the other end is (see [`Caller`]): a member presented a
/// certificate
/// the cluster's CA signed; every connection is, in insecure mode). `None`: closed.
async fn open_connection(
    shared: &Shared,
    limits: &crate::config::Limits,
    stream: TcpStream,
    deadline: tokio::time::Instant,
) -> Option<(crate::node::transport::Network, Caller)> {
    let mut options = capnp::message::ReaderOptions::new();
    options.traversal_limit_in_words(Some(limits.message_bytes_max() / 8));
    let timeout = Duration::from_millis(limits.message_read_timeout_ms);
    let side = rpc_twoparty_capnp::Side::Server;
    let Some(security) = &shared.security else {
        return match crate::node::transport::network(stream, side, options, timeout) {
            Ok(network) => Some((network, Caller::Insecure)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot set up the connection");
                None
            }
        };
    };
    if let Err(e) = crate::node::transport::tune(&stream) {
        tracing::warn!(error = %e, "cannot set up the connection");
        return None;
    }
    match tokio::time::timeout_at(deadline, security.acceptor.accept(stream)).await {
        Ok(Ok(session)) => {
            // A certificate here passed the handshake: the cluster's CA signed it.
            let certificates = session.get_ref().1.peer_certificates();
            let caller = match certificates.and_then(|c| c.first()) {
                Some(certificate) => match crate::security::certificate_node_id(certificate) {
                    Some(id) => Caller::Member(id),
                    None => Caller::Anonymous,
                },
                None => Caller::Anonymous,
            };
            Some((crate::node::transport::network_over(session, side, options, timeout), caller))
        }
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake not done within the deadline");
            None
        }
    }
}

/// Completes when `conn` should be closed: not logged in by `handshake_deadline`, or logged
/// in and without a call for `idle`. Says which.
async fn expired(
    conn: &Connection,
    handshake_deadline: tokio::time::Instant,
    idle: Duration,
) -> &'static str {
    if !conn.authenticated.get() {
        tokio::select! {
            () = tokio::time::sleep_until(handshake_deadline) => {
                return "not logged in within the handshake deadline";
            }
            () = conn.logged_in.notified() => {}
        }
    }
    loop {
        let quiet = conn.last_call.get().elapsed();
        if conn.inflight.get() == 0 && quiet >= idle {
            return "idle";
        }
        tokio::time::sleep(idle.saturating_sub(quiet).max(Duration::from_millis(100))).await;
    }
}

/// One connection, as its capabilities see it.
pub(super) struct Connection {
    pub(super) id: u64,
    /// Logged in (or opened the peer API).
    pub(super) authenticated: Cell<bool>,
    /// Told when it logs in.
    pub(super) logged_in: tokio::sync::Notify,
    /// When the last call arrived.
    pub(super) last_call: Cell<Instant>,
    /// Calls in flight, against `limits.inflight_per_connection_max` (a client's) or
    /// `limits.inflight_per_peer_connection_max` (a member's).
    pub(super) inflight: Rc<Cell<usize>>,
    /// Opened the node-to-node API: a member's connection.
    pub(super) peer: Cell<bool>,
}

impl Connection {
    pub(super) fn logged_in(&self, shared: &Shared) {
        self.authenticated.set(true);
        self.logged_in.notify_one();
        self.last_call.set(Instant::now());
        shared.connections.borrow_mut().authenticated(self.id);
    }
}

/// Close a connection of a stopping node: disconnect it, which takes every call in flight out
/// of the connection's tables (breaking the cycle that would keep them, and the node, alive),
/// then drive it until the peer has been sent an `abort` and the socket is shut, for at most
/// [`CLOSE_TIMEOUT_MS`]. Calls still running are cancelled when `rpc` is dropped.
async fn close(
    disconnect: capnp_rpc::Disconnector<rpc_twoparty_capnp::Side>,
    rpc: &mut RpcSystem<rpc_twoparty_capnp::Side>,
) -> Result<(), capnp::Error> {
    let closing = futures::future::join(disconnect, rpc);
    match tokio::time::timeout(Duration::from_millis(CLOSE_TIMEOUT_MS), closing).await {
        Ok((disconnected, ended)) => disconnected.and(ended),
        Err(_) => Err(capnp::Error::failed(format!("not closed within {CLOSE_TIMEOUT_MS} ms"))),
    }
}

/// A digest of the bucket configuration and the partition count, for gossip to compare
/// between nodes (a node with another Q would place every key elsewhere).
fn config_digest(config: &Config) -> Vec<u8> {
    let mut md5 = Md5::new();
    md5.update(format!("partitions={};", config.partitions).as_bytes());
    for (name, bucket) in &config.buckets {
        md5.update(format!("{name}={bucket:?};").as_bytes());
    }
    md5.finalize().to_vec()
}

/// A node running on a thread of its own; for tests, `up` and embedding.
#[derive(Debug)]
pub struct NodeHandle {
    address: SocketAddr,
    metrics_address: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServeError>>>,
}

impl NodeHandle {
    /// Bind `config.node.listen` and start serving on a new thread. Returns once the node is
    /// listening and its buckets are open (or with the error that kept it from starting).
    pub fn start(config: Config) -> Result<Self, ServeError> {
        let listener = bind(&config)?;
        let address = listener.local_addr().map_err(|e| ServeError::Runtime(e.to_string()))?;
        let metrics = bind_metrics(&config)?;
        let metrics_address = match &metrics {
            Some(listener) => {
                Some(listener.local_addr().map_err(|e| ServeError::Runtime(e.to_string()))?)
            }
            None => None,
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), String>>();
        let name = format!("cartwheel-{}", config.node.id);
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| ServeError::Runtime(e.to_string()))?;
                let local = tokio::task::LocalSet::new();
                // Opening the store happens inside `serve`; report readiness once the
                // first poll got past it by serving behind a ready signal.
                let ready = ready_tx.clone();
                let result = local.block_on(&runtime, async move {
                    let shutdown = async move {
                        let _ = ready.send(Ok(()));
                        let _ = stopped.await;
                    };
                    serve(config, listener, metrics, shutdown).await
                });
                if let Err(e) = &result {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
                result
            })
            .map_err(|e| ServeError::Runtime(e.to_string()))?;
        let mut handle = Self { address, metrics_address, stop: Some(stop), thread: Some(thread) };
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(handle),
            _ => Err(handle
                .join()
                .err()
                .unwrap_or_else(|| ServeError::Runtime("node did not start".into()))),
        }
    }

    /// The address the node listens on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// The address of the node's metrics endpoint (`GET /metrics`), if it has one
    /// (`node.metrics_listen`).
    pub fn metrics_address(&self) -> Option<SocketAddr> {
        self.metrics_address
    }

    /// Stop the node (see "Stopping" in the module doc) and wait for its thread: when this
    /// returns, every connection is closed, every bucket synced and the store closed, so the
    /// data directory can be opened again at once.
    pub fn stop(mut self) -> Result<(), ServeError> {
        self.join()
    }

    fn join(&mut self) -> Result<(), ServeError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.thread.take() {
            Some(thread) => {
                thread.join().map_err(|_| ServeError::Runtime("node thread panicked".into()))?
            }
            None => Ok(()),
        }
    }
}

impl Drop for NodeHandle {
    fn drop(&mut self) {
        let _ = self.join();
    }
}
