//! Per-worker pool of idle upstream keep-alive connections.
//!
//! One pool per worker, shared by its listeners through an `Rc`: taking and
//! returning a connection touches only worker-local state. Connections are
//! kept per server address and TLS identity (plain, or the TLS settings
//! and server name a session was opened with: a session verified for one
//! name is never reused for another), most recently used first (so the ones kept warm
//! are the ones in use, and the rest age out). A connection idle longer than
//! the idle timeout is closed when it is next looked at; at most
//! `max_idle_per_server` are kept per server. An upstream group may set
//! its own count and timeout (`keepalive`, `keepalive_timeout`, carried by
//! its connections), as nginx's `keepalive` does per upstream block.
//!
//! Every connection is looked at before it is handed out, however briefly
//! it was idle: anything that arrived while it sat in the pool (stray bytes
//! after a complete response, a FIN, a reset) means the upstream is out of
//! step with the requests, and the connection is closed, never reused. An
//! upstream that sends a second, unrequested response 0.1 ms after the
//! first would otherwise have it read as the answer to whichever request,
//! from whichever client, takes the connection next. The look is one
//! non-blocking `recv(MSG_PEEK)` (about 0.3 µs here): cheaper than keeping
//! a read watch armed on every idle connection and cancelling it on reuse,
//! which costs two ring operations per request.

use std::{
    cell::{Cell, RefCell},
    net::SocketAddr,
    time::Duration,
};

// foldhash, not SipHash: looked up on every request, with keys from the
// configuration and the worker's own connections.
use hashbrown::HashMap;

use bytes::BytesMut;
use monoio::net::TcpStream;
use ringway_core::{Error, ErrorKind, Result, Side};

use crate::{
    buffers,
    io::timed,
    tls::{PeerTls, UpstreamStream},
};

/// What an idle connection is kept under: the server's address and the
/// TLS identity of its session (0: plain).
type PoolKey = (SocketAddr, u64);

/// An open connection to an upstream server, with its read buffer.
#[derive(Debug)]
pub(crate) struct UpstreamConn {
    pub(crate) stream: UpstreamStream,
    pub(crate) rbuf: BytesMut,
    pub(crate) addr: SocketAddr,
    /// The TLS identity of its session (0: plain).
    pub(crate) tls: u64,
    /// Whether it came from the pool (it may have been closed by the server
    /// while idle, which makes a failure before the response retryable).
    pub(crate) reused: bool,
    /// Its upstream's own keep-alive limits, over the pool's settings.
    pub(crate) keep: KeepIdle,
}

/// An upstream's own keep-alive limits (`[[upstream]] keepalive` and
/// `keepalive_timeout`); `None` takes the pool's setting.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KeepIdle {
    pub(crate) max: Option<usize>,
    pub(crate) timeout: Option<Duration>,
}

impl UpstreamConn {
    /// Connects to `addr` within `timeout`, and with `tls` runs the TLS
    /// handshake within the same time.
    pub(crate) async fn connect(
        addr: SocketAddr,
        tls: Option<&PeerTls>,
        timeout: Duration,
        buffer_size: usize,
    ) -> Result<Self> {
        let started = std::time::Instant::now();
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
        let (stream, identity) = match tls {
            None => (UpstreamStream::Plain(stream), 0),
            Some(tls) => {
                let left = timeout.saturating_sub(started.elapsed());
                let handshake = timed(
                    left,
                    ErrorKind::ConnectTimeout,
                    Side::Upstream,
                    "the TLS handshake with the upstream took too long",
                    tls.handshake(stream, addr),
                );
                (Box::pin(handshake).await??, tls.identity())
            }
        };
        Ok(Self {
            stream,
            rbuf: buffers::take_read(buffer_size),
            addr,
            tls: identity,
            reused: false,
            keep: KeepIdle::default(),
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
}

impl Default for PoolSettings {
    fn default() -> Self {
        Self {
            max_idle_per_server: 128,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

struct IdleConn {
    conn: UpstreamConn,
    /// When it stops being reused, on the worker's coarse clock
    /// (milliseconds).
    expires_ms: u64,
}

/// A worker's idle upstream connections.
pub struct UpstreamPool {
    settings: PoolSettings,
    idle: RefCell<HashMap<PoolKey, Vec<IdleConn>>>,
    created: Cell<u64>,
    reused: Cell<u64>,
    dropped_unquiet: Cell<u64>,
}

impl UpstreamPool {
    /// An empty pool.
    pub fn new(settings: PoolSettings) -> Self {
        Self {
            settings,
            idle: RefCell::new(HashMap::new()),
            created: Cell::new(0),
            reused: Cell::new(0),
            dropped_unquiet: Cell::new(0),
        }
    }

    /// Connections opened and connections reused so far.
    pub fn counts(&self) -> (u64, u64) {
        (self.created.get(), self.reused.get())
    }

    /// Connections closed instead of pooled or reused because bytes, a FIN
    /// or a reset came from the upstream when no request was waiting.
    pub fn dropped_unquiet(&self) -> u64 {
        self.dropped_unquiet.get()
    }

    /// An idle connection to one of `candidates`, or a new one to the first
    /// that accepts. `now_ms` is the worker's coarse clock.
    pub(crate) async fn get(
        &self,
        candidates: &[SocketAddr],
        tls: Option<&PeerTls>,
        connect_timeout: Duration,
        buffer_size: usize,
        now_ms: u64,
    ) -> Result<UpstreamConn> {
        let identity = tls.map_or(0, PeerTls::identity);
        for &addr in candidates {
            if let Some(conn) = self.take((addr, identity), buffer_size, now_ms) {
                self.reused.set(self.reused.get() + 1);
                return Ok(conn);
            }
        }
        self.connect(candidates, tls, connect_timeout, buffer_size).await
    }

    /// A new connection to the first of `candidates` that accepts, never
    /// from the pool; fails with the last error when none does.
    pub(crate) async fn connect(
        &self,
        candidates: &[SocketAddr],
        tls: Option<&PeerTls>,
        connect_timeout: Duration,
        buffer_size: usize,
    ) -> Result<UpstreamConn> {
        let mut last = Error::new(ErrorKind::NoUpstream, Side::Upstream, "no address to connect to");
        for &addr in candidates {
            // Boxed: monoio's connect future is large, and new connections
            // are rare next to pooled ones; inline it would size every
            // client connection's task.
            match Box::pin(UpstreamConn::connect(addr, tls, connect_timeout, buffer_size)).await {
                Ok(conn) => {
                    self.created.set(self.created.get() + 1);
                    return Ok(conn);
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn take(&self, key: PoolKey, buffer_size: usize, now_ms: u64) -> Option<UpstreamConn> {
        let mut idle = self.idle.borrow_mut();
        let list = idle.get_mut(&key)?;
        while let Some(entry) = list.pop() {
            if now_ms >= entry.expires_ms {
                continue;
            }
            // Closed by the server, reset, or stray bytes waiting that the
            // next request would take for its response: whatever the idle
            // time, such a connection is dropped (see the module docs).
            if !ringway_core::socket::is_quiet(entry.conn.stream.tcp()) {
                self.dropped_unquiet.set(self.dropped_unquiet.get() + 1);
                continue;
            }
            let mut conn = entry.conn;
            conn.reused = true;
            // The limits are the next request's upstream's to set.
            conn.keep = KeepIdle::default();
            conn.rbuf = buffers::take_read(buffer_size);
            return Some(conn);
        }
        None
    }

    /// Returns a connection whose last exchange ended cleanly, at `now_ms`
    /// on the worker's coarse clock. One with unread bytes is closed.
    pub(crate) fn put(&self, mut conn: UpstreamConn, buffer_size: usize, now_ms: u64) {
        if !conn.rbuf.is_empty() || conn.stream.has_buffered_input() {
            self.dropped_unquiet.set(self.dropped_unquiet.get() + 1);
            return;
        }
        let max_idle = conn.keep.max.unwrap_or(self.settings.max_idle_per_server);
        if max_idle == 0 {
            return;
        }
        // An idle connection holds no buffer.
        buffers::give_read(std::mem::take(&mut conn.rbuf), buffer_size);
        conn.stream.release_buffers();
        let timeout = conn.keep.timeout.unwrap_or(self.settings.idle_timeout);
        let expires_ms = now_ms.saturating_add(timeout.as_millis().min(u128::from(u64::MAX)) as u64);
        let mut idle = self.idle.borrow_mut();
        let list = idle.entry((conn.addr, conn.tls)).or_default();
        // The oldest entry is at the front: close it once it has expired, so
        // connections that are never taken again do not linger.
        if list.first().is_some_and(|oldest| now_ms >= oldest.expires_ms) {
            list.remove(0);
        }
        if list.len() < max_idle {
            list.push(IdleConn { conn, expires_ms });
        }
    }

    /// Closes the idle connections that expired, and those on which
    /// anything arrived while idle (the server closed them, most often):
    /// run about once a second, so that they do not hold descriptors until
    /// a request next looks for one. Returns how many were closed.
    pub fn close_stale(&self, now_ms: u64) -> usize {
        let mut closed = 0;
        self.idle.borrow_mut().retain(|_, list| {
            let before = list.len();
            list.retain(|entry| {
                now_ms < entry.expires_ms && ringway_core::socket::is_quiet(entry.conn.stream.tcp())
            });
            closed += before - list.len();
            !list.is_empty()
        });
        closed
    }
}
