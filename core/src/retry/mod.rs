//! Retries and deadlines: whether a failed attempt is tried again, when, and
//! how long a request may take.
//!
//! A retry turns a transient failure into a success the client never sees,
//! and turns an overload into a worse one. Everything here is about getting
//! the first without the second:
//!
//! - [`RetryPolicy`] says which outcomes are worth another try (chosen HTTP
//!   and gRPC statuses, connection failures, refused streams, per-try
//!   timeouts) and which requests may be repeated at all: idempotent methods
//!   by default, any method when the endpoint provably never processed the
//!   request, and only if the body fits the replay buffer (64 KiB).
//! - [`RetryBudget`] caps the extra load retries add, as a number you can
//!   state: over any window of at most `W`, retries ≤ `ratio` × primary
//!   requests + `min_per_second` × `W` (see [`budget`] for the proof sketch).
//! - [`RetryState`] runs one request: per-try timeouts, the request
//!   deadline, backoff with jitter from the caller's RNG, and the rule that a
//!   retry is never started if it could not finish before the deadline.
//!
//! A typical driver:
//!
//! ```
//! use needle_core::retry::*;
//! use needle_core::time::{Duration, Instant};
//! use rand::SeedableRng;
//!
//! let policy = RetryPolicy::default();
//! let mut budget = RetryBudget::new(BudgetConfig::default());
//! let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
//! let timeouts = Timeouts { request: Some(Duration::from_secs(2)), per_try: Some(Duration::from_millis(500)) };
//! let req = RequestMeta { method: "GET", body: RequestBody::Empty };
//!
//! let mut state = RetryState::new(Instant::ZERO, &policy, timeouts, &req, &mut budget);
//! // ...attempt 1 is sent; the endpoint answers 503 after 10 ms:
//! let busy = AttemptOutcome::Response { status: 503, grpc_status: None };
//! let step = state.on_outcome(Instant::from_millis(10), busy, &policy, &mut budget, &mut rng).unwrap();
//! let Step::Backoff { until } = step else { panic!() };
//! // ...at `until` the next attempt starts:
//! let next = state.handle_timeout(until, &policy, &mut budget, &mut rng);
//! assert!(matches!(next, Some(Step::Attempt { number: 2, .. })));
//! ```

mod attempts;
pub mod budget;
mod policy;

pub use attempts::{Finish, RetryError, RetryState, Step, Timeouts};
pub use budget::{BudgetConfig, RetryBudget};
pub use policy::{
    AttemptOutcome, GRPC_UNAVAILABLE, RequestBody, RequestMeta, RetryOn, RetryPolicy,
    RetryableRequests, StatusRange,
};

#[cfg(test)]
mod tests;
