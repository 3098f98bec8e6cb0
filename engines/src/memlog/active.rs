//! # Appending: the active segment
//!
//! Records are appended to the *pending* buffer of the active segment under one lock and are
//! readable from it at once; the flusher (or the appender itself, past
//! [`PENDING_BYTES_MAX`]) writes the buffer to the file and moves the segment's readable mark.
//! When the next record would not fit, the active segment is sealed (seal record, write,
//! fdatasync) and the next one takes its place: a *spare* made ahead of time by a helper
//! thread when there is one, a freshly created segment otherwise.
//!
//! After a failed write the tail of the file is unknown, so the active segment refuses every
//! later append; only reopening (recovery) makes the log writable again. The same after a
//! seal whose next segment could not be made (a full disk): recovery reads nothing past a
//! seal record, so a record appended there would be acknowledged and then lost.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::format::{
    encode_record, encode_segment_header, record_bytes, RecordKind, SEAL_RECORD_BYTES,
    SEGMENT_HEADER_BYTES,
};
use super::segment::{
    create_segment, create_temp_file, segment_capacity, segment_path, Segment, SEGMENT_SUFFIX,
    TEMP_SUFFIX,
};
use super::{lock, sync_dir, sys, EngineError, Location, MemLog, Shared};
use crate::{KEY_BYTES_MAX, VALUE_BYTES_MAX};

/// When the pending buffer of the active segment reaches this many bytes the appender writes
/// it to the file itself instead of waiting for the flusher, so memory held for unwritten
/// records stays bounded however rarely anyone syncs.
pub const PENDING_BYTES_MAX: usize = 1 << 20;

#[derive(Debug)]
pub(super) struct Active {
    pub(super) segment: Arc<Segment>,
    /// Capacity of the active segment (its preallocated file length).
    pub(super) capacity: u64,
    /// Offset just past the last appended record, pending ones included.
    pub(super) end: u64,
    /// Records appended but not yet written to the file; they start at `segment.readable`.
    pub(super) pending: Vec<u8>,
    /// Set after a write failed: the file's tail is unknown, so appends are refused.
    pub(super) failed: bool,
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
pub(super) struct Spare {
    segment: Segment,
    pub(super) temp: PathBuf,
    capacity: u64,
}

/// The helper starts filling the spare once the active segment is this full (in percent):
/// early enough to be done before the roll, late enough that short-lived logs (tests, small
/// engines) never pay for it.
const SPARE_START_PERCENT: u64 = 50;
/// Bytes of zeros written per `write` call while filling a spare.
const SPARE_FILL_CHUNK_BYTES: usize = 1 << 20;

impl MemLog {
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

pub(super) fn failed_error() -> EngineError {
    EngineError::Io {
        during: "append",
        source: io::Error::other("an earlier write failed; reopen to recover"),
    }
}

/// Write the pending buffer to the active segment's file and move the readable mark.
fn write_pending(active: &mut Active) -> Result<(), EngineError> {
    write_pending_with(active, None)
}

/// [`write_pending`], through `ring` when there is one (the flusher's io_uring).
pub(super) fn write_pending_with(
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
        self.durable_to(active.segment.id, active.end);
        // The active segment is sealed now: recovery reads nothing after its seal record, so
        // if the next segment cannot be made (a full disk), nothing may be appended here
        // again. Without this, small records that still fitted after the seal were
        // acknowledged as synced and then lost at the next open.
        let rolled = self.start_next_segment(active, next_len);
        if rolled.is_err() {
            active.failed = true;
        }
        rolled
    }

    /// After a seal: make the next segment (the spare if it is ready, else a new file) and
    /// make it the active one.
    fn start_next_segment(&self, active: &mut Active, next_len: u64) -> Result<(), EngineError> {
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
                let capacity = segment_capacity(&self.dir, self.options.segment_bytes_max, needed);
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
        let capacity = segment_capacity(&self.dir, self.options.segment_bytes_max, 0);
        let temp = self.dir.join(format!("{id:010}{SEGMENT_SUFFIX}.spare{TEMP_SUFFIX}"));
        let file = create_temp_file(&temp, "create spare segment")?;
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
}
