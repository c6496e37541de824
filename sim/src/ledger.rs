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
    pub method: &'static str,
    /// When it was sent.
    pub sent_at: Duration,
    /// What came back.
    pub answer: Answer,
}

impl RequestRecord {
    /// Whether a server answered it with a 2xx.
    pub fn succeeded(&self) -> bool {
        matches!(self.answer, Answer::Response { status, echoed: Some(e), .. }
            if (200..300).contains(&status) && e == self.id)
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

    /// The sessions so far.
    pub fn sessions(&self) -> Vec<SessionRecord> {
        lock(&self.sessions).clone()
    }
}
