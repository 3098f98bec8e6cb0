//! # Zero-hop routing: the client picks the coordinator
//!
//! [`ClusterClient`] fetches the ring from a node (`ring()`), computes each key's preference
//! list itself, and sends the request straight to the first node of that list it can reach
//! (Dynamo's client-driven coordination): no forwarding hop when the ring is current. A node
//! that cannot be reached (connection refused, connection lost) is skipped for the next one
//! in the list, and the ring is fetched again; the ring is also refreshed every
//! [`RING_REFRESH_MS`]. A node that answers with an error (say `unknownBucket`) is not
//! retried elsewhere: the answer stands.
//!
//! A write that failed with a lost connection may have been stored anyway (outcome unknown);
//! the retry on the next node is what a Dynamo client does, and is safe for puts that carry a
//! context and for CRDT updates that carry one.
//!
//! Like [`Client`], it must be used inside a tokio `LocalSet`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use cartwheel_resolvers::{Op, Read};

use crate::client::{Client, Credentials, ReadOptions, RingInfo, WriteOptions};
use crate::error::Error;

/// How often the ring is fetched again even without errors, in milliseconds.
pub const RING_REFRESH_MS: u64 = 5_000;

/// A client that routes each request to the key's preference list.
pub struct ClusterClient {
    seeds: Vec<String>,
    credentials: Credentials,
    ring: RefCell<Option<RingInfo>>,
    fetched_at: Cell<Option<Instant>>,
    clients: RefCell<HashMap<String, Rc<Client>>>,
}

impl ClusterClient {
    /// Connect through any of `seeds` (`host:port`) to nodes in insecure mode, fetching the
    /// ring.
    pub async fn connect(seeds: &[String]) -> Result<Self, Error> {
        Self::connect_with(seeds, &Credentials::default()).await
    }

    /// Connect through any of `seeds` (`host:port`) with `credentials`, fetching the ring
    /// (the token needs the admin grant for it, and the grants for the buckets it uses).
    pub async fn connect_with(seeds: &[String], credentials: &Credentials) -> Result<Self, Error> {
        let client = Self {
            seeds: seeds.to_vec(),
            credentials: credentials.clone(),
            ring: RefCell::new(None),
            fetched_at: Cell::new(None),
            clients: RefCell::new(HashMap::new()),
        };
        client.refresh_ring().await?;
        Ok(client)
    }

    /// The ring as last fetched.
    pub fn ring(&self) -> Option<RingInfo> {
        self.ring.borrow().clone()
    }

    /// Fetch the ring again from the first node that answers (known members, then seeds).
    pub async fn refresh_ring(&self) -> Result<(), Error> {
        let mut candidates: Vec<String> = self
            .ring
            .borrow()
            .as_ref()
            .map(|r| r.nodes.iter().map(|n| n.address.clone()).collect())
            .unwrap_or_default();
        candidates.extend(self.seeds.iter().cloned());
        let mut last_error =
            Error::Connect { address: self.seeds.join(","), reason: "no seeds".into() };
        for address in candidates {
            match self.client(&address).await {
                Ok(client) => match client.ring().await {
                    Ok(ring) => {
                        *self.ring.borrow_mut() = Some(ring);
                        self.fetched_at.set(Some(Instant::now()));
                        return Ok(());
                    }
                    Err(e) => {
                        self.clients.borrow_mut().remove(&address);
                        last_error = e;
                    }
                },
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }

    async fn client(&self, address: &str) -> Result<Rc<Client>, Error> {
        if let Some(client) = self.clients.borrow().get(address) {
            return Ok(Rc::clone(client));
        }
        let client = Rc::new(Client::connect_with(address, &self.credentials).await?);
        self.clients.borrow_mut().insert(address.to_string(), Rc::clone(&client));
        Ok(client)
    }

    /// Nodes to try for a key, in order: its preference list, then the seeds.
    fn candidates(&self, bucket: &str, key: &[u8]) -> Vec<String> {
        let mut list = self
            .ring
            .borrow()
            .as_ref()
            .map(|r| r.preference_addresses(bucket, key))
            .unwrap_or_default();
        for seed in &self.seeds {
            if !list.contains(seed) {
                list.push(seed.clone());
            }
        }
        list
    }

    /// Run `request` against the first reachable candidate for the key.
    async fn route<T, F, Fut>(&self, bucket: &str, key: &[u8], request: F) -> Result<T, Error>
    where
        F: Fn(Rc<Client>) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let stale = self
            .fetched_at
            .get()
            .is_none_or(|at| at.elapsed() > Duration::from_millis(RING_REFRESH_MS));
        if stale {
            let _ = self.refresh_ring().await;
        }
        let mut last_error = None;
        for address in self.candidates(bucket, key) {
            let client = match self.client(&address).await {
                Ok(client) => client,
                Err(e) => {
                    last_error = Some(e);
                    continue;
                }
            };
            match request(client).await {
                Err(e @ (Error::Connect { .. } | Error::Transport(_))) => {
                    self.clients.borrow_mut().remove(&address);
                    self.fetched_at.set(None);
                    last_error = Some(e);
                }
                answered => return answered,
            }
        }
        Err(last_error.unwrap_or_else(|| Error::Connect {
            address: "(no nodes)".into(),
            reason: "empty ring".into(),
        }))
    }

    /// Read a key.
    pub async fn get_with(
        &self,
        bucket: &str,
        key: &[u8],
        options: &ReadOptions,
    ) -> Result<Read, Error> {
        self.route(bucket, key, |c| async move { c.get_with(bucket, key, options).await }).await
    }

    /// Write a value with the context of an earlier read.
    pub async fn put_with(
        &self,
        bucket: &str,
        key: &[u8],
        value: &[u8],
        context: &[u8],
        options: &WriteOptions,
    ) -> Result<Read, Error> {
        self.route(bucket, key, |c| async move {
            c.put_with(bucket, key, value, context, options).await
        })
        .await
    }

    /// Delete what the context observed.
    pub async fn delete_with(
        &self,
        bucket: &str,
        key: &[u8],
        context: &[u8],
        options: &WriteOptions,
    ) -> Result<Read, Error> {
        self.route(
            bucket,
            key,
            |c| async move { c.delete_with(bucket, key, context, options).await },
        )
        .await
    }

    /// Apply CRDT operations.
    pub async fn update(
        &self,
        bucket: &str,
        key: &[u8],
        ops: &[Op],
        context: &[u8],
        options: &WriteOptions,
    ) -> Result<Read, Error> {
        self.route(
            bucket,
            key,
            |c| async move { c.update(bucket, key, ops, context, options).await },
        )
        .await
    }
}
