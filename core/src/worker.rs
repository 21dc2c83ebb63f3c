//! Per-worker state: the live-connection registry, connection limits,
//! counters and the drain that graceful shutdown runs.
//!
//! A connection is registered when accepted and removed when its task ends;
//! the engine marks it idle while it waits for the next request on a
//! keep-alive connection. Draining stops the accept loops, closes idle
//! connections at once (a `shutdown(2)` wakes their pending read), lets busy
//! ones finish their request (the engine sees [`ConnCtx::is_draining`] and
//! answers with `Connection: close`), and after the shutdown timeout closes
//! whatever is left.

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
};

use slab::Slab;

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
    /// Connections open now.
    pub active: AtomicU64,
    /// Requests the engine finished (answered or failed).
    pub requests: AtomicU64,
}

impl WorkerStats {
    /// Adds one to `counter` (single writer: a relaxed load and store).
    pub fn bump(counter: &AtomicU64) {
        counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
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

struct ConnEntry {
    fd: RawFd,
    idle: bool,
}

/// The state one worker shares between its accept loops and connections.
pub(crate) struct WorkerState {
    pub(crate) index: usize,
    pub(crate) max_connections: usize,
    pub(crate) stats: Arc<WorkerStats>,
    conns: RefCell<Slab<ConnEntry>>,
    pub(crate) draining: LocalEvent,
    pub(crate) all_closed: LocalEvent,
}

impl WorkerState {
    pub(crate) fn new(index: usize, max_connections: usize, stats: Arc<WorkerStats>) -> Self {
        Self {
            index,
            max_connections,
            stats,
            conns: RefCell::new(Slab::new()),
            draining: LocalEvent::default(),
            all_closed: LocalEvent::default(),
        }
    }

    /// Registers an accepted connection, or returns `None` when the worker is
    /// at its connection limit (the caller closes the socket).
    pub(crate) fn register(self: &Rc<Self>, fd: RawFd) -> Option<ConnCtx> {
        let mut conns = self.conns.borrow_mut();
        if conns.len() >= self.max_connections {
            WorkerStats::bump(&self.stats.rejected_over_limit);
            return None;
        }
        let key = conns.insert(ConnEntry { fd, idle: false });
        self.stats.active.store(conns.len() as u64, Ordering::Relaxed);
        Some(ConnCtx {
            worker: Rc::clone(self),
            key,
        })
    }

    pub(crate) fn connection_count(&self) -> usize {
        self.conns.borrow().len()
    }

    /// Starts draining: accept loops stop, idle connections are closed.
    pub(crate) fn begin_drain(&self) {
        self.draining.fire();
        self.close_connections(true);
        if self.conns.borrow().is_empty() {
            self.all_closed.fire();
        }
    }

    /// Closes idle connections (`only_idle`) or every connection.
    pub(crate) fn close_connections(&self, only_idle: bool) {
        for (_, conn) in self.conns.borrow().iter() {
            if conn.idle || !only_idle {
                shutdown_socket(conn.fd);
            }
        }
    }
}

/// Shuts a registered socket down in both directions so that its pending
/// read or write completes and its task ends.
#[allow(unsafe_code)]
fn shutdown_socket(fd: RawFd) {
    // SAFETY: `fd` belongs to a connection that is still registered. Its task
    // removes the entry (ConnCtx's drop) right after the stream is dropped,
    // with no await point in between, and this runs on the same thread, so
    // the descriptor cannot have been closed or reused by the time we get
    // here. shutdown(2) does not free the descriptor.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// A connection's handle on its worker: idle/busy marking and drain state.
///
/// Dropping it unregisters the connection; keep it alive for as long as the
/// socket is open.
pub struct ConnCtx {
    worker: Rc<WorkerState>,
    key: usize,
}

impl ConnCtx {
    /// Marks the connection as waiting for a new request (`true`) or busy.
    ///
    /// Returns `false` when the connection should close instead of waiting,
    /// because the worker is draining.
    pub fn set_idle(&self, idle: bool) -> bool {
        if let Some(conn) = self.worker.conns.borrow_mut().get_mut(self.key) {
            conn.idle = idle;
        }
        !(idle && self.worker.draining.is_fired())
    }

    /// Whether the worker is shutting down: finish this request, then close.
    pub fn is_draining(&self) -> bool {
        self.worker.draining.is_fired()
    }

    /// Index of the worker serving this connection.
    pub fn worker_index(&self) -> usize {
        self.worker.index
    }

    /// Counts one finished request on this worker.
    pub fn count_request(&self) {
        WorkerStats::bump(&self.worker.stats.requests);
    }
}

impl Drop for ConnCtx {
    fn drop(&mut self) {
        let mut conns = self.worker.conns.borrow_mut();
        conns.remove(self.key);
        self.worker
            .stats
            .active
            .store(conns.len() as u64, Ordering::Relaxed);
        if conns.is_empty() && self.worker.draining.is_fired() {
            drop(conns);
            self.worker.all_closed.fire();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_enforces_the_limit_and_counts_rejections() {
        let worker = Rc::new(WorkerState::new(0, 2, Arc::default()));
        let a = worker.register(-1).unwrap();
        let _b = worker.register(-1).unwrap();
        assert!(worker.register(-1).is_none());
        assert_eq!(worker.stats.rejected_over_limit.load(Ordering::Relaxed), 1);
        assert_eq!(worker.stats.active.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(worker.connection_count(), 1);
        assert!(worker.register(-1).is_some());
    }

    #[test]
    fn idle_connections_are_told_to_close_once_draining() {
        let worker = Rc::new(WorkerState::new(0, 8, Arc::default()));
        let conn = worker.register(-1).unwrap();
        assert!(conn.set_idle(true));
        assert!(conn.set_idle(false));
        worker.draining.fire();
        assert!(conn.is_draining());
        assert!(!conn.set_idle(true));
        drop(conn);
        assert!(worker.all_closed.is_fired());
    }
}
