//! The shared conformance suite: every behaviour of the `StorageEngine` contract, run against
//! every engine.
//!
//! Each engine is instantiated with `conformance_suite!(module_name, open_fn)`, where
//! `open_fn(dir)` opens (or reopens) the engine on a data directory. The suite generates one
//! `#[test]` per behaviour, so a failure names the engine and the behaviour. Behaviours that
//! need a restart run only where `is_durable()` holds; a volatile engine is checked to start
//! empty instead.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;

use cartwheel_engines::{EngineError, StorageEngine, KEY_BYTES_MAX, VALUE_BYTES_MAX};

/// Every entry under `prefix`, collected through `scan_prefix`, sorted by key.
fn collect(engine: &dyn StorageEngine, prefix: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    engine
        .scan_prefix(prefix, &mut |k, v| {
            out.push((k.to_vec(), v.to_vec()));
            ControlFlow::Continue(())
        })
        .unwrap();
    out.sort();
    out
}

/// Assert that the engine holds exactly `model`, through both `get` and a full scan.
fn assert_matches_model(engine: &dyn StorageEngine, model: &BTreeMap<Vec<u8>, Vec<u8>>) {
    for (key, value) in model {
        assert_eq!(engine.get(key).unwrap().as_ref(), Some(value), "get({key:?})");
    }
    let scanned = collect(engine, b"");
    let expected: Vec<_> = model.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    assert_eq!(scanned, expected, "full scan differs from the model");
    assert_eq!(engine.stats().entries, model.len() as u64, "stats().entries");
}

macro_rules! conformance_suite {
    ($name:ident, $open:expr) => {
        mod $name {
            use super::*;

            fn open(dir: &Path) -> Arc<dyn StorageEngine> {
                let open: fn(&Path) -> Arc<dyn StorageEngine> = $open;
                open(dir)
            }

            fn fresh() -> (tempfile::TempDir, Arc<dyn StorageEngine>) {
                let dir = tempfile::tempdir().unwrap();
                let engine = open(dir.path());
                (dir, engine)
            }

            /// A key never written reads as absent, and a scan of an empty engine visits nothing.
            #[test]
            fn missing_key_is_none() {
                let (_dir, engine) = fresh();
                assert_eq!(engine.get(b"nope").unwrap(), None);
                assert!(collect(&*engine, b"").is_empty());
                assert_eq!(engine.stats().entries, 0);
            }

            /// A put is visible to the next get, and an overwrite replaces the value.
            #[test]
            fn put_get_overwrite() {
                let (_dir, engine) = fresh();
                engine.put(b"k", b"v1").unwrap();
                assert_eq!(engine.get(b"k").unwrap(), Some(b"v1".to_vec()));
                engine.put(b"k", b"second value").unwrap();
                assert_eq!(engine.get(b"k").unwrap(), Some(b"second value".to_vec()));
                assert_eq!(engine.stats().entries, 1);
                assert_eq!(engine.stats().live_bytes, (1 + 12) as u64);
            }

            /// Empty values and binary keys are stored as given.
            #[test]
            fn empty_value_and_binary_key() {
                let (_dir, engine) = fresh();
                let key = [0u8, 255, 0, 10, 13];
                engine.put(&key, b"").unwrap();
                assert_eq!(engine.get(&key).unwrap(), Some(Vec::new()));
            }

            /// Delete removes a key; deleting an absent key is not an error.
            #[test]
            fn delete_removes() {
                let (_dir, engine) = fresh();
                engine.put(b"a", b"1").unwrap();
                engine.put(b"b", b"2").unwrap();
                engine.delete(b"a").unwrap();
                engine.delete(b"never-there").unwrap();
                assert_eq!(engine.get(b"a").unwrap(), None);
                assert_eq!(engine.get(b"b").unwrap(), Some(b"2".to_vec()));
                assert_eq!(engine.stats().entries, 1);
                assert_eq!(engine.stats().live_bytes, 2);
            }

            /// A prefix scan visits exactly the keys under the prefix, and Break stops it.
            #[test]
            fn scan_prefix_is_exact() {
                let (_dir, engine) = fresh();
                for (k, v) in [
                    (&b"\x00\x01a"[..], &b"1"[..]),
                    (b"\x00\x01b", b"2"),
                    (b"\x00\x02a", b"3"),
                    (b"\x00", b"4"),
                    (b"\x01\x01a", b"5"),
                ] {
                    engine.put(k, v).unwrap();
                }
                let under = collect(&*engine, b"\x00\x01");
                assert_eq!(
                    under,
                    vec![(b"\x00\x01a".to_vec(), b"1".to_vec()), (b"\x00\x01b".to_vec(), b"2".to_vec())]
                );
                assert_eq!(collect(&*engine, b"").len(), 5);
                assert_eq!(collect(&*engine, b"\x02").len(), 0);

                let mut visited = 0;
                engine
                    .scan_prefix(b"", &mut |_, _| {
                        visited += 1;
                        ControlFlow::Break(())
                    })
                    .unwrap();
                assert_eq!(visited, 1, "Break must stop the scan");
            }

            /// Keys and values over the engine bounds are refused and change nothing.
            #[test]
            fn oversized_input_is_refused() {
                let (_dir, engine) = fresh();
                engine.put(b"k", b"kept").unwrap();
                let big_key = vec![7u8; KEY_BYTES_MAX + 1];
                let err = engine.put(&big_key, b"v").unwrap_err();
                assert!(matches!(err, EngineError::TooLarge { what: "key", .. }), "{err}");
                let big_value = vec![7u8; VALUE_BYTES_MAX + 1];
                let err = engine.put(b"k", &big_value).unwrap_err();
                assert!(matches!(err, EngineError::TooLarge { what: "value", .. }), "{err}");
                assert_eq!(engine.get(b"k").unwrap(), Some(b"kept".to_vec()));
                assert_eq!(engine.get(&big_key).unwrap(), None);
            }

            /// Writes from many threads at once are all visible afterwards.
            #[test]
            fn concurrent_writers() {
                let (_dir, engine) = fresh();
                let threads: Vec<_> = (0..4u8)
                    .map(|t| {
                        let engine = Arc::clone(&engine);
                        std::thread::spawn(move || {
                            for i in 0..500u32 {
                                let key = [&[t][..], &i.to_be_bytes()[..]].concat();
                                engine.put(&key, &i.to_le_bytes()).unwrap();
                            }
                            engine.sync().unwrap();
                        })
                    })
                    .collect();
                for thread in threads {
                    thread.join().unwrap();
                }
                assert_eq!(engine.stats().entries, 2000);
                for t in 0..4u8 {
                    assert_eq!(collect(&*engine, &[t]).len(), 500);
                }
            }

            /// After sync and reopen a durable engine holds exactly what it held; a volatile
            /// one starts empty.
            #[test]
            fn reopen_after_sync() {
                let dir = tempfile::tempdir().unwrap();
                let mut model = BTreeMap::new();
                let durable = {
                    let engine = open(dir.path());
                    for i in 0..100u32 {
                        let key = format!("key-{i:03}").into_bytes();
                        let value = vec![i as u8; i as usize];
                        engine.put(&key, &value).unwrap();
                        model.insert(key, value);
                    }
                    for i in (0..100u32).step_by(3) {
                        let key = format!("key-{i:03}").into_bytes();
                        engine.delete(&key).unwrap();
                        model.remove(&key);
                    }
                    engine.sync().unwrap();
                    engine.is_durable()
                };
                let engine = open(dir.path());
                if durable {
                    assert_matches_model(&*engine, &model);
                } else {
                    assert_matches_model(&*engine, &BTreeMap::new());
                }
            }

            /// An append adds a part to a value without replacing it: reads give the chain
            /// encoding, the count says how many parts since the last put, an absent key takes
            /// nothing, and a put starts again. Durable engines keep parts across a reopen.
            #[test]
            fn append_adds_parts() {
                use cartwheel_engines::chain;
                let dir = tempfile::tempdir().unwrap();
                let engine = open(dir.path());
                assert_eq!(engine.append(b"absent", b"p").unwrap(), None);
                assert_eq!(engine.get(b"absent").unwrap(), None);
                engine.put(b"k", b"\x05base").unwrap();
                engine.put(b"other", b"o").unwrap();
                assert_eq!(engine.append(b"k", b"p1").unwrap(), Some(1));
                assert_eq!(engine.append(b"k", b"p2").unwrap(), Some(2));
                let chained = chain::join(b"\x05base", [&b"p1"[..], b"p2"]);
                assert_eq!(engine.get(b"k").unwrap(), Some(chained.clone()));
                let scanned = collect(&*engine, b"k");
                assert_eq!(scanned, vec![(b"k".to_vec(), chained.clone())]);
                assert_eq!(engine.stats().entries, 2);
                assert_eq!(engine.get(b"other").unwrap(), Some(b"o".to_vec()));
                engine.sync().unwrap();
                let engine = if engine.is_durable() {
                    drop(engine);
                    let engine = open(dir.path());
                    assert_eq!(engine.get(b"k").unwrap(), Some(chained));
                    engine
                } else {
                    engine
                };
                engine.put(b"k", b"\x05new").unwrap();
                assert_eq!(engine.get(b"k").unwrap(), Some(b"\x05new".to_vec()));
                assert_eq!(engine.append(b"k", b"p3").unwrap(), Some(1));
                engine.delete(b"k").unwrap();
                assert_eq!(engine.append(b"k", b"p4").unwrap(), None);
                assert_eq!(engine.get(b"k").unwrap(), None);
                let big = vec![7u8; VALUE_BYTES_MAX + 1];
                assert!(matches!(engine.append(b"other", &big), Err(EngineError::TooLarge { .. })));
                assert_eq!(engine.get(b"other").unwrap(), Some(b"o".to_vec()));
            }

            proptest::proptest! {
                #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

                /// Random puts, appends, deletes, syncs and reopens agree with a `BTreeMap` model.
                #[test]
                fn model(ops in proptest::collection::vec(
                    (0u8..8, proptest::collection::vec(0u8..4, 0..3), proptest::collection::vec(proptest::num::u8::ANY, 0..40)),
                    1..120,
                )) {
                    let dir = tempfile::tempdir().unwrap();
                    let mut engine = open(dir.path());
                    let mut model = BTreeMap::new();
                    for (op, key, value) in ops {
                        match op {
                            0..=2 => {
                                engine.put(&key, &value).unwrap();
                                model.insert(key, value);
                            }
                            3 => {
                                engine.delete(&key).unwrap();
                                model.remove(&key);
                            }
                            6 | 7 => {
                                let appended = engine.append(&key, &value).unwrap();
                                proptest::prop_assert_eq!(appended.is_some(), model.contains_key(&key));
                                if let Some(stored) = model.get_mut(&key) {
                                    *stored = cartwheel_engines::chain::push(stored, &value);
                                }
                            }
                            4 => {
                                let got = engine.get(&key).unwrap();
                                proptest::prop_assert_eq!(got.as_ref(), model.get(&key));
                            }
                            _ => {
                                engine.sync().unwrap();
                                let durable = engine.is_durable();
                                drop(engine);
                                engine = open(dir.path());
                                if !durable {
                                    model.clear();
                                }
                            }
                        }
                    }
                    assert_matches_model(&*engine, &model);
                }
            }
        }
    };
}

conformance_suite!(memory, |_dir| Arc::new(cartwheel_engines::memory::MemoryEngine::new()));
conformance_suite!(btree, |dir| cartwheel_engines::open(
    cartwheel_engines::EngineKind::Btree,
    dir,
    &cartwheel_engines::EngineOptions::default()
)
.unwrap());
conformance_suite!(log, |dir| cartwheel_engines::open(
    cartwheel_engines::EngineKind::Log,
    dir,
    &cartwheel_engines::EngineOptions::default()
)
.unwrap());
conformance_suite!(buffer, |dir| cartwheel_engines::open(
    cartwheel_engines::EngineKind::Buffer,
    dir,
    &cartwheel_engines::EngineOptions::default()
)
.unwrap());

/// The engines on the memory log again, with the flusher writing and syncing through io_uring
/// (or, where the kernel refuses it, through the plain calls it falls back to).
fn with_io_uring() -> cartwheel_engines::EngineOptions {
    let mut options = cartwheel_engines::EngineOptions::default();
    options.flusher = cartwheel_engines::FlusherBackend::IoUring;
    options
}
conformance_suite!(log_io_uring, |dir| cartwheel_engines::open(
    cartwheel_engines::EngineKind::Log,
    dir,
    &with_io_uring()
)
.unwrap());
conformance_suite!(buffer_io_uring, |dir| cartwheel_engines::open(
    cartwheel_engines::EngineKind::Buffer,
    dir,
    &with_io_uring()
)
.unwrap());
