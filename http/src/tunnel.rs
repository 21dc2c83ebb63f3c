//! Two-way byte tunnels: CONNECT, and upgraded connections (WebSocket after
//! a 101).
//!
//! Each direction moves on its own, starting with the bytes already read
//! past the handshake. When one side finishes sending, the other side's
//! write half is shut down (half-close), and the tunnel ends when both
//! directions have. A tunnel with no bytes either way for the idle timeout
//! is closed.
//!
//! Two implementations: [`splice_tunnel`] between two TCP sockets moves
//! bytes socket → pipe → socket with `splice(2)`, never copying them into
//! user space; its idle timeout shuts both sockets down. It is used with
//! the epoll driver only: io_uring runs every splice on a kernel worker
//! thread (it cannot splice without blocking), so each idle tunnel would
//! hold such a thread. [`copy_tunnel`] works for any client stream
//! (TLS later) through buffers; its pending reads are cancelled through
//! monoio's cancelable reads, which hand back any bytes that arrived in the
//! meantime, so closing an idle tunnel never drops data.

use std::{
    cell::Cell,
    io,
    pin::pin,
    time::{Duration, Instant},
};

use bytes::BytesMut;
use monoio::{
    buf::IoBufMut,
    io::{
        as_fd::{AsReadFd, AsWriteFd},
        splice::{SpliceDestination, SpliceSource},
        AsyncWriteRent, CancelHandle, CancelableAsyncReadRent, Canceller, Splitable,
    },
    net::TcpStream,
};
use ringway_core::socket::ShutdownHandle;

use crate::io::write_all;

/// Bytes moved each way by a finished tunnel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TunnelBytes {
    /// From the client to the upstream.
    pub upstream: u64,
    /// From the upstream to the client.
    pub downstream: u64,
}

/// Copies between `client` and `upstream` through user-space buffers until
/// both directions end.
///
/// `client_buf` and `upstream_buf` hold bytes already read from each side,
/// which are sent first.
pub(crate) async fn copy_tunnel<C>(
    client: C,
    client_buf: BytesMut,
    upstream: TcpStream,
    upstream_buf: BytesMut,
    idle: Duration,
    chunk: usize,
) -> TunnelBytes
where
    C: Splitable,
    C::OwnedRead: CancelableAsyncReadRent,
    C::OwnedWrite: AsyncWriteRent,
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

/// Splices between two TCP sockets until both directions end.
pub(crate) async fn splice_tunnel(
    mut client: TcpStream,
    client_buf: BytesMut,
    mut upstream: TcpStream,
    upstream_buf: BytesMut,
    idle: Duration,
) -> TunnelBytes {
    let (Ok(client_ctl), Ok(upstream_ctl)) = (ShutdownHandle::of(&client), ShutdownHandle::of(&upstream))
    else {
        return copy_tunnel(client, client_buf, upstream, upstream_buf, idle, 1 << 16).await;
    };
    let moved = TunnelBytes {
        upstream: client_buf.len() as u64,
        downstream: upstream_buf.len() as u64,
    };
    // Bytes read before the tunnel began go first, as plain writes.
    for (buf, to) in [(client_buf, &mut upstream), (upstream_buf, &mut client)] {
        if buf.is_empty() {
            continue;
        }
        match monoio::time::timeout(idle, write_all(to, buf)).await {
            Ok((Ok(()), _)) => {}
            _ => return moved,
        }
    }
    let mut moved = moved;
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let last_activity = Cell::new(Instant::now());
    let up = splice_one_way(&mut client_read, &mut upstream_write, &last_activity);
    let down = splice_one_way(&mut upstream_read, &mut client_write, &last_activity);
    let mut both = pin!(async { monoio::join!(up, down) });
    let (up, down) = monoio::select! {
        moved = &mut both => moved,
        _ = idle_expiry(&last_activity, idle) => {
            // Splices cannot be cancelled one by one: ending the sockets
            // makes every pending one return.
            client_ctl.shutdown();
            upstream_ctl.shutdown();
            both.await
        }
    };
    moved.upstream += up;
    moved.downstream += down;
    moved
}

/// Splices one direction (socket → pipe → socket) until its source ends.
async fn splice_one_way<R: AsReadFd, W: AsWriteFd + AsyncWriteRent>(
    from: &mut R,
    to: &mut W,
    last_activity: &Cell<Instant>,
) -> u64 {
    const PIPE_CHUNK: u32 = 1 << 16;
    let Ok((mut pipe_read, mut pipe_write)) = monoio::net::unix::new_pipe() else {
        let _ = to.shutdown().await;
        return 0;
    };
    let mut moved = 0u64;
    'transfer: loop {
        let n = match from.splice_to_pipe(&mut pipe_write, PIPE_CHUNK).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut left = n;
        while left > 0 {
            match to.splice_from_pipe(&mut pipe_read, left).await {
                Ok(0) | Err(_) => break 'transfer,
                Ok(written) => {
                    left -= written;
                    moved += u64::from(written);
                    // A slow but moving receiver is not idle.
                    last_activity.set(Instant::now());
                }
            }
        }
    }
    // Half-close: the other side sees our end of stream.
    let _ = to.shutdown().await;
    moved
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
                    let _ = monoio::time::timeout(idle, write_all(to, buf)).await;
                }
                break;
            }
        }
    }
    // Half-close: the other side sees our end of stream.
    let _ = to.shutdown().await;
    moved
}
