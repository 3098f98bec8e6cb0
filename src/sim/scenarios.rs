//! # The simulation's scenarios
//!
//! Each builds a [`World`], drives it, and returns its figures (with a `Display` of one
//! line): the checks in `tests/sim.rs` and `cartwheel sim` read them. See the parent module
//! for what is simulated and what is not.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;

use cartwheel_resolvers::{Op, Value, Write};
use md5::{Digest, Md5};

use super::{replicas_agree, SimConfig, World};
use crate::cluster::membership::Health;
use crate::node::wire::WriteOptions;

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
            "join: a node joining {} moved {} of {} partitions (Q/(S+1) = {:.1}, ratio {:.2}){}",
            self.before,
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
    let cluster = world.cluster(0).expect("n1 runs");
    let resolver =
        Arc::clone(&cluster.store().bucket(&bucket).expect("the bucket exists").resolver);
    let mut md5 = Md5::new();
    for (cart, key) in keys.iter().enumerate() {
        // Every primary must hold every acknowledged add on its own.
        for (id, state) in world.replicas(&bucket, key) {
            md5.update(state.as_deref().unwrap_or_default());
            let items = state.as_deref().map(|s| cart_items(&*resolver, s)).unwrap_or_default();
            for item in acknowledged.get(&cart).into_iter().flatten() {
                if !items.contains(item) {
                    figures.lost.push(format!("cart {cart} item {item} missing on {id}"));
                }
            }
        }
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

/// What [`tombstone_collection`] measured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TombstoneFigures {
    /// Keys written and then deleted, per bucket (an `lww` one and a `siblings` one).
    pub keys: usize,
    /// Deletes acknowledged (every one should be).
    pub deleted: usize,
    /// Keys (of both buckets) with the down node among their primaries whose tombstone a
    /// running primary had collected by the end of the down time (must be 0: nobody can know
    /// that the down node holds the tombstone).
    pub collected_while_down: usize,
    /// Rounds after the restart until no node held any state or hint of any key (`None`:
    /// not within the limit).
    pub reclaimed_rounds: Option<u64>,
    /// Keys that came back: held as a live state by a node other than the restarted one
    /// after its restart, read as found through some node once reclaimed, or held live by
    /// any node a while later.
    pub resurrected: usize,
    /// Older states dropped against a remembered collected tombstone, over all nodes.
    pub fenced: u64,
}

impl fmt::Display for TombstoneFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rounds = self.reclaimed_rounds.map_or("never".to_string(), |r| format!("{r} rounds"));
        write!(
            f,
            "{} keys per bucket, {} deletes acknowledged, {} collected while a primary was \
             down, storage reclaimed after {rounds}, {} resurrected, {} late states fenced",
            self.keys, self.deleted, self.collected_while_down, self.resurrected, self.fenced
        )
    }
}

/// Deletes while a primary is down, with hints refused (a fallback whose hint store is
/// full, or that died: the down node can learn of the deletes only from its peers): keys
/// are written to an `lww` and a `siblings` bucket at W = N = 3, node `sim-n2` is killed
/// (its disk keeps the old values), every key is deleted (siblings with the context of a
/// read) at W = 2, and the cluster runs `down_rounds` rounds. Then `sim-n2` restarts and the
/// cluster runs until no node holds anything of the keys. A tombstone collected before
/// every replica held it lets `sim-n2`'s old value come back: the figures count that.
pub async fn tombstone_collection(
    mut config: SimConfig,
    keys: usize,
    down_rounds: u64,
    max_rounds: u64,
) -> TombstoneFigures {
    config.config.buckets.retain(|name, _| name == "default" || name == "siblings");
    config.config.cluster.hint_count_max = 0;
    let buckets: Vec<String> = config.config.buckets.keys().cloned().collect();
    let nodes = config.nodes;
    let interval = config.config.cluster.gossip_interval_ms;
    let world = World::new(config);
    for i in 0..nodes {
        world.start(i);
    }
    world.converge_views(600).await;
    let keys: Vec<Vec<u8>> = (0..keys).map(|i| format!("doomed-{i}").into_bytes()).collect();
    for bucket in &buckets {
        for (k, key) in keys.iter().enumerate() {
            let cluster = world.cluster(k % nodes).expect("every node runs");
            let write = Write::Put { value: b"old".to_vec(), context: Vec::new() };
            let options = WriteOptions { w: 3, ..WriteOptions::default() };
            let _ = cluster.write(bucket, key, write, options).await;
        }
    }
    world.sleep_ms(interval * 5).await;
    let down = 1;
    let down_id = world.id(down);
    world.crash(down);
    world.sleep_ms(interval * 15).await;
    let mut deleted = 0;
    let running: Vec<usize> = world.running();
    for bucket in &buckets {
        for (k, key) in keys.iter().enumerate() {
            let cluster = world.cluster(running[k % running.len()]).expect("running");
            let read = crate::node::wire::ReadOptions { r: 2, timeout_ms: 0 };
            let context = match cluster.read(bucket, key, read).await {
                Ok(Some(read)) => read.context,
                _ => Vec::new(),
            };
            let options = WriteOptions { w: 2, ..WriteOptions::default() };
            if cluster.write(bucket, key, Write::Delete { context }, options).await.is_ok() {
                deleted += 1;
            }
        }
    }
    world.sleep_ms(interval * down_rounds).await;
    let mut collected_while_down = 0;
    for bucket in &buckets {
        for key in &keys {
            let replicas = world.replicas(bucket, key);
            if replicas.iter().any(|(id, _)| *id == down_id)
                && replicas.iter().any(|(id, state)| *id != down_id && state.is_none())
            {
                collected_while_down += 1;
            }
        }
    }
    world.start(down);
    let mut reclaimed_rounds = None;
    let mut resurrected = BTreeSet::new();
    for round in 1..=max_rounds {
        world.sleep_ms(interval).await;
        // The restarted node holds its old values until it is repaired: not a resurrection
        // unless they spread.
        let spread =
            live_keys(&world, &buckets, &keys).into_iter().filter(|(id, ..)| *id != down_id);
        resurrected.extend(spread.map(|(_, bucket, key)| (bucket, key)));
        if holds_nothing(&world, &buckets, &keys) {
            reclaimed_rounds = Some(round);
            break;
        }
    }
    // Read every key through every node, and look again a while later.
    for &i in &world.running() {
        let cluster = world.cluster(i).expect("running");
        for bucket in &buckets {
            for key in &keys {
                let read = crate::node::wire::ReadOptions { r: 3, timeout_ms: 0 };
                if let Ok(Some(read)) = cluster.read(bucket, key, read).await {
                    if read.value.is_some() {
                        resurrected.insert((bucket.clone(), key.clone()));
                    }
                }
            }
        }
    }
    world.sleep_ms(interval * 20).await;
    resurrected.extend(live_keys(&world, &buckets, &keys).into_iter().map(|(_, b, k)| (b, k)));
    let fenced = world
        .running()
        .iter()
        .filter_map(|&i| world.cluster(i))
        .map(|c| c.store().states_fenced())
        .sum();
    TombstoneFigures {
        keys: keys.len(),
        deleted,
        collected_while_down,
        reclaimed_rounds,
        resurrected: resurrected.len(),
        fenced,
    }
}

/// The (node, bucket, key) triples of live (not deleted) states running nodes hold.
fn live_keys(
    world: &World,
    buckets: &[String],
    keys: &[Vec<u8>],
) -> Vec<(String, String, Vec<u8>)> {
    let mut out = Vec::new();
    for cluster in world.running().iter().filter_map(|&i| world.cluster(i)) {
        for bucket in buckets {
            let Ok(resolver) = cluster.store().bucket(bucket) else { continue };
            for key in keys {
                if let Ok(Some(state)) = cluster.store().fetch(bucket, key) {
                    if !resolver.is_tombstone(&state) {
                        out.push((cluster.me(), bucket.clone(), key.clone()));
                    }
                }
            }
        }
    }
    out
}

/// Whether no running node holds a state or a hint of any of the keys.
fn holds_nothing(world: &World, buckets: &[String], keys: &[Vec<u8>]) -> bool {
    world.running().iter().filter_map(|&i| world.cluster(i)).all(|cluster| {
        cluster.hints().counts().values().all(|&n| n == 0)
            && buckets.iter().all(|bucket| {
                keys.iter().all(|key| cluster.store().fetch(bucket, key).ok().flatten().is_none())
            })
    })
}
