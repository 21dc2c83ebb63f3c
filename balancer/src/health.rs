//! Health state shared by every worker of a process: whether active checks
//! hold each server up, the requests in flight to servers with a
//! connection limit, and the current address of servers given by name.
//!
//! The prober (one per process) writes the table; workers read it on every
//! pick with relaxed loads of words that rarely change, so a read is a plain
//! load and stays in cache. Addresses change rarely too: a worker keeps its
//! own copy and takes the table's (under its lock) only when the table's
//! address epoch moved. [`CheckCounter`] turns a stream of check results
//! into up and down transitions (`healthy` passes in a row bring a server
//! up, `unhealthy` failures in a row take it down).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicU32, AtomicU64, Ordering},
        Mutex, PoisonError,
    },
};

use crate::group::ServerSpec;

/// Active health and connection counts of one group's servers.
#[derive(Debug)]
pub struct HealthTable {
    /// One bit per server, set while active checks hold it down.
    down: Box<[AtomicU64]>,
    /// Requests in flight per server, all workers together; counted only
    /// for servers with a connection limit.
    in_flight: Box<[AtomicU32]>,
    /// The servers' current addresses.
    addrs: Mutex<Box<[SocketAddr]>>,
    /// Counts address changes, so workers see one with a relaxed load.
    addr_epoch: AtomicU64,
}

impl HealthTable {
    /// Every server up, nothing in flight.
    pub fn new(servers: &[ServerSpec]) -> Self {
        Self {
            down: (0..servers.len().div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
            in_flight: servers.iter().map(|_| AtomicU32::new(0)).collect(),
            addrs: Mutex::new(servers.iter().map(|s| s.addr).collect()),
            addr_epoch: AtomicU64::new(0),
        }
    }

    /// The current address of server `peer`.
    pub fn addr(&self, peer: usize) -> SocketAddr {
        self.addrs.lock().unwrap_or_else(PoisonError::into_inner)[peer]
    }

    /// Gives server `peer` a new address (its name resolved to another);
    /// returns whether that changed it.
    pub fn set_addr(&self, peer: usize, addr: SocketAddr) -> bool {
        let mut addrs = self.addrs.lock().unwrap_or_else(PoisonError::into_inner);
        if addrs[peer] == addr {
            return false;
        }
        addrs[peer] = addr;
        self.addr_epoch.fetch_add(1, Ordering::Release);
        true
    }

    /// How many address changes there have been.
    #[inline]
    pub(crate) fn addr_epoch(&self) -> u64 {
        self.addr_epoch.load(Ordering::Acquire)
    }

    /// Copies the current addresses into `out` (one per server); returns
    /// the epoch they belong to.
    pub(crate) fn copy_addrs(&self, out: &[std::cell::Cell<SocketAddr>]) -> u64 {
        let addrs = self.addrs.lock().unwrap_or_else(PoisonError::into_inner);
        for (cell, addr) in out.iter().zip(addrs.iter()) {
            cell.set(*addr);
        }
        self.addr_epoch.load(Ordering::Acquire)
    }

    /// Whether active checks hold server `peer` up.
    #[inline]
    pub fn is_up(&self, peer: usize) -> bool {
        self.down[peer / 64].load(Ordering::Relaxed) & (1 << (peer % 64)) == 0
    }

    /// Bits 64w..64w+63 of the down set (0 past the end).
    #[inline]
    pub(crate) fn down_word(&self, w: usize) -> u64 {
        self.down.get(w).map_or(0, |word| word.load(Ordering::Relaxed))
    }

    /// Whether any server is held down.
    #[inline]
    pub fn any_down(&self) -> bool {
        self.down.iter().any(|w| w.load(Ordering::Relaxed) != 0)
    }

    /// Marks server `peer` up or down; returns whether that changed it.
    pub fn set_up(&self, peer: usize, up: bool) -> bool {
        let bit = 1 << (peer % 64);
        let before = if up {
            self.down[peer / 64].fetch_and(!bit, Ordering::Relaxed)
        } else {
            self.down[peer / 64].fetch_or(bit, Ordering::Relaxed)
        };
        (before & bit == 0) != up
    }

    /// Takes a connection slot on server `peer` if fewer than `limit` are
    /// taken.
    pub(crate) fn try_acquire(&self, peer: usize, limit: u32) -> bool {
        self.in_flight[peer]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Gives back a slot taken by [`HealthTable::try_acquire`].
    pub(crate) fn release(&self, peer: usize) {
        self.in_flight[peer].fetch_sub(1, Ordering::AcqRel);
    }

    /// Requests in flight to server `peer` (counted only for servers with a
    /// limit).
    pub fn in_flight(&self, peer: usize) -> u32 {
        self.in_flight[peer].load(Ordering::Acquire)
    }
}

/// A change of a server's state after a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// It passed `healthy` checks in a row and was down.
    Up,
    /// It failed `unhealthy` checks in a row and was up.
    Down,
}

/// Counts consecutive check results of one server.
#[derive(Debug, Clone)]
pub struct CheckCounter {
    healthy: u32,
    unhealthy: u32,
    up: bool,
    passes: u32,
    failures: u32,
}

impl CheckCounter {
    /// A counter for a server that starts up; `healthy` and `unhealthy`
    /// are at least 1.
    pub fn new(healthy: u32, unhealthy: u32) -> Self {
        Self {
            healthy: healthy.max(1),
            unhealthy: unhealthy.max(1),
            up: true,
            passes: 0,
            failures: 0,
        }
    }

    /// Whether the server is up.
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one check; returns the transition it caused, if any.
    pub fn record(&mut self, passed: bool) -> Option<Transition> {
        if passed {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            if !self.up && self.passes >= self.healthy {
                self.up = true;
                return Some(Transition::Up);
            }
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= self.unhealthy {
                self.up = false;
                return Some(Transition::Down);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    #[test]
    fn the_table_marks_servers_up_and_down() {
        let servers: Vec<_> = (0..70)
            .map(|i| ServerSpec::new(SocketAddr::from(([127, 0, 0, 1], 9000 + i))))
            .collect();
        let t = HealthTable::new(&servers);
        assert!(t.is_up(65) && !t.any_down());
        assert!(t.set_up(65, false));
        assert!(!t.set_up(65, false), "already down");
        assert!(!t.is_up(65) && t.is_up(1) && t.any_down());
        assert!(t.set_up(65, true));
        assert!(!t.any_down());
    }

    #[test]
    fn addresses_change_with_the_epoch() {
        let a = SocketAddr::from(([127, 0, 0, 2], 80));
        let b = SocketAddr::from(([127, 0, 0, 3], 80));
        let t = HealthTable::new(&[ServerSpec::named("app.test", a)]);
        assert_eq!((t.addr(0), t.addr_epoch()), (a, 0));
        assert!(!t.set_addr(0, a), "the same address is no change");
        assert!(t.set_addr(0, b));
        assert_eq!((t.addr(0), t.addr_epoch()), (b, 1));
        let copy = [std::cell::Cell::new(a)];
        assert_eq!(t.copy_addrs(&copy), 1);
        assert_eq!(copy[0].get(), b);
    }

    #[test]
    fn limits_hold_across_acquires() {
        let servers = [ServerSpec::new(SocketAddr::from(([127, 0, 0, 1], 1)))];
        let t = HealthTable::new(&servers);
        assert!(t.try_acquire(0, 2) && t.try_acquire(0, 2));
        assert!(!t.try_acquire(0, 2));
        t.release(0);
        assert!(t.try_acquire(0, 2));
        assert_eq!(t.in_flight(0), 2);
    }

    #[test]
    fn checks_in_a_row_move_a_server() {
        let mut c = CheckCounter::new(2, 3);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(true), None, "a pass resets the failures");
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), None);
        assert_eq!(c.record(false), Some(Transition::Down));
        assert_eq!(c.record(false), None, "down already");
        assert_eq!(c.record(true), None);
        assert_eq!(c.record(true), Some(Transition::Up));
        assert!(c.is_up());
    }
}
