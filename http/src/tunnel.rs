//! Two-way byte tunnels, for upgraded connections (WebSocket after a 101).
//!
//! Each direction copies on its own, starting with the bytes already read
//! past the 101 exchange. When one side finishes sending, the other side's
//! write half is shut down (half-close), and the tunnel ends when both
//! directions have. A tunnel with no bytes either way for the idle timeout
//! is closed: its pending reads are cancelled through monoio's cancelable
//! reads, which hand back any bytes that arrived in the meantime, so closing
//! an idle tunnel never drops data.

use std::{
    cell::Cell,
    io,
    pin::pin,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use monoio::{
    buf::IoBufMut,
    io::{AsyncWriteRent, CancelHandle, CancelableAsyncReadRent, Canceller, Splitable},
};

use crate::io::write_all;

/// Bytes moved each way by a finished tunnel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelBytes {
    /// From the client to the upstream.
    pub upstream: u64,
    /// From the upstream to the client.
    pub downstream: u64,
}

/// Copies between `client` and `upstream` until both directions end.
///
/// `client_buf` and `upstream_buf` hold bytes already read from each side,
/// which are sent first.
pub(crate) async fn tunnel<C, U>(
    client: C,
    client_buf: BytesMut,
    upstream: U,
    upstream_buf: BytesMut,
    idle: Duration,
    chunk: usize,
) -> TunnelBytes
where
    C: Splitable,
    C::OwnedRead: CancelableAsyncReadRent,
    C::OwnedWrite: AsyncWriteRent,
    U: Splitable,
    U::OwnedRead: CancelableAsyncReadRent,
    U::OwnedWrite: AsyncWriteRent,
{
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let last_activity = Cell::new(Instant::now());
    let canceller = Canceller::new();
    let up = copy_one_way(
        &mut client_read,
        client_buf,
        &mut upstream_write,
        chunk,
        idle,
        &last_activity,
        canceller.handle(),
    );
    let down = copy_one_way(
        &mut upstream_read,
        upstream_buf,
        &mut client_write,
        chunk,
        idle,
        &last_activity,
        canceller.handle(),
    );
    let mut both = pin!(async { monoio::join!(up, down) });
    let (upstream, downstream) = monoio::select! {
        moved = &mut both => moved,
        _ = idle_expiry(&last_activity, idle) => {
            let _ = canceller.cancel();
            both.await
        }
    };
    TunnelBytes { upstream, downstream }
}

/// Completes once nothing has moved for `idle`.
async fn idle_expiry(last_activity: &Cell<Instant>, idle: Duration) {
    loop {
        let quiet = last_activity.get().elapsed();
        if quiet >= idle {
            return;
        }
        monoio::time::sleep(idle - quiet).await;
    }
}

async fn read_cancelable<R: CancelableAsyncReadRent>(
    from: &mut R,
    buf: &mut BytesMut,
    max: usize,
    cancel: CancelHandle,
) -> io::Result<usize> {
    buf.reserve(max);
    let len = buf.len();
    let owned = std::mem::take(buf);
    let (result, slice) = from
        .cancelable_read(owned.slice_mut(len..len + max), cancel)
        .await;
    *buf = slice.into_inner();
    result
}

/// Copies one direction until its source ends. A write that the receiver
/// does not take within `idle` ends the direction (a reader that stopped
/// reading must not pin the tunnel forever).
async fn copy_one_way<R: CancelableAsyncReadRent, W: AsyncWriteRent>(
    from: &mut R,
    mut buf: BytesMut,
    to: &mut W,
    chunk: usize,
    idle: Duration,
    last_activity: &Cell<Instant>,
    cancel: CancelHandle,
) -> u64 {
    let mut moved = 0u64;
    loop {
        if !buf.is_empty() {
            moved += buf.len() as u64;
            match monoio::time::timeout(idle, write_all(to, buf)).await {
                Ok((Ok(()), back)) => {
                    buf = back;
                    buf.clear();
                }
                _ => break,
            }
            last_activity.set(Instant::now());
        }
        let read = read_cancelable(from, &mut buf, chunk, cancel.clone()).await;
        match read {
            Ok(0) => break,
            Ok(_) => last_activity.set(Instant::now()),
            // Cancelled (idle) or failed: flush what did arrive, then stop.
            Err(_) => {
                if !buf.is_empty() {
                    moved += buf.len() as u64;
                    let _ = write_all(to, buf).await;
                }
                break;
            }
        }
    }
    // Half-close: the other side sees our end of stream.
    let _ = to.shutdown().await;
    moved
}
