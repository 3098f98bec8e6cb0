//! # Membership: who is in the cluster, who is up, who owns what
//!
//! A pure state machine (STYLE 9): it takes gossiped views, RPC outcomes and ticks with the
//! current time in milliseconds, and answers questions (who is up, whom to gossip with, the
//! ring). The shell ([`super::gossip`]) owns the timer and [`super::peers`] the sockets.
//!
//! ## Gossip
//! Every member keeps, for itself, an **incarnation** (bumped at each start, so a restarted
//! node's news beats its old self's) and a **heartbeat** (bumped every gossip round). Each
//! round a node sends its view to one random member (and to a seed while it knows fewer than
//! two other members); the receiver merges it and answers with its own view, which the sender
//! merges. Merge keeps, per member, the entry with the greater (incarnation, heartbeat), and
//! the ring with the greater epoch (ties: the smaller owners vector, so every node picks the
//! same one). A new node needs one seed's address to join.
//!
//! ## Failure detection
//! Local, never gossiped: a node marks a member **suspect** when its heartbeat has not
//! advanced for `suspect_after_ms` or one RPC to it failed, and **down** after
//! `down_after_ms` without an advance or `RPC_FAILURES_DOWN` failed RPCs in a row. Both
//! silences grow with log2 of the member count ([`Timing::thresholds_ms`]), since gossip
//! needs that many rounds to carry a heartbeat to everyone. One lost
//! message therefore never makes a node down. Any heartbeat advance or successful RPC makes
//! it up again by itself.
//!
//! ## Ownership
//! The **claimant** is the member with the smallest id among those this node sees up. When
//! the members of the ring differ from the known members that have not left, the claimant
//! rebalances ([`crate::ring::Ownership::rebalance`]) and gossip spreads the new epoch. A down
//! member keeps its partitions (failure is not departure; sloppy quorum covers it). Moving a
//! partition's data to its new owner (ownership handoff) is not done here: until it is, read
//! repair and anti-entropy bring a new owner up to date.

use std::collections::BTreeMap;

use crate::ring::Ownership;

/// Failed RPCs in a row after which a member is down.
pub const RPC_FAILURES_DOWN: u32 = 3;

/// Members known to this node, other than itself, below which it also gossips with a seed.
pub const SEED_GOSSIP_BELOW: usize = 2;

/// A member's entry as gossiped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Node id.
    pub id: String,
    /// Client and peer API address.
    pub address: String,
    /// Bumped at each start of the node.
    pub incarnation: u64,
    /// Bumped every gossip round by the node itself.
    pub heartbeat: u64,
    /// The member asked to leave.
    pub leaving: bool,
    /// Digest of its bucket configuration.
    pub config_digest: Vec<u8>,
}

/// A gossiped view: members and ring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Every member the sender knows, itself included.
    pub members: Vec<MemberInfo>,
    /// The sender's ring.
    pub ring: Ownership,
}

/// How this node sees a member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Health {
    /// Heartbeats advance and RPCs succeed.
    Up,
    /// Recent silence or a failed RPC: still tried, but a fallback may stand in.
    Suspect,
    /// Long silence or repeated RPC failures: skipped.
    Down,
}

/// Timing settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// No heartbeat advance for this long: suspect (two members; more below).
    pub suspect_after_ms: u64,
    /// No heartbeat advance for this long: down (two members; more below).
    pub down_after_ms: u64,
    /// Added to the suspect time, and twice to the down time, for every doubling of the
    /// member count past two. A heartbeat reaches every member by gossip in about log2 of
    /// the member count rounds, so in a larger cluster a healthy member's news is older when
    /// it arrives; without this, the seeded simulation saw healthy members of a 20-node
    /// cluster marked down every few seconds.
    pub per_doubling_ms: u64,
}

impl Timing {
    /// Timings for a gossip interval: suspect after 3 silent rounds and down after 8, plus 1
    /// and 2 rounds for every doubling of the member count past two (a 5-node cluster: 5
    /// and 12 rounds; 100 nodes: 9 and 20).
    pub fn for_interval(gossip_interval_ms: u64) -> Self {
        Self {
            suspect_after_ms: 3 * gossip_interval_ms,
            down_after_ms: 8 * gossip_interval_ms,
            per_doubling_ms: gossip_interval_ms,
        }
    }

    /// The silences after which a member is suspect and down, with `members` members.
    pub fn thresholds_ms(&self, members: usize) -> (u64, u64) {
        let doublings = u64::from((members.max(2) - 1).ilog2());
        let extra = doublings * self.per_doubling_ms;
        (self.suspect_after_ms + extra, self.down_after_ms + 2 * extra)
    }
}

#[derive(Clone, Debug)]
struct Known {
    info: MemberInfo,
    /// When this node last saw the heartbeat advance (or learnt of the member).
    advanced_at_ms: u64,
    rpc_failures: u32,
}

/// Something a merge noticed, for the shell to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A member this node did not know.
    Joined(String),
    /// A member whose bucket configuration differs from this node's.
    ConfigMismatch(String),
    /// The ring changed to a new epoch.
    RingChanged(u64),
}

/// This node's membership state machine.
#[derive(Clone, Debug)]
pub struct Membership {
    me: String,
    members: BTreeMap<String, Known>,
    ring: Ownership,
    target_n: usize,
    timing: Timing,
}

impl Membership {
    /// A node alone, owning every partition, at `now_ms`.
    pub fn new(
        me: MemberInfo,
        partitions: u32,
        target_n: usize,
        timing: Timing,
        now_ms: u64,
    ) -> Self {
        let ring = Ownership::single(&me.id, partitions);
        let id = me.id.clone();
        let mut members = BTreeMap::new();
        members.insert(id.clone(), Known { info: me, advanced_at_ms: now_ms, rpc_failures: 0 });
        Self { me: id, members, ring, target_n, timing }
    }

    /// This node's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The current ring.
    pub fn ring(&self) -> &Ownership {
        &self.ring
    }

    /// How many members this node knows, itself included.
    pub fn member_count(&self) -> usize {
        self.members.len()
    }

    /// A member's address.
    pub fn address_of(&self, id: &str) -> Option<&str> {
        self.members.get(id).map(|k| k.info.address.as_str())
    }

    /// Every known member with its health, in id order.
    pub fn members(&self, now_ms: u64) -> Vec<(MemberInfo, Health)> {
        self.members.values().map(|k| (k.info.clone(), self.health_of(k, now_ms))).collect()
    }

    /// Ids of members whose bucket configuration differs from this node's.
    pub fn config_mismatches(&self) -> Vec<String> {
        let mine = &self.members[&self.me].info.config_digest;
        self.members
            .values()
            .filter(|k| &k.info.config_digest != mine)
            .map(|k| k.info.id.clone())
            .collect()
    }

    /// How this node sees `id` now. Unknown members are down; this node is always up.
    pub fn health(&self, id: &str, now_ms: u64) -> Health {
        self.members.get(id).map_or(Health::Down, |k| self.health_of(k, now_ms))
    }

    fn health_of(&self, known: &Known, now_ms: u64) -> Health {
        if known.info.id == self.me {
            return Health::Up;
        }
        let silent = now_ms.saturating_sub(known.advanced_at_ms);
        let (suspect_after_ms, down_after_ms) = self.timing.thresholds_ms(self.members.len());
        if silent >= down_after_ms || known.rpc_failures >= RPC_FAILURES_DOWN {
            Health::Down
        } else if silent >= suspect_after_ms || known.rpc_failures > 0 {
            Health::Suspect
        } else {
            Health::Up
        }
    }

    /// A gossip round: bump this node's heartbeat, let the claimant rebalance, and return
    /// the view to send. `random` picks the peer (see [`Membership::gossip_peer`]).
    pub fn tick(&mut self, now_ms: u64) -> (View, Vec<Notice>) {
        let me = self.members.get_mut(&self.me).expect("this node is always a member");
        me.info.heartbeat += 1;
        me.advanced_at_ms = now_ms;
        let notices = self.claim(now_ms);
        (self.view(), notices)
    }

    /// Whom to gossip with this round: a random other member, or a seed while this node
    /// knows fewer than [`SEED_GOSSIP_BELOW`] others. Down members are tried too, rarely
    /// (they are how a recovered node is noticed), by the same uniform choice.
    pub fn gossip_peer(&self, seeds: &[String], random: u64) -> Option<String> {
        let mine = self.members[&self.me].info.address.clone();
        let others: Vec<&Known> = self.members.values().filter(|k| k.info.id != self.me).collect();
        let seeds: Vec<&String> = seeds.iter().filter(|s| **s != mine).collect();
        if others.len() < SEED_GOSSIP_BELOW
            && !seeds.is_empty()
            && (others.is_empty() || random % 2 == 0)
        {
            return Some(seeds[(random / 2) as usize % seeds.len()].clone());
        }
        if others.is_empty() {
            return None;
        }
        Some(others[random as usize % others.len()].info.address.clone())
    }

    /// This node's view, to send.
    pub fn view(&self) -> View {
        View {
            members: self.members.values().map(|k| k.info.clone()).collect(),
            ring: self.ring.clone(),
        }
    }

    /// Merge a view received from a peer.
    pub fn merge(&mut self, view: View, now_ms: u64) -> Vec<Notice> {
        let mut notices = Vec::new();
        let my_digest = self.members[&self.me].info.config_digest.clone();
        for info in view.members {
            if info.id == self.me {
                // Others' news of this node is older than this node's own.
                continue;
            }
            match self.members.get_mut(&info.id) {
                None => {
                    notices.push(Notice::Joined(info.id.clone()));
                    if info.config_digest != my_digest {
                        notices.push(Notice::ConfigMismatch(info.id.clone()));
                    }
                    let id = info.id.clone();
                    self.members
                        .insert(id, Known { info, advanced_at_ms: now_ms, rpc_failures: 0 });
                }
                Some(known) => {
                    if (info.incarnation, info.heartbeat)
                        > (known.info.incarnation, known.info.heartbeat)
                    {
                        if info.config_digest != known.info.config_digest
                            && info.config_digest != my_digest
                        {
                            notices.push(Notice::ConfigMismatch(info.id.clone()));
                        }
                        known.info = info;
                        known.advanced_at_ms = now_ms;
                        known.rpc_failures = 0;
                    }
                }
            }
        }
        let theirs = view.ring;
        let newer = (theirs.epoch, std::cmp::Reverse(&theirs.owners))
            > (self.ring.epoch, std::cmp::Reverse(&self.ring.owners));
        if theirs.owners.len() == self.ring.owners.len() && newer {
            notices.push(Notice::RingChanged(theirs.epoch));
            self.ring = theirs;
        }
        notices
    }

    /// An RPC to `id` succeeded.
    pub fn rpc_succeeded(&mut self, id: &str) {
        if let Some(known) = self.members.get_mut(id) {
            known.rpc_failures = 0;
        }
    }

    /// An RPC to `id` failed (connection refused, reset, timed out).
    pub fn rpc_failed(&mut self, id: &str) {
        if let Some(known) = self.members.get_mut(id) {
            known.rpc_failures = known.rpc_failures.saturating_add(1);
        }
    }

    /// The member id at `address`, if known.
    pub fn id_at(&self, address: &str) -> Option<&str> {
        self.members.values().find(|k| k.info.address == address).map(|k| k.info.id.as_str())
    }

    /// If this node is the claimant and the ring's members differ from the members that
    /// have not left, rebalance.
    fn claim(&mut self, now_ms: u64) -> Vec<Notice> {
        let claimant = self
            .members
            .values()
            .filter(|k| self.health_of(k, now_ms) == Health::Up)
            .map(|k| k.info.id.as_str())
            .min();
        if claimant != Some(self.me.as_str()) {
            return Vec::new();
        }
        let wanted: Vec<String> =
            self.members.values().filter(|k| !k.info.leaving).map(|k| k.info.id.clone()).collect();
        let mut owning: Vec<String> = self.ring.owners.clone();
        owning.sort();
        owning.dedup();
        if owning == wanted {
            return Vec::new();
        }
        // With more members than partitions some own nothing however the ring is laid out:
        // change it (and its epoch) only when rebalancing moves something, or the claimant
        // would take a new epoch every round and the ring would never settle.
        let rebalanced = self.ring.rebalance(&wanted, self.target_n);
        if rebalanced.owners == self.ring.owners {
            return Vec::new();
        }
        self.ring = rebalanced;
        vec![Notice::RingChanged(self.ring.epoch)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> MemberInfo {
        MemberInfo {
            id: id.to_string(),
            address: format!("{id}:1"),
            incarnation: 1,
            heartbeat: 0,
            leaving: false,
            config_digest: vec![1],
        }
    }

    const TIMING: Timing = Timing { suspect_after_ms: 300, down_after_ms: 800, per_doubling_ms: 0 };

    /// A cluster with more members than partitions settles on one ring: the claimant does
    /// not take a new epoch when rebalancing would move nothing.
    #[test]
    fn more_members_than_partitions_settle() {
        let mut nodes: Vec<Membership> =
            (0..6).map(|i| Membership::new(info(&format!("m{i}")), 4, 3, TIMING, 0)).collect();
        for round in 0..6 {
            exchange_all(&mut nodes, round * 100);
        }
        let epoch = nodes[0].ring().epoch;
        for round in 6..12 {
            exchange_all(&mut nodes, round * 100);
        }
        assert_eq!(nodes[0].ring().epoch, epoch, "the ring keeps changing");
        assert!(nodes.iter().all(|n| n.ring() == nodes[0].ring()));
    }

    /// The silences grow by one interval (suspect) and two (down) per doubling of the
    /// member count past two.
    #[test]
    fn thresholds_grow_with_the_cluster() {
        let timing = Timing::for_interval(100);
        assert_eq!(timing.thresholds_ms(1), (300, 800));
        assert_eq!(timing.thresholds_ms(2), (300, 800));
        assert_eq!(timing.thresholds_ms(3), (400, 1000));
        assert_eq!(timing.thresholds_ms(5), (500, 1200));
        assert_eq!(timing.thresholds_ms(100), (900, 2000));
    }

    fn node(id: &str) -> Membership {
        Membership::new(info(id), 16, 3, TIMING, 0)
    }

    /// Gossip one round in each direction between every pair, at `now`.
    fn exchange_all(nodes: &mut [Membership], now: u64) {
        for i in 0..nodes.len() {
            let (view, _) = nodes[i].tick(now);
            for j in 0..nodes.len() {
                if i != j {
                    nodes[j].merge(view.clone(), now);
                    let back = nodes[j].view();
                    nodes[i].merge(back, now);
                }
            }
        }
    }

    /// Three nodes that gossip converge on one ring that spreads partitions over all three.
    #[test]
    fn gossip_converges_on_one_ring() {
        let mut nodes = vec![node("a"), node("b"), node("c")];
        for round in 0..4 {
            exchange_all(&mut nodes, round * 100);
        }
        let ring = nodes[0].ring().clone();
        assert!(ring.epoch >= 1);
        for n in &nodes {
            assert_eq!(n.ring(), &ring, "rings differ");
        }
        for id in ["a", "b", "c"] {
            assert!(ring.owned_by(id) >= 5, "{id} owns {}", ring.owned_by(id));
        }
    }

    /// A node joins through one seed and learns every member.
    #[test]
    fn join_through_a_seed() {
        let mut a = node("a");
        let mut b = node("b");
        let mut c = node("c");
        a.merge(b.tick(0).0, 0);
        b.merge(a.view(), 0);
        // c knows only a.
        assert_eq!(c.gossip_peer(&["a:1".into()], 7), Some("a:1".into()));
        a.merge(c.tick(10).0, 10);
        c.merge(a.view(), 10);
        let known: Vec<String> = c.members(10).into_iter().map(|(m, _)| m.id).collect();
        assert_eq!(known, vec!["a", "b", "c"]);
    }

    /// Silence makes a member suspect, then down; a heartbeat brings it back up.
    #[test]
    fn failure_detection_by_heartbeat() {
        let mut a = node("a");
        let mut b = node("b");
        a.merge(b.tick(0).0, 0);
        assert_eq!(a.health("b", 100), Health::Up);
        assert_eq!(a.health("b", 400), Health::Suspect);
        assert_eq!(a.health("b", 900), Health::Down);
        a.merge(b.tick(950).0, 950);
        assert_eq!(a.health("b", 960), Health::Up, "a heartbeat brings it back");
        assert_eq!(a.health("a", 10_000), Health::Up, "a node is always up to itself");
        assert_eq!(a.health("zz", 0), Health::Down, "unknown members are down");
    }

    /// One failed RPC makes a member suspect, not down; three in a row make it down; a
    /// success clears them.
    #[test]
    fn failure_detection_by_rpc() {
        let mut a = node("a");
        let mut b = node("b");
        a.merge(b.tick(0).0, 0);
        a.rpc_failed("b");
        assert_eq!(a.health("b", 10), Health::Suspect);
        a.rpc_failed("b");
        a.rpc_failed("b");
        assert_eq!(a.health("b", 10), Health::Down);
        a.rpc_succeeded("b");
        assert_eq!(a.health("b", 10), Health::Up);
    }

    /// An older heartbeat does not overwrite a newer one; a restart (new incarnation) does.
    #[test]
    fn merge_keeps_the_newest_news() {
        let mut a = node("a");
        let mut b = node("b");
        let (old, _) = b.tick(0);
        let (new, _) = b.tick(1);
        a.merge(new.clone(), 1);
        a.merge(old, 2);
        let seen = a.members(2).into_iter().find(|(m, _)| m.id == "b").unwrap().0;
        assert_eq!(seen.heartbeat, 2);
        let mut restarted = info("b");
        restarted.incarnation = 2;
        a.merge(View { members: vec![restarted], ring: a.ring().clone() }, 3);
        let seen = a.members(3).into_iter().find(|(m, _)| m.id == "b").unwrap().0;
        assert_eq!((seen.incarnation, seen.heartbeat), (2, 0));
    }

    /// A down member keeps its partitions: failure is not departure.
    #[test]
    fn down_member_keeps_partitions() {
        let mut nodes = vec![node("a"), node("b"), node("c")];
        for round in 0..4 {
            exchange_all(&mut nodes, round * 100);
        }
        let before = nodes[0].ring().clone();
        // c falls silent; a and b go on.
        let (mut a, mut b) = (nodes[0].clone(), nodes[1].clone());
        for t in [1000, 2000, 3000] {
            b.merge(a.tick(t).0, t);
            a.merge(b.tick(t).0, t);
        }
        assert_eq!(a.health("c", 3000), Health::Down);
        assert_eq!(a.ring(), &before);
    }

    /// A differing bucket configuration is noticed.
    #[test]
    fn config_mismatch_is_noticed() {
        let mut a = node("a");
        let mut other = info("b");
        other.config_digest = vec![2];
        let notices = a.merge(View { members: vec![other], ring: a.ring().clone() }, 0);
        assert!(notices.contains(&Notice::ConfigMismatch("b".into())));
        assert_eq!(a.config_mismatches(), vec!["b".to_string()]);
    }
}
