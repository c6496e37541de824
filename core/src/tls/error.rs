//! What can go wrong in a handshake, in terms an operator can act on.
//!
//! rustls reports failures as its own `Error`; most of them mean one of a
//! handful of things for a mesh (the peer's CA is not ours, its certificate
//! has expired, it is the wrong workload, ...). [`HandshakeError`] names
//! those, and keeps the rustls error only for genuine protocol failures.

use std::sync::Arc;

use rustls::{AlertDescription, CertificateError};
use rustls_pki_types::UnixTime;

use crate::identity::sni::SniError;
use crate::identity::x509::CertIdentityError;
use crate::identity::{SpiffeId, TrustDomain};

/// Why a handshake (or an established session) failed.
///
/// Every variant is a refusal: there is no plaintext fallback for any of
/// them.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The peer's chain does not lead to a CA in the trust bundle.
    #[error("peer certificate is not issued by a trusted CA")]
    UnknownIssuer,
    /// A certificate in the peer's chain has expired.
    #[error("peer certificate expired (now {now:?}, not after {not_after:?})")]
    Expired {
        /// The time the session was fed.
        now: UnixTime,
        /// The certificate's end of validity, when known.
        not_after: Option<UnixTime>,
    },
    /// A certificate in the peer's chain is not valid yet.
    #[error("peer certificate not yet valid (now {now:?}, not before {not_before:?})")]
    NotYetValid {
        /// The time the session was fed.
        now: UnixTime,
        /// The certificate's start of validity, when known.
        not_before: Option<UnixTime>,
    },
    /// The server holds a valid certificate for a different workload than
    /// the one discovery said the endpoint has.
    #[error("server identity is {found}, expected {expected}")]
    WrongIdentity {
        /// What discovery said.
        expected: SpiffeId,
        /// What the certificate says.
        found: SpiffeId,
    },
    /// The peer's certificate names an identity in a trust domain this
    /// workload holds no trust bundle for. An X509-SVID is only valid when
    /// verified by its own trust domain's bundle, and the bundle Needle
    /// loads belongs to the local workload's trust domain alone, so a CA
    /// in it cannot vouch for another domain's workloads (nor could a
    /// partner's CA for ours). Federation (a bundle per trust domain) is
    /// future work.
    #[error("peer identity is in trust domain {found}, this workload only trusts {expected}")]
    ForeignTrustDomain {
        /// The trust domain this workload has a bundle for (its own).
        expected: TrustDomain,
        /// The trust domain of the peer's SPIFFE ID.
        found: TrustDomain,
    },
    /// The peer's certificate is trusted but names no valid SPIFFE identity.
    #[error("peer certificate carries no usable identity: {0}")]
    NoIdentity(CertIdentityError),
    /// The client sent no certificate; every meshed client must.
    #[error("client presented no certificate")]
    NoClientCertificate,
    /// The ClientHello's SNI does not name this server's workload.
    #[error("ClientHello server name {sni:?} does not address this workload")]
    ServerNameMismatch {
        /// The SNI received, if any.
        sni: Option<String>,
    },
    /// The proxies have no transport protocol (ALPN) in common.
    #[error("no common application protocol (ALPN) with the peer")]
    AlpnMismatch,
    /// The peer's certificate is unusable for another reason (bad encoding,
    /// wrong key usage, unsupported signature, ...).
    #[error("peer certificate rejected: {0:?}")]
    BadCertificate(CertificateError),
    /// The peer refused the handshake and said why with an alert.
    #[error("peer sent alert {0:?}")]
    PeerAlert(AlertDescription),
    /// The handshake did not finish before its deadline.
    #[error("handshake timed out")]
    Timeout,
    /// The transport closed before the handshake finished.
    #[error("connection closed during the handshake")]
    UnexpectedEof,
    /// Any other TLS protocol failure.
    #[error("TLS protocol error: {0}")]
    Protocol(rustls::Error),
}

/// Why a session could not even be set up.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The target identity cannot be spelled as a TLS server name.
    #[error(transparent)]
    ServerName(#[from] SniError),
    /// The crypto provider cannot do TLS 1.3 (no TLS 1.3 suites or groups).
    #[error("crypto provider unusable for TLS 1.3: {0}")]
    Provider(rustls::Error),
    /// The target's server name is not one rustls accepts as a DNS name.
    #[error("server name {0:?} is not a valid DNS name")]
    InvalidServerName(String),
    /// No application protocol was given to offer or accept.
    #[error("no application protocol (ALPN) to offer")]
    NoAlpn,
}

/// What a Needle verifier reports through rustls when the certificate chain
/// is fine but the identity in it is not. It travels inside
/// `CertificateError::Other` and is unpacked by [`HandshakeError::from_rustls`].
#[derive(Clone, Debug, thiserror::Error)]
pub(crate) enum IdentityRejection {
    #[error("server identity is {found}, expected {expected}")]
    Mismatch { expected: SpiffeId, found: SpiffeId },
    #[error(transparent)]
    Unusable(CertIdentityError),
    #[error("peer identity is in trust domain {found}, this workload only trusts {expected}")]
    ForeignTrustDomain {
        expected: TrustDomain,
        found: TrustDomain,
    },
}

impl IdentityRejection {
    pub(crate) fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
            self,
        ))))
    }
}

impl HandshakeError {
    /// Names a rustls failure; `now` is the time the session was fed.
    pub(crate) fn from_rustls(err: rustls::Error, now: UnixTime) -> Self {
        use CertificateError as C;
        match err {
            rustls::Error::InvalidCertificate(cert) => match cert {
                C::UnknownIssuer => HandshakeError::UnknownIssuer,
                C::Expired => HandshakeError::Expired {
                    now,
                    not_after: None,
                },
                C::ExpiredContext { time, not_after } => HandshakeError::Expired {
                    now: time,
                    not_after: Some(not_after),
                },
                C::NotValidYet => HandshakeError::NotYetValid {
                    now,
                    not_before: None,
                },
                C::NotValidYetContext { time, not_before } => HandshakeError::NotYetValid {
                    now: time,
                    not_before: Some(not_before),
                },
                C::Other(other) => match other.0.downcast_ref::<IdentityRejection>() {
                    Some(IdentityRejection::Mismatch { expected, found }) => {
                        HandshakeError::WrongIdentity {
                            expected: expected.clone(),
                            found: found.clone(),
                        }
                    }
                    Some(IdentityRejection::Unusable(e)) => HandshakeError::NoIdentity(e.clone()),
                    Some(IdentityRejection::ForeignTrustDomain { expected, found }) => {
                        HandshakeError::ForeignTrustDomain {
                            expected: expected.clone(),
                            found: found.clone(),
                        }
                    }
                    None => HandshakeError::BadCertificate(C::Other(other)),
                },
                other => HandshakeError::BadCertificate(other),
            },
            rustls::Error::NoCertificatesPresented => HandshakeError::NoClientCertificate,
            rustls::Error::NoApplicationProtocol => HandshakeError::AlpnMismatch,
            rustls::Error::AlertReceived(alert) => HandshakeError::PeerAlert(alert),
            other => HandshakeError::Protocol(other),
        }
    }
}
