//! Peer input is validated, never trusted (issue 11, item 4): the attacks that worked
//! against a three-node cluster through the node-to-node API, replayed against real nodes
//! in this process (each on its own thread and ephemeral port, gossiping every 50 ms), with
//! raw Cap'n Proto requests. Each test fails on a build without the checks:
//!
//! - a gossip naming a member that does not exist gave it partitions and hints for good;
//! - a gossiped ring at epoch 2^64-1 was adopted and wrapped the claimant's epoch to 0;
//! - an lww state stamped (u64::MAX ms, u32::MAX) replicated everywhere beat every later,
//!   acknowledged, write;
//! - `replicate` with a `hintFor` naming a non-member was stored as an invisible hint;
//! - counter increments and cart quantities past i64::MAX answered ok and were cut short;
//! - a garbage context on an lww bucket was accepted.
//!
//! The raw requests go through [`peer_api`], the one function that knows how a member opens
//! the node-to-node API.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use capnp_rpc::{rpc_twoparty_capnp::Side, RpcSystem};
use cartwheel::cartwheel_capnp::{gate, peer, replica_result};
use cartwheel::client::{block_on, Client, NodeStatus, ReadOptions, WriteOptions};
use cartwheel::cluster::membership::{MemberInfo, View};
use cartwheel::config::{BucketConfig, Config};
use cartwheel::node::server::NodeHandle;
use cartwheel::node::wire;
use cartwheel::ring::Ownership;
use cartwheel::Error;
use cartwheel_engines::EngineKind;
use cartwheel_resolvers::{Op, Resolver, ResolverKind, Stamp, Timestamp, Value, Write};

const WAIT: Duration = Duration::from_secs(20);

/// The gossip interval of the test nodes.
const GOSSIP_MS: u64 = 50;

fn node_config(dir: &std::path::Path, i: usize, seed: Option<&str>) -> Config {
    let mut config = Config::embedded();
    config.security = cartwheel::config::SecurityConfig::insecure();
    config.node.id = format!("n{}", i + 1);
    config.node.listen = "127.0.0.1:0".parse().unwrap();
    config.node.data_dir = dir.join(format!("n{}", i + 1));
    config.node.seeds = seed.map(|s| vec![s.to_string()]).unwrap_or_default();
    config.cluster.gossip_interval_ms = GOSSIP_MS;
    config.limits.request_timeout_ms = 2_000;
    config.partitions = 64;
    config.buckets.clear();
    for (name, resolver) in [
        ("b", ResolverKind::Lww),
        ("counters", ResolverKind::Pncounter),
        ("carts", ResolverKind::Cart),
    ] {
        let mut bucket = BucketConfig::new(EngineKind::Log, resolver);
        bucket.dw = 0;
        config.buckets.insert(name.into(), bucket);
    }
    config
}

/// Three nodes, the first the seed of the others, converged: every node sees every member
/// up and owning partitions, on one ring.
struct TestCluster {
    _dir: tempfile::TempDir,
    _nodes: Vec<NodeHandle>,
    addresses: Vec<String>,
}

impl TestCluster {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let first = NodeHandle::start(node_config(dir.path(), 0, None)).unwrap();
        let seed = first.address().to_string();
        let mut nodes = vec![first];
        for i in 1..3 {
            nodes.push(NodeHandle::start(node_config(dir.path(), i, Some(&seed))).unwrap());
        }
        let addresses = nodes.iter().map(|n| n.address().to_string()).collect();
        let cluster = Self { _dir: dir, _nodes: nodes, addresses };
        wait_until("the cluster converges", || {
            let statuses: Vec<NodeStatus> = cluster.addresses.iter().map(|a| status(a)).collect();
            statuses.iter().all(|s| {
                s.members.len() == 3
                    && s.members.iter().all(|m| m.state == "up" && m.partitions_owned > 0)
                    && s.ring_epoch == statuses[0].ring_epoch
            })
        });
        cluster
    }

    /// Every node's ring, as `ring` describes it (epoch, owner of each partition by id).
    fn rings(&self) -> Vec<(u64, Vec<String>)> {
        self.addresses
            .iter()
            .map(|address| {
                let epoch = status(address).ring_epoch;
                let ring = block_on(async { client(address).await.ring().await.unwrap() });
                let owners =
                    ring.owners.iter().map(|&i| ring.nodes[i as usize].id.clone()).collect();
                (epoch, owners)
            })
            .collect()
    }
}

fn wait_until(what: &str, condition: impl FnMut() -> bool) {
    common::wait_until_within(WAIT, what, condition);
}

/// Let `rounds` gossip rounds pass.
fn rounds(rounds: u64) {
    std::thread::sleep(Duration::from_millis(rounds * GOSSIP_MS));
}

async fn client(address: &str) -> Client {
    Client::connect(address).await.unwrap()
}

fn status(address: &str) -> NodeStatus {
    block_on(async { client(address).await.status().await.unwrap() })
}

/// The node-to-node API of the node at `address`, opened as the member `from` opens it:
/// `Gate.peer(from)` on the bootstrap capability (in insecure mode every connection is a
/// member's), or, from a node whose bootstrap is still the client API, `Cartwheel.peer`.
/// The one place to change when the way in changes.
async fn peer_api(address: &str, from: &str) -> peer::Client {
    use capnp::capability::FromClientHook;
    let stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let options = capnp::message::ReaderOptions::new();
    let network = cartwheel::node::transport::network(stream, Side::Client, options, WAIT).unwrap();
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let bootstrap: capnp::capability::Client = rpc.bootstrap(Side::Server);
    tokio::task::spawn_local(async move {
        let _ = rpc.await;
    });
    let gate = gate::Client::new(bootstrap.hook.add_ref());
    let mut request = gate.peer_request();
    request.get().set_from(from);
    match request.send().promise.await {
        Ok(response) => {
            let response = response.get().unwrap();
            assert!(!response.has_error(), "{:?}", wire::get_error(response.get_error().unwrap()));
            response.get_peer().unwrap()
        }
        Err(_) => {
            let api = cartwheel::cartwheel_capnp::cartwheel::Client::new(bootstrap.hook);
            let mut request = api.peer_request();
            request.get().set_from(from);
            request.send().promise.await.unwrap().get().unwrap().get_peer().unwrap()
        }
    }
}

/// Send `view` as a gossip to the node at `address` (as member `from`); its answer.
fn gossip(address: &str, from: &str, view: &View) -> Result<View, Error> {
    block_on(async {
        let peer = peer_api(address, from).await;
        let mut request = peer.gossip_request();
        wire::set_view(request.get().init_view(), view);
        let response = request.send().promise.await?;
        let response = response.get()?;
        if response.has_error() {
            return Err(wire::get_error(response.get_error()?));
        }
        wire::get_view(response.get_view()?)
    })
}

/// The view of the node at `address`: the answer to a gossip that says nothing (no member,
/// a ring of no partitions, which is never taken).
fn view_of(address: &str) -> View {
    let nothing = View {
        members: Vec::new(),
        ring: Ownership { epoch: 0, owners: Vec::new(), next: None, left: BTreeSet::new() },
        revoked_tokens: BTreeSet::new(),
    };
    gossip(address, "n2", &nothing).unwrap()
}

/// Send `state` for `key` of `bucket` to the node at `address` with `replicate`, as a
/// replica (`hint_for` empty) or as a hint for `hint_for`.
fn replicate(
    address: &str,
    bucket: &str,
    key: &[u8],
    state: &[u8],
    hint_for: &str,
) -> Result<(), Error> {
    block_on(async {
        let peer = peer_api(address, "n2").await;
        let mut request = peer.replicate_request();
        {
            let mut p = request.get();
            p.set_bucket(bucket);
            p.set_key(key);
            p.set_state(state);
            p.set_sync(false);
            p.set_hint_for(hint_for);
        }
        let response = request.send().promise.await?;
        let result = response.get()?.get_result()?;
        match result.which().map_err(|e| Error::Transport(e.to_string()))? {
            replica_result::Stored(_) => Ok(()),
            replica_result::Error(e) => Err(wire::get_error(e?)),
        }
    })
}

/// An lww state holding `value`, stamped `(physical_ms, logical)` by actor `evil`.
fn lww_state(value: &str, physical_ms: u64, logical: u32) -> Vec<u8> {
    let stamp = Stamp { actor: b"evil".to_vec(), time: Timestamp { physical_ms, logical } };
    let put = Write::Put { value: value.as_bytes().to_vec(), context: Vec::new() };
    cartwheel_resolvers::lww::Lww.apply(None, &put, &stamp).unwrap()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn put(address: &str, key: &[u8], value: &[u8], context: &[u8]) -> Result<(), Error> {
    block_on(async {
        client(address).await.put_with("b", key, value, context, &WriteOptions::default()).await
    })
    .map(|_| ())
}

fn get(address: &str, bucket: &str, key: &[u8]) -> Option<Value> {
    block_on(async {
        let options = ReadOptions { r: 3, timeout_ms: 0 };
        client(address).await.get_with(bucket, key, &options).await.unwrap().value
    })
}

fn update(address: &str, bucket: &str, key: &[u8], op: Op) -> Result<(), Error> {
    block_on(async {
        let options = WriteOptions::default();
        client(address).await.update(bucket, key, &[op], &[], &options).await.map(|_| ())
    })
}

fn one(value: &str) -> Option<Value> {
    Some(Value::Siblings(vec![value.as_bytes().to_vec()]))
}

/// Whether any node lists `id` as a member.
fn anyone_knows(cluster: &TestCluster, id: &str) -> bool {
    cluster.addresses.iter().any(|a| status(a).members.iter().any(|m| m.id == id))
}

/// A gossip naming a member that does not exist changes no ring, queues no hint for it,
/// and is forgotten; the same entry gossiped again does not bring it back; writes after it
/// are acknowledged and read back everywhere. Method: three converged nodes each get, from
/// "n2", n1's view plus "zghost" at an address nobody listens on (an id after n1's, so that
/// n1 stays the claimant; a stranger with the smallest id is the membership unit tests').
#[test]
fn a_gossiped_stranger_gets_no_partition_and_is_forgotten() {
    let cluster = TestCluster::start();
    let before = cluster.rings();
    let mut forged = view_of(&cluster.addresses[0]);
    let digest = forged.members[0].config_digest.clone();
    forged.members.push(MemberInfo {
        id: "zghost".into(),
        address: "127.0.0.1:1".into(),
        incarnation: 1,
        heartbeat: 1,
        leaving: false,
        config_digest: digest,
        holds: Default::default(),
        data_bytes: 0,
    });
    for address in &cluster.addresses {
        gossip(address, "n2", &forged).unwrap();
    }
    assert!(anyone_knows(&cluster, "zghost"), "the stranger is heard of, unproven");
    rounds(6);
    assert_eq!(cluster.rings(), before, "no partition moved, no epoch changed");
    for k in 0..20u32 {
        let key = format!("key-{k}");
        put(&cluster.addresses[k as usize % 3], key.as_bytes(), b"v", &[]).unwrap();
    }
    for address in &cluster.addresses {
        assert!(status(address).members.iter().all(|m| m.hints_queued == 0), "hints queued");
        for k in 0..20u32 {
            assert_eq!(get(address, "b", format!("key-{k}").as_bytes()), one("v"));
        }
    }
    wait_until("every node forgets the stranger", || !anyone_knows(&cluster, "zghost"));
    assert_eq!(cluster.rings(), before);
    // A stale copy of the same entry (other nodes may still gossip it) does not bring it
    // back.
    for address in &cluster.addresses {
        gossip(address, "n2", &forged).unwrap();
    }
    rounds(4);
    assert!(!anyone_knows(&cluster, "zghost"), "a stale copy brought the stranger back");
    assert_eq!(cluster.rings(), before);
}

/// A gossiped ring at epoch 2^64-1 is refused by every node: the rings stay as they were
/// (no epoch wraps to 0 and flips back), and writes after it are acknowledged and read back.
#[test]
fn a_ring_at_the_last_epoch_is_refused() {
    let cluster = TestCluster::start();
    let before = cluster.rings();
    let mut forged = view_of(&cluster.addresses[0]);
    forged.ring.epoch = u64::MAX;
    forged.ring.owners.rotate_left(1);
    for address in &cluster.addresses {
        gossip(address, "n2", &forged).unwrap();
    }
    rounds(10);
    assert_eq!(cluster.rings(), before);
    put(&cluster.addresses[1], b"after", b"v", &[]).unwrap();
    for address in &cluster.addresses {
        assert_eq!(get(address, "b", b"after"), one("v"));
    }
}

/// An lww state stamped (u64::MAX ms, u32::MAX), or just past the maximum clock offset, is
/// refused by every node with badRequest, as a replica and as a hint, and counted; the
/// next client put is acknowledged and is what every node reads.
#[test]
fn a_state_stamped_far_ahead_is_refused_and_the_next_write_wins() {
    let cluster = TestCluster::start();
    let ahead = now_ms() + 60_000;
    for address in &cluster.addresses {
        for forged in [lww_state("injected", u64::MAX, u32::MAX), lww_state("soon", ahead, 0)] {
            for hint_for in ["", "n1", "n3"] {
                let me = status(address).node_id;
                if hint_for == me {
                    continue;
                }
                let refused = replicate(address, "b", b"k", &forged, hint_for);
                assert!(matches!(refused, Err(Error::BadRequest(_))), "{refused:?}");
            }
        }
        assert!(status(address).states_refused >= 4, "counted");
    }
    put(&cluster.addresses[2], b"k", b"mine", &[]).unwrap();
    for address in &cluster.addresses {
        assert_eq!(get(address, "b", b"k"), one("mine"));
        assert!(status(address).members.iter().all(|m| m.hints_queued == 0));
    }
}

/// `replicate` with a hint for a node that is not a member, or for the receiving node
/// itself, is refused with badRequest and stores nothing; a hint for a real member is
/// taken.
#[test]
fn a_hint_for_a_non_member_is_refused() {
    let cluster = TestCluster::start();
    let state = lww_state("hinted", now_ms(), 0);
    for (i, address) in cluster.addresses.iter().enumerate() {
        let me = format!("n{}", i + 1);
        for owner in ["nobody", "zghost", me.as_str()] {
            let refused = replicate(address, "b", b"h", &state, owner);
            assert!(matches!(refused, Err(Error::BadRequest(_))), "{owner}: {refused:?}");
        }
        let s = status(address);
        assert!(s.members.iter().all(|m| m.hints_queued == 0));
        assert!(!s.members.iter().any(|m| m.id == "nobody"));
    }
    replicate(&cluster.addresses[0], "b", b"h", &state, "n2").unwrap();
}

/// A counter increment or a cart quantity that would pass i64::MAX is `overflow`, and
/// nothing is stored: the value reads as before; a write back within the range is taken.
#[test]
fn counter_and_quantity_overflow_is_refused() {
    let cluster = TestCluster::start();
    let address = &cluster.addresses[0];
    update(address, "counters", b"c", Op::CounterIncrement(i64::MAX)).unwrap();
    for delta in [1, i64::MAX] {
        let refused = update(address, "counters", b"c", Op::CounterIncrement(delta));
        assert!(matches!(refused, Err(Error::Overflow(_))), "{refused:?}");
    }
    assert_eq!(get(address, "counters", b"c"), Some(Value::Counter(i64::MAX)));
    update(address, "counters", b"c", Op::CounterIncrement(-2)).unwrap();
    assert_eq!(get(address, "counters", b"c"), Some(Value::Counter(i64::MAX - 2)));

    let add = |quantity| Op::CartAdd { item: b"x".to_vec(), quantity };
    update(address, "carts", b"cart", add(i64::MAX)).unwrap();
    let refused = update(&cluster.addresses[1], "carts", b"cart", add(1));
    assert!(matches!(refused, Err(Error::Overflow(_))), "{refused:?}");
    let shown = Some(Value::Cart(vec![(b"x".to_vec(), i64::MAX)]));
    assert_eq!(get(address, "carts", b"cart"), shown);
}

/// A garbage context on an lww bucket is badRequest, for a put and a delete, and nothing
/// is stored; the context a read returned is taken.
#[test]
fn a_garbage_context_on_lww_is_a_bad_request() {
    let cluster = TestCluster::start();
    let address = &cluster.addresses[0];
    put(address, b"g", b"first", &[]).unwrap();
    let refused = put(address, b"g", b"second", b"garbage");
    assert!(matches!(refused, Err(Error::BadRequest(_))), "{refused:?}");
    let deleted = block_on(async {
        let options = WriteOptions::default();
        client(address).await.delete_with("b", b"g", b"garbage", &options).await.map(|_| ())
    });
    assert!(matches!(deleted, Err(Error::BadRequest(_))), "{deleted:?}");
    assert_eq!(get(address, "b", b"g"), one("first"));
    let context = block_on(async { client(address).await.get("b", b"g").await.unwrap().context });
    put(address, b"g", b"second", &context).unwrap();
    assert_eq!(get(address, "b", b"g"), one("second"));
}
