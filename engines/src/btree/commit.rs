//! # Commits
//!
//! A commit freezes the open transaction under the write lock (its dirty pages and its free
//! list written to fresh pages, the next transaction opened), then, outside the lock, writes the
//! meta page into slot `txn % 2` and makes everything durable with one `fdatasync`. One caller
//! commits at a time; the others wait until a commit covers their writes (group commit). A
//! background thread commits on its own when there are writes, and sleeps without a timer
//! when there are none.
//!
//! This room is the only writer of meta pages. What makes a commit safe to lose halfway is in
//! the engine's essay, and how open tells a whole commit from a torn one is in `recovery.rs`.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Duration;

use super::page::{Meta, PageId, META_PAGES, PAGE_SIZE};
use super::{EngineError, Node, PageIdBuild, Shared, Tree};

/// Where commits stand: the last durable transaction, and whether one is being committed.
#[derive(Debug, Default)]
pub(super) struct CommitState {
    pub(super) durable_txn: u64,
    pub(super) committing: bool,
}

/// A commit whose pages are written and whose meta and `fdatasync` are still to come.
struct Frozen {
    meta: Meta,
    /// Extents free once the commit is durable.
    released: Vec<(PageId, u64)>,
}

impl Shared {
    /// Make every write so far durable. See the engine's essay (`btree`) for the protocol.
    pub(super) fn commit(&self) -> Result<(), EngineError> {
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
            self.commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.commit_done.notify_all();
        // The open transaction at the freeze held every write of the target, or had no
        // changes because earlier commits (all finished: one runs at a time) held them.
        committed.map(|_| ())
    }

    pub(super) fn commit_state(&self) -> MutexGuard<'_, CommitState> {
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
}

/// The commit thread: `interval` after a write, commit if anything changed, until told to
/// stop. With nothing written since its last look it sleeps without a timer until the next
/// write ([`crate::idle`]), so an idle engine costs no wake-ups; a write is still committed
/// within about `interval`. A failed commit marks the engine failed; later `put`s and `sync`s
/// report it.
pub(super) fn commit_periodically(shared: &Shared, interval: Duration) {
    // The stop flag is read under its mutex before each wait: a stop requested while this
    // thread was committing (or starting) is seen at once, not lost until a timeout.
    // Zero, not a fresh read: writes made before this thread first ran must wake it too.
    let mut looked_at = 0;
    loop {
        if shared.committer.sleep_until(|| shared.writes.load(Ordering::SeqCst) != looked_at) {
            return;
        }
        if shared.committer.sleep(interval) {
            return;
        }
        // Writes after this are seen at the next look, even if this commit carries them.
        looked_at = shared.writes.load(Ordering::SeqCst);
        let changed = shared.read_tree().changed;
        if changed && shared.commit().is_err() {
            return;
        }
    }
}
