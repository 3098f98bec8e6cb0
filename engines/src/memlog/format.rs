//! # The bytes of the memory log
//!
//! Owns the on-disk layout of a segment file's header and of a record, the constants derived
//! from it (each offset from the one before), the size relations checked at compile time, and
//! the encoding and checked decoding of records. Pure functions over byte slices: nothing here
//! opens a file or knows where a record lives.
//!
//! ## Segment file layout
//!
//! | offset | size | field                                     |
//! |-------:|-----:|-------------------------------------------|
//! |      0 |    6 | magic `b"CWMLOG"`                         |
//! |      6 |    1 | format version ([`FORMAT_VERSION`])       |
//! |      7 |    1 | reserved, zero                            |
//! |      8 |    4 | segment id, u32 little-endian             |
//! |     12 |    4 | CRC32 of bytes 0..12                      |
//! |     16 |    … | records, back to back; zeros after the end |
//!
//! ## Record layout
//!
//! | offset   | size      | field                                   |
//! |---------:|----------:|-----------------------------------------|
//! |        0 |         4 | CRC32 of bytes 4..end                   |
//! |        4 |         1 | kind ([`RecordKind`], never zero)       |
//! |        5 |         2 | key length `k`, u16 little-endian       |
//! |        7 |         4 | value length `v`, u32 little-endian     |
//! |       11 |       `k` | key                                     |
//! |   11 + k |       `v` | value                                   |

use crate::{KEY_BYTES_MAX, VALUE_BYTES_MAX};

/// The version byte written into every segment header. Version 2 added
/// [`RecordKind::Append`]; version 1 segments (which never hold one) are read as they are.
/// Opening a segment with a version this build does not know (one written by a later
/// version) fails with [`EngineError::Corrupt`](crate::EngineError::Corrupt), touching
/// nothing, rather than guessing.
pub const FORMAT_VERSION: u8 = 2;

/// The segment format versions this build reads.
pub const READABLE_VERSIONS: [u8; 2] = [1, FORMAT_VERSION];

const SEGMENT_MAGIC: &[u8; 6] = b"CWMLOG";
const SEGMENT_MAGIC_AT: usize = 0;
const SEGMENT_VERSION_AT: usize = SEGMENT_MAGIC_AT + SEGMENT_MAGIC.len();
const SEGMENT_RESERVED_AT: usize = SEGMENT_VERSION_AT + 1;
const SEGMENT_ID_AT: usize = SEGMENT_RESERVED_AT + 1;
const SEGMENT_CRC_AT: usize = SEGMENT_ID_AT + 4;
/// Bytes before the first record of a segment.
pub const SEGMENT_HEADER_BYTES: usize = SEGMENT_CRC_AT + 4;

const RECORD_CRC_AT: usize = 0;
const RECORD_KIND_AT: usize = RECORD_CRC_AT + 4;
const RECORD_KEY_LEN_AT: usize = RECORD_KIND_AT + 1;
const RECORD_VALUE_LEN_AT: usize = RECORD_KEY_LEN_AT + 2;
/// Bytes of a record before its key.
pub const RECORD_HEADER_BYTES: usize = RECORD_VALUE_LEN_AT + 4;
/// Bytes of the seal record that ends every sealed segment (it has no key and no value).
pub const SEAL_RECORD_BYTES: usize = RECORD_HEADER_BYTES;

const _: () = assert!(SEGMENT_HEADER_BYTES == 16, "segment header is 16 bytes");
const _: () = assert!(RECORD_HEADER_BYTES == 11, "record header is 11 bytes");
const _: () = assert!(KEY_BYTES_MAX <= u16::MAX as usize, "key length is a u16");
const _: () = assert!(VALUE_BYTES_MAX <= u32::MAX as usize, "value length is a u32");
// Offsets inside a segment are u32: the largest record plus a header and a seal must fit.
const _: () = assert!(
    (SEGMENT_HEADER_BYTES
        + RECORD_HEADER_BYTES
        + KEY_BYTES_MAX
        + VALUE_BYTES_MAX
        + SEAL_RECORD_BYTES) as u64
        <= SEGMENT_BYTES_LIMIT,
    "the largest record fits in a segment"
);

/// The hard upper bound on a segment's size: offsets are u32.
pub const SEGMENT_BYTES_LIMIT: u64 = u32::MAX as u64;

/// What a record means. The memory log itself only interprets [`RecordKind::Seal`]; the other
/// kinds are for the engines built on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum RecordKind {
    /// A key and its value.
    Put = 1,
    /// A key was deleted; the value is empty.
    Tombstone = 2,
    /// The last record of a sealed segment; no key, no value.
    Seal = 3,
    /// The end marker of a file written in record format (a snapshot); the value is engine
    /// defined.
    End = 4,
    /// A part appended to a key's value (`StorageEngine::append`); the value is the part.
    Append = 5,
}

impl RecordKind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Put),
            2 => Some(Self::Tombstone),
            3 => Some(Self::Seal),
            4 => Some(Self::End),
            5 => Some(Self::Append),
            _ => None,
        }
    }
}

/// A record as read back, borrowing its bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// What the record means.
    pub kind: RecordKind,
    /// The key (empty for seal records).
    pub key: &'a [u8],
    /// The value (empty for tombstones and seals).
    pub value: &'a [u8],
}

/// The bytes a record with this key and value length takes in a segment.
pub fn record_bytes(key_len: usize, value_len: usize) -> u64 {
    (RECORD_HEADER_BYTES + key_len + value_len) as u64
}

/// Append the encoding of one record to `out`.
pub fn encode_record(kind: RecordKind, key: &[u8], value: &[u8], out: &mut Vec<u8>) {
    debug_assert!(key.len() <= KEY_BYTES_MAX && value.len() <= VALUE_BYTES_MAX);
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    out.push(kind as u8);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(&(value.len() as u32).to_le_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(value);
    let crc = crc32fast::hash(&out[start + RECORD_KIND_AT..]);
    out[start..start + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Decode the record at the start of `bytes`, checking its lengths and CRC. Returns the
/// record and its length in bytes, or `None` when the bytes are not a whole valid record
/// (which is how the end of a log is found).
pub fn decode_record(bytes: &[u8]) -> Option<(Record<'_>, usize)> {
    let header = bytes.get(..RECORD_HEADER_BYTES)?;
    let kind = RecordKind::from_byte(header[RECORD_KIND_AT])?;
    let key_len = u16::from_le_bytes([header[RECORD_KEY_LEN_AT], header[RECORD_KEY_LEN_AT + 1]]);
    let value_len = u32::from_le_bytes(
        header[RECORD_VALUE_LEN_AT..RECORD_VALUE_LEN_AT + 4].try_into().expect("4 bytes"),
    ) as usize;
    if value_len > VALUE_BYTES_MAX {
        return None;
    }
    let len = RECORD_HEADER_BYTES + key_len as usize + value_len;
    let whole = bytes.get(..len)?;
    let stored = u32::from_le_bytes(whole[..4].try_into().expect("4 bytes"));
    if crc32fast::hash(&whole[RECORD_KIND_AT..]) != stored {
        return None;
    }
    let key_end = RECORD_HEADER_BYTES + key_len as usize;
    Some((
        Record { kind, key: &whole[RECORD_HEADER_BYTES..key_end], value: &whole[key_end..] },
        len,
    ))
}

pub(super) fn encode_segment_header(id: u32) -> [u8; SEGMENT_HEADER_BYTES] {
    segment_header(id, FORMAT_VERSION)
}

pub(super) fn segment_header(id: u32, version: u8) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut header = [0u8; SEGMENT_HEADER_BYTES];
    header[SEGMENT_MAGIC_AT..SEGMENT_VERSION_AT].copy_from_slice(SEGMENT_MAGIC);
    header[SEGMENT_VERSION_AT] = version;
    header[SEGMENT_ID_AT..SEGMENT_CRC_AT].copy_from_slice(&id.to_le_bytes());
    let crc = crc32fast::hash(&header[..SEGMENT_CRC_AT]);
    header[SEGMENT_CRC_AT..].copy_from_slice(&crc.to_le_bytes());
    header
}

/// What the first bytes of segment `id`'s file say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum SegmentHeader {
    /// A whole header of a version this build reads.
    Readable,
    /// A whole header (magic, id and CRC check out) of a version this build does not read.
    Unknown(u8),
    /// No whole header: never written, torn, or damaged. The log ends before the segment.
    Missing,
}

/// Tell what `header`, the first bytes of segment `id`'s file, is.
pub(super) fn decode_segment_header(header: &[u8; SEGMENT_HEADER_BYTES], id: u32) -> SegmentHeader {
    let version = header[SEGMENT_VERSION_AT];
    if *header != segment_header(id, version) {
        SegmentHeader::Missing
    } else if READABLE_VERSIONS.contains(&version) {
        SegmentHeader::Readable
    } else {
        SegmentHeader::Unknown(version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record survives an encode/decode round trip, and any single flipped bit is caught.
    #[test]
    fn record_round_trip_and_bit_flips() {
        let mut buf = Vec::new();
        encode_record(RecordKind::Put, b"key", b"value", &mut buf);
        let (record, len) = decode_record(&buf).unwrap();
        assert_eq!(
            (record.kind, record.key, record.value, len),
            (RecordKind::Put, &b"key"[..], &b"value"[..], buf.len())
        );
        for bit in 0..buf.len() * 8 {
            let mut flipped = buf.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_record(&flipped).map(|(r, _)| r) != Some(record), "bit {bit}");
        }
        assert!(decode_record(&[0u8; 64]).is_none(), "zeros are never a record");
    }
}
