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
        Arc, Mutex, PoisonError,
    },
    time::Duration,
};

use monoio::net::TcpStream;
use ringway_core::{
    dns::Resolver, handover::Inherited, ConnCtx, Rejected, ServerConfig, ServerHandle, WorkerApp, WorkerInfo,
};
use ringway_http::{
    access_log::{AccessLogger, LogFormat, LogPath, LogSink, LogWriter},
    matching::IpNet,
    metrics::{ListenerMetrics, UpstreamMetrics},
    ClientInfo, ClientStream, Engine, ForwardHandler, PeerTls, PoolSettings, Prober, ProxyHooks,
    ReverseHandler, TcpBalancer, TunnelOptions, UpstreamPool,
};
use ringway_tls::{Acceptor, CertStore};

use crate::{
    admin::{self, AdminServer, Registry, WorkerMetrics},
    config::{Config, ListenerMode},
};

/// One listener's engine on one worker (shared with its connections'
/// tasks, which each hold it).
#[derive(Clone)]
enum ListenerEngine {
    Reverse(Rc<Engine<ReverseHandler>>),
    Forward(Rc<Engine<ForwardHandler>>),
    Tcp(Rc<TcpBalancer>),
}

/// Everything one worker serves with.
struct WorkerListeners {
    /// Each listener's engine, in configuration order.
    engines: Vec<ListenerSlot>,
    pool: Rc<UpstreamPool>,
    pool_settings: PoolSettings,
    resolver: Rc<Resolver>,
    dns: Arc<ringway_core::dns::DnsConfig>,
    upstream_metrics: Option<Arc<UpstreamMetrics>>,
    /// This worker's cache layers (their counts survive a reload that
    /// keeps their store).
    caches: ringway_http::cache::CacheLayers,
}

/// One listener on one worker.
struct ListenerSlot {
    engine: ListenerEngine,
    /// Its address, as clients reach it.
    local: SocketAddr,
    /// Its TLS acceptor, on an HTTPS listener.
    tls: Option<Rc<TlsListener>>,
    /// Its name (a reload keeps its counters by it).
    name: Rc<str>,
    /// The balancers whose connections start with a PROXY header.
    proxy_from: Option<Arc<[IpNet]>>,
    /// How long such a header may take.
    head_timeout: Duration,
    /// Its routes reach an upstream that gets a PROXY header, which names
    /// the address the client connected to: read it from the socket (a
    /// wildcard or port-0 listener's configured address would not do).
    real_local: bool,
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
        let Some(slot) = self.engines.get(listener) else {
            let done: Pin<Box<dyn Future<Output = ()>>> = Box::pin(std::future::ready(()));
            return done;
        };
        match &slot.proxy_from {
            // A balancer allowed to send a PROXY header: the client is who
            // it says.
            Some(from) if from.iter().any(|net| net.contains(peer.ip())) => {
                let (engine, tls, local, timeout) = (
                    slot.engine.clone(),
                    slot.tls.clone(),
                    slot.local,
                    slot.head_timeout,
                );
                let name = Rc::clone(&slot.name);
                let real_local = slot.real_local;
                Box::pin(async move {
                    let mut stream = stream;
                    match ringway_http::proxy_protocol::read_header(&mut stream, timeout).await {
                        Ok(header) => {
                            // The address the client reached, as the
                            // balancer saw it, else this socket's.
                            let local = match header.destination {
                                Some(destination) => destination,
                                None if real_local => stream.local_addr().unwrap_or(local),
                                None => local,
                            };
                            let client = ClientInfo::new(header.source.unwrap_or(peer), local);
                            serve_engine(&engine, tls.as_ref(), stream, client, conn).await;
                        }
                        Err(e) => {
                            tracing::info!(listener = &*name, balancer = %peer, "connection closed: {e}");
                        }
                    }
                })
            }
            _ => {
                let local = if slot.real_local {
                    stream.local_addr().unwrap_or(slot.local)
                } else {
                    slot.local
                };
                serve_engine(
                    &slot.engine,
                    slot.tls.as_ref(),
                    stream,
                    ClientInfo::new(peer, local),
                    conn,
                )
            }
        }
    }

    fn housekeeping(&self, now_ms: u64) -> bool {
        self.pool.close_stale(now_ms);
        self.flush_logs();
        ringway_http::release_unused_buffers()
    }

    fn rejected(&self, listener: usize, peer: SocketAddr, why: Rejected) {
        let Some(slot) = self.engines.get(listener) else {
            return;
        };
        match &slot.engine {
            ListenerEngine::Reverse(e) => e.log_rejected(peer, slot.local, why.name()),
            ListenerEngine::Forward(e) => e.log_rejected(peer, slot.local, why.name()),
            ListenerEngine::Tcp(b) => b.log_rejected(peer, slot.local, why.name()),
        }
    }

    fn stopped(&self) {
        self.flush_logs();
    }

    fn retired(&self) {
        for slot in &self.engines {
            match &slot.engine {
                ListenerEngine::Reverse(e) => e.retire(),
                ListenerEngine::Forward(e) => e.retire(),
                // Relays end on their own; their lines go out as they come.
                ListenerEngine::Tcp(b) => {
                    if let Some(log) = b.access_log() {
                        log.unbuffer();
                    }
                }
            }
        }
    }
}

/// The connection's future on `engine`, boxed at its own size (one
/// allocation per connection): inline, every task would be sized for the
/// largest of the modes.
fn serve_engine(
    engine: &ListenerEngine,
    tls: Option<&Rc<TlsListener>>,
    stream: TcpStream,
    client: ClientInfo,
    conn: ConnCtx,
) -> Pin<Box<dyn Future<Output = ()>>> {
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

impl WorkerListeners {
    /// The counters of the listener named `name`, if it keeps them.
    fn metrics_of(&self, name: &str) -> Option<Arc<ListenerMetrics>> {
        self.engines
            .iter()
            .find(|slot| &*slot.name == name)
            .and_then(|slot| {
                let metrics = match &slot.engine {
                    ListenerEngine::Reverse(e) => e.metrics(),
                    ListenerEngine::Forward(e) => e.metrics(),
                    ListenerEngine::Tcp(_) => None,
                };
                metrics.cloned()
            })
    }

    /// Hands every listener's buffered log lines to the writer.
    fn flush_logs(&self) {
        for slot in &self.engines {
            let log = match &slot.engine {
                ListenerEngine::Reverse(e) => e.access_log(),
                ListenerEngine::Forward(e) => e.access_log(),
                ListenerEngine::Tcp(b) => b.access_log(),
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
    /// What workers build their apps from.
    current: Arc<Mutex<Arc<Generation>>>,
    /// Reloads asked for on the admin listener, until the caller takes them.
    reload_requests: Option<std::sync::mpsc::Receiver<admin::ReloadRequest>>,
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

    /// Serves `config` from now on (SIGHUP, `ringway reload`): every worker
    /// builds its apps from it, keeping its upstream pool and DNS cache
    /// where their settings did not change, and its counters where the
    /// listener did not; new connections go to the new apps, connections
    /// in flight finish under the old ones and then close. Listeners whose
    /// address did not change keep their sockets; added ones are bound,
    /// removed ones closed. Health checks restart on the new upstreams,
    /// each server keeping the state its checks had found. What cannot
    /// change without a restart (`[runtime]`, `[admin]`) stays, and the
    /// returned notes say so. Fails, with the old configuration still
    /// serving, when a new listener cannot be bound or a log file opened.
    pub fn reload(&mut self, mut config: Config) -> Result<Vec<String>, String> {
        let mut notes = Vec::new();
        let old = Arc::clone(&self.current.lock().unwrap_or_else(PoisonError::into_inner));
        let before = &old.config;
        if config.runtime != before.runtime
            || config.max_connections != before.max_connections
            || config.max_connections_per_ip != before.max_connections_per_ip
            || config.shutdown_timeout != before.shutdown_timeout
            || config.upgrade_socket != before.upgrade_socket
        {
            notes.push("[runtime] changes apply at the next restart; the running values stay".to_owned());
            config.runtime = before.runtime.clone();
            config.max_connections = before.max_connections;
            config.max_connections_per_ip = before.max_connections_per_ip;
            config.shutdown_timeout = before.shutdown_timeout;
            config.upgrade_socket = before.upgrade_socket.clone();
        }
        if config.admin != before.admin {
            notes.push(
                "[admin] changes apply at the next restart; the admin listener stays as it is".to_owned(),
            );
            config.admin = before.admin.clone();
        }
        keep_health_state(before, &config);
        let logs = listener_logs(&config, &mut self.logs).map_err(|e| e.to_string())?;
        // The caches whose settings did not change keep what they hold;
        // new ones take in what their disk tier holds.
        for store in &mut config.caches {
            if let Some(kept) = before
                .caches
                .iter()
                .find(|old| old.settings() == store.settings())
            {
                *store = Arc::clone(kept);
            } else {
                open_disk(store).map_err(|e| e.to_string())?;
            }
        }
        let generation = Arc::new(Generation { config, logs });
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = Arc::clone(&generation);
        let config = &generation.config;
        if let Err(e) = self.server.rebuild(listener_specs(config)) {
            *self.current.lock().unwrap_or_else(PoisonError::into_inner) = old;
            return Err(e.to_string());
        }
        // The workers serve the new configuration from here on: what fails
        // below is said, not reported as a reload that did not happen.
        if let Some(admin) = &self.admin {
            admin.update(
                config,
                self.server.local_addrs(),
                self.logs.as_ref().map(LogWriter::stats),
            );
        }
        // The old prober stops before the new one starts: one set of checks.
        self.prober = None;
        match Prober::start(health_checks(config), &config.upstreams, Arc::clone(&config.dns)) {
            Ok(prober) => self.prober = prober,
            Err(e) => notes.push(format!(
                "health checks did not restart, servers are not checked: {e}"
            )),
        }
        self.watcher = None;
        self.certs = certificates(config);
        match CertWatcher::start(Arc::clone(&self.certs)) {
            Ok(watcher) => self.watcher = watcher,
            Err(e) => notes.push(format!("certificate files are not watched: {e}")),
        }
        Ok(notes)
    }

    /// Sends the listening sockets to a new ringway taking over (a binary
    /// upgrade) on `stream`; this one keeps serving until it stops.
    pub fn hand_over(&self, stream: &mut std::os::unix::net::UnixStream) -> std::io::Result<()> {
        self.server.hand_over(stream)
    }

    /// The reloads asked for on the admin listener (`POST /reload`), for
    /// the thread that owns the server to carry out; `None` without one.
    pub fn take_reload_requests(&mut self) -> Option<std::sync::mpsc::Receiver<admin::ReloadRequest>> {
        self.reload_requests.take()
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
    start_inheriting(config, Vec::new())
}

/// Like [`start`], on the listening sockets a running ringway handed over
/// (a binary upgrade; see [`Running::hand_over`]).
pub fn start_inheriting(config: &Config, inherited: Vec<Inherited>) -> std::io::Result<Running> {
    let taking_over = !inherited.is_empty();
    for store in &config.caches {
        open_disk(store)?;
    }
    let server = ServerConfig {
        runtime: config.runtime.clone(),
        listeners: listener_specs(config),
        max_connections: config.max_connections,
        max_connections_per_ip: config.max_connections_per_ip,
        shutdown_timeout: config.shutdown_timeout,
        timer_tick: config.timer_tick,
    };
    let mut logs = None;
    let sinks = listener_logs(config, &mut logs)?;
    let registry = config.admin.as_ref().map(|_| Arc::new(Registry::default()));
    let current = Arc::new(Mutex::new(Arc::new(Generation {
        config: config.clone(),
        logs: sinks,
    })));
    let building = Arc::clone(&current);
    let worker_registry = registry.clone();
    let build = move |worker: &WorkerInfo, old: Option<&WorkerListeners>| {
        let generation = Arc::clone(&building.lock().unwrap_or_else(PoisonError::into_inner));
        build_worker(&generation, worker_registry.as_deref(), worker, old)
    };
    let server = ringway_core::start_inheriting(server, build, inherited)?;
    let (reloads, reload_requests) = std::sync::mpsc::channel();
    let admin = || -> std::io::Result<Option<AdminServer>> {
        let (Some(admin), Some(registry)) = (&config.admin, registry) else {
            return Ok(None);
        };
        let running = admin::Running {
            registry,
            stats: server.stats(),
            workers: server.workers(),
            addrs: server.local_addrs(),
            logs: logs.as_ref().map(LogWriter::stats),
            reloads,
        };
        AdminServer::start(admin, config, running, taking_over).map(Some)
    };
    let certs = certificates(config);
    let rest = admin().and_then(|admin| {
        let prober = Prober::start(health_checks(config), &config.upstreams, Arc::clone(&config.dns))?;
        let watcher = CertWatcher::start(Arc::clone(&certs))?;
        Ok((admin, prober, watcher))
    });
    let (admin, prober, watcher) = match rest {
        Ok(started) => started,
        Err(e) => {
            // The workers are accepting already (on handed-over sockets,
            // maybe): the connections they took are answered before the
            // error is.
            server.shutdown_gently();
            server.wait();
            return Err(e);
        }
    };
    let reload_requests = admin.is_some().then_some(reload_requests);
    Ok(Running {
        server,
        prober,
        certs,
        watcher,
        logs,
        admin,
        current,
        reload_requests,
    })
}

/// Carries what active health checks found over a reload: a server of an
/// upstream of the same name, at the same address, keeps its state, so a
/// server held down is not sent requests until its checks pass again.
fn keep_health_state(before: &Config, after: &Config) {
    for group in &after.upstreams {
        let Some(old) = before.upstreams.iter().find(|g| g.name == group.name) else {
            continue;
        };
        for (i, server) in group.servers.iter().enumerate() {
            if let Some(j) = old
                .servers
                .iter()
                .position(|s| s.addr == server.addr && s.host == server.host)
            {
                group.health.set_up(i, old.health.is_up(j));
            }
        }
    }
}

/// The configuration workers build their apps from: the one they started
/// with, then each reload's.
struct Generation {
    config: Config,
    logs: ListenerLogs,
}

/// Makes a cache's disk directory if needed and takes in what it holds.
fn open_disk(store: &ringway_http::cache::Store) -> std::io::Result<()> {
    let settings = store.settings();
    let Some(disk) = &settings.disk else {
        return Ok(());
    };
    let loaded = store.open_disk().map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cache {:?}: disk tier {}: {e}",
                settings.name,
                disk.path.display()
            ),
        )
    })?;
    tracing::info!(
        cache = %settings.name,
        path = %disk.path.display(),
        "cache disk tier: {loaded} stored responses read back"
    );
    Ok(())
}

fn listener_specs(config: &Config) -> Vec<ringway_core::ListenerSpec> {
    config.listeners.iter().map(|l| l.spec.clone()).collect()
}

fn health_checks(config: &Config) -> Vec<(Arc<ringway_balancer::UpstreamGroup>, ringway_http::HealthCheck)> {
    config
        .health_checks
        .iter()
        .filter_map(|(group, check)| Some((Arc::clone(config.upstreams.get(*group)?), check.clone())))
        .collect()
}

fn certificates(config: &Config) -> Arc<Vec<(String, Arc<CertStore>)>> {
    Arc::new(
        config
            .listeners
            .iter()
            .filter_map(|l| Some((l.spec.name.clone(), Arc::clone(l.tls.as_ref()?.store()))))
            .collect(),
    )
}

/// Each listener's access log: its format and where its lines go.
type ListenerLogs = Vec<Option<(Arc<LogFormat>, LogSink)>>;

/// Each listener's access log, opening the files the writer does not have
/// yet (each path once, however many listeners share it), and starting the
/// writer the first time one is needed.
fn listener_logs(config: &Config, writer: &mut Option<LogWriter>) -> std::io::Result<ListenerLogs> {
    let mut paths: Vec<LogPath> = Vec::new();
    for spec in config.listeners.iter().filter_map(|l| l.access_log.as_ref()) {
        if !paths.contains(&spec.path) {
            paths.push(spec.path.clone());
        }
    }
    if paths.is_empty() {
        return Ok(vec![None; config.listeners.len()]);
    }
    let sinks = match writer {
        Some(writer) => writer.sinks_for(&paths)?,
        None => {
            let (started, sinks) = LogWriter::start(&paths)?;
            *writer = Some(started);
            sinks
        }
    };
    Ok(config
        .listeners
        .iter()
        .map(|l| {
            let spec = l.access_log.as_ref()?;
            let file = paths.iter().position(|p| *p == spec.path)?;
            Some((Arc::clone(&spec.format), sinks[file].clone()))
        })
        .collect())
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
    generation: &Generation,
    registry: Option<&Registry>,
    worker: &WorkerInfo,
    old: Option<&WorkerListeners>,
) -> WorkerListeners {
    let (config, logs) = (&generation.config, &generation.logs);
    // What a reload keeps: the idle upstream connections and the DNS cache,
    // where their settings did not change.
    let pool = match old {
        Some(old) if old.pool_settings == config.pool => Rc::clone(&old.pool),
        _ => Rc::new(UpstreamPool::new(config.pool)),
    };
    let resolver = match old {
        Some(old) if *old.dns == *config.dns => Rc::clone(&old.resolver),
        _ => Rc::new(Resolver::new(config.dns.clone())),
    };
    // Counted only where an admin listener can read them; a reload keeps
    // the counts of what did not change shape.
    let sizes: Vec<usize> = config.upstreams.iter().map(|g| g.len()).collect();
    let upstream_metrics = registry.map(|_| match old.and_then(|o| o.upstream_metrics.as_ref()) {
        Some(m) if m.groups.iter().map(|g| g.len()).eq(sizes.iter().copied()) => Arc::clone(m),
        _ => Arc::new(UpstreamMetrics::new(sizes.iter().copied())),
    });
    let mut listener_metrics = Vec::with_capacity(config.listeners.len());
    let peer_tls = Rc::new(peer_tls(config));
    // One layer per cache on this worker, shared by its listeners: misses
    // for one key coalesce whichever listener they came on.
    let caches: ringway_http::cache::CacheLayers = config
        .caches
        .iter()
        .map(|store| {
            // A kept store keeps its counts too.
            let kept = old.and_then(|o| {
                o.caches
                    .iter()
                    .find(|layer| Arc::ptr_eq(layer.store(), store))
                    .map(|layer| Arc::clone(layer.counters()))
            });
            ringway_http::cache::CacheLayer::new(Arc::clone(store), kept.unwrap_or_default())
        })
        .collect();
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
            let shape = match &l.mode {
                ListenerMode::Reverse { route_count, .. } => Some((*route_count, 0)),
                ListenerMode::Forward { settings } => Some((0, settings.acl.rules.len())),
                ListenerMode::Tcp { .. } => None,
            };
            let metrics = registry.and(shape).map(|(routes, rules)| {
                let kept = old
                    .and_then(|o| o.metrics_of(name))
                    .filter(|m| m.has_shape(routes, rules));
                kept.unwrap_or_else(|| Arc::new(ListenerMetrics::new(routes, rules)))
            });
            listener_metrics.push(metrics.clone());
            let engine = match &l.mode {
                ListenerMode::Reverse {
                    routes, route_caches, ..
                } => {
                    let mut handler = ReverseHandler::new(routes.clone(), &config.upstreams, worker.index)
                        .with_tls(Rc::clone(&peer_tls));
                    if route_caches.iter().any(Option::is_some) {
                        handler = handler.with_caches(Rc::clone(&caches), Arc::clone(route_caches));
                    }
                    if let Some(m) = &upstream_metrics {
                        handler = handler.with_metrics(Arc::clone(m));
                    }
                    let engine = Engine::new(name, handler, engine_settings, Rc::clone(&pool));
                    ListenerEngine::Reverse(Rc::new(observed(engine, logger(), metrics.clone())))
                }
                ListenerMode::Forward { settings } => {
                    let mut handler = ForwardHandler::new(
                        settings.clone(),
                        Rc::clone(&resolver),
                        Arc::clone(&worker.own_addresses),
                    );
                    if settings.cache.is_some() {
                        handler = handler.with_caches(Rc::clone(&caches));
                    }
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
                    let balancer = TcpBalancer::new(name, group, worker.index, connect, tunnel);
                    ListenerEngine::Tcp(Rc::new(match logger() {
                        Some(log) => balancer.with_access_log(log),
                        None => balancer,
                    }))
                }
            };
            let tls = l.tls.as_ref().map(|acceptor| {
                Rc::new(TlsListener {
                    name: Rc::from(name.as_str()),
                    acceptor: acceptor.clone(),
                    metrics: metrics.clone(),
                })
            });
            ListenerSlot {
                engine,
                local: l.spec.addr,
                tls,
                name: Rc::from(name.as_str()),
                proxy_from: l.proxy_protocol.clone(),
                head_timeout: l.settings.timeouts.client_head,
                real_local: match &l.mode {
                    ListenerMode::Reverse {
                        routes, route_count, ..
                    } => (0..*route_count).any(|r| {
                        routes
                            .spec(r)
                            .and_then(|spec| config.upstreams.get(spec.upstream))
                            .is_some_and(|g| g.proxy_protocol)
                    }),
                    _ => false,
                },
            }
        })
        .collect();
    if let (Some(registry), Some(upstreams)) = (registry, &upstream_metrics) {
        let metrics = WorkerMetrics {
            listeners: listener_metrics,
            upstreams: Arc::clone(upstreams),
            caches: caches
                .iter()
                .map(|layer| (Arc::clone(layer.store()), Arc::clone(layer.counters())))
                .collect(),
        };
        registry.register(worker.index, metrics);
    }
    WorkerListeners {
        engines,
        pool,
        pool_settings: config.pool,
        resolver,
        dns: Arc::clone(&config.dns),
        upstream_metrics,
        caches,
    }
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
