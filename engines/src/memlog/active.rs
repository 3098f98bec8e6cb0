//! # Appending: the active segment
//!
//! Records are appended to the *pending* buffer of the active segment under one lock and are
//! readable from it at once; the flusher (or the appender itself, past
//! [`PENDING_BYTES_MAX`]) writes the buffer to the file and moves the segment's readable mark.
//!
//! ## Writes off the appenders' lock
//! The flusher takes the pending buffers (the sealed segments', then the active one's) out
//! under the active lock, into [`Active::in_flight`], gives the active segment an empty
//! recycled buffer, and lets the lock go before it calls `write`; the readable marks move
//! once the bytes are in the files, and then the buffers are recycled. A read that finds
//! its record past the readable mark looks in the bytes in flight, then in the pending
//! buffer, all under the active lock, so a record is always found in one of the three.
//! Appends never wait for the flusher's `write`: holding the lock through it stalled every
//! put for the 40-500 µs a write of a few hundred KiB takes (docs/BENCHMARKS.md, "Writes
//! off the appenders' lock"). One write is in flight at a time, so readable marks move in
//! order; an appender that must write itself (past [`PENDING_BYTES_MAX`]) first waits for
//! the one in flight.
//!
//! ## Rolls, off the appender's path
//! When the next record would not fit, the active segment is *sealed* and the next one takes
//! its place. An appender does only the part of that which needs no disk: it encodes the seal
//! record into the old segment's pending bytes, moves the old segment to the *sealed* queue of
//! [`Active`], and switches to the *spare*, a segment file that the preparer thread made ahead
//! of time: preallocated, header written, renamed to its final name, directory fsynced.
//! Writing the old segment's last bytes and its seal, and its `fdatasync`, are the flusher's
//! (`flusher.rs`): it syncs every sealed segment, oldest first, before the active one, so a
//! `sync` that returns has made durable every segment its records are in, seals included.
//! The preparer is asked for the next two spares when the active segment is half full (more
//! for small segments: as many as hold 16 MiB, up to 16), so in steady state a
//! roll waits for nothing, even when one spare was slow to make; and the roll
//! wakes no thread (the flusher syncs the seal within its interval, as it does the appends
//! after it), so the put that crosses a roll costs little more than any other.
//!
//! Only when the spare is not ready (appends outran the preparer, or it failed) does the roll
//! wait for it; a record larger than a segment gets a segment of its own, made by the
//! appender. Both are the exception, and both wait on the disk.
//!
//! ## Why a named spare is safe
//! The spares for segments `n + 1` and `n + 2` carry their final names while `n` is still
//! active. A crash then leaves `n` without a seal record, and recovery ends the log in `n` and
//! deletes every later segment, the spares included; a spare is only ever read once the seal of
//! the segment before it is on disk, and that seal is written only after the roll switched to
//! the spare. Only the preparer makes segment files ahead of the active one, in id order and
//! each id once (the roll waits for it rather than racing it), so two files never claim one id.
//!
//! The spare's own file is not fsynced before it is named: the directory's fsync makes its
//! name and its blocks durable, and its header becomes durable with the first `fdatasync` of
//! its records, before any of them is acknowledged. A crash before that may leave a named
//! spare without a valid header, and recovery ends the log before such a segment (and
//! deletes it), which loses nothing acknowledged. One fsync a spare rather than two: with
//! small segments under load the preparer could not keep up, and rolls waited for it
//! (docs/BENCHMARKS.md, "Writes off the appenders' lock").
//!
//! ## After a failure
//! After a failed write the tail of the file is unknown, so the active segment refuses every
//! later append; only reopening (recovery) makes the log writable again. After a failed
//! `fdatasync` likewise: no later write could ever be acknowledged as durable, so appends are
//! refused from the moment the flusher recorded the failure, not only the next `sync`. The same after a roll
//! whose next segment cannot be made (a full disk): it seals nothing, but the log is failed, so
//! that a full disk turns the engine read-only until it is reopened with room to go on.

use std::fs;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};

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

/// When the pending buffer reaches this many bytes the appender wakes the flusher, so that in
/// the common case the flusher writes it long before the appender would have to
/// ([`PENDING_BYTES_MAX`]).
const PENDING_WAKE_BYTES: usize = PENDING_BYTES_MAX / 4;

const _: () = assert!(PENDING_WAKE_BYTES < PENDING_BYTES_MAX, "the flusher is woken first");

#[derive(Debug)]
pub(super) struct Active {
    pub(super) segment: Arc<Segment>,
    /// Capacity of the active segment (its preallocated file length).
    pub(super) capacity: u64,
    /// Offset just past the last appended record, pending ones included.
    pub(super) end: u64,
    /// Records appended but not yet written to the file; they start at `segment.readable`.
    pub(super) pending: Vec<u8>,
    /// Segments sealed by a roll and not yet known durable, oldest first: the flusher writes
    /// their last bytes (seal record included) and fdatasyncs them before the active segment.
    pub(super) sealed: Vec<Sealed>,
    /// Empty buffers, pending buffers the flusher has written, for the next pending buffer
    /// to start with (after a roll, or when the flusher takes the pending bytes to write):
    /// without them, every new pending buffer grows from nothing again, copying itself at
    /// each doubling.
    pub(super) recycled: Vec<Vec<u8>>,
    /// Bytes the flusher took out of pending buffers and is writing to their files without
    /// the active lock, oldest first; empty when no such write is under way (see "Writes
    /// off the appenders' lock" above).
    pub(super) in_flight: Vec<InFlight>,
}

/// Pending bytes of one segment that the flusher is writing without the active lock. Reads
/// find them here until the segment's readable mark covers them.
#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) segment: Arc<Segment>,
    /// Offset of the first byte in the segment.
    pub(super) at: u64,
    /// Shared with the writer; nothing changes them.
    pub(super) bytes: Arc<Vec<u8>>,
}

/// Empty buffers [`Active`] keeps for new pending buffers.
const RECYCLED_BUFFERS_MAX: usize = 4;

impl Active {
    /// Keep a written pending buffer for a later one (unless enough are kept already, or it
    /// grew past the usual size).
    pub(super) fn recycle(&mut self, mut buffer: Vec<u8>) {
        buffer.clear();
        if buffer.capacity() > 0
            && buffer.capacity() <= 4 * PENDING_BYTES_MAX
            && self.recycled.len() < RECYCLED_BUFFERS_MAX
        {
            self.recycled.push(buffer);
        }
    }

    /// An empty buffer to start a pending buffer with: a recycled one when there is one.
    fn fresh_buffer(&mut self) -> Vec<u8> {
        self.recycled.pop().unwrap_or_default()
    }

    /// Offset in `segment` of the first byte of its pending buffer: just past the bytes in
    /// flight for it (one part a segment at most), else its readable mark.
    fn pending_start(&self, segment: &Segment) -> u64 {
        let in_flight = self.in_flight.iter().find(|w| w.segment.id == segment.id);
        in_flight.map_or_else(
            || segment.readable.load(Ordering::Acquire),
            |w| w.at + w.bytes.len() as u64,
        )
    }

    /// The bytes of `segment` from `offset` on that are not in its file yet (in flight or
    /// pending), if `offset` lies in them.
    pub(super) fn unwritten(&self, segment: u32, offset: u64) -> Option<&[u8]> {
        let in_flight = self.in_flight.iter().find(|w| {
            w.segment.id == segment && (w.at..w.at + w.bytes.len() as u64).contains(&offset)
        });
        if let Some(w) = in_flight {
            return w.bytes.get((offset - w.at) as usize..);
        }
        let pending = std::iter::once((&self.segment, &self.pending))
            .chain(self.sealed.iter().map(|s| (&s.segment, &s.pending)))
            .find(|(s, _)| s.id == segment);
        let (segment, pending) = pending?;
        let start = self.pending_start(segment);
        (offset >= start).then(|| pending.get((offset - start) as usize..)).flatten()
    }

    /// Move every non-empty pending buffer (the sealed segments', oldest first, then the
    /// active one's) into `in_flight`, for the flusher to write without the lock; the parts
    /// to write. Called with no write in flight, so each buffer starts at its segment's
    /// readable mark.
    fn take_for_write(&mut self) -> Vec<(Arc<Segment>, u64, Arc<Vec<u8>>)> {
        debug_assert!(self.in_flight.is_empty(), "one write in flight at a time");
        let fresh = (!self.pending.is_empty()).then(|| self.fresh_buffer());
        let Active { segment, pending, sealed, in_flight, .. } = self;
        let active = fresh.map(|fresh| (&*segment, std::mem::replace(pending, fresh)));
        let taken = sealed.iter_mut().map(|s| (&s.segment, std::mem::take(&mut s.pending)));
        for (segment, bytes) in taken.chain(active).filter(|(_, bytes)| !bytes.is_empty()) {
            let at = segment.readable.load(Ordering::Acquire);
            in_flight.push(InFlight { segment: Arc::clone(segment), at, bytes: Arc::new(bytes) });
        }
        in_flight.iter().map(|w| (Arc::clone(&w.segment), w.at, Arc::clone(&w.bytes))).collect()
    }

    /// After the parts [`Active::take_for_write`] took are in their files (and the writer
    /// dropped them): nothing is in flight, and the buffers are kept for later.
    fn finish_write(&mut self) {
        for written in std::mem::take(&mut self.in_flight) {
            // Reads only look at in-flight bytes under the lock: nothing else holds them.
            if let Ok(buffer) = Arc::try_unwrap(written.bytes) {
                self.recycle(buffer);
            }
        }
    }
}

/// A segment a roll sealed whose seal is not yet durable (see the module documentation).
#[derive(Debug)]
pub(super) struct Sealed {
    pub(super) segment: Arc<Segment>,
    /// Offset just past its seal record.
    pub(super) end: u64,
    /// Its bytes not yet written to the file (they start at `segment.readable`), ending with
    /// the seal record; empty once written.
    pub(super) pending: Vec<u8>,
}

/// A segment file made ahead of the roll that will need it: preallocated, header written,
/// renamed to its final name and the directory fsynced (see "Why a named spare is safe"
/// above).
///
/// Why not zeros: a spare used to be written full of zeros first, so that its blocks were
/// initialized and an `fdatasync` after an append need not commit the extent change of a
/// preallocated ("unwritten") block. Measured on ext4 (docs/BENCHMARKS.md, "Spare segments
/// and the disk queue"), that saves about 0.1 ms at the p99.9 of one `fdatasync`, while the
/// 64 MiB of zeros per segment (three spares at once in a 3-node process) queued in front of
/// every other log's `fdatasync` and stalled them for 4-90 ms. Preallocation alone still
/// reserves the blocks, so a full disk shows up when a segment is made, never as a fault on
/// a mapped page.
///
/// The preparer also enters each spare in the segment table as soon as it is made, so that
/// the roll that takes it does not take the table's write lock (which waits for every reader
/// copying a record out of a mapping). Readers never look for a spare's id: no location
/// points into it before it is the active segment, and [`MemLog::sealed_segments`] lists
/// only the segments before the active one.
#[derive(Debug)]
pub(super) struct Spare {
    pub(super) segment: Arc<Segment>,
    capacity: u64,
}

/// What the appenders and the preparer thread share about the next segment.
#[derive(Debug)]
pub(super) struct SpareState {
    /// The preparer makes spares for every segment id up to this one.
    wanted: u32,
    /// The highest segment id the preparer made a spare for (or failed to).
    made: u32,
    /// Spares made and waiting for their rolls, in id order.
    pub(super) ready: Vec<Spare>,
    /// The segment id whose spare could not be made, and why.
    failure: Option<(u32, io::ErrorKind, String)>,
    pub(super) shutdown: bool,
}

impl SpareState {
    /// No spare yet, for a log whose active segment is `active`.
    pub(super) fn new(active: u32) -> SpareState {
        SpareState { wanted: 0, made: active, ready: Vec::new(), failure: None, shutdown: false }
    }
}

/// Spares are asked for once the active segment is this full (in percent): early enough to
/// be done before the roll, late enough that short-lived logs (tests, small engines) never
/// pay for one. A roll itself asks for nothing and wakes no thread: the put that crosses it
/// pays only for switching segments (docs/BENCHMARKS.md, the section on "rolls that wake
/// nobody").
const SPARE_START_PERCENT: u64 = 50;
/// How far ahead of the active segment spares are asked for at least, when it is half full:
/// the next segment and the one after, so that a roll finds its spare ready even when the
/// one before was slow to make (a slow fsync of the directory under load). Each holds a
/// segment's worth of disk space.
const SPARES_AHEAD: u32 = 2;
/// Small segments get more spares ahead, as many as hold this many bytes (up to
/// [`SPARES_AHEAD_LIMIT`]): a spare now and then takes 60-80 ms to make under load, and
/// 512 KiB segments filled 40 times a second under merges' copies ran through two or four
/// spares in that time, so rolls waited 19-27 ms for theirs. Default 64 MiB segments keep
/// two.
const SPARE_BYTES_AHEAD: u64 = 16 << 20;
/// The most spares asked for ahead, whatever their size.
const SPARES_AHEAD_LIMIT: u32 = 16;

/// How far ahead spares are asked for in a log of `segment_bytes_max` segments.
pub(super) fn spares_ahead(segment_bytes_max: u64) -> u32 {
    let fit = SPARE_BYTES_AHEAD / segment_bytes_max.max(1);
    u32::try_from(fit).unwrap_or(u32::MAX).clamp(SPARES_AHEAD, SPARES_AHEAD_LIMIT)
}

impl MemLog {
    /// Append one record and return where it starts. Visible to [`MemLog::read`] at once;
    /// durable after a later [`MemLog::sync`] returns. Waits on the disk only in the
    /// exceptions named in the module documentation.
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
        self.shared.check_writable()?;
        if active.end + len + SEAL_RECORD_BYTES as u64 > active.capacity {
            self.shared.roll(&mut active, len)?;
        }
        let at = Location { segment: active.segment.id, offset: active.end as u32 };
        let pending_before = active.pending.len();
        encode_record(kind, key, value, &mut active.pending);
        active.end += len;
        // Counted under the lock, so that a flush that reads the count has the bytes too;
        // sequentially consistent for the flusher's idle handshake (`crate::idle`).
        self.shared.appended.fetch_add(1, Ordering::SeqCst);
        let unwritten =
            active.pending.len() + active.sealed.iter().map(|s| s.pending.len()).sum::<usize>();
        if unwritten >= PENDING_BYTES_MAX {
            active = self.shared.write_here(active)?;
        } else if pending_before < PENDING_WAKE_BYTES && active.pending.len() >= PENDING_WAKE_BYTES
        {
            self.shared.flush_wanted.notify_one();
        }
        let half_full = active.end * 100 >= active.capacity * SPARE_START_PERCENT;
        let ahead = active.segment.id + self.shared.spares_ahead;
        drop(active);
        // Also what makes a seal durable after a roll here: the flusher flushes within its
        // interval once something is appended, sealed segments first.
        self.shared.wake_idle_flusher();
        if half_full {
            self.shared.want_spare(ahead);
        }
        Ok(at)
    }

    /// Wait until the spare the next roll takes is made (or failed, or the log closes), so
    /// that a [`MemLog::roll`] called soon after, under a lock of the caller's, waits for no
    /// disk. Appends may roll in between; then the next roll may wait after all.
    pub fn prepare_roll(&self) {
        let next = lock(&self.shared.active).segment.id + 1;
        // Made, not ready: an append may have rolled to `next` since, taking its spare, and
        // then nothing would ever make it ready again.
        drop(self.shared.wait_for_spare_state(next, |state| state.made >= next));
    }

    /// Seal the active segment now and start a new one; returns the new active segment's id.
    /// Every record appended before this call is in a segment with a smaller id; like every
    /// append, it is durable after a later [`MemLog::sync`] returns (this call does not wait
    /// for the disk unless the spare is not ready).
    pub fn roll(&self) -> Result<u32, EngineError> {
        let mut active = lock(&self.shared.active);
        self.shared.check_writable()?;
        self.shared.roll(&mut active, 0)?;
        // Nothing may be appended after this roll for a while: the seal's fdatasync now, and
        // the next spare.
        self.shared.flush_soon();
        self.shared.want_spare(active.segment.id + 1);
        Ok(active.segment.id)
    }
}

impl Shared {
    /// Refuse to append after a failed write (the file's tail is unknown) or a failed
    /// `fdatasync` (no later write could be acknowledged as durable): see "After a failure".
    fn check_writable(&self) -> Result<(), EngineError> {
        if self.write_failed.load(Ordering::Acquire) {
            return Err(failed_error());
        }
        if self.sync_failed.load(Ordering::Acquire) {
            return Err(self.sync_failure());
        }
        Ok(())
    }
}

pub(super) fn failed_error() -> EngineError {
    EngineError::Io {
        during: "append",
        source: io::Error::other("an earlier write failed; reopen to recover"),
    }
}

impl Shared {
    /// Write the pending buffers (the sealed segments', then the active one's) to their files
    /// under the active lock, which the appender holds: memory held for unwritten records
    /// stays bounded when the flusher falls behind. Waits first for a write the flusher has
    /// in flight, so that readable marks move in order; then writes as the flusher does,
    /// without letting the lock go. A failed write makes the log failed.
    fn write_here<'a>(
        &self,
        mut active: MutexGuard<'a, Active>,
    ) -> Result<MutexGuard<'a, Active>, EngineError> {
        while !active.in_flight.is_empty() {
            if self.write_failed.load(Ordering::Acquire) {
                return Err(failed_error());
            }
            active = self.written.wait(active).unwrap_or_else(|p| p.into_inner());
        }
        for (segment, at, bytes) in active.take_for_write() {
            if let Err(e) = segment.file.write_all_at(&bytes, at) {
                self.write_failed.store(true, Ordering::Release);
                return Err(EngineError::io("write segment")(e));
            }
            segment.readable.store(at + bytes.len() as u64, Ordering::Release);
        }
        active.finish_write();
        Ok(active)
    }

    /// The flusher's write: take every pending buffer under the active lock (into
    /// [`Active::in_flight`], where reads find them), write them to their files without it,
    /// through `ring` when there is one, move the readable marks, and recycle the buffers.
    /// A failed write makes the log failed, and its bytes stay in flight for reads.
    pub(super) fn write_unlocked(
        &self,
        active: MutexGuard<'_, Active>,
        mut ring: Option<&mut sys::Uring>,
    ) -> Result<(), EngineError> {
        let mut active = active;
        let parts = active.take_for_write();
        drop(active);
        for (segment, at, bytes) in parts {
            let outcome = match ring.as_deref_mut() {
                None => segment.file.write_all_at(&bytes, at),
                Some(ring) => ring.write_all_at(&segment.file, &bytes, at),
            };
            if let Err(e) = outcome {
                // Under the lock, so that an appender waiting in `write_here` sees it.
                let _active = lock(&self.active);
                self.write_failed.store(true, Ordering::Release);
                self.written.notify_all();
                return Err(EngineError::io("write segment")(e));
            }
            segment.readable.store(at + bytes.len() as u64, Ordering::Release);
        }
        lock(&self.active).finish_write();
        self.written.notify_all();
        Ok(())
    }
}

impl Shared {
    /// Seal the active segment and make the next one (room for a record of `next_len` bytes)
    /// the active one. Called with the active lock held; needs no disk when the spare is ready
    /// (see the module documentation). If the next segment cannot be had, nothing is sealed,
    /// the log is failed and the error is returned.
    fn roll(&self, active: &mut Active, next_len: u64) -> Result<(), EngineError> {
        let id = active.segment.id.checked_add(1).expect("segment ids do not run out");
        let needed = (SEGMENT_HEADER_BYTES + SEAL_RECORD_BYTES) as u64 + next_len;
        let next = self.take_spare(id).and_then(|spare| match spare {
            Some(spare) if spare.capacity >= needed => Ok((spare.segment, spare.capacity)),
            // A record larger than a segment: a segment of its own size, renamed over the
            // spare's name (the spare is dropped unused), and entered in the table in its
            // place.
            _ => {
                let capacity = segment_capacity(&self.dir, self.options.segment_bytes_max, needed);
                let segment = Arc::new(create_segment(&self.dir, id, capacity)?);
                self.enter_segment(&segment);
                Ok((segment, capacity))
            }
        });
        let (segment, capacity) = match next {
            Ok(next) => next,
            Err(e) => {
                // Nothing is sealed, but the log cannot go on: failed, as after a failed
                // write, until it is reopened (which `Recovering` does once there is room).
                self.write_failed.store(true, Ordering::Release);
                return Err(e);
            }
        };
        encode_record(RecordKind::Seal, &[], &[], &mut active.pending);
        active.end += SEAL_RECORD_BYTES as u64;
        let old = std::mem::replace(&mut active.segment, segment);
        let fresh = active.fresh_buffer();
        let pending = std::mem::replace(&mut active.pending, fresh);
        active.sealed.push(Sealed { segment: old, end: active.end, pending });
        active.capacity = capacity;
        active.end = SEGMENT_HEADER_BYTES as u64;
        Ok(())
    }

    /// Enter `segment` in the segment table, in its id's place (replacing a spare of that id).
    fn enter_segment(&self, segment: &Arc<Segment>) {
        let mut segments = self.segments.write().unwrap_or_else(|p| p.into_inner());
        match segments.binary_search_by_key(&segment.id, |s| s.id) {
            Ok(at) => segments[at] = Arc::clone(segment),
            Err(at) => segments.insert(at, Arc::clone(segment)),
        }
    }

    /// Ask the preparer for the spares of the segments up to `id`, unless it was asked already.
    pub(super) fn want_spare(&self, id: u32) {
        if self.spare_wanted.load(Ordering::Relaxed) >= id {
            return;
        }
        let mut state = lock(&self.spare);
        if state.wanted < id {
            state.wanted = id;
            self.spare_changed.notify_all();
        }
        self.spare_wanted.store(state.wanted, Ordering::Relaxed);
    }

    /// The spare of segment `id`, waiting for the preparer if it is not ready. `Ok(None)` only
    /// if the log is closing.
    fn take_spare(&self, id: u32) -> Result<Option<Spare>, EngineError> {
        let mut state = self.wait_for_spare(id);
        if let Some(at) = state.ready.iter().position(|spare| spare.segment.id == id) {
            return Ok(Some(state.ready.remove(at)));
        }
        if let Some((_, kind, message)) = state.failure.take_if(|(failed, ..)| *failed == id) {
            // Made again at the next roll's request (the disk may have room by then).
            state.made = id - 1;
            return Err(EngineError::Io {
                during: "prepare segment",
                source: io::Error::new(kind, message),
            });
        }
        debug_assert!(state.shutdown, "the wait ends with the spare, its failure, or shutdown");
        Ok(None)
    }

    /// Ask for the spare of segment `id` and wait until it is ready, failed, or the log
    /// closes; the spare state, locked. Only a roll, under the active lock, may wait so: no
    /// other roll can take the spare meanwhile.
    fn wait_for_spare(&self, id: u32) -> MutexGuard<'_, SpareState> {
        self.wait_for_spare_state(id, |state| {
            state.ready.iter().any(|spare| spare.segment.id == id)
                || state.failure.as_ref().is_some_and(|(failed, ..)| *failed == id)
        })
    }

    /// Ask for the spare of segment `id` and wait until `settled` holds of the spare state,
    /// or the log closes; the spare state, locked.
    fn wait_for_spare_state(
        &self,
        id: u32,
        settled: impl Fn(&SpareState) -> bool,
    ) -> MutexGuard<'_, SpareState> {
        self.want_spare(id);
        let mut state = lock(&self.spare);
        while !(state.shutdown || settled(&state)) {
            // The preparer may be asleep (after a failure this roll's predecessor took): wake it
            // to look again.
            self.spare_changed.notify_all();
            state = self.spare_changed.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state
    }

    /// The preparer thread: make the spare of every segment asked for, one at a time.
    pub(super) fn run_preparer(&self) {
        let mut state = lock(&self.spare);
        loop {
            if state.shutdown {
                return;
            }
            // After a failure nothing more is made until a roll took the failure (and asked
            // for that id again): spares are made in id order, each id once.
            if state.made >= state.wanted || state.failure.is_some() {
                state = self.spare_changed.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            let id = state.made + 1;
            drop(state);
            let made = self.make_spare(id);
            state = lock(&self.spare);
            state.made = state.made.max(id);
            match made {
                Ok(Some(spare)) => {
                    assert!(
                        state.ready.last().is_none_or(|last| last.segment.id < id),
                        "spares are made in id order, each once"
                    );
                    state.ready.push(spare);
                }
                Ok(None) => {}
                Err(e) => {
                    let kind = std::error::Error::source(&e)
                        .and_then(|s| s.downcast_ref::<io::Error>())
                        .map_or(io::ErrorKind::Other, io::Error::kind);
                    state.failure = Some((id, kind, e.to_string()));
                }
            }
            self.spare_changed.notify_all();
        }
    }

    /// Make the spare for segment `id` (see [`Spare`]). `Ok(None)` if the log began closing
    /// first.
    fn make_spare(&self, id: u32) -> Result<Option<Spare>, EngineError> {
        if lock(&self.spare).shutdown {
            return Ok(None);
        }
        let capacity = segment_capacity(&self.dir, self.options.segment_bytes_max, 0);
        let temp = self.dir.join(format!("{id:010}{SEGMENT_SUFFIX}.spare{TEMP_SUFFIX}"));
        let file = create_temp_file(&temp, "create spare segment")?;
        let made = self.finish_spare(id, &temp, file, capacity);
        if made.is_err() {
            let _ = fs::remove_file(&temp);
        }
        let segment = Arc::new(made?);
        self.enter_segment(&segment);
        Ok(Some(Spare { segment, capacity }))
    }

    /// Blocks allocated, header, rename to the segment's name, directory fsync, map (the
    /// header is made durable by the first `fdatasync` of the segment's records: see "Why a
    /// named spare is safe").
    fn finish_spare(
        &self,
        id: u32,
        temp: &std::path::Path,
        file: fs::File,
        capacity: u64,
    ) -> Result<Segment, EngineError> {
        sys::preallocate(&file, capacity).map_err(EngineError::io("preallocate segment"))?;
        file.write_all_at(&encode_segment_header(id), 0)
            .map_err(EngineError::io("write segment"))?;
        let path = segment_path(&self.dir, id);
        fs::rename(temp, &path).map_err(EngineError::io("rename spare segment"))?;
        sync_dir(&self.dir)?;
        let map = sys::Map::new(&file, capacity).map_err(EngineError::io("map segment"))?;
        let readable = AtomicU64::new(SEGMENT_HEADER_BYTES as u64);
        Ok(Segment { id, path, file, map, readable })
    }
}
