//! Bounded memory: a node's budget of bytes in flight (`limits.inflight_bytes_max`,
//! src/cluster/budget.rs) under bursts of 1 MiB puts, on one node and on three, all in this
//! process on loopback ports.
//!
//! Behaviour, not timing: a burst far over the budget gets some `overloaded` answers; every
//! put is answered (each burst runs under a deadline, so a hang fails the test); a refused
//! put stored nothing; every acknowledged put reads back; and once the burst is over the
//! nodes take puts again, so every byte charged was given back. The budget is the smallest
//! a configuration file may set with 1 MiB values: twice the largest message, room for four
//! such puts on one node.

use std::time::Duration;

use cartwheel::client::{block_on, Client, WriteOptions};
use cartwheel::config::{BucketConfig, Config};
use cartwheel::node::server::NodeHandle;
use cartwheel::Error;
use cartwheel_engines::EngineKind;
use cartwheel_resolvers::{ResolverKind, Value};

const VALUE_BYTES: usize = 1 << 20;

/// Longest a burst (or a cluster's convergence) may take before the test calls it a hang.
const WAIT: Duration = Duration::from_secs(180);

const BUCKET: &str = "b";

/// Every request's deadline, at the node and in the client.
const REQUEST_TIMEOUT_MS: u32 = 60_000;

fn options(dw: u8) -> WriteOptions {
    WriteOptions { dw: Some(dw), timeout_ms: REQUEST_TIMEOUT_MS, ..Default::default() }
}

fn config(dir: &std::path::Path, i: usize, seed: Option<&str>) -> Config {
    let mut config = Config::embedded();
    config.security = cartwheel::config::SecurityConfig::insecure();
    config.node.id = format!("n{}", i + 1);
    config.node.listen = "127.0.0.1:0".parse().unwrap();
    config.node.data_dir = dir.join(format!("n{}", i + 1));
    config.node.seeds = seed.map(|s| vec![s.to_string()]).unwrap_or_default();
    config.cluster.gossip_interval_ms = 50;
    // Long enough that a slow machine (a debug build moves 1 MiB values slowly) answers
    // `timeout` only if something hangs.
    config.limits.request_timeout_ms = REQUEST_TIMEOUT_MS as u64;
    config.limits.inflight_bytes_max = 2 * config.limits.message_bytes_max();
    let mut bucket = BucketConfig::new(EngineKind::Log, ResolverKind::Lww);
    bucket.dw = 0;
    config.buckets.insert(BUCKET.into(), bucket);
    config
}

fn value(i: usize) -> Vec<u8> {
    let mut value = vec![(i % 251) as u8; VALUE_BYTES];
    value[..8].copy_from_slice(&(i as u64).to_be_bytes());
    value
}

fn key(i: usize) -> Vec<u8> {
    format!("k{i}").into_bytes()
}

/// What one put of a burst was answered.
enum Answer {
    Stored,
    Refused,
    /// `quorumNotMet`: stored on fewer replicas than W (replicas that refused the state).
    Partial,
}

/// Send `per_connection` puts at once on each of `connections` connections to each address
/// (keys numbered from `first`), and collect every answer, under [`WAIT`]. Any error but
/// `overloaded` (and `quorumNotMet` when `partial_allowed`) fails the test.
fn burst(
    addresses: &[String],
    connections: usize,
    per_connection: usize,
    options: &WriteOptions,
    partial_allowed: bool,
) -> Vec<(usize, Answer)> {
    block_on(async {
        let mut clients = Vec::new();
        for address in addresses {
            for _ in 0..connections {
                clients.push(Client::connect(address).await.unwrap());
            }
        }
        let puts = clients.iter().enumerate().flat_map(|(c, client)| {
            (0..per_connection).map(move |j| {
                let i = c * per_connection + j;
                async move {
                    let outcome = client.put_with(BUCKET, &key(i), &value(i), &[], options).await;
                    (i, outcome)
                }
            })
        });
        let answered = tokio::time::timeout(WAIT, futures::future::join_all(puts))
            .await
            .expect("every put of the burst is answered: none hangs");
        answered
            .into_iter()
            .map(|(i, outcome)| {
                let answer = match outcome {
                    Ok(_) => Answer::Stored,
                    Err(Error::Overloaded(_)) => Answer::Refused,
                    Err(Error::QuorumNotMet(_)) if partial_allowed => Answer::Partial,
                    Err(e) => panic!("put {i} failed with {e:?}, not a refusal"),
                };
                (i, answer)
            })
            .collect()
    })
}

/// Every acknowledged put reads back whole through `address`; every refused one stored
/// nothing (reads as not found).
fn check_answers(address: &str, answers: &[(usize, Answer)]) {
    block_on(async {
        let client = Client::connect(address).await.unwrap();
        for (i, answer) in answers {
            let read = client.get(BUCKET, &key(*i)).await.unwrap();
            match answer {
                Answer::Stored => {
                    assert_eq!(read.value, Some(Value::Siblings(vec![value(*i)])), "put {i}")
                }
                Answer::Refused => assert_eq!(read.value, None, "refused put {i} stored nothing"),
                Answer::Partial => {}
            }
        }
    });
}

fn count(answers: &[(usize, Answer)], which: fn(&Answer) -> bool) -> usize {
    answers.iter().filter(|(_, answer)| which(answer)).count()
}

/// One node, puts that wait for their fsync (dw = 1) so that they stay in flight: 48 puts of
/// 1 MiB at once on three connections against a budget of four. Some are refused, none
/// hangs, refused ones stored nothing, stored ones read back, the refusals are counted, and
/// afterwards exactly as many puts as the budget holds are taken at once: all the bytes came
/// back.
#[test]
fn one_node_refuses_past_its_budget_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut alone = config(dir.path(), 0, None);
    alone.fit_buckets_to(1);
    let node = NodeHandle::start(alone).unwrap();
    let address = node.address().to_string();
    let durable = options(1);
    let answers = burst(std::slice::from_ref(&address), 3, 16, &durable, false);
    let refused = count(&answers, |a| matches!(a, Answer::Refused));
    let stored = count(&answers, |a| matches!(a, Answer::Stored));
    assert!(refused > 0, "48 MiB at once against a 4 MiB budget: some are refused");
    assert!(stored > 0, "some are stored");
    check_answers(&address, &answers);
    block_on(async {
        let client = Client::connect(&address).await.unwrap();
        let status = client.status().await.unwrap();
        assert!(status.requests_refused >= refused as u64, "refusals are counted");
        // The budget holds four puts of 1 MiB, and nothing else is in flight any more.
        let puts = (100..104).map(|i| {
            let client = &client;
            let durable = &durable;
            async move { client.put_with(BUCKET, &key(i), &value(i), &[], durable).await }
        });
        for outcome in futures::future::join_all(puts).await {
            outcome.expect("after the burst, the whole budget is free again");
        }
    });
    node.stop().unwrap();
}

/// Three nodes, each coordinating puts (N = 3, W = 2) and taking the others' replicas under
/// a budget of four 1 MiB values: a coordinator holds budget for its replication while its
/// replicas refuse theirs. Every put is answered (stored, `overloaded`, or `quorumNotMet`
/// when replicas refused), none hangs, refused ones stored nothing, stored ones read back,
/// and afterwards every node takes puts again.
#[test]
fn three_nodes_refuse_without_deadlock_and_recover() {
    let dir = tempfile::tempdir().unwrap();
    let first = NodeHandle::start(config(dir.path(), 0, None)).unwrap();
    let seed = first.address().to_string();
    let mut nodes = vec![first];
    for i in 1..3 {
        nodes.push(NodeHandle::start(config(dir.path(), i, Some(&seed))).unwrap());
    }
    let addresses: Vec<String> = nodes.iter().map(|n| n.address().to_string()).collect();
    wait_converged(&addresses);
    let answers = burst(&addresses, 1, 12, &options(0), true);
    let refused = count(&answers, |a| matches!(a, Answer::Refused | Answer::Partial));
    assert!(refused > 0, "36 MiB at once, each put 3 MiB at its coordinator: some are refused");
    check_answers(&addresses[0], &answers);
    // Replication still in flight from the burst may hold budget for a moment: a node whose
    // bytes never came back would refuse these forever.
    block_on(async {
        for (n, address) in addresses.iter().enumerate() {
            let client = Client::connect(address).await.unwrap();
            let i = 200 + n;
            let mut tries = 0;
            loop {
                match client.put_with(BUCKET, &key(i), &value(i), &[], &options(0)).await {
                    Ok(_) => break,
                    Err(Error::Overloaded(_) | Error::QuorumNotMet(_)) if tries < 100 => {
                        tries += 1;
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    Err(e) => panic!("node {n} takes no put after the burst: {e:?}"),
                }
            }
        }
    });
    for node in nodes {
        node.stop().unwrap();
    }
}

/// Wait until every node sees all three members up, each owning partitions.
fn wait_converged(addresses: &[String]) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let converged = block_on(async {
            for address in addresses {
                let Ok(client) = Client::connect(address).await else { return false };
                let Ok(status) = client.status().await else { return false };
                let up = status.members.iter().filter(|m| m.state == "up").count();
                let owning = status.members.iter().all(|m| m.partitions_owned > 0);
                if up != addresses.len() || !owning {
                    return false;
                }
            }
            true
        });
        if converged {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the cluster did not converge");
        std::thread::sleep(Duration::from_millis(50));
    }
}
