//! A full disk in one node of a cluster: five `cartwheel serve` processes, N = 3, `log`
//! engine, dw = 1; one node keeps its data on a 24 MiB tmpfs the test mounts. Writers write
//! cart adds and 256 KiB blobs through every node until that disk is full, then cart adds and
//! 64 KiB blobs for a while more; then the disk gets space back (a remount, larger), the node
//! is killed and restarted, and the cluster must converge with every acknowledged write.
//!
//! What it is after:
//! - **the other nodes keep serving**: a full disk is an error for the writes that hit it on
//!   that node; the other replicas, and fallbacks with hints, still make W = 2 and DW = 1, so
//!   writes through every other node go on being acknowledged;
//! - **a full node's refusal is typed**: a write forwarded to it is refused with
//!   `unavailable` (nothing done) and taken by another primary; no write through another node
//!   fails with the full node's I/O error (`internal`);
//! - **nothing acknowledged is lost**: not a cart add, not a blob, whether the full node
//!   took it before it filled, refused it, or acknowledged something after its first refusal
//!   (the history checker, [`common::history`]; blobs are `lww` puts to keys of their own, so
//!   a blob is lost exactly when it is missing);
//! - **the full node comes back**: after the remount and a kill -9, it starts, takes what it
//!   missed (hints, anti-entropy, read repair), and its replicas agree with the others'.
//!
//! Five nodes, not three: with three and N = 3 every key lives on the full node, so sloppy
//! quorum has no fallback to take its share, and the test would show W = 2 of 3, not the
//! hinted path. It costs about twice the time of three.
//!
//! Mounting needs root: where `mount` is refused the test says it was skipped and passes,
//! unless `CARTWHEEL_REQUIRE_TMPFS=1` (CI sets it where a probe mount works). The seed picks
//! the full node and the writers' keys: replay with `CARTWHEEL_TEST_SEED=<seed>`.
//! `CARTWHEEL_SOAK=1` writes on for a minute past the full disk instead of 5 s.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartwheel::client::{block_on, Client, RingInfo};

use common::history::{FinalState, History, Outcome};
use common::tmpfs::Tmpfs;
use common::workload::{self, Bucket, Kind, WriterPlan};
use common::{free_port, members_up, wait_until, Process};

/// Nodes in the cluster.
const NODES: usize = 5;
/// N of both buckets (R = W = 2, DW = 1).
const N: usize = 3;
/// The full node's disk.
const DISK_BYTES: u64 = 24 << 20;
/// Its disk once it gets space back.
const DISK_BYTES_AFTER: u64 = 512 << 20;
/// Free bytes under which the disk counts as full: less than one blob and its record.
const FULL_BELOW: u64 = 300 << 10;
/// One blob.
const BLOB_BYTES: usize = 256 << 10;
/// How long the disk may take to fill.
const FILL_LIMIT: Duration = Duration::from_secs(90);
/// Per-write timeout the writers ask for.
const WRITE_TIMEOUT_MS: u32 = 5_000;
/// How long the cluster may take to converge after the restart.
const CONVERGE: Duration = Duration::from_secs(60);
/// Each writer's pause between two writes once the disk is full: at most 50 writes a second
/// per writer, so that the full node has about as much to catch up on whatever the build's
/// speed. Unpaced, a release build's writers wrote about 3 500 blobs in the 5 s, and the full
/// node's share of them (over 200 MB) did not reach it within [`CONVERGE`].
const BEYOND_PAUSE: Duration = Duration::from_millis(20);

/// What the writers write until the disk is full: cart adds and big blobs.
const FILL_BUCKETS: [Bucket; 2] = [
    Bucket { name: "carts", kind: Kind::CartAdd, keys: 5 },
    Bucket { name: "blobs", kind: Kind::Blob(BLOB_BYTES), keys: 0 },
];

/// What they write once it is full: cart adds and 64 KiB blobs. The node appends into
/// segments it preallocated while it had room, so it keeps taking writes until those are
/// used up; 64 KiB blobs use them up within a second, and then every append fails. Bigger
/// blobs would leave the node with many big states to catch up on after the restart, which
/// today anti-entropy cannot do: the states of a partition's differing segments travel in one
/// `segmentEntries` answer, and with a dozen 256 KiB states that answer is over the message
/// limit ("Message has 426126 words, which is too large"), so the exchange fails every round
/// and those replicas never converge (a finding of this test, reported; not what it is after).
const BEYOND_BUCKETS: [Bucket; 2] = [
    Bucket { name: "carts", kind: Kind::CartAdd, keys: 5 },
    Bucket { name: "blobs", kind: Kind::Blob(64 << 10), keys: 0 },
];

/// One node's configuration file.
fn node_config(id: usize, addresses: &[String], data_dir: &std::path::Path) -> String {
    format!(
        "[node]\nid = \"n{node}\"\nlisten = \"{listen}\"\ndata_dir = \"{data}\"\nseeds = [\"{seed}\"]\n\
         [cluster]\ngossip_interval_ms = 200\n[security]\nmode = \"insecure\"\n\
         [buckets.carts]\nengine = \"log\"\nresolver = \"cart\"\nn = {N}\nr = 2\nw = 2\ndw = 1\n\
         [buckets.blobs]\nengine = \"log\"\nresolver = \"lww\"\nn = {N}\nr = 2\nw = 2\ndw = 1\n",
        node = id + 1,
        listen = addresses[id],
        data = data_dir.display(),
        seed = addresses[0],
    )
}

/// Fill one node's disk while every node takes writes; give it space back, kill and restart
/// it: writes through the other nodes were acknowledged all along, and the converged
/// cluster holds every acknowledged cart add and blob.
#[test]
fn a_full_disk_on_one_node_loses_no_acknowledged_write() {
    let started = Instant::now();
    let seed = workload::seed("full disk");
    let Some(disk) = Tmpfs::mount(DISK_BYTES) else { return };
    let full = (seed % NODES as u64) as usize;
    let beyond = Duration::from_secs(if workload::soak() { 60 } else { 5 });
    eprintln!(
        "{NODES} nodes, N = {N}, R = W = 2, DW = 1, log engine; n{} on a {} MiB tmpfs; {} KiB \
         blobs; writing {:.0} s past the full disk; binary {}",
        full + 1,
        DISK_BYTES >> 20,
        BLOB_BYTES >> 10,
        beyond.as_secs_f64(),
        common::binary().display()
    );

    // Processes are declared after the disk and the directory, so they die first.
    let dir = tempfile::tempdir().unwrap();
    let addresses: Vec<String> = (0..NODES).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let mut processes: Vec<Process> = (0..NODES)
        .map(|i| {
            let config = dir.path().join(format!("n{}.toml", i + 1));
            let data = if i == full {
                disk.path.join("data")
            } else {
                dir.path().join(format!("n{}", i + 1))
            };
            std::fs::write(&config, node_config(i, &addresses, &data)).unwrap();
            let mut process = Process::new(config);
            process.start();
            process
        })
        .collect();
    let all_up = || addresses.iter().all(|a| members_up(a) == NODES);
    wait_until("every node sees five members up and owning partitions", all_up);

    // Fill: cart adds and 256 KiB blobs through every node.
    let start_writers = |buckets: &[Bucket], round: u64, pause: Duration| {
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..NODES)
            .map(|node| {
                let plan = WriterPlan {
                    number: node + 1,
                    address: addresses[node].clone(),
                    buckets: buckets.to_vec(),
                    seed: workload::xorshift(
                        seed ^ round ^ (node as u64 + 1).wrapping_mul(0x9E37_79B9),
                    ),
                    timeout_ms: WRITE_TIMEOUT_MS,
                    pause,
                };
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || workload::writer(plan, stop))
            })
            .collect();
        (stop, writers)
    };
    let stop_writers =
        |(stop, writers): (Arc<AtomicBool>, Vec<std::thread::JoinHandle<History>>)| {
            stop.store(true, Ordering::Relaxed);
            let histories = writers.into_iter().map(|w| w.join().expect("a writer does not panic"));
            histories.collect::<Vec<History>>()
        };
    let filling_writers = start_writers(&FILL_BUCKETS, 1, Duration::ZERO);
    let filling = Instant::now();
    while disk.available_bytes() >= FULL_BELOW {
        assert!(
            filling.elapsed() < FILL_LIMIT,
            "n{}'s disk did not fill within {FILL_LIMIT:?} ({} bytes free)",
            full + 1,
            disk.available_bytes()
        );
        assert!(processes[full].is_running(), "n{} exited while its disk filled", full + 1);
        std::thread::sleep(Duration::from_millis(50));
    }
    let full_at = Instant::now();
    let mut histories = stop_writers(filling_writers);
    // What is left (less than a blob, but small writes would still fit) goes to a file of the
    // test's, so that from now on every append the node makes fails.
    let left = disk.available_bytes();
    let filler = disk.fill();
    eprintln!(
        "n{}'s disk is full after {:.1} s ({left} bytes were free, {filler} taken by a filler); \
         writing 64 KiB blobs on for {:.0} s",
        full + 1,
        filling.elapsed().as_secs_f64(),
        beyond.as_secs_f64()
    );

    // Beyond: cart adds and 64 KiB blobs, which the full node refuses and the others take.
    let beyond_writers = start_writers(&BEYOND_BUCKETS, 2, BEYOND_PAUSE);
    std::thread::sleep(beyond);
    let full_node_ran = processes[full].is_running();
    for (node, history) in stop_writers(beyond_writers).into_iter().enumerate() {
        histories[node].extend(history);
    }

    // The full node must really have missed writes it is a primary for (or the test tested
    // nothing): it holds none of the blobs written since it was full.
    let ring = workload::ring(&addresses[0]);
    let (missed, unreadable, owed) = missed_on(&addresses[full], &ring, &histories, full_at);
    eprintln!(
        "of the {owed} acknowledged blobs written since its disk was full that n{} is a primary \
         for, it holds {}, lacks {missed}, cannot read {unreadable}",
        full + 1,
        owed - missed - unreadable
    );
    assert!(
        owed > 0 && missed + unreadable > 0,
        "n{} missed no write while its disk was full ({owed} it should hold)",
        full + 1
    );

    // Space back, then kill -9 and restart the full node.
    disk.resize(DISK_BYTES_AFTER);
    processes[full].restart();
    wait_until("every node is up after the restart", all_up);

    let mut history = History::default();
    let mut served = Vec::new();
    let mut internal_through_others = 0;
    for (node, h) in histories.into_iter().enumerate() {
        let after = |outcome| {
            h.records().iter().filter(|r| r.invoked >= full_at && r.outcome == outcome).count()
        };
        let counts =
            (after(Outcome::Acknowledged), after(Outcome::Unknown), after(Outcome::Failed));
        eprintln!(
            "writes through n{} once the disk was full: {} acknowledged, {} unknown, {} failed",
            node + 1,
            counts.0,
            counts.1,
            counts.2
        );
        served.push(counts.0);
        let mut errors: std::collections::BTreeMap<String, usize> = Default::default();
        let mut internal = 0;
        for record in h.records().iter().filter(|r| r.invoked >= full_at) {
            if let Some(error) = &record.error {
                *errors.entry(error.chars().take(100).collect()).or_default() += 1;
                internal += usize::from(error.starts_with("internal"));
            }
        }
        internal_through_others += if node == full { 0 } else { internal };
        for (error, count) in errors {
            eprintln!("  {count} x {error}");
        }
        history.extend(h);
    }

    let converging = Instant::now();
    let (final_state, converged) = converge(&addresses, &history);
    let report = history.check(&final_state);
    eprint!("{report}");
    eprintln!(
        "{} writes, {} acknowledged, converged: {converged} in {:.1} s; {:.1} s in all",
        history.records().len(),
        report.acknowledged(),
        converging.elapsed().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    assert!(full_node_ran, "n{} exited with a full disk", full + 1);
    for (node, acknowledged) in served.iter().enumerate() {
        assert!(
            node == full || *acknowledged > 0,
            "no write through n{} was acknowledged once n{}'s disk was full",
            node + 1,
            full + 1
        );
    }
    // A write the full node cannot store is taken by another primary, or refused as
    // `unavailable` (nothing done), never failed with the full node's I/O error.
    assert_eq!(
        internal_through_others,
        0,
        "writes through the other nodes failed with internal errors once n{}'s disk was full",
        full + 1
    );
    for name in ["carts", "blobs"] {
        let acknowledged = report.buckets[name].acknowledged;
        assert!(acknowledged >= 20, "too few acknowledged writes in {name}:\n{report}");
    }
    assert_eq!(report.lost(), 0, "acknowledged writes lost:\n{report}");
    assert!(report.is_valid(), "the final state holds writes nobody made:\n{report}");
    assert!(converged, "the nodes did not converge within {CONVERGE:?}");
}

/// Wait until no node holds hints and the N primaries of every key agree (blobs too), and
/// carts read the same at R = N through every node; return the state read (blobs through the
/// first node only: reading 256 KiB blobs through five nodes would dominate the test's time)
/// and whether that happened in time.
fn converge(addresses: &[String], history: &History) -> (FinalState, bool) {
    let ring = workload::ring(&addresses[0]);
    let keys: Vec<(String, Vec<u8>)> = history.keys().into_iter().collect();
    let (carts, blobs): (Vec<_>, Vec<_>) = keys.iter().cloned().partition(|(b, _)| b == "carts");
    let start = Instant::now();
    let mut converged = false;
    while start.elapsed() < CONVERGE {
        let hints: Option<u64> = addresses.iter().map(|a| workload::hints_held(a)).sum();
        if hints == Some(0) && workload::primaries_agree(&ring, &keys, N) {
            let reads: Result<Vec<FinalState>, _> =
                addresses.iter().map(|a| workload::read_all(a, &carts, N as u8)).collect();
            if reads.is_ok_and(|reads| reads.iter().all(|r| r == &reads[0])) {
                converged = true;
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    if !converged {
        workload::print_unconverged(addresses, &ring, &keys, N);
    }
    let mut state = FinalState::new();
    for keys in [carts, blobs] {
        // Not converged, a read at R = N may fail: then what two replicas say.
        let read = workload::read_all(&addresses[0], &keys, N as u8).or_else(|e| {
            eprintln!("a read at R = {N} failed ({e}); reading at R = 2");
            workload::read_all(&addresses[0], &keys, 2)
        });
        state.extend(read.expect("the final state is readable at R = 2"));
    }
    (state, converged)
}

/// Of the acknowledged blobs written since `since` that the node at `address` is a primary
/// of: how many it does not hold, how many it cannot read (its engine failed), and how many
/// there are.
fn missed_on(
    address: &str,
    ring: &RingInfo,
    histories: &[History],
    since: Instant,
) -> (usize, usize, usize) {
    let owed: Vec<&Vec<u8>> = histories
        .iter()
        .flat_map(|h| h.records())
        .filter(|r| r.bucket == "blobs" && r.invoked >= since)
        .filter(|r| r.outcome == Outcome::Acknowledged)
        .filter(|r| ring.preference_addresses("blobs", &r.key).iter().take(N).any(|a| a == address))
        .map(|r| &r.key)
        .collect();
    let (missed, unreadable) = block_on(async {
        let client = Client::connect(address).await.expect("the full node answers");
        let (mut missed, mut unreadable) = (0, 0);
        for key in &owed {
            match client.replica_state("blobs", key).await {
                Ok(None) => missed += 1,
                Ok(Some(_)) => {}
                Err(_) => unreadable += 1,
            }
        }
        (missed, unreadable)
    });
    (missed, unreadable, owed.len())
}
