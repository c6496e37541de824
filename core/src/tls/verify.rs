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
use crate::identity::{SpiffeId, sni, x509};

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

/// The client's check of the server: a chain to the trust bundle, valid at
/// the session's time, whose leaf names the expected SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    expected: SpiffeId,
}

impl SpiffeServerVerifier {
    /// Checks servers against `creds`'s trust bundle, expecting `expected`.
    pub fn new(creds: &Credentials, expected: SpiffeId) -> Self {
        SpiffeServerVerifier {
            roots: creds.roots().clone(),
            provider: creds.provider().clone(),
            expected,
        }
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
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        let found = x509::inspect(end_entity)
            .map_err(|e| IdentityRejection::Unusable(e).into_rustls())?
            .identity;
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

/// The server's check of the client: rustls's webpki client verification
/// (mandatory client certificate), plus a usable SPIFFE ID in the leaf.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
}

impl SpiffeClientVerifier {
    pub(crate) fn new(inner: Arc<dyn ClientCertVerifier>) -> Self {
        SpiffeClientVerifier { inner }
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
        let verified = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        x509::inspect(end_entity).map_err(|e| IdentityRejection::Unusable(e).into_rustls())?;
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
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
