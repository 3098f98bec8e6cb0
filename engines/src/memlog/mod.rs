//! # The memory log: append-only segment files of CRC-checked records
//!
//! The memory log is the substrate the durable engines are built on. The `log` engine indexes
//! it (Bitcask), the `buffer` engine uses it as its write-ahead log, and the node can keep its
//! hints in it. It is written once, here, and nowhere else touches its files.
//!
//! ## The idea
//! A log is a directory of numbered *segments*. Records are only ever appended to the last
//! one, the *active* segment; when the next record would not fit, the active segment is
//! *sealed* (a seal record is appended and the file is fsynced) and a new segment is created.
//! Sealed segments never change again until they are deleted whole (by the `log` engine's
//! merge or the `buffer` engine's snapshot). Every record carries its length and a CRC32, so
//! recovery can tell where the log ends.
//!
//! ## Writing and group commit
//! `append` encodes a record into an in-memory *pending* buffer of the active segment and
//! returns its [`Location`] at once: the record is visible to [`MemLog::read`] immediately
//! (from the pending buffer until it is written). A flusher thread, one per log, does the
//! `write` of the pending bytes, without the appenders' lock (`active.rs`), and then one
//! `fdatasync` for every writer at once: on its own every `flush_interval_ms` while there
//! are appends to flush, and at once when a caller of [`MemLog::sync`] waits. A log with
//! nothing to flush keeps its flusher asleep, without a timer, until the next append
//! (`flusher.rs`), so idle logs cost no CPU.
//! The flusher makes those two calls as plain system calls, or through an io_uring of its
//! own ([`crate::FlusherBackend`]).
//! Concurrent `sync` callers share one `fdatasync`; a caller that arrives while one is in
//! progress waits for the next. The pending buffer is written by the appender itself when it
//! reaches [`PENDING_BYTES_MAX`], so memory stays bounded when no one syncs.
//!
//! ## Reading through memory maps
//! Every segment file is mapped read-only once (memmap2). The active segment is preallocated
//! to its full capacity before it is mapped, so the mapping never extends past the end of
//! the file. A read copies a record out of the mapping when it lies below the segment's
//! *readable* mark (bytes already written to the file), or out of the pending buffer
//! otherwise, and checks its CRC right after reading: bad data is never returned. All
//! `unsafe` code of the crate lives in `sys.rs`, with the soundness argument for the mappings
//! written there.
//!
//! ## Recovery
//! On open the directory is locked ([`crate::data_dir`]: an `flock` on the `LOCK` file, held for
//! the log's life; a second opener gets [`EngineError::Locked`] before anything is touched).
//! Segments are visited in id order; the caller ([`Replay`]) may skip a sealed segment it can
//! rebuild from elsewhere (the `log` engine's hint files), every other segment is scanned record by
//! record. The first record that fails its length or CRC check, or a sealed-looking segment that
//! ends without its seal record, ends the log: that segment is truncated there, every later segment
//! is deleted, and appending resumes at that point. Truncation happens before the file is mapped.
//! After creating, renaming or deleting a file the directory is fsynced.
//!
//! ## Not here
//! No compaction policy (the engines decide what to delete), no index, no compression, no
//! checksums stronger than CRC32 (it detects torn and flipped bytes, not an adversary).
//!
//! The byte layouts of segment files and records are tables in `format.rs`, above the
//! constants they define.
//!
//! ## Rooms
//! - `format.rs`: the bytes: segment header and record layouts, their constants and
//!   compile-time size checks, record encoding and the checked decoding.
//! - `segment.rs`: one segment file: naming, creation (preallocated, renamed into place),
//!   the cut of a recovered segment, deletion, and the scan of its records.
//! - `active.rs`: appending: the active segment's pending buffer, the roll to a new segment,
//!   and the spare segment made ahead of the roll.
//! - `flusher.rs`: group commit: the flusher thread and the `sync` callers waiting on it.
//! - `sys.rs`: the crate's only `unsafe` code, with its soundness argument.
//!
//! This file holds the log's shared state, open (recovery), reads and segment removal.

mod active;
mod flusher;
mod format;
mod segment;
mod sys;

use std::fs::{self, OpenOptions};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;

use crate::data_dir::{sync_dir, DirLock};
use crate::idle::Idle;
use crate::{EngineError, FlusherBackend};

pub use active::PENDING_BYTES_MAX;
use active::{Active, SpareState};
use flusher::SyncState;
use format::SegmentHeader;
pub use format::{
    decode_record, encode_record, record_bytes, Record, RecordKind, FORMAT_VERSION,
    READABLE_VERSIONS, RECORD_HEADER_BYTES, SEAL_RECORD_BYTES, SEGMENT_BYTES_LIMIT,
    SEGMENT_HEADER_BYTES,
};
pub(crate) use segment::retire_files;
pub use segment::ScanEnd;
use segment::{
    create_segment, list_segments, read_header, remove_segment_files, resume_segment,
    retire_segments, scan_bytes, segment_capacity, segment_path, Segment,
};
pub(crate) use sys::write_out;

/// Where a record starts: its segment and its byte offset in that segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The segment id.
    pub segment: u32,
    /// Byte offset of the record's first byte in the segment file.
    pub offset: u32,
}

/// Settings of one memory log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemLogOptions {
    /// Preallocated size of a segment file. The active segment is sealed when the next record
    /// would not fit; a record larger than this gets a segment of its own, sized to fit it.
    /// Clamped to [`SEGMENT_BYTES_LIMIT`].
    pub segment_bytes_max: u64,
    /// How often the flusher writes and syncs on its own when no caller waits, in
    /// milliseconds. Writes younger than this are what a crash may lose without a `sync`.
    pub flush_interval_ms: u64,
    /// Appends after open go to a segment with at least this id. A caller that ignores the
    /// segments before some id (the `buffer` engine, whose snapshot covers them) sets it, so
    /// that a log cut short by recovery never resumes in a segment it would ignore.
    pub segment_id_min: u32,
    /// How the flusher thread writes and syncs; see [`FlusherBackend`].
    pub flusher: FlusherBackend,
}

impl Default for MemLogOptions {
    fn default() -> Self {
        Self {
            segment_bytes_max: 64 << 20,
            flush_interval_ms: 10,
            segment_id_min: 1,
            flusher: FlusherBackend::default(),
        }
    }
}

/// What recovery does with a segment, as decided by [`Replay::segment`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplayMode {
    /// Visit every record of the segment through [`Replay::record`].
    Scan,
    /// Do not read the segment: the caller rebuilt what it needs from elsewhere. Only honoured
    /// for sealed segments (never for the last one).
    Skip,
}

/// The caller's side of recovery: told about every segment and record in log order.
pub trait Replay {
    /// Called before a segment's records; `last` is true for the segment appends resume in.
    fn segment(&mut self, segment: u32, last: bool) -> Result<ReplayMode, EngineError>;
    /// Called for every valid record of a scanned segment, in order (seal records excluded).
    fn record(&mut self, at: Location, record: Record<'_>) -> Result<(), EngineError>;
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    options: MemLogOptions,
    /// The `LOCK` file; its `flock` is released when this is closed.
    _lock: DirLock,
    /// Every segment in id order; the last one is the active segment.
    segments: RwLock<Vec<Arc<Segment>>>,
    active: Mutex<Active>,
    /// Records appended so far (the sequence `sync` waits for). Bumped sequentially
    /// consistent: it is the work counter of the flusher's idle handshake ([`crate::idle`]).
    appended: AtomicU64,
    sync: Mutex<SyncState>,
    flush_wanted: Condvar,
    /// Signalled (with the active lock) when the flusher's write in flight is done or failed.
    written: Condvar,
    /// Up while the flusher sleeps until the next append (nothing appended since its last
    /// flush); the first append after that wakes it.
    flusher_idle: Idle,
    /// Times the flusher woke from a wait (its timer, an append after idle, a `sync` caller, a
    /// roll), since open.
    flusher_wakes: AtomicU64,
    /// `SyncState::synced`, readable without the lock (a woken or lucky caller checks it).
    synced: AtomicU64,
    /// Set with `SyncState::failed`, readable without the lock.
    sync_failed: AtomicBool,
    /// Set after a write to a segment failed (its tail is unknown) or a roll could not make
    /// the next segment: appends are refused. Set and checked under the active lock, read
    /// without it by [`MemLog::failed`] (asked on every write by the node).
    write_failed: AtomicBool,
    /// The next segment, made ahead of time by the preparer thread (see `active.rs`).
    spare: Mutex<SpareState>,
    /// Signalled when a spare is asked for, made, or failed, and at shutdown.
    spare_changed: Condvar,
    /// How far the log is known durable: (segment id, offset in it). Everything before it,
    /// and every segment with a smaller id, was fdatasynced ([`MemLog::durable_image`]).
    durable: Mutex<(u32, u64)>,
    /// The highest segment id a spare was asked for, so appends check it without a lock.
    spare_wanted: AtomicU32,
    /// How far ahead of the active segment spares are asked for (`active.rs`).
    spares_ahead: u32,
    /// `fdatasync`s of the active segment done by flushes, since open.
    syncs: AtomicU64,
}

/// An open memory log. See the module documentation.
#[derive(Debug)]
pub struct MemLog {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
    preparer: Option<JoinHandle<()>>,
    backend: FlusherBackend,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its state consistent or sets `failed`; a panic elsewhere
    // does not make the state unusable.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    /// Record that segment `id` is durable up to `offset` (an fdatasync of it returned).
    fn durable_to(&self, id: u32, offset: u64) {
        let mut durable = lock(&self.durable);
        if (id, offset) > *durable {
            *durable = (id, offset);
        }
    }
}

/// Records at least this long have their pages let go once read ([`sys::Map::release`]).
const RELEASE_AFTER_READ_BYTES: usize = 64 << 10;

fn corrupt(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::Corrupt { path: path.display().to_string(), reason: reason.into() }
}

impl MemLog {
    /// Open (or create) the log in `dir`, which the caller has locked with
    /// [`lock_dir`](crate::data_dir::lock_dir) (the lock is handed over and held for the log's
    /// life). Recovery runs through `replay` as described in the module documentation.
    pub fn open(
        dir: &Path,
        lock: DirLock,
        options: MemLogOptions,
        replay: &mut dyn Replay,
    ) -> Result<MemLog, EngineError> {
        let mut options = options;
        options.segment_bytes_max = options
            .segment_bytes_max
            .clamp((SEGMENT_HEADER_BYTES + SEAL_RECORD_BYTES) as u64 + 64, SEGMENT_BYTES_LIMIT);
        let ids = list_segments(dir)?;
        let mut segments: Vec<Arc<Segment>> = Vec::new();
        let mut resume: Option<(Segment, u64)> = None;
        for (i, &id) in ids.iter().enumerate() {
            let last = i + 1 == ids.len();
            let path = segment_path(dir, id);
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .map_err(EngineError::io("open segment"))?;
            match read_header(&file, id)? {
                SegmentHeader::Readable => {}
                SegmentHeader::Unknown(version) => {
                    // Written by a later version: refuse, and leave every file as it is.
                    return Err(corrupt(
                        &path,
                        format!(
                            "segment format version {version}, which this build does not read                              (it reads {READABLE_VERSIONS:?}): it was written by a later                              version of cartwheel"
                        ),
                    ));
                }
                SegmentHeader::Missing => {
                    // A segment that never got its header (or lost it) holds nothing usable:
                    // the log ends before it.
                    remove_segment_files(dir, &ids[i..])?;
                    break;
                }
            }
            let len = file.metadata().map_err(EngineError::io("stat segment"))?.len();
            if len > SEGMENT_BYTES_LIMIT {
                return Err(corrupt(&path, format!("segment of {len} bytes is over the limit")));
            }
            let map = sys::Map::new(&file, len).map_err(EngineError::io("map segment"))?;
            let segment = Segment { id, path, file, map, readable: AtomicU64::new(len) };
            let mode = match replay.segment(id, last)? {
                ReplayMode::Skip if !last => ReplayMode::Skip,
                _ => ReplayMode::Scan,
            };
            if mode == ReplayMode::Skip {
                segments.push(Arc::new(segment));
                continue;
            }
            let mut failure = None;
            let end = scan_bytes(&segment, &mut |at, record| match replay.record(at, record) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    failure = Some(e);
                    ControlFlow::Break(())
                }
            });
            if let Some(e) = failure {
                return Err(e);
            }
            match end {
                ScanEnd::Sealed => {
                    segments.push(Arc::new(segment));
                }
                ScanEnd::EndsAt(offset) => {
                    // The log ends here: drop later segments, cut this one and resume in it.
                    remove_segment_files(dir, &ids[i + 1..])?;
                    resume = Some((segment, offset));
                    break;
                }
                ScanEnd::Stopped | ScanEnd::Pending => {
                    unreachable!("recovery never stops a scan early, and reads whole files")
                }
            }
        }
        if let Some((segment, _)) = resume.take_if(|(s, _)| s.id < options.segment_id_min) {
            // Left as it is (it is never read again) until its owner deletes it.
            segments.push(Arc::new(segment));
        }
        let active = match resume {
            Some((segment, end)) => resume_segment(dir, segment, end, &options)?,
            None => {
                let id = segments.last().map_or(1, |s| s.id + 1).max(options.segment_id_min);
                let capacity = segment_capacity(dir, options.segment_bytes_max, 0);
                (create_segment(dir, id, capacity)?, capacity)
            }
        };
        let (active, capacity) = active;
        let active = Arc::new(active);
        segments.push(Arc::clone(&active));
        let end = active.readable.load(Ordering::Relaxed);
        let active_id = active.id;
        let spares_ahead = active::spares_ahead(options.segment_bytes_max);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            options,
            _lock: lock,
            segments: RwLock::new(segments),
            active: Mutex::new(Active {
                segment: active,
                capacity,
                end,
                pending: Vec::new(),
                sealed: Vec::new(),
                recycled: Vec::new(),
                in_flight: Vec::new(),
            }),
            write_failed: AtomicBool::new(false),
            appended: AtomicU64::new(0),
            sync: Mutex::new(SyncState::default()),
            flush_wanted: Condvar::new(),
            written: Condvar::new(),
            flusher_idle: Idle::default(),
            flusher_wakes: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            sync_failed: AtomicBool::new(false),
            spare: Mutex::new(SpareState::new(active_id)),
            spare_changed: Condvar::new(),
            spare_wanted: AtomicU32::new(0),
            spares_ahead,
            syncs: AtomicU64::new(0),
            durable: Mutex::new((active_id, end)),
        });
        // The ring is made here, so that the backend in use is known when `open` returns;
        // where the kernel refuses it, the flusher uses plain system calls.
        let ring = match shared.options.flusher {
            FlusherBackend::IoUring => sys::Uring::new().ok(),
            FlusherBackend::Thread => None,
        };
        let backend = if ring.is_some() { FlusherBackend::IoUring } else { FlusherBackend::Thread };
        let flusher = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("memlog-flusher".into())
                .spawn(move || shared.run_flusher(ring))
                .map_err(EngineError::io("start flusher thread"))?
        };
        let mut log = MemLog { shared, flusher: Some(flusher), preparer: None, backend };
        let preparer = {
            let shared = Arc::clone(&log.shared);
            std::thread::Builder::new()
                .name("memlog-spare".into())
                .spawn(move || shared.run_preparer())
                .map_err(EngineError::io("start spare segment thread"))?
        };
        log.preparer = Some(preparer);
        Ok(log)
    }

    /// The backend the flusher uses: the configured one, or [`FlusherBackend::Thread`] where
    /// io_uring was asked for and the kernel refused it.
    pub fn flusher_backend(&self) -> FlusherBackend {
        self.backend
    }

    /// Call `f` with the record at `at`, checked against its CRC. `f` must not call back into
    /// the log.
    pub fn read<R>(&self, at: Location, f: impl FnOnce(Record<'_>) -> R) -> Result<R, EngineError> {
        let segment = {
            let segments = self.shared.segments.read().unwrap_or_else(|p| p.into_inner());
            let Ok(index) = segments.binary_search_by_key(&at.segment, |s| s.id) else {
                return Err(corrupt(&self.shared.dir, format!("no segment {}", at.segment)));
            };
            let segment = &segments[index];
            // The common case, copied out under the table's read lock (no reference count).
            if let Some(bytes) = segment.readable_from(at.offset) {
                return match decode_record(bytes) {
                    Some((record, len)) => {
                        let read = f(record);
                        // Large records (1 MiB values) would otherwise stay resident.
                        if len >= RELEASE_AFTER_READ_BYTES {
                            segment.map.release(u64::from(at.offset), len as u64);
                        }
                        Ok(read)
                    }
                    None => Err(corrupt(&segment.path, format!("bad record at {}", at.offset))),
                };
            }
            // The table lock is let go before the active lock is taken (a roll takes them the
            // other way round).
            Arc::clone(segment)
        };
        // Not written yet: it is in flight to the file, or in the pending buffer of the
        // active segment or of a segment a roll sealed since the last flush.
        let active = lock(&self.shared.active);
        if let Some(unwritten) = active.unwritten(at.segment, u64::from(at.offset)) {
            return match decode_record(unwritten) {
                Some((record, _)) => Ok(f(record)),
                None => Err(corrupt(&segment.path, format!("no record at {}", at.offset))),
            };
        }
        // The flusher wrote it between the two checks; the mapping has it now.
        match segment.readable_from(at.offset).and_then(decode_record) {
            Some((record, _)) => Ok(f(record)),
            None => Err(corrupt(&segment.path, format!("bad record at {}", at.offset))),
        }
    }

    /// Visit the records of a sealed segment in order (seal excluded), checking each CRC.
    /// Holds no lock while `visit` runs, so `visit` may append.
    pub fn scan_segment(
        &self,
        segment: u32,
        visit: &mut dyn FnMut(Location, Record<'_>) -> ControlFlow<()>,
    ) -> Result<ScanEnd, EngineError> {
        let found = {
            let segments = self.shared.segments.read().unwrap_or_else(|p| p.into_inner());
            segments.iter().find(|s| s.id == segment).cloned()
        };
        let Some(found) = found else {
            return Err(corrupt(&self.shared.dir, format!("no segment {segment}")));
        };
        let end = match scan_bytes(&found, visit) {
            ScanEnd::EndsAt(offset) if self.unwritten_at(&found, offset) => ScanEnd::Pending,
            end => end,
        };
        // A whole segment was read (a merge, a snapshot): its pages need not stay resident.
        found.map.release(0, found.map.len());
        Ok(end)
    }

    /// Whether a scan of `segment` that ended at `offset` ended there because the bytes
    /// after it were not yet written to the file (they are in the flusher's hands, or were
    /// written since the scan looked), not because of a bad record.
    fn unwritten_at(&self, segment: &Segment, offset: u64) -> bool {
        lock(&self.shared.active).unwritten(segment.id, offset).is_some()
            || u32::try_from(offset).is_ok_and(|at| segment.readable_from(at).is_some())
    }

    /// Ids and file lengths of the sealed segments, in order (the active one and the spares
    /// after it excluded).
    pub fn sealed_segments(&self) -> Vec<(u32, u64)> {
        // The active lock is let go before the table lock is taken (see `read`).
        let active = self.active_segment();
        let segments = self.shared.segments.read().unwrap_or_else(|p| p.into_inner());
        segments.iter().take_while(|s| s.id < active).map(|s| (s.id, s.map.len())).collect()
    }

    /// The id of the segment appends go to.
    pub fn active_segment(&self) -> u32 {
        lock(&self.shared.active).segment.id
    }

    /// Delete sealed segments. Readers that are copying out of them finish first (their
    /// mappings live until they let go); the files are renamed away, the directory fsynced,
    /// and then freed in steps (`segment::retire_segments`).
    pub fn remove_segments(&self, ids: &[u32]) -> Result<(), EngineError> {
        let active = self.active_segment();
        assert!(!ids.contains(&active), "the active segment is never removed");
        let removed: Vec<Arc<Segment>> = {
            let mut segments = self.shared.segments.write().unwrap_or_else(|p| p.into_inner());
            let (removed, kept) =
                std::mem::take(&mut *segments).into_iter().partition(|s| ids.contains(&s.id));
            *segments = kept;
            removed
        };
        retire_segments(&self.shared.dir, removed)
    }

    /// Whether a write or a sync failed: then the log refuses every append and sync (a failed
    /// fsync is never retried into success) until it is reopened from its files.
    pub fn failed(&self) -> bool {
        self.shared.write_failed.load(Ordering::Acquire)
            || self.shared.sync_failed.load(Ordering::Acquire)
    }

    /// Write to `dest` (a new directory) the files of this log as a power loss would leave
    /// them now: every byte that an fdatasync covered, and nothing else (the rest of each
    /// segment as never written: zeros). Files that are not segments (snapshots written with
    /// fsync and rename) are copied whole. For fault-injection tests of the durability
    /// contract; it does not model torn sectors inside the synced part, nor lost directory
    /// entries (each segment's creation and rename are fsynced with their directory). A
    /// segment past the last one synced keeps nothing, not even its header.
    pub fn durable_image(&self, dest: &Path) -> std::io::Result<()> {
        // Background work (a merge, a snapshot, a spare) may add and remove files while they
        // are copied: the copy counts only when the directory listed the same before and after.
        let listing = || -> std::io::Result<Vec<std::ffi::OsString>> {
            let mut names = fs::read_dir(&self.shared.dir)?
                .map(|entry| entry.map(|e| e.file_name()))
                .collect::<std::io::Result<Vec<_>>>()?;
            names.sort();
            Ok(names)
        };
        for _ in 0..100 {
            let before = listing()?;
            let (durable_segment, durable_offset) = *lock(&self.shared.durable);
            if dest.exists() {
                fs::remove_dir_all(dest)?;
            }
            fs::create_dir_all(dest)?;
            let mut vanished = false;
            for name in &before {
                let text = name.to_string_lossy();
                let path = self.shared.dir.join(name);
                if text == crate::data_dir::LOCK_FILE || !path.is_file() {
                    continue;
                }
                let mut bytes = match fs::read(&path) {
                    Ok(bytes) => bytes,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        vanished = true;
                        break;
                    }
                    Err(e) => return Err(e),
                };
                let segment = text
                    .strip_suffix(segment::SEGMENT_SUFFIX)
                    .and_then(|id| id.parse::<u32>().ok());
                if let Some(id) = segment {
                    let keep = match id.cmp(&durable_segment) {
                        std::cmp::Ordering::Less => bytes.len(),
                        std::cmp::Ordering::Equal => durable_offset as usize,
                        // Named, but nothing in it synced yet, its header included (a
                        // spare's header is synced with its first records, `active.rs`).
                        std::cmp::Ordering::Greater => 0,
                    };
                    let keep = keep.min(bytes.len());
                    bytes[keep..].fill(0);
                }
                fs::write(dest.join(name), bytes)?;
            }
            if !vanished && listing()? == before {
                return Ok(());
            }
        }
        Err(std::io::Error::other("the directory kept changing while it was copied"))
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }
}

impl Drop for MemLog {
    fn drop(&mut self) {
        lock(&self.shared.sync).shutdown = true;
        self.shared.flush_wanted.notify_all();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        // The preparer sees `shutdown` between chunks and gives up. An unused spare carries
        // the name of a segment after the active one; the next open would delete it (the
        // active segment has no seal), and so does this.
        lock(&self.shared.spare).shutdown = true;
        self.shared.spare_changed.notify_all();
        if let Some(preparer) = self.preparer.take() {
            let _ = preparer.join();
        }
        for spare in lock(&self.shared.spare).ready.drain(..) {
            let _ = fs::remove_file(&spare.segment.path);
        }
        // A clean close makes every append durable. Errors here have no one to go to; the
        // files stay recoverable by reopening.
        let synced = lock(&self.shared.sync).synced;
        let flushed = self.shared.flush(synced, None);
        self.shared.answer_at_close(flushed);
    }
}

#[cfg(test)]
mod tests;
