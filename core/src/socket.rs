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
    #[allow(unsafe_code)]
    // SAFETY: the descriptor belongs to `socket`, which stays borrowed (so
    // open and not reused) for as long as `fd` lives: this function's body.
    let fd = unsafe { BorrowedFd::borrow_raw(socket.as_raw_fd()) };
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    match SockRef::from(&fd).recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT) {
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        Ok(_) => false,
    }
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
}
