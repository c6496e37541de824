//! # Golden metrics
//!
//! What the proxy saw, as Prometheus counters, gauges and histograms, with
//! names and labels compatible with Linkerd's proxy so that existing
//! dashboards and alerts work. The catalogue (every metric, its labels and
//! their bounds, what to alert on) is `docs/metrics.md`.
//!
//! [`Metrics`] is a cheap-to-clone handle on one registry. A
//! [`Port`](crate::proxy::Port) and its [`HttpProxy`](crate::http::HttpProxy)
//! share one; two ports (inbound and outbound) share one by being built with
//! the same handle ([`HttpProxy::with_metrics`](crate::http::HttpProxy::with_metrics)).
//! [`Metrics::encode`] renders the Prometheus text format (0.0.4) the admin
//! server's `/metrics` serves.
//!
//! ## Cost on the hot path
//!
//! Label strings are built once per connection (the destination, the
//! client's identity), per destination (route names) or per endpoint (its
//! identity) and shared as `Arc<str>`; each connection resolves the series
//! of the label sets its requests use once and keeps them, so a request
//! costs no hash look-up: a short scan under an uncontended lock, two
//! atomic adds, one histogram observation and one extra boxed response
//! body (measured in `docs/metrics.md`). Bytes cost one relaxed atomic add
//! per read or write call on the accepted socket (see [`tcp`]).
//!
//! ## Bounded label sets
//!
//! No label takes a path, a query, a header or a client port. The
//! destination-keyed labels (`authority`, `target_addr`) are bounded by the
//! destinations the proxy keeps state for: when the HTTP proxy forgets a
//! destination (`destination_idle_timeout`), [`Metrics::forget_authority`]
//! removes its series too, so a proxy that meets ever new destinations
//! stays bounded in memory and in scrape size.

mod labels;
mod request;
pub mod tcp;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::hash::Hash;
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use needle_core::detect::{OpaqueReason, Protocol};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use labels::PeerLabels;
pub(crate) use labels::{
    BackendLabels, DetectLabels, RequestLabels, ResponseLabels, RouteLabels, TcpLabels,
};
pub(crate) use request::{HttpConnMetrics, Observed};
pub use tcp::{Counted, TcpConn};

use crate::meta::{Direction, TlsStatus};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of `response_latency_ms`'s buckets, in milliseconds:
/// Linkerd's, so its dashboards' quantiles read the same.
pub const LATENCY_BUCKETS_MS: [f64; 25] = [
    1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 100.0, 200.0, 300.0, 400.0, 500.0,
    1000.0, 2000.0, 3000.0, 4000.0, 5000.0, 10000.0, 20000.0, 30000.0, 40000.0, 50000.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS_MS)
}

/// A handle on Needle's metrics: clone it freely (it is an `Arc`).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

struct Inner {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    responses: Family<ResponseLabels, Counter>,
    latency: Family<RequestLabels, Histogram, fn() -> Histogram>,
    retries: Family<RouteLabels, Counter>,
    budget_exhausted: Family<RouteLabels, Counter>,
    ejections: Family<BackendLabels, Counter>,
    tcp_open: Family<TcpLabels, Counter>,
    tcp_close: Family<TcpLabels, Counter>,
    tcp_open_connections: Family<TcpLabels, Gauge>,
    tcp_read: Family<TcpLabels, Counter>,
    tcp_write: Family<TcpLabels, Counter>,
    detect: Family<DetectLabels, Counter>,
    /// No label; empty until set, so an alert on "expires soon" cannot
    /// fire on a proxy that has no certificate (a gauge at 0 would).
    cert_expiry: Family<NoLabels, Gauge<f64, AtomicU64>>,
    /// Every label set created, by destination, so a forgotten destination's
    /// series can be removed. Touched only when a series is first created.
    index: Mutex<BTreeMap<Arc<str>, Series>>,
}

/// The label sets of one destination.
#[derive(Default)]
struct Series {
    requests: BTreeSet<RequestLabels>,
    responses: BTreeSet<ResponseLabels>,
    routes: BTreeSet<RouteLabels>,
    backends: BTreeSet<BackendLabels>,
    tcp: BTreeSet<TcpLabels>,
}

impl Metrics {
    /// Needle's metrics in a registry of their own.
    pub fn new() -> Self {
        Metrics::with_registry(Registry::default())
    }

    /// Needle's metrics added to `registry`, which may already hold others
    /// (process metrics, say) that [`encode`](Self::encode) then renders
    /// too.
    pub fn with_registry(mut registry: Registry) -> Self {
        let inner = Inner {
            requests: Family::default(),
            responses: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            ejections: Family::default(),
            tcp_open: Family::default(),
            tcp_close: Family::default(),
            tcp_open_connections: Family::default(),
            tcp_read: Family::default(),
            tcp_write: Family::default(),
            detect: Family::default(),
            cert_expiry: Family::default(),
            index: Mutex::new(BTreeMap::new()),
            registry: Registry::default(),
        };
        // Counters are registered without `_total`: the encoder appends it.
        let r = &mut registry;
        r.register(
            "request",
            "HTTP requests answered (proxied or answered by Needle)",
            inner.requests.clone(),
        );
        r.register(
            "response",
            "HTTP responses whose stream ended, by status and classification",
            inner.responses.clone(),
        );
        r.register(
            "response_latency_ms",
            "Time from a request's head to its response's head, in milliseconds",
            inner.latency.clone(),
        );
        r.register(
            "retry",
            "Retry attempts sent (attempts after the first)",
            inner.retries.clone(),
        );
        r.register(
            "retry_budget_exhausted",
            "Requests that were not retried because the retry budget was spent",
            inner.budget_exhausted.clone(),
        );
        r.register(
            "endpoint_ejections",
            "Endpoints ejected by failure accrual",
            inner.ejections.clone(),
        );
        r.register("tcp_open", "Connections accepted", inner.tcp_open.clone());
        r.register("tcp_close", "Connections closed", inner.tcp_close.clone());
        r.register(
            "tcp_open_connections",
            "Connections open now",
            inner.tcp_open_connections.clone(),
        );
        r.register(
            "tcp_read_bytes",
            "Bytes read from accepted connections",
            inner.tcp_read.clone(),
        );
        r.register(
            "tcp_write_bytes",
            "Bytes written to accepted connections",
            inner.tcp_write.clone(),
        );
        r.register(
            "detect",
            "Protocol detection outcomes",
            inner.detect.clone(),
        );
        r.register(
            "identity_cert_expiration_timestamp_seconds",
            "When the proxy's identity certificate expires, in seconds since the Unix epoch",
            inner.cert_expiry.clone(),
        );
        Metrics {
            inner: Arc::new(Inner { registry, ..inner }),
        }
    }

    /// The Prometheus text exposition (format 0.0.4, [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; a label set encoder that did
        // would leave a truncated scrape, which Prometheus rejects loudly.
        let _ =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry);
        out
    }

    /// Records the expiry of the proxy's identity certificate (its
    /// `notAfter`); called whenever a credential is loaded or rotated.
    pub fn set_identity_cert_expiration(&self, not_after: SystemTime) {
        let secs = match not_after.duration_since(SystemTime::UNIX_EPOCH) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        };
        self.inner.cert_expiry.get_or_create(&Vec::new()).set(secs);
    }

    /// Records what protocol detection decided on a `direction` port.
    pub fn detected(&self, direction: Direction, protocol: &Protocol) {
        let (protocol, reason) = match protocol {
            Protocol::Http1 { .. } => ("http1", "detected"),
            Protocol::Http2 => ("h2", "detected"),
            Protocol::Tls(_) => ("tls", "detected"),
            Protocol::Opaque(why) => (
                "opaque",
                match why {
                    OpaqueReason::Unrecognized(_) => "unrecognized",
                    OpaqueReason::PeekLimit => "peek_limit",
                    OpaqueReason::Timeout => "timeout",
                    OpaqueReason::ClientClosed => "client_closed",
                    OpaqueReason::ServerFirst => "server_first",
                    OpaqueReason::Configured => "configured",
                    _ => "other",
                },
            ),
            _ => ("other", "other"),
        };
        let labels = DetectLabels {
            direction,
            protocol,
            reason,
        };
        self.inner.detect.get_or_create(&labels).inc();
    }

    /// Opens the series of an accepted connection: counts it open now and
    /// closed when the returned [`TcpConn`] (or the [`Counted`] stream it
    /// becomes) is dropped. `tls` is the accepted connection's status:
    /// inbound, the client's (its identity becomes `client_id`); outbound,
    /// the status the series should describe (an identity becomes
    /// `server_id`).
    pub fn tcp_open(
        &self,
        direction: Direction,
        target: Option<SocketAddr>,
        tls: &TlsStatus,
    ) -> TcpConn {
        let labels = TcpLabels {
            direction,
            target_addr: target.map(|t| Arc::from(t.to_string())),
            peer: PeerLabels::new(tls),
        };
        TcpConn::open(self, labels)
    }

    /// An accepted connection whose TLS status is not known yet (inbound,
    /// before its handshake): label it with [`TcpConn::set_tls`]; it counts
    /// as opened then, with the bytes it moved meanwhile. One never
    /// labelled closes as `not_provided_by_remote`.
    pub fn tcp_accept(&self, direction: Direction, target: Option<SocketAddr>) -> TcpConn {
        let labels = TcpLabels {
            direction,
            target_addr: target.map(|t| Arc::from(t.to_string())),
            peer: PeerLabels::new(&TlsStatus::Plain(crate::meta::NoTls::NotProvidedByRemote)),
        };
        TcpConn::accept(self, labels)
    }

    /// The per-connection recorder of an HTTP connection to `authority`.
    pub(crate) fn http_conn(
        &self,
        direction: Direction,
        authority: Arc<str>,
        client: &TlsStatus,
    ) -> HttpConnMetrics {
        HttpConnMetrics::new(self.clone(), direction, authority, PeerLabels::new(client))
    }

    /// Counts an endpoint of `backend` ejected by failure accrual.
    pub(crate) fn endpoint_ejected(&self, authority: &Arc<str>, backend: &str) {
        let labels = BackendLabels {
            authority: authority.clone(),
            backend: Arc::from(backend),
        };
        self.with(
            &self.inner.ejections,
            &labels,
            |s| s.backends.insert(labels.clone()),
            |c| {
                c.inc();
            },
        );
    }

    /// Removes every series of destination `authority` (its HTTP series
    /// always; its TCP series when none of its connections is open), once
    /// the proxy has forgotten the destination. Counters that disappear are
    /// what Prometheus expects of a target that stopped reporting a series:
    /// `rate()` over them ends, it does not go negative.
    pub fn forget_authority(&self, authority: &str) {
        let inner = &*self.inner;
        let mut index = inner.index.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(mut series) = index.remove(authority) else {
            return;
        };
        for l in &series.requests {
            inner.requests.remove(l);
            inner.latency.remove(l);
        }
        for l in &series.responses {
            inner.responses.remove(l);
        }
        for l in &series.routes {
            inner.retries.remove(l);
            inner.budget_exhausted.remove(l);
        }
        for l in &series.backends {
            inner.ejections.remove(l);
        }
        // A TCP series with connections still open stays, with its index
        // entry: removing it would lose the close that is coming.
        series.tcp.retain(|l| {
            let open = inner
                .tcp_open_connections
                .get(l)
                .is_some_and(|g| g.get() > 0);
            if !open {
                inner.tcp_open.remove(l);
                inner.tcp_close.remove(l);
                inner.tcp_open_connections.remove(l);
                inner.tcp_read.remove(l);
                inner.tcp_write.remove(l);
            }
            open
        });
        if !series.tcp.is_empty() {
            index.insert(Arc::from(authority), series);
        }
    }

    /// Applies `f` to the metric of `labels` in `family`, creating it (and
    /// indexing its label set under its destination with `index`) if it is
    /// new. The common case is one read-locked hash look-up.
    fn with<S, M, C>(
        &self,
        family: &Family<S, M, C>,
        labels: &S,
        index: impl FnOnce(&mut Series) -> bool,
        f: impl FnOnce(&M),
    ) where
        S: Clone + Hash + Eq + Authority,
        C: MetricConstructor<M>,
    {
        if let Some(m) = family.get(labels) {
            f(&m);
            return;
        }
        if let Some(authority) = labels.authority() {
            let mut idx = self
                .inner
                .index
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            index(idx.entry(authority.clone()).or_default());
        }
        f(&family.get_or_create(labels));
    }

    /// The metric of `labels`, owned (for handles kept per connection).
    fn owned<S, M, C>(
        &self,
        family: &Family<S, M, C>,
        labels: &S,
        index: impl FnOnce(&mut Series) -> bool,
    ) -> M
    where
        S: Clone + Hash + Eq + Authority,
        M: Clone,
        C: MetricConstructor<M>,
    {
        let mut out = None;
        self.with(family, labels, index, |m| out = Some(m.clone()));
        out.unwrap_or_else(|| family.get_or_create_owned(labels))
    }
}

/// The label set of a series without labels.
type NoLabels = Vec<(&'static str, &'static str)>;

/// The destination a label set belongs to, for forgetting.
trait Authority {
    fn authority(&self) -> Option<&Arc<str>>;
}

impl Authority for RequestLabels {
    fn authority(&self) -> Option<&Arc<str>> {
        Some(&self.authority)
    }
}

impl Authority for ResponseLabels {
    fn authority(&self) -> Option<&Arc<str>> {
        Some(&self.request.authority)
    }
}

impl Authority for RouteLabels {
    fn authority(&self) -> Option<&Arc<str>> {
        Some(&self.authority)
    }
}

impl Authority for BackendLabels {
    fn authority(&self) -> Option<&Arc<str>> {
        Some(&self.authority)
    }
}

impl Authority for TcpLabels {
    fn authority(&self) -> Option<&Arc<str>> {
        self.target_addr.as_ref()
    }
}

#[cfg(test)]
mod tests;
