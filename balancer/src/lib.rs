//! ringway-balancer: picks the server of an upstream group for each request.
//!
//! An [`UpstreamGroup`] is the validated, shared description of a group (its
//! name and servers). Each worker builds its own [`Balancer`] from it, so a
//! pick touches only worker-local state (a `Cell` counter), never a lock.
//! [`RoundRobin`] is the first algorithm; health checks, weights, least
//! connections and hashing arrive behind the same [`Balancer`] seam.
#![forbid(unsafe_code)]

use std::{cell::Cell, net::SocketAddr};

/// Index of a server in its group.
pub type PeerId = usize;

/// An upstream group as configured: a name and its servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamGroup {
    /// The group's name, as routes refer to it.
    pub name: String,
    /// The servers, in configuration order.
    pub servers: Vec<SocketAddr>,
}

/// Chooses a server for each request.
pub trait Balancer {
    /// The server for the next request, or `None` when the group has none.
    fn pick(&self) -> Option<PeerId>;

    /// The address of a server returned by [`Balancer::pick`].
    fn addr(&self, peer: PeerId) -> SocketAddr;

    /// Number of servers in the group.
    fn len(&self) -> usize;

    /// Whether the group has no servers.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Round robin over the group's servers, per worker.
///
/// Worker `w` starts at server `w mod n`, so that workers started together
/// do not all send their first requests to the same server.
#[derive(Debug)]
pub struct RoundRobin {
    servers: Box<[SocketAddr]>,
    next: Cell<usize>,
}

impl RoundRobin {
    /// A balancer over `group`'s servers for worker number `worker`.
    pub fn new(group: &UpstreamGroup, worker: usize) -> Self {
        let n = group.servers.len().max(1);
        Self {
            servers: group.servers.clone().into_boxed_slice(),
            next: Cell::new(worker % n),
        }
    }
}

impl Balancer for RoundRobin {
    fn pick(&self) -> Option<PeerId> {
        if self.servers.is_empty() {
            return None;
        }
        let current = self.next.get();
        let following = current + 1;
        self.next.set(if following == self.servers.len() {
            0
        } else {
            following
        });
        Some(current)
    }

    fn addr(&self, peer: PeerId) -> SocketAddr {
        self.servers[peer]
    }

    fn len(&self) -> usize {
        self.servers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(n: u16) -> UpstreamGroup {
        UpstreamGroup {
            name: "g".into(),
            servers: (0..n)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], 9000 + i)))
                .collect(),
        }
    }

    #[test]
    fn round_robin_cycles_through_every_server() {
        let rr = RoundRobin::new(&group(3), 0);
        let picks: Vec<_> = (0..7).map(|_| rr.pick().unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(rr.addr(2).port(), 9002);
    }

    #[test]
    fn workers_start_at_different_servers() {
        assert_eq!(RoundRobin::new(&group(3), 1).pick(), Some(1));
        assert_eq!(RoundRobin::new(&group(3), 4).pick(), Some(1));
    }

    #[test]
    fn an_empty_group_picks_nothing() {
        let rr = RoundRobin::new(&group(0), 0);
        assert!(rr.is_empty());
        assert_eq!(rr.pick(), None);
    }
}
