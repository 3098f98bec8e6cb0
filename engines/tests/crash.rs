//! Crash tests: damage the files of a closed engine the way a crash or a bad disk would, then
//! reopen and check what comes back.
//!
//! Each engine is instantiated with `crash_suite!(module_name, open_fn)`, where
//! `open_fn(dir)` opens the engine and returns its `Result`. The workload writes a known
//! sequence of puts, overwrites and deletes, syncs and closes. Then, for every byte offset in
//! the last [`TAIL_BYTES`] bytes of data of every file, a copy of the directory has that file
//! cut there (a torn write) or one bit flipped there (a bad sector), and is reopened. The
//! engine must open without panicking and hold exactly the state after some prefix of the
//! workload: never a value that was not written, never a hole in the middle.

use std::collections::BTreeMap;
use std::fs;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cartwheel_engines::{EngineError, EngineKind, EngineOptions, StorageEngine};

/// How far back from the end of each file's data the damage is applied.
const TAIL_BYTES: usize = 160;

/// One step of the workload.
#[derive(Clone, Debug)]
enum Op {
    Put(Vec<u8>, Vec<u8>),
    Append(Vec<u8>, Vec<u8>),
    Delete(Vec<u8>),
}

/// Puts of 12 keys with values that name the step (so every overwrite is distinguishable),
/// a part appended every fifth step, and a delete every seventh step.
fn workload() -> Vec<Op> {
    (0..60u32)
        .map(|i| {
            let key = format!("key-{:02}", i % 12).into_bytes();
            if i % 7 == 6 {
                Op::Delete(key)
            } else if i % 5 == 4 {
                Op::Append(key, format!("part of step {i}").into_bytes())
            } else {
                Op::Put(key, format!("value of step {i}").repeat(1 + (i % 3) as usize).into_bytes())
            }
        })
        .collect()
}

/// The state after every prefix of the workload: `states[k]` is the map after `k` steps.
fn prefix_states(ops: &[Op]) -> Vec<BTreeMap<Vec<u8>, Vec<u8>>> {
    let mut state = BTreeMap::new();
    let mut states = vec![state.clone()];
    for op in ops {
        match op {
            Op::Put(k, v) => {
                state.insert(k.clone(), v.clone());
            }
            Op::Append(k, part) => {
                if let Some(value) = state.get_mut(k) {
                    *value = cartwheel_engines::chain::push(value, part);
                }
            }
            Op::Delete(k) => {
                state.remove(k);
            }
        }
        states.push(state.clone());
    }
    states
}

/// Everything the engine holds, read through a full scan, cross-checked with `get`.
fn contents(engine: &dyn StorageEngine) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut out = BTreeMap::new();
    engine
        .scan_prefix(b"", &mut |k, v| {
            out.insert(k.to_vec(), v.to_vec());
            ControlFlow::Continue(())
        })
        .unwrap();
    for i in 0..12 {
        let key = format!("key-{i:02}").into_bytes();
        assert_eq!(engine.get(&key).unwrap().as_ref(), out.get(&key), "get and scan agree");
    }
    out
}

/// Write the workload into `dir`, sync and close.
fn write_workload(open: fn(&Path) -> Result<Arc<dyn StorageEngine>, EngineError>, dir: &Path) {
    let engine = open(dir).unwrap();
    for op in workload() {
        match op {
            Op::Put(k, v) => engine.put(&k, &v).unwrap(),
            Op::Append(k, part) => {
                engine.append(&k, &part).unwrap();
            }
            Op::Delete(k) => engine.delete(&k).unwrap(),
        }
    }
    engine.sync().unwrap();
}

/// Files of the data directory worth damaging, with the length of their data (trailing
/// zeros, such as preallocated space, are not data).
fn data_files(dir: &Path) -> Vec<(PathBuf, usize)> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap() == "LOCK" {
            continue;
        }
        let bytes = fs::read(&path).unwrap();
        let end = bytes.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        files.push((path, end));
    }
    files.sort();
    files
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

/// Damage every offset of every file's tail with `damage`, reopen, and check that the engine
/// holds exactly some prefix state of the workload.
fn check_damage(
    open: fn(&Path) -> Result<Arc<dyn StorageEngine>, EngineError>,
    damage: fn(&Path, usize),
) {
    let pristine = tempfile::tempdir().unwrap();
    write_workload(open, pristine.path());
    let states = prefix_states(&workload());
    {
        let engine = open(pristine.path()).unwrap();
        assert_eq!(&contents(&*engine), states.last().unwrap(), "undamaged reopen is complete");
    }
    let mut damaged_runs = 0;
    let mut lost_something = 0;
    for (file, end) in data_files(pristine.path()) {
        let name = file.file_name().unwrap().to_owned();
        for offset in end.saturating_sub(TAIL_BYTES)..end {
            let copy = tempfile::tempdir().unwrap();
            copy_dir(pristine.path(), copy.path());
            damage(&copy.path().join(&name), offset);
            let engine = open(copy.path())
                .unwrap_or_else(|e| panic!("reopen after damage at {name:?}:{offset}: {e}"));
            let got = contents(&*engine);
            assert!(
                states.contains(&got),
                "damage at {name:?}:{offset} left a state that is no prefix of the workload: {got:?}"
            );
            if &got != states.last().unwrap() {
                lost_something += 1;
            }
            // The recovered engine keeps working.
            engine.put(b"after", b"recovery").unwrap();
            engine.sync().unwrap();
            assert_eq!(engine.get(b"after").unwrap(), Some(b"recovery".to_vec()));
            damaged_runs += 1;
        }
    }
    assert!(damaged_runs >= TAIL_BYTES, "damaged {damaged_runs} offsets");
    // Damage in the last records must cost those records: the test really hit data.
    assert!(
        lost_something * 2 >= damaged_runs,
        "{lost_something} of {damaged_runs} runs lost data"
    );
}

/// Cut the file at `offset`, as a torn write would.
fn truncate_at(path: &Path, offset: usize) {
    fs::OpenOptions::new().write(true).open(path).unwrap().set_len(offset as u64).unwrap();
}

/// Flip one bit of the byte at `offset`, as a bad sector would.
fn flip_bit_at(path: &Path, offset: usize) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset] ^= 1 << (offset % 8);
    fs::write(path, bytes).unwrap();
}

/// Name, length and content hash of every file in `dir`.
fn fingerprint(dir: &Path) -> Vec<(PathBuf, u64, u32, std::time::SystemTime)> {
    let mut out: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let path = entry.unwrap().path();
            let meta = fs::metadata(&path).unwrap();
            let crc = crc32fast::hash(&fs::read(&path).unwrap());
            (path, meta.len(), crc, meta.modified().unwrap())
        })
        .collect();
    out.sort();
    out
}

macro_rules! crash_suite {
    ($name:ident, $open:expr) => {
        mod $name {
            use super::*;

            const OPEN: fn(&Path) -> Result<Arc<dyn StorageEngine>, EngineError> = $open;

            /// Cutting any file at any offset of its last records leaves a prefix.
            #[test]
            fn truncated_tail_keeps_a_prefix() {
                check_damage(OPEN, truncate_at);
            }

            /// Flipping a bit anywhere in the last records leaves a prefix, and no record that
            /// fails its checksum is returned.
            #[test]
            fn flipped_bit_keeps_a_prefix() {
                check_damage(OPEN, flip_bit_at);
            }

            /// A second open of a directory in use gets `Locked` and changes no file.
            #[test]
            fn second_open_is_locked_and_touches_nothing() {
                let dir = tempfile::tempdir().unwrap();
                let engine = OPEN(dir.path()).unwrap();
                engine.put(b"k", b"v").unwrap();
                engine.sync().unwrap();
                let before = fingerprint(dir.path());
                // Let the flusher's interval pass so nothing is in flight.
                std::thread::sleep(std::time::Duration::from_millis(50));
                let before_again = fingerprint(dir.path());
                assert_eq!(before, before_again, "an idle engine leaves its files alone");
                let err = OPEN(dir.path()).unwrap_err();
                assert!(matches!(err, EngineError::Locked { .. }), "{err}");
                assert_eq!(fingerprint(dir.path()), before, "the refused open changed files");
                assert_eq!(engine.get(b"k").unwrap(), Some(b"v".to_vec()));
            }
        }
    };
}

/// Options for the crash tests: small segments so that copies of the directory are cheap.
fn small() -> EngineOptions {
    let mut options = EngineOptions::default();
    options.segment_bytes_max = 64 << 10;
    options
}

crash_suite!(log, |dir| cartwheel_engines::open(EngineKind::Log, dir, &small()));
crash_suite!(buffer, |dir| cartwheel_engines::open(EngineKind::Buffer, dir, &small()));
crash_suite!(btree, |dir| cartwheel_engines::open(EngineKind::Btree, dir, &small()));
