//! The consistent-hash ring: points for each server, placed by a hash of
//! the server's address and the point's number, so a server's points do not
//! move when another server joins or leaves (about 1/N of the keys move when
//! one of N servers goes).

use crate::{group::ServerSpec, hash::hash_bytes};

/// Points per unit of weight (ketama's 160 keeps the spread within a few
/// percent).
const POINTS_PER_WEIGHT: u32 = 160;

/// The most points one server gets, whatever its weight.
const MAX_POINTS: u32 = 160 * 64;

/// Bits of a position that index the bucket table.
const BUCKET_BITS: u32 = 12;

/// Points sorted by position, each naming its server, with a table of
/// where each of 4,096 equal slices of the circle starts, so a lookup
/// searches a handful of points, not all of them.
#[derive(Debug)]
pub(crate) struct Ring {
    positions: Box<[u64]>,
    servers: Box<[u32]>,
    /// `buckets[b]`: the first point at or after `b << (64 - BUCKET_BITS)`.
    buckets: Box<[u32]>,
}

impl Ring {
    pub(crate) fn new(servers: &[ServerSpec]) -> Self {
        let mut points = Vec::new();
        for (index, server) in servers.iter().enumerate() {
            let count = server
                .weight
                .max(1)
                .saturating_mul(POINTS_PER_WEIGHT)
                .min(MAX_POINTS);
            let name = server.identity();
            for point in 0..count {
                let position = hash_bytes(format!("{name}#{point}").as_bytes());
                points.push((position, index as u32));
            }
        }
        points.sort_unstable();
        let positions: Box<[u64]> = points.iter().map(|p| p.0).collect();
        let buckets = (0..=1u64 << BUCKET_BITS)
            .map(|b| {
                let start = b.checked_shl(64 - BUCKET_BITS).unwrap_or(u64::MAX);
                if b == 1 << BUCKET_BITS {
                    positions.len() as u32
                } else {
                    positions.partition_point(|&p| p < start) as u32
                }
            })
            .collect();
        Self {
            servers: points.iter().map(|p| p.1).collect(),
            positions,
            buckets,
        }
    }

    /// The servers clockwise from `key`'s position, as many as there are
    /// points (a server appears once for each of its points).
    pub(crate) fn walk(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let b = (key >> (64 - BUCKET_BITS)) as usize;
        let (lo, hi) = (self.buckets[b] as usize, self.buckets[b + 1] as usize);
        let start = lo + self.positions[lo..hi].partition_point(|&p| p < key);
        let (after, before) = self.servers.split_at(start);
        before.iter().chain(after).map(|&server| server as usize)
    }
}
