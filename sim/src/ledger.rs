//! What the hosts of a world record for the oracles: every request a client
//! sent and the answer it got, every attempt that reached a server, every
//! opaque session. Shared by the hosts of one run (one thread), appended in
//! simulated order.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::trace::Trace;

/// How a request travelled from the client to the sidecar.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1, one connection per worker, keep-alive.
    H1,
    /// HTTP/2 with prior knowledge, one connection per worker.
    H2,
    /// gRPC (unary calls) over HTTP/2 with prior knowledge.
    Grpc,
}

/// What the client got for a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    /// A response head and its whole body.
    Response {
        /// Simulated time the body ended.
        at: Duration,
        /// HTTP status.
        status: u16,
        /// Needle's `needle-error` header, when the answer is Needle's own.
        needle_error: Option<String>,
        /// The request id the server echoed (`x-sim-id`), if a server answered.
        echoed: Option<u64>,
        /// Which server answered.
        server: Option<String>,
        /// The `grpc-status` of a gRPC answer: from the trailers, or from
        /// the head of a trailers-only answer (how errors come).
        grpc_status: Option<u32>,
    },
    /// The connection failed before a whole answer arrived.
    Failed {
        /// When.
        at: Duration,
        /// Why.
        error: String,
    },
    /// Nothing arrived before the client's deadline (the proxy's request
    /// timeout plus slack).
    Late {
        /// When the client gave up.
        at: Duration,
    },
}

/// One request a client sent.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// Unique in the run; servers echo it.
    pub id: u64,
    /// Client-side protocol.
    pub proto: Proto,
    /// `GET` (idempotent, retried) or `POST` (never retried once sent).
    /// gRPC calls are all `POST`s; see [`call`](Self::call).
    pub method: &'static str,
    /// The gRPC method called (a path such as `/sim.Items/Get`), for gRPC
    /// requests.
    pub call: Option<&'static str>,
    /// When it was sent.
    pub sent_at: Duration,
    /// What came back.
    pub answer: Answer,
}

/// The gRPC method on the route whose retry policy vouches for it
/// (`RetryPolicy::grpc()`: `UNAVAILABLE` is retried though every call is a
/// `POST`), in worlds that publish that route.
pub const GRPC_GET: &str = "/sim.Items/Get";
/// A gRPC method no route vouches for: the default policy, which never
/// sends a `POST` again once it may have been processed.
pub const GRPC_PUT: &str = "/sim.Items/Put";

impl RequestRecord {
    /// Whether a server answered it with a 2xx (and, for a gRPC call,
    /// `grpc-status` 0).
    pub fn succeeded(&self) -> bool {
        let grpc_ok = |g: Option<u32>| self.call.is_none() || g == Some(0);
        matches!(self.answer, Answer::Response { status, echoed: Some(e), grpc_status, .. }
            if (200..300).contains(&status) && e == self.id && grpc_ok(grpc_status))
    }

    /// Whether Needle may send it again after it may have been processed:
    /// an idempotent method, or a gRPC call on the route that vouches for
    /// retries ([`GRPC_GET`]).
    pub fn retry_safe(&self) -> bool {
        match self.call {
            Some(call) => call == GRPC_GET,
            None => self.method != "POST",
        }
    }
}

/// One attempt that reached a server.
#[derive(Clone, Debug)]
pub struct Arrival {
    /// When its head arrived.
    pub at: Duration,
    /// Which server (index).
    pub server: usize,
    /// The request id it carried.
    pub id: u64,
    /// Its method.
    pub method: String,
}

/// An attempt leaving a server: answered, or dropped (the sidecar reset
/// its stream or closed its connection).
#[derive(Clone, Debug)]
pub struct Departure {
    /// When it arrived.
    pub arrived: Duration,
    /// When it left; `None` when the host's software was dropped outside a
    /// simulation step (a crash).
    pub at: Option<Duration>,
    /// Which server (index).
    pub server: usize,
    /// The request id it carried.
    pub id: u64,
    /// Whether the server finished its answer (else it was cancelled).
    pub answered: bool,
}

/// Which opaque exchange a session performed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionKind {
    /// Client speaks first; the server echoes.
    Echo,
    /// The server greets first (SMTP-like); the client waits for it.
    Banner,
    /// The client says nothing past the detection timeout, then speaks.
    Silent,
}

/// One opaque connection through the sidecar.
#[derive(Clone, Debug)]
pub struct SessionRecord {
    /// Unique in the run.
    pub id: u64,
    /// What it did.
    pub kind: SessionKind,
    /// When it connected.
    pub started: Duration,
    /// When the first byte from the far side arrived (banner: the greeting).
    pub first_byte: Option<Duration>,
    /// `Ok(end)` when the whole exchange succeeded, else what went wrong.
    pub outcome: Result<Duration, String>,
}

/// Everything one run records, shared by its hosts.
#[derive(Clone, Debug, Default)]
pub struct Ledger {
    /// The ordered event log.
    pub trace: Trace,
    requests: Arc<Mutex<Vec<RequestRecord>>>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    departures: Arc<Mutex<Vec<Departure>>>,
    sessions: Arc<Mutex<Vec<SessionRecord>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Ledger {
    /// Records a request and its answer.
    pub fn request(&self, record: RequestRecord) {
        lock(&self.requests).push(record);
    }

    /// Records an attempt reaching a server.
    pub fn arrival(&self, arrival: Arrival) {
        lock(&self.arrivals).push(arrival);
    }

    /// Records an attempt leaving a server.
    pub fn departure(&self, departure: Departure) {
        lock(&self.departures).push(departure);
    }

    /// Records an opaque session.
    pub fn session(&self, record: SessionRecord) {
        lock(&self.sessions).push(record);
    }

    /// The requests so far.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.requests).clone()
    }

    /// The arrivals so far.
    pub fn arrivals(&self) -> Vec<Arrival> {
        lock(&self.arrivals).clone()
    }

    /// The departures so far.
    pub fn departures(&self) -> Vec<Departure> {
        lock(&self.departures).clone()
    }

    /// The sessions so far.
    pub fn sessions(&self) -> Vec<SessionRecord> {
        lock(&self.sessions).clone()
    }
}
