//! # Deltas appended
//!
//! A replica does not even merge a small delta (up to [`CHAIN_PART_BYTES_MAX`]) of a CRDT
//! bucket (`cart`, `orset`, `pncounter`): it checks that it decodes and appends it to the
//! key's stored value ([`cartwheel_engines::StorageEngine::append`]), which writes the
//! delta, not the state (the `log` and `buffer` engines write one record of the delta's
//! size). The coordinator does the same with its own write's delta, which it finds without
//! making the new state ([`Store::coordinate`]). Every read of the key folds the parts in
//! ([`fold_chain`]: the parts merged together, then into the stored state once), and once a
//! key has [`CHAIN_PARTS_MAX`] parts the store folds them and puts the state. So an update
//! of a 1 000-item cart writes a few hundred bytes on each replica, and every
//! [`CHAIN_PARTS_MAX`]th rewrites the cart. A state merged this way is never compared with
//! the stored one, so the anti-entropy tree marks the key dirty ([`super::trees`], "Keys
//! marked dirty") rather than hash a state nobody computed. Larger states (read repair,
//! anti-entropy, handoff) and other resolvers are merged and put as before
//! ([`Store::merge`]). So is a state for a key this node holds nothing for: the checks of a
//! state with no local copy need the stored state.

use cartwheel_engines::{chain, StorageEngine};
use cartwheel_resolvers::{DeltaApplied, Read, Resolver, ResolverKind, Stamp, Write};

use super::{check_write_sizes, Bucket, Store};
use crate::actors::Role;
use crate::error::Error;
use crate::ring::{key_hash, partition_of};

/// Parts a key's stored value gathers ("Deltas appended") before the store folds them
/// into its state and puts that: a read folds up to this many, and a large state is
/// rewritten once per this many updates.
pub const CHAIN_PARTS_MAX: u32 = 16;

/// The largest state appended as a part rather than merged and put: deltas of single
/// updates are a few hundred bytes; whole states sent by repair or handoff are merged.
pub const CHAIN_PART_BYTES_MAX: usize = 4096;

impl Store {
    /// Append `part`, a state to merge into `key`'s and [`appendable`], to its stored value:
    /// true when done, false when the key holds nothing (the caller then merges and puts).
    /// Folds the key's parts into one state once they are [`CHAIN_PARTS_MAX`].
    pub(super) fn append(
        &self,
        bucket: &Bucket,
        key: &[u8],
        storage_key: &[u8],
        part: &[u8],
    ) -> Result<bool, Error> {
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
    /// other replicas (the delta, else the new state) and the answer ([`super::Written::answer`]).
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
        self.check_key(key)?;
        let storage_key = self.storage_key(bucket_name, key);
        let value = bucket.engine.get(&storage_key)?;
        if let (false, Some(value)) = (body, &value) {
            check_write_sizes(self, write)?;
            if let Some(DeltaApplied { delta, context }) = self.delta_of(bucket, value, write)? {
                if self.append(bucket, key, &storage_key, &delta)? {
                    return Ok((delta, Read { context, value: None }));
                }
            }
        }
        let written = self.write_to(bucket, key, &storage_key, value, write)?;
        let read = written.answer(&*bucket.resolver, body)?;
        Ok((written.delta.unwrap_or(written.state), read))
    }

    /// The delta and new context of `write` to the state `value` (as stored: a chain or
    /// not) stands for, when the short way of [`Store::coordinate`] applies: the resolver
    /// has one, the delta is [`appendable`], and the new state cannot pass the state size
    /// limit (the stored value and the delta together are under it).
    fn delta_of(
        &self,
        bucket: &Bucket,
        value: &[u8],
        write: &Write,
    ) -> Result<Option<DeltaApplied>, Error> {
        if !has_deltas(bucket.resolver.kind()) {
            return Ok(None);
        }
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
        let small = appendable(bucket, &applied.delta)
            && value.len() + applied.delta.len() <= self.limits.state_bytes_max();
        Ok(small.then_some(applied))
    }
}

/// Whether a resolver's writes come with deltas (`Resolver::apply_with_delta`), which
/// replicas append rather than merge ("Deltas appended"): the CRDTs.
fn has_deltas(kind: ResolverKind) -> bool {
    matches!(kind, ResolverKind::Cart | ResolverKind::Orset | ResolverKind::Pncounter)
}

/// Whether `part`, a state of `bucket`, is appended to a stored value rather than merged
/// into it: a state of a resolver with deltas, of at most [`CHAIN_PART_BYTES_MAX`].
pub(super) fn appendable(bucket: &Bucket, part: &[u8]) -> bool {
    has_deltas(bucket.resolver.kind()) && part.len() <= CHAIN_PART_BYTES_MAX
}

/// The state stored under `storage_key` in `engine`, its parts folded in ([`fold_chain`]).
/// The one way the store reads a state, on the RPC thread or off it.
pub(super) fn read_state(
    engine: &dyn StorageEngine,
    resolver: &dyn Resolver,
    storage_key: &[u8],
) -> Result<Option<Vec<u8>>, Error> {
    engine.get(storage_key)?.map(|value| fold_chain(resolver, value)).transpose()
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
