//! Clients that share no code with cartwheel, and the README's examples, against a real node.
//!
//! - `tests/interop/client.py` is an independent Cap'n Proto client (pycapnp, from `schema/`
//!   alone).
//! - The README's "Use it from Python" program is pulled out from between its markers and run
//!   against a node, so the README cannot drift from what works.
//! - The README's "Use it from Rust" program must be `examples/client.rs` (which `cargo test`
//!   builds) word for word.
//!
//! The Python tests need Python 3 with pycapnp (`pip install pycapnp`); `.ci/run` installs it
//! and sets `CARTWHEEL_REQUIRE_INTEROP=1`, so there a missing pycapnp fails them. Elsewhere
//! they say they were skipped and pass.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cartwheel::config::Config;
use cartwheel::node::server::NodeHandle;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn pycapnp_available() -> bool {
    let available = Command::new("python3")
        .args(["-c", "import capnp"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !available {
        let required = std::env::var("CARTWHEEL_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
        assert!(!required, "pycapnp is required here (pip install pycapnp)");
        eprintln!("pycapnp not installed: interop test skipped");
    }
    available
}

/// A one-node cluster over TLS, its secret and admin credentials under `dir`.
fn start_node(dir: &Path) -> (NodeHandle, PathBuf) {
    let mut config = Config::embedded();
    config.node.listen = "127.0.0.1:0".parse().unwrap();
    // A cluster of its own: the embedded seeds name the first port of a user's `up`.
    config.node.seeds = Vec::new();
    config.node.data_dir = dir.join("n1");
    config.security = cartwheel::config::SecurityConfig::development(dir);
    config.fit_buckets_to(1);
    let node = NodeHandle::start(config).unwrap();
    (node, dir.join(cartwheel::security::ADMIN_CREDENTIALS_FILE))
}

/// The code block between the README's `<!-- begin: NAME` and `<!-- end: NAME` lines.
fn readme_block(name: &str) -> String {
    let readme = std::fs::read_to_string(Path::new(ROOT).join("README.md")).unwrap();
    let begin = format!("<!-- begin: {name}");
    let end = format!("<!-- end: {name}");
    let lines: Vec<&str> = readme
        .lines()
        .skip_while(|line| !line.starts_with(&begin))
        .skip(1)
        .take_while(|line| !line.starts_with(&end))
        .collect();
    assert!(lines.len() >= 2, "README.md has no block {name:?} between markers");
    assert!(lines[0].starts_with("```"), "the block {name:?} opens with a fence");
    assert_eq!(lines[lines.len() - 1], "```", "the block {name:?} closes with a fence");
    lines[1..lines.len() - 1].iter().map(|line| format!("{line}\n")).collect()
}

fn python(args: &[&Path], envs: &[(&str, &Path)]) -> Output {
    let mut command = Command::new("python3");
    command.args(args).current_dir(ROOT);
    for (name, value) in envs {
        command.env(name, value);
    }
    command.output().expect("python3 runs")
}

/// Over TLS, with a token: login, put, get, typed errors and status work from a client that
/// shares no code with cartwheel; a bad token and an anonymous peer call are refused.
#[test]
fn python_client_from_schema_alone() {
    if !pycapnp_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (node, credentials) = start_node(dir.path());
    let script = Path::new(ROOT).join("tests/interop/client.py");
    let address = node.address().to_string();
    let output = python(&[&script, Path::new(&address), &credentials], &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "interop client failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.matches("ok: ").count(), 11, "every check ran:\n{stdout}");
    node.stop().unwrap();
}

/// The README's Python program, taken from between its markers and run as a user would (from
/// the repository's root, node and credentials from the environment), prints what the README
/// says it prints.
#[test]
fn readme_python_example_runs() {
    let program = readme_block("python example");
    if !pycapnp_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (node, credentials) = start_node(dir.path());
    let script = dir.path().join("readme_example.py");
    std::fs::write(&script, program).unwrap();
    let address = node.address().to_string();
    let output = python(
        &[&script],
        &[("CARTWHEEL_NODE", Path::new(&address)), ("CARTWHEEL_CREDENTIALS", &credentials)],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the README's program failed:\n{stdout}\n{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "three lines:\n{stdout}");
    assert_eq!(lines[0], "greeting: hello");
    assert_eq!(lines[1], "cart: apple 2");
    assert!(lines[2].starts_with("refused: unknownBucket - "), "{stdout}");
    node.stop().unwrap();
}

/// The README's Rust program is `examples/client.rs`, which `cargo test` compiles (and the
/// client module's doc test too), so the README shows code that builds.
#[test]
fn readme_rust_example_is_examples_client_rs() {
    let example = std::fs::read_to_string(Path::new(ROOT).join("examples/client.rs")).unwrap();
    assert_eq!(readme_block("examples/client.rs"), example, "README.md and examples/client.rs");
}
