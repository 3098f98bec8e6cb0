//! Anti-entropy cost with trees kept up to date: two replicas of one bucket (Q = 64
//! partitions, 1,000,000 keys by default: `CARTWHEEL_BENCH_KEYS`), compared partition by
//! partition the way `Cluster::exchange_partition` does it, with the network taken out:
//! both sides' leaves from their trees, the answering side's entries of the differing
//! segments (`fetch_many` of the keys its tree lists, as `segmentEntries` does), a merge of
//! each entry whose hash differs, and the comparing side's differing states sent back
//! (merged into the other store).
//!
//! Measured for 0, 1 and 1 000 keys that differ (fresh differences made before each
//! iteration, outside the timing): the time of one sweep over all 64 partitions, and the
//! values read by both engines during it (printed: criterion records no counts). For
//! comparison, what each exchange cost before trees were kept: rebuilding the leaves by a
//! scan of every partition (every value read), and the one-off build of all 64 trees.
//!
//! The engines are the memory engine behind a counter of values read; the stores scan on
//! the calling thread (no pacing: the build figure is the raw cost, the node paces builds
//! at `TREE_BUILD_KEYS_PER_SECOND`).
//!
//! Run: `cargo bench --bench anti_entropy -- --warm-up-time 1 --measurement-time 5`.
//! The figures and the command that produced them are in `docs/BENCHMARKS.md`.

// `criterion_group!`-style functions and the adapter types need no docs.
#![allow(missing_docs)]

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartwheel::cluster::anti_entropy::{differing, entry_hash, leaves};
use cartwheel::config::{BucketConfig, Config};
use cartwheel::store::Store;
use cartwheel_engines::memory::MemoryEngine;
use cartwheel_engines::{EngineError, EngineKind, EngineStats, StorageEngine};
use cartwheel_resolvers::{HybridClock, ResolverKind, Write};
use criterion::Criterion;
use futures::executor::block_on;

const BUCKET: &str = "b";
const PARTITIONS: u16 = 64;
const VALUE_BYTES: usize = 100;

fn key_count() -> u64 {
    std::env::var("CARTWHEEL_BENCH_KEYS").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000)
}

/// The memory engine, counting the values it hands out (gets that found one, scan visits).
#[derive(Debug, Default)]
struct Counted {
    inner: MemoryEngine,
    reads: AtomicU64,
}

impl StorageEngine for Counted {
    fn kind(&self) -> EngineKind {
        self.inner.kind()
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let value = self.inner.get(key)?;
        if value.is_some() {
            self.reads.fetch_add(1, Ordering::Relaxed);
        }
        Ok(value)
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        self.inner.put(key, value)
    }
    fn delete(&self, key: &[u8]) -> Result<(), EngineError> {
        self.inner.delete(key)
    }
    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), EngineError> {
        self.inner.scan_prefix(prefix, &mut |key, value| {
            self.reads.fetch_add(1, Ordering::Relaxed);
            visit(key, value)
        })
    }
    fn sync(&self) -> Result<(), EngineError> {
        Ok(())
    }
    fn is_durable(&self) -> bool {
        false
    }
    fn stats(&self) -> EngineStats {
        self.inner.stats()
    }
}

struct Replica {
    store: Store,
    engine: Arc<Counted>,
}

impl Replica {
    fn new(seed: &str) -> Self {
        let mut config = Config::embedded();
        config.partitions = u32::from(PARTITIONS);
        config.buckets.clear();
        config
            .buckets
            .insert(BUCKET.into(), BucketConfig::new(EngineKind::Memory, ResolverKind::Lww));
        let engine = Arc::new(Counted::default());
        let shared = Arc::clone(&engine);
        let open =
            move |_: &str, _: &BucketConfig| Ok(Arc::clone(&shared) as Arc<dyn StorageEngine>);
        let actors = cartwheel::actors::Actors::with_seed(seed, 1);
        let store = Store::with_engines(&config, actors, HybridClock::new(), open)
            .expect("memory engines open")
            .scan_on_calling_thread();
        Self { store, engine }
    }

    fn reads(&self) -> u64 {
        self.engine.reads.load(Ordering::Relaxed)
    }
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:020}").into_bytes()
}

/// One exchange of `partition`: `a` compares, `b` answers (as `Cluster::exchange_partition`);
/// the states moved either way.
fn exchange(a: &Store, b: &Store, partition: u16) -> usize {
    let ours = block_on(a.tree_leaves(BUCKET, partition)).unwrap();
    let theirs = block_on(b.tree_leaves(BUCKET, partition)).unwrap();
    let segments = differing(&ours, &theirs);
    if segments.is_empty() {
        return 0;
    }
    // The answering side: its tree lists the segments' keys; only their values are read.
    let keys = b.tree_hashes(BUCKET, partition, &segments).unwrap().unwrap_or_default();
    let keys = keys.into_iter().map(|(key, _)| key).collect();
    let remote: BTreeMap<Vec<u8>, Vec<u8>> =
        block_on(b.fetch_many(BUCKET, keys, usize::MAX)).unwrap().into_iter().collect();
    let hashes: BTreeMap<Vec<u8>, u64> = a
        .tree_hashes(BUCKET, partition, &segments)
        .unwrap()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let same = |key: &[u8], state: &[u8]| hashes.get(key) == Some(&entry_hash(key, state));
    let mut candidates = Vec::new();
    let mut moved = 0;
    for (key, state) in &remote {
        if !same(key, state) {
            a.merge(BUCKET, key, state).unwrap();
            candidates.push(key.clone());
            moved += 1;
        }
    }
    candidates
        .extend(hashes.iter().filter(|(k, _)| !remote.contains_key(*k)).map(|(k, _)| k.clone()));
    for key in candidates {
        if let Some(state) = a.fetch(BUCKET, &key).unwrap() {
            if remote.get(&key) != Some(&state) {
                b.merge(BUCKET, &key, &state).unwrap();
                moved += 1;
            }
        }
    }
    moved
}

fn sweep(a: &Replica, b: &Replica) -> usize {
    (0..PARTITIONS).map(|p| exchange(&a.store, &b.store, p)).sum()
}

fn write(store: &Store, i: u64, tag: u64) {
    let value = format!("{tag:0width$}", width = VALUE_BYTES).into_bytes();
    store.write(BUCKET, &key(i), &Write::Put { value, context: Vec::new() }).unwrap();
}

fn bench(c: &mut Criterion) {
    let keys = key_count();
    let (a, b) = (Replica::new("a"), Replica::new("b"));
    for i in 0..keys {
        write(&a.store, i, i);
        let state = a.store.fetch(BUCKET, &key(i)).unwrap().unwrap();
        b.store.merge(BUCKET, &key(i), &state).unwrap();
    }
    // Before trees were kept, every exchange rebuilt both sides' leaves by a partition scan.
    let started = Instant::now();
    let before = a.reads();
    for p in 0..PARTITIONS {
        let collect = |out: &mut Vec<(Vec<u8>, Vec<u8>)>, k: &[u8], s: &[u8]| {
            out.push((k.to_vec(), s.to_vec()))
        };
        let entries = block_on(a.store.fold_partition(BUCKET, p, Vec::new(), collect)).unwrap();
        std::hint::black_box(leaves(entries.iter().map(|(k, s)| (k.as_slice(), s.as_slice()))));
    }
    eprintln!(
        "scan rebuild of all {PARTITIONS} partitions' leaves (one side, what each sweep cost before): {:?}, {} values read",
        started.elapsed(),
        a.reads() - before
    );
    let started = Instant::now();
    let before = a.reads() + b.reads();
    for p in 0..PARTITIONS {
        block_on(a.store.tree_leaves(BUCKET, p)).unwrap();
        block_on(b.store.tree_leaves(BUCKET, p)).unwrap();
    }
    eprintln!(
        "one-off build of the {PARTITIONS} trees on both sides: {:?}, {} values read",
        started.elapsed(),
        a.reads() + b.reads() - before
    );
    let mut tag = keys;
    let mut group = c.benchmark_group(format!("anti_entropy_{keys}_keys"));
    for differ in [0u64, 1, 1_000] {
        let (mut reads, mut sweeps, mut repaired) = (0, 0, 0);
        group.bench_function(format!("sweep_64_partitions_{differ}_differ"), |bencher| {
            bencher.iter_custom(|iterations| {
                let mut total = Duration::ZERO;
                for _ in 0..iterations {
                    for d in 0..differ {
                        tag += 1;
                        write(&b.store, (d * 7_919 + tag) % keys, tag);
                    }
                    let before = a.reads() + b.reads();
                    let started = Instant::now();
                    repaired += sweep(&a, &b);
                    total += started.elapsed();
                    reads += a.reads() + b.reads() - before;
                    sweeps += 1;
                }
                total
            })
        });
        eprintln!(
            "{differ} keys differ: {:.1} values read per sweep ({} sweeps, {:.1} keys repaired per sweep)",
            reads as f64 / sweeps as f64,
            sweeps,
            repaired as f64 / sweeps as f64
        );
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args().sample_size(10);
    bench(&mut criterion);
    criterion.final_summary();
}
