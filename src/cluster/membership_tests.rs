//! Tests of [`super`]: merging views, failure detection, proving and forgetting members,
//! bounded steps, the claimant's rebalancing and the revoked tokens.

use super::*;

fn info(id: &str) -> MemberInfo {
    MemberInfo {
        id: id.to_string(),
        address: format!("{id}:1"),
        incarnation: 1,
        heartbeat: 0,
        leaving: false,
        config_digest: vec![1],
        holds: Default::default(),
        data_bytes: 0,
    }
}

const TIMING: Timing = Timing { suspect_after_ms: 300, down_after_ms: 800, per_doubling_ms: 0 };

fn view_of(members: Vec<MemberInfo>, ring: Ownership) -> View {
    View { members, ring, revoked_tokens: BTreeSet::new() }
}

impl Membership {
    /// A tick that must succeed.
    fn tick_ok(&mut self, now_ms: u64) -> (View, Vec<Notice>) {
        self.tick(now_ms).unwrap()
    }
}

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

/// Each node says it holds every partition of the ring transition it knows of: transfers
/// done at once (the transfer driver's part, not this state machine's).
fn hold_everything(nodes: &mut [Membership]) {
    for n in nodes.iter_mut() {
        let holds = match &n.ring().next {
            Some(t) => Holds { transition: t.id, partitions: (0..16).collect() },
            None => Holds::default(),
        };
        n.set_holds(holds);
    }
}

/// Gossip one round in each direction between every pair, at `now`: direct exchanges,
/// each side knowing who the other is; transfers complete at once.
fn exchange_all(nodes: &mut [Membership], now: u64) {
    hold_everything(nodes);
    for i in 0..nodes.len() {
        let (view, _) = nodes[i].tick(now).unwrap();
        for j in 0..nodes.len() {
            if i != j {
                let (from, to) = (nodes[i].me().to_string(), nodes[j].me().to_string());
                nodes[j].merge_from(&from, view.clone(), now);
                let back = nodes[j].view();
                nodes[i].merge_from(&to, back, now);
            }
        }
    }
}

/// Three nodes that gossip converge on one ring that spreads partitions over all three.
#[test]
fn gossip_converges_on_one_ring() {
    let mut nodes = vec![node("a"), node("b"), node("c")];
    for round in 0..8 {
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
    a.merge(b.tick_ok(0).0, 0);
    b.merge(a.view(), 0);
    // c knows only a.
    assert_eq!(c.gossip_peer(&["a:1".into()], 7), Some("a:1".into()));
    a.merge(c.tick_ok(10).0, 10);
    c.merge(a.view(), 10);
    let known: Vec<String> = c.members(10).into_iter().map(|(m, _)| m.id).collect();
    assert_eq!(known, vec!["a", "b", "c"]);
}

/// Silence makes a member suspect, then down; a heartbeat brings it back up.
#[test]
fn failure_detection_by_heartbeat() {
    let mut a = node("a");
    let mut b = node("b");
    a.merge(b.tick_ok(0).0, 0);
    assert_eq!(a.health("b", 100), Health::Up);
    assert_eq!(a.health("b", 400), Health::Suspect);
    assert_eq!(a.health("b", 900), Health::Down);
    a.merge(b.tick_ok(950).0, 950);
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
    a.merge(b.tick_ok(0).0, 0);
    a.rpc_failed("b", 0);
    assert_eq!(a.health("b", 10), Health::Suspect);
    a.rpc_failed("b", 0);
    a.rpc_failed("b", 0);
    assert_eq!(a.health("b", 10), Health::Down);
    a.rpc_succeeded("b", 10);
    assert_eq!(a.health("b", 10), Health::Up);
    // A direct answer counts as a sign of life, as a heartbeat would: long after the last
    // gossip news of b, b that answered is up.
    let (_, down_after_ms) = a.timing.thresholds_ms(2);
    let later = 10 + 2 * down_after_ms;
    assert_eq!(a.health("b", later), Health::Down);
    a.rpc_succeeded("b", later);
    assert_eq!(a.health("b", later), Health::Up);
}

/// A call that started before the member last answered fails as old news: a call sent into
/// a partition that times out after the heal does not make the healed member suspect again.
#[test]
fn a_failure_older_than_an_answer_is_ignored() {
    let mut a = node("a");
    let mut b = node("b");
    a.merge(b.tick_ok(0).0, 0);
    a.rpc_failed("b", 5);
    assert_eq!(a.health("b", 10), Health::Suspect);
    a.rpc_succeeded("b", 20);
    assert_eq!(a.health("b", 20), Health::Up);
    a.rpc_failed("b", 15);
    assert_eq!(a.health("b", 25), Health::Up, "started at 15, before b answered at 20");
    a.rpc_failed("b", 20);
    assert_eq!(a.health("b", 25), Health::Suspect, "started when b last answered");
    // A direct gossip exchange from b counts as an answer too.
    a.merge_from("b", b.tick_ok(30).0, 30);
    assert_eq!(a.health("b", 30), Health::Up);
    a.rpc_failed("b", 29);
    assert_eq!(a.health("b", 31), Health::Up, "started before b called at 30");
}

/// An older heartbeat does not overwrite a newer one; a restart (new incarnation) does.
#[test]
fn merge_keeps_the_newest_news() {
    let mut a = node("a");
    let mut b = node("b");
    let (old, _) = b.tick_ok(0);
    let (new, _) = b.tick_ok(1);
    a.merge(new.clone(), 1);
    a.merge(old, 2);
    let seen = a.members(2).into_iter().find(|(m, _)| m.id == "b").unwrap().0;
    assert_eq!(seen.heartbeat, 2);
    let mut restarted = info("b");
    restarted.incarnation = 2;
    a.merge(view_of(vec![restarted], a.ring().clone()), 3);
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
        b.merge(a.tick_ok(t).0, t);
        a.merge(b.tick_ok(t).0, t);
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
    let notices = a.merge(view_of(vec![other], a.ring().clone()), 0);
    assert!(notices.contains(&Notice::ConfigMismatch("b".into())));
    assert_eq!(a.config_mismatches(), vec!["b".to_string()]);
}

/// A cluster of three that gossips directly, converged.
fn converged_three() -> Vec<Membership> {
    let mut nodes = vec![node("a"), node("b"), node("c")];
    for round in 0..8 {
        exchange_all(&mut nodes, round * 100);
    }
    nodes
}

/// A view that names a member nobody can reach: the sender's own entry, its ring, and
/// the ghost.
fn ghost_view(sender: &Membership, ghost: &str, heartbeat: u64) -> View {
    let mut view = sender.view();
    view.members.push(MemberInfo { heartbeat, ..info(ghost) });
    view
}

/// The issue-11 attack: one gossip naming a member that does not exist. The claimant
/// gives it nothing, every node forgets it after UNPROVEN_FORGET_ROUNDS rounds, and the
/// same entry (or an older one) gossiped again does not bring it back. Method: three
/// converged nodes; the ghost "0ghost" relayed to all of them.
#[test]
fn a_gossiped_stranger_gets_nothing_and_is_forgotten() {
    let mut nodes = converged_three();
    let ring = nodes[0].ring().clone();
    let forged = ghost_view(&nodes[1], "0ghost", 5);
    for n in nodes.iter_mut() {
        let notices = n.merge(forged.clone(), 500);
        assert!(notices.contains(&Notice::Joined("0ghost".into())), "{notices:?}");
    }
    let mut forgotten = 0;
    for round in 0..=UNPROVEN_FORGET_ROUNDS {
        let now = 600 + round * 10;
        for n in nodes.iter_mut() {
            let (_, notices) = n.tick_ok(now);
            assert!(!notices.iter().any(|x| matches!(x, Notice::RingChanged(_))));
            let ghost = Notice::Forgotten("0ghost".into());
            forgotten += notices.iter().filter(|x| **x == ghost).count();
        }
    }
    assert_eq!(forgotten, 3, "every node forgot it");
    for n in nodes.iter_mut() {
        assert_eq!(n.ring(), &ring, "no partition moved");
        assert!(!n.is_member("0ghost"));
        n.merge(forged.clone(), 2_000);
        n.merge(ghost_view(&node("b"), "0ghost", 4), 2_000);
        assert!(!n.is_member("0ghost"), "a stale copy brought it back");
    }
}

/// A stranger with the smallest id does not become the claimant: a real member that
/// joins meanwhile still gets its partitions.
#[test]
fn a_stranger_does_not_block_the_claimant() {
    let mut nodes = converged_three();
    let forged = ghost_view(&nodes[1], "0ghost", 5);
    nodes[0].merge(forged, 500);
    let d = node("d");
    nodes[0].merge_from("d", d.view(), 500);
    nodes[0].tick_ok(510);
    assert!(nodes[0].ring().will_own("d") > 0);
    assert_eq!(nodes[0].ring().will_own("0ghost"), 0);
}

/// A forgotten member that really exists comes back when it talks to us (a direct
/// exchange, even with the same entry as forgotten), or when a newer entry of it is
/// gossiped; once proven, the claimant gives it partitions.
#[test]
fn a_forgotten_member_that_exists_comes_back() {
    let mut a = node("a");
    let d = node("d");
    a.merge(ghost_view(&node("b"), "d", 0), 0);
    for round in 1..=UNPROVEN_FORGET_ROUNDS {
        a.tick_ok(round);
    }
    assert!(!a.is_member("d"));
    // d gossips to a itself: the connection says it is d, and its view names d.
    let mut d_view = d.view();
    d_view.members[0].heartbeat = 0;
    a.merge_from("d", d_view, 100);
    assert!(a.is_member("d") && a.is_proven("d"));
    a.tick_ok(110);
    assert!(a.ring().will_own("d") > 0, "a proven member gets partitions");
    // Forgotten again elsewhere, then a newer relayed entry brings it back, unproven.
    let mut c = node("c");
    c.merge(ghost_view(&node("b"), "d", 0), 0);
    for round in 1..=UNPROVEN_FORGET_ROUNDS {
        c.tick_ok(round);
    }
    c.merge(ghost_view(&node("b"), "d", 1), 200);
    assert!(c.is_member("d") && !c.is_proven("d"));
}

/// An answer to this node's gossip proves the answerer (merge_from with the node at the
/// dialled address); a relayed view proves no one; a direct sender whose view does not
/// name it proves nothing.
#[test]
fn only_a_direct_exchange_proves() {
    let mut a = node("a");
    let mut b = node("b");
    let b_view = b.tick_ok(0).0;
    a.merge(b_view.clone(), 0);
    assert!(a.is_member("b") && !a.is_proven("b"));
    a.merge_from("b", ghost_view(&node("c"), "x", 0), 0);
    assert!(!a.is_proven("b"), "b's connection carried a view without b");
    a.merge_from("b", b_view, 0);
    assert!(a.is_proven("b"));
    assert!(a.is_proven("a"), "a node is proven to itself");
}

/// Each round a node probes at most PROBES_PER_ROUND unproven members that own nothing
/// and are not down by failed calls; proven members and owners are not probed.
#[test]
fn probes_go_to_unproven_members() {
    let mut a = node("a");
    let b = node("b");
    let mut view = b.view();
    for ghost in ["g1", "g2", "g3"] {
        view.members.push(info(ghost));
    }
    a.merge_from("b", view, 0);
    a.tick_ok(10);
    assert!(a.ring().will_own("b") > 0);
    let probes = a.probes();
    assert_eq!(probes.len(), PROBES_PER_ROUND);
    assert!(probes
        .iter()
        .all(|(id, address)| id.starts_with('g') && *address == format!("{id}:1")));
    for _ in 0..RPC_FAILURES_DOWN {
        for ghost in ["g1", "g2", "g3"] {
            a.rpc_failed(ghost, 0);
        }
    }
    assert!(a.probes().is_empty(), "down by failed calls: not probed any more");
}

/// The issue-11 epoch attack: a ring with epoch u64::MAX is refused (only the ring: the
/// view's heartbeats are taken), one EPOCH_STEP_MAX ahead is taken; a restored file is
/// not held to the bound.
#[test]
fn a_ring_far_ahead_is_refused() {
    let mut nodes = converged_three();
    let ours = nodes[0].ring().clone();
    let mut forged = nodes[1].tick_ok(1_000).0;
    forged.ring.epoch = u64::MAX;
    forged.ring.owners.reverse();
    let notices = nodes[0].merge(forged.clone(), 1_000);
    assert!(
        notices.iter().any(|n| matches!(n, Notice::RingRefused { epoch: u64::MAX, .. })),
        "{notices:?}"
    );
    assert_eq!(nodes[0].ring(), &ours);
    assert_eq!(nodes[0].health("b", 1_000), Health::Up, "the heartbeat was taken");
    let mut next = forged.clone();
    next.ring.epoch = ours.epoch + EPOCH_STEP_MAX;
    nodes[0].merge(next.clone(), 1_000);
    assert_eq!(nodes[0].ring(), &next.ring, "a step within the bound is taken");
    let mut restarted = node("a");
    restarted.restore(forged.clone(), 0);
    assert_eq!(restarted.ring(), &forged.ring, "this node's own file is trusted");
}

/// A ring naming an owner that neither this node nor the view knows is refused.
#[test]
fn a_ring_naming_a_stranger_is_refused() {
    let mut nodes = converged_three();
    let ours = nodes[0].ring().clone();
    let mut forged = nodes[1].view();
    forged.ring.epoch += 1;
    forged.ring.owners[0] = "stranger".into();
    let notices = nodes[0].merge(forged.clone(), 500);
    assert!(notices.iter().any(|n| matches!(n, Notice::RingRefused { .. })), "{notices:?}");
    assert_eq!(nodes[0].ring(), &ours);
    // Named in the same view, it is taken (and its owner is then a member).
    forged.members.push(info("stranger"));
    nodes[0].merge(forged.clone(), 500);
    assert_eq!(nodes[0].ring(), &forged.ring);
    assert!(nodes[0].is_member("stranger"));
}

/// The claimant at epoch u64::MAX does not wrap to 0: it reports EpochExhausted and
/// keeps its ring.
#[test]
fn the_claimant_never_wraps_the_epoch() {
    let mut a = node("a");
    let b = node("b");
    let mut ring = a.ring().clone();
    ring.epoch = u64::MAX;
    a.restore(view_of(Vec::new(), ring.clone()), 0);
    assert_eq!(a.ring().epoch, u64::MAX);
    a.merge_from("b", b.view(), 0);
    let (_, notices) = a.tick_ok(10);
    assert_eq!(notices, vec![Notice::EpochExhausted]);
    assert_eq!(a.ring(), &ring);
}

/// This node's heartbeat at u64::MAX: tick is Overflow and changes nothing.
#[test]
fn the_heartbeat_never_wraps() {
    let mut a = node("a");
    a.members.get_mut("a").unwrap().info.heartbeat = u64::MAX;
    assert!(matches!(a.tick(10), Err(Error::Overflow(_))));
    assert_eq!(a.view().members[0].heartbeat, u64::MAX);
}

/// An entry whose incarnation is more than INCARNATION_AHEAD_MS_MAX ahead of this
/// node's clock (its incarnation plus now) is refused; one within is taken. Entries with
/// ids or addresses the config would refuse are refused too.
#[test]
fn entries_far_ahead_or_malformed_are_refused() {
    let mut a = node("a"); // incarnation 1
    let now = 1_000;
    let ahead = MemberInfo { incarnation: 1 + now + INCARNATION_AHEAD_MS_MAX + 1, ..info("b") };
    let notices = a.merge(view_of(vec![ahead], a.ring().clone()), now);
    assert!(matches!(notices[0], Notice::MemberRefused { .. }), "{notices:?}");
    assert!(!a.is_member("b"));
    let within = MemberInfo { incarnation: 1 + now + INCARNATION_AHEAD_MS_MAX, ..info("b") };
    a.merge(view_of(vec![within], a.ring().clone()), now);
    assert!(a.is_member("b"));
    let long = "x".repeat(crate::actors::NODE_ID_BYTES_MAX + 1);
    for bad in [
        info(&long),
        info("bad id"),
        MemberInfo { address: String::new(), ..info("c") },
        MemberInfo { config_digest: vec![0; CONFIG_DIGEST_BYTES_MAX + 1], ..info("d") },
    ] {
        let id = bad.id.clone();
        let notices = a.merge(view_of(vec![bad], a.ring().clone()), now);
        assert!(matches!(notices[0], Notice::MemberRefused { .. }), "{notices:?}");
        assert!(!a.is_member(&id));
    }
}

/// Revoked tokens merge as a grow-only set; malformed ids and a set that would pass
/// REVOKED_TOKENS_MAX are refused; revoke_token checks the id and is idempotent.
#[test]
fn revoked_tokens_merge_as_a_grow_only_set() {
    let mut a = node("a");
    let mut b = node("b");
    assert_eq!(a.revoke_token("00000000000000aa"), Ok(true));
    assert_eq!(a.revoke_token("00000000000000aa"), Ok(false));
    b.revoke_token("00000000000000bb").unwrap();
    for bad in ["", "00000000000000AA", "00000000000000a", "00000000000000aag", "zzzzzzzzzzzzzzzz"]
    {
        assert!(matches!(a.revoke_token(bad), Err(Error::BadRequest(_))), "{bad:?}");
    }
    a.merge(b.view(), 0);
    b.merge(a.view(), 0);
    for n in [&a, &b] {
        assert!(n.is_token_revoked("00000000000000aa") && n.is_token_revoked("00000000000000bb"));
    }
    // A view without them removes nothing.
    a.merge(node("c").view(), 0);
    assert_eq!(a.revoked_tokens().len(), 2);
    // A malformed id in a view: the view's new tokens are not taken.
    let mut bad = node("c").view();
    bad.revoked_tokens = ["00000000000000cc", "NOT-HEX"].map(String::from).into();
    let notices = a.merge(bad, 0);
    assert!(notices.contains(&Notice::RevokedTokensFull { refused: 2 }), "{notices:?}");
    assert!(!a.is_token_revoked("00000000000000cc"));
    // Past the bound: refused as a whole; revoke_token at the bound is BadRequest.
    let mut full = node("c").view();
    full.revoked_tokens =
        (0..REVOKED_TOKENS_MAX as u64 - 1).map(|i| format!("{:016x}", (i + 1) << 32)).collect();
    let notices = a.merge(full.clone(), 0);
    assert!(matches!(notices[..], [Notice::RevokedTokensFull { .. }]), "{notices:?}");
    assert_eq!(a.revoked_tokens().len(), 2);
    let mut c = node("c");
    c.merge(full, 0);
    assert_eq!(c.revoked_tokens().len(), REVOKED_TOKENS_MAX - 1);
    assert_eq!(c.revoke_token("00000000000000aa"), Ok(true));
    assert!(matches!(c.revoke_token("00000000000000ab"), Err(Error::BadRequest(_))));
}
