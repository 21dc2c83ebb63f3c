//! Per-worker pool of idle upstream keep-alive connections.
//!
//! One pool per worker, shared by its listeners through an `Rc`: taking and
//! returning a connection touches only worker-local state. Connections are
//! kept per server address, most recently used first (so the ones kept warm
//! are the ones in use, and the rest age out). A connection idle longer than
//! the idle timeout is closed when it is next looked at; at most
//! `max_idle_per_server` are kept per server.

use std::{
    cell::{Cell, RefCell},
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use monoio::net::TcpStream;
use ringway_core::{Error, ErrorKind, Result, Side};

use crate::{buffers, io::timed};

/// An open connection to an upstream server, with its read buffer.
#[derive(Debug)]
pub(crate) struct UpstreamConn {
    pub(crate) stream: TcpStream,
    pub(crate) rbuf: BytesMut,
    pub(crate) addr: SocketAddr,
    /// Whether it came from the pool (it may have been closed by the server
    /// while idle, which makes a failure before the response retryable).
    pub(crate) reused: bool,
}

impl UpstreamConn {
    /// Connects to `addr` within `timeout`.
    pub(crate) async fn connect(addr: SocketAddr, timeout: Duration, buffer_size: usize) -> Result<Self> {
        let stream = timed(
            timeout,
            ErrorKind::ConnectTimeout,
            Side::Upstream,
            "connecting to the upstream",
            TcpStream::connect_addr(addr),
        )
        .await?
        .map_err(|e| {
            Error::new(
                ErrorKind::ConnectFailed,
                Side::Upstream,
                "connecting to the upstream",
            )
            .with_cause(e)
        })?;
        // One write per message already; this keeps small writes from
        // waiting on Nagle when a message does take two.
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream,
            rbuf: buffers::take_read(buffer_size),
            addr,
            reused: false,
        })
    }
}

/// Settings of an [`UpstreamPool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolSettings {
    /// Idle connections kept per server and worker.
    pub max_idle_per_server: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// Idle time after which a connection is checked (one non-blocking
    /// peek) before reuse, for a close by the server or stray bytes.
    pub check_after: Duration,
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_idle_per_server: 128,
            idle_timeout: Duration::from_secs(60),
            check_after: Duration::from_millis(1),
        }
    }
}

struct IdleConn {
    conn: UpstreamConn,
    since: Instant,
}

/// A worker's idle upstream connections.
pub struct UpstreamPool {
    settings: PoolSettings,
    idle: RefCell<HashMap<SocketAddr, Vec<IdleConn>>>,
    created: Cell<u64>,
    reused: Cell<u64>,
}

impl UpstreamPool {
    /// An empty pool.
    pub fn new(settings: PoolSettings) -> Self {
        Self {
            settings,
            idle: RefCell::new(HashMap::new()),
            created: Cell::new(0),
            reused: Cell::new(0),
        }
    }

    /// Connections opened and connections reused so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.created.get(), self.reused.get())
    }

    /// An idle connection to one of `candidates`, or a new one to the first
    /// that accepts.
    pub(crate) async fn get(
        &self,
        candidates: &[SocketAddr],
        connect_timeout: Duration,
        buffer_size: usize,
    ) -> Result<UpstreamConn> {
        for &addr in candidates {
            if let Some(conn) = self.take(addr, buffer_size) {
                self.reused.set(self.reused.get() + 1);
                return Ok(conn);
            }
        }
        self.connect(candidates, connect_timeout, buffer_size).await
    }

    /// A new connection to the first of `candidates` that accepts, never
    /// from the pool; fails with the last error when none does.
    pub(crate) async fn connect(
        &self,
        candidates: &[SocketAddr],
        connect_timeout: Duration,
        buffer_size: usize,
    ) -> Result<UpstreamConn> {
        let mut last = Error::new(ErrorKind::NoUpstream, Side::Upstream, "no address to connect to");
        for &addr in candidates {
            // Boxed: monoio's connect future is large, and new connections
            // are rare next to pooled ones; inline it would size every
            // client connection's task.
            match Box::pin(UpstreamConn::connect(addr, connect_timeout, buffer_size)).await {
                Ok(conn) => {
                    self.created.set(self.created.get() + 1);
                    return Ok(conn);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn take(&self, addr: SocketAddr, buffer_size: usize) -> Option<UpstreamConn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&addr)?;
        let now = Instant::now();
        while let Some(entry) = list.pop() {
            let idle = now.duration_since(entry.since);
            if idle >= self.settings.idle_timeout {
                continue;
            }
            // A connection that sat idle for a while may have been closed by
            // the server, or have stray bytes waiting that the next request
            // would take for its response: look before reusing it. One that
            // was released a moment ago (the steady state under load) skips
            // the extra system call.
            if idle >= self.settings.check_after && !ringway_core::socket::is_quiet(&entry.conn.stream) {
                continue;
            }
            let mut conn = entry.conn;
            conn.reused = true;
            conn.rbuf = buffers::take_read(buffer_size);
            return Some(conn);
        }
        None
    }

    /// Returns a connection whose last exchange ended cleanly.
    pub(crate) fn put(&self, mut conn: UpstreamConn, buffer_size: usize) {
        if !conn.rbuf.is_empty() || self.settings.max_idle_per_server == 0 {
            return;
        }
        // An idle connection holds no buffer.
        buffers::give_read(std::mem::take(&mut conn.rbuf), buffer_size);
        let now = Instant::now();
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry(conn.addr).or_default();
        // The oldest entry is at the front: close it once it has expired, so
        // connections that are never taken again do not linger.
        if list
            .first()
            .is_some_and(|oldest| now.duration_since(oldest.since) >= self.settings.idle_timeout)
        {
            list.remove(0);
        }
        if list.len() < self.settings.max_idle_per_server {
            list.push(IdleConn { conn, since: now });
        }
    }
}
