//! Zero-copy moves between two TCP sockets: socket → pipe → socket with
//! `splice(2)`, so the bytes of a large body or a tunnel never enter user
//! space (the pipe holds references to the kernel's pages).
//!
//! The calls are made directly, non-blocking, and a transfer waits for
//! readiness only when a call would block. io_uring's own splice operation
//! is not used: it always runs on a kernel worker thread (measured at 0.7
//! of copying's rate). Under io_uring monoio's sockets are blocking, so a
//! [`NonBlocking`] guard makes them non-blocking while they splice.
//!
//! Only plain TCP sockets take part ([`SpliceSocket`]); a stream that
//! transforms its bytes (TLS) is copied.
//!
//! This module owns the worker's free list of pipes and the one-way
//! transfer state machine, [`OneWay`]; callers do the waiting, each with
//! its own deadlines.
#![allow(unsafe_code)]

use std::{
    cell::RefCell,
    future::Future,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use monoio::net::TcpStream;

/// A stream that can take part in a splice: a plain TCP socket. Streams
/// that transform their bytes (TLS) keep the defaults and are copied.
pub trait SpliceSocket {
    /// The socket whose bytes are the stream's bytes, if there is one.
    fn splice_fd(&self) -> Option<RawFd> {
        None
    }

    /// Waits until a splice from (`write` false) or to (`write` true) the
    /// socket may make progress. It may return early; the splice then
    /// reports that it would block and the caller waits again.
    fn splice_ready(&self, write: bool) -> impl Future<Output = io::Result<()>> {
        let _ = write;
        std::future::ready(Ok(()))
    }
}

impl SpliceSocket for TcpStream {
    fn splice_fd(&self) -> Option<RawFd> {
        Some(self.as_raw_fd())
    }

    async fn splice_ready(&self, write: bool) -> io::Result<()> {
        // Not relaxed: on epoll a relaxed wait trusts readiness that the
        // splice's EAGAIN (made outside monoio) did not clear, and spins.
        if write {
            self.writable(false).await
        } else {
            self.readable(false).await
        }
    }
}

/// Makes a socket non-blocking until dropped, then gives it back its
/// flags (monoio's sockets are blocking under io_uring, and its reads and
/// writes rely on that; under epoll they are already non-blocking).
pub(crate) struct NonBlocking {
    fd: RawFd,
    restore: Option<libc::c_int>,
}

impl NonBlocking {
    pub(crate) fn set(fd: RawFd) -> io::Result<Self> {
        // SAFETY: F_GETFL takes no argument; `fd` is a socket the caller
        // holds open.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        if flags & libc::O_NONBLOCK != 0 {
            return Ok(Self { fd, restore: None });
        }
        set_status_flags(fd, flags | libc::O_NONBLOCK)?;
        Ok(Self {
            fd,
            restore: Some(flags),
        })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        if let Some(flags) = self.restore {
            let _ = set_status_flags(self.fd, flags);
        }
    }
}

fn set_status_flags(fd: RawFd, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: F_SETFL takes an integer argument; `fd` is a socket the
    // caller holds open.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The pipe size asked for: a 1 MiB body moves in eight round trips rather
/// than sixteen. The kernel may grant less (`pipe-max-size`, and past
/// `pipe-user-pages-soft` a user's new pipes get two pages); splicing
/// works with any size.
const PIPE_SIZE: libc::c_int = 128 * 1024;
/// Pipes a worker keeps for reuse. A transfer holds a pipe only while
/// bytes are in it (an idle tunnel holds none), so few are open at once.
const FREE_PIPES_KEPT: usize = 8;
/// The most bytes one [`OneWay::step`] moves before it lets the worker's
/// other tasks run.
const STEP_BUDGET: u64 = 1 << 20;
/// The read that steps over what splice cannot (see [`OneWay::step`]).
const STALL_READ: usize = 4096;

thread_local! {
    static FREE_PIPES: RefCell<Vec<Pipe>> = const { RefCell::new(Vec::new()) };
}

/// A non-blocking pipe and the bytes it holds.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    capacity: usize,
}

impl Pipe {
    fn take() -> io::Result<Pipe> {
        if let Some(pipe) = FREE_PIPES.with(|free| free.borrow_mut().pop()) {
            return Ok(pipe);
        }
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned
        // by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ takes an integer; a refusal leaves the
        // default size, which F_GETPIPE_SZ then reports.
        let granted = unsafe {
            libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE);
            libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ)
        };
        Ok(Pipe {
            read,
            write,
            capacity: usize::try_from(granted).unwrap_or(64 * 1024).max(4096),
        })
    }

    /// Back to the free list; only an empty pipe may be reused.
    fn give(self) {
        FREE_PIPES.with(|free| {
            let mut free = free.borrow_mut();
            if free.len() < FREE_PIPES_KEPT {
                free.push(self);
            }
        });
    }
}

/// Shuts down a socket's sending side (a half-close); errors mean the
/// socket is already gone, which ends the transfer anyway.
pub(crate) fn shutdown_write(fd: RawFd) {
    // SAFETY: shutdown takes a descriptor the caller holds open.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
    }
}

/// One splice call; `Ok(None)` when it would block.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<Option<usize>> {
    // SAFETY: plain descriptors and null offsets (both ends are streams).
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let error = io::Error::last_os_error();
    if error.kind() == io::ErrorKind::WouldBlock {
        Ok(None)
    } else {
        Err(error)
    }
}

/// What a [`OneWay`] transfer needs before it can go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blocked {
    /// The source has nothing to read.
    Read,
    /// The destination takes nothing more for now.
    Write,
    /// Nothing: the step used its budget; let other tasks run first.
    Turn,
    /// The transfer is over: its length moved, or the source ended (see
    /// [`OneWay::source_ended`]).
    Done,
}

/// Which end of a transfer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Reading from the source.
    Source,
    /// Writing to the destination.
    Destination,
}

/// One direction of a splice transfer, from one socket to another, of at
/// most a given length.
///
/// It holds a pipe from the worker's free list only while bytes are in it.
pub(crate) struct OneWay {
    pipe: Option<Pipe>,
    from: RawFd,
    to: RawFd,
    /// Bytes the source may still give.
    remaining: u64,
    /// Bytes in the pipe, read but not yet written.
    in_pipe: usize,
    /// Bytes written to the destination.
    moved: u64,
    /// The last read took less than it asked: the source is likely dry,
    /// so wait for it rather than make a call that would block.
    dry: bool,
    /// The last step ended waiting for the source to be readable.
    waited_for_read: bool,
    ended: bool,
}

impl OneWay {
    /// A transfer of at most `limit` bytes (`u64::MAX`: until the source
    /// ends). Fails when no pipe can be had (out of descriptors): the
    /// caller then copies instead.
    pub(crate) fn new(from: RawFd, to: RawFd, limit: u64) -> io::Result<Self> {
        Ok(Self {
            pipe: Some(Pipe::take()?),
            from,
            to,
            remaining: limit,
            in_pipe: 0,
            moved: 0,
            dry: false,
            waited_for_read: false,
            ended: false,
        })
    }

    /// The source and destination sockets.
    pub(crate) fn ends(&self) -> (RawFd, RawFd) {
        (self.from, self.to)
    }

    /// Bytes written to the destination so far.
    pub(crate) fn moved(&self) -> u64 {
        self.moved
    }

    /// Whether the source reached its end of stream.
    pub(crate) fn source_ended(&self) -> bool {
        self.ended
    }

    /// Moves what can move without blocking, up to a budget; says what it
    /// waits for.
    ///
    /// When the source was reported readable and splice still finds
    /// nothing, the data starts at TCP urgent data, which splice will not
    /// pass (and poll keeps reporting): one plain read steps over it, as a
    /// copying proxy would, so the transfer cannot spin.
    pub(crate) fn step(&mut self) -> Result<Blocked, (End, io::Error)> {
        let after_wait = std::mem::take(&mut self.waited_for_read);
        let budget_end = self.moved + STEP_BUDGET;
        loop {
            if self.in_pipe > 0 {
                let pipe = self.pipe.as_ref().expect("a pipe holds the bytes");
                match splice(pipe.read.as_raw_fd(), self.to, self.in_pipe)
                    .map_err(|e| (End::Destination, e))?
                {
                    Some(0) => return Err((End::Destination, io::ErrorKind::WriteZero.into())),
                    Some(n) => {
                        self.in_pipe -= n;
                        self.moved += n as u64;
                    }
                    None => return Ok(Blocked::Write),
                }
                continue;
            }
            if self.remaining == 0 || self.ended {
                self.release_pipe();
                return Ok(Blocked::Done);
            }
            if self.moved >= budget_end {
                return Ok(Blocked::Turn);
            }
            if std::mem::take(&mut self.dry) {
                return Ok(self.wait_for_read());
            }
            let pipe = match self.pipe.take() {
                Some(pipe) => pipe,
                None => Pipe::take().map_err(|e| (End::Source, e))?,
            };
            let want = self.remaining.min(pipe.capacity as u64) as usize;
            let read = splice(self.from, pipe.write.as_raw_fd(), want);
            let read = match read {
                Ok(None) if after_wait => step_over(self.from, &pipe, want),
                other => other,
            };
            self.pipe = Some(pipe);
            match read.map_err(|e| (End::Source, e))? {
                Some(0) => self.ended = true,
                Some(n) => {
                    self.remaining -= n as u64;
                    self.in_pipe = n;
                    self.dry = n < want;
                }
                None => return Ok(self.wait_for_read()),
            }
        }
    }

    /// Gives the (empty) pipe back while the transfer waits for its source.
    fn wait_for_read(&mut self) -> Blocked {
        self.release_pipe();
        self.waited_for_read = true;
        Blocked::Read
    }

    fn release_pipe(&mut self) {
        if self.in_pipe == 0 {
            if let Some(pipe) = self.pipe.take() {
                pipe.give();
            }
        }
    }
}

/// Reads up to 4 KiB with a plain `recv` (which steps over urgent data)
/// and puts them into the empty pipe.
fn step_over(from: RawFd, pipe: &Pipe, want: usize) -> io::Result<Option<usize>> {
    let mut buf = [0u8; STALL_READ];
    let len = want.min(STALL_READ);
    // SAFETY: `buf` has room for `len` bytes.
    let got = unsafe { libc::recv(from, buf.as_mut_ptr().cast(), len, libc::MSG_DONTWAIT) };
    if got < 0 {
        let error = io::Error::last_os_error();
        return if error.kind() == io::ErrorKind::WouldBlock {
            Ok(None)
        } else {
            Err(error)
        };
    }
    let got = got as usize;
    if got == 0 {
        return Ok(Some(0));
    }
    // The pipe is empty and holds at least a page: the write is whole.
    // SAFETY: `buf[..got]` is initialised.
    let put = unsafe { libc::write(pipe.write.as_raw_fd(), buf.as_ptr().cast(), got) };
    if put != got as isize {
        return Err(io::Error::other("a pipe did not take a 4 KiB write"));
    }
    Ok(Some(got))
}

impl Drop for OneWay {
    fn drop(&mut self) {
        // A pipe that still holds bytes is closed with them.
        self.release_pipe();
    }
}

/// Lets the worker's other tasks run once: wakes itself and yields.
pub(crate) async fn yield_turn() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if std::mem::replace(&mut yielded, true) {
            std::task::Poll::Ready(())
        } else {
            cx.waker().wake_by_ref();
            std::task::Poll::Pending
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
        os::fd::AsRawFd,
        thread,
    };

    use super::{Blocked, NonBlocking, OneWay};

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (b, _) = listener.accept().unwrap();
        (a, b)
    }

    fn wait(fd: i32, write: bool) {
        let mut pfd = libc::pollfd {
            fd,
            events: if write { libc::POLLOUT } else { libc::POLLIN },
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, 10_000) };
        assert_eq!(ready, 1, "socket never became ready");
    }

    /// Runs a transfer to its end, waiting with poll(2) as a driver would.
    fn run(way: &mut OneWay, from: i32, to: i32) {
        loop {
            match way.step().map_err(|(_, e)| e).unwrap() {
                Blocked::Done => return,
                Blocked::Read => wait(from, false),
                Blocked::Write => wait(to, true),
                Blocked::Turn => {}
            }
        }
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn moves_exactly_its_limit_and_leaves_what_follows_unread() {
        let (mut sender, source) = pair();
        let (dest, mut receiver) = pair();
        // Not a multiple of any pipe size: the last read must ask for less.
        const LIMIT: usize = (3 << 20) + 1234;
        let body = pattern(LIMIT);
        let sent = body.clone();
        let writer = thread::spawn(move || {
            sender.write_all(&sent).unwrap();
            sender.write_all(b"NEXT").unwrap();
            sender
        });
        let reader = thread::spawn(move || {
            let mut got = vec![0u8; LIMIT];
            receiver.read_exact(&mut got).unwrap();
            got
        });
        let _src = NonBlocking::set(source.as_raw_fd()).unwrap();
        let _dst = NonBlocking::set(dest.as_raw_fd()).unwrap();
        let mut way = OneWay::new(source.as_raw_fd(), dest.as_raw_fd(), LIMIT as u64).unwrap();
        run(&mut way, source.as_raw_fd(), dest.as_raw_fd());
        assert_eq!(way.moved(), LIMIT as u64);
        assert!(!way.source_ended());
        assert!(reader.join().unwrap() == body, "bytes changed in transit");
        let _sender = writer.join().unwrap();
        drop(_src);
        let mut next = [0u8; 4];
        (&source).read_exact(&mut next).unwrap();
        assert_eq!(&next, b"NEXT", "the bytes past the limit stay in the source");
    }

    #[test]
    fn reports_a_source_that_ends_early() {
        let (mut sender, source) = pair();
        let (dest, mut receiver) = pair();
        sender.write_all(&pattern(100_000)).unwrap();
        drop(sender);
        let _src = NonBlocking::set(source.as_raw_fd()).unwrap();
        let _dst = NonBlocking::set(dest.as_raw_fd()).unwrap();
        let mut way = OneWay::new(source.as_raw_fd(), dest.as_raw_fd(), 1 << 20).unwrap();
        run(&mut way, source.as_raw_fd(), dest.as_raw_fd());
        assert!(way.source_ended());
        assert_eq!(way.moved(), 100_000);
        drop(dest);
        let mut got = Vec::new();
        receiver.read_to_end(&mut got).unwrap();
        assert!(got == pattern(100_000));
    }

    #[test]
    fn non_blocking_guard_gives_back_the_flags() {
        let (a, _b) = pair();
        let flags = |fd| {
            // SAFETY: F_GETFL on an open socket.
            unsafe { libc::fcntl(fd, libc::F_GETFL) }
        };
        let before = flags(a.as_raw_fd());
        assert_eq!(before & libc::O_NONBLOCK, 0);
        {
            let _guard = NonBlocking::set(a.as_raw_fd()).unwrap();
            assert_ne!(flags(a.as_raw_fd()) & libc::O_NONBLOCK, 0);
        }
        assert_eq!(flags(a.as_raw_fd()), before, "blocking again");
        a.set_nonblocking(true).unwrap();
        {
            let _guard = NonBlocking::set(a.as_raw_fd()).unwrap();
        }
        assert_ne!(
            flags(a.as_raw_fd()) & libc::O_NONBLOCK,
            0,
            "a non-blocking socket stays so"
        );
    }
}
