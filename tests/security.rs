//! The trust boundary, tried from outside: TLS nodes on loopback, reached by the real client
//! library with tokens, by raw Cap'n Proto connections that try to skip the gate, and by
//! connections that never say anything.
//!
//! Every node here runs in TLS mode with a secret in the test's own directory
//! (`SecurityConfig::development`), on port 0, seeded only by its own cluster.

mod common;

use std::net::TcpStream as StdTcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use capnp_rpc::{rpc_twoparty_capnp, RpcSystem};
use cartwheel::cartwheel_capnp::gate;
use cartwheel::client::{block_on, Client, Credentials, WriteOptions};
use cartwheel::config::{BucketConfig, Config, SecurityConfig};
use cartwheel::node::server::NodeHandle;
use cartwheel::security::{ClusterKeys, Secret, ADMIN_CREDENTIALS_FILE};
use cartwheel::Error;
use cartwheel_engines::EngineKind;
use cartwheel_resolvers::{ResolverKind, Value};

const WAIT: Duration = Duration::from_secs(20);

/// A TLS node `id` with its secret (and admin credentials) in `secret_dir`.
fn config(secret_dir: &Path, data: &Path, id: &str, seed: Option<String>) -> Config {
    let mut config = Config::embedded();
    config.security = SecurityConfig::development(secret_dir);
    config.node.id = id.to_string();
    config.node.listen = "127.0.0.1:0".parse().unwrap();
    config.node.data_dir = data.join(id);
    config.node.seeds = seed.into_iter().collect();
    config.cluster.gossip_interval_ms = 50;
    for name in ["a", "b"] {
        let mut bucket = BucketConfig::new(EngineKind::Memory, ResolverKind::Lww);
        (bucket.n, bucket.r, bucket.w) = (1, 1, 1);
        config.buckets.insert(name.into(), bucket);
    }
    config
}

fn admin(secret_dir: &Path) -> Credentials {
    Credentials::load(&secret_dir.join(ADMIN_CREDENTIALS_FILE)).unwrap()
}

/// Credentials with `grants`, minted with the cluster's secret.
fn credentials(secret_dir: &Path, grants: &str) -> Credentials {
    let secret = Secret::load(&secret_dir.join(cartwheel::config::SECRET_FILE)).unwrap();
    let keys = ClusterKeys::derive(&secret).unwrap();
    let grants = cartwheel::security::Grants::parse(grants).unwrap();
    let (token, _) = cartwheel::security::token::mint(keys.token_key(), &grants).unwrap();
    Credentials { token, ca_pem: Some(keys.ca_pem()) }
}

/// A raw TLS connection without a client certificate; returns its gate.
async fn raw_gate(address: &str, ca_pem: &str) -> gate::Client {
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(cartwheel::security::client_config(ca_pem).unwrap());
    let session = tls.connect(cartwheel::security::server_name(), stream).await.unwrap();
    let network = cartwheel::node::transport::network_over(
        session,
        rpc_twoparty_capnp::Side::Client,
        capnp::message::ReaderOptions::new(),
        Duration::from_secs(5),
    );
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let gate: gate::Client = rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
    tokio::task::spawn_local(async move {
        let _ = rpc.await;
    });
    gate
}

/// A connection without a member's certificate gets neither the peer API nor, without a
/// valid token, the client API; plain TCP to a TLS node gets nothing at all.
#[test]
fn an_anonymous_connection_can_only_authenticate() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeHandle::start(config(dir.path(), dir.path(), "n1", None)).unwrap();
    let address = node.address().to_string();
    let ca = admin(dir.path()).ca_pem.unwrap();
    block_on(async {
        let gate = raw_gate(&address, &ca).await;
        let mut request = gate.peer_request();
        request.get().set_from("intruder");
        let response = request.send().promise.await.unwrap();
        let result = response.get().unwrap();
        assert!(result.has_error() && !result.has_peer());
        let kind = result.get_error().unwrap().get_kind().unwrap();
        assert_eq!(kind, cartwheel::cartwheel_capnp::ErrorKind::Unauthorized);
        // The peer API is not reachable through a pipelined call either.
        let mut request = gate.peer_request();
        request.get().set_from("intruder");
        let peer = request.send().pipeline.get_peer();
        let mut fetch = peer.fetch_request();
        fetch.get().set_bucket("a");
        fetch.get().set_key(b"k");
        assert!(fetch.send().promise.await.is_err(), "a refused gate gives no peer API");

        for token in ["", "cw1.00.00", "garbage"] {
            let mut login = gate.login_request();
            login.get().set_token(token);
            let response = login.send().promise.await.unwrap();
            assert!(response.get().unwrap().has_error(), "token {token:?} is refused");
        }
        let plain = Client::connect(&address).await;
        assert!(plain.is_err(), "plain TCP to a TLS node gets nothing");
        let mut forged = admin(dir.path());
        forged.token = credentials(dir.path(), "*=rw,admin").token.replace("cw1.", "cw1.00");
        assert!(matches!(
            Client::connect_with(&address, &forged).await.err(),
            Some(Error::Unauthorized(_))
        ));
    });
    node.stop().unwrap();
}

/// Tokens are scoped: read-only cannot write, bucket A cannot touch bucket B, only admin sees
/// status; a revoked token stops working, on sessions already open too.
#[test]
fn tokens_are_scoped_to_their_grants_and_revocable() {
    let dir = tempfile::tempdir().unwrap();
    let node = NodeHandle::start(config(dir.path(), dir.path(), "n1", None)).unwrap();
    let address = node.address().to_string();
    block_on(async {
        let admin = Client::connect_with(&address, &admin(dir.path())).await.unwrap();
        admin.put("a", b"k", b"v", &[]).await.unwrap();
        admin.put("b", b"k", b"v", &[]).await.unwrap();
        assert_eq!(admin.status().await.unwrap().security, "tls");

        let reader = Client::connect_with(&address, &credentials(dir.path(), "a=r")).await.unwrap();
        let read = reader.get("a", b"k").await.unwrap();
        assert_eq!(read.value, Some(Value::Siblings(vec![b"v".to_vec()])));
        let write = reader.put("a", b"k", b"w", &read.context).await;
        assert!(matches!(write, Err(Error::Forbidden(_))), "{write:?}");
        assert!(matches!(reader.get("b", b"k").await, Err(Error::Forbidden(_))));
        assert!(matches!(reader.status().await, Err(Error::Forbidden(_))));
        assert!(matches!(reader.ring().await, Err(Error::Forbidden(_))));
        assert!(matches!(reader.create_token("*=rw").await, Err(Error::Forbidden(_))));

        let only_a =
            Client::connect_with(&address, &credentials(dir.path(), "a=rw")).await.unwrap();
        only_a.put("a", b"k2", b"v", &[]).await.unwrap();
        let other = only_a.put("b", b"k2", b"v", &[]).await;
        assert!(matches!(other, Err(Error::Forbidden(_))), "{other:?}");
        let ops = [cartwheel_resolvers::Op::CounterIncrement(1)];
        let update = only_a.update("b", b"k", &ops, &[], &WriteOptions::default()).await;
        assert!(matches!(update, Err(Error::Forbidden(_))), "{update:?}");
        assert!(matches!(only_a.delete("b", b"k", &[]).await, Err(Error::Forbidden(_))));
        let read = admin.get("b", b"k2").await.unwrap();
        assert_eq!(read.value, None, "nothing reached bucket b");

        // Revocation: a token minted through the node, then revoked.
        let (token, id) = admin.create_token("a=rw").await.unwrap();
        let mut minted = admin_credentials(dir.path());
        minted.token = token;
        let session = Client::connect_with(&address, &minted).await.unwrap();
        session.put("a", b"k3", b"v", &[]).await.unwrap();
        admin.revoke_token(&id).await.unwrap();
        let after = session.put("a", b"k3", b"w", &[]).await;
        assert!(matches!(after, Err(Error::Unauthorized(_))), "{after:?}");
        let again = Client::connect_with(&address, &minted).await;
        assert!(matches!(again.err(), Some(Error::Unauthorized(_))));
        assert!(matches!(admin.revoke_token("not-an-id").await, Err(Error::BadRequest(_))));
    });
    node.stop().unwrap();
}

fn admin_credentials(dir: &Path) -> Credentials {
    admin(dir)
}

/// A node made with another secret cannot join: its certificate is not the cluster CA's, so
/// the cluster never lists it, and it never learns the cluster's members. Its clients cannot
/// log in to the cluster either (the node's certificate is not the one their CA signed).
#[test]
fn a_node_with_another_secret_cannot_join() {
    let ours = tempfile::tempdir().unwrap();
    let theirs = tempfile::tempdir().unwrap();
    let first = NodeHandle::start(config(ours.path(), ours.path(), "n1", None)).unwrap();
    let seed = first.address().to_string();
    let second =
        NodeHandle::start(config(ours.path(), ours.path(), "n2", Some(seed.clone()))).unwrap();
    let intruder =
        NodeHandle::start(config(theirs.path(), theirs.path(), "x1", Some(seed.clone()))).unwrap();
    let intruder_address = intruder.address().to_string();
    let members = |address: &str, credentials: &Credentials| {
        block_on(async {
            let client = Client::connect_with(address, credentials).await.unwrap();
            let status = client.status().await.unwrap();
            status.members.iter().map(|m| m.id.clone()).collect::<Vec<_>>()
        })
    };
    common::wait_until_within(WAIT, "n1 and n2 form a cluster", || {
        members(&seed, &admin(ours.path())).len() == 2
    });
    // Many gossip rounds (50 ms each) later, still nobody knows the intruder.
    std::thread::sleep(Duration::from_millis(1_500));
    let seen = members(&seed, &admin(ours.path()));
    assert!(!seen.contains(&"x1".to_string()), "the cluster lists {seen:?}");
    let seen = members(&intruder_address, &admin(theirs.path()));
    assert_eq!(seen, vec!["x1".to_string()], "the intruder learned {seen:?}");
    block_on(async {
        let wrong = Client::connect_with(&seed, &admin(theirs.path())).await;
        assert!(matches!(wrong.err(), Some(Error::Connect { .. })), "another CA is refused");
    });
    for node in [intruder, second, first] {
        node.stop().unwrap();
    }
}

/// 1100 connections that never send a byte do not lock a new client out (from the same
/// address, too): the oldest that have not logged in make room, and all are closed at the
/// handshake deadline. `status` then counts only the connections that exist.
#[test]
fn idle_connections_cannot_be_hoarded() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), dir.path(), "n1", None);
    config.limits.handshake_timeout_ms = 2_000;
    let node = NodeHandle::start(config).unwrap();
    let address = node.address().to_string();
    let hoard: Vec<StdTcpStream> =
        (0..1100).filter_map(|_| StdTcpStream::connect(&address).ok()).collect();
    assert!(hoard.len() >= 1000, "the hoard opened {} connections", hoard.len());
    let started = Instant::now();
    let status = block_on(async {
        let client = Client::connect_with(&address, &admin(dir.path())).await.unwrap();
        client.put("a", b"k", b"v", &[]).await.unwrap();
        client.status().await.unwrap()
    });
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the client waited {:?}",
        started.elapsed()
    );
    assert!(status.connections_unauthenticated <= 64, "{status:?}");
    common::wait_until_within(WAIT, "the hoard is closed", || {
        let status = block_on(async {
            let client = Client::connect_with(&address, &admin(dir.path())).await.unwrap();
            client.status().await.unwrap()
        });
        status.connections == 1 && status.connections_unauthenticated == 0
    });
    drop(hoard);
    node.stop().unwrap();
}

/// A logged-in connection without calls is closed after `limits.idle_timeout_ms`.
#[test]
fn idle_sessions_are_closed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), dir.path(), "n1", None);
    config.limits.idle_timeout_ms = 300;
    let node = NodeHandle::start(config).unwrap();
    let address = node.address().to_string();
    block_on(async {
        let client = Client::connect_with(&address, &admin(dir.path())).await.unwrap();
        client.put("a", b"k", b"v", &[]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1_000)).await;
        let late = client.get("a", b"k").await;
        assert!(matches!(late, Err(Error::Transport(_))), "{late:?}");
    });
    node.stop().unwrap();
}

/// A node configured for TLS without its secret's file does not start, and says why.
#[test]
fn a_missing_secret_keeps_the_node_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), dir.path(), "n1", None);
    config.security.create_secret = false;
    config.security.secret_file = dir.path().join("absent.secret");
    let err = NodeHandle::start(config).unwrap_err().to_string();
    assert!(err.contains("absent.secret"), "{err}");
}
