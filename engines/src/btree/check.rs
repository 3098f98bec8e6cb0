//! # The invariant check
//!
//! A walk of the whole tree for tests ([`super::BtreeEngine::for_testing_check`]): keys ordered
//! within and across pages and bounded by their separators, leaves all at one depth, key
//! prefixes fresh, counters right, every page of the file used exactly once or free. It waits
//! for a running commit to finish and holds off the next one, and changes nothing.

use std::collections::HashSet;

use super::node::{key_prefix, ValueRef};
use super::page::{overflow_pages, PageId, META_PAGES};
use super::{Node, Shared};

/// The shape of a tree, as
/// [`BtreeEngine::for_testing_check`](super::BtreeEngine::for_testing_check) finds it.
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

impl Shared {
    /// Walk the whole tree and check its invariants: keys ordered within and across pages and
    /// bounded by their separators, leaves all at one depth, every page used once, no used page
    /// on the free list, and every page of the file either used or free. Returns the shape.
    pub(super) fn for_testing_check(&self) -> Result<TreeShape, String> {
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
