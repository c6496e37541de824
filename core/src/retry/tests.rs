use super::*;
use crate::time::{Duration, Instant};
use quickcheck::{Arbitrary, Gen, quickcheck};
use rand::SeedableRng;
use rand::rngs::SmallRng;

const UNAVAILABLE: AttemptOutcome = AttemptOutcome::Response {
    status: 503,
    grpc_status: None,
};

fn roomy_budget() -> RetryBudget {
    RetryBudget::new(BudgetConfig {
        min_per_second: 1000,
        ..BudgetConfig::default()
    })
}

fn get() -> RequestMeta<'static> {
    RequestMeta {
        method: "GET",
        body: RequestBody::Empty,
    }
}

/// Runs one request whose attempts all end with `outcome` after 1 ms.
fn run(
    policy: &RetryPolicy,
    timeouts: Timeouts,
    req: &RequestMeta<'_>,
    outcome: AttemptOutcome,
) -> (u32, Finish) {
    let mut rng = SmallRng::seed_from_u64(9);
    let mut budget = roomy_budget();
    let mut now = Instant::ZERO;
    let mut s = RetryState::new(now, policy, timeouts, req, &mut budget);
    loop {
        now += Duration::from_millis(1);
        let mut step = s
            .on_outcome(now, outcome, policy, &mut budget, &mut rng)
            .unwrap();
        while let Step::Backoff { until } = step {
            now = until;
            step = s
                .handle_timeout(now, policy, &mut budget, &mut rng)
                .unwrap();
        }
        if let Step::Finish(f) = step {
            return (s.attempts(), f);
        }
    }
}

#[test]
fn retries_up_to_max_attempts() {
    let (n, f) = run(
        &RetryPolicy::default(),
        Timeouts::default(),
        &get(),
        UNAVAILABLE,
    );
    assert_eq!((n, f), (3, Finish::AttemptsExhausted));
}

#[test]
fn success_and_unlisted_statuses_are_final() {
    let ok = AttemptOutcome::Response {
        status: 200,
        grpc_status: None,
    };
    assert_eq!(
        run(&RetryPolicy::default(), Timeouts::default(), &get(), ok),
        (1, Finish::Final)
    );
    let e500 = AttemptOutcome::Response {
        status: 500,
        grpc_status: None,
    };
    assert_eq!(
        run(&RetryPolicy::default(), Timeouts::default(), &get(), e500),
        (1, Finish::Final)
    );
    assert_eq!(
        run(
            &RetryPolicy::default(),
            Timeouts::default(),
            &get(),
            AttemptOutcome::Error
        ),
        (1, Finish::Final)
    );
}

#[test]
fn grpc_unavailable_is_retried_on_grpc_routes() {
    let unavailable = AttemptOutcome::Response {
        status: 200,
        grpc_status: Some(GRPC_UNAVAILABLE),
    };
    let post = RequestMeta {
        method: "POST",
        body: RequestBody::Sized(100),
    };
    assert_eq!(
        run(
            &RetryPolicy::grpc(),
            Timeouts::default(),
            &post,
            unavailable
        )
        .1,
        Finish::AttemptsExhausted
    );
    let internal = AttemptOutcome::Response {
        status: 200,
        grpc_status: Some(13),
    };
    assert_eq!(
        run(&RetryPolicy::grpc(), Timeouts::default(), &post, internal).1,
        Finish::Final
    );
}

#[test]
fn non_idempotent_requests_are_retried_only_when_unprocessed() {
    let post = RequestMeta {
        method: "POST",
        body: RequestBody::Empty,
    };
    let p = RetryPolicy::default();
    assert_eq!(
        run(&p, Timeouts::default(), &post, UNAVAILABLE),
        (1, Finish::MethodNotRetryable)
    );
    assert_eq!(
        run(
            &p,
            Timeouts::default(),
            &post,
            AttemptOutcome::PerTryTimeout
        ),
        (1, Finish::MethodNotRetryable)
    );
    assert_eq!(
        run(
            &p,
            Timeouts::default(),
            &post,
            AttemptOutcome::ConnectFailed
        )
        .1,
        Finish::AttemptsExhausted
    );
    assert_eq!(
        run(
            &p,
            Timeouts::default(),
            &post,
            AttemptOutcome::RefusedStream
        )
        .1,
        Finish::AttemptsExhausted
    );
}

#[test]
fn bodies_larger_than_the_replay_buffer_are_not_retried() {
    let p = RetryPolicy::default();
    let fits = RequestMeta {
        method: "PUT",
        body: RequestBody::Sized(64 * 1024),
    };
    let too_big = RequestMeta {
        method: "PUT",
        body: RequestBody::Sized(64 * 1024 + 1),
    };
    assert_eq!(
        run(&p, Timeouts::default(), &fits, UNAVAILABLE).1,
        Finish::AttemptsExhausted
    );
    assert_eq!(
        run(&p, Timeouts::default(), &too_big, UNAVAILABLE),
        (1, Finish::BodyNotReplayable)
    );

    let mut rng = SmallRng::seed_from_u64(1);
    let mut budget = roomy_budget();
    let streaming = RequestMeta {
        method: "PUT",
        body: RequestBody::Streaming,
    };
    let mut s = RetryState::new(
        Instant::ZERO,
        &p,
        Timeouts::default(),
        &streaming,
        &mut budget,
    );
    s.replay_buffer_overflowed();
    let step = s
        .on_outcome(Instant::ZERO, UNAVAILABLE, &p, &mut budget, &mut rng)
        .unwrap();
    assert_eq!(step, Step::Finish(Finish::BodyNotReplayable));
}

#[test]
fn per_try_timeout_retries_and_request_deadline_stops() {
    let p = RetryPolicy {
        max_attempts: 10,
        ..RetryPolicy::default()
    };
    let t = Timeouts {
        request: Some(Duration::from_millis(900)),
        per_try: Some(Duration::from_millis(300)),
    };
    let mut rng = SmallRng::seed_from_u64(1);
    let mut budget = roomy_budget();
    let mut s = RetryState::new(Instant::ZERO, &p, t, &get(), &mut budget);
    assert_eq!(s.poll_timeout(), Some(Instant::from_millis(300)));
    let step = s
        .handle_timeout(Instant::from_millis(300), &p, &mut budget, &mut rng)
        .unwrap();
    let Step::Backoff { until } = step else {
        panic!("{step:?}")
    };
    let Some(Step::Attempt {
        number: 2,
        deadline: Some(d),
    }) = s.handle_timeout(until, &p, &mut budget, &mut rng)
    else {
        panic!()
    };
    assert_eq!(d, until + Duration::from_millis(300));
    // The third attempt would start after at least 675 ms (two per-try
    // timeouts plus two backoffs) and could not get its full 300 ms before
    // the 900 ms deadline.
    let step = s.handle_timeout(d, &p, &mut budget, &mut rng).unwrap();
    assert_eq!(step, Step::Finish(Finish::DeadlineTooClose));
}

#[test]
fn a_late_wake_does_not_start_a_retry_that_no_longer_fits() {
    let p = RetryPolicy::default();
    let mut rng = SmallRng::seed_from_u64(1);
    // With a per-try timeout: the retry fits at the planned `until` but not
    // when the io layer wakes 800 ms late.
    let t = Timeouts {
        request: Some(Duration::from_secs(1)),
        per_try: Some(Duration::from_millis(300)),
    };
    let mut budget = roomy_budget();
    let mut s = RetryState::new(Instant::ZERO, &p, t, &get(), &mut budget);
    let step = s
        .on_outcome(
            Instant::from_millis(10),
            UNAVAILABLE,
            &p,
            &mut budget,
            &mut rng,
        )
        .unwrap();
    let Step::Backoff { until } = step else {
        panic!("{step:?}")
    };
    assert!(until + Duration::from_millis(300) <= Instant::from_secs(1));
    let late = until + Duration::from_millis(800);
    assert!(late + Duration::from_millis(300) > Instant::from_secs(1));
    assert_eq!(
        s.handle_timeout(late, &p, &mut budget, &mut rng),
        Some(Step::Finish(Finish::DeadlineTooClose))
    );
    assert_eq!(s.attempts(), 1);

    // Without one: waking at (or after) the request deadline starts nothing.
    let t = Timeouts {
        request: Some(Duration::from_secs(1)),
        per_try: None,
    };
    let mut s = RetryState::new(Instant::ZERO, &p, t, &get(), &mut budget);
    let step = s
        .on_outcome(
            Instant::from_millis(10),
            UNAVAILABLE,
            &p,
            &mut budget,
            &mut rng,
        )
        .unwrap();
    assert!(matches!(step, Step::Backoff { .. }));
    assert_eq!(
        s.handle_timeout(Instant::from_secs(1), &p, &mut budget, &mut rng),
        Some(Step::Finish(Finish::DeadlineTooClose))
    );
    assert_eq!(s.attempts(), 1);

    // A wake that is late but still fits starts the retry at `now`.
    let mut s = RetryState::new(Instant::ZERO, &p, t, &get(), &mut budget);
    s.on_outcome(
        Instant::from_millis(10),
        UNAVAILABLE,
        &p,
        &mut budget,
        &mut rng,
    )
    .unwrap();
    assert!(matches!(
        s.handle_timeout(Instant::from_millis(999), &p, &mut budget, &mut rng),
        Some(Step::Attempt { number: 2, deadline: Some(d) }) if d == Instant::from_secs(1)
    ));
}

#[test]
fn request_deadline_caps_an_attempt_without_per_try_timeout() {
    let p = RetryPolicy::default();
    let t = Timeouts {
        request: Some(Duration::from_secs(1)),
        per_try: None,
    };
    let mut rng = SmallRng::seed_from_u64(1);
    let mut budget = roomy_budget();
    let mut s = RetryState::new(Instant::ZERO, &p, t, &get(), &mut budget);
    assert_eq!(s.poll_timeout(), Some(Instant::from_secs(1)));
    let step = s.handle_timeout(Instant::from_secs(1), &p, &mut budget, &mut rng);
    assert_eq!(step, Some(Step::Finish(Finish::DeadlineExceeded)));
    assert_eq!(
        s.on_outcome(
            Instant::from_secs(1),
            UNAVAILABLE,
            &p,
            &mut budget,
            &mut rng
        ),
        Err(RetryError::NoAttemptInFlight)
    );
}

#[test]
fn an_empty_budget_stops_retries() {
    let p = RetryPolicy::default();
    let mut rng = SmallRng::seed_from_u64(1);
    let mut budget = RetryBudget::new(BudgetConfig {
        ratio: 0.0,
        min_per_second: 0,
        ..BudgetConfig::default()
    });
    let mut s = RetryState::new(Instant::ZERO, &p, Timeouts::default(), &get(), &mut budget);
    let step = s
        .on_outcome(Instant::ZERO, UNAVAILABLE, &p, &mut budget, &mut rng)
        .unwrap();
    assert_eq!(step, Step::Finish(Finish::BudgetExhausted));
}

#[derive(Clone, Debug)]
struct Attempt {
    outcome: AttemptOutcome,
    after_ms: u16,
}

impl Arbitrary for Attempt {
    fn arbitrary(g: &mut Gen) -> Self {
        let outcome = match u8::arbitrary(g) % 7 {
            0 => AttemptOutcome::Response {
                status: 200,
                grpc_status: None,
            },
            1 | 2 => UNAVAILABLE,
            3 => AttemptOutcome::ConnectFailed,
            4 => AttemptOutcome::RefusedStream,
            5 => AttemptOutcome::Error,
            _ => AttemptOutcome::Response {
                status: 200,
                grpc_status: Some(GRPC_UNAVAILABLE),
            },
        };
        Attempt {
            outcome,
            after_ms: u16::arbitrary(g) % 1500,
        }
    }
}

quickcheck! {
    /// Whatever the attempts' outcomes and timing: at most `max_attempts`
    /// attempts; every attempt is abandoned by the request deadline; a
    /// retry starts only if its full per-try timeout fits before the
    /// deadline; a non-idempotent request is sent again only after an
    /// outcome that proves it was not processed; and the request finishes.
    /// The io layer wakes for a backoff at `until` plus a random lateness
    /// (`wake_late_ms`, cycled; often zero), so the deadline rule is checked
    /// at the time the retry actually starts.
    fn prop_retry_state_respects_attempts_deadlines_and_idempotency(
        attempts: Vec<Attempt>, post: bool, max: u8, deadline_ms: u16, per_try_ms: u16, seed: u64,
        wake_late_ms: Vec<u16>
    ) -> bool {
        let p = RetryPolicy { max_attempts: u32::from(max % 6) + 1, ..RetryPolicy::grpc() };
        let p = RetryPolicy { requests: RetryableRequests::IdempotentMethods, retry_on: RetryOn::default(), ..p };
        let t = Timeouts {
            request: Some(Duration::from_millis(u64::from(deadline_ms % 5000) + 1)),
            per_try: (per_try_ms % 3 != 0).then(|| Duration::from_millis(u64::from(per_try_ms % 2000) + 1)),
        };
        let req = RequestMeta { method: if post { "POST" } else { "GET" }, body: RequestBody::Empty };
        let mut rng = SmallRng::seed_from_u64(seed);
        let mut budget = roomy_budget();
        let start = Instant::ZERO;
        let deadline = start + t.request.unwrap();
        let mut s = RetryState::new(start, &p, t, &req, &mut budget);
        let mut now = start;
        let mut last = AttemptOutcome::Error;
        if attempts.is_empty() { return true; }
        let mut lateness = wake_late_ms.iter().cycle().map(|&l| match l % 4 {
            0 => 0,
            _ => u64::from(l % 3000),
        });
        for a in attempts.iter().cycle().take(64) {
            let Step::Attempt { number, deadline: Some(attempt_deadline) } = s.step() else { return false };
            if number > p.max_attempts || attempt_deadline > deadline { return false; }
            if number > 1 {
                match t.per_try {
                    Some(pt) => if now + pt > deadline { return false; },
                    None => if now >= deadline { return false; },
                }
                if post && !last.unprocessed() { return false; }
            }
            let answered = now + Duration::from_millis(u64::from(a.after_ms));
            let mut step = if answered < attempt_deadline {
                now = answered;
                last = a.outcome;
                s.on_outcome(now, a.outcome, &p, &mut budget, &mut rng).unwrap()
            } else {
                now = attempt_deadline;
                last = AttemptOutcome::PerTryTimeout;
                s.handle_timeout(now, &p, &mut budget, &mut rng).unwrap()
            };
            if let Step::Backoff { until } = step {
                now = until + Duration::from_millis(lateness.next().unwrap_or(0));
                step = s.handle_timeout(now, &p, &mut budget, &mut rng).unwrap();
            }
            if let Step::Finish(_) = step {
                return s.attempts() <= p.max_attempts;
            }
        }
        false
    }
}
