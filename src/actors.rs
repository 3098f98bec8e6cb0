//! # Actors: who issues a dot, and when a node takes a new epoch
//!
//! A causal resolver names each write by a **dot** `(actor, counter)` and takes the counter
//! from what the coordinator's state records of its actor ([`Resolver::issued`]). If that
//! state lost some of the actor's writes, the next write gets a dot another replica already
//! holds for a different write, and the merge keeps one of the two, or neither: an
//! acknowledged cart add, set element, increment or value is gone (Riak's kv679). So the
//! node promises the resolver contract's precondition (`resolvers/src/lib.rs`, "A dot is never
//! issued twice"; DESIGN §4):
//!
//! > every dot an actor issues for a key is issued on a state that holds every dot that actor
//! > issued for that key before, or by an actor that never wrote to that key.
//!
//! ## The mechanism
//! An actor is `node id` + `/` + an **epoch** of 16 hex digits. A node has two:
//! - the **replica actor**, for writes it coordinates as one of the key's primaries. Such a
//!   write is applied to the key's state in the bucket's engine and stored there before any
//!   replica sees it. So every dot of the replica actor is in the local engine, as long as
//!   (a) the engine loses nothing while the node runs, and (b) the node deletes no copy that
//!   holds one of them. (a) holds for every engine: a put is visible until a crash, and an
//!   engine recovers from its files only when it is opened (an engine that learns to recover
//!   while the node runs must make the node [`Actors::renew`] its replica epoch); (b) is the
//!   one place that deletes copies, ownership handoff, which takes a new replica epoch when a
//!   copy it drops records the current one ([`Actors::dropped`]).
//! - the **hint actor**, for writes it coordinates for a key it does not replicate (every
//!   primary down, or a forwarded write that reached a node which no longer is a primary).
//!   Such a write is applied to the merge of the hints this node holds for the key and stored
//!   as a hint, never in the bucket's engine (no stray copies). Every dot of the hint actor is
//!   therefore in the hint store until a hint is delivered and deleted; a deleted hint that
//!   records the current hint epoch makes the node take a new one.
//!
//! Both epochs are drawn at every start, from a generator seeded by the operating system
//! (`/dev/urandom`), never read back from disk. A start therefore never reuses an epoch,
//! whatever the data directory went through: a kill -9 that dropped unsynced writes, a
//! truncated torn tail, a restored backup, a copied directory. Every other node forwards
//! dot-issuing writes to a primary ([`crate::cluster`]), so no node writes with an actor whose
//! history it lacks. Two epochs of one node collide with probability about `k² / 2⁶⁵` after
//! `k` epochs: 3 × 10⁻⁸ after a million.
//!
//! ## What it costs
//! A key's clock holds one entry per (node, epoch) that coordinated a write to it: at most
//! N primaries × (their starts and handoff drops while the key was written) + nodes that
//! coordinated it as a non-replica × (their starts and hint deliveries in that time). A
//! cart written through 3 primaries that each restart 100 times holds about 300 clock
//! entries of about 30 bytes each (9 KB), where a fixed actor per node would hold 3. Old
//! entries are not compacted: an entry may be dropped only once every replica holds every
//! dot it stands for, the same knowledge that collecting tombstones needs (not built yet).
//! The check on a dropped copy decodes its state once, off the request path.
//!
//! [`Resolver::issued`]: cartwheel_resolvers::Resolver::issued

use std::io::Read as _;
use std::sync::Mutex;

use cartwheel_resolvers::codec::ACTOR_BYTES_MAX;

/// Bytes an epoch adds to a node id to make an actor: `/` and 16 hex digits.
pub const EPOCH_SUFFIX_BYTES: usize = 1 + 16;

/// Longest node id: its actors must fit [`ACTOR_BYTES_MAX`].
pub const NODE_ID_BYTES_MAX: usize = ACTOR_BYTES_MAX - EPOCH_SUFFIX_BYTES;

/// Which of a node's actors a write uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A write coordinated by one of the key's primaries, kept in the bucket's engine.
    Replica,
    /// A write coordinated by a node that does not replicate the key, kept as a hint.
    Hint,
}

/// A node's two actors and the generator of their epochs. Safe to share between threads.
#[derive(Debug)]
pub struct Actors {
    node_id: String,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    replica: Vec<u8>,
    hint: Vec<u8>,
    /// Every draw of one SplitMix64 generator is a different epoch.
    generator: crate::rng::Rng,
    /// Epochs taken since the start (both roles).
    renewals: u64,
}

impl Actors {
    /// Actors for `node_id` with epochs from a generator seeded by the operating system.
    pub fn new(node_id: &str) -> Self {
        Self::with_seed(node_id, os_seed())
    }

    /// Actors whose epochs come from `seed`: the same seed gives the same epochs (for
    /// simulations and tests).
    pub fn with_seed(node_id: &str, seed: u64) -> Self {
        assert!(node_id.len() <= NODE_ID_BYTES_MAX, "node ids are checked by the config");
        let mut state = State {
            replica: Vec::new(),
            hint: Vec::new(),
            generator: crate::rng::Rng::new(seed),
            renewals: 0,
        };
        state.replica = actor(node_id, state.next_epoch());
        state.hint = actor(node_id, state.next_epoch());
        Self { node_id: node_id.to_string(), state: Mutex::new(state) }
    }

    /// The actor for a write in `role`.
    pub fn actor(&self, role: Role) -> Vec<u8> {
        let state = self.state.lock().expect("no panic while held");
        match role {
            Role::Replica => state.replica.clone(),
            Role::Hint => state.hint.clone(),
        }
    }

    /// A copy of a key that `issued` says records `recorded` of the `role` actor was deleted:
    /// take a new epoch for that role when it recorded any write of the current one. Returns
    /// whether a new epoch was taken.
    pub fn dropped(&self, role: Role, recorded: u64) -> bool {
        if recorded == 0 {
            return false;
        }
        self.renew(role);
        true
    }

    /// Take a new epoch for `role`: the next write of that role starts a fresh history.
    pub fn renew(&self, role: Role) {
        let mut state = self.state.lock().expect("no panic while held");
        let fresh = actor(&self.node_id, state.next_epoch());
        state.renewals += 1;
        let old = match role {
            Role::Replica => std::mem::replace(&mut state.replica, fresh),
            Role::Hint => std::mem::replace(&mut state.hint, fresh),
        };
        tracing::debug!(old = %String::from_utf8_lossy(&old), ?role, "new actor epoch");
    }

    /// Epochs taken since the start, beyond the first two.
    pub fn renewals(&self) -> u64 {
        self.state.lock().expect("no panic while held").renewals
    }
}

impl State {
    fn next_epoch(&mut self) -> u64 {
        self.generator.next_u64()
    }
}

fn actor(node_id: &str, epoch: u64) -> Vec<u8> {
    format!("{node_id}/{epoch:016x}").into_bytes()
}

/// 64 random bits from the operating system; the clock and the process id where it has none.
fn os_seed() -> u64 {
    let mut bytes = [0u8; 8];
    match std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(e) => {
            tracing::warn!(error = %e, "no /dev/urandom: actor epochs seeded from the clock");
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            nanos ^ (u64::from(std::process::id()) << 32)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Actors are the node id, a slash and 16 hex digits; the two roles differ; the same
    /// seed gives the same actors and another seed others.
    #[test]
    fn actors_name_the_node_and_an_epoch() {
        let a = Actors::with_seed("n1", 7);
        let replica = String::from_utf8(a.actor(Role::Replica)).unwrap();
        assert!(replica.starts_with("n1/") && replica.len() == 2 + EPOCH_SUFFIX_BYTES);
        assert_ne!(a.actor(Role::Replica), a.actor(Role::Hint));
        assert_eq!(Actors::with_seed("n1", 7).actor(Role::Replica), a.actor(Role::Replica));
        assert_ne!(Actors::with_seed("n1", 8).actor(Role::Replica), a.actor(Role::Replica));
    }

    /// A dropped copy that recorded the current epoch renews only that role; one that did
    /// not record it renews nothing; renewals never repeat an epoch.
    #[test]
    fn dropping_a_copy_with_the_current_epoch_takes_a_new_one() {
        let a = Actors::with_seed("n1", 1);
        let (replica, hint) = (a.actor(Role::Replica), a.actor(Role::Hint));
        assert!(!a.dropped(Role::Replica, 0));
        assert_eq!(a.actor(Role::Replica), replica);
        assert!(a.dropped(Role::Replica, 3));
        assert_ne!(a.actor(Role::Replica), replica);
        assert_eq!(a.actor(Role::Hint), hint);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            a.renew(Role::Hint);
            assert!(seen.insert(a.actor(Role::Hint)), "an epoch came twice");
        }
        assert_eq!(a.renewals(), 10_001);
    }

    /// The longest node id still makes an actor the resolvers accept.
    #[test]
    fn the_longest_node_id_fits() {
        let id = "x".repeat(NODE_ID_BYTES_MAX);
        let a = Actors::with_seed(&id, 1);
        assert_eq!(a.actor(Role::Replica).len(), ACTOR_BYTES_MAX);
        cartwheel_resolvers::causal::check_actor(&a.actor(Role::Hint)).unwrap();
    }
}
