//! # The page format
//!
//! Owns the bytes of the file: the layout of every page kind as a table, the constants derived
//! from it (each offset from the one before), the size relations checked at compile time, the
//! header every page is sealed with and checked by, and the meta page. Everything here is a
//! pure function over byte slices: it opens no file and knows nothing of the tree's state.
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

/// The size of every page in the file, in bytes.
pub const PAGE_SIZE: usize = 4096;

/// The page format written by this build; a page with another version fails its check.
pub const FORMAT_VERSION: u8 = 1;

// The common page header.
const HEADER_CRC: usize = 0;
pub(super) const HEADER_KIND: usize = HEADER_CRC + 4;
const HEADER_VERSION: usize = HEADER_KIND + 1;
const HEADER_COUNT: usize = HEADER_VERSION + 1;
const HEADER_PAGE: usize = HEADER_COUNT + 2;
pub(super) const HEADER_TXN: usize = HEADER_PAGE + 8;
/// Bytes of the header every page starts with.
pub const PAGE_HEADER_BYTES: usize = HEADER_TXN + 8;
/// Bytes of a page after its header.
pub(super) const BODY_BYTES: usize = PAGE_SIZE - PAGE_HEADER_BYTES;

const KIND_META: u8 = 1;
pub(super) const KIND_LEAF: u8 = 2;
pub(super) const KIND_BRANCH: u8 = 3;
pub(super) const KIND_OVERFLOW: u8 = 4;
pub(super) const KIND_FREELIST: u8 = 5;
pub(super) const KIND_FREEMAP: u8 = 6;

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
pub(super) const META_PAGES: u64 = 2;

// A leaf cell.
pub(super) const CELL_KEY_LEN: usize = 0;
pub(super) const CELL_FLAGS: usize = CELL_KEY_LEN + 2;
pub(super) const CELL_VALUE_LEN: usize = CELL_FLAGS + 1;
pub(super) const CELL_HEADER_BYTES: usize = CELL_VALUE_LEN + 4;
pub(super) const FLAG_INLINE: u8 = 0;
pub(super) const FLAG_OVERFLOW: u8 = 1;
pub(super) const OVERFLOW_REF_BYTES: usize = 8 + 8;

/// The longest key the btree accepts, in bytes. Longer keys are refused with
/// [`EngineError::TooLarge`](crate::EngineError::TooLarge): a page must hold several keys for
/// the tree to split.
pub const BTREE_KEY_BYTES_MAX: usize = 1024;
/// A value is stored inline when key and value together are at most this many bytes, and in
/// overflow pages otherwise.
pub const INLINE_BYTES_MAX: usize = BTREE_KEY_BYTES_MAX;
/// The largest leaf cell: a longest key with an overflow reference (an inline cell is at most
/// `CELL_HEADER_BYTES + INLINE_BYTES_MAX`, which is smaller).
pub(super) const CELL_BYTES_MAX: usize =
    CELL_HEADER_BYTES + BTREE_KEY_BYTES_MAX + OVERFLOW_REF_BYTES;

// A branch: the first child, then cells of key length, key, child.
pub(super) const BRANCH_FIRST_CHILD_BYTES: usize = 8 + 8;
pub(super) const BRANCH_CELL_OVERHEAD: usize = 2 + 8 + 8;

/// Value bytes per overflow page.
pub(super) const OVERFLOW_DATA_BYTES: usize = BODY_BYTES;
/// Bytes per free-list extent, and extents per free-list page.
pub(super) const EXTENT_BYTES: usize = 16;
pub(super) const EXTENTS_PER_PAGE: usize = BODY_BYTES / EXTENT_BYTES;
/// The top bit of an extent's length marks it held: free only after the next commit.
pub(super) const EXTENT_HELD: u64 = 1 << 63;
/// File pages one free-map page covers, a bit each.
pub(super) const MAP_BITS_PER_PAGE: usize = BODY_BYTES * 8;

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

pub(super) type PageId = u64;

/// A reference to a page: its number and the transaction that wrote it. A page read through a
/// reference must carry that transaction id, so a page that never reached the disk (or that a
/// lost commit overwrote) is told apart from the one the reference means.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Ptr {
    pub(super) id: PageId,
    pub(super) txn: u64,
}

pub(super) fn get_u16(buf: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([buf[at], buf[at + 1]])
}

pub(super) fn get_u32(buf: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(buf[at..at + 4].try_into().expect("4 bytes"))
}

pub(super) fn get_u64(buf: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(buf[at..at + 8].try_into().expect("8 bytes"))
}

pub(super) fn put_u16(buf: &mut [u8], at: usize, value: u16) {
    buf[at..at + 2].copy_from_slice(&value.to_le_bytes());
}

pub(super) fn put_u32(buf: &mut [u8], at: usize, value: u32) {
    buf[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

pub(super) fn put_u64(buf: &mut [u8], at: usize, value: u64) {
    buf[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

/// Fill in the header of `page` and its CRC. The body must already be in place.
pub(super) fn seal_page(page: &mut [u8], kind: u8, count: usize, id: PageId, txn: u64) {
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
pub(super) fn check_page(page: &[u8], id: PageId, kind: u8) -> Result<usize, String> {
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
pub(super) fn overflow_pages(len: usize) -> u64 {
    len.div_ceil(OVERFLOW_DATA_BYTES) as u64
}

/// A committed meta page, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Meta {
    pub(super) txn: u64,
    pub(super) root: Ptr,
    pub(super) page_count: u64,
    pub(super) freelist_first: PageId,
    pub(super) freelist_pages: u64,
    pub(super) entries: u64,
    pub(super) live_bytes: u64,
}

impl Meta {
    pub(super) fn encode(&self, slot: PageId) -> Vec<u8> {
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

    pub(super) fn decode(page: &[u8], slot: PageId) -> Result<Meta, String> {
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
