//! # The page cache and page I/O
//!
//! Clean decoded nodes live in a cache bounded in bytes and evicted by CLOCK (second chance);
//! dirty ones live in the open transaction's dirty set (`Tree::dirty`) until they are written.
//! This room owns the way between them and the file: [`Shared::node`] looks a page up in the
//! dirty set, then the cache, then reads it, checking it against the reference that named it
//! (CRC, page number, kind and transaction); [`Shared::write_dirty`] writes dirty nodes in
//! runs of consecutive pages and moves them to the cache. Overflow values are read and
//! written here too, never cached.
//!
//! It decides nothing about the tree: which pages change, and when a commit happens, is for
//! `tree.rs` and `commit.rs`. The meta pages are written by `commit.rs` alone.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use super::node::{Node, ValueRef};
use super::page::{
    check_page, get_u64, overflow_pages, seal_page, PageId, Ptr, HEADER_TXN, KIND_OVERFLOW,
    META_PAGES, OVERFLOW_DATA_BYTES, PAGE_HEADER_BYTES, PAGE_SIZE,
};
use super::{EngineError, Shared, Tree};

/// Pages written by one `pwrite` when dirty pages are consecutive.
const WRITE_RUN_PAGES_MAX: usize = 64;

/// A hasher for page numbers: one multiply, enough to spread sequential numbers.
#[derive(Default)]
pub(super) struct PageIdHasher(u64);

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

pub(super) type PageIdBuild = BuildHasherDefault<PageIdHasher>;

struct Slot {
    node: Arc<Node>,
    bytes: u64,
    referenced: bool,
}

/// Clean decoded nodes, bounded in bytes, evicted by CLOCK (second chance).
#[derive(Default)]
pub(super) struct PageCache {
    slots: HashMap<PageId, Slot, PageIdBuild>,
    /// The clock: page numbers in insertion order. May hold numbers no longer cached; they are
    /// skipped, and the queue is rebuilt when they pile up.
    clock: VecDeque<PageId>,
    pub(super) bytes: u64,
}

impl PageCache {
    pub(super) fn get_ref(&mut self, id: PageId) -> Option<&Node> {
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

    pub(super) fn remove(&mut self, id: PageId) {
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

impl Shared {
    /// Read `n` pages from `first`. A page past the end of the file is corrupt data (the file
    /// was cut short), not an I/O failure.
    pub(super) fn read_pages(&self, first: PageId, n: u64) -> Result<Vec<u8>, EngineError> {
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
    pub(super) fn read_node(&self, ptr: Ptr) -> Result<Node, EngineError> {
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
    pub(super) fn node(&self, tree: &Tree, ptr: Ptr) -> Result<Arc<Node>, EngineError> {
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

    pub(super) fn read_value(&self, value: ValueRef<'_>) -> Result<Vec<u8>, EngineError> {
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
    pub(super) fn write_overflow(
        &self,
        tree: &mut Tree,
        value: &[u8],
    ) -> Result<PageId, EngineError> {
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
    pub(super) fn write_dirty(&self, tree: &mut Tree) -> Result<(), EngineError> {
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
}
