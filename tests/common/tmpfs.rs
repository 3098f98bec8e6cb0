//! # A small disk: a tmpfs the test mounts
//!
//! As in engines/tests/full_disk.rs and tests/full_disk_node.rs: mounting needs root. Where
//! `mount` is refused, [`Tmpfs::mount`] says the test is skipped and returns `None`, unless
//! `CARTWHEEL_REQUIRE_TMPFS=1` (CI sets it where a probe mount works), where it fails the
//! test instead. The file system is unmounted (lazily, so a process still holding files
//! there does not keep it) when the [`Tmpfs`] is dropped: drop the processes using it first.

use std::path::PathBuf;
use std::process::Command;

/// A tmpfs mounted for one test, unmounted when dropped.
pub struct Tmpfs {
    /// The mount point.
    pub path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mount a tmpfs of `bytes` bytes in a new temporary directory.
    pub fn mount(bytes: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
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

    /// Grow (or shrink) the file system to `bytes` bytes, keeping its files.
    pub fn resize(&self, bytes: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={bytes}")])
            .arg(&self.path)
            .status()
            .expect("mount runs");
        assert!(status.success(), "remounting {} at {bytes} bytes: {status}", self.path.display());
    }

    /// Take every byte left with a file of the test's own (`filler` at the top), so that the
    /// next append anyone makes there fails; returns the bytes it took.
    pub fn fill(&self) -> u64 {
        use std::io::Write;
        let mut file = std::fs::File::create(self.path.join("filler")).expect("the filler opens");
        let chunk = vec![0xA5u8; 4096];
        let mut written = 0u64;
        while file.write_all(&chunk).is_ok() {
            written += chunk.len() as u64;
        }
        // A partial last chunk may sit in the file; what matters is that no page is left.
        let _ = file.sync_all();
        written
    }

    /// Bytes free for an unprivileged writer, as `df` says.
    pub fn available_bytes(&self) -> u64 {
        let output = Command::new("df")
            .args(["-B1", "--output=avail"])
            .arg(&self.path)
            .output()
            .expect("df runs");
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text.lines().nth(1).expect("df prints a value under its header");
        line.trim().parse().expect("df prints a number of bytes")
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}
