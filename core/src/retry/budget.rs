//! The retry budget: how much extra load retries may add, as a number.
//!
//! # The bound
//!
//! With `ratio` r, a floor of `m` retries per second and a window `W`, the
//! budget guarantees, for **every** interval `I = (s, t]` with `t − s ≤ W`
//! (not only intervals aligned to some bucket; equivalently every closed
//! `[a, b]` with `b − a < W`):
//!
//! ```text
//! retries admitted in I  ≤  r × primary requests recorded in I  +  m × W
//! ```
//!
//! The floor term is `m × W` however short `I` is, not `m × (t − s)`: the
//! whole floor may be spent at a single instant.
//!
//! and hence, over any interval of length `L`, at most
//! `r × requests + m × W × ⌈L / W⌉`. With the defaults (r = 20 %, m = 10/s,
//! W = 10 s) a retry storm can add at most a fifth of the primary load plus
//! 100 retries per ten seconds, however the failures are spread.
//!
//! # How it is enforced
//!
//! Let `K(t) = r × Q(0, t] − R(0, t]`, primary requests `Q` minus retries `R`
//! since the budget was created. For an interval `(s, t]`,
//! `r × Q(s, t] − R(s, t] = K(t) − K(s)`. A retry at `t` is admitted only if,
//! counting it, every interval ending at `t` and starting within the last
//! `W` keeps the bound:
//!
//! ```text
//! K(t) − 1 − max{ K(s) : t − W ≤ s < t }  ≥  −m × W
//! ```
//!
//! That suffices for every interval: take the last retry admitted in it;
//! the check made for that retry covered this interval's start, and requests
//! after it only raise the right-hand side. The maximum over the window is a
//! sliding-window maximum kept in a monotone deque: each step of `K` enters
//! once and leaves once, so checks and records are amortised O(1), and the
//! deque only holds the steps where `K` fell, i.e. at most the retries of one
//! window.
//!
//! Arithmetic is exact: `K` is kept in millionths (the ratio is rounded
//! *down* to parts per million and the floor `m × W` down to millionths), so
//! the bound holds for the rounded figures without floating-point drift.
//! Retries are not primary requests and earn no budget themselves. The ratio
//! is clamped to `[0, MAX_RATIO]` (1,000 retries per request; NaN counts as
//! 0) and the arithmetic saturates, so no configuration can overflow it.
//!
//! # What the floor is for
//!
//! The check is the most permissive one that keeps the bound without knowing
//! the future: a retry admitted now must fit every window that starts before
//! it, including one that starts just before it and contains no further
//! requests. So retries spend the ratio as requests arrive (a steady storm
//! gets `ratio` of its traffic back as retries), and `m × W` is the only
//! allowance for a burst. With `m = 0`, a retry could only spend requests
//! recorded at the same instant: keep the floor above zero.

use crate::time::{Duration, Instant};
use std::collections::VecDeque;

/// One retry, in the budget's fixed-point unit (millionths).
const UNIT: i128 = 1_000_000;

/// The largest ratio enforced: larger ones (up to infinity) are clamped to
/// it. A thousand retries per request is no budget at all; the cap keeps
/// the fixed-point arithmetic far from overflow.
pub const MAX_RATIO: f64 = 1000.0;

/// Configuration of a [`RetryBudget`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed per primary request over the window (default 0.2).
    /// Clamped to `[0, MAX_RATIO]` (1,000); NaN counts as 0.
    pub ratio: f64,
    /// Retries allowed per second regardless of traffic (default 10), so
    /// that a low-traffic service can still retry at all.
    pub min_per_second: u32,
    /// How far back requests earn budget (default 10 s).
    pub window: Duration,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

/// A retry budget shared by the requests of one route or backend. See the
/// [module docs](self) for the bound it enforces.
///
/// Time must not go backwards; an earlier `now` is treated as the latest
/// time seen.
#[derive(Clone, Debug)]
pub struct RetryBudget {
    ratio_ppm: i128,
    floor: i128,
    window: Duration,
    /// `K` now, in millionths.
    total: i128,
    /// The latest time an event was recorded or a check made.
    latest: Instant,
    /// Steps of `K` that ended, as `(end, value)`: `K` held `value` until
    /// `end`. Values strictly decrease from front to back; the back entry
    /// always ends at `latest`.
    past: VecDeque<(Instant, i128)>,
}

impl RetryBudget {
    /// A budget with no history (the floor is available at once).
    pub fn new(config: BudgetConfig) -> Self {
        let ratio = if config.ratio.is_nan() {
            0.0
        } else {
            config.ratio.clamp(0.0, MAX_RATIO)
        };
        let window_ns = i128::try_from(config.window.as_nanos()).unwrap_or(i128::MAX / UNIT);
        let mut past = VecDeque::new();
        past.push_back((Instant::ZERO, 0));
        RetryBudget {
            ratio_ppm: (ratio * 1e6).floor() as i128,
            // m × W seconds, in millionths: m × W_ns × 10⁶ / 10⁹.
            floor: i128::from(config.min_per_second).saturating_mul(window_ns) / 1_000,
            window: config.window,
            total: 0,
            latest: Instant::ZERO,
            past,
        }
    }

    /// The ratio actually enforced, after rounding down to parts per million.
    pub fn ratio_ppm(&self) -> u64 {
        u64::try_from(self.ratio_ppm).unwrap_or(0)
    }

    /// Records a primary request (not a retry) at `now`: it earns `ratio`
    /// of a retry for the next window.
    pub fn record_request(&mut self, now: Instant) {
        self.advance(now);
        self.total = self.total.saturating_add(self.ratio_ppm);
    }

    /// Withdraws one retry at `now` if the budget allows it, returning
    /// whether it did. A `false` means: answer with the failure, do not retry.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let now = self.advance(now);
        while self
            .past
            .front()
            .is_some_and(|&(end, _)| end.saturating_add(self.window) <= now)
        {
            self.past.pop_front();
        }
        let max = self.past.front().map_or(self.total, |&(_, v)| v);
        let left = self
            .total
            .saturating_sub(UNIT)
            .saturating_sub(max)
            .saturating_add(self.floor);
        if left >= 0 {
            self.total = self.total.saturating_sub(UNIT);
            true
        } else {
            false
        }
    }

    /// Closes the current step of `K` if time moved on; returns the
    /// effective now.
    fn advance(&mut self, now: Instant) -> Instant {
        if now <= self.latest {
            return self.latest;
        }
        // `K` held `total` from the previous step up to `now`.
        while self.past.back().is_some_and(|&(_, v)| v <= self.total) {
            self.past.pop_back();
        }
        self.past.push_back((now, self.total));
        self.latest = now;
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    fn budget(ratio_pct: u8, min: u8, window_ms: u16) -> RetryBudget {
        RetryBudget::new(BudgetConfig {
            ratio: f64::from(ratio_pct) / 100.0,
            min_per_second: u32::from(min),
            window: Duration::from_millis(u64::from(window_ms)),
        })
    }

    #[test]
    fn huge_ratios_are_clamped_and_cannot_overflow() {
        for ratio in [1e300, f64::INFINITY, 1e12] {
            let mut b = RetryBudget::new(BudgetConfig {
                ratio,
                min_per_second: u32::MAX,
                window: Duration::MAX,
            });
            assert_eq!(b.ratio_ppm(), 1_000_000_000);
            for i in 0..1000 {
                b.record_request(Instant::from_millis(i));
            }
            assert!(b.try_withdraw(Instant::from_millis(1000)));
        }
        for ratio in [f64::NAN, -1.0, f64::NEG_INFINITY] {
            let b = RetryBudget::new(BudgetConfig {
                ratio,
                ..BudgetConfig::default()
            });
            assert_eq!(b.ratio_ppm(), 0);
        }
        // Exactly at the cap, the ratio is honoured.
        let mut b = RetryBudget::new(BudgetConfig {
            ratio: MAX_RATIO,
            min_per_second: 0,
            window: Duration::from_secs(10),
        });
        b.record_request(Instant::ZERO);
        let admitted = (0..2000).filter(|_| b.try_withdraw(Instant::ZERO)).count();
        assert_eq!(admitted, 1000);
    }

    #[test]
    fn floor_alone_allows_min_times_window() {
        let mut b = budget(0, 10, 10_000);
        let admitted = (0..500)
            .filter(|_| b.try_withdraw(Instant::from_secs(1)))
            .count();
        assert_eq!(admitted, 100);
        // 10 s later the window has slid past those retries.
        let admitted = (0..500)
            .filter(|_| b.try_withdraw(Instant::from_millis(11_001)))
            .count();
        assert_eq!(admitted, 100);
    }

    #[test]
    fn requests_earn_their_ratio() {
        // 1,000 failing requests in a second, each wanting a retry: the
        // budget admits ratio × 1,000 plus the floor (1/s × 10 s).
        let mut b = budget(20, 1, 10_000);
        let mut admitted = 0;
        for i in 0..1000 {
            b.record_request(Instant::from_millis(i));
            admitted += usize::from(b.try_withdraw(Instant::from_millis(i)));
        }
        assert!((200..=210).contains(&admitted), "{admitted}");
    }

    #[test]
    fn earned_budget_cannot_be_spent_in_one_burst_after_requests_stop() {
        // Spending 200 earned retries at one instant after the requests
        // stopped would break the bound on the window that starts just
        // before that instant: the floor is the only burst allowance.
        let mut b = budget(20, 1, 10_000);
        for i in 0..1000 {
            b.record_request(Instant::from_millis(i));
        }
        let admitted = (0..1000)
            .filter(|_| b.try_withdraw(Instant::from_millis(1000)))
            .count();
        assert_eq!(admitted, 10);
    }

    /// Checks the documented bound by brute force on every closed window
    /// `[t_i, t_j]` between two event times with `t_j − t_i < w` (ns):
    /// `retries ≤ ratio × requests + min × W`. Events must be in time order.
    ///
    /// These windows are all there is to check: the events inside any
    /// interval `(s, t]` with `t − s ≤ W` are exactly those inside
    /// `[t_i, t_j]`, `t_i` the first event time after `s` and `t_j` the last
    /// at or before `t`, and `t_j − t_i < t − s ≤ W`.
    fn bound_holds(events: &[(i128, bool)], ratio_ppm: i128, floor: i128, w: i128) -> bool {
        let n = events.len();
        // prefix[k]: (requests, retries) among events[..k].
        let mut prefix = vec![(0i128, 0i128); n + 1];
        for (k, &(_, retry)) in events.iter().enumerate() {
            let (q, r) = prefix[k];
            prefix[k + 1] = if retry { (q, r + 1) } else { (q + 1, r) };
        }
        // A window starting at t_i begins at the first event at that time;
        // one ending at t_j ends after the last event at that time.
        let first = |t: i128| events.partition_point(|&(u, _)| u < t);
        let after_last = |t: i128| events.partition_point(|&(u, _)| u <= t);
        (0..n).all(|i| {
            let ti = events[i].0;
            let lo = first(ti);
            events[i..]
                .iter()
                .take_while(|&&(tj, _)| tj - ti < w)
                .all(|&(tj, _)| {
                    let hi = after_last(tj);
                    let q = prefix[hi].0 - prefix[lo].0;
                    let r = prefix[hi].1 - prefix[lo].1;
                    r * UNIT <= ratio_ppm * q + floor
                })
        })
    }

    #[test]
    fn bound_checker_catches_a_violation() {
        // Two retries at one instant with no requests and a floor of one
        // retry per window: the checker must object.
        let events = [(5, true), (5, true)];
        assert!(!bound_holds(&events, 0, UNIT, 10));
        assert!(bound_holds(&events[..1], 0, UNIT, 10));
        // Retries 10 ns apart with W = 10 ns are never in one window.
        assert!(bound_holds(&[(0, true), (10, true)], 0, UNIT, 10));
        assert!(!bound_holds(&[(0, true), (9, true)], 0, UNIT, 10));
    }

    quickcheck! {
        /// The budget bound, exactly as documented: for every interval of
        /// length at most the window `W`, admitted retries ≤ ratio × primary
        /// requests + min × W (the floor term is over `W` whatever the
        /// interval's length). Checked by brute force on every pair of event
        /// times closer than `W` (see `bound_holds`). Events are primary
        /// requests and retry attempts at random gaps (including many at the
        /// same instant).
        fn prop_budget_bound_holds_over_every_window(
            ops: Vec<(u8, bool)>, ratio_pct: u8, min: u8, window_ms: u16
        ) -> bool {
            let window_ms = u64::from(window_ms % 2000) + 1;
            let mut b = budget(ratio_pct % 150, min % 20, window_ms as u16);
            let mut now = Instant::ZERO;
            let mut events: Vec<(i128, bool)> = Vec::new();
            for (gap, is_retry) in ops {
                now += Duration::from_millis(u64::from(gap % 50));
                let t = i128::from(now.as_nanos());
                if is_retry {
                    if b.try_withdraw(now) { events.push((t, true)); }
                } else {
                    b.record_request(now);
                    events.push((t, false));
                }
            }
            let w = i128::from(window_ms) * 1_000_000;
            bound_holds(&events, b.ratio_pct_ppm(), b.floor, w)
        }
    }

    impl RetryBudget {
        fn ratio_pct_ppm(&self) -> i128 {
            self.ratio_ppm
        }
    }
}
