//! HTTP requests: `request_total`, `response_latency_ms`, `response_total`,
//! and the retry counters.
//!
//! One series set per request *the client made*, whatever the retries
//! underneath (those are counted by `retry_total`): the client's success
//! rate is what an alert must see, including Needle's own answers (a 503
//! when every endpoint is ejected is an outage even though no endpoint was
//! asked). The request and its latency (to the response head, Linkerd's
//! time to first byte) are recorded when the response head is handed back;
//! the response when its stream ends, because a gRPC status travels in the
//! trailers.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use hyper::body::{Body, Frame, SizeHint};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use super::{Metrics, PeerLabels, RequestLabels, ResponseLabels, RouteLabels};
use crate::http::{BoxError, ProxyBody};
use crate::meta::Direction;

/// What the request path learnt that labels the request: filled in by
/// `forward::handle` as it goes.
#[derive(Debug, Default)]
pub(crate) struct Observed {
    /// The matched route's label.
    pub(crate) route: Option<Arc<str>>,
    /// The last attempt's endpoint (outbound labels).
    pub(crate) endpoint: Option<PeerLabels>,
    /// Attempts sent after the first.
    pub(crate) retries: u32,
    /// The retry state stopped because the budget was spent.
    pub(crate) budget_exhausted: bool,
}

/// How many label sets a connection keeps resolved: a connection's requests
/// normally share one or two (its route, its endpoints' TLS status), so a
/// few cover it; past that the oldest is dropped and looked up again later.
const RESOLVED_PER_CONNECTION: usize = 8;

/// The recorder of one HTTP client connection: the labels that do not
/// change between its requests, built once, and the series its requests
/// used, resolved once. A request whose labels match a resolved set costs
/// no hash look-up: a short scan under an uncontended lock, two atomic
/// adds and a histogram observation.
#[derive(Debug)]
pub(crate) struct HttpConnMetrics {
    metrics: Metrics,
    direction: Direction,
    authority: Arc<str>,
    client: PeerLabels,
    /// Most recently used first.
    resolved: Mutex<Vec<Arc<Resolved>>>,
}

/// One request label set's series.
#[derive(Debug)]
struct Resolved {
    labels: RequestLabels,
    requests: Counter,
    latency: Histogram,
    /// Response counters by status, gRPC status and breakage: few per
    /// label set in practice, and bounded by the statuses in use.
    responses: Mutex<Vec<(ResponseKey, Counter)>>,
}

type ResponseKey = (u16, Option<u32>, bool);

impl HttpConnMetrics {
    pub(super) fn new(
        metrics: Metrics,
        direction: Direction,
        authority: Arc<str>,
        client: PeerLabels,
    ) -> Self {
        HttpConnMetrics {
            metrics,
            direction,
            authority,
            client,
            resolved: Mutex::new(Vec::new()),
        }
    }

    /// The series of requests labelled `peer` and `route` on this
    /// connection, resolved on first use.
    fn resolve(&self, peer: Option<&PeerLabels>, route: Option<&Arc<str>>) -> Arc<Resolved> {
        let mut resolved = self.resolved.lock().unwrap_or_else(PoisonError::into_inner);
        let found = resolved
            .iter()
            .position(|r| r.labels.peer.as_ref() == peer && r.labels.route.as_ref() == route);
        if let Some(i) = found {
            if i > 0 {
                let hit = resolved.remove(i);
                resolved.insert(0, hit);
            }
            return resolved[0].clone();
        }
        let labels = RequestLabels {
            direction: self.direction,
            authority: self.authority.clone(),
            peer: peer.cloned(),
            route: route.cloned(),
        };
        let m = &self.metrics;
        let index = |s: &mut super::Series| s.requests.insert(labels.clone());
        let requests = m.owned(&m.inner.requests, &labels, index);
        let latency = m.owned(&m.inner.latency, &labels, |_| false);
        let entry = Arc::new(Resolved {
            labels,
            requests,
            latency,
            responses: Mutex::new(Vec::new()),
        });
        resolved.truncate(RESOLVED_PER_CONNECTION - 1);
        resolved.insert(0, entry.clone());
        entry
    }

    /// Records a request answered with `res` (its head), `elapsed_ms` after
    /// it arrived, and returns the response with a body that records the
    /// response when its stream ends.
    pub(crate) fn record(
        &self,
        elapsed_ms: f64,
        observed: Observed,
        res: Response<ProxyBody>,
    ) -> Response<ProxyBody> {
        // Inbound: the calling side; outbound: the endpoint that answered.
        let peer = match self.direction {
            Direction::Inbound => Some(&self.client),
            Direction::Outbound => observed.endpoint.as_ref(),
        };
        let resolved = self.resolve(peer, observed.route.as_ref());
        resolved.requests.inc();
        resolved.latency.observe(elapsed_ms);
        if observed.retries > 0 || observed.budget_exhausted {
            self.record_retries(&observed);
        }
        let pending = PendingResponse {
            metrics: self.metrics.clone(),
            resolved: Some(resolved),
            key: (
                res.status().as_u16(),
                crate::http::grpc_status_of(res.headers()).map(grpc_label),
                false,
            ),
        };
        res.map(|body| http_body_util::BodyExt::boxed_unsync(RecordedBody { body, pending }))
    }

    /// Retries are the exception: looked up in their families each time.
    fn record_retries(&self, observed: &Observed) {
        let Some(route) = &observed.route else {
            return;
        };
        let m = &self.metrics;
        let labels = RouteLabels {
            direction: self.direction,
            authority: self.authority.clone(),
            route: route.clone(),
        };
        if observed.retries > 0 {
            let index = |s: &mut super::Series| s.routes.insert(labels.clone());
            m.with(&m.inner.retries, &labels, index, |c| {
                c.inc_by(u64::from(observed.retries));
            });
        }
        if observed.budget_exhausted {
            let index = |s: &mut super::Series| s.routes.insert(labels.clone());
            m.with(&m.inner.budget_exhausted, &labels, index, |c| {
                c.inc();
            });
        }
    }
}

/// The `grpc_status` label of a status code: codes gRPC does not define
/// are `UNKNOWN` (2), as gRPC clients read them, so an endpoint cannot mint
/// new series by inventing codes.
pub(crate) fn grpc_label(code: u32) -> u32 {
    if code <= 16 { code } else { 2 }
}

/// A response not recorded yet; records itself at the latest when dropped.
struct PendingResponse {
    metrics: Metrics,
    resolved: Option<Arc<Resolved>>,
    /// Status, gRPC status, whether the stream broke.
    key: ResponseKey,
}

impl PendingResponse {
    fn finish(&mut self) {
        let Some(resolved) = self.resolved.take() else {
            return;
        };
        let mut responses = resolved
            .responses
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some((_, counter)) = responses.iter().find(|(k, _)| *k == self.key) {
            counter.inc();
            return;
        }
        let (status_code, grpc_status, broken) = self.key;
        let labels = ResponseLabels {
            request: resolved.labels.clone(),
            status_code,
            grpc_status,
            broken,
        };
        let m = &self.metrics;
        let index = |s: &mut super::Series| s.responses.insert(labels.clone());
        let counter = m.owned(&m.inner.responses, &labels, index);
        counter.inc();
        responses.push((self.key, counter));
    }
}

impl Drop for PendingResponse {
    /// A body dropped before its end (the client went away, or hyper had
    /// no need to poll an empty body) is recorded as its head said.
    fn drop(&mut self) {
        self.finish();
    }
}

/// The response body, watching for the end of the stream and its trailers.
struct RecordedBody {
    body: ProxyBody,
    pending: PendingResponse,
}

impl Body for RecordedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(grpc) = frame.trailers_ref().and_then(crate::http::grpc_status_of) {
                    this.pending.key.1 = Some(grpc_label(grpc));
                }
                if this.body.is_end_stream() {
                    this.pending.finish();
                }
            }
            Poll::Ready(Some(Err(_))) => {
                // A stream that broke after its head cannot be a success,
                // whatever the head said.
                this.pending.key.2 = true;
                this.pending.finish();
            }
            Poll::Ready(None) => this.pending.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
