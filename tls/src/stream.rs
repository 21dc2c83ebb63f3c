//! A TLS session over a monoio stream: [`TlsStream`] implements monoio's
//! ownership-passing `AsyncReadRent` and `AsyncWriteRent` on top of a
//! rustls connection, so the HTTP engine runs over it as over a socket.
//!
//! Ciphertext moves through two buffers the stream owns (one read, one
//! write); plaintext is copied straight between rustls and the caller's
//! buffers. A write returns once its ciphertext is written to the socket,
//! so a completed write means what it means on a plain socket.
//!
//! For tunnels (CONNECT inside an HTTPS proxy, upgrades) the stream splits
//! into a read half and a write half that share the rustls session through
//! an `Rc<RefCell<_>>`; the session is only borrowed between awaits, never
//! across one, so the halves can run at once.

use std::{
    cell::RefCell,
    io::{self, Write},
    ops::DerefMut,
    rc::Rc,
};

use monoio::{
    buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut},
    io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt, OwnedReadHalf, OwnedWriteHalf, Split, Splitable},
    BufResult,
};
use ringway_core::FreeList;
use rustls::{ConnectionCommon, SideData};

use crate::rawbuf;

/// Ciphertext read from the socket at once: one full TLS record (16 KiB of
/// plaintext plus its header and tag).
const READ_SIZE: usize = 16 * 1024 + 256;

/// The write buffer's first size: a small response's records.
const FIRST_WRITE_BUFFER: usize = 4096;

/// A write buffer larger than this is given back after use (64 KiB of
/// plaintext and its records' overhead fit).
const KEEP_WRITE_BUFFER: usize = 66 * 1024;

// Idle connections give their ciphertext buffers back to their thread
// (each worker is one thread) and busy ones take them from here: a
// keep-alive request then costs no allocation for them. The lists are
// core's `FreeList`s, trimmed by `release_unused_buffers`.
thread_local! {
    static FREE_READ: RefCell<FreeList<Vec<u8>>> = const { RefCell::new(FreeList::new()) };
    static FREE_WRITE: RefCell<FreeList<Vec<u8>>> = const { RefCell::new(FreeList::new()) };
}

type FreeKey = std::thread::LocalKey<RefCell<FreeList<Vec<u8>>>>;

/// An empty buffer of at least `capacity`, from the thread's free list.
fn take_buffer(list: &'static FreeKey, capacity: usize) -> Vec<u8> {
    let found = list.try_with(|l| l.borrow_mut().pop()).ok().flatten();
    found
        .filter(|b| b.capacity() >= capacity)
        .unwrap_or_else(|| Vec::with_capacity(capacity))
}

/// Keeps `buf` for another connection of this thread, if it is no larger
/// than `max_capacity`.
fn give_buffer(list: &'static FreeKey, mut buf: Vec<u8>, max_capacity: usize) {
    if buf.capacity() == 0 || buf.capacity() > max_capacity {
        return;
    }
    buf.clear();
    let _ = list.try_with(|l| l.borrow_mut().push(buf));
}

/// Frees the spare ciphertext buffers of this thread that no connection
/// took since the last call (after a burst they would stay); returns
/// whether any were freed. Meant to run about once a second per worker.
pub fn release_unused_buffers() -> bool {
    let trim = |l: &RefCell<FreeList<Vec<u8>>>| l.borrow_mut().trim() > 0;
    let read = FREE_READ.try_with(trim).unwrap_or(false);
    let write = FREE_WRITE.try_with(trim).unwrap_or(false);
    read || write
}

/// Access to a rustls session: owned by a whole stream, shared by halves.
pub(crate) trait Session {
    type Data: SideData;
    fn with<R>(&mut self, f: impl FnOnce(&mut ConnectionCommon<Self::Data>) -> R) -> R;
}

/// A session owned by one stream.
pub(crate) struct Owned<C>(pub(crate) C);

impl<C, D> Session for Owned<C>
where
    C: DerefMut<Target = ConnectionCommon<D>>,
    D: SideData,
{
    type Data = D;

    fn with<R>(&mut self, f: impl FnOnce(&mut ConnectionCommon<D>) -> R) -> R {
        f(&mut self.0)
    }
}

/// A session shared by the two halves of a split stream.
pub(crate) struct Shared<C>(Rc<RefCell<C>>);

impl<C, D> Session for Shared<C>
where
    C: DerefMut<Target = ConnectionCommon<D>>,
    D: SideData,
{
    type Data = D;

    fn with<R>(&mut self, f: impl FnOnce(&mut ConnectionCommon<D>) -> R) -> R {
        // Never borrowed across an await, so never borrowed twice.
        f(&mut self.0.borrow_mut())
    }
}

/// Ciphertext read from the socket and not yet handed to rustls.
#[derive(Default)]
pub(crate) struct ReadSide {
    buf: Vec<u8>,
    pos: usize,
    /// A peer that closes without `close_notify` is an error, not an end
    /// of stream (upstreams: a body delimited by the close must not be
    /// taken as complete when an attacker on the path cut it).
    strict_eof: bool,
}

impl ReadSide {
    /// Whether what the peer sent first looks like a plain HTTP request
    /// (a method's capital letters), not a TLS record.
    fn looks_like_http(&self) -> bool {
        let start = &self.buf[..self.buf.len().min(8)];
        start.len() >= 4 && start.iter().take(3).all(u8::is_ascii_uppercase)
    }

    /// Whether ciphertext is waiting in the buffer.
    pub(crate) fn pending(&self) -> bool {
        self.pos < self.buf.len()
    }

    /// Hands buffered ciphertext to rustls, reading more from `io` first
    /// when none is buffered, and processes it. A peer's end of stream is
    /// handed over too (rustls then reports a clean or unclean close);
    /// `Ok(false)` says it came.
    async fn feed<IO: AsyncReadRent, S: Session>(
        &mut self,
        io: &mut IO,
        session: &mut S,
    ) -> io::Result<bool> {
        if !self.pending() {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            if buf.capacity() < READ_SIZE {
                buf = take_buffer(&FREE_READ, READ_SIZE);
            }
            let (result, buf) = io.read(buf).await;
            self.buf = buf;
            self.pos = 0;
            if result? == 0 {
                session.with(|c| c.read_tls(&mut io::empty()))?;
                session.with(|c| c.process_new_packets()).map_err(tls_error)?;
                return Ok(false);
            }
        }
        let pending = &self.buf[self.pos..];
        let taken = session.with(|c| c.read_tls(&mut &pending[..]))?;
        self.pos += taken;
        session.with(|c| c.process_new_packets()).map_err(tls_error)?;
        Ok(true)
    }

    /// Reads plaintext with `fill`, feeding ciphertext until some is
    /// there. `Ok(0)`: the peer closed (without `close_notify` only when
    /// the side is not strict). What processing makes rustls want to send
    /// (an alert) goes out through `write` when the caller has it, before
    /// the next wait, so that a peer waiting for it is not left waiting.
    async fn read_with<IO, S, W, F>(
        &mut self,
        io: &mut IO,
        session: &mut S,
        mut write: W,
        mut fill: F,
    ) -> io::Result<usize>
    where
        IO: AsyncReadRent,
        S: Session,
        W: SendPending<IO>,
        F: FnMut(&mut rustls::Reader<'_>) -> io::Result<usize>,
    {
        let mut open = true;
        loop {
            match session.with(|c| fill(&mut c.reader())) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !open => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // A client that closed without close_notify: HTTP/1.1's own
                // framing tells a cut request from a complete one.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !self.strict_eof => return Ok(0),
                Err(e) => return Err(e),
            }
            write.send_pending(io, session).await?;
            open = self.feed(io, session).await?;
        }
    }
}

/// Where a read sends what rustls queued while processing (alerts): the
/// whole stream's write side, or nowhere for a read half (its write half
/// sends it with its next write).
pub(crate) trait SendPending<IO> {
    async fn send_pending<S: Session>(&mut self, io: &mut IO, session: &mut S) -> io::Result<()>;
}

impl<IO> SendPending<IO> for () {
    async fn send_pending<S: Session>(&mut self, _: &mut IO, _: &mut S) -> io::Result<()> {
        Ok(())
    }
}

impl<IO: AsyncWriteRent> SendPending<IO> for &mut WriteSide {
    async fn send_pending<S: Session>(&mut self, io: &mut IO, session: &mut S) -> io::Result<()> {
        if session.with(|c| c.wants_write()) {
            // Boxed: rare (alerts), and inline it would size every read's
            // future, which the engine moves into place on each request.
            Box::pin(self.flush(io, session)).await?;
        }
        Ok(())
    }
}

/// Ciphertext on its way to the socket.
#[derive(Default)]
pub(crate) struct WriteSide {
    buf: Vec<u8>,
}

impl WriteSide {
    /// Writes everything rustls has to send.
    pub(crate) async fn flush<IO: AsyncWriteRent, S: Session>(
        &mut self,
        io: &mut IO,
        session: &mut S,
    ) -> io::Result<()> {
        while session.with(|c| c.wants_write()) {
            let mut buf = std::mem::take(&mut self.buf);
            buf.clear();
            if buf.capacity() == 0 {
                // One buffer for a small message, rather than a few
                // allocations as it grows.
                buf = take_buffer(&FREE_WRITE, FIRST_WRITE_BUFFER);
            }
            session.with(|c| c.write_tls(&mut buf))?;
            let (result, mut buf) = io.write_all(buf).await;
            if buf.capacity() > KEEP_WRITE_BUFFER {
                buf = Vec::new();
            }
            self.buf = buf;
            result?;
        }
        Ok(())
    }

    async fn write<IO: AsyncWriteRent, S: Session>(
        &mut self,
        io: &mut IO,
        session: &mut S,
        plain: &[u8],
    ) -> io::Result<usize> {
        let n = session.with(|c| c.writer().write(plain))?;
        self.flush(io, session).await?;
        Ok(n)
    }

    async fn writev<IO: AsyncWriteRent, S: Session, T: IoVecBuf>(
        &mut self,
        io: &mut IO,
        session: &mut S,
        buf: &T,
    ) -> io::Result<usize> {
        let n = rawbuf::with_slices(buf, |slices| session.with(|c| c.writer().write_vectored(slices)))?;
        self.flush(io, session).await?;
        Ok(n)
    }

    async fn shutdown<IO: AsyncWriteRent, S: Session>(
        &mut self,
        io: &mut IO,
        session: &mut S,
    ) -> io::Result<()> {
        session.with(|c| c.send_close_notify());
        self.flush(io, session).await?;
        io.shutdown().await
    }
}

/// A handshake that failed because the client spoke plain HTTP.
#[derive(Debug)]
pub struct PlainHttp(io::Error);

impl std::fmt::Display for PlainHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "a plain HTTP request came to a TLS port ({})", self.0)
    }
}

impl std::error::Error for PlainHttp {}

fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// The methods of `AsyncWriteRent` for a type with `io`, `session` and
/// `write` fields (a whole stream, or its write half).
macro_rules! write_methods {
    () => {
        async fn write<T: IoBuf>(&mut self, buf: T) -> BufResult<usize, T> {
            let result = self
                .write
                .write(&mut self.io, &mut self.session, rawbuf::bytes_of(&buf))
                .await;
            (result, buf)
        }

        async fn writev<T: IoVecBuf>(&mut self, buf: T) -> BufResult<usize, T> {
            let result = self
                .write
                .writev(&mut self.io, &mut self.session, &buf)
                .await;
            (result, buf)
        }

        async fn flush(&mut self) -> io::Result<()> {
            self.write.flush(&mut self.io, &mut self.session).await?;
            self.io.flush().await
        }

        async fn shutdown(&mut self) -> io::Result<()> {
            self.write.shutdown(&mut self.io, &mut self.session).await
        }
    };
}

/// A TLS session over `IO`: `C` is rustls's `ServerConnection` or
/// `ClientConnection`.
pub struct TlsStream<IO, C> {
    io: IO,
    session: Owned<C>,
    read: ReadSide,
    write: WriteSide,
}

impl<IO, C, D> TlsStream<IO, C>
where
    IO: AsyncReadRent + AsyncWriteRent,
    C: DerefMut<Target = ConnectionCommon<D>>,
    D: SideData,
{
    /// A stream for `session` over `io`, before its handshake; with
    /// `strict_eof`, a close without `close_notify` is an error.
    pub(crate) fn new(io: IO, session: C, strict_eof: bool) -> Self {
        Self {
            io,
            session: Owned(session),
            read: ReadSide {
                strict_eof,
                ..ReadSide::default()
            },
            write: WriteSide::default(),
        }
    }

    /// Runs the handshake to its end, then sends what it left to send
    /// (TLS 1.3 session tickets). On failure the alert rustls prepared is
    /// sent, best effort, before the error is returned.
    pub(crate) async fn handshake(&mut self) -> io::Result<()> {
        while self.session.0.is_handshaking() {
            if self.session.0.wants_write() {
                self.write.flush(&mut self.io, &mut self.session).await?;
                continue;
            }
            match self.read.feed(&mut self.io, &mut self.session).await {
                Ok(true) => {}
                Ok(false) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection during the handshake",
                    ))
                }
                Err(e) if self.read.looks_like_http() => {
                    // No alert: a plain HTTP client would print it as text.
                    return Err(io::Error::new(io::ErrorKind::InvalidData, PlainHttp(e)));
                }
                Err(e) => {
                    let _ = self.write.flush(&mut self.io, &mut self.session).await;
                    return Err(e);
                }
            }
        }
        if self.session.0.wants_write() {
            self.write.flush(&mut self.io, &mut self.session).await?;
        }
        Ok(())
    }

    /// Writes `bytes` to the stream under the session, unencrypted (a
    /// plain answer to a plain HTTP request sent to a TLS port).
    pub(crate) async fn write_plain(&mut self, bytes: &'static [u8]) -> io::Result<()> {
        self.io.write_all(bytes).await.0.map(|_| ())
    }

    /// The rustls session.
    pub fn session(&self) -> &C {
        &self.session.0
    }

    /// The stream under the session.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Gives back the ciphertext buffers while the stream is idle (a
    /// keep-alive connection between requests); the next read or write
    /// takes new ones. Buffered input is kept.
    pub fn release_buffers(&mut self) {
        if !self.read.pending() {
            give_buffer(&FREE_READ, std::mem::take(&mut self.read.buf), READ_SIZE);
            self.read.pos = 0;
        }
        give_buffer(&FREE_WRITE, std::mem::take(&mut self.write.buf), READ_SIZE);
    }

    /// Whether plaintext or ciphertext the peer sent is waiting to be read:
    /// a read would return without waiting for the socket.
    pub fn has_buffered_input(&mut self) -> bool {
        use std::io::BufRead;
        // Plaintext, or the end of the session (close_notify, or a close
        // without it): either way a read returns at once.
        self.read.pending()
            || !matches!(self.session.0.reader().fill_buf(), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }
}

impl<IO, C, D> TlsStream<IO, C>
where
    IO: AsyncReadRent + AsyncWriteRent + Split,
    C: DerefMut<Target = ConnectionCommon<D>>,
    D: SideData,
{
    /// Splits the stream into halves that can read and write at once.
    pub fn into_split(self) -> (TlsReadHalf<IO, C>, TlsWriteHalf<IO, C>) {
        let (read_io, write_io) = self.io.into_split();
        let shared = Rc::new(RefCell::new(self.session.0));
        (
            TlsReadHalf {
                io: read_io,
                session: Shared(Rc::clone(&shared)),
                read: self.read,
            },
            TlsWriteHalf {
                io: write_io,
                session: Shared(shared),
                write: self.write,
            },
        )
    }
}

impl<IO, C, D> AsyncReadRent for TlsStream<IO, C>
where
    IO: AsyncReadRent + AsyncWriteRent,
    C: DerefMut<Target = ConnectionCommon<D>>,
    D: SideData,
{
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let write = &mut self.write;
        let fill = |r: &mut rustls::Reader<'_>| rawbuf::fill(&mut buf, r);
        let result = self
            .read
            .read_with(&mut self.io, &mut self.session, write, fill)
            .await;
        (result, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let write = &mut self.write;
        let fill = |r: &mut rustls::Reader<'_>| rawbuf::fill_vectored(&mut buf, r);
        let result = self
            .read
            .read_with(&mut self.io, &mut self.session, write, fill)
            .await;
        (result, buf)
    }
}

impl<IO, C, D> AsyncWriteRent for TlsStream<IO, C>
where
    IO: AsyncReadRent + AsyncWriteRent,
    C: DerefMut<Target = ConnectionCommon<D>>,
    D: SideData,
{
    write_methods!();
}

/// The reading half of a split [`TlsStream`].
pub struct TlsReadHalf<IO, C> {
    io: OwnedReadHalf<IO>,
    session: Shared<C>,
    read: ReadSide,
}

/// The writing half of a split [`TlsStream`].
pub struct TlsWriteHalf<IO: AsyncWriteRent, C> {
    io: OwnedWriteHalf<IO>,
    session: Shared<C>,
    write: WriteSide,
}

impl<IO, C, D> AsyncReadRent for TlsReadHalf<IO, C>
where
    IO: AsyncReadRent + AsyncWriteRent + Split,
    C: DerefMut<Target = ConnectionCommon<D>>,
    D: SideData,
{
    async fn read<T: IoBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        // What reading makes rustls want to send goes out with the write
        // half's next write.
        let fill = |r: &mut rustls::Reader<'_>| rawbuf::fill(&mut buf, r);
        let result = self
            .read
            .read_with(&mut self.io, &mut self.session, (), fill)
            .await;
        (result, buf)
    }

    async fn readv<T: IoVecBufMut>(&mut self, mut buf: T) -> BufResult<usize, T> {
        let fill = |r: &mut rustls::Reader<'_>| rawbuf::fill_vectored(&mut buf, r);
        let result = self
            .read
            .read_with(&mut self.io, &mut self.session, (), fill)
            .await;
        (result, buf)
    }
}

impl<IO, C, D> AsyncWriteRent for TlsWriteHalf<IO, C>
where
    IO: AsyncReadRent + AsyncWriteRent + Split,
    C: DerefMut<Target = ConnectionCommon<D>>,
    D: SideData,
{
    write_methods!();
}
