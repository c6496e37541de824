//! # Reading an identity out of a certificate
//!
//! rustls (through webpki) checks a chain's signatures, validity and key
//! usage, but it does not expose a certificate's URI subject alternative
//! names, which is where an X509-SVID keeps its SPIFFE ID. For that Needle
//! uses [`x509_parser`]: it is the maintained, widely used X.509 parser of the
//! Rusticata project (also what rcgen uses to read certificates), it is pure
//! Rust built on `nom` with no unsafe code in the parser itself, it parses
//! zero-copy from the DER rustls already holds, and it needs no crypto
//! backend (Needle only reads fields here; rustls verifies signatures).
//!
//! This module never decides trust, only what a certificate says. A peer's
//! leaf is read before its chain is verified, to pick the trust domain whose
//! bundle must verify it (see [`verify`](crate::tls::verify)); nothing it
//! says is believed until that verification succeeds.

use rustls_pki_types::{CertificateDer, UnixTime};
use x509_parser::extensions::GeneralName;

use super::{SpiffeId, SpiffeIdError};

/// What Needle needs to know about a workload certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The SPIFFE ID from the URI SAN.
    pub identity: SpiffeId,
    /// Start of validity.
    pub not_before: UnixTime,
    /// End of validity: what metrics watch to warn before it lapses.
    pub not_after: UnixTime,
}

/// Why a certificate does not carry a usable SPIFFE identity.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CertIdentityError {
    /// The DER does not parse as an X.509 certificate.
    #[error("certificate is not valid X.509 DER: {0}")]
    Malformed(String),
    /// There is no URI subject alternative name.
    #[error("certificate has no URI subject alternative name (no SPIFFE ID)")]
    NoUriSan,
    /// There is more than one URI SAN; an X509-SVID has exactly one.
    #[error("certificate has {count} URI subject alternative names; an X509-SVID has exactly one")]
    MultipleUriSans {
        /// How many there are.
        count: usize,
    },
    /// The URI SAN is not a valid Needle workload SPIFFE ID.
    #[error("certificate's URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    InvalidSpiffeId {
        /// The URI found.
        uri: String,
        /// Why it was refused.
        reason: SpiffeIdError,
    },
}

/// The certificate's public key: the `subjectPublicKey` bits of its
/// SubjectPublicKeyInfo, what a rustls `SignatureVerificationAlgorithm`
/// verifies with.
pub(crate) fn subject_public_key(der: &CertificateDer<'_>) -> Result<Vec<u8>, CertIdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| CertIdentityError::Malformed(e.to_string()))?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

/// Reads the SPIFFE ID and validity period of a certificate.
pub fn inspect(der: &CertificateDer<'_>) -> Result<CertInfo, CertIdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref())
        .map_err(|e| CertIdentityError::Malformed(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertIdentityError::Malformed(e.to_string()))?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|ext| ext.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [] => return Err(CertIdentityError::NoUriSan),
        [one] => *one,
        many => return Err(CertIdentityError::MultipleUriSans { count: many.len() }),
    };
    let identity = SpiffeId::parse(uri).map_err(|reason| CertIdentityError::InvalidSpiffeId {
        uri: uri.to_owned(),
        reason,
    })?;
    let validity = cert.validity();
    Ok(CertInfo {
        identity,
        not_before: unix(validity.not_before.timestamp()),
        not_after: unix(validity.not_after.timestamp()),
    })
}

/// Seconds since the epoch as a [`UnixTime`]; dates before 1970 clamp to it.
fn unix(secs: i64) -> UnixTime {
    UnixTime::since_unix_epoch(core::time::Duration::from_secs(
        u64::try_from(secs).unwrap_or(0),
    ))
}
