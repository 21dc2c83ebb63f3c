//! Per-worker free lists of I/O buffers.
//!
//! A connection holds buffers only while it is busy: a keep-alive
//! connection waiting for its next request, and an upstream connection
//! idle in the pool, give theirs back here, so ten thousand idle
//! connections cost no buffer memory and a busy worker allocates none.
//! Each worker is one thread, so the lists are thread-locals: no lock, no
//! sharing, and nothing to wire through the engine.

use std::{cell::RefCell, thread::LocalKey};

use bytes::BytesMut;

/// Buffers kept per worker and kind; more are freed.
const MAX_KEPT: usize = 1024;

thread_local! {
    static READ_BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
    static WRITE_BUFFERS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// Room a read buffer has past the configured size, for a typical head: a
/// response head and a body of exactly the buffer size arrive in one read
/// (the engine reads `size + HEAD_ROOM` for response heads).
pub(crate) const HEAD_ROOM: usize = 4096;

/// An empty read buffer with room for at least `size + HEAD_ROOM` bytes:
/// every read buffer is made at that one size, so none has to grow (and
/// the free list does not drift to doubled buffers).
pub(crate) fn take_read(size: usize) -> BytesMut {
    let found = READ_BUFFERS.with(|list| list.borrow_mut().pop());
    match found {
        Some(mut buf) => {
            buf.clear();
            buf.reserve(size + HEAD_ROOM);
            buf
        }
        None => BytesMut::with_capacity(size + HEAD_ROOM),
    }
}

/// Gives back a read buffer whose contents are no longer needed.
pub(crate) fn give_read(buf: BytesMut, size: usize) {
    let capacity = buf.capacity();
    keep(&READ_BUFFERS, buf, capacity, size);
}

/// An empty write buffer with room for at least `size` bytes.
pub(crate) fn take_write(size: usize) -> Vec<u8> {
    let found = WRITE_BUFFERS.with(|list| list.borrow_mut().pop());
    let mut buf = found.unwrap_or_default();
    buf.clear();
    buf.reserve(size);
    buf
}

/// Gives back a write buffer.
pub(crate) fn give_write(buf: Vec<u8>, size: usize) {
    let capacity = buf.capacity();
    keep(&WRITE_BUFFERS, buf, capacity, size);
}

/// Puts `buf` on `list` unless it holds nothing, grew far past the usual
/// `size` (a huge head, a long transfer), or the list is full.
fn keep<B: 'static>(list: &'static LocalKey<RefCell<Vec<B>>>, buf: B, capacity: usize, size: usize) {
    if capacity == 0 || capacity > 4 * size {
        return;
    }
    list.with(|list| {
        let mut list = list.borrow_mut();
        if list.len() < MAX_KEPT {
            list.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_not_reallocated() {
        let a = take_read(4096);
        let ptr = a.as_ptr();
        give_read(a, 4096);
        let b = take_read(4096);
        assert_eq!(b.as_ptr(), ptr, "the same allocation comes back");
        assert!(b.is_empty() && b.capacity() >= 4096);
        // A buffer that grew far too large is not kept.
        give_read(BytesMut::with_capacity(1 << 20), 4096);
        let c = take_read(4096);
        assert!(c.capacity() < 1 << 20);

        let w = take_write(100);
        let wptr = w.as_ptr();
        give_write(w, 100);
        let again = take_write(100);
        assert_eq!(again.as_ptr(), wptr);
    }
}
