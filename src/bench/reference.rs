//! # The reference client: the yardstick the benchmark is checked against
//!
//! `cartwheel bench --reference` adds a run named `reference` after the store run: the same
//! schedule, the same workload (the same seeded sequence of reads and blind puts), the same
//! keys and the same zero-hop routing, sent by a client that is as bare as a capnp-rpc client
//! can be. Whatever the benchmark's own machinery costs at the tail (its pacer, its
//! recorder, its progress bar, its client library) shows as the gap between the `store` and
//! `reference` lines of one invocation; a benchmark that measures the store and not itself
//! has none worth speaking of (docs/BENCHMARKS.md, "The benchmark against a bare client").
//!
//! To be a yardstick it shares nothing with the benchmark's sending path:
//! - **Its own thread**, with its own current-thread runtime, on which nothing else runs: no
//!   progress output, no histogram, no other connection.
//! - **One connection per node**, built here: TCP with `TCP_NODELAY`, TLS when the
//!   credentials carry a CA, and capnp-rpc's two-party network over a plain buffered writer
//!   (not the node's coalescing writer, [`crate::node::transport`]).
//! - **Everything computed before the run**: every request's node, key and operation, and
//!   the value. The run itself only sleeps, builds a capnp request, sends it and notes three
//!   instants in a preallocated slot.
//! - **Its own clock and timer**: `CLOCK_MONOTONIC` read directly, and one `timerfd` armed
//!   at each request's absolute intended start (no early wake-up, no spinning).
//! - **No timer per request** and no in-flight bound: a request unanswered when the run's
//!   time is up counts as `unfinished`, as in the benchmark.
//!
//! Percentiles are computed only after the run, from the slots, into the same
//! [`RunResult`] the benchmark reports, so both lines read the same way.
//!
//! Left out on purpose: cart workloads and `siblings` buckets (their writes need the
//! context of an earlier read, which is client state the reference does not keep), routing
//! other than zero-hop, and platforms without `timerfd` (Linux only).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use capnp_rpc::{rpc_twoparty_capnp, twoparty, RpcSystem};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_util::compat::{TokioAsyncReadCompatExt as _, TokioAsyncWriteCompatExt as _};

use super::generator::{new_histogram, OpResult, RunResult, Schedule, NOT_ISSUED, UNFINISHED};
use super::workload::{KeyChooser, Request, Rng, Workload};
use crate::cartwheel_capnp::{cartwheel, gate, get_result, write_result};
use crate::client::{Client, Credentials};

/// How long before the first intended start the reference finishes its setup.
pub const LEAD_MS: u64 = 20;

/// What the reference run sends, all of it decided before the run.
#[derive(Clone, Debug)]
pub struct ReferencePlan {
    /// Node client addresses, one connection each.
    pub addresses: Vec<String>,
    /// How to log in.
    pub credentials: Credentials,
    /// The bucket.
    pub bucket: String,
    /// Put before every key (as the benchmark's run on a `--cluster` does).
    pub prefix: Vec<u8>,
    /// The workload: a value workload (`a`, `b`, `c`, `write-only`).
    pub workload: Workload,
    /// How keys are chosen.
    pub keys: KeyChooser,
    /// Seed of the workload's choices (the benchmark's `--seed`).
    pub seed: u64,
    /// Bytes of each value written.
    pub value_bytes: usize,
    /// When requests start.
    pub schedule: Schedule,
}

/// One request, decided before the run.
#[derive(Clone, Copy, Debug)]
pub(super) struct Planned {
    /// Index of the connection (node) it goes to.
    pub(super) node: u16,
    /// Index of its key.
    pub(super) key: u32,
    /// A read, or else a blind put.
    pub(super) read: bool,
}

/// What happened to one request, in nanoseconds of `CLOCK_MONOTONIC` (0: not yet).
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Slot {
    pub(super) sent: u64,
    pub(super) done: u64,
    pub(super) error: Option<&'static str>,
}

/// Run the reference client on a thread of its own and return what it measured. Blocks the
/// calling thread until the run is over.
pub fn run(plan: ReferencePlan) -> Result<RunResult, String> {
    if plan.workload.is_cart() {
        return Err("the reference client sends reads and blind puts: use a value workload".into());
    }
    if plan.keys.keys() > u64::from(u32::MAX) || plan.addresses.len() > usize::from(u16::MAX) {
        return Err("the reference client takes up to 2^32 keys and 2^16 nodes".into());
    }
    if !cfg!(target_os = "linux") {
        return Err("the reference client needs Linux's timerfd".into());
    }
    let thread = std::thread::Builder::new()
        .name("bench-reference".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("reference runtime: {e}"))?;
            tokio::task::LocalSet::new().block_on(&runtime, measure(plan))
        })
        .map_err(|e| format!("cannot start the reference thread: {e}"))?;
    thread.join().map_err(|_| "the reference thread panicked".to_string())?
}

/// Every request of the run, decided before it: the workload's seeded sequence (the one the
/// benchmark's run sends), each to the node `node_of_key` names for its key.
pub(super) fn planned_requests(plan: &ReferencePlan, node_of_key: &[u16]) -> Vec<Planned> {
    let mut rng = Rng::new(plan.seed);
    (0..plan.schedule.requests())
        .map(|_| match plan.workload.next(&plan.keys, &mut rng) {
            Request::Read { key } => {
                Planned { node: node_of_key[key as usize], key: key as u32, read: true }
            }
            request => {
                let key = request.key_index();
                Planned { node: node_of_key[key as usize], key: key as u32, read: false }
            }
        })
        .collect()
}

/// The bytes of every key (prefix and name) and the value every write sends.
pub(super) fn keys_and_value(plan: &ReferencePlan) -> (Vec<Vec<u8>>, Vec<u8>) {
    let keys = (0..plan.keys.keys())
        .map(|i| [plan.prefix.as_slice(), &super::workload::key_name(i)].concat())
        .collect();
    let value = (0..plan.value_bytes).map(|i| (i as u8).wrapping_mul(151)).collect();
    (keys, value)
}

async fn measure(plan: ReferencePlan) -> Result<RunResult, String> {
    let node_of_key = routes(&plan).await;
    let requests = planned_requests(&plan, &node_of_key);
    let (keys, value) = keys_and_value(&plan);
    let mut nodes = Vec::with_capacity(plan.addresses.len());
    for address in &plan.addresses {
        nodes.push(connect(address, &plan.credentials).await?);
    }
    let timer = clock::Timer::new().map_err(|e| format!("timerfd: {e}"))?;
    let slots = Rc::new(RefCell::new(vec![Slot::default(); requests.len()]));
    let schedule = &plan.schedule;
    let start = clock::now_ns() + LEAD_MS * 1_000_000;
    let time_up = start + nanos(schedule.warmup + schedule.duration + schedule.drain);

    for (i, request) in requests.iter().enumerate() {
        let intended = start + nanos(schedule.offset(i as u64));
        timer.sleep_until(intended).await.map_err(|e| format!("timerfd: {e}"))?;
        let api = &nodes[usize::from(request.node)];
        let key = &keys[request.key as usize];
        let sent = clock::now_ns();
        if sent >= time_up {
            break;
        }
        let slots = Rc::clone(&slots);
        slots.borrow_mut()[i].sent = sent;
        if request.read {
            let mut call = api.get_request();
            call.get().set_bucket(plan.bucket.as_str());
            call.get().set_key(key);
            let answer = call.send().promise;
            tokio::task::spawn_local(async move {
                let error = match answer.await {
                    Ok(response) => read_error(&response),
                    Err(_) => Some("transport"),
                };
                let done = clock::now_ns();
                slots.borrow_mut()[i] = Slot { sent, done, error };
            });
        } else {
            let mut call = api.put_request();
            call.get().set_bucket(plan.bucket.as_str());
            call.get().set_key(key);
            call.get().set_value(&value);
            let answer = call.send().promise;
            tokio::task::spawn_local(async move {
                let error = match answer.await {
                    Ok(response) => write_error(&response),
                    Err(_) => Some("transport"),
                };
                let done = clock::now_ns();
                slots.borrow_mut()[i] = Slot { sent, done, error };
            });
        }
    }
    let end = wait_for_answers(&timer, &slots, time_up).await?;
    let slots = slots.borrow();
    Ok(result(schedule, start, end, &requests, &slots))
}

/// Wait for the answers still due, up to `time_up`, looking every millisecond; returns when
/// it stopped waiting (the run's end).
pub(super) async fn wait_for_answers(
    timer: &clock::Timer,
    slots: &RefCell<Vec<Slot>>,
    time_up: u64,
) -> Result<u64, String> {
    loop {
        let now = clock::now_ns();
        let waiting = slots.borrow().iter().any(|s| s.sent != 0 && s.done == 0);
        if !waiting || now >= time_up {
            return Ok(now);
        }
        timer.sleep_until(now + 1_000_000).await.map_err(|e| format!("timerfd: {e}"))?;
    }
}

/// The node index of every key: its coordinator by the ring, or its hash modulo the node
/// count where the ring cannot be had.
async fn routes(plan: &ReferencePlan) -> Vec<u16> {
    let ring = match Client::connect_with(&plan.addresses[0], &plan.credentials).await {
        Ok(client) => client.ring().await.ok(),
        Err(_) => None,
    };
    (0..plan.keys.keys())
        .map(|i| {
            let key = [plan.prefix.as_slice(), &super::workload::key_name(i)].concat();
            let owner = ring.as_ref().and_then(|ring| {
                let first = ring.preference_addresses(&plan.bucket, &key).into_iter().next()?;
                plan.addresses.iter().position(|a| *a == first)
            });
            let node = owner.unwrap_or_else(|| {
                let hash = crate::ring::key_hash(&plan.bucket, &key);
                (hash % plan.addresses.len() as u128) as usize
            });
            node as u16
        })
        .collect()
}

/// One bare connection to `address`, logged in; its RPC system runs as a local task.
async fn connect(address: &str, credentials: &Credentials) -> Result<cartwheel::Client, String> {
    let failed = |e: &dyn std::fmt::Display| format!("reference connection to {address}: {e}");
    let stream = TcpStream::connect(address).await.map_err(|e| failed(&e))?;
    stream.set_nodelay(true).map_err(|e| failed(&e))?;
    let (reader, writer): (Box<dyn AsyncRead + Unpin>, Box<dyn AsyncWrite + Unpin>) =
        match &credentials.ca_pem {
            None => {
                let (reader, writer) = stream.into_split();
                (Box::new(reader), Box::new(writer))
            }
            Some(ca) => {
                let tls = crate::security::client_config(ca).map_err(|e| failed(&e))?;
                let session = tokio_rustls::TlsConnector::from(tls)
                    .connect(crate::security::server_name(), stream)
                    .await
                    .map_err(|e| failed(&e))?;
                let (reader, writer) = tokio::io::split(session);
                (Box::new(reader), Box::new(writer))
            }
        };
    let network = twoparty::VatNetwork::new(
        futures::io::BufReader::new(reader.compat()),
        futures::io::BufWriter::new(writer.compat_write()),
        rpc_twoparty_capnp::Side::Client,
        capnp::message::ReaderOptions::new(),
    );
    let mut rpc = RpcSystem::new(Box::new(network), None);
    let gate: gate::Client = rpc.bootstrap(rpc_twoparty_capnp::Side::Server);
    tokio::task::spawn_local(rpc);
    let mut login = gate.login_request();
    login.get().set_token(credentials.token.as_str());
    let response = login.send().promise.await.map_err(|e| failed(&e))?;
    let answer = response.get().map_err(|e| failed(&e))?;
    if answer.has_error() {
        let error = crate::node::wire::get_error(answer.get_error().map_err(|e| failed(&e))?);
        return Err(failed(&error));
    }
    answer.get_node().map_err(|e| failed(&e))
}

type GetResponse = capnp::capability::Response<cartwheel::get_results::Owned>;
type PutResponse = capnp::capability::Response<cartwheel::put_results::Owned>;

/// The error kind of a get's answer, if it is an error.
fn read_error(response: &GetResponse) -> Option<&'static str> {
    let result = response.get().and_then(|r| r.get_result());
    match result.map(|r| r.which()) {
        Ok(Ok(get_result::NotFound(_) | get_result::Found(_))) => None,
        Ok(Ok(get_result::Error(Ok(e)))) => Some(crate::node::wire::get_error(e).kind_name()),
        _ => Some("transport"),
    }
}

/// The error kind of a put's answer, if it is an error.
fn write_error(response: &PutResponse) -> Option<&'static str> {
    let result = response.get().and_then(|r| r.get_result());
    match result.map(|r| r.which()) {
        Ok(Ok(write_result::Ok(_))) => None,
        Ok(Ok(write_result::Error(Ok(e)))) => Some(crate::node::wire::get_error(e).kind_name()),
        _ => Some("transport"),
    }
}

pub(super) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The run's figures from its slots, counted as the benchmark counts them (warm-up
/// excluded; `unfinished` and `not_issued` among the errors, with the latency they reached).
pub(super) fn result(
    schedule: &Schedule,
    start: u64,
    end: u64,
    requests: &[Planned],
    slots: &[Slot],
) -> RunResult {
    let clamp = |ns: u64| ns.clamp(1, super::generator::LATENCY_NS_MAX);
    let total = schedule.requests();
    let warmup = schedule.warmup_requests().min(total);
    let measure_from = start + nanos(schedule.warmup);
    let mut r = RunResult {
        schedule: schedule.clone(),
        ops: BTreeMap::new(),
        all: OpResult { latency: new_histogram(), service: new_histogram(), errors: 0 },
        send_lag: new_histogram(),
        errors: BTreeMap::new(),
        requests: total - warmup,
        answered: 0,
        late: 0,
        unfinished: 0,
        not_issued: 0,
        measured_s: 0.0,
        cpu_s: None,
        generator_cpu_s: None,
        server_cpu_s: None,
        worst_ns: Vec::new(),
    };
    let mut last = measure_from;
    for (i, slot) in slots.iter().enumerate().skip(warmup as usize) {
        let intended = start + nanos(schedule.offset(i as u64));
        let op = if requests[i].read { "read" } else { "update" };
        if slot.sent == 0 {
            r.not_issued += 1;
            r.all.errors += 1;
            r.all.latency.saturating_record(clamp(end.saturating_sub(intended)));
            last = end;
            continue;
        }
        r.send_lag.saturating_record(clamp(slot.sent.saturating_sub(intended)));
        if slot.done == 0 {
            r.unfinished += 1;
            r.all.errors += 1;
            r.all.latency.saturating_record(clamp(end.saturating_sub(intended)));
            last = end;
            continue;
        }
        r.answered += 1;
        last = last.max(slot.done);
        let entry = r.ops.entry(op).or_insert_with(|| OpResult {
            latency: new_histogram(),
            service: new_histogram(),
            errors: 0,
        });
        match slot.error {
            None => {
                let latency = clamp(slot.done.saturating_sub(intended));
                let service = clamp(slot.done.saturating_sub(slot.sent));
                entry.latency.saturating_record(latency);
                entry.service.saturating_record(service);
                r.all.latency.saturating_record(latency);
                r.all.service.saturating_record(service);
                r.note_worst(Duration::from_nanos(intended.saturating_sub(measure_from)), latency);
            }
            Some(kind) => {
                entry.errors += 1;
                r.all.errors += 1;
                *r.errors.entry(kind).or_insert(0) += 1;
            }
        }
    }
    if r.unfinished > 0 {
        r.errors.insert(UNFINISHED, r.unfinished);
    }
    if r.not_issued > 0 {
        r.errors.insert(NOT_ISSUED, r.not_issued);
    }
    r.measured_s = last.saturating_sub(measure_from) as f64 / 1e9;
    r
}

/// `CLOCK_MONOTONIC` in nanoseconds and a `timerfd` armed at absolute instants of it.
#[cfg(target_os = "linux")]
pub(super) mod clock {
    use rustix::time::{
        clock_gettime, timerfd_create, timerfd_settime, ClockId, Itimerspec, TimerfdClockId,
        TimerfdFlags, TimerfdTimerFlags, Timespec,
    };
    use tokio::io::unix::AsyncFd;

    /// Nanoseconds of `CLOCK_MONOTONIC`.
    pub fn now_ns() -> u64 {
        let t = clock_gettime(ClockId::Monotonic);
        t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
    }

    /// One timerfd, registered with the runtime.
    pub struct Timer(AsyncFd<std::os::fd::OwnedFd>);

    impl Timer {
        /// Must be called inside a tokio runtime.
        pub fn new() -> std::io::Result<Self> {
            let fd = timerfd_create(
                TimerfdClockId::Monotonic,
                TimerfdFlags::NONBLOCK | TimerfdFlags::CLOEXEC,
            )?;
            // `AsyncFd::new` is deprecated because a borrowed descriptor could be closed
            // while registered; this AsyncFd owns the `OwnedFd` for its whole life.
            #[allow(deprecated)]
            let fd = AsyncFd::new(fd)?;
            Ok(Self(fd))
        }

        /// Return at `deadline_ns` of `CLOCK_MONOTONIC` (at once if it passed).
        pub async fn sleep_until(&self, deadline_ns: u64) -> std::io::Result<()> {
            if now_ns() >= deadline_ns {
                return Ok(());
            }
            let zero = Timespec { tv_sec: 0, tv_nsec: 0 };
            let value = Timespec {
                tv_sec: (deadline_ns / 1_000_000_000) as _,
                tv_nsec: (deadline_ns % 1_000_000_000) as _,
            };
            let spec = Itimerspec { it_interval: zero, it_value: value };
            timerfd_settime(self.0.get_ref(), TimerfdTimerFlags::ABSTIME, &spec)?;
            loop {
                let mut ready = self.0.readable().await?;
                let mut expirations = [0u8; 8];
                match rustix::io::read(self.0.get_ref(), &mut expirations) {
                    Ok(_) => return Ok(()),
                    Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
}

/// Elsewhere `run` refuses before it gets here; this keeps the module compiling.
#[cfg(not(target_os = "linux"))]
pub(super) mod clock {
    pub fn now_ns() -> u64 {
        0
    }

    pub struct Timer;

    impl Timer {
        pub fn new() -> std::io::Result<Self> {
            Err(std::io::ErrorKind::Unsupported.into())
        }

        pub async fn sleep_until(&self, _deadline_ns: u64) -> std::io::Result<()> {
            Err(std::io::ErrorKind::Unsupported.into())
        }
    }
}
