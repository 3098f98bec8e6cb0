//! # Changing the tree: copy-on-write insert and remove, get, put, delete
//!
//! The first change to a committed page in a transaction copies it to a fresh page (and so
//! its parent, up to the root: path copying); a page the transaction made is changed in place.
//! A node that outgrows its page splits (as full as possible on the left when keys arrive in
//! order, in the middle otherwise); a node that shrinks under a quarter page after a delete is
//! merged with a neighbour when both fit in one page, and a root left with one child (or no
//! entries) is removed.
//!
//! Every operation here runs under the tree's write lock (`get` under the read lock) and
//! changes memory and the dirty set. It writes only to pages no committed meta names: a large
//! value's overflow run, and dirty pages written early when they outgrow half the cache
//! budget. It never writes a meta page.

use std::sync::Arc;

use super::node::{leaf_cell, Branch, Displaced, Leaf, Node, ValueRef};
use super::page::{
    overflow_pages, PageId, Ptr, BODY_BYTES, BRANCH_CELL_OVERHEAD, BRANCH_FIRST_CHILD_BYTES,
    BTREE_KEY_BYTES_MAX, INLINE_BYTES_MAX,
};
use super::{EngineError, PageCache, Shared, Tree};
use crate::check_sizes;

/// A node smaller than this (body bytes) after a delete is merged with a sibling if both fit in
/// one page.
const MERGE_BELOW_BYTES: usize = BODY_BYTES / 4;
/// Deeper than this the tree cannot be (it would need more pages than a file can have); a
/// deeper walk means a corrupt tree.
pub(super) const DEPTH_MAX: usize = 64;

/// The outcome of an insert below a node.
enum Change {
    /// The node now lives at this page.
    Same(PageId),
    /// The node split: left page, the first key of the right, right page.
    Split(PageId, Vec<u8>, PageId),
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

impl Shared {
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

    pub(super) fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
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

    pub(super) fn put(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
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

    pub(super) fn delete(&self, key: &[u8]) -> Result<(), EngineError> {
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
}
