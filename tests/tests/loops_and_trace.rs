//! Requests the proxy must not pass on, over real loopback sockets on both
//! drivers: forwarding loops (a destination that is the proxy itself, a
//! request already carrying the proxy's own `Via`), TRACE, and OPTIONS or
//! TRACE whose `Max-Forwards` runs out.

use std::sync::atomic::Ordering;

use ringway_core::DriverChoice;
use ringway_http::forward::acl::{Acl, Action, PortSet};
use ringway_tests::{both_drivers, ForwardSetup, Origin, ProxySetup, Reply, TestClient};

both_drivers!(
    connect_to_the_proxy_itself_is_refused_without_nesting_tunnels,
    absolute_form_requests_to_the_proxy_itself_are_refused,
    a_request_carrying_our_own_via_is_a_loop,
    trace_is_refused_unless_allowed_and_max_forwards_counts_down,
);

/// Every loopback destination allowed: the proxy's own address included,
/// which only the loop check stops.
fn open_acl() -> Acl {
    Acl {
        name: "open".into(),
        default: Action::Allow,
        block_private: true,
        private_allow: vec!["127.0.0.0/8".parse().expect("network")],
        connect_ports: PortSet::new(vec![(1, 65535)]),
        rules: Vec::new(),
    }
}

fn connect_to_the_proxy_itself_is_refused_without_nesting_tunnels(driver: DriverChoice) {
    let mut setup = ForwardSetup::new(driver, open_acl());
    setup.hosts = vec![("self.test", "127.0.0.1")];
    let proxy = setup.start();
    let me = proxy.addr();
    // One write of pipelined CONNECTs to the proxy itself, by address and
    // by a name that resolves to it: the first is refused, and the
    // connection ends (the rest may be the tunnel's bytes).
    for target in [me.to_string(), format!("self.test:{}", me.port())] {
        let mut burst = Vec::new();
        for _ in 0..200 {
            burst
                .extend_from_slice(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes());
        }
        let mut c = TestClient::connect(me);
        c.send(&burst);
        let r = c.read_response(false).expect("the refusal");
        assert_eq!(r.status, 508, "{target}");
        assert!(r.text().contains("this proxy itself"), "{}", r.text());
        assert!(
            c.read_response(false).is_err(),
            "{target}: one answer, then the end"
        );
    }
    let stats = &proxy.handle().stats()[0];
    assert_eq!(
        stats.accepted.load(Ordering::Relaxed),
        2,
        "no tunnel was opened to itself"
    );
    let mut c = TestClient::connect(me);
    // A destination next to it is not a loop.
    let origin = Origin::start_on("127.0.0.1:0".parse().unwrap(), |_| Reply::ok("origin"));
    let target = origin.addr();
    c.send(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes());
    assert_eq!(c.read_response(true).expect("a response").status, 200);
}

fn absolute_form_requests_to_the_proxy_itself_are_refused(driver: DriverChoice) {
    let mut setup = ForwardSetup::new(driver, open_acl());
    setup.hosts = vec![("self.test", "127.0.0.1")];
    let proxy = setup.start();
    let me = proxy.addr();
    for target in [
        format!("http://{me}/"),
        format!("http://self.test:{}/x", me.port()),
    ] {
        let mut c = proxy.client();
        c.send(format!("GET {target} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(c.response().status, 508, "{target}");
    }
}

fn a_request_carrying_our_own_via_is_a_loop(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("reached"));
    let proxy = ProxySetup::new(driver, &[origin.addr()]).start();
    let mut c = proxy.client();
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nVia: 1.0 other, 1.1 ringway\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 508);
    assert!(r.text().contains("already went through this proxy"));
    // Another proxy's Via passes, with ours appended.
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 upstream-cache\r\n\r\n");
    assert_eq!(c.response().text(), "reached");
    assert_eq!(origin.seen().len(), 1, "the loop never reached the origin");
    let vias: Vec<_> = origin.seen()[0]
        .headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("via"))
        .map(|(_, v)| v.clone())
        .collect();
    assert_eq!(vias, ["1.1 upstream-cache", "1.1 ringway"]);
}

fn trace_is_refused_unless_allowed_and_max_forwards_counts_down(driver: DriverChoice) {
    let origin = Origin::start(|req| {
        let hops = req.header("max-forwards").unwrap_or("none").to_owned();
        Reply::ok(format!("{} max-forwards={hops}", req.method))
    });
    let proxy = ProxySetup::new(driver, &[origin.addr()]).start();
    let mut c = proxy.client();
    c.send(b"TRACE / HTTP/1.1\r\nHost: a\r\nCookie: session=secret\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 405, "TRACE is refused by default");
    assert!(r.header("allow").is_some_and(|a| !a.contains("TRACE")));
    // OPTIONS: Max-Forwards 0 is answered here, others go on, decremented.
    c.send(b"OPTIONS * HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200);
    assert!(r.header("allow").is_some());
    c.send(b"OPTIONS / HTTP/1.1\r\nHost: a\r\nMax-Forwards: 5\r\n\r\n");
    assert_eq!(c.response().text(), "OPTIONS max-forwards=4");
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n");
    assert_eq!(
        c.response().text(),
        "GET max-forwards=0",
        "other methods ignore it, as RFC 9110 allows"
    );
    c.send(b"OPTIONS / HTTP/1.1\r\nHost: a\r\nMax-Forwards: many\r\n\r\n");
    assert_eq!(c.response().status, 400);
    assert_eq!(
        origin.seen().len(),
        2,
        "only the OPTIONS 5 and the GET reached the origin"
    );

    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    setup.settings.allow_trace = true;
    let proxy = setup.start();
    let mut c = proxy.client();
    c.send(b"TRACE / HTTP/1.1\r\nHost: a\r\nMax-Forwards: 2\r\n\r\n");
    assert_eq!(c.response().text(), "TRACE max-forwards=1");
    c.send(b"TRACE /here HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\nAuthorization: Basic c2VjcmV0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.header("content-type"), Some("message/http"));
    assert!(r.text().starts_with("TRACE /here HTTP/1.1\r\n"), "{}", r.text());
    assert!(!r.text().contains("c2VjcmV0"), "credentials are not echoed");
}
