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
//! A CRDT delta is appended to the stored value rather than merged into it, and folded
//! on read: see [`deltas`].
//!
//! ## Atomicity of read-modify-write
//! `write` and `merge` read a state, compute a new one and put it, with no `.await` in between,
//! and every call runs on the node's one RPC thread (DESIGN §7). So no two read-modify-writes
//! of a key interleave on a node, and no concurrent update is lost between the read and the
//! put. Durability waits (`sync`) happen after the put, off that thread.
//!
//! ## Partition scans and trees
//! Scans, the anti-entropy trees built from them, and reads of many keys run off the RPC
//! thread: see [`scans`].
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

pub mod deltas;
pub mod hints;
pub mod scans;
pub mod sync_group;
pub mod trees;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cartwheel_engines::{EngineError, StorageEngine};
use cartwheel_resolvers::{Applied, HybridClock, Read, Resolver, ResolverKind, Stamp, Write};

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

use deltas::{appendable, read_state};
pub use deltas::{fold_chain, CHAIN_PARTS_MAX, CHAIN_PART_BYTES_MAX};

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
        read_state(&*bucket.engine, &*bucket.resolver, storage_key)
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
        let value = bucket.engine.get(&storage_key)?;
        self.write_to(bucket, key, &storage_key, value, write)
    }

    /// [`Store::write`] once the key's stored `value` (as the engine holds it) was read.
    fn write_to(
        &self,
        bucket: &Bucket,
        key: &[u8],
        storage_key: &[u8],
        value: Option<Vec<u8>>,
        write: &Write,
    ) -> Result<Written, Error> {
        let stored = value.map(|value| fold_chain(&*bucket.resolver, value)).transpose()?;
        let current = match stored {
            Some(_) => stored,
            // A tombstone collected moments ago still stands for the key's history.
            None => self.remembered(bucket, key),
        };
        let written = self.apply(bucket, current.as_deref(), write, Role::Replica)?;
        // A small delta of a stored state is appended to it, as the replicas do: the state
        // it gives is `written.state` (a delta merged into the state it came from).
        let appended = match &written.delta {
            Some(delta) if current.is_some() && appendable(bucket, delta) => {
                self.append(bucket, key, storage_key, delta)?
            }
            _ => false,
        };
        if !appended {
            bucket.engine.put(storage_key, &written.state)?;
            self.noted(bucket, key, Some(&written.state));
        }
        Ok(written)
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
        if appendable(bucket, incoming) {
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
