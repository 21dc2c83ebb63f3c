//! Access logs: one line per exchange, per request refused while its head
//! was read, per tunnel (with its bytes both ways) and per connection
//! dropped over a limit, in the listener's [`LogFormat`].
//!
//! A worker formats its lines into its own buffer ([`AccessLogger`], one
//! per listener and worker) and hands full buffers, and every second what
//! it has, to the [`LogWriter`] thread, which owns the files. A worker
//! never waits on a disk: a batch that finds the writer behind is dropped
//! and its lines counted.

mod clock;
mod format;
mod writer;

use std::{
    cell::{Cell, RefCell},
    fmt,
    net::SocketAddr,
    time::Duration,
};

pub use clock::Moment;
use clock::TimeCache;
pub(crate) use format::loggable;
pub use format::{FormatError, LogFormat, Piece, Var, VARIABLES};
pub use writer::{LogPath, LogSink, LogStats, LogWriter};

use crate::{engine::ClientInfo, head::RequestHead};

/// A worker's buffer is handed to the writer once it holds this much.
const FLUSH_AT: usize = 32 * 1024;

/// What a line is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A request and its answer.
    Request,
    /// A tunnel (CONNECT, or an upgrade) that ended; bytes both ways.
    Tunnel,
    /// A request refused while its head was read (400, 414, 431, 408).
    Refused,
    /// A connection closed at once, unanswered, for this reason.
    Rejected(&'static str),
    /// A tcp listener's connection, relayed to a server (or not taken).
    Connection,
}

impl Event {
    /// The name logs use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Tunnel => "tunnel",
            Self::Refused => "refused",
            Self::Rejected(_) => "rejected",
            Self::Connection => "connection",
        }
    }
}

/// The rule an access decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleName<'a> {
    /// An ACL rule: its index from 0, and its name if it has one.
    Rule(usize, Option<&'a str>),
    /// The ACL's default.
    Default,
    /// `connect_ports`.
    ConnectPorts,
    /// `block_private`.
    BlockPrivate,
    /// Proxy authentication failed.
    Auth,
    /// The destination is the proxy itself.
    Loop,
}

impl fmt::Display for RuleName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rule(i, Some(name)) => write!(f, "rule {} ({name})", i + 1),
            Self::Rule(i, None) => write!(f, "rule {}", i + 1),
            Self::Default => f.write_str("default"),
            Self::ConnectPorts => f.write_str("connect_ports"),
            Self::BlockPrivate => f.write_str("block_private"),
            Self::Auth => f.write_str("auth"),
            Self::Loop => f.write_str("loop"),
        }
    }
}

/// An access decision, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AclFact<'a> {
    /// Allowed or denied.
    pub allowed: bool,
    /// By which rule.
    pub rule: RuleName<'a>,
}

/// What a mode knows about an exchange that the engine does not: who the
/// client authenticated as, the access decision, the route taken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogFacts<'a> {
    /// The authenticated user (or the name a failed login gave).
    pub user: Option<&'a str>,
    /// The access decision, on a forward listener.
    pub acl: Option<AclFact<'a>>,
    /// The route taken, by its index in the listener's table.
    pub route: Option<usize>,
    /// How the cache served the request (`HIT`, `MISS`...), where one is
    /// used.
    pub cache: Option<&'static str>,
}

/// One line's worth of facts.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// What the line is about.
    pub event: Event,
    /// The listener's name.
    pub listener: &'a str,
    /// The client, its TLS session and the request's ID.
    pub client: &'a ClientInfo,
    /// The request head, as far as it was read (`None` for a connection
    /// rejected before any byte).
    pub req: Option<&'a RequestHead>,
    /// The status sent (0: none).
    pub status: u16,
    /// Bytes received from the client: the head and the body (for a
    /// tunnel, all the client sent through it).
    pub bytes_in: u64,
    /// Bytes sent to the client, the response head included.
    pub bytes_out: u64,
    /// The response body's bytes sent to the client.
    pub body_out: u64,
    /// The upstream server the request went to last.
    pub upstream: Option<SocketAddr>,
    /// From the first attempt to the response head.
    pub upstream_time: Option<Duration>,
    /// From the head's arrival to the end of the answer.
    pub total: Duration,
    /// The response's Content-Type, if any.
    pub content_type: &'a [u8],
    /// The mode's facts.
    pub facts: LogFacts<'a>,
}

impl<'a> Entry<'a> {
    /// The line of a connection from `client` to `listener` closed at once,
    /// unanswered, over the limit named `why`.
    pub fn rejected(listener: &'a str, client: &'a ClientInfo, why: &'static str) -> Self {
        Self {
            event: Event::Rejected(why),
            listener,
            client,
            req: None,
            status: 0,
            bytes_in: 0,
            bytes_out: 0,
            body_out: 0,
            upstream: None,
            upstream_time: None,
            total: Duration::ZERO,
            content_type: b"",
            facts: LogFacts::default(),
        }
    }
}

/// One listener's access log on one worker.
#[derive(Debug)]
pub struct AccessLogger {
    format: std::sync::Arc<LogFormat>,
    sink: LogSink,
    buf: RefCell<Vec<u8>>,
    lines: Cell<u64>,
    time: RefCell<TimeCache>,
    /// Each line is handed over at once (a reload retired the listener's
    /// engine: the few lines left must not wait for its last connection).
    direct: Cell<bool>,
}

impl AccessLogger {
    /// A logger writing `format` lines to `sink`.
    pub fn new(format: std::sync::Arc<LogFormat>, sink: LogSink) -> Self {
        Self {
            format,
            sink,
            buf: RefCell::new(Vec::new()),
            lines: Cell::new(0),
            time: RefCell::new(TimeCache::default()),
            direct: Cell::new(false),
        }
    }

    /// From now on each line is handed to the writer at once, with what is
    /// buffered now (no periodic flush reaches a retired engine's logger).
    pub fn unbuffer(&self) {
        self.direct.set(true);
        self.flush();
    }

    /// Formats `entry`'s line into the worker's buffer, and hands the
    /// buffer to the writer once it is full.
    pub fn log(&self, entry: &Entry<'_>) {
        let (Ok(mut buf), Ok(mut time)) = (self.buf.try_borrow_mut(), self.time.try_borrow_mut()) else {
            return;
        };
        if buf.capacity() == 0 {
            buf.reserve(FLUSH_AT + 4096);
        }
        self.format.write(entry, Moment::now(), &mut time, &mut buf);
        self.lines.set(self.lines.get() + 1);
        if buf.len() >= FLUSH_AT || self.direct.get() {
            self.hand_over(&mut buf);
        }
    }

    /// Hands whatever the buffer holds to the writer (once a second, and
    /// when the worker stops).
    pub fn flush(&self) {
        if let Ok(mut buf) = self.buf.try_borrow_mut() {
            if !buf.is_empty() {
                self.hand_over(&mut buf);
            }
        }
    }

    fn hand_over(&self, buf: &mut Vec<u8>) {
        let batch = std::mem::replace(buf, Vec::with_capacity(FLUSH_AT + 4096));
        self.sink.send(batch, self.lines.replace(0));
    }

    /// Lines dropped so far because the writer fell behind (all
    /// loggers of the process together).
    pub fn dropped(&self) -> u64 {
        self.sink.dropped()
    }
}

impl Drop for AccessLogger {
    fn drop(&mut self) {
        self.flush();
    }
}

#[cfg(test)]
mod tests;
