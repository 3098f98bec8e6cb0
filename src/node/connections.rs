//! # Who may hold a connection: the node's admission of connections
//!
//! Every accepted connection is registered here until it ends, with its source address and
//! whether it has logged in (or opened the peer API). The policy (docs/TRUST.md,
//! "Connections"): connections that have not logged in are bounded
//! (`limits.unauthenticated_connections_max`), and so are connections per source address
//! (`limits.connections_per_source_max`) and in all (`limits.connections_max`); at any of the
//! three, the oldest connection that has not logged in is closed to make room, so idle
//! connections never lock a client out; when every connection in the way has logged in, the
//! new one is refused. `status` counts what is registered here: connections that exist.

use std::collections::BTreeMap;
use std::net::IpAddr;

use tokio_util::sync::CancellationToken;

/// The node's open connections, oldest first, and which of them have logged in.
#[derive(Default)]
pub(super) struct Connections {
    next: u64,
    pub(super) open: BTreeMap<u64, Open>,
}

pub(super) struct Open {
    source: IpAddr,
    authenticated: bool,
    /// Cancelled to close the connection to make room for a newer one.
    evict: CancellationToken,
}

impl Connections {
    /// Make room for a connection from `source` under `limits`, closing the oldest
    /// connections that have not logged in where needed (so idle connections never lock a
    /// client out), and register it. `None`: no room (every connection in the way has
    /// logged in); the new one is to be closed.
    pub(super) fn admit(
        &mut self,
        source: IpAddr,
        limits: &crate::config::Limits,
    ) -> Option<(u64, CancellationToken)> {
        let from_source = self.open.values().filter(|open| open.source == source).count();
        if from_source >= limits.connections_per_source_max && !self.evict_oldest(Some(source)) {
            return None;
        }
        if self.open.len() >= limits.connections_max && !self.evict_oldest(None) {
            return None;
        }
        if self.unauthenticated() >= limits.unauthenticated_connections_max {
            self.evict_oldest(None);
        }
        let id = self.next;
        self.next += 1;
        let evict = CancellationToken::new();
        self.open.insert(id, Open { source, authenticated: false, evict: evict.clone() });
        Some((id, evict))
    }

    /// Close the oldest connection that has not logged in (from `source`, if given).
    pub(super) fn evict_oldest(&mut self, source: Option<IpAddr>) -> bool {
        let oldest = self
            .open
            .iter()
            .find(|(_, open)| !open.authenticated && source.is_none_or(|s| s == open.source))
            .map(|(id, _)| *id);
        match oldest.and_then(|id| self.open.remove(&id)) {
            Some(open) => {
                open.evict.cancel();
                true
            }
            None => false,
        }
    }

    pub(super) fn authenticated(&mut self, id: u64) {
        if let Some(open) = self.open.get_mut(&id) {
            open.authenticated = true;
        }
    }

    pub(super) fn closed(&mut self, id: u64) {
        self.open.remove(&id);
    }

    pub(super) fn unauthenticated(&self) -> usize {
        self.open.values().filter(|open| !open.authenticated).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn limits(total: usize, per_source: usize, unauthenticated: usize) -> crate::config::Limits {
        crate::config::Limits {
            connections_max: total,
            connections_per_source_max: per_source,
            unauthenticated_connections_max: unauthenticated,
            ..Default::default()
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    /// Connections that never log in are closed oldest first to make room; logged-in ones
    /// are never closed for a newcomer, which is then refused instead.
    #[test]
    fn the_oldest_connection_not_logged_in_makes_room() {
        // At most 4 in all, 3 per address, 2 not logged in.
        let limits = limits(4, 3, 2);
        let mut connections = Connections::default();
        let admit = |connections: &mut Connections, last: u8| connections.admit(ip(last), &limits);
        let (a, a_evict) = admit(&mut connections, 1).unwrap();
        let (_, b_evict) = admit(&mut connections, 1).unwrap();
        // A third not logged in: the oldest not logged in (a) goes.
        let (c, _) = admit(&mut connections, 1).unwrap();
        assert!(a_evict.is_cancelled() && !b_evict.is_cancelled());
        assert!(!connections.open.contains_key(&a));
        connections.authenticated(c);
        let (d, _) = admit(&mut connections, 1).unwrap();
        // 127.0.0.1 holds b, c, d: at its cap the oldest of its not logged in (b) goes.
        let (e, _) = admit(&mut connections, 1).unwrap();
        assert!(b_evict.is_cancelled());
        assert_eq!(connections.open.len(), 3);
        connections.authenticated(d);
        connections.authenticated(e);
        // Every connection of 127.0.0.1 logged in, at its cap: the newcomer is refused.
        assert!(admit(&mut connections, 1).is_none());
        // Another address has room, up to the node's cap (4), with everyone logged in.
        let (f, f_evict) = admit(&mut connections, 2).unwrap();
        connections.authenticated(f);
        assert!(!f_evict.is_cancelled());
        assert!(admit(&mut connections, 3).is_none(), "the node's cap, all logged in");
        connections.closed(f);
        assert!(admit(&mut connections, 3).is_some());
        assert_eq!(connections.unauthenticated(), 1);
    }
}
