//! # The capabilities a connection is given: the gate, the client API and the peer API
//!
//! A connection starts with the [`Gate`] (src/security: it can only authenticate). A login
//! returns [`Api`], the client API scoped to the token's grants; a member's certificate opens
//! [`PeerApi`], the node-to-node API. Each call is admitted under the connection's in-flight
//! bound and the node's byte budget, decoded, handed to [`crate::cluster::Cluster`], and its
//! answer encoded; refusals are typed errors. The accept loop, the connection limits and the
//! stopping order are in [`super::server`].

use std::cell::Cell;
use std::rc::Rc;
use std::time::Instant;

use cartwheel_resolvers::{Op, Read, Write};

use super::server::{Connection, Shared};
use crate::cartwheel_capnp::{
    cartwheel, fetch_result, gate, peer, peer_call, replica_result, write_result, NodeState,
};
use crate::cluster::budget::Charge;
use crate::cluster::coordinator::write_bytes;
use crate::error::Error;
use crate::metrics::Operation;
use crate::node::wire::{self, ReadOptions};
use crate::security::token::{self, Grants, Right};

/// One connection's view of the node: the client API, scoped to the grants it logged in
/// with, under the connection's in-flight bound.
struct Api {
    shared: Rc<Shared>,
    conn: Rc<Connection>,
    grants: Rc<Grants>,
}

/// Holds one in-flight slot of a connection, and the call's bytes of the node's budget,
/// until dropped.
struct Admitted {
    slot: Rc<Cell<usize>>,
    _charge: Charge,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.slot.set(self.slot.get() - 1);
    }
}

impl Api {
    /// Take an in-flight slot and `bytes` of the node's budget for a call, once the token is
    /// known not to be revoked. Either bound refuses at once with `overloaded` (counted in
    /// `requestsRefused`), and then nothing is done for the call.
    fn admit(&self, bytes: usize) -> Result<Admitted, Error> {
        let id = &self.grants.id;
        if !id.is_empty() && self.shared.cluster.is_token_revoked(id) {
            return Err(Error::Unauthorized(format!("token {id} was revoked")));
        }
        let inflight = &self.conn.inflight;
        self.conn.last_call.set(Instant::now());
        let limits = self.shared.store().limits();
        let max = match self.conn.peer.get() {
            true => limits.inflight_per_peer_connection_max,
            false => limits.inflight_per_connection_max,
        };
        let admitted = if inflight.get() >= max {
            Err(Error::Overloaded(format!("{max} requests in flight on this connection")))
        } else {
            self.shared.cluster.budget().try_charge(bytes, "this request")
        };
        let charge = admitted.inspect_err(|_| self.shared.refused())?;
        inflight.set(inflight.get() + 1);
        self.shared.requests_served.set(self.shared.requests_served.get() + 1);
        Ok(Admitted { slot: Rc::clone(inflight), _charge: charge })
    }

    /// [`Api::admit`], for a call that needs `right` on `bucket`.
    fn admit_on(&self, bucket: &str, right: Right, bytes: usize) -> Result<Admitted, Error> {
        let admitted = self.admit(bytes)?;
        self.grants.check(bucket, right)?;
        Ok(admitted)
    }

    /// [`Api::admit`], for a call that needs the admin grant (and brings no data).
    fn admit_admin(&self, what: &str) -> Result<Admitted, Error> {
        let admitted = self.admit(0)?;
        self.grants.check_admin(what)?;
        Ok(admitted)
    }

    /// Coordinate a client write admitted with its bytes; a refusal further in (the
    /// replication's reservation, a full hint store) is counted in `requestsRefused` too.
    async fn write(
        &self,
        bucket: &str,
        key: &[u8],
        write: Write,
        options: wire::WriteOptions,
    ) -> Result<Read, Error> {
        let outcome = self.shared.cluster.write(bucket, key, write, options).await;
        if let Err(Error::Overloaded(_)) = &outcome {
            self.shared.refused();
        }
        outcome
    }

    /// The same connection's client API with every grant (a member's).
    fn for_member(&self) -> Api {
        Api::new(&self.shared, &self.conn, Grants::all())
    }

    /// The client API of connection `conn`, scoped to `grants`.
    fn new(shared: &Rc<Shared>, conn: &Rc<Connection>, grants: Grants) -> Api {
        Api { shared: Rc::clone(shared), conn: Rc::clone(conn), grants: Rc::new(grants) }
    }
}

fn text(reader: capnp::Result<capnp::text::Reader<'_>>, what: &str) -> Result<String, Error> {
    reader
        .map_err(wire::bad)?
        .to_string()
        .map_err(|_| Error::BadRequest(format!("{what} is not UTF-8")))
}

fn fill_write_result(
    result: write_result::Builder<'_>,
    outcome: Result<Read, Error>,
    return_body: bool,
) {
    match outcome {
        Ok(read) => {
            let mut ok = result.init_ok();
            ok.set_context(&read.context);
            if let (true, Some(shown)) = (return_body, &read.value) {
                wire::set_value(ok.init_value(), &read.context, shown);
            }
        }
        Err(e) => wire::set_error(result.init_error(), &e),
    }
}

impl cartwheel::Server for Api {
    async fn get(
        self: Rc<Self>,
        params: cartwheel::GetParams,
        mut results: cartwheel::GetResults,
    ) -> Result<(), capnp::Error> {
        let request = self.shared.cluster.metrics().request(Operation::Get);
        let outcome = async {
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            request.bucket(&bucket);
            let key = p.get_key().map_err(wire::bad)?;
            let _admitted = self.admit_on(&bucket, Right::Read, key.len())?;
            let key = key.to_vec();
            let o = p.get_options().map_err(wire::bad)?;
            let options = ReadOptions { r: o.get_r(), timeout_ms: o.get_timeout_ms() };
            self.shared.cluster.read(&bucket, &key, options).await
        }
        .await;
        request.end(&outcome);
        let mut result = results.get().init_result();
        match outcome {
            Ok(None) => result.set_not_found(&[]),
            Ok(Some(Read { context, value: None })) => result.set_not_found(&context),
            Ok(Some(Read { context, value: Some(shown) })) => {
                wire::set_value(result.init_found(), &context, &shown)
            }
            Err(e) => wire::set_error(result.init_error(), &e),
        }
        Ok(())
    }

    async fn put(
        self: Rc<Self>,
        params: cartwheel::PutParams,
        mut results: cartwheel::PutResults,
    ) -> Result<(), capnp::Error> {
        let mut return_body = false;
        let request = self.shared.cluster.metrics().request(Operation::Put);
        let outcome = async {
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            request.bucket(&bucket);
            let key = p.get_key().map_err(wire::bad)?;
            let value = p.get_value().map_err(wire::bad)?;
            let context = p.get_context().map_err(wire::bad)?;
            // The value is held from here until answered (in the message, then decoded).
            let bytes = key.len() + value.len() + context.len();
            let _admitted = self.admit_on(&bucket, Right::Write, bytes)?;
            // Check before copying: an oversized value is refused without a second copy.
            self.shared.store().check_value(value)?;
            let write = Write::Put { value: value.to_vec(), context: context.to_vec() };
            let options = wire::get_write_options(p.get_options())?;
            return_body = options.return_body;
            self.write(&bucket, key, write, options).await
        }
        .await;
        request.end(&outcome);
        fill_write_result(results.get().init_result(), outcome, return_body);
        Ok(())
    }

    async fn delete(
        self: Rc<Self>,
        params: cartwheel::DeleteParams,
        mut results: cartwheel::DeleteResults,
    ) -> Result<(), capnp::Error> {
        let mut return_body = false;
        let request = self.shared.cluster.metrics().request(Operation::Delete);
        let outcome = async {
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            request.bucket(&bucket);
            let key = p.get_key().map_err(wire::bad)?;
            let context = p.get_context().map_err(wire::bad)?;
            let _admitted = self.admit_on(&bucket, Right::Write, key.len() + context.len())?;
            let write = Write::Delete { context: context.to_vec() };
            let options = wire::get_write_options(p.get_options())?;
            return_body = options.return_body;
            self.write(&bucket, key, write, options).await
        }
        .await;
        request.end(&outcome);
        fill_write_result(results.get().init_result(), outcome, return_body);
        Ok(())
    }

    async fn update(
        self: Rc<Self>,
        params: cartwheel::UpdateParams,
        mut results: cartwheel::UpdateResults,
    ) -> Result<(), capnp::Error> {
        let mut return_body = false;
        let request = self.shared.cluster.metrics().request(Operation::Update);
        let outcome = async {
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            request.bucket(&bucket);
            let key = p.get_key().map_err(wire::bad)?;
            let ops = p.get_ops().map_err(wire::bad)?;
            if ops.is_empty() {
                return Err(Error::BadRequest("update carries no operations".to_string()));
            }
            let ops = ops.iter().map(wire::get_op).collect::<Result<Vec<Op>, Error>>()?;
            let context = p.get_context().map_err(wire::bad)?.to_vec();
            let write = Write::Update { ops, context };
            let _admitted = self.admit_on(&bucket, Right::Write, write_bytes(key, &write))?;
            let options = wire::get_write_options(p.get_options())?;
            return_body = options.return_body;
            self.write(&bucket, key, write, options).await
        }
        .await;
        request.end(&outcome);
        fill_write_result(results.get().init_result(), outcome, return_body);
        Ok(())
    }

    async fn ring(
        self: Rc<Self>,
        _: cartwheel::RingParams,
        mut results: cartwheel::RingResults,
    ) -> Result<(), capnp::Error> {
        let _admitted = match self.admit_admin("ring") {
            Ok(admitted) => admitted,
            Err(e) => {
                wire::set_error(results.get().init_error(), &e);
                return Ok(());
            }
        };
        let cluster = &self.shared.cluster;
        let members = cluster.members();
        let addresses = |id: &str| {
            members
                .iter()
                .find(|(m, _)| m.id == id)
                .map(|(m, _)| m.address.clone())
                .unwrap_or_default()
        };
        let mut ring = results.get().init_ring();
        wire::set_ring(ring.reborrow(), &cluster.ring(), &addresses);
        let mut nodes = ring.get_nodes()?;
        for i in 0..nodes.len() {
            let mut node = nodes.reborrow().get(i);
            let id = node.reborrow_as_reader().get_id()?.to_string().unwrap_or_default();
            let state =
                members.iter().find(|(m, _)| m.id == id).map_or(NodeState::Down, |(m, health)| {
                    cluster.member_state(&id, *health, m.leaving)
                });
            node.set_state(state);
        }
        Ok(())
    }

    async fn status(
        self: Rc<Self>,
        _: cartwheel::StatusParams,
        mut results: cartwheel::StatusResults,
    ) -> Result<(), capnp::Error> {
        let _admitted = match self.admit_admin("status") {
            Ok(admitted) => admitted,
            Err(e) => {
                wire::set_error(results.get().init_error(), &e);
                return Ok(());
            }
        };
        let shared = &self.shared;
        let cluster = &shared.cluster;
        let store = shared.store();
        let ring = cluster.ring();
        let hint_counts = cluster.hints().counts();
        let mut status = results.get().init_status();
        status.set_node_id(store.node_id());
        status.set_address(shared.address.to_string());
        status.set_version(env!("CARGO_PKG_VERSION"));
        status.set_uptime_ms(shared.started.elapsed().as_millis() as u64);
        status.set_requests_served(shared.requests_served.get());
        status.set_requests_refused(shared.requests_refused.get());
        let connections = shared.connections.borrow();
        status.set_connections(connections.open.len() as u32);
        status.set_connections_unauthenticated(connections.unauthenticated() as u32);
        drop(connections);
        status.set_security(if shared.security.is_some() { "tls" } else { "insecure" });
        status.set_states_refused(cluster.states_refused());
        status.set_config_digest(&shared.config_digest);
        status.set_ring_epoch(ring.epoch);
        status.set_hints_refused(cluster.hints().refused());
        let mismatches = cluster.config_mismatches();
        let mut list = status.reborrow().init_config_mismatches(mismatches.len() as u32);
        for (i, id) in mismatches.iter().enumerate() {
            list.set(i as u32, id.as_str());
        }
        let members = cluster.members();
        let mut list = status.reborrow().init_members(members.len() as u32);
        for (i, (member, health)) in members.iter().enumerate() {
            let mut info = list.reborrow().get(i as u32);
            info.set_id(member.id.as_str());
            info.set_address(member.address.as_str());
            info.set_state(cluster.member_state(&member.id, *health, member.leaving));
            info.set_partitions_owned(ring.owned_by(&member.id) as u32);
            info.set_hints_queued(hint_counts.get(&member.id).copied().unwrap_or(0));
            info.set_data_bytes(member.data_bytes);
        }
        status.set_claimant(cluster.claimant().unwrap_or_default());
        status.set_partitions(ring.partitions());
        let progress = cluster.anti_entropy_progress();
        let mut ae = status.reborrow().init_anti_entropy();
        ae.set_exchanges(progress.exchanges);
        ae.set_keys_received(progress.keys_received);
        ae.set_keys_sent(progress.keys_sent);
        let ago = progress.last_exchange.map_or(0, |t| t.elapsed().as_millis().max(1) as u64);
        ae.set_last_exchange_ms_ago(ago);
        ae.set_tombstones_collected(progress.tombstones_collected);
        ae.set_late_states_dropped(store.states_fenced());
        let transfers = cluster.transfers();
        let mut t = status.reborrow().init_transfers();
        if let Some(next) = &ring.next {
            t.set_transition(next.id);
            t.set_moving(ring.moving() as u32);
            if transfers.transition == next.id {
                t.set_receiving(transfers.receiving as u32);
                t.set_held(transfers.held as u32);
                t.set_segments_copied(transfers.segments);
                t.set_keys_copied(transfers.keys);
                t.set_bytes_copied(transfers.bytes);
                let elapsed = transfers.started.map_or(0, |s| s.elapsed().as_millis() as u64);
                t.set_elapsed_ms(elapsed);
                t.set_waiting(transfers.waiting.as_deref().unwrap_or(""));
                let mut running = t.init_running(transfers.running.len() as u32);
                for (i, p) in transfers.running.iter().enumerate() {
                    running.set(i as u32, *p);
                }
            }
        }
        let buckets: Vec<_> = store.buckets().collect();
        let mut list = status.init_buckets(buckets.len() as u32);
        for (i, bucket) in buckets.iter().enumerate() {
            let stats = bucket.engine.stats();
            let mut info = list.reborrow().get(i as u32);
            info.set_name(&bucket.name);
            info.set_engine(bucket.config.engine.name());
            info.set_resolver(bucket.config.resolver.name());
            info.set_n(bucket.config.n);
            info.set_r(bucket.config.r);
            info.set_w(bucket.config.w);
            info.set_dw(bucket.config.dw);
            info.set_entries(stats.entries);
            info.set_live_bytes(stats.live_bytes);
            info.set_dead_bytes(stats.dead_bytes);
            info.set_memory_bytes(stats.memory_bytes);
            info.set_durable(bucket.engine.is_durable());
            info.set_sibling_warnings(
                bucket.sibling_warnings.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        Ok(())
    }

    async fn cluster(
        self: Rc<Self>,
        params: cartwheel::ClusterParams,
        mut results: cartwheel::ClusterResults,
    ) -> Result<(), capnp::Error> {
        let outcome = (|| {
            let _admitted = self.admit_admin("changing the cluster")?;
            let request = params.get().map_err(wire::bad)?.get_request().map_err(wire::bad)?;
            let request = wire::get_cluster_request(request)?;
            self.shared.cluster.cluster_request(&request)
        })();
        match outcome {
            Ok(answer) => wire::set_cluster_answer(results.get().init_answer(), &answer),
            Err(e) => wire::set_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn peer(
        self: Rc<Self>,
        _: cartwheel::PeerParams,
        _: cartwheel::PeerResults,
    ) -> Result<(), capnp::Error> {
        Err(capnp::Error::failed(
            "forbidden: the node-to-node API is reached through Gate.peer, by members only".into(),
        ))
    }

    async fn create_token(
        self: Rc<Self>,
        params: cartwheel::CreateTokenParams,
        mut results: cartwheel::CreateTokenResults,
    ) -> Result<(), capnp::Error> {
        let outcome = (|| {
            let _admitted = self.admit_admin("creating a token")?;
            let grants =
                Grants::parse(&text(params.get().map_err(wire::bad)?.get_grants(), "grants")?)?;
            let Some(security) = &self.shared.security else {
                return Err(Error::BadRequest(
                    "this node runs in insecure mode: every token logs in with every grant".into(),
                ));
            };
            token::mint(security.keys().token_key(), &grants)
        })();
        match outcome {
            Ok((token, id)) => {
                tracing::info!(%id, "token created");
                results.get().set_token(token);
                results.get().set_id(id);
            }
            Err(e) => wire::set_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn revoke_token(
        self: Rc<Self>,
        params: cartwheel::RevokeTokenParams,
        mut results: cartwheel::RevokeTokenResults,
    ) -> Result<(), capnp::Error> {
        let outcome = (|| {
            let _admitted = self.admit_admin("revoking a token")?;
            let id = text(params.get().map_err(wire::bad)?.get_id(), "id")?;
            self.shared.cluster.revoke_token(&id)?;
            tracing::info!(%id, "token revoked");
            Ok::<(), Error>(())
        })();
        if let Err(e) = outcome {
            wire::set_error(results.get().init_error(), &e);
        }
        Ok(())
    }
}

/// A connection's bootstrap capability: it can only authenticate (see src/security).
pub(super) struct Gate {
    pub(super) shared: Rc<Shared>,
    pub(super) conn: Rc<Connection>,
    /// Who is on the other end.
    pub(super) caller: Caller,
}

/// Who is on the other end of a connection, as its TLS handshake proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Caller {
    /// A member: its certificate, signed by the cluster's CA, names this node id.
    Member(String),
    /// No certificate: a client.
    Anonymous,
    /// Insecure mode: anyone may be a member, and nobody's identity is known.
    Insecure,
}

impl gate::Server for Gate {
    async fn login(
        self: Rc<Self>,
        params: gate::LoginParams,
        mut results: gate::LoginResults,
    ) -> Result<(), capnp::Error> {
        let shared = &self.shared;
        let outcome = (|| {
            let token = text(params.get().map_err(wire::bad)?.get_token(), "token")?;
            let Some(security) = &shared.security else {
                return Ok(Grants::all());
            };
            let grants = token::verify(security.keys().token_key(), &token)?;
            if shared.cluster.is_token_revoked(&grants.id) {
                return Err(Error::Unauthorized(format!("token {} was revoked", grants.id)));
            }
            Ok(grants)
        })();
        match outcome {
            Ok(grants) => {
                self.conn.logged_in(shared);
                let api = Api::new(shared, &self.conn, grants);
                results.get().set_node(capnp_rpc::new_client(api));
            }
            Err(e) => {
                tracing::debug!(error = %e, "login refused");
                wire::set_error(results.get().init_error(), &e);
            }
        }
        Ok(())
    }

    async fn peer(
        self: Rc<Self>,
        params: gate::PeerParams,
        mut results: gate::PeerResults,
    ) -> Result<(), capnp::Error> {
        if self.caller == Caller::Anonymous {
            let e = Error::Unauthorized(
                "the node-to-node API needs a certificate from the cluster's CA".into(),
            );
            wire::set_error(results.get().init_error(), &e);
            return Ok(());
        }
        // Only logged: the certificate, not the message, says who the caller is.
        let claimed = text(params.get()?.get_from(), "from").unwrap_or_default();
        tracing::debug!(%claimed, caller = ?self.caller, "peer session opened");
        self.conn.logged_in(&self.shared);
        self.conn.peer.set(true);
        let api = Api::new(&self.shared, &self.conn, Grants::all());
        let from = match &self.caller {
            Caller::Member(id) => Some(id.clone()),
            Caller::Anonymous | Caller::Insecure => None,
        };
        results.get().set_peer(capnp_rpc::new_client(PeerApi { api, from }));
        Ok(())
    }
}

/// The outcome of one call of a `Peer.batch`.
enum Answer {
    Replicate(Result<(), Error>),
    Fetch(Result<Option<Vec<u8>>, Error>),
}

/// The node-to-node API of one connection; shares the connection's in-flight bound.
struct PeerApi {
    api: Api,
    /// The calling member's node id, as its certificate names it (none in insecure mode:
    /// then no caller is taken at its word).
    from: Option<String>,
}

impl PeerApi {
    /// One `replicate`, single or in a batch: admitted (its state held until stored, and
    /// synced if asked), then merged or kept as a hint.
    async fn replicate_one(
        &self,
        bucket: capnp::Result<capnp::text::Reader<'_>>,
        key: capnp::Result<&[u8]>,
        state: capnp::Result<&[u8]>,
        hint_for: capnp::Result<capnp::text::Reader<'_>>,
        sync: bool,
    ) -> Result<(), Error> {
        let (key, state) = (key.map_err(wire::bad)?, state.map_err(wire::bad)?);
        let _admitted = self.api.admit(key.len() + state.len())?;
        let bucket = text(bucket, "bucket")?;
        let hint_for = text(hint_for, "hintFor")?;
        let cluster = &self.api.shared.cluster;
        cluster.receive_replica_synced(&bucket, key, state, &hint_for, sync).await
    }

    /// One `fetch`, single or in a batch.
    fn fetch_one(
        &self,
        bucket: capnp::Result<capnp::text::Reader<'_>>,
        key: capnp::Result<&[u8]>,
    ) -> Result<Option<Vec<u8>>, Error> {
        let key = key.map_err(wire::bad)?;
        let _admitted = self.api.admit(key.len())?;
        let bucket = text(bucket, "bucket")?;
        self.api.shared.cluster.fetch_for_peer(&bucket, key)
    }
}

/// A `replicate` outcome as its answer says it.
fn set_replica_result(mut result: replica_result::Builder<'_>, outcome: &Result<(), Error>) {
    match outcome {
        Ok(()) => result.set_stored(true),
        Err(e) => wire::set_error(result.init_error(), e),
    }
}

/// A `fetch` outcome as its answer says it.
fn set_fetch_result(
    mut result: fetch_result::Builder<'_>,
    outcome: &Result<Option<Vec<u8>>, Error>,
) {
    match outcome {
        Ok(None) => result.set_not_found(()),
        Ok(Some(state)) => result.set_state(state),
        Err(e) => wire::set_error(result.init_error(), e),
    }
}

impl peer::Server for PeerApi {
    async fn replicate(
        self: Rc<Self>,
        params: peer::ReplicateParams,
        mut results: peer::ReplicateResults,
    ) -> Result<(), capnp::Error> {
        let outcome = match params.get() {
            Ok(p) => {
                let (bucket, hint_for) = (p.get_bucket(), p.get_hint_for());
                self.replicate_one(bucket, p.get_key(), p.get_state(), hint_for, p.get_sync()).await
            }
            Err(e) => Err(wire::bad(e)),
        };
        set_replica_result(results.get().init_result(), &outcome);
        Ok(())
    }

    async fn fetch(
        self: Rc<Self>,
        params: peer::FetchParams,
        mut results: peer::FetchResults,
    ) -> Result<(), capnp::Error> {
        let outcome = match params.get() {
            Ok(p) => self.fetch_one(p.get_bucket(), p.get_key()),
            Err(e) => Err(wire::bad(e)),
        };
        set_fetch_result(results.get().init_result(), &outcome);
        Ok(())
    }

    async fn batch(
        self: Rc<Self>,
        params: peer::BatchParams,
        mut results: peer::BatchResults,
    ) -> Result<(), capnp::Error> {
        let calls = match params.get().and_then(|p| p.get_calls()) {
            Ok(calls) => calls,
            Err(e) => {
                wire::set_error(results.get().init_error(), &wire::bad(e));
                return Ok(());
            }
        };
        // Every call's store happens in order on the first poll (a store does not wait);
        // only the syncs asked for are waited on, together.
        let outcomes = futures::future::join_all(calls.iter().map(|call| {
            let this = &self;
            async move {
                match call.which() {
                    Ok(peer_call::Replicate(p)) => {
                        let (bucket, hint_for) = (p.get_bucket(), p.get_hint_for());
                        let (key, state, sync) = (p.get_key(), p.get_state(), p.get_sync());
                        Answer::Replicate(
                            this.replicate_one(bucket, key, state, hint_for, sync).await,
                        )
                    }
                    Ok(peer_call::Fetch(p)) => {
                        Answer::Fetch(this.fetch_one(p.get_bucket(), p.get_key()))
                    }
                    Err(e) => Answer::Replicate(Err(Error::BadRequest(format!(
                        "a batched call of an unknown kind: {e}"
                    )))),
                }
            }
        }))
        .await;
        let mut answers = results.get().init_answers(outcomes.len() as u32);
        for (i, outcome) in outcomes.iter().enumerate() {
            let answer = answers.reborrow().get(i as u32);
            match outcome {
                Answer::Replicate(outcome) => set_replica_result(answer.init_replicate(), outcome),
                Answer::Fetch(outcome) => set_fetch_result(answer.init_fetch(), outcome),
            }
        }
        Ok(())
    }

    async fn tree_leaves(
        self: Rc<Self>,
        params: peer::TreeLeavesParams,
        mut results: peer::TreeLeavesResults,
    ) -> Result<(), capnp::Error> {
        let outcome = async {
            let _admitted = self.api.admit(0)?;
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            self.api.shared.cluster.tree_leaves(&bucket, p.get_partition()).await
        }
        .await;
        match outcome {
            Ok(leaves) => {
                let mut list = results.get().init_leaves(leaves.len() as u32);
                for (i, leaf) in leaves.iter().enumerate() {
                    list.set(i as u32, *leaf);
                }
            }
            Err(e) => wire::set_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn segment_entries(
        self: Rc<Self>,
        params: peer::SegmentEntriesParams,
        mut results: peer::SegmentEntriesResults,
    ) -> Result<(), capnp::Error> {
        let outcome = async {
            let admitted = self.api.admit(0)?;
            let p = params.get().map_err(wire::bad)?;
            let bucket = text(p.get_bucket(), "bucket")?;
            let segments: Vec<u16> = p.get_segments().map_err(wire::bad)?.iter().collect();
            let shared = &self.api.shared;
            let entries =
                shared.cluster.segment_entries(&bucket, p.get_partition(), &segments).await?;
            // Known only once scanned: held until the answer is built, or refused (dropped).
            let bytes = entries.iter().map(|(key, state)| key.len() + state.len()).sum();
            let charge = shared.cluster.budget().try_charge(bytes, "segment entries");
            let charge = charge.inspect_err(|_| shared.refused())?;
            Ok::<_, Error>((entries, admitted, charge))
        }
        .await;
        match outcome {
            Ok((entries, _admitted, _charge)) => {
                let mut list = results.get().init_entries(entries.len() as u32);
                for (i, (key, state)) in entries.iter().enumerate() {
                    let mut entry = list.reborrow().get(i as u32);
                    entry.set_key(key);
                    entry.set_state(state);
                }
            }
            Err(e) => wire::set_error(results.get().init_error(), &e),
        }
        Ok(())
    }

    async fn node(
        self: Rc<Self>,
        _: peer::NodeParams,
        mut results: peer::NodeResults,
    ) -> Result<(), capnp::Error> {
        results.get().set_node(capnp_rpc::new_client(self.api.for_member()));
        Ok(())
    }

    async fn gossip(
        self: Rc<Self>,
        params: peer::GossipParams,
        mut results: peer::GossipResults,
    ) -> Result<(), capnp::Error> {
        let outcome = (|| {
            // Charged nothing: the heartbeat is never refused for bytes.
            let _admitted = self.api.admit(0)?;
            let theirs =
                wire::get_view(params.get().map_err(wire::bad)?.get_view().map_err(wire::bad)?)?;
            let cluster = &self.api.shared.cluster;
            Ok::<_, Error>(match &self.from {
                // A member that gossips to us naming itself proves itself (see membership).
                Some(from) => cluster.receive_gossip_from(from, theirs),
                None => cluster.receive_gossip(theirs),
            })
        })();
        match outcome {
            Ok(ours) => wire::set_view(results.get().init_view(), &ours),
            Err(e) => wire::set_error(results.get().init_error(), &e),
        }
        Ok(())
    }
}
