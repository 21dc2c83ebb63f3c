//! Request rules: what a listener or a route does to a request besides
//! sending it on. Compiled at load; evaluated without allocating on the
//! request path (a redirect's or rewrite's output aside).
//!
//! A [`Policy`] holds, for a listener or one of its routes:
//! - [`Rule`]s, evaluated in order: each has a [`Condition`] (every test
//!   must hold; a test's list holds when any element matches) and an
//!   [`Action`]. `allow`, `deny`, `return` and `redirect` end the list;
//!   `rewrite` and a `rate_limit` within its limit go on to the next rule.
//! - [`HeaderRules`]: fields set, appended or removed on the request sent
//!   upstream and on the response sent back, with [`template`] values.
//! - [`cors::Cors`]: preflights answered here, `Access-Control-*` fields
//!   on responses.
//! - [`ErrorPages`]: bodies for the statuses the proxy itself answers.
//!
//! Matchers read the path in canonical form (see
//! [`crate::matching::canonical_target`]), so no spelling of a path slips
//! past a rule meant for it.

pub mod cors;
pub mod ratelimit;
pub mod template;

use std::{cell::RefCell, net::IpAddr, sync::Arc};

use regex::bytes::Regex;

use self::{
    cors::Cors,
    ratelimit::{Admit, RateTable},
    template::{Template, Vars},
};
use crate::{
    edits::HeadEdits,
    engine::ClientInfo,
    head::RequestHead,
    matching::{canonical_target, IpNet, ValueMatch},
    reply::LocalReply,
};

/// What a listener or a route does to its requests.
#[derive(Debug, Default)]
pub struct Policy {
    /// Rules, in order.
    pub rules: Vec<Rule>,
    /// Header edits.
    pub headers: HeaderRules,
    /// CORS, if the proxy answers it.
    pub cors: Option<Cors>,
    /// Bodies for the statuses the proxy answers itself.
    pub error_pages: ErrorPages,
}

impl Policy {
    /// Whether it does nothing.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
            && self.headers.request.is_empty()
            && self.headers.response.is_empty()
            && self.cors.is_none()
            && self.error_pages.pages.is_empty()
    }
}

/// One rule.
#[derive(Debug)]
pub struct Rule {
    /// Its name, shown by `route explain` and in logs.
    pub name: Option<String>,
    /// When it applies.
    pub when: Condition,
    /// What it does then.
    pub action: Action,
}

impl Rule {
    /// "rule 2 (name)" or "rule 2" for rule index `i` (shown 1-based).
    pub fn label(&self, i: usize) -> String {
        match &self.name {
            Some(name) => format!("rule {} ({name})", i + 1),
            None => format!("rule {}", i + 1),
        }
    }
}

/// Tests that must all hold (none: always).
#[derive(Debug, Default)]
pub struct Condition {
    /// The tests.
    pub tests: Vec<Test>,
}

/// One test of a request.
#[derive(Debug)]
pub enum Test {
    /// The client's address is in one of the networks.
    Src(Vec<IpNet>),
    /// The method is one of these (case-sensitive).
    Method(Vec<Box<[u8]>>),
    /// The canonical path starts with one of these.
    PathPrefix(Vec<Box<[u8]>>),
    /// The canonical path matches; its groups are `$1`... of the action.
    PathRegex(Regex),
    /// A query parameter (decoded name) has a matching value.
    Query {
        /// The parameter's name.
        name: Box<[u8]>,
        /// Its value.
        value: ValueMatch,
    },
    /// A header field has a matching value (any of its lines).
    Header {
        /// The field's name.
        name: Box<str>,
        /// Its value.
        value: ValueMatch,
    },
    /// The TLS server name is one of these (exact, or `*.suffix`).
    Sni(Vec<Box<str>>),
    /// The inner condition does not hold.
    Not(Condition),
}

/// What a rule does.
#[derive(Debug)]
pub enum Action {
    /// Stop evaluating the list; the request goes on.
    Allow,
    /// Refuse with `status` (a 4xx or 5xx), with a body or the error page.
    Deny {
        /// The status.
        status: u16,
        /// The body; `None`: the error page for the status, or its text.
        body: Option<Arc<str>>,
    },
    /// Answer with a fixed response.
    Return {
        /// The status.
        status: u16,
        /// The body.
        body: Arc<str>,
        /// Its type.
        content_type: Arc<str>,
    },
    /// Answer with a redirect to the rendered template.
    Redirect {
        /// Where to.
        to: Template,
        /// 301, 302, 303, 307 or 308.
        status: u16,
    },
    /// Send the request upstream with a new path.
    Rewrite {
        /// What to match on the path (the rule's own, for its `$1`...).
        path_regex: Regex,
        /// The new path (and query, if it has a `?`).
        to: Template,
    },
    /// Count the request against a limit; 429 with Retry-After over it.
    RateLimit {
        /// The buckets.
        table: Arc<RateTable>,
        /// What a bucket is kept per.
        key: RateKey,
    },
}

/// What a rate limit keeps a bucket for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// Each client address.
    ClientIp,
    /// Each value of this header (requests without it: by client address).
    Header(Box<str>),
    /// The route (or listener) as a whole.
    Route,
}

/// Header edits of a policy.
#[derive(Debug, Default)]
pub struct HeaderRules {
    /// On the request sent upstream.
    pub request: Vec<HeaderEdit>,
    /// On the response sent to the client.
    pub response: Vec<HeaderEdit>,
}

/// One header edit.
#[derive(Debug, Clone)]
pub struct HeaderEdit {
    op: EditOp,
    name: Box<str>,
    value: Option<Template>,
    /// The name lowercased and followed by NUL, as a removal is kept.
    removal: Box<[u8]>,
    /// `Name: `.
    name_colon: Box<[u8]>,
    /// The whole line, when the value reads no variable.
    line: Option<Box<[u8]>>,
}

impl HeaderEdit {
    /// An edit of field `name`; refused when the name is not a token or
    /// names a field that frames the message.
    pub fn new(op: EditOp, name: &str, value: Option<Template>) -> Result<Self, crate::edits::EditError> {
        HeadEdits::new().remove(name)?;
        let mut removal = name.to_ascii_lowercase().into_bytes();
        removal.push(0);
        let name_colon = format!("{name}: ").into_bytes();
        let line = match &value {
            Some(t) if t.is_literal() => {
                let mut line = name_colon.clone();
                t.render_literal(&mut line);
                if line.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)) {
                    return Err(crate::edits::EditError::BadValue);
                }
                line.extend_from_slice(b"\r\n");
                Some(line.into())
            }
            _ => None,
        };
        Ok(Self {
            op,
            name: name.into(),
            value,
            removal: removal.into(),
            name_colon: name_colon.into(),
            line,
        })
    }

    /// What it does.
    pub fn op(&self) -> EditOp {
        self.op
    }

    /// The field it edits.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A header edit's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditOp {
    /// Replace every line of the field with one.
    Set,
    /// Add a line.
    Append,
    /// Drop every line.
    Remove,
}

impl HeaderRules {
    /// Applies response edits `list` to an answer the proxy gives itself,
    /// as nginx's `add_header ... always`: HSTS on a redirect, no Server
    /// on a refusal.
    pub fn apply_to_reply(list: &[HeaderEdit], vars: &Vars<'_>, reply: &mut LocalReply) {
        if list.is_empty() {
            return;
        }
        let mut edits = HeadEdits::new();
        Self::apply(list, vars, &mut edits);
        if edits.removes(b"server") {
            reply.server = false;
        }
        let kept: String = reply
            .headers
            .split_inclusive("\r\n")
            .filter(|line| {
                let name = line.split(':').next().unwrap_or_default();
                !edits.removes(name.as_bytes())
            })
            .collect();
        reply.headers = kept;
        reply.headers.push_str(&String::from_utf8_lossy(edits.added()));
    }

    /// `first` then `then` as one list in which a `set` or a removal
    /// replaces every earlier edit of its field: a route's edits win over
    /// its listener's, with nothing left to undo per request.
    pub fn merged(first: &[HeaderEdit], then: &[HeaderEdit]) -> Vec<HeaderEdit> {
        let mut out: Vec<HeaderEdit> = Vec::new();
        for edit in first.iter().chain(then) {
            if edit.op != EditOp::Append {
                out.retain(|e| !e.name.eq_ignore_ascii_case(&edit.name));
            }
            out.push(edit.clone());
        }
        out
    }

    /// Applies `list` (the request or response edits) to `edits`.
    pub fn apply(list: &[HeaderEdit], vars: &Vars<'_>, edits: &mut HeadEdits) {
        for edit in list {
            // Names were checked when the edit was made; a value that
            // renders a CR or LF is dropped.
            if edit.op != EditOp::Append {
                edits.remove_checked(&edit.removal);
            }
            match (&edit.line, &edit.value) {
                _ if edit.op == EditOp::Remove => {}
                (Some(line), _) => edits.append_line_checked(line),
                (None, Some(value)) if value.is_field_safe() => {
                    edits.append_with_trusted(&edit.name_colon, |out| value.render(out, vars));
                }
                (None, Some(value)) => {
                    let _ = edits.append_with_checked(&edit.name_colon, |out| value.render(out, vars));
                }
                (None, None) => {}
            }
        }
    }
}

/// Bodies for statuses, from files read at load.
#[derive(Debug, Default, Clone)]
pub struct ErrorPages {
    pages: Vec<(u16, Arc<str>, &'static str)>,
}

impl ErrorPages {
    /// Serves `body` (of type `content_type`) for `status`.
    pub fn insert(&mut self, status: u16, body: Arc<str>, content_type: &'static str) {
        self.pages.retain(|p| p.0 != status);
        self.pages.push((status, body, content_type));
    }

    /// The page for `status`, if one is set.
    pub fn get(&self, status: u16) -> Option<(&Arc<str>, &'static str)> {
        self.pages.iter().find(|p| p.0 == status).map(|p| (&p.1, p.2))
    }

    /// `reply` with this set's page for its status, when it has one and
    /// the reply's body is the stock text.
    pub fn dress(&self, reply: LocalReply) -> LocalReply {
        match self.get(reply.status) {
            Some((body, content_type)) if reply.stock => LocalReply {
                body: body.clone().into(),
                content_type: content_type.into(),
                stock: false,
                ..reply
            },
            _ => reply,
        }
    }

    /// How many statuses have a page.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether none has.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }
}

/// What rules read of a request.
#[derive(Clone, Copy)]
pub struct Facts<'a> {
    /// The request.
    pub req: &'a RequestHead,
    /// Its client.
    pub client: &'a ClientInfo,
    /// The canonical path, without the query.
    pub path: &'a [u8],
    /// The query (decoded where it is safe), without its `?`.
    pub query: &'a [u8],
    /// The query as sent, without its `?`.
    pub raw_query: &'a [u8],
}

/// The canonical form of a rewritten target, for the rules after it.
pub(crate) struct Canonical {
    /// The canonical path and query, then the query as rewritten.
    buf: Vec<u8>,
    path_len: usize,
    raw_at: usize,
}

impl Canonical {
    pub(crate) fn of(target: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(target.len() * 2);
        let path_len = canonical_target(&mut buf, target);
        let raw_at = buf.len();
        if let Some(q) = memchr::memchr(b'?', target) {
            buf.extend_from_slice(&target[q + 1..]);
        }
        Self {
            buf,
            path_len,
            raw_at,
        }
    }

    /// `facts` reading this path and query.
    pub(crate) fn facts<'a>(&'a self, facts: &Facts<'a>) -> Facts<'a> {
        Facts {
            path: &self.buf[..self.path_len],
            query: self.buf.get(self.path_len + 1..self.raw_at).unwrap_or_default(),
            raw_query: &self.buf[self.raw_at..],
            ..*facts
        }
    }
}

/// What evaluating a policy decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// No rule ended the list.
    Continue,
    /// An `allow` ended it.
    Allow,
    /// Answer the request with this.
    Reply(LocalReply),
}

/// What rules leave for the upstream request.
#[derive(Debug, Default)]
pub struct Effects {
    /// The new target (path and query) from a rewrite.
    pub rewrite: Option<Vec<u8>>,
}

/// Whose rules are being run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The listener's, before any route is looked up.
    Listener,
    /// Those of the route at this index.
    Route(usize),
}

/// Hears each rule's outcome (`route explain`); [`NoTrace`] on the
/// request path.
pub trait Trace {
    /// The rules of `scope` run next, on the canonical `path`.
    fn enter(&mut self, scope: Scope, path: &[u8]) {
        let _ = (scope, path);
    }

    /// Rule `index` matched (`true`) or not.
    fn rule(&mut self, index: usize, rule: &Rule, matched: bool) {
        let _ = (index, rule, matched);
    }

    /// What an action that matched did, when it did not end the list.
    fn effect(&mut self, text: &str) {
        let _ = text;
    }
}

/// No tracing.
pub struct NoTrace;

impl Trace for NoTrace {}

thread_local! {
    /// The canonical target of the request being routed: reused, so no
    /// allocation per request.
    static CANONICAL: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Where the query of an origin-form target begins (its length when it
/// has none), when the target is already canonical: no `%`, `\`, `#`, no
/// empty or dot segment; `None` when it is not. One pass over short targets, no
/// copy: the common case on the request path.
fn canonical_end(target: &[u8]) -> Option<usize> {
    if target.first() != Some(&b'/') {
        return None;
    }
    let mut after_slash = false;
    for (i, &b) in target.iter().enumerate() {
        match b {
            b'?' => {
                return memchr::memchr2(b'%', b'#', &target[i..]).is_none().then_some(i);
            }
            b'%' | b'\\' | b'#' => return None,
            b'/' if after_slash => return None,
            b'/' => {
                after_slash = true;
                continue;
            }
            b'.' if after_slash => {
                // "." or ".." as a whole segment.
                let rest = &target[i..];
                let dots = if rest.get(1) == Some(&b'.') { 2 } else { 1 };
                if matches!(rest.get(dots), None | Some(b'/' | b'?' | b';')) {
                    return None;
                }
            }
            _ => {}
        }
        after_slash = false;
    }
    Some(target.len())
}

/// Whether an origin-form target is already canonical (see
/// [`canonical_end`]).
#[cfg(test)]
fn is_canonical(target: &[u8]) -> bool {
    canonical_end(target).is_some()
}

/// Calls `f` with the canonical path and the query of an origin-form
/// `target` (`/path?query`), and the query as sent.
pub fn with_canonical<R>(target: &[u8], f: impl FnOnce(&[u8], &[u8], &[u8]) -> R) -> R {
    if let Some(end) = canonical_end(target) {
        let query = target.get(end + 1..).unwrap_or_default();
        return f(&target[..end], query, query);
    }
    let query_at = memchr::memchr(b'?', target);
    let raw_query = query_at.map_or(&b""[..], |q| &target[q + 1..]);
    if target.first() != Some(&b'/') {
        // `*` (OPTIONS): read as it is.
        return f(&target[..query_at.unwrap_or(target.len())], raw_query, raw_query);
    }
    CANONICAL.with(|cell| {
        let Ok(mut buf) = cell.try_borrow_mut() else {
            // Reentered (not done by the engine): a buffer of its own.
            let mut own = Vec::new();
            let len = canonical_target(&mut own, target);
            let query = own.get(len + 1..).unwrap_or_default();
            return f(&own[..len], query, raw_query);
        };
        buf.clear();
        let len = canonical_target(&mut buf, target);
        let query = buf.get(len + 1..).unwrap_or_default();
        f(&buf[..len], query, raw_query)
    })
}

impl Condition {
    /// Whether every test holds for `facts`.
    pub fn holds(&self, facts: &Facts<'_>) -> bool {
        self.tests.iter().all(|t| t.holds(facts))
    }
}

impl Test {
    /// Whether the test holds for `facts`.
    pub fn holds(&self, facts: &Facts<'_>) -> bool {
        match self {
            Test::Src(nets) => nets.iter().any(|n| n.contains(facts.client.peer.ip())),
            Test::Method(methods) => methods.iter().any(|m| **m == *facts.req.method_bytes()),
            Test::PathPrefix(prefixes) => prefixes.iter().any(|p| facts.path.starts_with(p)),
            Test::PathRegex(re) => re.is_match(facts.path),
            Test::Query { name, value } => {
                query_params(facts.query).any(|(n, v)| n == &**name && value.matches(v))
            }
            Test::Header { name, value } => facts
                .req
                .headers()
                .any(|f| f.name.eq_ignore_ascii_case(name.as_bytes()) && value.matches(f.value)),
            Test::Sni(names) => {
                let Some(sni) = facts.client.tls.as_ref().and_then(|t| t.sni.as_deref()) else {
                    return false;
                };
                let sni = sni.as_bytes();
                names.iter().any(|n| match n.strip_prefix("*.") {
                    Some(suffix) => crate::matching::is_subdomain(sni, suffix.as_bytes()),
                    None => sni.eq_ignore_ascii_case(n.as_bytes()),
                })
            }
            Test::Not(inner) => !inner.holds(facts),
        }
    }
}

/// The `name=value` pairs of a query.
fn query_params(query: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    query
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty())
        .map(|pair| match memchr::memchr(b'=', pair) {
            Some(eq) => (&pair[..eq], &pair[eq + 1..]),
            None => (pair, &b""[..]),
        })
}

impl Policy {
    /// Runs the rules on `facts`, in order. `route_key` tells routes apart
    /// for a rate limit kept per route.
    pub fn evaluate<T: Trace>(&self, facts: &Facts<'_>, fx: &mut Effects, trace: &mut T) -> Verdict {
        // After a rewrite, the rules that follow read the new path.
        let mut rewritten: Option<Canonical> = None;
        for (index, rule) in self.rules.iter().enumerate() {
            let facts = &match &rewritten {
                Some(c) => c.facts(facts),
                None => *facts,
            };
            let matched = rule.when.holds(facts);
            trace.rule(index, rule, matched);
            if !matched {
                continue;
            }
            match &rule.action {
                Action::Allow => return Verdict::Allow,
                Action::Deny { status, body } => {
                    let reply = match body {
                        Some(body) => {
                            let mut reply =
                                LocalReply::new(*status, "text/plain; charset=utf-8", body.clone());
                            reply.stock = false;
                            reply
                        }
                        None => LocalReply::status(*status),
                    };
                    return Verdict::Reply(reply);
                }
                Action::Return {
                    status,
                    body,
                    content_type,
                } => {
                    let mut reply = LocalReply::new(*status, content_type.clone(), body.clone());
                    reply.stock = false;
                    return Verdict::Reply(reply);
                }
                Action::Redirect { to, status } => {
                    let mut location = Vec::new();
                    let regex = rule.when.tests.iter().find_map(|t| match t {
                        Test::PathRegex(re) => Some(re),
                        _ => None,
                    });
                    render_with_captures(to, regex, facts.path, facts, &mut location);
                    let location = String::from_utf8_lossy(&location);
                    return Verdict::Reply(LocalReply::status(*status).with_header("Location", &location));
                }
                Action::Rewrite { path_regex, to } => {
                    let mut out = Vec::new();
                    if render_with_captures(to, Some(path_regex), facts.path, facts, &mut out) {
                        if memchr::memchr(b'?', &out).is_none() && !facts.raw_query.is_empty() {
                            out.push(b'?');
                            out.extend_from_slice(facts.raw_query);
                        }
                        // Never sent as it came when the new target cannot
                        // be sent: the rule would be stepped around.
                        if out.first() != Some(&b'/')
                            || out.iter().any(|&b| b <= b' ' || b == 0x7f || b == b'#')
                        {
                            trace.effect("the rewritten target is not a valid path: 400");
                            let mut reply = LocalReply::status(400);
                            reply.body = "400 Bad Request: the rewritten target is not a valid path\n".into();
                            return Verdict::Reply(reply);
                        }
                        trace.effect(&format!(
                            "rewrites the target to {}",
                            String::from_utf8_lossy(&out)
                        ));
                        rewritten = Some(Canonical::of(&out));
                        fx.rewrite = Some(out);
                    } else {
                        trace.effect("its path_regex did not match the path: no rewrite");
                    }
                }
                // The proxy's own refresh of a client's request spends
                // none of the client's budget.
                Action::RateLimit { .. } if facts.client.background => {
                    trace.effect("a background refresh: not rate limited");
                }
                Action::RateLimit { table, key } => {
                    let ip = facts.client.peer.ip().to_canonical();
                    let admit = match key {
                        RateKey::ClientIp => table.admit(RateSubject::Ip(ip)),
                        RateKey::Header(name) => match facts.req.header(name) {
                            Some(value) => table.admit(RateSubject::Value(value)),
                            None => table.admit(RateSubject::Ip(ip)),
                        },
                        RateKey::Route => table.admit(RateSubject::Route),
                    };
                    match admit {
                        Admit::Yes => trace.effect("within the rate limit"),
                        Admit::No { retry_after } => {
                            let seconds = retry_after.as_micros().div_ceil(1_000_000).max(1);
                            let reply =
                                LocalReply::status(429).with_header("Retry-After", &seconds.to_string());
                            return Verdict::Reply(reply);
                        }
                    }
                }
            }
        }
        Verdict::Continue
    }
}

/// What a rate limit's bucket is for.
#[derive(Hash)]
enum RateSubject<'a> {
    Ip(IpAddr),
    Value(&'a [u8]),
    Route,
}

/// Renders `to` with the groups of `regex` on `path`; returns false when
/// the regex does not match.
fn render_with_captures(
    to: &Template,
    regex: Option<&Regex>,
    path: &[u8],
    facts: &Facts<'_>,
    out: &mut Vec<u8>,
) -> bool {
    let mut vars = Vars {
        req: facts.req,
        remote: facts.client.peer,
        request_id: facts.client.request_id,
        https: facts.client.tls.is_some(),
        path: Some(facts.path),
        captures: None,
        in_url: true,
    };
    match regex {
        Some(re) => {
            let mut locations = re.capture_locations();
            if re.captures_read(&mut locations, path).is_none() {
                return false;
            }
            vars.captures = Some((path, &locations));
            to.render(out, &vars);
        }
        None => to.render(out, &vars),
    }
    true
}

impl std::fmt::Display for Test {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |items: &mut dyn Iterator<Item = String>| items.collect::<Vec<_>>().join(", ");
        let text = |b: &[u8]| format!("{:?}", String::from_utf8_lossy(b));
        match self {
            Test::Src(nets) => write!(f, "src {}", list(&mut nets.iter().map(ToString::to_string))),
            Test::Method(m) => write!(
                f,
                "method {}",
                list(&mut m.iter().map(|m| String::from_utf8_lossy(m).into_owned()))
            ),
            Test::PathPrefix(p) => write!(f, "path_prefix {}", list(&mut p.iter().map(|p| text(p)))),
            Test::PathRegex(re) => write!(f, "path_regex \"{}\"", re.as_str()),
            Test::Query { name, value } => write!(f, "query {} = {value}", String::from_utf8_lossy(name)),
            Test::Header { name, value } => write!(f, "header {name} = {value}"),
            Test::Sni(names) => write!(f, "sni {}", list(&mut names.iter().map(|n| n.to_string()))),
            Test::Not(inner) => write!(f, "not ({inner})"),
        }
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.tests.is_empty() {
            return f.write_str("always");
        }
        for (i, test) in self.tests.iter().enumerate() {
            if i > 0 {
                f.write_str(" and ")?;
            }
            write!(f, "{test}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Allow => f.write_str("allow"),
            Action::Deny { status, .. } => write!(f, "deny {status}"),
            Action::Return { status, .. } => write!(f, "return {status}"),
            Action::Redirect { to, status } => write!(f, "redirect {status} to {to}"),
            Action::Rewrite { path_regex, to } => write!(f, "rewrite \"{}\" to {to}", path_regex.as_str()),
            Action::RateLimit { key, .. } => write!(
                f,
                "rate_limit by {}",
                match key {
                    RateKey::ClientIp => "client_ip".to_owned(),
                    RateKey::Header(h) => format!("header:{h}"),
                    RateKey::Route => "route".to_owned(),
                }
            ),
        }
    }
}

#[cfg(test)]
mod tests;
