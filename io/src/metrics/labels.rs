//! The label sets of Needle's metric families, and how each is encoded.
//!
//! Every label value is either a constant (`&'static str`) or a string built
//! once per connection, destination or endpoint and shared as an
//! `Arc<str>`: recording a request clones a few `Arc`s and hashes the set,
//! it never formats a string. Labels that do not apply to a series are
//! left out rather than written empty (Prometheus treats the two the same),
//! so an inbound series has `client_id` and never `server_id`, and the
//! other way round.

use std::fmt::{self, Write as _};
use std::sync::Arc;

use prometheus_client::encoding::{EncodeLabel, EncodeLabelSet, LabelSetEncoder};

use crate::meta::{Direction, TlsStatus};

/// Writes one `key="value"` pair.
fn put(encoder: &mut LabelSetEncoder<'_>, key: &str, value: &str) -> fmt::Result {
    (key, value).encode(encoder.encode_label())
}

/// A status code as a label value, without allocating.
fn put_u32(encoder: &mut LabelSetEncoder<'_>, key: &str, value: u32) -> fmt::Result {
    let mut buf = StackStr::default();
    write!(buf, "{value}")?;
    put(encoder, key, buf.as_str())
}

/// Room for a `u32` in decimal.
#[derive(Default)]
struct StackStr {
    bytes: [u8; 10],
    len: usize,
}

impl StackStr {
    fn as_str(&self) -> &str {
        // Only ASCII digits are ever written.
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl fmt::Write for StackStr {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// The far side of a connection or request as metrics label it: its `tls`
/// status and, when mutually authenticated, its identity. Which label the
/// identity goes in depends on the direction: `client_id` inbound (the
/// calling proxy), `server_id` outbound (the endpoint's proxy).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerLabels {
    tls: &'static str,
    id: Option<Arc<str>>,
}

impl PeerLabels {
    /// The labels of a peer with this TLS status. Allocates the identity
    /// string once: build it per connection or endpoint, not per request.
    pub fn new(tls: &TlsStatus) -> Self {
        PeerLabels {
            tls: tls.label(),
            id: tls.peer().map(|id| Arc::from(id.as_str())),
        }
    }

    fn encode(&self, encoder: &mut LabelSetEncoder<'_>, direction: Direction) -> fmt::Result {
        put(encoder, "tls", self.tls)?;
        if let Some(id) = &self.id {
            let key = match direction {
                Direction::Inbound => "client_id",
                Direction::Outbound => "server_id",
            };
            put(encoder, key, id)?;
        }
        Ok(())
    }
}

/// What every HTTP series of a request carries.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct RequestLabels {
    pub(crate) direction: Direction,
    /// The destination the proxy serves (`dst`, `ip:port`).
    pub(crate) authority: Arc<str>,
    /// Inbound: the client's side. Outbound: the endpoint that answered;
    /// `None` when Needle answered without reaching an endpoint (no
    /// endpoints, all ejected, rejected before routing).
    pub(crate) peer: Option<PeerLabels>,
    /// `namespace/name` of the matched route (`default` for the implicit
    /// one); `None` when the request was answered before routing.
    pub(crate) route: Option<Arc<str>>,
}

impl EncodeLabelSet for RequestLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        put(encoder, "direction", self.direction.as_str())?;
        put(encoder, "authority", &self.authority)?;
        if let Some(peer) = &self.peer {
            peer.encode(encoder, self.direction)?;
        }
        if let Some(route) = &self.route {
            put(encoder, "route", route)?;
        }
        Ok(())
    }
}

/// A response's series: the request's labels and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct ResponseLabels {
    pub(crate) request: RequestLabels,
    pub(crate) status_code: u16,
    pub(crate) grpc_status: Option<u32>,
    /// The response stream failed after its head was forwarded.
    pub(crate) broken: bool,
}

impl ResponseLabels {
    /// Linkerd's classification: a 5xx, a gRPC status other than OK, or a
    /// stream that broke midway is a failure; everything else (4xx
    /// included: the server answered as designed) a success.
    pub(crate) fn is_failure(&self) -> bool {
        self.broken || self.status_code >= 500 || self.grpc_status.is_some_and(|s| s != 0)
    }
}

impl EncodeLabelSet for ResponseLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        self.request.encode(encoder)?;
        put_u32(encoder, "status_code", u32::from(self.status_code))?;
        let class = if self.is_failure() {
            "failure"
        } else {
            "success"
        };
        put(encoder, "classification", class)?;
        if let Some(grpc) = self.grpc_status {
            put_u32(encoder, "grpc_status", grpc)?;
        }
        Ok(())
    }
}

/// Per-route series that do not depend on the endpoint (retries).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct RouteLabels {
    pub(crate) direction: Direction,
    pub(crate) authority: Arc<str>,
    pub(crate) route: Arc<str>,
}

impl EncodeLabelSet for RouteLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        put(encoder, "direction", self.direction.as_str())?;
        put(encoder, "authority", &self.authority)?;
        put(encoder, "route", &self.route)
    }
}

/// Per-backend series (ejections). A destination's balancers are shared by
/// every connection to it, whichever port accepted them, so there is no
/// direction here.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct BackendLabels {
    pub(crate) authority: Arc<str>,
    pub(crate) backend: Arc<str>,
}

impl EncodeLabelSet for BackendLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        put(encoder, "authority", &self.authority)?;
        put(encoder, "backend", &self.backend)
    }
}

/// An accepted connection's series. `peer="src"` says so, as Linkerd's
/// series of accepted connections do.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct TcpLabels {
    pub(crate) direction: Direction,
    /// Where the connection goes (`ip:port`); `None` when the port could
    /// not tell (not redirected, no target): such a connection is closed.
    pub(crate) target_addr: Option<Arc<str>>,
    pub(crate) peer: PeerLabels,
}

impl EncodeLabelSet for TcpLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        put(encoder, "direction", self.direction.as_str())?;
        put(encoder, "peer", "src")?;
        if let Some(target) = &self.target_addr {
            put(encoder, "target_addr", target)?;
        }
        self.peer.encode(encoder, self.direction)
    }
}

/// What protocol detection decided, and why.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct DetectLabels {
    pub(crate) direction: Direction,
    pub(crate) protocol: &'static str,
    pub(crate) reason: &'static str,
}

impl EncodeLabelSet for DetectLabels {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> fmt::Result {
        put(encoder, "direction", self.direction.as_str())?;
        put(encoder, "protocol", self.protocol)?;
        put(encoder, "reason", self.reason)
    }
}
