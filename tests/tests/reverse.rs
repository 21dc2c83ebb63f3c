//! Reverse proxy behaviour over real loopback sockets, on both drivers.

use std::{
    io::{Read, Write},
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use ringway_core::DriverChoice;
use ringway_http::RouteSpec;
use ringway_tests::{
    both_drivers, eventually, read_to_close, refused_addr, Origin, ProxySetup, Reply, TestProxy,
};

both_drivers!(
    a_malformed_chunk_after_the_head_fails_the_request,
    content_length_bodies_pass_both_ways,
    chunked_request_is_reframed_and_chunked_response_relayed,
    close_delimited_response_is_chunked_for_http11_clients,
    large_bodies_stream_both_ways,
    large_response_cut_short_closes_the_client_connection,
    large_close_delimited_response_reaches_an_http10_client,
    large_response_to_a_client_that_stops_reading_times_out,
    upstream_connections_are_reused,
    pipelined_requests_are_answered_in_order,
    round_robin_spreads_requests_over_two_origins,
    requests_without_a_route_get_404,
    refused_upstream_is_502,
    stalled_origin_is_504,
    upgrade_answered_101_becomes_a_tunnel,
    upgrade_tunnel_copies_when_splice_is_off,
    large_bodies_are_copied_when_splice_is_off,
    request_pipelined_behind_a_large_body_is_answered,
    slow_request_head_gets_408,
    idle_keep_alive_connection_is_closed,
    client_that_stops_sending_its_body_gets_408,
    upstream_that_never_accepts_is_504,
    pool_keeps_at_most_its_idle_limit,
    pool_drops_connections_idle_past_their_timeout,
    early_answer_to_an_upload_reaches_the_client,
    early_answer_after_a_100_reaches_the_client,
    upgrade_answered_200_stays_http,
    graceful_shutdown_finishes_the_in_flight_request,
    ambiguous_requests_get_400_and_reach_no_upstream,
    ambiguous_upstream_response_is_502,
    expect_100_continue_is_answered,
    http10_clients_get_close_or_keep_alive,
    connections_over_the_limit_are_closed,
    head_responses_keep_content_length,
    hop_by_hop_fields_stay_on_their_hop,
    oversized_heads_get_431_and_long_targets_414,
    status_line_without_reason_is_relayed,
    h2c_upgrades_are_not_tunnelled,
    tunnel_to_a_client_that_stops_reading_is_closed,
    absolute_form_targets_cannot_inject_fields,
);

fn content_length_bodies_pass_both_ways(driver: DriverChoice) {
    let origin = Origin::echo();
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    c.send(b"POST /echo HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhello");
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"hello");
    assert_eq!(r.header("content-length"), Some("5"));
    let seen = &origin.seen()[0];
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.target, "/echo");
    assert_eq!(seen.header("content-length"), Some("5"));
    assert_eq!(seen.header("host"), Some("app.test"));
    assert_eq!(seen.body, b"hello");
    // The connection stays usable.
    assert_eq!(c.get("/again").status, 200);
}

fn chunked_request_is_reframed_and_chunked_response_relayed(driver: DriverChoice) {
    let origin = Origin::start(|req| {
        let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for part in req.body.chunks(3) {
            out.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
            out.extend_from_slice(part);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"0\r\nX-Trailer: t\r\n\r\n");
        Reply::Bytes(out)
    });
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    c.send(
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Sum: 9\r\nContent-Length: 3\r\n\r\n",
    );
    let r = c.response();
    assert_eq!(r.status, 200);
    assert!(r.chunked);
    assert_eq!(r.body, b"wikipedia");
    assert_eq!(r.trailers, [("X-Trailer".to_owned(), "t".to_owned())]);
    let seen = &origin.seen()[0];
    assert!(seen.chunked, "the origin got a chunked body");
    assert_eq!(seen.body, b"wikipedia");
    // Re-framed, not copied: the extension is gone, the trailer kept, and a
    // framing field in the trailers dropped.
    assert_eq!(
        String::from_utf8_lossy(&seen.wire_body),
        "4\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Sum: 9\r\n\r\n"
    );
    assert_eq!(seen.header("content-length"), None);
}

fn a_malformed_chunk_after_the_head_fails_the_request(driver: DriverChoice) {
    let origin = Origin::echo();
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwiki\r\n");
    // The head and the good chunk are on their way upstream before the bad
    // size arrives, so only the relay can catch it.
    let mut waited = 0;
    while origin.raw_bytes() == 0 && waited < 500 {
        thread::sleep(Duration::from_millis(10));
        waited += 1;
    }
    assert!(origin.raw_bytes() > 0, "the request went upstream");
    c.send(b"zz\r\nmore\r\n0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 400);
    assert!(c.closed_within(Duration::from_secs(5)));
    assert!(
        origin.seen().is_empty(),
        "the origin never got a complete request"
    );
}

fn close_delimited_response_is_chunked_for_http11_clients(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::BytesThenClose(b"HTTP/1.1 200 OK\r\n\r\nuntil the end".to_vec()));
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    let r = c.get("/");
    assert_eq!(r.status, 200);
    assert!(r.chunked, "re-framed so the client connection survives");
    assert_eq!(r.body, b"until the end");
    assert_eq!(c.get("/").body, b"until the end");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn large_bodies_stream_both_ways(driver: DriverChoice) {
    let origin = Origin::echo();
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let body = pattern(3 << 20, 7);
    let mut c = proxy.client();
    let mut writer = c.stream.try_clone().expect("clone");
    let upload = body.clone();
    let sender = thread::spawn(move || {
        writer
            .write_all(
                format!(
                    "PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
                    upload.len()
                )
                .as_bytes(),
            )
            .unwrap();
        writer.write_all(&upload).unwrap();
    });
    let r = c.response();
    sender.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert!(r.body == body, "body changed in transit");

    // The same size, chunked on the way up.
    let mut writer = c.stream.try_clone().expect("clone");
    let upload = body.clone();
    let sender = thread::spawn(move || {
        writer
            .write_all(b"POST /big HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        for part in upload.chunks(100_000) {
            writer
                .write_all(format!("{:x}\r\n", part.len()).as_bytes())
                .unwrap();
            writer.write_all(part).unwrap();
            writer.write_all(b"\r\n").unwrap();
        }
        writer.write_all(b"0\r\n\r\n").unwrap();
    });
    let r = c.response();
    sender.join().unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == body, "chunked body changed in transit");
    assert_eq!(origin.seen()[1].body.len(), body.len());

    // Large bodies (spliced between the sockets) leave both connections
    // usable: a small request follows on the same two.
    assert_eq!(c.get("/after").status, 200);
    assert_eq!(origin.seen()[2].target, "/after");
    assert_eq!(
        origin.connections(),
        1,
        "one upstream connection carried all three"
    );
    // The Content-Length bodies (the first upload, both echoes) were
    // spliced, but for the bytes read with their heads; the chunked upload
    // was re-framed, so copied.
    let spliced = spliced(&proxy);
    let len = body.len() as u64;
    assert!(
        (3 * len * 9 / 10..=3 * len).contains(&spliced),
        "spliced {spliced} bytes"
    );
}

fn large_bodies_are_copied_when_splice_is_off(driver: DriverChoice) {
    let origin = Origin::echo();
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    setup.settings.splice = false;
    let proxy = setup.start();
    let body = pattern(3 << 20, 5);
    let mut c = proxy.client();
    let mut request = format!(
        "PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let mut writer = c.stream.try_clone().expect("clone");
    let sender = thread::spawn(move || writer.write_all(&request).unwrap());
    let r = c.response();
    sender.join().unwrap();
    assert!(r.body == body, "body changed in transit");
    assert_eq!(spliced(&proxy), 0);
}

fn request_pipelined_behind_a_large_body_is_answered(driver: DriverChoice) {
    let origin = Origin::start(|req| Reply::ok(format!("{} {} {}", req.method, req.target, req.body.len())));
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let body = pattern(2 << 20, 9);
    let mut c = proxy.client();
    // The body and the next request leave in one write: the splice must
    // stop at the body's end and leave the next head to the parser.
    let mut bytes = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(&body);
    bytes.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut writer = c.stream.try_clone().expect("clone");
    let sender = thread::spawn(move || writer.write_all(&bytes).unwrap());
    assert_eq!(c.response().text(), format!("POST /upload {}", body.len()));
    assert_eq!(c.response().text(), "GET /next 0");
    sender.join().unwrap();
    assert!(origin.seen()[0].body == body, "body changed in transit");
    assert!(spliced(&proxy) > 0, "the body was spliced");
}

/// The head of a response announcing `len` body bytes, then `sent` of them.
fn truncated_response(len: usize, sent: usize) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {len}\r\n\r\n").into_bytes();
    out.extend_from_slice(&pattern(sent, 3));
    out
}

fn large_response_cut_short_closes_the_client_connection(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::BytesThenClose(truncated_response(4 << 20, 1 << 20)));
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    c.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.send(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n");
    let error = c.read_response(false).expect_err("the body is short");
    assert_eq!(
        error.kind(),
        std::io::ErrorKind::UnexpectedEof,
        "the proxy closed the connection rather than leave the client waiting: {error}"
    );
}

fn large_close_delimited_response_reaches_an_http10_client(driver: DriverChoice) {
    let body = pattern(3 << 20, 11);
    let mut reply = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    reply.extend_from_slice(&body);
    let origin = Origin::start(move |_| Reply::BytesThenClose(reply.clone()));
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    c.send(b"GET /big HTTP/1.0\r\nHost: a\r\n\r\n");
    let raw = read_to_close(&mut c.stream, Duration::from_secs(10));
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    assert!(
        !head.contains("transfer-encoding"),
        "an HTTP/1.0 client gets the body as it came"
    );
    assert_eq!(raw.len() - head_end, body.len());
    assert!(raw[head_end..] == body[..], "body changed in transit");
    assert!(
        spliced(&proxy) >= 2 << 20,
        "a body that ends at close is spliced too"
    );
}

fn large_response_to_a_client_that_stops_reading_times_out(driver: DriverChoice) {
    flood_a_client_that_stops_reading(
        driver,
        b"HTTP/1.1 200 OK\r\nContent-Length: 1099511627776\r\n\r\n",
        b"GET /endless HTTP/1.1\r\nHost: a\r\n\r\n",
        |setup| setup.settings.timeouts.client_io = Duration::from_millis(400),
    );
}

/// An origin answers `head` to `request`, then sends bytes until the proxy
/// lets go of it; the client reads a megabyte of them, then nothing more.
/// The proxy, set up by `configure`, must end both connections by a
/// deadline.
fn flood_a_client_that_stops_reading(
    driver: DriverChoice,
    head: &'static [u8],
    request: &[u8],
    configure: impl FnOnce(&mut ProxySetup),
) {
    let (ended_tx, ended_rx) = std::sync::mpsc::channel::<u64>();
    let ended_tx = std::sync::Mutex::new(ended_tx);
    let origin = Origin::start(move |_| {
        let ended = ended_tx.lock().unwrap().clone();
        Reply::Raw(Box::new(move |mut s: std::net::TcpStream| {
            s.write_all(head).unwrap();
            let chunk = vec![b'z'; 64 * 1024];
            let mut sent = 0u64;
            while s.write_all(&chunk).is_ok() {
                sent += chunk.len() as u64;
            }
            let _ = ended.send(sent);
        }))
    });
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    configure(&mut setup);
    let proxy = setup.start();
    let mut c = proxy.client();
    c.send(request);
    assert!(c.read_response(true).unwrap().status < 300);
    // The bytes flow: a megabyte arrives...
    let mut got = c.take_buffered().len();
    let mut buf = vec![0u8; 64 * 1024];
    while got < 1 << 20 {
        let n = c.stream.read(&mut buf).unwrap();
        assert!(n > 0 && buf[..n].iter().all(|&b| b == b'z'));
        got += n;
    }
    // ...then the client takes nothing more, and the proxy lets go of
    // both connections.
    let sent = ended_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the proxy closed the upstream of a client that stopped reading");
    assert!(sent >= 1 << 20);
    assert_eq!(timeouts(&proxy), 1, "a deadline ended it");
    // The client connection ends too: what it had not read, then its end
    // (or a reset, as the proxy closed with bytes unsent).
    c.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the client connection stayed open: {e}"),
        }
    }
}

fn upstream_connections_are_reused(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("x"));
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    for _ in 0..5 {
        let mut c = proxy.client();
        for _ in 0..10 {
            assert_eq!(c.get("/").status, 200);
        }
    }
    assert_eq!(origin.seen().len(), 50);
    assert_eq!(
        origin.connections(),
        1,
        "one upstream connection carried all 50 requests"
    );
}

fn pipelined_requests_are_answered_in_order(driver: DriverChoice) {
    let origin = Origin::start(|req| {
        if req.target == "/slow" {
            thread::sleep(Duration::from_millis(200));
        }
        Reply::ok(format!(
            "{} {} {}",
            req.method,
            req.target,
            String::from_utf8_lossy(&req.body)
        ))
    });
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    c.send(
        b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\nbodyGET /3 HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    assert_eq!(c.response().text(), "GET /slow ");
    assert_eq!(c.response().text(), "POST /2 body");
    assert_eq!(c.response().text(), "GET /3 ");
}

fn round_robin_spreads_requests_over_two_origins(driver: DriverChoice) {
    let a = Origin::start(|_| Reply::ok("a"));
    let b = Origin::start(|_| Reply::ok("b"));
    let proxy = TestProxy::reverse(driver, &[a.addr(), b.addr()]);
    let mut c = proxy.client();
    let answers: Vec<String> = (0..10).map(|_| c.get("/").text()).collect();
    assert_eq!(a.seen().len(), 5);
    assert_eq!(b.seen().len(), 5);
    assert!(
        answers.windows(2).all(|w| w[0] != w[1]),
        "alternating: {answers:?}"
    );
}

fn requests_without_a_route_get_404(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("api"));
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    setup.routes = vec![RouteSpec {
        host: Some("api.test".into()),
        path_prefix: "/api".into(),
        upstream: 0,
    }];
    let proxy = setup.start();
    let mut c = proxy.client();
    c.send(b"GET /api/x HTTP/1.1\r\nHost: API.test:80\r\n\r\n");
    assert_eq!(c.response().text(), "api");
    c.send(b"GET /other HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!(c.response().status, 404);
    c.send(b"GET /api/x HTTP/1.1\r\nHost: other.test\r\n\r\n");
    assert_eq!(c.response().status, 404);
    // A 404 without a body keeps the connection.
    c.send(b"GET /api/y HTTP/1.1\r\nHost: api.test\r\n\r\n");
    assert_eq!(c.response().status, 200);
    assert_eq!(origin.seen().len(), 2);
}

fn refused_upstream_is_502(driver: DriverChoice) {
    let proxy = TestProxy::reverse(driver, &[refused_addr()]);
    let mut c = proxy.client();
    let r = c.get("/");
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), "502 Bad Gateway\n");
    assert_eq!(r.header("connection"), Some("close"));
}

fn stalled_origin_is_504(driver: DriverChoice) {
    // Only the first connection stalls.
    let origin = Origin::start(|req| {
        if req.connection == 1 {
            thread::sleep(Duration::from_secs(3));
            return Reply::ok("late");
        }
        Reply::ok("fresh")
    });
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    setup.settings.timeouts.upstream_response = Duration::from_millis(300);
    let proxy = setup.start();
    let mut c = proxy.client();
    let r = c.get("/");
    assert_eq!(r.status, 504);
    assert_eq!(r.text(), "504 Gateway Timeout\n");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(5)));
    assert_eq!(proxy.handle().stats()[0].timeouts.load(Ordering::Relaxed), 1);
    // The timed-out upstream connection was not pooled: the next request
    // goes out on a new one and gets its own answer, not the late one.
    let mut c = proxy.client();
    assert_eq!(c.get("/").text(), "fresh");
    assert_eq!(origin.connections(), 2);
}

fn echo_upgrade(mut stream: std::net::TcpStream) {
    stream
        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

fn upgrade_answered_101_becomes_a_tunnel(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::Raw(Box::new(echo_upgrade)));
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    // Short, so that a half-close that does not end the tunnel shows as a
    // timeout within the test's wait.
    setup.settings.timeouts.tunnel_idle = Duration::from_secs(2);
    let proxy = setup.start();
    check_upgrade_tunnel(&proxy, &origin);
    assert!(
        eventually(Duration::from_secs(5), || spliced(&proxy) > 0),
        "the tunnel between two TCP sockets spliced"
    );
}

fn upgrade_tunnel_copies_when_splice_is_off(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::Raw(Box::new(echo_upgrade)));
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    setup.settings.splice = false;
    setup.settings.timeouts.tunnel_idle = Duration::from_secs(2);
    let proxy = setup.start();
    check_upgrade_tunnel(&proxy, &origin);
    // Counted when the tunnel's task ends, after the client saw its end.
    assert!(eventually(Duration::from_secs(5), || proxy.handle().stats()[0]
        .active
        .load(Ordering::Relaxed)
        == 0));
    assert_eq!(spliced(&proxy), 0);
}

/// Bytes the proxy's first worker moved with splice(2).
fn spliced(proxy: &TestProxy) -> u64 {
    proxy.handle().stats()[0].spliced_bytes.load(Ordering::Relaxed)
}

/// Whether `condition` holds within 5 s (counters are updated when a
/// transfer's task finishes, just after its last bytes leave).
/// Sends `normal`, then one byte of TCP urgent data, then `after`.
#[allow(unsafe_code)] // std cannot send urgent data (MSG_OOB)
fn send_with_urgent_byte(stream: &std::net::TcpStream, normal: &[u8], after: &[u8]) {
    use std::os::fd::AsRawFd;
    let mut s = stream;
    s.write_all(normal).unwrap();
    // SAFETY: a one-byte buffer on an open socket.
    let sent = unsafe { libc::send(stream.as_raw_fd(), b"U".as_ptr().cast(), 1, libc::MSG_OOB) };
    assert_eq!(sent, 1);
    s.write_all(after).unwrap();
}

/// A WebSocket upgrade through `proxy` to the echoing `origin`: raw bytes
/// both ways (urgent data stepped over, as by any TCP reader), then a
/// half-close from the client that ends the tunnel.
fn check_upgrade_tunnel(proxy: &TestProxy, origin: &Origin) {
    let mut c = proxy.client();
    c.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    let r = c.read_response(true).unwrap();
    assert_eq!(r.status, 101);
    assert_eq!(r.header("upgrade"), Some("websocket"));
    let seen = &origin.seen()[0];
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(seen.header("connection"), Some("upgrade"));
    // Now raw bytes flow both ways, not HTTP.
    for msg in [&b"not http at all\r\n\r\n"[..], b"\x00\x01binary"] {
        c.stream.write_all(msg).unwrap();
        let mut got = vec![0u8; msg.len()];
        c.stream.read_exact(&mut got).unwrap();
        assert_eq!(got, msg);
    }
    // Urgent data is not part of the stream; the bytes around it pass (a
    // splice stalls at the urgent mark, and must not spin there).
    c.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    send_with_urgent_byte(&c.stream, b"before", b"after");
    let mut got = vec![0u8; 11];
    c.stream.read_exact(&mut got).unwrap();
    assert_eq!(got, b"beforeafter");
    // Half-close: the client's end reaches the origin, which closes, which reaches us.
    c.stream.shutdown(std::net::Shutdown::Write).unwrap();
    assert!(read_to_close(&mut c.stream, Duration::from_secs(5)).is_empty());
    assert_eq!(
        proxy.handle().stats()[0].timeouts.load(Ordering::Relaxed),
        0,
        "ended by the half-close, not a deadline"
    );
}

fn upgrade_answered_200_stays_http(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("no upgrade for you"));
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    c.send(b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "no upgrade for you");
    // The next bytes are parsed as HTTP again: a second request works and
    // garbage is rejected rather than tunnelled.
    assert_eq!(c.get("/next").status, 200);
    c.send(b"\x00\x01 not http\r\n\r\n");
    assert_eq!(c.response().status, 400);
    assert_eq!(origin.seen().len(), 2);
}

fn graceful_shutdown_finishes_the_in_flight_request(driver: DriverChoice) {
    let origin = Origin::start(|_| {
        thread::sleep(Duration::from_millis(600));
        Reply::ok("finished")
    });
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut idle = proxy.client();
    // Make the idle connection a real keep-alive one first.
    let _ = idle.get("/warm");
    let mut busy = proxy.client();
    busy.send(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n");
    thread::sleep(Duration::from_millis(150));
    let started = Instant::now();
    proxy.begin_shutdown();
    assert!(
        idle.closed_within(Duration::from_secs(2)),
        "idle keep-alive connection closed at once"
    );
    let r = busy.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "finished");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(busy.closed_within(Duration::from_secs(2)));
    proxy.stop();
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "drain did not wait for the timeout"
    );
}

fn ambiguous_requests_get_400_and_reach_no_upstream(driver: DriverChoice) {
    let origin = Origin::echo();
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let cases: &[&[u8]] = &[
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\nHost: a\n\n",
    ];
    for case in cases {
        let mut c = proxy.client();
        c.send(case);
        let r = c.response();
        assert_eq!(r.status, 400, "for {:?}", String::from_utf8_lossy(case));
        assert_eq!(r.header("connection"), Some("close"));
        assert!(c.closed_within(Duration::from_secs(2)), "closed after 400");
    }
    assert_eq!(origin.connections(), 0, "nothing was forwarded");
}

fn ambiguous_upstream_response_is_502(driver: DriverChoice) {
    let origin = Origin::start(|req| {
        if req.target == "/bad" {
            Reply::Bytes(
                b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                    .to_vec(),
            )
        } else {
            Reply::ok("good")
        }
    });
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    assert_eq!(c.get("/bad").status, 502);
    let mut c = proxy.client();
    assert_eq!(c.get("/good").text(), "good");
    assert_eq!(
        origin.connections(),
        2,
        "the connection that sent the bad response was discarded"
    );
}

fn expect_100_continue_is_answered(driver: DriverChoice) {
    let origin = Origin::echo();
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    c.send(b"PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 7\r\n\r\n");
    let interim = c.read_response(true).unwrap();
    assert_eq!(interim.status, 100);
    c.send(b"payload");
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"payload");
    assert_eq!(origin.seen()[0].header("expect"), None);
}

fn http10_clients_get_close_or_keep_alive(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("ten"));
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    c.send(b"GET / HTTP/1.0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.text(), "ten");
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.closed_within(Duration::from_secs(2)));

    let mut c = proxy.client();
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    let r = c.response();
    assert_eq!(r.header("connection"), Some("keep-alive"));
    c.send(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(c.response().text(), "ten");
}

fn connections_over_the_limit_are_closed(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("in"));
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    setup.max_connections = 1;
    let proxy = setup.start();
    let mut first = proxy.client();
    assert_eq!(first.get("/").status, 200);
    let mut second = proxy.client();
    second.stream.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").ok();
    assert!(
        second.closed_within(Duration::from_secs(2)),
        "over the limit: closed at once"
    );
    let rejected: u64 = proxy
        .handle()
        .stats()
        .iter()
        .map(|s| s.rejected_over_limit.load(std::sync::atomic::Ordering::Relaxed))
        .sum();
    assert_eq!(rejected, 1);
    assert_eq!(first.get("/").status, 200, "the first connection is unaffected");
}

fn head_responses_keep_content_length(driver: DriverChoice) {
    let origin = Origin::start(|req| {
        assert_eq!(req.method, "HEAD");
        Reply::Bytes(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n".to_vec())
    });
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    c.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
    let r = c.read_response(true).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1234"));
    c.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(
        c.read_response(true).unwrap().status,
        200,
        "no body bytes were expected in between"
    );
}

fn hop_by_hop_fields_stay_on_their_hop(driver: DriverChoice) {
    let origin = Origin::start(|_| {
        Reply::Bytes(b"HTTP/1.1 200 OK\r\nConnection: X-Secret-Resp\r\nX-Secret-Resp: 1\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n".to_vec())
    });
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nProxy-Authorization: Basic dTpw\r\nTE: trailers\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-secret-resp"), None);
    assert_eq!(r.header("keep-alive"), None);
    assert!(
        !r.header("connection")
            .unwrap_or("")
            .to_ascii_lowercase()
            .contains("x-secret"),
        "the upstream's Connection field stayed on its hop"
    );
    assert_eq!(r.header("via"), Some("1.1 ringway"));
    let seen = &origin.seen()[0];
    for gone in ["connection", "x-secret", "proxy-authorization", "te"] {
        assert_eq!(seen.header(gone), None, "{gone} was forwarded");
    }
    assert_eq!(seen.header("x-forwarded-for"), Some("203.0.113.9, 127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("a"));
    assert_eq!(seen.header("via"), Some("1.1 ringway"));
}

fn oversized_heads_get_431_and_long_targets_414(driver: DriverChoice) {
    let origin = Origin::echo();
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    setup.settings.limits.max_header_bytes = 4096;
    setup.settings.limits.max_headers = 10;
    setup.settings.limits.max_uri_bytes = 512;
    let proxy = setup.start();

    // At each limit, requests pass.
    let mut c = proxy.client();
    let ten: String = (0..9).map(|i| format!("X-{i}: v\r\n")).collect();
    c.send(format!("GET /{} HTTP/1.1\r\nHost: a\r\n{ten}\r\n", "u".repeat(511)).as_bytes());
    assert_eq!(c.response().status, 200, "10 fields and a 512-byte target");
    let head = |filler: usize| {
        format!(
            "GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n",
            "b".repeat(filler)
        )
    };
    let fits = 4096 - head(0).len();
    assert_eq!(head(fits).len(), 4096);
    let mut c = proxy.client();
    c.send(head(fits).as_bytes());
    assert_eq!(c.response().status, 200, "a 4096-byte head");
    assert_eq!(origin.seen().len(), 2);
    let mut c = proxy.client();
    c.send(head(fits + 1).as_bytes());
    assert_eq!(c.response().status, 431, "one byte over");

    let mut c = proxy.client();
    c.send(format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {}\r\n\r\n", "b".repeat(5000)).as_bytes());
    assert_eq!(c.response().status, 431);

    let mut c = proxy.client();
    let many: String = (0..11).map(|i| format!("X-{i}: v\r\n")).collect();
    c.send(format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n").as_bytes());
    assert_eq!(c.response().status, 431);

    let mut c = proxy.client();
    c.send(format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "u".repeat(512)).as_bytes());
    assert_eq!(c.response().status, 414, "a 513-byte target");
    assert_eq!(origin.seen().len(), 2, "nothing refused reached the origin");
}

fn status_line_without_reason_is_relayed(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::Bytes(b"HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok".to_vec()));
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    let r = c.get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "ok");
    assert_eq!(c.get("/").status, 200);
}

fn h2c_upgrades_are_not_tunnelled(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("plain"));
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    c.send(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n");
    assert_eq!(c.response().text(), "plain");
    let seen = &origin.seen()[0];
    assert_eq!(seen.header("upgrade"), None, "h2c is not offered to the upstream");
    assert_eq!(
        seen.header("http2-settings"),
        None,
        "named in Connection: hop-by-hop"
    );
}

fn absolute_form_targets_cannot_inject_fields(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("reached"));
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    for target in [
        "http://a\",for=6.6.6.6;x=\"/",
        "http://user@evil.test/",
        "http://a\\b/",
    ] {
        let mut c = proxy.client();
        c.send(format!("GET {target} HTTP/1.1\r\nHost: ok.test\r\n\r\n").as_bytes());
        assert_eq!(c.response().status, 400, "{target}");
    }
    // A valid absolute-form target wins over Host, as RFC 9112 says.
    let mut c = proxy.client();
    c.send(b"GET http://real.test/p?q HTTP/1.1\r\nHost: fake.test\r\n\r\n");
    assert_eq!(c.response().text(), "reached");
    let seen = &origin.seen()[0];
    assert_eq!(seen.target, "/p?q");
    assert_eq!(seen.header("host"), Some("real.test"));
    assert_eq!(seen.header("x-forwarded-host"), Some("real.test"));
    assert_eq!(origin.seen().len(), 1);
}

fn tunnel_to_a_client_that_stops_reading_is_closed(driver: DriverChoice) {
    flood_a_client_that_stops_reading(
        driver,
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        |setup| setup.settings.timeouts.tunnel_idle = Duration::from_millis(400),
    );
}

/// The first worker's count of waits that reached their deadline.
fn timeouts(proxy: &TestProxy) -> u64 {
    proxy.handle().stats()[0].timeouts.load(Ordering::Relaxed)
}

fn slow_request_head_gets_408(driver: DriverChoice) {
    // Slowloris: a head that never ends.
    partial_request_gets_408(
        driver,
        |t| t.client_head = Duration::from_millis(300),
        b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: 1\r\n",
    );
}

/// A client sends `partial` and nothing more: once the timeout `limit`
/// sets runs out it gets a 408 and a closed connection, counted as one
/// timeout, and nothing reaches the origin.
fn partial_request_gets_408(
    driver: DriverChoice,
    limit: impl FnOnce(&mut ringway_http::Timeouts),
    partial: &[u8],
) {
    let origin = Origin::start(|_| Reply::ok("x"));
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    limit(&mut setup.settings.timeouts);
    let proxy = setup.start();
    let mut c = proxy.client();
    c.send(partial);
    let raw = read_to_close(&mut c.stream, Duration::from_secs(10));
    assert!(
        raw.starts_with(b"HTTP/1.1 408 "),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    assert!(origin.seen().is_empty(), "nothing whole reached the origin");
    assert_eq!(timeouts(&proxy), 1);
}

fn idle_keep_alive_connection_is_closed(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("x"));
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    setup.settings.timeouts.idle = Duration::from_millis(300);
    let proxy = setup.start();
    let mut c = proxy.client();
    assert_eq!(c.get("/").status, 200);
    // Quiet after its response: closed without a word.
    assert!(read_to_close(&mut c.stream, Duration::from_secs(10)).is_empty());
    assert_eq!(timeouts(&proxy), 1);
}

fn client_that_stops_sending_its_body_gets_408(driver: DriverChoice) {
    partial_request_gets_408(
        driver,
        |t| t.client_io = Duration::from_millis(300),
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nonly this",
    );
}

fn upstream_that_never_accepts_is_504(driver: DriverChoice) {
    // A listener whose accept queue is full: the kernel drops further
    // SYNs, so a connect neither succeeds nor is refused.
    let full = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = full.local_addr().unwrap();
    // SAFETY: listen(2) on a socket this test owns, to shrink its queue.
    #[allow(unsafe_code)]
    let shrunk = unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&full), 0) };
    assert_eq!(shrunk, 0);
    let mut queued = Vec::new();
    while let Ok(s) = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
        queued.push(s);
        assert!(queued.len() < 64, "the accept queue never filled");
    }
    let mut setup = ProxySetup::new(driver, &[addr]);
    setup.settings.timeouts.connect = Duration::from_millis(300);
    let proxy = setup.start();
    let mut c = proxy.client();
    // Well past the 300 ms connect timeout, and short of the 5 s default:
    // a connect that ignored the setting would not answer in time.
    c.stream.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let r = c.get("/");
    assert_eq!(r.status, 504);
}

/// Sends `count` requests on as many client connections at once, against
/// an origin that answers slowly, so that each needs its own upstream
/// connection; all must answer 200.
fn concurrent_requests(proxy: &TestProxy, count: usize) {
    let clients: Vec<_> = (0..count)
        .map(|_| {
            let mut c = proxy.client();
            c.send(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n");
            c
        })
        .collect();
    for mut c in clients {
        assert_eq!(c.response().status, 200);
    }
}

fn pool_keeps_at_most_its_idle_limit(driver: DriverChoice) {
    let origin = Origin::start(|_| {
        thread::sleep(Duration::from_millis(200));
        Reply::ok("x")
    });
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    setup.pool.max_idle_per_server = 1;
    let proxy = setup.start();
    concurrent_requests(&proxy, 3);
    assert_eq!(
        origin.connections(),
        3,
        "three requests at once, three connections"
    );
    // One of the three was kept; the next three at once reuse it and open two.
    concurrent_requests(&proxy, 3);
    assert_eq!(origin.connections(), 5);
}

fn pool_drops_connections_idle_past_their_timeout(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("x"));
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    setup.pool.idle_timeout = Duration::from_millis(200);
    let proxy = setup.start();
    let mut c = proxy.client();
    assert_eq!(c.get("/").status, 200);
    assert_eq!(c.get("/").status, 200);
    assert_eq!(origin.connections(), 1, "reused while fresh");
    thread::sleep(Duration::from_millis(500));
    assert_eq!(c.get("/").status, 200);
    assert_eq!(
        origin.connections(),
        2,
        "a connection idle past the timeout is not reused"
    );
}

fn early_answer_to_an_upload_reaches_the_client(driver: DriverChoice) {
    early_answer_reaches_the_client(driver, b"");
}

fn early_answer_after_a_100_reaches_the_client(driver: DriverChoice) {
    early_answer_reaches_the_client(driver, b"HTTP/1.1 100 Continue\r\n\r\n");
}

/// The origin sends `interim`, then refuses the upload after its head and
/// closes at once, leaving the body unread (its kernel resets the
/// connection). The client gets the refusal, not a 502, and a lingering
/// close rather than a reset.
fn early_answer_reaches_the_client(driver: DriverChoice, interim: &'static [u8]) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin_addr = listener.local_addr().unwrap();
    let origin = thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let mut answer = interim.to_vec();
        answer.extend_from_slice(
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 8\r\nConnection: close\r\n\r\ntoo big\n",
        );
        s.write_all(&answer).unwrap();
        String::from_utf8_lossy(&head).into_owned()
    });
    let proxy = TestProxy::reverse(driver, &[origin_addr]);
    let mut c = proxy.client();
    c.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let body = pattern(8 << 20, 1);
    c.send(
        format!(
            "PUT /up HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(c.read_response(true).unwrap().status, 100);
    let mut writer = c.stream.try_clone().expect("clone");
    // The proxy stops reading the body; the rest of it may not go out.
    let sender = thread::spawn(move || {
        let _ = writer.write_all(&body);
    });
    let r = c.response();
    assert_eq!(r.status, 413, "the origin's answer, not a 502");
    assert_eq!(r.body, b"too big\n");
    assert_eq!(r.header("connection"), Some("close"));
    // The connection closes: what is left of the body is not a request.
    let _ = c.stream.shutdown(std::net::Shutdown::Write);
    let _ = read_to_close(&mut c.stream, Duration::from_secs(10));
    sender.join().unwrap();
    assert!(origin.join().unwrap().starts_with("PUT /up HTTP/1.1\r\n"));
}
