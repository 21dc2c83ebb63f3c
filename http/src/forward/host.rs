//! Destinations of forward-proxied requests: parsing an authority into a
//! normalised host and port, refusing anything a resolver or a server could
//! read differently from the ACL.
//!
//! - Names are lowercased, lose one trailing dot, and are converted to
//!   ASCII (IDNA) when they are not ASCII already.
//! - Authorities with userinfo (`user@host`) or percent-encoding are refused.
//! - IP literals are accepted in canonical form only: a name whose last
//!   label is a number must be a dotted quad of four decimal parts without
//!   leading zeros; `2130706433`, `0177.0.0.1`, `0x7f.1` and `127.1` are
//!   refused. IPv4-mapped IPv6 (`[::ffff:127.0.0.1]`) becomes the IPv4 address.

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

/// The longest host name (RFC 1035, without the trailing dot).
const MAX_NAME: usize = 253;

/// A destination host: a normalised name or an IP address.
///
/// The name is stored inline (254 bytes) on purpose: a destination lives
/// for one request on the stack, and inline storage spares an allocation
/// per request.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, Eq)]
pub enum Host {
    /// A lowercase ASCII name, no trailing dot.
    Name(HostName),
    /// An IP address (IPv4-mapped IPv6 already turned into IPv4).
    Ip(IpAddr),
}

impl fmt::Debug for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n.as_str()),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            Host::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

/// A normalised host name, stored inline (no allocation per request).
#[derive(Clone, PartialEq, Eq)]
pub struct HostName {
    bytes: [u8; MAX_NAME],
    len: u8,
}

impl HostName {
    /// The name.
    pub fn as_str(&self) -> &str {
        // Only ASCII is ever stored (see `from_ascii`).
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or_default()
    }

    /// A name from ASCII letters, digits, `-`, `_` and `.` in valid labels.
    fn from_ascii(name: &[u8]) -> Option<Self> {
        if name.is_empty() || name.len() > MAX_NAME {
            return None;
        }
        let mut bytes = [0u8; MAX_NAME];
        for (i, &b) in name.iter().enumerate() {
            if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
                return None;
            }
            bytes[i] = b.to_ascii_lowercase();
        }
        let labels_ok = name.split(|&b| b == b'.').all(|l| !l.is_empty() && l.len() <= 63);
        labels_ok.then_some(Self {
            bytes,
            len: name.len() as u8,
        })
    }
}

/// A parsed destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Where to.
    pub host: Host,
    /// Which port.
    pub port: u16,
}

/// Why an authority was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// `user@host`.
    Userinfo,
    /// `%xx` anywhere in the authority.
    PercentEncoded,
    /// A missing, empty, zero or non-numeric port.
    BadPort,
    /// A number-like host that is not a canonical dotted quad.
    NonCanonicalIp,
    /// Anything else that is not a valid host.
    BadHost,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostError::Userinfo => "userinfo is not allowed in the authority",
            HostError::PercentEncoded => "percent-encoding is not allowed in the host",
            HostError::BadPort => "invalid port",
            HostError::NonCanonicalIp => "IP address not in canonical dotted-quad form",
            HostError::BadHost => "invalid host",
        })
    }
}

/// Parses `authority` (`host`, `host:port`, `[v6]:port`); `default_port`
/// is used when there is no port, and `None` makes the port mandatory.
pub fn parse_authority(authority: &[u8], default_port: Option<u16>) -> Result<Destination, HostError> {
    if authority.contains(&b'@') {
        return Err(HostError::Userinfo);
    }
    if authority.contains(&b'%') {
        return Err(HostError::PercentEncoded);
    }
    let (host, port) = if authority.first() == Some(&b'[') {
        let close = authority
            .iter()
            .position(|&b| b == b']')
            .ok_or(HostError::BadHost)?;
        let rest = &authority[close + 1..];
        let port = match rest {
            [] => None,
            [b':', digits @ ..] => Some(digits),
            _ => return Err(HostError::BadHost),
        };
        (&authority[..=close], port)
    } else {
        match memchr::memrchr(b':', authority) {
            Some(colon) => (&authority[..colon], Some(&authority[colon + 1..])),
            None => (authority, None),
        }
    };
    let port = match port {
        Some(digits) => parse_port(digits).ok_or(HostError::BadPort)?,
        None => default_port.ok_or(HostError::BadPort)?,
    };
    Ok(Destination {
        host: parse_host(host)?,
        port,
    })
}

fn parse_port(digits: &[u8]) -> Option<u16> {
    if digits.is_empty() || digits.len() > 5 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: u32 = digits.iter().fold(0, |n, &d| n * 10 + u32::from(d - b'0'));
    u16::try_from(n).ok().filter(|&p| p != 0)
}

/// Parses a host (no port): an IP literal or a name.
pub fn parse_host(host: &[u8]) -> Result<Host, HostError> {
    if let [b'[', inner @ .., b']'] = host {
        let text = std::str::from_utf8(inner).map_err(|_| HostError::BadHost)?;
        let ip: Ipv6Addr = text.parse().map_err(|_| HostError::BadHost)?;
        return Ok(Host::Ip(IpAddr::V6(ip).to_canonical()));
    }
    let host = host.strip_suffix(b".").unwrap_or(host);
    if host.is_empty() {
        return Err(HostError::BadHost);
    }
    let last_label = host.rsplit(|&b| b == b'.').next().unwrap_or(host);
    if ends_in_a_number(last_label) {
        return canonical_ipv4(host)
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .ok_or(HostError::NonCanonicalIp);
    }
    if host.is_ascii() {
        return HostName::from_ascii(host)
            .map(Host::Name)
            .ok_or(HostError::BadHost);
    }
    let text = std::str::from_utf8(host).map_err(|_| HostError::BadHost)?;
    let ascii = idna::domain_to_ascii_strict(text).map_err(|_| HostError::BadHost)?;
    let ascii = ascii.strip_suffix('.').unwrap_or(&ascii);
    if ends_in_a_number(ascii.rsplit('.').next().unwrap_or(ascii).as_bytes()) {
        return Err(HostError::NonCanonicalIp);
    }
    HostName::from_ascii(ascii.as_bytes())
        .map(Host::Name)
        .ok_or(HostError::BadHost)
}

/// The WHATWG "ends in a number" test: a last label of decimal digits, or a
/// hex number (`0x...`), makes resolvers read the whole host as IPv4.
fn ends_in_a_number(label: &[u8]) -> bool {
    if !label.is_empty() && label.iter().all(u8::is_ascii_digit) {
        return true;
    }
    matches!(label, [b'0', b'x' | b'X', rest @ ..] if rest.iter().all(u8::is_ascii_hexdigit))
}

/// Exactly four decimal parts, 0 to 255, no leading zeros.
fn canonical_ipv4(host: &[u8]) -> Option<Ipv4Addr> {
    let mut octets = [0u8; 4];
    let mut parts = host.split(|&b| b == b'.');
    for octet in &mut octets {
        let part = parts.next()?;
        if part.is_empty() || part.len() > 3 || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        if part.len() > 1 && part[0] == b'0' {
            return None;
        }
        let value: u32 = part.iter().fold(0, |n, &d| n * 10 + u32::from(d - b'0'));
        *octet = u8::try_from(value).ok()?;
    }
    parts.next().is_none().then_some(Ipv4Addr::from(octets))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(text: &str) -> Result<Host, HostError> {
        parse_authority(text.as_bytes(), Some(80)).map(|d| d.host)
    }

    fn name(text: &str) -> String {
        match host(text) {
            Ok(Host::Name(n)) => n.as_str().to_owned(),
            other => panic!("{text}: {other:?}"),
        }
    }

    #[test]
    fn names_are_lowercased_without_trailing_dot_and_idna_encoded() {
        assert_eq!(name("Example.COM"), "example.com");
        assert_eq!(name("example.com."), "example.com");
        assert_eq!(name("Bücher.example"), "xn--bcher-kva.example");
        assert_eq!(name("_srv.example"), "_srv.example");
        assert_eq!(host("exa mple.com"), Err(HostError::BadHost));
        assert_eq!(host("a..b"), Err(HostError::BadHost));
        assert_eq!(host(&format!("{}.com", "a".repeat(64))), Err(HostError::BadHost));
    }

    #[test]
    fn ports() {
        let d = parse_authority(b"a.test:8443", None).unwrap();
        assert_eq!(d.port, 8443);
        assert_eq!(parse_authority(b"a.test", Some(80)).unwrap().port, 80);
        assert_eq!(parse_authority(b"a.test", None), Err(HostError::BadPort));
        for bad in ["a.test:", "a.test:0", "a.test:65536", "a.test:+1", "a.test:8a"] {
            assert_eq!(
                parse_authority(bad.as_bytes(), Some(80)),
                Err(HostError::BadPort),
                "{bad}"
            );
        }
    }

    #[test]
    fn userinfo_and_percent_encoding_are_refused() {
        assert_eq!(host("user@evil.test"), Err(HostError::Userinfo));
        assert_eq!(host("user:pw@evil.test:80"), Err(HostError::Userinfo));
        assert_eq!(host("evil%2etest"), Err(HostError::PercentEncoded));
        assert_eq!(host("[::1%25eth0]"), Err(HostError::PercentEncoded));
    }

    #[test]
    fn only_canonical_ipv4_literals() {
        assert_eq!(host("127.0.0.1"), Ok(Host::Ip(IpAddr::from([127, 0, 0, 1]))));
        assert_eq!(host("10.20.30.40."), Ok(Host::Ip(IpAddr::from([10, 20, 30, 40]))));
        for trick in [
            "2130706433",
            "0177.0.0.1",
            "0x7f.1",
            "0x7f000001",
            "127.1",
            "127.0.1",
            "127.0.0.01",
            "127.0.0.256",
            "1.2.3.4.5",
            "example.123",
            "0X7F.0.0.1",
        ] {
            assert_eq!(host(trick), Err(HostError::NonCanonicalIp), "{trick}");
        }
        // Hex-looking labels that are not last are names.
        assert_eq!(name("0x7f.example"), "0x7f.example");
    }

    #[test]
    fn ipv6_literals_and_mapped_ipv4() {
        assert_eq!(host("[::1]:8080"), Ok(Host::Ip("::1".parse().unwrap())));
        assert_eq!(
            host("[::ffff:127.0.0.1]"),
            Ok(Host::Ip(IpAddr::from([127, 0, 0, 1])))
        );
        assert_eq!(
            host("[::ffff:7f00:1]"),
            Ok(Host::Ip(IpAddr::from([127, 0, 0, 1])))
        );
        assert_eq!(host("[not-an-ip]"), Err(HostError::BadHost));
        assert_eq!(host("[::1]x"), Err(HostError::BadHost));
    }
}
