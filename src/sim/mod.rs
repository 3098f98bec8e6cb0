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

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use cartwheel_engines::EngineKind;
use cartwheel_resolvers::{HybridClock, Op, ResolverKind, Value, Write};
use md5::{Digest, Md5};

use crate::actors::Actors;
use crate::cluster::membership::Health;
use crate::cluster::peers::Network;
use crate::cluster::{Cluster, Environment};
use crate::config::{BucketConfig, Config};
use crate::node::wire::WriteOptions;
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
        Rc::new(Self { config, net, nodes: RefCell::new(nodes), rng: RefCell::new(rng), flusher })
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
        let clock = HybridClock::with_wall_clock(simulated_wall_ms);
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
        let primaries: Vec<String> = ring
            .preference_list(partition, self.len())
            .into_iter()
            .take(n)
            .map(str::to_string)
            .collect();
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

/// The simulated wall clock for HLCs: the paused runtime's time since it started.
fn simulated_wall_ms() -> u64 {
    thread_local! {
        static START: tokio::time::Instant = tokio::time::Instant::now();
    }
    EPOCH_MS + START.with(|start| start.elapsed().as_millis() as u64)
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// What [`gossip_convergence`] measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GossipFigures {
    /// Nodes.
    pub nodes: usize,
    /// Gossip rounds until every node saw every node up on one ring (`None`: not within the
    /// limit).
    pub rounds: Option<u64>,
    /// Of the rounds watched after convergence, those in which some node saw another down
    /// or the rings differed (false downs: no node failed).
    pub unstable_rounds: u64,
    /// Rounds watched after convergence.
    pub watched_rounds: u64,
    /// Calls the network carried.
    pub calls: u64,
}

impl fmt::Display for GossipFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let log2 = (self.nodes.max(2) as f64).log2();
        match self.rounds {
            Some(rounds) => write!(
                f,
                "gossip: {} nodes converged in {rounds} rounds ({:.1} x log2 N); then {} of {} \
                 rounds with a false down; {} calls",
                self.nodes,
                rounds as f64 / log2,
                self.unstable_rounds,
                self.watched_rounds,
                self.calls
            ),
            None => write!(f, "gossip: {} nodes did NOT converge", self.nodes),
        }
    }
}

/// Start every node at once, knowing only node 1; count rounds until views converge, then
/// watch `watch_rounds` more rounds for false downs.
pub async fn gossip_convergence(
    config: SimConfig,
    max_rounds: u64,
    watch_rounds: u64,
) -> GossipFigures {
    let nodes = config.nodes;
    let world = World::new(config);
    for i in 0..nodes {
        world.start(i);
    }
    let rounds = world.converge_views(max_rounds).await;
    let (mut unstable_rounds, mut watched_rounds) = (0, 0);
    if rounds.is_some() {
        for _ in 0..watch_rounds {
            world.sleep_ms(world.config.config.cluster.gossip_interval_ms).await;
            watched_rounds += 1;
            unstable_rounds += u64::from(!world.views_converged());
        }
    }
    GossipFigures { nodes, rounds, unstable_rounds, watched_rounds, calls: world.net().counts().0 }
}

/// What [`join_movement`] measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinFigures {
    /// Nodes before the join (S).
    pub before: usize,
    /// Partitions (Q).
    pub partitions: usize,
    /// Partitions whose owner changed.
    pub moved: usize,
    /// Whether both rings converged.
    pub converged: bool,
}

impl JoinFigures {
    /// Q / (S + 1): what a join must move at least, on average, to stay balanced.
    pub fn fair_share(&self) -> f64 {
        self.partitions as f64 / (self.before + 1) as f64
    }
}

impl fmt::Display for JoinFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "join: node {} of {} moved {} of {} partitions (Q/(S+1) = {:.1}, ratio {:.2}){}",
            self.before + 1,
            self.before + 1,
            self.moved,
            self.partitions,
            self.fair_share(),
            self.moved as f64 / self.fair_share(),
            if self.converged { "" } else { "; did NOT converge" }
        )
    }
}

/// Converge `nodes - 1` nodes, then start the last one; count partitions that changed owner.
pub async fn join_movement(config: SimConfig, max_rounds: u64) -> JoinFigures {
    let nodes = config.nodes;
    assert!(nodes >= 2, "a join needs a cluster to join");
    let world = World::new(config);
    for i in 0..nodes - 1 {
        world.start(i);
    }
    let first = world.converge_views(max_rounds).await.is_some();
    let before = world.cluster(0).expect("n1 runs").ring();
    world.start(nodes - 1);
    let second = world.converge_views(max_rounds).await.is_some();
    let after = world.cluster(0).expect("n1 runs").ring();
    let moved = before.owners.iter().zip(&after.owners).filter(|(a, b)| a != b).count();
    JoinFigures {
        before: nodes - 1,
        partitions: after.owners.len(),
        moved,
        converged: first && second,
    }
}

/// What [`faults`] measured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultFigures {
    /// Cart adds acknowledged.
    pub acknowledged: u64,
    /// Cart adds whose outcome is unknown (timeout, quorum not met).
    pub unknown: u64,
    /// Acknowledged adds missing afterwards, as `cart/item`.
    pub lost: Vec<String>,
    /// Crashes, restarts, partitions.
    pub crashes: u64,
    /// Network partitions made.
    pub partitions: u64,
    /// Whether every cart's primaries held equal states after the heal.
    pub converged: bool,
    /// Rounds after the heal until they did.
    pub rounds_to_converge: u64,
    /// Calls carried and messages lost by the network.
    pub calls: u64,
    /// Messages lost (loss, partitions, crashed senders).
    pub messages_lost: u64,
    /// MD5 of every cart's final state, in cart order (the same seed gives the same digest).
    pub digest: String,
    /// What happened, in order, with the simulated time: faults and every write's outcome.
    pub events: Vec<String>,
    /// What kept the replicas from settling, if they did not.
    pub unsettled: Vec<String>,
}

impl fmt::Display for FaultFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "faults: {} adds acknowledged, {} unknown, {} lost; {} crashes, {} partitions; \
             replicas {} after {} rounds; {} calls, {} messages lost; digest {}",
            self.acknowledged,
            self.unknown,
            self.lost.len(),
            self.crashes,
            self.partitions,
            if self.converged { "converged" } else { "did NOT converge" },
            self.rounds_to_converge,
            self.calls,
            self.messages_lost,
            self.digest
        )
    }
}

/// Clients add uniquely named items to `carts` carts through random running nodes for
/// `duration_ms` while a nemesis crashes nodes (kill -9: unsynced tails lost) and restarts
/// them, partitions the network and heals it; once each, a node loses its disk, a node is
/// restored from a backup taken earlier, and one more node (beyond `config.nodes`) joins, so
/// partitions move. The nemesis keeps W + 1 nodes running. Then everything heals and runs,
/// and every acknowledged add must be in every primary's copy, the copies equal, with no
/// stray copy and no hint left.
pub async fn faults(mut config: SimConfig, carts: usize, duration_ms: u64) -> FaultFigures {
    assert!(config.nodes >= 3, "the fault run needs 3 nodes or more");
    let bucket = config.cart_bucket();
    let w = config.config.buckets[&bucket].w as usize;
    // One more node joins halfway: partitions move while the faults go on.
    let nodes = config.nodes + 1;
    config.nodes = nodes;
    let interval = config.config.cluster.gossip_interval_ms;
    let world = World::new(config);
    for i in 0..nodes - 1 {
        world.start(i);
    }
    world.converge_views(600).await;
    let acknowledged: Rc<RefCell<BTreeMap<usize, Vec<String>>>> = Rc::default();
    let events: Rc<RefCell<Vec<String>>> = Rc::default();
    let started = tokio::time::Instant::now();
    let log = {
        let events = Rc::clone(&events);
        move |event: String| {
            let ms = started.elapsed().as_millis();
            events.borrow_mut().push(format!("{ms:>7} ms  {event}"));
        }
    };
    let unknown = Rc::new(std::cell::Cell::new(0u64));
    let stop = Rc::new(std::cell::Cell::new(false));
    let clients = {
        let (world, acknowledged, unknown, stop) =
            (Rc::clone(&world), Rc::clone(&acknowledged), Rc::clone(&unknown), Rc::clone(&stop));
        let log = log.clone();
        let bucket = bucket.clone();
        tokio::task::spawn_local(async move {
            let mut writes = Vec::new();
            let mut n = 0u64;
            while !stop.get() {
                world.sleep_ms(2 + world.below(4)).await;
                let running = world.running();
                if running.is_empty() {
                    continue;
                }
                let node = running[world.below(running.len() as u64) as usize];
                let Some(cluster) = world.cluster(node) else { continue };
                let cart = world.below(carts as u64) as usize;
                n += 1;
                let item = format!("i{n}");
                let (acknowledged, unknown, bucket) =
                    (Rc::clone(&acknowledged), Rc::clone(&unknown), bucket.clone());
                let (log, id) = (log.clone(), world.id(node));
                writes.push(tokio::task::spawn_local(async move {
                    let write = Write::Update {
                        ops: vec![Op::CartAdd { item: item.clone().into_bytes(), quantity: 1 }],
                        context: Vec::new(),
                    };
                    let key = cart_key(cart);
                    let outcome =
                        cluster.write(&bucket, &key, write, WriteOptions::default()).await;
                    log(format!("add {item} to cart {cart} through {id}: {outcome:?}"));
                    match outcome {
                        Ok(_) => acknowledged.borrow_mut().entry(cart).or_default().push(item),
                        Err(e) if e.outcome_unknown() => unknown.set(unknown.get() + 1),
                        Err(_) => {}
                    }
                }));
            }
            for write in writes {
                let _ = write.await;
            }
        })
    };
    let mut figures = FaultFigures::default();
    let keep_running = w + 1;
    let mut elapsed = 0;
    // The amnesia cases beyond a crash, once each: a backup taken at a quarter of the run is
    // restored at three quarters; a disk is lost at three eighths; a node joins halfway.
    // Never node 1: it is every node's seed, and a node 1 without disk or view would start as
    // a cluster of its own.
    let (amnesiac, wiped) =
        (1 + world.below(nodes as u64 - 2) as usize, 1 + world.below(nodes as u64 - 2) as usize);
    let mut backup = None;
    let mut step = 0;
    while elapsed < duration_ms {
        let pause = 200 + world.below(600);
        world.sleep_ms(pause).await;
        elapsed += pause;
        let due = [duration_ms / 4, duration_ms * 3 / 8, duration_ms / 2, duration_ms * 3 / 4];
        if step < due.len() && elapsed >= due[step] {
            match step {
                0 => {
                    backup = Some(world.backup(amnesiac));
                    log(format!("backup of {}", world.id(amnesiac)));
                }
                1 => {
                    world.wipe(wiped);
                    world.start(wiped);
                    log(format!("{} lost its disk and started empty", world.id(wiped)));
                }
                2 => {
                    world.start(nodes - 1);
                    log(format!("{} joins", world.id(nodes - 1)));
                }
                _ => {
                    world.restore(amnesiac, backup.as_ref().expect("taken at step 0"));
                    world.start(amnesiac);
                    log(format!("{} restored from its backup and started", world.id(amnesiac)));
                }
            }
            step += 1;
            continue;
        }
        match world.below(4) {
            0 if world.running().len() > keep_running => {
                let running = world.running();
                let i = running[world.below(running.len() as u64) as usize];
                world.crash(i);
                log(format!("crash {}", world.id(i)));
                figures.crashes += 1;
            }
            1 => {
                let joined = step > 2;
                let stopped: Vec<usize> = (0..nodes)
                    .filter(|&i| !world.is_running(i) && (joined || i < nodes - 1))
                    .collect();
                if let Some(&i) = stopped.get(world.below(stopped.len().max(1) as u64) as usize) {
                    world.start(i);
                    log(format!("start {}", world.id(i)));
                }
            }
            2 => {
                let side: BTreeSet<String> =
                    (0..nodes).filter(|_| world.below(2) == 0).map(|i| world.id(i)).collect();
                log(format!("partition {side:?} from the rest"));
                world.net().partition(side);
                figures.partitions += 1;
            }
            _ => {
                log("heal".to_string());
                world.net().heal();
            }
        }
    }
    stop.set(true);
    let _ = clients.await;
    log("clients stopped; heal, start every node".to_string());
    world.net().heal();
    for i in 0..nodes {
        if !world.is_running(i) {
            world.start(i);
        }
    }
    world.converge_views(600).await;
    let keys: Vec<Vec<u8>> = (0..carts).map(cart_key).collect();
    for round in 1..=1_200 {
        world.sleep_ms(interval).await;
        // Reads repair what they find stale, as clients' reads would.
        if round % 10 == 0 {
            read_all(&world, &bucket, &keys).await;
        }
        if world.settled(&bucket, &keys) {
            figures.converged = true;
            figures.rounds_to_converge = round;
            break;
        }
    }
    figures.unsettled = world.unsettled(&bucket, &keys);
    let acknowledged = acknowledged.borrow();
    figures.acknowledged = acknowledged.values().map(|items| items.len() as u64).sum();
    figures.unknown = unknown.get();
    let mut md5 = Md5::new();
    for (cart, key) in keys.iter().enumerate() {
        let replicas = world.replicas(&bucket, key);
        let resolver = Rc::clone(&world.cluster(0).expect("n1 runs"))
            .store()
            .bucket(&bucket)
            .map(|b| Arc::clone(&b.resolver));
        let resolver = resolver.expect("the cart bucket exists");
        let mut merged: Option<Vec<u8>> = None;
        for state in replicas.iter().filter_map(|(_, s)| s.clone()) {
            md5.update(&state);
            merged = Some(match merged {
                Some(m) => resolver.merge(&m, &state).expect("states merge"),
                None => state,
            });
        }
        // Every primary must hold every acknowledged add on its own.
        for (id, state) in &replicas {
            let items = state.as_deref().map(|s| cart_items(&*resolver, s)).unwrap_or_default();
            for item in acknowledged.get(&cart).into_iter().flatten() {
                if !items.contains(item) {
                    figures.lost.push(format!("cart {cart} item {item} missing on {id}"));
                }
            }
        }
        let _ = merged;
    }
    figures.digest = format!("{:x}", md5.finalize());
    figures.events = events.borrow().clone();
    let (calls, lost) = world.net().counts();
    (figures.calls, figures.messages_lost) = (calls, lost);
    figures
}

/// What [`isolation`] measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsolationFigures {
    /// Nodes.
    pub nodes: usize,
    /// Rounds the node was cut off.
    pub cut_rounds: u64,
    /// Rounds during the cut in which a node of the majority saw another one down (they
    /// could reach each other all along).
    pub false_down_rounds: u64,
    /// Rounds during the cut in which one saw another suspect (a lost message does that).
    pub suspect_rounds: u64,
    /// Rounds after the heal until every node saw every node up (`None`: not within the
    /// limit).
    pub rounds_to_all_up: Option<u64>,
}

impl fmt::Display for IsolationFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "isolation: one of {} nodes cut off for {} rounds; {} rounds with a healthy node \
             seen down, {} with one seen suspect; all up {} after the heal",
            self.nodes,
            self.cut_rounds,
            self.false_down_rounds,
            self.suspect_rounds,
            match self.rounds_to_all_up {
                Some(rounds) => format!("{rounds} rounds"),
                None => "NOT within the limit".to_string(),
            }
        )
    }
}

/// Cut the last node off from the others for `cut_rounds` gossip rounds: do the others keep
/// seeing each other up (suspect counts as not up), and how soon after the heal does every
/// node see every node up?
pub async fn isolation(config: SimConfig, cut_rounds: u64, max_rounds: u64) -> IsolationFigures {
    let nodes = config.nodes;
    let interval = config.config.cluster.gossip_interval_ms;
    let world = World::new(config);
    for i in 0..nodes {
        world.start(i);
    }
    world.converge_views(600).await;
    let cut = nodes - 1;
    world.net().partition([world.id(cut)].into_iter().collect());
    let majority: Vec<usize> = (0..cut).collect();
    // Whether node `i` sees every node of `among` at least `floor` healthy.
    let sees_all = |i: usize, among: &[usize], floor: Health| {
        let Some(cluster) = world.cluster(i) else { return false };
        let rank = |health: Health| match health {
            Health::Up => 2,
            Health::Suspect => 1,
            Health::Down => 0,
        };
        let healthy: BTreeSet<String> = cluster
            .members()
            .into_iter()
            .filter(|(_, health)| rank(*health) >= rank(floor))
            .map(|(member, _)| member.id)
            .collect();
        among.iter().all(|&j| healthy.contains(&world.id(j)))
    };
    let (mut false_down_rounds, mut suspect_rounds) = (0, 0);
    for _ in 0..cut_rounds {
        world.sleep_ms(interval).await;
        false_down_rounds +=
            u64::from(!majority.iter().all(|&i| sees_all(i, &majority, Health::Suspect)));
        suspect_rounds += u64::from(!majority.iter().all(|&i| sees_all(i, &majority, Health::Up)));
    }
    world.net().heal();
    let everyone: Vec<usize> = (0..nodes).collect();
    let mut rounds_to_all_up = None;
    for round in 1..=max_rounds {
        world.sleep_ms(interval).await;
        if everyone.iter().all(|&i| sees_all(i, &everyone, Health::Up)) {
            rounds_to_all_up = Some(round);
            break;
        }
    }
    IsolationFigures { nodes, cut_rounds, false_down_rounds, suspect_rounds, rounds_to_all_up }
}

/// What [`replica_recovery`] measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaFigures {
    /// Keys written before the loss.
    pub keys: usize,
    /// Keys with fewer than N equal replicas right after the lost node came back empty.
    pub short_after_loss: usize,
    /// Rounds until every key had N equal replicas again (`None`: not within the limit).
    pub rounds: Option<u64>,
}

impl fmt::Display for ReplicaFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rounds {
            Some(rounds) => write!(
                f,
                "disk loss: {} of {} keys short of N replicas; all {} had N again after {rounds} rounds",
                self.short_after_loss, self.keys, self.keys
            ),
            None => write!(
                f,
                "disk loss: {} of {} keys short of N replicas; NOT all back to N",
                self.short_after_loss, self.keys
            ),
        }
    }
}

/// Write `keys` carts, let every write reach every replica, then node 2 loses its disk and
/// comes back empty; count rounds until every key has N equal replicas again.
pub async fn replica_recovery(
    mut config: SimConfig,
    keys: usize,
    max_rounds: u64,
) -> ReplicaFigures {
    let bucket = config.cart_bucket();
    let nodes = config.nodes;
    let interval = config.config.cluster.gossip_interval_ms;
    let world = World::new(config);
    for i in 0..nodes {
        world.start(i);
    }
    world.converge_views(600).await;
    let keys: Vec<Vec<u8>> = (0..keys).map(cart_key).collect();
    for (k, key) in keys.iter().enumerate() {
        let cluster = world.cluster(k % nodes).expect("every node runs");
        let write = Write::Update {
            ops: vec![Op::CartAdd { item: format!("item-{k}").into_bytes(), quantity: 1 }],
            context: Vec::new(),
        };
        let options = WriteOptions { w: 3, ..WriteOptions::default() };
        let _ = cluster.write(&bucket, key, write, options).await;
    }
    world.sleep_ms(interval * 5).await;
    world.wipe(1);
    world.start(1);
    let short = |world: &World| {
        keys.iter().filter(|k| !replicas_agree(&world.replicas(&bucket, k))).count()
    };
    let short_after_loss = short(&world);
    let mut rounds = None;
    for round in 1..=max_rounds {
        world.sleep_ms(interval).await;
        if short(&world) == 0 {
            rounds = Some(round);
            break;
        }
    }
    ReplicaFigures { keys: keys.len(), short_after_loss, rounds }
}

/// The key of cart `i`.
fn cart_key(i: usize) -> Vec<u8> {
    format!("cart-{i}").into_bytes()
}

/// Whether every primary has a state and all are equal.
fn replicas_agree(replicas: &[(String, Option<Vec<u8>>)]) -> bool {
    let Some((_, Some(first))) = replicas.first() else { return false };
    replicas.iter().all(|(_, state)| state.as_ref() == Some(first))
}

/// The item names in a cart state.
fn cart_items(resolver: &dyn cartwheel_resolvers::Resolver, state: &[u8]) -> Vec<String> {
    match resolver.read(state).ok().and_then(|r| r.value) {
        Some(Value::Cart(items)) => {
            items.into_iter().map(|(item, _)| String::from_utf8_lossy(&item).into_owned()).collect()
        }
        _ => Vec::new(),
    }
}

/// Read every key at R = N through the first running node (read repair follows).
async fn read_all(world: &World, bucket: &str, keys: &[Vec<u8>]) {
    let Some(cluster) = world.running().first().and_then(|&i| world.cluster(i)) else { return };
    for key in keys {
        let options = crate::node::wire::ReadOptions { r: 3, timeout_ms: 0 };
        let _ = cluster.read(bucket, key, options).await;
    }
}
