//! # The btree engine: a paged copy-on-write B+tree in one file
//!
//! The data directory holds one file, `btree.pages`, cut into fixed [`PAGE_SIZE`] pages (and the
//! `LOCK` file every engine holds its directory with, [`crate::data_dir`]). Pages 0 and 1 are the
//! two **meta pages**; every other page is a B+tree leaf, a branch, a page of an overflow value, or
//! a page of the persisted free list. Leaves hold keys with their values (small values inline,
//! large ones in a run of overflow pages); branches hold separator keys and child page numbers.
//! Everything is ordered by key, so a partition (a key prefix) is a range scan.
//!
//! ## Crash safety: copy-on-write, two meta pages, one fsync per commit
//! A committed page is never written again while a committed tree can still reach it. The first
//! change to a page in a transaction copies it to a fresh page number (and so its parent, up to
//! the root: path copying); the old number goes on the free list only once no meta on disk
//! names a tree that reaches it. A commit ([`StorageEngine::sync`]) writes the transaction's
//! dirty pages and its free list to fresh pages, then the meta page (the root, the page count,
//! the free list's place, the counters, a transaction id and a CRC) into the slot `txn % 2`,
//! and makes all of it durable with **one `fdatasync`**. Many writes share a commit, and many
//! concurrent `sync` callers share one too (group commit: one caller commits at a time, the
//! others wait until a commit covers their writes, and the next commit carries every write
//! made while the previous one was on disk). A background thread also commits
//! every [`EngineOptions::flush_interval_ms`] when there are writes, so what a crash loses
//! without any `sync` is at most that much.
//!
//! One `fdatasync` does not order the meta after the pages, so after a crash the new meta may
//! be on disk without some of its pages. Every reference to a page (a branch's child, the
//! meta's root, a leaf's overflow run) therefore carries the id of the transaction that wrote
//! the page, and every page carries that id in its header. On open the newest meta's commit is
//! read back: the pages it wrote are exactly those reachable through references with its id
//! (path copying), so only they are read. If one is missing, stale or fails its CRC, the commit
//! was never acknowledged and open uses the other meta, which the commit never touched: the
//! meta slot overwritten is the older one, and the commit wrote only pages that neither meta's
//! tree reaches. The check on every reference also means a stale page is never taken for the
//! page a tree names.
//!
//! A page freed by transaction `T` is still reachable from `T - 1`'s meta, which stays on disk
//! until commit `T + 1` overwrites it; so the page is *held* and reused only once `T + 1` is
//! durable. Both meta pages therefore always name intact trees: if the newest meta is later
//! damaged (a bad sector, a flipped bit), open falls back to the other one and finds every page
//! of its tree as that commit left it.
//!
//! ## Visibility and the page cache
//! Writes change the tree in memory at once: a `put` is visible to the next `get` when it
//! returns. Dirty pages wait in memory for the commit; when they exceed half the cache budget
//! ([`EngineOptions::btree_cache_bytes_max`]) they are written early to their fresh page numbers,
//! which no committed meta names, so this is safe before the commit. Clean pages live in a page
//! cache of decoded nodes bounded by the same budget, evicted by the CLOCK algorithm. Overflow
//! pages are never cached: a large value is read with one `pread` of its run.
//!
//! Reads and writes share one reader-writer lock over the tree: gets and scans take it shared,
//! puts, deletes and the start of a commit take it exclusively (the `fdatasync` runs outside it,
//! so reads and writes go on while a commit waits on the disk). A scan copies batches of entries
//! under the lock and calls the visitor outside it, so a slow visitor never stalls writers.
//! A get walks the cached pages under one short cache lock; each cached node keeps an array of
//! eight-byte key prefixes (taken after the bytes all its keys share), so a binary search
//! touches one small array and reads a whole key only to confirm a match.
//!
//! ## Integrity
//! Every page carries a CRC32 of its whole content, its own page number, its kind and the
//! transaction that wrote it, all checked each time it is read from disk. A page that fails is
//! never returned: open falls back to the other meta page if the newest one (or its free list,
//! or a page its commit wrote) fails, and otherwise the read that needs a damaged page fails
//! with [`EngineError::Corrupt`] while every other read is answered exactly. Damage deeper in
//! a committed tree is not repaired. A file cut short reads as damage past the cut. Nothing on
//! disk makes the engine panic; I/O failures come back as [`EngineError::Io`], after which
//! writes are refused until the engine is reopened.
//!
//! ## Limits
//! - Keys up to [`BTREE_KEY_BYTES_MAX`] (1 KiB, the node's default key limit). A B+tree needs
//!   several keys per page, so longer keys (up to the crate-wide [`crate::KEY_BYTES_MAX`]) are
//!   refused with [`EngineError::TooLarge`], like LMDB's 511-byte key limit.
//! - Values up to [`crate::VALUE_BYTES_MAX`]; a cell whose key and value exceed
//!   [`INLINE_BYTES_MAX`] keeps its value in a contiguous run of overflow pages.
//! - The file grows by whole pages and shrinks never: freed pages are reused first.
//!
//! Deliberately left out: multi-key transactions, readers that see a snapshot across commits,
//! shrinking the file, prefix compression of keys on disk, and rebalancing (an underfull page
//! is merged with a neighbour when both fit in one page, never refilled from it).
//!
//! The page layouts are byte tables in `page.rs`, above the constants they define.
//!
//! ## Rooms
//! - `page.rs`: the on-disk format: the byte table of every page kind, its constants and
//!   compile-time size checks, the header every page is sealed and checked with, the meta page.
//! - `node.rs`: leaves and branches decoded in memory: search by key prefixes, cells put in and
//!   taken out, splits, and the encoding back into a page.
//! - `cache.rs`: the CLOCK page cache of clean nodes, and the page I/O that fills it (every read
//!   checked against the reference that named the page) and drains dirty nodes into it.
//! - `freelist.rs`: free pages: the best-fit extents in memory, allocation and release, and the
//!   free list and free map a commit writes and open reads back.
//! - `tree.rs`: the operations that change the tree, copy-on-write (insert and remove with
//!   splits and merges), and `get`, `put` and `delete` on top of them.
//! - `scan.rs`: prefix scans, copied out in batches under the shared lock.
//! - `commit.rs`: group commit (freeze the open transaction, write the meta, one `fdatasync`)
//!   and the background commit thread.
//! - `recovery.rs`: open: create an empty file, or pick the newest meta whose commit reads back.
//! - `check.rs`: the invariant walk behind [`BtreeEngine::for_testing_check`].
//!
//! This file holds what every room works on: the engine's shared state ([`BtreeEngine`]'s
//! `Shared`, the `Tree` behind its reader-writer lock) and the engine itself.

mod cache;
mod check;
mod commit;
mod freelist;
mod node;
mod page;
mod recovery;
mod scan;
mod tree;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::data_dir::DirLock;
use crate::idle::Background;
use crate::{EngineError, EngineKind, EngineOptions, EngineStats, StorageEngine};

use cache::{PageCache, PageIdBuild};
pub use check::TreeShape;
use commit::{commit_periodically, CommitState};
use freelist::FreeSet;
use node::Node;
use page::{PageId, Ptr};
pub use page::{
    BTREE_KEY_BYTES_MAX, FORMAT_VERSION, INLINE_BYTES_MAX, PAGE_HEADER_BYTES, PAGE_SIZE,
};

/// The name of the engine's file inside its data directory.
pub const FILE_NAME: &str = "btree.pages";

/// The default page-cache budget ([`EngineOptions::btree_cache_bytes_max`]): 256 MiB, enough
/// for about a million 150-byte values with 24-byte keys.
pub const CACHE_BYTES_MAX_DEFAULT: u64 = 256 << 20;

/// The paged copy-on-write B+tree engine. See the module documentation.
///
/// A background thread commits on its own every [`EngineOptions::flush_interval_ms`] when
/// there are writes, so unsynced writes are lost in a crash only if they are younger than that.
/// Dropping the engine stops the thread and releases the directory lock; it does not commit.
pub struct BtreeEngine {
    shared: Arc<Shared>,
    /// The background commit thread (its stop flag is `Shared::committer`).
    committer: Option<JoinHandle<()>>,
}

impl BtreeEngine {
    /// Open (or create) the btree in `dir`, taking an exclusive lock on the directory: a
    /// second opener gets [`EngineError::Locked`] and nothing is touched.
    pub fn open(dir: &Path, options: &EngineOptions) -> Result<BtreeEngine, EngineError> {
        let shared = Arc::new(Shared::open(dir, options)?);
        let interval = Duration::from_millis(options.flush_interval_ms.max(1));
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("btree-commit".into())
                .spawn(move || commit_periodically(&shared, interval))
                .map_err(EngineError::io("starting the commit thread"))?
        };
        Ok(BtreeEngine { shared, committer: Some(thread) })
    }

    /// Times the commit thread woke from sleeping until a write, since open; it stays put
    /// while nothing is written. For tests.
    pub fn for_testing_committer_wakes(&self) -> u64 {
        self.shared.committer.idle_wakes()
    }

    /// Commits written since open (by `sync` callers and the commit thread). For tests.
    pub fn for_testing_commits(&self) -> u64 {
        self.shared.commits.load(Ordering::Relaxed)
    }

    /// Walk the whole tree and check its invariants: keys ordered within and across pages and
    /// bounded by their separators, leaves all at one depth, every page used once, no used
    /// page on the free list, and every page of the file either used or free. Returns the
    /// shape.
    pub fn for_testing_check(&self) -> Result<TreeShape, String> {
        self.shared.for_testing_check()
    }
}

impl Drop for BtreeEngine {
    fn drop(&mut self) {
        if let Some(committer) = self.committer.take() {
            self.shared.committer.stop();
            // A panic in the thread has already been reported; nothing more to do here.
            let _ = committer.join();
        }
    }
}

impl std::fmt::Debug for BtreeEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.shared.fmt(f)
    }
}

impl StorageEngine for BtreeEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Btree
    }

    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.shared.get(key)
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        let result = self.shared.put(key, value);
        self.shared.wrote();
        result
    }

    fn delete(&self, key: &[u8]) -> Result<(), EngineError> {
        let result = self.shared.delete(key);
        self.shared.wrote();
        result
    }

    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), EngineError> {
        self.shared.scan_prefix(prefix, visit)
    }

    fn sync(&self) -> Result<(), EngineError> {
        self.shared.commit()
    }

    fn is_durable(&self) -> bool {
        true
    }

    fn stats(&self) -> EngineStats {
        self.shared.stats()
    }

    fn failed(&self) -> bool {
        self.shared.failed.load(Ordering::Acquire)
    }
}

/// The engine's state, shared with the commit thread.
struct Shared {
    path: PathBuf,
    file: File,
    /// The exclusive lock on the data directory, held for the engine's lifetime.
    _dir_lock: DirLock,
    cache_bytes_max: u64,
    tree: RwLock<Tree>,
    cache: Mutex<PageCache>,
    /// The last durable transaction and whether a commit is running; concurrent `sync`
    /// callers wait on `commit_done` and share commits.
    commit_state: Mutex<CommitState>,
    commit_done: Condvar,
    /// Set after an I/O failure while writing: later writes and syncs are refused.
    failed: AtomicBool,
    /// Commits written since open.
    commits: std::sync::atomic::AtomicU64,
    /// Calls that may have changed the tree since open (puts and deletes): the counter the
    /// commit thread sleeps on while nothing changes ([`crate::idle`]).
    writes: std::sync::atomic::AtomicU64,
    /// The commit thread's stop flag and sleeps.
    committer: Background,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BtreeEngine")
            .field("path", &self.path)
            .field("cache_bytes_max", &self.cache_bytes_max)
            .finish_non_exhaustive()
    }
}

/// The mutable state of the tree, behind the engine's reader-writer lock.
#[derive(Default)]
struct Tree {
    /// The root page, number 0 when the tree is empty.
    root: Ptr,
    /// Pages the file holds, metas included; new pages are numbered from here.
    page_count: u64,
    entries: u64,
    live_bytes: u64,
    /// The open transaction: every write since the last commit belongs to it.
    txn: u64,
    /// Whether the open transaction changed anything.
    changed: bool,
    /// Whether the open transaction wrote dirty pages early (see `spill_if_needed`).
    spilled: bool,
    /// Nodes changed in the open transaction and not yet written.
    dirty: HashMap<PageId, Arc<Node>, PageIdBuild>,
    dirty_bytes: u64,
    /// Pages allocated in the open transaction: no committed meta reaches them, so they are
    /// changed in place and freed at once.
    fresh: HashSet<PageId, PageIdBuild>,
    /// Pages free for reuse now.
    free: FreeSet,
    /// Pages the open transaction stopped using, still reachable from the last commit.
    pending: Vec<(PageId, u64)>,
    pending_pages: u64,
    /// Pages the last durable commit stopped using. The older meta page still names a tree
    /// that reaches them, so they are reused only once the next commit (which overwrites that
    /// meta) is durable.
    held: Vec<(PageId, u64)>,
    held_pages: u64,
    /// Pages a commit in flight stopped using; they become `held` when it is durable.
    releasing_pages: u64,
    /// The run holding the last commit's free list.
    freelist_run: (PageId, u64),
}

impl Shared {
    fn corrupt(&self, reason: String) -> EngineError {
        EngineError::Corrupt { path: self.path.display().to_string(), reason }
    }

    fn read_tree(&self) -> RwLockReadGuard<'_, Tree> {
        // A panic while holding the lock is a bug that may leave the tree half-changed; the
        // engine keeps serving, and every page read is still checked.
        self.tree.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write_tree(&self) -> RwLockWriteGuard<'_, Tree> {
        self.tree.write().unwrap_or_else(|p| p.into_inner())
    }

    fn cache(&self) -> MutexGuard<'_, PageCache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// After a put or delete (the tree lock let go): count it, and wake the commit thread if
    /// it sleeps until a write.
    fn wrote(&self) {
        self.writes.fetch_add(1, Ordering::SeqCst);
        self.committer.wake_if_idle();
    }

    fn check_failed(&self) -> Result<(), EngineError> {
        if self.failed.load(Ordering::Acquire) {
            return Err(EngineError::Io {
                during: "writing after an earlier failure",
                source: io::Error::other("an earlier write failed; reopen the engine"),
            });
        }
        Ok(())
    }

    fn fail<T>(&self, err: EngineError) -> Result<T, EngineError> {
        self.failed.store(true, Ordering::Release);
        Err(err)
    }

    fn stats(&self) -> EngineStats {
        let tree = self.read_tree();
        let cached = self.cache().bytes;
        let dead_pages =
            tree.free.pages + tree.pending_pages + tree.held_pages + tree.releasing_pages;
        EngineStats {
            entries: tree.entries,
            live_bytes: tree.live_bytes,
            dead_bytes: dead_pages * PAGE_SIZE as u64,
            memory_bytes: cached + tree.dirty_bytes,
            merges: 0,
            syncs: self.commits.load(Ordering::Relaxed),
        }
    }
}
