//! One request's path: check → route → (pick → send)×attempts → answer.
//!
//! The loop is driven by the core's [`RetryState`]: it says when to send an
//! attempt and until when to wait for it, when to back off, and when to
//! stop; this module sends, waits with `tokio::time`, and reports what
//! happened. Each attempt picks its endpoint afresh (a retry should not go
//! back to the endpoint that just failed it, and the balancer knows best),
//! and each pick is completed with the attempt's outcome and latency to the
//! response head, so the balancer's RTT estimate and failure accrual learn
//! from real traffic.

use std::sync::Arc;

use http::{Request, Response};
use hyper::body::{Body, Incoming};
use needle_core::balance::Completion;
use needle_core::retry::{AttemptOutcome, Finish, RequestBody, RequestMeta, Step};
use tracing::debug;

use super::body::{ProxyBody, ReplayBody, boxed};
use super::client::SendError;
use super::destination::{Destination, InFlight};
use super::errors::ProxyError;
use super::headers::{self, Head};
use super::{HttpVersion, ProxyShared, upgrade};
use crate::metrics::Observed;
use crate::net::Network;

/// Answers one client request; never fails (errors become responses).
/// What labels its metrics (route, endpoint, retries) goes in `observed`.
pub(crate) async fn handle<N: Network>(
    proxy: Arc<ProxyShared>,
    destination: Arc<Destination<N>>,
    version: HttpVersion,
    client_id: Option<http::HeaderValue>,
    mut req: Request<Incoming>,
    observed: &mut Observed,
) -> Response<ProxyBody> {
    let grpc = headers::is_grpc(req.headers());
    // An HTTP/1 request that crossed the mesh as HTTP/2 goes on as HTTP/1.1;
    // the marker is removed whoever sent it, and believed only over mTLS.
    let version = match headers::take_orig_proto(req.headers_mut()) {
        true if client_id.is_some() => HttpVersion::Http1,
        _ => version,
    };
    req.headers_mut().remove(headers::CLIENT_ID);
    if let Some(id) = client_id {
        req.headers_mut().insert(headers::CLIENT_ID, id);
    }
    if let Err(e) = headers::check_request(&req, &proxy.config) {
        return e.response(grpc);
    }
    if version == HttpVersion::Http2 && req.method() == http::Method::CONNECT {
        // An HTTP/2 CONNECT is a stream, not a connection to hand over;
        // tunnelling it is not supported, whatever `allow_connect` says.
        return ProxyError::ConnectNotAllowed.response(grpc);
    }
    let now = proxy.now();
    let routed = match destination.route(&Head(&req), now) {
        Ok(r) => r,
        Err(e) => return e.response(grpc),
    };
    observed.route = Some(routed.route.clone());
    let upgrade = headers::is_upgrade(&req) || req.method() == http::Method::CONNECT;
    let keep_upgrade = upgrade && req.method() != http::Method::CONNECT;
    headers::strip_hop_by_hop(req.headers_mut(), keep_upgrade);
    if upgrade {
        return upgrade::forward(
            &proxy,
            &destination,
            &routed.backend,
            routed.timeouts,
            req,
            observed,
        )
        .await;
    }

    let (parts, body) = req.into_parts();
    let body = ReplayBody::new(body, routed.retry.replay_buffer);
    let meta = RequestMeta {
        method: parts.method.as_str(),
        body: if body.is_end_stream() {
            RequestBody::Empty
        } else {
            match body.size_hint().exact() {
                Some(n) => RequestBody::Sized(n),
                None => RequestBody::Streaming,
            }
        },
    };
    let policy = &routed.retry;
    let mut state = destination.start_retries(now, policy, routed.timeouts, &meta);
    // The last attempt's answer: what the client gets if retries stop.
    let mut last: Option<Result<Response<ProxyBody>, ProxyError>> = None;
    loop {
        let step = match state.step() {
            Step::Attempt { deadline, number } => {
                let attempt = {
                    let mut r = Request::new(boxed(body.replay()));
                    *r.method_mut() = parts.method.clone();
                    *r.uri_mut() = parts.uri.clone();
                    *r.headers_mut() = parts.headers.clone();
                    r
                };
                let inflight = match destination.pick(&routed.backend, proxy.now()) {
                    Ok(f) => f,
                    // No endpoint to try: fail fast. A retry that finds none
                    // answers with what the previous attempt got, which says
                    // more than "no endpoints" about the request itself.
                    Err(e) if number == 1 => return e.response(grpc),
                    Err(_) => break,
                };
                // The previous attempt's answer is dropped only now that
                // another attempt replaces it.
                drop(last.take());
                observed.endpoint = Some(inflight.client.peer().clone());
                if number > 1 {
                    observed.retries += 1;
                }
                debug!(attempt = number, endpoint = %inflight.client.addr(), "forwarding");
                // An attempt cut short by its own per-try timeout (rather
                // than by the request's deadline) is the endpoint's failure.
                let per_try = deadline.is_some() && deadline != state.deadline();
                let (outcome, answer) =
                    attempt_once(&proxy, version, inflight, attempt, deadline, per_try).await;
                last = Some(answer);
                if body.overflowed() {
                    state.replay_buffer_overflowed();
                }
                match outcome {
                    Some(outcome) => {
                        destination.on_outcome(&mut state, proxy.now(), outcome, policy)
                    }
                    // The attempt's deadline passed.
                    None => {
                        let now = proxy.now();
                        match destination.on_timeout(&mut state, now, policy) {
                            // The timer fired a hair early for the core's
                            // clock: report the per-try timeout outright
                            // rather than send the same attempt again.
                            Step::Attempt { number: n, .. } if n == number => destination
                                .on_outcome(&mut state, now, AttemptOutcome::PerTryTimeout, policy),
                            step => step,
                        }
                    }
                }
            }
            Step::Backoff { until } => {
                tokio::time::sleep_until(proxy.tokio_instant(until)).await;
                destination.on_timeout(&mut state, proxy.now(), policy)
            }
            Step::Finish(Finish::DeadlineExceeded) => return ProxyError::Timeout.response(grpc),
            Step::Finish(Finish::BudgetExhausted) => {
                observed.budget_exhausted = true;
                break;
            }
            Step::Finish(_) => break,
            _ => return ProxyError::Upstream.response(grpc),
        };
        debug!(?step, "retry state");
    }
    match last {
        Some(Ok(res)) => res,
        Some(Err(e)) => e.response(grpc),
        None => ProxyError::Upstream.response(grpc),
    }
}

/// Sends one attempt and waits for its response head until `deadline`.
/// Returns the outcome for the retry policy (`None`: the deadline passed)
/// and what the client would get if this is the last attempt.
async fn attempt_once<N: Network>(
    proxy: &ProxyShared,
    version: HttpVersion,
    inflight: InFlight<N>,
    req: Request<ProxyBody>,
    deadline: Option<needle_core::time::Instant>,
    per_try: bool,
) -> (
    Option<AttemptOutcome>,
    Result<Response<ProxyBody>, ProxyError>,
) {
    let client = inflight.client.clone();
    let send = client.send(version, req, true);
    let result = match deadline {
        Some(d) => match tokio::time::timeout_at(proxy.tokio_instant(d), send).await {
            Ok(r) => r,
            Err(_) => {
                // A per-try timeout is a failure: it lowers the endpoint's
                // success rate in the balancer and counts towards failure
                // accrual; the request's own deadline says nothing about
                // the endpoint (it may have started late).
                let completion = if per_try {
                    Completion::Failure
                } else {
                    Completion::Cancelled
                };
                inflight.complete(proxy.now(), completion);
                return (None, Err(ProxyError::Timeout));
            }
        },
        None => send.await,
    };
    let now = proxy.now();
    match result {
        Ok(mut res) => {
            let status = res.status().as_u16();
            let grpc_status = headers::grpc_status(res.headers());
            let failed = status >= 500 || grpc_status.is_some_and(|g| g == 14);
            inflight.complete(
                now,
                if failed {
                    Completion::Failure
                } else {
                    Completion::Success
                },
            );
            headers::strip_hop_by_hop(res.headers_mut(), false);
            (
                Some(AttemptOutcome::Response {
                    status,
                    grpc_status,
                }),
                Ok(res),
            )
        }
        Err(e) => {
            debug!(error = %e, "attempt failed");
            inflight.complete(now, Completion::Failure);
            let (outcome, error) = match &e {
                SendError::Connect { .. } | SendError::Handshake { .. } | SendError::Unsent(_) => {
                    (AttemptOutcome::ConnectFailed, ProxyError::ConnectFailed)
                }
                SendError::Tls { .. } => (AttemptOutcome::ConnectFailed, ProxyError::MtlsFailed),
                SendError::Refused(_) => (AttemptOutcome::RefusedStream, ProxyError::Upstream),
                SendError::Failed(_) => (AttemptOutcome::Error, ProxyError::Upstream),
            };
            debug_assert_eq!(outcome.unprocessed(), e.unprocessed());
            (Some(outcome), Err(error))
        }
    }
}
