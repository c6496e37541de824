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
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Response;
use hyper::body::{Body, Frame, SizeHint};

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

/// The recorder of one HTTP client connection: the labels that do not
/// change between its requests, built once.
#[derive(Debug)]
pub(crate) struct HttpConnMetrics {
    metrics: Metrics,
    direction: Direction,
    authority: Arc<str>,
    client: PeerLabels,
}

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
        }
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
        let m = &self.metrics;
        let inner = &*m.inner;
        // Inbound: the calling side; outbound: the endpoint that answered.
        let peer = match self.direction {
            Direction::Inbound => Some(self.client.clone()),
            Direction::Outbound => observed.endpoint,
        };
        let request = RequestLabels {
            direction: self.direction,
            authority: self.authority.clone(),
            peer,
            route: observed.route,
        };
        let index = |s: &mut super::Series| s.requests.insert(request.clone());
        m.with(&inner.requests, &request, index, |c| {
            c.inc();
        });
        m.with(
            &inner.latency,
            &request,
            |_| false,
            |h| h.observe(elapsed_ms),
        );
        if let Some(route) = request
            .route
            .as_ref()
            .filter(|_| observed.retries > 0 || observed.budget_exhausted)
        {
            let labels = RouteLabels {
                direction: self.direction,
                authority: self.authority.clone(),
                route: route.clone(),
            };
            let index = |s: &mut super::Series| s.routes.insert(labels.clone());
            if observed.retries > 0 {
                m.with(&inner.retries, &labels, index, |c| {
                    c.inc_by(u64::from(observed.retries));
                });
            }
            if observed.budget_exhausted {
                let index = |s: &mut super::Series| s.routes.insert(labels.clone());
                m.with(&inner.budget_exhausted, &labels, index, |c| {
                    c.inc();
                });
            }
        }
        let labels = ResponseLabels {
            grpc_status: crate::http::grpc_status_of(res.headers()),
            status_code: res.status().as_u16(),
            broken: false,
            request,
        };
        let recorder = PendingResponse {
            metrics: m.clone(),
            labels: Some(labels),
        };
        res.map(|body| {
            http_body_util::BodyExt::boxed_unsync(RecordedBody {
                body,
                pending: recorder,
            })
        })
    }
}

/// A response not recorded yet; records itself at the latest when dropped.
struct PendingResponse {
    metrics: Metrics,
    labels: Option<ResponseLabels>,
}

impl PendingResponse {
    fn finish(&mut self, failed_midway: bool) {
        let Some(mut labels) = self.labels.take() else {
            return;
        };
        // A stream that broke after its head cannot be a success, whatever
        // the head said.
        labels.broken = failed_midway;
        let inner = &*self.metrics.inner;
        let index = |s: &mut super::Series| s.responses.insert(labels.clone());
        self.metrics.with(&inner.responses, &labels, index, |c| {
            c.inc();
        });
    }
}

impl Drop for PendingResponse {
    /// A body dropped before its end (the client went away, or hyper had
    /// no need to poll an empty body) is recorded as its head said.
    fn drop(&mut self) {
        self.finish(false);
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
                let grpc = frame.trailers_ref().and_then(crate::http::grpc_status_of);
                if let (Some(grpc), Some(labels)) = (grpc, this.pending.labels.as_mut()) {
                    labels.grpc_status = Some(grpc);
                }
                if this.body.is_end_stream() {
                    this.pending.finish(false);
                }
            }
            Poll::Ready(Some(Err(_))) => this.pending.finish(true),
            Poll::Ready(None) => this.pending.finish(false),
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
