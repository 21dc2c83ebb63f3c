//! Request rules in the configuration: `[[listener.rule]]`,
//! `[[listener.route.rule]]` and the `headers` tables of listeners and
//! routes (header edits, CORS, error pages), compiled into
//! [`ringway_http::rules::Policy`]. Every error names its key: a regex
//! that does not compile, a `$3` where the rule has two groups, a status a
//! redirect cannot have, an unknown variable, a CORS origin that is not
//! an origin.

use ringway_http::{
    matching::ValueMatch,
    rules::{
        cors::{Cors, CorsSettings},
        ratelimit::{Rate, RateTable, DEFAULT_SLOTS, MAX_REFILL},
        template::Template,
        Action as RuleAction, Condition, EditOp, ErrorPages, HeaderEdit, Policy, RateKey,
        Rule as RequestRule, Test,
    },
};

use super::*;

/// `[[listener.rule]]` / `[[listener.route.rule]]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestRuleSection {
    pub(crate) name: Option<String>,
    pub(crate) when: Option<WhenSection>,
    pub(crate) allow: Option<bool>,
    pub(crate) deny: Option<DenyValue>,
    #[serde(rename = "return")]
    pub(crate) return_: Option<ReturnSection>,
    pub(crate) redirect: Option<RedirectSection>,
    pub(crate) rewrite: Option<RewriteSection>,
    pub(crate) rate_limit: Option<RateLimitSection>,
}

/// A rule's `when`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WhenSection {
    pub(crate) src: Option<OneOrMany<String>>,
    pub(crate) method: Option<OneOrMany<String>>,
    pub(crate) path_prefix: Option<OneOrMany<String>>,
    pub(crate) path_regex: Option<String>,
    pub(crate) query: Option<BTreeMap<String, String>>,
    pub(crate) header: Option<BTreeMap<String, String>>,
    pub(crate) sni: Option<OneOrMany<String>>,
    pub(crate) not: Option<Box<WhenSection>>,
}

/// `deny = 403` or `deny = { status = 403, body = "..." }`.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a status (deny = 403) or a table (deny = { status = 403, body = \"...\" })"
)]
pub(crate) enum DenyValue {
    Status(i64),
    Table(DenySection),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DenySection {
    pub(crate) status: Option<i64>,
    pub(crate) body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReturnSection {
    pub(crate) status: Option<i64>,
    pub(crate) body: Option<String>,
    pub(crate) content_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RedirectSection {
    pub(crate) to: Option<String>,
    pub(crate) status: Option<i64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RewriteSection {
    pub(crate) path_regex: Option<String>,
    pub(crate) to: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RateLimitSection {
    pub(crate) rate: Option<String>,
    pub(crate) burst: Option<i64>,
    pub(crate) key: Option<String>,
}

/// `[listener.headers]` / `[listener.route.headers]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HeadersSection {
    pub(crate) request_set: Option<BTreeMap<String, String>>,
    pub(crate) request_append: Option<BTreeMap<String, String>>,
    pub(crate) request_remove: Option<Vec<String>>,
    pub(crate) response_set: Option<BTreeMap<String, String>>,
    pub(crate) response_append: Option<BTreeMap<String, String>>,
    pub(crate) response_remove: Option<Vec<String>>,
    pub(crate) cors: Option<CorsSection>,
    pub(crate) error_pages: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CorsSection {
    pub(crate) allow_origins: Option<Vec<String>>,
    pub(crate) allow_methods: Option<Vec<String>>,
    pub(crate) allow_headers: Option<Vec<String>>,
    pub(crate) expose_headers: Option<Vec<String>>,
    pub(crate) allow_credentials: Option<bool>,
    pub(crate) max_age: Option<String>,
}

const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

/// Which parts of a policy a listener may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PolicyScope {
    /// A reverse listener or route: everything.
    Reverse,
    /// A forward listener: header edits and error pages (its rules are
    /// its ACL).
    Forward,
}

impl Validator {
    /// Compiles the rules and headers of a listener or route at `at`.
    pub(super) fn policy(
        &mut self,
        rules: &[RequestRuleSection],
        headers: Option<&HeadersSection>,
        at: &KeyPath,
        scope: PolicyScope,
    ) -> Policy {
        let mut policy = Policy::default();
        for (i, section) in rules.iter().enumerate() {
            if let Some(rule) = self.request_rule(section, &at.key("rule").index(i)) {
                policy.rules.push(rule);
            }
        }
        let Some(h) = headers else { return policy };
        let hat = at.key("headers");
        let lists = [
            (&h.request_set, "request_set", EditOp::Set, false),
            (&h.request_append, "request_append", EditOp::Append, false),
            (&h.response_set, "response_set", EditOp::Set, true),
            (&h.response_append, "response_append", EditOp::Append, true),
        ];
        for (map, key, op, response) in lists {
            for (name, value) in map.iter().flatten() {
                let kat = hat.key(key).key(name);
                if let Some(edit) = self.header_edit(op, name, Some(value), &kat) {
                    if response {
                        &mut policy.headers.response
                    } else {
                        &mut policy.headers.request
                    }
                    .push(edit);
                }
            }
        }
        for (list, key, response) in [
            (&h.request_remove, "request_remove", false),
            (&h.response_remove, "response_remove", true),
        ] {
            for (i, name) in list.iter().flatten().enumerate() {
                if let Some(edit) = self.header_edit(EditOp::Remove, name, None, &hat.key(key).index(i)) {
                    if response {
                        &mut policy.headers.response
                    } else {
                        &mut policy.headers.request
                    }
                    .push(edit);
                }
            }
        }
        if let Some(cors) = &h.cors {
            if scope == PolicyScope::Forward {
                self.problem(hat.key("cors"), "cors applies to reverse listeners and routes: a forward proxy does not answer for origins");
            } else {
                policy.cors = self.cors(cors, &hat.key("cors"));
            }
        }
        if let Some(pages) = &h.error_pages {
            policy.error_pages = self.error_pages(pages, &hat.key("error_pages"));
        }
        policy
    }

    fn header_edit(
        &mut self,
        op: EditOp,
        name: &str,
        value: Option<&String>,
        at: &KeyPath,
    ) -> Option<HeaderEdit> {
        let lower = name.to_ascii_lowercase();
        if [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
            "via",
        ]
        .contains(&lower.as_str())
        {
            self.problem(
                at.clone(),
                format!(
                    "{name:?} is written by the proxy: see [http] forwarded and via (a listener's forwarded)"
                ),
            );
            return None;
        }
        if lower == "host" && op == EditOp::Remove {
            self.problem(
                at.clone(),
                "Host cannot be removed: a request needs one (upstream_host sets it)",
            );
            return None;
        }
        let value = match value {
            None => None,
            Some(text) => {
                if text.contains(['\r', '\n', '\0']) {
                    self.problem(at.clone(), "a header value cannot hold CR, LF or NUL");
                    return None;
                }
                match Template::parse(text, 0) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        self.problem(at.clone(), e);
                        return None;
                    }
                }
            }
        };
        match HeaderEdit::new(op, name, value) {
            Ok(edit) => Some(edit),
            Err(e) => {
                self.problem(at.clone(), format!("{name:?}: {e}"));
                None
            }
        }
    }

    fn cors(&mut self, c: &CorsSection, at: &KeyPath) -> Option<Cors> {
        let max_age = match &c.max_age {
            None => None,
            Some(text) => match parse_duration(text) {
                Ok(d) => Some(d),
                Err(e) => {
                    self.problem(at.key("max_age"), e);
                    None
                }
            },
        };
        let settings = CorsSettings {
            allow_origins: c.allow_origins.clone().unwrap_or_default(),
            allow_methods: c.allow_methods.clone().unwrap_or_default(),
            allow_headers: c.allow_headers.clone().unwrap_or_default(),
            expose_headers: c.expose_headers.clone().unwrap_or_default(),
            allow_credentials: c.allow_credentials.unwrap_or(false),
            max_age,
        };
        match Cors::new(&settings) {
            Ok(cors) => Some(cors),
            Err(e) => {
                let key = at.key(e.key);
                self.problem(e.index.map_or(key.clone(), |i| key.index(i)), e.message);
                None
            }
        }
    }

    fn error_pages(&mut self, pages: &BTreeMap<String, String>, at: &KeyPath) -> ErrorPages {
        let mut out = ErrorPages::default();
        for (status, file) in pages {
            let kat = at.key(status);
            let Some(code) = status.parse::<u16>().ok().filter(|s| (400..=599).contains(s)) else {
                self.problem(
                    kat,
                    format!("{status:?} is not an error status: error pages are for 400 to 599"),
                );
                continue;
            };
            let Some((path, body)) = self.read_file(kat, file) else {
                continue;
            };
            let content_type = match path
                .extension()
                .and_then(|e| e.to_str())
                .map(str::to_ascii_lowercase)
                .as_deref()
            {
                Some("json") => "application/json",
                Some("txt") => "text/plain; charset=utf-8",
                _ => "text/html; charset=utf-8",
            };
            out.insert(code, body.into(), content_type);
        }
        out
    }

    fn status(
        &mut self,
        at: KeyPath,
        value: Option<i64>,
        default: u16,
        allowed: impl Fn(u16) -> bool,
        expected: &str,
    ) -> u16 {
        let Some(n) = value else { return default };
        match u16::try_from(n).ok().filter(|&s| allowed(s)) {
            Some(s) => s,
            None => {
                self.problem(at, format!("{n} is not a status {expected}"));
                default
            }
        }
    }

    fn regex(&mut self, at: KeyPath, text: &str) -> Option<regex::bytes::Regex> {
        match regex::bytes::Regex::new(text) {
            Ok(re) => Some(re),
            Err(e) => {
                self.problem(
                    at,
                    format!(
                        "invalid regular expression {text:?}: {}",
                        ringway_http::matching::first_line(&e.to_string())
                    ),
                );
                None
            }
        }
    }

    fn request_rule(&mut self, r: &RequestRuleSection, at: &KeyPath) -> Option<RequestRule> {
        let actions: Vec<&str> = [
            ("allow", r.allow.is_some()),
            ("deny", r.deny.is_some()),
            ("return", r.return_.is_some()),
            ("redirect", r.redirect.is_some()),
            ("rewrite", r.rewrite.is_some()),
            ("rate_limit", r.rate_limit.is_some()),
        ]
        .into_iter()
        .filter_map(|(k, present)| present.then_some(k))
        .collect();
        if actions.len() != 1 {
            let found = if actions.is_empty() {
                "none".to_owned()
            } else {
                actions.join(", ")
            };
            self.problem(
                at.clone(),
                format!("a rule needs exactly one action (allow, deny, return, redirect, rewrite or rate_limit); found {found}"),
            );
            return None;
        }
        let problems = self.problems.len();
        let when_empty = r.when.as_ref().is_some_and(|w| {
            w.src.is_none()
                && w.method.is_none()
                && w.path_prefix.is_none()
                && w.path_regex.is_none()
                && w.query.is_none()
                && w.header.is_none()
                && w.sni.is_none()
                && w.not.is_none()
        });
        if when_empty {
            self.problem(
                at.key("when"),
                "when = {} tests nothing: remove it (a rule without when always applies)",
            );
        }
        let when = match &r.when {
            Some(w) => self.condition(w, &at.key("when")),
            None => Condition::default(),
        };
        // `$1`... of a redirect read the groups of the rule's path_regex.
        let groups = when
            .tests
            .iter()
            .find_map(|t| match t {
                Test::PathRegex(re) => Some(re.captures_len() - 1),
                _ => None,
            })
            .unwrap_or(0);
        let action = if let Some(allow) = r.allow {
            if !allow {
                self.problem(
                    at.key("allow"),
                    "allow = false does nothing: remove the rule, or write allow = true",
                );
            }
            RuleAction::Allow
        } else if let Some(deny) = &r.deny {
            let (status, body, sat) = match deny {
                DenyValue::Status(s) => (Some(*s), None, at.key("deny")),
                DenyValue::Table(t) => (t.status, t.body.clone(), at.key("deny").key("status")),
            };
            let status = self.status(
                sat,
                status,
                403,
                |s| (400..=599).contains(&s),
                "a refusal can have (400 to 599)",
            );
            RuleAction::Deny {
                status,
                body: body.map(Into::into),
            }
        } else if let Some(ret) = &r.return_ {
            let status = self.status(
                at.key("return").key("status"),
                ret.status,
                200,
                |s| (200..=599).contains(&s),
                "a response can have (200 to 599)",
            );
            if matches!(status, 204 | 304) && ret.body.as_ref().is_some_and(|b| !b.is_empty()) {
                self.problem(
                    at.key("return").key("body"),
                    format!("a {status} response has no body"),
                );
            }
            let content_type = ret
                .content_type
                .clone()
                .unwrap_or_else(|| "text/plain; charset=utf-8".to_owned());
            if content_type.contains(['\r', '\n', '\0']) || content_type.is_empty() {
                self.problem(at.key("return").key("content_type"), "not a content type");
            }
            RuleAction::Return {
                status,
                body: ret.body.clone().unwrap_or_default().into(),
                content_type: content_type.into(),
            }
        } else if let Some(redirect) = &r.redirect {
            let rat = at.key("redirect");
            let status = self.status(
                rat.key("status"),
                redirect.status,
                302,
                |s| REDIRECT_STATUSES.contains(&s),
                "a redirect can have (301, 302, 303, 307 or 308)",
            );
            let to = self.template_at(
                rat.key("to"),
                redirect.to.as_deref(),
                groups,
                "a redirect needs to = \"URL\"",
            )?;
            RuleAction::Redirect { to, status }
        } else if let Some(rewrite) = &r.rewrite {
            let rat = at.key("rewrite");
            let Some(text) = &rewrite.path_regex else {
                self.problem(
                    rat.key("path_regex"),
                    "a rewrite needs path_regex, matched on the path",
                );
                return None;
            };
            let path_regex = self.regex(rat.key("path_regex"), text)?;
            let to = self.template_at(
                rat.key("to"),
                rewrite.to.as_deref(),
                path_regex.captures_len() - 1,
                "a rewrite needs to = \"/new/path\"",
            )?;
            if !(to.source().starts_with('/') || to.source().starts_with('$')) {
                self.problem(
                    rat.key("to"),
                    format!("{:?}: a rewritten path starts with '/'", to.source()),
                );
            }
            RuleAction::Rewrite { path_regex, to }
        } else if let Some(limit) = &r.rate_limit {
            let rat = at.key("rate_limit");
            let Some(text) = &limit.rate else {
                self.problem(rat.key("rate"), "a rate limit needs rate = \"100/s\"");
                return None;
            };
            let rate = match Rate::parse(text) {
                Ok(rate) => rate,
                Err(e) => {
                    self.problem(rat.key("rate"), e);
                    return None;
                }
            };
            // By default a second's worth of requests may come at once.
            let per_second = (rate.count as f64 / rate.per.as_secs_f64()).ceil().max(1.0) as u64;
            let burst = match limit.burst {
                None => per_second,
                Some(b) if b >= 1 => b as u64,
                Some(b) => {
                    self.problem(
                        rat.key("burst"),
                        format!("{b}: the burst lets at least one request through"),
                    );
                    1
                }
            };
            if rate.per > MAX_REFILL || rate.refill(burst) > MAX_REFILL {
                self.problem(
                    rat.clone(),
                    format!(
                        "{text:?} with burst {burst}: a bucket would take longer than {} days to refill",
                        MAX_REFILL.as_secs() / 86_400
                    ),
                );
                return None;
            }
            let key = match limit.key.as_deref() {
                None | Some("client_ip") => RateKey::ClientIp,
                Some("route") => RateKey::Route,
                Some(other) => {
                    match other.strip_prefix("header:") {
                        Some(name) if ringway_http::is_token(name) => RateKey::Header(name.into()),
                        _ => {
                            self.problem(rat.key("key"), format!("unknown key {other:?}: expected \"client_ip\", \"route\" or \"header:NAME\""));
                            RateKey::ClientIp
                        }
                    }
                }
            };
            RuleAction::RateLimit {
                table: Arc::new(RateTable::new(rate, burst, DEFAULT_SLOTS)),
                key,
            }
        } else {
            return None;
        };
        (self.problems.len() == problems).then(|| RequestRule {
            name: r.name.clone(),
            when,
            action,
        })
    }

    fn template_at(
        &mut self,
        at: KeyPath,
        text: Option<&str>,
        groups: usize,
        missing: &str,
    ) -> Option<Template> {
        let Some(text) = text else {
            self.problem(at, missing);
            return None;
        };
        if text.bytes().any(|b| b <= b' ' || b == 0x7f) {
            self.problem(at, format!("{text:?} holds a space or a control character"));
            return None;
        }
        match Template::parse(text, groups) {
            Ok(t) => Some(t),
            Err(e) => {
                self.problem(at, e);
                None
            }
        }
    }

    fn condition(&mut self, w: &WhenSection, at: &KeyPath) -> Condition {
        let mut tests = Vec::new();
        for (key, empty) in [
            ("src", w.src.as_ref().is_some_and(|l| l.items().is_empty())),
            ("method", w.method.as_ref().is_some_and(|l| l.items().is_empty())),
            (
                "path_prefix",
                w.path_prefix.as_ref().is_some_and(|l| l.items().is_empty()),
            ),
            ("sni", w.sni.as_ref().is_some_and(|l| l.items().is_empty())),
        ] {
            if empty {
                self.problem(
                    at.key(key),
                    "an empty list matches nothing: remove the key, or list what it matches",
                );
            }
        }
        if let Some(src) = &w.src {
            tests.push(Test::Src(self.nets(src.keyed(&at.key("src")))));
        }
        if let Some(methods) = &w.method {
            for (key, m) in methods.keyed(&at.key("method")) {
                if !ringway_http::is_token(m) {
                    self.problem(key, format!("{m:?} is not a method"));
                } else if *m != m.to_ascii_uppercase() {
                    self.problem(
                        key,
                        format!(
                            "methods are case-sensitive: {m:?} never matches {:?}",
                            m.to_ascii_uppercase()
                        ),
                    );
                }
            }
            tests.push(Test::Method(
                methods.items().iter().map(|m| m.as_bytes().into()).collect(),
            ));
        }
        if let Some(prefixes) = &w.path_prefix {
            for (key, p) in prefixes.keyed(&at.key("path_prefix")) {
                if !p.starts_with('/') {
                    self.problem(key, format!("path_prefix {p:?} must start with '/'"));
                }
            }
            // Compared with the canonical path: kept in canonical form.
            tests.push(Test::PathPrefix(
                prefixes
                    .items()
                    .iter()
                    .map(|p| ringway_http::matching::canonical_prefix(p).into_bytes().into())
                    .collect(),
            ));
        }
        if let Some(text) = &w.path_regex {
            if let Some(re) = self.regex(at.key("path_regex"), text) {
                tests.push(Test::PathRegex(re));
            }
        }
        for (name, value) in w.query.iter().flatten() {
            match ValueMatch::parse(value) {
                Ok(value) => tests.push(Test::Query {
                    name: name.as_bytes().into(),
                    value,
                }),
                Err(e) => self.problem(at.key("query").key(name), e),
            }
        }
        for (name, value) in w.header.iter().flatten() {
            let kat = at.key("header").key(name);
            if !ringway_http::is_token(name) {
                self.problem(kat, format!("{name:?} is not a header name"));
                continue;
            }
            match ValueMatch::parse(value) {
                Ok(value) => tests.push(Test::Header {
                    name: name.as_str().into(),
                    value,
                }),
                Err(e) => self.problem(kat, e),
            }
        }
        if let Some(names) = &w.sni {
            for (key, n) in names.keyed(&at.key("sni")) {
                let bare = n.strip_prefix("*.").unwrap_or(n);
                if bare.is_empty()
                    || !bare
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.'))
                {
                    self.problem(key, format!("invalid server name {n:?}"));
                }
            }
            tests.push(Test::Sni(
                names
                    .items()
                    .iter()
                    .map(|n| n.to_ascii_lowercase().into())
                    .collect(),
            ));
        }
        if let Some(not) = &w.not {
            let inner = self.condition(not, &at.key("not"));
            if inner.tests.is_empty() {
                self.problem(at.key("not"), "not = {} holds nothing to negate");
            }
            tests.push(Test::Not(inner));
        }
        Condition { tests }
    }
}
