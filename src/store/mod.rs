//! # The local store: buckets = engine + resolver
//!
//! A node keeps one [`Bucket`] per configured bucket: its storage engine (opened in
//! `data_dir/buckets/<name>/`) and its resolver, both used as trait objects. The store does
//! the node-local half of every request of DESIGN §2: check the request against the limits,
//! read the key's state, let the resolver apply the write, store the new state; or merge a
//! state a peer sent (replication, read repair, handoff).
//!
//! ## Atomicity of read-modify-write
//! `write` and `merge` read a state, compute a new one and put it, with no `.await` in between,
//! and every call runs on the node's one RPC thread (DESIGN §7). So no two read-modify-writes
//! of a key interleave on a node, and no concurrent update is lost between the read and the
//! put. Durability waits (`sync`) happen after the put, off that thread.
//!
//! ## Which actor writes
//! [`Store::write`] applies a write as one of the key's primaries, to the state in the
//! bucket's engine, with the node's replica actor; [`Store::write_as_hint`] applies one for
//! a key this node does not replicate, to the state the caller passes (the merge of its hints
//! for the key), with its hint actor, and stores nothing. [`crate::actors`] says why that
//! never issues a dot twice; [`Store::delete_if_unchanged`] and [`Store::hint_dropped`] take
//! a new epoch when a deleted copy held dots of the current one.
//!
//! ## Replica count on small clusters
//! This layer stores on this node only. The coordinator ([`crate::cluster`]) treats a
//! cluster smaller than N as storing `min(N, nodes)` replicas, with R and W clamped to that:
//! a single development node accepts writes to N=3 buckets.

pub mod hints;
pub mod sync_group;

use std::collections::BTreeMap;
use std::sync::Arc;

use cartwheel_engines::{EngineError, StorageEngine};
use cartwheel_resolvers::{HybridClock, Read, Resolver, ResolverKind, Stamp, Value, Write};

use crate::actors::{Actors, Role};
use crate::config::{BucketConfig, Config, Limits};
use crate::error::Error;
use crate::ring::{key_hash, partition_of, storage_key};

/// A key and its stored state.
pub type Entry = (Vec<u8>, Vec<u8>);

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
            cartwheel_engines::open(bucket.engine, &dir, &bucket.engine_options).map_err(|source| {
                OpenError { bucket: name.to_string(), dir: dir.display().to_string(), source }
            })
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
        })
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
        self.buckets.get(name).ok_or_else(|| Error::UnknownBucket(name.to_string()))
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
        Ok(bucket.engine.get(&self.storage_key(&bucket.name, key))?)
    }

    /// Apply a client write at this node as one of the key's primaries, to its state in the
    /// bucket's engine, with the replica actor; store the new state and return it with what a
    /// client reading it would see. The write is visible when this returns; durable after a
    /// sync of the bucket's engine.
    pub fn write(
        &self,
        bucket_name: &str,
        key: &[u8],
        write: &Write,
    ) -> Result<(Vec<u8>, Read), Error> {
        let bucket = self.bucket(bucket_name)?;
        self.check_key(key)?;
        let storage_key = self.storage_key(bucket_name, key);
        let current = bucket.engine.get(&storage_key)?;
        let (state, read) = self.apply(bucket, current.as_deref(), write, Role::Replica)?;
        bucket.engine.put(&storage_key, &state)?;
        Ok((state, read))
    }

    /// Apply a client write for a key this node does not replicate, with the hint actor, to
    /// `current`: the merge of every hint this node holds for the key. Stores nothing: the
    /// caller keeps the result as a hint before it yields, or the hint actor's history of the
    /// key is incomplete.
    pub fn write_as_hint(
        &self,
        bucket_name: &str,
        key: &[u8],
        current: Option<&[u8]>,
        write: &Write,
    ) -> Result<(Vec<u8>, Read), Error> {
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
    ) -> Result<(Vec<u8>, Read), Error> {
        check_write_sizes(self, write)?;
        let stamp = Stamp { actor: self.actors.actor(role), time: self.clock.now() };
        let state = bucket.resolver.apply(current, write, &stamp)?;
        let read = bucket.resolver.read(&state)?;
        if let Some(Value::Siblings(siblings)) = &read.value {
            let soft = bucket.config.resolver_config.siblings_soft_max;
            if siblings.len() >= soft && bucket.config.resolver == ResolverKind::Siblings {
                bucket.sibling_warnings.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(
                    bucket = %bucket.name,
                    siblings = siblings.len(),
                    soft_max = soft,
                    "key has many siblings: clients should read, resolve and write back"
                );
            }
        }
        Ok((state, read))
    }

    /// Merge a state received from a peer into this node's state for the key, and store it.
    /// Never refused for a resolver limit: replicas must always take in each other's states.
    pub fn merge(&self, bucket_name: &str, key: &[u8], incoming: &[u8]) -> Result<Vec<u8>, Error> {
        let bucket = self.bucket(bucket_name)?;
        self.check_key(key)?;
        let storage_key = self.storage_key(bucket_name, key);
        let merged = match bucket.engine.get(&storage_key)? {
            Some(current) => bucket.resolver.merge(&current, incoming)?,
            None => {
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
        bucket.engine.put(&storage_key, &merged)?;
        Ok(merged)
    }

    /// Every (key, state) of one partition of a bucket: a prefix scan that reads no other
    /// partition's values.
    pub fn partition_entries(&self, bucket: &str, partition: u16) -> Result<Vec<Entry>, Error> {
        let bucket = self.bucket(bucket)?;
        let mut out = Vec::new();
        bucket.engine.scan_prefix(&partition.to_be_bytes(), &mut |stored, state| {
            out.push((stored[crate::ring::PARTITION_PREFIX_BYTES..].to_vec(), state.to_vec()));
            std::ops::ControlFlow::Continue(())
        })?;
        Ok(out)
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
        if bucket.engine.get(&storage_key)?.as_deref() != Some(state) {
            return Ok(false);
        }
        bucket.engine.delete(&storage_key)?;
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
                    Op::CounterIncrement(_) => continue,
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
    }
}
