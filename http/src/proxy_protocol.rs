//! The PROXY protocol (HAProxy's, versions 1 and 2): the header an L4
//! balancer puts before a connection's first byte to say whose connection
//! it is, read on listeners that accept it from the sources allowed to
//! send it; and the version 2 header ringway sends to upstreams that want
//! one.
//!
//! The header is read without taking a byte past it: the socket is peeked,
//! the header's length found, and exactly that many bytes read, so what
//! follows (an HTTP request, a TLS ClientHello) is left for the engine.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    os::fd::AsRawFd,
    time::Duration,
};

use monoio::{io::AsyncReadRent, net::TcpStream};
use ringway_core::{Error, ErrorKind, Result, Side};

/// Version 2's signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// The longest version 1 line, CRLF included.
const V1_MAX: usize = 107;

/// The most a version 2 header may take here (addresses and TLVs); longer
/// ones are refused rather than read.
const V2_MAX: usize = 16 + 512;

/// What a header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// The client's address and port, when the header carries one (not
    /// for `UNKNOWN` or `LOCAL`: the connection is the balancer's own).
    pub source: Option<SocketAddr>,
    /// The address the client connected to, likewise.
    pub destination: Option<SocketAddr>,
}

fn invalid(why: &'static str) -> Error {
    Error::new(ErrorKind::InvalidHttp, Side::Downstream, why)
}

/// Parses a header at the start of `buf`: `Ok(None)` while more bytes are
/// needed, else the header and its length.
pub fn parse(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>> {
    if buf.len() < V2_SIGNATURE.len() {
        let is_prefix = V2_SIGNATURE.starts_with(buf) || b"PROXY ".starts_with(&buf[..buf.len().min(6)]);
        return if is_prefix {
            Ok(None)
        } else {
            Err(invalid(
                "the connection does not start with a PROXY protocol header",
            ))
        };
    }
    if buf.starts_with(V2_SIGNATURE) {
        parse_v2(buf)
    } else if buf.starts_with(b"PROXY ") {
        parse_v1(buf)
    } else {
        Err(invalid(
            "the connection does not start with a PROXY protocol header",
        ))
    }
}

fn parse_v1(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>> {
    let Some(end) = memchr::memmem::find(&buf[..buf.len().min(V1_MAX)], b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(invalid("a PROXY v1 line longer than 107 bytes"))
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[..end]).map_err(|_| invalid("a PROXY v1 line that is not ASCII"))?;
    let mut parts = line.split(' ');
    let _proxy = parts.next();
    let header = match parts.next() {
        Some("UNKNOWN") => ProxyHeader {
            source: None,
            destination: None,
        },
        Some(family @ ("TCP4" | "TCP6")) => {
            let fields: Vec<&str> = parts.collect();
            let [src, dst, sport, dport] = fields[..] else {
                return Err(invalid("a PROXY v1 line without its four addresses and ports"));
            };
            let ip = |text: &str| -> Result<IpAddr> {
                let ip = if family == "TCP4" {
                    text.parse::<Ipv4Addr>().map(IpAddr::V4)
                } else {
                    text.parse::<Ipv6Addr>().map(IpAddr::V6)
                };
                ip.map_err(|_| invalid("a PROXY v1 address that does not parse"))
            };
            let port = |text: &str| -> Result<u16> {
                // No sign, no leading zero: what the specification allows.
                if text.is_empty() || (text.len() > 1 && text.starts_with('0')) {
                    return Err(invalid("a PROXY v1 port that does not parse"));
                }
                text.parse()
                    .map_err(|_| invalid("a PROXY v1 port that does not parse"))
            };
            ProxyHeader {
                source: Some(SocketAddr::new(ip(src)?, port(sport)?)),
                destination: Some(SocketAddr::new(ip(dst)?, port(dport)?)),
            }
        }
        _ => return Err(invalid("a PROXY v1 line with an unknown protocol")),
    };
    Ok(Some((header, end + 2)))
}

fn parse_v2(buf: &[u8]) -> Result<Option<(ProxyHeader, usize)>> {
    if buf.len() < 16 {
        return Ok(None);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(invalid("a PROXY v2 header of another version"));
    }
    let length = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    let total = 16 + length;
    if total > V2_MAX {
        return Err(invalid("a PROXY v2 header longer than ringway reads"));
    }
    if buf.len() < total {
        return Ok(None);
    }
    let body = &buf[16..total];
    let local = ProxyHeader {
        source: None,
        destination: None,
    };
    let header = match (version_command & 0x0f, buf[13]) {
        // LOCAL: the balancer's own connection (a health check).
        (0x0, _) => local,
        (0x1, 0x11) => {
            let a = body
                .get(..12)
                .ok_or_else(|| invalid("a PROXY v2 header too short for its IPv4 addresses"))?;
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            ProxyHeader {
                source: Some(SocketAddr::new(ip(0), port(8))),
                destination: Some(SocketAddr::new(ip(4), port(10))),
            }
        }
        (0x1, 0x21) => {
            let a = body
                .get(..36)
                .ok_or_else(|| invalid("a PROXY v2 header too short for its IPv6 addresses"))?;
            let ip = |o: usize| {
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&a[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(octets))
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            ProxyHeader {
                source: Some(SocketAddr::new(ip(0), port(32))),
                destination: Some(SocketAddr::new(ip(16), port(34))),
            }
        }
        // UNSPEC, UDP or Unix sockets: nothing ringway can use; the
        // connection counts as the balancer's.
        (0x1, _) => local,
        _ => return Err(invalid("a PROXY v2 header with an unknown command")),
    };
    Ok(Some((header, total)))
}

/// Appends a version 2 `PROXY` header for a TCP connection from `source`
/// to `destination` (both of one family; else an IPv4-mapped pair).
pub fn encode_v2(source: SocketAddr, destination: SocketAddr, out: &mut Vec<u8>) {
    out.extend_from_slice(V2_SIGNATURE);
    out.push(0x21);
    match (source.ip().to_canonical(), destination.ip().to_canonical()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
}

/// Reads the header at the start of `stream` within `timeout`, taking no
/// byte past it.
pub async fn read_header(stream: &mut TcpStream, timeout: Duration) -> Result<ProxyHeader> {
    let read = async {
        let mut peeked = [0u8; V2_MAX];
        loop {
            stream.readable(false).await.map_err(|e| {
                Error::new(ErrorKind::Io, Side::Downstream, "waiting for a PROXY header").with_cause(e)
            })?;
            let Some(n) = peek(stream.as_raw_fd(), &mut peeked)? else {
                continue;
            };
            if n == 0 {
                return Err(Error::new(
                    ErrorKind::ConnectionClosed,
                    Side::Downstream,
                    "closed before its PROXY header",
                ));
            }
            if let Some((header, length)) = parse(&peeked[..n])? {
                // Exactly the header's bytes: what follows stays queued.
                let mut taken = 0;
                while taken < length {
                    let (got, _) = stream.read(Vec::with_capacity(length - taken)).await;
                    match got {
                        Ok(0) | Err(_) => {
                            return Err(Error::new(
                                ErrorKind::ConnectionClosed,
                                Side::Downstream,
                                "closed in the middle of its PROXY header",
                            ))
                        }
                        Ok(got) => taken += got,
                    }
                }
                return Ok(header);
            }
            if n == peeked.len() {
                return Err(invalid("a PROXY header longer than ringway reads"));
            }
            // Part of the header: wait for the rest.
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    match monoio::time::timeout(timeout, read).await {
        Ok(result) => result,
        Err(_) => Err(Error::new(
            ErrorKind::ReadTimeout,
            Side::Downstream,
            "no PROXY header in time",
        )),
    }
}

/// Copies what the socket holds into `buf` without taking it; `None` when
/// it holds nothing yet.
fn peek(fd: std::os::fd::RawFd, buf: &mut [u8]) -> Result<Option<usize>> {
    #[allow(unsafe_code)]
    // SAFETY: `buf` is valid for writes of its length for the call; `fd`
    // is the caller's open socket.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        return Ok(None);
    }
    Err(Error::new(ErrorKind::Io, Side::Downstream, "peeking at a PROXY header").with_cause(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn version_1_lines_give_the_client_and_leave_what_follows() {
        let buf = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\nGET / HTTP/1.1\r\n";
        let (header, length) = parse(buf).unwrap().unwrap();
        assert_eq!(header.source, Some(addr("192.0.2.7:56324")));
        assert_eq!(header.destination, Some(addr("198.51.100.1:443")));
        assert_eq!(&buf[length..], b"GET / HTTP/1.1\r\n");
        let (header, _) = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(header.source, Some(addr("[2001:db8::1]:1")));
        let (header, length) = parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n").unwrap().unwrap();
        assert_eq!((header.source, length), (None, 35));
    }

    #[test]
    fn partial_headers_wait_and_bad_ones_are_refused() {
        assert_eq!(parse(b"PRO").unwrap(), None);
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4").unwrap(), None);
        assert_eq!(parse(&V2_SIGNATURE[..5]).unwrap(), None);
        for bad in [
            &b"GET / HTTP/1.1\r\n\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 1\r\n",
            b"PROXY TCP4 ::1 5.6.7.8 1 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 1\r\n",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(parse(&[b'P'; 12][..]).is_err());
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 120]].concat();
        assert!(parse(&long).is_err(), "longer than 107 bytes without a CRLF");
    }

    #[test]
    fn version_2_round_trips_for_both_families_and_local_is_the_balancer() {
        for (src, dst) in [
            ("203.0.113.9:40000", "192.0.2.1:443"),
            ("[2001:db8::9]:40000", "[2001:db8::1]:443"),
        ] {
            let mut out = Vec::new();
            encode_v2(addr(src), addr(dst), &mut out);
            out.extend_from_slice(b"\x16\x03\x01");
            let (header, length) = parse(&out).unwrap().unwrap();
            assert_eq!(
                (header.source, header.destination),
                (Some(addr(src)), Some(addr(dst)))
            );
            assert_eq!(&out[length..], b"\x16\x03\x01", "the ClientHello is left");
            assert_eq!(parse(&out[..length - 1]).unwrap(), None, "one byte short waits");
        }
        let mut local = V2_SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(
            parse(&local).unwrap(),
            Some((
                ProxyHeader {
                    source: None,
                    destination: None
                },
                16
            ))
        );
        let mut bad = V2_SIGNATURE.to_vec();
        bad.extend_from_slice(&[0x31, 0x11, 0x00, 0x0c]);
        assert!(parse(&bad).is_err(), "version 3");
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(parse(&huge).is_err(), "too long to read");
        // A TLV after the addresses is skipped with them.
        let mut tlv = Vec::new();
        encode_v2(addr("10.0.0.1:1"), addr("10.0.0.2:2"), &mut tlv);
        tlv[15] += 4;
        tlv.extend_from_slice(&[0x04, 0x00, 0x01, 0x00, b'G']);
        let (header, length) = parse(&tlv).unwrap().unwrap();
        assert_eq!(
            (header.source, &tlv[length..]),
            (Some(addr("10.0.0.1:1")), &b"G"[..])
        );
    }
}
