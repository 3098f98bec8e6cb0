//! Fault test with a history checker: five `cartwheel serve` processes take CRDT and sibling
//! writes through every node while a nemesis kills pairs of nodes with SIGKILL and restarts
//! them; at the end the converged state must hold every acknowledged write.
//!
//! What it is after: a node that coordinates a write takes the dot (actor, counter) for it
//! from its own copy of the key. If that copy is behind what the node itself already issued
//! (a primary restarted after kill -9 without the unsynced tail of its log, with dw = 0; a node
//! that is not a primary and coordinates with a stale stray copy), the node issues a dot it
//! already used, and merging then drops one of two different acknowledged writes as seen.
//! Nothing in a single-process test shows that; a history of real writes through real
//! crashes does.
//!
//! Shape of the run:
//! - 5 nodes on free loopback ports, gossip every 100 ms, buckets on the `log` engine with
//!   N/R/W/DW = 3/2/2/0: `carts` (cart), `counters` (pncounter), `sets` (orset), `siblings`;
//! - one writer thread per node, with a client connected straight to that node (not the
//!   zero-hop router), so nodes that are not primaries of a key coordinate or forward too;
//!   every write is unique (cart items, set elements and sibling values are named after the
//!   writer and a sequence number; counters only ever get +1) and recorded with its outcome;
//! - the nemesis kills two nodes at once (two primaries of one of the carts), keeps them down
//!   a while, restarts them, lets the cluster settle, and moves on to another pair;
//! - then the writers stop, every node runs, hints drain and reads at R = 3 from every node
//!   agree; [`common::history`] checks that final state against the history.
//!
//! Run it against another build with `CARTWHEEL_TEST_BIN=/path/to/cartwheel`.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartwheel::client::{block_on, Client, ReadOptions, RingInfo};

use common::history::History;
use common::workload::{self, key_name, Bucket, Kind, WriterPlan};
use common::{free_port, members_up, wait_until, Process};

/// Nodes in the cluster.
const NODES: usize = 5;

/// The buckets written: name, resolver, number of keys. The siblings bucket has more keys
/// (and a raised sibling limit, see [`node_config`]) because every blind put adds a sibling.
const BUCKETS: [Bucket; 4] = [
    Bucket { name: "carts", kind: Kind::CartAdd, keys: 5 },
    Bucket { name: "counters", kind: Kind::CounterIncrement, keys: 5 },
    Bucket { name: "sets", kind: Kind::SetAdd, keys: 5 },
    Bucket { name: "siblings", kind: Kind::BlindPut, keys: 10 },
];

/// Kill rounds of the nemesis.
const ROUNDS: usize = 6;
/// Writes before the first kill.
const WARM_UP: Duration = Duration::from_secs(2);
/// How long a killed pair stays down.
const DOWN: Duration = Duration::from_millis(2_500);
/// How long the cluster runs with every node up between rounds.
const UP: Duration = Duration::from_millis(2_500);
/// Between the two kills of a pair. Longer than many flush intervals (10 ms), so a write
/// that both nodes of the pair acknowledged has reached the second one's disk before it dies:
/// with dw = 0, killing two replicas within one flush interval may lose an acknowledged
/// write legitimately (the README says so), and this test is after the bug, not that.
const STAGGER: Duration = Duration::from_millis(250);
/// How long the cluster may take to converge after the writers stopped.
const CONVERGE: Duration = Duration::from_secs(40);

/// Per-write timeout the writers ask for; the client gives up a little later on its own.
const WRITE_TIMEOUT_MS: u32 = 2_000;

/// One node's configuration file.
fn node_config(id: usize, addresses: &[String], data_dir: &std::path::Path) -> String {
    let mut text = format!(
        "[node]\nid = \"n{id}\"\nlisten = \"{listen}\"\ndata_dir = \"{data}\"\nseeds = [\"{seed}\"]\n\
         [cluster]\ngossip_interval_ms = 100\n[security]\nmode = \"insecure\"\n",
        id = id + 1,
        listen = addresses[id],
        data = data_dir.display(),
        seed = addresses[0],
    );
    for Bucket { name, kind, .. } in BUCKETS {
        let resolver = match kind {
            Kind::CartAdd => "cart",
            Kind::CounterIncrement => "pncounter",
            Kind::SetAdd => "orset",
            _ => "siblings",
        };
        text.push_str(&format!(
            "[buckets.{name}]\nengine = \"log\"\nresolver = \"{resolver}\"\nn = 3\nr = 2\nw = 2\ndw = 0\n"
        ));
        if resolver == "siblings" {
            text.push_str("siblings_soft_max = 5000\nsiblings_hard_max = 5000\n");
        }
    }
    text
}

/// Five nodes on free ports, each with its data in one temporary directory. (Fields drop in
/// order: the processes are killed before their directory is removed.)
struct Cluster {
    processes: Vec<Process>,
    addresses: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addresses: Vec<String> =
            (0..NODES).map(|_| format!("127.0.0.1:{}", free_port())).collect();
        let processes = (0..NODES)
            .map(|i| {
                let config = dir.path().join(format!("n{}.toml", i + 1));
                let data = dir.path().join(format!("n{}", i + 1));
                std::fs::write(&config, node_config(i, &addresses, &data)).unwrap();
                let mut process = Process::new(config);
                process.start();
                process
            })
            .collect();
        let cluster = Self { processes, addresses, _dir: dir };
        cluster.wait_all_up("every node sees five members up and owning partitions");
        cluster
    }

    fn wait_all_up(&self, what: &str) {
        wait_until(what, || self.addresses.iter().all(|a| members_up(a) == NODES));
    }

    fn ring(&self) -> RingInfo {
        block_on(async { Client::connect(&self.addresses[0]).await?.ring().await })
            .expect("the ring is readable")
    }

    fn index_of(&self, address: &str) -> usize {
        self.addresses.iter().position(|a| a == address).expect("a member's address is known")
    }
}

/// The writer of node `node`: unique writes through that node, in turn to each bucket.
fn writer_plan(node: usize, address: String) -> WriterPlan {
    WriterPlan {
        number: node + 1,
        address,
        buckets: BUCKETS.to_vec(),
        seed: 0x9E37_79B9_7F4A_7C15u64 ^ (node as u64 + 1),
        timeout_ms: WRITE_TIMEOUT_MS,
        pause: Duration::ZERO,
    }
}

/// The pairs the nemesis kills, one per round: two of the three primaries of cart
/// `round % carts`, the two killed least often so far, so that every node is killed (and
/// restarted) about as often as the others.
fn kill_plan(cluster: &Cluster, ring: &RingInfo) -> Vec<(usize, usize)> {
    let carts = BUCKETS[0].keys;
    let mut kills = [0usize; NODES];
    (0..ROUNDS)
        .map(|round| {
            let preference = ring.preference_addresses("carts", &key_name("carts", round % carts));
            let mut primaries: Vec<usize> =
                preference.iter().take(3).map(|a| cluster.index_of(a)).collect();
            primaries.sort_by_key(|&node| (kills[node], (node + round) % NODES));
            let pair = (primaries[0], primaries[1]);
            kills[pair.0] += 1;
            kills[pair.1] += 1;
            pair
        })
        .collect()
}

/// How many actors (node, epoch) each cart's clock names: what the fix for reused dots
/// costs in state size after this many kills (see `src/actors.rs`).
fn cart_clock_sizes(cluster: &Cluster, keys: &[(String, Vec<u8>)]) -> Vec<usize> {
    use cartwheel_resolvers::{cart, causal::decode_context, codec::Tag};
    block_on(async {
        let client = Client::connect(&cluster.addresses[0]).await.expect("n1 answers");
        let mut sizes = Vec::new();
        for (bucket, key) in keys.iter().filter(|(bucket, _)| bucket == "carts") {
            let read = client.get_with(bucket, key, &ReadOptions::default()).await;
            let context = read.expect("a cart reads").context;
            let clock =
                decode_context(Tag::Cart, cart::CONTEXT_VERSION, &context).expect("decodes");
            sizes.push(clock.map_or(0, |clock| clock.len()));
        }
        sizes
    })
}

/// Kill -9 pairs of nodes (two primaries of a cart at a time) and restart them while every
/// node coordinates unique cart adds, counter increments, set adds and blind sibling puts:
/// no acknowledged write is missing from the converged state.
#[test]
fn no_acknowledged_write_is_lost_when_pairs_of_nodes_are_killed() {
    let started = Instant::now();
    eprintln!("binary under test: {}", common::binary().display());
    let mut cluster = Cluster::start();
    let ring = cluster.ring();
    let plan = kill_plan(&cluster, &ring);

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..NODES)
        .map(|node| {
            let (plan, stop) =
                (writer_plan(node, cluster.addresses[node].clone()), Arc::clone(&stop));
            std::thread::spawn(move || workload::writer(plan, stop))
        })
        .collect();

    std::thread::sleep(WARM_UP);
    for (round, &(a, b)) in plan.iter().enumerate() {
        eprintln!("round {round}: kill -9 n{} and n{}", a + 1, b + 1);
        cluster.processes[a].kill();
        std::thread::sleep(STAGGER);
        cluster.processes[b].kill();
        std::thread::sleep(DOWN);
        cluster.processes[a].start();
        cluster.processes[b].start();
        std::thread::sleep(UP);
    }
    stop.store(true, Ordering::Relaxed);
    let mut history = History::default();
    for writer in writers {
        history.extend(writer.join().expect("a writer thread does not panic"));
    }

    for (i, process) in cluster.processes.iter_mut().enumerate() {
        if !process.is_running() {
            eprintln!("n{} exited by itself; starting it again", i + 1);
            process.start();
        }
    }
    cluster.wait_all_up("every node is up again after the nemesis");
    let keys: Vec<(String, Vec<u8>)> = history.keys().into_iter().collect();
    let (final_state, converged) =
        workload::converge(&cluster.addresses, &ring, &keys, 3, CONVERGE);

    let report = history.check(&final_state);
    eprint!("{report}");
    eprintln!(
        "{} writes, {} acknowledged, {} lost, converged: {converged}, {:.1} s",
        history.records().len(),
        report.acknowledged(),
        report.lost(),
        started.elapsed().as_secs_f64()
    );
    eprintln!("actor entries in each cart's clock: {:?}", cart_clock_sizes(&cluster, &keys));
    for (name, bucket) in &report.buckets {
        assert!(
            bucket.acknowledged >= 20,
            "too few acknowledged writes in {name} for the test to mean anything: {}",
            bucket.acknowledged
        );
    }
    assert_eq!(report.lost(), 0, "acknowledged writes lost:\n{report}");
    assert!(report.is_valid(), "the final state holds writes nobody made:\n{report}");
    assert!(converged, "the nodes did not converge within {CONVERGE:?}");
}
