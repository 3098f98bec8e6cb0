//! Stopping a node releases everything: a node stopped while clients are in the middle of
//! requests finishes or cancels its work, closes every connection and closes its store, so
//! that a node started right after on the same data directory opens it (no
//! `EngineError::Locked`) and finds every write that was acknowledged durable (dw = 1).
//!
//! Each test stops and restarts in-process nodes ([`NodeHandle`]) many times under a load of
//! concurrent puts and gets from a client thread. A request the stop cuts off fails on the
//! client with a transport error; one that is never answered and never fails would mean the
//! stopped node left its connection open, so every request has a deadline and a miss fails
//! the test.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartwheel::client::{block_on, Client, ReadOptions, WriteOptions};
use cartwheel::config::{BucketConfig, Config};
use cartwheel::node::NodeHandle;
use cartwheel_engines::EngineKind;
use cartwheel_resolvers::{ResolverKind, Value};

/// Stop-and-restart rounds of the one-node test.
const ROUNDS: usize = 50;

/// Stop-and-restart rounds of the three-node test (each stops one node).
const CLUSTER_ROUNDS: usize = 6;

/// Client connections of the load, each to every node under test.
const CONNECTIONS: usize = 2;

/// Concurrent request loops per connection.
const LOOPS_PER_CONNECTION: usize = 8;

/// How long one request of the load may take before the test calls it hung.
const REQUEST_DEADLINE: Duration = Duration::from_secs(10);

const BUCKET: &str = "b";

fn node_config(dir: &Path, id: &str, listen: SocketAddr, seed: Option<SocketAddr>) -> Config {
    let mut config = Config::embedded();
    config.security = cartwheel::config::SecurityConfig::insecure();
    config.node.id = id.to_string();
    config.node.listen = listen;
    config.node.data_dir = dir.join(id);
    config.node.seeds = seed.map(|s| vec![s.to_string()]).unwrap_or_default();
    config.cluster.gossip_interval_ms = 50;
    config.limits.request_timeout_ms = 2_000;
    config.partitions = 16;
    config.buckets.clear();
    let mut bucket = BucketConfig::new(EngineKind::Log, ResolverKind::Lww);
    (bucket.n, bucket.r, bucket.w, bucket.dw) = (3, 1, 2, 1);
    config.buckets.insert(BUCKET.into(), bucket);
    config
}

/// What one round of load saw.
#[derive(Default)]
struct Outcome {
    /// Writes acknowledged with dw = 1: (key, value).
    acked: Vec<(Vec<u8>, Vec<u8>)>,
    /// Requests that failed (cut off by a stop, or refused while a node was down).
    failed: usize,
    /// Requests that neither answered nor failed within [`REQUEST_DEADLINE`].
    hung: usize,
}

/// A load of puts (dw = 1) and gets on its own thread, until `stop` is set; every loop ends
/// at its connection's first failure (a stopped node's connections are gone for good).
struct Load {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    thread: std::thread::JoinHandle<Outcome>,
}

impl Load {
    fn start(addresses: Vec<String>, round: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicUsize::new(0));
        let (stop_flag, acked_count) = (Arc::clone(&stop), Arc::clone(&acked));
        let thread = std::thread::spawn(move || {
            block_on(run_load(addresses, round, stop_flag, acked_count))
        });
        Self { stop, acked, thread }
    }

    /// Wait until `count` writes were acknowledged (the load is under way), or the load
    /// ended.
    fn wait_acked(&self, count: usize) {
        let start = Instant::now();
        while self.acked.load(Ordering::Relaxed) < count && !self.thread.is_finished() {
            assert!(start.elapsed() < common::WAIT, "no write acknowledged: the node is stuck");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn finish(self) -> Outcome {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the load thread does not panic")
    }
}

async fn run_load(
    addresses: Vec<String>,
    round: usize,
    stop: Arc<AtomicBool>,
    acked_count: Arc<AtomicUsize>,
) -> Outcome {
    let outcome = Rc::new(std::cell::RefCell::new(Outcome::default()));
    let mut loops = Vec::new();
    for (n, address) in addresses.iter().enumerate() {
        for c in 0..CONNECTIONS {
            let Ok(client) = Client::connect(address).await else {
                outcome.borrow_mut().failed += 1;
                continue;
            };
            let client = Rc::new(client);
            for l in 0..LOOPS_PER_CONNECTION {
                let (client, stop, outcome) =
                    (Rc::clone(&client), Arc::clone(&stop), Rc::clone(&outcome));
                let acked_count = Arc::clone(&acked_count);
                let name = format!("r{round}-n{n}-c{c}-l{l}");
                loops.push(tokio::task::spawn_local(async move {
                    request_loop(&client, &name, &stop, &outcome, &acked_count).await;
                }));
            }
        }
    }
    for task in loops {
        task.await.expect("a load loop does not panic");
    }
    Rc::try_unwrap(outcome).ok().expect("every loop ended").into_inner()
}

async fn request_loop(
    client: &Client,
    name: &str,
    stop: &AtomicBool,
    outcome: &std::cell::RefCell<Outcome>,
    acked_count: &AtomicUsize,
) {
    let durable = WriteOptions { dw: Some(1), ..WriteOptions::default() };
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("{name}-{i}").into_bytes();
        let value = format!("value of {name}-{i}").into_bytes();
        let put = client.put_with(BUCKET, &key, &value, &[], &durable);
        match tokio::time::timeout(REQUEST_DEADLINE, put).await {
            Ok(Ok(_)) => {
                outcome.borrow_mut().acked.push((key.clone(), value));
                acked_count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(_)) => {
                outcome.borrow_mut().failed += 1;
                return;
            }
            Err(_) => {
                outcome.borrow_mut().hung += 1;
                return;
            }
        }
        let get = client.get(BUCKET, &key);
        match tokio::time::timeout(REQUEST_DEADLINE, get).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                outcome.borrow_mut().failed += 1;
                return;
            }
            Err(_) => {
                outcome.borrow_mut().hung += 1;
                return;
            }
        }
        i += 1;
    }
}

/// Read every acknowledged write through `address` with `r`; panic on the first one missing
/// or wrong.
fn check_acked(address: &str, r: u8, acked: &[(Vec<u8>, Vec<u8>)], when: &str) {
    use futures::StreamExt;
    block_on(async {
        let client = Client::connect(address).await.expect("the restarted node accepts");
        let options = ReadOptions { r, ..ReadOptions::default() };
        let reads = futures::stream::iter(acked)
            .map(|(key, value)| {
                let (client, options) = (&client, &options);
                async move { (key, value, client.get_with(BUCKET, key, options).await) }
            })
            .buffer_unordered(64);
        let reads: Vec<_> = reads.collect().await;
        for (key, value, read) in reads {
            let key = String::from_utf8_lossy(key);
            let read = read.unwrap_or_else(|e| panic!("{when}: reading {key}: {e}"));
            let shown = match read.value {
                Some(Value::Siblings(siblings)) => siblings.into_iter().next(),
                _ => None,
            };
            assert_eq!(
                shown.as_deref(),
                Some(value.as_slice()),
                "{when}: the write of {key} was acknowledged with dw = 1 and is gone"
            );
        }
    });
}

/// Goal: a node stopped under load releases its data directory and keeps what it
/// acknowledged. Method: 50 times, start a load of concurrent puts (dw = 1) and gets, stop
/// the node while it runs, start it again on the same directory (which must open), and read
/// back every write the stopped node acknowledged.
#[test]
fn a_node_stopped_under_load_restarts_on_its_directory() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut node = NodeHandle::start(node_config(dir.path(), "n1", any_port, None)).unwrap();
    let address = node.address();
    let (mut cut, mut acked_total) = (0usize, 0usize);
    for round in 0..ROUNDS {
        let load = Load::start(vec![address.to_string()], round);
        load.wait_acked(10 + (round % 10) * 20);
        std::thread::sleep(Duration::from_millis((round % 7) as u64));
        node.stop().unwrap_or_else(|e| panic!("round {round}: the node stops cleanly: {e}"));
        let outcome = load.finish();
        assert_eq!(outcome.hung, 0, "round {round}: requests hung after the node stopped");
        cut += usize::from(outcome.failed > 0);
        acked_total += outcome.acked.len();
        node = NodeHandle::start(node_config(dir.path(), "n1", address, None))
            .unwrap_or_else(|e| panic!("round {round}: the node restarts on its directory: {e}"));
        check_acked(&address.to_string(), 1, &outcome.acked, &format!("round {round}"));
    }
    node.stop().unwrap();
    eprintln!(
        "{ROUNDS} rounds in {:?}: {acked_total} writes acknowledged, {cut} rounds cut requests off",
        started.elapsed()
    );
    assert!(cut >= ROUNDS / 2, "only {cut} of {ROUNDS} stops cut a request off: too little load");
}

/// Goal: the same in a cluster, where the stopped node also has connections to its peers and
/// they to it, with replication and read calls in flight both ways. Method: three nodes (N = 3,
/// W = 2, DW = 1) under load through all of them; each round stops one node, restarts it on
/// its directory and address, and waits until every node sees all three up; at the end every
/// acknowledged write is read back with R = 3.
#[test]
fn cluster_nodes_stopped_under_load_restart_on_their_directories() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let first = NodeHandle::start(node_config(dir.path(), "n1", any_port, None)).unwrap();
    let seed = first.address();
    let mut nodes = vec![Some(first)];
    for id in ["n2", "n3"] {
        nodes.push(Some(
            NodeHandle::start(node_config(dir.path(), id, any_port, Some(seed))).unwrap(),
        ));
    }
    let addresses: Vec<SocketAddr> = nodes.iter().flatten().map(NodeHandle::address).collect();
    let converged = || {
        common::wait_until("every node sees three members up", || {
            addresses.iter().all(|a| common::members_up(&a.to_string()) == 3)
        })
    };
    converged();
    let mut acked = Vec::new();
    for round in 0..CLUSTER_ROUNDS {
        let stopped = round % 3;
        let load = Load::start(addresses.iter().map(ToString::to_string).collect(), round);
        load.wait_acked(10 + round * 5);
        std::thread::sleep(Duration::from_millis((round % 4) as u64 * 5));
        let node = nodes[stopped].take().unwrap();
        node.stop()
            .unwrap_or_else(|e| panic!("round {round}: n{} stops cleanly: {e}", stopped + 1));
        // The others go on under load, with their calls to the stopped node failing.
        std::thread::sleep(Duration::from_millis(50));
        let outcome = load.finish();
        assert_eq!(outcome.hung, 0, "round {round}: requests hung after a node stopped");
        acked.extend(outcome.acked);
        let id = format!("n{}", stopped + 1);
        let peer = addresses[(stopped + 1) % 3];
        let config = node_config(dir.path(), &id, addresses[stopped], Some(peer));
        let node = NodeHandle::start(config)
            .unwrap_or_else(|e| panic!("round {round}: {id} restarts on its directory: {e}"));
        nodes[stopped] = Some(node);
        converged();
    }
    check_acked(&addresses[0].to_string(), 3, &acked, "after the rounds");
    for node in nodes.into_iter().flatten() {
        node.stop().unwrap();
    }
    eprintln!(
        "{CLUSTER_ROUNDS} cluster rounds in {:?}: {} writes acknowledged",
        started.elapsed(),
        acked.len()
    );
}
