//! Unit tests of the memory log: appends, rolls, recovery, spares, group commit.

use super::*;
use crate::data_dir::lock_dir;

struct Collect(Vec<(Location, RecordKind, Vec<u8>, Vec<u8>)>);

impl Replay for Collect {
    fn segment(&mut self, _segment: u32, _last: bool) -> Result<ReplayMode, EngineError> {
        Ok(ReplayMode::Scan)
    }
    fn record(&mut self, at: Location, record: Record<'_>) -> Result<(), EngineError> {
        self.0.push((at, record.kind, record.key.to_vec(), record.value.to_vec()));
        Ok(())
    }
}

fn open(dir: &Path, segment_bytes_max: u64) -> (MemLog, Collect) {
    let mut collect = Collect(Vec::new());
    let options =
        MemLogOptions { segment_bytes_max, flush_interval_ms: 5, ..MemLogOptions::default() };
    let log = MemLog::open(dir, lock_dir(dir).unwrap(), options, &mut collect).unwrap();
    (log, collect)
}

/// Every record at `at` reads back with the value `value(i)` gives its index.
fn assert_reads_back(log: &MemLog, at: &[Location], value: impl Fn(usize) -> Vec<u8>) {
    for (i, &loc) in at.iter().enumerate() {
        let read = log.read(loc, |r| r.value.to_vec()).unwrap();
        assert_eq!(read, value(i), "record {i} at {loc:?}");
    }
}

/// The locations a replay collected, in order.
fn replayed(collected: &Collect) -> Vec<Location> {
    collected.0.iter().map(|c| c.0).collect()
}

/// Appends are readable at once, survive a reopen, and roll over into new segments.
#[test]
fn append_read_roll_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 4096);
    let mut at = Vec::new();
    for i in 0..200u32 {
        let value = vec![i as u8; 50];
        at.push(log.append(RecordKind::Put, &i.to_be_bytes(), &value).unwrap());
    }
    assert_reads_back(&log, &at, |i| vec![i as u8; 50]);
    assert!(log.sealed_segments().len() >= 2, "200 records of 65 bytes roll 4 KiB segments");
    log.sync().unwrap();
    drop(log);
    let (log, collected) = open(dir.path(), 4096);
    assert_eq!(collected.0.len(), 200);
    assert_eq!(replayed(&collected), at);
    let loc = log.append(RecordKind::Tombstone, b"x", b"").unwrap();
    assert!(loc > at[199], "appends resume after the recovered end");
}

/// What the directory holds now, before a clean close could write anything more.
fn copy_files(from: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "LOCK" {
            // The spare preparer may rename a spare it is making while this copies:
            // a file gone meanwhile held no record.
            match fs::copy(entry.path(), copy.path().join(entry.file_name())) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                copied => {
                    copied.unwrap();
                }
            }
        }
    }
    copy
}

/// Rolls leave the old segment's last bytes and its fdatasync to the flusher: records in
/// segments sealed but not yet written read back at once, and after a `sync` every one of
/// them survives a power loss (the durable image), in order.
#[test]
fn records_of_sealed_unwritten_segments_read_back_and_sync() {
    let dir = tempfile::tempdir().unwrap();
    let mut collect = Collect(Vec::new());
    // The flusher stays asleep unless a caller syncs.
    let options = MemLogOptions {
        segment_bytes_max: 4096,
        flush_interval_ms: 3_600_000,
        ..MemLogOptions::default()
    };
    let log =
        MemLog::open(dir.path(), lock_dir(dir.path()).unwrap(), options, &mut collect).unwrap();
    let mut at = Vec::new();
    for i in 0..300u32 {
        at.push(log.append(RecordKind::Put, &i.to_be_bytes(), &[i as u8; 50]).unwrap());
    }
    assert!(at.last().unwrap().segment >= 4, "several rolls: {:?}", at.last());
    assert_reads_back(&log, &at, |i| vec![i as u8; 50]);
    log.sync().unwrap();
    let image = tempfile::tempdir().unwrap();
    log.durable_image(image.path()).unwrap();
    let (_, collected) = open(image.path(), 4096);
    assert_eq!(replayed(&collected), at);
}

/// A spare made ahead carries the next segment's name while the active segment has no
/// seal: a crash then (the files copied as they are) recovers every synced record, deletes
/// the spare, and appends resume in the active segment.
#[test]
fn a_named_spare_is_dropped_by_recovery_and_by_close() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 10);
    let spare = segment_path(dir.path(), 2);
    let mut at = Vec::new();
    let mut i = 0u32;
    // Past half of the first segment the spare of segment 2 is asked for.
    while at.len() < 600 {
        at.push(log.append(RecordKind::Put, &i.to_be_bytes(), &[7; 50]).unwrap());
        i += 1;
    }
    log.sync().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !spare.exists() {
        assert!(std::time::Instant::now() < deadline, "no spare made");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert_eq!(log.active_segment(), 1);
    let copy = copy_files(dir.path());
    drop(log);
    assert!(!spare.exists(), "a clean close removes the unused spare");
    let (log, collected) = open(copy.path(), 64 << 10);
    assert_eq!(replayed(&collected), at);
    assert!(!segment_path(copy.path(), 2).exists(), "recovery deleted the spare");
    assert_eq!(log.append(RecordKind::Put, b"k", b"v").unwrap().segment, 1);
}

/// Removed segments leave no file behind once `remove_segments` returns, and the others
/// read back. A removal cut short (the renamed file still there, half cut, as a crash in
/// the middle of the steps leaves it) is deleted by the next open, which keeps every
/// remaining segment: the half-cut file no longer has a segment name, so it cannot end
/// the log.
#[test]
fn removed_segments_go_and_a_cut_short_removal_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 4096);
    let mut at = Vec::new();
    for i in 0..300u32 {
        at.push(log.append(RecordKind::Put, &i.to_be_bytes(), &[i as u8; 50]).unwrap());
    }
    log.sync().unwrap();
    let sealed: Vec<u32> = log.sealed_segments().iter().map(|(id, _)| *id).collect();
    assert!(sealed.len() >= 4, "several sealed segments: {sealed:?}");
    let (gone, kept) = (sealed[1], sealed[2]);
    // A crash during an earlier removal of `kept`'s neighbour: its renamed copy, half cut.
    let leftover = segment::retired_path(&segment_path(dir.path(), kept));
    fs::copy(segment_path(dir.path(), kept), &leftover).unwrap();
    let half = fs::metadata(&leftover).unwrap().len() / 2;
    fs::OpenOptions::new().write(true).open(&leftover).unwrap().set_len(half).unwrap();
    log.remove_segments(&[gone]).unwrap();
    assert!(!segment_path(dir.path(), gone).exists(), "the removed segment is gone");
    let names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().filter(|n| n.contains("retired")).count() == 1,
        "only the planted leftover is a retired file: {names:?}"
    );
    for (i, &loc) in at.iter().enumerate() {
        if loc.segment != gone {
            assert_eq!(log.read(loc, |r| r.value.to_vec()).unwrap(), vec![i as u8; 50]);
        }
    }
    drop(log);
    let (_, collected) = open(dir.path(), 4096);
    assert!(!leftover.exists(), "open deletes what a cut-short removal left");
    let expected: Vec<Location> = at.iter().copied().filter(|l| l.segment != gone).collect();
    assert_eq!(replayed(&collected), expected);
}

/// An idle log's flusher never wakes: its wake-up count stays 0 over many flush
/// intervals. The first append wakes it and is flushed without any `sync` caller; once
/// flushed, the count stops again.
#[test]
fn an_idle_flusher_sleeps_until_an_append() {
    let dir = tempfile::tempdir().unwrap();
    let options = MemLogOptions { flush_interval_ms: 1, ..MemLogOptions::default() };
    let log =
        MemLog::open(dir.path(), lock_dir(dir.path()).unwrap(), options, &mut Collect(vec![]))
            .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(log.for_testing_flusher_wakes(), 0, "no wake-up while nothing is appended");
    log.append(RecordKind::Put, b"k", b"v").unwrap();
    // Made durable by the flusher on its own: no one calls `sync`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while log.syncs() == 0 {
        assert!(std::time::Instant::now() < deadline, "the append was never flushed");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    log.sync().unwrap();
    let wakes = log.for_testing_flusher_wakes();
    assert!(wakes >= 1, "the append woke the flusher");
    std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(log.for_testing_flusher_wakes(), wakes, "idle again after the flush");
    // A roll with nothing appended since wakes it to make the seal durable.
    let before = *lock(&log.shared.durable);
    log.roll().unwrap();
    while *lock(&log.shared.durable) == before {
        assert!(std::time::Instant::now() < deadline, "the seal was never synced");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    assert!(log.for_testing_flusher_wakes() > wakes, "the roll woke the flusher");
}

/// Once a flush failed (an `fdatasync` error, recorded as the flusher records it), every
/// later append, roll and sync is refused, not only the next sync.
#[test]
fn a_failed_flush_refuses_every_later_write() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 10);
    log.append(RecordKind::Put, b"before", b"v").unwrap();
    log.sync().unwrap();
    let injected = EngineError::io("fdatasync segment")(std::io::Error::other("injected"));
    log.shared.record_failure(&mut lock(&log.shared.sync), &injected);
    assert!(log.failed());
    assert!(matches!(log.append(RecordKind::Put, b"after", b"v"), Err(EngineError::Io { .. })));
    assert!(matches!(log.roll(), Err(EngineError::Io { .. })));
    assert!(matches!(log.sync(), Err(EngineError::Io { .. })));
    assert_eq!(
        log.read(Location { segment: 1, offset: SEGMENT_HEADER_BYTES as u32 }, |r| r.key.to_vec())
            .unwrap(),
        b"before"
    );
}

/// A record larger than a segment gets a segment of its own, made in place of the spare
/// already entered in the segment table under that id: every record reads back, from
/// the table and after a reopen, and the sealed segments listed are those before the
/// active one, never a spare.
#[test]
fn a_record_larger_than_a_segment_replaces_its_spare() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 4096);
    let mut at = Vec::new();
    let value = |i: usize| vec![i as u8; if i == 40 { 10_000 } else { 100 }];
    for i in 0..40 {
        at.push(log.append(RecordKind::Put, &[i as u8], &value(i)).unwrap());
    }
    // Spares are asked for at half full; wait until the next one is in the table.
    let next = log.active_segment() + 1;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !lock(&log.shared.spare).ready.iter().any(|s| s.segment.id == next) {
        assert!(std::time::Instant::now() < deadline, "spare {next} never made");
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    for i in 40..60 {
        at.push(log.append(RecordKind::Put, &[i as u8], &value(i)).unwrap());
    }
    assert_eq!(at[40].segment, next, "the large record took the spare's id");
    let active = log.active_segment();
    let sealed = log.sealed_segments();
    assert!(sealed.iter().all(|(id, _)| *id < active), "{sealed:?} before {active}");
    assert!(sealed.iter().any(|&(id, len)| id == next && len > 10_000), "{sealed:?}");
    assert_reads_back(&log, &at, value);
    log.sync().unwrap();
    drop(log);
    let (_, collected) = open(dir.path(), 4096);
    assert_eq!(replayed(&collected), at);
}

/// `sync_then` answers `Ok` only once the appends before it are durable (the durable mark
/// covers them), at once when nothing is pending, and with the failure, never `Ok`, for a
/// caller queued when a flush fails or arriving after.
#[test]
fn sync_then_answers_once_durable_or_failed() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 10);
    let answer = || {
        let (send, receive) = std::sync::mpsc::channel();
        let done: crate::SyncDone = Box::new(move |outcome| send.send(outcome).unwrap());
        (done, receive)
    };
    let at = log.append(RecordKind::Put, b"k", b"v").unwrap();
    let (done, answered) = answer();
    log.sync_then(done);
    answered.recv().unwrap().unwrap();
    let durable = *lock(&log.shared.durable);
    assert!(durable > (at.segment, u64::from(at.offset)), "durable to {durable:?}");
    assert!(answered.recv().is_err(), "answered exactly once");
    // Nothing appended since: answered before `sync_then` returns.
    let (done, answered) = answer();
    log.sync_then(done);
    assert!(answered.try_recv().unwrap().is_ok());
    // A caller waiting for more than will ever be durable, then a failed flush.
    let (done, answered) = answer();
    log.shared.enqueue(u64::MAX, flusher::Waiter::Call(done));
    let injected = EngineError::io("fdatasync segment")(std::io::Error::other("injected"));
    log.shared.record_failure(&mut lock(&log.shared.sync), &injected);
    log.shared.flush_wanted.notify_one();
    assert!(matches!(answered.recv().unwrap(), Err(EngineError::Io { .. })));
    let (done, answered) = answer();
    log.sync_then(done);
    assert!(matches!(answered.try_recv().unwrap(), Err(EngineError::Io { .. })));
}

/// A `sync_then` caller still waiting when the log closes is answered by the close's last
/// flush, and its append is on disk; after a failed flush it is answered with the failure.
#[test]
fn sync_then_waiting_at_close_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    let options = MemLogOptions { flush_interval_ms: 60_000, ..MemLogOptions::default() };
    let log =
        MemLog::open(dir.path(), lock_dir(dir.path()).unwrap(), options, &mut Collect(vec![]))
            .unwrap();
    log.append(RecordKind::Put, b"k", b"v").unwrap();
    let (send, answered) = std::sync::mpsc::channel();
    // Queued as `sync_then` queues, without asking the flusher to flush now.
    let target = log.shared.appended.load(Ordering::Acquire);
    lock(&log.shared.sync).waiters.push((
        target,
        flusher::Waiter::Call(Box::new(move |outcome| send.send(outcome).unwrap())),
    ));
    drop(log);
    answered.recv().unwrap().unwrap();
    let (log, collected) = open(dir.path(), 64 << 10);
    assert_eq!(collected.0.len(), 1);
    // After a failed flush, a waiter left at close gets the failure, even though the
    // close's own flush may succeed.
    log.append(RecordKind::Put, b"k2", b"v").unwrap();
    let injected = EngineError::io("fdatasync segment")(std::io::Error::other("injected"));
    log.shared.record_failure(&mut lock(&log.shared.sync), &injected);
    let (send, answered) = std::sync::mpsc::channel();
    let target = log.shared.appended.load(Ordering::Acquire);
    lock(&log.shared.sync).waiters.push((
        target,
        flusher::Waiter::Call(Box::new(move |outcome| send.send(outcome).unwrap())),
    ));
    drop(log);
    assert!(matches!(answered.recv().unwrap(), Err(EngineError::Io { .. })));
}

/// With the io_uring flusher (where this kernel allows io_uring), synced appends survive
/// a reopen exactly as with the plain one.
#[test]
fn io_uring_flusher_syncs() {
    let dir = tempfile::tempdir().unwrap();
    let options = MemLogOptions {
        segment_bytes_max: 4096,
        flusher: FlusherBackend::IoUring,
        ..MemLogOptions::default()
    };
    let log =
        MemLog::open(dir.path(), lock_dir(dir.path()).unwrap(), options, &mut Collect(vec![]))
            .unwrap();
    if sys::Uring::new().is_ok() {
        assert_eq!(log.flusher_backend(), FlusherBackend::IoUring);
    }
    for i in 0..100u32 {
        log.append(RecordKind::Put, &i.to_be_bytes(), &[i as u8; 40]).unwrap();
        if i % 10 == 0 {
            log.sync().unwrap();
        }
    }
    log.sync().unwrap();
    let copy = copy_files(dir.path());
    drop(log);
    let (_, collected) = open(copy.path(), 4096);
    assert_eq!(collected.0.len(), 100);
}

/// While the flusher writes without the appenders' lock, every record reads back whole,
/// wherever it is at that moment: pending, in flight to its file, or in the file. Two
/// appenders, a syncer and a reader run at once over small segments; the reader reads the
/// newest records, which are the ones the flusher is writing.
#[test]
fn records_read_back_while_the_flusher_writes_them() {
    read_back_while_flushing(64 << 10, 4_000, |i| 700 + i % 300);
}

/// The same with records of 100-300 KiB: an appender past [`PENDING_BYTES_MAX`] writes
/// the pending bytes itself, after waiting for the flusher's write in flight.
#[test]
fn large_records_read_back_while_appenders_write_them_too() {
    read_back_while_flushing(8 << 20, 300, |i| (100 << 10) + (i % 3) * (100 << 10));
}

/// Counts one writer thread as done when dropped.
struct Done<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Two appenders of `records` records each (of `len(i)` bytes), a syncer and a reader of
/// the newest records, at once; then every record reads back, and again after a reopen.
fn read_back_while_flushing(segment_bytes_max: u64, records: usize, len: fn(usize) -> usize) {
    use std::sync::atomic::AtomicUsize;
    let dir = tempfile::tempdir().unwrap();
    let mut collect = Collect(Vec::new());
    let options = MemLogOptions { segment_bytes_max, flush_interval_ms: 1, ..Default::default() };
    let log =
        MemLog::open(dir.path(), lock_dir(dir.path()).unwrap(), options, &mut collect).unwrap();
    let value = |writer: usize, i: usize| vec![(writer * 31 + i) as u8; len(i)];
    let written: Mutex<Vec<(usize, usize, Location)>> = Mutex::new(Vec::new());
    let done = AtomicUsize::new(0);
    let reads = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for writer in 0..2usize {
            let (log, written, done) = (&log, &written, &done);
            s.spawn(move || {
                // Counted when the thread ends, panicking or not, so the others stop then.
                let _done = Done(done);
                for i in 0..records {
                    let key = (writer * 100_000 + i).to_be_bytes();
                    let at = log.append(RecordKind::Put, &key, &value(writer, i)).unwrap();
                    written.lock().unwrap().push((writer, i, at));
                }
            });
        }
        s.spawn(|| {
            while done.load(Ordering::SeqCst) < 2 {
                log.sync().unwrap();
            }
        });
        s.spawn(|| {
            while done.load(Ordering::SeqCst) < 2 {
                let newest: Vec<_> = {
                    let written = written.lock().unwrap();
                    written.iter().rev().take(8).copied().collect()
                };
                for (writer, i, at) in newest {
                    let read = log.read(at, |r| r.value.to_vec()).unwrap();
                    assert_eq!(read, value(writer, i), "writer {writer}'s record {i} at {at:?}");
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    });
    assert!(reads.load(Ordering::Relaxed) > 0, "the reader read while the writers wrote");
    let written = written.into_inner().unwrap();
    for &(writer, i, at) in &written {
        assert_eq!(log.read(at, |r| r.value.to_vec()).unwrap(), value(writer, i));
    }
    log.sync().unwrap();
    drop(log);
    let (_, collected) = open(dir.path(), segment_bytes_max);
    assert_eq!(collected.0.len(), written.len(), "every record is in the files");
}

/// A spare is not fsynced before it is named (`active.rs`, "Why a named spare is safe"): a
/// crash after the roll into it, before any of its records was synced, may leave it named
/// without a valid header. Recovery then ends the log before it, with every synced record,
/// and appends resume in a fresh segment of that id.
#[test]
fn a_spare_whose_header_never_reached_the_disk_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 10);
    let mut at = Vec::new();
    for i in 0..100u32 {
        at.push(log.append(RecordKind::Put, &i.to_be_bytes(), &[9; 50]).unwrap());
    }
    log.sync().unwrap();
    assert_eq!(log.roll().unwrap(), 2);
    // The roll asks the flusher to sync the seal of segment 1 at once.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !lock(&log.shared.active).sealed.is_empty() {
        assert!(std::time::Instant::now() < deadline, "the seal was never synced");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let copy = copy_files(dir.path());
    drop(log);
    let header = fs::OpenOptions::new().write(true).open(segment_path(copy.path(), 2)).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&header, &[0; SEGMENT_HEADER_BYTES], 0).unwrap();
    drop(header);
    let (log, collected) = open(copy.path(), 64 << 10);
    assert_eq!(replayed(&collected), at, "every synced record, in order");
    let next = log.append(RecordKind::Put, b"k", b"v").unwrap();
    assert_eq!(next.segment, 2, "appends resume in a fresh segment 2");
    log.sync().unwrap();
    drop(log);
    let (_, collected) = open(copy.path(), 64 << 10);
    assert_eq!(collected.0.len(), 101);
}

/// Spares asked for ahead hold 16 MiB at most beyond the first two: default 64 MiB segments
/// keep two, small segments get up to sixteen.
#[test]
fn spares_ahead_are_bounded_by_their_bytes() {
    use super::active::spares_ahead;
    assert_eq!(spares_ahead(64 << 20), 2);
    assert_eq!(spares_ahead(4 << 20), 4);
    assert_eq!(spares_ahead(512 << 10), 16);
    assert_eq!(spares_ahead(4 << 10), 16);
}

/// `prepare_roll` returns however appends roll around it: when an append rolls to the
/// segment it waits for between its look at the active segment and its wait, that spare is
/// taken, never to be ready again, and the wait must still end. Appends of 4 KiB roll 64 KiB
/// segments every 16 calls here, so that race comes up many times a run (and the run makes
/// a few hundred segments at most: each is a file held open).
#[test]
fn prepare_roll_returns_while_appends_roll() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 64 << 10);
    let log = Arc::new(log);
    let appending = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let appender = {
        let (log, appending) = (Arc::clone(&log), Arc::clone(&appending));
        std::thread::spawn(move || {
            for _ in 0..4_000 {
                log.append(RecordKind::Put, b"key", &[7; 4096]).unwrap();
            }
            appending.store(false, Ordering::Relaxed);
        })
    };
    let (finished, watch) = std::sync::mpsc::channel();
    let preparer = {
        let log = Arc::clone(&log);
        std::thread::spawn(move || {
            let mut calls = 0u64;
            while appending.load(Ordering::Relaxed) {
                log.prepare_roll();
                calls += 1;
            }
            finished.send(calls).unwrap();
        })
    };
    let outcome = watch.recv_timeout(std::time::Duration::from_secs(30));
    appender.join().unwrap();
    assert!(outcome.is_ok(), "prepare_roll waited for a spare that a roll had taken");
    preparer.join().unwrap();
}

/// A segment whose header is whole but names a format version this build does not know (a
/// later version wrote it) is refused with `Corrupt`, and nothing is cut or deleted; a
/// version 1 segment (written before `Append` records) is read as it is.
#[test]
fn segments_of_unknown_versions_are_refused_and_kept() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = open(dir.path(), 4096);
    let mut at = Vec::new();
    for i in 0..200u32 {
        at.push(log.append(RecordKind::Put, &i.to_be_bytes(), &[i as u8; 50]).unwrap());
    }
    log.sync().unwrap();
    drop(log);
    let files = |dir: &Path| {
        let mut names: Vec<_> =
            fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        names
    };
    let set_version = |id: u32, version: u8| {
        let file = OpenOptions::new().write(true).open(segment_path(dir.path(), id)).unwrap();
        file.write_all_at(&format::segment_header(id, version), 0).unwrap();
        file.sync_all().unwrap();
    };
    set_version(1, 1);
    let (log, collected) = open(dir.path(), 4096);
    assert_eq!(replayed(&collected), at, "a version 1 segment reads as it is");
    drop(log);
    let before = files(dir.path());
    set_version(2, 9);
    let options = MemLogOptions { segment_bytes_max: 4096, ..MemLogOptions::default() };
    let opened =
        MemLog::open(dir.path(), lock_dir(dir.path()).unwrap(), options, &mut Collect(vec![]));
    let err = opened.expect_err("a segment of version 9 is refused");
    assert!(matches!(err, EngineError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("version 9"), "{err}");
    assert_eq!(files(dir.path()), before, "nothing was cut or deleted");
}
