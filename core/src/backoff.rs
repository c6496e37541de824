//! Exponential backoff with jitter, drawn from the caller's RNG.
//!
//! Two decisions wait before trying again: failure accrual (how long an
//! ejected endpoint sits out) and retries (how long before the next attempt).
//! Both want the same shape: a delay that doubles with each consecutive
//! try, so a struggling peer sees geometrically less load, and that is
//! jittered, so a thousand proxies that saw the same failure at the same
//! instant do not all come back at the same instant.
//!
//! The jitter is symmetric around the exponential base and then clamped to
//! `[min, max]`: the first delay lies in `[min, min × (1 + jitter)]`, a capped
//! delay in `[max × (1 − jitter), max]`. Clamping on both sides keeps the
//! documented bounds exact while keeping jitter at both ends of the range
//! (a jitter that only adds would vanish at the cap, which is exactly where
//! synchronised clients hurt most).

use crate::time::Duration;
use rand::Rng;

/// Exponential backoff between `min` and `max` with multiplicative jitter.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// The base delay of the first try; no delay is ever shorter.
    pub min: Duration,
    /// No delay is ever longer.
    pub max: Duration,
    /// Fraction in `[0, 1]` by which a delay may deviate from its base.
    /// Values outside the range are clamped.
    pub jitter: f64,
}

impl Backoff {
    /// A backoff from `min` to `max` with the default jitter of one half.
    pub fn new(min: Duration, max: Duration) -> Self {
        Backoff {
            min,
            max: max.max(min),
            jitter: 0.5,
        }
    }

    /// The un-jittered delay for the `attempt`th consecutive try (0-based):
    /// `min × 2^attempt`, capped at `max`.
    pub fn base(&self, attempt: u32) -> Duration {
        let max = self.max.max(self.min);
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.min.checked_mul(factor).unwrap_or(max).min(max)
    }

    /// The jittered delay for the `attempt`th consecutive try (0-based),
    /// always within `[min, max]`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let max = self.max.max(self.min);
        let base = self.base(attempt).as_secs_f64();
        let jitter = if self.jitter.is_nan() {
            0.0
        } else {
            self.jitter.clamp(0.0, 1.0)
        };
        let u: f64 = rng.random();
        let secs = base * (1.0 - jitter + 2.0 * jitter * u);
        Duration::try_from_secs_f64(secs)
            .unwrap_or(max)
            .clamp(self.min, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    quickcheck! {
        /// Every delay lies within `[min, max]`, whatever the attempt count.
        fn prop_backoff_delay_within_bounds(min_ms: u16, span_ms: u16, attempt: u8, jitter: u8, seed: u64) -> bool {
            let b = Backoff {
                min: Duration::from_millis(u64::from(min_ms)),
                max: Duration::from_millis(u64::from(min_ms) + u64::from(span_ms)),
                jitter: f64::from(jitter) / 255.0,
            };
            let mut rng = SmallRng::seed_from_u64(seed);
            let d = b.delay(u32::from(attempt), &mut rng);
            d >= b.min && d <= b.max
        }

        /// The base never shrinks as consecutive tries accumulate.
        fn prop_backoff_base_is_monotone(min_ms: u16, span_ms: u16, attempt: u8) -> bool {
            let b = Backoff::new(
                Duration::from_millis(u64::from(min_ms)),
                Duration::from_millis(u64::from(min_ms) + u64::from(span_ms)),
            );
            b.base(u32::from(attempt)) <= b.base(u32::from(attempt) + 1)
        }
    }

    #[test]
    fn backoff_doubles_then_caps_and_keeps_jitter_at_the_cap() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(b.base(0), Duration::from_secs(1));
        assert_eq!(b.base(3), Duration::from_secs(8));
        assert_eq!(b.base(10), Duration::from_secs(60));
        assert_eq!(b.base(200), Duration::from_secs(60));
        let mut rng = SmallRng::seed_from_u64(7);
        let capped: Vec<_> = (0..50).map(|_| b.delay(40, &mut rng)).collect();
        assert!(capped.iter().any(|d| *d < Duration::from_secs(59)));
        assert!(capped.iter().all(|d| *d >= Duration::from_secs(30)));
    }
}
