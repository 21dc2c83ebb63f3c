//! Forward proxy behaviour over real loopback sockets, on both drivers.
//!
//! Every destination is on 127.0.0.0/8: "remote" names resolve through the
//! proxy's static DNS hosts, and "private" ones are other loopback
//! addresses that `private_allow` does not exempt.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use base64::Engine as _;
use ringway_core::DriverChoice;
use ringway_http::{
    forward::{
        acl::{Acl, Action, IpNet, Matcher, PortSet, Rule, TimeWindow},
        auth::{BasicAuth, Htpasswd},
        domains::DomainSet,
        pac::Pac,
    },
    ForwardedStyle,
};
use ringway_tests::{both_drivers, read_to_close, ForwardSetup, Origin, Reply, Response, TestProxy};

both_drivers!(
    absolute_form_requests_are_forwarded_in_origin_form,
    the_target_wins_over_the_host_field,
    connect_tunnels_carry_bytes_both_ways,
    connect_to_a_port_outside_connect_ports_is_403,
    private_destinations_are_denied_after_resolution,
    ip_literal_tricks_are_refused,
    userinfo_and_percent_encoded_hosts_are_refused,
    names_match_whatever_their_case_or_trailing_dot,
    origin_form_is_400_except_the_pac_file,
    proxy_authentication_is_required_and_never_forwarded,
    user_and_group_rules_apply_after_authentication,
    every_matcher_can_decide,
    first_matching_rule_wins_then_the_default,
    anonymity_settings_control_x_forwarded_for_and_via,
    unresolvable_names_are_502_and_https_urls_400,
    a_dst_ip_allow_rule_connects_only_to_the_addresses_it_covers,
    url_regex_matches_every_spelling_of_a_url,
    ipv6_forms_that_embed_private_ipv4_are_refused,
);

fn net(s: &str) -> IpNet {
    s.parse().expect("network")
}

/// Default allow, private destinations blocked but 127.0.0.1 exempt,
/// CONNECT to any high port.
fn acl(rules: Vec<Rule>) -> Acl {
    Acl {
        name: "test".into(),
        default: Action::Allow,
        block_private: true,
        private_allow: vec![net("127.0.0.1/32")],
        connect_ports: PortSet::new(vec![(443, 443), (1025, 65535)]),
        rules,
    }
}

fn rule(name: &str, action: Action, matchers: Vec<Matcher>) -> Rule {
    Rule {
        name: Some(name.into()),
        action,
        matchers,
    }
}

fn domains(names: &[&str]) -> Matcher {
    let mut set = DomainSet::new();
    for n in names {
        set.insert(n).expect("domain");
    }
    Matcher::DstDomain(Arc::new(set))
}

/// A proxy with `acl`, where `allowed.test` and `blocked.test` are
/// 127.0.0.1 and `internal.test` is 127.0.0.2 (private, not exempt).
fn proxy(driver: DriverChoice, acl: Acl) -> TestProxy {
    let mut setup = ForwardSetup::new(driver, acl);
    setup.hosts = hosts();
    setup.start()
}

fn hosts() -> Vec<(&'static str, &'static str)> {
    vec![
        ("allowed.test", "127.0.0.1"),
        ("blocked.test", "127.0.0.1"),
        ("ads.example.test", "127.0.0.1"),
        ("internal.test", "127.0.0.2"),
    ]
}

/// Sends a GET for `url` through `proxy` with extra header lines.
fn get(proxy: &TestProxy, url: &str, extra: &str) -> Response {
    let mut c = proxy.client();
    c.send(format!("GET {url} HTTP/1.1\r\nHost: {}\r\n{extra}\r\n", host_of(url)).as_bytes());
    c.response()
}

fn host_of(url: &str) -> &str {
    url.split("://")
        .nth(1)
        .and_then(|r| r.split('/').next())
        .unwrap_or("x")
}

fn denied_by(r: &Response) -> String {
    assert_eq!(r.status, 403, "expected a denial, got {} {}", r.status, r.text());
    r.header("x-ringway-denied").unwrap_or_default().to_owned()
}

fn absolute_form_requests_are_forwarded_in_origin_form(driver: DriverChoice) {
    let origin = Origin::start(|req| Reply::ok(format!("{} {}", req.method, req.target)));
    let p = proxy(driver, acl(vec![]));
    let port = origin.addr().port();
    let r = get(
        &p,
        &format!("http://allowed.test:{port}/path?q=1"),
        "Proxy-Connection: keep-alive\r\nX-Forwarded-For: 198.51.100.1\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "GET /path?q=1");
    let seen = &origin.seen()[0];
    assert_eq!(seen.header("host"), Some(format!("allowed.test:{port}").as_str()));
    assert_eq!(seen.header("proxy-connection"), None);
    assert_eq!(seen.header("x-forwarded-for"), Some("198.51.100.1, 127.0.0.1"));
    assert_eq!(
        seen.header("x-forwarded-proto"),
        None,
        "a forward proxy adds only XFF"
    );
    assert_eq!(seen.header("via"), Some("1.1 ringway"));
    // Upstream connections are pooled per destination.
    let mut c = p.client();
    for _ in 0..3 {
        c.send(
            format!("GET http://allowed.test:{port}/again HTTP/1.1\r\nHost: allowed.test\r\n\r\n").as_bytes(),
        );
        assert_eq!(c.response().status, 200);
    }
    // One worker: every request, from either client, used the first one.
    assert_eq!(origin.connections(), 1, "pooled across clients");
    assert!(origin.seen().iter().all(|s| s.connection == 1));
}

fn the_target_wins_over_the_host_field(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("reached"));
    let p = proxy(
        driver,
        acl(vec![rule(
            "no blocked",
            Action::Deny,
            vec![domains(&["blocked.test"])],
        )]),
    );
    let port = origin.addr().port();
    // A Host naming a blocked site does not deny an allowed target...
    let mut c = p.client();
    c.send(format!("GET http://allowed.test:{port}/ HTTP/1.1\r\nHost: blocked.test\r\n\r\n").as_bytes());
    assert_eq!(c.response().text(), "reached");
    assert_eq!(
        origin.seen()[0].header("host"),
        Some(format!("allowed.test:{port}").as_str())
    );
    // ...and a Host naming an allowed site does not open a blocked target.
    let mut c = p.client();
    c.send(format!("GET http://blocked.test:{port}/ HTTP/1.1\r\nHost: allowed.test\r\n\r\n").as_bytes());
    assert!(denied_by(&c.response()).contains("no blocked"));
    assert_eq!(origin.seen().len(), 1);
}

/// A raw TCP server that echoes whatever it receives, and the number of
/// connections it accepted.
fn echo_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    thread::spawn(move || {
        for s in l.incoming().flatten() {
            counter.fetch_add(1, Ordering::SeqCst);
            thread::spawn(move || {
                let mut s = s;
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

fn connect_tunnels_carry_bytes_both_ways(driver: DriverChoice) {
    let (echo, _) = echo_server();
    let p = proxy(driver, acl(vec![]));
    let mut c = p.client();
    // The first tunnel bytes travel in the same write as the CONNECT.
    c.send(
        format!(
            "CONNECT allowed.test:{} HTTP/1.1\r\nHost: allowed.test\r\n\r\nearly",
            echo.port()
        )
        .as_bytes(),
    );
    let r = c.read_response(true).unwrap();
    assert_eq!(r.status, 200);
    // The echo may have come in the same read as the 200.
    let mut got = c.take_buffered();
    let mut rest = vec![0u8; 5 - got.len()];
    c.stream.read_exact(&mut rest).unwrap();
    got.extend_from_slice(&rest);
    assert_eq!(got, b"early");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let mut writer = c.stream.try_clone().unwrap();
    let sent = big.clone();
    let t = thread::spawn(move || writer.write_all(&sent).unwrap());
    let mut back = vec![0u8; big.len()];
    c.stream.read_exact(&mut back).unwrap();
    t.join().unwrap();
    assert!(back == big, "tunnel changed the bytes");
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(
        read_to_close(&mut c.stream, Duration::from_secs(5)).is_empty(),
        "half-close reached the end"
    );
}

fn connect_to_a_port_outside_connect_ports_is_403(driver: DriverChoice) {
    let (echo, accepted) = echo_server();
    let mut strict = acl(vec![]);
    strict.connect_ports = PortSet::new(vec![(443, 443)]);
    let p = proxy(driver, strict);
    let mut c = p.client();
    c.send(
        format!(
            "CONNECT allowed.test:{} HTTP/1.1\r\nHost: allowed.test\r\n\r\n",
            echo.port()
        )
        .as_bytes(),
    );
    let r = c.response();
    assert_eq!(denied_by(&r), "listener=outbound; connect_ports");
    assert!(r.text().contains("connect_ports"), "{}", r.text());
    assert_eq!(accepted.load(Ordering::SeqCst), 0, "nothing was connected");
    // Plain HTTP to the same port is not a CONNECT and is not limited.
    let origin = Origin::start(|_| Reply::ok("plain"));
    assert_eq!(
        get(&p, &format!("http://allowed.test:{}/", origin.addr().port()), "").text(),
        "plain"
    );
}

fn private_destinations_are_denied_after_resolution(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("in"));
    // Servers on the private addresses, so that a connection there would
    // be seen (and answered) rather than refused.
    let internal = Origin::start_on("127.0.0.2:0".parse().unwrap(), |_| Reply::ok("leaked"));
    let literal = Origin::start_on("127.0.0.3:0".parse().unwrap(), |_| Reply::ok("leaked"));
    let p = proxy(driver, acl(vec![]));
    let port = origin.addr().port();
    // internal.test resolves to 127.0.0.2: private and not exempt.
    let r = get(
        &p,
        &format!("http://internal.test:{}/", internal.addr().port()),
        "",
    );
    assert_eq!(denied_by(&r), "listener=outbound; block_private");
    assert!(r.text().contains("is private (block_private)"), "{}", r.text());
    assert!(
        !r.text().contains("127.0.0.2"),
        "internal addresses are not shown: {}",
        r.text()
    );
    // IP literals are checked the same way, CONNECT too.
    let r = get(&p, &format!("http://127.0.0.3:{}/", literal.addr().port()), "");
    assert_eq!(denied_by(&r), "listener=outbound; block_private");
    let mut c = p.client();
    c.send(
        format!(
            "CONNECT internal.test:{} HTTP/1.1\r\nHost: internal.test\r\n\r\n",
            internal.addr().port()
        )
        .as_bytes(),
    );
    assert_eq!(denied_by(&c.response()), "listener=outbound; block_private");
    assert_eq!(internal.connections() + literal.connections(), 0);
    // The exempt address passes.
    assert_eq!(get(&p, &format!("http://127.0.0.1:{port}/"), "").text(), "in");
    assert_eq!(origin.seen().len(), 1);
}

fn ip_literal_tricks_are_refused(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("reached"));
    let p = proxy(driver, acl(vec![]));
    let port = origin.addr().port();
    for trick in [
        "2130706433",
        "0177.0.0.1",
        "0x7f.1",
        "0x7f000001",
        "127.1",
        "127.0.1",
        "127.0.0.01",
    ] {
        let r = get(&p, &format!("http://{trick}:{port}/"), "");
        assert_eq!(r.status, 400, "{trick}: {}", r.text());
        assert!(r.text().contains("canonical"), "{trick}: {}", r.text());
        let mut c = p.client();
        c.send(format!("CONNECT {trick}:{port} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(c.response().status, 400, "CONNECT {trick}");
    }
    // IPv4-mapped IPv6 is judged (and connected) as the IPv4 address.
    assert_eq!(
        get(&p, &format!("http://[::ffff:127.0.0.1]:{port}/"), "").text(),
        "reached"
    );
    assert_eq!(
        get(&p, &format!("http://[::ffff:127.0.0.2]:{port}/"), "").status,
        403
    );
    assert_eq!(
        get(&p, &format!("http://[::ffff:7f00:2]:{port}/"), "").status,
        403
    );
    assert_eq!(origin.seen().len(), 1);
}

fn userinfo_and_percent_encoded_hosts_are_refused(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("reached"));
    let p = proxy(driver, acl(vec![]));
    let port = origin.addr().port();
    for bad in [
        format!("allowed.test%2e:{port}"),
        format!("allowed%2Etest:{port}"),
    ] {
        assert_eq!(get(&p, &format!("http://{bad}/"), "").status, 400, "{bad}");
    }
    let mut c = p.client();
    c.send(format!("CONNECT user@allowed.test:{port} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    assert_eq!(c.response().status, 400);
    let mut c = p.client();
    c.send(format!("GET http://user@allowed.test:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    assert_eq!(c.response().status, 400);
    assert_eq!(origin.connections(), 0);
}

fn names_match_whatever_their_case_or_trailing_dot(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("reached"));
    let p = proxy(
        driver,
        acl(vec![
            rule("blocked", Action::Deny, vec![domains(&["blocked.test"])]),
            rule("ads", Action::Deny, vec![domains(&[".example.test"])]),
        ]),
    );
    let port = origin.addr().port();
    for host in ["BLOCKED.Test", "blocked.test.", "Blocked.TEST."] {
        let r = get(&p, &format!("http://{host}:{port}/"), "");
        assert!(denied_by(&r).contains("rule 1 (blocked)"), "{host}");
    }
    let r = get(&p, &format!("http://ADS.Example.Test.:{port}/"), "");
    assert!(denied_by(&r).contains("rule 2 (ads)"));
    assert_eq!(
        get(&p, &format!("http://Allowed.Test.:{port}/"), "").text(),
        "reached"
    );
}

fn origin_form_is_400_except_the_pac_file(driver: DriverChoice) {
    let mut setup = ForwardSetup::new(driver, acl(vec![]));
    setup.pac = Some(Pac::Generated {
        direct: vec![".intranet.example".into()],
        fallback: "127.0.0.1:3128".into(),
    });
    let p = setup.start();
    let mut c = p.client();
    c.send(b"GET /index.html HTTP/1.1\r\nHost: proxy.test\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 400);
    assert!(r.text().contains("this is a proxy"));
    let mut c = p.client();
    c.send(b"GET /proxy.pac HTTP/1.1\r\nHost: proxy.corp:3128\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/x-ns-proxy-autoconfig")
    );
    assert!(r.text().contains("dnsDomainIs(host, \".intranet.example\")"));
    assert!(r.text().contains("return \"PROXY proxy.corp:3128\";"));
}

fn sha_entry(user: &str, password: &str) -> String {
    use sha1::Digest;
    let digest = sha1::Sha1::digest(password.as_bytes());
    format!(
        "{user}:{{SHA}}{}",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

fn basic(user_pass: &str) -> String {
    format!(
        "Proxy-Authorization: Basic {}\r\n",
        base64::engine::general_purpose::STANDARD.encode(user_pass)
    )
}

fn staff() -> BasicAuth {
    let bob_hash = bcrypt::hash("builder", 4).unwrap();
    let users = Htpasswd::parse(&format!(
        "{}\nbob:{bob_hash}\n{}\n",
        sha_entry("alice", "wonder"),
        sha_entry("carol", "singer")
    ))
    .unwrap();
    let groups = HashMap::from([("admins".to_owned(), vec!["bob".to_owned()])]);
    BasicAuth::new("staff".into(), "ringway test".into(), users, &groups)
}

fn proxy_authentication_is_required_and_never_forwarded(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("secret stuff"));
    let mut setup = ForwardSetup::new(driver, acl(vec![]));
    setup.hosts = hosts();
    setup.auth = Some(staff());
    let p = setup.start();
    let url = format!("http://allowed.test:{}/", origin.addr().port());
    let r = get(&p, &url, "");
    assert_eq!(r.status, 407);
    assert_eq!(
        r.header("proxy-authenticate"),
        Some("Basic realm=\"ringway test\", charset=\"UTF-8\"")
    );
    assert_eq!(get(&p, &url, &basic("alice:wrong")).status, 407);
    assert_eq!(get(&p, &url, &basic("mallory:wonder")).status, 407);
    assert_eq!(get(&p, &url, &basic("alice:wonder")).text(), "secret stuff");
    assert_eq!(
        get(&p, &url, &basic("bob:builder")).text(),
        "secret stuff",
        "bcrypt"
    );
    assert!(origin
        .seen()
        .iter()
        .all(|s| s.header("proxy-authorization").is_none()));
    // CONNECT is authenticated too.
    let mut c = p.client();
    c.send(
        format!(
            "CONNECT allowed.test:{} HTTP/1.1\r\nHost: x\r\n\r\n",
            origin.addr().port()
        )
        .as_bytes(),
    );
    assert_eq!(c.response().status, 407);
}

fn user_and_group_rules_apply_after_authentication(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("ok"));
    // Default deny: every 200 below comes from the rule that allows it.
    let mut rules = acl(vec![
        rule(
            "admins anywhere",
            Action::Allow,
            vec![Matcher::Group(vec!["admins".into()])],
        ),
        rule(
            "alice not to ads",
            Action::Deny,
            vec![Matcher::User(vec!["alice".into()]), domains(&[".example.test"])],
        ),
        rule(
            "alice elsewhere",
            Action::Allow,
            vec![Matcher::User(vec!["alice".into()])],
        ),
    ]);
    rules.default = Action::Deny;
    let mut setup = ForwardSetup::new(driver, rules);
    setup.hosts = hosts();
    setup.auth = Some(staff());
    let p = setup.start();
    let port = origin.addr().port();
    let ads = format!("http://ads.example.test:{port}/");
    let allowed = format!("http://allowed.test:{port}/");
    assert!(denied_by(&get(&p, &ads, &basic("alice:wonder"))).contains("rule 2 (alice not to ads)"));
    assert_eq!(get(&p, &allowed, &basic("alice:wonder")).text(), "ok", "rule 3");
    assert_eq!(
        get(&p, &ads, &basic("bob:builder")).text(),
        "ok",
        "rule 1: bob is an admin"
    );
    // carol is neither an admin nor alice: only the default applies.
    assert!(denied_by(&get(&p, &allowed, &basic("carol:singer"))).contains("default"));
}

fn every_matcher_can_decide(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("ok"));
    let port = origin.addr().port();
    let url = format!("http://allowed.test:{port}/files/report.pdf");
    let regex = |r: &str| regex::RegexSet::new([r]).unwrap();
    let url_regex = |r: &str| regex::bytes::RegexSet::new([r]).unwrap();
    let other_port = port.checked_add(1).unwrap_or(1);
    let cases: Vec<(&str, Matcher, bool)> = vec![
        ("src", Matcher::Src(vec![net("127.0.0.0/8")]), true),
        ("src miss", Matcher::Src(vec![net("192.0.2.0/24")]), false),
        ("dst_regex", Matcher::DstRegex(regex(r"^allowed\.")), true),
        ("dst_regex miss", Matcher::DstRegex(regex(r"^other\.")), false),
        (
            "dst_ip via resolution",
            Matcher::DstIp(vec![net("127.0.0.1/32")]),
            true,
        ),
        ("dst_ip miss", Matcher::DstIp(vec![net("127.0.0.9/32")]), false),
        (
            "dst_port",
            Matcher::DstPort(PortSet::new(vec![(port, port)])),
            true,
        ),
        (
            "dst_port miss",
            Matcher::DstPort(PortSet::new(vec![(other_port, other_port)])),
            false,
        ),
        ("method", Matcher::Method(vec!["GET".into()]), true),
        ("method miss", Matcher::Method(vec!["POST".into()]), false),
        ("url_regex", Matcher::UrlRegex(url_regex(r"\.pdf$")), true),
        ("url_regex miss", Matcher::UrlRegex(url_regex(r"\.exe$")), false),
        (
            "time always",
            Matcher::Time(vec!["Mon-Sun 00:00-24:00".parse::<TimeWindow>().unwrap()]),
            true,
        ),
        (
            "time never",
            Matcher::Time(vec!["Mon-Sun 00:00-00:00".parse::<TimeWindow>().unwrap()]),
            false,
        ),
        ("user without auth", Matcher::User(vec!["alice".into()]), false),
    ];
    for (name, matcher, denies) in cases {
        let p = proxy(driver, acl(vec![rule(name, Action::Deny, vec![matcher])]));
        let r = get(&p, &url, "");
        if denies {
            assert!(denied_by(&r).contains(name), "{name}");
        } else {
            assert_eq!(r.status, 200, "{name}: {}", r.text());
        }
    }
    // url_regex never matches a CONNECT.
    let p = proxy(
        driver,
        acl(vec![rule(
            "urls",
            Action::Deny,
            vec![Matcher::UrlRegex(url_regex("allowed"))],
        )]),
    );
    let (echo, _) = echo_server();
    let mut c = p.client();
    c.send(format!("CONNECT allowed.test:{} HTTP/1.1\r\nHost: x\r\n\r\n", echo.port()).as_bytes());
    assert_eq!(c.read_response(true).unwrap().status, 200);
}

fn first_matching_rule_wins_then_the_default(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("ok"));
    let url = format!("http://allowed.test:{}/", origin.addr().port());
    let mut deny_all = acl(vec![
        rule("allow allowed", Action::Allow, vec![domains(&["allowed.test"])]),
        rule(
            "deny loopback clients",
            Action::Deny,
            vec![Matcher::Src(vec![net("127.0.0.0/8")])],
        ),
    ]);
    deny_all.default = Action::Deny;
    let p = proxy(driver, deny_all);
    assert_eq!(get(&p, &url, "").text(), "ok", "rule 1 before rule 2");
    let blocked = format!("http://blocked.test:{}/", origin.addr().port());
    assert!(denied_by(&get(&p, &blocked, "")).contains("rule 2"));
    let mut only_default = acl(vec![rule(
        "never",
        Action::Allow,
        vec![Matcher::Src(vec![net("192.0.2.0/24")])],
    )]);
    only_default.default = Action::Deny;
    let p = proxy(driver, only_default);
    assert!(denied_by(&get(&p, &url, "")).contains("default"));
}

fn anonymity_settings_control_x_forwarded_for_and_via(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("ok"));
    let url = format!("http://allowed.test:{}/", origin.addr().port());
    for (style, expected) in [
        (ForwardedStyle::TruncateFor, Some("127.0.0.1")),
        (ForwardedStyle::DeleteFor, None),
    ] {
        let mut setup = ForwardSetup::new(driver, acl(vec![]));
        setup.hosts = hosts();
        setup.settings.proxy_headers.forwarded = style;
        setup.settings.proxy_headers.via = None;
        let p = setup.start();
        assert_eq!(get(&p, &url, "X-Forwarded-For: 10.9.8.7\r\n").status, 200);
        let seen = origin.seen().pop().unwrap();
        assert_eq!(seen.header("x-forwarded-for"), expected, "{style:?}");
        assert_eq!(seen.header("via"), None);
    }
}

fn unresolvable_names_are_502_and_https_urls_400(driver: DriverChoice) {
    let p = proxy(driver, acl(vec![]));
    let r = get(&p, "http://nowhere.test:8080/", "");
    assert_eq!(r.status, 502);
    assert!(r.text().contains("cannot resolve nowhere.test"));
    let r = get(&p, "https://allowed.test/", "");
    assert_eq!(r.status, 400);
    assert!(r.text().contains("CONNECT"));
}

fn a_dst_ip_allow_rule_connects_only_to_the_addresses_it_covers(driver: DriverChoice) {
    // Two origins on one port: 127.0.0.5 (not covered) and 127.0.0.1.
    let (other, port) = loop {
        let other = Origin::start_on("127.0.0.5:0".parse().unwrap(), |_| Reply::ok("uncovered"));
        let port = other.addr().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            break (other, port);
        }
    };
    let covered = Origin::start_on(SocketAddr::from(([127, 0, 0, 1], port)), |_| Reply::ok("covered"));
    let mut strict = acl(vec![rule(
        "to .1 only",
        Action::Allow,
        vec![Matcher::DstIp(vec![net("127.0.0.1/32")])],
    )]);
    strict.default = Action::Deny;
    strict.block_private = false;
    let mut setup = ForwardSetup::new(driver, strict);
    // The name resolves to the uncovered address first.
    setup.hosts = vec![("multi.test", "127.0.0.5"), ("multi.test", "127.0.0.1")];
    let p = setup.start();
    for _ in 0..3 {
        assert_eq!(
            get(&p, &format!("http://multi.test:{port}/"), "").text(),
            "covered"
        );
    }
    assert_eq!(other.connections(), 0, "the rule did not cover 127.0.0.5");
    assert!(covered.connections() >= 1);
}

fn url_regex_matches_every_spelling_of_a_url(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("reached"));
    let port = origin.addr().port();
    let deny = regex::bytes::RegexSet::new([format!(r"^http://allowed\.test:{port}/ads")]).unwrap();
    let p = proxy(
        driver,
        acl(vec![rule("no ads", Action::Deny, vec![Matcher::UrlRegex(deny)])]),
    );
    for target in [
        format!("http://allowed.test:{port}/ads/x"),
        format!("http://ALLOWED.Test.:{port}/ads"),
        format!("http://allowed.test:{port}/%61ds"),
        format!("HTTP://allowed.test:{port}/%61%64s?q"),
        format!("http://allowed.test:{port}/news/../ads"),
        format!("http://allowed.test:{port}/./%2e%2e/ads"),
    ] {
        assert!(denied_by(&get(&p, &target, "")).contains("no ads"), "{target}");
    }
    // A path that is not UTF-8 cannot slip past: refused one way or the other.
    let mut c = p.client();
    let mut raw = format!("GET http://allowed.test:{port}/ads/").into_bytes();
    raw.extend_from_slice(b"\xff HTTP/1.1\r\nHost: allowed.test\r\n\r\n");
    c.send(&raw);
    let status = c.response().status;
    assert!(status == 400 || status == 403, "{status}");
    assert_eq!(origin.connections(), 0);
    assert_eq!(
        get(&p, &format!("http://allowed.test:{port}/news"), "").text(),
        "reached"
    );
}

fn ipv6_forms_that_embed_private_ipv4_are_refused(driver: DriverChoice) {
    let mut open = acl(vec![]);
    open.private_allow.clear();
    let p = proxy(driver, open);
    for host in [
        "[::127.0.0.1]",
        "[::ffff:0:7f00:1]",
        "[2002:7f00:1::1]",
        "[2002:a9fe:a9fe::1]",
        "[64:ff9b::a00:1]",
        "[2001::1]",
    ] {
        let r = get(&p, &format!("http://{host}:8080/"), "");
        assert_eq!(denied_by(&r), "listener=outbound; block_private", "{host}");
    }
}
