//! Put latency while memory-log segments roll, for the two engines built on the memory log
//! (`log` and `buffer`).
//!
//! A roll seals the active segment and starts the next one. Whatever of that work a put has to
//! wait for shows up as a tail that only the puts crossing a roll have. So this bench records
//! every put's latency in one of two hdrhistograms, "across a roll" (the active segment changed
//! during the put) and "between rolls" (it did not), and prints p50, p99, p99.9 and the maximum
//! of each. Segments are made small (512 KiB, about 500 puts of 1 KiB) so that a run crosses
//! about 2 400 rolls per engine in its minute.
//!
//! The writer is paced (open loop: one put every `1 / rate` seconds, 20 000/s by default, about
//! what a busy node's engine takes) while a second thread calls `sync` in a loop with a 1 ms
//! pause, as the node's durable writes do, so group commits and rolls overlap as they do in a
//! node. Keys are drawn at random from 100 000, so the `log` engine's merges and hint files and
//! the `buffer` engine's snapshots (set to every 8 MiB of log) run in the background too.
//!
//! After the paced runs, a criterion group measures the mean of the same put, closed loop (no
//! pacing), with the same small segments: the mean hides the tail the histograms show.
//!
//! Knobs: `CARTWHEEL_ROLLS_RATE` (puts per second), `CARTWHEEL_ROLLS_SECONDS` (per engine),
//! `CARTWHEEL_ROLLS_SEGMENT_KIB` (segment size), `CARTWHEEL_ROLLS_ENGINES` (comma-separated,
//! default `log,buffer`).
//!
//! Run: `cargo bench --bench rolls`. The figures and the command that produced them are in
//! `docs/BENCHMARKS.md` ("Put latency across segment rolls").

// `criterion_group!`-style functions need no docs.
#![allow(missing_docs)]

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cartwheel_engines::buffer::BufferEngine;
use cartwheel_engines::log::LogEngine;
use cartwheel_engines::{EngineOptions, StorageEngine};
use criterion::Criterion;
use hdrhistogram::Histogram;

const VALUE_BYTES: usize = 1024;
const KEYS: u64 = 100_000;
const SEGMENT_BYTES_DEFAULT_KIB: u64 = 512;
const RATE_DEFAULT: u64 = 20_000;
/// A minute per engine: about 2 400 puts cross a roll, so their p99.9 is the third slowest
/// of them rather than the slowest (docs/BENCHMARKS.md, "Rolls over more samples").
const SECONDS_DEFAULT: u64 = 60;
/// Pause of the syncing thread between two `sync` calls.
const SYNC_PAUSE: Duration = Duration::from_millis(1);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// An engine on the memory log, and the id of the segment its appends go to.
trait Rolling: Send + Sync {
    fn engine(&self) -> &dyn StorageEngine;
    fn active_segment(&self) -> u32;
}

impl Rolling for LogEngine {
    fn engine(&self) -> &dyn StorageEngine {
        self
    }
    fn active_segment(&self) -> u32 {
        LogEngine::active_segment(self)
    }
}

impl Rolling for BufferEngine {
    fn engine(&self) -> &dyn StorageEngine {
        self
    }
    fn active_segment(&self) -> u32 {
        BufferEngine::active_segment(self)
    }
}

fn options() -> EngineOptions {
    let mut options = EngineOptions::default();
    options.segment_bytes_max =
        env_u64("CARTWHEEL_ROLLS_SEGMENT_KIB", SEGMENT_BYTES_DEFAULT_KIB) << 10;
    options.snapshot_log_bytes = 8 << 20;
    options
}

fn open(name: &str, dir: &Path) -> Arc<dyn Rolling> {
    match name {
        "log" => Arc::new(LogEngine::open(dir, &options()).unwrap()),
        "buffer" => Arc::new(BufferEngine::open(dir, &options()).unwrap()),
        other => panic!("no memory-log engine named {other}"),
    }
}

/// SplitMix64: a seeded sequence of keys.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3).unwrap()
}

fn micros(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn row(h: &Histogram<u64>) -> String {
    format!(
        "{} | {:.1} | {:.1} | {:.1} | {:.1}",
        h.len(),
        micros(h, 0.5),
        micros(h, 0.99),
        micros(h, 0.999),
        h.max() as f64 / 1000.0
    )
}

/// One paced run on a fresh engine: every put's latency, split by whether it crossed a roll.
fn paced(name: &str, rate: u64, seconds: u64) -> String {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(name, dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let syncer = {
        let engine = Arc::clone(&engine);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                engine.engine().sync().unwrap();
                std::thread::sleep(SYNC_PAUSE);
            }
        })
    };
    let value = vec![0xA5u8; VALUE_BYTES];
    let mut rng = Rng(7);
    let (mut between, mut across) = (histogram(), histogram());
    let interval = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let puts = rate * seconds;
    let started = Instant::now();
    for i in 0..puts {
        let due = started + interval * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let key = (rng.next() % KEYS).to_be_bytes();
        let before = engine.active_segment();
        let t0 = Instant::now();
        engine.engine().put(&key, &value).unwrap();
        let took = t0.elapsed().as_nanos() as u64;
        let rolled = engine.active_segment() != before;
        let h = if rolled { &mut across } else { &mut between };
        h.record(took.max(1)).unwrap();
    }
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    syncer.join().unwrap();
    let stats = engine.engine().stats();
    format!(
        "| {name} | {rate}/s for {:.1} s | {} | {} | {} | merges {} syncs {} |",
        elapsed.as_secs_f64(),
        row(&between),
        row(&across),
        if between.value_at_quantile(0.999) == 0 {
            "n/a".to_string()
        } else {
            format!(
                "{:.2}x",
                across.value_at_quantile(0.999) as f64 / between.value_at_quantile(0.999) as f64
            )
        },
        stats.merges,
        stats.syncs,
    )
}

/// The same put, closed loop, as criterion's mean.
fn closed_loop(c: &mut Criterion, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(name, dir.path());
    let value = vec![0xA5u8; VALUE_BYTES];
    let mut rng = Rng(11);
    c.bench_function(&format!("rolls/{name}/put 1 KiB, small segments"), |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let key = (rng.next() % KEYS).to_be_bytes();
                let t0 = Instant::now();
                engine.engine().put(&key, &value).unwrap();
                total += t0.elapsed();
            }
            total
        })
    });
}

fn main() {
    let rate = env_u64("CARTWHEEL_ROLLS_RATE", RATE_DEFAULT);
    let seconds = env_u64("CARTWHEEL_ROLLS_SECONDS", SECONDS_DEFAULT);
    let engines = std::env::var("CARTWHEEL_ROLLS_ENGINES").unwrap_or_else(|_| "log,buffer".into());
    let engines: Vec<&str> = engines.split(',').filter(|e| !e.is_empty()).collect();
    let mut lines = vec![
        "| engine | run | puts between rolls | p50 | p99 | p99.9 | max | puts across rolls | p50 \
         | p99 | p99.9 | max | p99.9 across / between | background |"
            .to_string(),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|".to_string(),
    ];
    for name in &engines {
        let line = paced(name, rate, seconds);
        println!("{line}");
        lines.push(line);
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(1))
        .sample_size(10)
        .configure_from_args();
    for name in &engines {
        closed_loop(&mut c, name);
    }
    c.final_summary();
    println!("\n## summary\n");
    for line in &lines {
        println!("{line}");
    }
}
