//! Operating the real binary: access logs in each format written to files
//! (exchanges, refusals, tunnels, failed logins, connections over a
//! limit), SIGUSR1 reopening them after logrotate, and signals that must
//! not stop a running proxy.

mod common;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use base64::Engine as _;
use common::{temp_file, Running};
use ringway_tests::{eventually, Origin, Reply, TestClient};

/// A fresh directory for one test's log files.
fn log_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ringway-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("log dir");
    dir
}

/// Waits up to 10 s for `path` to hold `count` lines containing `needle`
/// (the workers hand their lines over about once a second); returns them.
fn lines_with(path: &Path, needle: &str, count: usize) -> Vec<String> {
    let read = || {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    eventually(Duration::from_secs(10), || read().len() >= count);
    let lines = read();
    assert!(
        lines.len() >= count,
        "{count} lines with {needle:?} in {}:\n{}",
        path.display(),
        std::fs::read_to_string(path).unwrap_or_default()
    );
    lines
}

/// The address of the listener named `name`, from its start line.
fn listener_addr(running: &Running, name: &str) -> SocketAddr {
    let line = running.wait_for_log(&format!("listener {name:?}"));
    line.split(" proxy on ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|a| a.trim_end_matches(';').parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"))
}

/// `200 OK` with a text/plain `body`.
fn text(body: &str) -> Reply {
    Reply::Bytes(
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

fn json_field<'a>(line: &'a str, key: &str) -> &'a str {
    let start = line
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} in {line}"))
        + key.len()
        + 3;
    let rest = &line[start..];
    let end = if let Some(quoted) = rest.strip_prefix('"') {
        quoted.find('"').map_or(rest.len(), |i| i + 2)
    } else {
        rest.find([',', '}']).unwrap_or(rest.len())
    };
    rest[..end].trim_matches('"')
}

#[test]
fn reverse_exchanges_are_logged_in_json_and_combined_with_what_operators_look_for() {
    let origin = Origin::start(|_| text("hello"));
    let dir = log_dir("reverse-logs");
    let json = dir.join("json.log");
    let combined = dir.join("combined.log");
    let config = temp_file(
        "reverse-logs.toml",
        &format!(
            "[runtime]\nworkers = 1\npin_cpus = false\n\n\
             [log]\naccess_log = {{ path = \"{}\", format = \"combined\" }}\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
             [[listener]]\nname = \"api\"\nlisten = \"127.0.0.1:0\"\n\
             access_log = {{ path = \"{}\", format = \"json\" }}\n\n\
             [[listener.route]]\npath_prefix = \"/app\"\nupstream = \"app\"\n\n\
             [[listener]]\nname = \"site\"\nlisten = \"127.0.0.1:0\"\n\n\
             [[listener.route]]\nupstream = \"app\"\n",
            combined.display(),
            origin.addr(),
            json.display(),
        ),
    );
    let running = Running::start(&["run", config.to_str().expect("path")]);
    let api = listener_addr(&running, "api");
    let site = listener_addr(&running, "site");

    let mut c = TestClient::connect(api);
    c.send(
        b"POST /app/items HTTP/1.1\r\nHost: api.test\r\nUser-Agent: curl/8.0\r\n\
          Referer: http://from.test/\r\nContent-Length: 5\r\n\r\nhello",
    );
    assert_eq!(c.response().status, 200);
    c.send(b"GET /nowhere HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!(c.response().status, 404);
    let mut bad = TcpStream::connect(api).expect("connect");
    bad.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        .expect("send");
    let mut answer = Vec::new();
    let _ = bad.read_to_end(&mut answer);
    assert!(answer.starts_with(b"HTTP/1.1 400"));

    let post = &lines_with(&json, "\"method\":\"POST\"", 1)[0];
    for (key, value) in [
        ("listener", "api"),
        ("event", "request"),
        ("target", "/app/items"),
        ("host", "api.test"),
        ("status", "200"),
        ("upstream", &origin.addr().to_string()),
        ("user_agent", "curl/8.0"),
        ("referer", "http://from.test/"),
        ("content_type", "text/plain"),
    ] {
        assert_eq!(json_field(post, key), value, "{key} in {post}");
    }
    let head_and_body = "POST /app/items HTTP/1.1\r\nHost: api.test\r\nUser-Agent: curl/8.0\r\n\
                         Referer: http://from.test/\r\nContent-Length: 5\r\n\r\nhello"
        .len();
    assert_eq!(json_field(post, "bytes_in"), head_and_body.to_string(), "{post}");
    let bytes_out: u64 = json_field(post, "bytes_out").parse().expect("bytes_out");
    assert!(bytes_out > 5, "the head and the 5-byte body: {post}");
    assert_eq!(json_field(post, "request_id").len(), 32, "{post}");
    assert!(json_field(post, "upstream_time").parse::<f64>().is_ok(), "{post}");

    let missing = &lines_with(&json, "\"status\":404", 1)[0];
    assert_eq!(json_field(missing, "upstream"), "null", "{missing}");
    let refused = &lines_with(&json, "\"event\":\"refused\"", 1)[0];
    assert_eq!(json_field(refused, "status"), "400", "{refused}");

    // The other listener takes [log]'s default: combined, in its own file.
    let mut c = TestClient::connect(site);
    c.send(b"GET /page?x=1 HTTP/1.1\r\nHost: site.test\r\nUser-Agent: Mozilla/5.0 (X11)\r\n\r\n");
    assert_eq!(c.response().status, 200);
    let line = &lines_with(&combined, "/page", 1)[0];
    assert!(
        line.starts_with("127.0.0.1 - - [")
            && line.ends_with("] \"GET /page?x=1 HTTP/1.1\" 200 5 \"-\" \"Mozilla/5.0 (X11)\""),
        "{line}"
    );
    assert!(!std::fs::read_to_string(&combined)
        .unwrap_or_default()
        .contains("/app/items"));
}

/// A forward proxy's config: static names on loopback, an ACL with a
/// named deny rule, Basic auth for alice, and a listener whose access log
/// is `format` in `log`.
fn forward_config(name: &str, log: &Path, format: &str) -> PathBuf {
    use sha1::Digest;
    let digest = sha1::Sha1::digest(b"wonder");
    let htpasswd = temp_file(
        &format!("{name}.htpasswd"),
        &format!(
            "alice:{{SHA}}{}\n",
            base64::engine::general_purpose::STANDARD.encode(digest)
        ),
    );
    temp_file(
        &format!("{name}.toml"),
        &format!(
            r#"[runtime]
workers = 1
pin_cpus = false

[dns]
hosts = {{ "allowed.test" = "127.0.0.1", "ads.test" = "127.0.0.1" }}
servers = ["127.0.0.1:9"]

[acl.corp]
default = "allow"
private_allow = ["127.0.0.1/32"]
connect_ports = ["1025-65535"]

[[acl.corp.rule]]
name = "ads"
action = "deny"
dst_domain = ["ads.test"]

[auth.staff]
type = "basic"
htpasswd = "{}"

[[listener]]
name = "outbound"
listen = "127.0.0.1:0"
mode = "forward"
acl = "corp"
auth = "staff"
access_log = {{ path = "{}", format = "{format}" }}
"#,
            htpasswd.display(),
            log.display()
        ),
    )
}

fn basic(user: &str, password: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// A forward proxy logging in `format` to a fresh `name` directory, in
/// front of an origin answering "fine": the origin's port, the log file,
/// the proxy, and alice's `Proxy-Authorization` line.
fn logging_forward_proxy(name: &str, format: &str) -> (Origin, PathBuf, Running, String) {
    let origin = Origin::start(|_| text("fine"));
    let log = log_dir(name).join("access.log");
    let config = forward_config(name, &log, format);
    let running = Running::start(&["run", config.to_str().expect("path")]);
    let alice = format!("Proxy-Authorization: Basic {}\r\n", basic("alice", "wonder"));
    (origin, log, running, alice)
}

#[test]
fn forward_decisions_logins_and_tunnels_are_logged_with_user_and_rule() {
    let (origin, log, running, alice) = logging_forward_proxy("forward-logs", "json");
    let port = origin.addr().port();

    let mut c = TestClient::connect(running.addr);
    c.send(
        format!("GET http://allowed.test:{port}/ok HTTP/1.1\r\nHost: allowed.test:{port}\r\n{alice}\r\n")
            .as_bytes(),
    );
    assert_eq!(c.response().status, 200);
    c.send(
        format!("GET http://ads.test:{port}/x HTTP/1.1\r\nHost: ads.test:{port}\r\n{alice}\r\n").as_bytes(),
    );
    assert_eq!(c.response().status, 403);
    let wrong = format!("Proxy-Authorization: Basic {}\r\n", basic("alice", "nope"));
    c.send(
        format!("GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: allowed.test:{port}\r\n{wrong}\r\n")
            .as_bytes(),
    );
    assert_eq!(c.response().status, 407);

    // A tunnel's line comes when it ends, with its bytes both ways.
    let mut tunnel = TcpStream::connect(running.addr).expect("connect");
    tunnel
        .write_all(
            format!("CONNECT allowed.test:{port} HTTP/1.1\r\nHost: allowed.test:{port}\r\n{alice}\r\n")
                .as_bytes(),
        )
        .expect("connect");
    let mut established = [0u8; 39];
    tunnel.read_exact(&mut established).expect("200");
    assert!(
        established.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&established)
    );
    tunnel
        .write_all(b"GET /through HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
        .expect("send through");
    let mut through = Vec::new();
    let _ = tunnel.read_to_end(&mut through);
    assert!(through.ends_with(b"fine"));
    drop(tunnel);

    let allowed = &lines_with(&log, "/ok", 1)[0];
    assert_eq!(json_field(allowed, "user"), "alice", "{allowed}");
    assert_eq!(json_field(allowed, "acl"), "allow", "{allowed}");
    assert_eq!(json_field(allowed, "rule"), "default", "{allowed}");
    let denied = &lines_with(&log, "\"status\":403", 1)[0];
    assert_eq!(json_field(denied, "acl"), "deny", "{denied}");
    assert_eq!(json_field(denied, "rule"), "rule 1 (ads)", "{denied}");
    let login = &lines_with(&log, "\"status\":407", 1)[0];
    assert_eq!(json_field(login, "rule"), "auth", "{login}");
    assert_eq!(json_field(login, "user"), "null", "{login}");
    let tunnel = &lines_with(&log, "\"event\":\"tunnel\"", 1)[0];
    assert_eq!(json_field(tunnel, "method"), "CONNECT", "{tunnel}");
    assert_eq!(json_field(tunnel, "user"), "alice", "{tunnel}");
    let sent: u64 = json_field(tunnel, "bytes_in").parse().expect("bytes_in");
    let received: u64 = json_field(tunnel, "bytes_out").parse().expect("bytes_out");
    assert!(sent > 60 && received as usize >= 39 + through.len(), "{tunnel}");
}

#[test]
fn squid_format_lines_read_as_squid_s_and_sigusr1_reopens_after_logrotate() {
    let (origin, log, running, alice) = logging_forward_proxy("squid-logs", "squid");
    let port = origin.addr().port();
    let dir = log.parent().expect("log dir").to_path_buf();
    let fetch = |path: &str| {
        let mut c = TestClient::connect(running.addr);
        c.send(
            format!(
                "GET http://allowed.test:{port}{path} HTTP/1.1\r\nHost: allowed.test:{port}\r\n{alice}\r\n"
            )
            .as_bytes(),
        );
        assert_eq!(c.response().status, 200);
    };
    fetch("/before");
    let line = &lines_with(&log, "/before", 1)[0];
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(fields.len(), 10, "{line}");
    assert!(
        fields[0].contains('.') && fields[1].parse::<u64>().is_ok(),
        "{line}"
    );
    assert_eq!(fields[2], "127.0.0.1");
    assert_eq!(fields[3], "TCP_MISS/200");
    assert_eq!(
        fields[5..],
        [
            "GET",
            &format!("http://allowed.test:{port}/before"),
            "alice",
            "HIER_DIRECT/127.0.0.1",
            "text/plain"
        ]
    );

    // logrotate: rename, then SIGUSR1; new lines go to a new file.
    let rotated = dir.join("access.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    running.signal("USR1");
    running.wait_for_log("access logs reopened");
    fetch("/after");
    lines_with(&log, "/after", 1);
    assert!(!std::fs::read_to_string(&rotated)
        .unwrap_or_default()
        .contains("/after"));
    // SIGHUP and SIGUSR2 leave it running too.
    running.signal("HUP");
    running.signal("USR2");
    fetch("/still");
    lines_with(&log, "/still", 1);
}

#[test]
fn pipelined_requests_each_log_their_own_bytes() {
    let origin = Origin::start(|_| text("hello"));
    let dir = log_dir("pipelined-logs");
    let log = dir.join("access.log");
    let config = temp_file(
        "pipelined-logs.toml",
        &format!(
            "[runtime]\nworkers = 1\npin_cpus = false\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
             [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\
             access_log = {{ path = \"{}\", format = \"$request_uri $status $request_length $bytes_sent $upstream_addr\" }}\n\n\
             [[listener.route]]\npath_prefix = \"/app\"\nupstream = \"app\"\n",
            origin.addr(),
            log.display()
        ),
    );
    let running = Running::start(&["run", config.to_str().expect("path")]);
    // A POST with a body, a 404 and another 404, in one write.
    let post = "POST /app/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n";
    let miss = "GET /m1 HTTP/1.1\r\nHost: x\r\n\r\n";
    let last = "GET /m2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let mut bytes = post.as_bytes().to_vec();
    bytes.extend_from_slice(&[b'z'; 1000]);
    bytes.extend_from_slice(miss.as_bytes());
    bytes.extend_from_slice(last.as_bytes());
    let answer = exchange(running.addr, &bytes);
    assert_eq!(answer.matches("HTTP/1.1 404").count(), 2, "{answer}");
    let lines = lines_with(&log, "/m", 2);
    let field = |line: &str, i: usize| line.split(' ').nth(i).unwrap_or_default().to_owned();
    let (m1, m2) = (&lines[0], &lines[1]);
    // Each 404 counts its own head and answer, nothing of the POST before.
    assert_eq!(field(m1, 2), miss.len().to_string(), "{m1}");
    assert_eq!(field(m2, 2), last.len().to_string(), "{m2}");
    assert_eq!(field(m1, 4), "-", "no upstream: {m1}");
    let sent: u64 = field(m1, 3).parse().expect("bytes");
    assert!(sent > 0 && sent < 400, "one 404's bytes: {m1}");
    let post_line = &lines_with(&log, "/app/a", 1)[0];
    assert_eq!(
        field(post_line, 2),
        (post.len() + 1000).to_string(),
        "{post_line}"
    );
}

#[test]
fn connections_over_the_limit_are_logged_as_rejected() {
    let origin = Origin::start(|_| Reply::ok("ok"));
    let dir = log_dir("rejected-logs");
    let log = dir.join("access.log");
    let config = temp_file(
        "rejected-logs.toml",
        &format!(
            "[runtime]\nworkers = 1\npin_cpus = false\nmax_connections = 1\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
             [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\
             access_log = {{ path = \"{}\", format = \"$event $remote_addr $status $request\" }}\n\n\
             [[listener.route]]\nupstream = \"app\"\n",
            origin.addr(),
            log.display()
        ),
    );
    let running = Running::start(&["run", config.to_str().expect("path")]);
    let mut first = TestClient::connect(running.addr);
    assert_eq!(first.get("/").status, 200);
    // The second connection finds the worker full and is closed at once.
    let mut second = TcpStream::connect(running.addr).expect("connect");
    second
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let _ = second.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut answer = Vec::new();
    let _ = second.read_to_end(&mut answer);
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
    let line = &lines_with(&log, "rejected", 1)[0];
    assert_eq!(line, "rejected 127.0.0.1 000 -");
    lines_with(&log, "request 127.0.0.1 200 GET / HTTP/1.1", 1);
}

/// `GET path` on the admin listener, with `auth` as the Authorization
/// header if given; returns the status line's code, the head and the body.
fn admin_get(addr: SocketAddr, path: &str, auth: Option<&str>) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).expect("admin connect");
    let auth = auth.map_or_else(String::new, |a| format!("Authorization: {a}\r\n"));
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: admin\r\n{auth}\r\n").as_bytes())
        .expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").expect("a whole response");
    let status = head[9..12].parse().expect("status");
    (status, head.to_owned(), body.to_owned())
}

/// The value of the sample `name{labels}` in a Prometheus text body.
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{series} in\n{metrics}"))
        .parse::<f64>()
        .expect("a number") as u64
}

/// The admin listener's address, from its start line.
fn admin_addr(running: &Running) -> SocketAddr {
    let line = running.wait_for_log("admin on ");
    line.split("admin on ")
        .nth(1)
        .and_then(|rest| rest.split(':').take(2).collect::<Vec<_>>().join(":").parse().ok())
        .unwrap_or_else(|| panic!("no address in {line}"))
}

const TOKEN: &str = "0123456789abcdef-admin";

fn admin_config(name: &str, origin: SocketAddr) -> PathBuf {
    temp_file(
        &format!("{name}.toml"),
        &format!(
            "[runtime]\nworkers = 2\npin_cpus = false\n\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"{TOKEN}\"\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{origin}\", \"127.0.0.1:1\"]\n\
             retries = 1\n\n\
             [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n\
             [[listener.route]]\npath_prefix = \"/api\"\nupstream = \"app\"\n\n\
             [[listener.route]]\npath_prefix = \"/static\"\nupstream = \"app\"\n\n\
             [[listener.rule]]\nwhen = {{ path_prefix = \"/private\" }}\ndeny = 403\n"
        ),
    )
}

#[test]
fn the_admin_listener_serves_metrics_health_and_the_redacted_config_behind_its_token() {
    let origin = Origin::start(|_| text("ok"));
    let config = admin_config("admin-metrics", origin.addr());
    let running = Running::start(&["run", config.to_str().expect("path")]);
    let admin = admin_addr(&running);
    let bearer = format!("Bearer {TOKEN}");

    let (status, _, body) = admin_get(admin, "/healthz", None);
    assert_eq!((status, body.as_str()), (200, "ok\n"), "health needs no token");
    let (status, head, _) = admin_get(admin, "/metrics", None);
    assert_eq!(status, 401);
    assert!(
        head.contains("WWW-Authenticate: Basic realm=\"ringway admin\""),
        "{head}"
    );
    assert_eq!(
        admin_get(admin, "/metrics", Some("Bearer wrong-token-wrong-token")).0,
        401
    );

    // Ten requests on the first route, each on its own connection so both
    // workers serve some; three on the second; two refused by a rule; one
    // that matches no route.
    for _ in 0..10 {
        assert_eq!(TestClient::connect(running.addr).get("/api/x").status, 200);
    }
    for _ in 0..3 {
        assert_eq!(TestClient::connect(running.addr).get("/static/y").status, 200);
    }
    for _ in 0..2 {
        assert_eq!(TestClient::connect(running.addr).get("/private").status, 403);
    }
    assert_eq!(TestClient::connect(running.addr).get("/nothing").status, 404);

    let (status, head, metrics) = admin_get(admin, "/metrics", Some(&bearer));
    assert_eq!(status, 200);
    assert!(head.contains("Content-Type: text/plain; version=0.0.4"), "{head}");
    assert_eq!(
        sample(&metrics, "ringway_requests_total{listener=\"web\",class=\"2xx\"}"),
        13
    );
    assert_eq!(
        sample(&metrics, "ringway_requests_total{listener=\"web\",class=\"4xx\"}"),
        3
    );
    let route = |r: usize, prefix: &str, class: &str| {
        sample(
            &metrics,
            &format!(
                "ringway_route_requests_total{{listener=\"web\",route=\"{r}\",host=\"\",path_prefix=\"{prefix}\",upstream=\"app\",class=\"{class}\"}}"
            ),
        )
    };
    assert_eq!((route(0, "/api", "2xx"), route(1, "/static", "2xx")), (10, 3));
    assert_eq!(
        sample(
            &metrics,
            "ringway_request_duration_seconds_count{listener=\"web\"}"
        ),
        16
    );
    assert_eq!(
        sample(
            &metrics,
            "ringway_request_duration_seconds_bucket{listener=\"web\",le=\"+Inf\"}"
        ),
        16
    );
    // The dead second server: each attempt on it failed and was retried on
    // the live one, so the live one answered all thirteen.
    let origin_series = format!("{{upstream=\"app\",server=\"{}\"}}", origin.addr());
    assert_eq!(
        sample(
            &metrics,
            &format!("ringway_upstream_attempts_total{origin_series}")
        ),
        13
    );
    let dead = "{upstream=\"app\",server=\"127.0.0.1:1\"}";
    assert_eq!(
        sample(&metrics, &format!("ringway_upstream_attempts_total{dead}")),
        sample(&metrics, &format!("ringway_upstream_failures_total{dead}"))
    );
    assert_eq!(
        sample(&metrics, &format!("ringway_upstream_in_flight{origin_series}")),
        0
    );
    let accepted: u64 = (0..2)
        .map(|w| {
            sample(
                &metrics,
                &format!("ringway_connections_accepted_total{{worker=\"{w}\"}}"),
            )
        })
        .sum();
    assert_eq!(accepted, 16);
    assert!(sample(&metrics, "ringway_received_bytes_total{listener=\"web\"}") > 16 * 30);

    let (status, _, shown) = admin_get(admin, "/config", Some(&bearer));
    assert_eq!(status, 200);
    assert!(
        shown.contains("token = \"<redacted>\"") && !shown.contains(TOKEN),
        "{shown}"
    );
    assert!(shown.contains("path_prefix = \"/static\""), "{shown}");
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("ops:{TOKEN}"))
    );
    assert_eq!(admin_get(admin, "/status.json", Some(&basic)).0, 200);
    assert_eq!(admin_get(admin, "/nope", Some(&bearer)).0, 404);
}

/// Chromium, headless, as installed by `.ci/run` (Debian's `chromium`).
fn chromium() -> Option<&'static str> {
    let found = ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|name| {
            std::process::Command::new(name)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
    if found.is_none() {
        assert!(
            std::env::var_os("RINGWAY_REQUIRE_CHROMIUM").is_none(),
            "chromium is required (apt-get install chromium)"
        );
        eprintln!("skipped: no chromium (apt-get install chromium)");
    }
    found
}

#[test]
fn the_status_page_renders_its_tables_and_chart_with_live_numbers_in_chromium() {
    let Some(browser) = chromium() else { return };
    let origin = Origin::start(|_| text("ok"));
    let config = admin_config("admin-status", origin.addr());
    let running = Running::start(&["run", config.to_str().expect("path")]);
    let admin = admin_addr(&running);
    for _ in 0..7 {
        assert_eq!(TestClient::connect(running.addr).get("/api/seen").status, 200);
    }
    // Traffic keeps flowing while the page samples it.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = std::sync::Arc::clone(&stop);
        let addr = running.addr;
        std::thread::spawn(move || {
            let mut c = TestClient::connect(addr);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                assert_eq!(c.get("/static/busy").status, 200);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    let profile = log_dir("chromium-profile");
    let url = format!("http://ops:{TOKEN}@{admin}/status");
    let out = std::process::Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            &format!("--user-data-dir={}", profile.display()),
            "--virtual-time-budget=6000",
            "--dump-dom",
            &url,
        ])
        .output()
        .expect("chromium runs");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().expect("load");
    let dom = String::from_utf8_lossy(&out.stdout);
    let attr = |name: &str| -> u64 {
        let start = dom
            .find(&format!("{name}=\""))
            .unwrap_or_else(|| panic!("{name} in\n{dom}"))
            + name.len()
            + 2;
        dom[start..]
            .split('"')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number")
    };
    assert!(attr("data-updates") >= 3, "the page refreshed itself:\n{dom}");
    assert!(attr("data-points") >= 2, "the chart has points:\n{dom}");
    assert!(attr("data-inked") > 100, "the chart is drawn:\n{dom}");
    assert!(
        dom.contains("<td class=\"name\">/api</td><td class=\"name\">app</td><td>7</td>"),
        "top routes:\n{dom}"
    );
    assert!(
        dom.contains(&format!(
            "<td class=\"name\">{}</td><td class=\"name up\">up</td>",
            origin.addr()
        )),
        "the upstream table:\n{dom}"
    );
    assert!(
        dom.contains("<td class=\"name\">web</td><td class=\"name\">reverse</td>"),
        "listeners:\n{dom}"
    );
    assert!(
        dom.matches("<span class=\"bar\"").count() == 2,
        "one row per worker:\n{dom}"
    );
}

#[test]
fn check_warns_of_rules_that_never_match_and_open_proxies_and_strict_fails_on_them() {
    let htpasswd = temp_file("strict.htpasswd", "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n");
    let file = temp_file(
        "strict.toml",
        &format!(
            "[acl.open]\ndefault = \"allow\"\nblock_private = false\n\n\
             [[acl.open.rule]]\naction = \"deny\"\nuser = [\"mallory\"]\n\n\
             [acl.corp]\ndefault = \"deny\"\n\n\
             [[acl.corp.rule]]\naction = \"allow\"\nuser = [\"alice\", \"bob\"]\n\n\
             [[acl.corp.rule]]\naction = \"allow\"\ngroup = [\"ops\"]\n\n\
             [auth.staff]\ntype = \"basic\"\nhtpasswd = \"{}\"\ngroups = {{ admins = [\"alice\"] }}\n\n\
             [[listener]]\nname = \"out\"\nlisten = \"127.0.0.1:0\"\nmode = \"forward\"\nacl = \"open\"\n\n\
             [[listener]]\nname = \"corp\"\nlisten = \"127.0.0.1:0\"\nmode = \"forward\"\nacl = \"corp\"\nauth = \"staff\"\n\n\
             [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\n\n\
             [[listener.route]]\nupstream = \"app\"\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n",
            htpasswd.display()
        ),
    );
    let path = file.to_str().expect("path");
    let out = std::process::Command::new(common::BIN)
        .args(["check", path])
        .output()
        .expect("check");
    assert!(out.status.success(), "warnings alone pass");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("warning"), "warnings go to stderr: {stdout}");
    for expected in [
        ":7: acl.open.rule[0].user: this rule matches by user, but listener \"out\" has no auth",
        ":2: acl.open.default: an open proxy: listener \"out\"",
        ":14: acl.corp.rule[0].user: user \"bob\" is not in the htpasswd file of [auth.staff]",
        ":18: acl.corp.rule[1].group: group \"ops\" is not a group of [auth.staff]",
        ":38: listener[2]: no mode: this listener is a reverse proxy",
    ] {
        assert!(stderr.contains(expected), "{expected} in\n{stderr}");
    }
    assert!(!stderr.contains("\"alice\" is not"), "{stderr}");
    let out = std::process::Command::new(common::BIN)
        .args(["check", "--strict", path])
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("5 warnings, which --strict makes errors"));
}

/// Sends `bytes` on a new connection to `addr` and reads until it closes.
fn exchange(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream.write_all(bytes).expect("send");
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

#[test]
fn proxy_protocol_headers_from_allowed_balancers_name_the_client_everywhere() {
    let origin = Origin::start(|seen| text(seen.header("x-forwarded-for").unwrap_or("none")));
    let dir = log_dir("proxy-protocol");
    let log = dir.join("access.log");
    let config = temp_file(
        "proxy-protocol.toml",
        &format!(
            "[runtime]\nworkers = 1\npin_cpus = false\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
             [[listener]]\nname = \"behind-lb\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\
             proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.1/32\"]\n\
             access_log = {{ path = \"{}\", format = \"$remote_addr $status $request_uri\" }}\n\n\
             [[listener.route]]\nupstream = \"app\"\n\n\
             [[listener.rule]]\nwhen = {{ src = [\"203.0.113.0/24\"] }}\ndeny = 403\n\n\
             [[listener]]\nname = \"other-lb\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\
             proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.2/32\"]\n\n\
             [[listener.route]]\nupstream = \"app\"\n",
            origin.addr(),
            log.display()
        ),
    );
    let running = Running::start(&["run", config.to_str().expect("path")]);
    let behind = listener_addr(&running, "behind-lb");
    let other = listener_addr(&running, "other-lb");
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n");

    // Version 1: the origin and the log see the client the balancer names.
    let v1 = format!("PROXY TCP4 198.51.100.9 127.0.0.1 40001 80\r\n{}", get("/v1"));
    assert!(exchange(behind, v1.as_bytes()).ends_with("198.51.100.9"));
    // Version 2, the bytes a balancer sends, then the request.
    let mut v2 = Vec::new();
    ringway_http::proxy_protocol::encode_v2(
        "198.51.100.10:40002".parse().expect("addr"),
        "127.0.0.1:80".parse().expect("addr"),
        &mut v2,
    );
    v2.extend_from_slice(get("/v2").as_bytes());
    assert!(exchange(behind, &v2).ends_with("198.51.100.10"));
    // Rules match the client it names.
    let denied = format!("PROXY TCP4 203.0.113.5 127.0.0.1 40003 80\r\n{}", get("/denied"));
    assert!(exchange(behind, denied.as_bytes()).starts_with("HTTP/1.1 403"));
    // From an allowed balancer, a connection without the header is closed
    // unanswered.
    assert_eq!(exchange(behind, get("/bare").as_bytes()), "");
    let lines = lines_with(&log, " ", 3);
    assert!(lines.contains(&"198.51.100.9 200 /v1".to_owned()), "{lines:?}");
    assert!(lines.contains(&"198.51.100.10 200 /v2".to_owned()), "{lines:?}");
    assert!(lines.contains(&"203.0.113.5 403 /denied".to_owned()), "{lines:?}");

    // Anyone else is served as who they are; a header from them is not
    // believed (it is a malformed request).
    assert!(exchange(other, get("/direct").as_bytes()).ends_with("127.0.0.1"));
    assert!(exchange(other, v1.as_bytes()).starts_with("HTTP/1.1 400"));
}

#[test]
fn tcp_listeners_pass_the_client_on_to_upstreams_that_want_a_proxy_header() {
    let log = log_dir("proxy-protocol-tcp").join("access.log");
    // An upstream that reads a PROXY v2 header, then answers with the
    // source it names.
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let upstream_addr = upstream.local_addr().expect("addr");
    std::thread::spawn(move || {
        for mut stream in upstream.incoming().flatten() {
            let mut head = [0u8; 28];
            if stream.read_exact(&mut head).is_err() {
                continue;
            }
            let said = ringway_http::proxy_protocol::parse(&head)
                .ok()
                .flatten()
                .and_then(|(h, _)| h.source)
                .map_or_else(|| "no header".to_owned(), |s| s.to_string());
            let _ = stream.write_all(said.as_bytes());
        }
    });
    let config = temp_file(
        "proxy-protocol-tcp.toml",
        &format!(
            "[runtime]\nworkers = 1\npin_cpus = false\n\n\
             [[upstream]]\nname = \"db\"\nservers = [\"{upstream_addr}\"]\nproxy_protocol = true\n\n\
             [[listener]]\nname = \"tcp\"\nlisten = \"127.0.0.1:0\"\nmode = \"tcp\"\nupstream = \"db\"\n\
             proxy_protocol = true\nproxy_protocol_from = [\"127.0.0.1/32\"]\n\
             access_log = {{ path = \"{}\", format = \"json\" }}\n",
            log.display()
        ),
    );
    let running = Running::start(&["run", config.to_str().expect("path")]);
    let answer = exchange(running.addr, b"PROXY TCP4 192.0.2.44 127.0.0.1 41000 5432\r\n");
    assert_eq!(answer, "192.0.2.44:41000");
    // A line per connection: the client the header named, the server, the
    // bytes each way (the header itself is not relayed).
    let line = &lines_with(&log, "\"event\":\"connection\"", 1)[0];
    assert_eq!(json_field(line, "client"), "192.0.2.44:41000", "{line}");
    assert_eq!(json_field(line, "upstream"), upstream_addr.to_string(), "{line}");
    assert_eq!(json_field(line, "bytes_out"), "16", "{line}");
    assert_eq!(json_field(line, "bytes_in"), "0", "{line}");
}

#[test]
fn proxy_protocol_without_its_sources_is_a_config_error() {
    let file = temp_file(
        "proxy-protocol-open.toml",
        "[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n\n\
         [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\nproxy_protocol = true\n\n\
         [[listener.route]]\nupstream = \"app\"\n",
    );
    let out = std::process::Command::new(common::BIN)
        .args(["check", file.to_str().expect("path")])
        .output()
        .expect("check");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("listener[0].proxy_protocol_from: proxy_protocol = true needs the balancers"),
        "{stderr}"
    );
}

#[test]
fn reverse_upstreams_that_want_a_proxy_header_get_one_on_every_connection() {
    let upstream = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let upstream_addr = upstream.local_addr().expect("addr");
    let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    std::thread::spawn(move || {
        for stream in upstream.incoming().flatten() {
            counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut stream = std::io::BufReader::new(stream);
            let mut head = [0u8; 28];
            if stream.read_exact(&mut head).is_err() {
                continue;
            }
            let said = ringway_http::proxy_protocol::parse(&head)
                .ok()
                .flatten()
                .and_then(|(h, _)| h.source)
                .map_or_else(|| "no header".to_owned(), |s| s.ip().to_string());
            let mut line = String::new();
            while std::io::BufRead::read_line(&mut stream, &mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{said}", said.len());
            let _ = stream.get_mut().write_all(reply.as_bytes());
        }
    });
    let config = temp_file(
        "proxy-protocol-http.toml",
        &format!(
            "[runtime]\nworkers = 1\npin_cpus = false\n\n\
             [[upstream]]\nname = \"app\"\nservers = [\"{upstream_addr}\"]\nproxy_protocol = true\n\n\
             [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\n\
             [[listener.route]]\nupstream = \"app\"\n"
        ),
    );
    let running = Running::start(&["run", config.to_str().expect("path")]);
    let mut c = TestClient::connect(running.addr);
    for _ in 0..3 {
        let response = c.get("/");
        assert_eq!((response.status, response.text()), (200, "127.0.0.1".to_owned()));
    }
    // One client per upstream connection: none was reused for the next
    // request, whose header could have named another client.
    assert_eq!(connections.load(std::sync::atomic::Ordering::Relaxed), 3);
}
