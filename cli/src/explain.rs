//! `ringway acl explain`: what a forward listener would decide for a
//! request, which rule decided, and which addresses were checked.

use std::{fmt::Write as _, net::IpAddr, rc::Rc};

use ringway_core::dns::Resolver;
use ringway_http::{
    forward::{acl::AclRequest, decide, host::Destination, split_target, Outcome},
    ForwardSettings,
};

use ringway::config::{Config, ListenerMode};

/// The request to explain.
pub(crate) struct Request<'a> {
    pub(crate) listener: &'a str,
    pub(crate) src: IpAddr,
    pub(crate) user: Option<&'a str>,
    pub(crate) method: &'a str,
    /// `http://host/path`, or `host:port` for a CONNECT.
    pub(crate) target: &'a str,
    /// Request headers, `Name: value` (for `header` matchers).
    pub(crate) headers: &'a [String],
}

/// Prints the decision and returns whether the proxy would let the
/// request through; fails when the listener or the target is unusable.
pub(crate) fn explain(config: &Config, request: &Request<'_>) -> anyhow::Result<bool> {
    let settings = config
        .listeners
        .iter()
        .find_map(|l| match &l.mode {
            ListenerMode::Forward { settings } if l.spec.name == request.listener => Some(settings.clone()),
            _ => None,
        })
        .ok_or_else(|| anyhow::anyhow!("no forward listener named {:?}", request.listener))?;
    let (dest, path) = destination(request)?;
    let connect = path.is_none();
    let method = if connect { "CONNECT" } else { request.method };
    let resolver = Resolver::new(config.dns.clone());
    let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()?;
    let groups = match (&settings.auth, request.user) {
        (Some(auth), Some(user)) => auth.groups_of(user),
        _ => Vec::new(),
    };
    let head = crate::route_explain::request_head(method, "/", "explain", request.headers)?;
    let acl_request = AclRequest {
        src: request.src,
        dest: &dest,
        method: method.as_bytes(),
        connect,
        path,
        user: request.user,
        groups: &groups,
        head: Some(&head),
    };
    if settings.auth.is_some() && request.user.is_none() {
        // The proxy asks for credentials before it looks at the ACL.
        print!(
            "listener: {:?}\nrequest:  {method} {}\ndecision: 407 proxy authentication required (the listener has auth; pass --user to explain as a user)\n",
            settings.listener, request.target
        );
        return Ok(false);
    }
    let decision = runtime.block_on(decide(&settings.acl, &Rc::new(resolver), &acl_request));
    print!("{}", report(&settings, request, &dest, method, &decision));
    Ok(matches!(decision.outcome, Outcome::Allow { .. }))
}

/// Where `request` goes, and the path of an http:// URL (`None`: the
/// target is a CONNECT authority): split as the proxy splits a request
/// target.
fn destination<'a>(request: &Request<'a>) -> anyhow::Result<(Destination, Option<&'a [u8]>)> {
    let target = request.target;
    // An https:// URL goes through the proxy as a CONNECT to its host.
    if let Some(rest) = target.strip_prefix("https://") {
        let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
        let with_port = with_default_port(authority, 443);
        let (dest, _) = split_target(with_port.as_bytes(), true)
            .map_err(|e| anyhow::anyhow!("target {target:?}: {e}"))?;
        return Ok((dest, None));
    }
    let connect = !target.contains("://");
    split_target(target.as_bytes(), connect).map_err(|e| anyhow::anyhow!("target {target:?}: {e}"))
}

/// `authority` with `port` when it names none (a URL leaves it to the
/// scheme); an IPv6 literal keeps its brackets.
pub(crate) fn with_default_port(authority: &str, port: u16) -> String {
    let has_port = authority
        .rsplit_once(':')
        .is_some_and(|(host, p)| !host.ends_with(':') && p.parse::<u16>().is_ok());
    if has_port {
        authority.to_owned()
    } else {
        format!("{authority}:{port}")
    }
}

fn report(
    settings: &ForwardSettings,
    request: &Request<'_>,
    dest: &Destination,
    method: &str,
    decision: &ringway_http::forward::Decision,
) -> String {
    let acl = &settings.acl;
    let mut out = String::new();
    let _ = writeln!(out, "listener: {:?} (acl {:?})", settings.listener, acl.name);
    let _ = writeln!(out, "request:  {method} {}", request.target);
    let _ = writeln!(
        out,
        "from:     {} user {}",
        request.src,
        request.user.unwrap_or("-")
    );
    let _ = writeln!(out, "to:       {} port {}", dest.host, dest.port);
    for (ip, permitted) in decision.checked(acl) {
        let verdict = if permitted {
            "permitted"
        } else {
            "blocked (private; not in private_allow)"
        };
        let _ = writeln!(out, "address:  {ip} {verdict}");
    }
    match &decision.outcome {
        Outcome::Allow { rule, addrs } => {
            let by = rule.map_or_else(
                || format!("the default of acl {:?}", acl.name),
                |i| acl.rule_label(i),
            );
            let first = addrs.first().map_or_else(String::new, ToString::to_string);
            let _ = writeln!(out, "decision: ALLOW by {by}; connects to {first}");
        }
        Outcome::Deny(reason) => {
            let _ = writeln!(out, "decision: DENY (403): {}", acl.explain(*reason));
        }
        Outcome::Unresolvable(why) => {
            let _ = writeln!(out, "decision: 502, the name does not resolve: {why}");
        }
    }
    out
}
