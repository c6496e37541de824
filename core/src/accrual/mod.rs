//! Failure accrual: when to stop sending requests to an endpoint, and when to
//! try it again.
//!
//! Load balancing on latency alone has a blind spot: an endpoint that fails
//! fast looks *fast*, so a latency-aware balancer sends it more traffic. The
//! accrual state machine closes that gap. Per endpoint it watches response
//! outcomes and, once the evidence says the endpoint is broken, takes it out
//! of the ready set:
//!
//! ```text
//!            N consecutive failures            backoff elapsed (or
//!                                              every endpoint is out)
//!  Ready ─────────────────────────────► Ejected ──────────────► Probation
//!    ▲        (or success rate below            ▲                   │ one real request
//!    │         threshold over a window)         │ probe failed      ▼ is dispatched
//!    └──────────────────────────────────────────┴────────────── Probing
//!                  probe succeeded
//! ```
//!
//! - **Ejection** lasts an exponential backoff with jitter ([`Backoff`],
//!   default 1 s to 60 s): each consecutive ejection doubles the sit-out, so a
//!   dead endpoint costs one probe a minute, and the jitter (from the caller's
//!   seeded RNG) keeps a fleet of proxies from probing in lockstep.
//! - **Probation** is decided by one *real* request rather than a synthetic
//!   health check: the only evidence that matters is whether the endpoint
//!   serves the traffic we send it. While the probe is in flight the endpoint
//!   takes nothing else, so a still-broken endpoint fails one request, not a
//!   burst.
//! - The ejection count is forgotten once an endpoint has stayed healthy for
//!   the maximum backoff, so an endpoint that flaps once a day starts again
//!   at the minimum rather than at the cap.
//!
//! The machine is per endpoint; the set-level question ("is everything out?")
//! is answered by the balancer that owns the set. When every endpoint is
//! ejected it ends the ejection that would end first at once
//! ([`Accrual::end_ejection_early`]), so a service that has recovered gets
//! its traffic back after one probe rather than after a backoff of up to a
//! minute, while a still-broken endpoint still takes one request at a time.
//! Only when every endpoint has its probe in flight does the balancer report
//! [`PickError::AllEjected`](crate::balance::PickError::AllEjected), so the
//! io layer can fail fast instead of queueing.

mod window;

use crate::backoff::Backoff;
use crate::time::{Duration, Instant};
use rand::Rng;
use window::SuccessWindow;

/// What counts as "broken enough to eject".
#[derive(Clone, Copy, Debug, PartialEq)]
#[non_exhaustive]
pub enum AccrualMode {
    /// Eject after this many consecutive failures (default 7). Any success
    /// resets the count. Cheap and decisive for endpoints that are fully down.
    ConsecutiveFailures(u32),
    /// Eject when, over the last `window`, at least `min_requests` responses
    /// were seen and fewer than `min_success_rate` of them succeeded. Catches
    /// endpoints that fail a steady fraction of requests, which consecutive
    /// counting never sees.
    SuccessRate {
        /// How far back the rate looks.
        window: Duration,
        /// No verdict on fewer responses than this: a rate over three
        /// requests is noise.
        min_requests: u32,
        /// Eject below this success fraction, in `[0, 1]`; values outside
        /// are clamped to it (NaN counts as 0: never eject on the rate).
        min_success_rate: f64,
    },
}

/// Configuration of failure accrual.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AccrualConfig {
    /// When to eject.
    pub mode: AccrualMode,
    /// How long an ejection lasts, by consecutive ejection count.
    pub backoff: Backoff,
}

impl Default for AccrualConfig {
    /// Seven consecutive failures; ejections from 1 s to 60 s, jitter ½.
    fn default() -> Self {
        AccrualConfig {
            mode: AccrualMode::ConsecutiveFailures(7),
            backoff: Backoff::new(Duration::from_secs(1), Duration::from_secs(60)),
        }
    }
}

/// Where an endpoint stands with failure accrual.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Health {
    /// Takes traffic.
    Ready,
    /// Out of the ready set until the instant given.
    Ejected {
        /// When it enters probation.
        until: Instant,
    },
    /// Its backoff has elapsed; the next request sent to it is the probe.
    Probation,
    /// The probe request is in flight; takes nothing else until it answers.
    Probing,
}

/// A change of [`Health`] that the owner may want to log or count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Transition {
    /// The endpoint left the ready set until `until`.
    Ejected {
        /// When it enters probation.
        until: Instant,
    },
    /// The backoff elapsed (or the balancer ended the ejection early, every
    /// endpoint being out); the endpoint awaits its probe request.
    Probation,
    /// The probe succeeded; the endpoint is ready again.
    Recovered,
}

/// Failure accrual for one endpoint. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct Accrual {
    config: AccrualConfig,
    health: Health,
    consecutive_failures: u32,
    /// Consecutive ejections, the exponent of the backoff.
    ejections: u32,
    /// When the endpoint last recovered, to forget old ejections.
    recovered_at: Option<Instant>,
    /// Boxed: most endpoints use consecutive-failure mode, and the balancer
    /// keeps one `Accrual` per endpoint, so an inline window would triple
    /// the size of every endpoint slot (and the cache misses of a pick).
    window: Option<Box<SuccessWindow>>,
}

impl Accrual {
    /// A ready endpoint with no history.
    pub fn new(config: AccrualConfig) -> Self {
        let window = match config.mode {
            AccrualMode::SuccessRate { window, .. } => Some(Box::new(SuccessWindow::new(window))),
            AccrualMode::ConsecutiveFailures(_) => None,
        };
        Accrual {
            config,
            health: Health::Ready,
            consecutive_failures: 0,
            ejections: 0,
            recovered_at: None,
            window,
        }
    }

    /// Where the endpoint stands. Does not advance time: call
    /// [`handle_timeout`](Self::handle_timeout) first.
    pub fn health(&self) -> Health {
        self.health
    }

    /// Whether a request may be sent to the endpoint now (ready, or in
    /// probation awaiting its probe).
    pub fn is_available(&self) -> bool {
        matches!(self.health, Health::Ready | Health::Probation)
    }

    /// When the endpoint next wants [`handle_timeout`](Self::handle_timeout):
    /// the end of its ejection, if ejected.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.health {
            Health::Ejected { until } => Some(until),
            _ => None,
        }
    }

    /// Advances time: an ejection whose backoff has elapsed becomes probation.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Transition> {
        match self.health {
            Health::Ejected { until } if now >= until => {
                self.health = Health::Probation;
                Some(Transition::Probation)
            }
            _ => None,
        }
    }

    /// Ends an ejection before its backoff has elapsed: the endpoint enters
    /// probation, so the next request sent to it is its probe. The balancer
    /// calls this when every endpoint is out (see
    /// [`Balancer::pick`](crate::balance::Balancer::pick)): failing every
    /// request fast until a backoff elapses would keep a whole service dark
    /// for up to the maximum backoff after it has recovered. Returns
    /// [`Transition::Probation`] if the endpoint was ejected.
    pub fn end_ejection_early(&mut self) -> Option<Transition> {
        match self.health {
            Health::Ejected { .. } => {
                self.health = Health::Probation;
                Some(Transition::Probation)
            }
            _ => None,
        }
    }

    /// Records that a request was dispatched to the endpoint. Returns `true`
    /// if it is the probation probe (the caller must hand that back to
    /// [`on_response`](Self::on_response) with `probe = true`, or to
    /// [`on_probe_cancelled`](Self::on_probe_cancelled)).
    pub fn on_dispatch(&mut self) -> bool {
        if self.health == Health::Probation {
            self.health = Health::Probing;
            true
        } else {
            false
        }
    }

    /// The probe was abandoned without an answer (the client went away):
    /// it proved nothing, so the next request probes instead.
    pub fn on_probe_cancelled(&mut self) {
        if self.health == Health::Probing {
            self.health = Health::Probation;
        }
    }

    /// Records a response. `probe` says whether this request was the
    /// probation probe. Responses to requests dispatched before an ejection
    /// are stale evidence and change nothing while the endpoint is out.
    pub fn on_response(
        &mut self,
        now: Instant,
        success: bool,
        probe: bool,
        rng: &mut impl Rng,
    ) -> Option<Transition> {
        match self.health {
            Health::Probing if probe => {
                if success {
                    self.recover(now);
                    Some(Transition::Recovered)
                } else {
                    Some(self.eject(now, rng))
                }
            }
            Health::Ready => {
                if success {
                    self.consecutive_failures = 0;
                } else {
                    self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                }
                if let Some(w) = &mut self.window {
                    w.record(now, success);
                }
                if self.should_eject(now) {
                    Some(self.eject(now, rng))
                } else {
                    None
                }
            }
            // Ejected, in probation, or probing with a non-probe answer: the
            // request was sent before the ejection; the probe decides.
            _ => None,
        }
    }

    fn should_eject(&self, now: Instant) -> bool {
        match self.config.mode {
            AccrualMode::ConsecutiveFailures(n) => self.consecutive_failures >= n.max(1),
            AccrualMode::SuccessRate {
                min_requests,
                min_success_rate,
                ..
            } => {
                let Some(w) = &self.window else { return false };
                // Above 1 would eject an endpoint that never failed.
                let min_rate = if min_success_rate.is_nan() {
                    0.0
                } else {
                    min_success_rate.clamp(0.0, 1.0)
                };
                let (s, f) = w.counts(now);
                let total = s + f;
                total >= u64::from(min_requests.max(1)) && (s as f64) < min_rate * total as f64
            }
        }
    }

    fn eject(&mut self, now: Instant, rng: &mut impl Rng) -> Transition {
        // An endpoint that has been healthy for a whole maximum backoff
        // starts again from the minimum.
        let long_healthy = self
            .recovered_at
            .is_some_and(|at| now.saturating_duration_since(at) >= self.config.backoff.max);
        if long_healthy {
            self.ejections = 0;
        }
        let delay = self.config.backoff.delay(self.ejections, rng);
        self.ejections = self.ejections.saturating_add(1);
        let until = now + delay;
        self.health = Health::Ejected { until };
        self.consecutive_failures = 0;
        if let Some(w) = &mut self.window {
            w.clear();
        }
        Transition::Ejected { until }
    }

    fn recover(&mut self, now: Instant) {
        self.health = Health::Ready;
        self.consecutive_failures = 0;
        self.recovered_at = Some(now);
        if let Some(w) = &mut self.window {
            w.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn fail_n(a: &mut Accrual, now: Instant, n: u32, rng: &mut SmallRng) -> Option<Transition> {
        let mut last = None;
        for _ in 0..n {
            last = a.on_response(now, false, false, rng).or(last);
        }
        last
    }

    #[test]
    fn seven_consecutive_failures_eject_for_one_to_one_and_a_half_seconds() {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut a = Accrual::new(AccrualConfig::default());
        assert_eq!(fail_n(&mut a, Instant::ZERO, 6, &mut rng), None);
        assert!(a.is_available());
        let Some(Transition::Ejected { until }) =
            a.on_response(Instant::ZERO, false, false, &mut rng)
        else {
            panic!("7th failure must eject");
        };
        assert!(until >= Instant::from_secs(1) && until <= Instant::from_millis(1500));
        assert!(!a.is_available());
        assert_eq!(a.poll_timeout(), Some(until));
    }

    #[test]
    fn probation_admits_one_probe_whose_answer_decides() {
        let mut rng = SmallRng::seed_from_u64(2);
        let mut a = Accrual::new(AccrualConfig::default());
        fail_n(&mut a, Instant::ZERO, 7, &mut rng);
        let until = a.poll_timeout().unwrap();
        assert_eq!(
            a.handle_timeout(until.saturating_sub(Duration::from_nanos(1))),
            None
        );
        assert_eq!(a.handle_timeout(until), Some(Transition::Probation));
        assert!(a.on_dispatch(), "first request is the probe");
        assert!(!a.is_available(), "nothing else while probing");
        // A failed probe ejects again, for longer.
        let Some(Transition::Ejected { until: again }) =
            a.on_response(until, false, true, &mut rng)
        else {
            panic!("failed probe must eject");
        };
        assert!(again - until >= Duration::from_secs(2));
        a.handle_timeout(again);
        assert!(a.on_dispatch());
        assert_eq!(
            a.on_response(again, true, true, &mut rng),
            Some(Transition::Recovered)
        );
        assert_eq!(a.health(), Health::Ready);
    }

    #[test]
    fn success_rate_mode_ejects_a_steadily_flaky_endpoint() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut a = Accrual::new(AccrualConfig {
            mode: AccrualMode::SuccessRate {
                window: Duration::from_secs(10),
                min_requests: 20,
                min_success_rate: 0.8,
            },
            ..AccrualConfig::default()
        });
        // Every third request fails: never 7 in a row, but 67% success.
        let mut ejected = false;
        for i in 0..30u64 {
            let now = Instant::from_millis(i * 100);
            if a.on_response(now, i % 3 != 0, false, &mut rng).is_some() {
                ejected = true;
                assert!(i >= 19, "no verdict before min_requests");
                break;
            }
        }
        assert!(ejected);
    }

    #[test]
    fn old_success_rate_buckets_expire() {
        let mut rng = SmallRng::seed_from_u64(3);
        let mut a = Accrual::new(AccrualConfig {
            mode: AccrualMode::SuccessRate {
                window: Duration::from_secs(10),
                min_requests: 5,
                min_success_rate: 0.8,
            },
            ..AccrualConfig::default()
        });
        // Four failures early on: not enough requests for a verdict.
        for i in 0..4u64 {
            assert_eq!(
                a.on_response(Instant::from_millis(500 + i), false, false, &mut rng),
                None
            );
        }
        // Within the window they still count: one success makes 1/5 < 80%.
        let mut b = a.clone();
        assert!(matches!(
            b.on_response(Instant::from_millis(9_000), true, false, &mut rng),
            Some(Transition::Ejected { .. })
        ));
        // A window later (the failures' bucket slot is reused, too) they are
        // forgotten: five successes are 5/5.
        for i in 0..5u64 {
            assert_eq!(
                a.on_response(Instant::from_millis(10_500 + i), true, false, &mut rng),
                None
            );
        }
    }

    #[test]
    fn success_rate_above_one_is_clamped_and_never_ejects_a_perfect_endpoint() {
        let mut rng = SmallRng::seed_from_u64(3);
        for min_success_rate in [1.5, f64::INFINITY, 1.0, f64::NAN] {
            let mut a = Accrual::new(AccrualConfig {
                mode: AccrualMode::SuccessRate {
                    window: Duration::from_secs(10),
                    min_requests: 5,
                    min_success_rate,
                },
                ..AccrualConfig::default()
            });
            for i in 0..50u64 {
                let t = a.on_response(Instant::from_millis(i * 10), true, false, &mut rng);
                assert_eq!(t, None, "rate {min_success_rate}");
            }
        }
        // Clamped to 1, a single failure in the window is below the rate.
        let mut a = Accrual::new(AccrualConfig {
            mode: AccrualMode::SuccessRate {
                window: Duration::from_secs(10),
                min_requests: 5,
                min_success_rate: 7.0,
            },
            ..AccrualConfig::default()
        });
        for i in 0..10u64 {
            assert_eq!(
                a.on_response(Instant::from_millis(i), true, false, &mut rng),
                None
            );
        }
        assert!(matches!(
            a.on_response(Instant::from_millis(10), false, false, &mut rng),
            Some(Transition::Ejected { .. })
        ));
    }

    quickcheck! {
        /// Fewer than N consecutive failures never eject, whatever
        /// successes are interleaved; N in a row always do.
        fn prop_accrual_ejects_exactly_at_n_consecutive_failures(outcomes: Vec<bool>, n: u8, seed: u64) -> bool {
            let n = u32::from(n % 10) + 1;
            let mut rng = SmallRng::seed_from_u64(seed);
            let mut a = Accrual::new(AccrualConfig { mode: AccrualMode::ConsecutiveFailures(n), ..AccrualConfig::default() });
            let mut run = 0;
            for ok in outcomes {
                run = if ok { 0 } else { run + 1 };
                let t = a.on_response(Instant::ZERO, ok, false, &mut rng);
                let ejected = matches!(t, Some(Transition::Ejected { .. }));
                if ejected != (run == n) { return false; }
                if ejected { return !a.is_available(); }
            }
            a.is_available()
        }

        /// Every ejection lasts within the configured backoff bounds, and
        /// a probing endpoint admits no second request.
        fn prop_accrual_ejection_within_bounds_and_single_probe(rounds: u8, seed: u64) -> bool {
            let mut rng = SmallRng::seed_from_u64(seed);
            let cfg = AccrualConfig::default();
            let mut a = Accrual::new(cfg);
            let mut now = Instant::ZERO;
            for r in 0..rounds % 20 {
                let t = if a.health() == Health::Ready {
                    fail_n(&mut a, now, 7, &mut rng)
                } else {
                    a.on_response(now, false, true, &mut rng)
                };
                let Some(Transition::Ejected { until }) = t else { return false };
                let d = until - now;
                if d < cfg.backoff.min || d > cfg.backoff.max { return false; }
                now = until;
                a.handle_timeout(now);
                if !a.on_dispatch() || a.on_dispatch() || a.is_available() { return false; }
                if r % 5 == 4 {
                    a.on_response(now, true, true, &mut rng);
                    if a.health() != Health::Ready { return false; }
                }
            }
            true
        }
    }
}
