//! Per-worker free lists of read buffers (in core's [`FreeList`], which
//! the engine keeps its connection slots and exchange blocks in too).
//!
//! A connection holds buffers only while it is busy: an upstream
//! connection idle in the pool gives its read buffer back here (a client
//! connection waiting for its next request gives back its whole slot, its
//! buffers with it: see the engine's `Slot`), so ten thousand idle
//! connections cost no buffer memory and a busy worker allocates none.
//! Each worker is one thread, so the lists are thread-locals: no lock, no
//! sharing, and nothing to wire through the engine.
//!
//! After a flood the lists would keep a thousand buffers each, and the
//! allocator would keep their pages: [`release_unused`], run by the worker
//! about once a second, frees the buffers no request took during the last
//! period (and the worker then hands the freed pages back to the system).

use std::{cell::RefCell, thread::LocalKey};

use bytes::BytesMut;

pub(crate) use ringway_core::FreeList;

thread_local! {
    static READ_BUFFERS: RefCell<FreeList<BytesMut>> = const { RefCell::new(FreeList::new()) };
}

/// Frees this worker's buffers that no request took since the last call
/// (a flood is over); returns whether any were freed, so that the caller
/// hands the memory back to the system. Meant to run about once a second
/// per worker.
pub(crate) fn release_unused() -> bool {
    READ_BUFFERS.with(|l| l.borrow_mut().trim()) > 0
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

/// Whether a buffer of `capacity` grew far past the usual `size` (a huge
/// head, a long transfer): such a buffer is freed, not kept for reuse.
pub(crate) fn grew_too_large(capacity: usize, size: usize) -> bool {
    capacity > 4 * size.max(1)
}

/// Puts `buf` on `list` unless it is smaller than the usual `size` (a
/// small head buffer), grew far past it, or the list is full.
fn keep<B: 'static>(list: &'static LocalKey<RefCell<FreeList<B>>>, buf: B, capacity: usize, size: usize) {
    if capacity < size.max(1) || grew_too_large(capacity, size) {
        return;
    }
    list.with(|list| list.borrow_mut().push(buf));
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
        // Nor one smaller than the usual size.
        give_read(BytesMut::with_capacity(100), 4096);
        assert!(take_read(4096).capacity() >= 4096);
    }

    #[test]
    fn buffers_unused_for_a_period_are_freed() {
        let flood: Vec<_> = (0..200).map(|_| take_read(4096)).collect();
        for b in flood {
            give_read(b, 4096);
        }
        let kept = || READ_BUFFERS.with(|l| l.borrow().len());
        release_unused();
        let after_flood = kept();
        assert!(
            after_flood >= 200,
            "the period saw them all in use: {after_flood}"
        );
        // A quiet period: the ones not taken are freed, down to the floor.
        let b = take_read(4096);
        give_read(b, 4096);
        release_unused();
        let floor = ringway_core::free_list::MIN_KEPT;
        assert!(kept() <= floor + 1, "{}", kept());
        assert!(kept() >= floor);
    }
}
