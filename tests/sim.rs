//! The seeded cluster simulation (src/sim): its checks, each a test that fails when the
//! property breaks. A failing seed says how to replay it.
//!
//! - `CARTWHEEL_SIM_SEED=S cargo test --test sim` runs the seeded checks with seed S only.
//! - `CARTWHEEL_SIM_SEEDS=K cargo test --release --test sim faults` runs the fault check
//!   with seeds 1..=K: the long run (docs/BENCHMARKS.md says how many seeds a minute).

use cartwheel::sim::{self, SimConfig};

/// The seeds to run: `CARTWHEEL_SIM_SEED`, or 1..=`CARTWHEEL_SIM_SEEDS`, or 1..=`default`.
fn seeds(default: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("CARTWHEEL_SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count = std::env::var("CARTWHEEL_SIM_SEEDS").ok().and_then(|s| s.parse().ok());
    (1..=count.unwrap_or(default)).collect()
}

fn replay(seed: u64, nodes: usize) -> String {
    format!(
        "replay with CARTWHEEL_SIM_SEED={seed} cargo test --test sim, or \
         cartwheel sim --nodes {nodes} --seed {seed}"
    )
}

/// 100 nodes with one bucket and Q = 256 (more partitions than nodes).
fn hundred_nodes(seed: u64) -> SimConfig {
    let mut config = SimConfig::new(100, seed);
    config.config.partitions = 256;
    config.config.buckets.retain(|name, _| name == "carts");
    config
}

/// 100 nodes that know one seed converge (every node sees every node, none down, one ring)
/// within 3 log2 N rounds, and then see no false down while nothing fails.
#[test]
fn gossip_views_converge_in_log_n_rounds() {
    for seed in seeds(1) {
        let figures = sim::run(sim::gossip_convergence(hundred_nodes(seed), 100, 20));
        eprintln!("seed {seed}: {figures}");
        let bound = (3.0 * 100f64.log2()).ceil() as u64;
        let rounds =
            figures.rounds.unwrap_or_else(|| panic!("no convergence; {}", replay(seed, 100)));
        assert!(rounds <= bound, "{rounds} rounds, over {bound}; {}", replay(seed, 100));
        assert_eq!(figures.unstable_rounds, 0, "false downs; {}", replay(seed, 100));
    }
}

/// The same seed gives the same run: 100 nodes' gossip and a fault run twice, figure for
/// figure, event for event.
#[test]
fn the_same_seed_gives_the_same_run() {
    let gossip = || sim::run(sim::gossip_convergence(hundred_nodes(7), 100, 0));
    assert_eq!(gossip(), gossip());
    let faults = || sim::run(sim::faults(SimConfig::new(5, 7), 3, 3_000));
    let (a, b) = (faults(), faults());
    assert_eq!(a.events, b.events);
    assert_eq!(a, b);
    assert!(a.acknowledged > 100, "{a}");
}

/// A join moves about Q/(S+1) partitions: at most 1.1 times that, and at least one.
#[test]
fn a_join_moves_a_fair_share_of_partitions() {
    for (nodes, partitions) in [(4, 64), (6, 64), (9, 128)] {
        let mut config = SimConfig::new(nodes, 3);
        config.config.partitions = partitions;
        let figures = sim::run(sim::join_movement(config, 200));
        eprintln!("{figures}");
        assert!(figures.converged, "{figures}");
        assert!(figures.moved >= 1, "{figures}");
        assert!(figures.moved as f64 <= 1.1 * figures.fair_share(), "{figures}");
    }
}

/// Under random crashes (kill -9: unsynced tails lost), restarts, partitions and message
/// loss, no acknowledged cart add is lost, and after the heal every cart's primaries hold
/// equal states, no other node keeps a copy, and no hint is left.
#[test]
fn faults_lose_no_acknowledged_cart_add() {
    for seed in seeds(3) {
        let figures = sim::run(sim::faults(SimConfig::new(5, seed), 5, 10_000));
        eprintln!("seed {seed}: {figures}");
        let events = figures.events.len();
        let tail = figures.events[events.saturating_sub(40)..].join("\n");
        assert!(
            figures.lost.is_empty(),
            "lost: {:?}\n{tail}\n{}",
            &figures.lost[..figures.lost.len().min(10)],
            replay(seed, 5)
        );
        assert!(figures.converged, "no convergence after the heal\n{tail}\n{}", replay(seed, 5));
        assert!(
            figures.acknowledged > 500,
            "too few acknowledged adds to mean anything: {figures}"
        );
    }
}

/// A node that loses its disk comes back empty; anti-entropy and read repair give every key
/// N equal replicas again.
#[test]
fn a_lost_disk_is_rebuilt_to_n_replicas() {
    for seed in seeds(1) {
        let figures = sim::run(sim::replica_recovery(SimConfig::new(5, seed), 50, 600));
        eprintln!("seed {seed}: {figures}");
        assert!(figures.short_after_loss > 0, "the loss should leave keys short: {figures}");
        assert!(figures.rounds.is_some(), "{figures}; {}", replay(seed, 5));
    }
}

/// One node cut off from the others for 15 s (150 rounds of 100 ms): the others never see
/// each other down, and within 3 rounds of the heal every node sees every node up.
#[test]
fn isolating_a_node_marks_no_healthy_node_down() {
    for seed in seeds(1) {
        for nodes in [3, 5] {
            let figures = sim::run(sim::isolation(SimConfig::new(nodes, seed), 150, 100));
            eprintln!("seed {seed}: {figures}");
            assert_eq!(figures.false_down_rounds, 0, "{figures}; {}", replay(seed, nodes));
            let rounds = figures.rounds_to_all_up.unwrap_or(u64::MAX);
            assert!(rounds <= 3, "{figures}; {}", replay(seed, nodes));
        }
    }
}

/// Deletes end without zombies: with a primary down through the deletes (and hints
/// refused, so it can learn of them only from its peers), no tombstone is collected while
/// it is down, none of its old values comes back after it restarts, and afterwards every
/// node's storage of every deleted key is reclaimed. Collecting on age alone fails this.
#[test]
fn tombstones_are_collected_without_resurrecting_keys() {
    for seed in seeds(2) {
        let figures = sim::run(sim::tombstone_collection(SimConfig::new(5, seed), 40, 40, 600));
        eprintln!("seed {seed}: {figures}");
        assert_eq!(figures.deleted, 80, "{figures}; {}", replay(seed, 5));
        assert_eq!(figures.collected_while_down, 0, "{figures}; {}", replay(seed, 5));
        assert_eq!(figures.resurrected, 0, "{figures}; {}", replay(seed, 5));
        assert!(figures.reclaimed_rounds.is_some(), "{figures}; {}", replay(seed, 5));
    }
}
