//! L4 (TCP) load balancing: a listener whose connections are relayed,
//! byte for byte, to a server of an upstream group, picked by the same
//! balancer (algorithm, health, backups, limits) as HTTP requests.
//!
//! A connection that cannot be made to the picked server goes to another
//! one not tried yet, up to the group's `retries` (when `retry_on` has
//! `connect`, within `total_timeout` and the retry budget); the connect outcome
//! feeds passive health. Once connected, the two sockets are spliced
//! together (or copied, with `splice = false`) until both directions end
//! or the tunnel idles past its timeout. Consistent hashing keys on the
//! client's IP address.

use std::{future::Future, rc::Rc, sync::Arc, time::Duration};

use bytes::BytesMut;
use monoio::net::TcpStream;
use ringway_balancer::{ip_hash, Balancer, Outcome, Tried, UpstreamGroup};
use ringway_core::ConnCtx;

use crate::{
    access_log::{AccessLogger, Entry, Event, LogFacts},
    engine::{ClientInfo, ClientStream, TunnelOptions},
    tunnel::TunnelBytes,
};

/// One TCP listener's balancer on one worker.
pub struct TcpBalancer {
    listener: Rc<str>,
    balancer: Rc<Balancer>,
    connect_timeout: Duration,
    tunnel: TunnelOptions,
    /// The listener's access log on this worker: a line per connection.
    log: Option<AccessLogger>,
}

impl TcpBalancer {
    /// A balancer for listener `listener` over `group` on worker `worker`;
    /// `connect_timeout` applies where the group sets none.
    pub fn new(
        listener: &str,
        group: Arc<UpstreamGroup>,
        worker: usize,
        connect_timeout: Duration,
        tunnel: TunnelOptions,
    ) -> Self {
        let connect_timeout = group.connect_timeout.unwrap_or(connect_timeout);
        Self {
            listener: Rc::from(listener),
            balancer: Rc::new(Balancer::new(group, worker)),
            connect_timeout,
            tunnel,
            log: None,
        }
    }

    /// Writes a line per connection (its server, bytes both ways, time) to
    /// `log`.
    #[must_use]
    pub fn with_access_log(mut self, log: AccessLogger) -> Self {
        self.log = Some(log);
        self
    }

    /// The listener's access log on this worker.
    pub fn access_log(&self) -> Option<&AccessLogger> {
        self.log.as_ref()
    }

    /// Logs a connection from `peer` to `local` closed at once, unanswered,
    /// over the limit named `why`.
    pub fn log_rejected(&self, peer: std::net::SocketAddr, local: std::net::SocketAddr, why: &'static str) {
        let Some(log) = &self.log else { return };
        let client = ClientInfo::new(peer, local);
        log.log(&Entry::rejected(&self.listener, &client, why));
    }

    /// The connection's line: `server` is where it went (none: no server
    /// took it), `moved` what crossed.
    fn log_connection(
        &self,
        info: &ClientInfo,
        server: Option<std::net::SocketAddr>,
        moved: TunnelBytes,
        started: std::time::Instant,
    ) {
        let Some(log) = &self.log else { return };
        log.log(&Entry {
            event: Event::Connection,
            listener: &self.listener,
            client: info,
            req: None,
            // 200: relayed; 503: no server took it (HAProxy's SC status).
            status: if server.is_some() { 200 } else { 503 },
            bytes_in: moved.upstream,
            bytes_out: moved.downstream,
            body_out: moved.downstream,
            upstream: server,
            upstream_time: None,
            total: started.elapsed(),
            content_type: b"",
            facts: LogFacts::default(),
        });
    }

    /// Relays `client` to a server until the connection ends. The future
    /// owns the connection and its context (see [`crate::Engine::serve`]).
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn keeps its arguments beside their moved copies for the whole connection"
    )]
    pub fn serve(
        self: Rc<Self>,
        client: TcpStream,
        info: ClientInfo,
        conn: ConnCtx,
    ) -> impl Future<Output = ()> {
        async move { self.relay(client, info, &conn).await }
    }

    async fn relay(&self, client: TcpStream, info: ClientInfo, conn: &ConnCtx) {
        let began = std::time::Instant::now();
        let group = self.balancer.group();
        let key = ip_hash(info.peer.ip());
        let mut tried = Tried::default();
        self.balancer.record_request(conn.clock_ms());
        let first_ms = conn.clock_ms();
        for attempt in 0..=group.retry.retries {
            let now = conn.clock_ms();
            // Another server only when the group retries failed connects,
            // within its total deadline and retry budget.
            let in_time = group
                .retry
                .total_timeout
                .is_none_or(|limit| now.saturating_sub(first_ms) < limit.as_millis() as u64);
            if attempt > 0 && !(group.retry.on.connect && in_time && self.balancer.try_retry(now)) {
                break;
            }
            let lease = match self.balancer.pick(key, &tried, now) {
                Ok(lease) => lease,
                Err(why) => {
                    tracing::warn!(listener = &*self.listener, upstream = %group.name, "no server can take the connection: {why:?}");
                    return;
                }
            };
            tried.add(lease.peer());
            let addr = lease.addr();
            let started = std::time::Instant::now();
            let connected = monoio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await;
            let upstream = match connected {
                Ok(Ok(upstream)) => upstream,
                Ok(Err(e)) => {
                    tracing::warn!(listener = &*self.listener, upstream = %group.name, server = %addr, "connect failed: {e}");
                    lease.finish(Outcome::Failure, conn.clock_ms());
                    continue;
                }
                Err(_) => {
                    tracing::warn!(listener = &*self.listener, upstream = %group.name, server = %addr, "connect timed out");
                    lease.finish(Outcome::Failure, conn.clock_ms());
                    continue;
                }
            };
            let _ = upstream.set_nodelay(true);
            let mut upstream = upstream;
            if group.proxy_protocol {
                let local = client.local_addr().unwrap_or(info.local);
                let mut header = Vec::with_capacity(52);
                crate::proxy_protocol::encode_v2(info.peer, local, &mut header);
                let (sent, _) = monoio::io::AsyncWriteRentExt::write_all(&mut upstream, header).await;
                if let Err(e) = sent {
                    tracing::warn!(listener = &*self.listener, upstream = %group.name, server = %addr, "sending the PROXY header failed: {e}");
                    lease.finish(Outcome::Failure, conn.clock_ms());
                    continue;
                }
            }
            let latency = started.elapsed();
            // Boxed: a tunnel's state is large.
            let moved = Box::pin(client.tunnel_with(
                BytesMut::new(),
                crate::tls::UpstreamStream::Plain(upstream),
                BytesMut::new(),
                self.tunnel,
                conn,
            ))
            .await;
            lease.finish(Outcome::Success { latency }, conn.clock_ms());
            tracing::debug!(
                listener = &*self.listener,
                client = %info.peer,
                upstream = %group.name,
                server = %addr,
                bytes_up = moved.upstream,
                bytes_down = moved.downstream,
                "tcp connection closed"
            );
            self.log_connection(&info, Some(addr), moved, began);
            return;
        }
        tracing::warn!(listener = &*self.listener, upstream = %group.name, client = %info.peer, "no server accepted the connection");
        self.log_connection(&info, None, TunnelBytes::default(), began);
    }
}
