//! The log writer: one thread that owns the access-log files and writes
//! the batches of lines the workers hand it, so that a slow disk never
//! stalls a worker. A worker's batch that finds the writer's queue full is
//! dropped, and its lines counted. `reopen` (SIGUSR1, after logrotate moved
//! the files) makes it open every file again by its path.

use std::{
    fs::{File, OpenOptions},
    io::{self, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

/// Batches the writer's queue holds before workers' batches are dropped:
/// with 32 KiB batches, 8 MiB of lines waiting for a slow disk.
const QUEUE_BATCHES: usize = 256;

/// At most one error line per this long about writes that keep failing.
const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

enum Message {
    /// Lines for the file at this index.
    Lines(usize, Vec<u8>, u64),
    /// Look at the shared flags now (a reopen, added files).
    Wake,
    /// Everything sent before has been written: end.
    Stop,
}

/// Counters the writer and the workers share (only the rare paths touch
/// them: a dropped batch, a failed write).
#[derive(Debug, Default)]
struct Shared {
    dropped: AtomicU64,
    written: AtomicU64,
    /// A reopen is asked for (SIGUSR1): set without waiting on the queue,
    /// which a stalled disk may hold full.
    reopen: std::sync::atomic::AtomicBool,
    /// Files a reload added, opened by the caller, for the next indices;
    /// taken before any batch that could be for them.
    added: std::sync::Mutex<Vec<(LogPath, Output)>>,
}

/// Where a worker's lines for one file go.
#[derive(Debug, Clone)]
pub struct LogSink {
    tx: SyncSender<Message>,
    file: usize,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Lines(file, bytes, lines) => write!(f, "Lines({file}, {} bytes, {lines})", bytes.len()),
            Self::Wake => f.write_str("Wake"),
            Self::Stop => f.write_str("Stop"),
        }
    }
}

impl LogSink {
    /// Hands `batch` (`lines` whole lines) to the writer without waiting;
    /// a full queue drops it, counted.
    pub(super) fn send(&self, batch: Vec<u8>, lines: u64) {
        match self.tx.try_send(Message::Lines(self.file, batch, lines)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(lines, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped so far, all files together.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// One log file's path, or standard error for `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LogPath {
    /// Standard error.
    Stderr,
    /// A file, appended to.
    File(PathBuf),
}

impl LogPath {
    /// `-` is standard error.
    pub fn new(path: &str) -> Self {
        if path == "-" {
            Self::Stderr
        } else {
            Self::File(PathBuf::from(path))
        }
    }
}

impl std::fmt::Display for LogPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Stderr => f.write_str("-"),
            Self::File(p) => write!(f, "{}", p.display()),
        }
    }
}

#[derive(Debug)]
enum Output {
    Stderr,
    File(File),
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot open access log {}: {e}", path.display()),
            )
        })
}

/// The running writer thread.
#[derive(Debug)]
pub struct LogWriter {
    tx: SyncSender<Message>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// The files it writes, by index.
    paths: Vec<LogPath>,
}

impl LogWriter {
    /// Opens every file (creating missing ones; their directories must
    /// exist) and starts the writer; returns a sink for each path, in
    /// order. Fails, naming the file, when one cannot be opened.
    pub fn start(paths: &[LogPath]) -> io::Result<(Self, Vec<LogSink>)> {
        let mut outputs = Vec::with_capacity(paths.len());
        for path in paths {
            outputs.push(match path {
                LogPath::Stderr => Output::Stderr,
                LogPath::File(p) => Output::File(open(p)?),
            });
        }
        let (tx, rx) = mpsc::sync_channel(QUEUE_BATCHES);
        let shared = Arc::new(Shared::default());
        let paths = paths.to_vec();
        let paths_kept = paths.clone();
        let writer_shared = Arc::clone(&shared);
        let sinks = (0..paths.len())
            .map(|file| LogSink {
                tx: tx.clone(),
                file,
                shared: Arc::clone(&shared),
            })
            .collect();
        let thread = std::thread::Builder::new()
            .name("ringway-log".to_owned())
            .spawn(move || write_loop(&rx, paths, outputs, &writer_shared))?;
        Ok((
            Self {
                tx,
                shared,
                thread: Some(thread),
                paths: paths_kept,
            },
            sinks,
        ))
    }

    /// A sink for each of `wanted`: the file's own when the writer has it
    /// already, else one for the file opened now (a reload that names a new
    /// file). Fails, naming the file, when one cannot be opened; nothing
    /// was added then.
    pub fn sinks_for(&mut self, wanted: &[LogPath]) -> io::Result<Vec<LogSink>> {
        let mut added = Vec::new();
        for path in wanted {
            if self.paths.contains(path) || added.iter().any(|(p, _)| p == path) {
                continue;
            }
            let output = match path {
                LogPath::Stderr => Output::Stderr,
                LogPath::File(p) => Output::File(open(p)?),
            };
            added.push((path.clone(), output));
        }
        if !added.is_empty() {
            self.paths.extend(added.iter().map(|(p, _)| p.clone()));
            // Handed over through shared state, never a send that could wait
            // on a full queue: the writer takes them before its next batch,
            // and no batch for them exists before this returns.
            self.shared
                .added
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .extend(added);
            let _ = self.tx.try_send(Message::Wake);
        }
        Ok(wanted
            .iter()
            .map(|path| LogSink {
                tx: self.tx.clone(),
                file: self.paths.iter().position(|p| p == path).unwrap_or(0),
                shared: Arc::clone(&self.shared),
            })
            .collect())
    }

    /// Opens every file again by its path (after logrotate renamed them);
    /// a file that cannot be opened keeps its old descriptor, and the log
    /// says why.
    pub fn reopen(&self) {
        // A flag, so that a full queue (a stalled disk) cannot hold the
        // caller; the wake-up is best effort, the writer looks at least
        // once a second.
        self.shared.reopen.store(true, Ordering::Relaxed);
        let _ = self.tx.try_send(Message::Wake);
    }

    /// Lines dropped so far because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.shared.written.load(Ordering::Relaxed)
    }

    /// A handle on the writer's counters, for metrics.
    pub fn stats(&self) -> LogStats {
        LogStats(Arc::clone(&self.shared))
    }
}

/// The log writer's counters, readable from any thread.
#[derive(Debug, Clone)]
pub struct LogStats(Arc<Shared>);

impl LogStats {
    /// Lines written so far.
    pub fn written(&self) -> u64 {
        self.0.written.load(Ordering::Relaxed)
    }

    /// Lines dropped so far (the writer fell behind, or a write failed).
    pub fn dropped(&self) -> u64 {
        self.0.dropped.load(Ordering::Relaxed)
    }
}

impl Drop for LogWriter {
    /// Writes what the workers handed over, then ends the thread.
    fn drop(&mut self) {
        let _ = self.tx.send(Message::Stop);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn write_loop(rx: &Receiver<Message>, mut paths: Vec<LogPath>, mut outputs: Vec<Output>, shared: &Shared) {
    let mut failing_since: Option<Instant> = None;
    let mut failed_lines = 0u64;
    loop {
        let message = match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(message) => Some(message),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        // Files added by a reload, before any batch for them.
        let added = std::mem::take(
            &mut *shared
                .added
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        for (path, output) in added {
            paths.push(path);
            outputs.push(output);
        }
        if shared.reopen.swap(false, Ordering::Relaxed) {
            for (path, output) in paths.iter().zip(outputs.iter_mut()) {
                let LogPath::File(p) = path else { continue };
                match open(p) {
                    Ok(file) => *output = Output::File(file),
                    Err(e) => tracing::error!("{e}; writing on to the file open before"),
                }
            }
            tracing::info!("access logs reopened");
        }
        let Some(message) = message else { continue };
        match message {
            Message::Lines(file, batch, lines) => {
                let written = match outputs.get_mut(file) {
                    Some(Output::File(f)) => f.write_all(&batch),
                    Some(Output::Stderr) => io::stderr().lock().write_all(&batch),
                    None => Ok(()),
                };
                match written {
                    Ok(()) => {
                        shared.written.fetch_add(lines, Ordering::Relaxed);
                    }
                    Err(e) => {
                        shared.dropped.fetch_add(lines, Ordering::Relaxed);
                        failed_lines += lines;
                        if failing_since.is_none_or(|at| at.elapsed() >= ERROR_LOG_EVERY) {
                            tracing::error!(
                                "cannot write the access log {}: {e}; {failed_lines} lines lost",
                                paths.get(file).map_or_else(String::new, ToString::to_string)
                            );
                            failing_since = Some(Instant::now());
                            failed_lines = 0;
                        }
                    }
                }
            }
            Message::Wake => {}
            Message::Stop => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ringway-log-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("access.log")
    }

    #[test]
    fn lines_reach_the_file_and_a_reopen_follows_a_rename() {
        let path = temp_path("reopen");
        let (writer, sinks) = LogWriter::start(&[LogPath::File(path.clone())]).unwrap();
        sinks[0].send(b"one\n".to_vec(), 1);
        // What logrotate does: rename, then signal.
        let rotated = path.with_extension("log.1");
        // The rename must come after the first batch is written.
        while writer.written() < 1 {
            std::thread::yield_now();
        }
        std::fs::rename(&path, &rotated).unwrap();
        sinks[0].send(b"two\n".to_vec(), 1);
        writer.reopen();
        sinks[0].send(b"three\n".to_vec(), 1);
        drop(sinks);
        drop(writer);
        // A batch queued before the reopen may land in either file (the
        // reopen does not wait behind the queue); none is lost, none doubled.
        let old = std::fs::read_to_string(&rotated).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.starts_with("one\n"), "{old}");
        assert!(new.ends_with("three\n"), "{new}");
        assert_eq!(format!("{old}{new}"), "one\ntwo\nthree\n");
    }

    #[test]
    fn a_full_queue_drops_batches_and_counts_their_lines() {
        let (tx, _rx) = mpsc::sync_channel(1);
        let shared = Arc::new(Shared::default());
        let sink = LogSink {
            tx,
            file: 0,
            shared: Arc::clone(&shared),
        };
        sink.send(b"a\n".to_vec(), 1);
        sink.send(b"b\nc\n".to_vec(), 2);
        assert_eq!(sink.dropped(), 2, "the second batch found the queue full");
    }

    #[test]
    fn an_unopenable_file_is_named() {
        let err = LogWriter::start(&[LogPath::new("/nonexistent-dir/access.log")]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent-dir/access.log"), "{err}");
    }
}
