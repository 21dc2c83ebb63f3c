//! Test harness for ringway's loopback integration tests.
//!
//! - [`TestProxy`]: a reverse or forward proxy started in-process on
//!   `127.0.0.1:0`, on the driver a test asks for, through the same
//!   factory the binary uses (`ringway::factory`): the setup builds the
//!   validated configuration a file would give.
//! - [`Origin`]: a blocking origin server on `127.0.0.1:0` that records
//!   every connection and request it sees and answers through a closure.
//! - [`client`]: a small blocking HTTP/1.1 client over `std::net`, so tests
//!   can send exact bytes and read exact responses.
//! - [`both_drivers!`]: runs a test function once on io_uring and once on epoll.

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use ringway::{
    config::{Config, Listener, ListenerMode},
    factory::{self, Running},
};
use ringway_balancer::UpstreamGroup;
use ringway_core::dns::DnsConfig;
use ringway_core::{DriverChoice, ListenerSpec, RuntimeConfig, ServerHandle};
use ringway_http::{
    forward::{acl::Acl, auth::BasicAuth, pac::Pac},
    EngineSettings, ForwardSettings, ForwardedStyle, PoolSettings, RouteSpec, RouteTable,
};

pub mod client;

pub use client::{Response, TestClient};

/// Runs each named `fn(DriverChoice)` as two tests, `uring` and `legacy`.
///
/// The io_uring variant is skipped (with a note) on kernels without io_uring.
#[macro_export]
macro_rules! both_drivers {
    ($($name:ident),* $(,)?) => {
        mod uring {
            $(
                #[test]
                fn $name() {
                    if !$crate::uring_available() {
                        eprintln!("io_uring is unavailable here; skipping");
                        return;
                    }
                    super::$name(::ringway_core::DriverChoice::Uring)
                }
            )*
        }
        mod legacy {
            $(
                #[test]
                fn $name() {
                    super::$name(::ringway_core::DriverChoice::Legacy)
                }
            )*
        }
    };
}

/// Whether this kernel lets monoio use io_uring.
///
/// Probed once, on a throwaway thread: on Linux 6.18 closing a ring leaves
/// work that interrupts the creating thread's next blocking socket call
/// with `EINTR`, which a test's client would then see.
pub fn uring_available() -> bool {
    static AVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *AVAILABLE.get_or_init(|| thread::spawn(monoio::utils::detect_uring).join().unwrap_or(false))
}

/// A reverse proxy running in this process.
pub struct TestProxy {
    running: Option<Running>,
    addr: SocketAddr,
}

/// What a [`TestProxy`] is built from.
pub struct ProxySetup {
    /// Driver for the workers.
    pub driver: DriverChoice,
    /// Worker count.
    pub workers: usize,
    /// Routes of the one listener.
    pub routes: Vec<RouteSpec>,
    /// Upstream groups the routes point at.
    pub groups: Vec<Arc<UpstreamGroup>>,
    /// Engine settings of the listener.
    pub settings: EngineSettings,
    /// Upstream pool settings.
    pub pool: PoolSettings,
    /// Connection limit per worker.
    pub max_connections: usize,
    /// Connection limit per client address.
    pub max_connections_per_ip: Option<u32>,
    /// Drain limit.
    pub shutdown_timeout: Duration,
}

impl ProxySetup {
    /// One route `/` to one group of `servers`, one worker, default settings.
    pub fn new(driver: DriverChoice, servers: &[SocketAddr]) -> Self {
        Self {
            driver,
            workers: 1,
            routes: vec![RouteSpec {
                host: None,
                path_prefix: "/".into(),
                upstream: 0,
            }],
            groups: vec![Arc::new(UpstreamGroup::round_robin("app", servers))],
            settings: EngineSettings::default(),
            pool: PoolSettings::default(),
            max_connections: 10_000,
            max_connections_per_ip: None,
            shutdown_timeout: Duration::from_secs(10),
        }
    }

    /// Starts the proxy, through the factory the binary uses.
    pub fn start(self) -> TestProxy {
        let routes = Arc::new(RouteTable::new(&self.routes).expect("valid routes"));
        let listener = Listener {
            spec: ListenerSpec::new("test", "127.0.0.1:0".parse().expect("address")),
            mode: ListenerMode::Reverse {
                route_count: self.routes.len(),
                routes,
                route_caches: self.routes.iter().map(|_| None).collect(),
            },
            settings: self.settings,
            tls: None,
            access_log: None,
            proxy_protocol: None,
        };
        let mut config = test_config(self.driver, listener, Arc::new(silent_dns(&[])));
        config.runtime.workers = self.workers;
        config.max_connections = self.max_connections;
        config.max_connections_per_ip = self.max_connections_per_ip;
        config.shutdown_timeout = self.shutdown_timeout;
        config.upstreams = self.groups;
        config.pool = self.pool;
        launch(&config)
    }
}

/// What a forward [`TestProxy`] is built from.
pub struct ForwardSetup {
    /// Driver for the workers.
    pub driver: DriverChoice,
    /// The listener's ACL.
    pub acl: Acl,
    /// Static DNS answers (name, address; a name may repeat for several
    /// addresses, in order); no DNS server is asked.
    pub hosts: Vec<(&'static str, &'static str)>,
    /// Required authentication.
    pub auth: Option<BasicAuth>,
    /// The PAC file.
    pub pac: Option<Pac>,
    /// Engine settings (forwarded_for style, via, timeouts).
    pub settings: EngineSettings,
}

impl ForwardSetup {
    /// A forward proxy with `acl`, X-Forwarded-For appended.
    pub fn new(driver: DriverChoice, acl: Acl) -> Self {
        Self {
            driver,
            acl,
            hosts: Vec::new(),
            auth: None,
            pac: None,
            settings: EngineSettings {
                proxy_headers: ringway_http::ProxyHeaders {
                    forwarded: ForwardedStyle::AppendFor,
                    via: Some(ringway_http::ViaName::default()),
                },
                ..EngineSettings::default()
            },
        }
    }

    /// Starts the proxy, through the factory the binary uses.
    pub fn start(self) -> TestProxy {
        let settings = Arc::new(ForwardSettings {
            listener: "outbound".into(),
            acl: Arc::new(self.acl),
            auth: self.auth.map(Arc::new),
            pac: self.pac.map(Arc::new),
            deny_page: None,
            policy: Arc::default(),
            cache: None,
        });
        let listener = Listener {
            spec: ListenerSpec::new("outbound", "127.0.0.1:0".parse().expect("address")),
            mode: ListenerMode::Forward { settings },
            settings: self.settings,
            tls: None,
            access_log: None,
            proxy_protocol: None,
        };
        let config = test_config(self.driver, listener, Arc::new(silent_dns(&self.hosts)));
        launch(&config)
    }
}

/// Starts the server `config` describes, as the binary does.
fn launch(config: &Config) -> TestProxy {
    let running = factory::start(config).expect("proxy starts");
    let addr = running.local_addrs()[0];
    TestProxy {
        running: Some(running),
        addr,
    }
}

/// One listener on one worker with the configuration's defaults, a short
/// timer tick (so that tests of timeouts stay quick) and no upstream.
fn test_config(driver: DriverChoice, listener: Listener, dns: Arc<DnsConfig>) -> Config {
    Config {
        runtime: RuntimeConfig {
            workers: 1,
            driver,
            pin_cpus: false,
            ring_entries: 256,
            blocking_threads: 1,
        },
        max_connections: 10_000,
        max_connections_set: true,
        max_connections_per_ip: None,
        shutdown_timeout: Duration::from_secs(10),
        upgrade_socket: None,
        log_level: None,
        listeners: vec![listener],
        upstreams: Vec::new(),
        health_checks: Vec::new(),
        upstream_tls: Vec::new(),
        pool: PoolSettings::default(),
        dns,
        timer_tick: Duration::from_millis(20),
        caches: Vec::new(),
        admin: None,
        source: Arc::from(""),
        warnings: Vec::new(),
    }
}

/// Name resolution that asks no DNS server that could answer: static
/// answers only (name, address; a name may repeat for several addresses,
/// in order).
fn silent_dns(hosts: &[(&str, &str)]) -> DnsConfig {
    let mut dns = DnsConfig::system();
    dns.servers = vec![silent_udp_addr()];
    dns.timeout = Duration::from_millis(200);
    dns.hosts.clear();
    for (name, ip) in hosts {
        let ips = dns.hosts.entry((*name).to_owned()).or_default();
        ips.push(ip.parse().expect("test IP"));
    }
    dns
}

/// A UDP address where a socket stays bound but never answers: a DNS
/// server that is never there (leaked for the test process's lifetime).
fn silent_udp_addr() -> SocketAddr {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = s.local_addr().expect("address");
    std::mem::forget(s);
    addr
}

impl TestProxy {
    /// A proxy in front of `servers` with defaults.
    pub fn reverse(driver: DriverChoice, servers: &[SocketAddr]) -> Self {
        ProxySetup::new(driver, servers).start()
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new client connection to the proxy.
    pub fn client(&self) -> TestClient {
        TestClient::connect(self.addr)
    }

    /// The server's handle (for counters).
    pub fn handle(&self) -> &ServerHandle {
        self.running.as_ref().expect("running")
    }

    /// Starts the graceful shutdown and returns at once.
    pub fn begin_shutdown(&self) {
        self.handle().shutdown();
    }

    /// Shuts down and waits for the workers to finish.
    pub fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
            r.wait();
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shutdown();
            r.wait();
        }
    }
}

/// A request as an origin received it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// Request line method.
    pub method: String,
    /// Request target.
    pub target: String,
    /// Header fields in order.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
    /// Whether the body came chunked.
    pub chunked: bool,
    /// Trailer fields of a chunked body.
    pub trailers: Vec<(String, String)>,
    /// A chunked body exactly as it came on the wire.
    pub wire_body: Vec<u8>,
    /// Which connection (1-based, in accept order) carried it.
    pub connection: usize,
}

impl Seen {
    /// The first value of header `name` (case ignored).
    pub fn header(&self, name: &str) -> Option<&str> {
        client::find_header(&self.headers, name)
    }
}

/// What an origin's responder does with a request.
pub enum Reply {
    /// Send these bytes and keep the connection open.
    Bytes(Vec<u8>),
    /// Send these bytes and close the connection.
    BytesThenClose(Vec<u8>),
    /// Close without answering.
    Close,
    /// Take over the raw stream (for upgrades); the connection ends after.
    Raw(Box<dyn FnOnce(TcpStream) + Send>),
}

impl Reply {
    /// `200 OK` with `body` and a Content-Length.
    pub fn ok(body: impl AsRef<[u8]>) -> Reply {
        let body = body.as_ref();
        let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        out.extend_from_slice(body);
        Reply::Bytes(out)
    }
}

type Responder = dyn Fn(&Seen) -> Reply + Send + Sync;

/// A blocking origin server on `127.0.0.1:0`.
pub struct Origin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
    raw_bytes: Arc<AtomicUsize>,
    closed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    /// A second handle on every open connection, for [`Origin::kill`];
    /// each is dropped as its connection ends, so a close is a close.
    streams: Arc<Mutex<std::collections::HashMap<usize, TcpStream>>>,
}

impl Origin {
    /// An origin that answers every request with `respond`.
    pub fn start(respond: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Origin {
        Origin::start_on("127.0.0.1:0".parse().expect("address"), respond)
    }

    /// Like [`Origin::start`], listening on `addr` (another 127.0.0.0/8
    /// address, a fixed port).
    pub fn start_on(addr: SocketAddr, respond: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Origin {
        let listener = TcpListener::bind(addr).expect("bind origin");
        let addr = listener.local_addr().expect("origin address");
        let origin = Origin {
            addr,
            connections: Arc::default(),
            seen: Arc::default(),
            raw_bytes: Arc::default(),
            closed: Arc::default(),
            stop: Arc::default(),
            streams: Arc::default(),
        };
        let respond: Arc<Responder> = Arc::new(respond);
        let (connections, seen, raw_bytes, closed, stop, streams) = (
            origin.connections.clone(),
            origin.seen.clone(),
            origin.raw_bytes.clone(),
            origin.closed.clone(),
            origin.stop.clone(),
            origin.streams.clone(),
        );
        thread::spawn(move || {
            for stream in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let id = connections.fetch_add(1, Ordering::SeqCst) + 1;
                if let Ok(clone) = stream.try_clone() {
                    streams.lock().expect("lock").insert(id, clone);
                }
                let (respond, seen, raw_bytes, closed, streams) = (
                    respond.clone(),
                    seen.clone(),
                    raw_bytes.clone(),
                    closed.clone(),
                    streams.clone(),
                );
                thread::spawn(move || {
                    serve_origin_conn(stream, id, &*respond, &seen, &raw_bytes);
                    streams.lock().expect("lock").remove(&id);
                    closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        origin
    }

    /// An origin that echoes the request body with `200 OK`.
    pub fn echo() -> Origin {
        Origin::start(|req| Reply::ok(&req.body))
    }

    /// The origin's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("lock").clone()
    }

    /// Connections whose serving ended: the peer closed (or reset) it, the
    /// responder closed it, or a `Reply::Raw` returned.
    pub fn closed(&self) -> usize {
        self.closed.load(Ordering::SeqCst)
    }

    /// Bytes received on all connections, parsed or not.
    pub fn raw_bytes(&self) -> usize {
        self.raw_bytes.load(Ordering::SeqCst)
    }
}

impl Origin {
    /// Stops the origin as a crash would: no more connections are accepted
    /// (the listening socket closes) and every open one is shut down.
    /// Returns once a connection to its address is refused.
    pub fn kill(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        for (_, stream) in self.streams.lock().expect("lock").drain() {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        eventually(Duration::from_secs(10), || TcpStream::connect(self.addr).is_err());
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

fn serve_origin_conn(
    mut stream: TcpStream,
    id: usize,
    respond: &Responder,
    seen: &Mutex<Vec<Seen>>,
    raw_bytes: &AtomicUsize,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
    let mut buf = Vec::new();
    loop {
        let Ok(Some(mut req)) = client::read_request(&mut stream, &mut buf, raw_bytes) else {
            return;
        };
        req.connection = id;
        seen.lock().expect("lock").push(req.clone());
        match respond(&req) {
            Reply::Bytes(b) => {
                if stream.write_all(&b).is_err() {
                    return;
                }
            }
            Reply::BytesThenClose(b) => {
                let _ = stream.write_all(&b);
                return;
            }
            Reply::Close => return,
            Reply::Raw(f) => {
                f(stream);
                return;
            }
        }
    }
}

/// Reads from `stream` until the peer ends it (end of stream); returns the
/// bytes. Panics when `timeout` passes first or the connection is reset: a
/// caller asserting an orderly end must not pass on a stall.
pub fn read_to_close(stream: &mut TcpStream, timeout: Duration) -> Vec<u8> {
    let _ = stream.set_read_timeout(Some(timeout));
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("no orderly end of stream within {timeout:?}: {e}"),
        }
    }
}

/// Waits up to `limit` for `done`, looking every 20 ms; returns whether
/// it came. A liveness bound for things that happen in the background,
/// set far above their expected time, never a measure of speed.
pub fn eventually(limit: Duration, done: impl Fn() -> bool) -> bool {
    let until = std::time::Instant::now() + limit;
    while std::time::Instant::now() < until {
        if done() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    done()
}

/// An address that refuses connections: a socket is bound to it and never
/// listens.
pub fn refused_addr() -> SocketAddr {
    // Bound and never listening, for as long as the process runs: a port
    // merely freed again could be handed to the next bind to port 0 (a
    // proxy's own listener, which then saw its upstream as itself: 508).
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("an IPv4 address");
    std::mem::forget(socket);
    addr
}
