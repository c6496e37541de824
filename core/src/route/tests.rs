use super::*;
use quickcheck::{Arbitrary, Gen, quickcheck};
use std::cmp::Reverse;

fn rule<M>(matches: Vec<M>, backend: &'static str) -> Rule<M, &'static str> {
    Rule {
        matches,
        timeouts: Timeouts::default(),
        retry: RetryPolicy::default(),
        backends: Split::single(backend),
    }
}

fn route<M>(name: &str, created: u64, rules: Vec<Rule<M, &'static str>>) -> Route<M, &'static str> {
    Route {
        namespace: "default".into(),
        name: name.into(),
        created,
        rules,
    }
}

fn get(path: &str) -> Head<'_> {
    Head {
        method: "GET",
        path,
        headers: &[],
    }
}

fn backend<M: RouteMatch + Default>(
    t: &mut RouteTable<M, &'static str>,
    h: &Head<'_>,
) -> Option<&'static str> {
    t.select(h).and_then(|s| s.backend.copied())
}

#[test]
fn prefix_matches_whole_segments_only() {
    let p = PathMatch::prefix("/abc");
    assert!(p.matches("/abc"));
    assert!(p.matches("/abc/"));
    assert!(p.matches("/abc/def"));
    assert!(!p.matches("/abcd"));
    assert!(!p.matches("/ab"));
    assert_eq!(PathMatch::prefix("/abc/"), p, "a trailing slash is ignored");
    assert!(PathMatch::prefix("/").matches("/anything/at/all"));
    assert!(PathMatch::exact("/abc").matches("/abc"));
    assert!(!PathMatch::exact("/abc").matches("/abc/"));
}

#[test]
fn http_precedence_follows_the_gateway_api() {
    let mut t = HttpRouteTable::new(vec![route(
        "a",
        0,
        vec![
            rule(vec![HttpMatch::path(PathMatch::prefix("/"))], "root"),
            rule(vec![HttpMatch::path(PathMatch::prefix("/api"))], "api"),
            rule(vec![HttpMatch::path(PathMatch::prefix("/api/v1"))], "v1"),
            rule(vec![HttpMatch::path(PathMatch::exact("/api"))], "exact"),
            rule(
                vec![
                    HttpMatch::path(PathMatch::prefix("/api"))
                        .with_header(HeaderMatch::exact("X-Canary", "1")),
                ],
                "hdr",
            ),
            rule(
                vec![HttpMatch::path(PathMatch::prefix("/api")).with_method("POST")],
                "post",
            ),
            rule(
                vec![
                    HttpMatch::path(PathMatch::prefix("/api"))
                        .with_header(HeaderMatch::exact("x-a", "1"))
                        .with_header(HeaderMatch::exact("x-b", "1")),
                ],
                "two-hdr",
            ),
        ],
    )]);
    // Exact beats every prefix, including longer ones with more conditions.
    assert_eq!(backend(&mut t, &get("/api")), Some("exact"));
    // The longest prefix wins.
    assert_eq!(backend(&mut t, &get("/api/v1/users")), Some("v1"));
    assert_eq!(backend(&mut t, &get("/api/v2")), Some("api"));
    assert_eq!(backend(&mut t, &get("/other?x=/api")), Some("root"));
    // Same prefix: a method match beats header matches.
    let post = Head {
        method: "POST",
        path: "/api/x",
        headers: &[("x-canary", "1")],
    };
    assert_eq!(backend(&mut t, &post), Some("post"));
    // Same prefix, no method: more header matches win; names are case-insensitive.
    let both = Head {
        method: "GET",
        path: "/api/x",
        headers: &[("X-Canary", "1"), ("X-A", "1"), ("x-b", "1")],
    };
    assert_eq!(backend(&mut t, &both), Some("two-hdr"));
    let canary = Head {
        method: "GET",
        path: "/api/x",
        headers: &[("X-Canary", "1")],
    };
    assert_eq!(backend(&mut t, &canary), Some("hdr"));
    let wrong_value = Head {
        method: "GET",
        path: "/api/x",
        headers: &[("x-canary", "2")],
    };
    assert_eq!(backend(&mut t, &wrong_value), Some("api"));
}

#[test]
fn ties_go_to_the_oldest_route_then_by_name_then_to_the_first_rule() {
    let m = || vec![HttpMatch::path(PathMatch::prefix("/x"))];
    let mut t = HttpRouteTable::new(vec![
        route("b-newer", 20, vec![rule(m(), "newer")]),
        route(
            "c-old",
            10,
            vec![rule(m(), "old-c-first"), rule(m(), "old-c-second")],
        ),
        route("a-old", 10, vec![rule(m(), "old-a")]),
    ]);
    assert_eq!(backend(&mut t, &get("/x")), Some("old-a"));
    let mut t = HttpRouteTable::new(vec![
        route("b-newer", 20, vec![rule(m(), "newer")]),
        route(
            "c-old",
            10,
            vec![rule(m(), "old-c-first"), rule(m(), "old-c-second")],
        ),
    ]);
    assert_eq!(backend(&mut t, &get("/x")), Some("old-c-first"));
}

#[test]
fn frequent_weight_updates_do_not_starve_a_canary() {
    // 99:1, with the weights re-applied every 40 picks (discovery pushing
    // the same or nearly the same split): the canary keeps its 1%. Zeroing
    // the credits at each update, it never got a turn (it needs about 50
    // picks from zero to outbid the stable backend).
    let mut s = Split::new([("stable", 99), ("canary", 1)]);
    let mut canary = 0;
    for round in 0..250 {
        s.set_weight(0, if round % 2 == 0 { 99 } else { 98 });
        canary += (0..40).filter(|_| s.pick() == Some(&"canary")).count();
    }
    // 10,000 picks at 1/100 to 1/99 each.
    assert!((99..=103).contains(&canary), "{canary}");
}

#[test]
fn lookup_skips_matches_removed_through_rule_mut() {
    let mut t = HttpRouteTable::new(vec![route(
        "r",
        0,
        vec![
            rule(
                vec![
                    HttpMatch::path(PathMatch::exact("/a")),
                    HttpMatch::path(PathMatch::exact("/b")),
                ],
                "ab",
            ),
            rule(vec![HttpMatch::path(PathMatch::prefix("/"))], "rest"),
        ],
    )]);
    let id = t.lookup(&get("/b")).unwrap();
    assert_eq!(backend(&mut t, &get("/b")), Some("ab"));
    t.rule_mut(id).unwrap().matches.truncate(1);
    assert_eq!(backend(&mut t, &get("/b")), Some("rest"));
    assert_eq!(backend(&mut t, &get("/a")), Some("ab"));
    t.rule_mut(id).unwrap().matches.clear();
    assert_eq!(backend(&mut t, &get("/a")), Some("rest"));
}

#[test]
fn ties_compare_the_namespace_slash_name_string_not_the_pair() {
    // "team-b/a" < "team/z" as strings ('-' < '/'), although "team" <
    // "team-b" as namespaces.
    let m = || vec![HttpMatch::path(PathMatch::prefix("/x"))];
    let in_ns = |ns: &str, name: &str, b| Route {
        namespace: ns.into(),
        name: name.into(),
        created: 0,
        rules: vec![rule(m(), b)],
    };
    let mut t = HttpRouteTable::new(vec![
        in_ns("team", "z", "team"),
        in_ns("team-b", "a", "team-b"),
    ]);
    assert_eq!(backend(&mut t, &get("/x")), Some("team-b"));
    let mut t = HttpRouteTable::new(vec![
        in_ns("team-b", "a", "team-b"),
        in_ns("team", "z", "team"),
    ]);
    assert_eq!(backend(&mut t, &get("/x")), Some("team-b"));
}

#[test]
fn a_rule_without_matches_matches_everything_and_no_match_is_none() {
    let mut t = HttpRouteTable::new(vec![route("r", 0, vec![rule(vec![], "all")])]);
    assert_eq!(backend(&mut t, &get("/whatever")), Some("all"));
    let t: HttpRouteTable<&str> = HttpRouteTable::new(vec![route(
        "r",
        0,
        vec![rule(vec![HttpMatch::path(PathMatch::exact("/a"))], "a")],
    )]);
    assert_eq!(t.lookup(&get("/b")), None);
}

#[test]
fn grpc_precedence_prefers_service_and_method_over_service() {
    let mut t = GrpcRouteTable::new(vec![route(
        "g",
        0,
        vec![
            rule(vec![GrpcMatch::new(Some("pkg.Greeter"), None)], "service"),
            rule(
                vec![GrpcMatch::new(Some("pkg.Greeter"), Some("SayHello"))],
                "method",
            ),
            rule(vec![GrpcMatch::new(None, Some("SayHello"))], "any-service"),
            rule(vec![GrpcMatch::default()], "all"),
        ],
    )]);
    let call = |path| Head {
        method: "POST",
        path,
        headers: &[],
    };
    assert_eq!(
        backend(&mut t, &call("/pkg.Greeter/SayHello")),
        Some("method")
    );
    assert_eq!(
        backend(&mut t, &call("/pkg.Greeter/SayBye")),
        Some("service")
    );
    assert_eq!(
        backend(&mut t, &call("/other.Svc/SayHello")),
        Some("any-service")
    );
    assert_eq!(backend(&mut t, &call("/other.Svc/Other")), Some("all"));
}

#[test]
fn split_weights_change_at_run_time_and_each_rule_keeps_its_policy() {
    let mut r = rule(vec![HttpMatch::default()], "stable");
    r.backends = Split::new([("stable", 100), ("canary", 0)]);
    r.timeouts = Timeouts {
        request: Some(crate::time::Duration::from_secs(3)),
        per_try: None,
    };
    let mut t = HttpRouteTable::new(vec![route("r", 0, vec![r])]);
    let id = t.lookup(&get("/")).unwrap();
    assert!((0..100).all(|_| backend(&mut t, &get("/")) == Some("stable")));
    t.rule_mut(id).unwrap().backends.set_weight(1, 100);
    let canary = (0..100)
        .filter(|_| backend(&mut t, &get("/")) == Some("canary"))
        .count();
    assert_eq!(canary, 50);
    let s = t.select(&get("/")).unwrap();
    assert_eq!(
        s.timeouts.request,
        Some(crate::time::Duration::from_secs(3))
    );
}

/// Path segments from a tiny alphabet so that prefixes collide often.
#[derive(Clone, Debug)]
struct SegPath(String);

impl Arbitrary for SegPath {
    fn arbitrary(g: &mut Gen) -> Self {
        let n = usize::arbitrary(g) % 4;
        let mut s = String::new();
        for _ in 0..n {
            s.push('/');
            s.push_str(g.choose(&["a", "ab", "b", ""]).unwrap());
        }
        if s.is_empty() || bool::arbitrary(g) && !s.ends_with('/') {
            s.push('/');
        }
        SegPath(s)
    }
}

/// Brute-force order of a match: precedence, route age, name, rule index.
type TieBreak = (Reverse<Precedence>, u64, String, usize);

quickcheck! {
    /// A prefix match holds exactly when the path's `/`-separated segments
    /// begin with the prefix's segments (trailing `/` of the prefix ignored).
    fn prop_prefix_match_is_segment_wise(prefix: SegPath, path: SegPath) -> bool {
        let segs = |s: &str| s.split('/').map(str::to_owned).collect::<Vec<_>>();
        let p = prefix.0.trim_end_matches('/');
        let model = segs(&path.0).starts_with(&segs(p));
        PathMatch::prefix(&prefix.0).matches(&path.0) == model
    }

    /// The table picks, among all matching (route, rule, match) triples,
    /// the one with the highest precedence, then the oldest route, then
    /// the route first by the string `namespace/name`, then the first rule:
    /// compared against a brute-force search.
    fn prop_lookup_returns_the_highest_precedence_match(
        specs: Vec<(SegPath, bool, bool, u8, u8, u8)>, req: SegPath, post: bool, hdr: bool
    ) -> bool {
        let mut routes = Vec::new();
        for (i, (p, exact, method, hdrs, created, route_no)) in specs.iter().enumerate() {
            let path = if *exact { PathMatch::exact(&p.0) } else { PathMatch::prefix(&p.0) };
            let mut m = HttpMatch::path(path);
            if *method { m = m.with_method("POST"); }
            for h in 0..(hdrs % 3) { m = m.with_header(HeaderMatch::exact(["x-0", "x-1", "x-2"][usize::from(h)], "1")); }
            let _ = i;
            // Namespaces where the pair order and the string order differ.
            let namespace = ["team", "team-b"][usize::from(route_no % 2)].to_owned();
            let name = format!("r{}", (route_no / 2) % 2);
            match routes.iter_mut().find(|r: &&mut Route<HttpMatch, usize>| r.name == name && r.namespace == namespace) {
                Some(r) => r.rules.push(Rule { matches: vec![m], timeouts: Timeouts::default(), retry: RetryPolicy::default(), backends: Split::single(0) }),
                None => routes.push(Route { namespace, name, created: u64::from(created % 3), rules: vec![Rule { matches: vec![m], timeouts: Timeouts::default(), retry: RetryPolicy::default(), backends: Split::single(0) }] }),
            }
        }
        let headers: &[(&str, &str)] = if hdr { &[("x-0", "1"), ("X-1", "1")] } else { &[] };
        let head = Head { method: if post { "POST" } else { "GET" }, path: &req.0, headers };
        let mut best: Option<(TieBreak, RuleId)> = None;
        for (ri, r) in routes.iter().enumerate() {
            for (ui, rule) in r.rules.iter().enumerate() {
                for m in &rule.matches {
                    if m.matches(&head) {
                        let key = (Reverse(m.precedence()), r.created, format!("{}/{}", r.namespace, r.name), ui);
                        if best.as_ref().is_none_or(|(k, _)| key < *k) {
                            best = Some((key, RuleId { route: ri, rule: ui }));
                        }
                    }
                }
            }
        }
        let table = HttpRouteTable::new(routes);
        table.lookup(&head) == best.map(|(_, id)| id)
    }

    /// Smooth weighted round-robin: after any number of picks, each
    /// backend's count is within the number of backends of its exact share;
    /// a weight of 0 is never picked. After each of a series of weight
    /// changes, made at any point of the sequence (credits are kept across
    /// them), the picks since that change stay within the number of backends
    /// plus one of the new shares.
    fn prop_split_shares_track_weights(weights: Vec<u8>, picks: u16, changes: Vec<(u8, u8, u8)>) -> bool {
        let weights: Vec<u32> = weights.into_iter().take(6).map(|w| u32::from(w % 10)).collect();
        if weights.is_empty() { return true; }
        let check = |split: &mut Split<usize>, weights: &[u32], n: u64, slack: f64| {
            let total: u32 = weights.iter().sum();
            let mut counts = vec![0u64; weights.len()];
            for _ in 0..n {
                match split.pick() {
                    Some(&i) => counts[i] += 1,
                    None => return total == 0,
                }
            }
            let k = weights.len() as f64;
            weights.iter().zip(&counts).all(|(&w, &c)| {
                let expect = n as f64 * f64::from(w) / f64::from(total.max(1));
                (w > 0 || c == 0) && (c as f64 - expect).abs() <= k + slack
            })
        };
        let mut split = Split::new(weights.iter().copied().enumerate());
        if !check(&mut split, &weights, u64::from(picks % 2000), 0.0) { return false; }
        let mut weights = weights;
        for (index, weight, n) in changes {
            let i = usize::from(index) % weights.len();
            weights[i] = u32::from(weight % 10);
            split.set_weight(i, weights[i]);
            if !check(&mut split, &weights, u64::from(n), 1.0) { return false; }
        }
        true
    }
}
