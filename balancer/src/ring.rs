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

/// Points sorted by position, each naming its server.
#[derive(Debug)]
pub(crate) struct Ring {
    points: Box<[(u64, u32)]>,
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
            let name = server.addr.to_string();
            for point in 0..count {
                let position = hash_bytes(format!("{name}#{point}").as_bytes());
                points.push((position, index as u32));
            }
        }
        points.sort_unstable();
        Self {
            points: points.into_boxed_slice(),
        }
    }

    /// The servers clockwise from `key`'s position, as many as there are
    /// points (a server appears once for each of its points).
    pub(crate) fn walk(&self, key: u64) -> impl Iterator<Item = usize> + '_ {
        let start = self.points.partition_point(|&(position, _)| position < key);
        let (after, before) = self.points.split_at(start);
        before.iter().chain(after).map(|&(_, server)| server as usize)
    }
}
