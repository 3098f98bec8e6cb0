//! # The btree engine: a paged copy-on-write B+tree in one file
//!
//! The data directory holds one file, `btree.pages`, cut into fixed [`PAGE_SIZE`] pages. Pages 0
//! and 1 are the two **meta pages**; every other page is a B+tree leaf, a branch, a page of an
//! overflow value, or a page of the persisted free list. Leaves hold keys with their values (small
//! values inline, large ones in a run of overflow pages); branches hold separator keys and child
//! page numbers. Everything is ordered by key, so a partition (a key prefix) is a range scan.
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
//! ## Page layouts (all integers little-endian)
//! Every page starts with the same header:
//!
//! | offset | bytes | field                                              |
//! |-------:|------:|----------------------------------------------------|
//! | 0      | 4     | CRC32 of bytes 4..PAGE_SIZE                        |
//! | 4      | 1     | kind: 1 meta, 2 leaf, 3 branch, 4 overflow, 5 free list |
//! | 5      | 1     | format version ([`FORMAT_VERSION`])                |
//! | 6      | 2     | count (cells, keys, data bytes or extents; see below) |
//! | 8      | 8     | this page's number                                 |
//! | 16     | 8     | id of the transaction that wrote the page          |
//! | 24     |       | body ([`PAGE_HEADER_BYTES`] = 24)                  |
//!
//! **Meta** (pages 0 and 1; count is 0):
//!
//! | offset | bytes | field                                              |
//! |-------:|------:|----------------------------------------------------|
//! | 24     | 8     | magic `CWBTREE\0`                                  |
//! | 32     | 4     | page size                                          |
//! | 36     | 4     | zero                                               |
//! | 40     | 8     | root page (0: the tree is empty)                   |
//! | 48     | 8     | transaction that wrote the root page               |
//! | 56     | 8     | page count (the file's pages in use, metas included) |
//! | 64     | 8     | first page of the free-list run (0: none)          |
//! | 72     | 8     | pages in the free-list run (written by this commit) |
//! | 80     | 8     | entries                                            |
//! | 88     | 8     | live bytes (keys plus values)                      |
//!
//! **Leaf** (count = cells, in strictly increasing key order, packed from offset 24):
//!
//! | offset | bytes | field                                              |
//! |-------:|------:|----------------------------------------------------|
//! | 0      | 2     | key length `k`                                     |
//! | 2      | 1     | 0: value inline, 1: value in overflow pages        |
//! | 3      | 4     | value length `v`                                   |
//! | 7      | k     | key                                                |
//! | 7 + k  | v / 16 | the value, or the first page of its overflow run (8) and the transaction that wrote the run (8) |
//!
//! **Branch** (count = keys `n`; `n + 1` children): the first child's page number (8) and the
//! transaction that wrote it (8) at offset 24, then `n` cells of key length (2), key (`k`),
//! child page number (8), child's transaction (8). Child `i + 1` holds the keys `>= key i` and
//! `< key i + 1`.
//!
//! **Overflow** (count = data bytes in this page): value bytes from offset 24. A value of `v`
//! bytes fills `ceil(v / 4072)` consecutive pages.
//!
//! **Free list** (kind 5; count = extents in this page): extents of free pages from offset 24,
//! each a first page (8) and a length in pages (8) whose top bit marks the extent *held* (still
//! reached by the older meta's tree: reusable only after the next commit).
//!
//! **Free map** (kind 6; count is 0): a bitmap of free pages from offset 24, bit `b` of byte
//! `i` (least significant first) standing for page `(j * 4072 + i) * 8 + b` in the `j`-th map
//! page of the run.
//!
//! A commit's run is its free-list pages, then its free-map pages. The held extents are always
//! in the list; the other free pages are in the list or, when that would take more pages, in the
//! map (which then covers every page of the file at the commit, rounded up to whole map pages).
//! Together they name every page that is neither in the tree nor in the run itself.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::ops::{ControlFlow, Range};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::{check_sizes, EngineError, EngineKind, EngineOptions, EngineStats, StorageEngine};

/// The size of every page in the file, in bytes.
pub const PAGE_SIZE: usize = 4096;

/// The page format written by this build; a page with another version fails its check.
pub const FORMAT_VERSION: u8 = 1;

/// The name of the engine's file inside its data directory.
pub const FILE_NAME: &str = "btree.pages";

/// The default page-cache budget ([`EngineOptions::btree_cache_bytes_max`]): 256 MiB, enough
/// for about a million 150-byte values with 24-byte keys.
pub const CACHE_BYTES_MAX_DEFAULT: u64 = 256 << 20;

// The common page header.
const HEADER_CRC: usize = 0;
const HEADER_KIND: usize = HEADER_CRC + 4;
const HEADER_VERSION: usize = HEADER_KIND + 1;
const HEADER_COUNT: usize = HEADER_VERSION + 1;
const HEADER_PAGE: usize = HEADER_COUNT + 2;
const HEADER_TXN: usize = HEADER_PAGE + 8;
/// Bytes of the header every page starts with.
pub const PAGE_HEADER_BYTES: usize = HEADER_TXN + 8;
/// Bytes of a page after its header.
const BODY_BYTES: usize = PAGE_SIZE - PAGE_HEADER_BYTES;

const KIND_META: u8 = 1;
const KIND_LEAF: u8 = 2;
const KIND_BRANCH: u8 = 3;
const KIND_OVERFLOW: u8 = 4;
const KIND_FREELIST: u8 = 5;
const KIND_FREEMAP: u8 = 6;

// The meta body.
const MAGIC: [u8; 8] = *b"CWBTREE\0";
const META_MAGIC: usize = PAGE_HEADER_BYTES;
const META_PAGE_SIZE: usize = META_MAGIC + 8;
const META_ZERO: usize = META_PAGE_SIZE + 4;
const META_ROOT: usize = META_ZERO + 4;
const META_ROOT_TXN: usize = META_ROOT + 8;
const META_PAGE_COUNT: usize = META_ROOT_TXN + 8;
const META_FREELIST_FIRST: usize = META_PAGE_COUNT + 8;
const META_FREELIST_PAGES: usize = META_FREELIST_FIRST + 8;
const META_ENTRIES: usize = META_FREELIST_PAGES + 8;
const META_LIVE_BYTES: usize = META_ENTRIES + 8;
const META_END: usize = META_LIVE_BYTES + 8;
/// Pages 0 and 1 hold the metas; the tree starts at page 2.
const META_PAGES: u64 = 2;

// A leaf cell.
const CELL_KEY_LEN: usize = 0;
const CELL_FLAGS: usize = CELL_KEY_LEN + 2;
const CELL_VALUE_LEN: usize = CELL_FLAGS + 1;
const CELL_HEADER_BYTES: usize = CELL_VALUE_LEN + 4;
const FLAG_INLINE: u8 = 0;
const FLAG_OVERFLOW: u8 = 1;
const OVERFLOW_REF_BYTES: usize = 8 + 8;

/// The longest key the btree accepts, in bytes. Longer keys are refused with
/// [`EngineError::TooLarge`]: a page must hold several keys for the tree to split.
pub const BTREE_KEY_BYTES_MAX: usize = 1024;
/// A value is stored inline when key and value together are at most this many bytes, and in
/// overflow pages otherwise.
pub const INLINE_BYTES_MAX: usize = BTREE_KEY_BYTES_MAX;
/// The largest leaf cell: a longest key with an overflow reference (an inline cell is at most
/// `CELL_HEADER_BYTES + INLINE_BYTES_MAX`, which is smaller).
const CELL_BYTES_MAX: usize = CELL_HEADER_BYTES + BTREE_KEY_BYTES_MAX + OVERFLOW_REF_BYTES;

// A branch: the first child, then cells of key length, key, child.
const BRANCH_FIRST_CHILD_BYTES: usize = 8 + 8;
const BRANCH_CELL_OVERHEAD: usize = 2 + 8 + 8;

/// Value bytes per overflow page.
const OVERFLOW_DATA_BYTES: usize = BODY_BYTES;
/// Bytes per free-list extent, and extents per free-list page.
const EXTENT_BYTES: usize = 16;
const EXTENTS_PER_PAGE: usize = BODY_BYTES / EXTENT_BYTES;
/// The top bit of an extent's length marks it held: free only after the next commit.
const EXTENT_HELD: u64 = 1 << 63;
/// File pages one free-map page covers, a bit each.
const MAP_BITS_PER_PAGE: usize = BODY_BYTES * 8;

/// A node smaller than this (body bytes) after a delete is merged with a sibling if both fit in
/// one page.
const MERGE_BELOW_BYTES: usize = BODY_BYTES / 4;
/// Deeper than this the tree cannot be (it would need more pages than a file can have); a
/// deeper walk means a corrupt tree.
const DEPTH_MAX: usize = 64;
/// A scan copies at most this many entries, or about this many bytes, per visit of the tree.
const SCAN_BATCH_ENTRIES: usize = 256;
const SCAN_BATCH_BYTES: usize = 1 << 20;
/// Estimated bytes a cached node costs beyond its content (the cache slot, `Arc`, vectors).
const NODE_OVERHEAD_BYTES: u64 = 96;
/// Pages written by one `pwrite` when dirty pages are consecutive.
const WRITE_RUN_PAGES_MAX: usize = 64;

const _: () = assert!(PAGE_HEADER_BYTES == 24);
const _: () = assert!(META_END <= PAGE_SIZE);
// A node over a page by at most one cell splits into two halves that each fit in a page.
const _: () = assert!(3 * CELL_BYTES_MAX + BRANCH_FIRST_CHILD_BYTES <= BODY_BYTES);
const _: () = assert!(BRANCH_CELL_OVERHEAD + BTREE_KEY_BYTES_MAX <= CELL_BYTES_MAX);
const _: () = assert!(CELL_HEADER_BYTES + INLINE_BYTES_MAX <= CELL_BYTES_MAX);
// Counts fit the header's 16 bits.
const _: () = assert!(BODY_BYTES / CELL_HEADER_BYTES <= u16::MAX as usize);
const _: () = assert!(OVERFLOW_DATA_BYTES <= u16::MAX as usize);
const _: () = assert!(BTREE_KEY_BYTES_MAX <= crate::KEY_BYTES_MAX);
const _: () = assert!(crate::VALUE_BYTES_MAX <= u32::MAX as usize);

type PageId = u64;

/// A reference to a page: its number and the transaction that wrote it. A page read through a
/// reference must carry that transaction id, so a page that never reached the disk (or that a
/// lost commit overwrote) is told apart from the one the reference means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Ptr {
    id: PageId,
    txn: u64,
}

fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

fn put_u16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Fill in the header of `page` and its CRC. The body must already be in place.
fn seal_page(page: &mut [u8], kind: u8, count: usize, id: PageId, txn: u64) {
    debug_assert_eq!(page.len(), PAGE_SIZE);
    assert!(count <= u16::MAX as usize, "page count field overflows: {count}");
    page[HEADER_KIND] = kind;
    page[HEADER_VERSION] = FORMAT_VERSION;
    put_u16(page, HEADER_COUNT, count as u16);
    put_u64(page, HEADER_PAGE, id);
    put_u64(page, HEADER_TXN, txn);
    let crc = crc32fast::hash(&page[HEADER_KIND..]);
    put_u32(page, HEADER_CRC, crc);
}

/// Check a page read from disk: its CRC, version, number and kind. Returns its count field.
fn check_page(page: &[u8], id: PageId, kind: u8) -> Result<usize, String> {
    debug_assert_eq!(page.len(), PAGE_SIZE);
    let crc = crc32fast::hash(&page[HEADER_KIND..]);
    if crc != get_u32(page, HEADER_CRC) {
        return Err(format!("page {id} fails its CRC"));
    }
    if page[HEADER_VERSION] != FORMAT_VERSION {
        return Err(format!("page {id} has format version {}", page[HEADER_VERSION]));
    }
    if get_u64(page, HEADER_PAGE) != id {
        return Err(format!("page {id} claims to be page {}", get_u64(page, HEADER_PAGE)));
    }
    if page[HEADER_KIND] != kind {
        return Err(format!("page {id} has kind {}, expected {kind}", page[HEADER_KIND]));
    }
    Ok(get_u16(page, HEADER_COUNT) as usize)
}

/// Pages an overflow value of `len` bytes fills.
fn overflow_pages(len: usize) -> u64 {
    len.div_ceil(OVERFLOW_DATA_BYTES) as u64
}

// ---------------------------------------------------------------------------------------------
// Nodes: the decoded form of leaf and branch pages, as the cache and the dirty set hold them.

/// A value as a leaf cell stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ValueRef<'a> {
    Inline(&'a [u8]),
    Overflow { first: PageId, len: usize, txn: u64 },
}

/// What a put or delete displaced, for the counters and the free list.
#[derive(Clone, Copy, Debug)]
struct Displaced {
    value_len: usize,
    overflow: Option<(PageId, u64)>,
}

/// The first eight bytes of a key (after the bytes all keys of its node share), zero-padded,
/// as a big-endian number. If `key_prefix(a) < key_prefix(b)` then `a < b`, so a search
/// compares these (one small array, few cache lines) and reads the keys only on a tie. Taking
/// them after the node's common prefix keeps them telling keys apart when keys share long
/// beginnings (a partition number, a bucket name, zero-padded counters).
fn key_prefix(key: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    let n = key.len().min(8);
    bytes[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(bytes)
}

/// Bytes at the start of `a` and `b` that are equal.
fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Where `key` falls against a node whose keys all start with `head`: `Ok(rest)` (the part of
/// `key` after `head`) if it starts with it too, else `Err(true)` if it sorts before every key
/// of the node and `Err(false)` if after.
fn after_head<'k>(key: &'k [u8], head: &[u8]) -> Result<&'k [u8], bool> {
    match key.strip_prefix(head) {
        Some(rest) => Ok(rest),
        None => Err(key < head),
    }
}

/// A leaf: its cells packed exactly as on disk, with the offset of each cell, the length of a
/// prefix all its keys share, and each key's [`key_prefix`] after that.
#[derive(Clone, Debug, Default)]
struct Leaf {
    buf: Vec<u8>,
    offsets: Vec<u32>,
    common: usize,
    prefixes: Vec<u64>,
}

impl Leaf {
    fn len(&self) -> usize {
        self.offsets.len()
    }

    fn body_bytes(&self) -> usize {
        self.buf.len()
    }

    fn cell_range(&self, i: usize) -> Range<usize> {
        let start = self.offsets[i] as usize;
        let end = self.offsets.get(i + 1).map_or(self.buf.len(), |&o| o as usize);
        start..end
    }

    fn key(&self, i: usize) -> &[u8] {
        let at = self.offsets[i] as usize;
        let key_len = get_u16(&self.buf, at + CELL_KEY_LEN) as usize;
        &self.buf[at + CELL_HEADER_BYTES..at + CELL_HEADER_BYTES + key_len]
    }

    fn value(&self, i: usize) -> ValueRef<'_> {
        let at = self.offsets[i] as usize;
        let key_len = get_u16(&self.buf, at + CELL_KEY_LEN) as usize;
        let value_len = get_u32(&self.buf, at + CELL_VALUE_LEN) as usize;
        let body = at + CELL_HEADER_BYTES + key_len;
        if self.buf[at + CELL_FLAGS] == FLAG_OVERFLOW {
            ValueRef::Overflow {
                first: get_u64(&self.buf, body),
                len: value_len,
                txn: get_u64(&self.buf, body + 8),
            }
        } else {
            ValueRef::Inline(&self.buf[body..body + value_len])
        }
    }

    fn displaced(&self, i: usize) -> Displaced {
        match self.value(i) {
            ValueRef::Inline(value) => Displaced { value_len: value.len(), overflow: None },
            ValueRef::Overflow { first, len, .. } => {
                Displaced { value_len: len, overflow: Some((first, overflow_pages(len))) }
            }
        }
    }

    /// Recompute the common prefix and the key prefixes.
    fn refresh(&mut self) {
        self.common = match self.len() {
            0 => 0,
            n => common_prefix_len(self.key(0), self.key(n - 1)),
        };
        self.prefixes = (0..self.len()).map(|i| key_prefix(&self.key(i)[self.common..])).collect();
    }

    /// `Ok(i)` if cell `i` has `key`, `Err(i)` for where it would go.
    fn search(&self, key: &[u8]) -> Result<usize, usize> {
        if self.len() == 0 {
            return Err(0);
        }
        let common = self.common;
        let rest = match after_head(key, &self.key(0)[..common]) {
            Ok(rest) => rest,
            Err(before) => return Err(if before { 0 } else { self.len() }),
        };
        let prefix = key_prefix(rest);
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let mid = low + (high - low) / 2;
            let order = match self.prefixes[mid].cmp(&prefix) {
                std::cmp::Ordering::Equal => self.key(mid)[common..].cmp(rest),
                order => order,
            };
            match order {
                std::cmp::Ordering::Less => low = mid + 1,
                std::cmp::Ordering::Greater => high = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(low)
    }

    /// Make room for growth once, up to a page and a cell, instead of doubling.
    fn reserve_for(&mut self, extra: usize) {
        if self.buf.len() + extra > self.buf.capacity() {
            let want = (BODY_BYTES + CELL_BYTES_MAX).max(self.buf.len() + extra);
            self.buf.reserve_exact(want - self.buf.len());
        }
    }

    fn insert_cell(&mut self, i: usize, cell: &[u8]) {
        let at = self.offsets.get(i).map_or(self.buf.len(), |&o| o as usize);
        self.reserve_for(cell.len());
        self.buf.splice(at..at, cell.iter().copied());
        self.offsets.insert(i, at as u32);
        for offset in &mut self.offsets[i + 1..] {
            *offset += cell.len() as u32;
        }
        // A key between two others shares their common prefix; a new first or last key may
        // share less, and then every key prefix is taken again.
        let neighbour = if i == 0 { 1 } else { 0 };
        // Every key is at least `common` bytes long: they all start with the same `common`.
        if self.len() > 1 && self.key(i).starts_with(&self.key(neighbour)[..self.common]) {
            let prefix = key_prefix(&self.key(i)[self.common..]);
            self.prefixes.insert(i, prefix);
        } else {
            self.refresh();
        }
    }

    fn replace_cell(&mut self, i: usize, cell: &[u8]) {
        let range = self.cell_range(i);
        let old_len = range.len();
        self.reserve_for(cell.len().saturating_sub(old_len));
        self.buf.splice(range, cell.iter().copied());
        for offset in &mut self.offsets[i + 1..] {
            *offset = (*offset as usize + cell.len() - old_len) as u32;
        }
    }

    fn remove_cell(&mut self, i: usize) {
        let range = self.cell_range(i);
        let removed = range.len() as u32;
        self.buf.drain(range);
        self.offsets.remove(i);
        self.prefixes.remove(i);
        for offset in &mut self.offsets[i..] {
            *offset -= removed;
        }
    }

    fn append(&mut self, other: &Leaf) {
        let base = self.buf.len() as u32;
        self.buf.extend_from_slice(&other.buf);
        self.offsets.extend(other.offsets.iter().map(|o| o + base));
        self.refresh();
    }

    /// Split an over-full leaf into two parts that each fit in a page; returns the right one.
    /// After an append (keys arriving in order) the left part is left as full as it can be,
    /// otherwise the split is in the middle.
    fn split_off(&mut self, append: bool) -> Leaf {
        let m = if append {
            // The last cell that starts within a page begins the right part: the left part
            // fits, and the right holds at most two cells.
            self.offsets.partition_point(|&o| (o as usize) <= BODY_BYTES) - 1
        } else {
            // The first cell that starts past the middle begins the right part: it holds less
            // than half, and the left at most half and one cell.
            let half = self.buf.len() / 2;
            self.offsets.partition_point(|&o| (o as usize) <= half)
        };
        let m = m.clamp(1, self.len() - 1);
        let cut = self.offsets[m] as usize;
        let right = Leaf {
            buf: self.buf[cut..].to_vec(),
            offsets: self.offsets[m..].iter().map(|o| o - cut as u32).collect(),
            common: 0,
            prefixes: Vec::new(),
        };
        let mut right = right;
        right.refresh();
        self.buf.truncate(cut);
        self.offsets.truncate(m);
        self.refresh();
        self.shrink();
        right
    }

    fn shrink(&mut self) {
        self.buf.shrink_to_fit();
        self.offsets.shrink_to_fit();
        self.prefixes.shrink_to_fit();
    }

    fn decode(body: &[u8], count: usize) -> Result<Leaf, String> {
        let mut offsets = Vec::with_capacity(count);
        let mut at = 0;
        for i in 0..count {
            if at + CELL_HEADER_BYTES > body.len() {
                return Err(format!("leaf cell {i} runs past the page"));
            }
            let key_len = get_u16(body, at + CELL_KEY_LEN) as usize;
            let value_len = get_u32(body, at + CELL_VALUE_LEN) as usize;
            let stored = match body[at + CELL_FLAGS] {
                FLAG_INLINE => value_len,
                FLAG_OVERFLOW => OVERFLOW_REF_BYTES,
                flag => return Err(format!("leaf cell {i} has flag {flag}")),
            };
            let end = at + CELL_HEADER_BYTES + key_len + stored;
            if end > body.len() {
                return Err(format!("leaf cell {i} runs past the page"));
            }
            offsets.push(at as u32);
            at = end;
        }
        let mut leaf = Leaf { buf: body[..at].to_vec(), offsets, common: 0, prefixes: Vec::new() };
        leaf.refresh();
        for i in 1..leaf.len() {
            if leaf.key(i - 1) >= leaf.key(i) {
                return Err(format!("leaf keys out of order at cell {i}"));
            }
        }
        Ok(leaf)
    }
}

/// Encode a leaf cell.
fn leaf_cell(key: &[u8], value: ValueRef<'_>) -> Vec<u8> {
    let (flag, value_len, stored) = match value {
        ValueRef::Inline(bytes) => (FLAG_INLINE, bytes.len(), bytes.len()),
        ValueRef::Overflow { len, .. } => (FLAG_OVERFLOW, len, OVERFLOW_REF_BYTES),
    };
    let mut cell = vec![0u8; CELL_HEADER_BYTES + key.len() + stored];
    put_u16(&mut cell, CELL_KEY_LEN, key.len() as u16);
    cell[CELL_FLAGS] = flag;
    put_u32(&mut cell, CELL_VALUE_LEN, value_len as u32);
    cell[CELL_HEADER_BYTES..CELL_HEADER_BYTES + key.len()].copy_from_slice(key);
    let body = CELL_HEADER_BYTES + key.len();
    match value {
        ValueRef::Inline(bytes) => cell[body..].copy_from_slice(bytes),
        ValueRef::Overflow { first, txn, .. } => {
            put_u64(&mut cell, body, first);
            put_u64(&mut cell, body + 8, txn);
        }
    }
    cell
}

/// A branch: `keys.len() + 1` children; child `i + 1` holds keys `>= keys[i]`. `common` and
/// `prefixes` index `keys` as in a [`Leaf`]; whoever changes `keys` calls [`Branch::refresh`].
#[derive(Clone, Debug)]
struct Branch {
    keys: Vec<Vec<u8>>,
    children: Vec<Ptr>,
    common: usize,
    prefixes: Vec<u64>,
}

impl Branch {
    fn new(keys: Vec<Vec<u8>>, children: Vec<Ptr>) -> Branch {
        let mut branch = Branch { keys, children, common: 0, prefixes: Vec::new() };
        branch.refresh();
        branch
    }

    /// Recompute the common prefix and the key prefixes after a change to `keys`.
    fn refresh(&mut self) {
        debug_assert_eq!(self.keys.len() + 1, self.children.len(), "a child per key and one");
        self.common = match (self.keys.first(), self.keys.last()) {
            (Some(first), Some(last)) => common_prefix_len(first, last),
            _ => 0,
        };
        let common = self.common;
        self.prefixes.clear();
        self.prefixes.extend(self.keys.iter().map(|k| key_prefix(&k[common..])));
    }

    fn body_bytes(&self) -> usize {
        BRANCH_FIRST_CHILD_BYTES
            + self.keys.iter().map(|k| BRANCH_CELL_OVERHEAD + k.len()).sum::<usize>()
    }

    /// The child whose range holds `key`: the number of keys `<= key`.
    fn child_index(&self, key: &[u8]) -> usize {
        debug_assert_eq!(self.prefixes.len(), self.keys.len(), "prefixes refreshed");
        let Some(first) = self.keys.first() else { return 0 };
        let common = self.common;
        let rest = match after_head(key, &first[..common]) {
            Ok(rest) => rest,
            Err(before) => return if before { 0 } else { self.keys.len() },
        };
        let prefix = key_prefix(rest);
        let (mut low, mut high) = (0, self.keys.len());
        while low < high {
            let mid = low + (high - low) / 2;
            let at_or_below = match self.prefixes[mid].cmp(&prefix) {
                std::cmp::Ordering::Less => true,
                std::cmp::Ordering::Greater => false,
                std::cmp::Ordering::Equal => &self.keys[mid][common..] <= rest,
            };
            if at_or_below {
                low = mid + 1;
            } else {
                high = mid;
            }
        }
        low
    }

    /// Split an over-full branch; returns the promoted key and the right part. After an
    /// append the left part is left as full as it can be, otherwise the split is in the middle.
    fn split_off(&mut self, append: bool) -> (Vec<u8>, Branch) {
        let limit = if append { BODY_BYTES } else { self.body_bytes() / 2 };
        let mut size = BRANCH_FIRST_CHILD_BYTES;
        let mut m = 0;
        while m < self.keys.len() && size + BRANCH_CELL_OVERHEAD + self.keys[m].len() <= limit {
            size += BRANCH_CELL_OVERHEAD + self.keys[m].len();
            m += 1;
        }
        let m = m.clamp(1, self.keys.len() - 1);
        let right_keys = self.keys.split_off(m + 1);
        let promoted = self.keys.pop().expect("a split branch has keys");
        let right_children = self.children.split_off(m + 1);
        self.refresh();
        (promoted, Branch::new(right_keys, right_children))
    }

    fn decode(body: &[u8], count: usize) -> Result<Branch, String> {
        let mut children = Vec::with_capacity(count + 1);
        let mut keys = Vec::with_capacity(count);
        children.push(Ptr { id: get_u64(body, 0), txn: get_u64(body, 8) });
        let mut at = BRANCH_FIRST_CHILD_BYTES;
        for i in 0..count {
            if at + 2 > body.len() {
                return Err(format!("branch cell {i} runs past the page"));
            }
            let key_len = get_u16(body, at) as usize;
            let end = at + BRANCH_CELL_OVERHEAD + key_len;
            if end > body.len() {
                return Err(format!("branch cell {i} runs past the page"));
            }
            keys.push(body[at + 2..at + 2 + key_len].to_vec());
            let child = at + 2 + key_len;
            children.push(Ptr { id: get_u64(body, child), txn: get_u64(body, child + 8) });
            at = end;
        }
        if children.iter().any(|c| c.id < META_PAGES) {
            return Err("branch points at a meta page".into());
        }
        if keys.windows(2).any(|w| w[0] >= w[1]) {
            return Err("branch keys out of order".into());
        }
        Ok(Branch::new(keys, children))
    }
}

#[derive(Clone, Debug)]
enum Node {
    Leaf(Leaf),
    Branch(Branch),
}

impl Node {
    fn body_bytes(&self) -> usize {
        match self {
            Node::Leaf(leaf) => leaf.body_bytes(),
            Node::Branch(branch) => branch.body_bytes(),
        }
    }

    /// Estimated memory this node holds.
    fn memory_bytes(&self) -> u64 {
        let content = match self {
            Node::Leaf(leaf) => {
                leaf.buf.capacity() + leaf.offsets.capacity() * 4 + leaf.prefixes.capacity() * 8
            }
            Node::Branch(branch) => {
                branch.keys.iter().map(|k| k.capacity() + 24).sum::<usize>()
                    + branch.children.capacity() * 16
                    + branch.prefixes.capacity() * 8
            }
        };
        content as u64 + NODE_OVERHEAD_BYTES
    }

    fn shrink(&mut self) {
        match self {
            Node::Leaf(leaf) => leaf.shrink(),
            Node::Branch(branch) => {
                branch.keys.shrink_to_fit();
                branch.children.shrink_to_fit();
                branch.prefixes.shrink_to_fit();
            }
        }
    }

    /// Encode into `page` (exactly one page, zeroed) as page `id` of transaction `txn`.
    fn encode_into(&self, page: &mut [u8], id: PageId, txn: u64) {
        assert!(self.body_bytes() <= BODY_BYTES, "node {id} over a page before writing");
        let body = &mut page[PAGE_HEADER_BYTES..];
        match self {
            Node::Leaf(leaf) => {
                body[..leaf.buf.len()].copy_from_slice(&leaf.buf);
                seal_page(page, KIND_LEAF, leaf.len(), id, txn);
            }
            Node::Branch(branch) => {
                put_u64(body, 0, branch.children[0].id);
                put_u64(body, 8, branch.children[0].txn);
                let mut at = BRANCH_FIRST_CHILD_BYTES;
                for (key, child) in branch.keys.iter().zip(&branch.children[1..]) {
                    put_u16(body, at, key.len() as u16);
                    body[at + 2..at + 2 + key.len()].copy_from_slice(key);
                    put_u64(body, at + 2 + key.len(), child.id);
                    put_u64(body, at + 10 + key.len(), child.txn);
                    at += BRANCH_CELL_OVERHEAD + key.len();
                }
                seal_page(page, KIND_BRANCH, branch.keys.len(), id, txn);
            }
        }
    }

    fn decode(page: &[u8], id: PageId) -> Result<Node, String> {
        let kind = page[HEADER_KIND];
        let kind = if kind == KIND_BRANCH { KIND_BRANCH } else { KIND_LEAF };
        let count = check_page(page, id, kind)?;
        let body = &page[PAGE_HEADER_BYTES..];
        if kind == KIND_LEAF {
            Leaf::decode(body, count).map(Node::Leaf)
        } else {
            Branch::decode(body, count).map(Node::Branch)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The page cache.

/// A hasher for page numbers: one multiply, enough to spread sequential numbers.
#[derive(Default)]
struct PageIdHasher(u64);

impl Hasher for PageIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
}

type PageIdBuild = BuildHasherDefault<PageIdHasher>;

struct Slot {
    node: Arc<Node>,
    bytes: u64,
    referenced: bool,
}

/// Clean decoded nodes, bounded in bytes, evicted by CLOCK (second chance).
#[derive(Default)]
struct PageCache {
    slots: HashMap<PageId, Slot, PageIdBuild>,
    /// The clock: page numbers in insertion order. May hold numbers no longer cached; they are
    /// skipped, and the queue is rebuilt when they pile up.
    clock: VecDeque<PageId>,
    bytes: u64,
}

impl PageCache {
    fn get_ref(&mut self, id: PageId) -> Option<&Node> {
        let slot = self.slots.get_mut(&id)?;
        slot.referenced = true;
        Some(&slot.node)
    }

    fn get(&mut self, id: PageId) -> Option<Arc<Node>> {
        let slot = self.slots.get_mut(&id)?;
        slot.referenced = true;
        Some(Arc::clone(&slot.node))
    }

    fn insert(&mut self, id: PageId, node: Arc<Node>, budget: u64) {
        let bytes = node.memory_bytes();
        if let Some(old) = self.slots.insert(id, Slot { node, bytes, referenced: false }) {
            self.bytes -= old.bytes;
        } else {
            self.clock.push_back(id);
        }
        self.bytes += bytes;
        self.evict(budget);
    }

    fn remove(&mut self, id: PageId) {
        if let Some(old) = self.slots.remove(&id) {
            self.bytes -= old.bytes;
        }
        if self.clock.len() > 2 * self.slots.len() + 1024 {
            self.clock = self.slots.keys().copied().collect();
        }
    }

    fn evict(&mut self, budget: u64) {
        while self.bytes > budget {
            let Some(id) = self.clock.pop_front() else { break };
            let Some(slot) = self.slots.get_mut(&id) else { continue };
            if slot.referenced {
                slot.referenced = false;
                self.clock.push_back(id);
            } else {
                self.bytes -= slot.bytes;
                self.slots.remove(&id);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tree's in-memory state.

/// A committed meta page, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Meta {
    txn: u64,
    root: Ptr,
    page_count: u64,
    freelist_first: PageId,
    freelist_pages: u64,
    entries: u64,
    live_bytes: u64,
}

impl Meta {
    fn encode(&self, slot: PageId) -> Vec<u8> {
        let mut page = vec![0u8; PAGE_SIZE];
        page[META_MAGIC..META_MAGIC + 8].copy_from_slice(&MAGIC);
        put_u32(&mut page, META_PAGE_SIZE, PAGE_SIZE as u32);
        put_u64(&mut page, META_ROOT, self.root.id);
        put_u64(&mut page, META_ROOT_TXN, self.root.txn);
        put_u64(&mut page, META_PAGE_COUNT, self.page_count);
        put_u64(&mut page, META_FREELIST_FIRST, self.freelist_first);
        put_u64(&mut page, META_FREELIST_PAGES, self.freelist_pages);
        put_u64(&mut page, META_ENTRIES, self.entries);
        put_u64(&mut page, META_LIVE_BYTES, self.live_bytes);
        seal_page(&mut page, KIND_META, 0, slot, self.txn);
        page
    }

    fn decode(page: &[u8], slot: PageId) -> Result<Meta, String> {
        check_page(page, slot, KIND_META)?;
        if page[META_MAGIC..META_MAGIC + 8] != MAGIC {
            return Err(format!("meta {slot} has a wrong magic"));
        }
        if get_u32(page, META_PAGE_SIZE) as usize != PAGE_SIZE {
            return Err(format!("meta {slot} has page size {}", get_u32(page, META_PAGE_SIZE)));
        }
        let meta = Meta {
            txn: get_u64(page, HEADER_TXN),
            root: Ptr { id: get_u64(page, META_ROOT), txn: get_u64(page, META_ROOT_TXN) },
            page_count: get_u64(page, META_PAGE_COUNT),
            freelist_first: get_u64(page, META_FREELIST_FIRST),
            freelist_pages: get_u64(page, META_FREELIST_PAGES),
            entries: get_u64(page, META_ENTRIES),
            live_bytes: get_u64(page, META_LIVE_BYTES),
        };
        let in_file = |id: u64| (META_PAGES..meta.page_count).contains(&id);
        let root_ok = meta.root.id == 0 || (in_file(meta.root.id) && meta.root.txn <= meta.txn);
        let freelist_ok = meta.freelist_pages == 0
            || (in_file(meta.freelist_first)
                && meta
                    .freelist_first
                    .checked_add(meta.freelist_pages)
                    .is_some_and(|end| end <= meta.page_count));
        if meta.page_count < META_PAGES || !root_ok || !freelist_ok {
            return Err(format!("meta {slot} points outside its {} pages", meta.page_count));
        }
        Ok(meta)
    }
}

/// Set the bits for pages `first..end` in `map`, a run of free-map pages.
fn set_map_bits(map: &mut [u8], mut first: usize, end: usize) {
    while first < end {
        let (page, bit) = (first / MAP_BITS_PER_PAGE, first % MAP_BITS_PER_PAGE);
        let bits = &mut map[page * PAGE_SIZE + PAGE_HEADER_BYTES..(page + 1) * PAGE_SIZE];
        let stop = (end - page * MAP_BITS_PER_PAGE).min(MAP_BITS_PER_PAGE);
        let mut b = bit;
        while b < stop {
            if b % 8 == 0 && b + 8 <= stop {
                bits[b / 8] = 0xff;
                b += 8;
            } else {
                bits[b / 8] |= 1 << (b % 8);
                b += 1;
            }
        }
        first = page * MAP_BITS_PER_PAGE + stop;
    }
}

/// Add the extent `first..first + len` to a set of disjoint extents, joining neighbours.
fn insert_extent(set: &mut BTreeMap<PageId, u64>, mut first: PageId, mut len: u64) {
    if len == 0 {
        return;
    }
    if let Some((&before, &before_len)) = set.range(..first).next_back() {
        debug_assert!(before + before_len <= first, "extents overlap at {first}");
        if before + before_len == first {
            set.remove(&before);
            first = before;
            len += before_len;
        }
    }
    if let Some(after_len) = set.remove(&(first + len)) {
        len += after_len;
    }
    set.insert(first, len);
}

/// Free pages as disjoint, maximal extents, indexed by first page and by length, so that an
/// allocation takes the smallest extent that fits (best fit). Best fit uses up the holes that
/// single freed pages leave before it cuts into long runs, which keeps the number of extents,
/// and so the free list each commit writes, small.
#[derive(Clone, Debug, Default)]
struct FreeSet {
    by_first: BTreeMap<PageId, u64>,
    by_len: std::collections::BTreeSet<(u64, PageId)>,
    pages: u64,
}

impl FreeSet {
    fn extents(&self) -> usize {
        self.by_first.len()
    }

    fn iter(&self) -> impl Iterator<Item = (PageId, u64)> + '_ {
        self.by_first.iter().map(|(&first, &len)| (first, len))
    }

    fn remove_extent(&mut self, first: PageId) -> Option<u64> {
        let len = self.by_first.remove(&first)?;
        self.by_len.remove(&(len, first));
        Some(len)
    }

    /// Add `first..first + len`, joining the neighbouring extents.
    fn insert(&mut self, mut first: PageId, mut len: u64) {
        if len == 0 {
            return;
        }
        self.pages += len;
        if let Some((&before, &before_len)) = self.by_first.range(..first).next_back() {
            debug_assert!(before + before_len <= first, "free extents overlap at {first}");
            if before + before_len == first {
                self.remove_extent(before);
                first = before;
                len += before_len;
            }
        }
        if let Some(after_len) = self.remove_extent(first + len) {
            len += after_len;
        }
        self.by_first.insert(first, len);
        self.by_len.insert((len, first));
    }

    /// Take `n` consecutive pages from the smallest extent that has them.
    fn take(&mut self, n: u64) -> Option<PageId> {
        let &(len, first) = self.by_len.range((n, 0)..).next()?;
        self.remove_extent(first);
        if len > n {
            self.by_first.insert(first + n, len - n);
            self.by_len.insert((len - n, first + n));
        }
        self.pages -= n;
        Some(first)
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

impl Tree {
    /// Take `n` consecutive pages: the smallest free extent that fits, else the end of the
    /// file.
    fn alloc(&mut self, n: u64) -> PageId {
        let first = self.free.take(n).unwrap_or_else(|| {
            let first = self.page_count;
            self.page_count += n;
            first
        });
        self.fresh.extend(first..first + n);
        first
    }

    /// Stop using the run `first..first + n`: free now if the open transaction made it,
    /// otherwise once the next commit is durable.
    fn release(&mut self, first: PageId, n: u64) {
        if self.fresh.remove(&first) {
            for id in first + 1..first + n {
                self.fresh.remove(&id);
            }
            self.free.insert(first, n);
        } else {
            self.pending.push((first, n));
            self.pending_pages += n;
        }
    }
}

/// A free list as loaded: the free extents, and the held ones.
type FreeList = (BTreeMap<PageId, u64>, Vec<(PageId, u64)>);

/// A free list being read back, with every extent checked against the file and the others.
#[derive(Default)]
struct LoadedFreeList {
    free: BTreeMap<PageId, u64>,
    held: Vec<(PageId, u64)>,
    all: BTreeMap<PageId, u64>,
}

impl LoadedFreeList {
    /// Add an extent; `Err` if it is empty, outside the tree's pages, or overlaps another.
    fn add(&mut self, first: PageId, len: u64, is_held: bool, page_count: u64) -> Result<(), ()> {
        let fits = first >= META_PAGES
            && len > 0
            && first.checked_add(len).is_some_and(|end| end <= page_count);
        if !fits {
            return Err(());
        }
        let overlaps = self
            .all
            .range(..first + len)
            .next_back()
            .is_some_and(|(&before, &before_len)| before + before_len > first);
        if overlaps {
            return Err(());
        }
        insert_extent(&mut self.all, first, len);
        if is_held {
            self.held.push((first, len));
        } else {
            insert_extent(&mut self.free, first, len);
        }
        Ok(())
    }
}

/// Where commits stand: the last durable transaction, and whether one is being committed.
#[derive(Debug, Default)]
struct CommitState {
    durable_txn: u64,
    committing: bool,
}

/// A commit whose pages are written and whose meta and `fdatasync` are still to come.
struct Frozen {
    meta: Meta,
    /// Extents free once the commit is durable.
    released: Vec<(PageId, u64)>,
}

/// The outcome of an insert below a node.
enum Change {
    /// The node now lives at this page.
    Same(PageId),
    /// The node split: left page, the first key of the right, right page.
    Split(PageId, Vec<u8>, PageId),
}

/// Where a scan batch stands.
struct ScanCursor<'a> {
    start: &'a [u8],
    include_start: bool,
    prefix: &'a [u8],
    out: &'a mut Vec<(Vec<u8>, Vec<u8>)>,
    bytes: usize,
}

/// How a scan of a subtree ended.
enum ScanStep {
    /// The subtree is done; go on with the next one.
    More,
    /// The batch is full.
    Full,
    /// A key past the prefix was reached: the scan is over.
    End,
}

/// Where a `get` stands after walking down as far as it could.
enum Descent {
    /// The key's value, copied out.
    Found(Vec<u8>),
    /// The key is not in the tree.
    Absent,
    /// The key's value is in this overflow run.
    Overflow { first: PageId, len: usize, txn: u64 },
    /// This page is needed and not in memory.
    Missing(Ptr),
    /// The walk went deeper than any real tree.
    TooDeep,
}

/// One step of a `get` at `node`: the child to go to, or where the walk ends.
fn descend_one(node: &Node, key: &[u8]) -> Result<Ptr, Descent> {
    match node {
        Node::Branch(branch) => Ok(branch.children[branch.child_index(key)]),
        Node::Leaf(leaf) => Err(match leaf.search(key) {
            Err(_) => Descent::Absent,
            Ok(i) => match leaf.value(i) {
                ValueRef::Inline(value) => Descent::Found(value.to_vec()),
                ValueRef::Overflow { first, len, txn } => Descent::Overflow { first, len, txn },
            },
        }),
    }
}

/// Walk down from `ptr` through pages that are dirty or cached, as far as they go.
fn descend_in_memory(
    tree: &Tree,
    cache: &mut PageCache,
    mut ptr: Ptr,
    key: &[u8],
    depth: &mut usize,
) -> Descent {
    loop {
        if *depth > DEPTH_MAX {
            return Descent::TooDeep;
        }
        let node = match tree.dirty.get(&ptr.id) {
            Some(node) => &**node,
            None => match cache.get_ref(ptr.id) {
                Some(node) => node,
                None => return Descent::Missing(ptr),
            },
        };
        *depth += 1;
        match descend_one(node, key) {
            Ok(child) => ptr = child,
            Err(done) => return done,
        }
    }
}

/// The shape of a tree, as [`BtreeEngine::for_testing_check`] finds it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeShape {
    /// Levels from the root to the leaves (0 for an empty tree).
    pub depth: usize,
    /// Branch pages reachable from the root.
    pub branch_pages: u64,
    /// Leaf pages reachable from the root.
    pub leaf_pages: u64,
    /// Overflow pages reachable from the leaves.
    pub overflow_pages: u64,
    /// Pages free now or after the next commit, and the free list's own pages.
    pub free_pages: u64,
    /// Pages in the file, metas included.
    pub page_count: u64,
}

// ---------------------------------------------------------------------------------------------
// The engine.

/// The engine's state, shared with the commit thread.
struct Shared {
    path: PathBuf,
    file: File,
    /// The open data directory, holding the exclusive `flock` for the engine's lifetime.
    _dir_lock: File,
    cache_bytes_max: u64,
    tree: RwLock<Tree>,
    cache: Mutex<PageCache>,
    /// The last durable transaction and whether a commit is running; concurrent `sync`
    /// callers wait on `commit_done` and share commits.
    commit_state: Mutex<CommitState>,
    commit_done: Condvar,
    /// Set after an I/O failure while writing: later writes and syncs are refused.
    failed: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BtreeEngine")
            .field("path", &self.path)
            .field("cache_bytes_max", &self.cache_bytes_max)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Open (or create) the btree in `dir`, taking an exclusive lock on the directory.
    fn open(dir: &Path, options: &EngineOptions) -> Result<Shared, EngineError> {
        fs::create_dir_all(dir).map_err(EngineError::io("creating the data directory"))?;
        let dir_lock = File::open(dir).map_err(EngineError::io("opening the data directory"))?;
        let locked = match fs4::fs_std::FileExt::try_lock_exclusive(&dir_lock) {
            Ok(locked) => locked,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => false,
            Err(err) => return Err(EngineError::io("locking the data directory")(err)),
        };
        if !locked {
            return Err(EngineError::Locked { path: dir.display().to_string() });
        }
        let path = dir.join(FILE_NAME);
        if !path.exists() {
            create_file(dir, &path)?;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(EngineError::io("opening the btree file"))?;
        let mut engine = Shared {
            path,
            file,
            _dir_lock: dir_lock,
            cache_bytes_max: options.btree_cache_bytes_max.max(PAGE_SIZE as u64),
            tree: RwLock::new(Tree::default()),
            cache: Mutex::new(PageCache::default()),
            commit_state: Mutex::new(CommitState::default()),
            commit_done: Condvar::new(),
            failed: AtomicBool::new(false),
        };
        let (meta, (free, held)) = engine.recover()?;
        let tree = engine.tree.get_mut().unwrap_or_else(|p| p.into_inner());
        tree.root = meta.root;
        tree.page_count = meta.page_count;
        tree.entries = meta.entries;
        tree.live_bytes = meta.live_bytes;
        tree.txn = meta.txn + 1;
        for (first, n) in free {
            tree.free.insert(first, n);
        }
        tree.held_pages = held.iter().map(|e| e.1).sum();
        tree.held = held;
        tree.freelist_run = (meta.freelist_first, meta.freelist_pages);
        engine.commit_state.get_mut().unwrap_or_else(|p| p.into_inner()).durable_txn = meta.txn;
        Ok(engine)
    }

    /// Pick the newest meta whose free list and pages written by its commit read back, and load
    /// that free list.
    fn recover(&self) -> Result<(Meta, FreeList), EngineError> {
        let mut metas = Vec::new();
        let mut reasons = Vec::new();
        for slot in 0..META_PAGES {
            match self
                .read_pages(slot, 1)
                .and_then(|page| Meta::decode(&page, slot).map_err(|reason| self.corrupt(reason)))
            {
                Ok(meta) => metas.push(meta),
                Err(EngineError::Corrupt { reason, .. }) => reasons.push(reason),
                Err(err) => return Err(err),
            }
        }
        metas.sort_by_key(|meta| std::cmp::Reverse(meta.txn));
        for meta in metas {
            match self.load_freelist(&meta).and_then(|free| {
                self.verify_commit(&meta)?;
                Ok(free)
            }) {
                Ok(free) => return Ok((meta, free)),
                Err(EngineError::Corrupt { reason, .. }) => {
                    reasons.push(format!("transaction {}: {reason}", meta.txn));
                }
                Err(err) => return Err(err),
            }
        }
        Err(self.corrupt(format!("no usable meta page ({})", reasons.join("; "))))
    }

    /// Read back every page the commit of `meta` wrote. One `fdatasync` covers a commit's pages
    /// and its meta, so after a crash the meta may be on disk while some of its pages are not;
    /// such a commit was never acknowledged, and open must fall back to the previous one. The
    /// pages a commit wrote are exactly those reachable from the root through references that
    /// carry the commit's transaction id (copy-on-write rewrites every page on the path to a
    /// change), so this reads only what the last commit wrote.
    fn verify_commit(&self, meta: &Meta) -> Result<(), EngineError> {
        if meta.root.id == 0 {
            return Ok(());
        }
        let mut stack = vec![meta.root];
        let mut visited = 0u64;
        while let Some(ptr) = stack.pop() {
            visited += 1;
            if visited > meta.page_count {
                return Err(self.corrupt("the tree reaches a page twice".into()));
            }
            match self.read_node(ptr)? {
                Node::Branch(branch) => {
                    stack.extend(branch.children.iter().filter(|c| c.txn == meta.txn));
                }
                Node::Leaf(leaf) => {
                    for i in 0..leaf.len() {
                        if let value @ ValueRef::Overflow { txn, .. } = leaf.value(i) {
                            if txn == meta.txn {
                                self.read_value(value)?;
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Load a meta's free list: the free extents, and the held ones.
    fn load_freelist(&self, meta: &Meta) -> Result<FreeList, EngineError> {
        let mut loaded = LoadedFreeList::default();
        if meta.freelist_pages == 0 {
            return Ok((loaded.free, loaded.held));
        }
        let buf = self.read_pages(meta.freelist_first, meta.freelist_pages)?;
        let mut map_pages = 0;
        for (i, page) in buf.chunks_exact(PAGE_SIZE).enumerate() {
            let id = meta.freelist_first + i as u64;
            let kind = if page[HEADER_KIND] == KIND_FREEMAP { KIND_FREEMAP } else { KIND_FREELIST };
            let count = check_page(page, id, kind).map_err(|r| self.corrupt(r))?;
            if get_u64(page, HEADER_TXN) != meta.txn {
                return Err(self.corrupt(format!("free-list page {id} is from another commit")));
            }
            let bad = |what: &str| self.corrupt(format!("free-list page {id} has {what}"));
            if kind == KIND_FREEMAP {
                // Runs of set bits are extents of free pages.
                let base = (map_pages * MAP_BITS_PER_PAGE) as u64;
                map_pages += 1;
                let bits = &page[PAGE_HEADER_BYTES..];
                let is_set = |bit: usize| bits[bit / 8] & (1 << (bit % 8)) != 0;
                let mut bit = 0;
                while bit < MAP_BITS_PER_PAGE {
                    if bits[bit / 8] == 0 && bit % 8 == 0 {
                        bit += 8;
                        continue;
                    }
                    if !is_set(bit) {
                        bit += 1;
                        continue;
                    }
                    let start = bit;
                    while bit < MAP_BITS_PER_PAGE && is_set(bit) {
                        bit += 1;
                    }
                    let (first, len) = (base + start as u64, (bit - start) as u64);
                    loaded.add(first, len, false, meta.page_count).map_err(|_| bad("a bad bit"))?;
                }
                continue;
            }
            if count > EXTENTS_PER_PAGE || map_pages > 0 {
                return Err(bad("a bad count or place"));
            }
            for e in 0..count {
                let at = PAGE_HEADER_BYTES + e * EXTENT_BYTES;
                let (first, len) = (get_u64(page, at), get_u64(page, at + 8));
                let is_held = len & EXTENT_HELD != 0;
                loaded
                    .add(first, len & !EXTENT_HELD, is_held, meta.page_count)
                    .map_err(|_| bad("a bad extent"))?;
            }
        }
        Ok((loaded.free, loaded.held))
    }

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

    // --- Page I/O -----------------------------------------------------------------------------

    /// Read `n` pages from `first`. A page past the end of the file is corrupt data (the file
    /// was cut short), not an I/O failure.
    fn read_pages(&self, first: PageId, n: u64) -> Result<Vec<u8>, EngineError> {
        let mut buf = vec![0u8; n as usize * PAGE_SIZE];
        match self.file.read_exact_at(&mut buf, first * PAGE_SIZE as u64) {
            Ok(()) => Ok(buf),
            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                Err(self.corrupt(format!("pages {first}..{} are past the end", first + n)))
            }
            Err(err) => Err(EngineError::io("reading pages")(err)),
        }
    }

    /// Read and check the node `ptr` names: CRC, page number, kind, and the transaction.
    fn read_node(&self, ptr: Ptr) -> Result<Node, EngineError> {
        let page = self.read_pages(ptr.id, 1)?;
        let node = Node::decode(&page, ptr.id).map_err(|reason| self.corrupt(reason))?;
        let txn = get_u64(&page, HEADER_TXN);
        if txn != ptr.txn {
            let id = ptr.id;
            return Err(self.corrupt(format!(
                "page {id} was written by transaction {txn}, its parent names {}",
                ptr.txn
            )));
        }
        Ok(node)
    }

    /// The node at `id`: dirty, cached, or read from disk (and then cached).
    fn node(&self, tree: &Tree, ptr: Ptr) -> Result<Arc<Node>, EngineError> {
        let id = ptr.id;
        if let Some(node) = tree.dirty.get(&id) {
            return Ok(Arc::clone(node));
        }
        if let Some(node) = self.cache().get(id) {
            return Ok(node);
        }
        if id < META_PAGES || id >= tree.page_count {
            return Err(self.corrupt(format!("a branch points at page {id}, outside the tree")));
        }
        let node = Arc::new(self.read_node(ptr)?);
        let budget = self.cache_bytes_max.saturating_sub(tree.dirty_bytes);
        self.cache().insert(id, Arc::clone(&node), budget);
        Ok(node)
    }

    fn read_value(&self, value: ValueRef<'_>) -> Result<Vec<u8>, EngineError> {
        let (first, len, txn) = match value {
            ValueRef::Inline(bytes) => return Ok(bytes.to_vec()),
            ValueRef::Overflow { first, len, txn } => (first, len, txn),
        };
        let buf = self.read_pages(first, overflow_pages(len))?;
        let mut out = Vec::with_capacity(len);
        for (i, page) in buf.chunks_exact(PAGE_SIZE).enumerate() {
            let id = first + i as u64;
            let count = check_page(page, id, KIND_OVERFLOW).map_err(|r| self.corrupt(r))?;
            let want = (len - out.len()).min(OVERFLOW_DATA_BYTES);
            if count != want || get_u64(page, HEADER_TXN) != txn {
                return Err(self.corrupt(format!("overflow page {id} is not the one named")));
            }
            out.extend_from_slice(&page[PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + count]);
        }
        Ok(out)
    }

    /// Write `value` to a fresh run of overflow pages; returns the run's first page.
    fn write_overflow(&self, tree: &mut Tree, value: &[u8]) -> Result<PageId, EngineError> {
        let n = overflow_pages(value.len());
        let first = tree.alloc(n);
        let mut buf = vec![0u8; n as usize * PAGE_SIZE];
        for (i, (page, chunk)) in
            buf.chunks_exact_mut(PAGE_SIZE).zip(value.chunks(OVERFLOW_DATA_BYTES)).enumerate()
        {
            page[PAGE_HEADER_BYTES..PAGE_HEADER_BYTES + chunk.len()].copy_from_slice(chunk);
            seal_page(page, KIND_OVERFLOW, chunk.len(), first + i as u64, tree.txn);
        }
        if let Err(err) = self.file.write_all_at(&buf, first * PAGE_SIZE as u64) {
            tree.release(first, n);
            return Err(EngineError::io("writing an overflow value")(err));
        }
        Ok(first)
    }

    /// Write every dirty node to its page and move it to the cache. On failure the nodes not
    /// yet written stay dirty.
    fn write_dirty(&self, tree: &mut Tree) -> Result<(), EngineError> {
        let mut ids: Vec<PageId> = tree.dirty.keys().copied().collect();
        ids.sort_unstable();
        let mut start = 0;
        while start < ids.len() {
            let mut end = start + 1;
            while end < ids.len()
                && ids[end] == ids[end - 1] + 1
                && end - start < WRITE_RUN_PAGES_MAX
            {
                end += 1;
            }
            let run = &ids[start..end];
            let mut buf = vec![0u8; run.len() * PAGE_SIZE];
            for (page, &id) in buf.chunks_exact_mut(PAGE_SIZE).zip(run) {
                tree.dirty[&id].encode_into(page, id, tree.txn);
            }
            self.file
                .write_all_at(&buf, run[0] * PAGE_SIZE as u64)
                .map_err(EngineError::io("writing pages"))?;
            let mut cache = self.cache();
            for &id in run {
                let node = tree.dirty.remove(&id).expect("dirty node");
                tree.dirty_bytes -= node.memory_bytes();
                let mut node = Arc::unwrap_or_clone(node);
                node.shrink();
                let budget = self.cache_bytes_max.saturating_sub(tree.dirty_bytes);
                cache.insert(id, Arc::new(node), budget);
            }
            start = end;
        }
        Ok(())
    }

    // --- Changing the tree --------------------------------------------------------------------

    /// Take the node at `id` (whose content is `node`) for changing: returns the page it will
    /// live at (itself if fresh, a new page otherwise) and an owned copy.
    fn writable(&self, tree: &mut Tree, id: PageId, node: Arc<Node>) -> (PageId, Node) {
        if let Some(dirty) = tree.dirty.remove(&id) {
            tree.dirty_bytes -= dirty.memory_bytes();
            drop(node);
            return (id, Arc::unwrap_or_clone(dirty));
        }
        if tree.fresh.contains(&id) {
            self.cache().remove(id);
            return (id, Arc::unwrap_or_clone(node));
        }
        let new = tree.alloc(1);
        self.forget(tree, id);
        (new, Arc::unwrap_or_clone(node))
    }

    /// Stop using the page `id`.
    fn forget(&self, tree: &mut Tree, id: PageId) {
        if let Some(dirty) = tree.dirty.remove(&id) {
            tree.dirty_bytes -= dirty.memory_bytes();
        }
        self.cache().remove(id);
        tree.release(id, 1);
    }

    fn put_dirty(&self, tree: &mut Tree, id: PageId, node: Node) {
        debug_assert!(tree.fresh.contains(&id), "dirty page {id} must be fresh");
        self.cache().remove(id);
        tree.dirty_bytes += node.memory_bytes();
        if let Some(old) = tree.dirty.insert(id, Arc::new(node)) {
            tree.dirty_bytes -= old.memory_bytes();
        }
    }

    /// Store a changed node at `id`, splitting it if it outgrew a page (see `split_off` for
    /// what `append` changes).
    fn store(&self, tree: &mut Tree, id: PageId, mut node: Node, append: bool) -> Change {
        if node.body_bytes() <= BODY_BYTES {
            self.put_dirty(tree, id, node);
            return Change::Same(id);
        }
        let (separator, right) = match &mut node {
            Node::Leaf(leaf) => {
                let right = leaf.split_off(append);
                (right.key(0).to_vec(), Node::Leaf(right))
            }
            Node::Branch(branch) => {
                let (promoted, right) = branch.split_off(append);
                (promoted, Node::Branch(right))
            }
        };
        debug_assert!(node.body_bytes() <= BODY_BYTES && right.body_bytes() <= BODY_BYTES);
        let right_id = tree.alloc(1);
        self.put_dirty(tree, id, node);
        self.put_dirty(tree, right_id, right);
        Change::Split(id, separator, right_id)
    }

    /// Insert `cell` (for `key`) below the node `ptr` names.
    fn insert(
        &self,
        tree: &mut Tree,
        ptr: Ptr,
        key: &[u8],
        cell: &[u8],
        depth: usize,
    ) -> Result<(Change, Option<Displaced>), EngineError> {
        if depth > DEPTH_MAX {
            return Err(self.corrupt("the tree is deeper than any real tree".into()));
        }
        let id = ptr.id;
        let node = self.node(tree, ptr)?;
        let step = match &*node {
            Node::Leaf(_) => None,
            Node::Branch(branch) => {
                let i = branch.child_index(key);
                Some((i, branch.children[i]))
            }
        };
        let Some((i, child)) = step else {
            let (id, mut node) = self.writable(tree, id, node);
            let Node::Leaf(leaf) = &mut node else { unreachable!("checked to be a leaf") };
            let mut append = false;
            let displaced = match leaf.search(key) {
                Ok(at) => {
                    let displaced = leaf.displaced(at);
                    leaf.replace_cell(at, cell);
                    Some(displaced)
                }
                Err(at) => {
                    append = at == leaf.len();
                    leaf.insert_cell(at, cell);
                    None
                }
            };
            return Ok((self.store(tree, id, node, append), displaced));
        };
        let (change, displaced) = self.insert(tree, child, key, cell, depth + 1)?;
        if matches!(change, Change::Same(new) if new == child.id) {
            // The child was changed in place, so this node is unchanged.
            return Ok((Change::Same(id), displaced));
        }
        let (id, mut node) = self.writable(tree, id, node);
        let Node::Branch(branch) = &mut node else { unreachable!("checked to be a branch") };
        // Pages changed in this transaction carry its id.
        let txn = tree.txn;
        let append = i == branch.keys.len() && matches!(change, Change::Split(..));
        match change {
            Change::Same(new) => branch.children[i] = Ptr { id: new, txn },
            Change::Split(left, separator, right) => {
                branch.children[i] = Ptr { id: left, txn };
                branch.keys.insert(i, separator);
                branch.children.insert(i + 1, Ptr { id: right, txn });
                branch.refresh();
            }
        }
        Ok((self.store(tree, id, node, append), displaced))
    }

    /// Remove `key` below the node at `id`. `None` when the key is absent (nothing changed);
    /// otherwise the page the node now lives at and what was removed.
    fn remove(
        &self,
        tree: &mut Tree,
        ptr: Ptr,
        key: &[u8],
        depth: usize,
    ) -> Result<Option<(PageId, Displaced)>, EngineError> {
        if depth > DEPTH_MAX {
            return Err(self.corrupt("the tree is deeper than any real tree".into()));
        }
        let id = ptr.id;
        let node = self.node(tree, ptr)?;
        let (i, child) = match &*node {
            Node::Leaf(leaf) => {
                let Ok(at) = leaf.search(key) else { return Ok(None) };
                let (id, mut node) = self.writable(tree, id, node);
                let Node::Leaf(leaf) = &mut node else { unreachable!("checked to be a leaf") };
                let displaced = leaf.displaced(at);
                leaf.remove_cell(at);
                self.put_dirty(tree, id, node);
                return Ok(Some((id, displaced)));
            }
            Node::Branch(branch) => {
                let i = branch.child_index(key);
                (i, branch.children[i])
            }
        };
        let Some((new_child, displaced)) = self.remove(tree, child, key, depth + 1)? else {
            return Ok(None);
        };
        let small = tree.dirty.get(&new_child).is_some_and(|n| n.body_bytes() < MERGE_BELOW_BYTES);
        if new_child == child.id && !small {
            return Ok(Some((id, displaced)));
        }
        let (id, mut node) = self.writable(tree, id, node);
        let Node::Branch(branch) = &mut node else { unreachable!("checked to be a branch") };
        branch.children[i] = Ptr { id: new_child, txn: tree.txn };
        if small {
            self.merge_child(tree, branch, i);
        }
        self.put_dirty(tree, id, node);
        Ok(Some((id, displaced)))
    }

    /// Merge the small child `i` of `branch` with a neighbour if both fit in one page. A
    /// neighbour that cannot be read leaves the child as it is (the tree stays correct, only
    /// less full).
    fn merge_child(&self, tree: &mut Tree, branch: &mut Branch, i: usize) {
        if branch.children.len() < 2 {
            return;
        }
        let left_index = if i + 1 < branch.children.len() { i } else { i - 1 };
        let (left_ptr, right_ptr) = (branch.children[left_index], branch.children[left_index + 1]);
        let (Ok(left), Ok(right)) = (self.node(tree, left_ptr), self.node(tree, right_ptr)) else {
            return;
        };
        let separator = &branch.keys[left_index];
        let merged_bytes = match (&*left, &*right) {
            (Node::Leaf(l), Node::Leaf(r)) => l.body_bytes() + r.body_bytes(),
            (Node::Branch(l), Node::Branch(r)) => {
                l.body_bytes() + r.body_bytes() - BRANCH_FIRST_CHILD_BYTES
                    + BRANCH_CELL_OVERHEAD
                    + separator.len()
            }
            _ => return,
        };
        if merged_bytes > BODY_BYTES {
            return;
        }
        let (merged_id, mut merged) = self.writable(tree, left_ptr.id, left);
        match (&mut merged, &*right) {
            (Node::Leaf(l), Node::Leaf(r)) => l.append(r),
            (Node::Branch(l), Node::Branch(r)) => {
                l.keys.push(separator.clone());
                l.keys.extend(r.keys.iter().cloned());
                l.children.extend_from_slice(&r.children);
                l.refresh();
            }
            _ => unreachable!("kinds checked above"),
        }
        drop(right);
        self.forget(tree, right_ptr.id);
        self.put_dirty(tree, merged_id, merged);
        branch.keys.remove(left_index);
        branch.children.remove(left_index + 1);
        branch.children[left_index] = Ptr { id: merged_id, txn: tree.txn };
        branch.refresh();
    }

    /// Shorten the tree while its root is an empty leaf or a branch with one child.
    fn collapse_root(&self, tree: &mut Tree) -> Result<(), EngineError> {
        while tree.root.id != 0 {
            let node = self.node(tree, tree.root)?;
            let next = match &*node {
                Node::Leaf(leaf) if leaf.len() == 0 => Ptr::default(),
                Node::Branch(branch) if branch.keys.is_empty() => branch.children[0],
                _ => return Ok(()),
            };
            let old = tree.root.id;
            self.forget(tree, old);
            tree.root = next;
        }
        Ok(())
    }

    /// Write dirty pages early when they outgrow half the cache budget.
    fn spill_if_needed(&self, tree: &mut Tree) -> Result<(), EngineError> {
        if tree.dirty_bytes > self.cache_bytes_max / 2 {
            tree.spilled = true;
            if let Err(err) = self.write_dirty(tree) {
                return self.fail(err);
            }
        }
        Ok(())
    }

    // --- Commit -------------------------------------------------------------------------------

    /// Make every write so far durable. See the module documentation for the protocol.
    fn commit(&self) -> Result<(), EngineError> {
        self.check_failed()?;
        let target = {
            let tree = self.read_tree();
            if tree.changed {
                tree.txn
            } else {
                tree.txn - 1
            }
        };
        // One caller at a time commits; the others wait until a commit covers their target.
        // Whoever finds no commit running starts the next one, and it carries every write
        // made while the previous one was on disk: the lock is held only to look and to
        // hand over, never across the I/O, so a caller that just committed cannot keep the
        // others out.
        let mut state = self.commit_state();
        loop {
            if state.durable_txn >= target {
                return Ok(());
            }
            self.check_failed()?;
            if !state.committing {
                break;
            }
            state = self.commit_done.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.committing = true;
        drop(state);
        let committed = self.commit_open_txn();
        let mut state = self.commit_state();
        state.committing = false;
        if let Ok(Some(txn)) = committed {
            state.durable_txn = txn;
        }
        self.commit_done.notify_all();
        // The open transaction at the freeze held every write of the target, or had no
        // changes because earlier commits (all finished: one runs at a time) held them.
        committed.map(|_| ())
    }

    fn commit_state(&self) -> MutexGuard<'_, CommitState> {
        self.commit_state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Commit the open transaction, if it changed anything; returns its id once durable.
    fn commit_open_txn(&self) -> Result<Option<u64>, EngineError> {
        let frozen = {
            let mut tree = self.write_tree();
            match self.freeze(&mut tree) {
                Ok(Some(frozen)) => frozen,
                Ok(None) => return Ok(None),
                Err(err) => return self.fail(err),
            }
        };
        if let Err(err) = self.write_meta(&frozen.meta) {
            return self.fail(err);
        }
        let mut tree = self.write_tree();
        // The meta just written replaced the one whose tree reached the held pages.
        for (first, n) in std::mem::replace(&mut tree.held, frozen.released) {
            tree.free.insert(first, n);
        }
        tree.held_pages = std::mem::take(&mut tree.releasing_pages);
        Ok(Some(frozen.meta.txn))
    }

    /// Move the dirty pages into one free hole that holds them all, so the commit writes them
    /// with one `pwrite` instead of one per scattered page (which a disk pays for at the
    /// `fdatasync`). Safe because no page on disk names a page that was never written: every
    /// parent of a dirty page is dirty too, unless the transaction wrote pages early, and then
    /// nothing moves. Without a hole big enough nothing moves either, so the file never grows
    /// for this.
    fn pack_dirty(&self, tree: &mut Tree) {
        let mut ids: Vec<PageId> = tree.dirty.keys().copied().collect();
        ids.sort_unstable();
        let scattered = ids.windows(2).any(|w| w[1] != w[0] + 1);
        if tree.spilled || !scattered {
            return;
        }
        let Some(first) = tree.free.take(ids.len() as u64) else { return };
        let moved: HashMap<PageId, PageId, PageIdBuild> =
            ids.iter().enumerate().map(|(i, &id)| (id, first + i as u64)).collect();
        let mut nodes = Vec::with_capacity(ids.len());
        for &id in &ids {
            let node = tree.dirty.remove(&id).expect("a dirty page");
            tree.dirty_bytes -= node.memory_bytes();
            nodes.push((moved[&id], node));
            tree.release(id, 1);
        }
        let mut cache = self.cache();
        for (id, mut node) in nodes {
            if let Node::Branch(branch) = Arc::make_mut(&mut node) {
                for child in &mut branch.children {
                    if let Some(&to) = moved.get(&child.id) {
                        child.id = to;
                    }
                }
            }
            cache.remove(id);
            tree.fresh.insert(id);
            tree.dirty_bytes += node.memory_bytes();
            tree.dirty.insert(id, node);
        }
        if let Some(&to) = moved.get(&tree.root.id) {
            tree.root.id = to;
        }
    }

    /// Under the write lock: write the open transaction's pages and free list, and close it.
    fn freeze(&self, tree: &mut Tree) -> Result<Option<Frozen>, EngineError> {
        if !tree.changed {
            return Ok(None);
        }
        self.pack_dirty(tree);
        self.write_dirty(tree)?;
        let mut released = std::mem::take(&mut tree.pending);
        if tree.freelist_run.1 > 0 {
            released.push(tree.freelist_run);
        }
        let (run_first, run_pages) = self.write_freelist(tree, &released)?;
        let meta = Meta {
            txn: tree.txn,
            root: tree.root,
            page_count: tree.page_count,
            freelist_first: run_first,
            freelist_pages: run_pages,
            entries: tree.entries,
            live_bytes: tree.live_bytes,
        };
        tree.freelist_run = (run_first, run_pages);
        tree.txn += 1;
        tree.fresh.clear();
        tree.spilled = false;
        tree.changed = false;
        tree.releasing_pages = released.iter().map(|e| e.1).sum();
        tree.pending_pages = 0;
        Ok(Some(Frozen { meta, released }))
    }

    /// Write the free list of the transaction being frozen to a fresh run of pages, after
    /// `released` (the extents its commit releases) was taken; returns the run.
    fn write_freelist(
        &self,
        tree: &mut Tree,
        released: &[(PageId, u64)],
    ) -> Result<(PageId, u64), EngineError> {
        // The persisted free list holds what is free once this commit is durable (the free
        // pages and the held ones), and, marked held, what this commit releases (the previous
        // meta's tree still reaches it). The free part is written as extents or, when that
        // takes more pages, as a bitmap of the file's pages so far: a fragmented free list
        // costs at most a bit per page. The run is taken from what is free now: taking can
        // only join or keep extents, so the counts before taking bound the pages needed, and
        // the pages it takes past the end of the file are not free, so the bitmap need not
        // cover them.
        let free_extents_max = tree.free.extents() + tree.held.len();
        let covered = tree.page_count as usize;
        let list_pages = (free_extents_max + released.len()).div_ceil(EXTENTS_PER_PAGE);
        let held_pages = released.len().div_ceil(EXTENTS_PER_PAGE);
        let map_pages = covered.div_ceil(MAP_BITS_PER_PAGE);
        let use_map = free_extents_max > 0 && held_pages + map_pages < list_pages;
        let (extent_pages, map_pages) =
            if use_map { (held_pages, map_pages) } else { (list_pages, 0) };
        let run_pages = (extent_pages + map_pages) as u64;
        let run_first = if run_pages > 0 { tree.alloc(run_pages) } else { 0 };
        // Free and held extents are disjoint; the reader joins neighbours again.
        let persisted = || tree.free.iter().chain(tree.held.iter().copied());
        let mut extents: Vec<(PageId, u64)> =
            released.iter().map(|&(first, n)| (first, n | EXTENT_HELD)).collect();
        if !use_map {
            extents.extend(persisted());
        }
        assert!(extents.len() <= extent_pages * EXTENTS_PER_PAGE, "free list outgrew its run");
        if run_pages > 0 {
            let mut buf = vec![0u8; run_pages as usize * PAGE_SIZE];
            let (list, map) = buf.split_at_mut(extent_pages * PAGE_SIZE);
            let mut extents = extents.iter();
            for (i, page) in list.chunks_exact_mut(PAGE_SIZE).enumerate() {
                let mut count = 0;
                for &(first, len) in extents.by_ref().take(EXTENTS_PER_PAGE) {
                    let at = PAGE_HEADER_BYTES + count * EXTENT_BYTES;
                    put_u64(page, at, first);
                    put_u64(page, at + 8, len);
                    count += 1;
                }
                seal_page(page, KIND_FREELIST, count, run_first + i as u64, tree.txn);
            }
            if use_map {
                for (first, n) in persisted() {
                    let end = (first + n) as usize;
                    assert!(end <= covered, "free pages up to {end} past the map's {covered}");
                    set_map_bits(map, first as usize, end);
                }
                for (j, page) in map.chunks_exact_mut(PAGE_SIZE).enumerate() {
                    let id = run_first + (extent_pages + j) as u64;
                    seal_page(page, KIND_FREEMAP, 0, id, tree.txn);
                }
            }
            self.file
                .write_all_at(&buf, run_first * PAGE_SIZE as u64)
                .map_err(EngineError::io("writing the free list"))?;
        }
        Ok((run_first, run_pages))
    }

    /// Outside the tree lock: write the meta after the pages it names, and make both durable
    /// with one `fdatasync`. A crash before it returns may leave the meta without some pages;
    /// open finds that out ([`Shared::verify_commit`]) and uses the other meta.
    fn write_meta(&self, meta: &Meta) -> Result<(), EngineError> {
        let slot = meta.txn % META_PAGES;
        self.file
            .write_all_at(&meta.encode(slot), slot * PAGE_SIZE as u64)
            .map_err(EngineError::io("writing the meta page"))?;
        self.file.sync_data().map_err(EngineError::io("syncing a commit"))
    }

    // --- Scans --------------------------------------------------------------------------------

    /// Copy up to a batch of entries under `prefix`, from `start` on (`start` itself included
    /// or not). Returns whether the scan reached the end of the prefix.
    fn scan_batch(
        &self,
        start: &[u8],
        include_start: bool,
        prefix: &[u8],
        out: &mut Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<bool, EngineError> {
        let tree = self.read_tree();
        if tree.root.id == 0 {
            return Ok(true);
        }
        let mut cursor = ScanCursor { start, include_start, prefix, out, bytes: 0 };
        let step = self.scan_node(&tree, tree.root, &mut cursor, 0)?;
        Ok(!matches!(step, ScanStep::Full))
    }

    fn scan_node(
        &self,
        tree: &Tree,
        ptr: Ptr,
        cursor: &mut ScanCursor<'_>,
        depth: usize,
    ) -> Result<ScanStep, EngineError> {
        if depth > DEPTH_MAX {
            return Err(self.corrupt("the tree is deeper than any real tree".into()));
        }
        let node = self.node(tree, ptr)?;
        match &*node {
            Node::Leaf(leaf) => {
                let first = match leaf.search(cursor.start) {
                    Ok(i) if !cursor.include_start => i + 1,
                    Ok(i) | Err(i) => i,
                };
                for i in first..leaf.len() {
                    let key = leaf.key(i);
                    if !key.starts_with(cursor.prefix) {
                        return Ok(ScanStep::End);
                    }
                    let value = self.read_value(leaf.value(i))?;
                    cursor.bytes += key.len() + value.len();
                    cursor.out.push((key.to_vec(), value));
                    if cursor.out.len() >= SCAN_BATCH_ENTRIES || cursor.bytes >= SCAN_BATCH_BYTES {
                        return Ok(ScanStep::Full);
                    }
                }
                Ok(ScanStep::More)
            }
            Node::Branch(branch) => {
                let first = branch.child_index(cursor.start);
                for &child in &branch.children[first..] {
                    match self.scan_node(tree, child, cursor, depth + 1)? {
                        ScanStep::More => {}
                        done => return Ok(done),
                    }
                }
                Ok(ScanStep::More)
            }
        }
    }

    // --- Testing ------------------------------------------------------------------------------

    /// Walk the whole tree and check its invariants: keys ordered within and across pages and
    /// bounded by their separators, leaves all at one depth, every page used once, no used page
    /// on the free list, and every page of the file either used or free. Returns the shape.
    fn for_testing_check(&self) -> Result<TreeShape, String> {
        // Hold the commit state with no commit running, so none starts during the walk.
        let mut _no_commit = self.commit_state();
        while _no_commit.committing {
            _no_commit = self.commit_done.wait(_no_commit).unwrap_or_else(|p| p.into_inner());
        }
        let tree = self.read_tree();
        let mut used: HashSet<PageId> = HashSet::new();
        let mut shape = TreeShape { page_count: tree.page_count, ..TreeShape::default() };
        let mut leaf_depth = None;
        let mut entries = 0;
        let mut live_bytes = 0;
        let mut stack = vec![(tree.root, None::<Vec<u8>>, None::<Vec<u8>>, 1usize)];
        if tree.root.id == 0 {
            stack.clear();
        }
        let claim = |id: PageId, used: &mut HashSet<PageId>| -> Result<(), String> {
            if id < META_PAGES || id >= tree.page_count || !used.insert(id) {
                return Err(format!("page {id} is out of range or used twice"));
            }
            Ok(())
        };
        while let Some((ptr, low, high, depth)) = stack.pop() {
            let id = ptr.id;
            claim(id, &mut used)?;
            if ptr.txn > tree.txn {
                return Err(format!("page {id} is named with a future transaction"));
            }
            let node = self.node(&tree, ptr).map_err(|e| e.to_string())?;
            let in_bounds = |key: &[u8]| {
                low.as_deref().is_none_or(|low| key >= low)
                    && high.as_deref().is_none_or(|high| key < high)
            };
            match &*node {
                Node::Leaf(leaf) => {
                    shape.leaf_pages += 1;
                    if *leaf_depth.get_or_insert(depth) != depth {
                        return Err(format!("leaf {id} at depth {depth}"));
                    }
                    if leaf.len() == 0 {
                        return Err(format!("leaf {id} is empty"));
                    }
                    let head = &leaf.key(0)[..leaf.common];
                    let stale = (0..leaf.len()).any(|i| {
                        !leaf.key(i).starts_with(head)
                            || leaf.prefixes[i] != key_prefix(&leaf.key(i)[leaf.common..])
                    });
                    if stale || leaf.prefixes.len() != leaf.len() {
                        return Err(format!("leaf {id} has stale key prefixes"));
                    }
                    for i in 0..leaf.len() {
                        let key = leaf.key(i);
                        if !in_bounds(key) || (i > 0 && leaf.key(i - 1) >= key) {
                            return Err(format!("leaf {id} key {i} out of order"));
                        }
                        entries += 1;
                        let value_len = match leaf.value(i) {
                            ValueRef::Inline(value) => value.len(),
                            ValueRef::Overflow { first, len, .. } => {
                                for page in first..first + overflow_pages(len) {
                                    claim(page, &mut used)?;
                                    shape.overflow_pages += 1;
                                }
                                len
                            }
                        };
                        live_bytes += (key.len() + value_len) as u64;
                    }
                }
                Node::Branch(branch) => {
                    shape.branch_pages += 1;
                    let head = branch.keys.first().map_or(&[][..], |k| &k[..branch.common]);
                    let stale = branch.keys.iter().any(|k| !k.starts_with(head))
                        || branch
                            .keys
                            .iter()
                            .map(|k| key_prefix(&k[branch.common..]))
                            .ne(branch.prefixes.iter().copied());
                    if stale {
                        return Err(format!("branch {id} has stale key prefixes"));
                    }
                    if branch.keys.iter().any(|k| !in_bounds(k)) {
                        return Err(format!("branch {id} has a key out of bounds"));
                    }
                    for (c, &child) in branch.children.iter().enumerate() {
                        let low =
                            if c == 0 { low.clone() } else { Some(branch.keys[c - 1].clone()) };
                        let high = branch.keys.get(c).cloned().or_else(|| high.clone());
                        stack.push((child, low, high, depth + 1));
                    }
                }
            }
        }
        shape.depth = leaf_depth.unwrap_or(0);
        if entries != tree.entries || live_bytes != tree.live_bytes {
            return Err(format!(
                "counters say {} entries and {} bytes; the tree holds {entries} and {live_bytes}",
                tree.entries, tree.live_bytes
            ));
        }
        let mut free_extents: Vec<(PageId, u64)> = tree.free.iter().collect();
        free_extents.extend(tree.pending.iter().copied());
        free_extents.extend(tree.held.iter().copied());
        free_extents.push(tree.freelist_run);
        for (first, n) in free_extents {
            for id in first..first + n {
                claim(id, &mut used)?;
                shape.free_pages += 1;
            }
        }
        let accounted = used.len() as u64 + META_PAGES;
        if accounted != tree.page_count {
            return Err(format!("{accounted} pages accounted for of {}", tree.page_count));
        }
        Ok(shape)
    }
}

/// The paged copy-on-write B+tree engine. See the module documentation.
///
/// A background thread commits on its own every [`EngineOptions::flush_interval_ms`] when
/// there are writes, so unsynced writes are lost in a crash only if they are younger than that.
/// Dropping the engine stops the thread and releases the directory lock; it does not commit.
pub struct BtreeEngine {
    shared: Arc<Shared>,
    committer: Option<Committer>,
}

/// The background commit thread and the flag that stops it.
struct Committer {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: JoinHandle<()>,
}

impl BtreeEngine {
    /// Open (or create) the btree in `dir`, taking an exclusive lock on the directory: a
    /// second opener gets [`EngineError::Locked`] and nothing is touched.
    pub fn open(dir: &Path, options: &EngineOptions) -> Result<BtreeEngine, EngineError> {
        let shared = Arc::new(Shared::open(dir, options)?);
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let interval = Duration::from_millis(options.flush_interval_ms.max(1));
        let thread = {
            let (shared, stop) = (Arc::clone(&shared), Arc::clone(&stop));
            std::thread::Builder::new()
                .name("btree-commit".into())
                .spawn(move || commit_periodically(&shared, &stop, interval))
                .map_err(EngineError::io("starting the commit thread"))?
        };
        Ok(BtreeEngine { shared, committer: Some(Committer { stop, thread }) })
    }

    /// Walk the whole tree and check its invariants: keys ordered within and across pages and
    /// bounded by their separators, leaves all at one depth, every page used once, no used
    /// page on the free list, and every page of the file either used or free. Returns the
    /// shape.
    pub fn for_testing_check(&self) -> Result<TreeShape, String> {
        self.shared.for_testing_check()
    }
}

/// The commit thread: every `interval`, commit if anything changed, until told to stop. A
/// failed commit marks the engine failed; later `put`s and `sync`s report it.
fn commit_periodically(shared: &Shared, stop: &(Mutex<bool>, Condvar), interval: Duration) {
    let (stopped, wake) = stop;
    loop {
        {
            // The flag is read under the mutex before waiting: a stop requested while this
            // thread was committing (or starting) is seen here, not lost until the timeout.
            let guard = stopped.lock().unwrap_or_else(|p| p.into_inner());
            if *guard {
                return;
            }
            let (guard, _) = wake.wait_timeout(guard, interval).unwrap_or_else(|p| p.into_inner());
            if *guard {
                return;
            }
        }
        let changed = shared.read_tree().changed;
        if changed && shared.commit().is_err() {
            return;
        }
    }
}

impl Drop for BtreeEngine {
    fn drop(&mut self) {
        if let Some(committer) = self.committer.take() {
            *committer.stop.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
            committer.stop.1.notify_all();
            // A panic in the thread has already been reported; nothing more to do here.
            let _ = committer.thread.join();
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
        self.shared.put(key, value)
    }

    fn delete(&self, key: &[u8]) -> Result<(), EngineError> {
        self.shared.delete(key)
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
}

/// Create an empty btree file: both metas name an empty tree. The file is written under a
/// temporary name, synced, renamed into place, and the directory synced, so a crash leaves
/// either no file or a complete one.
fn create_file(dir: &Path, path: &Path) -> Result<(), EngineError> {
    let temporary = dir.join(format!("{FILE_NAME}.new"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)
        .map_err(EngineError::io("creating the btree file"))?;
    let meta = Meta {
        txn: 0,
        root: Ptr::default(),
        page_count: META_PAGES,
        freelist_first: 0,
        freelist_pages: 0,
        entries: 0,
        live_bytes: 0,
    };
    for slot in 0..META_PAGES {
        file.write_all_at(&meta.encode(slot), slot * PAGE_SIZE as u64)
            .map_err(EngineError::io("writing the first meta pages"))?;
    }
    file.sync_all().map_err(EngineError::io("syncing the new btree file"))?;
    fs::rename(&temporary, path).map_err(EngineError::io("naming the new btree file"))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(EngineError::io("syncing the data directory"))
}

/// The [`StorageEngine`] operations [`BtreeEngine`] hands to its shared state (`sync` is
/// [`Shared::commit`]).
impl Shared {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        let tree = self.read_tree();
        if tree.root.id == 0 {
            return Ok(None);
        }
        let (mut ptr, mut depth) = (tree.root, 0);
        loop {
            // Walk down through pages in memory under one cache lock; give it up only to read
            // a missing page from disk, then go on below that page.
            let outcome = descend_in_memory(&tree, &mut self.cache(), ptr, key, &mut depth);
            let done = match outcome {
                Descent::Missing(missing) => {
                    let node = self.node(&tree, missing)?;
                    depth += 1;
                    match descend_one(&node, key) {
                        Ok(child) => {
                            ptr = child;
                            continue;
                        }
                        Err(done) => done,
                    }
                }
                done => done,
            };
            return match done {
                Descent::Found(value) => Ok(Some(value)),
                Descent::Absent => Ok(None),
                Descent::Overflow { first, len, txn } => {
                    self.read_value(ValueRef::Overflow { first, len, txn }).map(Some)
                }
                Descent::TooDeep | Descent::Missing(_) => {
                    Err(self.corrupt("the tree is deeper than any real tree".into()))
                }
            };
        }
    }

    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        check_sizes(key, value)?;
        if key.len() > BTREE_KEY_BYTES_MAX {
            return Err(EngineError::TooLarge {
                what: "key",
                len: key.len(),
                max: BTREE_KEY_BYTES_MAX,
            });
        }
        self.check_failed()?;
        let mut tree = self.write_tree();
        let tree = &mut *tree;
        let (cell, overflow) = if key.len() + value.len() <= INLINE_BYTES_MAX {
            (leaf_cell(key, ValueRef::Inline(value)), None)
        } else {
            let first = self.write_overflow(tree, value)?;
            let overflow = ValueRef::Overflow { first, len: value.len(), txn: tree.txn };
            let cell = leaf_cell(key, overflow);
            (cell, Some((first, overflow_pages(value.len()))))
        };
        let txn = tree.txn;
        let result = if tree.root.id == 0 {
            let id = tree.alloc(1);
            let mut leaf = Leaf::default();
            leaf.insert_cell(0, &cell);
            self.put_dirty(tree, id, Node::Leaf(leaf));
            tree.root = Ptr { id, txn };
            Ok(None)
        } else {
            self.insert(tree, tree.root, key, &cell, 0).map(|(change, displaced)| {
                match change {
                    Change::Same(id) => tree.root = Ptr { id, txn },
                    Change::Split(left, separator, right) => {
                        let id = tree.alloc(1);
                        let children = vec![Ptr { id: left, txn }, Ptr { id: right, txn }];
                        let root = Branch::new(vec![separator], children);
                        self.put_dirty(tree, id, Node::Branch(root));
                        tree.root = Ptr { id, txn };
                    }
                }
                displaced
            })
        };
        let displaced = match result {
            Ok(displaced) => displaced,
            Err(err) => {
                if let Some((first, n)) = overflow {
                    tree.release(first, n);
                }
                return Err(err);
            }
        };
        tree.changed = true;
        tree.live_bytes += (key.len() + value.len()) as u64;
        match displaced {
            Some(old) => {
                tree.live_bytes -= (key.len() + old.value_len) as u64;
                if let Some((first, n)) = old.overflow {
                    tree.release(first, n);
                }
            }
            None => tree.entries += 1,
        }
        self.spill_if_needed(tree)
    }

    fn delete(&self, key: &[u8]) -> Result<(), EngineError> {
        self.check_failed()?;
        let mut tree = self.write_tree();
        let tree = &mut *tree;
        if tree.root.id == 0 {
            return Ok(());
        }
        let Some((root, old)) = self.remove(tree, tree.root, key, 0)? else {
            return Ok(());
        };
        tree.root = Ptr { id: root, txn: tree.txn };
        tree.changed = true;
        tree.entries -= 1;
        tree.live_bytes -= (key.len() + old.value_len) as u64;
        if let Some((first, n)) = old.overflow {
            tree.release(first, n);
        }
        self.collapse_root(tree)?;
        self.spill_if_needed(tree)
    }

    #[allow(clippy::type_complexity)] // the visitor type of `StorageEngine::scan_prefix`
    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> ControlFlow<()>,
    ) -> Result<(), EngineError> {
        let mut start = prefix.to_vec();
        let mut include_start = true;
        let mut batch = Vec::new();
        loop {
            batch.clear();
            let ended = self.scan_batch(&start, include_start, prefix, &mut batch)?;
            for (key, value) in &batch {
                if visit(key, value).is_break() {
                    return Ok(());
                }
            }
            match batch.pop() {
                Some((key, _)) if !ended => {
                    start = key;
                    include_start = false;
                }
                _ => return Ok(()),
            }
        }
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
        }
    }
}
