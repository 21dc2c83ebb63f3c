//! Per-worker recycled memory for the one large state boxed per request:
//! the exchange future.
//!
//! A request's exchange (routing, the attempts, the response) lives on the
//! heap so that an idle connection holds none of it. From the global
//! allocator that is a `malloc` and a `free` per request, past glibc's
//! per-thread cache at 2.3 KB; a worker instead keeps the blocks its
//! requests gave back and hands them out again, one free list per layout
//! (a few: one exchange type per mode). [`Recycled`] is the box; the lists
//! are trimmed with the buffer lists, so a flood's blocks are freed.
//!
//! The only `unsafe` is the box's own: allocating, placing the value,
//! pinning it where it was placed, dropping it once and freeing with the
//! layout it was allocated with.

#![allow(unsafe_code)]

use std::{
    alloc::{self, Layout},
    cell::RefCell,
    future::Future,
    marker::PhantomData,
    pin::Pin,
    ptr::NonNull,
    task::{Context, Poll},
};

use crate::buffers::FreeList;

/// A value on the heap, in a block from the worker's free list for its
/// layout, which it goes back to when the value is dropped. Like a `Box`,
/// the value never moves: a `Recycled` future is polled in place.
pub(crate) struct Recycled<T> {
    ptr: NonNull<T>,
    /// Owns a `T` (for the drop check and auto traits).
    _owns: PhantomData<T>,
}

impl<T> Recycled<T> {
    /// The value `make` returns, made straight into a recycled block (a
    /// new one when the list is empty): a value passed in would be built
    /// on the stack and copied over.
    #[inline]
    pub(crate) fn new_with(make: impl FnOnce() -> T) -> Self {
        let layout = Layout::new::<T>();
        let ptr = if layout.size() == 0 {
            NonNull::dangling()
        } else {
            take(layout).unwrap_or_else(|| allocate(layout)).cast::<T>()
        };
        // SAFETY: `ptr` is valid for writes of a `T` (a block of its
        // layout, or dangling and well aligned for a zero-sized `T`), and
        // nothing else uses it.
        unsafe { ptr.as_ptr().write(make()) };
        Self {
            ptr,
            _owns: PhantomData,
        }
    }
}

// Moving a `Recycled` moves the pointer, never the value: it is `Unpin`
// whatever `T` is, as `Box` is.
impl<T> Unpin for Recycled<T> {}

impl<F: Future> Future for Recycled<F> {
    type Output = F::Output;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the value stays at `ptr` from `new` until `drop` and is
        // never moved out, so it may be pinned there; `&mut self` makes
        // this the only reference to it.
        unsafe { Pin::new_unchecked(&mut *self.ptr.as_ptr()) }.poll(cx)
    }
}

impl<T> Drop for Recycled<T> {
    fn drop(&mut self) {
        // SAFETY: the value was written in `new` and is dropped once, here;
        // the block is not used again by this `Recycled`.
        unsafe { std::ptr::drop_in_place(self.ptr.as_ptr()) };
        let layout = Layout::new::<T>();
        if layout.size() != 0 {
            give(Block {
                ptr: self.ptr.cast(),
                layout,
            });
        }
    }
}

/// A free block, owned: freed with its layout when dropped.
struct Block {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: the block was allocated by `allocate` with this layout,
        // and holds no value any more.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// The free blocks of one layout.
struct Blocks {
    layout: Layout,
    free: FreeList<Block>,
}

thread_local! {
    static BLOCKS: RefCell<Vec<Blocks>> = const { RefCell::new(Vec::new()) };
}

fn allocate(layout: Layout) -> NonNull<u8> {
    // SAFETY: `layout` has a non-zero size (checked by the caller).
    let ptr = unsafe { alloc::alloc(layout) };
    NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout))
}

fn take(layout: Layout) -> Option<NonNull<u8>> {
    BLOCKS
        .try_with(|lists| {
            let mut lists = lists.borrow_mut();
            let block = lists.iter_mut().find(|l| l.layout == layout)?.free.pop()?;
            let ptr = block.ptr;
            // Handed out: the `Recycled` that takes it frees or returns it.
            std::mem::forget(block);
            Some(ptr)
        })
        .ok()
        .flatten()
}

/// Keeps `block` for the next value of its layout (freed when the list is
/// full, or when the thread is ending).
fn give(block: Block) {
    let _ = BLOCKS.try_with(|lists| {
        let mut lists = lists.borrow_mut();
        match lists.iter_mut().find(|l| l.layout == block.layout) {
            Some(list) => list.free.push(block),
            None => {
                let mut free = FreeList::new();
                let layout = block.layout;
                free.push(block);
                lists.push(Blocks { layout, free });
            }
        }
    });
}

/// Frees the blocks no request took since the last call; returns whether
/// any were freed.
pub(crate) fn release_unused() -> bool {
    BLOCKS
        .try_with(|lists| {
            lists
                .borrow_mut()
                .iter_mut()
                .map(|l| l.free.trim())
                .sum::<usize>()
                > 0
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, rc::Rc};

    use super::*;

    struct Counted(Rc<Cell<u32>>, #[allow(dead_code)] [u64; 300]);

    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.set(self.0.get() + 1);
        }
    }

    #[test]
    fn blocks_are_reused_and_values_dropped_once() {
        let drops = Rc::new(Cell::new(0));
        let a = Recycled::new_with(|| Counted(Rc::clone(&drops), [1; 300]));
        let first = a.ptr.cast::<u8>();
        drop(a);
        assert_eq!(drops.get(), 1);
        let b = Recycled::new_with(|| Counted(Rc::clone(&drops), [2; 300]));
        assert_eq!(b.ptr.cast::<u8>(), first, "the block came back");
        // SAFETY: `b` holds a live value, and nothing mutates it meanwhile.
        assert_eq!(unsafe { b.ptr.as_ref() }.1[299], 2);
        let c = Recycled::new_with(|| Counted(Rc::clone(&drops), [3; 300]));
        assert_ne!(
            c.ptr.cast::<u8>(),
            first,
            "a block in use is not handed out twice"
        );
        drop((b, c));
        assert_eq!(drops.get(), 3);
    }

    #[test]
    fn futures_run_in_place_and_unused_blocks_are_freed() {
        /// Pending once (waking itself), then ready.
        struct YieldOnce(bool);
        impl Future for YieldOnce {
            type Output = ();
            fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
                if self.0 {
                    return Poll::Ready(());
                }
                self.0 = true;
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
        let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        let value = rt.block_on(async {
            let big = [7u8; 4000];
            let pending = Recycled::new_with(|| async move {
                YieldOnce(false).await;
                big[3999]
            });
            pending.await
        });
        assert_eq!(value, 7);
        // Past the floor every list keeps, blocks nobody took go.
        let many: Vec<_> = (0..100).map(|i| Recycled::new_with(|| [i as u8; 512])).collect();
        drop(many);
        release_unused();
        let kept = || BLOCKS.with(|l| l.borrow().iter().map(|b| b.free.len()).sum::<usize>());
        assert!(kept() >= 100, "{}", kept());
        release_unused();
        assert!(kept() < 100, "{}", kept());
    }
}
