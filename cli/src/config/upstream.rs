//! `[[upstream]]`: a group of servers, how requests are spread over them,
//! their active and passive health, retries on other servers, timeouts and
//! sticky sessions.
//!
//! A server given by host name is looked up when the file is loaded, with
//! the resolver `[dns]` describes (static hosts, `/etc/hosts`, then its
//! servers), and followed on its DNS TTL while ringway runs; a name that
//! does not resolve at load is an error, as in nginx.
//!
//! ```toml
//! [[upstream]]
//! name = "app"
//! servers = ["127.0.0.1:9001", { addr = "127.0.0.1:9002", weight = 3, max_connections = 100 },
//!            { addr = "127.0.0.1:9003", backup = true }]
//! balance = "weighted_round_robin"   # round_robin | random | least_conn | p2c_ewma | consistent_hash
//! health = { path = "/healthz", interval = "2s", timeout = "1s", healthy = 2, unhealthy = 3, expect_status = "200-399" }
//! passive = { failures = 3, backoff = "10s", max_backoff = "5m", on_5xx = false }
//! retries = 2
//! retry_on = ["connect", "timeout", "reset", "502", "503"]
//! sticky = { cookie = "rw_srv", ttl = "1h" }
//! ```

use std::{net::SocketAddr, sync::Arc, time::Duration};

use ringway_balancer::{
    Algorithm, HashKey, PassiveHealth, RetryOn, RetryPolicy, ServerSpec, Sticky, UpstreamGroup, MAX_ATTEMPTS,
    MAX_SERVERS,
};
use ringway_http::{is_token, HealthCheck, Probe};
use serde::Deserialize;

use ringway_core::dns::{is_valid_dns_name, resolve_blocking, DnsConfig};

use super::Validator;
use crate::locate::KeyPath;

/// `[[upstream]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UpstreamSection {
    pub(crate) name: Option<String>,
    #[serde(default)]
    pub(crate) servers: Vec<ServerValue>,
    pub(crate) balance: Option<String>,
    pub(crate) hash_key: Option<String>,
    pub(crate) balance_factor: Option<f64>,
    pub(crate) health: Option<HealthSection>,
    pub(crate) passive: Option<PassiveSection>,
    pub(crate) retries: Option<u32>,
    pub(crate) retry_on: Option<Vec<String>>,
    pub(crate) retry_budget: Option<f64>,
    pub(crate) retry_budget_min: Option<u32>,
    pub(crate) total_timeout: Option<String>,
    pub(crate) connect_timeout: Option<String>,
    pub(crate) response_timeout: Option<String>,
    pub(crate) keepalive: Option<usize>,
    pub(crate) keepalive_timeout: Option<String>,
    pub(crate) fail_open: Option<bool>,
    pub(crate) sticky: Option<StickySection>,
    pub(crate) tls: Option<super::tls::UpstreamTlsValue>,
    pub(crate) proxy_protocol: Option<bool>,
}

/// A server: `"IP:PORT"` (or `"host:port"`), or a table.
#[derive(Debug, Clone, Deserialize)]
#[serde(
    untagged,
    expecting = "a server address such as \"10.0.0.1:80\", or a table { addr, weight, max_connections, backup }"
)]
pub(crate) enum ServerValue {
    Addr(String),
    Table(ServerTable),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServerTable {
    pub(crate) addr: String,
    pub(crate) weight: Option<u32>,
    pub(crate) max_connections: Option<u32>,
    pub(crate) backup: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HealthSection {
    pub(crate) path: Option<String>,
    pub(crate) tcp: Option<bool>,
    pub(crate) host: Option<String>,
    pub(crate) interval: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) healthy: Option<u32>,
    pub(crate) unhealthy: Option<u32>,
    pub(crate) expect_status: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PassiveSection {
    pub(crate) failures: Option<u32>,
    pub(crate) backoff: Option<String>,
    pub(crate) max_backoff: Option<String>,
    pub(crate) on_5xx: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StickySection {
    pub(crate) cookie: Option<String>,
    pub(crate) ttl: Option<String>,
    pub(crate) secret: Option<String>,
}

/// The validated groups, and the active checks of those that have one.
pub(crate) struct Upstreams {
    pub(crate) groups: Vec<Arc<UpstreamGroup>>,
    pub(crate) checks: Vec<(usize, HealthCheck)>,
    /// Each group's TLS connector, when its servers speak TLS.
    pub(crate) tls: Vec<Option<ringway_tls::Connector>>,
}

impl Validator {
    pub(super) fn upstreams(
        &mut self,
        sections: &[UpstreamSection],
        dns: &Arc<DnsConfig>,
        path: &KeyPath,
    ) -> Upstreams {
        let mut groups: Vec<Arc<UpstreamGroup>> = Vec::new();
        let mut checks = Vec::new();
        let mut tls = Vec::new();
        for (i, up) in sections.iter().enumerate() {
            let at = path.index(i);
            let Some(name) = up.name.clone() else {
                self.problem(at.key("name"), "every upstream needs a name");
                continue;
            };
            if groups.iter().any(|g| g.name == name) {
                self.problem(at.key("name"), format!("upstream {name:?} is defined twice"));
                continue;
            }
            if up.servers.is_empty() {
                self.problem(at.key("servers"), "an upstream needs at least one server");
            }
            let servers = self.servers(&up.servers, dns, &at.key("servers"));
            if servers.len() > MAX_SERVERS {
                self.problem(
                    at.key("servers"),
                    format!("an upstream has at most {MAX_SERVERS} servers"),
                );
            }
            let algorithm = self.algorithm(up, &at);
            let mut group = UpstreamGroup::new(name.clone(), servers, algorithm);
            group.passive = self.passive(up.passive.as_ref(), &at.key("passive"));
            group.retry = self.retry(up, &at);
            group.fail_open = up.fail_open.unwrap_or(true);
            group.connect_timeout =
                self.optional_duration(at.key("connect_timeout"), up.connect_timeout.as_ref());
            group.response_timeout =
                self.optional_duration(at.key("response_timeout"), up.response_timeout.as_ref());
            group.keepalive = up.keepalive;
            group.proxy_protocol = up.proxy_protocol.unwrap_or(false);
            if group.proxy_protocol {
                if up.tls.is_some() {
                    self.problem(
                        at.key("proxy_protocol"),
                        "proxy_protocol with tls is not supported yet: the header would have to go before the handshake",
                    );
                }
                if up.keepalive.is_some_and(|k| k > 0) {
                    self.problem(
                        at.key("keepalive"),
                        "with proxy_protocol each connection carries one client, so none is kept idle for another: remove keepalive",
                    );
                }
                // One client per connection: none is pooled.
                group.keepalive = Some(0);
            }
            group.keepalive_timeout =
                self.optional_duration(at.key("keepalive_timeout"), up.keepalive_timeout.as_ref());
            if let Some(sticky) = &up.sticky {
                group.sticky = self.sticky(sticky, &name, &group.servers, &at.key("sticky"));
            }
            let connector = up
                .tls
                .as_ref()
                .and_then(|t| self.upstream_tls(t, &name, &at.key("tls")));
            if let Some(health) = &up.health {
                if let Some(mut check) = self.health(health, &at.key("health")) {
                    // An HTTP check of a TLS upstream speaks TLS as its requests do.
                    check.tls = connector.clone();
                    checks.push((groups.len(), check));
                }
            }
            groups.push(Arc::new(group));
            tls.push(connector);
        }
        Upstreams { groups, checks, tls }
    }

    fn servers(&mut self, values: &[ServerValue], dns: &Arc<DnsConfig>, at: &KeyPath) -> Vec<ServerSpec> {
        let mut servers = Vec::new();
        for (j, value) in values.iter().enumerate() {
            let key = at.index(j);
            let (text, table) = match value {
                ServerValue::Addr(text) => (text, None),
                ServerValue::Table(table) => (&table.addr, Some(table)),
            };
            let mut spec = match self.server_addr(text, dns) {
                Ok(spec) => spec,
                Err(e) => {
                    let key = if table.is_some() { key.key("addr") } else { key };
                    self.problem(key, e);
                    continue;
                }
            };
            if servers
                .iter()
                .any(|s: &ServerSpec| s.identity() == spec.identity())
            {
                self.problem(key.clone(), format!("server {} is listed twice", spec.identity()));
            }
            let addr = spec.addr;
            self.servers.push((key.clone(), addr));
            if let Some(table) = table {
                match table.weight {
                    Some(0) => self.problem(key.key("weight"), "must be at least 1"),
                    Some(w) if w > 1000 => self.problem(key.key("weight"), "must be at most 1000"),
                    Some(w) => spec.weight = w,
                    None => {}
                }
                match table.max_connections {
                    Some(0) => self.problem(key.key("max_connections"), "must be at least 1"),
                    limit => spec.max_connections = limit,
                }
                spec.backup = table.backup.unwrap_or(false);
            }
            servers.push(spec);
        }
        if !servers.is_empty() && servers.iter().all(|s| s.backup) {
            self.problem(
                at.clone(),
                "every server is a backup: at least one must be a primary",
            );
        }
        servers
    }

    /// A server's address: `IP:PORT`, or `HOST:PORT` looked up now.
    fn server_addr(&self, text: &str, dns: &Arc<DnsConfig>) -> Result<ServerSpec, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(ServerSpec::new(addr));
        }
        let expected = || format!("invalid server {text:?}: expected IP:PORT or HOST:PORT");
        let (host, port) = text.rsplit_once(':').ok_or_else(expected)?;
        let port: u16 = port.parse().map_err(|_| expected())?;
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        // A host name as DNS carries it, of letters, digits and hyphens.
        let valid = is_valid_dns_name(&host)
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
        if !valid {
            return Err(expected());
        }
        if !self.outside {
            return Err(format!("{text:?}: names are not looked up here"));
        }
        let ips = resolve_blocking(Arc::clone(dns), &host)
            .map_err(|e| format!("server {text:?} could not be looked up: {e}"))?;
        let ip = ips
            .first()
            .ok_or_else(|| format!("server {text:?} resolves to no address"))?;
        Ok(ServerSpec::named(&host, SocketAddr::new(*ip, port)))
    }

    fn algorithm(&mut self, up: &UpstreamSection, at: &KeyPath) -> Algorithm {
        let balance = up.balance.as_deref().unwrap_or("round_robin");
        let weighted = up
            .servers
            .iter()
            .any(|s| matches!(s, ServerValue::Table(t) if t.weight.is_some_and(|w| w != 1)));
        let algorithm = match balance {
            // Weights given to plain round robin are honoured, interleaved.
            "round_robin" if weighted => Algorithm::WeightedRoundRobin,
            "round_robin" => Algorithm::RoundRobin,
            "weighted_round_robin" => Algorithm::WeightedRoundRobin,
            "random" => Algorithm::Random,
            "least_conn" => Algorithm::LeastConn,
            "p2c_ewma" => Algorithm::P2cEwma,
            "consistent_hash" => {
                let key = match up.hash_key.as_deref() {
                    None => {
                        self.problem(at.key("hash_key"), "consistent_hash needs a hash_key: client_ip, header:NAME, cookie:NAME, path or uri");
                        HashKey::ClientIp
                    }
                    Some(text) => self.hash_key(text, &at.key("hash_key")),
                };
                let balance_factor = match up.balance_factor {
                    None => 0.25,
                    Some(e) if e.is_finite() && e > 0.0 && e <= 100.0 => e,
                    Some(_) => {
                        self.problem(at.key("balance_factor"), "must be above 0 and at most 100");
                        0.25
                    }
                };
                Algorithm::ConsistentHash { key, balance_factor }
            }
            other => {
                self.problem(
                    at.key("balance"),
                    format!("unknown balance {other:?}: expected round_robin, weighted_round_robin, random, least_conn, p2c_ewma or consistent_hash"),
                );
                Algorithm::RoundRobin
            }
        };
        if !matches!(algorithm, Algorithm::ConsistentHash { .. }) {
            if up.hash_key.is_some() {
                self.problem(
                    at.key("hash_key"),
                    "hash_key applies only to balance = \"consistent_hash\"",
                );
            }
            if up.balance_factor.is_some() {
                self.problem(
                    at.key("balance_factor"),
                    "balance_factor applies only to balance = \"consistent_hash\"",
                );
            }
        }
        algorithm
    }

    fn hash_key(&mut self, text: &str, at: &KeyPath) -> HashKey {
        match text.split_once(':') {
            None if text == "client_ip" => HashKey::ClientIp,
            None if text == "path" => HashKey::Path,
            None if text == "uri" => HashKey::Uri,
            Some(("header", name)) if is_token(name) => HashKey::Header(name.to_owned()),
            Some(("cookie", name)) if is_token(name) => HashKey::Cookie(name.to_owned()),
            _ => {
                self.problem(at.clone(), format!("unknown hash_key {text:?}: expected client_ip, header:NAME, cookie:NAME, path or uri"));
                HashKey::ClientIp
            }
        }
    }

    fn optional_duration(&mut self, at: KeyPath, value: Option<&String>) -> Option<Duration> {
        value.map(|text| self.duration(at, Some(text), Duration::from_secs(1)))
    }

    fn passive(&mut self, section: Option<&PassiveSection>, at: &KeyPath) -> PassiveHealth {
        let default = PassiveHealth::default();
        let Some(p) = section else { return default };
        let backoff = self.duration(at.key("backoff"), p.backoff.as_ref(), default.backoff);
        let max_backoff = self.duration(
            at.key("max_backoff"),
            p.max_backoff.as_ref(),
            default.max_backoff.max(backoff),
        );
        if max_backoff < backoff {
            self.problem(at.key("max_backoff"), "must be at least the backoff");
        }
        PassiveHealth {
            failures: p.failures.unwrap_or(default.failures),
            backoff,
            max_backoff,
            on_5xx: p.on_5xx.unwrap_or(false),
        }
    }

    fn retry(&mut self, up: &UpstreamSection, at: &KeyPath) -> RetryPolicy {
        let mut policy = RetryPolicy::default();
        if let Some(retries) = up.retries {
            if retries as usize >= MAX_ATTEMPTS {
                self.problem(at.key("retries"), format!("must be at most {}", MAX_ATTEMPTS - 1));
            } else {
                policy.retries = retries;
            }
        }
        if let Some(list) = &up.retry_on {
            let mut on = RetryOn {
                connect: false,
                timeout: false,
                reset: false,
                status_502: false,
                status_503: false,
                status_504: false,
            };
            for (k, item) in list.iter().enumerate() {
                match item.as_str() {
                    "connect" => on.connect = true,
                    "timeout" => on.timeout = true,
                    "reset" => on.reset = true,
                    "502" => on.status_502 = true,
                    "503" => on.status_503 = true,
                    "504" => on.status_504 = true,
                    other => self.problem(
                        at.key("retry_on").index(k),
                        format!("unknown retry condition {other:?}: expected connect, timeout, reset, 502, 503 or 504"),
                    ),
                }
            }
            policy.on = on;
        }
        if let Some(ratio) = up.retry_budget {
            if !(0.0..=1.0).contains(&ratio) || !ratio.is_finite() {
                self.problem(at.key("retry_budget"), "must be a fraction from 0 to 1");
            } else {
                policy.budget_ratio = ratio;
            }
        }
        if let Some(min) = up.retry_budget_min {
            policy.budget_min_per_second = min;
        }
        policy.total_timeout = self.optional_duration(at.key("total_timeout"), up.total_timeout.as_ref());
        policy
    }

    fn sticky(
        &mut self,
        s: &StickySection,
        group: &str,
        servers: &[ServerSpec],
        at: &KeyPath,
    ) -> Option<Sticky> {
        let cookie = s.cookie.clone().unwrap_or_else(|| "rw_srv".to_owned());
        if !is_token(&cookie) {
            self.problem(at.key("cookie"), format!("{cookie:?} is not a valid cookie name"));
            return None;
        }
        let ttl = self.optional_duration(at.key("ttl"), s.ttl.as_ref());
        let secret = s.secret.as_deref().unwrap_or(group);
        Some(Sticky::new(cookie, ttl, secret, servers))
    }

    fn health(&mut self, h: &HealthSection, at: &KeyPath) -> Option<HealthCheck> {
        let tcp = h.tcp.unwrap_or(false);
        let probe = match (&h.path, tcp) {
            (Some(_), true) => {
                self.problem(at.key("tcp"), "a check is tcp or has a path, not both");
                return None;
            }
            (None, true) => {
                if h.expect_status.is_some() || h.host.is_some() {
                    self.problem(at.key("expect_status"), "a tcp check has no status nor host");
                }
                Probe::Tcp
            }
            (None, false) => {
                self.problem(
                    at.key("path"),
                    "a check needs a path (\"/healthz\") or tcp = true",
                );
                return None;
            }
            (Some(path), false) => {
                if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    self.problem(
                        at.key("path"),
                        format!("{path:?} must start with '/' and hold no spaces or controls"),
                    );
                }
                if let Some(host) = &h.host {
                    if host.is_empty() || host.bytes().any(|b| b <= b' ' || b == 0x7f) {
                        self.problem(at.key("host"), format!("{host:?} is not a host"));
                    }
                }
                let expect = match h.expect_status.as_deref() {
                    None => 200..=399,
                    Some(text) => match parse_status_range(text) {
                        Ok(range) => range,
                        Err(e) => {
                            self.problem(at.key("expect_status"), e);
                            200..=399
                        }
                    },
                };
                Probe::Http {
                    path: path.clone(),
                    host: h.host.clone(),
                    expect,
                }
            }
        };
        let interval = self.duration(at.key("interval"), h.interval.as_ref(), Duration::from_secs(2));
        let timeout = self.duration(at.key("timeout"), h.timeout.as_ref(), Duration::from_secs(1));
        let count = |v: &mut Self, key: &str, value: Option<u32>, default: u32| match value {
            Some(0) => {
                v.problem(at.key(key), "must be at least 1");
                default
            }
            Some(n) => n,
            None => default,
        };
        let healthy = count(self, "healthy", h.healthy, 2);
        let unhealthy = count(self, "unhealthy", h.unhealthy, 3);
        Some(HealthCheck {
            probe,
            interval,
            timeout,
            healthy,
            unhealthy,
            tls: None,
        })
    }
}

/// `"200"`, or `"200-399"`.
fn parse_status_range(text: &str) -> Result<std::ops::RangeInclusive<u16>, String> {
    let status = |s: &str| {
        s.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| (100..=599).contains(n))
            .ok_or_else(|| format!("invalid status {s:?} in {text:?}: expected 100-599"))
    };
    let (low, high) = match text.split_once('-') {
        Some((a, b)) => (status(a)?, status(b)?),
        None => {
            let n = status(text)?;
            (n, n)
        }
    };
    if low > high {
        return Err(format!("{text:?}: the range is empty"));
    }
    Ok(low..=high)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use ringway_balancer::{Algorithm, HashKey};
    use ringway_http::Probe;

    use crate::config::parse;

    fn source(upstream: &str) -> String {
        format!(
            "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\n\
             [[listener.route]]\nupstream = \"app\"\n\n[[upstream]]\nname = \"app\"\n{upstream}\n"
        )
    }

    fn errors(upstream: &str) -> Vec<String> {
        match parse(Path::new("t.toml"), &source(upstream)) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn servers_given_by_name_resolve_with_the_dns_section() {
        let text = format!(
            "{}\n[dns]\nsystem_hosts = false\nhosts = {{ \"app.test\" = \"127.0.0.5\" }}\n",
            source(r#"servers = ["App.Test.:8080", "127.0.0.6:8080"]"#)
        );
        let config = parse(Path::new("t.toml"), &text).expect("valid");
        let g = &config.upstreams[0];
        assert_eq!(g.servers[0].addr, "127.0.0.5:8080".parse().expect("address"));
        assert_eq!(g.servers[0].host.as_deref(), Some("app.test"));
        assert_eq!(g.servers[0].identity(), "app.test:8080");
        assert_eq!(g.servers[1].host, None);
    }

    #[test]
    fn a_server_name_that_does_not_resolve_names_its_key() {
        // No static answer, and a DNS server that refuses at once (nothing
        // listens on UDP port 1 of loopback).
        let text = format!(
            "{}\n[dns]\nsystem_hosts = false\nservers = [\"127.0.0.1:1\"]\ntimeout = \"500ms\"\n",
            source(r#"servers = ["nowhere.test:80", "bad name:80", "app.test"]"#)
        );
        let errors = match parse(Path::new("t.toml"), &text) {
            Ok(_) => panic!("accepted"),
            Err(e) => e.0.iter().map(ToString::to_string).collect::<Vec<_>>(),
        };
        let at = |prefix: &str| errors.iter().any(|e| e.starts_with(prefix));
        assert!(
            at("t.toml:11: upstream[0].servers[0]: server \"nowhere.test:80\" could not be looked up"),
            "{errors:?}"
        );
        assert!(
            at("t.toml:11: upstream[0].servers[1]: invalid server \"bad name:80\""),
            "{errors:?}"
        );
        assert!(
            at("t.toml:11: upstream[0].servers[2]: invalid server \"app.test\""),
            "{errors:?}"
        );
    }

    #[test]
    fn every_key_of_an_upstream_is_read() {
        let text = source(
            r#"servers = ["127.0.0.1:9000", { addr = "127.0.0.1:9001", weight = 3, max_connections = 7 },
           { addr = "127.0.0.1:9002", backup = true }]
balance = "consistent_hash"
hash_key = "cookie:session"
balance_factor = 0.5
health = { path = "/up", interval = "3s", timeout = "500ms", healthy = 4, unhealthy = 5, expect_status = "200-204" }
passive = { failures = 2, backoff = "5s", max_backoff = "1m", on_5xx = true }
retries = 3
retry_on = ["connect", "503"]
retry_budget = 0.1
retry_budget_min = 2
total_timeout = "9s"
connect_timeout = "2s"
response_timeout = "20s"
keepalive = 16
keepalive_timeout = "30s"
fail_open = false
sticky = { cookie = "pin", ttl = "1h", secret = "s3" }"#,
        );
        let c = parse(Path::new("t.toml"), &text).unwrap();
        let g = &c.upstreams[0];
        assert_eq!(g.servers[1].weight, 3);
        assert_eq!(g.servers[1].max_connections, Some(7));
        assert!(g.servers[2].backup && !g.servers[0].backup);
        assert_eq!(
            g.algorithm,
            Algorithm::ConsistentHash {
                key: HashKey::Cookie("session".into()),
                balance_factor: 0.5
            }
        );
        assert_eq!((g.passive.failures, g.passive.on_5xx), (2, true));
        assert_eq!(g.passive.backoff.as_secs(), 5);
        assert_eq!(g.retry.retries, 3);
        assert!(g.retry.on.connect && g.retry.on.status_503 && !g.retry.on.reset);
        assert_eq!((g.retry.budget_ratio, g.retry.budget_min_per_second), (0.1, 2));
        assert_eq!(g.retry.total_timeout.map(|d| d.as_secs()), Some(9));
        assert_eq!(g.connect_timeout.map(|d| d.as_secs()), Some(2));
        assert_eq!(g.response_timeout.map(|d| d.as_secs()), Some(20));
        assert_eq!(g.keepalive, Some(16));
        assert_eq!(g.keepalive_timeout.map(|d| d.as_secs()), Some(30));
        assert!(!g.fail_open);
        let sticky = g.sticky.as_ref().unwrap();
        assert_eq!(
            (sticky.cookie.as_str(), sticky.ttl.map(|d| d.as_secs())),
            ("pin", Some(3600))
        );
        let (group, check) = &c.health_checks[0];
        assert_eq!(*group, 0);
        assert_eq!(
            (check.healthy, check.unhealthy, check.interval.as_secs()),
            (4, 5, 3)
        );
        assert_eq!(
            check.probe,
            Probe::Http {
                path: "/up".into(),
                host: None,
                expect: 200..=204
            }
        );
    }

    #[test]
    fn weights_under_plain_round_robin_interleave() {
        let text = source(r#"servers = ["127.0.0.1:9000", { addr = "127.0.0.1:9001", weight = 2 }]"#);
        let c = parse(Path::new("t.toml"), &text).unwrap();
        assert_eq!(c.upstreams[0].algorithm, Algorithm::WeightedRoundRobin);
        assert!(c.health_checks.is_empty());
    }

    #[test]
    fn mistakes_name_the_file_line_and_key() {
        let servers = "servers = [\"127.0.0.1:9000\"]\n";
        let cases = [
            (
                "balance = \"fastest\"",
                "t.toml:12: upstream[0].balance: unknown balance \"fastest\"",
            ),
            (
                "balance = \"consistent_hash\"\nhash_key = \"body\"",
                "t.toml:13: upstream[0].hash_key: unknown hash_key \"body\"",
            ),
            (
                "hash_key = \"path\"",
                "t.toml:12: upstream[0].hash_key: hash_key applies only",
            ),
            ("retries = 9", "t.toml:12: upstream[0].retries: must be at most 7"),
            (
                "retry_on = [\"connect\", \"418\"]",
                "t.toml:12: upstream[0].retry_on[1]: unknown retry condition \"418\"",
            ),
            (
                "health = { path = \"/h\", expect_status = \"300-200\" }",
                "t.toml:12: upstream[0].health.expect_status: \"300-200\": the range is empty",
            ),
            (
                "health = { interval = \"2s\" }",
                "t.toml:12: upstream[0].health.path: a check needs a path",
            ),
            (
                "sticky = { cookie = \"a b\" }",
                "t.toml:12: upstream[0].sticky.cookie: \"a b\" is not a valid cookie name",
            ),
            (
                "passive = { backoff = \"soon\" }",
                "t.toml:12: upstream[0].passive.backoff: invalid duration",
            ),
        ];
        for (keys, expected) in cases {
            let found = errors(&format!("{servers}{keys}"));
            assert!(found.iter().any(|e| e.starts_with(expected)), "{keys}: {found:?}");
        }
        let table = errors("servers = [{ addr = \"127.0.0.1:9000\", weight = 0 }]");
        assert!(
            table
                .iter()
                .any(|e| e.starts_with("t.toml:11: upstream[0].servers[0].weight: must be at least 1")),
            "{table:?}"
        );
        let backups = errors("servers = [{ addr = \"127.0.0.1:9000\", backup = true }]");
        assert!(
            backups.iter().any(|e| e.contains("every server is a backup")),
            "{backups:?}"
        );
        let twice = errors("servers = [\"127.0.0.1:9000\", \"127.0.0.1:9000\"]");
        assert!(twice.iter().any(|e| e.contains("listed twice")), "{twice:?}");
    }
}
