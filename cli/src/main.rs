//! `ringway`: the binary. Parses the command line, loads and validates the
//! configuration, starts the workers and stops them on SIGINT/SIGTERM.

mod config;
mod factory;
mod locate;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context;
use clap::{Parser, Subcommand};
use ringway_balancer::UpstreamGroup;
use ringway_core::{DriverChoice, ListenerSpec, RuntimeConfig};
use ringway_http::{EngineSettings, PoolSettings, RouteSpec, RouteTable};
use signal_hook::{consts::signal::*, iterator::Signals};

use crate::config::{Config, Listener, ListenerMode};

/// The configuration `ringway` runs with when given no arguments.
const DEFAULT_CONFIG: &str = include_str!("../../examples/default.toml");

#[derive(Debug, Parser)]
#[command(
    name = "ringway",
    version,
    about = "A forward and reverse HTTP proxy on thread-per-core io_uring runtimes"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run with a configuration file.
    Run {
        /// The TOML configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Validate a configuration file and print a summary (exit 1 on errors).
    Check {
        /// The TOML configuration file.
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run a reverse proxy from the command line, no file needed.
    Reverse {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// An upstream server (repeat for several; round robin).
        #[arg(long, required = true)]
        upstream: Vec<SocketAddr>,
        /// Worker threads (default: one per CPU).
        #[arg(long)]
        workers: Option<usize>,
        /// I/O driver: auto, uring or legacy.
        #[arg(long, default_value = "auto")]
        driver: String,
        /// Do not pin workers to CPUs.
        #[arg(long)]
        no_pin: bool,
        /// Log one line per request.
        #[arg(long)]
        access_log: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => parse_embedded_default().and_then(|c| run(&c)),
        Some(Command::Run { config }) => load(&config).and_then(|c| run(&c)),
        Some(Command::Check { config }) => check(&config),
        Some(Command::Reverse {
            listen,
            upstream,
            workers,
            driver,
            no_pin,
            access_log,
        }) => quick_reverse(listen, upstream, workers, &driver, !no_pin, access_log).and_then(|c| run(&c)),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ringway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(config::load(path)?)
}

fn parse_embedded_default() -> anyhow::Result<Config> {
    Ok(config::parse(
        std::path::Path::new("<embedded default>"),
        DEFAULT_CONFIG,
    )?)
}

fn check(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    match config::load(path) {
        Ok(c) => {
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
fn summary(path: &std::path::Path, c: &Config) -> String {
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
            ListenerMode::Reverse { route_count, .. } => {
                let _ = writeln!(
                    out,
                    "listener {:?}: {} reverse, {route_count} routes",
                    l.spec.name, l.spec.addr
                );
            }
        }
    }
    for u in &c.upstreams {
        let servers: Vec<String> = u.servers.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "upstream {:?}: {}", u.name, servers.join(", "));
    }
    out
}

fn quick_reverse(
    listen: SocketAddr,
    upstream: Vec<SocketAddr>,
    workers: Option<usize>,
    driver: &str,
    pin_cpus: bool,
    access_log: bool,
) -> anyhow::Result<Config> {
    let mut runtime = RuntimeConfig {
        driver: driver.parse().map_err(anyhow::Error::msg)?,
        pin_cpus,
        ..RuntimeConfig::default()
    };
    if let Some(n) = workers {
        anyhow::ensure!(n >= 1, "--workers must be at least 1");
        runtime.workers = n;
    }
    let routes = RouteTable::new(&[RouteSpec {
        host: None,
        path_prefix: "/".into(),
        upstream: 0,
    }])
    .map_err(anyhow::Error::msg)?;
    Ok(Config {
        runtime,
        max_connections: 100_000,
        shutdown_timeout: std::time::Duration::from_secs(30),
        log_level: None,
        listeners: vec![Listener {
            spec: ListenerSpec::new("reverse", listen),
            mode: ListenerMode::Reverse {
                routes: Arc::new(routes),
                route_count: 1,
            },
            settings: EngineSettings {
                access_log,
                ..EngineSettings::default()
            },
        }],
        upstreams: vec![UpstreamGroup {
            name: "default".into(),
            servers: upstream,
        }],
        pool: PoolSettings::default(),
    })
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

fn run(config: &Config) -> anyhow::Result<ExitCode> {
    init_logging(config.log_level.as_deref());
    let mut signals = Signals::new([SIGINT, SIGTERM]).context("installing signal handlers")?;
    let server = factory::start(config).context("starting")?;
    for (listener, addr) in config.listeners.iter().zip(server.local_addrs()) {
        let mode = match listener.mode {
            ListenerMode::Reverse { .. } => "reverse proxy",
        };
        tracing::info!("listener {:?}: {mode} on {addr}", listener.spec.name);
    }
    if let Some(signal) = signals.forever().next() {
        tracing::info!(
            "signal {signal}: stopping; finishing in-flight requests (up to {:?})",
            config.shutdown_timeout
        );
    }
    server.shutdown();
    // A second signal while draining stops at once.
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            eprintln!("ringway: second signal, exiting now");
            std::process::exit(130);
        }
    });
    server.wait();
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}
