//! A node on a small disk (a tmpfs this test mounts; root needed, as for
//! engines/tests/full_disk.rs): it starts with little space, and when the disk fills, no
//! write it acknowledged durable (dw = 1) is lost — not those before the first refusal, and
//! not any it still acknowledged after it.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use common::tmpfs::Tmpfs;

use cartwheel::client::{block_on, Client, WriteOptions};
use cartwheel::config::{BucketConfig, Config};
use cartwheel::node::NodeHandle;
use cartwheel_engines::EngineKind;
use cartwheel_resolvers::{ResolverKind, Value};

/// Size of the tmpfs: less than one default segment (64 MiB).
const FS_BYTES: u64 = 24 << 20;

fn config(data_dir: PathBuf) -> Config {
    let mut config = Config::embedded();
    config.security = cartwheel::config::SecurityConfig::insecure();
    config.node.listen = "127.0.0.1:0".parse().unwrap();
    config.node.seeds = Vec::new();
    config.node.data_dir = data_dir;
    config.buckets.clear();
    let mut bucket = BucketConfig::new(EngineKind::Log, ResolverKind::Lww);
    bucket.dw = 1;
    config.buckets.insert("durable".into(), bucket);
    // One node holds one copy: W copies need W nodes.
    config.fit_buckets_to(1);
    config
}

/// Fill the disk with 256 KiB dw = 1 puts until refused, then try small ones; after a stop
/// and a restart, every acknowledged put reads back.
#[test]
fn no_durable_write_is_lost_when_the_disk_fills() {
    let Some(fs) = Tmpfs::mount(FS_BYTES) else { return };
    let data_dir = fs.path.join("node");
    let node =
        NodeHandle::start(config(data_dir.clone())).expect("the node starts on a small disk");
    let address = node.address().to_string();
    let mut acknowledged: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let refused = block_on(async {
        let client = Client::connect(&address).await.unwrap();
        let options = WriteOptions::default();
        let mut refused = 0;
        for i in 0..400u32 {
            let (key, value) = if refused == 0 {
                (format!("big-{i:04}"), vec![i as u8; 256 << 10])
            } else {
                (format!("small-{i:04}"), vec![i as u8; 64])
            };
            match client.put_with("durable", key.as_bytes(), &value, &[], &options).await {
                Ok(_) => {
                    acknowledged.insert(key, value);
                }
                Err(_) => {
                    refused += 1;
                    if refused > 5 {
                        break;
                    }
                }
            }
        }
        refused
    });
    let small = acknowledged.keys().filter(|k| k.starts_with("small")).count();
    eprintln!(
        "{} puts acknowledged ({small} after the first refusal), {refused} refused",
        acknowledged.len()
    );
    assert!(refused > 0, "a {FS_BYTES}-byte disk never filled");
    assert!(acknowledged.len() >= 10, "only {} puts before the disk filled", acknowledged.len());
    node.stop().expect("a clean stop");
    let node = NodeHandle::start(config(data_dir)).expect("the node starts again");
    let address = node.address().to_string();
    block_on(async {
        let client = Client::connect(&address).await.unwrap();
        for (key, value) in &acknowledged {
            let read = client.get("durable", key.as_bytes()).await.unwrap();
            assert_eq!(read.value, Some(Value::Siblings(vec![value.clone()])), "{key} was lost");
        }
    });
    node.stop().unwrap();
}

/// When the disk fills, the bucket turns read-only (reads go on, writes are refused with a
/// typed error, or taken if its reopened engine has room for them), and once space is back it takes writes again by itself, without a restart
/// (its engine is reopened from its files): every acknowledged put reads back, then and after
/// a restart.
#[test]
fn a_full_bucket_takes_writes_again_once_space_is_back() {
    let Some(fs) = Tmpfs::mount(FS_BYTES) else { return };
    let data_dir = fs.path.join("node");
    let mut node_config = config(data_dir.clone());
    node_config.cluster.gossip_interval_ms = 100;
    let node = NodeHandle::start(node_config.clone()).expect("the node starts on a small disk");
    let address = node.address().to_string();
    let mut acknowledged: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    block_on(async {
        let client = Client::connect(&address).await.unwrap();
        let options = WriteOptions::default();
        let mut first_refusal = None;
        for i in 0..400u32 {
            let (key, value) = (format!("big-{i:04}"), vec![i as u8; 256 << 10]);
            match client.put_with("durable", key.as_bytes(), &value, &[], &options).await {
                Ok(_) => {
                    acknowledged.insert(key, value);
                }
                Err(e) => {
                    first_refusal = Some(e);
                    break;
                }
            }
        }
        let refusal = first_refusal.expect("the disk filled");
        eprintln!("{} puts acknowledged, then: {refusal}", acknowledged.len());
        // Reads go on. Small writes are refused as `unavailable` (nothing done) while the
        // engine is failed; the node's next round may already have reopened it, and a small
        // write that fits in its active segment is then taken, and must be kept like any
        // other acknowledged write.
        let (key, value) = acknowledged.iter().next().unwrap();
        let read = client.get("durable", key.as_bytes()).await.unwrap();
        assert_eq!(read.value, Some(Value::Siblings(vec![value.clone()])));
        for i in 0..3u8 {
            let key = format!("small-{i}");
            match client.put_with("durable", key.as_bytes(), &[i], &[], &options).await {
                Ok(_) => {
                    acknowledged.insert(key, vec![i]);
                }
                Err(cartwheel::Error::Unavailable(_)) => {}
                Err(e) => panic!("a write on a full disk failed with {e:?}, not `unavailable`"),
            }
        }

        // Space is back: writes resume within a few rounds, no restart.
        fs.resize(4 * FS_BYTES);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let put = client.put_with("durable", b"after", b"space", &[], &options).await;
            if put.is_ok() {
                acknowledged.insert("after".into(), b"space".to_vec());
                break;
            }
            assert!(std::time::Instant::now() < deadline, "writes did not resume: {put:?}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        for (key, value) in &acknowledged {
            let read = client.get("durable", key.as_bytes()).await.unwrap();
            assert_eq!(read.value, Some(Value::Siblings(vec![value.clone()])), "{key} was lost");
        }
    });
    node.stop().expect("a clean stop");
    let node = NodeHandle::start(node_config).expect("the node starts again");
    let address = node.address().to_string();
    block_on(async {
        let client = Client::connect(&address).await.unwrap();
        for (key, value) in &acknowledged {
            let read = client.get("durable", key.as_bytes()).await.unwrap();
            assert_eq!(read.value, Some(Value::Siblings(vec![value.clone()])), "{key} was lost");
        }
    });
    node.stop().unwrap();
}
