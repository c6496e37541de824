//! # How a TLS server name names a workload identity
//!
//! A client proxy dialing a meshed endpoint puts the endpoint's identity in
//! the TLS ServerName (SNI) of its ClientHello, spelled as a DNS name:
//!
//! ```text
//! spiffe://cluster.local/ns/default/sa/web  ──►  web.default.sa.needle.cluster.local
//!          └trust domain┘   └ns──┘    └sa┘       └sa┘└ns──┘ └marker─┘ └trust domain┘
//! ```
//!
//! Why this shape:
//! - **It is a valid DNS name**, which SNI must be (RFC 6066): service
//!   account and namespace are DNS labels (the [`SpiffeId`]
//!   parser guarantees it), the trust domain is a dotted name.
//! - **It is one-to-one.** Because the service account and the namespace are
//!   single labels, the first two labels are always they, the fixed marker
//!   `sa.needle` follows, and everything after it is the trust domain. So a
//!   name decodes back to exactly one identity ([`parse`]) and two workloads
//!   never share a server name.
//! - **The inbound proxy can tell whose TLS it is without decrypting:** a
//!   ClientHello whose SNI is the encoding of its own workload's identity is a
//!   meshed connection to terminate; any other SNI (the application's own
//!   `api.example.com`, or none at all) is the application's TLS and passes
//!   through untouched ([`classify`]). The `sa.needle` marker keeps an
//!   application's hostnames from colliding with the scheme by accident:
//!   Kubernetes service names look like `web.default.svc.cluster.local`,
//!   never `web.default.sa.needle.cluster.local`.
//! - **It reads like what it is** in a packet capture or a log line.
//!
//! The SNI is a routing hint, not proof: whoever answers still has to present
//! a certificate for that SPIFFE ID, which the client checks
//! (see `tls`). A misrouted connection fails the handshake; it never falls
//! back to plaintext.

use super::{SpiffeId, SpiffeIdError, TrustDomain};

/// The labels between the namespace and the trust domain.
const MARKER: [&str; 2] = ["sa", "needle"];
/// RFC 1035's limit on a DNS name's text form.
const MAX_DNS_NAME_LEN: usize = 253;

/// Why an identity cannot be spelled as a server name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SniError {
    /// The encoding is longer than a DNS name may be (253 bytes).
    #[error("server name for {id} would be {len} bytes; a DNS name is at most 253")]
    TooLong {
        /// The identity.
        id: SpiffeId,
        /// The length its encoding would have.
        len: usize,
    },
}

/// The server name that addresses `id`: `<sa>.<ns>.sa.needle.<trust-domain>`.
pub fn server_name(id: &SpiffeId) -> Result<String, SniError> {
    let name = format!(
        "{}.{}.{}.{}.{}",
        id.service_account(),
        id.namespace(),
        MARKER[0],
        MARKER[1],
        id.trust_domain()
    );
    if name.len() > MAX_DNS_NAME_LEN {
        return Err(SniError::TooLong {
            id: id.clone(),
            len: name.len(),
        });
    }
    Ok(name)
}

/// Decodes a server name made by [`server_name`] back into the identity.
///
/// Returns `None` for a name that is not in Needle's scheme at all (an
/// application's hostname), and the parse error for one that has the marker
/// but whose parts are not a valid identity. DNS names compare without
/// regard to case, so the name is lowercased first. A name longer than a
/// DNS name may be is no server name at all ([`server_name`] never makes
/// one), so it is `None`, which keeps `parse` the exact inverse.
pub fn parse(name: &str) -> Option<Result<SpiffeId, SpiffeIdError>> {
    if name.len() > MAX_DNS_NAME_LEN {
        return None;
    }
    let name = name.to_ascii_lowercase();
    let labels: Vec<&str> = name.split('.').collect();
    match labels.as_slice() {
        [sa, ns, m0, m1, td @ ..] if [*m0, *m1] == MARKER && !td.is_empty() => {
            Some(TrustDomain::parse(&td.join(".")).and_then(|td| SpiffeId::new(&td, ns, sa)))
        }
        _ => None,
    }
}

/// What an inbound proxy should do with a TLS ClientHello, judged by its SNI.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SniTarget {
    /// A meshed connection addressed to this workload: terminate mTLS.
    Local,
    /// A meshed connection addressed to a different workload: it reached the
    /// wrong pod (stale discovery, a reused IP). Refuse it; terminating would
    /// only fail the client's identity check later, less clearly.
    OtherWorkload(SpiffeId),
    /// Not Needle's scheme (or no SNI): the application's own TLS, to pass
    /// through untouched.
    Application,
}

/// Classifies a ClientHello's SNI against the local workload's identity.
pub fn classify(sni: Option<&str>, local: &SpiffeId) -> SniTarget {
    match sni.and_then(parse) {
        Some(Ok(id)) if id == *local => SniTarget::Local,
        Some(Ok(id)) => SniTarget::OtherWorkload(id),
        // Has the marker but is not a valid identity: nothing of ours can
        // be addressed by it, and the application may own odd hostnames.
        Some(Err(_)) | None => SniTarget::Application,
    }
}

/// Whether `sni` addresses the local workload (the "is this SNI mine" check).
pub fn is_local(sni: &str, local: &SpiffeId) -> bool {
    classify(Some(sni), local) == SniTarget::Local
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::quickcheck;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }

    #[test]
    fn encodes_readably() {
        let web = id("spiffe://cluster.local/ns/default/sa/web");
        assert_eq!(
            server_name(&web).unwrap(),
            "web.default.sa.needle.cluster.local"
        );
    }

    #[test]
    fn classifies_local_other_and_application_names() {
        let web = id("spiffe://cluster.local/ns/default/sa/web");
        assert_eq!(
            classify(Some("web.default.sa.needle.cluster.local"), &web),
            SniTarget::Local
        );
        assert_eq!(
            classify(Some("WEB.Default.sa.needle.cluster.local"), &web),
            SniTarget::Local
        );
        assert_eq!(
            classify(Some("db.default.sa.needle.cluster.local"), &web),
            SniTarget::OtherWorkload(id("spiffe://cluster.local/ns/default/sa/db"))
        );
        for app in [
            "web.default.svc.cluster.local",
            "api.example.com",
            "sa.needle.cluster.local",
            "web.default.sa.needle",
            "",
        ] {
            assert_eq!(classify(Some(app), &web), SniTarget::Application, "{app}");
        }
        assert_eq!(classify(None, &web), SniTarget::Application);
        assert!(is_local("web.default.sa.needle.cluster.local", &web));
        assert!(!is_local("web.default.sa.needle.other.domain", &web));
    }

    /// Found by the `spiffe_id` fuzz target: a 273-byte name in the scheme
    /// used to parse although `server_name` can never produce it.
    #[test]
    fn names_longer_than_dns_allows_are_not_in_the_scheme() {
        let long_td = [
            "a".repeat(60),
            "b".repeat(60),
            "c".repeat(60),
            "d".repeat(60),
        ]
        .join(".");
        let name = format!("web.default.sa.needle.{long_td}");
        assert!(name.len() > 253);
        assert_eq!(parse(&name), None);
    }

    #[test]
    fn too_long_is_an_error() {
        let td = ["a".repeat(60), "b".repeat(60), "c".repeat(60)].join(".");
        let long = id(&format!(
            "spiffe://{td}/ns/{}/sa/{}",
            "n".repeat(40),
            "s".repeat(40)
        ));
        assert!(matches!(server_name(&long), Err(SniError::TooLong { .. })));
    }

    /// Builds identities from arbitrary small parts; the property is that
    /// every encodable identity decodes to itself.
    fn label(seed: &[u8]) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-";
        let mut s: String = seed
            .iter()
            .take(20)
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
            .collect();
        s = s.trim_matches('-').to_owned();
        if s.is_empty() { "x".to_owned() } else { s }
    }

    quickcheck! {
        fn round_trips(sa: Vec<u8>, ns: Vec<u8>, td1: Vec<u8>, td2: Vec<u8>) -> bool {
            let td = TrustDomain::parse(&format!("{}.{}", label(&td1), label(&td2))).unwrap();
            let original = SpiffeId::new(&td, &label(&ns), &label(&sa)).unwrap();
            let name = server_name(&original).unwrap();
            parse(&name) == Some(Ok(original.clone())) && is_local(&name, &original)
        }
    }
}
