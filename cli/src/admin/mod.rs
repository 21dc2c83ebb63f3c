//! The admin listener (`[admin]`): `/metrics` in Prometheus's text format,
//! `/healthz`, `/status` (an HTML page that refreshes itself from
//! `/status.json`), `/config` (the running file, secrets redacted) and
//! `POST /reload` (read the file again and serve it, as SIGHUP does).
//!
//! It runs on its own thread with blocking sockets, apart from the workers:
//! a scrape reads the workers' counters ([`Registry`]) with relaxed loads
//! and sums them, so the request path never waits on it. With a token set,
//! every path but `/healthz` needs it, as a bearer token or as the password
//! of Basic authentication (which a browser asks for and then sends with
//! the page's own requests).

mod render;

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, Ordering},
        mpsc, Arc, Mutex, PoisonError,
    },
    thread::JoinHandle,
    time::{Duration, SystemTime},
};

use base64::Engine as _;
use bytes::BytesMut;
use ringway_balancer::UpstreamGroup;
use ringway_core::{WorkerInfo, WorkerStats};
use ringway_http::{
    access_log::LogStats,
    metrics::{ListenerMetrics, UpstreamMetrics},
    HttpLimits, RequestHead,
};

use crate::config::{AdminConfig, Config, ListenerMode};

/// One worker's counters, as it registered them when it started.
#[derive(Debug, Clone)]
pub struct WorkerMetrics {
    /// By listener (`None` for a tcp listener).
    pub listeners: Vec<Option<Arc<ListenerMetrics>>>,
    /// Its upstream servers' counters.
    pub upstreams: Arc<UpstreamMetrics>,
    /// Each cache's store and this worker's counts for it.
    pub caches: Vec<(
        Arc<ringway_http::cache::Store>,
        Arc<ringway_http::cache::CacheCounters>,
    )>,
}

/// Every worker's counters.
#[derive(Debug, Default)]
pub struct Registry {
    workers: Mutex<Vec<Option<WorkerMetrics>>>,
}

impl Registry {
    /// Records worker `index`'s counters (on its thread, as it starts).
    pub fn register(&self, index: usize, metrics: WorkerMetrics) {
        let mut workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        if workers.len() <= index {
            workers.resize(index + 1, None);
        }
        workers[index] = Some(metrics);
    }

    /// The workers' counters registered so far.
    fn snapshot(&self) -> Vec<WorkerMetrics> {
        let workers = self.workers.lock().unwrap_or_else(PoisonError::into_inner);
        workers.iter().flatten().cloned().collect()
    }
}

/// `POST /purge?url=URL`: drops what every cache holds for `URL` (each
/// of its variants). 200 when something was dropped, 404 when nothing was
/// held, 400 for a query without an absolute http(s) URL.
fn purge(query: &[u8], workers: &[WorkerMetrics]) -> (u16, String) {
    let url = query
        .split(|&b| b == b'&')
        .find_map(|pair| pair.strip_prefix(b"url="))
        .map(percent_decoded);
    let Some(url) = url else {
        return (400, "POST /purge?url=http://host/path\n".to_owned());
    };
    let scheme_of =
        |prefix: &[u8]| url.len() > prefix.len() && url[..prefix.len()].eq_ignore_ascii_case(prefix);
    let (https, rest) = if scheme_of(b"https://") {
        (true, &url[8..])
    } else if scheme_of(b"http://") {
        (false, &url[7..])
    } else {
        return (
            400,
            "the url must be absolute: http://host/path or https://host/path\n".to_owned(),
        );
    };
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    let (host, target) = rest.split_at(end);
    // A query right after the host is the root's: `h?q` is `/?q`.
    let rooted;
    let target = match target.first() {
        None => &b"/"[..],
        Some(b'?') => {
            rooted = [&b"/"[..], target].concat();
            &rooted[..]
        }
        Some(_) => target,
    };
    if host.is_empty() {
        return (400, "the url names no host\n".to_owned());
    }
    let mut key = Vec::new();
    ringway_http::cache::store::key_into(&mut key, https, host, target);
    let stores = workers.first().map(|w| w.caches.as_slice()).unwrap_or_default();
    let dropped: Vec<&str> = stores
        .iter()
        .filter(|(store, _)| store.remove(&key))
        .map(|(store, _)| store.settings().name.as_str())
        .collect();
    if dropped.is_empty() {
        (404, "not cached\n".to_owned())
    } else {
        (200, format!("purged from {}\n", dropped.join(", ")))
    }
}

/// `text` with its `%XX` escapes decoded (and `+` as a space, as forms
/// send it).
fn percent_decoded(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    let mut i = 0;
    while i < text.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match text[i] {
            b'%' if i + 2 < text.len() => match (hex(text[i + 1]), hex(text[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    out
}

/// A listener as the admin pages name it.
#[derive(Debug, Clone)]
struct ListenerView {
    name: String,
    mode: &'static str,
    addr: SocketAddr,
    /// Each route's labels: host, path prefix, upstream.
    routes: Vec<[String; 3]>,
    /// Each ACL rule's label.
    acl_rules: Vec<String>,
}

/// A reload asked for on the admin listener: the main thread, which owns
/// the server, answers on the channel with the reload's notes or why it
/// failed.
pub type ReloadRequest = mpsc::Sender<Result<Vec<String>, String>>;

/// What the admin thread reads.
struct View {
    registry: Arc<Registry>,
    stats: Vec<Arc<WorkerStats>>,
    workers: Vec<WorkerInfo>,
    started: SystemTime,
    token: Option<Arc<str>>,
    /// What a reload changes.
    served: Mutex<Arc<Served>>,
    /// Where `POST /reload` goes.
    reloads: Mutex<mpsc::Sender<ReloadRequest>>,
}

/// The configuration being served, as the pages show it.
struct Served {
    listeners: Vec<ListenerView>,
    upstreams: Vec<Arc<UpstreamGroup>>,
    logs: Option<LogStats>,
    source: Arc<str>,
    reloads: u64,
}

/// The running admin listener; dropping it stops it.
pub struct AdminServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    view: Arc<View>,
    /// The listening socket, to wake the accept with at the end.
    socket: TcpListener,
}

/// The server's state the admin pages show, besides the configuration.
pub struct Running<'a> {
    /// The workers' counters.
    pub registry: Arc<Registry>,
    /// Each worker's connection counters.
    pub stats: &'a [Arc<WorkerStats>],
    /// The workers as they started.
    pub workers: &'a [WorkerInfo],
    /// Each listener's bound address.
    pub addrs: &'a [SocketAddr],
    /// The log writer's counters, if access logs are kept.
    pub logs: Option<LogStats>,
    /// Where `POST /reload` sends its requests.
    pub reloads: mpsc::Sender<ReloadRequest>,
}

impl AdminServer {
    /// Binds `[admin] listen` and starts answering; fails, naming the
    /// address, when it cannot be bound.
    /// `sharing`: a ringway giving way to this one (a binary upgrade) still
    /// listens there; both take connections until it stops.
    pub fn start(
        admin: &AdminConfig,
        config: &Config,
        running: Running<'_>,
        sharing: bool,
    ) -> io::Result<Self> {
        let listener = bind(admin.listen, sharing).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("[admin] cannot listen on {}: {e}", admin.listen),
            )
        })?;
        let addr = listener.local_addr()?;
        let view = Arc::new(View {
            registry: running.registry,
            stats: running.stats.to_vec(),
            workers: running.workers.to_vec(),
            started: SystemTime::now(),
            token: admin.token.clone(),
            reloads: Mutex::new(running.reloads),
            served: Mutex::new(Arc::new(Served {
                listeners: listener_views(config, running.addrs),
                upstreams: config.upstreams.clone(),
                logs: running.logs,
                source: Arc::clone(&config.source),
                reloads: 0,
            })),
        });
        let served_view = Arc::clone(&view);
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = Arc::clone(&stop);
        let socket = listener.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("ringway-admin".to_owned())
            .spawn(move || {
                // A thread per request, a few at a time: a client that
                // trickles its head cannot hold /healthz for the balancer.
                let busy = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                for stream in listener.incoming() {
                    if stopping.load(Ordering::Relaxed) {
                        return;
                    }
                    match stream {
                        Ok(stream) if busy.load(Ordering::Relaxed) < MAX_ADMIN_REQUESTS => {
                            busy.fetch_add(1, Ordering::Relaxed);
                            let (view, done) = (Arc::clone(&served_view), Arc::clone(&busy));
                            let spawned = std::thread::Builder::new()
                                .name("ringway-admin-req".to_owned())
                                .spawn(move || {
                                    let _ = serve(stream, &view);
                                    done.fetch_sub(1, Ordering::Relaxed);
                                });
                            if spawned.is_err() {
                                busy.fetch_sub(1, Ordering::Relaxed);
                            }
                        }
                        // Too many at once: this one is closed unanswered.
                        Ok(stream) => drop(stream),
                        // Out of descriptors: no spinning on it.
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })?;
        tracing::info!("admin on {addr}: /metrics /healthz /status /config");
        Ok(Self {
            addr,
            stop,
            thread: Some(thread),
            view,
            socket,
        })
    }

    /// Shows `config` from now on (after a reload), served on `addrs`.
    pub fn update(&self, config: &Config, addrs: &[SocketAddr], logs: Option<LogStats>) {
        let mut served = self.view.served.lock().unwrap_or_else(PoisonError::into_inner);
        *served = Arc::new(Served {
            listeners: listener_views(config, addrs),
            upstreams: config.upstreams.clone(),
            logs,
            source: Arc::clone(&config.source),
            reloads: served.reloads + 1,
        });
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for AdminServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wakes the blocking accept: shutting the listening socket down
        // makes it fail at once. (Connecting to the address would not do:
        // after a handover a new ringway listens there too, and the kernel
        // may hand the connection to it.)
        let _ = socket2::SockRef::from(&self.socket).shutdown(std::net::Shutdown::Read);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Binds the admin listener with `SO_REUSEPORT`, so that the process that
/// takes over in a binary upgrade can listen beside this one. Unless
/// `sharing`, a probe without it first makes sure nobody listens there
/// already (an earlier ringway left running would take half the requests).
fn bind(addr: SocketAddr, sharing: bool) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    if !sharing {
        let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        probe.bind(&addr.into())?;
    }
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(128)?;
    Ok(socket.into())
}

fn listener_views(config: &Config, addrs: &[SocketAddr]) -> Vec<ListenerView> {
    config
        .listeners
        .iter()
        .zip(addrs)
        .map(|(l, &addr)| {
            let (mode, routes, acl_rules) = match &l.mode {
                ListenerMode::Reverse {
                    routes, route_count, ..
                } => {
                    let labels = (0..*route_count)
                        .filter_map(|i| routes.spec(i))
                        .map(|spec| {
                            let upstream = config.upstreams.get(spec.upstream).map(|u| u.name.clone());
                            [
                                spec.host.clone().unwrap_or_default(),
                                spec.path_prefix.clone(),
                                upstream.unwrap_or_default(),
                            ]
                        })
                        .collect();
                    ("reverse", labels, Vec::new())
                }
                ListenerMode::Forward { settings } => {
                    let acl = &settings.acl;
                    let rules = (0..acl.rules.len()).map(|i| acl.rule_label(i)).collect();
                    ("forward", Vec::new(), rules)
                }
                ListenerMode::Tcp { .. } => ("tcp", Vec::new(), Vec::new()),
            };
            ListenerView {
                name: l.spec.name.clone(),
                mode,
                addr,
                routes,
                acl_rules,
            }
        })
        .collect()
}

/// The most a request head to the admin listener may take.
const MAX_HEAD: usize = 8 * 1024;

/// Admin requests served at once.
const MAX_ADMIN_REQUESTS: usize = 16;

/// The most a request head may take to arrive, all of it.
const HEAD_DEADLINE: Duration = Duration::from_secs(5);

/// Answers one request, then closes.
fn serve(mut stream: TcpStream, view: &View) -> io::Result<()> {
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = BytesMut::with_capacity(1024);
    let mut req = RequestHead::new();
    let limits = HttpLimits::default();
    let mut chunk = [0u8; 1024];
    let until = std::time::Instant::now() + HEAD_DEADLINE;
    loop {
        // The deadline is for the whole head, not each read.
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        stream.set_read_timeout(Some(left))?;
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        match req.parse(&mut buf, &limits) {
            Ok(true) => break,
            Ok(false) if buf.len() < MAX_HEAD => {}
            _ => return respond(&mut stream, 400, "text/plain", "bad request\n", false, &[]),
        }
    }
    let head = req.method_bytes() == b"HEAD";
    let path = req.path();
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    let post = req.method_bytes() == b"POST";
    let posted = path == b"/reload" || path == b"/purge";
    if posted && !post {
        return respond(
            &mut stream,
            405,
            "text/plain",
            "POST only\n",
            head,
            &[("Allow", "POST")],
        );
    }
    if req.method_bytes() != b"GET" && !head && !(post && posted) {
        return respond(
            &mut stream,
            405,
            "text/plain",
            "only GET\n",
            head,
            &[("Allow", "GET, HEAD")],
        );
    }
    if path != b"/healthz" && !authorized(&req, view.token.as_deref()) {
        return respond(
            &mut stream,
            401,
            "text/plain",
            "the admin listener needs its token: Authorization: Bearer TOKEN (or the token as a Basic password)\n",
            head,
            &[("WWW-Authenticate", "Basic realm=\"ringway admin\", charset=\"UTF-8\"")],
        );
    }
    let served = Arc::clone(&view.served.lock().unwrap_or_else(PoisonError::into_inner));
    match path {
        b"/reload" => {
            let (tx, rx) = mpsc::channel();
            let sent = view
                .reloads
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .send(tx);
            let answer = match sent {
                Ok(()) => rx
                    .recv_timeout(Duration::from_secs(60))
                    .unwrap_or_else(|_| Err("the reload did not finish within 60 s; see the log".to_owned())),
                Err(_) => Err("this ringway cannot reload (it is stopping)".to_owned()),
            };
            match answer {
                Ok(notes) => {
                    let mut body = String::from("reloaded\n");
                    for note in notes {
                        body.push_str(&note);
                        body.push('\n');
                    }
                    respond(&mut stream, 200, "text/plain; charset=utf-8", &body, false, &[])
                }
                Err(e) => respond(
                    &mut stream,
                    422,
                    "text/plain; charset=utf-8",
                    &format!("{e}\n"),
                    false,
                    &[],
                ),
            }
        }
        b"/purge" => {
            let query = req.target().split(|&b| b == b'?').nth(1).unwrap_or_default();
            let (status, body) = purge(query, &view.registry.snapshot());
            respond(
                &mut stream,
                status,
                "text/plain; charset=utf-8",
                &body,
                false,
                &[],
            )
        }
        b"/healthz" => respond(&mut stream, 200, "text/plain", "ok\n", head, &[]),
        b"/metrics" => {
            let body = render::prometheus(view, &served, &view.registry.snapshot());
            respond(
                &mut stream,
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                &body,
                head,
                &[],
            )
        }
        b"/status" | b"/" => respond(
            &mut stream,
            200,
            "text/html; charset=utf-8",
            render::STATUS_PAGE,
            head,
            &[],
        ),
        b"/status.json" => {
            let body = render::status_json(view, &served, &view.registry.snapshot());
            respond(&mut stream, 200, "application/json", &body, head, &[])
        }
        b"/config" => respond(
            &mut stream,
            200,
            "text/plain; charset=utf-8",
            &render::redacted(&served.source),
            head,
            &[],
        ),
        _ => respond(
            &mut stream,
            404,
            "text/plain",
            "not found: try /metrics, /healthz, /status, /config, POST /reload or POST /purge?url=URL\n",
            head,
            &[],
        ),
    }
}

/// Whether `req` carries the token (always, when there is none).
fn authorized(req: &RequestHead, token: Option<&str>) -> bool {
    let Some(token) = token else { return true };
    let Some(value) = req.header("authorization") else {
        return false;
    };
    let value = value.trim_ascii();
    let given = if let Some(bearer) = strip_scheme(value, b"bearer") {
        bearer.to_vec()
    } else if let Some(basic) = strip_scheme(value, b"basic") {
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(basic) else {
            return false;
        };
        match decoded.iter().position(|&b| b == b':') {
            Some(colon) => decoded[colon + 1..].to_vec(),
            None => return false,
        }
    } else {
        return false;
    };
    constant_time_eq(&given, token.as_bytes())
}

fn strip_scheme<'a>(value: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    let (name, rest) = value.split_at_checked(scheme.len())?;
    (name.eq_ignore_ascii_case(scheme) && rest.first() == Some(&b' ')).then(|| rest.trim_ascii())
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn respond(
    stream: &mut TcpStream,
    status: u16,
    content_type: &str,
    body: &str,
    head: bool,
    extra: &[(&str, &str)],
) -> io::Result<()> {
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n",
        ringway_http::reason_phrase(status),
        body.len()
    );
    for (name, value) in extra {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    if !head {
        out.push_str(body);
    }
    stream.write_all(out.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> RequestHead {
        let mut req = RequestHead::new();
        assert!(req
            .parse(&mut BytesMut::from(text.as_bytes()), &HttpLimits::default())
            .unwrap());
        req
    }

    #[test]
    fn the_token_is_taken_as_a_bearer_or_a_basic_password_and_nothing_else() {
        let token = Some("0123456789abcdef");
        assert!(authorized(&head("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), None));
        assert!(!authorized(&head("GET / HTTP/1.1\r\nHost: a\r\n\r\n"), token));
        assert!(authorized(
            &head("GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer 0123456789abcdef\r\n\r\n"),
            token
        ));
        assert!(!authorized(
            &head("GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer 0123456789abcdeF\r\n\r\n"),
            token
        ));
        let basic = base64::engine::general_purpose::STANDARD.encode("admin:0123456789abcdef");
        assert!(authorized(
            &head(&format!(
                "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Basic {basic}\r\n\r\n"
            )),
            token
        ));
        assert!(!authorized(
            &head("GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer0123456789abcdef\r\n\r\n"),
            token
        ));
    }

    #[test]
    fn purge_urls_are_percent_decoded() {
        assert_eq!(
            percent_decoded(b"http%3A%2F%2Fa.test%2Fx%3Fy=1"),
            b"http://a.test/x?y=1"
        );
        assert_eq!(percent_decoded(b"a+b%2"), b"a b%2", "a cut escape stays as it is");
        assert_eq!(percent_decoded(b"%zz%"), b"%zz%");
    }
}
