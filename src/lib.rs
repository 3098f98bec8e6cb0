//! # cartwheel: a Dynamo-style, always-writeable, replicated key-value store
//!
//! This crate is the node: it composes a storage engine (`cartwheel-engines`) and a conflict
//! resolver (`cartwheel-resolvers`) per bucket and serves them over Cap'n Proto RPC.
//!
//! ## The map
//! - [`config`]: the TOML node configuration, its defaults and its validation.
//! - [`actors`]: the node's actor ids and epochs, which make sure no dot is issued twice.
//! - [`ring`]: keys to partitions (MD5, Q partitions) and the partition-prefixed storage key.
//! - [`store`]: the local store; each bucket is an engine plus a resolver.
//! - [`membership`]: gossip, failure detection and the claimant (a pure state machine).
//! - [`quorum`]: when a request has met R, W and DW (pure state machines).
//! - [`cluster`]: the coordinator over RPC: preference lists, sloppy quorum, forwarding,
//!   read repair, gossip and hint delivery rounds.
//! - [`hints`]: the durable, bounded store of hinted writes.
//! - [`antientropy`]: hash-tree leaves per partition, compared between replicas.
//! - [`server`]: the node: accept loop, per-connection limits, the client and peer APIs.
//! - [`client`]: the Rust client library (one node).
//! - [`router`]: the zero-hop cluster client: routes each key to its preference list.
//! - [`wire`]: conversions between Cap'n Proto messages and the node's types.
//! - [`error`]: the typed errors a client can tell apart.
//! - [`cartwheel_capnp`]: code generated from `schema/cartwheel.capnp` (committed; see the
//!   README's "The wire schema").
//! - [`cli`]: the `cartwheel` command line.
//! - [`bench`](mod@bench): `cartwheel bench`, the open-loop latency benchmark.
//!
//! ## The path of a request
//! A client calls `put(bucket, key, value, context, options)` on a node's `Cartwheel`
//! capability. The node's RPC thread ([`server`]) admits it under the connection's in-flight
//! bound, checks key and value sizes ([`store::Store::check_key`]), finds the bucket, reads the
//! key's current state from the bucket's engine, lets the bucket's resolver apply the write
//! with this node's actor id and a hybrid-logical-clock reading, and stores the new state. When
//! the effective DW is at least one, a blocking-pool task syncs the engine before the answer;
//! the answer carries the new causal context (and the value, if asked). A `get` reads the state
//! and lets the resolver show it: siblings or a CRDT value, plus the context for the next write.

#[allow(missing_docs, clippy::all, clippy::pedantic, unused_qualifications, dead_code)]
#[rustfmt::skip]
#[path = "generated/cartwheel_capnp.rs"]
pub mod cartwheel_capnp;

pub mod actors;
pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod config;
pub mod error;
pub mod node;
pub mod ring;
pub mod sim;
pub mod store;

pub use client::Client;
pub use error::Error;
