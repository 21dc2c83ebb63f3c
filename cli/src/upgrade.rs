//! Binary upgrades: `ringway run FILE --takeover` waits at `[runtime]
//! upgrade_socket` for the running ringway's listening sockets; SIGUSR2
//! tells the running one to send them (`SCM_RIGHTS`, as pingora and Sozu
//! do). Once the new process serves on them it says `ready PID`, and the
//! old one drains and exits; both accept on the same sockets meanwhile, so
//! no connection is refused. A new process that fails to start says why,
//! and the old one keeps serving.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::{UnixListener, UnixStream},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context;
use ringway::{config::Config, factory};
use ringway_core::handover::{self, Inherited};

/// How long the new process waits for the old one's sockets, and the old
/// one for the new one to start on them.
const WAIT: Duration = Duration::from_secs(120);

/// The new process: waits at the upgrade socket for the running ringway's
/// listening sockets; returns them with the stream to answer on.
pub(crate) fn wait_for_handover(config: &Config) -> anyhow::Result<(UnixStream, Vec<Inherited>)> {
    let path = config
        .upgrade_socket
        .as_deref()
        .context("--takeover needs [runtime] upgrade_socket in the file (and in the running ringway's)")?;
    let listener = listen(path)?;
    tracing::info!(
        "waiting up to {} s at {} for the running ringway's listeners: send it SIGUSR2 (kill -USR2 PID)",
        WAIT.as_secs(),
        path.display()
    );
    listener.set_nonblocking(true)?;
    let until = Instant::now() + WAIT;
    let mut stream = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < until => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let _ = std::fs::remove_file(path);
                anyhow::bail!("no ringway handed its listeners over within {} s", WAIT.as_secs());
            }
            Err(e) => return Err(e).context("waiting for the handover"),
        }
    };
    let _ = std::fs::remove_file(path);
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let inherited = handover::receive(&mut stream).context("receiving the listening sockets")?;
    let count: usize = inherited.iter().map(|l| l.sockets.len()).sum();
    tracing::info!(
        "received {count} listening sockets of {} listeners",
        inherited.len()
    );
    Ok((stream, inherited))
}

/// Listens at `path`, replacing a socket file nobody listens on any more.
fn listen(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            anyhow::bail!("another process already waits at {} to take over", path.display());
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale socket {}", path.display()))?;
    }
    UnixListener::bind(path).with_context(|| format!("listening at upgrade_socket {}", path.display()))
}

/// The new process serves: the old one may stop.
pub(crate) fn tell_ready(stream: &mut UnixStream) {
    let _ = writeln!(stream, "ready {}", std::process::id());
}

/// The new process could not start: the old one keeps serving.
pub(crate) fn tell_failed(stream: &mut UnixStream, why: &str) {
    let _ = writeln!(stream, "failed {}", why.replace('\n', " "));
}

/// The old process, on SIGUSR2: hands its listening sockets to the process
/// waiting at the upgrade socket. Returns whether that process now serves
/// (this one should then drain and exit).
pub(crate) fn hand_over(server: &factory::Running, config: &Config) -> bool {
    let Some(path) = config.upgrade_socket.as_deref() else {
        tracing::warn!(
            "signal SIGUSR2: no [runtime] upgrade_socket, so there is no new ringway to hand the \
             listeners to (set it, then start the new binary with run --takeover)"
        );
        return false;
    };
    match try_hand_over(server, path) {
        Ok(pid) => {
            tracing::info!("signal SIGUSR2: ringway {pid} serves on the listeners now; this one drains");
            crate::notify_systemd(&format!("MAINPID={pid}"));
            true
        }
        Err(e) => {
            tracing::error!("signal SIGUSR2: no handover, this ringway keeps serving: {e:#}");
            false
        }
    }
}

fn try_hand_over(server: &factory::Running, path: &Path) -> anyhow::Result<u32> {
    let mut stream = UnixStream::connect(path).with_context(|| {
        format!(
            "no ringway waits at {} (start it with run --takeover)",
            path.display()
        )
    })?;
    server
        .hand_over(&mut stream)
        .context("sending the listening sockets")?;
    stream.set_read_timeout(Some(WAIT))?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .context("waiting for the new ringway to start")?;
    let line = line.trim_end();
    if let Some(pid) = line.strip_prefix("ready ") {
        return pid.parse().context("a bad answer from the new ringway");
    }
    match line.strip_prefix("failed ") {
        Some(why) => anyhow::bail!("the new ringway did not start: {why}"),
        None => anyhow::bail!("the new ringway stopped before it started"),
    }
}
