//! # What the benchmark talks to: embedded nodes or a running cluster
//!
//! By default `bench` starts its own nodes, `n1` … `nN`, each with [`NodeHandle::start`] on
//! 127.0.0.1 with an ephemeral port and its data in a temporary directory that is removed at
//! the end. Each node gets the embedded buckets plus the bucket under test, named
//! [`BUCKET`], configured from the command line. `n1` starts first; the others get its
//! address as their seed. Gossip runs every [`GOSSIP_INTERVAL_MS`] so the cluster forms
//! quickly, and the run starts only once every node sees every member up and one ring
//! spread over all of them, with no ring change in flight (at most [`CONVERGE_MS`]).
//!
//! Routing is zero-hop, as a Dynamo client does it: the benchmark fetches the ring once and
//! [`Routes`] sends each key to the first node of its preference list (its coordinator), so
//! no request pays a forwarding hop. Where the ring cannot be had, or names a node the
//! benchmark has no connection to, the key goes to a node chosen by its hash modulo the node
//! count, which forwards it. `--routing round-robin` spreads requests over every connection
//! whatever the key; `--routing non-primary` sends each key to the last node of its
//! preference list, so that with more nodes than N every write is forwarded to a primary.
//!
//! [`Store`] turns a workload [`Request`] into a client call on the chosen connection. Writes
//! that need a causal context (cart removes and quantity changes, and puts in `siblings`
//! buckets) use the last context this benchmark saw for the key, like a client that shows a
//! cart before changing it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use cartwheel_resolvers::{Op, ResolverKind};

use super::generator::Outcome;
use super::workload::{error_kind, item_name, Request};
use crate::client::{Client, Credentials, ReadOptions, RingInfo, WriteOptions};
use crate::config::{BucketConfig, Config, SecurityConfig};
use crate::node::server::NodeHandle;

/// The bucket under test on embedded nodes, and the default on a `--cluster`.
pub const BUCKET: &str = "bench";

/// Most embedded nodes `bench` starts.
pub const NODES_MAX: usize = 16;

/// Most connections `bench` opens to one node.
pub const CONNECTIONS_PER_NODE_MAX: usize = 64;

/// Requests in flight while preloading keys.
pub const PRELOAD_INFLIGHT: usize = 64;

/// Most keys whose bytes and nodes [`Store::prepare_keys`] computes before a run (about 70
/// bytes each); a run over more keys computes them per request.
pub const PREPARED_KEYS_MAX: u64 = 1 << 18;

/// Gossip interval of embedded nodes, in milliseconds.
pub const GOSSIP_INTERVAL_MS: u64 = 100;

/// How long embedded nodes may take to form one cluster, in milliseconds.
pub const CONVERGE_MS: u64 = 30_000;

/// Which node each key goes to for per-key routing: the coordinator of its preference list.
#[derive(Clone, Debug)]
pub struct Routes {
    /// Q, when the ring is known (1 otherwise).
    partitions: u32,
    /// Per partition, the index (into the benchmark's node list) of its first owner.
    owner: Vec<Option<usize>>,
    /// Per partition, the index of the last node of its preference list: not a primary of
    /// the partition's keys when the cluster has more nodes than N.
    last: Vec<Option<usize>>,
    nodes: usize,
}

impl Routes {
    /// Routes from `ring`, for connections to `addresses` (in that order).
    pub fn new(ring: Option<&RingInfo>, addresses: &[String]) -> Self {
        let nodes = addresses.len();
        let Some(ring) = ring.filter(|r| r.partition_count > 0 && !r.owners.is_empty()) else {
            return Self { partitions: 1, owner: vec![None], last: vec![None], nodes };
        };
        let index_of = |address: &str| addresses.iter().position(|a| a == address);
        let owner =
            ring.owners.iter().map(|&o| index_of(&ring.nodes.get(o as usize)?.address)).collect();
        let last = (0..ring.partition_count)
            .map(|partition| index_of(ring.partition_preference(partition as u16).last()?))
            .collect();
        Self { partitions: ring.partition_count, owner, last, nodes }
    }

    /// The node index for `key`: its coordinator, or with `last`, the last node of its
    /// preference list.
    pub fn route(&self, bucket: &str, key: &[u8], last: bool) -> usize {
        debug_assert!(self.nodes > 0);
        let hash = crate::ring::key_hash(bucket, key);
        let partition = crate::ring::partition_of(hash, self.partitions) as usize;
        let table = if last { &self.last } else { &self.owner };
        match table.get(partition).copied().flatten() {
            Some(node) => node,
            None => (hash % self.nodes as u128) as usize,
        }
    }

    /// Whether the ring was known (zero-hop routing).
    pub fn from_ring(&self) -> bool {
        self.owner.iter().any(Option::is_some)
    }
}

/// How requests are spread over connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Routing {
    /// Each key to its coordinator (by the ring), round-robin over that node's connections.
    PerKey,
    /// Every request to the next connection, whatever its key.
    RoundRobin,
    /// Each key to the last node of its preference list, which is not one of its primaries
    /// when there are more nodes than N: every write pays the forwarding hop to a primary.
    NonPrimary,
}

impl Routing {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::PerKey => "per-key",
            Self::RoundRobin => "round-robin",
            Self::NonPrimary => "non-primary",
        }
    }
}

/// Embedded nodes, stopped and their data removed on drop.
pub struct EmbeddedCluster {
    nodes: Vec<NodeHandle>,
    credentials: Credentials,
    _data: tempfile::TempDir,
}

impl EmbeddedCluster {
    /// Start `count` nodes with `bucket` as [`BUCKET`] and wait until they form one cluster.
    /// Not from inside a tokio runtime: the wait runs its own (see [`crate::client::block_on`]).
    pub fn start(
        count: usize,
        bucket: &BucketConfig,
        security: super::Security,
    ) -> Result<Self, String> {
        if count == 0 || count > NODES_MAX {
            return Err(format!("nodes must be 1 to {NODES_MAX}"));
        }
        let data = tempfile::Builder::new()
            .prefix("cartwheel-bench-")
            .tempdir()
            .map_err(|e| format!("cannot create a temporary data directory: {e}"))?;
        let mut nodes: Vec<NodeHandle> = Vec::with_capacity(count);
        for i in 1..=count {
            let mut config = Config::embedded();
            config.node.id = format!("n{i}");
            config.node.listen = SocketAddr::from(([127, 0, 0, 1], 0));
            config.node.data_dir = data.path().join(&config.node.id);
            config.node.seeds =
                nodes.first().map(|n| vec![n.address().to_string()]).unwrap_or_default();
            config.cluster.gossip_interval_ms = GOSSIP_INTERVAL_MS;
            config.buckets.insert(BUCKET.to_string(), bucket.clone());
            config.fit_buckets_to(count);
            config.security = match security {
                super::Security::Tls => SecurityConfig::development(data.path()),
                super::Security::Insecure => SecurityConfig::insecure(),
            };
            let node =
                NodeHandle::start(config).map_err(|e| format!("node n{i} cannot start: {e}"))?;
            nodes.push(node);
        }
        let credentials = match security {
            super::Security::Tls => {
                let path = data.path().join(crate::security::ADMIN_CREDENTIALS_FILE);
                Credentials::load(&path)?
            }
            super::Security::Insecure => Credentials::default(),
        };
        let cluster = Self { nodes, credentials, _data: data };
        crate::client::block_on(cluster.converged())?;
        Ok(cluster)
    }

    /// Wait until every node sees every member up and the same ring over all of them.
    async fn converged(&self) -> Result<(), String> {
        let addresses = self.addresses();
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(CONVERGE_MS);
        loop {
            let mut epochs = Vec::new();
            for address in &addresses {
                let Ok(client) = Client::connect_with(address, &self.credentials).await else {
                    break;
                };
                let Ok(status) = client.status().await else { break };
                let formed = status.members.len() == addresses.len()
                    && status.transfers.transition == 0
                    && status.members.iter().all(|m| m.state == "up" && m.partitions_owned > 0);
                if !formed {
                    break;
                }
                epochs.push(status.ring_epoch);
            }
            if epochs.len() == addresses.len() && epochs.iter().all(|e| *e == epochs[0]) {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("the nodes did not form one cluster within {CONVERGE_MS} ms"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(GOSSIP_INTERVAL_MS)).await;
        }
    }

    /// Credentials with every grant, for clients of these nodes.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// The nodes' client addresses, in node order.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.address().to_string()).collect()
    }

    /// Stop every node (also done on drop) and report the first error.
    pub fn stop(self) -> Result<(), String> {
        let mut first = Ok(());
        for node in self.nodes {
            if let Err(e) = node.stop() {
                first = first.and(Err(e.to_string()));
            }
        }
        first
    }
}

/// The last context seen per key index.
type Contexts = Rc<RefCell<HashMap<u64, Vec<u8>>>>;

/// Connections to every node and the state the workload keeps between requests.
pub struct Store {
    bucket: Rc<str>,
    /// Put before every key this run writes (a run against a user's cluster writes under a
    /// prefix of its own, see [`Store::remove_written`]).
    prefix: Vec<u8>,
    per_node: Vec<Vec<Rc<Client>>>,
    /// Per key index: its bytes (prefix included), its coordinator's and its preference
    /// list's last node index; computed before the run (see [`Store::prepare_keys`]).
    prepared: Vec<(Rc<[u8]>, usize, usize)>,
    routing: Routing,
    routes: Routes,
    next: Cell<usize>,
    value: Rc<[u8]>,
    /// Last context seen per key, for writes that need one.
    contexts: Option<Contexts>,
    read_options: ReadOptions,
    write_options: WriteOptions,
}

impl Store {
    /// Open `connections` connections to each address. Must run inside a `LocalSet`.
    pub async fn connect(
        addresses: &[String],
        credentials: &Credentials,
        connections: usize,
        bucket: &str,
        resolver: ResolverKind,
        routing: Routing,
        value_bytes: usize,
    ) -> Result<Self, crate::Error> {
        let mut per_node = Vec::with_capacity(addresses.len());
        for address in addresses {
            let mut clients = Vec::with_capacity(connections);
            for _ in 0..connections {
                clients.push(Rc::new(Client::connect_with(address, credentials).await?));
            }
            per_node.push(clients);
        }
        let ring = per_node[0][0].ring().await.ok();
        let routes = Routes::new(ring.as_ref(), addresses);
        // A recognisable, incompressible-looking value.
        let value: Vec<u8> =
            (0..value_bytes).map(|i| ((i as u64 * 2_654_435_761) >> 13) as u8).collect();
        let needs_context = matches!(resolver, ResolverKind::Siblings | ResolverKind::Cart);
        Ok(Self {
            bucket: bucket.into(),
            prefix: Vec::new(),
            per_node,
            prepared: Vec::new(),
            routing,
            routes,
            next: Cell::new(0),
            value: value.into(),
            contexts: needs_context.then(Rc::default),
            read_options: ReadOptions::default(),
            write_options: WriteOptions::default(),
        })
    }

    /// The bucket under test as the first node reports it, if it does.
    pub async fn bucket_status(&self) -> Option<crate::client::BucketStatus> {
        let status = self.per_node[0][0].status().await.ok()?;
        status.buckets.into_iter().find(|b| *b.name == *self.bucket)
    }

    /// Whether per-key routing follows the ring (zero-hop).
    pub fn zero_hop(&self) -> bool {
        self.routing == Routing::PerKey && self.routes.from_ring()
    }

    /// Compute every key's bytes and nodes now, so that a request of the run only looks
    /// them up (at most [`PREPARED_KEYS_MAX`] keys; call after [`Store::with_prefix`]).
    pub fn prepare_keys(&mut self, keys: u64, carts: bool) {
        if keys > PREPARED_KEYS_MAX {
            return;
        }
        self.prepared = (0..keys)
            .map(|i| {
                let name = if carts {
                    super::workload::cart_name(i)
                } else {
                    super::workload::key_name(i)
                };
                let key: Rc<[u8]> = [self.prefix.as_slice(), &name].concat().into();
                let first = self.routes.route(&self.bucket, &key, false);
                let last = self.routes.route(&self.bucket, &key, true);
                (key, first, last)
            })
            .collect();
    }

    /// The connection a request for `key` goes to.
    fn client(&self, key: &[u8]) -> Rc<Client> {
        let nodes = match self.routing {
            Routing::PerKey => Some(self.routes.route(&self.bucket, key, false)),
            Routing::NonPrimary => Some(self.routes.route(&self.bucket, key, true)),
            Routing::RoundRobin => None,
        };
        self.client_of(nodes)
    }

    /// The next connection to `node`, or with `None` the next connection of all.
    fn client_of(&self, node: Option<usize>) -> Rc<Client> {
        let turn = self.next.get();
        self.next.set(turn.wrapping_add(1));
        let clients = match node {
            Some(node) => &self.per_node[node],
            None => {
                let nodes = self.per_node.len();
                &self.per_node[turn % nodes]
            }
        };
        let index = if node.is_some() { turn } else { turn / self.per_node.len() };
        Rc::clone(&clients[index % clients.len()])
    }

    /// Perform `request`; the future owns everything it needs.
    pub fn execute(
        &self,
        request: Request,
    ) -> impl std::future::Future<Output = Outcome> + 'static {
        let index = request.key_index();
        let (key, client) = match self.prepared.get(index as usize) {
            Some((key, first, last)) => {
                let node = match self.routing {
                    Routing::PerKey => Some(*first),
                    Routing::NonPrimary => Some(*last),
                    Routing::RoundRobin => None,
                };
                (Rc::clone(key), self.client_of(node))
            }
            None => {
                let key: Rc<[u8]> = [self.prefix.as_slice(), &request.key()].concat().into();
                let client = self.client(&key);
                (key, client)
            }
        };
        let bucket = Rc::clone(&self.bucket);
        let value = Rc::clone(&self.value);
        let contexts = self.contexts.clone();
        let (read_options, write_options) = (self.read_options, self.write_options);
        async move {
            let context =
                contexts.as_ref().and_then(|c| c.borrow().get(&index).cloned()).unwrap_or_default();
            let result = match request {
                Request::Read { .. } | Request::CartShow { .. } => {
                    client.get_with(&bucket, &key, &read_options).await
                }
                Request::Update { .. } => {
                    client.put_with(&bucket, &key, &value, &context, &write_options).await
                }
                Request::CartAdd { item, quantity, .. } => {
                    let ops = [Op::CartAdd { item: item_name(item), quantity }];
                    client.update(&bucket, &key, &ops, &[], &write_options).await
                }
                Request::CartSetQuantity { item, quantity, .. } => {
                    let ops = [Op::CartSetQuantity { item: item_name(item), quantity }];
                    client.update(&bucket, &key, &ops, &context, &write_options).await
                }
                Request::CartRemove { item, .. } => {
                    let ops = [Op::CartRemove(item_name(item))];
                    client.update(&bucket, &key, &ops, &context, &write_options).await
                }
            };
            match result {
                Ok(read) => {
                    if let Some(contexts) = contexts {
                        contexts.borrow_mut().insert(index, read.context);
                    }
                    Outcome { op: request.op(), error: None }
                }
                Err(e) => Outcome { op: request.op(), error: Some(error_kind(&e)) },
            }
        }
    }

    /// Set the prefix of every key this run writes.
    pub fn with_prefix(mut self, prefix: &[u8]) -> Self {
        self.prefix = prefix.to_vec();
        self
    }

    /// Delete every key the run may have written (`keys` of them, carts or values), reading
    /// each first for its context. Returns how many deletes failed.
    pub async fn remove_written(&self, keys: u64, carts: bool) -> u64 {
        use futures::StreamExt;
        let deletes = (0..keys).map(|i| {
            let name =
                if carts { super::workload::cart_name(i) } else { super::workload::key_name(i) };
            let key = [self.prefix.as_slice(), &name].concat();
            let client = self.client(&key);
            let bucket = Rc::clone(&self.bucket);
            async move {
                let context = client.get(&bucket, &key).await?.context;
                client.delete(&bucket, &key, &context).await.map(|_| ())
            }
        });
        let results: Vec<Result<(), crate::Error>> =
            futures::stream::iter(deletes).buffer_unordered(PRELOAD_INFLIGHT).collect().await;
        results.iter().filter(|r| r.is_err()).count() as u64
    }

    /// Write every key once (a cart: one item added) so that reads find values. Returns the
    /// number of failed writes and the first error.
    pub async fn preload(&self, keys: u64, cart_items: Option<u64>) -> (u64, Option<crate::Error>) {
        use futures::StreamExt;
        let writes = (0..keys).map(|i| {
            let (key, ops) = if let Some(items) = cart_items {
                let item = item_name(i % super::workload::CART_ITEMS);
                // The run touches items of the first 64 names only; these fill the cart.
                let fill = (1..items).map(|j| Op::CartAdd {
                    item: format!("fill-{j:06}").into_bytes(),
                    quantity: 1,
                });
                let ops = std::iter::once(Op::CartAdd { item, quantity: 1 }).chain(fill);
                (super::workload::cart_name(i), ops.collect())
            } else {
                (super::workload::key_name(i), Vec::new())
            };
            let key = [self.prefix.as_slice(), &key].concat();
            let client = self.client(&key);
            let (bucket, value, options) =
                (Rc::clone(&self.bucket), Rc::clone(&self.value), self.write_options);
            let contexts = self.contexts.clone();
            async move {
                let read = if ops.is_empty() {
                    client.put_with(&bucket, &key, &value, &[], &options).await?
                } else {
                    client.update(&bucket, &key, &ops, &[], &options).await?
                };
                if let Some(contexts) = contexts {
                    contexts.borrow_mut().insert(i, read.context);
                }
                Ok::<(), crate::Error>(())
            }
        });
        let results: Vec<Result<(), crate::Error>> =
            futures::stream::iter(writes).buffer_unordered(PRELOAD_INFLIGHT).collect().await;
        let failed = results.iter().filter(|r| r.is_err()).count() as u64;
        (failed, results.into_iter().find_map(Result::err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::MemberStatus;

    fn member(address: &str) -> MemberStatus {
        MemberStatus {
            id: address.to_string(),
            address: address.to_string(),
            state: "up".into(),
            partitions_owned: 0,
            hints_queued: 0,
            data_bytes: 0,
        }
    }

    /// With a ring, a key goes to its partition's owner; without one, to a stable node.
    #[test]
    fn routes_follow_the_ring() {
        let addresses: Vec<String> = vec!["a:1".into(), "b:1".into(), "c:1".into()];
        let ring = RingInfo {
            partition_count: 4,
            nodes: vec![member("c:1"), member("a:1"), member("b:1")],
            owners: vec![0, 1, 2, 0],
            epoch: 1,
        };
        let routes = Routes::new(Some(&ring), &addresses);
        assert!(routes.from_ring());
        for i in 0..200u64 {
            let key = crate::bench::workload::key_name(i);
            let preference = ring.preference_addresses(BUCKET, &key);
            assert_eq!(addresses[routes.route(BUCKET, &key, false)], preference[0], "key {i}");
            let last = preference.last().unwrap();
            assert_eq!(&addresses[routes.route(BUCKET, &key, true)], last, "key {i}");
        }
        let blind = Routes::new(None, &addresses);
        assert!(!blind.from_ring());
        let key = crate::bench::workload::key_name(7);
        assert_eq!(blind.route(BUCKET, &key, false), blind.route(BUCKET, &key, false));
        assert!(blind.route(BUCKET, &key, true) < 3);
    }
}
