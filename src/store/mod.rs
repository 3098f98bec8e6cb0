//! # The local store: buckets = engine + resolver
//!
//! A node keeps one [`Bucket`] per configured bucket: its storage engine (opened in
//! `data_dir/buckets/<name>/`) and its resolver, both used as trait objects. The store does
//! the node-local half of every request of DESIGN §2: check the request against the limits,
//! read the key's state, let the resolver apply the write, store the new state; or merge a
//! state a peer sent (replication, read repair, handoff).
//!
//! A CRDT write also gives the write's **delta** ([`Store::write`],
//! [`Written::delta`]): the coordinator stores the whole new state and sends the delta, a
//! state of its own that peers [`Store::merge`] like any other, so a large cart costs the
//! change on the wire, not the cart. A peer merges it into its stored state with
//! `Resolver::merge_into`, and the coordinator applies the write with
//! `Resolver::apply_with_delta`: both may decode only the part of the stored state that the
//! delta or the write touches (a cart's untouched items are copied as bytes,
//! `cartwheel_resolvers::causal::Sparse`).
//!
//! ## Deltas appended
//! A replica does not even merge a small delta (up to [`CHAIN_PART_BYTES_MAX`]) of a CRDT
//! bucket (`cart`, `orset`, `pncounter`): it checks that it decodes and appends it to the
//! key's stored value ([`StorageEngine::append`]), which writes the delta, not the state
//! (the `log` and `buffer` engines write one record of the delta's size). The coordinator
//! does the same with its own write's delta. Every read of the key folds the parts in
//! ([`fold_chain`]: the parts merged together, then into the stored state once), and once a
//! key has [`CHAIN_PARTS_MAX`] parts the store folds them and puts the state. So an update
//! of a 1 000-item cart writes a few hundred bytes on each replica, and every
//! [`CHAIN_PARTS_MAX`]th rewrites the cart. A state merged this way is never compared with
//! the stored one, so the anti-entropy tree marks the key dirty ([`trees`], "Keys marked
//! dirty") rather than hash a state nobody computed. Larger states (read repair,
//! anti-entropy, handoff) and other resolvers are merged and put as before. A key this node
//! holds nothing for is merged as before too (the checks for a state with no local copy
//! below need the stored state).
//!
//! ## Atomicity of read-modify-write
//! `write` and `merge` read a state, compute a new one and put it, with no `.await` in between,
//! and every call runs on the node's one RPC thread (DESIGN §7). So no two read-modify-writes
//! of a key interleave on a node, and no concurrent update is lost between the read and the
//! put. Durability waits (`sync`) happen after the put, off that thread.
//!
//! ## Partition scans
//! Anti-entropy and handoff read whole partitions. A scan runs on tokio's blocking pool with
//! the engine's `Arc` ([`Store::fold_partition`]), at most [`PARTITION_SCANS_MAX`] at a time
//! per store, so the RPC thread goes on serving meanwhile. Writes go on too, so a scan may or
//! may not see a write that races with it (the engines' iteration contract); both users
//! cope: anti-entropy compares again next time, and handoff deletes a copy only if it is
//! still the state it sent ([`Store::delete_if_unchanged`]). The seeded simulation, whose
//! runs must not depend on thread timing, scans on the calling thread instead
//! ([`Store::scan_on_calling_thread`]).
//!
//! ## Which actor writes
//! [`Store::write`] applies a write as one of the key's primaries, to the state in the
//! bucket's engine, with the node's replica actor; [`Store::write_as_hint`] applies one for
//! a key this node does not replicate, to the state the caller passes (the merge of its hints
//! for the key), with its hint actor, and stores nothing. [`crate::actors`] says why that
//! never issues a dot twice; [`Store::delete_if_unchanged`] and [`Store::hint_dropped`] take
//! a new epoch when a deleted copy held dots of the current one.
//!
//! ## States from peers are checked
//! Every state that comes from another node and enters this node's store or hint store
//! (replication, hint delivery, read repair, anti-entropy, ownership handoff) passes
//! [`Store::check_incoming`] first: a state whose greatest timestamp
//! ([`Resolver::max_timestamp_ms`]) is further ahead of this node's wall clock than
//! `cluster.max_clock_offset_ms` is refused with `badRequest`, counted
//! ([`Store::states_refused`]) and logged at warn. [`Store::merge`] checks by itself; the
//! hint store's callers call it. Only `lww` states carry timestamps. Without the check, one
//! forged state stamped `(u64::MAX, u32::MAX)` would beat every later write to its key,
//! acknowledged or not; with it, a state is refused only while it is ahead, so an honest
//! state from a clock a little ahead is taken once this node's clock has caught up (the
//! next anti-entropy or read repair brings it). A client write's own stamp comes from this
//! node's hybrid logical clock, which answers `overflow` rather than wrap.
//!
//! ## Replica count on small clusters
//! This layer stores on this node only. The coordinator ([`crate::cluster`]) treats a
//! cluster smaller than N as storing `min(N, nodes)` replicas, with R and W clamped to that:
//! a single development node accepts writes to N=3 buckets.

pub mod hints;
pub mod sync_group;
pub mod trees;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cartwheel_engines::{chain, EngineError, StorageEngine};
use cartwheel_resolvers::{
    Applied, DeltaApplied, HybridClock, Read, Resolver, ResolverKind, Stamp, Write,
};

use crate::actors::{Actors, Role};
use crate::config::{BucketConfig, Config, Limits};
use crate::error::Error;
use crate::ring::{key_hash, partition_of, storage_key};

/// A client write applied at this node ([`Store::write`],
/// [`Store::write_as_hint`]).
#[derive(Clone, Debug)]
pub struct Written {
    /// The key's new state, as stored (or kept as a hint).
    pub state: Vec<u8>,
    /// What to send the other replicas in place of the state: the write's delta, when the
    /// resolver has one smaller than the state. A delta is a state of its own and peers
    /// merge it as one.
    pub delta: Option<Vec<u8>>,
}

impl Written {
    /// What the answer to the write carries: the new state's context, and its value only if
    /// `body` (a read of a whole cart or set is the costly part of the answer, so it is built
    /// only when the client asked for it).
    pub fn answer(&self, resolver: &dyn Resolver, body: bool) -> Result<Read, Error> {
        Ok(if body {
            resolver.read(&self.state)?
        } else {
            Read { context: resolver.context(&self.state)?, value: None }
        })
    }
}

/// A key and its stored state.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Parts a key's stored value gathers ("Deltas appended") before the store folds them
/// into its state and puts that: a read folds up to this many, and a large state is
/// rewritten once per this many updates.
pub const CHAIN_PARTS_MAX: u32 = 16;

/// The largest state appended as a part rather than merged and put: deltas of single
/// updates are a few hundred bytes; whole states sent by repair or handoff are merged.
pub const CHAIN_PART_BYTES_MAX: usize = 4096;

/// Partition scans that run at a time on the blocking pool, per store. One more waits for a
/// running one to end (the caller's deadline bounds the wait); a scan holds a pool thread
/// and reads a whole partition, and background work must leave room for requests.
pub const PARTITION_SCANS_MAX: usize = 2;

/// One bucket on this node.
#[derive(Debug)]
pub struct Bucket {
    /// Its name.
    pub name: String,
    /// Its settings.
    pub config: BucketConfig,
    /// Where its states live.
    pub engine: Arc<dyn StorageEngine>,
    /// Client writes that left a key at or over the soft sibling limit.
    pub sibling_warnings: std::sync::atomic::AtomicU64,
    /// What its states mean.
    pub resolver: Arc<dyn Resolver>,
    /// Its anti-entropy trees, by partition, kept up to date by every write ([`trees`]).
    trees: std::sync::Mutex<trees::Trees>,
    /// Tombstones collected recently, remembered against states in flight ([`trees::Collected`]).
    collected: std::sync::Mutex<trees::Collected>,
}

impl Bucket {
    fn trees(&self) -> std::sync::MutexGuard<'_, trees::Trees> {
        self.trees.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn collected(&self) -> std::sync::MutexGuard<'_, trees::Collected> {
        self.collected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether `state` is a tombstone: it reads as not found, and only makes older writes
    /// lose ([`trees`], "Tombstones"). Undecodable states are not.
    pub fn is_tombstone(&self, state: &[u8]) -> bool {
        trees::is_tombstone(&*self.resolver, state)
    }
}

/// The node's buckets, clock and limits.
#[derive(Debug)]
pub struct Store {
    node_id: String,
    partitions: u32,
    limits: Limits,
    clock: HybridClock,
    actors: Actors,
    buckets: BTreeMap<String, Bucket>,
    /// Admits partition scans to the blocking pool ([`PARTITION_SCANS_MAX`]); `None` when
    /// they run on the calling thread.
    scans: Option<Arc<tokio::sync::Semaphore>>,
    /// How far ahead of the wall clock a peer's state may be stamped.
    max_clock_offset_ms: u64,
    /// States from peers refused for being stamped too far ahead.
    states_refused: AtomicU64,
    /// Buckets whose engine failure was seen (and the replica actor renewed for it), until
    /// the engine is reopened.
    failures_noticed: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// One tree build at a time ([`Store::tree_leaves`]).
    tree_builder: tokio::sync::Mutex<()>,
    /// States from peers dropped because a tombstone collected for their key supersedes them.
    states_fenced: AtomicU64,
}

/// A store that could not open.
#[derive(Debug, thiserror::Error)]
#[error("cannot open bucket {bucket:?} in {dir}: {source}")]
pub struct OpenError {
    /// The bucket.
    pub bucket: String,
    /// Its data directory.
    pub dir: String,
    /// Why.
    #[source]
    pub source: EngineError,
}

impl Store {
    /// Open every configured bucket's engine under `config.node.data_dir`, with actors whose
    /// epochs are new (see [`crate::actors`]).
    pub fn open(config: &Config) -> Result<Self, OpenError> {
        Self::open_with(config, Actors::new(&config.node.id))
    }

    /// [`Store::open`] with the given actors (a seeded simulation, a test).
    pub fn open_with(config: &Config, actors: Actors) -> Result<Self, OpenError> {
        let open = |name: &str, bucket: &BucketConfig| {
            let dir = config.node.data_dir.join("buckets").join(name);
            // Reopened in place after a failed write or sync ([`Store::failed_buckets`]).
            let options = bucket.engine_options.clone();
            match cartwheel_engines::recovering::Recovering::open(
                bucket.engine,
                dir.clone(),
                options,
            ) {
                Ok(engine) => Ok(Arc::new(engine) as Arc<dyn StorageEngine>),
                Err(source) => Err(OpenError {
                    bucket: name.to_string(),
                    dir: dir.display().to_string(),
                    source,
                }),
            }
        };
        Self::with_engines(config, actors, HybridClock::new(), open)
    }

    /// A store whose engines `open` gives, bucket by bucket, and whose clock is `clock` (the
    /// seeded simulation's disks and time).
    pub fn with_engines(
        config: &Config,
        actors: Actors,
        clock: HybridClock,
        mut open: impl FnMut(&str, &BucketConfig) -> Result<Arc<dyn StorageEngine>, OpenError>,
    ) -> Result<Self, OpenError> {
        let mut buckets = BTreeMap::new();
        for (name, bucket_config) in &config.buckets {
            let engine = open(name, bucket_config)?;
            buckets.insert(name.clone(), bucket(name, bucket_config, engine));
        }
        Ok(Self {
            node_id: config.node.id.clone(),
            partitions: config.partitions,
            limits: config.limits.clone(),
            clock,
            actors,
            buckets,
            scans: Some(Arc::new(tokio::sync::Semaphore::new(PARTITION_SCANS_MAX))),
            max_clock_offset_ms: config.cluster.max_clock_offset_ms,
            states_refused: AtomicU64::new(0),
            failures_noticed: std::sync::Mutex::default(),
            tree_builder: tokio::sync::Mutex::new(()),
            states_fenced: AtomicU64::new(0),
        })
    }

    /// Run partition scans on the calling thread, not on the blocking pool: for the seeded
    /// simulation, whose runs must not depend on thread timing.
    pub fn scan_on_calling_thread(mut self) -> Self {
        self.scans = None;
        self
    }

    /// Whether partition scans (and syncs the cluster waits for) run on the calling thread
    /// ([`Store::scan_on_calling_thread`]).
    pub fn scans_on_calling_thread(&self) -> bool {
        self.scans.is_none()
    }

    /// The buckets whose engine failed a write or a sync (and so refuses writes: the bucket
    /// is read-only), with their engines: each is to be reopened with `try_recover` off the
    /// RPC thread, and [`Store::engine_reopened`] told when that worked.
    ///
    /// A reopen runs crash recovery, which may drop writes that no sync covered, among them
    /// dots of this node's replica actor. So the first time a failure is seen, before anything
    /// is reopened, the replica actor takes a new epoch (src/actors.rs): no write succeeds
    /// while the engine is failed, so every dot of the new epoch lands in the reopened engine.
    pub fn failed_buckets(&self) -> Vec<(String, Arc<dyn StorageEngine>)> {
        let failed: Vec<_> = self
            .buckets
            .values()
            .filter(|bucket| bucket.engine.failed())
            .map(|bucket| (bucket.name.clone(), Arc::clone(&bucket.engine)))
            .collect();
        let mut noticed = self.failures_noticed.lock().unwrap_or_else(|p| p.into_inner());
        for (name, _) in &failed {
            if noticed.insert(name.clone()) {
                self.actors.renew(Role::Replica);
                tracing::error!(
                    bucket = %name,
                    "the bucket's engine failed a write or a sync: read-only until it is \
                     reopened from its files (tried every round)"
                );
            }
        }
        failed
    }

    /// Give this node's actor for `role` a new epoch (see src/actors.rs), e.g. before the hint
    /// store is reopened after a failure.
    pub fn renew_actor(&self, role: Role) {
        self.actors.renew(role);
    }

    /// A bucket's engine was reopened from its files after a failure: it takes writes again.
    /// Its trees are dropped (recovery may have lost unsynced writes they counted) and built
    /// again when next asked for.
    pub fn engine_reopened(&self, bucket: &str) {
        self.failures_noticed.lock().unwrap_or_else(|p| p.into_inner()).remove(bucket);
        if let Some(bucket) = self.buckets.get(bucket) {
            bucket.trees().clear();
        }
        tracing::warn!(%bucket, "engine reopened from its files after a failure; writes resume");
    }

    /// This node's id (its actor id).
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The node's actors.
    pub fn actors(&self) -> &Actors {
        &self.actors
    }

    /// The partition count Q.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// The node's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Every bucket, by name.
    pub fn buckets(&self) -> impl Iterator<Item = &Bucket> {
        self.buckets.values()
    }

    /// The bucket named `name`, or [`Error::UnknownBucket`].
    pub fn bucket(&self, name: &str) -> Result<&Bucket, Error> {
        self.buckets.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.buckets.keys().map(String::as_str).collect();
            Error::UnknownBucket(format!("{name:?} (this node has: {})", known.join(", ")))
        })
    }

    /// Refuse empty and oversized keys.
    pub fn check_key(&self, key: &[u8]) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::BadRequest("the key is empty".to_string()));
        }
        if key.len() > self.limits.key_bytes_max {
            return Err(Error::KeyTooLarge(format!(
                "key of {} bytes is over the limit of {} bytes",
                key.len(),
                self.limits.key_bytes_max
            )));
        }
        Ok(())
    }

    /// Refuse oversized values.
    pub fn check_value(&self, value: &[u8]) -> Result<(), Error> {
        if value.len() > self.limits.value_bytes_max {
            return Err(Error::ValueTooLarge(format!(
                "value of {} bytes is over the limit of {} bytes",
                value.len(),
                self.limits.value_bytes_max
            )));
        }
        Ok(())
    }

    /// The stored state of a key, as bytes.
    pub fn fetch(&self, bucket: &str, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let bucket = self.bucket(bucket)?;
        self.check_key(key)?;
        self.stored(bucket, &self.storage_key(&bucket.name, key))
    }

    /// The state `bucket` holds under `storage_key`: what its engine holds, with any parts
    /// appended to it folded in ([`fold_chain`]).
    fn stored(&self, bucket: &Bucket, storage_key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        bucket
            .engine
            .get(storage_key)?
            .map(|value| fold_chain(&*bucket.resolver, value))
            .transpose()
    }

    /// Apply a client write at this node as one of the key's primaries, to its state in the
    /// bucket's engine, with the replica actor; store the new state and return it
    /// ([`Written::answer`] gives what the client sees). The write is visible when this
    /// returns; durable after a sync of the bucket's engine. With the state comes the delta
    /// to replicate in place of it, when the bucket's resolver has one (see
    /// `Resolver::apply_with_delta`).
    pub fn write(&self, bucket_name: &str, key: &[u8], write: &Write) -> Result<Written, Error> {
        let bucket = self.bucket(bucket_name)?;
        self.check_key(key)?;
        let storage_key = self.storage_key(bucket_name, key);
        let stored = self.stored(bucket, &storage_key)?;
        let current = match stored {
            Some(_) => stored,
            // A tombstone collected moments ago still stands for the key's history.
            None => self.remembered(bucket, key),
        };
        let written = self.apply(bucket, current.as_deref(), write, Role::Replica)?;
        // A small delta of a stored state is appended to it, as the replicas do: the state
        // it gives is `written.state` (a delta merged into the state it came from).
        let appended = match &written.delta {
            Some(delta) if current.is_some() => self.append(bucket, key, &storage_key, delta)?,
            _ => false,
        };
        if !appended {
            bucket.engine.put(&storage_key, &written.state)?;
            self.noted(bucket, key, Some(&written.state));
        }
        Ok(written)
    }

    /// Append `part`, a state to merge into `key`'s, to its stored value when that is worth
    /// it (see "Deltas appended"): true when done, false when the caller must merge and put
    /// (the key holds nothing, the part is large, or the resolver has no deltas). Folds the
    /// key's parts into one state once they are [`CHAIN_PARTS_MAX`].
    fn append(
        &self,
        bucket: &Bucket,
        key: &[u8],
        storage_key: &[u8],
        part: &[u8],
    ) -> Result<bool, Error> {
        if !has_deltas(bucket.resolver.kind()) || part.len() > CHAIN_PART_BYTES_MAX {
            return Ok(false);
        }
        let Some(parts) = bucket.engine.append(storage_key, part)? else { return Ok(false) };
        if parts < CHAIN_PARTS_MAX {
            let partition = partition_of(key_hash(&bucket.name, key), self.partitions);
            bucket.trees().note_dirty(partition, key);
            return Ok(true);
        }
        let folded = self.stored(bucket, storage_key)?.expect("a value just appended to");
        bucket.engine.put(storage_key, &folded)?;
        self.noted(bucket, key, Some(&folded));
        Ok(true)
    }

    /// [`Store::write`] as the coordinator of a client write needs it: what to send the
    /// other replicas (the delta, else the new state) and the answer ([`Written::answer`]).
    /// A CRDT write to a key this node holds, whose answer needs no body, takes the short
    /// way: the resolver gives the delta and the new context from the stored state and its
    /// parts ([`Resolver::apply_for_delta`]), and the delta is appended; the new state is
    /// never made ("Deltas appended").
    pub fn coordinate(
        &self,
        bucket_name: &str,
        key: &[u8],
        write: &Write,
        body: bool,
    ) -> Result<(Vec<u8>, Read), Error> {
        let bucket = self.bucket(bucket_name)?;
        if !body && has_deltas(bucket.resolver.kind()) {
            self.check_key(key)?;
            check_write_sizes(self, write)?;
            let storage_key = self.storage_key(bucket_name, key);
            if let Some(value) = bucket.engine.get(&storage_key)? {
                if let Some(DeltaApplied { delta, context }) =
                    self.delta_of(bucket, &value, write)?
                {
                    if self.append(bucket, key, &storage_key, &delta)? {
                        return Ok((delta, Read { context, value: None }));
                    }
                }
            }
        }
        let written = self.write(bucket_name, key, write)?;
        let read = written.answer(&*bucket.resolver, body)?;
        Ok((written.delta.unwrap_or(written.state), read))
    }

    /// The delta and new context of `write` to the state `value` (as stored: a chain or
    /// not) stands for, when the short way of [`Store::coordinate`] applies: the resolver
    /// has one, the delta is small, and the new state cannot pass the state size limit
    /// (the stored value and the delta together are under it).
    fn delta_of(
        &self,
        bucket: &Bucket,
        value: &[u8],
        write: &Write,
    ) -> Result<Option<DeltaApplied>, Error> {
        let resolver = &*bucket.resolver;
        let pieces = chain::pieces(value)?;
        let (stored, parts) = match &pieces {
            Some(pieces) => pieces.split_first().expect("a chain has a base"),
            None => (&value, &[][..]),
        };
        let stamp = Stamp { actor: self.actors.actor(Role::Replica), time: self.clock.now()? };
        let Some(applied) = resolver.apply_for_delta(stored, parts, write, &stamp)? else {
            return Ok(None);
        };
        let small = applied.delta.len() <= CHAIN_PART_BYTES_MAX
            && value.len() + applied.delta.len() <= self.limits.state_bytes_max();
        Ok(small.then_some(applied))
    }

    /// The tombstone this node collected for `key` and still remembers, if any.
    fn remembered(&self, bucket: &Bucket, key: &[u8]) -> Option<Vec<u8>> {
        bucket.collected().get(key, self.clock.wall_ms()).map(<[u8]>::to_vec)
    }

    /// `key` of `bucket` now holds `state` (`None`: deleted): keep its partition's tree up
    /// to date, if built.
    fn noted(&self, bucket: &Bucket, key: &[u8], state: Option<&[u8]>) {
        let partition = partition_of(key_hash(&bucket.name, key), self.partitions);
        let resolver = &*bucket.resolver;
        bucket
            .trees()
            .note(partition, key, || state.map(|state| trees::summary(resolver, key, state)));
    }

    /// Apply a client write for a key this node does not replicate, with the hint actor, to
    /// `current`: the merge of every hint this node holds for the key. Stores nothing: the
    /// caller keeps the result as a hint before it yields, or the hint actor's history of the
    /// key is incomplete. Like [`Store::write`], it gives the delta too.
    pub fn write_as_hint(
        &self,
        bucket_name: &str,
        key: &[u8],
        current: Option<&[u8]>,
        write: &Write,
    ) -> Result<Written, Error> {
        let bucket = self.bucket(bucket_name)?;
        self.check_key(key)?;
        self.apply(bucket, current, write, Role::Hint)
    }

    fn apply(
        &self,
        bucket: &Bucket,
        current: Option<&[u8]>,
        write: &Write,
        role: Role,
    ) -> Result<Written, Error> {
        check_write_sizes(self, write)?;
        let stamp = Stamp { actor: self.actors.actor(role), time: self.clock.now()? };
        let Applied { state, delta } = bucket.resolver.apply_with_delta(current, write, &stamp)?;
        if state.len() > self.limits.state_bytes_max() {
            return Err(Error::ValueTooLarge(format!(
                "the write would leave the key's state at {} bytes, over the limit of {} bytes \
                 (twice limits.value_bytes_max): remove something first",
                state.len(),
                self.limits.state_bytes_max()
            )));
        }
        if bucket.config.resolver == ResolverKind::Siblings {
            let count = cartwheel_resolvers::siblings::sibling_count(&state)?;
            let soft = bucket.config.resolver_config.siblings_soft_max;
            // A tombstone (no sibling) is never "many", whatever the soft limit.
            if count > 0 && count >= soft {
                bucket.sibling_warnings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    bucket = %bucket.name,
                    siblings = count,
                    soft_max = soft,
                    "key has many siblings: clients should read, resolve and write back"
                );
            }
        }
        Ok(Written { state, delta })
    }

    /// Check a state that came from a peer before it is stored anywhere on this node (see
    /// "States from peers are checked"): `badRequest`, counted and logged, when it is
    /// stamped further ahead of this node's wall clock than `cluster.max_clock_offset_ms`;
    /// the resolver's error when it does not decode.
    pub fn check_incoming(&self, bucket_name: &str, state: &[u8]) -> Result<(), Error> {
        let bucket = self.bucket(bucket_name)?;
        let Some(stamped_ms) = bucket.resolver.max_timestamp_ms(state)? else { return Ok(()) };
        let wall_ms = self.clock.wall_ms();
        if stamped_ms <= wall_ms.saturating_add(self.max_clock_offset_ms) {
            return Ok(());
        }
        self.states_refused.fetch_add(1, Ordering::Relaxed);
        let ahead_ms = stamped_ms - wall_ms;
        tracing::warn!(
            bucket = %bucket_name,
            stamped_ms,
            ahead_ms,
            max_clock_offset_ms = self.max_clock_offset_ms,
            "refused a state from a peer stamped too far ahead of this node's clock"
        );
        Err(Error::BadRequest(format!(
            "the state is stamped {ahead_ms} ms ahead of this node's clock, over \
             cluster.max_clock_offset_ms = {}: check the sender's clock",
            self.max_clock_offset_ms
        )))
    }

    /// States from peers refused by [`Store::check_incoming`] since the start.
    pub fn states_refused(&self) -> u64 {
        self.states_refused.load(Ordering::Relaxed)
    }

    /// Merge a state received from a peer into this node's state for the key, and store it.
    /// Never refused for a resolver limit: replicas must always take in each other's states.
    /// Refused, and nothing stored, when [`Store::check_incoming`] refuses it.
    pub fn merge(&self, bucket_name: &str, key: &[u8], incoming: &[u8]) -> Result<(), Error> {
        let bucket = self.bucket(bucket_name)?;
        self.check_key(key)?;
        self.check_incoming(bucket_name, incoming)?;
        let storage_key = self.storage_key(bucket_name, key);
        if has_deltas(bucket.resolver.kind()) && incoming.len() <= CHAIN_PART_BYTES_MAX {
            // Decoding checks the part before it joins the stored value: every later read
            // folds it.
            bucket.resolver.read(incoming)?;
            if self.append(bucket, key, &storage_key, incoming)? {
                return Ok(());
            }
        }
        let current = self.stored(bucket, &storage_key)?;
        let remembered = match current {
            Some(_) => None,
            None => self.remembered(bucket, key),
        };
        let merged = match (current.as_deref(), remembered) {
            (Some(current), _) => bucket.resolver.merge_into(current, incoming)?,
            (None, Some(tombstone)) => {
                let merged = bucket.resolver.merge(&tombstone, incoming)?;
                if merged == tombstone {
                    // An older state, in flight while its tombstone was collected: it stays
                    // deleted (see crate::cluster::anti_entropy, "Deletes that end").
                    self.states_fenced.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                bucket.collected().forget(key);
                merged
            }
            (None, None) => {
                // Decoding checks the incoming state before it is stored.
                bucket.resolver.read(incoming)?;
                // No copy here, yet the state names this node's current replica actor: its
                // history of the key is gone (crate::actors says how that cannot happen; this
                // is the net below it, as DESIGN §4 asks).
                let actor = self.actors.actor(Role::Replica);
                if bucket.resolver.issued(incoming, &actor)? > 0 {
                    tracing::warn!(bucket = %bucket_name, "a replica names this node's writes to a key it has no copy of: new replica epoch");
                    self.actors.renew(Role::Replica);
                }
                incoming.to_vec()
            }
        };
        if current.as_deref() == Some(merged.as_slice()) {
            // Nothing new: nothing to write, and the tree is right.
            return Ok(());
        }
        bucket.engine.put(&storage_key, &merged)?;
        self.noted(bucket, key, Some(&merged));
        Ok(())
    }

    /// States from peers dropped since the start because a tombstone this node collected
    /// supersedes them (a state that was in flight when it was collected).
    pub fn states_fenced(&self) -> u64 {
        self.states_fenced.load(Ordering::Relaxed)
    }

    /// Every (key, state) of one partition of a bucket: a prefix scan that reads no other
    /// partition's values, off the RPC thread ([`Store::fold_partition`]).
    pub async fn partition_entries(
        &self,
        bucket: &str,
        partition: u16,
    ) -> Result<Vec<Entry>, Error> {
        let collect = |out: &mut Vec<Entry>, key: &[u8], state: &[u8]| {
            out.push((key.to_vec(), state.to_vec()));
        };
        self.fold_partition(bucket, partition, Vec::new(), collect).await
    }

    /// Fold `visit` over every (key, state) of one partition of a bucket, starting from
    /// `init`, on tokio's blocking pool (see "Partition scans" in the module doc). Keys come
    /// without their partition prefix, in the engine's order.
    pub async fn fold_partition<T, F>(
        &self,
        bucket: &str,
        partition: u16,
        init: T,
        visit: F,
    ) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnMut(&mut T, &[u8], &[u8]) + Send + 'static,
    {
        let engine = Arc::clone(&self.bucket(bucket)?.engine);
        let resolver = Arc::clone(&self.bucket(bucket)?.resolver);
        let Some(scans) = &self.scans else {
            return fold_prefix(&*engine, &*resolver, partition, init, visit);
        };
        let admitted = Arc::clone(scans)
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("the partition scan queue is closed".into()))?;
        // The permit goes with the scan: one the caller stopped waiting for still counts
        // until it ends.
        let scan = move || {
            let _admitted = admitted;
            fold_prefix(&*engine, &*resolver, partition, init, visit)
        };
        tokio::task::spawn_blocking(scan)
            .await
            .map_err(|e| Error::Internal(format!("a partition scan failed: {e}")))?
    }

    /// The anti-entropy leaves of one partition of a bucket, from its tree ([`trees`]): at
    /// once when the tree is built; else the tree is built first, one build at a time per
    /// node, by a paced scan of the partition off the RPC thread.
    pub async fn tree_leaves(
        &self,
        bucket_name: &str,
        partition: u16,
    ) -> Result<trees::Leaves, Error> {
        let bucket = self.bucket(bucket_name)?;
        if bucket.trees().built(partition).is_some() {
            self.settle_tree(bucket, partition).await?;
            if let Some(tree) = bucket.trees().built(partition) {
                return Ok(tree.leaves().clone());
            }
        }
        let _builder = self.tree_builder.lock().await;
        if let Some(tree) = bucket.trees().built(partition) {
            return Ok(tree.leaves().clone());
        }
        self.build_tree(bucket, partition).await?;
        match bucket.trees().built(partition) {
            Some(tree) => Ok(tree.leaves().clone()),
            None => Err(Error::Overloaded(format!(
                "the anti-entropy tree of partition {partition} of {bucket_name} was written \
                 to too much while it was built: try again later"
            ))),
        }
    }

    /// Build one partition's tree (the caller holds the builder lock): scan, then re-read
    /// the keys written meanwhile on this thread ([`trees`], "Building, once").
    async fn build_tree(&self, bucket: &Bucket, partition: u16) -> Result<(), Error> {
        if !bucket.trees().begin_build(partition) {
            return Ok(());
        }
        /// Abandons the build unless it finished: a scan that failed, or a caller that
        /// stopped waiting, leaves no half-built slot behind.
        struct Abandon<'a>(&'a Bucket, u16);
        impl Drop for Abandon<'_> {
            fn drop(&mut self) {
                self.0.trees().abandon_build(self.1);
            }
        }
        let abandon = Abandon(bucket, partition);
        let resolver = Arc::clone(&bucket.resolver);
        let mut pace = Pace::new(self.scans.is_some(), trees::TREE_BUILD_KEYS_PER_SECOND);
        let visit = move |tree: &mut trees::PartitionTree, key: &[u8], state: &[u8]| {
            tree.set(key, Some(trees::summary(&*resolver, key, state)));
            pace.tick();
        };
        let scanned = self
            .fold_partition(&bucket.name, partition, trees::PartitionTree::default(), visit)
            .await?;
        let mut failed = None;
        let reread = |key: &[u8]| match self.stored(bucket, &self.storage_key(&bucket.name, key)) {
            Ok(state) => state.map(|state| trees::summary(&*bucket.resolver, key, &state)),
            Err(e) => {
                failed = Some(e);
                None
            }
        };
        let built = bucket.trees().finish_build(partition, scanned, reread);
        drop(abandon);
        if let Some(e) = failed {
            bucket.trees().abandon_build(partition);
            if built {
                bucket.trees().clear();
            }
            return Err(e);
        }
        if built {
            tracing::debug!(bucket = %bucket.name, partition, "anti-entropy tree built");
        }
        Ok(())
    }

    /// Whether one partition's tree is built.
    pub fn tree_built(&self, bucket: &str, partition: u16) -> Result<bool, Error> {
        Ok(self.bucket(bucket)?.trees().built(partition).is_some())
    }

    /// The keys of some segments of a partition with their entry hashes, from its tree (no
    /// value is read); `None` when the tree is not built.
    pub fn tree_hashes(
        &self,
        bucket: &str,
        partition: u16,
        segments: &[u16],
    ) -> Result<Option<trees::KeyHashes>, Error> {
        Ok(self.bucket(bucket)?.trees().built(partition).map(|tree| tree.hashes(segments)))
    }

    /// The states of `keys` (those that have one), read in that order off the RPC thread
    /// like a scan, until they pass `budget` bytes (the first is always read).
    pub async fn fetch_many(
        &self,
        bucket: &str,
        keys: Vec<Vec<u8>>,
        budget: usize,
    ) -> Result<Vec<Entry>, Error> {
        let engine = Arc::clone(&self.bucket(bucket)?.engine);
        let resolver = Arc::clone(&self.bucket(bucket)?.resolver);
        let stored: Vec<(Vec<u8>, Vec<u8>)> =
            keys.into_iter().map(|key| (self.storage_key(bucket, &key), key)).collect();
        let read = move || -> Result<Vec<Entry>, Error> {
            let mut out = Vec::new();
            let mut used = 0;
            for (stored, key) in stored {
                if let Some(value) = engine.get(&stored)? {
                    let state = fold_chain(&*resolver, value)?;
                    used += key.len() + state.len();
                    out.push((key, state));
                    if used > budget {
                        break;
                    }
                }
            }
            Ok(out)
        };
        self.off_thread(read).await
    }

    /// Run `read` (reads of states) on the blocking pool as a scan is, one of the
    /// [`PARTITION_SCANS_MAX`]; on the calling thread in the simulation.
    async fn off_thread<T: Send + 'static>(
        &self,
        read: impl FnOnce() -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let Some(scans) = &self.scans else { return read() };
        let _admitted = Arc::clone(scans)
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("the partition scan queue is closed".into()))?;
        tokio::task::spawn_blocking(read)
            .await
            .map_err(|e| Error::Internal(format!("a read of keys failed: {e}")))?
    }

    /// Give the keys of a built tree marked dirty their hashes ([`trees`], "Keys marked
    /// dirty"): their states are read and folded off the RPC thread.
    async fn settle_tree(&self, bucket: &Bucket, partition: u16) -> Result<(), Error> {
        let dirty = match bucket.trees().built(partition) {
            Some(tree) => tree.dirty(),
            None => return Ok(()),
        };
        if dirty.is_empty() {
            return Ok(());
        }
        let engine = Arc::clone(&bucket.engine);
        let resolver = Arc::clone(&bucket.resolver);
        let keys: Vec<(Vec<u8>, Vec<u8>)> = dirty
            .iter()
            .map(|(key, _)| (self.storage_key(&bucket.name, key), key.clone()))
            .collect();
        let read = move || -> Result<Vec<Option<trees::Summary>>, Error> {
            let mut out = Vec::with_capacity(keys.len());
            for (stored, key) in keys {
                let state = engine.get(&stored)?.map(|v| fold_chain(&*resolver, v)).transpose()?;
                out.push(state.map(|state| trees::summary(&*resolver, &key, &state)));
            }
            Ok(out)
        };
        let summaries = self.off_thread(read).await?;
        let mut trees = bucket.trees();
        for ((key, mark), summary) in dirty.into_iter().zip(summaries) {
            trees.settle(partition, &key, mark, summary);
        }
        Ok(())
    }

    /// Up to `max` tombstones of built trees of a bucket, as (partition, key), starting at
    /// the `skip`-th (mod their number) so that successive calls go round them all.
    pub fn tombstones(
        &self,
        bucket: &str,
        max: usize,
        skip: usize,
    ) -> Result<Vec<(u16, Vec<u8>)>, Error> {
        let bucket = self.bucket(bucket)?;
        let trees = bucket.trees();
        let total: usize = trees.all_built().map(|(_, tree)| tree.tombstone_count()).sum();
        if total == 0 {
            return Ok(Vec::new());
        }
        let all =
            || trees.all_built().flat_map(|(p, tree)| tree.tombstones().map(move |key| (p, key)));
        let picked = all().chain(all()).skip(skip % total).take(max.min(total));
        Ok(picked.map(|(p, key)| (p, key.to_vec())).collect())
    }

    /// Collect a tombstone: delete `key` if it still holds `tombstone`, and remember it until
    /// `until_ms` (this node's wall clock) against older states in flight. Returns whether
    /// it was deleted, and what the deleted state recorded of the replica actor (the caller
    /// takes a new replica epoch when that is not 0: [`crate::actors`]). Refuses (false) when
    /// [`trees::COLLECTED_REMEMBERED_MAX`] tombstones are remembered already.
    pub fn collect(
        &self,
        bucket_name: &str,
        key: &[u8],
        tombstone: &[u8],
        until_ms: u64,
    ) -> Result<(bool, u64), Error> {
        let bucket = self.bucket(bucket_name)?;
        if bucket.collected().prune(self.clock.wall_ms()) >= trees::COLLECTED_REMEMBERED_MAX {
            return Ok((false, 0));
        }
        let storage_key = self.storage_key(bucket_name, key);
        if self.stored(bucket, &storage_key)?.as_deref() != Some(tombstone) {
            return Ok((false, 0));
        }
        bucket.engine.delete(&storage_key)?;
        bucket.collected().remember(key, tombstone, until_ms);
        self.noted(bucket, key, None);
        let recorded = bucket.resolver.issued(tombstone, &self.actors.actor(Role::Replica))?;
        Ok((true, recorded))
    }

    /// This node's wall clock, in milliseconds (the simulation's, in a simulation).
    pub fn wall_ms(&self) -> u64 {
        self.clock.wall_ms()
    }

    /// Delete a key's state if it is still `state` (a handed-off copy that no write touched
    /// since it was sent). Returns whether it was deleted. A deleted copy that held writes of
    /// the current replica actor makes the node take a new replica epoch.
    pub fn delete_if_unchanged(
        &self,
        bucket_name: &str,
        key: &[u8],
        state: &[u8],
    ) -> Result<bool, Error> {
        let bucket = self.bucket(bucket_name)?;
        let storage_key = self.storage_key(bucket_name, key);
        if self.stored(bucket, &storage_key)?.as_deref() != Some(state) {
            return Ok(false);
        }
        bucket.engine.delete(&storage_key)?;
        self.noted(bucket, key, None);
        let recorded = bucket.resolver.issued(state, &self.actors.actor(Role::Replica))?;
        if self.actors.dropped(Role::Replica, recorded) {
            tracing::info!(bucket = %bucket_name, "handed off a copy with this node's writes: new replica epoch");
        }
        Ok(true)
    }

    /// A hint for a key of `bucket_name` holding `state` was delivered and deleted: take a new
    /// hint epoch if it held writes of the current hint actor.
    pub fn hint_dropped(&self, bucket_name: &str, state: &[u8]) -> Result<(), Error> {
        let bucket = self.bucket(bucket_name)?;
        let recorded = bucket.resolver.issued(state, &self.actors.actor(Role::Hint))?;
        self.actors.dropped(Role::Hint, recorded);
        Ok(())
    }

    fn storage_key(&self, bucket: &str, key: &[u8]) -> Vec<u8> {
        storage_key(partition_of(key_hash(bucket, key), self.partitions), key)
    }
}

/// Paces a scan on the blocking pool at `per_second` keys: every 1 024 keys it sleeps for
/// what it ran ahead. A scan on the calling thread (the simulation) is not paced.
struct Pace {
    on: bool,
    per_second: u64,
    started: std::time::Instant,
    keys: u64,
}

impl Pace {
    fn new(on: bool, per_second: u64) -> Self {
        Self { on, per_second: per_second.max(1), started: std::time::Instant::now(), keys: 0 }
    }

    fn tick(&mut self) {
        self.keys += 1;
        if !self.on || self.keys % 1_024 != 0 {
            return;
        }
        let due = std::time::Duration::from_micros(self.keys * 1_000_000 / self.per_second);
        if let Some(ahead) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}

/// Fold `visit` over one partition of `engine` (keys without the partition prefix).
fn fold_prefix<T>(
    engine: &dyn StorageEngine,
    resolver: &dyn Resolver,
    partition: u16,
    init: T,
    mut visit: impl FnMut(&mut T, &[u8], &[u8]),
) -> Result<T, Error> {
    let mut folded = init;
    let mut failed = None;
    engine.scan_prefix(&partition.to_be_bytes(), &mut |stored, value| {
        let key = &stored[crate::ring::PARTITION_PREFIX_BYTES..];
        if !chain::is_chain(value) {
            visit(&mut folded, key, value);
            return std::ops::ControlFlow::Continue(());
        }
        match fold_chain(resolver, value.to_vec()) {
            Ok(state) => {
                visit(&mut folded, key, &state);
                std::ops::ControlFlow::Continue(())
            }
            Err(e) => {
                failed = Some(e);
                std::ops::ControlFlow::Break(())
            }
        }
    })?;
    match failed {
        Some(e) => Err(e),
        None => Ok(folded),
    }
}

/// Whether a resolver's writes come with deltas (`Resolver::apply_with_delta`), which
/// replicas append rather than merge ("Deltas appended"): the CRDTs.
fn has_deltas(kind: ResolverKind) -> bool {
    matches!(kind, ResolverKind::Cart | ResolverKind::Orset | ResolverKind::Pncounter)
}

/// The state a stored value stands for: itself, or, for a value with parts appended
/// ([`chain`]), the merge of its base and every part. The parts are merged together first
/// (they are small), then into the base once, so a fold walks the large base once.
pub fn fold_chain(resolver: &dyn Resolver, value: Vec<u8>) -> Result<Vec<u8>, Error> {
    let Some(pieces) = chain::pieces(&value)? else { return Ok(value) };
    let (base, parts) = pieces.split_first().expect("a chain has a base");
    let Some((first, rest)) = parts.split_first() else { return Ok(base.to_vec()) };
    let mut delta = first.to_vec();
    for part in rest {
        delta = resolver.merge(&delta, part)?;
    }
    Ok(resolver.merge_into(base, &delta)?)
}

fn check_write_sizes(store: &Store, write: &Write) -> Result<(), Error> {
    use cartwheel_resolvers::Op;
    match write {
        Write::Put { value, .. } => store.check_value(value),
        Write::Delete { .. } => Ok(()),
        Write::Update { ops, .. } => {
            for op in ops {
                let element = match op {
                    Op::CounterIncrement(_) | Op::CounterReset | Op::SetClear | Op::CartClear => {
                        continue
                    }
                    Op::SetAdd(e) | Op::SetRemove(e) | Op::CartRemove(e) => e,
                    Op::CartAdd { item, .. } | Op::CartSetQuantity { item, .. } => item,
                };
                store.check_value(element)?;
            }
            Ok(())
        }
    }
}

fn bucket(name: &str, config: &BucketConfig, engine: Arc<dyn StorageEngine>) -> Bucket {
    Bucket {
        name: name.to_string(),
        config: config.clone(),
        engine,
        resolver: cartwheel_resolvers::build(config.resolver, config.resolver_config),
        sibling_warnings: std::sync::atomic::AtomicU64::new(0),
        trees: std::sync::Mutex::default(),
        collected: std::sync::Mutex::default(),
    }
}

#[cfg(test)]
mod tests;
