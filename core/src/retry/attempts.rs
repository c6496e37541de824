//! One request's attempts: deadlines, per-try timeouts and the decision to
//! try again.

use super::budget::RetryBudget;
use super::policy::{AttemptOutcome, RequestBody, RequestMeta, RetryPolicy};
use crate::time::{Duration, Instant};
use rand::Rng;

/// A route's timeouts (Gateway API HTTPRoute `timeouts.request` and
/// `timeouts.backendRequest`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    /// The whole request, retries and backoffs included. `None`: no deadline.
    pub request: Option<Duration>,
    /// Each attempt. `None`: an attempt may take until the request deadline.
    pub per_try: Option<Duration>,
}

/// What the caller does next for this request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Send attempt `number` (1-based) now; abandon it at `deadline`, if any
    /// (the earlier of the per-try timeout and the request deadline).
    Attempt {
        /// Which attempt this is; 1 is the original request.
        number: u32,
        /// When to abandon it.
        deadline: Option<Instant>,
    },
    /// Wait (backoff), then call [`RetryState::handle_timeout`] at `until`.
    Backoff {
        /// End of the backoff.
        until: Instant,
    },
    /// Stop: answer the client with the last attempt's outcome (or, for
    /// [`Finish::DeadlineExceeded`], with a timeout error).
    Finish(Finish),
}

/// Why a request stopped being tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Finish {
    /// The outcome is not one the policy retries (a success, typically).
    Final,
    /// Retryable outcome, but the method may not be repeated.
    MethodNotRetryable,
    /// Retryable outcome, but the body did not fit the replay buffer.
    BodyNotReplayable,
    /// The policy's attempts are used up.
    AttemptsExhausted,
    /// The retry budget is spent: retrying now would add more load than the
    /// budget allows.
    BudgetExhausted,
    /// A retry could not finish before the request's deadline: either when
    /// it was decided (at the planned end of its backoff), or when the
    /// backoff's wake came late and the retry no longer fitted at the
    /// actual start time.
    DeadlineTooClose,
    /// The request's deadline passed during an attempt.
    DeadlineExceeded,
}

/// Misuse of a [`RetryState`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RetryError {
    /// An outcome was reported while no attempt was in flight.
    #[error("no attempt is in flight")]
    NoAttemptInFlight,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Attempting { deadline: Option<Instant> },
    BackingOff { until: Instant },
    Finished(Finish),
}

/// The retry state machine of one request.
///
/// Created when the request starts (which records it as a primary request
/// in the budget and starts attempt 1), then fed each attempt's outcome
/// ([`on_outcome`](Self::on_outcome)) and the passing of time
/// ([`handle_timeout`](Self::handle_timeout) at
/// [`poll_timeout`](Self::poll_timeout)). Every decision point returns the
/// next [`Step`].
///
/// # The deadline rule
///
/// A retry is started at `at` only if `at + per_try ≤ deadline` when a
/// per-try timeout is set, or `at < deadline` otherwise. This is checked
/// twice: when the retry is decided, against the planned end of its backoff,
/// and again with the actual `now` when [`handle_timeout`](Self::handle_timeout)
/// ends the backoff (the caller may wake late); a retry that no longer fits
/// then finishes with [`Finish::DeadlineTooClose`]. The per-try timeout is the operator's statement
/// of how long a useful attempt may take; an attempt that the request
/// deadline would cut short of it is load spent on an answer the client will
/// likely never see, which is the wrong time to add load.
#[derive(Clone, Debug)]
pub struct RetryState {
    deadline: Option<Instant>,
    per_try: Option<Duration>,
    attempts: u32,
    method_retryable: bool,
    body_replayable: bool,
    phase: Phase,
}

impl RetryState {
    /// Starts a request at `now`: records it in `budget` and begins attempt 1.
    pub fn new(
        now: Instant,
        policy: &RetryPolicy,
        timeouts: Timeouts,
        request: &RequestMeta<'_>,
        budget: &mut RetryBudget,
    ) -> Self {
        budget.record_request(now);
        let body_replayable = match request.body {
            RequestBody::Empty | RequestBody::Streaming => true,
            RequestBody::Sized(n) => n <= u64::try_from(policy.replay_buffer).unwrap_or(u64::MAX),
        };
        let mut s = RetryState {
            deadline: timeouts.request.map(|d| now + d),
            per_try: timeouts.per_try,
            attempts: 0,
            method_retryable: policy.requests.allows(request.method),
            body_replayable,
            phase: Phase::Finished(Finish::Final),
        };
        s.start_attempt(now);
        s
    }

    /// The request's deadline, if it has one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Attempts started so far (1 after creation).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The current step: the attempt in flight, the backoff under way, or
    /// why the request finished.
    pub fn step(&self) -> Step {
        match self.phase {
            Phase::Attempting { deadline } => Step::Attempt {
                number: self.attempts,
                deadline,
            },
            Phase::BackingOff { until } => Step::Backoff { until },
            Phase::Finished(f) => Step::Finish(f),
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due: the
    /// in-flight attempt's deadline or the end of the backoff.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Attempting { deadline } => deadline,
            Phase::BackingOff { until } => Some(until),
            Phase::Finished(_) => None,
        }
    }

    /// The streaming request body outgrew the replay buffer: it can no
    /// longer be sent again.
    pub fn replay_buffer_overflowed(&mut self) {
        self.body_replayable = false;
    }

    /// Advances time. An attempt past the request deadline finishes the
    /// request ([`Finish::DeadlineExceeded`]); past its per-try timeout it
    /// counts as [`AttemptOutcome::PerTryTimeout`]; a backoff that has
    /// elapsed starts the next attempt if it still fits before the request
    /// deadline at `now` (else [`Finish::DeadlineTooClose`]). Returns the new
    /// step if it changed.
    pub fn handle_timeout(
        &mut self,
        now: Instant,
        policy: &RetryPolicy,
        budget: &mut RetryBudget,
        rng: &mut impl Rng,
    ) -> Option<Step> {
        match self.phase {
            Phase::Attempting { deadline: Some(at) } if now >= at => {
                if self.deadline.is_some_and(|d| now >= d) {
                    self.phase = Phase::Finished(Finish::DeadlineExceeded);
                    Some(self.step())
                } else {
                    self.on_outcome(now, AttemptOutcome::PerTryTimeout, policy, budget, rng)
                        .ok()
                }
            }
            Phase::BackingOff { until } if now >= until => {
                // The fit was checked against the planned `until`; the wake
                // may come later than that, so check again with `now`.
                if self.retry_fits(now) {
                    self.start_attempt(now);
                } else {
                    self.phase = Phase::Finished(Finish::DeadlineTooClose);
                }
                Some(self.step())
            }
            _ => None,
        }
    }

    /// Records how the attempt in flight ended and decides what comes next.
    pub fn on_outcome(
        &mut self,
        now: Instant,
        outcome: AttemptOutcome,
        policy: &RetryPolicy,
        budget: &mut RetryBudget,
        rng: &mut impl Rng,
    ) -> Result<Step, RetryError> {
        if !matches!(self.phase, Phase::Attempting { .. }) {
            return Err(RetryError::NoAttemptInFlight);
        }
        self.phase = match self.decide(now, &outcome, policy, budget, rng) {
            Ok(until) => Phase::BackingOff { until },
            Err(finish) => Phase::Finished(finish),
        };
        Ok(self.step())
    }

    /// Checks in order of cost: the budget is only touched when everything
    /// else says yes, so it is not spent on a retry the decision refuses.
    /// A retry withdrawn here may still never be sent: the request may be
    /// abandoned during the backoff, or a late wake may fail the deadline
    /// re-check in [`handle_timeout`](Self::handle_timeout).
    fn decide(
        &self,
        now: Instant,
        outcome: &AttemptOutcome,
        policy: &RetryPolicy,
        budget: &mut RetryBudget,
        rng: &mut impl Rng,
    ) -> Result<Instant, Finish> {
        if !policy.retry_on.matches(outcome) {
            return Err(Finish::Final);
        }
        if !self.method_retryable && !outcome.unprocessed() {
            return Err(Finish::MethodNotRetryable);
        }
        if !self.body_replayable {
            return Err(Finish::BodyNotReplayable);
        }
        if self.attempts >= policy.max_attempts {
            return Err(Finish::AttemptsExhausted);
        }
        let until = now + policy.backoff.delay(self.attempts - 1, rng);
        if !self.retry_fits(until) {
            return Err(Finish::DeadlineTooClose);
        }
        if !budget.try_withdraw(now) {
            return Err(Finish::BudgetExhausted);
        }
        Ok(until)
    }

    /// The deadline rule: may a retry start at `at`?
    fn retry_fits(&self, at: Instant) -> bool {
        let Some(deadline) = self.deadline else {
            return true;
        };
        match self.per_try {
            Some(per_try) => at.checked_add(per_try).is_some_and(|end| end <= deadline),
            None => at < deadline,
        }
    }

    fn start_attempt(&mut self, now: Instant) {
        self.attempts = self.attempts.saturating_add(1);
        let per_try = self.per_try.map(|d| now + d);
        let deadline = match (per_try, self.deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.phase = Phase::Attempting { deadline };
    }
}
