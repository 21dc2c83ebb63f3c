//! Serialising the heads ringway sends: the request to the upstream and the
//! response to the client, each built once into one buffer.
//!
//! Hop-by-hop fields are dropped (Connection and the fields it names,
//! Keep-Alive, Proxy-Connection, TE, Trailer, Transfer-Encoding, Upgrade
//! unless upgrading, Proxy-Authorization, Proxy-Authenticate), framing fields
//! are written anew for the framing actually used, and the proxy's own
//! fields are added: `Via`, and `X-Forwarded-*` or RFC 7239 `Forwarded`.

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
};

use crate::{
    edits::HeadEdits,
    head::{
        absolute_form_authority, listed_in_connection, BodyFraming, HeaderKind, Method, RequestHead,
        ResponseHead, Version,
    },
    limits::{ForwardedStyle, ProxyHeaders, ViaName},
    reply::LocalReply,
};

/// The first byte of every response ringway writes (`HTTP/1.1 ...`), which
/// the worker's sweep may send ahead as a probe of a waiting client.
pub(crate) const RESPONSE_START: u8 = b'H';

/// The origin-form of a request target: absolute-form loses its scheme and
/// authority (RFC 9112 section 3.2.2); other forms stay as they are.
/// Returns the target and, for absolute-form, the authority.
pub fn origin_form(target: &[u8]) -> (&[u8], Option<&[u8]>) {
    let Some(authority) = absolute_form_authority(target) else {
        return (target, None);
    };
    let authority_end = authority.as_ptr() as usize - target.as_ptr() as usize + authority.len();
    let rest = &target[authority_end..];
    (if rest.is_empty() { b"/" } else { rest }, Some(authority))
}

/// What the engine decided about the request it forwards.
pub(crate) struct UpstreamRequest<'a> {
    pub(crate) head: &'a RequestHead,
    pub(crate) client_ip: IpAddr,
    pub(crate) scheme: &'static str,
    pub(crate) framing: BodyFraming,
    pub(crate) upgrade: Option<&'a [u8]>,
    /// The upstream server, named in `Host` when the client gave no host
    /// (an HTTP/1.0 request without one): an HTTP/1.1 request must carry it.
    pub(crate) upstream: Option<SocketAddr>,
    /// The hooks' changes to the head.
    pub(crate) edits: &'a HeadEdits,
}

/// No edits, for heads no hook saw.
pub(crate) const NO_EDITS: HeadEdits = HeadEdits::EMPTY;

/// Appends the head sent to the upstream.
pub(crate) fn request_head(out: &mut Vec<u8>, req: &UpstreamRequest<'_>, headers: &ProxyHeaders) {
    let head = req.head;
    let edits = req.edits;
    let (target, authority) = origin_form(head.target());
    let target = edits.target().unwrap_or(target);
    let host_edited = edits.removes(b"host");
    out.extend_from_slice(head.method_bytes());
    out.push(b' ');
    if target.first() == Some(&b'?') {
        out.push(b'/');
    }
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    if host_edited {
        // A hook wrote its own Host.
    } else if let Some(authority) = authority {
        // The target's authority wins over any Host field.
        out.extend_from_slice(b"Host: ");
        out.extend_from_slice(authority);
        out.extend_from_slice(b"\r\n");
    } else if head.host().is_none() {
        match req.upstream {
            Some(upstream) => {
                let _ = write!(out, "Host: {upstream}\r\n");
            }
            None => out.extend_from_slice(b"Host: \r\n"),
        }
    }
    let names_fields = head.connection_tokens().names_fields;
    let mut xff_seen = false;
    let mut forwarded_seen = false;
    for field in head.headers() {
        let skip = match field.kind {
            HeaderKind::Other | HeaderKind::Via => false,
            HeaderKind::Host => authority.is_some(),
            HeaderKind::XForwardedFor
                if matches!(
                    headers.forwarded,
                    ForwardedStyle::XForwarded
                        | ForwardedStyle::AppendFor
                        | ForwardedStyle::TruncateFor
                        | ForwardedStyle::DeleteFor
                ) =>
            {
                xff_seen = true;
                true
            }
            HeaderKind::XForwardedProto | HeaderKind::XForwardedHost => {
                headers.forwarded == ForwardedStyle::XForwarded
            }
            HeaderKind::Forwarded if headers.forwarded == ForwardedStyle::Rfc7239 => {
                forwarded_seen = true;
                true
            }
            HeaderKind::XForwardedFor | HeaderKind::Forwarded => false,
            // Framing is written below; Expect is answered by the proxy.
            HeaderKind::ContentLength | HeaderKind::Expect => true,
            // Decremented below for the methods it applies to.
            HeaderKind::MaxForwards => matches!(head.method(), Method::Options | Method::Trace),
            kind => kind.is_hop_by_hop(),
        };
        if skip
            || edits.removes(field.name)
            || (names_fields
                && field.kind == HeaderKind::Other
                && listed_in_connection(head.headers(), field.name))
        {
            continue;
        }
        push_field(out, field.name, field.value);
    }
    let host = authority.or(head.host());
    match headers.forwarded {
        ForwardedStyle::XForwarded | ForwardedStyle::AppendFor | ForwardedStyle::TruncateFor => {
            out.extend_from_slice(b"X-Forwarded-For: ");
            if xff_seen && headers.forwarded != ForwardedStyle::TruncateFor {
                for field in head.headers().filter(|f| f.kind == HeaderKind::XForwardedFor) {
                    out.extend_from_slice(field.value);
                    out.extend_from_slice(b", ");
                }
            }
            push_ip(out, req.client_ip);
            out.extend_from_slice(b"\r\n");
            if headers.forwarded == ForwardedStyle::XForwarded {
                out.extend_from_slice(b"X-Forwarded-Proto: ");
                out.extend_from_slice(req.scheme.as_bytes());
                out.extend_from_slice(b"\r\n");
                if let Some(host) = host {
                    push_field(out, b"X-Forwarded-Host", host);
                }
            }
        }
        ForwardedStyle::Rfc7239 => {
            out.extend_from_slice(b"Forwarded: ");
            if forwarded_seen {
                for field in head.headers().filter(|f| f.kind == HeaderKind::Forwarded) {
                    out.extend_from_slice(field.value);
                    out.extend_from_slice(b", ");
                }
            }
            match req.client_ip {
                IpAddr::V4(_) => {
                    out.extend_from_slice(b"for=");
                    push_ip(out, req.client_ip);
                }
                IpAddr::V6(_) => {
                    out.extend_from_slice(b"for=\"[");
                    push_ip(out, req.client_ip);
                    out.extend_from_slice(b"]\"");
                }
            }
            out.extend_from_slice(b";proto=");
            out.extend_from_slice(req.scheme.as_bytes());
            if let Some(host) = host {
                out.extend_from_slice(b";host=\"");
                out.extend_from_slice(host);
                out.push(b'"');
            }
            out.extend_from_slice(b"\r\n");
        }
        ForwardedStyle::Off | ForwardedStyle::DeleteFor => {}
    }
    if let Some(via) = &headers.via {
        out.extend_from_slice(via.line());
    }
    if let (Some(Ok(hops)), Method::Options | Method::Trace) = (head.max_forwards(), head.method()) {
        // Checked before: a 0 was answered by the proxy itself.
        out.extend_from_slice(b"Max-Forwards: ");
        out.extend_from_slice(itoa::Buffer::new().format(hops.saturating_sub(1)).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(edits.added());
    write_framing(out, req.framing);
    if let Some(protocols) = req.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        push_field(out, b"Upgrade", protocols);
    }
}

/// Appends the whole head ringway sends upstream for `head` (request line,
/// forwarded fields, proxy fields, framing for the request's own body, and
/// the final CRLF), as the engine does for every proxied request.
pub fn write_upstream_head(out: &mut Vec<u8>, head: &RequestHead, client_ip: IpAddr, headers: &ProxyHeaders) {
    let req = UpstreamRequest {
        head,
        client_ip,
        scheme: "http",
        framing: head.body(),
        upgrade: head.upgrade(),
        upstream: None,
        edits: &NO_EDITS,
    };
    request_head(out, &req, headers);
    end_head(out);
}

/// Appends the end of a head.
pub(crate) fn end_head(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

fn write_framing(out: &mut Vec<u8>, framing: BodyFraming) {
    match framing {
        BodyFraming::Length(n) => {
            out.extend_from_slice(b"Content-Length: ");
            out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        BodyFraming::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        BodyFraming::None | BodyFraming::UntilClose => {}
    }
}

/// Appends `ip` as text: an IPv4 address digit by digit (the common case,
/// per request, without the formatting machinery), IPv6 as `Display`
/// writes it.
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa::Buffer::new().format(octet).as_bytes());
            }
        }
        IpAddr::V6(v6) => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// Writes one field line, `name: value` and CRLF.
pub(crate) fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the response to the client is framed and whether it ends the connection.
pub(crate) struct ClientResponse<'a> {
    pub(crate) head: &'a ResponseHead,
    /// Framing of the body sent to the client; `None` for bodiless responses,
    /// whose upstream Content-Length (a HEAD's or a 304's) is passed on.
    pub(crate) framing: BodyFraming,
    pub(crate) close: bool,
    pub(crate) client_version: Version,
    /// The protocol switched to, for a 101.
    pub(crate) upgrade: Option<&'a [u8]>,
    /// The hooks' changes to the head.
    pub(crate) edits: &'a HeadEdits,
}

/// Appends the head sent to the client.
pub(crate) fn response_head(out: &mut Vec<u8>, resp: &ClientResponse<'_>, headers: &ProxyHeaders) {
    let head = resp.head;
    let status = head.status();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(head.reason());
    out.extend_from_slice(b"\r\n");
    let names_fields = head.connection_tokens().names_fields;
    for field in head.headers() {
        let skip = match field.kind {
            HeaderKind::ContentLength => true,
            kind => kind.is_hop_by_hop(),
        };
        if skip
            || resp.edits.removes(field.name)
            || (names_fields
                && field.kind == HeaderKind::Other
                && listed_in_connection(head.headers(), field.name))
        {
            continue;
        }
        push_field(out, field.name, field.value);
    }
    if let Some(via) = &headers.via {
        out.extend_from_slice(via.line());
    }
    out.extend_from_slice(resp.edits.added());
    match resp.framing {
        BodyFraming::None => {
            if let Some(n) = head.content_length() {
                if status >= 200 && status != 204 {
                    write_framing(out, BodyFraming::Length(n));
                }
            }
        }
        framing => write_framing(out, framing),
    }
    if let Some(protocol) = resp.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
        push_field(out, b"Upgrade", protocol);
    } else if status >= 200 {
        if resp.close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if resp.client_version == Version::Http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
    }
}

/// Appends a complete response generated by ringway itself; the answer
/// to a HEAD (`head_request`) has its Content-Length but no body.
pub(crate) fn local_response(
    out: &mut Vec<u8>,
    reply: &LocalReply,
    reason: &str,
    close: bool,
    head_request: bool,
    via: Option<&ViaName>,
) {
    let body = reply.body.as_bytes();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(itoa::Buffer::new().format(reply.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    if reply.server {
        out.extend_from_slice(b"Server: ringway\r\n");
    }
    // 204 and 304 have no body, and a 204 no Content-Length (RFC 9110
    // 8.6, 15.3.5).
    let bodyless = matches!(reply.status, 204 | 304);
    if !bodyless {
        out.extend_from_slice(b"Content-Type: ");
        out.extend_from_slice(reply.content_type.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"Cache-Control: no-store\r\n");
    out.extend_from_slice(reply.headers.as_bytes());
    if !bodyless {
        write_framing(out, BodyFraming::Length(body.len() as u64));
    }
    if let Some(via) = via {
        out.extend_from_slice(via.line());
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_request && !bodyless {
        out.extend_from_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;

    use super::*;
    use crate::limits::HttpLimits;

    use crate::head::parsed as head;

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        for text in [
            "0.0.0.0",
            "10.1.2.3",
            "192.0.2.100",
            "255.255.255.255",
            "::1",
            "2001:db8::7",
        ] {
            let ip: IpAddr = text.parse().unwrap();
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(out, text.as_bytes());
        }
    }

    fn upstream_head(raw: &str, headers: ProxyHeaders) -> String {
        let h = head(raw);
        let req = UpstreamRequest {
            head: &h,
            client_ip: "10.1.2.3".parse().unwrap(),
            scheme: "http",
            framing: h.body(),
            upgrade: None,
            upstream: Some("192.0.2.1:8080".parse().unwrap()),
            edits: &NO_EDITS,
        };
        let mut out = Vec::new();
        request_head(&mut out, &req, &headers);
        end_head(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn hop_by_hop_fields_are_dropped_and_proxy_fields_added() {
        let out = upstream_head(
            "POST /p HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nTE: trailers\r\nTrailer: X\r\nUpgrade: h2c\r\nProxy-Authorization: Basic eA==\r\nProxy-Authenticate: x\r\nX-Keep: yes\r\nContent-Length: 3\r\nX-Forwarded-For: 1.1.1.1\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil\r\n\r\n",
            ProxyHeaders::default(),
        );
        assert_eq!(
            out,
            "POST /p HTTP/1.1\r\nHost: a.test\r\nX-Keep: yes\r\nX-Forwarded-For: 1.1.1.1, 10.1.2.3\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: a.test\r\nVia: 1.1 ringway\r\nContent-Length: 3\r\n\r\n"
        );
    }

    #[test]
    fn forward_proxy_anonymity_modes() {
        let raw = "GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 198.51.100.7\r\n\r\n";
        let mode = |forwarded| upstream_head(raw, ProxyHeaders { forwarded, via: None });
        assert_eq!(
            mode(ForwardedStyle::AppendFor),
            "GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 198.51.100.7, 10.1.2.3\r\n\r\n"
        );
        assert_eq!(
            mode(ForwardedStyle::TruncateFor),
            "GET / HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 10.1.2.3\r\n\r\n"
        );
        assert_eq!(
            mode(ForwardedStyle::DeleteFor),
            "GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"
        );
    }

    #[test]
    fn a_request_without_host_gets_the_upstream_as_its_host() {
        let out = upstream_head(
            "GET /old HTTP/1.0\r\n\r\n",
            ProxyHeaders {
                forwarded: ForwardedStyle::Off,
                via: None,
            },
        );
        assert_eq!(out, "GET /old HTTP/1.1\r\nHost: 192.0.2.1:8080\r\n\r\n");
    }

    #[test]
    fn chunked_requests_are_reframed_as_chunked() {
        let out = upstream_head(
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            ProxyHeaders {
                forwarded: ForwardedStyle::Off,
                via: None,
            },
        );
        assert_eq!(
            out,
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
    }

    #[test]
    fn rfc7239_forwarded_is_appended() {
        let out = upstream_head(
            "GET / HTTP/1.1\r\nHost: a:8080\r\nForwarded: for=1.1.1.1\r\nX-Forwarded-For: kept\r\n\r\n",
            ProxyHeaders {
                forwarded: ForwardedStyle::Rfc7239,
                via: None,
            },
        );
        assert_eq!(
            out,
            "GET / HTTP/1.1\r\nHost: a:8080\r\nX-Forwarded-For: kept\r\nForwarded: for=1.1.1.1, for=10.1.2.3;proto=http;host=\"a:8080\"\r\n\r\n"
        );
    }

    #[test]
    fn absolute_form_becomes_origin_form_and_sets_host() {
        let out = upstream_head(
            "GET http://Real.test:81/x?y HTTP/1.1\r\nHost: fake.test\r\n\r\n",
            ProxyHeaders {
                forwarded: ForwardedStyle::Off,
                via: None,
            },
        );
        assert_eq!(out, "GET /x?y HTTP/1.1\r\nHost: Real.test:81\r\n\r\n");
        assert_eq!(origin_form(b"http://a"), (&b"/"[..], Some(&b"a"[..])));
        assert_eq!(origin_form(b"http://a?q"), (&b"?q"[..], Some(&b"a"[..])));
        assert_eq!(origin_form(b"/x"), (&b"/x"[..], None));
    }

    #[test]
    fn response_head_reframes_and_closes() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\nServer: o\r\nConnection: x-hop\r\nX-Hop: 1\r\nTransfer-Encoding: chunked\r\nKeep-Alive: 1\r\n\r\n"[..],
        );
        let mut resp = ResponseHead::new();
        assert!(resp.parse(&mut buf, &HttpLimits::default()).unwrap());
        let mut out = Vec::new();
        let r = ClientResponse {
            head: &resp,
            framing: BodyFraming::UntilClose,
            close: true,
            client_version: Version::Http10,
            upgrade: None,
            edits: &NO_EDITS,
        };
        response_head(&mut out, &r, &ProxyHeaders::default());
        end_head(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nServer: o\r\nVia: 1.1 ringway\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn head_responses_keep_their_content_length() {
        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n"[..]);
        let mut resp = ResponseHead::new();
        assert!(resp.parse(&mut buf, &HttpLimits::default()).unwrap());
        let mut out = Vec::new();
        let r = ClientResponse {
            head: &resp,
            framing: BodyFraming::None,
            close: false,
            client_version: Version::Http11,
            upgrade: None,
            edits: &NO_EDITS,
        };
        response_head(
            &mut out,
            &r,
            &ProxyHeaders {
                forwarded: ForwardedStyle::Off,
                via: None,
            },
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 42\r\n"
        );
    }

    #[test]
    fn edits_apply_to_both_heads() {
        let h = head("GET /old?x=1 HTTP/1.1\r\nHost: a.test\r\nX-Drop: 1\r\nX-Keep: 2\r\n\r\n");
        let mut edits = HeadEdits::new();
        edits.remove("x-drop").unwrap();
        edits.set("Host", b"inside.test").unwrap();
        edits.append("X-Added", b"yes").unwrap();
        edits.set_target(b"/new").unwrap();
        let req = UpstreamRequest {
            head: &h,
            client_ip: "10.1.2.3".parse().unwrap(),
            scheme: "http",
            framing: h.body(),
            upgrade: None,
            upstream: None,
            edits: &edits,
        };
        let mut out = Vec::new();
        request_head(&mut out, &req, &ProxyHeaders::default());
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("GET /new HTTP/1.1\r\n"), "{text}");
        assert!(
            !text.contains("X-Drop") && !text.contains("\nHost: a.test\r\n"),
            "{text}"
        );
        assert!(text.contains("X-Keep: 2\r\n") && text.contains("Host: inside.test\r\nX-Added: yes\r\n"));
        assert_eq!(text.matches("\nHost:").count(), 1, "{text}");

        let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nServer: o\r\nContent-Length: 0\r\n\r\n"[..]);
        let mut resp = ResponseHead::new();
        assert!(resp.parse(&mut buf, &HttpLimits::default()).unwrap());
        let mut edits = HeadEdits::new();
        edits.remove("server").unwrap();
        edits.append("Set-Cookie", b"rw=1; Path=/").unwrap();
        let r = ClientResponse {
            head: &resp,
            framing: BodyFraming::Length(0),
            close: false,
            client_version: Version::Http11,
            upgrade: None,
            edits: &edits,
        };
        let mut out = Vec::new();
        response_head(&mut out, &r, &ProxyHeaders::default());
        let text = String::from_utf8(out).unwrap();
        assert!(
            !text.contains("Server: o") && text.contains("Set-Cookie: rw=1; Path=/\r\n"),
            "{text}"
        );
    }
}
