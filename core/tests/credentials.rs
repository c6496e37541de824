//! Loading credentials from PEM bytes: each broken input has its own error,
//! and the rotation store keeps serving the old credentials when new files
//! are broken.
#![cfg(feature = "tls")]

mod common;

use std::time::Duration;

use common::*;
use needle_core::identity::x509::CertIdentityError;
use needle_core::time::Instant;
use needle_core::tls::{
    CredentialStore, Credentials, CredentialsError, Fingerprint, PemSource, Reload,
};

fn load(chain: &str, key: &str, bundle: &str, now: u64) -> Result<Credentials, CredentialsError> {
    Credentials::from_pem(
        provider(),
        chain.as_bytes(),
        key.as_bytes(),
        bundle.as_bytes(),
        unix(now),
    )
}

#[test]
fn good_files_load_and_expose_identity_and_expiry() {
    let ca = Ca::new("ca");
    let leaf = ca.leaf_valid(WEB, T0 - 10, T0 + 3600);
    let creds = load(&leaf.chain_pem, &leaf.key_pem, &ca.pem, T0).unwrap();
    assert_eq!(creds.identity(), &id(WEB));
    assert_eq!(creds.not_after(), unix(T0 + 3600));
    assert_eq!(creds.not_before(), unix(T0 - 10));
}

#[test]
fn malformed_pem_names_the_file() {
    let ca = Ca::new("ca");
    let leaf = ca.leaf(WEB);
    let truncated = &leaf.chain_pem[..leaf.chain_pem.len() - 30];
    assert!(matches!(
        load(truncated, &leaf.key_pem, &ca.pem, T0),
        Err(CredentialsError::MalformedPem {
            file: PemSource::CertificateChain,
            ..
        })
    ));
    let bad_base64 = leaf.key_pem.replacen('M', "!", 1);
    assert!(matches!(
        load(&leaf.chain_pem, &bad_base64, &ca.pem, T0),
        Err(CredentialsError::MalformedPem {
            file: PemSource::PrivateKey,
            ..
        })
    ));
    let bad_bundle = ca.pem.replace("-----END CERTIFICATE-----", "");
    assert!(matches!(
        load(&leaf.chain_pem, &leaf.key_pem, &bad_bundle, T0),
        Err(CredentialsError::MalformedPem {
            file: PemSource::TrustBundle,
            ..
        })
    ));
}

#[test]
fn empty_files_say_what_is_missing() {
    let ca = Ca::new("ca");
    let leaf = ca.leaf(WEB);
    assert_eq!(
        load("", &leaf.key_pem, &ca.pem, T0).unwrap_err(),
        CredentialsError::EmptyChain
    );
    assert_eq!(
        load(&leaf.chain_pem, "", &ca.pem, T0).unwrap_err(),
        CredentialsError::NoPrivateKey
    );
    assert_eq!(
        load(&leaf.chain_pem, &leaf.key_pem, "", T0).unwrap_err(),
        CredentialsError::EmptyBundle
    );
    assert_eq!(
        load(&leaf.chain_pem, &leaf.key_pem, "# comments only\n", T0).unwrap_err(),
        CredentialsError::EmptyBundle
    );
}

#[test]
fn a_key_that_does_not_match_the_certificate_is_refused() {
    let ca = Ca::new("ca");
    let web = ca.leaf(WEB);
    let db = ca.leaf(DB);
    assert_eq!(
        load(&web.chain_pem, &db.key_pem, &ca.pem, T0).unwrap_err(),
        CredentialsError::KeyMismatch
    );
}

/// A ring key that, like an HSM-held one, cannot tell its public key.
#[derive(Debug)]
struct OpaqueKey(std::sync::Arc<dyn rustls::sign::SigningKey>);

impl rustls::sign::SigningKey for OpaqueKey {
    fn choose_scheme(
        &self,
        offered: &[rustls::SignatureScheme],
    ) -> Option<Box<dyn rustls::sign::Signer>> {
        self.0.choose_scheme(offered)
    }
    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        self.0.algorithm()
    }
    // `public_key` left at its default: None.
}

#[derive(Debug)]
struct OpaqueKeys;

impl rustls::crypto::KeyProvider for OpaqueKeys {
    fn load_private_key(
        &self,
        key: rustls::pki_types::PrivateKeyDer<'static>,
    ) -> Result<std::sync::Arc<dyn rustls::sign::SigningKey>, rustls::Error> {
        let inner = rustls::crypto::ring::default_provider()
            .key_provider
            .load_private_key(key)?;
        Ok(std::sync::Arc::new(OpaqueKey(inner)))
    }
}

fn opaque_key_provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    std::sync::Arc::new(rustls::crypto::CryptoProvider {
        key_provider: &OpaqueKeys,
        ..rustls::crypto::ring::default_provider()
    })
}

#[test]
fn a_mismatched_key_is_refused_even_when_the_provider_cannot_tell_its_public_key() {
    let ca = Ca::new("ca");
    let web = ca.leaf(WEB);
    let db = ca.leaf(DB);
    let provider = opaque_key_provider();
    let load_with = |chain: &str, key: &str| {
        Credentials::from_pem(
            provider.clone(),
            chain.as_bytes(),
            key.as_bytes(),
            ca.pem.as_bytes(),
            unix(T0),
        )
    };

    // This provider takes rustls's `keys_match` down its "don't know" path.
    let key = rustls::pki_types::pem::PemObject::from_pem_slice(db.key_pem.as_bytes()).unwrap();
    let signing = provider.key_provider.load_private_key(key).unwrap();
    assert_eq!(
        rustls::sign::CertifiedKey::new(vec![web.der.clone().into()], signing).keys_match(),
        Err(rustls::Error::InconsistentKeys(
            rustls::InconsistentKeys::Unknown
        ))
    );

    assert_eq!(
        load_with(&web.chain_pem, &db.key_pem).unwrap_err(),
        CredentialsError::KeyMismatch
    );
    let creds = load_with(&web.chain_pem, &web.key_pem).unwrap();
    assert_eq!(creds.identity(), &id(WEB));
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused_at_load() {
    let ca = Ca::new("ca");
    let leaf = ca.leaf_valid(WEB, T0 - 100, T0 + 100);
    assert!(load(&leaf.chain_pem, &leaf.key_pem, &ca.pem, T0 + 100).is_ok());
    assert_eq!(
        load(&leaf.chain_pem, &leaf.key_pem, &ca.pem, T0 + 101).unwrap_err(),
        CredentialsError::Expired {
            now: unix(T0 + 101),
            not_after: unix(T0 + 100)
        }
    );
    assert_eq!(
        load(&leaf.chain_pem, &leaf.key_pem, &ca.pem, T0 - 101).unwrap_err(),
        CredentialsError::NotYetValid {
            now: unix(T0 - 101),
            not_before: unix(T0 - 100)
        }
    );
}

#[test]
fn a_certificate_must_carry_exactly_one_valid_spiffe_id() {
    let ca = Ca::new("ca");
    let none = ca.leaf_valid("", T0 - DAY, T0 + DAY);
    assert_eq!(
        load(&none.chain_pem, &none.key_pem, &ca.pem, T0).unwrap_err(),
        CredentialsError::Identity(CertIdentityError::NoUriSan)
    );
    let bad = ca.leaf_valid("spiffe://cluster.local/web", T0 - DAY, T0 + DAY);
    assert!(matches!(
        load(&bad.chain_pem, &bad.key_pem, &ca.pem, T0).unwrap_err(),
        CredentialsError::Identity(CertIdentityError::InvalidSpiffeId { .. })
    ));
    let two = ca.leaf_with_sans(
        vec![
            rcgen::SanType::URI(WEB.try_into().unwrap()),
            rcgen::SanType::URI(DB.try_into().unwrap()),
        ],
        T0 - DAY,
        T0 + DAY,
    );
    assert_eq!(
        load(&two.chain_pem, &two.key_pem, &ca.pem, T0).unwrap_err(),
        CredentialsError::Identity(CertIdentityError::MultipleUriSans { count: 2 })
    );
}

#[test]
fn a_certificate_the_bundle_does_not_trust_is_refused() {
    let ca = Ca::new("ca");
    let other = Ca::new("other");
    let leaf = ca.leaf(WEB);
    assert!(matches!(
        load(&leaf.chain_pem, &leaf.key_pem, &other.pem, T0).unwrap_err(),
        CredentialsError::NotTrustedByBundle(_)
    ));
    // A bundle holding both CAs (mid CA rotation) is fine.
    let both = format!("{}{}", other.pem, ca.pem);
    assert!(load(&leaf.chain_pem, &leaf.key_pem, &both, T0).is_ok());
}

#[test]
fn errors_read_clearly() {
    assert_eq!(
        CredentialsError::KeyMismatch.to_string(),
        "private key does not match the leaf certificate"
    );
    assert_eq!(
        CredentialsError::EmptyBundle.to_string(),
        "trust bundle holds no CERTIFICATE"
    );
}

#[test]
fn a_broken_rotation_keeps_the_old_credentials_until_the_files_change_again() {
    let ca = Ca::new("ca");
    let first = ca.leaf(WEB);
    let second = ca.leaf_valid(WEB, T0 - 10, T0 + 2 * DAY);
    let poll = Duration::from_secs(5);
    let mut store = CredentialStore::new(
        creds(&first, &ca.pem),
        Fingerprint::from_raw(1),
        poll,
        Instant::ZERO,
    );
    let before = store.current().clone();

    // New cert written, key not yet: refused, old credentials still served.
    assert_eq!(
        store.handle_fingerprint(Instant::from_secs(5), Fingerprint::from_raw(2)),
        Reload::Read
    );
    let err = store
        .handle_files(
            Fingerprint::from_raw(2),
            second.chain_pem.as_bytes(),
            first.key_pem.as_bytes(),
            ca.pem.as_bytes(),
            unix(T0),
        )
        .unwrap_err();
    assert_eq!(err, CredentialsError::KeyMismatch);
    assert!(std::sync::Arc::ptr_eq(store.current(), &before));
    assert_eq!(store.generation(), 0);
    // Not retried while the files stay as they are...
    assert_eq!(store.poll_timeout(), Instant::from_secs(10));
    assert_eq!(
        store.handle_fingerprint(Instant::from_secs(10), Fingerprint::from_raw(2)),
        Reload::Unchanged
    );
    // ...and picked up once the key arrives.
    assert_eq!(
        store.handle_fingerprint(Instant::from_secs(15), Fingerprint::from_raw(3)),
        Reload::Read
    );
    let rotated = store
        .handle_files(
            Fingerprint::from_raw(3),
            second.chain_pem.as_bytes(),
            second.key_pem.as_bytes(),
            ca.pem.as_bytes(),
            unix(T0),
        )
        .unwrap();
    assert_eq!(rotated.generation, 1);
    assert_eq!(rotated.not_after, unix(T0 + 2 * DAY));
    assert_eq!(store.not_after(), unix(T0 + 2 * DAY));
    // Whoever held the old Arc (an established session) still has it.
    assert_eq!(before.not_after(), unix(T0 + DAY));
}

/// A store holding `ca`'s day-long `WEB` certificate, polled every 5 s
/// from monotonic zero.
fn store_with_first_cert(ca: &Ca) -> CredentialStore {
    CredentialStore::new(
        creds(&ca.leaf(WEB), &ca.pem),
        Fingerprint::from_raw(1),
        Duration::from_secs(5),
        Instant::ZERO,
    )
}

#[test]
fn a_renewal_that_is_not_yet_valid_at_load_is_retried_until_it_is() {
    // cert-manager sets not_before to the issue time; this node's clock is
    // ten seconds behind the issuer's.
    let ca = Ca::new("ca");
    let renewed = ca.leaf_valid(WEB, T0 + 10, T0 + 2 * DAY);
    let fp = Fingerprint::of_contents(&[renewed.chain_pem.as_bytes(), renewed.key_pem.as_bytes()]);
    let mut store = store_with_first_cert(&ca);
    let before = store.current().clone();

    assert_eq!(
        store.handle_fingerprint(Instant::from_secs(5), fp),
        Reload::Read
    );
    let err = store
        .handle_files(
            fp,
            renewed.chain_pem.as_bytes(),
            renewed.key_pem.as_bytes(),
            ca.pem.as_bytes(),
            unix(T0),
        )
        .unwrap_err();
    assert_eq!(
        err,
        CredentialsError::NotYetValid {
            now: unix(T0),
            not_before: unix(T0 + 10)
        }
    );
    assert!(err.is_retryable());
    assert!(std::sync::Arc::ptr_eq(store.current(), &before));

    // Ten seconds later the same files are read again, and now load.
    assert_eq!(
        store.handle_fingerprint(Instant::from_secs(15), fp),
        Reload::Read
    );
    let rotated = store
        .handle_files(
            fp,
            renewed.chain_pem.as_bytes(),
            renewed.key_pem.as_bytes(),
            ca.pem.as_bytes(),
            unix(T0 + 10),
        )
        .unwrap();
    assert_eq!(rotated.generation, 1);
    assert_eq!(store.not_after(), unix(T0 + 2 * DAY));
    assert_eq!(
        store.handle_fingerprint(Instant::from_secs(20), fp),
        Reload::Unchanged
    );
}

#[test]
fn a_chain_with_a_not_yet_valid_intermediate_is_retried_too() {
    let root = Ca::new("root");
    // A freshly issued intermediate, and a leaf it signed (backdated).
    let intermediate = root.intermediate("intermediate", T0 + 10, T0 + 365 * DAY);
    let renewed = intermediate.leaf_valid(WEB, T0 - 60, T0 + DAY);
    let mut store = store_with_first_cert(&root);
    let fp = Fingerprint::from_raw(2);

    assert_eq!(
        store.handle_fingerprint(Instant::from_secs(5), fp),
        Reload::Read
    );
    let err = store
        .handle_files(
            fp,
            renewed.chain_pem.as_bytes(),
            renewed.key_pem.as_bytes(),
            root.pem.as_bytes(),
            unix(T0),
        )
        .unwrap_err();
    assert!(
        matches!(err, CredentialsError::NotTrustedByBundle(_)),
        "{err:?}"
    );
    assert!(err.is_retryable(), "{err:?}");
    assert_eq!(
        store.handle_fingerprint(Instant::from_secs(10), fp),
        Reload::Read
    );
    let rotated = store
        .handle_files(
            fp,
            renewed.chain_pem.as_bytes(),
            renewed.key_pem.as_bytes(),
            root.pem.as_bytes(),
            unix(T0 + 10),
        )
        .unwrap();
    assert_eq!(rotated.generation, 1);
}

#[test]
fn an_expired_certificate_is_not_retried_until_the_files_change() {
    let ca = Ca::new("ca");
    let stale = ca.leaf_valid(WEB, T0 - 2 * DAY, T0 - 1);
    let mut store = store_with_first_cert(&ca);
    let fp = Fingerprint::from_raw(2);
    assert_eq!(
        store.handle_fingerprint(Instant::from_secs(5), fp),
        Reload::Read
    );
    let err = store
        .handle_files(
            fp,
            stale.chain_pem.as_bytes(),
            stale.key_pem.as_bytes(),
            ca.pem.as_bytes(),
            unix(T0),
        )
        .unwrap_err();
    assert!(matches!(err, CredentialsError::Expired { .. }), "{err:?}");
    assert!(!err.is_retryable());
    assert_eq!(
        store.handle_fingerprint(Instant::from_secs(10), fp),
        Reload::Unchanged
    );
}

#[test]
fn content_fingerprints_change_with_any_byte() {
    let a = Fingerprint::of_contents(&[b"cert", b"key"]);
    assert_eq!(a, Fingerprint::of_contents(&[b"cert", b"key"]));
    assert_ne!(a, Fingerprint::of_contents(&[b"cert", b"kez"]));
    // File boundaries count: moving a byte between files is a change.
    assert_ne!(a, Fingerprint::of_contents(&[b"cer", b"tkey"]));
}
