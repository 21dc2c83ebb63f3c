//! Two-way byte tunnels: CONNECT, and upgraded connections (WebSocket after
//! a 101).
//!
//! Each direction moves on its own, starting with the bytes already read
//! past the handshake. When one side finishes sending, the other side's
//! write half is shut down (half-close), and the tunnel ends when both
//! directions have. The tunnel arms one [`Wait::Tunnel`] deadline and
//! pushes it out whenever bytes move; when it expires (nothing either way
//! for the idle timeout, or a receiver that stopped taking bytes) the
//! worker's sweeper shuts both sockets down, which ends both directions.
//!
//! Two implementations: [`splice_tunnel`] between two TCP sockets moves
//! bytes socket → pipe → socket with `splice(2)` (see [`crate::splice`]),
//! never copying them into user space. [`copy_tunnel`] works with any
//! client stream, through buffers.

use std::{os::fd::AsRawFd, time::Duration};

use bytes::BytesMut;
use monoio::{
    io::{AsyncReadRent, AsyncWriteRent, Splitable},
    net::TcpStream,
};

use crate::tls::UpstreamStream;
use ringway_core::{ConnCtx, Wait};

use crate::{
    io::{read_some, write_all, GrowingReads},
    splice::{shutdown_write, yield_turn, Blocked, NonBlocking, OneWay, SpliceSocket},
};

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
pub(crate) async fn copy_tunnel<CR: AsyncReadRent, CW: AsyncWriteRent>(
    client: (CR, CW),
    client_buf: BytesMut,
    upstream: UpstreamStream,
    upstream_buf: BytesMut,
    idle: Duration,
    conn: &ConnCtx,
) -> TunnelBytes {
    let _armed = conn.upstream_deadline(Wait::Tunnel, idle, upstream.as_raw_fd());
    let (mut client_read, mut client_write) = client;
    let (mut upstream_read, mut upstream_write) = upstream.into_halves();
    let up = copy_one_way(&mut client_read, client_buf, &mut upstream_write, conn);
    let down = copy_one_way(&mut upstream_read, upstream_buf, &mut client_write, conn);
    let (upstream, downstream) = monoio::join!(up, down);
    TunnelBytes { upstream, downstream }
}

/// Splices between two TCP sockets until both directions end; copies
/// when no pipes can be had (out of descriptors).
pub(crate) async fn splice_tunnel(
    mut client: TcpStream,
    client_buf: BytesMut,
    mut upstream: TcpStream,
    upstream_buf: BytesMut,
    idle: Duration,
    conn: &ConnCtx,
) -> TunnelBytes {
    let (client_fd, upstream_fd) = (client.as_raw_fd(), upstream.as_raw_fd());
    let ways = OneWay::new(client_fd, upstream_fd, u64::MAX)
        .and_then(|up| Ok((up, OneWay::new(upstream_fd, client_fd, u64::MAX)?)));
    let Ok((up_way, down_way)) = ways else {
        let upstream = UpstreamStream::Plain(upstream);
        return copy_tunnel(
            client.into_split(),
            client_buf,
            upstream,
            upstream_buf,
            idle,
            conn,
        )
        .await;
    };
    let _armed = conn.upstream_deadline(Wait::Tunnel, idle, upstream.as_raw_fd());
    let mut moved = TunnelBytes {
        upstream: client_buf.len() as u64,
        downstream: upstream_buf.len() as u64,
    };
    // Bytes read before the tunnel began go first, as plain writes.
    for (buf, to) in [(client_buf, &mut upstream), (upstream_buf, &mut client)] {
        if !buf.is_empty() && write_all(to, buf).await.0.is_err() {
            return moved;
        }
    }
    let (Ok(_client_mode), Ok(_upstream_mode)) = (NonBlocking::set(client_fd), NonBlocking::set(upstream_fd))
    else {
        return moved;
    };
    let up = splice_one_way(up_way, &client, &upstream, conn);
    let down = splice_one_way(down_way, &upstream, &client, conn);
    let (up, down) = monoio::join!(up, down);
    conn.count_spliced(up + down);
    moved.upstream += up;
    moved.downstream += down;
    moved
}

/// Splices one direction until its source ends or either socket fails
/// (the tunnel's deadline shuts both down), then half-closes.
async fn splice_one_way(mut way: OneWay, from: &TcpStream, to: &TcpStream, conn: &ConnCtx) -> u64 {
    loop {
        let before = way.moved();
        let step = way.step();
        if way.moved() != before {
            // A slow but moving receiver is not idle.
            conn.refresh();
        }
        let ready = match step {
            Ok(Blocked::Read) => from.splice_ready(false).await,
            Ok(Blocked::Write) => to.splice_ready(true).await,
            Ok(Blocked::Turn) => {
                yield_turn().await;
                Ok(())
            }
            Ok(Blocked::Done) | Err(_) => break,
        };
        if ready.is_err() {
            break;
        }
    }
    // Half-close: the other side sees our end of stream.
    shutdown_write(to.as_raw_fd());
    way.moved()
}

/// The smallest and largest read of a copying tunnel direction.
const TUNNEL_CHUNK_MIN: usize = 16 * 1024;
const TUNNEL_CHUNK_MAX: usize = 256 * 1024;

/// Copies one direction until its source ends (or the tunnel's deadline
/// ends both sockets).
///
/// Reads start small and double whenever one fills the buffer, up to
/// 256 KiB: a bulk transfer moves in large pieces (a quarter fewer system
/// calls per byte than 64 KiB pieces, 0.89 of the direct loopback rate
/// against 0.77), while the many quiet tunnels of a forward proxy (idle
/// HTTPS connections) keep small buffers.
async fn copy_one_way<R: AsyncReadRent, W: AsyncWriteRent>(
    from: &mut R,
    mut buf: BytesMut,
    to: &mut W,
    conn: &ConnCtx,
) -> u64 {
    let mut moved = 0u64;
    let mut reads = GrowingReads::new(TUNNEL_CHUNK_MIN, TUNNEL_CHUNK_MAX);
    loop {
        if !buf.is_empty() {
            moved += buf.len() as u64;
            let (result, back) = write_all(to, buf).await;
            buf = back;
            buf.clear();
            if result.is_err() {
                break;
            }
            conn.refresh();
        }
        match read_some(from, &mut buf, reads.size()).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                conn.refresh();
                reads.record(n);
            }
        }
    }
    // Half-close: the other side sees our end of stream.
    let _ = to.shutdown().await;
    moved
}
