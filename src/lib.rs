//! # cartwheel: a Dynamo-style, always-writeable, replicated key-value store
//!
//! This crate is the node: it composes a storage engine (`cartwheel-engines`) and a conflict
//! resolver (`cartwheel-resolvers`) per bucket and serves them over Cap'n Proto RPC. It is
//! also the Rust client library: [`SharedClient`] (start there), [`Client`], and every type
//! in their signatures at this root.
//!
//! ## Features
//! | feature | adds | rooms |
//! |---|---|---|
//! | (none: `default-features = false`) | the client library alone: capnp, tokio, rustls, the resolvers' types; no engines, no CLI | [`client`], [`error`], [`security`] (credentials, TLS client), [`node::transport`], [`node::wire`] (client half), [`ring`], [`cartwheel_capnp`] |
//! | `server` | the node and the simulation (engines, TOML, certificates) | [`config`], [`actors`], [`store`], [`cluster`], [`node::server`], [`metrics`], [`sim`], [`rng`] |
//! | `cli` (default) | `server`, the `cartwheel` binary, the benchmark and its plots, mimalloc | [`cli`], [`bench`](mod@bench), [`exit`] |
//!
//! ## The map
//! | room | what it owns |
//! |---|---|
//! | [`config`] | the TOML node configuration, its defaults and its validation |
//! | [`ring`] | keys to partitions (MD5, Q partitions), the ring and its rebalancing (pure) |
//! | [`actors`] | the node's actor ids and epochs: no dot is ever issued twice |
//! | [`store`] | the local half: buckets (engine + resolver), [`store::hints`], [`store::sync_group`] |
//! | [`cluster`] | everything between nodes, decisions pure, each in its room: [`cluster::coordinator`] (who coordinates, W/DW/R, quorum), [`cluster::replica`], [`cluster::peers`] (every call to another node), [`cluster::gossip`] and [`cluster::membership`], [`cluster::handoff`], [`cluster::anti_entropy`], [`cluster::quorum`], [`cluster::membership_file`] |
//! | [`node`] | one process: [`node::server`] (accept loop, limits, client and peer APIs, [`node::NodeHandle`]), [`node::transport`], [`node::wire`] |
//! | [`client`] | the Rust client library (one node): [`SharedClient`] for any runtime, [`Client`] inside a `LocalSet`, and [`client::router`] (zero-hop routing over the ring) |
//! | [`metrics`] | what a node counts, its registry, and the `GET /metrics` endpoint on `node.metrics_listen` |
//! | [`sim`] | the seeded cluster simulation: many nodes, simulated network, disks and time |
//! | [`rng`] | the seeded random source of the workload, the simulation and actor epochs |
//! | [`error`] | the typed errors a client can tell apart |
//! | [`exit`] | the binary's exit codes |
//! | [`cli`] | the `cartwheel` command line |
//! | [`bench`](mod@bench) | `cartwheel bench`, the open-loop latency benchmark |
//! | [`cartwheel_capnp`] | code generated from `schema/cartwheel.capnp` (committed; see the README's "The wire schema") |
//!
//! Imports go down this table's layers: `node` and `sim` use `cluster`, which uses `store`,
//! `actors` and `ring`; `client` uses only `node`'s transport and wire glue, `security`'s
//! credentials and `ring`'s key hash (so it builds without `server`); only `cli` imports
//! `bench`, and nothing imports `cli`.
//!
//! ## The path of a request
//! A client calls `put(bucket, key, value, context, options)` on a node's `Cartwheel`
//! capability. The node's RPC thread ([`node::server`]) admits it under the connection's
//! in-flight bound, decodes it and hands it to [`cluster::Cluster::write`]. The coordinator
//! room plans it: a node that is not one of the key's primaries forwards it to one
//! ([`cluster::plan_write`]); a primary checks key and value sizes, reads the key's state from
//! the bucket's engine, lets the bucket's resolver apply the write with this node's replica
//! actor ([`actors`]) and a hybrid-logical-clock reading, stores the new state, and sends it
//! to the other replicas through [`cluster::peers`]; it answers once W stored it (and DW
//! synced it, answered by the engine's flusher). A `get` asks the replicas, merges R answers, lets the
//! resolver show the result (siblings or a CRDT value, plus the context for the next write),
//! and repairs stale replicas afterwards.

#[allow(missing_docs, clippy::all, clippy::pedantic, unused_qualifications, dead_code)]
#[rustfmt::skip]
#[path = "generated/cartwheel_capnp.rs"]
pub mod cartwheel_capnp;

#[cfg(feature = "server")]
pub mod actors;
#[cfg(feature = "cli")]
pub mod bench;
#[cfg(feature = "cli")]
pub mod cli;
pub mod client;
#[cfg(feature = "server")]
pub mod cluster;
#[cfg(feature = "server")]
pub mod config;
pub mod error;
#[cfg(feature = "cli")]
pub mod exit;
#[cfg(feature = "server")]
pub mod metrics;
pub mod node;
pub mod ring;
#[cfg(feature = "server")]
pub mod rng;
pub mod security;
#[cfg(feature = "server")]
pub mod sim;
#[cfg(feature = "server")]
pub mod store;

pub use cartwheel_resolvers::{Op, Read, Value};
pub use client::{
    BucketStatus, Client, MemberStatus, NodeStatus, ReadOptions, RingInfo, SharedClient,
    WriteOptions,
};
pub use error::Error;
pub use security::Credentials;
