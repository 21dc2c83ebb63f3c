//! The shared, validated description of an upstream group: its servers,
//! the algorithm that spreads requests over them, and the settings of its
//! passive health, retries and sticky sessions.
//!
//! An [`UpstreamGroup`] is built once from the configuration and shared by
//! every worker behind an `Arc`. It holds what never changes while it is
//! in use (the servers, the consistent-hash ring, the weights' prefix sums)
//! and the one piece of state all workers share: the [`HealthTable`] the
//! active prober writes.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use crate::{
    hash::{hash_bytes, keyed_hash},
    health::HealthTable,
    ring::Ring,
};

/// One server of a group, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Its address (when it has a host name: the one it resolved to when
    /// the configuration was loaded; [`HealthTable::addr`] has the current
    /// one).
    pub addr: SocketAddr,
    /// The host name it was given by, followed on its DNS TTL; `None` for a
    /// server given by IP address.
    pub host: Option<Arc<str>>,
    /// Its share of requests against the others (at least 1).
    pub weight: u32,
    /// The most requests it may have in flight, all workers together;
    /// `None` for no limit.
    pub max_connections: Option<u32>,
    /// Used only while no primary server can take requests.
    pub backup: bool,
}

impl ServerSpec {
    /// A primary server of weight 1 with no connection limit.
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            host: None,
            weight: 1,
            max_connections: None,
            backup: false,
        }
    }

    /// A primary server of weight 1 given by `host`, which resolved to
    /// `addr`.
    pub fn named(host: &str, addr: SocketAddr) -> Self {
        Self {
            host: Some(Arc::from(host)),
            ..Self::new(addr)
        }
    }

    /// What names the server whatever its address: `host:port` for a
    /// server given by name, else its address. Sticky cookies and the
    /// consistent-hash ring are built from it, so an address that changes
    /// moves no session and no key.
    pub fn identity(&self) -> String {
        match &self.host {
            Some(host) => format!("{host}:{}", self.addr.port()),
            None => self.addr.to_string(),
        }
    }
}

/// What a consistent hash is computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// A request header's value (the first of its lines); requests without
    /// it hash as the empty value.
    Header(String),
    /// A cookie's value; requests without it hash as the empty value.
    Cookie(String),
    /// The path, without the query.
    Path,
    /// The whole request target, query included.
    Uri,
}

/// How a group spreads requests over its servers.
#[derive(Debug, Clone, PartialEq)]
pub enum Algorithm {
    /// Each server in turn.
    RoundRobin,
    /// Each server in turn as often as its weight says, interleaved
    /// (nginx's smooth weighted round robin).
    WeightedRoundRobin,
    /// A random server, in proportion to the weights.
    Random,
    /// The server with the fewest requests in flight for its weight (as this
    /// worker counts them).
    LeastConn,
    /// The better of two random servers, by a decaying peak latency times
    /// the requests in flight (as this worker measures them).
    P2cEwma,
    /// A ring of the servers hashed by a key of the request, so a key keeps
    /// its server while the server is up; no server takes more than
    /// `1 + balance_factor` times the mean load (bounded loads).
    ConsistentHash {
        /// What is hashed.
        key: HashKey,
        /// The `e` of the bound `(1 + e) x mean`; 0.25 by default.
        balance_factor: f64,
    },
}

impl Algorithm {
    /// The configuration name of the algorithm.
    pub fn name(&self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round_robin",
            Algorithm::WeightedRoundRobin => "weighted_round_robin",
            Algorithm::Random => "random",
            Algorithm::LeastConn => "least_conn",
            Algorithm::P2cEwma => "p2c_ewma",
            Algorithm::ConsistentHash { .. } => "consistent_hash",
        }
    }
}

/// Passive health: servers that fail in a row are ejected for a while.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Consecutive failures that eject a server; 0 turns passive health off.
    pub failures: u32,
    /// How long the first ejection lasts; each ejection that follows a
    /// failed probation lasts twice as long as the one before.
    pub backoff: Duration,
    /// The longest an ejection lasts.
    pub max_backoff: Duration,
    /// Whether a 5xx response counts as a failure.
    pub on_5xx: bool,
}

impl Default for PassiveHealth {
    fn default() -> Self {
        Self {
            failures: 3,
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
            on_5xx: false,
        }
    }
}

/// Which failed attempts go again on another server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryOn {
    /// The connection could not be made (refused, unreachable, timed out):
    /// the request never left, so any method goes again.
    pub connect: bool,
    /// No response head in time.
    pub timeout: bool,
    /// The connection was reset or closed before a response head.
    pub reset: bool,
    /// A 502 response.
    pub status_502: bool,
    /// A 503 response.
    pub status_503: bool,
    /// A 504 response.
    pub status_504: bool,
}

impl Default for RetryOn {
    /// Errors and timeouts, as nginx's `proxy_next_upstream` does.
    fn default() -> Self {
        Self {
            connect: true,
            timeout: true,
            reset: true,
            status_502: false,
            status_503: false,
            status_504: false,
        }
    }
}

/// Retries on other servers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Further attempts after the first, each on a server not tried yet.
    pub retries: u32,
    /// Which failures go again.
    pub on: RetryOn,
    /// Retries may add at most this fraction of the requests of the last
    /// ten seconds (per worker) ...
    pub budget_ratio: f64,
    /// ... or this many per second, whichever is more.
    pub budget_min_per_second: u32,
    /// No retry starts once this long has passed since the first attempt.
    pub total_timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            retries: 2,
            on: RetryOn::default(),
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            total_timeout: None,
        }
    }
}

/// Sticky sessions: a cookie names the server that answered first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    /// The cookie's name.
    pub cookie: String,
    /// The cookie's lifetime (`Max-Age`); `None` for a session cookie.
    pub ttl: Option<Duration>,
    /// Each server's cookie value, by server index: a keyed hash of the
    /// server, so the cookie does not show its address.
    values: Box<[String]>,
}

impl Sticky {
    /// Sticky settings for `servers`; `secret` keys the hash that names
    /// them (the group's name when there is none, so that every proxy with
    /// the same configuration names a server alike).
    pub fn new(cookie: String, ttl: Option<Duration>, secret: &str, servers: &[ServerSpec]) -> Self {
        let values = servers
            .iter()
            .map(|s| format!("{:016x}", keyed_hash(secret.as_bytes(), s.identity().as_bytes())))
            .collect();
        Self { cookie, ttl, values }
    }

    /// The cookie value that names server `peer`.
    pub fn value(&self, peer: usize) -> &str {
        &self.values[peer]
    }

    /// The server a cookie value names.
    pub fn server(&self, value: &[u8]) -> Option<usize> {
        self.values.iter().position(|v| v.as_bytes() == value)
    }
}

/// An upstream group, validated: shared by every worker.
#[derive(Debug)]
pub struct UpstreamGroup {
    /// The group's name, as routes and logs refer to it.
    pub name: String,
    /// The servers, in configuration order.
    pub servers: Vec<ServerSpec>,
    /// How requests are spread.
    pub algorithm: Algorithm,
    /// Passive health.
    pub passive: PassiveHealth,
    /// Retries on other servers.
    pub retry: RetryPolicy,
    /// When no server is healthy, send to the least bad one instead of
    /// answering 503.
    pub fail_open: bool,
    /// Sticky sessions, when on.
    pub sticky: Option<Sticky>,
    /// Connect timeout for this group's servers; `None`: the listener's.
    pub connect_timeout: Option<Duration>,
    /// Time allowed for a response head; `None`: the listener's.
    pub response_timeout: Option<Duration>,
    /// Idle connections kept per server and worker (0: none); `None`:
    /// `[http] upstream_keepalive`.
    pub keepalive: Option<usize>,
    /// How long an idle connection is kept; `None`: `[http]
    /// upstream_keepalive_timeout`.
    pub keepalive_timeout: Option<Duration>,
    /// Send a PROXY protocol v2 header with the client's addresses at the
    /// start of every connection to the servers (each connection then
    /// carries one client: none is reused for another).
    pub proxy_protocol: bool,
    /// Active health and connection counts, shared by all workers.
    pub health: Arc<HealthTable>,
    ring: Option<Ring>,
    /// Walker's alias table of the weights, for weighted random picks in
    /// constant time (empty when the weights are all equal).
    alias: Box<[AliasSlot]>,
    /// The weights, dense, for the scans of weighted round robin.
    weights: Box<[i64]>,
    /// Smooth weighted round robin's sequence over all the servers, one
    /// whole round (weights divided by their common divisor): a pick walks
    /// it instead of scanning every server. `None` when a round would be
    /// too long to keep; the pick then scans.
    schedule: Option<Box<[u16]>>,
    /// Least connections' factor per server: load x factor orders servers
    /// as load / weight does (exactly, when the weights' least common
    /// multiple fits 32 bits), with a multiplication and no division.
    load_factors: Box<[u64]>,
    /// Backup servers, one bit each.
    backups: Box<[u64]>,
    /// Servers with a connection limit.
    limited: Box<[usize]>,
    uniform: bool,
}

impl UpstreamGroup {
    /// A group of `servers` balanced by `algorithm`, with default passive
    /// health and retries, failing open, not sticky.
    pub fn new(name: impl Into<String>, servers: Vec<ServerSpec>, algorithm: Algorithm) -> Self {
        let ring = matches!(algorithm, Algorithm::ConsistentHash { .. }).then(|| Ring::new(&servers));
        let uniform = servers.windows(2).all(|w| w[0].weight == w[1].weight);
        let weights: Box<[i64]> = servers.iter().map(|s| i64::from(s.weight.max(1))).collect();
        let schedule = matches!(algorithm, Algorithm::WeightedRoundRobin)
            .then(|| smooth_schedule(&weights))
            .flatten();
        let load_factors = load_factors(&weights);
        let alias = if uniform {
            Box::default()
        } else {
            alias_table(&weights)
        };
        let mut backups = vec![0u64; servers.len().div_ceil(64)];
        for (i, s) in servers.iter().enumerate() {
            if s.backup {
                backups[i / 64] |= 1 << (i % 64);
            }
        }
        let limited = (0..servers.len())
            .filter(|&i| servers[i].max_connections.is_some())
            .collect();
        let health = Arc::new(HealthTable::new(&servers));
        Self {
            name: name.into(),
            servers,
            algorithm,
            passive: PassiveHealth::default(),
            retry: RetryPolicy::default(),
            fail_open: true,
            sticky: None,
            connect_timeout: None,
            response_timeout: None,
            keepalive: None,
            keepalive_timeout: None,
            proxy_protocol: false,
            health,
            ring,
            alias,
            weights,
            schedule,
            load_factors,
            backups: backups.into_boxed_slice(),
            limited,
            uniform,
        }
    }

    /// A group of plain servers (weight 1) in round robin.
    pub fn round_robin(name: impl Into<String>, addrs: &[SocketAddr]) -> Self {
        Self::new(
            name,
            addrs.iter().copied().map(ServerSpec::new).collect(),
            Algorithm::RoundRobin,
        )
    }

    /// The servers' addresses as the configuration gave them (see
    /// [`HealthTable::addr`] for the current ones).
    pub fn addrs(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.servers.iter().map(|s| s.addr)
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Whether the group has no server.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }

    pub(crate) fn ring(&self) -> Option<&Ring> {
        self.ring.as_ref()
    }

    pub(crate) fn alias(&self) -> &[AliasSlot] {
        &self.alias
    }

    pub(crate) fn weights(&self) -> &[i64] {
        &self.weights
    }

    pub(crate) fn schedule(&self) -> Option<&[u16]> {
        self.schedule.as_deref()
    }

    pub(crate) fn load_factors(&self) -> &[u64] {
        &self.load_factors
    }

    pub(crate) fn backup_words(&self) -> &[u64] {
        &self.backups
    }

    pub(crate) fn has_limits(&self) -> bool {
        !self.limited.is_empty()
    }

    pub(crate) fn limited(&self) -> impl Iterator<Item = usize> + '_ {
        self.limited.iter().copied()
    }

    pub(crate) fn uniform_weights(&self) -> bool {
        self.uniform
    }
}

/// One server's slot of an alias table: a random point in the slot below
/// `keep` (of 2^32) picks the server, above it picks `other`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AliasSlot {
    pub(crate) keep: u64,
    pub(crate) other: u16,
}

/// Vose's alias method over `weights`: n slots of equal width, each split
/// between its own server and one other, so that every server's share of
/// the whole is its weight's (to 2^-32).
pub(crate) fn alias_table(weights: &[i64]) -> Box<[AliasSlot]> {
    let n = weights.len() as u128;
    let total: u128 = weights.iter().map(|&w| w as u128).sum();
    // Each slot holds `total` units; server i brings weight x n of them.
    let mut units: Vec<u128> = weights.iter().map(|&w| w as u128 * n).collect();
    let mut slots: Vec<AliasSlot> = (0..weights.len())
        .map(|i| AliasSlot {
            keep: 1 << 32,
            other: i as u16,
        })
        .collect();
    let (mut small, mut large): (Vec<usize>, Vec<usize>) =
        (0..weights.len()).partition(|&i| units[i] < total);
    while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
        small.pop();
        slots[s] = AliasSlot {
            keep: ((units[s] << 32) / total) as u64,
            other: l as u16,
        };
        units[l] -= total - units[s];
        if units[l] < total {
            large.pop();
            small.push(l);
        }
    }
    slots.into_boxed_slice()
}

/// The longest smooth weighted round robin sequence kept (entries of two
/// bytes), and the most work building one may take (entries x servers).
const MAX_SCHEDULE: usize = 1 << 14;
const MAX_SCHEDULE_WORK: usize = 1 << 22;

/// One whole round of nginx's smooth weighted round robin over `weights`
/// (each server appears its weight's share of times, interleaved: 5, 1, 1
/// give a a b a c a a), or `None` when it would be too long.
fn smooth_schedule(weights: &[i64]) -> Option<Box<[u16]>> {
    let divisor = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
    let total = weights.iter().map(|w| w / divisor).sum::<i64>() as usize;
    if weights.is_empty() || total > MAX_SCHEDULE || total.saturating_mul(weights.len()) > MAX_SCHEDULE_WORK {
        return None;
    }
    let mut current = vec![0i64; weights.len()];
    let mut round = Vec::with_capacity(total);
    for _ in 0..total {
        let mut best = 0;
        for (i, &weight) in weights.iter().enumerate() {
            current[i] += weight / divisor;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total as i64;
        round.push(best as u16);
    }
    Some(round.into_boxed_slice())
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// Per server, `L / weight` where `L` is the weights' least common
/// multiple when it fits 32 bits (then `load x factor` orders servers
/// exactly as `load / weight`), else `2^32 / weight` (as close as 32 bits
/// tell).
fn load_factors(weights: &[i64]) -> Box<[u64]> {
    let lcm = weights
        .iter()
        .try_fold(1i64, |l, &w| {
            (l / gcd(l, w))
                .checked_mul(w)
                .filter(|&next| next <= i64::from(u32::MAX))
        })
        .unwrap_or(1 << 32);
    weights.iter().map(|&w| (lcm / w) as u64).collect()
}

/// The hash of a request key, as consistent hashing takes it.
pub fn key_hash(key: &[u8]) -> u64 {
    hash_bytes(key)
}

/// The hash of a client address, as consistent hashing by `client_ip`
/// (HTTP and L4 alike) takes it.
pub fn ip_hash(ip: std::net::IpAddr) -> u64 {
    match ip {
        std::net::IpAddr::V4(ip) => key_hash(&ip.octets()),
        std::net::IpAddr::V6(ip) => key_hash(&ip.octets()),
    }
}
