//! HTTP/1.1 message heads: parsing, framing rules and zero-copy field access.
//!
//! A head is parsed by httparse straight from the connection's read buffer.
//! Once complete, its bytes are split off that buffer and frozen into one
//! [`Bytes`]; the head keeps only offsets into it (request line, every field
//! name and value), so parsing allocates nothing per field and
//! [`RequestHead::header_bytes`] hands out `Bytes` slices without copying.
//! Field names are classified once ([`HeaderKind`]) so that serialising
//! later never compares names again.
//!
//! Framing is decided here, per RFC 9112 section 6, and every ambiguity is an
//! error rather than a guess: Content-Length with Transfer-Encoding, differing
//! or non-numeric Content-Length values, a request Transfer-Encoding other
//! than `chunked`, Transfer-Encoding on HTTP/1.0, more than one Host (or none
//! on HTTP/1.1), bare LF line ends, and whatever httparse rejects (whitespace
//! before a colon, obs-fold, control characters in a field).

use std::mem::MaybeUninit;

use bytes::{Bytes, BytesMut};
use ringway_core::{Error, ErrorKind, Result, Side};

use crate::limits::{HttpLimits, MAX_HEADERS_CAP};

/// HTTP version of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/1.0
    Http10,
    /// HTTP/1.1
    Http11,
}

/// Request method; anything else is [`Method::Other`] (its text is in the head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET
    Get,
    /// HEAD
    Head,
    /// POST
    Post,
    /// PUT
    Put,
    /// DELETE
    Delete,
    /// CONNECT
    Connect,
    /// OPTIONS
    Options,
    /// TRACE
    Trace,
    /// PATCH
    Patch,
    /// Any other token.
    Other,
}

impl Method {
    fn from_token(token: &[u8]) -> Self {
        match token {
            b"GET" => Method::Get,
            b"HEAD" => Method::Head,
            b"POST" => Method::Post,
            b"PUT" => Method::Put,
            b"DELETE" => Method::Delete,
            b"CONNECT" => Method::Connect,
            b"OPTIONS" => Method::Options,
            b"TRACE" => Method::Trace,
            b"PATCH" => Method::Patch,
            _ => Method::Other,
        }
    }

    /// Whether repeating the request has the same effect as sending it once
    /// (RFC 9110 section 9.2.2), which makes a retry safe.
    pub fn is_idempotent(self) -> bool {
        matches!(
            self,
            Method::Get | Method::Head | Method::Put | Method::Delete | Method::Options | Method::Trace
        )
    }
}

/// What ringway knows about a header field from its name alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderKind {
    /// A field the proxy passes through untouched.
    Other,
    /// `Host`
    Host,
    /// `Content-Length`
    ContentLength,
    /// `Transfer-Encoding`
    TransferEncoding,
    /// `Connection`
    Connection,
    /// `Keep-Alive`
    KeepAlive,
    /// `Proxy-Connection`
    ProxyConnection,
    /// `TE`
    Te,
    /// `Trailer`
    Trailer,
    /// `Upgrade`
    Upgrade,
    /// `Proxy-Authorization`
    ProxyAuthorization,
    /// `Proxy-Authenticate`
    ProxyAuthenticate,
    /// `Expect`
    Expect,
    /// `X-Forwarded-For`
    XForwardedFor,
    /// `X-Forwarded-Proto`
    XForwardedProto,
    /// `X-Forwarded-Host`
    XForwardedHost,
    /// `Forwarded`
    Forwarded,
    /// `Via`
    Via,
    /// `Max-Forwards`
    MaxForwards,
}

impl HeaderKind {
    /// Classifies a field name, ignoring ASCII case.
    pub fn of(name: &[u8]) -> Self {
        let is = |known: &str| name.eq_ignore_ascii_case(known.as_bytes());
        match name.len() {
            2 if is("te") => HeaderKind::Te,
            3 if is("via") => HeaderKind::Via,
            4 if is("host") => HeaderKind::Host,
            6 if is("expect") => HeaderKind::Expect,
            7 if is("upgrade") => HeaderKind::Upgrade,
            7 if is("trailer") => HeaderKind::Trailer,
            9 if is("forwarded") => HeaderKind::Forwarded,
            10 if is("connection") => HeaderKind::Connection,
            10 if is("keep-alive") => HeaderKind::KeepAlive,
            12 if is("max-forwards") => HeaderKind::MaxForwards,
            14 if is("content-length") => HeaderKind::ContentLength,
            15 if is("x-forwarded-for") => HeaderKind::XForwardedFor,
            16 if is("proxy-connection") => HeaderKind::ProxyConnection,
            16 if is("x-forwarded-host") => HeaderKind::XForwardedHost,
            17 if is("transfer-encoding") => HeaderKind::TransferEncoding,
            17 if is("x-forwarded-proto") => HeaderKind::XForwardedProto,
            18 if is("proxy-authenticate") => HeaderKind::ProxyAuthenticate,
            19 if is("proxy-authorization") => HeaderKind::ProxyAuthorization,
            _ => HeaderKind::Other,
        }
    }

    /// Whether the field describes one connection only and is never
    /// forwarded as is (RFC 9110 section 7.6.1, plus the proxy credentials).
    pub fn is_hop_by_hop(self) -> bool {
        matches!(
            self,
            HeaderKind::Connection
                | HeaderKind::KeepAlive
                | HeaderKind::ProxyConnection
                | HeaderKind::Te
                | HeaderKind::Trailer
                | HeaderKind::TransferEncoding
                | HeaderKind::Upgrade
                | HeaderKind::ProxyAuthorization
                | HeaderKind::ProxyAuthenticate
        )
    }
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the sender closes the connection (responses only).
    UntilClose,
}

/// One header field, borrowed from its head.
#[derive(Debug, Clone, Copy)]
pub struct HeaderField<'a> {
    /// The name as received.
    pub name: &'a [u8],
    /// The value, without surrounding whitespace.
    pub value: &'a [u8],
    /// The name's classification.
    pub kind: HeaderKind,
}

/// Offsets of a part of a head's bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// The span of `part` inside `base`; empty when `part` does not lie in
    /// `base` (httparse returns a static `""` for an absent reason phrase).
    fn within(base: &[u8], part: &[u8]) -> Span {
        let start = (part.as_ptr() as usize).wrapping_sub(base.as_ptr() as usize);
        let end = start.wrapping_add(part.len());
        match (u32::try_from(start), u32::try_from(end)) {
            (Ok(s), Ok(e)) if start <= end && end <= base.len() => Span { start: s, end: e },
            _ => Span::default(),
        }
    }

    /// The bytes of the span in `raw`, or nothing when the span does not
    /// fit (a head whose parse failed half-way).
    fn get(self, raw: &[u8]) -> &[u8] {
        raw.get(self.range()).unwrap_or_default()
    }

    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

#[derive(Debug, Clone, Copy)]
struct Field {
    name: Span,
    value: Span,
    kind: HeaderKind,
}

/// Tokens of the `Connection` field(s).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ConnectionTokens {
    pub(crate) close: bool,
    pub(crate) keep_alive: bool,
    pub(crate) upgrade: bool,
    /// Other tokens: names of further hop-by-hop fields.
    pub(crate) names_fields: bool,
}

/// What the fields of a head say about framing and connection handling.
#[derive(Debug, Default)]
struct FieldFacts {
    content_length: Option<u64>,
    content_length_value: Option<Span>,
    te_present: bool,
    te_chunked_last: bool,
    te_chunked_count: u32,
    te_other_count: u32,
    host_count: u32,
    host: Option<Span>,
    connection: ConnectionTokens,
    expect_continue: bool,
    expect_other: bool,
    upgrade: Option<Span>,
    via: bool,
    max_forwards: Option<Span>,
}

impl FieldFacts {
    fn scan(raw: &[u8], fields: &[Field], side: Side) -> Result<Self> {
        let mut facts = FieldFacts::default();
        for f in fields {
            let value = f.value.get(raw);
            match f.kind {
                HeaderKind::ContentLength => {
                    let n = parse_content_length(value).ok_or_else(|| {
                        Error::new(
                            ErrorKind::InvalidHttp,
                            side,
                            "Content-Length is not a plain number",
                        )
                    })?;
                    // Repeats must be the same text, not only the same
                    // number: `05` and `5` are different field values
                    // (RFC 9112 section 6.3), which strict parsers refuse.
                    if facts
                        .content_length_value
                        .is_some_and(|seen| seen.get(raw) != value)
                    {
                        return Err(Error::new(
                            ErrorKind::InvalidHttp,
                            side,
                            "Content-Length fields with different values",
                        ));
                    }
                    facts.content_length = Some(n);
                    facts.content_length_value = Some(f.value);
                }
                HeaderKind::TransferEncoding => {
                    facts.te_present = true;
                    for coding in list_elements(value) {
                        if coding.eq_ignore_ascii_case(b"chunked") {
                            facts.te_chunked_count += 1;
                            facts.te_chunked_last = true;
                        } else {
                            facts.te_other_count += 1;
                            facts.te_chunked_last = false;
                        }
                    }
                }
                HeaderKind::Host => {
                    facts.host_count += 1;
                    facts.host = Some(f.value);
                }
                HeaderKind::Connection => {
                    for token in list_elements(value) {
                        if token.eq_ignore_ascii_case(b"close") {
                            facts.connection.close = true;
                        } else if token.eq_ignore_ascii_case(b"keep-alive") {
                            facts.connection.keep_alive = true;
                        } else if token.eq_ignore_ascii_case(b"upgrade") {
                            facts.connection.upgrade = true;
                        } else {
                            facts.connection.names_fields = true;
                        }
                    }
                }
                HeaderKind::Expect => {
                    for expectation in list_elements(value) {
                        if expectation.eq_ignore_ascii_case(b"100-continue") {
                            facts.expect_continue = true;
                        } else {
                            facts.expect_other = true;
                        }
                    }
                }
                HeaderKind::Upgrade => facts.upgrade = Some(f.value),
                HeaderKind::Via => facts.via = true,
                HeaderKind::MaxForwards if facts.max_forwards.is_none() => facts.max_forwards = Some(f.value),
                _ => {}
            }
        }
        if facts.te_present && facts.content_length.is_some() {
            return Err(Error::new(
                ErrorKind::InvalidHttp,
                side,
                "Content-Length together with Transfer-Encoding",
            ));
        }
        Ok(facts)
    }

    /// Framing from Transfer-Encoding, when present: only exactly `chunked`
    /// is accepted.
    fn chunked_or_error(&self, side: Side) -> Result<BodyFraming> {
        if self.te_chunked_count == 1 && self.te_chunked_last && self.te_other_count == 0 {
            return Ok(BodyFraming::Chunked);
        }
        if self.te_chunked_last && self.te_chunked_count == 1 {
            return Err(Error::new(
                ErrorKind::NotImplemented,
                side,
                "transfer codings other than chunked are not supported",
            ));
        }
        Err(Error::new(
            ErrorKind::InvalidHttp,
            side,
            "Transfer-Encoding whose final coding is not a single chunked",
        ))
    }
}

/// Splits a comma-separated field value into its non-empty elements,
/// trimmed of optional whitespace.
pub(crate) fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// `1*DIGIT` that fits in a u64, nothing else (no sign, list or spaces).
fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value
        .iter()
        .try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
}

/// Every LF must end a CRLF: a bare LF is read differently by different
/// parsers, which is what request smuggling feeds on.
fn reject_bare_lf(head: &[u8], side: Side) -> Result<()> {
    for i in memchr::memchr_iter(b'\n', head) {
        if i == 0 || head[i - 1] != b'\r' {
            return Err(Error::new(ErrorKind::InvalidHttp, side, "bare LF line ending"));
        }
    }
    Ok(())
}

fn httparse_error(e: httparse::Error, side: Side) -> Error {
    let (kind, context) = match e {
        httparse::Error::TooManyHeaders => (ErrorKind::TooManyHeaders, "too many header fields"),
        httparse::Error::HeaderName => (
            ErrorKind::InvalidHttp,
            "invalid header field name (whitespace before the colon, or obs-fold?)",
        ),
        httparse::Error::HeaderValue => (
            ErrorKind::InvalidHttp,
            "invalid character in a header field value",
        ),
        httparse::Error::NewLine => (ErrorKind::InvalidHttp, "invalid line ending"),
        httparse::Error::Version => (ErrorKind::InvalidHttp, "invalid or unsupported HTTP version"),
        httparse::Error::Token => (ErrorKind::InvalidHttp, "invalid token in the request line"),
        httparse::Error::Status => (ErrorKind::InvalidHttp, "invalid status line"),
    };
    Error::new(kind, side, context)
}

fn version_of(v: Option<u8>, side: Side) -> Result<Version> {
    match v {
        Some(0) => Ok(Version::Http10),
        Some(1) => Ok(Version::Http11),
        _ => Err(Error::new(
            ErrorKind::InvalidHttp,
            side,
            "unsupported HTTP version",
        )),
    }
}

fn header_storage() -> [MaybeUninit<httparse::Header<'static>>; MAX_HEADERS_CAP] {
    [const { MaybeUninit::uninit() }; MAX_HEADERS_CAP]
}

/// A parsed request head.
#[derive(Debug)]
pub struct RequestHead {
    raw: Bytes,
    method: Method,
    method_span: Span,
    target: Span,
    version: Version,
    fields: Vec<Field>,
    body: BodyFraming,
    host: Option<Span>,
    connection: ConnectionTokens,
    expect_continue: bool,
    upgrade: Option<Span>,
    via: bool,
    max_forwards: Option<Span>,
}

impl Default for RequestHead {
    fn default() -> Self {
        Self::new()
    }
}

impl RequestHead {
    /// An empty head, to be filled by [`RequestHead::parse`] and reused.
    pub fn new() -> Self {
        Self {
            raw: Bytes::new(),
            method: Method::Get,
            method_span: Span::default(),
            target: Span::default(),
            version: Version::Http11,
            fields: Vec::with_capacity(16),
            body: BodyFraming::None,
            host: None,
            connection: ConnectionTokens::default(),
            expect_continue: false,
            upgrade: None,
            via: false,
            max_forwards: None,
        }
    }

    /// Parses a request head from the front of `buf`.
    ///
    /// Returns `Ok(true)` when a whole head was parsed: its bytes are split
    /// off `buf`, which keeps what follows (body, pipelined requests).
    /// Returns `Ok(false)` when more bytes are needed. Fails, with the reason
    /// as context, on malformed or ambiguous input and on exceeded limits.
    pub fn parse(&mut self, buf: &mut BytesMut, limits: &HttpLimits) -> Result<bool> {
        const SIDE: Side = Side::Downstream;
        let mut storage = header_storage();
        let max = limits.max_headers.min(MAX_HEADERS_CAP);
        let mut req = httparse::Request::new(&mut []);
        let status = httparse::ParserConfig::default().parse_request_with_uninit_headers(
            &mut req,
            buf,
            &mut storage[..max],
        );
        let len = match status {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if memchr::memchr(b'\n', buf).is_none() && buf.len() > limits.max_uri_bytes + 16 {
                    return Err(Error::new(ErrorKind::UriTooLong, SIDE, "request target too long"));
                }
                if buf.len() >= limits.max_header_bytes {
                    return Err(Error::new(
                        ErrorKind::HeadTooLarge,
                        SIDE,
                        "request head too large",
                    ));
                }
                return Ok(false);
            }
            Err(e) => return Err(httparse_error(e, SIDE)),
        };
        if len > limits.max_header_bytes {
            return Err(Error::new(
                ErrorKind::HeadTooLarge,
                SIDE,
                "request head too large",
            ));
        }
        let bytes: &[u8] = buf;
        reject_bare_lf(&bytes[..len], SIDE)?;
        let (Some(method), Some(target)) = (req.method, req.path) else {
            return Err(Error::new(
                ErrorKind::InvalidHttp,
                SIDE,
                "incomplete request line",
            ));
        };
        if target.len() > limits.max_uri_bytes {
            return Err(Error::new(ErrorKind::UriTooLong, SIDE, "request target too long"));
        }
        if let Some(authority) = absolute_form_authority(target.as_bytes()) {
            if authority.is_empty() || !is_valid_host(authority) {
                return Err(Error::new(
                    ErrorKind::InvalidHttp,
                    SIDE,
                    "invalid authority in an absolute-form request target",
                ));
            }
        }
        let version = version_of(req.version, SIDE)?;
        self.method = Method::from_token(method.as_bytes());
        self.method_span = Span::within(bytes, method.as_bytes());
        self.target = Span::within(bytes, target.as_bytes());
        self.version = version;
        self.fields.clear();
        self.fields.extend(req.headers.iter().map(|h| Field {
            name: Span::within(bytes, h.name.as_bytes()),
            value: Span::within(bytes, h.value),
            kind: HeaderKind::of(h.name.as_bytes()),
        }));
        let facts = FieldFacts::scan(bytes, &self.fields, SIDE)?;
        self.body = if facts.te_present {
            if version == Version::Http10 {
                return Err(Error::new(
                    ErrorKind::InvalidHttp,
                    SIDE,
                    "Transfer-Encoding in an HTTP/1.0 request",
                ));
            }
            facts.chunked_or_error(SIDE)?
        } else {
            match facts.content_length {
                None => BodyFraming::None,
                Some(n) => BodyFraming::Length(n),
            }
        };
        if facts.host_count > 1 {
            return Err(Error::new(
                ErrorKind::InvalidHttp,
                SIDE,
                "more than one Host field",
            ));
        }
        if facts.host_count == 0 && version == Version::Http11 {
            return Err(Error::new(
                ErrorKind::InvalidHttp,
                SIDE,
                "HTTP/1.1 request without Host",
            ));
        }
        if let Some(host) = facts.host {
            if !is_valid_host(host.get(bytes)) {
                return Err(Error::new(ErrorKind::InvalidHttp, SIDE, "invalid Host field"));
            }
        }
        if facts.expect_other {
            return Err(Error::new(
                ErrorKind::ExpectationFailed,
                SIDE,
                "unsupported expectation",
            ));
        }
        self.host = facts.host;
        self.connection = facts.connection;
        self.expect_continue = facts.expect_continue && version == Version::Http11;
        self.upgrade = facts.upgrade;
        self.via = facts.via;
        self.max_forwards = facts.max_forwards;
        self.raw = buf.split_to(len).freeze();
        Ok(true)
    }

    /// Drops the head's bytes so the read buffer can reuse its space.
    pub fn clear(&mut self) {
        self.raw = Bytes::new();
        self.fields.clear();
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The method as sent.
    pub fn method_bytes(&self) -> &[u8] {
        self.method_span.get(&self.raw)
    }

    /// The request target as sent (origin-form, absolute-form, authority-form or `*`).
    pub fn target(&self) -> &[u8] {
        self.target.get(&self.raw)
    }

    /// The request target as a `Bytes` slice of the read buffer (no copy).
    pub fn target_bytes(&self) -> Bytes {
        self.raw.slice(self.target.range())
    }

    /// The path of an origin-form target: the target without its query.
    pub fn path(&self) -> &[u8] {
        let target = self.target();
        match memchr::memchr(b'?', target) {
            Some(q) => &target[..q],
            None => target,
        }
    }

    /// The HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// The Host field's value, if any.
    pub fn host(&self) -> Option<&[u8]> {
        self.host.map(|s| s.get(&self.raw))
    }

    /// How the request body is framed.
    pub fn body(&self) -> BodyFraming {
        self.body
    }

    /// Whether the client asked to close the connection after this request.
    pub fn wants_close(&self) -> bool {
        match self.version {
            Version::Http11 => self.connection.close,
            Version::Http10 => self.connection.close || !self.connection.keep_alive,
        }
    }

    /// Whether the client sent `Expect: 100-continue`.
    pub fn expects_continue(&self) -> bool {
        self.expect_continue
    }

    /// The protocol of an HTTP/1.1 WebSocket upgrade request
    /// (`Connection: upgrade` plus `Upgrade: websocket`), if this is one.
    ///
    /// Other protocols (such as `h2c`) are not tunnelled: the request is
    /// forwarded as a plain one, without its hop-by-hop `Upgrade`, so the
    /// routing and proxy fields keep applying to everything that follows.
    pub fn upgrade(&self) -> Option<&[u8]> {
        if self.version != Version::Http11 || !self.connection.upgrade {
            return None;
        }
        let value = self.upgrade?.get(&self.raw);
        let mut protocols = list_elements(value);
        match (protocols.next(), protocols.next()) {
            (Some(p), None) if p.eq_ignore_ascii_case(b"websocket") => Some(value),
            _ => None,
        }
    }

    /// Whether the request carries a `Via` field (it came through a proxy).
    pub fn has_via(&self) -> bool {
        self.via
    }

    /// The first `Max-Forwards` field's value, if any: `Some(Err(()))`
    /// when it is not a plain number (RFC 9110 section 7.6.2: `1*DIGIT`).
    pub fn max_forwards(&self) -> Option<std::result::Result<u64, ()>> {
        let value = self.max_forwards?.get(&self.raw);
        Some(parse_content_length(value).ok_or(()))
    }

    /// Every header field, in order.
    pub fn headers(&self) -> impl Iterator<Item = HeaderField<'_>> + '_ {
        self.fields.iter().map(|f| HeaderField {
            name: f.name.get(&self.raw),
            value: f.value.get(&self.raw),
            kind: f.kind,
        })
    }

    /// The first value of the field `name` (ASCII case ignored).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| h.value)
    }

    /// The first value of a field ringway classified as `kind` when it
    /// parsed the head (no name comparison). Not for [`HeaderKind::Other`].
    pub fn field(&self, kind: HeaderKind) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|f| f.kind == kind)
            .map(|f| f.value.get(&self.raw))
    }

    /// The first value of the field `name` as a `Bytes` slice (no copy).
    pub fn header_bytes(&self, name: &str) -> Option<Bytes> {
        self.fields
            .iter()
            .find(|f| f.name.get(&self.raw).eq_ignore_ascii_case(name.as_bytes()))
            .map(|f| self.raw.slice(f.value.range()))
    }

    /// The head exactly as received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    pub(crate) fn connection_tokens(&self) -> ConnectionTokens {
        self.connection
    }
}

/// A whole request head parsed from `raw` with the default limits (unit
/// tests of the modules that take a parsed head).
#[cfg(test)]
pub(crate) fn parsed(raw: &str) -> RequestHead {
    let mut head = RequestHead::new();
    assert!(head
        .parse(&mut BytesMut::from(raw.as_bytes()), &HttpLimits::default())
        .expect("a valid head"));
    head
}

/// The authority of an absolute-form target (`http://authority/...`), if
/// the target is one.
pub(crate) fn absolute_form_authority(target: &[u8]) -> Option<&[u8]> {
    let rest = if target.len() >= 7 && target[..7].eq_ignore_ascii_case(b"http://") {
        &target[7..]
    } else if target.len() >= 8 && target[..8].eq_ignore_ascii_case(b"https://") {
        &target[8..]
    } else {
        return None;
    };
    let end = rest
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// A Host value is a `uri-host [ ":" port ]`: reg-name characters, or an IP
/// literal in brackets. Anything that could change where a URL points
/// (`@`, `/`, `\`, whitespace, `?`, `#`) is refused.
fn is_valid_host(host: &[u8]) -> bool {
    host.iter().all(|&b| {
        b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
                    | b'%'
                    | b':'
                    | b'['
                    | b']'
            )
    })
}

/// A parsed response head.
#[derive(Debug, Clone)]
pub struct ResponseHead {
    raw: Bytes,
    status: u16,
    reason: Span,
    version: Version,
    fields: Vec<Field>,
    content_length: Option<u64>,
    chunked: bool,
    connection: ConnectionTokens,
    upgrade: Option<Span>,
    /// A reason phrase that replaces the head's, with its status
    /// ([`ResponseHead::set_status`]).
    reason_override: Option<&'static str>,
}

impl Default for ResponseHead {
    fn default() -> Self {
        Self::new()
    }
}

impl ResponseHead {
    /// An empty head, to be filled by [`ResponseHead::parse`] and reused.
    pub fn new() -> Self {
        Self {
            raw: Bytes::new(),
            status: 0,
            reason: Span::default(),
            version: Version::Http11,
            fields: Vec::with_capacity(16),
            content_length: None,
            chunked: false,
            connection: ConnectionTokens::default(),
            upgrade: None,
            reason_override: None,
        }
    }

    /// Parses a response head from the front of `buf`, like
    /// [`RequestHead::parse`]; errors are the upstream's.
    pub fn parse(&mut self, buf: &mut BytesMut, limits: &HttpLimits) -> Result<bool> {
        match self.parse_fields(buf, limits)? {
            Some(len) => {
                self.raw = buf.split_to(len).freeze();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Parses a whole head kept earlier (a cache's stored one), without
    /// copying it: the head refers to `raw`'s bytes.
    pub fn parse_stored(&mut self, raw: &Bytes, limits: &HttpLimits) -> Result<()> {
        match self.parse_fields(raw, limits)? {
            Some(len) => {
                self.raw = raw.slice(..len);
                Ok(())
            }
            None => Err(Error::new(
                ErrorKind::InvalidHttp,
                Side::Internal,
                "a stored response head is incomplete",
            )),
        }
    }

    /// Answers with `status` (and its standard reason phrase) in place of
    /// the parsed one, until the next parse.
    pub fn set_status(&mut self, status: u16) {
        self.status = status;
        self.reason_override = Some(crate::reply::reason_phrase(status));
    }

    /// The head's bytes as received.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }

    /// Parses the head at the front of `buf` into everything but `raw`;
    /// returns its length once it is complete.
    fn parse_fields(&mut self, buf: &[u8], limits: &HttpLimits) -> Result<Option<usize>> {
        const SIDE: Side = Side::Upstream;
        self.reason_override = None;
        let mut storage = header_storage();
        let max = limits.max_headers.min(MAX_HEADERS_CAP);
        let mut resp = httparse::Response::new(&mut []);
        let status = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            buf,
            &mut storage[..max],
        );
        let len = match status {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => {
                if buf.len() >= limits.max_header_bytes {
                    return Err(Error::new(
                        ErrorKind::HeadTooLarge,
                        SIDE,
                        "response head too large",
                    ));
                }
                return Ok(None);
            }
            Err(e) => return Err(httparse_error(e, SIDE)),
        };
        if len > limits.max_header_bytes {
            return Err(Error::new(
                ErrorKind::HeadTooLarge,
                SIDE,
                "response head too large",
            ));
        }
        let bytes: &[u8] = buf;
        reject_bare_lf(&bytes[..len], SIDE)?;
        let (Some(code), Some(reason)) = (resp.code, resp.reason) else {
            return Err(Error::new(ErrorKind::InvalidHttp, SIDE, "incomplete status line"));
        };
        if !(100..=999).contains(&code) {
            return Err(Error::new(ErrorKind::InvalidHttp, SIDE, "invalid status code"));
        }
        let version = version_of(resp.version, SIDE)?;
        self.status = code;
        self.reason = Span::within(bytes, reason.as_bytes());
        self.version = version;
        self.fields.clear();
        self.fields.extend(resp.headers.iter().map(|h| Field {
            name: Span::within(bytes, h.name.as_bytes()),
            value: Span::within(bytes, h.value),
            kind: HeaderKind::of(h.name.as_bytes()),
        }));
        let facts = FieldFacts::scan(bytes, &self.fields, SIDE)?;
        self.chunked = if facts.te_present {
            if version == Version::Http10 {
                return Err(Error::new(
                    ErrorKind::InvalidHttp,
                    SIDE,
                    "Transfer-Encoding in an HTTP/1.0 response",
                ));
            }
            facts.chunked_or_error(SIDE)? == BodyFraming::Chunked
        } else {
            false
        };
        self.content_length = facts.content_length;
        self.connection = facts.connection;
        self.upgrade = facts.upgrade;
        Ok(Some(len))
    }

    /// Drops the head's bytes so the read buffer can reuse its space.
    pub fn clear(&mut self) {
        self.raw = Bytes::new();
        self.fields.clear();
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The reason phrase as sent.
    pub fn reason(&self) -> &[u8] {
        match self.reason_override {
            Some(reason) => reason.as_bytes(),
            None => self.reason.get(&self.raw),
        }
    }

    /// The HTTP version.
    pub fn version(&self) -> Version {
        self.version
    }

    /// How the body is framed, given the method of the request it answers
    /// (RFC 9112 section 6.3).
    pub fn body(&self, request_method: Method) -> BodyFraming {
        if request_method == Method::Head
            || (100..200).contains(&self.status)
            || self.status == 204
            || self.status == 304
        {
            BodyFraming::None
        } else if self.chunked {
            BodyFraming::Chunked
        } else {
            match self.content_length {
                Some(n) => BodyFraming::Length(n),
                None => BodyFraming::UntilClose,
            }
        }
    }

    /// Whether the upstream will keep the connection open after this response.
    pub fn keeps_alive(&self) -> bool {
        match self.version {
            Version::Http11 => !self.connection.close,
            Version::Http10 => self.connection.keep_alive && !self.connection.close,
        }
    }

    /// The `Upgrade` field's value, if any.
    pub fn upgrade(&self) -> Option<&[u8]> {
        self.upgrade.map(|s| s.get(&self.raw))
    }

    /// Every header field, in order.
    pub fn headers(&self) -> impl Iterator<Item = HeaderField<'_>> + '_ {
        self.fields.iter().map(|f| HeaderField {
            name: f.name.get(&self.raw),
            value: f.value.get(&self.raw),
            kind: f.kind,
        })
    }

    /// The first value of the field `name` (ASCII case ignored).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers()
            .find(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| h.value)
    }

    pub(crate) fn connection_tokens(&self) -> ConnectionTokens {
        self.connection
    }

    /// The Content-Length the upstream declared, if any.
    pub fn content_length(&self) -> Option<u64> {
        self.content_length
    }
}

/// Whether the field `name` is listed in the `Connection` field(s) among `fields`.
pub(crate) fn listed_in_connection<'a>(
    mut fields: impl Iterator<Item = HeaderField<'a>>,
    name: &[u8],
) -> bool {
    fields.any(|h| {
        h.kind == HeaderKind::Connection && list_elements(h.value).any(|t| t.eq_ignore_ascii_case(name))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(input: &[u8]) -> Result<(RequestHead, BytesMut)> {
        let mut buf = BytesMut::from(input);
        let mut head = RequestHead::new();
        match head.parse(&mut buf, &HttpLimits::default())? {
            true => Ok((head, buf)),
            false => Err(Error::new(
                ErrorKind::ConnectionClosed,
                Side::Downstream,
                "partial",
            )),
        }
    }

    fn rejected(input: &[u8]) -> Error {
        match parse(input) {
            Ok((head, _)) => panic!("accepted: {:?}", String::from_utf8_lossy(head.raw())),
            Err(e) => e,
        }
    }

    #[track_caller]
    fn assert_invalid(input: &[u8], reason: &str) {
        let e = rejected(input);
        assert_eq!(e.kind(), ErrorKind::InvalidHttp, "{e}");
        assert!(e.context().contains(reason), "expected {reason:?}, got {e}");
    }

    #[test]
    fn parses_a_simple_get_without_copying() {
        let (head, rest) = parse(b"GET /a?b=1 HTTP/1.1\r\nHost: Example.com\r\nX-A: 1\r\n\r\nNEXT").unwrap();
        assert_eq!(head.method(), Method::Get);
        assert_eq!(head.target(), b"/a?b=1");
        assert_eq!(head.path(), b"/a");
        assert_eq!(head.host(), Some(&b"Example.com"[..]));
        assert_eq!(head.header("x-a"), Some(&b"1"[..]));
        assert_eq!(head.body(), BodyFraming::None);
        assert_eq!(&rest[..], b"NEXT");
        // The target is a slice of the head's buffer, not a copy.
        let target = head.target_bytes();
        let raw = head.raw();
        let offset = target.as_ptr() as usize - raw.as_ptr() as usize;
        assert_eq!(&raw[offset..offset + target.len()], b"/a?b=1");
        assert!(!head.wants_close());
    }

    #[test]
    fn a_split_head_waits_for_more() {
        let mut buf = BytesMut::from(&b"GET / HTTP/1.1\r\nHo"[..]);
        let mut head = RequestHead::new();
        assert!(!head.parse(&mut buf, &HttpLimits::default()).unwrap());
        buf.extend_from_slice(b"st: a\r\n\r\n");
        assert!(head.parse(&mut buf, &HttpLimits::default()).unwrap());
        assert!(buf.is_empty());
    }

    #[test]
    fn content_length_and_chunked_framing() {
        let (head, _) = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!(head.body(), BodyFraming::Length(5));
        let (head, _) = parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n").unwrap();
        assert_eq!(head.body(), BodyFraming::Chunked);
        let (head, _) =
            parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n").unwrap();
        assert_eq!(head.body(), BodyFraming::Length(3));
    }

    #[test]
    fn rejects_content_length_with_transfer_encoding() {
        assert_invalid(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "together",
        );
    }

    #[test]
    fn rejects_differing_content_lengths() {
        assert_invalid(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "different values",
        );
        // The same number spelled differently is a different value.
        assert_invalid(
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 05\r\nContent-Length: 5\r\n\r\n",
            "different values",
        );
    }

    #[test]
    fn rejects_content_length_that_is_not_plain_digits() {
        for v in [
            "+5",
            "-1",
            "5 5",
            "5,5",
            "0x10",
            "",
            "99999999999999999999",
            "1.0",
        ] {
            let req = format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {v}\r\n\r\n");
            assert_invalid(req.as_bytes(), "plain number");
        }
    }

    #[test]
    fn rejects_a_final_coding_other_than_chunked() {
        assert_invalid(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "final coding",
        );
        assert_invalid(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n",
            "final coding",
        );
        assert_invalid(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "final coding",
        );
        let e = rejected(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert_eq!(e.kind(), ErrorKind::NotImplemented);
    }

    #[test]
    fn rejects_transfer_encoding_on_http10() {
        assert_invalid(
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.0",
        );
    }

    #[test]
    fn rejects_whitespace_between_name_and_colon() {
        assert_invalid(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n", "header field name");
        assert_invalid(
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding\t: chunked\r\n\r\n",
            "header field name",
        );
    }

    #[test]
    fn rejects_obs_fold() {
        assert_invalid(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n  c\r\n\r\n",
            "header field name",
        );
    }

    #[test]
    fn rejects_control_characters_in_fields() {
        assert_invalid(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\0c\r\n\r\n",
            "header field value",
        );
        assert_invalid(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n",
            "header field value",
        );
        assert_invalid(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x01c\r\n\r\n",
            "header field value",
        );
        assert_invalid(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\x7fc\r\n\r\n",
            "header field value",
        );
    }

    #[test]
    fn rejects_bare_lf_line_endings() {
        assert_invalid(b"GET / HTTP/1.1\nHost: a\r\n\r\n", "bare LF");
        assert_invalid(b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n", "bare LF");
        assert_invalid(b"GET / HTTP/1.1\r\nHost: a\r\n\n", "bare LF");
    }

    #[test]
    fn rejects_more_than_one_host_or_none_on_http11() {
        assert_invalid(
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "more than one Host",
        );
        assert_invalid(b"GET / HTTP/1.1\r\nX: y\r\n\r\n", "without Host");
        let (head, _) = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!(head.host(), None);
        assert!(head.wants_close());
    }

    #[test]
    fn rejects_hosts_that_could_redirect_the_request() {
        for host in ["a@b", "a/b", "a b", "a\\b", "a?b", "a#b"] {
            let req = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert!(parse(req.as_bytes()).is_err(), "{host}");
        }
        let (head, _) = parse(b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n").unwrap();
        assert_eq!(head.host(), Some(&b"[::1]:8080"[..]));
    }

    #[test]
    fn absolute_form_authorities_are_validated_like_host() {
        let (head, _) = parse(b"GET http://Real.test:81/x HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
        assert_eq!(head.target(), b"http://Real.test:81/x");
        for bad in [
            "http://a\",for=6.6.6.6;x=\"/",
            "http://user@host/",
            "http:///path",
            "http://a\\b/",
        ] {
            let req = format!("GET {bad} HTTP/1.1\r\nHost: ok\r\n\r\n");
            assert_invalid(req.as_bytes(), "authority");
        }
    }

    #[test]
    fn only_websocket_upgrades_are_upgrades() {
        let (head, _) = parse(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n",
        )
        .unwrap();
        assert_eq!(head.upgrade(), None);
        let (head, _) =
            parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\r\n").unwrap();
        assert_eq!(head.upgrade(), Some(&b"WebSocket"[..]));
    }

    #[test]
    fn head_over_the_limit_is_431_and_long_target_is_414() {
        let limits = HttpLimits {
            max_header_bytes: 256,
            max_headers: 4,
            max_uri_bytes: 64,
            ..HttpLimits::default()
        };
        let mut head = RequestHead::new();
        let mut big = BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\nX: "[..]);
        big.extend_from_slice(&[b'a'; 300]);
        let e = head.parse(&mut big, &limits).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::HeadTooLarge);

        let mut many =
            BytesMut::from(&b"GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 1\r\nC: 1\r\nD: 1\r\n\r\n"[..]);
        let e = head.parse(&mut many, &limits).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TooManyHeaders);

        let mut long =
            BytesMut::from(format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "x".repeat(100)).as_bytes());
        let e = head.parse(&mut long, &limits).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UriTooLong);

        // A request line that never ends is 414 before the head limit is reached.
        let mut endless = BytesMut::from(format!("GET /{}", "x".repeat(100)).as_bytes());
        let e = head.parse(&mut endless, &limits).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::UriTooLong);
    }

    #[test]
    fn connection_tokens_and_keep_alive() {
        let (head, _) = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n").unwrap();
        assert!(head.wants_close());
        let (head, _) = parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").unwrap();
        assert!(!head.wants_close());
        let (head, _) = parse(
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
        )
        .unwrap();
        assert_eq!(head.upgrade(), Some(&b"websocket"[..]));
        let (head, _) = parse(b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n").unwrap();
        assert_eq!(head.upgrade(), None, "Upgrade without Connection: upgrade");
    }

    #[test]
    fn expect_continue_and_unknown_expectations() {
        let (head, _) =
            parse(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n").unwrap();
        assert!(head.expects_continue());
        let e = rejected(b"PUT / HTTP/1.1\r\nHost: a\r\nExpect: teapot\r\n\r\n");
        assert_eq!(e.kind(), ErrorKind::ExpectationFailed);
    }

    #[test]
    fn header_kinds_are_case_insensitive() {
        assert_eq!(HeaderKind::of(b"TRANSFER-encoding"), HeaderKind::TransferEncoding);
        assert_eq!(HeaderKind::of(b"x-forwarded-for"), HeaderKind::XForwardedFor);
        assert_eq!(HeaderKind::of(b"X-Forwarded-Fox"), HeaderKind::Other);
        assert!(HeaderKind::of(b"Proxy-Authorization").is_hop_by_hop());
        assert!(!HeaderKind::of(b"Host").is_hop_by_hop());
    }

    fn parse_response(input: &[u8]) -> Result<ResponseHead> {
        let mut buf = BytesMut::from(input);
        let mut head = ResponseHead::new();
        assert!(head.parse(&mut buf, &HttpLimits::default())?);
        Ok(head)
    }

    #[test]
    fn response_framing() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(r.body(Method::Get), BodyFraming::Length(12));
        assert_eq!(r.body(Method::Head), BodyFraming::None);
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
        assert_eq!(r.body(Method::Get), BodyFraming::Chunked);
        let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        assert_eq!(r.body(Method::Get), BodyFraming::UntilClose);
        let r = parse_response(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 12\r\n\r\n").unwrap();
        assert_eq!(r.body(Method::Get), BodyFraming::None);
        let r = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").unwrap();
        assert!(!r.keeps_alive());
        let r = parse_response(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n").unwrap();
        assert!(!r.keeps_alive());
        assert_eq!(r.status(), 204);
        assert_eq!(r.reason(), b"No Content");
    }

    #[test]
    fn a_status_line_without_reason_or_with_non_ascii_reason_parses() {
        let r = parse_response(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n").unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.reason(), b"");
        let r = parse_response("HTTP/1.1 200 ОК\r\nContent-Length: 0\r\n\r\n".as_bytes()).unwrap();
        assert_eq!(r.status(), 200);
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n"[..]);
        assert!(
            ResponseHead::new()
                .parse(&mut buf, &HttpLimits::default())
                .is_err(),
            "bare LF"
        );
    }

    #[test]
    fn ambiguous_responses_are_upstream_errors() {
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            let e = parse_response(bad).unwrap_err();
            assert_eq!(e.side(), Side::Upstream, "{e}");
        }
    }
}
