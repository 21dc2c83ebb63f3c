//! Answers the proxy gives itself, over real loopback sockets on both
//! drivers: framed for the request they answer (no body after a HEAD), and
//! ending the connection where what follows cannot be trusted (after a
//! 400, and after a refused CONNECT, whose client may already be sending
//! the tunnel's bytes). Found by the differential test.

use ringway_core::DriverChoice;
use ringway_http::RouteSpec;
use ringway_tests::{both_drivers, read_to_close, Origin, ProxySetup, Reply};
use std::time::Duration;

both_drivers!(
    a_local_answer_to_head_has_no_body,
    a_bad_request_ends_the_connection,
    a_refused_connect_ends_the_connection,
);

fn proxy_with_one_route(driver: DriverChoice, origin: &Origin) -> ringway_tests::TestProxy {
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    setup.routes = vec![RouteSpec {
        host: None,
        path_prefix: "/app".into(),
        upstream: 0,
    }];
    setup.start()
}

fn a_local_answer_to_head_has_no_body(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("app"));
    let proxy = proxy_with_one_route(driver, &origin);
    let mut c = proxy.client();
    c.send(b"HEAD /nowhere HTTP/1.1\r\nHost: a\r\n\r\nGET /app HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.read_response(true).expect("the 404");
    assert_eq!(r.status, 404);
    assert!(
        r.header("content-length").is_some_and(|n| n != "0"),
        "the length a GET would get"
    );
    // Had the 404 carried its body, this would read it as a response.
    let next = c.response();
    assert_eq!(next.status, 200);
    assert_eq!(next.text(), "app");
}

fn a_bad_request_ends_the_connection(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("app"));
    let proxy = proxy_with_one_route(driver, &origin);
    let mut c = proxy.client();
    // Well framed, but its target is nothing a reverse proxy serves.
    c.send(b"GET a.test:80 HTTP/1.1\r\nHost: a\r\n\r\nGET /app HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 400);
    assert_eq!(r.header("connection"), Some("close"));
    let rest = read_to_close(&mut c.stream, Duration::from_secs(10));
    assert!(
        rest.is_empty() && c.take_buffered().is_empty(),
        "nothing after the 400"
    );
    assert_eq!(origin.seen().len(), 0, "the pipelined request was not forwarded");
}

fn a_refused_connect_ends_the_connection(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("app"));
    let proxy = proxy_with_one_route(driver, &origin);
    let mut c = proxy.client();
    // A reverse proxy does not tunnel; the bytes after the CONNECT may be
    // a TLS ClientHello, or a request the client meant for the tunnel.
    c.send(b"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\nGET /app HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("connection"), Some("close"));
    let _ = read_to_close(&mut c.stream, Duration::from_secs(10));
    assert_eq!(origin.seen().len(), 0);
}
