//! # Partition scans, trees, and reads of many keys
//!
//! Anti-entropy and handoff read whole partitions. A scan runs on tokio's blocking pool
//! with the engine's `Arc` ([`Store::fold_partition`]), at most
//! [`super::PARTITION_SCANS_MAX`] at a time per store, so the RPC thread goes on serving
//! meanwhile. Writes go on too, so a scan may or may not see a write that races with it (the
//! engines' iteration contract); both users cope: anti-entropy compares again next time, and
//! handoff deletes a copy only if it is still the state it sent
//! ([`Store::delete_if_unchanged`]). The seeded simulation, whose runs must not depend on
//! thread timing, scans on the calling thread instead ([`Store::scan_on_calling_thread`]).
//!
//! This room also builds the anti-entropy trees from those scans and settles their dirty
//! keys ([`super::trees`]), and reads the states of given keys ([`Store::fetch_many`]), the
//! same way: off the RPC thread, within the same bound. Every state read here is folded
//! ([`super::fold_chain`]).

use std::sync::Arc;

use cartwheel_engines::{chain, StorageEngine};
use cartwheel_resolvers::Resolver;

use super::deltas::{fold_chain, read_state};
use super::{trees, Bucket, Entry, Store};
use crate::error::Error;

impl Store {
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
                if let Some(state) = read_state(&*engine, &*resolver, &stored)? {
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
                let state = read_state(&*engine, &*resolver, &stored)?;
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
