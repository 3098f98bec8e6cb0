//! # Keys to partitions
//!
//! A key's place on the ring is the MD5 digest of its bucket and key, each prefixed by its
//! length as a big-endian u32 (so `("ab", "c")` and `("a", "bc")` hash apart), read as a
//! 128-bit big-endian integer. The ring is cut into Q equal partitions, Q a power of two fixed
//! at cluster creation (Dynamo's strategy 3, Riak's `ring_size`), so a key's partition is the
//! top log2(Q) bits of its hash.
//!
//! Storage engines hold one bucket each; inside an engine every key is stored behind its
//! partition number as a big-endian u16 ([`storage_key`]). A partition is then one key prefix,
//! and handing it off, repairing it or dropping it is a prefix scan that reads no other
//! partition's values. The cost: two bytes per stored key, and engines without ordered keys
//! (the log engine's hash keydir) walk their in-memory index to find a prefix.
//!
//! Partition ownership and preference lists belong to the cluster layer and build on this.

use md5::{Digest, Md5};

/// Default partition count (Q).
pub const PARTITIONS_DEFAULT: u32 = 64;

/// Largest partition count: partition numbers are stored as u16.
pub const PARTITIONS_MAX: u32 = 1 << 16;

/// Bytes of the partition prefix in front of every stored key.
pub const PARTITION_PREFIX_BYTES: usize = 2;

const _: () = assert!(PARTITIONS_MAX as u64 - 1 <= u16::MAX as u64);
const _: () = assert!(PARTITIONS_DEFAULT.is_power_of_two() && PARTITIONS_DEFAULT <= PARTITIONS_MAX);

/// The 128-bit ring position of a bucket and key.
pub fn key_hash(bucket: &str, key: &[u8]) -> u128 {
    let mut md5 = Md5::new();
    md5.update((bucket.len() as u32).to_be_bytes());
    md5.update(bucket.as_bytes());
    md5.update((key.len() as u32).to_be_bytes());
    md5.update(key);
    u128::from_be_bytes(md5.finalize().into())
}

/// The partition of a ring position, for `partitions` a power of two up to [`PARTITIONS_MAX`].
pub fn partition_of(hash: u128, partitions: u32) -> u16 {
    debug_assert!(
        partitions.is_power_of_two() && partitions <= PARTITIONS_MAX,
        "bad Q {partitions}"
    );
    let bits = partitions.trailing_zeros();
    if bits == 0 {
        0
    } else {
        (hash >> (128 - bits)) as u16
    }
}

/// The key an engine stores for `key` in `partition`: the partition number, then the key.
pub fn storage_key(partition: u16, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PARTITION_PREFIX_BYTES + key.len());
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(key);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The length prefix keeps bucket/key boundaries apart.
    #[test]
    fn length_prefix_separates_bucket_and_key() {
        assert_ne!(key_hash("ab", b"c"), key_hash("a", b"bc"));
        assert_eq!(key_hash("b", b"k"), key_hash("b", b"k"));
    }

    /// The partition is the top bits of the hash.
    #[test]
    fn partition_is_top_bits() {
        let hash = 0xABCD_u128 << 112;
        assert_eq!(partition_of(hash, 1), 0);
        assert_eq!(partition_of(hash, 2), 1);
        assert_eq!(partition_of(hash, 64), 0b101010);
        assert_eq!(partition_of(hash, 65536), 0xABCD);
    }

    /// Keys spread over all partitions about evenly.
    #[test]
    fn keys_spread_evenly() {
        let mut counts = [0u32; 64];
        for i in 0..64_000u32 {
            counts[partition_of(key_hash("b", &i.to_be_bytes()), 64) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 800 && *max < 1200, "uneven spread: {min}..{max}");
    }

    /// The storage key is the big-endian partition, then the key.
    #[test]
    fn storage_key_layout() {
        assert_eq!(storage_key(0x0102, b"k"), vec![1, 2, b'k']);
    }
}
