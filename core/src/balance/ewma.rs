//! Peak-EWMA: a latency estimate that believes bad news at once and good
//! news slowly.
//!
//! After Finagle's `PeakEwma` and tower's `peak_ewma`. An observed RTT above
//! the current estimate *replaces* it (the peak), so one slow response
//! steers traffic away immediately. An RTT below the estimate is folded in
//! with an exponential weight `exp(-Δt / decay)`, so the estimate comes down
//! over about `decay` of good responses. And with no observations at all the
//! estimate decays towards zero: an endpoint penalised for one slow response
//! and then starved of traffic must eventually look cheap again, or the
//! balancer would never learn that it recovered.
//!
//! Reading is pure (the decayed value is computed, not stored), so asking an
//! endpoint's cost twice at the same `now` gives the same answer.

use crate::time::{Duration, Instant};

/// How much of a value stamped at `stamp` is left at `now`, decaying with
/// time constant `decay_ns`: `exp(-Δt / decay)`. Shared by the RTT
/// estimate and the success rate, which forget at the same pace.
pub(crate) fn decay_weight(stamp: Instant, now: Instant, decay_ns: f64) -> f64 {
    let elapsed = now.saturating_duration_since(stamp).as_nanos() as f64;
    (-elapsed / decay_ns).exp()
}

#[derive(Clone, Copy, Debug)]
pub(crate) struct PeakEwma {
    /// The estimate at `stamp`, in nanoseconds.
    rtt_ns: f64,
    stamp: Instant,
}

impl PeakEwma {
    pub(crate) fn new(now: Instant, initial: Duration) -> Self {
        PeakEwma {
            rtt_ns: initial.as_nanos() as f64,
            stamp: now,
        }
    }

    fn decay_weight(&self, now: Instant, decay_ns: f64) -> f64 {
        decay_weight(self.stamp, now, decay_ns)
    }

    /// The estimate at `now`, in nanoseconds.
    pub(crate) fn estimate(&self, now: Instant, decay_ns: f64) -> f64 {
        self.rtt_ns * self.decay_weight(now, decay_ns)
    }

    /// When the estimate last learned from a response (or was created).
    pub(crate) fn sampled_at(&self) -> Instant {
        self.stamp
    }

    /// Replaces the estimate with one observed round-trip time: the old
    /// estimate no longer describes the endpoint (it is stale, or the
    /// endpoint just came back from ejection).
    pub(crate) fn reset(&mut self, now: Instant, rtt: Duration) {
        self.rtt_ns = rtt.as_nanos() as f64;
        self.stamp = self.stamp.max(now);
    }

    /// Folds in one observed round-trip time.
    pub(crate) fn observe(&mut self, now: Instant, rtt: Duration, decay_ns: f64) {
        let rtt = rtt.as_nanos() as f64;
        let w = self.decay_weight(now, decay_ns);
        // The estimate decayed to `now`; the weight is applied once (to the
        // stored value), as in Finagle and tower.
        let decayed = self.rtt_ns * w;
        self.rtt_ns = if rtt > decayed {
            rtt
        } else {
            decayed + rtt * (1.0 - w)
        };
        // Never move the stamp backwards: an out-of-order completion must
        // not undo decay already applied.
        self.stamp = self.stamp.max(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: f64 = 10e9;

    #[test]
    fn a_slow_response_raises_the_estimate_at_once_and_it_decays_after() {
        let mut e = PeakEwma::new(Instant::ZERO, Duration::from_millis(30));
        e.observe(Instant::from_millis(10), Duration::from_millis(500), DECAY);
        assert_eq!(e.estimate(Instant::from_millis(10), DECAY), 500e6);
        // Fast responses pull it down, gradually.
        let mut now = Instant::from_millis(10);
        for _ in 0..100 {
            now += Duration::from_millis(100);
            e.observe(now, Duration::from_millis(10), DECAY);
        }
        let after = e.estimate(now, DECAY);
        assert!(after < 250e6 && after > 10e6, "{after}");
    }

    #[test]
    fn one_decay_interval_weighs_the_old_estimate_by_exp_minus_one_once() {
        // 100 ms at t = 0, then a 10 ms response one decay interval later:
        // 100 ms × e⁻¹ + 10 ms × (1 − e⁻¹) ≈ 43.1 ms (not the doubly
        // decayed 100 ms × e⁻² + 10 ms × (1 − e⁻¹) ≈ 19.9 ms).
        let w = (-1.0f64).exp();
        let mut e = PeakEwma::new(Instant::ZERO, Duration::from_millis(100));
        e.observe(Instant::from_secs(10), Duration::from_millis(10), DECAY);
        let expect = 100e6 * w + 10e6 * (1.0 - w);
        let got = e.estimate(Instant::from_secs(10), DECAY);
        assert!((got - expect).abs() < 1.0, "{got} vs {expect}");
        // A response above the decayed estimate (36.8 ms) is the new peak.
        let mut e = PeakEwma::new(Instant::ZERO, Duration::from_millis(100));
        e.observe(Instant::from_secs(10), Duration::from_millis(50), DECAY);
        assert_eq!(e.estimate(Instant::from_secs(10), DECAY), 50e6);
    }

    #[test]
    fn a_reset_replaces_the_estimate_even_downwards() {
        let mut e = PeakEwma::new(Instant::ZERO, Duration::from_millis(500));
        e.reset(Instant::from_secs(3), Duration::from_millis(5));
        assert_eq!(e.estimate(Instant::from_secs(3), DECAY), 5e6);
        assert_eq!(e.sampled_at(), Instant::from_secs(3));
    }

    #[test]
    fn an_idle_estimate_decays_towards_zero() {
        let e = PeakEwma::new(Instant::ZERO, Duration::from_secs(1));
        assert!(e.estimate(Instant::from_secs(10), DECAY) < 0.4e9);
        assert!(e.estimate(Instant::from_secs(100), DECAY) < 1e6);
    }
}
