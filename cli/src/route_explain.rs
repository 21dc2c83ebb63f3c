//! `ringway route explain`: what a reverse listener would do with a
//! request: the route it takes, each rule of the listener and the route
//! and whether it matched, the resulting action, and the request the
//! upstream would get. Exit status 0 when the request would be forwarded,
//! 1 when it would be refused, redirected or answered by the proxy, 2 when
//! the configuration, the listener or the URL is unusable.

use std::{fmt::Write as _, net::IpAddr, process::ExitCode, rc::Rc};

use bytes::BytesMut;
use ringway_http::{
    rules::{template::Vars, Effects, Rule, Scope, Trace},
    ClientInfo, HeadEdits, HttpLimits, RequestHead, RequestId, RouteTable,
};

use ringway::config::{Config, ListenerMode};

/// The request to explain.
pub(crate) struct Request<'a> {
    pub(crate) listener: &'a str,
    pub(crate) src: IpAddr,
    pub(crate) method: &'a str,
    /// `http://host/path` or `https://host/path` (then SNI is the host).
    pub(crate) url: &'a str,
    /// `Name: value` lines.
    pub(crate) headers: &'a [String],
}

/// What the trace writes, rule by rule.
struct Report<'a> {
    table: &'a RouteTable,
    out: String,
}

impl Trace for Report<'_> {
    fn enter(&mut self, scope: Scope, path: &[u8]) {
        let (rules, name) = match scope {
            Scope::Listener => {
                let _ = writeln!(
                    self.out,
                    "path (as rules read it): {}",
                    String::from_utf8_lossy(path)
                );
                (
                    self.table.listener_rules().rules.len(),
                    "listener rules".to_owned(),
                )
            }
            Scope::Route(i) => {
                if let Some(spec) = self.table.spec(i) {
                    let _ = writeln!(
                        self.out,
                        "route {}: host {} path_prefix {:?}",
                        i + 1,
                        spec.host.as_deref().unwrap_or("(any)"),
                        spec.path_prefix
                    );
                }
                (
                    self.table.rules(i).map_or(0, |r| r.policy.rules.len()),
                    "route rules".to_owned(),
                )
            }
        };
        let _ = writeln!(self.out, "{name}:{}", if rules == 0 { " none" } else { "" });
    }

    fn rule(&mut self, index: usize, rule: &Rule, matched: bool) {
        let verdict = if matched { "MATCH" } else { "no match" };
        let _ = writeln!(
            self.out,
            "  {}: when {} -> {}: {verdict}",
            rule.label(index),
            rule.when,
            rule.action
        );
    }

    fn effect(&mut self, text: &str) {
        let _ = writeln!(self.out, "      {text}");
    }
}

/// Prints the decision; fails when the listener or the URL is unusable.
pub(crate) fn explain(config: &Config, request: &Request<'_>) -> anyhow::Result<ExitCode> {
    let listener = config
        .listeners
        .iter()
        .find(|l| l.spec.name == request.listener)
        .ok_or_else(|| {
            let names: Vec<&str> = config.listeners.iter().map(|l| l.spec.name.as_str()).collect();
            anyhow::anyhow!(
                "no listener named {:?} (the configuration has {names:?})",
                request.listener
            )
        })?;
    let ListenerMode::Reverse { routes, .. } = &listener.mode else {
        anyhow::bail!(
            "listener {:?} is not a reverse listener (for a forward listener: ringway acl explain)",
            request.listener
        );
    };
    let (https, authority, target) = split_url(request.url)?;
    let req = request_head(request.method, target, authority, request.headers)?;
    let mut client = ClientInfo::new((request.src, 50000).into(), listener.spec.addr);
    client.request_id = RequestId::next();
    if https {
        let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
        client.tls = Some(Rc::new(ringway_tls::TlsInfo {
            sni: Some(host.to_ascii_lowercase().into()),
            client_subject: None,
            alpn: None,
            version: "TLSv1.3",
        }));
    }
    let mut report = Report {
        table: routes,
        out: format!(
            "listener {:?} (reverse): {} {} from {}\n",
            request.listener, request.method, request.url, request.src
        ),
    };
    let mut effects = Effects::default();
    let decision = routes.decide(&req, &client, &mut effects, &mut report);
    let mut out = report.out;
    let code = match (decision.reply, decision.route) {
        (Some(reply), _) => {
            let _ = write!(
                out,
                "result: answered by the proxy: {} {}",
                reply.status,
                ringway_http::reason_phrase(reply.status)
            );
            for line in reply.headers.lines().filter(|l| !l.is_empty()) {
                let _ = write!(out, "\n  {line}");
            }
            out.push('\n');
            ExitCode::FAILURE
        }
        (None, None) => {
            out.push_str("result: no route matches: 404 Not Found\n");
            ExitCode::FAILURE
        }
        (None, Some(route)) => {
            let group = routes.upstream(route).and_then(|g| config.upstreams.get(g));
            let mut edits = HeadEdits::new();
            let vars = Vars {
                req: &req,
                remote: client.peer,
                request_id: client.request_id,
                https,
                path: None,
                captures: None,
                in_url: false,
            };
            routes.edit_upstream_request(route, &req, &effects, &vars, &mut edits);
            let target = edits
                .target()
                .map_or_else(|| target.to_owned(), |t| String::from_utf8_lossy(t).into_owned());
            let _ = writeln!(
                out,
                "result: forwarded to upstream {:?} ({}) as {} {target}",
                group.map_or("?", |g| g.name.as_str()),
                group.map_or_else(String::new, |g| g
                    .servers
                    .iter()
                    .map(|s| s.addr.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")),
                request.method,
            );
            for line in String::from_utf8_lossy(edits.added()).lines() {
                let _ = writeln!(out, "  + {line}");
            }
            ExitCode::SUCCESS
        }
    };
    print!("{out}");
    Ok(code)
}

/// The head of `METHOD target` with `Host: authority` and `headers`
/// (`Name: value` each), parsed as the proxy parses a request.
pub(crate) fn request_head(
    method: &str,
    target: &str,
    authority: &str,
    headers: &[String],
) -> anyhow::Result<RequestHead> {
    let mut raw = format!("{method} {target} HTTP/1.1\r\nHost: {authority}\r\n");
    for header in headers {
        anyhow::ensure!(
            header.contains(':') && !header.contains(['\r', '\n']),
            "-H {header:?}: expected \"Name: value\""
        );
        raw.push_str(header);
        raw.push_str("\r\n");
    }
    raw.push_str("\r\n");
    let mut buf = BytesMut::from(raw.as_bytes());
    let mut req = RequestHead::new();
    match req.parse(&mut buf, &HttpLimits::default()) {
        Ok(true) => Ok(req),
        Ok(false) => anyhow::bail!("the request is incomplete"),
        Err(e) => anyhow::bail!("the proxy would refuse this request before routing it: {e}"),
    }
}

/// `(https, authority, origin-form target)` of an `http(s)://` URL.
fn split_url(url: &str) -> anyhow::Result<(bool, &str, &str)> {
    let (https, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        anyhow::bail!("{url:?}: expected an http:// or https:// URL");
    };
    let at = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(at);
    anyhow::ensure!(!authority.is_empty(), "{url:?}: the URL has no host");
    let target = if target.is_empty() { "/" } else { target };
    anyhow::ensure!(target.starts_with('/'), "{url:?}: the path must start with '/'");
    Ok((https, authority, target))
}
