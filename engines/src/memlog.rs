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
//! `write` of the pending bytes and then one `fdatasync` for every writer at once: on its
//! own every `flush_interval_ms`, and at once when a caller of [`MemLog::sync`] waits.
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
//! `unsafe` code of the crate lives in the private `sys` module below, with the soundness
//! argument for the mappings written there.
//!
//! ## Recovery
//! On open the directory is locked (an `flock` on the `LOCK` file, held for the log's life;
//! a second opener gets [`EngineError::Locked`] before anything is touched). Segments are
//! visited in id order; the caller ([`Replay`]) may skip a sealed segment it can rebuild from
//! elsewhere (the `log` engine's hint files), every other segment is scanned record by
//! record. The first record that fails its length or CRC check, or a sealed-looking segment
//! that ends without its seal record, ends the log: that segment is truncated there, every
//! later segment is deleted, and appending resumes at that point. Truncation happens before
//! the file is mapped. After creating, renaming or deleting a file the directory is fsynced.
//!
//! ## Not here
//! No compaction policy (the engines decide what to delete), no index, no compression, no
//! checksums stronger than CRC32 (it detects torn and flipped bytes, not an adversary).
//!
//! ## Segment file layout
//!
//! | offset | size | field                                     |
//! |-------:|-----:|-------------------------------------------|
//! |      0 |    6 | magic `b"CWMLOG"`                         |
//! |      6 |    1 | format version ([`FORMAT_VERSION`])       |
//! |      7 |    1 | reserved, zero                            |
//! |      8 |    4 | segment id, u32 little-endian             |
//! |     12 |    4 | CRC32 of bytes 0..12                      |
//! |     16 |    … | records, back to back; zeros after the end |
//!
//! ## Record layout
//!
//! | offset   | size      | field                                   |
//! |---------:|----------:|-----------------------------------------|
//! |        0 |         4 | CRC32 of bytes 4..end                   |
//! |        4 |         1 | kind ([`RecordKind`], never zero)       |
//! |        5 |         2 | key length `k`, u16 little-endian       |
//! |        7 |         4 | value length `v`, u32 little-endian     |
//! |       11 |       `k` | key                                     |
//! |   11 + k |       `v` | value                                   |

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{EngineError, FlusherBackend, KEY_BYTES_MAX, VALUE_BYTES_MAX};

/// The version byte written into every segment header. Opening a segment with another version
/// fails with [`EngineError::Corrupt`] rather than guessing.
pub const FORMAT_VERSION: u8 = 1;

const SEGMENT_MAGIC: &[u8; 6] = b"CWMLOG";
const SEGMENT_MAGIC_AT: usize = 0;
const SEGMENT_VERSION_AT: usize = SEGMENT_MAGIC_AT + SEGMENT_MAGIC.len();
const SEGMENT_RESERVED_AT: usize = SEGMENT_VERSION_AT + 1;
const SEGMENT_ID_AT: usize = SEGMENT_RESERVED_AT + 1;
const SEGMENT_CRC_AT: usize = SEGMENT_ID_AT + 4;
/// Bytes before the first record of a segment.
pub const SEGMENT_HEADER_BYTES: usize = SEGMENT_CRC_AT + 4;

const RECORD_CRC_AT: usize = 0;
const RECORD_KIND_AT: usize = RECORD_CRC_AT + 4;
const RECORD_KEY_LEN_AT: usize = RECORD_KIND_AT + 1;
const RECORD_VALUE_LEN_AT: usize = RECORD_KEY_LEN_AT + 2;
/// Bytes of a record before its key.
pub const RECORD_HEADER_BYTES: usize = RECORD_VALUE_LEN_AT + 4;
/// Bytes of the seal record that ends every sealed segment (it has no key and no value).
pub const SEAL_RECORD_BYTES: usize = RECORD_HEADER_BYTES;

const _: () = assert!(SEGMENT_HEADER_BYTES == 16, "segment header is 16 bytes");
const _: () = assert!(RECORD_HEADER_BYTES == 11, "record header is 11 bytes");
const _: () = assert!(KEY_BYTES_MAX <= u16::MAX as usize, "key length is a u16");
const _: () = assert!(VALUE_BYTES_MAX <= u32::MAX as usize, "value length is a u32");
// Offsets inside a segment are u32: the largest record plus a header and a seal must fit.
const _: () = assert!(
    (SEGMENT_HEADER_BYTES
        + RECORD_HEADER_BYTES
        + KEY_BYTES_MAX
        + VALUE_BYTES_MAX
        + SEAL_RECORD_BYTES) as u64
        <= SEGMENT_BYTES_LIMIT,
    "the largest record fits in a segment"
);

/// The hard upper bound on a segment's size: offsets are u32.
pub const SEGMENT_BYTES_LIMIT: u64 = u32::MAX as u64;

/// When the pending buffer of the active segment reaches this many bytes the appender writes
/// it to the file itself instead of waiting for the flusher, so memory held for unwritten
/// records stays bounded however rarely anyone syncs.
pub const PENDING_BYTES_MAX: usize = 1 << 20;

const LOCK_FILE: &str = "LOCK";
const SEGMENT_SUFFIX: &str = ".log";
const TEMP_SUFFIX: &str = ".tmp";

/// What a record means. The memory log itself only interprets [`RecordKind::Seal`]; the other
/// kinds are for the engines built on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A key and its value.
    Put = 1,
    /// A key was deleted; the value is empty.
    Tombstone = 2,
    /// The last record of a sealed segment; no key, no value.
    Seal = 3,
    /// The end marker of a file written in record format (a snapshot); the value is engine
    /// defined.
    End = 4,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Put),
            2 => Some(Self::Tombstone),
            3 => Some(Self::Seal),
            4 => Some(Self::End),
            _ => None,
        }
    }
}

/// A record as read back, borrowing its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// What the record means.
    pub kind: RecordKind,
    /// The key (empty for seal records).
    pub key: &'a [u8],
    /// The value (empty for tombstones and seals).
    pub value: &'a [u8],
}

/// Where a record starts: its segment and its byte offset in that segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Location {
    /// The segment id.
    pub segment: u32,
    /// Byte offset of the record's first byte in the segment file.
    pub offset: u32,
}

/// The bytes a record with this key and value length takes in a segment.
pub fn record_bytes(key_len: usize, value_len: usize) -> u64 {
    (RECORD_HEADER_BYTES + key_len + value_len) as u64
}

/// Append the encoding of one record to `out`.
pub fn encode_record(kind: RecordKind, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    debug_assert!(key.len() <= KEY_BYTES_MAX && value.len() <= VALUE_BYTES_MAX);
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(kind as u8);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = crc32fast::hash(&out[start + RECORD_KIND_AT..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Decode the record at the start of `bytes`, checking its lengths and CRC. Returns the
/// record and its length in bytes, or `None` when the bytes are not a whole valid record
/// (which is how the end of a log is found).
pub fn decode_record(bytes: &[u8]) -> Option<(Record<'_>, usize)> {
    let header = bytes.get(..RECORD_HEADER_BYTES)?;
    let kind = RecordKind::from_byte(header[RECORD_KIND_AT])?;
    let key_len = u16::from_le_bytes([header[RECORD_KEY_LEN_AT], header[RECORD_KEY_LEN_AT + 1]]);
    let value_len = u32::from_le_bytes(
        header[RECORD_VALUE_LEN_AT..RECORD_VALUE_LEN_AT + 4].try_into().expect("4 bytes"),
    ) as usize;
    if value_len > VALUE_BYTES_MAX {
        return None;
    }
    let len = RECORD_HEADER_BYTES + key_len as usize + value_len;
    let whole = bytes.get(..len)?;
    let stored = u32::from_le_bytes(whole[..4].try_into().expect("4 bytes"));
    if crc32fast::hash(&whole[RECORD_KIND_AT..]) != stored {
        return None;
    }
    let key_end = RECORD_HEADER_BYTES + key_len as usize;
    Some((
        Record { kind, key: &whole[RECORD_HEADER_BYTES..key_end], value: &whole[key_end..] },
        len,
    ))
}

fn encode_segment_header(id: u32) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[SEGMENT_MAGIC_AT..SEGMENT_VERSION_AT].copy_from_slice(SEGMENT_MAGIC);
    header[SEGMENT_VERSION_AT] = FORMAT_VERSION;
    header[SEGMENT_ID_AT..SEGMENT_CRC_AT].copy_from_slice(&id.to_le_bytes());
    let crc = crc32fast::hash(&header[..SEGMENT_CRC_AT]);
    header[SEGMENT_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    header
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

/// One segment file and its read-only mapping.
#[derive(Debug)]
struct Segment {
    id: u32,
    path: PathBuf,
    file: File,
    map: sys::Map,
    /// Bytes `[0, readable)` of the file are written and never change while mapped.
    readable: AtomicU64,
}

impl Segment {
    /// The bytes from `offset` to the readable mark, if `offset` is below it.
    fn readable_from(&self, offset: u32) -> Option<&[u8]> {
        let readable = self.readable.load(Ordering::Acquire);
        self.map.bytes(offset as u64, readable)
    }
}

#[derive(Debug)]
struct Active {
    segment: Arc<Segment>,
    /// Capacity of the active segment (its preallocated file length).
    capacity: u64,
    /// Offset just past the last appended record, pending ones included.
    end: u64,
    /// Records appended but not yet written to the file; they start at `segment.readable`.
    pending: Vec<u8>,
    /// Set after a write failed: the file's tail is unknown, so appends are refused.
    failed: bool,
}

#[derive(Debug, Default)]
struct SyncState {
    /// Appends counted so far that are durable.
    synced: u64,
    /// The highest append count a waiting `sync` caller asked for.
    wanted: u64,
    shutdown: bool,
    /// Set when a write or fdatasync failed; every later `sync` fails with it.
    failed: Option<(io::ErrorKind, String)>,
    /// `sync` callers asleep until the append count they wait for is durable. Each is woken
    /// on its own (`unpark`), so a group commit does not wake them all onto one mutex.
    waiters: Vec<(u64, std::thread::Thread)>,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    options: MemLogOptions,
    /// The `LOCK` file; its `flock` is released when this is closed.
    _lock: File,
    /// Every segment in id order; the last one is the active segment.
    segments: RwLock<Vec<Arc<Segment>>>,
    active: Mutex<Active>,
    /// Records appended so far (the sequence `sync` waits for).
    appended: AtomicU64,
    sync: Mutex<SyncState>,
    flush_wanted: Condvar,
    /// `SyncState::synced`, readable without the lock (a woken or lucky caller checks it).
    synced: AtomicU64,
    /// Set with `SyncState::failed`, readable without the lock.
    sync_failed: AtomicBool,
    /// The next segment, zero-filled ahead of time by a helper thread (see [`Spare`]).
    spare: Mutex<Option<Spare>>,
    /// The helper thread filling the spare, if one runs.
    preparer: Mutex<Option<JoinHandle<()>>>,
    /// The segment id a spare was last started for, so appends check it without a lock.
    spare_started: AtomicU32,
}

/// A segment file made ahead of the roll that will need it: written full of zeros (so its
/// blocks are allocated *and initialized*), header written, fsynced, and kept under a
/// temporary name until the roll renames it into place.
///
/// Why zeros rather than `posix_fallocate` alone: on ext4 and XFS a preallocated block is
/// "unwritten", and the first write into it changes extent metadata, so the `fdatasync` that
/// follows must commit the file system journal, about as slow as appending to a file. Writes
/// into initialized blocks need no metadata, and their `fdatasync` is a plain data flush,
/// which is what group commit latency is made of. The cost is writing each segment twice
/// (zeros, then records), off the write path. Segments made in a hurry (no spare ready, or
/// the segment recovered at open) are only preallocated.
#[derive(Debug)]
struct Spare {
    segment: Segment,
    temp: PathBuf,
    capacity: u64,
}

/// The helper starts filling the spare once the active segment is this full (in percent):
/// early enough to be done before the roll, late enough that short-lived logs (tests, small
/// engines) never pay for it.
const SPARE_START_PERCENT: u64 = 50;
/// Bytes of zeros written per `write` call while filling a spare.
const SPARE_FILL_CHUNK_BYTES: usize = 1 << 20;

/// An open memory log. See the module documentation.
#[derive(Debug)]
pub struct MemLog {
    shared: Arc<Shared>,
    flusher: Option<JoinHandle<()>>,
    backend: FlusherBackend,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section leaves its state consistent or sets `failed`; a panic elsewhere
    // does not make the state unusable.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn corrupt(path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::Corrupt { path: path.display().to_string(), reason: reason.into() }
}

/// fsync a directory, so that files created, renamed or deleted in it stay so after a crash.
pub fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(EngineError::io("fsync of data directory"))
}

/// Take the exclusive lock of a data directory (creating the directory and its `LOCK` file if
/// needed). The lock is held as long as the returned file is open.
pub fn lock_dir(dir: &Path) -> Result<File, EngineError> {
    fs::create_dir_all(dir).map_err(EngineError::io("create data directory"))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))
        .map_err(EngineError::io("open lock file"))?;
    if !sys::try_lock_exclusive(&file).map_err(EngineError::io("lock data directory"))? {
        return Err(EngineError::Locked { path: dir.display().to_string() });
    }
    Ok(file)
}

fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}{SEGMENT_SUFFIX}"))
}

/// Segment ids found in `dir`, sorted; leftover temporary segment files are removed.
fn list_segments(dir: &Path) -> Result<Vec<u32>, EngineError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(EngineError::io("list data directory"))? {
        let entry = entry.map_err(EngineError::io("list data directory"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TEMP_SUFFIX) && name.contains(SEGMENT_SUFFIX) {
            // A segment whose creation did not finish: never renamed, so never used.
            fs::remove_file(entry.path()).map_err(EngineError::io("remove temporary file"))?;
        } else if let Some(stem) = name.strip_suffix(SEGMENT_SUFFIX) {
            if let Ok(id) = stem.parse::<u32>() {
                ids.push(id);
            }
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

/// Create a new segment file: header written and the file preallocated to `capacity` under a
/// temporary name, fsynced, renamed into place, directory fsynced.
fn create_segment(dir: &Path, id: u32, capacity: u64) -> Result<Segment, EngineError> {
    let path = segment_path(dir, id);
    let temp = dir.join(format!("{id:010}{SEGMENT_SUFFIX}{TEMP_SUFFIX}"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(EngineError::io("create segment"))?;
    file.write_all_at(&encode_segment_header(id), 0).map_err(EngineError::io("write segment"))?;
    sys::preallocate(&file, capacity).map_err(EngineError::io("preallocate segment"))?;
    file.sync_all().map_err(EngineError::io("fsync segment"))?;
    fs::rename(&temp, &path).map_err(EngineError::io("rename segment"))?;
    sync_dir(dir)?;
    let map = sys::Map::new(&file, capacity).map_err(EngineError::io("map segment"))?;
    Ok(Segment { id, path, file, map, readable: AtomicU64::new(SEGMENT_HEADER_BYTES as u64) })
}

/// Whether the file starts with a valid header for segment `id`.
fn header_is_valid(file: &File, id: u32) -> Result<bool, EngineError> {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    let mut reader = file;
    match reader.read_exact(&mut header) {
        Ok(()) => Ok(header == encode_segment_header(id)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(EngineError::io("read segment header")(e)),
    }
}

/// How a scan of a segment ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// The segment ends with its seal record.
    Sealed,
    /// The scan met an invalid record (or the end of the bytes) at this offset before a seal.
    EndsAt(u64),
    /// The visitor stopped the scan.
    Stopped,
}

/// Visit the valid records of a segment's bytes in order, up to its seal or first invalid
/// record.
fn scan_bytes(
    segment: &Segment,
    visit: &mut dyn FnMut(Location, Record<'_>) -> ControlFlow<()>,
) -> ScanEnd {
    let mut offset = SEGMENT_HEADER_BYTES as u64;
    loop {
        let Some(bytes) = segment.readable_from(offset as u32) else {
            return ScanEnd::EndsAt(offset);
        };
        let Some((record, len)) = decode_record(bytes) else {
            return ScanEnd::EndsAt(offset);
        };
        if record.kind == RecordKind::Seal {
            return ScanEnd::Sealed;
        }
        let at = Location { segment: segment.id, offset: offset as u32 };
        if visit(at, record).is_break() {
            return ScanEnd::Stopped;
        }
        offset += len as u64;
    }
}

impl MemLog {
    /// Open (or create) the log in `dir`, which must already be locked by the caller through
    /// [`lock_dir`] (the lock file is handed over and held for the log's life). Recovery runs
    /// through `replay` as described in the module documentation.
    pub fn open(
        dir: &Path,
        lock_file: File,
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
            if !header_is_valid(&file, id)? {
                // A segment that never got its header (or lost it) holds nothing usable: the
                // log ends before it.
                remove_segment_files(dir, &ids[i..])?;
                break;
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
                ScanEnd::Stopped => unreachable!("recovery never stops a scan early"),
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
                let capacity = options.segment_bytes_max;
                (create_segment(dir, id, capacity)?, capacity)
            }
        };
        let (active, capacity) = active;
        let active = Arc::new(active);
        segments.push(Arc::clone(&active));
        let end = active.readable.load(Ordering::Relaxed);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            options,
            _lock: lock_file,
            segments: RwLock::new(segments),
            active: Mutex::new(Active {
                segment: active,
                capacity,
                end,
                pending: Vec::new(),
                failed: false,
            }),
            appended: AtomicU64::new(0),
            sync: Mutex::new(SyncState::default()),
            flush_wanted: Condvar::new(),
            synced: AtomicU64::new(0),
            sync_failed: AtomicBool::new(false),
            spare: Mutex::new(None),
            preparer: Mutex::new(None),
            spare_started: AtomicU32::new(0),
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
        Ok(MemLog { shared, flusher: Some(flusher), backend })
    }

    /// The backend the flusher uses: the configured one, or [`FlusherBackend::Thread`] where
    /// io_uring was asked for and the kernel refused it.
    pub fn flusher_backend(&self) -> FlusherBackend {
        self.backend
    }

    /// Append one record and return where it starts. Visible to [`MemLog::read`] at once;
    /// durable after a later [`MemLog::sync`] returns.
    pub fn append(
        &self,
        kind: RecordKind,
        key: &[u8],
        value: &[u8],
    ) -> Result<Location, EngineError> {
        assert!(kind != RecordKind::Seal, "seal records are written only by the log");
        assert!(key.len() <= KEY_BYTES_MAX && value.len() <= VALUE_BYTES_MAX, "checked sizes");
        let len = record_bytes(key.len(), value.len());
        let mut active = lock(&self.shared.active);
        if active.failed {
            return Err(failed_error());
        }
        if active.end + len + SEAL_RECORD_BYTES as u64 > active.capacity {
            self.shared.roll(&mut active, len)?;
        }
        let at = Location { segment: active.segment.id, offset: active.end as u32 };
        encode_record(kind, key, value, &mut active.pending);
        active.end += len;
        // Counted under the lock, so that a flush that reads the count has the bytes too.
        self.shared.appended.fetch_add(1, Ordering::Release);
        if active.pending.len() >= PENDING_BYTES_MAX {
            write_pending(&mut active)?;
        }
        if active.end * 100 >= active.capacity * SPARE_START_PERCENT {
            let next = active.segment.id + 1;
            drop(active);
            self.start_spare(next);
        }
        Ok(at)
    }

    /// Make every append that returned before this call durable. Concurrent callers share one
    /// `fdatasync` (group commit).
    pub fn sync(&self) -> Result<(), EngineError> {
        let target = self.shared.appended.load(Ordering::Acquire);
        if self.shared.synced.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        {
            let mut state = lock(&self.shared.sync);
            if state.failed.is_none() && state.synced < target {
                if state.wanted < target {
                    state.wanted = target;
                    self.shared.flush_wanted.notify_one();
                }
                state.waiters.push((target, std::thread::current()));
            }
        }
        loop {
            if self.shared.synced.load(Ordering::Acquire) >= target {
                return Ok(());
            }
            if self.shared.sync_failed.load(Ordering::Acquire) {
                let state = lock(&self.shared.sync);
                let (kind, message) = state.failed.clone().expect("failure recorded");
                return Err(EngineError::Io {
                    during: "group commit",
                    source: io::Error::new(kind, message),
                });
            }
            // Woken by the flusher once `synced` covers `target` or the log failed; a
            // spurious wake-up just goes round again.
            std::thread::park();
        }
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
                    Some((record, _)) => Ok(f(record)),
                    None => Err(corrupt(&segment.path, format!("bad record at {}", at.offset))),
                };
            }
            // The table lock is let go before the active lock is taken (a roll takes them the
            // other way round).
            Arc::clone(segment)
        };
        // Not written yet: it is in the pending buffer of the active segment.
        let active = lock(&self.shared.active);
        let start = active.segment.readable.load(Ordering::Acquire);
        if active.segment.id == at.segment && u64::from(at.offset) >= start {
            let from = (u64::from(at.offset) - start) as usize;
            return match active.pending.get(from..).and_then(decode_record) {
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
        Ok(scan_bytes(&found, visit))
    }

    /// Ids and file lengths of the sealed segments, in order (the active one excluded).
    pub fn sealed_segments(&self) -> Vec<(u32, u64)> {
        let segments = self.shared.segments.read().unwrap_or_else(|p| p.into_inner());
        let sealed = &segments[..segments.len() - 1];
        sealed.iter().map(|s| (s.id, s.map.len())).collect()
    }

    /// The id of the segment appends go to.
    pub fn active_segment(&self) -> u32 {
        lock(&self.shared.active).segment.id
    }

    /// Seal the active segment now and start a new one; returns the new active segment's id.
    /// Every record appended before this call is in a segment with a smaller id, and durable.
    pub fn roll(&self) -> Result<u32, EngineError> {
        let mut active = lock(&self.shared.active);
        if active.failed {
            return Err(failed_error());
        }
        self.shared.roll(&mut active, 0)?;
        Ok(active.segment.id)
    }

    /// Delete sealed segments. Readers that are copying out of them finish first (their
    /// mappings live until they let go); the files are unlinked and the directory fsynced.
    pub fn remove_segments(&self, ids: &[u32]) -> Result<(), EngineError> {
        let active = self.active_segment();
        assert!(!ids.contains(&active), "the active segment is never removed");
        let removed: Vec<u32> = {
            let mut segments = self.shared.segments.write().unwrap_or_else(|p| p.into_inner());
            let before: Vec<u32> = segments.iter().map(|s| s.id).collect();
            segments.retain(|s| !ids.contains(&s.id));
            before.into_iter().filter(|id| ids.contains(id)).collect()
        };
        remove_segment_files(&self.shared.dir, &removed)
    }

    /// The directory the log lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// Start the helper thread that fills the spare for segment `id`, unless a spare is ready
    /// or being filled.
    fn start_spare(&self, id: u32) {
        if self.shared.spare_started.swap(id, Ordering::Relaxed) == id {
            return;
        }
        let mut preparer = lock(&self.shared.preparer);
        if preparer.as_ref().is_some_and(|p| !p.is_finished()) {
            return;
        }
        if lock(&self.shared.spare).as_ref().is_some_and(|spare| spare.segment.id == id) {
            return;
        }
        if let Some(done) = preparer.take() {
            let _ = done.join();
        }
        let shared = Arc::clone(&self.shared);
        let spawned = std::thread::Builder::new().name("memlog-spare".into()).spawn(move || {
            // A spare that fails to fill is simply not there: the roll then makes its
            // segment itself.
            if let Ok(Some(spare)) = shared.fill_spare(id) {
                let old = lock(&shared.spare).replace(spare);
                if let Some(old) = old {
                    let _ = fs::remove_file(&old.temp);
                }
            }
        });
        *preparer = spawned.ok();
    }
}

fn failed_error() -> EngineError {
    EngineError::Io {
        during: "append",
        source: io::Error::other("an earlier write failed; reopen to recover"),
    }
}

fn remove_segment_files(dir: &Path, ids: &[u32]) -> Result<(), EngineError> {
    if ids.is_empty() {
        return Ok(());
    }
    for &id in ids {
        match fs::remove_file(segment_path(dir, id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(EngineError::io("remove segment")(e)),
        }
    }
    sync_dir(dir)
}

/// Make a recovered segment the active one: cut it at `end` (everything after is a torn or
/// corrupt tail), preallocate it again and map it.
fn resume_segment(
    dir: &Path,
    segment: Segment,
    end: u64,
    options: &MemLogOptions,
) -> Result<(Segment, u64), EngineError> {
    let Segment { id, path, file, map, .. } = segment;
    let old_len = map.len();
    // The mapping is dropped before the file is cut: a truncated file is never mapped.
    drop(map);
    let capacity = options.segment_bytes_max.max(old_len).max(end + SEAL_RECORD_BYTES as u64);
    if end < old_len {
        file.set_len(end).map_err(EngineError::io("truncate segment"))?;
    }
    // Preallocation zero-fills everything past `end`, so no stale record can follow it.
    sys::preallocate(&file, capacity).map_err(EngineError::io("preallocate segment"))?;
    file.sync_all().map_err(EngineError::io("fsync segment"))?;
    sync_dir(dir)?;
    let map = sys::Map::new(&file, capacity).map_err(EngineError::io("map segment"))?;
    Ok((Segment { id, path, file, map, readable: AtomicU64::new(end) }, capacity))
}

/// Write the pending buffer to the active segment's file and move the readable mark.
fn write_pending(active: &mut Active) -> Result<(), EngineError> {
    write_pending_with(active, None)
}

/// [`write_pending`], through `ring` when there is one (the flusher's io_uring).
fn write_pending_with(
    active: &mut Active,
    ring: Option<&mut sys::Uring>,
) -> Result<(), EngineError> {
    if active.pending.is_empty() {
        return Ok(());
    }
    let at = active.segment.readable.load(Ordering::Relaxed);
    let written = at + active.pending.len() as u64;
    let outcome = match ring {
        None => active.segment.file.write_all_at(&active.pending, at),
        Some(ring) => {
            let (result, buffer) =
                ring.write_all_at(&active.segment.file, std::mem::take(&mut active.pending), at);
            active.pending = buffer;
            result
        }
    };
    if let Err(e) = outcome {
        active.failed = true;
        return Err(EngineError::io("write segment")(e));
    }
    debug_assert_eq!(written, active.end, "pending ends at the log end");
    active.segment.readable.store(written, Ordering::Release);
    active.pending.clear();
    if active.pending.capacity() > 4 * PENDING_BYTES_MAX {
        active.pending.shrink_to(PENDING_BYTES_MAX);
    }
    Ok(())
}

impl Shared {
    /// Seal the active segment (write, seal record, fdatasync) and start a new one with room
    /// for a record of `next_len` bytes. Called with the active lock held: appenders wait for
    /// one fdatasync per segment.
    fn roll(&self, active: &mut Active, next_len: u64) -> Result<(), EngineError> {
        encode_record(RecordKind::Seal, &[], &[], &mut active.pending);
        active.end += SEAL_RECORD_BYTES as u64;
        write_pending(active)?;
        if let Err(e) = active.segment.file.sync_data() {
            active.failed = true;
            return Err(EngineError::io("fdatasync segment")(e));
        }
        let id = active.segment.id.checked_add(1).expect("segment ids do not run out");
        let needed = (SEGMENT_HEADER_BYTES + SEAL_RECORD_BYTES) as u64 + next_len;
        let spare = lock(&self.spare).take();
        let (segment, capacity) = match spare {
            Some(spare) if spare.segment.id == id && spare.capacity >= needed => {
                fs::rename(&spare.temp, &spare.segment.path)
                    .map_err(EngineError::io("rename spare segment"))?;
                sync_dir(&self.dir)?;
                (spare.segment, spare.capacity)
            }
            other => {
                if let Some(stale) = other {
                    let _ = fs::remove_file(&stale.temp);
                }
                let capacity = self.options.segment_bytes_max.max(needed);
                (create_segment(&self.dir, id, capacity)?, capacity)
            }
        };
        let segment = Arc::new(segment);
        self.segments.write().unwrap_or_else(|p| p.into_inner()).push(Arc::clone(&segment));
        active.segment = segment;
        active.capacity = capacity;
        active.end = SEGMENT_HEADER_BYTES as u64;
        Ok(())
    }

    /// Make the spare for segment `id` (see [`Spare`]). `Ok(None)` if the log began closing
    /// first.
    fn fill_spare(&self, id: u32) -> Result<Option<Spare>, EngineError> {
        let capacity = self.options.segment_bytes_max;
        let temp = self.dir.join(format!("{id:010}{SEGMENT_SUFFIX}.spare{TEMP_SUFFIX}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(EngineError::io("create spare segment"))?;
        let zeros = vec![0u8; SPARE_FILL_CHUNK_BYTES];
        let mut at = 0;
        while at < capacity {
            if lock(&self.sync).shutdown {
                drop(file);
                let _ = fs::remove_file(&temp);
                return Ok(None);
            }
            let len = (capacity - at).min(zeros.len() as u64) as usize;
            file.write_all_at(&zeros[..len], at).map_err(EngineError::io("fill spare segment"))?;
            at += len as u64;
        }
        file.write_all_at(&encode_segment_header(id), 0)
            .map_err(EngineError::io("write segment"))?;
        file.sync_all().map_err(EngineError::io("fsync spare segment"))?;
        let map = sys::Map::new(&file, capacity).map_err(EngineError::io("map segment"))?;
        let segment = Segment {
            id,
            path: segment_path(&self.dir, id),
            file,
            map,
            readable: AtomicU64::new(SEGMENT_HEADER_BYTES as u64),
        };
        Ok(Some(Spare { segment, temp, capacity }))
    }

    /// Write what is pending and fdatasync it, through `ring` when the flusher has one.
    /// Returns the append count now durable.
    fn flush(&self, synced: u64, mut ring: Option<&mut sys::Uring>) -> Result<u64, EngineError> {
        let (target, segment) = {
            let mut active = lock(&self.active);
            if active.failed {
                return Err(failed_error());
            }
            write_pending_with(&mut active, ring.as_deref_mut())?;
            (self.appended.load(Ordering::Acquire), Arc::clone(&active.segment))
        };
        if target > synced {
            // Segments sealed since the last flush were fdatasynced when they were sealed.
            match ring {
                Some(ring) => ring.sync_data(&segment.file),
                None => segment.file.sync_data(),
            }
            .map_err(EngineError::io("fdatasync segment"))?;
        }
        Ok(target)
    }

    fn run_flusher(&self, mut ring: Option<sys::Uring>) {
        let interval = Duration::from_millis(self.options.flush_interval_ms.max(1));
        let mut state = lock(&self.sync);
        loop {
            if state.shutdown {
                return;
            }
            if state.wanted <= state.synced {
                let (guard, _) = self
                    .flush_wanted
                    .wait_timeout(state, interval)
                    .unwrap_or_else(|p| p.into_inner());
                state = guard;
                if state.shutdown {
                    return;
                }
            }
            if state.failed.is_some() {
                // Nothing more can be made durable; wake waiters so they see the failure.
                for (_, waiter) in state.waiters.drain(..) {
                    waiter.unpark();
                }
                state = self.flush_wanted.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let synced = state.synced;
            drop(state);
            let result = self.flush(synced, ring.as_mut());
            state = lock(&self.sync);
            match result {
                Ok(target) => {
                    state.synced = state.synced.max(target);
                    self.synced.store(state.synced, Ordering::Release);
                }
                Err(e) => {
                    let source = std::error::Error::source(&e)
                        .and_then(|s| s.downcast_ref::<io::Error>())
                        .map_or(io::ErrorKind::Other, io::Error::kind);
                    state.failed = Some((source, e.to_string()));
                    self.sync_failed.store(true, Ordering::Release);
                }
            }
            let synced = state.synced;
            let failed = state.failed.is_some();
            let mut ready = Vec::new();
            state.waiters.retain(|(target, waiter)| {
                let done = failed || *target <= synced;
                if done {
                    ready.push(waiter.clone());
                }
                !done
            });
            drop(state);
            for waiter in ready {
                waiter.unpark();
            }
            state = lock(&self.sync);
        }
    }
}

impl Drop for MemLog {
    fn drop(&mut self) {
        lock(&self.shared.sync).shutdown = true;
        self.shared.flush_wanted.notify_all();
        if let Some(flusher) = self.flusher.take() {
            let _ = flusher.join();
        }
        // The spare helper sees `shutdown` between chunks and gives up; an unused spare is a
        // temporary file that the next open removes.
        if let Some(preparer) = lock(&self.shared.preparer).take() {
            let _ = preparer.join();
        }
        if let Some(spare) = lock(&self.shared.spare).take() {
            let _ = fs::remove_file(&spare.temp);
        }
        // A clean close makes every append durable. Errors here have no one to go to; the
        // files stay recoverable by reopening.
        let synced = lock(&self.shared.sync).synced;
        let _ = self.shared.flush(synced, None);
    }
}

/// The only `unsafe` code in the crate: the directory lock, preallocation, the read-only
/// mappings of segment files and the flusher's io_uring ([`sys::Uring`] has its own argument).
///
/// # Soundness of the mappings
/// A [`Map`] hands out `&[u8]` views of a file mapping. Such a slice must not change while it
/// is borrowed and must not point past the end of the file (a read there is a `SIGBUS`). The
/// memory log keeps both promises:
///
/// - **Only written, immutable bytes are viewed.** [`Map::bytes`] only returns bytes below a
///   `readable` mark that the caller passes in. The mark only grows, and only after the bytes
///   below it were written with `pwrite`; the log never writes below the mark again (records
///   are appended, never rewritten). Views are made from the raw pointer for exactly the
///   requested range, never for the whole mapping, so no reference covers bytes still being
///   written.
/// - **The file is never shorter than its mapping.** An active segment is preallocated to its
///   full capacity (`posix_fallocate`) before it is mapped with that length; a recovered
///   segment is mapped with its current length. Files are truncated only during recovery, and
///   only after their mapping was dropped. Deleting a file (merge, snapshot) unlinks it; the
///   inode and the pages stay until the last mapping goes away. Preallocation also means the
///   blocks exist, so running out of disk space shows up as a `write` error, never as a fault
///   on a mapped page.
/// - **No other writer.** The data directory is locked with `flock` for the life of the log,
///   so another cartwheel process cannot open and change the files. A process that ignores
///   the lock (or a failing disk) can still break these promises; that is outside what any
///   mmap-based store can defend against.
mod sys {
    #![allow(unsafe_code)]

    use std::fs::File;
    use std::io;
    use std::os::fd::AsRawFd;

    /// Try to take an exclusive `flock` on `file` without blocking. `Ok(false)` when another
    /// open file description holds it.
    pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
        loop {
            // SAFETY: `flock` takes a file descriptor and flags; the descriptor is open for
            // the duration of the call because `file` is borrowed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                return Ok(true);
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EWOULDBLOCK) => return Ok(false),
                Some(libc::EINTR) => continue,
                _ => return Err(err),
            }
        }
    }

    /// Allocate disk blocks for `[0, len)` of `file`, extending it to `len` if shorter; new
    /// bytes read as zero.
    pub fn preallocate(file: &File, len: u64) -> io::Result<()> {
        let len = libc::off_t::try_from(len).map_err(io::Error::other)?;
        loop {
            // SAFETY: `posix_fallocate` takes a descriptor (open while `file` is borrowed) and
            // two integers; it touches no memory of ours.
            let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) };
            match rc {
                0 => return Ok(()),
                libc::EINTR => continue,
                // File systems without fallocate: extend the file instead (sparse).
                libc::EOPNOTSUPP => {
                    if file.metadata()?.len() < len as u64 {
                        file.set_len(len as u64)?;
                    }
                    return Ok(());
                }
                code => return Err(io::Error::from_raw_os_error(code)),
            }
        }
    }

    /// An io_uring owned by one flusher thread. Each call submits one operation and waits
    /// for its completion before it returns, so at most one operation is ever in flight.
    ///
    /// Soundness: a write hands the kernel a pointer into a buffer. The buffer is moved
    /// into the call and handed back only once the write's completion has been reaped, so
    /// nothing else can touch or free it while the kernel may read it. If waiting fails in a
    /// way that leaves the write's fate unknown, the buffer is leaked (never freed) and the
    /// ring is marked broken: every later call fails without submitting anything.
    pub struct Uring {
        ring: io_uring::IoUring,
        broken: bool,
    }

    impl std::fmt::Debug for Uring {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Uring").field("broken", &self.broken).finish_non_exhaustive()
        }
    }

    impl Uring {
        /// A ring of a few entries; fails where the kernel refuses io_uring.
        pub fn new() -> io::Result<Uring> {
            Ok(Uring { ring: io_uring::IoUring::new(4)?, broken: false })
        }

        /// Write all of `buffer` at `offset` of `file`; hands the buffer back (emptied on
        /// success) so its allocation is reused.
        pub fn write_all_at(
            &mut self,
            file: &File,
            mut buffer: Vec<u8>,
            offset: u64,
        ) -> (io::Result<()>, Vec<u8>) {
            let mut done = 0usize;
            while done < buffer.len() {
                let len = u32::try_from(buffer.len() - done).unwrap_or(1 << 30);
                let entry = io_uring::opcode::Write::new(
                    io_uring::types::Fd(file.as_raw_fd()),
                    // In bounds: `done < buffer.len()`.
                    buffer[done..].as_ptr(),
                    len,
                )
                .offset(offset + done as u64)
                .build();
                // SAFETY: the entry points into `buffer`, which this function owns and
                // neither moves nor frees until `run` returns with the completion reaped
                // (`Ok`/`Err(Completed)`); on `Err(Unknown)` the buffer is leaked below.
                match unsafe { self.run(&entry) } {
                    Ok(0) => {
                        return (Err(io::ErrorKind::WriteZero.into()), buffer);
                    }
                    Ok(n) => done += n,
                    Err(Failure::Completed(e)) => return (Err(e), buffer),
                    Err(Failure::Unknown(e)) => {
                        std::mem::forget(buffer);
                        return (Err(e), Vec::new());
                    }
                }
            }
            buffer.clear();
            (Ok(()), buffer)
        }

        /// `fdatasync` of `file`.
        pub fn sync_data(&mut self, file: &File) -> io::Result<()> {
            let entry = io_uring::opcode::Fsync::new(io_uring::types::Fd(file.as_raw_fd()))
                .flags(io_uring::types::FsyncFlags::DATASYNC)
                .build();
            // SAFETY: an fsync entry points to no memory of ours.
            match unsafe { self.run(&entry) } {
                Ok(_) => Ok(()),
                Err(Failure::Completed(e) | Failure::Unknown(e)) => Err(e),
            }
        }

        /// Submit `entry` and wait for its completion; its result on success.
        ///
        /// # Safety
        /// Memory the entry points to must stay valid and untouched until this returns `Ok`
        /// or `Err(Failure::Completed)`, and forever after `Err(Failure::Unknown)`.
        unsafe fn run(&mut self, entry: &io_uring::squeue::Entry) -> Result<usize, Failure> {
            if self.broken {
                return Err(Failure::Completed(io::Error::other("the io_uring failed earlier")));
            }
            // SAFETY: the caller keeps the entry's memory valid as documented above.
            if unsafe { self.ring.submission().push(entry) }.is_err() {
                return Err(Failure::Completed(io::Error::other("io_uring queue full")));
            }
            loop {
                match self.ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.raw_os_error(),
                            Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                        ) => {}
                    Err(e) => {
                        self.broken = true;
                        return Err(Failure::Unknown(e));
                    }
                }
                if let Some(completion) = self.ring.completion().next() {
                    let result = completion.result();
                    return if result < 0 {
                        Err(Failure::Completed(io::Error::from_raw_os_error(-result)))
                    } else {
                        Ok(result as usize)
                    };
                }
            }
        }
    }

    /// Why [`Uring::run`] failed.
    enum Failure {
        /// The operation completed with this error, or never started.
        Completed(io::Error),
        /// Waiting failed; the operation may still be in flight.
        Unknown(io::Error),
    }

    /// A read-only shared mapping of the first `len` bytes of a file.
    #[derive(Debug)]
    pub struct Map {
        map: Option<memmap2::Mmap>,
        len: u64,
    }

    impl Map {
        /// Map `[0, len)` of `file`. The caller guarantees the file is at least `len` bytes
        /// long and stays so while the map lives (see the module soundness argument).
        pub fn new(file: &File, len: u64) -> io::Result<Map> {
            if len == 0 {
                return Ok(Map { map: None, len });
            }
            let length = usize::try_from(len).map_err(io::Error::other)?;
            // SAFETY: the file is at least `len` bytes long and is never truncated while
            // mapped; the data directory is locked against other writers; we only view
            // ranges below the readable mark, which never change again (see above).
            let map = unsafe { memmap2::MmapOptions::new().len(length).map(file)? };
            Ok(Map { map: Some(map), len })
        }

        /// The mapped length.
        pub fn len(&self) -> u64 {
            self.len
        }

        /// The bytes `[offset, readable)`, or `None` when `offset` is not below `readable`.
        pub fn bytes(&self, offset: u64, readable: u64) -> Option<&[u8]> {
            let end = readable.min(self.len);
            if offset >= end {
                return None;
            }
            let map = self.map.as_ref()?;
            // SAFETY: `offset < end <= self.len`, so the range lies inside the mapping; bytes
            // below the readable mark are written and never change while mapped, so a shared
            // slice of them is never aliased by a writer. The slice borrows `self`, which
            // keeps the mapping alive.
            let bytes = unsafe {
                std::slice::from_raw_parts(
                    map.as_ptr().add(offset as usize),
                    (end - offset) as usize,
                )
            };
            Some(bytes)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A record survives an encode/decode round trip, and any single flipped bit is caught.
    #[test]
    fn record_round_trip_and_bit_flips() {
        let mut buf = Vec::new();
        encode_record(RecordKind::Put, b"key", b"value", &mut buf);
        let (record, len) = decode_record(&buf).unwrap();
        assert_eq!(
            (record.kind, record.key, record.value, len),
            (RecordKind::Put, &b"key"[..], &b"value"[..], buf.len())
        );
        for bit in 0..buf.len() * 8 {
            let mut flipped = buf.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_record(&flipped).map(|(r, _)| r) != Some(record), "bit {bit}");
        }
        assert!(decode_record(&[0u8; 64]).is_none(), "zeros are never a record");
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
        for (i, &loc) in at.iter().enumerate() {
            let value = log.read(loc, |r| r.value.to_vec()).unwrap();
            assert_eq!(value, vec![i as u8; 50]);
        }
        assert!(log.sealed_segments().len() >= 2, "200 records of 65 bytes roll 4 KiB segments");
        log.sync().unwrap();
        drop(log);
        let (log, collected) = open(dir.path(), 4096);
        assert_eq!(collected.0.len(), 200);
        assert_eq!(collected.0.iter().map(|c| c.0).collect::<Vec<_>>(), at);
        let loc = log.append(RecordKind::Tombstone, b"x", b"").unwrap();
        assert!(loc > at[199], "appends resume after the recovered end");
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
        // What the files hold now, before a clean close could write anything more.
        let copy = tempfile::tempdir().unwrap();
        for entry in fs::read_dir(dir.path()).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != "LOCK" {
                fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
            }
        }
        drop(log);
        let (_, collected) = open(copy.path(), 4096);
        assert_eq!(collected.0.len(), 100);
    }

    /// A second open of a locked directory is refused.
    #[test]
    fn second_open_is_locked() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock_dir(dir.path()).unwrap();
        assert!(matches!(lock_dir(dir.path()), Err(EngineError::Locked { .. })));
    }
}
