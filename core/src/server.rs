//! Starting workers, accepting connections, rebuilding them on a reload, and
//! stopping gracefully.
//!
//! [`start`] binds every listener once per worker (`SO_REUSEPORT`), starts
//! one pinned thread per worker with its own runtime, and builds the worker's
//! [`WorkerApp`] on that thread from a factory, so the app may hold `Rc` and
//! `RefCell` state (pools, counters) that never crosses threads. Each accepted
//! connection becomes a task on the worker that accepted it. The returned
//! [`ServerHandle`] stops the server: [`ServerHandle::shutdown`] starts the
//! drain described in the `worker` module, [`ServerHandle::wait`] joins;
//! [`ServerHandle::rebuild`] (a reload) has every worker build its app
//! anew, keeping the sockets of listeners that stay.

use std::{
    cell::{Cell, RefCell},
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
    handover::Inherited,
    listener::{bind_all, ListenerSpec, OwnAddresses},
    per_ip::PerIpConnections,
    runtime::{self, DriverKind, RuntimeConfig},
    worker::{run_sweeper, ConnCtx, LocalEvent, Rejected, WorkerState, WorkerStats},
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

    /// A rebuild replaced this app: new connections go to the new one,
    /// and this one finishes what it has (its connections should close
    /// after their current answer). The default does nothing.
    fn retired(&self) {}
}

/// A running server.
pub struct ServerHandle {
    local_addrs: Vec<SocketAddr>,
    /// The listeners as configured (port 0 where the kernel picked one).
    specs: Vec<ListenerSpec>,
    /// Copies of every listener's sockets (all workers'), to hand to a
    /// new process in a binary upgrade.
    held: Vec<Vec<std::net::TcpListener>>,
    workers: Vec<WorkerInfo>,
    stats: Vec<Arc<WorkerStats>>,
    stop: Vec<UnixStream>,
    control: Vec<mpsc::Sender<Control>>,
    threads: Vec<thread::JoinHandle<()>>,
}

/// What a worker is told besides stopping.
enum Control {
    /// Serve `listeners` (each kept from the ones it has, by index, or a
    /// new socket) with an app built anew; the old app finishes what it
    /// has. Answers on `done` once it serves with the new one.
    Rebuild {
        listeners: Vec<Incoming>,
        own_addresses: Arc<OwnAddresses>,
        done: mpsc::Sender<io::Result<()>>,
    },
}

/// A listener of a rebuilt worker.
enum Incoming {
    /// The sockets the worker has for the listener at this index, accept
    /// queues and all.
    Keep(usize),
    /// A socket bound for a listener the configuration added.
    New(std::net::TcpListener),
}

/// The wake-up byte that means "read the control channel".
const CONTROL_BYTE: u8 = b'r';

/// The byte that means "drain and stop".
const STOP_BYTE: u8 = b'x';

/// The byte that means "drain gently and stop" (see
/// [`ServerHandle::shutdown_gently`]).
const GENTLE_STOP_BYTE: u8 = b'g';

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
            let _ = stop.write_all(&[STOP_BYTE]);
        }
    }

    /// Starts a graceful shutdown that leaves idle keep-alive connections
    /// open until their next request, answered with `Connection: close`
    /// (after a handover, so that no request on its way is lost); the
    /// shutdown timeout still bounds it.
    pub fn shutdown_gently(&self) {
        for mut stop in &self.stop {
            let _ = stop.write_all(&[GENTLE_STOP_BYTE]);
        }
    }

    /// Sends every listener's sockets (all workers') on `stream` to a new
    /// process taking over (a binary upgrade); this one keeps serving until
    /// told to stop.
    pub fn hand_over(&self, stream: &mut UnixStream) -> io::Result<()> {
        let listeners: Vec<(String, SocketAddr, Vec<std::os::fd::RawFd>)> = self
            .specs
            .iter()
            .zip(&self.local_addrs)
            .zip(&self.held)
            .map(|((spec, addr), held)| {
                (
                    spec.name.clone(),
                    *addr,
                    held.iter().map(AsRawFd::as_raw_fd).collect(),
                )
            })
            .collect();
        crate::handover::send(stream, &listeners)
    }

    /// Serves `listeners` from now on, with apps the factory builds anew on
    /// every worker (it is given the old app, to carry over what should
    /// survive: pools, caches). A listener whose configured address did
    /// not change keeps its sockets, so no connection to it is refused;
    /// added ones are bound first (an address in use fails the rebuild
    /// before anything changed); removed ones close once every worker
    /// dropped them. Connections in flight keep the app they began with.
    /// Returns once every worker serves with its new app.
    pub fn rebuild(&mut self, listeners: Vec<ListenerSpec>) -> io::Result<()> {
        let workers = self.stop.len();
        // A listener keeps the sockets of the old one configured at the same
        // address (by name too where the port is 0, the kernel's pick), each
        // old one taken once.
        let mut taken = vec![false; self.specs.len()];
        let kept: Vec<Option<usize>> = listeners
            .iter()
            .map(|spec| {
                let found = self.specs.iter().enumerate().position(|(i, old)| {
                    !taken[i] && old.addr == spec.addr && (spec.addr.port() != 0 || old.name == spec.name)
                });
                if let Some(i) = found {
                    taken[i] = true;
                }
                found
            })
            .collect();
        let added: Vec<ListenerSpec> = listeners
            .iter()
            .zip(&kept)
            .filter(|(_, kept)| kept.is_none())
            .map(|(spec, _)| spec.clone())
            .collect();
        let (mut sockets, added_addrs) = bind_all(&added, workers, &mut Vec::new())?;
        // Copies for a later handover: the kept listeners' as they were,
        // the added ones' from the new sockets.
        let mut added_held: Vec<Vec<std::net::TcpListener>> = (0..added.len()).map(|_| Vec::new()).collect();
        for worker in &sockets {
            for (i, socket) in worker {
                added_held[*i].push(socket.try_clone()?);
            }
        }
        let mut local_addrs = Vec::with_capacity(listeners.len());
        let mut added_addrs = added_addrs.into_iter();
        for kept in &kept {
            match kept {
                Some(i) => local_addrs.push(self.local_addrs[*i]),
                None => local_addrs.push(
                    added_addrs
                        .next()
                        .ok_or_else(|| io::Error::other("listener mismatch"))?,
                ),
            }
        }
        let own_addresses = Arc::new(OwnAddresses::new(&local_addrs));
        let (done_tx, done_rx) = mpsc::channel();
        for (worker, (control, mut wake)) in self.control.iter().zip(&self.stop).enumerate() {
            let mut new = std::mem::take(&mut sockets[worker])
                .into_iter()
                .map(|(_, socket)| socket);
            let incoming = kept
                .iter()
                .map(|kept| match kept {
                    Some(i) => Some(Incoming::Keep(*i)),
                    None => new.next().map(Incoming::New),
                })
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| io::Error::other("listener mismatch"))?;
            let message = Control::Rebuild {
                listeners: incoming,
                own_addresses: Arc::clone(&own_addresses),
                done: done_tx.clone(),
            };
            control
                .send(message)
                .map_err(|_| io::Error::other(format!("worker {worker} has stopped")))?;
            wake.write_all(&[CONTROL_BYTE])?;
        }
        drop(done_tx);
        for _ in 0..workers {
            match done_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(io::Error::other("a worker stopped during the rebuild")),
            }
        }
        let mut old_held: Vec<Option<Vec<std::net::TcpListener>>> =
            std::mem::take(&mut self.held).into_iter().map(Some).collect();
        let mut added_held = added_held.into_iter();
        self.held = kept
            .iter()
            .map(|kept| match kept {
                Some(i) => old_held[*i].take().unwrap_or_default(),
                None => added_held.next().unwrap_or_default(),
            })
            .collect();
        // The removed listeners' copies close here, with the workers'.
        drop(old_held);
        self.specs = listeners;
        self.local_addrs = local_addrs;
        for info in &mut self.workers {
            info.own_addresses = Arc::clone(&own_addresses);
        }
        Ok(())
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
    F: Fn(&WorkerInfo, Option<&A>) -> A + Send + Sync + 'static,
    A: WorkerApp,
{
    start_inheriting(config, factory, Vec::new())
}

/// Like [`start`], taking the listening sockets a running process handed
/// over (a binary upgrade): a listener at the address of one of them
/// serves on its sockets, whose queued connections it then accepts. The
/// sockets of listeners the configuration no longer has are closed.
pub fn start_inheriting<F, A>(
    config: ServerConfig,
    factory: F,
    mut inherited: Vec<Inherited>,
) -> io::Result<ServerHandle>
where
    F: Fn(&WorkerInfo, Option<&A>) -> A + Send + Sync + 'static,
    A: WorkerApp,
{
    let workers = config.runtime.workers.max(1);
    let (mut sockets, local_addrs) = bind_all(&config.listeners, workers, &mut inherited)?;
    for gone in &inherited {
        tracing::info!(
            "listener {:?} on {} is not in this configuration: its handed-over sockets close",
            gone.name,
            gone.addr
        );
    }
    let mut held: Vec<Vec<std::net::TcpListener>> = (0..config.listeners.len()).map(|_| Vec::new()).collect();
    for worker in &sockets {
        for (i, socket) in worker {
            held[*i].push(socket.try_clone()?);
        }
    }
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
        specs: config.listeners.clone(),
        held,
        workers: Vec::with_capacity(workers),
        stats: Vec::with_capacity(workers),
        stop: Vec::with_capacity(workers),
        control: Vec::with_capacity(workers),
        threads: Vec::with_capacity(workers),
    };

    for index in 0..workers {
        let listeners = std::mem::take(&mut sockets[index]);
        let (stop_tx, stop_rx) = UnixStream::pair()?;
        stop_rx.set_nonblocking(true)?;
        let (control_tx, control_rx) = mpsc::channel();
        let stats = Arc::new(WorkerStats::default());
        let cpu = (config.runtime.pin_cpus && !cpus.is_empty()).then(|| cpus[index % cpus.len()]);
        let setup = WorkerSetup {
            index,
            cpu,
            listeners,
            stop: stop_rx,
            control: control_rx,
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
        handle.control.push(control_tx);
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
    listeners: Vec<(usize, std::net::TcpListener)>,
    stop: UnixStream,
    control: mpsc::Receiver<Control>,
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
    F: Fn(&WorkerInfo, Option<&A>) -> A,
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
    mut info: WorkerInfo,
    factory: &F,
    ready: mpsc::Sender<io::Result<WorkerInfo>>,
) where
    F: Fn(&WorkerInfo, Option<&A>) -> A,
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
    for (index, l) in setup.listeners {
        match monoio::net::TcpListener::from_std(l) {
            Ok(l) => listeners.push((index, Rc::new(l))),
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
    let mut app = Rc::new(factory(&info, None));
    let cpu = info
        .cpu
        .map_or_else(|| "unpinned".to_owned(), |c| format!("CPU {c}"));
    tracing::info!("worker {} started on {cpu}, driver {}", info.index, info.driver);
    let _ = ready.send(Ok(info.clone()));
    drop(ready);

    // One accept loop per listening socket, for the worker's life or the
    // listener's: a rebuild points a kept socket's loop at the new app
    // (never cancelling an accept in flight, which on io_uring would lose
    // the connection it took), starts loops for new sockets, and shuts
    // removed ones down.
    let mut targets: Vec<Rc<AcceptTarget<A>>> = Vec::with_capacity(listeners.len());
    for (index, listener) in listeners {
        let target = Rc::new(AcceptTarget::new(index, listener, Rc::clone(&app)));
        monoio::spawn(accept_loop(Rc::clone(&target), Rc::clone(&state)));
        targets.push(target);
    }
    // The sweeper's upkeep runs on the app of the day.
    let current: Rc<RefCell<Rc<A>>> = Rc::new(RefCell::new(Rc::clone(&app)));
    let upkeep = Rc::clone(&current);
    monoio::spawn(run_sweeper(Rc::clone(&state), move |now_ms| {
        let app = Rc::clone(&upkeep.borrow());
        app.housekeeping(now_ms)
    }));

    // CONTROL_BYTE means a message on the control channel; any other byte,
    // or the handle's end of the pair closing, means stop.
    let gentle = loop {
        let (read, buf) = stop.read(vec![0u8; 1]).await;
        if !matches!(read, Ok(1) if buf[0] == CONTROL_BYTE) {
            break matches!(read, Ok(1) if buf[0] == GENTLE_STOP_BYTE);
        }
        let Ok(Control::Rebuild {
            listeners: incoming,
            own_addresses,
            done,
        }) = setup.control.try_recv()
        else {
            continue;
        };
        // Adopt the new sockets first: a failure changes nothing.
        let mut adopted = Vec::with_capacity(incoming.len());
        let mut failed = None;
        for source in incoming {
            match source {
                Incoming::Keep(i) => adopted.push(Ok(i)),
                Incoming::New(l) => match monoio::net::TcpListener::from_std(l) {
                    Ok(l) => adopted.push(Err(Rc::new(l))),
                    Err(e) => failed = Some(e),
                },
            }
        }
        if let Some(e) = failed {
            let _ = done.send(Err(e));
            continue;
        }
        info.own_addresses = own_addresses;
        let fresh = Rc::new(factory(&info, Some(&app)));
        app.retired();
        app = fresh;
        *current.borrow_mut() = Rc::clone(&app);
        // Every socket of a kept listener is pointed at the new app under
        // the listener's new index; the rest are removed.
        let mut next = Vec::with_capacity(targets.len());
        let mut kept = vec![false; targets.len()];
        for (index, source) in adopted.into_iter().enumerate() {
            match source {
                Ok(old) => {
                    for (t, target) in targets.iter().enumerate() {
                        if target.index.get() == old && !kept[t] {
                            kept[t] = true;
                            next.push((index, Rc::clone(target)));
                        }
                    }
                }
                Err(listener) => {
                    let target = Rc::new(AcceptTarget::new(index, listener, Rc::clone(&app)));
                    monoio::spawn(accept_loop(Rc::clone(&target), Rc::clone(&state)));
                    next.push((index, target));
                }
            }
        }
        for (t, target) in targets.iter().enumerate() {
            if !kept[t] {
                target.remove();
            }
        }
        for (index, target) in &next {
            target.point_at(*index, Rc::clone(&app));
        }
        targets = next.into_iter().map(|(_, target)| target).collect();
        let _ = done.send(Ok(()));
    };
    state.begin_drain(gentle);
    for target in &targets {
        target.remove();
    }
    // The cancelled accepts end before the count: a connection one took at
    // the last moment is then counted, and served, not dropped with the
    // runtime.
    for target in &targets {
        let _ = monoio::time::timeout(Duration::from_secs(1), target.ended.wait()).await;
    }
    state.end_accepts();
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

/// What a listening socket's accept loop hands connections to: the app
/// of the day and the listener's index in it, both changed by a rebuild.
struct AcceptTarget<A> {
    listener: Rc<monoio::net::TcpListener>,
    index: Cell<usize>,
    app: RefCell<Rc<A>>,
    /// A rebuild removed the listener, or the worker drains: its loop ends.
    removed: Cell<bool>,
    /// Cancels the accept in flight. On io_uring an accept that is merely
    /// dropped may still take a connection, which nobody would serve; a
    /// cancelled one is awaited to its end, and a connection it took
    /// after all is served.
    canceller: RefCell<monoio::io::Canceller>,
    /// Fired when the loop has returned: its last accept is over, and a
    /// connection that accept took is registered.
    ended: LocalEvent,
}

impl<A: WorkerApp> AcceptTarget<A> {
    fn new(index: usize, listener: Rc<monoio::net::TcpListener>, app: Rc<A>) -> Self {
        Self {
            listener,
            index: Cell::new(index),
            app: RefCell::new(app),
            removed: Cell::new(false),
            canceller: RefCell::new(monoio::io::Canceller::new()),
            ended: LocalEvent::default(),
        }
    }

    fn point_at(&self, index: usize, app: Rc<A>) {
        self.index.set(index);
        *self.app.borrow_mut() = app;
    }

    /// Ends the loop: its accept in flight is cancelled (a connection it
    /// took first is still served) and the loop, seeing `removed`, returns
    /// and drops the socket. The socket itself is left as it is: after a
    /// handover another process accepts on it.
    fn remove(&self) {
        self.removed.set(true);
        let canceller = std::mem::take(&mut *self.canceller.borrow_mut());
        let _ = canceller.cancel();
    }
}

/// One listening socket's accept loop on one worker, until the worker
/// drains or a rebuild removes the listener.
async fn accept_loop<A: WorkerApp>(target: Rc<AcceptTarget<A>>, state: Rc<WorkerState>) {
    accept_until_removed(&target, &state).await;
    target.ended.fire();
}

async fn accept_until_removed<A: WorkerApp>(target: &AcceptTarget<A>, state: &Rc<WorkerState>) {
    let mut backoff = ACCEPT_BACKOFF.0;
    let mut failures = AcceptFailures::default();
    loop {
        if target.removed.get() {
            return;
        }
        let handle = target.canceller.borrow().handle();
        let accepted = target.listener.cancelable_accept(handle).await;
        let ending = target.removed.get();
        if ending && accepted.is_err() {
            return;
        }
        let index = target.index.get();
        let app = Rc::clone(&target.app.borrow());
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
                if ending {
                    return;
                }
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
                if target.removed.get() {
                    return;
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
