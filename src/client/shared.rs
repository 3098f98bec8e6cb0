//! # SharedClient: the client for any runtime, `Send` and `Clone`
//!
//! capnp-rpc is single-threaded: its capabilities are `Rc`s and its connection is driven by
//! `spawn_local` tasks, so [`Client`] must live on one thread, inside a tokio `LocalSet`. The
//! node and the benchmark are built that way and use [`Client`] directly. An application is
//! usually not: it runs a multi-threaded runtime, moves handles between tasks and keeps one
//! in a struct shared behind an `Arc`.
//!
//! [`SharedClient`] is for them. [`SharedClient::connect`] starts a thread of its own with a
//! current-thread runtime and a `LocalSet`, and makes a [`Client`] there; the handle sends
//! each request to that thread over a channel and awaits the answer on a oneshot channel.
//! The handle holds only the sending half, so it is `Send`, `Sync` and `Clone` (a clone is
//! another handle to the same connection), and its futures are `Send`: they run on any
//! runtime, any executor. The last handle dropped closes the channel, and the thread ends.
//!
//! The choice: keep [`Client`] as the engine, unchanged, and put the thread around it, rather
//! than make [`Client`] itself `Send`. The node forwards a write to another member through a
//! [`Client`] made from a capability of its own connection ([`Client::from_capability`]),
//! which cannot leave the node's thread; and a request through [`Client`] costs no thread
//! hop, which the benchmark measures. The price of [`SharedClient`] is two channel hand-offs
//! per request (microseconds; a loopback round trip is tens of them) and one thread per
//! connection.
//!
//! ## Limits
//! - At most [`REQUESTS_QUEUED_MAX`] requests wait in the channel; past it a request's
//!   future waits for room (back-pressure, nothing is refused).
//! - At most [`REQUESTS_IN_FLIGHT_MAX`] requests are on the wire at once, the node's default
//!   `limits.inflight_per_connection_max`, so a busy application waits here rather than get
//!   `overloaded` from the node. A node configured below it answers `overloaded` past its
//!   own limit (retryable).
//!
//! ## A lost connection
//! Requests in flight when the connection fails end with [`Error::Transport`] (a write's
//! outcome is unknown, as with [`Client`]). The next request connects again, with the same
//! address and credentials; while the node cannot be reached, requests fail with
//! [`Error::Connect`], at most one attempt per [`RECONNECT_INTERVAL_MS`]. Both errors are
//! retryable ([`Error::is_retryable`]).
//!
//! Left out: routing over the ring (that is [`super::router::ClusterClient`], a local-only
//! type for now) and the token administration calls (use [`Client`] or the CLI).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::{Client, Credentials, NodeStatus, ReadOptions, RingInfo, WriteOptions};
use crate::error::Error;
use cartwheel_resolvers::{Op, Read};

/// Requests that wait in a [`SharedClient`]'s channel for its connection thread; past it,
/// sending waits for room.
pub const REQUESTS_QUEUED_MAX: usize = 1024;

/// Requests a [`SharedClient`]'s connection has on the wire at once: the node's default
/// `limits.inflight_per_connection_max`. Further requests wait in the channel.
pub const REQUESTS_IN_FLIGHT_MAX: usize = 256;

/// After a failed attempt to connect again, requests within this many milliseconds fail with
/// that attempt's error instead of trying again.
pub const RECONNECT_INTERVAL_MS: u64 = 250;

/// A request as the connection thread runs it: given the connection (or why there is none),
/// it answers its caller and returns whether the connection failed under it.
type Job = Box<dyn FnOnce(Result<Rc<Client>, Error>) -> LocalFuture<bool> + Send>;

type LocalFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// A connection to one node that any task on any thread can use; see the module doc.
///
/// ```
/// fn shareable<T: Send + Sync + Clone + 'static>() {}
/// shareable::<cartwheel::SharedClient>();
/// ```
#[derive(Clone)]
pub struct SharedClient {
    jobs: mpsc::Sender<Job>,
    address: Arc<str>,
    value_bytes_max: usize,
}

impl std::fmt::Debug for SharedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedClient").field("address", &self.address).finish_non_exhaustive()
    }
}

impl SharedClient {
    /// Connect to the node at `address` (`host:port`) with `credentials` (TLS and a login,
    /// as [`Client::connect_with`]; `Credentials::default()` for a node in insecure mode), on
    /// a new thread of its own. Returns once the login succeeded: a refused login is
    /// [`Error::Unauthorized`], an unreachable node [`Error::Connect`].
    pub async fn connect(address: &str, credentials: &Credentials) -> Result<Self, Error> {
        let (jobs, receiver) = mpsc::channel(REQUESTS_QUEUED_MAX);
        let (ready, connected) = oneshot::channel();
        let target = Target { address: address.to_string(), credentials: credentials.clone() };
        let failed = |reason: String| Error::Connect { address: address.to_string(), reason };
        std::thread::Builder::new()
            .name("cartwheel-client".into())
            .spawn(move || connection_thread(target, receiver, ready))
            .map_err(|e| failed(format!("no thread for the connection: {e}")))?;
        connected.await.map_err(|_| failed("the connection thread ended".into()))??;
        Ok(Self {
            jobs,
            address: address.into(),
            value_bytes_max: crate::client::VALUE_BYTES_MAX_DEFAULT,
        })
    }

    /// The address this client connects to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Set the value size this handle refuses locally with `ValueTooLarge` (match the node's
    /// `limits.value_bytes_max`; 1 MiB by default). Clones made afterwards inherit it.
    pub fn set_value_bytes_max(&mut self, bytes: usize) {
        self.value_bytes_max = bytes;
    }

    /// Read a key with the bucket's default options. `value` is `None` when not found.
    pub async fn get(&self, bucket: &str, key: &[u8]) -> Result<Read, Error> {
        self.get_with(bucket, key, &ReadOptions::default()).await
    }

    /// Read a key with per-request options.
    pub async fn get_with(
        &self,
        bucket: &str,
        key: &[u8],
        options: &ReadOptions,
    ) -> Result<Read, Error> {
        let (bucket, key, options) = (bucket.to_string(), key.to_vec(), *options);
        self.call(move |c| async move { c.get_with(&bucket, &key, &options).await }).await
    }

    /// Write a value, with the context of an earlier read (empty for a blind write). The
    /// answer's context is the one to send with the next write.
    pub async fn put(
        &self,
        bucket: &str,
        key: &[u8],
        value: &[u8],
        context: &[u8],
    ) -> Result<Read, Error> {
        self.put_with(bucket, key, value, context, &WriteOptions::default()).await
    }

    /// Write a value with per-request options (`return_body` to get the value(s) back).
    pub async fn put_with(
        &self,
        bucket: &str,
        key: &[u8],
        value: &[u8],
        context: &[u8],
        options: &WriteOptions,
    ) -> Result<Read, Error> {
        super::check_value_size(value, self.value_bytes_max)?;
        let (bucket, key, value, context, options) =
            (bucket.to_string(), key.to_vec(), value.to_vec(), context.to_vec(), *options);
        self.call(
            move |c| async move { c.put_with(&bucket, &key, &value, &context, &options).await },
        )
        .await
    }

    /// Delete what the context observed (everything, with an empty context).
    pub async fn delete(&self, bucket: &str, key: &[u8], context: &[u8]) -> Result<Read, Error> {
        self.delete_with(bucket, key, context, &WriteOptions::default()).await
    }

    /// Delete with per-request options.
    pub async fn delete_with(
        &self,
        bucket: &str,
        key: &[u8],
        context: &[u8],
        options: &WriteOptions,
    ) -> Result<Read, Error> {
        let (bucket, key, context, options) =
            (bucket.to_string(), key.to_vec(), context.to_vec(), *options);
        self.call(move |c| async move { c.delete_with(&bucket, &key, &context, &options).await })
            .await
    }

    /// Apply CRDT operations (`ops`) as one write, with the bucket's default options, and
    /// return the value after it: the coordinator's merged state, with its context. (This
    /// sets `return_body`; use [`Self::update_with`] to choose.)
    pub async fn update(
        &self,
        bucket: &str,
        key: &[u8],
        ops: &[Op],
        context: &[u8],
    ) -> Result<Read, Error> {
        let options = WriteOptions { return_body: true, ..WriteOptions::default() };
        self.update_with(bucket, key, ops, context, &options).await
    }

    /// Apply CRDT operations with per-request options; the answer holds a value only with
    /// `options.return_body`.
    pub async fn update_with(
        &self,
        bucket: &str,
        key: &[u8],
        ops: &[Op],
        context: &[u8],
        options: &WriteOptions,
    ) -> Result<Read, Error> {
        let (bucket, key, ops, context, options) =
            (bucket.to_string(), key.to_vec(), ops.to_vec(), context.to_vec(), *options);
        self.call(move |c| async move { c.update(&bucket, &key, &ops, &context, &options).await })
            .await
    }

    /// The node's status (needs the admin grant).
    pub async fn status(&self) -> Result<NodeStatus, Error> {
        self.call(|c| async move { c.status().await }).await
    }

    /// The node's view of the ring (needs the admin grant).
    pub async fn ring(&self) -> Result<RingInfo, Error> {
        self.call(|c| async move { c.ring().await }).await
    }

    /// Run `request` with the connection thread's [`Client`] and bring its answer back.
    async fn call<T, F, Fut>(&self, request: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: FnOnce(Rc<Client>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Error>> + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let job: Job = Box::new(move |connection| {
            Box::pin(async move {
                let result = match connection {
                    Ok(client) => request(client).await,
                    Err(e) => Err(e),
                };
                let failed = matches!(result, Err(Error::Transport(_)));
                // The caller may have stopped waiting (its future dropped): nothing to do.
                let _ = answer.send(result);
                failed
            })
        });
        let gone =
            || Error::Transport(format!("the connection thread for {} has ended", self.address));
        self.jobs.send(job).await.map_err(|_| gone())?;
        answered.await.map_err(|_| gone())?
    }
}

/// Where the connection thread connects, first and again.
struct Target {
    address: String,
    credentials: Credentials,
}

impl Target {
    async fn connect(&self) -> Result<Client, Error> {
        let mut client = Client::connect_with(&self.address, &self.credentials).await?;
        // The handle checks values against its own limit before they reach this thread.
        client.set_value_bytes_max(usize::MAX);
        Ok(client)
    }
}

/// The connection as the thread holds it between requests.
enum Link {
    /// Connected; `generation` counts connections made, so a failure reported by a request
    /// of an earlier connection does not drop a newer one.
    Up { client: Rc<Client>, generation: u64 },
    /// Lost (or never made again); the last attempt failed at `at` with `error`.
    Down { at: Option<Instant>, error: Option<Error>, generation: u64 },
}

/// The connection thread: connect, answer `ready`, then run requests until every handle is
/// dropped.
fn connection_thread(
    target: Target,
    mut jobs: mpsc::Receiver<Job>,
    ready: oneshot::Sender<Result<(), Error>>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            let reason = format!("no runtime for the connection: {e}");
            let _ = ready.send(Err(Error::Connect { address: target.address, reason }));
            return;
        }
    };
    tokio::task::LocalSet::new().block_on(&runtime, async move {
        let client = match target.connect().await {
            Ok(client) => Rc::new(client),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        if ready.send(Ok(())).is_err() {
            return; // `connect`'s caller gave up waiting.
        }
        let link = Rc::new(RefCell::new(Link::Up { client, generation: 0 }));
        let in_flight = Arc::new(Semaphore::new(REQUESTS_IN_FLIGHT_MAX));
        while let Some(job) = jobs.recv().await {
            let permit = Arc::clone(&in_flight)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            let (connection, generation) = current(&link, &target).await;
            let link = Rc::clone(&link);
            tokio::task::spawn_local(async move {
                let failed = job(connection).await;
                drop(permit);
                if failed {
                    lost(&link, generation);
                }
            });
        }
    });
}

/// The connection for the next request, connecting again when it was lost (at most once per
/// [`RECONNECT_INTERVAL_MS`]), with its generation.
async fn current(link: &RefCell<Link>, target: &Target) -> (Result<Rc<Client>, Error>, u64) {
    let generation = match &*link.borrow() {
        Link::Up { client, generation } => return (Ok(Rc::clone(client)), *generation),
        Link::Down { at: Some(at), error: Some(error), generation }
            if at.elapsed() < Duration::from_millis(RECONNECT_INTERVAL_MS) =>
        {
            return (Err(error.clone()), *generation);
        }
        Link::Down { generation, .. } => *generation,
    };
    match target.connect().await {
        Ok(client) => {
            let client = Rc::new(client);
            let generation = generation + 1;
            *link.borrow_mut() = Link::Up { client: Rc::clone(&client), generation };
            (Ok(client), generation)
        }
        Err(error) => {
            *link.borrow_mut() =
                Link::Down { at: Some(Instant::now()), error: Some(error.clone()), generation };
            (Err(error), generation)
        }
    }
}

/// A request of connection `generation` failed in transport: drop that connection, unless a
/// newer one replaced it already.
fn lost(link: &RefCell<Link>, generation: u64) {
    let mut link = link.borrow_mut();
    if matches!(&*link, Link::Up { generation: current, .. } if *current == generation) {
        *link = Link::Down { at: None, error: None, generation };
    }
}

#[cfg(all(test, feature = "server"))]
mod tests {
    use std::net::SocketAddr;
    use std::path::Path;

    use super::*;
    use crate::config::{Config, SecurityConfig};
    use crate::node::NodeHandle;
    use crate::security::ADMIN_CREDENTIALS_FILE;
    use cartwheel_resolvers::Value;

    /// A one-node cluster over TLS with its data and secret under `dir`.
    fn start(dir: &Path, listen: SocketAddr) -> NodeHandle {
        let mut config = Config::embedded();
        config.node.listen = listen;
        config.node.seeds = Vec::new();
        config.node.data_dir = dir.join("n1");
        config.security = SecurityConfig::development(dir);
        config.fit_buckets_to(1);
        NodeHandle::start(config).unwrap()
    }

    fn multi_threaded() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    }

    /// Clones of one client work from tasks of a multi-threaded runtime (`tokio::spawn` needs
    /// `Send` futures: that it compiles is half the test); put, get, update with and without
    /// the value back, a typed error and the local value limit come out as documented.
    #[test]
    fn clones_work_from_a_multi_threaded_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let node = start(dir.path(), "127.0.0.1:0".parse().unwrap());
        let credentials = Credentials::load(&dir.path().join(ADMIN_CREDENTIALS_FILE)).unwrap();
        let address = node.address().to_string();
        multi_threaded().block_on(async move {
            let client = SharedClient::connect(&address, &credentials).await.unwrap();
            let tasks: Vec<_> = (0..8u8)
                .map(|i| {
                    let client = client.clone();
                    tokio::spawn(async move {
                        let key = [b'k', i];
                        client.put("default", &key, &[i; 3], &[]).await.unwrap();
                        let read = client.get("default", &key).await.unwrap();
                        assert_eq!(read.value, Some(Value::Siblings(vec![vec![i; 3]])));
                        let add = Op::CartAdd { item: vec![i], quantity: 2 };
                        client.update("carts", b"shared", &[add], &[]).await.unwrap()
                    })
                })
                .collect();
            for task in tasks {
                let cart = task.await.unwrap();
                assert!(matches!(cart.value, Some(Value::Cart(_))), "update returns the value");
            }
            let read = client.get("carts", b"shared").await.unwrap();
            let items: Vec<_> = (0..8u8).map(|i| (vec![i], 2)).collect();
            assert_eq!(read.value, Some(Value::Cart(items)));

            let silent = client
                .update_with("counters", b"c", &[Op::CounterIncrement(1)], &[], &Default::default())
                .await
                .unwrap();
            assert_eq!(silent.value, None, "without return_body, no value");
            let counted = client.update("counters", b"c", &[Op::CounterIncrement(1)], &[]).await;
            assert_eq!(counted.unwrap().value, Some(Value::Counter(2)));

            let unknown = client.get("no-such-bucket", b"k").await;
            assert!(matches!(unknown, Err(Error::UnknownBucket(_))), "{unknown:?}");
            let mut small = client.clone();
            small.set_value_bytes_max(4);
            let big = small.put("default", b"big", b"12345", &[]).await;
            assert!(matches!(big, Err(Error::ValueTooLarge(_))), "{big:?}");
            client.put("default", b"big", b"12345", &[]).await.unwrap();
        });
        node.stop().unwrap();
    }

    /// A bad token is refused at `connect` with `Unauthorized`; nothing listening is `Connect`.
    #[test]
    fn connect_refusals_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let node = start(dir.path(), "127.0.0.1:0".parse().unwrap());
        let mut credentials = Credentials::load(&dir.path().join(ADMIN_CREDENTIALS_FILE)).unwrap();
        credentials.token = "cw1.00.00".into();
        let address = node.address().to_string();
        multi_threaded().block_on(async move {
            let refused = SharedClient::connect(&address, &credentials).await;
            assert!(matches!(refused, Err(Error::Unauthorized(_))), "{refused:?}");
        });
        node.stop().unwrap();
        let unreachable = crate::client::block_on(SharedClient::connect(
            &node_address_nobody_uses(),
            &Credentials::default(),
        ));
        assert!(matches!(unreachable, Err(Error::Connect { .. })), "{unreachable:?}");
    }

    /// An address nothing listens on: a port bound and released.
    fn node_address_nobody_uses() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().to_string()
    }

    /// A client outlives its node: with the node stopped, requests fail with retryable
    /// errors; once the node is back on the same address, the next request connects again
    /// and finds the data. The client moves between two runtimes on the way.
    #[test]
    fn a_lost_connection_is_made_again() {
        let dir = tempfile::tempdir().unwrap();
        let node = start(dir.path(), "127.0.0.1:0".parse().unwrap());
        let address = node.address();
        let credentials = Credentials::load(&dir.path().join(ADMIN_CREDENTIALS_FILE)).unwrap();
        let client = multi_threaded().block_on(async {
            let client = SharedClient::connect(&address.to_string(), &credentials).await.unwrap();
            client.put("default", b"kept", b"yes", &[]).await.unwrap();
            client
        });
        node.stop().unwrap();
        let down = crate::client::block_on(client.get("default", b"kept"));
        assert!(down.as_ref().is_err_and(Error::is_retryable), "{down:?}");
        let node = start(dir.path(), address);
        let read = multi_threaded().block_on(async {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match client.get("default", b"kept").await {
                    Ok(read) => break read,
                    Err(e) if e.is_retryable() && Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => panic!("no reconnection: {e}"),
                }
            }
        });
        assert_eq!(read.value, Some(Value::Siblings(vec![b"yes".to_vec()])));
        node.stop().unwrap();
    }
}
