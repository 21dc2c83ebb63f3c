//! The retry budget: retries may add only a fraction of the recent
//! requests, so a failing upstream cannot multiply the load on the others
//! (Finagle's and Linkerd's retry budgets). Counted per worker in ten
//! one-second buckets.

use std::cell::Cell;

const BUCKETS: usize = 10;
const BUCKET_MS: u64 = 1000;

/// Requests and retries of the last ten seconds.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    requests: [Cell<u32>; BUCKETS],
    retries: [Cell<u32>; BUCKETS],
    /// The second the bucket at `second % BUCKETS` holds.
    seconds: [Cell<u64>; BUCKETS],
}

impl RetryBudget {
    pub(crate) fn new(ratio: f64, min_per_second: u32) -> Self {
        Self {
            ratio,
            min_per_second,
            requests: Default::default(),
            retries: Default::default(),
            seconds: Default::default(),
        }
    }

    /// The bucket for `now_ms`, emptied when it last held an older second.
    fn bucket(&self, now_ms: u64) -> usize {
        let second = now_ms / BUCKET_MS;
        let at = (second % BUCKETS as u64) as usize;
        if self.seconds[at].get() != second {
            self.seconds[at].set(second);
            self.requests[at].set(0);
            self.retries[at].set(0);
        }
        at
    }

    /// Counts a request's first attempt.
    pub(crate) fn record_request(&self, now_ms: u64) {
        let at = self.bucket(now_ms);
        self.requests[at].set(self.requests[at].get().saturating_add(1));
    }

    /// Takes a retry from the budget; `false` when it is spent.
    pub(crate) fn try_retry(&self, now_ms: u64) -> bool {
        let at = self.bucket(now_ms);
        let second = now_ms / BUCKET_MS;
        let (mut requests, mut retries) = (0u64, 0u64);
        for i in 0..BUCKETS {
            if second.saturating_sub(self.seconds[i].get()) < BUCKETS as u64 {
                requests += u64::from(self.requests[i].get());
                retries += u64::from(self.retries[i].get());
            }
        }
        let allowed = (requests as f64 * self.ratio).max(f64::from(self.min_per_second) * BUCKETS as f64);
        if retries as f64 >= allowed {
            return false;
        }
        self.retries[at].set(self.retries[at].get().saturating_add(1));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_by_the_ratio_of_requests() {
        // 20% of requests, no floor.
        let b = RetryBudget::new(0.2, 0);
        for _ in 0..1000 {
            b.record_request(5_000);
        }
        let granted = (0..1000).filter(|_| b.try_retry(5_000)).count();
        assert_eq!(granted, 200);
    }

    #[test]
    fn the_floor_allows_retries_when_traffic_is_light() {
        let b = RetryBudget::new(0.2, 1);
        b.record_request(0);
        // 1 per second over the ten-second window.
        let granted = (0..100).filter(|_| b.try_retry(0)).count();
        assert_eq!(granted, 10);
    }

    #[test]
    fn old_seconds_leave_the_window() {
        let b = RetryBudget::new(0.5, 0);
        for _ in 0..10 {
            b.record_request(0);
        }
        assert_eq!((0..10).filter(|_| b.try_retry(0)).count(), 5);
        // Eleven seconds later nothing of that is left.
        assert!(!b.try_retry(11_000));
        for _ in 0..4 {
            b.record_request(11_000);
        }
        assert_eq!((0..10).filter(|_| b.try_retry(11_500)).count(), 2);
    }
}
