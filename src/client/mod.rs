//! # The Rust client library
//!
//! Two clients speak the client API of schema/cartwheel.capnp with the node's own types:
//! [`Read`] for what a key holds ([`Value`]: siblings, a set, a counter or a cart, plus the
//! context for the next write), [`Op`] for CRDT operations, [`Error`] for typed failures (the
//! same variants the node sends, plus `Connect` and `Transport` for the connection itself).
//!
//! - [`SharedClient`] ([`shared`]): for applications. `Send + Sync + Clone`, usable from any
//!   tokio runtime (multi-threaded included) or any executor; it runs the connection on a
//!   thread of its own and reconnects after a lost connection. Start here.
//! - [`Client`]: the engine under it. One connection, `!Send`: capnp-rpc is single-threaded,
//!   so a `Client` must be created and used inside a tokio `LocalSet` on a current-thread
//!   runtime, like the node, which uses it to forward writes. [`block_on`] runs a future that
//!   way for programs that are not async themselves (the CLI uses it). It costs no thread hop,
//!   which is why the benchmark uses it.
//!
//! Every type in these signatures is re-exported at the crate root: `cartwheel::{SharedClient,
//! Client, Credentials, Error, Op, Read, Value, ReadOptions, WriteOptions}`. With
//! `default-features = false` the crate is this library alone (no node, no CLI).
//!
//! ```no_run
#![doc = include_str!("../../examples/client.rs")]
//! ```
//!
//! That program is `examples/client.rs` (`cargo run --example client` while `up` runs); the
//! README's "Use it from Rust" shows the same and a test keeps the two equal.
//!
//! The library checks a value against its own copy of the value limit
//! ([`Client::set_value_bytes_max`], [`VALUE_BYTES_MAX_DEFAULT`] by default, the node's
//! default) before sending, so an oversized value fails at once with `ValueTooLarge` and never
//! costs a round trip or, beyond the node's message limit, the connection.
//!
//! Routing: a client talks to the node it connected to, which coordinates. Zero-hop routing
//! over the ring is [`router::ClusterClient`] (local, like [`Client`]).
//!
//! Connecting: [`Client::connect_with`] and [`SharedClient::connect`] take [`Credentials`] (a
//! token and the cluster CA's certificate, as `up` writes them to `data/admin.credentials`):
//! they open a TLS 1.3 session, check the node's certificate against the CA, and log in with
//! the token (`Gate.login`); every call after that is scoped to the token's grants.
//! [`Client::connect`] (and `Credentials::default()`) is for a node in insecure mode (plain
//! TCP, an empty token).

pub mod router;
pub mod shared;

use std::time::Duration;

use capnp_rpc::{rpc_twoparty_capnp, RpcSystem};
pub use cartwheel_resolvers::{Op, Read, Value};
use tokio::net::TcpStream;

use crate::cartwheel_capnp::{cartwheel, gate, get_result, write_result, NodeState};
pub use crate::error::Error;
use crate::node::wire::{self};
pub use crate::node::wire::{ReadOptions, WriteOptions};
pub use crate::security::Credentials;
pub use shared::SharedClient;

/// The value size a client refuses locally unless told another: the node's default
/// `limits.value_bytes_max` (1 MiB). The library holds its own copy, so it builds without the
/// node's configuration.
pub const VALUE_BYTES_MAX_DEFAULT: usize = 1 << 20;

#[cfg(feature = "server")]
const _: () = assert!(
    VALUE_BYTES_MAX_DEFAULT == crate::config::VALUE_BYTES_MAX_DEFAULT,
    "the client's value limit is the node's default"
);

/// How long `connect` waits for the TCP handshake.
pub const CONNECT_TIMEOUT_MS: u64 = 3_000;

/// The request timeout a client assumes when a request leaves it to the node (the node's
/// default `limits.request_timeout_ms`).
pub const NODE_REQUEST_TIMEOUT_MS: u64 = 5_000;

/// How much longer than the request's own timeout a client waits for the answer before it
/// gives up with [`Error::Timeout`]: the node answers `timeout` itself at its deadline, so
/// only a node that stopped answering (hung, or a half-open connection) reaches this one.
pub const CLIENT_DEADLINE_MARGIN_MS: u64 = 1_000;

/// A connection to one node.
pub struct Client {
    gate: gate::Client,
    api: cartwheel::Client,
    address: String,
    value_bytes_max: usize,
}

/// One member as `status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// Node id.
    pub id: String,
    /// Client API address.
    pub address: String,
    /// `up`, `suspect`, `down`, `joining`, `leaving` or `left`, as the answering node sees
    /// it (joining and leaving: in the ring change in flight).
    pub state: String,
    /// Partitions it owns.
    pub partitions_owned: u32,
    /// Hints the answering node holds for it.
    pub hints_queued: u64,
    /// Live bytes it stores, all buckets, as it last gossiped (`status` only; 0 in `ring`).
    pub data_bytes: u64,
}

/// One bucket as `status` reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketStatus {
    /// Name.
    pub name: String,
    /// Engine name.
    pub engine: String,
    /// Resolver name.
    pub resolver: String,
    /// N, R, W, DW.
    pub nrw: (u8, u8, u8, u8),
    /// Entries on this node.
    pub entries: u64,
    /// Live bytes on this node.
    pub live_bytes: u64,
    /// Approximate memory on this node.
    pub memory_bytes: u64,
    /// Whether the engine survives restarts.
    pub durable: bool,
    /// Client writes that left a key at or over the soft sibling limit.
    pub sibling_warnings: u64,
}

/// A node's `status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeStatus {
    /// Node id.
    pub node_id: String,
    /// Its address.
    pub address: String,
    /// Its version.
    pub version: String,
    /// Members it knows.
    pub members: Vec<MemberStatus>,
    /// Its buckets.
    pub buckets: Vec<BucketStatus>,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// Requests admitted.
    pub requests_served: u64,
    /// Requests and connections refused at a limit.
    pub requests_refused: u64,
    /// Open connections.
    pub connections: u32,
    /// The ring's epoch.
    pub ring_epoch: u64,
    /// Members whose bucket configuration differs from the answering node's.
    pub config_mismatches: Vec<String>,
    /// Hinted writes refused at the hint store's bounds.
    pub hints_refused: u64,
    /// Replicated states refused (timestamp past the maximum clock offset).
    pub states_refused: u64,
    /// Of `connections`, those not logged in yet.
    pub connections_unauthenticated: u32,
    /// `tls` or `insecure`.
    pub security: String,
    /// The member that commits ring changes, as the answering node sees it.
    pub claimant: String,
    /// The ring change in flight, and the answering node's part in it.
    pub transfers: TransferStatus,
    /// The partition count Q.
    pub partitions: u32,
    /// What anti-entropy did on the answering node since it started.
    pub anti_entropy: AntiEntropyStatus,
}

/// Anti-entropy on one node since it started, as `status` reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AntiEntropyStatus {
    /// Partitions compared with another replica.
    pub exchanges: u64,
    /// Keys repaired here from the other replica.
    pub keys_received: u64,
    /// Keys repaired at the other replica.
    pub keys_sent: u64,
    /// Milliseconds since the last comparison (0: none yet).
    pub last_exchange_ms_ago: u64,
    /// Deletes whose storage the node reclaimed.
    pub tombstones_collected: u64,
    /// States older than a collected tombstone, dropped.
    pub late_states_dropped: u64,
}

/// A ring change in flight, as one node reports it in `status`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TransferStatus {
    /// Its id (the epoch that committed it); 0 when none is in flight.
    pub transition: u64,
    /// Partitions of the ring not moved yet.
    pub moving: u32,
    /// Partitions the answering node takes over.
    pub receiving: u32,
    /// Of those, copied and verified.
    pub held: u32,
    /// Being copied now.
    pub running: Vec<u16>,
    /// Hash-tree segments exchanged by the node's copies.
    pub segments_copied: u64,
    /// Milliseconds since the node's first copy in it.
    pub elapsed_ms: u64,
    /// Why a copy waits, if one does.
    pub waiting: String,
    /// Entries the node's copies received.
    pub keys_copied: u64,
    /// And their bytes.
    pub bytes_copied: u64,
}

/// A membership change request (needs the admin grant): see [`Client::cluster`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterRequest {
    /// Stage: a member that owns nothing gets its share.
    Join(String),
    /// Stage: a member hands its partitions to the others.
    Leave(String),
    /// Stage: `new` takes exactly `old`'s partitions.
    Replace {
        /// The member that goes.
        old: String,
        /// The member that takes its place.
        new: String,
    },
    /// Stage: a member gone for good goes; its data is rebuilt from the other replicas.
    Remove(String),
    /// What a commit would do.
    Plan,
    /// Begin the ring change.
    Commit,
    /// Drop the staged changes.
    Cancel,
}

/// The claimant's answer to a [`ClusterRequest`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterAnswer {
    /// The node that answered.
    pub claimant: String,
    /// The staged changes, one line each ("leave n4").
    pub staged: Vec<String>,
    /// Partitions whose owner the plan changes: (partition, from, to).
    pub moves: Vec<(u16, String, String)>,
    /// Data per partition, estimated from the claimant's own copy.
    pub bytes_per_partition: u64,
    /// Keys per partition, estimated likewise.
    pub keys_per_partition: u64,
    /// The ring's epoch.
    pub ring_epoch: u64,
    /// Partitions of the ring change in flight not moved yet.
    pub moving: u32,
}

/// The ring as a node describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingInfo {
    /// Q.
    pub partition_count: u32,
    /// Node ids and addresses, indexed by `owners`.
    pub nodes: Vec<MemberStatus>,
    /// Owner (index into `nodes`) of each partition.
    pub owners: Vec<u16>,
    /// The ownership epoch.
    pub epoch: u64,
}

impl RingInfo {
    /// The key's preference list: node addresses in ring order from its partition's owner,
    /// each node once.
    pub fn preference_addresses(&self, bucket: &str, key: &[u8]) -> Vec<String> {
        let partition =
            crate::ring::partition_of(crate::ring::key_hash(bucket, key), self.partition_count);
        self.partition_preference(partition)
    }

    /// A partition's preference list: node addresses in ring order from its owner, each
    /// node once.
    pub fn partition_preference(&self, partition: u16) -> Vec<String> {
        let q = self.owners.len();
        let mut out: Vec<String> = Vec::new();
        for step in 0..q {
            let owner = self.owners[(partition as usize + step) % q] as usize;
            if let Some(node) = self.nodes.get(owner) {
                if !out.contains(&node.address) {
                    out.push(node.address.clone());
                }
            }
        }
        out
    }
}

impl Client {
    /// Connect to a node in insecure mode at `address` (`host:port`): plain TCP, an empty
    /// token. Must be called inside a `LocalSet`.
    pub async fn connect(address: &str) -> Result<Self, Error> {
        Self::connect_with(address, &Credentials::default()).await
    }

    /// Connect to the node at `address` (`host:port`) with `credentials`: TLS when they hold
    /// the cluster CA (the node's certificate is checked against it), plain TCP when not; then
    /// log in with their token. A refused login is `Unauthorized`. Must be called inside a
    /// `LocalSet`.
    pub async fn connect_with(address: &str, credentials: &Credentials) -> Result<Self, Error> {
        let failed = |reason: String| Error::Connect { address: address.to_string(), reason };
        let tls = match &credentials.ca_pem {
            Some(ca) => {
                Some(crate::security::client_config(ca).map_err(|e| failed(e.to_string()))?)
            }
            None => None,
        };
        let side = rpc_twoparty_capnp::Side::Client;
        let options = capnp::message::ReaderOptions::new();
        let timeout = crate::node::transport::MESSAGE_READ_TIMEOUT_DEFAULT;
        let connecting = async {
            let stream = TcpStream::connect(address).await.map_err(|e| failed(e.to_string()))?;
            match tls {
                None => crate::node::transport::network(stream, side, options, timeout)
                    .map_err(|e| failed(e.to_string())),
                Some(tls) => {
                    crate::node::transport::tune(&stream).map_err(|e| failed(e.to_string()))?;
                    let session = tokio_rustls::TlsConnector::from(tls)
                        .connect(crate::security::server_name(), stream)
                        .await
                        .map_err(|e| failed(format!("TLS: {e}")))?;
                    Ok(crate::node::transport::network_over(session, side, options, timeout))
                }
            }
        };
        let network = tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), connecting)
            .await
            .map_err(|_| failed(format!("no answer within {CONNECT_TIMEOUT_MS} ms")))??;
        let mut rpc = RpcSystem::new(Box::new(network), None);
        let gate: gate::Client = rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
        tokio::task::spawn_local(async move {
            if let Err(e) = rpc.await {
                tracing::debug!(error = %e, "client connection ended");
            }
        });
        let mut request = gate.login_request();
        request.get().set_token(credentials.token.as_str());
        let deadline = Duration::from_millis(CONNECT_TIMEOUT_MS);
        let response = tokio::time::timeout(deadline, request.send().promise)
            .await
            .map_err(|_| failed(format!("no login answer within {CONNECT_TIMEOUT_MS} ms")))?
            .map_err(|e| failed(e.to_string()))?;
        let result = response.get()?;
        if result.has_error() {
            return Err(wire::get_error(result.get_error()?));
        }
        let api = result.get_node()?;
        Ok(Self {
            gate,
            api,
            address: address.to_string(),
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
        })
    }

    /// A client over a member's capabilities (a node forwarding to another uses this).
    pub fn from_capability(api: cartwheel::Client, address: String) -> Self {
        let gate = capnp_rpc::new_client(NoGate);
        Self { gate, api, address, value_bytes_max: usize::MAX }
    }

    /// The address this client connected to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Set the value size this client refuses locally (match the node's `limits.value_bytes_max`).
    pub fn set_value_bytes_max(&mut self, bytes: usize) {
        self.value_bytes_max = bytes;
    }

    /// Wait for `answer` until the request's deadline (its `timeout_ms`, 0 for the node's
    /// default, plus [`CLIENT_DEADLINE_MARGIN_MS`]); a node that never answers gives a typed
    /// [`Error::Timeout`] (outcome unknown), never a hang.
    async fn within<T>(
        &self,
        timeout_ms: u32,
        answer: impl std::future::Future<Output = Result<T, capnp::Error>>,
    ) -> Result<T, Error> {
        let ms = match timeout_ms {
            0 => NODE_REQUEST_TIMEOUT_MS,
            ms => u64::from(ms),
        } + CLIENT_DEADLINE_MARGIN_MS;
        match tokio::time::timeout(Duration::from_millis(ms), answer).await {
            Ok(answer) => Ok(answer?),
            Err(_) => {
                Err(Error::Timeout(format!("{} did not answer within {ms} ms", self.address)))
            }
        }
    }

    /// Read a key with the bucket's default options. `value` is `None` when not found.
    pub async fn get(&self, bucket: &str, key: &[u8]) -> Result<Read, Error> {
        self.get_with(bucket, key, &ReadOptions::default()).await
    }

    /// Read a key with per-request options.
    pub async fn get_with(
        &self,
        bucket: &str,
        key: &[u8],
        options: &ReadOptions,
    ) -> Result<Read, Error> {
        let mut request = self.api.get_request();
        {
            let mut p = request.get();
            p.set_bucket(bucket);
            p.set_key(key);
            wire::set_read_options(p.init_options(), options);
        }
        let response = self.within(options.timeout_ms, request.send().promise).await?;
        let result = response.get()?.get_result()?;
        match result.which().map_err(|e| Error::Transport(e.to_string()))? {
            get_result::NotFound(context) => Ok(Read { context: context?.to_vec(), value: None }),
            get_result::Found(value) => wire::get_value(value?),
            get_result::Error(e) => Err(wire::get_error(e?)),
        }
    }

    /// Write a value, with the context of an earlier read (empty for a blind write).
    pub async fn put(
        &self,
        bucket: &str,
        key: &[u8],
        value: &[u8],
        context: &[u8],
    ) -> Result<Read, Error> {
        self.put_with(bucket, key, value, context, &WriteOptions::default()).await
    }

    /// Write a value with per-request options.
    pub async fn put_with(
        &self,
        bucket: &str,
        key: &[u8],
        value: &[u8],
        context: &[u8],
        options: &WriteOptions,
    ) -> Result<Read, Error> {
        check_value_size(value, self.value_bytes_max)?;
        let mut request = self.api.put_request();
        {
            let mut p = request.get();
            p.set_bucket(bucket);
            p.set_key(key);
            p.set_value(value);
            p.set_context(context);
            wire::set_write_options(p.init_options(), options);
        }
        let response = self.within(options.timeout_ms, request.send().promise).await?;
        write_outcome(response.get()?.get_result()?)
    }

    /// Delete what the context observed (everything, with an empty context).
    pub async fn delete(&self, bucket: &str, key: &[u8], context: &[u8]) -> Result<Read, Error> {
        self.delete_with(bucket, key, context, &WriteOptions::default()).await
    }

    /// Delete with per-request options.
    pub async fn delete_with(
        &self,
        bucket: &str,
        key: &[u8],
        context: &[u8],
        options: &WriteOptions,
    ) -> Result<Read, Error> {
        let mut request = self.api.delete_request();
        {
            let mut p = request.get();
            p.set_bucket(bucket);
            p.set_key(key);
            p.set_context(context);
            wire::set_write_options(p.init_options(), options);
        }
        let response = self.within(options.timeout_ms, request.send().promise).await?;
        write_outcome(response.get()?.get_result()?)
    }

    /// Apply CRDT operations as one write.
    pub async fn update(
        &self,
        bucket: &str,
        key: &[u8],
        ops: &[Op],
        context: &[u8],
        options: &WriteOptions,
    ) -> Result<Read, Error> {
        let mut request = self.api.update_request();
        {
            let mut p = request.get();
            p.set_bucket(bucket);
            p.set_key(key);
            p.set_context(context);
            let mut list = p.reborrow().init_ops(ops.len() as u32);
            for (i, op) in ops.iter().enumerate() {
                wire::set_op(list.reborrow().get(i as u32), op);
            }
            wire::set_write_options(p.init_options(), options);
        }
        let response = self.within(options.timeout_ms, request.send().promise).await?;
        write_outcome(response.get()?.get_result()?)
    }

    /// The node's view of the ring (needs the admin grant).
    pub async fn ring(&self) -> Result<RingInfo, Error> {
        let response = self.within(0, self.api.ring_request().send().promise).await?;
        if response.get()?.has_error() {
            return Err(wire::get_error(response.get()?.get_error()?));
        }
        let ring = response.get()?.get_ring()?;
        let nodes = ring.get_nodes()?.iter().map(member).collect::<Result<_, _>>()?;
        Ok(RingInfo {
            partition_count: ring.get_partition_count(),
            nodes,
            owners: ring.get_owners()?.iter().collect(),
            epoch: ring.get_epoch(),
        })
    }

    /// The node's status (needs the admin grant).
    pub async fn status(&self) -> Result<NodeStatus, Error> {
        let response = self.within(0, self.api.status_request().send().promise).await?;
        if response.get()?.has_error() {
            return Err(wire::get_error(response.get()?.get_error()?));
        }
        let s = response.get()?.get_status()?;
        let members = s.get_members()?.iter().map(member).collect::<Result<_, _>>()?;
        let mut buckets = Vec::new();
        for b in s.get_buckets()?.iter() {
            buckets.push(BucketStatus {
                name: text(b.get_name())?,
                engine: text(b.get_engine())?,
                resolver: text(b.get_resolver())?,
                nrw: (b.get_n(), b.get_r(), b.get_w(), b.get_dw()),
                entries: b.get_entries(),
                live_bytes: b.get_live_bytes(),
                memory_bytes: b.get_memory_bytes(),
                durable: b.get_durable(),
                sibling_warnings: b.get_sibling_warnings(),
            });
        }
        Ok(NodeStatus {
            node_id: text(s.get_node_id())?,
            address: text(s.get_address())?,
            version: text(s.get_version())?,
            members,
            buckets,
            uptime_ms: s.get_uptime_ms(),
            requests_served: s.get_requests_served(),
            requests_refused: s.get_requests_refused(),
            connections: s.get_connections(),
            ring_epoch: s.get_ring_epoch(),
            config_mismatches: s
                .get_config_mismatches()?
                .iter()
                .map(text)
                .collect::<Result<_, _>>()?,
            hints_refused: s.get_hints_refused(),
            states_refused: s.get_states_refused(),
            connections_unauthenticated: s.get_connections_unauthenticated(),
            security: text(s.get_security())?,
            claimant: text(s.get_claimant())?,
            transfers: {
                let t = s.get_transfers()?;
                TransferStatus {
                    transition: t.get_transition(),
                    moving: t.get_moving(),
                    receiving: t.get_receiving(),
                    held: t.get_held(),
                    running: t.get_running()?.iter().collect(),
                    segments_copied: t.get_segments_copied(),
                    elapsed_ms: t.get_elapsed_ms(),
                    waiting: text(t.get_waiting())?,
                    keys_copied: t.get_keys_copied(),
                    bytes_copied: t.get_bytes_copied(),
                }
            },
            partitions: s.get_partitions(),
            anti_entropy: {
                let a = s.get_anti_entropy()?;
                AntiEntropyStatus {
                    exchanges: a.get_exchanges(),
                    keys_received: a.get_keys_received(),
                    keys_sent: a.get_keys_sent(),
                    last_exchange_ms_ago: a.get_last_exchange_ms_ago(),
                    tombstones_collected: a.get_tombstones_collected(),
                    late_states_dropped: a.get_late_states_dropped(),
                }
            },
        })
    }

    /// Stage, plan, commit or cancel a membership change (needs the admin grant). Only the
    /// claimant ([`NodeStatus::claimant`]) takes it; another node answers `badRequest` naming
    /// the claimant.
    pub async fn cluster(&self, request: &ClusterRequest) -> Result<ClusterAnswer, Error> {
        let mut call = self.api.cluster_request();
        wire::set_cluster_request(call.get().init_request(), request);
        let response = self.within(0, call.send().promise).await?;
        let result = response.get()?;
        if result.has_error() {
            return Err(wire::get_error(result.get_error()?));
        }
        wire::get_cluster_answer(result.get_answer()?)
    }

    /// Mint a token with `grants` (see [`crate::security::token`]; needs the admin grant).
    /// Returns the token and its id.
    pub async fn create_token(&self, grants: &str) -> Result<(String, String), Error> {
        let mut request = self.api.create_token_request();
        request.get().set_grants(grants);
        let response = self.within(0, request.send().promise).await?;
        let result = response.get()?;
        if result.has_error() {
            return Err(wire::get_error(result.get_error()?));
        }
        Ok((text(result.get_token())?, text(result.get_id())?))
    }

    /// Revoke the token with `id` on every node (needs the admin grant).
    pub async fn revoke_token(&self, id: &str) -> Result<(), Error> {
        let mut request = self.api.revoke_token_request();
        request.get().set_id(id);
        let response = self.within(0, request.send().promise).await?;
        let result = response.get()?;
        if result.has_error() {
            return Err(wire::get_error(result.get_error()?));
        }
        Ok(())
    }

    /// The state this node itself stores for a key (merged with hints it holds for it), as
    /// resolver bytes: the node-to-node `fetch`, for tools and tests that look at one replica.
    /// Reachable only where the peer API is: a node in insecure mode (a TLS node refuses it
    /// to anyone without a member's certificate).
    pub async fn replica_state(&self, bucket: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let mut request = self.gate.peer_request();
        request.get().set_from("client");
        let peer = request.send().pipeline.get_peer();
        let mut request = peer.fetch_request();
        request.get().set_bucket(bucket);
        request.get().set_key(key);
        let response = self.within(0, request.send().promise).await?;
        match response.get()?.get_result()?.which().map_err(|e| Error::Transport(e.to_string()))? {
            crate::cartwheel_capnp::fetch_result::NotFound(()) => Ok(None),
            crate::cartwheel_capnp::fetch_result::State(state) => Ok(Some(state?.to_vec())),
            crate::cartwheel_capnp::fetch_result::Error(e) => Err(wire::get_error(e?)),
        }
    }
}

/// The gate of a client made from a member's capability: it has logged in already.
struct NoGate;

impl gate::Server for NoGate {}

/// Refuse locally a value over the client's copy of the node's value limit: it would cost a
/// round trip (or, far over it, the connection) to learn the same. Both clients use it.
pub(crate) fn check_value_size(value: &[u8], max: usize) -> Result<(), Error> {
    if value.len() > max {
        return Err(Error::ValueTooLarge(format!(
            "value of {} bytes is over the limit of {max} bytes",
            value.len()
        )));
    }
    Ok(())
}

fn write_outcome(result: write_result::Reader<'_>) -> Result<Read, Error> {
    match result.which().map_err(|e| Error::Transport(e.to_string()))? {
        write_result::Ok(ok) => {
            let ok = ok?;
            if ok.has_value() {
                wire::get_value(ok.get_value()?)
            } else {
                Ok(Read { context: ok.get_context()?.to_vec(), value: None })
            }
        }
        write_result::Error(e) => Err(wire::get_error(e?)),
    }
}

fn text(reader: capnp::Result<capnp::text::Reader<'_>>) -> Result<String, Error> {
    reader?.to_string().map_err(|e| Error::Transport(format!("text is not UTF-8: {e}")))
}

fn member(node: crate::cartwheel_capnp::node_info::Reader<'_>) -> Result<MemberStatus, Error> {
    let state = match node.get_state() {
        Ok(NodeState::Up) => "up",
        Ok(NodeState::Suspect) => "suspect",
        Ok(NodeState::Down) => "down",
        Ok(NodeState::Joining) => "joining",
        Ok(NodeState::Leaving) => "leaving",
        Ok(NodeState::Left) => "left",
        Err(_) => "unknown",
    };
    Ok(MemberStatus {
        id: text(node.get_id())?,
        address: text(node.get_address())?,
        state: state.to_string(),
        partitions_owned: node.get_partitions_owned(),
        hints_queued: node.get_hints_queued(),
        data_bytes: node.get_data_bytes(),
    })
}

/// Run `future` to completion on a new current-thread runtime inside a `LocalSet`, as the
/// client requires. For programs that are not async themselves.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread tokio runtime builds on any supported platform");
    tokio::task::LocalSet::new().block_on(&runtime, future)
}
