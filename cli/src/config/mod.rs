//! The configuration file: serde "user" structs, and their one-time
//! conversion into the validated runtime types the engine runs with.
//!
//! Unknown keys are errors (`deny_unknown_fields`). Syntax and type errors
//! come from the TOML parser with their line; validation errors name the key
//! path, which [`crate::locate`] turns into a line. Validation reports every
//! problem it finds, not only the first.
//!
//! One module per section: `runtime` (`[runtime]`), `http` (`[http]`),
//! `listener` (`[[listener]]` and their routes), `upstream`
//! (`[[upstream]]`), `forward` (`[acl.*]`, `[auth.*]`, forward listeners),
//! `dns` (`[dns]`), `log` (`[log]` and the listeners' access logs),
//! `admin` (`[admin]`). This module holds the file, the validated
//! [`Config`], the errors and what every section shares: value shapes,
//! sizes, durations and the validator's bookkeeping.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use ringway_balancer::UpstreamGroup;
use ringway_core::{dns::DnsConfig, DriverChoice, ListenerSpec, OwnAddresses, RuntimeConfig};
use ringway_http::{
    forward::{
        acl::{Acl, Action, IpNet, Matcher, PortSet, Rule, TimeWindow},
        auth::{BasicAuth, Htpasswd},
        domains::DomainSet,
        pac::Pac,
    },
    BodyRate, EngineSettings, ForwardSettings, ForwardedStyle, HealthCheck, HttpLimits, PoolSettings,
    ProxyHeaders, RouteSpec, RouteTable, Timeouts, ViaName, DEFAULT_BUFFER_SIZE, MAX_HEADERS_CAP,
};
use serde::Deserialize;

use crate::locate::{key_at, line_of, KeyPath};

mod admin;
mod cache;
mod dns;
mod forward;
mod http;
mod listener;
mod log;
mod rules;
mod runtime;
mod tls;
mod upstream;

pub use admin::{AdminConfig, DEFAULT_ADMIN_LISTEN};
use dns::DnsSection;
use forward::{AclSection, AuthSection};
use http::HttpSection;
pub use listener::{Listener, ListenerMode};
use listener::{ListenerSection, Named};
pub use log::AccessLogSpec;
use runtime::RuntimeSection;
pub use runtime::MAX_WORKERS;
use upstream::UpstreamSection;

/// The configuration file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ConfigFile {
    #[serde(default)]
    pub(crate) runtime: RuntimeSection,
    #[serde(default)]
    pub(crate) log: LogSection,
    #[serde(default)]
    pub(crate) http: HttpSection,
    #[serde(default, rename = "listener")]
    pub(crate) listeners: Vec<ListenerSection>,
    #[serde(default, rename = "upstream")]
    pub(crate) upstreams: Vec<UpstreamSection>,
    #[serde(default)]
    pub(crate) acl: BTreeMap<String, AclSection>,
    #[serde(default)]
    pub(crate) auth: BTreeMap<String, AuthSection>,
    #[serde(default)]
    pub(crate) dns: DnsSection,
    pub(crate) admin: Option<admin::AdminSection>,
    #[serde(default)]
    pub(crate) cache: BTreeMap<String, cache::CacheSection>,
}

/// A value or a list of values (`"a"` or `["a", "b"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a value or a list of values")]
pub(crate) enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

impl<T> Default for OneOrMany<T> {
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
}

impl<T> OneOrMany<T> {
    pub(crate) fn items(&self) -> &[T] {
        match self {
            OneOrMany::One(v) => std::slice::from_ref(v),
            OneOrMany::Many(v) => v,
        }
    }

    /// Each item with the key an error about it names: `at` itself for a
    /// single value, `at[i]` for the items of a list.
    pub(crate) fn keyed<'a>(&'a self, at: &'a KeyPath) -> impl Iterator<Item = (KeyPath, &'a T)> + 'a {
        let one = matches!(self, OneOrMany::One(_));
        self.items()
            .iter()
            .enumerate()
            .map(move |(i, item)| (if one { at.clone() } else { at.index(i) }, item))
    }
}

/// The items of a list with their keys `at[i]`.
fn indexed<'a, T>(at: &'a KeyPath, items: &'a [T]) -> impl Iterator<Item = (KeyPath, &'a T)> + 'a {
    items.iter().enumerate().map(move |(i, item)| (at.index(i), item))
}

/// A port (`443`) or a range (`"1025-65535"`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a port number or a range such as \"1025-65535\"")]
pub(crate) enum PortValue {
    Number(i64),
    Text(String),
}

/// A size: a number of bytes, or a string such as `"10MiB"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged, expecting = "a number of bytes or a size such as \"10MiB\"")]
pub(crate) enum SizeValue {
    Bytes(u64),
    Text(String),
}

/// `workers = 4` or `workers = "auto"`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogSection {
    pub(crate) level: Option<String>,
    pub(crate) access_log: Option<log::AccessLogValue>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Worker runtimes.
    pub runtime: RuntimeConfig,
    /// Open connections per worker.
    pub max_connections: usize,
    /// Whether `max_connections` was set in the file (else it is the
    /// default, which the binary fits to the descriptor limit).
    pub max_connections_set: bool,
    /// Open connections per client address, all workers together.
    pub max_connections_per_ip: Option<u32>,
    /// How long a drain waits for requests in flight.
    pub shutdown_timeout: Duration,
    /// Where a binary upgrade's new process waits for the listening
    /// sockets (`[runtime] upgrade_socket`).
    pub upgrade_socket: Option<PathBuf>,
    /// `[log] level`, if set.
    pub log_level: Option<String>,
    /// The listeners, in file order.
    pub listeners: Vec<Listener>,
    /// The upstream groups routes point at.
    pub upstreams: Vec<Arc<UpstreamGroup>>,
    /// Active health checks, by index into `upstreams`.
    pub health_checks: Vec<(usize, HealthCheck)>,
    /// Each upstream's TLS connector, by index into `upstreams`, when its
    /// servers speak TLS.
    pub upstream_tls: Vec<Option<ringway_tls::Connector>>,
    /// The upstream keep-alive pool.
    pub pool: PoolSettings,
    /// Name resolution for forward listeners and upstream server names.
    pub dns: Arc<DnsConfig>,
    /// How often each worker's timer sweep runs (deadlines are this
    /// coarse); not in the file: 100 ms, and shorter in tests.
    pub timer_tick: Duration,
    /// The admin listener, if configured.
    pub admin: Option<AdminConfig>,
    /// The HTTP caches (`[cache.NAME]`), in name order; routes name them
    /// by index.
    pub caches: Vec<Arc<ringway_http::cache::Store>>,
    /// The file's text, as it was read (`/config` shows it, redacted).
    pub source: Arc<str>,
    /// What is allowed but worth a warning (an expired certificate, an
    /// upstream whose certificates are not verified): logged at start,
    /// printed by `ringway check`.
    pub warnings: Vec<String>,
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file.
    pub file: PathBuf,
    /// The line, when known.
    pub line: Option<usize>,
    /// The key path (`listener[0].route[1].upstream`), empty for syntax errors.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All the problems found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads, parses and validates the file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    parse(path, &read_source(path)?)
}

/// The text of a configuration file, or an error naming it.
fn read_source(path: &Path) -> Result<String, ConfigErrors> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            line: None,
            key: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })
}

/// Parses and validates `source`, read from `file`.
pub fn parse(file: &Path, source: &str) -> Result<Config, ConfigErrors> {
    parse_with(file, source, true)
}

/// Like [`parse`], touching nothing outside the text: upstream servers
/// must be IP addresses (no name is looked up) and no file it names is
/// read (each is an error). For fuzzing, which must not send lookups off
/// the machine or read `/dev/zero` without end.
pub fn parse_offline(file: &Path, source: &str) -> Result<Config, ConfigErrors> {
    parse_with(file, source, false)
}

fn parse_with(file: &Path, source: &str, outside: bool) -> Result<Config, ConfigErrors> {
    let user: ConfigFile = from_toml(file, source)?;
    let mut v = Validator::for_file(file);
    v.outside = outside;
    let mut config = v.config(&user);
    let cautions = v.located_cautions(file, source);
    v.finish(file, source)?;
    config.warnings.extend(cautions);
    config.source = Arc::from(source);
    Ok(config)
}

/// A forward proxy on `listen` from the command line: the built-in policy,
/// or the ACL in `acl_file` (the keys of an `[acl.NAME]` section, at the
/// top level of that file).
pub fn forward_quick(listen: SocketAddr, acl_file: Option<&Path>) -> Result<Config, ConfigErrors> {
    let source = format!("[[listener]]\nname = \"forward\"\nlisten = \"{listen}\"\nmode = \"forward\"\n");
    let mut config = parse(Path::new("<command line>"), &source)?;
    let Some(path) = acl_file else {
        return Ok(config);
    };
    let text = read_source(path)?;
    let section: AclSection = from_toml(path, &text)?;
    let mut v = Validator::for_file(path);
    let acl = v.acl("file", &section, &KeyPath::root());
    v.finish(path, &text)?;
    if let Some(listener) = config.listeners.first_mut() {
        if let ListenerMode::Forward { settings } = &mut listener.mode {
            let mut updated = (**settings).clone();
            updated.acl = Arc::new(acl);
            *settings = Arc::new(updated);
        }
    }
    Ok(config)
}

/// Deserialises `source`, turning a syntax or type error into a located one.
fn from_toml<T: serde::de::DeserializeOwned>(file: &Path, source: &str) -> Result<T, ConfigErrors> {
    toml::from_str(source).map_err(|e| {
        let start = e.span().map(|s| s.start.min(source.len()));
        let line = start.map(|at| source[..at].matches('\n').count() + 1);
        let key = start.and_then(|at| key_at(source, at));
        ConfigErrors(vec![ConfigError {
            file: file.to_owned(),
            line,
            key: key.map(|k| k.to_string()).unwrap_or_default(),
            message: e.message().trim().to_owned(),
        }])
    })
}

/// Parses a size: plain bytes, or a number with `B`, `KiB`, `MiB`, `GiB`
/// (or `KB`, `MB`, `GB`, taken as the same binary units, as nginx does).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("invalid size {text:?}: expected a number and a unit, like \"10MiB\""))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "K" | "KB" | "KiB" | "k" => 1 << 10,
        "M" | "MB" | "MiB" | "m" => 1 << 20,
        "G" | "GB" | "GiB" | "g" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {text:?}: use B, KiB, MiB or GiB"
            ))
        }
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"` (a whole number and a unit).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| {
        format!("invalid duration {text:?}: expected a number and a unit, like \"5s\" or \"250ms\"")
    })?;
    let duration = match unit.trim() {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n.saturating_mul(60)),
        "h" => Duration::from_secs(n.saturating_mul(3600)),
        other => {
            return Err(format!(
                "invalid duration unit {other:?} in {text:?}: use ms, s, m or h"
            ))
        }
    };
    Ok(duration)
}

struct Validator {
    problems: Vec<(KeyPath, String)>,
    /// What is allowed but almost surely not meant, where it is written:
    /// warnings with file and line (`check --strict` makes them errors).
    cautions: Vec<(KeyPath, String)>,
    /// What is allowed but worth saying at start and by `check`.
    warnings: Vec<String>,
    /// Directory that relative file names are taken from.
    base: PathBuf,
    /// The proxy's name in `Via` (`[http] via_name`), for listeners that
    /// turn `via` on.
    via_name: ViaName,
    /// Every upstream server, where it is configured.
    servers: Vec<(KeyPath, SocketAddr)>,
    /// Whether names may be looked up and files read.
    outside: bool,
}

impl Validator {
    fn for_file(file: &Path) -> Self {
        Self {
            problems: Vec::new(),
            cautions: Vec::new(),
            warnings: Vec::new(),
            base: file.parent().map(Path::to_path_buf).unwrap_or_default(),
            via_name: ViaName::default(),
            servers: Vec::new(),
            outside: true,
        }
    }

    /// Every problem found, located in `source`, or `Ok` when there were none.
    fn finish(self, file: &Path, source: &str) -> Result<(), ConfigErrors> {
        if self.problems.is_empty() {
            return Ok(());
        }
        Err(ConfigErrors(
            self.problems
                .into_iter()
                .map(|(path, message)| ConfigError {
                    file: file.to_owned(),
                    line: line_of(source, &path),
                    key: path.to_string(),
                    message,
                })
                .collect(),
        ))
    }

    fn problem(&mut self, path: KeyPath, message: impl Into<String>) {
        self.problems.push((path, message.into()));
    }

    /// A warning about the key at `path` (each said once).
    fn caution(&mut self, path: KeyPath, message: impl Into<String>) {
        let caution = (path, message.into());
        if !self.cautions.contains(&caution) {
            self.cautions.push(caution);
        }
    }

    /// The warnings with their file and line, for [`Config::warnings`].
    fn located_cautions(&mut self, file: &Path, source: &str) -> Vec<String> {
        std::mem::take(&mut self.cautions)
            .into_iter()
            .map(|(path, message)| {
                ConfigError {
                    file: file.to_owned(),
                    line: line_of(source, &path),
                    key: path.to_string(),
                    message,
                }
                .to_string()
            })
            .collect()
    }

    fn duration(&mut self, path: KeyPath, value: Option<&String>, default: Duration) -> Duration {
        let Some(text) = value else { return default };
        self.positive(path, parse_duration(text), default)
    }

    /// A value parsed at `path`, or `default` with a problem when it did
    /// not parse or is zero.
    fn positive<T: Default + PartialEq>(
        &mut self,
        path: KeyPath,
        parsed: Result<T, String>,
        default: T,
    ) -> T {
        match parsed {
            Ok(value) if value == T::default() => {
                self.problem(path, "must be greater than zero");
                default
            }
            Ok(value) => value,
            Err(e) => {
                self.problem(path, e);
                default
            }
        }
    }

    fn config(&mut self, user: &ConfigFile) -> Config {
        let root = KeyPath::root();
        let rt = self.runtime(&user.runtime, &root.key("runtime"));
        if let Some(level) = &user.log.level {
            if !matches!(level.as_str(), "error" | "warn" | "info" | "debug" | "trace") {
                self.problem(
                    root.key("log").key("level"),
                    format!("unknown level {level:?}: expected error, warn, info, debug or trace"),
                );
            }
        }
        let (settings, pool) = self.http(&user.http, &root.key("http"));
        let access_log = self.access_log(
            user.log.access_log.as_ref(),
            None,
            &root.key("log").key("access_log"),
        );
        // Before the upstreams: their servers' names are looked up with it.
        let dns = Arc::new(self.dns(&user.dns, &root.key("dns")));
        let upstream::Upstreams {
            groups: upstreams,
            checks: health_checks,
            tls: upstream_tls,
        } = self.upstreams(&user.upstreams, &dns, &root.key("upstream"));
        let mut acls: BTreeMap<String, Arc<Acl>> = BTreeMap::new();
        for (name, section) in &user.acl {
            let acl = self.acl(name, section, &root.key("acl").key(name));
            acls.insert(name.clone(), Arc::new(acl));
        }
        let mut auths: BTreeMap<String, Arc<BasicAuth>> = BTreeMap::new();
        for (name, section) in &user.auth {
            if let Some(auth) = self.auth(name, section, &root.key("auth").key(name)) {
                auths.insert(name.clone(), Arc::new(auth));
            }
        }
        let caches = self.caches(&user.cache, &root.key("cache"));
        let named = Named {
            upstreams: &upstreams,
            acls: &acls,
            auths: &auths,
            caches: &caches,
        };
        let listeners = self.listeners(
            &user.listeners,
            &named,
            (&settings, access_log.as_ref()),
            &root.key("listener"),
        );
        self.no_upstream_is_a_listener(&listeners);
        self.caches_used_once_per_kind(&listeners, &caches, &root.key("listener"));
        Config {
            runtime: rt.config,
            max_connections: rt.max_connections,
            max_connections_set: rt.max_connections_set,
            max_connections_per_ip: rt.max_connections_per_ip,
            shutdown_timeout: rt.shutdown_timeout,
            upgrade_socket: rt.upgrade_socket,
            log_level: user.log.level.clone(),
            listeners,
            upstreams,
            health_checks,
            upstream_tls,
            pool,
            dns,
            timer_tick: Duration::from_millis(100),
            caches,
            admin: user
                .admin
                .as_ref()
                .and_then(|a| self.admin(a, &root.key("admin"))),
            source: Arc::from(""),
            warnings: std::mem::take(&mut self.warnings),
        }
    }

    fn read_file(&mut self, at: KeyPath, name: &str) -> Option<(PathBuf, String)> {
        let path = self.base.join(name);
        if !self.outside {
            self.problem(at, format!("{}: files are not read here", path.display()));
            return None;
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => Some((path, text)),
            Err(e) => {
                self.problem(at, format!("cannot read {}: {e}", path.display()));
                None
            }
        }
    }
}

/// The name this instance gives itself in `Via` when none is configured:
/// `ringway-` and eight hex digits hashed from the host name, the process
/// and the moment it started, made once per process. Loop detection needs
/// a name no other proxy in the chain has, also another ringway on the
/// same host; the host name itself never leaves the machine. Set
/// `via_name` for a name that stays the same across restarts.
fn default_via_name() -> ViaName {
    static NAME: std::sync::OnceLock<ViaName> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = format!("{}/{}/{started}", host.trim(), std::process::id());
        // FNV-1a, folded to 32 bits.
        let hash = seed.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        ViaName::new(&format!("ringway-{:08x}", (hash ^ (hash >> 32)) as u32)).unwrap_or_default()
    })
    .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[runtime]
workers = 2            # or "auto"
driver = "auto"        # "uring" | "legacy"
pin_cpus = true

[[listener]]
name = "web"
listen = "127.0.0.1:8080"
mode = "reverse"

[[listener.route]]
host = "*.example.com" # optional
path_prefix = "/"      # optional
upstream = "app"

[[upstream]]
name = "app"
servers = ["127.0.0.1:9000", "127.0.0.1:9001"]
"#;

    fn errors(source: &str) -> Vec<String> {
        parse(Path::new("t.toml"), source)
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_issue_schema_is_accepted_as_written() {
        let c = parse(Path::new("t.toml"), MINIMAL).unwrap();
        assert_eq!(c.runtime.workers, 2);
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.listeners[0].spec.name, "web");
        assert_eq!(c.upstreams[0].servers.len(), 2);
    }

    #[test]
    fn access_logs_inherit_override_and_name_what_is_wrong() {
        let with = |log: &str, listener: &str| {
            MINIMAL
                .replace("[runtime]", &format!("[log]\n{log}\n\n[runtime]"))
                .replace("mode = \"reverse\"", &format!("mode = \"reverse\"\n{listener}"))
        };
        let config = parse(Path::new("t.toml"), &with("access_log = true", "")).unwrap();
        assert_eq!(config.listeners[0].access_log, Some(AccessLogSpec::stderr()));
        let config = parse(
            Path::new("t.toml"),
            &with("access_log = true", "access_log = false"),
        )
        .unwrap();
        assert_eq!(config.listeners[0].access_log, None);
        let source = with("", "access_log = { path = \"logs/a.log\", format = \"json\" }");
        let config = parse(Path::new("/etc/ringway/t.toml"), &source);
        // Outside checks are on for `parse`: the directory must exist.
        let e = config
            .unwrap_err()
            .0
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>();
        assert!(
            e.iter().any(
                |e| e.starts_with("/etc/ringway/t.toml:14: listener[0].access_log.path:")
                    && e.contains("/etc/ringway/logs does not exist")
            ),
            "{e:?}"
        );
        let e = errors(&with("", "access_log = { format = \"$status $bytes\" }"));
        assert!(
            e.iter()
                .any(|e| e.contains("access_log.format") && e.contains("unknown variable $bytes")),
            "{e:?}"
        );
        let e = errors(&with("access_log = { format = \"common\" }", ""));
        assert!(
            e.iter()
                .any(|e| e.contains("log.access_log.format") && e.contains("combined, squid, json")),
            "{e:?}"
        );
        let e = errors(&with("access_log = \"yes\"", ""));
        assert!(
            e.iter()
                .any(|e| e.contains("access_log") && e.contains("true, false, or a table")),
            "{e:?}"
        );
    }

    #[test]
    fn unknown_keys_are_errors_with_their_line() {
        let source = MINIMAL.replace("pin_cpus = true", "pin_cpus = true\npin_cpu = false");
        let e = errors(&source);
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("t.toml:6:"), "{}", e[0]);
        assert!(e[0].contains("pin_cpu"), "{}", e[0]);
    }

    #[test]
    fn validation_errors_name_file_line_and_key_and_are_all_reported() {
        let source = MINIMAL
            .replace("upstream = \"app\"", "upstream = \"nope\"")
            .replace("driver = \"auto\"", "driver = \"kqueue\"")
            .replace("127.0.0.1:9001", "not an address");
        let e = errors(&source);
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(
            e.iter()
                .any(|m| m.starts_with("t.toml:4: runtime.driver: unknown driver")),
            "{e:#?}"
        );
        assert!(
            e.iter().any(|m| m
                .starts_with("t.toml:15: listener[0].route[0].upstream: no [[upstream]] is named \"nope\"")),
            "{e:#?}"
        );
        assert!(
            e.iter()
                .any(|m| m.starts_with("t.toml:19: upstream[0].servers[1]:")),
            "{e:#?}"
        );
    }

    #[test]
    fn an_upstream_that_is_ringways_own_listener_is_an_error() {
        let e = errors(&MINIMAL.replace("127.0.0.1:9001", "127.0.0.1:8080"));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(
            e[0].starts_with(
                "t.toml:19: upstream[0].servers[1]: 127.0.0.1:8080 is ringway's own listener \"web\""
            ),
            "{e:#?}"
        );
        // A wildcard listener covers the loopback addresses.
        let wildcard = MINIMAL
            .replace("listen = \"127.0.0.1:8080\"", "listen = \"0.0.0.0:8080\"")
            .replace("127.0.0.1:9001", "127.0.0.3:8080");
        assert_eq!(errors(&wildcard).len(), 1);
    }

    #[test]
    fn via_name_and_trace_are_configurable() {
        let c = parse(
            Path::new("t.toml"),
            &format!("{MINIMAL}\n[http]\nvia_name = \"edge-1\"\nallow_trace = true\n"),
        )
        .unwrap();
        let settings = &c.listeners[0].settings;
        assert_eq!(
            settings.proxy_headers.via.as_ref().map(|v| v.name()),
            Some("edge-1")
        );
        assert!(settings.allow_trace);
        let default = parse(Path::new("t.toml"), MINIMAL).unwrap();
        let name = default.listeners[0].settings.proxy_headers.via.clone().unwrap();
        assert!(name.name().starts_with("ringway-"), "{}", name.name());
        assert!(!default.listeners[0].settings.allow_trace);
        let e = errors(&format!("{MINIMAL}\n[http]\nvia_name = \"two words\"\n"));
        assert!(e[0].contains("http.via_name"), "{e:#?}");
    }

    #[test]
    fn type_errors_name_their_key() {
        let e = errors(&MINIMAL.replace("workers = 2", "workers = true"));
        assert_eq!(e.len(), 1);
        assert!(
            e[0].starts_with("t.toml:3: runtime.workers: ") && e[0].contains("\"auto\""),
            "{}",
            e[0]
        );
        let e = errors(&MINIMAL.replace("pin_cpus = true", "pin_cpus = true\npin_cpu = false"));
        assert!(e[0].starts_with("t.toml:6: runtime.pin_cpu: "), "{}", e[0]);
    }

    #[test]
    fn route_errors_name_the_route_and_field() {
        let e = errors(&MINIMAL.replace("path_prefix = \"/\"", "path_prefix = \"ghost\""));
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].contains("listener[0].route[0].path_prefix: "), "{}", e[0]);
        let twice = MINIMAL.replace(
            "[[upstream]]",
            "[[listener.route]]\nhost = \"*.example.com\"\nupstream = \"app\"\n\n[[upstream]]",
        );
        let e = errors(&twice);
        assert_eq!(e.len(), 1, "{e:#?}");
        assert!(e[0].contains("listener[0].route[1].path_prefix: "), "{}", e[0]);
        assert!(e[0].contains("routed twice"), "{}", e[0]);
    }

    #[test]
    fn every_bad_pattern_of_a_rule_is_reported() {
        let source = r#"
[[listener]]
name = "out"
mode = "forward"
listen = "127.0.0.1:0"
acl = "a"

[acl.a]
default = "allow"

[[acl.a.rule]]
action = "deny"
dst_regex = ["(", "ok", "["]
url_regex = "(?P<"
"#;
        let e = errors(source);
        assert_eq!(e.len(), 3, "{e:#?}");
        assert!(
            e[0].contains("acl.a.rule[0].dst_regex[0]: invalid regular expression"),
            "{e:#?}"
        );
        assert!(
            e[1].contains("acl.a.rule[0].dst_regex[2]: invalid regular expression"),
            "{e:#?}"
        );
        assert!(
            e[2].contains("acl.a.rule[0].url_regex: invalid regular expression"),
            "{e:#?}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("1 GB"), Ok(1 << 30));
        assert!(parse_size("10 parsecs").is_err());
        assert!(parse_size("99999999999999GiB").is_err());
    }

    #[test]
    fn body_and_per_address_limits() {
        let c = parse(
            Path::new("t.toml"),
            &MINIMAL.replace(
                "pin_cpus = true",
                "pin_cpus = true\nmax_connections_per_ip = 50\n\n[http]\nmax_body = \"8MiB\"\nmin_body_rate = 1000\nbody_rate_window = \"5s\"",
            ),
        )
        .unwrap();
        assert_eq!(c.max_connections_per_ip, Some(50));
        let limits = c.listeners[0].settings.limits;
        assert_eq!(limits.max_body, Some(8 << 20));
        assert_eq!(
            limits.min_body_rate,
            Some(BodyRate {
                bytes_per_second: 1000,
                window: Duration::from_secs(5)
            })
        );
        let defaults = parse(Path::new("t.toml"), MINIMAL).unwrap();
        assert_eq!(defaults.max_connections_per_ip, None);
        assert_eq!(defaults.listeners[0].settings.limits.max_body, None);
        assert_eq!(
            defaults.listeners[0].settings.limits.min_body_rate,
            Some(BodyRate::default())
        );
        let e = errors(&format!("{MINIMAL}\n[http]\nmax_body = \"lots\"\n"));
        assert!(e[0].contains("http.max_body"), "{e:#?}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5 days").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn a_bad_timeout_names_its_key() {
        let source = format!("{MINIMAL}\n[http]\nconnect_timeout = \"soon\"\n");
        let e = errors(&source);
        assert_eq!(e.len(), 1);
        assert!(
            e[0].contains("http.connect_timeout: invalid duration"),
            "{}",
            e[0]
        );
    }
}
