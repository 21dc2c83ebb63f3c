//! Access control for the forward proxy: compiled rule sets and their
//! evaluation.
//!
//! An [`Acl`] is compiled once at configuration load. Evaluation order:
//! CONNECT to a port outside `connect_ports` is denied first; then the rules
//! in order, the first whose matchers all match deciding (each matcher is a
//! list, any element of which may match); then `default`. A rule that needs
//! the destination's addresses (`dst_ip` on a name) makes [`Acl::decide`]
//! ask for them, so a name is resolved only when a rule needs it or the
//! request is allowed. After an allow, `block_private` filters the resolved
//! addresses: the addresses that remain are the ones connected to.
//! Matching allocates nothing.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
    sync::Arc,
};

pub use crate::matching::IpNet;
use crate::matching::{canonical_target, ValueMatch};

use super::{
    domains::DomainSet,
    host::{Destination, Host},
};

/// Whether a destination address is one a forward proxy must not reach by
/// default: loopback, private (RFC 1918), link-local (cloud metadata at
/// 169.254.169.254 included), CGNAT, "this network", reserved, benchmarking,
/// unique-local and link-local IPv6, unspecified, multicast and broadcast.
/// IPv6 forms that embed an IPv4 address (mapped, compatible, translated,
/// NAT64, 6to4) are judged by that address; Teredo and local-use NAT64,
/// whose targets cannot be judged, are refused.
pub fn is_private(ip: IpAddr) -> bool {
    match ip.to_canonical() {
        IpAddr::V4(v4) => is_private_v4(v4),
        IpAddr::V6(v6) => {
            let segments = v6.segments();
            let o = v6.octets();
            let low_v4 = Ipv4Addr::new(o[12], o[13], o[14], o[15]);
            // 64:ff9b::/96 (NAT64), ::/96 (IPv4-compatible, deprecated) and
            // ::ffff:0:0:0/96 (IPv4-translated) end in an IPv4 address.
            if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                || (segments[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified())
                || segments[..6] == [0, 0, 0, 0, 0xffff, 0]
            {
                return is_private_v4(low_v4);
            }
            // 2002::/16 (6to4) carries the IPv4 address in bits 16 to 48.
            if segments[0] == 0x2002 {
                return is_private_v4(Ipv4Addr::new(o[2], o[3], o[4], o[5]));
            }
            // 2001::/32 (Teredo), 64:ff9b:1::/48 (local-use NAT64) and
            // 100::/64 (discard-only): where they lead cannot be judged.
            if (segments[0] == 0x2001 && segments[1] == 0)
                || segments[..3] == [0x64, 0xff9b, 1]
                || segments[..4] == [0x100, 0, 0, 0]
            {
                return true;
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (segments[0] & 0xfe00) == 0xfc00 // unique local
                || (segments[0] & 0xffc0) == 0xfe80 // link-local
                || (segments[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || v6 == Ipv6Addr::from([0u8; 16])
        }
    }
}

fn is_private_v4(v4: Ipv4Addr) -> bool {
    let [a, b, ..] = v4.octets();
    v4.is_loopback()
        || v4.is_private()
        || v4.is_link_local()
        || v4.is_unspecified()
        || v4.is_multicast()
        || v4.is_broadcast()
        || a == 0 // "this network"
        || (a == 100 && (b & 0xc0) == 64) // CGNAT 100.64.0.0/10
        || (a == 198 && (b & 0xfe) == 18) // benchmarking 198.18.0.0/15
        || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
        || a >= 240 // reserved
}

/// A set of ports and port ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortSet(Vec<(u16, u16)>);

impl PortSet {
    /// The set of `ranges` (inclusive).
    pub fn new(ranges: Vec<(u16, u16)>) -> Self {
        Self(ranges)
    }

    /// Whether `port` is in the set.
    pub fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(lo, hi)| (lo..=hi).contains(&port))
    }

    /// Parses `"443"` or `"1025-65535"`.
    pub fn parse_range(text: &str) -> Result<(u16, u16), String> {
        let bad = || format!("invalid port or range {text:?}: expected like 443 or \"1025-65535\"");
        let (lo, hi) = match text.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (text.trim(), text.trim()),
        };
        let lo: u16 = lo.parse().map_err(|_| bad())?;
        let hi: u16 = hi.parse().map_err(|_| bad())?;
        if lo == 0 || lo > hi {
            return Err(bad());
        }
        Ok((lo, hi))
    }
}

/// Days and a time of day, in local time: `"Mon-Fri 08:00-18:00"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeWindow {
    /// Bit 0 is Monday.
    days: u8,
    /// Minutes after midnight; `start > end` wraps past midnight.
    start: u16,
    end: u16,
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl TimeWindow {
    /// Whether the window holds on `weekday` (0 = Monday) at `minute` of the day.
    pub fn contains(&self, weekday: u8, minute: u16) -> bool {
        if self.days & (1 << weekday) == 0 {
            return false;
        }
        if self.start <= self.end {
            (self.start..self.end).contains(&minute)
        } else {
            minute >= self.start || minute < self.end
        }
    }

    /// Whether the window holds now, in local time.
    pub fn contains_now(&self) -> bool {
        use chrono::{Datelike, Timelike};
        let now = chrono::Local::now();
        let minute = (now.hour() * 60 + now.minute()) as u16;
        self.contains(now.weekday().num_days_from_monday() as u8, minute)
    }
}

impl FromStr for TimeWindow {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("invalid time {s:?}: expected like \"Mon-Fri 08:00-18:00\"");
        let mut days = 0u8;
        let mut start = 0u16;
        let mut end = 24 * 60;
        for word in s.split_whitespace() {
            if word.contains(':') {
                let (a, b) = word.split_once('-').ok_or_else(bad)?;
                start = parse_clock(a).ok_or_else(bad)?;
                end = parse_clock(b).ok_or_else(bad)?;
            } else {
                for part in word.split(',') {
                    let day = |d: &str| DAY_NAMES.iter().position(|n| d.eq_ignore_ascii_case(n));
                    match part.split_once('-') {
                        Some((a, b)) => {
                            let (a, b) = (day(a).ok_or_else(bad)?, day(b).ok_or_else(bad)?);
                            let mut d = a;
                            loop {
                                days |= 1 << d;
                                if d == b {
                                    break;
                                }
                                d = (d + 1) % 7;
                            }
                        }
                        None => days |= 1 << day(part).ok_or_else(bad)?,
                    }
                }
            }
        }
        if days == 0 {
            days = 0x7f;
        }
        Ok(TimeWindow { days, start, end })
    }
}

fn parse_clock(text: &str) -> Option<u16> {
    let (h, m) = text.split_once(':')?;
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60 || (h == 24 && m == 0)).then_some(h * 60 + m)
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Let the request through.
    Allow,
    /// Refuse it with 403.
    Deny,
}

/// One condition of a rule; it holds when any of its elements matches.
#[derive(Debug, Clone)]
pub enum Matcher {
    /// The client's address is in one of the networks.
    Src(Vec<IpNet>),
    /// The destination name is in the set (exact names and subtrees).
    DstDomain(Arc<DomainSet>),
    /// The destination host matches one of the expressions.
    DstRegex(regex::RegexSet),
    /// The destination's IP literal or resolved addresses are in a network.
    DstIp(Vec<IpNet>),
    /// The destination port is in the set.
    DstPort(PortSet),
    /// The method is one of these (case-sensitive, as HTTP methods are).
    Method(Vec<String>),
    /// The URL of a plain HTTP request matches (never a CONNECT), in a
    /// canonical form: `http://` + normalised host + `:port` unless 80 +
    /// the path and query with unreserved characters percent-decoded.
    UrlRegex(regex::bytes::RegexSet),
    /// The authenticated user is one of these.
    User(Vec<String>),
    /// The authenticated user is in one of these groups.
    Group(Vec<String>),
    /// Local time is within one of the windows.
    Time(Vec<TimeWindow>),
    /// A request header has a matching value (any of its lines): the
    /// matcher of request rules, e.g. `User-Agent` by `~regex`.
    Header(Box<str>, ValueMatch),
}

/// A rule: an action when all its matchers hold.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Optional name, shown on denials.
    pub name: Option<String>,
    /// What to do.
    pub action: Action,
    /// Conditions; all must hold.
    pub matchers: Vec<Matcher>,
}

/// A compiled access-control list.
#[derive(Debug, Clone)]
pub struct Acl {
    /// Name (the `[acl.NAME]` key, or "built-in").
    pub name: String,
    /// Action when no rule matches.
    pub default: Action,
    /// Deny private destinations (see [`is_private`]).
    pub block_private: bool,
    /// Networks exempt from `block_private`.
    pub private_allow: Vec<IpNet>,
    /// Ports CONNECT may reach.
    pub connect_ports: PortSet,
    /// Rules, first match wins.
    pub rules: Vec<Rule>,
}

impl Acl {
    /// The built-in safe policy: clients from loopback only, private
    /// destinations blocked, CONNECT to 443 only, everything else allowed.
    pub fn builtin() -> Self {
        let loopback = ["127.0.0.0/8", "::1/128"]
            .iter()
            .filter_map(|n| n.parse().ok())
            .collect();
        Acl {
            name: "built-in".into(),
            default: Action::Deny,
            block_private: true,
            private_allow: Vec::new(),
            connect_ports: PortSet::new(vec![(443, 443)]),
            rules: vec![Rule {
                name: Some("loopback clients".into()),
                action: Action::Allow,
                matchers: vec![Matcher::Src(loopback)],
            }],
        }
    }
}

/// What the ACL is asked about.
#[derive(Debug, Clone, Copy)]
pub struct AclRequest<'a> {
    /// The client's address.
    pub src: IpAddr,
    /// The destination.
    pub dest: &'a Destination,
    /// The request method.
    pub method: &'a [u8],
    /// Whether this is a CONNECT.
    pub connect: bool,
    /// The path and query of a plain HTTP request (origin-form).
    pub path: Option<&'a [u8]>,
    /// The authenticated user.
    pub user: Option<&'a str>,
    /// The user's groups.
    pub groups: &'a [String],
    /// The request's head, for header matchers (`None`: no header
    /// matches).
    pub head: Option<&'a crate::head::RequestHead>,
}

/// Why a request was denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// CONNECT to a port outside `connect_ports`.
    ConnectPort,
    /// A deny rule matched (its index).
    Rule(usize),
    /// No rule matched and the default is deny.
    Default,
    /// Every address of the destination is private.
    Private(IpAddr),
}

/// The outcome of [`Acl::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed, by a rule (its index) or by the default.
    Allow(Option<usize>),
    /// Denied.
    Deny(DenyReason),
    /// A rule needs the destination's addresses: resolve it and ask again.
    NeedAddresses,
}

impl Acl {
    /// Decides `req`; `addrs` are the destination's resolved addresses, if
    /// known (for `dst_ip` on names).
    pub fn decide(&self, req: &AclRequest<'_>, addrs: Option<&[IpAddr]>) -> Verdict {
        if req.connect && !self.connect_ports.contains(req.dest.port) {
            return Verdict::Deny(DenyReason::ConnectPort);
        }
        for (i, rule) in self.rules.iter().enumerate() {
            let mut all = true;
            for m in &rule.matchers {
                match matches(m, req, addrs) {
                    Some(true) => {}
                    Some(false) => {
                        all = false;
                        break;
                    }
                    None => return Verdict::NeedAddresses,
                }
            }
            if all {
                return match rule.action {
                    Action::Allow => Verdict::Allow(Some(i)),
                    Action::Deny => Verdict::Deny(DenyReason::Rule(i)),
                };
            }
        }
        match self.default {
            Action::Allow => Verdict::Allow(None),
            Action::Deny => Verdict::Deny(DenyReason::Default),
        }
    }

    /// Whether `ip` may be connected to under `block_private`.
    pub fn permits_address(&self, ip: IpAddr) -> bool {
        !self.block_private || !is_private(ip) || self.private_allow.iter().any(|n| n.contains(ip))
    }

    /// "rule 2 (name)" or "rule 2" for rule index `i` (shown 1-based).
    pub fn rule_label(&self, i: usize) -> String {
        // One spelling for pages, headers, explain and the access log.
        crate::access_log::RuleName::Rule(i, self.rules.get(i).and_then(|r| r.name.as_deref())).to_string()
    }

    /// A sentence saying why `reason` denied a request.
    pub fn explain(&self, reason: DenyReason) -> String {
        match reason {
            DenyReason::ConnectPort => "CONNECT to a port not in connect_ports".into(),
            DenyReason::Rule(i) => format!("denied by {} of acl {:?}", self.rule_label(i), self.name),
            DenyReason::Default => format!("no rule of acl {:?} matched and its default is deny", self.name),
            DenyReason::Private(ip) => format!("destination address {ip} is private (block_private)"),
        }
    }

    /// What a client is told about `reason`: like [`Acl::explain`], without
    /// the resolved address (which would let clients map internal names).
    pub fn explain_to_client(&self, reason: DenyReason) -> String {
        match reason {
            DenyReason::Private(_) => "the destination address is private (block_private)".into(),
            other => self.explain(other),
        }
    }
}

thread_local! {
    /// Reused for every URL match: no allocation per request.
    static CANONICAL_URL: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Writes `ip` in its usual text form into `buf`; returns the text.
fn format_ip(ip: IpAddr, buf: &mut [u8; 48]) -> &str {
    use std::io::Write;
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // 48 bytes hold the longest IPv6 text (45).
    let _ = write!(cursor, "{ip}");
    let len = cursor.position() as usize;
    std::str::from_utf8(&buf[..len]).unwrap_or_default()
}

/// `http://host[:port]/path`, with the normalised host, the port only when
/// not 80, percent-encoded unreserved characters decoded (RFC 3986
/// 6.2.2.2) and dot-segments removed (5.2.4), so that every spelling of a
/// path an origin would resolve alike (`/ads`, `/%61ds`, `/x/../ads`,
/// `/./ads`, `/%2e%2e/ads`) matches alike. The query is decoded only.
pub(crate) fn canonical_url(out: &mut Vec<u8>, dest: &Destination, target: &[u8]) {
    use std::io::Write;
    out.clear();
    out.extend_from_slice(b"http://");
    let _ = write!(out, "{}", dest.host);
    if dest.port != 80 {
        let _ = write!(out, ":{}", dest.port);
    }
    canonical_target(out, target);
}

impl Acl {
    /// Whether rule `rule` admits address `ip`: a rule with `dst_ip`
    /// matchers allows only the addresses inside all of them, whatever
    /// other addresses the name resolved to.
    pub fn rule_admits(&self, rule: usize, ip: IpAddr) -> bool {
        self.rules.get(rule).is_none_or(|r| {
            r.matchers.iter().all(|m| match m {
                Matcher::DstIp(nets) => nets.iter().any(|n| n.contains(ip)),
                _ => true,
            })
        })
    }
}

/// Whether one matcher holds; `None` when it needs resolved addresses.
fn matches(m: &Matcher, req: &AclRequest<'_>, addrs: Option<&[IpAddr]>) -> Option<bool> {
    let host = &req.dest.host;
    Some(match m {
        Matcher::Src(nets) => nets.iter().any(|n| n.contains(req.src)),
        Matcher::DstDomain(set) => matches!(host, Host::Name(n) if set.matches(n.as_str())),
        Matcher::DstRegex(set) => match host {
            Host::Name(n) => set.is_match(n.as_str()),
            Host::Ip(ip) => {
                let mut text = [0u8; 48];
                set.is_match(format_ip(*ip, &mut text))
            }
        },
        Matcher::DstIp(nets) => match host {
            Host::Ip(ip) => nets.iter().any(|n| n.contains(*ip)),
            Host::Name(_) => addrs?.iter().any(|&ip| nets.iter().any(|n| n.contains(ip))),
        },
        Matcher::DstPort(ports) => ports.contains(req.dest.port),
        Matcher::Method(methods) => methods.iter().any(|m| m.as_bytes() == req.method),
        Matcher::UrlRegex(set) => match req.path {
            Some(path) if !req.connect => CANONICAL_URL.with(|buf| {
                let mut buf = buf.borrow_mut();
                canonical_url(&mut buf, req.dest, path);
                set.is_match(&buf)
            }),
            _ => false,
        },
        Matcher::User(users) => req.user.is_some_and(|u| users.iter().any(|x| x == u)),
        Matcher::Group(groups) => req.groups.iter().any(|g| groups.contains(g)),
        Matcher::Time(windows) => windows.iter().any(TimeWindow::contains_now),
        Matcher::Header(name, value) => req.head.is_some_and(|head| {
            head.headers()
                .any(|f| f.name.eq_ignore_ascii_case(name.as_bytes()) && value.matches(f.value))
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::host::parse_authority;

    #[test]
    fn canonical_urls_decode_unreserved_bytes_and_resolve_dot_segments() {
        let dest = parse_authority(b"Example.TEST:8080", Some(80)).unwrap();
        let canon = |target: &str| {
            let mut out = Vec::new();
            canonical_url(&mut out, &dest, target.as_bytes());
            String::from_utf8(out).unwrap()
        };
        let base = "http://example.test:8080";
        for (target, want) in [
            ("/ads", "/ads"),
            ("/%61%64s", "/ads"),
            ("/x/../ads", "/ads"),
            ("/./ads", "/ads"),
            ("/%2e%2E/ads", "/ads"),
            ("/a/b/%2e%2e", "/a/"),
            ("/a/./", "/a/"),
            ("/../../ads", "/ads"),
            ("/a//b", "/a/b"),
            ("/a%2Fb", "/a/b"),
            ("/a/..?q=/../%61", "/?q=/../a"),
            ("", "/"),
            ("*", "/*"),
        ] {
            assert_eq!(canon(target), format!("{base}{want}"), "{target}");
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_matching() {
        assert!(net("10.0.0.0/8").contains("10.255.1.2".parse().unwrap()));
        assert!(!net("10.0.0.0/8").contains("11.0.0.1".parse().unwrap()));
        assert!(net("127.0.0.1").contains("127.0.0.1".parse().unwrap()));
        assert!(!net("127.0.0.1").contains("127.0.0.2".parse().unwrap()));
        assert!(net("0.0.0.0/0").contains("8.8.8.8".parse().unwrap()));
        assert!(net("fd00::/8").contains("fd12::1".parse().unwrap()));
        assert!(
            net("127.0.0.0/8").contains("::ffff:127.0.0.5".parse().unwrap()),
            "mapped counts as v4"
        );
        assert!(!net("::/0").contains("1.2.3.4".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<IpNet>().is_err());
        assert!("ten".parse::<IpNet>().is_err());
    }

    #[test]
    fn private_addresses() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "::1",
            "::",
            "fd00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "64:ff9b::7f00:1",
        ] {
            assert!(is_private(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.216.34",
            "2606:2800:220:1::1",
            "100.128.0.1",
            "172.32.0.1",
            "64:ff9b::808:808",
        ] {
            assert!(!is_private(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn port_sets_and_time_windows() {
        let ports = PortSet::new(vec![(443, 443), PortSet::parse_range("1025-65535").unwrap()]);
        assert!(ports.contains(443) && ports.contains(8080) && !ports.contains(80));
        assert!(PortSet::parse_range("0").is_err());
        assert!(PortSet::parse_range("9-2").is_err());
        let office: TimeWindow = "Mon-Fri 08:00-18:00".parse().unwrap();
        assert!(office.contains(0, 9 * 60));
        assert!(!office.contains(5, 9 * 60), "Saturday");
        assert!(!office.contains(2, 18 * 60), "end is exclusive");
        let night: TimeWindow = "22:00-06:00".parse().unwrap();
        assert!(night.contains(6, 23 * 60) && night.contains(3, 60) && !night.contains(3, 12 * 60));
        let weekend: TimeWindow = "Sat,Sun".parse().unwrap();
        assert!(weekend.contains(6, 0) && !weekend.contains(4, 0));
        let wrap: TimeWindow = "Fri-Mon".parse().unwrap();
        assert!(wrap.contains(5, 0) && wrap.contains(0, 0) && !wrap.contains(2, 0));
        for bad in ["Mon-Funday", "25:00-26:00", "8-9", "08:00"] {
            assert!(bad.parse::<TimeWindow>().is_err(), "{bad}");
        }
    }

    fn request<'a>(dest: &'a Destination, src: &str, connect: bool) -> AclRequest<'a> {
        AclRequest {
            src: src.parse().unwrap(),
            dest,
            method: if connect { b"CONNECT" } else { b"GET" },
            connect,
            path: None,
            user: None,
            groups: &[],
            head: None,
        }
    }

    #[test]
    fn first_match_wins_then_default_and_connect_ports_first() {
        let mut blocked = DomainSet::new();
        blocked.insert("blocked.test").unwrap();
        let acl = Acl {
            name: "t".into(),
            default: Action::Deny,
            block_private: true,
            private_allow: vec![net("127.0.0.1/32")],
            connect_ports: PortSet::new(vec![(443, 443)]),
            rules: vec![
                Rule {
                    name: Some("no blocked".into()),
                    action: Action::Deny,
                    matchers: vec![Matcher::DstDomain(Arc::new(blocked))],
                },
                Rule {
                    name: None,
                    action: Action::Allow,
                    matchers: vec![Matcher::Src(vec![net("127.0.0.0/8")])],
                },
            ],
        };
        let blocked = parse_authority(b"blocked.test:443", None).unwrap();
        let ok = parse_authority(b"ok.test:443", None).unwrap();
        let odd_port = parse_authority(b"ok.test:22", None).unwrap();
        assert_eq!(
            acl.decide(&request(&blocked, "127.0.0.1", false), None),
            Verdict::Deny(DenyReason::Rule(0))
        );
        assert_eq!(
            acl.decide(&request(&ok, "127.0.0.1", false), None),
            Verdict::Allow(Some(1))
        );
        assert_eq!(
            acl.decide(&request(&ok, "192.0.2.1", false), None),
            Verdict::Deny(DenyReason::Default)
        );
        assert_eq!(
            acl.decide(&request(&odd_port, "127.0.0.1", true), None),
            Verdict::Deny(DenyReason::ConnectPort)
        );
        assert_eq!(
            acl.decide(&request(&odd_port, "127.0.0.1", false), None),
            Verdict::Allow(Some(1)),
            "plain HTTP"
        );
        assert_eq!(acl.rule_label(0), "rule 1 (no blocked)");
        assert!(acl.permits_address("127.0.0.1".parse().unwrap()), "private_allow");
        assert!(!acl.permits_address("127.0.0.2".parse().unwrap()));
        assert!(acl.permits_address("93.184.216.34".parse().unwrap()));
    }

    #[test]
    fn dst_ip_on_a_name_asks_for_addresses() {
        let acl = Acl {
            name: "t".into(),
            default: Action::Allow,
            block_private: false,
            private_allow: vec![],
            connect_ports: PortSet::new(vec![(443, 443)]),
            rules: vec![Rule {
                name: None,
                action: Action::Deny,
                matchers: vec![Matcher::DstIp(vec![net("127.0.0.5/32")])],
            }],
        };
        let dest = parse_authority(b"some.test", Some(80)).unwrap();
        let req = request(&dest, "127.0.0.1", false);
        assert_eq!(acl.decide(&req, None), Verdict::NeedAddresses);
        let hit = ["127.0.0.5".parse().unwrap()];
        let miss = ["127.0.0.6".parse().unwrap()];
        assert_eq!(acl.decide(&req, Some(&hit)), Verdict::Deny(DenyReason::Rule(0)));
        assert_eq!(acl.decide(&req, Some(&miss)), Verdict::Allow(None));
        let literal = parse_authority(b"127.0.0.5", Some(80)).unwrap();
        assert_eq!(
            acl.decide(&request(&literal, "127.0.0.1", false), None),
            Verdict::Deny(DenyReason::Rule(0))
        );
    }
}
