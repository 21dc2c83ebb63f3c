//! Counters for `/metrics` and the status page: dense per-worker tables
//! indexed by configuration ids (listener, route, ACL rule, upstream
//! server), each written by its worker alone and summed when scraped.
//!
//! A worker's counters live in memory no other worker writes: an update
//! is a relaxed load and store (a plain add on x86), never a shared atomic
//! read-modify-write, and a scrape reads them with relaxed loads. Nothing
//! here exists unless `[admin]` is configured.

use std::sync::atomic::{AtomicU64, Ordering};

/// One worker's counter (single writer).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n` (only the owning worker calls this).
    #[inline]
    pub fn add(&self, n: u64) {
        self.0
            .store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// Subtracts `n` (a gauge going down; only the owning worker).
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0
            .store(self.0.load(Ordering::Relaxed).wrapping_sub(n), Ordering::Relaxed);
    }

    /// The value now, from any thread.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The status classes requests are counted by; `0xx` is no status sent
/// (the connection closed instead).
pub const STATUS_CLASSES: [&str; 6] = ["0xx", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index of `status`'s class in [`STATUS_CLASSES`].
#[inline]
pub fn status_class(status: u16) -> usize {
    match status / 100 {
        1..=5 => usize::from(status / 100),
        _ => 0,
    }
}

/// Upper bounds of the latency histogram's buckets, in microseconds
/// (Prometheus's default buckets, 1 ms to 10 s, with +Inf after them).
pub const LATENCY_BOUNDS_US: [u64; 12] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000, 10_000_000,
];

/// A latency histogram: counts per bucket (not cumulative; the scrape
/// adds them up), their sum and their count.
#[derive(Debug, Default)]
pub struct Histogram {
    /// One per bound, then one for +Inf.
    pub buckets: [Counter; LATENCY_BOUNDS_US.len() + 1],
    /// Sum of the observations, in microseconds.
    pub sum_us: Counter,
}

impl Histogram {
    /// Counts one observation of `us` microseconds.
    #[inline]
    pub fn observe(&self, us: u64) {
        let bucket = LATENCY_BOUNDS_US
            .iter()
            .position(|&bound| us <= bound)
            .unwrap_or(LATENCY_BOUNDS_US.len());
        self.buckets[bucket].add(1);
        self.sum_us.add(us);
    }

    /// How many observations.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(Counter::get).sum()
    }
}

/// Requests by status class.
pub type ByClass = [Counter; STATUS_CLASSES.len()];

/// What an access decision counts under, past a listener's ACL rules:
/// `rules.len() + 0` is the default, then these.
pub const ACL_SPECIAL: [&str; 5] = ["default", "connect_ports", "block_private", "auth", "loop"];

/// One listener's counters on one worker.
#[derive(Debug)]
pub struct ListenerMetrics {
    /// Requests by status class.
    pub requests: ByClass,
    /// Requests by route, then status class (reverse listeners).
    pub routes: Box<[ByClass]>,
    /// From a head's arrival to the end of its answer.
    pub latency: Histogram,
    /// Bytes from clients (heads, bodies, tunnels).
    pub bytes_in: Counter,
    /// Bytes to clients.
    pub bytes_out: Counter,
    /// Access decisions by rule (then [`ACL_SPECIAL`]): allowed, denied.
    pub acl: Box<[[Counter; 2]]>,
    /// Tunnels that ended.
    pub tunnels: Counter,
    /// Requests refused while their head was read.
    pub refused_heads: Counter,
    /// Connections closed unanswered over a connection limit.
    pub rejected_connections: Counter,
    /// TLS handshakes that completed, and that failed.
    pub tls_handshakes: [Counter; 2],
}

impl ListenerMetrics {
    /// Counters for a listener with `routes` routes and `acl_rules` ACL
    /// rules.
    pub fn new(routes: usize, acl_rules: usize) -> Self {
        Self {
            requests: Default::default(),
            routes: (0..routes).map(|_| Default::default()).collect(),
            latency: Histogram::default(),
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            acl: (0..acl_rules + ACL_SPECIAL.len())
                .map(|_| Default::default())
                .collect(),
            tunnels: Counter::default(),
            refused_heads: Counter::default(),
            rejected_connections: Counter::default(),
            tls_handshakes: Default::default(),
        }
    }

    /// Whether these counters fit a listener with `routes` routes and
    /// `acl_rules` ACL rules (a reload keeps them then).
    pub fn has_shape(&self, routes: usize, acl_rules: usize) -> bool {
        self.routes.len() == routes && self.acl.len() == acl_rules + ACL_SPECIAL.len()
    }
}

/// One upstream server's counters on one worker.
#[derive(Debug, Default)]
pub struct ServerMetrics {
    /// Attempts sent to it.
    pub attempts: Counter,
    /// Attempts that failed (no connection, a reset, a timeout, a 5xx).
    pub failures: Counter,
    /// Attempts under way now (a gauge).
    pub in_flight: Counter,
}

/// Every upstream's servers' counters on one worker, by group then server.
#[derive(Debug, Default)]
pub struct UpstreamMetrics {
    /// By group, then server index.
    pub groups: Box<[Box<[ServerMetrics]>]>,
}

impl UpstreamMetrics {
    /// Counters for groups of these sizes.
    pub fn new(sizes: impl IntoIterator<Item = usize>) -> Self {
        Self {
            groups: sizes
                .into_iter()
                .map(|n| (0..n).map(|_| ServerMetrics::default()).collect())
                .collect(),
        }
    }

    /// Server `server` of group `group`, if both exist.
    #[inline]
    pub fn server(&self, group: usize, server: usize) -> Option<&ServerMetrics> {
        self.groups.get(group)?.get(server)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_fall_in_their_class_and_none_in_0xx() {
        assert_eq!(STATUS_CLASSES[status_class(204)], "2xx");
        assert_eq!(STATUS_CLASSES[status_class(499)], "4xx");
        assert_eq!(STATUS_CLASSES[status_class(0)], "0xx");
        assert_eq!(STATUS_CLASSES[status_class(600)], "0xx");
    }

    #[test]
    fn the_histogram_puts_each_observation_in_the_first_bucket_that_holds_it() {
        let h = Histogram::default();
        h.observe(1_000);
        h.observe(1_001);
        h.observe(60_000_000);
        assert_eq!(
            h.buckets[0].get(),
            1,
            "1 ms is in the 1 ms bucket (le is inclusive)"
        );
        assert_eq!(h.buckets[1].get(), 1);
        assert_eq!(h.buckets[LATENCY_BOUNDS_US.len()].get(), 1, "+Inf");
        assert_eq!((h.count(), h.sum_us.get()), (3, 60_002_001));
    }

    #[test]
    fn gauges_go_up_and_down() {
        let c = Counter::default();
        c.add(2);
        c.sub(1);
        assert_eq!(c.get(), 1);
    }
}
