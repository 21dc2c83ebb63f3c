//! The connection engine: one loop per client connection, shared by every
//! mode, with [`ProxyHooks`] that decide where each request goes and hear
//! how each attempt went.
//!
//! The engine owns what both modes need: reading and validating request
//! heads within limits and timeouts, keep-alive and pipelining (requests are
//! answered strictly in order, one at a time), forwarding a request with its
//! body to an upstream connection from the worker's pool (retrying once on a
//! fresh connection when a pooled one fails before any response byte and the
//! request is idempotent and fully sent), relaying interim responses,
//! re-framing and streaming the response, switching to a tunnel after a 101,
//! and mapping every error to one answer: a status for the client, or a
//! closed connection when an answer is no longer possible.

use std::{
    borrow::Cow,
    cell::Cell,
    future::Future,
    io,
    net::SocketAddr,
    os::fd::AsRawFd,
    rc::Rc,
    time::{Duration, Instant},
};

use bytes::{Buf, BytesMut};
use monoio::{
    io::{AsyncReadRent, AsyncWriteRent, CancelableAsyncReadRent, Split},
    net::TcpStream,
};
use ringway_core::{ClientWatch, ConnCtx, Error, ErrorKind, Result, Side, Wait};

use crate::{
    body::{BodyPath, OutFraming, RateWindow},
    buffers::{self, HEAD_ROOM},
    chunked::{ChunkedDecoder, Decoded},
    edits::HeadEdits,
    gather::write_head_and_body,
    guard,
    head::{BodyFraming, Method, RequestHead, ResponseHead, Version},
    hooks::{Attempt, AttemptResult, Peer, ProxyHooks, Retry, Route, Summary},
    io::{bounded, io_error, read_some, write_vec},
    limits::EngineSettings,
    pool::{UpstreamConn, UpstreamPool},
    reply::{reason_phrase, status_for, LocalReply},
    splice::SpliceSocket,
    tunnel::{copy_tunnel, splice_tunnel, TunnelBytes},
    write::{
        end_head, local_response, request_head, response_head, ClientResponse, UpstreamRequest, NO_EDITS,
        RESPONSE_START,
    },
};

/// A client connection the engine can serve: a monoio stream that can be
/// split into halves (for tunnels), whose reads can be cancelled, and which
/// may expose its socket for splicing.
pub trait ClientStream:
    AsyncReadRent + AsyncWriteRent + CancelableAsyncReadRent + Split + SpliceSocket + Sized + 'static
{
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
        upstream: TcpStream,
        upstream_buf: BytesMut,
        options: TunnelOptions,
        conn: &ConnCtx,
    ) -> impl Future<Output = TunnelBytes> {
        copy_tunnel(self, client_buf, upstream, upstream_buf, options.idle, conn)
    }
}

impl ClientStream for TcpStream {
    fn wait_readable(&mut self) -> impl Future<Output = io::Result<()>> {
        // Relaxed: on epoll a stale "ready" only means the read that
        // follows waits as usual.
        self.readable(true)
    }

    async fn tunnel_with(
        self,
        client_buf: BytesMut,
        upstream: TcpStream,
        upstream_buf: BytesMut,
        options: TunnelOptions,
        conn: &ConnCtx,
    ) -> TunnelBytes {
        if options.splice {
            splice_tunnel(self, client_buf, upstream, upstream_buf, options.idle, conn).await
        } else {
            copy_tunnel(self, client_buf, upstream, upstream_buf, options.idle, conn).await
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The local address it connected to.
    pub local: SocketAddr,
    /// The worker's coarse clock (milliseconds) when the request being
    /// handled began; the engine sets it for each request.
    pub now_ms: u64,
}

impl ClientInfo {
    /// A client at `peer` connected to `local`.
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Self {
            peer,
            local,
            now_ms: 0,
        }
    }
}

/// Where an exchange sends the request.
#[derive(Clone, Copy)]
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

/// Buffers and heads of one client connection, reused for every request.
struct ConnBuffers {
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    scratch: Vec<u8>,
    req: RequestHead,
    resp: ResponseHead,
    /// The hooks' edits to the head being written.
    edits: HeadEdits,
    /// The listener's buffer size.
    size: usize,
}

impl ConnBuffers {
    /// Takes a write buffer, once a whole head is here: a connection whose
    /// head is still arriving holds none.
    fn take_write_buffer(&mut self) {
        if self.wbuf.capacity() == 0 {
            self.wbuf = buffers::take_write(self.size);
        }
    }

    /// Gives the buffers back to the worker's free lists (the read buffer
    /// must hold nothing still needed).
    fn release_buffers(&mut self) {
        buffers::give_read(std::mem::take(&mut self.rbuf), self.size);
        buffers::give_write(std::mem::take(&mut self.wbuf), self.size);
        buffers::give_write(std::mem::take(&mut self.scratch), self.size);
    }
}

impl Drop for ConnBuffers {
    fn drop(&mut self) {
        self.req.clear();
        self.resp.clear();
        self.release_buffers();
    }
}

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The buffer a request head that arrives in pieces waits in.
const SMALL_HEAD_BUFFER: usize = 4096;

/// Body bytes up to this size are copied behind the head; larger ones are
/// gathered with the head by writev.
const GATHER_ABOVE: usize = 4096;

const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// The status logged for a request whose client left before its answer
/// (nginx's 499); nothing is sent.
const CLIENT_GONE_STATUS: u16 = 499;

/// Serves client connections for one listener on one worker.
pub struct Engine<H> {
    handler: H,
    settings: EngineSettings,
    pool: Rc<UpstreamPool>,
    listener: Rc<str>,
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
    pub async fn serve<S: ClientStream>(&self, io: S, mut client: ClientInfo, conn: &ConnCtx) {
        let mut io = io;
        let size = self.settings.buffer_size;
        // Buffers are taken from the worker's free lists when a request
        // arrives and given back while the connection idles.
        let mut st = ConnBuffers {
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            scratch: Vec::new(),
            req: RequestHead::new(),
            resp: ResponseHead::new(),
            edits: HeadEdits::new(),
            size,
        };
        let mut first = true;
        loop {
            st.req.clear();
            st.resp.clear();
            match self.read_request(&mut io, &mut st, first, conn).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    // The head did not parse, but its first word may still
                    // say that the answer must have no body.
                    let head_request = st.rbuf.starts_with(b"HEAD ");
                    // Boxed: rare, and inline it would size every idle
                    // connection's task for it.
                    let answer = self.send_error(&mut io, &mut st.wbuf, &error, head_request, conn);
                    let status = Box::pin(answer).await;
                    self.log_failure(&client, &st.req, status, &error, None);
                    conn.count_request();
                    return;
                }
            }
            first = false;
            let started = self.settings.access_log.then(Instant::now);
            // Boxed: an exchange's state is large, and an idle connection
            // holds none of it (one allocation per request; see
            // benches/results/balancing-20261202.md).
            client.now_ms = conn.clock_ms();
            let (outcome, status, upstream) = Box::pin(self.exchange(&mut io, &mut st, &client, conn)).await;
            conn.count_request();
            if let Some(started) = started {
                self.log_access(&client, &st.req, status, started, upstream);
            }
            match outcome {
                Outcome::KeepAlive => {}
                Outcome::Close => return,
                Outcome::CloseUnread => break,
                Outcome::Upgrade(up) => {
                    let UpstreamConn {
                        stream, rbuf, addr, ..
                    } = up;
                    let client_buf = std::mem::take(&mut st.rbuf);
                    drop(st);
                    let options = TunnelOptions {
                        idle: self.settings.timeouts.tunnel_idle,
                        splice: self.settings.splice,
                    };
                    // Boxed: a tunnel's state is large and rare; kept inline it
                    // would size every connection's task for it.
                    let moved = Box::pin(io.tunnel_with(client_buf, stream, rbuf, options, conn)).await;
                    tracing::debug!(
                        listener = &*self.listener,
                        client = %client.peer,
                        upstream = %addr,
                        bytes_up = moved.upstream,
                        bytes_down = moved.downstream,
                        "tunnel closed"
                    );
                    if self.settings.access_log {
                        tracing::info!(
                            target: "ringway::access",
                            listener = &*self.listener,
                            client = %client.peer,
                            upstream = %addr,
                            bytes_up = moved.upstream,
                            bytes_down = moved.downstream,
                            "tunnel closed"
                        );
                    }
                    return;
                }
            }
        }
        // Lingering starts with the connection's buffers given back; it is
        // boxed, and comes after the loop with nothing else alive: as a
        // step of the loop it made every connection's task 150 bytes larger.
        drop(st);
        Box::pin(self.linger(&mut io, conn)).await;
    }

    /// Closes a connection whose client may still be sending a request
    /// body that was not read, as nginx's lingering close does: the
    /// sending side is shut, then whatever arrives is read and dropped
    /// until the client closes, is quiet for 5 s, or 30 s have passed.
    /// Closing at once would make the client's kernel answer its next
    /// bytes with a reset, which can destroy the response before the
    /// client has read it. The connection's buffers are given back by
    /// then (it reads into 4 KiB), and it counts as idle: a drain ends it
    /// at once.
    async fn linger<S: ClientStream>(&self, io: &mut S, conn: &ConnCtx) {
        const QUIET: Duration = Duration::from_secs(5);
        const TOTAL: Duration = Duration::from_secs(30);
        const SINK: usize = 4096;
        if io.shutdown().await.is_err() || !conn.set_idle(true) {
            return;
        }
        let until = Instant::now() + TOTAL;
        let mut sink = BytesMut::with_capacity(SINK);
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            sink.clear();
            let armed = conn.deadline(Wait::Linger, QUIET.min(left));
            let read = read_some(io, &mut sink, SINK).await;
            if armed.finish() || conn.is_draining() || !matches!(read, Ok(n) if n > 0) {
                break;
            }
        }
        conn.set_idle(false);
    }

    /// Reads and parses the next request head. `Ok(false)`: the connection
    /// ended quietly (closed, idle, draining) before a request began.
    async fn read_request<S: ClientStream>(
        &self,
        io: &mut S,
        st: &mut ConnBuffers,
        first: bool,
        conn: &ConnCtx,
    ) -> Result<bool> {
        let s = &self.settings;
        let t = &s.timeouts;
        // A new connection's whole first head must arrive within the head
        // timeout; later heads get it from their first byte on.
        let started = first.then(Instant::now);
        if st.rbuf.is_empty() {
            if !conn.set_idle(true) {
                return Ok(false);
            }
            // While idle the connection holds no buffer: it waits for
            // readability, then takes one and reads what arrived.
            st.release_buffers();
            let wait = if first { t.client_head } else { t.idle };
            let size = s.buffer_size;
            let rbuf = &mut st.rbuf;
            let next = async {
                io.wait_readable().await?;
                *rbuf = buffers::take_read(size);
                read_some(io, rbuf, size).await
            };
            let armed = conn.deadline(Wait::ClientRead, wait);
            let read = next.await;
            let expired = armed.finish();
            conn.set_idle(false);
            match read {
                // A drain that began while this connection was idle has shut
                // its socket down: whatever arrived cannot be answered. An
                // expired idle deadline did the same.
                Ok(n) if n > 0 && !conn.is_draining() && !expired => {}
                // Closed, reset, idle timeout or drain: no request was begun.
                _ => return Ok(false),
            }
        }
        if st.req.parse(&mut st.rbuf, &s.limits)? {
            st.take_write_buffer();
            return Ok(true);
        }
        let head_limit = started.map_or(t.client_head, |at| t.client_head.saturating_sub(at.elapsed()));
        // A head that trickles in (slowloris, or a slow link) waits in a
        // small buffer: thousands of them must not each hold a full one.
        if st.rbuf.len() < SMALL_HEAD_BUFFER / 2 && st.rbuf.capacity() > SMALL_HEAD_BUFFER {
            let mut small = BytesMut::with_capacity(SMALL_HEAD_BUFFER);
            small.extend_from_slice(&st.rbuf);
            buffers::give_read(std::mem::replace(&mut st.rbuf, small), s.buffer_size);
        }
        let ConnBuffers { rbuf, req, .. } = st;
        let rest_of_head = async {
            loop {
                // No more than the buffer has room for, while it is small.
                let room = (rbuf.capacity() - rbuf.len()).max(SMALL_HEAD_BUFFER / 4);
                let n = read_some(io, rbuf, room.min(s.buffer_size))
                    .await
                    .map_err(io_error(Side::Downstream, "reading a request head"))?;
                if n == 0 {
                    return Err(Error::new(
                        ErrorKind::ConnectionClosed,
                        Side::Downstream,
                        "client closed the connection in the middle of a request head",
                    ));
                }
                if req.parse(rbuf, &s.limits)? {
                    return Ok(true);
                }
            }
        };
        let complete = bounded!(
            conn.deadline(Wait::ClientRead, head_limit),
            ErrorKind::ReadTimeout,
            Side::Downstream,
            "request head not received in time",
            rest_of_head,
        )??;
        st.take_write_buffer();
        Ok(complete)
    }

    async fn exchange<S: ClientStream>(
        &self,
        io: &mut S,
        st: &mut ConnBuffers,
        client: &ClientInfo,
        conn: &ConnCtx,
    ) -> (Outcome, u16, Option<SocketAddr>) {
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
            let result = match &route {
                Route::Peer(peer) => {
                    let target = Target::Peer(*peer);
                    self.proxy(io, st, client, conn, target, &mut cx, &mut upstream)
                        .await
                }
                Route::Forward(addrs) => {
                    let target = Target::Addrs(addrs);
                    self.proxy(io, st, client, conn, target, &mut cx, &mut upstream)
                        .await
                }
                Route::Connect(addrs) => self.connect_tunnel(io, st, addrs, conn).await,
                Route::Reply(reply) => break 'done self.reply(io, st, reply, conn).await,
            };
            match result {
                Ok(done) => done,
                Err(failure) if failure.error.kind() == ErrorKind::ClientGone => {
                    // Nobody to answer; 499 in the logs, as nginx writes it.
                    self.log_failure(client, &st.req, CLIENT_GONE_STATUS, &failure.error, upstream);
                    (Outcome::Close, CLIENT_GONE_STATUS)
                }
                Err(failure) => {
                    let status = if failure.responded {
                        0
                    } else {
                        let head_request = st.req.method() == Method::Head;
                        self.send_error(io, &mut st.wbuf, &failure.error, head_request, conn)
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
        (outcome, status, upstream)
    }

    /// Answers with a reply of the hooks or of the engine's guards.
    async fn reply<S: ClientStream>(
        &self,
        io: &mut S,
        st: &mut ConnBuffers,
        reply: &LocalReply,
        conn: &ConnCtx,
    ) -> (Outcome, u16) {
        // An unread request body leaves the connection unusable.
        // A body that is all here is dropped; one still arriving
        // leaves the connection unusable.
        let unread = match st.req.body() {
            BodyFraming::None => false,
            BodyFraming::Length(n) if st.rbuf.len() as u64 >= n => {
                st.rbuf.advance(n as usize);
                false
            }
            _ => true,
        };
        // A request refused as malformed (400) ends the connection,
        // as nginx and HAProxy do: whatever follows on it was sent
        // by a client that does not speak HTTP as the proxy reads it.
        // So does a refused CONNECT (but for a 407 the client answers
        // on the same connection): the client may already be
        // sending the tunnel's bytes.
        let connect = st.req.method() == Method::Connect && reply.status != 407;
        let close = st.req.wants_close() || conn.is_draining() || unread || reply.status == 400 || connect;
        st.wbuf.clear();
        local_response(
            &mut st.wbuf,
            reply,
            reason_phrase(reply.status),
            close,
            st.req.method() == Method::Head,
            self.settings.proxy_headers.via.as_ref(),
        );
        let sent = self.write_client(io, &mut st.wbuf, conn).await;
        let outcome = match (close, sent.is_ok()) {
            (_, false) => Outcome::Close,
            (true, true) if unread => Outcome::CloseUnread,
            (true, true) => Outcome::Close,
            (false, true) => Outcome::KeepAlive,
        };
        (outcome, reply.status)
    }

    /// Reports an attempt on `peer` to the hooks; returns the peer to try
    /// next when they want another attempt and the request can go again.
    #[allow(clippy::too_many_arguments)]
    fn after_attempt(
        &self,
        req: &RequestHead,
        peer: Option<&Peer>,
        result: AttemptResult<'_>,
        sent: bool,
        replayable: bool,
        conn: &ConnCtx,
        cx: &mut H::Ctx,
    ) -> Option<Peer> {
        let peer = peer?;
        let attempt = Attempt {
            peer,
            result,
            sent,
            replayable,
            now_ms: conn.clock_ms(),
        };
        match self.handler.attempt_done(req, &attempt, cx) {
            Retry::Another(next) if replayable && !conn.is_draining() => Some(next),
            _ => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn proxy<S: ClientStream>(
        &self,
        io: &mut S,
        st: &mut ConnBuffers,
        client: &ClientInfo,
        conn: &ConnCtx,
        target: Target<'_>,
        cx: &mut H::Ctx,
        last: &mut Option<SocketAddr>,
    ) -> std::result::Result<(Outcome, u16), Failure> {
        let s = &self.settings;
        let t = &s.timeouts;
        let ConnBuffers {
            rbuf,
            wbuf,
            scratch,
            req,
            resp,
            edits,
            ..
        } = st;
        let upgrade = req.upgrade();
        let framing = req.body();
        if framing == BodyFraming::Chunked {
            // Whatever part of a chunked body came with the head is checked
            // before anything goes upstream, so a malformed body that
            // arrives in one piece never reaches the upstream at all.
            precheck_chunked(rbuf, s.limits.max_header_bytes).map_err(Failure::before)?;
        }
        let (mut peer, candidates) = match target {
            Target::Peer(peer) => (Some(peer), &[][..]),
            Target::Addrs(addrs) => (None, addrs),
        };
        let idempotent = req.method().is_idempotent();
        // The length of the head in `wbuf` (a small body that came with it
        // follows it there, kept for another attempt).
        let mut head_len = 0;
        let mut body_in_head = false;
        let mut first_attempt = true;
        // Whether bytes of an answer (a 100 or another interim response)
        // went to the client.
        let mut began = false;
        // The upstream answered before taking the whole request body.
        let mut body_cut = false;
        let mut up = 'attempts: loop {
            let addrs = match &peer {
                Some(p) => std::slice::from_ref(&p.addr),
                None => candidates,
            };
            let connect_timeout = peer.and_then(|p| p.connect_timeout).unwrap_or(t.connect);
            let response_timeout = peer
                .and_then(|p| p.response_timeout)
                .unwrap_or(t.upstream_response);
            let mut up = match self
                .pool
                .get(addrs, connect_timeout, s.buffer_size, conn.clock_ms())
                .await
            {
                Ok(up) => up,
                Err(e) => {
                    *last = peer.map(|p| p.addr);
                    let failed = AttemptResult::Failed(&e);
                    if let Some(next) = self.after_attempt(req, peer.as_ref(), failed, false, true, conn, cx)
                    {
                        peer = Some(next);
                        continue;
                    }
                    return Err(Failure::before(e));
                }
            };
            let addr = up.addr;
            *last = Some(addr);
            // The head, for this peer.
            if !edits.is_empty() {
                edits.clear();
            }
            if let Some(p) = &peer {
                self.handler.upstream_request(req, p, edits, cx);
            }
            let body_kept = (!first_attempt).then(|| wbuf.split_off(head_len));
            wbuf.clear();
            // Built in place: a named head would be kept in the request's
            // state across every await that follows.
            request_head(
                wbuf,
                &UpstreamRequest {
                    head: req,
                    client_ip: client.peer.ip(),
                    scheme: s.scheme,
                    framing,
                    upgrade,
                    upstream: Some(addr),
                    edits,
                },
                &s.proxy_headers,
            );
            end_head(wbuf);
            head_len = wbuf.len();
            if let Some(body) = body_kept {
                wbuf.extend_from_slice(&body);
            } else {
                // A body that is already here and small goes out with the
                // head, in one write, and stays in `wbuf` for a retry.
                body_in_head = match framing {
                    BodyFraming::None => true,
                    BodyFraming::Length(n) if n <= s.buffer_size as u64 && rbuf.len() as u64 >= n => {
                        let n = n as usize;
                        wbuf.extend_from_slice(&rbuf[..n]);
                        rbuf.advance(n);
                        true
                    }
                    _ => false,
                };
            }
            first_attempt = false;
            let mut retried = false;
            let attempt: Result<()> = loop {
                let sent = bounded!(
                    conn.upstream_deadline(Wait::Upstream, response_timeout, up.stream.as_raw_fd()),
                    ErrorKind::WriteTimeout,
                    Side::Upstream,
                    "the upstream did not take the request in time",
                    write_vec(&mut up.stream, wbuf),
                );
                let sent = match sent {
                    Ok(sent) => sent,
                    Err(e) => break Err(e),
                };
                if let Err(e) = sent {
                    // A reused connection that cannot take the head was reset
                    // before the request reached it; the body, if any, is still
                    // the client's to send. Any method goes again.
                    if up.reused && !retried {
                        retried = true;
                        // A server that cannot take a new connection either is
                        // a failed attempt like any other: the hooks hear of it.
                        match self.reconnect(addr, connect_timeout).await {
                            Ok(fresh) => up = fresh,
                            Err(failure) => break Err(failure.error),
                        }
                        continue;
                    }
                    break Err(
                        Error::new(ErrorKind::Io, Side::Upstream, "sending the request upstream")
                            .with_cause(e),
                    );
                }
                if !body_in_head {
                    if req.expects_continue() && rbuf.is_empty() {
                        // `scratch` is free until the body relay uses it.
                        scratch.clear();
                        scratch.extend_from_slice(CONTINUE);
                        self.write_client(io, scratch, conn)
                            .await
                            .map_err(Failure::before)?;
                        began = true;
                    }
                    let path = BodyPath {
                        conn,
                        upstream: up.stream.as_raw_fd(),
                        from: Side::Downstream,
                        to: Side::Upstream,
                        read_timeout: t.client_io,
                        write_timeout: response_timeout,
                        chunk: s.buffer_size,
                        max_trailer_bytes: s.limits.max_header_bytes,
                        splice: s.splice,
                        max_body: s.limits.max_body,
                        min_rate: s
                            .limits
                            .min_body_rate
                            .map(|rate| Cell::new(RateWindow::new(rate))),
                    };
                    let out = if framing == BodyFraming::Chunked {
                        OutFraming::Chunked
                    } else {
                        OutFraming::Raw
                    };
                    // Boxed: its state is large and only uploads need it.
                    let relay = self.send_body(
                        path,
                        io,
                        rbuf,
                        &mut up,
                        resp,
                        scratch,
                        (framing, out),
                        response_timeout,
                    );
                    match Box::pin(relay).await {
                        Ok(cut) => body_cut = cut,
                        // The client's side failed: nothing to report.
                        Err(e) if e.side() != Side::Upstream => return Err(Failure::before(e)),
                        Err(e) => break Err(e),
                    }
                    if body_cut {
                        break Ok(());
                    }
                }
                // The whole request is sent: the client is watched while the
                // upstream works on it.
                let watch = client_watch(io, began);
                match self
                    .read_response_head(&mut up, resp, conn, Some(watch), response_timeout)
                    .await
                {
                    Ok(()) => break Ok(()),
                    Err(e) if e.kind() == ErrorKind::ClientGone => return Err(Failure::before(e)),
                    Err(e)
                        if !retried
                            && up.reused
                            && body_in_head
                            && up.rbuf.is_empty()
                            && Box::pin(retry_on(&e, idempotent, &up.stream)).await =>
                    {
                        retried = true;
                        // A server that cannot take a new connection either is
                        // a failed attempt like any other: the hooks hear of it.
                        match self.reconnect(addr, connect_timeout).await {
                            Ok(fresh) => up = fresh,
                            Err(failure) => break Err(failure.error),
                        }
                    }
                    Err(e) => break Err(e),
                }
            };
            let failed = match attempt {
                Err(e) => e,
                Ok(()) => {
                    // Interim responses: 100 was answered by us; others go to
                    // HTTP/1.1 clients; 101 turns the connection into a tunnel.
                    let interim = loop {
                        let status = resp.status();
                        if status == 101 {
                            let Some(protocol) = upgrade.and(resp.upgrade()) else {
                                break Err(Error::new(
                                    ErrorKind::InvalidHttp,
                                    Side::Upstream,
                                    "101 Switching Protocols without an upgrade request",
                                ));
                            };
                            let result = AttemptResult::Response(resp);
                            self.after_attempt(req, peer.as_ref(), result, true, false, conn, cx);
                            wbuf.clear();
                            let switching = ClientResponse {
                                head: resp,
                                framing: BodyFraming::None,
                                close: false,
                                client_version: req.version(),
                                upgrade: Some(protocol),
                                edits: &NO_EDITS,
                            };
                            response_head(wbuf, &switching, &s.proxy_headers);
                            end_head(wbuf);
                            self.write_client(io, wbuf, conn).await.map_err(Failure::after)?;
                            resp.clear();
                            return Ok((Outcome::Upgrade(up), 101));
                        }
                        if !(100..200).contains(&status) {
                            break Ok(());
                        }
                        if status != 100 && req.version() == Version::Http11 {
                            wbuf.clear();
                            let interim = ClientResponse {
                                head: resp,
                                framing: BodyFraming::None,
                                close: false,
                                client_version: Version::Http11,
                                upgrade: None,
                                edits: &NO_EDITS,
                            };
                            response_head(wbuf, &interim, &s.proxy_headers);
                            end_head(wbuf);
                            self.write_client(io, wbuf, conn).await.map_err(Failure::before)?;
                            began = true;
                        }
                        resp.clear();
                        let watch = client_watch(io, began);
                        match self
                            .read_response_head(&mut up, resp, conn, Some(watch), response_timeout)
                            .await
                        {
                            Ok(()) => {}
                            Err(e) if e.kind() == ErrorKind::ClientGone => return Err(Failure::before(e)),
                            Err(e) => break Err(e),
                        }
                    };
                    match interim {
                        Err(e) => e,
                        Ok(()) => {
                            // The final head: the hooks learn how the attempt
                            // went, and may want another peer (a 503, say)
                            // while the request can still go again.
                            let replayable = body_in_head && !began && !body_cut;
                            let result = AttemptResult::Response(resp);
                            match self.after_attempt(req, peer.as_ref(), result, true, replayable, conn, cx) {
                                Some(next) => {
                                    // This response is dropped unread, with
                                    // its connection.
                                    drop(up);
                                    resp.clear();
                                    peer = Some(next);
                                    continue 'attempts;
                                }
                                None => break 'attempts up,
                            }
                        }
                    }
                }
            };
            // This attempt failed before a final response head.
            drop(up);
            resp.clear();
            let replayable = body_in_head && !began && !body_cut;
            let result = AttemptResult::Failed(&failed);
            // A connection that was never made carried nothing of the
            // request (a reconnect after a stale pooled connection).
            let sent = !matches!(
                failed.kind(),
                ErrorKind::ConnectFailed | ErrorKind::ConnectTimeout
            );
            if let Some(next) = self.after_attempt(req, peer.as_ref(), result, sent, replayable, conn, cx) {
                peer = Some(next);
                continue;
            }
            return Err(Failure::before(failed));
        };
        let response_timeout = peer
            .and_then(|p| p.response_timeout)
            .unwrap_or(t.upstream_response);

        let status = resp.status();
        let input = resp.body(req.method());
        let upstream_reusable = resp.keeps_alive() && input != BodyFraming::UntilClose && !body_cut;
        let (output, out) = client_framing(input, req.version());
        let close = req.wants_close() || conn.is_draining() || body_cut || output == BodyFraming::UntilClose;
        if !edits.is_empty() {
            edits.clear();
        }
        self.handler.response(req, resp, edits, cx);
        wbuf.clear();
        response_head(
            wbuf,
            &ClientResponse {
                head: resp,
                framing: output,
                close,
                client_version: req.version(),
                upgrade: None,
                edits,
            },
            &s.proxy_headers,
        );
        end_head(wbuf);
        // The body bytes that came with the head leave with it, in one
        // write: small ones copied behind the head, larger ones gathered
        // with writev (no copy). What remains is relayed.
        let mut input = input;
        let in_hand = match input {
            BodyFraming::Length(n) => (n as usize).min(up.rbuf.len()),
            _ => 0,
        };
        if in_hand > 0 && in_hand <= GATHER_ABOVE {
            wbuf.extend_from_slice(&up.rbuf[..in_hand]);
            up.rbuf.advance(in_hand);
        }
        resp.clear();
        if in_hand > GATHER_ABOVE {
            skip_probe(conn, wbuf);
            let body = up.rbuf.split_to(in_hand);
            let (sent, head) = bounded!(
                conn.deadline(Wait::ClientWrite, t.client_io),
                ErrorKind::WriteTimeout,
                Side::Downstream,
                "client did not take the response in time",
                write_head_and_body(io, std::mem::take(wbuf), body),
            )
            .map_err(Failure::after)?;
            *wbuf = head;
            sent.map_err(io_error(Side::Downstream, "writing to the client"))
                .map_err(Failure::after)?;
        } else {
            self.write_client(io, wbuf, conn).await.map_err(Failure::after)?;
        }
        if let BodyFraming::Length(n) = input {
            input = BodyFraming::Length(n - in_hand as u64);
        }
        let body_done = matches!(input, BodyFraming::None | BodyFraming::Length(0));
        if !body_done {
            let path = BodyPath {
                conn,
                upstream: up.stream.as_raw_fd(),
                from: Side::Upstream,
                to: Side::Downstream,
                read_timeout: response_timeout,
                write_timeout: t.client_io,
                chunk: s.buffer_size,
                max_trailer_bytes: s.limits.max_header_bytes,
                splice: s.splice,
                max_body: None,
                min_rate: None,
            };
            Box::pin(path.relay(&mut up.stream, &mut up.rbuf, io, scratch, input, out))
                .await
                .map_err(Failure::after)?;
        }
        if upstream_reusable {
            self.pool.put(up, s.buffer_size, conn.clock_ms());
        }
        let outcome = match (close, body_cut) {
            (_, true) => Outcome::CloseUnread,
            (true, false) => Outcome::Close,
            (false, false) => Outcome::KeepAlive,
        };
        Ok((outcome, status))
    }

    async fn reconnect(
        &self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> std::result::Result<UpstreamConn, Failure> {
        let s = &self.settings;
        self.pool
            .connect(std::slice::from_ref(&addr), timeout, s.buffer_size)
            .await
            .map_err(Failure::before)
    }

    /// CONNECT: connects to the first address that accepts, answers
    /// `200 Connection established`, and hands the connection to the tunnel.
    async fn connect_tunnel<S: ClientStream>(
        &self,
        io: &mut S,
        st: &mut ConnBuffers,
        candidates: &[SocketAddr],
        conn: &ConnCtx,
    ) -> std::result::Result<(Outcome, u16), Failure> {
        let s = &self.settings;
        if st.req.body() != BodyFraming::None {
            return Err(Failure::before(Error::new(
                ErrorKind::InvalidHttp,
                Side::Downstream,
                "CONNECT with a body",
            )));
        }
        let up = self
            .pool
            .connect(candidates, s.timeouts.connect, s.buffer_size)
            .await
            .map_err(Failure::before)?;
        st.wbuf.clear();
        st.wbuf.extend_from_slice(ESTABLISHED);
        self.write_client(io, &mut st.wbuf, conn)
            .await
            .map_err(Failure::after)?;
        Ok((Outcome::Upgrade(up), 200))
    }

    /// Relays a request body upstream. When the upstream stops taking it,
    /// it may have answered early (401, 413) and closed: that answer, when
    /// one came, is the client's (`Ok(true)`, its head in `resp`; interim
    /// answers before it are dealt with by the caller), and the client
    /// connection closes after it, its body not all read. Without one, the
    /// failure stands.
    #[allow(clippy::too_many_arguments)]
    async fn send_body<S: ClientStream>(
        &self,
        path: BodyPath<'_>,
        io: &mut S,
        rbuf: &mut BytesMut,
        up: &mut UpstreamConn,
        resp: &mut ResponseHead,
        scratch: &mut Vec<u8>,
        (input, output): (BodyFraming, OutFraming),
        response_timeout: Duration,
    ) -> Result<bool> {
        let Err(e) = path.relay(io, rbuf, &mut up.stream, scratch, input, output).await else {
            return Ok(false);
        };
        if e.side() != Side::Upstream {
            return Err(e);
        }
        match self
            .read_response_head(up, resp, path.conn, None, response_timeout)
            .await
        {
            Ok(()) => Ok(true),
            Err(_) => Err(e),
        }
    }

    /// Reads the upstream's response head within the upstream timeout;
    /// with `watch`, the request is complete and the sweep watches the
    /// client meanwhile (a client that leaves ends the wait).
    async fn read_response_head(
        &self,
        up: &mut UpstreamConn,
        resp: &mut ResponseHead,
        conn: &ConnCtx,
        watch: Option<ClientWatch>,
        limit: Duration,
    ) -> Result<()> {
        let s = &self.settings;
        let fd = up.stream.as_raw_fd();
        let armed = match watch {
            Some(watch) => conn.response_deadline(limit, fd, watch),
            None => conn.upstream_deadline(Wait::Upstream, limit, fd),
        };
        let read = async {
            loop {
                if !up.rbuf.is_empty() && resp.parse(&mut up.rbuf, &s.limits)? {
                    return Ok(());
                }
                // A head's worth more than the buffer size: a body of exactly
                // the buffer size then arrives with its head in one read.
                let n = read_some(&mut up.stream, &mut up.rbuf, s.buffer_size + HEAD_ROOM)
                    .await
                    .map_err(upstream_read_error)?;
                if n == 0 {
                    return Err(Error::new(
                        ErrorKind::ConnectionClosed,
                        Side::Upstream,
                        "upstream closed the connection before a complete response head",
                    ));
                }
            }
        };
        bounded!(
            armed,
            ErrorKind::ReadTimeout,
            Side::Upstream,
            "upstream response head not received in time",
            read,
        )?
    }

    /// Writes `buf` to the client, less the response's first byte when the
    /// sweep already sent it as a probe.
    async fn write_client<S: ClientStream>(
        &self,
        io: &mut S,
        buf: &mut Vec<u8>,
        conn: &ConnCtx,
    ) -> Result<()> {
        skip_probe(conn, buf);
        bounded!(
            conn.deadline(Wait::ClientWrite, self.settings.timeouts.client_io),
            ErrorKind::WriteTimeout,
            Side::Downstream,
            "client did not take the response in time",
            write_vec(io, buf),
        )?
        .map_err(io_error(Side::Downstream, "writing to the client"))
    }

    /// Answers an error with its status (connection closing), or nothing
    /// when the client is gone; `head_request`: the answer has no body.
    /// Returns the status sent, 0 for none.
    async fn send_error<S: ClientStream>(
        &self,
        io: &mut S,
        wbuf: &mut Vec<u8>,
        error: &Error,
        head_request: bool,
        conn: &ConnCtx,
    ) -> u16 {
        let Some(status) = status_for(error) else {
            return 0;
        };
        wbuf.clear();
        let reply = LocalReply::status(status);
        local_response(
            wbuf,
            &reply,
            reason_phrase(status),
            true,
            head_request,
            self.settings.proxy_headers.via.as_ref(),
        );
        let _ = self.write_client(io, wbuf, conn).await;
        status
    }

    fn log_failure(
        &self,
        client: &ClientInfo,
        req: &RequestHead,
        status: u16,
        error: &Error,
        upstream: Option<SocketAddr>,
    ) {
        let upstream = upstream.map(tracing::field::display);
        match error.side() {
            Side::Downstream => tracing::debug!(
                listener = &*self.listener,
                client = %client.peer,
                upstream,
                status,
                "request failed: {error}"
            ),
            _ => tracing::warn!(
                listener = &*self.listener,
                client = %client.peer,
                target = %loggable_target(req.target()),
                upstream,
                status,
                "request failed: {error}"
            ),
        }
    }

    fn log_access(
        &self,
        client: &ClientInfo,
        req: &RequestHead,
        status: u16,
        started: Instant,
        upstream: Option<SocketAddr>,
    ) {
        tracing::info!(
            target: "ringway::access",
            listener = &*self.listener,
            client = %client.peer,
            method = %String::from_utf8_lossy(req.method_bytes()),
            target = %loggable_target(req.target()),
            status,
            upstream = upstream.map(tracing::field::display),
            micros = started.elapsed().as_micros() as u64,
        );
    }
}

/// How a response body framed as `input` by the upstream leaves for a
/// client speaking `version`: as it came when its length is known, else
/// chunked for HTTP/1.1 clients, and delimited by the end of the
/// connection for HTTP/1.0 clients, which know no chunks.
pub(crate) fn client_framing(input: BodyFraming, version: Version) -> (BodyFraming, OutFraming) {
    match input {
        BodyFraming::None => (BodyFraming::None, OutFraming::Raw),
        BodyFraming::Length(n) => (BodyFraming::Length(n), OutFraming::Raw),
        BodyFraming::Chunked | BodyFraming::UntilClose if version == Version::Http11 => {
            (BodyFraming::Chunked, OutFraming::Chunked)
        }
        BodyFraming::Chunked | BodyFraming::UntilClose => (BodyFraming::UntilClose, OutFraming::Raw),
    }
}

/// How the sweep may watch a client whose request is all sent: with the
/// response's first byte as a probe while nothing of an answer went out
/// and the stream is a plain socket (a TLS stream cannot take a stray
/// byte), else for resets only.
fn client_watch<S: ClientStream>(io: &S, began: bool) -> ClientWatch {
    if began || io.splice_fd().is_none() {
        ClientWatch::ResetOnly
    } else {
        ClientWatch::Probe(RESPONSE_START)
    }
}

/// Drops the first byte of the response in `head` when the sweep already
/// sent it to the client as a probe.
fn skip_probe(conn: &ConnCtx, head: &mut Vec<u8>) {
    if conn.take_probe() {
        debug_assert_eq!(head.first(), Some(&RESPONSE_START));
        head.remove(0);
    }
}

/// A request target fit for a log line: credentials in an authority
/// (`user:password@host`) are replaced by `***`.
fn loggable_target(target: &[u8]) -> Cow<'_, str> {
    let text = String::from_utf8_lossy(target);
    let scheme_end = text.find("://").map_or(0, |i| i + 3);
    let authority_end = text[scheme_end..]
        .find(['/', '?'])
        .map_or(text.len(), |i| scheme_end + i);
    match text[scheme_end..authority_end].rfind('@') {
        Some(at) => Cow::Owned(format!("{}***{}", &text[..scheme_end], &text[scheme_end + at..])),
        None => text,
    }
}

/// Decodes a copy of the chunked bytes received so far; fails on the first
/// framing error among them.
fn precheck_chunked(received: &BytesMut, max_trailer_bytes: usize) -> Result<()> {
    let mut copy = BytesMut::from(&received[..]);
    let mut decoder = ChunkedDecoder::new(Side::Downstream, max_trailer_bytes);
    loop {
        match decoder.decode(&mut copy)? {
            Decoded::Data(_) => {}
            Decoded::NeedMore | Decoded::End { .. } => return Ok(()),
        }
    }
}

/// Whether a request that failed with `error` on a reused connection,
/// sent whole and with no response byte back, goes again on a fresh one.
///
/// An idempotent request goes again after a reset or a close, as nginx and
/// HAProxy do. Any other only when the upstream had closed the connection
/// before the request reached it: its FIN arrived first (the end of stream
/// the read returned), then the reset its kernel sends for bytes that reach
/// a closed socket (waited for, a few round trips at most). Nothing read
/// that request. A reset with no FIN before it may come from a server that
/// read part of the request, acted on it and closed with the rest unread,
/// and a FIN with no reset after it from one that read it all; neither is
/// sent twice.
async fn retry_on(error: &Error, idempotent: bool, upstream: &TcpStream) -> bool {
    use ringway_core::socket::{sent_state, was_reset};
    match error.kind() {
        ErrorKind::ConnectionReset | ErrorKind::ConnectionClosed if idempotent => return true,
        ErrorKind::ConnectionClosed => {}
        _ => return false,
    }
    const STEP: Duration = Duration::from_millis(1);
    let started = Instant::now();
    loop {
        let Some(sent) = sent_state(upstream) else {
            return false;
        };
        // Acknowledged and no reset: the socket was open, and a peer that
        // only shut its sending side may be reading the request.
        if sent.all_acked {
            return was_reset(upstream);
        }
        if was_reset(upstream) {
            return true;
        }
        let wait = (sent.rtt * 4).clamp(Duration::from_millis(5), Duration::from_secs(1));
        if started.elapsed() >= wait {
            return false;
        }
        monoio::time::sleep(STEP).await;
    }
}

fn upstream_read_error(e: io::Error) -> Error {
    let kind = match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
            ErrorKind::ConnectionReset
        }
        _ => ErrorKind::Io,
    };
    Error::new(kind, Side::Upstream, "reading the upstream's response").with_cause(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::Method;

    #[test]
    fn logged_targets_carry_no_credentials() {
        assert_eq!(loggable_target(b"user:pw@host.test:443"), "***@host.test:443");
        assert_eq!(loggable_target(b"http://u:p@h.test/a@b"), "http://***@h.test/a@b");
        assert_eq!(loggable_target(b"/path?x=a@b"), "/path?x=a@b");
        assert_eq!(loggable_target(b"host.test:443"), "host.test:443");
    }

    #[test]
    fn idempotent_methods() {
        assert!(Method::Get.is_idempotent());
        assert!(!Method::Post.is_idempotent());
    }
}
