//! # Data directories: the exclusive lock and the directory fsync
//!
//! A durable engine owns its data directory alone. Every one of them (`log` and `buffer`
//! through the memory log, and `btree`) takes the same lock before it reads anything there:
//! [`lock_dir`] creates the directory if needed and takes an exclusive, non-blocking `flock`
//! on its `LOCK` file, held for as long as the returned [`DirLock`] lives. A second opener, in
//! another process or in this one, gets [`EngineError::Locked`] and touches nothing else.
//! A `flock` belongs to the open file, so the lock goes away with the engine or with its
//! process (a `kill -9` leaves no stale lock), and engines of different kinds opened on one
//! directory by mistake exclude each other too.
//!
//! [`sync_dir`] is the other half of owning a directory: after a file in it is created,
//! renamed or deleted, fsyncing the directory makes that change survive a crash.
//!
//! Not here: waiting for a lock, shared (read-only) locks, and lock files on network file
//! systems (where `flock` may be emulated or ignored). This module holds no `unsafe` code:
//! the `flock` call is `fs4`'s.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::Path;

use crate::EngineError;

/// The name of the lock file inside a data directory.
pub const LOCK_FILE: &str = "LOCK";

/// The exclusive lock on a data directory, from [`lock_dir`]. Released when dropped.
#[derive(Debug)]
pub struct DirLock {
    /// The open `LOCK` file; its `flock` lasts as long as it is open.
    _file: File,
}

/// Take the exclusive lock of the data directory `dir`, creating the directory and its `LOCK`
/// file if needed. A directory locked by anyone else (another process, or another open in this
/// one) gives [`EngineError::Locked`], and nothing in it is touched.
pub fn lock_dir(dir: &Path) -> Result<DirLock, EngineError> {
    fs::create_dir_all(dir).map_err(EngineError::io("create data directory"))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(LOCK_FILE))
        .map_err(EngineError::io("open lock file"))?;
    loop {
        match fs4::fs_std::FileExt::try_lock_exclusive(&file) {
            Ok(true) => return Ok(DirLock { _file: file }),
            Ok(false) => break,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(EngineError::io("lock data directory")(err)),
        }
    }
    Err(EngineError::Locked { path: dir.display().to_string() })
}

/// fsync a directory, so that files created, renamed or deleted in it stay so after a crash.
pub fn sync_dir(dir: &Path) -> Result<(), EngineError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(EngineError::io("fsync of data directory"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second lock of a locked directory is refused and changes nothing in it; once the first
    /// lock is dropped the directory can be locked again.
    #[test]
    fn second_lock_is_refused_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_dir(dir.path()).unwrap();
        let before: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert!(matches!(lock_dir(dir.path()), Err(EngineError::Locked { .. })));
        let after: Vec<_> = fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(before, after, "the refused lock changed the directory");
        drop(held);
        lock_dir(dir.path()).unwrap();
    }

    /// Every durable engine takes this one lock: while a btree holds a directory, neither a
    /// second btree nor a memory-log engine opens it.
    #[test]
    fn engines_of_any_kind_exclude_each_other() {
        let dir = tempfile::tempdir().unwrap();
        let options = crate::EngineOptions::default();
        let btree = crate::open(crate::EngineKind::Btree, dir.path(), &options).unwrap();
        for kind in [crate::EngineKind::Btree, crate::EngineKind::Log, crate::EngineKind::Buffer] {
            let err = crate::open(kind, dir.path(), &options).unwrap_err();
            assert!(matches!(err, EngineError::Locked { .. }), "{kind}: {err}");
        }
        drop(btree);
        crate::open(crate::EngineKind::Log, dir.path(), &options).unwrap();
    }
}
