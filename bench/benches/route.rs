//! Route match cost: a realistic table (10 routes × 5 rules of path,
//! method and header matches), for a request that matches an early entry,
//! one that matches late, and one that matches nothing (full scan).

use criterion::{Criterion, criterion_group, criterion_main};
use needle_core::retry::{RetryPolicy, Timeouts};
use needle_core::route::{
    Head, HeaderMatch, HttpMatch, HttpRouteTable, PathMatch, Route, Rule, Split,
};
use std::hint::black_box;

fn table() -> HttpRouteTable<u32> {
    let routes = (0..10)
        .map(|r| Route {
            namespace: "default".into(),
            name: format!("svc-{r}"),
            created: r,
            rules: (0..5)
                .map(|i| {
                    let path = format!("/svc{r}/api/v{i}");
                    let m = match i % 3 {
                        0 => HttpMatch::path(PathMatch::exact(&path)),
                        1 => HttpMatch::path(PathMatch::prefix(&path)).with_method("GET"),
                        _ => HttpMatch::path(PathMatch::prefix(&path))
                            .with_header(HeaderMatch::exact("x-canary", "true")),
                    };
                    Rule {
                        matches: vec![m],
                        timeouts: Timeouts::default(),
                        retry: RetryPolicy::default(),
                        backends: Split::new([(1, 90), (2, 10)]),
                    }
                })
                .collect(),
        })
        .collect();
    HttpRouteTable::new(routes)
}

fn route(c: &mut Criterion) {
    let mut group = c.benchmark_group("route");
    let t = table();
    let headers = [("user-agent", "bench"), ("x-canary", "true")];
    let early = Head {
        method: "GET",
        path: "/svc0/api/v0",
        headers: &headers,
    };
    let late = Head {
        method: "GET",
        path: "/svc9/api/v4/items?id=7",
        headers: &headers,
    };
    let miss = Head {
        method: "GET",
        path: "/nothing/here",
        headers: &headers,
    };
    group.bench_function("lookup_early", |b| {
        b.iter(|| black_box(t.lookup(black_box(&early))))
    });
    group.bench_function("lookup_late", |b| {
        b.iter(|| black_box(t.lookup(black_box(&late))))
    });
    group.bench_function("lookup_miss_50_rules", |b| {
        b.iter(|| black_box(t.lookup(black_box(&miss))))
    });
    let mut t = table();
    group.bench_function("select_with_split", |b| {
        b.iter(|| black_box(t.select(black_box(&late)).and_then(|s| s.backend.copied())))
    });
    group.finish();
}

criterion_group!(benches, route);
criterion_main!(benches);
