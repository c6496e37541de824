//! Scenario tests in virtual time: the balancer, accrual and retry budget
//! driven by a tiny discrete-event loop, the way the io layer will drive
//! them, with every figure reproducible from the seed.
//!
//! Run with `--nocapture` to see the measured figures.

use needle_core::accrual::{Health, Transition};
use needle_core::balance::{BalanceConfig, Balancer, Completion, Dispatch, PickError};
use needle_core::retry::{
    AttemptOutcome, BudgetConfig, RequestBody, RequestMeta, RetryBudget, RetryPolicy, RetryState,
    Step, Timeouts,
};
use needle_core::time::{Duration, Instant};
use rand::SeedableRng;
use rand::rngs::StdRng;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Events ordered by time, then by insertion (deterministic ties).
struct Queue<T> {
    heap: BinaryHeap<Reverse<(Instant, u64)>>,
    items: Vec<Option<T>>,
}

impl<T> Queue<T> {
    fn new() -> Self {
        Queue {
            heap: BinaryHeap::new(),
            items: Vec::new(),
        }
    }
    fn push(&mut self, at: Instant, item: T) {
        self.heap.push(Reverse((at, self.items.len() as u64)));
        self.items.push(Some(item));
    }
    fn peek_time(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }
    fn pop(&mut self) -> Option<(Instant, T)> {
        let Reverse((t, i)) = self.heap.pop()?;
        Some((t, self.items[i as usize].take().unwrap()))
    }
}

/// Open-loop load: one request every `gap` until `end`; endpoint `i`
/// answers after `latency(i, now)` with `ok(i, now)`. Returns picks per
/// endpoint, counted over `[count_from, end)`, and every pick as
/// `(time, endpoint, probe)`.
/// The shape of an open-loop load.
struct Load {
    endpoints: usize,
    gap: Duration,
    end: Instant,
    count_from: Instant,
    seed: u64,
}

fn run_balancer(
    b: &mut Balancer<usize>,
    load: Load,
    latency: impl Fn(usize, Instant) -> Duration,
    ok: impl Fn(usize, Instant) -> bool,
    mut on_transition: impl FnMut(Instant, usize, Transition),
) -> (Vec<u64>, Vec<(Instant, usize, bool)>) {
    let Load {
        endpoints,
        gap,
        end,
        count_from,
        seed,
    } = load;
    let mut trace = Vec::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut done: Queue<(usize, Dispatch)> = Queue::new();
    let mut picks = vec![0u64; endpoints];
    let mut now = Instant::ZERO;
    while now < end {
        while done.peek_time().is_some_and(|t| t <= now) {
            let (t, (i, d)) = done.pop().unwrap();
            let c = if ok(i, d.sent_at()) {
                Completion::Success
            } else {
                Completion::Failure
            };
            if let Some(tr) = b.complete(t, d, c, &mut rng) {
                on_transition(t, i, tr);
            }
        }
        match b.pick(now, &mut rng) {
            Ok(d) => {
                let i = *b.key(d.endpoint()).unwrap();
                trace.push((now, i, d.is_probe()));
                if now >= count_from {
                    picks[i] += 1;
                }
                done.push(now + latency(i, now), (i, d));
            }
            Err(PickError::AllEjected) => {}
            Err(e) => panic!("{e}"),
        }
        now += gap;
    }
    (picks, trace)
}

fn balancer(n: usize) -> Balancer<usize> {
    let mut b = Balancer::new(BalanceConfig::default());
    for i in 0..n {
        b.insert(Instant::ZERO, i, 1);
    }
    b
}

/// The share of traffic one endpoint answering in `slow_ms` gets among nine
/// answering in 10 ms, at 1,000 requests per second for a minute.
fn slow_endpoint_share(slow_ms: u64, seed: u64) -> f64 {
    let mut b = balancer(10);
    let (picks, _) = run_balancer(
        &mut b,
        Load {
            endpoints: 10,
            gap: Duration::from_millis(1),
            end: Instant::from_secs(60),
            count_from: Instant::from_secs(1),
            seed,
        },
        |i, _| Duration::from_millis(if i == 0 { slow_ms } else { 10 }),
        |_, _| true,
        |_, _, _| {},
    );
    let total: u64 = picks.iter().sum();
    let share = picks[0] as f64 / total as f64;
    println!(
        "slow endpoint ({slow_ms} ms among nine at 10 ms, 1000 rps): {:.2}% of {total} requests",
        share * 100.0
    );
    share
}

#[test]
fn scenario_slow_endpoint_gets_a_small_share() {
    // A fair share would be 10%; the slower the endpoint, the less it gets.
    for (slow_ms, seed, bound) in [(100, 1, 0.02), (1000, 2, 0.01), (20, 3, 0.08)] {
        let share = slow_endpoint_share(slow_ms, seed);
        assert!(share < bound, "{slow_ms} ms endpoint share {share}");
    }
}

#[test]
fn scenario_weights_are_honoured_under_load() {
    // Two endpoints with equal latency, weights 1 and 3, under enough load
    // that requests queue: the heavier one carries about three quarters.
    let mut b = Balancer::new(BalanceConfig::default());
    b.insert(Instant::ZERO, 0, 1);
    b.insert(Instant::ZERO, 1, 3);
    let (picks, _) = run_balancer(
        &mut b,
        Load {
            endpoints: 2,
            gap: Duration::from_millis(1),
            end: Instant::from_secs(30),
            count_from: Instant::from_secs(1),
            seed: 3,
        },
        |_, _| Duration::from_millis(20),
        |_, _| true,
        |_, _, _| {},
    );
    let share = picks[1] as f64 / (picks[0] + picks[1]) as f64;
    println!(
        "weight 3 vs weight 1 at equal latency: {:.1}% to the weight-3 endpoint",
        share * 100.0
    );
    assert!((0.65..0.85).contains(&share), "{share}");
}

#[test]
fn scenario_failing_endpoint_is_ejected_then_recovered() {
    // Five endpoints; endpoint 0 fails everything, at once, for the first
    // 20 s, then heals. Its first failure lowers its success rate, so it
    // loses the picks that follow; 2 s later, with no success, it is stale
    // and wins the next ties until 7 consecutive failures eject it. Then it
    // must receive only single probes while out, and be taken back after
    // it heals.
    let mut b = balancer(5);
    let mut log: Vec<(Instant, Transition)> = Vec::new();
    let heal = Instant::from_secs(20);
    let (picks, trace) = run_balancer(
        &mut b,
        Load {
            endpoints: 5,
            gap: Duration::from_millis(5),
            end: Instant::from_secs(120),
            count_from: Instant::from_secs(90),
            seed: 4,
        },
        |_, _| Duration::from_millis(10),
        |i, sent| i != 0 || sent >= heal,
        |t, i, tr| {
            if i == 0 {
                log.push((t, tr))
            }
        },
    );
    let first = log.first().copied();
    assert!(
        matches!(first, Some((t, Transition::Ejected { .. })) if t < Instant::from_millis(2500)),
        "{log:?}"
    );
    let recovered = log
        .iter()
        .find(|(_, tr)| *tr == Transition::Recovered)
        .map(|(t, _)| *t);
    let recovered = recovered.expect("endpoint 0 must recover");
    assert!(
        recovered >= heal && recovered < heal + Duration::from_secs(61),
        "{recovered:?}"
    );
    // From the first ejection until recovery the endpoint only ever got
    // probes, one per ejection (each probe's answer decides: eject again,
    // or recover).
    let ejections = log
        .iter()
        .filter(|(_, tr)| matches!(tr, Transition::Ejected { .. }))
        .count();
    let ejected_at = first.unwrap().0;
    let while_out: Vec<_> = trace
        .iter()
        .filter(|(t, i, _)| *i == 0 && *t > ejected_at && *t < recovered)
        .collect();
    assert!(
        while_out.iter().all(|(_, _, probe)| *probe),
        "{while_out:?}"
    );
    assert_eq!(while_out.len(), ejections, "{while_out:?} {log:?}");
    let share = picks[0] as f64 / picks.iter().sum::<u64>() as f64;
    let backoffs: Vec<String> = log
        .iter()
        .filter_map(|&(t, tr)| match tr {
            Transition::Ejected { until } => {
                Some(format!("{:.1} s", (until - t).as_nanos() as f64 / 1e9))
            }
            _ => None,
        })
        .collect();
    println!(
        "failing endpoint: ejected at {:?}, {} ejections (backoffs {}), recovered at {recovered:?}; share over the last 30 s {:.1}%",
        first.unwrap().0,
        ejections,
        backoffs.join(", "),
        share * 100.0
    );
    assert!(
        share > 0.10,
        "recovered endpoint takes traffic again: {share}"
    );
    assert_eq!(b.health(b.id_of(&0).unwrap()), Some(Health::Ready));
}

/// Every endpoint failing: each takes one request at a time (its probe),
/// long before any backoff elapses, and only a request that finds every
/// probe in flight fails fast; once the service is back, one probe brings
/// traffic back rather than a backoff of up to a minute.
#[test]
fn scenario_all_endpoints_failing_get_a_probe_each_and_recover_at_once() {
    let mut rng = StdRng::seed_from_u64(5);
    let mut b = balancer(3);
    let mut now = Instant::ZERO;
    while b.ready_len() > 0 {
        let d = b.pick(now, &mut rng).expect("a ready endpoint");
        b.complete(now, d, Completion::Failure, &mut rng);
        now += Duration::from_millis(1);
        assert!(now < Instant::from_secs(1));
    }
    let probes: Vec<Dispatch> = (0..3)
        .map(|_| b.pick(now, &mut rng).expect("an early probe"))
        .collect();
    assert!(probes.iter().all(Dispatch::is_probe));
    let endpoints: std::collections::BTreeSet<_> = probes.iter().map(Dispatch::endpoint).collect();
    assert_eq!(endpoints.len(), 3, "one probe per endpoint");
    assert_eq!(b.pick(now, &mut rng), Err(PickError::AllEjected));

    // A failed probe ejects again; the next request probes again.
    let mut probes = probes.into_iter();
    let failed = probes.next().expect("three probes");
    let id = failed.endpoint();
    let again = b.complete(now, failed, Completion::Failure, &mut rng);
    assert!(
        matches!(again, Some(Transition::Ejected { .. })),
        "{again:?}"
    );
    let probe = b
        .pick(now, &mut rng)
        .expect("a probe of the re-ejected endpoint");
    assert!(probe.is_probe());
    assert_eq!(probe.endpoint(), id);

    // The service is back: one answered probe and traffic flows.
    assert_eq!(
        b.complete(now, probe, Completion::Success, &mut rng),
        Some(Transition::Recovered)
    );
    let d = b.pick(now, &mut rng).expect("the recovered endpoint");
    assert!(!d.is_probe());
    assert_eq!(d.endpoint(), id);
}

/// Whether endpoint 0's request sent at `sent` fails, when it fails every
/// other request (by send time, so that latency and outcome agree).
fn half_fails(sent: Instant, gap: Duration) -> bool {
    (u128::from(sent.as_nanos()) / gap.as_nanos()) % 2 == 1
}

/// The share endpoint 0 gets among four when it fails half its requests
/// fast (1 ms) and answers the rest in `latency`, as the other three always
/// do, at one request every `gap` for a minute.
fn half_failing_share(gap: Duration, latency: Duration, seed: u64) -> f64 {
    let mut b = balancer(4);
    let fails = |i: usize, sent: Instant| i == 0 && half_fails(sent, gap);
    let (picks, _) = run_balancer(
        &mut b,
        Load {
            endpoints: 4,
            gap,
            end: Instant::from_secs(60),
            count_from: Instant::from_secs(5),
            seed,
        },
        |i, sent| {
            if fails(i, sent) {
                Duration::from_millis(1)
            } else {
                latency
            }
        },
        |i, sent| !fails(i, sent),
        |_, _, _| {},
    );
    let total: u64 = picks.iter().sum();
    picks[0] as f64 / total as f64
}

#[test]
fn scenario_an_endpoint_failing_half_its_requests_fast_gets_little_traffic() {
    // Latency alone would favour it: its failures are the fastest answers.
    // Its success rate (about ½, squared: its cost × 4) keeps it below
    // its fair 25% share, far below at light load.
    let light = half_failing_share(Duration::from_millis(10), Duration::from_millis(10), 7);
    let heavy = half_failing_share(Duration::from_micros(500), Duration::from_millis(100), 8);
    println!(
        "endpoint failing half its requests in 1 ms among four: {:.1}% at ~1 in flight, {:.1}% at ~200 in flight",
        light * 100.0,
        heavy * 100.0
    );
    assert!(light < 0.05, "{light}");
    assert!(heavy < 0.20, "{heavy}");
}

/// Endpoint 0 of four misbehaves for requests sent in `[from, to)`
/// (answering them after `bad_latency`, failed or not), then behaves like
/// the others again (10 ms), under one request every `gap`. Returns its
/// share over `[count_from, 30 s)`.
fn share_after_a_bad_spell(
    gap: Duration,
    from: Instant,
    to: Instant,
    bad_latency: Duration,
    bad_ok: bool,
    count_from: Instant,
    seed: u64,
) -> f64 {
    let mut b = balancer(4);
    let bad = |i: usize, sent: Instant| i == 0 && sent >= from && sent < to;
    let (picks, _) = run_balancer(
        &mut b,
        Load {
            endpoints: 4,
            gap,
            end: Instant::from_secs(30),
            count_from,
            seed,
        },
        |i, sent| {
            if bad(i, sent) {
                bad_latency
            } else {
                Duration::from_millis(10)
            }
        },
        |i, sent| bad_ok || !bad(i, sent),
        |_, _, _| {},
    );
    picks[0] as f64 / picks.iter().sum::<u64>() as f64
}

#[test]
fn scenario_an_endpoint_back_from_a_crash_or_a_slow_spell_gets_its_share_again() {
    // A crash: requests sent to endpoint 0 during 0.6 s time out after
    // 500 ms. Those timeouts are failures, not latencies, so they do not
    // keep it dark once it is back (with a 10 s decay they used to, for
    // about 40 s: the simulator's `grpc` seed 1103).
    let crash = share_after_a_bad_spell(
        Duration::from_millis(5),
        Instant::from_secs(2),
        Instant::from_millis(2600),
        Duration::from_millis(500),
        false,
        Instant::from_secs(10),
        9,
    );
    // A slow spell: 4 s of successful answers in 260 ms. The estimate is
    // stale 2 s after the last one and is measured afresh.
    let slow = share_after_a_bad_spell(
        Duration::from_millis(5),
        Instant::from_secs(2),
        Instant::from_secs(6),
        Duration::from_millis(260),
        true,
        Instant::from_secs(10),
        10,
    );
    // The same crash at light load (20 requests a second, next to nothing
    // in flight), where power-of-two-choices gives every pair to its
    // cheaper member: any lasting penalty would starve endpoint 0 (as the
    // failures in its success rate did, until a stale endpoint's first
    // success cleared them).
    let light = share_after_a_bad_spell(
        Duration::from_millis(50),
        Instant::from_secs(1),
        Instant::from_secs(5),
        Duration::from_millis(500),
        false,
        Instant::from_secs(10),
        11,
    );
    println!(
        "endpoint 0 of four, share from 10 s to 30 s: {:.1}% after a 0.6 s crash, {:.1}% after a 4 s slow spell at 200 rps; {:.1}% after a 4 s crash at 20 rps",
        crash * 100.0,
        slow * 100.0,
        light * 100.0
    );
    assert!(crash > 0.15, "{crash}");
    assert!(slow > 0.15, "{slow}");
    assert!(light > 0.15, "{light}");
}

#[test]
fn scenario_budget_caps_a_retry_storm() {
    // 1,000 GET requests per second for a minute against a backend that
    // answers every attempt with 503 after 1 ms. The policy alone would
    // send 3 attempts per request (2 retries each); the default budget
    // (20%, 10/s over 10 s) caps retries at ratio × requests + 100 per 10 s.
    let policy = RetryPolicy::default();
    let config = BudgetConfig::default();
    let mut budget = RetryBudget::new(config);
    let mut rng = StdRng::seed_from_u64(6);
    let timeouts = Timeouts {
        request: Some(Duration::from_secs(5)),
        per_try: Some(Duration::from_secs(1)),
    };
    let get = RequestMeta {
        method: "GET",
        body: RequestBody::Empty,
    };
    enum Ev {
        Start,
        Answer(usize),
        Wake(usize),
    }
    let mut q: Queue<Ev> = Queue::new();
    let end = Instant::from_secs(60);
    let mut t = Instant::ZERO;
    while t < end {
        q.push(t, Ev::Start);
        t += Duration::from_millis(1);
    }
    let mut states: Vec<RetryState> = Vec::new();
    let mut primaries: Vec<Instant> = Vec::new();
    let mut retries: Vec<Instant> = Vec::new();
    let fail = AttemptOutcome::Response {
        status: 503,
        grpc_status: None,
    };
    while let Some((now, ev)) = q.pop() {
        match ev {
            Ev::Start => {
                states.push(RetryState::new(now, &policy, timeouts, &get, &mut budget));
                primaries.push(now);
                q.push(now + Duration::from_millis(1), Ev::Answer(states.len() - 1));
            }
            Ev::Answer(i) => {
                match states[i]
                    .on_outcome(now, fail, &policy, &mut budget, &mut rng)
                    .unwrap()
                {
                    Step::Backoff { until } => {
                        retries.push(now);
                        q.push(until, Ev::Wake(i));
                    }
                    Step::Finish(_) => {}
                    s => panic!("{s:?}"),
                }
            }
            Ev::Wake(i) => {
                let s = states[i].handle_timeout(now, &policy, &mut budget, &mut rng);
                assert!(matches!(s, Some(Step::Attempt { .. })));
                q.push(now + Duration::from_millis(1), Ev::Answer(i));
            }
        }
    }
    let ratio = retries.len() as f64 / primaries.len() as f64;
    // The bound on every 10 s window ending at a retry (the extreme ones).
    let w = config.window;
    let mut worst = 0.0f64;
    let count = |v: &[Instant], from: Instant, to: Instant| {
        (v.partition_point(|&x| x <= to) - v.partition_point(|&x| x <= from)) as f64
    };
    for &r in &retries {
        let start = r.saturating_sub(w);
        let n_r = count(&retries, start, r);
        let n_q = count(&primaries, start, r);
        let bound = config.ratio * n_q + f64::from(config.min_per_second) * w.as_secs_f64();
        assert!(n_r <= bound, "window ending {r:?}: {n_r} retries > {bound}");
        worst = worst.max(n_r / bound);
    }
    println!(
        "retry storm: {} primaries, {} retries ({:.1}% extra load; policy alone: 200%); fullest window at {:.1}% of the bound",
        primaries.len(),
        retries.len(),
        ratio * 100.0,
        worst * 100.0
    );
    // Over the whole run (just over 60 s, so 7 windows' worth of floor):
    // retries ≤ 20% × 60,000 + 7 × 100.
    assert!(
        retries.len() as f64 <= 0.2 * primaries.len() as f64 + 700.0,
        "{ratio}"
    );
    assert!(ratio > 0.18, "the budget is actually spent: {ratio}");
}
