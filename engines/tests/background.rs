//! Background work of the engines: the `log` engine's merge and hint files, the `buffer`
//! engine's snapshots, the `btree` engine's commits. Each runs while writers keep writing, and
//! nothing may be lost; and each sleeps, without a timer, while nothing is written.

use std::collections::BTreeMap;
use std::fs;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cartwheel_engines::btree::BtreeEngine;
use cartwheel_engines::buffer::BufferEngine;
use cartwheel_engines::log::LogEngine;
use cartwheel_engines::{EngineError, EngineOptions, StorageEngine};

fn small_options() -> EngineOptions {
    let mut options = EngineOptions::default();
    options.segment_bytes_max = 32 << 10;
    options.background_interval_ms = 2;
    options.merge_dead_percent = 30;
    options.snapshot_log_bytes = 64 << 10;
    options
}

/// [`small_options`] with merges of half-dead segments, and background rounds every
/// `interval_ms` (an hour: only the test's own rounds run).
fn merge_options(interval_ms: u64) -> EngineOptions {
    let mut options = small_options();
    options.background_interval_ms = interval_ms;
    options.merge_dead_percent = 50;
    options
}

fn contents(engine: &dyn StorageEngine) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    engine
        .scan_prefix(b"", &mut |k, v| {
            out.insert(k.to_vec(), v.to_vec());
            ControlFlow::Continue(())
        })
        .unwrap();
    out
}

/// Four writers overwrite and delete their own keys while background work runs; returns the
/// model of what must be there.
fn hammer(engine: &Arc<dyn StorageEngine>, rounds: u32) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let engine = Arc::clone(engine);
            std::thread::spawn(move || {
                let mut model = BTreeMap::new();
                for round in 0..rounds {
                    for k in 0..100u32 {
                        let key = format!("{t}-{k:03}").into_bytes();
                        if (round + k) % 11 == 0 {
                            engine.delete(&key).unwrap();
                            model.remove(&key);
                        } else {
                            let value = format!("{t}/{k}/{round}").repeat(4).into_bytes();
                            engine.put(&key, &value).unwrap();
                            model.insert(key, value);
                        }
                    }
                    if round % 10 == 0 {
                        engine.sync().unwrap();
                    }
                }
                model
            })
        })
        .collect();
    let mut model = BTreeMap::new();
    for thread in threads {
        model.extend(thread.join().unwrap());
    }
    model
}

/// Readers check, while writers and merges run, that every get returns a whole value.
fn spawn_readers(
    engine: &Arc<dyn StorageEngine>,
    stop: &Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<u64>> {
    (0..2u8)
        .map(|t| {
            let engine = Arc::clone(engine);
            let stop = Arc::clone(stop);
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    for k in 0..100u32 {
                        let key = format!("{t}-{k:03}").into_bytes();
                        if let Some(value) = engine.get(&key).unwrap() {
                            let text = String::from_utf8(value).unwrap();
                            assert!(text.starts_with(&format!("{t}/{k}/")), "{text}");
                        }
                        reads += 1;
                    }
                }
                reads
            })
        })
        .collect()
}

/// Merging sealed segments while writers overwrite and delete, and readers read, loses
/// nothing, resurrects nothing, and actually reclaims segments; a reopen (through hint files)
/// sees the same.
#[test]
fn log_merge_under_concurrent_writes_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(LogEngine::open(dir.path(), &small_options()).unwrap());
    let engine: Arc<dyn StorageEngine> = log.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let readers = spawn_readers(&engine, &stop);
    let model = hammer(&engine, 120);
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        assert!(reader.join().unwrap() > 0);
    }
    assert_eq!(contents(&*engine), model);
    // 4 × 100 × 120 writes of ~50 bytes fill about 90 segments of 32 KiB; merges must have
    // removed most of them.
    log.for_testing_background_round().unwrap();
    let sealed = log.for_testing_sealed_segments();
    assert!(sealed.len() < 30, "merge kept {} sealed segments", sealed.len());
    assert!(!dir.path().join("0000000001.log").exists(), "the oldest segment was merged");
    for id in &sealed {
        let hint = dir.path().join(format!("{id:010}.hint"));
        assert!(hint.exists(), "sealed segment {id} that was not merged has a hint file");
    }
    let stats = engine.stats();
    assert_eq!(stats.entries, model.len() as u64);
    engine.sync().unwrap();
    drop(engine);
    drop(log);
    let reopened = LogEngine::open(dir.path(), &small_options()).unwrap();
    assert_eq!(contents(&reopened), model);
}

/// A damaged hint file is ignored (its segment is scanned instead); the data is unchanged.
#[test]
fn log_damaged_hint_falls_back_to_scan() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = small_options();
    options.merge_dead_percent = 100;
    let mut model = BTreeMap::new();
    {
        let engine = LogEngine::open(dir.path(), &options).unwrap();
        for i in 0..3000u32 {
            let key = format!("k{}", i % 700).into_bytes();
            let value = i.to_le_bytes().repeat(5);
            engine.put(&key, &value).unwrap();
            model.insert(key, value);
        }
        engine.sync().unwrap();
        engine.for_testing_background_round().unwrap();
    }
    let mut hints: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "hint"))
        .collect();
    hints.sort();
    assert!(hints.len() >= 3, "{} hint files", hints.len());
    {
        let engine = LogEngine::open(dir.path(), &options).unwrap();
        assert_eq!(contents(&engine), model, "reopen through hints");
    }
    let mut bytes = fs::read(&hints[1]).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    fs::write(&hints[1], bytes).unwrap();
    fs::OpenOptions::new().write(true).open(&hints[2]).unwrap().set_len(10).unwrap();
    let engine = LogEngine::open(dir.path(), &options).unwrap();
    assert_eq!(contents(&engine), model, "reopen with damaged hints");
}

/// A sealed segment in which every record died is deleted without being read: a byte
/// damaged in it (which a read would find, failing the merge) changes nothing, and the data
/// are whole before and after a reopen.
#[test]
fn log_merge_deletes_a_dead_segment_without_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let options = merge_options(3_600_000);
    let engine = LogEngine::open(dir.path(), &options).unwrap();
    let mut model = BTreeMap::new();
    for round in 0..2u32 {
        for i in 0..100u32 {
            let value = round.to_le_bytes().repeat(100);
            engine.put(&i.to_be_bytes(), &value).unwrap();
            model.insert(i.to_be_bytes().to_vec(), value);
        }
    }
    engine.sync().unwrap();
    let first = dir.path().join("0000000001.log");
    assert!(engine.for_testing_sealed_segments().contains(&1));
    // Damage a value in segment 1 (the first round's, all overwritten since).
    let mut file = fs::OpenOptions::new().read(true).write(true).open(&first).unwrap();
    use std::io::{Seek, SeekFrom, Write};
    file.seek(SeekFrom::Start(200)).unwrap();
    file.write_all(&[0xAA; 8]).unwrap();
    file.sync_all().unwrap();
    drop(file);
    engine.for_testing_background_round().unwrap();
    assert!(!first.exists(), "the dead segment was deleted");
    assert!(engine.for_testing_unread_merges() >= 1);
    assert_eq!(contents(&engine), model);
    drop(engine);
    let reopened = LogEngine::open(dir.path(), &options).unwrap();
    assert_eq!(contents(&reopened), model);
}

/// A segment whose only record left is a tombstone is read and merged, the tombstone copied,
/// while an older segment still holds the value it hides: the key stays deleted after a
/// reopen.
#[test]
fn log_merge_keeps_a_tombstone_an_older_segment_needs() {
    let dir = tempfile::tempdir().unwrap();
    let options = merge_options(3_600_000);
    let engine = LogEngine::open(dir.path(), &options).unwrap();
    // Segment 1: the key to delete, then values that stay live (so it is no candidate).
    engine.put(b"gone", &[1; 100]).unwrap();
    let mut i = 0u32;
    while engine.for_testing_sealed_segments().is_empty() {
        engine.put(format!("keep{i}").as_bytes(), &[2; 100]).unwrap();
        i += 1;
    }
    // Segment 2: the tombstone, then filler that is overwritten in later segments.
    engine.delete(b"gone").unwrap();
    let mut j = 0u32;
    while engine.for_testing_sealed_segments().len() < 2 {
        engine.put(format!("fill{j}").as_bytes(), &[3; 100]).unwrap();
        j += 1;
    }
    // The put that rolled segment 1 landed in segment 2: overwrite it too.
    engine.put(format!("keep{}", i - 1).as_bytes(), &[2; 100]).unwrap();
    for k in 0..j {
        engine.put(format!("fill{k}").as_bytes(), &[4; 100]).unwrap();
    }
    engine.sync().unwrap();
    engine.for_testing_background_round().unwrap();
    assert!(!dir.path().join("0000000002.log").exists(), "segment 2 was merged");
    assert!(dir.path().join("0000000001.log").exists(), "segment 1 is mostly live");
    assert_eq!(engine.for_testing_unread_merges(), 0, "segment 2 had a tombstone to copy");
    assert_eq!(engine.get(b"gone").unwrap(), None);
    drop(engine);
    let reopened = LogEngine::open(dir.path(), &options).unwrap();
    assert_eq!(reopened.get(b"gone").unwrap(), None, "the delete survives the merge");
    assert_eq!(reopened.stats().entries, u64::from(i + j));
}

/// A merge candidate that still holds a live record waits some rounds, and the thread keeps
/// running rounds for it with no further write, until it is merged.
#[test]
fn log_merge_candidates_are_merged_after_they_settle_without_writes() {
    let dir = tempfile::tempdir().unwrap();
    let options = merge_options(2);
    let engine = LogEngine::open(dir.path(), &options).unwrap();
    engine.put(b"stays", &[9; 100]).unwrap();
    for round in 0..2u32 {
        for i in 0..100u32 {
            engine.put(&i.to_be_bytes(), &round.to_le_bytes().repeat(100)).unwrap();
        }
    }
    engine.sync().unwrap();
    // The thread ran one round for the last write; the candidate waits more rounds than
    // that, which the thread runs without any write.
    let first = dir.path().join("0000000001.log");
    wait_for("the candidate's merge", || !first.exists());
    assert_eq!(engine.get(b"stays").unwrap(), Some(vec![9; 100]));
}

/// Snapshots taken while writers write lose nothing; they delete the log they replace, and a
/// restart (latest snapshot plus log replay) gives back the same data.
#[test]
fn buffer_snapshot_under_concurrent_writes_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let buffer = Arc::new(BufferEngine::open(dir.path(), &small_options()).unwrap());
    let engine: Arc<dyn StorageEngine> = buffer.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let snapshotter = {
        let buffer = Arc::clone(&buffer);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut taken = 0;
            while !stop.load(Ordering::Relaxed) {
                buffer.for_testing_snapshot().unwrap();
                taken += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            taken
        })
    };
    let model = hammer(&engine, 100);
    stop.store(true, Ordering::Relaxed);
    assert!(snapshotter.join().unwrap() > 1);
    assert_eq!(contents(&*engine), model);
    engine.sync().unwrap();
    drop(engine);
    drop(buffer);
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let snapshots = names.iter().filter(|n| n.ends_with(".snap")).count();
    assert_eq!(snapshots, 1, "older snapshots are removed: {names:?}");
    assert!(!names.contains(&"0000000001.log".to_owned()), "replaced log is removed: {names:?}");
    let reopened = BufferEngine::open(dir.path(), &small_options()).unwrap();
    assert_eq!(contents(&reopened), model);
}

/// A damaged snapshot makes open fail with `Corrupt` (the log it replaced is gone), rather
/// than come back with data silently missing.
#[test]
fn buffer_damaged_snapshot_is_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = BufferEngine::open(dir.path(), &small_options()).unwrap();
        for i in 0..500u32 {
            engine.put(&i.to_be_bytes(), b"some value").unwrap();
        }
        engine.for_testing_snapshot().unwrap();
    }
    let snapshot = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "snap"))
        .unwrap();
    let mut bytes = fs::read(&snapshot).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    fs::write(&snapshot, bytes).unwrap();
    let err = BufferEngine::open(dir.path(), &small_options()).unwrap_err();
    assert!(matches!(err, EngineError::Corrupt { .. }), "{err}");
}

/// Writes visible in the pending buffer, in written segments and across a roll all read
/// back, for both engines; values as large as a segment get a segment of their own.
#[test]
fn values_larger_than_a_segment() {
    for open in [
        |dir: &Path| {
            Arc::new(LogEngine::open(dir, &small_options()).unwrap()) as Arc<dyn StorageEngine>
        },
        |dir: &Path| {
            Arc::new(BufferEngine::open(dir, &small_options()).unwrap()) as Arc<dyn StorageEngine>
        },
    ] {
        let dir = tempfile::tempdir().unwrap();
        let big = vec![0xabu8; 100 << 10];
        {
            let engine = open(dir.path());
            engine.put(b"small", b"1").unwrap();
            engine.put(b"big", &big).unwrap();
            engine.put(b"after", b"2").unwrap();
            assert_eq!(engine.get(b"big").unwrap().as_deref(), Some(&big[..]));
            engine.sync().unwrap();
        }
        let engine = open(dir.path());
        assert_eq!(engine.get(b"big").unwrap().as_deref(), Some(&big[..]));
        assert_eq!(engine.get(b"after").unwrap(), Some(b"2".to_vec()));
    }
}

/// When recovery cuts the log back past the snapshot's first segment (here: that segment's
/// header is destroyed), new writes still go to a segment the next restart replays.
#[test]
fn buffer_writes_after_a_cut_behind_the_snapshot_survive() {
    let dir = tempfile::tempdir().unwrap();
    {
        let engine = BufferEngine::open(dir.path(), &small_options()).unwrap();
        for i in 0..300u32 {
            engine.put(&i.to_be_bytes(), b"before").unwrap();
        }
        engine.for_testing_snapshot().unwrap();
        engine.sync().unwrap();
    }
    let mut segments: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    let first = segments.first().unwrap().clone();
    let mut bytes = fs::read(&first).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&first, bytes).unwrap();
    {
        let engine = BufferEngine::open(dir.path(), &small_options()).unwrap();
        assert_eq!(engine.get(&7u32.to_be_bytes()).unwrap(), Some(b"before".to_vec()));
        engine.put(b"after the cut", b"kept").unwrap();
        engine.sync().unwrap();
    }
    let engine = BufferEngine::open(dir.path(), &small_options()).unwrap();
    assert_eq!(engine.get(b"after the cut").unwrap(), Some(b"kept".to_vec()));
    assert_eq!(engine.stats().entries, 301);
}

/// Poll `done` until it holds; fails after 30 s (a hang, not a slow machine).
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never happened: {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A `log` engine nobody writes to runs no background round, however many intervals pass;
/// one write wakes its thread for one round, after which it sleeps again.
#[test]
fn log_background_sleeps_while_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = small_options();
    options.background_interval_ms = 1;
    let engine = LogEngine::open(dir.path(), &options).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(engine.for_testing_background_rounds(), 0, "no round without a write");
    engine.put(b"k", b"v").unwrap();
    wait_for("a round after the write", || engine.for_testing_background_rounds() >= 1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(engine.for_testing_background_rounds(), 1, "one write, one round");
}

/// Work found at open (sealed segments without hint files) gets its round without any write.
#[test]
fn log_background_does_the_work_found_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = small_options();
    options.background_interval_ms = 3_600_000;
    options.merge_dead_percent = 100;
    let engine = LogEngine::open(dir.path(), &options).unwrap();
    for i in 0..200u32 {
        engine.put(&i.to_be_bytes(), &[7; 500]).unwrap();
    }
    engine.sync().unwrap();
    let sealed = engine.for_testing_sealed_segments();
    assert!(sealed.len() >= 2, "200 records of 500 bytes roll 32 KiB segments");
    drop(engine);
    let hints = || {
        fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".hint"))
            .count()
    };
    assert_eq!(hints(), 0, "the first engine's thread never ran");
    options.background_interval_ms = 1;
    let engine = LogEngine::open(dir.path(), &options).unwrap();
    wait_for("hints of the segments found at open", || hints() == sealed.len());
    assert_eq!(engine.for_testing_background_rounds(), 1);
}

/// A `btree` engine nobody writes to never wakes its commit thread; a write wakes it once and
/// is committed with no `sync` caller, and then the thread sleeps again.
#[test]
fn btree_committer_sleeps_while_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = EngineOptions::default();
    options.flush_interval_ms = 1;
    let engine = BtreeEngine::open(dir.path(), &options).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(engine.for_testing_committer_wakes(), 0, "no wake-up without a write");
    engine.put(b"k", b"v").unwrap();
    wait_for("a commit of the write", || engine.for_testing_commits() >= 1);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(engine.for_testing_committer_wakes(), 1, "one write, one wake-up");
    assert_eq!(engine.for_testing_commits(), 1);
}

/// Parts appended to values survive merges (which fold a chain into one record, wherever
/// its parts lie) and restarts through hint files, while writers keep putting and appending;
/// dead parts are merged away.
#[test]
fn log_merge_and_hints_keep_appended_parts() {
    use cartwheel_engines::chain;
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(LogEngine::open(dir.path(), &small_options()).unwrap());
    let engine: Arc<dyn StorageEngine> = log.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let readers = spawn_readers(&engine, &stop);
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    // Ten steady keys gather parts all along (never put again), spread over every
    // segment; the other keys are put over and over, so the segments die around the parts.
    // Their values stay in the first segments with cold keys that are never written again,
    // so those are never merged, and a merge meets parts whose value lies elsewhere.
    for k in 0..10u32 {
        let (key, value) = (format!("steady{k}").into_bytes(), vec![5u8; 30]);
        engine.put(&key, &value).unwrap();
        model.insert(key, value);
    }
    for k in 0..1000u32 {
        let (key, value) = (format!("cold{k}").into_bytes(), vec![6u8; 40]);
        engine.put(&key, &value).unwrap();
        model.insert(key, value);
    }
    for i in 0..6000u32 {
        if i % 10 == 0 {
            let key = format!("steady{}", (i / 10) % 10).into_bytes();
            let part = i.to_le_bytes().repeat(3);
            let parts = engine.append(&key, &part).unwrap().expect("the key has a value");
            assert!(parts >= 1);
            let stored = model.get_mut(&key).unwrap();
            *stored = chain::push(stored, &part);
        } else if i % 7 == 0 && model.contains_key(&format!("k{}", i % 150).into_bytes()) {
            let key = format!("k{}", i % 150).into_bytes();
            let part = i.to_le_bytes().to_vec();
            engine.append(&key, &part).unwrap().expect("the key has a value");
            let stored = model.get_mut(&key).unwrap();
            *stored = chain::push(stored, &part);
        } else {
            let key = format!("k{}", i % 150).into_bytes();
            let value = [&[5u8][..], &i.to_le_bytes().repeat(6)].concat();
            engine.put(&key, &value).unwrap();
            model.insert(key, value);
        }
        if i % 500 == 0 {
            // A merge reads sealed segments as written to their files.
            engine.sync().unwrap();
            log.for_testing_background_round().unwrap();
        }
    }
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.join().unwrap();
    }
    assert_eq!(contents(&*engine), model);
    engine.sync().unwrap();
    log.for_testing_background_round().unwrap();
    assert_eq!(contents(&*engine), model, "after a merge");
    let sealed = log.for_testing_sealed_segments();
    assert!(sealed.len() < 20, "merge kept {} sealed segments", sealed.len());
    assert!(engine.stats().merges > 0);
    assert_eq!(engine.stats().entries, model.len() as u64);
    engine.sync().unwrap();
    drop(engine);
    drop(log);
    let reopened = LogEngine::open(dir.path(), &small_options()).unwrap();
    assert_eq!(contents(&reopened), model, "after a restart through hints");
    for (key, value) in &model {
        assert_eq!(reopened.get(key).unwrap().as_ref(), Some(value));
    }
}

/// Appends survive snapshots taken while they are made, and a restart replays none twice:
/// a snapshot walks the map while writes go on, so it may hold appends that its log replays
/// again. Method: a writer puts and appends while a thread snapshots every few ms; then
/// the engine is reopened from its snapshot and log and compared with the model, several
/// times over.
#[test]
fn buffer_appends_survive_concurrent_snapshots_and_replay_once() {
    use cartwheel_engines::chain;
    let dir = tempfile::tempdir().unwrap();
    let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for round in 0..4u32 {
        let buffer = Arc::new(BufferEngine::open(dir.path(), &small_options()).unwrap());
        assert_eq!(contents(&*buffer), model, "after reopen {round}");
        let stop = Arc::new(AtomicBool::new(false));
        let snapshotter = {
            let buffer = Arc::clone(&buffer);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    buffer.for_testing_snapshot().unwrap();
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        for i in 0..3000u32 {
            let key = format!("k{}", i % 40).into_bytes();
            if i % 9 == 0 || !model.contains_key(&key) {
                let value = [&[5u8][..], &i.to_le_bytes().repeat(8)].concat();
                buffer.put(&key, &value).unwrap();
                model.insert(key, value);
            } else {
                let part = (round * 10_000 + i).to_le_bytes().to_vec();
                buffer.append(&key, &part).unwrap().expect("the key has a value");
                let stored = model.get_mut(&key).unwrap();
                *stored = chain::push(stored, &part);
            }
        }
        stop.store(true, Ordering::Relaxed);
        snapshotter.join().unwrap();
        assert_eq!(contents(&*buffer), model);
        buffer.sync().unwrap();
    }
    let reopened = BufferEngine::open(dir.path(), &small_options()).unwrap();
    assert_eq!(contents(&reopened), model, "after the last reopen");
}

/// A background round that meets a sealed segment whose tail the flusher has not written
/// yet leaves it for a later round: it neither fails (as if the segment were damaged) nor
/// gives up on its hint. Method: writes with no sync, a round after each few, on a log
/// whose flusher waits long between flushes of its own; then, once synced, every sealed
/// segment gets its hint.
#[test]
fn log_rounds_wait_for_segments_the_flusher_has_not_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = merge_options(3_600_000);
    options.flush_interval_ms = 1_000;
    let log = LogEngine::open(dir.path(), &options).unwrap();
    for i in 0..4_000u32 {
        let key = format!("k{}", i % 300).into_bytes();
        log.put(&key, &i.to_le_bytes().repeat(10)).unwrap();
        if i % 25 == 0 {
            log.for_testing_background_round().unwrap();
        }
    }
    log.sync().unwrap();
    log.for_testing_background_round().unwrap();
    for id in log.for_testing_sealed_segments() {
        let hint = dir.path().join(format!("{id:010}.hint"));
        assert!(hint.exists(), "sealed segment {id} has a hint once written");
    }
}
