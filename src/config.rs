//! # Node configuration
//!
//! One TOML file per node (DESIGN §6). Everything has a default but `node.id` and
//! `node.listen`; when no file is given at all, [`Config::embedded`] is a development setup
//! with one ready bucket per resolver this build has. A file without a `[buckets]` table gets
//! those same buckets.
//!
//! Bad configuration is refused at start, never half-applied: [`ConfigError`] names the file,
//! the key (a dotted path such as `buckets.carts.w`) and the reason. Unknown keys are errors
//! too, so a typo does not silently fall back to a default.
//!
//! ```toml
//! [node]
//! id = "n1"
//! listen = "127.0.0.1:7401"
//! data_dir = "data/n1"
//! seeds = ["127.0.0.1:7401"]
//! metrics_listen = "127.0.0.1:9401"   # optional: GET /metrics (crate::metrics)
//!
//! [cluster]
//! partitions = 64
//!
//! [limits]
//! key_bytes_max = 1024
//! value_bytes_max = 1048576
//! inflight_bytes_max = 67108864
//!
//! [buckets.carts]
//! engine = "memory"
//! resolver = "lww"
//! n = 3
//! r = 2
//! w = 2
//! dw = 0
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use cartwheel_engines::{EngineKind, EngineOptions, FlusherBackend};
use cartwheel_resolvers::{ResolverConfig, ResolverKind};
use serde::Deserialize;

use crate::ring::{PARTITIONS_DEFAULT, PARTITIONS_MAX, PARTITION_PREFIX_BYTES};

/// Where the embedded defaults say a configuration came from.
pub const EMBEDDED_SOURCE: &str = "<embedded defaults>";

/// The client port of the first local node; `up` numbers the others from here.
pub const LISTEN_PORT_DEFAULT: u16 = 7401;

/// Largest replication factor a bucket may ask for.
pub const N_MAX: u8 = 16;

/// Default key limit: 1 KiB.
pub const KEY_BYTES_MAX_DEFAULT: usize = 1024;

/// Default value limit: 1 MiB.
pub const VALUE_BYTES_MAX_DEFAULT: usize = 1 << 20;

/// Default budget of bytes a node holds for requests in flight: 64 MiB. With the default
/// value limit that is 64 puts of 1 MiB on one node, or 21 replicated to two peers each, in
/// flight at once: enough to keep a disk and a 10 Gbit/s link busy for tens of
/// milliseconds, so the budget turns load away only when the node is already behind, while
/// the node's memory for them stays a small multiple of it (src/node/server.rs).
pub const INFLIGHT_BYTES_MAX_DEFAULT: usize = 64 << 20;

/// Node-wide limits. Each says what happens at the limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest key, in bytes. A longer key is refused with `keyTooLarge`; nothing is stored.
    pub key_bytes_max: usize,
    /// Longest value, in bytes. A longer value is refused with `valueTooLarge`; nothing is
    /// stored. Incoming messages are bounded at [`Limits::message_bytes_max`], so a value far
    /// over this limit closes the connection instead.
    pub value_bytes_max: usize,
    /// Requests one client connection may have in flight. More are answered at once with
    /// `overloaded` and nothing is done for them.
    pub inflight_per_connection_max: usize,
    /// Requests one member's connection (one that opened the node-to-node API) may have in
    /// flight. Larger than a client's: one such connection carries all of a peer's
    /// replication, reads and forwarded writes to this node, so at 10 000 requests a second
    /// and a 25 ms tail it holds 250 calls where no client holds more than a few; shedding
    /// them fails writes and reads with `quorumNotMet` (docs/BENCHMARKS.md). The bytes those
    /// calls carry are bounded by `inflight_bytes_max` all the same.
    pub inflight_per_peer_connection_max: usize,
    /// Bytes the node may hold for requests in flight, all connections together: client
    /// values being written, states being sent to peers or received from them
    /// ([`crate::cluster::budget`]). A request that would pass it is answered at once with
    /// `overloaded` and nothing is done for it. At least twice
    /// [`Limits::message_bytes_max`], so a write of the largest value, replicated to two
    /// peers, always fits into an idle node's budget; when not set, 64 MiB or that floor,
    /// whichever is larger.
    pub inflight_bytes_max: usize,
    /// Open client and peer connections. A connection over the limit is closed on accept.
    pub connections_max: usize,
    /// Default request timeout, in milliseconds, when a request gives 0.
    pub request_timeout_ms: u64,
    /// A message whose first byte has arrived must arrive whole within this many
    /// milliseconds, or the node closes the connection (a peer that stalls or died half-way
    /// through a message does not hold a connection forever). Idle connections are not
    /// affected.
    pub message_read_timeout_ms: u64,
    /// A new connection must finish its TLS handshake and log in (or open the peer API)
    /// within this many milliseconds, or it is closed.
    pub handshake_timeout_ms: u64,
    /// A logged-in connection with no call for this many milliseconds is closed.
    pub idle_timeout_ms: u64,
    /// Connections from one source address. At the limit the oldest of that address's
    /// connections that has not logged in yet is closed to make room; when all have logged
    /// in, the new one is closed on accept.
    pub connections_per_source_max: usize,
    /// Connections that have not logged in yet, from all addresses together. At the limit the
    /// oldest of them is closed to make room, so idle connections never lock a client out.
    pub unauthenticated_connections_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            key_bytes_max: KEY_BYTES_MAX_DEFAULT,
            value_bytes_max: VALUE_BYTES_MAX_DEFAULT,
            inflight_per_connection_max: 256,
            inflight_per_peer_connection_max: 4096,
            inflight_bytes_max: INFLIGHT_BYTES_MAX_DEFAULT,
            connections_max: 1024,
            request_timeout_ms: 5_000,
            message_read_timeout_ms: 30_000,
            handshake_timeout_ms: 10_000,
            idle_timeout_ms: 600_000,
            connections_per_source_max: 256,
            unauthenticated_connections_max: 64,
        }
    }
}

impl Limits {
    /// The largest incoming Cap'n Proto message, in bytes: room for a value twice over the
    /// value limit (so an oversized value still reaches the node and gets a typed error),
    /// plus the key and 64 KiB for the rest of the request. Beyond it, the message is not
    /// read and the connection is closed: capnp's traversal limit is set from this.
    pub fn message_bytes_max(&self) -> usize {
        2 * self.value_bytes_max + self.key_bytes_max + (64 << 10)
    }

    /// The largest state a client write may leave a key with: twice the value limit, so that
    /// every state fits one replicate message (with its key and the rest of the request)
    /// and can always be replicated, repaired and handed off. A write that would grow a state
    /// past it (a cart, set or sibling set that kept growing) is refused with
    /// `valueTooLarge` and changes nothing. Merges are never refused (replicas must take in
    /// each other's states), so a merge of two states under the limit may exceed it.
    pub fn state_bytes_max(&self) -> usize {
        2 * self.value_bytes_max
    }
}

/// `[cluster]` settings beyond the partition count.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// Milliseconds between gossip rounds (and hint delivery rounds). Failure detection
    /// scales with it: suspect after 3 silent rounds, down after 8.
    pub gossip_interval_ms: u64,
    /// Hints a node holds at most; a hinted write past it is refused and counted.
    pub hint_count_max: u64,
    /// Bytes of hints a node holds at most; a hinted write past it is refused and counted.
    pub hint_bytes_max: u64,
    /// Hints delivered per owner per round: the replay rate limit. Also the handoff budget
    /// (keys per round).
    pub hint_replay_per_round: usize,
    /// Partitions compared with a peer's per round by anti-entropy (each costs one scan of
    /// that partition on both sides); 0 turns anti-entropy off.
    pub anti_entropy_partitions_per_round: usize,
    /// How far ahead of this node's clock a replicated state's timestamp may be, in
    /// milliseconds. A state stamped further ahead is refused (counted, logged): a peer's
    /// clock, or a forged state, cannot move last-write-wins into the future.
    pub max_clock_offset_ms: u64,
    /// Partitions a node copies at once while the ring changes (DESIGN "Membership
    /// changes"); at least 1.
    pub transfer_limit: usize,
    /// Bytes per second a node copies at most while the ring changes; 0: no limit.
    pub transfer_bytes_per_s: u64,
    /// Whether the claimant joins new members by itself, or waits for `admin join`.
    pub auto_join: bool,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            gossip_interval_ms: 1_000,
            hint_count_max: crate::store::hints::HINT_COUNT_MAX_DEFAULT,
            hint_bytes_max: crate::store::hints::HINT_BYTES_MAX_DEFAULT,
            hint_replay_per_round: 512,
            anti_entropy_partitions_per_round: 1,
            max_clock_offset_ms: 500,
            transfer_limit: 2,
            transfer_bytes_per_s: 0,
            auto_join: true,
        }
    }
}

/// One bucket's settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketConfig {
    /// The storage engine.
    pub engine: EngineKind,
    /// The conflict resolver.
    pub resolver: ResolverKind,
    /// Replicas of each key.
    pub n: u8,
    /// Replicas a read waits for.
    pub r: u8,
    /// Replicas a write waits for.
    pub w: u8,
    /// Of those, replicas that must have synced the write before the ack.
    pub dw: u8,
    /// Resolver limits (siblings).
    pub resolver_config: ResolverConfig,
    /// Engine settings.
    pub engine_options: EngineOptions,
}

impl BucketConfig {
    /// A bucket with the default N/R/W (3/2/2, dw 0) on `engine` with `resolver`.
    pub fn new(engine: EngineKind, resolver: ResolverKind) -> Self {
        Self {
            engine,
            resolver,
            n: 3,
            r: 2,
            w: 2,
            dw: 0,
            resolver_config: ResolverConfig::default(),
            engine_options: EngineOptions::default(),
        }
    }

    /// N, R, W and DW at most `nodes` (and at least 1; DW at most W): see
    /// [`Config::fit_buckets_to`].
    pub fn fit_to(&mut self, nodes: u8) {
        let nodes = nodes.max(1);
        self.n = self.n.min(nodes);
        self.r = self.r.min(self.n);
        self.w = self.w.min(self.n);
        self.dw = self.dw.min(self.w);
    }
}

/// `[node]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// The node's id: its actor id in every clock. Stable across restarts.
    pub id: String,
    /// Address of the client and peer API.
    pub listen: SocketAddr,
    /// Directory of the node's data; each bucket keeps its engine in `buckets/<name>/`.
    pub data_dir: PathBuf,
    /// Addresses of nodes to join through.
    pub seeds: Vec<String>,
    /// Where to serve the metrics (`GET /metrics`, Prometheus text format); `None` (the
    /// default): not served. No authentication: bind it to loopback or a monitoring network
    /// ([`crate::metrics::http`]).
    pub metrics_listen: Option<SocketAddr>,
}

/// How connections are secured (`[security]`, DESIGN "Trust").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecurityMode {
    /// TLS 1.3 on every connection; peers prove membership with a certificate from the
    /// cluster's CA, clients log in with a token. The default.
    Tls,
    /// Plain TCP; any connection may log in with any token and open the peer API. Must be
    /// asked for, and is logged loudly at start.
    Insecure,
}

/// `[security]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecurityConfig {
    /// TLS or insecure.
    pub mode: SecurityMode,
    /// The cluster secret: 32 random bytes as 64 hex digits, the same file on every node.
    /// The CA key, the node certificates and the token key all derive from it.
    pub secret_file: PathBuf,
    /// Create the secret when the file does not exist (the embedded defaults and `up`; a
    /// configuration file never does: a node with a missing secret does not start).
    pub create_secret: bool,
}

impl SecurityConfig {
    /// TLS with the secret in `dir/cluster.secret`, created when missing: what `up` and the
    /// embedded defaults use.
    pub fn development(dir: &Path) -> Self {
        Self { mode: SecurityMode::Tls, secret_file: dir.join(SECRET_FILE), create_secret: true }
    }

    /// Plain TCP, no secret.
    pub fn insecure() -> Self {
        Self { mode: SecurityMode::Insecure, secret_file: PathBuf::new(), create_secret: false }
    }
}

/// The file name of the cluster secret in a development data directory.
pub const SECRET_FILE: &str = "cluster.secret";

/// A validated node configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// The file it came from, or [`EMBEDDED_SOURCE`].
    pub source: String,
    /// `[node]`.
    pub node: NodeConfig,
    /// `[cluster] partitions`: Q.
    pub partitions: u32,
    /// The rest of `[cluster]`.
    pub cluster: ClusterSettings,
    /// `[limits]`.
    pub limits: Limits,
    /// `[buckets.NAME]`.
    pub buckets: BTreeMap<String, BucketConfig>,
    /// `[security]`.
    pub security: SecurityConfig,
}

/// A configuration refused at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {}{reason}", if key.is_empty() { String::new() } else { format!("{key}: ") })]
pub struct ConfigError {
    /// The file (or [`EMBEDDED_SOURCE`]).
    pub file: String,
    /// The dotted key, e.g. `buckets.carts.w`; empty where the file as a whole is bad.
    pub key: String,
    /// What is wrong, for a person.
    pub reason: String,
}

impl Config {
    /// The development setup: node `n1` on 127.0.0.1:7401, data under `data/n1`, and the
    /// embedded buckets ([`embedded_buckets`]).
    pub fn embedded() -> Self {
        let listen = SocketAddr::from(([127, 0, 0, 1], LISTEN_PORT_DEFAULT));
        Self {
            source: EMBEDDED_SOURCE.to_string(),
            node: NodeConfig {
                id: "n1".to_string(),
                listen,
                data_dir: PathBuf::from("data/n1"),
                seeds: vec![listen.to_string()],
                metrics_listen: None,
            },
            partitions: PARTITIONS_DEFAULT,
            cluster: ClusterSettings::default(),
            limits: Limits::default(),
            buckets: embedded_buckets(),
            security: SecurityConfig::development(Path::new("data")),
        }
    }

    /// Fit every bucket to a cluster of `nodes` nodes: N, R, W and DW at most `nodes` (and
    /// at least 1, DW at most W). A write waits for W copies on W distinct nodes and is
    /// refused when the ring has fewer, so a node that runs alone (a development node, a
    /// benchmark or a test on one node) needs its buckets fitted to it.
    pub fn fit_buckets_to(&mut self, nodes: usize) {
        let most = u8::try_from(nodes.max(1)).unwrap_or(u8::MAX);
        for bucket in self.buckets.values_mut() {
            bucket.fit_to(most);
        }
    }

    /// Read and validate a TOML file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: String::new(),
            reason: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, &file)
    }

    /// Parse and validate TOML text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { String::new() } else { key };
            let inner = e.inner();
            let line =
                inner.span().map(|span| text[..span.start.min(text.len())].lines().count().max(1));
            let reason = match line {
                Some(line) => format!("{} (line {line})", inner.message().trim()),
                None => inner.message().trim().to_string(),
            };
            ConfigError { file: file.to_string(), key, reason }
        })?;
        raw.validate(file)
    }
}

/// The buckets every node has without configuration: `default` (lww), and one per further
/// resolver this build contains: `siblings`, `sets` (orset), `counters` (pncounter), `carts`
/// (cart). All on the `log` engine with N/R/W 3/2/2 and dw 0.
pub fn embedded_buckets() -> BTreeMap<String, BucketConfig> {
    let wanted = [
        ("default", ResolverKind::Lww),
        ("siblings", ResolverKind::Siblings),
        ("sets", ResolverKind::Orset),
        ("counters", ResolverKind::Pncounter),
        ("carts", ResolverKind::Cart),
    ];
    wanted
        .into_iter()
        .map(|(name, kind)| (name.to_string(), BucketConfig::new(EngineKind::Log, kind)))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The file's shape, before validation.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    #[serde(default)]
    cluster: RawCluster,
    #[serde(default)]
    limits: RawLimits,
    buckets: Option<BTreeMap<String, RawBucket>>,
    #[serde(default)]
    security: RawSecurity,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSecurity {
    mode: Option<String>,
    secret_file: Option<PathBuf>,
}

impl RawSecurity {
    fn validate(self, refuse: &Refuse<'_>) -> Result<SecurityConfig, ConfigError> {
        match self.mode.as_deref().unwrap_or("tls") {
            "tls" => {
                let secret_file = self.secret_file.ok_or_else(|| {
                    refuse.at(
                        "security.secret_file",
                        "is required: the cluster secret (create one with `cartwheel secret \
                         FILE`), or set security.mode = \"insecure\"",
                    )
                })?;
                Ok(SecurityConfig { mode: SecurityMode::Tls, secret_file, create_secret: false })
            }
            "insecure" => Ok(SecurityConfig::insecure()),
            other => Err(refuse.at("security.mode", format!("{other:?} is not tls or insecure"))),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    id: String,
    listen: String,
    data_dir: Option<PathBuf>,
    #[serde(default)]
    seeds: Vec<String>,
    metrics_listen: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    partitions: Option<u32>,
    gossip_interval_ms: Option<u64>,
    hint_count_max: Option<u64>,
    hint_bytes_max: Option<u64>,
    hint_replay_per_round: Option<usize>,
    anti_entropy_partitions_per_round: Option<usize>,
    max_clock_offset_ms: Option<u64>,
    transfer_limit: Option<usize>,
    transfer_bytes_per_s: Option<u64>,
    auto_join: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    key_bytes_max: Option<usize>,
    value_bytes_max: Option<usize>,
    inflight_per_connection_max: Option<usize>,
    inflight_per_peer_connection_max: Option<usize>,
    inflight_bytes_max: Option<usize>,
    connections_max: Option<usize>,
    request_timeout_ms: Option<u64>,
    message_read_timeout_ms: Option<u64>,
    handshake_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    connections_per_source_max: Option<usize>,
    unauthenticated_connections_max: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBucket {
    engine: Option<String>,
    resolver: Option<String>,
    n: Option<u8>,
    r: Option<u8>,
    w: Option<u8>,
    dw: Option<u8>,
    siblings_soft_max: Option<usize>,
    siblings_hard_max: Option<usize>,
    flush_interval_ms: Option<u64>,
    flusher: Option<String>,
}

/// Builds [`ConfigError`]s for one file.
struct Refuse<'a>(&'a str);

impl Refuse<'_> {
    fn at(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError { file: self.0.to_string(), key: key.into(), reason: reason.into() }
    }
}

impl RawConfig {
    fn validate(self, file: &str) -> Result<Config, ConfigError> {
        let refuse = Refuse(file);
        let node = self.node.validate(&refuse)?;
        let partitions = self.cluster.partitions.unwrap_or(PARTITIONS_DEFAULT);
        if !partitions.is_power_of_two() || partitions > PARTITIONS_MAX {
            return Err(refuse.at(
                "cluster.partitions",
                format!("{partitions} is not a power of two from 1 to {PARTITIONS_MAX}"),
            ));
        }
        let defaults = ClusterSettings::default();
        let cluster = ClusterSettings {
            gossip_interval_ms: self
                .cluster
                .gossip_interval_ms
                .unwrap_or(defaults.gossip_interval_ms),
            hint_count_max: self.cluster.hint_count_max.unwrap_or(defaults.hint_count_max),
            hint_bytes_max: self.cluster.hint_bytes_max.unwrap_or(defaults.hint_bytes_max),
            hint_replay_per_round: self
                .cluster
                .hint_replay_per_round
                .unwrap_or(defaults.hint_replay_per_round),
            anti_entropy_partitions_per_round: self
                .cluster
                .anti_entropy_partitions_per_round
                .unwrap_or(defaults.anti_entropy_partitions_per_round),
            max_clock_offset_ms: self
                .cluster
                .max_clock_offset_ms
                .unwrap_or(defaults.max_clock_offset_ms),
            transfer_limit: self.cluster.transfer_limit.unwrap_or(defaults.transfer_limit),
            transfer_bytes_per_s: self
                .cluster
                .transfer_bytes_per_s
                .unwrap_or(defaults.transfer_bytes_per_s),
            auto_join: self.cluster.auto_join.unwrap_or(defaults.auto_join),
        };
        if !(1..=64).contains(&cluster.transfer_limit) {
            return Err(refuse.at("cluster.transfer_limit", "must be 1 to 64"));
        }
        if !(10..=60_000).contains(&cluster.gossip_interval_ms) {
            return Err(refuse.at("cluster.gossip_interval_ms", "must be 10 to 60000"));
        }
        if cluster.hint_replay_per_round == 0 {
            return Err(refuse.at("cluster.hint_replay_per_round", "must be at least 1"));
        }
        let limits = self.limits.validate(&refuse)?;
        let buckets = match self.buckets {
            None => embedded_buckets(),
            Some(raw) => {
                let mut buckets = BTreeMap::new();
                for (name, bucket) in raw {
                    let validated = bucket.validate(&refuse, &name)?;
                    buckets.insert(name, validated);
                }
                buckets
            }
        };
        let security = self.security.validate(&refuse)?;
        Ok(Config {
            source: file.to_string(),
            node,
            partitions,
            cluster,
            limits,
            buckets,
            security,
        })
    }
}

impl RawNode {
    fn validate(self, refuse: &Refuse<'_>) -> Result<NodeConfig, ConfigError> {
        if let Err(reason) = check_name(&self.id) {
            return Err(refuse.at("node.id", reason));
        }
        if self.id.len() > crate::actors::NODE_ID_BYTES_MAX {
            let max = crate::actors::NODE_ID_BYTES_MAX;
            return Err(refuse.at("node.id", format!("{:?} is over {max} characters", self.id)));
        }
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            refuse.at("node.listen", format!("{:?} is not an IP address and port", self.listen))
        })?;
        for (i, seed) in self.seeds.iter().enumerate() {
            if seed.rsplit_once(':').and_then(|(_, port)| port.parse::<u16>().ok()).is_none() {
                return Err(
                    refuse.at(format!("node.seeds[{i}]"), format!("{seed:?} is not HOST:PORT"))
                );
            }
        }
        let metrics_listen = match &self.metrics_listen {
            None => None,
            Some(address) => Some(address.parse::<SocketAddr>().map_err(|_| {
                refuse
                    .at("node.metrics_listen", format!("{address:?} is not an IP address and port"))
            })?),
        };
        if metrics_listen.is_some_and(|m| m == listen && m.port() != 0) {
            return Err(refuse.at("node.metrics_listen", "is node.listen's address".to_string()));
        }
        let data_dir = self.data_dir.unwrap_or_else(|| PathBuf::from("data").join(&self.id));
        let seeds = if self.seeds.is_empty() { vec![listen.to_string()] } else { self.seeds };
        Ok(NodeConfig { id: self.id, listen, data_dir, seeds, metrics_listen })
    }
}

impl RawLimits {
    fn validate(self, refuse: &Refuse<'_>) -> Result<Limits, ConfigError> {
        let defaults = Limits::default();
        let limits = Limits {
            key_bytes_max: self.key_bytes_max.unwrap_or(defaults.key_bytes_max),
            value_bytes_max: self.value_bytes_max.unwrap_or(defaults.value_bytes_max),
            inflight_per_connection_max: self
                .inflight_per_connection_max
                .unwrap_or(defaults.inflight_per_connection_max),
            inflight_per_peer_connection_max: self
                .inflight_per_peer_connection_max
                .unwrap_or(defaults.inflight_per_peer_connection_max),
            inflight_bytes_max: 0,
            connections_max: self.connections_max.unwrap_or(defaults.connections_max),
            request_timeout_ms: self.request_timeout_ms.unwrap_or(defaults.request_timeout_ms),
            message_read_timeout_ms: self
                .message_read_timeout_ms
                .unwrap_or(defaults.message_read_timeout_ms),
            handshake_timeout_ms: self
                .handshake_timeout_ms
                .unwrap_or(defaults.handshake_timeout_ms),
            idle_timeout_ms: self.idle_timeout_ms.unwrap_or(defaults.idle_timeout_ms),
            connections_per_source_max: self
                .connections_per_source_max
                .unwrap_or(defaults.connections_per_source_max),
            unauthenticated_connections_max: self
                .unauthenticated_connections_max
                .unwrap_or(defaults.unauthenticated_connections_max),
        };
        let key_ceiling = cartwheel_engines::KEY_BYTES_MAX - PARTITION_PREFIX_BYTES;
        if limits.key_bytes_max == 0 || limits.key_bytes_max > key_ceiling {
            return Err(refuse.at("limits.key_bytes_max", format!("must be 1 to {key_ceiling}")));
        }
        // A state holds the value plus resolver metadata; leave the engine room for it.
        let value_ceiling = cartwheel_engines::VALUE_BYTES_MAX / 2;
        if limits.value_bytes_max == 0 || limits.value_bytes_max > value_ceiling {
            return Err(
                refuse.at("limits.value_bytes_max", format!("must be 1 to {value_ceiling}"))
            );
        }
        if limits.inflight_per_connection_max == 0 {
            return Err(refuse.at("limits.inflight_per_connection_max", "must be at least 1"));
        }
        if limits.inflight_per_peer_connection_max == 0 {
            return Err(refuse.at("limits.inflight_per_peer_connection_max", "must be at least 1"));
        }
        // Unset: the default, or the floor where a larger value limit needs more.
        let budget_floor = 2 * limits.message_bytes_max();
        let limits = Limits {
            inflight_bytes_max: self
                .inflight_bytes_max
                .unwrap_or(defaults.inflight_bytes_max.max(budget_floor)),
            ..limits
        };
        if limits.inflight_bytes_max < budget_floor {
            return Err(refuse.at(
                "limits.inflight_bytes_max",
                format!(
                    "must be at least {budget_floor} (twice the largest message, from \
                     value_bytes_max), so the largest write always fits"
                ),
            ));
        }
        if limits.connections_max == 0 {
            return Err(refuse.at("limits.connections_max", "must be at least 1"));
        }
        if limits.request_timeout_ms == 0 {
            return Err(refuse.at("limits.request_timeout_ms", "must be at least 1"));
        }
        if limits.message_read_timeout_ms == 0 {
            return Err(refuse.at("limits.message_read_timeout_ms", "must be at least 1"));
        }
        let at_least_one = [
            ("limits.handshake_timeout_ms", limits.handshake_timeout_ms as usize),
            ("limits.idle_timeout_ms", limits.idle_timeout_ms as usize),
            ("limits.connections_per_source_max", limits.connections_per_source_max),
            ("limits.unauthenticated_connections_max", limits.unauthenticated_connections_max),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
            return Err(refuse.at(*key, "must be at least 1"));
        }
        Ok(limits)
    }
}

impl RawBucket {
    fn validate(self, refuse: &Refuse<'_>, name: &str) -> Result<BucketConfig, ConfigError> {
        let key = |field: &str| format!("buckets.{name}.{field}");
        if let Err(reason) = check_name(name) {
            return Err(refuse.at(format!("buckets.{name}"), format!("bad bucket name: {reason}")));
        }
        // Durable unless asked otherwise: `memory` must be named.
        let engine_name = self.engine.as_deref().unwrap_or("log");
        let engine = EngineKind::from_name(engine_name).ok_or_else(|| {
            let names: Vec<_> = EngineKind::ALL.iter().map(|k| k.name()).collect();
            refuse.at(key("engine"), format!("unknown engine {engine_name:?}; one of {names:?}"))
        })?;
        let resolver_name = self.resolver.as_deref().unwrap_or("lww");
        let resolver = ResolverKind::from_name(resolver_name).ok_or_else(|| {
            let names: Vec<_> = ResolverKind::ALL.iter().map(|k| k.name()).collect();
            refuse.at(
                key("resolver"),
                format!("unknown resolver {resolver_name:?}; one of {names:?}"),
            )
        })?;
        let mut bucket = BucketConfig::new(engine, resolver);
        bucket.n = self.n.unwrap_or(bucket.n);
        bucket.r = self.r.unwrap_or(bucket.r.min(bucket.n));
        bucket.w = self.w.unwrap_or(bucket.w.min(bucket.n));
        bucket.dw = self.dw.unwrap_or(bucket.dw);
        if bucket.n == 0 || bucket.n > N_MAX {
            return Err(refuse.at(key("n"), format!("must be 1 to {N_MAX}")));
        }
        for (field, value) in [("r", bucket.r), ("w", bucket.w)] {
            if value == 0 || value > bucket.n {
                return Err(refuse.at(key(field), format!("must be 1 to n ({})", bucket.n)));
            }
        }
        if bucket.dw > bucket.w {
            return Err(refuse.at(key("dw"), format!("must be 0 to w ({})", bucket.w)));
        }
        if bucket.dw > 0 && engine == EngineKind::Memory {
            return Err(refuse.at(
                key("dw"),
                "the memory engine keeps nothing across a restart, so dw must be 0",
            ));
        }
        let soft = self.siblings_soft_max.unwrap_or(bucket.resolver_config.siblings_soft_max);
        let hard = self.siblings_hard_max.unwrap_or(bucket.resolver_config.siblings_hard_max);
        if hard == 0 || soft > hard {
            return Err(refuse.at(
                key("siblings_hard_max"),
                format!("must be at least 1 and at least siblings_soft_max ({soft})"),
            ));
        }
        bucket.resolver_config =
            ResolverConfig { siblings_soft_max: soft, siblings_hard_max: hard };
        if let Some(ms) = self.flush_interval_ms {
            if ms == 0 {
                return Err(refuse.at(key("flush_interval_ms"), "must be at least 1"));
            }
            bucket.engine_options.flush_interval_ms = ms;
        }
        if let Some(name) = &self.flusher {
            bucket.engine_options.flusher = FlusherBackend::from_name(name).ok_or_else(|| {
                let names: Vec<_> = FlusherBackend::ALL.iter().map(|b| b.name()).collect();
                refuse.at(key("flusher"), format!("unknown flusher {name:?}; one of {names:?}"))
            })?;
        }
        Ok(bucket)
    }
}

/// Node ids and bucket names: 1 to 255 bytes of ASCII letters, digits, `-`, `_` and `.`.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 255 {
        return Err(format!("{name:?} must be 1 to 255 characters"));
    }
    if let Some(c) = name.chars().find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c))) {
        return Err(format!("{name:?} has {c:?}; use letters, digits, '-', '_' and '.'"));
    }
    Ok(())
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
