//! Wiring: from the validated configuration to running workers.
//!
//! This is the one place where every layer meets, in order: the server
//! settings (core), then on each worker thread one upstream pool and one
//! DNS resolver shared by that worker's listeners, and per listener its
//! handler (reverse: the route table and per-worker balancers; forward: the
//! ACL, authentication and PAC settings) inside an HTTP engine, or for a
//! tcp listener its L4 balancer; and once per process the prober: the
//! health checks of the upstreams that have them, and the lookups that
//! follow servers given by name.

use std::{future::Future, net::SocketAddr, pin::Pin, rc::Rc, sync::Arc};

use monoio::net::TcpStream;
use ringway_core::{dns::Resolver, ConnCtx, ServerConfig, ServerHandle, WorkerApp, WorkerInfo};
use ringway_http::{
    ClientInfo, Engine, ForwardHandler, Prober, ReverseHandler, TcpBalancer, TunnelOptions, UpstreamPool,
};

use crate::config::{Config, ListenerMode};

/// One listener's engine on one worker (shared with its connections'
/// tasks, which each hold it).
enum ListenerEngine {
    Reverse(Rc<Engine<ReverseHandler>>),
    Forward(Rc<Engine<ForwardHandler>>),
    Tcp(Rc<TcpBalancer>),
}

/// Everything one worker serves with.
struct WorkerListeners {
    engines: Vec<(ListenerEngine, SocketAddr)>,
    pool: Rc<UpstreamPool>,
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
            Some((engine, local)) => {
                let client = ClientInfo::new(peer, *local);
                match engine {
                    ListenerEngine::Reverse(e) => Box::pin(Rc::clone(e).serve(stream, client, conn)),
                    ListenerEngine::Forward(e) => Box::pin(Rc::clone(e).serve(stream, client, conn)),
                    ListenerEngine::Tcp(b) => Box::pin(Rc::clone(b).serve(stream, client, conn)),
                }
            }
        };
        serve
    }

    fn housekeeping(&self, now_ms: u64) -> bool {
        self.pool.close_stale(now_ms);
        ringway_http::release_unused_buffers()
    }
}

/// A running server: its workers, and the process's health prober.
pub struct Running {
    server: ServerHandle,
    /// Stops (and joins) with the server.
    prober: Option<Prober>,
}

impl Running {
    /// Waits until the workers have stopped (after a shutdown), then stops
    /// the health checks.
    pub fn wait(self) {
        self.server.wait();
        drop(self.prober);
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
    let config = config.clone();
    let server = ringway_core::start(server, move |worker: &WorkerInfo| build_worker(&config, worker))?;
    let prober = Prober::start(checks, &upstreams, dns)?;
    Ok(Running { server, prober })
}

fn build_worker(config: &Config, worker: &WorkerInfo) -> WorkerListeners {
    let pool = Rc::new(UpstreamPool::new(config.pool));
    let resolver = Rc::new(Resolver::new(config.dns.clone()));
    let engines = config
        .listeners
        .iter()
        .map(|l| {
            let name = &l.spec.name;
            let engine_settings = l.settings.clone();
            let engine = match &l.mode {
                ListenerMode::Reverse { routes, .. } => {
                    let handler = ReverseHandler::new(routes.clone(), &config.upstreams, worker.index);
                    ListenerEngine::Reverse(Rc::new(Engine::new(
                        name,
                        handler,
                        engine_settings,
                        Rc::clone(&pool),
                    )))
                }
                ListenerMode::Forward { settings } => {
                    let handler = ForwardHandler::new(
                        settings.clone(),
                        Rc::clone(&resolver),
                        Arc::clone(&worker.own_addresses),
                    );
                    ListenerEngine::Forward(Rc::new(Engine::new(
                        name,
                        handler,
                        engine_settings,
                        Rc::clone(&pool),
                    )))
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
            (engine, l.spec.addr)
        })
        .collect();
    WorkerListeners { engines, pool }
}
