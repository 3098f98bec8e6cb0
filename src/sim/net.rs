//! # A simulated network: delays, losses, partitions
//!
//! Every node-to-node call of the simulated nodes is a [`PeerRequest`] value that
//! [`Net`] carries to the other node's [`Cluster::serve_peer_from`] (with the sender's id, as
//! an authenticated connection knows it) and back, on the simulation's
//! one thread and its paused clock. For each call, in the order the calls are made (so a seed
//! fixes everything), the net draws a one-way delay each way (reordering follows from the
//! spread) and whether the request or the reply is lost. A lost message, or one across a
//! partition, never arrives: the caller's deadline ends the call, as a dropped packet would. A
//! call to a node that is not running is refused after the delay, as a closed port is. A
//! call from a run that has crashed since is dropped.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::time::Duration;

use crate::cluster::peers::{PeerReply, PeerRequest, Transport};
use crate::cluster::Cluster;
use crate::error::Error;

use crate::rng::Rng;

/// How the simulated network behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Shortest one-way delay, in microseconds.
    pub delay_min_us: u64,
    /// Longest one-way delay, in microseconds.
    pub delay_max_us: u64,
    /// Messages lost, per million.
    pub loss_per_million: u64,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self { delay_min_us: 100, delay_max_us: 2_000, loss_per_million: 1_000 }
    }
}

/// The simulated network. See the module documentation.
pub struct Net {
    config: NetConfig,
    rng: RefCell<Rng>,
    state: RefCell<State>,
}

#[derive(Default)]
struct State {
    /// Running nodes by address: id, incarnation, cluster.
    running: BTreeMap<String, (String, u64, Weak<Cluster>)>,
    /// Node ids by address, running or not.
    ids: BTreeMap<String, String>,
    /// The node ids on one side of a partition; `None` when the network is whole.
    side: Option<BTreeSet<String>>,
    /// Calls carried, and messages lost.
    calls: u64,
    lost: u64,
}

impl Net {
    /// A network whose random choices come from `seed`.
    pub fn new(config: NetConfig, seed: u64) -> Rc<Self> {
        Rc::new(Self { config, rng: RefCell::new(Rng::new(seed)), state: RefCell::default() })
    }

    /// A node runs at `address` (a new incarnation of it).
    pub fn attach(&self, id: &str, address: &str, incarnation: u64, cluster: &Rc<Cluster>) {
        let mut state = self.state.borrow_mut();
        let entry = (id.to_string(), incarnation, Rc::downgrade(cluster));
        state.running.insert(address.to_string(), entry);
        state.ids.insert(address.to_string(), id.to_string());
    }

    /// The node at `address` stopped (crashed).
    pub fn detach(&self, address: &str) {
        self.state.borrow_mut().running.remove(address);
    }

    /// Cut the network between `side` and every other node.
    pub fn partition(&self, side: BTreeSet<String>) {
        self.state.borrow_mut().side = Some(side);
    }

    /// Make the network whole again.
    pub fn heal(&self) {
        self.state.borrow_mut().side = None;
    }

    /// Calls carried and messages lost so far.
    pub fn counts(&self) -> (u64, u64) {
        let state = self.state.borrow();
        (state.calls, state.lost)
    }

    fn delay(&self) -> Duration {
        let span = self.config.delay_max_us.saturating_sub(self.config.delay_min_us) + 1;
        Duration::from_micros(self.config.delay_min_us + self.rng.borrow_mut().below(span))
    }

    fn lost(&self) -> bool {
        self.rng.borrow_mut().below(1_000_000) < self.config.loss_per_million
    }

    /// Whether `a` and `b` are on different sides of the partition.
    fn cut(&self, a: &str, b: &str) -> bool {
        match &self.state.borrow().side {
            Some(side) => side.contains(a) != side.contains(b),
            None => false,
        }
    }

    /// Whether `id` still runs in `incarnation`.
    fn sender_runs(&self, id: &str, incarnation: u64) -> bool {
        self.state.borrow().running.values().any(|(i, inc, _)| i == id && *inc == incarnation)
    }
}

impl Transport for Net {
    fn send(
        self: Rc<Self>,
        from: &str,
        incarnation: u64,
        address: &str,
        request: PeerRequest,
    ) -> Pin<Box<dyn Future<Output = Result<PeerReply, Error>>>> {
        // Every random draw happens now, in call order.
        let (there, back) = (self.delay(), self.delay());
        let (request_lost, reply_lost) = (self.lost(), self.lost());
        let (from, address) = (from.to_string(), address.to_string());
        Box::pin(async move {
            self.state.borrow_mut().calls += 1;
            tokio::time::sleep(there).await;
            let to = self.state.borrow().ids.get(&address).cloned().unwrap_or_default();
            if !self.sender_runs(&from, incarnation) || self.cut(&from, &to) || request_lost {
                self.state.borrow_mut().lost += 1;
                return std::future::pending().await;
            }
            let target =
                self.state.borrow().running.get(&address).and_then(|(_, _, c)| c.upgrade());
            let Some(target) = target else {
                return Err(Error::Connect { address, reason: "connection refused".into() });
            };
            // The network knows who sends, as an authenticated connection does.
            let reply = target.serve_peer_from(Some(&from), request).await;
            drop(target);
            tokio::time::sleep(back).await;
            if self.cut(&from, &to) || reply_lost {
                self.state.borrow_mut().lost += 1;
                return std::future::pending().await;
            }
            reply
        })
    }
}
