//! Helpers shared by the process-level tests: free loopback ports, `cartwheel serve`
//! processes that can be killed with SIGKILL and restarted (in a network namespace of their
//! own if asked), polling with a deadline, the history checker ([`history`]), writers and
//! convergence ([`workload`]), private networks with partitions ([`netns`]) and small disks
//! ([`tmpfs`]).
//!
//! The binary under test is the one this package builds, unless the environment variable
//! `CARTWHEEL_TEST_BIN` names another `cartwheel` binary: that is how a fault test is run
//! against an older build to show that it catches a bug the newer one fixed. Set
//! `CARTWHEEL_TEST_LOG_DIR` to a directory to keep each node's stderr there (at `info`, or
//! at the level `CARTWHEEL_TEST_LOG_LEVEL` names, e.g. `debug`) instead of discarding it.
//!
//! Each test binary uses a subset of these helpers, hence `dead_code` is allowed here.

#![allow(dead_code)]

pub mod history;
pub mod netns;
pub mod tmpfs;
pub mod workload;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cartwheel::client::{block_on, Client};

/// How long [`wait_until`] waits before it fails the test.
pub const WAIT: Duration = Duration::from_secs(30);

/// The ports of a developer's local cluster (`cartwheel up`); tests never listen there.
const USER_PORTS: std::ops::RangeInclusive<u16> = 7401..=7403;

/// A port on 127.0.0.1 that was free a moment ago (the kernel picks it).
pub fn free_port() -> u16 {
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        if !USER_PORTS.contains(&port) {
            return port;
        }
    }
}

/// The `cartwheel` binary the tests run: `CARTWHEEL_TEST_BIN` if set, else this build's.
pub fn binary() -> PathBuf {
    match std::env::var_os("CARTWHEEL_TEST_BIN") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_BIN_EXE_cartwheel")),
    }
}

/// One `cartwheel serve --config FILE` process, started and killed (SIGKILL) on demand and
/// killed when dropped.
pub struct Process {
    config: PathBuf,
    /// The network namespace it runs in (`ip netns exec`), if not the test's.
    namespace: Option<String>,
    child: Option<Child>,
}

impl Process {
    /// A process for the node configured in `config`; not started yet.
    pub fn new(config: PathBuf) -> Self {
        Self { config, namespace: None, child: None }
    }

    /// A process for the node configured in `config`, run inside the network namespace
    /// `namespace` (see [`netns`]); not started yet. `ip netns exec` execs the binary, so
    /// the child is the node itself and [`Process::kill`] kills the node.
    pub fn in_namespace(config: PathBuf, namespace: String) -> Self {
        Self { config, namespace: Some(namespace), child: None }
    }

    /// Start the node (it must not be running).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.config.display());
        let mut command = match &self.namespace {
            Some(namespace) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", namespace]).arg(binary());
                command
            }
            None => Command::new(binary()),
        };
        command.args(["serve", "--config"]).arg(&self.config).stdout(Stdio::null());
        match std::env::var_os("CARTWHEEL_TEST_LOG_DIR") {
            Some(dir) => {
                let name = self.config.file_stem().unwrap_or_default().to_os_string();
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(Path::new(&dir).join(name).with_extension("log"))
                    .expect("the log directory is writable");
                let level = std::env::var("CARTWHEEL_TEST_LOG_LEVEL");
                command.env("RUST_LOG", level.as_deref().unwrap_or("info")).stderr(log);
            }
            None => {
                command.env("RUST_LOG", "warn").stderr(Stdio::null());
            }
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("the cartwheel binary {} starts: {e}", binary().display()));
        self.child = Some(child);
    }

    /// Kill the node with SIGKILL (no clean stop, nothing flushed) and reap it. Nothing
    /// happens if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // An error here means the process already exited; `wait` reaps it either way.
            let _ = child.kill();
            child.wait().unwrap();
        }
    }

    /// Kill the node (if it runs) and start it again on the same configuration and data.
    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// Whether the process was started and has not exited.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Poll `condition` every 100 ms until it holds; fail the test after [`WAIT`].
pub fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    wait_until_within(WAIT, what, condition);
}

/// Poll `condition` every 100 ms until it holds; fail the test after `limit`.
pub fn wait_until_within(limit: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let start = Instant::now();
    while !condition() {
        assert!(start.elapsed() < limit, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How many members the node at `address` sees up and owning partitions (0 if it does not
/// answer).
pub fn members_up(address: &str) -> usize {
    block_on(async {
        let Ok(client) = Client::connect(address).await else { return 0 };
        let Ok(status) = client.status().await else { return 0 };
        status.members.iter().filter(|m| m.state == "up" && m.partitions_owned > 0).count()
    })
}
