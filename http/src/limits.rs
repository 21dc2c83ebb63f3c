//! The validated settings the engine runs with: size limits, timeouts and
//! which proxy headers to add.

use std::{sync::Arc, time::Duration};

/// The most header fields a head may carry, whatever the configuration says
/// (the parser's field array lives on the stack).
pub const MAX_HEADERS_CAP: usize = 1024;

/// The default read buffer: 64 KiB moves a 64 KiB body in one read and one
/// write (16 KiB buffers cost a third more CPU per request at that size).
pub const DEFAULT_BUFFER_SIZE: usize = 64 * 1024;

/// Size limits on what a peer may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request or response head, in bytes (431 / 502 past it).
    pub max_header_bytes: usize,
    /// Most header fields in one head (431 / 502 past it).
    pub max_headers: usize,
    /// Longest request target, in bytes (414 past it).
    pub max_uri_bytes: usize,
    /// Largest request body, in bytes (413: before anything goes upstream
    /// when Content-Length says so, else when a chunked body grows past
    /// it). `None`: no limit.
    pub max_body: Option<u64>,
    /// The slowest a request body may arrive: fewer bytes than this over a
    /// window of waiting for the client gets 408 and a closed connection.
    /// `None`: only the `client_io` timeout between reads applies.
    pub min_body_rate: Option<BodyRate>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body: None,
            min_body_rate: Some(BodyRate::default()),
        }
    }
}

/// A least rate for request bodies, measured over the time spent waiting
/// for the client's bytes (time the upstream takes to accept them does not
/// count against the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyRate {
    /// Bytes per second, at least.
    pub bytes_per_second: u64,
    /// Over windows of this much waiting.
    pub window: Duration,
}

impl Default for BodyRate {
    /// 500 bytes per second over 10 s windows, like Apache's mod_reqtimeout.
    fn default() -> Self {
        Self {
            bytes_per_second: 500,
            window: Duration::from_secs(10),
        }
    }
}

/// Timeouts of the engine; each bounds one wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Connecting to an upstream server (504 past it).
    pub connect: Duration,
    /// Waiting for an upstream's response head, and between two reads of an
    /// upstream body (504 / connection closed past it).
    pub upstream_response: Duration,
    /// Receiving a whole request head once its first byte came, and a new
    /// connection's first request (408 past it: slowloris).
    pub client_head: Duration,
    /// Waiting for the next request on a keep-alive connection.
    pub idle: Duration,
    /// Waiting for a client to send more of a request body or to take more
    /// of a response.
    pub client_io: Duration,
    /// An upgraded (WebSocket) tunnel with no bytes in either direction.
    pub tunnel_idle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            upstream_response: Duration::from_secs(60),
            client_head: Duration::from_secs(15),
            idle: Duration::from_secs(60),
            client_io: Duration::from_secs(60),
            tunnel_idle: Duration::from_secs(300),
        }
    }
}

/// How the proxy tells the upstream who the client was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ForwardedStyle {
    /// `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `X-Forwarded-Host`
    /// (reverse proxy default).
    #[default]
    XForwarded,
    /// RFC 7239 `Forwarded: for=...;proto=...;host=...` (appended).
    Rfc7239,
    /// Add nothing; pass what the client sent.
    Off,
    /// `X-Forwarded-For` only, the client's address appended (forward
    /// proxy `forwarded_for = "append"`).
    AppendFor,
    /// `X-Forwarded-For` replaced by the client's address alone
    /// (`forwarded_for = "truncate"`).
    TruncateFor,
    /// No `X-Forwarded-For` at all, the client's one removed
    /// (`forwarded_for = "delete"`).
    DeleteFor,
}

/// The headers the proxy adds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyHeaders {
    /// Client-identifying headers to the upstream.
    pub forwarded: ForwardedStyle,
    /// The `Via` entry added in both directions (`None`: no `Via`, and no
    /// loop check by `Via`).
    pub via: Option<ViaName>,
}

impl Default for ProxyHeaders {
    fn default() -> Self {
        Self {
            forwarded: ForwardedStyle::XForwarded,
            via: Some(ViaName::default()),
        }
    }
}

/// The name this proxy gives itself in `Via` (the received-by of RFC 9110
/// section 7.6.3), which is also how it recognises a request that already
/// went through it: a loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ViaName {
    /// `Via: 1.1 NAME\r\n`, written as is.
    line: Arc<[u8]>,
}

impl Default for ViaName {
    /// `ringway`.
    fn default() -> Self {
        Self::new("ringway").unwrap_or_else(|_| unreachable!("a valid token"))
    }
}

impl ViaName {
    /// A name of token characters (letters, digits, `-._~!$&'*+^`|`),
    /// at most 64; `Err` says what is wrong with it.
    pub fn new(name: &str) -> Result<Self, String> {
        let token = |c: char| c.is_ascii_alphanumeric() || "-._~!$&'*+^`|".contains(c);
        if name.is_empty() || name.len() > 64 || !name.chars().all(token) {
            return Err(format!(
                "{name:?} is not a Via name: 1 to 64 letters, digits and -._~!$&'*+^`|"
            ));
        }
        Ok(Self {
            line: format!("Via: 1.1 {name}\r\n").into_bytes().into(),
        })
    }

    /// The name.
    pub fn name(&self) -> &str {
        let line = &self.line[b"Via: 1.1 ".len()..self.line.len() - 2];
        std::str::from_utf8(line).unwrap_or_default()
    }

    /// The whole `Via` field line.
    pub(crate) fn line(&self) -> &[u8] {
        &self.line
    }

    /// Whether a `Via` field value names this proxy among its entries
    /// (`1.1 name`, `HTTP/1.1 name (comment)`, ...), ASCII case ignored.
    pub fn is_in(&self, via_value: &[u8]) -> bool {
        let name = self.name().as_bytes();
        crate::head::list_elements(via_value).any(|entry| {
            let mut words = entry.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty());
            let _protocol = words.next();
            words.next().is_some_and(|by| by.eq_ignore_ascii_case(name))
        })
    }
}

/// Everything a listener's engine needs besides its handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineSettings {
    /// Size limits.
    pub limits: HttpLimits,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Proxy headers.
    pub proxy_headers: ProxyHeaders,
    /// Read buffer per connection side, in bytes; bodies stream through it.
    /// Only busy connections hold one (idle ones give theirs back), so a
    /// large buffer costs memory per request in flight, not per connection.
    pub buffer_size: usize,
    /// The scheme clients used (for `X-Forwarded-Proto`).
    pub scheme: &'static str,
    /// Move tunnels and large bodies between two TCP sockets with splice(2),
    /// never copying them into user space.
    pub splice: bool,
    /// Forward TRACE requests (off: they are answered 405, as nginx does,
    /// since a TRACE echoes the client's cookies and credentials back).
    pub allow_trace: bool,
    /// Answer every request with a 308 to the same URL over HTTPS, at this
    /// port (a plain listener's `redirect_https`).
    pub redirect_https: Option<u16>,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            limits: HttpLimits::default(),
            timeouts: Timeouts::default(),
            proxy_headers: ProxyHeaders::default(),
            buffer_size: DEFAULT_BUFFER_SIZE,
            scheme: "http",
            splice: true,
            allow_trace: false,
            redirect_https: None,
        }
    }
}
