//! A sliding window of successes and failures, in fixed buckets.
//!
//! Success-rate accrual needs "what fraction of the last `window` of
//! responses succeeded" at every response. Keeping every response would cost
//! memory proportional to traffic; ten buckets of `window / 10` cost a fixed
//! few words and O(1) per record, at the price of forgetting a bucket's worth
//! of history at a time.

use crate::time::{Duration, Instant};

const BUCKETS: usize = 10;

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    /// Which bucket period (time / bucket width) these counts belong to.
    period: u64,
    successes: u32,
    failures: u32,
}

/// Counts of successes and failures over the last `window`.
#[derive(Clone, Debug)]
pub(crate) struct SuccessWindow {
    width_ns: u64,
    buckets: [Bucket; BUCKETS],
}

impl SuccessWindow {
    pub(crate) fn new(window: Duration) -> Self {
        let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        SuccessWindow {
            width_ns: (window_ns / BUCKETS as u64).max(1),
            // Period 0 with zero counts is indistinguishable from empty.
            buckets: [Bucket::default(); BUCKETS],
        }
    }

    fn period(&self, now: Instant) -> u64 {
        now.as_nanos() / self.width_ns
    }

    pub(crate) fn record(&mut self, now: Instant, success: bool) {
        let period = self.period(now);
        let idx = (period % BUCKETS as u64) as usize;
        let b = &mut self.buckets[idx];
        if b.period != period {
            *b = Bucket {
                period,
                successes: 0,
                failures: 0,
            };
        }
        if success {
            b.successes = b.successes.saturating_add(1);
        } else {
            b.failures = b.failures.saturating_add(1);
        }
    }

    /// `(successes, failures)` over the buckets still inside the window.
    pub(crate) fn counts(&self, now: Instant) -> (u64, u64) {
        let period = self.period(now);
        let oldest = period.saturating_sub(BUCKETS as u64 - 1);
        self.buckets
            .iter()
            .filter(|b| b.period >= oldest && b.period <= period)
            .fold((0, 0), |(s, f), b| {
                (s + u64::from(b.successes), f + u64::from(b.failures))
            })
    }

    pub(crate) fn clear(&mut self) {
        self.buckets = [Bucket::default(); BUCKETS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_older_than_the_window_expire() {
        let mut w = SuccessWindow::new(Duration::from_secs(10));
        for _ in 0..3 {
            w.record(Instant::from_millis(500), false);
        }
        w.record(Instant::from_millis(1_500), true);
        assert_eq!(w.counts(Instant::from_millis(9_999)), (1, 3));
        // Period 10: the oldest counted is period 1, so period 0 is gone.
        assert_eq!(w.counts(Instant::from_millis(10_000)), (1, 0));
        assert_eq!(w.counts(Instant::from_millis(11_000)), (0, 0));
        // Far later, nothing is left, and a reused slot starts from zero.
        assert_eq!(w.counts(Instant::from_secs(1_000)), (0, 0));
        w.record(Instant::from_millis(20_500), true);
        assert_eq!(w.counts(Instant::from_millis(20_500)), (1, 0));
    }
}
