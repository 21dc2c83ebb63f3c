//! The free list every per-worker pool of reusable memory is kept in (read
//! buffers, connection slots, exchange blocks, TLS ciphertext buffers).
//!
//! A worker is one thread, so its lists are thread-locals with no lock. A
//! list remembers the fewest items it held since it was last trimmed: that
//! many went unused for the whole period, and [`FreeList::trim`] (run by
//! the worker about once a second) frees them, so a flood's buffers do not
//! stay once it is over.

/// Items kept per list; more are dropped.
pub const MAX_KEPT: usize = 1024;

/// Items a list keeps however long they go unused.
pub const MIN_KEPT: usize = 16;

/// A free list, and the fewest items it held since it was last trimmed.
#[derive(Debug)]
pub struct FreeList<B> {
    items: Vec<B>,
    low: usize,
}

impl<B> Default for FreeList<B> {
    fn default() -> Self {
        Self::new()
    }
}

impl<B> FreeList<B> {
    /// An empty list.
    pub const fn new() -> Self {
        Self {
            items: Vec::new(),
            low: 0,
        }
    }

    /// How many it holds.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The most recently kept item.
    pub fn pop(&mut self) -> Option<B> {
        let item = self.items.pop();
        self.low = self.low.min(self.items.len());
        item
    }

    /// Keeps `item` unless the list is full (then it is dropped).
    pub fn push(&mut self, item: B) {
        if self.items.len() < MAX_KEPT {
            self.items.push(item);
        }
    }

    /// Frees the items that went unused since the last trim, down to
    /// [`MIN_KEPT`]; returns how many.
    pub fn trim(&mut self) -> usize {
        let unused = self.low.min(self.items.len().saturating_sub(MIN_KEPT));
        let keep = self.items.len() - unused;
        self.items.truncate(keep);
        self.items.shrink_to(keep.max(MIN_KEPT));
        self.low = self.items.len();
        unused
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trimming_frees_what_went_unused_down_to_the_floor() {
        let mut list = FreeList::new();
        for i in 0..100 {
            list.push(i);
        }
        assert_eq!(list.trim(), 0, "the first period saw the list empty");
        assert_eq!(list.len(), 100);
        // A quiet period: 99 went unused, and all but the floor go.
        let item = list.pop().expect("item");
        list.push(item);
        assert_eq!(list.trim(), 100 - MIN_KEPT);
        assert_eq!(list.len(), MIN_KEPT);
        // A busy one (the list emptied): nothing goes.
        while list.pop().is_some() {}
        for i in 0..MIN_KEPT {
            list.push(i);
        }
        assert_eq!(list.trim(), 0);
    }
}
