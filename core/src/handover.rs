//! Handing listening sockets from a running ringway to its replacement
//! (a binary upgrade), over a Unix socket with `SCM_RIGHTS`, as pingora
//! and Sozu do: the new process takes the very sockets, accept queues and
//! all, so no connection is refused while one process gives way to the
//! other.
//!
//! The message: a length-prefixed text header (`ringway-handover 1`, then a
//! line `NAME ADDR COUNT` per listener), then the sockets, in that order,
//! in batches of at most [`FDS_PER_MESSAGE`].

use std::{
    io::{self, Read, Write},
    net::{SocketAddr, TcpListener},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::net::UnixStream,
    },
};

/// The most descriptors one message carries (the kernel's limit is 253).
const FDS_PER_MESSAGE: usize = 128;

/// The most bytes a header may take.
const MAX_HEADER: usize = 1 << 20;

/// One listener's sockets, as handed over.
#[derive(Debug)]
pub struct Inherited {
    /// Its name in the old process's configuration.
    pub name: String,
    /// The address it is bound to.
    pub addr: SocketAddr,
    /// Its sockets (one per worker of the old process).
    pub sockets: Vec<TcpListener>,
}

/// Sends `listeners` (name, bound address, sockets) on `stream`.
pub fn send(stream: &mut UnixStream, listeners: &[(String, SocketAddr, Vec<RawFd>)]) -> io::Result<()> {
    let mut header = String::from("ringway-handover 1\n");
    for (name, addr, fds) in listeners {
        if name.contains(char::is_whitespace) {
            return Err(io::Error::other(format!("listener name {name:?} has a space")));
        }
        header.push_str(&format!("{name} {addr} {}\n", fds.len()));
    }
    stream.write_all(&(header.len() as u32).to_be_bytes())?;
    stream.write_all(header.as_bytes())?;
    let all: Vec<RawFd> = listeners
        .iter()
        .flat_map(|(_, _, fds)| fds.iter().copied())
        .collect();
    for batch in all.chunks(FDS_PER_MESSAGE) {
        send_fds(stream, batch)?;
    }
    Ok(())
}

/// Receives what [`send`] sent.
pub fn receive(stream: &mut UnixStream) -> io::Result<Vec<Inherited>> {
    let mut length = [0u8; 4];
    stream.read_exact(&mut length)?;
    let length = u32::from_be_bytes(length) as usize;
    if length > MAX_HEADER {
        return Err(io::Error::other("a handover header too long"));
    }
    let mut header = vec![0u8; length];
    stream.read_exact(&mut header)?;
    let header =
        String::from_utf8(header).map_err(|_| io::Error::other("a handover header that is not text"))?;
    let mut lines = header.lines();
    if lines.next() != Some("ringway-handover 1") {
        return Err(io::Error::other("not a ringway handover (or another version)"));
    }
    let mut listeners = Vec::new();
    let mut total = 0;
    for line in lines {
        let mut parts = line.split(' ');
        let (Some(name), Some(addr), Some(count), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(io::Error::other(format!(
                "a handover line that does not parse: {line:?}"
            )));
        };
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| io::Error::other(format!("a bad address in {line:?}")))?;
        let count: usize = count
            .parse()
            .map_err(|_| io::Error::other(format!("a bad count in {line:?}")))?;
        total += count;
        listeners.push((name.to_owned(), addr, count));
    }
    let mut fds = Vec::with_capacity(total);
    while fds.len() < total {
        let batch = receive_fds(stream, FDS_PER_MESSAGE)?;
        if batch.is_empty() {
            return Err(io::Error::other("the handover ended before its sockets"));
        }
        fds.extend(batch);
    }
    let mut fds = fds.into_iter();
    Ok(listeners
        .into_iter()
        .map(|(name, addr, count)| Inherited {
            name,
            addr,
            sockets: fds.by_ref().take(count).map(TcpListener::from).collect(),
        })
        .collect())
}

/// The control-message buffer for `n` descriptors, aligned for cmsghdr.
fn control_buffer(n: usize) -> Vec<u64> {
    #[allow(unsafe_code)]
    // SAFETY: CMSG_SPACE only computes a size.
    let bytes = unsafe { libc::CMSG_SPACE((n * std::mem::size_of::<RawFd>()) as u32) } as usize;
    vec![0u64; bytes.div_ceil(8)]
}

fn send_fds(stream: &UnixStream, fds: &[RawFd]) -> io::Result<()> {
    let mut byte = [b'f'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = control_buffer(fds.len());
    let data_len = std::mem::size_of_val(fds);
    #[allow(unsafe_code)]
    // SAFETY: msg points at live buffers (one byte, the control buffer sized
    // by CMSG_SPACE for these descriptors); CMSG_FIRSTHDR of such a buffer is
    // non-null, and CMSG_DATA has room for `data_len` bytes.
    let sent = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(control.as_slice()) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data_len as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr().cast::<u8>(), libc::CMSG_DATA(cmsg), data_len);
        libc::sendmsg(stream.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn receive_fds(stream: &UnixStream, max: usize) -> io::Result<Vec<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = control_buffer(max);
    let mut fds = Vec::new();
    #[allow(unsafe_code)]
    // SAFETY: msg points at live buffers; the kernel fills the control
    // buffer with SCM_RIGHTS messages whose data are descriptors now ours
    // (MSG_CMSG_CLOEXEC), each taken once into an OwnedFd.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(control.as_slice()) as _;
        let n = libc::recvmsg(stream.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n == 0 {
            return Ok(fds);
        }
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg);
                let bytes = (*cmsg).cmsg_len as usize - (data as usize - cmsg as usize);
                for i in 0..bytes / std::mem::size_of::<RawFd>() {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(i));
                    fds.push(OwnedFd::from_raw_fd(fd));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            // The ones that did arrive close with `fds`.
            return Err(io::Error::other("the handover's descriptors were cut short"));
        }
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listening_sockets_cross_a_unix_socket_and_keep_their_queues() {
        let listeners: Vec<TcpListener> = (0..3)
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let addr = listeners[0].local_addr().expect("addr");
        // A connection waits in the first socket's queue before the handover.
        let mut waiting = std::net::TcpStream::connect(addr).expect("connect");
        waiting.write_all(b"queued").expect("send");
        let (mut old, mut new) = UnixStream::pair().expect("pair");
        let sent = vec![
            (
                "web".to_owned(),
                addr,
                vec![listeners[0].as_raw_fd(), listeners[1].as_raw_fd()],
            ),
            (
                "admin".to_owned(),
                listeners[2].local_addr().expect("addr"),
                vec![listeners[2].as_raw_fd()],
            ),
        ];
        send(&mut old, &sent).expect("send");
        drop(listeners);
        let got = receive(&mut new).expect("receive");
        assert_eq!(got.len(), 2);
        assert_eq!(
            (got[0].name.as_str(), got[0].addr, got[0].sockets.len()),
            ("web", addr, 2)
        );
        assert_eq!(got[1].sockets.len(), 1);
        // The queued connection is there to accept in the new process.
        let (mut accepted, _) = got[0].sockets[0].accept().expect("accept");
        let mut buf = [0u8; 6];
        accepted.read_exact(&mut buf).expect("read");
        assert_eq!(&buf, b"queued");
    }

    #[test]
    fn many_sockets_go_in_batches() {
        let listeners: Vec<TcpListener> = (0..(FDS_PER_MESSAGE + 5))
            .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .collect();
        let addr = listeners[0].local_addr().expect("addr");
        let (mut old, mut new) = UnixStream::pair().expect("pair");
        let fds = listeners.iter().map(AsRawFd::as_raw_fd).collect();
        let writer = std::thread::spawn(move || send(&mut old, &[("many".to_owned(), addr, fds)]));
        let got = receive(&mut new).expect("receive");
        writer.join().expect("thread").expect("send");
        assert_eq!(got[0].sockets.len(), FDS_PER_MESSAGE + 5);
    }
}
