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
//! ## Ownership
//! [`Ownership`] says which node owns each partition; it changes only when members join or
//! leave, carries an epoch, and is gossiped (the highest epoch wins). One node, the claimant
//! (the lowest id among the members that are up), computes a new ownership with
//! [`Ownership::rebalance`] when the member set changes. The rebalance starts from the current
//! ownership and moves as few partitions as it can: every member ends with Q/S or Q/S + 1
//! partitions, a new member takes about Q/(S+1) partitions from the others, and no partition
//! moves between two members that stay.
//!
//! A change does not switch the ring at once: the claimant commits it as a transition to a
//! next layout, and each partition moves when its new replicas hold its data
//! ([`transition`]: reads stay where the data is, writes go to both sets meanwhile).
//!
//! It also tries to keep every window of `target_n` consecutive partitions on distinct nodes,
//! so that a key's N replicas are its partition's owner and the next owners on the ring. That
//! is not always possible (Q = 64 on 3 nodes with N = 3 leaves a wrap-around window with a
//! repeat, since 64 is not a multiple of 3), so [`Ownership::violations`] counts the windows
//! that repeat a node; rebalance keeps the better of the incremental result and a fresh
//! layout. Preference lists skip repeated nodes anyway: a key's N replicas are always N
//! distinct nodes when the cluster has N nodes.

use std::collections::BTreeSet;

use md5::{Digest, Md5};

pub mod transition;

pub use transition::{Transition, WriteSets};

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

/// Which node owns each partition, with the epoch of the change that made it so, and the
/// change on its way if one is ([`transition`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ownership {
    /// Bumped by the claimant at every change; the highest epoch wins in gossip.
    pub epoch: u64,
    /// `owners[p]` is the id of partition `p`'s owner. The length is Q.
    pub owners: Vec<String>,
    /// A committed change on its way, moving partition by partition.
    pub next: Option<Transition>,
    /// Members that left the ring (a leave, a replacement, a removal): given no partition
    /// again until joined anew.
    pub left: BTreeSet<String>,
}

impl Ownership {
    /// Every partition on `node` (a cluster of one), at epoch 0.
    pub fn single(node: &str, partitions: u32) -> Self {
        Self {
            epoch: 0,
            owners: vec![node.to_string(); partitions as usize],
            next: None,
            left: BTreeSet::new(),
        }
    }

    /// The partition count Q.
    pub fn partitions(&self) -> u32 {
        self.owners.len() as u32
    }

    /// Distinct nodes in ring order starting at `partition`'s owner: the preference list,
    /// at most `limit` long (pass the member count to stop the walk once all are found).
    /// Its first N entries are the key's primary replicas; the rest are fallbacks. During a
    /// transition, the ring that serves the partition now ([`Ownership::serving`]).
    pub fn preference_list(&self, partition: u16, limit: usize) -> Vec<&str> {
        self.walk(partition, limit)
    }

    /// The primary replicas of `partition`: the first `n` nodes of its preference list (the
    /// walk stops as soon as it has them).
    pub fn primaries(&self, partition: u16, n: usize) -> Vec<&str> {
        self.walk(partition, n)
    }

    /// Whether `node` is one of the `n` primaries of `partition`.
    pub fn is_primary(&self, partition: u16, n: usize, node: &str) -> bool {
        self.walk(partition, n).contains(&node)
    }

    /// The walk that serves `partition` now: the next ring's once it moved in a
    /// transition, the current one's otherwise ([`Ownership::serving`]).
    fn walk(&self, partition: u16, limit: usize) -> Vec<&str> {
        self.serving(partition, limit)
    }

    /// Partitions owned by `node`.
    pub fn owned_by(&self, node: &str) -> usize {
        self.owners.iter().filter(|o| *o == node).count()
    }

    /// Windows of `target_n` consecutive partitions (wrapping) whose owners are not all
    /// distinct, for clusters of at least `target_n` distinct owners.
    pub fn violations(&self, target_n: usize) -> usize {
        let indexes = index_owners(&self.owners);
        count_violations(&indexes, window(target_n, distinct(&self.owners)))
    }

    /// The ownership for `members` (sorted, distinct ids), starting from this one and moving
    /// as few partitions as it can, at the next epoch. See the module documentation for the
    /// guarantees.
    ///
    /// # Panics
    /// When the epoch is at `u64::MAX`; the node calls [`Ownership::try_rebalance`], which
    /// answers [`EpochExhausted`] instead.
    pub fn rebalance(&self, members: &[String], target_n: usize) -> Ownership {
        self.try_rebalance(members, target_n).expect("the ring epoch is at u64::MAX")
    }

    /// [`Ownership::rebalance`], or [`EpochExhausted`] when the epoch is at `u64::MAX` (it
    /// never wraps: a ring at epoch 0 would lose to every other ring, and the one it
    /// replaced would win again).
    pub fn try_rebalance(
        &self,
        members: &[String],
        target_n: usize,
    ) -> Result<Ownership, EpochExhausted> {
        let epoch = self.epoch.checked_add(1).ok_or(EpochExhausted)?;
        assert!(!members.is_empty(), "a ring needs at least one member");
        debug_assert!(
            members.windows(2).all(|w| w[0] < w[1]),
            "members must be sorted and distinct"
        );
        let w = window(target_n, members.len());
        let incremental = incremental_layout(&self.owners, members, w, true);
        let fresh = fresh_layout(self.owners.len(), members);
        // A fresh layout moves most partitions: take it only when it repairs many windows.
        let margin = self.owners.len() / 16;
        let chosen = if count_violations(&fresh, w) + margin < count_violations(&incremental, w) {
            fresh
        } else {
            incremental
        };
        let owners = chosen.into_iter().map(|m| members[m].clone()).collect();
        Ok(Ownership { epoch, owners, next: None, left: self.left.clone() })
    }
}

/// Distinct owners in ring order from `partition`, at most `limit`.
fn walk(owners: &[String], partition: u16, limit: usize) -> Vec<&str> {
    let q = owners.len();
    let mut list: Vec<&str> = Vec::new();
    for step in 0..q {
        if list.len() >= limit {
            break;
        }
        let owner = owners[(partition as usize + step) % q].as_str();
        if !list.contains(&owner) {
            list.push(owner);
        }
    }
    list
}

impl Ownership {
    /// The owners for `members` (sorted, distinct ids) moving only what must move: the
    /// partitions of members that go, and the excess of over-full members, to those with a
    /// deficit; no partition moves between two members that stay just to spread replicas
    /// better (what [`Ownership::rebalance`] may do). For a leave or a removal: exactly the
    /// leaver's partitions move.
    pub fn minimal_owners(&self, members: &[String], target_n: usize) -> Vec<String> {
        assert!(!members.is_empty(), "a ring needs at least one member");
        let w = window(target_n, members.len());
        let layout = incremental_layout(&self.owners, members, w, false);
        layout.into_iter().map(|m| members[m].clone()).collect()
    }
}

/// A ring whose epoch is at `u64::MAX` cannot change again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the ring epoch is at u64::MAX: it cannot change again")]
pub struct EpochExhausted;

fn window(target_n: usize, members: usize) -> usize {
    target_n.min(members).max(1)
}

fn distinct(owners: &[String]) -> usize {
    let mut seen: Vec<&String> = owners.iter().collect();
    seen.sort();
    seen.dedup();
    seen.len()
}

fn index_owners(owners: &[String]) -> Vec<usize> {
    let mut ids: Vec<&String> = owners.iter().collect();
    ids.sort();
    ids.dedup();
    owners.iter().map(|o| ids.binary_search(&o).unwrap_or(0)).collect()
}

/// Whether partition `p` shares a window of `w` with another partition of the same owner.
fn conflicts(owners: &[Option<usize>], p: usize, member: usize, w: usize) -> bool {
    let q = owners.len();
    (1..w.min(q))
        .any(|d| owners[(p + d) % q] == Some(member) || owners[(p + q - d) % q] == Some(member))
}

fn count_violations(owners: &[usize], w: usize) -> usize {
    let q = owners.len();
    if w <= 1 || q < w {
        return 0;
    }
    (0..q)
        .filter(|&p| {
            let mut seen: Vec<usize> = (0..w).map(|d| owners[(p + d) % q]).collect();
            seen.sort_unstable();
            seen.dedup();
            seen.len() < w
        })
        .count()
}

/// How many partitions each member should own: Q/S, plus one for the first Q mod S members
/// in order of how many they own now (so the extra ones stay where they are).
fn targets(current: &[usize], q: usize) -> Vec<usize> {
    let s = current.len();
    let mut order: Vec<usize> = (0..s).collect();
    order.sort_by_key(|&m| (std::cmp::Reverse(current[m]), m));
    let mut targets = vec![q / s; s];
    for &m in order.iter().take(q % s) {
        targets[m] += 1;
    }
    targets
}

/// Start from `old`: free the partitions of departed members and the excess of over-full
/// members, spread evenly around the ring (so a newcomer's partitions land far apart), then
/// give every free partition to the member with the largest deficit that does not conflict
/// there (or, failing that, the largest deficit).
fn incremental_layout(old: &[String], members: &[String], w: usize, repairs: bool) -> Vec<usize> {
    let q = old.len();
    let mut owners: Vec<Option<usize>> =
        old.iter().map(|o| members.binary_search(o).ok()).collect();
    let mut counts = vec![0usize; members.len()];
    for m in owners.iter().flatten() {
        counts[*m] += 1;
    }
    let targets = targets(&counts, q);
    let mut excess: Vec<usize> =
        (0..members.len()).map(|m| counts[m].saturating_sub(targets[m])).collect();
    let to_free: usize = excess.iter().sum();
    for i in 0..to_free {
        let ideal = i * q / to_free;
        // The nearest partition to the ideal spot whose owner still has excess.
        let found = (0..q)
            .flat_map(|d| [(ideal + d) % q, (ideal + q - d) % q])
            .find(|&p| owners[p].is_some_and(|m| excess[m] > 0));
        let p = found.expect("excess partitions exist while to_free is not reached");
        let m = owners[p].take().expect("found an owned partition");
        excess[m] -= 1;
        counts[m] -= 1;
    }
    for p in 0..q {
        if owners[p].is_some() {
            continue;
        }
        let needy = (0..members.len()).filter(|&m| counts[m] < targets[m]);
        let best = needy
            .map(|m| (conflicts(&owners, p, m, w), std::cmp::Reverse(targets[m] - counts[m]), m))
            .min()
            .map(|(_, _, m)| m)
            .expect("free partitions never outnumber the members' deficits");
        owners[p] = Some(best);
        counts[best] += 1;
    }
    let mut owners: Vec<usize> =
        owners.into_iter().map(|o| o.expect("every partition assigned")).collect();
    let before: Vec<Option<usize>> = old.iter().map(|o| members.binary_search(o).ok()).collect();
    let moved = owners.iter().zip(&before).filter(|(m, b)| Some(**m) != **b).count();
    // Repairs may move more, within a tenth over the fair share Q/S (none at all when
    // `repairs` is off: only what must move moves).
    let allowed = if repairs { moved.max(q * 11 / (10 * members.len())) } else { moved };
    repair(&mut owners, w, &before, allowed);
    owners
}

/// Swap owners of two partitions where that removes a repeated node from a window and adds
/// none; counts stay as they are. One pass over the ring, Q candidates each; skipped above
/// Q = 256, where its cubic cost would stall a claimant. A swap is kept only while at most
/// `allowed` partitions differ from `before` (their owners before the change), and partners
/// that moved already are tried first (swapping two of them moves nothing more): a join
/// moves about Q/(S+1) partitions, a tenth more at most, even where that leaves a window
/// with a repeated node (the preference list skips repeats).
fn repair(owners: &mut [usize], w: usize, before: &[Option<usize>], allowed: usize) {
    let q = owners.len();
    if w <= 1 || q > 256 {
        return;
    }
    let clashes = |owners: &[usize], p: usize| {
        let as_options: Vec<Option<usize>> = owners.iter().map(|&o| Some(o)).collect();
        conflicts(&as_options, p, owners[p], w)
    };
    for p in 0..q {
        if !clashes(owners, p) {
            continue;
        }
        let violations = count_violations(owners, w);
        let moved = |owners: &[usize], o: usize| Some(owners[o]) != before[o];
        let (mut first, mut then): (Vec<usize>, Vec<usize>) =
            (0..q).partition(|&o| moved(owners, o));
        first.append(&mut then);
        for other in first {
            if owners[other] == owners[p] {
                continue;
            }
            owners.swap(p, other);
            let total = (0..q).filter(|&o| moved(owners, o)).count();
            if total <= allowed && count_violations(owners, w) < violations {
                break;
            }
            owners.swap(p, other);
        }
    }
}

/// A layout from scratch: the members in order, repeated around the ring.
fn fresh_layout(q: usize, members: &[String]) -> Vec<usize> {
    (0..q).map(|p| p % members.len()).collect()
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

    /// `n01` … ids of `n` members, in order.
    pub(super) fn names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i:02}")).collect()
    }

    /// A ring grown one member at a time to `nodes` members (N = 3), as a cluster grows.
    pub(super) fn grow(q: u32, nodes: usize) -> Ownership {
        let members = names(nodes);
        let mut ring = Ownership::single(&members[0], q);
        for s in 2..=nodes {
            ring = ring.rebalance(&members[..s], 3);
        }
        ring
    }

    /// Every node owns Q/S or Q/S + 1 partitions, for many cluster sizes.
    #[test]
    fn balanced_within_one() {
        for q in [8u32, 64, 256] {
            for s in 1..=9usize {
                if s > q as usize {
                    continue;
                }
                let ring = grow(q, s);
                for node in names(s) {
                    let owned = ring.owned_by(&node);
                    let low = q as usize / s;
                    assert!(owned == low || owned == low + 1, "Q={q} S={s}: {node} owns {owned}");
                }
            }
        }
    }

    /// Adding a node moves at most 1.1 Q/(S+1) partitions, nearly all of them to the new node.
    /// (Growing from fewer than N nodes to N may lay the ring out afresh instead: a ring of
    /// two nodes cannot be turned into one whose windows of three are distinct by moving a
    /// third of it.)
    #[test]
    fn adding_a_node_moves_little() {
        for (q, s) in (3..=12usize).flat_map(|s| [(64, s), (128, s), (256, s)]) {
            let before = grow(q, s);
            let members = names(s + 1);
            let after = before.rebalance(&members, 3);
            let moved: Vec<usize> =
                (0..q as usize).filter(|&p| before.owners[p] != after.owners[p]).collect();
            let fair = q as f64 / (s + 1) as f64;
            assert!(
                moved.len() as f64 <= 1.1 * fair,
                "Q={q} S={s}: moved {} (Q/(S+1) = {fair:.1})",
                moved.len()
            );
            if q > 64 {
                continue;
            }
            let newcomer = &members[s];
            let to_others = moved.iter().filter(|&&p| &after.owners[p] != newcomer).count();
            assert!(
                to_others <= 64 / 16,
                "S={s}: {to_others} partitions moved between old members"
            );
            assert_eq!(after.epoch, before.epoch + 1);
        }
    }

    /// Where Q allows it, every N consecutive partitions sit on N distinct nodes.
    #[test]
    fn consecutive_partitions_on_distinct_nodes() {
        for (q, s) in [(64u32, 4usize), (64, 5), (64, 8), (256, 5), (64, 6), (64, 7)] {
            let ring = grow(q, s);
            assert_eq!(ring.violations(3), 0, "Q={q} S={s}: {:?}", ring.owners);
        }
        // 64 partitions cannot be split over 3 nodes without one repeat across the wrap.
        assert!(grow(64, 3).violations(3) <= 2);
    }

    /// A preference list starts at the partition's owner and names each node once.
    #[test]
    fn preference_list_is_distinct_and_complete() {
        let ring = grow(64, 5);
        for p in 0..64u16 {
            let list = ring.preference_list(p, usize::MAX);
            assert_eq!(ring.preference_list(p, 2), list[..2].to_vec());
            assert_eq!(list[0], ring.owners[p as usize]);
            assert_eq!(list.len(), 5);
            let mut sorted = list.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(sorted.len(), 5);
        }
    }

    /// A departed member's partitions go to the others, balanced again.
    #[test]
    fn removing_a_node_rebalances() {
        let ring = grow(64, 5);
        let members = names(5);
        let after = ring.rebalance(&members[..4], 3);
        assert_eq!(after.owned_by(&members[4]), 0);
        for node in &members[..4] {
            assert_eq!(after.owned_by(node), 16);
        }
    }

    /// The epoch never wraps: a ring at u64::MAX cannot rebalance (a typed error), one
    /// below it takes the last step.
    #[test]
    fn the_epoch_never_wraps() {
        let members = names(3);
        let mut ring = grow(64, 2);
        ring.epoch = u64::MAX - 1;
        let last = ring.try_rebalance(&members, 3).unwrap();
        assert_eq!(last.epoch, u64::MAX);
        assert_eq!(last.try_rebalance(&members[..2], 3), Err(EpochExhausted));
    }
}
