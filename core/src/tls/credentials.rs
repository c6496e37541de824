//! # The local workload's credentials, from PEM bytes
//!
//! SPIRE agents and cert-manager's CSI driver write three PEM files: the
//! certificate chain (leaf first), the private key, and the trust bundle: the
//! CA certificates of the local workload's own trust domain (the one in its
//! SPIFFE ID), possibly several during a CA rotation. The bundle vouches for
//! that trust domain only: a peer whose SPIFFE ID names another trust domain
//! is refused whichever CA signed it (see [`verify`](super::verify); a CA of
//! a federated partner must not go into this file). The io layer
//! reads the files; this module turns their bytes into [`Credentials`], or
//! says exactly what is wrong with them. Everything that can be checked
//! before the first handshake is checked here, so a broken file is a clear
//! start-up (or rotation) error rather than a stream of failed connections:
//! the key matches the certificate, the certificate carries a SPIFFE ID, it
//! is valid now, and it chains to the trust bundle.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::sign::{CertifiedKey, SigningKey};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, UnixTime};

use super::verify::{DomainBundle, SpiffeClientVerifier, TrustBundles};
use crate::identity::SpiffeId;
use crate::identity::x509::{self, CertIdentityError, CertInfo};

/// Which of the three files an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PemSource {
    /// The certificate chain.
    CertificateChain,
    /// The private key.
    PrivateKey,
    /// The trust bundle.
    TrustBundle,
}

/// Why credentials could not be loaded.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialsError {
    /// A file is not valid PEM (bad base64, an unterminated section, ...).
    #[error("{file:?} is not valid PEM: {detail}")]
    MalformedPem {
        /// Which file.
        file: PemSource,
        /// What the PEM parser said.
        detail: String,
    },
    /// The chain file holds no certificate.
    #[error("certificate chain file holds no CERTIFICATE")]
    EmptyChain,
    /// The key file holds no private key.
    #[error("private key file holds no PRIVATE KEY")]
    NoPrivateKey,
    /// The crypto provider cannot use the key (unsupported type or curve).
    #[error("private key is unusable: {0}")]
    UnsupportedKey(rustls::Error),
    /// The private key is not the one the leaf certificate certifies.
    #[error("private key does not match the leaf certificate")]
    KeyMismatch,
    /// The trust bundle holds no certificate.
    #[error("trust bundle holds no CERTIFICATE")]
    EmptyBundle,
    /// A trust bundle certificate cannot be used as a trust anchor.
    #[error("trust bundle certificate #{index} is not a usable CA: {detail}")]
    InvalidTrustAnchor {
        /// Its position in the file, from 0.
        index: usize,
        /// Why.
        detail: String,
    },
    /// The leaf certificate does not carry a usable SPIFFE ID.
    #[error(transparent)]
    Identity(#[from] CertIdentityError),
    /// The leaf certificate has expired.
    #[error("certificate expired (now {now:?}, not after {not_after:?})")]
    Expired {
        /// The time given.
        now: UnixTime,
        /// The end of its validity.
        not_after: UnixTime,
    },
    /// The leaf certificate is not valid yet.
    #[error("certificate not yet valid (now {now:?}, not before {not_before:?})")]
    NotYetValid {
        /// The time given.
        now: UnixTime,
        /// The start of its validity.
        not_before: UnixTime,
    },
    /// The chain does not verify against the trust bundle (at `now`): peers
    /// with the same bundle would refuse it.
    #[error("certificate chain is not trusted by the bundle: {0}")]
    NotTrustedByBundle(rustls::Error),
}

impl CredentialsError {
    /// Whether the same files may load at a later time: the leaf, or a
    /// certificate in its chain, is not valid *yet*. Renewed certificates
    /// usually start at their issue time, so a node whose clock is slightly
    /// behind the issuer's sees them as not yet valid for a moment.
    /// [`CredentialStore`](super::CredentialStore) retries such files on
    /// every poll instead of waiting for them to change.
    ///
    /// Expiry is not retryable: time does not run backwards.
    pub fn is_retryable(&self) -> bool {
        match self {
            CredentialsError::NotYetValid { .. } => true,
            CredentialsError::NotTrustedByBundle(rustls::Error::InvalidCertificate(e)) => {
                matches!(
                    e,
                    rustls::CertificateError::NotValidYet
                        | rustls::CertificateError::NotValidYetContext { .. }
                )
            }
            _ => false,
        }
    }
}

/// A workload's certificate, key and trust bundle, parsed and cross-checked.
///
/// Cheap to share: handshakes hold an `Arc<Credentials>` and rotation swaps
/// the `Arc`, so a connection keeps the credentials it started with.
#[derive(Debug)]
pub struct Credentials {
    provider: Arc<CryptoProvider>,
    certified_key: Arc<CertifiedKey>,
    bundles: Arc<TrustBundles>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    info: CertInfo,
}

impl Credentials {
    /// Parses and checks the three PEM files' contents at wall-clock `now`.
    ///
    /// `bundle_pem` is the trust bundle of the leaf's own trust domain: it
    /// verifies peers of that trust domain and no other.
    pub fn from_pem(
        provider: Arc<CryptoProvider>,
        chain_pem: &[u8],
        key_pem: &[u8],
        bundle_pem: &[u8],
        now: UnixTime,
    ) -> Result<Self, CredentialsError> {
        let chain = parse_certs(chain_pem, PemSource::CertificateChain)?;
        let leaf = chain.first().ok_or(CredentialsError::EmptyChain)?.clone();
        let key = parse_key(key_pem)?;
        let signing_key = provider
            .key_provider
            .load_private_key(key)
            .map_err(CredentialsError::UnsupportedKey)?;
        let certified_key = CertifiedKey::new(chain, signing_key);
        match certified_key.keys_match() {
            Ok(()) => {}
            // The provider's key cannot tell its public key: prove it.
            Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
                prove_possession(&provider, &*certified_key.key, &leaf)?;
            }
            Err(rustls::Error::InconsistentKeys(_)) => return Err(CredentialsError::KeyMismatch),
            Err(e) => return Err(CredentialsError::UnsupportedKey(e)),
        }

        let info = x509::inspect(&leaf)?;
        if now.as_secs() > info.not_after.as_secs() {
            return Err(CredentialsError::Expired {
                now,
                not_after: info.not_after,
            });
        }
        if now.as_secs() < info.not_before.as_secs() {
            return Err(CredentialsError::NotYetValid {
                now,
                not_before: info.not_before,
            });
        }

        let roots = Arc::new(parse_bundle(bundle_pem)?);
        let parsed =
            ParsedCertificate::try_from(&leaf).map_err(CredentialsError::NotTrustedByBundle)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            certified_key.cert.get(1..).unwrap_or_default(),
            now,
            provider.signature_verification_algorithms.all,
        )
        .map_err(CredentialsError::NotTrustedByBundle)?;

        let webpki = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            // The builder only fails without anchors (no CRLs are given),
            // which the bundle check above already rules out.
            .map_err(|_| CredentialsError::EmptyBundle)?;
        let bundles = Arc::new(TrustBundles::local_only(
            info.identity.to_trust_domain(),
            DomainBundle {
                roots,
                client: webpki,
            },
        ));
        Ok(Credentials {
            provider,
            certified_key: Arc::new(certified_key),
            client_verifier: Arc::new(SpiffeClientVerifier::new(bundles.clone())),
            bundles,
            info,
        })
    }

    /// The local workload's identity, from its certificate.
    pub fn identity(&self) -> &SpiffeId {
        &self.info.identity
    }

    /// When the leaf certificate stops being valid: metrics export this so
    /// operators are warned before it lapses.
    pub fn not_after(&self) -> UnixTime {
        self.info.not_after
    }

    /// When the leaf certificate became valid.
    pub fn not_before(&self) -> UnixTime {
        self.info.not_before
    }

    /// The crypto provider handshakes with these credentials use.
    pub fn provider(&self) -> &Arc<CryptoProvider> {
        &self.provider
    }

    /// The certificate chain and signing key.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// The trust anchors of the local workload's trust domain, the only
    /// one whose peers are accepted.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.bundles.local().roots
    }

    pub(crate) fn bundles(&self) -> &Arc<TrustBundles> {
        &self.bundles
    }

    pub(crate) fn client_verifier(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.client_verifier
    }
}

/// Checks that `key` is the private half of `leaf`'s public key by signing a
/// fixed message with it and verifying the signature with the certificate's
/// key, using the provider's own algorithms. This is how a key whose
/// provider cannot derive its public key (rustls's `keys_match` answers
/// `InconsistentKeys::Unknown`, e.g. a key held in an HSM) is still refused
/// when it does not match, rather than loading and failing every handshake.
fn prove_possession(
    provider: &CryptoProvider,
    key: &dyn SigningKey,
    leaf: &CertificateDer<'_>,
) -> Result<(), CredentialsError> {
    const MESSAGE: &[u8] = b"needle: does this private key match its certificate?";
    let algorithms = &provider.signature_verification_algorithms;
    let signer = key
        .choose_scheme(&algorithms.supported_schemes())
        .ok_or_else(|| {
            CredentialsError::UnsupportedKey(rustls::Error::General(
                "the key signs with no scheme the crypto provider verifies".into(),
            ))
        })?;
    let signature = signer
        .sign(MESSAGE)
        .map_err(CredentialsError::UnsupportedKey)?;
    let public_key = x509::subject_public_key(leaf)?;
    let scheme = signer.scheme();
    let verified = algorithms
        .mapping
        .iter()
        .filter(|(s, _)| *s == scheme)
        .flat_map(|(_, algs)| algs.iter())
        .any(|alg| {
            alg.verify_signature(&public_key, MESSAGE, &signature)
                .is_ok()
        });
    if verified {
        Ok(())
    } else {
        Err(CredentialsError::KeyMismatch)
    }
}

fn parse_certs(
    pem: &[u8],
    source: PemSource,
) -> Result<Vec<CertificateDer<'static>>, CredentialsError> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CredentialsError::MalformedPem {
            file: source,
            detail: e.to_string(),
        })
}

fn parse_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, CredentialsError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => Err(CredentialsError::NoPrivateKey),
        Err(e) => Err(CredentialsError::MalformedPem {
            file: PemSource::PrivateKey,
            detail: e.to_string(),
        }),
    }
}

fn parse_bundle(pem: &[u8]) -> Result<RootCertStore, CredentialsError> {
    let certs = parse_certs(pem, PemSource::TrustBundle)?;
    if certs.is_empty() {
        return Err(CredentialsError::EmptyBundle);
    }
    let mut roots = RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| CredentialsError::InvalidTrustAnchor {
                index,
                detail: e.to_string(),
            })?;
    }
    Ok(roots)
}
