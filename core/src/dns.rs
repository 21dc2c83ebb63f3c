//! Name resolution that never blocks a worker: an async DNS client over
//! monoio UDP, with static answers first and a per-worker cache.
//!
//! Order of answers: the configuration's static `hosts`, then `/etc/hosts`,
//! then the cache, then the DNS servers (A and AAAA queries sent together
//! from a fresh socket with a random ID, each server tried in turn within
//! the timeout; an answer truncated over UDP is asked again over TCP, as
//! RFC 7766 says, since it may lack addresses). Positive answers are cached for their smallest TTL and
//! negative ones (NXDOMAIN, or no address) for the SOA's negative TTL, both
//! capped by `cache_ttl`. Each worker owns its [`Resolver`] and its cache:
//! no lock on the request path.

use std::{
    cell::RefCell,
    collections::HashMap,
    hash::{BuildHasher, Hasher},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    rc::Rc,
    sync::Arc,
    time::{Duration, Instant},
};

use monoio::{
    io::{AsyncReadRentExt, AsyncWriteRentExt},
    net::{udp::UdpSocket, TcpStream},
};

use crate::error::{Error, ErrorKind, Result, Side};

/// How names are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// DNS servers, tried in order.
    pub servers: Vec<SocketAddr>,
    /// Static answers (lowercase names), looked up first.
    pub hosts: HashMap<String, Vec<IpAddr>>,
    /// Upper bound on how long any answer is cached.
    pub cache_ttl: Duration,
    /// How long a negative answer is cached when the server gives no TTL.
    pub negative_ttl: Duration,
    /// Per-server wait for an answer.
    pub timeout: Duration,
}

impl DnsConfig {
    /// The system's settings: servers from `/etc/resolv.conf` (or
    /// `127.0.0.1:53`), static answers from `/etc/hosts`.
    pub fn system() -> Self {
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let mut servers = parse_resolv_conf(&resolv);
        if servers.is_empty() {
            servers.push(SocketAddr::from((Ipv4Addr::LOCALHOST, 53)));
        }
        let hosts = parse_hosts_file(&std::fs::read_to_string("/etc/hosts").unwrap_or_default());
        Self {
            servers,
            hosts,
            cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            timeout: Duration::from_secs(2),
        }
    }
}

/// `nameserver` lines of a resolv.conf.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .map(|ip| SocketAddr::new(ip, 53))
        })
        .collect()
}

/// The entries of a hosts file, by lowercase name.
pub fn parse_hosts_file(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut hosts: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut words = line.split_whitespace();
        let Some(ip) = words.next().and_then(|w| w.parse::<IpAddr>().ok()) else {
            continue;
        };
        for name in words {
            let entry = hosts
                .entry(name.trim_end_matches('.').to_ascii_lowercase())
                .or_default();
            if !entry.contains(&ip) {
                entry.push(ip);
            }
        }
    }
    hosts
}

#[derive(Debug, Clone)]
struct CacheEntry {
    /// `None`: the name has no address (negative answer).
    addrs: Option<Rc<[IpAddr]>>,
    expires: Instant,
}

/// The answer of [`Resolver::lookup`].
#[derive(Debug, Clone)]
pub struct Lookup {
    /// The addresses, IPv4 first.
    pub addrs: Rc<[IpAddr]>,
    /// How long they hold (the answer's smallest TTL, capped by
    /// `cache_ttl`); `None` when they never change.
    pub ttl: Option<Duration>,
}

/// Resolves `name` once, from a thread that runs no runtime of its own (a
/// configuration being loaded): the same order of answers as a worker's
/// [`Resolver`], on a short-lived thread with a runtime of its own.
pub fn resolve_blocking(config: Arc<DnsConfig>, name: &str) -> Result<Vec<IpAddr>> {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let lookup = move || {
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .map_err(|e| Error::new(ErrorKind::Io, Side::Upstream, "starting a resolver").with_cause(e))?;
        runtime.block_on(async { Resolver::new(config).resolve(&name).await.map(|a| a.to_vec()) })
    };
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("ringway-resolve".into())
            .spawn_scoped(scope, lookup)
            .map_err(|e| Error::new(ErrorKind::Io, Side::Upstream, "starting a resolver").with_cause(e))?
            .join()
            .unwrap_or_else(|_| Err(Error::new(ErrorKind::Io, Side::Upstream, "the resolver failed")))
    })
}

/// A worker's resolver and cache.
pub struct Resolver {
    config: Arc<DnsConfig>,
    /// The configuration's static answers, shared without copying.
    hosts: HashMap<Box<str>, Rc<[IpAddr]>>,
    cache: RefCell<HashMap<Box<str>, CacheEntry>>,
    random: std::collections::hash_map::RandomState,
    counter: std::cell::Cell<u64>,
}

/// Most names cached per worker; past it the cache is cleared of expired
/// entries, then emptied.
const MAX_CACHED: usize = 20_000;
/// Addresses kept per name.
const MAX_ADDRESSES: usize = 16;
/// The UDP payload size offered with EDNS0 (the DNS Flag Day 2020 value).
const EDNS_PAYLOAD: u16 = 1232;

impl Resolver {
    /// A resolver with an empty cache.
    pub fn new(config: Arc<DnsConfig>) -> Self {
        let hosts = config
            .hosts
            .iter()
            .map(|(name, addrs)| (Box::from(name.as_str()), Rc::from(addrs.as_slice())))
            .collect();
        Self {
            config,
            hosts,
            cache: RefCell::new(HashMap::new()),
            random: std::collections::hash_map::RandomState::new(),
            counter: std::cell::Cell::new(0),
        }
    }

    /// The settings it resolves with.
    pub fn config(&self) -> &DnsConfig {
        &self.config
    }

    /// The addresses of `name` (lowercase, no trailing dot).
    ///
    /// Fails with `ErrorKind::ConnectFailed` on the upstream side when the
    /// name does not exist or has no address, and when no server answered.
    pub async fn resolve(&self, name: &str) -> Result<Rc<[IpAddr]>> {
        if let Some(addrs) = self.fixed(name) {
            return Ok(addrs);
        }
        let now = Instant::now();
        if let Some(entry) = self.cache.borrow().get(name) {
            if entry.expires > now {
                return entry.addrs.clone().ok_or_else(|| no_address(name));
            }
        }
        Ok(self.ask(name).await?.addrs)
    }

    /// The addresses of `name` as the DNS servers give them now (the cache
    /// is refreshed, not read), with how long they may be kept: `None` for
    /// an IP literal or a static answer, which never change. For callers
    /// that follow a name over time (upstream servers given by name).
    pub async fn lookup(&self, name: &str) -> Result<Lookup> {
        if let Some(addrs) = self.fixed(name) {
            return Ok(Lookup { addrs, ttl: None });
        }
        self.ask(name).await
    }

    /// An IP literal, or a static answer.
    fn fixed(&self, name: &str) -> Option<Rc<[IpAddr]>> {
        if let Ok(ip) = name.parse::<IpAddr>() {
            return Some(Rc::from([ip]));
        }
        self.hosts.get(name).map(Rc::clone)
    }

    /// Asks the servers and caches the answer.
    async fn ask(&self, name: &str) -> Result<Lookup> {
        let now = Instant::now();
        let answer = self.query_servers(name).await?;
        let ttl = answer.ttl.min(self.config.cache_ttl);
        let addrs: Option<Rc<[IpAddr]>> = (!answer.addrs.is_empty()).then(|| Rc::from(answer.addrs));
        let mut cache = self.cache.borrow_mut();
        if cache.len() >= MAX_CACHED {
            cache.retain(|_, e| e.expires > now);
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(
            name.into(),
            CacheEntry {
                addrs: addrs.clone(),
                expires: now + ttl,
            },
        );
        let addrs = addrs.ok_or_else(|| no_address(name))?;
        Ok(Lookup {
            addrs,
            ttl: Some(ttl),
        })
    }

    fn random_u16(&self) -> u16 {
        let n = self.counter.get().wrapping_add(1);
        self.counter.set(n);
        let mut h = self.random.build_hasher();
        h.write_u64(n);
        h.finish() as u16
    }

    async fn query_servers(&self, name: &str) -> Result<Answer> {
        if !is_valid_dns_name(name) {
            return Err(Error::new(
                ErrorKind::InvalidHttp,
                Side::Downstream,
                "invalid host name",
            ));
        }
        let mut last = Error::new(
            ErrorKind::ConnectFailed,
            Side::Upstream,
            "no DNS server configured",
        );
        for &server in &self.config.servers {
            match self.query_one(server, name).await {
                Ok(answer) => return Ok(answer),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Asks `server` for A and AAAA over UDP, then over TCP for an answer
    /// that came truncated; each within the timeout.
    async fn query_one(&self, server: SocketAddr, name: &str) -> Result<Answer> {
        let udp = monoio::time::timeout(self.config.timeout, self.query_udp(server, name)).await;
        let Ok(udp) = udp else {
            return Err(Error::new(
                ErrorKind::ConnectTimeout,
                Side::Upstream,
                "DNS server did not answer in time",
            ));
        };
        let Queried {
            mut answer,
            mut failed,
            truncated,
            mut nxdomain,
        } = udp?;
        for slot in 0..2 {
            if !truncated[slot] {
                continue;
            }
            // A server that cannot be reached over TCP fails this query
            // only: the other family's answer stands.
            let tcp = self.query_tcp(server, name, QTYPES[slot]);
            match monoio::time::timeout(self.config.timeout, tcp).await {
                Ok(Ok(parsed)) if parsed.rcode == RCODE_OK && !parsed.truncated => {
                    self.add_addresses(&mut answer, slot, parsed)
                }
                Ok(Ok(parsed)) if parsed.rcode == RCODE_NXDOMAIN => nxdomain = true,
                _ => failed[slot] = true,
            }
        }
        // One family failing (a server refusing AAAA, say) leaves the other's
        // addresses usable; both failing is a failure, not "no address".
        if failed == [true, true] || (answer.addrs.is_empty() && failed.contains(&true) && !nxdomain) {
            return Err(Error::new(
                ErrorKind::ConnectFailed,
                Side::Upstream,
                "DNS server failed to answer",
            ));
        }
        if nxdomain {
            answer.addrs.clear();
        }
        answer.addrs.truncate(MAX_ADDRESSES);
        Ok(answer)
    }

    /// The UDP exchange of [`Resolver::query_one`].
    async fn query_udp(&self, server: SocketAddr, name: &str) -> Result<Queried> {
        let fail = |context: &'static str| {
            move |e: io::Error| Error::new(ErrorKind::ConnectFailed, Side::Upstream, context).with_cause(e)
        };
        let local: SocketAddr = if server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let socket = UdpSocket::bind(local).map_err(fail("binding a DNS socket"))?;
        socket
            .connect(server)
            .await
            .map_err(fail("connecting a DNS socket"))?;
        let first = self.random_u16();
        let mut second = self.random_u16();
        while second == first {
            second = self.random_u16();
        }
        let ids = [first, second];
        let qtypes = QTYPES;
        for (id, qtype) in ids.iter().zip(qtypes) {
            let (sent, _) = socket.send(encode_query(*id, name, qtype)).await;
            sent.map_err(fail("sending a DNS query"))?;
        }
        let mut answer = Answer {
            addrs: Vec::new(),
            ttl: self.config.cache_ttl,
        };
        let mut pending = [true, true];
        let mut failed = [false, false];
        let mut truncated = [false, false];
        let mut nxdomain = false;
        let mut buf = vec![0u8; EDNS_PAYLOAD as usize];
        while pending.iter().any(|&p| p) {
            let (got, back) = socket.recv(buf).await;
            buf = back;
            let n = got.map_err(fail("receiving a DNS answer"))?;
            let Some(parsed) = parse_response(&buf[..n], name) else {
                continue; // Not an answer to us: ignore it.
            };
            let Some(slot) = ids.iter().position(|&id| id == parsed.id) else {
                continue;
            };
            if !pending[slot] || parsed.qtype != qtypes[slot] {
                continue;
            }
            pending[slot] = false;
            match parsed.rcode {
                // A truncated answer may lack addresses: asked again over TCP.
                RCODE_OK if parsed.truncated => truncated[slot] = true,
                RCODE_OK => self.add_addresses(&mut answer, slot, parsed),
                RCODE_NXDOMAIN => nxdomain = true,
                _ => failed[slot] = true,
            }
        }
        Ok(Queried {
            answer,
            failed,
            truncated,
            nxdomain,
        })
    }

    /// Adds one query's addresses (`slot` 0: A, 1: AAAA) to `answer`.
    fn add_addresses(&self, answer: &mut Answer, slot: usize, parsed: Parsed) {
        answer.ttl = answer.ttl.min(parsed.ttl.unwrap_or(self.config.negative_ttl));
        // A records first: IPv4 is tried before IPv6.
        if slot == 0 {
            answer.addrs.splice(0..0, parsed.addrs);
        } else {
            answer.addrs.extend(parsed.addrs);
        }
    }

    /// One query over TCP (two-byte length, then the message), for an
    /// answer that did not fit in UDP.
    async fn query_tcp(&self, server: SocketAddr, name: &str, qtype: u16) -> Result<Parsed> {
        let fail = |context: &'static str| {
            move |e: io::Error| Error::new(ErrorKind::ConnectFailed, Side::Upstream, context).with_cause(e)
        };
        let mut stream = TcpStream::connect_addr(server)
            .await
            .map_err(fail("connecting to a DNS server over TCP"))?;
        let id = self.random_u16();
        let query = encode_query(id, name, qtype);
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
        framed.extend_from_slice(&query);
        let (sent, _) = stream.write_all(framed).await;
        sent.map_err(fail("sending a DNS query over TCP"))?;
        let len = stream
            .read_u16()
            .await
            .map_err(fail("receiving a DNS answer over TCP"))?;
        let (got, msg) = stream.read_exact(vec![0u8; usize::from(len)]).await;
        got.map_err(fail("receiving a DNS answer over TCP"))?;
        parse_response(&msg, name)
            .filter(|parsed| parsed.id == id && parsed.qtype == qtype)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::ConnectFailed,
                    Side::Upstream,
                    "malformed DNS answer over TCP",
                )
            })
    }
}

/// The two queries of a lookup, A then AAAA.
const QTYPES: [u16; 2] = [TYPE_A, TYPE_AAAA];

/// What the UDP exchange learned, per query (A, AAAA).
struct Queried {
    answer: Answer,
    failed: [bool; 2],
    truncated: [bool; 2],
    nxdomain: bool,
}

fn no_address(name: &str) -> Error {
    Error::new(
        ErrorKind::ConnectFailed,
        Side::Upstream,
        format!("{name} has no address"),
    )
}

struct Answer {
    addrs: Vec<IpAddr>,
    ttl: Duration,
}

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_SOA: u16 = 6;
const TYPE_AAAA: u16 = 28;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;
const RCODE_OK: u8 = 0;
const RCODE_NXDOMAIN: u8 = 3;

/// A name DNS can carry: dot-separated labels of 1 to 63 bytes, 253 in all.
pub fn is_valid_dns_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 253 && name.split('.').all(|l| !l.is_empty() && l.len() <= 63)
}

/// A recursive query for `name` (which must pass [`is_valid_dns_name`]).
fn encode_query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut q = Vec::with_capacity(18 + name.len());
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&0x0100u16.to_be_bytes()); // RD
    q.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 1]); // QD=1, AN=NS=0, AR=1 (OPT)
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.push(0);
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&CLASS_IN.to_be_bytes());
    // EDNS0 OPT record: root name, type 41, class = UDP payload size.
    q.push(0);
    q.extend_from_slice(&TYPE_OPT.to_be_bytes());
    q.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // extended RCODE, flags, RDLENGTH 0
    q
}

struct Parsed {
    id: u16,
    rcode: u8,
    /// The TC bit: the answer did not fit.
    truncated: bool,
    /// The question's type.
    qtype: u16,
    addrs: Vec<IpAddr>,
    /// Smallest TTL of the records used, or the negative TTL from the SOA.
    ttl: Option<Duration>,
}

/// A bounds-checked reader over a DNS message.
struct Reader<'a> {
    msg: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.msg.get(self.pos)?;
        self.pos += 1;
        Some(b)
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes([self.u8()?, self.u8()?]))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes([
            self.u8()?,
            self.u8()?,
            self.u8()?,
            self.u8()?,
        ]))
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let b = self.msg.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(b)
    }

    /// Reads a possibly compressed name into `out` (lowercase, dotted).
    fn name(&mut self, out: &mut String) -> Option<()> {
        out.clear();
        let mut pos = self.pos;
        let mut jumped = false;
        let mut jumps = 0;
        loop {
            let len = *self.msg.get(pos)? as usize;
            if len & 0xc0 == 0xc0 {
                let target = ((len & 0x3f) << 8) | *self.msg.get(pos + 1)? as usize;
                // Pointers must go backwards: no loops.
                if target >= pos || jumps > 64 {
                    return None;
                }
                if !jumped {
                    self.pos = pos + 2;
                    jumped = true;
                }
                jumps += 1;
                pos = target;
                continue;
            }
            if len & 0xc0 != 0 {
                return None;
            }
            if len == 0 {
                if !jumped {
                    self.pos = pos + 1;
                }
                return Some(());
            }
            let label = self.msg.get(pos + 1..pos + 1 + len)?;
            if !out.is_empty() {
                out.push('.');
            }
            out.extend(label.iter().map(|&b| b.to_ascii_lowercase() as char));
            if out.len() > 255 {
                return None;
            }
            pos += 1 + len;
        }
    }
}

/// Parses an answer to a query for `qname`; `None` when the message is
/// malformed, not a response, or about another name.
fn parse_response(msg: &[u8], qname: &str) -> Option<Parsed> {
    let mut r = Reader { msg, pos: 0 };
    let id = r.u16()?;
    let flags = r.u16()?;
    if flags & 0x8000 == 0 {
        return None; // a query, not a response
    }
    let rcode = (flags & 0x000f) as u8;
    let (qd, an, ns) = (r.u16()?, r.u16()?, r.u16()?);
    let _ar = r.u16()?;
    if qd != 1 {
        return None;
    }
    let mut name = String::new();
    r.name(&mut name)?;
    if !name.eq_ignore_ascii_case(qname) {
        return None;
    }
    let qtype = r.u16()?;
    let _qclass = r.u16()?;
    let mut chain = vec![name.clone()];
    let mut addrs = Vec::new();
    let mut ttl: Option<u32> = None;
    for _ in 0..an {
        r.name(&mut name)?;
        let (rtype, class, rttl, len) = (r.u16()?, r.u16()?, r.u32()?, r.u16()? as usize);
        let data_start = r.pos;
        let data = r.bytes(len)?;
        if class != CLASS_IN || !chain.contains(&name) {
            continue;
        }
        match rtype {
            TYPE_CNAME => {
                let mut target = String::new();
                let mut sub = Reader { msg, pos: data_start };
                sub.name(&mut target)?;
                chain.push(target);
            }
            TYPE_A if qtype == TYPE_A && len == 4 => {
                addrs.push(IpAddr::from([data[0], data[1], data[2], data[3]]));
                ttl = Some(ttl.map_or(rttl, |t| t.min(rttl)));
            }
            TYPE_AAAA if qtype == TYPE_AAAA && len == 16 => {
                let octets: [u8; 16] = data.try_into().ok()?;
                addrs.push(IpAddr::from(octets));
                ttl = Some(ttl.map_or(rttl, |t| t.min(rttl)));
            }
            _ => {}
        }
    }
    if addrs.is_empty() {
        // Negative answer: its TTL is the SOA's (RFC 2308).
        for _ in 0..ns {
            r.name(&mut name)?;
            let (rtype, _class, rttl, len) = (r.u16()?, r.u16()?, r.u32()?, r.u16()? as usize);
            let data_start = r.pos;
            r.bytes(len)?;
            if rtype == TYPE_SOA {
                let mut sub = Reader { msg, pos: data_start };
                let mut skip = String::new();
                sub.name(&mut skip)?;
                sub.name(&mut skip)?;
                sub.bytes(16)?;
                let minimum = sub.u32()?;
                ttl = Some(rttl.min(minimum));
            }
        }
    }
    Some(Parsed {
        id,
        rcode,
        truncated: flags & 0x0200 != 0,
        qtype,
        addrs,
        ttl: ttl.map(|t| Duration::from_secs(u64::from(t))),
    })
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::UdpSocket as StdUdp,
    };

    use super::*;

    /// Builds a response to `query` with `answers` as (type, ttl, rdata).
    fn respond(query: &[u8], rcode: u8, answers: &[(u16, u32, Vec<u8>)]) -> Vec<u8> {
        // Header and question only: the query's 11-byte OPT record is its
        // last part, and answers come before any additional records.
        let mut out = query[..query.len() - 11].to_vec();
        out[2] = 0x81;
        out[3] = 0x80 | rcode;
        out[10..12].copy_from_slice(&[0, 0]);
        out[6..8].copy_from_slice(&(answers.len() as u16).to_be_bytes());
        for (rtype, ttl, data) in answers {
            out.extend_from_slice(&[0xc0, 12]); // name: pointer to the question
            out.extend_from_slice(&rtype.to_be_bytes());
            out.extend_from_slice(&CLASS_IN.to_be_bytes());
            out.extend_from_slice(&ttl.to_be_bytes());
            out.extend_from_slice(&(data.len() as u16).to_be_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    fn qtype_of(query: &[u8]) -> u16 {
        let mut r = Reader { msg: query, pos: 12 };
        let mut name = String::new();
        r.name(&mut name).unwrap();
        r.u16().unwrap()
    }

    /// A fake DNS server on 127.0.0.1 answering with `answer(qtype, query)`.
    fn fake_server(
        answer: impl Fn(u16, &[u8]) -> Option<Vec<u8>> + Send + 'static,
    ) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
        let sock = StdUdp::bind("127.0.0.1:0").unwrap();
        let addr = sock.local_addr().unwrap();
        let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while let Ok((n, from)) = sock.recv_from(&mut buf) {
                seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if let Some(reply) = answer(qtype_of(&buf[..n]), &buf[..n]) {
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        (addr, count)
    }

    fn config(servers: Vec<SocketAddr>) -> Arc<DnsConfig> {
        Arc::new(DnsConfig {
            servers,
            hosts: HashMap::from([("static.test".to_owned(), vec![IpAddr::from([127, 0, 0, 9])])]),
            cache_ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            timeout: Duration::from_millis(300),
        })
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn resolves_a_and_aaaa_with_cnames_and_caches_by_ttl() {
        let (server, count) = fake_server(|qtype, q| {
            let mut cname = vec![5, b'a', b'l', b'i', b'a', b's', 0xc0, 12];
            cname.truncate(8);
            Some(match qtype {
                TYPE_A => respond(
                    q,
                    0,
                    &[(TYPE_CNAME, 300, cname), (TYPE_A, 120, vec![127, 0, 0, 7])],
                ),
                _ => respond(q, 0, &[(TYPE_AAAA, 30, Ipv6Addr::LOCALHOST.octets().to_vec())]),
            })
        });
        let resolver = Resolver::new(config(vec![server]));
        let addrs = block_on(resolver.resolve("www.example.test")).unwrap();
        assert_eq!(
            &*addrs,
            &[IpAddr::from([127, 0, 0, 7]), IpAddr::from(Ipv6Addr::LOCALHOST)]
        );
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
        // Cached: no new queries.
        block_on(resolver.resolve("www.example.test")).unwrap();
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 2);
        let expires = resolver.cache.borrow()["www.example.test"].expires;
        let ttl = expires.duration_since(Instant::now());
        assert!(ttl <= Duration::from_secs(30), "smallest TTL used: {ttl:?}");
    }

    #[test]
    fn static_hosts_come_first_and_nxdomain_is_cached() {
        let (server, count) = fake_server(|_, q| Some(respond(q, RCODE_NXDOMAIN, &[])));
        let resolver = Resolver::new(config(vec![server]));
        assert_eq!(
            &*block_on(resolver.resolve("static.test")).unwrap(),
            &[IpAddr::from([127, 0, 0, 9])]
        );
        assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 0);
        assert!(block_on(resolver.resolve("missing.test")).is_err());
        assert!(block_on(resolver.resolve("missing.test")).is_err());
        assert_eq!(
            count.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "negative answer cached"
        );
    }

    #[test]
    fn a_silent_server_times_out_and_the_next_one_answers() {
        let (silent, _) = fake_server(|_, _| None);
        let (good, _) = fake_server(|qtype, q| {
            Some(match qtype {
                TYPE_A => respond(q, 0, &[(TYPE_A, 60, vec![127, 0, 0, 5])]),
                _ => respond(q, 0, &[]),
            })
        });
        let resolver = Resolver::new(config(vec![silent, good]));
        assert_eq!(
            &*block_on(resolver.resolve("x.test")).unwrap(),
            &[IpAddr::from([127, 0, 0, 5])]
        );
    }

    #[test]
    fn malformed_answers_are_ignored_not_trusted() {
        // Wrong question name, a compression loop, truncated records.
        let name = "victim.test";
        let q = encode_query(7, name, TYPE_A);
        let mut other = encode_query(7, "other.test", TYPE_A);
        other[2] = 0x81;
        assert!(parse_response(&other, name).is_none());
        let mut looped = respond(&q, 0, &[(TYPE_A, 60, vec![1, 2, 3, 4])]);
        let at = q.len();
        looped[at] = 0xc0;
        looped[at + 1] = at as u8; // points at itself
        assert!(parse_response(&looped, name).is_none());
        let full = respond(&q, 0, &[(TYPE_A, 60, vec![1, 2, 3, 4])]);
        for cut in q.len()..full.len() {
            assert!(parse_response(&full[..cut], name).is_none(), "cut at {cut}");
        }
        assert!(parse_response(&q, name).is_none(), "a query is not an answer");
    }

    #[test]
    fn a_failing_aaaa_query_keeps_the_a_answer_and_truncated_answers_are_not_trusted() {
        let (server, _) = fake_server(|qtype, q| {
            Some(match qtype {
                TYPE_A => respond(q, 0, &[(TYPE_A, 60, vec![127, 0, 0, 8])]),
                _ => respond(q, 2, &[]), // SERVFAIL
            })
        });
        let resolver = Resolver::new(config(vec![server]));
        assert_eq!(
            &*block_on(resolver.resolve("half.test")).unwrap(),
            &[IpAddr::from([127, 0, 0, 8])]
        );

        let (server, _) = fake_server(|_, q| {
            let mut r = respond(q, 0, &[(TYPE_A, 60, vec![127, 0, 0, 9])]);
            r[2] |= 0x02; // TC
            Some(r)
        });
        let resolver = Resolver::new(config(vec![server]));
        assert!(
            block_on(resolver.resolve("big.test")).is_err(),
            "truncated, and no TCP server to ask: failure, not an answer"
        );
        let query = encode_query(1, "x.test", TYPE_A);
        assert_eq!(
            &query[query.len() - 11..query.len() - 8],
            &[0, 0, 41],
            "EDNS0 OPT record sent"
        );
    }

    /// A fake server whose UDP answer to A is truncated (127.0.0.1 only)
    /// and to AAAA carries `aaaa`, and a TCP listener on the same port
    /// (tried again while a TCP socket holds the port the UDP one got).
    fn truncating_server(aaaa: Option<Ipv6Addr>) -> (SocketAddr, std::net::TcpListener) {
        let udp_answer = move |qtype, q: &[u8]| {
            Some(match qtype {
                TYPE_A => {
                    let mut r = respond(q, 0, &[(TYPE_A, 60, vec![127, 0, 0, 1])]);
                    r[2] |= 0x02; // TC
                    r
                }
                _ => {
                    let records: Vec<_> = aaaa
                        .iter()
                        .map(|a| (TYPE_AAAA, 60, a.octets().to_vec()))
                        .collect();
                    respond(q, 0, &records)
                }
            })
        };
        (0..20)
            .find_map(|_| {
                let (server, _) = fake_server(udp_answer);
                std::net::TcpListener::bind(server).ok().map(|tcp| (server, tcp))
            })
            .expect("a port free for both UDP and TCP")
    }

    #[test]
    fn truncated_answers_are_asked_again_over_tcp() {
        // Over TCP: the whole answer, three addresses.
        let (server, tcp) = truncating_server(None);
        let second = tcp.try_clone().unwrap();
        let asked = std::thread::spawn(move || {
            let (mut s, _) = tcp.accept().unwrap();
            let mut len = [0u8; 2];
            s.read_exact(&mut len).unwrap();
            let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut query).unwrap();
            let all: Vec<_> = (1..=3).map(|i| (TYPE_A, 60, vec![127, 0, 0, i])).collect();
            let reply = respond(&query, 0, &all);
            s.write_all(&(reply.len() as u16).to_be_bytes()).unwrap();
            s.write_all(&reply).unwrap();
            qtype_of(&query)
        });
        let resolver = Resolver::new(config(vec![server]));
        assert_eq!(
            &*block_on(resolver.resolve("many.test")).unwrap(),
            &[
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([127, 0, 0, 2]),
                IpAddr::from([127, 0, 0, 3])
            ]
        );
        assert_eq!(asked.join().unwrap(), TYPE_A, "the truncated query went over TCP");
        second.set_nonblocking(true).unwrap();
        assert_eq!(
            second.accept().map(|_| ()).unwrap_err().kind(),
            std::io::ErrorKind::WouldBlock,
            "only the truncated query went over TCP"
        );
    }

    #[test]
    fn a_tcp_server_that_never_answers_fails_only_the_truncated_query() {
        // Accepts over TCP, then says nothing until the lookup is over.
        let (server, tcp) = truncating_server(Some(Ipv6Addr::LOCALHOST));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let silent = std::thread::spawn(move || {
            let held = tcp.accept();
            let _ = released.recv_timeout(Duration::from_secs(30));
            drop(held);
        });
        let (done, answer) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let resolver = Resolver::new(config(vec![server]));
            let _ = done.send(block_on(resolver.resolve("v6.test")).map(|a| a.to_vec()));
        });
        // Only the TCP query's own timeout (300 ms) can end the wait.
        let answer = answer.recv_timeout(Duration::from_secs(10));
        let _ = release.send(());
        silent.join().unwrap();
        assert_eq!(
            answer
                .expect("the lookup ended while the TCP server stayed silent")
                .unwrap(),
            vec![IpAddr::from(Ipv6Addr::LOCALHOST)],
            "the AAAA answer stands"
        );
    }

    #[test]
    fn system_files_parse() {
        assert_eq!(
            parse_resolv_conf("# x\nnameserver 127.0.0.53\nsearch a\nnameserver ::1\n"),
            vec!["127.0.0.53:53".parse().unwrap(), "[::1]:53".parse().unwrap()]
        );
        let hosts = parse_hosts_file("127.0.0.1 localhost Local.Test. # c\n::1 localhost\nbad line\n");
        assert_eq!(hosts["localhost"].len(), 2);
        assert_eq!(hosts["local.test"], vec![IpAddr::from([127, 0, 0, 1])]);
    }
}
