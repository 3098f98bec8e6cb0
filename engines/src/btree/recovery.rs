//! # Open and recovery
//!
//! Open locks the data directory, creates an empty file if there is none (written under a
//! temporary name and renamed, so a crash leaves no file or a whole one), and picks the newest
//! meta page whose commit reads back: its free list loads and every page its commit wrote
//! checks out. A commit that fails this was never acknowledged, and the other meta, which it
//! never touched, names an intact tree. The engine's essay gives the argument.
//!
//! Recovery only reads: it never repairs or rewrites a page of an existing file.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::{Condvar, Mutex, RwLock};

use super::freelist::FreeList;
use super::node::ValueRef;
use super::page::{Meta, Ptr, META_PAGES, PAGE_SIZE};
use crate::data_dir::{lock_dir, sync_dir};

use super::{CommitState, EngineError, EngineOptions, Node, PageCache, Shared, Tree, FILE_NAME};

impl Shared {
    /// Open (or create) the btree in `dir`, taking the exclusive lock on the directory
    /// ([`lock_dir`]) before anything else.
    pub(super) fn open(dir: &Path, options: &EngineOptions) -> Result<Shared, EngineError> {
        let dir_lock = lock_dir(dir)?;
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
            commits: std::sync::atomic::AtomicU64::new(0),
            writes: std::sync::atomic::AtomicU64::new(0),
            committer: crate::idle::Background::default(),
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
    sync_dir(dir)
}
