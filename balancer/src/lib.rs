//! ringway-balancer: picks the server of an upstream group for each
//! attempt, and keeps the health state that decides which servers may be
//! picked. No I/O: the active prober and the engine live in ringway-http
//! and report here.
//!
//! - [`UpstreamGroup`] (`group`): the validated, shared description of a
//!   group: servers with weights, limits and backups, the [`Algorithm`],
//!   passive health, retry policy, sticky sessions.
//! - [`HealthTable`] (`health`): active health and connection counts shared
//!   by all workers (read-mostly atomics), and [`CheckCounter`], the
//!   healthy/unhealthy thresholds of active checks.
//! - [`Balancer`] (`picker`): one per group per worker; picks return a
//!   [`Lease`] that reports the attempt's [`Outcome`] back.
//! - `ring`, `hash`, `budget`: the consistent-hash ring, the hashes, the
//!   retry budget.
#![forbid(unsafe_code)]

mod budget;
mod group;
mod hash;
mod health;
mod picker;
mod ring;

pub use group::{
    ip_hash, key_hash, Algorithm, HashKey, PassiveHealth, RetryOn, RetryPolicy, ServerSpec, Sticky,
    UpstreamGroup,
};
pub use hash::hash_bytes;
pub use health::{CheckCounter, HealthTable, Transition};
pub use picker::{Balancer, HealthEvent, Lease, NoPeer, Outcome, PeerId, Tried, MAX_ATTEMPTS, MAX_SERVERS};

#[cfg(test)]
mod tests;
