//! # Writers and convergence for the fault tests
//!
//! A **writer** is one thread with one client connected straight to one node (not the zero-hop
//! router, so nodes that are not primaries of a key coordinate or forward too). Until told to
//! stop it writes unique values: cart items, set elements and siblings and lww values are named
//! after the writer and a sequence number, counters only ever get +1. Every attempt is recorded
//! in a [`History`] with its outcome and its invocation and answer times, for
//! [`super::history`] to check at the end. A writer whose node is gone (killed, or cut off)
//! connects again.
//!
//! **Convergence** is: no node holds hints, the first N nodes of every key's preference list
//! store the same bytes, and reads at R = N through every node return the same values. The
//! state read then is the final state the history is checked against.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cartwheel::client::{block_on, Client, ReadOptions, RingInfo, WriteOptions};
use cartwheel::Error;
use cartwheel_resolvers::{Op, Value};

use super::history::{FinalState, History, Operation};

/// What a writer writes to a bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `cart` bucket: add a unique item, quantity 1.
    CartAdd,
    /// `pncounter` bucket: +1.
    CounterIncrement,
    /// `orset` bucket: add a unique element.
    SetAdd,
    /// `siblings` bucket: put a unique value with an empty context.
    BlindPut,
    /// `siblings` bucket: read the key, then put a unique value with the read's context
    /// (superseding what the read returned).
    ContextPut,
    /// `lww` bucket: put a unique value with an empty context.
    LwwPut,
    /// `lww` bucket: put a unique value of this many bytes to a key of its own (disk filler).
    Blob(usize),
}

/// A bucket a writer writes: its name, what is written and over how many keys.
#[derive(Clone, Copy, Debug)]
pub struct Bucket {
    /// Bucket name.
    pub name: &'static str,
    /// What is written.
    pub kind: Kind,
    /// Keys written, `name-0` to `name-(keys-1)` (ignored by [`Kind::Blob`]).
    pub keys: usize,
}

/// The name of key `index` of `bucket`.
pub fn key_name(bucket: &str, index: usize) -> Vec<u8> {
    format!("{bucket}-{index}").into_bytes()
}

/// Every key a set of buckets can be written at (blobs excepted: their keys are in the
/// history).
pub fn fixed_keys(buckets: &[Bucket]) -> Vec<(String, Vec<u8>)> {
    let fixed = buckets.iter().filter(|b| !matches!(b.kind, Kind::Blob(_)));
    fixed.flat_map(|b| (0..b.keys).map(|i| (b.name.to_string(), key_name(b.name, i)))).collect()
}

/// xorshift64: the writers' key choice.
pub fn xorshift(mut x: u64) -> u64 {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    x
}

/// How a writer runs.
#[derive(Clone, Debug)]
pub struct WriterPlan {
    /// The writer's number (names its values `w{number}-…`).
    pub number: usize,
    /// The node it writes through.
    pub address: String,
    /// The buckets, written in turn.
    pub buckets: Vec<Bucket>,
    /// Seed of its key choice.
    pub seed: u64,
    /// Per-write timeout asked of the node (the client gives up 3 s later on its own).
    pub timeout_ms: u32,
    /// Pause between writes.
    pub pause: Duration,
}

/// Run a writer until `stop`, then return its history.
pub fn writer(plan: WriterPlan, stop: Arc<AtomicBool>) -> History {
    block_on(async move {
        let mut history = History::default();
        let mut client: Option<Client> = None;
        let mut random = plan.seed | 1;
        let mut sequence = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let Some(connected) = &client else {
                match Client::connect(&plan.address).await {
                    Ok(c) => client = Some(c),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
                continue;
            };
            sequence += 1;
            random = xorshift(random);
            let bucket = plan.buckets[sequence as usize % plan.buckets.len()];
            let unique = format!("w{}-{sequence:06}", plan.number);
            let key = match bucket.kind {
                Kind::Blob(_) => format!("{}-{unique}", bucket.name).into_bytes(),
                _ => key_name(bucket.name, (random >> 32) as usize % bucket.keys),
            };
            let connected = write_one(connected, &plan, bucket, &key, unique, &mut history).await;
            if !connected {
                client = None;
            }
            if !plan.pause.is_zero() {
                tokio::time::sleep(plan.pause).await;
            }
        }
        history
    })
}

/// Every writer puts to the same lww key at once, `rounds` times per key: concurrent blind
/// puts through different nodes, of which lww keeps one and drops the others (acknowledged).
/// `barrier` is shared by the writers calling this, one per writer.
pub fn lww_burst(
    plan: &WriterPlan,
    bucket: Bucket,
    rounds: usize,
    barrier: &Barrier,
    history: &mut History,
) {
    assert_eq!(bucket.kind, Kind::LwwPut);
    block_on(async {
        let client = Client::connect(&plan.address).await.ok();
        for round in 0..rounds {
            for index in 0..bucket.keys {
                let key = key_name(bucket.name, index);
                let unique = format!("w{}-burst-{round}-{index}", plan.number);
                // Every writer waits here, connected or not, so the rounds stay in step.
                barrier.wait();
                if let Some(client) = &client {
                    write_one(client, plan, bucket, &key, unique, history).await;
                }
            }
        }
    })
}

/// One write, recorded; false if the connection should be dropped (the node may be gone).
async fn write_one(
    client: &Client,
    plan: &WriterPlan,
    bucket: Bucket,
    key: &[u8],
    unique: String,
    history: &mut History,
) -> bool {
    let unique = unique.into_bytes();
    let options = WriteOptions { timeout_ms: plan.timeout_ms, ..WriteOptions::default() };
    let guard = Duration::from_millis(u64::from(plan.timeout_ms) + 3_000);
    let (operation, context) = match bucket.kind {
        Kind::CartAdd => (Operation::CartAdd { item: unique, quantity: 1 }, Vec::new()),
        Kind::CounterIncrement => (Operation::CounterIncrement(1), Vec::new()),
        Kind::SetAdd => (Operation::SetAdd(unique), Vec::new()),
        Kind::BlindPut => (Operation::BlindPut(unique), Vec::new()),
        Kind::LwwPut => (Operation::LwwPut(unique), Vec::new()),
        Kind::Blob(bytes) => (Operation::LwwPut(blob(&unique, bytes)), Vec::new()),
        Kind::ContextPut => {
            let read_options = ReadOptions { timeout_ms: plan.timeout_ms, ..Default::default() };
            let read =
                tokio::time::timeout(guard, client.get_with(bucket.name, key, &read_options))
                    .await
                    .unwrap_or_else(|_| Err(Error::Timeout("no answer at the client".into())));
            match read {
                Ok(read) => {
                    let observed = match read.value {
                        Some(Value::Siblings(values)) => values,
                        _ => Vec::new(),
                    };
                    (Operation::ContextPut { value: unique, observed }, read.context)
                }
                // Nothing read, nothing written: a write needs a context here.
                Err(e) => return !reconnect(&e),
            }
        }
    };
    let invoked = Instant::now();
    let result =
        tokio::time::timeout(guard, send(client, bucket.name, key, &operation, &context, &options))
            .await
            .unwrap_or_else(|_| Err(Error::Timeout("no answer at the client".into())));
    history.record_result(bucket.name, key, operation, &result, invoked);
    !matches!(&result, Err(e) if reconnect(e))
}

/// Whether an error means the connection may be dead.
fn reconnect(error: &Error) -> bool {
    matches!(error, Error::Transport(_) | Error::Connect { .. } | Error::Timeout(_))
}

/// A blob of `bytes` bytes starting with `unique` (so blobs differ), filled so that a
/// compressing file system would not shrink it.
pub fn blob(unique: &[u8], bytes: usize) -> Vec<u8> {
    let mut out = unique.to_vec();
    let mut x = unique.iter().fold(0x2545_F491_4F6C_DD1Du64, |h, b| xorshift(h ^ u64::from(*b)));
    while out.len() < bytes {
        x = xorshift(x);
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(bytes.max(unique.len()));
    out
}

/// Send one recorded operation with `context`.
pub async fn send(
    client: &Client,
    bucket: &str,
    key: &[u8],
    operation: &Operation,
    context: &[u8],
    options: &WriteOptions,
) -> Result<(), Error> {
    let op = match operation {
        Operation::BlindPut(value)
        | Operation::LwwPut(value)
        | Operation::ContextPut { value, .. } => {
            return client.put_with(bucket, key, value, context, options).await.map(drop)
        }
        Operation::CartAdd { item, quantity } => {
            Op::CartAdd { item: item.clone(), quantity: *quantity }
        }
        Operation::CounterIncrement(amount) => Op::CounterIncrement(*amount),
        Operation::SetAdd(element) => Op::SetAdd(element.clone()),
    };
    client.update(bucket, key, &[op], context, options).await.map(drop)
}

/// Every key's value as read at R = `r` through `address`, or the first error.
pub fn read_all(address: &str, keys: &[(String, Vec<u8>)], r: u8) -> Result<FinalState, Error> {
    block_on(async {
        let client = Client::connect(address).await?;
        let options = ReadOptions { r, timeout_ms: 5_000 };
        let mut state = FinalState::new();
        for (bucket, key) in keys {
            let read = client.get_with(bucket, key, &options).await?;
            state.insert((bucket.clone(), key.clone()), read.value);
        }
        Ok(state)
    })
}

/// Hints held by the node at `address` for any member (`None` if it does not answer).
pub fn hints_held(address: &str) -> Option<u64> {
    block_on(async {
        let status = Client::connect(address).await.ok()?.status().await.ok()?;
        Some(status.members.iter().map(|m| m.hints_queued).sum())
    })
}

/// Whether the first `n` nodes of every key's preference list store the same bytes.
pub fn primaries_agree(ring: &RingInfo, keys: &[(String, Vec<u8>)], n: usize) -> bool {
    disagreements(ring, keys, n, 1).is_empty()
}

/// Up to `most` keys whose first `n` nodes do not store the same bytes, each with what those
/// nodes hold ("n2: 1234 bytes, n4: none, n5: unreachable"), for a test's printout.
pub fn disagreements(
    ring: &RingInfo,
    keys: &[(String, Vec<u8>)],
    n: usize,
    most: usize,
) -> Vec<String> {
    block_on(async {
        let mut clients: std::collections::BTreeMap<String, Option<Client>> = Default::default();
        let mut out = Vec::new();
        for (bucket, key) in keys {
            let mut states = Vec::new();
            for address in ring.preference_addresses(bucket, key).iter().take(n) {
                if !clients.contains_key(address) {
                    clients.insert(address.clone(), Client::connect(address).await.ok());
                }
                let state = match &clients[address] {
                    Some(client) => client.replica_state(bucket, key).await.ok(),
                    None => None,
                };
                states.push((address.clone(), state));
            }
            if states.iter().any(|(_, s)| s.is_none() || s != &states[0].1) {
                let held: Vec<String> = states
                    .iter()
                    .map(|(address, state)| {
                        let id = ring.nodes.iter().find(|m| &m.address == address);
                        let id = id.map_or(address.as_str(), |m| m.id.as_str());
                        match state {
                            None => format!("{id}: unreachable"),
                            Some(None) => format!("{id}: none"),
                            Some(Some(bytes)) => format!("{id}: {} bytes", bytes.len()),
                        }
                    })
                    .collect();
                out.push(format!("{bucket}/{}: {}", String::from_utf8_lossy(key), held.join(", ")));
                if out.len() >= most {
                    break;
                }
            }
        }
        out
    })
}

/// The ring as the node at `address` sees it.
pub fn ring(address: &str) -> RingInfo {
    block_on(async { Client::connect(address).await?.ring().await }).expect("the ring is readable")
}

/// Wait (at most `limit`) until no node holds hints, the `n` primaries of every key agree
/// and reads at R = `n` through every node agree; return the state read and whether that
/// happened in time.
pub fn converge(
    addresses: &[String],
    ring: &RingInfo,
    keys: &[(String, Vec<u8>)],
    n: usize,
    limit: Duration,
) -> (FinalState, bool) {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < limit {
        let hints: Option<u64> = addresses.iter().map(|a| hints_held(a)).sum();
        let reads: Result<Vec<FinalState>, Error> =
            addresses.iter().map(|a| read_all(a, keys, n as u8)).collect();
        if let Ok(reads) = reads {
            let agree = reads.iter().all(|r| r == &reads[0]);
            if hints == Some(0) && agree && primaries_agree(ring, keys, n) {
                return (reads.into_iter().next().unwrap(), true);
            }
            last = reads.into_iter().next();
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    print_unconverged(addresses, ring, keys, n);
    let state = last.or_else(|| read_all(&addresses[0], keys, n as u8).ok());
    (state.expect("the final state is readable from the first node"), false)
}

/// Say what is still not converged: hints held per node, keys whose primaries differ.
pub fn print_unconverged(
    addresses: &[String],
    ring: &RingInfo,
    keys: &[(String, Vec<u8>)],
    n: usize,
) {
    let hints: Vec<String> = addresses
        .iter()
        .map(|a| hints_held(a).map_or("no answer".into(), |h| h.to_string()))
        .collect();
    eprintln!("not converged: hints held per node: {}", hints.join(", "));
    let differing = disagreements(ring, keys, n, 10);
    eprintln!("  keys whose primaries differ (at most 10): {}", differing.len());
    for line in differing {
        eprintln!("  {line}");
    }
}

/// The seed of a run: `CARTWHEEL_TEST_SEED` if set (to replay a run), else from the clock.
/// Printed with how to replay it.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("CARTWHEEL_TEST_SEED") {
        Ok(text) => text.parse().expect("CARTWHEEL_TEST_SEED is a u64"),
        Err(_) => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
            now.expect("the clock is past 1970").as_nanos() as u64
        }
    };
    eprintln!("{test}: seed {seed} (replay with CARTWHEEL_TEST_SEED={seed})");
    seed
}

/// Whether the long version of the fault tests was asked for (`CARTWHEEL_SOAK=1`).
pub fn soak() -> bool {
    std::env::var("CARTWHEEL_SOAK").is_ok_and(|v| v == "1")
}
