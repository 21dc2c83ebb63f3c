//! The bodies of responses the proxy holds (a cache's): small ones in
//! memory ([`Bytes`], shared by every hit), large ones in a memory-backed
//! file (`memfd_create(2)`), which is sent to a plain TCP client with
//! `sendfile(2)`: its pages go to the socket by reference, never copied
//! through user space. TLS clients, which need the bytes, read it in
//! pieces.
#![allow(unsafe_code)]

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use bytes::Bytes;

/// Bodies at least this long are kept in a file: below it, a copy costs
/// less than the system calls of a `sendfile`.
pub const FILE_BODY_ABOVE: usize = 64 * 1024;

/// A held body.
#[derive(Debug, Clone)]
pub enum HeldBody {
    /// In memory.
    Memory(Bytes),
    /// In a memory-backed file.
    File(Arc<FileBody>),
}

impl HeldBody {
    /// A body holding `bytes`: in a file when it is long enough and one
    /// can be made, else in memory.
    pub fn keep(bytes: Bytes) -> Self {
        if bytes.len() >= FILE_BODY_ABOVE {
            if let Ok(file) = FileBody::with_contents(&bytes) {
                return HeldBody::File(Arc::new(file));
            }
        }
        HeldBody::Memory(bytes)
    }

    /// Its length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            HeldBody::Memory(bytes) => bytes.len() as u64,
            HeldBody::File(file) => file.len,
        }
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether both are the same bytes (the same allocation or file).
    pub(crate) fn same(&self, other: &Self) -> bool {
        match (self, other) {
            (HeldBody::Memory(a), HeldBody::Memory(b)) => a == b,
            (HeldBody::File(a), HeldBody::File(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl From<Bytes> for HeldBody {
    fn from(bytes: Bytes) -> Self {
        HeldBody::Memory(bytes)
    }
}

/// A body in a file: an anonymous memory-backed one (held open), or one
/// of a cache's disk tier (the body first, at offset 0), opened for each
/// response that sends it, so that a disk of small responses holds no
/// descriptor per response.
#[derive(Debug)]
pub struct FileBody {
    fd: Option<OwnedFd>,
    len: u64,
    path: Option<PathBuf>,
}

/// A body's file, open for one response.
#[derive(Debug)]
pub(crate) struct OpenBody<'a> {
    fd: RawFd,
    /// The descriptor opened for this response, closed with it.
    _owned: Option<OwnedFd>,
    _body: std::marker::PhantomData<&'a FileBody>,
}

impl FileBody {
    /// A new file holding `contents`.
    pub fn with_contents(contents: &[u8]) -> io::Result<Self> {
        // SAFETY: the name is a NUL-terminated string; the flags are valid.
        let fd = unsafe { libc::memfd_create(c"ringway-body".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just opened and is owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut written = 0;
        while written < contents.len() {
            let rest = &contents[written..];
            // SAFETY: `rest` is valid for `rest.len()` bytes.
            let n = unsafe {
                libc::pwrite(
                    fd.as_raw_fd(),
                    rest.as_ptr().cast(),
                    rest.len(),
                    written as libc::off_t,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            written += n as usize;
        }
        Ok(Self {
            fd: Some(fd),
            len: contents.len() as u64,
            path: None,
        })
    }

    /// The first `len` bytes of the file at `path`.
    pub fn on_disk(len: u64, path: PathBuf) -> Self {
        Self {
            fd: None,
            len,
            path: Some(path),
        }
    }

    /// A disk tier's body opened now, for one response (`None` for a body
    /// whose file is held open already).
    pub(crate) fn opened(&self) -> io::Result<Option<FileBody>> {
        match (&self.fd, &self.path) {
            (None, Some(path)) => Ok(Some(FileBody {
                fd: Some(OwnedFd::from(std::fs::File::open(path)?)),
                len: self.len,
                path: None,
            })),
            _ => Ok(None),
        }
    }

    /// Its file, open for sending.
    pub(crate) fn open(&self) -> io::Result<OpenBody<'_>> {
        let owned = match (&self.fd, &self.path) {
            (Some(fd), _) => {
                return Ok(OpenBody {
                    fd: fd.as_raw_fd(),
                    _owned: None,
                    _body: std::marker::PhantomData,
                })
            }
            (None, Some(path)) => OwnedFd::from(std::fs::File::open(path)?),
            (None, None) => return Err(io::ErrorKind::NotFound.into()),
        };
        Ok(OpenBody {
            fd: owned.as_raw_fd(),
            _owned: Some(owned),
            _body: std::marker::PhantomData,
        })
    }

    /// Where it is on disk, for a disk tier's body.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Its length.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl OpenBody<'_> {
    /// Reads up to `buf.len()` bytes at `offset`; returns how many.
    pub(crate) fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        loop {
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
            let n =
                unsafe { libc::pread(self.fd, buf.as_mut_ptr().cast(), buf.len(), offset as libc::off_t) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Sends up to `len` bytes from `offset` to the non-blocking socket
    /// `to`; returns how many, or `None` when the socket is full.
    pub(crate) fn send_to(&self, to: RawFd, offset: u64, len: u64) -> io::Result<Option<usize>> {
        let mut at = offset as libc::off_t;
        let want = len.min(1 << 30) as usize;
        loop {
            // SAFETY: both descriptors are open; `at` is a valid offset.
            let n = unsafe { libc::sendfile(to, self.fd, &mut at, want) };
            if let Some(result) = nonblocking(n) {
                return result;
            }
        }
    }
}

/// What a non-blocking call that returned `n` did: its count, `None` when
/// it would have blocked, or its error; `None` outright when it was
/// interrupted and is to be made again.
fn nonblocking(n: isize) -> Option<io::Result<Option<usize>>> {
    if n >= 0 {
        return Some(Ok(Some(n as usize)));
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::Interrupted => None,
        io::ErrorKind::WouldBlock => Some(Ok(None)),
        _ => Some(Err(e)),
    }
}

/// Sends what it can of `bytes` to the socket `to` without waiting, with
/// `MSG_MORE` (more follows: the kernel holds a partial segment back);
/// returns how many, or `None` when the socket is full.
pub(crate) fn send_more(to: RawFd, bytes: &[u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: `bytes` is valid for `bytes.len()` bytes.
        let n = unsafe {
            libc::send(
                to,
                bytes.as_ptr().cast(),
                bytes.len(),
                libc::MSG_MORE | libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if let Some(result) = nonblocking(n) {
            return result;
        }
    }
}

/// Logs a disk tier's write error, at most once a minute: the response is
/// relayed and not stored (a full disk degrades to passing through).
pub(crate) fn note_disk_error(e: &io::Error) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST.load(Ordering::Relaxed);
    if now >= last + 60
        && LAST
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!("cache disk: {e}; responses pass through unstored until it has room");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_bodies_go_to_a_file_that_reads_back_whole() {
        let long = Bytes::from(vec![7u8; FILE_BODY_ABOVE + 5]);
        let held = HeldBody::keep(long.clone());
        let HeldBody::File(file) = &held else {
            panic!("a long body is kept in a file")
        };
        let file = file.open().expect("open");
        assert_eq!(held.len(), long.len() as u64);
        let mut back = vec![0u8; long.len()];
        let mut at = 0;
        while at < back.len() {
            at += file.read_at(&mut back[at..], at as u64).expect("read");
        }
        assert_eq!(back, long);
        assert!(matches!(
            HeldBody::keep(Bytes::from_static(b"short")),
            HeldBody::Memory(_)
        ));
    }

    #[test]
    fn a_file_body_is_sent_to_a_socket() {
        use std::io::Read;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut client = std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (server, _) = listener.accept().expect("accept");
        let file = FileBody::with_contents(b"0123456789").expect("file");
        let file = file.open().expect("open");
        let sent = file.send_to(server.as_raw_fd(), 3, 4).expect("send");
        assert_eq!(sent, Some(4));
        drop(server);
        let mut got = String::new();
        client.read_to_string(&mut got).expect("read");
        assert_eq!(got, "3456");
    }
}
