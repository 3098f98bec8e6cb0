//! Membership changes under load: one node growing to four, a join, a leave and a
//! replacement, each while clients write new keys and read acknowledged ones at R = 2
//! through every node. Routing reads to a partition's new replicas as soon as the change is
//! committed (before they copied it) makes the growth check fail: 8 of 78 reads answered
//! not found in one such run. The property
//! (DESIGN "Membership changes", src/ring/transition.rs): no read of an acknowledged key
//! ever answers "not found" while partitions move, and `status` shows the transfers as they
//! run. Nodes run in this process, on free loopback ports, insecure mode, gossip every 50 ms.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cartwheel::client::{block_on, Client, ClusterRequest, ReadOptions, WriteOptions};
use cartwheel::config::{BucketConfig, Config};
use cartwheel::node::server::NodeHandle;
use cartwheel_engines::EngineKind;
use cartwheel_resolvers::ResolverKind;

/// How long a ring change may take.
const SETTLE: Duration = Duration::from_secs(90);
/// Keys written before any change.
const PRELOAD: usize = 1_000;

fn config(dir: &std::path::Path, i: usize, seed: Option<&str>, auto_join: bool) -> Config {
    let mut config = Config::embedded();
    config.security = cartwheel::config::SecurityConfig::insecure();
    config.node.id = format!("n{i}");
    config.node.listen = "127.0.0.1:0".parse().unwrap();
    config.node.data_dir = dir.join(format!("n{i}"));
    config.node.seeds = seed.map(|s| vec![s.to_string()]).unwrap_or_default();
    config.cluster.gossip_interval_ms = 50;
    config.cluster.auto_join = auto_join;
    config.limits.request_timeout_ms = 3_000;
    config.partitions = 32;
    config.buckets.clear();
    let mut bucket = BucketConfig::new(EngineKind::Log, ResolverKind::Lww);
    bucket.dw = 0;
    config.buckets.insert("b".into(), bucket);
    config
}

fn status(address: &str) -> cartwheel::client::NodeStatus {
    block_on(async { Client::connect(address).await.unwrap().status().await.unwrap() })
}

/// Ask the claimant (found through `address`) to take `request`.
fn admin(address: &str, request: ClusterRequest) -> cartwheel::client::ClusterAnswer {
    let claimant = status(address).claimant;
    let at = status(address).members.into_iter().find(|m| m.id == claimant).unwrap().address;
    block_on(async { Client::connect(&at).await.unwrap().cluster(&request).await.unwrap() })
}

/// Wait until every address sees `members` members up or left, no ring change in flight,
/// and `owners` owning partitions. Returns whether a status poll saw a transfer running.
fn wait_settled(addresses: &[String], owners: &[&str]) -> bool {
    let mut saw_transfers = false;
    common::wait_until_within(SETTLE, "the ring change completes", || {
        addresses.iter().all(|a| {
            let s = status(a);
            saw_transfers |= s.transfers.transition != 0;
            s.transfers.transition == 0
                && owners
                    .iter()
                    .all(|o| s.members.iter().any(|m| m.id == *o && m.partitions_owned > 0))
                && s.members.iter().filter(|m| m.partitions_owned > 0).count() == owners.len()
        })
    });
    saw_transfers
}

/// Clients writing new keys and reading acknowledged ones at R = 2 through every node.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    acknowledged: Arc<Mutex<Vec<Vec<u8>>>>,
    /// Reads of acknowledged keys, and those that answered not found (with the key).
    reads: Arc<Mutex<(usize, Vec<String>)>>,
}

impl Load {
    fn start(addresses: Vec<String>, acknowledged: Vec<Vec<u8>>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let acknowledged = Arc::new(Mutex::new(acknowledged));
        let reads = Arc::new(Mutex::new((0usize, Vec::new())));
        let threads = (0..2)
            .map(|t| {
                let (stop, acknowledged, reads) =
                    (Arc::clone(&stop), Arc::clone(&acknowledged), Arc::clone(&reads));
                let addresses = addresses.clone();
                std::thread::spawn(move || {
                    block_on(async move {
                        let mut clients = Vec::new();
                        for a in &addresses {
                            clients.push(Client::connect(a).await.unwrap());
                        }
                        let mut i = 0usize;
                        while !stop.load(Ordering::Relaxed) {
                            i += 1;
                            let client = &clients[i % clients.len()];
                            if i % 2 == 0 {
                                let key = format!("live-{t}-{i}").into_bytes();
                                let options = WriteOptions { w: 2, ..Default::default() };
                                if client.put_with("b", &key, b"v", &[], &options).await.is_ok() {
                                    acknowledged.lock().unwrap().push(key);
                                }
                            } else {
                                let key = {
                                    let keys = acknowledged.lock().unwrap();
                                    keys[(i * 7919) % keys.len()].clone()
                                };
                                let options = ReadOptions { r: 2, timeout_ms: 0 };
                                // A timeout or a quorum not met is not an answer.
                                if let Ok(read) = client.get_with("b", &key, &options).await {
                                    let mut reads = reads.lock().unwrap();
                                    reads.0 += 1;
                                    if read.value.is_none() {
                                        reads.1.push(String::from_utf8_lossy(&key).into());
                                    }
                                }
                            }
                        }
                    })
                })
            })
            .collect();
        Self { stop, threads, acknowledged, reads }
    }

    /// Stop; the reads and the keys that answered not found.
    fn stop(self) -> (usize, Vec<String>, Vec<Vec<u8>>) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().unwrap();
        }
        let (reads, missing) = std::mem::take(&mut *self.reads.lock().unwrap());
        let keys = std::mem::take(&mut *self.acknowledged.lock().unwrap());
        (reads, missing, keys)
    }
}

fn preload(address: &str) -> Vec<Vec<u8>> {
    preload_with(address, "pre", 2)
}

/// Write [`PRELOAD`] keys named `prefix-i` with W = `w`.
fn preload_with(address: &str, prefix: &str, w: u8) -> Vec<Vec<u8>> {
    block_on(async {
        let client = Client::connect(address).await.unwrap();
        let mut keys = Vec::new();
        for i in 0..PRELOAD {
            let key = format!("{prefix}-{i}").into_bytes();
            let options = WriteOptions { w, ..Default::default() };
            client.put_with("b", &key, b"v", &[], &options).await.unwrap();
            keys.push(key);
        }
        keys
    })
}

/// Every key answers at R = 2 through `address`.
fn all_readable(address: &str, keys: &[Vec<u8>]) -> Vec<String> {
    block_on(async {
        let client = Client::connect(address).await.unwrap();
        let mut missing = Vec::new();
        for key in keys {
            let options = ReadOptions { r: 2, timeout_ms: 0 };
            if client.get_with("b", key, &options).await.unwrap().value.is_none() {
                missing.push(String::from_utf8_lossy(key).into_owned());
            }
        }
        missing
    })
}

/// A join, then a leave, under load: no read of an acknowledged key answers not found, the
/// transfers show in `status`, and the leaver ends owning nothing, listed as left.
#[test]
fn a_join_and_a_leave_under_load_hide_no_acknowledged_key() {
    let dir = tempfile::tempdir().unwrap();
    let first = NodeHandle::start(config(dir.path(), 1, None, true)).unwrap();
    let seed = first.address().to_string();
    let mut nodes = vec![first];
    for i in 2..=3 {
        nodes.push(NodeHandle::start(config(dir.path(), i, Some(&seed), true)).unwrap());
    }
    let mut addresses: Vec<String> = nodes.iter().map(|n| n.address().to_string()).collect();
    wait_settled(&addresses, &["n1", "n2", "n3"]);
    let keys = preload(&addresses[0]);

    let load = Load::start(addresses.clone(), keys);
    let fourth = NodeHandle::start(config(dir.path(), 4, Some(&seed), true)).unwrap();
    addresses.push(fourth.address().to_string());
    nodes.push(fourth);
    let joined_with_transfers = wait_settled(&addresses, &["n1", "n2", "n3", "n4"]);
    admin(&addresses[0], ClusterRequest::Leave("n2".into()));
    let plan = admin(&addresses[0], ClusterRequest::Plan);
    assert!(plan.moves.iter().all(|(_, from, _)| from == "n2"), "{:?}", plan.moves);
    admin(&addresses[0], ClusterRequest::Commit);
    let left_with_transfers = wait_settled(&addresses, &["n1", "n3", "n4"]);
    let (reads, missing, keys) = load.stop();

    eprintln!(
        "{reads} reads of acknowledged keys during a join and a leave, {} not found; {} keys",
        missing.len(),
        keys.len()
    );
    assert!(missing.is_empty(), "acknowledged keys answered not found: {missing:?}");
    assert!(reads > 20, "too few reads ran: {reads}");
    assert!(joined_with_transfers && left_with_transfers, "status never showed a transfer");
    let s = status(&addresses[0]);
    let n2 = s.members.iter().find(|m| m.id == "n2").unwrap();
    assert_eq!((n2.state.as_str(), n2.partitions_owned), ("left", 0));
    // The leaver can go: everything stays readable without it.
    nodes.remove(1).stop().unwrap();
    addresses.remove(1);
    let missing = all_readable(&addresses[0], &keys);
    assert!(missing.is_empty(), "{} keys unreadable once n2 stopped", missing.len());
}

/// Without auto join, members join only when staged and committed: one node holding every
/// key grows to four under reads at R = 2 (no read misses). A replacement: n5
/// takes exactly n4's partitions; no read misses meanwhile; n4 ends left. A staged change
/// can be cancelled, and a bad one is refused with a reason.
#[test]
fn a_replacement_takes_exactly_the_old_members_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let first = NodeHandle::start(config(dir.path(), 1, None, false)).unwrap();
    let seed = first.address().to_string();
    let mut nodes = vec![first];
    for i in 2..=4 {
        nodes.push(NodeHandle::start(config(dir.path(), i, Some(&seed), false)).unwrap());
    }
    let mut addresses: Vec<String> = nodes.iter().map(|n| n.address().to_string()).collect();
    common::wait_until_within(SETTLE, "every member is known and up", || {
        status(&addresses[0]).members.iter().filter(|m| m.state == "up").count() == 4
    });
    assert_eq!(status(&addresses[0]).members.iter().filter(|m| m.partitions_owned > 0).count(), 1);
    // n1 holds every key alone (w = 1: one node, one copy); then the ring grows to four
    // under reads at R = 2: the partitions' new replicas are empty until they copied them,
    // and reads must not see that.
    let alone = preload_with(&addresses[0], "alone", 1);
    let load = Load::start(addresses.clone(), alone);
    // A join is taken once the claimant has talked to the member itself (a member only
    // heard of proves nothing): within a few gossip rounds.
    for id in ["n2", "n3", "n4"] {
        common::wait_until_within(SETTLE, &format!("{id} can be staged"), || {
            let claimant = status(&addresses[0]).claimant;
            let at = status(&addresses[0]).members.into_iter().find(|m| m.id == claimant);
            let request = ClusterRequest::Join(id.into());
            block_on(async { Client::connect(&at.unwrap().address).await?.cluster(&request).await })
                .is_ok()
        });
    }
    let plan = admin(&addresses[0], ClusterRequest::Plan);
    assert_eq!(plan.staged, ["join n2", "join n3", "join n4"]);
    assert!(plan.moves.len() >= 20, "{} moves", plan.moves.len());
    admin(&addresses[0], ClusterRequest::Commit);
    wait_settled(&addresses, &["n1", "n2", "n3", "n4"]);
    let (reads, missing, _) = load.stop();
    eprintln!("{reads} reads while one node grew to four, {} not found", missing.len());
    assert!(missing.is_empty(), "acknowledged keys answered not found: {missing:?}");
    assert!(reads > 20, "too few reads ran: {reads}");
    let before = block_on(async { Client::connect(&seed).await.unwrap().ring().await.unwrap() });
    let n4_index = before.nodes.iter().position(|n| n.id == "n4").unwrap() as u16;
    let n4_partitions: BTreeSet<usize> =
        (0..before.owners.len()).filter(|&p| before.owners[p] == n4_index).collect();
    let keys = preload(&addresses[0]);

    let fifth = NodeHandle::start(config(dir.path(), 5, Some(&seed), false)).unwrap();
    addresses.push(fifth.address().to_string());
    nodes.push(fifth);
    common::wait_until_within(SETTLE, "n5 is known", || {
        status(&addresses[0]).members.iter().any(|m| m.id == "n5" && m.state == "up")
    });
    assert_eq!(status(&addresses[0]).transfers.transition, 0, "n5 did not join by itself");

    let claimant = status(&addresses[0]).claimant;
    let at = status(&addresses[0]).members.into_iter().find(|m| m.id == claimant).unwrap();
    let bad = block_on(async {
        let client = Client::connect(&at.address).await.unwrap();
        client.cluster(&ClusterRequest::Leave("nobody".into())).await
    });
    assert!(matches!(bad, Err(cartwheel::Error::BadRequest(_))), "{bad:?}");
    admin(&addresses[0], ClusterRequest::Leave("n1".into()));
    let cancelled = admin(&addresses[0], ClusterRequest::Cancel);
    assert!(cancelled.staged.is_empty());

    let load = Load::start(addresses.clone(), keys);
    let plan = admin(&addresses[0], ClusterRequest::Replace { old: "n4".into(), new: "n5".into() });
    let moved: BTreeSet<usize> = plan.moves.iter().map(|(p, _, _)| *p as usize).collect();
    assert_eq!(moved, n4_partitions, "exactly n4's partitions move");
    assert!(plan.moves.iter().all(|(_, from, to)| from == "n4" && to == "n5"));
    admin(&addresses[0], ClusterRequest::Commit);
    wait_settled(&addresses, &["n1", "n2", "n3", "n5"]);
    let (reads, missing, keys) = load.stop();
    eprintln!("{reads} reads during a replacement, {} not found", missing.len());
    assert!(missing.is_empty(), "acknowledged keys answered not found: {missing:?}");
    let s = status(&addresses[0]);
    let n4 = s.members.iter().find(|m| m.id == "n4").unwrap();
    assert_eq!((n4.state.as_str(), n4.partitions_owned), ("left", 0));
    let n5 = s.members.iter().find(|m| m.id == "n5").unwrap();
    assert_eq!(n5.partitions_owned as usize, n4_partitions.len());
    nodes.remove(3).stop().unwrap();
    addresses.remove(3);
    let missing = all_readable(&addresses[0], &keys);
    assert!(missing.is_empty(), "{} keys unreadable once n4 stopped", missing.len());
}
