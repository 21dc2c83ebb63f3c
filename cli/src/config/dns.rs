//! `[dns]`: how names are resolved (static hosts, servers, cache sizes and
//! lifetimes): the destinations of forward listeners, and upstream servers
//! given by host name.

use super::*;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DnsSection {
    #[serde(default)]
    pub(crate) hosts: BTreeMap<String, OneOrMany<String>>,
    pub(crate) servers: Option<Vec<String>>,
    pub(crate) cache_ttl: Option<String>,
    pub(crate) negative_ttl: Option<String>,
    pub(crate) timeout: Option<String>,
    pub(crate) system_hosts: Option<bool>,
}

impl Validator {
    pub(super) fn dns(&mut self, d: &DnsSection, at: &KeyPath) -> DnsConfig {
        let mut config = DnsConfig::system();
        if d.system_hosts == Some(false) {
            config.hosts.clear();
        }
        for (name, addrs) in &d.hosts {
            let mut ips = Vec::new();
            let name_at = at.key("hosts").key(name);
            for (key, a) in addrs.keyed(&name_at) {
                match a.parse::<IpAddr>() {
                    Ok(ip) => ips.push(ip),
                    Err(_) => {
                        self.problem(key, format!("invalid address {a:?}"));
                    }
                }
            }
            config
                .hosts
                .insert(name.trim_end_matches('.').to_ascii_lowercase(), ips);
        }
        if let Some(servers) = &d.servers {
            config.servers.clear();
            for (i, s) in servers.iter().enumerate() {
                let parsed = s
                    .parse::<SocketAddr>()
                    .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)));
                match parsed {
                    Ok(addr) => config.servers.push(addr),
                    Err(_) => self.problem(
                        at.key("servers").index(i),
                        format!("invalid server {s:?}: expected IP or IP:PORT"),
                    ),
                }
            }
        }
        config.cache_ttl = self.duration(at.key("cache_ttl"), d.cache_ttl.as_ref(), config.cache_ttl);
        config.negative_ttl = self.duration(
            at.key("negative_ttl"),
            d.negative_ttl.as_ref(),
            config.negative_ttl,
        );
        config.timeout = self.duration(at.key("timeout"), d.timeout.as_ref(), config.timeout);
        config
    }
}
