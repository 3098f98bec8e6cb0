//! Tests of the btree engine beyond the shared conformance and crash suites: splits and merges,
//! overflow pages, free-list reuse, ordered scans, the page-cache bound, a model test with
//! crashes, and damage to every page of a file with several commits. The shared suites cover
//! the rest: `conformance.rs`, `crash.rs` (damage to the last bytes) and `kill.rs` (`kill -9`).
//!
//! Every test checks the tree's invariants with `BtreeEngine::for_testing_check`, which walks
//! the whole tree and also proves that every page of the file is either used or free.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::ops::ControlFlow;
use std::path::Path;
use std::time::Duration;

use cartwheel_engines::btree::{BtreeEngine, BTREE_KEY_BYTES_MAX, FILE_NAME, PAGE_SIZE};
use cartwheel_engines::{EngineError, EngineOptions, StorageEngine, VALUE_BYTES_MAX};

type Model = BTreeMap<Vec<u8>, Vec<u8>>;
type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// A small deterministic generator (SplitMix64), so failures replay.
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

/// Options with the given cache bound, and the commit thread slowed to once an hour so that
/// what a test does not sync is lost in its crashes.
fn options(cache_bytes_max: u64) -> EngineOptions {
    let mut options = EngineOptions::default();
    options.btree_cache_bytes_max = cache_bytes_max;
    options.flush_interval_ms = 3_600_000;
    options
}

fn open(dir: &Path, cache_bytes_max: u64) -> BtreeEngine {
    BtreeEngine::open(dir, &options(cache_bytes_max)).unwrap()
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:010}").into_bytes()
}

/// A value that names its key and version, `len` bytes long.
fn value(i: u64, version: u64, len: usize) -> Vec<u8> {
    let seed = format!("{i}/{version};");
    seed.bytes().cycle().take(len).collect()
}

fn scan(engine: &dyn StorageEngine, prefix: &[u8]) -> Result<Entries, EngineError> {
    let mut out = Vec::new();
    engine.scan_prefix(prefix, &mut |k, v| {
        out.push((k.to_vec(), v.to_vec()));
        ControlFlow::Continue(())
    })?;
    Ok(out)
}

/// The engine holds exactly `model` (through `get` and a full scan) and its tree is valid.
fn assert_holds(engine: &BtreeEngine, model: &Model) {
    engine.for_testing_check().unwrap();
    for (k, v) in model {
        assert_eq!(
            engine.get(k).unwrap().as_ref(),
            Some(v),
            "get({:?})",
            String::from_utf8_lossy(k)
        );
    }
    let scanned = scan(engine, b"").unwrap();
    assert!(scanned.windows(2).all(|w| w[0].0 < w[1].0), "scan is in key order");
    let expected: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert!(scanned == expected, "scan differs from the model");
    assert_eq!(engine.stats().entries, model.len() as u64);
    let live: usize = model.iter().map(|(k, v)| k.len() + v.len()).sum();
    assert_eq!(engine.stats().live_bytes, live as u64);
}

/// Many keys in random order split leaves and branches; deleting most of them merges the
/// underfull pages back, and the tree stays valid at every step and across reopen.
#[test]
fn splits_and_merges_keep_the_tree_valid() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), 64 << 20);
    let mut rng = Rng(1);
    let mut order: Vec<u64> = (0..20_000).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut model = Model::new();
    for &i in &order {
        engine.put(&key(i), &value(i, 0, 100)).unwrap();
        model.insert(key(i), value(i, 0, 100));
    }
    let full = engine.for_testing_check().unwrap();
    assert!(full.depth >= 3, "20k keys make a three-level tree: {full:?}");
    engine.sync().unwrap();
    assert_holds(&engine, &model);

    for (n, &i) in order[..19_000].iter().enumerate() {
        engine.delete(&key(i)).unwrap();
        model.remove(&key(i));
        if n % 2_000 == 0 {
            engine.for_testing_check().unwrap();
        }
    }
    let thin = engine.for_testing_check().unwrap();
    assert!(
        thin.leaf_pages * 5 < full.leaf_pages,
        "deletes merged underfull leaves: {thin:?} after {full:?}"
    );
    assert_holds(&engine, &model);
    engine.sync().unwrap();
    // One more small commit: its free list holds the pages the deletes freed, all over the file.
    engine.put(b"one more", b"commit").unwrap();
    model.insert(b"one more".to_vec(), b"commit".to_vec());
    engine.sync().unwrap();
    drop(engine);
    // So it went to disk as a bitmap.
    let bytes = fs::read(dir.path().join(FILE_NAME)).unwrap();
    let slot = if page_txn(&bytes, 0) > page_txn(&bytes, 1) { 0 } else { 1 };
    let meta_u64 =
        |at: usize| u64::from_le_bytes(bytes[slot * PAGE_SIZE + at..][..8].try_into().unwrap());
    let (run_first, run_pages) = (meta_u64(64) as usize, meta_u64(72) as usize);
    let kinds: Vec<u8> =
        (run_first..run_first + run_pages).map(|p| bytes[p * PAGE_SIZE + 4]).collect();
    assert!(kinds.contains(&6), "free-list run kinds {kinds:?}");

    let engine = open(dir.path(), 64 << 20);
    assert_holds(&engine, &model);
    engine.delete(b"one more").unwrap();
    for &i in &order[19_000..] {
        engine.delete(&key(i)).unwrap();
    }
    assert_eq!(engine.for_testing_check().unwrap().depth, 0, "the last delete empties the tree");
    engine.sync().unwrap();
    drop(engine);
    let engine = open(dir.path(), 64 << 20);
    assert_holds(&engine, &Model::new());
    assert_eq!(engine.get(&key(order[0])).unwrap(), None);
}

/// Keys written in order (a bulk load) leave full pages behind, not half-full ones.
#[test]
fn keys_in_order_fill_their_pages() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), 64 << 20);
    let mut cell_bytes = 0;
    for i in 0..20_000u64 {
        let (k, v) = (key(i), value(i, 0, 150));
        cell_bytes += 7 + k.len() + v.len();
        engine.put(&k, &v).unwrap();
    }
    let shape = engine.for_testing_check().unwrap();
    let full_pages = cell_bytes.div_ceil(PAGE_SIZE - 24) as u64;
    assert!(shape.leaf_pages <= full_pages + full_pages / 20, "{shape:?} for {full_pages} pages");
    engine.sync().unwrap();
    let model: Model = (0..20_000).map(|i| (key(i), value(i, 0, 150))).collect();
    assert_holds(&engine, &model);
}

/// Values of every size class, up to `VALUE_BYTES_MAX`, round-trip through overflow pages,
/// survive reopen, and give their pages back when overwritten or deleted.
#[test]
fn large_values_use_overflow_pages() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), 8 << 20);
    let k = key(7);
    let inline_max = BTREE_KEY_BYTES_MAX - k.len();
    let sizes = [0, 1, inline_max, inline_max + 1, 4072, 4073, 100_000, 3 << 20, VALUE_BYTES_MAX];
    let mut model = Model::new();
    for (i, &len) in sizes.iter().enumerate() {
        let v = value(i as u64, 1, len);
        engine.put(&key(i as u64), &v).unwrap();
        assert_eq!(engine.get(&key(i as u64)).unwrap().as_deref(), Some(&v[..]), "size {len}");
        model.insert(key(i as u64), v);
    }
    let shape = engine.for_testing_check().unwrap();
    let expected: u64 = sizes
        .iter()
        .filter(|&&len| len > inline_max)
        .map(|&len| len.div_ceil(PAGE_SIZE - 24) as u64)
        .sum();
    assert_eq!(shape.overflow_pages, expected);
    engine.sync().unwrap();
    drop(engine);

    let engine = open(dir.path(), 8 << 20);
    assert_holds(&engine, &model);
    for i in 0..sizes.len() as u64 {
        engine.put(&key(i), b"small now").unwrap();
        model.insert(key(i), b"small now".to_vec());
    }
    engine.delete(&key(0)).unwrap();
    model.remove(&key(0));
    let shape = engine.for_testing_check().unwrap();
    assert_eq!(shape.overflow_pages, 0);
    assert!(shape.free_pages >= expected, "overflow pages wait on the free list: {shape:?}");
    engine.sync().unwrap();
    drop(engine);
    let engine = open(dir.path(), 8 << 20);
    assert_holds(&engine, &model);
}

/// Under overwrite churn with a sync after each round, freed pages are reused: the file stops
/// growing, and every page stays accounted for.
#[test]
fn free_list_reuse_stops_file_growth() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), 16 << 20);
    let path = dir.path().join(FILE_NAME);
    let mut sizes = Vec::new();
    for round in 0..40u64 {
        for i in 0..600u64 {
            // Small values, and every 30th key a value in overflow pages.
            let len = if i % 30 == 0 { 9_000 } else { 300 };
            engine.put(&key(i), &value(i, round, len)).unwrap();
        }
        engine.sync().unwrap();
        engine.for_testing_check().unwrap();
        sizes.push(fs::metadata(&path).unwrap().len());
    }
    assert!(engine.stats().dead_bytes > 0, "overwritten pages are counted as dead");
    assert_eq!(sizes[39], sizes[15], "the file stopped growing: {sizes:?}");
    drop(engine);
    let engine = open(dir.path(), 16 << 20);
    let model: Model =
        (0..600).map(|i| (key(i), value(i, 39, if i % 30 == 0 { 9_000 } else { 300 }))).collect();
    assert_holds(&engine, &model);
}

/// A full scan visits keys in order; a prefix scan is exactly the model's range, across
/// the scan's internal batches; `Break` stops a scan in the middle of a batch.
#[test]
fn ordered_iteration_and_prefix_scans() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), 1 << 20);
    let mut rng = Rng(2);
    let mut model = Model::new();
    for _ in 0..6_000 {
        let partition = (rng.below(12) as u16).to_be_bytes();
        let suffix = rng.next().to_be_bytes();
        let k = [&partition[..], &suffix[..(rng.below(8) as usize + 1)]].concat();
        let v = vec![rng.below(256) as u8; rng.below(200) as usize];
        engine.put(&k, &v).unwrap();
        model.insert(k, v);
    }
    assert_holds(&engine, &model);
    for partition in 0..13u16 {
        let prefix = partition.to_be_bytes();
        let expected: Vec<_> = model
            .iter()
            .filter(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        assert_eq!(scan(&engine, &prefix).unwrap(), expected, "partition {partition}");
    }
    assert_eq!(scan(&engine, b"\xff").unwrap(), Vec::new());
    let mut visited = 0;
    engine
        .scan_prefix(b"", &mut |_, _| {
            visited += 1;
            if visited == 300 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(visited, 300);
}

/// With a small cache bound, the engine's memory stays within it while writing (dirty pages
/// are written early) and while reading (clean pages are evicted), and every value is right.
#[test]
fn page_cache_respects_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let bound = 256 << 10;
    let slack = 16 << 10;
    let engine = open(dir.path(), bound);
    let mut model = Model::new();
    for i in 0..30_000u64 {
        let k = key(i.wrapping_mul(7_919) % 30_011);
        let v = value(i, 0, 150);
        engine.put(&k, &v).unwrap();
        model.insert(k, v);
        if i % 1_000 == 0 {
            let memory = engine.stats().memory_bytes;
            assert!(memory <= bound + slack, "memory {memory} over the bound {bound} at put {i}");
        }
    }
    engine.sync().unwrap();
    for (n, (k, v)) in model.iter().enumerate() {
        assert_eq!(engine.get(k).unwrap().as_ref(), Some(v));
        if n % 1_000 == 0 {
            let memory = engine.stats().memory_bytes;
            assert!(memory <= bound + slack, "memory {memory} over the bound {bound} at get {n}");
        }
    }
    assert_holds(&engine, &model);
}

/// Writes nobody syncs are committed by the engine's own thread within the flush interval.
#[test]
fn unsynced_writes_commit_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(1 << 20);
    options.flush_interval_ms = 20;
    let engine = BtreeEngine::open(dir.path(), &options).unwrap();
    engine.put(b"never", b"synced").unwrap();
    let mut committed = false;
    for _ in 0..100 {
        std::thread::sleep(Duration::from_millis(20));
        // A second reader of the file sees the commit once its meta is written.
        let bytes = fs::read(dir.path().join(FILE_NAME)).unwrap();
        if page_txn(&bytes, 0).max(page_txn(&bytes, 1)) > 0 {
            committed = true;
            break;
        }
    }
    assert!(committed, "no commit within two seconds");
    drop(engine);
    let engine = open(dir.path(), 1 << 20);
    assert_eq!(engine.get(b"never").unwrap(), Some(b"synced".to_vec()));
}

/// Closing an engine is prompt even with an hour-long commit interval: the commit thread sees
/// the stop request whenever it comes (just after start, or during a commit).
#[test]
fn close_never_waits_for_the_commit_interval() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let dir = tempfile::tempdir().unwrap();
        let mut options = options(1 << 20);
        for _ in 0..200 {
            let engine = BtreeEngine::open(dir.path(), &options).unwrap();
            engine.put(b"k", b"v").unwrap();
            drop(engine);
        }
        // And with a short interval, a stop that arrives during a commit.
        options.flush_interval_ms = 1;
        for i in 0..50u64 {
            let engine = BtreeEngine::open(dir.path(), &options).unwrap();
            engine.put(&key(i), &value(i, 0, 100)).unwrap();
            std::thread::sleep(Duration::from_millis(i % 3));
            drop(engine);
        }
        done.send(()).unwrap();
    });
    finished.recv_timeout(Duration::from_secs(60)).expect("open and close 250 times in a minute");
}

/// Threads that each put and sync share commits (group commit), and every write is durable.
#[test]
fn concurrent_syncs_share_commits() {
    let dir = tempfile::tempdir().unwrap();
    let engine = std::sync::Arc::new(open(dir.path(), 1 << 20));
    let (threads, puts) = (16u64, 50u64);
    std::thread::scope(|scope| {
        for t in 0..threads {
            let engine = &engine;
            scope.spawn(move || {
                for n in 0..puts {
                    let i = t * 1_000 + n;
                    engine.put(&key(i), &value(i, 0, 100)).unwrap();
                    engine.sync().unwrap();
                }
            });
        }
    });
    let bytes = fs::read(dir.path().join(FILE_NAME)).unwrap();
    let commits = page_txn(&bytes, 0).max(page_txn(&bytes, 1));
    assert!(commits < threads * puts, "{commits} commits for {} synced puts", threads * puts);
    drop(engine);
    let engine = open(dir.path(), 1 << 20);
    let model: Model = (0..threads)
        .flat_map(|t| (0..puts).map(move |n| t * 1_000 + n))
        .map(|i| (key(i), value(i, 0, 100)))
        .collect();
    assert_holds(&engine, &model);
}

/// Keys longer than the btree's key limit are refused and change nothing; a key at the limit
/// with a large value works.
#[test]
fn keys_over_the_btree_limit_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), 1 << 20);
    let long = vec![b'k'; BTREE_KEY_BYTES_MAX + 1];
    let err = engine.put(&long, b"v").unwrap_err();
    assert!(
        matches!(err, EngineError::TooLarge { what: "key", max, .. } if max == BTREE_KEY_BYTES_MAX)
    );
    let longest = vec![b'k'; BTREE_KEY_BYTES_MAX];
    engine.put(&longest, &[9u8; 5_000]).unwrap();
    for i in 0..50u8 {
        let mut k = vec![i; BTREE_KEY_BYTES_MAX];
        k[0] = i;
        engine.put(&k, &[i; 10]).unwrap();
    }
    assert_eq!(engine.get(&longest).unwrap(), Some(vec![9u8; 5_000]));
    assert_eq!(engine.stats().entries, 51);
    engine.for_testing_check().unwrap();
}

/// One step of the model test.
#[derive(Clone, Debug)]
enum Step {
    Put(u16, usize),
    Delete(u16),
    Get(u16),
    Sync,
    /// Close without syncing: what was not synced is lost.
    Crash,
    /// Sync, close and reopen.
    Reopen,
}

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        8 => (0u16..300, prop_oneof![4 => 0usize..300, 1 => 900usize..1100, 1 => 4000usize..9000])
            .prop_map(|(k, len)| Step::Put(k, len)),
        3 => (0u16..300).prop_map(Step::Delete),
        2 => (0u16..300).prop_map(Step::Get),
        1 => Just(Step::Sync),
        1 => Just(Step::Crash),
        1 => Just(Step::Reopen),
    ]
}

fn model_key(k: u16) -> Vec<u8> {
    // Long shared prefixes, so that pages fill and split with few keys.
    format!("partition-{:02}/cart-{k:05}/{}", k % 7, "x".repeat(k as usize % 40)).into_bytes()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(40))]

    /// Random puts (some through overflow pages), deletes, syncs, crashes (close without
    /// sync) and reopens agree with a `BTreeMap` model: a crash returns to the last synced
    /// state. The cache is tiny, so dirty pages are written early and clean ones evicted.
    #[test]
    fn matches_a_model_across_syncs_and_crashes(steps in proptest::collection::vec(step(), 1..250)) {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = open(dir.path(), 48 << 10);
        let mut model = Model::new();
        let mut synced = Model::new();
        for (n, step) in steps.into_iter().enumerate() {
            match step {
                Step::Put(k, len) => {
                    let v = value(u64::from(k), n as u64, len);
                    engine.put(&model_key(k), &v).unwrap();
                    model.insert(model_key(k), v);
                }
                Step::Delete(k) => {
                    engine.delete(&model_key(k)).unwrap();
                    model.remove(&model_key(k));
                }
                Step::Get(k) => {
                    let got = engine.get(&model_key(k)).unwrap();
                    proptest::prop_assert_eq!(got.as_ref(), model.get(&model_key(k)));
                }
                Step::Sync => {
                    engine.sync().unwrap();
                    synced = model.clone();
                }
                Step::Crash => {
                    drop(engine);
                    engine = open(dir.path(), 48 << 10);
                    model = synced.clone();
                    assert_holds(&engine, &model);
                }
                Step::Reopen => {
                    engine.sync().unwrap();
                    synced = model.clone();
                    drop(engine);
                    engine = open(dir.path(), 48 << 10);
                    assert_holds(&engine, &model);
                }
            }
        }
        assert_holds(&engine, &model);
    }
}

/// Build a file with several commits (and uncommitted pages written early after the last),
/// returning the directory, and the state and file contents after each commit, oldest first.
fn several_commits() -> (tempfile::TempDir, Vec<Model>, Vec<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let engine = open(dir.path(), 64 << 10);
    let mut rng = Rng(3);
    let mut model = Model::new();
    let mut states = vec![model.clone()];
    let mut files = vec![fs::read(dir.path().join(FILE_NAME)).unwrap()];
    for round in 0..6u64 {
        for _ in 0..120 {
            let i = rng.below(400);
            if rng.below(5) == 0 {
                engine.delete(&key(i)).unwrap();
                model.remove(&key(i));
            } else {
                let len = if rng.below(15) == 0 { 6_000 } else { 20 + rng.below(200) as usize };
                engine.put(&key(i), &value(i, round, len)).unwrap();
                model.insert(key(i), value(i, round, len));
            }
        }
        engine.sync().unwrap();
        states.push(model.clone());
        files.push(fs::read(dir.path().join(FILE_NAME)).unwrap());
    }
    // Uncommitted writes, large enough to be written early to the file, then a crash.
    for i in 0..400 {
        engine.put(&key(i), &value(i, 99, 300)).unwrap();
    }
    drop(engine);
    (dir, states, files)
}

/// Whether `engine` agrees with `state` wherever it answers: every `get` is the state's value
/// or `Corrupt`, and the scan is the whole state or `Corrupt`. Returns whether it answered
/// everything (no `Corrupt` at all).
fn agrees(engine: &BtreeEngine, state: &Model, keys: &BTreeSet<Vec<u8>>) -> Option<bool> {
    let mut complete = true;
    for k in keys {
        match engine.get(k) {
            Ok(got) if got.as_ref() == state.get(k) => {}
            Ok(_) => return None,
            Err(EngineError::Corrupt { .. }) => complete = false,
            Err(err) => panic!("get failed with {err}"),
        }
    }
    match scan(engine, b"") {
        Ok(all) if all.len() == state.len() && all.iter().all(|(k, v)| state.get(k) == Some(v)) => {
        }
        Ok(_) => return None,
        Err(EngineError::Corrupt { .. }) => complete = false,
        Err(err) => panic!("scan failed with {err}"),
    }
    Some(complete)
}

/// Reopen a damaged copy: it either refuses with `Corrupt`, or holds one committed state
/// (answering `Corrupt` where a damaged page is needed, never a wrong value). Returns the
/// index of that state and whether every read succeeded.
fn reopen_damaged(dir: &Path, states: &[Model]) -> Option<(usize, bool)> {
    let engine = match BtreeEngine::open(dir, &options(64 << 10)) {
        Ok(engine) => engine,
        Err(EngineError::Corrupt { .. }) => return None,
        Err(err) => panic!("open failed with {err}"),
    };
    let keys: BTreeSet<Vec<u8>> = states.iter().flat_map(|s| s.keys().cloned()).collect();
    // Prefer the newest state that agrees completely.
    let mut found = None;
    for (i, state) in states.iter().enumerate().rev() {
        match agrees(&engine, state, &keys) {
            Some(true) => {
                found = Some((i, true));
                break;
            }
            Some(false) if found.is_none() => found = Some((i, false)),
            _ => {}
        }
    }
    let found = found.unwrap_or_else(|| panic!("the reopened tree is no committed state"));
    if found.1 {
        // A fully readable tree keeps working.
        engine.for_testing_check().unwrap();
        engine.put(b"after", b"recovery").unwrap();
        engine.sync().unwrap();
        assert_eq!(engine.get(b"after").unwrap(), Some(b"recovery".to_vec()));
    }
    Some(found)
}

fn copy_with(from: &Path, damage: impl FnOnce(&mut Vec<u8>)) -> tempfile::TempDir {
    let to = tempfile::tempdir().unwrap();
    let mut bytes = fs::read(from.join(FILE_NAME)).unwrap();
    damage(&mut bytes);
    fs::write(to.path().join(FILE_NAME), bytes).unwrap();
    to
}

/// The transaction id in the header of page `page`.
fn page_txn(bytes: &[u8], page: usize) -> u64 {
    let at = page * PAGE_SIZE + 16;
    u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap())
}

/// One `fdatasync` covers a commit's pages and its meta, so a crash can leave the meta on disk
/// without some of the pages. Putting back, one at a time, each page the last commit wrote as
/// it was before that commit (an older valid page, or nothing) makes open fall back to the
/// previous commit, complete; a page the final tree does not reach costs nothing.
#[test]
fn a_commit_missing_a_page_falls_back_to_the_previous_one() {
    let (dir, states, files) = several_commits();
    let bytes = fs::read(dir.path().join(FILE_NAME)).unwrap();
    let newest = page_txn(&bytes, 0).max(page_txn(&bytes, 1));
    let before = &files[files.len() - 2];
    let last = states.len() - 1;
    let mut rolled_back = 0;
    for page in 2..bytes.len() / PAGE_SIZE {
        if page_txn(&bytes, page) != newest {
            continue;
        }
        let range = page * PAGE_SIZE..(page + 1) * PAGE_SIZE;
        let copy = copy_with(dir.path(), |b| match before.get(range.clone()) {
            Some(old) => b[range.clone()].copy_from_slice(old),
            None => b[range.clone()].fill(0),
        });
        let (state, complete) = reopen_damaged(copy.path(), &states)
            .unwrap_or_else(|| panic!("page {page} put back refused open"));
        assert!(complete, "page {page} put back left a damaged tree");
        assert!(state == last || state == last - 1, "page {page} put back gave state {state}");
        rolled_back += usize::from(state == last - 1);
    }
    assert!(rolled_back > 2, "the last commit's pages were found missing");
}

/// Cutting the file anywhere leaves either a refusal to open or one committed state, never a
/// wrong value; cutting only uncommitted pages loses nothing.
#[test]
fn truncation_anywhere_leaves_a_committed_state() {
    let (dir, states, _) = several_commits();
    let len = fs::metadata(dir.path().join(FILE_NAME)).unwrap().len() as usize;
    let (newest, complete) = reopen_damaged(copy_with(dir.path(), |_| {}).path(), &states).unwrap();
    assert_eq!((newest, complete), (states.len() - 1, true), "an undamaged file is complete");
    let mut rng = Rng(4);
    let mut opened = 0;
    let mut offsets: Vec<usize> = (0..len).step_by(PAGE_SIZE).collect();
    offsets.extend((0..120).map(|_| rng.below(len as u64) as usize));
    for offset in offsets {
        let copy = copy_with(dir.path(), |bytes| bytes.truncate(offset));
        if reopen_damaged(copy.path(), &states).is_some() {
            opened += 1;
        }
    }
    assert!(opened > 0, "some truncations leave an openable file");
}

/// Flipping a bit in any page leaves one committed state and never a wrong value. A flip in
/// the newest meta falls back to the previous commit, complete; a flip in the older meta
/// loses nothing.
#[test]
fn bit_flips_in_every_page_never_return_bad_data() {
    let (dir, states, _) = several_commits();
    let bytes = fs::read(dir.path().join(FILE_NAME)).unwrap();
    let newest_slot = if page_txn(&bytes, 0) > page_txn(&bytes, 1) { 0 } else { 1 };
    let last = states.len() - 1;

    let copy = copy_with(dir.path(), |b| b[newest_slot * PAGE_SIZE + 100] ^= 0x10);
    assert_eq!(reopen_damaged(copy.path(), &states), Some((last - 1, true)), "newest meta damaged");
    let copy = copy_with(dir.path(), |b| b[(1 - newest_slot) * PAGE_SIZE + 40] ^= 0x01);
    assert_eq!(reopen_damaged(copy.path(), &states), Some((last, true)), "older meta damaged");

    let mut rng = Rng(5);
    let pages = bytes.len() / PAGE_SIZE;
    let mut complete = 0;
    for page in 0..pages {
        let offset = page * PAGE_SIZE + rng.below(PAGE_SIZE as u64) as usize;
        let bit = 1u8 << rng.below(8);
        let copy = copy_with(dir.path(), |b| b[offset] ^= bit);
        let found = reopen_damaged(copy.path(), &states);
        let (_, all_read) =
            found.unwrap_or_else(|| panic!("one flipped bit at {offset} refused open"));
        complete += usize::from(all_read);
    }
    assert!(complete > 0, "flips in unused pages cost nothing");
}
