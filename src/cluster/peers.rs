//! # Peers: the one place that talks to other nodes
//!
//! One Cap'n Proto connection per peer address, opened on first use and dropped on the first
//! transport failure or missed deadline (the next call reconnects). Every outgoing
//! node-to-node call goes through one function (`Cluster::call`), so each has the same shape:
//! - a **deadline** (the request timeout, or the gossip interval for gossip): a peer that
//!   accepts TCP and never answers costs one deadline, not a stuck round;
//! - an **in-flight bound** per connection (`limits.inflight_per_peer_connection_max`, what
//!   the peer itself admits on a member's connection): a call over it fails at once with
//!   `overloaded` and sends nothing;
//! - **typed errors** ([`Error`]), and each outcome feeds the failure detector: a call that
//!   failed in transport or missed its deadline marks the peer, one the peer answered (even
//!   with an error) counts as a sign of life.
//!
//! The calls: `replicate`, `fetch`, `gossip`, `treeLeaves`, `segmentEntries` on the peer
//! API, and a forwarded client write on the client API. No other room opens a connection.
//!
//! A state sent with `replicate`, and a forwarded write, hold their bytes against the node's
//! budget ([`super::budget`]) until the peer answered or the deadline passed: charged here
//! before anything is sent (a refusal sends nothing, and says nothing about the peer), or
//! handed in already charged by the coordinator (`replicate_charged`).
//!
//! ## Batches
//! `replicate` and `fetch` calls to one peer do not each travel as a call of their own: a call
//! is queued on the connection, and the first one queued spawns a task that yields once (so
//! that every task ready in this scheduler turn queues its calls too), then sends the queue
//! as one `Peer.batch` (a single call as its single form). The peer admits, does and answers
//! each call as it would a single one; each caller gets its own answer, under its own
//! deadline and in-flight slot. Calls that wait for a sync are batched apart from the rest,
//! so that a sync never holds back an answer that needs none. At low rates a batch is one
//! call; as the rate rises, more calls share a message, its framing, its TLS record and the
//! peer's per-call work. `CARTWHEEL_PEER_BATCHES=off` in a node's environment sends every
//! call on its own (to measure what batches save).
//!
//! ## Other networks
//! A node reaches its peers over [`Network::Tcp`] (Cap'n Proto), or over a [`Transport`] of
//! another kind: the seeded simulation ([`crate::sim`]) carries each call as a
//! [`PeerRequest`] value to the other node's [`Cluster::serve_peer`], with simulated delays,
//! losses and partitions, so the simulation runs this code, the coordinator and every round
//! unchanged. Deadlines and the failure detector work the same on both; the in-flight bound
//! is the TCP connection's.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use capnp_rpc::{rpc_twoparty_capnp, RpcSystem};
use cartwheel_resolvers::{Read, Write};
use prometheus_client::metrics::counter::Counter;
use tokio::net::TcpStream;

use super::anti_entropy::Leaves;
use super::budget::Charge;
use super::coordinator::{write_bytes, Target};
use super::membership::View;
use super::Cluster;
use crate::cartwheel_capnp::{cartwheel, fetch_result, gate, peer, peer_answer, replica_result};
use crate::error::Error;
use crate::node::wire::{self, WriteOptions};
use crate::store::Entry;

/// How long a peer connection attempt may take.
pub const PEER_CONNECT_TIMEOUT_MS: u64 = 1_000;

/// A connection to one peer: its client API (for forwarding), its peer API, and the calls
/// in flight on it.
#[derive(Clone)]
pub(super) struct PeerConnection {
    api: cartwheel::Client,
    peer: peer::Client,
    inflight: Rc<Cell<usize>>,
    /// When it was opened (the cluster's clock): a call that started before this did not
    /// use it, so its failure does not drop it.
    opened_ms: u64,
    /// The calls waiting for its next batch.
    batches: Rc<Batches>,
}

/// A call waiting for a batch, and where its answer goes.
type Queued = (PeerRequest, futures::channel::oneshot::Sender<Result<PeerReply, Error>>);

/// The calls waiting for a connection's next batches: those that wait for a sync apart from
/// the rest.
struct Batches {
    queues: [RefCell<Vec<Queued>>; 2],
    /// Messages sent with queued calls, and the calls they carried (the node's metrics).
    sent: (Counter, Counter),
}

impl PeerConnection {
    /// Queue a `replicate` or `fetch` for this connection's next batch and wait for its
    /// answer. The batch is sent once every task ready now has run; a batch whose peer does
    /// not answer within `deadline` ends its calls with `timeout`.
    async fn batched(&self, request: PeerRequest, deadline: Duration) -> Result<PeerReply, Error> {
        if !batches_on() {
            return send_one(&self.peer, &request).await;
        }
        let (answer, answered) = futures::channel::oneshot::channel();
        let index = usize::from(matches!(request, PeerRequest::Replicate { sync: true, .. }));
        let first = {
            let mut queue = self.batches.queues[index].borrow_mut();
            queue.push((request, answer));
            queue.len() == 1
        };
        if first {
            let (peer, batches) = (self.peer.clone(), Rc::clone(&self.batches));
            tokio::task::spawn_local(async move {
                tokio::task::yield_now().await;
                let calls = std::mem::take(&mut *batches.queues[index].borrow_mut());
                batches.sent.0.inc();
                batches.sent.1.inc_by(calls.len() as u64);
                // On the deadline the calls' answers are dropped: each caller's own deadline
                // (no later than this one) has ended it already.
                let _ = tokio::time::timeout(deadline, send_batch(&peer, calls)).await;
            });
        }
        answered
            .await
            .unwrap_or_else(|_| Err(Error::Timeout("the peer did not answer the batch".into())))
    }
}

/// Whether calls are batched: unless `CARTWHEEL_PEER_BATCHES=off`.
fn batches_on() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("CARTWHEEL_PEER_BATCHES").map_or(true, |v| v != "off"))
}

/// Send `calls` to a peer, one call in its single form, more as one `batch`, and give each
/// caller its answer.
async fn send_batch(peer: &peer::Client, calls: Vec<Queued>) {
    let (requests, senders): (Vec<_>, Vec<_>) = calls.into_iter().unzip();
    let answers = match requests.as_slice() {
        [one] => vec![send_one(peer, one).await],
        many => match send_many(peer, many).await {
            Ok(answers) => answers,
            Err(e) => vec![Err(e); many.len()],
        },
    };
    for (sender, answer) in senders.into_iter().zip(answers) {
        let _ = sender.send(answer);
    }
}

/// One `replicate` or `fetch` as its own call.
async fn send_one(peer: &peer::Client, request: &PeerRequest) -> Result<PeerReply, Error> {
    match request {
        PeerRequest::Replicate { bucket, key, state, sync, hint_for } => {
            let mut call = peer.replicate_request();
            {
                let mut p = call.get();
                p.set_bucket(bucket);
                p.set_key(key);
                p.set_state(state);
                p.set_sync(*sync);
                p.set_hint_for(hint_for);
            }
            let response = call.send().promise.await?;
            replica_reply(response.get()?.get_result()?)
        }
        PeerRequest::Fetch { bucket, key } => {
            let mut call = peer.fetch_request();
            call.get().set_bucket(bucket);
            call.get().set_key(key);
            let response = call.send().promise.await?;
            fetch_reply(response.get()?.get_result()?)
        }
        other => Err(Error::Internal(format!("not a batched call: {other:?}"))),
    }
}

/// Several `replicate` and `fetch` calls as one `batch`; one answer each, in order.
async fn send_many(
    peer: &peer::Client,
    requests: &[PeerRequest],
) -> Result<Vec<Result<PeerReply, Error>>, Error> {
    let mut call = peer.batch_request();
    let mut list = call.get().init_calls(requests.len() as u32);
    for (i, request) in requests.iter().enumerate() {
        let entry = list.reborrow().get(i as u32);
        match request {
            PeerRequest::Replicate { bucket, key, state, sync, hint_for } => {
                let mut p = entry.init_replicate();
                p.set_bucket(bucket);
                p.set_key(key);
                p.set_state(state);
                p.set_sync(*sync);
                p.set_hint_for(hint_for);
            }
            PeerRequest::Fetch { bucket, key } => {
                let mut p = entry.init_fetch();
                p.set_bucket(bucket);
                p.set_key(key);
            }
            other => return Err(Error::Internal(format!("not a batched call: {other:?}"))),
        }
    }
    let response = call.send().promise.await?;
    let response = response.get()?;
    if response.has_error() {
        return Err(wire::get_error(response.get_error()?));
    }
    let answers = response.get_answers()?;
    if answers.len() as usize != requests.len() {
        return Err(Error::Transport(format!(
            "a batch of {} calls got {} answers",
            requests.len(),
            answers.len()
        )));
    }
    Ok(answers
        .iter()
        .map(|answer| match answer.which().map_err(|e| Error::Transport(e.to_string()))? {
            peer_answer::Replicate(result) => replica_reply(result?),
            peer_answer::Fetch(result) => fetch_reply(result?),
        })
        .collect())
}

/// A `replicate` answer as a [`PeerReply`].
fn replica_reply(result: replica_result::Reader<'_>) -> Result<PeerReply, Error> {
    match result.which().map_err(|e| Error::Transport(e.to_string()))? {
        replica_result::Stored(stored) => Ok(PeerReply::Stored(stored)),
        replica_result::Error(e) => Err(wire::get_error(e?)),
    }
}

/// A `fetch` answer as a [`PeerReply`].
fn fetch_reply(result: fetch_result::Reader<'_>) -> Result<PeerReply, Error> {
    match result.which().map_err(|e| Error::Transport(e.to_string()))? {
        fetch_result::NotFound(()) => Ok(PeerReply::State(None)),
        fetch_result::State(state) => Ok(PeerReply::State(Some(state?.to_vec()))),
        fetch_result::Error(e) => Err(wire::get_error(e?)),
    }
}

/// How a node reaches its peers.
pub enum Network {
    /// Cap'n Proto over TCP: a real node. With a TLS connector (which presents the node's
    /// certificate), every connection is TLS 1.3; without one (insecure mode), plain TCP.
    Tcp(Option<tokio_rustls::TlsConnector>),
    /// Another transport: the seeded simulation's.
    Other(Rc<dyn Transport>),
}

/// A network that carries [`PeerRequest`]s as values (the seeded simulation).
pub trait Transport {
    /// Carry `request` from the node `from` (in its `incarnation`) to the node at `address`
    /// and bring back its answer. A future that never completes is a lost message: the
    /// caller's deadline ends it.
    fn send(
        self: Rc<Self>,
        from: &str,
        incarnation: u64,
        address: &str,
        request: PeerRequest,
    ) -> Pin<Box<dyn Future<Output = Result<PeerReply, Error>>>>;
}

/// One node-to-node call, as a value.
#[derive(Clone, Debug)]
pub enum PeerRequest {
    /// Store (merge) a state, as a replica or as a hint for `hint_for`.
    Replicate {
        /// The bucket.
        bucket: String,
        /// The key.
        key: Vec<u8>,
        /// The state.
        state: Vec<u8>,
        /// Whether to sync before answering.
        sync: bool,
        /// The owner the receiver stands in for, or empty.
        hint_for: String,
    },
    /// Read a state.
    Fetch {
        /// The bucket.
        bucket: String,
        /// The key.
        key: Vec<u8>,
    },
    /// Exchange views.
    Gossip(View),
    /// Anti-entropy leaves of a partition.
    TreeLeaves {
        /// The bucket.
        bucket: String,
        /// The partition.
        partition: u16,
    },
    /// Anti-entropy entries of some segments of a partition.
    SegmentEntries {
        /// The bucket.
        bucket: String,
        /// The partition.
        partition: u16,
        /// The segments.
        segments: Vec<u16>,
    },
    /// A client write forwarded to a primary.
    Forward {
        /// The bucket.
        bucket: String,
        /// The key.
        key: Vec<u8>,
        /// The write.
        write: Write,
        /// Its options (the receiver marks it forwarded).
        options: WriteOptions,
    },
}

/// The answer to a [`PeerRequest`].
#[derive(Clone, Debug)]
pub enum PeerReply {
    /// Replicate: whether it was stored.
    Stored(bool),
    /// Fetch: the state, if any.
    State(Option<Vec<u8>>),
    /// Gossip: the receiver's view.
    View(View),
    /// Tree leaves.
    Leaves(Leaves),
    /// Segment entries.
    Entries(Vec<Entry>),
    /// A forwarded write's outcome.
    Written(Read),
}

/// Turning a [`PeerReply`] into what a call returns.
trait FromReply: Sized {
    fn from_reply(reply: PeerReply) -> Result<Self, Error>;
}

fn unexpected(reply: &PeerReply) -> Error {
    Error::Internal(format!("a peer answered with an unexpected reply: {reply:?}"))
}

/// `impl FromReply for $type` taking the `PeerReply::$variant` payload as it is.
macro_rules! from_reply {
    ($($type:ty => $variant:ident),* $(,)?) => {$(
        impl FromReply for $type {
            fn from_reply(reply: PeerReply) -> Result<Self, Error> {
                match reply {
                    PeerReply::$variant(value) => Ok(value),
                    other => Err(unexpected(&other)),
                }
            }
        }
    )*};
}

from_reply! {
    bool => Stored,
    Option<Vec<u8>> => State,
    View => View,
    Leaves => Leaves,
    Read => Written,
}

impl FromReply for BTreeMap<Vec<u8>, Vec<u8>> {
    fn from_reply(reply: PeerReply) -> Result<Self, Error> {
        match reply {
            PeerReply::Entries(entries) => Ok(entries.into_iter().collect()),
            other => Err(unexpected(&other)),
        }
    }
}

/// A connection attempt in progress; when it ends (or is cancelled), the calls that waited
/// for it are woken.
struct Attempt<'a> {
    cluster: &'a Cluster,
    address: &'a str,
    done: Rc<tokio::sync::Notify>,
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        // A newer attempt may have taken this one's place (this one went stale): leave it.
        let mut connecting = self.cluster.connecting.borrow_mut();
        if connecting.get(self.address).is_some_and(|(a, _)| Rc::ptr_eq(a, &self.done)) {
            connecting.remove(self.address);
        }
        drop(connecting);
        self.done.notify_waiters();
    }
}

/// Holds one in-flight slot of a peer connection until dropped.
struct Slot(Rc<Cell<usize>>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl Cluster {
    /// Run one call to the member `id` at `address`: connect (or reuse the connection), take
    /// an in-flight slot, run `request` within `deadline`, and record the outcome.
    ///
    /// `request` makes the Cap'n Proto call on a TCP connection; `value` makes the same call
    /// as a [`PeerRequest`] for another [`Network`] (only one of them runs).
    async fn call<T, F, Fut>(
        &self,
        id: &str,
        address: &str,
        deadline: Duration,
        request: F,
        value: impl FnOnce() -> PeerRequest,
    ) -> Result<T, Error>
    where
        T: FromReply,
        F: FnOnce(PeerConnection) -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let started_ms = self.now_ms();
        let work = async {
            let transport = match &self.network {
                Network::Tcp(_) => None,
                Network::Other(transport) => Some(Rc::clone(transport)),
            };
            if let Some(transport) = transport {
                let (me, incarnation) = (self.me(), self.incarnation);
                let reply = transport.send(&me, incarnation, address, value()).await?;
                return T::from_reply(reply);
            }
            let connection = self.connect(address).await?;
            let max = self.store.limits().inflight_per_peer_connection_max;
            if connection.inflight.get() >= max {
                return Err(Error::Overloaded(format!("{max} calls in flight to {id}")));
            }
            connection.inflight.set(connection.inflight.get() + 1);
            let _slot = Slot(Rc::clone(&connection.inflight));
            request(connection).await
        };
        match tokio::time::timeout(deadline, work).await {
            Ok(outcome) => {
                self.record(id, address, started_ms, &outcome);
                outcome
            }
            Err(_) => {
                self.peer_failed(id, address, started_ms);
                Err(Error::Timeout(format!("{id} did not answer within {deadline:?}")))
            }
        }
    }

    /// The address of member `id`.
    fn address(&self, id: &str) -> Result<String, Error> {
        let address = self.membership.borrow().address_of(id).map(str::to_string);
        address.ok_or_else(|| Error::Internal(format!("no address for {id}")))
    }

    /// Send a state to one target; true once it stored it. Its bytes are charged to the
    /// node's budget while it is sent; over the budget it is not sent (false).
    pub(super) async fn replicate(
        &self,
        target: &Target,
        bucket: &str,
        key: &[u8],
        state: &[u8],
        sync: bool,
    ) -> bool {
        let Ok(charge) = self.budget().try_charge(key.len() + state.len(), "sending a state")
        else {
            tracing::debug!(replica = %target.id, "state not sent: over the in-flight budget");
            return false;
        };
        self.replicate_charged(target, bucket, key, state, sync, charge).await.is_ok()
    }

    /// [`Cluster::replicate`] with the bytes charged already; `charge` is held until the
    /// target answered or the deadline passed. Why the target did not store it, if not.
    pub(super) async fn replicate_charged(
        &self,
        target: &Target,
        bucket: &str,
        key: &[u8],
        state: &[u8],
        sync: bool,
        charge: Charge,
    ) -> Result<(), Error> {
        let _charge = charge;
        let address = self.address(&target.id)?;
        let value = || PeerRequest::Replicate {
            bucket: bucket.to_string(),
            key: key.to_vec(),
            state: state.to_vec(),
            sync,
            hint_for: target.hint_for.clone().unwrap_or_default(),
        };
        let deadline = self.timeout(0);
        let request = |connection: PeerConnection| async move {
            bool::from_reply(connection.batched(value(), deadline).await?)
        };
        match self.call(&target.id, &address, deadline, request, value).await? {
            true => Ok(()),
            false => Err(Error::Unavailable(format!("{} did not store it", target.id))),
        }
    }

    /// Forward a write to `primary`, marked so it is not forwarded again.
    pub(super) async fn forward(
        &self,
        primary: &str,
        bucket: &str,
        key: &[u8],
        write: &Write,
        options: WriteOptions,
    ) -> Result<Read, Error> {
        let address = self.address(primary)?;
        let _charge = self.budget().try_charge(write_bytes(key, write), "forwarding a write")?;
        let deadline = self.timeout(options.timeout_ms);
        let value = || PeerRequest::Forward {
            bucket: bucket.to_string(),
            key: key.to_vec(),
            write: write.clone(),
            options,
        };
        let request = |connection: PeerConnection| async {
            let client = crate::client::Client::from_capability(connection.api, address.clone());
            let options = WriteOptions { forwarded: true, ..options };
            match write {
                Write::Put { value, context } => {
                    client.put_with(bucket, key, value, context, &options).await
                }
                Write::Delete { context } => {
                    client.delete_with(bucket, key, context, &options).await
                }
                Write::Update { ops, context } => {
                    client.update(bucket, key, ops, context, &options).await
                }
            }
        };
        self.call(primary, &address, deadline, request, value).await
    }

    /// A target's state for a key (merged with the hints it holds for it).
    pub(super) async fn fetch_remote(
        &self,
        target: &Target,
        bucket: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        let address = self.address(&target.id)?;
        let value = || PeerRequest::Fetch { bucket: bucket.to_string(), key: key.to_vec() };
        let deadline = self.timeout(0);
        let request = |connection: PeerConnection| async move {
            Option::<Vec<u8>>::from_reply(connection.batched(value(), deadline).await?)
        };
        self.call(&target.id, &address, deadline, request, value).await
    }

    /// Exchange views with the node at `address` (a member `id`, or a seed not yet known by
    /// id); their view.
    pub(super) async fn gossip_with(
        &self,
        id: Option<&str>,
        address: &str,
        view: &View,
    ) -> Result<View, Error> {
        let exchange = |connection: PeerConnection| async move {
            let mut request = connection.peer.gossip_request();
            wire::set_view(request.get().init_view(), view);
            let response = request.send().promise.await?;
            let response = response.get()?;
            if response.has_error() {
                return Err(wire::get_error(response.get_error()?));
            }
            wire::get_view(response.get_view()?)
        };
        // A seed not known by id yet still gets a deadline; only members feed the detector.
        let id = id.map_or_else(|| address.to_string(), str::to_string);
        let value = || PeerRequest::Gossip(view.clone());
        self.call(&id, address, self.gossip_interval, exchange, value).await
    }

    /// A peer's anti-entropy leaves for one partition of a bucket.
    pub(super) async fn tree_leaves_of(
        &self,
        id: &str,
        bucket: &str,
        partition: u16,
    ) -> Result<Leaves, Error> {
        let address = self.address(id)?;
        let value = || PeerRequest::TreeLeaves { bucket: bucket.to_string(), partition };
        let request = |connection: PeerConnection| async move {
            let mut request = connection.peer.tree_leaves_request();
            request.get().set_bucket(bucket);
            request.get().set_partition(partition);
            let response = request.send().promise.await?;
            let response = response.get()?;
            if response.has_error() {
                return Err(wire::get_error(response.get_error()?));
            }
            Ok(response.get_leaves()?.iter().collect())
        };
        self.call(id, &address, self.timeout(0), request, value).await
    }

    /// A peer's (key, state) pairs in some segments of a partition.
    pub(super) async fn segment_entries_of(
        &self,
        id: &str,
        bucket: &str,
        partition: u16,
        segments: &[u16],
    ) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, Error> {
        let address = self.address(id)?;
        let value = || PeerRequest::SegmentEntries {
            bucket: bucket.to_string(),
            partition,
            segments: segments.to_vec(),
        };
        let request = |connection: PeerConnection| async move {
            let mut request = connection.peer.segment_entries_request();
            request.get().set_bucket(bucket);
            request.get().set_partition(partition);
            let mut list = request.get().init_segments(segments.len() as u32);
            for (i, segment) in segments.iter().enumerate() {
                list.set(i as u32, *segment);
            }
            let response = request.send().promise.await?;
            let response = response.get()?;
            if response.has_error() {
                return Err(wire::get_error(response.get_error()?));
            }
            let mut entries = BTreeMap::new();
            for entry in response.get_entries()?.iter() {
                entries.insert(entry.get_key()?.to_vec(), entry.get_state()?.to_vec());
            }
            Ok(entries)
        };
        self.call(id, &address, self.timeout(0), request, value).await
    }

    async fn connect(&self, address: &str) -> Result<PeerConnection, Error> {
        if let Some(connection) = self.connections.borrow().get(address) {
            return Ok(connection.clone());
        }
        // One attempt per address at a time: the others wait for it. A peer that is down then
        // costs one failed attempt per connect timeout, not one per call (a burst of calls to
        // an unreachable peer would otherwise open hundreds of connections, and the ones
        // started just before a heal would time out after it and mark the healed peer). An
        // attempt pending for longer than half a gossip interval is not waited for: a new one
        // starts (a connect sent into a partition waits for a SYN retransmit long after the
        // heal, and the healed peer would stay unreachable from here until it gave up).
        let stale = (self.gossip_interval / 2).max(Duration::from_millis(50));
        let pending = self
            .connecting
            .borrow()
            .get(address)
            .filter(|(_, started)| started.elapsed() < stale)
            .map(|(attempt, _)| Rc::clone(attempt));
        if let Some(attempt) = pending {
            let done = attempt.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            let still_pending = self
                .connecting
                .borrow()
                .get(address)
                .is_some_and(|(pending, _)| Rc::ptr_eq(pending, &attempt));
            if still_pending {
                done.await;
            }
            return match self.connections.borrow().get(address) {
                Some(connection) => Ok(connection.clone()),
                // The attempt's own failure is what tells the failure detector; this call
                // says nothing more about the peer.
                None => {
                    Err(Error::Overloaded(format!("no connection to {address} could be opened")))
                }
            };
        }
        let attempt = Rc::new(tokio::sync::Notify::new());
        let started = tokio::time::Instant::now();
        self.connecting.borrow_mut().insert(address.to_string(), (Rc::clone(&attempt), started));
        let _attempt = Attempt { cluster: self, address, done: attempt };
        let failed = |reason: String| Error::Connect { address: address.to_string(), reason };
        let connecting = async {
            let stream = TcpStream::connect(address).await.map_err(|e| failed(e.to_string()))?;
            crate::node::transport::tune(&stream).map_err(|e| failed(e.to_string()))?;
            let limits = self.store.limits();
            let mut options = capnp::message::ReaderOptions::new();
            options.traversal_limit_in_words(Some(limits.message_bytes_max() / 8));
            let timeout = Duration::from_millis(limits.message_read_timeout_ms);
            let side = rpc_twoparty_capnp::Side::Client;
            Ok::<_, Error>(match &self.network {
                Network::Tcp(Some(tls)) => {
                    let session = tls
                        .connect(crate::security::server_name(), stream)
                        .await
                        .map_err(|e| failed(format!("TLS: {e}")))?;
                    crate::node::transport::network_over(session, side, options, timeout)
                }
                _ => crate::node::transport::network(stream, side, options, timeout)
                    .map_err(|e| failed(e.to_string()))?,
            })
        };
        let network =
            tokio::time::timeout(Duration::from_millis(PEER_CONNECT_TIMEOUT_MS), connecting)
                .await
                .map_err(|_| failed("timed out".into()))??;
        let mut rpc = RpcSystem::new(Box::new(network), None);
        let gate: gate::Client = rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
        tokio::task::spawn_local(async move {
            let _ = rpc.await;
        });
        // Pipelined: the peer API and, through it, the client API (for forwarding) are asked
        // for before the gate answered. A gate that refuses (this node is not a member there)
        // makes every call on them fail.
        let mut request = gate.peer_request();
        request.get().set_from(self.me());
        let peer = request.send().pipeline.get_peer();
        let api = peer.node_request().send().pipeline.get_node();
        let inflight = Rc::new(Cell::new(0));
        let queues = Default::default();
        let batches = Rc::new(Batches { queues, sent: self.metrics().peer_batch_counters() });
        let connection = PeerConnection { api, peer, inflight, opened_ms: self.now_ms(), batches };
        self.connections.borrow_mut().insert(address.to_string(), connection.clone());
        Ok(connection)
    }

    /// Feed the outcome of a call that started at `started_ms` to the failure detector.
    fn record<T>(&self, id: &str, address: &str, started_ms: u64, outcome: &Result<T, Error>) {
        match outcome {
            Ok(_) => self.membership.borrow_mut().rpc_succeeded(id, self.now_ms()),
            Err(Error::Connect { .. } | Error::Transport(_)) => {
                self.peer_failed(id, address, started_ms)
            }
            // Refused before sending: says nothing about the peer.
            Err(Error::Overloaded(_)) => {}
            // The peer answered: it is up, whatever it said.
            Err(_) => self.membership.borrow_mut().rpc_succeeded(id, self.now_ms()),
        }
    }

    /// A call to `id` that started at `started_ms` failed in transport or missed its
    /// deadline: drop the connection it used (the next call reconnects; one opened since, after
    /// a heal, stays) and tell the failure detector, which ignores the failure if `id` has
    /// answered since the call started (calls sent into a partition time out after it healed).
    fn peer_failed(&self, id: &str, address: &str, started_ms: u64) {
        let mut connections = self.connections.borrow_mut();
        if connections.get(address).is_some_and(|c| c.opened_ms <= started_ms) {
            connections.remove(address);
        }
        drop(connections);
        self.membership.borrow_mut().rpc_failed(id, started_ms);
    }
}
