//! Requests the engine answers itself, before the handler routes them:
//!
//! - a request that already went through this proxy (its `Via` names this
//!   proxy, Squid's loop check) gets 508 Loop Detected;
//! - TRACE gets 405 unless the listener forwards it (`allow_trace`): a
//!   TRACE echoes the client's cookies and credentials back, which is what
//!   cross-site tracing feeds on (nginx refuses it too);
//! - OPTIONS and TRACE with `Max-Forwards: 0` are answered here, as by
//!   their final recipient (RFC 9110 section 7.6.2); other values are
//!   decremented when the request is forwarded, and a value that is not a
//!   number gets 400.
//!
//! - a request whose Content-Length is over `max_body` gets 413 before
//!   anything goes upstream (a chunked one is stopped by the body relay).
//!
//! A request with none of these costs three tests.

use std::fmt::Write;

use crate::{
    head::{BodyFraming, HeaderKind, Method, RequestHead},
    limits::EngineSettings,
    reply::LocalReply,
};

/// A 308 to the request's URL over HTTPS at `port` (308, not 301: the
/// method and body stay what they were).
fn redirect_https(req: &RequestHead, port: u16) -> LocalReply {
    let (path, authority) = crate::write::origin_form(req.target());
    let path = std::str::from_utf8(path).unwrap_or("/");
    // An absolute-form target's authority wins over Host (RFC 9112 3.2.2).
    let host = authority
        .or(req.host())
        .and_then(|h| std::str::from_utf8(h).ok())
        .filter(|h| !h.is_empty());
    let Some(host) = host else {
        return LocalReply::new(
            400,
            "text/plain; charset=utf-8",
            "400 Bad Request: no Host to redirect to\n",
        );
    };
    // The host without its port: an IPv6 literal keeps its brackets.
    let name = match host.rfind(':') {
        Some(colon) if !host[colon..].contains(']') => &host[..colon],
        _ => host,
    };
    let mut location = format!("https://{name}");
    if port != 443 {
        let _ = write!(location, ":{port}");
    }
    if !path.starts_with('/') {
        location.push('/');
    }
    location.push_str(path);
    LocalReply::new(
        308,
        "text/plain; charset=utf-8",
        format!("308 Permanent Redirect: {location}\n"),
    )
    .with_header("Location", &location)
}

/// The methods a 405 and an OPTIONS answer list.
const ALLOWED: &str = "GET, HEAD, POST, PUT, DELETE, OPTIONS, PATCH";

/// The proxy's own answer to `req`, if it gives one.
pub(crate) fn answer(req: &RequestHead, settings: &EngineSettings) -> Option<LocalReply> {
    if let Some(port) = settings.redirect_https {
        return Some(redirect_https(req, port));
    }
    if let (BodyFraming::Length(n), Some(max)) = (req.body(), settings.limits.max_body) {
        if n > max {
            return Some(LocalReply::new(
                413,
                "text/plain; charset=utf-8",
                format!("413 Content Too Large: the body may be at most {max} bytes\n"),
            ));
        }
    }
    let method = req.method();
    let options_or_trace = matches!(method, Method::Options | Method::Trace);
    if !req.has_via() && !options_or_trace {
        return None;
    }
    if let Some(via) = &settings.proxy_headers.via {
        if req
            .headers()
            .any(|f| f.kind == HeaderKind::Via && via.is_in(f.value))
        {
            return Some(LocalReply::new(
                508,
                "text/plain; charset=utf-8",
                format!(
                    "508 Loop Detected: this request already went through this proxy (Via: {})\n",
                    via.name()
                ),
            ));
        }
    }
    if method == Method::Trace && !settings.allow_trace {
        return Some(LocalReply::status(405).with_header("Allow", ALLOWED));
    }
    if !options_or_trace {
        return None;
    }
    match req.max_forwards() {
        None | Some(Ok(1..)) => None,
        Some(Err(())) => Some(LocalReply::new(
            400,
            "text/plain; charset=utf-8",
            "400 Bad Request: Max-Forwards is not a number\n",
        )),
        Some(Ok(0)) if method == Method::Options => {
            Some(LocalReply::new(200, "text/plain; charset=utf-8", "").with_header("Allow", ALLOWED))
        }
        Some(Ok(0)) => Some(trace_echo(req)),
    }
}

/// TRACE's answer as its final recipient: the request head as received,
/// without the fields that carry credentials (RFC 9110 section 9.3.8).
fn trace_echo(req: &RequestHead) -> LocalReply {
    let mut echo = String::new();
    let _ = write!(
        echo,
        "{} {} HTTP/1.1\r\n",
        String::from_utf8_lossy(req.method_bytes()),
        String::from_utf8_lossy(req.target())
    );
    for field in req.headers() {
        let secret = ["authorization", "proxy-authorization", "cookie"]
            .iter()
            .any(|s| field.name.eq_ignore_ascii_case(s.as_bytes()));
        if !secret {
            let _ = write!(
                echo,
                "{}: {}\r\n",
                String::from_utf8_lossy(field.name),
                String::from_utf8_lossy(field.value)
            );
        }
    }
    echo.push_str("\r\n");
    LocalReply::new(200, "message/http", echo)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::ViaName;

    use crate::head::parsed as head;

    fn answer_to(raw: &str, settings: &EngineSettings) -> Option<LocalReply> {
        answer(&head(raw), settings)
    }

    #[test]
    fn plain_requests_pass() {
        let s = EngineSettings::default();
        assert_eq!(answer_to("GET / HTTP/1.1\r\nHost: a\r\n\r\n", &s), None);
        assert_eq!(
            answer_to(
                "GET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 other, 1.0 ringway-x\r\n\r\n",
                &s
            ),
            None,
            "another proxy's entry, and a name that only starts like ours"
        );
        assert_eq!(
            answer_to("OPTIONS * HTTP/1.1\r\nHost: a\r\nMax-Forwards: 3\r\n\r\n", &s),
            None
        );
        assert_eq!(
            answer_to("GET / HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n", &s),
            None,
            "Max-Forwards applies to OPTIONS and TRACE only"
        );
    }

    #[test]
    fn our_own_via_entry_is_a_loop() {
        let mut s = EngineSettings::default();
        s.proxy_headers.via = Some(ViaName::new("edge-7").unwrap());
        for via in [
            "1.1 edge-7",
            "1.0 a, HTTP/1.1 EDGE-7 (ringway)",
            "1.1 b,1.1 edge-7",
        ] {
            let r = answer_to(&format!("GET / HTTP/1.1\r\nHost: a\r\nVia: {via}\r\n\r\n"), &s).unwrap();
            assert_eq!(r.status, 508, "{via}");
        }
        s.proxy_headers.via = None;
        assert_eq!(
            answer_to("GET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 edge-7\r\n\r\n", &s),
            None,
            "without a Via of its own the proxy cannot tell"
        );
    }

    #[test]
    fn trace_is_refused_unless_allowed() {
        let mut s = EngineSettings::default();
        let r = answer_to("TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", &s).unwrap();
        assert_eq!(r.status, 405);
        assert!(r.headers.contains("Allow: GET,"));
        s.allow_trace = true;
        assert_eq!(answer_to("TRACE / HTTP/1.1\r\nHost: a\r\n\r\n", &s), None);
        let r = answer_to(
            "TRACE /t HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\nCookie: secret\r\nX-A: 1\r\n\r\n",
            &s,
        )
        .unwrap();
        assert_eq!((r.status, &*r.content_type), (200, "message/http"));
        assert!(r.body.starts_with("TRACE /t HTTP/1.1\r\n"), "{}", r.body);
        assert!(r.body.contains("X-A: 1\r\n"));
        assert!(!r.body.contains("secret"), "credentials are not echoed");
    }

    #[test]
    fn bodies_over_the_limit_are_refused_by_their_length() {
        let mut s = EngineSettings::default();
        let post = |n: u64| format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {n}\r\n\r\n");
        assert_eq!(answer_to(&post(1 << 40), &s), None, "no limit by default");
        s.limits.max_body = Some(1000);
        assert_eq!(answer_to(&post(1000), &s), None);
        assert_eq!(answer_to(&post(1001), &s).map(|r| r.status), Some(413));
    }

    #[test]
    fn max_forwards_zero_is_answered_and_garbage_refused() {
        let s = EngineSettings::default();
        let r = answer_to("OPTIONS * HTTP/1.1\r\nHost: a\r\nMax-Forwards: 0\r\n\r\n", &s).unwrap();
        assert_eq!(r.status, 200);
        assert!(r.headers.contains("Allow: "));
        let r = answer_to("OPTIONS * HTTP/1.1\r\nHost: a\r\nMax-Forwards: -1\r\n\r\n", &s).unwrap();
        assert_eq!(r.status, 400);
    }
}
