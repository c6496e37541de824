//! Retry budget cost: recording a primary request and checking a retry.

use criterion::{Criterion, criterion_group, criterion_main};
use needle_core::retry::{BudgetConfig, RetryBudget};
use needle_core::time::{Duration, Instant};
use std::hint::black_box;

fn budget(c: &mut Criterion) {
    let mut group = c.benchmark_group("retry_budget");
    // Steady storm: every request fails and asks for a retry, so about a
    // fifth are admitted and the deque holds a window's worth of steps.
    let mut b = RetryBudget::new(BudgetConfig::default());
    let mut now = Instant::ZERO;
    group.bench_function("record_and_check", |bench| {
        bench.iter(|| {
            now += Duration::from_micros(100);
            b.record_request(now);
            black_box(b.try_withdraw(now))
        })
    });
    let mut b = RetryBudget::new(BudgetConfig::default());
    let mut now = Instant::ZERO;
    group.bench_function("record", |bench| {
        bench.iter(|| {
            now += Duration::from_micros(100);
            b.record_request(black_box(now));
        })
    });
    group.finish();
}

criterion_group!(benches, budget);
criterion_main!(benches);
