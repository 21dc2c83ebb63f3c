//! Clients that leave while the upstream works on their request, over real
//! loopback sockets on both drivers: the upstream connection is closed at
//! once (not held for the upstream timeout) and the request counts as a
//! client abort (499), while a client that only shut its sending side
//! after a complete request still gets its whole response.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream},
    sync::atomic::Ordering,
    thread,
    time::Duration,
};

use ringway_core::DriverChoice;
use ringway_tests::{both_drivers, eventually, read_to_close, Origin, ProxySetup, Reply, TestProxy};

both_drivers!(
    clients_that_close_while_the_upstream_is_slow_release_it_at_once,
    a_half_closed_client_still_gets_its_response,
    a_client_that_resets_during_a_stalled_body_releases_the_upstream,
    a_half_closed_client_gets_one_probe_byte_whatever_the_upstream_does,
);

/// An origin that reads each request, sends `answer` (possibly nothing),
/// then holds the connection far longer than any test waits, until the
/// proxy closes it: [`Origin::closed`] counts the connections it closed.
fn stalling_origin(answer: &'static [u8]) -> Origin {
    Origin::start(move |_| {
        Reply::Raw(Box::new(move |mut stream: TcpStream| {
            let _ = stream.write_all(answer);
            stream.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
            let mut byte = [0u8; 1];
            let _ = stream.read(&mut byte);
        }))
    })
}

fn aborts(proxy: &TestProxy) -> u64 {
    proxy.handle().stats()[0].client_aborts.load(Ordering::Relaxed)
}

fn active(proxy: &TestProxy) -> u64 {
    proxy.handle().stats()[0].active.load(Ordering::Relaxed)
}

/// Sends `GET /` in HTTP/`version`, shuts the sending side, and returns
/// everything the proxy sends until it closes.
fn half_closed_get(proxy: &TestProxy, version: &str) -> String {
    let mut c = TcpStream::connect(proxy.addr()).unwrap();
    c.write_all(format!("GET / HTTP/{version}\r\nHost: a\r\n\r\n").as_bytes())
        .unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    String::from_utf8_lossy(&read_to_close(&mut c, Duration::from_secs(20))).into_owned()
}

/// A proxy whose upstream timeout (10 minutes) no test outlasts.
fn patient_proxy(driver: DriverChoice, origin: SocketAddr) -> TestProxy {
    let mut setup = ProxySetup::new(driver, &[origin]);
    setup.settings.timeouts.upstream_response = Duration::from_secs(600);
    setup.start()
}

fn clients_that_close_while_the_upstream_is_slow_release_it_at_once(driver: DriverChoice) {
    const CLIENTS: usize = 100;
    let origin = stalling_origin(b"");
    let proxy = patient_proxy(driver, origin.addr());
    for i in 0..CLIENTS {
        let mut c = TcpStream::connect(proxy.addr()).unwrap();
        c.write_all(format!("GET /{i} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
    }
    // Every client is gone now (dropped, closed); the proxy notices and
    // closes their upstream connections long before the upstream timeout.
    assert!(
        eventually(Duration::from_secs(30), || origin.closed() == CLIENTS),
        "upstream connections closed: {} of {CLIENTS}",
        origin.closed()
    );
    assert!(eventually(Duration::from_secs(10), || active(&proxy) == 0));
    assert_eq!(aborts(&proxy), CLIENTS as u64, "each counted as a client abort");
}

fn a_half_closed_client_still_gets_its_response(driver: DriverChoice) {
    // The origin answers after a while, long enough for the sweep to see
    // the client's end of stream and probe it several times.
    let origin = Origin::start(|_| {
        thread::sleep(Duration::from_millis(400));
        Reply::ok("slow!")
    });
    let proxy = patient_proxy(driver, origin.addr());
    for version in ["1.1", "1.0"] {
        let text = half_closed_get(&proxy, version);
        assert!(
            text.starts_with("HTTP/1.1 200 OK\r\n"),
            "HTTP/{version}: {text:?}"
        );
        assert!(text.ends_with("\r\n\r\nslow!"), "HTTP/{version}: {text:?}");
    }
    // And an upstream that fails still gets its error to the client whole.
    let refused = ringway_tests::refused_addr();
    let proxy = patient_proxy(driver, refused);
    let mut c = TcpStream::connect(proxy.addr()).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    c.shutdown(Shutdown::Write).unwrap();
    let got = read_to_close(&mut c, Duration::from_secs(20));
    assert!(
        got.starts_with(b"HTTP/1.1 502 "),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    assert_eq!(aborts(&proxy), 0);
}

fn a_client_that_resets_during_a_stalled_body_releases_the_upstream(driver: DriverChoice) {
    // The head and the start of a long body arrive, then nothing more.
    let origin = stalling_origin(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\nfirst bytes");
    let proxy = patient_proxy(driver, origin.addr());
    let mut c = TcpStream::connect(proxy.addr()).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let mut byte = [0u8; 1];
    c.read_exact(&mut byte).unwrap();
    // Closed with the rest of what arrived unread: the kernel resets.
    thread::sleep(Duration::from_millis(100));
    drop(c);
    assert!(
        eventually(Duration::from_secs(30), || origin.closed() == 1),
        "the upstream connection was released"
    );
    assert!(eventually(Duration::from_secs(10), || active(&proxy) == 0));
}

/// An origin that, for each connection, reads the request, then plays
/// `script`: pauses and writes, ending with a close.
fn scripted_origin(script: &'static [(u64, &'static [u8])]) -> Origin {
    Origin::start(move |_| {
        Reply::Raw(Box::new(move |mut stream: TcpStream| {
            for (pause_ms, bytes) in script {
                thread::sleep(Duration::from_millis(*pause_ms));
                if stream.write_all(bytes).is_err() {
                    return;
                }
            }
        }))
    })
}

fn a_half_closed_client_gets_one_probe_byte_whatever_the_upstream_does(driver: DriverChoice) {
    // Each script keeps the client waiting long enough to be probed, then
    // waits again: after an interim response an HTTP/1.0 client is not
    // sent, or until the upstream closes with no answer (a 502).
    let early_hints: &'static [(u64, &'static [u8])] = &[
        (300, b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"),
        (300, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nlater"),
    ];
    let no_answer: &'static [(u64, &'static [u8])] = &[(300, b"")];
    for (script, version, starts) in [
        (early_hints, "1.0", "HTTP/1.1 200 OK\r\n"),
        (early_hints, "1.1", "HTTP/1.1 103 Early Hints\r\n"),
        (no_answer, "1.1", "HTTP/1.1 502 Bad Gateway\r\n"),
    ] {
        let origin = scripted_origin(script);
        let proxy = patient_proxy(driver, origin.addr());
        let text = half_closed_get(&proxy, version);
        assert!(text.starts_with(starts), "HTTP/{version}: {text:?}");
        assert_eq!(aborts(&proxy), 0, "{text:?}");
    }
}
