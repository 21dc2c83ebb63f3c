//! Wiring: from the validated configuration to running workers.
//!
//! This is the one place where every layer meets, in order: the server
//! settings (core), then on each worker thread one upstream pool and one
//! DNS resolver shared by that worker's listeners, and per listener its
//! handler (reverse: the route table and per-worker balancers; forward: the
//! ACL, authentication and PAC settings) inside an HTTP engine, or for a
//! tcp listener its L4 balancer; a TLS listener's acceptor runs the
//! handshake first; and once per process the prober: the health checks of
//! the upstreams that have them, and the lookups that follow servers given
//! by name, and the watcher that reloads certificates whose files changed.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use monoio::net::TcpStream;
use ringway_core::{dns::Resolver, ConnCtx, Rejected, ServerConfig, ServerHandle, WorkerApp, WorkerInfo};
use ringway_http::{
    access_log::{AccessLogger, LogFormat, LogPath, LogSink, LogWriter},
    metrics::{ListenerMetrics, UpstreamMetrics},
    ClientInfo, ClientStream, Engine, ForwardHandler, PeerTls, Prober, ProxyHooks, ReverseHandler,
    TcpBalancer, TunnelOptions, UpstreamPool,
};
use ringway_tls::{Acceptor, CertStore};

use crate::{
    admin::{self, AdminServer, Registry, WorkerMetrics},
    config::{Config, ListenerMode},
};

/// One listener's engine on one worker (shared with its connections'
/// tasks, which each hold it).
enum ListenerEngine {
    Reverse(Rc<Engine<ReverseHandler>>),
    Forward(Rc<Engine<ForwardHandler>>),
    Tcp(Rc<TcpBalancer>),
}

/// Everything one worker serves with.
struct WorkerListeners {
    engines: Vec<(ListenerEngine, SocketAddr, Option<Rc<TlsListener>>)>,
    pool: Rc<UpstreamPool>,
}

/// A TLS listener's acceptor on one worker.
struct TlsListener {
    name: Rc<str>,
    acceptor: Acceptor,
    /// The listener's counters on this worker, where kept.
    metrics: Option<Arc<ListenerMetrics>>,
}

/// Runs the TLS handshake, then serves the connection with `engine`. A
/// failed or stalled handshake costs the connection and one log line.
async fn serve_tls<H: ProxyHooks>(
    tls: Rc<TlsListener>,
    engine: Rc<Engine<H>>,
    stream: TcpStream,
    mut client: ClientInfo,
    conn: ConnCtx,
) where
    ringway_http::TlsClient: ClientStream,
{
    let accepted = tls.acceptor.accept(stream).await;
    if let Some(m) = &tls.metrics {
        m.tls_handshakes[usize::from(accepted.is_err())].add(1);
    }
    match accepted {
        Ok((stream, info)) => {
            client.tls = Some(Rc::new(info));
            engine.serve(stream, client, conn).await;
        }
        Err(e) => {
            tracing::info!(
                listener = &*tls.name,
                client = %client.peer,
                sni = e.sni.as_deref().unwrap_or("-"),
                "TLS handshake failed: {}",
                e.error
            );
        }
    }
}

impl WorkerApp for WorkerListeners {
    fn serve(
        &self,
        listener: usize,
        stream: TcpStream,
        peer: SocketAddr,
        conn: ConnCtx,
    ) -> impl Future<Output = ()> + 'static {
        // Each engine's connection future is boxed at its own size (one
        // allocation per connection): inline, every task would be sized
        // for the largest of the modes.
        let serve: Pin<Box<dyn Future<Output = ()>>> = match self.engines.get(listener) {
            None => Box::pin(std::future::ready(())),
            Some((engine, local, tls)) => {
                let client = ClientInfo::new(peer, *local);
                match (engine, tls) {
                    (ListenerEngine::Reverse(e), None) => Box::pin(Rc::clone(e).serve(stream, client, conn)),
                    (ListenerEngine::Forward(e), None) => Box::pin(Rc::clone(e).serve(stream, client, conn)),
                    (ListenerEngine::Reverse(e), Some(tls)) => {
                        Box::pin(serve_tls(Rc::clone(tls), Rc::clone(e), stream, client, conn))
                    }
                    (ListenerEngine::Forward(e), Some(tls)) => {
                        Box::pin(serve_tls(Rc::clone(tls), Rc::clone(e), stream, client, conn))
                    }
                    (ListenerEngine::Tcp(b), _) => Box::pin(Rc::clone(b).serve(stream, client, conn)),
                }
            }
        };
        serve
    }

    fn housekeeping(&self, now_ms: u64) -> bool {
        self.pool.close_stale(now_ms);
        self.flush_logs();
        ringway_http::release_unused_buffers()
    }

    fn rejected(&self, listener: usize, peer: SocketAddr, why: Rejected) {
        match self.engines.get(listener) {
            Some((ListenerEngine::Reverse(e), local, _)) => e.log_rejected(peer, *local, why.name()),
            Some((ListenerEngine::Forward(e), local, _)) => e.log_rejected(peer, *local, why.name()),
            _ => {}
        }
    }

    fn stopped(&self) {
        self.flush_logs();
    }
}

impl WorkerListeners {
    /// Hands every listener's buffered log lines to the writer.
    fn flush_logs(&self) {
        for (engine, ..) in &self.engines {
            let log = match engine {
                ListenerEngine::Reverse(e) => e.access_log(),
                ListenerEngine::Forward(e) => e.access_log(),
                ListenerEngine::Tcp(_) => None,
            };
            if let Some(log) = log {
                log.flush();
            }
        }
    }
}

/// A running server: its workers, the process's health prober, and the
/// watcher of its certificate files.
pub struct Running {
    server: ServerHandle,
    /// Stops (and joins) with the server.
    prober: Option<Prober>,
    certs: Arc<Vec<(String, Arc<CertStore>)>>,
    watcher: Option<CertWatcher>,
    /// Writes the access logs; ends after the workers.
    logs: Option<LogWriter>,
    /// The admin listener, if configured.
    admin: Option<AdminServer>,
}

impl Running {
    /// Waits until the workers have stopped (after a shutdown), then stops
    /// the health checks and the certificate watcher.
    pub fn wait(self) {
        self.server.wait();
        drop(self.admin);
        drop(self.prober);
        drop(self.watcher);
        // Last: the workers handed over their lines as they stopped.
        drop(self.logs);
    }

    /// The admin listener's address, if there is one.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::addr)
    }

    /// Opens the access-log files again by their paths (SIGUSR1, after
    /// logrotate moved them). Returns whether there are any.
    pub fn reopen_logs(&self) -> bool {
        match &self.logs {
            Some(logs) => {
                logs.reopen();
                true
            }
            None => false,
        }
    }

    /// Loads every TLS listener's certificates again (SIGHUP): new
    /// handshakes use the new ones; a listener whose files fail to load
    /// keeps its old ones, and the log says why.
    pub fn reload_certificates(&self) {
        for (listener, store) in self.certs.iter() {
            match store.reload() {
                Ok(()) => tracing::info!(
                    listener = %listener,
                    "certificates reloaded ({} certificates)",
                    store.files().len()
                ),
                Err(e) => {
                    tracing::error!(listener = %listener, "certificates not reloaded, the old ones stay: {e}")
                }
            }
        }
    }
}

/// Reloads certificates whose files changed, looking every few seconds.
struct CertWatcher {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How often certificate files are looked at.
const CERT_CHECK_INTERVAL: Duration = Duration::from_secs(2);

impl CertWatcher {
    fn start(certs: Arc<Vec<(String, Arc<CertStore>)>>) -> std::io::Result<Option<Self>> {
        if certs.is_empty() {
            return Ok(None);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ringway-certs".to_owned())
            .spawn(move || {
                let step = Duration::from_millis(100);
                let mut waited = Duration::ZERO;
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(step);
                    waited += step;
                    if waited < CERT_CHECK_INTERVAL {
                        continue;
                    }
                    waited = Duration::ZERO;
                    for (listener, store) in certs.iter() {
                        match store.reload_if_changed() {
                            Ok(false) => {}
                            Ok(true) => {
                                tracing::info!(listener = %listener, "certificate files changed: reloaded")
                            }
                            Err(e) => tracing::error!(
                                listener = %listener,
                                "certificate files changed but do not load, the old ones stay: {e}"
                            ),
                        }
                    }
                }
            })?;
        Ok(Some(Self {
            stop,
            thread: Some(thread),
        }))
    }
}

impl Drop for CertWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::ops::Deref for Running {
    type Target = ServerHandle;

    fn deref(&self) -> &ServerHandle {
        &self.server
    }
}

/// Starts the server described by `config`: binds its listeners, runs its
/// workers and the health checks of its upstreams; fails, with nothing
/// left running, when a listener cannot be bound or a worker or the prober
/// cannot start.
pub fn start(config: &Config) -> std::io::Result<Running> {
    let checks = config
        .health_checks
        .iter()
        .filter_map(|(group, check)| Some((Arc::clone(config.upstreams.get(*group)?), check.clone())))
        .collect();
    let server = ServerConfig {
        runtime: config.runtime.clone(),
        listeners: config.listeners.iter().map(|l| l.spec.clone()).collect(),
        max_connections: config.max_connections,
        max_connections_per_ip: config.max_connections_per_ip,
        shutdown_timeout: config.shutdown_timeout,
        timer_tick: config.timer_tick,
    };
    let upstreams = config.upstreams.clone();
    let dns = Arc::clone(&config.dns);
    let certs: Arc<Vec<_>> = Arc::new(
        config
            .listeners
            .iter()
            .filter_map(|l| Some((l.spec.name.clone(), Arc::clone(l.tls.as_ref()?.store()))))
            .collect(),
    );
    let (logs, sinks) = start_logs(config)?;
    let registry = config.admin.as_ref().map(|_| Arc::new(Registry::default()));
    let shared = config.clone();
    let worker_registry = registry.clone();
    let server = ringway_core::start(server, move |worker: &WorkerInfo| {
        build_worker(&shared, &sinks, worker_registry.as_deref(), worker)
    })?;
    let admin = match (&config.admin, registry) {
        (Some(admin), Some(registry)) => {
            let running = admin::Running {
                registry,
                stats: server.stats(),
                workers: server.workers(),
                addrs: server.local_addrs(),
                logs: logs.as_ref().map(LogWriter::stats),
            };
            Some(AdminServer::start(admin, config, running)?)
        }
        _ => None,
    };
    let prober = Prober::start(checks, &upstreams, dns)?;
    let watcher = CertWatcher::start(Arc::clone(&certs))?;
    Ok(Running {
        server,
        prober,
        certs,
        watcher,
        logs,
        admin,
    })
}

/// Each listener's access log: its format and where its lines go.
type ListenerLogs = Vec<Option<(Arc<LogFormat>, LogSink)>>;

/// Opens the access-log files (each path once, however many listeners
/// share it) and starts their writer.
fn start_logs(config: &Config) -> std::io::Result<(Option<LogWriter>, ListenerLogs)> {
    let mut paths: Vec<LogPath> = Vec::new();
    for spec in config.listeners.iter().filter_map(|l| l.access_log.as_ref()) {
        if !paths.contains(&spec.path) {
            paths.push(spec.path.clone());
        }
    }
    if paths.is_empty() {
        return Ok((None, vec![None; config.listeners.len()]));
    }
    let (writer, sinks) = LogWriter::start(&paths)?;
    let per_listener = config
        .listeners
        .iter()
        .map(|l| {
            let spec = l.access_log.as_ref()?;
            let file = paths.iter().position(|p| *p == spec.path)?;
            Some((Arc::clone(&spec.format), sinks[file].clone()))
        })
        .collect();
    Ok((Some(writer), per_listener))
}

/// Each upstream's servers' TLS identities on one worker (`None` for a
/// plain upstream), by group and server index.
fn peer_tls(config: &Config) -> Vec<Vec<Option<Rc<PeerTls>>>> {
    config
        .upstreams
        .iter()
        .zip(&config.upstream_tls)
        .map(|(group, connector)| {
            group
                .servers
                .iter()
                .map(|server| {
                    let connector = connector.as_ref()?;
                    Some(Rc::new(PeerTls::new(
                        connector.clone(),
                        server.host.as_deref(),
                        server.addr.ip(),
                    )))
                })
                .collect()
        })
        .collect()
}

fn build_worker(
    config: &Config,
    logs: &ListenerLogs,
    registry: Option<&Registry>,
    worker: &WorkerInfo,
) -> WorkerListeners {
    let pool = Rc::new(UpstreamPool::new(config.pool));
    // Counted only where an admin listener can read them.
    let upstream_metrics =
        registry.map(|_| Arc::new(UpstreamMetrics::new(config.upstreams.iter().map(|g| g.len()))));
    let mut listener_metrics = Vec::with_capacity(config.listeners.len());
    let resolver = Rc::new(Resolver::new(config.dns.clone()));
    let peer_tls = Rc::new(peer_tls(config));
    let engines = config
        .listeners
        .iter()
        .zip(logs)
        .map(|(l, log)| {
            let name = &l.spec.name;
            let engine_settings = l.settings.clone();
            let logger = || {
                log.as_ref()
                    .map(|(format, sink)| AccessLogger::new(Arc::clone(format), sink.clone()))
            };
            let metrics = registry.and_then(|_| match &l.mode {
                ListenerMode::Reverse { route_count, .. } => {
                    Some(Arc::new(ListenerMetrics::new(*route_count, 0)))
                }
                ListenerMode::Forward { settings } => {
                    Some(Arc::new(ListenerMetrics::new(0, settings.acl.rules.len())))
                }
                ListenerMode::Tcp { .. } => None,
            });
            listener_metrics.push(metrics.clone());
            let engine = match &l.mode {
                ListenerMode::Reverse { routes, .. } => {
                    let mut handler = ReverseHandler::new(routes.clone(), &config.upstreams, worker.index)
                        .with_tls(Rc::clone(&peer_tls));
                    if let Some(m) = &upstream_metrics {
                        handler = handler.with_metrics(Arc::clone(m));
                    }
                    let engine = Engine::new(name, handler, engine_settings, Rc::clone(&pool));
                    ListenerEngine::Reverse(Rc::new(observed(engine, logger(), metrics.clone())))
                }
                ListenerMode::Forward { settings } => {
                    let handler = ForwardHandler::new(
                        settings.clone(),
                        Rc::clone(&resolver),
                        Arc::clone(&worker.own_addresses),
                    );
                    let engine = Engine::new(name, handler, engine_settings, Rc::clone(&pool));
                    ListenerEngine::Forward(Rc::new(observed(engine, logger(), metrics.clone())))
                }
                ListenerMode::Tcp { upstream } => {
                    let tunnel = TunnelOptions {
                        idle: engine_settings.timeouts.tunnel_idle,
                        splice: engine_settings.splice,
                    };
                    let group = Arc::clone(&config.upstreams[*upstream]);
                    let connect = engine_settings.timeouts.connect;
                    ListenerEngine::Tcp(Rc::new(TcpBalancer::new(
                        name,
                        group,
                        worker.index,
                        connect,
                        tunnel,
                    )))
                }
            };
            let tls = l.tls.as_ref().map(|acceptor| {
                Rc::new(TlsListener {
                    name: Rc::from(name.as_str()),
                    acceptor: acceptor.clone(),
                    metrics: metrics.clone(),
                })
            });
            (engine, l.spec.addr, tls)
        })
        .collect();
    if let (Some(registry), Some(upstreams)) = (registry, upstream_metrics) {
        let metrics = WorkerMetrics {
            listeners: listener_metrics,
            upstreams,
        };
        registry.register(worker.index, metrics);
    }
    WorkerListeners { engines, pool }
}

/// `engine` with its access log and counters, where kept.
fn observed<H: ProxyHooks>(
    mut engine: Engine<H>,
    log: Option<AccessLogger>,
    metrics: Option<Arc<ListenerMetrics>>,
) -> Engine<H> {
    if let Some(log) = log {
        engine = engine.with_access_log(log);
    }
    if let Some(metrics) = metrics {
        engine = engine.with_metrics(metrics);
    }
    engine
}
