//! The upstream pool's promise, over real loopback sockets on both drivers:
//! a pooled connection on which anything arrived while it was idle (stray
//! bytes, a FIN, a reset) is never handed to another request, whatever
//! the idle time, and a request that a reused connection failed before
//! the upstream could read it is retried once on a fresh one.

use std::{
    collections::HashMap,
    io::Write,
    net::{SocketAddr, TcpListener},
    sync::{mpsc, Arc, Mutex},
    thread,
    time::Duration,
};

use ringway_core::DriverChoice;
use ringway_tests::{both_drivers, client, eventually, Origin, ProxySetup, Reply, TestProxy};

both_drivers!(
    stray_bytes_after_a_response_reach_no_client,
    a_fin_while_idle_never_fails_a_post,
    a_reset_after_the_request_arrived_is_retried_only_if_idempotent,
    a_request_the_upstream_read_and_dropped_is_retried_only_if_idempotent,
    idle_connections_past_their_timeout_are_closed_without_a_request,
);

/// What a misbehaving origin sends after a complete response.
#[derive(Clone, Copy, Debug)]
enum Stray {
    /// A second, unrequested response.
    Response,
    /// More body than its Content-Length said.
    LongBody,
    /// A body after the response to a HEAD.
    HeadBody,
}

const INJECTED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nINJECTED";

/// An origin that answers every request on every connection, then writes
/// `stray` bytes a moment later (after the proxy has read the response)
/// and reports on `written` that they are in the proxy's socket.
fn misbehaving_origin(stray: Stray, written: mpsc::Sender<()>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for (served, stream) in listener.incoming().enumerate() {
            let Ok(mut stream) = stream else { return };
            let written = written.clone();
            let first = served + 1;
            thread::spawn(move || {
                let mut buf = Vec::new();
                let sink = std::sync::atomic::AtomicUsize::new(0);
                let mut n = first * 1000;
                while let Ok(Some(req)) = client::read_request(&mut stream, &mut buf, &sink) {
                    n += 1;
                    let body = format!("genuine-{n}");
                    let (response, extra): (Vec<u8>, &[u8]) = match stray {
                        Stray::Response => (ok(&body, body.len()), INJECTED),
                        // The declared length covers the genuine body only.
                        Stray::LongBody => (ok(&body, body.len()), INJECTED),
                        Stray::HeadBody => {
                            assert_eq!(req.method, "HEAD");
                            (
                                format!("HTTP/1.1 200 OK\r\nX-N: {body}\r\nContent-Length: 8\r\n\r\n")
                                    .into_bytes(),
                                INJECTED,
                            )
                        }
                    };
                    if stream.write_all(&response).is_err() {
                        return;
                    }
                    thread::sleep(Duration::from_micros(300));
                    // On loopback the bytes are in the proxy's receive
                    // queue once the write returns.
                    let _ = stream.write_all(extra);
                    let _ = written.send(());
                }
            });
        }
    });
    addr
}

fn ok(body: &str, declared: usize) -> Vec<u8> {
    format!("HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\n\r\n{body}").into_bytes()
}

fn stray_bytes_after_a_response_reach_no_client(driver: DriverChoice) {
    for stray in [Stray::Response, Stray::LongBody, Stray::HeadBody] {
        let (tx, rx) = mpsc::channel();
        let origin = misbehaving_origin(stray, tx);
        let proxy = TestProxy::reverse(driver, &[origin]);
        // Each request comes from a new client, sent the moment the stray
        // bytes are waiting on the connection the last one used: the
        // injected response must reach nobody.
        for trial in 0..20 {
            let mut c = proxy.client();
            let head = matches!(stray, Stray::HeadBody);
            let method = if head { "HEAD" } else { "GET" };
            c.send(format!("{method} /t{trial} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes());
            let r = c.read_response(head).expect("a response");
            assert_eq!(r.status, 200, "{stray:?} trial {trial}");
            let genuine = if head {
                r.header("x-n").unwrap_or_default().to_owned()
            } else {
                r.text()
            };
            assert!(
                genuine.starts_with("genuine-"),
                "{stray:?} trial {trial}: a client received {genuine:?}"
            );
            rx.recv_timeout(Duration::from_secs(5))
                .expect("stray bytes written");
        }
    }
}

fn a_fin_while_idle_never_fails_a_post(driver: DriverChoice) {
    // Closes after every response without saying so: each pooled
    // connection is dead, its FIN in the proxy's socket (the test waits
    // for the close), by the time the next request could use it.
    let origin = Origin::start(|req| {
        let body = format!("{} {}", req.method, String::from_utf8_lossy(&req.body));
        Reply::BytesThenClose(ok(&body, body.len()))
    });
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    for i in 0..40 {
        c.send(
            format!(
                "POST /{i} HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n{:02}",
                i % 100
            )
            .as_bytes(),
        );
        let r = c.response();
        assert_eq!(r.status, 200, "POST {i}");
        assert_eq!(r.text(), format!("POST {:02}", i % 100));
        assert!(
            eventually(Duration::from_secs(10), || origin.closed() == i + 1),
            "the origin closed"
        );
    }
    assert_eq!(origin.seen().len(), 40, "each POST reached the origin once");
}

/// An origin whose first connection answers one request, then resets the
/// connection when the next one arrives, leaving it unread (its kernel
/// had acknowledged it: from outside, a server that read part of it and
/// crashed looks the same); later connections answer "second". Returns
/// its address and the log of what it read.
fn resetting_origin() -> (SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let log = Arc::clone(&seen);
    thread::spawn(move || {
        let (mut first, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        let sink = std::sync::atomic::AtomicUsize::new(0);
        let req = client::read_request(&mut first, &mut buf, &sink)
            .unwrap()
            .unwrap();
        log.lock()
            .unwrap()
            .push(format!("1 {} {}", req.method, req.target));
        first.write_all(&ok("first", 5)).unwrap();
        let mut byte = [0u8; 1];
        first.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        assert_eq!(first.peek(&mut byte).unwrap(), 1);
        drop(first);
        for second in listener.incoming() {
            let Ok(mut second) = second else { return };
            let mut buf = Vec::new();
            while let Ok(Some(req)) = client::read_request(&mut second, &mut buf, &sink) {
                log.lock()
                    .unwrap()
                    .push(format!("2 {} {}", req.method, req.target));
                second.write_all(&ok("second", 6)).unwrap();
            }
        }
    });
    (addr, seen)
}

fn a_reset_after_the_request_arrived_is_retried_only_if_idempotent(driver: DriverChoice) {
    let (addr, seen) = resetting_origin();
    let proxy = TestProxy::reverse(driver, &[addr]);
    let mut c = proxy.client();
    assert_eq!(c.get("/a").text(), "first");
    c.send(b"POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc");
    assert_eq!(
        c.response().status,
        502,
        "the POST may have been acted on: not sent twice"
    );
    assert_eq!(*seen.lock().unwrap(), ["1 GET /a"]);

    let (addr, seen) = resetting_origin();
    let proxy = TestProxy::reverse(driver, &[addr]);
    let mut c = proxy.client();
    assert_eq!(c.get("/a").text(), "first");
    let r = c.get("/b");
    assert_eq!(
        (r.status, r.text()),
        (200, "second".to_owned()),
        "a GET goes again"
    );
    assert_eq!(*seen.lock().unwrap(), ["1 GET /a", "2 GET /b"]);
}

fn a_request_the_upstream_read_and_dropped_is_retried_only_if_idempotent(driver: DriverChoice) {
    // Every connection answers its first request and closes without an
    // answer after reading its second: the second may have been acted
    // on, so only an idempotent request is sent again.
    let per_connection = Mutex::new(HashMap::<usize, usize>::new());
    let origin = Origin::start(move |req| {
        let mut counts = per_connection.lock().unwrap();
        let n = counts.entry(req.connection).or_default();
        *n += 1;
        if *n == 1 {
            Reply::ok("ok")
        } else {
            Reply::Close
        }
    });
    let proxy = TestProxy::reverse(driver, &[origin.addr()]);
    let mut c = proxy.client();
    assert_eq!(c.get("/").text(), "ok");
    assert_eq!(c.get("/").text(), "ok", "the GET was retried");
    assert_eq!(origin.connections(), 2);
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx");
    assert_eq!(c.response().status, 502, "the POST was not sent twice");
    let posts = origin.seen().iter().filter(|s| s.method == "POST").count();
    assert_eq!(posts, 1);
}

fn idle_connections_past_their_timeout_are_closed_without_a_request(driver: DriverChoice) {
    // The origin keeps its connections open; nothing but the pool's own
    // upkeep can close this one, since no request comes to look at it.
    let origin = Origin::start(|_| Reply::ok("kept"));
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    setup.pool.idle_timeout = Duration::from_millis(300);
    let proxy = setup.start();
    let mut c = proxy.client();
    assert_eq!(c.get("/").text(), "kept");
    assert!(
        eventually(Duration::from_secs(10), || origin.closed() == 1),
        "the idle connection was closed once it expired"
    );
}
