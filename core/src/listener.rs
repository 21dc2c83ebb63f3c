//! Listening sockets: one `SO_REUSEPORT` socket per worker for every listener.
//!
//! All sockets are created on the starting thread, so an address in use is an
//! error before any worker starts, and a port of 0 is resolved once: the first
//! socket picks the port and the others bind that same port. Each worker then
//! adopts its own sockets into its runtime.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    thread,
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};

/// One listening address of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    /// The listener's name from the configuration (for logs).
    pub name: String,
    /// Where to listen.
    pub addr: SocketAddr,
    /// The accept queue length passed to `listen(2)`.
    pub backlog: u32,
}

impl ListenerSpec {
    /// A listener with the default backlog.
    pub fn new(name: impl Into<String>, addr: SocketAddr) -> Self {
        Self {
            name: name.into(),
            addr,
            backlog: 4096,
        }
    }
}

/// The addresses at which this server answers: its listeners, with a
/// wildcard listener (`0.0.0.0`, `::`) standing for every address of the
/// host. A forward proxy refuses destinations among them (a loop), and a
/// reverse proxy's upstream may not be one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OwnAddresses {
    listeners: Vec<SocketAddr>,
    /// The host's interface addresses, for wildcard listeners.
    host_ips: Vec<IpAddr>,
}

impl OwnAddresses {
    /// The addresses of `listeners` (bound: no port 0), with the host's
    /// interface addresses read now.
    pub fn new(listeners: &[SocketAddr]) -> Self {
        Self {
            listeners: listeners.to_vec(),
            host_ips: crate::socket::host_addresses(),
        }
    }

    /// Whether connecting to `dest` reaches one of these listeners.
    /// Connecting to an unspecified address reaches the loopback one.
    pub fn contains(&self, dest: SocketAddr) -> bool {
        let ip = match dest.ip().to_canonical() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        self.listeners.iter().any(|l| {
            l.port() == dest.port()
                && (l.ip().to_canonical() == ip
                    || (l.ip().is_unspecified()
                        && l.is_ipv4() == ip.is_ipv4()
                        && (ip.is_loopback() || self.host_ips.contains(&ip))))
        })
    }
}

/// Each worker's sockets: (listener index, socket), a socket each per
/// listener, or more where a handover brought more sockets than workers.
pub(crate) type WorkerSockets = Vec<Vec<(usize, TcpListener)>>;

/// Binds `workers` sockets for each listener, with the resolved addresses
/// (port 0 replaced). A listener at the address of an `inherited` one
/// (a binary upgrade) takes its sockets instead, accept queues and all,
/// binds more beside them if there are more workers than sockets, and
/// spreads any extra ones over the workers: none is closed with
/// connections waiting in it.
pub(crate) fn bind_all(
    specs: &[ListenerSpec],
    workers: usize,
    inherited: &mut Vec<crate::handover::Inherited>,
) -> io::Result<(WorkerSockets, Vec<SocketAddr>)> {
    let mut per_worker: WorkerSockets = (0..workers).map(|_| Vec::new()).collect();
    let mut resolved = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        let taken = inherited
            .iter()
            .position(|old| {
                old.addr == spec.addr
                    || (spec.addr.port() == 0 && old.name == spec.name && old.addr.ip() == spec.addr.ip())
            })
            .map(|i| inherited.swap_remove(i));
        let mut sockets = taken.map(|old| old.sockets).unwrap_or_default().into_iter();
        let mut addr = match sockets.as_slice().first() {
            Some(first) => first.local_addr()?,
            None => {
                if spec.addr.port() != 0 {
                    ensure_unclaimed(spec)?;
                }
                spec.addr
            }
        };
        for worker in per_worker.iter_mut() {
            let listener = match sockets.next() {
                Some(socket) => socket,
                None => bind_reuseport(addr, spec.backlog).map_err(|e| {
                    io::Error::new(e.kind(), format!("listener {:?} on {addr}: {e}", spec.name))
                })?,
            };
            addr = listener.local_addr()?;
            worker.push((index, listener));
        }
        for (i, extra) in sockets.enumerate() {
            per_worker[i % workers].push((index, extra));
        }
        resolved.push(addr);
    }
    Ok((per_worker, resolved))
}

/// Fails when another socket already listens on the address.
///
/// `SO_REUSEPORT` lets a second process with the same user bind a port that
/// is in use, and the kernel then splits connections between the two, so a
/// stale instance would silently take half the traffic. A probe socket bound
/// without `SO_REUSEPORT` tells: it fails while anyone holds the port. A port
/// still held by a process that just exited is waited for briefly.
fn ensure_unclaimed(spec: &ListenerSpec) -> io::Result<()> {
    let mut attempts = 0;
    loop {
        let probe = Socket::new(Domain::for_address(spec.addr), Type::STREAM, Some(Protocol::TCP))?;
        probe.set_reuse_address(true)?;
        if spec.addr.is_ipv6() {
            probe.set_only_v6(true)?;
        }
        match probe.bind(&spec.addr.into()) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempts < 10 => {
                attempts += 1;
                thread::sleep(Duration::from_millis(100));
            }
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!(
                    "listener {:?} on {}: {e} (is another process, or an earlier ringway, listening there?)",
                    spec.name, spec.addr
                ),
                ))
            }
        }
    }
}

fn bind_reuseport(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux, which
    // saves a setsockopt per connection.
    socket.set_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    // No immediate ACK for a request: its response, which follows, carries
    // the ACK. Without this a new connection, which starts in quick-ACK
    // mode, sends one pure ACK segment per request (HAProxy does the same
    // for HTTP listeners). Set after listen(), which resets it; accepted
    // sockets inherit it. Bulk uploads still get an ACK for every second
    // full segment.
    socket.set_quickack(false)?;
    Ok(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_resolves_once_for_all_workers() {
        let spec = ListenerSpec::new("t", "127.0.0.1:0".parse().unwrap());
        let (sockets, addrs) = bind_all(&[spec], 3, &mut Vec::new()).unwrap();
        assert_eq!(sockets.len(), 3);
        let port = addrs[0].port();
        assert_ne!(port, 0);
        for worker in &sockets {
            assert_eq!(worker[0].1.local_addr().unwrap().port(), port);
        }
    }

    #[test]
    fn inherited_sockets_are_taken_all_and_more_are_bound_for_more_workers() {
        let old = bind_reuseport("127.0.0.1:0".parse().unwrap(), 16).unwrap();
        let addr = old.local_addr().unwrap();
        let other = bind_reuseport(addr, 16).unwrap();
        let spec = ListenerSpec::new("web", addr);
        // Two sockets, three workers: one more is bound beside them (the
        // address is taken by the handed-over ones, and that is expected).
        let mut inherited = vec![crate::handover::Inherited {
            name: "web".into(),
            addr,
            sockets: vec![old, other],
        }];
        let (sockets, addrs) = bind_all(std::slice::from_ref(&spec), 3, &mut inherited).unwrap();
        assert!(inherited.is_empty(), "taken");
        assert_eq!(addrs, vec![addr]);
        assert_eq!(sockets.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 1]);
        // Three sockets, one worker: the one worker accepts on all three.
        let mut inherited = vec![crate::handover::Inherited {
            name: "web".into(),
            addr,
            sockets: sockets.into_iter().flatten().map(|(_, s)| s).collect(),
        }];
        let (sockets, _) = bind_all(&[spec], 1, &mut inherited).unwrap();
        assert_eq!(sockets[0].len(), 3);
        assert!(sockets[0].iter().all(|(i, _)| *i == 0));
    }

    #[test]
    fn listeners_do_not_ack_requests_on_their_own() {
        // listen() resets the ACK mode: it must be set after, or accepted
        // connections send a pure ACK segment before every first response.
        let spec = ListenerSpec::new("t", "127.0.0.1:0".parse().unwrap());
        let (sockets, _) = bind_all(&[spec], 1, &mut Vec::new()).unwrap();
        assert!(!socket2::SockRef::from(&sockets[0][0].1).quickack().unwrap());
    }

    #[test]
    fn own_addresses_cover_wildcards_loopback_and_the_unspecified_address() {
        let own = OwnAddresses {
            listeners: vec!["127.0.0.1:3128".parse().unwrap(), "0.0.0.0:8080".parse().unwrap()],
            host_ips: vec!["192.0.2.10".parse().unwrap()],
        };
        for hit in [
            "127.0.0.1:3128",
            "0.0.0.0:3128",
            "[::ffff:127.0.0.1]:3128",
            "127.0.0.5:8080",
            "192.0.2.10:8080",
        ] {
            assert!(own.contains(hit.parse().unwrap()), "{hit}");
        }
        for miss in [
            "127.0.0.2:3128",
            "127.0.0.1:3129",
            "192.0.2.11:8080",
            "[::1]:8080",
        ] {
            assert!(!own.contains(miss.parse().unwrap()), "{miss}");
        }
    }

    #[test]
    fn a_port_in_use_is_an_error_not_a_silent_share() {
        let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let spec = ListenerSpec::new("busy", holder.local_addr().unwrap());
        let err = bind_all(&[spec], 1, &mut Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("busy"), "{err}");
    }
}
