//! # Prefix scans
//!
//! A scan walks the tree in key order from the prefix on and copies a batch of entries (up to
//! [`SCAN_BATCH_ENTRIES`] or about [`SCAN_BATCH_BYTES`]) under the shared lock, then lets the
//! lock go and calls the visitor on the batch, so a slow visitor never stalls writers. The next
//! batch starts after the last key seen; writes between batches may or may not be seen, as the
//! `StorageEngine` contract allows.
//!
//! Read only: a scan changes nothing but the page cache.

use std::ops::ControlFlow;

use super::page::Ptr;
use super::tree::DEPTH_MAX;
use super::{EngineError, Node, Shared, Tree};

/// A scan copies at most this many entries, or about this many bytes, per visit of the tree.
const SCAN_BATCH_ENTRIES: usize = 256;
const SCAN_BATCH_BYTES: usize = 1 << 20;

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

impl Shared {
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

    #[allow(clippy::type_complexity)] // the visitor type of `StorageEngine::scan_prefix`
    pub(super) fn scan_prefix(
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
}
