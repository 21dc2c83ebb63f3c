//! Open connections per client address, across all workers: the table
//! behind `max_connections_per_ip`.
//!
//! Consulted once when a connection is accepted and once when it closes,
//! never per request. Shared by the workers (a client's connections land
//! on any of them), so it is split into shards, each behind its own lock,
//! picked by the address's hash: two workers contend only when they accept
//! from addresses in the same shard at the same moment.

use std::{
    collections::{hash_map::Entry, HashMap},
    hash::{BuildHasher, RandomState},
    net::IpAddr,
    sync::Mutex,
};

const SHARDS: usize = 64;

/// Connections open per client address, with a limit.
#[derive(Debug)]
pub struct PerIpConnections {
    limit: u32,
    hasher: RandomState,
    shards: Vec<Mutex<HashMap<IpAddr, u32>>>,
}

impl PerIpConnections {
    /// A table allowing `limit` connections per address (at least one).
    pub fn new(limit: u32) -> Self {
        Self {
            limit: limit.max(1),
            hasher: RandomState::new(),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
    }

    fn shard(&self, ip: IpAddr) -> &Mutex<HashMap<IpAddr, u32>> {
        &self.shards[self.hasher.hash_one(ip) as usize % SHARDS]
    }

    /// Counts one more connection from `ip`; `false` (nothing counted)
    /// when `ip` is at the limit.
    pub fn acquire(&self, ip: IpAddr) -> bool {
        let mut shard = self.shard(ip).lock().unwrap_or_else(|e| e.into_inner());
        let open = shard.entry(ip).or_insert(0);
        if *open >= self.limit {
            return false;
        }
        *open += 1;
        true
    }

    /// Counts one connection from `ip` closed.
    pub fn release(&self, ip: IpAddr) {
        let mut shard = self.shard(ip).lock().unwrap_or_else(|e| e.into_inner());
        if let Entry::Occupied(mut open) = shard.entry(ip) {
            *open.get_mut() -= 1;
            if *open.get() == 0 {
                open.remove();
            }
        }
    }

    /// Connections open from `ip`.
    pub fn open(&self, ip: IpAddr) -> u32 {
        let shard = self.shard(ip).lock().unwrap_or_else(|e| e.into_inner());
        shard.get(&ip).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_address_up_to_the_limit_and_forgets_closed_ones() {
        let table = PerIpConnections::new(2);
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "::1".parse().unwrap();
        assert!(table.acquire(a));
        assert!(table.acquire(a));
        assert!(!table.acquire(a), "at the limit");
        assert!(table.acquire(b), "another address has its own count");
        table.release(a);
        assert!(table.acquire(a));
        table.release(a);
        table.release(a);
        table.release(b);
        assert_eq!((table.open(a), table.open(b)), (0, 0));
        assert!(
            table.shards.iter().all(|s| s.lock().unwrap().is_empty()),
            "no entry left behind"
        );
    }
}
