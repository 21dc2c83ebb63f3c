//! Reverse proxy mode: routing by host and path to upstream groups.
//!
//! A [`RouteTable`] is compiled once from the configuration and shared
//! read-only by every worker. A lookup picks the most specific host match
//! (exact name, then `*.suffix` / `.suffix` patterns from the longest
//! suffix, then routes without a host) whose routes have a path prefix that
//! matches, taking the longest prefix. Each worker's [`ReverseHandler`] owns
//! its balancers, one per upstream group.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use ringway_balancer::{Balancer, RoundRobin, UpstreamGroup};

use crate::{
    engine::{ClientInfo, Handler, LocalReply, Route},
    head::{Method, RequestHead},
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

#[derive(Debug, Default)]
struct PathRoutes {
    /// Longest prefix first.
    routes: Vec<(Box<[u8]>, usize)>,
}

impl PathRoutes {
    fn insert(&mut self, prefix: &str, upstream: usize) -> Result<(), String> {
        if self.routes.iter().any(|(p, _)| **p == *prefix.as_bytes()) {
            return Err(format!(
                "path_prefix {prefix:?} is routed twice for the same host"
            ));
        }
        self.routes.push((prefix.as_bytes().into(), upstream));
        self.routes.sort_by_key(|r| std::cmp::Reverse(r.0.len()));
        Ok(())
    }

    fn lookup(&self, path: &[u8]) -> Option<usize> {
        self.routes
            .iter()
            .find(|(prefix, _)| path.starts_with(prefix))
            .map(|&(_, upstream)| upstream)
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

/// Compiled routes of a listener.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<Box<[u8]>, PathRoutes>,
    /// `(suffix with its leading dot, includes the bare name, routes)`,
    /// longest suffix first.
    suffixes: Vec<(Box<[u8]>, bool, PathRoutes)>,
    any: PathRoutes,
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
                .insert(&route.path_prefix, route.upstream)
                .map_err(|message| error(RouteField::PathPrefix, message))?;
        }
        table
            .suffixes
            .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
        Ok(table)
    }

    /// The upstream group for `host` (a Host value, port allowed) and `path`.
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

/// The reverse proxy's handler for one worker.
pub struct ReverseHandler {
    routes: Arc<RouteTable>,
    balancers: Vec<RoundRobin>,
}

impl ReverseHandler {
    /// A handler over `routes`, with a round-robin balancer per group for
    /// worker number `worker`.
    pub fn new(routes: Arc<RouteTable>, groups: &[UpstreamGroup], worker: usize) -> Self {
        Self {
            routes,
            balancers: groups.iter().map(|g| RoundRobin::new(g, worker)).collect(),
        }
    }

    fn pick(&self, group: usize) -> Option<SocketAddr> {
        let balancer = self.balancers.get(group)?;
        balancer.pick().map(|peer| balancer.addr(peer))
    }
}

impl Handler for ReverseHandler {
    async fn route(&self, req: &RequestHead, _client: &ClientInfo) -> Route {
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
        let Some(group) = self.routes.lookup(authority.or(req.host()), path) else {
            return Route::Reply(LocalReply::status(404));
        };
        match self.pick(group) {
            Some(addr) => Route::Upstream(addr),
            None => Route::Reply(LocalReply::status(503)),
        }
    }
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
}
