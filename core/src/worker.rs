//! Per-worker state: the live-connection registry, connection limits,
//! counters, per-connection deadlines, and the drain that graceful
//! shutdown runs.
//!
//! A connection is registered when accepted and removed when its task ends;
//! the engine marks it idle while it waits for the next request on a
//! keep-alive connection. Draining stops the accept loops, closes idle
//! connections at once (a `shutdown(2)` wakes their pending read), lets busy
//! ones finish their request (the engine sees [`ConnCtx::is_draining`] and
//! answers with `Connection: close`), and after the shutdown timeout closes
//! whatever is left.
//!
//! Timeouts are deadlines, not timers: before it waits, a connection arms
//! one deadline naming what it waits on ([`Wait`]), which costs two cell
//! writes. One sweeper task per worker wakes every tick, reads a coarse
//! clock, and shuts down the socket of every connection whose deadline has
//! passed, which ends the pending operation; the engine then asks
//! [`ConnCtx::expired`] which wait timed out. Nothing is armed in the
//! runtime's timer wheel per request, and the connection futures carry no
//! timer state.
//!
//! The same sweep watches clients that wait for an upstream's response
//! ([`Wait::Response`]): a client that closes its connection meanwhile is
//! noticed (one non-blocking peek, first after a tick, then at doubling
//! intervals up to a second), and the upstream connection is shut down at
//! once instead of being held for the whole upstream timeout. End of stream
//! alone does not tell a client that left from one that only shut its
//! sending side after a complete request (a half-close, which still reads
//! the answer), so before any byte of the response went out the sweep sends
//! the response's first byte itself, as a probe: a client that closed its
//! socket answers it with a reset, a half-closed one reads it as the start
//! of its response, and the engine sends the rest
//! ([`ConnCtx::take_probe`]). Once the response has begun, a reset is the
//! only sign looked for.

use std::{
    cell::{Cell, RefCell},
    future::Future,
    os::fd::RawFd,
    pin::Pin,
    rc::Rc,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use slab::Slab;

use crate::PerIpConnections;

/// Counters of one worker, readable from any thread.
///
/// Each counter has a single writer (its worker), so relaxed atomics cost no
/// more than plain stores; a reader sums the workers' figures.
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Connections accepted.
    pub accepted: AtomicU64,
    /// Connections closed at once because the worker was at `max_connections`.
    pub rejected_over_limit: AtomicU64,
    /// Connections closed at once because their client address was at
    /// `max_connections_per_ip`.
    pub rejected_per_ip: AtomicU64,
    /// Connections open now.
    pub active: AtomicU64,
    /// Requests the engine finished (answered or failed).
    pub requests: AtomicU64,
    /// Waits that reached their deadline.
    pub timeouts: AtomicU64,
    /// Body and tunnel bytes moved socket to socket with splice(2).
    pub spliced_bytes: AtomicU64,
    /// Accepts that failed (out of descriptors or memory).
    pub accept_errors: AtomicU64,
    /// Requests abandoned because their client closed its connection while
    /// the upstream's response was awaited (logged as status 499).
    pub client_aborts: AtomicU64,
}

impl WorkerStats {
    /// Adds one to `counter` (single writer: a relaxed load and store).
    pub fn bump(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    /// Adds `n` to `counter` (single writer).
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.store(counter.load(Ordering::Relaxed) + n, Ordering::Relaxed);
    }
}

/// Why an accepted connection was closed at once, unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// The worker was at `max_connections`.
    MaxConnections,
    /// The client's address was at `max_connections_per_ip`.
    MaxConnectionsPerIp,
}

impl Rejected {
    /// The limit's name in the config, as logs write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerIp => "max_connections_per_ip",
        }
    }
}

/// A one-shot event for tasks on one worker thread.
#[derive(Default)]
pub(crate) struct LocalEvent {
    fired: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl LocalEvent {
    pub(crate) fn fire(&self) {
        self.fired.set(true);
        for waker in self.waiters.borrow_mut().drain(..) {
            waker.wake();
        }
    }

    pub(crate) fn is_fired(&self) -> bool {
        self.fired.get()
    }

    pub(crate) fn wait(&self) -> EventWait<'_> {
        EventWait { event: self }
    }
}

pub(crate) struct EventWait<'a> {
    event: &'a LocalEvent,
}

impl Future for EventWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.event.fired.get() {
            return Poll::Ready(());
        }
        let mut waiters = self.event.waiters.borrow_mut();
        if !waiters.iter().any(|w| w.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// What a connection waits on, and so what its deadline's expiry does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// The client's next bytes (a request head or body). Expiry shuts the
    /// client socket's read side: the pending read sees end of stream, and
    /// a 408 can still be written.
    ClientRead,
    /// The client taking our bytes. Expiry shuts the client socket down.
    ClientWrite,
    /// The upstream (taking the request, sending the response). Expiry
    /// shuts the upstream socket down.
    Upstream,
    /// A tunnel with no traffic either way. Expiry shuts both sockets down.
    Tunnel,
    /// A closing connection's wait for the client to stop sending a body
    /// that was not read. Expiry shuts the read side, and is not counted
    /// as a timeout: ending the wait is the plan.
    Linger,
    /// The upstream's response (its head, or more of its body) once the
    /// whole request was sent. Expiry shuts the upstream socket down, as
    /// for [`Wait::Upstream`]; meanwhile the sweep watches the client (see
    /// the module docs), and a client that left ends the wait the same way.
    Response,
}

/// How a wait armed by a [`Deadline`] ended, when the sweep ended it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// It reached its deadline.
    Expired,
    /// The client closed its connection during a [`Wait::Response`].
    ClientLeft,
}

/// What the sweep may do to find out whether a client waiting for a
/// response is still there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientWatch {
    /// Look for a reset only: the response has begun (its bytes draw a
    /// reset from a closed socket), or the stream cannot take a stray
    /// byte (TLS).
    ResetOnly,
    /// Nothing of the response has gone out: at end of stream, send this
    /// byte, the response's first, to tell a closed client from a
    /// half-closed one.
    Probe(u8),
}

/// The sweep's watch of one client (see the module docs).
#[derive(Debug, Clone, Copy)]
struct Watch {
    how: ClientWatch,
    /// Coarse-clock milliseconds of the next look.
    next_ms: u64,
    /// The interval after that one.
    every_ms: u64,
    /// Whether to look at all (data waiting ends the watch: the client is
    /// there, pipelining).
    on: bool,
}

#[derive(Debug, Clone, Copy)]
struct Armed {
    /// Milliseconds on the worker's coarse clock.
    at: u64,
    wait: Wait,
    /// How long the wait may take, for [`ConnCtx::refresh`].
    limit_ms: u64,
}

struct ConnEntry {
    fd: RawFd,
    idle: bool,
    armed: Option<Armed>,
    /// The upstream socket a `Upstream`, `Response` or `Tunnel` wait is on
    /// (-1: none).
    upstream_fd: RawFd,
    expired: Option<Wait>,
    /// The client watch of an armed `Response` wait.
    watch: Option<Watch>,
    /// The client left during a `Response` wait.
    client_left: bool,
    /// The client address counted in the per-address table, if one is kept.
    peer_ip: Option<std::net::IpAddr>,
    /// The sweep sent the response's first byte as a probe; the engine has
    /// not yet skipped it.
    probed: bool,
}

/// The state one worker shares between its accept loops and connections.
pub(crate) struct WorkerState {
    pub(crate) index: usize,
    pub(crate) max_connections: usize,
    /// Open connections per client address, shared by all workers.
    per_ip: Option<Arc<PerIpConnections>>,
    pub(crate) stats: Arc<WorkerStats>,
    conns: RefCell<Slab<ConnEntry>>,
    /// The most connections open at once since the sweeper last looked.
    peak_conns: Cell<usize>,
    pub(crate) draining: LocalEvent,
    /// The drain is a handover's: idle connections are not closed, but
    /// wait for their next request, answered with Connection: close (a
    /// request already on its way is not lost).
    gentle: Cell<bool>,
    /// The drain's accept loops have all returned: no connection can be
    /// registered any more, so the last one to close fires `all_closed`.
    /// (Before that, a cancelled accept may still hand one over, which
    /// must be served, not dropped with the runtime.)
    accepts_ended: Cell<bool>,
    pub(crate) all_closed: LocalEvent,
    /// The coarse clock: milliseconds since `epoch`, updated every tick.
    now_ms: Cell<u64>,
    epoch: Instant,
    tick_ms: u64,
}

impl WorkerState {
    pub(crate) fn new(
        index: usize,
        max_connections: usize,
        per_ip: Option<Arc<PerIpConnections>>,
        stats: Arc<WorkerStats>,
        tick: Duration,
    ) -> Self {
        Self {
            index,
            max_connections,
            per_ip,
            stats,
            conns: RefCell::new(Slab::new()),
            peak_conns: Cell::new(0),
            draining: LocalEvent::default(),
            gentle: Cell::new(false),
            accepts_ended: Cell::new(false),
            all_closed: LocalEvent::default(),
            now_ms: Cell::new(0),
            epoch: Instant::now(),
            tick_ms: tick.as_millis().clamp(1, 60_000) as u64,
        }
    }

    /// Registers an accepted connection from `peer`, or says which limit
    /// refuses it: the worker's connection limit or the address's own (the
    /// caller closes the socket).
    pub(crate) fn register(self: &Rc<Self>, fd: RawFd, peer: std::net::IpAddr) -> Result<ConnCtx, Rejected> {
        let mut conns = self.conns.borrow_mut();
        if conns.len() >= self.max_connections {
            WorkerStats::bump(&self.stats.rejected_over_limit);
            return Err(Rejected::MaxConnections);
        }
        let peer_ip = match &self.per_ip {
            Some(table) if !table.acquire(peer) => {
                WorkerStats::bump(&self.stats.rejected_per_ip);
                return Err(Rejected::MaxConnectionsPerIp);
            }
            Some(_) => Some(peer),
            None => None,
        };
        Ok(self.insert(&mut conns, fd, peer_ip))
    }

    /// Registers work of the worker's own that runs like a connection but
    /// has no client socket (a cache's background refresh): it counts
    /// against the worker's connection limit, not any address's, and a
    /// drain waits for it. `None` at the limit.
    fn register_own(self: &Rc<Self>) -> Option<ConnCtx> {
        let mut conns = self.conns.borrow_mut();
        if conns.len() >= self.max_connections {
            return None;
        }
        Some(self.insert(&mut conns, -1, None))
    }

    fn insert(
        self: &Rc<Self>,
        conns: &mut Slab<ConnEntry>,
        fd: RawFd,
        peer_ip: Option<std::net::IpAddr>,
    ) -> ConnCtx {
        let key = conns.insert(ConnEntry {
            fd,
            idle: false,
            armed: None,
            upstream_fd: -1,
            expired: None,
            watch: None,
            client_left: false,
            probed: false,
            peer_ip,
        });
        self.stats.active.store(conns.len() as u64, Ordering::Relaxed);
        if conns.len() > self.peak_conns.get() {
            self.peak_conns.set(conns.len());
        }
        ConnCtx {
            worker: Rc::clone(self),
            key,
        }
    }

    pub(crate) fn connection_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Starts draining: accept loops stop, idle connections are closed.
    pub(crate) fn begin_drain(&self, gentle: bool) {
        self.gentle.set(gentle);
        self.draining.fire();
        if !gentle {
            self.close_connections(true);
        }
    }

    /// The drain's accept loops have returned: once no connection is open,
    /// the worker has drained.
    pub(crate) fn end_accepts(&self) {
        self.accepts_ended.set(true);
        if self.conns.borrow().is_empty() {
            self.all_closed.fire();
        }
    }

    /// Closes idle connections (`only_idle`) or every connection, with the
    /// upstream sockets they wait on.
    pub(crate) fn close_connections(&self, only_idle: bool) {
        for (_, conn) in self.conns.borrow().iter() {
            if conn.idle || !only_idle {
                shutdown_socket(conn.fd, libc::SHUT_RDWR);
                if conn.upstream_fd >= 0 {
                    shutdown_socket(conn.upstream_fd, libc::SHUT_RDWR);
                }
            }
        }
    }

    /// Advances the coarse clock, ends every wait whose deadline passed,
    /// and looks at the clients of `Response` waits that are due.
    pub(crate) fn sweep(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.now_ms.set(now);
        let max_every = (1000 / self.tick_ms).max(1) * self.tick_ms;
        for (_, conn) in self.conns.borrow_mut().iter_mut() {
            let Some(armed) = conn.armed else { continue };
            if armed.at > now {
                if let Some(watch) = &mut conn.watch {
                    if watch.on && watch.next_ms <= now {
                        match look_at_client(conn.fd, watch, &mut conn.probed) {
                            Look::Left => {
                                conn.client_left = true;
                                WorkerStats::bump(&self.stats.client_aborts);
                                end_wait(conn, armed.wait);
                            }
                            Look::Soon => {
                                watch.next_ms = now + self.tick_ms;
                                watch.every_ms = self.tick_ms;
                            }
                            Look::Later => {
                                watch.next_ms = now + watch.every_ms;
                                watch.every_ms = (watch.every_ms * 2).min(max_every);
                            }
                        }
                    }
                }
                continue;
            }
            if armed.wait != Wait::Linger {
                WorkerStats::bump(&self.stats.timeouts);
            }
            end_wait(conn, armed.wait);
        }
    }

    /// The sweeper's period.
    pub(crate) fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// A deadline `limit` from now on the coarse clock: never early, at most
    /// two ticks late.
    fn deadline_after(&self, limit: Duration) -> (u64, u64) {
        let limit_ms = limit.as_millis().min(u128::from(u64::MAX / 4)) as u64;
        (self.now_ms.get() + limit_ms + self.tick_ms, limit_ms)
    }
}

/// Ends a connection's armed wait: shuts down the socket it waits on, so
/// that the pending operation completes, and records which wait ended.
fn end_wait(conn: &mut ConnEntry, wait: Wait) {
    conn.armed = None;
    conn.watch = None;
    conn.expired = Some(wait);
    match wait {
        Wait::ClientRead | Wait::Linger => shutdown_socket(conn.fd, libc::SHUT_RD),
        Wait::ClientWrite => shutdown_socket(conn.fd, libc::SHUT_RDWR),
        Wait::Upstream | Wait::Response | Wait::Tunnel => {
            if conn.upstream_fd >= 0 {
                shutdown_socket(conn.upstream_fd, libc::SHUT_RDWR);
            }
            if wait == Wait::Tunnel || conn.upstream_fd < 0 {
                shutdown_socket(conn.fd, libc::SHUT_RDWR);
            }
        }
    }
}

/// What one look at a waiting client found.
enum Look {
    /// It closed its connection.
    Left,
    /// Look again at the next tick (a probe went out; its reset, if one
    /// comes, is a round trip away).
    Soon,
    /// Look again after the next interval.
    Later,
}

/// Looks once at a client waiting for a response. Data waiting ends the
/// watch (the client is there, pipelining); a quiet socket is looked at
/// again later; end of stream draws the probe byte when the watch allows
/// one, and is otherwise no proof: only a reset is.
fn look_at_client(fd: RawFd, watch: &mut Watch, probed: &mut bool) -> Look {
    use crate::socket::{peek_fd, reset_fd, send_byte_fd, Peeked};
    match peek_fd(fd) {
        Peeked::Data => {
            watch.on = false;
            Look::Later
        }
        Peeked::Quiet => Look::Later,
        Peeked::Gone => Look::Left,
        Peeked::End => match watch.how {
            // A reset behind the FIN shows as the socket's error only: a
            // peek keeps finding the FIN first.
            ClientWatch::ResetOnly if reset_fd(fd) => Look::Left,
            ClientWatch::ResetOnly => Look::Later,
            ClientWatch::Probe(byte) => {
                watch.how = ClientWatch::ResetOnly;
                match send_byte_fd(fd, byte) {
                    Ok(true) => {
                        *probed = true;
                        Look::Soon
                    }
                    // The send buffer is full: the client is not reading,
                    // but still there.
                    Ok(false) => Look::Later,
                    Err(_) => Look::Left,
                }
            }
        },
    }
}

/// Shuts down a registered connection's socket (`how`: `SHUT_RD` or
/// `SHUT_RDWR`) so that its pending read or write completes.
#[allow(unsafe_code)]
fn shutdown_socket(fd: RawFd, how: libc::c_int) {
    // SAFETY: `fd` is a socket that a registered connection holds open: its
    // client socket (the entry is removed, in ConnCtx's drop, right after
    // the stream is dropped, with no await point in between), or the
    // upstream socket of an armed deadline (the Deadline guard disarms it
    // before the upstream stream can be dropped, again with no await point
    // in between). This runs on the same thread, only while those tasks are
    // suspended, so the descriptor cannot have been closed or reused.
    // shutdown(2) does not free the descriptor.
    unsafe {
        libc::shutdown(fd, how);
    }
}

/// A connection's handle on its worker: idle/busy marking, drain state and
/// deadlines.
///
/// Dropping it unregisters the connection; keep it alive for as long as the
/// socket is open.
pub struct ConnCtx {
    worker: Rc<WorkerState>,
    key: usize,
}

/// An armed deadline; disarmed when dropped.
#[must_use = "the deadline is disarmed when this guard is dropped"]
pub struct Deadline<'a> {
    conn: &'a ConnCtx,
}

impl Deadline<'_> {
    /// Disarms the deadline; returns whether the sweep ended the wait it
    /// bounded (it expired, or the client left).
    pub fn finish(self) -> bool {
        self.conn.expired().is_some()
    }

    /// Disarms the deadline; returns how the sweep ended the wait, if it did.
    pub fn ending(self) -> Option<Ending> {
        self.conn.update(|e| match e.expired {
            None => None,
            Some(_) if e.client_left => Some(Ending::ClientLeft),
            Some(_) => Some(Ending::Expired),
        })?
    }
}

impl Drop for Deadline<'_> {
    fn drop(&mut self) {
        self.conn.update(|e| {
            e.armed = None;
            e.upstream_fd = -1;
            e.watch = None;
        });
    }
}

impl ConnCtx {
    /// A connection on a worker of its own that no sweeper serves, so no
    /// deadline ever fires: for driving the engine over in-memory streams
    /// in tests and fuzzing, where nothing waits without end.
    pub fn detached() -> ConnCtx {
        let worker = Rc::new(WorkerState::new(
            0,
            usize::MAX,
            None,
            Arc::default(),
            Duration::from_secs(1),
        ));
        worker
            .register(-1, std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
            .unwrap_or_else(|_| unreachable!("an empty worker without limits takes a connection"))
    }

    /// Registers work of the worker's own beside this connection: it runs
    /// like a connection with no client socket (a cache's background
    /// refresh), has deadlines, and keeps a drain waiting until it ends.
    /// `None` when the worker is at its connection limit.
    pub fn own_work(&self) -> Option<ConnCtx> {
        self.worker.register_own()
    }

    fn update<R>(&self, f: impl FnOnce(&mut ConnEntry) -> R) -> Option<R> {
        self.worker.conns.borrow_mut().get_mut(self.key).map(f)
    }

    /// Marks the connection as waiting for a new request (`true`) or busy.
    ///
    /// Returns `false` when the connection should close instead of waiting,
    /// because the worker is draining.
    pub fn set_idle(&self, idle: bool) -> bool {
        self.update(|e| {
            e.idle = idle;
            e.probed = false;
            e.client_left = false;
        });
        !(idle && self.closes_idle())
    }

    /// Whether the worker closes idle connections: it drains, and not
    /// gently (a handover's drain lets them send one more request).
    pub fn closes_idle(&self) -> bool {
        self.worker.draining.is_fired() && !self.worker.gentle.get()
    }

    /// Whether the worker is shutting down: finish this request, then close.
    pub fn is_draining(&self) -> bool {
        self.worker.draining.is_fired()
    }

    /// The worker's coarse clock: milliseconds since the worker started,
    /// advanced by every sweep (so at most one tick behind). Reading it
    /// costs no system call.
    pub fn clock_ms(&self) -> u64 {
        self.worker.now_ms.get()
    }

    /// Index of the worker serving this connection.
    pub fn worker_index(&self) -> usize {
        self.worker.index
    }

    /// Counts one finished request on this worker.
    pub fn count_request(&self) {
        WorkerStats::bump(&self.worker.stats.requests);
    }

    /// Counts bytes moved with splice(2).
    pub fn count_spliced(&self, bytes: u64) {
        WorkerStats::add(&self.worker.stats.spliced_bytes, bytes);
    }

    /// Arms a deadline: if the connection still waits on `wait` after
    /// `limit`, the wait is ended (see [`Wait`]). Client waits only.
    pub fn deadline(&self, wait: Wait, limit: Duration) -> Deadline<'_> {
        self.arm(wait, limit, -1)
    }

    /// Arms a deadline on `upstream` for a [`Wait::Upstream`] or
    /// [`Wait::Tunnel`] wait. The guard must be dropped before `upstream`
    /// is (it is, when scoped around the await it bounds).
    pub fn upstream_deadline(&self, wait: Wait, limit: Duration, upstream: RawFd) -> Deadline<'_> {
        self.arm(wait, limit, upstream)
    }

    /// Arms a [`Wait::Response`] deadline on `upstream`, with the sweep
    /// watching the client as `watch` allows (see the module docs). The
    /// guard must be dropped before `upstream` is.
    pub fn response_deadline(&self, limit: Duration, upstream: RawFd, watch: ClientWatch) -> Deadline<'_> {
        let tick = self.worker.tick_ms;
        let first = self.worker.now_ms.get() + tick;
        self.arm_watched(
            Wait::Response,
            limit,
            upstream,
            Some(Watch {
                how: watch,
                next_ms: first,
                every_ms: tick,
                on: true,
            }),
        )
    }

    fn arm(&self, wait: Wait, limit: Duration, upstream_fd: RawFd) -> Deadline<'_> {
        self.arm_watched(wait, limit, upstream_fd, None)
    }

    fn arm_watched(
        &self,
        wait: Wait,
        limit: Duration,
        upstream_fd: RawFd,
        watch: Option<Watch>,
    ) -> Deadline<'_> {
        let (at, limit_ms) = self.worker.deadline_after(limit);
        self.update(|e| {
            e.armed = Some(Armed { at, wait, limit_ms });
            e.upstream_fd = upstream_fd;
            e.expired = None;
            // One probe per response: a probe already sent and not yet
            // skipped by the engine (a retry, or a wait after an interim
            // response the client was not sent) leaves resets to watch.
            // Work of the worker's own has no client to watch.
            e.watch = watch.filter(|_| e.fd >= 0).map(|mut w| {
                if e.probed {
                    w.how = ClientWatch::ResetOnly;
                }
                w
            });
        });
        Deadline { conn: self }
    }

    /// Whether the sweep sent the first byte of the response as a probe
    /// (see the module docs); the engine then sends the response without
    /// it. Clears the mark.
    pub fn take_probe(&self) -> bool {
        self.update(|e| std::mem::take(&mut e.probed)).unwrap_or(false)
    }

    /// Pushes the armed deadline out by its full limit again (a tunnel
    /// that just moved bytes is not idle).
    pub fn refresh(&self) {
        let now = self.worker.now_ms.get();
        let tick = self.worker.tick_ms;
        self.update(|e| {
            if let Some(armed) = &mut e.armed {
                armed.at = now + armed.limit_ms + tick;
            }
        });
    }

    /// The wait whose deadline expired since the last one was armed.
    pub fn expired(&self) -> Option<Wait> {
        self.update(|e| e.expired).flatten()
    }
}

impl Drop for ConnCtx {
    fn drop(&mut self) {
        let mut conns = self.worker.conns.borrow_mut();
        let entry = conns.remove(self.key);
        if let (Some(table), Some(ip)) = (&self.worker.per_ip, entry.peer_ip) {
            table.release(ip);
        }
        self.worker
            .stats
            .active
            .store(conns.len() as u64, Ordering::Relaxed);
        if conns.is_empty() && self.worker.accepts_ended.get() {
            drop(conns);
            self.worker.all_closed.fire();
        }
    }
}

/// Connections that must have closed since the last look for the worker
/// to hand free memory back to the system.
const TRIM_AFTER_CLOSED: usize = 256;

/// Runs the worker's sweeper until the worker has drained, with
/// `housekeeping` (which says whether it freed memory) about once a second.
///
/// Memory freed after a flood stays in the allocator, and so in the
/// resident size, until the allocator is asked to give it back: that is
/// done when housekeeping freed buffers, or when many connections closed
/// since the last look (their tasks and head buffers are gone).
pub(crate) async fn run_sweeper(state: Rc<WorkerState>, housekeeping: impl Fn(u64) -> bool) {
    let ticks_per_second = (1000 / state.tick_ms).max(1);
    let mut ticks = 0;
    loop {
        monoio::time::sleep(state.tick()).await;
        state.sweep();
        if state.all_closed.is_fired() {
            return;
        }
        ticks += 1;
        if ticks % ticks_per_second == 0 {
            let freed = housekeeping(state.now_ms.get());
            let now = state.connection_count();
            let closed = state.peak_conns.replace(now).saturating_sub(now);
            if freed || closed >= TRIM_AFTER_CLOSED {
                give_pages_back();
            }
        }
    }
}

/// Asks the allocator to return free pages to the system; glibc keeps
/// them otherwise.
fn give_pages_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    // SAFETY: malloc_trim only walks the allocator's own free lists; it is
    // thread-safe and takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsRawFd;

    use super::*;

    const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    fn state(max: usize) -> Rc<WorkerState> {
        Rc::new(WorkerState::new(
            0,
            max,
            None,
            Arc::default(),
            Duration::from_millis(10),
        ))
    }

    #[test]
    fn registry_enforces_the_limit_and_counts_rejections() {
        let worker = state(2);
        let a = worker.register(-1, LOCAL).unwrap();
        let _b = worker.register(-1, LOCAL).unwrap();
        assert!(worker.register(-1, LOCAL).is_err());
        assert_eq!(worker.stats.rejected_over_limit.load(Ordering::Relaxed), 1);
        assert_eq!(worker.stats.active.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(worker.connection_count(), 1);
        assert!(worker.register(-1, LOCAL).is_ok());
    }

    #[test]
    fn the_per_address_limit_counts_open_connections_across_workers() {
        let table = Arc::new(PerIpConnections::new(2));
        let workers: Vec<_> = (0..2)
            .map(|i| {
                Rc::new(WorkerState::new(
                    i,
                    8,
                    Some(Arc::clone(&table)),
                    Arc::default(),
                    Duration::from_millis(10),
                ))
            })
            .collect();
        let a = workers[0].register(-1, LOCAL).unwrap();
        let _b = workers[1].register(-1, LOCAL).unwrap();
        assert!(workers[0].register(-1, LOCAL).is_err(), "two open on two workers");
        assert!(workers[1].register(-1, "127.0.0.2".parse().unwrap()).is_ok());
        assert_eq!(workers[0].stats.rejected_per_ip.load(Ordering::Relaxed), 1);
        drop(a);
        assert!(
            workers[1].register(-1, LOCAL).is_ok(),
            "a closed one frees its place"
        );
    }

    #[test]
    fn idle_connections_are_told_to_close_once_draining() {
        let worker = state(8);
        let conn = worker.register(-1, LOCAL).unwrap();
        assert!(conn.set_idle(true));
        assert!(conn.set_idle(false));
        worker.begin_drain(true);
        assert!(conn.is_draining());
        assert!(conn.set_idle(true), "a gentle drain lets idle ones wait");
        worker.begin_drain(false);
        assert!(!conn.set_idle(true));
        worker.end_accepts();
        drop(conn);
        assert!(worker.all_closed.is_fired());
    }

    #[test]
    fn a_connection_accepted_after_the_drain_began_is_waited_for() {
        // A cancelled accept can still hand over a connection after every
        // connection the worker had closed: the drain is not over until
        // the accept loops have returned and that one closed too.
        let worker = state(8);
        let early = worker.register(-1, LOCAL).unwrap();
        worker.begin_drain(true);
        drop(early);
        assert!(!worker.all_closed.is_fired(), "the accepts have not ended");
        let late = worker.register(-1, LOCAL).unwrap();
        worker.end_accepts();
        assert!(!worker.all_closed.is_fired(), "the late one is open");
        drop(late);
        assert!(worker.all_closed.is_fired());
        // With no connection open when the accepts end, it is over at once.
        let idle = state(8);
        idle.begin_drain(false);
        assert!(!idle.all_closed.is_fired());
        idle.end_accepts();
        assert!(idle.all_closed.is_fired());
    }

    #[test]
    fn deadlines_expire_on_the_sweep_after_their_limit_and_end_the_wait() {
        use std::{
            io::Read,
            net::{TcpListener, TcpStream},
        };
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        let worker = state(8);
        let conn = worker.register(server.as_raw_fd(), LOCAL).unwrap();
        {
            let _armed = conn.deadline(Wait::ClientWrite, Duration::from_millis(30));
            worker.sweep();
            assert_eq!(conn.expired(), None, "not before its limit");
            std::thread::sleep(Duration::from_millis(60));
            worker.sweep();
            assert_eq!(conn.expired(), Some(Wait::ClientWrite));
        }
        let mut buf = [0u8; 1];
        assert_eq!(client.read(&mut buf).unwrap(), 0, "the socket was shut down");
        // A dropped guard disarms: later sweeps leave the connection alone.
        let _armed = conn.deadline(Wait::ClientRead, Duration::from_secs(3600));
        assert_eq!(conn.expired(), None, "arming clears the last expiry");
        drop(_armed);
        worker.sweep();
        assert_eq!(conn.expired(), None);
        assert_eq!(worker.stats.timeouts.load(Ordering::Relaxed), 1);
    }

    /// A connected pair: (client, the proxy's socket for it).
    fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    /// Sweeps until the watch has had time for a look and its follow-up.
    fn sweep_a_while(worker: &WorkerState) {
        for _ in 0..6 {
            std::thread::sleep(Duration::from_millis(15));
            worker.sweep();
        }
    }

    #[test]
    fn own_work_counts_as_a_connection_has_deadlines_and_no_client_to_watch() {
        let worker = state(2);
        let (_client, server) = pair();
        let conn = worker.register(server.as_raw_fd(), LOCAL).unwrap();
        let own = conn.own_work().expect("room for it");
        assert_eq!(worker.connection_count(), 2);
        assert!(conn.own_work().is_none(), "the connection limit holds");
        // Watching a client it does not have would take it for gone.
        let armed = own.response_deadline(Duration::from_secs(60), -1, ClientWatch::Probe(b'H'));
        sweep_a_while(&worker);
        assert_eq!(armed.ending(), None, "still waiting");
        assert_eq!(worker.stats.client_aborts.load(Ordering::Relaxed), 0);
        // Its deadlines still end its waits.
        let armed = own.deadline(Wait::Upstream, Duration::ZERO);
        std::thread::sleep(Duration::from_millis(25));
        worker.sweep();
        assert_eq!(armed.ending(), Some(Ending::Expired));
        drop(own);
        assert_eq!(worker.connection_count(), 1);
    }

    #[test]
    fn a_half_closed_client_gets_the_probe_byte_and_is_not_taken_for_gone() {
        use std::io::Read;
        let (mut client, server) = pair();
        let worker = state(8);
        let conn = worker.register(server.as_raw_fd(), LOCAL).unwrap();
        let armed = conn.response_deadline(Duration::from_secs(60), -1, ClientWatch::Probe(b'H'));
        client.shutdown(std::net::Shutdown::Write).unwrap();
        sweep_a_while(&worker);
        assert_eq!(armed.ending(), None, "still waiting");
        assert!(conn.take_probe(), "the probe went out");
        assert!(!conn.take_probe(), "taking it clears it");
        let mut byte = [0u8; 1];
        client.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"H");
        assert_eq!(worker.stats.client_aborts.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_second_wait_before_the_response_sends_no_second_probe() {
        use std::io::Read;
        let (mut client, server) = pair();
        let worker = state(8);
        let conn = worker.register(server.as_raw_fd(), LOCAL).unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        for _ in 0..2 {
            // A retry, or a wait after a 1xx the client did not get.
            let armed = conn.response_deadline(Duration::from_secs(60), -1, ClientWatch::Probe(b'H'));
            sweep_a_while(&worker);
            assert_eq!(armed.ending(), None);
        }
        assert!(conn.take_probe());
        client.set_nonblocking(true).unwrap();
        let mut got = [0u8; 4];
        assert_eq!(client.read(&mut got).unwrap(), 1, "one probe byte, not two");
    }

    #[test]
    fn a_closed_client_answers_the_probe_with_a_reset_and_ends_the_wait() {
        let (client, server) = pair();
        let worker = state(8);
        let conn = worker.register(server.as_raw_fd(), LOCAL).unwrap();
        let armed = conn.response_deadline(Duration::from_secs(60), -1, ClientWatch::Probe(b'H'));
        drop(client);
        sweep_a_while(&worker);
        assert_eq!(armed.ending(), Some(Ending::ClientLeft));
        assert_eq!(worker.stats.client_aborts.load(Ordering::Relaxed), 1);
        assert_eq!(worker.stats.timeouts.load(Ordering::Relaxed), 0, "not a timeout");
    }

    #[test]
    fn a_client_that_pipelines_is_not_watched_further_and_no_probe_goes_out() {
        use std::io::Write;
        let (mut client, server) = pair();
        let worker = state(8);
        let conn = worker.register(server.as_raw_fd(), LOCAL).unwrap();
        let armed = conn.response_deadline(Duration::from_secs(60), -1, ClientWatch::Probe(b'H'));
        client.write_all(b"GET /next HTTP/1.1\r\n\r\n").unwrap();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        sweep_a_while(&worker);
        assert!(!conn.take_probe());
        assert_eq!(armed.ending(), None);
    }

    #[test]
    fn once_the_response_began_end_of_stream_draws_no_probe() {
        let (client, server) = pair();
        let worker = state(8);
        let conn = worker.register(server.as_raw_fd(), LOCAL).unwrap();
        let armed = conn.response_deadline(Duration::from_secs(60), -1, ClientWatch::ResetOnly);
        client.shutdown(std::net::Shutdown::Write).unwrap();
        sweep_a_while(&worker);
        assert!(!conn.take_probe());
        assert_eq!(armed.ending(), None);
    }

    #[test]
    fn refresh_pushes_a_deadline_out() {
        let worker = state(8);
        let conn = worker.register(-1, LOCAL).unwrap();
        let _armed = conn.deadline(Wait::Tunnel, Duration::from_millis(40));
        std::thread::sleep(Duration::from_millis(30));
        worker.sweep();
        conn.refresh();
        std::thread::sleep(Duration::from_millis(30));
        worker.sweep();
        assert_eq!(conn.expired(), None, "refreshed 30 ms ago, limit 40 ms");
        // Still armed: with no further refresh it expires.
        std::thread::sleep(Duration::from_millis(60));
        worker.sweep();
        assert_eq!(conn.expired(), Some(Wait::Tunnel));
    }
}
