//! Helpers shared by the binary's integration tests: starting `ringway`,
//! temporary files, curl.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_ringway");

/// A file in the temporary directory, unique to this test process.
pub(crate) fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ringway-test-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("write temp file");
    path
}

/// A running `ringway` process, the address its first listener bound, and
/// its log so far.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Running {
    /// Starts `ringway ARGS` and waits for its "listener ... on ADDR" line.
    pub(crate) fn start(args: &[&str]) -> Running {
        let mut command = Command::new(BIN);
        command.args(args);
        Running::spawn(command)
    }

    /// Starts `command` (ringway, or ringway under a wrapper such as
    /// prlimit) and waits for its "listener ... on ADDR" line.
    pub(crate) fn spawn(mut command: Command) -> Running {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringway");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let log = Arc::new(Mutex::new(Vec::new()));
        let addr = loop {
            let line = lines
                .next()
                .expect("ringway exited before listening")
                .expect("read log");
            let addr = line.split(" proxy on ").nth(1).map(|rest| {
                let first = rest.split_whitespace().next().unwrap_or_default();
                first.trim_end_matches(';').parse()
            });
            log.lock().expect("log").push(line);
            if let Some(addr) = addr {
                break addr.expect("address in the log line");
            }
        };
        // Keep draining the log so the process never blocks on a full pipe.
        let kept = Arc::clone(&log);
        thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                kept.lock().expect("log").push(line);
            }
        });
        Running { child, addr, log }
    }

    /// The log lines so far that contain `needle`.
    pub(crate) fn log_lines(&self, needle: &str) -> Vec<String> {
        let log = self.log.lock().expect("log");
        log.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    /// Waits up to 10 s for a log line containing `needle`.
    pub(crate) fn wait_for_log(&self, needle: &str) -> String {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.log_lines(needle).pop() {
                return line;
            }
            assert!(Instant::now() < until, "no log line with {needle:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// `ringway reverse` on a free port in front of `upstream` (an address,
    /// or anything `--upstream` takes: a name, a URL).
    pub(crate) fn reverse(upstream: impl std::fmt::Display, workers: &str) -> Running {
        let upstream = upstream.to_string();
        Running::start(&[
            "reverse",
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &upstream,
            "--workers",
            workers,
            "--no-pin",
        ])
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    pub(crate) fn wait(mut self) -> std::process::ExitStatus {
        for _ in 0..200 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("ringway did not exit within 10 s");
    }

    /// Resident and peak resident set size in KiB.
    pub(crate) fn rss_kib(&self) -> (u64, u64) {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).expect("proc status");
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .expect("rss field")
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs curl with `args` (quietly, failing on errors) and returns its output.
pub(crate) fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl is installed (apt-get install curl)");
    assert!(
        out.status.success(),
        "curl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}
