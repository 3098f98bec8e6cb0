//! Network partitions of real processes: five `cartwheel serve` processes, each in a network
//! namespace of its own, cut apart with nftables while writers write through every node.
//!
//! What it is after:
//! - **failure detection**: a cut-off node is down for the others, but nodes that still talk
//!   to each other never see each other as suspect or down, however many calls to the
//!   cut-off node time out meanwhile (a detector or a peer layer that blames the wrong peer,
//!   or a round stuck on an unreachable peer, shows up here as a healthy node marked down);
//! - **recovery**: after the heal every node sees every member up within three gossip
//!   intervals (these two are measured and printed on every run; what CI asserts of them is
//!   weaker, because they do not hold today: see each test's doc, and
//!   `CARTWHEEL_PARTITION_STRICT=1` below);
//! - **no acknowledged write is lost**: sloppy quorum takes writes on both sides of a cut,
//!   hints carry them over when it heals, anti-entropy and read repair do the rest; the
//!   history checker ([`common::history`]) says every acknowledged cart add and siblings put
//!   survived, and the replicas converge;
//! - **the checker can see a loss**: the 2|3 split also writes an `lww` bucket, which drops
//!   concurrent writes by contract, and the test requires the checker to report lost writes
//!   there (the negative control: a checker that never reports anything proves nothing).
//!
//! The network ([`common::netns`]): a bridge in a switch namespace, a namespace per node with
//! an address in a 10.213.X.0/24 chosen per run, and the test process on the same bridge.
//! A cut is nftables rules in the node namespaces that drop what arrives from the other side
//! (both ways), never the test's own traffic. Everything is removed when the test ends, also
//! when it fails. Where namespaces cannot be created (not root) the tests say they were
//! skipped and pass, unless `CARTWHEEL_REQUIRE_NETNS=1` (CI sets it where it can).
//!
//! Each test prints its seed (which node is cut off, which sides, the writers' key choices):
//! replay with `CARTWHEEL_TEST_SEED=<seed>`. `CARTWHEEL_SOAK=1` runs longer: every node is
//! cut off in turn for a minute, and three different splits of a minute.
//! `CARTWHEEL_PARTITION_STRICT=1` asserts the membership checks as stated above, in both
//! tests (.ci/run sets it wherever the namespace tests run). The two tests take turns (a lock): ten nodes at once would be too much for a
//! 2-core machine.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use cartwheel::client::{block_on, Client};

use common::history::{History, Report};
use common::netns::Network;
use common::workload::{self, Bucket, Kind, WriterPlan};
use common::{members_up, wait_until, Process};

/// Nodes in the cluster.
const NODES: usize = 5;
/// N of every bucket (R = W = 2).
const N: usize = 3;
/// Gossip interval of every node: with it, suspect after 5 silent rounds (1 s) and down
/// after 12 (2.4 s) in a 5-node cluster (`membership::Timing`).
const GOSSIP_INTERVAL_MS: u64 = 200;
/// With `CARTWHEEL_PARTITION_STRICT=1`, every node must see every member up within this
/// many gossip intervals of a heal.
const HEAL_ROUNDS: u64 = 3;
/// Without it, within this long (see the tests' docs for why).
const HEAL_LIMIT: Duration = Duration::from_secs(5);
/// The port every node listens on, at its own address (never one of 7401–7403).
const PORT: u16 = 7600;
/// How often the test asks the nodes for their view during a cut.
const POLL: Duration = Duration::from_millis(250);
/// Writes before the first cut.
const WARM_UP: Duration = Duration::from_secs(2);
/// Writes after a heal, before the next cut or the end.
const AFTER_HEAL: Duration = Duration::from_secs(2);
/// Per-write timeout the writers ask for.
const WRITE_TIMEOUT_MS: u32 = 2_000;
/// How long the cluster may take to converge after the writers stopped.
const CONVERGE: Duration = Duration::from_secs(40);

/// The buckets of the isolation test.
const ISOLATION_BUCKETS: [Bucket; 1] = [Bucket { name: "carts", kind: Kind::CartAdd, keys: 5 }];

/// The buckets of the split test: carts and siblings must lose nothing, lww must lose. With
/// 16 keys some have all three primaries on the three-node side, so the two-node side takes
/// their writes as hints only (sloppy quorum), and only hinted handoff brings them home.
const SPLIT_BUCKETS: [Bucket; 3] = [
    Bucket { name: "carts", kind: Kind::CartAdd, keys: 16 },
    Bucket { name: "siblings", kind: Kind::ContextPut, keys: 16 },
    Bucket { name: "lww", kind: Kind::LwwPut, keys: 2 },
];

/// Rounds of the lww burst at the end of the split test (every writer puts to one lww key
/// at once, per key and round).
const LWW_BURST_ROUNDS: usize = 3;

/// Whether the tests assert the strict membership checks ([`Checks::Strict`],
/// `CARTWHEEL_PARTITION_STRICT=1`).
fn strict() -> bool {
    std::env::var("CARTWHEEL_PARTITION_STRICT").is_ok_and(|v| v == "1")
}

/// One test at a time (see the module docs).
static SERIAL: Mutex<()> = Mutex::new(());

/// One node's configuration file.
fn node_config(
    id: usize,
    network: &Network,
    buckets: &[Bucket],
    data_dir: &std::path::Path,
) -> String {
    let mut text = format!(
        "[node]\nid = \"n{id}\"\nlisten = \"{listen}:{PORT}\"\ndata_dir = \"{data}\"\n\
         seeds = [\"{seed}:{PORT}\"]\n[cluster]\ngossip_interval_ms = {GOSSIP_INTERVAL_MS}\n\
         [security]\nmode = \"insecure\"\n",
        id = id + 1,
        listen = network.address(id),
        data = data_dir.display(),
        seed = network.address(0),
    );
    for bucket in buckets {
        let resolver = match bucket.kind {
            Kind::CartAdd => "cart",
            Kind::ContextPut | Kind::BlindPut => "siblings",
            Kind::LwwPut => "lww",
            other => panic!("no bucket for {other:?} here"),
        };
        text.push_str(&format!(
            "[buckets.{}]\nengine = \"log\"\nresolver = \"{resolver}\"\nn = {N}\nr = 2\nw = 2\ndw = 0\n",
            bucket.name
        ));
        if resolver == "siblings" {
            text.push_str("siblings_soft_max = 5000\nsiblings_hard_max = 5000\n");
        }
    }
    text
}

/// Five nodes, each in its namespace. (Fields drop in order: the processes die before their
/// network and their directory go.)
struct Cluster {
    _processes: Vec<Process>,
    addresses: Vec<String>,
    network: Network,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// `None` if this machine cannot make the network (the test is skipped).
    fn start(tag: char, buckets: &[Bucket]) -> Option<Self> {
        let network = Network::create(tag, NODES)?;
        let dir = tempfile::tempdir().unwrap();
        let addresses: Vec<String> =
            (0..NODES).map(|i| format!("{}:{PORT}", network.address(i))).collect();
        let processes = (0..NODES)
            .map(|i| {
                let config = dir.path().join(format!("n{}.toml", i + 1));
                let data = dir.path().join(format!("n{}", i + 1));
                std::fs::write(&config, node_config(i, &network, buckets, &data)).unwrap();
                let mut process = Process::in_namespace(config, network.namespace(i));
                process.start();
                process
            })
            .collect();
        let cluster = Self { _processes: processes, addresses, network, _dir: dir };
        cluster.wait_all_up("every node sees five members up and owning partitions");
        Some(cluster)
    }

    fn wait_all_up(&self, what: &str) {
        wait_until(what, || self.all_up());
    }

    fn all_up(&self) -> bool {
        self.addresses.iter().all(|a| members_up(a) == NODES)
    }

    fn index_of(&self, address: &str) -> Option<usize> {
        self.addresses.iter().position(|a| a == address)
    }

    fn print_setup(&self, test: &str, cut: Duration) {
        eprintln!(
            "{test}: {NODES} nodes in network namespaces on {}, N = {N}, R = W = 2, gossip \
             every {GOSSIP_INTERVAL_MS} ms, cuts of {:.0} s, binary {}",
            self.network.subnet(),
            cut.as_secs_f64(),
            common::binary().display()
        );
    }
}

/// What the test saw during one cut and its heal.
#[derive(Default)]
struct CutReport {
    /// "t: node a sees node b as suspect", for nodes on the same side.
    wrongly_suspect: Vec<String>,
    /// "t: node a sees node b as down" (or anything but up and suspect), for nodes on the
    /// same side.
    wrongly_down: Vec<String>,
    /// Status calls to a node that did not answer.
    unanswered: usize,
    /// Status polls made.
    polls: usize,
    /// When each node across the cut was first seen down by every node of the other side.
    seen_down_after: Option<Duration>,
    /// From the heal until every node saw every member up.
    heal: Duration,
    /// From the heal until each node first saw every member up.
    heal_per_node: Vec<Option<Duration>>,
}

/// Every member's address and state as the node at `address` sees it.
fn member_states(address: &str) -> Option<Vec<(String, String)>> {
    block_on(async {
        let client = Client::connect(address).await.ok()?;
        let status = tokio::time::timeout(Duration::from_secs(2), client.status()).await.ok()?;
        Some(status.ok()?.members.into_iter().map(|m| (m.address, m.state)).collect())
    })
}

/// Cut the cluster into `sides` for `duration`, polling every node's view: nodes on the same
/// side must see each other up all along. Then heal and time how long until every node sees
/// every member up.
fn cut(cluster: &Cluster, sides: &[&[usize]], duration: Duration) -> CutReport {
    let side_of = |node: usize| sides.iter().position(|s| s.contains(&node));
    let mut report = CutReport::default();
    cluster.network.partition(sides);
    let start = Instant::now();
    let mut next = start;
    while start.elapsed() < duration {
        let mut across_down = true;
        for node in 0..NODES {
            report.polls += 1;
            let Some(states) = member_states(&cluster.addresses[node]) else {
                report.unanswered += 1;
                across_down = false;
                continue;
            };
            for (address, state) in states {
                let Some(other) = cluster.index_of(&address) else { continue };
                if other == node {
                    continue;
                }
                if side_of(other) == side_of(node) && state != "up" {
                    let line = format!(
                        "{:.2} s into the cut: n{} sees n{} as {state}",
                        start.elapsed().as_secs_f64(),
                        node + 1,
                        other + 1
                    );
                    match state.as_str() {
                        "suspect" => report.wrongly_suspect.push(line),
                        _ => report.wrongly_down.push(line),
                    }
                }
                if side_of(other) != side_of(node) && state != "down" {
                    across_down = false;
                }
            }
        }
        if across_down && report.seen_down_after.is_none() {
            report.seen_down_after = Some(start.elapsed());
        }
        next += POLL;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    cluster.network.heal();
    let healed = Instant::now();
    report.heal_per_node = vec![None; NODES];
    loop {
        let mut all = true;
        for (node, address) in cluster.addresses.iter().enumerate() {
            let up = members_up(address) == NODES;
            if up && report.heal_per_node[node].is_none() {
                report.heal_per_node[node] = Some(healed.elapsed());
            }
            all &= up;
        }
        if all {
            break;
        }
        assert!(healed.elapsed() < common::WAIT, "the cluster did not come back after the heal");
        std::thread::sleep(Duration::from_millis(10));
    }
    report.heal = healed.elapsed();
    report
}

/// The writers' plans, one per node, and their stop flag.
fn start_writers(
    cluster: &Cluster,
    buckets: &[Bucket],
    seed: u64,
) -> (Arc<AtomicBool>, Vec<WriterPlan>) {
    let plans = (0..NODES)
        .map(|node| WriterPlan {
            number: node + 1,
            address: cluster.addresses[node].clone(),
            buckets: buckets.to_vec(),
            seed: workload::xorshift(seed ^ (node as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            timeout_ms: WRITE_TIMEOUT_MS,
            pause: Duration::ZERO,
        })
        .collect();
    (Arc::new(AtomicBool::new(false)), plans)
}

/// After the writers stopped: every node up, converged, and the history checked. Prints the
/// report; returns it with whether the cluster converged.
fn finish(cluster: &Cluster, history: &History) -> (Report, bool) {
    cluster.wait_all_up("every node is up after the last heal");
    let ring = workload::ring(&cluster.addresses[0]);
    let keys: Vec<(String, Vec<u8>)> = history.keys().into_iter().collect();
    let converging = Instant::now();
    let (final_state, converged) =
        workload::converge(&cluster.addresses, &ring, &keys, N, CONVERGE);
    let report = history.check(&final_state);
    eprint!("{report}");
    eprintln!(
        "{} writes, {} acknowledged, converged: {converged} (in {:.1} s)",
        history.records().len(),
        report.acknowledged(),
        converging.elapsed().as_secs_f64()
    );
    (report, converged)
}

fn print_cut(what: &str, report: &CutReport) {
    let down =
        report.seen_down_after.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64()));
    eprintln!(
        "{what}: {} polls ({} unanswered), nodes across the cut seen down after {down}; on the \
         same side {} views of a node as suspect and {} as down; after the heal every member was \
         up in {} ms ({HEAL_ROUNDS} gossip intervals: {} ms)",
        report.polls,
        report.unanswered,
        report.wrongly_suspect.len(),
        report.wrongly_down.len(),
        report.heal.as_millis(),
        HEAL_ROUNDS * GOSSIP_INTERVAL_MS
    );
    let per_node: Vec<String> = (report.heal_per_node.iter().enumerate())
        .map(|(node, t)| format!("n{}: {} ms", node + 1, t.map_or(0, |t| t.as_millis())))
        .collect();
    eprintln!("  each node first saw every member up after the heal at: {}", per_node.join(", "));
    for line in report.wrongly_down.iter().chain(&report.wrongly_suspect).take(20) {
        eprintln!("  {line}");
    }
}

/// What is asserted of a cut.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Checks {
    /// Every member is up again within [`HEAL_LIMIT`] of the heal.
    Recovery,
    /// That, and nodes on the same side never see each other as down.
    NeverDown,
    /// Nodes on the same side never see each other as suspect or down, and every member is
    /// up within [`HEAL_ROUNDS`] gossip intervals of the heal.
    Strict,
}

/// Assert `checks` of one cut.
fn assert_cut(what: &str, report: &CutReport, checks: Checks) {
    let heal_limit = match checks {
        Checks::Strict => Duration::from_millis(HEAL_ROUNDS * GOSSIP_INTERVAL_MS),
        Checks::Recovery | Checks::NeverDown => HEAL_LIMIT,
    };
    assert!(
        checks == Checks::Recovery || report.wrongly_down.is_empty(),
        "{what}: nodes on the same side saw each other as down:\n{}",
        report.wrongly_down.join("\n")
    );
    assert!(
        checks != Checks::Strict || report.wrongly_suspect.is_empty(),
        "{what}: nodes on the same side saw each other as suspect:\n{}",
        report.wrongly_suspect.join("\n")
    );
    assert!(
        report.heal <= heal_limit,
        "{what}: every member was up only {} ms after the heal, more than {} ms",
        report.heal.as_millis(),
        heal_limit.as_millis()
    );
}

/// One node cut off for 15 s while every node takes cart adds: no acknowledged cart add is
/// lost, the replicas converge, the four others never see each other as down, and every
/// member is up again soon after the heal.
///
/// The stricter checks (the four never see each other even as suspect; every member is up
/// within three gossip intervals of the heal) are measured and printed on every run and
/// asserted with `CARTWHEEL_PARTITION_STRICT=1`. Today they fail in about one run in four on
/// a loaded 2-core machine: a healthy node is marked suspect for one poll when one call to it
/// misses its deadline (a gossip exchange has one gossip interval), and after the heal the cut
/// off node's connection attempts made in the last second before it (its writes target the
/// primaries it sees down, having no fallback) time out and mark healed peers suspect again,
/// so that every member is up at once only after about a second.
#[test]
fn a_node_cut_off_is_down_for_the_others_only_and_loses_no_cart_add() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let seed = workload::seed("isolation");
    let cut_for = Duration::from_secs(if workload::soak() { 60 } else { 15 });
    let Some(cluster) = Cluster::start('a', &ISOLATION_BUCKETS) else { return };
    cluster.print_setup("isolation", cut_for);
    let (stop, plans) = start_writers(&cluster, &ISOLATION_BUCKETS, seed);
    let writers: Vec<_> = plans
        .into_iter()
        .map(|plan| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || workload::writer(plan, stop))
        })
        .collect();

    std::thread::sleep(WARM_UP);
    let first = (seed % NODES as u64) as usize;
    let rounds = if workload::soak() { NODES } else { 1 };
    let mut cuts = Vec::new();
    for round in 0..rounds {
        let isolated = (first + round) % NODES;
        let others: Vec<usize> = (0..NODES).filter(|&n| n != isolated).collect();
        eprintln!("cut off n{} for {:.0} s", isolated + 1, cut_for.as_secs_f64());
        let report = cut(&cluster, &[&[isolated], &others], cut_for);
        let what = format!("n{} cut off", isolated + 1);
        print_cut(&what, &report);
        cuts.push((what, report));
        std::thread::sleep(AFTER_HEAL);
    }
    stop.store(true, Ordering::Relaxed);
    let mut history = History::default();
    for writer in writers {
        history.extend(writer.join().expect("a writer thread does not panic"));
    }

    let (report, converged) = finish(&cluster, &history);
    eprintln!("isolation: {:.1} s in all", started.elapsed().as_secs_f64());
    assert!(
        report.buckets["carts"].acknowledged >= 50,
        "too few acknowledged cart adds:\n{report}"
    );
    assert_eq!(report.lost(), 0, "acknowledged writes lost:\n{report}");
    assert!(report.is_valid(), "the final state holds writes nobody made:\n{report}");
    assert!(converged, "the nodes did not converge within {CONVERGE:?}");
    let checks = if strict() { Checks::Strict } else { Checks::NeverDown };
    for (what, cut) in &cuts {
        assert_cut(what, cut, checks);
    }
}

/// A 2|3 split with writes through every node on both sides, healed: no acknowledged cart add
/// or siblings put is lost, the replicas converge, and the lww bucket, written concurrently
/// through several nodes, does lose acknowledged puts and the checker reports them.
///
/// The membership checks (nodes on one side always up for each other, every member up within
/// three gossip intervals of the heal) are measured and printed here, and asserted only with
/// `CARTWHEEL_PARTITION_STRICT=1` (CI asserts only that every member is up again within
/// [`HEAL_LIMIT`]): today they fail after almost every split. On
/// the two-node side a node gossips with one of its four peers per round, three of them
/// unreachable, so its only neighbour's heartbeat often goes unrefreshed for the five rounds
/// that make it suspect (successful replicate calls between the two do not count as a sign of
/// life there); and the writes that side takes send replicate calls to primaries it sees down
/// when it has no fallback left for them, so when the cut heals, connection attempts made in
/// the last second before it time out and mark the healed peers suspect, then down, for about
/// a second after gossip saw them up again.
#[test]
fn a_split_loses_no_cart_or_sibling_write_and_the_checker_catches_lww_losses() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let started = Instant::now();
    let seed = workload::seed("split");
    let cut_for = Duration::from_secs(if workload::soak() { 60 } else { 10 });
    let Some(cluster) = Cluster::start('b', &SPLIT_BUCKETS) else { return };
    cluster.print_setup("split", cut_for);
    let (stop, plans) = start_writers(&cluster, &SPLIT_BUCKETS, seed);
    let barrier = Arc::new(Barrier::new(NODES));
    let writers: Vec<_> = plans
        .into_iter()
        .map(|plan| {
            let (stop, barrier) = (Arc::clone(&stop), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let mut history = workload::writer(plan.clone(), stop);
                let lww = SPLIT_BUCKETS[2];
                workload::lww_burst(&plan, lww, LWW_BURST_ROUNDS, &barrier, &mut history);
                history
            })
        })
        .collect();

    std::thread::sleep(WARM_UP);
    let rounds = if workload::soak() { 3 } else { 1 };
    let mut cuts = Vec::new();
    let mut random = seed;
    for _ in 0..rounds {
        // Two nodes on one side, chosen by the seed.
        random = workload::xorshift(random | 1);
        let a = (random % NODES as u64) as usize;
        let b = (a + 1 + (random >> 32) as usize % (NODES - 1)) % NODES;
        let small = [a.min(b), a.max(b)];
        let large: Vec<usize> = (0..NODES).filter(|n| !small.contains(n)).collect();
        let what = format!(
            "split {{n{}, n{}}} | {{{}}}",
            small[0] + 1,
            small[1] + 1,
            large.iter().map(|n| format!("n{}", n + 1)).collect::<Vec<_>>().join(", ")
        );
        eprintln!("{what} for {:.0} s", cut_for.as_secs_f64());
        let report = cut(&cluster, &[&small, &large], cut_for);
        print_cut(&what, &report);
        cuts.push((what, report));
        std::thread::sleep(AFTER_HEAL);
    }
    stop.store(true, Ordering::Relaxed);
    let mut history = History::default();
    for writer in writers {
        history.extend(writer.join().expect("a writer thread does not panic"));
    }

    let (report, converged) = finish(&cluster, &history);
    eprintln!("split: {:.1} s in all", started.elapsed().as_secs_f64());
    for name in ["carts", "siblings"] {
        let bucket = &report.buckets[name];
        assert!(bucket.acknowledged >= 30, "too few acknowledged writes in {name}:\n{report}");
        assert_eq!(bucket.lost, 0, "acknowledged writes lost in {name}:\n{report}");
    }
    assert_eq!(report.unexpected(), 0, "the final state holds writes nobody made:\n{report}");
    assert!(
        report.buckets["lww"].lost > 0,
        "negative control: lww drops concurrent acknowledged puts by contract, and the checker \
         reported none:\n{report}"
    );
    assert!(converged, "the nodes did not converge within {CONVERGE:?}");
    let checks = if strict() { Checks::Strict } else { Checks::Recovery };
    for (what, cut) in &cuts {
        assert_cut(what, cut, checks);
    }
}
