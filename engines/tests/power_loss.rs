//! Power loss, simulated: while a workload of puts, overwrites, deletes and syncs runs, the
//! engine's files are copied as a power loss would leave them at that instant (only what an
//! fdatasync covered: `durable_image`), and the copy is opened as after a reboot.
//!
//! The copy must hold exactly the state after some prefix of the workload that includes
//! every operation a completed `sync` covered: no synced write lost, nothing that was never
//! written, no hole in the middle. This is the contract `dw >= 1` acknowledgements rest on.
//!
//! Chosen simulation and what it cannot see: the image keeps every byte before the last
//! fdatasync and zeros after it (the log is append-only, so unsynced data is exactly a tail).
//! It does not model a disk that reorders or tears writes *inside* the synced part, nor a
//! file system that loses a directory entry that was fsynced (torn tails and flipped bits
//! are engines/tests/crash.rs). The btree engine writes pages in place and has no such image;
//! its crash behaviour is covered by crash.rs and by kill -9 tests only.
//!
//! Replay a failure with `CARTWHEEL_POWER_SEED=<seed>` (printed at the start).

use std::collections::BTreeMap;
use std::path::Path;

use cartwheel_engines::{EngineKind, EngineOptions, StorageEngine};

/// Operations in one run.
const OPS: usize = 3_000;
/// Images taken per run (at random points).
const IMAGES: usize = 40;

#[derive(Clone, Debug)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
    Sync,
}

/// SplitMix64: a seeded sequence, so a run can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    std::env::var("CARTWHEEL_POWER_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
            as u64
    })
}

fn workload(rng: &mut Rng) -> Vec<Op> {
    (0..OPS)
        .map(|i| match rng.below(20) {
            0..=1 => Op::Sync,
            2..=3 => Op::Delete(format!("key-{:03}", rng.below(64)).into_bytes()),
            _ => {
                let key = format!("key-{:03}", rng.below(64)).into_bytes();
                // Values of varied size, naming their step: every overwrite is distinct.
                let len = 16 + rng.below(2_000) as usize;
                let mut value = format!("step {i} ").into_bytes();
                value.resize(len, b'a' + (i % 26) as u8);
                Op::Put(key, value)
            }
        })
        .collect()
}

fn contents(engine: &dyn StorageEngine) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut all = BTreeMap::new();
    engine
        .scan_prefix(b"", &mut |key, value| {
            all.insert(key.to_vec(), value.to_vec());
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    all
}

/// Run the workload on `kind`, taking images at random points, and check each.
fn power_loss(kind: EngineKind, image: fn(&dyn std::any::Any, &Path)) {
    let seed = seed();
    eprintln!("{kind}: CARTWHEEL_POWER_SEED={seed}");
    let mut rng = Rng(seed);
    let ops = workload(&mut rng);
    let mut image_at: Vec<usize> = (0..IMAGES).map(|_| rng.below(OPS as u64) as usize).collect();
    image_at.sort_unstable();

    let dir = tempfile::tempdir().unwrap();
    let mut options = EngineOptions::default();
    // Small segments: rolls (seal, fdatasync, new segment) happen often. A long flush
    // interval: what is not synced by the workload mostly stays unsynced.
    options.segment_bytes_max = 256 << 10;
    options.snapshot_log_bytes = 512 << 10;
    options.flush_interval_ms = 1_000;
    let (engine, any) = open(kind, dir.path(), &options);
    // The state after each prefix, and the prefix the last completed sync covered.
    let mut state = BTreeMap::new();
    let mut states = vec![state.clone()];
    let mut synced_prefix = 0;
    let mut images = image_at.into_iter().peekable();
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Put(key, value) => {
                engine.put(key, value).unwrap();
                state.insert(key.clone(), value.clone());
            }
            Op::Delete(key) => {
                engine.delete(key).unwrap();
                state.remove(key);
            }
            Op::Sync => {
                engine.sync().unwrap();
                synced_prefix = i + 1;
            }
        }
        states.push(state.clone());
        while images.next_if(|&at| at == i).is_some() {
            let copy = tempfile::tempdir().unwrap();
            image(any.as_ref(), copy.path());
            let reopened = cartwheel_engines::open(kind, copy.path(), &options)
                .unwrap_or_else(|e| panic!("{kind}: the image after op {i} does not open: {e}"));
            let found = contents(reopened.as_ref());
            let prefix = (synced_prefix..=i + 1).rev().find(|&p| states[p] == found);
            assert!(
                prefix.is_some(),
                "{kind} (seed {seed}): the image after op {i} is not the state of any prefix \
                 from the last sync ({synced_prefix}) on: a synced write was lost, or the \
                 image holds what no prefix does"
            );
        }
    }
}

type Opened = (std::sync::Arc<dyn StorageEngine>, std::sync::Arc<dyn std::any::Any + Send + Sync>);

fn open(kind: EngineKind, dir: &Path, options: &EngineOptions) -> Opened {
    match kind {
        EngineKind::Log => {
            let engine =
                std::sync::Arc::new(cartwheel_engines::log::LogEngine::open(dir, options).unwrap());
            (engine.clone(), engine)
        }
        EngineKind::Buffer => {
            let engine = std::sync::Arc::new(
                cartwheel_engines::buffer::BufferEngine::open(dir, options).unwrap(),
            );
            (engine.clone(), engine)
        }
        other => panic!("no durable image for {other}"),
    }
}

#[test]
fn log_keeps_every_synced_write_through_a_power_loss() {
    power_loss(EngineKind::Log, |any, dest| {
        let engine = any.downcast_ref::<cartwheel_engines::log::LogEngine>().unwrap();
        engine.durable_image(dest).unwrap();
    });
}

#[test]
fn buffer_keeps_every_synced_write_through_a_power_loss() {
    power_loss(EngineKind::Buffer, |any, dest| {
        let engine = any.downcast_ref::<cartwheel_engines::buffer::BufferEngine>().unwrap();
        engine.durable_image(dest).unwrap();
    });
}
