//! # Anti-entropy: finding what replicas disagree on without sending everything
//!
//! Read repair fixes keys that are read; hinted handoff fixes writes a fallback held. Keys
//! that are never read after a replica missed them (a hint refused at its bound, a node
//! killed before its flusher ran, a fallback that died) are found by comparing hash trees.
//!
//! Per (bucket, partition), a replica builds a two-level tree: each key falls in one of
//! [`SEGMENTS`] segments by the first byte of the MD5 of the key, and a segment's leaf hash is
//! the wrapping sum of a 64-bit hash of each (key, state) pair in it. The sum is order
//! independent, so a leaf is computed in one pass over the partition, in whatever order the
//! engine scans it. Two replicas exchange leaves (2 KiB), and for each segment whose leaves
//! differ they exchange that segment's entries, merge them with the resolver, and store the
//! merge on both sides. Equal states are equal bytes (resolver encodings are canonical), so
//! converged replicas have equal leaves.
//!
//! A sum of hashes can be fooled by crafted data (two changes that cancel); for detecting
//! divergence between replicas that is an accepted risk, and the next write to either key
//! changes the sum again.
//!
//! Trees are rebuilt for each exchange (one partition scan, reading only that partition), not
//! kept up to date on every write: the cost is paid in the background, one partition per
//! round, and nothing is added to the write path.

use md5::{Digest, Md5};

/// Segments per partition tree.
pub const SEGMENTS: usize = 256;

/// A partition's tree leaves.
pub type Leaves = Vec<u64>;

/// The segment a key falls in.
pub fn segment_of(key: &[u8]) -> u16 {
    u16::from(Md5::digest(key)[0])
}

fn entry_hash(key: &[u8], state: &[u8]) -> u64 {
    let mut md5 = Md5::new();
    md5.update((key.len() as u32).to_be_bytes());
    md5.update(key);
    md5.update(state);
    let digest = md5.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The leaves of a partition given its (key, state) pairs in any order.
pub fn leaves<'a>(entries: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> Leaves {
    let mut leaves = vec![0u64; SEGMENTS];
    for (key, state) in entries {
        let segment = segment_of(key) as usize;
        leaves[segment] = leaves[segment].wrapping_add(entry_hash(key, state));
    }
    leaves
}

/// Segments whose leaves differ. Leaves of the wrong length differ everywhere.
pub fn differing(ours: &[u64], theirs: &[u64]) -> Vec<u16> {
    if ours.len() != SEGMENTS || theirs.len() != SEGMENTS {
        return (0..SEGMENTS as u16).collect();
    }
    (0..SEGMENTS).filter(|&s| ours[s] != theirs[s]).map(|s| s as u16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(pairs: &[(&str, &str)]) -> Leaves {
        leaves(pairs.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())))
    }

    /// Leaves do not depend on scan order; one changed state changes exactly its segment.
    #[test]
    fn leaves_find_the_changed_segment() {
        let a = entries(&[("k1", "v1"), ("k2", "v2"), ("k3", "v3")]);
        let b = entries(&[("k3", "v3"), ("k1", "v1"), ("k2", "v2")]);
        assert_eq!(a, b);
        let c = entries(&[("k1", "v1"), ("k2", "changed"), ("k3", "v3")]);
        assert_eq!(differing(&a, &c), vec![segment_of(b"k2")]);
        let d = entries(&[("k1", "v1"), ("k3", "v3")]);
        assert_eq!(differing(&a, &d), vec![segment_of(b"k2")], "a missing key shows too");
        assert!(differing(&a, &a).is_empty());
    }

    /// Malformed leaves (wrong length) compare as different everywhere.
    #[test]
    fn wrong_length_differs_everywhere() {
        assert_eq!(differing(&[0; SEGMENTS], &[0; 3]).len(), SEGMENTS);
    }
}
