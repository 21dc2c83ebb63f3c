//! CORS, answered by the proxy per the Fetch standard: preflight `OPTIONS`
//! requests get their answer here (they are not forwarded), and responses
//! to allowed origins get `Access-Control-Allow-*` fields. A credentialed
//! answer always names the origin, never `*`; every answer that depends on
//! the origin says `Vary: Origin`, so that a cache keeps them apart.

use std::time::Duration;

use crate::{edits::HeadEdits, head::RequestHead, reply::LocalReply};

/// One allowed origin.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    /// Any origin (`*`).
    Any,
    /// This origin exactly (lowercased).
    Exact(Box<str>),
    /// `scheme://*.suffix[:port]`: any subdomain of the suffix.
    Subdomains {
        scheme: Box<str>,
        suffix: Box<str>,
        port: Box<str>,
    },
}

/// A route's CORS policy, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cors {
    origins: Vec<Origin>,
    /// Upper-case method names.
    methods: Vec<Box<str>>,
    /// Lowercased header names, or `None` for any (`["*"]`).
    headers: Option<Vec<Box<str>>>,
    expose: Vec<Box<str>>,
    credentials: bool,
    max_age: Option<Duration>,
    /// The methods and headers as sent in a preflight answer.
    methods_line: Box<str>,
    headers_line: Box<str>,
    expose_line: Box<str>,
}

/// The settings of a [`Cors`] policy, as configured.
#[derive(Debug, Clone, Default)]
pub struct CorsSettings {
    /// Allowed origins (`https://app.example.com`, `https://*.example.com`, `*`).
    pub allow_origins: Vec<String>,
    /// Allowed methods (default GET, HEAD, POST).
    pub allow_methods: Vec<String>,
    /// Allowed request headers (`*`: whatever the preflight asks for).
    pub allow_headers: Vec<String>,
    /// Response headers scripts may read.
    pub expose_headers: Vec<String>,
    /// Whether cookies and credentials may be sent.
    pub allow_credentials: bool,
    /// How long a browser may cache a preflight answer.
    pub max_age: Option<Duration>,
}

/// Which setting a CORS error is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorsError {
    /// The key (`allow_origins`, ...) and the index of the bad element.
    pub key: &'static str,
    /// The element, when the error is about one.
    pub index: Option<usize>,
    /// Why it was refused.
    pub message: String,
}

const SAFELISTED_METHODS: [&str; 3] = ["GET", "HEAD", "POST"];

impl Cors {
    /// Compiles `settings`.
    pub fn new(settings: &CorsSettings) -> Result<Self, CorsError> {
        let error = |key, index, message| CorsError { key, index, message };
        if settings.allow_origins.is_empty() {
            return Err(error(
                "allow_origins",
                None,
                "CORS needs at least one allowed origin (or \"*\")".into(),
            ));
        }
        let mut origins = Vec::new();
        for (i, text) in settings.allow_origins.iter().enumerate() {
            let origin = parse_origin(text).map_err(|m| error("allow_origins", Some(i), m))?;
            if origin == Origin::Any && settings.allow_credentials {
                return Err(error(
                    "allow_origins",
                    Some(i),
                    "\"*\" cannot go with allow_credentials = true: browsers refuse credentials for any origin; list the origins".into(),
                ));
            }
            origins.push(origin);
        }
        let mut methods = Vec::new();
        for (i, m) in settings.allow_methods.iter().enumerate() {
            if m == "*" {
                return Err(error(
                    "allow_methods",
                    Some(i),
                    "list the methods: \"*\" is not a method (and browsers ignore it with credentials)"
                        .into(),
                ));
            }
            if !crate::edits::is_token(m) {
                return Err(error("allow_methods", Some(i), format!("{m:?} is not a method")));
            }
            methods.push(m.to_ascii_uppercase().into());
        }
        if methods.is_empty() {
            methods = SAFELISTED_METHODS.iter().map(|&m| m.into()).collect();
        }
        let mut headers = Some(Vec::new());
        for (i, h) in settings.allow_headers.iter().enumerate() {
            if h == "*" {
                headers = None;
            } else if !crate::edits::is_token(h) {
                return Err(error(
                    "allow_headers",
                    Some(i),
                    format!("{h:?} is not a header name"),
                ));
            } else if let Some(list) = &mut headers {
                list.push(h.to_ascii_lowercase().into());
            }
        }
        let mut expose = Vec::new();
        for (i, h) in settings.expose_headers.iter().enumerate() {
            if !crate::edits::is_token(h) {
                return Err(error(
                    "expose_headers",
                    Some(i),
                    format!("{h:?} is not a header name"),
                ));
            }
            expose.push(h.as_str().into());
        }
        let join = |items: &[Box<str>]| items.join(", ").into_boxed_str();
        Ok(Cors {
            methods_line: join(&methods),
            headers_line: headers.as_deref().map_or_else(Default::default, join),
            expose_line: join(&expose),
            origins,
            methods,
            headers,
            expose,
            credentials: settings.allow_credentials,
            max_age: settings.max_age,
        })
    }

    fn allows(&self, origin: &[u8]) -> bool {
        let Ok(origin) = std::str::from_utf8(origin) else {
            return false;
        };
        self.origins.iter().any(|allowed| match allowed {
            Origin::Any => true,
            Origin::Exact(o) => o.eq_ignore_ascii_case(origin),
            Origin::Subdomains { scheme, suffix, port } => {
                let Some((s, rest)) = origin.split_once("://") else {
                    return false;
                };
                let (host, p) = split_port(rest);
                s.eq_ignore_ascii_case(scheme)
                    && p == &**port
                    && crate::matching::is_subdomain(host.as_bytes(), suffix.as_bytes())
            }
        })
    }

    /// Whether the answer is `*` (any origin, no credentials): then it
    /// does not vary by origin.
    fn answers_any(&self) -> bool {
        !self.credentials && self.origins.contains(&Origin::Any)
    }

    /// The answer to a preflight request, or `None` when `req` is not one
    /// (an `OPTIONS` with `Origin` and `Access-Control-Request-Method`).
    pub fn preflight(&self, req: &RequestHead) -> Option<LocalReply> {
        if req.method_bytes() != b"OPTIONS" {
            return None;
        }
        let origin = req.header("origin")?;
        let method = req.header("access-control-request-method")?;
        let vary = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers";
        let refuse = |why: &str| {
            let reply = LocalReply::new(
                403,
                "text/plain; charset=utf-8",
                format!("403 Forbidden: CORS preflight refused: {why}\n"),
            );
            Some(reply.with_header("Vary", vary))
        };
        if !self.allows(origin) {
            return refuse("the origin is not allowed");
        }
        let method_ok = SAFELISTED_METHODS.iter().any(|m| m.as_bytes() == method)
            || self.methods.iter().any(|m| m.as_bytes() == method);
        if !method_ok {
            return refuse("the method is not allowed");
        }
        let requested = req.header("access-control-request-headers").unwrap_or_default();
        if let Some(allowed) = &self.headers {
            let refused = requested
                .split(|&b| b == b',')
                .map(<[u8]>::trim_ascii)
                .filter(|h| !h.is_empty())
                .find(|h| !allowed.iter().any(|a| a.as_bytes().eq_ignore_ascii_case(h)));
            if refused.is_some() {
                return refuse("a requested header is not allowed");
            }
        }
        let mut reply = LocalReply::new(204, "text/plain; charset=utf-8", "");
        reply = reply.with_header("Access-Control-Allow-Origin", self.origin_value(origin));
        if self.credentials {
            reply = reply.with_header("Access-Control-Allow-Credentials", "true");
        }
        reply = reply.with_header("Access-Control-Allow-Methods", &self.methods_line);
        match &self.headers {
            None if !requested.is_empty() => {
                reply = reply.with_header(
                    "Access-Control-Allow-Headers",
                    &String::from_utf8_lossy(requested),
                );
            }
            Some(_) if !self.headers_line.is_empty() => {
                reply = reply.with_header("Access-Control-Allow-Headers", &self.headers_line);
            }
            _ => {}
        }
        if let Some(age) = self.max_age {
            reply = reply.with_header("Access-Control-Max-Age", &age.as_secs().to_string());
        }
        Some(reply.with_header("Vary", vary))
    }

    fn origin_value<'a>(&self, origin: &'a [u8]) -> &'a str {
        if self.answers_any() {
            "*"
        } else {
            // Checked as UTF-8 by `allows`.
            std::str::from_utf8(origin).unwrap_or_default()
        }
    }

    /// Adds the CORS fields to a response to `req` (drops the server's own,
    /// so that the client sees one answer).
    pub fn respond(&self, req: &RequestHead, edits: &mut HeadEdits) {
        for name in [
            "Access-Control-Allow-Origin",
            "Access-Control-Allow-Credentials",
            "Access-Control-Expose-Headers",
        ] {
            let _ = edits.remove(name);
        }
        if !self.answers_any() {
            let _ = edits.append("Vary", b"Origin");
        }
        let Some(origin) = req.header("origin").filter(|o| self.allows(o)) else {
            return;
        };
        let _ = edits.append(
            "Access-Control-Allow-Origin",
            self.origin_value(origin).as_bytes(),
        );
        if self.credentials {
            let _ = edits.append("Access-Control-Allow-Credentials", b"true");
        }
        if !self.expose.is_empty() {
            let _ = edits.append("Access-Control-Expose-Headers", self.expose_line.as_bytes());
        }
    }
}

fn split_port(hostport: &str) -> (&str, &str) {
    if hostport.starts_with('[') {
        return match hostport.find("]:") {
            Some(end) => (&hostport[..=end], &hostport[end + 2..]),
            None => (hostport, ""),
        };
    }
    match hostport.rsplit_once(':') {
        Some((host, port)) => (host, port),
        None => (hostport, ""),
    }
}

impl Cors {
    /// Adds the CORS fields to an answer the proxy gives `req` itself (a
    /// preflight's own answer already has them).
    pub fn respond_local(&self, req: &RequestHead, reply: &mut LocalReply) {
        if reply.headers.contains("Access-Control-Allow-") || reply.headers.contains("Vary: Origin") {
            return;
        }
        let mut edits = HeadEdits::new();
        self.respond(req, &mut edits);
        // Lines this module wrote: `Name: value\r\n`, checked.
        if let Ok(lines) = std::str::from_utf8(edits.added()) {
            reply.headers.push_str(lines);
        }
    }
}

/// Parses an origin as browsers serialise it: `scheme://host[:port]`.
fn parse_origin(text: &str) -> Result<Origin, String> {
    if text == "*" {
        return Ok(Origin::Any);
    }
    let bad = |why: &str| {
        format!("{text:?} is not an origin: {why} (expected like \"https://app.example.com\" or \"https://*.example.com\")")
    };
    let (scheme, rest) = text.split_once("://").ok_or_else(|| bad("no scheme"))?;
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(bad("a bad scheme"));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(bad(
            "an origin has no path, query or fragment, not even a trailing /",
        ));
    }
    if rest.contains('@') {
        return Err(bad("an origin has no user name"));
    }
    let (host, port) = split_port(rest);
    if rest.contains(':') && !host.starts_with('[') && (port.is_empty() || port.parse::<u16>().is_err()) {
        return Err(bad("a bad port"));
    }
    let name_ok = |h: &str| {
        !h.is_empty()
            && (h.starts_with('[') && h.ends_with(']')
                || h.split('.')
                    .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')))
    };
    if let Some(suffix) = host.strip_prefix("*.") {
        if !name_ok(suffix) {
            return Err(bad("a bad host"));
        }
        return Ok(Origin::Subdomains {
            scheme: scheme.to_ascii_lowercase().into(),
            suffix: suffix.to_ascii_lowercase().into(),
            port: port.into(),
        });
    }
    if !name_ok(host) {
        return Err(bad("a bad host"));
    }
    Ok(Origin::Exact(text.to_ascii_lowercase().into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::parsed;

    fn cors(origins: &[&str], credentials: bool) -> Cors {
        Cors::new(&CorsSettings {
            allow_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_methods: vec!["GET".into(), "PUT".into()],
            allow_headers: vec!["X-Token".into(), "Content-Type".into()],
            expose_headers: vec!["X-Total".into()],
            allow_credentials: credentials,
            max_age: Some(Duration::from_secs(600)),
        })
        .unwrap()
    }

    fn header<'a>(reply: &'a LocalReply, name: &str) -> Option<&'a str> {
        reply.headers.split("\r\n").find_map(|l| {
            let (n, v) = l.split_once(": ")?;
            n.eq_ignore_ascii_case(name).then_some(v)
        })
    }

    #[test]
    fn preflights_are_answered_for_allowed_origins_only() {
        let c = cors(&["https://app.example.com", "https://*.example.org"], true);
        let pre = |origin: &str, method: &str, headers: &str| {
            c.preflight(&parsed(&format!(
                "OPTIONS /x HTTP/1.1\r\nHost: h\r\nOrigin: {origin}\r\nAccess-Control-Request-Method: {method}\r\nAccess-Control-Request-Headers: {headers}\r\n\r\n"
            )))
            .unwrap()
        };
        let ok = pre("https://app.example.com", "PUT", "x-token, content-type");
        assert_eq!(ok.status, 204);
        assert_eq!(
            header(&ok, "Access-Control-Allow-Origin"),
            Some("https://app.example.com")
        );
        assert_eq!(header(&ok, "Access-Control-Allow-Credentials"), Some("true"));
        assert_eq!(header(&ok, "Access-Control-Allow-Methods"), Some("GET, PUT"));
        assert_eq!(
            header(&ok, "Access-Control-Allow-Headers"),
            Some("x-token, content-type")
        );
        assert_eq!(header(&ok, "Access-Control-Max-Age"), Some("600"));
        assert!(header(&ok, "Vary").unwrap().starts_with("Origin"));
        assert_eq!(pre("https://a.b.example.org", "GET", "").status, 204);
        // Not ASCII, cut inside a character by a naive slice: refused, no panic.
        assert_eq!(pre("https://a\u{e9}xample.org", "GET", "").status, 403);
        assert_eq!(
            pre("https://example.org", "GET", "").status,
            403,
            "*. needs a subdomain"
        );
        assert_eq!(pre("https://evil.com", "GET", "").status, 403);
        assert_eq!(pre("https://app.example.com.evil.com", "GET", "").status, 403);
        assert_eq!(
            pre("http://app.example.com", "GET", "").status,
            403,
            "the scheme counts"
        );
        assert_eq!(pre("https://app.example.com", "DELETE", "").status, 403);
        assert_eq!(pre("https://app.example.com", "GET", "x-other").status, 403);
        // Not a preflight: an OPTIONS without the request method goes on.
        assert!(c
            .preflight(&parsed(
                "OPTIONS /x HTTP/1.1\r\nHost: h\r\nOrigin: https://app.example.com\r\n\r\n"
            ))
            .is_none());
    }

    #[test]
    fn responses_name_the_origin_and_vary_by_it() {
        let c = cors(&["https://app.example.com"], true);
        let mut edits = HeadEdits::new();
        c.respond(
            &parsed("GET / HTTP/1.1\r\nHost: h\r\nOrigin: https://app.example.com\r\n\r\n"),
            &mut edits,
        );
        let added = String::from_utf8(edits.added().to_vec()).unwrap();
        assert_eq!(
            added,
            "Vary: Origin\r\nAccess-Control-Allow-Origin: https://app.example.com\r\nAccess-Control-Allow-Credentials: true\r\nAccess-Control-Expose-Headers: X-Total\r\n"
        );
        assert!(
            edits.removes(b"access-control-allow-origin"),
            "the server's own are dropped"
        );
        let mut edits = HeadEdits::new();
        c.respond(
            &parsed("GET / HTTP/1.1\r\nHost: h\r\nOrigin: https://evil.com\r\n\r\n"),
            &mut edits,
        );
        assert_eq!(edits.added(), b"Vary: Origin\r\n");
        // Any origin without credentials: `*`, no Vary.
        let any = cors(&["*"], false);
        let mut edits = HeadEdits::new();
        any.respond(
            &parsed("GET / HTTP/1.1\r\nHost: h\r\nOrigin: https://x.test\r\n\r\n"),
            &mut edits,
        );
        let added = String::from_utf8(edits.added().to_vec()).unwrap();
        assert!(added.starts_with("Access-Control-Allow-Origin: *\r\n"), "{added}");
    }

    #[test]
    fn bad_settings_are_refused() {
        let refuse = |origins: &[&str], credentials| {
            Cors::new(&CorsSettings {
                allow_origins: origins.iter().map(|s| s.to_string()).collect(),
                allow_credentials: credentials,
                ..Default::default()
            })
            .unwrap_err()
        };
        let e = refuse(&["*"], true);
        assert_eq!((e.key, e.index), ("allow_origins", Some(0)));
        assert!(e.message.contains("cannot go with allow_credentials"));
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://a.test/x",
            "https://a.test:x",
            "https://",
            "https://u@a.test",
        ] {
            let e = refuse(&["https://ok.test", bad], false);
            assert_eq!(e.index, Some(1), "{bad}");
            assert!(e.message.contains("is not an origin"), "{}", e.message);
        }
        assert!(refuse(&[], false).message.contains("at least one"));
    }
}
