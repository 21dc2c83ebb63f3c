//! Helpers shared by the binary's integration tests: starting `ringway`,
//! temporary files, curl.

#![allow(dead_code)]

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    thread,
    time::Duration,
};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_ringway");

/// A file in the temporary directory, unique to this test process.
pub(crate) fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("ringway-test-{}-{name}", std::process::id()));
    std::fs::write(&path, contents).expect("write temp file");
    path
}

/// A running `ringway` process and the address its first listener bound.
pub(crate) struct Running {
    pub(crate) child: Child,
    pub(crate) addr: SocketAddr,
}

impl Running {
    /// Starts `ringway ARGS` and waits for its "listener ... on ADDR" line.
    pub(crate) fn start(args: &[&str]) -> Running {
        let mut child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ringway");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("ringway exited before listening")
                .expect("read log");
            if let Some(rest) = line.split(" proxy on ").nth(1) {
                break rest.trim().parse().expect("address in the log line");
            }
        };
        // Keep draining the log so the process never blocks on a full pipe.
        thread::spawn(move || for _ in lines {});
        Running { child, addr }
    }

    /// `ringway reverse` on a free port in front of `upstream`.
    pub(crate) fn reverse(upstream: SocketAddr, workers: &str) -> Running {
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
