//! # Segment files
//!
//! One segment file: its name in the directory, its creation (header written, preallocated
//! to its capacity under a temporary name, fsynced, renamed into place, directory fsynced),
//! the cut of a recovered segment at the end of its valid records, its deletion (in steps, at
//! run time), and the scan of its records up to its seal or first bad record. Every segment
//! is mapped read-only once (`sys::Map`); bytes below its *readable* mark are written and
//! never change again.
//!
//! A segment does not know about appends or syncs: the pending buffer, rolls and the flusher
//! are in `active.rs` and `flusher.rs`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::format::{
    decode_record, decode_segment_header, encode_segment_header, Record, RecordKind, SegmentHeader,
    SEAL_RECORD_BYTES, SEGMENT_HEADER_BYTES,
};
use super::{sync_dir, sys, EngineError, Location, MemLogOptions};

pub(super) const SEGMENT_SUFFIX: &str = ".log";
pub(super) const TEMP_SUFFIX: &str = ".tmp";

/// One segment file and its read-only mapping.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) id: u32,
    pub(super) path: PathBuf,
    pub(super) file: File,
    pub(super) map: sys::Map,
    /// Bytes `[0, readable)` of the file are written and never change while mapped.
    pub(super) readable: AtomicU64,
}

impl Segment {
    /// The bytes from `offset` to the readable mark, if `offset` is below it.
    pub(super) fn readable_from(&self, offset: u32) -> Option<&[u8]> {
        let readable = self.readable.load(Ordering::Acquire);
        self.map.bytes(offset as u64, readable)
    }
}

pub(super) fn segment_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:010}{SEGMENT_SUFFIX}"))
}

/// Segment ids found in `dir`, sorted; leftover temporary segment files are removed.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<u32>, EngineError> {
    let mut ids = Vec::new();
    for entry in fs::read_dir(dir).map_err(EngineError::io("list data directory"))? {
        let entry = entry.map_err(EngineError::io("list data directory"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(TEMP_SUFFIX) && name.contains(SEGMENT_SUFFIX) {
            // A segment whose creation did not finish (never renamed, so never used), or one
            // retired by a merge whose removal did not finish (`retire_segments`).
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
/// Smallest segment made for a nearly full disk (a record larger than this still gets a
/// segment of its own size).
pub(super) const SEGMENT_BYTES_MIN: u64 = 64 << 10;

/// The capacity of a new segment in `dir`: `wanted` (the configured `segment_bytes_max`),
/// but no more than a quarter of the space left on the file system (shrinking no further
/// than [`SEGMENT_BYTES_MIN`]), and never less than `needed` (the next record). So a node starts, and keeps taking
/// writes, on a disk with less free space than one full segment; with plenty of space
/// nothing changes. Where free space cannot be read, `wanted`.
pub(super) fn segment_capacity(dir: &Path, wanted: u64, needed: u64) -> u64 {
    let available = fs4::available_space(dir).unwrap_or(u64::MAX);
    wanted.min((available / 4).max(SEGMENT_BYTES_MIN)).max(needed)
}

/// A new, empty temporary file at `path` (replacing any left by a crash), open for reading
/// and writing: a segment is built in one and renamed into place once complete.
pub(super) fn create_temp_file(path: &Path, during: &'static str) -> Result<File, EngineError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(EngineError::io(during))
}

pub(super) fn create_segment(dir: &Path, id: u32, capacity: u64) -> Result<Segment, EngineError> {
    let path = segment_path(dir, id);
    let temp = dir.join(format!("{id:010}{SEGMENT_SUFFIX}{TEMP_SUFFIX}"));
    let file = create_temp_file(&temp, "create segment")?;
    file.write_all_at(&encode_segment_header(id), 0).map_err(EngineError::io("write segment"))?;
    sys::preallocate(&file, capacity).map_err(EngineError::io("preallocate segment"))?;
    file.sync_all().map_err(EngineError::io("fsync segment"))?;
    fs::rename(&temp, &path).map_err(EngineError::io("rename segment"))?;
    sync_dir(dir)?;
    let map = sys::Map::new(&file, capacity).map_err(EngineError::io("map segment"))?;
    Ok(Segment { id, path, file, map, readable: AtomicU64::new(SEGMENT_HEADER_BYTES as u64) })
}

/// What the header the file starts with says, for segment `id`.
pub(super) fn read_header(file: &File, id: u32) -> Result<SegmentHeader, EngineError> {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    let mut reader = file;
    match reader.read_exact(&mut header) {
        Ok(()) => Ok(decode_segment_header(&header, id)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(SegmentHeader::Missing),
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
    /// The scan reached bytes the flusher has not written to the file yet (a segment sealed
    /// moments ago): scan it again later. Never at recovery.
    Pending,
}

/// Visit the valid records of a segment's bytes in order, up to its seal or first invalid
/// record.
pub(super) fn scan_bytes(
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

pub(super) fn remove_segment_files(dir: &Path, ids: &[u32]) -> Result<(), EngineError> {
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

/// Bytes a retired file gives back per step (see [`retire_files`]).
const RETIRE_STEP_BYTES: u64 = 4 << 20;

/// Delete segments the log no longer lists (a merge or snapshot copied what they held), with
/// [`retire_files`]. Each is dropped here, mapping and all, unless a reader still copies out
/// of it: that file is only unlinked (cutting it under a mapping would fault the reader), and
/// its blocks go when the reader lets go.
pub(super) fn retire_segments(dir: &Path, segments: Vec<Arc<Segment>>) -> Result<(), EngineError> {
    let files: Vec<(PathBuf, bool)> = segments
        .into_iter()
        .map(|segment| {
            let path = segment.path.clone();
            let unmapped = Arc::into_inner(segment).is_some();
            (path, unmapped)
        })
        .collect();
    retire_files(dir, &files)
}

/// Delete files of `dir` the engine no longer needs (merged segments, old snapshots): each
/// `(path, cut)` is renamed to a temporary name (which the next open deletes) and the
/// directory fsynced, so from then on the removal is durable, exactly as an unlink would be.
/// Then each file is cut a few MiB at a time, with an fsync and a pause after each cut, before
/// it is unlinked; one with `cut` false (still mapped by a reader) is only unlinked.
///
/// Why in steps: on a file system mounted with online discard, one unlink of a 64 MiB segment
/// sends the whole discard to the disk at the next journal commit, and every other log's
/// `fdatasync` queued behind it for 15-30 ms (docs/BENCHMARKS.md, "Spare segments and the
/// disk queue"); in steps, each commit carries a few MiB. A file is never cut under its own
/// name: a cut segment without its seal would end the log there at the next open, and a cut
/// snapshot would fail its checks.
pub(crate) fn retire_files(dir: &Path, files: &[(PathBuf, bool)]) -> Result<(), EngineError> {
    if files.is_empty() {
        return Ok(());
    }
    let mut retired = Vec::with_capacity(files.len());
    for (path, cut) in files {
        let temp = retired_path(path);
        match fs::rename(path, &temp) {
            Ok(()) => retired.push((temp, *cut)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(EngineError::io("retire file")(e)),
        }
    }
    sync_dir(dir)?;
    for (temp, cut) in retired {
        if cut {
            let file = match OpenOptions::new().write(true).open(&temp) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                opened => opened.map_err(EngineError::io("retire file"))?,
            };
            shrink(&file).map_err(EngineError::io("retire file"))?;
        }
        match fs::remove_file(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(EngineError::io("remove retired file")(e)),
        }
    }
    Ok(())
}

/// The temporary name a file at `path` takes while it is retired: its name and
/// `.retired.tmp`.
pub(super) fn retired_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".retired{TEMP_SUFFIX}"));
    path.with_file_name(name)
}

/// Cut `file` to nothing [`RETIRE_STEP_BYTES`] at a time, fsyncing after each cut and then
/// pausing twice as long as the step took, so the file system's journal and the disk spend at
/// most about a third of their time on the retirement and the flushers' `fdatasync`s find
/// them mostly free.
fn shrink(file: &File) -> io::Result<()> {
    let mut len = file.metadata()?.len();
    while len > 0 {
        let started = std::time::Instant::now();
        len = len.saturating_sub(RETIRE_STEP_BYTES);
        file.set_len(len)?;
        file.sync_all()?;
        std::thread::sleep(started.elapsed() * 2);
    }
    Ok(())
}

/// Make a recovered segment the active one: cut it at `end` (everything after is a torn or
/// corrupt tail), preallocate it again and map it.
pub(super) fn resume_segment(
    dir: &Path,
    segment: Segment,
    end: u64,
    options: &MemLogOptions,
) -> Result<(Segment, u64), EngineError> {
    let Segment { id, path, file, map, .. } = segment;
    let old_len = map.len();
    // The mapping is dropped before the file is cut: a truncated file is never mapped.
    drop(map);
    // The segment keeps the capacity it was made with (space it holds already); a segment
    // made before the disk filled is not grown to `segment_bytes_max` again.
    let wanted = segment_capacity(dir, options.segment_bytes_max, 0).max(old_len);
    let capacity = wanted.max(end + SEAL_RECORD_BYTES as u64);
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
