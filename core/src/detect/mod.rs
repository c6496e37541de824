//! # Protocol detection: what does this connection speak?
//!
//! A sidecar sees connections it was never told about. Before it can balance
//! requests or terminate mTLS it has to know, from the first bytes the client
//! sends, whether they are HTTP/1.x, HTTP/2 with prior knowledge, a TLS
//! ClientHello, or something else. The [`Detector`] answers that:
//!
//! ```
//! use needle_core::detect::{Config, Detection, Detector, Protocol};
//! use needle_core::time::Instant;
//!
//! let now = Instant::ZERO;
//! let mut detector = Detector::new(Config::default(), now);
//! detector.handle_bytes(now, b"GET /index.html HT");
//! assert!(matches!(detector.poll(), Detection::NeedMore { .. }));
//! detector.handle_bytes(now, b"TP/1.1\r\nHost: x\r\n\r\n");
//! assert!(matches!(detector.poll(), Detection::Decided(Protocol::Http1 { .. })));
//! // The bytes read so far are kept so the proxy can replay them upstream.
//! assert!(detector.buffered().starts_with(b"GET /index.html"));
//! ```
//!
//! ## The rules it keeps
//!
//! - **Chunking never matters.** Each recognizer ([`http1`], [`h2`], [`tls`])
//!   looks at each byte once, in order, and decides at the first byte that
//!   proves or disproves its grammar. The answer is therefore a function of
//!   the byte stream, not of how it was split into reads.
//! - **A decision is final.** Once decided, more bytes are not taken.
//! - **Early opaque.** The recognizers can never both match (TLS starts with
//!   byte 22, which no HTTP method can; the HTTP/2 preface and an HTTP/1
//!   request line part at the version), and the connection is opaque as soon
//!   as all three have rejected it, often at the first byte.
//! - **Bounded.** At most [`Config::peek_limit`] bytes are ever taken; if that
//!   many arrive without a decision the connection is opaque. A ClientHello
//!   announcing a length that cannot fit is opaque at once.
//! - **Deadline.** If no decision is reached by [`Config::timeout`] after the
//!   detector was created, the connection is opaque: a client that stays
//!   silent is never stalled forever. The io layer calls
//!   [`Detector::handle_timeout`] at the instant [`Detector::poll_timeout`]
//!   names.
//! - **Server speaks first.** When the destination is known, the io layer
//!   dials it while detecting; if the server sends bytes before the client
//!   proved anything ([`Detector::handle_server_bytes`]), the connection is
//!   opaque at once, so MySQL, SMTP and friends see no stall.
//! - **No panics, no per-byte allocation.** The buffer grows geometrically up
//!   to the bound; a decision allocates once for what it reports.

pub mod h2;
pub mod http1;
pub mod tls;

pub use http1::{Method, Version};
pub use tls::{ClientHello, ServerName, TlsVersion};

use crate::time::{Duration, Instant};

/// How detection is bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// The most bytes the detector takes before deciding the connection is
    /// opaque. The default, 16 KiB, holds any real ClientHello (even with
    /// post-quantum key shares, about 2 KiB) and any sane request line.
    pub peek_limit: usize,
    /// How long after the connection opened detection may take. The default
    /// is 5 seconds.
    pub timeout: Duration,
}

impl Config {
    /// The smallest peek limit accepted: the HTTP/2 preface's length.
    pub const MIN_PEEK_LIMIT: usize = h2::PREFACE.len();

    /// Checks that the configuration can work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.peek_limit < Self::MIN_PEEK_LIMIT {
            return Err(ConfigError::PeekLimitTooSmall {
                peek_limit: self.peek_limit,
            });
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::ZeroTimeout);
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            peek_limit: 16 * 1024,
            timeout: Duration::from_secs(5),
        }
    }
}

/// A detection configuration that cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// Below 24 bytes not even the HTTP/2 preface fits.
    #[error("detection peek limit {peek_limit} is below the minimum of 24 bytes")]
    PeekLimitTooSmall {
        /// The limit given.
        peek_limit: usize,
    },
    /// A zero timeout would make every connection opaque.
    #[error("detection timeout must be greater than zero")]
    ZeroTimeout,
}

/// The protocol a connection was found to speak.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Protocol {
    /// An HTTP/1.0 or HTTP/1.1 request line.
    Http1 {
        /// The request's method.
        method: Method,
        /// The request's version.
        version: Version,
    },
    /// The HTTP/2 connection preface (prior knowledge).
    Http2,
    /// A TLS ClientHello.
    Tls(ClientHello),
    /// None of the above; the bytes are forwarded untouched.
    Opaque(OpaqueReason),
}

/// Why a connection is treated as opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpaqueReason {
    /// Every recognizer rejected the bytes; each says why.
    Unrecognized(Rejections),
    /// The peek limit was reached, or a ClientHello announced more bytes than
    /// it allows, before anything was proven.
    PeekLimit,
    /// The detection deadline passed before anything was proven.
    Timeout,
    /// The client closed its side before anything was proven.
    ClientClosed,
    /// The server spoke before the client had proven anything: a
    /// server-speaks-first protocol (MySQL, SMTP, NATS, ...), forwarded as is.
    ServerFirst,
    /// Not detected at all: configuration (a discovery hint) says the
    /// destination speaks an opaque protocol.
    Configured,
}

/// Why each recognizer rejected the bytes, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejections {
    /// Why the bytes are not an HTTP/1 request line.
    pub http1: http1::Http1Error,
    /// The offset of the first byte that differs from the HTTP/2 preface.
    pub h2_mismatch_at: usize,
    /// Why the bytes are not a TLS ClientHello.
    pub tls: tls::TlsError,
}

/// The detector's answer so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Detection {
    /// Not decided yet: feed more bytes, or call
    /// [`Detector::handle_timeout`] at `deadline`.
    NeedMore {
        /// When detection gives up and decides [`OpaqueReason::Timeout`].
        deadline: Instant,
    },
    /// Decided; final.
    Decided(Protocol),
}

/// The state of one recognizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Candidate<E> {
    Live,
    Rejected(E),
}

/// Detects the protocol of one connection from the client's first bytes.
///
/// Feed it with [`handle_bytes`](Self::handle_bytes) as bytes arrive,
/// [`handle_eof`](Self::handle_eof) if the client closes first, and
/// [`handle_timeout`](Self::handle_timeout) when
/// [`poll_timeout`](Self::poll_timeout) says; read the answer with
/// [`poll`](Self::poll).
#[derive(Debug, Clone)]
pub struct Detector {
    config: Config,
    deadline: Instant,
    buf: Vec<u8>,
    http1: http1::Scanner,
    http1_state: Candidate<http1::Http1Error>,
    h2_state: Candidate<usize>,
    tls: tls::Scanner,
    tls_state: Candidate<tls::TlsError>,
    decided: Option<Protocol>,
}

impl Detector {
    /// A detector for a connection accepted at `now`. An invalid `config`
    /// (see [`Config::validate`]) is clamped to the nearest valid one; check
    /// it when loading configuration to report the error instead.
    pub fn new(config: Config, now: Instant) -> Self {
        let config = Config {
            peek_limit: config.peek_limit.max(Config::MIN_PEEK_LIMIT),
            timeout: config.timeout.max(Duration::from_nanos(1)),
        };
        Detector {
            deadline: now + config.timeout,
            buf: Vec::new(),
            http1: http1::Scanner::new(),
            http1_state: Candidate::Live,
            h2_state: Candidate::Live,
            tls: tls::Scanner::new(config.peek_limit),
            tls_state: Candidate::Live,
            decided: None,
            config,
        }
    }

    /// Takes bytes the client sent, returning how many were taken: all of
    /// them, unless that would pass the peek limit or detection is already
    /// decided. Bytes not taken are the caller's to forward after
    /// [`buffered`](Self::buffered).
    pub fn handle_bytes(&mut self, now: Instant, bytes: &[u8]) -> usize {
        if self.decided.is_some() {
            return 0;
        }
        let room = self.config.peek_limit - self.buf.len();
        let taken = bytes.len().min(room);
        self.buf.extend_from_slice(&bytes[..taken]);
        self.scan();
        if self.decided.is_none() && self.buf.len() == self.config.peek_limit {
            self.decide(Protocol::Opaque(OpaqueReason::PeekLimit));
        }
        // Bytes are judged before the clock: they arrived by `now`.
        self.handle_timeout(now);
        taken
    }

    /// The client closed its sending side; whatever is undecided is opaque.
    pub fn handle_eof(&mut self, now: Instant) {
        self.handle_timeout(now);
        self.decide(Protocol::Opaque(OpaqueReason::ClientClosed));
    }

    /// The destination, dialled while detecting, sent bytes before the client
    /// proved a protocol: it is a server-speaks-first protocol, so whatever is
    /// undecided is opaque at once rather than at the deadline.
    pub fn handle_server_bytes(&mut self, now: Instant) {
        self.handle_timeout(now);
        self.decide(Protocol::Opaque(OpaqueReason::ServerFirst));
    }

    /// Tells the detector the time; past the deadline it decides opaque.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.deadline {
            self.decide(Protocol::Opaque(OpaqueReason::Timeout));
        }
    }

    /// The answer so far.
    pub fn poll(&self) -> Detection {
        match &self.decided {
            Some(protocol) => Detection::Decided(protocol.clone()),
            None => Detection::NeedMore {
                deadline: self.deadline,
            },
        }
    }

    /// The decided protocol, if any, without cloning it.
    pub fn protocol(&self) -> Option<&Protocol> {
        self.decided.as_ref()
    }

    /// When the detector next needs [`handle_timeout`](Self::handle_timeout):
    /// the deadline while undecided, never once decided.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.decided.is_none().then_some(self.deadline)
    }

    /// Every byte taken so far, in order: the proxy forwards them first.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// The answer (if decided) and the bytes taken, for the proxy to replay.
    pub fn into_parts(self) -> (Option<Protocol>, Vec<u8>) {
        (self.decided, self.buf)
    }

    /// Records a decision unless one was already made: decisions are final.
    fn decide(&mut self, protocol: Protocol) {
        if self.decided.is_none() {
            self.decided = Some(protocol);
        }
    }

    /// Advances every live recognizer over the new bytes.
    fn scan(&mut self) {
        // Borrow the buffer apart from the rest of the state; put it back after.
        let buf = std::mem::take(&mut self.buf);
        self.scan_input(&buf);
        self.buf = buf;
    }

    fn scan_input(&mut self, input: &[u8]) {
        if self.http1_state == Candidate::Live {
            match self.http1.advance(input) {
                http1::Scan::Pending => {}
                http1::Scan::Matched => {
                    if let Some((method, version)) = self.http1.method(input) {
                        self.decide(Protocol::Http1 { method, version });
                    }
                }
                http1::Scan::Rejected(e) => self.http1_state = Candidate::Rejected(e),
            }
        }
        if self.h2_state == Candidate::Live {
            match h2::scan(input) {
                h2::Scan::Pending => {}
                h2::Scan::Matched => self.decide(Protocol::Http2),
                h2::Scan::Rejected { at } => self.h2_state = Candidate::Rejected(at),
            }
        }
        if self.tls_state == Candidate::Live {
            match self.tls.advance(input) {
                tls::Scan::Pending => {}
                tls::Scan::Matched => {
                    if let Some(hello) = self.tls.take_hello() {
                        self.decide(Protocol::Tls(hello));
                    }
                }
                tls::Scan::TooLarge => self.decide(Protocol::Opaque(OpaqueReason::PeekLimit)),
                tls::Scan::Rejected(e) => self.tls_state = Candidate::Rejected(e),
            }
        }
        if let (
            Candidate::Rejected(http1),
            Candidate::Rejected(h2_mismatch_at),
            Candidate::Rejected(tls),
        ) = (self.http1_state, self.h2_state, self.tls_state)
        {
            let why = Rejections {
                http1,
                h2_mismatch_at,
                tls,
            };
            self.decide(Protocol::Opaque(OpaqueReason::Unrecognized(why)));
        }
    }
}

#[cfg(test)]
mod tests;
