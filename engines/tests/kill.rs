//! Kill -9 test: a child process writes and syncs, reporting on stdout every write that
//! `sync` acknowledged; the parent SIGKILLs it at a random moment, reopens the data directory
//! and checks that every acknowledged write is there. Many cycles run on the same directory,
//! so recovery also recovers from its own earlier recoveries, merges and snapshots.
//!
//! The child is this test binary itself, re-executed with [`CHILD_ENV`] set and filtered to
//! the [`kill_child`] test, which does nothing in a normal run.
//!
//! Each engine is instantiated with `kill_suite!(module_name, "engine name")`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cartwheel_engines::{EngineKind, EngineOptions};

/// Set in the child's environment to `<engine name> <data dir> <first sequence number>`.
const CHILD_ENV: &str = "CARTWHEEL_ENGINES_KILL_CHILD";
/// Cycles per engine.
const CYCLES: u64 = 20;
/// Keys the child cycles through, so that values are overwritten and merges and snapshots
/// have dead data to drop.
const KEYS: u64 = 300;
/// Bytes of each value.
const VALUE_BYTES: usize = 100;

/// Options that make background work happen within a cycle: small segments, merges and
/// snapshots checked every few milliseconds.
fn options() -> EngineOptions {
    let mut options = EngineOptions::default();
    options.segment_bytes_max = 32 << 10;
    options.background_interval_ms = 5;
    options.snapshot_log_bytes = 64 << 10;
    options.merge_dead_percent = 40;
    options
}

/// An engine name, optionally with `+io_uring` for the io_uring flusher backend.
fn engine_spec(spec: &str) -> (EngineKind, EngineOptions) {
    let mut options = options();
    let name = match spec.strip_suffix("+io_uring") {
        Some(name) => {
            options.flusher = cartwheel_engines::FlusherBackend::IoUring;
            name
        }
        None => spec,
    };
    (EngineKind::from_name(name).unwrap(), options)
}

/// The value written with sequence number `seq`: the number, then filler derived from it.
fn value(seq: u64) -> Vec<u8> {
    let mut value = seq.to_le_bytes().to_vec();
    value.extend(
        (0..VALUE_BYTES - 8).map(|i| (seq as usize).wrapping_mul(31).wrapping_add(i) as u8),
    );
    value
}

/// The part appended after the put of sequence number `seq`.
fn part(seq: u64) -> Vec<u8> {
    format!("part {seq}").into_bytes()
}

fn key(seq: u64) -> Vec<u8> {
    format!("key-{:04}", seq % KEYS).into_bytes()
}

/// The child role: write, sync, acknowledge, forever (until killed).
#[test]
fn kill_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let mut parts = spec.split(' ');
    let (kind, options) = engine_spec(parts.next().unwrap());
    let dir = parts.next().unwrap().to_owned();
    let mut seq: u64 = parts.next().unwrap().parse().unwrap();
    let engine = cartwheel_engines::open(kind, Path::new(&dir), &options).unwrap();
    let stdout = std::io::stdout();
    let mut batch = 1;
    loop {
        for _ in 0..batch {
            engine.put(&key(seq), &value(seq)).unwrap();
            engine.append(&key(seq), &part(seq)).unwrap().expect("just put");
            seq += 1;
        }
        engine.sync().unwrap();
        let mut out = stdout.lock();
        writeln!(out, "ack {}", seq - 1).unwrap();
        out.flush().unwrap();
        batch = batch % 17 + 1;
    }
}

/// A small deterministic generator for kill delays (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Run the kill cycles for one engine.
fn kill_cycles(engine_name: &str) {
    let (kind, _) = engine_spec(engine_name);
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ engine_name.len() as u64);
    // For every key, the highest acknowledged sequence number written to it.
    let mut acked: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut total_acked = 0;
    for cycle in 0..CYCLES {
        let first = cycle * 10_000_000;
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["kill_child", "--exact", "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, format!("{engine_name} {} {first}", dir.path().display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut last = None;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("ack ") {
                    last = Some(n.parse::<u64>().unwrap());
                }
            }
            last
        });
        std::thread::sleep(Duration::from_millis(40 + rng.below(200)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child was killed, it cannot have finished");
        let last_acked = reader.join().unwrap();
        if let Some(last) = last_acked {
            for seq in first..=last {
                let entry = acked.entry(key(seq)).or_insert(0);
                *entry = (*entry).max(seq);
            }
            total_acked += last + 1 - first;
        }
        let engine = cartwheel_engines::open(kind, dir.path(), &options()).unwrap_or_else(|e| {
            panic!("{engine_name}: reopen after kill in cycle {cycle} failed: {e}")
        });
        for (key, &seq) in &acked {
            let got = engine.get(key).unwrap().unwrap_or_else(|| {
                panic!("{engine_name}: cycle {cycle}: acknowledged {key:?} (seq {seq}) is gone")
            });
            // A put and its part, or, for a put after the last acknowledged one, possibly
            // the put alone (its part was not synced).
            let pieces = cartwheel_engines::chain::pieces(&got).unwrap();
            let (put, appended) = match pieces.as_deref() {
                Some([put, appended]) => (put.to_vec(), Some(appended.to_vec())),
                Some(other) => panic!("{engine_name}: {key:?} holds {} pieces", other.len()),
                None => (got.clone(), None),
            };
            let got_seq = u64::from_le_bytes(put[..8].try_into().unwrap());
            assert!(got_seq >= seq, "{engine_name}: {key:?} went back from {seq} to {got_seq}");
            assert_eq!(put, value(got_seq), "{engine_name}: {key:?} holds a damaged value");
            match appended {
                Some(appended) => assert_eq!(appended, part(got_seq), "{engine_name}: {key:?}"),
                None => assert!(got_seq > seq, "{engine_name}: {key:?} lost its acked part"),
            }
        }
        drop(engine);
    }
    assert!(total_acked > 1000, "{engine_name}: only {total_acked} writes acknowledged");
    // Merges (log) or snapshots (buffer) ran between the kills and removed old segments.
    assert!(
        !dir.path().join("0000000001.log").exists(),
        "{engine_name}: no background work happened during the cycles"
    );
}

macro_rules! kill_suite {
    ($name:ident, $engine:expr) => {
        /// SIGKILL a writing child many times; every acknowledged write survives.
        #[test]
        fn $name() {
            kill_cycles($engine);
        }
    };
}

kill_suite!(log_survives_kill_9, "log");
kill_suite!(buffer_survives_kill_9, "buffer");
kill_suite!(btree_survives_kill_9, "btree");
kill_suite!(log_io_uring_survives_kill_9, "log+io_uring");
kill_suite!(buffer_io_uring_survives_kill_9, "buffer+io_uring");
