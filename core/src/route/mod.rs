//! Routes and traffic splits: which rule a request matches, and which
//! backend of that rule's weighted split it goes to.
//!
//! Matching follows the Kubernetes Gateway API (HTTPRoute and GRPCRoute as
//! attached to a Service in mesh mode, so hostnames play no part):
//!
//! - a [`RouteTable`] holds routes, each with rules; a rule has matches
//!   (any may hold) and each match has conditions (all must hold);
//! - HTTP matches ([`HttpMatch`]): path `Exact` or `Prefix` (on whole path
//!   segments, `/abc` matches `/abc/def` but not `/abcd`), method, and exact
//!   header values (names case-insensitive); a rule without matches matches
//!   everything (prefix `/`);
//! - gRPC matches ([`GrpcMatch`]): service and/or method of the
//!   `/<service>/<method>` path, and exact headers.
//!
//! When several matches hold, precedence is the Gateway API's, across all
//! rules of all routes: for HTTP, an exact path beats any prefix, then the
//! longest prefix wins, then a match with a method, then the most header
//! matches; for gRPC, the most characters of service, then of method, then
//! the most headers. Ties go to the oldest route (creation timestamp), then
//! to the route first by the string `namespace/name` (bytewise), then to the
//! first rule in the route. The table sorts all matches once, when built, so
//! a lookup is a scan that stops at the first match.
//!
//! Each [`Rule`] carries what the rest of the request's path needs: its
//! [`Timeouts`], its [`RetryPolicy`] and its backend [`Split`], whose weights
//! may change at run time ([`RouteTable::rule_mut`]).
//!
//! Types are independent of the `http` crate: requests are seen through
//! [`RequestHead`], which the io layer implements over its own request type.

mod grpc;
mod http;
mod split;

pub use grpc::GrpcMatch;
pub use http::{HeaderMatch, HttpMatch, PathMatch};
pub use split::Split;

use crate::retry::{RetryPolicy, Timeouts};

/// What route matching needs to see of a request.
pub trait RequestHead {
    /// The method, e.g. `GET`.
    fn method(&self) -> &str;
    /// The request target's path, possibly with a query (`/a/b?x=1`).
    fn path(&self) -> &str;
    /// Whether a header named `name` (given lowercase) has exactly `value`
    /// (any of its values, if repeated).
    fn has_header(&self, name: &str, value: &str) -> bool;
}

/// A plain request head over borrowed strings: handy for tests and for
/// callers without a header map.
#[derive(Clone, Copy, Debug)]
pub struct Head<'a> {
    /// The method.
    pub method: &'a str,
    /// The path (and query).
    pub path: &'a str,
    /// The headers, as `(name, value)` pairs in any case.
    pub headers: &'a [(&'a str, &'a str)],
}

impl RequestHead for Head<'_> {
    fn method(&self) -> &str {
        self.method
    }
    fn path(&self) -> &str {
        self.path
    }
    fn has_header(&self, name: &str, value: &str) -> bool {
        self.headers
            .iter()
            .any(|(n, v)| n.eq_ignore_ascii_case(name) && *v == value)
    }
}

/// A match's rank among matches of its kind; greater is more specific.
/// Compared lexicographically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence(pub [usize; 4]);

/// A kind of route match (HTTP or gRPC).
pub trait RouteMatch {
    /// Whether the request satisfies every condition of this match.
    fn matches<R: RequestHead + ?Sized>(&self, request: &R) -> bool;
    /// How specific the match is, for precedence between matching rules.
    fn precedence(&self) -> Precedence;
}

/// One rule of a route: matches, and what to do with a request that
/// matches them.
#[derive(Clone, Debug)]
pub struct Rule<M, B> {
    /// Any of these may match; empty means "match everything" (the Gateway
    /// API default).
    pub matches: Vec<M>,
    /// The request deadline and per-try timeout.
    pub timeouts: Timeouts,
    /// How failed attempts are retried.
    pub retry: RetryPolicy,
    /// The weighted backends.
    pub backends: Split<B>,
}

/// A route: identity, age and rules.
#[derive(Clone, Debug)]
pub struct Route<M, B> {
    /// Namespace of the route resource.
    pub namespace: String,
    /// Name of the route resource.
    pub name: String,
    /// Creation timestamp (any monotone unit, e.g. seconds since the Unix
    /// epoch): older routes win ties.
    pub created: u64,
    /// The rules, in order.
    pub rules: Vec<Rule<M, B>>,
}

/// Which rule of which route matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleId {
    /// Index of the route in the table.
    pub route: usize,
    /// Index of the rule in the route.
    pub rule: usize,
}

/// The outcome of routing a request.
#[derive(Debug)]
pub struct Selected<'a, B> {
    /// The rule that matched.
    pub rule: RuleId,
    /// Its timeouts.
    pub timeouts: Timeouts,
    /// Its retry policy.
    pub retry: &'a RetryPolicy,
    /// The backend picked from its split; `None` if every weight is 0.
    pub backend: Option<&'a B>,
}

#[derive(Clone, Debug)]
struct Entry {
    rule: RuleId,
    /// Index into the rule's matches; `None` for the implicit match-all.
    matched: Option<usize>,
}

/// Routes of one kind, ordered for lookup by Gateway API precedence.
#[derive(Clone, Debug)]
pub struct RouteTable<M, B> {
    routes: Vec<Route<M, B>>,
    order: Vec<Entry>,
}

/// A table of HTTPRoutes.
pub type HttpRouteTable<B> = RouteTable<HttpMatch, B>;
/// A table of GRPCRoutes.
pub type GrpcRouteTable<B> = RouteTable<GrpcMatch, B>;

impl<M: RouteMatch + Default, B> RouteTable<M, B> {
    /// Builds the table, sorting every match by precedence once.
    pub fn new(routes: Vec<Route<M, B>>) -> Self {
        let implicit = M::default().precedence();
        let mut keyed = Vec::new();
        for (ri, route) in routes.iter().enumerate() {
            for (ui, rule) in route.rules.iter().enumerate() {
                let id = RuleId {
                    route: ri,
                    rule: ui,
                };
                if rule.matches.is_empty() {
                    keyed.push((implicit, id, None));
                }
                for (mi, m) in rule.matches.iter().enumerate() {
                    keyed.push((m.precedence(), id, Some(mi)));
                }
            }
        }
        keyed.sort_by(|(pa, a, ma), (pb, b, mb)| {
            let (ra, rb) = (&routes[a.route], &routes[b.route]);
            pb.cmp(pa)
                .then(ra.created.cmp(&rb.created))
                .then_with(|| qualified(ra).cmp(qualified(rb)))
                .then((a.route, a.rule, *ma).cmp(&(b.route, b.rule, *mb)))
        });
        let order = keyed
            .into_iter()
            .map(|(_, rule, matched)| Entry { rule, matched })
            .collect();
        RouteTable { routes, order }
    }

    /// The rule with the highest-precedence match for `request`, if any
    /// (none: the Gateway API answers 404).
    pub fn lookup<R: RequestHead + ?Sized>(&self, request: &R) -> Option<RuleId> {
        self.order.iter().find_map(|e| {
            let rule = &self.routes[e.rule.route].rules[e.rule.rule];
            // `rule_mut` hands out the rule, so its matches may have shrunk
            // since the table was built: a match that is gone is skipped.
            let ok = match e.matched {
                None => true,
                Some(i) => rule.matches.get(i).is_some_and(|m| m.matches(request)),
            };
            ok.then_some(e.rule)
        })
    }

    /// Routes a request: finds its rule and picks a backend from the split.
    pub fn select<R: RequestHead + ?Sized>(&mut self, request: &R) -> Option<Selected<'_, B>> {
        let id = self.lookup(request)?;
        let rule = &mut self.routes[id.route].rules[id.rule];
        Some(Selected {
            rule: id,
            timeouts: rule.timeouts,
            retry: &rule.retry,
            backend: rule.backends.pick(),
        })
    }

    /// The route with this index.
    pub fn route(&self, index: usize) -> Option<&Route<M, B>> {
        self.routes.get(index)
    }

    /// A rule.
    pub fn rule(&self, id: RuleId) -> Option<&Rule<M, B>> {
        self.routes.get(id.route)?.rules.get(id.rule)
    }

    /// A rule, to change its split's weights (or timeouts, or retries) at
    /// run time. Changing matches needs a new table: the order depends on
    /// them. Matches changed here anyway are not re-sorted: lookups still
    /// try the indices sorted when the table was built, skip those that no
    /// longer exist (never panicking), and do not see matches added since.
    pub fn rule_mut(&mut self, id: RuleId) -> Option<&mut Rule<M, B>> {
        self.routes.get_mut(id.route)?.rules.get_mut(id.rule)
    }
}

/// The bytes of `{namespace}/{name}`, the string the Gateway API orders
/// tied routes by (this differs from ordering by the pair: `team-b/x` sorts
/// before `team/x`, since `-` < `/`).
fn qualified<M, B>(route: &Route<M, B>) -> impl Iterator<Item = u8> + '_ {
    route
        .namespace
        .bytes()
        .chain(std::iter::once(b'/'))
        .chain(route.name.bytes())
}

#[cfg(test)]
mod tests;
