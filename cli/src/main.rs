//! `ringway`: the binary. Parses the command line, loads and validates the
//! configuration, starts the workers and stops them on SIGINT/SIGTERM.

mod explain;
mod route_explain;
mod upgrade;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use ringway_core::DriverChoice;
use ringway_http::access_log::{LogFormat, LogPath};
use signal_hook::{consts::signal::*, iterator::Signals};

use ringway::{
    config::{self, Config, ListenerMode},
    factory,
};

/// The configuration `ringway` runs with when given no arguments.
const DEFAULT_CONFIG: &str = include_str!("../../examples/default.toml");

#[derive(Debug, Parser)]
#[command(
    name = "ringway",
    version,
    about = "A forward and reverse HTTP proxy on thread-per-core io_uring runtimes",
    long_about = "A forward and reverse HTTP proxy on thread-per-core io_uring runtimes.\n\n\
                  With no arguments, runs a forward proxy on 127.0.0.1:3128 with the built-in safe policy."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run with a configuration file.
    Run {
        #[command(flatten)]
        file: ConfigFileArg,
        /// Take over from the ringway running now (a binary upgrade): wait
        /// at [runtime] upgrade_socket for its listening sockets (send it
        /// SIGUSR2), serve on them, then let it drain and exit. No
        /// connection is refused in between.
        #[arg(long)]
        takeover: bool,
    },
    /// Check a configuration file, then have the running ringway serve it
    /// (through its [admin] listener; SIGHUP does the same): listeners,
    /// routes, upstreams, rules and ACLs change without dropping a
    /// connection. Exit 1 when it was not reloaded, with the reason.
    Reload {
        #[command(flatten)]
        file: ConfigFileArg,
    },
    /// Validate a configuration file and print a summary (exit 1 on errors).
    /// Warnings (rules that can never match, an open proxy, a listener
    /// without a mode) go to stderr with their file and line.
    Check {
        #[command(flatten)]
        file: ConfigFileArg,
        /// Treat warnings as errors (exit 1).
        #[arg(long)]
        strict: bool,
    },
    /// Run a reverse proxy from the command line, no file needed.
    Reverse {
        /// Address to listen on: IP:PORT, or :PORT for every interface.
        #[arg(long, default_value = "127.0.0.1:8080", value_parser = parse_listen)]
        listen: SocketAddr,
        /// An upstream server: HOST:PORT, IP:PORT or http://HOST:PORT
        /// (https:// for TLS to it); repeat for several (round robin).
        #[arg(long, required = true)]
        upstream: Vec<String>,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Run a forward proxy from the command line, no file needed.
    Forward {
        /// Address to listen on: IP:PORT, or :PORT for every interface.
        #[arg(long, default_value = "127.0.0.1:3128", value_parser = parse_listen)]
        listen: SocketAddr,
        /// A TOML file with the keys of an [acl.NAME] section at its top
        /// level (default, block_private, private_allow, connect_ports,
        /// [[rule]]); without it, the built-in safe policy.
        #[arg(long)]
        acl_file: Option<PathBuf>,
        #[command(flatten)]
        tuning: Tuning,
    },
    /// Inspect access-control lists.
    Acl {
        #[command(subcommand)]
        command: AclCommand,
    },
    /// Inspect a reverse listener's routes and rules.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
}

#[derive(Debug, Subcommand)]
enum RouteCommand {
    /// Print the route a request takes, each rule that matched or did
    /// not, and the result. Exit status 0 when the request would be
    /// forwarded, 1 when refused, redirected or answered by the proxy, 2
    /// on an error.
    Explain {
        #[command(flatten)]
        common: ExplainArgs,
        /// The method.
        #[arg(short = 'X', long, default_value = "GET")]
        method: String,
        /// The URL: http://host/path?query (https:// sets the SNI too).
        url: String,
    },
}

/// What both `explain` commands take.
#[derive(Debug, Args)]
struct ExplainArgs {
    /// The TOML configuration file.
    #[arg(short, long)]
    config: PathBuf,
    /// The listener's name.
    #[arg(long)]
    listener: String,
    /// The client's address.
    #[arg(long, default_value = "127.0.0.1")]
    src: IpAddr,
    /// A request header, "Name: value" (repeatable), for header rules.
    #[arg(short = 'H', long = "header")]
    headers: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum AclCommand {
    /// Print what a forward listener would decide for each request. Exit
    /// status 0 when every one would be let through, 1 when one would be
    /// refused or asked for credentials, 2 when one cannot be explained.
    Explain {
        #[command(flatten)]
        common: ExplainArgs,
        /// The authenticated user (for user and group rules).
        #[arg(long)]
        user: Option<String>,
        /// The method of a plain HTTP request.
        #[arg(long, default_value = "GET")]
        method: String,
        /// URLs (http://host/path) or host:port (CONNECT); each is explained.
        #[arg(required = true)]
        targets: Vec<String>,
    },
}

/// Options of the command-line proxies.
#[derive(Debug, Args)]
struct Tuning {
    /// Worker threads (default: one per CPU).
    #[arg(long)]
    workers: Option<usize>,
    /// I/O driver: auto, uring or legacy.
    #[arg(long, default_value = "auto")]
    driver: String,
    /// Do not pin workers to CPUs.
    #[arg(long)]
    no_pin: bool,
    /// Log one line per request to standard error, in the combined format.
    #[arg(long)]
    access_log: bool,
}

impl Tuning {
    fn apply(&self, mut config: Config) -> anyhow::Result<Config> {
        config.runtime.driver = self.driver.parse::<DriverChoice>().map_err(anyhow::Error::msg)?;
        config.runtime.pin_cpus = !self.no_pin;
        if let Some(n) = self.workers {
            anyhow::ensure!(
                (1..=config::MAX_WORKERS).contains(&n),
                "--workers must be from 1 to {}",
                config::MAX_WORKERS
            );
            config.runtime.workers = n;
        }
        if self.access_log {
            for l in &mut config.listeners {
                l.access_log = Some(config::AccessLogSpec::stderr());
            }
        }
        Ok(config)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => parse_embedded_default().and_then(|c| run(&c, None)),
        Some(Command::Run { file, takeover }) => {
            let path = file.path();
            load(&path).and_then(|c| run_from(&c, Some(&path), takeover))
        }
        Some(Command::Reload { file }) => reload_command(&file.path()),
        Some(Command::Check { file, strict }) => check(&file.path(), strict),
        Some(Command::Reverse {
            listen,
            upstream,
            tuning,
        }) => quick_reverse(listen, &upstream)
            .and_then(|c| tuning.apply(c))
            .and_then(|c| run(&c, None)),
        Some(Command::Forward {
            listen,
            acl_file,
            tuning,
        }) => config::forward_quick(listen, acl_file.as_deref())
            .map_err(anyhow::Error::from)
            .and_then(|c| tuning.apply(c))
            .and_then(|c| run(&c, None)),
        Some(Command::Acl {
            command:
                AclCommand::Explain {
                    common:
                        ExplainArgs {
                            config,
                            listener,
                            src,
                            headers,
                        },
                    user,
                    method,
                    targets,
                },
        }) => load(&config).map(|c| {
            let (mut refused, mut failed) = (false, false);
            for (i, target) in targets.iter().enumerate() {
                if i > 0 {
                    println!();
                }
                let request = explain::Request {
                    listener: &listener,
                    src,
                    user: user.as_deref(),
                    method: &method,
                    target,
                    headers: &headers,
                };
                // One target the proxy could not read does not stop the
                // others.
                match explain::explain(&c, &request) {
                    Ok(true) => {}
                    Ok(false) => refused = true,
                    Err(e) => {
                        println!("{target}: {e:#}");
                        failed = true;
                    }
                }
            }
            // 0: all allowed; 1: one refused (or asked for credentials);
            // 2: one could not be explained.
            ExitCode::from(if failed { 2 } else { u8::from(refused) })
        }),
        Some(Command::Route {
            command:
                RouteCommand::Explain {
                    common:
                        ExplainArgs {
                            config,
                            listener,
                            src,
                            headers,
                        },
                    method,
                    url,
                },
        }) => load(&config)
            .and_then(|c| {
                let request = route_explain::Request {
                    listener: &listener,
                    src,
                    method: &method,
                    url: &url,
                    headers: &headers,
                };
                route_explain::explain(&c, &request)
            })
            .or_else(|e| {
                // 2, not 1: a script testing a policy must not read a typo as
                // a refusal.
                eprintln!("ringway: {e:#}");
                Ok(ExitCode::from(2))
            }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> anyhow::Result<Config> {
    Ok(config::load(path)?)
}

fn parse_embedded_default() -> anyhow::Result<Config> {
    Ok(config::parse(Path::new("<embedded default>"), DEFAULT_CONFIG)?)
}

fn check(path: &Path, strict: bool) -> anyhow::Result<ExitCode> {
    match config::load(path) {
        Ok(c) => {
            // Warnings to stderr, with their file and line where they have
            // one; the summary to stdout.
            for warning in &c.warnings {
                eprintln!("warning: {warning}");
            }
            if strict && !c.warnings.is_empty() {
                eprintln!(
                    "ringway: {} warnings, which --strict makes errors",
                    c.warnings.len()
                );
                return Ok(ExitCode::FAILURE);
            }
            print!("{}", summary(path, &c));
            Ok(ExitCode::SUCCESS)
        }
        Err(errors) => {
            eprintln!("{errors}");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// The one-screen summary `ringway check` prints for a valid file.
fn summary(path: &Path, c: &Config) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "{}: ok", path.display());
    let driver = match c.runtime.driver {
        DriverChoice::Auto => "auto",
        DriverChoice::Uring => "uring",
        DriverChoice::Legacy => "legacy",
    };
    let _ = writeln!(
        out,
        "runtime: {} workers, driver {driver}, pin_cpus {}, max {} connections per worker, shutdown timeout {:?}",
        c.runtime.workers, c.runtime.pin_cpus, c.max_connections, c.shutdown_timeout
    );
    for l in &c.listeners {
        match &l.mode {
            ListenerMode::Reverse {
                route_count, routes, ..
            } => {
                let policies = std::iter::once(routes.listener_rules())
                    .chain((0..*route_count).filter_map(|i| routes.rules(i).map(|r| &r.policy)));
                let (mut rules, mut edits, mut cors, mut pages) = (0, 0, 0, 0);
                for p in policies {
                    rules += p.rules.len();
                    edits += p.headers.request.len() + p.headers.response.len();
                    cors += usize::from(p.cors.is_some());
                    pages += p.error_pages.len();
                }
                let _ = write!(
                    out,
                    "listener {:?}: {} reverse, {route_count} routes",
                    l.spec.name, l.spec.addr
                );
                if rules + edits + cors + pages > 0 {
                    let _ = write!(
                        out,
                        ", {rules} rules, {edits} header edits, {cors} CORS policies, {pages} error pages"
                    );
                }
                out.push('\n');
            }
            ListenerMode::Tcp { upstream } => {
                let name = c.upstreams.get(*upstream).map_or("?", |u| u.name.as_str());
                let _ = writeln!(
                    out,
                    "listener {:?}: {} tcp, upstream {name:?}",
                    l.spec.name, l.spec.addr
                );
            }
            ListenerMode::Forward { settings } => {
                let acl = &settings.acl;
                let auth = settings
                    .auth
                    .as_ref()
                    .map_or("none".to_owned(), |a| format!("{:?}", a.name));
                let _ = writeln!(
                    out,
                    "listener {:?}: {} forward, acl {:?} ({} rules, default {:?}, block_private {}), auth {auth}, pac {}",
                    l.spec.name,
                    l.spec.addr,
                    acl.name,
                    acl.rules.len(),
                    acl.default,
                    acl.block_private,
                    if settings.pac.is_some() { "/proxy.pac" } else { "off" },
                );
            }
        }
    }
    for l in &c.listeners {
        if let Some(tls) = &l.tls {
            let files = tls.store().files();
            let named = files.iter().filter(|f| !f.sni.is_empty()).count();
            let clients = if tls.requires_client_certificates() {
                ", client certificates required"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "listener {:?}: TLS, {} certificates ({named} by SNI){clients}",
                l.spec.name,
                files.len()
            );
        }
    }
    for l in &c.listeners {
        if let Some(log) = &l.access_log {
            let format = match &*log.format {
                LogFormat::Combined => "combined",
                LogFormat::Squid => "squid",
                LogFormat::Json => "json",
                LogFormat::Template(_) => "a template",
            };
            let to = match &log.path {
                LogPath::Stderr => "stderr".to_owned(),
                LogPath::File(path) => path.display().to_string(),
            };
            let _ = writeln!(out, "listener {:?}: access log ({format}) to {to}", l.spec.name);
        }
    }
    if let Some(admin) = &c.admin {
        let token = if admin.token.is_some() {
            "token required"
        } else {
            "no token"
        };
        let _ = writeln!(
            out,
            "admin: {} /metrics /healthz /status /config ({token})",
            admin.listen
        );
    }
    for (u, tls) in c.upstreams.iter().zip(&c.upstream_tls) {
        if let Some(tls) = tls {
            let verified = if tls.is_insecure() {
                "NOT verified"
            } else {
                "verified"
            };
            let _ = writeln!(
                out,
                "upstream {:?}: TLS to its servers, certificates {verified}",
                u.name
            );
        }
    }
    for u in &c.upstreams {
        let servers: Vec<String> = u
            .servers
            .iter()
            .map(|s| {
                let mut text = s.addr.to_string();
                if s.weight != 1 {
                    text.push_str(&format!(" weight {}", s.weight));
                }
                if let Some(limit) = s.max_connections {
                    text.push_str(&format!(" max {limit}"));
                }
                if s.backup {
                    text.push_str(" (backup)");
                }
                text
            })
            .collect();
        let checked = c
            .health_checks
            .iter()
            .any(|(g, _)| c.upstreams.get(*g).is_some_and(|x| std::sync::Arc::ptr_eq(x, u)));
        let _ = writeln!(
            out,
            "upstream {:?}: {} [{}{}]",
            u.name,
            servers.join(", "),
            u.algorithm.name(),
            if checked { ", health checks" } else { "" }
        );
    }
    out
}

/// A reverse proxy on `listen` in front of `upstreams`, validated like a file.
fn quick_reverse(listen: SocketAddr, upstreams: &[String]) -> anyhow::Result<Config> {
    let mut servers = Vec::new();
    let mut tls = None;
    for text in upstreams {
        let (https, rest) = match text.split_once("://") {
            Some(("http", rest)) => (false, rest),
            Some(("https", rest)) => (true, rest),
            Some((scheme, _)) => anyhow::bail!(
                "--upstream {text:?}: {scheme}:// is not a scheme ringway speaks to servers (http or https)"
            ),
            None => (false, text.as_str()),
        };
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        anyhow::ensure!(
            !authority.is_empty() && !authority.contains(['/', '?', '#', '"', '\\']),
            "--upstream {text:?}: expected HOST:PORT, IP:PORT or http://HOST:PORT (a server, not a path)"
        );
        let with_port = explain::with_default_port(authority, if https { 443 } else { 80 });
        anyhow::ensure!(
            tls.is_none_or(|t| t == https),
            "--upstream: mix of http:// and https:// servers; one upstream speaks one of them"
        );
        tls = Some(https);
        servers.push(format!("\"{with_port}\""));
    }
    let source = format!(
        "[[listener]]\nname = \"reverse\"\nlisten = \"{listen}\"\nmode = \"reverse\"\n\n\
         [[listener.route]]\nupstream = \"default\"\n\n\
         [[upstream]]\nname = \"default\"\nservers = [{}]\n{}",
        servers.join(", "),
        if tls == Some(true) { "tls = true\n" } else { "" }
    );
    Ok(config::parse(Path::new("<command line>"), &source)?)
}

/// `IP:PORT`, or `:PORT` for every interface (as Go and nginx's `listen
/// PORT` read it).
fn parse_listen(text: &str) -> Result<SocketAddr, String> {
    let expanded;
    let text = match text.strip_prefix(':') {
        Some(port) => {
            expanded = format!("0.0.0.0:{port}");
            &expanded
        }
        None => text,
    };
    text.parse()
        .map_err(|_| format!("expected IP:PORT (\"127.0.0.1:8080\", \"[::1]:8080\") or :PORT for every interface, not {text:?}"))
}

/// The configuration file of `run` and `check`: `--config FILE` or just
/// `FILE`.
#[derive(Debug, Args)]
struct ConfigFileArg {
    /// The TOML configuration file.
    #[arg(short, long, required_unless_present = "file")]
    config: Option<PathBuf>,
    /// The TOML configuration file (the same as --config).
    #[arg(conflicts_with = "config", value_name = "CONFIG")]
    file: Option<PathBuf>,
}

impl ConfigFileArg {
    fn path(&self) -> PathBuf {
        self.config
            .clone()
            .or_else(|| self.file.clone())
            .unwrap_or_default()
    }
}

fn init_logging(level: Option<&str>) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level.unwrap_or("info")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

fn run(config: &Config, file: Option<&Path>) -> anyhow::Result<ExitCode> {
    run_from(config, file, false)
}

/// Runs `config`; with `takeover`, on the sockets of the ringway running
/// now, which is told to stop once this one serves.
fn run_from(config: &Config, file: Option<&Path>, takeover: bool) -> anyhow::Result<ExitCode> {
    init_logging(config.log_level.as_deref());
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let mut config = config.clone();
    raise_descriptor_limit(&mut config);
    let config = &config;
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR1, SIGUSR2]).context("installing signal handlers")?;
    let mut server = if takeover {
        let (mut old, inherited) = upgrade::wait_for_handover(config)?;
        match factory::start_inheriting(config, inherited) {
            Ok(server) => {
                upgrade::tell_ready(&mut old);
                server
            }
            Err(e) => {
                upgrade::tell_failed(&mut old, &e.to_string());
                return Err(anyhow::Error::from(e).context("starting on the handed-over sockets"));
            }
        }
    } else {
        factory::start(config).context("starting")?
    };
    let reload_requests = server.take_reload_requests();
    announce(config, server.local_addrs());
    notify_systemd("READY=1");
    // Signals, and reloads asked for on the admin listener, are handled
    // here, one at a time.
    let stop = 'serving: loop {
        for signal in signals.pending() {
            match signal {
                SIGHUP => {
                    match file {
                        Some(path) => {
                            tracing::info!("signal SIGHUP: reloading {}", path.display());
                            let _ = reload(&mut server, path, config);
                        }
                        None => {
                            tracing::info!(
                                "signal SIGHUP: no configuration file to read again (the proxy was \
                                 started from the command line); reloading TLS certificates only"
                            );
                            server.reload_certificates();
                        }
                    }
                    continue;
                }
                SIGUSR1 if server.reopen_logs() => {
                    tracing::info!("signal SIGUSR1: reopening the access logs");
                    continue;
                }
                SIGUSR2 => {
                    if upgrade::hand_over(&server, config) {
                        // The new process serves: this one drains and exits.
                        break 'serving Some(signal);
                    }
                    continue;
                }
                _ => {}
            }
            if !keeps_running(signal) {
                break 'serving Some(signal);
            }
        }
        if let Some(requests) = &reload_requests {
            if let Ok(answer) = requests.recv_timeout(std::time::Duration::from_millis(100)) {
                let result = match file {
                    Some(path) => {
                        tracing::info!("admin: reloading {}", path.display());
                        reload(&mut server, path, config)
                    }
                    None => Err(
                        "no configuration file to read again: the proxy was started from the command line"
                            .to_owned(),
                    ),
                };
                let _ = answer.send(result);
            }
        } else {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    };
    if let Some(signal) = stop {
        tracing::info!(
            "signal {}: stopping; finishing in-flight requests (up to {:?})",
            signal_name(signal),
            config.shutdown_timeout
        );
    }
    // Reloads asked for from now on fail at once instead of waiting for
    // this loop.
    drop(reload_requests);
    if stop == Some(SIGUSR2) {
        // Handed over: the new process is the service now (it said
        // MAINPID), so no STOPPING=1; idle keep-alive connections get one
        // more answer.
        server.shutdown_gently();
    } else {
        notify_systemd("STOPPING=1");
        server.shutdown();
    }
    // A second stop signal while draining stops at once.
    std::thread::spawn(move || {
        if signals.forever().any(|signal| !keeps_running(signal)) {
            eprintln!("ringway: second signal, exiting now");
            std::process::exit(130);
        }
    });
    server.wait();
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Says where each listener serves (at start, and after a reload).
fn announce(config: &Config, addrs: &[std::net::SocketAddr]) {
    for (listener, addr) in config.listeners.iter().zip(addrs) {
        match listener.mode {
            ListenerMode::Reverse { .. } => {
                tracing::info!("listener {:?}: reverse proxy on {addr}", listener.spec.name);
            }
            ListenerMode::Tcp { upstream } => {
                let name = config.upstreams.get(upstream).map_or("?", |u| u.name.as_str());
                tracing::info!(
                    "listener {:?}: tcp proxy on {addr} to upstream {name:?}",
                    listener.spec.name
                );
            }
            ListenerMode::Forward { .. } => {
                tracing::info!("listener {:?}: forward proxy on {addr}", listener.spec.name);
                let scheme = if listener.tls.is_some() { "https" } else { "http" };
                println!(
                    "ringway: forward proxy on {addr}; try: curl -x {scheme}://{addr} https://example.com"
                );
            }
        }
    }
}

/// Reads `path` again and serves it, if it is valid; otherwise logs why
/// and keeps the running configuration. Returns what the log says.
fn reload(server: &mut factory::Running, path: &Path, running: &Config) -> Result<Vec<String>, String> {
    notify_systemd("RELOADING=1");
    let result = match config::load(path) {
        Err(e) => Err(format!(
            "the configuration was not reloaded; the running one stays:\n{e}"
        )),
        Ok(mut next) => {
            for warning in &next.warnings {
                tracing::warn!("{warning}");
            }
            // A limit ringway fitted to the descriptors stays fitted.
            if !next.max_connections_set {
                next.max_connections = running.max_connections;
            }
            let announced = next.clone();
            let reloaded = server
                .reload(next)
                .map_err(|e| format!("the configuration was not reloaded; the running one stays: {e}"));
            if reloaded.is_ok() {
                announce(&announced, server.local_addrs());
            }
            reloaded
        }
    };
    match &result {
        Ok(notes) => {
            for note in notes {
                tracing::warn!("reload: {note}");
            }
            tracing::info!("configuration reloaded from {}", path.display());
        }
        Err(e) => tracing::error!("{e}"),
    }
    notify_systemd("READY=1");
    result
}

/// Tells systemd (a `Type=notify` service) how the service stands, when
/// it runs under systemd (`NOTIFY_SOCKET` is set); otherwise nothing.
pub(crate) fn notify_systemd(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = socket.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        // An abstract socket: a leading NUL instead of the @.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
        }
        None => std::os::unix::net::SocketAddr::from_pathname(Path::new(&socket)),
    };
    let Ok(addr) = addr else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else {
        return;
    };
    let message = if state == "RELOADING=1" {
        // systemd 253+ wants the time of the reload with it.
        format!("RELOADING=1\nMONOTONIC_USEC={}", ringway_core::monotonic_micros())
    } else {
        state.to_owned()
    };
    let _ = sock.send_to_addr(message.as_bytes(), &addr);
}

/// `ringway reload FILE`: checks FILE, then asks the running ringway to
/// serve it through its admin listener (`[admin]` in FILE says where).
fn reload_command(path: &Path) -> anyhow::Result<ExitCode> {
    let config = match config::load(path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{e}");
            eprintln!("ringway: not reloaded: the running configuration stays");
            return Ok(ExitCode::from(1));
        }
    };
    let Some(admin) = &config.admin else {
        anyhow::bail!(
            "{} has no [admin] listener to ask: add one, or send SIGHUP (systemctl reload ringway; kill -HUP $(pidof ringway))",
            path.display()
        );
    };
    let mut stream = std::net::TcpStream::connect(admin.listen).with_context(|| {
        format!(
            "connecting to the admin listener at {} (is ringway running?)",
            admin.listen
        )
    })?;
    let auth = admin
        .token
        .as_deref()
        .map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    use std::io::{Read, Write};
    stream.write_all(
        format!(
            "POST /reload HTTP/1.1\r\nHost: ringway\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
    let ok = head.starts_with("HTTP/1.1 200");
    if ok {
        print!("{body}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprint!("{body}");
        Ok(ExitCode::from(1))
    }
}

/// Raises the open-file limit to the hard limit, and fits the connection
/// limit to it: each client connection may hold an upstream connection
/// too, and each worker a few descriptors of its own. The default
/// `max_connections` is lowered to what the descriptors cover (as HAProxy
/// derives maxconn from the limit), so that connections past it are closed
/// at once and counted instead of waiting on failed accepts; one set in the
/// file is kept, with a warning when the descriptors cannot cover it.
fn raise_descriptor_limit(config: &mut Config) {
    let workers = config.runtime.workers.max(1) as u64;
    let reserve = 64 * workers + 64;
    let needed = |per_worker: u64| {
        workers
            .saturating_mul(per_worker)
            .saturating_mul(2)
            .saturating_add(reserve)
    };
    let limit = match ringway_core::rlimit::raise_open_files() {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!("cannot read the file descriptor limit: {e}");
            return;
        }
    };
    if limit.now > limit.before {
        tracing::info!(
            "file descriptor limit raised from {} to {}",
            limit.before,
            limit.now
        );
    } else {
        tracing::info!("file descriptor limit {}", limit.now);
    }
    if limit.now >= needed(config.max_connections as u64) {
        return;
    }
    let fits = (limit.now.saturating_sub(reserve) / (2 * workers)).max(1);
    if config.max_connections_set {
        tracing::warn!(
            "the file descriptor limit ({}) cannot cover {workers} workers x max_connections {} \
             (a client and an upstream descriptor each: {}); it covers {fits} per worker, and past \
             that new connections wait in the accept queue. Raise the hard limit (LimitNOFILE= in \
             a service file, ulimit -Hn) or lower [runtime] max_connections",
            limit.now,
            config.max_connections,
            needed(config.max_connections as u64)
        );
    } else {
        config.max_connections = fits as usize;
        tracing::info!(
            "max_connections {fits} per worker: what {} descriptors cover for {workers} workers \
             (set [runtime] max_connections, or raise the hard limit, for more)",
            limit.now
        );
    }
}

/// Whether `signal` leaves ringway running (after saying what it does):
/// SIGHUP and SIGUSR1, which `systemctl reload` and logrotate send, and
/// SIGUSR2, must never stop a proxy that serves traffic (SIGHUP reloads
/// and SIGUSR1 reopens the logs before this is asked).
fn keeps_running(signal: i32) -> bool {
    match signal {
        // While serving, SIGHUP reloads before it gets here.
        SIGHUP => tracing::warn!("signal SIGHUP: received while stopping; not reloaded"),
        SIGUSR1 => {
            tracing::info!("signal SIGUSR1: received; no access log is kept, so there is no file to reopen")
        }
        SIGUSR2 => tracing::info!("signal SIGUSR2: received while stopping; ignored"),
        _ => return false,
    }
    true
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGUSR2 => "SIGUSR2 (handed over)",
        _ => "?",
    }
}
