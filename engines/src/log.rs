//! # The log engine: Bitcask on the memory log
//!
//! Every write is appended to the [memory log](crate::memlog); an in-memory hash index, the
//! *keydir*, maps each live key to where its latest record starts. A get is one hash lookup
//! and one copy out of a memory-mapped segment; a put is one append and one index update. A
//! delete appends a *tombstone* so that a restart does not bring the key back.
//!
//! ## The keydir
//! A `hashbrown` table of 16-byte slots hashed with xxh3. A slot packs the key's place in a
//! key arena (40 bits), the segment id (24 bits), the record offset (32 bits) and the value
//! length (32 bits); keys live back to back in one arena (`u16` length, then the bytes), so a
//! live key costs its length plus 2 bytes of arena and about 17 bytes of table at full load
//! (twice that just after the table doubled). Deleted keys leave garbage in the arena; the
//! arena is rebuilt when garbage passes half of it (a pause proportional to the number of
//! keys, only ever caused by deletes). The keydir sits behind a reader-writer lock; a write
//! holds it across its append, so the order of records in the log is the order of updates in
//! the keydir, which is what makes replay and merge agree with the live state.
//!
//! ## Appended parts
//! An `append` ([`crate::chain`]) writes one record of kind `Append` holding the part, and
//! the keydir keeps, beside the key's slot, where each part since its latest put is (a
//! side table of only the keys that have parts; its memory is not in `memory_bytes`). A get
//! reads the put and the parts and joins them. A put, a delete or a merge's copy ends the
//! chain: a merge that meets the put or any part of a chained key copies the whole value,
//! parts joined, as one put. At recovery a part follows its key's put in the log, unless a
//! merge copied that key forward since, in which case the copy, later in the log, replaces
//! it and the part counts as dead.
//!
//! ## Restart and hint files
//! Recovery walks the segments in order and applies every record to a fresh keydir. For a
//! sealed segment the background thread writes a *hint file* (`<segment>.hint`): the key,
//! offset and value length of every record, with a CRC32 over the whole file. On open a
//! valid hint replaces the scan of its segment, so start-up reads keys but no values. A hint
//! that fails its check is ignored and the segment is scanned. Records vouched for by a hint
//! are still CRC-checked when read: a flipped bit there comes back as
//! [`EngineError::Corrupt`] from `get`, never as bad data.
//!
//! ## Merge
//! The background thread (`log_background.rs`) merges a sealed segment once
//! `merge_dead_percent` of its bytes are dead (overwritten, deleted, or tombstones) and it
//! has waited some rounds for more of them to die; one in which nothing is left to copy is
//! deleted without being read (see "Candidates settle before they are read" there). It
//! looks every `background_interval_ms` while the engine takes writes, and sleeps without a
//! timer once a look began after the last write (only writes seal segments or kill records),
//! so an idle engine costs no wake-ups. Merging copies each record of the segment
//! that the keydir still points at to the end of the log, as an ordinary append under the
//! keydir lock that checks the keydir still points there, so a concurrent write of the same
//! key always wins. Tombstones are copied too while an older segment may still hold a value
//! they hide. When the segment is done, the copies are synced and only then is the segment
//! deleted. Merging copies at most `merge_bytes_per_sec`, takes the keydir lock for one
//! record at a time and never holds it across a sleep or an fsync, so foreground requests
//! wait at most one append. Copying forward (rather than writing a separate merged file)
//! keeps one rule for everything: later in the log wins.
//!
//! ## Partitions
//! A prefix scan walks the keydir (keys only, under the read lock), then reads the values of
//! the matching keys one by one without holding the lock: the cost of handing off a
//! partition is one pass over the keys in memory plus that partition's values.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use hashbrown::HashTable;
use xxhash_rust::xxh3::xxh3_64;

use crate::data_dir::{lock_dir, sync_dir};
use crate::idle::Background;
use crate::memlog::{
    record_bytes, Location, MemLog, MemLogOptions, Record, RecordKind, Replay, ReplayMode,
};
use crate::{check_sizes, EngineError, EngineKind, EngineOptions, EngineStats, StorageEngine};
use background::Settling;

// Hint file layout:
//
// | offset | size | field                                   |
// |-------:|-----:|-----------------------------------------|
// |      0 |    6 | magic `b"CWHINT"`                       |
// |      6 |    1 | format version (`HINT_VERSION`)         |
// |      7 |    1 | reserved, zero                          |
// |      8 |    4 | segment id, u32 LE                      |
// |     12 |    4 | entry count, u32 LE                     |
// |     16 |    … | entries                                 |
// |  end-4 |    4 | CRC32 of every byte before it           |
//
// Entry layout:
//
// | offset | size | field                                   |
// |-------:|-----:|-----------------------------------------|
// |      0 |    1 | record kind (put, tombstone or append)  |
// |      1 |    2 | key length `k`, u16 LE                  |
// |      3 |    4 | value length, u32 LE                    |
// |      7 |    4 | record offset in the segment, u32 LE    |
// |     11 |  `k` | key                                     |
const HINT_MAGIC: &[u8; 6] = b"CWHINT";
const HINT_VERSION: u8 = 1;
const HINT_VERSION_AT: usize = HINT_MAGIC.len();
const HINT_SEGMENT_AT: usize = HINT_VERSION_AT + 2;
const HINT_COUNT_AT: usize = HINT_SEGMENT_AT + 4;
const HINT_HEADER_BYTES: usize = HINT_COUNT_AT + 4;
const HINT_ENTRY_KEY_LEN_AT: usize = 1;
const HINT_ENTRY_VALUE_LEN_AT: usize = HINT_ENTRY_KEY_LEN_AT + 2;
const HINT_ENTRY_OFFSET_AT: usize = HINT_ENTRY_VALUE_LEN_AT + 4;
const HINT_ENTRY_HEADER_BYTES: usize = HINT_ENTRY_OFFSET_AT + 4;
const HINT_CRC_BYTES: usize = 4;
const HINT_SUFFIX: &str = ".hint";

const _: () = assert!(HINT_HEADER_BYTES == 16, "hint header is 16 bytes");
const _: () = assert!(HINT_ENTRY_HEADER_BYTES == 11, "hint entry header is 11 bytes");

/// Bits of a keydir slot's first word that hold the segment id; the rest hold the key's place
/// in the arena. Segment ids past this (16 million segments) stop the engine with a panic:
/// at the default segment size that is a petabyte written.
const SLOT_SEGMENT_BITS: u32 = 24;
const SLOT_SEGMENT_MASK: u64 = (1 << SLOT_SEGMENT_BITS) - 1;
/// Bytes of the key arena addressable from a slot (1 TiB).
const ARENA_BYTES_MAX: u64 = 1 << (64 - SLOT_SEGMENT_BITS);
/// Garbage in the key arena below this is never worth a rebuild.
const ARENA_GARBAGE_MIN: usize = 1 << 20;

/// One keydir entry: where a live key's latest record is.
#[derive(Clone, Copy, Debug)]
struct Slot {
    /// Key's offset in the arena (high 40 bits) and segment id (low 24 bits).
    key_at_segment: u64,
    offset: u32,
    value_len: u32,
}

const _: () = assert!(std::mem::size_of::<Slot>() == 16, "a keydir slot is 16 bytes");

impl Slot {
    fn new(key_at: usize, at: Location, value_len: u32) -> Slot {
        assert!((key_at as u64) < ARENA_BYTES_MAX, "keydir arena over 1 TiB");
        let mut slot =
            Slot { key_at_segment: (key_at as u64) << SLOT_SEGMENT_BITS, offset: 0, value_len };
        slot.set_location(at, value_len);
        slot
    }

    fn set_location(&mut self, at: Location, value_len: u32) {
        assert!(u64::from(at.segment) <= SLOT_SEGMENT_MASK, "segment id over 24 bits");
        self.key_at_segment = (self.key_at_segment & !SLOT_SEGMENT_MASK) | u64::from(at.segment);
        self.offset = at.offset;
        self.value_len = value_len;
    }

    fn key_at(&self) -> usize {
        (self.key_at_segment >> SLOT_SEGMENT_BITS) as usize
    }

    fn location(&self) -> Location {
        Location { segment: (self.key_at_segment & SLOT_SEGMENT_MASK) as u32, offset: self.offset }
    }
}

fn arena_key<'a>(arena: &'a [u8], slot: &Slot) -> &'a [u8] {
    let at = slot.key_at();
    let len = u16::from_le_bytes([arena[at], arena[at + 1]]) as usize;
    &arena[at + 2..at + 2 + len]
}

/// The in-memory hash index. See the module documentation.
#[derive(Default)]
struct Keydir {
    table: HashTable<Slot>,
    arena: Vec<u8>,
    garbage: usize,
}

impl Keydir {
    fn get(&self, key: &[u8]) -> Option<&Slot> {
        let arena = &self.arena;
        self.table.find(xxh3_64(key), |slot| arena_key(arena, slot) == key)
    }

    /// Point `key` at `at`; returns the slot it replaced.
    fn insert(&mut self, key: &[u8], at: Location, value_len: u32) -> Option<Slot> {
        let hash = xxh3_64(key);
        let arena = &self.arena;
        if let Some(slot) = self.table.find_mut(hash, |slot| arena_key(arena, slot) == key) {
            let old = *slot;
            slot.set_location(at, value_len);
            return Some(old);
        }
        let key_at = self.arena.len();
        self.arena.extend_from_slice(&(key.len() as u16).to_le_bytes());
        self.arena.extend_from_slice(key);
        let arena = &self.arena;
        self.table.insert_unique(hash, Slot::new(key_at, at, value_len), |slot| {
            xxh3_64(arena_key(arena, slot))
        });
        None
    }

    fn remove(&mut self, key: &[u8]) -> Option<Slot> {
        let arena = &self.arena;
        let entry = self.table.find_entry(xxh3_64(key), |slot| arena_key(arena, slot) == key);
        let (slot, _) = entry.ok()?.remove();
        self.garbage += 2 + key.len();
        if self.garbage > ARENA_GARBAGE_MIN && self.garbage * 2 > self.arena.len() {
            self.rebuild_arena();
        }
        Some(slot)
    }

    /// Copy the live keys into a fresh arena, dropping the garbage.
    fn rebuild_arena(&mut self) {
        let mut arena = Vec::with_capacity(self.arena.len() - self.garbage);
        for slot in self.table.iter_mut() {
            let key = arena_key(&self.arena, slot);
            let key_at = arena.len();
            arena.extend_from_slice(&(key.len() as u16).to_le_bytes());
            arena.extend_from_slice(key);
            let at = slot.location();
            *slot = Slot::new(key_at, at, slot.value_len);
        }
        self.arena = arena;
        self.garbage = 0;
    }

    fn reserve(&mut self, additional: usize) {
        let arena = &self.arena;
        self.table.reserve(additional, |slot| xxh3_64(arena_key(arena, slot)));
    }

    fn len(&self) -> usize {
        self.table.len()
    }

    /// Bytes held: table buckets (slot plus one control byte) and the arena.
    fn memory_bytes(&self) -> u64 {
        let capacity = self.table.capacity();
        // hashbrown keeps at most 7/8 of its (power of two) buckets full.
        let buckets = if capacity == 0 { 0 } else { (capacity * 8 / 7).next_power_of_two() };
        (buckets * (std::mem::size_of::<Slot>() + 1) + self.arena.capacity()) as u64
    }
}

/// Bytes of records a segment holds, how many of them are live, and how many tombstones it
/// holds (live or not: a merge copies one only while an older segment exists).
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    bytes: u64,
    live: u64,
    tombstones: u64,
}

/// Everything behind the keydir lock.
#[derive(Default)]
struct State {
    keydir: Keydir,
    /// The parts appended to a key since its latest put (`StorageEngine::append`), in order:
    /// where each record is and its value's length. Only keys with parts are here; a put, a
    /// delete or a merge's copy of the key ends its chain.
    parts: HashMap<Box<[u8]>, Vec<(Location, u32)>>,
    usage: HashMap<u32, Usage>,
    /// Key and value bytes of live entries.
    live_bytes: u64,
    /// Record bytes in all segments.
    log_bytes: u64,
    /// Record bytes of live entries.
    live_record_bytes: u64,
}

impl State {
    fn apply_put(&mut self, key: &[u8], at: Location, value_len: u32) {
        let bytes = record_bytes(key.len(), value_len as usize);
        let usage = self.usage.entry(at.segment).or_default();
        usage.bytes += bytes;
        usage.live += bytes;
        self.log_bytes += bytes;
        self.live_record_bytes += bytes;
        self.live_bytes += (key.len() + value_len as usize) as u64;
        if let Some(old) = self.keydir.insert(key, at, value_len) {
            self.forget(key, &old);
        }
    }

    fn apply_tombstone(&mut self, key: &[u8], at: Location) {
        let bytes = record_bytes(key.len(), 0);
        let usage = self.usage.entry(at.segment).or_default();
        usage.bytes += bytes;
        usage.tombstones += 1;
        self.log_bytes += bytes;
        if let Some(old) = self.keydir.remove(key) {
            self.forget(key, &old);
        }
    }

    /// A part appended to `key` at `at`: returns how many parts its chain holds now, or
    /// `None` when the key has no value (at recovery, a part whose value a merge moved past
    /// it: the move comes later in the log, so the part is dead).
    fn apply_append(&mut self, key: &[u8], at: Location, value_len: u32) -> Option<u32> {
        let bytes = record_bytes(key.len(), value_len as usize);
        let live = self.keydir.get(key).is_some();
        let usage = self.usage.entry(at.segment).or_default();
        usage.bytes += bytes;
        self.log_bytes += bytes;
        if !live {
            return None;
        }
        usage.live += bytes;
        self.live_record_bytes += bytes;
        self.live_bytes += u64::from(value_len);
        let chain = self.parts.entry(key.into()).or_default();
        chain.push((at, value_len));
        Some(chain.len() as u32)
    }

    /// Account for the parts of `key` no longer being live (its value was replaced).
    fn forget_parts(&mut self, key: &[u8]) {
        let Some(chain) = self.parts.remove(key) else { return };
        for (at, value_len) in chain {
            let bytes = record_bytes(key.len(), value_len as usize);
            let usage = self.usage.get_mut(&at.segment).expect("live part's segment");
            usage.live -= bytes;
            self.live_record_bytes -= bytes;
            self.live_bytes -= u64::from(value_len);
        }
    }

    /// Account for the record `old` of a key no longer being live, with its parts.
    fn forget(&mut self, key: &[u8], old: &Slot) {
        self.forget_parts(key);
        let key_len = key.len();
        let bytes = record_bytes(key_len, old.value_len as usize);
        let usage = self.usage.get_mut(&old.location().segment).expect("live record's segment");
        usage.live -= bytes;
        self.live_record_bytes -= bytes;
        self.live_bytes -= (key_len + old.value_len as usize) as u64;
    }

    fn apply(&mut self, at: Location, record: Record<'_>) {
        match record.kind {
            RecordKind::Put => self.apply_put(record.key, at, record.value.len() as u32),
            RecordKind::Tombstone => self.apply_tombstone(record.key, at),
            RecordKind::Append => {
                self.apply_append(record.key, at, record.value.len() as u32);
            }
            RecordKind::Seal | RecordKind::End => {}
        }
    }
}

fn hint_path(dir: &Path, segment: u32) -> PathBuf {
    dir.join(format!("{segment:010}{HINT_SUFFIX}"))
}

/// Recovery: hints where valid, scans elsewhere.
struct LogReplay<'a> {
    dir: &'a Path,
    state: &'a mut State,
    hinted: HashSet<u32>,
}

impl Replay for LogReplay<'_> {
    fn segment(&mut self, segment: u32, last: bool) -> Result<ReplayMode, EngineError> {
        if last {
            return Ok(ReplayMode::Scan);
        }
        match read_hint(&hint_path(self.dir, segment), segment)? {
            Some(hint) => {
                apply_hint(self.state, segment, &hint);
                self.hinted.insert(segment);
                Ok(ReplayMode::Skip)
            }
            None => Ok(ReplayMode::Scan),
        }
    }

    fn record(&mut self, at: Location, record: Record<'_>) -> Result<(), EngineError> {
        self.state.apply(at, record);
        Ok(())
    }
}

/// The hint file's bytes if it exists and passes its checks; `None` means "scan instead".
fn read_hint(path: &Path, segment: u32) -> Result<Option<Vec<u8>>, EngineError> {
    let mut bytes = Vec::new();
    match File::open(path) {
        Ok(mut file) => file.read_to_end(&mut bytes).map_err(EngineError::io("read hint"))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EngineError::io("open hint")(e)),
    };
    if bytes.len() < HINT_HEADER_BYTES + HINT_CRC_BYTES {
        return Ok(None);
    }
    let (body, crc) = bytes.split_at(bytes.len() - HINT_CRC_BYTES);
    let valid = crc32fast::hash(body).to_le_bytes() == crc
        && body[..HINT_VERSION_AT] == HINT_MAGIC[..]
        && body[HINT_VERSION_AT] == HINT_VERSION
        && body[HINT_SEGMENT_AT..HINT_COUNT_AT] == segment.to_le_bytes()
        && hint_entries(body).is_some();
    bytes.truncate(bytes.len() - HINT_CRC_BYTES);
    Ok(valid.then_some(bytes))
}

/// One hint entry: kind, key, value length, record offset.
type HintEntry<'a> = (RecordKind, &'a [u8], u32, u32);

/// Parse the entries of a hint body (header included, CRC excluded): `(kind, key, value
/// length, offset)` each, or `None` if they do not add up.
fn hint_entries(body: &[u8]) -> Option<Vec<HintEntry<'_>>> {
    let count = u32::from_le_bytes(body[HINT_COUNT_AT..HINT_HEADER_BYTES].try_into().ok()?);
    let mut entries =
        Vec::with_capacity((count as usize).min(body.len() / HINT_ENTRY_HEADER_BYTES));
    let mut rest = &body[HINT_HEADER_BYTES..];
    for _ in 0..count {
        let header = rest.get(..HINT_ENTRY_HEADER_BYTES)?;
        let kind = match header[0] {
            k if k == RecordKind::Put as u8 => RecordKind::Put,
            k if k == RecordKind::Tombstone as u8 => RecordKind::Tombstone,
            k if k == RecordKind::Append as u8 => RecordKind::Append,
            _ => return None,
        };
        let key_len = u16::from_le_bytes(header[1..3].try_into().ok()?) as usize;
        let value_len = u32::from_le_bytes(header[3..7].try_into().ok()?);
        let offset = u32::from_le_bytes(header[7..11].try_into().ok()?);
        let key = rest.get(HINT_ENTRY_HEADER_BYTES..HINT_ENTRY_HEADER_BYTES + key_len)?;
        entries.push((kind, key, value_len, offset));
        rest = &rest[HINT_ENTRY_HEADER_BYTES + key_len..];
    }
    rest.is_empty().then_some(entries)
}

fn apply_hint(state: &mut State, segment: u32, body: &[u8]) {
    let entries = hint_entries(body).expect("checked by read_hint");
    state.keydir.reserve(entries.len());
    for (kind, key, value_len, offset) in entries {
        let at = Location { segment, offset };
        match kind {
            RecordKind::Put => state.apply_put(key, at, value_len),
            RecordKind::Append => {
                state.apply_append(key, at, value_len);
            }
            _ => state.apply_tombstone(key, at),
        }
    }
}

/// Shared between the engine handle and its background thread.
struct Shared {
    log: MemLog,
    state: RwLock<State>,
    options: EngineOptions,
    /// The background thread's stop flag and sleeps.
    background: Background,
    /// Held for a round of background work, so that rounds (the thread's and a test's) never
    /// overlap; with the merge candidates that wait to settle.
    round: Mutex<Settling>,
    /// Segments merged since open.
    merges: AtomicU64,
    /// Of those, the ones deleted without being read: nothing in them was live.
    unread_merges: AtomicU64,
    /// Rounds of background work the thread ran since open.
    rounds: AtomicU64,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("log::Shared").field("dir", &self.log.dir()).finish_non_exhaustive()
    }
}

/// The `log` engine. See the module documentation.
#[derive(Debug)]
pub struct LogEngine {
    shared: Arc<Shared>,
    background: Option<JoinHandle<()>>,
}

impl LogEngine {
    /// Write to `dest` this engine's files as a power loss would leave them now: only what an
    /// fdatasync covered (see [`MemLog::durable_image`]). For fault-injection tests.
    pub fn durable_image(&self, dest: &Path) -> std::io::Result<()> {
        self.shared.log.durable_image(dest)
    }

    /// Open (or create) the engine in `dir`: lock it, recover the log (hints where valid),
    /// and start the background thread that writes hints and merges.
    pub fn open(dir: &Path, options: &EngineOptions) -> Result<LogEngine, EngineError> {
        let lock = lock_dir(dir)?;
        let mut state = State::default();
        let mut replay = LogReplay { dir, state: &mut state, hinted: HashSet::new() };
        let log_options = MemLogOptions {
            segment_bytes_max: options.segment_bytes_max,
            flush_interval_ms: options.flush_interval_ms,
            flusher: options.flusher,
            ..MemLogOptions::default()
        };
        let log = MemLog::open(dir, lock, log_options, &mut replay)?;
        let hinted = std::mem::take(&mut replay.hinted);
        remove_stale_hints(&log)?;
        state.keydir.arena.shrink_to_fit();
        let shared = Arc::new(Shared {
            log,
            state: RwLock::new(state),
            options: options.clone(),
            background: Background::default(),
            round: Mutex::new(Settling::default()),
            merges: AtomicU64::new(0),
            unread_merges: AtomicU64::new(0),
            rounds: AtomicU64::new(0),
        });
        let began_at = (!shared.work_at_open(&hinted)).then(|| shared.log.appended());
        let background = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("log-merge".into())
                .spawn(move || shared.run_background(hinted, began_at))
                .map_err(EngineError::io("start merge thread"))?
        };
        Ok(LogEngine { shared, background: Some(background) })
    }

    /// Bytes of memory the keydir holds (slots and key arena).
    pub fn keydir_bytes(&self) -> u64 {
        self.shared.read().keydir.memory_bytes()
    }

    /// Run one round of background work now (hints, then merges) and wait for it; for tests
    /// that need a merge at a known moment.
    pub fn for_testing_background_round(&self) -> Result<(), EngineError> {
        self.shared.background_round(&mut HashSet::new(), 0).map(drop)
    }

    /// Merges since open that deleted a segment without reading it (nothing in it to copy).
    /// For tests.
    pub fn for_testing_unread_merges(&self) -> u64 {
        self.shared.unread_merges.load(Ordering::Relaxed)
    }

    /// The id of the memory-log segment appends go to now; a put that returns with another
    /// id than before it crossed a segment roll (benchmarks tell such puts apart with it).
    pub fn active_segment(&self) -> u32 {
        self.shared.log.active_segment()
    }

    /// Rounds of background work its thread ran since open (not those of
    /// [`LogEngine::for_testing_background_round`]); none while nothing is written. For tests.
    pub fn for_testing_background_rounds(&self) -> u64 {
        self.shared.rounds.load(Ordering::Relaxed)
    }

    /// Ids of the sealed segments; for tests.
    pub fn for_testing_sealed_segments(&self) -> Vec<u32> {
        self.shared.log.sealed_segments().into_iter().map(|(id, _)| id).collect()
    }
}

/// Remove hint files (finished or not) whose segment is gone or is the active one (a hint is
/// only ever written for a sealed segment; one named like the active segment is left over
/// from a segment that recovery removed, and must not be trusted once this one is sealed).
fn remove_stale_hints(log: &MemLog) -> Result<(), EngineError> {
    let live: HashSet<u32> = log.sealed_segments().into_iter().map(|(id, _)| id).collect();
    let mut removed = false;
    for entry in fs::read_dir(log.dir()).map_err(EngineError::io("list data directory"))? {
        let entry = entry.map_err(EngineError::io("list data directory"))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let stale = if let Some(stem) = name.strip_suffix(HINT_SUFFIX) {
            stem.parse::<u32>().is_ok_and(|id| !live.contains(&id))
        } else {
            name.ends_with(".hint.tmp")
        };
        if stale {
            fs::remove_file(entry.path()).map_err(EngineError::io("remove stale hint"))?;
            removed = true;
        }
    }
    if removed {
        sync_dir(log.dir())?;
    }
    Ok(())
}

impl Shared {
    /// The value of `key` as `state` (held locked) has it: its latest put, with the parts
    /// appended since in the chain encoding. `base` is the put's value when the caller has
    /// read it already.
    fn value(
        &self,
        state: &State,
        key: &[u8],
        base: Option<&[u8]>,
    ) -> Result<Option<Vec<u8>>, EngineError> {
        let Some(slot) = state.keydir.get(key) else { return Ok(None) };
        // Reads the record at `at`, which must be `kind` for `key`, through `f`.
        let read = |at: Location, kind: RecordKind, f: &dyn Fn(&[u8]) -> Vec<u8>| {
            let value = self.log.read(at, |record| {
                (record.kind == kind && record.key == key).then(|| f(record.value))
            })?;
            value.ok_or_else(|| EngineError::Corrupt {
                path: self.log.dir().display().to_string(),
                reason: format!("keydir points at another record ({at:?})"),
            })
        };
        // The parts first (small), so that the base is copied once, into the value.
        let parts = match state.parts.get(key) {
            Some(chain) => chain
                .iter()
                .map(|&(at, _)| read(at, RecordKind::Append, &<[u8]>::to_vec))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let value = |base: &[u8]| {
            if parts.is_empty() {
                base.to_vec()
            } else {
                crate::chain::join(base, parts.iter().map(Vec::as_slice))
            }
        };
        Ok(Some(match base {
            Some(base) => value(base),
            None => read(slot.location(), RecordKind::Put, &value)?,
        }))
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        // Every update of `State` completes before the lock is released or panics before
        // touching it (assertions run first), so a poisoned lock is still consistent.
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    fn stopped(&self) -> bool {
        self.background.stopped()
    }

    /// Sleep up to `duration`; returns true if the engine is stopping.
    fn sleep(&self, duration: Duration) -> bool {
        self.background.sleep(duration)
    }
}

impl Drop for LogEngine {
    fn drop(&mut self) {
        self.shared.background.stop();
        if let Some(background) = self.background.take() {
            let _ = background.join();
        }
    }
}

impl StorageEngine for LogEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Log
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        // The read lock is held across the copy: a merge moves a key only under the write
        // lock, so the segment the slot names cannot be deleted under us.
        let state = self.shared.read();
        self.shared.value(&state, key, None)
    }

    fn append(&self, key: &[u8], part: &[u8]) -> Result<Option<u32>, EngineError> {
        check_sizes(key, part)?;
        let parts = {
            let mut state = self.shared.write();
            if state.keydir.get(key).is_none() {
                return Ok(None);
            }
            let at = self.shared.log.append(RecordKind::Append, key, part)?;
            state.apply_append(key, at, part.len() as u32)
        };
        self.shared.background.wake_if_idle();
        Ok(parts)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        check_sizes(key, value)?;
        {
            let mut state = self.shared.write();
            let at = self.shared.log.append(RecordKind::Put, key, value)?;
            state.apply_put(key, at, value.len() as u32);
        }
        self.shared.background.wake_if_idle();
        Ok(())
    }

    fn delete(&self, key: &[u8]) -> Result<(), EngineError> {
        {
            let mut state = self.shared.write();
            if state.keydir.get(key).is_none() {
                return Ok(());
            }
            let at = self.shared.log.append(RecordKind::Tombstone, key, &[])?;
            state.apply_tombstone(key, at);
        }
        self.shared.background.wake_if_idle();
        Ok(())
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), EngineError> {
        // Keys and locations first, under the lock; values after, without it, so that
        // `visit` may write. Values are read in log order (sequential on disk).
        let mut keys = Vec::new();
        let mut entries = Vec::new();
        {
            let state = self.shared.read();
            let arena = &state.keydir.arena;
            for slot in state.keydir.table.iter() {
                let key = arena_key(arena, slot);
                if key.starts_with(prefix) {
                    // A key with parts is read whole by `get` below: its base alone is not
                    // its value.
                    let chained = state.parts.contains_key(key);
                    entries.push((slot.location(), keys.len(), key.len(), chained));
                    keys.extend_from_slice(key);
                }
            }
        }
        entries.sort_unstable_by_key(|&(at, _, _, _)| at);
        let mut value = Vec::new();
        for (at, key_at, key_len, chained) in entries {
            let key = &keys[key_at..key_at + key_len];
            // Records never change once written, so a location read later still holds this
            // key's value as of the pass above (a write racing with the scan may or may not
            // be seen). If a merge removed the segment since, look the key up again.
            let read = self.shared.log.read(at, |record| {
                value.clear();
                value.extend_from_slice(record.value);
                record.kind == RecordKind::Put && record.key == key
            });
            let found = match read {
                Ok(true) if !chained => true,
                _ => match self.get(key)? {
                    Some(latest) => {
                        value = latest;
                        true
                    }
                    None => false,
                },
            };
            if found && visit(key, &value).is_break() {
                break;
            }
        }
        Ok(())
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
        let state = self.shared.read();
        EngineStats {
            entries: state.keydir.len() as u64,
            live_bytes: state.live_bytes,
            dead_bytes: state.log_bytes - state.live_record_bytes,
            memory_bytes: state.keydir.memory_bytes(),
            merges: self.shared.merges.load(Ordering::Relaxed),
            syncs: self.shared.log.syncs(),
        }
    }
}

#[path = "log_background.rs"]
mod background;

#[cfg(test)]
#[path = "log_tests.rs"]
mod tests;
