//! The real `ringway` binary: configuration checks, curl through it,
//! signals, and memory while gigabyte bodies stream through.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use ringway_tests::{Origin, Reply};

mod common;
use common::{curl, temp_file, Running, BIN};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// `ringway check --config PATH`.
/// `ringway check --strict`: the examples are meant to be copied, so they
/// carry no warning either.
fn check(path: &Path) -> std::process::Output {
    Command::new(BIN)
        .arg("check")
        .arg("--strict")
        .arg("--config")
        .arg(path)
        .output()
        .expect("run")
}

#[test]
fn check_accepts_every_example() {
    // Each example's summary names what it configures.
    let expected = [
        (
            "default.toml",
            "listener \"outbound\": 127.0.0.1:3128 forward, acl \"built-in\"",
        ),
        (
            "forward.toml",
            "listener \"outbound\": 127.0.0.1:3128 forward, acl \"corp\" (4 rules, default Deny",
        ),
        (
            "minimal.toml",
            "listener \"web\": 127.0.0.1:8080 reverse, 1 routes",
        ),
        (
            "reverse.toml",
            "listener \"web\": 127.0.0.1:8080 reverse, 3 routes",
        ),
        (
            "rules.toml",
            "listener \"web\": 127.0.0.1:8080 reverse, 3 routes, 8 rules, 9 header edits, 1 CORS policies, 3 error pages",
        ),
    ];
    let mut checked = 0;
    for entry in std::fs::read_dir(examples_dir()).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = check(&path);
            assert!(
                out.status.success(),
                "{} failed: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains(": ok"), "{stdout}");
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            if let Some((_, line)) = expected.iter().find(|(file, _)| *file == name) {
                assert!(stdout.contains(line), "{name}: {stdout}");
            }
            checked += 1;
        }
    }
    assert!(checked >= expected.len(), "examples/ holds the commented configs");
}

#[test]
fn check_reports_file_line_and_key() {
    let path = temp_file(
        "bad.toml",
        "[runtime]\nworkers = 0\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n\n[[listener.route]]\nupstream = \"missing\"\n",
    );
    let out = check(&path);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    assert!(
        stderr.contains(&format!("{file}:2: runtime.workers:")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!(
            "{file}:9: listener[0].route[0].upstream: no [[upstream]] is named \"missing\""
        )),
        "{stderr}"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn curl_through_the_binary_and_sigterm_exits_zero() {
    let origin = Origin::start(|req| {
        let body = format!(
            "{} {} len={} chunked={} xff={}",
            req.method,
            req.target,
            req.body.len(),
            req.chunked,
            req.header("x-forwarded-for").unwrap_or("-")
        );
        Reply::ok(body)
    });
    let proxy = Running::reverse(origin.addr(), "2");
    let head_and_body = curl(&["-i", &proxy.url("/hello?x=1")]);
    assert!(head_and_body.starts_with("HTTP/1.1 200 OK"), "{head_and_body}");
    assert!(head_and_body.contains("Via: 1.1 ringway"), "{head_and_body}");
    assert!(head_and_body.ends_with("GET /hello?x=1 len=0 chunked=false xff=127.0.0.1"));

    let upload = temp_file("upload.bin", &"z".repeat(200_000));
    let body = curl(&[
        "--data-binary",
        &format!("@{}", upload.display()),
        &proxy.url("/up"),
    ]);
    assert_eq!(body, "POST /up len=200000 chunked=false xff=127.0.0.1");
    let body = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", upload.display()),
        &proxy.url("/chunked"),
    ]);
    assert_eq!(body, "POST /chunked len=200000 chunked=true xff=127.0.0.1");
    let _ = std::fs::remove_file(upload);

    // Several requests on one curl connection: keep-alive on both sides.
    let before = origin.connections();
    let many = curl(&[&proxy.url("/a"), &proxy.url("/b"), &proxy.url("/c")]);
    assert_eq!(many.matches("GET /").count(), 3);
    assert!(
        origin.connections() - before <= 1,
        "upstream connections reused across curl requests"
    );

    proxy.signal("TERM");
    assert!(proxy.wait().success(), "SIGTERM: graceful exit 0");
}

#[test]
fn reload_and_log_rotation_signals_do_not_stop_it() {
    let origin = Origin::start(|_| Reply::ok("still here"));
    let proxy = Running::reverse(origin.addr(), "1");
    for (signal, said) in [
        // Started from the command line: no file to read again.
        ("HUP", "signal SIGHUP: no configuration file to read again"),
        ("USR1", "signal SIGUSR1: received"),
        ("USR2", "signal SIGUSR2: no [runtime] upgrade_socket"),
    ] {
        proxy.signal(signal);
        proxy.wait_for_log(said);
        assert_eq!(curl(&[&proxy.url("/")]), "still here", "after SIG{signal}");
    }
    proxy.signal("TERM");
    assert!(proxy.wait().success(), "SIGTERM still stops it, with exit 0");
}

#[test]
fn the_descriptor_limit_is_raised_and_running_out_backs_off_quietly() {
    let origin = Origin::start(|_| Reply::ok("served"));
    // A connection limit set in the file is kept, with a warning.
    let config = temp_file(
        "fd-limit.toml",
        &format!(
            "[runtime]\nworkers = 1\npin_cpus = false\nmax_connections = 1000\n\n\
             [[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nmode = \"reverse\"\n\n\
             [[listener.route]]\nupstream = \"app\"\n\n[[upstream]]\nname = \"app\"\nservers = [\"{}\"]\n",
            origin.addr()
        ),
    );
    let mut command = Command::new("prlimit");
    command
        .args(["--nofile=40:64", "--", BIN, "run", "--config"])
        .arg(&config);
    let proxy = Running::spawn(command);
    proxy.wait_for_log("file descriptor limit raised from 40 to 64");
    proxy.wait_for_log("cannot cover 1 workers x max_connections 1000");
    // More connections than descriptors: accepts fail until they close.
    let held: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect(proxy.addr).ok())
        .collect();
    proxy.wait_for_log("accept failed");
    thread::sleep(Duration::from_secs(2));
    let failed = proxy.log_lines("accept failed");
    assert!(
        failed.len() <= 2,
        "one line per 10 s, not one per failed accept: {failed:#?}"
    );
    assert!(failed[0].contains("out of file descriptors"), "{}", failed[0]);
    drop(held);
    // The backlog drains and the proxy serves again.
    let mut served = String::new();
    for _ in 0..50 {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "5", &proxy.url("/")])
            .output()
            .expect("curl");
        served = String::from_utf8_lossy(&out.stdout).into_owned();
        if served == "served" {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(served, "served");
    proxy.wait_for_log("accepting again after failed accepts");

    // The default is fitted to the descriptors instead: (300 - 128) / 2.
    let upstream = origin.addr().to_string();
    let mut command = Command::new("prlimit");
    command.args([
        "--nofile=300:300",
        "--",
        BIN,
        "reverse",
        "--listen",
        "127.0.0.1:0",
    ]);
    command.args(["--upstream", &upstream, "--workers", "1", "--no-pin"]);
    let proxy = Running::spawn(command);
    proxy.wait_for_log("max_connections 86 per worker: what 300 descriptors cover for 1 workers");
    assert_eq!(curl(&[&proxy.url("/")]), "served");
}

/// An origin that swallows uploads and serves a download of `size` bytes.
fn bulk_origin(size: u64) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            thread::spawn(move || serve_bulk(stream, size));
        }
    });
    addr
}

fn serve_bulk(mut stream: TcpStream, size: u64) {
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut buf[..1]) {
                Ok(1) => head.push(buf[0]),
                _ => return,
            }
        }
        let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
        if head.starts_with("put") {
            let len: u64 = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            let mut left = len;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                match stream.read(&mut buf[..want]) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left -= n as u64,
                }
            }
            let body = format!("got {len}");
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        } else {
            let _ = write!(stream, "HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n");
            let zeros = vec![0u8; 1 << 16];
            let mut left = size;
            while left > 0 {
                let n = left.min(zeros.len() as u64) as usize;
                if stream.write_all(&zeros[..n]).is_err() {
                    return;
                }
                left -= n as u64;
            }
        }
    }
}

/// Reads until what came ends with `suffix` (a whole small response).
fn read_until(client: &mut TcpStream, suffix: &str) {
    let mut got = Vec::new();
    let mut buf = [0u8; 512];
    while !got.ends_with(suffix.as_bytes()) {
        let n = client.read(&mut buf).expect("reply");
        assert!(n > 0, "closed; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn gigabyte_bodies_stream_with_flat_memory() {
    const GIB: u64 = 1 << 30;
    let origin = bulk_origin(GIB);
    let proxy = Running::reverse(origin, "1");
    let mut client = TcpStream::connect(proxy.addr).expect("connect");
    client
        .set_read_timeout(Some(Duration::from_secs(120)))
        .expect("timeout");
    // Warm up, then take the baseline.
    client
        .write_all(b"PUT /warm HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
        .expect("send");
    read_until(&mut client, "got 1");
    let (baseline, _) = proxy.rss_kib();

    // 1 GiB up.
    write!(
        client,
        "PUT /big HTTP/1.1\r\nHost: a\r\nContent-Length: {GIB}\r\n\r\n"
    )
    .expect("send head");
    let chunk = vec![7u8; 1 << 20];
    for _ in 0..1024 {
        client.write_all(&chunk).expect("send body");
    }
    read_until(&mut client, &format!("got {GIB}"));

    // 1 GiB down.
    client
        .write_all(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        .expect("send");
    let mut buf = vec![0u8; 1 << 20];
    let mut received = 0u64;
    let mut head = Vec::new();
    let mut in_body = false;
    while received < GIB {
        let n = client.read(&mut buf).expect("download");
        assert!(n > 0, "closed after {received} bytes");
        if in_body {
            received += n as u64;
        } else {
            head.extend_from_slice(&buf[..n]);
            if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                in_body = true;
                received += (head.len() - end - 4) as u64;
            }
        }
    }
    assert_eq!(received, GIB);
    let (_, peak) = proxy.rss_kib();
    let growth_mib = peak.saturating_sub(baseline) / 1024;
    assert!(
        growth_mib < 32,
        "RSS grew by {growth_mib} MiB while 2 GiB streamed through"
    );
}

#[test]
fn the_command_line_takes_what_users_type() {
    // `check FILE` as well as `check --config FILE`.
    let out = Command::new(BIN)
        .args(["check"])
        .arg(examples_dir().join("minimal.toml"))
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // An upstream as a URL, with its trailing slash.
    let origin = Origin::start(|req| Reply::ok(format!("{} {}", req.method, req.target)));
    let proxy = Running::reverse(format!("http://{}/", origin.addr()), "1");
    assert_eq!(curl(&[&proxy.url("/x?y=1")]), "GET /x?y=1");
    drop(proxy);
    // What cannot be read says what would be.
    let out = Command::new(BIN)
        .args(["reverse", "--listen", "8080", "--upstream", "127.0.0.1:9"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("or :PORT for every interface"), "{stderr}");
    let out = Command::new(BIN)
        .args([
            "reverse",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            "ftp://127.0.0.1:21",
        ])
        .output()
        .expect("run");
    assert!(String::from_utf8_lossy(&out.stderr).contains("ftp:// is not a scheme"));
}
