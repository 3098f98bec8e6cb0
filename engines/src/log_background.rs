//! # The log engine's background thread: hint files and merges
//!
//! One thread per engine writes the hint file of each sealed segment and merges segments
//! whose bytes are mostly dead (see "Restart and hint files" and "Merge" in the engine's
//! documentation, `log.rs`). Its passes over a segment are paced ([`Pace`]) so that they take
//! the CPU, the disk and the keydir lock a little at a time.
//!
//! ## Candidates settle before they are read
//! A segment becomes a merge candidate once `merge_dead_percent` of its bytes are dead. Under
//! overwrites that is soon after its roll, while the keys it holds are still being written:
//! merged then, its live records are copied forward only to die a moment later, and every one
//! of its bytes is read and CRC-checked to find them. So a candidate that still holds live
//! records waits [`MERGE_SETTLE_ROUNDS`] rounds (a few seconds) before it is merged, and one
//! whose records have all died by then (nothing live, and no tombstone that an older segment
//! needs) is deleted without being read at all: the keydir's count of live bytes per segment
//! says so. Waiting costs disk space, so at most [`MERGE_WAITING_SEGMENTS`] candidates wait,
//! holding at most a quarter of the file system's free space ([`MERGE_WAITING_FREE_SHARE`]);
//! past that the oldest are merged at once, and on a disk short of space none waits (a node
//! that filled its disk needs every byte a merge gives back). Measured with 40 KB carts
//! rewritten once a second, merges read every byte the log took and copied a tenth of it
//! again before this; see docs/BENCHMARKS.md, "Merges that wait for dead segments".
//!
//! A candidate that waits gets no hint file either: it is about to go, and a hint is a full
//! read of the segment. (A restart in between scans it instead.)

use std::collections::{HashMap, HashSet};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::ops::ControlFlow;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{hint_path, Shared, State, HINT_COUNT_AT, HINT_HEADER_BYTES, HINT_MAGIC, HINT_VERSION};
use crate::data_dir::sync_dir;
use crate::memlog::{record_bytes, Location, Record, RecordKind, ScanEnd};
use crate::EngineError;

/// Rounds a merge candidate that still holds live records waits before it is merged (see
/// "Candidates settle before they are read").
pub(super) const MERGE_SETTLE_ROUNDS: u32 = 8;
/// The most merge candidates that wait at once; past this, the oldest are merged at once.
pub(super) const MERGE_WAITING_SEGMENTS: usize = 8;
/// The waiting candidates' bytes are at most the file system's free space divided by this:
/// on a disk short of space nothing waits, and merges give space back as soon as before.
pub(super) const MERGE_WAITING_FREE_SHARE: u64 = 4;

/// Merge candidates waiting to settle, and the rounds each has waited.
#[derive(Debug, Default)]
pub(super) struct Settling {
    waited: HashMap<u32, u32>,
}

impl Settling {
    /// Of `candidates` (ids and bytes, oldest first), those to merge this round: the ones
    /// `ready` (nothing in them to copy), the ones that waited `settle_rounds` rounds, and
    /// the oldest of the others past the bounds on waiting ([`MERGE_WAITING_SEGMENTS`], and
    /// `room` bytes). Returns them and whether any candidate is left waiting.
    fn due(
        &mut self,
        candidates: &[(u32, u64)],
        settle_rounds: u32,
        room: u64,
        ready: impl Fn(u32) -> bool,
    ) -> (Vec<u32>, bool) {
        self.waited.retain(|id, _| candidates.iter().any(|(c, _)| c == id));
        let ready: HashSet<u32> =
            candidates.iter().map(|&(id, _)| id).filter(|&id| ready(id)).collect();
        // The newest candidates may wait, as many as the bounds allow; older ones go now.
        let mut may_wait = HashSet::new();
        let mut bytes = 0u64;
        for &(id, size) in candidates.iter().rev().filter(|(id, _)| !ready.contains(id)) {
            bytes = bytes.saturating_add(size);
            if may_wait.len() == MERGE_WAITING_SEGMENTS || bytes > room {
                break;
            }
            may_wait.insert(id);
        }
        let mut due = Vec::new();
        for &(id, _) in candidates {
            let waited = self.waited.entry(id).or_insert(0);
            *waited += 1;
            if ready.contains(&id) || !may_wait.contains(&id) || *waited > settle_rounds {
                due.push(id);
            }
        }
        let left = candidates.len() > due.len();
        (due, left)
    }

    fn waits(&self, id: u32) -> bool {
        self.waited.contains_key(&id)
    }
}

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
            // So does a round that left candidates waiting to settle, with or without
            // appends.
            match self.background_round(&mut hinted, MERGE_SETTLE_ROUNDS) {
                Ok(false) => {}
                Ok(true) | Err(_) => began_at = None,
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
    fn merge_candidates(&self, sealed: &[(u32, u64)]) -> Vec<(u32, u64)> {
        if self.options.merge_dead_percent >= 100 {
            return Vec::new();
        }
        let state = self.read();
        sealed
            .iter()
            .copied()
            .filter(|(id, _)| {
                let usage = state.usage.get(id).copied().unwrap_or_default();
                let dead = usage.bytes - usage.live;
                dead * 100 >= usage.bytes * u64::from(self.options.merge_dead_percent)
            })
            .collect()
    }

    /// One round: merge the candidates that are due (see "Candidates settle before they are
    /// read"; `settle_rounds` 0 merges every candidate now), then write the hints of sealed
    /// segments that have none and wait for no merge. Returns whether work is left waiting
    /// (candidates settling, or segments not all written to their files yet), so that
    /// another round is due.
    pub(super) fn background_round(
        &self,
        hinted: &mut HashSet<u32>,
        settle_rounds: u32,
    ) -> Result<bool, EngineError> {
        let mut settling = self.round.lock().unwrap_or_else(|p| p.into_inner());
        let sealed = self.log.sealed_segments();
        let candidates = self.merge_candidates(&sealed);
        let room = fs4::available_space(self.log.dir())
            .map_or(u64::MAX, |free| free / MERGE_WAITING_FREE_SHARE);
        let (due, mut waiting) =
            settling.due(&candidates, settle_rounds, room, |id| self.nothing_to_copy(id, &sealed));
        for id in due {
            if self.stopped() {
                return Ok(waiting);
            }
            let older_exists = self.log.sealed_segments().iter().any(|&(other, _)| other < id);
            if self.merge_segment(id, older_exists)? {
                hinted.remove(&id);
            } else {
                // Not all written yet: the next round merges it.
                waiting = true;
            }
        }
        // Hints last, so that segments sealed by the merges' own copies get theirs too.
        for (id, _) in self.log.sealed_segments() {
            if self.stopped() {
                return Ok(waiting);
            }
            if !hinted.contains(&id) && !settling.waits(id) {
                if self.write_hint(id)? {
                    hinted.insert(id);
                } else {
                    waiting = true;
                }
            }
        }
        Ok(waiting)
    }

    /// Whether merging sealed segment `id` would copy nothing: no live record, and no
    /// tombstone unless it is the oldest of `sealed` (a tombstone hides values only in older
    /// segments). Such a segment is deleted without being read. Records in a sealed segment
    /// only ever die, so the answer holds until it is merged.
    fn nothing_to_copy(&self, id: u32, sealed: &[(u32, u64)]) -> bool {
        let usage = self.read().usage.get(&id).copied().unwrap_or_default();
        let older_exists = sealed.iter().any(|&(other, _)| other < id);
        usage.live == 0 && (usage.tombstones == 0 || !older_exists)
    }

    /// Write the hint file of sealed segment `id` (temp file, fsync, rename, dir fsync).
    /// False when the segment is not all written to its file yet: try again later.
    fn write_hint(&self, id: u32) -> Result<bool, EngineError> {
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
            if matches!(record.kind, RecordKind::Put | RecordKind::Tombstone | RecordKind::Append) {
                body.push(record.kind as u8);
                body.extend_from_slice(&(record.key.len() as u16).to_le_bytes());
                body.extend_from_slice(&(record.value.len() as u32).to_le_bytes());
                body.extend_from_slice(&at.offset.to_le_bytes());
                body.extend_from_slice(record.key);
                count += 1;
            }
            ControlFlow::Continue(())
        })?;
        match end {
            ScanEnd::Sealed => {}
            ScanEnd::Pending => return Ok(false),
            // A damaged sealed segment gets no hint: it is scanned (and cut) at the next
            // open. (Nor does one whose scan the engine's stop cut short.)
            ScanEnd::EndsAt(_) | ScanEnd::Stopped => return Ok(true),
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
        sync_dir(self.log.dir())?;
        Ok(true)
    }

    /// Copy the live records of sealed segment `id` to the end of the log, then delete it.
    /// Returns false, with nothing deleted, if the engine began stopping first or the
    /// segment is not all written to its file yet (a later round merges it).
    fn merge_segment(&self, id: u32, older_exists: bool) -> Result<bool, EngineError> {
        // Nothing to copy (see "Candidates settle before they are read"): not even read.
        let unread = self.nothing_to_copy(id, &self.log.sealed_segments());
        let end = if unread { ScanEnd::Sealed } else { self.copy_live(id, older_exists)? };
        match end {
            ScanEnd::Stopped | ScanEnd::Pending => return Ok(false),
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
        if unread {
            self.unread_merges.fetch_add(1, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// Read sealed segment `id` and copy what is live in it to the end of the log (paced);
    /// how its scan ended.
    fn copy_live(&self, id: u32, older_exists: bool) -> Result<ScanEnd, EngineError> {
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
        match failure {
            Some(e) => Err(e),
            None => Ok(end),
        }
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
            RecordKind::Put | RecordKind::Append => {
                // Most records of a segment worth merging are dead: tell so under the read
                // lock, which the foreground's gets share, and take the write lock only to
                // copy (checking again: a write may have landed in between). A put is live
                // while the keydir points at it, a part while its key's chain holds it.
                let live = |state: &State| match record.kind {
                    RecordKind::Put => {
                        state.keydir.get(record.key).is_some_and(|s| s.location() == at)
                    }
                    _ => state
                        .parts
                        .get(record.key)
                        .is_some_and(|chain| chain.iter().any(|&(part, _)| part == at)),
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
                // A key with parts is copied whole, its chain folded into one put: the
                // records it replaces (here and in other segments) all die.
                let folded;
                let value = if state.parts.contains_key(record.key) {
                    let base = (record.kind == RecordKind::Put).then_some(record.value);
                    folded = self.value(&state, record.key, base)?.expect("a live key");
                    &folded[..]
                } else {
                    record.value
                };
                let to = self.log.append(RecordKind::Put, record.key, value)?;
                state.apply_put(record.key, to, value.len() as u32);
                Ok(record_bytes(record.key.len(), value.len()))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A candidate with nothing to copy goes at once; the others wait their rounds, and
    /// another round is asked for while any waits.
    #[test]
    fn candidates_settle_unless_nothing_in_them_is_live() {
        let mut settling = Settling::default();
        let ready = |id: u32| id == 2;
        let of = |ids: &[u32]| ids.iter().map(|&id| (id, 100)).collect::<Vec<_>>();
        assert_eq!(settling.due(&of(&[1, 2, 3]), 2, u64::MAX, ready), (vec![2], true));
        assert!(settling.waits(1) && settling.waits(3));
        assert_eq!(settling.due(&of(&[1, 3]), 2, u64::MAX, ready), (vec![], true));
        // Segment 4 is new: it waits its own rounds.
        assert_eq!(settling.due(&of(&[1, 3, 4]), 2, u64::MAX, ready), (vec![1, 3], true));
        assert_eq!(settling.due(&of(&[4]), 2, u64::MAX, ready), (vec![], true));
        assert_eq!(settling.due(&of(&[4]), 2, u64::MAX, ready), (vec![4], false));
        // No settling: every candidate now.
        let every = Settling::default().due(&of(&[5, 6]), 0, u64::MAX, |_| false);
        assert_eq!(every, (vec![5, 6], false));
    }

    /// Past [`MERGE_WAITING_SEGMENTS`] waiting candidates, the oldest go at once.
    #[test]
    fn at_most_so_many_candidates_wait() {
        let mut settling = Settling::default();
        let candidates: Vec<(u32, u64)> =
            (1..=MERGE_WAITING_SEGMENTS as u32 + 3).map(|id| (id, 100)).collect();
        let (due, waiting) = settling.due(&candidates, 100, u64::MAX, |_| false);
        assert_eq!(due, vec![1, 2, 3]);
        assert!(waiting);
        // A candidate that is free to go does not count against the bound.
        let mut settling = Settling::default();
        let mut candidates: Vec<(u32, u64)> =
            (1..=MERGE_WAITING_SEGMENTS as u32).map(|id| (id, 100)).collect();
        candidates.push((99, 100));
        assert_eq!(settling.due(&candidates, 100, u64::MAX, |id| id == 99), (vec![99], true));
    }

    /// The waiting candidates hold at most `room` bytes: the newest wait, the oldest go;
    /// with no room, none waits.
    #[test]
    fn candidates_wait_only_while_the_disk_has_room() {
        let candidates = [(1, 300), (2, 300), (3, 300), (4, 300)];
        let mut settling = Settling::default();
        assert_eq!(settling.due(&candidates, 100, 700, |_| false), (vec![1, 2], true));
        let mut settling = Settling::default();
        assert_eq!(settling.due(&candidates, 100, 0, |_| false), (vec![1, 2, 3, 4], false));
    }
}
