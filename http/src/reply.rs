//! Answers ringway gives itself: [`LocalReply`], the reason phrases it
//! sends, and the one mapping from an [`Error`] to the status that answers
//! it. The engine and the serialiser both use these; neither owns them.

use std::{fmt, ops::Deref, sync::Arc};

use ringway_core::{Error, ErrorKind, Side};

/// Text of a local answer: a constant, one made for this answer, or one
/// shared from the configuration (an error page), so that sending a
/// configured page copies no string.
#[derive(Clone, PartialEq, Eq)]
pub enum Text {
    /// A constant.
    Static(&'static str),
    /// Made for this answer.
    Owned(String),
    /// Shared from the configuration.
    Shared(Arc<str>),
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        match self {
            Text::Static(s) => s,
            Text::Owned(s) => s,
            Text::Shared(s) => s,
        }
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        **self == *other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        **self == **other
    }
}

impl From<&'static str> for Text {
    fn from(s: &'static str) -> Self {
        Text::Static(s)
    }
}

impl From<String> for Text {
    fn from(s: String) -> Self {
        Text::Owned(s)
    }
}

impl From<Arc<str>> for Text {
    fn from(s: Arc<str>) -> Self {
        Text::Shared(s)
    }
}

impl From<std::borrow::Cow<'static, str>> for Text {
    fn from(s: std::borrow::Cow<'static, str>) -> Self {
        match s {
            std::borrow::Cow::Borrowed(s) => Text::Static(s),
            std::borrow::Cow::Owned(s) => Text::Owned(s),
        }
    }
}

/// A response the handler gives itself instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    /// Status code.
    pub status: u16,
    /// Content-Type of the body.
    pub content_type: Text,
    /// Body.
    pub body: Text,
    /// Further header lines, each `Name: value\r\n`.
    pub headers: String,
    /// Whether the body is the stock text for the status, which a
    /// configured error page replaces.
    pub stock: bool,
    /// Whether it says `Server: ringway` (a `response_remove` of Server
    /// drops it).
    pub server: bool,
}

impl LocalReply {
    /// A reply with `status` and the standard short text body for it.
    pub fn status(status: u16) -> Self {
        let reason = reason_phrase(status);
        let mut reply = Self::new(
            status,
            "text/plain; charset=utf-8",
            format!("{status} {reason}\n"),
        );
        reply.stock = true;
        reply
    }

    /// A reply with `status`, a body and its content type.
    pub fn new(status: u16, content_type: impl Into<Text>, body: impl Into<Text>) -> Self {
        Self {
            status,
            content_type: content_type.into(),
            body: body.into(),
            headers: String::new(),
            stock: false,
            server: true,
        }
    }

    /// The same reply with one more header field (CR and LF are dropped).
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        let clean = |s: &str| s.chars().filter(|&c| c != '\r' && c != '\n').collect::<String>();
        self.headers.push_str(&clean(name));
        self.headers.push_str(": ");
        self.headers.push_str(&clean(value));
        self.headers.push_str("\r\n");
        self
    }
}

/// The status that answers `error`, or `None` when the client cannot be
/// answered (it closed, or stopped reading).
pub(crate) fn status_for(error: &Error) -> Option<u16> {
    use ErrorKind as K;
    let status = match (error.kind(), error.side()) {
        (K::ConnectionClosed | K::ConnectionReset | K::Io | K::WriteTimeout, Side::Downstream) => {
            return None
        }
        (K::InvalidHttp, Side::Downstream) => 400,
        (K::HeadTooLarge | K::TooManyHeaders, Side::Downstream) => 431,
        (K::UriTooLong, _) => 414,
        (K::BodyTooLarge, _) => 413,
        (K::NotImplemented, Side::Downstream) => 501,
        (K::ExpectationFailed, _) => 417,
        (K::MethodNotAllowed, _) => 405,
        (K::ReadTimeout, Side::Downstream) => 408,
        (K::NoRoute, _) => 404,
        (K::NoUpstream, _) => 503,
        (K::ConnectTimeout | K::ReadTimeout | K::WriteTimeout, Side::Upstream) => 504,
        (_, Side::Upstream) => 502,
        _ => 500,
    };
    Some(status)
}

/// The reason phrase ringway sends with `status`.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        407 => "Proxy Authentication Required",
        408 => "Request Timeout",
        410 => "Gone",
        413 => "Content Too Large",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        406 => "Not Acceptable",
        409 => "Conflict",
        411 => "Length Required",
        412 => "Precondition Failed",
        415 => "Unsupported Media Type",
        418 => "I'm a teapot",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        423 => "Locked",
        426 => "Upgrade Required",
        428 => "Precondition Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        451 => "Unavailable For Legal Reasons",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        508 => "Loop Detected",
        _ => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_statuses_once() {
        let e = |k, s| Error::new(k, s, "t");
        assert_eq!(
            status_for(&e(ErrorKind::InvalidHttp, Side::Downstream)),
            Some(400)
        );
        assert_eq!(status_for(&e(ErrorKind::InvalidHttp, Side::Upstream)), Some(502));
        assert_eq!(
            status_for(&e(ErrorKind::TooManyHeaders, Side::Downstream)),
            Some(431)
        );
        assert_eq!(status_for(&e(ErrorKind::UriTooLong, Side::Downstream)), Some(414));
        assert_eq!(
            status_for(&e(ErrorKind::ConnectFailed, Side::Upstream)),
            Some(502)
        );
        assert_eq!(
            status_for(&e(ErrorKind::ConnectTimeout, Side::Upstream)),
            Some(504)
        );
        assert_eq!(status_for(&e(ErrorKind::ReadTimeout, Side::Upstream)), Some(504));
        assert_eq!(
            status_for(&e(ErrorKind::ReadTimeout, Side::Downstream)),
            Some(408)
        );
        assert_eq!(
            status_for(&e(ErrorKind::ConnectionClosed, Side::Downstream)),
            None
        );
        assert_eq!(
            status_for(&e(ErrorKind::NotImplemented, Side::Downstream)),
            Some(501)
        );
    }

    #[test]
    fn local_replies_carry_a_short_body() {
        let r = LocalReply::status(404);
        assert_eq!(r.body, "404 Not Found\n");
    }
}
