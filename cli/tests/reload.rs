//! Live reload and binary upgrades of the real binary: SIGHUP and
//! `ringway reload` while clients keep sending requests, twenty times with
//! changed routes and upstreams, without one failed request; listeners
//! added and removed; a configuration that does not validate rejected with
//! its reason while the old one keeps serving; systemd's notifications; and
//! a new binary taking the sockets over under load without one failed
//! request.

mod common;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

use common::{temp_file, Running, BIN};
use ringway_tests::{eventually, Origin, Reply};

/// A configuration with the admin listener on `admin`, one listener
/// ("web", on `listen`) and `routes` (TOML tables after it), and upstreams
/// `a` and `b`.
fn config(admin: &str, listen: &str, a: SocketAddr, b: SocketAddr, routes: &str) -> String {
    format!(
        "[runtime]\nworkers = 2\npin_cpus = false\n\n\
         [admin]\nlisten = \"{admin}\"\n\n\
         [[upstream]]\nname = \"a\"\nservers = [\"{a}\"]\n\n\
         [[upstream]]\nname = \"b\"\nservers = [\"{b}\"]\n\n\
         [[listener]]\nname = \"web\"\nlisten = \"{listen}\"\n\n{routes}"
    )
}

/// One response read off a keep-alive connection: its status, body, and
/// whether the server said it closes the connection.
fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<(u16, String, bool)> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "closed before a response",
        ));
    }
    let status = line.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let (mut length, mut close) = (0usize, false);
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let header = line.trim_end().to_ascii_lowercase();
        if header.is_empty() {
            break;
        }
        if let Some(v) = header.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if header == "connection: close" {
            close = true;
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned(), close))
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
    bodies: Mutex<std::collections::BTreeSet<String>>,
}

/// A client sending `GET path` in a loop until `stop`: on one keep-alive
/// connection (reconnecting only where the server said it closes), or on a
/// new connection for each request. Any request without a 200 is a failure,
/// whatever the reason: a refused connection, a reset, a close with no
/// answer, another status.
fn client(addr: SocketAddr, path: &'static str, keep_alive: bool, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    // Requests answered on the connection so far, for a failure's
    // description (a new connection reset, or a kept one).
    let mut answered = 0;
    while !stop.load(Ordering::Relaxed) {
        let reader = match conn.as_mut() {
            Some(reader) => reader,
            None => match TcpStream::connect(addr) {
                Ok(stream) => {
                    answered = 0;
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .expect("timeout");
                    conn.insert(BufReader::new(stream))
                }
                Err(e) => {
                    tally
                        .failures
                        .lock()
                        .expect("tally")
                        .push(format!("connect: {e}"));
                    continue;
                }
            },
        };
        let close = if keep_alive { "" } else { "Connection: close\r\n" };
        let request = format!("GET {path} HTTP/1.1\r\nHost: site.test\r\n{close}\r\n");
        let result = reader
            .get_mut()
            .write_all(request.as_bytes())
            .and_then(|()| read_response(reader))
            .map_err(|e| {
                let on = if answered == 0 {
                    "a new connection"
                } else {
                    "a kept connection"
                };
                std::io::Error::new(e.kind(), format!("{e} on {on}"))
            });
        match result {
            Ok((200, body, closing)) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                answered += 1;
                tally.bodies.lock().expect("tally").insert(body);
                if closing || !keep_alive {
                    conn = None;
                }
            }
            Ok((status, body, _)) => {
                tally
                    .failures
                    .lock()
                    .expect("tally")
                    .push(format!("{status} {body}"));
                conn = None;
            }
            Err(e) => {
                tally.failures.lock().expect("tally").push(format!("{e}"));
                conn = None;
            }
        }
    }
}

/// Stops the clients and fails on any request of theirs that failed.
fn stop_clients(stop: &AtomicBool, clients: Vec<thread::JoinHandle<()>>, tally: &Tally) {
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("client");
    }
    let failures = tally.failures.lock().expect("tally");
    assert!(
        failures.is_empty(),
        "{} failed requests: {:?}",
        failures.len(),
        &failures[..failures.len().min(10)]
    );
}

/// A free loopback port for the admin listener (its address must be
/// known before start, as `ringway reload` reads it from the file).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn fetch(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: site.test\r\nConnection: close\r\n\r\n").as_bytes())
        .expect("send");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    text
}

fn reload_with_the_command(file: &Path) -> std::process::Output {
    Command::new(BIN)
        .args(["reload", file.to_str().expect("path")])
        .output()
        .expect("ringway reload")
}

#[test]
fn twenty_reloads_under_steady_traffic_fail_no_request() {
    let a = Origin::start(|_| Reply::ok("A"));
    let b = Origin::start(|_| Reply::ok("B"));
    let admin = format!("127.0.0.1:{}", free_port());
    // Each generation routes /app to the other upstream, and names the
    // route's prefix differently, so both the routes and the upstreams
    // change every time.
    let generation = |i: usize| {
        let upstream = if i % 2 == 0 { "a" } else { "b" };
        format!(
            "[[listener.route]]\npath_prefix = \"/gen{i}\"\nupstream = \"b\"\n\n\
             [[listener.route]]\npath_prefix = \"/app\"\nupstream = \"{upstream}\"\n"
        )
    };
    let file = temp_file(
        "reload-steady.toml",
        &config(&admin, "127.0.0.1:0", a.addr(), b.addr(), &generation(0)),
    );
    let running = Running::start(&["run", file.to_str().expect("path")]);
    let addr = running.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = [true, true, false, false]
        .into_iter()
        .map(|keep_alive| {
            let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
            thread::spawn(move || client(addr, "/app", keep_alive, stop, tally))
        })
        .collect();

    for i in 1..=20 {
        std::fs::write(
            &file,
            config(&admin, "127.0.0.1:0", a.addr(), b.addr(), &generation(i)),
        )
        .expect("write");
        if i % 2 == 0 {
            let out = reload_with_the_command(&file);
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        } else {
            running.signal("HUP");
        }
        assert!(
            eventually(Duration::from_secs(10), || running
                .log_lines("configuration reloaded")
                .len()
                >= i),
            "reload {i} was not applied"
        );
        // A new connection is served by the new configuration at once.
        let expected = if i % 2 == 0 { "A" } else { "B" };
        let answer = fetch(addr, "/app");
        assert!(answer.ends_with(expected), "after reload {i}: {answer}");
        assert!(fetch(addr, &format!("/gen{i}")).starts_with("HTTP/1.1 200"));
        thread::sleep(Duration::from_millis(100));
    }
    stop_clients(&stop, clients, &tally);
    let ok = tally.ok.load(Ordering::Relaxed);
    assert!(ok > 200, "only {ok} requests went through");
    let bodies = tally.bodies.lock().expect("tally");
    assert!(bodies.contains("A") && bodies.contains("B"), "{bodies:?}");
    let metrics = fetch(admin.parse().expect("admin"), "/metrics");
    assert!(metrics.contains("ringway_config_reloads_total 20"), "{metrics}");
}

#[test]
fn reloads_open_and_close_listeners_and_a_bad_file_changes_nothing() {
    let a = Origin::start(|_| Reply::ok("A"));
    let b = Origin::start(|_| Reply::ok("B"));
    let admin = format!("127.0.0.1:{}", free_port());
    let extra_port = free_port();
    let routes = "[[listener.route]]\nupstream = \"a\"\n";
    let file = temp_file(
        "reload-listeners.toml",
        &config(&admin, "127.0.0.1:0", a.addr(), b.addr(), routes),
    );
    let running = Running::start(&["run", file.to_str().expect("path")]);
    let extra: SocketAddr = format!("127.0.0.1:{extra_port}").parse().expect("addr");
    assert!(TcpStream::connect(extra).is_err(), "nothing listens there yet");

    // Added: a second listener, to upstream b.
    let added = format!(
        "{}\n[[listener]]\nname = \"extra\"\nlisten = \"{extra}\"\n\n[[listener.route]]\nupstream = \"b\"\n",
        config(&admin, "127.0.0.1:0", a.addr(), b.addr(), routes)
    );
    std::fs::write(&file, &added).expect("write");
    let out = reload_with_the_command(&file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(fetch(extra, "/").ends_with('B'));
    assert!(
        fetch(running.addr, "/").ends_with('A'),
        "the first listener kept its socket"
    );
    running.wait_for_log(&format!("listener \"extra\": reverse proxy on {extra}"));

    // A file that does not validate: refused with its line and key, and
    // both listeners go on as they were.
    std::fs::write(&file, added.replace("upstream = \"b\"", "upstream = \"nowhere\"")).expect("write");
    let out = reload_with_the_command(&file);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reload-listeners.toml:") && stderr.contains("nowhere"),
        "{stderr}"
    );
    running.signal("HUP");
    let line = running.wait_for_log("the configuration was not reloaded");
    assert!(line.contains("running one stays"), "{line}");
    assert!(fetch(extra, "/").ends_with('B') && fetch(running.addr, "/").ends_with('A'));

    // Removed: the extra listener's port closes.
    std::fs::write(&file, config(&admin, "127.0.0.1:0", a.addr(), b.addr(), routes)).expect("write");
    let out = reload_with_the_command(&file);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        eventually(Duration::from_secs(5), || TcpStream::connect(extra).is_err()),
        "the removed listener's port still accepts"
    );
    assert!(fetch(running.addr, "/").ends_with('A'));

    // What needs a restart is said, not silently ignored.
    std::fs::write(
        &file,
        config(&admin, "127.0.0.1:0", a.addr(), b.addr(), routes).replace("workers = 2", "workers = 3"),
    )
    .expect("write");
    let out = reload_with_the_command(&file);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("[runtime] changes apply at the next restart"));
}

#[test]
fn systemd_hears_ready_reloading_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let a = Origin::start(|_| Reply::ok("A"));
    let b = Origin::start(|_| Reply::ok("B"));
    let dir = std::env::temp_dir().join(format!("ringway-test-{}-notify", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let socket_path = dir.join("notify.sock");
    let systemd = UnixDatagram::bind(&socket_path).expect("bind the notify socket");
    systemd
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let next = || {
        let mut buf = [0u8; 512];
        let n = systemd.recv(&mut buf).expect("a notification");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let admin = format!("127.0.0.1:{}", free_port());
    let routes = "[[listener.route]]\nupstream = \"a\"\n";
    let file = temp_file(
        "notify.toml",
        &config(&admin, "127.0.0.1:0", a.addr(), b.addr(), routes),
    );
    let mut command = Command::new(BIN);
    command
        .args(["run", file.to_str().expect("path")])
        .env("NOTIFY_SOCKET", &socket_path);
    let running = Running::spawn(command);
    assert_eq!(next(), "READY=1", "once every listener is bound");
    assert!(fetch(running.addr, "/").ends_with('A'));

    running.signal("HUP");
    let reloading = next();
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(
        reloading["RELOADING=1\nMONOTONIC_USEC=".len()..]
            .parse::<u64>()
            .is_ok(),
        "{reloading}"
    );
    assert_eq!(next(), "READY=1", "after the reload");

    running.signal("TERM");
    assert_eq!(next(), "STOPPING=1");
}

#[test]
fn a_binary_upgrade_hands_the_sockets_over_and_refuses_no_connection() {
    let a = Origin::start(|_| Reply::ok("A"));
    let b = Origin::start(|_| Reply::ok("B"));
    let admin = format!("127.0.0.1:{}", free_port());
    let listen = format!("127.0.0.1:{}", free_port());
    let dir = std::env::temp_dir().join(format!("ringway-test-{}-upgrade", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let socket = dir.join("upgrade.sock");
    let with = |upstream: &str| {
        config(
            &admin,
            &listen,
            a.addr(),
            b.addr(),
            &format!("[[listener.route]]\nupstream = \"{upstream}\"\n"),
        )
        .replace(
            "pin_cpus = false\n",
            &format!("pin_cpus = false\nupgrade_socket = \"{}\"\n", socket.display()),
        )
    };
    let old_file = temp_file("upgrade-old.toml", &with("a"));
    let new_file = temp_file("upgrade-new.toml", &with("b"));
    // The old process runs as systemd's main process would.
    let systemd = std::os::unix::net::UnixDatagram::bind(dir.join("notify.sock")).expect("notify socket");
    systemd
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut command = Command::new(BIN);
    command
        .args(["run", old_file.to_str().expect("path")])
        .env("NOTIFY_SOCKET", dir.join("notify.sock"));
    let old = Running::spawn(command);
    let addr = old.addr;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let clients: Vec<_> = [false, false, true]
        .into_iter()
        .map(|keep_alive| {
            let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
            thread::spawn(move || client(addr, "/x", keep_alive, stop, tally))
        })
        .collect();
    thread::sleep(Duration::from_millis(200));

    // The new binary waits for the sockets; SIGUSR2 sends them.
    let mut command = Command::new(BIN);
    command.args(["run", new_file.to_str().expect("path"), "--takeover"]);
    let new = thread::spawn(move || Running::spawn(command));
    assert!(
        eventually(Duration::from_secs(10), || socket.exists()),
        "the new process listens for the handover"
    );
    old.signal("USR2");
    let new = new.join().expect("the new process started");
    assert_eq!(new.addr, addr, "the same address, on the same sockets");
    old.wait_for_log("serves on the listeners now; this one drains");
    assert!(old.wait().success(), "the old process drains and exits 0");
    // systemd hears the new main process, and no STOPPING=1 that would
    // stop the service the new process now is.
    let mut heard = Vec::new();
    systemd.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 256];
    while let Ok(n) = systemd.recv(&mut buf) {
        heard.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert_eq!(heard.first().map(String::as_str), Some("READY=1"), "{heard:?}");
    assert!(heard.iter().any(|m| m.starts_with("MAINPID=")), "{heard:?}");
    assert!(!heard.iter().any(|m| m.contains("STOPPING")), "{heard:?}");
    // Only the new one is left: every new connection reaches upstream b.
    thread::sleep(Duration::from_millis(300));
    assert!(fetch(addr, "/x").ends_with('B'));
    stop_clients(&stop, clients, &tally);
    let bodies = tally.bodies.lock().expect("tally");
    assert!(
        bodies.contains("A") && bodies.contains("B"),
        "served by both: {bodies:?}"
    );
    // The admin listener moved too.
    assert!(fetch(admin.parse().expect("admin"), "/healthz").ends_with("ok\n"));
}
