//! The forward proxy's sections: `[acl.NAME]` (rules, private
//! destinations, CONNECT ports), `[auth.NAME]` (htpasswd files), and the
//! keys of a forward listener (ACL, authentication, PAC, deny page).

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AclSection {
    pub(crate) default: Option<String>,
    pub(crate) block_private: Option<bool>,
    #[serde(default)]
    pub(crate) private_allow: Vec<String>,
    pub(crate) connect_ports: Option<Vec<PortValue>>,
    #[serde(default, rename = "rule")]
    pub(crate) rules: Vec<RuleSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleSection {
    pub(crate) name: Option<String>,
    pub(crate) action: Option<String>,
    pub(crate) src: Option<OneOrMany<String>>,
    pub(crate) dst_domain: Option<OneOrMany<String>>,
    pub(crate) dst_domain_file: Option<OneOrMany<String>>,
    pub(crate) dst_regex: Option<OneOrMany<String>>,
    pub(crate) dst_ip: Option<OneOrMany<String>>,
    pub(crate) dst_port: Option<OneOrMany<PortValue>>,
    pub(crate) method: Option<OneOrMany<String>>,
    pub(crate) url_regex: Option<OneOrMany<String>>,
    pub(crate) user: Option<OneOrMany<String>>,
    pub(crate) group: Option<OneOrMany<String>>,
    pub(crate) time: Option<OneOrMany<String>>,
    pub(crate) header: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuthSection {
    #[serde(rename = "type")]
    pub(crate) kind: Option<String>,
    pub(crate) htpasswd: Option<String>,
    pub(crate) realm: Option<String>,
    #[serde(default)]
    pub(crate) groups: BTreeMap<String, Vec<String>>,
    pub(crate) cache_ttl: Option<String>,
}

/// Whether an auth scheme knows a user (or a group) of that name.
type KnownBy = fn(&BasicAuth, &str) -> bool;

impl Validator {
    /// Rules of `acl` (`[acl.ACL_NAME]`, used by listener `listener`) that
    /// can never match: user or group rules on a listener without auth,
    /// names its auth does not know; and a policy that makes an open proxy.
    fn acl_cautions(&mut self, acl: &Acl, acl_name: &str, auth: Option<&BasicAuth>, listener: &str) {
        let at = KeyPath::root().key("acl").key(acl_name);
        for (i, rule) in acl.rules.iter().enumerate() {
            for matcher in &rule.matchers {
                let (key, names, known): (&str, &Vec<String>, KnownBy) = match matcher {
                    Matcher::User(users) => ("user", users, BasicAuth::has_user),
                    Matcher::Group(groups) => ("group", groups, BasicAuth::has_group),
                    _ => continue,
                };
                let path = at.key("rule").index(i).key(key);
                let Some(auth) = auth else {
                    self.caution(
                        path,
                        format!(
                            "this rule matches by {key}, but listener {listener:?} has no auth: it never matches there \
                             (set auth on the listener)"
                        ),
                    );
                    continue;
                };
                for name in names.iter().filter(|n| !known(auth, n)) {
                    let whose = if key == "user" {
                        format!("in the htpasswd file of [auth.{}]", auth.name)
                    } else {
                        format!("a group of [auth.{}] (its groups table)", auth.name)
                    };
                    self.caution(
                        path.clone(),
                        format!("{key} {name:?} is not {whose}: the rule never matches it"),
                    );
                }
            }
        }
        if acl.default == Action::Allow && !acl.block_private {
            self.caution(
                at.key("default"),
                format!(
                    "an open proxy: listener {listener:?} allows what no rule denies, private and loopback \
                     addresses included (block_private = false); deny by default, or keep block_private on"
                ),
            );
        }
    }

    pub(super) fn forward(
        &mut self,
        l: &ListenerSection,
        name: &str,
        addr: Option<SocketAddr>,
        named: &Named<'_>,
        at: &KeyPath,
    ) -> Option<ListenerMode> {
        let acl = match l.acl.as_deref() {
            None => Arc::new(Acl::builtin()),
            Some(acl) => match named.acls.get(acl) {
                Some(found) => found.clone(),
                None => {
                    self.problem(at.key("acl"), format!("no [acl.{acl}] section"));
                    return None;
                }
            },
        };
        let auth = match l.auth.as_deref() {
            None => None,
            Some(auth) => match named.auths.get(auth) {
                Some(found) => Some(found.clone()),
                None => {
                    self.problem(at.key("auth"), format!("no [auth.{auth}] section"));
                    return None;
                }
            },
        };
        if let Some(acl_name) = l.acl.as_deref() {
            self.acl_cautions(&acl, acl_name, auth.as_deref(), name);
        }
        if l.pac.is_some() && l.pac_direct.is_some() {
            self.problem(
                at.key("pac_direct"),
                "use either pac (a file) or pac_direct (generated), not both",
            );
        }
        let pac = if let Some(file) = &l.pac {
            let (_, text) = self.read_file(at.key("pac"), file)?;
            Some(Arc::new(Pac::File(text)))
        } else if let Some(direct) = &l.pac_direct {
            for (i, d) in direct.iter().enumerate() {
                let bare = d.strip_prefix('.').unwrap_or(d);
                let valid = !bare.is_empty()
                    && bare
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
                if !valid {
                    self.problem(at.key("pac_direct").index(i), format!("invalid domain {d:?}"));
                }
            }
            Some(Arc::new(Pac::Generated {
                direct: direct.clone(),
                fallback: addr.map_or_else(|| "127.0.0.1:3128".to_owned(), |a| a.to_string()),
            }))
        } else {
            None
        };
        let cache = l.cache.as_deref().and_then(|cache| {
            let found = named.caches.iter().position(|c| c.settings().name == cache);
            if found.is_none() {
                self.problem(at.key("cache"), format!("no [cache.{cache}] is configured"));
            }
            found
        });
        let mut policy = self.policy(&[], l.headers.as_ref(), at, super::rules::PolicyScope::Forward);
        // A set or a removal wins over an earlier edit of its field.
        for list in [&mut policy.headers.request, &mut policy.headers.response] {
            *list = ringway_http::rules::HeaderRules::merged(&[], list);
        }
        // The deny page is the 403 error page, with its placeholders.
        let page_403 = policy.error_pages.get(403).map(|(body, _)| body.clone());
        let deny_page = match (&l.deny_page, page_403) {
            (Some(_), Some(_)) => {
                self.problem(
                    at.key("deny_page"),
                    "set either deny_page or headers.error_pages.403: both are the 403 page",
                );
                None
            }
            (Some(file), None) => Some(Arc::from(self.read_file(at.key("deny_page"), file)?.1)),
            (None, page) => page,
        };
        Some(ListenerMode::Forward {
            settings: Arc::new(ForwardSettings {
                listener: name.to_owned(),
                acl,
                auth,
                pac,
                deny_page,
                policy: Arc::new(policy),
                cache,
            }),
        })
    }

    pub(super) fn action(&mut self, at: KeyPath, value: Option<&str>, default: Action) -> Action {
        match value {
            None => default,
            Some("allow") => Action::Allow,
            Some("deny") => Action::Deny,
            Some(other) => {
                self.problem(
                    at,
                    format!("unknown action {other:?}: expected \"allow\" or \"deny\""),
                );
                default
            }
        }
    }

    pub(super) fn nets<'a>(&mut self, items: impl Iterator<Item = (KeyPath, &'a String)>) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for (key, item) in items {
            match item.parse::<IpNet>() {
                Ok(net) => nets.push(net),
                Err(e) => self.problem(key, e),
            }
        }
        nets
    }

    pub(super) fn ports<'a>(&mut self, items: impl Iterator<Item = (KeyPath, &'a PortValue)>) -> PortSet {
        let mut ranges = Vec::new();
        for (key, item) in items {
            let parsed = match item {
                PortValue::Number(n) => match u16::try_from(*n) {
                    Ok(p) if p > 0 => Ok((p, p)),
                    _ => Err(format!("invalid port {n}")),
                },
                PortValue::Text(t) => PortSet::parse_range(t),
            };
            match parsed {
                Ok(range) => ranges.push(range),
                Err(e) => self.problem(key, e),
            }
        }
        PortSet::new(ranges)
    }

    /// Compiles `value`'s patterns into one set with `build`. Each pattern
    /// is first compiled alone, the same way, so that an error names its
    /// item; a set that fails only as a whole (over the size limit) is an
    /// error too. Never a rule that silently lost its matcher.
    pub(super) fn regex_set<S>(
        &mut self,
        at: &KeyPath,
        value: &OneOrMany<String>,
        build: impl Fn(&[String]) -> Result<S, regex::Error>,
    ) -> Option<S> {
        let mut valid = true;
        for (key, item) in value.keyed(at) {
            if let Err(e) = build(std::slice::from_ref(item)) {
                self.problem(key, format!("invalid regular expression: {e}"));
                valid = false;
            }
        }
        if !valid {
            return None;
        }
        match build(value.items()) {
            Ok(set) => Some(set),
            Err(e) => {
                self.problem(
                    at.clone(),
                    format!("the patterns cannot be compiled together: {e}"),
                );
                None
            }
        }
    }

    pub(super) fn domains(&mut self, rat: &KeyPath, r: &RuleSection) -> DomainSet {
        let mut set = DomainSet::new();
        if let Some(domains) = &r.dst_domain {
            for (key, d) in domains.keyed(&rat.key("dst_domain")) {
                if set.insert(d).is_err() {
                    self.problem(key, format!("invalid domain {d:?}"));
                }
            }
        }
        if let Some(files) = &r.dst_domain_file {
            for (key, file) in files.keyed(&rat.key("dst_domain_file")) {
                let path = self.base.join(file);
                if !self.outside {
                    self.problem(key, format!("{}: files are not read here", path.display()));
                    continue;
                }
                let loaded = std::fs::File::open(&path)
                    .and_then(|f| set.extend_from_reader(std::io::BufReader::with_capacity(1 << 16, f)));
                match loaded {
                    Ok(bad) => {
                        if let Some((line, entry)) = bad.first() {
                            let message = format!(
                                "{}:{line}: invalid domain {entry:?} ({} invalid lines in all)",
                                path.display(),
                                bad.len()
                            );
                            self.problem(key, message);
                        }
                    }
                    Err(e) => self.problem(key, format!("cannot read {}: {e}", path.display())),
                }
            }
        }
        set
    }

    pub(super) fn acl(&mut self, name: &str, a: &AclSection, at: &KeyPath) -> Acl {
        let default = self.action(at.key("default"), a.default.as_deref(), Action::Deny);
        let private_allow = self.nets(indexed(&at.key("private_allow"), &a.private_allow));
        let connect_ports = match &a.connect_ports {
            Some(ports) => self.ports(indexed(&at.key("connect_ports"), ports)),
            None => PortSet::new(vec![(443, 443)]),
        };
        let mut rules = Vec::with_capacity(a.rules.len());
        for (i, r) in a.rules.iter().enumerate() {
            let rat = at.key("rule").index(i);
            let Some(action_text) = r.action.as_deref() else {
                self.problem(
                    rat.key("action"),
                    "every rule needs an action: \"allow\" or \"deny\"",
                );
                continue;
            };
            let action = self.action(rat.key("action"), Some(action_text), Action::Deny);
            let mut matchers = Vec::new();
            if let Some(src) = &r.src {
                matchers.push(Matcher::Src(self.nets(src.keyed(&rat.key("src")))));
            }
            if r.dst_domain.is_some() || r.dst_domain_file.is_some() {
                matchers.push(Matcher::DstDomain(Arc::new(self.domains(&rat, r))));
            }
            if let Some(res) = &r.dst_regex {
                if let Some(set) = self.regex_set(&rat.key("dst_regex"), res, |p| regex::RegexSet::new(p)) {
                    matchers.push(Matcher::DstRegex(set));
                }
            }
            if let Some(ips) = &r.dst_ip {
                matchers.push(Matcher::DstIp(self.nets(ips.keyed(&rat.key("dst_ip")))));
            }
            if let Some(ports) = &r.dst_port {
                matchers.push(Matcher::DstPort(self.ports(ports.keyed(&rat.key("dst_port")))));
            }
            if let Some(methods) = &r.method {
                for (key, m) in methods.keyed(&rat.key("method")) {
                    if m.is_empty()
                        || !m
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                    {
                        self.problem(key, format!("invalid method {m:?}"));
                    }
                }
                matchers.push(Matcher::Method(methods.items().to_vec()));
            }
            if let Some(res) = &r.url_regex {
                // Matched against URLs as bytes: a URL need not be UTF-8.
                let build = |p: &[String]| regex::bytes::RegexSet::new(p);
                if let Some(set) = self.regex_set(&rat.key("url_regex"), res, build) {
                    matchers.push(Matcher::UrlRegex(set));
                }
            }
            if let Some(users) = &r.user {
                matchers.push(Matcher::User(users.items().to_vec()));
            }
            for (name, value) in r.header.iter().flatten() {
                let kat = rat.key("header").key(name);
                if !ringway_http::is_token(name) {
                    self.problem(kat, format!("{name:?} is not a header name"));
                    continue;
                }
                match ringway_http::matching::ValueMatch::parse(value) {
                    Ok(value) => matchers.push(Matcher::Header(name.as_str().into(), value)),
                    Err(e) => self.problem(kat, e),
                }
            }
            if let Some(groups) = &r.group {
                matchers.push(Matcher::Group(groups.items().to_vec()));
            }
            if let Some(times) = &r.time {
                let mut windows = Vec::new();
                for (key, t) in times.keyed(&rat.key("time")) {
                    match t.parse::<TimeWindow>() {
                        Ok(w) => windows.push(w),
                        Err(e) => self.problem(key, e),
                    }
                }
                matchers.push(Matcher::Time(windows));
            }
            rules.push(Rule {
                name: r.name.clone(),
                action,
                matchers,
            });
        }
        Acl {
            name: name.to_owned(),
            default,
            block_private: a.block_private.unwrap_or(true),
            private_allow,
            connect_ports,
            rules,
        }
    }

    pub(super) fn auth(&mut self, name: &str, a: &AuthSection, at: &KeyPath) -> Option<BasicAuth> {
        match a.kind.as_deref() {
            Some("basic") => {}
            Some(other) => {
                self.problem(
                    at.key("type"),
                    format!("unknown type {other:?}: only \"basic\" is supported"),
                );
                return None;
            }
            None => {
                self.problem(at.key("type"), "missing type (\"basic\")");
                return None;
            }
        }
        let Some(file) = a.htpasswd.as_deref() else {
            self.problem(at.key("htpasswd"), "missing htpasswd file");
            return None;
        };
        let (path, text) = self.read_file(at.key("htpasswd"), file)?;
        let users = match Htpasswd::parse(&text) {
            Ok(users) => users,
            Err(e) => {
                self.problem(at.key("htpasswd"), format!("{}: {e}", path.display()));
                return None;
            }
        };
        for (group, members) in &a.groups {
            for (i, member) in members.iter().enumerate() {
                if !users.has_user(member) {
                    let message = format!("user {member:?} is not in {}", path.display());
                    self.problem(at.key("groups").key(group).index(i), message);
                }
            }
        }
        let groups: HashMap<String, Vec<String>> = a.groups.clone().into_iter().collect();
        let realm = a.realm.clone().unwrap_or_else(|| "ringway".into());
        let mut auth = BasicAuth::new(name.to_owned(), realm, users, &groups);
        auth.cache_ttl = self.duration(at.key("cache_ttl"), a.cache_ttl.as_ref(), auth.cache_ttl);
        Some(auth)
    }
}
