//! # The node: Cap'n Proto RPC over TCP on one thread
//!
//! A node serves the `Cartwheel` interface of schema/cartwheel.capnp to clients and peers.
//! capnp-rpc is single-threaded (`!Send`), so each node runs its accept loop, every connection
//! and every request on one current-thread tokio runtime inside a `LocalSet` (DESIGN §7).
//! Blocking work leaves that thread: a durable write waits for its engine's `sync` on tokio's
//! blocking pool, so other requests go on meanwhile.
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
//!
//! ## Requests, single node
//! This module is the coordinator for a node alone: a write is applied locally (see
//! [`crate::store`]) and, when the effective DW is at least one, acknowledged only after the
//! bucket's engine synced it. R and W are checked against N and clamped to the replicas that
//! exist. The cluster layer replaces the local-only path with the preference list and quorum.
//!
//! Every TCP connection has `TCP_NODELAY` set: requests are small and latency-bound.

use std::cell::Cell;
use std::future::Future;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use capnp_rpc::{rpc_twoparty_capnp, twoparty, RpcSystem};
use cartwheel_resolvers::{Op, Read, Write};
use futures::io::{BufReader, BufWriter};
use md5::{Digest, Md5};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::compat::{TokioAsyncReadCompatExt, TokioAsyncWriteCompatExt};

use crate::cartwheel_capnp::{cartwheel, peer, write_result, NodeState};
use crate::config::Config;
use crate::error::Error;
use crate::store::{OpenError, Store};
use crate::wire::{self, WriteOptions};

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
}

/// State shared by every connection of one node (one thread).
struct Shared {
    store: Store,
    address: SocketAddr,
    started: Instant,
    connections: Cell<u32>,
    requests_served: Cell<u64>,
    requests_refused: Cell<u64>,
    config_digest: Vec<u8>,
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

/// Serve `config`'s node on `listener` until `shutdown` completes, then sync every bucket.
/// Must run inside a `LocalSet` on a current-thread runtime.
pub async fn serve(
    config: Config,
    listener: std::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let address = listener.local_addr().map_err(|e| ServeError::Runtime(e.to_string()))?;
    let listener =
        TcpListener::from_std(listener).map_err(|source| ServeError::Bind { address, source })?;
    let store = Store::open(&config)?;
    let shared = Rc::new(Shared {
        store,
        address,
        started: Instant::now(),
        connections: Cell::new(0),
        requests_served: Cell::new(0),
        requests_refused: Cell::new(0),
        config_digest: config_digest(&config),
    });
    tracing::info!(node = %config.node.id, %address, buckets = config.buckets.len(), "serving");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => accept(&shared, stream, peer),
                Err(e) => {
                    // Usually out of file descriptors: wait instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::info!(node = %config.node.id, "stopping: syncing buckets");
    for bucket in shared.store.buckets() {
        if let Err(e) = bucket.engine.sync() {
            tracing::error!(bucket = %bucket.name, error = %e, "final sync failed");
        }
    }
    Ok(())
}

fn accept(shared: &Rc<Shared>, stream: TcpStream, peer: SocketAddr) {
    let limits = shared.store.limits();
    if shared.connections.get() as usize >= limits.connections_max {
        shared.requests_refused.set(shared.requests_refused.get() + 1);
        tracing::warn!(%peer, max = limits.connections_max, "connection refused: at the limit");
        return;
    }
    if let Err(e) = stream.set_nodelay(true) {
        tracing::warn!(%peer, error = %e, "cannot set TCP_NODELAY");
    }
    let mut options = capnp::message::ReaderOptions::new();
    options.traversal_limit_in_words(Some(limits.message_bytes_max() / 8));
    let (reader, writer) = stream.into_split();
    let network = twoparty::VatNetwork::new(
        BufReader::new(reader.compat()),
        BufWriter::new(writer.compat_write()),
        rpc_twoparty_capnp::Side::Server,
        options,
    );
    let api: cartwheel::Client =
        capnp_rpc::new_client(Api { shared: Rc::clone(shared), inflight: Rc::new(Cell::new(0)) });
    let rpc = RpcSystem::new(Box::new(network), Some(api.client));
    let shared = Rc::clone(shared);
    shared.connections.set(shared.connections.get() + 1);
    tokio::task::spawn_local(async move {
        if let Err(e) = rpc.await {
            tracing::debug!(%peer, error = %e, "connection ended");
        }
        shared.connections.set(shared.connections.get() - 1);
    });
}

/// A digest of the bucket configuration, for gossip to compare between nodes.
fn config_digest(config: &Config) -> Vec<u8> {
    let mut md5 = Md5::new();
    for (name, bucket) in &config.buckets {
        md5.update(format!("{name}={bucket:?};").as_bytes());
    }
    md5.finalize().to_vec()
}

/// One connection's view of the node: the client API, with its own in-flight bound.
struct Api {
    shared: Rc<Shared>,
    inflight: Rc<Cell<usize>>,
}

/// Holds one in-flight slot of a connection until dropped.
struct Admitted(Rc<Cell<usize>>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl Api {
    fn admit(&self) -> Result<Admitted, Error> {
        let max = self.shared.store.limits().inflight_per_connection_max;
        if self.inflight.get() >= max {
            self.shared.requests_refused.set(self.shared.requests_refused.get() + 1);
            return Err(Error::Overloaded(format!("{max} requests in flight on this connection")));
        }
        self.inflight.set(self.inflight.get() + 1);
        self.shared.requests_served.set(self.shared.requests_served.get() + 1);
        Ok(Admitted(Rc::clone(&self.inflight)))
    }

    /// Coordinate a write on this node: check options, apply, store, wait for DW.
    async fn write(
        &self,
        bucket: &str,
        key: &[u8],
        write: Write,
        options: WriteOptions,
    ) -> Result<Read, Error> {
        let store = &self.shared.store;
        let config = &store.bucket(bucket)?.config;
        if options.w > config.n {
            return Err(Error::BadRequest(format!(
                "w = {} is over the bucket's n = {}",
                options.w, config.n
            )));
        }
        let dw = options.dw.unwrap_or(config.dw);
        let w = if options.w == 0 { config.w } else { options.w };
        if dw > w {
            return Err(Error::BadRequest(format!("dw = {dw} is over w = {w}")));
        }
        let engine = std::sync::Arc::clone(&store.bucket(bucket)?.engine);
        if dw > 0 && !engine.is_durable() {
            return Err(Error::BadRequest(format!(
                "dw = {dw} on bucket {bucket:?}, whose {} engine keeps nothing across restarts",
                engine.kind()
            )));
        }
        let (_state, read) = store.write(bucket, key, &write)?;
        // One replica exists here: the effective DW is min(dw, 1).
        if dw > 0 {
            let timeout = self.timeout(options.timeout_ms);
            let sync = tokio::task::spawn_blocking(move || engine.sync());
            match tokio::time::timeout(timeout, sync).await {
                Err(_) => {
                    return Err(Error::Timeout(format!("sync did not finish within {timeout:?}")))
                }
                Ok(Err(join)) => return Err(Error::Internal(format!("sync task failed: {join}"))),
                Ok(Ok(result)) => result?,
            }
        }
        Ok(read)
    }

    fn timeout(&self, timeout_ms: u32) -> Duration {
        match timeout_ms {
            0 => Duration::from_millis(self.shared.store.limits().request_timeout_ms),
            ms => Duration::from_millis(ms.into()),
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
        let outcome = (|| {
            let _admitted = self.admit()?;
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            let key = p.get_key().map_err(wire::bad)?;
            let config = &self.shared.store.bucket(&bucket)?.config;
            let r = p.get_options().map_err(wire::bad)?.get_r();
            if r > config.n {
                return Err(Error::BadRequest(format!(
                    "r = {r} is over the bucket's n = {}",
                    config.n
                )));
            }
            self.shared.store.read(&bucket, key)
        })();
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
            let _admitted = self.admit()?;
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            let key = p.get_key().map_err(wire::bad)?.to_vec();
            let value = p.get_value().map_err(wire::bad)?;
            // Check before copying: an oversized value is refused without a second copy.
            self.shared.store.check_value(value)?;
            let write = Write::Put {
                value: value.to_vec(),
                context: p.get_context().map_err(wire::bad)?.to_vec(),
            };
            let options = wire::get_write_options(p.get_options())?;
            return_body = options.return_body;
            self.write(&bucket, &key, write, options).await
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
            let _admitted = self.admit()?;
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            let key = p.get_key().map_err(wire::bad)?.to_vec();
            let write = Write::Delete { context: p.get_context().map_err(wire::bad)?.to_vec() };
            let options = wire::get_write_options(p.get_options())?;
            return_body = options.return_body;
            self.write(&bucket, &key, write, options).await
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
            let _admitted = self.admit()?;
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            let key = p.get_key().map_err(wire::bad)?.to_vec();
            let ops = p.get_ops().map_err(wire::bad)?;
            if ops.is_empty() {
                return Err(Error::BadRequest("update carries no operations".to_string()));
            }
            let ops = ops.iter().map(wire::get_op).collect::<Result<Vec<Op>, Error>>()?;
            let write =
                Write::Update { ops, context: p.get_context().map_err(wire::bad)?.to_vec() };
            let options = wire::get_write_options(p.get_options())?;
            return_body = options.return_body;
            self.write(&bucket, &key, write, options).await
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
        let store = &self.shared.store;
        let mut ring = results.get().init_ring();
        ring.set_partition_count(store.partitions());
        ring.set_epoch(1);
        let mut node = ring.reborrow().init_nodes(1).get(0);
        node.set_id(store.node_id());
        node.set_address(self.shared.address.to_string());
        node.set_state(NodeState::Up);
        // A node alone owns every partition.
        ring.init_owners(store.partitions());
        Ok(())
    }

    async fn status(
        self: Rc<Self>,
        _: cartwheel::StatusParams,
        mut results: cartwheel::StatusResults,
    ) -> Result<(), capnp::Error> {
        let shared = &self.shared;
        let store = &shared.store;
        let mut status = results.get().init_status();
        status.set_node_id(store.node_id());
        status.set_address(shared.address.to_string());
        status.set_version(env!("CARGO_PKG_VERSION"));
        status.set_uptime_ms(shared.started.elapsed().as_millis() as u64);
        status.set_requests_served(shared.requests_served.get());
        status.set_requests_refused(shared.requests_refused.get());
        status.set_connections(shared.connections.get());
        status.set_config_digest(&shared.config_digest);
        let mut member = status.reborrow().init_members(1).get(0);
        member.set_id(store.node_id());
        member.set_address(shared.address.to_string());
        member.set_state(NodeState::Up);
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
        }
        Ok(())
    }

    async fn peer(
        self: Rc<Self>,
        params: cartwheel::PeerParams,
        mut results: cartwheel::PeerResults,
    ) -> Result<(), capnp::Error> {
        let from = text(params.get()?.get_from(), "from").unwrap_or_default();
        tracing::debug!(%from, "peer session opened");
        let peer: peer::Client = capnp_rpc::new_client(PeerApi {
            shared: Rc::clone(&self.shared),
            inflight: Rc::clone(&self.inflight),
        });
        results.get().set_peer(peer);
        Ok(())
    }
}

/// The node-to-node API of one connection; shares the connection's in-flight bound.
struct PeerApi {
    shared: Rc<Shared>,
    inflight: Rc<Cell<usize>>,
}

impl peer::Server for PeerApi {
    async fn replicate(
        self: Rc<Self>,
        params: peer::ReplicateParams,
        mut results: peer::ReplicateResults,
    ) -> Result<(), capnp::Error> {
        {
            let api = Api { shared: Rc::clone(&self.shared), inflight: Rc::clone(&self.inflight) };
            let outcome = async {
                let _admitted = api.admit()?;
                let p = params.get().map_err(wire::bad)?;
                let bucket = text(p.get_bucket(), "bucket")?;
                let key = p.get_key().map_err(wire::bad)?;
                let state = p.get_state().map_err(wire::bad)?;
                let store = &self.shared.store;
                store.merge(&bucket, key, state)?;
                if p.get_sync() {
                    let engine = std::sync::Arc::clone(&store.bucket(&bucket)?.engine);
                    tokio::task::spawn_blocking(move || engine.sync())
                        .await
                        .map_err(|e| Error::Internal(format!("sync task failed: {e}")))??;
                }
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
    }

    async fn fetch(
        self: Rc<Self>,
        params: peer::FetchParams,
        mut results: peer::FetchResults,
    ) -> Result<(), capnp::Error> {
        let outcome = (|| {
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            self.shared.store.fetch(&bucket, p.get_key().map_err(wire::bad)?)
        })();
        let mut result = results.get().init_result();
        match outcome {
            Ok(None) => result.set_not_found(()),
            Ok(Some(state)) => result.set_state(&state),
            Err(e) => wire::set_error(result.init_error(), &e),
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

    /// Stop accepting, sync every bucket and wait for the node's thread.
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
