//! The memory tier's eviction: S3-FIFO (Yang et al., SOSP 2023), which
//! resists scans where LRU does not. New objects enter a small FIFO (a
//! tenth of the bytes); one evicted from it without a second access leaves
//! only its key in a ghost FIFO, while one accessed again moves to the main
//! FIFO. A key found in the ghost FIFO on insertion goes straight to main.
//! Main evicts by FIFO order, giving each object with accesses left another
//! round (its counter, at most 3, decremented each time). A one-pass scan
//! thus churns the small FIFO and never reaches the objects that are used.
//!
//! Sizes are in bytes; an object larger than the whole budget is refused.
//! Objects may also weigh on a second budget, for what of them is held
//! in memory when their size is mostly elsewhere (a disk tier's heads and
//! keys, beside its files); eviction goes on until both hold.
//! Not thread-safe: one per worker, or behind the caller's lock.

use std::{borrow::Borrow, collections::VecDeque, hash::Hash};

use hashbrown::HashMap;

/// The small FIFO's share of the bytes, in tenths.
const SMALL_TENTHS: u64 = 1;

/// Access counts saturate here.
const MAX_FREQ: u8 = 3;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Queue {
    Small,
    Main,
}

#[derive(Debug)]
struct Slot<V> {
    value: V,
    size: u64,
    resident: u64,
    freq: u8,
    queue: Queue,
}

/// A size-bounded map with S3-FIFO eviction.
#[derive(Debug)]
pub struct S3Fifo<K, V> {
    capacity: u64,
    /// The second budget, over the objects' resident bytes.
    resident_capacity: u64,
    resident_bytes: u64,
    /// The small FIFO's share of them.
    small_resident: u64,
    entries: HashMap<K, Slot<V>>,
    small: VecDeque<K>,
    main: VecDeque<K>,
    /// Keys evicted from small without a second access, newest last.
    ghost: VecDeque<K>,
    ghost_set: HashMap<K, ()>,
    small_bytes: u64,
    main_bytes: u64,
    evictions: u64,
    /// The values evicted since the last [`S3Fifo::drain_evicted`] (their
    /// owner may have more to release than memory: a file).
    evicted: Vec<V>,
}

impl<K: Hash + Eq + Clone, V> S3Fifo<K, V> {
    /// An empty cache holding at most `capacity` bytes.
    pub fn new(capacity: u64) -> Self {
        Self::with_resident_bound(capacity, u64::MAX)
    }

    /// An empty cache holding at most `capacity` bytes, of which at most
    /// `resident_capacity` resident (see [`S3Fifo::insert_resident`]).
    pub fn with_resident_bound(capacity: u64, resident_capacity: u64) -> Self {
        Self {
            capacity,
            resident_capacity,
            resident_bytes: 0,
            small_resident: 0,
            entries: HashMap::new(),
            small: VecDeque::new(),
            main: VecDeque::new(),
            ghost: VecDeque::new(),
            ghost_set: HashMap::new(),
            small_bytes: 0,
            main_bytes: 0,
            evictions: 0,
            evicted: Vec::new(),
        }
    }

    /// The value of `key`, counting an access.
    pub fn get<Q>(&mut self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let slot = self.entries.get_mut(key)?;
        slot.freq = (slot.freq + 1).min(MAX_FREQ);
        Some(&slot.value)
    }

    /// The value of `key`, counting no access.
    pub fn peek<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|slot| &slot.value)
    }

    /// Whether `key` is held (counting no access).
    pub fn contains(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    /// Stores `value` of `size` bytes under `key` (replacing any value it
    /// had), evicting as needed. Returns false, storing nothing, when it is
    /// larger than the whole cache.
    pub fn insert(&mut self, key: K, value: V, size: u64) -> bool {
        self.insert_resident(key, value, size, 0)
    }

    /// Stores `value` of `size` bytes, `resident` of which count against
    /// the second budget, under `key` (replacing any value it had),
    /// evicting until both budgets hold. Returns false, storing nothing,
    /// when it is larger than either.
    pub fn insert_resident(&mut self, key: K, value: V, size: u64, resident: u64) -> bool {
        if size > self.capacity || resident > self.resident_capacity {
            if let Some(old) = self.remove(&key) {
                self.evicted.push(old);
            }
            return false;
        }
        // A key held already keeps its place and its accesses (a
        // revalidation refreshing it is no reason to demote it).
        if let Some(slot) = self.entries.get_mut(&key) {
            let old = std::mem::replace(&mut slot.size, size);
            let old_resident = std::mem::replace(&mut slot.resident, resident);
            let replaced = std::mem::replace(&mut slot.value, value);
            self.evicted.push(replaced);
            match slot.queue {
                Queue::Small => {
                    self.small_bytes = self.small_bytes - old + size;
                    self.small_resident = self.small_resident - old_resident + resident;
                }
                Queue::Main => self.main_bytes = self.main_bytes - old + size,
            }
            self.resident_bytes = self.resident_bytes - old_resident + resident;
            while self.over(0, 0) {
                if !self.evict() {
                    break;
                }
            }
            return self.entries.contains_key(&key);
        }
        let queue = if self.ghost_set.remove(&key).is_some() {
            Queue::Main
        } else {
            Queue::Small
        };
        while self.over(size, resident) {
            if !self.evict() {
                break;
            }
        }
        self.resident_bytes += resident;
        match queue {
            Queue::Small => {
                self.small.push_back(key.clone());
                self.small_bytes += size;
                self.small_resident += resident;
            }
            Queue::Main => {
                self.main.push_back(key.clone());
                self.main_bytes += size;
            }
        }
        self.entries.insert(
            key,
            Slot {
                value,
                size,
                resident,
                freq: 0,
                queue,
            },
        );
        true
    }

    /// Removes `key` (an invalidation, a purge); returns its value.
    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let slot = self.entries.remove(key)?;
        self.resident_bytes -= slot.resident;
        // Its place in its FIFO is skipped when reached.
        match slot.queue {
            Queue::Small => {
                self.small_bytes -= slot.size;
                self.small_resident -= slot.resident;
            }
            Queue::Main => self.main_bytes -= slot.size,
        }
        Some(slot.value)
    }

    /// The values evicted since the last call (callers that insert drain
    /// them after each insertion).
    pub fn drain_evicted(&mut self) -> std::vec::Drain<'_, V> {
        self.evicted.drain(..)
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.small_bytes + self.main_bytes
    }

    /// Resident bytes held.
    pub fn resident_bytes(&self) -> u64 {
        self.resident_bytes
    }

    /// Whether holding `size` more bytes, `resident` of them resident,
    /// would break a budget.
    fn over(&self, size: u64, resident: u64) -> bool {
        self.small_bytes + self.main_bytes + size > self.capacity
            || self.resident_bytes + resident > self.resident_capacity
    }

    /// Objects held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Objects evicted so far (removals not counted).
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Evicts one object: from small while it holds more than its share
    /// of either budget, else from main. Returns false when nothing is
    /// left to evict.
    fn evict(&mut self) -> bool {
        let small_share = self.capacity * SMALL_TENTHS / 10;
        let small_resident_share = self.resident_capacity / 10 * SMALL_TENTHS;
        let small_over = self.small_bytes > small_share || self.small_resident > small_resident_share;
        if (small_over || self.main.is_empty()) && self.evict_small() {
            return true;
        }
        self.evict_main() || self.evict_small()
    }

    fn evict_small(&mut self) -> bool {
        while let Some(key) = self.small.pop_front() {
            let Some(slot) = self.entries.get_mut(&key) else {
                continue; // removed meanwhile
            };
            if slot.queue != Queue::Small {
                continue;
            }
            if slot.freq > 0 {
                // Used again while new: promoted, its count starting over.
                slot.freq = 0;
                slot.queue = Queue::Main;
                self.small_bytes -= slot.size;
                self.small_resident -= slot.resident;
                self.main_bytes += slot.size;
                self.main.push_back(key);
                continue;
            }
            if let Some(slot) = self.entries.remove(&key) {
                self.small_bytes -= slot.size;
                self.small_resident -= slot.resident;
                self.resident_bytes -= slot.resident;
                self.evicted.push(slot.value);
            }
            self.remember(key);
            self.evictions += 1;
            return true;
        }
        false
    }

    fn evict_main(&mut self) -> bool {
        while let Some(key) = self.main.pop_front() {
            let Some(slot) = self.entries.get_mut(&key) else {
                continue;
            };
            if slot.queue != Queue::Main {
                continue;
            }
            if slot.freq > 0 {
                slot.freq -= 1;
                self.main.push_back(key);
                continue;
            }
            if let Some(slot) = self.entries.remove(&key) {
                self.main_bytes -= slot.size;
                self.resident_bytes -= slot.resident;
                self.evicted.push(slot.value);
            }
            self.evictions += 1;
            return true;
        }
        false
    }

    /// Keeps an evicted key in the ghost FIFO, as many keys as main holds
    /// objects (the paper's bound), at least 16.
    fn remember(&mut self, key: K) {
        let bound = self.main.len().max(16);
        while self.ghost.len() >= bound {
            if let Some(old) = self.ghost.pop_front() {
                self.ghost_set.remove(&old);
            }
        }
        if self.ghost_set.insert(key.clone(), ()).is_none() {
            self.ghost.push_back(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_budget_holds_and_oversized_objects_are_refused() {
        let mut c = S3Fifo::new(1_000);
        assert!(!c.insert(u32::MAX, (), 1_001));
        for i in 0..100u32 {
            assert!(c.insert(i, (), 30));
            assert!(c.bytes() <= 1_000, "{}", c.bytes());
        }
        assert_eq!(c.len(), 33);
        assert!(c.evictions() >= 67);
    }

    #[test]
    fn the_resident_budget_holds_beside_the_byte_budget() {
        // Objects mostly elsewhere: 100 bytes each, 10 of them resident.
        let mut c = S3Fifo::with_resident_bound(1_000_000, 200);
        assert!(
            !c.insert_resident(u32::MAX, (), 1, 201),
            "larger than the resident budget"
        );
        for i in 0..100u32 {
            assert!(c.insert_resident(i, (), 100, 10));
            assert!(c.resident_bytes() <= 200, "{}", c.resident_bytes());
        }
        assert_eq!(c.len(), 20, "the resident budget bounds them, not the bytes");
        assert_eq!(c.evictions(), 80);
        // Replacing and removing keep the count.
        assert!(c.insert_resident(99, (), 100, 30));
        assert!(c.resident_bytes() <= 200);
        let before = c.resident_bytes();
        assert!(c.remove(&99).is_some());
        assert_eq!(c.resident_bytes(), before - 30);
    }

    #[test]
    fn a_scan_does_not_push_out_what_is_used() {
        // The byte budget binding, then (a disk tier's shape: bytes
        // plentiful, memory for the index tight) the resident one.
        for (mut c, size, resident) in [
            (S3Fifo::new(1_000), 10, 0),
            (S3Fifo::with_resident_bound(u64::MAX / 2, 1_000), 1, 10),
        ] {
            // A hot set of 50 objects, each used twice.
            for i in 0..50u32 {
                assert!(c.insert_resident(i, i, size, resident));
            }
            for _ in 0..2 {
                for i in 0..50u32 {
                    assert!(c.get(&i).is_some());
                }
            }
            // A scan of 10,000 objects seen once each.
            for i in 1_000..11_000u32 {
                c.insert_resident(i, i, size, resident);
            }
            let kept = (0..50u32).filter(|i| c.contains(i)).count();
            assert_eq!(kept, 50, "the hot set survives the scan");
            assert!(c.bytes() <= c.capacity && c.resident_bytes() <= c.resident_capacity);
        }
    }

    #[test]
    fn lru_would_lose_the_hot_set_that_s3fifo_keeps() {
        // The same access pattern under a plain FIFO (what LRU degrades to
        // for a scan) keeps none of the hot set: the point of the exercise.
        let mut fifo: VecDeque<u32> = VecDeque::new();
        for i in (0..50).chain(1_000..11_000) {
            fifo.push_back(i);
            if fifo.len() > 100 {
                fifo.pop_front();
            }
        }
        assert_eq!(fifo.iter().filter(|&&i| i < 50).count(), 0);
    }

    #[test]
    fn a_key_seen_again_soon_after_its_eviction_goes_to_main() {
        let mut c = S3Fifo::new(100);
        c.insert(1u32, (), 10);
        // Fourteen more: 1 is evicted with no second access, and its key is
        // among the last sixteen the ghost FIFO keeps.
        for i in 2..16u32 {
            c.insert(i, (), 10);
        }
        assert!(!c.contains(&1), "evicted from small, its key remembered");
        c.insert(1, (), 10);
        // Another scan: 1 is in main now and outlives the newcomers.
        for i in 100..120u32 {
            c.insert(i, (), 10);
        }
        assert!(c.contains(&1));
    }

    #[test]
    fn removal_and_replacement_keep_the_byte_count_right() {
        let mut c = S3Fifo::new(100);
        c.insert("a", 1, 40);
        c.insert("a", 2, 10);
        assert_eq!((c.bytes(), c.get(&"a").copied()), (10, Some(2)));
        assert_eq!(c.remove(&"a"), Some(2));
        assert_eq!((c.bytes(), c.len()), (0, 0));
        // A removed key's stale place in its FIFO is skipped on eviction.
        for key in ["b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m"] {
            c.insert(key, 0, 10);
        }
        assert!(c.bytes() <= 100 && c.len() == 10, "{} {}", c.bytes(), c.len());
    }

    #[test]
    fn replacing_a_value_keeps_its_place_and_accesses() {
        let mut cache = S3Fifo::new(100);
        cache.insert("hot", 1, 10);
        cache.get("hot");
        cache.insert("hot", 2, 12);
        assert_eq!(cache.get("hot"), Some(&2));
        assert_eq!(cache.bytes(), 12);
        // Its accesses are kept: a scan does not push it out.
        for i in 0..100 {
            cache.insert(Box::leak(format!("scan{i}").into_boxed_str()), 0, 10);
        }
        assert_eq!(cache.get("hot"), Some(&2));
    }
}
