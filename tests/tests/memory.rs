//! Memory under floods, measured in-process: thousands of connections
//! whose heads trickle in (slowloris), heads near the size limit, and a
//! body of many tiny chunks each leave the resident size within a bound,
//! and the worker gives the memory back once the flood is over.
//!
//! One test function in its own binary: the resident size is the whole
//! process's, so nothing else may run beside it.

use std::{
    io::Write,
    net::TcpStream,
    sync::atomic::Ordering,
    thread,
    time::{Duration, Instant},
};

use ringway_core::DriverChoice;
use ringway_tests::{eventually, uring_available, Origin, ProxySetup, Reply, TestProxy};

/// The process's resident size in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

fn active(proxy: &TestProxy) -> u64 {
    proxy.handle().stats()[0].active.load(Ordering::Relaxed)
}

/// Waits until the connections are closed and the resident size is back
/// within 4 MiB of `baseline`: the worker gave the flood's memory back.
fn settle(proxy: &TestProxy, baseline: u64, what: &str) -> u64 {
    wait_for(what, Duration::from_secs(30), || active(proxy) == 0);
    let until = Instant::now() + Duration::from_secs(15);
    loop {
        let now = rss_kib();
        if now <= baseline + 4 * 1024 {
            eprintln!("after {what}: {now} KiB, baseline {baseline} KiB");
            return now;
        }
        assert!(
            Instant::now() < until,
            "after {what}: resident size {now} KiB, {} KiB over the baseline",
            now - baseline
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn wait_for(what: &str, limit: Duration, done: impl Fn() -> bool) {
    assert!(eventually(limit, done), "{what}");
}

/// Opens `count` connections that each send the unfinished head `head(i)`,
/// waits until the proxy holds them all, and returns them with what each
/// added to the resident size since `before` (bytes).
fn hold_heads(
    proxy: &TestProxy,
    count: usize,
    before: u64,
    head: impl Fn(usize) -> String,
) -> (Vec<TcpStream>, u64) {
    let held: Vec<TcpStream> = (0..count)
        .map(|i| {
            let mut s = TcpStream::connect(proxy.addr()).expect("connect");
            s.write_all(head(i).as_bytes()).expect("send");
            s
        })
        .collect();
    wait_for("the connections accepted", Duration::from_secs(30), || {
        active(proxy) == count as u64
    });
    // Let the proxy read what they sent.
    thread::sleep(Duration::from_millis(300));
    let each = rss_kib().saturating_sub(before) * 1024 / count as u64;
    (held, each)
}

#[test]
fn floods_stay_bounded_and_memory_comes_back() {
    floods(DriverChoice::Legacy);
    if uring_available() {
        floods(DriverChoice::Uring);
    }
}

fn floods(driver: DriverChoice) {
    const SLOW: usize = 3000;
    const LARGE: usize = 200;
    let origin = Origin::start(|req| Reply::ok(format!("{} bytes", req.body.len())));
    let proxy = ProxySetup::new(driver, &[origin.addr()]).start();
    {
        let mut c = proxy.client();
        for _ in 0..20 {
            assert_eq!(c.get("/").status, 200);
        }
    }
    wait_for("warm-up connection closed", Duration::from_secs(10), || {
        active(&proxy) == 0
    });
    let baseline = rss_kib();

    // Slowloris: a head that never ends, on thousands of connections.
    let (slow, per_slow) = hold_heads(&proxy, SLOW, baseline, |i| {
        format!("GET /{i} HTTP/1.1\r\nHost: a\r\nX-Slow: ")
    });
    eprintln!("{driver:?}: {per_slow} bytes per slowloris connection");
    // The connection task (under 1 KB since the phases issue), its slot of
    // heads (a trickling head gives up the slot's write buffers), a 4 KiB
    // head buffer and the registry entry; a full read and write buffer
    // each would be 132 KiB.
    assert!(
        per_slow <= 12 * 1024,
        "{driver:?}: {per_slow} bytes per slowloris connection"
    );
    drop(slow);
    let before_large = settle(&proxy, baseline, "the slowloris flood");

    // Heads just under the 64 KiB limit, never finished.
    let filler = "x".repeat(60 * 1024);
    let (large, per_large) = hold_heads(&proxy, LARGE, before_large, |_| {
        format!("GET / HTTP/1.1\r\nHost: a\r\nX-Big: {filler}")
    });
    eprintln!("{driver:?}: {per_large} bytes per connection with a 60 KiB head");
    // The head in a read buffer (68 KiB) and the task: bounded by the head
    // limit, not by what the client sends.
    assert!(
        (48 * 1024..=96 * 1024).contains(&per_large),
        "{driver:?}: {per_large} bytes per connection with a 60 KiB head"
    );
    drop(large);
    settle(&proxy, baseline, "the large heads");

    // A body of 200,000 one-byte chunks streams through in bounded memory.
    let mut c = proxy.client();
    c.send(b"POST /tiny HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
    let before_chunks = rss_kib();
    let mut peak = before_chunks;
    let piece = b"1\r\nx\r\n".repeat(10_000);
    for _ in 0..20 {
        c.send(&piece);
        peak = peak.max(rss_kib());
    }
    c.send(b"0\r\n\r\n");
    let r = c.response();
    assert_eq!(r.text(), "200000 bytes");
    eprintln!(
        "{driver:?}: tiny chunks: peak {} KiB over the start",
        peak - before_chunks
    );
    // The origin keeps the body it received (200 KB, in this process);
    // the proxy adds its buffers only.
    assert!(
        peak.saturating_sub(before_chunks) <= 8 * 1024,
        "{driver:?}: tiny chunks grew the resident size by {} KiB",
        peak - before_chunks
    );

    drop(c);
    wait_for(
        "the chunked upload's connection closed",
        Duration::from_secs(30),
        || active(&proxy) == 0,
    );
    proxy.stop();
}
