//! The phase driver of a proxied exchange: attempts on the peers the hooks
//! pick (each one reported back, another one when the hooks ask and the
//! request can go again), the upstream head built with the hooks' edits,
//! interim responses, the switch to a tunnel, and the final response head
//! and body relayed to the client. The sessions on either side
//! ([`super::server`], [`super::client`]) do the reading and writing.

use std::{cell::RefCell, net::SocketAddr, os::fd::AsRawFd};

use bytes::Buf;
use ringway_core::{ConnCtx, Error, ErrorKind, Side, Wait};

use super::{
    client::{precheck_chunked, PeerTimeouts, Progress},
    server::{client_watch, skip_probe, ConnBuffers},
    ClientInfo, ClientStream, Engine, Failure, Outcome, Target,
};
use crate::{
    body::{BodyPath, BodyTee, OutFraming},
    gather::write_head_and_body,
    head::{BodyFraming, Method, RequestHead, ResponseHead, Version},
    held::{FileBody, HeldBody},
    hooks::{Attempt, AttemptResult, BodyPlan, HeldResponse, Peer, ProxyHooks, Retry},
    io::{bounded, io_error},
    pool::{KeepIdle, UpstreamConn},
    write::{end_head, request_head, response_head, ClientResponse, UpstreamRequest, NO_EDITS},
};

/// Body bytes up to this size are copied behind the head; larger ones are
/// gathered with the head by writev.
const GATHER_ABOVE: usize = 4096;

const ESTABLISHED: &[u8] = b"HTTP/1.1 200 Connection established\r\n\r\n";

/// How the wait for a final response head ended.
enum FinalHead {
    /// The final head is in `resp`.
    Here,
    /// A 101 went to the client: the connection is a tunnel now.
    Switched,
    /// The attempt failed before a final head.
    Failed(Error),
}

impl<H: ProxyHooks> Engine<H> {
    /// Forwards the request to `target`, attempt after attempt while the
    /// hooks want another peer and the request can go again, then relays
    /// the response. `last` is the address of the last attempt, for logs.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn proxy<S: ClientStream>(
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
        if st.req.body() == BodyFraming::Chunked {
            // Whatever part of a chunked body came with the head is checked
            // before anything goes upstream, so a malformed body that
            // arrives in one piece never reaches the upstream at all.
            precheck_chunked(&st.rbuf, s.limits.max_header_bytes).map_err(Failure::before)?;
        }
        let (mut peer, candidates) = match target {
            Target::Peer(peer) => (Some(peer), &[][..]),
            Target::Addrs(addrs) => (None, addrs),
        };
        let mut progress = Progress::default();
        let mut first_attempt = true;
        // Timed only where a log line reports it.
        let began = self.log.is_some().then(std::time::Instant::now);
        loop {
            let addrs = match &peer {
                Some(p) => std::slice::from_ref(&p.addr),
                None => candidates,
            };
            let timeouts = PeerTimeouts {
                connect: peer
                    .as_ref()
                    .and_then(|p| p.connect_timeout)
                    .unwrap_or(s.timeouts.connect),
                response: peer
                    .as_ref()
                    .and_then(|p| p.response_timeout)
                    .unwrap_or(s.timeouts.upstream_response),
                tls: peer.as_ref().and_then(|p| p.tls.as_deref()),
            };
            let mut up = match self
                .pool
                .get(
                    addrs,
                    timeouts.tls,
                    timeouts.connect,
                    s.buffer_size,
                    conn.clock_ms(),
                )
                .await
            {
                Ok(up) => up,
                Err(e) => {
                    *last = peer.as_ref().map(|p| p.addr);
                    let failed = AttemptResult::Failed(&e);
                    match self.after_attempt(&st.req, peer.as_ref(), failed, false, true, conn, cx) {
                        Some(next) => {
                            peer = Some(next);
                            continue;
                        }
                        None => return Err(Failure::before(e)),
                    }
                }
            };
            *last = Some(up.addr);
            if let Some(p) = &peer {
                up.keep = KeepIdle {
                    max: p.keepalive,
                    timeout: p.keepalive_timeout,
                };
                if p.proxy_protocol && !up.reused {
                    // The header goes first on the new connection, alone.
                    let mut header = Vec::with_capacity(52);
                    crate::proxy_protocol::encode_v2(client.peer, client.local, &mut header);
                    if let Err(e) = crate::io::write_vec(&mut up.stream, &mut header).await {
                        let e = Error::new(ErrorKind::Io, Side::Upstream, "sending the PROXY header")
                            .with_cause(e);
                        let failed = AttemptResult::Failed(&e);
                        match self.after_attempt(
                            &st.req,
                            peer.as_ref(),
                            failed,
                            false,
                            progress.replayable() || first_attempt,
                            conn,
                            cx,
                        ) {
                            Some(next) => {
                                peer = Some(next);
                                continue;
                            }
                            None => return Err(Failure::before(e)),
                        }
                    }
                }
            }
            self.upstream_head(
                st,
                client,
                peer.as_ref(),
                up.addr,
                first_attempt,
                &mut progress,
                cx,
            );
            first_attempt = false;
            let sent = self
                .send_request(io, st, &mut up, conn, &mut progress, timeouts)
                .await?;
            let head = match sent {
                Ok(()) => {
                    self.final_head(io, st, &mut up, peer.as_ref(), conn, &mut progress, timeouts, cx)
                        .await?
                }
                Err(e) => FinalHead::Failed(e),
            };
            let failed = match head {
                FinalHead::Switched => return Ok((Outcome::Upgrade(up), 101)),
                FinalHead::Here => {
                    st.tally.upstream_time = began.map(|at| at.elapsed());
                    // The hooks learn how the attempt went, and may want
                    // another peer (a 503, say) while the request can still
                    // go again.
                    let result = AttemptResult::Response(&st.resp);
                    let replayable = progress.replayable();
                    match self.after_attempt(&st.req, peer.as_ref(), result, true, replayable, conn, cx) {
                        None => return self.respond(io, st, up, conn, &progress, timeouts, cx).await,
                        Some(next) => {
                            // This response is dropped unread, with its
                            // connection.
                            drop(up);
                            st.resp.clear();
                            peer = Some(next);
                            continue;
                        }
                    }
                }
                FinalHead::Failed(e) => e,
            };
            // This attempt failed before a final response head.
            drop(up);
            st.resp.clear();
            let result = AttemptResult::Failed(&failed);
            // A connection that was never made carried nothing of the
            // request (a reconnect after a stale pooled connection).
            let sent = !failed.kind().is_connecting();
            let replayable = progress.replayable();
            match self.after_attempt(&st.req, peer.as_ref(), result, sent, replayable, conn, cx) {
                Some(next) => peer = Some(next),
                None => return Err(Failure::before(failed)),
            }
        }
    }

    /// Builds the head sent to `addr` in `st.wbuf`, with the hooks' edits
    /// for this peer. The first attempt takes a small body that is all here
    /// behind the head; a later one keeps what the first put there.
    #[allow(clippy::too_many_arguments)]
    fn upstream_head(
        &self,
        st: &mut ConnBuffers,
        client: &ClientInfo,
        peer: Option<&Peer>,
        addr: SocketAddr,
        first_attempt: bool,
        progress: &mut Progress,
        cx: &mut H::Ctx,
    ) {
        let s = &self.settings;
        let ConnBuffers {
            rbuf,
            wbuf,
            req,
            edits,
            ..
        } = st;
        if !edits.is_empty() {
            edits.clear();
        }
        self.handler.upstream_request(req, peer, edits, cx);
        let framing = req.body();
        let body_kept = (!first_attempt).then(|| wbuf.split_off(progress.head_len));
        wbuf.clear();
        request_head(
            wbuf,
            &UpstreamRequest {
                head: req,
                client_ip: client.peer.ip(),
                scheme: s.scheme,
                framing,
                upgrade: req.upgrade(),
                upstream: Some(addr),
                edits,
            },
            &s.proxy_headers,
        );
        end_head(wbuf);
        progress.head_len = wbuf.len();
        if let Some(body) = body_kept {
            wbuf.extend_from_slice(&body);
            return;
        }
        // A body that is already here and small goes out with the head, in
        // one write, and stays in `wbuf` for a retry.
        progress.body_in_head = match framing {
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

    /// Deals with interim responses until a final head is in `st.resp`:
    /// a 100 was answered by the proxy; others go to HTTP/1.1 clients; a
    /// 101 to an upgrade request goes to the client and ends the attempt
    /// (reported to the hooks, not replayable).
    #[allow(clippy::too_many_arguments)]
    async fn final_head<S: ClientStream>(
        &self,
        io: &mut S,
        st: &mut ConnBuffers,
        up: &mut UpstreamConn,
        peer: Option<&Peer>,
        conn: &ConnCtx,
        progress: &mut Progress,
        timeouts: PeerTimeouts<'_>,
        cx: &mut H::Ctx,
    ) -> std::result::Result<FinalHead, Failure> {
        let s = &self.settings;
        let ConnBuffers { wbuf, req, resp, .. } = st;
        loop {
            let status = resp.status();
            if status == 101 {
                let Some(protocol) = req.upgrade().and(resp.upgrade()) else {
                    return Ok(FinalHead::Failed(Error::new(
                        ErrorKind::InvalidHttp,
                        Side::Upstream,
                        "101 Switching Protocols without an upgrade request",
                    )));
                };
                let result = AttemptResult::Response(resp);
                self.after_attempt(req, peer, result, true, false, conn, cx);
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
                return Ok(FinalHead::Switched);
            }
            if !(100..200).contains(&status) {
                return Ok(FinalHead::Here);
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
                progress.began = true;
            }
            resp.clear();
            let watch = client_watch(io, progress.began);
            match self
                .read_response_head(up, resp, conn, Some(watch), timeouts.response)
                .await
            {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::ClientGone => return Err(Failure::before(e)),
                Err(e) => return Ok(FinalHead::Failed(e)),
            }
        }
    }

    /// Sends the final response (head edited by the hooks, then the body,
    /// re-framed for the client) and gives the upstream connection back to
    /// the pool when it can serve another request.
    #[allow(clippy::too_many_arguments)]
    async fn respond<S: ClientStream>(
        &self,
        io: &mut S,
        st: &mut ConnBuffers,
        mut up: UpstreamConn,
        conn: &ConnCtx,
        progress: &Progress,
        timeouts: PeerTimeouts<'_>,
        cx: &mut H::Ctx,
    ) -> std::result::Result<(Outcome, u16), Failure> {
        let s = &self.settings;
        let t = &s.timeouts;
        let body_cut = progress.body_cut;
        if !st.edits.is_empty() {
            st.edits.clear();
        }
        let observe = match self.handler.response(&st.req, &st.resp, &mut st.edits, cx) {
            BodyPlan::Pass => None,
            BodyPlan::Observe { max, file } => Some((max, file)),
            BodyPlan::Replace(held) => {
                // The upstream's answer gives way to the held one; its
                // connection is kept when nothing of it is left to read.
                let bodiless = st.resp.body(st.req.method()) == BodyFraming::None;
                if st.resp.keeps_alive() && bodiless && !body_cut {
                    self.pool.put(up, s.buffer_size, conn.clock_ms());
                }
                st.resp.clear();
                // Boxed, as in every place a held response is sent: rare
                // on this path, and inline it would size every exchange.
                let (outcome, status) = Box::pin(self.serve_held(io, st, *held, conn, cx)).await?;
                let outcome = if body_cut { Outcome::CloseUnread } else { outcome };
                return Ok((outcome, status));
            }
        };
        let ConnBuffers {
            wbuf,
            scratch,
            req,
            resp,
            edits,
            tally,
            content_type,
            ..
        } = st;
        let status = resp.status();
        let input = resp.body(req.method());
        let upstream_reusable = resp.keeps_alive() && input != BodyFraming::UntilClose && !body_cut;
        let (output, out) = client_framing(input, req.version());
        let close = req.wants_close() || self.closing(conn) || body_cut || output == BodyFraming::UntilClose;
        // A copy of the body for the hooks, as it goes.
        let tee = observe.map(|(max, file)| {
            let expected = match input {
                BodyFraming::None => Some(0),
                BodyFraming::Length(n) => Some(n),
                _ => None,
            };
            // Boxed: held across the relay, and only where a cache fills.
            Box::new(RefCell::new(BodyTee::new(max, expected, file)))
        });
        let head = ClientResponse {
            head: resp,
            framing: output,
            close,
            client_version: req.version(),
            upgrade: None,
            edits,
        };
        self.client_head(wbuf, &head, content_type);
        let head_len = wbuf.len() as u64;
        // The body bytes that came with the head leave with it, in one
        // write: small ones copied behind the head, larger ones gathered
        // with writev (no copy). What remains is relayed.
        let mut input = input;
        let in_hand = match input {
            BodyFraming::Length(n) => (n as usize).min(up.rbuf.len()),
            _ => 0,
        };
        tally.bytes_out = head_len;
        tally.body_out = in_hand as u64;
        tally.bytes_out += in_hand as u64;
        if let Some(tee) = &tee {
            tee.borrow_mut().push(&up.rbuf[..in_hand]);
        }
        if in_hand > 0 && in_hand <= GATHER_ABOVE {
            wbuf.extend_from_slice(&up.rbuf[..in_hand]);
            up.rbuf.advance(in_hand);
        }
        resp.clear();
        if in_hand > GATHER_ABOVE {
            let body = up.rbuf.split_to(in_hand).freeze();
            self.write_gathered(io, wbuf, body, conn).await?;
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
                read_timeout: timeouts.response,
                write_timeout: t.client_io,
                chunk: s.buffer_size,
                max_trailer_bytes: s.limits.max_header_bytes,
                splice: s.splice,
                max_body: None,
                min_rate: None,
                tee: tee.as_deref(),
            };
            let moved = Box::pin(path.relay(&mut up.stream, &mut up.rbuf, io, scratch, input, out))
                .await
                .map_err(Failure::after)?;
            tally.body_out += moved;
            tally.bytes_out += moved;
        }
        if let Some(body) = tee.and_then(|tee| tee.into_inner().finish()) {
            self.handler.observed(req, body, cx);
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

    /// Sends a response the hooks hold: its head, edited by the hooks, and
    /// its body, or the part of it asked for (none to a HEAD, for a 304).
    pub(super) async fn serve_held<S: ClientStream>(
        &self,
        io: &mut S,
        st: &mut ConnBuffers,
        held: HeldResponse,
        conn: &ConnCtx,
        cx: &mut H::Ctx,
    ) -> std::result::Result<(Outcome, u16), Failure> {
        let ConnBuffers {
            wbuf,
            req,
            edits,
            tally,
            content_type,
            ..
        } = st;
        // The held head as it is; a copy where the status changes (a 304,
        // a range).
        let changed;
        let resp: &ResponseHead = match held.status {
            Some(status) => {
                let mut head = (*held.head).clone();
                head.set_status(status);
                changed = head;
                &changed
            }
            None => &held.head,
        };
        let status = resp.status();
        if !edits.is_empty() {
            edits.clear();
        }
        // The plan is the hooks' business on relayed responses only.
        let _ = self.handler.response(req, resp, edits, cx);
        let whole = held.body.len();
        let (start, end) = match held.range {
            Some((start, end)) => (start.min(whole), end.min(whole).max(start.min(whole))),
            None => (0, whole),
        };
        let body_len = end - start;
        let no_content = status == 304 || status == 204 || (100..200).contains(&status);
        let bodiless = no_content || req.method() == Method::Head;
        // A HEAD is told the length a GET would get.
        let framing = if no_content {
            BodyFraming::None
        } else {
            BodyFraming::Length(body_len)
        };
        let close = req.wants_close() || self.closing(conn);
        let head = ClientResponse {
            head: resp,
            framing,
            close,
            client_version: req.version(),
            upgrade: None,
            edits,
        };
        self.client_head(wbuf, &head, content_type);
        let body_len = if bodiless { 0 } else { body_len };
        tally.bytes_out = wbuf.len() as u64 + body_len;
        tally.body_out = body_len;
        match held.body {
            HeldBody::Memory(bytes) if body_len as usize > GATHER_ABOVE => {
                let body = bytes.slice(start as usize..end as usize);
                self.write_gathered(io, wbuf, body, conn).await?;
            }
            HeldBody::Memory(bytes) => {
                if body_len > 0 {
                    wbuf.extend_from_slice(&bytes[start as usize..end as usize]);
                }
                self.write_client(io, wbuf, conn).await.map_err(Failure::after)?;
            }
            HeldBody::File(file) if body_len > 0 => {
                self.send_file(io, &file, start, body_len, wbuf, conn).await?;
            }
            HeldBody::File(_) => {
                self.write_client(io, wbuf, conn).await.map_err(Failure::after)?;
            }
        }
        let outcome = if close { Outcome::Close } else { Outcome::KeepAlive };
        Ok((outcome, status))
    }

    /// Writes the final response head for the client in `wbuf` (relayed
    /// or held alike), and keeps its Content-Type for the access log,
    /// where one is written.
    fn client_head(&self, wbuf: &mut Vec<u8>, head: &ClientResponse<'_>, content_type: &mut Vec<u8>) {
        wbuf.clear();
        response_head(wbuf, head, &self.settings.proxy_headers);
        end_head(wbuf);
        if self.log.is_some() {
            content_type.clear();
            if let Some(value) = head.head.header("content-type") {
                content_type.extend_from_slice(value);
            }
        }
    }

    /// Sends the head in `buf`, then `len` bytes of `file` from `offset`,
    /// to the client: to a plain TCP socket the head goes with `MSG_MORE`
    /// (it leaves with the body's first bytes) and the body with
    /// `sendfile(2)` (no copy through user space); to others the body is
    /// read in pieces through `buf` and written.
    async fn send_file<S: ClientStream>(
        &self,
        io: &mut S,
        file: &FileBody,
        offset: u64,
        len: u64,
        buf: &mut Vec<u8>,
        conn: &ConnCtx,
    ) -> std::result::Result<(), Failure> {
        let timeout = self.settings.timeouts.client_io;
        // Opened before anything is written: a disk tier's file that is
        // gone (evicted meanwhile) is an error the client is answered.
        let file = file.open().map_err(|e| {
            Failure::before(Error::new(ErrorKind::Io, Side::Internal, "opening a stored body").with_cause(e))
        })?;
        let written = |e| Failure::after(io_error(Side::Downstream, "writing to the client")(e));
        let Some(fd) = io.splice_fd() else {
            self.write_client(io, buf, conn).await.map_err(Failure::after)?;
            let mut at = offset;
            while at < offset + len {
                let piece = ((offset + len - at) as usize).min(4 * GATHER_ABOVE);
                buf.resize(piece, 0);
                let n = file.read_at(buf, at).map_err(written)?;
                if n == 0 {
                    return Err(written(std::io::ErrorKind::UnexpectedEof.into()));
                }
                buf.truncate(n);
                self.write_client(io, buf, conn).await.map_err(Failure::after)?;
                at += n as u64;
            }
            return Ok(());
        };
        // A probe byte the sweep left in the buffer goes first, as on
        // every other write to the client.
        skip_probe(conn, buf);
        let mut head = &buf[..];
        while !head.is_empty() {
            match crate::held::send_more(fd, head).map_err(written)? {
                Some(n) => head = &head[n..],
                None => client_writable(io, conn, timeout).await?,
            }
        }
        let _nonblocking = crate::splice::NonBlocking::set(fd).map_err(written)?;
        let (mut at, end) = (offset, offset + len);
        while at < end {
            match file.send_to(fd, at, end - at).map_err(written)? {
                Some(0) => return Err(written(std::io::ErrorKind::WriteZero.into())),
                Some(n) => at += n as u64,
                None => client_writable(io, conn, timeout).await?,
            }
        }
        Ok(())
    }

    /// Writes the head in `wbuf` and `body` to the client in one `writev`
    /// (no copy of the body), within the client's write timeout.
    async fn write_gathered<S: ClientStream>(
        &self,
        io: &mut S,
        wbuf: &mut Vec<u8>,
        body: bytes::Bytes,
        conn: &ConnCtx,
    ) -> std::result::Result<(), Failure> {
        skip_probe(conn, wbuf);
        let (sent, head) = bounded!(
            conn.deadline(Wait::ClientWrite, self.settings.timeouts.client_io),
            ErrorKind::WriteTimeout,
            Side::Downstream,
            "client did not take the response in time",
            write_head_and_body(io, std::mem::take(wbuf), body),
        )
        .map_err(Failure::after)?;
        *wbuf = head;
        sent.map_err(io_error(Side::Downstream, "writing to the client"))
            .map_err(Failure::after)
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

    /// CONNECT: connects to the first address that accepts, answers
    /// `200 Connection established`, and hands the connection to the tunnel.
    pub(super) async fn connect_tunnel<S: ClientStream>(
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
            .connect(candidates, None, s.timeouts.connect, s.buffer_size)
            .await
            .map_err(Failure::before)?;
        st.wbuf.clear();
        st.wbuf.extend_from_slice(ESTABLISHED);
        st.tally.bytes_out = ESTABLISHED.len() as u64;
        self.write_client(io, &mut st.wbuf, conn)
            .await
            .map_err(Failure::after)?;
        Ok((Outcome::Upgrade(up), 200))
    }
}

/// Waits, within the client's write timeout, until its socket takes more
/// bytes (after a raw send found it full).
async fn client_writable<S: ClientStream>(
    io: &S,
    conn: &ConnCtx,
    timeout: std::time::Duration,
) -> std::result::Result<(), Failure> {
    bounded!(
        conn.deadline(Wait::ClientWrite, timeout),
        ErrorKind::WriteTimeout,
        Side::Downstream,
        "client did not take the response in time",
        io.splice_ready(true),
    )
    .map_err(Failure::after)?
    .map_err(io_error(Side::Downstream, "writing to the client"))
    .map_err(Failure::after)
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

#[cfg(test)]
mod tests {
    use crate::head::Method;

    #[test]
    fn idempotent_methods() {
        assert!(Method::Get.is_idempotent());
        assert!(!Method::Post.is_idempotent());
    }
}
