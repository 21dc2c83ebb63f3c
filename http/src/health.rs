//! Active health checks: one prober per process, on a thread of its own,
//! probing every server of every checked group on its interval and
//! publishing up and down to every worker through the group's
//! [`HealthTable`](ringway_balancer::HealthTable).
//!
//! A probe is a TCP connect, or an HTTP/1.1 `GET` of the check's path
//! (`Connection: close`) whose status must fall in the expected range, each
//! within the check's timeout. For an upstream reached over TLS the GET
//! goes over TLS too, verified as the upstream's requests are (a server
//! whose certificate fails is down). `healthy` passes in a row bring a server
//! back, `unhealthy` failures in a row take it out; every change is logged
//! with the group and the server. Servers start up, as HAProxy's do: a
//! server that is down at start leaves after its first `unhealthy` checks.
//!
//! The same thread follows servers given by host name: each name is looked
//! up again when its answer's TTL runs out (at least a second apart, at
//! most the resolver's `cache_ttl`), with the project's resolver. A server
//! keeps its address while the answer still holds it, else takes the
//! answer's first (IPv4 first); the change is published to every worker
//! through the health table and logged. A failed lookup keeps the address
//! and is tried again after the negative TTL.

use std::{
    io,
    net::SocketAddr,
    ops::RangeInclusive,
    rc::Rc,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use monoio::{
    io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt},
    net::TcpStream,
};
use ringway_balancer::{CheckCounter, ServerSpec, Transition, UpstreamGroup};
use ringway_core::dns::{DnsConfig, Resolver};

/// What a probe does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// A TCP connection is accepted.
    Tcp,
    /// An HTTP `GET` of `path` answers with a status in `expect`.
    Http {
        /// The path asked for.
        path: String,
        /// The Host sent; the server's address when `None`.
        host: Option<String>,
        /// The statuses that pass.
        expect: RangeInclusive<u16>,
    },
}

/// An active health check of one group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// The probe.
    pub probe: Probe,
    /// Time between probes of one server.
    pub interval: Duration,
    /// Time one probe may take.
    pub timeout: Duration,
    /// Passes in a row that bring a server up.
    pub healthy: u32,
    /// Failures in a row that take a server down.
    pub unhealthy: u32,
    /// TLS to the servers, when the upstream speaks TLS (an HTTP probe
    /// then runs over it; a TCP probe stays a TCP connect).
    pub tls: Option<ringway_tls::Connector>,
}

/// The running prober; dropping it stops the probes and joins its thread.
#[derive(Debug)]
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Prober {
    /// Starts probing each group with its check and following the servers
    /// of `groups` given by name (resolved as `dns` says), or returns
    /// `None` when there is nothing to do.
    pub fn start(
        checks: Vec<(Arc<UpstreamGroup>, HealthCheck)>,
        groups: &[Arc<UpstreamGroup>],
        dns: Arc<DnsConfig>,
    ) -> io::Result<Option<Prober>> {
        let named: Vec<(Arc<UpstreamGroup>, usize)> = groups
            .iter()
            .flat_map(|g| {
                (0..g.len())
                    .filter(|&i| g.servers[i].host.is_some())
                    .map(move |i| (Arc::clone(g), i))
            })
            .collect();
        if checks.is_empty() && named.is_empty() {
            return Ok(None);
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("ringway-health".into())
            .spawn(move || {
                let runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
                    .enable_timer()
                    .build();
                let mut runtime = match runtime {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        tracing::error!("health checks cannot run: {e}");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let resolver = Rc::new(Resolver::new(dns));
                    let follow: Vec<_> = named
                        .into_iter()
                        .map(|(group, peer)| {
                            let task = follow_name(group, peer, Rc::clone(&resolver), Arc::clone(&flag));
                            monoio::spawn(task)
                        })
                        .collect();
                    probe_all(checks, Arc::clone(&flag)).await;
                    for task in follow {
                        task.await;
                    }
                });
            })?;
        Ok(Some(Prober {
            stop,
            thread: Some(thread),
        }))
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// How often a sleeping probe looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(50);

async fn probe_all(checks: Vec<(Arc<UpstreamGroup>, HealthCheck)>, stop: Arc<AtomicBool>) {
    let mut tasks = Vec::new();
    for (group, check) in checks {
        let check = Arc::new(check);
        for peer in 0..group.len() {
            // Spread the servers' first probes over the interval.
            let offset = check.interval.mul_f64(peer as f64 / group.len() as f64);
            let task = probe_server(
                Arc::clone(&group),
                peer,
                Arc::clone(&check),
                Arc::clone(&stop),
                offset,
            );
            tasks.push(monoio::spawn(task));
        }
    }
    for task in tasks {
        task.await;
    }
}

/// Sleeps `total`, or less when the prober stops; returns whether it did.
async fn sleep_or_stop(total: Duration, stop: &AtomicBool) -> bool {
    let mut left = total;
    while !left.is_zero() {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        let step = left.min(STOP_CHECK);
        monoio::time::sleep(step).await;
        left -= step;
    }
    stop.load(Ordering::Relaxed)
}

async fn probe_server(
    group: Arc<UpstreamGroup>,
    peer: usize,
    check: Arc<HealthCheck>,
    stop: Arc<AtomicBool>,
    offset: Duration,
) {
    let mut counter = CheckCounter::new(check.healthy, check.unhealthy);
    if sleep_or_stop(offset, &stop).await {
        return;
    }
    loop {
        // The server's address now: a name may have moved it.
        let addr = group.health.addr(peer);
        let probe = probe_once(&check, addr, &group.servers[peer]);
        let result = match monoio::time::timeout(check.timeout, probe).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", check.timeout)),
        };
        let passed = result.is_ok();
        match counter.record(passed) {
            Some(Transition::Down) => {
                group.health.set_up(peer, false);
                tracing::warn!(
                    upstream = %group.name,
                    server = %addr,
                    "server down: {} failed health checks in a row (last: {})",
                    check.unhealthy,
                    result.err().unwrap_or_default()
                );
            }
            Some(Transition::Up) => {
                group.health.set_up(peer, true);
                tracing::info!(
                    upstream = %group.name,
                    server = %addr,
                    "server up: {} passed health checks in a row",
                    check.healthy
                );
            }
            None => {}
        }
        if sleep_or_stop(check.interval, &stop).await {
            return;
        }
    }
}

/// The shortest wait between two lookups of one name.
const MIN_REFRESH: Duration = Duration::from_secs(1);

/// Follows the host name of server `peer`: looks it up again when its
/// answer expires and moves the server when the answer no longer holds
/// its address.
async fn follow_name(group: Arc<UpstreamGroup>, peer: usize, resolver: Rc<Resolver>, stop: Arc<AtomicBool>) {
    let server = &group.servers[peer];
    let Some(host) = server.host.clone() else {
        return;
    };
    let port = server.addr.port();
    let config = resolver.config();
    let most = config.cache_ttl.max(MIN_REFRESH);
    let retry = config.negative_ttl.clamp(MIN_REFRESH, most);
    loop {
        let wait = match resolver.lookup(&host).await {
            Ok(found) => {
                let current = group.health.addr(peer);
                let keep = found.addrs.contains(&current.ip());
                if let (false, Some(&ip)) = (keep, found.addrs.first()) {
                    let moved = SocketAddr::new(ip, port);
                    if group.health.set_addr(peer, moved) {
                        tracing::info!(
                            upstream = %group.name,
                            server = %host,
                            from = %current,
                            to = %moved,
                            "server address changed"
                        );
                    }
                }
                match found.ttl {
                    // A static answer never changes.
                    None => return,
                    Some(ttl) => ttl.clamp(MIN_REFRESH, most),
                }
            }
            Err(e) => {
                tracing::warn!(
                    upstream = %group.name,
                    server = %host,
                    address = %group.health.addr(peer),
                    "looking the server up again failed, its address stays: {e}"
                );
                retry
            }
        };
        if sleep_or_stop(wait, &stop).await {
            return;
        }
    }
}

/// One probe of `server` at `addr`: `Ok` when it passes, else why not.
async fn probe_once(check: &HealthCheck, addr: SocketAddr, server: &ServerSpec) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let Probe::Http { path, host, expect } = &check.probe else {
        return Ok(());
    };
    match &check.tls {
        None => http_probe(stream, path, host.as_deref(), expect, addr, server).await,
        Some(connector) => {
            let name = connector.server_name(server.host.as_deref(), addr.ip());
            let stream = connector
                .connect(stream, name)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            // The name the session is for is the Host a server that checks
            // them against each other expects (unless the check sets one).
            let sni = connector.sni();
            let host = host.as_deref().or(sni.as_deref());
            http_probe(stream, path, host, expect, addr, server).await
        }
    }
}

/// The HTTP part of a probe, over a plain or a TLS stream.
async fn http_probe<S: AsyncReadRent + AsyncWriteRent>(
    mut stream: S,
    path: &str,
    host: Option<&str>,
    expect: &RangeInclusive<u16>,
    addr: SocketAddr,
    server: &ServerSpec,
) -> Result<(), String> {
    // The Host a server given by name expects is its name.
    let host = match (host, &server.host) {
        (Some(host), _) => host.to_owned(),
        (None, Some(_)) => server.identity(),
        (None, None) => addr.to_string(),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: ringway-health-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    );
    let (sent, _) = stream.write_all(request.into_bytes()).await;
    sent.map_err(|e| format!("sending the check: {e}"))?;
    // The status line is all a check reads.
    let mut head = Vec::with_capacity(256);
    loop {
        let buf = Vec::with_capacity(256);
        let (read, buf) = stream.read(buf).await;
        let n = read.map_err(|e| format!("reading the answer: {e}"))?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.contains(&b'\n') || head.len() >= 4096 {
            break;
        }
    }
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let line = String::from_utf8_lossy(&head[..line_end]);
    let status = line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse::<u16>().ok())
        .ok_or_else(|| format!("not an HTTP answer: {:?}", line.trim_end()))?;
    if expect.contains(&status) {
        Ok(())
    } else {
        Err(format!(
            "status {status}, expected {}-{}",
            expect.start(),
            expect.end()
        ))
    }
}
