//! Which failed attempts may be retried, and which requests may be retried
//! at all.

use crate::backoff::Backoff;
use crate::time::Duration;

/// How one attempt ended, as the io layer saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// A response arrived. `grpc_status` is the `grpc-status` of a gRPC
    /// response (from trailers, or the headers of a trailers-only response).
    Response {
        /// The HTTP status code.
        status: u16,
        /// The gRPC status code, for gRPC responses.
        grpc_status: Option<u32>,
    },
    /// No connection to the endpoint could be made: the request never left.
    ConnectFailed,
    /// The HTTP/2 server refused the stream (`REFUSED_STREAM`): by RFC 9113
    /// §8.7 it did no processing, so the request never took effect.
    RefusedStream,
    /// The attempt's per-try timeout expired before a response.
    PerTryTimeout,
    /// Any other error after the request may have reached the endpoint
    /// (reset, protocol error). Never retried: we cannot tell whether it
    /// took effect, and the policy has no way to say it is safe.
    Error,
}

impl AttemptOutcome {
    /// Whether the endpoint provably never processed the request, which
    /// makes a retry safe whatever the method.
    pub fn unprocessed(&self) -> bool {
        matches!(
            self,
            AttemptOutcome::ConnectFailed | AttemptOutcome::RefusedStream
        )
    }
}

/// An inclusive range of HTTP status codes, such as `502..=504`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusRange {
    /// First code of the range.
    pub first: u16,
    /// Last code of the range (inclusive).
    pub last: u16,
}

impl StatusRange {
    /// A single code.
    pub const fn one(code: u16) -> Self {
        StatusRange {
            first: code,
            last: code,
        }
    }

    /// Whether `code` falls in the range.
    pub fn contains(&self, code: u16) -> bool {
        (self.first..=self.last).contains(&code)
    }
}

/// The gRPC status `UNAVAILABLE`: the one code gRPC itself calls safe to
/// retry (the service is transiently unable to handle the call).
pub const GRPC_UNAVAILABLE: u32 = 14;

/// Which attempt outcomes are worth retrying.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryOn {
    /// HTTP statuses that are retried.
    pub http_statuses: Vec<StatusRange>,
    /// gRPC status codes that are retried.
    pub grpc_statuses: Vec<u32>,
    /// Retry when no connection could be made.
    pub connect_failure: bool,
    /// Retry when the HTTP/2 server refused the stream.
    pub refused_stream: bool,
    /// Retry when an attempt hit its per-try timeout.
    pub per_try_timeout: bool,
}

impl Default for RetryOn {
    /// 502, 503, 504 (the gateway statuses: the failure was on the way to, or
    /// in front of, the application), gRPC `UNAVAILABLE`, connection
    /// failures, refused streams and per-try timeouts. A plain 500 is not
    /// retried by default: it usually means the application tried and
    /// failed, and would fail again.
    fn default() -> Self {
        RetryOn {
            http_statuses: vec![StatusRange {
                first: 502,
                last: 504,
            }],
            grpc_statuses: vec![GRPC_UNAVAILABLE],
            connect_failure: true,
            refused_stream: true,
            per_try_timeout: true,
        }
    }
}

impl RetryOn {
    /// Whether `outcome` is one this policy retries.
    pub fn matches(&self, outcome: &AttemptOutcome) -> bool {
        match *outcome {
            AttemptOutcome::Response {
                status,
                grpc_status,
            } => {
                self.http_statuses.iter().any(|r| r.contains(status))
                    || grpc_status.is_some_and(|g| self.grpc_statuses.contains(&g))
            }
            AttemptOutcome::ConnectFailed => self.connect_failure,
            AttemptOutcome::RefusedStream => self.refused_stream,
            AttemptOutcome::PerTryTimeout => self.per_try_timeout,
            AttemptOutcome::Error => false,
        }
    }
}

/// Which requests may be sent again after they may have reached the
/// endpoint. (Requests that provably did not, see
/// [`AttemptOutcome::unprocessed`], may always be sent again.)
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum RetryableRequests {
    /// The idempotent methods of RFC 9110 §9.2.2: `GET`, `HEAD`, `OPTIONS`,
    /// `TRACE`, `PUT`, `DELETE`. Repeating them has the effect of doing them
    /// once, which is what makes a retry invisible to the application.
    #[default]
    IdempotentMethods,
    /// Exactly these methods (case-sensitive, as HTTP methods are).
    Methods(Vec<String>),
    /// Any request: the operator vouches for the routes' idempotency (gRPC
    /// calls are all `POST`; a gRPC retry policy is per route).
    Any,
}

impl RetryableRequests {
    /// Whether a request with this method may be retried after it may have
    /// been processed.
    pub fn allows(&self, method: &str) -> bool {
        match self {
            RetryableRequests::IdempotentMethods => matches!(
                method,
                "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
            ),
            RetryableRequests::Methods(m) => m.iter().any(|x| x == method),
            RetryableRequests::Any => true,
        }
    }
}

/// The size of a request body, as far as is known when the request starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestBody {
    /// No body.
    Empty,
    /// A body of known length (`content-length`).
    Sized(u64),
    /// A body of unknown length, buffered as it streams; the io layer calls
    /// [`RetryState::replay_buffer_overflowed`](super::RetryState::replay_buffer_overflowed)
    /// if it outgrows the replay buffer.
    Streaming,
}

/// What the retry machinery needs to know about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestMeta<'a> {
    /// The HTTP method.
    pub method: &'a str,
    /// The body's size.
    pub body: RequestBody,
}

/// A route's retry policy.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included (default 3). 1 disables retries.
    pub max_attempts: u32,
    /// Which outcomes are retried.
    pub retry_on: RetryOn,
    /// Which requests may be retried after they may have been processed.
    pub requests: RetryableRequests,
    /// Bytes of request body kept for replay (default 64 KiB): a body that
    /// does not fit cannot be sent again, so its request is not retried.
    pub replay_buffer: usize,
    /// Delay before each retry (default 25 ms doubling to 1 s, jitter ½).
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            retry_on: RetryOn::default(),
            requests: RetryableRequests::IdempotentMethods,
            replay_buffer: 64 * 1024,
            backoff: Backoff::new(Duration::from_millis(25), Duration::from_secs(1)),
        }
    }
}

impl RetryPolicy {
    /// A policy for gRPC routes: retries `UNAVAILABLE`, connection failures
    /// and refused streams for any call on the route.
    pub fn grpc() -> Self {
        RetryPolicy {
            retry_on: RetryOn {
                http_statuses: Vec::new(),
                ..RetryOn::default()
            },
            requests: RetryableRequests::Any,
            ..RetryPolicy::default()
        }
    }

    /// A policy that never retries.
    pub fn never() -> Self {
        RetryPolicy {
            max_attempts: 1,
            ..RetryPolicy::default()
        }
    }
}
