//! Starting workers, accepting connections and stopping gracefully.
//!
//! [`start`] binds every listener once per worker (`SO_REUSEPORT`), starts
//! one pinned thread per worker with its own runtime, and builds the worker's
//! [`WorkerApp`] on that thread from a factory, so the app may hold `Rc` and
//! `RefCell` state (pools, counters) that never crosses threads. Each accepted
//! connection becomes a task on the worker that accepted it. The returned
//! [`ServerHandle`] stops the server: [`ServerHandle::shutdown`] starts the
//! drain described in the `worker` module, [`ServerHandle::wait`] joins.

use std::{
    future::Future,
    io::{self, Write},
    net::SocketAddr,
    os::{fd::AsRawFd, unix::net::UnixStream},
    panic::AssertUnwindSafe,
    rc::Rc,
    sync::{mpsc, Arc},
    thread,
    time::Duration,
};

use futures_util::FutureExt;
use monoio::{io::AsyncReadRent, net::TcpStream};

use crate::{
    listener::{bind_all, ListenerSpec, OwnAddresses},
    per_ip::PerIpConnections,
    runtime::{self, DriverKind, RuntimeConfig},
    worker::{run_sweeper, ConnCtx, Rejected, WorkerState, WorkerStats},
};

/// Server-wide settings of the connection engine.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Worker runtimes.
    pub runtime: RuntimeConfig,
    /// Addresses to listen on; a connection's listener is its index here.
    pub listeners: Vec<ListenerSpec>,
    /// Open connections per worker; past it new connections are closed at once.
    pub max_connections: usize,
    /// Open connections per client address, all workers together; past it
    /// the address's new connections are closed at once. `None`: no limit.
    pub max_connections_per_ip: Option<u32>,
    /// How long a drain waits for in-flight requests before closing them.
    pub shutdown_timeout: Duration,
    /// Period of each worker's deadline sweep: timeouts fire at most two
    /// ticks late.
    pub timer_tick: Duration,
}

impl ServerConfig {
    /// Settings with the given listeners and defaults for the rest.
    pub fn new(listeners: Vec<ListenerSpec>) -> Self {
        Self {
            runtime: RuntimeConfig::default(),
            listeners,
            max_connections: 100_000,
            max_connections_per_ip: None,
            shutdown_timeout: Duration::from_secs(30),
            timer_tick: Duration::from_millis(100),
        }
    }
}

/// What a worker is, as told to the app factory and the start log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    /// Worker number, from 0.
    pub index: usize,
    /// The CPU the worker is pinned to, if pinning is on and succeeded.
    pub cpu: Option<usize>,
    /// The I/O driver the worker runs.
    pub driver: DriverKind,
    /// The server's bound listening addresses (shared by all workers).
    pub own_addresses: Arc<OwnAddresses>,
}

/// A worker's connection handler: one per worker, built on the worker thread.
pub trait WorkerApp: 'static {
    /// The task that serves one accepted connection until it ends.
    ///
    /// `listener` is the index of the listener in [`ServerConfig::listeners`];
    /// `conn` is the connection's registry entry, which must live as long as
    /// the stream. The future owns all three: it is what an idle connection
    /// costs, so it should hold each of them once (an `async fn` taking them
    /// would keep its arguments beside the moved copies for its whole life).
    fn serve(
        &self,
        listener: usize,
        stream: TcpStream,
        peer: SocketAddr,
        conn: ConnCtx,
    ) -> impl Future<Output = ()> + 'static;

    /// Runs on the worker about once a second, between connections' work,
    /// for upkeep such as closing idle upstream connections that expired
    /// and freeing buffers a flood left behind. `now_ms` is the worker's
    /// coarse clock (as [`ConnCtx::clock_ms`] reads it). Returns whether it
    /// freed memory (the worker then asks the allocator to give free pages
    /// back to the system). The default does nothing.
    fn housekeeping(&self, now_ms: u64) -> bool {
        let _ = now_ms;
        false
    }

    /// Hears of a connection to `listener` from `peer` that was closed at
    /// once, unanswered, over a limit (for the access log). The default
    /// does nothing.
    fn rejected(&self, listener: usize, peer: SocketAddr, why: Rejected) {
        let _ = (listener, peer, why);
    }

    /// Runs once on the worker after its drain, before it ends (to hand
    /// over buffered log lines). The default does nothing.
    fn stopped(&self) {}
}

/// A running server.
pub struct ServerHandle {
    local_addrs: Vec<SocketAddr>,
    workers: Vec<WorkerInfo>,
    stats: Vec<Arc<WorkerStats>>,
    stop: Vec<UnixStream>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl ServerHandle {
    /// The bound address of each listener, in configuration order.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.local_addrs
    }

    /// The workers as they started.
    pub fn workers(&self) -> &[WorkerInfo] {
        &self.workers
    }

    /// Each worker's counters.
    pub fn stats(&self) -> &[Arc<WorkerStats>] {
        &self.stats
    }

    /// Starts a graceful shutdown on every worker; returns at once.
    pub fn shutdown(&self) {
        for mut stop in &self.stop {
            let _ = stop.write_all(b"x");
        }
    }

    /// Waits until every worker has finished its drain.
    pub fn wait(mut self) {
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.shutdown();
        }
    }
}

/// Binds the listeners and starts the workers.
///
/// `factory` runs once on each worker thread to build that worker's app.
/// Fails, with nothing left running, when a listener cannot be bound or a
/// worker's runtime cannot be built.
pub fn start<F, A>(config: ServerConfig, factory: F) -> io::Result<ServerHandle>
where
    F: Fn(&WorkerInfo) -> A + Send + Sync + 'static,
    A: WorkerApp,
{
    let workers = config.runtime.workers.max(1);
    let (mut sockets, local_addrs) = bind_all(&config.listeners, workers)?;
    let own_addresses = Arc::new(OwnAddresses::new(&local_addrs));
    let per_ip = config
        .max_connections_per_ip
        .map(|limit| Arc::new(PerIpConnections::new(limit)));
    let cpus = runtime::available_cpus();
    let factory = Arc::new(factory);
    let blocking = runtime::BlockingPool::new(config.runtime.blocking_threads.max(1));
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<WorkerInfo>>();
    let mut handle = ServerHandle {
        local_addrs,
        workers: Vec::with_capacity(workers),
        stats: Vec::with_capacity(workers),
        stop: Vec::with_capacity(workers),
        threads: Vec::with_capacity(workers),
    };

    for index in 0..workers {
        let listeners = std::mem::take(&mut sockets[index]);
        let (stop_tx, stop_rx) = UnixStream::pair()?;
        stop_rx.set_nonblocking(true)?;
        let stats = Arc::new(WorkerStats::default());
        let cpu = (config.runtime.pin_cpus && !cpus.is_empty()).then(|| cpus[index % cpus.len()]);
        let setup = WorkerSetup {
            index,
            cpu,
            listeners,
            stop: stop_rx,
            stats: Arc::clone(&stats),
            max_connections: config.max_connections,
            per_ip: per_ip.clone(),
            shutdown_timeout: config.shutdown_timeout,
            timer_tick: config.timer_tick,
            runtime: config.runtime.clone(),
            blocking: blocking.clone(),
            own_addresses: Arc::clone(&own_addresses),
        };
        let factory = Arc::clone(&factory);
        let ready = ready_tx.clone();
        let thread = thread::Builder::new()
            .name(format!("ringway-w{index}"))
            .spawn(move || run_worker(setup, &*factory, ready))?;
        handle.stop.push(stop_tx);
        handle.stats.push(stats);
        handle.threads.push(thread);
    }
    drop(ready_tx);

    for _ in 0..workers {
        match ready_rx.recv() {
            Ok(Ok(info)) => handle.workers.push(info),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Err(io::Error::other("a worker thread exited during start")),
        }
    }
    handle.workers.sort_by_key(|w| w.index);
    Ok(handle)
}

struct WorkerSetup {
    index: usize,
    cpu: Option<usize>,
    listeners: Vec<std::net::TcpListener>,
    stop: UnixStream,
    stats: Arc<WorkerStats>,
    max_connections: usize,
    per_ip: Option<Arc<PerIpConnections>>,
    shutdown_timeout: Duration,
    timer_tick: Duration,
    runtime: RuntimeConfig,
    blocking: runtime::BlockingPool,
    own_addresses: Arc<OwnAddresses>,
}

fn run_worker<F, A>(setup: WorkerSetup, factory: &F, ready: mpsc::Sender<io::Result<WorkerInfo>>)
where
    F: Fn(&WorkerInfo) -> A,
    A: WorkerApp,
{
    let cpu = setup.cpu.filter(|&cpu| runtime::pin_current_thread(cpu));
    if setup.cpu.is_some() && cpu.is_none() {
        tracing::warn!(
            worker = setup.index,
            "could not pin the worker to CPU {:?}",
            setup.cpu
        );
    }
    let index = setup.index;
    let blocking = setup.blocking.clone();
    let own_addresses = Arc::clone(&setup.own_addresses);
    let result = runtime::block_on(
        setup.runtime.driver,
        setup.runtime.ring_entries,
        &blocking,
        |driver| {
            let info = WorkerInfo {
                index,
                cpu,
                driver,
                own_addresses,
            };
            worker_main(setup, info, factory, ready.clone())
        },
    );
    if let Err(e) = result {
        let _ = ready.send(Err(io::Error::new(
            e.kind(),
            format!("worker {index}: cannot build its runtime: {e}"),
        )));
    }
}

async fn worker_main<F, A>(
    setup: WorkerSetup,
    info: WorkerInfo,
    factory: &F,
    ready: mpsc::Sender<io::Result<WorkerInfo>>,
) where
    F: Fn(&WorkerInfo) -> A,
    A: WorkerApp,
{
    let state = Rc::new(WorkerState::new(
        info.index,
        setup.max_connections,
        setup.per_ip,
        setup.stats,
        setup.timer_tick,
    ));
    let mut listeners = Vec::with_capacity(setup.listeners.len());
    for l in setup.listeners {
        match monoio::net::TcpListener::from_std(l) {
            Ok(l) => listeners.push(l),
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
    }
    let mut stop = match monoio::net::UnixStream::from_std(setup.stop) {
        Ok(s) => s,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let app = Rc::new(factory(&info));
    let cpu = info
        .cpu
        .map_or_else(|| "unpinned".to_owned(), |c| format!("CPU {c}"));
    tracing::info!("worker {} started on {cpu}, driver {}", info.index, info.driver);
    let _ = ready.send(Ok(info));
    drop(ready);

    for (index, listener) in listeners.into_iter().enumerate() {
        monoio::spawn(accept_loop(index, listener, Rc::clone(&app), Rc::clone(&state)));
    }
    let upkeep = Rc::clone(&app);
    monoio::spawn(run_sweeper(Rc::clone(&state), move |now_ms| {
        upkeep.housekeeping(now_ms)
    }));

    // A byte, or the handle's end of the pair closing, means stop.
    let (_, _) = stop.read(vec![0u8; 1]).await;
    state.begin_drain();
    let connections = state.connection_count();
    if connections > 0 {
        tracing::info!(worker = state.index, connections, "draining");
        monoio::select! {
            _ = state.all_closed.wait() => {}
            _ = monoio::time::sleep(setup.shutdown_timeout) => {
                tracing::warn!(
                    worker = state.index,
                    connections = state.connection_count(),
                    "shutdown timeout reached; closing the remaining connections"
                );
                state.close_connections(false);
                let _ = monoio::time::timeout(Duration::from_secs(5), state.all_closed.wait()).await;
            }
        }
    }
    app.stopped();
    tracing::info!(worker = state.index, "worker stopped");
}

/// How long the accept loop pauses after a failed accept: it doubles from
/// the first to the last while accepts keep failing (out of descriptors or
/// memory, where retrying at once would spin on the pending connection).
const ACCEPT_BACKOFF: (Duration, Duration) = (Duration::from_millis(10), Duration::from_secs(1));

/// At most one log line per this long about accepts that keep failing.
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

async fn accept_loop<A: WorkerApp>(
    index: usize,
    listener: monoio::net::TcpListener,
    app: Rc<A>,
    state: Rc<WorkerState>,
) {
    let mut backoff = ACCEPT_BACKOFF.0;
    let mut failures = AcceptFailures::default();
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = state.draining.wait() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff = ACCEPT_BACKOFF.0;
                failures.recovered(state.index, index);
                WorkerStats::bump(&state.stats.accepted);
                let conn = match state.register(stream.as_raw_fd(), peer.ip()) {
                    Ok(conn) => conn,
                    Err(why) => {
                        drop(stream);
                        app.rejected(index, peer, why);
                        continue;
                    }
                };
                // Made here, not in the task: the task then holds the
                // connection's future, not the stream and context as well.
                let serve = AssertUnwindSafe(app.serve(index, stream, peer, conn)).catch_unwind();
                monoio::spawn(async move {
                    if serve.await.is_err() {
                        tracing::error!(%peer, "connection task panicked; connection closed");
                    }
                });
            }
            Err(e) => {
                // Out of descriptors or memory: back off instead of
                // spinning, and say so once in a while, not per attempt.
                WorkerStats::bump(&state.stats.accept_errors);
                failures.failed(state.index, index, &e, backoff);
                monoio::select! {
                    _ = monoio::time::sleep(backoff) => {}
                    _ = state.draining.wait() => return,
                }
                backoff = (backoff * 2).min(ACCEPT_BACKOFF.1);
            }
        }
    }
}

/// Failed accepts since the last log line about them.
#[derive(Default)]
struct AcceptFailures {
    since_log: u64,
    logged_at: Option<std::time::Instant>,
    failing: bool,
}

impl AcceptFailures {
    fn failed(&mut self, worker: usize, listener: usize, e: &io::Error, backoff: Duration) {
        self.since_log += 1;
        self.failing = true;
        if self.logged_at.is_some_and(|at| at.elapsed() < ACCEPT_LOG_EVERY) {
            return;
        }
        let hint = match e.raw_os_error() {
            Some(libc::EMFILE | libc::ENFILE) => {
                " (out of file descriptors: raise the hard limit, LimitNOFILE= in a service file, or lower max_connections)"
            }
            _ => "",
        };
        tracing::error!(
            worker,
            listener,
            failed = self.since_log,
            "accept failed: {e}{hint}; pausing accepts for {backoff:?}, then backing off to {:?}",
            ACCEPT_BACKOFF.1
        );
        self.since_log = 0;
        self.logged_at = Some(std::time::Instant::now());
    }

    fn recovered(&mut self, worker: usize, listener: usize) {
        if std::mem::take(&mut self.failing) {
            tracing::warn!(
                worker,
                listener,
                failed = self.since_log,
                "accepting again after failed accepts"
            );
            self.since_log = 0;
            self.logged_at = None;
        }
    }
}
