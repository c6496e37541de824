//! # The certificate checks, and the rustls configurations that use them
//!
//! A mesh does not name servers by DNS: it names workloads by SPIFFE ID. So
//! instead of rustls's stock `WebPkiServerVerifier` (which matches the
//! server name against DNS SANs) the client uses [`SpiffeServerVerifier`]:
//! webpki's chain, validity and key-usage checks, then a comparison of the
//! certificate's SPIFFE ID with the identity discovery expects. The server
//! uses rustls's `WebPkiClientVerifier` wrapped in [`SpiffeClientVerifier`],
//! which additionally refuses a trusted certificate that carries no usable
//! SPIFFE ID: an identity-less peer must not reach authorization as
//! "authenticated".
//!
//! ## One trust bundle per trust domain
//!
//! An X509-SVID is only valid when the bundle of *its own* trust domain
//! verifies it: a CA trusted for `partner.example` must not be able to mint
//! `spiffe://cluster.local/...`. So both verifiers read the SPIFFE ID of the
//! peer's leaf first, pick that trust domain's bundle ([`TrustBundles`]),
//! and verify the chain against it alone. Needle loads exactly one bundle,
//! the local workload's trust domain's; a peer from any other trust domain
//! is refused with
//! [`HandshakeError::ForeignTrustDomain`](super::HandshakeError::ForeignTrustDomain)
//! whatever CA signed it. Federation means adding bundles for other
//! domains here (future work); the lookup is already per domain.
//!
//! [`client_config`] and [`server_config`] build the rustls configurations
//! that [`Session`](super::Session) drives; they are public so a data plane
//! that prefers tokio-rustls gets exactly the same checks.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, NoServerSessionStorage, ParsedCertificate, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::time_provider::TimeProvider;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, ServerConfig,
    SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::error::IdentityRejection;
use super::{Alpn, Credentials, SetupError};
use crate::identity::{SpiffeId, TrustDomain, sni, x509};

/// One trust domain's anchors, and rustls's client-certificate check built
/// on them.
#[derive(Debug)]
pub(crate) struct DomainBundle {
    pub(crate) roots: Arc<RootCertStore>,
    pub(crate) client: Arc<dyn ClientCertVerifier>,
}

/// The trust bundles a workload verifies peers with, by trust domain.
///
/// Today exactly one: the local workload's own trust domain's (the bundle
/// file). A peer is verified only by the bundle of the trust domain its
/// SPIFFE ID names; federation would add more domains here.
#[derive(Debug)]
pub(crate) struct TrustBundles {
    domain: TrustDomain,
    local: DomainBundle,
}

impl TrustBundles {
    /// `bundle` for the local trust domain `domain`, and nothing else.
    pub(crate) fn local_only(domain: TrustDomain, bundle: DomainBundle) -> Self {
        TrustBundles {
            domain,
            local: bundle,
        }
    }

    /// The local trust domain's bundle.
    pub(crate) fn local(&self) -> &DomainBundle {
        &self.local
    }

    /// The bundle that may verify a certificate naming `peer`, or why there
    /// is none.
    fn for_peer(&self, peer: &SpiffeId) -> Result<&DomainBundle, rustls::Error> {
        if peer.trust_domain() == self.domain.as_str() {
            Ok(&self.local)
        } else {
            Err(IdentityRejection::ForeignTrustDomain {
                expected: self.domain.clone(),
                found: peer.to_trust_domain(),
            }
            .into_rustls())
        }
    }
}

/// A rustls `TimeProvider` that tells the time it was last given.
///
/// This is how verification uses the time passed in rather than a clock: a
/// [`Session`](super::Session) sets it before every call into rustls. Whole
/// seconds are enough: certificate validity is stated in seconds.
#[derive(Debug, Default)]
pub struct InputClock(AtomicU64);

impl InputClock {
    /// A clock showing `now`.
    pub fn new(now: UnixTime) -> Self {
        InputClock(AtomicU64::new(now.as_secs()))
    }

    /// Sets the time it shows.
    pub fn set(&self, now: UnixTime) {
        self.0.store(now.as_secs(), Ordering::Relaxed);
    }

    /// The time it shows.
    pub fn get(&self) -> UnixTime {
        UnixTime::since_unix_epoch(core::time::Duration::from_secs(
            self.0.load(Ordering::Relaxed),
        ))
    }
}

impl TimeProvider for InputClock {
    fn current_time(&self) -> Option<UnixTime> {
        Some(self.get())
    }
}

/// The client's check of the server: a leaf naming a SPIFFE ID of a trust
/// domain we hold a bundle for, chaining to that bundle, valid at the
/// session's time, and naming the expected SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    bundles: Arc<TrustBundles>,
    provider: Arc<CryptoProvider>,
    expected: SpiffeId,
}

impl SpiffeServerVerifier {
    /// Checks servers against `creds`'s trust bundle, expecting `expected`.
    pub fn new(creds: &Credentials, expected: SpiffeId) -> Self {
        SpiffeServerVerifier {
            bundles: creds.bundles().clone(),
            provider: creds.provider().clone(),
            expected,
        }
    }

    fn verify_chain(
        &self,
        cert: &ParsedCertificate<'_>,
        roots: &RootCertStore,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            cert,
            roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        // The name is the SNI encoding of `expected`; the SPIFFE ID itself
        // is what gets compared, below.
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        // The leaf's claimed identity picks the bundle; the claim is only
        // believed once that bundle has verified the chain.
        let found = match x509::inspect(end_entity) {
            Ok(info) => info.identity,
            Err(e) => {
                // A stranger's certificate is an unknown issuer first.
                self.verify_chain(&cert, &self.bundles.local().roots, intermediates, now)?;
                return Err(IdentityRejection::Unusable(e).into_rustls());
            }
        };
        let bundle = self.bundles.for_peer(&found)?;
        self.verify_chain(&cert, &bundle.roots, intermediates, now)?;
        if found != self.expected {
            return Err(IdentityRejection::Mismatch {
                expected: self.expected.clone(),
                found,
            }
            .into_rustls());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Unreachable with TLS 1.3-only configurations; correct regardless.
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server's check of the client: a usable SPIFFE ID in the leaf, of a
/// trust domain we hold a bundle for, and rustls's webpki client
/// verification (mandatory client certificate) against that bundle.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    bundles: Arc<TrustBundles>,
}

impl SpiffeClientVerifier {
    pub(crate) fn new(bundles: Arc<TrustBundles>) -> Self {
        SpiffeClientVerifier { bundles }
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: every Needle client has exactly one certificate, and the
        // list would only grow the CertificateRequest.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // As for servers: the claimed identity picks the bundle, which must
        // then verify the chain.
        match x509::inspect(end_entity) {
            Ok(info) => self
                .bundles
                .for_peer(&info.identity)?
                .client
                .verify_client_cert(end_entity, intermediates, now),
            Err(e) => {
                // A stranger's certificate is an unknown issuer first.
                self.bundles
                    .local()
                    .client
                    .verify_client_cert(end_entity, intermediates, now)?;
                Err(IdentityRejection::Unusable(e).into_rustls())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.bundles
            .local()
            .client
            .verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.bundles
            .local()
            .client
            .verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.bundles.local().client.supported_verify_schemes()
    }
}

/// Presents the local workload's certificate, as a client.
#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for ClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Presents the local workload's certificate, as a server, but only to a
/// ClientHello whose SNI addresses the local workload (see
/// [`sni`](crate::identity::sni)). Any other SNI is refused, and recorded so
/// the session can say why.
#[derive(Debug)]
pub(crate) struct LocalServerCert {
    key: Arc<CertifiedKey>,
    local: SpiffeId,
    refused_sni: Arc<OnceLock<Option<String>>>,
}

impl ResolvesServerCert for LocalServerCert {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = client_hello.server_name();
        if sni.is_some_and(|name| sni::is_local(name, &self.local)) {
            return Some(self.key.clone());
        }
        let _ = self.refused_sni.set(sni.map(str::to_owned));
        None
    }
}

/// The rustls client configuration for dialing the workload `target`.
///
/// TLS 1.3 only, the client presents `creds`' certificate, verifies the
/// server with [`SpiffeServerVerifier`], offers `offer` by ALPN, and never
/// resumes (see the module docs). `time` is the clock certificates are
/// judged by: an [`InputClock`] in the core, the runtime's clock in io.
pub fn client_config(
    creds: &Credentials,
    target: &SpiffeId,
    offer: &[Alpn],
    time: Arc<dyn TimeProvider>,
) -> Result<ClientConfig, SetupError> {
    if offer.is_empty() {
        return Err(SetupError::NoAlpn);
    }
    let mut config = ClientConfig::builder_with_details(creds.provider().clone(), time)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(SetupError::Provider)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            creds,
            target.clone(),
        )))
        .with_client_cert_resolver(Arc::new(ClientCert(creds.certified_key().clone())));
    config.alpn_protocols = Alpn::wire_list(offer);
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// The rustls server configuration for the local workload's inbound side.
///
/// TLS 1.3 only, client certificates mandatory and checked by
/// [`SpiffeClientVerifier`], only ClientHellos addressed to the local
/// identity's server name are answered, ALPN restricted to `accept`, no
/// session tickets or cache.
pub fn server_config(
    creds: &Credentials,
    accept: &[Alpn],
    time: Arc<dyn TimeProvider>,
) -> Result<ServerConfig, SetupError> {
    server_config_with_slot(creds, accept, time, Arc::default())
}

pub(crate) fn server_config_with_slot(
    creds: &Credentials,
    accept: &[Alpn],
    time: Arc<dyn TimeProvider>,
    refused_sni: Arc<OnceLock<Option<String>>>,
) -> Result<ServerConfig, SetupError> {
    if accept.is_empty() {
        return Err(SetupError::NoAlpn);
    }
    let mut config = ServerConfig::builder_with_details(creds.provider().clone(), time)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(SetupError::Provider)?
        .with_client_cert_verifier(creds.client_verifier().clone())
        .with_cert_resolver(Arc::new(LocalServerCert {
            key: creds.certified_key().clone(),
            local: creds.identity().clone(),
            refused_sni,
        }));
    config.alpn_protocols = Alpn::wire_list(accept);
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}
