//! The only unsafe code of the TLS crate: moving bytes between rustls's
//! slices and the raw buffers of monoio's ownership-passing IO traits
//! (`IoBuf`, `IoBufMut` and their vectored forms hand out pointers, not
//! slices).
#![allow(unsafe_code)]

use std::io::{self, BufRead, IoSlice};

use monoio::buf::{IoBuf, IoBufMut, IoVecBuf, IoVecBufMut};

/// The initialised bytes of `buf`.
pub(crate) fn bytes_of<T: IoBuf>(buf: &T) -> &[u8] {
    // SAFETY: `IoBuf` promises that `read_ptr` points at `bytes_init`
    // initialised bytes that stay valid while `buf` is borrowed.
    unsafe { std::slice::from_raw_parts(buf.read_ptr(), buf.bytes_init()) }
}

/// Copies what `src` has buffered into `buf` (from its start, as a read
/// does), marking the bytes initialised. `Ok(0)` means `src` ended;
/// `WouldBlock` that it has nothing yet.
pub(crate) fn fill<T: IoBufMut>(buf: &mut T, src: &mut impl BufRead) -> io::Result<usize> {
    let room = buf.bytes_total();
    if room == 0 {
        return Ok(0);
    }
    let available = src.fill_buf()?;
    let n = available.len().min(room);
    // SAFETY: `write_ptr` points at `bytes_total` writable bytes owned by
    // `buf`, and `available` is a separate allocation (rustls's buffer).
    unsafe {
        std::ptr::copy_nonoverlapping(available.as_ptr(), buf.write_ptr(), n);
        buf.set_init(n);
    }
    src.consume(n);
    Ok(n)
}

/// At most this many pieces of a vectored write are taken in one call.
const MAX_PIECES: usize = 16;

/// Calls `f` with the first pieces of `buf` as `IoSlice`s.
pub(crate) fn with_slices<T: IoVecBuf, R>(buf: &T, f: impl FnOnce(&[IoSlice<'_>]) -> R) -> R {
    // SAFETY: `IoVecBuf` promises `read_iovec_len` valid iovecs at
    // `read_iovec_ptr`, each describing initialised memory that lives as
    // long as `buf`.
    let iovecs = unsafe { std::slice::from_raw_parts(buf.read_iovec_ptr(), buf.read_iovec_len()) };
    let mut slices = [IoSlice::new(&[]); MAX_PIECES];
    let mut count = 0;
    for iov in iovecs.iter().take(MAX_PIECES) {
        // SAFETY: see above; the slice does not outlive `buf`'s borrow.
        let piece = unsafe { std::slice::from_raw_parts(iov.iov_base as *const u8, iov.iov_len) };
        slices[count] = IoSlice::new(piece);
        count += 1;
    }
    f(&slices[..count])
}

/// Copies what `src` has buffered into the pieces of `buf`, in order,
/// marking the bytes initialised; as [`fill`] otherwise.
pub(crate) fn fill_vectored<T: IoVecBufMut>(buf: &mut T, src: &mut impl BufRead) -> io::Result<usize> {
    let count = buf.write_iovec_len();
    let ptr = buf.write_iovec_ptr();
    let mut total = 0;
    for i in 0..count {
        // SAFETY: `IoVecBufMut` promises `write_iovec_len` valid iovecs at
        // `write_iovec_ptr`, each describing writable memory owned by `buf`.
        let iov = unsafe { *ptr.add(i) };
        let mut done = 0;
        while done < iov.iov_len {
            let available = match src.fill_buf() {
                Ok(a) => a,
                // What was copied is returned; the error comes again.
                Err(_) if total > 0 => break,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                break;
            }
            let n = available.len().min(iov.iov_len - done);
            // SAFETY: as above; `available` is rustls's own buffer.
            unsafe {
                std::ptr::copy_nonoverlapping(available.as_ptr(), (iov.iov_base as *mut u8).add(done), n);
            }
            src.consume(n);
            done += n;
            total += n;
        }
        if done < iov.iov_len {
            break;
        }
    }
    // SAFETY: `total` bytes from the start of the pieces were written above.
    unsafe { buf.set_init(total) };
    Ok(total)
}
