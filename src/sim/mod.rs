//! # The seeded cluster simulation
//!
//! Many nodes in one process, running the real [`Cluster`] code (coordinator, replica side,
//! gossip, handoff, anti-entropy, failure detector) over a simulated network ([`net`]) and
//! simulated disks ([`disk`]), on one current-thread tokio runtime whose clock is paused: time
//! moves only when every task waits, straight to the next timer. Nothing reads the wall clock
//! or the operating system's randomness: node actors, incarnations, the HLC, the network's
//! delays and losses and the faults all come from one seed. So a seed replays the same run,
//! event for event, and a failing seed is a bug report: `cartwheel sim --seed S` (or the
//! test's `CARTWHEEL_SIM_SEED=S`) runs it again.
//!
//! The scenarios, each returning its figures:
//! - [`gossip_convergence`]: nodes start knowing one seed; how many gossip rounds until every
//!   node sees every node up and all agree on one ring.
//! - [`join_movement`]: one node joins a converged cluster; how many partitions change owner
//!   (DESIGN §3: about Q/(S+1)).
//! - [`faults`]: clients add uniquely named items to carts through random nodes while nodes
//!   crash (kill -9: unsynced tails lost), restart, lose their disk, are restored from a
//!   backup, a node joins, and the network partitions and heals; afterwards every
//!   acknowledged add must be in every primary's copy, the copies equal.
//! - [`replica_recovery`]: a node loses its disk; how many rounds until every key again has
//!   N equal replicas.
//! - [`isolation`]: one node is cut off; do the others ever see each other down, and how
//!   soon after the heal is everyone up.
//!
//! What is not simulated: the Cap'n Proto encoding (calls are values, [`PeerRequest`]), the
//! per-connection in-flight bound, durable waits (`dw` must be 0: a sync would leave the
//! simulation's thread), and the membership file.
//!
//! [`PeerRequest`]: crate::cluster::peers::PeerRequest

pub mod disk;
pub mod net;
mod scenarios;

pub use scenarios::*;

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use cartwheel_engines::EngineKind;
use cartwheel_resolvers::{HybridClock, ResolverKind};

use crate::actors::Actors;
use crate::cluster::membership::Health;
use crate::cluster::peers::Network;
use crate::cluster::{Cluster, Environment};
use crate::config::{BucketConfig, Config};
use crate::rng::Rng;

use crate::store::hints::Hints;
use crate::store::Store;
use disk::Disk;
use net::{Net, NetConfig};

/// Simulated milliseconds between two flushes of every disk (a real engine's flusher syncs
/// dw = 0 writes within about this long).
pub const FLUSH_INTERVAL_MS: u64 = 10;

/// The wall clock the simulated HLCs start from (2026-01-01), in milliseconds.
const EPOCH_MS: u64 = 1_767_225_600_000;

/// What a simulation runs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Nodes.
    pub nodes: usize,
    /// The seed of every random choice.
    pub seed: u64,
    /// The nodes' configuration: buckets, partitions, cluster settings, limits (the node
    /// section is replaced per node).
    pub config: Config,
    /// The network.
    pub net: NetConfig,
}

impl SimConfig {
    /// `nodes` nodes with the embedded buckets (engines simulated, `dw` 0), Q = 64, gossip
    /// every 100 ms.
    pub fn new(nodes: usize, seed: u64) -> Self {
        let mut config = Config::embedded();
        config.cluster.gossip_interval_ms = 100;
        Self::with_config(nodes, seed, config)
    }

    /// `nodes` nodes configured like `config` (its buckets' `dw` set to 0).
    pub fn with_config(nodes: usize, seed: u64, mut config: Config) -> Self {
        for bucket in config.buckets.values_mut() {
            bucket.dw = 0;
        }
        Self { nodes, seed, config, net: NetConfig::default() }
    }

    /// The first `cart` bucket, or a new one named `sim-carts` (N=3 R=2 W=2).
    fn cart_bucket(&mut self) -> String {
        let found = self.config.buckets.iter().find(|(_, b)| b.resolver == ResolverKind::Cart);
        if let Some((name, _)) = found {
            return name.clone();
        }
        let bucket = BucketConfig::new(EngineKind::Log, ResolverKind::Cart);
        self.config.buckets.insert("sim-carts".to_string(), bucket);
        "sim-carts".to_string()
    }
}

/// Run `future` on a current-thread runtime with a paused clock, inside a `LocalSet`.
pub fn run<F: Future>(future: F) -> F::Output {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds");
    tokio::task::LocalSet::new().block_on(&runtime, future)
}

/// One simulated node: its disks (which outlive its runs) and its current run.
struct Node {
    id: String,
    address: String,
    disks: BTreeMap<String, Arc<Disk>>,
    hints: Arc<Disk>,
    run: Option<(Rc<Cluster>, tokio::task::JoinHandle<()>)>,
    starts: u64,
    /// The view its membership file would hold (written every round, so at most a round
    /// old at a crash); lost with its disk.
    saved_view: Option<crate::cluster::membership::View>,
}

/// A simulated cluster. Every method runs inside [`run`].
pub struct World {
    config: SimConfig,
    net: Rc<Net>,
    nodes: RefCell<Vec<Node>>,
    rng: RefCell<Rng>,
    flusher: tokio::task::JoinHandle<()>,
    /// When the world began, on the simulation's paused clock: the HLCs' wall clock reads
    /// [`EPOCH_MS`] plus the time since.
    started: tokio::time::Instant,
}

impl World {
    /// The nodes of `config`, none running yet.
    pub fn new(config: SimConfig) -> Rc<Self> {
        let mut rng = Rng::new(config.seed);
        let net = Net::new(config.net, rng.next_u64());
        let nodes: Vec<Node> = (0..config.nodes)
            .map(|i| Node {
                id: format!("n{}", i + 1),
                address: format!("sim-n{}", i + 1),
                disks: config.config.buckets.keys().map(|b| (b.clone(), Disk::new())).collect(),
                hints: Disk::new(),
                run: None,
                starts: 0,
                saved_view: None,
            })
            .collect();
        let disks: Vec<Arc<Disk>> = nodes
            .iter()
            .flat_map(|n| n.disks.values().cloned().chain([Arc::clone(&n.hints)]))
            .collect();
        let flusher = tokio::task::spawn_local(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(FLUSH_INTERVAL_MS)).await;
                disks.iter().for_each(|d| d.flush());
            }
        });
        Rc::new(Self {
            config,
            net,
            nodes: RefCell::new(nodes),
            rng: RefCell::new(rng),
            flusher,
            started: tokio::time::Instant::now(),
        })
    }

    /// Node count.
    pub fn len(&self) -> usize {
        self.config.nodes
    }

    /// Whether the world has no node.
    pub fn is_empty(&self) -> bool {
        self.config.nodes == 0
    }

    /// The network.
    pub fn net(&self) -> &Net {
        &self.net
    }

    /// A random number in `0..n` from the world's seed.
    pub fn below(&self, n: u64) -> u64 {
        self.rng.borrow_mut().below(n)
    }

    /// Start node `i` (a new run on its disks). Its seed is node 1.
    pub fn start(&self, i: usize) {
        let mut nodes = self.nodes.borrow_mut();
        let node = &mut nodes[i];
        assert!(node.run.is_none(), "{} is already running", node.id);
        node.starts += 1;
        let mut config = self.config.config.clone();
        config.node.id = node.id.clone();
        config.node.seeds = vec!["sim-n1".to_string()];
        let actors = Actors::with_seed(&node.id, self.rng.borrow_mut().next_u64());
        let started = self.started;
        let clock =
            HybridClock::with_wall_clock(move || EPOCH_MS + started.elapsed().as_millis() as u64);
        let disks = node.disks.clone();
        // Scans on the simulation's one thread: a run must not depend on thread timing.
        let store = Store::with_engines(&config, actors, clock, |name, _| Ok(disks[name].engine()))
            .expect("simulated disks open")
            .scan_on_calling_thread();
        let limits = &config.cluster;
        let hints =
            Hints::with_engine(node.hints.engine(), limits.hint_count_max, limits.hint_bytes_max)
                .expect("a simulated hint disk opens");
        let environment = Environment {
            address: node.address.clone(),
            config_digest: b"sim".to_vec(),
            incarnation: node.starts,
            network: Network::Other(
                Rc::clone(&self.net) as Rc<dyn crate::cluster::peers::Transport>
            ),
            membership_file: None,
            restored_view: node.saved_view.clone(),
        };
        let cluster = Rc::new(Cluster::in_environment(&config, store, hints, environment));
        self.net.attach(&node.id, &node.address, node.starts, &cluster);
        let rounds = tokio::task::spawn_local(Rc::clone(&cluster).run_rounds());
        node.run = Some((cluster, rounds));
    }

    /// Kill -9 node `i`: its rounds stop, its unsynced writes are lost, calls to it are
    /// refused and calls from its old run are dropped.
    pub fn crash(&self, i: usize) {
        let mut nodes = self.nodes.borrow_mut();
        let node = &mut nodes[i];
        if let Some((cluster, rounds)) = node.run.take() {
            rounds.abort();
            node.saved_view = Some(cluster.view());
            self.net.detach(&node.address);
            node.disks.values().chain([&node.hints]).for_each(|d| d.crash());
        }
    }

    /// Node `i` crashes and its disks are replaced by empty ones.
    pub fn wipe(&self, i: usize) {
        self.crash(i);
        let mut nodes = self.nodes.borrow_mut();
        nodes[i].saved_view = None;
        nodes[i].disks.values().chain([&nodes[i].hints]).for_each(|d| d.wipe());
    }

    /// A backup of node `i`'s disks as they are durable now.
    pub fn backup(&self, i: usize) -> Backup {
        let nodes = self.nodes.borrow();
        let node = &nodes[i];
        Backup {
            disks: node
                .disks
                .values()
                .chain([&node.hints])
                .map(|d| (Arc::clone(d), d.backup()))
                .collect(),
            view: node.run.as_ref().map(|(c, _)| c.view()).or_else(|| node.saved_view.clone()),
        }
    }

    /// Node `i` crashes and its disks (and membership file) are restored from `backup`.
    pub fn restore(&self, i: usize, backup: &Backup) {
        self.crash(i);
        backup.disks.iter().for_each(|(disk, content)| disk.restore(content));
        self.nodes.borrow_mut()[i].saved_view = backup.view.clone();
    }

    /// Whether node `i` runs.
    pub fn is_running(&self, i: usize) -> bool {
        self.nodes.borrow()[i].run.is_some()
    }

    /// The running nodes.
    pub fn running(&self) -> Vec<usize> {
        (0..self.len()).filter(|&i| self.is_running(i)).collect()
    }

    /// Node `i`'s current run.
    pub fn cluster(&self, i: usize) -> Option<Rc<Cluster>> {
        self.nodes.borrow()[i].run.as_ref().map(|(c, _)| Rc::clone(c))
    }

    /// Node `i`'s id.
    pub fn id(&self, i: usize) -> String {
        self.nodes.borrow()[i].id.clone()
    }

    /// Let `ms` simulated milliseconds pass.
    pub async fn sleep_ms(&self, ms: u64) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Whether every running node knows every running node and sees none of them down, and
    /// all hold one ring that gives every running node partitions (when there are no more
    /// nodes than partitions). Suspect counts: a suspect node is still sent requests.
    pub fn views_converged(&self) -> bool {
        let running = self.running();
        let ids: BTreeSet<String> = running.iter().map(|&i| self.id(i)).collect();
        let clusters: Vec<Rc<Cluster>> = running.iter().filter_map(|&i| self.cluster(i)).collect();
        let Some(first) = clusters.first() else { return true };
        let ring = first.ring();
        let owners: BTreeSet<&String> = ring.owners.iter().collect();
        if ids.len() <= ring.owners.len() && owners.len() != ids.len() {
            return false;
        }
        clusters.iter().all(|cluster| {
            let up: BTreeSet<String> = cluster
                .members()
                .into_iter()
                .filter(|(_, health)| *health != Health::Down)
                .map(|(member, _)| member.id)
                .collect();
            ids.is_subset(&up) && cluster.ring() == ring
        })
    }

    /// Run gossip rounds until [`World::views_converged`], at most `max_rounds`; the rounds
    /// it took.
    pub async fn converge_views(&self, max_rounds: u64) -> Option<u64> {
        let interval = self.config.config.cluster.gossip_interval_ms;
        for round in 1..=max_rounds {
            self.sleep_ms(interval).await;
            if self.views_converged() {
                return Some(round);
            }
        }
        None
    }

    /// Whether every key's primaries hold equal states, no other node holds a copy of any
    /// (no stray copies), and no node holds a hint.
    pub fn settled(&self, bucket: &str, keys: &[Vec<u8>]) -> bool {
        self.unsettled(bucket, keys).is_empty()
    }

    /// What keeps [`World::settled`] false, one line each.
    pub fn unsettled(&self, bucket: &str, keys: &[Vec<u8>]) -> Vec<String> {
        let mut out = Vec::new();
        let running: Vec<Rc<Cluster>> =
            self.running().iter().filter_map(|&i| self.cluster(i)).collect();
        for cluster in &running {
            for (owner, count) in cluster.hints().counts().into_iter().filter(|(_, n)| *n > 0) {
                out.push(format!("{} holds {count} hints for {owner}", cluster.me()));
            }
        }
        for key in keys {
            let replicas = self.replicas(bucket, key);
            let name = String::from_utf8_lossy(key);
            for cluster in &running {
                let primary = replicas.iter().any(|(id, _)| *id == cluster.me());
                if !primary && cluster.store().fetch(bucket, key).ok().flatten().is_some() {
                    out.push(format!("{} keeps a stray copy of {name}", cluster.me()));
                }
            }
            if !replicas_agree(&replicas) {
                let held: Vec<String> = replicas
                    .iter()
                    .map(|(id, state)| {
                        format!("{id}: {} bytes", state.as_ref().map_or(0, Vec::len))
                    })
                    .collect();
                out.push(format!("{name}: primaries differ ({})", held.join(", ")));
            }
        }
        out
    }

    /// The primaries of a key by the ring of the first running node, with each one's stored
    /// state (`None` where it has none or is not running).
    pub fn replicas(&self, bucket: &str, key: &[u8]) -> Vec<(String, Option<Vec<u8>>)> {
        let Some(observer) = self.running().first().and_then(|&i| self.cluster(i)) else {
            return Vec::new();
        };
        let n = observer.store().bucket(bucket).map_or(3, |b| b.config.n as usize);
        let ring = observer.ring();
        let partition =
            crate::ring::partition_of(crate::ring::key_hash(bucket, key), ring.partitions());
        let primaries: Vec<String> =
            ring.primaries(partition, n).into_iter().map(str::to_string).collect();
        primaries
            .into_iter()
            .map(|id| {
                let index = (0..self.len()).find(|&i| self.id(i) == id);
                let state = index
                    .and_then(|i| self.cluster(i))
                    .and_then(|c| c.store().fetch(bucket, key).ok().flatten());
                (id, state)
            })
            .collect()
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.flusher.abort();
        for node in self.nodes.get_mut() {
            if let Some((_, rounds)) = node.run.take() {
                rounds.abort();
            }
        }
    }
}

/// A node's disks as a backup holds them.
pub struct Backup {
    disks: Vec<(Arc<Disk>, disk::Contents)>,
    view: Option<crate::cluster::membership::View>,
}

/// Whether every primary has a state and all are equal.
pub(crate) fn replicas_agree(replicas: &[(String, Option<Vec<u8>>)]) -> bool {
    let Some((_, Some(first))) = replicas.first() else { return false };
    replicas.iter().all(|(_, state)| state.as_ref() == Some(first))
}
