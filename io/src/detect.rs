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

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use needle_core::detect::{self, Detector, Protocol};
use tokio::io::AsyncReadExt;

use crate::clock::Clock;
use crate::net::{Connection, Network};

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
pub struct Detected<S> {
    /// The protocol.
    pub protocol: Protocol,
    /// Every byte read from the client, to replay to whoever reads next.
    pub buffered: Bytes,
    /// The connection dialled to the destination while detecting, if one
    /// was made (always, when the server spoke first).
    pub upstream: Option<S>,
}

type Dial<S> = Pin<Box<dyn Future<Output = io::Result<S>> + Send>>;

/// The destination connection while detecting.
enum Upstream<S> {
    /// Not dialled (yet, or ever: no destination known).
    Idle,
    Dialing(Dial<S>),
    Connected(S),
    /// The dial failed; forwarding will dial again and report the error.
    Failed,
}

/// Reads from `client` until the detector decides, dialling `dst` (if known)
/// to catch servers that speak first.
pub async fn detect<N: Network>(
    network: &N,
    client: &mut N::Stream,
    dst: Option<SocketAddr>,
    settings: &DetectSettings,
    clock: &Clock,
) -> io::Result<Detected<N::Stream>> {
    let mut detector = Detector::new(settings.detect, clock.now());
    let dial_at = tokio::time::Instant::now() + settings.dial_delay;
    let mut upstream = Upstream::Idle;
    let mut leftover = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut peeked = [0u8; 1];

    while detector.protocol().is_none() {
        let deadline = detector.poll_timeout().map(|at| clock.to_tokio(at));
        let deadline = deadline.unwrap_or_else(tokio::time::Instant::now);
        let may_dial = dst.is_some() && matches!(upstream, Upstream::Idle);
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
                if let Some(dst) = dst {
                    let network = network.clone();
                    upstream = Upstream::Dialing(Box::pin(async move { network.connect(dst).await }));
                }
            }
            event = upstream_event(&mut upstream, &mut peeked) => match event {
                UpstreamEvent::Dialed(Ok(conn)) => upstream = Upstream::Connected(conn),
                UpstreamEvent::Dialed(Err(_)) | UpstreamEvent::Spoke(Err(_)) => {
                    upstream = Upstream::Failed;
                }
                // Bytes, or a close: either way the server went first.
                UpstreamEvent::Spoke(Ok(_)) => detector.handle_server_bytes(clock.now()),
            },
        }
    }

    let (protocol, mut bytes) = detector.into_parts();
    bytes.extend_from_slice(&leftover);
    let upstream = match upstream {
        Upstream::Connected(conn) => Some(conn),
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
enum UpstreamEvent<S> {
    /// A dial in progress completed.
    Dialed(io::Result<S>),
    /// The connected destination has bytes for us (or closed).
    Spoke(io::Result<usize>),
}

/// Completes when the destination connection has news; never while there
/// is nothing to wait for. Peeking leaves the bytes for the forwarder.
async fn upstream_event<S: Connection>(
    upstream: &mut Upstream<S>,
    buf: &mut [u8],
) -> UpstreamEvent<S> {
    match upstream {
        Upstream::Dialing(dial) => UpstreamEvent::Dialed(dial.await),
        Upstream::Connected(conn) => UpstreamEvent::Spoke(conn.peek(buf).await),
        Upstream::Idle | Upstream::Failed => std::future::pending().await,
    }
}
