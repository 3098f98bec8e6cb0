//! # Free pages
//!
//! A page the tree stops using is free at once if the open transaction made it (no committed
//! meta reaches it), and otherwise only once no meta on disk names a tree that reaches it: it
//! is *pending* until the open transaction's commit is durable, then *held* until the commit
//! after that is durable (see the crash-safety section of the engine's essay). Free pages are
//! kept as maximal extents and allocated best fit.
//!
//! Each commit persists its free list in a fresh run of pages: extents, or a bitmap of the
//! file's pages when that is smaller, with the held extents always listed. Open reads it back
//! and checks every extent against the file and the others.
//!
//! This room moves pages between free, pending and held; it does not decide when a commit
//! happens or which meta is current (`commit.rs`, `recovery.rs`).

use std::collections::BTreeMap;
use std::os::unix::fs::FileExt;

use super::page::{
    check_page, get_u64, put_u64, seal_page, Meta, PageId, EXTENTS_PER_PAGE, EXTENT_BYTES,
    EXTENT_HELD, HEADER_KIND, HEADER_TXN, KIND_FREELIST, KIND_FREEMAP, MAP_BITS_PER_PAGE,
    META_PAGES, PAGE_HEADER_BYTES, PAGE_SIZE,
};
use super::{EngineError, Shared, Tree};

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
pub(super) struct FreeSet {
    by_first: BTreeMap<PageId, u64>,
    by_len: std::collections::BTreeSet<(u64, PageId)>,
    pub(super) pages: u64,
}

impl FreeSet {
    fn extents(&self) -> usize {
        self.by_first.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (PageId, u64)> + '_ {
        self.by_first.iter().map(|(&first, &len)| (first, len))
    }

    fn remove_extent(&mut self, first: PageId) -> Option<u64> {
        let len = self.by_first.remove(&first)?;
        self.by_len.remove(&(len, first));
        Some(len)
    }

    /// Add `first..first + len`, joining the neighbouring extents.
    pub(super) fn insert(&mut self, mut first: PageId, mut len: u64) {
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
    pub(super) fn take(&mut self, n: u64) -> Option<PageId> {
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

impl Tree {
    /// Take `n` consecutive pages: the smallest free extent that fits, else the end of the
    /// file.
    pub(super) fn alloc(&mut self, n: u64) -> PageId {
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
    pub(super) fn release(&mut self, first: PageId, n: u64) {
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
pub(super) type FreeList = (BTreeMap<PageId, u64>, Vec<(PageId, u64)>);

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

impl Shared {
    /// Load a meta's free list: the free extents, and the held ones.
    pub(super) fn load_freelist(&self, meta: &Meta) -> Result<FreeList, EngineError> {
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

    /// Write the free list of the transaction being frozen to a fresh run of pages, after
    /// `released` (the extents its commit releases) was taken; returns the run.
    pub(super) fn write_freelist(
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
}
