//! The connection engine: one loop per client connection, shared by every
//! mode, with [`ProxyHooks`] that decide where each request goes and hear
//! how each attempt went.
//!
//! The engine owns what both modes need: keep-alive and pipelining
//! (requests are answered strictly in order, one at a time), the phases of
//! each exchange, tunnels after a 101 or a CONNECT, and mapping every error
//! to one answer: a status for the client, or a closed connection when an
//! answer is no longer possible. It is cut by concern:
//!
//! - this module: the connection loop ([`Engine::serve`]) and one
//!   exchange's phases (guards, `request`, `route`, then a local answer, a
//!   proxied request or a tunnel, then `finish`);
//! - `server`: the downstream HTTP/1.1 session (request heads, local and
//!   error answers, lingering close, log lines);
//! - `client`: the upstream HTTP/1.1 client (sending the request and its
//!   body, again on a fresh connection when a pooled one was already
//!   closed, reading the response head);
//! - `driver`: the proxied exchange between them (attempts on peers,
//!   interim responses, the response relayed).

mod background;
mod client;
mod driver;
mod server;

use std::{
    future::Future,
    io,
    net::SocketAddr,
    panic::AssertUnwindSafe,
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use futures_util::FutureExt;
use monoio::{
    io::{AsyncReadRent, AsyncWriteRent, OwnedReadHalf, OwnedWriteHalf, Splitable},
    net::TcpStream,
};
use ringway_core::{ConnCtx, Error, ErrorKind};

#[cfg(any(test, feature = "fuzzing"))]
pub(crate) use driver::client_framing;
pub(crate) use server::release_unused_slots;
use server::{ConnBuffers, Slot, Tally};

use crate::{
    access_log::{AccessLogger, Event},
    guard,
    head::{BodyFraming, Method},
    hooks::{Peer, ProxyHooks, Route, Summary},
    limits::EngineSettings,
    metrics::ListenerMetrics,
    pool::{UpstreamConn, UpstreamPool},
    recycle::Recycled,
    request_id::RequestId,
    splice::SpliceSocket,
    tls::{copy_client_tunnel, UpstreamStream},
    tunnel::{splice_tunnel, TunnelBytes},
};

/// A client connection the engine can serve: a monoio stream that can be
/// split into halves (for tunnels), and which may expose its socket for
/// splicing.
pub trait ClientStream: AsyncReadRent + AsyncWriteRent + SpliceSocket + Sized + 'static {
    /// The reading half of a split stream.
    type ReadHalf: AsyncReadRent;
    /// The writing half of a split stream.
    type WriteHalf: AsyncWriteRent;

    /// Splits the stream into halves that read and write at once.
    fn into_halves(self) -> (Self::ReadHalf, Self::WriteHalf);

    /// Ends the connection from this side once its last answer is written
    /// (a TLS stream sends close_notify, so that a body delimited by the
    /// close is seen whole). The default does nothing: dropping a socket
    /// closes it.
    fn close(&mut self) -> impl Future<Output = ()> {
        std::future::ready(())
    }

    /// Waits until a read would find data (or the end of the stream),
    /// without holding a buffer. The default returns at once.
    fn wait_readable(&mut self) -> impl Future<Output = io::Result<()>> {
        std::future::ready(Ok(()))
    }

    /// Tunnels bytes between this connection and `upstream` until both
    /// directions end (CONNECT, upgrades). `client_buf` and `upstream_buf`
    /// hold bytes already read from each side. The default copies through
    /// user-space buffers; TCP clients splice when `splice` is set.
    fn tunnel_with(
        self,
        client_buf: BytesMut,
        upstream: UpstreamStream,
        upstream_buf: BytesMut,
        options: TunnelOptions,
        conn: &ConnCtx,
    ) -> impl Future<Output = TunnelBytes> {
        copy_client_tunnel(self, client_buf, upstream, upstream_buf, options, conn)
    }
}

impl ClientStream for TcpStream {
    type ReadHalf = OwnedReadHalf<TcpStream>;
    type WriteHalf = OwnedWriteHalf<TcpStream>;

    fn into_halves(self) -> (Self::ReadHalf, Self::WriteHalf) {
        self.into_split()
    }

    fn wait_readable(&mut self) -> impl Future<Output = io::Result<()>> {
        // Relaxed: on epoll a stale "ready" only means the read that
        // follows waits as usual.
        self.readable(true)
    }

    async fn tunnel_with(
        self,
        client_buf: BytesMut,
        upstream: UpstreamStream,
        upstream_buf: BytesMut,
        options: TunnelOptions,
        conn: &ConnCtx,
    ) -> TunnelBytes {
        match upstream {
            UpstreamStream::Plain(upstream) if options.splice => {
                splice_tunnel(self, client_buf, upstream, upstream_buf, options.idle, conn).await
            }
            upstream => copy_client_tunnel(self, client_buf, upstream, upstream_buf, options, conn).await,
        }
    }
}

/// How a tunnel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TunnelOptions {
    /// Close the tunnel after this long with no bytes either way.
    pub idle: Duration,
    /// Splice between TCP sockets instead of copying.
    pub splice: bool,
}

/// Who is on the other end of a client connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The local address it connected to.
    pub local: SocketAddr,
    /// The worker's coarse clock (milliseconds) when the request being
    /// handled began; the engine sets it for each request.
    pub now_ms: u64,
    /// What its TLS handshake established (server name asked for, client
    /// certificate), on a TLS listener.
    pub tls: Option<Rc<ringway_tls::TlsInfo>>,
    /// The ID of the request being handled (`$request_id`); the engine
    /// draws one for each request.
    pub request_id: RequestId,
    /// The request is the proxy's own, made in the background for this
    /// client's (a cache's refresh): nobody waits for its answer.
    pub background: bool,
}

impl ClientInfo {
    /// A client at `peer` connected to `local`.
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Self {
            peer,
            local,
            now_ms: 0,
            tls: None,
            request_id: RequestId::default(),
            background: false,
        }
    }
}

/// Where an exchange sends the request.
enum Target<'a> {
    /// A peer the hooks picked; they hear how each attempt went.
    Peer(Peer),
    /// The first of these addresses that accepts a connection.
    Addrs(&'a [SocketAddr]),
}

enum Outcome {
    KeepAlive,
    Close,
    /// Close, but the client may still be sending a request body the proxy
    /// did not read: linger first (see [`Engine::linger`]).
    CloseUnread,
    Upgrade(UpstreamConn),
}

/// A failed exchange: the error, and whether the client already received a
/// response head (then the only answer left is closing the connection).
struct Failure {
    error: Error,
    responded: bool,
}

impl Failure {
    fn before(error: Error) -> Self {
        Self {
            error,
            responded: false,
        }
    }

    fn after(error: Error) -> Self {
        Self {
            error,
            responded: true,
        }
    }
}

/// An exchange that opened a tunnel, kept for the line written when the
/// tunnel ends (boxed: rare, and only where an access log is kept).
struct TunnelLog<C> {
    cx: C,
    status: u16,
    upstream: Option<SocketAddr>,
    started: Instant,
}

/// The status logged for a request whose client left before its answer
/// (nginx's 499); nothing is sent.
const CLIENT_GONE_STATUS: u16 = 499;

/// Serves client connections for one listener on one worker.
pub struct Engine<H> {
    handler: H,
    settings: EngineSettings,
    pool: Rc<UpstreamPool>,
    listener: Rc<str>,
    /// The listener's access log on this worker, if it has one.
    log: Option<AccessLogger>,
    /// The listener's counters on this worker, where metrics are kept.
    metrics: Option<Arc<ListenerMetrics>>,
    /// A reload replaced this engine: its connections close after their
    /// current answer, and their clients come back to the new one.
    retired: std::cell::Cell<bool>,
}

impl<H: ProxyHooks> Engine<H> {
    /// An engine for the listener named `listener`, drawing upstream
    /// connections from the worker's `pool`.
    pub fn new(listener: &str, handler: H, settings: EngineSettings, pool: Rc<UpstreamPool>) -> Self {
        Self {
            handler,
            settings,
            pool,
            listener: Rc::from(listener),
            log: None,
            metrics: None,
            retired: std::cell::Cell::new(false),
        }
    }

    /// Writes a line per exchange, tunnel and refused head to `log`.
    pub fn with_access_log(mut self, log: AccessLogger) -> Self {
        self.log = Some(log);
        self
    }

    /// The listener's access log on this worker.
    pub fn access_log(&self) -> Option<&AccessLogger> {
        self.log.as_ref()
    }

    /// Counts its exchanges in `metrics` (this worker's, for this
    /// listener).
    pub fn with_metrics(mut self, metrics: Arc<ListenerMetrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// This listener's counters on this worker, if kept.
    pub fn metrics(&self) -> Option<&Arc<ListenerMetrics>> {
        self.metrics.as_ref()
    }

    /// Marks the engine replaced by a reload: each of its connections
    /// closes after its next answer (`Connection: close`), as HAProxy's
    /// `idle-close-on-response` does, so that a request already on its way
    /// on an idle keep-alive connection is still answered; the access log's
    /// lines so far are handed over.
    pub fn retire(&self) {
        self.retired.set(true);
        if let Some(log) = &self.log {
            log.unbuffer();
        }
    }

    /// Whether the connection must close after this answer: the worker is
    /// draining, or a reload replaced this engine.
    #[inline]
    fn closing(&self, conn: &ConnCtx) -> bool {
        conn.is_draining() || self.retired.get()
    }

    /// Whether exchanges are timed, counted and logged.
    #[inline]
    fn observing(&self) -> bool {
        self.log.is_some() || self.metrics.is_some()
    }

    /// Logs and counts a connection from `peer` to `local` that was closed
    /// at once, unanswered, over the limit named `why`.
    pub fn log_rejected(&self, peer: SocketAddr, local: SocketAddr, why: &'static str) {
        if self.observing() {
            let client = ClientInfo::new(peer, local);
            self.observe(&crate::access_log::Entry::rejected(&self.listener, &client, why));
        }
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The worker's upstream pool this engine draws from.
    pub fn pool(&self) -> &UpstreamPool {
        &self.pool
    }

    /// Serves requests on `io` until the client closes, an error ends the
    /// connection, a timeout expires, or the worker drains.
    ///
    /// The future owns the engine's handle, the stream, the client and the
    /// connection's context, each once: it is what an idle keep-alive
    /// connection costs (an `async fn` would keep its arguments beside
    /// their moved copies). While idle it holds no buffer and no heads
    /// (see [`Slot`]); an exchange's state lives in a block the worker
    /// recycles (see [`Recycled`]) while it runs.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments beside their moved copies for the whole connection"
    )]
    pub fn serve<S: ClientStream>(
        self: Rc<Self>,
        mut io: S,
        mut client: ClientInfo,
        conn: ConnCtx,
    ) -> impl Future<Output = ()> + 'static {
        async move {
            let size = self.settings.buffer_size;
            let mut slot = Slot::empty();
            let mut first = true;
            loop {
                match self.read_request(&mut io, &mut slot, first, &conn).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(error) => {
                        let st = slot.get(size);
                        // The head did not parse, but its first word may still
                        // say that the answer must have no body.
                        let head_request = st.rbuf.starts_with(b"HEAD ");
                        // Boxed: rare, and inline it would size every idle
                        // connection's task for it.
                        let cx = H::Ctx::default();
                        client.request_id = RequestId::next();
                        let answer = self.send_error(
                            &mut io,
                            &mut st.wbuf,
                            &mut st.tally,
                            &st.req,
                            &error,
                            head_request,
                            &conn,
                            &cx,
                        );
                        let status = Box::pin(answer).await;
                        self.log_failure(&client, &st.req, status, &error, None);
                        if self.observing() && status != 0 && !client.background {
                            let bytes_in = (st.req.raw().len() + st.rbuf.len()) as u64;
                            let facts = self.handler.log_facts(&cx);
                            let (event, tally) = (Event::Refused, (bytes_in, &st.tally));
                            let nothing = (None, Duration::ZERO);
                            self.observe_line(
                                event, &client, &st.req, status, tally, b"", nothing.0, nothing.1, facts,
                            );
                        }
                        if !client.background {
                            conn.count_request();
                        }
                        io.close().await;
                        return;
                    }
                }
                first = false;
                let st = slot.get(size);
                // The proxy's own requests are neither logged nor counted.
                let started = (self.observing() && !client.background).then(Instant::now);
                // On the heap: an exchange's state is large, and an idle
                // connection holds none of it; in a block the worker
                // recycles, not a new allocation per request.
                client.now_ms = conn.clock_ms();
                client.request_id = RequestId::next();
                let exchange = Recycled::new_with(|| self.exchange(&mut io, st, &client, &conn, started));
                let (outcome, tunnel_log) = exchange.await;
                if !client.background {
                    conn.count_request();
                }
                match outcome {
                    Outcome::KeepAlive => {}
                    Outcome::Close => {
                        slot.release();
                        io.close().await;
                        return;
                    }
                    Outcome::CloseUnread => break,
                    Outcome::Upgrade(up) => {
                        let client_buf = std::mem::take(&mut st.rbuf);
                        // The tunnel's line is written when it ends, with
                        // the head that opened it.
                        let tunnel_log = tunnel_log.map(|log| (log, std::mem::take(&mut st.req), st.tally));
                        slot.release();
                        // Boxed: a tunnel's state is large and rare; kept
                        // inline it would size every connection's task for it.
                        let moved = Box::pin(self.tunnel(io, client_buf, up, &client, &conn)).await;
                        if let Some((opened, req, tally)) = tunnel_log {
                            let TunnelLog {
                                cx,
                                status,
                                upstream,
                                started,
                            } = *opened;
                            let tally = Tally {
                                bytes_out: tally.bytes_out + moved.downstream,
                                body_out: tally.body_out + moved.downstream,
                                ..tally
                            };
                            let bytes_in = req.raw().len() as u64 + moved.upstream;
                            let facts = self.handler.log_facts(&cx);
                            let total = started.elapsed();
                            let event = Event::Tunnel;
                            self.observe_line(
                                event,
                                &client,
                                &req,
                                status,
                                (bytes_in, &tally),
                                b"",
                                upstream,
                                total,
                                facts,
                            );
                        }
                        return;
                    }
                }
            }
            // Lingering starts with the connection's buffers given back; it
            // is boxed, and comes after the loop with nothing else alive: as
            // a step of the loop it made every connection's task 150 bytes
            // larger.
            slot.release();
            Box::pin(self.linger(&mut io, &conn)).await;
        }
    }

    /// Sends `req` again on this worker, in the background, for the hooks
    /// that answered it from a stored response and asked for it to be
    /// refreshed; `slot` is held until the refresh ends (the hooks start
    /// one per key). Nothing is started while the worker drains or is at
    /// its connection limit (the slot is freed: a later stale answer
    /// tries again).
    fn refresh_in_background(
        self: &Rc<Self>,
        req: &crate::head::RequestHead,
        client: &ClientInfo,
        conn: &ConnCtx,
        slot: crate::cache::RefreshSlot,
    ) {
        if self.closing(conn) {
            return;
        }
        let Some(own) = conn.own_work() else {
            return;
        };
        let io = background::Background::new(background::refresh_request(req));
        let client = ClientInfo {
            background: true,
            ..client.clone()
        };
        let peer = client.peer;
        // A panic ends the refresh, as it ends a client's connection, not
        // the worker.
        let refresh = AssertUnwindSafe(Rc::clone(self).serve(io, client, own)).catch_unwind();
        monoio::spawn(async move {
            if refresh.await.is_err() {
                tracing::error!(%peer, "background refresh panicked");
            }
            drop(slot);
        });
    }

    /// Runs the tunnel an upgrade opened, until both directions end.
    async fn tunnel<S: ClientStream>(
        &self,
        io: S,
        client_buf: BytesMut,
        up: UpstreamConn,
        client: &ClientInfo,
        conn: &ConnCtx,
    ) -> TunnelBytes {
        let UpstreamConn {
            stream, rbuf, addr, ..
        } = up;
        let options = TunnelOptions {
            idle: self.settings.timeouts.tunnel_idle,
            splice: self.settings.splice,
        };
        let moved = io.tunnel_with(client_buf, stream, rbuf, options, conn).await;
        tracing::debug!(
            listener = &*self.listener,
            client = %client.peer,
            upstream = %addr,
            bytes_up = moved.upstream,
            bytes_down = moved.downstream,
            "tunnel closed"
        );
        moved
    }

    async fn exchange<S: ClientStream>(
        self: &Rc<Self>,
        io: &mut S,
        st: &mut ConnBuffers,
        client: &ClientInfo,
        conn: &ConnCtx,
        started: Option<Instant>,
    ) -> (Outcome, Option<Box<TunnelLog<H::Ctx>>>) {
        let mut cx = H::Ctx::default();
        let mut upstream = None;
        let (outcome, status) = 'done: {
            let route = match guard::answer(&st.req, &self.settings) {
                Some(reply) => Route::Reply(reply),
                None => match self.handler.request(&st.req, client, &mut cx).await {
                    Some(reply) => Route::Reply(reply),
                    None => self.handler.route(&st.req, client, &mut cx).await,
                },
            };
            let result = match route {
                Route::Peer(peer) => {
                    let target = Target::Peer(peer);
                    self.proxy(io, st, client, conn, target, &mut cx, &mut upstream)
                        .await
                }
                Route::Forward(addrs) => {
                    let target = Target::Addrs(&addrs);
                    self.proxy(io, st, client, conn, target, &mut cx, &mut upstream)
                        .await
                }
                Route::Connect(addrs) => self.connect_tunnel(io, st, &addrs, conn).await,
                Route::Held(mut held) => {
                    if let Some(slot) = held.refresh.take() {
                        self.refresh_in_background(&st.req, client, conn, slot);
                    }
                    Box::pin(self.serve_held(io, st, *held, conn, &mut cx)).await
                }
                Route::Reply(reply) => {
                    let reply = self.handler.local_reply(&st.req, reply, &cx);
                    break 'done self.reply(io, st, &reply, conn).await;
                }
            };
            match result {
                Ok(done) => done,
                Err(failure) if failure.error.kind() == ErrorKind::ClientGone => {
                    // Nobody to answer; 499 in the logs, as nginx writes it.
                    self.log_failure(client, &st.req, CLIENT_GONE_STATUS, &failure.error, upstream);
                    (Outcome::Close, CLIENT_GONE_STATUS)
                }
                Err(failure) => {
                    // A held response may stand in for the failed upstream
                    // (a stale one that stale-if-error allows).
                    let held = (!failure.responded)
                        .then(|| self.handler.fallback(&st.req, &failure.error, &mut cx))
                        .flatten();
                    if let Some(held) = held {
                        if let Ok(done) = Box::pin(self.serve_held(io, st, held, conn, &mut cx)).await {
                            let unread = st.req.body() != BodyFraming::None;
                            let outcome = if unread { Outcome::CloseUnread } else { done.0 };
                            break 'done (outcome, done.1);
                        }
                        break 'done (Outcome::Close, 0);
                    }
                    let status = if failure.responded {
                        0
                    } else {
                        let head_request = st.req.method() == Method::Head;
                        let ConnBuffers { wbuf, tally, req, .. } = st;
                        self.send_error(io, wbuf, tally, req, &failure.error, head_request, conn, &cx)
                            .await
                    };
                    self.log_failure(client, &st.req, status, &failure.error, upstream);
                    // The client may still be sending the request's body.
                    let unread = status != 0 && st.req.body() != BodyFraming::None;
                    let outcome = if unread {
                        Outcome::CloseUnread
                    } else {
                        Outcome::Close
                    };
                    (outcome, status)
                }
            }
        };
        let summary = Summary { status, upstream };
        self.handler.finish(&st.req, &summary, &mut cx);
        let Some(started) = started else {
            return (outcome, None);
        };
        if matches!(outcome, Outcome::Upgrade(_)) {
            let opened = TunnelLog {
                cx,
                status,
                upstream,
                started,
            };
            return (outcome, Some(Box::new(opened)));
        }
        let bytes_in = st.req.raw().len() as u64 + st.tally.body_in;
        let facts = self.handler.log_facts(&cx);
        let total = started.elapsed();
        let tally = (bytes_in, &st.tally);
        let event = Event::Request;
        self.observe_line(
            event,
            client,
            &st.req,
            status,
            tally,
            &st.content_type,
            upstream,
            total,
            facts,
        );
        (outcome, None)
    }
}
