//! Request matchers shared by the forward proxy's ACLs and the reverse
//! proxy's rules: one vocabulary for both.
//!
//! - [`IpNet`]: a client or destination network in CIDR notation.
//! - [`ValueMatch`]: a header or query value, exact or `~regex`.
//! - [`canonical_target`]: the spelling of a path that matchers read, so
//!   that `/%61dmin`, `/x/../admin` and `//admin` all match `/admin`.
//!
//! Everything here is compiled at configuration load and matches without
//! allocating.

use std::{fmt, net::IpAddr, str::FromStr};

/// An IP network in CIDR notation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Whether `ip` is in the network (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for IpNet {
    type Err = String;

    /// `10.0.0.0/8`, `fd00::/8`, or a bare address (a single host).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("invalid network {s:?}: expected CIDR like 10.0.0.0/8"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= max)
                .ok_or_else(|| format!("invalid prefix length in {s:?}"))?,
        };
        let mapped = addr.is_ipv6() && addr.to_canonical().is_ipv4();
        if mapped && prefix < 96 {
            // ::ffff:a.b.c.d/64 would quietly become an IPv4 /0.
            return Err(format!(
                "invalid network {s:?}: an IPv4-mapped network needs a prefix of at least 96"
            ));
        }
        Ok(IpNet {
            addr: addr.to_canonical(),
            prefix: if mapped { prefix - 96 } else { prefix },
        })
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// How a header or query value is matched: the whole value exactly, or a
/// regular expression anywhere in it (written `~expr`; `(?i)` for case
/// folding).
#[derive(Debug, Clone)]
pub enum ValueMatch {
    /// The value is exactly this.
    Exact(Box<[u8]>),
    /// The expression matches somewhere in the value.
    Regex(regex::bytes::Regex),
}

impl ValueMatch {
    /// Parses `"text"` (exact) or `"~expr"` (regex).
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.strip_prefix('~') {
            Some(expr) => regex::bytes::Regex::new(expr)
                .map(ValueMatch::Regex)
                .map_err(|e| format!("invalid regex {expr:?}: {}", first_line(&e.to_string()))),
            None => Ok(ValueMatch::Exact(text.as_bytes().into())),
        }
    }

    /// Whether `value` matches.
    #[inline]
    pub fn matches(&self, value: &[u8]) -> bool {
        match self {
            ValueMatch::Exact(want) => **want == *value,
            ValueMatch::Regex(re) => re.is_match(value),
        }
    }
}

impl fmt::Display for ValueMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueMatch::Exact(v) => write!(f, "{:?}", String::from_utf8_lossy(v)),
            ValueMatch::Regex(re) => write!(f, "~{:?}", re.as_str()),
        }
    }
}

/// The last line of a regex compile error is the reason; the rest repeats
/// the pattern with a caret under it.
pub fn first_line(message: &str) -> String {
    message
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(message)
        .trim()
        .trim_start_matches("error: ")
        .to_owned()
}

/// Appends the canonical form of an origin-form `target` to `out`:
/// percent-encoded unreserved characters decoded (RFC 3986 6.2.2.2),
/// every spelling of a separator (`/`, `\`, `%2F`, `%5C`) read as `/`,
/// dot-segments removed (5.2.4, with `..;params` as Tomcat reads it),
/// empty segments merged (as nginx's `merge_slashes`), and the path ended
/// at `?` or `#`: every spelling of a path an origin may resolve alike
/// (`/ads`, `/%61ds`, `/x/../ads`, `/./ads`, `/%2e%2e/ads`, `//ads`,
/// `/x\..\ads`, `/x/..;/ads`, `/ads#/../x`) reads alike, so a rule cannot
/// be stepped around. The query is decoded only, and kept with its `?`.
/// Returns the length of the path part appended.
pub fn canonical_target(out: &mut Vec<u8>, target: &[u8]) -> usize {
    let path_end = memchr::memchr2(b'?', b'#', target).unwrap_or(target.len());
    let (path, rest) = target.split_at(path_end);
    let query = match rest.first() {
        Some(b'?') => &rest[..memchr::memchr(b'#', rest).unwrap_or(rest.len())],
        _ => &b""[..],
    };
    let base = out.len();
    // First the path decoded, each separator as '/'; then its segments
    // resolved after it; then moved down: no allocation.
    push_path_decoded(out, path);
    let mid = out.len();
    let mut ends_in_dot = false;
    let mut ends_in_slash = false;
    let mut i = base;
    // `<=`: a path that ends in '/' has an empty last segment.
    while i <= mid {
        let end = memchr::memchr(b'/', &out[i..mid]).map_or(mid, |p| i + p);
        let start = i;
        i = end + 1;
        if end == start {
            ends_in_slash = out.len() > mid;
            continue;
        }
        ends_in_slash = false;
        // A dot segment, also with parameters (`..;x`).
        let name_end = memchr::memchr(b';', &out[start..end]).map_or(end, |p| start + p);
        match &out[start..name_end] {
            b"." => ends_in_dot = true,
            b".." => {
                let parent = out[mid..].iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(mid + parent);
                ends_in_dot = true;
            }
            _ => {
                ends_in_dot = false;
                out.push(b'/');
                out.extend_from_within(start..end);
            }
        }
    }
    if ends_in_dot || ends_in_slash || out.len() == mid {
        out.push(b'/');
    }
    let path_len = out.len() - mid;
    out.copy_within(mid.., base);
    out.truncate(base + path_len);
    push_decoded(out, query);
    path_len
}

/// A route's or rule's path prefix in canonical form, keeping a final
/// '/': it is compared with canonical paths (`/%7Euser` is `/~user`).
pub fn canonical_prefix(prefix: &str) -> String {
    let mut out = Vec::new();
    let len = canonical_target(&mut out, prefix.as_bytes());
    out.truncate(len);
    // Canonical forms of text are text: only unreserved bytes are decoded.
    String::from_utf8(out).unwrap_or_else(|_| prefix.to_owned())
}

/// Whether `name` is a subdomain of `suffix` (one label or more, ASCII
/// case ignored; `*.example.com` patterns), as bytes: a peer's name may
/// not be ASCII.
pub fn is_subdomain(name: &[u8], suffix: &[u8]) -> bool {
    name.len() > suffix.len() + 1
        && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
        && name[name.len() - suffix.len() - 1] == b'.'
}

/// Appends a path with its unreserved bytes decoded and every separator
/// spelling (`\`, `%2F`, `%5C`) as `/`.
fn push_path_decoded(out: &mut Vec<u8>, path: &[u8]) {
    push_decoded_as(out, path, true);
}

/// Appends `text` with percent-encoded unreserved characters decoded.
fn push_decoded(out: &mut Vec<u8>, text: &[u8]) {
    push_decoded_as(out, text, false);
}

/// Appends `text` with percent-encoded unreserved characters decoded and,
/// for a path (`separators`), `\`, `%2F` and `%5C` as `/`.
fn push_decoded_as(out: &mut Vec<u8>, text: &[u8], separators: bool) {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut i = 0;
    while i < text.len() {
        let b = text[i];
        if b == b'%' && i + 2 < text.len() {
            if let (Some(h), Some(l)) = (hex(text[i + 1]), hex(text[i + 2])) {
                let c = (h * 16 + l) as u8;
                let decoded = if c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~') {
                    Some(c)
                } else {
                    (separators && matches!(c, b'/' | b'\\')).then_some(b'/')
                };
                if let Some(d) = decoded {
                    out.push(d);
                    i += 3;
                    continue;
                }
            }
        }
        out.push(if separators && b == b'\\' { b'/' } else { b });
        i += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canonical(target: &str) -> String {
        let mut out = Vec::new();
        let n = canonical_target(&mut out, target.as_bytes());
        let text = String::from_utf8(out).unwrap();
        assert!(text[..n].starts_with('/') && !text[..n].contains('?'), "{text}");
        text
    }

    #[test]
    fn every_spelling_of_a_path_reads_alike() {
        for spelling in [
            "/admin",
            "/%61dmin",
            "/x/../admin",
            "/./admin",
            "//admin",
            "/%2e%2e/admin",
            "/x/%2E%2E/admin",
            "/x\\..\\admin",
            "/x%2F..%2Fadmin",
            "/x%5c..%5cadmin",
            "/x/..;/admin",
            "/x/.;y/../admin",
            "/admin#/../x",
            "/admin#frag",
        ] {
            assert_eq!(canonical(spelling), "/admin", "{spelling}");
        }
        assert_eq!(canonical("/a//b/"), "/a/b/");
        assert_eq!(canonical("/a/b/.."), "/a/");
        assert_eq!(canonical("/"), "/");
        assert_eq!(canonical("/a%2Fb"), "/a/b", "an encoded separator is a separator");
        assert_eq!(
            canonical("/a%3Fb?c"),
            "/a%3Fb?c",
            "another reserved byte stays encoded"
        );
        assert_eq!(
            canonical("/a;v=1/b"),
            "/a;v=1/b",
            "parameters stay on other segments"
        );
        assert_eq!(
            canonical("/p?x=1#f"),
            "/p?x=1",
            "a fragment is no part of the query"
        );
        assert_eq!(canonical("/p?x=%61//b"), "/p?x=a//b", "the query is decoded only");
    }

    #[test]
    fn values_match_exactly_or_by_regex() {
        let exact = ValueMatch::parse("curl/8").unwrap();
        assert!(exact.matches(b"curl/8") && !exact.matches(b"curl/8.1"));
        let re = ValueMatch::parse("~(?i)sqlmap|nikto").unwrap();
        assert!(re.matches(b"Mozilla SQLMap/1.0") && !re.matches(b"curl"));
        let error = ValueMatch::parse("~(").unwrap_err();
        assert!(
            error.starts_with("invalid regex \"(\": ") && !error.contains('\n'),
            "{error}"
        );
    }
}
