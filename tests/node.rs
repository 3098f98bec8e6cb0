//! A real node on an ephemeral loopback port, driven through the real client library.
//!
//! Each test starts its own node (`NodeHandle::start` with `listen = 127.0.0.1:0` and a
//! temporary data directory) so tests run in parallel and leave nothing behind.

use std::io::{Read as _, Write as _};
use std::time::Duration;

use cartwheel::client::{block_on, Client, ReadOptions, WriteOptions};
use cartwheel::config::{BucketConfig, Config};
use cartwheel::node::server::NodeHandle;
use cartwheel::Error;
use cartwheel_engines::EngineKind;
use cartwheel_resolvers::{Op, ResolverKind, Value};

struct TestNode {
    node: NodeHandle,
    _dir: tempfile::TempDir,
}

impl TestNode {
    fn start(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::embedded();
        config.security = cartwheel::config::SecurityConfig::insecure();
        config.node.listen = "127.0.0.1:0".parse().unwrap();
        // A cluster of its own: the embedded seeds name the first port of a user's `up`.
        config.node.seeds = Vec::new();
        config.node.data_dir = dir.path().join("n1");
        adjust(&mut config);
        // One node holds one copy: W copies need W nodes.
        config.fit_buckets_to(1);
        let node = NodeHandle::start(config).expect("node starts");
        Self { node, _dir: dir }
    }

    /// The node's data directory.
    fn dir(&self) -> std::path::PathBuf {
        self._dir.path().join("n1")
    }

    fn address(&self) -> String {
        self.node.address().to_string()
    }
}

fn one_value(v: &str) -> Option<Value> {
    Some(Value::Siblings(vec![v.as_bytes().to_vec()]))
}

/// put, get, overwrite, delete and not-found through the client, on the `default` bucket.
#[test]
fn put_get_overwrite_delete() {
    let node = TestNode::start(|_| {});
    block_on(async {
        let client = Client::connect(&node.address()).await.unwrap();
        assert_eq!(
            client.get("default", b"k").await.unwrap().value,
            None,
            "fresh key is not found"
        );

        client.put("default", b"k", b"v1", &[]).await.unwrap();
        assert_eq!(client.get("default", b"k").await.unwrap().value, one_value("v1"));

        let read = client.get("default", b"k").await.unwrap();
        client.put("default", b"k", b"v2", &read.context).await.unwrap();
        assert_eq!(client.get("default", b"k").await.unwrap().value, one_value("v2"));

        let read = client.get("default", b"k").await.unwrap();
        client.delete("default", b"k", &read.context).await.unwrap();
        let after = client.get("default", b"k").await.unwrap();
        assert_eq!(after.value, None, "deleted key reads as not found");
        assert!(!after.context.is_empty(), "a tombstone still has a context");

        // Other keys are untouched, and binary keys and values work.
        client.put("default", &[0, 255, 7], &[1, 0, 2], &[]).await.unwrap();
        let read = client.get("default", &[0, 255, 7]).await.unwrap();
        assert_eq!(read.value, Some(Value::Siblings(vec![vec![1, 0, 2]])));
    });
}

/// A put asked for its body returns the stored value.
#[test]
fn put_returns_body_when_asked() {
    let node = TestNode::start(|_| {});
    block_on(async {
        let client = Client::connect(&node.address()).await.unwrap();
        let options = WriteOptions { return_body: true, ..WriteOptions::default() };
        let written = client.put_with("default", b"k", b"body", &[], &options).await.unwrap();
        assert_eq!(written.value, one_value("body"));
        let quiet = client.put("default", b"k", b"other", &[]).await.unwrap();
        assert_eq!(quiet.value, None, "no body unless asked");
        assert!(!quiet.context.is_empty());
    });
}

/// Unknown buckets, empty keys, bad per-request options and wrong operations are typed errors.
#[test]
fn typed_request_errors() {
    let node = TestNode::start(|c| {
        c.buckets
            .insert("volatile".into(), BucketConfig::new(EngineKind::Memory, ResolverKind::Lww));
    });
    block_on(async {
        let client = Client::connect(&node.address()).await.unwrap();
        let err = client.get("nope", b"k").await.unwrap_err();
        assert!(
            matches!(err, Error::UnknownBucket(ref b) if b.starts_with("\"nope\" (this node has: ")),
            "{err:?}"
        );
        let err = client.put("nope", b"k", b"v", &[]).await.unwrap_err();
        assert!(matches!(err, Error::UnknownBucket(_)), "{err:?}");

        let err = client.put("default", b"", b"v", &[]).await.unwrap_err();
        assert!(matches!(err, Error::BadRequest(_)), "{err:?}");

        let options = WriteOptions { w: 9, ..WriteOptions::default() };
        let err = client.put_with("default", b"k", b"v", &[], &options).await.unwrap_err();
        assert!(matches!(err, Error::BadRequest(_)), "{err:?}");

        let options = WriteOptions { dw: Some(1), ..WriteOptions::default() };
        let err = client.put_with("volatile", b"k", b"v", &[], &options).await.unwrap_err();
        assert!(matches!(err, Error::BadRequest(_)), "dw on a memory bucket: {err:?}");

        let ops = [Op::CounterIncrement(1)];
        let err =
            client.update("default", b"k", &ops, &[], &WriteOptions::default()).await.unwrap_err();
        assert!(matches!(err, Error::WrongOperation(_)), "{err:?}");
        let err =
            client.update("default", b"k", &[], &[], &WriteOptions::default()).await.unwrap_err();
        assert!(matches!(err, Error::BadRequest(_)), "{err:?}");

        assert!(!err.is_retryable());
        assert_eq!(client.get("default", b"k").await.unwrap().value, None, "nothing was stored");
    });
}

/// Oversized keys and values get their typed errors, store nothing, and the node (and the
/// same connection) keeps serving.
#[test]
fn oversized_key_and_value() {
    let node = TestNode::start(|c| {
        c.limits.key_bytes_max = 64;
        c.limits.value_bytes_max = 4096;
    });
    block_on(async {
        let mut client = Client::connect(&node.address()).await.unwrap();
        // Send everything to the node so its own checks are what is tested.
        client.set_value_bytes_max(usize::MAX);

        let err = client.put("default", &[b'k'; 65], b"v", &[]).await.unwrap_err();
        assert!(matches!(err, Error::KeyTooLarge(_)), "{err:?}");
        let err = client.get("default", &[b'k'; 65]).await.unwrap_err();
        assert!(matches!(err, Error::KeyTooLarge(_)), "{err:?}");
        client.put("default", &[b'k'; 64], b"at the limit", &[]).await.unwrap();

        let err = client.put("default", b"big", &[0u8; 4097], &[]).await.unwrap_err();
        assert!(matches!(err, Error::ValueTooLarge(_)), "{err:?}");
        assert_eq!(client.get("default", b"big").await.unwrap().value, None);
        client.put("default", b"big", &[0u8; 4096], &[]).await.unwrap();

        let ops = [Op::SetAdd(vec![0u8; 4097])];
        let err =
            client.update("default", b"k", &ops, &[], &WriteOptions::default()).await.unwrap_err();
        assert!(matches!(err, Error::ValueTooLarge(_)), "{err:?}");

        // Far over the message limit: the node does not read the message and drops this
        // connection; a new connection is served.
        let err = client.put("default", b"huge", &vec![0u8; 1 << 20], &[]).await.unwrap_err();
        assert!(matches!(err, Error::Transport(_)), "{err:?}");
        let client = Client::connect(&node.address()).await.unwrap();
        assert_eq!(client.get("default", b"big").await.unwrap().value.map(|_| ()), Some(()));
        assert_eq!(client.get("default", b"huge").await.unwrap().value, None);
    });
}

/// The client library refuses a value over its limit before sending anything.
#[test]
fn client_refuses_oversized_value_locally() {
    let node = TestNode::start(|_| {});
    block_on(async {
        let mut client = Client::connect(&node.address()).await.unwrap();
        client.set_value_bytes_max(10);
        let err = client.put("default", b"k", &[1u8; 11], &[]).await.unwrap_err();
        assert!(matches!(err, Error::ValueTooLarge(_)), "{err:?}");
        let served = client.status().await.unwrap().requests_served;
        assert_eq!(served, 1, "nothing but the status call reached the node");
    });
}

/// A socket that sends garbage (HTTP, noise, a well-framed message with a bad root pointer)
/// is dropped, and the node keeps serving others.
#[test]
fn garbage_bytes_drop_only_that_connection() {
    let node = TestNode::start(|_| {});
    block_on(async {
        let client = Client::connect(&node.address()).await.unwrap();
        client.put("default", b"k", b"before", &[]).await.unwrap();
    });

    for garbage in [
        &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        &[0xff; 64][..],
        &[0, 0, 0, 0, 1, 0, 0, 0, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff][..],
    ] {
        let mut socket = std::net::TcpStream::connect(node.node.address()).unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        socket.write_all(garbage).unwrap();
        let mut buf = [0u8; 1024];
        // The node closes the connection: read returns 0 (EOF) or a reset, never times out.
        loop {
            match socket.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => continue, // an abort message may come first
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("connection was not closed after garbage {garbage:?}: {e}"),
            }
        }
    }

    block_on(async {
        let client = Client::connect(&node.address()).await.unwrap();
        assert_eq!(client.get("default", b"k").await.unwrap().value, one_value("before"));
    });
}

/// A connection that begins a message and stalls is closed after
/// `limits.message_read_timeout_ms`; an idle connection (no message begun) stays open.
#[test]
fn a_stalled_message_closes_the_connection() {
    let node = TestNode::start(|c| c.limits.message_read_timeout_ms = 300);
    let mut idle = std::net::TcpStream::connect(node.node.address()).unwrap();
    let mut stalled = std::net::TcpStream::connect(node.node.address()).unwrap();
    // A segment table announcing 4 words, and one word of them.
    stalled.write_all(&[0, 0, 0, 0, 4, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stalled.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the stalled connection was not closed: {e}"),
        }
    }
    idle.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    match idle.read(&mut buf) {
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("the idle connection was closed or answered: {other:?}"),
    }
    block_on(async {
        let client = Client::connect(&node.address()).await.unwrap();
        client.put("default", b"k", b"still serving", &[]).await.unwrap();
    });
}

/// `status` reports the node, its buckets and counters; `ring` gives every partition an owner.
#[test]
fn status_and_ring() {
    let node = TestNode::start(|c| {
        c.partitions = 16;
        c.buckets.insert("extra".into(), BucketConfig::new(EngineKind::Memory, ResolverKind::Lww));
    });
    block_on(async {
        let client = Client::connect(&node.address()).await.unwrap();
        client.put("extra", b"a", b"1", &[]).await.unwrap();
        client.put("extra", b"b", b"22", &[]).await.unwrap();
        let status = client.status().await.unwrap();
        assert_eq!(status.node_id, "n1");
        assert_eq!(status.address, node.address());
        assert_eq!(status.members.len(), 1);
        assert_eq!(status.members[0].state, "up");
        assert_eq!(status.requests_served, 3, "two puts and the status call itself");
        assert!(status.connections >= 1);
        let extra = status.buckets.iter().find(|b| b.name == "extra").unwrap();
        assert_eq!((extra.engine.as_str(), extra.resolver.as_str()), ("memory", "lww"));
        assert_eq!(extra.entries, 2);
        assert!(status.buckets.iter().any(|b| b.name == "default"));

        let ring = client.ring().await.unwrap();
        assert_eq!(ring.partition_count, 16);
        assert_eq!(ring.owners, vec![0u16; 16]);
        assert_eq!(ring.nodes[0].address, node.address());
    });
}

/// Connections over the limit are closed at once when every connection in the way has logged
/// in; the admitted one keeps working.
#[test]
fn connection_limit() {
    let node = TestNode::start(|c| c.limits.connections_max = 1);
    block_on(async {
        let first = Client::connect(&node.address()).await.unwrap();
        first.put("default", b"k", b"v", &[]).await.unwrap();
        let second = Client::connect(&node.address()).await;
        assert!(matches!(second, Err(Error::Connect { .. })), "{:?}", second.err());
        assert_eq!(first.get("default", b"k").await.unwrap().value, one_value("v"));
        assert_eq!(first.status().await.unwrap().requests_refused, 1);
    });
}

/// A node that cannot open its data (a file where its directory should be) fails to start
/// with an error naming the bucket, instead of serving half its buckets.
#[test]
fn start_failure_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::embedded();
    config.security = cartwheel::config::SecurityConfig::insecure();
    config.node.listen = "127.0.0.1:0".parse().unwrap();
    config.node.data_dir = dir.path().join("n1");
    config
        .buckets
        .insert("durable".into(), BucketConfig::new(EngineKind::Btree, ResolverKind::Lww));
    std::fs::create_dir_all(dir.path().join("n1/buckets")).unwrap();
    std::fs::write(dir.path().join("n1/buckets/durable"), b"not a directory").unwrap();
    let err = NodeHandle::start(config).unwrap_err();
    assert!(err.to_string().contains("durable"), "{err}");
}

/// Listening on a port already taken is a clear start error.
#[test]
fn port_in_use() {
    let node = TestNode::start(|_| {});
    let mut config = Config::embedded();
    config.security = cartwheel::config::SecurityConfig::insecure();
    config.node.listen = node.node.address();
    let err = NodeHandle::start(config).unwrap_err();
    assert!(err.to_string().contains("cannot listen"), "{err}");
}

/// Every resolver is reachable through its embedded bucket: counters count, sets add and
/// remove, carts keep quantities, and a plain put on a CRDT bucket is a wrong operation.
#[test]
fn crdt_buckets_through_the_node() {
    let node = TestNode::start(|_| {});
    block_on(async {
        let client = Client::connect(&node.address()).await.unwrap();
        let options = WriteOptions::default();
        client.update("counters", b"c", &[Op::CounterIncrement(5)], &[], &options).await.unwrap();
        client.update("counters", b"c", &[Op::CounterIncrement(-2)], &[], &options).await.unwrap();
        assert_eq!(client.get("counters", b"c").await.unwrap().value, Some(Value::Counter(3)));

        client
            .update(
                "sets",
                b"s",
                &[Op::SetAdd(b"x".to_vec()), Op::SetAdd(b"y".to_vec())],
                &[],
                &options,
            )
            .await
            .unwrap();
        let context = client.get("sets", b"s").await.unwrap().context;
        client
            .update("sets", b"s", &[Op::SetRemove(b"x".to_vec())], &context, &options)
            .await
            .unwrap();
        assert_eq!(
            client.get("sets", b"s").await.unwrap().value,
            Some(Value::Set(vec![b"y".to_vec()]))
        );

        let add = |item: &str, quantity| Op::CartAdd { item: item.as_bytes().to_vec(), quantity };
        client
            .update("carts", b"alice", &[add("apple", 2), add("pear", 1)], &[], &options)
            .await
            .unwrap();
        client.update("carts", b"alice", &[add("apple", 1)], &[], &options).await.unwrap();
        let cart = client.get("carts", b"alice").await.unwrap().value;
        assert_eq!(cart, Some(Value::Cart(vec![(b"apple".to_vec(), 3), (b"pear".to_vec(), 1)])));

        let err = client.put("carts", b"alice", b"v", &[]).await.unwrap_err();
        assert!(matches!(err, Error::WrongOperation(_)), "{err:?}");
        let err =
            client.update("carts", b"alice", &[add("apple", -1)], &[], &options).await.unwrap_err();
        assert!(matches!(err, Error::BadRequest(_)), "{err:?}");
    });
}

/// Blind writes to a `siblings` bucket become siblings; at the soft limit the node counts a
/// warning, at the hard limit it refuses the put with tooManySiblings, and a write with the
/// read's context resolves them.
#[test]
fn sibling_limits_through_the_node() {
    let node = TestNode::start(|c| {
        let mut bucket = BucketConfig::new(EngineKind::Memory, ResolverKind::Siblings);
        bucket.resolver_config.siblings_soft_max = 2;
        bucket.resolver_config.siblings_hard_max = 3;
        c.buckets.insert("sib".into(), bucket);
    });
    block_on(async {
        let client = Client::connect(&node.address()).await.unwrap();
        for v in ["a", "b", "c"] {
            client.put("sib", b"k", v.as_bytes(), &[]).await.unwrap();
        }
        let read = client.get("sib", b"k").await.unwrap();
        assert_eq!(
            read.value,
            Some(Value::Siblings(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]))
        );
        let err = client.put("sib", b"k", b"d", &[]).await.unwrap_err();
        assert!(matches!(err, Error::TooManySiblings(_)), "{err:?}");
        let status = client.status().await.unwrap();
        let sib = status.buckets.iter().find(|b| b.name == "sib").unwrap();
        assert_eq!(sib.sibling_warnings, 2, "the 2nd and 3rd sibling warned");

        client.put("sib", b"k", b"resolved", &read.context).await.unwrap();
        assert_eq!(client.get("sib", b"k").await.unwrap().value, one_value("resolved"));
    });
}

/// Requests over the per-connection in-flight bound are answered at once with `overloaded`
/// and change nothing; the admitted ones complete.
#[test]
fn inflight_bound_per_connection() {
    let node = TestNode::start(|c| {
        c.limits.inflight_per_connection_max = 1;
        let mut bucket = BucketConfig::new(EngineKind::Log, ResolverKind::Lww);
        bucket.dw = 1;
        c.buckets.insert("durable".into(), bucket);
    });
    block_on(async {
        let client = Client::connect(&node.address()).await.unwrap();
        // A durable put waits for fdatasync off the RPC thread, so the next requests on the
        // same connection arrive while it is in flight.
        let keys: Vec<String> = (0..16).map(|i| format!("k{i}")).collect();
        let puts = keys.iter().map(|k| client.put("durable", k.as_bytes(), b"v", &[]));
        let results = futures::future::join_all(puts).await;
        let refused = results.iter().filter(|r| matches!(r, Err(Error::Overloaded(_)))).count();
        let stored = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(refused + stored, keys.len(), "only overloaded or stored: {results:?}");
        assert!(refused >= 1 && stored >= 1, "refused {refused}, stored {stored}");
        for (key, result) in keys.iter().zip(&results) {
            let value = client.get("durable", key.as_bytes()).await.unwrap().value;
            assert_eq!(value.is_some(), result.is_ok(), "{key}: a refused put stored nothing");
        }
        assert_eq!(client.status().await.unwrap().requests_refused, refused as u64);
    });
}

/// A server that accepts TCP and never answers: the connection ends with a typed error (the
/// login is not answered within the connect timeout), never a hang.
#[test]
fn a_silent_server_gives_a_timeout_not_a_hang() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    // Accept and hold connections without reading or writing a byte.
    let _held = std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().take(4) {
            held.push(stream);
        }
        std::thread::sleep(std::time::Duration::from_secs(30));
    });
    let started = std::time::Instant::now();
    let outcome = block_on(async {
        let client = Client::connect(&address).await?;
        let options = ReadOptions { r: 0, timeout_ms: 200 };
        client.get_with("default", b"k", &options).await
    });
    let elapsed = started.elapsed();
    assert!(matches!(outcome, Err(Error::Connect { .. })), "{outcome:?}");
    assert!(elapsed < std::time::Duration::from_secs(10), "took {elapsed:?}");
}

/// A second node given a running node's data directory stops at the node's own lock, before
/// it creates or opens anything there (no bucket directory of its own appears).
#[test]
fn a_second_node_on_the_same_data_dir_touches_nothing() {
    let first = TestNode::start(|_| {});
    let data_dir = first.dir();
    let mut config = Config::embedded();
    config.security = cartwheel::config::SecurityConfig::insecure();
    config.node.listen = "127.0.0.1:0".parse().unwrap();
    config.node.seeds = Vec::new();
    config.node.data_dir = data_dir.clone();
    config.buckets.insert("a-second".into(), BucketConfig::new(EngineKind::Log, ResolverKind::Lww));
    let err = NodeHandle::start(config).expect_err("the data directory is in use");
    assert!(err.to_string().contains("locked"), "{err}");
    assert!(
        !data_dir.join("buckets").join("a-second").exists(),
        "the refused node created a bucket"
    );
}

/// A cart that keeps growing stops at the state limit (twice the value limit) with a typed
/// `valueTooLarge`, and keeps every add it acknowledged: every state can always be replicated.
#[test]
fn a_state_never_outgrows_its_limit() {
    let node = TestNode::start(|c| c.limits.value_bytes_max = 4096);
    block_on(async {
        let client = Client::connect(&node.address()).await.unwrap();
        let options = WriteOptions::default();
        let mut added = Vec::new();
        let refusal = loop {
            let item = format!("item-{:04}-{}", added.len(), "x".repeat(100)).into_bytes();
            let ops = vec![Op::CartAdd { item: item.clone(), quantity: 1 }];
            match client.update("carts", b"big", &ops, &[], &options).await {
                Ok(_) => added.push(item),
                Err(e) => break e,
            }
            assert!(added.len() < 1_000, "the cart never reached the limit");
        };
        assert!(matches!(refusal, Error::ValueTooLarge(_)), "{refusal:?}");
        assert!(added.len() > 10, "refused after {} adds", added.len());
        let read = client.get("carts", b"big").await.unwrap();
        let Some(Value::Cart(items)) = read.value else { panic!("{read:?}") };
        assert_eq!(items.len(), added.len(), "every acknowledged add is there, nothing more");
    });
}
