//! # The buffer engine: the whole data set in memory, the memory log as write-ahead log
//!
//! Reads never touch the disk: every entry lives in the ordered map of a
//! [`MemoryEngine`], reused as is. Every write is first appended to the
//! [memory log](crate::memlog) and then applied to the map, both under one `write_order`
//! mutex, so that the order of records in the log is the order in which the map changed;
//! `sync` is the log's group commit (one `fdatasync` for every waiting writer, and one on its
//! own every `flush_interval_ms`).
//!
//! An `append` ([`crate::chain`]) writes an `Append` record holding the part (and the
//! value's piece count before it, which makes replaying it twice harmless: see
//! `APPEND_PIECES_BYTES`) and extends the value in the map; replay does the same, and a
//! snapshot holds whole values.
//!
//! ## Snapshots
//! The log would grow without end, so a background thread takes a *snapshot* once the log
//! since the last one holds `snapshot_log_bytes` and more than the live data (so snapshots
//! cost at most about as much I/O as the writes they absorb). It looks every
//! `background_interval_ms` while writes come, and sleeps without a timer when none did:
//!
//! 1. Under `write_order`, the log is rolled: every record in a segment before the new
//!    active segment `s` has been applied to the map. A roll waits for no disk (the next
//!    segment is made before `write_order` is taken, and the old one is synced by the
//!    flusher), so writers wait only for the switch.
//! 2. The map is walked in chunks of [`SNAPSHOT_CHUNK_BYTES`], taking its read lock per
//!    chunk only (a chunk is copied out under it, encoded and written after), into
//!    `snapshot-<s>.tmp`, written out to the device a MiB at a time with pauses
//!    (`SnapshotPace`); the file is fsynced, renamed to `snapshot-<s>.snap`, and the
//!    directory fsynced.
//! 3. Segments before `s` and older snapshots are deleted: renamed away, the directory
//!    fsynced, then freed a few MiB at a time (a crash midway leaves temporary files that
//!    the next open deletes).
//!
//! The walk is not a point-in-time copy: writes that land during it may or may not be in it.
//! That is fine because every record is absolute (a put carries the whole value, a delete
//! removes the key): restart loads the snapshot and replays every record from segment `s` on,
//! in order, so each key ends with its last write, whether or not the snapshot saw it.
//!
//! ## Restart
//! Latest valid snapshot, then replay of the log from its segment on. A snapshot is valid
//! when its header checks, every record passes its CRC and the end record's entry count
//! matches. If snapshot files exist but none is valid, the log before them is gone, so open
//! fails with [`EngineError::Corrupt`] rather than come back with silently lost data.
//!
//! ## Snapshot file layout
//!
//! | offset | size | field                                              |
//! |-------:|-----:|----------------------------------------------------|
//! |      0 |    6 | magic `b"CWSNAP"`                                  |
//! |      6 |    1 | format version ([`SNAPSHOT_VERSION`])              |
//! |      7 |    1 | reserved, zero                                     |
//! |      8 |    4 | first log segment to replay, u32 LE                |
//! |     12 |    4 | CRC32 of bytes 0..12                               |
//! |     16 |    … | one put record per entry (memory-log record format) |
//! |      … |   19 | end record, value: entry count, u64 LE             |

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::data_dir::{lock_dir, sync_dir};
use crate::idle::Background;
use crate::memlog::{
    decode_record, encode_record, record_bytes, retire_files, write_out, Location, MemLog,
    MemLogOptions, Record, RecordKind, Replay, ReplayMode, RECORD_HEADER_BYTES,
};
use crate::memory::MemoryEngine;
use crate::{check_sizes, EngineError, EngineKind, EngineOptions, EngineStats, StorageEngine};

/// Version byte of snapshot files.
pub const SNAPSHOT_VERSION: u8 = 1;
/// Bytes of entries copied out per hold of the map's read lock while writing a snapshot (at
/// least one entry): writers wait at most for one chunk's copy. Chunks of 1 024 entries
/// (1 MiB of 1 KiB values), encoded under the lock, stalled puts for 1.3-2 ms each while a
/// snapshot ran (docs/BENCHMARKS.md, "Writes off the appenders' lock").
pub const SNAPSHOT_CHUNK_BYTES: usize = 64 << 10;

const SNAPSHOT_MAGIC: &[u8; 6] = b"CWSNAP";
const SNAPSHOT_VERSION_AT: usize = SNAPSHOT_MAGIC.len();
const SNAPSHOT_SEGMENT_AT: usize = SNAPSHOT_VERSION_AT + 2;
const SNAPSHOT_CRC_AT: usize = SNAPSHOT_SEGMENT_AT + 4;
const SNAPSHOT_HEADER_BYTES: usize = SNAPSHOT_CRC_AT + 4;
const SNAPSHOT_PREFIX: &str = "snapshot-";
const SNAPSHOT_SUFFIX: &str = ".snap";
const SNAPSHOT_TEMP_SUFFIX: &str = ".tmp";

const _: () = assert!(SNAPSHOT_HEADER_BYTES == 16, "snapshot header is 16 bytes");

fn snapshot_header(segment: u32) -> [u8; SNAPSHOT_HEADER_BYTES] {
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    header[..SNAPSHOT_VERSION_AT].copy_from_slice(SNAPSHOT_MAGIC);
    header[SNAPSHOT_VERSION_AT] = SNAPSHOT_VERSION;
    header[SNAPSHOT_SEGMENT_AT..SNAPSHOT_CRC_AT].copy_from_slice(&segment.to_le_bytes());
    let crc = crc32fast::hash(&header[..SNAPSHOT_CRC_AT]);
    header[SNAPSHOT_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    header
}

fn snapshot_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{SNAPSHOT_PREFIX}{segment:010}{SNAPSHOT_SUFFIX}"))
}

/// Snapshot files in `dir` as `(segment, path)`, newest first. With `remove_unfinished`
/// (at open, when no snapshot can be in progress) unfinished ones are removed.
fn list_snapshots(dir: &Path, remove_unfinished: bool) -> Result<Vec<(u32, PathBuf)>, EngineError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).map_err(EngineError::io("list data directory"))? {
        let entry = entry.map_err(EngineError::io("list data directory"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(rest) = name.strip_prefix(SNAPSHOT_PREFIX) else { continue };
        if rest.ends_with(SNAPSHOT_TEMP_SUFFIX) {
            if !remove_unfinished {
                continue;
            }
            fs::remove_file(entry.path()).map_err(EngineError::io("remove temporary snapshot"))?;
        } else if let Some(Ok(segment)) = rest.strip_suffix(SNAPSHOT_SUFFIX).map(str::parse::<u32>)
        {
            found.push((segment, entry.path()));
        }
    }
    found.sort_unstable_by_key(|entry| std::cmp::Reverse(entry.0));
    Ok(found)
}

/// Load a snapshot into `map`. `Ok(false)` when the file fails a check (the map may then
/// hold part of it and must be dropped).
fn load_snapshot(path: &Path, segment: u32, map: &MemoryEngine) -> Result<bool, EngineError> {
    let file = File::open(path).map_err(EngineError::io("open snapshot"))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut header = [0u8; SNAPSHOT_HEADER_BYTES];
    if !read_exact_or_eof(&mut reader, &mut header)? || header != snapshot_header(segment) {
        return Ok(false);
    }
    let mut buf = Vec::new();
    let mut count = 0u64;
    loop {
        buf.resize(RECORD_HEADER_BYTES, 0);
        if !read_exact_or_eof(&mut reader, &mut buf)? {
            return Ok(false);
        }
        let key_len = u16::from_le_bytes([buf[5], buf[6]]) as usize;
        let value_len = u32::from_le_bytes(buf[7..11].try_into().expect("4 bytes")) as usize;
        if value_len > crate::VALUE_BYTES_MAX {
            return Ok(false);
        }
        buf.resize(RECORD_HEADER_BYTES + key_len + value_len, 0);
        if !read_exact_or_eof(&mut reader, &mut buf[RECORD_HEADER_BYTES..])? {
            return Ok(false);
        }
        let Some((record, _)) = decode_record(&buf) else { return Ok(false) };
        match record.kind {
            RecordKind::Put => {
                map.put(record.key, record.value)?;
                count += 1;
            }
            RecordKind::End => {
                let stated = record.value.try_into().map(u64::from_le_bytes);
                let mut trailing = [0u8; 1];
                let at_eof = !read_exact_or_eof(&mut reader, &mut trailing)?;
                return Ok(stated.ok() == Some(count) && at_eof);
            }
            RecordKind::Tombstone | RecordKind::Seal | RecordKind::Append => return Ok(false),
        }
    }
}

/// `read_exact`, but `Ok(false)` at a clean or torn end of file.
fn read_exact_or_eof(reader: &mut impl Read, buf: &mut [u8]) -> Result<bool, EngineError> {
    match reader.read_exact(buf) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(EngineError::io("read snapshot")(e)),
    }
}

/// Recovery: replay the log from the snapshot's segment on.
struct BufferReplay<'a> {
    map: &'a MemoryEngine,
    first_segment: u32,
    bytes: u64,
}

impl Replay for BufferReplay<'_> {
    fn segment(&mut self, segment: u32, _last: bool) -> Result<ReplayMode, EngineError> {
        Ok(if segment < self.first_segment { ReplayMode::Skip } else { ReplayMode::Scan })
    }

    fn record(&mut self, at: Location, record: Record<'_>) -> Result<(), EngineError> {
        if at.segment < self.first_segment {
            // Already in the snapshot; replaying it would undo later writes.
            return Ok(());
        }
        self.bytes += record_bytes(record.key.len(), record.value.len());
        match record.kind {
            RecordKind::Put => self.map.put(record.key, record.value),
            RecordKind::Tombstone => self.map.delete(record.key),
            RecordKind::Append => replay_append(self.map, record),
            RecordKind::Seal | RecordKind::End => Ok(()),
        }
    }
}

/// An append record's value: how many pieces the key's value had before the append (u32
/// LE), then the part. Replay may meet an append that the snapshot already holds (the
/// snapshot walks the map while writes go on, so it holds some writes logged after its
/// roll): replaying a put or a delete again changes nothing, but an append would add its
/// part twice. The count tells: the part is appended only onto a value of exactly that many
/// pieces. A value the snapshot took after the append has more; a put replayed before the
/// append gives the count again, since the pieces since a put are counted from it.
const APPEND_PIECES_BYTES: usize = 4;

fn replay_append(map: &MemoryEngine, record: Record<'_>) -> Result<(), EngineError> {
    let Some((before, part)) = record.value.split_at_checked(APPEND_PIECES_BYTES) else {
        return Err(EngineError::Corrupt {
            path: "(buffer log)".into(),
            reason: "an append record shorter than its piece count".into(),
        });
    };
    let before = u32::from_le_bytes(before.try_into().expect("4 bytes"));
    if map.pieces(record.key) == Some(before) {
        map.append(record.key, part)?;
    }
    Ok(())
}

struct Shared {
    log: MemLog,
    map: MemoryEngine,
    /// Held across "append to the log, apply to the map" so both see writes in one order.
    write_order: Mutex<()>,
    /// Log bytes written since the last snapshot's roll.
    log_bytes: AtomicU64,
    /// Held while a snapshot is taken, so that two never overlap.
    snapshotting: Mutex<()>,
    /// Snapshots taken since open.
    snapshots: AtomicU64,
    options: EngineOptions,
    /// The snapshot thread's stop flag and sleeps.
    background: Background,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("buffer::Shared").field("dir", &self.log.dir()).finish_non_exhaustive()
    }
}

/// The `buffer` engine. See the module documentation.
#[derive(Debug)]
pub struct BufferEngine {
    shared: Arc<Shared>,
    background: Option<JoinHandle<()>>,
}

impl BufferEngine {
    /// Write to `dest` this engine's files as a power loss would leave them now: only what an
    /// fdatasync covered (see [`MemLog::durable_image`]). For fault-injection tests.
    pub fn durable_image(&self, dest: &Path) -> std::io::Result<()> {
        self.shared.log.durable_image(dest)
    }

    /// Open (or create) the engine in `dir`: lock it, load the latest snapshot, replay the
    /// log, and start the snapshot thread.
    pub fn open(dir: &Path, options: &EngineOptions) -> Result<BufferEngine, EngineError> {
        let lock = lock_dir(dir)?;
        let snapshots = list_snapshots(dir, true)?;
        let mut map = MemoryEngine::new();
        let mut first_segment = 0;
        let mut loaded = snapshots.is_empty();
        for (segment, path) in &snapshots {
            if load_snapshot(path, *segment, &map)? {
                first_segment = *segment;
                loaded = true;
                break;
            }
            map = MemoryEngine::new();
        }
        if !loaded {
            return Err(EngineError::Corrupt {
                path: dir.display().to_string(),
                reason: "no snapshot passes its checks".into(),
            });
        }
        let mut replay = BufferReplay { map: &map, first_segment, bytes: 0 };
        let log_options = MemLogOptions {
            segment_bytes_max: options.segment_bytes_max,
            flush_interval_ms: options.flush_interval_ms,
            flusher: options.flusher,
            segment_id_min: first_segment.max(1),
        };
        let log = MemLog::open(dir, lock, log_options, &mut replay)?;
        let replayed = replay.bytes;
        let shared = Arc::new(Shared {
            log,
            map,
            write_order: Mutex::new(()),
            log_bytes: AtomicU64::new(replayed),
            snapshotting: Mutex::new(()),
            snapshots: AtomicU64::new(0),
            options: options.clone(),
            background: Background::default(),
        });
        shared.remove_before(first_segment)?;
        let checked_at = (!shared.snapshot_due()).then(|| shared.log.appended());
        let background = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("buffer-snapshot".into())
                .spawn(move || shared.run_background(checked_at))
                .map_err(EngineError::io("start snapshot thread"))?
        };
        Ok(BufferEngine { shared, background: Some(background) })
    }

    /// Take a snapshot now and wait for it; for tests.
    pub fn for_testing_snapshot(&self) -> Result<(), EngineError> {
        self.shared.snapshot()
    }

    /// The id of the memory-log segment appends go to now; a put that returns with another
    /// id than before it crossed a segment roll (benchmarks tell such puts apart with it).
    pub fn active_segment(&self) -> u32 {
        self.shared.log.active_segment()
    }
}

impl Shared {
    fn write_order(&self) -> MutexGuard<'_, ()> {
        self.write_order.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The snapshot thread: every `background_interval_ms` while the log takes appends, a
    /// snapshot if one is due. Only appends make one due, so once a check found the log
    /// unchanged since the previous one the thread sleeps without a timer until the next
    /// append (`crate::idle`), then waits the interval and checks as before.
    ///
    /// `checked_at` is the append count at the last check; `None` when a check is due anyway.
    /// The caller reads it before the engine takes writes, so none is missed.
    fn run_background(&self, mut checked_at: Option<u64>) {
        let interval = Duration::from_millis(self.options.background_interval_ms.max(1));
        loop {
            if let Some(checked_at) = checked_at {
                if self.background.sleep_until(|| self.log.appended() != checked_at) {
                    return;
                }
            }
            if self.background.sleep(interval) {
                return;
            }
            checked_at = Some(self.log.appended());
            // A failed snapshot leaves the previous one and the whole log in place; the next
            // check, one interval on, tries again.
            if self.snapshot_due() && self.snapshot().is_err() {
                checked_at = None;
            }
        }
    }

    /// Whether the log since the last snapshot is large enough for a new one.
    fn snapshot_due(&self) -> bool {
        let log_bytes = self.log_bytes.load(Ordering::Relaxed);
        log_bytes >= self.options.snapshot_log_bytes && log_bytes > self.map.stats().live_bytes
    }

    /// Take a snapshot (see the module documentation for the steps and why they are safe).
    fn snapshot(&self) -> Result<(), EngineError> {
        let _snapshotting = self.snapshotting.lock().unwrap_or_else(|p| p.into_inner());
        // The roll below happens under the write order: its spare is made before, without it.
        self.log.prepare_roll();
        let segment = {
            let _order = self.write_order();
            let segment = self.log.roll()?;
            self.log_bytes.store(0, Ordering::Relaxed);
            segment
        };
        let dir = self.log.dir();
        let path = snapshot_path(dir, segment);
        let temp = path.with_extension("snap.tmp");
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(EngineError::io("create snapshot"))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        let write = EngineError::io("write snapshot");
        out.write_all(&snapshot_header(segment)).map_err(write)?;
        let mut count = 0u64;
        let mut copied = Vec::with_capacity(2 * SNAPSHOT_CHUNK_BYTES);
        let mut chunk = Vec::with_capacity(2 * SNAPSHOT_CHUNK_BYTES);
        let mut after: Option<Vec<u8>> = None;
        let mut failure = None;
        let mut pace = SnapshotPace::new(SNAPSHOT_HEADER_BYTES as u64);
        loop {
            // Copied out under the map's read lock; encoded (CRCs) and written after it is
            // let go.
            copied.clear();
            after = self.map.visit_chunk(after.as_deref(), &mut |k, v| {
                copied.extend_from_slice(&(k.len() as u32).to_le_bytes());
                copied.extend_from_slice(&(v.len() as u32).to_le_bytes());
                copied.extend_from_slice(k);
                copied.extend_from_slice(v);
                if copied.len() >= SNAPSHOT_CHUNK_BYTES {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            });
            chunk.clear();
            let mut rest = &copied[..];
            while let Some((k, v, next)) = split_entry(rest) {
                encode_record(RecordKind::Put, k, v, &mut chunk);
                count += 1;
                rest = next;
            }
            if let Err(e) = out.write_all(&chunk) {
                failure = Some(e);
                break;
            }
            pace.bytes += chunk.len() as u64;
            if after.is_none() {
                break;
            }
            if let Err(e) = pace.write_out(&mut out) {
                failure = Some(e);
                break;
            }
            if self.background.stopped() {
                // Closing: the unfinished snapshot is a temporary file the next open deletes.
                return Ok(());
            }
        }
        if let Some(e) = failure {
            return Err(EngineError::io("write snapshot")(e));
        }
        chunk.clear();
        encode_record(RecordKind::End, &[], &count.to_le_bytes(), &mut chunk);
        out.write_all(&chunk).map_err(EngineError::io("write snapshot"))?;
        let file =
            out.into_inner().map_err(|e| EngineError::io("write snapshot")(e.into_error()))?;
        file.sync_all().map_err(EngineError::io("fsync snapshot"))?;
        fs::rename(&temp, &path).map_err(EngineError::io("rename snapshot"))?;
        sync_dir(dir)?;
        self.snapshots.fetch_add(1, Ordering::Relaxed);
        self.remove_before(segment)
    }

    /// Delete the log segments and snapshots that the snapshot of `segment` replaces.
    fn remove_before(&self, segment: u32) -> Result<(), EngineError> {
        let old: Vec<u32> = self
            .log
            .sealed_segments()
            .into_iter()
            .map(|(id, _)| id)
            .filter(|&id| id < segment)
            .collect();
        self.log.remove_segments(&old)?;
        let dir = self.log.dir();
        // Freed in steps, as the log's merged segments are (nothing maps a snapshot).
        let older: Vec<(PathBuf, bool)> = list_snapshots(dir, false)?
            .into_iter()
            .filter(|(older, _)| *older < segment)
            .map(|(_, path)| (path, true))
            .collect();
        retire_files(dir, &older)?;
        Ok(())
    }
}

/// The first entry of a snapshot chunk as copied out of the map (key length and value
/// length, u32 LE each, key, value), and the bytes after it.
fn split_entry(bytes: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    let (lengths, rest) = bytes.split_first_chunk::<8>()?;
    let key_len = u32::from_le_bytes(lengths[..4].try_into().ok()?) as usize;
    let value_len = u32::from_le_bytes(lengths[4..].try_into().ok()?) as usize;
    let (key, rest) = rest.split_at_checked(key_len)?;
    let (value, rest) = rest.split_at_checked(value_len)?;
    Some((key, value, rest))
}

/// Bytes of snapshot written out to the device at a time.
const SNAPSHOT_WRITE_OUT_BYTES: u64 = 1 << 20;

/// Paces a snapshot's writing: every [`SNAPSHOT_WRITE_OUT_BYTES`] are pushed to the device
/// (`write_out`) and followed by a pause twice as long as writing them took (the map walk
/// included), so a snapshot takes at most about a third of the CPU and the disk, and its
/// final fsync finds almost nothing left to write. Written all at once and fsynced, a
/// snapshot of the whole data set queued in front of the log's group commits (a 57 ms put
/// across a roll in `benches/rolls.rs`, docs/BENCHMARKS.md).
struct SnapshotPace {
    /// Bytes handed to the writer so far.
    bytes: u64,
    /// Bytes already written out to the device.
    out: u64,
    /// When the walk went on after the last pause.
    since: std::time::Instant,
}

impl SnapshotPace {
    fn new(header_bytes: u64) -> Self {
        Self { bytes: header_bytes, out: 0, since: std::time::Instant::now() }
    }

    /// Between chunks of the walk: once a write-out's worth is pending, flush the buffer,
    /// write the new bytes out, and pause twice as long as all that took since the last pause.
    fn write_out(&mut self, out: &mut std::io::BufWriter<File>) -> io::Result<()> {
        if self.bytes - self.out < SNAPSHOT_WRITE_OUT_BYTES {
            return Ok(());
        }
        out.flush()?;
        write_out(out.get_ref(), self.out, self.bytes - self.out)?;
        self.out = self.bytes;
        std::thread::sleep(self.since.elapsed() * 2);
        self.since = std::time::Instant::now();
        Ok(())
    }
}

impl Drop for BufferEngine {
    fn drop(&mut self) {
        self.shared.background.stop();
        if let Some(background) = self.background.take() {
            let _ = background.join();
        }
    }
}

impl StorageEngine for BufferEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Buffer
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.shared.map.get(key)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        check_sizes(key, value)?;
        {
            let _order = self.shared.write_order();
            self.shared.log.append(RecordKind::Put, key, value)?;
            let bytes = record_bytes(key.len(), value.len());
            self.shared.log_bytes.fetch_add(bytes, Ordering::Relaxed);
            self.shared.map.put(key, value)?;
        }
        self.shared.background.wake_if_idle();
        Ok(())
    }

    fn append(&self, key: &[u8], part: &[u8]) -> Result<Option<u32>, EngineError> {
        check_sizes(key, part)?;
        let parts = {
            let _order = self.shared.write_order();
            let Some(before) = self.shared.map.pieces(key) else { return Ok(None) };
            let mut record = Vec::with_capacity(APPEND_PIECES_BYTES + part.len());
            record.extend_from_slice(&before.to_le_bytes());
            record.extend_from_slice(part);
            self.shared.log.append(RecordKind::Append, key, &record)?;
            let bytes = record_bytes(key.len(), record.len());
            self.shared.log_bytes.fetch_add(bytes, Ordering::Relaxed);
            self.shared.map.append(key, part)?
        };
        self.shared.background.wake_if_idle();
        Ok(parts)
    }

    fn delete(&self, key: &[u8]) -> Result<(), EngineError> {
        {
            let _order = self.shared.write_order();
            if !self.shared.map.contains(key) {
                return Ok(());
            }
            self.shared.log.append(RecordKind::Tombstone, key, &[])?;
            self.shared.log_bytes.fetch_add(record_bytes(key.len(), 0), Ordering::Relaxed);
            self.shared.map.delete(key)?;
        }
        self.shared.background.wake_if_idle();
        Ok(())
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), EngineError> {
        self.shared.map.scan_prefix(prefix, visit)
    }

    fn sync(&self) -> Result<(), EngineError> {
        self.shared.log.sync()
    }

    fn sync_then(&self, done: crate::SyncDone) -> Result<(), crate::SyncDone> {
        self.shared.log.sync_then(done);
        Ok(())
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn failed(&self) -> bool {
        self.shared.log.failed()
    }

    fn stats(&self) -> EngineStats {
        EngineStats {
            dead_bytes: self.shared.log_bytes.load(Ordering::Relaxed),
            merges: self.shared.snapshots.load(Ordering::Relaxed),
            syncs: self.shared.log.syncs(),
            ..self.shared.map.stats()
        }
    }
}
