//! An independent Cap'n Proto client (pycapnp, from `schema/` alone) talks to a real node.
//!
//! The client is `tests/interop/client.py`. It needs Python 3 with pycapnp
//! (`pip install pycapnp`); `.ci/run` installs it and sets `CARTWHEEL_REQUIRE_INTEROP=1`, so
//! there a missing pycapnp fails the test. Elsewhere the test says it was skipped and passes.

use std::process::Command;

use cartwheel::config::Config;
use cartwheel::node::server::NodeHandle;

fn pycapnp_available() -> bool {
    Command::new("python3").args(["-c", "import capnp"]).output().is_ok_and(|o| o.status.success())
}

/// Over TLS, with a token: login, put, get, typed errors and status work from a client that
/// shares no code with cartwheel; a bad token and an anonymous peer call are refused.
#[test]
fn python_client_from_schema_alone() {
    if !pycapnp_available() {
        let required = std::env::var("CARTWHEEL_REQUIRE_INTEROP").is_ok_and(|v| v == "1");
        assert!(!required, "pycapnp is required here (pip install pycapnp)");
        eprintln!("pycapnp not installed: interop test skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded();
    config.node.listen = "127.0.0.1:0".parse().unwrap();
    // A cluster of its own: the embedded seeds name the first port of a user's `up`.
    config.node.seeds = Vec::new();
    config.node.data_dir = dir.path().join("n1");
    config.security = cartwheel::config::SecurityConfig::development(dir.path());
    let node = NodeHandle::start(config).unwrap();
    let credentials = dir.path().join(cartwheel::security::ADMIN_CREDENTIALS_FILE);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/client.py");
    let output = Command::new("python3")
        .arg(script)
        .arg(node.address().to_string())
        .arg(&credentials)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "interop client failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.matches("ok: ").count(), 11, "every check ran:\n{stdout}");
    node.stop().unwrap();
}
