use super::*;
use quickcheck::{Arbitrary, Gen, quickcheck};
use rand::SeedableRng;
use rand::rngs::SmallRng;

fn rng() -> SmallRng {
    SmallRng::seed_from_u64(0x5eed)
}

#[test]
fn empty_and_zero_weight_sets_report_no_endpoints() {
    let mut b: Balancer<u32> = Balancer::new(BalanceConfig::default());
    assert_eq!(
        b.pick(Instant::ZERO, &mut rng()),
        Err(PickError::NoEndpoints)
    );
    b.insert(Instant::ZERO, 1, 0);
    assert_eq!(
        b.pick(Instant::ZERO, &mut rng()),
        Err(PickError::NoEndpoints)
    );
}

/// Fails requests to `id` until accrual ejects it. The others are weighted
/// 0 meanwhile: a failing endpoint soon loses every pick to a healthy one
/// (its success rate), so it could not otherwise be made to fail in a row.
fn eject(b: &mut Balancer<u32>, id: EndpointId, others: &[EndpointId], now: Instant) {
    let mut r = rng();
    for &o in others {
        b.set_weight(o, 0);
    }
    loop {
        let d = b.pick(now, &mut r).unwrap();
        assert_eq!(d.endpoint(), id);
        if let Some(Transition::Ejected { .. }) = b.complete(now, d, Completion::Failure, &mut r) {
            break;
        }
    }
    for &o in others {
        b.set_weight(o, 1);
    }
}

#[test]
fn with_everything_ejected_the_soonest_due_is_probed_at_once() {
    let mut r = rng();
    let mut b: Balancer<u32> = Balancer::new(BalanceConfig::default());
    let first = b.insert(Instant::ZERO, 1, 1);
    let second = b.insert(Instant::ZERO, 2, 1);
    eject(&mut b, first, &[second], Instant::ZERO);
    assert_eq!(b.ready_len(), 1);
    let later = Instant::from_millis(10);
    eject(&mut b, second, &[], later);
    assert_eq!(b.ready_len(), 0);
    let Some(Health::Ejected { until: first_until }) = b.health(first) else {
        panic!("first is ejected");
    };
    let Some(Health::Ejected {
        until: second_until,
    }) = b.health(second)
    else {
        panic!("second is ejected");
    };
    let soonest = if first_until <= second_until {
        first
    } else {
        second
    };
    let other = if soonest == first { second } else { first };

    let probe = b.pick(later, &mut r).unwrap();
    assert!(probe.is_probe());
    assert_eq!(
        probe.endpoint(),
        soonest,
        "the ejection that ends first ends now"
    );
    let probe2 = b.pick(later, &mut r).unwrap();
    assert!(probe2.is_probe());
    assert_eq!(probe2.endpoint(), other);
    assert_eq!(
        b.pick(later, &mut r),
        Err(PickError::AllEjected),
        "every endpoint has its probe in flight"
    );
    assert_eq!(
        b.complete(later, probe, Completion::Success, &mut r),
        Some(Transition::Recovered)
    );
    let d = b.pick(later, &mut r).unwrap();
    assert!(!d.is_probe());
    assert_eq!(d.endpoint(), soonest);
    // The stale timer of the ended ejection changes nothing when it fires.
    b.handle_timeout(first_until.max(second_until));
    assert_eq!(b.health(soonest), Some(Health::Ready));
    assert_eq!(b.health(other), Some(Health::Probing));
}

/// A long outage with fast failures: every request is an early probe that
/// fails and ejects again. The timer heap must not grow with the probes,
/// or each request of the outage would scan an ever longer heap.
#[test]
fn an_outage_of_failing_probes_keeps_one_timer_per_endpoint() {
    let mut r = rng();
    let mut b: Balancer<u32> = Balancer::new(BalanceConfig::default());
    for k in 0..3 {
        b.insert(Instant::ZERO, k, 1);
    }
    let mut now = Instant::ZERO;
    for _ in 0..10_000 {
        match b.pick(now, &mut r) {
            Ok(d) => {
                b.complete(now, d, Completion::Failure, &mut r);
            }
            Err(e) => panic!("nothing in flight, yet {e}"),
        }
        now += Duration::from_millis(1);
        assert!(b.timers.len() <= 3, "{} timers", b.timers.len());
    }
}

#[test]
fn an_ejection_is_not_ended_early_while_another_endpoint_is_ready() {
    let mut r = rng();
    let mut b: Balancer<u32> = Balancer::new(BalanceConfig::default());
    let bad = b.insert(Instant::ZERO, 1, 1);
    let good = b.insert(Instant::ZERO, 2, 1);
    eject(&mut b, bad, &[good], Instant::ZERO);
    assert_eq!(b.ready_len(), 1);
    for _ in 0..100 {
        let d = b.pick(Instant::ZERO, &mut r).unwrap();
        assert_eq!(d.endpoint(), good);
        b.complete(Instant::ZERO, d, Completion::Success, &mut r);
    }
}

#[test]
fn completing_a_request_on_a_removed_endpoint_is_harmless() {
    let mut r = rng();
    let mut b: Balancer<u32> = Balancer::new(BalanceConfig::default());
    let a = b.insert(Instant::ZERO, 1, 1);
    let d = b.pick(Instant::ZERO, &mut r).unwrap();
    assert_eq!(b.remove(a), Some(1));
    // The slot is reused by a new endpoint; the old dispatch must not touch it.
    let c = b.insert(Instant::ZERO, 2, 1);
    assert_ne!(a, c);
    assert_eq!(
        b.complete(Instant::from_secs(1), d, Completion::Failure, &mut r),
        None
    );
    assert_eq!(b.pending(c), Some(0));
    assert_eq!(b.remove(a), None, "a stale id resolves to nothing");
}

/// Two endpoints, the balancer taught that `slow` (the first) answers in
/// 1 s, by picks at 0 s answered by `fast` at once until one lands on
/// `slow`, answered at 1 s.
fn one_slow_one_fast(r: &mut SmallRng) -> (Balancer<u32>, EndpointId, EndpointId) {
    let mut b: Balancer<u32> = Balancer::new(BalanceConfig::default());
    let slow = b.insert(Instant::ZERO, 1, 1);
    let fast = b.insert(Instant::ZERO, 2, 1);
    loop {
        let d = b.pick(Instant::ZERO, r).unwrap();
        let was_slow = d.endpoint() == slow;
        let done = if was_slow {
            Instant::from_secs(1)
        } else {
            Instant::ZERO
        };
        b.complete(done, d, Completion::Success, r);
        if was_slow {
            return (b, slow, fast);
        }
    }
}

#[test]
fn the_cheaper_of_two_wins() {
    let mut r = rng();
    let (mut b, _, fast) = one_slow_one_fast(&mut r);
    let now = Instant::from_secs(1);
    for _ in 0..10 {
        let d = b.pick(now, &mut r).unwrap();
        assert_eq!(d.endpoint(), fast);
        b.complete(now, d, Completion::Success, &mut r);
    }
}

#[test]
fn a_failure_never_changes_the_rtt_estimate() {
    let mut r = rng();
    let mut b: Balancer<u32> = Balancer::new(BalanceConfig::default());
    let id = b.insert(Instant::ZERO, 1, 1);
    let before = b.rtt_estimate(id, Instant::ZERO);
    // A timeout after 500 ms, and a fast failure: neither is a latency.
    for done in [Instant::from_millis(500), Instant::ZERO] {
        let d = b.pick(Instant::ZERO, &mut r).unwrap();
        b.complete(done, d, Completion::Failure, &mut r);
    }
    let decay = BalanceConfig::default().decay.as_nanos() as f64;
    let decayed = before.unwrap().as_nanos() as f64 * (-0.5e9 / decay).exp();
    let after = b.rtt_estimate(id, Instant::from_millis(500)).unwrap();
    assert!((after.as_nanos() as f64 - decayed).abs() < 1e3, "{after:?}");
}

#[test]
fn a_failing_endpoint_loses_to_an_equally_fast_one() {
    let mut r = rng();
    let mut b: Balancer<u32> = Balancer::new(BalanceConfig::default());
    let failing = b.insert(Instant::ZERO, 1, 1);
    let healthy = b.insert(Instant::ZERO, 2, 1);
    // Both answer in 10 ms; `failing` fails every other request (too few in
    // a row to be ejected), and answers those failures at once.
    let mut now = Instant::ZERO;
    for (id, other) in [(failing, healthy), (healthy, failing)] {
        b.set_weight(other, 0);
        for turn in 0..20 {
            let d = b.pick(now, &mut r).unwrap();
            assert_eq!(d.endpoint(), id);
            let (c, rtt) = if id == failing && turn % 2 == 1 {
                (Completion::Failure, 0)
            } else {
                (Completion::Success, 10)
            };
            b.complete(now + Duration::from_millis(rtt), d, c, &mut r);
            now += Duration::from_millis(20);
        }
        b.set_weight(other, 1);
    }
    assert_eq!(b.health(failing), Some(Health::Ready));
    // Nothing in flight anywhere: the healthy endpoint wins every pick.
    for _ in 0..10 {
        let d = b.pick(now, &mut r).unwrap();
        assert_eq!(d.endpoint(), healthy);
        b.complete(now, d, Completion::Cancelled, &mut r);
    }
}

#[test]
fn a_stale_estimate_is_replaced_by_one_fresh_answer() {
    let mut r = rng();
    let (mut b, slow, fast) = one_slow_one_fast(&mut r);
    // Within `stale_after` of its answer, `slow` gets nothing.
    let mut now = Instant::from_secs(1);
    while now < Instant::from_millis(2900) {
        let d = b.pick(now, &mut r).unwrap();
        assert_eq!(d.endpoint(), fast, "at {now:?}");
        assert!(!d.is_probe());
        b.complete(now, d, Completion::Success, &mut r);
        now += Duration::from_millis(100);
    }
    // Once stale it gets one request (only one: it is then in flight), and
    // that request's 5 ms replace the 1 s estimate at once.
    now = Instant::from_secs(3);
    let d = b.pick(now, &mut r).unwrap();
    assert_eq!(d.endpoint(), slow);
    let other = b.pick(now, &mut r).unwrap();
    assert_eq!(other.endpoint(), fast);
    b.complete(now, other, Completion::Success, &mut r);
    let done = now + Duration::from_millis(5);
    b.complete(done, d, Completion::Success, &mut r);
    assert_eq!(b.rtt_estimate(slow, done), Some(Duration::from_millis(5)));
}

#[test]
fn a_stale_endpoints_first_success_clears_its_failures() {
    let mut r = rng();
    let mut b: Balancer<u32> = Balancer::new(BalanceConfig::default());
    let crashed = b.insert(Instant::ZERO, 1, 1);
    let peer = b.insert(Instant::ZERO, 2, 1);
    // Three timeouts (too few to eject), then the peer answers alone.
    b.set_weight(peer, 0);
    for _ in 0..3 {
        let d = b.pick(Instant::ZERO, &mut r).unwrap();
        b.complete(Instant::from_millis(500), d, Completion::Failure, &mut r);
    }
    b.set_weight(peer, 1);
    let answer = |b: &mut Balancer<u32>, r: &mut SmallRng, now: Instant, ok: bool| {
        let d = b.pick(now, r).unwrap();
        let id = d.endpoint();
        let c = if ok {
            Completion::Success
        } else {
            Completion::Failure
        };
        b.complete(now + Duration::from_millis(10), d, c, r);
        id
    };
    // Its failures make it lose every pick while it is fresh.
    let mut now = Instant::from_millis(500);
    while now < Instant::from_millis(2000) {
        assert_eq!(answer(&mut b, &mut r, now, true), peer, "at {now:?}");
        now += Duration::from_millis(100);
    }
    // 2 s without a success: stale, it wins a tie (as it would again after
    // a failure, until failure accrual ejects it, see
    // `scenario_failing_endpoint_is_ejected_then_recovered`). Its success
    // clears the failures, and with them the penalty: it is as cheap as
    // its peer again.
    assert_eq!(answer(&mut b, &mut r, now, true), crashed);
    now += Duration::from_millis(100);
    let picks: Vec<_> = (0..20).map(|_| answer(&mut b, &mut r, now, true)).collect();
    assert!(picks.contains(&crashed), "{picks:?}");
}

#[derive(Clone, Debug)]
enum Op {
    Insert(u8, u8),
    Remove(u8),
    SetWeight(u8, u8),
    Pick,
    Complete(u8, u8),
    Advance(u16),
}

impl Arbitrary for Op {
    fn arbitrary(g: &mut Gen) -> Self {
        let key = u8::arbitrary(g) % 8;
        match u8::arbitrary(g) % 10 {
            0 => Op::Insert(key, u8::arbitrary(g) % 4),
            1 => Op::Remove(key),
            2 => Op::SetWeight(key, u8::arbitrary(g) % 4),
            3..=5 => Op::Pick,
            6..=8 => Op::Complete(u8::arbitrary(g), u8::arbitrary(g)),
            _ => Op::Advance(u16::arbitrary(g)),
        }
    }
}

quickcheck! {
    /// Under any interleaving of discovery updates, picks, completions and
    /// time: a pick only returns a live endpoint with a non-zero weight that
    /// is ready or in probation, or, when none is, the ejected one whose
    /// ejection ends first, as its probe; errors are returned exactly when
    /// nothing is pickable that way and say which case holds; pending counts
    /// equal the dispatches outstanding; stale completions change nothing.
    fn prop_balancer_picks_only_live_weighted_available_endpoints(ops: Vec<Op>, seed: u64) -> bool {
        let mut r = SmallRng::seed_from_u64(seed);
        let mut b: Balancer<u8> = Balancer::new(BalanceConfig {
            accrual: AccrualConfig {
                mode: crate::accrual::AccrualMode::ConsecutiveFailures(2),
                ..AccrualConfig::default()
            },
            ..BalanceConfig::default()
        });
        let mut model: BTreeMap<u8, u32> = BTreeMap::new();
        let mut outstanding: Vec<Dispatch> = Vec::new();
        let mut now = Instant::ZERO;
        for op in ops {
            match op {
                Op::Insert(k, w) => { b.insert(now, k, u32::from(w)); model.insert(k, u32::from(w)); }
                Op::Remove(k) => { b.remove_key(&k); model.remove(&k); }
                Op::SetWeight(k, w) => {
                    if let Some(id) = b.id_of(&k) {
                        b.set_weight(id, u32::from(w));
                        model.insert(k, u32::from(w));
                    }
                }
                Op::Advance(ms) => now += Duration::from_millis(u64::from(ms)),
                Op::Pick => {
                    b.handle_timeout(now);
                    let pickable = model.iter().filter(|&(k, w)| *w > 0 && {
                        let id = b.id_of(k).unwrap();
                        matches!(b.health(id), Some(Health::Ready | Health::Probation))
                    }).count();
                    // Weighted endpoints sitting out an ejection, and the
                    // earliest end among them.
                    let ejection_ends: Vec<Instant> = model.iter().filter(|&(_, w)| *w > 0).filter_map(|(k, _)| {
                        match b.health(b.id_of(k).unwrap()) { Some(Health::Ejected { until }) => Some(until), _ => None }
                    }).collect();
                    let waiting = ejection_ends.len();
                    let soonest = ejection_ends.iter().min().copied();
                    let before: BTreeMap<u8, Option<Health>> =
                        model.keys().map(|k| (*k, b.health(b.id_of(k).unwrap()))).collect();
                    match b.pick(now, &mut r) {
                        Ok(d) => {
                            let Some(&k) = b.key(d.endpoint()) else { return false };
                            if model.get(&k).copied().unwrap_or(0) == 0 { return false; }
                            // Picked only if it was pickable before the pick
                            // (never a second request to an endpoint already
                            // probing); a probe exactly when it was in
                            // probation.
                            match before.get(&k).copied().flatten() {
                                Some(Health::Ready) => if d.is_probe() { return false; },
                                Some(Health::Probation) => if !d.is_probe() { return false; },
                                // Nothing pickable: the ejection that ends
                                // first ends now, and this is its probe.
                                Some(Health::Ejected { until }) => {
                                    if pickable != 0 || !d.is_probe() || Some(until) != soonest { return false; }
                                }
                                _ => return false,
                            }
                            if !matches!(b.health(d.endpoint()), Some(Health::Ready | Health::Probing)) { return false; }
                            if pickable == 0 && waiting == 0 { return false; }
                            outstanding.push(d);
                        }
                        Err(PickError::NoEndpoints) => if model.values().any(|w| *w > 0) { return false },
                        Err(PickError::AllEjected) => if pickable != 0 || waiting != 0 || model.values().all(|w| *w == 0) { return false },
                    }
                }
                Op::Complete(i, kind) => {
                    if outstanding.is_empty() { continue; }
                    let d = outstanding.swap_remove(usize::from(i) % outstanding.len());
                    let live = b.key(d.endpoint()).is_some();
                    let completion = match kind % 3 { 0 => Completion::Success, 1 => Completion::Failure, _ => Completion::Cancelled };
                    let t = b.complete(now, d, completion, &mut r);
                    if !live && t.is_some() { return false; }
                }
            }
            if b.len() != model.len() { return false; }
            for k in model.keys() {
                let id = b.id_of(k).unwrap();
                let expect = outstanding.iter().filter(|d| d.endpoint() == id).count();
                if b.pending(id) != Some(expect as u32) { return false; }
            }
        }
        true
    }
}

quickcheck! {
    /// Weights under sustained load: 2 to 4 endpoints of equal latency
    /// (20 ms) with random weights 1 to 3, 10 requests per millisecond (about
    /// 200 in flight): after a warm-up, each endpoint's share of the picks is
    /// within 5 points of its weight's share. Weight sets whose largest share
    /// exceeds what two random choices can give one endpoint (it is in
    /// `2/n` of the pairs) less a margin are skipped.
    fn prop_weights_give_proportional_shares_under_load(weights: Vec<u8>, seed: u64) -> quickcheck::TestResult {
        use quickcheck::TestResult;
        let weights: Vec<u32> = weights.iter().take(4).map(|w| u32::from(w % 3) + 1).collect();
        let n = weights.len();
        if n < 2 { return TestResult::discard(); }
        let total: u32 = weights.iter().sum();
        let max_share = f64::from(*weights.iter().max().unwrap()) / f64::from(total);
        if max_share > 2.0 / n as f64 - 0.1 { return TestResult::discard(); }
        let mut r = SmallRng::seed_from_u64(seed);
        let mut b: Balancer<usize> = Balancer::new(BalanceConfig::default());
        for (i, &w) in weights.iter().enumerate() {
            b.insert(Instant::ZERO, i, w);
        }
        let latency = Duration::from_millis(20);
        let mut in_flight: std::collections::VecDeque<(Instant, Dispatch)> = Default::default();
        let mut picks = vec![0u64; n];
        let mut now = Instant::ZERO;
        for ms in 0..1000u64 {
            while in_flight.front().is_some_and(|(t, _)| *t <= now) {
                let (t, d) = in_flight.pop_front().unwrap();
                b.complete(t, d, Completion::Success, &mut r);
            }
            for _ in 0..10 {
                let d = b.pick(now, &mut r).unwrap();
                if ms >= 200 {
                    picks[*b.key(d.endpoint()).unwrap()] += 1;
                }
                in_flight.push_back((now + latency, d));
            }
            now += Duration::from_millis(1);
        }
        let sum: u64 = picks.iter().sum();
        TestResult::from_bool(weights.iter().zip(&picks).all(|(&w, &c)| {
            let share = c as f64 / sum as f64;
            (share - f64::from(w) / f64::from(total)).abs() <= 0.05
        }))
    }
}

#[test]
fn endpoint_slots_stay_small() {
    // A pick touches two random slots; at 100,000 endpoints their size is
    // what the pick's cost depends on (cache misses).
    let size = std::mem::size_of::<Slot<u64>>();
    assert!(size <= 192, "slot is {size} bytes");
}
