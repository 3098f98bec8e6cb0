//! # Metrics: what a node counts, in the Prometheus text format
//!
//! Every node keeps one [`Metrics`]: a `prometheus-client` registry of its own (never a
//! global one: tests run several nodes in one process, and each must count only itself) and
//! the counters, gauges and histograms registered in it. The rooms that do the work call one
//! method here at the moment something happens (a client request ends, a quorum is met or
//! missed, a read repair is sent, a partition is handed off, anti-entropy repairs a key, a
//! connection is accepted). What is already counted elsewhere (engine stats, hints held,
//! members, the byte budget, open connections) is read when a scrape comes, by
//! [`Metrics::collect`], so nothing is counted twice. [`http`] serves the text on
//! `node.metrics_listen`; the README's "Metrics" section lists every name.
//!
//! ## The contract
//! - Counters only go up from the node's start (a restart begins again at zero, as
//!   Prometheus expects). A scrape reads values that are each exact, not a snapshot taken
//!   all at once: a request that ends during a scrape may be in one counter and not yet in
//!   another.
//! - Label values are bounded, so that no client can grow the registry: `bucket` is one of
//!   the configured buckets, or [`BUCKET_OTHER`] for a name the node does not have (or a
//!   request too malformed to name one); `operation` and `kind` come from fixed lists
//!   ([`Operation`], [`error_kind`]); `outcome` and `state` likewise.
//! - The series of every configured bucket (requests and their latency per operation, quorum
//!   outcomes, repairs, transfers) exist from the start, at zero, so a dashboard sees every
//!   bucket before its first request; an error kind's series appears with its first error.
//! - Histograms are classic Prometheus histograms in seconds, with the bounds
//!   [`LATENCY_BUCKETS_SECONDS`] (100 µs to 10 s).
//!
//! ## Cost
//! A client request costs one hash-map lookup by bucket name, two atomic increments and one
//! histogram observation (atomics); errors, quorum outcomes and the background rooms' events
//! look their series up by label (a short-lived `String` and a read lock). A scrape encodes
//! a few hundred lines on the node's thread.

pub mod http;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::config::Config;
use crate::error::Error;

/// The `bucket` label of a request for a bucket this node is not configured with, or one
/// that named none (so a client cannot grow the registry by inventing names).
pub const BUCKET_OTHER: &str = "(unknown)";

/// Upper bounds of the latency histograms, in seconds: 100 µs to 10 s, about three per
/// decade (a loopback round trip is about 50 µs here; the default request timeout is 5 s).
pub const LATENCY_BUCKETS_SECONDS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// The states a member can be in, the `state` label of `cartwheel_members` (the wire
/// schema's `NodeState`).
pub const MEMBER_STATES: [&str; 6] = ["up", "suspect", "down", "joining", "leaving", "left"];

/// A client operation, the `operation` label of the request metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `get`.
    Get,
    /// `put`.
    Put,
    /// `delete`.
    Delete,
    /// `update` (CRDT operations).
    Update,
}

impl Operation {
    /// Every operation, in label order.
    pub const ALL: [Operation; 4] = [Self::Get, Self::Put, Self::Delete, Self::Update];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::Put => "put",
            Self::Delete => "delete",
            Self::Update => "update",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// What a quorum wait ended with, the `outcome` label of `cartwheel_quorum_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuorumOutcome {
    /// R answers (W stores, DW syncs) arrived.
    Met,
    /// Too many replicas failed for the quorum to be met (`quorumNotMet`).
    NotMet,
    /// The request's timeout came first.
    Timeout,
}

impl QuorumOutcome {
    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::NotMet => "not_met",
            Self::Timeout => "timeout",
        }
    }

    /// The outcome a coordinator's answer stands for: `None` for an answer that did not
    /// come from waiting on replicas (a refused request, a forwarded write).
    pub fn of<T>(answer: &Result<T, Error>) -> Option<Self> {
        match answer {
            Ok(_) => Some(Self::Met),
            Err(Error::QuorumNotMet(_)) => Some(Self::NotMet),
            Err(Error::Timeout(_)) => Some(Self::Timeout),
            Err(_) => None,
        }
    }
}

/// The name of an error's kind, the `kind` label: snake case, as the wire schema's
/// `ErrorKind` (a fixed list).
pub fn error_kind(error: &Error) -> &'static str {
    error.kind_name()
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BucketLabels {
    bucket: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    bucket: String,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    bucket: String,
    operation: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuorumLabels {
    bucket: String,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    bucket: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_SECONDS)
}

/// One bucket's request series, looked up once at start so a request costs no allocation.
struct BucketRequests {
    requests: [Counter; 4],
    durations: [Histogram; 4],
}

/// A node's metrics: its registry and every series in it. See the module doc.
pub struct Metrics {
    registry: Registry,
    /// Per configured bucket (and [`BUCKET_OTHER`]), its request counters and histograms.
    buckets: HashMap<String, BucketRequests>,
    request_errors: Family<ErrorLabels, Counter>,
    requests_in_flight: Gauge,
    requests_refused: Counter,
    quorum: Family<QuorumLabels, Counter>,
    read_repairs: Family<BucketLabels, Counter>,
    peer_batches: Counter,
    peer_batched_calls: Counter,
    hints_queued: Counter,
    hints_delivered: Counter,
    hints_refused: Counter,
    hints_held: Gauge,
    transfer_partitions: Family<BucketLabels, Counter>,
    transfer_keys: Family<BucketLabels, Counter>,
    anti_entropy_exchanges: Family<BucketLabels, Counter>,
    anti_entropy_repairs: Family<DirectionLabels, Counter>,
    engine_keys: Family<BucketLabels, Gauge>,
    engine_live_bytes: Family<BucketLabels, Gauge>,
    engine_dead_bytes: Family<BucketLabels, Gauge>,
    engine_memory_bytes: Family<BucketLabels, Gauge>,
    engine_failed: Family<BucketLabels, Gauge>,
    engine_merges: Family<BucketLabels, Counter>,
    engine_syncs: Family<BucketLabels, Counter>,
    syncs: Counter,
    sync_durations: Histogram,
    connections_open: Gauge,
    connections_unauthenticated: Gauge,
    connections_accepted: Counter,
    connections_refused: Counter,
    inflight_bytes: Gauge,
    inflight_bytes_max: Gauge,
    members: Family<StateLabels, Gauge>,
    partitions_owned: Gauge,
    states_refused: Counter,
    uptime: Gauge<f64, AtomicU64>,
    started: Instant,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").field("buckets", &self.buckets.len()).finish_non_exhaustive()
    }
}

impl Metrics {
    /// The metrics of a node with `config`'s buckets, every series registered.
    pub fn new(config: &Config) -> Self {
        let mut registry = Registry::with_prefix("cartwheel");
        let r = &mut registry;
        let requests = Family::<RequestLabels, Counter>::default();
        r.register(
            "requests",
            "Client requests answered, by bucket and operation",
            requests.clone(),
        );
        let request_durations: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(latency_histogram);
        r.register_with_unit(
            "request_duration",
            "Time from a client request's admission to its answer",
            Unit::Seconds,
            request_durations.clone(),
        );
        let request_errors = Family::default();
        r.register(
            "request_errors",
            "Client requests answered with an error, by bucket, operation and error kind",
            request_errors.clone(),
        );
        let requests_in_flight = Gauge::default();
        r.register(
            "requests_in_flight",
            "Client requests (get, put, delete, update) being served",
            requests_in_flight.clone(),
        );
        let requests_refused = Counter::default();
        r.register(
            "requests_refused",
            "Requests and connections refused at once with overloaded (the status RPC's \
             requestsRefused)",
            requests_refused.clone(),
        );
        let quorum = Family::default();
        r.register(
            "quorum",
            "Reads and writes this node coordinated, by whether their quorum was met",
            quorum.clone(),
        );
        let read_repairs = Family::default();
        r.register("read_repairs", "Replicas sent a read repair", read_repairs.clone());
        let peer_batches = Counter::default();
        r.register(
            "peer_batches",
            "Messages this node sent a peer carrying replicate and fetch calls (src/cluster/peers.rs)",
            peer_batches.clone(),
        );
        let peer_batched_calls = Counter::default();
        r.register(
            "peer_batched_calls",
            "Replicate and fetch calls those messages carried",
            peer_batched_calls.clone(),
        );
        let hints_queued = Counter::default();
        r.register(
            "hints_queued",
            "States kept as hints for another node (new hints and merges into one held)",
            hints_queued.clone(),
        );
        let hints_delivered = Counter::default();
        r.register(
            "hints_delivered",
            "Hints delivered to their owner and dropped here",
            hints_delivered.clone(),
        );
        let hints_refused = Counter::default();
        r.register(
            "hints_refused",
            "Hints refused at the hint store's bounds",
            hints_refused.clone(),
        );
        let hints_held = Gauge::default();
        r.register("hints_held", "Hints this node holds for other nodes", hints_held.clone());
        let transfer_partitions = Family::default();
        r.register(
            "transfer_partitions",
            "Partitions handed off to their new owners after a ring change",
            transfer_partitions.clone(),
        );
        let transfer_keys = Family::default();
        r.register(
            "transfer_keys",
            "Keys sent to new owners by ownership handoff",
            transfer_keys.clone(),
        );
        let anti_entropy_exchanges = Family::default();
        r.register(
            "anti_entropy_exchanges",
            "Anti-entropy comparisons of a partition with another replica",
            anti_entropy_exchanges.clone(),
        );
        let anti_entropy_repairs = Family::default();
        r.register(
            "anti_entropy_repairs",
            "Keys anti-entropy repaired: entries of differing segments received from the peer \
             and merged here, and states sent to the peer because its differed",
            anti_entropy_repairs.clone(),
        );
        let engine_keys = Family::default();
        r.register("engine_keys", "Live keys in the bucket's engine", engine_keys.clone());
        let engine_live_bytes = Family::default();
        r.register_with_unit(
            "engine_live",
            "Bytes of live keys and values in the bucket's engine",
            Unit::Bytes,
            engine_live_bytes.clone(),
        );
        let engine_dead_bytes = Family::default();
        r.register_with_unit(
            "engine_dead",
            "Bytes on disk held by overwritten or deleted records, waiting for a merge",
            Unit::Bytes,
            engine_dead_bytes.clone(),
        );
        let engine_memory_bytes = Family::default();
        r.register_with_unit(
            "engine_memory",
            "Approximate memory the bucket's engine holds",
            Unit::Bytes,
            engine_memory_bytes.clone(),
        );
        let engine_failed = Family::default();
        r.register(
            "engine_failed",
            "1 while the bucket's engine failed a write or a sync and takes no writes",
            engine_failed.clone(),
        );
        let engine_merges = Family::default();
        r.register(
            "engine_merges",
            "Compactions the bucket's engine finished: segments merged (log), snapshots (buffer)",
            engine_merges.clone(),
        );
        let engine_syncs = Family::default();
        r.register(
            "engine_syncs",
            "Syncs the bucket's engine wrote: group-commit fdatasyncs (log, buffer), commits \
             (btree)",
            engine_syncs.clone(),
        );
        let syncs = Counter::default();
        r.register(
            "syncs",
            "Blocking engine syncs the node ran for durable writes (dw >= 1), over all engines",
            syncs.clone(),
        );
        let sync_durations = latency_histogram();
        r.register_with_unit(
            "sync_duration",
            "Time one such sync took",
            Unit::Seconds,
            sync_durations.clone(),
        );
        let connections_open = Gauge::default();
        r.register(
            "connections_open",
            "Client and peer connections open to this node",
            connections_open.clone(),
        );
        let connections_unauthenticated = Gauge::default();
        r.register(
            "connections_unauthenticated",
            "Open connections not logged in yet",
            connections_unauthenticated.clone(),
        );
        let connections_accepted = Counter::default();
        r.register("connections_accepted", "Connections accepted", connections_accepted.clone());
        let connections_refused = Counter::default();
        r.register(
            "connections_refused",
            "Connections closed on accept at the connection limits",
            connections_refused.clone(),
        );
        let inflight_bytes = Gauge::default();
        r.register_with_unit(
            "inflight",
            "Bytes held for work in flight (limits.inflight_bytes_max)",
            Unit::Bytes,
            inflight_bytes.clone(),
        );
        let inflight_bytes_max = Gauge::default();
        r.register_with_unit(
            "inflight_max",
            "The node's budget of bytes in flight",
            Unit::Bytes,
            inflight_bytes_max.clone(),
        );
        let members = Family::default();
        r.register("members", "Cluster members as this node sees them, by state", members.clone());
        let partitions_owned = Gauge::default();
        r.register(
            "partitions_owned",
            "Partitions of the ring this node owns",
            partitions_owned.clone(),
        );
        let states_refused = Counter::default();
        r.register(
            "states_refused",
            "States from peers refused (stamped too far ahead of this node's clock)",
            states_refused.clone(),
        );
        let uptime = Gauge::<f64, AtomicU64>::default();
        r.register_with_unit(
            "uptime",
            "Time since the node started",
            Unit::Seconds,
            uptime.clone(),
        );

        let names = config.buckets.keys().map(String::as_str).chain([BUCKET_OTHER]);
        let buckets = names
            .map(|bucket| {
                let bucket = bucket.to_string();
                let labels = |operation: Operation| RequestLabels {
                    bucket: bucket.clone(),
                    operation: operation.name(),
                };
                let series = BucketRequests {
                    requests: Operation::ALL.map(|op| requests.get_or_create_owned(&labels(op))),
                    durations: Operation::ALL
                        .map(|op| request_durations.get_or_create_owned(&labels(op))),
                };
                (bucket.clone(), series)
            })
            .collect();
        // The configured buckets' series exist from the start, at zero (a family without
        // series is not exposed at all). Error kinds appear with their first error.
        for bucket in config.buckets.keys() {
            let labels = BucketLabels { bucket: bucket.clone() };
            for family in [
                &read_repairs,
                &transfer_partitions,
                &transfer_keys,
                &anti_entropy_exchanges,
                &engine_merges,
                &engine_syncs,
            ] {
                drop(family.get_or_create(&labels));
            }
            for operation in ["read", "write"] {
                for outcome in [QuorumOutcome::Met, QuorumOutcome::NotMet, QuorumOutcome::Timeout] {
                    let bucket = bucket.clone();
                    drop(quorum.get_or_create(&QuorumLabels {
                        bucket,
                        operation,
                        outcome: outcome.name(),
                    }));
                }
            }
            for direction in ["received", "sent"] {
                let bucket = bucket.clone();
                drop(anti_entropy_repairs.get_or_create(&DirectionLabels { bucket, direction }));
            }
        }
        Self {
            registry,
            buckets,
            request_errors,
            requests_in_flight,
            requests_refused,
            quorum,
            read_repairs,
            peer_batches,
            peer_batched_calls,
            hints_queued,
            hints_delivered,
            hints_refused,
            hints_held,
            transfer_partitions,
            transfer_keys,
            anti_entropy_exchanges,
            anti_entropy_repairs,
            engine_keys,
            engine_live_bytes,
            engine_dead_bytes,
            engine_memory_bytes,
            engine_failed,
            engine_merges,
            engine_syncs,
            syncs,
            sync_durations,
            connections_open,
            connections_unauthenticated,
            connections_accepted,
            connections_refused,
            inflight_bytes,
            inflight_bytes_max,
            members,
            partitions_owned,
            states_refused,
            uptime,
            started: Instant::now(),
        }
    }

    /// The `bucket` label for `bucket`: its name if configured, else [`BUCKET_OTHER`] (which
    /// has a place in the table of request series too).
    fn bucket_label(&self, bucket: &str) -> String {
        match self.buckets.contains_key(bucket) {
            true => bucket.to_string(),
            false => BUCKET_OTHER.to_string(),
        }
    }

    fn bucket_labels(&self, bucket: &str) -> BucketLabels {
        BucketLabels { bucket: self.bucket_label(bucket) }
    }

    /// A client request of `operation` starts: counted in flight until the returned
    /// [`Request`] is ended (or dropped, for a call cancelled before its answer).
    pub fn request(&self, operation: Operation) -> Request<'_> {
        self.requests_in_flight.inc();
        Request {
            metrics: self,
            operation,
            series: std::cell::Cell::new(None),
            started: Instant::now(),
        }
    }

    /// A read this node coordinated waited for its R answers and ended with `answer` (see
    /// [`QuorumOutcome::of`]).
    pub fn read_quorum<T>(&self, bucket: &str, answer: &Result<T, Error>) {
        self.quorum_answer(bucket, "read", answer);
    }

    /// A write this node coordinated waited for its W stores (and DW syncs) and ended with
    /// `answer` (see [`QuorumOutcome::of`]).
    pub fn write_quorum<T>(&self, bucket: &str, answer: &Result<T, Error>) {
        self.quorum_answer(bucket, "write", answer);
    }

    fn quorum_answer<T>(&self, bucket: &str, operation: &'static str, answer: &Result<T, Error>) {
        let Some(outcome) = QuorumOutcome::of(answer) else { return };
        let labels =
            QuorumLabels { bucket: self.bucket_label(bucket), operation, outcome: outcome.name() };
        self.quorum.get_or_create(&labels).inc();
    }

    /// A read repair was sent to one replica of a key of `bucket`.
    pub fn read_repair(&self, bucket: &str) {
        self.read_repairs.get_or_create(&self.bucket_labels(bucket)).inc();
    }

    /// The counters of peer batches: messages sent, and the calls they carried.
    pub fn peer_batch_counters(&self) -> (Counter, Counter) {
        (self.peer_batches.clone(), self.peer_batched_calls.clone())
    }

    /// Ownership handoff sent `keys` keys of a partition of `bucket`; `complete` when that
    /// finished the partition.
    pub fn transfer(&self, bucket: &str, keys: u64, complete: bool) {
        let labels = self.bucket_labels(bucket);
        self.transfer_keys.get_or_create(&labels).inc_by(keys);
        if complete {
            self.transfer_partitions.get_or_create(&labels).inc();
        }
    }

    /// Anti-entropy compared a partition of `bucket` with another replica.
    pub fn anti_entropy_exchange(&self, bucket: &str) {
        self.anti_entropy_exchanges.get_or_create(&self.bucket_labels(bucket)).inc();
    }

    /// An anti-entropy exchange of `bucket` merged `received` entries of the peer's
    /// differing segments here and sent the peer `sent` states that differed there.
    pub fn anti_entropy_repairs(&self, bucket: &str, received: usize, sent: usize) {
        let bucket = self.bucket_label(bucket);
        for (direction, keys) in [("received", received), ("sent", sent)] {
            let labels = DirectionLabels { bucket: bucket.clone(), direction };
            self.anti_entropy_repairs.get_or_create(&labels).inc_by(keys as u64);
        }
    }

    /// What [`crate::store::sync_group::SyncGroups`] tells of each sync it runs.
    pub fn sync_observer(&self) -> SyncObserver {
        SyncObserver { syncs: self.syncs.clone(), durations: self.sync_durations.clone() }
    }

    /// A connection was accepted (`true`) or refused at the limits (`false`).
    pub fn connection(&self, accepted: bool) {
        match accepted {
            true => self.connections_accepted.inc(),
            false => self.connections_refused.inc(),
        };
    }

    /// Read what other rooms count (see [`Scrape`]) into the gauges and counters, then encode
    /// the registry in the text format (OpenMetrics 1.0, which Prometheus reads; it ends with
    /// `# EOF`).
    pub fn collect(&self, scrape: &Scrape) -> String {
        for engine in &scrape.engines {
            let labels = self.bucket_labels(&engine.bucket);
            let gauge = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
            self.engine_keys.get_or_create(&labels).set(gauge(engine.stats.entries));
            self.engine_live_bytes.get_or_create(&labels).set(gauge(engine.stats.live_bytes));
            self.engine_dead_bytes.get_or_create(&labels).set(gauge(engine.stats.dead_bytes));
            self.engine_memory_bytes.get_or_create(&labels).set(gauge(engine.stats.memory_bytes));
            self.engine_failed.get_or_create(&labels).set(i64::from(engine.failed));
            catch_up(&self.engine_merges.get_or_create(&labels), engine.stats.merges);
            catch_up(&self.engine_syncs.get_or_create(&labels), engine.stats.syncs);
        }
        let count = |v: usize| i64::try_from(v).unwrap_or(i64::MAX);
        self.hints_held.set(i64::try_from(scrape.hints_held).unwrap_or(i64::MAX));
        catch_up(&self.hints_queued, scrape.hints_queued);
        catch_up(&self.hints_delivered, scrape.hints_delivered);
        catch_up(&self.hints_refused, scrape.hints_refused);
        catch_up(&self.requests_refused, scrape.requests_refused);
        catch_up(&self.states_refused, scrape.states_refused);
        self.connections_open.set(count(scrape.connections_open));
        self.connections_unauthenticated.set(count(scrape.connections_unauthenticated));
        self.inflight_bytes.set(count(scrape.inflight_bytes));
        self.inflight_bytes_max.set(count(scrape.inflight_bytes_max));
        for state in MEMBER_STATES {
            let members = scrape.members.iter().filter(|s| **s == state).count();
            self.members.get_or_create(&StateLabels { state }).set(count(members));
        }
        self.partitions_owned.set(count(scrape.partitions_owned));
        self.uptime.set(self.started.elapsed().as_secs_f64());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)
            .expect("writing to a String cannot fail");
        text
    }
}

/// Raise `counter` to `total`, a count kept elsewhere that only grows. (An engine reopened
/// after a failure counts again from zero; the counter then stays until it passes.)
fn catch_up(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// Counts the blocking syncs run for durable writes, and their latency; a handle on the
/// node's series, held by its sync groups.
#[derive(Clone, Debug)]
pub struct SyncObserver {
    syncs: Counter,
    durations: Histogram,
}

impl SyncObserver {
    /// A sync ran from `started` to now.
    pub fn synced(&self, started: Instant) {
        self.syncs.inc();
        self.durations.observe(started.elapsed().as_secs_f64());
    }
}

/// What a scrape reads from the rooms that count it themselves.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Each bucket's engine.
    pub engines: Vec<EngineScrape>,
    /// Hints held, over all owners.
    pub hints_held: u64,
    /// States kept as hints since start.
    pub hints_queued: u64,
    /// Hints delivered since start.
    pub hints_delivered: u64,
    /// Hints refused at the bounds since start.
    pub hints_refused: u64,
    /// Requests and connections refused with overloaded since start.
    pub requests_refused: u64,
    /// States from peers refused since start.
    pub states_refused: u64,
    /// Connections open.
    pub connections_open: usize,
    /// Of those, not logged in yet.
    pub connections_unauthenticated: usize,
    /// Bytes of the budget held.
    pub inflight_bytes: usize,
    /// The budget.
    pub inflight_bytes_max: usize,
    /// Each member's state (one of [`MEMBER_STATES`]), this node included.
    pub members: Vec<&'static str>,
    /// Partitions this node owns.
    pub partitions_owned: usize,
}

/// One bucket's engine, as a scrape reads it.
#[derive(Debug)]
pub struct EngineScrape {
    /// The bucket.
    pub bucket: String,
    /// Its engine's counters.
    pub stats: cartwheel_engines::EngineStats,
    /// Whether its engine failed and takes no writes.
    pub failed: bool,
}

/// One client request being served: in flight until [`Request::end`] records it (or it is
/// dropped, for a call cancelled before its answer, which is counted nowhere else).
pub struct Request<'a> {
    metrics: &'a Metrics,
    operation: Operation,
    /// The bucket's series, once the request named a bucket.
    series: std::cell::Cell<Option<(&'a str, &'a BucketRequests)>>,
    started: Instant,
}

impl<'a> Request<'a> {
    /// The request names `bucket`.
    pub fn bucket(&self, bucket: &str) {
        let buckets = &self.metrics.buckets;
        let found = buckets.get_key_value(bucket).or_else(|| buckets.get_key_value(BUCKET_OTHER));
        self.series.set(found.map(|(name, series)| (name.as_str(), series)));
    }

    /// The request is answered with `outcome`: count it, its latency, and its error's kind.
    pub fn end<T>(self, outcome: &Result<T, Error>) {
        let i = self.operation.index();
        let (bucket, series) = match self.series.get() {
            Some(found) => found,
            None => {
                self.bucket(BUCKET_OTHER);
                self.series.get().expect("the other bucket's series exist")
            }
        };
        series.requests[i].inc();
        series.durations[i].observe(self.started.elapsed().as_secs_f64());
        if let Err(e) = outcome {
            let labels = ErrorLabels {
                bucket: bucket.to_string(),
                operation: self.operation.name(),
                kind: error_kind(e),
            };
            self.metrics.request_errors.get_or_create(&labels).inc();
        }
    }
}

impl Drop for Request<'_> {
    fn drop(&mut self) {
        self.metrics.requests_in_flight.dec();
    }
}
