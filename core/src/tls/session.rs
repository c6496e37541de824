//! # The handshake driver
//!
//! [`Session`] is a rustls connection with the I/O and the clock taken out,
//! in the shape of every core state machine:
//!
//! ```text
//!   handle_input(now, bytes) ─┐                 ┌─► poll_output():
//!   handle_eof(now)          ─┼─► rustls + ────►│     Transmit(bytes to send)
//!   handle_timeout(now)      ─┘   Needle checks  │     Established { peer, alpn }
//!                                               └─►   Failed(HandshakeError)
//!   poll_timeout() ─► the handshake deadline, while handshaking
//! ```
//!
//! A session's outputs come in order: bytes to send first (so a fatal alert
//! is flushed before the failure is reported), then at most one
//! `Established` and at most one `Failed`.
//!
//! In TLS 1.3 the client finishes before the server has judged the client's
//! certificate, so a client can report `Established` and later `Failed`
//! (with the server's alert) when the server refuses it. The data plane must
//! treat that `Failed` as the connection's end, which it is; no application
//! byte reaches a server that refused the client.
//!
//! After `Established` the session carries application data
//! ([`Session::send`], [`Session::recv`]) or hands over its rustls
//! connection ([`Session::into_rustls`]).

use std::io::{Read, Write};
use std::sync::{Arc, OnceLock};

use rustls::Connection;
use rustls_pki_types::{ServerName, UnixTime};

use super::verify::{self, InputClock};
use super::{Alpn, Credentials, HandshakeError, SetupError};
use crate::identity::x509::{self};
use crate::identity::{SpiffeId, sni};
use crate::time::Instant;

/// The current time, both ways the core needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time, for the handshake deadline.
    pub instant: Instant,
    /// Wall-clock time, for certificate validity.
    pub unix: UnixTime,
}

impl Now {
    /// Both clocks' readings.
    pub fn new(instant: Instant, unix: UnixTime) -> Self {
        Now { instant, unix }
    }
}

/// A completed handshake: who the peer is and what the connection carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Established {
    /// The peer's verified identity. On the client it is the identity
    /// discovery expected (anything else fails the handshake).
    pub peer: SpiffeId,
    /// The transport both proxies agreed on.
    pub alpn: Alpn,
}

/// What the session wants done.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send these bytes to the peer.
    Transmit(Vec<u8>),
    /// The handshake completed.
    Established(Established),
    /// The session failed; nothing more will be sent but already-queued
    /// bytes (an alert).
    Failed(HandshakeError),
}

/// The result of [`Session::recv`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// This many plaintext bytes were copied out.
    Data(usize),
    /// No plaintext is buffered; feed more input.
    Pending,
    /// The peer closed its sending side cleanly (close_notify).
    Closed,
}

/// Why application data could not be queued.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The handshake has not completed.
    #[error("handshake has not completed")]
    NotEstablished,
    /// The session failed.
    #[error("session failed: {0}")]
    Failed(HandshakeError),
}

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    Handshaking,
    Established(Established),
    Failed(HandshakeError),
}

/// A mutual-TLS session between two proxies, driven without I/O.
#[derive(Debug)]
pub struct Session {
    conn: Connection,
    clock: Arc<InputClock>,
    deadline: Instant,
    phase: Phase,
    /// Events not yet returned by `poll_output`, oldest first (at most two).
    events: Vec<Output>,
    /// The SNI a server refused, if it did (set by its cert resolver).
    refused_sni: Option<Arc<OnceLock<Option<String>>>>,
    /// The peer's close_notify was received: later input is discarded.
    peer_closed: bool,
}

impl Session {
    /// A client dialing the workload `target`, offering `offer` as transport
    /// (most preferred first), giving up at `deadline`.
    pub fn client(
        creds: &Credentials,
        target: &SpiffeId,
        offer: &[Alpn],
        now: Now,
        deadline: Instant,
    ) -> Result<Session, SetupError> {
        let clock = Arc::new(InputClock::new(now.unix));
        let config = verify::client_config(creds, target, offer, clock.clone())?;
        let name = sni::server_name(target)?;
        let name =
            ServerName::try_from(name.clone()).map_err(|_| SetupError::InvalidServerName(name))?;
        let conn =
            rustls::ClientConnection::new(Arc::new(config), name).map_err(SetupError::Provider)?;
        Ok(Session::new(conn.into(), clock, deadline, None))
    }

    /// A server answering meshed connections addressed to `creds`' identity,
    /// accepting `accept` as transport (most preferred first).
    pub fn server(
        creds: &Credentials,
        accept: &[Alpn],
        now: Now,
        deadline: Instant,
    ) -> Result<Session, SetupError> {
        let clock = Arc::new(InputClock::new(now.unix));
        let refused = Arc::new(OnceLock::new());
        let config =
            verify::server_config_with_slot(creds, accept, clock.clone(), refused.clone())?;
        let conn = rustls::ServerConnection::new(Arc::new(config)).map_err(SetupError::Provider)?;
        Ok(Session::new(conn.into(), clock, deadline, Some(refused)))
    }

    fn new(
        conn: Connection,
        clock: Arc<InputClock>,
        deadline: Instant,
        refused_sni: Option<Arc<OnceLock<Option<String>>>>,
    ) -> Self {
        Session {
            conn,
            clock,
            deadline,
            phase: Phase::Handshaking,
            events: Vec::new(),
            refused_sni,
            peer_closed: false,
        }
    }

    /// Feeds bytes received from the peer at `now`; returns how many were
    /// taken.
    ///
    /// During the handshake every byte is taken. Afterwards input stops
    /// being taken once rustls's buffer of received plaintext is full: drain
    /// it with [`Session::recv`] and feed the rest again. That is the
    /// back-pressure a proxy needs. After a failure, or once the peer's
    /// close_notify was received, input is discarded (and reported as taken):
    /// nothing after a close_notify means anything, and an io loop that
    /// re-feeds what was not taken must not spin on it.
    pub fn handle_input(&mut self, now: Now, bytes: &[u8]) -> usize {
        self.clock.set(now.unix);
        if matches!(self.phase, Phase::Failed(_)) || self.peer_closed {
            return bytes.len();
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            match self.conn.read_tls(&mut rest) {
                // close_notify was received: nothing more is read, and the
                // rest is discarded.
                Ok(0) => {
                    self.peer_closed = true;
                    return bytes.len();
                }
                Ok(_) => {}
                // The received-plaintext buffer is full.
                Err(_) => break,
            }
            if !self.process() {
                return bytes.len();
            }
        }
        bytes.len() - rest.len()
    }

    /// The transport closed (the peer's FIN) at `now`.
    pub fn handle_eof(&mut self, now: Now) {
        self.clock.set(now.unix);
        let _ = self.conn.read_tls(&mut &[][..]);
        if self.process() && self.phase == Phase::Handshaking {
            self.fail(HandshakeError::UnexpectedEof);
        }
    }

    /// Time has passed: fails the handshake if its deadline is reached.
    pub fn handle_timeout(&mut self, now: Now) {
        self.clock.set(now.unix);
        if self.phase == Phase::Handshaking && now.instant >= self.deadline {
            self.fail(HandshakeError::Timeout);
        }
    }

    /// When [`Session::handle_timeout`] should next be called, if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.phase == Phase::Handshaking).then_some(self.deadline)
    }

    /// The next thing the session wants done, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        if self.conn.wants_write() {
            let mut buf = Vec::new();
            while self.conn.wants_write() {
                // Writing into a Vec cannot fail.
                if self.conn.write_tls(&mut buf).is_err() {
                    break;
                }
            }
            return Some(Output::Transmit(buf));
        }
        if self.events.is_empty() {
            None
        } else {
            Some(self.events.remove(0))
        }
    }

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        self.phase == Phase::Handshaking
    }

    /// The completed handshake, once there is one (and no failure since).
    pub fn established(&self) -> Option<&Established> {
        match &self.phase {
            Phase::Established(e) => Some(e),
            _ => None,
        }
    }

    /// The failure, if the session failed.
    pub fn error(&self) -> Option<&HandshakeError> {
        match &self.phase {
            Phase::Failed(e) => Some(e),
            _ => None,
        }
    }

    /// Queues application data for the peer; returns how much was taken
    /// (less than all when rustls's send buffer is full). The encrypted
    /// bytes come out of [`Session::poll_output`].
    pub fn send(&mut self, data: &[u8]) -> Result<usize, SendError> {
        match &self.phase {
            Phase::Handshaking => Err(SendError::NotEstablished),
            Phase::Failed(e) => Err(SendError::Failed(e.clone())),
            Phase::Established(_) => Ok(self.conn.writer().write(data).unwrap_or(0)),
        }
    }

    /// Copies received application data into `buf`.
    pub fn recv(&mut self, buf: &mut [u8]) -> Received {
        if self.phase == Phase::Handshaking {
            return Received::Pending;
        }
        match self.conn.reader().read(buf) {
            Ok(0) if !buf.is_empty() => Received::Closed,
            Ok(n) => Received::Data(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Received::Pending,
            // The transport closed without close_notify: treat as closed;
            // a truncation the data plane sees as a reset upstream.
            Err(_) => Received::Closed,
        }
    }

    /// Starts a clean close: queues a close_notify alert.
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }

    /// The rustls connection, for inspection.
    pub fn rustls(&self) -> &Connection {
        &self.conn
    }

    /// Hands the rustls connection to the data plane (e.g. to wrap in a
    /// tokio-rustls stream). Its certificate checks are over; its clock
    /// stays at the last time fed, which only matters for resumption, and
    /// resumption is off.
    pub fn into_rustls(self) -> Connection {
        self.conn
    }

    /// Runs rustls over what was read; returns false if the session failed.
    fn process(&mut self) -> bool {
        if let Err(e) = self.conn.process_new_packets() {
            let err = self.name_error(e);
            self.fail(err);
            return false;
        }
        if self.phase == Phase::Handshaking && !self.conn.is_handshaking() {
            match self.check_established() {
                Ok(est) => {
                    self.phase = Phase::Established(est.clone());
                    self.events.push(Output::Established(est));
                }
                Err(e) => {
                    // Our own post-handshake refusal: tell the peer we are
                    // done before reporting it.
                    self.conn.send_close_notify();
                    self.fail(e);
                    return false;
                }
            }
        }
        true
    }

    /// Needle's checks once rustls is satisfied: an agreed transport and the
    /// peer's identity (already verified by the verifiers; read back here).
    fn check_established(&self) -> Result<Established, HandshakeError> {
        let alpn = self
            .conn
            .alpn_protocol()
            .and_then(Alpn::from_protocol_id)
            .ok_or(HandshakeError::AlpnMismatch)?;
        let leaf = self
            .conn
            .peer_certificates()
            .and_then(|certs| certs.first())
            .ok_or(HandshakeError::NoClientCertificate)?;
        let info = x509::inspect(leaf).map_err(HandshakeError::NoIdentity)?;
        Ok(Established {
            peer: info.identity,
            alpn,
        })
    }

    fn name_error(&self, err: rustls::Error) -> HandshakeError {
        if let Some(sni) = self.refused_sni.as_ref().and_then(|slot| slot.get()) {
            return HandshakeError::ServerNameMismatch { sni: sni.clone() };
        }
        HandshakeError::from_rustls(err, self.clock.get())
    }

    fn fail(&mut self, err: HandshakeError) {
        self.phase = Phase::Failed(err.clone());
        self.events.push(Output::Failed(err));
    }
}
