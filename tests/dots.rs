//! A dot is never issued twice: the amnesia cases of `src/actors.rs`, per resolver, on a real
//! store (log engine, reopened from its directory).
//!
//! Each case runs twice. Once as the node does it: the case must lose nothing. Once with the
//! node's old habit (one actor per node whatever happened, here a store reopened with the
//! same seed, or a copy dropped behind the store's back): the case must lose a write, which
//! shows that it reproduces the loss the mechanism prevents.

use cartwheel::actors::{Actors, Role};
use cartwheel::config::Config;
use cartwheel::ring::{key_hash, partition_of, storage_key};
use cartwheel::store::Store;
use cartwheel_resolvers::{Op, Read, Value, Write};

const KEY: &[u8] = b"k";

/// The buckets under test, one per resolver that issues dots.
const BUCKETS: [&str; 4] = ["carts", "sets", "counters", "siblings"];

fn config(dir: &std::path::Path) -> Config {
    let text = format!(
        "[node]\nid = \"n1\"\nlisten = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n\
         [security]\nmode = \"insecure\"\n\
         [buckets.carts]\nengine = \"log\"\nresolver = \"cart\"\n\
         [buckets.sets]\nengine = \"log\"\nresolver = \"orset\"\n\
         [buckets.counters]\nengine = \"log\"\nresolver = \"pncounter\"\n\
         [buckets.siblings]\nengine = \"log\"\nresolver = \"siblings\"\n",
        dir.display()
    );
    Config::parse(&text, "test.toml").unwrap()
}

/// The `i`-th write of a bucket: each adds something of its own.
fn nth_write(bucket: &str, i: u64) -> Write {
    let name = format!("w{i}").into_bytes();
    let ops = match bucket {
        "carts" => vec![Op::CartAdd { item: name, quantity: 1 }],
        "sets" => vec![Op::SetAdd(name)],
        "counters" => vec![Op::CounterIncrement(1)],
        "siblings" => return Write::Put { value: name, context: Vec::new() },
        other => unreachable!("no bucket {other}"),
    };
    Write::Update { ops, context: Vec::new() }
}

/// How many of writes `0..count` a read still shows.
fn writes_seen(read: &Read, count: u64) -> u64 {
    let has = |i: u64| format!("w{i}").into_bytes();
    match &read.value {
        Some(Value::Cart(items)) => {
            (0..count).filter(|i| items.iter().any(|(item, _)| *item == has(*i))).count() as u64
        }
        Some(Value::Set(members)) | Some(Value::Siblings(members)) => {
            (0..count).filter(|i| members.contains(&has(*i))).count() as u64
        }
        Some(Value::Counter(value)) => (*value).clamp(0, count as i64) as u64,
        None => 0,
    }
}

fn merge_and_count(store: &Store, bucket: &str, states: &[&[u8]], count: u64) -> u64 {
    let resolver = &store.bucket(bucket).unwrap().resolver;
    let mut merged = states[0].to_vec();
    for state in &states[1..] {
        merged = resolver.merge(&merged, state).unwrap();
    }
    writes_seen(&resolver.read(&merged).unwrap(), count)
}

/// Put `state` back as the key's stored state, as a crash that lost the writes after it
/// leaves it.
fn roll_back(store: &Store, bucket: &str, state: &[u8]) {
    let storage = storage_key(partition_of(key_hash(bucket, KEY), store.partitions()), KEY);
    store.bucket(bucket).unwrap().engine.put(&storage, state).unwrap();
}

/// Kill -9 with dw = 0: the primary's copy lost its last write, which another replica holds;
/// after the restart the primary coordinates a new write. Returns how many of the three
/// writes the replicas' merge keeps.
fn lost_tail(bucket: &str, same_actor_after_restart: bool) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let (before, other_replica) = {
        let store = Store::open_with(&config(dir.path()), Actors::with_seed("n1", 1)).unwrap();
        let before = store.write(bucket, KEY, &nth_write(bucket, 0)).unwrap().state;
        let after = store.write(bucket, KEY, &nth_write(bucket, 1)).unwrap().state;
        (before, after)
    };
    let seed = if same_actor_after_restart { 1 } else { 2 };
    let store = Store::open_with(&config(dir.path()), Actors::with_seed("n1", seed)).unwrap();
    roll_back(&store, bucket, &before);
    let new = store.write(bucket, KEY, &nth_write(bucket, 2)).unwrap().state;
    merge_and_count(&store, bucket, &[&other_replica, &new], 3)
}

/// Ownership handoff: a primary hands its copy away (the new owners hold it) and later
/// coordinates the key again with no copy. Returns how many of the three writes survive.
fn handed_away_and_back(bucket: &str, drop_behind_the_stores_back: bool) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(&config(dir.path()), Actors::with_seed("n1", 1)).unwrap();
    store.write(bucket, KEY, &nth_write(bucket, 0)).unwrap();
    let handed = store.write(bucket, KEY, &nth_write(bucket, 1)).unwrap().state;
    if drop_behind_the_stores_back {
        let storage = storage_key(partition_of(key_hash(bucket, KEY), store.partitions()), KEY);
        store.bucket(bucket).unwrap().engine.delete(&storage).unwrap();
    } else {
        assert!(store.delete_if_unchanged(bucket, KEY, &handed).unwrap());
    }
    assert_eq!(store.fetch(bucket, KEY).unwrap(), None);
    let new = store.write(bucket, KEY, &nth_write(bucket, 2)).unwrap().state;
    merge_and_count(&store, bucket, &[&handed, &new], 3)
}

/// A node that does not replicate the key coordinates it twice on its hints, with a hint
/// delivered and deleted in between (the owner holds it). Returns how many writes survive.
fn hint_delivered_in_between(bucket: &str, forget_to_report_the_drop: bool) -> u64 {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(&config(dir.path()), Actors::with_seed("n1", 1)).unwrap();
    let first = store.write_as_hint(bucket, KEY, None, &nth_write(bucket, 0)).unwrap().state;
    if !forget_to_report_the_drop {
        store.hint_dropped(bucket, &first).unwrap();
    }
    let second = store.write_as_hint(bucket, KEY, None, &nth_write(bucket, 1)).unwrap().state;
    // A stray copy in the bucket's engine is never written on this path.
    assert_eq!(store.fetch(bucket, KEY).unwrap(), None);
    merge_and_count(&store, bucket, &[&first, &second], 2)
}

/// A restarted primary whose copy lost its unsynced tail coordinates a new write: with a new
/// epoch nothing is lost; with the actor it had before the crash a write is lost.
#[test]
fn a_lost_unsynced_tail_reissues_no_dot() {
    for bucket in BUCKETS {
        assert_eq!(lost_tail(bucket, false), 3, "{bucket}: a write was lost");
        assert!(lost_tail(bucket, true) < 3, "{bucket}: the old actor should lose a write");
    }
}

/// A primary that handed its copy away and coordinates the key again takes a new epoch;
/// without it, its next dot is one the new owners already hold.
#[test]
fn a_copy_handed_away_and_back_reissues_no_dot() {
    for bucket in BUCKETS {
        assert_eq!(handed_away_and_back(bucket, false), 3, "{bucket}: a write was lost");
        assert!(handed_away_and_back(bucket, true) < 3, "{bucket}: the control should lose");
    }
}

/// A node coordinating on its hints takes a new hint epoch once a hint with its writes is
/// delivered and deleted; without it, its next dot is one the owner already holds.
#[test]
fn a_delivered_hint_reissues_no_dot() {
    for bucket in BUCKETS {
        assert_eq!(hint_delivered_in_between(bucket, false), 2, "{bucket}: a write was lost");
        assert!(hint_delivered_in_between(bucket, true) < 2, "{bucket}: the control should lose");
    }
}

/// Every start draws new epochs, for both roles, whatever the data directory holds.
#[test]
fn every_start_takes_new_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(&config(dir.path())).unwrap();
    let actors = (first.actors().actor(Role::Replica), first.actors().actor(Role::Hint));
    drop(first);
    let second = Store::open(&config(dir.path())).unwrap();
    assert_ne!(second.actors().actor(Role::Replica), actors.0);
    assert_ne!(second.actors().actor(Role::Hint), actors.1);
    assert!(String::from_utf8(actors.0).unwrap().starts_with("n1/"));
}

/// A copy that vanished behind the store's back is noticed when a replica sends a state
/// naming the current replica actor: the node takes a new epoch before its next write.
#[test]
fn a_missing_copy_named_by_a_replica_takes_a_new_epoch() {
    for bucket in BUCKETS {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(&config(dir.path()), Actors::with_seed("n1", 1)).unwrap();
        let replicated = store.write(bucket, KEY, &nth_write(bucket, 0)).unwrap().state;
        let storage = storage_key(partition_of(key_hash(bucket, KEY), store.partitions()), KEY);
        store.bucket(bucket).unwrap().engine.delete(&storage).unwrap();
        let before = store.actors().actor(Role::Replica);
        store.merge(bucket, KEY, &replicated).unwrap();
        assert_ne!(store.actors().actor(Role::Replica), before, "{bucket}: no new epoch");
        let new = store.write(bucket, KEY, &nth_write(bucket, 1)).unwrap().state;
        assert_eq!(merge_and_count(&store, bucket, &[&replicated, &new], 2), 2, "{bucket}");
    }
}
