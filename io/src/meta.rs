//! What the proxy knows about a connection beyond its bytes: which side of
//! the pod it serves and whether (and with whom) it is mutually
//! authenticated.
//!
//! These travel with every connection and request so that authorization,
//! logs and metrics all say the same thing. The `tls` metric label is
//! [`TlsStatus::label`]: `"true"` for mutual TLS, otherwise the reason it is
//! not, as Linkerd's dashboards expect.

use std::fmt;

use needle_core::identity::SpiffeId;

/// Which side of the pod a port serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Traffic from other pods to the local application (port 4143).
    Inbound,
    /// Traffic from the local application to other pods (port 4140).
    Outbound,
}

impl Direction {
    /// The metric label value: `inbound` or `outbound`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a connection is not mutually authenticated.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NoTls {
    /// This proxy has no identity (mTLS is not configured).
    Disabled,
    /// Outbound: discovery does not mark the endpoint as meshed.
    NotMeshed,
    /// Inbound: the client spoke plaintext.
    NotProvidedByRemote,
    /// Inbound: TLS meant for the application (another server name), passed
    /// through untouched.
    Passthrough,
}

impl NoTls {
    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            NoTls::Disabled => "disabled",
            NoTls::NotMeshed => "not_meshed",
            NoTls::NotProvidedByRemote => "not_provided_by_remote",
            NoTls::Passthrough => "passthrough",
        }
    }
}

/// Whether a connection is mutual TLS between proxies, and with whom.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsStatus {
    /// Mutual TLS; the peer proved this identity.
    Mutual(SpiffeId),
    /// Not mutual TLS, for this reason.
    Plain(NoTls),
}

impl TlsStatus {
    /// The `tls` metric label: `"true"`, or the reason it is not.
    pub const fn label(&self) -> &'static str {
        match self {
            TlsStatus::Mutual(_) => "true",
            TlsStatus::Plain(reason) => reason.as_str(),
        }
    }

    /// The peer's verified identity, if any.
    pub fn peer(&self) -> Option<&SpiffeId> {
        match self {
            TlsStatus::Mutual(id) => Some(id),
            TlsStatus::Plain(_) => None,
        }
    }
}

/// What a served connection or request carries besides its bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnMeta {
    /// The side of the pod.
    pub direction: Direction,
    /// The client side's TLS status: inbound, the calling proxy's identity
    /// (`client_id`); outbound, the local application is never TLS'd by us,
    /// so this is the status towards the *client*, normally
    /// [`NoTls::NotProvidedByRemote`]. The endpoint side's status is per
    /// request (the balancer picks the endpoint) and travels separately.
    pub client_tls: TlsStatus,
}

impl ConnMeta {
    /// A plaintext connection on `direction`.
    pub fn plain(direction: Direction) -> Self {
        ConnMeta {
            direction,
            client_tls: TlsStatus::Plain(NoTls::NotProvidedByRemote),
        }
    }
}
