//! Driving protocol detection over a socket, without stalling protocols
//! whose server speaks first.
//!
//! The core's `Detector` decides; this module only reads, sleeps and dials.
//! When the destination is known, the destination is dialled shortly after
//! accept (after [`DetectSettings::dial_delay`], so the common client-first
//! connection, whose bytes arrive at once, costs no extra upstream
//! connection). If the server then speaks (or closes) before the client has
//! proven a protocol, the detector is told and decides opaque at once, and
//! the connection already dialled carries the traffic: a MySQL or SMTP
//! client sees its greeting after the dial delay plus one connect, not after
//! the detection timeout.
//!
//! The caller says how to dial: plain TCP, or mutual TLS to a meshed peer's
//! proxy (which learns the port from the transport header and dials the
//! application at once), so a server-first protocol crosses the mesh
//! encrypted like any other.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use needle_core::detect::{self, Detector, Protocol};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::clock::Clock;
use crate::prefixed::Prefixed;

/// How detection runs on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectSettings {
    /// The core detector's bounds (peek limit and timeout).
    pub detect: detect::Config,
    /// How long after accept the destination is dialled if the client has
    /// not proven a protocol yet (default 2 ms): the delay a
    /// server-speaks-first protocol sees on top of one connect.
    pub dial_delay: Duration,
}

impl Default for DetectSettings {
    fn default() -> Self {
        DetectSettings {
            detect: detect::Config::default(),
            dial_delay: Duration::from_millis(2),
        }
    }
}

/// What detection found.
#[derive(Debug)]
pub struct Detected<U> {
    /// The protocol.
    pub protocol: Protocol,
    /// Every byte read from the client, to replay to whoever reads next.
    pub buffered: Bytes,
    /// The connection dialled to the destination while detecting, if one
    /// was made (always, when the server spoke first), with the bytes the
    /// server already sent put back in front.
    pub upstream: Option<Prefixed<U>>,
}

pub type Dial<U> = Pin<Box<dyn Future<Output = io::Result<U>> + Send>>;

/// The destination connection while detecting.
enum Upstream<U> {
    /// Not dialled (yet, or ever: no destination known).
    Idle,
    Dialing(Dial<U>),
    Connected(U),
    /// The server spoke (these bytes) or closed (none): detection is over.
    Spoke(U, Vec<u8>),
    /// The dial failed; forwarding will dial again and report the error.
    Failed,
}

/// Reads from `client` until the detector decides, calling `dial` (if the
/// destination is known) to catch servers that speak first. `dial` makes
/// the connection forwarding would use: plain TCP, or mutual TLS to a
/// meshed peer, so a server-first protocol is never sent around the mesh.
pub async fn detect<C, U, D>(
    client: &mut C,
    dial: Option<D>,
    settings: &DetectSettings,
    clock: &Clock,
) -> io::Result<Detected<U>>
where
    C: AsyncRead + Unpin,
    U: AsyncRead + Unpin + Send + 'static,
    D: FnOnce() -> Dial<U>,
{
    let mut detector = Detector::new(settings.detect, clock.now());
    let dial_at = tokio::time::Instant::now() + settings.dial_delay;
    let mut dial = dial;
    let mut upstream = Upstream::Idle;
    let mut leftover = Vec::new();
    let mut buf = vec![0u8; 4096];

    while detector.protocol().is_none() {
        let deadline = detector.poll_timeout().map(|at| clock.to_tokio(at));
        let deadline = deadline.unwrap_or_else(tokio::time::Instant::now);
        let may_dial = dial.is_some() && matches!(upstream, Upstream::Idle);
        tokio::select! {
            read = client.read(&mut buf) => match read? {
                0 => detector.handle_eof(clock.now()),
                n => {
                    let taken = detector.handle_bytes(clock.now(), &buf[..n]);
                    // Past the peek limit: keep the rest for the replay.
                    leftover.extend_from_slice(&buf[taken..n]);
                }
            },
            () = tokio::time::sleep_until(deadline) => detector.handle_timeout(clock.now()),
            () = tokio::time::sleep_until(dial_at), if may_dial => {
                if let Some(dial) = dial.take() {
                    upstream = Upstream::Dialing(dial());
                }
            }
            event = upstream_event(&mut upstream) => match event {
                UpstreamEvent::Dialed(Ok(conn)) => upstream = Upstream::Connected(conn),
                UpstreamEvent::Dialed(Err(_)) | UpstreamEvent::Spoke(Err(_)) => {
                    upstream = Upstream::Failed;
                }
                // Bytes, or a close: either way the server went first.
                UpstreamEvent::Spoke(Ok(greeting)) => {
                    if let Upstream::Connected(conn) = std::mem::replace(&mut upstream, Upstream::Failed) {
                        upstream = Upstream::Spoke(conn, greeting);
                    }
                    detector.handle_server_bytes(clock.now());
                }
            },
        }
    }

    let (protocol, mut bytes) = detector.into_parts();
    bytes.extend_from_slice(&leftover);
    let upstream = match upstream {
        Upstream::Connected(conn) => Some(Prefixed::new(Bytes::new(), conn)),
        Upstream::Spoke(conn, greeting) => Some(Prefixed::new(greeting, conn)),
        _ => None,
    };
    let protocol = protocol.unwrap_or(Protocol::Opaque(detect::OpaqueReason::ClientClosed));
    Ok(Detected {
        protocol,
        buffered: Bytes::from(bytes),
        upstream,
    })
}

/// Something the destination connection did.
enum UpstreamEvent<U> {
    /// A dial in progress completed.
    Dialed(io::Result<U>),
    /// The connected destination sent these bytes (none: it closed).
    Spoke(io::Result<Vec<u8>>),
}

/// Completes when the destination connection has news; never while there
/// is nothing to wait for. What the server sends is read (not peeked: a
/// TLS stream cannot peek) and handed to the forwarder to replay.
async fn upstream_event<U: AsyncRead + Unpin>(upstream: &mut Upstream<U>) -> UpstreamEvent<U> {
    match upstream {
        Upstream::Dialing(dial) => UpstreamEvent::Dialed(dial.await),
        Upstream::Connected(conn) => {
            let mut greeting = vec![0u8; 4096];
            UpstreamEvent::Spoke(conn.read(&mut greeting).await.map(|n| {
                greeting.truncate(n);
                greeting
            }))
        }
        Upstream::Idle | Upstream::Spoke(..) | Upstream::Failed => std::future::pending().await,
    }
}
