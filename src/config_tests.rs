//! The configuration's unit tests (src/config.rs holds the configuration).

use super::*;

const MINIMAL: &str = "[node]\nid = \"n1\"\nlisten = \"127.0.0.1:7401\"\n\
                       [security]\nsecret_file = \"cluster.secret\"\n";

fn refused(text: &str) -> ConfigError {
    Config::parse(text, "node.toml").unwrap_err()
}

/// A file with only node id and listen gets every default and the embedded buckets.
#[test]
fn minimal_file_gets_defaults() {
    let config = Config::parse(MINIMAL, "node.toml").unwrap();
    assert_eq!(config.node.data_dir, PathBuf::from("data/n1"));
    assert_eq!(config.node.seeds, vec!["127.0.0.1:7401".to_string()]);
    assert_eq!(config.partitions, PARTITIONS_DEFAULT);
    assert_eq!(config.limits, Limits::default());
    assert_eq!(config.buckets, embedded_buckets());
    assert!(config.buckets.contains_key("default"));
}

/// A full bucket section is read as written.
#[test]
fn bucket_settings_are_read() {
    let text = format!(
        "{MINIMAL}[cluster]\npartitions = 128\n[buckets.b]\nengine = \"memory\"\n\
         resolver = \"lww\"\nn = 5\nr = 3\nw = 4\ndw = 0\nflush_interval_ms = 3\n\
         flusher = \"io_uring\"\n"
    );
    let config = Config::parse(&text, "node.toml").unwrap();
    assert_eq!(config.partitions, 128);
    let b = &config.buckets["b"];
    assert_eq!((b.n, b.r, b.w, b.dw), (5, 3, 4, 0));
    assert_eq!(b.engine_options.flush_interval_ms, 3);
    assert_eq!(b.engine_options.flusher, FlusherBackend::IoUring);
    assert_eq!(config.buckets.len(), 1, "explicit buckets replace the embedded ones");
}

/// TLS is the default and needs the secret's file; insecure mode must be asked for.
#[test]
fn security_needs_a_secret_or_insecure_mode() {
    let config = Config::parse(MINIMAL, "node.toml").unwrap();
    assert_eq!(config.security.mode, SecurityMode::Tls);
    assert_eq!(config.security.secret_file, PathBuf::from("cluster.secret"));
    assert!(!config.security.create_secret, "a file never creates a secret");
    let bare = "[node]\nid = \"n1\"\nlisten = \"127.0.0.1:7401\"\n";
    assert_eq!(refused(bare).key, "security.secret_file");
    let insecure = format!("{bare}[security]\nmode = \"insecure\"\n");
    let config = Config::parse(&insecure, "node.toml").unwrap();
    assert_eq!(config.security.mode, SecurityMode::Insecure);
    assert_eq!(refused(&format!("{bare}[security]\nmode = \"open\"\n")).key, "security.mode");
}

/// A missing node id names the key.
#[test]
fn missing_id_is_refused() {
    let err = refused("[node]\nlisten = \"127.0.0.1:1\"\n");
    assert_eq!(err.file, "node.toml");
    assert_eq!(err.key, "node");
    assert!(err.reason.contains("missing field `id`"), "{err}");
}

/// A bucket that names no engine gets the durable `log` engine, never `memory`.
#[test]
fn engine_defaults_to_log() {
    let config = Config::parse(&format!("{MINIMAL}[buckets.b]\n"), "node.toml").unwrap();
    assert_eq!(config.buckets["b"].engine, EngineKind::Log);
}

/// An unknown key is refused with its path, not ignored.
#[test]
fn unknown_key_is_refused() {
    let err = refused(&format!("{MINIMAL}[buckets.b]\nengin = \"log\"\n"));
    assert_eq!(err.key, "buckets.b.engin");
    assert!(err.reason.contains("engin"), "{err}");
}

/// Each bad value names its key and says why.
#[test]
fn bad_values_name_their_key() {
    let cases = [
        ("[cluster]\npartitions = 48\n", "cluster.partitions"),
        ("[cluster]\ngossip_interval_ms = 1\n", "cluster.gossip_interval_ms"),
        ("[buckets.b]\nengine = \"rocks\"\n", "buckets.b.engine"),
        ("[buckets.b]\nresolver = \"mvcc\"\n", "buckets.b.resolver"),
        ("[buckets.b]\nn = 0\n", "buckets.b.n"),
        ("[buckets.b]\nflusher = \"aio\"\n", "buckets.b.flusher"),
        ("[limits]\nmessage_read_timeout_ms = 0\n", "limits.message_read_timeout_ms"),
        ("[buckets.b]\nn = 3\nr = 4\n", "buckets.b.r"),
        ("[buckets.b]\nn = 3\nw = 0\n", "buckets.b.w"),
        ("[buckets.b]\nw = 2\ndw = 3\n", "buckets.b.dw"),
        ("[buckets.b]\nengine = \"memory\"\ndw = 1\n", "buckets.b.dw"),
        (
            "[buckets.b]\nsiblings_soft_max = 10\nsiblings_hard_max = 5\n",
            "buckets.b.siblings_hard_max",
        ),
        ("[buckets.\"a b\"]\n", "buckets.a b"),
        ("[limits]\nkey_bytes_max = 0\n", "limits.key_bytes_max"),
        ("[limits]\nvalue_bytes_max = 999999999999\n", "limits.value_bytes_max"),
        ("[limits]\ninflight_bytes_max = 4194304\n", "limits.inflight_bytes_max"),
        (
            "[limits]\nvalue_bytes_max = 4194304\ninflight_bytes_max = 16777216\n",
            "limits.inflight_bytes_max",
        ),
    ];
    for (section, key) in cases {
        let err = refused(&format!("{MINIMAL}{section}"));
        assert_eq!(err.key, key, "for {section:?}: {err}");
        assert!(!err.reason.is_empty());
    }
}

/// An unset budget is 64 MiB, or twice the largest message where a larger value limit
/// needs more; a budget that is set is kept as it is.
#[test]
fn an_unset_budget_follows_the_value_limit() {
    let parse = |limits: &str| Config::parse(&format!("{MINIMAL}[limits]\n{limits}"), "n").unwrap();
    let large = parse("value_bytes_max = 16777216\n").limits;
    assert_eq!(large.inflight_bytes_max, 2 * large.message_bytes_max());
    assert!(large.inflight_bytes_max > INFLIGHT_BYTES_MAX_DEFAULT);
    let set = parse("inflight_bytes_max = 8388608\n").limits;
    assert_eq!(set.inflight_bytes_max, 8 << 20);
}

/// A bad listen address and a bad node id are refused.
#[test]
fn bad_node_section() {
    let err = refused("[node]\nid = \"n1\"\nlisten = \"localhost\"\n");
    assert_eq!(err.key, "node.listen");
    let err = refused("[node]\nid = \"n 1\"\nlisten = \"127.0.0.1:1\"\n");
    assert_eq!(err.key, "node.id");
    let err = refused("[node]\nid = \"n1\"\nlisten = \"127.0.0.1:1\"\nseeds = [\"nope\"]\n");
    assert_eq!(err.key, "node.seeds[0]");
}

/// A value of the wrong type is refused with its key.
#[test]
fn wrong_type_names_key() {
    let err = refused(&format!("{MINIMAL}[buckets.b]\nn = \"three\"\n"));
    assert_eq!(err.key, "buckets.b.n");
}

/// TOML syntax errors are refused with the file named.
#[test]
fn syntax_error() {
    let err = refused("[node\nid=");
    assert_eq!(err.file, "node.toml");
    assert!(err.to_string().starts_with("node.toml: "));
}

/// Loading a missing file says it cannot be read.
#[test]
fn missing_file() {
    let err = Config::load(Path::new("/nonexistent/cartwheel.toml")).unwrap_err();
    assert!(err.reason.contains("cannot read"), "{err}");
}

/// The embedded defaults are themselves valid.
#[test]
fn embedded_is_consistent() {
    let config = Config::embedded();
    assert_eq!(config.node.listen.port(), LISTEN_PORT_DEFAULT);
    assert!(config.buckets.contains_key("default"));
    for bucket in config.buckets.values() {
        assert!(bucket.r <= bucket.n && bucket.w <= bucket.n && bucket.dw <= bucket.w);
    }
}
