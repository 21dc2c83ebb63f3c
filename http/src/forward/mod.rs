//! Forward proxy mode: the outbound filtering proxy.
//!
//! [`ForwardHandler`] is the forward listener's [`Handler`]: it serves the
//! PAC file and refuses other origin-form requests, authenticates the
//! client (407), parses and normalises the destination of an absolute-form
//! request or a CONNECT ([`host`]), runs the listener's [`Acl`], resolves
//! the name without blocking the worker, drops the addresses that
//! `block_private` forbids, and hands the engine the addresses it may
//! connect to (the ones checked are the ones connected: one resolution per
//! request). Denials are 403 pages naming the listener and the rule.

pub mod acl;
pub mod auth;
pub mod domains;
pub mod host;
pub mod pac;

use std::{
    borrow::Cow,
    net::{IpAddr, SocketAddr},
    rc::Rc,
    sync::Arc,
};

use ringway_core::{dns::Resolver, Error, OwnAddresses};

use self::{
    acl::{Acl, AclRequest, DenyReason, Verdict},
    auth::{Authenticator, BasicAuth, User},
    host::{parse_authority, Destination, Host},
    pac::Pac,
};
use crate::{
    access_log::{AclFact, LogFacts, RuleName},
    cache::{CacheCtx, CacheLayer, CacheLayers, CacheStatus, Lookup},
    edits::HeadEdits,
    engine::ClientInfo,
    head::{HeaderKind, Method, RequestHead, ResponseHead},
    hooks::{BodyPlan, HeldResponse, Peer, ProxyHooks, Route},
    reply::LocalReply,
    request_id::RequestId,
    rules::{template::Vars, HeaderRules, Policy},
    write::origin_form,
};

/// A forward listener's settings, shared by all workers.
#[derive(Debug, Clone)]
pub struct ForwardSettings {
    /// The listener's name (shown on 403 pages and in logs).
    pub listener: String,
    /// Its ACL.
    pub acl: Arc<Acl>,
    /// Its authentication, if required.
    pub auth: Option<Arc<BasicAuth>>,
    /// Its PAC file, if served.
    pub pac: Option<Arc<Pac>>,
    /// A custom 403 page: HTML with `{listener}`, `{rule}` and `{host}`
    /// placeholders.
    pub deny_page: Option<Arc<str>>,
    /// Header edits on requests and responses, and error pages (rules
    /// other than these are the ACL's).
    pub policy: Arc<Policy>,
    /// The index of the cache its plain HTTP requests use, if any.
    pub cache: Option<usize>,
}

/// What the forward hooks keep about one request: the client, for header
/// templates.
#[derive(Debug, Default)]
pub struct ForwardCtx {
    remote: Option<SocketAddr>,
    request_id: RequestId,
    https: bool,
    /// Who the client authenticated as.
    user: Option<Rc<User>>,
    /// The access decision, for the log.
    verdict: Option<Logged>,
    /// What the cache did with the request (boxed: only requests on a
    /// caching listener carry it).
    cache: Option<Box<CacheCtx>>,
}

/// An access decision as the log reports it.
#[derive(Debug, Clone, Copy)]
enum Logged {
    Allowed(Option<usize>),
    Denied(DenyReason),
    AuthFailed,
    Loop,
}

/// The forward proxy's handler for one worker.
pub struct ForwardHandler {
    settings: Arc<ForwardSettings>,
    resolver: Rc<Resolver>,
    auth: Option<Authenticator>,
    own: Arc<OwnAddresses>,
    /// This worker's caches, when the listener uses one.
    caches: Option<CacheLayers>,
}

impl ForwardHandler {
    /// A handler for one worker, resolving names with that worker's
    /// `resolver`; destinations among `own` (the server's own listening
    /// addresses) are refused as loops.
    pub fn new(settings: Arc<ForwardSettings>, resolver: Rc<Resolver>, own: Arc<OwnAddresses>) -> Self {
        let auth = settings.auth.clone().map(Authenticator::new);
        Self {
            settings,
            resolver,
            auth,
            own,
            caches: None,
        }
    }

    /// The same handler, with this worker's caches (the listener's
    /// `cache` names one of them).
    #[must_use]
    pub fn with_caches(mut self, caches: CacheLayers) -> Self {
        self.caches = Some(caches);
        self
    }

    /// The cache the listener uses, if any.
    fn cache(&self) -> Option<(usize, &CacheLayer)> {
        let index = self.settings.cache?;
        Some((index, self.caches.as_ref()?.get(index)?))
    }

    fn vars<'a>(&self, req: &'a RequestHead, cx: &ForwardCtx) -> Vars<'a> {
        Vars::for_header(req, cx.remote, cx.request_id, cx.https)
    }

    /// 508 for a destination that is one of this server's own listeners:
    /// forwarding there would bring the request back to the proxy, and a
    /// pipelined run of `CONNECT self` would nest tunnels without end.
    fn loop_to_self(
        &self,
        dest: &Destination,
        addr: SocketAddr,
        client: &ClientInfo,
        cx: &mut ForwardCtx,
    ) -> Route {
        cx.verdict = Some(Logged::Loop);
        self.log_refusal(
            client,
            dest,
            508,
            format_args!("refused: {addr} is this proxy's own listening address"),
        );
        Route::Reply(LocalReply::new(
            508,
            "text/plain; charset=utf-8",
            format!(
                "508 Loop Detected: {}:{} is this proxy itself ({addr})\n",
                dest.host, dest.port
            ),
        ))
    }

    /// A debug line on a request the listener refused itself (the access
    /// log has its line, with the rule).
    fn log_refusal(
        &self,
        client: &ClientInfo,
        dest: &Destination,
        status: u16,
        why: std::fmt::Arguments<'_>,
    ) {
        tracing::debug!(
            listener = %self.settings.listener,
            client = %client.peer,
            dest = %format_args!("{}:{}", dest.host, dest.port),
            status,
            "{why}"
        );
    }

    fn bad_request(message: &str) -> Route {
        Route::Reply(LocalReply::new(
            400,
            "text/plain; charset=utf-8",
            format!("400 Bad Request: {message}\n"),
        ))
    }

    fn denied(
        &self,
        reason: DenyReason,
        dest: &Destination,
        client: &ClientInfo,
        cx: &mut ForwardCtx,
    ) -> Route {
        cx.verdict = Some(Logged::Denied(reason));
        let acl = &self.settings.acl;
        let rule = match reason {
            DenyReason::Rule(i) => acl.rule_label(i),
            DenyReason::Default => format!("default of acl {:?}", acl.name),
            DenyReason::ConnectPort => "connect_ports".to_owned(),
            DenyReason::Private(_) => "block_private".to_owned(),
        };
        let why = acl.explain_to_client(reason);
        self.log_refusal(client, dest, 403, format_args!("denied: {}", acl.explain(reason)));
        let host = dest.host.to_string();
        let body = match &self.settings.deny_page {
            Some(page) => page
                .replace("{listener}", &html_escape(&self.settings.listener))
                .replace("{rule}", &html_escape(&rule))
                .replace("{host}", &html_escape(&host)),
            None => format!(
                "<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head><body>\n\
                 <h1>Access denied</h1>\n\
                 <p>The proxy listener <b>{}</b> refused the request to <b>{}</b>: {}.</p>\n\
                 <p>Matched: {}.</p>\n</body></html>\n",
                html_escape(&self.settings.listener),
                html_escape(&host),
                html_escape(&why),
                html_escape(&rule),
            ),
        };
        Route::Reply(
            LocalReply::new(403, "text/html; charset=utf-8", body).with_header(
                "X-Ringway-Denied",
                &format!("listener={}; {rule}", self.settings.listener),
            ),
        )
    }
}

impl ProxyHooks for ForwardHandler {
    type Ctx = ForwardCtx;

    fn upstream_request(
        &self,
        req: &RequestHead,
        _peer: Option<&Peer>,
        edits: &mut HeadEdits,
        cx: &mut ForwardCtx,
    ) {
        if let (Some((_, layer)), Some(cache)) = (self.cache(), &cx.cache) {
            layer.upstream_request(edits, cache);
        }
        let list = &self.settings.policy.headers.request;
        if !list.is_empty() {
            HeaderRules::apply(list, &self.vars(req, cx), edits);
        }
    }

    fn response(
        &self,
        req: &RequestHead,
        resp: &ResponseHead,
        edits: &mut HeadEdits,
        cx: &mut ForwardCtx,
    ) -> BodyPlan {
        let plan = match (self.cache(), cx.cache.as_deref_mut()) {
            (Some((_, layer)), Some(cache)) => layer.response(req, resp, edits, cache),
            _ => BodyPlan::Pass,
        };
        if matches!(plan, BodyPlan::Replace(_)) {
            // The held response's head gets the edits when it is sent.
            return plan;
        }
        let list = &self.settings.policy.headers.response;
        if !list.is_empty() {
            HeaderRules::apply(list, &self.vars(req, cx), edits);
        }
        plan
    }

    fn observed(&self, _req: &RequestHead, body: crate::hooks::Observed, cx: &mut ForwardCtx) {
        if let (Some((_, layer)), Some(cache)) = (self.cache(), cx.cache.as_deref_mut()) {
            layer.observed(body, cache);
        }
    }

    fn fallback(&self, req: &RequestHead, _error: &Error, cx: &mut ForwardCtx) -> Option<HeldResponse> {
        let (_, layer) = self.cache()?;
        layer.fallback(req, cx.cache.as_deref_mut()?)
    }

    fn local_reply(&self, req: &RequestHead, reply: LocalReply, cx: &ForwardCtx) -> LocalReply {
        let mut reply = self.settings.policy.error_pages.dress(reply);
        HeaderRules::apply_to_reply(
            &self.settings.policy.headers.response,
            &self.vars(req, cx),
            &mut reply,
        );
        reply
    }

    fn log_facts<'a>(&'a self, cx: &'a ForwardCtx) -> LogFacts<'a> {
        let acl = &self.settings.acl;
        let name = |i: usize| acl.rules.get(i).and_then(|r| r.name.as_deref());
        let fact = |allowed, rule| Some(AclFact { allowed, rule });
        LogFacts {
            user: cx.user.as_deref().map(|u| u.name.as_str()),
            acl: match cx.verdict {
                None => None,
                Some(Logged::Allowed(Some(i))) => fact(true, RuleName::Rule(i, name(i))),
                Some(Logged::Allowed(None)) => fact(true, RuleName::Default),
                Some(Logged::Denied(DenyReason::Rule(i))) => fact(false, RuleName::Rule(i, name(i))),
                Some(Logged::Denied(DenyReason::Default)) => fact(false, RuleName::Default),
                Some(Logged::Denied(DenyReason::ConnectPort)) => fact(false, RuleName::ConnectPorts),
                Some(Logged::Denied(DenyReason::Private(_))) => fact(false, RuleName::BlockPrivate),
                Some(Logged::AuthFailed) => fact(false, RuleName::Auth),
                Some(Logged::Loop) => fact(false, RuleName::Loop),
            },
            route: None,
            cache: cx
                .cache
                .as_ref()
                .and_then(|c| c.status())
                .map(CacheStatus::as_str),
        }
    }

    async fn route(&self, req: &RequestHead, client: &ClientInfo, cx: &mut ForwardCtx) -> Route {
        cx.remote = Some(client.peer);
        cx.request_id = client.request_id;
        cx.https = client.tls.is_some();
        let target = req.target();
        let connect = req.method() == Method::Connect;
        if !connect && target.first() == Some(&b'/') {
            if let Some(pac) = &self.settings.pac {
                if matches!(req.method(), Method::Get | Method::Head) && req.path() == pac.path().as_bytes() {
                    return Route::Reply(pac.reply(req.host()));
                }
            }
            return Self::bad_request(
                "this is a proxy; send absolute-form requests (configure it as your HTTP proxy)",
            );
        }

        let user = match &self.auth {
            Some(auth) => match auth.authenticate(req.field(HeaderKind::ProxyAuthorization)).await {
                Some(user) => Some(user),
                None => {
                    cx.verdict = Some(Logged::AuthFailed);
                    return Route::Reply(
                        LocalReply::status(407).with_header("Proxy-Authenticate", &auth.scheme().challenge()),
                    );
                }
            },
            None => None,
        };

        let (dest, path) = match split_target(target, connect) {
            Ok(split) => split,
            Err(e) => return Self::bad_request(&e),
        };

        let request = AclRequest {
            src: client.peer.ip(),
            dest: &dest,
            method: req.method_bytes(),
            connect,
            path,
            user: user.as_deref().map(|u| u.name.as_str()),
            groups: user.as_deref().map_or(&[], |u| &u.groups),
            head: Some(req),
        };
        let outcome = decide(&self.settings.acl, &self.resolver, &request).await.outcome;
        cx.user = user;
        match outcome {
            Outcome::Allow { addrs, .. } if addrs.iter().any(|&a| self.own.contains(a)) => {
                let own = addrs.iter().copied().find(|&a| self.own.contains(a));
                self.loop_to_self(&dest, own.unwrap_or(addrs[0]), client, cx)
            }
            Outcome::Allow { addrs, rule } => {
                cx.verdict = Some(Logged::Allowed(rule));
                if connect {
                    return Route::Connect(addrs);
                }
                // Only once the ACL allowed the destination (and the
                // client logged in) may the cache answer.
                if let Some((index, layer)) = self.cache() {
                    let (path, authority) = origin_form(target);
                    let host = authority.unwrap_or_default();
                    let cache = cx.cache.get_or_insert_with(Box::default);
                    match layer
                        .lookup(index, req, (false, host, path), client.background, cache)
                        .await
                    {
                        Lookup::Held(held) => return Route::Held(held),
                        Lookup::Reply(reply) => return Route::Reply(reply),
                        Lookup::Forward => {}
                    }
                }
                Route::Forward(addrs)
            }
            Outcome::Deny(reason) => self.denied(reason, &dest, client, cx),
            Outcome::Unresolvable(why) => {
                tracing::debug!(listener = %self.settings.listener, host = %dest.host, "resolution failed: {why}");
                let mut reply = LocalReply::new(
                    502,
                    "text/plain; charset=utf-8",
                    format!("502 Bad Gateway: cannot resolve {}\n", dest.host),
                );
                // A configured 502 page replaces it.
                reply.stock = true;
                Route::Reply(reply)
            }
        }
    }
}

/// Where a forward request goes, and for an `http://` URL its origin-form
/// path: CONNECT targets are `host:port`, other requests absolute-form
/// `http://` URLs (https goes through CONNECT). The target is split once,
/// as the engine splits it when it forwards the request. Shared by the
/// handler and `ringway acl explain`.
pub fn split_target(target: &[u8], connect: bool) -> Result<(Destination, Option<&[u8]>), Cow<'static, str>> {
    if connect {
        let dest = parse_authority(target, None).map_err(|e| e.to_string())?;
        return Ok((dest, None));
    }
    let (path, Some(authority)) = origin_form(target) else {
        return Err("unsupported request target".into());
    };
    if !target
        .get(..7)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"http://"))
    {
        return Err("use CONNECT for https:// URLs".into());
    }
    let dest = parse_authority(authority, Some(80)).map_err(|e| e.to_string())?;
    Ok((dest, Some(path)))
}

/// What the forward proxy decided for one request.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The outcome.
    pub outcome: Outcome,
    /// What the destination resolved to, if it was resolved.
    pub resolved: Option<Addresses>,
}

/// A destination's addresses: an IP literal's own (no allocation), or a
/// name's from the resolver.
#[derive(Debug, Clone)]
pub enum Addresses {
    /// The target was this IP address.
    Literal(IpAddr),
    /// The target was a name that resolved to these.
    Resolved(Rc<[IpAddr]>),
}

impl Addresses {
    /// The addresses, in the order they are tried.
    pub fn as_slice(&self) -> &[IpAddr] {
        match self {
            Addresses::Literal(ip) => std::slice::from_ref(ip),
            Addresses::Resolved(addrs) => addrs,
        }
    }
}

impl Decision {
    fn new(outcome: Outcome, resolved: Option<Addresses>) -> Self {
        Self { outcome, resolved }
    }

    /// Every resolved address with whether it may be connected to: inside
    /// the allowing rule's `dst_ip` (if it has one) and let through by
    /// `block_private`. For `ringway acl explain`; requests do not need it.
    pub fn checked(&self, acl: &Acl) -> Vec<(IpAddr, bool)> {
        let rule = match self.outcome {
            Outcome::Allow { rule, .. } => rule,
            _ => None,
        };
        self.resolved
            .iter()
            .flat_map(|addrs| addrs.as_slice())
            .map(|&ip| (ip, admits(acl, rule, ip)))
            .collect()
    }
}

/// Whether `ip` may be connected to after `rule` (or the default) allowed
/// the request: a rule that allowed because of `dst_ip` allows only the
/// addresses it covers, whatever else the name resolved to.
fn admits(acl: &Acl, rule: Option<usize>, ip: IpAddr) -> bool {
    rule.is_none_or(|r| acl.rule_admits(r, ip)) && acl.permits_address(ip)
}

/// Allowed (with where to connect), denied, or not resolvable.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Allowed by a rule (its index) or by the default; connect to these
    /// addresses, in order.
    Allow {
        /// The rule that allowed it, if not the default.
        rule: Option<usize>,
        /// The permitted addresses with the destination port.
        addrs: Rc<[SocketAddr]>,
    },
    /// Denied.
    Deny(DenyReason),
    /// The name has no address, or no DNS server answered.
    Unresolvable(String),
}

/// Runs `acl` on `request`: the rules (resolving the destination only if a
/// rule needs its addresses), then resolution, then `block_private` on
/// every resolved address. Shared by the handler and `ringway acl explain`.
pub async fn decide(acl: &Acl, resolver: &Resolver, request: &AclRequest<'_>) -> Decision {
    let dest = request.dest;
    let mut resolved: Option<Addresses> = None;
    let resolve = || async {
        match &dest.host {
            Host::Ip(ip) => Ok(Addresses::Literal(*ip)),
            Host::Name(name) => resolver
                .resolve(name.as_str())
                .await
                .map(Addresses::Resolved)
                .map_err(|e| e.to_string()),
        }
    };
    let rule = loop {
        match acl.decide(request, resolved.as_ref().map(Addresses::as_slice)) {
            Verdict::NeedAddresses if resolved.is_none() => match resolve().await {
                Ok(addrs) => resolved = Some(addrs),
                Err(why) => return Decision::new(Outcome::Unresolvable(why), None),
            },
            // A second request for addresses cannot happen: they are known.
            Verdict::NeedAddresses => break None,
            Verdict::Allow(rule) => break rule,
            Verdict::Deny(reason) => return Decision::new(Outcome::Deny(reason), resolved),
        }
    };
    let addrs = match resolved {
        Some(addrs) => addrs,
        None => match resolve().await {
            Ok(addrs) => addrs,
            Err(why) => return Decision::new(Outcome::Unresolvable(why), None),
        },
    };
    let all = addrs.as_slice();
    let to_socket = |&ip: &IpAddr| SocketAddr::new(ip, dest.port);
    // Usually every address passes: then the list is built in one
    // allocation, straight from the resolved one.
    let permitted: Rc<[SocketAddr]> = if all.iter().all(|&ip| admits(acl, rule, ip)) {
        all.iter().map(to_socket).collect()
    } else {
        all.iter()
            .filter(|&&ip| admits(acl, rule, ip))
            .map(to_socket)
            .collect()
    };
    let outcome = match all.first() {
        Some(&first) if permitted.is_empty() => Outcome::Deny(DenyReason::Private(first)),
        None => Outcome::Unresolvable("no address".into()),
        Some(_) => Outcome::Allow {
            rule,
            addrs: permitted,
        },
    };
    Decision::new(outcome, Some(addrs))
}

fn html_escape(text: &str) -> Cow<'_, str> {
    if !text.contains(['<', '>', '&', '"', '\'']) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::{split_target, Host};

    #[test]
    fn targets_split_once_into_destination_and_path() {
        let (dest, path) = split_target(b"HTTP://Example.Test:8080/a?b", false).unwrap();
        assert!(matches!(&dest.host, Host::Name(name) if name.as_str() == "example.test"));
        assert_eq!(dest.port, 8080);
        assert_eq!(path, Some(&b"/a?b"[..]));
        let (dest, path) = split_target(b"http://127.0.0.1", false).unwrap();
        assert_eq!((dest.port, path), (80, Some(&b"/"[..])));
        let (dest, path) = split_target(b"example.test:443", true).unwrap();
        assert_eq!((dest.port, path), (443, None));
        assert!(split_target(b"https://example.test/", false)
            .unwrap_err()
            .contains("CONNECT"));
        assert!(split_target(b"/origin/form", false).is_err());
        assert!(split_target(b"http://user@example.test/", false).is_err());
    }
}
