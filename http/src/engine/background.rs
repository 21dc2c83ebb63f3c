//! Requests the proxy makes of itself, in the background: a cache's
//! refresh of a response it answered stale (`stale-while-revalidate`).
//!
//! A refresh runs the whole exchange as a client's request would (the
//! mode's checks, routing, rewrites, balancing, retries, the cache's
//! revalidation and store), over a [`Background`] stream: it reads the
//! request the proxy wrote for it and drops what is answered. No client
//! waits for it; it is neither logged nor counted as a client's request.
//!
//! Unsafe code: monoio's owned-buffer traits hand out raw pointers; each
//! use says why it holds.
#![allow(unsafe_code)]

use std::future::Future;

use bytes::Bytes;
use monoio::{
    buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut},
    io::{AsyncReadRent, AsyncWriteRent, Split},
    BufResult,
};

use super::ClientStream;
use crate::{
    head::{listed_in_connection, HeaderKind, RequestHead, Version},
    splice::SpliceSocket,
    write::push_field,
};

/// The client side of a background request: yields the request's bytes,
/// then the end of the stream; every answer written to it is dropped.
pub(crate) struct Background {
    request: Bytes,
}

impl Background {
    /// A stream carrying `request` (a whole head, no body).
    pub(crate) fn new(request: Bytes) -> Self {
        Self { request }
    }

    /// Moves up to `room` bytes of what is left of the request to `ptr`.
    fn fill(&mut self, ptr: *mut u8, room: usize) -> usize {
        let n = room.min(self.request.len());
        // SAFETY: the buffer's owner said `room` bytes from `ptr` are
        // writable; `n` is at most that, and the request has `n` bytes.
        unsafe { std::ptr::copy_nonoverlapping(self.request.as_ptr(), ptr, n) };
        let _ = self.request.split_to(n);
        n
    }
}

/// The request that refreshes what `req` was answered from: the same
/// target, version and fields (those a `Vary` selects on, the
/// credentials a forward listener checks), as a `GET` (a `HEAD` cannot
/// fill the store), closing after its answer. Left out: a body, the
/// fields that describe the client's own connection (and those its
/// `Connection` names), and the client's own cache directives,
/// conditions and range, which would keep the answer from being stored.
pub(crate) fn refresh_request(req: &RequestHead) -> Bytes {
    let mut out = Vec::with_capacity(req.raw().len() + 32);
    out.extend_from_slice(b"GET ");
    out.extend_from_slice(req.target());
    out.extend_from_slice(match req.version() {
        Version::Http10 => b" HTTP/1.0\r\n",
        Version::Http11 => b" HTTP/1.1\r\n",
    });
    for field in req.headers() {
        // The proxy credentials stay: the refresh is checked as the
        // client's request was.
        let own_connection = (field.kind.is_hop_by_hop() && field.kind != HeaderKind::ProxyAuthorization)
            || matches!(field.kind, HeaderKind::ContentLength | HeaderKind::Expect);
        let client_own = [
            "cache-control",
            "pragma",
            "if-none-match",
            "if-modified-since",
            "if-match",
            "if-unmodified-since",
            "if-range",
            "range",
        ]
        .iter()
        .any(|name| field.name.eq_ignore_ascii_case(name.as_bytes()));
        if own_connection
            || client_own
            || (field.kind == HeaderKind::Other && listed_in_connection(req.headers(), field.name))
        {
            continue;
        }
        push_field(&mut out, field.name, field.value);
    }
    out.extend_from_slice(b"Connection: close\r\n\r\n");
    out.into()
}

impl AsyncReadRent for Background {
    fn read<T: IoBufMut>(&mut self, mut buf: T) -> impl Future<Output = BufResult<usize, T>> {
        let n = self.fill(buf.write_ptr(), buf.bytes_total());
        // SAFETY: `fill` initialised `n` bytes from the start of the buffer.
        unsafe { buf.set_init(n) };
        std::future::ready((Ok(n), buf))
    }

    fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> impl Future<Output = BufResult<usize, T>> {
        // Only the first slice is filled, as a short read may.
        let n = if buf.write_iovec_len() > 0 {
            // SAFETY: the owner says `write_iovec_len` iovecs start here.
            let first = unsafe { &*buf.write_iovec_ptr() };
            self.fill(first.iov_base.cast::<u8>(), first.iov_len)
        } else {
            0
        };
        // SAFETY: `n` bytes of the first slice were written.
        unsafe { buf.set_init(n) };
        std::future::ready((Ok(n), buf))
    }
}

impl AsyncWriteRent for Background {
    fn write<T: IoBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        let n = buf.bytes_init();
        std::future::ready((Ok(n), buf))
    }

    fn writev<T: IoVecBuf>(&mut self, buf: T) -> impl Future<Output = BufResult<usize, T>> {
        // SAFETY: the owner says `read_iovec_len` valid iovecs start at
        // `read_iovec_ptr`.
        let iovecs = unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
        let n = iovecs.iter().map(|iov| iov.iov_len).sum();
        std::future::ready((Ok(n), buf))
    }

    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> {
        std::future::ready(Ok(()))
    }

    fn shutdown(&mut self) -> impl Future<Output = std::io::Result<()>> {
        std::future::ready(Ok(()))
    }
}

// SAFETY: reads touch only the request, writes touch nothing: the two
// halves of a split stream never touch the same state.
unsafe impl Split for Background {}

impl SpliceSocket for Background {}

impl ClientStream for Background {
    type ReadHalf = monoio::io::OwnedReadHalf<Background>;
    type WriteHalf = monoio::io::OwnedWriteHalf<Background>;

    fn into_halves(self) -> (Self::ReadHalf, Self::WriteHalf) {
        monoio::io::Splitable::into_split(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refresh_asks_for_the_same_target_and_fields_and_closes() {
        let req = crate::head::parsed(
            "HEAD /a?b HTTP/1.1\r\nHost: site.test\r\nAccept-Encoding: gzip\r\n\
             Connection: keep-alive, X-Hop\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
             X-Hop: 1\r\nProxy-Authorization: Basic dTpw\r\nIf-None-Match: \"x\"\r\n\
             Cache-Control: only-if-cached\r\nRange: bytes=0-1\r\nCookie: a=b\r\n\r\n",
        );
        let out = refresh_request(&req);
        assert_eq!(
            std::str::from_utf8(&out).expect("text"),
            "GET /a?b HTTP/1.1\r\nHost: site.test\r\nAccept-Encoding: gzip\r\n\
             Proxy-Authorization: Basic dTpw\r\nCookie: a=b\r\n\
             Connection: close\r\n\r\n"
        );
        // An HTTP/1.0 client may have sent no Host: its version goes too.
        let old = crate::head::parsed("GET /old HTTP/1.0\r\n\r\n");
        assert_eq!(
            &refresh_request(&old)[..],
            &b"GET /old HTTP/1.0\r\nConnection: close\r\n\r\n"[..]
        );
    }

    #[test]
    fn the_stream_yields_the_request_once_and_drops_answers() {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .expect("a runtime")
            .block_on(the_stream_yields_the_request_once_and_drops_answers_on())
    }

    async fn the_stream_yields_the_request_once_and_drops_answers_on() {
        let mut io = Background::new(Bytes::from_static(b"GET / HTTP/1.1\r\n\r\n"));
        let (n, buf) = io.read(Vec::with_capacity(8)).await;
        assert_eq!((n.ok(), &buf[..]), (Some(8), &b"GET / HT"[..]));
        let (n, buf) = io.read(Vec::with_capacity(64)).await;
        assert_eq!((n.ok(), &buf[..]), (Some(10), &b"TP/1.1\r\n\r\n"[..]));
        let (n, _) = io.read(Vec::with_capacity(64)).await;
        assert_eq!(n.ok(), Some(0), "then the end of the stream");
        let (n, _) = io.write(b"HTTP/1.1 200 OK\r\n\r\n".to_vec()).await;
        assert_eq!(n.ok(), Some(19));
    }
}
