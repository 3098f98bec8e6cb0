//! The store's unit tests (a file of their own: src/store/mod.rs holds the store).

use super::*;
use cartwheel_engines::{chain, EngineKind};

/// A partition scan finds exactly the keys of its partition, without their prefix, and
/// the same on the blocking pool as on the calling thread. Method: 200 keys in a store of
/// 8 partitions; scan every partition both ways and compare with the ring's placement.
#[test]
fn partition_scans_find_their_partition_on_the_pool_and_on_the_caller() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded();
    config.node.data_dir = dir.path().to_path_buf();
    config.partitions = 8;
    config.buckets.clear();
    let bucket = BucketConfig::new(EngineKind::Memory, ResolverKind::Lww);
    config.buckets.insert("b".into(), bucket);
    let pool = Store::open(&config).unwrap();
    let caller = Store::open(&config).unwrap().scan_on_calling_thread();
    let mut expected: Vec<Vec<Entry>> = vec![Vec::new(); 8];
    for i in 0..200u32 {
        let key = format!("key-{i}").into_bytes();
        let write = Write::Put { value: i.to_be_bytes().to_vec(), context: Vec::new() };
        let state = pool.write("b", &key, &write).unwrap().state;
        caller.merge("b", &key, &state).unwrap();
        let partition = partition_of(key_hash("b", &key), 8);
        expected[partition as usize].push((key, state));
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    for (partition, mut expected) in expected.into_iter().enumerate() {
        expected.sort();
        for store in [&pool, &caller] {
            let scan = store.partition_entries("b", partition as u16);
            let mut found = runtime.block_on(scan).unwrap();
            found.sort();
            assert_eq!(found, expected, "partition {partition}");
        }
    }
    let unknown = runtime.block_on(pool.partition_entries("nope", 0));
    assert!(matches!(unknown, Err(Error::UnknownBucket(_))), "{unknown:?}");
}

/// An engine that failed turns up in `failed_buckets`, and the replica actor is renewed
/// once for it (before any reopen), not every round; after `engine_reopened` a new failure
/// renews it again. Method: a memory engine whose `failed` a test flag drives.
#[test]
fn a_failed_engine_renews_the_replica_actor_once_per_failure() {
    #[derive(Debug, Default)]
    struct Flaky {
        inner: cartwheel_engines::memory::MemoryEngine,
        failed: std::sync::atomic::AtomicBool,
    }
    impl StorageEngine for Flaky {
        fn kind(&self) -> EngineKind {
            EngineKind::Memory
        }
        fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
            self.inner.get(key)
        }
        fn put(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
            self.inner.put(key, value)
        }
        fn delete(&self, key: &[u8]) -> Result<(), EngineError> {
            self.inner.delete(key)
        }
        fn scan_prefix(
            &self,
            prefix: &[u8],
            visit: &mut dyn FnMut(&[u8], &[u8]) -> std::ops::ControlFlow<()>,
        ) -> Result<(), EngineError> {
            self.inner.scan_prefix(prefix, visit)
        }
        fn sync(&self) -> Result<(), EngineError> {
            Ok(())
        }
        fn is_durable(&self) -> bool {
            false
        }
        fn stats(&self) -> cartwheel_engines::EngineStats {
            self.inner.stats()
        }
        fn failed(&self) -> bool {
            self.failed.load(std::sync::atomic::Ordering::Relaxed)
        }
    }
    let mut config = Config::embedded();
    config.buckets.clear();
    config.buckets.insert("b".into(), BucketConfig::new(EngineKind::Memory, ResolverKind::Lww));
    let engine = Arc::new(Flaky::default());
    let handed = Arc::clone(&engine);
    let open = move |_: &str, _: &BucketConfig| Ok(Arc::clone(&handed) as _);
    let store = Store::with_engines(&config, Actors::new("n1"), HybridClock::new(), open).unwrap();
    let actor = || store.actors.actor(Role::Replica);
    let before = actor();
    assert!(store.failed_buckets().is_empty());
    assert_eq!(actor(), before);
    engine.failed.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(store.failed_buckets().len(), 1);
    let renewed = actor();
    assert_ne!(renewed, before, "a failure renews the replica actor");
    assert_eq!(store.failed_buckets().len(), 1);
    assert_eq!(actor(), renewed, "once per failure, not every round");
    engine.failed.store(false, std::sync::atomic::Ordering::Relaxed);
    store.engine_reopened("b");
    engine.failed.store(true, std::sync::atomic::Ordering::Relaxed);
    store.failed_buckets();
    assert_ne!(actor(), renewed, "a new failure renews it again");
}

/// A peer's lww state stamped further ahead of the store's clock than
/// max_clock_offset_ms is refused by merge (badRequest, counted, nothing stored); one
/// within the offset is taken; states of resolvers without timestamps are not held to
/// it. Method: a store whose wall clock is fixed at 1 000 000 ms.
#[test]
fn states_stamped_too_far_ahead_are_refused() {
    use cartwheel_resolvers::{Resolver, Timestamp};
    let mut config = Config::embedded();
    config.buckets.clear();
    config.buckets.insert("b".into(), BucketConfig::new(EngineKind::Memory, ResolverKind::Lww));
    config.cluster.max_clock_offset_ms = 500;
    let open = |_: &str, _: &BucketConfig| {
        Ok(Arc::new(cartwheel_engines::memory::MemoryEngine::default()) as _)
    };
    let clock = HybridClock::with_wall_clock(|| 1_000_000);
    let store = Store::with_engines(&config, Actors::new("n1"), clock, open).unwrap();
    let lww = cartwheel_resolvers::lww::Lww;
    let stamped = |physical_ms: u64, logical: u32| {
        let stamp = Stamp { actor: b"peer".to_vec(), time: Timestamp { physical_ms, logical } };
        let put = Write::Put { value: b"v".to_vec(), context: Vec::new() };
        lww.apply(None, &put, &stamp).unwrap()
    };
    for forged in [stamped(u64::MAX, u32::MAX), stamped(1_000_501, 0)] {
        let err = store.merge("b", b"k", &forged).unwrap_err();
        assert!(matches!(err, Error::BadRequest(_)), "{err:?}");
    }
    assert_eq!(store.states_refused(), 2);
    assert_eq!(store.fetch("b", b"k").unwrap(), None, "nothing stored");
    let honest = stamped(1_000_500, 7);
    store.merge("b", b"k", &honest).unwrap();
    assert_eq!(store.fetch("b", b"k").unwrap(), Some(honest.clone()));
    assert_eq!(store.states_refused(), 2);
    // A client write after it is stamped past it, and wins.
    let write = Write::Put { value: b"mine".to_vec(), context: Vec::new() };
    let state = store.write("b", b"k", &write).unwrap().state;
    assert_eq!(lww.merge(&honest, &state).unwrap(), state);
}

/// An engine whose scans take a while and count how many run at once.
#[derive(Debug, Default)]
struct SlowScans {
    inner: cartwheel_engines::memory::MemoryEngine,
    running: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
}

impl StorageEngine for SlowScans {
    fn kind(&self) -> EngineKind {
        self.inner.kind()
    }
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.inner.get(key)
    }
    fn put(&self, key: &[u8], value: &[u8]) -> Result<(), EngineError> {
        self.inner.put(key, value)
    }
    fn delete(&self, key: &[u8]) -> Result<(), EngineError> {
        self.inner.delete(key)
    }
    fn scan_prefix(
        &self,
        prefix: &[u8],
        visit: &mut dyn FnMut(&[u8], &[u8]) -> std::ops::ControlFlow<()>,
    ) -> Result<(), EngineError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.running.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        std::thread::sleep(std::time::Duration::from_millis(30));
        self.running.fetch_sub(1, SeqCst);
        self.inner.scan_prefix(prefix, visit)
    }
    fn sync(&self) -> Result<(), EngineError> {
        self.inner.sync()
    }
    fn is_durable(&self) -> bool {
        false
    }
    fn stats(&self) -> cartwheel_engines::EngineStats {
        self.inner.stats()
    }
}

/// Scans run off the calling thread, at most [`PARTITION_SCANS_MAX`] at once, and one whose
/// caller stopped waiting still counts until it ends. Method: an engine whose scans sleep
/// and count; a scan given up early, then eight at once, while a local timer must keep
/// ticking on the runtime's one thread.
#[test]
fn scans_leave_the_thread_and_are_bounded() {
    let mut config = Config::embedded();
    config.buckets.clear();
    config.buckets.insert("b".into(), BucketConfig::new(EngineKind::Memory, ResolverKind::Lww));
    let engine = Arc::new(SlowScans::default());
    let shared: Arc<dyn StorageEngine> = Arc::clone(&engine) as _;
    let open = |_: &str, _: &BucketConfig| Ok(Arc::clone(&shared));
    let store = Store::with_engines(&config, Actors::new("n1"), HybridClock::new(), open).unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let given_up = tokio::time::timeout(
            std::time::Duration::from_millis(5),
            store.partition_entries("b", 0),
        );
        assert!(given_up.await.is_err(), "the slow scan outlasts its caller");
        let scans = async {
            let scanned =
                futures::future::join_all((0..8).map(|p| store.partition_entries("b", p)));
            (scanned.await, std::time::Instant::now())
        };
        let ticks = async {
            for _ in 0..10 {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            std::time::Instant::now()
        };
        let ((scanned, scans_done), ticks_done) = futures::future::join(scans, ticks).await;
        assert!(scanned.iter().all(Result::is_ok));
        assert!(ticks_done < scans_done, "the thread ran its timers while the scans ran");
    });
    let most = engine.most.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(most, PARTITION_SCANS_MAX, "scans at once");
}

/// A store of one `cart` bucket "c" on the memory engine, 8 partitions, with node id `id`
/// (and replica actors of its own).
fn cart_store(id: &str) -> Store {
    cart_store_with(Actors::new(id))
}

fn cart_store_with(actors: Actors) -> Store {
    let mut config = Config::embedded();
    config.partitions = 8;
    config.buckets.clear();
    config.buckets.insert("c".into(), BucketConfig::new(EngineKind::Memory, ResolverKind::Cart));
    let open = |_: &str, _: &BucketConfig| {
        Ok(Arc::new(cartwheel_engines::memory::MemoryEngine::default()) as _)
    };
    Store::with_engines(&config, actors, HybridClock::new(), open).unwrap()
}

fn cart_add(item: &str) -> Write {
    let op = cartwheel_resolvers::Op::CartAdd { item: item.as_bytes().to_vec(), quantity: 1 };
    Write::Update { ops: vec![op], context: Vec::new() }
}

/// What the bucket's engine holds for `key`, unfolded.
fn raw(store: &Store, key: &[u8]) -> Option<Vec<u8>> {
    let bucket = store.bucket("c").unwrap();
    bucket.engine.get(&store.storage_key("c", key)).unwrap()
}

/// A CRDT write's delta is appended to the stored state, on the coordinator and on a
/// replica that merges it, and a read folds the parts: both read the state the
/// coordinator computed, and a replica that took the whole states reads the same. After
/// CHAIN_PARTS_MAX parts the store folds them and stores the state alone.
#[test]
fn deltas_are_appended_and_folded_on_read() {
    let coordinator = cart_store("n1");
    let replica = cart_store("n2");
    let whole = cart_store("n3");
    let key = b"cart";
    // A first write has no delta smaller than its state.
    let first = coordinator.write("c", key, &cart_add("item-0")).unwrap();
    replica.merge("c", key, &first.state).unwrap();
    whole.merge("c", key, &first.state).unwrap();
    assert!(!chain::is_chain(&raw(&coordinator, key).unwrap()), "a new key is put");
    for i in 1..CHAIN_PARTS_MAX {
        let written = coordinator.write("c", key, &cart_add(&format!("item-{i}"))).unwrap();
        let delta = written.delta.clone().unwrap();
        assert!(delta.len() < written.state.len());
        replica.merge("c", key, &delta).unwrap();
        whole.merge("c", key, &written.state).unwrap();
        for store in [&coordinator, &replica] {
            let stored = raw(store, key).unwrap();
            assert_eq!(chain::parts(&stored), i, "a part per update");
            assert_eq!(store.fetch("c", key).unwrap().unwrap(), written.state);
        }
        assert_eq!(whole.fetch("c", key).unwrap().unwrap(), written.state);
    }
    let last = coordinator.write("c", key, &cart_add("last")).unwrap();
    replica.merge("c", key, last.delta.as_deref().unwrap()).unwrap();
    for store in [&coordinator, &replica] {
        let stored = raw(store, key).unwrap();
        assert!(!chain::is_chain(&stored), "folded after {CHAIN_PARTS_MAX} parts");
        assert_eq!(stored, last.state);
    }
}

/// A small state from a peer that does not decode is refused, and nothing is appended.
#[test]
fn an_undecodable_delta_is_refused_and_not_appended() {
    let store = cart_store("n1");
    store.write("c", b"k", &cart_add("a")).unwrap();
    let written = store.write("c", b"k", &cart_add("b")).unwrap();
    let before = raw(&store, b"k").unwrap();
    let mut bad = written.delta.unwrap();
    let last = bad.len() - 1;
    bad.truncate(last);
    assert!(store.merge("c", b"k", &bad).is_err());
    assert!(store.merge("c", b"k", b"\x05\x01junk").is_err());
    assert_eq!(raw(&store, b"k").unwrap(), before);
    assert_eq!(store.fetch("c", b"k").unwrap().unwrap(), written.state);
}

/// A built anti-entropy tree whose keys took appended deltas gives, once settled, the
/// leaves of a store that merged the whole states, so replicas that store differently
/// still compare equal. Method: a replica appends deltas, another merges whole states;
/// their leaves for the key's partition must match after each update.
#[test]
fn trees_settle_keys_written_by_appending() {
    let coordinator = cart_store("n1");
    let appending = cart_store("n2");
    let whole = cart_store("n3");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let key = b"cart";
    let partition = partition_of(key_hash("c", key), 8);
    let first = coordinator.write("c", key, &cart_add("a")).unwrap();
    appending.merge("c", key, &first.state).unwrap();
    whole.merge("c", key, &first.state).unwrap();
    for store in [&appending, &whole] {
        runtime.block_on(store.tree_leaves("c", partition)).unwrap();
    }
    for i in 0..5 {
        let written = coordinator.write("c", key, &cart_add(&format!("b{i}"))).unwrap();
        appending.merge("c", key, written.delta.as_deref().unwrap()).unwrap();
        whole.merge("c", key, &written.state).unwrap();
        assert!(chain::is_chain(&raw(&appending, key).unwrap()));
        let dirty = appending.bucket("c").unwrap().trees().built(partition).unwrap().dirty();
        assert_eq!(dirty.len(), 1, "the key is marked dirty");
        let settled = runtime.block_on(appending.tree_leaves("c", partition)).unwrap();
        let expected = runtime.block_on(whole.tree_leaves("c", partition)).unwrap();
        assert_eq!(settled, expected, "after update {i}");
        let tree = appending.bucket("c").unwrap().trees().built(partition).unwrap().dirty();
        assert!(tree.is_empty(), "settled");
    }
}

/// The coordinator's short way (`Store::coordinate` without a body) sends, answers and
/// stores what the whole way (`Store::write`, then the answer) does: the same delta, the
/// same context, and a stored chain that folds to the same state. Method: two stores of the
/// same node id take the same adds, sets and removes, one each way.
#[test]
fn the_coordinators_short_way_gives_the_whole_ways_delta_and_context() {
    let short = cart_store_with(Actors::with_seed("n1", 7));
    let whole = cart_store_with(Actors::with_seed("n1", 7));
    let key = b"cart";
    let mut context = Vec::new();
    for i in 0..40u32 {
        let item = format!("item-{}", i % 7).into_bytes();
        let op = match i % 4 {
            0 | 1 => cartwheel_resolvers::Op::CartAdd { item, quantity: 2 },
            2 => cartwheel_resolvers::Op::CartSetQuantity { item, quantity: 5 },
            _ => cartwheel_resolvers::Op::CartRemove(item),
        };
        let write = Write::Update { ops: vec![op], context: context.clone() };
        let (sent, read) = short.coordinate("c", key, &write, false).unwrap();
        let written = whole.write("c", key, &write).unwrap();
        let resolver = &*whole.bucket("c").unwrap().resolver;
        let answer = written.answer(resolver, false).unwrap();
        assert_eq!(read, answer, "write {i}");
        assert_eq!(sent, written.delta.clone().unwrap_or(written.state.clone()), "write {i}");
        assert_eq!(short.fetch("c", key).unwrap().unwrap(), written.state, "write {i}");
        context = read.context;
    }
    assert!(chain::is_chain(&raw(&short, key).unwrap()), "the short way appended");
    let (_, with_body) = short.coordinate("c", key, &cart_add("x"), true).unwrap();
    assert!(with_body.value.is_some(), "a body makes the state");
}
