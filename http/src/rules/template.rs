//! Value templates: the `to` of redirects and rewrites and the values of
//! header edits, with variables (`$host`, `${request_id}`, `$1`) compiled
//! at load and rendered into a caller's buffer.

use std::{fmt, net::SocketAddr};

use regex::bytes::CaptureLocations;

use crate::{head::RequestHead, request_id::RequestId};

/// A variable a template may read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Var {
    /// `$scheme`: `http` or `https`, as the client connected.
    Scheme,
    /// `$host`: the request's host, without a port.
    Host,
    /// `$path`: the path in canonical form (decoded, dot-segments
    /// resolved), without the query.
    Path,
    /// `$query`: the query as sent, without its `?`.
    Query,
    /// `$is_args`: `?` when there is a query, else nothing.
    IsArgs,
    /// `$request_uri`: the target as the client sent it (origin-form).
    RequestUri,
    /// `$method`.
    Method,
    /// `$remote_addr`: the client's IP address.
    RemoteAddr,
    /// `$request_id`: 32 hex digits, unique per request.
    RequestId,
    /// `$http_NAME`: the request's header NAME (`_` for `-`).
    Header(Box<str>),
    /// `$1` to `$9`: a capture of the rule's `path_regex`.
    Capture(u8),
}

const NAMES: [(&str, Var); 9] = [
    ("scheme", Var::Scheme),
    ("host", Var::Host),
    ("path", Var::Path),
    ("query", Var::Query),
    ("is_args", Var::IsArgs),
    ("request_uri", Var::RequestUri),
    ("method", Var::Method),
    ("remote_addr", Var::RemoteAddr),
    ("request_id", Var::RequestId),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(Box<[u8]>),
    Var(Var),
}

/// A compiled template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    source: Box<str>,
    /// Whether every value it can render is a valid field value: its
    /// text has no CR, LF or NUL and its variables are the proxy's own
    /// (no request bytes).
    field_safe: bool,
}

/// What a template is rendered from.
pub struct Vars<'a> {
    /// The request.
    pub req: &'a RequestHead,
    /// The client's address.
    pub remote: SocketAddr,
    /// The request's ID.
    pub request_id: RequestId,
    /// Whether the client connected over TLS.
    pub https: bool,
    /// The canonical path, when the caller has it (else it is made).
    pub path: Option<&'a [u8]>,
    /// The haystack and capture positions of a `path_regex` that matched.
    pub captures: Option<(&'a [u8], &'a CaptureLocations)>,
    /// Whether the value goes into a URL (a redirect or a rewrite): header
    /// values are percent-encoded there, so that a client's header cannot
    /// add path segments or a query.
    pub in_url: bool,
}

impl<'a> Vars<'a> {
    /// What a header edit renders from: `req` from `remote` (unknown:
    /// `0.0.0.0`), no path or captures at hand.
    pub fn for_header(
        req: &'a RequestHead,
        remote: Option<SocketAddr>,
        request_id: RequestId,
        https: bool,
    ) -> Self {
        Vars {
            req,
            remote: remote.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0))),
            request_id,
            https,
            path: None,
            captures: None,
            in_url: false,
        }
    }
}

impl Template {
    /// Compiles `text`. `groups` is how many capture groups `$1`... may
    /// refer to (0: none may be used).
    pub fn parse(text: &str, groups: usize) -> Result<Self, String> {
        let bytes = text.as_bytes();
        let mut parts = Vec::new();
        let mut literal = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if b != b'$' {
                literal.push(b);
                i += 1;
                continue;
            }
            i += 1;
            let (name, next) = match bytes.get(i) {
                Some(b'$') => {
                    literal.push(b'$');
                    i += 1;
                    continue;
                }
                Some(b'{') => {
                    let end = text[i..]
                        .find('}')
                        .ok_or_else(|| format!("unclosed \"${{\" in {text:?}"))?;
                    (&text[i + 1..i + end], i + end + 1)
                }
                Some(c) if c.is_ascii_digit() => {
                    if bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
                        return Err(format!(
                            "${} in {text:?}: captures go up to $9; for ${} followed by a digit write ${{{}}}{}",
                            &text[i..i + 2],
                            &text[i..=i],
                            &text[i..=i],
                            &text[i + 1..i + 2]
                        ));
                    }
                    (&text[i..=i], i + 1)
                }
                Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {
                    let len = bytes[i..]
                        .iter()
                        .position(|c| !(c.is_ascii_alphanumeric() || *c == b'_'))
                        .unwrap_or(bytes.len() - i);
                    (&text[i..i + len], i + len)
                }
                _ => {
                    return Err(format!(
                        "a lone \"$\" in {text:?}: write \"$$\" for a dollar sign"
                    ))
                }
            };
            let var = Self::var(name, groups, text)?;
            let braced = bytes.get(i) == Some(&b'{');
            if !braced && matches!(var, Var::Header(_)) && bytes.get(next) == Some(&b'-') {
                return Err(format!(
                    "${name}-... in {text:?}: a variable name ends at '-'; write the header in lowercase with underscores (\"$http_x_api_key\" for X-Api-Key), or as ${{http_X-Api-Key}}"
                ));
            }
            if !literal.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut literal).into()));
            }
            parts.push(Part::Var(var));
            i = next;
        }
        if !literal.is_empty() {
            parts.push(Part::Text(literal.into()));
        }
        let field_safe = parts.iter().all(|p| match p {
            Part::Text(text) => !text.iter().any(|&b| matches!(b, b'\r' | b'\n' | 0)),
            Part::Var(var) => matches!(var, Var::Scheme | Var::RemoteAddr | Var::RequestId),
        });
        Ok(Template {
            parts,
            source: text.into(),
            field_safe,
        })
    }

    fn var(name: &str, groups: usize, text: &str) -> Result<Var, String> {
        if let Some(digit) = name.parse::<u8>().ok().filter(|_| name.len() == 1) {
            if digit == 0 || usize::from(digit) > groups {
                if groups == 0 {
                    return Err(format!(
                        "${digit} in {text:?}: no path_regex capture group here (write $$ for a dollar sign)"
                    ));
                }
                let have = match groups {
                    1 => "1 capture group".to_owned(),
                    n => format!("{n} capture groups"),
                };
                return Err(format!("${digit} in {text:?}, but the rule has {have}"));
            }
            return Ok(Var::Capture(digit));
        }
        if let Some((_, var)) = NAMES.iter().find(|(n, _)| *n == name) {
            return Ok(var.clone());
        }
        if let Some(header) = name.strip_prefix("http_").filter(|h| !h.is_empty()) {
            return Ok(Var::Header(header.replace('_', "-").into()));
        }
        let known: Vec<&str> = NAMES.iter().map(|(n, _)| *n).collect();
        Err(format!(
            "unknown variable ${name} in {text:?}: expected one of ${}, $http_NAME or $1-$9",
            known.join(", $")
        ))
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether every value it renders is a valid field value as it is.
    pub(crate) fn is_field_safe(&self) -> bool {
        self.field_safe
    }

    /// Whether it reads no variable.
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }

    /// Whether it reads `var`.
    pub fn reads(&self, var: &Var) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Var(v) if v == var))
    }

    /// Appends the text of a template that reads no variable.
    pub(crate) fn render_literal(&self, out: &mut Vec<u8>) {
        for part in &self.parts {
            if let Part::Text(text) = part {
                out.extend_from_slice(text);
            }
        }
    }

    /// Appends the rendered value to `out`.
    pub fn render(&self, out: &mut Vec<u8>, vars: &Vars<'_>) {
        for part in &self.parts {
            match part {
                Part::Text(text) => out.extend_from_slice(text),
                Part::Var(var) => render_var(out, var, vars),
            }
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

fn render_var(out: &mut Vec<u8>, var: &Var, vars: &Vars<'_>) {
    let req = vars.req;
    let target = || {
        let (path_query, authority) = crate::write::origin_form(req.target());
        (path_query, authority, memchr::memchr(b'?', path_query))
    };
    match var {
        Var::Scheme => out.extend_from_slice(if vars.https { b"https" } else { b"http" }),
        Var::Host => {
            let (_, authority, _) = target();
            let host = authority.or(req.host()).unwrap_or_default();
            out.extend_from_slice(host_without_port(host));
        }
        Var::Path => match vars.path {
            Some(path) => out.extend_from_slice(path),
            None => {
                let (path_query, _, _) = target();
                let start = out.len();
                let len = crate::matching::canonical_target(out, path_query);
                out.truncate(start + len);
            }
        },
        Var::Query => {
            let (path_query, _, query_at) = target();
            if let Some(at) = query_at {
                out.extend_from_slice(&path_query[at + 1..]);
            }
        }
        Var::IsArgs => {
            let (path_query, _, query_at) = target();
            if query_at.is_some_and(|at| at + 1 < path_query.len()) {
                out.push(b'?');
            }
        }
        Var::RequestUri => out.extend_from_slice(target().0),
        Var::Method => out.extend_from_slice(req.method_bytes()),
        Var::RemoteAddr => match vars.remote.ip().to_canonical() {
            std::net::IpAddr::V4(v4) => {
                // Without the formatting machinery: this is in most
                // configurations' header edits.
                let mut text = [0u8; 15];
                let mut len = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text[len] = b'.';
                        len += 1;
                    }
                    if octet >= 100 {
                        text[len] = b'0' + octet / 100;
                        len += 1;
                    }
                    if octet >= 10 {
                        text[len] = b'0' + octet / 10 % 10;
                        len += 1;
                    }
                    text[len] = b'0' + octet % 10;
                    len += 1;
                }
                out.extend_from_slice(&text[..len]);
            }
            v6 => {
                use std::io::Write;
                let _ = write!(out, "{v6}");
            }
        },
        Var::RequestId => out.extend_from_slice(&vars.request_id.hex()),
        Var::Header(name) => {
            if let Some(value) = req.header(name) {
                if vars.in_url {
                    push_encoded(out, value);
                } else {
                    out.extend_from_slice(value);
                }
            }
        }
        Var::Capture(n) => {
            if let Some((haystack, locations)) = vars.captures {
                if let Some((start, end)) = locations.get(usize::from(*n)) {
                    out.extend_from_slice(&haystack[start..end]);
                }
            }
        }
    }
}

/// Appends `value` with every byte but the unreserved ones (RFC 3986
/// 2.3) percent-encoded.
fn push_encoded(out: &mut Vec<u8>, value: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in value {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
}

/// `host` without its port (an IPv6 literal keeps its brackets).
pub(crate) fn host_without_port(host: &[u8]) -> &[u8] {
    if host.first() == Some(&b'[') {
        return match memchr::memchr(b']', host) {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match memchr::memrchr(b':', host) {
        Some(colon) => &host[..colon],
        None => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::head::parsed;

    fn render(template: &str, groups: usize, request: &str) -> String {
        let t = Template::parse(template, groups).unwrap();
        let req = parsed(request);
        let mut out = Vec::new();
        t.render(
            &mut out,
            &Vars {
                req: &req,
                remote: "[::ffff:127.0.0.9]:4000".parse().unwrap(),
                request_id: RequestId::default(),
                https: true,
                path: None,
                captures: None,
                in_url: false,
            },
        );
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn variables_render_from_the_request() {
        let req = "GET /a/./b?x=1 HTTP/1.1\r\nHost: Ex.test:8080\r\nX-Tenant: t1\r\n\r\n";
        assert_eq!(
            render("$scheme://$host${path}$is_args$query $method", 0, req),
            "https://Ex.test/a/b?x=1 GET"
        );
        assert_eq!(
            render("$request_uri|$remote_addr|$http_x_tenant|$$", 0, req),
            "/a/./b?x=1|127.0.0.9|t1|$"
        );
        assert_eq!(render("$request_id", 0, req), "0".repeat(32));
        let bare = "GET /p HTTP/1.1\r\nHost: h\r\n\r\n";
        assert_eq!(render("$path$is_args$query", 0, bare), "/p");
    }

    #[test]
    fn bad_templates_say_why() {
        let error = |t: &str, groups| Template::parse(t, groups).unwrap_err();
        assert!(error("/v2/$3", 2).contains("$3 in \"/v2/$3\", but the rule has 2 capture groups"));
        assert!(error("/v2/$1", 0).contains("no path_regex"));
        assert!(error("costs $5", 0).contains("write $$ for a dollar sign"));
        assert!(error("/x/$10", 2).contains("write ${1}0"));
        assert!(error("$http_X-Api-Key", 0).contains("$http_x_api_key"));
        assert!(Template::parse("${http_X-Api-Key}-$host", 0).is_ok());
        assert!(error("$hots", 0).starts_with("unknown variable $hots"));
        assert!(error("${host", 0).starts_with("unclosed"));
        assert!(error("100$", 0).contains("lone"));
        assert!(Template::parse("/v2/$1", 1).unwrap().reads(&Var::Capture(1)));
        assert!(Template::parse("plain", 0).unwrap().is_literal());
    }
}

#[cfg(test)]
mod address_tests {
    use super::*;
    use crate::head::parsed;

    #[test]
    fn client_addresses_render_as_text() {
        let req = parsed("GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        let t = Template::parse("$remote_addr", 0).unwrap();
        for (addr, want) in [
            ("10.20.0.255:1", "10.20.0.255"),
            ("1.99.100.7:1", "1.99.100.7"),
            ("[2001:db8::1]:1", "2001:db8::1"),
        ] {
            let mut out = Vec::new();
            t.render(
                &mut out,
                &Vars {
                    req: &req,
                    remote: addr.parse().unwrap(),
                    request_id: RequestId::default(),
                    https: false,
                    path: None,
                    captures: None,
                    in_url: false,
                },
            );
            assert_eq!(out, want.as_bytes());
        }
    }
}
