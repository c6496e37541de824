//! A throwaway PKI for tests and benches: a CA and SPIFFE workload
//! certificates made by rcgen, with validity periods exact to the second.
//!
//! Shared by `needle-core`'s tests, `needle-io`'s tests and `needle-bench`
//! (included with `#[path]`).
#![allow(dead_code, unreachable_pub)]

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// The tests' "now": 2025-06-15T14:13:20Z, in seconds since the epoch.
pub const T0: u64 = 1_750_000_000;
pub const DAY: u64 = 86_400;

/// A wall-clock time `secs` after the epoch, as rustls wants it.
pub fn unix(secs: u64) -> rustls::pki_types::UnixTime {
    rustls::pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(secs))
}

fn at(secs: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap()).unwrap()
}

/// A certificate authority: its PEM (for trust bundles) and its signing key.
pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
    /// What follows a leaf in its chain file: nothing for a root, the
    /// intermediate's own PEM (and its issuers') for an intermediate.
    chain_tail: String,
}

/// A workload's chain and key, as the files would hold them.
#[derive(Clone)]
pub struct Leaf {
    pub chain_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Ca {
    /// A self-signed CA valid from a year before [`T0`] to ten years after.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = at(T0 - 365 * DAY);
        params.not_after = at(T0 + 3650 * DAY);
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
            chain_tail: String::new(),
        }
    }

    /// An intermediate CA signed by this one, valid over `[not_before,
    /// not_after]`; its leaves' chains carry it.
    pub fn intermediate(&self, name: &str, not_before: u64, not_after: u64) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = at(not_before);
        params.not_after = at(not_after);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Ca {
            pem: cert.pem(),
            chain_tail: format!("{}{}", cert.pem(), self.chain_tail),
            issuer: Issuer::new(params, key),
        }
    }

    /// A workload certificate for `spiffe_id` valid over `[not_before, not_after]`.
    pub fn leaf_valid(&self, spiffe_id: &str, not_before: u64, not_after: u64) -> Leaf {
        let sans = if spiffe_id.is_empty() {
            vec![]
        } else {
            vec![SanType::URI(spiffe_id.try_into().unwrap())]
        };
        self.leaf_with_sans(sans, not_before, not_after)
    }

    /// A workload certificate valid for a day around [`T0`].
    pub fn leaf(&self, spiffe_id: &str) -> Leaf {
        self.leaf_valid(spiffe_id, T0 - DAY, T0 + DAY)
    }

    /// Loaded credentials (ring provider, checked at [`T0`]) for a fresh
    /// workload certificate naming `spiffe_id`, trusting this CA alone.
    pub fn credentials(&self, spiffe_id: &str) -> needle_core::tls::Credentials {
        let leaf = self.leaf(spiffe_id);
        needle_core::tls::Credentials::from_pem(
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
            leaf.chain_pem.as_bytes(),
            leaf.key_pem.as_bytes(),
            self.pem.as_bytes(),
            unix(T0),
        )
        .unwrap()
    }

    pub fn leaf_with_sans(&self, sans: Vec<SanType>, not_before: u64, not_after: u64) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "workload");
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = at(not_before);
        params.not_after = at(not_after);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.chain_tail),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}
