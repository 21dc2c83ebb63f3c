//! A head and the body bytes that arrived with it, sent in one `writev`
//! without copying the body.
//!
//! Sending a head and its body in two writes costs a system call (and, on
//! loopback, the receiver's processing) per message; copying a large body
//! behind the head costs a memcpy. [`HeadAndBody`] hands both buffers to
//! the kernel as two iovecs instead. This is the only module of the crate
//! with `unsafe` code: monoio's `IoVecBuf` is an unsafe trait.
#![allow(unsafe_code)]

use std::io;

use bytes::{Buf, Bytes};
use monoio::{buf::IoVecBuf, io::AsyncWriteRent};

use crate::io::write_all;

/// A head and a body slice, with the iovecs that describe them.
pub(crate) struct HeadAndBody {
    head: Vec<u8>,
    body: Bytes,
    /// Boxed so that its address does not change while the kernel reads it.
    iov: Box<[libc::iovec; 2]>,
}

impl HeadAndBody {
    pub(crate) fn new(head: Vec<u8>, body: Bytes) -> Self {
        let iov = Box::new([
            libc::iovec {
                iov_base: head.as_ptr() as *mut libc::c_void,
                iov_len: head.len(),
            },
            libc::iovec {
                iov_base: body.as_ptr() as *mut libc::c_void,
                iov_len: body.len(),
            },
        ]);
        Self { head, body, iov }
    }

    fn len(&self) -> usize {
        self.head.len() + self.body.len()
    }
}

// SAFETY: the iovecs point into `head` (a Vec's heap allocation) and `body`
// (a Bytes' shared buffer), both owned by this value and never changed or moved out
// while it exists: moving the struct moves only the pointers, not the heap
// data, and the iovec array itself is boxed. So while the runtime owns the
// value, the pointer and the two iovecs stay valid and unchanged.
unsafe impl IoVecBuf for HeadAndBody {
    fn read_iovec_ptr(&self) -> *const libc::iovec {
        self.iov.as_ptr()
    }

    fn read_iovec_len(&self) -> usize {
        2
    }
}

/// Writes `head` then `body` with one `writev` (and plain writes for the
/// rest if the kernel took only part). Gives the head buffer back.
pub(crate) async fn write_head_and_body<W: AsyncWriteRent>(
    io: &mut W,
    head: Vec<u8>,
    body: Bytes,
) -> (io::Result<()>, Vec<u8>) {
    let gathered = HeadAndBody::new(head, body);
    let total = gathered.len();
    let (result, gathered) = io.writev(gathered).await;
    let HeadAndBody {
        mut head, mut body, ..
    } = gathered;
    let written = match result {
        Ok(n) => n,
        Err(e) => return (Err(e), head),
    };
    if written >= total {
        return (Ok(()), head);
    }
    // A short write: finish with plain writes.
    if written < head.len() {
        let rest = head.split_off(written);
        let (result, _) = write_all(io, rest).await;
        if let Err(e) = result {
            return (Err(e), head);
        }
    } else {
        body.advance(written - head.len());
    }
    if !body.is_empty() {
        let (result, _) = write_all(io, body).await;
        if let Err(e) = result {
            return (Err(e), head);
        }
    }
    (Ok(()), head)
}
