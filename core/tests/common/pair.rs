//! Two TLS endpoints wired back to back in virtual time, quinn-proto's
//! `Pair` pattern: whatever one side transmits is delivered to the other,
//! optionally cut into chunks, until neither has anything left to say.

use std::sync::Arc;

use needle_core::time::Instant;
use needle_core::tls::{InputClock, Now, Output, Session};

use super::pki::{T0, unix};

/// One thing an endpoint did.
pub enum Step<E> {
    /// Bytes for the peer.
    Transmit(Vec<u8>),
    /// Anything else: the outcome the test looks at.
    Event(E),
}

/// Something that speaks TLS over a byte pipe.
pub trait Endpoint {
    type Event;
    fn input(&mut self, now: Now, bytes: &[u8]);
    fn poll(&mut self) -> Option<Step<Self::Event>>;
}

impl Endpoint for Session {
    type Event = Output;
    fn input(&mut self, now: Now, bytes: &[u8]) {
        let taken = self.handle_input(now, bytes);
        assert_eq!(taken, bytes.len(), "session refused input");
    }
    fn poll(&mut self) -> Option<Step<Output>> {
        self.poll_output().map(|o| match o {
            Output::Transmit(bytes) => Step::Transmit(bytes),
            other => Step::Event(other),
        })
    }
}

/// What a plain rustls endpoint reports.
#[derive(Debug, PartialEq)]
pub enum RawEvent {
    HandshakeDone,
    Error(rustls::Error),
}

/// A plain rustls connection (a misconfigured or impostor peer), driven the
/// same way.
pub struct Raw {
    pub conn: rustls::Connection,
    pub clock: Arc<InputClock>,
    events: Vec<RawEvent>,
    done: bool,
    failed: bool,
}

impl Raw {
    pub fn new(conn: impl Into<rustls::Connection>, clock: Arc<InputClock>) -> Self {
        Raw {
            conn: conn.into(),
            clock,
            events: Vec::new(),
            done: false,
            failed: false,
        }
    }
}

impl Endpoint for Raw {
    type Event = RawEvent;
    fn input(&mut self, now: Now, mut bytes: &[u8]) {
        self.clock.set(now.unix);
        while !bytes.is_empty() && !self.failed {
            self.conn.read_tls(&mut bytes).unwrap();
            if let Err(e) = self.conn.process_new_packets() {
                self.failed = true;
                self.events.push(RawEvent::Error(e));
            }
        }
        if !self.done && !self.failed && !self.conn.is_handshaking() {
            self.done = true;
            self.events.push(RawEvent::HandshakeDone);
        }
    }
    fn poll(&mut self) -> Option<Step<RawEvent>> {
        if self.conn.wants_write() {
            let mut buf = Vec::new();
            while self.conn.wants_write() {
                self.conn.write_tls(&mut buf).unwrap();
            }
            return Some(Step::Transmit(buf));
        }
        if self.events.is_empty() {
            None
        } else {
            Some(Step::Event(self.events.remove(0)))
        }
    }
}

/// The harness.
pub struct Pair<C: Endpoint, S: Endpoint> {
    pub client: C,
    pub server: S,
    pub now: Now,
    pub client_events: Vec<C::Event>,
    pub server_events: Vec<S::Event>,
    /// Sizes to cut each transmission into, cycled; empty means whole.
    pub chunks: Vec<usize>,
    next_chunk: usize,
    /// Every transmission, (from client?, bytes), for inspection.
    pub wire: Vec<(bool, usize)>,
}

/// The time a pair starts at: monotonic zero, wall clock `T0`.
pub fn start() -> Now {
    Now::new(Instant::ZERO, unix(T0))
}

impl<C: Endpoint, S: Endpoint> Pair<C, S> {
    pub fn new(client: C, server: S, now: Now) -> Self {
        Pair {
            client,
            server,
            now,
            client_events: Vec::new(),
            server_events: Vec::new(),
            chunks: Vec::new(),
            next_chunk: 0,
            wire: Vec::new(),
        }
    }

    fn pieces(&mut self, len: usize) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < len {
            let size = if self.chunks.is_empty() {
                len
            } else {
                let s = self.chunks[self.next_chunk % self.chunks.len()].max(1);
                self.next_chunk += 1;
                s
            };
            let end = (at + size).min(len);
            out.push((at, end));
            at = end;
        }
        out
    }

    /// Delivers transmissions both ways until both sides are quiet. Each
    /// delivery advances virtual time by a millisecond.
    pub fn drive(&mut self) {
        loop {
            let mut progress = false;
            while let Some(step) = self.client.poll() {
                match step {
                    Step::Transmit(bytes) => {
                        progress = true;
                        self.wire.push((true, bytes.len()));
                        for (a, b) in self.pieces(bytes.len()) {
                            self.tick();
                            self.server.input(self.now, &bytes[a..b]);
                        }
                    }
                    Step::Event(e) => self.client_events.push(e),
                }
            }
            while let Some(step) = self.server.poll() {
                match step {
                    Step::Transmit(bytes) => {
                        progress = true;
                        self.wire.push((false, bytes.len()));
                        for (a, b) in self.pieces(bytes.len()) {
                            self.tick();
                            self.client.input(self.now, &bytes[a..b]);
                        }
                    }
                    Step::Event(e) => self.server_events.push(e),
                }
            }
            if !progress {
                return;
            }
        }
    }

    fn tick(&mut self) {
        self.now.instant += std::time::Duration::from_millis(1);
    }
}

impl Pair<Session, Session> {
    /// Sends `data` from client to server (or back) and returns what the
    /// other side read.
    pub fn echo(&mut self, from_client: bool, data: &[u8]) -> Vec<u8> {
        let sender = if from_client {
            &mut self.client
        } else {
            &mut self.server
        };
        assert_eq!(sender.send(data).unwrap(), data.len());
        self.drive();
        let receiver = if from_client {
            &mut self.server
        } else {
            &mut self.client
        };
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let needle_core::tls::Received::Data(n) = receiver.recv(&mut buf) {
            out.extend_from_slice(&buf[..n]);
        }
        out
    }
}
