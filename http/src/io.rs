//! Small I/O steps shared by the engine: appending reads into a `BytesMut`,
//! read sizes that grow with a transfer, whole writes, and the timeouts that
//! bound them.

use std::{future::Future, io, time::Duration};

use bytes::BytesMut;
use monoio::{
    buf::{IoBuf, IoBufMut},
    io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt},
};
use ringway_core::{Error, ErrorKind, Result, Side};

/// Reads at most `max` more bytes, appending them to `buf`.
///
/// Returns the number of bytes read; 0 means the peer closed its side.
pub(crate) async fn read_some<R: AsyncReadRent>(
    io: &mut R,
    buf: &mut BytesMut,
    max: usize,
) -> io::Result<usize> {
    buf.reserve(max);
    let len = buf.len();
    let owned = std::mem::take(buf);
    let (result, slice) = io.read(owned.slice_mut(len..len + max)).await;
    *buf = slice.into_inner();
    result
}

/// The size of the next read of a transfer: it doubles each time a read
/// fills it, up to `max`, so a large transfer moves in large pieces while a
/// small one never grows its buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GrowingReads {
    size: usize,
    max: usize,
}

impl GrowingReads {
    pub(crate) fn new(start: usize, max: usize) -> Self {
        Self {
            size: start.max(1),
            max: max.max(start),
        }
    }

    /// How many bytes the next read asks for.
    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// Notes a read that returned `got` bytes.
    pub(crate) fn record(&mut self, got: usize) {
        if got >= self.size && self.size < self.max {
            self.size = (self.size * 2).min(self.max);
        }
    }
}

/// Writes all of `buf`, giving the buffer back whatever happens.
pub(crate) async fn write_all<W: AsyncWriteRent, B: IoBuf>(io: &mut W, buf: B) -> (io::Result<()>, B) {
    let (result, buf) = io.write_all(buf).await;
    (result.map(|_| ()), buf)
}

/// Writes `bytes`, which the caller keeps in `scratch` for reuse.
pub(crate) async fn write_vec<W: AsyncWriteRent>(io: &mut W, scratch: &mut Vec<u8>) -> io::Result<()> {
    let (result, buf) = write_all(io, std::mem::take(scratch)).await;
    *scratch = buf;
    result
}

/// Awaits `fut` while `deadline` (a [`ringway_core::Deadline`]) is armed;
/// fails with `kind` on `side` when the deadline expired first (the
/// worker's sweep then ended the wait), or with [`ErrorKind::ClientGone`]
/// when the sweep ended it because the client left. Evaluates to
/// `Result<output>`.
///
/// A macro, not an async fn: an async fn would hold `fut` once as its
/// argument and again as the future it awaits, and every connection's
/// task is sized by its largest such state.
macro_rules! bounded {
    ($deadline:expr, $kind:expr, $side:expr, $context:expr, $fut:expr $(,)?) => {{
        let armed = $deadline;
        let out = $fut.await;
        match armed.ending() {
            None => Ok(out),
            Some(ringway_core::Ending::Expired) => Err(ringway_core::Error::new($kind, $side, $context)),
            Some(ringway_core::Ending::ClientLeft) => Err($crate::io::client_gone()),
        }
    }};
}
pub(crate) use bounded;

/// The error of a wait that ended because the client left.
pub(crate) fn client_gone() -> Error {
    Error::new(
        ErrorKind::ClientGone,
        Side::Downstream,
        "the client closed its connection while the upstream's response was awaited",
    )
}

/// Runs `fut` for at most `limit` on a runtime timer (rare waits only, such
/// as connecting); past it, fails with `kind` on `side`.
pub(crate) async fn timed<T>(
    limit: Duration,
    kind: ErrorKind,
    side: Side,
    context: &'static str,
    fut: impl Future<Output = T>,
) -> Result<T> {
    monoio::time::timeout(limit, fut)
        .await
        .map_err(|_| Error::new(kind, side, context))
}

/// Maps an I/O error on an established connection to ringway's error.
pub(crate) fn io_error(side: Side, context: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::new(ErrorKind::Io, side, context).with_cause(e)
}

#[cfg(test)]
mod tests {
    use super::GrowingReads;

    #[test]
    fn reads_double_only_while_they_fill_and_stop_at_the_cap() {
        let mut reads = GrowingReads::new(16, 64);
        reads.record(10);
        assert_eq!(reads.size(), 16, "a short read does not grow");
        reads.record(16);
        assert_eq!(reads.size(), 32);
        reads.record(32);
        reads.record(64);
        reads.record(64);
        assert_eq!(reads.size(), 64, "capped");
    }
}
