//! # Comparing keys
//!
//! Entries of a dot map are sorted by key, and the hot loops (decode's order check, join,
//! encoding's grouping) compare neighbouring keys thousands of times for a large cart or set.
//! These helpers do it without a call to `memcmp` where they can: by pointer for keys decoded
//! from one state, and as two integers for keys of one length from 8 to 16 bytes.

use std::cmp::Ordering;

use super::DotEntry;

/// The end of the run of entries that share `entries[start]`'s key.
pub(super) fn key_group_end<P>(entries: &[DotEntry<'_, P>], start: usize) -> usize {
    let key = entries[start].key;
    start + entries[start..].iter().take_while(|e| same_key(e.key, key)).count()
}

/// Key equality with a pointer fast path: entries decoded from one state share the very
/// slice of their key, so most tests need no byte comparison.
pub(super) fn same_key(a: &[u8], b: &[u8]) -> bool {
    std::ptr::eq(a, b)
        || match short_key_halves(a, b) {
            Some((x, y)) => x == y,
            None => a == b,
        }
}

/// The byte order of two keys, as `a.cmp(b)`. Keys of one length from 8 to 16 bytes (item
/// ids, set elements) compare as two big-endian `u64`s, their first and their last eight
/// bytes, with no call to `memcmp`: a replica's merge into a 1 000-item cart compares
/// neighbouring keys thousands of times (decode's order check, join, grouping), and through
/// `memcmp` that was a third of its time (docs/BENCHMARKS.md).
///
/// Why that is the byte order: the two windows cover every byte. If the first eight bytes
/// differ, the first difference is there; if they are equal, the bytes the windows share are
/// equal too, so the first difference in the last eight is the first difference of all.
#[inline]
pub(super) fn key_cmp(a: &[u8], b: &[u8]) -> Ordering {
    match short_key_halves(a, b) {
        Some((x, y)) => x.cmp(&y),
        None => a.cmp(b),
    }
}

/// The first and last eight bytes of `a` and of `b`, as big-endian integers, when both are
/// one length from 8 to 16 (see [`key_cmp`]).
#[inline]
fn short_key_halves(a: &[u8], b: &[u8]) -> Option<((u64, u64), (u64, u64))> {
    const HALF: usize = 8;
    if a.len() != b.len() || !(HALF..=2 * HALF).contains(&a.len()) {
        return None;
    }
    let halves = |key: &[u8]| {
        let first: [u8; HALF] = key[..HALF].try_into().expect("eight bytes");
        let last: [u8; HALF] = key[key.len() - HALF..].try_into().expect("eight bytes");
        (u64::from_be_bytes(first), u64::from_be_bytes(last))
    };
    Some((halves(a), halves(b)))
}

/// Number of distinct keys in entries sorted by key.
pub(super) fn count_keys<P>(entries: &[DotEntry<'_, P>]) -> usize {
    entries
        .iter()
        .enumerate()
        .filter(|(i, e)| *i == 0 || !same_key(entries[i - 1].key, e.key))
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `key_cmp` is the byte order and `same_key` byte equality: on every pair of a set of
    /// keys with zeros, 0xff, shared prefixes, the empty key and lengths on both sides of 8
    /// and 16 bytes.
    #[test]
    fn key_cmp_is_the_byte_order() {
        let mut keys: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0, 0], vec![255], vec![255; 16]];
        for len in [1, 2, 7, 8, 9, 15, 16, 17, 24] {
            for fill in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut key = vec![b'k'; len];
                *key.last_mut().unwrap() = fill;
                keys.push(key.clone());
                key[0] = fill;
                keys.push(key);
            }
        }
        keys.push(b"sku-000123".to_vec());
        keys.push(b"sku-000124".to_vec());
        keys.push(b"sku-0001230".to_vec());
        for a in &keys {
            for b in &keys {
                assert_eq!(key_cmp(a, b), a.cmp(b), "{a:?} against {b:?}");
                assert_eq!(same_key(a, b), a == b, "{a:?} against {b:?}");
            }
        }
    }
}
