//! The access-log formats: `combined` (nginx's and Apache's), `squid`
//! (Squid's native format, which forward-proxy log tools read), `json`
//! (one object per line) and templates of `$variables`. Every value is
//! escaped for its format, so a line is always one line: a header value
//! cannot forge another.

use std::{
    fmt,
    io::Write,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use super::{clock::Moment, clock::TimeCache, Entry, Event, RuleName};
use crate::request_id::RequestId;

/// How each line is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogFormat {
    /// `$remote_addr - $remote_user [$time_local] "$request" $status
    /// $body_bytes_sent "$http_referer" "$http_user_agent"`.
    Combined,
    /// Squid's native `access.log` format.
    Squid,
    /// One JSON object per line, with every field.
    Json,
    /// Literal text and variables.
    Template(Vec<Piece>),
}

/// A part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Written as it is.
    Text(String),
    /// A variable's value.
    Var(Var),
}

/// A template variable; the names are nginx's where nginx has one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    missing_docs,
    reason = "each is the variable of the same name in snake case, listed in VARIABLES"
)]
pub enum Var {
    RemoteAddr,
    RemotePort,
    RemoteUser,
    ServerAddr,
    TimeLocal,
    TimeIso8601,
    Msec,
    Request,
    RequestMethod,
    RequestUri,
    Host,
    Status,
    BytesSent,
    BodyBytesSent,
    RequestLength,
    UpstreamAddr,
    UpstreamResponseTime,
    RequestTime,
    RequestId,
    SslProtocol,
    SslServerName,
    SslClientSDn,
    Listener,
    Event,
    Acl,
    AclRule,
    ContentType,
    /// `$upstream_cache_status` (nginx's name) or `$cache`.
    Cache,
    /// `$http_NAME`: a request header, by its lowercased name.
    Header(String),
}

/// The variables a template may use, for the error that names an unknown one.
pub const VARIABLES: &str = "$remote_addr $remote_port $remote_user $server_addr $time_local \
     $time_iso8601 $msec $request $request_method $request_uri $host $status $bytes_sent \
     $body_bytes_sent $request_length $upstream_addr $upstream_response_time $request_time \
     $request_id $ssl_protocol $ssl_server_name $ssl_client_s_dn $listener $event $acl $acl_rule $content_type \
     $upstream_cache_status $cache $http_NAME";

impl Var {
    fn named(name: &str) -> Option<Self> {
        Some(match name {
            "remote_addr" => Self::RemoteAddr,
            "remote_port" => Self::RemotePort,
            "remote_user" => Self::RemoteUser,
            "server_addr" => Self::ServerAddr,
            "time_local" => Self::TimeLocal,
            "time_iso8601" => Self::TimeIso8601,
            "msec" => Self::Msec,
            "request" => Self::Request,
            "request_method" => Self::RequestMethod,
            "request_uri" => Self::RequestUri,
            "host" => Self::Host,
            "status" => Self::Status,
            "bytes_sent" => Self::BytesSent,
            "body_bytes_sent" => Self::BodyBytesSent,
            "request_length" => Self::RequestLength,
            "upstream_addr" => Self::UpstreamAddr,
            "upstream_response_time" => Self::UpstreamResponseTime,
            "request_time" => Self::RequestTime,
            "request_id" => Self::RequestId,
            "ssl_protocol" => Self::SslProtocol,
            "ssl_server_name" => Self::SslServerName,
            "ssl_client_s_dn" => Self::SslClientSDn,
            "listener" => Self::Listener,
            "event" => Self::Event,
            "acl" => Self::Acl,
            "acl_rule" => Self::AclRule,
            "content_type" => Self::ContentType,
            "upstream_cache_status" | "cache" => Self::Cache,
            _ => {
                let header = name.strip_prefix("http_").filter(|h| !h.is_empty())?;
                Self::Header(header.to_ascii_lowercase().replace('_', "-"))
            }
        })
    }
}

/// Why a format cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl LogFormat {
    /// `combined`, `squid`, `json`, or a template with at least one
    /// `$variable` (`$$` is a dollar sign).
    pub fn parse(text: &str) -> Result<Self, FormatError> {
        match text {
            "combined" => return Ok(Self::Combined),
            "squid" => return Ok(Self::Squid),
            "json" => return Ok(Self::Json),
            _ => {}
        }
        if !text.contains('$') {
            return Err(FormatError(format!(
                "unknown format {text:?}: expected combined, squid, json, or a template of \
                 variables such as \"$remote_addr $status $request_time\""
            )));
        }
        let mut pieces = Vec::new();
        let mut text_run = String::new();
        let mut rest = text;
        while let Some(at) = rest.find('$') {
            text_run.push_str(&rest[..at]);
            rest = &rest[at + 1..];
            if let Some(after) = rest.strip_prefix('$') {
                text_run.push('$');
                rest = after;
                continue;
            }
            let (name, after) = if let Some(braced) = rest.strip_prefix('{') {
                let end = braced
                    .find('}')
                    .ok_or_else(|| FormatError("a ${ without its closing }".to_owned()))?;
                (&braced[..end], &braced[end + 1..])
            } else {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], &rest[end..])
            };
            if name.is_empty() {
                return Err(FormatError(
                    "a $ without a variable name (write $$ for a dollar sign)".to_owned(),
                ));
            }
            let var = Var::named(name).ok_or_else(|| {
                FormatError(format!("unknown variable ${name}; the variables are {VARIABLES}"))
            })?;
            if !text_run.is_empty() {
                pieces.push(Piece::Text(std::mem::take(&mut text_run)));
            }
            pieces.push(Piece::Var(var));
            rest = after;
        }
        text_run.push_str(rest);
        if !text_run.is_empty() {
            pieces.push(Piece::Text(text_run));
        }
        Ok(Self::Template(pieces))
    }

    /// Appends `entry`'s line, newline included, to `out`.
    pub fn write(&self, entry: &Entry<'_>, at: Moment, time: &mut TimeCache, out: &mut Vec<u8>) {
        match self {
            Self::Combined => write_combined(entry, at, time, out),
            Self::Squid => write_squid(entry, at, out),
            Self::Json => write_json(entry, at, time, out),
            Self::Template(pieces) => {
                for piece in pieces {
                    match piece {
                        Piece::Text(text) => out.extend_from_slice(text.as_bytes()),
                        Piece::Var(var) => write_var(var, entry, at, time, out),
                    }
                }
            }
        }
        out.push(b'\n');
    }
}

/// Writes `value` escaped as nginx escapes log values: `"`, `\`, control
/// and non-ASCII bytes as `\xHH`; runs that need none are copied whole.
fn escaped(out: &mut Vec<u8>, mut value: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    while let Some(at) = value
        .iter()
        .position(|&b| b == b'"' || b == b'\\' || !(0x20..0x7f).contains(&b))
    {
        out.extend_from_slice(&value[..at]);
        let b = value[at];
        out.extend_from_slice(&[b'\\', b'x', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        value = &value[at + 1..];
    }
    out.extend_from_slice(value);
}

/// A number, without the formatting machinery (a log line has several).
fn num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// An IP address; IPv4 (the common case) without the formatting machinery.
fn ip(out: &mut Vec<u8>, addr: IpAddr) {
    match addr {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                num(out, u64::from(octet));
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// `ip:port`, or `[ip]:port` for IPv6.
fn socket(out: &mut Vec<u8>, addr: SocketAddr) {
    if addr.is_ipv6() {
        out.push(b'[');
        ip(out, addr.ip());
        out.push(b']');
    } else {
        ip(out, addr.ip());
    }
    out.push(b':');
    num(out, u64::from(addr.port()));
}

/// Three digits, zero-padded (milliseconds, statuses).
fn three(out: &mut Vec<u8>, n: u32) {
    let n = n.min(999);
    out.extend_from_slice(&[
        b'0' + (n / 100) as u8,
        b'0' + (n / 10 % 10) as u8,
        b'0' + (n % 10) as u8,
    ]);
}

/// Seconds since the epoch with milliseconds (`$msec`).
fn msec(out: &mut Vec<u8>, at: Moment) {
    num(out, at.secs.max(0) as u64);
    out.push(b'.');
    three(out, at.millis);
}

/// An escaped value, `-` when there is none.
fn or_dash(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) if !v.is_empty() => escaped(out, v),
        _ => out.push(b'-'),
    }
}

fn seconds(out: &mut Vec<u8>, d: Duration) {
    num(out, d.as_secs());
    out.push(b'.');
    three(out, d.subsec_millis());
}

fn status(out: &mut Vec<u8>, status: u16) {
    three(out, u32::from(status));
}

fn user<'a>(entry: &Entry<'a>) -> Option<&'a [u8]> {
    entry.facts.user.map(str::as_bytes)
}

/// `METHOD target HTTP/1.1` as the client sent it, or `-`.
fn request_line(out: &mut Vec<u8>, entry: &Entry<'_>) {
    match entry.req {
        Some(req) if !req.method_bytes().is_empty() => {
            escaped(out, req.method_bytes());
            out.push(b' ');
            escaped(out, &loggable(req.target()));
            out.extend_from_slice(match req.version() {
                crate::head::Version::Http10 => b" HTTP/1.0",
                crate::head::Version::Http11 => b" HTTP/1.1",
            });
        }
        _ => out.push(b'-'),
    }
}

/// A target fit for a log: credentials in an authority are replaced by
/// `***`.
pub(crate) fn loggable(target: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let scheme_end = memchr::memmem::find(target, b"://").map_or(0, |i| i + 3);
    let authority_end = target[scheme_end..]
        .iter()
        .position(|&b| b == b'/' || b == b'?')
        .map_or(target.len(), |i| scheme_end + i);
    match target[scheme_end..authority_end].iter().rposition(|&b| b == b'@') {
        Some(at) => {
            let mut masked = target[..scheme_end].to_vec();
            masked.extend_from_slice(b"***");
            masked.extend_from_slice(&target[scheme_end + at..]);
            std::borrow::Cow::Owned(masked)
        }
        None => std::borrow::Cow::Borrowed(target),
    }
}

fn header<'a>(entry: &Entry<'a>, name: &str) -> Option<&'a [u8]> {
    entry.req.and_then(|r| r.header(name))
}

fn write_combined(entry: &Entry<'_>, at: Moment, time: &mut TimeCache, out: &mut Vec<u8>) {
    ip(out, entry.client.peer.ip());
    out.extend_from_slice(b" - ");
    or_dash(out, user(entry));
    out.extend_from_slice(b" [");
    out.extend_from_slice(time.texts(at).0);
    out.extend_from_slice(b"] \"");
    request_line(out, entry);
    out.extend_from_slice(b"\" ");
    status(out, entry.status);
    out.push(b' ');
    num(out, entry.body_out);
    out.extend_from_slice(b" \"");
    or_dash(out, header(entry, "referer"));
    out.extend_from_slice(b"\" \"");
    or_dash(out, header(entry, "user-agent"));
    out.push(b'"');
}

/// Squid's result code: how the proxy handled the request.
fn squid_result(entry: &Entry<'_>) -> &'static str {
    if entry.facts.acl.is_some_and(|a| !a.allowed) || entry.status == 407 {
        return "TCP_DENIED";
    }
    match entry.event {
        Event::Tunnel | Event::Connection if entry.upstream.is_some() => "TCP_TUNNEL",
        Event::Tunnel | Event::Connection => "NONE_NONE",
        Event::Request => match entry.facts.cache {
            Some("HIT") => "TCP_HIT",
            Some("STALE") => "TCP_STALE_HIT",
            Some("REVALIDATED") => "TCP_REFRESH_UNMODIFIED",
            _ if entry.upstream.is_some() => "TCP_MISS",
            _ => "NONE_NONE",
        },
        Event::Refused | Event::Rejected(_) => "NONE_NONE",
    }
}

/// `%ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt`.
fn write_squid(entry: &Entry<'_>, at: Moment, out: &mut Vec<u8>) {
    msec(out, at);
    // `%6tr`: the milliseconds right-aligned in six columns.
    let elapsed = entry.total.as_millis().min(u128::from(u64::MAX)) as u64;
    let mut digits = itoa::Buffer::new();
    let digits = digits.format(elapsed).as_bytes();
    out.resize(out.len() + 1 + 6usize.saturating_sub(digits.len()), b' ');
    out.extend_from_slice(digits);
    out.push(b' ');
    ip(out, entry.client.peer.ip());
    out.push(b' ');
    out.extend_from_slice(squid_result(entry).as_bytes());
    out.push(b'/');
    status(out, entry.status);
    out.push(b' ');
    num(out, entry.bytes_out);
    out.push(b' ');
    let (method, target) = match entry.req {
        Some(req) if !req.method_bytes().is_empty() => (req.method_bytes(), req.target()),
        _ => (&b"NONE"[..], &b"error:invalid-request"[..]),
    };
    escaped(out, method);
    out.push(b' ');
    escaped(out, &loggable(target));
    out.push(b' ');
    or_dash(out, user(entry));
    match entry.upstream {
        Some(addr) => {
            out.extend_from_slice(b" HIER_DIRECT/");
            ip(out, addr.ip());
            out.push(b' ');
        }
        None => out.extend_from_slice(b" HIER_NONE/- "),
    }
    or_dash(out, Some(entry.content_type));
}

/// An ACL rule's label as [`RuleName`]'s `Display` writes it, without a
/// buffer of its own: the rule's name goes through `escape`.
fn rule_label(out: &mut Vec<u8>, rule: RuleName<'_>, escape: fn(&mut Vec<u8>, &[u8])) {
    let fixed: &[u8] = match rule {
        RuleName::Rule(i, name) => {
            out.extend_from_slice(b"rule ");
            num(out, i as u64 + 1);
            if let Some(name) = name {
                out.extend_from_slice(b" (");
                escape(out, name.as_bytes());
                out.push(b')');
            }
            return;
        }
        RuleName::Default => b"default",
        RuleName::ConnectPorts => b"connect_ports",
        RuleName::BlockPrivate => b"block_private",
        RuleName::Auth => b"auth",
        RuleName::Loop => b"loop",
    };
    out.extend_from_slice(fixed);
}

/// A JSON string of `value`: control bytes as `\u00XX`, bytes that are
/// not UTF-8 as their Latin-1 characters, so every line parses.
fn json_string(out: &mut Vec<u8>, value: &[u8]) {
    out.push(b'"');
    json_inner(out, value);
    out.push(b'"');
}

/// `value` escaped for the inside of a JSON string (see [`json_string`]).
fn json_inner(out: &mut Vec<u8>, value: &[u8]) {
    if std::str::from_utf8(value).is_ok() {
        // UTF-8 as it is: only quotes, backslashes and control bytes are
        // escaped, and runs without them are copied whole.
        let mut rest = value;
        while let Some(at) = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20 || b == 0x7f)
        {
            out.extend_from_slice(&rest[..at]);
            json_escape(out, char::from(rest[at]));
            rest = &rest[at + 1..];
        }
        out.extend_from_slice(rest);
    } else {
        json_chars(out, value.iter().map(|&b| char::from(b)));
    }
}

fn json_escape(out: &mut Vec<u8>, c: char) {
    match c {
        '"' => out.extend_from_slice(b"\\\""),
        '\\' => out.extend_from_slice(b"\\\\"),
        c => {
            let _ = write!(out, "\\u{:04x}", c as u32);
        }
    }
}

fn json_chars(out: &mut Vec<u8>, chars: impl Iterator<Item = char>) {
    for c in chars {
        match c {
            '"' | '\\' => json_escape(out, c),
            c if (c as u32) < 0x20 || c == '\u{7f}' => json_escape(out, c),
            c => {
                let mut utf8 = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
            }
        }
    }
}

fn json_opt(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(v) => json_string(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

fn json_addr(out: &mut Vec<u8>, addr: Option<SocketAddr>) {
    match addr {
        Some(a) => {
            out.push(b'"');
            socket(out, a);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn write_json(entry: &Entry<'_>, at: Moment, time: &mut TimeCache, out: &mut Vec<u8>) {
    let req = entry.req.filter(|r| !r.method_bytes().is_empty());
    out.extend_from_slice(b"{\"time\":\"");
    out.extend_from_slice(time.texts(at).1);
    out.extend_from_slice(b"\",\"msec\":");
    msec(out, at);
    out.extend_from_slice(b",\"listener\":");
    json_string(out, entry.listener.as_bytes());
    out.extend_from_slice(b",\"event\":\"");
    out.extend_from_slice(entry.event.name().as_bytes());
    out.extend_from_slice(b"\",\"client\":\"");
    socket(out, entry.client.peer);
    out.extend_from_slice(b"\",\"user\":");
    json_opt(out, user(entry));
    out.extend_from_slice(b",\"method\":");
    json_opt(out, req.map(|r| r.method_bytes()));
    out.extend_from_slice(b",\"target\":");
    json_opt(out, req.map(|r| loggable(r.target())).as_deref());
    out.extend_from_slice(b",\"host\":");
    json_opt(out, req.and_then(|r| r.host()));
    out.extend_from_slice(b",\"status\":");
    num(out, u64::from(entry.status));
    out.extend_from_slice(b",\"bytes_in\":");
    num(out, entry.bytes_in);
    out.extend_from_slice(b",\"bytes_out\":");
    num(out, entry.bytes_out);
    out.extend_from_slice(b",\"upstream\":");
    json_addr(out, entry.upstream);
    out.extend_from_slice(b",\"upstream_time\":");
    match entry.upstream_time {
        Some(d) => seconds(out, d),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"request_time\":");
    seconds(out, entry.total);
    out.extend_from_slice(b",\"user_agent\":");
    json_opt(out, header(entry, "user-agent"));
    out.extend_from_slice(b",\"referer\":");
    json_opt(out, header(entry, "referer"));
    out.extend_from_slice(b",\"acl\":");
    match entry.facts.acl {
        Some(acl) => {
            out.extend_from_slice(if acl.allowed { b"\"allow\"" } else { b"\"deny\"" });
            out.extend_from_slice(b",\"rule\":\"");
            rule_label(out, acl.rule, json_inner);
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null,\"rule\":null"),
    }
    out.extend_from_slice(b",\"request_id\":");
    match entry.event {
        Event::Rejected(_) => out.extend_from_slice(b"null"),
        _ => request_id(out, entry.client.request_id, true),
    }
    let tls = entry.client.tls.as_deref();
    out.extend_from_slice(b",\"tls\":");
    json_opt(out, tls.map(|t| t.version.as_bytes()));
    out.extend_from_slice(b",\"sni\":");
    json_opt(out, tls.and_then(|t| t.sni.as_deref()).map(str::as_bytes));
    out.extend_from_slice(b",\"client_cert\":");
    json_opt(
        out,
        tls.and_then(|t| t.client_subject.as_deref()).map(str::as_bytes),
    );
    out.extend_from_slice(b",\"content_type\":");
    json_opt(
        out,
        (!entry.content_type.is_empty()).then_some(entry.content_type),
    );
    out.extend_from_slice(b",\"cache\":");
    json_opt(out, entry.facts.cache.map(str::as_bytes));
    if let Event::Rejected(why) = entry.event {
        let _ = write!(out, ",\"reason\":\"{why}\"");
    }
    out.push(b'}');
}

fn request_id(out: &mut Vec<u8>, id: RequestId, quoted: bool) {
    if quoted {
        out.push(b'"');
    }
    out.extend_from_slice(&id.hex());
    if quoted {
        out.push(b'"');
    }
}

fn write_var(var: &Var, entry: &Entry<'_>, at: Moment, time: &mut TimeCache, out: &mut Vec<u8>) {
    let req = entry.req.filter(|r| !r.method_bytes().is_empty());
    let tls = entry.client.tls.as_deref();
    match var {
        Var::RemoteAddr => {
            ip(out, entry.client.peer.ip());
        }
        Var::RemotePort => {
            num(out, u64::from(entry.client.peer.port()));
        }
        Var::RemoteUser => or_dash(out, user(entry)),
        Var::ServerAddr => {
            socket(out, entry.client.local);
        }
        Var::TimeLocal => out.extend_from_slice(time.texts(at).0),
        Var::TimeIso8601 => out.extend_from_slice(time.texts(at).1),
        Var::Msec => {
            msec(out, at);
        }
        Var::Request => request_line(out, entry),
        Var::RequestMethod => or_dash(out, req.map(|r| r.method_bytes())),
        Var::RequestUri => or_dash(out, req.map(|r| loggable(r.target())).as_deref()),
        Var::Host => or_dash(out, req.and_then(|r| r.host())),
        Var::Status => status(out, entry.status),
        Var::BytesSent => {
            num(out, entry.bytes_out);
        }
        Var::BodyBytesSent => {
            num(out, entry.body_out);
        }
        Var::RequestLength => {
            num(out, entry.bytes_in);
        }
        Var::UpstreamAddr => match entry.upstream {
            Some(a) => {
                socket(out, a);
            }
            None => out.push(b'-'),
        },
        Var::UpstreamResponseTime => match entry.upstream_time {
            Some(d) => seconds(out, d),
            None => out.push(b'-'),
        },
        Var::RequestTime => seconds(out, entry.total),
        Var::RequestId => match entry.event {
            Event::Rejected(_) => out.push(b'-'),
            _ => request_id(out, entry.client.request_id, false),
        },
        Var::SslProtocol => or_dash(out, tls.map(|t| t.version.as_bytes())),
        Var::SslServerName => or_dash(out, tls.and_then(|t| t.sni.as_deref()).map(str::as_bytes)),
        Var::SslClientSDn => or_dash(
            out,
            tls.and_then(|t| t.client_subject.as_deref()).map(str::as_bytes),
        ),
        Var::Listener => escaped(out, entry.listener.as_bytes()),
        Var::Event => out.extend_from_slice(entry.event.name().as_bytes()),
        Var::Acl => out.extend_from_slice(match entry.facts.acl {
            Some(a) if a.allowed => b"allow",
            Some(_) => b"deny",
            None => b"-",
        }),
        Var::AclRule => match entry.facts.acl {
            Some(a) => rule_label(out, a.rule, escaped),
            None => out.push(b'-'),
        },
        Var::ContentType => or_dash(out, Some(entry.content_type)),
        Var::Cache => or_dash(out, entry.facts.cache.map(str::as_bytes)),
        Var::Header(name) => or_dash(out, header(entry, name)),
    }
}
