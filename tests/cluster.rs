//! Real clusters on loopback: several nodes in one process, each on its own thread, runtime
//! and ephemeral port, gossiping every 50 ms, driven through the real client libraries.
//!
//! Every wait is bounded (`wait_until`, 20 s at most) so a broken cluster fails the test
//! instead of hanging it.

mod common;

use std::time::{Duration, Instant};

use cartwheel::client::router::ClusterClient;
use cartwheel::client::{block_on, Client, ReadOptions, WriteOptions};
use cartwheel::config::{BucketConfig, Config};
use cartwheel::node::server::NodeHandle;
use cartwheel::Error;
use cartwheel_engines::EngineKind;
use cartwheel_resolvers::{ResolverKind, Value};

const WAIT: Duration = Duration::from_secs(20);

struct TestCluster {
    dir: tempfile::TempDir,
    anti_entropy: usize,
    nodes: Vec<Option<NodeHandle>>,
    addresses: Vec<String>,
}

fn node_config(
    dir: &std::path::Path,
    i: usize,
    listen: &str,
    seed: Option<&str>,
    anti_entropy: usize,
) -> Config {
    let mut config = Config::embedded();
    config.security = cartwheel::config::SecurityConfig::insecure();
    config.node.id = format!("n{}", i + 1);
    config.node.listen = listen.parse().unwrap();
    config.node.data_dir = dir.join(format!("n{}", i + 1));
    config.node.seeds = seed.map(|s| vec![s.to_string()]).unwrap_or_default();
    config.node.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    config.cluster.gossip_interval_ms = 50;
    config.cluster.anti_entropy_partitions_per_round = anti_entropy;
    config.limits.request_timeout_ms = 2_000;
    config.partitions = 64;
    let mut bucket = BucketConfig::new(EngineKind::Log, ResolverKind::Lww);
    bucket.dw = 0;
    config.buckets.insert("b".into(), bucket);
    config
}

impl TestCluster {
    /// Start `size` nodes, the first one the seed of the others, and wait until every node
    /// sees every member up and one ring spread over all of them.
    fn start(size: usize) -> Self {
        Self::start_with(size, 32)
    }

    /// Start with anti-entropy comparing `anti_entropy` partitions per round (0: off), for
    /// tests that must see a replica stay stale until something else repairs it.
    fn start_with(size: usize, anti_entropy: usize) -> Self {
        Self::start_configured(size, anti_entropy, |_| {})
    }

    /// Start as [`TestCluster::start_with`], each node's configuration changed by `change`
    /// (nodes restarted or added later get the plain one).
    fn start_configured(size: usize, anti_entropy: usize, change: impl Fn(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = |i: usize, seed: Option<&str>| {
            let mut config = node_config(dir.path(), i, "127.0.0.1:0", seed, anti_entropy);
            change(&mut config);
            config
        };
        let first = NodeHandle::start(config(0, None)).unwrap();
        let seed = first.address().to_string();
        let mut nodes = vec![Some(first)];
        let mut addresses = vec![seed.clone()];
        for i in 1..size {
            let node = NodeHandle::start(config(i, Some(&seed))).unwrap();
            addresses.push(node.address().to_string());
            nodes.push(Some(node));
        }
        let cluster = Self { dir, anti_entropy, nodes, addresses };
        cluster.wait_converged();
        cluster
    }

    fn wait_converged(&self) {
        let size = self.addresses.len();
        wait_until("the cluster converges", || {
            let up: Vec<_> = (0..size).filter(|&i| self.nodes[i].is_some()).collect();
            let statuses: Vec<_> = up.iter().map(|&i| status(&self.addresses[i])).collect();
            statuses.iter().all(|s| {
                s.members.len() == size
                    && s.members.iter().filter(|m| m.state == "up").count() == up.len()
                    && s.members.iter().all(|m| m.partitions_owned > 0)
                    && s.ring_epoch == statuses[0].ring_epoch
            })
        });
    }

    /// Start one more node, seeded by the first, and wait for the cluster to converge.
    fn add_node(&mut self) {
        let i = self.addresses.len();
        let config = node_config(
            self.dir.path(),
            i,
            "127.0.0.1:0",
            Some(&self.addresses[0]),
            self.anti_entropy,
        );
        let node = NodeHandle::start(config).unwrap();
        self.addresses.push(node.address().to_string());
        self.nodes.push(Some(node));
        self.wait_converged();
    }

    fn stop(&mut self, i: usize) {
        self.nodes[i].take().unwrap().stop().unwrap();
    }

    /// Restart node `i` with a running node as its seed.
    fn restart(&mut self, i: usize) {
        let seed = (0..self.addresses.len())
            .find(|&j| j != i && self.nodes[j].is_some())
            .map(|j| self.addresses[j].clone());
        self.restart_with_seed(i, seed.as_deref());
    }

    fn restart_with_seed(&mut self, i: usize, seed: Option<&str>) {
        let config = node_config(self.dir.path(), i, &self.addresses[i], seed, self.anti_entropy);
        self.nodes[i] = Some(NodeHandle::start(config).unwrap());
    }

    /// Wait until every running node sees node `i` as `state`.
    fn wait_state(&self, i: usize, state: &str) {
        let id = format!("n{}", i + 1);
        wait_until(&format!("{id} is {state} everywhere"), || {
            (0..self.addresses.len()).filter(|&j| j != i && self.nodes[j].is_some()).all(|j| {
                status(&self.addresses[j]).members.iter().any(|m| m.id == id && m.state == state)
            })
        });
    }
}

/// `attempt` until it succeeds, for up to [`WAIT`], as a client retries a request the cluster
/// could not serve yet; each failure is printed, and the last one fails the test.
fn retried<T>(what: &str, mut attempt: impl FnMut() -> Result<T, Error>) -> T {
    let start = Instant::now();
    loop {
        match attempt() {
            Ok(value) => return value,
            Err(e) if start.elapsed() < WAIT => {
                eprintln!("{what} failed ({e}); retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!("{what} kept failing for {WAIT:?}: {e}"),
        }
    }
}

fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    common::wait_until_within(WAIT, what, condition);
}

fn status(address: &str) -> cartwheel::client::NodeStatus {
    block_on(async { Client::connect(address).await.unwrap().status().await.unwrap() })
}

fn put(address: &str, key: &[u8], value: &[u8], options: WriteOptions) -> Result<(), Error> {
    block_on(async {
        let client = Client::connect(address).await?;
        client.put_with("b", key, value, &[], &options).await.map(|_| ())
    })
}

fn get(address: &str, key: &[u8], r: u8) -> Result<Option<Value>, Error> {
    block_on(async {
        let client = Client::connect(address).await?;
        Ok(client.get_with("b", key, &ReadOptions { r, timeout_ms: 0 }).await?.value)
    })
}

fn replica(address: &str, key: &[u8]) -> Option<Vec<u8>> {
    block_on(async {
        Client::connect(address).await.unwrap().replica_state("b", key).await.unwrap()
    })
}

fn value(v: &str) -> Option<Value> {
    Some(Value::Siblings(vec![v.as_bytes().to_vec()]))
}

/// The addresses of a key's N = 3 primaries, in preference order.
fn primaries(address: &str, key: &[u8]) -> Vec<String> {
    let ring = block_on(async { Client::connect(address).await.unwrap().ring().await.unwrap() });
    ring.preference_addresses("b", key)[..3].to_vec()
}

/// Three nodes: a put on one node is read from every node, and stored on exactly the N = 3
/// replicas.
#[test]
fn three_nodes_put_here_get_everywhere() {
    let cluster = TestCluster::start(3);
    for k in 0..20u32 {
        let key = format!("key-{k}");
        put(&cluster.addresses[k as usize % 3], key.as_bytes(), b"v", WriteOptions::default())
            .unwrap();
    }
    for address in &cluster.addresses {
        for k in 0..20u32 {
            assert_eq!(get(address, format!("key-{k}").as_bytes(), 2).unwrap(), value("v"));
        }
    }
    for address in &cluster.addresses {
        assert!(replica(address, b"key-0").is_some(), "every node of three is a replica");
    }
    let s = status(&cluster.addresses[0]);
    assert_eq!(s.members.iter().map(|m| m.partitions_owned).sum::<u32>(), 64);
}

/// One counter's value in a node's metrics (scraped over HTTP, as a monitoring system would).
fn counter(node: &NodeHandle, name: &str) -> u64 {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(node.metrics_address().unwrap()).unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: n\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let line = answer.lines().find(|l| l.split(' ').next() == Some(name));
    line.and_then(|l| l.split(' ').nth(1)?.parse().ok()).unwrap_or_else(|| panic!("no {name}"))
}

/// Writes that reach a coordinator together travel to each replica together: a burst of
/// concurrent puts to one node leaves fewer messages to its peers than calls, and every put
/// is stored on every replica all the same.
#[test]
fn concurrent_writes_travel_to_replicas_in_batches() {
    let cluster = TestCluster::start(3);
    let coordinator = cluster.nodes[0].as_ref().unwrap();
    let batches_before = counter(coordinator, "cartwheel_peer_batches_total");
    let calls_before = counter(coordinator, "cartwheel_peer_batched_calls_total");
    // Every node of three replicates every key: node 0 coordinates each put itself.
    let keys: Vec<String> = (0..200).map(|k| format!("burst-{k}")).collect();
    block_on(async {
        let client = Client::connect(&cluster.addresses[0]).await.unwrap();
        let puts = keys.iter().map(|key| client.put("b", key.as_bytes(), key.as_bytes(), &[]));
        for answer in futures::future::join_all(puts).await {
            answer.expect("every put of the burst is acknowledged");
        }
    });
    let batches = counter(coordinator, "cartwheel_peer_batches_total") - batches_before;
    let calls = counter(coordinator, "cartwheel_peer_batched_calls_total") - calls_before;
    assert!(calls >= 2 * 200, "each put went to both other replicas: {calls} calls");
    assert!(batches < calls, "{calls} calls in {batches} messages: none shared a message");
    for address in &cluster.addresses {
        wait_until("every replica stores every key of the burst", || {
            keys.iter().all(|key| replica(address, key.as_bytes()).is_some())
        });
    }
}

/// Five nodes: each key lives on its three primaries only; a put sent to a node that is not
/// a replica is forwarded and leaves nothing on that node.
#[test]
fn five_nodes_forward_to_replicas() {
    let cluster = TestCluster::start(5);
    let key = b"forwarded-key";
    let owners = primaries(&cluster.addresses[0], key);
    let outsider = cluster.addresses.iter().find(|a| !owners.contains(a)).unwrap().clone();
    put(&outsider, key, b"via-outsider", WriteOptions::default()).unwrap();
    wait_until("all three replicas store the write", || {
        owners.iter().all(|o| replica(o, key).is_some())
    });
    assert_eq!(replica(&outsider, key), None, "the non-replica stored nothing");
    for address in &cluster.addresses {
        assert_eq!(get(address, key, 2).unwrap(), value("via-outsider"));
    }
}

/// R/W combinations from 1 to N all work with every node up.
#[test]
fn read_and_write_quorum_combinations() {
    let cluster = TestCluster::start(3);
    for (r, w) in [(1u8, 1u8), (1, 3), (3, 1), (2, 2), (3, 3)] {
        let key = format!("rw-{r}-{w}");
        let options = WriteOptions { w, ..WriteOptions::default() };
        put(&cluster.addresses[0], key.as_bytes(), b"x", options).unwrap();
        // W = 1 answers before the others store: R = 3 may race it, so wait for them.
        wait_until("the write reaches every replica", || {
            cluster.addresses.iter().all(|a| replica(a, key.as_bytes()).is_some())
        });
        assert_eq!(
            get(&cluster.addresses[2], key.as_bytes(), r).unwrap(),
            value("x"),
            "r={r} w={w}"
        );
    }
    let durable = WriteOptions { w: 3, dw: Some(3), ..WriteOptions::default() };
    put(&cluster.addresses[1], b"durable", b"synced", durable).unwrap();
    assert_eq!(get(&cluster.addresses[0], b"durable", 3).unwrap(), value("synced"));
}

/// With one of three nodes down there is no fallback: W = 2 still succeeds, W = 3 fails
/// with quorumNotMet, naming the replica that did not store it and why, R = 3 fails, R = 2
/// succeeds.
#[test]
fn quorum_with_a_node_down() {
    let mut cluster = TestCluster::start(3);
    cluster.stop(2);
    cluster.wait_state(2, "down");
    let a = cluster.addresses[0].clone();
    put(&a, b"k", b"two-of-three", WriteOptions { w: 2, ..WriteOptions::default() }).unwrap();
    let err =
        put(&a, b"k", b"three", WriteOptions { w: 3, ..WriteOptions::default() }).unwrap_err();
    assert!(matches!(err, Error::QuorumNotMet(_)), "{err:?}");
    assert!(err.to_string().contains("(n3: "), "the error names the replica: {err}");
    assert!(err.outcome_unknown());
    let err = get(&a, b"k", 3).unwrap_err();
    assert!(matches!(err, Error::QuorumNotMet(_) | Error::Timeout(_)), "{err:?}");
    assert!(get(&a, b"k", 2).unwrap().is_some());
}

/// Four nodes, N = 3: with one replica down, writes land on a fallback as hints;
/// when the node is back the hints are delivered, and the node alone has every write.
#[test]
fn hinted_handoff_after_restart() {
    let mut cluster = TestCluster::start(4);
    let victim = 3;
    let victim_address = cluster.addresses[victim].clone();
    let keys: Vec<String> = (0..200)
        .map(|k| format!("hinted-{k}"))
        .filter(|k| primaries(&cluster.addresses[0], k.as_bytes()).contains(&victim_address))
        .take(10)
        .collect();
    assert!(keys.len() >= 5, "enough keys live on the victim");
    cluster.stop(victim);
    cluster.wait_state(victim, "down");
    // W = 3 counts the fallback's hint, so each put answers once its hint is stored (with
    // W = 2 the hint is stored in the background, and a fallback too slow to store it within
    // the request timeout, on a loaded machine, leaves none). A put that timed out is tried
    // again: a second hint for the same key merges into the first.
    for key in &keys {
        let mut attempts = 0;
        while let Err(e) = put(
            &cluster.addresses[0],
            key.as_bytes(),
            b"while-down",
            WriteOptions { w: 3, ..WriteOptions::default() },
        ) {
            attempts += 1;
            assert!(attempts < 5, "a put with its hint failed {attempts} times: {e}");
        }
    }
    let queued = || -> u64 {
        (0..3)
            .map(|i| {
                status(&cluster.addresses[i])
                    .members
                    .iter()
                    .filter(|m| m.id == "n4")
                    .map(|m| m.hints_queued)
                    .sum::<u64>()
            })
            .sum()
    };
    wait_until("every write left a hint", || queued() >= keys.len() as u64);
    assert_eq!(queued(), keys.len() as u64, "one hint per write, on a fallback");

    cluster.restart(victim);
    cluster.wait_state(victim, "up");
    wait_until("hints are delivered", || {
        keys.iter().all(|k| replica(&victim_address, k.as_bytes()).is_some())
    });
    for key in &keys {
        assert_eq!(get(&victim_address, key.as_bytes(), 1).unwrap(), value("while-down"));
    }
    wait_until("hint queues drain", || {
        (0..3).all(|i| status(&cluster.addresses[i]).members.iter().all(|m| m.hints_queued == 0))
    });
}

/// Five nodes, N = 3, every primary of a key down: the two nodes left still take a W = 2
/// write (always writeable), the coordinator keeping one hint itself, and serve it with
/// R = 2; once the primaries are back, the hints reach them and each one alone has it.
#[test]
fn write_with_every_primary_down() {
    let mut cluster = TestCluster::start(5);
    let key = b"orphaned-key";
    let owners = primaries(&cluster.addresses[0], key);
    let down: Vec<usize> = (0..5).filter(|&i| owners.contains(&cluster.addresses[i])).collect();
    let up: Vec<usize> = (0..5).filter(|i| !down.contains(i)).collect();
    assert_eq!((down.len(), up.len()), (3, 2));
    for &i in &down {
        cluster.stop(i);
    }
    for &i in &down {
        cluster.wait_state(i, "down");
    }
    let coordinator = cluster.addresses[up[0]].clone();
    let write =
        || put(&coordinator, key, b"no-primary", WriteOptions { w: 2, ..WriteOptions::default() });
    // The first calls between the two nodes left, just after the others went down, failed
    // now and then under a loaded CI machine (a write's `quorumNotMet`, 1 of 2 stored; a read's
    // "fewer than r = 2 replicas answered", twice in a row once), most likely a replica's
    // answer missing the request's deadline; not proven. A client retries such a request,
    // and so does this test, saying so, with the error (a write's names each replica that
    // did not store it and why): the two nodes left must take the write, and each must end
    // with one hint for the key.
    retried("the write", write);
    let hints: Vec<u64> = up
        .iter()
        .map(|&i| status(&cluster.addresses[i]).members.iter().map(|m| m.hints_queued).sum())
        .collect();
    assert_eq!(hints, vec![1, 1], "each node left holds one hint");
    let read = || get(&cluster.addresses[up[1]], key, 2);
    assert_eq!(retried("the read", read), value("no-primary"));

    for &i in &down {
        cluster.restart(i);
    }
    for &i in &down {
        cluster.wait_state(i, "up");
    }
    wait_until("hints reach the primaries", || {
        down.iter().filter(|&&i| replica(&cluster.addresses[i], key).is_some()).count() >= 2
    });
    for &i in &down {
        if replica(&cluster.addresses[i], key).is_some() {
            assert_eq!(get(&cluster.addresses[i], key, 1).unwrap(), value("no-primary"));
        }
    }
}

/// A node keeps its view of the cluster across a restart: the whole cluster stops, the
/// first node comes back alone with no seed, and it still knows every member, their
/// addresses and the ring; the others, restarted with it as seed, converge on that ring.
#[test]
fn membership_survives_a_restart() {
    let mut cluster = TestCluster::start(3);
    let before = status(&cluster.addresses[0]);
    let owners = primaries(&cluster.addresses[0], b"kept");
    put(&cluster.addresses[0], b"kept", b"value", WriteOptions { w: 3, ..Default::default() })
        .unwrap();
    for i in 0..3 {
        cluster.stop(i);
    }
    cluster.restart_with_seed(0, None);
    let alone = status(&cluster.addresses[0]);
    assert_eq!(alone.ring_epoch, before.ring_epoch, "the saved ring, not a fresh one");
    let mut ids: Vec<_> = alone.members.iter().map(|m| m.id.clone()).collect();
    ids.sort();
    assert_eq!(ids, ["n1", "n2", "n3"]);
    for m in &alone.members {
        let was = before.members.iter().find(|b| b.id == m.id).unwrap();
        assert_eq!(m.partitions_owned, was.partitions_owned, "{}", m.id);
    }
    cluster.restart(1);
    cluster.restart(2);
    cluster.wait_converged();
    assert_eq!(primaries(&cluster.addresses[2], b"kept"), owners);
    assert_eq!(status(&cluster.addresses[2]).ring_epoch, before.ring_epoch);
    assert_eq!(get(&cluster.addresses[1], b"kept", 3).unwrap(), value("value"));
}

/// A replica that missed a write (down, no fallback to hold a hint) is repaired by a read
/// that sees its stale answer.
#[test]
fn read_repair_fixes_a_stale_replica() {
    let mut cluster = TestCluster::start_with(3, 0);
    cluster.stop(2);
    cluster.wait_state(2, "down");
    put(
        &cluster.addresses[0],
        b"repair-me",
        b"new",
        WriteOptions { w: 2, ..WriteOptions::default() },
    )
    .unwrap();
    cluster.restart(2);
    cluster.wait_state(2, "up");
    let c = cluster.addresses[2].clone();
    assert_eq!(replica(&c, b"repair-me"), None, "the restarted node missed the write");
    assert_eq!(get(&cluster.addresses[0], b"repair-me", 3).unwrap(), value("new"));
    wait_until("read repair reaches the stale replica", || replica(&c, b"repair-me").is_some());
    assert_eq!(get(&c, b"repair-me", 1).unwrap(), value("new"));
}

/// The zero-hop client routes to the key's replicas and goes on through the next node when
/// the first one is down.
#[test]
fn cluster_client_survives_a_down_node() {
    let mut cluster = TestCluster::start(3);
    let seeds = cluster.addresses.clone();
    cluster.stop(0);
    cluster.wait_state(0, "down");
    block_on(async {
        let client = ClusterClient::connect(&seeds).await.unwrap();
        let options = WriteOptions { w: 2, ..WriteOptions::default() };
        for k in 0..10u32 {
            let key = format!("routed-{k}");
            client.put_with("b", key.as_bytes(), b"ok", &[], &options).await.unwrap();
            let read = client
                .get_with("b", key.as_bytes(), &ReadOptions { r: 2, timeout_ms: 0 })
                .await
                .unwrap();
            assert_eq!(read.value, value("ok"));
        }
    });
}

/// A node joins a cluster that holds data: partitions move to it, their data follows, and
/// nodes that are no longer replicas of a key drop their copy once the new replicas have it.
#[test]
fn joining_node_receives_its_partitions() {
    let mut cluster = TestCluster::start(3);
    let keys: Vec<String> = (0..100).map(|k| format!("moving-{k}")).collect();
    for key in &keys {
        put(
            &cluster.addresses[0],
            key.as_bytes(),
            b"payload",
            WriteOptions { w: 3, ..WriteOptions::default() },
        )
        .unwrap();
    }
    cluster.add_node();
    let newcomer = cluster.addresses[3].clone();
    let mine: Vec<&String> = keys
        .iter()
        .filter(|k| primaries(&cluster.addresses[0], k.as_bytes()).contains(&newcomer))
        .collect();
    assert!(mine.len() >= 30, "the newcomer is a replica of about 3/4 of the keys: {}", mine.len());
    wait_until("every key is on exactly its three primaries", || {
        keys.iter().all(|k| {
            let owners = primaries(&cluster.addresses[0], k.as_bytes());
            cluster
                .addresses
                .iter()
                .all(|a| replica(a, k.as_bytes()).is_some() == owners.contains(a))
        })
    });
    for key in &mine {
        assert_eq!(get(&newcomer, key.as_bytes(), 1).unwrap(), value("payload"));
    }
}

/// A replica that missed writes (down, no fallback, so no hints) and is never read is brought
/// up to date by anti-entropy. (Without anti-entropy nothing else would repair it: this test
/// fails when `anti_entropy_round` does nothing.)
#[test]
fn anti_entropy_repairs_unread_keys() {
    let mut cluster = TestCluster::start(3);
    cluster.stop(2);
    cluster.wait_state(2, "down");
    let keys: Vec<String> = (0..40).map(|k| format!("unread-{k}")).collect();
    for key in &keys {
        put(
            &cluster.addresses[0],
            key.as_bytes(),
            b"missed",
            WriteOptions { w: 2, ..WriteOptions::default() },
        )
        .unwrap();
    }
    cluster.restart(2);
    let c = cluster.addresses[2].clone();
    wait_until("anti-entropy copies every missed key", || {
        keys.iter().all(|k| replica(&c, k.as_bytes()).is_some())
    });
}

/// Deletes end: once every replica holds a key's tombstone, the tombstone is collected and
/// no node keeps anything of the key, which still reads as not found. Method: three nodes,
/// 20 lww keys written and deleted at W = 3; wait until no node stores any of them.
#[test]
fn deleted_keys_storage_is_reclaimed() {
    let cluster = TestCluster::start(3);
    let keys: Vec<String> = (0..20).map(|k| format!("deleted-{k}")).collect();
    let all = WriteOptions { w: 3, ..WriteOptions::default() };
    for key in &keys {
        put(&cluster.addresses[0], key.as_bytes(), b"doomed", all).unwrap();
        block_on(async {
            let client = Client::connect(&cluster.addresses[1]).await?;
            client.delete_with("b", key.as_bytes(), &[], &all).await
        })
        .unwrap();
    }
    wait_until("every node reclaims every deleted key", || {
        cluster.addresses.iter().all(|a| keys.iter().all(|k| replica(a, k.as_bytes()).is_none()))
    });
    for key in &keys {
        assert_eq!(get(&cluster.addresses[0], key.as_bytes(), 3).unwrap(), None);
    }
}

/// A member's connection carries all of a peer's replication to a node, so it is not held to
/// the bound of a client's: with clients allowed one request in flight each, eight clients
/// writing at once through one coordinator with w = dw = 3 (every replica fsyncs before it
/// answers, so the replication calls of several writes are in flight on each peer connection
/// together) get every write acknowledged and stored everywhere, none refused for the peer
/// connection's in-flight count. With the peer bound at 1 too, the cluster does not even form.
#[test]
fn peer_connections_are_not_held_to_a_clients_inflight_bound() {
    let cluster =
        TestCluster::start_configured(3, 32, |c| c.limits.inflight_per_connection_max = 1);
    let durable = WriteOptions { w: 3, dw: Some(3), ..WriteOptions::default() };
    let results = block_on(async {
        let writers = (0..8).map(|c| {
            let address = cluster.addresses[0].clone();
            async move {
                let client = Client::connect(&address).await.unwrap();
                let mut results = Vec::new();
                for k in 0..20 {
                    let key = format!("w{c}-{k}");
                    let put = client.put_with("b", key.as_bytes(), b"v", &[], &durable).await;
                    results.push((key, put.map(|_| ())));
                }
                results
            }
        });
        futures::future::join_all(writers).await.concat()
    });
    for (key, result) in &results {
        assert!(result.is_ok(), "{key}: {result:?}");
    }
    for address in &cluster.addresses {
        for (key, _) in &results {
            assert!(replica(address, key.as_bytes()).is_some(), "{key} stored on {address}");
        }
    }
}
