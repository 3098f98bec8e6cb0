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
//! same one). A new node needs one seed's address to join. The view also carries the set of
//! revoked client tokens, merged as a grow-only set (see "Revoked tokens").
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
//! The **claimant** is the member with the smallest id among those this node sees up and
//! counts as members for ownership (below). When the members of the ring differ from those
//! members that have not left, the claimant rebalances ([`crate::ring::Ownership::rebalance`])
//! and gossip spreads the new epoch. A down member keeps its partitions (failure is not
//! departure; sloppy quorum covers it). Moving a partition's data to its new owner (ownership
//! handoff) is not done here: until it is, read repair and anti-entropy bring a new owner up
//! to date.
//!
//! ## Peer input is validated, never trusted
//! A view is what one peer says, about itself and, second hand, about others. A single
//! message must not be able to change who owns data, or to push a counter to where it can
//! never move again. So:
//! - **A member is proven before it owns anything.** A member learned from a view starts
//!   *unproven*. This node proves it by a direct exchange: the member answered this node's
//!   gossip naming itself at the address this node dialled ([`Membership::merge_from`] with
//!   the answerer), or it gossiped to this node naming itself, the sender being known from
//!   the connection ([`Membership::merge_from`] with the authenticated sender). Someone else's
//!   view naming it proves nothing. The claimant gives partitions only to proven members,
//!   and only they (or members the ring already gives partitions to: the claimant that put
//!   them there proved them) count for ownership and for electing the claimant, so a made-up
//!   member with a small id cannot stop rebalancing either. Each round this node also sends
//!   its view to up to [`PROBES_PER_ROUND`] unproven members that own nothing and are not
//!   down, so a real new member is proven within a few rounds.
//! - **The unproven are forgotten.** A member that stays unproven and owns no partition for
//!   [`UNPROVEN_FORGET_ROUNDS`] of this node's rounds is dropped, and its (incarnation,
//!   heartbeat) remembered (the last [`FORGOTTEN_MAX`] of them): a copy of the same entry,
//!   or an older one, that other nodes still gossip does not bring it back. A newer entry
//!   does (a real member's heartbeat advances), and so does a direct exchange with it: a
//!   forgotten member that really exists comes back the moment it talks to us. Hints are
//!   never kept for a member that owns no partition (the shell checks,
//!   `Cluster::check_hint_owner`), so an unproven one never collects writes.
//! - **Epochs and incarnations move forward by bounded steps.** A gossiped ring whose epoch
//!   is more than [`EPOCH_STEP_MAX`] (2^20) above this node's is refused, the ring only: the
//!   members' news in the same view is still taken (a heartbeat is no threat, and refusing
//!   the whole view would let one bad ring cut a node off from everyone's heartbeats). 2^20
//!   ring changes is more than a cluster makes in its life (one per join or leave), so an
//!   honest ring is never refused, and a forger needs 2^44 accepted steps to reach
//!   `u64::MAX`. A ring that names an owner that is neither a member this node knows nor one
//!   the same view names is refused too (a real claimant's view always names its owners). A
//!   member entry whose incarnation is more than [`INCARNATION_AHEAD_MS_MAX`] (one hour)
//!   ahead of this node's clock is refused: an incarnation is its node's wall-clock start
//!   time in milliseconds, and one forged near `u64::MAX` would make every later entry of
//!   that member, its own restarts included, look older forever. (This node's clock reading
//!   is its own incarnation plus the `now_ms` it has counted since it started.) A restored
//!   membership file is this node's own and is not held to the epoch bound
//!   ([`Membership::restore`]).
//! - **Nothing wraps.** The ring epoch, this node's heartbeat and its round count use checked
//!   arithmetic; at `u64::MAX` the claimant refuses to rebalance ([`Notice::EpochExhausted`])
//!   and [`Membership::tick`] answers [`Error::Overflow`], never a wrap to 0 that would make
//!   the node's news look older than everyone's.
//! - **Everything is bounded.** At most [`MEMBERS_MAX`] members (a view naming more is
//!   refused by the wire, new members beyond it are refused here), ids as the config checks
//!   them, addresses and digests of bounded length.
//!
//! Heartbeats are not bounded in step: a forged huge heartbeat of a member makes that
//! member's own news look older only until it restarts (a new incarnation beats any
//! heartbeat), and any bound on steps would refuse a member that was away for long.
//!
//! ## Revoked tokens
//! Client tokens revoked on any node ([`Membership::revoke_token`]) travel with the view: a
//! grow-only set of token ids, each exactly 16 lowercase hex digits, merged by union, at most
//! [`REVOKED_TOKENS_MAX`]. A view whose own set is malformed or over the bound is refused by
//! the wire; one whose ids would take this node's set past the bound leaves the set as it is
//! ([`Notice::RevokedTokensFull`]). The set is kept in the membership file, so it survives
//! restarts. Revocation cannot be undone: a token is dropped from the set only by a new
//! cluster secret (which makes every old token invalid anyway).

use std::collections::{BTreeMap, BTreeSet};

use super::changes::Change;
use crate::error::Error;
use crate::ring::Ownership;

mod ownership;

/// Failed RPCs in a row after which a member is down.
pub const RPC_FAILURES_DOWN: u32 = 3;

/// Members known to this node, other than itself, below which it also gossips with a seed.
pub const SEED_GOSSIP_BELOW: usize = 2;

/// How far above this node's ring epoch a gossiped ring's epoch may be; a ring further
/// ahead is refused (see "Peer input is validated" in the module doc).
pub const EPOCH_STEP_MAX: u64 = 1 << 20;

/// How far ahead of this node's clock, in milliseconds, a member's incarnation (its start
/// time) may be; an entry further ahead is refused: one hour.
pub const INCARNATION_AHEAD_MS_MAX: u64 = 60 * 60 * 1_000;

/// Rounds of this node after which a member that is still unproven and owns no partition is
/// forgotten.
pub const UNPROVEN_FORGET_ROUNDS: u64 = 30;

/// Unproven members this node sends its view to each round, besides its gossip peer.
pub const PROBES_PER_ROUND: usize = 2;

/// Forgotten entries remembered (so that stale copies do not bring them back); beyond it the
/// oldest is dropped, and a stale copy of it may then come back for another
/// [`UNPROVEN_FORGET_ROUNDS`].
pub const FORGOTTEN_MAX: usize = 4_096;

/// Members a node knows, itself included; a view naming more is refused, and new members
/// beyond it are not taken.
pub const MEMBERS_MAX: usize = 4_096;

/// Longest member address taken from a view, in bytes.
pub const ADDRESS_BYTES_MAX: usize = 255;

/// Longest bucket-configuration digest taken from a view, in bytes.
pub const CONFIG_DIGEST_BYTES_MAX: usize = 64;

/// Most revoked token ids a view, and this node, holds.
pub const REVOKED_TOKENS_MAX: usize = 10_000;

/// Characters of a token id: lowercase hex digits.
pub const TOKEN_ID_CHARS: usize = 16;

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
    /// The partitions of the ring transition in flight it copied and verified.
    pub holds: Holds,
    /// Live bytes it stores, all buckets, as it last said (for `status`).
    pub data_bytes: u64,
}

/// What a member says it holds of a ring transition ([`crate::ring::transition`]): the
/// partitions it copied from their current replicas and verified, for the transition named
/// by its id (0 and nothing: none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Holds {
    /// The transition's id.
    pub transition: u64,
    /// Partitions it holds for that transition.
    pub partitions: BTreeSet<u16>,
}

/// A gossiped view: members, ring and revoked tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    /// Every member the sender knows, itself included.
    pub members: Vec<MemberInfo>,
    /// The sender's ring.
    pub ring: Ownership,
    /// Ids of the client tokens revoked in the cluster, as far as the sender knows (each
    /// [`TOKEN_ID_CHARS`] lowercase hex digits, at most [`REVOKED_TOKENS_MAX`]).
    pub revoked_tokens: BTreeSet<String>,
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
    /// When it last answered a call of this node, or called this node (0: never).
    answered_at_ms: u64,
    /// This node has had a direct exchange with it (always true for this node itself).
    proven: bool,
    /// This node's round when it learnt of the member (again, after forgetting it).
    learned_round: u64,
}

/// What is remembered of a forgotten member: its entry's (incarnation, heartbeat), and the
/// round it was forgotten in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Forgotten {
    news: (u64, u64),
    round: u64,
}

/// Something a merge or a tick noticed, for the shell to log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// A member this node did not know.
    Joined(String),
    /// A member whose bucket configuration differs from this node's.
    ConfigMismatch(String),
    /// The ring changed to a new epoch.
    RingChanged(u64),
    /// A gossiped ring was refused (logged at warn).
    RingRefused {
        /// Its epoch.
        epoch: u64,
        /// Why.
        reason: String,
    },
    /// A gossiped member entry was refused (logged at warn).
    MemberRefused {
        /// The id it named.
        id: String,
        /// Why.
        reason: String,
    },
    /// A member that stayed unproven and owned nothing was forgotten.
    Forgotten(String),
    /// A view's revoked tokens would take this node's set past [`REVOKED_TOKENS_MAX`], or
    /// were malformed: they were not taken (logged at error: tokens may be in use that other
    /// nodes refuse).
    RevokedTokensFull {
        /// Ids the view had that this node did not.
        refused: usize,
    },
    /// The claimant cannot rebalance: the ring epoch is at `u64::MAX` (logged at error).
    EpochExhausted,
}

/// This node's membership state machine.
#[derive(Clone, Debug)]
pub struct Membership {
    me: String,
    members: BTreeMap<String, Known>,
    ring: Ownership,
    target_n: usize,
    timing: Timing,
    /// Ticks since the start.
    round: u64,
    /// Members forgotten unproven, by id.
    forgotten: BTreeMap<String, Forgotten>,
    revoked_tokens: BTreeSet<String>,
    /// Changes staged on this node (the claimant's are the ones that count).
    staged: Vec<Change>,
    /// Whether the claimant joins new members by itself (`cluster.auto_join`).
    auto_join: bool,
}

/// Check a client token id: exactly [`TOKEN_ID_CHARS`] lowercase hex digits.
pub fn check_token_id(id: &str) -> Result<(), Error> {
    let hex = |c: u8| c.is_ascii_digit() || (b'a'..=b'f').contains(&c);
    if id.len() == TOKEN_ID_CHARS && id.bytes().all(hex) {
        return Ok(());
    }
    Err(Error::BadRequest(format!(
        "token id {:?} is not {TOKEN_ID_CHARS} lowercase hex digits",
        id.chars().take(2 * TOKEN_ID_CHARS).collect::<String>()
    )))
}

/// Why a gossiped member entry cannot be taken, whoever sent it: an id the config would
/// refuse, an address or digest over its bound.
fn check_member(info: &MemberInfo) -> Result<(), String> {
    crate::config::check_name(&info.id)?;
    if info.id.len() > crate::actors::NODE_ID_BYTES_MAX {
        return Err(format!("id over {} bytes", crate::actors::NODE_ID_BYTES_MAX));
    }
    if info.address.is_empty() || info.address.len() > ADDRESS_BYTES_MAX {
        return Err(format!("address of {} bytes (1 to {ADDRESS_BYTES_MAX})", info.address.len()));
    }
    if info.config_digest.len() > CONFIG_DIGEST_BYTES_MAX {
        return Err(format!("config digest over {CONFIG_DIGEST_BYTES_MAX} bytes"));
    }
    Ok(())
}

/// Whose word a merged view is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source<'a> {
    /// This node's own membership file.
    Restored,
    /// A peer, relaying what it knows.
    Relayed,
    /// A peer this node is exchanging with directly (known by the connection, or by the
    /// address this node dialled): its own entry proves it.
    Direct(&'a str),
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
        let known = Known {
            info: me,
            advanced_at_ms: now_ms,
            rpc_failures: 0,
            answered_at_ms: 0,
            proven: true,
            learned_round: 0,
        };
        members.insert(id.clone(), known);
        Self {
            me: id,
            members,
            ring,
            target_n,
            timing,
            round: 0,
            forgotten: BTreeMap::new(),
            revoked_tokens: BTreeSet::new(),
            staged: Vec::new(),
            auto_join: true,
        }
    }

    /// Whether the claimant joins new members by itself (the default) or waits for a staged
    /// `join` ([`super::changes`]).
    pub fn set_auto_join(&mut self, auto_join: bool) {
        self.auto_join = auto_join;
    }

    /// This node's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The largest N of the buckets: the ring layout's window, and the depth at which ring
    /// transitions count receivers.
    pub fn target_n(&self) -> usize {
        self.target_n
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

    /// Whether `id` is a member this node knows (itself included).
    pub fn is_member(&self, id: &str) -> bool {
        self.members.contains_key(id)
    }

    /// Whether this node has proven `id` by a direct exchange (see the module doc); always
    /// true for itself.
    pub fn is_proven(&self, id: &str) -> bool {
        self.members.get(id).is_some_and(|k| k.proven)
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

    /// A gossip round: bump this node's heartbeat, forget members that stayed unproven too
    /// long, let the claimant rebalance, and return the view to send. [`Error::Overflow`]
    /// (and nothing changed) if the heartbeat is at `u64::MAX`.
    pub fn tick(&mut self, now_ms: u64) -> Result<(View, Vec<Notice>), Error> {
        let me = self.members.get_mut(&self.me).expect("this node is always a member");
        let exhausted = |what: &str| Error::Overflow(format!("this node's {what} is at u64::MAX"));
        let heartbeat = me.info.heartbeat.checked_add(1).ok_or_else(|| exhausted("heartbeat"))?;
        let round = self.round.checked_add(1).ok_or_else(|| exhausted("round count"))?;
        me.info.heartbeat = heartbeat;
        me.advanced_at_ms = now_ms;
        self.round = round;
        let mut notices = self.forget_unproven();
        notices.extend(self.claim(now_ms));
        Ok((self.view(), notices))
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
        // Members whose last call failed are left to [`Membership::recovery_probe`]: a round
        // spent on an unreachable member is a round without news for the reachable ones (on
        // the small side of a split, members would take each other for silent).
        let reachable: Vec<&Known> =
            others.iter().copied().filter(|k| k.rpc_failures == 0).collect();
        let pool = if reachable.is_empty() { &others } else { &reachable };
        Some(pool[random as usize % pool.len()].info.address.clone())
    }

    /// One member whose last call failed, to gossip with this round as well (a random one):
    /// how a member cut off comes back within a round or two of a heal.
    pub fn recovery_probe(&self, random: u64) -> Option<(String, String)> {
        let failing: Vec<&Known> =
            self.members.values().filter(|k| k.info.id != self.me && k.rpc_failures > 0).collect();
        let known = failing.get((random >> 17) as usize % failing.len().max(1))?;
        Some((known.info.id.clone(), known.info.address.clone()))
    }

    /// The unproven members to send this node's view to this round, as (id, address): at
    /// most [`PROBES_PER_ROUND`] of those that own no partition and are not down by failed
    /// calls, rotating with the round. An answer naming the member proves it
    /// ([`Membership::merge_from`]).
    pub fn probes(&self) -> Vec<(String, String)> {
        let owners = self.owners();
        let candidates: Vec<&Known> = self
            .members
            .values()
            .filter(|k| !k.proven && !owners.contains(k.info.id.as_str()))
            .filter(|k| k.rpc_failures < RPC_FAILURES_DOWN)
            .collect();
        if candidates.is_empty() {
            return Vec::new();
        }
        let start = (self.round % candidates.len() as u64) as usize;
        (0..candidates.len().min(PROBES_PER_ROUND))
            .map(|i| candidates[(start + i) % candidates.len()])
            .map(|k| (k.info.id.clone(), k.info.address.clone()))
            .collect()
    }

    /// This node's view, to send.
    pub fn view(&self) -> View {
        View {
            members: self.members.values().map(|k| k.info.clone()).collect(),
            ring: self.ring.clone(),
            revoked_tokens: self.revoked_tokens.clone(),
        }
    }

    /// Merge a view from a peer whose identity this node does not know (or that relays):
    /// it proves no one.
    pub fn merge(&mut self, view: View, now_ms: u64) -> Vec<Notice> {
        self.merge_view(view, now_ms, Source::Relayed)
    }

    /// Merge a view that `sender` sent or answered directly: the peer authenticated as
    /// `sender` on the connection, or the one that answered at the address this node dialled.
    /// If the view names `sender` (its own entry), that entry proves it and is taken even if
    /// `sender` was forgotten.
    pub fn merge_from(&mut self, sender: &str, view: View, now_ms: u64) -> Vec<Notice> {
        self.merge_view(view, now_ms, Source::Direct(sender))
    }

    /// Merge the view of this node's own membership file at start: as a relayed view, but
    /// its ring is not held to [`EPOCH_STEP_MAX`] (this node wrote it).
    pub fn restore(&mut self, view: View, now_ms: u64) -> Vec<Notice> {
        self.merge_view(view, now_ms, Source::Restored)
    }

    fn merge_view(&mut self, view: View, now_ms: u64, source: Source<'_>) -> Vec<Notice> {
        let mut notices = Vec::new();
        let View { members, ring, revoked_tokens } = view;
        let members: Vec<MemberInfo> = members
            .into_iter()
            .filter(|info| info.id != self.me) // Others' news of this node is older than its own.
            .filter(|info| match self.check_entry(info, now_ms) {
                Ok(()) => true,
                Err(reason) => {
                    notices.push(Notice::MemberRefused { id: info.id.clone(), reason });
                    false
                }
            })
            .collect();
        let take_ring = self.check_ring(&ring, &members, source, &mut notices);
        self.merge_revoked(revoked_tokens, &mut notices);
        let owners: BTreeSet<String> = if take_ring {
            ring.owners.iter().cloned().collect()
        } else {
            self.ring.owners.iter().cloned().collect()
        };
        let direct = match source {
            Source::Direct(sender) => Some(sender),
            Source::Relayed | Source::Restored => None,
        };
        // A direct sender proves itself only by naming itself.
        let proven = direct.filter(|sender| members.iter().any(|m| m.id == *sender));
        for info in members {
            let vouched = owners.contains(&info.id) || direct == Some(info.id.as_str());
            self.merge_entry(info, now_ms, vouched, &mut notices);
        }
        if take_ring {
            notices.push(Notice::RingChanged(ring.epoch));
            self.ring = ring;
        }
        if let Some(known) = proven.and_then(|sender| self.members.get_mut(sender)) {
            known.proven = true;
            known.answered_at_ms = known.answered_at_ms.max(now_ms);
        }
        notices
    }

    /// Why a member entry that passed [`check_member`] is refused here: an incarnation too
    /// far ahead of this node's clock.
    fn check_entry(&self, info: &MemberInfo, now_ms: u64) -> Result<(), String> {
        check_member(info)?;
        let bound = self.clock_ms(now_ms).saturating_add(INCARNATION_AHEAD_MS_MAX);
        if info.incarnation > bound {
            return Err(format!(
                "incarnation {} is more than {INCARNATION_AHEAD_MS_MAX} ms ahead of this \
                 node's clock ({} ms): check the clocks",
                info.incarnation,
                self.clock_ms(now_ms)
            ));
        }
        Ok(())
    }

    /// This node's wall clock, as it knows it: its incarnation (its start time) plus the
    /// milliseconds counted since.
    fn clock_ms(&self, now_ms: u64) -> u64 {
        self.members[&self.me].info.incarnation.saturating_add(now_ms)
    }

    /// Whether to take a gossiped ring: newer than ours (the greater epoch, ties to the
    /// smaller owners vector), of our partition count, within [`EPOCH_STEP_MAX`] of our
    /// epoch (unless restored), and naming only owners that are members.
    fn check_ring(
        &self,
        theirs: &Ownership,
        members: &[MemberInfo],
        source: Source<'_>,
        notices: &mut Vec<Notice>,
    ) -> bool {
        let ours = &self.ring;
        let newer = (theirs.epoch, std::cmp::Reverse(&theirs.owners))
            > (ours.epoch, std::cmp::Reverse(&ours.owners));
        if theirs.owners.len() != ours.owners.len() || !newer {
            return false;
        }
        let mut refuse = |reason: String| {
            notices.push(Notice::RingRefused { epoch: theirs.epoch, reason });
            false
        };
        if source != Source::Restored && theirs.epoch > ours.epoch.saturating_add(EPOCH_STEP_MAX) {
            return refuse(format!(
                "epoch {} is more than {EPOCH_STEP_MAX} above this node's {}",
                theirs.epoch, ours.epoch
            ));
        }
        let named =
            |id: &String| self.members.contains_key(id) || members.iter().any(|m| &m.id == id);
        let next = theirs.next.iter().flat_map(|t| &t.owners);
        if let Some(stranger) = theirs.owners.iter().chain(next).find(|owner| !named(owner)) {
            return refuse(format!("it names {stranger:?}, which is not a member"));
        }
        true
    }

    /// Take one checked member entry. `vouched`: the ring being kept gives it partitions, or
    /// it is the direct sender's own entry; such an entry is taken even if forgotten.
    fn merge_entry(
        &mut self,
        info: MemberInfo,
        now_ms: u64,
        vouched: bool,
        notices: &mut Vec<Notice>,
    ) {
        let my_digest = self.members[&self.me].info.config_digest.clone();
        let news = (info.incarnation, info.heartbeat);
        if let Some(known) = self.members.get_mut(&info.id) {
            if news > (known.info.incarnation, known.info.heartbeat) {
                if info.config_digest != known.info.config_digest && info.config_digest != my_digest
                {
                    notices.push(Notice::ConfigMismatch(info.id.clone()));
                }
                known.info = info;
                known.advanced_at_ms = now_ms;
                known.rpc_failures = 0;
            }
            return;
        }
        let stale = self.forgotten.get(&info.id).is_some_and(|f| news <= f.news);
        if stale && !vouched {
            return;
        }
        if self.members.len() >= MEMBERS_MAX {
            let reason = format!("this node knows {MEMBERS_MAX} members already");
            notices.push(Notice::MemberRefused { id: info.id, reason });
            return;
        }
        self.forgotten.remove(&info.id);
        notices.push(Notice::Joined(info.id.clone()));
        if info.config_digest != my_digest {
            notices.push(Notice::ConfigMismatch(info.id.clone()));
        }
        let id = info.id.clone();
        let known = Known {
            info,
            advanced_at_ms: now_ms,
            rpc_failures: 0,
            answered_at_ms: 0,
            proven: false,
            learned_round: self.round,
        };
        self.members.insert(id, known);
    }

    /// Union a view's revoked tokens into ours, unless malformed or over the bound.
    fn merge_revoked(&mut self, theirs: BTreeSet<String>, notices: &mut Vec<Notice>) {
        let new: Vec<String> =
            theirs.into_iter().filter(|id| !self.revoked_tokens.contains(id)).collect();
        if new.is_empty() {
            return;
        }
        let malformed = new.iter().any(|id| check_token_id(id).is_err());
        if malformed || self.revoked_tokens.len() + new.len() > REVOKED_TOKENS_MAX {
            notices.push(Notice::RevokedTokensFull { refused: new.len() });
            return;
        }
        self.revoked_tokens.extend(new);
    }

    /// Forget the members that stayed unproven and owned nothing for
    /// [`UNPROVEN_FORGET_ROUNDS`] rounds; remember their news.
    fn forget_unproven(&mut self) -> Vec<Notice> {
        let owners = self.owners();
        let round = self.round;
        let stale: Vec<String> = self
            .members
            .values()
            .filter(|k| !k.proven && !owners.contains(k.info.id.as_str()))
            .filter(|k| round.saturating_sub(k.learned_round) >= UNPROVEN_FORGET_ROUNDS)
            .map(|k| k.info.id.clone())
            .collect();
        let mut notices = Vec::new();
        for id in stale {
            let known = self.members.remove(&id).expect("listed above");
            let news = (known.info.incarnation, known.info.heartbeat);
            self.forgotten.insert(id.clone(), Forgotten { news, round });
            notices.push(Notice::Forgotten(id));
        }
        while self.forgotten.len() > FORGOTTEN_MAX {
            let oldest = self
                .forgotten
                .iter()
                .min_by_key(|(id, f)| (f.round, (*id).clone()))
                .map(|(id, _)| id.clone())
                .expect("not empty");
            self.forgotten.remove(&oldest);
        }
        notices
    }

    /// The ids that own partitions in the ring, or will in the next one.
    fn owners(&self) -> BTreeSet<&str> {
        let next = self.ring.next.iter().flat_map(|t| &t.owners);
        self.ring.owners.iter().chain(next).map(String::as_str).collect()
    }

    /// An RPC to `id` succeeded at `now_ms`: it answered, so it is alive now, whatever gossip
    /// says of its heartbeat (a node that gossip has not reached for a while, e.g. because
    /// its rounds picked members cut off by a partition, is not taken for silent).
    pub fn rpc_succeeded(&mut self, id: &str, now_ms: u64) {
        if let Some(known) = self.members.get_mut(id) {
            known.rpc_failures = 0;
            known.advanced_at_ms = known.advanced_at_ms.max(now_ms);
            known.answered_at_ms = known.answered_at_ms.max(now_ms);
        }
    }

    /// An RPC to `id` that started at `started_ms` failed (connection refused, reset, timed
    /// out). Ignored if `id` answered a call, or called this node, after it started: the
    /// failure is older news than that (a call sent into a partition that times out after the
    /// heal says nothing about the healed peer).
    pub fn rpc_failed(&mut self, id: &str, started_ms: u64) {
        if let Some(known) = self.members.get_mut(id) {
            if known.answered_at_ms <= started_ms {
                known.rpc_failures = known.rpc_failures.saturating_add(1);
            }
        }
    }

    /// The member id at `address`, if known.
    pub fn id_at(&self, address: &str) -> Option<&str> {
        self.members.values().find(|k| k.info.address == address).map(|k| k.info.id.as_str())
    }

    /// Add a client token id to the revoked set: `Ok(true)` if it is new, `Ok(false)` if it
    /// was revoked already. [`Error::BadRequest`] for an id that is not
    /// [`TOKEN_ID_CHARS`] lowercase hex digits, or when the set holds
    /// [`REVOKED_TOKENS_MAX`] ids already.
    pub fn revoke_token(&mut self, id: &str) -> Result<bool, Error> {
        check_token_id(id)?;
        if self.revoked_tokens.contains(id) {
            return Ok(false);
        }
        if self.revoked_tokens.len() >= REVOKED_TOKENS_MAX {
            return Err(Error::BadRequest(format!(
                "the cluster holds {REVOKED_TOKENS_MAX} revoked tokens, its limit: change the \
                 cluster secret to invalidate every token instead"
            )));
        }
        self.revoked_tokens.insert(id.to_string());
        Ok(true)
    }

    /// Whether the token `id` was revoked: one set lookup.
    pub fn is_token_revoked(&self, id: &str) -> bool {
        self.revoked_tokens.contains(id)
    }

    /// The revoked token ids.
    pub fn revoked_tokens(&self) -> &BTreeSet<String> {
        &self.revoked_tokens
    }

    /// Whether `id` counts as a member for ownership: this node, a proven member, or one the
    /// ring gives partitions to.
    fn counts_for_ownership(&self, known: &Known, owners: &BTreeSet<&str>) -> bool {
        known.info.id == self.me || known.proven || owners.contains(known.info.id.as_str())
    }
}

#[cfg(test)]
#[path = "membership_tests.rs"]
mod tests;
