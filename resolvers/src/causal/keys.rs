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

/// The byte order of two keys, as `a.cmp(b)`, with no call to `memcmp` for most keys of 8
/// bytes or more: a replica's merge into a 1 000-item cart compares keys thousands of times
/// (decode's order check, join, grouping, the sparse walk), and through `memcmp` that was a
/// third of its time (docs/BENCHMARKS.md).
///
/// - Keys of 8 bytes or more compare their first eight bytes as big-endian `u64`s: if those
///   differ, the first difference is among them, so the integers' order is the bytes' order.
/// - If they are equal and both keys are of one length up to 16, their last eight bytes
///   decide the same way: the two windows cover every byte, and the bytes they share are
///   equal already.
/// - Anything else (a key under 8 bytes, a shared 8-byte prefix of keys of different lengths
///   or longer than 16) goes to `memcmp`.
#[inline]
pub(super) fn key_cmp(a: &[u8], b: &[u8]) -> Ordering {
    if a.len() >= HALF && b.len() >= HALF {
        let (x, y) = (first_eight(a), first_eight(b));
        if x != y {
            return x.cmp(&y);
        }
        if a.len() == b.len() && a.len() <= 2 * HALF {
            return last_eight(a).cmp(&last_eight(b));
        }
    }
    a.cmp(b)
}

/// Keys of one length from 8 to 16 bytes as their first and last eight bytes, big-endian
/// (see [`key_cmp`]), for [`same_key`].
#[inline]
fn short_key_halves(a: &[u8], b: &[u8]) -> Option<((u64, u64), (u64, u64))> {
    if a.len() != b.len() || !(HALF..=2 * HALF).contains(&a.len()) {
        return None;
    }
    Some(((first_eight(a), last_eight(a)), (first_eight(b), last_eight(b))))
}

/// Half of the longest key [`key_cmp`] compares as two integers.
const HALF: usize = 8;

/// The first eight bytes of a key of at least eight, as a big-endian integer.
#[inline]
fn first_eight(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[..HALF].try_into().expect("eight bytes"))
}

/// The last eight bytes of a key of at least eight, as a big-endian integer.
#[inline]
fn last_eight(key: &[u8]) -> u64 {
    u64::from_be_bytes(key[key.len() - HALF..].try_into().expect("eight bytes"))
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
        // Different lengths with and without a shared first eight bytes.
        keys.push(b"fill-000123".to_vec());
        keys.push(b"fill-0001".to_vec());
        keys.push(b"fill-000".to_vec());
        keys.push(b"fill-00012345678901234".to_vec());
        for a in &keys {
            for b in &keys {
                assert_eq!(key_cmp(a, b), a.cmp(b), "{a:?} against {b:?}");
                assert_eq!(same_key(a, b), a == b, "{a:?} against {b:?}");
            }
        }
    }
}
