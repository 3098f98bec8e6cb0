//! # Nodes: leaf and branch pages, decoded
//!
//! The decoded form of leaf and branch pages, as the page cache and the dirty set hold them. A
//! leaf keeps its cells packed exactly as on disk (so encoding is a copy) with an offset per
//! cell; a branch keeps its keys and child references. Both keep each key's eight-byte prefix
//! after the bytes all their keys share, so a search compares small numbers and reads a whole
//! key only on a tie.
//!
//! A node is a value: it does no I/O and allocates no page numbers. Where a node lives, and
//! when it is written, is decided in `tree.rs` and `cache.rs`.

use std::ops::Range;

use super::page::{
    check_page, get_u16, get_u32, get_u64, overflow_pages, put_u16, put_u32, put_u64, seal_page,
    PageId, Ptr, BODY_BYTES, BRANCH_CELL_OVERHEAD, BRANCH_FIRST_CHILD_BYTES, CELL_BYTES_MAX,
    CELL_FLAGS, CELL_HEADER_BYTES, CELL_KEY_LEN, CELL_VALUE_LEN, FLAG_INLINE, FLAG_OVERFLOW,
    HEADER_KIND, KIND_BRANCH, KIND_LEAF, META_PAGES, OVERFLOW_REF_BYTES, PAGE_HEADER_BYTES,
};

/// Estimated bytes a cached node costs beyond its content (the cache slot, `Arc`, vectors).
const NODE_OVERHEAD_BYTES: u64 = 96;

/// A value as a leaf cell stores it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ValueRef<'a> {
    Inline(&'a [u8]),
    Overflow { first: PageId, len: usize, txn: u64 },
}

/// What a put or delete displaced, for the counters and the free list.
#[derive(Clone, Copy, Debug)]
pub(super) struct Displaced {
    pub(super) value_len: usize,
    pub(super) overflow: Option<(PageId, u64)>,
}

/// The first eight bytes of a key (after the bytes all keys of its node share), zero-padded,
/// as a big-endian number. If `key_prefix(a) < key_prefix(b)` then `a < b`, so a search
/// compares these (one small array, few cache lines) and reads the keys only on a tie. Taking
/// them after the node's common prefix keeps them telling keys apart when keys share long
/// beginnings (a partition number, a bucket name, zero-padded counters).
pub(super) fn key_prefix(key: &[u8]) -> u64 {
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
pub(super) struct Leaf {
    buf: Vec<u8>,
    offsets: Vec<u32>,
    pub(super) common: usize,
    pub(super) prefixes: Vec<u64>,
}

impl Leaf {
    pub(super) fn len(&self) -> usize {
        self.offsets.len()
    }

    pub(super) fn body_bytes(&self) -> usize {
        self.buf.len()
    }

    fn cell_range(&self, i: usize) -> Range<usize> {
        let start = self.offsets[i] as usize;
        let end = self.offsets.get(i + 1).map_or(self.buf.len(), |&o| o as usize);
        start..end
    }

    pub(super) fn key(&self, i: usize) -> &[u8] {
        let at = self.offsets[i] as usize;
        let key_len = get_u16(&self.buf, at + CELL_KEY_LEN) as usize;
        &self.buf[at + CELL_HEADER_BYTES..at + CELL_HEADER_BYTES + key_len]
    }

    pub(super) fn value(&self, i: usize) -> ValueRef<'_> {
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

    pub(super) fn displaced(&self, i: usize) -> Displaced {
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
    pub(super) fn search(&self, key: &[u8]) -> Result<usize, usize> {
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

    pub(super) fn insert_cell(&mut self, i: usize, cell: &[u8]) {
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

    pub(super) fn replace_cell(&mut self, i: usize, cell: &[u8]) {
        let range = self.cell_range(i);
        let old_len = range.len();
        self.reserve_for(cell.len().saturating_sub(old_len));
        self.buf.splice(range, cell.iter().copied());
        for offset in &mut self.offsets[i + 1..] {
            *offset = (*offset as usize + cell.len() - old_len) as u32;
        }
    }

    pub(super) fn remove_cell(&mut self, i: usize) {
        let range = self.cell_range(i);
        let removed = range.len() as u32;
        self.buf.drain(range);
        self.offsets.remove(i);
        self.prefixes.remove(i);
        for offset in &mut self.offsets[i..] {
            *offset -= removed;
        }
    }

    pub(super) fn append(&mut self, other: &Leaf) {
        let base = self.buf.len() as u32;
        self.buf.extend_from_slice(&other.buf);
        self.offsets.extend(other.offsets.iter().map(|o| o + base));
        self.refresh();
    }

    /// Split an over-full leaf into two parts that each fit in a page; returns the right one.
    /// After an append (keys arriving in order) the left part is left as full as it can be,
    /// otherwise the split is in the middle.
    pub(super) fn split_off(&mut self, append: bool) -> Leaf {
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
pub(super) fn leaf_cell(key: &[u8], value: ValueRef<'_>) -> Vec<u8> {
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
pub(super) struct Branch {
    pub(super) keys: Vec<Vec<u8>>,
    pub(super) children: Vec<Ptr>,
    pub(super) common: usize,
    pub(super) prefixes: Vec<u64>,
}

impl Branch {
    pub(super) fn new(keys: Vec<Vec<u8>>, children: Vec<Ptr>) -> Branch {
        let mut branch = Branch { keys, children, common: 0, prefixes: Vec::new() };
        branch.refresh();
        branch
    }

    /// Recompute the common prefix and the key prefixes after a change to `keys`.
    pub(super) fn refresh(&mut self) {
        debug_assert_eq!(self.keys.len() + 1, self.children.len(), "a child per key and one");
        self.common = match (self.keys.first(), self.keys.last()) {
            (Some(first), Some(last)) => common_prefix_len(first, last),
            _ => 0,
        };
        let common = self.common;
        self.prefixes.clear();
        self.prefixes.extend(self.keys.iter().map(|k| key_prefix(&k[common..])));
    }

    pub(super) fn body_bytes(&self) -> usize {
        BRANCH_FIRST_CHILD_BYTES
            + self.keys.iter().map(|k| BRANCH_CELL_OVERHEAD + k.len()).sum::<usize>()
    }

    /// The child whose range holds `key`: the number of keys `<= key`.
    pub(super) fn child_index(&self, key: &[u8]) -> usize {
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
    pub(super) fn split_off(&mut self, append: bool) -> (Vec<u8>, Branch) {
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
pub(super) enum Node {
    Leaf(Leaf),
    Branch(Branch),
}

impl Node {
    pub(super) fn body_bytes(&self) -> usize {
        match self {
            Node::Leaf(leaf) => leaf.body_bytes(),
            Node::Branch(branch) => branch.body_bytes(),
        }
    }

    /// Estimated memory this node holds.
    pub(super) fn memory_bytes(&self) -> u64 {
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

    pub(super) fn shrink(&mut self) {
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
    pub(super) fn encode_into(&self, page: &mut [u8], id: PageId, txn: u64) {
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

    pub(super) fn decode(page: &[u8], id: PageId) -> Result<Node, String> {
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
