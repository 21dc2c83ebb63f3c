//! Reverse proxy mode: routing by host and path to upstream groups.
//!
//! A [`RouteTable`] is compiled once from the configuration and shared
//! read-only by every worker. A lookup picks the most specific host match
//! (exact name, then `*.suffix` / `.suffix` patterns from the longest
//! suffix, then routes without a host) whose routes have a path prefix that
//! matches, taking the longest prefix. Each worker's [`ReverseHandler`] owns
//! its balancers, one per upstream group, and is the reverse mode's
//! [`ProxyHooks`]: it picks, retries elsewhere and pins sticky clients.

use std::{
    cell::Cell,
    net::SocketAddr,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

// foldhash, not SipHash: looked up on every request, with keys from the
// configuration and the worker's own connections.
use hashbrown::HashMap;

use ringway_balancer::{
    ip_hash, key_hash, Algorithm, Balancer, HashKey, HealthEvent, Lease, NoPeer, Outcome, Tried,
    UpstreamGroup,
};
use ringway_core::{Error, ErrorKind};

use crate::{
    access_log::LogFacts,
    cache::{CacheCtx, CacheLayers, Lookup},
    edits::HeadEdits,
    engine::ClientInfo,
    head::{Method, RequestHead, ResponseHead},
    hooks::{Attempt, AttemptResult, BodyPlan, HeldResponse, Peer, ProxyHooks, Retry, Route, Summary},
    metrics::{ServerMetrics, UpstreamMetrics},
    reply::LocalReply,
    request_id::RequestId,
    rules::{
        template::Vars, with_canonical, Canonical, Effects, Facts, HeaderEdit, HeaderRules, NoTrace, Policy,
        Scope, Trace, Verdict,
    },
    tls::PeerTls,
    write::origin_form,
};

/// One configured route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    /// `example.com` (exact), `*.example.com` (subdomains only),
    /// `.example.com` (the name and its subdomains), or `None` (any host).
    pub host: Option<String>,
    /// Path prefix; `/` matches everything.
    pub path_prefix: String,
    /// Index of the upstream group the route sends to.
    pub upstream: usize,
}

/// What a route does to requests besides choosing their upstream.
#[derive(Debug, Default)]
pub struct RouteRules {
    /// Its rules, header edits, CORS and error pages.
    pub policy: Policy,
    /// Send the path without the route's prefix.
    pub strip_prefix: bool,
    /// The Host sent upstream instead of the client's.
    pub upstream_host: Option<Box<str>>,
}

#[derive(Debug, Default)]
struct PathRoutes {
    /// Longest prefix first: the prefix, and the route's index.
    routes: Vec<(Box<[u8]>, usize)>,
}

impl PathRoutes {
    fn insert(&mut self, prefix: &str, route: usize) -> Result<(), String> {
        if self.routes.iter().any(|(p, _)| **p == *prefix.as_bytes()) {
            return Err(format!(
                "path_prefix {prefix:?} is routed twice for the same host"
            ));
        }
        self.routes.push((prefix.as_bytes().into(), route));
        self.routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Ok(())
    }

    fn lookup(&self, path: &[u8]) -> Option<usize> {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix))
            .map(|&(_, route)| route)
    }
}

/// Why a route table was refused: which route, which of its fields, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteError {
    /// Index of the route in the list given to [`RouteTable::new`].
    pub route: usize,
    /// The field at fault.
    pub field: RouteField,
    /// What is wrong.
    pub message: String,
}

/// A field of a [`RouteSpec`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteField {
    /// The host pattern.
    Host,
    /// The path prefix.
    PathPrefix,
}

impl RouteField {
    /// The configuration key of the field.
    pub fn key(self) -> &'static str {
        match self {
            RouteField::Host => "host",
            RouteField::PathPrefix => "path_prefix",
        }
    }
}

impl std::fmt::Display for RouteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RouteError {}

/// Compiled routes of a listener, with the rules of the listener and of
/// each route.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<Box<[u8]>, PathRoutes>,
    /// `(suffix with its leading dot, includes the bare name, routes)`,
    /// longest suffix first.
    suffixes: Vec<(Box<[u8]>, bool, PathRoutes)>,
    any: PathRoutes,
    specs: Vec<RouteSpec>,
    /// The listener's rules, run before any route's.
    listener: Policy,
    /// Each route's rules (empty when none were given).
    rules: Vec<RouteRules>,
    /// Per route: whether anything edits the request sent upstream, and
    /// whether anything edits the response (the plain route skips both).
    edits_request: Vec<bool>,
    edits_response: Vec<bool>,
    /// Per route: the listener's header edits and the route's as one list
    /// each way, the route's winning.
    request_headers: Vec<Vec<HeaderEdit>>,
    response_headers: Vec<Vec<HeaderEdit>>,
}

impl RouteTable {
    /// Compiles `routes`; fails on a malformed host pattern or path prefix,
    /// or on two routes for the same host and prefix (naming the second).
    pub fn new(routes: &[RouteSpec]) -> Result<Self, RouteError> {
        let mut table = RouteTable::default();
        for (index, route) in routes.iter().enumerate() {
            let error = |field, message| RouteError {
                route: index,
                field,
                message,
            };
            if !route.path_prefix.starts_with('/') {
                return Err(error(
                    RouteField::PathPrefix,
                    format!("path_prefix {:?} must start with '/'", route.path_prefix),
                ));
            }
            let paths = match route.host.as_deref() {
                None => &mut table.any,
                Some(pattern) => {
                    let pattern = pattern.to_ascii_lowercase();
                    let pattern = pattern.strip_suffix('.').unwrap_or(&pattern);
                    let (suffix, with_bare) = if let Some(rest) = pattern.strip_prefix("*.") {
                        (Some(format!(".{rest}")), false)
                    } else if pattern.starts_with('.') {
                        (Some(pattern.to_owned()), true)
                    } else {
                        (None, false)
                    };
                    let name = suffix.as_deref().unwrap_or(pattern);
                    let body = name.trim_start_matches('.');
                    if body.is_empty()
                        || body.contains('*')
                        || !body.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')
                        })
                    {
                        return Err(error(
                            RouteField::Host,
                            format!("invalid host pattern {pattern:?}"),
                        ));
                    }
                    match suffix {
                        None => table.exact.entry(pattern.as_bytes().into()).or_default(),
                        Some(suffix) => {
                            let key: Box<[u8]> = suffix.as_bytes().into();
                            let at = match table
                                .suffixes
                                .iter()
                                .position(|(s, b, _)| *s == key && *b == with_bare)
                            {
                                Some(at) => at,
                                None => {
                                    table.suffixes.push((key, with_bare, PathRoutes::default()));
                                    table.suffixes.len() - 1
                                }
                            };
                            &mut table.suffixes[at].2
                        }
                    }
                }
            };
            paths
                .insert(&crate::matching::canonical_prefix(&route.path_prefix), index)
                .map_err(|message| error(RouteField::PathPrefix, message))?;
        }
        // Kept as paths are compared: `/%7Euser` routes `/~user`.
        table.specs = routes
            .iter()
            .map(|r| RouteSpec {
                path_prefix: crate::matching::canonical_prefix(&r.path_prefix),
                ..r.clone()
            })
            .collect();
        table.rules = routes.iter().map(|_| RouteRules::default()).collect();
        table
            .suffixes
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(table)
    }

    /// The same table with the listener's rules and each route's (in the
    /// order of the routes given to [`RouteTable::new`]; missing ones are
    /// empty).
    #[must_use]
    pub fn with_rules(mut self, listener: Policy, routes: Vec<RouteRules>) -> Self {
        self.listener = listener;
        for (slot, rules) in self.rules.iter_mut().zip(routes) {
            *slot = rules;
        }
        let listener = &self.listener;
        self.request_headers = self
            .rules
            .iter()
            .map(|r| HeaderRules::merged(&listener.headers.request, &r.policy.headers.request))
            .collect();
        self.response_headers = self
            .rules
            .iter()
            .map(|r| HeaderRules::merged(&listener.headers.response, &r.policy.headers.response))
            .collect();
        self.edits_request = self
            .rules
            .iter()
            .map(|r| {
                r.strip_prefix
                    || r.upstream_host.is_some()
                    || !r.policy.headers.request.is_empty()
                    || !listener.headers.request.is_empty()
                    || r.policy
                        .rules
                        .iter()
                        .chain(&listener.rules)
                        .any(|rule| matches!(rule.action, crate::rules::Action::Rewrite { .. }))
            })
            .collect();
        self.edits_response = self
            .rules
            .iter()
            .map(|r| {
                !r.policy.headers.response.is_empty()
                    || !listener.headers.response.is_empty()
                    || r.policy.cors.is_some()
                    || listener.cors.is_some()
            })
            .collect();
        self
    }

    /// The route at `index`.
    pub fn spec(&self, index: usize) -> Option<&RouteSpec> {
        self.specs.get(index)
    }

    /// The rules of route `index`.
    pub fn rules(&self, index: usize) -> Option<&RouteRules> {
        self.rules.get(index)
    }

    /// The listener's rules.
    pub fn listener_rules(&self) -> &Policy {
        &self.listener
    }

    /// The upstream group of route `index`.
    pub fn upstream(&self, index: usize) -> Option<usize> {
        self.specs.get(index).map(|s| s.upstream)
    }

    /// Runs the listener's rules, finds the route, runs its rules and
    /// answers a CORS preflight: where `req` goes, or what answers it.
    /// Rewrites are left in `effects`; `trace` hears each rule.
    pub fn decide<T: Trace>(
        &self,
        req: &RequestHead,
        client: &ClientInfo,
        effects: &mut Effects,
        trace: &mut T,
    ) -> Decision {
        let (path, authority) = origin_form(req.target());
        // A request target has no fragment (RFC 9112 3.2); servers differ
        // on where a '#' ends the path, so none is passed on.
        if memchr::memchr(b'#', path).is_some() {
            return Decision {
                route: None,
                reply: Some(LocalReply::status(400)),
            };
        }
        let host = authority.or(req.host());
        with_canonical(path, |path, query, raw_query| {
            let facts = Facts {
                req,
                client,
                path,
                query,
                raw_query,
            };
            let listener = &self.listener;
            trace.enter(Scope::Listener, path);
            // No call when there is nothing to run (the common case).
            let listener_verdict = if listener.rules.is_empty() {
                Verdict::Continue
            } else {
                listener.evaluate(&facts, effects, trace)
            };
            if let Verdict::Reply(reply) = listener_verdict {
                return Decision {
                    route: None,
                    reply: Some(reply),
                };
            }
            // A listener's rewrite routes the request by its new path (as
            // nginx's `rewrite ... last`), and the route's rules read it.
            let rewritten = effects.rewrite.as_deref().map(Canonical::of);
            let facts = match &rewritten {
                Some(c) => c.facts(&facts),
                None => facts,
            };
            let path = facts.path;
            let Some(route) = self.lookup(host, path) else {
                return Decision {
                    route: None,
                    reply: None,
                };
            };
            trace.enter(Scope::Route(route), path);
            let answer = |reply| Decision {
                route: Some(route),
                reply: Some(reply),
            };
            let Some(rules) = self.rules.get(route) else {
                return Decision {
                    route: Some(route),
                    reply: None,
                };
            };
            // A preflight is the browser asking, not the request: the
            // route's rules (a rate limit, a read-only rule) judge the
            // request that follows. The listener's have run.
            let cors = rules.policy.cors.as_ref().or(listener.cors.as_ref());
            if let Some(reply) = cors.and_then(|c| c.preflight(req)) {
                trace.effect("a CORS preflight: answered by the proxy, before the route's rules");
                return answer(reply);
            }
            let verdict = if rules.policy.rules.is_empty() {
                Verdict::Continue
            } else {
                rules.policy.evaluate(&facts, effects, trace)
            };
            match verdict {
                Verdict::Reply(reply) => answer(reply),
                _ => Decision {
                    route: Some(route),
                    reply: None,
                },
            }
        })
    }

    /// The edits route `route` makes to the head of `req` sent upstream:
    /// its Host, the target (rewritten, or without the route's prefix),
    /// then the listener's header edits and the route's.
    pub fn edit_upstream_request(
        &self,
        route: usize,
        req: &RequestHead,
        effects: &Effects,
        vars: &Vars<'_>,
        edits: &mut HeadEdits,
    ) {
        let (Some(rules), Some(spec)) = (self.rules.get(route), self.specs.get(route)) else {
            return;
        };
        if let Some(host) = &rules.upstream_host {
            // Checked as a host name at load.
            let _ = edits.set("Host", host.as_bytes());
        }
        // A rewrite's target, or the path as routed; without the route's
        // prefix when it strips it (and the path still starts with it).
        let strip = rules
            .strip_prefix
            .then(|| spec.path_prefix.trim_end_matches('/').as_bytes());
        let stripped = |out: &mut Vec<u8>, path: &[u8], query: &[u8], prefix: &[u8]| {
            let rest = path.strip_prefix(prefix).unwrap_or(path);
            if rest.first() != Some(&b'/') {
                out.push(b'/');
            }
            out.extend_from_slice(rest);
            if !query.is_empty() {
                out.push(b'?');
                out.extend_from_slice(query);
            }
        };
        // A target that renders a byte a target cannot hold is not
        // applied: the request goes as it came.
        match (&effects.rewrite, strip) {
            (Some(target), None) => {
                let _ = edits.set_target(target);
            }
            (Some(target), Some(prefix)) => {
                let (path, query) = match memchr::memchr(b'?', target) {
                    Some(q) => (&target[..q], &target[q + 1..]),
                    None => (&target[..], &b""[..]),
                };
                let _ = edits.set_target_with(|out| stripped(out, path, query, prefix));
            }
            (None, Some(prefix)) => {
                let (path, _) = origin_form(req.target());
                with_canonical(path, |path, _, raw_query| {
                    let _ = edits.set_target_with(|out| stripped(out, path, raw_query, prefix));
                });
            }
            (None, None) => {}
        }
        if let Some(list) = self.request_headers.get(route) {
            HeaderRules::apply(list, vars, edits);
        }
    }

    /// The route for `host` (a Host value, port allowed) and `path` (in
    /// canonical form: see [`crate::rules::with_canonical`]).
    pub fn lookup(&self, host: Option<&[u8]>, path: &[u8]) -> Option<usize> {
        let mut lower = [0u8; 256];
        let name = host.and_then(|h| normalize_host(h, &mut lower));
        if let Some(name) = name {
            if let Some(found) = self.exact.get(name).and_then(|p| p.lookup(path)) {
                return Some(found);
            }
            for (suffix, with_bare, paths) in &self.suffixes {
                let matches = (name.len() > suffix.len() && name.ends_with(suffix))
                    || (*with_bare && name == &suffix[1..]);
                if matches {
                    if let Some(found) = paths.lookup(path) {
                        return Some(found);
                    }
                }
            }
        }
        self.any.lookup(path)
    }
}

/// Lowercases a Host value into `out` without its port or trailing dot.
/// Names longer than `out` match no host pattern.
fn normalize_host<'a>(host: &[u8], out: &'a mut [u8; 256]) -> Option<&'a [u8]> {
    let name = if host.first() == Some(&b'[') {
        let end = host.iter().position(|&b| b == b']')?;
        &host[..=end]
    } else {
        match memchr::memrchr(b':', host) {
            Some(colon) => &host[..colon],
            None => host,
        }
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.is_empty() || name.len() > out.len() {
        return None;
    }
    let out = &mut out[..name.len()];
    for (o, &b) in out.iter_mut().zip(name) {
        *o = b.to_ascii_lowercase();
    }
    Some(out)
}

/// The reverse proxy's hooks for one worker: routes by host and path,
/// picks a server with the group's balancer, retries failed attempts on
/// other servers within the group's policy and budget, and pins clients to
/// servers with a cookie when the group is sticky.
pub struct ReverseHandler {
    routes: Arc<RouteTable>,
    balancers: Vec<Rc<Balancer>>,
    /// When a fail-open pick was last logged, per group (one line a second).
    fail_open_logged: Vec<Cell<u64>>,
    /// TLS identities of the servers of TLS upstreams, by group and server.
    tls: Rc<Vec<Vec<Option<Rc<PeerTls>>>>>,
    /// This worker's counters of the upstream servers, where kept.
    metrics: Option<Arc<UpstreamMetrics>>,
    /// The caches routes use, on this worker.
    caches: Option<CacheLayers>,
    /// Per route: the index of its cache among `caches`.
    route_caches: Arc<[Option<usize>]>,
}

/// What the reverse hooks keep about one request.
#[derive(Debug, Default)]
pub struct ReverseCtx {
    /// The group's balancer.
    group: Option<usize>,
    /// The attempt under way.
    lease: Option<Lease>,
    /// The servers tried so far.
    tried: Tried,
    /// Consistent hashing's key.
    key: u64,
    /// When the attempt under way began (only where latency is measured).
    started: Option<Instant>,
    /// When the first attempt began, on the worker's clock.
    first_ms: u64,
    /// When the last attempt ended, on the worker's clock.
    last_ms: u64,
    /// How the last attempt went, for the lease's end.
    outcome: Option<Outcome>,
    /// Send the sticky cookie naming the server that answers.
    set_cookie: bool,
    /// The route the request took.
    route: Option<usize>,
    /// What its rules leave for the upstream request.
    effects: Effects,
    /// The client, for header templates.
    remote: Option<SocketAddr>,
    request_id: RequestId,
    https: bool,
    /// What the route's cache did with the request (boxed: only requests
    /// on a cached route carry it).
    cache: Option<Box<CacheCtx>>,
}

/// What a listener's rules and its route's decided for a request.
#[derive(Debug)]
pub struct Decision {
    /// The route it took, if one matched.
    pub route: Option<usize>,
    /// The answer, when the request is not forwarded (none with no route:
    /// a 404).
    pub reply: Option<LocalReply>,
}

/// How long a request waits for a server under its connection limit.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(1);

impl ReverseHandler {
    /// Hooks over `routes`, with a balancer per group for worker number
    /// `worker`.
    pub fn new(routes: Arc<RouteTable>, groups: &[Arc<UpstreamGroup>], worker: usize) -> Self {
        Self {
            routes,
            balancers: groups
                .iter()
                .map(|g| Rc::new(Balancer::new(Arc::clone(g), worker)))
                .collect(),
            fail_open_logged: groups.iter().map(|_| Cell::new(0)).collect(),
            tls: Rc::default(),
            metrics: None,
            caches: None,
            route_caches: Arc::from([]),
        }
    }

    /// The same handler, with the caches of this worker (`caches`) and
    /// the one each route uses, by index (`route_caches`).
    #[must_use]
    pub fn with_caches(mut self, caches: CacheLayers, route_caches: Arc<[Option<usize>]>) -> Self {
        self.caches = Some(caches);
        self.route_caches = route_caches;
        self
    }

    /// The cache a request's exchange uses, if any.
    fn cache_of(&self, cx: &ReverseCtx) -> Option<&crate::cache::CacheLayer> {
        self.caches.as_ref()?.get(cx.cache.as_ref()?.cache()?)
    }

    /// The same handler, counting attempts per server in `metrics` (this
    /// worker's).
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<UpstreamMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    fn server_metrics(&self, cx: &ReverseCtx, lease: &Lease) -> Option<&ServerMetrics> {
        self.metrics.as_ref()?.server(cx.group?, lease.peer())
    }

    /// The same handler, reaching the servers of TLS upstreams with these
    /// identities (by group, then server index).
    #[must_use]
    pub fn with_tls(mut self, tls: Rc<Vec<Vec<Option<Rc<PeerTls>>>>>) -> Self {
        self.tls = tls;
        self
    }

    /// The balancer of group `group` on this worker.
    pub fn balancer(&self, group: usize) -> Option<&Rc<Balancer>> {
        self.balancers.get(group)
    }

    /// Picks a server of `group` not yet tried by this request, waiting up
    /// to [`QUEUE_TIMEOUT`] while every candidate is at its limit.
    async fn lease(&self, group: usize, cx: &mut ReverseCtx, now_ms: u64) -> Result<Lease, NoPeer> {
        let balancer = &self.balancers[group];
        match balancer.pick(cx.key, &cx.tried, now_ms) {
            // Boxed: a timer is large (and aligned to a cache line); inline
            // it would size every request's state for this rare wait.
            Err(NoPeer::AtLimit) => Box::pin(Self::queue(balancer, cx, now_ms)).await,
            other => other,
        }
    }

    /// Waits for a server under its connection limit.
    async fn queue(balancer: &Rc<Balancer>, cx: &ReverseCtx, now_ms: u64) -> Result<Lease, NoPeer> {
        let step = Duration::from_millis(2);
        let mut waited = Duration::ZERO;
        loop {
            monoio::time::sleep(step).await;
            waited += step;
            match balancer.pick(cx.key, &cx.tried, now_ms + waited.as_millis() as u64) {
                Err(NoPeer::AtLimit) if waited < QUEUE_TIMEOUT => {}
                other => return other,
            }
        }
    }

    /// The peer for `lease`, with its group's timeouts; the attempt's
    /// clock starts.
    fn start(&self, lease: Lease, cx: &mut ReverseCtx) -> Peer {
        let group = lease.balancer().group();
        if lease.failed_open() {
            let index = cx.group.unwrap_or(0);
            let logged = &self.fail_open_logged[index];
            if cx.first_ms >= logged.get() + 1000 || logged.get() == 0 {
                logged.set(cx.first_ms.max(1));
                tracing::warn!(
                    upstream = %group.name,
                    server = %lease.addr(),
                    "no server of the upstream is healthy: sending to one anyway (fail open)"
                );
            }
        }
        let peer = Peer {
            addr: lease.addr(),
            connect_timeout: group.connect_timeout,
            response_timeout: group.response_timeout,
            keepalive: group.keepalive,
            keepalive_timeout: group.keepalive_timeout,
            tls: cx.group.and_then(|g| self.tls.get(g)?.get(lease.peer())?.clone()),
            proxy_protocol: group.proxy_protocol,
        };
        cx.started = matches!(group.algorithm, Algorithm::P2cEwma).then(Instant::now);
        if let Some(m) = self.server_metrics(cx, &lease) {
            m.attempts.add(1);
            m.in_flight.add(1);
        }
        cx.tried.add(lease.peer());
        cx.lease = Some(lease);
        peer
    }

    /// Ends the attempt under way with `outcome`, logging what it changed
    /// about its server.
    fn end_attempt(&self, cx: &mut ReverseCtx, outcome: Outcome, now_ms: u64) {
        let Some(lease) = cx.lease.take() else { return };
        if let Some(m) = self.server_metrics(cx, &lease) {
            m.in_flight.sub(1);
            if matches!(outcome, Outcome::Failure | Outcome::ServerError { .. }) {
                m.failures.add(1);
            }
        }
        let addr = lease.addr();
        let event = lease.finish(outcome, now_ms);
        let Some(balancer) = cx.group.and_then(|g| self.balancers.get(g)) else {
            return;
        };
        let name = &balancer.group().name;
        match event {
            Some(HealthEvent::Ejected { backoff }) => tracing::warn!(
                upstream = %name,
                server = %addr,
                backoff_ms = backoff.as_millis() as u64,
                "server ejected after failing in a row (passive health)"
            ),
            Some(HealthEvent::Returned) => tracing::info!(
                upstream = %name,
                server = %addr,
                "server back after its probation (passive health)"
            ),
            None => {}
        }
    }

    fn latency(cx: &ReverseCtx) -> Duration {
        cx.started.map_or(Duration::ZERO, |at| at.elapsed())
    }
}

impl ProxyHooks for ReverseHandler {
    type Ctx = ReverseCtx;

    fn log_facts<'a>(&'a self, cx: &'a ReverseCtx) -> LogFacts<'a> {
        LogFacts {
            route: cx.route,
            cache: cx
                .cache
                .as_ref()
                .and_then(|c| c.status())
                .map(crate::cache::CacheStatus::as_str),
            ..LogFacts::default()
        }
    }

    async fn route(&self, req: &RequestHead, client: &ClientInfo, cx: &mut ReverseCtx) -> Route {
        if req.method() == Method::Connect {
            return Route::Reply(LocalReply::status(405));
        }
        let target = req.target();
        let (path, authority) = origin_form(target);
        let is_origin_form =
            path.first() == Some(&b'/') || (target == b"*" && req.method() == Method::Options);
        if !is_origin_form && authority.is_none() {
            return Route::Reply(LocalReply::status(400));
        }
        cx.remote = Some(client.peer);
        cx.request_id = client.request_id;
        cx.https = client.tls.is_some();
        let decision = self.routes.decide(req, client, &mut cx.effects, &mut NoTrace);
        cx.route = decision.route;
        let route = match (decision.reply, decision.route) {
            (Some(reply), _) => return Route::Reply(reply),
            (None, None) => return Route::Reply(LocalReply::status(404)),
            (None, Some(route)) => route,
        };
        // The route's cache may answer before any server is picked.
        let cache = self.route_caches.get(route).copied().flatten();
        if let Some((index, layer)) = cache.and_then(|i| Some((i, self.caches.as_ref()?.get(i)?))) {
            let host = authority.or_else(|| req.host()).unwrap_or_default();
            // Keyed by what the upstream is asked for: a rewrite that
            // depends on the client is a key of its own.
            let asked = cx.effects.rewrite.as_deref().unwrap_or(path);
            let https = client.tls.is_some();
            match layer
                .lookup(
                    index,
                    req,
                    (https, host, asked),
                    client.background,
                    cx.cache.get_or_insert_with(Box::default),
                )
                .await
            {
                Lookup::Held(held) => return Route::Held(held),
                Lookup::Reply(reply) => return Route::Reply(reply),
                Lookup::Forward => {}
            }
        }
        let Some(group) = self.routes.upstream(route) else {
            return Route::Reply(LocalReply::status(404));
        };
        let Some(balancer) = self.balancers.get(group) else {
            return Route::Reply(LocalReply::status(503));
        };
        let spec = balancer.group();
        cx.group = Some(group);
        cx.first_ms = client.now_ms;
        if let Algorithm::ConsistentHash { key, .. } = &spec.algorithm {
            cx.key = request_hash(key, req, client);
        }
        balancer.record_request(client.now_ms);
        // A sticky client goes back to its server while it can take the
        // request; else it is pinned anew.
        if let Some(sticky) = &spec.sticky {
            let pinned = cookie(req, &sticky.cookie).and_then(|v| sticky.server(v));
            if let Some(lease) = pinned.and_then(|p| balancer.pick_server(p, &cx.tried, client.now_ms)) {
                return Route::Peer(self.start(lease, cx));
            }
            cx.set_cookie = true;
        }
        match self.lease(group, cx, client.now_ms).await {
            Ok(lease) => Route::Peer(self.start(lease, cx)),
            Err(why) => {
                tracing::warn!(upstream = %spec.name, "no server can take the request: {why:?}");
                Route::Reply(LocalReply::status(503))
            }
        }
    }

    fn attempt_done(&self, req: &RequestHead, attempt: &Attempt<'_>, cx: &mut ReverseCtx) -> Retry {
        let Some(balancer) = cx.group.and_then(|g| self.balancers.get(g)) else {
            return Retry::No;
        };
        let spec = balancer.group();
        let policy = &spec.retry;
        let on = &policy.on;
        let latency = Self::latency(cx);
        let (outcome, retry_wanted, why) = match attempt.result {
            AttemptResult::Response(resp) => {
                let status = resp.status();
                let outcome = if status >= 500 {
                    Outcome::ServerError { latency }
                } else {
                    Outcome::Success { latency }
                };
                let wanted = match status {
                    502 => on.status_502,
                    503 => on.status_503,
                    504 => on.status_504,
                    _ => false,
                };
                (outcome, wanted, Why::Status(status))
            }
            AttemptResult::Failed(error) => {
                let wanted = match error.kind() {
                    kind if kind.is_connecting() => on.connect,
                    ErrorKind::ReadTimeout | ErrorKind::WriteTimeout => on.timeout,
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionClosed | ErrorKind::Io => on.reset,
                    _ => false,
                };
                (Outcome::Failure, wanted, Why::Error(error))
            }
        };
        cx.last_ms = attempt.now_ms;
        let failed = !matches!(outcome, Outcome::Success { .. });
        if !failed {
            // Kept for the end of the exchange: the lease stays in flight
            // while the response streams.
            cx.outcome = Some(outcome);
            return Retry::No;
        }
        let addr = attempt.peer.addr;
        let now = attempt.now_ms;
        // Another server, when the policy allows it: only what the server
        // cannot have acted on, or what is safe to repeat.
        let safe = !attempt.sent || req.method().is_idempotent();
        let in_time = policy
            .total_timeout
            .is_none_or(|limit| now.saturating_sub(cx.first_ms) < limit.as_millis() as u64);
        let attempts_left = cx.tried.len() <= policy.retries as usize;
        let next = if retry_wanted && safe && attempt.replayable && in_time && attempts_left {
            if balancer.try_retry(now) {
                balancer.pick(cx.key, &cx.tried, now).ok()
            } else {
                tracing::warn!(upstream = %spec.name, server = %addr, "{why}; no retry: the retry budget is spent");
                None
            }
        } else {
            None
        };
        match next {
            Some(lease) => {
                self.end_attempt(cx, outcome, now);
                tracing::warn!(upstream = %spec.name, server = %addr, retry = %lease.addr(), "{why}; retrying on another server");
                if spec.sticky.is_some() {
                    cx.set_cookie = true;
                }
                Retry::Another(self.start(lease, cx))
            }
            None if matches!(attempt.result, AttemptResult::Failed(_)) => {
                tracing::warn!(upstream = %spec.name, server = %addr, "{why}");
                self.end_attempt(cx, outcome, now);
                Retry::No
            }
            None => {
                // The 5xx goes to the client: the lease stays in flight
                // while it streams, and ends with the exchange.
                cx.outcome = Some(outcome);
                Retry::No
            }
        }
    }

    fn upstream_request(
        &self,
        req: &RequestHead,
        _peer: Option<&Peer>,
        edits: &mut HeadEdits,
        cx: &mut ReverseCtx,
    ) {
        if let Some(layer) = self.cache_of(cx) {
            if let Some(cache) = &cx.cache {
                layer.upstream_request(edits, cache);
            }
        }
        // Nothing to do on a route without edits (the common case).
        let route = cx
            .route
            .filter(|&r| self.routes.edits_request.get(r) == Some(&true));
        if let Some(route) = route {
            self.routes
                .edit_upstream_request(route, req, &cx.effects, &vars(req, cx), edits);
        }
    }

    fn response(
        &self,
        req: &RequestHead,
        resp: &ResponseHead,
        edits: &mut HeadEdits,
        cx: &mut ReverseCtx,
    ) -> BodyPlan {
        let plan = match (self.cache_of(cx), cx.cache.as_deref_mut()) {
            (Some(layer), Some(cache)) => layer.response(req, resp, edits, cache),
            _ => BodyPlan::Pass,
        };
        if matches!(plan, BodyPlan::Replace(_)) {
            // The held response's head gets the edits when it is sent.
            return plan;
        }
        let edited = cx
            .route
            .filter(|&r| self.routes.edits_response.get(r) == Some(&true));
        if let Some(rules) = edited.and_then(|r| self.routes.rules(r)) {
            let listener = self.routes.listener_rules();
            if !listener.headers.response.is_empty() || !rules.policy.headers.response.is_empty() {
                let vars = vars(req, cx);
                if let Some(list) = edited.and_then(|r| self.routes.response_headers.get(r)) {
                    HeaderRules::apply(list, &vars, edits);
                }
            }
            if let Some(cors) = rules.policy.cors.as_ref().or(listener.cors.as_ref()) {
                cors.respond(req, edits);
            }
        }
        self.sticky_cookie(edits, cx);
        plan
    }

    fn observed(&self, _req: &RequestHead, body: crate::hooks::Observed, cx: &mut ReverseCtx) {
        if let (Some(layer), Some(cache)) = (self.cache_of(cx), cx.cache.as_deref_mut()) {
            layer.observed(body, cache);
        }
    }

    fn fallback(&self, req: &RequestHead, _error: &Error, cx: &mut ReverseCtx) -> Option<HeldResponse> {
        let layer = self.cache_of(cx)?;
        layer.fallback(req, cx.cache.as_deref_mut()?)
    }

    fn local_reply(&self, req: &RequestHead, reply: LocalReply, cx: &ReverseCtx) -> LocalReply {
        let route = cx.route.and_then(|r| self.routes.rules(r)).map(|r| &r.policy);
        let listener = self.routes.listener_rules();
        // The route's page, else the listener's.
        let mut reply = match route.filter(|p| p.error_pages.get(reply.status).is_some()) {
            Some(policy) => policy.error_pages.dress(reply),
            None => listener.error_pages.dress(reply),
        };
        // The response edits, as on proxied answers.
        let edits = match cx.route.and_then(|r| self.routes.response_headers.get(r)) {
            Some(merged) => merged,
            None => &listener.headers.response,
        };
        HeaderRules::apply_to_reply(edits, &vars(req, cx), &mut reply);
        // A browser reads a refusal or a 502 only with the CORS fields.
        if let Some(cors) = route.and_then(|p| p.cors.as_ref()).or(listener.cors.as_ref()) {
            cors.respond_local(req, &mut reply);
        }
        reply
    }

    fn finish(&self, _req: &RequestHead, summary: &Summary, cx: &mut ReverseCtx) {
        let outcome = match (cx.outcome.take(), summary.status) {
            // The client left before its answer: nothing said about the server.
            (_, 499) => Outcome::Neutral,
            (Some(outcome), _) => outcome,
            (None, _) => Outcome::Neutral,
        };
        let now = cx.first_ms.max(cx.last_ms).max(1);
        self.end_attempt(cx, outcome, now);
    }
}

/// What header templates read, from the request and its context.
fn vars<'a>(req: &'a RequestHead, cx: &ReverseCtx) -> Vars<'a> {
    Vars::for_header(req, cx.remote, cx.request_id, cx.https)
}

impl ReverseHandler {
    /// Adds the sticky cookie naming the server that answers, when the
    /// client is pinned anew.
    fn sticky_cookie(&self, edits: &mut HeadEdits, cx: &ReverseCtx) {
        if !cx.set_cookie {
            return;
        }
        let (Some(balancer), Some(lease)) = (cx.group.and_then(|g| self.balancers.get(g)), &cx.lease) else {
            return;
        };
        let Some(sticky) = &balancer.group().sticky else {
            return;
        };
        let mut line = format!(
            "{}={}; Path=/; HttpOnly",
            sticky.cookie,
            sticky.value(lease.peer())
        );
        if let Some(ttl) = sticky.ttl {
            line.push_str(&format!("; Max-Age={}", ttl.as_secs()));
        }
        // The name was checked as a cookie name when the configuration was
        // read; a value is hex.
        let _ = edits.append("Set-Cookie", line.as_bytes());
    }
}

/// What ended an attempt, for the log (formatted only when logged).
enum Why<'a> {
    Status(u16),
    Error(&'a ringway_core::Error),
}

impl std::fmt::Display for Why<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::Status(status) => write!(f, "answered {status}"),
            Why::Error(error) => write!(f, "{error}"),
        }
    }
}

/// The consistent hash of `req` by `key`, with no copy of the key. The
/// path and URI are taken in origin-form, so an absolute-form request
/// lands where its origin-form twin does.
fn request_hash(key: &HashKey, req: &RequestHead, client: &ClientInfo) -> u64 {
    let (target, _) = origin_form(req.target());
    match key {
        HashKey::ClientIp => ip_hash(client.peer.ip()),
        HashKey::Header(name) => key_hash(req.header(name).unwrap_or_default()),
        HashKey::Cookie(name) => key_hash(cookie(req, name).unwrap_or_default()),
        HashKey::Path => key_hash(target.split(|&b| b == b'?').next().unwrap_or_default()),
        HashKey::Uri => key_hash(target),
    }
}

/// The value of cookie `name` in the request's Cookie fields.
fn cookie<'a>(req: &'a RequestHead, name: &str) -> Option<&'a [u8]> {
    req.headers()
        .filter(|f| f.name.eq_ignore_ascii_case(b"cookie"))
        .flat_map(|f| f.value.split(|&b| b == b';'))
        .find_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: &str, upstream: usize) -> RouteSpec {
        RouteSpec {
            host: host.map(str::to_owned),
            path_prefix: prefix.into(),
            upstream,
        }
    }

    fn table() -> RouteTable {
        RouteTable::new(&[
            route(None, "/", 0),
            route(None, "/api", 1),
            route(None, "/api/v2", 2),
            route(Some("*.example.com"), "/", 3),
            route(Some("deep.a.example.com"), "/x", 4),
            route(Some(".b.example.com"), "/", 5),
            route(Some("Exact.Test"), "/", 6),
        ])
        .unwrap()
    }

    #[test]
    fn longest_path_prefix_wins() {
        let t = table();
        assert_eq!(t.lookup(None, b"/"), Some(0));
        assert_eq!(t.lookup(None, b"/api/v1"), Some(1));
        assert_eq!(t.lookup(None, b"/api/v2/x"), Some(2));
        assert_eq!(t.lookup(Some(b"other.test"), b"/api"), Some(1));
    }

    #[test]
    fn host_matching_exact_then_suffix_then_any() {
        let t = table();
        assert_eq!(t.lookup(Some(b"exact.test"), b"/"), Some(6));
        assert_eq!(t.lookup(Some(b"EXACT.test.:8080"), b"/"), Some(6));
        assert_eq!(t.lookup(Some(b"a.example.com"), b"/"), Some(3));
        assert_eq!(
            t.lookup(Some(b"example.com"), b"/"),
            Some(0),
            "*. needs a subdomain"
        );
        assert_eq!(
            t.lookup(Some(b"b.example.com"), b"/"),
            Some(5),
            ". includes the name"
        );
        assert_eq!(
            t.lookup(Some(b"x.b.example.com"), b"/"),
            Some(5),
            "longest suffix first"
        );
        // An exact host whose paths do not match falls back to less specific hosts.
        assert_eq!(t.lookup(Some(b"deep.a.example.com"), b"/x/1"), Some(4));
        assert_eq!(t.lookup(Some(b"deep.a.example.com"), b"/y"), Some(3));
        assert_eq!(t.lookup(Some(b"notexample.com"), b"/"), Some(0));
    }

    #[test]
    fn no_route_is_none() {
        let t = RouteTable::new(&[route(Some("a.test"), "/only", 0)]).unwrap();
        assert_eq!(t.lookup(Some(b"a.test"), b"/other"), None);
        assert_eq!(t.lookup(Some(b"b.test"), b"/only"), None);
        assert_eq!(t.lookup(None, b"/only"), None);
    }

    #[test]
    fn bad_routes_are_refused_naming_route_and_field() {
        let refused = |routes: &[RouteSpec]| {
            let e = RouteTable::new(routes).unwrap_err();
            (e.route, e.field)
        };
        assert_eq!(refused(&[route(None, "x", 0)]), (0, RouteField::PathPrefix));
        // "ghost" holds the word "host"; the field is still the prefix.
        assert_eq!(
            refused(&[route(Some("ghost.test"), "ghost", 0)]),
            (0, RouteField::PathPrefix)
        );
        assert_eq!(refused(&[route(Some("a b"), "/", 0)]), (0, RouteField::Host));
        assert_eq!(refused(&[route(Some("*.*.a"), "/", 0)]), (0, RouteField::Host));
        assert_eq!(
            refused(&[route(None, "/", 0), route(None, "/", 1)]),
            (1, RouteField::PathPrefix)
        );
    }

    #[test]
    fn hash_keys_read_the_request_in_origin_form() {
        use crate::head::parsed;
        let client = ClientInfo::new("127.0.0.1:5000".parse().unwrap(), "127.0.0.1:80".parse().unwrap());
        let other = ClientInfo::new("127.0.0.2:5000".parse().unwrap(), "127.0.0.1:80".parse().unwrap());
        let origin = parsed("GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\nX-User: u1\r\nCookie: s=1; sid=abc\r\n\r\n");
        let absolute = parsed("GET http://h/a/b?y=2 HTTP/1.1\r\nHost: h\r\n\r\n");
        let path = HashKey::Path;
        assert_eq!(
            request_hash(&path, &origin, &client),
            request_hash(&path, &absolute, &client)
        );
        assert_eq!(request_hash(&path, &origin, &client), key_hash(b"/a/b"));
        assert_eq!(
            request_hash(&HashKey::Uri, &origin, &client),
            key_hash(b"/a/b?x=1")
        );
        assert_eq!(
            request_hash(&HashKey::Uri, &absolute, &client),
            key_hash(b"/a/b?y=2")
        );
        let header = HashKey::Header("x-user".into());
        assert_eq!(request_hash(&header, &origin, &client), key_hash(b"u1"));
        let cookie = HashKey::Cookie("sid".into());
        assert_eq!(request_hash(&cookie, &origin, &client), key_hash(b"abc"));
        let ip = HashKey::ClientIp;
        assert_ne!(
            request_hash(&ip, &origin, &client),
            request_hash(&ip, &origin, &other)
        );
        assert_eq!(request_hash(&ip, &origin, &client), ip_hash(client.peer.ip()));
    }
}
