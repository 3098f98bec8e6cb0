//! A full disk, for real: each durable engine writes into a small tmpfs until the file system
//! refuses, and must answer with an I/O error (never a panic), acknowledge no sync after a
//! failure, keep every write a successful `sync` covered, and work again once space is freed,
//! reopened in place by [`Recovering`] without a restart.
//!
//! Mounting needs root. Where `mount` is refused the test says so and passes, unless
//! `CARTWHEEL_REQUIRE_TMPFS=1` (CI sets it), where it fails instead.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use cartwheel_engines::recovering::{Recovering, Recovery};
use cartwheel_engines::{EngineError, EngineKind, EngineOptions, StorageEngine};

/// Size of the tmpfs.
const FS_BYTES: u64 = 6 << 20;
/// A file taking space at the start, deleted to free it.
const FILLER_BYTES: usize = 2 << 20;
const VALUE_BYTES: usize = 1024;

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount() -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={FS_BYTES}"), "tmpfs"])
            .arg(&path)
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs { path, _dir: dir }),
            other => {
                let required = std::env::var("CARTWHEEL_REQUIRE_TMPFS").is_ok_and(|v| v == "1");
                assert!(
                    !required,
                    "cannot mount a tmpfs ({other:?}) and CARTWHEEL_REQUIRE_TMPFS=1"
                );
                eprintln!("skipped: cannot mount a tmpfs here ({other:?}); run as root");
                None
            }
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

fn options() -> EngineOptions {
    let mut options = EngineOptions::default();
    options.segment_bytes_max = 256 << 10;
    options.snapshot_log_bytes = 256 << 10;
    options.background_interval_ms = 5;
    options
}

fn value(i: u32) -> Vec<u8> {
    (0..VALUE_BYTES).map(|j| (i as usize * 7 + j) as u8).collect()
}

fn fill_until_refused(kind: EngineKind) {
    let Some(fs) = Tmpfs::mount() else { return };
    let dir = fs.path.join("engine");
    let filler = fs.path.join("filler");
    std::fs::write(&filler, vec![1u8; FILLER_BYTES]).unwrap();

    // Write and sync in batches until the file system refuses.
    let engine = Recovering::open(kind, dir.clone(), options()).unwrap();
    let mut synced: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut batch = Vec::new();
    let mut refusal = None;
    for i in 0..20_000u32 {
        let key = format!("key-{i:06}").into_bytes();
        let outcome = engine.put(&key, &value(i)).and_then(|()| {
            batch.push((key, value(i)));
            if batch.len() == 8 {
                engine.sync()?;
                synced.extend(batch.drain(..));
            }
            Ok(())
        });
        if let Err(e) = outcome {
            refusal = Some(e);
            break;
        }
    }
    let refusal = refusal.unwrap_or_else(|| panic!("{kind}: a {FS_BYTES}-byte disk never filled"));
    assert!(matches!(refusal, EngineError::Io { .. }), "{kind}: {refusal:?}");
    assert!(synced.len() >= 100, "{kind}: only {} writes before the disk filled", synced.len());
    // A failed engine acknowledges no write as synced; one that refused a write cleanly may
    // take later ones, and a write it acknowledges as synced must survive like any other.
    for i in 0..5u32 {
        let key = format!("after-{i}").into_bytes();
        let failed = engine.failed();
        if engine.put(&key, b"small").and_then(|()| engine.sync()).is_ok() {
            assert!(!failed, "{kind}: a failed engine acknowledged a synced write");
            synced.insert(key, b"small".to_vec());
        }
    }
    // Reads go on while it is failed.
    let (key, value) = synced.iter().next().unwrap();
    assert_eq!(engine.get(key).unwrap().as_deref(), Some(&value[..]), "{kind}: read when full");

    // Free space: the engine reopens in place, with every synced write, and takes new ones.
    let failed = engine.failed();
    std::fs::remove_file(&filler).unwrap();
    let recovered =
        engine.try_recover().unwrap_or_else(|e| panic!("{kind}: reopen after freeing space: {e}"));
    let expected = if failed { Recovery::Reopened } else { Recovery::Healthy };
    assert_eq!(recovered, expected, "{kind}");
    assert!(!engine.failed(), "{kind}");
    for (key, value) in &synced {
        let found = engine.get(key).unwrap();
        assert_eq!(found.as_deref(), Some(&value[..]), "{kind}: {}", String::from_utf8_lossy(key));
    }
    engine.put(b"after-free", b"works").unwrap();
    engine.sync().unwrap();
    assert_eq!(engine.get(b"after-free").unwrap().as_deref(), Some(&b"works"[..]));
}

#[test]
fn log_full_disk() {
    fill_until_refused(EngineKind::Log);
}

#[test]
fn buffer_full_disk() {
    fill_until_refused(EngineKind::Buffer);
}

#[test]
fn btree_full_disk() {
    fill_until_refused(EngineKind::Btree);
}

/// An engine with the default 64 MiB segments opens on a disk with a few MiB free, takes
/// synced writes there, and has them after a reopen: segments shrink to the space left.
fn opens_on_a_nearly_full_disk(kind: EngineKind) {
    let Some(fs) = Tmpfs::mount() else { return };
    let dir = fs.path.join("engine");
    let engine = cartwheel_engines::open(kind, &dir, &EngineOptions::default())
        .unwrap_or_else(|e| panic!("{kind}: open on a {FS_BYTES}-byte disk: {e}"));
    for i in 0..200u32 {
        engine.put(format!("key-{i:06}").as_bytes(), &value(i)).unwrap();
    }
    engine.sync().unwrap();
    drop(engine);
    let engine = cartwheel_engines::open(kind, &dir, &EngineOptions::default()).unwrap();
    for i in 0..200u32 {
        let found = engine.get(format!("key-{i:06}").as_bytes()).unwrap();
        assert_eq!(found.as_deref(), Some(&value(i)[..]), "{kind}: key {i}");
    }
}

#[test]
fn log_opens_on_a_nearly_full_disk() {
    opens_on_a_nearly_full_disk(EngineKind::Log);
}

#[test]
fn buffer_opens_on_a_nearly_full_disk() {
    opens_on_a_nearly_full_disk(EngineKind::Buffer);
}
