//! # The node: one process's server, its transport and its wire glue
//!
//! - `api`: the gate, the client API and the peer API each connection is given.
//! - `connections`: which connections may be open, and which are closed to make room.
//! - [`server`]: the accept loop, per-connection limits, the client and peer APIs, and
//!   [`NodeHandle`] (a node on a thread of its own).
//! - [`transport`]: every Cap'n Proto connection, with its message deadline and coalescing
//!   writer.
//! - [`wire`]: conversions between Cap'n Proto messages and the node's types.
//!
//! What a request *does* lives in [`crate::cluster`] and [`crate::store`]; this folder only
//! carries it in and out.
//!
//! The client library uses `transport` and the client half of `wire` too, so those two are
//! built without the `server` feature; `server` and the node-to-node half of `wire` are not.

#[cfg(feature = "server")]
mod api;
#[cfg(feature = "server")]
mod connections;
#[cfg(feature = "server")]
pub mod server;
pub mod transport;
pub mod wire;

#[cfg(feature = "server")]
pub use server::{bind, serve, NodeHandle, ServeError};
