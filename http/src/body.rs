//! Streaming a message body from one connection to another.
//!
//! A body is never collected: it moves through the source's read buffer in
//! pieces that start at the buffer size and grow to four buffers while
//! reads keep filling them. Content-Length input written as is
//! goes out without a copy (the read buffer's bytes are written directly);
//! re-framing (chunked in, or chunked out) builds each outgoing piece in a
//! scratch buffer, so one read becomes one write.
//!
//! Between two TCP sockets, the rest of a large body that leaves as it
//! came (Content-Length, or close-delimited without re-framing) is spliced
//! ([`crate::splice`]): once what was read with the head has been written,
//! its bytes go from socket to socket through a pipe, never copied.

use std::{
    cell::{Cell, RefCell},
    os::fd::RawFd,
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use monoio::io::{AsyncReadRent, AsyncWriteRent};
use ringway_core::{ClientWatch, ConnCtx, Deadline, Error, ErrorKind, Result, Side, Wait};

use crate::{
    chunked::{write_chunk_header, write_last_chunk, ChunkedDecoder, Decoded},
    head::BodyFraming,
    io::{bounded, io_error, read_some, write_all, write_vec, GrowingReads},
    limits::BodyRate,
    splice::{yield_turn, Blocked, End, NonBlocking, OneWay, SpliceSocket},
};

/// The least body left to move for a splice to pay: below it, the system
/// calls to set it up cost more than copying.
const SPLICE_ABOVE: u64 = 16 * 1024;

/// How the body leaves the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OutFraming {
    /// The bytes of the body as they are (Content-Length or close-delimited
    /// output, and dechunked input).
    Raw,
    /// Chunked: every piece becomes a chunk, then a last chunk.
    Chunked,
}

/// Where a body comes from and goes to, and how long each step may wait.
pub(crate) struct BodyPath<'a> {
    /// The client connection, whose deadline bounds each step.
    pub(crate) conn: &'a ConnCtx,
    /// The upstream socket (the source or the destination).
    pub(crate) upstream: RawFd,
    /// The side the body is read from.
    pub(crate) from: Side,
    /// The side it is written to.
    pub(crate) to: Side,
    /// Longest wait for more body bytes.
    pub(crate) read_timeout: Duration,
    /// Longest wait for the receiver to take a piece.
    pub(crate) write_timeout: Duration,
    /// Size of the first read; later ones grow up to four times this while
    /// they fill.
    pub(crate) chunk: usize,
    /// Limit on a chunked body's trailer section.
    pub(crate) max_trailer_bytes: usize,
    /// Whether bodies between two TCP sockets splice.
    pub(crate) splice: bool,
    /// Request bodies: the most bytes a chunked body may carry.
    pub(crate) max_body: Option<u64>,
    /// Request bodies: the least rate they must arrive at.
    pub(crate) min_rate: Option<Cell<RateWindow>>,
    /// Keeps a copy of the body as it goes (a cache filling); a body
    /// copied is not spliced.
    pub(crate) tee: Option<&'a RefCell<BodyTee>>,
}

/// A copy of a body as it is relayed, kept while it is no longer than a
/// limit (the bytes as the receiver sees them, without chunk framing): in
/// memory, or written to a file as it goes (a cache's disk tier: never
/// held whole in memory).
#[derive(Debug)]
pub(crate) struct BodyTee {
    kept: BytesMut,
    file: Option<std::fs::File>,
    len: u64,
    max: u64,
    over: bool,
}

impl BodyTee {
    /// Keeps up to `max` bytes, in `file` if given; `expected`: the body's
    /// length, when known.
    pub(crate) fn new(max: u64, expected: Option<u64>, file: Option<std::fs::File>) -> Self {
        let over = expected.is_some_and(|n| n > max);
        let capacity = if over || file.is_some() {
            0
        } else {
            expected.unwrap_or(0)
        };
        Self {
            kept: BytesMut::with_capacity(capacity as usize),
            file,
            len: 0,
            max,
            over,
        }
    }

    /// Copies `piece`, unless the body grew past the limit or the file
    /// could not take it (then nothing is kept).
    pub(crate) fn push(&mut self, piece: &[u8]) {
        if self.over {
            return;
        }
        if self.len + piece.len() as u64 > self.max {
            self.over = true;
            self.kept = BytesMut::new();
            return;
        }
        self.len += piece.len() as u64;
        match &mut self.file {
            Some(file) => {
                if let Err(e) = std::io::Write::write_all(file, piece) {
                    // A full disk: the response is relayed, not stored.
                    crate::held::note_disk_error(&e);
                    self.over = true;
                }
            }
            None => self.kept.extend_from_slice(piece),
        }
    }

    /// The whole body, unless it was longer than the limit.
    pub(crate) fn finish(self) -> Option<Observed> {
        if self.over {
            return None;
        }
        Some(match self.file {
            Some(file) => Observed::File(file, self.len),
            None => Observed::Memory(self.kept.freeze()),
        })
    }
}

/// The whole body of an observed response.
#[derive(Debug)]
pub enum Observed {
    /// In memory.
    Memory(Bytes),
    /// Written to the file the plan gave, this many bytes of it.
    File(std::fs::File, u64),
}

/// The progress of a request body against its least rate
/// ([`crate::BodyRate`]): time spent waiting for the client's bytes is
/// cut into windows, and each window must bring its share of bytes. Time
/// the upstream takes to accept them is not counted against the client.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateWindow {
    window_ms: u64,
    need: u64,
    waited_ms: u64,
    got: u64,
}

impl RateWindow {
    pub(crate) fn new(rate: BodyRate) -> Self {
        let window_ms = (rate.window.as_millis() as u64).max(1);
        Self {
            window_ms,
            need: rate.bytes_per_second.saturating_mul(window_ms) / 1000,
            waited_ms: 0,
            got: 0,
        }
    }

    /// How long the next wait for the client may last: to the end of the
    /// window while it still lacks bytes, else to the end of the next one.
    fn wait_limit(&self, timeout: Duration) -> Duration {
        let left = self.window_ms.saturating_sub(self.waited_ms);
        let left = if self.got >= self.need {
            left + self.window_ms
        } else {
            left
        };
        timeout.min(Duration::from_millis(left.max(1)))
    }

    /// A wait of `waited_ms` that brought `got` bytes; `false` when it
    /// ended a window short of its share. The bytes count for the window
    /// the wait began in: they may have come at its very end, and the
    /// deadline that bounds the wait fires up to a tick late.
    fn record(&mut self, waited_ms: u64, got: u64) -> bool {
        self.got = self.got.saturating_add(got);
        self.waited_ms += waited_ms;
        if self.waited_ms < self.window_ms {
            return true;
        }
        let ok = self.got >= self.need;
        self.waited_ms = (self.waited_ms - self.window_ms).min(self.window_ms - 1);
        self.got = 0;
        ok
    }
}

impl BodyPath<'_> {
    /// Arms the deadline for reading from (`reading`) or writing to `side`.
    fn arm(&self, side: Side, reading: bool) -> Deadline<'_> {
        let limit = match (&self.min_rate, reading) {
            (Some(rate), true) => rate.get().wait_limit(self.read_timeout),
            (None, true) => self.read_timeout,
            (_, false) => self.write_timeout,
        };
        match side {
            // Waiting for more of a response, whose head the client has:
            // the sweep watches for a client that leaves meanwhile.
            Side::Upstream if reading && self.to == Side::Downstream => {
                self.conn
                    .response_deadline(limit, self.upstream, ClientWatch::ResetOnly)
            }
            Side::Upstream => self.conn.upstream_deadline(Wait::Upstream, limit, self.upstream),
            _ if reading => self.conn.deadline(Wait::ClientRead, limit),
            _ => self.conn.deadline(Wait::ClientWrite, limit),
        }
    }

    /// The read sizes of one body: from the buffer size up to four buffers.
    fn reads(&self) -> GrowingReads {
        GrowingReads::new(self.chunk, 4 * self.chunk)
    }

    /// Reads at most `limit` more body bytes, and at most what `reads` asks.
    async fn fill<R: AsyncReadRent>(
        &self,
        src: &mut R,
        buf: &mut BytesMut,
        reads: &mut GrowingReads,
        limit: u64,
    ) -> Result<usize> {
        let started = self.conn.clock_ms();
        let (side, armed) = (self.from, self.arm(self.from, true));
        let want = limit.min(reads.size() as u64) as usize;
        let got = bounded!(
            armed,
            ErrorKind::ReadTimeout,
            side,
            "timed out waiting for body bytes",
            read_some(src, buf, want),
        )?
        .map_err(io_error(side, "reading a body"))?;
        self.note_wait(self.conn.clock_ms().saturating_sub(started), got as u64)?;
        reads.record(got);
        Ok(got)
    }

    /// Counts a wait for the client of `waited_ms` (on the coarse clock)
    /// that brought `got` bytes against the body's least rate.
    fn note_wait(&self, waited_ms: u64, got: u64) -> Result<()> {
        let Some(rate) = &self.min_rate else {
            return Ok(());
        };
        let mut window = rate.get();
        let ok = window.record(waited_ms, got);
        rate.set(window);
        if ok {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::ReadTimeout,
                Side::Downstream,
                "the request body arrived slower than min_body_rate",
            ))
        }
    }

    async fn send<W: AsyncWriteRent>(&self, dst: &mut W, piece: BytesMut) -> Result<()> {
        let (side, armed) = (self.to, self.arm(self.to, false));
        let (result, _) = bounded!(
            armed,
            ErrorKind::WriteTimeout,
            side,
            "timed out writing a body",
            write_all(dst, piece),
        )?;
        result.map_err(io_error(side, "writing a body"))
    }

    async fn send_scratch<W: AsyncWriteRent>(&self, dst: &mut W, scratch: &mut Vec<u8>) -> Result<()> {
        let (side, armed) = (self.to, self.arm(self.to, false));
        bounded!(
            armed,
            ErrorKind::WriteTimeout,
            side,
            "timed out writing a body",
            write_vec(dst, scratch),
        )?
        .map_err(io_error(side, "writing a body"))
    }

    /// A splice of the rest of a body (`left` bytes at most), when both
    /// ends are TCP sockets, enough is left, and a pipe can be had;
    /// otherwise the body is copied.
    fn splice_way<R: SpliceSocket, W: SpliceSocket>(&self, src: &R, dst: &W, left: u64) -> Option<OneWay> {
        if !self.splice || left < SPLICE_ABOVE || self.tee.is_some() {
            return None;
        }
        OneWay::new(src.splice_fd()?, dst.splice_fd()?, left).ok()
    }

    /// Runs `way` from `src` to `dst`; returns the bytes moved and whether
    /// the source ended first.
    async fn splice<R: SpliceSocket, W: SpliceSocket>(
        &self,
        src: &R,
        dst: &W,
        mut way: OneWay,
    ) -> Result<(u64, bool)> {
        let result = self.drive(src, dst, &mut way).await;
        self.conn.count_spliced(way.moved());
        result.map(|()| (way.moved(), way.source_ended()))
    }

    async fn drive<R: SpliceSocket, W: SpliceSocket>(
        &self,
        src: &R,
        dst: &W,
        way: &mut OneWay,
    ) -> Result<()> {
        let (from, to) = way.ends();
        let prepare = |e| Error::new(ErrorKind::Io, Side::Internal, "preparing a splice").with_cause(e);
        let _src_mode = NonBlocking::set(from).map_err(prepare)?;
        let _dst_mode = NonBlocking::set(to).map_err(prepare)?;
        // A wait's bytes move in the steps after it: it is counted against
        // the least rate at the next wait, with them.
        let mut counted = way.moved();
        let mut last_wait = None;
        loop {
            match way.step() {
                Ok(Blocked::Done) => return Ok(()),
                Ok(Blocked::Turn) => yield_turn().await,
                Ok(Blocked::Read) => {
                    if let Some(waited) = last_wait.take() {
                        self.note_wait(waited, way.moved() - counted)?;
                    }
                    counted = way.moved();
                    let started = self.conn.clock_ms();
                    self.splice_wait(src, false).await?;
                    last_wait = Some(self.conn.clock_ms().saturating_sub(started));
                }
                Ok(Blocked::Write) => self.splice_wait(dst, true).await?,
                Err((End::Source, e)) => return Err(io_error(self.from, "reading a body")(e)),
                Err((End::Destination, e)) => return Err(io_error(self.to, "writing a body")(e)),
            }
        }
    }

    /// Waits, within the step's deadline, until `socket` (the source, or
    /// the destination when `write`) is ready for the splice to go on.
    async fn splice_wait<T: SpliceSocket>(&self, socket: &T, write: bool) -> Result<()> {
        let (side, kind, late, failed) = if write {
            (
                self.to,
                ErrorKind::WriteTimeout,
                "timed out writing a body",
                "writing a body",
            )
        } else {
            (
                self.from,
                ErrorKind::ReadTimeout,
                "timed out waiting for body bytes",
                "reading a body",
            )
        };
        bounded!(
            self.arm(side, !write),
            kind,
            side,
            late,
            socket.splice_ready(write)
        )?
        .map_err(io_error(side, failed))
    }

    /// Copies body bytes into the tee, if there is one.
    fn keep(&self, piece: &[u8]) {
        if let Some(tee) = self.tee {
            tee.borrow_mut().push(piece);
        }
    }

    fn closed_early(&self) -> Error {
        Error::new(
            ErrorKind::ConnectionClosed,
            self.from,
            "connection closed in the middle of a body",
        )
    }

    /// Moves a body framed as `input` from `src` (whose already-read bytes
    /// are at the front of `buf`) to `dst`, framed as `output`.
    ///
    /// Leaves in `buf` whatever followed the body. Returns the number of
    /// body bytes moved.
    pub(crate) async fn relay<R, W>(
        &self,
        src: &mut R,
        buf: &mut BytesMut,
        dst: &mut W,
        scratch: &mut Vec<u8>,
        input: BodyFraming,
        output: OutFraming,
    ) -> Result<u64>
    where
        R: AsyncReadRent + SpliceSocket,
        W: AsyncWriteRent + SpliceSocket,
    {
        match input {
            BodyFraming::None => Ok(0),
            BodyFraming::Length(n) => {
                debug_assert_eq!(output, OutFraming::Raw, "Content-Length bodies are not re-framed");
                self.relay_length(src, buf, dst, n).await
            }
            BodyFraming::UntilClose => self.relay_until_close(src, buf, dst, scratch, output).await,
            BodyFraming::Chunked => self.relay_chunked(src, buf, dst, scratch, output).await,
        }
    }

    /// Content-Length input leaves as it came (the engine never re-frames
    /// it): each read is written straight from the read buffer.
    async fn relay_length<R, W>(
        &self,
        src: &mut R,
        buf: &mut BytesMut,
        dst: &mut W,
        total: u64,
    ) -> Result<u64>
    where
        R: AsyncReadRent + SpliceSocket,
        W: AsyncWriteRent + SpliceSocket,
    {
        let mut remaining = total;
        let mut reads = self.reads();
        while remaining > 0 {
            if buf.is_empty() {
                if let Some(way) = self.splice_way(src, dst, remaining) {
                    let (moved, ended) = self.splice(src, dst, way).await?;
                    if ended && moved < remaining {
                        return Err(self.closed_early());
                    }
                    return Ok(total);
                }
                if self.fill(src, buf, &mut reads, remaining).await? == 0 {
                    return Err(self.closed_early());
                }
            }
            let take = remaining.min(buf.len() as u64) as usize;
            remaining -= take as u64;
            self.keep(&buf[..take]);
            self.send(dst, buf.split_to(take)).await?;
        }
        Ok(total)
    }

    async fn relay_until_close<R, W>(
        &self,
        src: &mut R,
        buf: &mut BytesMut,
        dst: &mut W,
        scratch: &mut Vec<u8>,
        output: OutFraming,
    ) -> Result<u64>
    where
        R: AsyncReadRent + SpliceSocket,
        W: AsyncWriteRent + SpliceSocket,
    {
        let mut moved = 0u64;
        let mut reads = self.reads();
        loop {
            if buf.is_empty() && output == OutFraming::Raw {
                if let Some(way) = self.splice_way(src, dst, u64::MAX) {
                    let (spliced, _) = self.splice(src, dst, way).await?;
                    return Ok(moved + spliced);
                }
            }
            if buf.is_empty() && self.fill(src, buf, &mut reads, u64::MAX).await? == 0 {
                break;
            }
            let piece = buf.split();
            moved += piece.len() as u64;
            self.keep(&piece);
            match output {
                OutFraming::Raw => self.send(dst, piece).await?,
                OutFraming::Chunked => {
                    scratch.clear();
                    write_chunk_header(scratch, piece.len());
                    scratch.extend_from_slice(&piece);
                    scratch.extend_from_slice(b"\r\n");
                    self.send_scratch(dst, scratch).await?;
                }
            }
        }
        if output == OutFraming::Chunked {
            scratch.clear();
            write_last_chunk(scratch, None);
            self.send_scratch(dst, scratch).await?;
        }
        Ok(moved)
    }

    async fn relay_chunked<R: AsyncReadRent, W: AsyncWriteRent>(
        &self,
        src: &mut R,
        buf: &mut BytesMut,
        dst: &mut W,
        scratch: &mut Vec<u8>,
        output: OutFraming,
    ) -> Result<u64> {
        let mut decoder = ChunkedDecoder::new(self.from, self.max_trailer_bytes);
        let mut reads = self.reads();
        let mut moved = 0u64;
        scratch.clear();
        loop {
            match decoder.decode(buf)? {
                Decoded::Data(piece) => {
                    moved += piece.len() as u64;
                    self.keep(&piece);
                    if self.max_body.is_some_and(|max| moved > max) {
                        return Err(Error::new(
                            ErrorKind::BodyTooLarge,
                            Side::Downstream,
                            "the chunked request body grew past max_body",
                        ));
                    }
                    if output == OutFraming::Chunked {
                        write_chunk_header(scratch, piece.len());
                    }
                    scratch.extend_from_slice(&piece);
                    if output == OutFraming::Chunked {
                        scratch.extend_from_slice(b"\r\n");
                    }
                }
                Decoded::NeedMore => {
                    // Send what this read decoded before waiting for more.
                    if !scratch.is_empty() {
                        self.send_scratch(dst, scratch).await?;
                        scratch.clear();
                    }
                    if self.fill(src, buf, &mut reads, u64::MAX).await? == 0 {
                        return Err(self.closed_early());
                    }
                }
                Decoded::End { trailers } => {
                    if output == OutFraming::Chunked {
                        write_last_chunk(scratch, trailers.as_deref());
                    }
                    if !scratch.is_empty() {
                        self.send_scratch(dst, scratch).await?;
                    }
                    return Ok(moved);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window() -> RateWindow {
        // 100 bytes per second over 1 s windows: 100 bytes a window.
        RateWindow::new(BodyRate {
            bytes_per_second: 100,
            window: Duration::from_secs(1),
        })
    }

    #[test]
    fn a_window_with_its_share_of_bytes_passes() {
        let mut w = window();
        assert_eq!(w.wait_limit(Duration::from_secs(60)), Duration::from_secs(1));
        assert!(w.record(400, 60));
        assert_eq!(w.wait_limit(Duration::from_secs(60)), Duration::from_millis(600));
        assert!(w.record(500, 60));
        // 120 bytes in the window: the next wait may run to the end of the next one.
        assert_eq!(w.wait_limit(Duration::from_secs(60)), Duration::from_millis(1100));
        assert!(w.record(300, 0), "the window ended with its 100 bytes");
        assert_eq!(w.wait_limit(Duration::from_secs(60)), Duration::from_millis(800));
    }

    #[test]
    fn bytes_that_end_a_window_count_for_it() {
        // The whole share arrives with the read that ends the window, a
        // little past it (deadlines fire up to a tick late).
        let mut w = window();
        assert!(w.record(1020, 100));
    }

    #[test]
    fn a_window_short_of_bytes_fails() {
        let mut w = window();
        assert!(w.record(900, 50));
        assert!(!w.record(200, 49));
        // A good window, then one with nothing in it.
        let mut w = window();
        assert!(w.record(1000, 500));
        assert!(!w.record(1000, 0));
    }

    #[test]
    fn the_limit_never_exceeds_the_timeout() {
        let w = window();
        assert_eq!(
            w.wait_limit(Duration::from_millis(300)),
            Duration::from_millis(300)
        );
    }
}
