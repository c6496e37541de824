//! Success rate: how much of an endpoint's recent traffic it answered well.
//!
//! Latency alone is blind to an endpoint that fails fast: a server answering
//! half its requests with an immediate 503 has the lowest RTT of all and,
//! because 50 % failures rarely line up into the consecutive failures that
//! eject it, would keep drawing traffic (the simulator's `grpc` seeds 1103
//! and 2221). So the balancer also divides an endpoint's cost by its recent
//! success rate squared: a half-failing endpoint looks four times as
//! expensive, and wins a pick only against a peer four requests deep.
//!
//! The rate is a ratio of exponentially decayed counts (time constant:
//! the balancer's `decay`), with a prior of [`PRIOR`] successes so that one
//! failure of a new or idle endpoint does not condemn it, and a floor of
//! [`FLOOR`] so that the penalty stays bounded (×100) and an endpoint that
//! failed everything can still win against peers that are deeply loaded.
//! As with [`PeakEwma`](super::ewma::PeakEwma), reading is pure: the decay
//! is computed at `now`, not stored.
//!
//! After the same idea in gRPC's weighted round robin
//! (`error_utilization_penalty`), ServiceTalk's error penalty and MOSN's
//! success-rate weighting; the squared ratio with a floor is ours.

use super::ewma::decay_weight;
use crate::time::Instant;

/// Pseudo-successes added to the decayed counts.
pub(crate) const PRIOR: f64 = 3.0;
/// The lowest success rate the cost uses.
pub(crate) const FLOOR: f64 = 0.1;

#[derive(Clone, Copy, Debug)]
pub(crate) struct SuccessRate {
    /// Decayed count of successes at `stamp`.
    ok: f32,
    /// Decayed count of failures at `stamp`.
    failed: f32,
    stamp: Instant,
}

impl SuccessRate {
    pub(crate) fn new(now: Instant) -> Self {
        SuccessRate {
            ok: 0.0,
            failed: 0.0,
            stamp: now,
        }
    }

    fn weight(&self, now: Instant, decay_ns: f64) -> f64 {
        decay_weight(self.stamp, now, decay_ns)
    }

    /// Counts one response.
    pub(crate) fn observe(&mut self, now: Instant, success: bool, decay_ns: f64) {
        let w = self.weight(now, decay_ns);
        let (mut ok, mut failed) = (f64::from(self.ok) * w, f64::from(self.failed) * w);
        if success {
            ok += 1.0;
        } else {
            failed += 1.0;
        }
        // Counts are small (about requests per decay period); f32 keeps the
        // endpoint slot small and loses nothing a ratio would notice.
        self.ok = ok as f32;
        self.failed = failed as f32;
        self.stamp = self.stamp.max(now);
    }

    /// Forgets the history: the endpoint was ejected and its probe just
    /// succeeded, so its failures describe a past that has ended.
    pub(crate) fn reset(&mut self, now: Instant) {
        *self = SuccessRate::new(now);
    }

    /// The success rate at `now`, in `[FLOOR, 1]`.
    pub(crate) fn rate(&self, now: Instant, decay_ns: f64) -> f64 {
        let w = self.weight(now, decay_ns);
        let ok = f64::from(self.ok) * w + PRIOR;
        let failed = f64::from(self.failed) * w;
        (ok / (ok + failed)).max(FLOOR)
    }

    /// The factor dividing the endpoint's cost: the rate squared.
    pub(crate) fn cost_divisor(&self, now: Instant, decay_ns: f64) -> f64 {
        let s = self.rate(now, decay_ns);
        s * s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default decay, 10 s.
    fn decay_ns() -> f64 {
        10e9
    }

    #[test]
    fn a_new_endpoint_and_one_that_only_succeeds_have_rate_one() {
        let mut s = SuccessRate::new(Instant::ZERO);
        assert_eq!(s.rate(Instant::ZERO, decay_ns()), 1.0);
        for i in 0..100 {
            s.observe(Instant::from_millis(i * 10), true, decay_ns());
        }
        assert_eq!(s.rate(Instant::from_secs(1), decay_ns()), 1.0);
    }

    #[test]
    fn half_failing_tends_to_one_half_and_its_cost_to_four_times() {
        let mut s = SuccessRate::new(Instant::ZERO);
        for i in 0..2000u64 {
            s.observe(Instant::from_millis(i * 10), i % 2 == 0, decay_ns());
        }
        let now = Instant::from_secs(20);
        let rate = s.rate(now, decay_ns());
        assert!((rate - 0.5).abs() < 0.01, "{rate}");
        let divisor = s.cost_divisor(now, decay_ns());
        assert!((divisor - 0.25).abs() < 0.01, "{divisor}");
    }

    #[test]
    fn one_failure_does_not_condemn_and_the_floor_bounds_the_penalty() {
        let mut s = SuccessRate::new(Instant::ZERO);
        s.observe(Instant::ZERO, false, decay_ns());
        assert_eq!(s.rate(Instant::ZERO, decay_ns()), 0.75);
        for _ in 0..1000 {
            s.observe(Instant::ZERO, false, decay_ns());
        }
        assert_eq!(s.rate(Instant::ZERO, decay_ns()), FLOOR);
    }

    #[test]
    fn failures_are_forgotten_over_the_decay_and_at_once_on_reset() {
        let mut s = SuccessRate::new(Instant::ZERO);
        for _ in 0..30 {
            s.observe(Instant::ZERO, false, decay_ns());
        }
        let later = s.rate(Instant::from_secs(60), decay_ns());
        assert!(later > 0.95, "{later}");
        s.reset(Instant::from_secs(1));
        assert_eq!(s.rate(Instant::from_secs(1), decay_ns()), 1.0);
    }
}
