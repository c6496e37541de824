//! Balancer pick cost against endpoint-set size: power of two choices is
//! O(1), so 10, 1,000 and 100,000 endpoints should cost about the same
//! (the larger sets only add cache misses).

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use needle_core::balance::{BalanceConfig, Balancer, Completion};
use needle_core::time::{Duration, Instant};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use std::hint::black_box;

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("balance");
    for n in [10usize, 1_000, 100_000] {
        let mut rng = SmallRng::seed_from_u64(1);
        let mut b = Balancer::new(BalanceConfig::default());
        for i in 0..n {
            b.insert(Instant::ZERO, i, 1);
        }
        let mut now = Instant::from_secs(1);
        group.bench_with_input(BenchmarkId::new("pick_complete", n), &n, |bench, _| {
            bench.iter(|| {
                now += Duration::from_micros(1);
                let d = b.pick(now, &mut rng).unwrap();
                let endpoint = black_box(d.endpoint());
                b.complete(
                    now + Duration::from_millis(5),
                    d,
                    Completion::Success,
                    &mut rng,
                );
                endpoint
            })
        });
    }
    group.finish();
}

criterion_group!(benches, pick);
criterion_main!(benches);
