//! # cartwheel-engines: where a node keeps its bytes
//!
//! A storage engine maps byte keys to byte values on one node. It never interprets a value:
//! values are resolver states (see `cartwheel-resolvers`), and the node (`src/`) composes the
//! two. This crate knows nothing of the network, of resolvers or of the ring.
//!
//! ## The map
//! - [`StorageEngine`]: the object-safe contract every engine keeps, used as
//!   `Arc<dyn StorageEngine>`. Its doc says when a write is visible, when it is durable, and
//!   what a crash may lose.
//! - [`memory`]: the volatile in-memory engine (an ordered map behind a lock). It is the
//!   in-memory half of the `buffer` engine and, on its own, an engine for tests and for data
//!   that may be lost (like Riak's memory backend).
//! - [`memlog`]: the memory log, the substrate of the durable engines: append-only segment
//!   files of CRC-checked records, read through memory maps, made durable by a group-commit
//!   flusher thread, recovered by cutting at the first bad record. Its rooms: `format` (the
//!   record and segment byte tables), `segment` (one segment file), `active` (appends, rolls,
//!   spare segments), `flusher` (group commit) and `sys`, which holds the crate's only `unsafe`
//!   code (mappings, preallocation, the io_uring) with its soundness argument.
//! - [`log`]: Bitcask on the memory log: an in-memory hash keydir, hint files for a fast
//!   start, tombstones, background merge of sealed segments.
//! - [`buffer`]: the whole data set in a [`memory`] map, the memory log as its write-ahead
//!   log, periodic snapshots that let the log be dropped.
//! - [`btree`]: a paged copy-on-write B+tree in one file (like LMDB): a page cache, overflow
//!   pages for large values, a free list, two alternating meta pages, one commit per `sync`.
//!   Its rooms: `page` (the page byte tables), `node`, `cache`, `freelist`, `tree`, `scan`,
//!   `commit`, `recovery` and `check`.
//! - `idle`: the handshake that lets every background thread (flusher, merge, snapshot,
//!   committer) of an engine nobody writes to sleep without a timer, woken by the next write.
//! - [`chain`]: the encoding in which a value read back carries the parts
//!   [`StorageEngine::append`] added to it, the same for every engine.
//! - [`data_dir`]: the exclusive lock every durable engine takes on its data directory (a
//!   second opener gets [`EngineError::Locked`] and touches nothing), and the directory fsync.
//! - [`EngineError`]: one error type for every engine, classified by what the caller does next.
//! - [`EngineKind`]: the names by which a bucket's configuration picks an engine.
//!
//! The shared conformance suite lives in `engines/tests/conformance.rs`: every engine runs
//! every behaviour there. `engines/tests/crash.rs` cuts and corrupts files at every offset of
//! their tail and `engines/tests/kill.rs` SIGKILLs a writing process, for every durable engine.
//!
//! ## Partitions
//! Partitions are the unit of transfer and repair. Engines do not know about them: the node
//! prefixes each key with its partition number (big-endian), and an engine provides
//! [`StorageEngine::scan_prefix`], so handing off, repairing or dropping one partition reads
//! only that partition's entries. An ordered engine answers a prefix scan by a range scan;
//! a hash-indexed engine walks its in-memory index (keys only) and reads only matching values.

pub mod btree;
pub mod buffer;
pub mod chain;
pub mod data_dir;
mod idle;
pub mod log;
pub mod memlog;
pub mod memory;
pub mod recovering;

use std::fmt;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

/// The largest key an engine accepts, in bytes. Node-level limits are smaller (1 KiB by
/// default); this bound is what on-disk formats are sized for (a 16-bit key length).
pub const KEY_BYTES_MAX: usize = u16::MAX as usize;

/// The largest value an engine accepts, in bytes. Node-level limits are smaller (1 MiB by
/// default); this bound is what on-disk formats are sized for.
pub const VALUE_BYTES_MAX: usize = 64 << 20;

/// The storage contract.
///
/// # Visibility
/// A `put` or `delete` is visible to every later `get` and `scan_prefix` (from any thread) as
/// soon as it returns. There are no transactions: each call is atomic for its one key.
///
/// # Durability
/// A write is durable only after a [`StorageEngine::sync`] call that *started after* the write
/// returned has returned `Ok`. Engines group commit: many writes share one sync, and concurrent
/// `sync` callers share one fsync where the engine can. `sync` may block for milliseconds and
/// must never be called on the RPC thread; [`StorageEngine::sync_then`] asks for the same
/// without blocking, where the engine can answer from its own thread. An engine whose [`StorageEngine::is_durable`] is
/// false keeps nothing across a restart; its `sync` returns at once.
///
/// # What a crash may lose
/// A crash (process kill or power loss) may lose any write that was not followed by a
/// completed `sync`, and nothing else. After a crash, `open` recovers a prefix of the writes
/// in the order they returned: a record that fails its CRC marks the end of the log, the tail
/// after it is truncated, and bad data is never returned.
///
/// # Iteration
/// [`StorageEngine::scan_prefix`] visits every live entry whose key starts with the prefix
/// (all entries for an empty prefix), each exactly once, in key order for ordered engines and
/// in unspecified order otherwise. Writes that race with a scan may or may not be seen.
///
/// # Errors
/// Keys over [`KEY_BYTES_MAX`] and values over [`VALUE_BYTES_MAX`] are refused with
/// [`EngineError::TooLarge`] and change nothing. I/O failures come back as
/// [`EngineError::Io`].
///
/// # After a failed write or sync
/// A failed write leaves the file's tail unknown, and a failed fsync cannot be retried into
/// success (the kernel may have dropped the dirty pages it could not write, and a second fsync
/// then reports nothing). So after either, a persistent engine is *failed*
/// ([`StorageEngine::failed`]): it refuses every later write and every sync with
/// [`EngineError::Io`], so no write after the failure is ever acknowledged as durable, while
/// reads go on serving what it holds. Its files stay recoverable: reopening runs the same
/// recovery as after a crash, keeping the prefix of records that check out.
/// [`recovering::Recovering`] does that by itself once the cause (usually a full disk) is gone.
pub trait StorageEngine: Send + Sync + fmt::Debug {
    /// The engine's configuration name (`"memory"`, `"log"`, `"buffer"`, `"btree"`).
    fn kind(&self) -> EngineKind;

    /// The value stored under `key`, or `None`.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError>;

    /// Store `value` under `key`, replacing any value. Visible when this returns.
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError>;

    /// Append `part` to the value of `key`, if it has one, without rewriting the value (see
    /// [`chain`]): `get` then returns the value and its parts in the chain encoding. Returns
    /// how many parts the value holds beside its base, this one included, by the engine's
    /// count (an engine's compaction may fold parts into one record and count from there), so
    /// the caller knows when to fold them and put the result; `None`, with nothing written, when the key has no value.
    /// Visible, durable and lost in a crash like a `put`, in the same order as the other
    /// writes.
    ///
    /// The default reads the value and puts it back with the part: every engine appends,
    /// and the ones that can (`memory`, `log`, `buffer`) write only the part, atomically for
    /// the key. The default's read and put are two calls: a caller that may race another
    /// writer of the same key must not rely on it (the node writes each key from one thread).
    fn append(&self, key: &[u8], part: &[u8]) -> Result<Option<u32>, EngineError> {
        let Some(value) = self.get(key)? else { return Ok(None) };
        let chained = chain::push(&value, part);
        self.put(key, &chained)?;
        Ok(Some(chain::parts(&chained)))
    }

    /// Remove `key`. Removing an absent key is not an error.
    fn delete(&self, key: &[u8]) -> Result<(), EngineError>;

    /// Call `visit` with every live entry whose key starts with `prefix` until it returns
    /// `ControlFlow::Break`.
    #[allow(clippy::type_complexity)] // the visitor type is part of the object-safe contract
    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), EngineError>;

    /// Make every write that returned before this call durable. Blocks; shared by concurrent
    /// callers (group commit).
    fn sync(&self) -> Result<(), EngineError>;

    /// [`StorageEngine::sync`] without blocking: `done` gets the outcome of a sync that covers
    /// every write that returned before this call, exactly once. It may run on this thread
    /// before `sync_then` returns, or later on the thread of the engine that made the writes
    /// durable, so it must be quick and must not block (send a message, wake a task).
    ///
    /// An engine that cannot learn of its sync without blocking a thread hands `done` back
    /// (`Err(done)`, the default): the caller then calls [`StorageEngine::sync`] where it may
    /// block and gives `done` its outcome. The memory-log engines (`log`, `buffer`) answer from
    /// their flusher thread, so a durable write costs no thread of the caller's.
    fn sync_then(&self, done: SyncDone) -> Result<(), SyncDone> {
        Err(done)
    }

    /// Whether this engine's data survives a restart after a `sync`.
    fn is_durable(&self) -> bool;

    /// Counters for `status` and benchmarks.
    fn stats(&self) -> EngineStats;

    /// Whether a write or a sync failed (see "After a failed write or sync"): the engine then
    /// refuses every write and sync until it is reopened from its files.
    fn failed(&self) -> bool {
        false
    }

    /// Reopen the engine from its files if it failed, where the engine knows how
    /// ([`recovering::Recovering`]); an engine that cannot answers [`Recovery::Healthy`].
    /// Blocks (recovery reads the files): never on the RPC thread.
    fn try_recover(&self) -> Result<Recovery, EngineError> {
        Ok(Recovery::Healthy)
    }
}

pub use recovering::Recovery;

/// What [`StorageEngine::sync_then`] calls with the outcome of a sync.
pub type SyncDone = Box<dyn FnOnce(Result<(), EngineError>) + Send>;

/// Counters an engine reports. Cheap to read: engines keep them up to date as they go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EngineStats {
    /// Live keys.
    pub entries: u64,
    /// Bytes of live keys and values (as stored, without per-record overhead).
    pub live_bytes: u64,
    /// Bytes on disk held by overwritten or deleted records, waiting for compaction.
    pub dead_bytes: u64,
    /// Approximate bytes of memory the engine holds (indexes, caches, in-memory data).
    pub memory_bytes: u64,
    /// Compactions finished since the engine opened: segments merged (`log`), snapshots
    /// taken (`buffer`); 0 for engines that do not compact.
    pub merges: u64,
    /// Syncs that wrote to disk since the engine opened: the memory log's `fdatasync`s
    /// (`log`, `buffer`; one covers every write waiting for it), commits (`btree`).
    pub syncs: u64,
}

/// The engines a bucket may name in its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EngineKind {
    /// Volatile ordered map: nothing survives a restart.
    Memory,
    /// Bitcask on the memory log (DESIGN §4).
    Log,
    /// In-memory map with the memory log as write-ahead log (DESIGN §4).
    Buffer,
    /// Paged copy-on-write B+tree in one file (DESIGN §4).
    Btree,
}

impl EngineKind {
    /// Every engine name, in the order the documentation lists them.
    pub const ALL: [EngineKind; 4] = [Self::Memory, Self::Log, Self::Buffer, Self::Btree];

    /// The name used in configuration and in `status`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Memory => "memory",
            Self::Log => "log",
            Self::Buffer => "buffer",
            Self::Btree => "btree",
        }
    }

    /// Parse a configuration name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How the memory log's flusher thread (`log`, `buffer`) writes and syncs a group commit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum FlusherBackend {
    /// `pwrite` and `fdatasync` system calls. The default: measured at least as fast as
    /// io_uring on the durable-put benchmarks (docs/BENCHMARKS.md).
    #[default]
    Thread,
    /// The same write and `fdatasync` submitted through an io_uring owned by the flusher
    /// thread. Where the kernel refuses io_uring (disabled by sysctl, seccomp, too old), the
    /// log falls back to [`FlusherBackend::Thread`] and reports it in
    /// [`memlog::MemLog::flusher_backend`].
    IoUring,
}

impl FlusherBackend {
    /// Every backend, in the order the documentation lists them.
    pub const ALL: [FlusherBackend; 2] = [Self::Thread, Self::IoUring];

    /// The name used in configuration.
    pub fn name(self) -> &'static str {
        match self {
            Self::Thread => "thread",
            Self::IoUring => "io_uring",
        }
    }

    /// The backend a configuration names, if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|backend| backend.name() == name)
    }
}

/// Settings shared by the engines; each engine reads the ones it has. Every field has a
/// default, so a bucket's configuration names only what it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EngineOptions {
    /// How often the group-commit flusher syncs on its own, in milliseconds, when no caller is
    /// waiting for durability (and the `btree` commit thread commits). Writes younger than this
    /// are what a crash may lose. An engine with nothing written since its last sync keeps the
    /// thread asleep without a timer; the next write wakes it and starts the interval.
    pub flush_interval_ms: u64,
    /// Size of one memory-log segment file (`log` and `buffer`), preallocated when the segment
    /// is created. When the next record would not fit, the segment is sealed and the next one,
    /// made ahead by a background thread, takes its place (the sealed segment's fdatasync is
    /// the flusher's, not the writer's); a record larger than this gets a segment of its own.
    pub segment_bytes_max: u64,
    /// `log`: a sealed segment is merged (its live records copied forward, the file deleted)
    /// once at least this percentage of its bytes is dead. 100 turns merging off.
    pub merge_dead_percent: u8,
    /// `log`: merging copies at most this many bytes per second, sleeping when ahead, so that
    /// it never takes the disk from foreground writes. Dead space is reclaimed more slowly.
    pub merge_bytes_per_sec: u64,
    /// `log` and `buffer`: how often, in milliseconds, the background thread looks for work
    /// (hint files and merges for `log`, snapshots for `buffer`) while the engine takes writes.
    /// Only writes make work, so after a look with no write since the previous one the thread
    /// sleeps without a timer until the next write.
    pub background_interval_ms: u64,
    /// `buffer`: a snapshot is taken once the write-ahead log since the last one holds at
    /// least this many bytes and more than the live data. Restart replays at most about this
    /// much log; a larger value means fewer snapshots and a longer restart.
    pub snapshot_log_bytes: u64,
    /// `btree`: the memory the page cache and the dirty pages of the open transaction may
    /// hold together, in bytes. Past half of it, dirty pages are written early (still
    /// uncommitted); past all of it, clean pages are evicted and re-read on demand. Default
    /// 256 MiB ([`btree::CACHE_BYTES_MAX_DEFAULT`]).
    pub btree_cache_bytes_max: u64,
    /// `log` and `buffer`: how the flusher thread writes and syncs (see [`FlusherBackend`]).
    /// `btree` syncs on the committing caller's thread with `fdatasync`.
    pub flusher: FlusherBackend,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            flush_interval_ms: 10,
            segment_bytes_max: 64 << 20,
            merge_dead_percent: 50,
            merge_bytes_per_sec: 32 << 20,
            background_interval_ms: 1000,
            snapshot_log_bytes: 64 << 20,
            btree_cache_bytes_max: btree::CACHE_BYTES_MAX_DEFAULT,
            flusher: FlusherBackend::default(),
        }
    }
}

/// Open (or create) an engine of `kind` on the data directory `dir`.
///
/// Persistent engines create `dir` if needed, take an exclusive lock on it
/// ([`data_dir::lock_dir`]: a second opener gets [`EngineError::Locked`] and nothing is touched)
/// and recover what is there. The memory engine ignores `dir`.
pub fn open(
    kind: EngineKind,
    dir: &Path,
    options: &EngineOptions,
) -> Result<Arc<dyn StorageEngine>, EngineError> {
    match kind {
        EngineKind::Memory => Ok(Arc::new(memory::MemoryEngine::new())),
        EngineKind::Btree => Ok(Arc::new(btree::BtreeEngine::open(dir, options)?)),
        EngineKind::Log => Ok(Arc::new(log::LogEngine::open(dir, options)?)),
        EngineKind::Buffer => Ok(Arc::new(buffer::BufferEngine::open(dir, options)?)),
    }
}

/// Everything an engine can fail with, grouped by what the caller does next.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The key or value is over the engine's bound; nothing was written. Fix the request.
    #[error("{what} of {len} bytes is over the limit of {max} bytes")]
    TooLarge {
        /// `"key"` or `"value"`.
        what: &'static str,
        /// The offered length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The data directory is in use by another process; nothing was touched. Give up.
    #[error("data directory {path} is locked by another process")]
    Locked {
        /// The directory.
        path: String,
    },
    /// Stored data failed a check that recovery could not repair. Give up and report.
    #[error("corrupt data in {path}: {reason}")]
    Corrupt {
        /// The file.
        path: String,
        /// What check failed.
        reason: String,
    },
    /// The operating system refused an I/O operation (full disk, permissions, device error).
    /// The write in progress may or may not be visible; files stay recoverable by reopening.
    #[error("I/O error during {during}: {source}")]
    Io {
        /// What the engine was doing.
        during: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    /// Whether retrying the same call later may succeed (a transient I/O condition).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::StorageFull
            ),
            Self::TooLarge { .. } | Self::Locked { .. } | Self::Corrupt { .. } => false,
        }
    }

    /// Build an [`EngineError::Io`] for `during`.
    pub fn io(during: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Self::Io { during, source }
    }
}

/// Refuse a key or value over the engine-level bounds. Every engine calls this first in
/// `put`, so oversized input changes nothing.
pub fn check_sizes(key: &[u8], value: &[u8]) -> Result<(), EngineError> {
    if key.len() > KEY_BYTES_MAX {
        return Err(EngineError::TooLarge { what: "key", len: key.len(), max: KEY_BYTES_MAX });
    }
    if value.len() > VALUE_BYTES_MAX {
        return Err(EngineError::TooLarge {
            what: "value",
            len: value.len(),
            max: VALUE_BYTES_MAX,
        });
    }
    Ok(())
}
