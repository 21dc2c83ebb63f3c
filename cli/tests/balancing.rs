//! Load balancing through the real wiring: proxies started from TOML by
//! the same factory the binary uses, in front of loopback origins that
//! fail, slow down, come back and answer 503.

use std::{net::SocketAddr, path::Path, time::Duration};

use ringway::{config, factory};
use ringway_tests::{eventually, Origin, Reply, Response, TestClient};

/// An origin that answers `200` with its name as the body.
fn named(name: &'static str) -> Origin {
    Origin::start(move |_| Reply::ok(name))
}

fn named_on(addr: SocketAddr, name: &'static str) -> Origin {
    Origin::start_on(addr, move |_| Reply::ok(name))
}

/// A reverse proxy on an ephemeral port whose one route goes to an
/// upstream `app` described by `upstream` (the keys after its name).
fn proxy(upstream: &str) -> factory::Running {
    let source = format!(
        "[runtime]\nworkers = 1\npin_cpus = false\n\n\
         [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\n\
         [[listener.route]]\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\n{upstream}\n"
    );
    let config = config::parse(Path::new("test.toml"), &source).unwrap_or_else(|e| panic!("{e}\n{source}"));
    factory::start(&config).expect("the proxy starts")
}

fn servers(origins: &[&Origin]) -> String {
    let list: Vec<String> = origins.iter().map(|o| format!("\"{}\"", o.addr())).collect();
    format!("servers = [{}]", list.join(", "))
}

fn get(client: &mut TestClient, path: &str, cookie: Option<&str>) -> Response {
    let cookie = cookie.map(|c| format!("Cookie: {c}\r\n")).unwrap_or_default();
    client.send(format!("GET {path} HTTP/1.1\r\nHost: test\r\n{cookie}\r\n").as_bytes());
    client.response()
}

#[test]
fn a_killed_server_costs_no_client_error_and_a_recovered_one_gets_traffic_again() {
    let a = named("a");
    let b = named("b");
    let c = named("c");
    let b_addr = b.addr();
    let running = proxy(&format!(
        "{}\nhealth = {{ path = \"/healthz\", interval = \"100ms\", timeout = \"500ms\", healthy = 1, unhealthy = 2 }}",
        servers(&[&a, &b, &c])
    ));
    let addr = running.local_addrs()[0];
    let mut failures = Vec::new();
    let mut client = TestClient::connect(addr);
    for i in 0..300 {
        if i == 100 {
            b.kill();
        }
        // A new client connection now and then, as browsers open them.
        if i % 25 == 0 {
            client = TestClient::connect(addr);
        }
        let r = get(&mut client, "/", None);
        if r.status != 200 {
            failures.push((i, r.status));
        }
    }
    assert!(failures.is_empty(), "client-visible errors: {failures:?}");
    // The prober sees it down; then it comes back on the same address.
    drop(b);
    let b = named_on(b_addr, "b");
    // Passive health took it out for its first backoff (10 s by default)
    // while it was down: it is back once that ends and its checks pass, so
    // the wait is longer than the backoff, not equal to it (a race).
    let back = eventually(Duration::from_secs(30), || {
        let mut client = TestClient::connect(addr);
        (0..6).any(|_| get(&mut client, "/", None).text() == "b")
    });
    assert!(back, "the recovered server got no traffic");
    running.shutdown();
    running.wait();
    drop((a, b, c));
}

#[test]
fn backups_serve_only_while_every_primary_is_down() {
    let a = named("a");
    let backup = named("backup");
    let running = proxy(&format!(
        "servers = [\"{}\", {{ addr = \"{}\", backup = true }}]\npassive = {{ failures = 1, backoff = \"30s\" }}",
        a.addr(),
        backup.addr()
    ));
    let addr = running.local_addrs()[0];
    let mut client = TestClient::connect(addr);
    for _ in 0..20 {
        assert_eq!(get(&mut client, "/", None).text(), "a");
    }
    a.kill();
    // The first request finds the primary gone and goes to the backup;
    // the primary is then ejected and the backup serves the rest.
    let mut client = TestClient::connect(addr);
    for _ in 0..20 {
        let r = get(&mut client, "/", None);
        assert_eq!((r.status, r.text().as_str()), (200, "backup"));
    }
    running.shutdown();
    running.wait();
}

#[test]
fn a_sticky_cookie_pins_the_client_and_repins_when_its_server_goes() {
    let a = named("a");
    let b = named("b");
    let running = proxy(&format!(
        "{}\nsticky = {{ cookie = \"rw_srv\", ttl = \"1h\" }}\npassive = {{ failures = 1 }}",
        servers(&[&a, &b])
    ));
    let addr = running.local_addrs()[0];
    let mut client = TestClient::connect(addr);
    let first = get(&mut client, "/", None);
    let set = first.header("set-cookie").expect("a sticky cookie").to_owned();
    assert!(
        set.starts_with("rw_srv=") && set.contains("Max-Age=3600") && set.contains("HttpOnly"),
        "{set}"
    );
    assert!(
        !set.contains("127.0.0.1"),
        "the cookie names the server opaquely: {set}"
    );
    let cookie = set.split(';').next().expect("name=value").to_owned();
    let pinned = first.text();
    // Round robin alone would alternate; the cookie holds the server.
    for _ in 0..10 {
        let r = get(&mut client, "/", Some(&cookie));
        assert_eq!(r.text(), pinned);
        assert!(
            r.header("set-cookie").is_none(),
            "no new cookie while the pin holds"
        );
    }
    let (gone, other) = if pinned == "a" { (&a, "b") } else { (&b, "a") };
    gone.kill();
    let mut client = TestClient::connect(addr);
    let moved = get(&mut client, "/", Some(&cookie));
    assert_eq!((moved.status, moved.text().as_str()), (200, other));
    let repinned = moved.header("set-cookie").expect("a new pin").to_owned();
    assert_ne!(repinned.split(';').next(), Some(cookie.as_str()));
    let cookie = repinned.split(';').next().expect("name=value").to_owned();
    for _ in 0..5 {
        assert_eq!(get(&mut client, "/", Some(&cookie)).text(), other);
    }
    running.shutdown();
    running.wait();
}

#[test]
fn a_503_goes_to_another_server_when_retry_on_says_so() {
    let failing = Origin::start(|_| {
        Reply::Bytes(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy".to_vec())
    });
    let ok = named("ok");
    let running = proxy(&format!(
        "{}\nretries = 1\nretry_on = [\"connect\", \"503\"]\npassive = {{ failures = 0 }}",
        servers(&[&failing, &ok])
    ));
    let addr = running.local_addrs()[0];
    let mut client = TestClient::connect(addr);
    for _ in 0..20 {
        let r = get(&mut client, "/", None);
        assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    }
    assert!(
        !failing.seen().is_empty(),
        "round robin did send to the failing server"
    );
    running.shutdown();
    running.wait();
}

#[test]
fn a_post_the_server_may_have_acted_on_is_not_sent_twice() {
    // The first server reads the POST and closes without an answer.
    let closing = Origin::start(|_| Reply::Close);
    let ok = named("ok");
    let running = proxy(&format!(
        "{}\nbalance = \"round_robin\"",
        servers(&[&closing, &ok])
    ));
    let addr = running.local_addrs()[0];
    let mut statuses = Vec::new();
    for _ in 0..4 {
        let mut client = TestClient::connect(addr);
        client.send(b"POST /order HTTP/1.1\r\nHost: test\r\nContent-Length: 3\r\n\r\nabc");
        statuses.push(client.response().status);
    }
    // Each POST went to one server only: the closing one's got 502.
    let posts = closing.seen().len() + ok.seen().len();
    assert_eq!(posts, 4, "no POST was sent twice");
    assert_eq!(
        statuses.iter().filter(|&&s| s == 502).count(),
        closing.seen().len(),
        "{statuses:?}"
    );
    // A GET that meets the same failure goes to the other server.
    let mut client = TestClient::connect(addr);
    for _ in 0..4 {
        assert_eq!(get(&mut client, "/", None).status, 200);
    }
    running.shutdown();
    running.wait();
}

#[test]
fn a_slow_server_gets_less_traffic_under_p2c_ewma() {
    // Slow by far more than a busy 2-CPU machine delays the fast ones
    // while the rest of the suite runs beside it.
    let slow = Origin::start(|_| {
        std::thread::sleep(Duration::from_millis(60));
        Reply::ok("slow")
    });
    let fast1 = named("fast");
    let fast2 = named("fast");
    let running = proxy(&format!(
        "{}\nbalance = \"p2c_ewma\"",
        servers(&[&slow, &fast1, &fast2])
    ));
    let addr = running.local_addrs()[0];
    let mut client = TestClient::connect(addr);
    let mut slow_count = 0;
    for _ in 0..150 {
        if get(&mut client, "/", None).text() == "slow" {
            slow_count += 1;
        }
    }
    // Round robin would give it 50 of 150.
    assert!(slow_count < 20, "the slow server got {slow_count} of 150");
    running.shutdown();
    running.wait();
}

#[test]
fn consistent_hash_keeps_a_key_on_its_server() {
    let a = named("a");
    let b = named("b");
    let c = named("c");
    let running = proxy(&format!(
        "{}\nbalance = \"consistent_hash\"\nhash_key = \"header:X-User\"",
        servers(&[&a, &b, &c])
    ));
    let addr = running.local_addrs()[0];
    let mut client = TestClient::connect(addr);
    let mut spread = std::collections::HashSet::new();
    for user in 0..30 {
        let ask = |client: &mut TestClient| {
            client.send(format!("GET / HTTP/1.1\r\nHost: test\r\nX-User: u{user}\r\n\r\n").as_bytes());
            client.response().text()
        };
        let first = ask(&mut client);
        for _ in 0..3 {
            assert_eq!(ask(&mut client), first, "user {user} moved");
        }
        spread.insert(first);
    }
    assert_eq!(spread.len(), 3, "30 users land on every server");
    running.shutdown();
    running.wait();
}

#[test]
fn a_tcp_listener_balances_connections_and_skips_a_dead_server() {
    let a = named("a");
    let b = named("b");
    let dead = ringway_tests::refused_addr();
    let source = format!(
        "[runtime]\nworkers = 1\npin_cpus = false\n\n\
         [[listener]]\nname = \"l4\"\nlisten = \"127.0.0.1:0\"\nmode = \"tcp\"\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"{}\", \"{dead}\", \"{}\"]\n",
        a.addr(),
        b.addr()
    );
    let config = config::parse(Path::new("test.toml"), &source).expect("valid");
    let running = factory::start(&config).expect("the proxy starts");
    let addr = running.local_addrs()[0];
    let mut answers = Vec::new();
    for _ in 0..12 {
        // The bytes are relayed as they are: the origins see this request.
        let mut client = TestClient::connect(addr);
        answers.push(get(&mut client, "/", None).text());
    }
    let from_a = answers.iter().filter(|t| *t == "a").count();
    let from_b = answers.iter().filter(|t| *t == "b").count();
    assert_eq!(
        from_a + from_b,
        12,
        "every connection reached a live server: {answers:?}"
    );
    assert!(
        from_a >= 4 && from_b >= 4,
        "both servers took connections: {answers:?}"
    );
    running.shutdown();
    running.wait();
}

#[test]
fn active_health_checks_take_a_failing_server_out_and_bring_it_back() {
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };
    // The server answers requests, but its health check fails while
    // `sick` is set: only the prober can tell (passive health is off and
    // nothing is retried).
    let sick = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&sick);
    let a = Origin::start(move |req| {
        if req.target == "/healthz" && flag.load(Ordering::SeqCst) {
            Reply::Bytes(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n".to_vec())
        } else {
            Reply::ok("a")
        }
    });
    let b = named("b");
    let running = proxy(&format!(
        "{}\nhealth = {{ path = \"/healthz\", interval = \"50ms\", timeout = \"1s\", healthy = 1, unhealthy = 2 }}\n\
         passive = {{ failures = 0 }}\nretries = 0",
        servers(&[&a, &b])
    ));
    let addr = running.local_addrs()[0];
    let answers = |n: usize| {
        let mut client = TestClient::connect(addr);
        (0..n)
            .map(|_| get(&mut client, "/", None).text())
            .collect::<Vec<_>>()
    };
    assert!(answers(10).iter().any(|t| t == "a"), "both serve at first");
    sick.store(true, Ordering::SeqCst);
    let out = eventually(Duration::from_secs(10), || answers(10).iter().all(|t| t == "b"));
    assert!(out, "a server failing its checks kept getting requests");
    sick.store(false, Ordering::SeqCst);
    let back = eventually(Duration::from_secs(10), || answers(10).iter().any(|t| t == "a"));
    assert!(back, "a server passing its checks again got no requests");
    running.shutdown();
    running.wait();
}

/// A DNS server on loopback that answers every A query with the address
/// it holds now (TTL 1 s) and every other query with no address.
struct TinyDns {
    addr: SocketAddr,
    answer: std::sync::Arc<std::sync::Mutex<std::net::Ipv4Addr>>,
    queries: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl TinyDns {
    fn start(first: std::net::Ipv4Addr) -> TinyDns {
        use std::sync::{atomic::Ordering, Arc, Mutex};
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind DNS");
        let addr = socket.local_addr().expect("DNS address");
        let answer = Arc::new(Mutex::new(first));
        let queries = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (held, count) = (Arc::clone(&answer), Arc::clone(&queries));
        // Leaked with the test process: the thread blocks on the socket.
        std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                let query = &buf[..n];
                // The question: the name's labels, then type and class.
                let mut end = 12;
                while end < n && query[end] != 0 {
                    end += 1 + usize::from(query[end]);
                }
                if end + 5 > n {
                    continue;
                }
                let qtype = u16::from_be_bytes([query[end + 1], query[end + 2]]);
                let question = &query[12..end + 5];
                count.fetch_add(1, Ordering::Relaxed);
                let ip = *held.lock().expect("answer");
                let a = qtype == 1;
                let mut out = Vec::with_capacity(64);
                out.extend_from_slice(&query[..2]);
                out.extend_from_slice(&[0x81, 0x80, 0, 1, 0, u8::from(a), 0, 0, 0, 0]);
                out.extend_from_slice(question);
                if a {
                    out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 1, 0, 4]);
                    out.extend_from_slice(&ip.octets());
                }
                let _ = socket.send_to(&out, from);
            }
        });
        TinyDns {
            addr,
            answer,
            queries,
        }
    }

    fn answer_with(&self, ip: std::net::Ipv4Addr) {
        *self.answer.lock().expect("answer") = ip;
    }
}

#[test]
fn a_server_given_by_name_follows_its_dns_answer() {
    use std::net::Ipv4Addr;
    // Two origins on one port of two loopback addresses: the name moves
    // from the first to the second.
    let (first, second) = (Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3));
    let (a, b) = loop {
        let a = named_on(SocketAddr::from((first, 0)), "a");
        let port = a.addr().port();
        if std::net::TcpListener::bind((second, port)).is_ok() {
            break (a, named_on(SocketAddr::from((second, port)), "b"));
        }
    };
    let dns = TinyDns::start(first);
    let source = format!(
        "[runtime]\nworkers = 1\npin_cpus = false\n\n\
         [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\n\
         [[listener.route]]\nupstream = \"app\"\n\n\
         [[upstream]]\nname = \"app\"\nservers = [\"app.test:{}\"]\n\n\
         [dns]\nsystem_hosts = false\nservers = [\"{}\"]\n",
        a.addr().port(),
        dns.addr
    );
    let config = config::parse(Path::new("test.toml"), &source).unwrap_or_else(|e| panic!("{e}\n{source}"));
    let running = factory::start(&config).expect("the proxy starts");
    let mut client = TestClient::connect(running.local_addrs()[0]);
    assert_eq!(get(&mut client, "/", None).body, b"a");
    let asked = dns.queries.load(std::sync::atomic::Ordering::Relaxed);
    dns.answer_with(second);
    let until = std::time::Instant::now() + Duration::from_secs(10);
    let mut moved = false;
    while !moved && std::time::Instant::now() < until {
        moved = get(&mut client, "/", None).body == b"b";
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(moved, "the server never moved to its new address");
    assert!(dns.queries.load(std::sync::atomic::Ordering::Relaxed) > asked);
    // The old address gets nothing more.
    let before = a.seen().len();
    for _ in 0..20 {
        assert_eq!(get(&mut client, "/", None).body, b"b");
    }
    assert_eq!(a.seen().len(), before);
    drop(b);
    running.shutdown();
    running.wait();
}

#[test]
fn an_upstream_keeps_as_many_idle_connections_as_its_keepalive_says() {
    // Two groups on one listener: `pooled` with the [http] default, `fresh`
    // with `keepalive = 0` (a new upstream connection per request, nginx's
    // behaviour without `keepalive`).
    let pooled = named("pooled");
    let fresh = named("fresh");
    let source = format!(
        "[runtime]\nworkers = 1\npin_cpus = false\n\n\
         [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\n\
         [[listener.route]]\npath_prefix = \"/fresh\"\nupstream = \"fresh\"\n\n\
         [[listener.route]]\nupstream = \"pooled\"\n\n\
         [[upstream]]\nname = \"pooled\"\nservers = [\"{}\"]\n\n\
         [[upstream]]\nname = \"fresh\"\nservers = [\"{}\"]\nkeepalive = 0\n",
        pooled.addr(),
        fresh.addr()
    );
    let config = config::parse(Path::new("test.toml"), &source).unwrap_or_else(|e| panic!("{e}\n{source}"));
    let running = factory::start(&config).expect("the proxy starts");
    let mut client = TestClient::connect(running.local_addrs()[0]);
    for _ in 0..5 {
        assert_eq!(get(&mut client, "/", None).text(), "pooled");
        assert_eq!(get(&mut client, "/fresh", None).text(), "fresh");
    }
    assert_eq!(
        pooled.connections(),
        1,
        "the pooled upstream's connection is reused"
    );
    assert_eq!(
        fresh.connections(),
        5,
        "keepalive = 0: one upstream connection per request"
    );
    running.shutdown();
    running.wait();
}
