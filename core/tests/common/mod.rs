//! Test support: a PKI and a pair harness.
#![allow(dead_code, unreachable_pub)]

pub mod pair;
pub mod pki;

use std::sync::Arc;

use needle_core::identity::SpiffeId;
use needle_core::tls::Credentials;
use rustls::crypto::CryptoProvider;

pub use pki::{Ca, DAY, Leaf, T0, unix};

pub const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
pub const DB: &str = "spiffe://cluster.local/ns/default/sa/db";

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

/// Credentials for `leaf` trusting `bundle`, loaded at `T0`.
pub fn creds(leaf: &Leaf, bundle: &str) -> Credentials {
    creds_at(leaf, bundle, T0)
}

pub fn creds_at(leaf: &Leaf, bundle: &str, now: u64) -> Credentials {
    Credentials::from_pem(
        provider(),
        leaf.chain_pem.as_bytes(),
        leaf.key_pem.as_bytes(),
        bundle.as_bytes(),
        unix(now),
    )
    .unwrap()
}
