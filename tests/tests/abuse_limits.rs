//! Limits that keep one client from tying the proxy up, over real loopback
//! sockets on both drivers: request body size, the least rate a body must
//! arrive at, and connections per client address.

use std::{
    io::{Read, Write},
    net::TcpStream,
    sync::atomic::Ordering,
    thread,
    time::Duration,
};

use ringway_core::DriverChoice;
use ringway_http::BodyRate;
use ringway_tests::{both_drivers, read_to_close, Origin, ProxySetup, Reply};

both_drivers!(
    bodies_over_max_body_get_413_before_reaching_the_upstream,
    a_body_slower_than_min_body_rate_gets_408,
    an_upstream_slow_to_read_does_not_count_against_the_client,
    connections_past_the_per_address_limit_are_closed,
);

fn bodies_over_max_body_get_413_before_reaching_the_upstream(driver: DriverChoice) {
    let origin = Origin::start(|req| Reply::ok(format!("{} bytes", req.body.len())));
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    setup.settings.limits.max_body = Some(1000);
    let proxy = setup.start();

    let mut c = proxy.client();
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n");
    c.send(&[b'x'; 1000]);
    assert_eq!(c.response().text(), "1000 bytes", "at the limit passes");

    // Declared too large: refused at once, the body never read.
    let mut c = proxy.client();
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000000\r\n\r\n");
    let r = c.response();
    assert_eq!(r.status, 413);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(origin.connections(), 1, "no upstream connection for it");

    // Chunked, growing past it: stopped, and answered 413.
    let mut c = proxy.client();
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    let mut body = Vec::new();
    for _ in 0..3 {
        body.extend_from_slice(b"200\r\n");
        body.extend_from_slice(&[b'y'; 0x200]);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    c.send(&body);
    let r = c.response();
    assert_eq!(r.status, 413);
    assert!(
        origin.seen().iter().all(|s| s.body.len() <= 1000),
        "the origin never got a whole oversized body"
    );
}

fn a_body_slower_than_min_body_rate_gets_408(driver: DriverChoice) {
    let origin = Origin::start(|req| Reply::ok(format!("{} bytes", req.body.len())));
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    // 1,000 bytes per second over 300 ms windows.
    setup.settings.limits.min_body_rate = Some(BodyRate {
        bytes_per_second: 1000,
        window: Duration::from_millis(300),
    });
    // Far longer than the client waits for its answer: only the rate
    // check can answer in time.
    setup.settings.timeouts.client_io = Duration::from_secs(120);
    let proxy = setup.start();

    let mut c = proxy.client();
    c.stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n");
    // A byte every 50 ms: 20 bytes a second.
    let mut writer = c.stream.try_clone().unwrap();
    let trickle = thread::spawn(move || {
        for _ in 0..200 {
            if writer.write_all(b"z").is_err() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
    let r = c.response();
    assert_eq!(r.status, 408);
    let _ = read_to_close(&mut c.stream, Duration::from_secs(20));
    trickle.join().unwrap();

    // A body at 50 KB/s in pieces passes.
    let mut c = proxy.client();
    c.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 20000\r\n\r\n");
    for _ in 0..20 {
        c.send(&[b'k'; 1000]);
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.response().text(), "20000 bytes");
}

fn an_upstream_slow_to_read_does_not_count_against_the_client(driver: DriverChoice) {
    // The origin reads the body at about 640 KB/s, less than the least
    // rate the proxy asks of the client (1 MB/s): the proxy waits on the
    // origin, not on the client, so the client is within its rate.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
            head.push(byte[0]);
        }
        let mut left = 1 << 20;
        let mut chunk = vec![0u8; 64 * 1024];
        while left > 0 {
            thread::sleep(Duration::from_millis(100));
            match s.read(&mut chunk[..left.min(64 * 1024)]) {
                Ok(0) | Err(_) => return,
                Ok(n) => left -= n,
            }
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone");
    });
    let mut setup = ProxySetup::new(driver, &[addr]);
    setup.settings.limits.min_body_rate = Some(BodyRate {
        bytes_per_second: 1 << 20,
        window: Duration::from_millis(300),
    });
    let proxy = setup.start();
    let mut c = proxy.client();
    c.stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    c.send(
        format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            1 << 20
        )
        .as_bytes(),
    );
    let mut writer = c.stream.try_clone().unwrap();
    let sender = thread::spawn(move || writer.write_all(&vec![b'u'; 1 << 20]).is_ok());
    let r = c.response();
    assert_eq!(r.text(), "done");
    assert!(sender.join().unwrap());
}

fn connections_past_the_per_address_limit_are_closed(driver: DriverChoice) {
    let origin = Origin::start(|_| Reply::ok("ok"));
    let mut setup = ProxySetup::new(driver, &[origin.addr()]);
    setup.workers = 2;
    setup.max_connections_per_ip = Some(3);
    let proxy = setup.start();
    let mut open: Vec<_> = (0..3).map(|_| proxy.client()).collect();
    for c in &mut open {
        assert_eq!(c.get("/").text(), "ok");
    }
    // A fourth from the same address is closed at once, on either worker.
    let mut fourth = TcpStream::connect(proxy.addr()).unwrap();
    fourth.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = fourth.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let mut buf = [0u8; 64];
    assert!(
        matches!(fourth.read(&mut buf), Ok(0) | Err(_)),
        "closed without an answer"
    );
    let rejected: u64 = proxy
        .handle()
        .stats()
        .iter()
        .map(|s| s.rejected_per_ip.load(Ordering::Relaxed))
        .sum();
    assert_eq!(rejected, 1);
    // Closing one frees its place.
    drop(open.pop());
    let mut again = None;
    for _ in 0..100 {
        thread::sleep(Duration::from_millis(20));
        let mut c = proxy.client();
        c.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        if let Ok(r) = c.read_response(false) {
            again = Some(r.text());
            break;
        }
    }
    assert_eq!(again.as_deref(), Some("ok"));
}
