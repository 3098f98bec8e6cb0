//! Storage engine costs: every engine `cartwheel_engines::open` can build, next to LMDB
//! (heed) and redb, on the same workloads:
//!
//! - random gets over the whole key set (criterion);
//! - sequential and random overwrites, not synced (criterion);
//! - durable puts: one writer doing put + sync (latency percentiles), and 64 writers doing
//!   put + sync at once (throughput; the engines group-commit, LMDB and redb serialize their
//!   write transactions);
//! - a full iteration;
//! - the durable puts of `log` and `buffer` again with each flusher backend (plain thread,
//!   io_uring), side by side; `CARTWHEEL_BENCH_FLUSHERS_ONLY=1` runs only these and the floor;
//! - the floor: a raw 4 KiB append + fdatasync on the same file system;
//! - the `log` engine's open time with hint files, and its keydir memory per key, measured in
//!   a fresh child process (anonymous resident memory before and after the open).
//!
//! Keys are 24 bytes, values 150 bytes. The key count defaults to 1,000,000 and can be set
//! with `CARTWHEEL_BENCH_KEYS`. LMDB runs with `NO_SYNC` and `force_sync` after a commit when
//! a put must be durable (that is LMDB's group-less equivalent of put + sync); redb commits
//! with `Durability::Eventual` when not durable and `Immediate` when durable. Every store
//! returns owned values (`Vec<u8>`), as the `StorageEngine` trait does. LMDB and redb open
//! one read transaction per get, as an independent request would; a second LMDB figure
//! reuses one read transaction for 1000 gets (its best case).
//!
//! Run: `cargo bench --bench engines -- --warm-up-time 1 --measurement-time 3`.
//! The figures and the command that produced them are in `docs/BENCHMARKS.md`.

// `criterion_group!`-style functions and the adapter types need no docs.
#![allow(missing_docs)]

use std::hint::black_box;
use std::io::Write;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartwheel_engines::log::LogEngine;
use cartwheel_engines::{EngineKind, EngineOptions, FlusherBackend, StorageEngine};
use criterion::{BenchmarkId, Criterion, Throughput};

const KEY_BYTES: usize = 24;
const VALUE_BYTES: usize = 150;
const DURABLE_SINGLE_OPS: usize = 2000;
const DURABLE_WRITERS: usize = 64;
const DURABLE_WRITERS_SECONDS: u64 = 3;
const OPEN_CHILD_ENV: &str = "CARTWHEEL_BENCH_OPEN_CHILD";
/// Set to run only the floor and the flusher-backend comparison.
const FLUSHERS_ONLY_ENV: &str = "CARTWHEEL_BENCH_FLUSHERS_ONLY";
/// Keys loaded before the flusher-backend comparison.
const FLUSHER_KEYS: u64 = 100_000;
/// Pause after loading a store, before measuring it.
const SETTLE: Duration = Duration::from_secs(5);

fn key_count() -> u64 {
    std::env::var("CARTWHEEL_BENCH_KEYS").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000)
}

/// `key-` and 20 decimal digits: 24 bytes, in the order of `i`.
fn key(i: u64) -> [u8; KEY_BYTES] {
    let mut key = *b"key-00000000000000000000";
    let mut n = i;
    for slot in key[4..].iter_mut().rev() {
        *slot = b'0' + (n % 10) as u8;
        n /= 10;
    }
    key
}

fn value(i: u64, round: u8) -> [u8; VALUE_BYTES] {
    let mut value = [round; VALUE_BYTES];
    value[..8].copy_from_slice(&i.to_le_bytes());
    value
}

/// splitmix64: cheap, well spread, deterministic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The operations every store offers the workloads.
trait Store: Send + Sync {
    fn name(&self) -> String;
    fn durable(&self) -> bool;
    fn get(&self, key: &[u8]) -> Option<Vec<u8>>;
    /// Gets of many keys, as the store does them best (LMDB: one read transaction).
    fn get_many(&self, keys: &[[u8; KEY_BYTES]]) -> usize {
        keys.iter().filter(|k| self.get(&k[..]).is_some()).count()
    }
    fn put(&self, key: &[u8], value: &[u8]);
    fn put_durable(&self, key: &[u8], value: &[u8]);
    fn load(&self, n: u64);
    fn count_all(&self) -> u64;
}

/// An engine, named by its kind and, when it is not the default, its flusher backend.
struct Engine(Arc<dyn StorageEngine>, Option<FlusherBackend>);

impl Store for Engine {
    fn name(&self) -> String {
        match self.1 {
            Some(backend) => format!("{} ({} flusher)", self.0.kind().name(), backend.name()),
            None => self.0.kind().name().to_owned(),
        }
    }
    fn durable(&self) -> bool {
        self.0.is_durable()
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.0.get(key).unwrap()
    }
    fn put(&self, key: &[u8], value: &[u8]) {
        self.0.put(key, value).unwrap();
    }
    fn put_durable(&self, key: &[u8], value: &[u8]) {
        self.0.put(key, value).unwrap();
        self.0.sync().unwrap();
    }
    fn load(&self, n: u64) {
        for i in 0..n {
            self.0.put(&key(i), &value(i, 0)).unwrap();
        }
        self.0.sync().unwrap();
    }
    fn count_all(&self) -> u64 {
        let mut count = 0;
        self.0
            .scan_prefix(b"", &mut |k, v| {
                black_box((k, v));
                count += 1;
                ControlFlow::Continue(())
            })
            .unwrap();
        count
    }
}

struct Lmdb {
    env: heed::Env,
    db: heed::Database<heed::types::Bytes, heed::types::Bytes>,
}

impl Lmdb {
    #[allow(unsafe_code)]
    fn open(dir: &Path) -> Lmdb {
        let mut options = heed::EnvOpenOptions::new();
        options.map_size(16 << 30).max_dbs(1);
        // SAFETY: the directory is a fresh temporary one that no other process or handle
        // opens, which is what heed requires of `flags` and `open`; with NO_SYNC, durability
        // comes from the explicit `force_sync` in `put_durable`.
        let env = unsafe {
            options.flags(heed::EnvFlags::NO_SYNC);
            options.open(dir).unwrap()
        };
        let mut txn = env.write_txn().unwrap();
        let db = env.create_database(&mut txn, None).unwrap();
        txn.commit().unwrap();
        Lmdb { env, db }
    }
}

impl Store for Lmdb {
    fn name(&self) -> String {
        "lmdb (heed)".into()
    }
    fn durable(&self) -> bool {
        true
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let txn = self.env.read_txn().unwrap();
        self.db.get(&txn, key).unwrap().map(<[u8]>::to_vec)
    }
    fn get_many(&self, keys: &[[u8; KEY_BYTES]]) -> usize {
        let txn = self.env.read_txn().unwrap();
        keys.iter()
            .filter(|k| self.db.get(&txn, &k[..]).unwrap().map(<[u8]>::to_vec).is_some())
            .count()
    }
    fn put(&self, key: &[u8], value: &[u8]) {
        let mut txn = self.env.write_txn().unwrap();
        self.db.put(&mut txn, key, value).unwrap();
        txn.commit().unwrap();
    }
    fn put_durable(&self, key: &[u8], value: &[u8]) {
        self.put(key, value);
        self.env.force_sync().unwrap();
    }
    fn load(&self, n: u64) {
        let mut txn = self.env.write_txn().unwrap();
        for i in 0..n {
            self.db.put(&mut txn, &key(i), &value(i, 0)).unwrap();
        }
        txn.commit().unwrap();
        self.env.force_sync().unwrap();
    }
    fn count_all(&self) -> u64 {
        let txn = self.env.read_txn().unwrap();
        let mut count = 0;
        for entry in self.db.iter(&txn).unwrap() {
            black_box(entry.unwrap());
            count += 1;
        }
        count
    }
}

const REDB_TABLE: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("kv");

struct Redb(redb::Database);

impl Redb {
    fn open(dir: &Path) -> Redb {
        Redb(redb::Database::create(dir.join("redb")).unwrap())
    }

    fn commit(&self, key: &[u8], value: &[u8], durability: redb::Durability) {
        let mut txn = self.0.begin_write().unwrap();
        txn.set_durability(durability);
        txn.open_table(REDB_TABLE).unwrap().insert(key, value).unwrap();
        txn.commit().unwrap();
    }
}

impl Store for Redb {
    fn name(&self) -> String {
        "redb".into()
    }
    fn durable(&self) -> bool {
        true
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        let txn = self.0.begin_read().unwrap();
        let table = txn.open_table(REDB_TABLE).unwrap();
        let value = table.get(key).unwrap().map(|v| v.value().to_vec());
        value
    }
    fn put(&self, key: &[u8], value: &[u8]) {
        self.commit(key, value, redb::Durability::Eventual);
    }
    fn put_durable(&self, key: &[u8], value: &[u8]) {
        self.commit(key, value, redb::Durability::Immediate);
    }
    fn load(&self, n: u64) {
        let txn = self.0.begin_write().unwrap();
        {
            let mut table = txn.open_table(REDB_TABLE).unwrap();
            for i in 0..n {
                table.insert(&key(i)[..], &value(i, 0)[..]).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    fn count_all(&self) -> u64 {
        use redb::ReadableTable;
        let txn = self.0.begin_read().unwrap();
        let table = txn.open_table(REDB_TABLE).unwrap();
        let mut count = 0;
        for entry in table.iter().unwrap() {
            let (k, v) = entry.unwrap();
            black_box((k.value().len(), v.value().len()));
            count += 1;
        }
        count
    }
}

/// Latency percentiles of a sorted sample, in microseconds.
fn percentiles(sorted: &[Duration]) -> (f64, f64, f64) {
    let at = |q: f64| {
        let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index].as_secs_f64() * 1e6
    };
    (at(0.50), at(0.99), at(0.999))
}

/// Lines of the summary printed at the end (and copied into docs/BENCHMARKS.md).
#[derive(Default)]
struct Summary(Vec<String>);

impl Summary {
    fn line(&mut self, line: String) {
        println!("{line}");
        self.0.push(line);
    }
}

fn bench_store(c: &mut Criterion, store: &dyn Store, n: u64, summary: &mut Summary) {
    let name = store.name();
    let started = Instant::now();
    store.load(n);
    let load = started.elapsed();
    summary.line(format!(
        "| {name} | load {n} keys | {:.0} puts/s (one batch, then one sync) |",
        n as f64 / load.as_secs_f64()
    ));
    // Let the background work the load started (hint files, a snapshot) finish, so that the
    // measurements below see the engine in its steady state.
    std::thread::sleep(SETTLE);

    let mut group = c.benchmark_group("engines");
    group.throughput(Throughput::Elements(1));
    let mut rng = Rng(1);
    group.bench_function(BenchmarkId::new("random_get", &name), |b| {
        b.iter(|| black_box(store.get(&key(rng.next() % n))))
    });
    let mut rng = Rng(2);
    let batch: Vec<[u8; KEY_BYTES]> = (0..1000).map(|_| key(rng.next() % n)).collect();
    group.throughput(Throughput::Elements(batch.len() as u64));
    group.bench_function(BenchmarkId::new("random_get_batch_1000", &name), |b| {
        b.iter(|| black_box(store.get_many(&batch)))
    });
    group.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    group.bench_function(BenchmarkId::new("sequential_put", &name), |b| {
        b.iter(|| {
            i = (i + 1) % n;
            store.put(&key(i), &value(i, 1));
        })
    });
    let mut rng = Rng(3);
    group.bench_function(BenchmarkId::new("random_put", &name), |b| {
        b.iter(|| {
            let i = rng.next() % n;
            store.put(&key(i), &value(i, 2));
        })
    });
    group.finish();

    let mut best = f64::MAX;
    for _ in 0..3 {
        let started = Instant::now();
        let count = store.count_all();
        assert_eq!(count, n, "{name}: full iteration count");
        best = best.min(started.elapsed().as_secs_f64());
    }
    summary.line(format!("| {name} | full iteration | {:.0} entries/s |", n as f64 / best));

    bench_durable(store, n, summary);
}

/// Durable puts: one writer's latency percentiles, then the throughput of 64 writers.
fn bench_durable(store: &dyn Store, n: u64, summary: &mut Summary) {
    let name = store.name();
    if !store.durable() {
        summary.line(format!("| {name} | durable put | n/a (volatile) |"));
        return;
    }
    let mut rng = Rng(4);
    let mut latencies = Vec::with_capacity(DURABLE_SINGLE_OPS);
    for _ in 0..DURABLE_SINGLE_OPS {
        let i = rng.next() % n;
        let started = Instant::now();
        store.put_durable(&key(i), &value(i, 3));
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let (p50, p99, p999) = percentiles(&latencies);
    summary.line(format!(
        "| {name} | durable put, 1 writer | p50 {p50:.0} µs, p99 {p99:.0} µs, p99.9 {p999:.0} µs |"
    ));

    let done = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        for t in 0..DURABLE_WRITERS as u64 {
            let (done, stop) = (&done, &stop);
            scope.spawn(move || {
                let mut rng = Rng(100 + t);
                while !stop.load(Ordering::Relaxed) {
                    let i = rng.next() % n;
                    store.put_durable(&key(i), &value(i, 4));
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs(DURABLE_WRITERS_SECONDS));
        stop.store(true, Ordering::Relaxed);
    });
    summary.line(format!(
        "| {name} | durable put, {DURABLE_WRITERS} writers | {:.0} puts/s |",
        done.load(Ordering::Relaxed) as f64 / DURABLE_WRITERS_SECONDS as f64
    ));
}

/// The floor for a durable write: append 4 KiB and fdatasync, in the data directory.
fn raw_append_floor(dir: &Path, summary: &mut Summary) {
    let path = dir.join("raw-append");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = [7u8; 4096];
    let mut latencies = Vec::with_capacity(DURABLE_SINGLE_OPS);
    for _ in 0..DURABLE_SINGLE_OPS {
        let started = Instant::now();
        file.write_all(&block).unwrap();
        file.sync_data().unwrap();
        latencies.push(started.elapsed());
    }
    latencies.sort();
    let (p50, p99, p999) = percentiles(&latencies);
    summary.line(format!(
        "| file system | raw 4 KiB append + fdatasync | p50 {p50:.0} µs, p99 {p99:.0} µs, p99.9 {p999:.0} µs |"
    ));
    std::fs::remove_file(path).unwrap();
}

/// Anonymous resident memory of this process, in bytes (`RssAnon` of /proc/self/status).
fn rss_anon_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

/// Child role: open the log engine in the given directory and report the time and the
/// anonymous memory the open took, and the keydir's own count.
fn open_child(dir: &str) {
    let before = rss_anon_bytes();
    let started = Instant::now();
    let engine = LogEngine::open(Path::new(dir), &EngineOptions::default()).unwrap();
    let elapsed = started.elapsed();
    let after = rss_anon_bytes();
    let entries = engine.stats().entries;
    println!(
        "open_ms={} rss_anon_bytes={} keydir_bytes={} entries={entries}",
        elapsed.as_millis(),
        after.saturating_sub(before),
        engine.keydir_bytes(),
    );
}

/// The log engine's open time with hint files, and its keydir bytes per key.
fn log_open_and_keydir(n: u64, summary: &mut Summary) {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = LogEngine::open(dir.path(), &EngineOptions::default()).unwrap();
        for i in 0..n {
            engine.put(&key(i), &value(i, 0)).unwrap();
        }
        engine.sync().unwrap();
        // Seal the segments written so far and write their hints, as the background thread
        // would within a second.
        engine.for_testing_background_round().unwrap();
    }
    for run in 0..2 {
        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .env(OPEN_CHILD_ENV, dir.path())
            .output()
            .unwrap();
        let text = String::from_utf8(output.stdout).unwrap();
        let line = text.lines().find(|l| l.starts_with("open_ms=")).unwrap_or("");
        let field = |name: &str| -> f64 {
            line.split(' ')
                .find_map(|f| f.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN)
        };
        let entries = field("entries=");
        summary.line(format!(
            "| log | open with hints, {entries} keys (run {run}) | {} ms; keydir {:.1} B/key by RssAnon, {:.1} B/key by its own count (key is {KEY_BYTES} B) |",
            field("open_ms="),
            field("rss_anon_bytes=") / entries,
            field("keydir_bytes=") / entries,
        ));
    }
}

fn open_engine(kind: EngineKind, dir: &Path) -> Option<Arc<dyn StorageEngine>> {
    match cartwheel_engines::open(kind, dir, &EngineOptions::default()) {
        Ok(engine) => Some(engine),
        Err(e) => panic!("open {kind}: {e}"),
    }
}

/// The memory-log engines' durable puts with each flusher backend, side by side, on
/// `FLUSHER_KEYS` keys (durable puts do not depend on the key count).
fn compare_flushers(summary: &mut Summary) {
    for kind in [EngineKind::Log, EngineKind::Buffer] {
        for backend in FlusherBackend::ALL {
            let dir = tempfile::tempdir().unwrap();
            let mut options = EngineOptions::default();
            options.flusher = backend;
            let engine = cartwheel_engines::open(kind, dir.path(), &options).unwrap();
            let store = Engine(engine, Some(backend));
            store.load(FLUSHER_KEYS);
            bench_durable(&store, FLUSHER_KEYS, summary);
        }
    }
}

fn main() {
    if let Ok(dir) = std::env::var(OPEN_CHILD_ENV) {
        open_child(&dir);
        return;
    }
    if std::env::var_os(FLUSHERS_ONLY_ENV).is_some() {
        let mut summary = Summary::default();
        summary.line("| store | workload | result |".into());
        summary.line("|---|---|---|".into());
        let scratch = tempfile::tempdir().unwrap();
        raw_append_floor(scratch.path(), &mut summary);
        compare_flushers(&mut summary);
        println!("\n## summary\n");
        for line in &summary.0 {
            println!("{line}");
        }
        return;
    }
    let n = key_count();
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20)
        .configure_from_args();
    let mut summary = Summary::default();
    summary.line(format!(
        "| store | workload ({n} keys of {KEY_BYTES} B, values of {VALUE_BYTES} B) | result |"
    ));
    summary.line("|---|---|---|".into());
    let scratch = tempfile::tempdir().unwrap();
    raw_append_floor(scratch.path(), &mut summary);
    for kind in EngineKind::ALL {
        let dir = tempfile::tempdir().unwrap();
        if let Some(engine) = open_engine(kind, dir.path()) {
            bench_store(&mut c, &Engine(engine, None), n, &mut summary);
        }
    }
    {
        let dir = tempfile::tempdir().unwrap();
        bench_store(&mut c, &Lmdb::open(dir.path()), n, &mut summary);
    }
    {
        let dir = tempfile::tempdir().unwrap();
        bench_store(&mut c, &Redb::open(dir.path()), n, &mut summary);
    }
    compare_flushers(&mut summary);
    log_open_and_keydir(n, &mut summary);
    c.final_summary();
    println!("\n## summary\n");
    for line in &summary.0 {
        println!("{line}");
    }
}
