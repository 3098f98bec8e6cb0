//! Fault tests with real processes: three `cartwheel serve` processes on loopback, one of
//! them killed with SIGKILL in the middle of a stream of shopping-cart adds, then restarted.
//! No acknowledged add may be lost, and the replicas must converge to the same state.

mod common;

use cartwheel::client::router::ClusterClient;
use cartwheel::client::{block_on, Client, ReadOptions, WriteOptions};
use cartwheel_resolvers::{Op, Value};

use common::{free_port, members_up, wait_until, Process};

/// Kill -9 one of three nodes during cart adds with W = 2: every acknowledged add is in the
/// cart afterwards, and all three replicas hold the same bytes once read repair ran.
#[test]
fn no_acknowledged_cart_add_is_lost_when_a_node_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
    let addresses: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let mut processes: Vec<Process> = (0..3)
        .map(|i| {
            let config = dir.path().join(format!("n{}.toml", i + 1));
            let text = format!(
                "[node]\nid = \"n{id}\"\nlisten = \"{listen}\"\ndata_dir = \"{data}\"\nseeds = [\"{seed}\"]\n\
                 [cluster]\ngossip_interval_ms = 100\n[security]\nmode = \"insecure\"\n\
                 [buckets.carts]\nengine = \"log\"\nresolver = \"cart\"\nn = 3\nr = 2\nw = 2\ndw = 1\n",
                id = i + 1,
                listen = addresses[i],
                data = dir.path().join(format!("n{}", i + 1)).display(),
                seed = addresses[0],
            );
            std::fs::write(&config, text).unwrap();
            Process::new(config)
        })
        .collect();
    for p in &mut processes {
        p.start();
    }
    wait_until("three nodes see each other up", || addresses.iter().all(|a| members_up(a) == 3));

    let mut acknowledged = Vec::new();
    block_on(async {
        let client = ClusterClient::connect(&addresses).await.unwrap();
        for i in 0..300u32 {
            if i == 100 {
                processes[2].kill();
            }
            let item = format!("item-{i:04}").into_bytes();
            let op = Op::CartAdd { item: item.clone(), quantity: 1 };
            let options = WriteOptions { timeout_ms: 2_000, ..WriteOptions::default() };
            if client.update("carts", b"the-cart", &[op], &[], &options).await.is_ok() {
                acknowledged.push(item);
            }
        }
    });
    eprintln!("acknowledged {} of 300 adds", acknowledged.len());
    assert!(
        acknowledged.len() >= 200,
        "most adds are acknowledged with a node down: {}",
        acknowledged.len()
    );

    processes[2].start();
    wait_until("the restarted node is up everywhere", || {
        addresses.iter().all(|a| members_up(a) == 3)
    });
    let cart = block_on(async {
        let client = Client::connect(&addresses[0]).await.unwrap();
        client
            .get_with("carts", b"the-cart", &ReadOptions { r: 3, timeout_ms: 5_000 })
            .await
            .unwrap()
            .value
    });
    let Some(Value::Cart(items)) = cart else { panic!("the cart reads as a cart: {cart:?}") };
    for item in &acknowledged {
        let found = items.iter().find(|(i, _)| i == item);
        assert_eq!(
            found.map(|(_, q)| *q),
            Some(1),
            "acknowledged add {:?} lost",
            String::from_utf8_lossy(item)
        );
    }
    wait_until("the three replicas converge", || {
        let states: Vec<Option<Vec<u8>>> = addresses
            .iter()
            .map(|a| {
                block_on(async {
                    Client::connect(a)
                        .await
                        .unwrap()
                        .replica_state("carts", b"the-cart")
                        .await
                        .unwrap()
                })
            })
            .collect();
        states[0].is_some() && states.iter().all(|s| s == &states[0])
    });
}

/// A single node acknowledges dw = 1 puts only after fsync: after SIGKILL and a restart,
/// every acknowledged put is there, on each durable engine.
#[test]
fn dw_one_puts_survive_sigkill() {
    for engine in ["log", "buffer", "btree"] {
        let dir = tempfile::tempdir().unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let config = dir.path().join("n1.toml");
        let text = format!(
            "[node]\nid = \"n1\"\nlisten = \"{address}\"\ndata_dir = \"{data}\"\n\
             [security]\nmode = \"insecure\"\n\
             [buckets.d]\nengine = \"{engine}\"\nresolver = \"lww\"\nn = 1\nr = 1\nw = 1\ndw = 1\n",
            data = dir.path().join("n1").display(),
        );
        std::fs::write(&config, text).unwrap();
        let mut process = Process::new(config);
        process.start();
        wait_until("the node is up", || members_up(&address) == 1);
        let acknowledged: Vec<u32> = block_on(async {
            let client = Client::connect(&address).await.unwrap();
            let mut acknowledged = Vec::new();
            for i in 0..200u32 {
                if client
                    .put("d", &i.to_be_bytes(), format!("value-{i}").as_bytes(), &[])
                    .await
                    .is_ok()
                {
                    acknowledged.push(i);
                }
            }
            acknowledged
        });
        assert_eq!(acknowledged.len(), 200, "{engine}: every put is acknowledged");
        process.kill();
        process.start();
        wait_until("the node is back", || members_up(&address) == 1);
        block_on(async {
            let client = Client::connect(&address).await.unwrap();
            for i in acknowledged {
                let read = client.get("d", &i.to_be_bytes()).await.unwrap();
                let expected = Some(Value::Siblings(vec![format!("value-{i}").into_bytes()]));
                assert_eq!(read.value, expected, "{engine}: acknowledged put {i} lost");
            }
        });
    }
}
