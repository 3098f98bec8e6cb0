//! # Chains: a value and the parts appended to it
//!
//! [`crate::StorageEngine::append`] adds a *part* to a key's value without rewriting the
//! value, so that a caller whose updates are small changes to a large value (a delta merged
//! into a 40 KB cart) writes the change, not the value. The engine keeps the parts apart and
//! never interprets them; the caller folds them when it reads.
//!
//! A value with parts reads back (from `get` and `scan_prefix`) in the **chain encoding**,
//! the same for every engine:
//!
//! | offset | size | field                                             |
//! |-------:|-----:|---------------------------------------------------|
//! |      0 |    1 | [`CHAIN_TAG`]                                      |
//! |      1 |    4 | number of pieces `n` (the base, then each part), u32 LE |
//! |      5 |    … | `n` times: length `l`, u32 LE, then `l` bytes       |
//!
//! A value that had no part appended since it was last put reads back as it was put. So a
//! caller that appends must never put a value that itself starts with [`CHAIN_TAG`] unless
//! it is a chain (the node's resolver states start with their type tag, 1 to 5). Putting a
//! chain, as an engine's compaction or a read-modify-write fallback does, keeps its pieces:
//! the next append adds one more ([`push`] flattens).

use crate::EngineError;

/// The first byte of a value in the chain encoding.
pub const CHAIN_TAG: u8 = 0xC5;

const COUNT_BYTES: usize = 4;
const LEN_BYTES: usize = 4;
const HEADER_BYTES: usize = 1 + COUNT_BYTES;

/// Whether `value` is in the chain encoding (by its first byte; [`pieces`] checks the rest).
pub fn is_chain(value: &[u8]) -> bool {
    value.first() == Some(&CHAIN_TAG)
}

/// The chain of `base` and `parts`, flattened: a `base` that is itself a chain gives its
/// pieces, not itself.
pub fn join<'a>(base: &[u8], parts: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut count: u32 = 0;
    out.push(CHAIN_TAG);
    out.extend_from_slice(&[0; COUNT_BYTES]);
    let mut piece = |out: &mut Vec<u8>, bytes: &[u8]| {
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
        count += 1;
    };
    match pieces(base) {
        Ok(Some(inner)) => inner.into_iter().for_each(|bytes| piece(&mut out, bytes)),
        // A plain base, or a damaged chain kept whole: the caller's fold reports it.
        _ => piece(&mut out, base),
    }
    for part in parts {
        piece(&mut out, part);
    }
    out[1..HEADER_BYTES].copy_from_slice(&count.to_le_bytes());
    out
}

/// `value` with `part` appended, in the chain encoding.
pub fn push(value: &[u8], part: &[u8]) -> Vec<u8> {
    join(value, [part])
}

/// How many parts a chain holds beside its base, from its header (0 for a plain value).
pub fn parts(value: &[u8]) -> u32 {
    match value.get(..HEADER_BYTES) {
        Some(header) if header[0] == CHAIN_TAG => {
            u32::from_le_bytes([header[1], header[2], header[3], header[4]]).saturating_sub(1)
        }
        _ => 0,
    }
}

/// The pieces of a chain (the base first), or `None` for a plain value; an error for a value
/// that starts like a chain but does not decode as one.
pub fn pieces(value: &[u8]) -> Result<Option<Vec<&[u8]>>, EngineError> {
    if !is_chain(value) {
        return Ok(None);
    }
    let corrupt = |what: &str| EngineError::Corrupt {
        path: "(a value)".into(),
        reason: format!("a chained value {what}"),
    };
    let count = value
        .get(1..HEADER_BYTES)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
        .ok_or_else(|| corrupt("is shorter than its header"))?;
    let mut rest = &value[HEADER_BYTES..];
    // Every piece takes at least its length field, so the count is bounded by the bytes.
    if count == 0 || count > rest.len() / LEN_BYTES {
        return Err(corrupt("names more pieces than it holds"));
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let (len, tail) = rest.split_at_checked(LEN_BYTES).ok_or_else(|| corrupt("is cut"))?;
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (piece, tail) = tail.split_at_checked(len).ok_or_else(|| corrupt("is cut"))?;
        out.push(piece);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(corrupt("has bytes past its last piece"));
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_value_has_no_pieces() {
        assert_eq!(pieces(b"\x05\x01abc").unwrap(), None);
        assert_eq!(pieces(b"").unwrap(), None);
    }

    #[test]
    fn push_flattens_and_pieces_reads_back() {
        let one = push(b"\x05base", b"p1");
        let two = push(&one, b"p2");
        assert_eq!(pieces(&two).unwrap().unwrap(), vec![&b"\x05base"[..], b"p1", b"p2"]);
        // Header, then a length and the bytes of each piece.
        assert_eq!(two.len(), 1 + 4 + (4 + 5) + (4 + 2) + (4 + 2));
        assert_eq!(join(b"\x05base", [&b"p1"[..], b"p2"]), two);
    }

    #[test]
    fn damaged_chains_are_errors() {
        let good = push(b"\x05base", b"part");
        for cut in 1..good.len() {
            assert!(pieces(&good[..cut]).is_err(), "cut at {cut}");
        }
        let mut long = good.clone();
        long.push(0);
        assert!(pieces(&long).is_err());
        let mut many = good;
        many[1] = 0xff;
        assert!(pieces(&many).is_err());
    }
}
