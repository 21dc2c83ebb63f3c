//! The validated settings the engine runs with: size limits, timeouts and
//! which proxy headers to add.

use std::time::Duration;

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
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeaders {
    /// Client-identifying headers to the upstream.
    pub forwarded: ForwardedStyle,
    /// Add `Via: 1.1 ringway` in both directions.
    pub via: bool,
}

impl Default for ProxyHeaders {
    fn default() -> Self {
        Self {
            forwarded: ForwardedStyle::XForwarded,
            via: true,
        }
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
    /// Log one line per request at target `ringway::access`.
    pub access_log: bool,
    /// Move tunnels and large bodies between two TCP sockets with splice(2),
    /// never copying them into user space.
    pub splice: bool,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            limits: HttpLimits::default(),
            timeouts: Timeouts::default(),
            proxy_headers: ProxyHeaders::default(),
            buffer_size: DEFAULT_BUFFER_SIZE,
            scheme: "http",
            access_log: false,
            splice: true,
        }
    }
}
