//! Failures, and the answers a client gets for them.
//!
//! Nothing Needle accepted is dropped silently: every request that cannot
//! be forwarded gets a response whose status says what class of problem it
//! was and whose `needle-error` header names Needle's reason, so that a
//! client (or an operator reading its logs) can tell the proxy's answer from
//! the application's. gRPC clients read statuses from `grpc-status`, not
//! from HTTP, so a gRPC request gets a *trailers-only* response (HTTP 200,
//! `grpc-status`, `grpc-message`, end of stream) with the gRPC code that
//! means the same thing.

use http::header::{CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use super::body::{ProxyBody, empty, full};

/// A boxed error, the error type of proxied bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response header naming why Needle answered instead of the endpoint.
pub const NEEDLE_ERROR: HeaderName = HeaderName::from_static("needle-error");

/// Why serving a client connection ended in error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpError {
    /// The connection failed at the HTTP layer (a malformed request, a
    /// protocol violation, an I/O error, a header read timeout).
    #[error("serving the client connection: {0}")]
    Serve(#[source] hyper::Error),
}

/// Why one request was answered by Needle rather than by an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProxyError {
    /// No route of the destination matches the request.
    #[error("no route matches the request")]
    NoRoute,
    /// The matched rule's split has no backend with a non-zero weight, or
    /// names a backend discovery does not know.
    #[error("the route has no backend")]
    NoBackend,
    /// The backend has no endpoint with a non-zero weight.
    #[error("the backend has no endpoints")]
    NoEndpoints,
    /// Every endpoint of the backend is ejected by failure accrual.
    #[error("every endpoint is ejected by failure accrual")]
    AllEjected,
    /// No connection to the endpoint could be made.
    #[error("connecting to the endpoint failed")]
    ConnectFailed,
    /// Mutual TLS with a meshed endpoint's proxy failed: it did not prove
    /// the identity discovery promised, or does not trust ours.
    #[error("mutual TLS with the endpoint's proxy failed")]
    MtlsFailed,
    /// The endpoint's connection failed after the request may have been
    /// sent (reset, protocol error, closed mid-response).
    #[error("the endpoint's connection failed")]
    Upstream,
    /// The request's deadline, or the last attempt's per-try timeout,
    /// passed before a response head arrived.
    #[error("the request timed out")]
    Timeout,
    /// `CONNECT` is not allowed by configuration.
    #[error("CONNECT is not allowed")]
    ConnectNotAllowed,
    /// The request's header fields exceed the configured limits.
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// The request target exceeds the configured limit.
    #[error("request target too long")]
    UriTooLong,
    /// An HTTP/1 request whose framing is ambiguous (both `Content-Length`
    /// and `Transfer-Encoding`, obs-fold, bare LF...): refused before any
    /// parser saw it, so it cannot be smuggled (`needle_core::http1`).
    #[error("ambiguous or malformed request framing")]
    InvalidFraming,
}

impl ProxyError {
    /// The HTTP status for plain HTTP clients.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::NoBackend => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::NoEndpoints | ProxyError::AllEjected => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed | ProxyError::MtlsFailed | ProxyError::Upstream => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::ConnectNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::InvalidFraming => StatusCode::BAD_REQUEST,
        }
    }

    /// The `needle-error` value: short, stable, greppable.
    pub fn reason(self) -> &'static str {
        match self {
            ProxyError::NoRoute => "no-route",
            ProxyError::NoBackend => "no-backend",
            ProxyError::NoEndpoints => "no-endpoints",
            ProxyError::AllEjected => "endpoints-ejected",
            ProxyError::ConnectFailed => "connect-failed",
            ProxyError::MtlsFailed => "mtls-failed",
            ProxyError::Upstream => "upstream-error",
            ProxyError::Timeout => "timeout",
            ProxyError::ConnectNotAllowed => "connect-not-allowed",
            ProxyError::HeadersTooLarge => "headers-too-large",
            ProxyError::UriTooLong => "uri-too-long",
            ProxyError::InvalidFraming => "invalid-framing",
        }
    }

    /// The gRPC status code with the same meaning (gRPC's own HTTP-to-gRPC
    /// mapping where it has one).
    pub fn grpc_status(self) -> u32 {
        match self {
            // UNIMPLEMENTED: nothing serves this method here.
            ProxyError::NoRoute => 12,
            // INTERNAL: a configuration error, not a transient one.
            ProxyError::NoBackend => 13,
            // UNAVAILABLE: transient, the call may be retried.
            ProxyError::NoEndpoints
            | ProxyError::AllEjected
            | ProxyError::ConnectFailed
            | ProxyError::MtlsFailed
            | ProxyError::Upstream => 14,
            // DEADLINE_EXCEEDED.
            ProxyError::Timeout => 4,
            // INVALID_ARGUMENT / RESOURCE_EXHAUSTED for refused or oversized calls.
            ProxyError::ConnectNotAllowed | ProxyError::InvalidFraming => 3,
            ProxyError::HeadersTooLarge | ProxyError::UriTooLong => 8,
        }
    }

    /// The response a client gets; trailers-only gRPC for gRPC requests.
    pub fn response(self, grpc: bool) -> Response<ProxyBody> {
        let reason = HeaderValue::from_static(self.reason());
        if grpc {
            let mut res = Response::new(empty());
            let h = res.headers_mut();
            h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
            h.insert("grpc-status", HeaderValue::from(self.grpc_status()));
            h.insert("grpc-message", reason.clone());
            h.insert(NEEDLE_ERROR, reason);
            return res;
        }
        let mut res = Response::new(full(format!("{self}\n")));
        *res.status_mut() = self.status();
        let h = res.headers_mut();
        h.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        h.insert(NEEDLE_ERROR, reason);
        res
    }
}
