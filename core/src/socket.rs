//! Small socket checks that monoio does not offer.

use std::{
    io,
    mem::MaybeUninit,
    os::fd::{AsRawFd, BorrowedFd},
};

use socket2::SockRef;

/// Whether a connected socket is open with nothing waiting to be read: the
/// check an idle pooled connection passes before it is reused.
///
/// One non-blocking `recv(MSG_PEEK)`: data waiting (stray bytes from the
/// peer), end of stream (the peer closed it while idle) or an error all
/// mean the connection must not carry another request.
pub fn is_quiet(socket: &impl AsRawFd) -> bool {
    peek_fd(socket.as_raw_fd()) == Peeked::Quiet
}

/// The host's interface addresses (IPv4 and IPv6), from getifaddrs(3);
/// empty when they cannot be read.
pub fn host_addresses() -> Vec<std::net::IpAddr> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    #[allow(unsafe_code)]
    // SAFETY: getifaddrs writes a list head into `list` on success.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut entry = list;
    while !entry.is_null() {
        #[allow(unsafe_code)]
        // SAFETY: `entry` is a node of the list getifaddrs returned, which
        // stays valid until freeifaddrs below; `ifa_addr` is null or points
        // to a sockaddr whose family says which struct it is.
        unsafe {
            let addr = (*entry).ifa_addr;
            if !addr.is_null() {
                match i32::from((*addr).sa_family) {
                    libc::AF_INET => {
                        let v4 = &*addr.cast::<libc::sockaddr_in>();
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(v4.sin_addr.s_addr))));
                    }
                    libc::AF_INET6 => {
                        let v6 = &*addr.cast::<libc::sockaddr_in6>();
                        out.push(IpAddr::V6(Ipv6Addr::from(v6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
            entry = (*entry).ifa_next;
        }
    }
    #[allow(unsafe_code)]
    // SAFETY: `list` came from getifaddrs and is freed once.
    unsafe {
        libc::freeifaddrs(list);
    }
    out
}

/// What a non-blocking peek at a connected socket found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peeked {
    /// Bytes are waiting.
    Data,
    /// Nothing to read, the connection open.
    Quiet,
    /// End of stream: the peer shut its sending side (or closed).
    End,
    /// An error: reset, or the socket is unusable.
    Gone,
}

/// Peeks at one byte of socket `fd` without waiting. The caller must own
/// `fd` for the duration of the call.
pub(crate) fn peek_fd(fd: std::os::fd::RawFd) -> Peeked {
    let mut byte = 0u8;
    #[allow(unsafe_code)]
    // SAFETY: `byte` is one writable byte; `fd` is open for the call (the
    // caller's contract). recv(2) reads at most one byte into it.
    let n = unsafe { libc::recv(fd, (&raw mut byte).cast(), 1, libc::MSG_PEEK | libc::MSG_DONTWAIT) };
    match n {
        1.. => Peeked::Data,
        0 => Peeked::End,
        _ if io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock => Peeked::Quiet,
        _ => Peeked::Gone,
    }
}

/// Sends one byte on socket `fd` without waiting: `Ok(true)` sent,
/// `Ok(false)` the send buffer is full. The caller must own `fd` for the
/// duration of the call.
pub(crate) fn send_byte_fd(fd: std::os::fd::RawFd, byte: u8) -> io::Result<bool> {
    #[allow(unsafe_code)]
    // SAFETY: one readable byte; `fd` is open for the call (the caller's
    // contract). MSG_NOSIGNAL: a closed peer is an error, not SIGPIPE.
    let n = unsafe {
        libc::send(
            fd,
            (&raw const byte).cast(),
            1,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    match n {
        1.. => Ok(true),
        _ => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                Ok(false)
            } else {
                Err(e)
            }
        }
    }
}

/// Whether the peer reset a connected socket: its pending error is
/// `ECONNRESET`, or `EPIPE` (a reset after the peer's FIN). Reading the
/// error clears it.
///
/// A reset can sit behind a FIN that a read already returned as end of
/// stream: the peer closed, then our bytes reached its closed socket and
/// its kernel answered with a reset, so nothing there read them.
pub fn was_reset(socket: &impl AsRawFd) -> bool {
    reset_fd(socket.as_raw_fd())
}

/// [`was_reset`] on a descriptor the caller keeps open for the call.
pub(crate) fn reset_fd(fd: std::os::fd::RawFd) -> bool {
    #[allow(unsafe_code)]
    // SAFETY: `fd` is open for the duration of the call (the caller's
    // contract), and `borrowed` lives only in this body.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    matches!(
        SockRef::from(&borrowed).take_error(),
        Ok(Some(e)) if matches!(e.kind(), io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe)
    )
}

/// What a connected TCP socket's kernel knows of the bytes it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentState {
    /// Whether every byte sent was acknowledged, counted in bytes (so it
    /// survives the queue being cleared by a reset); `true` where the
    /// kernel does not count (before Linux 4.19). A reset acknowledges the
    /// bytes it answers too, so look at [`was_reset`] first.
    pub all_acked: bool,
    /// The smoothed round-trip time.
    pub rtt: std::time::Duration,
}

/// Reads `TCP_INFO`: whether the peer has acknowledged everything sent,
/// and the round-trip time. `None` when the socket is not TCP.
pub fn sent_state(socket: &impl AsRawFd) -> Option<SentState> {
    let mut info = MaybeUninit::<libc::tcp_info>::zeroed();
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    #[allow(unsafe_code)]
    // SAFETY: `info` is a writable `tcp_info` of `len` bytes, which is what
    // TCP_INFO fills (at most `len` bytes; the kernel reports how many),
    // and the descriptor is `socket`'s, borrowed for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return None;
    }
    #[allow(unsafe_code)]
    // SAFETY: zero-initialised, then filled by the kernel: every bit
    // pattern is a valid `tcp_info` (plain integers).
    let info = unsafe { info.assume_init() };
    Some(SentState {
        all_acked: info.tcpi_bytes_acked >= info.tcpi_bytes_sent.saturating_sub(info.tcpi_bytes_retrans),
        rtt: std::time::Duration::from_micros(u64::from(info.tcpi_rtt)),
    })
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        net::{TcpListener, TcpStream},
    };

    use super::*;

    #[test]
    fn tells_quiet_from_data_and_from_closed() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut server, _) = listener.accept().unwrap();
        assert!(is_quiet(&client));
        server.write_all(b"x").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!is_quiet(&client), "stray data");
        let client2 = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server2, _) = listener.accept().unwrap();
        drop(server2);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!is_quiet(&client2), "closed by the peer");
    }

    #[test]
    fn the_host_has_its_loopback_address() {
        assert!(host_addresses().contains(&"127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn tells_a_reset_behind_a_fin() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        assert!(!was_reset(&client));
        drop(server);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!was_reset(&client), "a FIN alone is no reset");
        assert_eq!(sent_state(&client).map(|s| s.all_acked), Some(true));
        // Bytes to the closed socket are answered with a reset.
        client.write_all(b"x").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(was_reset(&client));
    }

    #[test]
    fn bytes_an_open_socket_received_are_acknowledged() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_server, _) = listener.accept().unwrap();
        client.write_all(b"request").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert_eq!(sent_state(&client).map(|s| s.all_acked), Some(true));
        assert!(!was_reset(&client));
    }
}
