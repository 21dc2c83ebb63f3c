//! The per-worker balancer of a group: picks a server for each attempt and
//! learns from how the attempt went.
//!
//! A [`Balancer`] lives on one worker (`Rc`, `Cell`s: no lock, no atomic
//! write on a pick, except for servers with a connection limit). Its view
//! of a server joins the process-wide active health (the
//! [`HealthTable`](crate::HealthTable)) with what this worker saw itself:
//! requests in flight, a decaying peak latency, and passive health (a
//! server that fails `failures` times in a row is ejected for a backoff
//! that doubles each time it fails its probation).
//!
//! A pick considers the primaries that are up, not ejected, under their
//! connection limit and not yet tried by this request; then the backups
//! alike; then, when the group fails open, every server not tried, as if
//! all were healthy (Envoy's panic mode): a guess beats a certain 503.
//! The pick is a [`Lease`]: it counts as in flight until it is finished
//! with an [`Outcome`] or dropped.

use std::{cell::Cell, net::SocketAddr, rc::Rc, sync::Arc, time::Duration};

use crate::{
    budget::RetryBudget,
    group::{Algorithm, UpstreamGroup},
    hash::mix,
};

/// Index of a server in its group.
pub type PeerId = usize;

/// The most attempts one request makes (the first and its retries).
pub const MAX_ATTEMPTS: usize = 8;

/// The servers a request has tried, so that a retry goes elsewhere.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tried {
    ids: [u16; MAX_ATTEMPTS],
    len: u8,
}

impl Tried {
    /// Adds `peer`; once full, the oldest entries stay.
    pub fn add(&mut self, peer: PeerId) {
        if usize::from(self.len) < MAX_ATTEMPTS {
            self.ids[usize::from(self.len)] = peer as u16;
            self.len += 1;
        }
    }

    /// The servers tried, as indices.
    pub(crate) fn ids(&self) -> &[u16] {
        &self.ids[..usize::from(self.len)]
    }

    /// Whether `peer` was tried.
    #[inline]
    pub fn contains(&self, peer: PeerId) -> bool {
        self.ids[..usize::from(self.len)].contains(&(peer as u16))
    }

    /// How many servers were tried.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Whether none was.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// How an attempt on a server went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response head came back after `latency` (a 5xx is
    /// [`Outcome::ServerError`]).
    Success {
        /// Time from the pick to the response head.
        latency: Duration,
    },
    /// A 5xx response: a failure for passive health only when the group
    /// says so.
    ServerError {
        /// Time from the pick to the response head.
        latency: Duration,
    },
    /// No connection, a reset, a close or a timeout before a response head.
    Failure,
    /// The attempt ended for a reason that says nothing about the server
    /// (the client left, the request was refused).
    Neutral,
}

/// Why no server was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPeer {
    /// Every server was tried by this request, or the group has none.
    AllTried,
    /// Servers could take it but are at their connection limit: waiting
    /// briefly may help.
    AtLimit,
    /// No server is healthy and the group does not fail open.
    Unhealthy,
}

/// What a finished attempt changed about its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthEvent {
    /// Ejected by passive health for `backoff`.
    Ejected {
        /// How long it stays out before its probation.
        backoff: Duration,
    },
    /// Back from an ejection: it passed its probation.
    Returned,
}

/// Peak-latency decay: a latency sample weighs half after this long.
const DECAY_MS: f64 = 10_000.0;

/// The latency a failure counts as, for `p2c_ewma`: a server that fails
/// fast must not look fast.
const FAILURE_PENALTY: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
struct ServerState {
    /// Peak-EWMA latency in nanoseconds, and when it was last updated.
    latency_ns: Cell<f64>,
    latency_at_ms: Cell<u64>,
    /// Failures in a row.
    failures: Cell<u32>,
    /// Ejected until this time (ms); 0 when not ejected nor on probation.
    ejected_until: Cell<u64>,
    /// Ejections in a row without a passed probation.
    ejections: Cell<u32>,
}

/// A group's balancer on one worker.
#[derive(Debug)]
pub struct Balancer {
    group: Arc<UpstreamGroup>,
    servers: Box<[ServerState]>,
    /// Requests in flight from this worker, by server (dense: scanned).
    in_flight: Box<[Cell<u32>]>,
    /// Smooth weighted round robin's place in the group's schedule, and
    /// its current weights by server for the scan when a walk of the
    /// schedule finds no candidate.
    round_at: Cell<usize>,
    current: Box<[Cell<i64>]>,
    /// Round robin's next server, and the rotating start of scans.
    next: Cell<usize>,
    rng: Cell<u64>,
    /// Servers ejected or on probation on this worker: how many, and
    /// which.
    ejected: Cell<u32>,
    ejected_bits: [Cell<u64>; MASK_WORDS],
    total_in_flight: Cell<u32>,
    /// Least connections' servers with the least load for their weight.
    least: LeastIndex,
    /// Every server: the candidates while none is tried, down, ejected,
    /// limited or a backup (the usual case, with no mask to build).
    everyone: Mask,
    /// Whether the group has backups or connection limits.
    plain: bool,
    /// The clock of the pick under way.
    now_ms: Cell<u64>,
    budget: RetryBudget,
    /// The servers' addresses as this worker last took them from the
    /// health table, and the table's address epoch then; followed only
    /// when some server is given by name.
    addrs: Box<[Cell<SocketAddr>]>,
    addr_epoch: Cell<u64>,
    named: bool,
}

impl Balancer {
    /// A balancer over `group` for worker number `worker` (workers start
    /// their rotations at different servers, and their random streams
    /// differ).
    pub fn new(group: Arc<UpstreamGroup>, worker: usize) -> Self {
        let n = group.len().max(1);
        let budget = RetryBudget::new(group.retry.budget_ratio, group.retry.budget_min_per_second);
        Self {
            servers: (0..group.len()).map(|_| ServerState::default()).collect(),
            in_flight: (0..group.len()).map(|_| Cell::new(0)).collect(),
            round_at: Cell::new(group.schedule().map_or(0, |round| spread(worker, round.len()))),
            current: (0..group.len()).map(|_| Cell::new(0)).collect(),
            next: Cell::new(worker % n),
            rng: Cell::new(mix(0x5eed ^ (worker as u64 + 1))),
            ejected: Cell::new(0),
            ejected_bits: Default::default(),
            total_in_flight: Cell::new(0),
            least: LeastIndex::default(),
            everyone: Mask::full(group.len()),
            plain: !group.has_limits() && group.backup_words().iter().all(|&b| b == 0),
            now_ms: Cell::new(0),
            budget,
            addrs: group.servers.iter().map(|s| Cell::new(s.addr)).collect(),
            addr_epoch: Cell::new(0),
            named: group.servers.iter().any(|s| s.host.is_some()),
            group,
        }
    }

    /// The group.
    pub fn group(&self) -> &UpstreamGroup {
        &self.group
    }

    /// The address of server `peer`.
    pub fn addr(&self, peer: PeerId) -> SocketAddr {
        if self.named {
            let epoch = self.group.health.addr_epoch();
            if epoch != self.addr_epoch.get() {
                self.addr_epoch.set(self.group.health.copy_addrs(&self.addrs));
            }
        }
        self.addrs[peer].get()
    }

    /// Requests in flight from this worker to server `peer`.
    pub fn in_flight(&self, peer: PeerId) -> u32 {
        self.in_flight[peer].get()
    }

    /// Picks a server for an attempt: `key` is the request's hash for
    /// consistent hashing (ignored by the other algorithms), `tried` the
    /// servers this request already tried, `now_ms` the worker's clock.
    pub fn pick(self: &Rc<Self>, key: u64, tried: &Tried, now_ms: u64) -> Result<Lease, NoPeer> {
        let mut skip = *tried;
        loop {
            let (peer, fail_open) = match self.choose(key, &skip, now_ms) {
                // Every server left was lost to another worker's request
                // at its limit: a wait may still help.
                Err(NoPeer::AllTried) if skip.len() > tried.len() => return Err(NoPeer::AtLimit),
                chosen => chosen?,
            };
            if let Some(limit) = self.group.servers[peer].max_connections {
                if !self.group.health.try_acquire(peer, limit) {
                    // Taken by another worker since the look: try the others.
                    skip.add(peer);
                    if skip.len() == MAX_ATTEMPTS {
                        return Err(NoPeer::AtLimit);
                    }
                    continue;
                }
            }
            return Ok(self.lease(peer, fail_open));
        }
    }

    /// The lease of server `peer` when it may take a request now: up, not
    /// ejected, not tried, under its limit (sticky sessions ask for their
    /// server by name).
    pub fn pick_server(self: &Rc<Self>, peer: PeerId, tried: &Tried, now_ms: u64) -> Option<Lease> {
        if peer >= self.servers.len() || !self.usable(peer, tried, now_ms) {
            return None;
        }
        if let Some(limit) = self.group.servers[peer].max_connections {
            if !self.group.health.try_acquire(peer, limit) {
                return None;
            }
        }
        Some(self.lease(peer, false))
    }

    #[inline]
    fn lease(self: &Rc<Self>, peer: PeerId, fail_open: bool) -> Lease {
        let load = &self.in_flight[peer];
        load.set(load.get() + 1);
        self.least.raised(peer);
        self.total_in_flight.set(self.total_in_flight.get() + 1);
        Lease {
            balancer: Rc::clone(self),
            peer,
            fail_open,
            done: false,
        }
    }

    /// Counts a request's first attempt for the retry budget.
    pub fn record_request(&self, now_ms: u64) {
        self.budget.record_request(now_ms);
    }

    /// Takes a retry from the budget; `false` when retries already added
    /// their share of the recent requests.
    pub fn try_retry(&self, now_ms: u64) -> bool {
        self.budget.try_retry(now_ms)
    }

    /// Whether server `peer` may take a request now.
    fn usable(&self, peer: PeerId, tried: &Tried, now_ms: u64) -> bool {
        !tried.contains(peer) && self.healthy(peer, now_ms) && self.under_limit(peer)
    }

    #[inline]
    fn healthy(&self, peer: PeerId, now_ms: u64) -> bool {
        self.group.health.is_up(peer)
            && (self.ejected.get() == 0 || self.servers[peer].ejected_until.get() <= now_ms)
    }

    #[inline]
    fn under_limit(&self, peer: PeerId) -> bool {
        match self.group.servers[peer].max_connections {
            None => true,
            Some(limit) => self.group.health.in_flight(peer) < limit,
        }
    }

    /// The servers not tried by this request, as bits, without those at
    /// their connection limit: the base of every candidate set.
    #[inline]
    fn open_mask(&self, tried: &Tried) -> Mask {
        let mut mask = Mask::full(self.servers.len());
        self.close(&mut mask, tried);
        mask
    }

    /// Takes out of `mask` the servers tried and those at their limit.
    #[inline]
    fn close(&self, mask: &mut Mask, tried: &Tried) {
        for &t in tried.ids() {
            mask.clear(usize::from(t));
        }
        if self.group.has_limits() {
            for i in self.group.limited() {
                if !self.under_limit(i) {
                    mask.clear(i);
                }
            }
        }
    }

    /// Keeps of `mask` the servers that are healthy: up by active checks
    /// and not ejected by this worker.
    #[inline]
    fn keep_healthy(&self, mask: &mut Mask, now_ms: u64) {
        let health = &self.group.health;
        let any_ejected = self.ejected.get() != 0;
        mask.retain(|w, word| {
            let mut word = word & !health.down_word(w);
            if any_ejected {
                // Only the ejected servers' clocks are read.
                let mut out = word & self.ejected_bits[w].get();
                while out != 0 {
                    let b = out.trailing_zeros() as usize;
                    out &= out - 1;
                    if self.servers[w * 64 + b].ejected_until.get() > now_ms {
                        word &= !(1 << b);
                    }
                }
            }
            word
        });
    }

    /// The server for the next attempt, and whether the pick failed open.
    /// (Masks are built and narrowed in place: at 136 bytes, each copy
    /// would be a call to `memcpy`.)
    fn choose(&self, key: u64, tried: &Tried, now_ms: u64) -> Result<(PeerId, bool), NoPeer> {
        self.now_ms.set(now_ms);
        let n = self.servers.len();
        if tried.len() >= n {
            return Err(NoPeer::AllTried);
        }
        let least_conn = matches!(self.group.algorithm, Algorithm::LeastConn);
        if self.plain && tried.is_empty() && self.ejected.get() == 0 && !self.group.health.any_down() {
            let everyone = &self.everyone;
            return match self.by_algorithm(key, everyone, least_conn.then_some(everyone)) {
                Some(peer) => Ok((peer, false)),
                None => Err(NoPeer::AllTried),
            };
        }
        let backups = self.group.backup_words();
        let backup = |w: usize| backups.get(w).copied().unwrap_or(0);
        let has_backups = backups.iter().any(|&b| b != 0);
        // The healthy primaries this request did not try, under their
        // limit. Least connections also keeps an index over all the
        // healthy primaries, tried or not.
        let mut ok = Mask::full(n);
        self.close(&mut ok, tried);
        let mut universe = Mask::full(if least_conn { n } else { 0 });
        if least_conn {
            self.keep_healthy(&mut universe, now_ms);
            universe.retain(|w, word| word & !backup(w));
            ok.retain(|w, word| word & universe.words[w]);
        } else {
            self.keep_healthy(&mut ok, now_ms);
            if has_backups {
                ok.retain(|w, word| word & !backup(w));
            }
        }
        if let Some(peer) = self.by_algorithm(key, &ok, least_conn.then_some(&universe)) {
            return Ok((peer, false));
        }
        if has_backups {
            let mut ok = Mask::full(n);
            self.close(&mut ok, tried);
            self.keep_healthy(&mut ok, now_ms);
            ok.retain(|w, word| word & backup(w));
            if let Some(peer) = self.by_algorithm(key, &ok, None) {
                return Ok((peer, false));
            }
        }
        // Nothing healthy under its limit: is it the limits, or health?
        let mut untried = Mask::full(n);
        for &t in tried.ids() {
            untried.clear(usize::from(t));
        }
        let mut healthy = untried;
        self.keep_healthy(&mut healthy, now_ms);
        if !healthy.is_empty() {
            return Err(NoPeer::AtLimit);
        }
        if !self.group.fail_open {
            return Err(NoPeer::Unhealthy);
        }
        match self.by_algorithm(key, &self.open_mask(tried), None) {
            Some(peer) => Ok((peer, true)),
            None if !untried.is_empty() => Err(NoPeer::AtLimit),
            None => Err(NoPeer::AllTried),
        }
    }

    /// Picks from `ok` by the group's algorithm. `primaries`, for least
    /// connections: all the healthy primaries, when `ok` is those of them
    /// this request did not try and that are under their limit.
    fn by_algorithm(&self, key: u64, ok: &Mask, primaries: Option<&Mask>) -> Option<PeerId> {
        if ok.is_empty() {
            return None;
        }
        match &self.group.algorithm {
            Algorithm::RoundRobin => self.round_robin(ok),
            Algorithm::WeightedRoundRobin => self.smooth_weighted(ok),
            Algorithm::Random => self.random(ok),
            Algorithm::LeastConn => match primaries {
                Some(universe) => self.least_conn_indexed(ok, universe),
                None => self.least_conn(ok),
            },
            Algorithm::P2cEwma => self.p2c(ok),
            Algorithm::ConsistentHash { balance_factor, .. } => self.consistent(key, *balance_factor, ok),
        }
    }

    fn round_robin(&self, ok: &Mask) -> Option<PeerId> {
        let peer = ok.first_from(self.next.get())?;
        self.next.set(if peer + 1 == self.servers.len() {
            0
        } else {
            peer + 1
        });
        Some(peer)
    }

    /// nginx's smooth weighted round robin: weights 5, 1, 1 give
    /// a a b a c a a, not a a a a a b c. The group keeps one round of the
    /// sequence; a pick takes the next entry that is a candidate, so that
    /// over a round every candidate gets its weight's share whoever is
    /// left out. A walk that meets only servers left out falls back to the
    /// scan nginx does.
    fn smooth_weighted(&self, ok: &Mask) -> Option<PeerId> {
        let Some(round) = self.group.schedule() else {
            return self.smooth_weighted_scan(ok);
        };
        let mut at = self.round_at.get();
        for _ in 0..SCHEDULE_WALK.min(round.len()) {
            let peer = usize::from(round[at]);
            at = if at + 1 == round.len() { 0 } else { at + 1 };
            if ok.contains(peer) {
                self.round_at.set(at);
                return Some(peer);
            }
        }
        self.round_at.set(at);
        self.smooth_weighted_scan(ok)
    }

    /// Smooth weighted round robin over `ok` by nginx's scan: every server
    /// gains its weight, the richest is picked and pays the total.
    fn smooth_weighted_scan(&self, ok: &Mask) -> Option<PeerId> {
        let weights = self.group.weights();
        let mut total = 0i64;
        let mut best: Option<(PeerId, i64)> = None;
        for (w, &word) in ok.words[..ok.len].iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let weight = weights[i];
                let current = self.current[i].get() + weight;
                self.current[i].set(current);
                total += weight;
                if best.is_none_or(|(_, c)| current > c) {
                    best = Some((i, current));
                }
            }
        }
        let (peer, current) = best?;
        self.current[peer].set(current - total);
        Some(peer)
    }

    fn random_u64(&self) -> u64 {
        // xorshift64*: a worker's own stream, no lock, no syscall.
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A random index in proportion to the weights.
    fn random_index(&self) -> usize {
        let n = self.servers.len();
        let r = self.random_u64();
        if self.group.uniform_weights() {
            return ((u128::from(r) * n as u128) >> 64) as usize;
        }
        // The high half picks a slot, the low half a point in it.
        let slot = (((r >> 32) * n as u64) >> 32) as usize;
        match self.group.alias().get(slot) {
            Some(a) if r & 0xffff_ffff >= a.keep => usize::from(a.other),
            _ => slot,
        }
    }

    fn random(&self, ok: &Mask) -> Option<PeerId> {
        let at = self.random_index();
        if ok.contains(at) {
            return Some(at);
        }
        ok.first_from(at)
    }

    /// Requests in flight to `peer` for its weight, as least connections
    /// compares them: load x (L / weight), with no division.
    #[inline]
    fn load_score(&self, peer: PeerId) -> u64 {
        u64::from(self.in_flight[peer].get()) * self.group.load_factors()[peer]
    }

    /// The fewest requests in flight for the weight; ties go to the first
    /// from a rotating start.
    fn least_conn(&self, ok: &Mask) -> Option<PeerId> {
        let mut best = None;
        let mut least = u64::MAX;
        // Visited from the start, so the first of equals wins.
        ok.for_each_from(self.next.get(), |i| {
            let load = self.load_score(i);
            if load < least {
                least = load;
                best = Some(i);
            }
        });
        let peer = best?;
        Some(self.after_least(peer))
    }

    fn after_least(&self, peer: PeerId) -> PeerId {
        self.next.set(if peer + 1 >= self.servers.len() {
            0
        } else {
            peer + 1
        });
        peer
    }

    /// [`Balancer::least_conn`] over `ok`, a subset of `universe` (the
    /// healthy primaries), through the index of the servers at the least
    /// load: the same pick, without a scan while one of them is a
    /// candidate.
    fn least_conn_indexed(&self, ok: &Mask, universe: &Mask) -> Option<PeerId> {
        if !self.least.covers(universe) {
            self.least.rebuild(universe, |i| self.load_score(i));
        }
        // `ok` is within the universe: its least load is the universe's
        // when any of the servers at that load is in it.
        let mut at_least = Mask::full(self.servers.len());
        at_least.retain(|w, word| word & ok.words[w] & self.least.at_least[w].get());
        match at_least.first_from(self.next.get()) {
            Some(peer) => Some(self.after_least(peer)),
            None => self.least_conn(ok),
        }
    }

    /// Power of two choices over peak-EWMA latency times load.
    fn p2c(&self, ok: &Mask) -> Option<PeerId> {
        let a = self.random(ok)?;
        let n = self.servers.len();
        let mut b = self.random_index();
        if b == a || !ok.contains(b) {
            // The next candidate after `b` that is not `a`.
            b = match ok.first_from((b + 1) % n) {
                Some(b) if b != a => b,
                _ => match ok.first_from((a + 1) % n) {
                    Some(b) if b != a => b,
                    _ => return Some(a),
                },
            };
        }
        // (latency + 1) x (load + 1) / weight, compared without dividing.
        let weights = self.group.weights();
        let cost = |i: PeerId| (self.decayed_latency(i) + 1.0) * f64::from(self.in_flight[i].get() + 1);
        Some(if cost(b) * (weights[a] as f64) < cost(a) * (weights[b] as f64) {
            b
        } else {
            a
        })
    }

    /// The peak-EWMA latency of `peer`, decayed to now: a server that was
    /// slow and got no traffic since looks better as time passes.
    fn decayed_latency(&self, peer: PeerId) -> f64 {
        let s = &self.servers[peer];
        let elapsed = self.now_ms.get().saturating_sub(s.latency_at_ms.get()) as f64;
        if elapsed <= 0.0 {
            return s.latency_ns.get();
        }
        s.latency_ns.get() * (-elapsed / DECAY_MS).exp2()
    }

    /// Consistent hashing with bounded loads: clockwise from the key's
    /// point, the first server that is acceptable and below
    /// `ceil((1 + e) x mean load)`.
    fn consistent(&self, key: u64, e: f64, ok: &Mask) -> Option<PeerId> {
        let ring = self.group.ring()?;
        let mut cap: Option<u32> = None;
        let mut first_ok = None;
        for peer in ring.walk(key).take(ring_walk_limit(self.servers.len())) {
            if !ok.contains(peer) {
                continue;
            }
            first_ok.get_or_insert(peer);
            let load = self.in_flight[peer].get();
            if load == 0 {
                return Some(peer);
            }
            let cap = *cap.get_or_insert_with(|| {
                let candidates = ok.count().max(1);
                let mean = f64::from(self.total_in_flight.get() + 1) / candidates as f64;
                (mean * (1.0 + e)).ceil() as u32
            });
            if load < cap {
                return Some(peer);
            }
        }
        first_ok.or_else(|| ok.first_from(0))
    }

    /// Ends an attempt on `peer`: passive health and latency learn from it.
    fn finish(&self, peer: PeerId, outcome: Outcome, now_ms: u64) -> Option<HealthEvent> {
        let load = &self.in_flight[peer];
        load.set(load.get().saturating_sub(1));
        if self.least.tracks(peer) {
            self.least.lowered(peer, self.load_score(peer));
        }
        self.total_in_flight
            .set(self.total_in_flight.get().saturating_sub(1));
        if self.group.servers[peer].max_connections.is_some() {
            self.group.health.release(peer);
        }
        let passive = self.group.passive;
        let failed = match outcome {
            Outcome::Neutral => return None,
            Outcome::Success { latency } => {
                self.observe_latency(peer, latency, now_ms);
                false
            }
            Outcome::ServerError { latency } => {
                self.observe_latency(peer, latency, now_ms);
                passive.on_5xx
            }
            Outcome::Failure => {
                self.observe_latency(peer, FAILURE_PENALTY, now_ms);
                true
            }
        };
        self.passive(peer, failed, now_ms)
    }

    /// Passive health after an attempt that `failed` or not.
    fn passive(&self, peer: PeerId, failed: bool, now_ms: u64) -> Option<HealthEvent> {
        let passive = self.group.passive;
        let s = &self.servers[peer];
        if passive.failures == 0 {
            return None;
        }
        let on_probation = s.ejected_until.get() != 0 && s.ejected_until.get() <= now_ms;
        if !failed {
            s.failures.set(0);
            if on_probation {
                s.ejected_until.set(0);
                s.ejections.set(0);
                self.ejected.set(self.ejected.get().saturating_sub(1));
                self.mark_ejected(peer, false);
                return Some(HealthEvent::Returned);
            }
            return None;
        }
        if s.ejected_until.get() > now_ms {
            // Already out (an attempt begun before the ejection).
            return None;
        }
        s.failures.set(s.failures.get() + 1);
        if !on_probation && s.failures.get() < passive.failures {
            return None;
        }
        // Eject: the first time for `backoff`, then twice as long after
        // each failed probation.
        let doublings = s.ejections.get().min(16);
        let backoff = passive
            .backoff
            .saturating_mul(1 << doublings)
            .min(passive.max_backoff.max(passive.backoff));
        if !on_probation {
            self.ejected.set(self.ejected.get() + 1);
            self.mark_ejected(peer, true);
        }
        s.ejections.set(s.ejections.get() + 1);
        s.failures.set(0);
        // Never 0, which means "not ejected".
        s.ejected_until.set((now_ms + backoff.as_millis() as u64).max(1));
        Some(HealthEvent::Ejected { backoff })
    }

    fn mark_ejected(&self, peer: PeerId, ejected: bool) {
        if let Some(word) = self.ejected_bits.get(peer / 64) {
            let bit = 1u64 << (peer % 64);
            word.set(if ejected {
                word.get() | bit
            } else {
                word.get() & !bit
            });
        }
    }

    /// Peak EWMA: a slower sample takes over at once, faster ones pull the
    /// estimate down as time passes.
    fn observe_latency(&self, peer: PeerId, sample: Duration, now_ms: u64) {
        // Only p2c_ewma reads it.
        if !matches!(self.group.algorithm, Algorithm::P2cEwma) {
            return;
        }
        let sample_ns = sample.as_secs_f64() * 1e9;
        let s = &self.servers[peer];
        let old = s.latency_ns.get();
        let elapsed = now_ms.saturating_sub(s.latency_at_ms.get());
        let next = if sample_ns > old {
            sample_ns
        } else if elapsed == 0 {
            // No time has passed: the estimate keeps its weight whole.
            old
        } else {
            let keep = (-(elapsed as f64) / DECAY_MS).exp2();
            old * keep + sample_ns * (1.0 - keep)
        };
        s.latency_ns.set(next);
        s.latency_at_ms.set(now_ms);
    }
}

/// The most servers a group may have (the balancer's sets are fixed
/// arrays of bits, so a pick never allocates).
pub const MAX_SERVERS: usize = 64 * MASK_WORDS;

const MASK_WORDS: usize = 16;

/// A set of servers, one bit each.
#[derive(Debug, Clone, Copy)]
struct Mask {
    words: [u64; MASK_WORDS],
    /// Words in use.
    len: usize,
}

impl Mask {
    /// Servers `0..n` (at most [`MAX_SERVERS`]). Always inlined, so that
    /// the mask is built where it lives: a copy of a mask just written
    /// word by word stalls on store forwarding.
    #[inline(always)]
    fn full(n: usize) -> Self {
        let n = n.min(MAX_SERVERS);
        let mut mask = Self {
            words: [0u64; MASK_WORDS],
            len: n.div_ceil(64),
        };
        for (w, word) in mask.words.iter_mut().enumerate().take(mask.len) {
            let bits = (n - w * 64).min(64);
            *word = if bits == 64 { u64::MAX } else { (1u64 << bits) - 1 };
        }
        mask
    }

    #[inline]
    fn contains(&self, i: usize) -> bool {
        i < self.len * 64 && self.words[i / 64] & (1 << (i % 64)) != 0
    }

    #[inline]
    fn clear(&mut self, i: usize) {
        if i < self.len * 64 {
            self.words[i / 64] &= !(1 << (i % 64));
        }
    }

    #[inline]
    fn is_empty(&self) -> bool {
        self.words[..self.len].iter().all(|&w| w == 0)
    }

    fn count(&self) -> usize {
        self.words[..self.len]
            .iter()
            .map(|w| w.count_ones() as usize)
            .sum()
    }

    /// Replaces each word in use by `f(index, word)`.
    #[inline]
    fn retain(&mut self, f: impl Fn(usize, u64) -> u64) {
        for (w, word) in self.words.iter_mut().enumerate().take(self.len) {
            *word = f(w, *word);
        }
    }

    /// Calls `f` with every member, from `start` on, wrapping.
    #[inline]
    fn for_each_from(&self, start: usize, mut f: impl FnMut(usize)) {
        if self.len == 0 {
            return;
        }
        let start = if start >= self.len * 64 { 0 } else { start };
        let (w0, b0) = (start / 64, start % 64);
        let mut visit = |w: usize, mut bits: u64| {
            while bits != 0 {
                f(w * 64 + bits.trailing_zeros() as usize);
                bits &= bits - 1;
            }
        };
        visit(w0, self.words[w0] & (u64::MAX << b0));
        for w in (w0 + 1..self.len).chain(0..w0) {
            visit(w, self.words[w]);
        }
        visit(w0, self.words[w0] & !(u64::MAX << b0));
    }

    /// The first member at or after `start`, wrapping.
    #[inline]
    fn first_from(&self, start: usize) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let words = &self.words[..self.len];
        let start = if start >= self.len * 64 { 0 } else { start };
        let (w0, b0) = (start / 64, start % 64);
        let high = words[w0] & (u64::MAX << b0);
        if high != 0 {
            return Some(w0 * 64 + high.trailing_zeros() as usize);
        }
        for k in 1..=words.len() {
            let w = (w0 + k) % words.len();
            let word = if w == w0 {
                words[w] & !(u64::MAX << b0)
            } else {
                words[w]
            };
            if word != 0 {
                return Some(w * 64 + word.trailing_zeros() as usize);
            }
        }
        None
    }
}

/// Least connections' index, per worker: the servers of a universe (the
/// healthy primaries when it was built) whose load for their weight is the
/// least. A lease takes its server out of the set; a finished request puts
/// its server in, or starts a new set when it went below the least. An
/// empty set, or a universe that changed (health, ejections), rebuilds it
/// by one scan. So a pick scans only when the servers at the least load
/// are all out for this request (tried, at their limit).
#[derive(Debug, Default)]
struct LeastIndex {
    valid: Cell<bool>,
    least: Cell<u64>,
    at_least: [Cell<u64>; MASK_WORDS],
    universe: [Cell<u64>; MASK_WORDS],
}

impl LeastIndex {
    /// Whether the index is valid and built over `universe`.
    fn covers(&self, universe: &Mask) -> bool {
        self.valid.get()
            && universe.words[..universe.len]
                .iter()
                .zip(&self.universe)
                .all(|(&word, built)| word == built.get())
    }

    fn rebuild(&self, universe: &Mask, score: impl Fn(PeerId) -> u64) {
        let mut least = u64::MAX;
        universe.for_each_from(0, |i| least = least.min(score(i)));
        for (w, word) in universe.words.iter().enumerate() {
            self.universe[w].set(*word);
            self.at_least[w].set(0);
        }
        universe.for_each_from(0, |i| {
            if score(i) == least {
                self.at_least[i / 64].set(self.at_least[i / 64].get() | 1 << (i % 64));
            }
        });
        self.least.set(least);
        self.valid.set(true);
    }

    /// Whether `peer` is in the universe of a valid index.
    #[inline]
    fn tracks(&self, peer: PeerId) -> bool {
        self.valid.get()
            && self
                .universe
                .get(peer / 64)
                .is_some_and(|w| w.get() & 1 << (peer % 64) != 0)
    }

    /// `peer` took one more request.
    #[inline]
    fn raised(&self, peer: PeerId) {
        let Some(word) = self.at_least.get(peer / 64) else {
            return;
        };
        let bit = 1 << (peer % 64);
        if word.get() & bit != 0 {
            word.set(word.get() & !bit);
            if self.at_least.iter().all(|w| w.get() == 0) {
                self.valid.set(false);
            }
        }
    }

    /// `peer`, in the universe, finished a request: its load is `score`.
    fn lowered(&self, peer: PeerId, score: u64) {
        let bit = 1 << (peer % 64);
        let word = &self.at_least[peer / 64];
        if score < self.least.get() {
            self.least.set(score);
            for w in &self.at_least {
                w.set(0);
            }
            word.set(bit);
        } else if score == self.least.get() {
            word.set(word.get() | bit);
        }
    }
}

/// How many entries of the smooth weighted round robin schedule a pick
/// walks before it scans instead.
const SCHEDULE_WALK: usize = 64;

/// Where worker `worker` starts in a sequence of `len` (worker 0 at the
/// start, the others spread over it by the golden ratio), so that workers
/// do not all send their first requests to the same servers.
fn spread(worker: usize, len: usize) -> usize {
    (((worker as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize) % len.max(1)
}

/// How far a consistent-hash walk goes before giving up on the bound.
fn ring_walk_limit(servers: usize) -> usize {
    (servers * 4).max(64)
}

/// A server picked for an attempt. It counts as in flight until
/// [`Lease::finish`] or its drop (which finishes it as neutral).
#[derive(Debug)]
pub struct Lease {
    balancer: Rc<Balancer>,
    peer: PeerId,
    fail_open: bool,
    done: bool,
}

impl Lease {
    /// The server's index in its group.
    pub fn peer(&self) -> PeerId {
        self.peer
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.balancer.addr(self.peer)
    }

    /// Whether the pick ignored health because nothing was healthy.
    pub fn failed_open(&self) -> bool {
        self.fail_open
    }

    /// The balancer it came from.
    pub fn balancer(&self) -> &Rc<Balancer> {
        &self.balancer
    }

    /// Ends the attempt with `outcome`; returns what it changed about the
    /// server's health, for the log.
    pub fn finish(mut self, outcome: Outcome, now_ms: u64) -> Option<HealthEvent> {
        self.done = true;
        self.balancer.finish(self.peer, outcome, now_ms)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.done {
            self.balancer.finish(self.peer, Outcome::Neutral, 0);
        }
    }
}
