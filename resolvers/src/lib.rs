//! # cartwheel-resolvers: what a key's value *is* when replicas disagree
//!
//! A cartwheel bucket never refuses a write, so replicas diverge and must be reconciled. A
//! [`Resolver`] owns the encoding of a key's **state** (the bytes a storage engine stores for
//! it), turns client writes into new states at the coordinator ([`Resolver::apply`]),
//! reconciles two replicas' states ([`Resolver::merge`]), and shows a state to a client
//! ([`Resolver::read`]). This crate knows nothing of the network or of storage engines.
//!
//! ## The map
//! - [`Resolver`]: the object-safe contract, with the merge laws, used as `Arc<dyn Resolver>`.
//! - [`hlc`]: the hybrid logical clock that stamps writes (physical ms + logical counter).
//! - [`codec`]: the canonical byte encoding shared by every state: a type tag and a version
//!   byte in front, then fixed-width big-endian fields and sorted collections.
//! - [`causal`]: dots, version vectors (with dot clouds) and the dot map shared by the
//!   causal resolvers, with client contexts, deferred removes and deltas.
//! - [`siblings`]: Dynamo versioning with dotted version vectors; concurrent puts become
//!   siblings, a put with a read's context supersedes exactly what was read, deletes leave a
//!   tombstone with a clock, and a sibling hard limit refuses puts (never merges).
//! - [`lww`]: last write wins by HLC timestamp, ties broken by actor id.
//! - [`orset`]: add-wins observed-remove set without tombstones (dots + version vector).
//! - [`pncounter`]: per-actor increment and decrement totals, and per-actor baselines that an
//!   observed reset raises; a write that would overflow them or the value is refused
//!   ([`ResolveError::Overflow`]).
//! - [`cart`]: the shopping cart, an observed-remove map from item to quantity; a concurrent
//!   add and remove keeps the item, adds from replicas add up, concurrent set-quantities
//!   resolve to the largest value set, and the size is bounded by items × actors.
//!
//! Every CRDT has a whole-object delete with observed-remove semantics ([`Op::CartClear`],
//! [`Op::SetClear`], [`Op::CounterReset`]): it takes off what the write's context observed,
//! and what was written concurrently survives it.
//! - [`ResolverKind`] and [`build`]: the names a bucket's configuration uses, and the factory.
//!
//! The shared law suite lives in `resolvers/tests/laws.rs`: every resolver runs it, and the
//! CRDTs the delta laws on top.
//!
//! ## Deltas
//! A CRDT write ([`Resolver::apply_with_delta`]) returns, next to the new state, a **delta**:
//! the smallest state that carries the write (the dots it added, a causal context of exactly
//! the dots it issued or removed; for `pncounter`, the actor entries it changed). The node
//! stores the new state and sends the delta to the other replicas, which take it with
//! [`Resolver::merge`] like any state; anti-entropy, read repair and handoff move whole
//! states. The coordinator still decodes and encodes the whole state for each write.
//!
//! ## Actors and clocks
//! The coordinator of a write passes a [`Stamp`]: its **actor** id (the node id, never a client
//! id, so version vectors stay as small as the cluster) and a reading of its hybrid logical
//! clock. Resolvers are pure functions of their inputs: no resolver reads the time itself.
//!
//! ## Input from peers and clients is checked
//! States and contexts come from other nodes and from clients, and a state that decodes may
//! still be forged. So no counter wraps or silently saturates on a write: clock readings,
//! dots, counter totals and cart quantities use checked arithmetic, and a write that would
//! pass a limit is refused with [`ResolveError::Overflow`] and produces no state. Every
//! resolver refuses a context it did not produce ([`ResolveError::BadContext`]). And
//! [`Resolver::max_timestamp_ms`] tells the node how far in the future a state is stamped,
//! so that it can refuse a replicated state from a clock (or a forger) far ahead of its own.

pub mod cart;
pub mod causal;
pub mod codec;
pub mod hlc;
pub mod lww;
pub mod orset;
pub mod pncounter;
pub mod siblings;

use std::fmt;
use std::sync::Arc;

pub use hlc::{HybridClock, Timestamp};

/// The coordinator's identity and clock reading for one write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stamp {
    /// The coordinating node's id (server-side actor). At most [`codec::ACTOR_BYTES_MAX`] bytes.
    pub actor: Vec<u8>,
    /// A reading of the coordinator's hybrid logical clock, taken for this write.
    pub time: Timestamp,
}

/// A client write, as it reaches the coordinator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    /// Replace the value(s) the context observed with `value`.
    Put {
        /// The new value.
        value: Vec<u8>,
        /// The opaque context of an earlier read, or empty for a blind write.
        context: Vec<u8>,
    },
    /// Delete what the context observed.
    Delete {
        /// The opaque context of an earlier read, or empty.
        context: Vec<u8>,
    },
    /// Apply CRDT operations, in order, as one write.
    Update {
        /// The operations.
        ops: Vec<Op>,
        /// The opaque context of an earlier read, or empty.
        context: Vec<u8>,
    },
}

impl Write {
    /// The operation's name in error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Put { .. } => "put",
            Self::Delete { .. } => "delete",
            Self::Update { ops, .. } => ops.first().map_or("update", Op::name),
        }
    }
}

/// A CRDT operation carried by [`Write::Update`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Add to a counter (negative = decrement).
    CounterIncrement(i64),
    /// Add an element to a set.
    SetAdd(Vec<u8>),
    /// Remove an element from a set (only what the context observed).
    SetRemove(Vec<u8>),
    /// Add `quantity` (> 0) of `item` to a cart.
    CartAdd {
        /// The item id.
        item: Vec<u8>,
        /// How many to add.
        quantity: i64,
    },
    /// Remove an item from a cart (only what the context observed).
    CartRemove(Vec<u8>),
    /// Set an item's quantity (0 removes it): what the context observed of the item is
    /// replaced; concurrent set-quantities resolve to the largest value set, and adds
    /// concurrent with a set-quantity count on top of it.
    CartSetQuantity {
        /// The item id.
        item: Vec<u8>,
        /// The new quantity.
        quantity: i64,
    },
    /// Remove every item of a cart that the context observed (items added concurrently
    /// stay).
    CartClear,
    /// Remove every element of a set that the context observed (elements added
    /// concurrently stay).
    SetClear,
    /// Bring a counter back to 0 by taking off what the context observed (increments and
    /// decrements made concurrently still count).
    CounterReset,
}

impl Op {
    /// The operation's name in error messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::CounterIncrement(_) => "counter increment",
            Self::SetAdd(_) => "set add",
            Self::SetRemove(_) => "set remove",
            Self::CartAdd { .. } => "cart add",
            Self::CartRemove(_) => "cart remove",
            Self::CartSetQuantity { .. } => "cart set quantity",
            Self::CartClear => "cart clear",
            Self::SetClear => "set clear",
            Self::CounterReset => "counter reset",
        }
    }
}

/// What a client sees of a state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    /// The opaque causal context to send back with the next write.
    pub context: Vec<u8>,
    /// The value, or `None` when the key is deleted (a tombstone) or empty.
    pub value: Option<Value>,
}

/// A visible value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Value {
    /// One value (`lww`), or one per concurrent write (`siblings`), in a canonical order.
    Siblings(Vec<Vec<u8>>),
    /// A counter's value.
    Counter(i64),
    /// A set's members in byte order.
    Set(Vec<Vec<u8>>),
    /// A cart's items in byte order, each with its quantity.
    Cart(Vec<(Vec<u8>, i64)>),
}

/// A write applied at the coordinator ([`Resolver::apply_with_delta`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    /// The new state, which the coordinator stores.
    pub state: Vec<u8>,
    /// The delta to send to the other replicas in place of the state, when the resolver has
    /// one and it is smaller than the state.
    pub delta: Option<Vec<u8>>,
}

impl Applied {
    /// A new state and a candidate delta, kept only if it is shorter than the state.
    pub fn new(state: Vec<u8>, delta: Option<Vec<u8>>) -> Self {
        let delta = delta.filter(|delta| delta.len() < state.len());
        Self { state, delta }
    }
}

/// What [`Resolver::apply_for_delta`] gives: a write's delta and its new state's context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeltaApplied {
    /// The delta, as [`Applied::delta`].
    pub delta: Vec<u8>,
    /// The new state's context, as [`Resolver::context`] of it.
    pub context: Vec<u8>,
}

/// The resolver contract.
///
/// # States
/// A state is the byte string an engine stores for one key. It starts with a one-byte type
/// tag and a one-byte format version (see [`codec`]); decoding an older version migrates
/// it, decoding an unknown tag, a newer version or garbage returns [`ResolveError::Corrupt`]
/// and never panics. Encoding is **canonical**: two equal states are equal bytes, so replicas
/// can compare states (anti-entropy hashes) by their bytes.
///
/// # The merge laws
/// For all states `a`, `b`, `c` this resolver produced, with `⊔` for `merge`:
/// - commutative: `a ⊔ b = b ⊔ a`
/// - associative: `(a ⊔ b) ⊔ c = a ⊔ (b ⊔ c)`
/// - idempotent:  `a ⊔ a = a`
///
/// as bytes, for every resolver (not only the CRDTs). Together they make replicas that have
/// seen the same set of states converge to the same bytes whatever the order and however many
/// duplicates. Merge never refuses for a limit (sibling counts included): a replica must
/// always be able to take in what another replica has.
///
/// # Apply
/// `apply(current, write, stamp)` runs at the coordinator. The result must *descend* from
/// `current` (`current ⊔ result = result`) and carry the write. A write the resolver cannot
/// take is refused with a typed error and produces no state: an operation of another
/// resolver ([`ResolveError::WrongOperation`]), a context that does not decode, or that this
/// resolver never produces ([`ResolveError::BadContext`]; every resolver checks its
/// context, those that ignore it included), a limit reached
/// ([`ResolveError::TooManySiblings`]), a counter, quantity, dot or clock reading that would
/// leave its integer range ([`ResolveError::Overflow`]).
///
/// # A dot is never issued twice
/// `apply` issues the next dot of `stamp.actor` (or, for `pncounter`, raises that actor's
/// totals) from what `current` records of that actor. So the **caller** guarantees that
/// `current` holds every write `stamp.actor` ever made to this key, or that `stamp.actor` has
/// never written to this key. A `current` that lost some of its actor's writes (an unsynced
/// tail dropped by a crash, a copy handed away and back, a restored backup, a coordinator
/// without a copy) makes `apply` reissue a dot that another replica already holds for a
/// different write, and `merge` then keeps only one of the two (or neither, for the causal
/// resolvers, whose clocks say both were seen). In the node, `src/actors.rs` keeps this
/// promise; [`Resolver::issued`] lets it check what a state records of an actor.
///
/// # Deltas
/// [`Resolver::apply_with_delta`] may also return a **delta**: a state of the same type
/// (it decodes, reads and merges like any other) that carries the write and little else, so
/// that a write to a large CRDT costs the size of the change on the wire, not the size of
/// the object (delta-state CRDTs: Almeida, Shoker and Baquero, "Delta state replicated data
/// types", 2018). With `old` the state the write was applied to, `new` the result and `δ`
/// the delta:
/// - `old ⊔ δ = new` and `new ⊔ δ = new`;
/// - hence for every state `x` that descends from `old` (`x = old ⊔ y`): `x ⊔ δ = x ⊔ new`,
///   as bytes; a replica that has not seen all of `old` gets less than `new` would give it,
///   and anti-entropy brings the rest, as for a lost message;
/// - `δ` is only returned when it is shorter than `new`.
///
/// Deltas obey the merge laws like any state. `siblings` and `lww` have none (their new
/// state is the write); the causal resolvers' deltas name exactly the dots the write
/// touched, which a plain version vector cannot say, hence the dot clouds of
/// [`causal::VersionVector`].
pub trait Resolver: Send + Sync + fmt::Debug {
    /// The resolver's configuration name.
    fn kind(&self) -> ResolverKind;

    /// Apply a client write to the coordinator's current state (`None` if it has none).
    fn apply(
        &self,
        current: Option<&[u8]>,
        write: &Write,
        stamp: &Stamp,
    ) -> Result<Vec<u8>, ResolveError>;

    /// [`Resolver::apply`], and the delta to replicate in place of the new state (see
    /// "Deltas"). The default has no delta. `current` is a state the caller stored or made
    /// (checked whole when it was made or came in), so a resolver may decode only the part
    /// of it the write touches (`cart`, `orset`: `causal::sparse`); the state returned is the one
    /// `apply` gives, byte for byte.
    fn apply_with_delta(
        &self,
        current: Option<&[u8]>,
        write: &Write,
        stamp: &Stamp,
    ) -> Result<Applied, ResolveError> {
        Ok(Applied { state: self.apply(current, write, stamp)?, delta: None })
    }

    /// What [`Resolver::apply_with_delta`] and [`Resolver::context`] give for `write` to
    /// the state `stored ⊔ parts[0] ⊔ parts[1] …`, without making that state or the new
    /// one: the write's delta and the new state's context. `stored` is a state the caller
    /// stored, `parts` small states to merge into it first (the deltas appended to it
    /// since), all checked when they came in. `None` when the resolver cannot tell the delta without making the
    /// state (the default; a write that may touch any key, a write with no delta smaller
    /// than the state): the caller then folds, applies and stores the state.
    ///
    /// `cart` and `orset` decode only the groups of `stored` the write names: an update of
    /// a 1 000-item cart then reads the cart once, copies none of it, and writes only its
    /// delta.
    fn apply_for_delta(
        &self,
        stored: &[u8],
        parts: &[&[u8]],
        write: &Write,
        stamp: &Stamp,
    ) -> Result<Option<DeltaApplied>, ResolveError> {
        let _ = (stored, parts, write, stamp);
        Ok(None)
    }

    /// Merge two states into their least upper bound. See the laws above.
    fn merge(&self, a: &[u8], b: &[u8]) -> Result<Vec<u8>, ResolveError>;

    /// [`Resolver::merge`] of `incoming`, any state (a peer's, a delta), into `stored`, a
    /// state the caller stored (checked whole when it was made or came in): the same bytes,
    /// but a resolver may decode only the part of `stored` that `incoming` touches (`cart`:
    /// a small delta into a large cart or set, `causal::sparse`). `incoming` is checked whole.
    fn merge_into(&self, stored: &[u8], incoming: &[u8]) -> Result<Vec<u8>, ResolveError> {
        self.merge(stored, incoming)
    }

    /// What a client sees of a state, and the context for its next write.
    fn read(&self, state: &[u8]) -> Result<Read, ResolveError>;

    /// The context [`Resolver::read`] returns for `state`, without the value: what the answer
    /// to a write carries when the client asked for no body. Resolvers whose read builds a
    /// large value (carts, sets) answer it from the clock alone.
    fn context(&self, state: &[u8]) -> Result<Vec<u8>, ResolveError> {
        Ok(self.read(state)?.context)
    }

    /// How much of `actor`'s history of writes `state` records: the highest counter of its
    /// dots in the clock (`siblings`, `orset`, `cart`), the sum of its totals (`pncounter`),
    /// 0 where it has none, and always 0 for `lww`, which issues no dots. A state that records
    /// more than another of one actor has seen writes of that actor the other has not.
    fn issued(&self, state: &[u8], actor: &[u8]) -> Result<u64, ResolveError>;

    /// The physical part (milliseconds since the Unix epoch) of the greatest hybrid logical
    /// clock timestamp `state` embeds, or `None` for resolvers whose states embed none.
    ///
    /// Only `lww` orders by time. `siblings`, `orset` and `cart` order causally, by dots and
    /// version vectors, and `pncounter` by per-actor totals: their states carry no timestamp
    /// (their coordinators' clock readings are not stored), so they answer `None` without
    /// decoding the state (a corrupt state is reported by `merge`, which decodes it anyway).
    /// The node refuses a state from a peer whose timestamp is further ahead of its own clock
    /// than the cluster's maximum clock offset: a forged `(u64::MAX, u32::MAX)` would
    /// otherwise beat every later write to the key, acknowledged or not.
    fn max_timestamp_ms(&self, state: &[u8]) -> Result<Option<u64>, ResolveError>;
}

/// The resolvers a bucket may name in its configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResolverKind {
    /// Dotted version vectors; concurrent writes become siblings.
    Siblings,
    /// Last write wins by hybrid logical clock.
    Lww,
    /// Add-wins observed-remove set.
    Orset,
    /// Positive-negative counter.
    Pncounter,
    /// Observed-remove map of item to PN-counter quantity.
    Cart,
}

impl ResolverKind {
    /// Every resolver name, in the order the documentation lists them.
    pub const ALL: [ResolverKind; 5] =
        [Self::Siblings, Self::Lww, Self::Orset, Self::Pncounter, Self::Cart];

    /// The name used in configuration and in `status`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Siblings => "siblings",
            Self::Lww => "lww",
            Self::Orset => "orset",
            Self::Pncounter => "pncounter",
            Self::Cart => "cart",
        }
    }

    /// Parse a configuration name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

impl fmt::Display for ResolverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Per-bucket resolver settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolverConfig {
    /// Sibling count at which a warning is logged and counted (siblings resolver).
    pub siblings_soft_max: usize,
    /// Sibling count at which a client write that would add a sibling is refused.
    pub siblings_hard_max: usize,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self { siblings_soft_max: 25, siblings_hard_max: 100 }
    }
}

/// The resolver named `kind`, with `config`.
pub fn build(kind: ResolverKind, config: ResolverConfig) -> Arc<dyn Resolver> {
    match kind {
        ResolverKind::Siblings => Arc::new(siblings::Siblings::new(config)),
        ResolverKind::Lww => Arc::new(lww::Lww),
        ResolverKind::Orset => Arc::new(orset::OrSet),
        ResolverKind::Pncounter => Arc::new(pncounter::PnCounter),
        ResolverKind::Cart => Arc::new(cart::Cart),
    }
}

/// "a" or "an" before a resolver's name, as spoken ("an orset", "a cart").
fn article(resolver: &str) -> &'static str {
    if resolver.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

/// Everything a resolver can refuse, grouped by what the caller does next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The write does not fit this resolver (e.g. a counter increment on `lww`). Fix the
    /// request.
    #[error("{operation} is not an operation of {} {resolver} bucket", article(resolver))]
    WrongOperation {
        /// The bucket's resolver.
        resolver: &'static str,
        /// The refused operation.
        operation: &'static str,
    },
    /// The write itself is malformed (e.g. a negative cart quantity). Fix the request.
    #[error("bad request: {0}")]
    BadRequest(String),
    /// The context sent with the write does not decode. Fix the request (send back a context
    /// exactly as a read returned it).
    #[error("bad context: {0}")]
    BadContext(String),
    /// The key already has `count` siblings, at the hard limit: the write is refused. Read,
    /// resolve the siblings, write back with the context.
    #[error("the key has {count} siblings, at the limit of {max}: read, resolve and write back")]
    TooManySiblings {
        /// Siblings the write would leave.
        count: usize,
        /// The hard limit.
        max: usize,
    },
    /// A counter, quantity, dot counter or clock reading would leave its integer range
    /// (`i64` for what a client sees, `u64` per actor inside a state): the write is refused
    /// and produces no state. Nothing wraps or saturates silently. Fix the request (a smaller
    /// amount, or a decrement first).
    #[error("overflow: {0}")]
    Overflow(String),
    /// A stored or received state does not decode. Give up and report.
    #[error("corrupt state: {0}")]
    Corrupt(String),
}
