//! # The log engine's background thread: hint files and merges
//!
//! One thread per engine writes the hint file of each sealed segment and merges segments
//! whose bytes are mostly dead (see "Restart and hint files" and "Merge" in the engine's
//! documentation, `log.rs`). Its passes over a segment are paced ([`Pace`]) so that they take
//! the CPU, the disk and the keydir lock a little at a time.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{hint_path, Shared, State, HINT_COUNT_AT, HINT_HEADER_BYTES, HINT_MAGIC, HINT_VERSION};
use crate::data_dir::sync_dir;
use crate::memlog::{record_bytes, Location, Record, RecordKind, ScanEnd};
use crate::EngineError;

impl Shared {
    /// The background thread: a round of work (merges, then hints) every
    /// `background_interval_ms` while the log takes appends. Work only comes from appends
    /// (sealed segments, dead bytes), so once a round began with no append after it, the
    /// thread sleeps without a timer until the next one (`crate::idle`), then waits the
    /// interval and runs a round as before.
    ///
    /// `began_at` is the append count when the last round began; `None` when a round is due
    /// anyway (work found at open, or a round that failed and must be tried again). The
    /// caller reads it before the engine takes writes, so none is missed.
    pub(super) fn run_background(&self, mut hinted: HashSet<u32>, mut began_at: Option<u64>) {
        let interval = Duration::from_millis(self.options.background_interval_ms.max(1));
        loop {
            if let Some(began_at) = began_at {
                if self.background.sleep_until(|| self.log.appended() != began_at) {
                    return;
                }
            }
            if self.sleep(interval) {
                return;
            }
            began_at = Some(self.log.appended());
            self.rounds.fetch_add(1, Ordering::Relaxed);
            // A failed round leaves everything as it was (a merge deletes its segment only
            // after its copies are durable); the next round, one interval on, tries again.
            if self.background_round(&mut hinted).is_err() {
                began_at = None;
            }
        }
    }

    /// Whether the log as opened has background work: a sealed segment without a hint, or
    /// one to merge.
    pub(super) fn work_at_open(&self, hinted: &HashSet<u32>) -> bool {
        let sealed = self.log.sealed_segments();
        sealed.iter().any(|(id, _)| !hinted.contains(id))
            || !self.merge_candidates(&sealed).is_empty()
    }

    /// The sealed segments with `merge_dead_percent` of their bytes dead.
    fn merge_candidates(&self, sealed: &[(u32, u64)]) -> Vec<u32> {
        if self.options.merge_dead_percent >= 100 {
            return Vec::new();
        }
        let state = self.read();
        sealed
            .iter()
            .filter(|(id, _)| {
                let usage = state.usage.get(id).copied().unwrap_or_default();
                let dead = usage.bytes - usage.live;
                dead * 100 >= usage.bytes * u64::from(self.options.merge_dead_percent)
            })
            .map(|(id, _)| *id)
            .collect()
    }

    pub(super) fn background_round(&self, hinted: &mut HashSet<u32>) -> Result<(), EngineError> {
        let _round = self.round.lock().unwrap_or_else(|p| p.into_inner());
        let sealed = self.log.sealed_segments();
        let candidates = self.merge_candidates(&sealed);
        for id in candidates {
            if self.stopped() {
                return Ok(());
            }
            let older_exists = self.log.sealed_segments().iter().any(|&(other, _)| other < id);
            if self.merge_segment(id, older_exists)? {
                hinted.remove(&id);
            }
        }
        // Hints last, so that segments sealed by the merges' own copies get theirs too.
        for (id, _) in self.log.sealed_segments() {
            if self.stopped() {
                return Ok(());
            }
            if !hinted.contains(&id) {
                self.write_hint(id)?;
                hinted.insert(id);
            }
        }
        Ok(())
    }

    /// Write the hint file of sealed segment `id` (temp file, fsync, rename, dir fsync).
    fn write_hint(&self, id: u32) -> Result<(), EngineError> {
        let mut body = Vec::with_capacity(HINT_HEADER_BYTES);
        body.extend_from_slice(HINT_MAGIC);
        body.push(HINT_VERSION);
        body.push(0);
        body.extend_from_slice(&id.to_le_bytes());
        body.extend_from_slice(&[0; 4]);
        let mut count = 0u32;
        let mut pace = Pace::new(self.options.merge_bytes_per_sec);
        let end = self.log.scan_segment(id, &mut |at, record| {
            pace.done(record_bytes(record.key.len(), record.value.len()) / SCAN_DISCOUNT);
            if pace.wait(self) {
                return ControlFlow::Break(());
            }
            if matches!(record.kind, RecordKind::Put | RecordKind::Tombstone) {
                body.push(record.kind as u8);
                body.extend_from_slice(&(record.key.len() as u16).to_le_bytes());
                body.extend_from_slice(&(record.value.len() as u32).to_le_bytes());
                body.extend_from_slice(&at.offset.to_le_bytes());
                body.extend_from_slice(record.key);
                count += 1;
            }
            ControlFlow::Continue(())
        })?;
        if end != ScanEnd::Sealed {
            // A damaged sealed segment gets no hint: it is scanned (and cut) at the next open.
            // (Nor does one whose scan the engine's stop cut short: it is written next time.)
            return Ok(());
        }
        body[HINT_COUNT_AT..HINT_HEADER_BYTES].copy_from_slice(&count.to_le_bytes());
        let crc = crc32fast::hash(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        let path = hint_path(self.log.dir(), id);
        let temp = path.with_extension("hint.tmp");
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(EngineError::io("create hint"))?;
        file.write_all(&body).map_err(EngineError::io("write hint"))?;
        file.sync_all().map_err(EngineError::io("fsync hint"))?;
        fs::rename(&temp, &path).map_err(EngineError::io("rename hint"))?;
        sync_dir(self.log.dir())
    }

    /// Copy the live records of sealed segment `id` to the end of the log, then delete it.
    /// Returns false if the engine began stopping first (nothing is deleted then).
    fn merge_segment(&self, id: u32, older_exists: bool) -> Result<bool, EngineError> {
        let mut pace = Pace::new(self.options.merge_bytes_per_sec);
        let mut failure = None;
        let end = self.log.scan_segment(id, &mut |at, record| {
            let scanned = record_bytes(record.key.len(), record.value.len());
            match self.copy_forward(at, record, older_exists) {
                // A copied byte counts in full, a byte only read (a dead record) for a
                // quarter: reading a mostly dead segment is cheap, but not free.
                Ok(copied) => pace.done(copied + scanned.saturating_sub(copied) / SCAN_DISCOUNT),
                Err(e) => {
                    failure = Some(e);
                    return ControlFlow::Break(());
                }
            }
            if pace.wait(self) || self.stopped() {
                return ControlFlow::Break(());
            }
            ControlFlow::Continue(())
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        match end {
            ScanEnd::Stopped => return Ok(false),
            ScanEnd::Sealed => {}
            ScanEnd::EndsAt(offset) => {
                // Records past a bad one cannot be copied; keep the segment so that the next
                // open cuts the log there as recovery must.
                return Err(EngineError::Corrupt {
                    path: self.log.dir().display().to_string(),
                    reason: format!("segment {id} has a bad record at {offset}"),
                });
            }
        }
        // The copies must be durable before the originals go.
        self.log.sync()?;
        match fs::remove_file(hint_path(self.log.dir(), id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(EngineError::io("remove hint")(e)),
        }
        self.log.remove_segments(&[id])?;
        let mut state = self.write();
        if let Some(usage) = state.usage.remove(&id) {
            debug_assert_eq!(usage.live, 0, "a merged segment holds nothing live");
            state.log_bytes -= usage.bytes;
            state.live_record_bytes -= usage.live;
        }
        self.merges.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Copy one record of a segment being merged to the end of the log if it still matters.
    /// Returns the bytes copied.
    fn copy_forward(
        &self,
        at: Location,
        record: Record<'_>,
        older_exists: bool,
    ) -> Result<u64, EngineError> {
        match record.kind {
            RecordKind::Put => {
                // Most records of a segment worth merging are dead: tell so under the read
                // lock, which the foreground's gets share, and take the write lock only to
                // copy (checking again: a write may have landed in between).
                let live = |state: &State| {
                    state.keydir.get(record.key).is_some_and(|s| s.location() == at)
                };
                if !live(&self.read()) {
                    return Ok(0);
                }
                // The copy's append may roll: its spare is made first, so that the append does
                // not wait for the disk while holding the keydir's write lock, which every put
                // waits for.
                self.log.prepare_roll();
                let mut state = self.write();
                if !live(&state) {
                    return Ok(0);
                }
                let to = self.log.append(RecordKind::Put, record.key, record.value)?;
                state.apply_put(record.key, to, record.value.len() as u32);
                Ok(record_bytes(record.key.len(), record.value.len()))
            }
            RecordKind::Tombstone if older_exists => {
                let mut state = self.write();
                if state.keydir.get(record.key).is_some() {
                    // A later put already hides every older value.
                    return Ok(0);
                }
                let to = self.log.append(RecordKind::Tombstone, record.key, &[])?;
                state.apply_tombstone(record.key, to);
                Ok(record_bytes(record.key.len(), 0))
            }
            _ => Ok(0),
        }
    }
}

/// How much cheaper the background thread counts a byte it only reads (a dead record in a
/// merge, any record of a hint's scan) than one it copies, against `merge_bytes_per_sec`.
const SCAN_DISCOUNT: u64 = 4;

/// Paces the background thread's pass over a sealed segment to a rate of bytes per second,
/// so that a pass takes the CPU and the keydir lock a little at a time. Unpaced, the three
/// nodes of one process scanned their first sealed 64 MiB segments at once, right after the
/// roll, and took about half of the machine's CPU for 100 ms (docs/BENCHMARKS.md, "Spare
/// segments and the disk queue").
struct Pace {
    rate: u64,
    started: Instant,
    done: u64,
}

impl Pace {
    fn new(bytes_per_sec: u64) -> Self {
        Self { rate: bytes_per_sec.max(1), started: Instant::now(), done: 0 }
    }

    /// Count `bytes` of work done.
    fn done(&mut self, bytes: u64) {
        self.done += bytes;
    }

    /// Sleep while the work done is ahead of the rate by more than 5 ms; true if the engine
    /// began stopping.
    fn wait(&self, shared: &Shared) -> bool {
        let due = Duration::from_secs_f64(self.done as f64 / self.rate as f64);
        let elapsed = self.started.elapsed();
        due > elapsed + Duration::from_millis(5) && shared.sleep(due - elapsed)
    }
}
