//! `[[listener]]`: name, address and mode of each listener, a reverse
//! listener's routes, the keys that belong to another mode, and the check
//! that no upstream server is one of ringway's own listeners.

use ringway_http::RouteRules;

use super::{
    rules::{HeadersSection, PolicyScope, RequestRuleSection},
    *,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListenerSection {
    pub(crate) name: Option<String>,
    pub(crate) listen: Option<String>,
    pub(crate) mode: Option<String>,
    pub(crate) forwarded: Option<String>,
    pub(crate) via: Option<bool>,
    #[serde(default, rename = "route")]
    pub(crate) routes: Vec<RouteSection>,
    pub(crate) acl: Option<String>,
    pub(crate) auth: Option<String>,
    pub(crate) forwarded_for: Option<String>,
    pub(crate) pac: Option<String>,
    pub(crate) pac_direct: Option<Vec<String>>,
    pub(crate) deny_page: Option<String>,
    pub(crate) upstream: Option<String>,
    pub(crate) tls: Option<super::tls::ListenerTlsSection>,
    pub(crate) redirect_https: Option<super::tls::RedirectValue>,
    #[serde(default, rename = "rule")]
    pub(crate) rules: Vec<RequestRuleSection>,
    pub(crate) headers: Option<HeadersSection>,
    pub(crate) access_log: Option<super::log::AccessLogValue>,
    pub(crate) proxy_protocol: Option<bool>,
    pub(crate) proxy_protocol_from: Option<Vec<String>>,
    pub(crate) cache: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteSection {
    pub(crate) host: Option<String>,
    pub(crate) path_prefix: Option<String>,
    pub(crate) upstream: Option<String>,
    pub(crate) strip_prefix: Option<bool>,
    pub(crate) upstream_host: Option<String>,
    #[serde(default, rename = "rule")]
    pub(crate) rules: Vec<RequestRuleSection>,
    pub(crate) headers: Option<HeadersSection>,
    pub(crate) cache: Option<String>,
}

/// What a listener does with requests.
#[derive(Debug, Clone)]
pub enum ListenerMode {
    /// A reverse proxy.
    Reverse {
        /// Its routes.
        routes: Arc<RouteTable>,
        /// How many routes (for the summary).
        route_count: usize,
        /// Per route: the index of its cache in [`super::Config::caches`].
        route_caches: Arc<[Option<usize>]>,
    },
    /// A forward proxy.
    Forward {
        /// Its ACL, authentication and PAC settings.
        settings: Arc<ForwardSettings>,
    },
    /// An L4 (TCP) load balancer.
    Tcp {
        /// Index of the upstream group connections go to.
        upstream: usize,
    },
}

/// A validated listener.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Name and address.
    pub spec: ListenerSpec,
    /// Reverse or forward, with its routing.
    pub mode: ListenerMode,
    /// Limits, timeouts and proxy headers of its engine.
    pub settings: EngineSettings,
    /// TLS termination, on an HTTPS listener.
    pub tls: Option<ringway_tls::Acceptor>,
    /// Its access log, if it keeps one.
    pub access_log: Option<super::log::AccessLogSpec>,
    /// The sources whose connections start with a PROXY protocol header
    /// (`proxy_protocol = true`); `None`: no header is read.
    pub proxy_protocol: Option<Arc<[IpNet]>>,
}

impl Validator {
    /// An upstream server that is one of ringway's own listeners would send
    /// every request back to the proxy, without end.
    pub(super) fn no_upstream_is_a_listener(&mut self, listeners: &[Listener]) {
        let bound: Vec<SocketAddr> = listeners
            .iter()
            .map(|l| l.spec.addr)
            .filter(|a| a.port() != 0)
            .collect();
        let own = OwnAddresses::new(&bound);
        let found: Vec<_> = self
            .servers
            .iter()
            .filter(|(_, addr)| own.contains(*addr))
            .cloned()
            .collect();
        for (at, addr) in found {
            let listener = listeners
                .iter()
                .find(|l| OwnAddresses::new(&[l.spec.addr]).contains(addr))
                .map_or("a listener", |l| l.spec.name.as_str());
            self.problem(
                at,
                format!(
                    "{addr} is ringway's own listener {listener:?}: requests would loop back to the proxy"
                ),
            );
        }
    }

    pub(super) fn listeners(
        &mut self,
        sections: &[ListenerSection],
        named: &Named<'_>,
        (settings, access_log): (&EngineSettings, Option<&super::log::AccessLogSpec>),
        path: &KeyPath,
    ) -> Vec<Listener> {
        let upstreams = named.upstreams;
        if sections.is_empty() {
            self.problem(
                KeyPath::root().key("listener"),
                "at least one [[listener]] is needed",
            );
        }
        let by_name: HashMap<&str, usize> = upstreams
            .iter()
            .enumerate()
            .map(|(i, g)| (g.name.as_str(), i))
            .collect();
        let mut listeners: Vec<Listener> = Vec::new();
        for (i, l) in sections.iter().enumerate() {
            let at = path.index(i);
            let name = l.name.clone().unwrap_or_else(|| format!("listener{i}"));
            if listeners.iter().any(|other| other.spec.name == name) {
                self.problem(at.key("name"), format!("listener name {name:?} is used twice"));
            }
            let addr = match l.listen.as_deref() {
                None => {
                    self.problem(at.key("listen"), "every listener needs a listen address");
                    None
                }
                Some(text) => match text.parse::<SocketAddr>() {
                    Ok(addr) => Some(addr),
                    Err(_) => {
                        self.problem(
                            at.key("listen"),
                            format!("invalid address {text:?}: expected IP:PORT, like \"127.0.0.1:8080\" or \"[::1]:8080\""),
                        );
                        None
                    }
                },
            };
            if let Some(addr) = addr {
                if listeners
                    .iter()
                    .any(|other| other.spec.addr == addr && addr.port() != 0)
                {
                    self.problem(at.key("listen"), format!("{addr} is used by two listeners"));
                }
            }
            let mut settings = settings.clone();
            if let Some(via) = l.via {
                settings.proxy_headers.via = via.then(|| self.via_name.clone());
            }
            let mode_name = l.mode.as_deref().unwrap_or("reverse");
            if l.mode.is_none() {
                self.caution(
                    at.clone(),
                    "no mode: this listener is a reverse proxy; say so with mode = \"reverse\" (or \"forward\", \"tcp\")",
                );
            }
            self.check_mode_keys(l, mode_name, &at);
            let tls = match &l.tls {
                None => None,
                Some(_) if mode_name == "tcp" => {
                    self.problem(
                        at.key("tls"),
                        "a tcp listener passes bytes through: TLS applies to reverse and forward listeners",
                    );
                    None
                }
                Some(section) => {
                    let acceptor = self.listener_tls(section, &at.key("tls"));
                    settings.scheme = "https";
                    acceptor
                }
            };
            match &l.redirect_https {
                None | Some(super::tls::RedirectValue::On(false)) => {}
                Some(_) if l.tls.is_some() || mode_name != "reverse" => self.problem(
                    at.key("redirect_https"),
                    "redirect_https applies to plain reverse listeners (it sends their clients to HTTPS)",
                ),
                Some(super::tls::RedirectValue::On(true)) => settings.redirect_https = Some(443),
                Some(super::tls::RedirectValue::Port(port)) => match u16::try_from(*port) {
                    Ok(port) if port > 0 => settings.redirect_https = Some(port),
                    _ => self.problem(at.key("redirect_https"), format!("{port} is not a port")),
                },
            }
            let mode = match mode_name {
                // `[http] forwarded` and a listener's `forwarded` shape what a
                // reverse proxy tells its servers; a forward proxy follows
                // Squid's `forwarded_for` instead.
                "reverse" => {
                    settings.proxy_headers.forwarded = self.forwarded(
                        at.key("forwarded"),
                        l.forwarded.as_ref(),
                        settings.proxy_headers.forwarded,
                    );
                    self.reverse_routes(l, (&by_name, named.caches), &at)
                }
                "forward" => {
                    settings.proxy_headers.forwarded = match l.forwarded_for.as_deref() {
                        None | Some("append") => ForwardedStyle::AppendFor,
                        Some("truncate") => ForwardedStyle::TruncateFor,
                        Some("delete") => ForwardedStyle::DeleteFor,
                        Some(other) => {
                            self.problem(
                                at.key("forwarded_for"),
                                format!("unknown value {other:?}: expected \"append\", \"truncate\" or \"delete\""),
                            );
                            ForwardedStyle::AppendFor
                        }
                    };
                    self.forward(l, &name, addr, named, &at)
                }
                "tcp" => match l.upstream.as_deref() {
                    None => {
                        self.problem(at.key("upstream"), "a tcp listener needs an upstream");
                        None
                    }
                    Some(upstream) => match by_name.get(upstream) {
                        Some(&index) => Some(ListenerMode::Tcp { upstream: index }),
                        None => {
                            self.problem(
                                at.key("upstream"),
                                format!("no [[upstream]] is named {upstream:?}"),
                            );
                            None
                        }
                    },
                },
                other => {
                    self.problem(
                        at.key("mode"),
                        format!("unknown mode {other:?}: expected \"reverse\", \"forward\" or \"tcp\""),
                    );
                    None
                }
            };
            let access_log = self.access_log(l.access_log.as_ref(), access_log, &at.key("access_log"));
            let proxy_protocol = self.proxy_protocol(l, &at);
            if let (Some(addr), Some(mode)) = (addr, mode) {
                listeners.push(Listener {
                    spec: ListenerSpec::new(name, addr),
                    mode,
                    settings,
                    tls,
                    access_log,
                    proxy_protocol,
                });
            }
        }
        listeners
    }

    /// `proxy_protocol = true` with `proxy_protocol_from`: the balancers
    /// whose connections carry a PROXY header (v1 or v2). Required: a
    /// header from anyone else would let a client choose its own address
    /// for ACLs, rate limits and logs.
    fn proxy_protocol(&mut self, l: &ListenerSection, at: &KeyPath) -> Option<Arc<[IpNet]>> {
        match (l.proxy_protocol, &l.proxy_protocol_from) {
            (None | Some(false), None) => None,
            (None | Some(false), Some(_)) => {
                self.problem(
                    at.key("proxy_protocol_from"),
                    "proxy_protocol_from applies with proxy_protocol = true",
                );
                None
            }
            (Some(true), None) => {
                self.problem(
                    at.key("proxy_protocol_from"),
                    "proxy_protocol = true needs the balancers allowed to send the header, \
                     such as proxy_protocol_from = [\"10.0.0.0/8\"]: from anyone, a client could \
                     claim any address",
                );
                None
            }
            (Some(true), Some(from)) => {
                let key = at.key("proxy_protocol_from");
                let nets = self.nets(from.iter().enumerate().map(|(i, text)| (key.index(i), text)));
                if from.is_empty() {
                    self.problem(
                        key,
                        "an empty list: name the balancers allowed to send the header",
                    );
                    return None;
                }
                Some(nets.into())
            }
        }
    }

    /// Keys that belong to the other mode are errors, not silently ignored.
    fn check_mode_keys(&mut self, l: &ListenerSection, mode: &str, at: &KeyPath) {
        let forward_keys = [
            ("acl", l.acl.is_some()),
            ("auth", l.auth.is_some()),
            ("forwarded_for", l.forwarded_for.is_some()),
            ("pac", l.pac.is_some()),
            ("pac_direct", l.pac_direct.is_some()),
            ("deny_page", l.deny_page.is_some()),
            ("cache", l.cache.is_some()),
        ];
        let reverse_keys = [
            ("route", !l.routes.is_empty()),
            ("forwarded", l.forwarded.is_some()),
            ("rule", !l.rules.is_empty() && mode != "forward"),
        ];
        let tcp_keys = [("upstream", l.upstream.is_some())];
        if mode == "forward" && !l.rules.is_empty() {
            self.problem(
                at.key("rule"),
                "a forward listener's rules are its acl; [listener.headers] edits its requests and responses",
            );
        }
        if mode == "tcp" && l.headers.is_some() {
            self.problem(
                at.key("headers"),
                "a tcp listener passes bytes through: headers apply to reverse and forward listeners",
            );
        }
        let wrong: &[(&[(&str, bool)], &str)] = match mode {
            "reverse" => &[(&forward_keys, "forward"), (&tcp_keys, "tcp")],
            "forward" => &[(&reverse_keys, "reverse"), (&tcp_keys, "tcp")],
            "tcp" => &[(&forward_keys, "forward"), (&reverse_keys, "reverse")],
            _ => return,
        };
        for (keys, other) in wrong {
            for (key, present) in keys.iter() {
                if *present {
                    self.problem(at.key(key), format!("{key} applies to {other} listeners only"));
                }
            }
        }
    }

    fn reverse_routes(
        &mut self,
        l: &ListenerSection,
        (upstreams, caches): (&HashMap<&str, usize>, &[Arc<ringway_http::cache::Store>]),
        at: &KeyPath,
    ) -> Option<ListenerMode> {
        let redirects = matches!(
            l.redirect_https,
            Some(super::tls::RedirectValue::On(true) | super::tls::RedirectValue::Port(_))
        );
        if l.routes.is_empty() && !redirects {
            self.problem(
                at.key("route"),
                "a reverse listener needs at least one [[listener.route]] (or redirect_https, which answers every request)",
            );
            return None;
        }
        let mut specs = Vec::new();
        let mut spec_keys = Vec::new();
        let mut route_rules = Vec::new();
        let mut route_caches = Vec::new();
        for (j, r) in l.routes.iter().enumerate() {
            let rat = at.key("route").index(j);
            let Some(upstream) = r.upstream.as_deref() else {
                self.problem(rat.key("upstream"), "every route needs an upstream");
                continue;
            };
            let Some(&index) = upstreams.get(upstream) else {
                self.problem(
                    rat.key("upstream"),
                    format!("no [[upstream]] is named {upstream:?}"),
                );
                continue;
            };
            let spec = RouteSpec {
                host: r.host.clone(),
                path_prefix: r.path_prefix.clone().unwrap_or_else(|| "/".to_owned()),
                upstream: index,
            };
            // Each route alone first, so that every malformed one is reported.
            if let Err(e) = RouteTable::new(std::slice::from_ref(&spec)) {
                self.problem(rat.key(e.field.key()), e.message);
                continue;
            }
            let upstream_host = match &r.upstream_host {
                Some(host) if !valid_host_value(host) => {
                    self.problem(
                        rat.key("upstream_host"),
                        format!("{host:?} is not a host name (with an optional port)"),
                    );
                    None
                }
                other => other.as_deref().map(Into::into),
            };
            let sets_host = |h: Option<&super::rules::HeadersSection>| {
                h.is_some_and(|h| {
                    [&h.request_set, &h.request_append]
                        .into_iter()
                        .flatten()
                        .any(|m| m.keys().any(|k| k.eq_ignore_ascii_case("host")))
                })
            };
            if upstream_host.is_some() && (sets_host(r.headers.as_ref()) || sets_host(l.headers.as_ref())) {
                self.problem(
                    rat.key("upstream_host"),
                    "set the Host either with upstream_host or with request_set, not both",
                );
            }
            route_rules.push(RouteRules {
                policy: self.policy(&r.rules, r.headers.as_ref(), &rat, PolicyScope::Reverse),
                strip_prefix: r.strip_prefix.unwrap_or(false),
                upstream_host,
            });
            let cache = r.cache.as_deref().and_then(|name| {
                let found = caches.iter().position(|c| c.settings().name == name);
                if found.is_none() {
                    self.problem(rat.key("cache"), format!("no [cache.{name}] is configured"));
                }
                found
            });
            route_caches.push(cache);
            specs.push(spec);
            spec_keys.push(rat);
        }
        let listener_policy = self.policy(&l.rules, l.headers.as_ref(), at, PolicyScope::Reverse);
        match RouteTable::new(&specs) {
            Ok(table) => Some(ListenerMode::Reverse {
                routes: Arc::new(table.with_rules(listener_policy, route_rules)),
                route_count: specs.len(),
                route_caches: route_caches.into(),
            }),
            Err(e) => {
                let key = spec_keys
                    .get(e.route)
                    .map_or_else(|| at.key("route"), |k| k.key(e.field.key()));
                self.problem(key, e.message);
                None
            }
        }
    }
}

/// The named sections listeners refer to.
pub(super) struct Named<'a> {
    pub(super) upstreams: &'a [Arc<UpstreamGroup>],
    pub(super) acls: &'a BTreeMap<String, Arc<Acl>>,
    pub(super) auths: &'a BTreeMap<String, Arc<BasicAuth>>,
    pub(super) caches: &'a [Arc<ringway_http::cache::Store>],
}

/// Whether `host` can be sent as a Host value: a name or an address, with
/// an optional port.
fn valid_host_value(host: &str) -> bool {
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']'))
}
