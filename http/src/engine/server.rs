//! The downstream HTTP/1.1 session: one client connection's buffers and
//! heads, reading request heads within the limits and timeouts (a
//! connection that idles holds no buffer), writing local answers and
//! error answers, lingering after a close with a body unread, and the
//! access and failure log lines.

use std::{
    cell::RefCell,
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::{Buf, BytesMut};
use ringway_core::{ClientWatch, ConnCtx, Error, ErrorKind, Result, Side, Wait};

use super::{ClientInfo, ClientStream, Engine, Outcome};
use crate::{
    access_log::{Entry, Event, LogFacts, RuleName},
    buffers::{self, FreeList},
    edits::HeadEdits,
    head::{BodyFraming, Method, RequestHead, ResponseHead},
    hooks::ProxyHooks,
    io::{bounded, io_error, read_some, write_vec},
    metrics::{status_class, ListenerMetrics, ACL_SPECIAL},
    reply::{reason_phrase, status_for, LocalReply},
    write::{local_response, RESPONSE_START},
};

/// The buffer a request head that arrives in pieces waits in.
const SMALL_HEAD_BUFFER: usize = 4096;

/// Buffers and heads of one client connection while it has a request
/// under way (see [`Slot`]).
pub(super) struct ConnBuffers {
    pub(super) rbuf: BytesMut,
    pub(super) wbuf: Vec<u8>,
    pub(super) scratch: Vec<u8>,
    pub(super) req: RequestHead,
    pub(super) resp: ResponseHead,
    /// The hooks' edits to the head being written.
    pub(super) edits: HeadEdits,
    /// The listener's buffer size.
    pub(super) size: usize,
    /// What the exchange moved, for its log line.
    pub(super) tally: Tally,
    /// The response's Content-Type, for the log line (kept only where
    /// one is written).
    pub(super) content_type: Vec<u8>,
}

/// What one exchange moved and how long its upstream took, for the log.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Tally {
    /// Request body bytes taken from the client.
    pub(super) body_in: u64,
    /// Bytes sent to the client, heads included.
    pub(super) bytes_out: u64,
    /// Response body bytes sent to the client.
    pub(super) body_out: u64,
    /// From the first attempt to the response head.
    pub(super) upstream_time: Option<Duration>,
}

impl Tally {
    /// Counts an answer written whole from `buf` (head and body).
    pub(super) fn wrote_answer(&mut self, buf: &[u8]) {
        let head = memchr::memmem::find(buf, b"\r\n\r\n").map_or(buf.len(), |i| i + 4);
        self.bytes_out += buf.len() as u64;
        self.body_out += (buf.len() - head) as u64;
    }
}

impl ConnBuffers {
    /// Takes a write buffer, once a whole head is here: a connection whose
    /// head is still arriving holds none.
    pub(super) fn take_write_buffer(&mut self) {
        if self.wbuf.capacity() == 0 {
            self.wbuf = Vec::with_capacity(self.size);
        }
    }

    /// Shrinks to what a head that trickles in needs (slowloris, or a slow
    /// link): its bytes move to a small buffer, and the write buffers a
    /// recycled slot brought are freed, so thousands of such connections
    /// do not each hold full ones. A whole head takes a write buffer again.
    fn wait_for_head(&mut self) {
        if self.rbuf.len() < SMALL_HEAD_BUFFER / 2 && self.rbuf.capacity() > SMALL_HEAD_BUFFER {
            let mut small = BytesMut::with_capacity(SMALL_HEAD_BUFFER);
            small.extend_from_slice(&self.rbuf);
            buffers::give_read(std::mem::replace(&mut self.rbuf, small), self.size);
        }
        self.wbuf = Vec::new();
        self.scratch = Vec::new();
    }

    /// Empties everything for the next request on any connection, keeping
    /// the I/O buffers (the read buffer must hold nothing still needed)
    /// unless one grew far past the usual size.
    fn tidy(&mut self) {
        self.req.clear();
        self.resp.clear();
        self.edits.clear();
        self.tally = Tally::default();
        self.content_type.clear();
        self.rbuf.clear();
        self.wbuf.clear();
        self.scratch.clear();
        if buffers::grew_too_large(self.rbuf.capacity(), self.size) {
            self.rbuf = BytesMut::new();
        }
        if buffers::grew_too_large(self.wbuf.capacity(), self.size) {
            self.wbuf = Vec::new();
        }
        if buffers::grew_too_large(self.scratch.capacity(), self.size) {
            self.scratch = Vec::new();
        }
    }
}

thread_local! {
    /// The worker's spare [`ConnBuffers`], their field tables, edit and
    /// I/O buffers grown to what requests needed, ready for the next one
    /// (a busy connection takes one, and so one allocation-free step,
    /// per request). Trimmed with the buffer lists: a flood's are freed.
    static SLOTS: RefCell<FreeList<Box<ConnBuffers>>> = const { RefCell::new(FreeList::new()) };
}

/// Where a client connection keeps its [`ConnBuffers`]: taken from the
/// worker's free list when a request's first bytes arrive, given back
/// whenever the connection waits for its next request. An idle keep-alive
/// connection so holds one empty pointer, not two heads, their field
/// tables, the edit buffers and its I/O buffers; a busy worker allocates
/// none of them.
pub(super) struct Slot(Option<Box<ConnBuffers>>);

impl Slot {
    pub(super) const fn empty() -> Self {
        Self(None)
    }

    /// The connection's buffers, taken from the free list if it holds
    /// none (their I/O buffers, if any, empty).
    pub(super) fn get(&mut self, size: usize) -> &mut ConnBuffers {
        let st = self.0.get_or_insert_with(|| {
            SLOTS.with(|list| list.borrow_mut().pop()).unwrap_or_else(|| {
                Box::new(ConnBuffers {
                    rbuf: BytesMut::new(),
                    wbuf: Vec::new(),
                    scratch: Vec::new(),
                    req: RequestHead::new(),
                    resp: ResponseHead::new(),
                    edits: HeadEdits::new(),
                    size,
                    tally: Tally::default(),
                    content_type: Vec::new(),
                })
            })
        });
        st.size = size;
        st
    }

    /// Whether bytes of a next request are already here (pipelined).
    pub(super) fn has_pending(&self) -> bool {
        self.0.as_ref().is_some_and(|st| !st.rbuf.is_empty())
    }

    /// Gives the buffers back, emptied (the read buffer must hold nothing
    /// still needed).
    pub(super) fn release(&mut self) {
        if let Some(mut st) = self.0.take() {
            st.tidy();
            // Past the thread's end (a task dropped late) it is freed.
            let _ = SLOTS.try_with(|list| list.borrow_mut().push(st));
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.release();
    }
}

/// Frees the spare [`ConnBuffers`] no request took since the last call;
/// returns whether any were freed (see [`buffers::release_unused`]).
pub(crate) fn release_unused_slots() -> bool {
    SLOTS.with(|list| list.borrow_mut().trim()) > 0
}

impl<H: ProxyHooks> Engine<H> {
    /// Closes a connection whose client may still be sending a request
    /// body that was not read, as nginx's lingering close does: the
    /// sending side is shut, then whatever arrives is read and dropped
    /// until the client closes, is quiet for 5 s, or 30 s have passed.
    /// Closing at once would make the client's kernel answer its next
    /// bytes with a reset, which can destroy the response before the
    /// client has read it. The connection's buffers are given back by
    /// then (it reads into 4 KiB), and it counts as idle: a drain ends it
    /// at once.
    pub(super) async fn linger<S: ClientStream>(&self, io: &mut S, conn: &ConnCtx) {
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
    pub(super) async fn read_request<S: ClientStream>(
        &self,
        io: &mut S,
        slot: &mut Slot,
        first: bool,
        conn: &ConnCtx,
    ) -> Result<bool> {
        let s = &self.settings;
        let t = &s.timeouts;
        let size = s.buffer_size;
        // A new connection's whole first head must arrive within the head
        // timeout; later heads get it from their first byte on.
        let started = first.then(Instant::now);
        if !slot.has_pending() {
            // A drain closes idle keep-alive connections; a new one (the
            // last accept of a drain, or one a handover's old process took
            // as it gave way) still has its first request answered, with
            // Connection: close.
            if !conn.set_idle(true) && !first {
                return Ok(false);
            }
            // While idle the connection holds no buffer and no heads: it
            // waits for readability, then takes them and reads what
            // arrived.
            slot.release();
            let wait = if first { t.client_head } else { t.idle };
            let next = async {
                io.wait_readable().await?;
                let rbuf = &mut slot.get(size).rbuf;
                if rbuf.capacity() < size {
                    *rbuf = buffers::take_read(size);
                }
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
                Ok(n) if n > 0 && (first || !conn.closes_idle()) && !expired => {}
                // Closed, reset, idle timeout or drain: no request was begun.
                _ => return Ok(false),
            }
        }
        let st = slot.get(size);
        st.req.clear();
        st.resp.clear();
        // A pipelined request's tally starts at zero too.
        st.tally = Tally::default();
        st.content_type.clear();
        if st.req.parse(&mut st.rbuf, &s.limits)? {
            st.take_write_buffer();
            return Ok(true);
        }
        let head_limit = started.map_or(t.client_head, |at| t.client_head.saturating_sub(at.elapsed()));
        st.wait_for_head();
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

    /// Answers with a reply of the hooks or of the engine's guards.
    pub(super) async fn reply<S: ClientStream>(
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
        let close = st.req.wants_close() || self.closing(conn) || unread || reply.status == 400 || connect;
        st.wbuf.clear();
        local_response(
            &mut st.wbuf,
            reply,
            reason_phrase(reply.status),
            close,
            st.req.method() == Method::Head,
            self.settings.proxy_headers.via.as_ref(),
        );
        st.tally.wrote_answer(&st.wbuf);
        if self.log.is_some() {
            st.content_type.clear();
            if reply.status != 204 && reply.status != 304 {
                st.content_type.extend_from_slice(reply.content_type.as_bytes());
            }
        }
        let sent = self.write_client(io, &mut st.wbuf, conn).await;
        let outcome = match (close, sent.is_ok()) {
            (_, false) => Outcome::Close,
            (true, true) if unread => Outcome::CloseUnread,
            (true, true) => Outcome::Close,
            (false, true) => Outcome::KeepAlive,
        };
        (outcome, reply.status)
    }

    /// Writes `buf` to the client, less the response's first byte when the
    /// sweep already sent it as a probe.
    pub(super) async fn write_client<S: ClientStream>(
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
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_error<S: ClientStream>(
        &self,
        io: &mut S,
        wbuf: &mut Vec<u8>,
        tally: &mut Tally,
        req: &RequestHead,
        error: &Error,
        head_request: bool,
        conn: &ConnCtx,
        cx: &H::Ctx,
    ) -> u16 {
        let Some(status) = status_for(error) else {
            return 0;
        };
        wbuf.clear();
        let reply = self.handler.local_reply(req, LocalReply::status(status), cx);
        local_response(
            wbuf,
            &reply,
            reason_phrase(status),
            true,
            head_request,
            self.settings.proxy_headers.via.as_ref(),
        );
        tally.wrote_answer(wbuf);
        let _ = self.write_client(io, wbuf, conn).await;
        status
    }

    pub(super) fn log_failure(
        &self,
        client: &ClientInfo,
        req: &RequestHead,
        status: u16,
        error: &Error,
        upstream: Option<SocketAddr>,
    ) {
        let upstream = upstream.map(tracing::field::display);
        match error.side() {
            _ if client.background => tracing::warn!(
                listener = &*self.listener,
                client = %client.peer,
                target = %loggable_target(req.target()),
                upstream,
                status,
                "background refresh failed: {error}"
            ),
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
                request_id = %client.request_id,
                "request failed: {error}"
            ),
        }
    }

    /// Counts and logs an exchange, tunnel or refused head: `bytes_in` is
    /// what came from the client, head included.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn observe_line(
        &self,
        event: Event,
        client: &ClientInfo,
        req: &RequestHead,
        status: u16,
        (bytes_in, tally): (u64, &Tally),
        content_type: &[u8],
        upstream: Option<SocketAddr>,
        total: Duration,
        facts: LogFacts<'_>,
    ) {
        self.observe(&Entry {
            event,
            listener: &self.listener,
            client,
            req: Some(req),
            status,
            bytes_in,
            bytes_out: tally.bytes_out,
            body_out: tally.body_out,
            upstream,
            upstream_time: tally.upstream_time,
            total,
            content_type,
            facts,
        });
    }

    /// Counts `entry` in the listener's metrics and writes its log line.
    pub(super) fn observe(&self, entry: &Entry<'_>) {
        if let Some(m) = &self.metrics {
            count(m, entry);
        }
        if let Some(log) = &self.log {
            log.log(entry);
        }
    }
}

/// Adds `entry` to a listener's counters.
fn count(m: &ListenerMetrics, entry: &Entry<'_>) {
    match entry.event {
        Event::Rejected(_) => {
            m.rejected_connections.add(1);
            return;
        }
        Event::Refused => m.refused_heads.add(1),
        Event::Tunnel | Event::Connection => m.tunnels.add(1),
        Event::Request => {}
    }
    let class = status_class(entry.status);
    m.requests[class].add(1);
    if let Some(route) = entry.facts.route.and_then(|r| m.routes.get(r)) {
        route[class].add(1);
    }
    m.latency.observe(entry.total.as_micros() as u64);
    m.bytes_in.add(entry.bytes_in);
    m.bytes_out.add(entry.bytes_out);
    if let Some(acl) = entry.facts.acl {
        let rules = m.acl.len() - ACL_SPECIAL.len();
        let slot = match acl.rule {
            RuleName::Rule(i, _) => i,
            RuleName::Default => rules,
            RuleName::ConnectPorts => rules + 1,
            RuleName::BlockPrivate => rules + 2,
            RuleName::Auth => rules + 3,
            RuleName::Loop => rules + 4,
        };
        if let Some(counts) = m.acl.get(slot) {
            counts[usize::from(!acl.allowed)].add(1);
        }
    }
}

/// How the sweep may watch a client whose request is all sent: with the
/// response's first byte as a probe while nothing of an answer went out
/// and the stream is a plain socket (a TLS stream cannot take a stray
/// byte), else for resets only.
pub(super) fn client_watch<S: ClientStream>(io: &S, began: bool) -> ClientWatch {
    if began || io.splice_fd().is_none() {
        ClientWatch::ResetOnly
    } else {
        ClientWatch::Probe(RESPONSE_START)
    }
}

/// Drops the first byte of the response in `head` when the sweep already
/// sent it to the client as a probe.
pub(super) fn skip_probe(conn: &ConnCtx, head: &mut Vec<u8>) {
    if conn.take_probe() {
        debug_assert_eq!(head.first(), Some(&RESPONSE_START));
        head.remove(0);
    }
}

/// A request target fit for a log line: credentials in an authority
/// (`user:password@host`) are replaced by `***`.
pub(super) fn loggable_target(target: &[u8]) -> String {
    String::from_utf8_lossy(&crate::access_log::loggable(target)).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffers_of_a_busy_slot(size: usize) -> ConnBuffers {
        let mut rbuf = BytesMut::with_capacity(size + 4096);
        rbuf.extend_from_slice(b"GET / HTTP/1.1\r\nX-Slow: ");
        ConnBuffers {
            rbuf,
            wbuf: Vec::with_capacity(size),
            scratch: Vec::with_capacity(size),
            req: RequestHead::new(),
            resp: ResponseHead::new(),
            edits: HeadEdits::new(),
            size,
            tally: Tally::default(),
            content_type: Vec::new(),
        }
    }

    #[test]
    fn a_trickling_head_holds_a_small_buffer_and_no_write_buffers() {
        // A slot from the free list carries a served request's buffers; a
        // head that does not come whole in the first read must not keep
        // them while it waits.
        let mut st = buffers_of_a_busy_slot(64 * 1024);
        st.wait_for_head();
        assert_eq!(&st.rbuf[..], b"GET / HTTP/1.1\r\nX-Slow: ");
        assert!(st.rbuf.capacity() <= SMALL_HEAD_BUFFER, "{}", st.rbuf.capacity());
        assert_eq!((st.wbuf.capacity(), st.scratch.capacity()), (0, 0));
        st.take_write_buffer();
        assert!(st.wbuf.capacity() >= 64 * 1024, "a whole head writes again");
    }

    #[test]
    fn a_released_slot_keeps_its_usual_buffers_and_frees_grown_ones() {
        let mut st = buffers_of_a_busy_slot(16 * 1024);
        st.rbuf.clear();
        st.wbuf.extend_from_slice(b"response");
        st.scratch.reserve(1 << 20);
        st.tidy();
        assert!(
            st.wbuf.is_empty() && st.wbuf.capacity() >= 16 * 1024,
            "kept, emptied"
        );
        assert!(st.rbuf.capacity() >= 16 * 1024, "kept");
        assert_eq!(st.scratch.capacity(), 0, "1 MiB is past 4x the usual size: freed");
    }
}
