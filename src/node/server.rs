//! # The node: Cap'n Proto RPC over TCP on one thread
//!
//! A node serves the `Cartwheel` interface of schema/cartwheel.capnp to clients and peers.
//! capnp-rpc is single-threaded (`!Send`), so each node runs its accept loop, every connection
//! and every request on one current-thread tokio runtime inside a `LocalSet` (DESIGN §7).
//! Blocking work leaves that thread: a durable write waits for its engine's `sync`, and a
//! peer's `treeLeaves` or `segmentEntries` for its partition scan, on tokio's blocking pool,
//! so other requests go on meanwhile.
//!
//! ## Limits, and what happens at them
//! - Connections over `limits.connections_max` are closed on accept (counted as refused).
//! - Every connection gets its own `Cartwheel` capability with an in-flight counter; a request
//!   arriving while `limits.inflight_per_connection_max` are in flight is answered at once
//!   with `overloaded`, and nothing is done for it. capnp-rpc itself has no back-pressure on
//!   ordinary calls, so this bound is ours.
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
use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use capnp_rpc::{rpc_twoparty_capnp, RpcSystem};
use cartwheel_resolvers::{Op, Read, Write};
use md5::{Digest, Md5};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::cartwheel_capnp::{cartwheel, gate, peer, write_result, NodeState};
use crate::cluster::budget::Charge;
use crate::cluster::coordinator::write_bytes;
use crate::cluster::{Cluster, Network};
use crate::config::Config;
use crate::error::Error;
use crate::node::wire::{self, ReadOptions};
use crate::security::token::{self, Grants, Right};
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
struct Shared {
    cluster: Rc<Cluster>,
    address: SocketAddr,
    started: Instant,
    connections: RefCell<Connections>,
    requests_served: Cell<u64>,
    requests_refused: Cell<u64>,
    config_digest: Vec<u8>,
    /// TLS and the cluster's keys; `None` in insecure mode.
    security: Option<NodeSecurity>,
}

impl Shared {
    fn store(&self) -> &Store {
        self.cluster.store()
    }

    /// Count a request answered with `overloaded`.
    fn refused(&self) {
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
    tasks.run_until(accept_until(&shared, listener, shutdown)).await;
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
    shutdown: impl Future<Output = ()>,
) {
    let rounds = tokio::task::spawn_local(Rc::clone(&shared.cluster).run_rounds());
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
    let Some((id, evicted)) = shared.connections.borrow_mut().admit(peer.ip(), &limits) else {
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

/// The node's open connections, oldest first, and which of them have logged in.
#[derive(Default)]
struct Connections {
    next: u64,
    open: BTreeMap<u64, Open>,
}

struct Open {
    source: IpAddr,
    authenticated: bool,
    /// Cancelled to close the connection to make room for a newer one.
    evict: CancellationToken,
}

impl Connections {
    /// Make room for a connection from `source` under `limits`, closing the oldest
    /// connections that have not logged in where needed (so idle connections never lock a
    /// client out), and register it. `None`: no room (every connection in the way has
    /// logged in); the new one is to be closed.
    fn admit(
        &mut self,
        source: IpAddr,
        limits: &crate::config::Limits,
    ) -> Option<(u64, CancellationToken)> {
        let from_source = self.open.values().filter(|open| open.source == source).count();
        if from_source >= limits.connections_per_source_max && !self.evict_oldest(Some(source)) {
            return None;
        }
        if self.open.len() >= limits.connections_max && !self.evict_oldest(None) {
            return None;
        }
        if self.unauthenticated() >= limits.unauthenticated_connections_max {
            self.evict_oldest(None);
        }
        let id = self.next;
        self.next += 1;
        let evict = CancellationToken::new();
        self.open.insert(id, Open { source, authenticated: false, evict: evict.clone() });
        Some((id, evict))
    }

    /// Close the oldest connection that has not logged in (from `source`, if given).
    fn evict_oldest(&mut self, source: Option<IpAddr>) -> bool {
        let oldest = self
            .open
            .iter()
            .find(|(_, open)| !open.authenticated && source.is_none_or(|s| s == open.source))
            .map(|(id, _)| *id);
        match oldest.and_then(|id| self.open.remove(&id)) {
            Some(open) => {
                open.evict.cancel();
                true
            }
            None => false,
        }
    }

    fn authenticated(&mut self, id: u64) {
        if let Some(open) = self.open.get_mut(&id) {
            open.authenticated = true;
        }
    }

    fn closed(&mut self, id: u64) {
        self.open.remove(&id);
    }

    fn unauthenticated(&self) -> usize {
        self.open.values().filter(|open| !open.authenticated).count()
    }
}

/// One connection, as its capabilities see it.
struct Connection {
    id: u64,
    /// Logged in (or opened the peer API).
    authenticated: Cell<bool>,
    /// Told when it logs in.
    logged_in: tokio::sync::Notify,
    /// When the last call arrived.
    last_call: Cell<Instant>,
    /// Calls in flight, against `limits.inflight_per_connection_max`.
    inflight: Rc<Cell<usize>>,
}

impl Connection {
    fn logged_in(&self, shared: &Shared) {
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

/// One connection's view of the node: the client API, scoped to the grants it logged in
/// with, under the connection's in-flight bound.
struct Api {
    shared: Rc<Shared>,
    conn: Rc<Connection>,
    grants: Rc<Grants>,
}

/// Holds one in-flight slot of a connection, and the call's bytes of the node's budget,
/// until dropped.
struct Admitted {
    slot: Rc<Cell<usize>>,
    _charge: Charge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.slot.set(self.slot.get() - 1);
    }
}

impl Api {
    /// Take an in-flight slot and `bytes` of the node's budget for a call, once the token is
    /// known not to be revoked. Either bound refuses at once with `overloaded` (counted in
    /// `requestsRefused`), and then nothing is done for the call.
    fn admit(&self, bytes: usize) -> Result<Admitted, Error> {
        let id = &self.grants.id;
        if !id.is_empty() && self.shared.cluster.is_token_revoked(id) {
            return Err(Error::Unauthorized(format!("token {id} was revoked")));
        }
        let inflight = &self.conn.inflight;
        self.conn.last_call.set(Instant::now());
        let max = self.shared.store().limits().inflight_per_connection_max;
        let admitted = if inflight.get() >= max {
            Err(Error::Overloaded(format!("{max} requests in flight on this connection")))
        } else {
            self.shared.cluster.budget().try_charge(bytes, "this request")
        };
        let charge = admitted.inspect_err(|_| self.shared.refused())?;
        inflight.set(inflight.get() + 1);
        self.shared.requests_served.set(self.shared.requests_served.get() + 1);
        Ok(Admitted { slot: Rc::clone(inflight), _charge: charge })
    }

    /// [`Api::admit`], for a call that needs `right` on `bucket`.
    fn admit_on(&self, bucket: &str, right: Right, bytes: usize) -> Result<Admitted, Error> {
        let admitted = self.admit(bytes)?;
        self.grants.check(bucket, right)?;
        Ok(admitted)
    }

    /// [`Api::admit`], for a call that needs the admin grant (and brings no data).
    fn admit_admin(&self, what: &str) -> Result<Admitted, Error> {
        let admitted = self.admit(0)?;
        self.grants.check_admin(what)?;
        Ok(admitted)
    }

    /// Coordinate a client write admitted with its bytes; a refusal further in (the
    /// replication's reservation, a full hint store) is counted in `requestsRefused` too.
    async fn write(
        &self,
        bucket: &str,
        key: &[u8],
        write: Write,
        options: wire::WriteOptions,
    ) -> Result<Read, Error> {
        let outcome = self.shared.cluster.write(bucket, key, write, options).await;
        if let Err(Error::Overloaded(_)) = &outcome {
            self.shared.refused();
        }
        outcome
    }

    /// The same connection's client API with every grant (a member's).
    fn for_member(&self) -> Api {
        Api {
            shared: Rc::clone(&self.shared),
            conn: Rc::clone(&self.conn),
            grants: Rc::new(Grants::all()),
        }
    }
}

fn text(reader: capnp::Result<capnp::text::Reader<'_>>, what: &str) -> Result<String, Error> {
    reader
        .map_err(wire::bad)?
        .to_string()
        .map_err(|_| Error::BadRequest(format!("{what} is not UTF-8")))
}

fn fill_write_result(
    result: write_result::Builder<'_>,
    outcome: Result<Read, Error>,
    return_body: bool,
) {
    match outcome {
        Ok(read) => {
            let mut ok = result.init_ok();
            ok.set_context(&read.context);
            if let (true, Some(shown)) = (return_body, &read.value) {
                wire::set_value(ok.init_value(), &read.context, shown);
            }
        }
        Err(e) => wire::set_error(result.init_error(), &e),
    }
}

impl cartwheel::Server for Api {
    async fn get(
        self: Rc<Self>,
        params: cartwheel::GetParams,
        mut results: cartwheel::GetResults,
    ) -> Result<(), capnp::Error> {
        let outcome = async {
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            let key = p.get_key().map_err(wire::bad)?;
            let _admitted = self.admit_on(&bucket, Right::Read, key.len())?;
            let key = key.to_vec();
            let o = p.get_options().map_err(wire::bad)?;
            let options = ReadOptions { r: o.get_r(), timeout_ms: o.get_timeout_ms() };
            self.shared.cluster.read(&bucket, &key, options).await
        }
        .await;
        let mut result = results.get().init_result();
        match outcome {
            Ok(None) => result.set_not_found(&[]),
            Ok(Some(Read { context, value: None })) => result.set_not_found(&context),
            Ok(Some(Read { context, value: Some(shown) })) => {
                wire::set_value(result.init_found(), &context, &shown)
            }
            Err(e) => wire::set_error(result.init_error(), &e),
        }
        Ok(())
    }

    async fn put(
        self: Rc<Self>,
        params: cartwheel::PutParams,
        mut results: cartwheel::PutResults,
    ) -> Result<(), capnp::Error> {
        let mut return_body = false;
        let outcome = async {
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            let key = p.get_key().map_err(wire::bad)?;
            let value = p.get_value().map_err(wire::bad)?;
            let context = p.get_context().map_err(wire::bad)?;
            // The value is held from here until answered (in the message, then decoded).
            let bytes = key.len() + value.len() + context.len();
            let _admitted = self.admit_on(&bucket, Right::Write, bytes)?;
            // Check before copying: an oversized value is refused without a second copy.
            self.shared.store().check_value(value)?;
            let write = Write::Put { value: value.to_vec(), context: context.to_vec() };
            let options = wire::get_write_options(p.get_options())?;
            return_body = options.return_body;
            self.write(&bucket, key, write, options).await
        }
        .await;
        fill_write_result(results.get().init_result(), outcome, return_body);
        Ok(())
    }

    async fn delete(
        self: Rc<Self>,
        params: cartwheel::DeleteParams,
        mut results: cartwheel::DeleteResults,
    ) -> Result<(), capnp::Error> {
        let mut return_body = false;
        let outcome = async {
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            let key = p.get_key().map_err(wire::bad)?;
            let context = p.get_context().map_err(wire::bad)?;
            let _admitted = self.admit_on(&bucket, Right::Write, key.len() + context.len())?;
            let write = Write::Delete { context: context.to_vec() };
            let options = wire::get_write_options(p.get_options())?;
            return_body = options.return_body;
            self.write(&bucket, key, write, options).await
        }
        .await;
        fill_write_result(results.get().init_result(), outcome, return_body);
        Ok(())
    }

    async fn update(
        self: Rc<Self>,
        params: cartwheel::UpdateParams,
        mut results: cartwheel::UpdateResults,
    ) -> Result<(), capnp::Error> {
        let mut return_body = false;
        let outcome = async {
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            let key = p.get_key().map_err(wire::bad)?;
            let ops = p.get_ops().map_err(wire::bad)?;
            if ops.is_empty() {
                return Err(Error::BadRequest("update carries no operations".to_string()));
            }
            let ops = ops.iter().map(wire::get_op).collect::<Result<Vec<Op>, Error>>()?;
            let context = p.get_context().map_err(wire::bad)?.to_vec();
            let write = Write::Update { ops, context };
            let _admitted = self.admit_on(&bucket, Right::Write, write_bytes(key, &write))?;
            let options = wire::get_write_options(p.get_options())?;
            return_body = options.return_body;
            self.write(&bucket, key, write, options).await
        }
        .await;
        fill_write_result(results.get().init_result(), outcome, return_body);
        Ok(())
    }

    async fn ring(
        self: Rc<Self>,
        _: cartwheel::RingParams,
        mut results: cartwheel::RingResults,
    ) -> Result<(), capnp::Error> {
        let _admitted = match self.admit_admin("ring") {
            Ok(admitted) => admitted,
            Err(e) => {
                wire::set_error(results.get().init_error(), &e);
                return Ok(());
            }
        };
        let cluster = &self.shared.cluster;
        let members = cluster.members();
        let addresses = |id: &str| {
            members
                .iter()
                .find(|(m, _)| m.id == id)
                .map(|(m, _)| m.address.clone())
                .unwrap_or_default()
        };
        let mut ring = results.get().init_ring();
        wire::set_ring(ring.reborrow(), &cluster.ring(), &addresses);
        let mut nodes = ring.get_nodes()?;
        for i in 0..nodes.len() {
            let mut node = nodes.reborrow().get(i);
            let id = node.reborrow_as_reader().get_id()?.to_string().unwrap_or_default();
            let state = members
                .iter()
                .find(|(m, _)| m.id == id)
                .map_or(NodeState::Down, |(m, health)| Cluster::node_state(*health, m.leaving));
            node.set_state(state);
        }
        Ok(())
    }

    async fn status(
        self: Rc<Self>,
        _: cartwheel::StatusParams,
        mut results: cartwheel::StatusResults,
    ) -> Result<(), capnp::Error> {
        let _admitted = match self.admit_admin("status") {
            Ok(admitted) => admitted,
            Err(e) => {
                wire::set_error(results.get().init_error(), &e);
                return Ok(());
            }
        };
        let shared = &self.shared;
        let cluster = &shared.cluster;
        let store = shared.store();
        let ring = cluster.ring();
        let hint_counts = cluster.hints().counts();
        let mut status = results.get().init_status();
        status.set_node_id(store.node_id());
        status.set_address(shared.address.to_string());
        status.set_version(env!("CARGO_PKG_VERSION"));
        status.set_uptime_ms(shared.started.elapsed().as_millis() as u64);
        status.set_requests_served(shared.requests_served.get());
        status.set_requests_refused(shared.requests_refused.get());
        let connections = shared.connections.borrow();
        status.set_connections(connections.open.len() as u32);
        status.set_connections_unauthenticated(connections.unauthenticated() as u32);
        drop(connections);
        status.set_security(if shared.security.is_some() { "tls" } else { "insecure" });
        status.set_states_refused(cluster.states_refused());
        status.set_config_digest(&shared.config_digest);
        status.set_ring_epoch(ring.epoch);
        status.set_hints_refused(cluster.hints().refused());
        let mismatches = cluster.config_mismatches();
        let mut list = status.reborrow().init_config_mismatches(mismatches.len() as u32);
        for (i, id) in mismatches.iter().enumerate() {
            list.set(i as u32, id.as_str());
        }
        let members = cluster.members();
        let mut list = status.reborrow().init_members(members.len() as u32);
        for (i, (member, health)) in members.iter().enumerate() {
            let mut info = list.reborrow().get(i as u32);
            info.set_id(member.id.as_str());
            info.set_address(member.address.as_str());
            info.set_state(Cluster::node_state(*health, member.leaving));
            info.set_partitions_owned(ring.owned_by(&member.id) as u32);
            info.set_hints_queued(hint_counts.get(&member.id).copied().unwrap_or(0));
        }
        let buckets: Vec<_> = store.buckets().collect();
        let mut list = status.init_buckets(buckets.len() as u32);
        for (i, bucket) in buckets.iter().enumerate() {
            let stats = bucket.engine.stats();
            let mut info = list.reborrow().get(i as u32);
            info.set_name(&bucket.name);
            info.set_engine(bucket.config.engine.name());
            info.set_resolver(bucket.config.resolver.name());
            info.set_n(bucket.config.n);
            info.set_r(bucket.config.r);
            info.set_w(bucket.config.w);
            info.set_dw(bucket.config.dw);
            info.set_entries(stats.entries);
            info.set_live_bytes(stats.live_bytes);
            info.set_dead_bytes(stats.dead_bytes);
            info.set_memory_bytes(stats.memory_bytes);
            info.set_durable(bucket.engine.is_durable());
            info.set_sibling_warnings(
                bucket.sibling_warnings.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        Ok(())
    }

    async fn peer(
        self: Rc<Self>,
        _: cartwheel::PeerParams,
        _: cartwheel::PeerResults,
    ) -> Result<(), capnp::Error> {
        Err(capnp::Error::failed(
            "forbidden: the node-to-node API is reached through Gate.peer, by members only".into(),
        ))
    }

    async fn create_token(
        self: Rc<Self>,
        params: cartwheel::CreateTokenParams,
        mut results: cartwheel::CreateTokenResults,
    ) -> Result<(), capnp::Error> {
        let outcome = (|| {
            let _admitted = self.admit_admin("creating a token")?;
            let grants =
                Grants::parse(&text(params.get().map_err(wire::bad)?.get_grants(), "grants")?)?;
            let Some(security) = &self.shared.security else {
                return Err(Error::BadRequest(
                    "this node runs in insecure mode: every token logs in with every grant".into(),
                ));
            };
            token::mint(security.keys().token_key(), &grants)
        })();
        match outcome {
            Ok((token, id)) => {
                tracing::info!(%id, "token created");
                results.get().set_token(token);
                results.get().set_id(id);
            }
            Err(e) => wire::set_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn revoke_token(
        self: Rc<Self>,
        params: cartwheel::RevokeTokenParams,
        mut results: cartwheel::RevokeTokenResults,
    ) -> Result<(), capnp::Error> {
        let outcome = (|| {
            let _admitted = self.admit_admin("revoking a token")?;
            let id = text(params.get().map_err(wire::bad)?.get_id(), "id")?;
            self.shared.cluster.revoke_token(&id)?;
            tracing::info!(%id, "token revoked");
            Ok::<(), Error>(())
        })();
        if let Err(e) = outcome {
            wire::set_error(results.get().init_error(), &e);
        }
        Ok(())
    }
}

/// A connection's bootstrap capability: it can only authenticate (see src/security).
struct Gate {
    shared: Rc<Shared>,
    conn: Rc<Connection>,
    /// Who is on the other end.
    caller: Caller,
}

/// Who is on the other end of a connection, as its TLS handshake proved.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Caller {
    /// A member: its certificate, signed by the cluster's CA, names this node id.
    Member(String),
    /// No certificate: a client.
    Anonymous,
    /// Insecure mode: anyone may be a member, and nobody's identity is known.
    Insecure,
}

impl gate::Server for Gate {
    async fn login(
        self: Rc<Self>,
        params: gate::LoginParams,
        mut results: gate::LoginResults,
    ) -> Result<(), capnp::Error> {
        let shared = &self.shared;
        let outcome = (|| {
            let token = text(params.get().map_err(wire::bad)?.get_token(), "token")?;
            let Some(security) = &shared.security else {
                return Ok(Grants::all());
            };
            let grants = token::verify(security.keys().token_key(), &token)?;
            if shared.cluster.is_token_revoked(&grants.id) {
                return Err(Error::Unauthorized(format!("token {} was revoked", grants.id)));
            }
            Ok(grants)
        })();
        match outcome {
            Ok(grants) => {
                self.conn.logged_in(shared);
                let api = Api {
                    shared: Rc::clone(shared),
                    conn: Rc::clone(&self.conn),
                    grants: Rc::new(grants),
                };
                results.get().set_node(capnp_rpc::new_client(api));
            }
            Err(e) => {
                tracing::debug!(error = %e, "login refused");
                wire::set_error(results.get().init_error(), &e);
            }
        }
        Ok(())
    }

    async fn peer(
        self: Rc<Self>,
        params: gate::PeerParams,
        mut results: gate::PeerResults,
    ) -> Result<(), capnp::Error> {
        if self.caller == Caller::Anonymous {
            let e = Error::Unauthorized(
                "the node-to-node API needs a certificate from the cluster's CA".into(),
            );
            wire::set_error(results.get().init_error(), &e);
            return Ok(());
        }
        // Only logged: the certificate, not the message, says who the caller is.
        let claimed = text(params.get()?.get_from(), "from").unwrap_or_default();
        tracing::debug!(%claimed, caller = ?self.caller, "peer session opened");
        self.conn.logged_in(&self.shared);
        let api = Api {
            shared: Rc::clone(&self.shared),
            conn: Rc::clone(&self.conn),
            grants: Rc::new(Grants::all()),
        };
        let from = match &self.caller {
            Caller::Member(id) => Some(id.clone()),
            Caller::Anonymous | Caller::Insecure => None,
        };
        results.get().set_peer(capnp_rpc::new_client(PeerApi { api, from }));
        Ok(())
    }
}

/// The node-to-node API of one connection; shares the connection's in-flight bound.
struct PeerApi {
    api: Api,
    /// The calling member's node id, as its certificate names it (none in insecure mode:
    /// then no caller is taken at its word).
    from: Option<String>,
}

impl peer::Server for PeerApi {
    async fn replicate(
        self: Rc<Self>,
        params: peer::ReplicateParams,
        mut results: peer::ReplicateResults,
    ) -> Result<(), capnp::Error> {
        let cluster = Rc::clone(&self.api.shared.cluster);
        let outcome = async {
            let p = params.get().map_err(wire::bad)?;
            let key = p.get_key().map_err(wire::bad)?;
            let state = p.get_state().map_err(wire::bad)?;
            // The state is held until stored (and synced, if asked).
            let _admitted = self.api.admit(key.len() + state.len())?;
            let bucket = text(p.get_bucket(), "bucket")?;
            let hint_for = text(p.get_hint_for(), "hintFor")?;
            cluster.receive_replica_synced(&bucket, key, state, &hint_for, p.get_sync()).await?;
            Ok::<(), Error>(())
        }
        .await;
        let mut result = results.get().init_result();
        match outcome {
            Ok(()) => result.set_stored(true),
            Err(e) => wire::set_error(result.init_error(), &e),
        }
        Ok(())
    }

    async fn fetch(
        self: Rc<Self>,
        params: peer::FetchParams,
        mut results: peer::FetchResults,
    ) -> Result<(), capnp::Error> {
        let outcome = (|| {
            let p = params.get().map_err(wire::bad)?;
            let key = p.get_key().map_err(wire::bad)?;
            let _admitted = self.api.admit(key.len())?;
            let bucket = text(p.get_bucket(), "bucket")?;
            self.api.shared.cluster.fetch_for_peer(&bucket, key)
        })();
        let mut result = results.get().init_result();
        match outcome {
            Ok(None) => result.set_not_found(()),
            Ok(Some(state)) => result.set_state(&state),
            Err(e) => wire::set_error(result.init_error(), &e),
        }
        Ok(())
    }

    async fn tree_leaves(
        self: Rc<Self>,
        params: peer::TreeLeavesParams,
        mut results: peer::TreeLeavesResults,
    ) -> Result<(), capnp::Error> {
        let outcome = async {
            let _admitted = self.api.admit(0)?;
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            self.api.shared.cluster.tree_leaves(&bucket, p.get_partition()).await
        }
        .await;
        match outcome {
            Ok(leaves) => {
                let mut list = results.get().init_leaves(leaves.len() as u32);
                for (i, leaf) in leaves.iter().enumerate() {
                    list.set(i as u32, *leaf);
                }
            }
            Err(e) => wire::set_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn segment_entries(
        self: Rc<Self>,
        params: peer::SegmentEntriesParams,
        mut results: peer::SegmentEntriesResults,
    ) -> Result<(), capnp::Error> {
        let outcome = async {
            let admitted = self.api.admit(0)?;
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            let segments: Vec<u16> = p.get_segments().map_err(wire::bad)?.iter().collect();
            let shared = &self.api.shared;
            let entries =
                shared.cluster.segment_entries(&bucket, p.get_partition(), &segments).await?;
            // Known only once scanned: held until the answer is built, or refused (dropped).
            let bytes = entries.iter().map(|(key, state)| key.len() + state.len()).sum();
            let charge = shared.cluster.budget().try_charge(bytes, "segment entries");
            let charge = charge.inspect_err(|_| shared.refused())?;
            Ok::<_, Error>((entries, admitted, charge))
        }
        .await;
        match outcome {
            Ok((entries, _admitted, _charge)) => {
                let mut list = results.get().init_entries(entries.len() as u32);
                for (i, (key, state)) in entries.iter().enumerate() {
                    let mut entry = list.reborrow().get(i as u32);
                    entry.set_key(key);
                    entry.set_state(state);
                }
            }
            Err(e) => wire::set_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn node(
        self: Rc<Self>,
        _: peer::NodeParams,
        mut results: peer::NodeResults,
    ) -> Result<(), capnp::Error> {
        results.get().set_node(capnp_rpc::new_client(self.api.for_member()));
        Ok(())
    }

    async fn gossip(
        self: Rc<Self>,
        params: peer::GossipParams,
        mut results: peer::GossipResults,
    ) -> Result<(), capnp::Error> {
        let outcome = (|| {
            // Charged nothing: the heartbeat is never refused for bytes.
            let _admitted = self.api.admit(0)?;
            let theirs =
                wire::get_view(params.get().map_err(wire::bad)?.get_view().map_err(wire::bad)?)?;
            let cluster = &self.api.shared.cluster;
            Ok::<_, Error>(match &self.from {
                // A member that gossips to us naming itself proves itself (see membership).
                Some(from) => cluster.receive_gossip_from(from, theirs),
                None => cluster.receive_gossip(theirs),
            })
        })();
        match outcome {
            Ok(ours) => wire::set_view(results.get().init_view(), &ours),
            Err(e) => wire::set_error(results.get().init_error(), &e),
        }
        Ok(())
    }
}

/// A node running on a thread of its own; for tests, `up` and embedding.
#[derive(Debug)]
pub struct NodeHandle {
    address: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<(), ServeError>>>,
}

impl NodeHandle {
    /// Bind `config.node.listen` and start serving on a new thread. Returns once the node is
    /// listening and its buckets are open (or with the error that kept it from starting).
    pub fn start(config: Config) -> Result<Self, ServeError> {
        let listener = bind(&config)?;
        let address = listener.local_addr().map_err(|e| ServeError::Runtime(e.to_string()))?;
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
                    serve(config, listener, shutdown).await
                });
                if let Err(e) = &result {
                    let _ = ready_tx.send(Err(e.to_string()));
                }
                result
            })
            .map_err(|e| ServeError::Runtime(e.to_string()))?;
        let mut handle = Self { address, stop: Some(stop), thread: Some(thread) };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_source: usize, unauthenticated: usize) -> crate::config::Limits {
        crate::config::Limits {
            connections_max: total,
            connections_per_source_max: per_source,
            unauthenticated_connections_max: unauthenticated,
            ..Default::default()
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    /// Connections that never log in are closed oldest first to make room; logged-in ones
    /// are never closed for a newcomer, which is then refused instead.
    #[test]
    fn the_oldest_connection_not_logged_in_makes_room() {
        // At most 4 in all, 3 per address, 2 not logged in.
        let limits = limits(4, 3, 2);
        let mut connections = Connections::default();
        let admit = |connections: &mut Connections, last: u8| connections.admit(ip(last), &limits);
        let (a, a_evict) = admit(&mut connections, 1).unwrap();
        let (_, b_evict) = admit(&mut connections, 1).unwrap();
        // A third not logged in: the oldest not logged in (a) goes.
        let (c, _) = admit(&mut connections, 1).unwrap();
        assert!(a_evict.is_cancelled() && !b_evict.is_cancelled());
        assert!(!connections.open.contains_key(&a));
        connections.authenticated(c);
        let (d, _) = admit(&mut connections, 1).unwrap();
        // 127.0.0.1 holds b, c, d: at its cap the oldest of its not logged in (b) goes.
        let (e, _) = admit(&mut connections, 1).unwrap();
        assert!(b_evict.is_cancelled());
        assert_eq!(connections.open.len(), 3);
        connections.authenticated(d);
        connections.authenticated(e);
        // Every connection of 127.0.0.1 logged in, at its cap: the newcomer is refused.
        assert!(admit(&mut connections, 1).is_none());
        // Another address has room, up to the node's cap (4), with everyone logged in.
        let (f, f_evict) = admit(&mut connections, 2).unwrap();
        connections.authenticated(f);
        assert!(!f_evict.is_cancelled());
        assert!(admit(&mut connections, 3).is_none(), "the node's cap, all logged in");
        connections.closed(f);
        assert!(admit(&mut connections, 3).is_some());
        assert_eq!(connections.unauthenticated(), 1);
    }
}
