//! The one error type of ringway's libraries.
//!
//! An [`Error`] carries what went wrong ([`ErrorKind`]), on which side of the
//! proxy ([`Side`]), whether the operation may be retried on another
//! connection, a short static or owned context, and the underlying cause. The
//! HTTP engine maps an error to its response in one place, from the kind and
//! the side alone. [`OrErr`] keeps call sites short:
//! `stream.connect().await.or_err(ErrorKind::ConnectRefused, Side::Upstream, "connecting")`.

use std::{borrow::Cow, fmt, io};

/// A specialised `Result` for ringway's libraries.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, as the engine needs to know it to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A message that breaks HTTP/1.1 syntax or framing rules.
    InvalidHttp,
    /// A transfer coding or feature ringway does not implement.
    NotImplemented,
    /// A request or response head larger than the configured limit.
    HeadTooLarge,
    /// More header fields than the configured limit.
    TooManyHeaders,
    /// A request target longer than the configured limit.
    UriTooLong,
    /// A request body larger than the configured limit.
    BodyTooLarge,
    /// A method the listener does not serve (e.g. CONNECT on a reverse proxy).
    MethodNotAllowed,
    /// An `Expect` field with an expectation other than `100-continue`.
    ExpectationFailed,
    /// The peer closed the connection before a complete message.
    ConnectionClosed,
    /// The peer reset the connection (`ECONNRESET`, or `EPIPE` after its
    /// FIN): its socket was gone when our bytes reached it, so it did not
    /// read them.
    ConnectionReset,
    /// An I/O error on an established connection.
    Io,
    /// Connecting to an upstream failed (refused, unreachable, reset).
    ConnectFailed,
    /// Connecting to an upstream took longer than the connect timeout.
    ConnectTimeout,
    /// A TLS handshake failed (with an upstream: its certificate did not
    /// verify, or no common protocol or cipher).
    TlsHandshake,
    /// A peer did not send the next bytes in time.
    ReadTimeout,
    /// The client closed its connection while the proxy waited for the
    /// upstream on its behalf (logged as 499, nginx's code for it).
    ClientGone,
    /// A peer did not accept our bytes in time.
    WriteTimeout,
    /// No route matches the request.
    NoRoute,
    /// The route's upstream group has no server to send to.
    NoUpstream,
    /// Invalid configuration.
    Config,
    /// A bug or an impossible state inside ringway.
    Internal,
}

impl ErrorKind {
    /// Whether it ended an attempt while connecting (the TCP connect or
    /// the TLS handshake): no byte of a request reached the server.
    pub fn is_connecting(self) -> bool {
        matches!(
            self,
            Self::ConnectFailed | Self::ConnectTimeout | Self::TlsHandshake
        )
    }
}

/// Which side of the proxy an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client that connected to ringway.
    Downstream,
    /// The server ringway forwards to.
    Upstream,
    /// ringway itself (configuration, setup, bugs).
    Internal,
}

/// ringway's error: kind, side, retryability, context and cause.
pub struct Error {
    kind: ErrorKind,
    side: Side,
    retryable: bool,
    context: Cow<'static, str>,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    /// A new error with a context message and no cause.
    pub fn new(kind: ErrorKind, side: Side, context: impl Into<Cow<'static, str>>) -> Self {
        Self {
            kind,
            side,
            retryable: false,
            context: context.into(),
            cause: None,
        }
    }

    /// The same error with `cause` attached.
    #[must_use]
    pub fn with_cause(mut self, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    /// The same error, marked as safe to retry on another connection.
    #[must_use]
    pub fn retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// Where it went wrong.
    pub fn side(&self) -> Side {
        self.side
    }

    /// Whether the operation may be retried on a fresh connection.
    pub fn is_retryable(&self) -> bool {
        self.retryable
    }

    /// The context message given where the error was raised.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The I/O error kind of the cause, when the cause is an I/O error.
    pub fn io_kind(&self) -> Option<io::ErrorKind> {
        self.cause
            .as_deref()
            .and_then(|c| c.downcast_ref::<io::Error>())
            .map(io::Error::kind)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.side {
            Side::Downstream => "downstream",
            Side::Upstream => "upstream",
            Side::Internal => "internal",
        };
        write!(f, "{side} {:?}: {}", self.kind, self.context)?;
        if let Some(cause) = &self.cause {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause
            .as_deref()
            .map(|c| c as &(dyn std::error::Error + 'static))
    }
}

/// Turns a foreign error into an [`Error`] with a kind, side and context.
pub trait OrErr<T> {
    /// Wraps the error, keeping it as the cause.
    fn or_err(self, kind: ErrorKind, side: Side, context: &'static str) -> Result<T>;
}

impl<T, E> OrErr<T> for std::result::Result<T, E>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn or_err(self, kind: ErrorKind, side: Side, context: &'static str) -> Result<T> {
        self.map_err(|e| Error::new(kind, side, context).with_cause(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn or_err_keeps_cause_and_io_kind() {
        let r: std::result::Result<(), io::Error> = Err(io::ErrorKind::ConnectionRefused.into());
        let e = r
            .or_err(
                ErrorKind::ConnectFailed,
                Side::Upstream,
                "connecting to 127.0.0.1:1",
            )
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectFailed);
        assert_eq!(e.side(), Side::Upstream);
        assert_eq!(e.io_kind(), Some(io::ErrorKind::ConnectionRefused));
        assert!(e.to_string().contains("connecting to 127.0.0.1:1"));
        assert!(!e.is_retryable());
    }
}
