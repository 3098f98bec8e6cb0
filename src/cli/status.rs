//! # What `status` and `admin` print
//!
//! A node's status as a table or JSON, and the claimant's answer to a membership change:
//! how the CLI shows a running cluster, apart from the commands that read and write data.

use super::*;

pub(super) fn status_json(status: &crate::client::NodeStatus) -> serde_json::Value {
    use serde_json::json;
    json!({
        "node_id": status.node_id,
        "address": status.address,
        "version": status.version,
        "security": status.security,
        "uptime_ms": status.uptime_ms,
        "connections": status.connections,
        "connections_unauthenticated": status.connections_unauthenticated,
        "requests_served": status.requests_served,
        "requests_refused": status.requests_refused,
        "ring_epoch": status.ring_epoch,
        "hints_refused": status.hints_refused,
        "states_refused": status.states_refused,
        "config_mismatches": status.config_mismatches,
        "claimant": status.claimant,
        "transfers": {
            "transition": status.transfers.transition,
            "moving": status.transfers.moving,
            "receiving": status.transfers.receiving,
            "held": status.transfers.held,
            "running": status.transfers.running,
            "segments_copied": status.transfers.segments_copied,
            "keys_copied": status.transfers.keys_copied,
            "bytes_copied": status.transfers.bytes_copied,
            "elapsed_ms": status.transfers.elapsed_ms,
            "waiting": status.transfers.waiting,
        },
        "members": status.members.iter().map(|m| json!({
            "id": m.id,
            "address": m.address,
            "state": m.state,
            "partitions_owned": m.partitions_owned,
            "hints_queued": m.hints_queued,
            "data_bytes": m.data_bytes,
        })).collect::<Vec<_>>(),
        "partitions": status.partitions,
        "anti_entropy": {
            "exchanges": status.anti_entropy.exchanges,
            "keys_received": status.anti_entropy.keys_received,
            "keys_sent": status.anti_entropy.keys_sent,
            "last_exchange_ms_ago": status.anti_entropy.last_exchange_ms_ago,
            "tombstones_collected": status.anti_entropy.tombstones_collected,
            "late_states_dropped": status.anti_entropy.late_states_dropped,
        },
        "buckets": status.buckets.iter().map(|b| json!({
            "name": b.name,
            "engine": b.engine,
            "resolver": b.resolver,
            "n": b.nrw.0, "r": b.nrw.1, "w": b.nrw.2, "dw": b.nrw.3,
            "entries": b.entries,
            "live_bytes": b.live_bytes,
            "memory_bytes": b.memory_bytes,
            "durable": b.durable,
            "sibling_warnings": b.sibling_warnings,
        })).collect::<Vec<_>>(),
    })
}

/// Send a membership request to the claimant: the node `client` talks to, if it is the
/// claimant, else the claimant it names in its status.
pub(super) async fn ask_claimant(
    client: &Client,
    request: &ClusterRequest,
    auth: &Auth,
) -> Result<crate::client::ClusterAnswer, Error> {
    let status = client.status().await?;
    if status.claimant.is_empty() || status.claimant == status.node_id {
        return client.cluster(request).await;
    }
    let address = status
        .members
        .iter()
        .find(|m| m.id == status.claimant)
        .map(|m| m.address.clone())
        .ok_or_else(|| {
            Error::QuorumNotMet(format!("no address for the claimant {}", status.claimant))
        })?;
    let credentials = auth.resolve().map_err(Error::BadRequest)?;
    let claimant = Client::connect_with(&address, &credentials).await?;
    claimant.cluster(request).await
}

pub(super) fn cluster_answer_json(answer: &crate::client::ClusterAnswer) -> serde_json::Value {
    serde_json::json!({
        "claimant": answer.claimant,
        "staged": answer.staged,
        "moves": answer.moves.iter().map(|(p, from, to)| serde_json::json!({
            "partition": p, "from": from, "to": to,
        })).collect::<Vec<_>>(),
        "bytes_per_partition": answer.bytes_per_partition,
        "keys_per_partition": answer.keys_per_partition,
        "ring_epoch": answer.ring_epoch,
        "moving": answer.moving,
    })
}

pub(super) fn print_cluster_answer(
    request: &ClusterRequest,
    answer: &crate::client::ClusterAnswer,
) {
    use std::fmt::Write as _;
    let mut out = String::new();
    match request {
        ClusterRequest::Commit => {
            let _ = writeln!(
                out,
                "committed on {}: {} partitions change owner (ring epoch {}); `status` shows the transfers",
                answer.claimant,
                answer.moves.len(),
                answer.ring_epoch
            );
        }
        ClusterRequest::Cancel => {
            let _ = writeln!(out, "staged changes dropped on {}", answer.claimant);
        }
        _ => {
            let staged =
                if answer.staged.is_empty() { "nothing".into() } else { answer.staged.join(", ") };
            let _ = writeln!(out, "staged on {}: {staged}", answer.claimant);
            if answer.moving > 0 {
                let _ = writeln!(
                    out,
                    "a ring change is still moving {} partitions: commit once it is done",
                    answer.moving
                );
            }
            let mut flows: std::collections::BTreeMap<(&str, &str), usize> = Default::default();
            for (_, from, to) in &answer.moves {
                *flows.entry((from.as_str(), to.as_str())).or_default() += 1;
            }
            let moved = answer.moves.len() as u64;
            let _ = writeln!(
                out,
                "plan: {moved} partitions change owner, about {} keys and {} (from the claimant's copy)",
                moved * answer.keys_per_partition,
                human_bytes(moved * answer.bytes_per_partition)
            );
            for ((from, to), count) in flows {
                let _ = writeln!(out, "  {from} -> {to}: {count} partitions");
            }
        }
    }
    emit(out.as_bytes());
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

pub(super) fn print_status(status: &crate::client::NodeStatus) {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "node {} at {} (version {}, up {} s, {} connections, {} requests, {} refused)",
        status.node_id,
        status.address,
        status.version,
        status.uptime_ms / 1000,
        status.connections,
        status.requests_served,
        status.requests_refused
    );
    let _ = writeln!(
        out,
        "ring epoch {}, {} hinted writes refused, {} replicated states refused (clock offset)",
        status.ring_epoch, status.hints_refused, status.states_refused
    );
    let _ = writeln!(
        out,
        "security {}, {} of the connections not logged in",
        status.security, status.connections_unauthenticated
    );
    let t = &status.transfers;
    if t.transition != 0 {
        let seconds = t.elapsed_ms as f64 / 1000.0;
        let rate = if seconds > 0.0 { t.bytes_copied as f64 / seconds } else { 0.0 };
        let eta = match (t.held, t.receiving) {
            (_, 0) => "nothing to copy here".to_string(),
            (0, _) => "ETA unknown".to_string(),
            (held, receiving) => {
                format!("ETA {:.0} s", seconds * f64::from(receiving - held) / f64::from(held))
            }
        };
        let _ = writeln!(
            out,
            "ring change {} in flight: {} partitions still moving; this node takes over {} and \
             holds {} of them ({} copying now); copied {} keys, {} in {seconds:.1} s ({}/s); {eta}{}",
            t.transition,
            t.moving,
            t.receiving,
            t.held,
            t.running.len(),
            t.keys_copied,
            human_bytes(t.bytes_copied),
            human_bytes(rate as u64),
            if t.waiting.is_empty() { String::new() } else { format!("; waiting: {}", t.waiting) }
        );
    }
    if !status.claimant.is_empty() {
        let _ = writeln!(out, "claimant {}", status.claimant);
    }
    let ae = &status.anti_entropy;
    let last = match ae.last_exchange_ms_ago {
        0 => "none yet".to_string(),
        ms => format!("last {:.1} s ago", ms as f64 / 1000.0),
    };
    let _ = writeln!(
        out,
        "anti-entropy: {} partitions compared ({last}), {} keys repaired here, {} at peers; \
         {} deletes reclaimed, {} late states dropped",
        ae.exchanges,
        ae.keys_received,
        ae.keys_sent,
        ae.tombstones_collected,
        ae.late_states_dropped
    );
    let owners = status.members.iter().filter(|m| m.partitions_owned > 0).count();
    for b in status.buckets.iter().filter(|b| usize::from(b.nrw.2) > owners) {
        let _ = writeln!(
            out,
            "WARNING: bucket {} has w = {} and the ring has {owners} node(s): its writes are \
             refused (quorumNotMet) until more nodes join",
            b.name, b.nrw.2
        );
    }
    if !status.config_mismatches.is_empty() {
        let _ = writeln!(
            out,
            "WARNING: bucket configuration differs on: {}",
            status.config_mismatches.join(", ")
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<12} {:<24} {:<8} {:>10} {:>7} {:>10} {:>12}",
        "MEMBER", "ADDRESS", "STATE", "PARTITIONS", "OWNED", "DATA", "HINTS HERE"
    );
    for m in &status.members {
        let share = match status.partitions {
            0 => String::from("-"),
            q => format!("{:.1}%", 100.0 * f64::from(m.partitions_owned) / f64::from(q)),
        };
        let _ = writeln!(
            out,
            "{:<12} {:<24} {:<8} {:>10} {:>7} {:>10} {:>12}",
            m.id,
            m.address,
            m.state,
            m.partitions_owned,
            share,
            human_bytes(m.data_bytes),
            m.hints_queued
        );
    }
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<12} {:<8} {:<10} {:>9} {:>10} {:>12} {:>12} {:<8}",
        "BUCKET", "ENGINE", "RESOLVER", "N/R/W/DW", "ENTRIES", "LIVE BYTES", "MEMORY", "DURABLE"
    );
    for b in &status.buckets {
        let (n, r, w, dw) = b.nrw;
        let _ = writeln!(
            out,
            "{:<12} {:<8} {:<10} {:>9} {:>10} {:>12} {:>12} {:<8}",
            b.name,
            b.engine,
            b.resolver,
            format!("{n}/{r}/{w}/{dw}"),
            b.entries,
            human_bytes(b.live_bytes),
            human_bytes(b.memory_bytes),
            if b.durable { "yes" } else { "no" }
        );
    }
    emit(out.as_bytes());
}
