//! Small I/O steps shared by the engine: appending reads into a `BytesMut`,
//! whole writes, and the timeouts that bound them.

use std::{future::Future, io, time::Duration};

use bytes::BytesMut;
use monoio::{
    buf::{IoBuf, IoBufMut},
    io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt},
};
use ringway_core::{Deadline, Error, ErrorKind, Result, Side};

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

/// Awaits `fut` while `deadline` is armed; fails with `kind` on `side` when
/// the deadline expired first (the worker's sweep then ended the wait).
pub(crate) async fn bounded<T>(
    deadline: Deadline<'_>,
    kind: ErrorKind,
    side: Side,
    context: &'static str,
    fut: impl Future<Output = T>,
) -> Result<T> {
    let out = fut.await;
    if deadline.finish() {
        return Err(Error::new(kind, side, context));
    }
    Ok(out)
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

/// A socket named by its descriptor, for arming an upstream deadline
/// where only the descriptor is at hand; the socket must stay open for as
/// long as the deadline is armed.
pub(crate) struct BorrowedRawFd(pub(crate) std::os::fd::RawFd);

impl std::os::fd::AsRawFd for BorrowedRawFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0
    }
}

/// Maps an I/O error on an established connection to ringway's error.
pub(crate) fn io_error(side: Side, context: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |e| Error::new(ErrorKind::Io, side, context).with_cause(e)
}
