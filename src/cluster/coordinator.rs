//! # The coordinator: who takes a client request, and when it is done
//!
//! The decisions are pure functions at the top of this file, unit-tested below without
//! sockets: [`plan_targets`] (the key's N targets, a down primary replaced by the next healthy
//! fallback with a hint: sloppy quorum), [`plan_write`] (coordinate here, forward to a
//! primary, or keep the write as a hint), [`effective_write_quorum`] and
//! [`effective_read_quorum`] (R, W and DW as a request asks them; a small cluster bends R,
//! never W). Quorum progress and read-repair targets are [`super::quorum`]'s state machines.
//! The async methods below only carry messages: apply the write locally, send it to the targets through
//! [`super::peers`], count the answers, and repair what a read found stale.
//!
//! A write holds its bytes against the node's budget ([`super::budget`]): the coordinator
//! reserves its replication before it applies the write ([`write_bytes`] once per target other
//! than itself), so that a refusal is `overloaded` with nothing done, and each target's send
//! then takes the new state's bytes out of that reservation and holds them until the target
//! answered, after the client's answer if that comes first.
//!
//! Storage that failed (a full disk: the engine refuses writes until it recovered, see the
//! engines' docs) takes no write: a primary whose engine failed forwards a client's write to
//! another primary, and a node asked to take a write on failed storage (its bucket engine, or
//! its hint store for a hint) answers `unavailable` with nothing done, so the node that
//! forwarded it tries the next primary, and a client may retry elsewhere. An engine that
//! fails during the write answers the same: its write was not acknowledged, and the replica
//! actor is renewed before the engine takes writes again.
//!
//! It may not touch a peer connection directly (that is [`super::peers`]), nor decide what a
//! replica keeps ([`super::replica`]). A read does not take a peer's answer on trust either:
//! a state stamped too far ahead of this node's clock
//! ([`crate::store::Store::check_incoming`]) counts as a failed answer, so it is neither
//! shown to the client nor spread by read repair.

use std::rc::Rc;
use std::time::Duration;

use cartwheel_resolvers::{Op, Read, Write};
use futures::StreamExt;

use super::membership::Health;
use super::quorum::{Outcome, ReadQuorum, WriteQuorum};
use super::Cluster;
use crate::config::BucketConfig;
use crate::error::Error;
use crate::node::wire::{ReadOptions, WriteOptions};

/// One replica a request goes to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// The node's id.
    pub id: String,
    /// The primary this node stands in for, when it is a fallback.
    pub hint_for: Option<String>,
}

/// Choose the targets for a key: the first `n` nodes of the preference list, each one this
/// node sees down replaced by the next healthy node past them, with a hint. Pure.
pub fn plan_targets(preference: &[&str], n: usize, health: impl Fn(&str) -> Health) -> Vec<Target> {
    let n = n.min(preference.len());
    let mut fallbacks = preference[n..].iter().filter(|id| health(id) != Health::Down);
    preference[..n]
        .iter()
        .map(|primary| match health(primary) {
            Health::Down => match fallbacks.next() {
                Some(fallback) => {
                    Target { id: fallback.to_string(), hint_for: Some(primary.to_string()) }
                }
                None => Target { id: primary.to_string(), hint_for: None },
            },
            Health::Up | Health::Suspect => Target { id: primary.to_string(), hint_for: None },
        })
        .collect()
}

/// How this node takes a client write, decided from the key's targets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WritePlan {
    /// This node is one of the key's primaries: it coordinates, with its replica actor, on
    /// its own copy.
    Coordinate,
    /// Forward the write to this primary, which coordinates it.
    Forward(String),
    /// No primary can take it here (none is up, or the write was forwarded once already):
    /// coordinate with the hint actor on the hints this node holds for the key, and keep the
    /// new state as a hint for `owner`, never in the bucket's engine. It counts toward W when
    /// this node is one of the targets (a fallback standing in for `owner`).
    CoordinateAsHint {
        /// The primary the hint is kept for.
        owner: String,
        /// Whether this node is a target, so its hint counts toward W.
        counts: bool,
    },
}

/// Decide how `me` takes a write whose targets are `targets` ([`plan_targets`]). Pure.
///
/// Dot-issuing writes must be coordinated where the actor's history of the key is complete
/// ([`crate::actors`]): a primary, on its own copy, or any node on its own hints with its hint
/// actor. A node that is neither forwards to the first primary it sees up. A primary whose
/// engine for the bucket failed (`me_can_store` false: a full disk) takes the write as a node
/// that is not a primary would: it forwards it to another primary.
pub fn plan_write(
    me: &str,
    targets: &[Target],
    forwarded: bool,
    me_can_store: bool,
    health: impl Fn(&str) -> Health,
) -> Option<WritePlan> {
    let me_primary = targets.iter().any(|t| t.id == me && t.hint_for.is_none());
    if me_primary && me_can_store {
        return Some(WritePlan::Coordinate);
    }
    if !forwarded {
        let up = targets
            .iter()
            .find(|t| t.hint_for.is_none() && t.id != me && health(&t.id) == Health::Up);
        if let Some(primary) = up {
            return Some(WritePlan::Forward(primary.id.clone()));
        }
    }
    if me_primary {
        // No other primary to take it: this one answers with its engine's own error.
        return Some(WritePlan::Coordinate);
    }
    if let Some(owner) = targets.iter().find(|t| t.id == me).and_then(|t| t.hint_for.clone()) {
        return Some(WritePlan::CoordinateAsHint { owner, counts: true });
    }
    let first = targets.first()?;
    let owner = first.hint_for.clone().unwrap_or_else(|| first.id.clone());
    Some(WritePlan::CoordinateAsHint { owner, counts: false })
}

/// A replica's answer to a write: `Ok(durable)` when it stored it (and whether it synced
/// it), else why not, naming the replica.
pub(super) type ReplicaAnswer = Result<bool, String>;

/// The replicas' reasons for an error message: ` (n3: …; n4: …)`, or nothing.
fn because(why_not: &[String]) -> String {
    if why_not.is_empty() {
        String::new()
    } else {
        format!(" ({})", why_not.join("; "))
    }
}

/// Bytes a read holds against the budget for each remote answer before it has arrived; the
/// answer's real size is charged when it does.
pub const READ_ANSWER_FLOOR_BYTES: usize = 1024;

/// Where this node takes a write it does not forward: [`WritePlan::Coordinate`] or
/// [`WritePlan::CoordinateAsHint`].
enum Here {
    Coordinate,
    AsHint { owner: String, counts: bool },
}

/// What a write weighs against the node's budget ([`super::budget`]): its key, value,
/// context and operations (each one's element or item, and 8 bytes for a number). Pure.
pub fn write_bytes(key: &[u8], write: &Write) -> usize {
    let op_bytes = |op: &Op| match op {
        Op::CounterIncrement(_) => 8,
        Op::CounterReset | Op::SetClear | Op::CartClear => 0,
        Op::SetAdd(element) | Op::SetRemove(element) | Op::CartRemove(element) => element.len(),
        Op::CartAdd { item, .. } | Op::CartSetQuantity { item, .. } => item.len() + 8,
    };
    key.len()
        + match write {
            Write::Put { value, context } => value.len() + context.len(),
            Write::Delete { context } => context.len(),
            Write::Update { ops, context } => {
                ops.iter().map(op_bytes).sum::<usize>() + context.len()
            }
        }
}

/// What a write asked of W and DW (0 and `None` mean the bucket's), and whether the
/// bucket's engine is durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteQuorumAsked {
    /// The request's W, 0 for the bucket's.
    pub w: u8,
    /// The request's DW, `None` for the bucket's.
    pub dw: Option<u8>,
    /// Whether the bucket's engine keeps anything across restarts.
    pub durable: bool,
}

/// The W and DW a write waits for, with `replicas` targets. Pure.
///
/// The request's values replace the bucket's; W over N, DW over W, and DW on an engine that
/// keeps nothing are refused as bad requests. W means W copies on W distinct nodes: a ring
/// with fewer nodes for the key than W (a cluster smaller than W, or still settling) refuses
/// with `quorumNotMet` and says why, and nothing is stored; W is never bent down to the
/// replicas that exist. A node that has not yet heard from any other node while its seeds
/// name others (a node started on an empty disk, cut off from its seeds) cannot tell a
/// small cluster from a large one it has not reached, so it refuses any write the whole
/// ring's N would not fit until it has.
pub fn effective_write_quorum(
    bucket: &BucketConfig,
    asked: WriteQuorumAsked,
    replicas: usize,
    cluster_known: bool,
) -> Result<(usize, usize), Error> {
    let n = bucket.n as usize;
    let w = if asked.w == 0 { bucket.w } else { asked.w } as usize;
    let dw = asked.dw.unwrap_or(bucket.dw) as usize;
    if w > n {
        return Err(Error::BadRequest(format!("w = {w} is over the bucket's n = {n}")));
    }
    if dw > w {
        return Err(Error::BadRequest(format!("dw = {dw} is over w = {w}")));
    }
    if dw > 0 && !asked.durable {
        return Err(Error::BadRequest(format!(
            "dw = {dw} on a bucket whose {} engine keeps nothing across restarts",
            bucket.engine.name()
        )));
    }
    check_cluster_known(replicas, n, cluster_known)?;
    if w > replicas {
        return Err(Error::QuorumNotMet(format!(
            "w = {w} asks for {w} nodes to store the write, and the ring has {replicas} for \
             this key: start more nodes, wait for them to join, or write with a smaller w; \
             nothing was stored"
        )));
    }
    Ok((w, dw))
}

fn check_cluster_known(replicas: usize, n: usize, cluster_known: bool) -> Result<(), Error> {
    if replicas < n && !cluster_known {
        return Err(Error::QuorumNotMet(
            "this node has not heard from its seeds yet, so it cannot tell where the key's \
             replicas are: retry, or ask another node"
                .into(),
        ));
    }
    Ok(())
}

/// The R a read waits for, with `replicas` targets: the request's (0 for the bucket's), at
/// most N, and at most the replicas that exist, when the node knows the cluster (see
/// [`effective_write_quorum`]). Pure.
pub fn effective_read_quorum(
    bucket: &BucketConfig,
    r: u8,
    replicas: usize,
    cluster_known: bool,
) -> Result<usize, Error> {
    let n = bucket.n as usize;
    let r = if r == 0 { bucket.r } else { r } as usize;
    if r > n {
        return Err(Error::BadRequest(format!("r = {r} is over the bucket's n = {n}")));
    }
    check_cluster_known(replicas, n, cluster_known)?;
    Ok(r.min(replicas))
}

impl Cluster {
    /// Coordinate (or forward) a client write. See the module documentation.
    pub async fn write(
        self: &Rc<Self>,
        bucket: &str,
        key: &[u8],
        write: Write,
        options: WriteOptions,
    ) -> Result<Read, Error> {
        let bucket_ref = self.store.bucket(bucket)?;
        let engine = std::sync::Arc::clone(&bucket_ref.engine);
        let asked = WriteQuorumAsked { w: options.w, dw: options.dw, durable: engine.is_durable() };
        let n = bucket_ref.config.n as usize;
        // Refuse a bad request before the ring is consulted.
        effective_write_quorum(&bucket_ref.config, asked, n, true)?;
        self.store.check_key(key)?;
        let me = self.me();
        let targets = self.targets(bucket, key, n);
        let known = self.knows_cluster();
        let (w, dw) = effective_write_quorum(&bucket_ref.config, asked, targets.len(), known)
            .inspect_err(|e| self.warn_quorum_refusal(bucket, e))?;
        // Forward to a primary that can take the write; one whose storage failed answers
        // `unavailable` with nothing done, and one that cannot be reached (no connection:
        // nothing was sent) may have gone down since this node last heard of it: either way
        // the next primary is tried, or the write is kept as a hint.
        let mut unavailable: Vec<String> = Vec::new();
        let here = loop {
            let health = |id: &str| match unavailable.iter().any(|u| u == id) {
                true => Health::Down,
                false => self.health(id),
            };
            let plan = plan_write(&me, &targets, options.forwarded, !engine.failed(), health)
                .ok_or_else(|| Error::QuorumNotMet("no member is known to own the key".into()))?;
            match plan {
                WritePlan::Forward(primary) => {
                    match self.forward(&primary, bucket, key, &write, options).await {
                        Err(e @ (Error::Unavailable(_) | Error::Connect { .. })) => {
                            tracing::debug!(%primary, error = %e, "forwarded write not taken");
                            unavailable.push(primary);
                        }
                        answer => return answer,
                    }
                }
                WritePlan::Coordinate => break Here::Coordinate,
                WritePlan::CoordinateAsHint { owner, counts } => {
                    break Here::AsHint { owner, counts }
                }
            }
        };
        // Storage that failed takes nothing: say so with `unavailable` (nothing done, retry
        // elsewhere or later), not with the engine's I/O error.
        let storage = match here {
            Here::Coordinate => &engine,
            Here::AsHint { .. } => self.hints.engine(),
        };
        let cannot_store = || {
            Error::Unavailable(format!(
                "the storage for bucket {bucket} on {me} failed (a full disk?) and no other \
                 primary could take the write; nothing was stored"
            ))
        };
        if storage.failed() {
            return Err(cannot_store());
        }
        let stored_or_failed = |e: Error| if storage.failed() { cannot_store() } else { e };
        let timeout = self.timeout(options.timeout_ms);
        let mut quorum = WriteQuorum::new(targets.len().max(1), w, dw);
        // Each replica's answer: `Ok(durable)` when it stored the write (and whether it
        // synced it), else why it did not (named, for the error that fails the quorum).
        let (events, mut answers) = futures::channel::mpsc::unbounded::<ReplicaAnswer>();
        // DW counts synced copies, this node's own sync included: with dw = 1 this node syncs
        // its copy and the others only store (none of them delays the answer with an fsync);
        // only a DW this node's copy cannot cover asks the others to sync.
        let local_counts = match &here {
            Here::Coordinate => true,
            Here::AsHint { counts, .. } => *counts,
        };
        let remote_sync = dw > usize::from(local_counts);
        // The replication's bytes, reserved before anything is done (super::budget).
        let remote = targets.iter().filter(|t| t.id != me).count();
        let reserve = || {
            let bytes = remote * write_bytes(key, &write);
            self.budget().try_charge(bytes, "replicating a write")
        };
        // Apply the write and keep the new state on this node before anything yields, so no
        // other write to the key reads the state in between (crate::actors).
        // What the other replicas get: the write's delta where the resolver has one (a
        // state of its own, merged as one), else the new state (DESIGN §4, Resolver).
        let (sent, read, mut replication) = match here {
            Here::Coordinate => {
                let replication = reserve()?;
                let (sent, read) = self
                    .store
                    .coordinate(bucket, key, &write, options.return_body)
                    .map_err(stored_or_failed)?;
                if dw > 0 {
                    self.sync_then_answer(&engine, &events);
                } else {
                    quorum.stored(false);
                }
                (sent, read, replication)
            }
            Here::AsHint { owner, counts } => {
                let replication = reserve()?;
                let hinted = self.hinted_state(bucket, key)?;
                let written = self.store.write_as_hint(bucket, key, hinted.as_deref(), &write)?;
                let resolver = std::sync::Arc::clone(&self.store.bucket(bucket)?.resolver);
                let read = written.answer(&*resolver, options.return_body)?;
                self.check_hint_owner(&owner)?;
                self.hints
                    .add(&owner, bucket, key, &written.state, &*resolver)
                    .map_err(stored_or_failed)?;
                if counts && dw > 0 {
                    self.sync_then_answer(self.hints.engine(), &events);
                } else if counts {
                    quorum.stored(false);
                }
                (written.delta.unwrap_or(written.state), read, replication)
            }
        };
        // One copy of what is sent for every target's send.
        let sent = Rc::new(sent);
        let mut not_sent = 0usize;
        for target in targets.into_iter().filter(|t| t.id != me) {
            // What is sent may weigh more than the write reserved (a whole state, a large
            // clear's delta): the rest is charged now, and a target it does not fit for
            // counts as a failed replica.
            let charge = match replication.split(key.len() + sent.len(), "replicating a write") {
                Ok(charge) => charge,
                Err(e) => {
                    tracing::debug!(replica = %target.id, error = %e, "write not replicated");
                    not_sent += 1;
                    let _ = events.unbounded_send(Err(format!("{}: not sent", target.id)));
                    continue;
                }
            };
            let cluster = Rc::clone(self);
            let events = events.clone();
            let (bucket, key, sent) = (bucket.to_string(), key.to_vec(), Rc::clone(&sent));
            tokio::task::spawn_local(async move {
                let stored = cluster
                    .replicate_charged(&target, &bucket, &key, &sent, remote_sync, charge)
                    .await;
                let answer =
                    stored.map(|()| remote_sync).map_err(|e| format!("{}: {e}", target.id));
                let _ = events.unbounded_send(answer);
            });
        }
        // While the key's partition moves, its receivers store the write too, each of
        // them: with W of the serving replicas that makes W copies among the replicas that
        // serve it after the move ([`crate::ring::transition`]).
        let receivers = self.receivers(bucket, key, n);
        let mut receivers_waiting = receivers.len();
        let (receiver_events, mut receiver_answers) = futures::channel::mpsc::unbounded::<bool>();
        for receiver in receivers {
            let charge = match replication.split(key.len() + sent.len(), "replicating a write") {
                Ok(charge) => charge,
                Err(_) => {
                    let _ = receiver_events.unbounded_send(false);
                    continue;
                }
            };
            let cluster = Rc::clone(self);
            let events = receiver_events.clone();
            let (bucket, key, sent) = (bucket.to_string(), key.to_vec(), Rc::clone(&sent));
            let target = Target { id: receiver, hint_for: None };
            tokio::task::spawn_local(async move {
                let stored = cluster
                    .replicate_charged(&target, &bucket, &key, &sent, remote_sync, charge)
                    .await;
                let _ = events.unbounded_send(stored.is_ok());
            });
        }
        drop((events, receiver_events, replication));
        let not_sent = match not_sent {
            0 => String::new(),
            n => format!("; {n} not sent, over this node's in-flight budget"),
        };
        let deadline = tokio::time::Instant::now() + timeout;
        // Why each replica that did not store the write did not, for the error.
        let mut why_not: Vec<String> = Vec::new();
        let answer = 'answer: loop {
            while receivers_waiting > 0 {
                match tokio::time::timeout_at(deadline, receiver_answers.next()).await {
                    Ok(Some(true)) => receivers_waiting -= 1,
                    Ok(Some(false) | None) => {
                        break 'answer Err(Error::QuorumNotMet(
                            "a node taking over the key's partition did not store the write".into(),
                        ))
                    }
                    Err(_) => {
                        break 'answer Err(Error::Timeout(format!("no quorum within {timeout:?}")))
                    }
                }
            }
            match quorum.outcome() {
                Outcome::Succeeded => break Ok(read),
                Outcome::Failed => {
                    break Err(Error::QuorumNotMet(format!(
                        "{} of w = {w} (dw = {dw}) replicas stored the write{not_sent}{}",
                        quorum.stored_count(),
                        because(&why_not)
                    )))
                }
                Outcome::Pending => {}
            }
            match tokio::time::timeout_at(deadline, answers.next()).await {
                Err(_) => {
                    let why = because(&why_not);
                    break Err(Error::Timeout(format!("no quorum within {timeout:?}{why}")));
                }
                Ok(None) => {
                    break Err(Error::QuorumNotMet(format!(
                        "every replica answered; too few stored{not_sent}"
                    )))
                }
                Ok(Some(Ok(durable))) => {
                    quorum.stored(durable);
                }
                Ok(Some(Err(why))) => {
                    why_not.push(why);
                    quorum.failed();
                }
            }
        };
        self.metrics().write_quorum(bucket, &answer);
        answer
    }

    /// Log why writes are refused before anything is stored (W over the nodes the ring has for
    /// the key, a cluster not known yet), at most once every ten seconds: the client's error
    /// says it each time, the log says it to the operator.
    fn warn_quorum_refusal(&self, bucket: &str, error: &Error) {
        if !matches!(error, Error::QuorumNotMet(_)) {
            return;
        }
        let now = self.now_ms();
        let last = self.quorum_refusal_warned_ms.get();
        if last != 0 && now.saturating_sub(last) < 10_000 {
            return;
        }
        self.quorum_refusal_warned_ms.set(now.max(1));
        tracing::warn!(%bucket, %error, "writes refused before anything is stored");
    }

    /// Sync `engine` (shared with other waiting writes), then report the outcome on `events`.
    pub(super) fn sync_then_answer(
        self: &Rc<Self>,
        engine: &std::sync::Arc<dyn cartwheel_engines::StorageEngine>,
        events: &futures::channel::mpsc::UnboundedSender<ReplicaAnswer>,
    ) {
        let (cluster, engine, events) =
            (Rc::clone(self), std::sync::Arc::clone(engine), events.clone());
        tokio::task::spawn_local(async move {
            let synced = cluster.syncs.sync(&engine).await;
            let me = cluster.me();
            let _ = events.unbounded_send(synced.map(|()| true).map_err(|e| format!("{me}: {e}")));
        });
    }

    /// Coordinate a read: R answers, merged; then read repair in the background.
    pub async fn read(
        self: &Rc<Self>,
        bucket: &str,
        key: &[u8],
        options: ReadOptions,
    ) -> Result<Option<Read>, Error> {
        let bucket_ref = self.store.bucket(bucket)?;
        let (n, resolver) =
            (bucket_ref.config.n as usize, std::sync::Arc::clone(&bucket_ref.resolver));
        effective_read_quorum(&bucket_ref.config, options.r, n, true)?;
        self.store.check_key(key)?;
        let targets = self.targets(bucket, key, n);
        let known = self.knows_cluster();
        let r = effective_read_quorum(&bucket_ref.config, options.r, targets.len(), known)?;
        let timeout = self.timeout(options.timeout_ms);
        // The answers' bytes are held against the budget (super::budget): a floor per remote
        // target now, so that a read past the budget is refused before anything is asked,
        // and each answer's real size as it arrives.
        let me = self.me();
        let remote = targets.iter().filter(|t| t.id != me).count();
        let charge =
            self.budget().try_charge(remote * (key.len() + READ_ANSWER_FLOOR_BYTES), "a read")?;
        let (reply, replied) =
            futures::channel::oneshot::channel::<Result<Option<Vec<u8>>, Error>>();
        let cluster = Rc::clone(self);
        let (bucket_name, key) = (bucket.to_string(), key.to_vec());
        tokio::task::spawn_local(async move {
            cluster.read_and_repair(targets, r, &bucket_name, &key, timeout, reply, charge).await;
        });
        let merged = match replied.await {
            Ok(result) => result?,
            Err(_) => return Err(Error::Internal("read task ended without an answer".into())),
        };
        match merged {
            None => Ok(None),
            Some(state) => Ok(Some(resolver.read(&state)?)),
        }
    }

    /// Gather R answers for `key` from `targets`, reply with their merge, then repair the
    /// targets that answered stale. `charge` holds the answers' bytes against the budget
    /// until the repair is done; an answer that does not fit counts as failed, and a read
    /// that fails for that answers `overloaded` (a read changes nothing).
    #[allow(clippy::too_many_arguments)] // one read's parts, handed over to its own task
    pub(super) async fn read_and_repair(
        self: Rc<Self>,
        targets: Vec<Target>,
        r: usize,
        bucket: &str,
        key: &[u8],
        timeout: Duration,
        reply: futures::channel::oneshot::Sender<Result<Option<Vec<u8>>, Error>>,
        mut charge: super::budget::Charge,
    ) {
        let Ok(resolver) = self.store.bucket(bucket).map(|b| std::sync::Arc::clone(&b.resolver))
        else {
            let _ = reply.send(Err(Error::UnknownBucket(bucket.to_string())));
            return;
        };
        let me = self.me();
        let mut quorum: ReadQuorum<Target> = ReadQuorum::new(targets.len(), r);
        let mut pending = futures::stream::FuturesUnordered::new();
        for target in targets {
            let cluster = Rc::clone(&self);
            let me = me.clone();
            pending.push(async move {
                let answer = if target.id == me {
                    cluster.fetch_local(&target, bucket, key)
                } else {
                    // A state stamped too far ahead counts as no answer: it is not shown,
                    // and not repaired into anyone (crate::store::Store::check_incoming).
                    let fetched = cluster.fetch_remote(&target, bucket, key).await;
                    fetched.and_then(|state| {
                        if let Some(state) = &state {
                            cluster.store.check_incoming(bucket, state)?;
                        }
                        Ok(state)
                    })
                };
                (target, answer)
            });
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut reply = Some(reply);
        let merge = |a: &[u8], b: &[u8]| resolver.merge(a, b);
        let mut held = Vec::new();
        let mut over_budget = false;
        // Why each failed answer failed, for the error a failed read gives.
        let mut why_not = Vec::new();
        while !quorum.complete() {
            let Ok(Some((target, answer))) =
                tokio::time::timeout_at(deadline, pending.next()).await
            else {
                break;
            };
            let remote_bytes = match (&answer, target.id == me) {
                (Ok(Some(state)), false) => key.len() + state.len(),
                _ => 0,
            };
            let fits = match charge.split(remote_bytes, "a read's answers") {
                Ok(bytes) => {
                    held.push(bytes);
                    true
                }
                Err(_) => {
                    over_budget = true;
                    false
                }
            };
            match answer {
                Ok(state) if fits => {
                    quorum.answered(target, state);
                }
                Ok(_) => {
                    why_not.push(format!("{}: its answer is over the budget", target.id));
                    quorum.failed();
                }
                Err(e) => {
                    why_not.push(format!("{}: {e}", target.id));
                    quorum.failed();
                }
            }
            if reply.is_some() {
                let decided = match quorum.outcome() {
                    Outcome::Pending => None,
                    Outcome::Succeeded => Some(quorum.merged(merge).map_err(Error::from)),
                    Outcome::Failed if over_budget => Some(Err(Error::Overloaded(format!(
                        "the answers of r = {r} replicas do not fit this node's in-flight \
                         budget now: retry later"
                    )))),
                    Outcome::Failed => Some(Err(Error::QuorumNotMet(format!(
                        "fewer than r = {r} replicas answered{}",
                        because(&why_not)
                    )))),
                };
                if let Some(result) = decided {
                    self.metrics().read_quorum(bucket, &result);
                    let _ = reply.take().expect("checked").send(result);
                }
            }
        }
        if let Some(reply) = reply {
            let timed_out = Err(Error::Timeout(format!(
                "fewer than r = {r} replicas answered within {timeout:?}"
            )));
            self.metrics().read_quorum(bucket, &timed_out);
            let _ = reply.send(timed_out);
        }
        // Read repair: everyone who answered with something other than the merge gets it.
        let Ok(Some(merged)) = quorum.merged(merge) else { return };
        for target in quorum.stale(&merged) {
            self.metrics().read_repair(bucket);
            if target.id == me {
                // A fallback's repair goes to its hint, never into a stray copy.
                let hint_for = target.hint_for.as_deref().unwrap_or("");
                if let Err(e) = self.receive_replica(bucket, key, &merged, hint_for) {
                    tracing::warn!(error = %e, "local read repair failed");
                }
            } else {
                tracing::debug!(replica = %target.id, "read repair");
                self.replicate(&target, bucket, key, &merged, false).await;
            }
        }
    }

    /// The local state for a key (merged with any hint this node holds for it when it stands
    /// in for `target.hint_for`).
    pub(super) fn fetch_local(
        &self,
        target: &Target,
        bucket: &str,
        key: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        let stored = self.store.fetch(bucket, key)?;
        match &target.hint_for {
            None => Ok(stored),
            Some(owner) => {
                let hinted = self.hints.get(owner, bucket, key)?;
                let resolver = &self.store.bucket(bucket)?.resolver;
                Ok(match (stored, hinted) {
                    (Some(a), Some(b)) => Some(resolver.merge(&a, &b)?),
                    (a, b) => a.or(b),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Down primaries are replaced by the next healthy fallbacks, each with a hint; suspect
    /// ones are still tried.
    #[test]
    fn sloppy_quorum_targets() {
        let preference = ["a", "b", "c", "d", "e"];
        let health = |id: &str| match id {
            "b" => Health::Down,
            "c" => Health::Suspect,
            "d" => Health::Down,
            _ => Health::Up,
        };
        let targets = plan_targets(&preference, 3, health);
        assert_eq!(
            targets,
            vec![
                Target { id: "a".into(), hint_for: None },
                Target { id: "e".into(), hint_for: Some("b".into()) },
                Target { id: "c".into(), hint_for: None },
            ]
        );
    }

    fn target(id: &str, hint_for: Option<&str>) -> Target {
        Target { id: id.into(), hint_for: hint_for.map(str::to_string) }
    }

    /// A primary coordinates; a node that is not one forwards to the first primary it sees
    /// up, never to a suspect or down one, and never a write that was forwarded already.
    #[test]
    fn writes_are_coordinated_at_a_primary() {
        let targets = [target("a", None), target("b", None), target("c", None)];
        let up = |_: &str| Health::Up;
        assert_eq!(plan_write("b", &targets, false, true, up), Some(WritePlan::Coordinate));
        // A primary whose engine failed forwards to another primary, as a non-primary would;
        // with none up, it coordinates (and answers with its engine's error).
        assert_eq!(
            plan_write("b", &targets, false, false, up),
            Some(WritePlan::Forward("a".into()))
        );
        let only_b = |id: &str| if id == "b" { Health::Up } else { Health::Down };
        assert_eq!(plan_write("b", &targets, false, false, only_b), Some(WritePlan::Coordinate));
        assert_eq!(plan_write("b", &targets, true, true, up), Some(WritePlan::Coordinate));
        assert_eq!(
            plan_write("x", &targets, false, true, up),
            Some(WritePlan::Forward("a".into()))
        );
        let a_suspect = |id: &str| if id == "a" { Health::Suspect } else { Health::Up };
        assert_eq!(
            plan_write("x", &targets, false, true, a_suspect),
            Some(WritePlan::Forward("b".into()))
        );
    }

    /// A node that no primary can take the write from keeps it as a hint: counting toward W
    /// when it is a fallback target itself, for the first primary otherwise.
    #[test]
    fn a_write_no_primary_takes_is_kept_as_a_hint() {
        let targets = [target("d", Some("a")), target("e", Some("b")), target("c", None)];
        let only_fallbacks_up =
            |id: &str| if "de".contains(id) { Health::Up } else { Health::Down };
        assert_eq!(
            plan_write("e", &targets, false, true, only_fallbacks_up),
            Some(WritePlan::CoordinateAsHint { owner: "b".into(), counts: true })
        );
        assert_eq!(
            plan_write("x", &targets, false, true, only_fallbacks_up),
            Some(WritePlan::CoordinateAsHint { owner: "a".into(), counts: false })
        );
        // Forwarded here although this node is no primary (the views differ): no second hop.
        let up = |_: &str| Health::Up;
        assert_eq!(
            plan_write("x", &targets, true, true, up),
            Some(WritePlan::CoordinateAsHint { owner: "a".into(), counts: false })
        );
        assert_eq!(plan_write("x", &[], false, true, up), None);
    }

    /// W and DW: the request's replace the bucket's, bad combinations are refused, and a
    /// cluster with fewer nodes for the key than W refuses: W is never bent down.
    #[test]
    fn effective_write_quorum_bends_to_the_request_never_to_the_cluster() {
        use cartwheel_engines::EngineKind;
        use cartwheel_resolvers::ResolverKind;
        let mut bucket = BucketConfig::new(EngineKind::Log, ResolverKind::Cart);
        (bucket.n, bucket.w, bucket.dw) = (3, 2, 1);
        let asked = |w, dw| WriteQuorumAsked { w, dw, durable: true };
        assert_eq!(effective_write_quorum(&bucket, asked(0, None), 3, true).unwrap(), (2, 1));
        assert_eq!(effective_write_quorum(&bucket, asked(3, Some(0)), 3, true).unwrap(), (3, 0));
        for (w, replicas) in [(3, 2), (2, 1), (1, 0)] {
            let err = effective_write_quorum(&bucket, asked(w, Some(0)), replicas, true);
            assert!(matches!(err, Err(Error::QuorumNotMet(_))), "w = {w}: {err:?}");
        }
        assert_eq!(effective_write_quorum(&bucket, asked(1, Some(1)), 1, true).unwrap(), (1, 1));
        for refused in [asked(4, None), asked(1, Some(2))] {
            let err = effective_write_quorum(&bucket, refused, 3, true).unwrap_err();
            assert!(matches!(err, Error::BadRequest(_)), "{err:?}");
        }
        let volatile = WriteQuorumAsked { w: 0, dw: None, durable: false };
        assert!(matches!(
            effective_write_quorum(&bucket, volatile, 3, true),
            Err(Error::BadRequest(_))
        ));
        let volatile = WriteQuorumAsked { dw: Some(0), ..volatile };
        assert_eq!(effective_write_quorum(&bucket, volatile, 3, true).unwrap(), (2, 0));
    }

    /// A node that has not heard from its seeds does not take a small cluster for the whole
    /// cluster: it refuses rather than acknowledging alone; with the cluster known, a write
    /// that one node can hold (w = 1) is taken.
    #[test]
    fn a_node_that_does_not_know_the_cluster_does_not_clamp() {
        use cartwheel_engines::EngineKind;
        use cartwheel_resolvers::ResolverKind;
        let bucket = BucketConfig::new(EngineKind::Log, ResolverKind::Cart);
        let asked = WriteQuorumAsked { w: 0, dw: None, durable: true };
        let err = effective_write_quorum(&bucket, asked, 1, false).unwrap_err();
        assert!(matches!(err, Error::QuorumNotMet(_)), "{err:?}");
        assert!(matches!(effective_read_quorum(&bucket, 0, 1, false), Err(Error::QuorumNotMet(_))));
        let one = WriteQuorumAsked { w: 1, ..asked };
        assert!(matches!(
            effective_write_quorum(&bucket, one, 1, false),
            Err(Error::QuorumNotMet(_))
        ));
        assert_eq!(effective_write_quorum(&bucket, one, 1, true).unwrap(), (1, 0));
        assert_eq!(effective_write_quorum(&bucket, asked, 3, false).unwrap(), (2, 0));
    }

    /// R: the request's or the bucket's, never over N, clamped to the replicas that exist.
    #[test]
    fn effective_read_quorum_bends_to_the_request_and_the_cluster() {
        use cartwheel_engines::EngineKind;
        use cartwheel_resolvers::ResolverKind;
        let mut bucket = BucketConfig::new(EngineKind::Log, ResolverKind::Cart);
        (bucket.n, bucket.r) = (3, 2);
        assert_eq!(effective_read_quorum(&bucket, 0, 3, true).unwrap(), 2);
        assert_eq!(effective_read_quorum(&bucket, 3, 2, true).unwrap(), 2);
        assert!(matches!(effective_read_quorum(&bucket, 4, 3, true), Err(Error::BadRequest(_))));
    }

    /// A write weighs its key, value, context and operations.
    #[test]
    fn a_write_weighs_its_bytes() {
        let put = Write::Put { value: vec![0; 1000], context: vec![0; 20] };
        assert_eq!(write_bytes(b"key", &put), 1023);
        assert_eq!(write_bytes(b"key", &Write::Delete { context: vec![0; 20] }), 23);
        let ops = vec![
            Op::CounterIncrement(1),
            Op::SetAdd(vec![0; 10]),
            Op::CartAdd { item: vec![0; 5], quantity: 2 },
        ];
        assert_eq!(write_bytes(b"", &Write::Update { ops, context: vec![] }), 8 + 10 + 13);
    }

    /// With no healthy fallback, the down primary stays (and will fail); small clusters get
    /// fewer than N targets.
    #[test]
    fn no_fallback_left() {
        let targets =
            plan_targets(&["a", "b"], 3, |id| if id == "b" { Health::Down } else { Health::Up });
        assert_eq!(targets.len(), 2);
        assert_eq!(targets[1], Target { id: "b".into(), hint_for: None });
    }
}
