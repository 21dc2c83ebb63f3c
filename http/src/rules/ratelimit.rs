//! Rate limits: a generic cell rate algorithm (GCRA, a token bucket that
//! keeps one timestamp per key) over a fixed table shared by all workers.
//!
//! Each key (a client address, a header's value, or the route) owns one
//! 64-bit slot holding a tag from the key's hash and the bucket's
//! theoretical arrival time; a request updates it with one compare and
//! swap, so the limit holds across workers exactly, with no lock and no
//! allocation. The table is a fixed number of 4-way sets: a key new to a
//! full set takes the slot whose bucket is the fullest (the one that has
//! been idle longest), so a flood of distinct keys can evict idle buckets
//! but never grows memory. Two keys whose hashes agree on the set and the
//! 20-bit tag share a bucket, which can only make the limit stricter.

use std::{
    hash::{BuildHasher, Hash},
    sync::{
        atomic::{AtomicU64, Ordering},
        OnceLock,
    },
    time::{Duration, Instant},
};

const WAYS: usize = 4;
/// Bits of a slot that hold the time, in microseconds (about 203 days
/// before it wraps; comparisons are made modulo this).
const TIME_BITS: u32 = 44;
const TIME_MASK: u64 = (1 << TIME_BITS) - 1;
/// Slots in a table (4,096 sets of 4: 128 KiB).
pub const DEFAULT_SLOTS: usize = 16_384;
/// The longest a bucket may take to refill (`burst` times the interval
/// between requests): far inside the clock's half cycle.
pub const MAX_REFILL: Duration = Duration::from_secs(30 * 24 * 3600);

/// A rate: so many requests per so long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Requests allowed per `per`.
    pub count: u64,
    /// The period.
    pub per: Duration,
}

impl Rate {
    /// Parses `"100/s"`, `"30/m"`, `"1000/h"` or `"5/10s"`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("invalid rate {text:?}: expected like \"100/s\", \"30/m\" or \"5/10s\"");
        let (count, per) = text.split_once('/').ok_or_else(bad)?;
        let count: u64 = count.trim().parse().map_err(|_| bad())?;
        let per = per.trim();
        let digits = per.bytes().take_while(u8::is_ascii_digit).count();
        let times: u64 = if digits == 0 {
            1
        } else {
            per[..digits].parse().map_err(|_| bad())?
        };
        let unit = match &per[digits..] {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(bad()),
        };
        if count == 0 || times == 0 {
            return Err(format!(
                "invalid rate {text:?}: it must allow at least one request"
            ));
        }
        let seconds = times.checked_mul(unit).ok_or_else(bad)?;
        Ok(Rate {
            count,
            per: Duration::from_secs(seconds),
        })
    }

    /// How long a bucket of `burst` takes to refill at this rate: at most
    /// [`MAX_REFILL`].
    pub fn refill(self, burst: u64) -> Duration {
        Duration::from_micros(self.interval_us().saturating_mul(burst))
    }

    /// Microseconds between two requests at this rate (at least 1).
    fn interval_us(self) -> u64 {
        (self.per.as_micros() as u64 / self.count).max(1)
    }
}

/// What a rate limit said about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Within the limit.
    Yes,
    /// Over it: a token comes back after this long.
    No {
        /// Time until the next request would be allowed.
        retry_after: Duration,
    },
}

/// A rate limit's buckets, shared by every worker.
pub struct RateTable {
    slots: Box<[AtomicU64]>,
    interval: u64,
    /// How far ahead of now a bucket's arrival time may be and still let a
    /// request in: `(burst - 1) * interval`.
    tolerance: u64,
    hasher: hashbrown::DefaultHashBuilder,
}

impl std::fmt::Debug for RateTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateTable")
            .field("slots", &self.slots.len())
            .field("interval_us", &self.interval)
            .field("tolerance_us", &self.tolerance)
            .finish()
    }
}

/// Microseconds since the first call, on a clock all workers share.
pub fn now_us() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as u64
}

impl RateTable {
    /// Buckets for `rate` that let `burst` requests through at once, in a
    /// table of `slots` slots (rounded up to whole sets).
    pub fn new(rate: Rate, burst: u64, slots: usize) -> Self {
        let sets = slots.div_ceil(WAYS).next_power_of_two();
        let interval = rate.interval_us();
        Self {
            slots: (0..sets * WAYS).map(|_| AtomicU64::new(0)).collect(),
            interval,
            tolerance: burst.max(1).saturating_sub(1).saturating_mul(interval),
            hasher: hashbrown::DefaultHashBuilder::default(),
        }
    }

    /// How many slots the table holds: its memory is this many 8-byte words.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// How many slots hold a key.
    pub fn occupied(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.load(Ordering::Relaxed) != 0)
            .count()
    }

    /// Counts a request of `key` now.
    pub fn admit(&self, key: impl Hash) -> Admit {
        self.admit_at(key, now_us())
    }

    /// Counts a request of `key` at `now` (microseconds on [`now_us`]'s clock).
    pub fn admit_at(&self, key: impl Hash, now: u64) -> Admit {
        let hash = self.hasher.hash_one(key);
        let sets = self.slots.len() / WAYS;
        let set = (hash as usize) & (sets - 1);
        // The top 20 bits, never 0 (an empty slot).
        let tag = (hash >> TIME_BITS).max(1);
        let now = now & TIME_MASK;
        let ways = &self.slots[set * WAYS..set * WAYS + WAYS];
        // A bucket's arrival time is never further ahead than this; one
        // that reads further was last touched more than half the clock's
        // cycle ago (about 100 days), and is full.
        let max_ahead = self.tolerance + self.interval;
        let ahead_of = |word: u64| {
            let ahead = (word & TIME_MASK).wrapping_sub(now) & TIME_MASK;
            if ahead > max_ahead {
                0
            } else {
                ahead
            }
        };
        loop {
            // The key's slot, or an empty or full bucket to take for it.
            let mut found = None;
            let mut free: Option<(usize, u64)> = None;
            for (i, slot) in ways.iter().enumerate() {
                let word = slot.load(Ordering::Relaxed);
                if word != 0 && word >> TIME_BITS == tag {
                    found = Some((i, word));
                    break;
                }
                if free.is_none() && (word == 0 || ahead_of(word) == 0) {
                    free = Some((i, word));
                }
            }
            let (index, current, ahead) = match (found, free) {
                (Some((i, word)), _) => (i, word, ahead_of(word)),
                (None, Some((i, word))) => (i, word, 0),
                // Every bucket of the set still limits its key: none is
                // given up for a newcomer, which goes through uncounted
                // (its first request would be let through anyway).
                (None, None) => return Admit::Yes,
            };
            if ahead > self.tolerance {
                return Admit::No {
                    retry_after: Duration::from_micros(ahead - self.tolerance),
                };
            }
            let next = (now + ahead + self.interval) & TIME_MASK;
            let word = tag << TIME_BITS | next;
            // Against the word the scan read: a slot another worker changed
            // since is read again.
            if ways[index]
                .compare_exchange_weak(current, word, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return Admit::Yes;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(Rate::parse("100/s").unwrap().interval_us(), 10_000);
        assert_eq!(Rate::parse("30/m").unwrap().interval_us(), 2_000_000);
        assert_eq!(Rate::parse("5/10s").unwrap().per, Duration::from_secs(10));
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("10/d").unwrap_err().contains("expected like"));
        assert!(Rate::parse("ten").is_err());
    }

    #[test]
    fn the_burst_goes_through_then_the_rate_holds_then_it_recovers() {
        let table = RateTable::new(Rate::parse("10/s").unwrap(), 5, 64);
        let t0 = 1_000_000;
        for i in 0..5 {
            assert_eq!(table.admit_at("a", t0), Admit::Yes, "request {i} of the burst");
        }
        let Admit::No { retry_after } = table.admit_at("a", t0) else {
            panic!("the sixth request at once is over the limit")
        };
        assert_eq!(retry_after, Duration::from_millis(100));
        assert_eq!(
            table.admit_at("b", t0),
            Admit::Yes,
            "another key has its own bucket"
        );
        // One token every 100 ms.
        assert!(matches!(table.admit_at("a", t0 + 50_000), Admit::No { .. }));
        assert_eq!(table.admit_at("a", t0 + 100_000), Admit::Yes);
        assert!(matches!(table.admit_at("a", t0 + 100_000), Admit::No { .. }));
        // Idle long enough, the whole burst is back.
        for _ in 0..5 {
            assert_eq!(table.admit_at("a", t0 + 2_000_000), Admit::Yes);
        }
        assert!(matches!(table.admit_at("a", t0 + 2_000_000), Admit::No { .. }));
    }

    #[test]
    fn a_flood_of_distinct_keys_keeps_memory_bounded_and_limited_keys_limited() {
        let table = RateTable::new(Rate::parse("1/m").unwrap(), 1, 1024);
        let capacity = table.capacity();
        assert_eq!(capacity, 1024);
        let t0 = 5_000_000;
        // Keys that are limited when the flood begins.
        let hot: Vec<String> = (0..100).map(|i| format!("hot{i}")).collect();
        for key in &hot {
            assert_eq!(table.admit_at(key, t0), Admit::Yes);
            assert!(matches!(table.admit_at(key, t0), Admit::No { .. }));
        }
        // Each new key gets its first request through, but for the few
        // whose hash agrees with a stored key's set and tag (they share
        // its bucket).
        let refused = (0..1_000_000u32)
            .filter(|&key| table.admit_at(key, t0 + u64::from(key)) != Admit::Yes)
            .count();
        assert!(refused < 50, "{refused}");
        assert_eq!(table.capacity(), capacity, "the table never grows");
        // No bucket that still limits its key was given up for the flood.
        for key in &hot {
            assert!(
                matches!(table.admit_at(key, t0 + 1_000_000), Admit::No { .. }),
                "{key}"
            );
        }
        // Once the hot keys' buckets are full again, the flood can take them.
        assert_eq!(table.admit_at("hot0", t0 + 61_000_000), Admit::Yes);
    }

    #[test]
    fn the_clock_wraps_without_freeing_or_locking_a_bucket() {
        let table = RateTable::new(Rate::parse("1/s").unwrap(), 1, 64);
        let near_wrap = TIME_MASK - 10;
        assert_eq!(table.admit_at("k", near_wrap), Admit::Yes);
        assert!(matches!(table.admit_at("k", near_wrap + 100), Admit::No { .. }));
        assert_eq!(table.admit_at("k", near_wrap + 1_000_001), Admit::Yes);
        // Idle for more than half the clock's cycle (about 100 days): the
        // bucket is full, not read as far in the future.
        let t = 7_000_000;
        assert_eq!(table.admit_at("idle", t), Admit::Yes);
        let later = t + (1 << (TIME_BITS - 1)) + 5_000_000;
        assert_eq!(table.admit_at("idle", later), Admit::Yes);
        assert!(matches!(table.admit_at("idle", later), Admit::No { .. }));
    }

    #[test]
    fn workers_share_one_limit() {
        let table = std::sync::Arc::new(RateTable::new(Rate::parse("1/h").unwrap(), 1000, 64));
        let admitted: usize = (0..4)
            .map(|_| {
                let table = table.clone();
                std::thread::spawn(move || (0..500).filter(|_| table.admit_at("k", 10) == Admit::Yes).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .sum();
        assert_eq!(admitted, 1000, "exactly the burst, across threads");
    }
}
