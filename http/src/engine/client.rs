//! The upstream HTTP/1.1 client: sending a request head and its body to
//! an upstream connection (again on a fresh connection when a pooled one
//! turns out to have been closed before it read anything), and reading the
//! response head within the upstream's timeout while the client is
//! watched.

use std::{
    cell::Cell,
    io,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use monoio::net::TcpStream;
use ringway_core::{ClientWatch, ConnCtx, Error, ErrorKind, Result, Side, Wait};

use super::{server::client_watch, ClientStream, Engine, Failure};
use crate::{
    body::{BodyPath, OutFraming, RateWindow},
    buffers::HEAD_ROOM,
    chunked::{ChunkedDecoder, Decoded},
    head::{BodyFraming, ResponseHead},
    hooks::ProxyHooks,
    io::{bounded, read_some, write_vec},
    pool::UpstreamConn,
    tls::PeerTls,
};

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// What one attempt has done so far, across the connections it used.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Progress {
    /// The length of the head in the write buffer (a small body that came
    /// with it follows it there, kept for another attempt).
    pub(super) head_len: usize,
    /// The whole body is in the write buffer behind the head.
    pub(super) body_in_head: bool,
    /// Bytes of an answer (a 100 or another interim response) went to the
    /// client.
    pub(super) began: bool,
    /// The upstream answered before taking the whole request body.
    pub(super) body_cut: bool,
}

impl Progress {
    /// Whether the request can go to another peer: its body is all in
    /// hand, nothing of an answer went out, the upstream took it all.
    pub(super) fn replayable(&self) -> bool {
        self.body_in_head && !self.began && !self.body_cut
    }
}

/// The connect and response-head timeouts of the peer an attempt is on,
/// and its TLS identity.
#[derive(Debug, Clone, Copy)]
pub(super) struct PeerTimeouts<'a> {
    pub(super) connect: Duration,
    pub(super) response: Duration,
    pub(super) tls: Option<&'a PeerTls>,
}

impl<H: ProxyHooks> Engine<H> {
    /// Sends the request (its head is in `st.wbuf`) on `up` and reads the
    /// response head into `st.resp`. `Ok(Err(_))`: the attempt failed on
    /// the upstream side; `Err(_)`: the exchange fails (the client's side,
    /// or a client that left).
    pub(super) async fn send_request<S: ClientStream>(
        &self,
        io: &mut S,
        st: &mut super::server::ConnBuffers,
        up: &mut UpstreamConn,
        conn: &ConnCtx,
        progress: &mut Progress,
        timeouts: PeerTimeouts<'_>,
    ) -> std::result::Result<Result<()>, Failure> {
        let s = &self.settings;
        let t = &s.timeouts;
        let super::server::ConnBuffers {
            rbuf,
            wbuf,
            scratch,
            req,
            resp,
            tally,
            ..
        } = st;
        let framing = req.body();
        let idempotent = req.method().is_idempotent();
        let mut retried = false;
        loop {
            let sent = bounded!(
                conn.upstream_deadline(Wait::Upstream, timeouts.response, up.stream.as_raw_fd()),
                ErrorKind::WriteTimeout,
                Side::Upstream,
                "the upstream did not take the request in time",
                write_vec(&mut up.stream, wbuf),
            );
            let sent = match sent {
                Ok(sent) => sent,
                Err(e) => return Ok(Err(e)),
            };
            if let Err(e) = sent {
                // A reused connection that cannot take the head was reset
                // before the request reached it; the body, if any, is still
                // the client's to send. Any method goes again.
                if up.reused && !retried {
                    retried = true;
                    // A server that cannot take a new connection either is
                    // a failed attempt like any other: the hooks hear of it.
                    if let Err(e) = self.reconnect(up, timeouts).await {
                        return Ok(Err(e));
                    }
                    continue;
                }
                return Ok(Err(Error::new(
                    ErrorKind::Io,
                    Side::Upstream,
                    "sending the request upstream",
                )
                .with_cause(e)));
            }
            if progress.body_in_head {
                if let BodyFraming::Length(n) = framing {
                    tally.body_in = n;
                }
            } else {
                if req.expects_continue() && rbuf.is_empty() {
                    // `scratch` is free until the body relay uses it.
                    scratch.clear();
                    scratch.extend_from_slice(CONTINUE);
                    self.write_client(io, scratch, conn)
                        .await
                        .map_err(Failure::before)?;
                    progress.began = true;
                }
                let path = BodyPath {
                    conn,
                    upstream: up.stream.as_raw_fd(),
                    from: Side::Downstream,
                    to: Side::Upstream,
                    read_timeout: t.client_io,
                    write_timeout: timeouts.response,
                    chunk: s.buffer_size,
                    max_trailer_bytes: s.limits.max_header_bytes,
                    splice: s.splice,
                    max_body: s.limits.max_body,
                    tee: None,
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
                    up,
                    resp,
                    scratch,
                    (framing, out),
                    timeouts.response,
                );
                match Box::pin(relay).await {
                    Ok(Some(moved)) => tally.body_in = moved,
                    Ok(None) => progress.body_cut = true,
                    // The client's side failed: nothing to report.
                    Err(e) if e.side() != Side::Upstream => return Err(Failure::before(e)),
                    Err(e) => return Ok(Err(e)),
                }
                if progress.body_cut {
                    return Ok(Ok(()));
                }
            }
            // The whole request is sent: the client is watched while the
            // upstream works on it.
            let watch = client_watch(io, progress.began);
            match self
                .read_response_head(up, resp, conn, Some(watch), timeouts.response)
                .await
            {
                Ok(()) => return Ok(Ok(())),
                Err(e) if e.kind() == ErrorKind::ClientGone => return Err(Failure::before(e)),
                Err(e)
                    if !retried
                        && up.reused
                        && progress.body_in_head
                        && up.rbuf.is_empty()
                        && Box::pin(retry_on(&e, idempotent, up.stream.tcp())).await =>
                {
                    retried = true;
                    // A server that cannot take a new connection either is
                    // a failed attempt like any other: the hooks hear of it.
                    if let Err(e) = self.reconnect(up, timeouts).await {
                        return Ok(Err(e));
                    }
                }
                Err(e) => return Ok(Err(e)),
            }
        }
    }

    /// Replaces `up` by a new connection to the same server, under the
    /// same keep-alive limits.
    async fn reconnect(&self, up: &mut UpstreamConn, peer: PeerTimeouts<'_>) -> Result<()> {
        let fresh = self
            .pool
            .connect(
                std::slice::from_ref(&up.addr),
                peer.tls,
                peer.connect,
                self.settings.buffer_size,
            )
            .await?;
        *up = UpstreamConn {
            keep: up.keep,
            ..fresh
        };
        Ok(())
    }

    /// Relays a request body upstream. When the upstream stops taking it,
    /// it may have answered early (401, 413) and closed: that answer, when
    /// one came, is the client's (`Ok(None)`, its head in `resp`; interim
    /// answers before it are dealt with by the caller), and the client
    /// connection closes after it, its body not all read. Without one, the
    /// failure stands. `Ok(Some(n))`: the whole body went, `n` bytes.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_body<S: ClientStream>(
        &self,
        path: BodyPath<'_>,
        io: &mut S,
        rbuf: &mut BytesMut,
        up: &mut UpstreamConn,
        resp: &mut ResponseHead,
        scratch: &mut Vec<u8>,
        (input, output): (BodyFraming, OutFraming),
        response_timeout: Duration,
    ) -> Result<Option<u64>> {
        let e = match path.relay(io, rbuf, &mut up.stream, scratch, input, output).await {
            Ok(moved) => return Ok(Some(moved)),
            Err(e) => e,
        };
        if e.side() != Side::Upstream {
            return Err(e);
        }
        match self
            .read_response_head(up, resp, path.conn, None, response_timeout)
            .await
        {
            Ok(()) => Ok(None),
            Err(_) => Err(e),
        }
    }

    /// Reads the upstream's response head within the upstream timeout;
    /// with `watch`, the request is complete and the sweep watches the
    /// client meanwhile (a client that leaves ends the wait).
    pub(super) async fn read_response_head(
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
}

/// Decodes a copy of the chunked bytes received so far; fails on the first
/// framing error among them.
pub(super) fn precheck_chunked(received: &BytesMut, max_trailer_bytes: usize) -> Result<()> {
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
pub(super) async fn retry_on(error: &Error, idempotent: bool, upstream: &TcpStream) -> bool {
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

pub(super) fn upstream_read_error(e: io::Error) -> Error {
    let kind = match e.kind() {
        io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted | io::ErrorKind::BrokenPipe => {
            ErrorKind::ConnectionReset
        }
        // A TLS upstream that closed without close_notify: closed, as far
        // as retries go (a body it cut is not taken as complete).
        io::ErrorKind::UnexpectedEof => ErrorKind::ConnectionClosed,
        _ => ErrorKind::Io,
    };
    Error::new(kind, Side::Upstream, "reading the upstream's response").with_cause(e)
}
