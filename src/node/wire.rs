//! # Between Cap'n Proto messages and the node's own types
//!
//! Both the server and the client library build and read the same structures (values,
//! operations, errors), so the conversions live here once. Readers return [`Error`] for
//! anything malformed (a missing field, an unknown union member): a bad message gets a typed
//! `badRequest`, never a panic.
//!
//! The ring and the gossip view (the last four functions) are the node-to-node half: they
//! exist only with the `server` feature, since they read the cluster's own types.

#[cfg(feature = "server")]
use std::collections::BTreeSet;

use cartwheel_resolvers::{Op, Read, Value};

use crate::cartwheel_capnp::{cart_item, error, op, read_options, value, write_options, ErrorKind};
#[cfg(feature = "server")]
use crate::cartwheel_capnp::{ring, view};
#[cfg(feature = "server")]
use crate::cluster::membership::{
    check_token_id, Holds, MemberInfo, View, MEMBERS_MAX, REVOKED_TOKENS_MAX,
};
use crate::error::Error;
#[cfg(feature = "server")]
use crate::ring::{Ownership, Transition};

/// Per-request read options; 0 means "the bucket's default".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Replicas that must answer.
    pub r: u8,
    /// Timeout in milliseconds.
    pub timeout_ms: u32,
}

/// Per-request write options; 0 and `None` mean "the bucket's default".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// Replicas that must store the write.
    pub w: u8,
    /// Replicas that must have synced it; `Some(0)` asks for no sync even where the bucket's
    /// default is higher.
    pub dw: Option<u8>,
    /// Timeout in milliseconds.
    pub timeout_ms: u32,
    /// Answer with the value(s) after the write.
    pub return_body: bool,
    /// Set by a node that forwarded the write: the receiver coordinates it, never forwards.
    pub forwarded: bool,
}

/// Fill a `ReadOptions` structure.
pub fn set_read_options(mut builder: read_options::Builder<'_>, options: &ReadOptions) {
    builder.set_r(options.r);
    builder.set_timeout_ms(options.timeout_ms);
}

/// Fill a `WriteOptions` structure.
pub fn set_write_options(mut builder: write_options::Builder<'_>, options: &WriteOptions) {
    builder.set_w(options.w);
    match options.dw {
        Some(0) => builder.set_dw_none(true),
        Some(dw) => builder.set_dw(dw),
        None => {}
    }
    builder.set_timeout_ms(options.timeout_ms);
    builder.set_return_body(options.return_body);
    builder.set_forwarded(options.forwarded);
}

/// Read a `WriteOptions` structure (absent = all defaults).
pub fn get_write_options(
    reader: capnp::Result<write_options::Reader<'_>>,
) -> Result<WriteOptions, Error> {
    let o = reader.map_err(bad)?;
    let dw = if o.get_dw_none() { Some(0) } else { Some(o.get_dw()).filter(|dw| *dw > 0) };
    Ok(WriteOptions {
        w: o.get_w(),
        dw,
        timeout_ms: o.get_timeout_ms(),
        return_body: o.get_return_body(),
        forwarded: o.get_forwarded(),
    })
}

/// Fill an `Error` structure.
pub fn set_error(mut builder: error::Builder<'_>, e: &Error) {
    builder.set_kind(e.kind());
    builder.set_message(e.message());
}

/// Read an `Error` structure. An unknown kind (from a newer peer) reads as `internal`.
pub fn get_error(reader: error::Reader<'_>) -> Error {
    let kind = reader.get_kind().unwrap_or(ErrorKind::Internal);
    let message = reader
        .get_message()
        .ok()
        .and_then(|m| m.to_string().ok())
        .unwrap_or_else(|| "(no message)".to_string());
    Error::from_wire(kind, message)
}

/// Fill a `Value` structure from what a read shows. `read.value` must be `Some`.
pub fn set_value(mut builder: value::Builder<'_>, context: &[u8], shown: &Value) {
    builder.set_context(context);
    match shown {
        Value::Siblings(values) => {
            set_data_list(builder.init_siblings(values.len() as u32), values)
        }
        Value::Set(members) => set_data_list(builder.init_set(members.len() as u32), members),
        Value::Counter(n) => builder.set_counter(*n),
        Value::Cart(items) => {
            let mut list = builder.init_cart(items.len() as u32);
            for (i, (item, quantity)) in items.iter().enumerate() {
                let mut entry = list.reborrow().get(i as u32);
                entry.set_item(item);
                entry.set_quantity(*quantity);
            }
        }
    }
}

fn set_data_list(mut list: capnp::data_list::Builder<'_>, values: &[Vec<u8>]) {
    for (i, v) in values.iter().enumerate() {
        list.set(i as u32, v);
    }
}

/// Read a `Value` structure into a [`Read`].
pub fn get_value(reader: value::Reader<'_>) -> Result<Read, Error> {
    let context = reader.get_context().map_err(bad)?.to_vec();
    let shown = match reader.which().map_err(|e| bad(e.into()))? {
        value::Siblings(list) => Value::Siblings(get_data_list(list.map_err(bad)?)?),
        value::Set(list) => Value::Set(get_data_list(list.map_err(bad)?)?),
        value::Counter(n) => Value::Counter(n),
        value::Cart(list) => {
            let list = list.map_err(bad)?;
            let mut items = Vec::with_capacity(list.len() as usize);
            for entry in list.iter() {
                items.push((entry.get_item().map_err(bad)?.to_vec(), entry.get_quantity()));
            }
            Value::Cart(items)
        }
    };
    Ok(Read { context, value: Some(shown) })
}

fn get_data_list(list: capnp::data_list::Reader<'_>) -> Result<Vec<Vec<u8>>, Error> {
    list.iter().map(|v| v.map(<[u8]>::to_vec).map_err(bad)).collect()
}

/// Fill an `Op` structure.
pub fn set_op(mut builder: op::Builder<'_>, operation: &Op) {
    fn item(mut b: cart_item::Builder<'_>, item: &[u8], quantity: i64) {
        b.set_item(item);
        b.set_quantity(quantity);
    }
    match operation {
        Op::CounterIncrement(n) => builder.set_counter_increment(*n),
        Op::SetAdd(e) => builder.set_set_add(e),
        Op::SetRemove(e) => builder.set_set_remove(e),
        Op::CartAdd { item: i, quantity } => item(builder.init_cart_add(), i, *quantity),
        Op::CartRemove(i) => builder.set_cart_remove(i),
        Op::CartSetQuantity { item: i, quantity } => {
            item(builder.init_cart_set_quantity(), i, *quantity)
        }
        Op::CartClear => builder.set_cart_clear(()),
        Op::SetClear => builder.set_set_clear(()),
        Op::CounterReset => builder.set_counter_reset(()),
    }
}

/// Read an `Op` structure.
pub fn get_op(reader: op::Reader<'_>) -> Result<Op, Error> {
    Ok(match reader.which().map_err(|e| bad(e.into()))? {
        op::CounterIncrement(n) => Op::CounterIncrement(n),
        op::SetAdd(e) => Op::SetAdd(e.map_err(bad)?.to_vec()),
        op::SetRemove(e) => Op::SetRemove(e.map_err(bad)?.to_vec()),
        op::CartAdd(i) => {
            let i = i.map_err(bad)?;
            Op::CartAdd { item: i.get_item().map_err(bad)?.to_vec(), quantity: i.get_quantity() }
        }
        op::CartRemove(e) => Op::CartRemove(e.map_err(bad)?.to_vec()),
        op::CartSetQuantity(i) => {
            let i = i.map_err(bad)?;
            Op::CartSetQuantity {
                item: i.get_item().map_err(bad)?.to_vec(),
                quantity: i.get_quantity(),
            }
        }
        op::CartClear(()) => Op::CartClear,
        op::SetClear(()) => Op::SetClear,
        op::CounterReset(()) => Op::CounterReset,
    })
}

/// A malformed message part: `badRequest` naming the decoding failure.
pub fn bad(e: capnp::Error) -> Error {
    Error::BadRequest(format!("malformed message: {e}"))
}

#[cfg(feature = "server")]
/// Fill a `Ring` structure from an ownership (node states are left `up`; `status` and `ring`
/// set them from the failure detector).
pub fn set_ring(
    mut builder: ring::Builder<'_>,
    ownership: &Ownership,
    addresses: &dyn Fn(&str) -> String,
) {
    let next = ownership.next.as_ref();
    let mut nodes: Vec<&String> =
        ownership.owners.iter().chain(next.into_iter().flat_map(|t| &t.owners)).collect();
    nodes.sort();
    nodes.dedup();
    builder.set_partition_count(ownership.partitions());
    builder.set_epoch(ownership.epoch);
    let mut list = builder.reborrow().init_nodes(nodes.len() as u32);
    for (i, id) in nodes.iter().enumerate() {
        let mut node = list.reborrow().get(i as u32);
        node.set_id(id.as_str());
        node.set_address(addresses(id));
        node.set_partitions_owned(ownership.owned_by(id) as u32);
    }
    let index = |owner: &String| {
        nodes.binary_search(&owner).expect("every owner is in the node list") as u16
    };
    let mut owners = builder.reborrow().init_owners(ownership.partitions());
    for (p, owner) in ownership.owners.iter().enumerate() {
        owners.set(p as u32, index(owner));
    }
    set_texts(builder.reborrow().init_left(ownership.left.len() as u32), &ownership.left);
    if let Some(next) = next {
        let mut t = builder.init_next();
        t.set_id(next.id);
        let mut owners = t.reborrow().init_owners(next.owners.len() as u32);
        for (p, owner) in next.owners.iter().enumerate() {
            owners.set(p as u32, index(owner));
        }
        let mut moved = t.reborrow().init_moved(next.moved.len() as u32);
        for (i, p) in next.moved.iter().enumerate() {
            moved.set(i as u32, *p);
        }
        set_texts(t.init_removed(next.removed.len() as u32), &next.removed);
    }
}

#[cfg(feature = "server")]
fn set_texts(mut list: capnp::text_list::Builder<'_>, texts: &BTreeSet<String>) {
    for (i, text) in texts.iter().enumerate() {
        list.set(i as u32, text.as_str());
    }
}

#[cfg(feature = "server")]
/// Read a `Ring` structure into an ownership.
pub fn get_ring(reader: ring::Reader<'_>) -> Result<Ownership, Error> {
    let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, Error> {
        t.map_err(bad)?.to_string().map_err(|e| bad(e.into()))
    };
    let nodes = reader.get_nodes().map_err(bad)?;
    if nodes.len() as usize > MEMBERS_MAX {
        return Err(Error::BadRequest(format!("the ring names {} nodes", nodes.len())));
    }
    let ids: Vec<String> = nodes.iter().map(|n| text(n.get_id())).collect::<Result<_, _>>()?;
    let q = reader.get_partition_count();
    let owners_of = |list: capnp::primitive_list::Reader<'_, u16>| -> Result<Vec<String>, Error> {
        if list.len() != q {
            return Err(Error::BadRequest("ring owners do not match the partition count".into()));
        }
        list.iter()
            .map(|i| {
                ids.get(i as usize)
                    .cloned()
                    .ok_or_else(|| Error::BadRequest(format!("ring owner index {i} out of range")))
            })
            .collect()
    };
    let texts = |list: capnp::text_list::Reader<'_>| -> Result<BTreeSet<String>, Error> {
        if list.len() as usize > MEMBERS_MAX {
            return Err(Error::BadRequest(format!("the ring lists {} members", list.len())));
        }
        list.iter().map(text).collect()
    };
    let owners = owners_of(reader.get_owners().map_err(bad)?)?;
    let left = texts(reader.get_left().map_err(bad)?)?;
    let next = if reader.has_next() {
        let t = reader.get_next().map_err(bad)?;
        let moved: BTreeSet<u16> = t.get_moved().map_err(bad)?.iter().collect();
        if moved.iter().any(|p| u32::from(*p) >= q) {
            return Err(Error::BadRequest("a moved partition is out of range".into()));
        }
        Some(Transition {
            id: t.get_id(),
            owners: owners_of(t.get_owners().map_err(bad)?)?,
            moved,
            removed: texts(t.get_removed().map_err(bad)?)?,
        })
    } else {
        None
    };
    Ok(Ownership { epoch: reader.get_epoch(), owners, next, left })
}

#[cfg(feature = "server")]
/// Fill a gossip `View`.
pub fn set_view(mut builder: view::Builder<'_>, v: &View) {
    let mut tokens = builder.reborrow().init_revoked_tokens(v.revoked_tokens.len() as u32);
    for (i, id) in v.revoked_tokens.iter().enumerate() {
        tokens.set(i as u32, id.as_str());
    }
    let mut members = builder.reborrow().init_members(v.members.len() as u32);
    for (i, m) in v.members.iter().enumerate() {
        let mut b = members.reborrow().get(i as u32);
        b.set_id(m.id.as_str());
        b.set_address(m.address.as_str());
        b.set_incarnation(m.incarnation);
        b.set_heartbeat(m.heartbeat);
        b.set_leaving(m.leaving);
        b.set_config_digest(&m.config_digest);
        b.set_holds_for(m.holds.transition);
        b.set_data_bytes(m.data_bytes);
        let mut holds = b.init_holds(m.holds.partitions.len() as u32);
        for (i, p) in m.holds.partitions.iter().enumerate() {
            holds.set(i as u32, *p);
        }
    }
    let addresses = |id: &str| {
        v.members.iter().find(|m| m.id == id).map(|m| m.address.clone()).unwrap_or_default()
    };
    set_ring(builder.init_ring(), &v.ring, &addresses);
}

#[cfg(feature = "server")]
/// Read a gossip `View`. A view naming more than [`MEMBERS_MAX`] members, or more than
/// [`REVOKED_TOKENS_MAX`] revoked tokens, or a token id that is not 16 lowercase hex digits,
/// is refused whole with `badRequest` (member entries are checked one by one when merged:
/// [`crate::cluster::membership`]).
pub fn get_view(reader: view::Reader<'_>) -> Result<View, Error> {
    let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, Error> {
        t.map_err(bad)?.to_string().map_err(|e| bad(e.into()))
    };
    let list = reader.get_revoked_tokens().map_err(bad)?;
    if list.len() as usize > REVOKED_TOKENS_MAX {
        return Err(Error::BadRequest(format!(
            "the view names {} revoked tokens, over the limit of {REVOKED_TOKENS_MAX}",
            list.len()
        )));
    }
    let mut revoked_tokens = BTreeSet::new();
    for id in list.iter() {
        let id = text(id)?;
        check_token_id(&id)?;
        revoked_tokens.insert(id);
    }
    let list = reader.get_members().map_err(bad)?;
    if list.len() as usize > MEMBERS_MAX {
        return Err(Error::BadRequest(format!(
            "the view names {} members, over the limit of {MEMBERS_MAX}",
            list.len()
        )));
    }
    let mut members = Vec::with_capacity(list.len() as usize);
    for m in list.iter() {
        members.push(MemberInfo {
            id: text(m.get_id())?,
            address: text(m.get_address())?,
            incarnation: m.get_incarnation(),
            heartbeat: m.get_heartbeat(),
            leaving: m.get_leaving(),
            config_digest: m.get_config_digest().map_err(bad)?.to_vec(),
            holds: Holds {
                transition: m.get_holds_for(),
                partitions: m.get_holds().map_err(bad)?.iter().collect(),
            },
            data_bytes: m.get_data_bytes(),
        });
    }
    Ok(View { members, ring: get_ring(reader.get_ring().map_err(bad)?)?, revoked_tokens })
}

/// Fill a `ClusterRequest`.
pub fn set_cluster_request(
    builder: crate::cartwheel_capnp::cluster_request::Builder<'_>,
    request: &crate::client::ClusterRequest,
) {
    use crate::client::ClusterRequest as R;
    let mut builder = builder;
    match request {
        R::Join(id) => builder.set_join(id),
        R::Leave(id) => builder.set_leave(id),
        R::Replace { old, new } => {
            let mut replace = builder.init_replace();
            replace.set_old(old);
            replace.set_new(new);
        }
        R::Remove(id) => builder.set_remove(id),
        R::Plan => builder.set_plan(()),
        R::Commit => builder.set_commit(()),
        R::Cancel => builder.set_cancel(()),
    }
}

/// Read a `ClusterRequest`.
pub fn get_cluster_request(
    reader: crate::cartwheel_capnp::cluster_request::Reader<'_>,
) -> Result<crate::client::ClusterRequest, Error> {
    use crate::cartwheel_capnp::cluster_request::Which as W;
    use crate::client::ClusterRequest as R;
    let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, Error> {
        t.map_err(bad)?.to_string().map_err(|e| bad(e.into()))
    };
    Ok(match reader.which().map_err(|e| Error::BadRequest(e.to_string()))? {
        W::Join(id) => R::Join(text(id)?),
        W::Leave(id) => R::Leave(text(id)?),
        W::Replace(replace) => {
            R::Replace { old: text(replace.get_old())?, new: text(replace.get_new())? }
        }
        W::Remove(id) => R::Remove(text(id)?),
        W::Plan(()) => R::Plan,
        W::Commit(()) => R::Commit,
        W::Cancel(()) => R::Cancel,
    })
}

/// Fill a `ClusterAnswer`.
pub fn set_cluster_answer(
    mut builder: crate::cartwheel_capnp::cluster_answer::Builder<'_>,
    answer: &crate::client::ClusterAnswer,
) {
    builder.set_claimant(&answer.claimant);
    builder.set_bytes_per_partition(answer.bytes_per_partition);
    builder.set_keys_per_partition(answer.keys_per_partition);
    builder.set_ring_epoch(answer.ring_epoch);
    builder.set_moving(answer.moving);
    let mut staged = builder.reborrow().init_staged(answer.staged.len() as u32);
    for (i, change) in answer.staged.iter().enumerate() {
        staged.set(i as u32, change.as_str());
    }
    let mut moves = builder.init_moves(answer.moves.len() as u32);
    for (i, (partition, from, to)) in answer.moves.iter().enumerate() {
        let mut m = moves.reborrow().get(i as u32);
        m.set_partition(*partition);
        m.set_from(from);
        m.set_to(to);
    }
}

/// Read a `ClusterAnswer`.
pub fn get_cluster_answer(
    reader: crate::cartwheel_capnp::cluster_answer::Reader<'_>,
) -> Result<crate::client::ClusterAnswer, Error> {
    let text = |t: capnp::Result<capnp::text::Reader<'_>>| -> Result<String, Error> {
        t.map_err(bad)?.to_string().map_err(|e| bad(e.into()))
    };
    let mut moves = Vec::new();
    for m in reader.get_moves().map_err(bad)?.iter() {
        moves.push((m.get_partition(), text(m.get_from())?, text(m.get_to())?));
    }
    Ok(crate::client::ClusterAnswer {
        claimant: text(reader.get_claimant())?,
        staged: reader.get_staged().map_err(bad)?.iter().map(text).collect::<Result<_, _>>()?,
        moves,
        bytes_per_partition: reader.get_bytes_per_partition(),
        keys_per_partition: reader.get_keys_per_partition(),
        ring_epoch: reader.get_ring_epoch(),
        moving: reader.get_moving(),
    })
}
