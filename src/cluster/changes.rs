//! # Membership changes: staged, planned, committed
//!
//! An operator changes who owns the ring in three steps, as with `riak admin cluster`:
//! **stage** changes (`join`, `leave`, `replace OLD NEW`, `remove` for a node gone for good),
//! look at the **plan** (which partitions move from whom to whom), and **commit** it (or
//! **cancel** the staged changes). Commit turns the plan into a ring transition
//! ([`crate::ring::transition`]): partitions move one by one as their new replicas copy and
//! verify them, and the old replicas serve them until then, so a change never hides data.
//!
//! The claimant (the member with the smallest id among those up) holds the staged changes
//! and commits: only it writes the ring, so two commits cannot race. A node asked to stage,
//! plan or commit when it is not the claimant passes the request to the claimant.
//!
//! Only one transition runs at a time: a commit while one is in flight is refused (stage
//! more, and commit once `status` shows no transfer left). Members that were never staged
//! join by themselves when `cluster.auto_join` is on (the default: `up` and a cluster started
//! from seeds form without an operator); the claimant commits their join as soon as no
//! transition is in flight. A member that left (or was removed, or replaced) is not joined
//! again by itself: `join` it.
//!
//! The rules of each change (all pure, in [`plan`]):
//! - `join ID`: ID is a proven member that owns nothing; it gets about Q/(S+1) partitions.
//! - `leave ID`: ID owns partitions; they go to the others (balanced). ID serves them until
//!   they moved, then owns nothing and is listed as left: it can then be stopped.
//! - `replace OLD NEW`: NEW (a proven member owning nothing) takes exactly OLD's partitions.
//! - `remove ID`: as `leave`, but ID is gone for good: no data is copied from it, its
//!   replicas are rebuilt from the other replicas of each partition.

use std::collections::BTreeSet;

use crate::client::{ClusterAnswer, ClusterRequest};
use crate::error::Error;
use crate::ring::Ownership;

/// One staged change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A member that owns nothing gets its share.
    Join(String),
    /// A member hands its partitions to the others, then owns nothing.
    Leave(String),
    /// `new` takes exactly `old`'s partitions.
    Replace {
        /// The member that goes.
        old: String,
        /// The member that takes its place.
        new: String,
    },
    /// A member gone for good goes; its data is rebuilt from the other replicas.
    Remove(String),
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Join(id) => write!(f, "join {id}"),
            Self::Leave(id) => write!(f, "leave {id}"),
            Self::Replace { old, new } => write!(f, "replace {old} {new}"),
            Self::Remove(id) => write!(f, "remove {id}"),
        }
    }
}

/// What a commit of the staged changes would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The staged changes it is made of.
    pub changes: Vec<Change>,
    /// The next ring's owners.
    pub next_owners: Vec<String>,
    /// Members forced out.
    pub removed: BTreeSet<String>,
    /// Partitions whose owner changes: (partition, from, to).
    pub moves: Vec<(u16, String, String)>,
}

/// Check a change against the ring and the members (`proven`: ids of proven members that
/// are not in the ring's `left` list or are, for a join). Pure.
pub fn check(
    change: &Change,
    ring: &Ownership,
    staged: &[Change],
    proven: &BTreeSet<String>,
) -> Result<(), Error> {
    let owns = |id: &str| ring.owned_by(id) > 0;
    let bad = |why: String| Err(Error::BadRequest(why));
    let named: BTreeSet<&str> = staged
        .iter()
        .flat_map(|c| match c {
            Change::Join(id) | Change::Leave(id) | Change::Remove(id) => vec![id.as_str()],
            Change::Replace { old, new } => vec![old.as_str(), new.as_str()],
        })
        .collect();
    let fresh = |id: &str| -> Result<(), Error> {
        if named.contains(id) {
            return bad(format!("{id} is in a staged change already: cancel to start over"));
        }
        Ok(())
    };
    match change {
        Change::Join(id) => {
            fresh(id)?;
            if owns(id) {
                return bad(format!("{id} owns partitions already"));
            }
            if !proven.contains(id) {
                return bad(format!("{id} is not a member this node has talked to"));
            }
        }
        Change::Leave(id) | Change::Remove(id) => {
            fresh(id)?;
            if !owns(id) {
                return bad(format!("{id} owns no partition"));
            }
        }
        Change::Replace { old, new } => {
            fresh(old)?;
            fresh(new)?;
            if !owns(old) {
                return bad(format!("{old} owns no partition"));
            }
            if owns(new) {
                return bad(format!("{new} owns partitions already: replace with a new node"));
            }
            if !proven.contains(new) {
                return bad(format!("{new} is not a member this node has talked to"));
            }
        }
    }
    Ok(())
}

/// The plan for `changes` on `ring` with the owners' layout rules of
/// [`Ownership::rebalance`] (`target_n`). Pure.
pub fn plan(ring: &Ownership, changes: &[Change], target_n: usize) -> Result<Plan, Error> {
    if changes.is_empty() {
        return Err(Error::BadRequest("no change is staged".into()));
    }
    let mut owners = ring.owners.clone();
    let mut members: BTreeSet<String> = owners.iter().cloned().collect();
    let mut removed = BTreeSet::new();
    for change in changes {
        match change {
            Change::Join(id) => {
                members.insert(id.clone());
            }
            Change::Leave(id) => {
                members.remove(id);
            }
            Change::Remove(id) => {
                members.remove(id);
                removed.insert(id.clone());
            }
            Change::Replace { old, new } => {
                for owner in owners.iter_mut().filter(|o| *o == old) {
                    new.clone_into(owner);
                }
                members.remove(old);
                members.insert(new.clone());
            }
        }
    }
    if members.is_empty() {
        return Err(Error::BadRequest("the changes would leave no member in the ring".into()));
    }
    let members: Vec<String> = members.into_iter().collect();
    let mut start = ring.clone();
    start.owners = owners;
    let distinct: BTreeSet<&String> = start.owners.iter().collect();
    let joins = changes.iter().any(|c| matches!(c, Change::Join(_)));
    let next_owners = if distinct.len() == members.len()
        && distinct.iter().all(|o| members.contains(o))
    {
        start.owners
    } else if joins {
        start.try_rebalance(&members, target_n).map_err(|e| Error::Overflow(e.to_string()))?.owners
    } else {
        // Leaves and removals move only the partitions of those that go.
        start.minimal_owners(&members, target_n)
    };
    let moves = (0..ring.owners.len())
        .filter(|&p| ring.owners[p] != next_owners[p])
        .map(|p| (p as u16, ring.owners[p].clone(), next_owners[p].clone()))
        .collect();
    Ok(Plan { changes: changes.to_vec(), next_owners, removed, moves })
}

impl super::Cluster {
    /// Take an admin's membership request (see the module documentation). Only the
    /// claimant does; another node answers `badRequest` naming the claimant and its address,
    /// where the client sends it instead.
    pub fn cluster_request(&self, request: &ClusterRequest) -> Result<ClusterAnswer, Error> {
        let me = self.me();
        let claimant = self.membership.borrow().claimant(self.now_ms());
        if claimant.as_deref() != Some(me.as_str()) {
            let claimant = claimant.unwrap_or_default();
            let address = self.membership.borrow().address_of(&claimant).unwrap_or("").to_string();
            return Err(Error::BadRequest(format!(
                "{me} is not the claimant: send membership changes to {claimant} at {address}"
            )));
        }
        let change = |c: Change| self.membership.borrow_mut().stage(c);
        let plan = match request {
            ClusterRequest::Join(id) => change(Change::Join(id.clone())).map(|()| None)?,
            ClusterRequest::Leave(id) => change(Change::Leave(id.clone())).map(|()| None)?,
            ClusterRequest::Remove(id) => change(Change::Remove(id.clone())).map(|()| None)?,
            ClusterRequest::Replace { old, new } => {
                change(Change::Replace { old: old.clone(), new: new.clone() }).map(|()| None)?
            }
            ClusterRequest::Plan => Some(self.membership.borrow().plan()?),
            ClusterRequest::Commit => {
                let plan = self.membership.borrow_mut().commit()?;
                tracing::info!(changes = ?plan.changes.iter().map(ToString::to_string).collect::<Vec<_>>(), moves = plan.moves.len(), "ring change committed");
                Some(plan)
            }
            ClusterRequest::Cancel => {
                self.membership.borrow_mut().cancel();
                None
            }
        };
        let plan = match plan {
            Some(plan) => Some(plan),
            None => self.membership.borrow().plan().ok(),
        };
        let membership = self.membership.borrow();
        let (keys, bytes) = self.partition_size_estimate();
        Ok(ClusterAnswer {
            claimant: me,
            staged: membership.staged().iter().map(ToString::to_string).collect(),
            moves: plan.map(|p| p.moves).unwrap_or_default(),
            bytes_per_partition: bytes,
            keys_per_partition: keys,
            ring_epoch: membership.ring().epoch,
            moving: membership.ring().moving() as u32,
        })
    }

    /// Keys and bytes per partition, estimated from this node's own copy: its entries and
    /// live bytes over the partitions it holds, summed over the buckets.
    fn partition_size_estimate(&self) -> (u64, u64) {
        let membership = self.membership.borrow();
        let ring = membership.ring();
        let me = membership.me();
        let (mut keys, mut bytes) = (0u64, 0u64);
        for bucket in self.store.buckets() {
            let n = bucket.config.n as usize;
            let held = (0..ring.partitions() as u16).filter(|&p| ring.holds(p, n, me)).count();
            let stats = bucket.engine.stats();
            if held > 0 {
                keys += stats.entries / held as u64;
                bytes += stats.live_bytes / held as u64;
            }
        }
        (keys, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_of(nodes: &[&str], q: u32) -> Ownership {
        let mut ring = Ownership::single(nodes[0], q);
        for s in 2..=nodes.len() {
            let members: Vec<String> = nodes[..s].iter().map(|n| n.to_string()).collect();
            ring = ring.rebalance(&members, 3);
        }
        ring
    }

    fn proven(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|i| i.to_string()).collect()
    }

    /// A join moves about Q/(S+1) partitions, all to the newcomer.
    #[test]
    fn a_join_moves_a_fair_share_to_the_newcomer() {
        let ring = ring_of(&["a", "b", "c"], 64);
        let join = Change::Join("d".into());
        check(&join, &ring, &[], &proven(&["a", "b", "c", "d"])).unwrap();
        let plan = plan(&ring, &[join], 3).unwrap();
        assert!(plan.moves.iter().all(|(_, _, to)| to == "d"), "{:?}", plan.moves);
        assert!((14..=18).contains(&plan.moves.len()), "{} moved", plan.moves.len());
    }

    /// A leave moves exactly the leaver's partitions, and none between the others.
    #[test]
    fn a_leave_moves_only_the_leavers_partitions() {
        let ring = ring_of(&["a", "b", "c", "d"], 64);
        let plan = plan(&ring, &[Change::Leave("d".into())], 3).unwrap();
        assert_eq!(plan.moves.len(), ring.owned_by("d"));
        assert!(plan.moves.iter().all(|(_, from, _)| from == "d"));
        assert!(!plan.next_owners.contains(&"d".to_string()));
    }

    /// A replacement gives the new node exactly the old one's partitions.
    #[test]
    fn a_replacement_swaps_owners_one_for_one() {
        let ring = ring_of(&["a", "b", "c", "d"], 64);
        let replace = Change::Replace { old: "d".into(), new: "e".into() };
        check(&replace, &ring, &[], &proven(&["e"])).unwrap();
        let plan = plan(&ring, &[replace], 3).unwrap();
        for p in 0..64 {
            let expected = if ring.owners[p] == "d" { "e" } else { ring.owners[p].as_str() };
            assert_eq!(plan.next_owners[p], expected);
        }
    }

    /// A removal is a leave whose member is no source.
    #[test]
    fn a_removal_marks_the_member_removed() {
        let ring = ring_of(&["a", "b", "c", "d"], 64);
        let plan = plan(&ring, &[Change::Remove("c".into())], 3).unwrap();
        assert_eq!(plan.removed, proven(&["c"]));
        assert!(!plan.next_owners.contains(&"c".to_string()));
        let from_c = plan.moves.iter().filter(|(_, from, _)| from == "c").count();
        assert_eq!(from_c, ring.owned_by("c"), "every partition of c moves");
    }

    /// Changes that make no sense are refused with a reason.
    #[test]
    fn bad_changes_are_refused() {
        let ring = ring_of(&["a", "b", "c"], 64);
        let members = proven(&["a", "b", "c", "d"]);
        let refused = [
            (Change::Join("a".into()), vec![]),
            (Change::Join("x".into()), vec![]),
            (Change::Leave("d".into()), vec![]),
            (Change::Replace { old: "a".into(), new: "b".into() }, vec![]),
            (Change::Leave("a".into()), vec![Change::Leave("a".into())]),
        ];
        for (change, staged) in refused {
            let err = check(&change, &ring, &staged, &members).unwrap_err();
            assert!(matches!(err, Error::BadRequest(_)), "{change}: {err:?}");
        }
        assert!(plan(&ring, &[], 3).is_err(), "nothing staged");
        let all = [Change::Leave("a".into()), Change::Leave("b".into()), Change::Leave("c".into())];
        assert!(plan(&ring, &all, 3).is_err(), "no member left");
    }
}
