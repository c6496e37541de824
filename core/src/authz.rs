//! # Authorization of inbound connections
//!
//! Once the inbound proxy knows who is calling (a verified SPIFFE ID from
//! mTLS, or nobody on a plaintext connection), it asks one question per
//! connection: may this peer reach this port? The answer is a pure function
//! of the port's [`Policy`] and the [`Peer`], so it is tested exhaustively
//! here and the io layer only acts on it.
//!
//! Three policies, from loosest to tightest:
//! - [`Policy::AllowAll`]: anyone, including plaintext (un-meshed) clients;
//!   the default, so adding the proxy never breaks an application;
//! - [`Policy::RequireMtls`]: any peer that proved a mesh identity;
//! - [`Policy::AllowIdentities`]: only peers matching one of a list of
//!   [`IdentityPattern`]s (an exact ID, every ID of a trust domain, or every
//!   ID of a namespace).
//!
//! A refusal carries its reason ([`Refusal`]) so the proxy can log and count
//! it, and the caller sees more than a reset.

use core::fmt;
use std::collections::BTreeMap;

use crate::identity::{SpiffeId, SpiffeIdError, TrustDomain};

/// Who is on the other end of an inbound connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// No verified identity: plaintext, or TLS the proxy passed through.
    Unauthenticated,
    /// A peer that completed mutual TLS with this identity.
    Mtls(SpiffeId),
}

/// A set of identities, as written in a policy.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdentityPattern {
    /// Exactly this identity: `spiffe://td/ns/ns/sa/sa`.
    Exact(SpiffeId),
    /// Every identity of a trust domain: `spiffe://td/*`.
    TrustDomain(TrustDomain),
    /// Every identity of a namespace: `spiffe://td/ns/ns/*`.
    Namespace {
        /// The trust domain.
        trust_domain: TrustDomain,
        /// The namespace.
        namespace: String,
    },
}

impl IdentityPattern {
    /// Parses `spiffe://td/ns/n/sa/s`, `spiffe://td/ns/n/*` or `spiffe://td/*`.
    ///
    /// Wildcards are only whole trailing segments, so a pattern can never
    /// match more than it visibly says.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if let Some(td) = s
            .strip_prefix("spiffe://")
            .and_then(|rest| rest.strip_suffix("/*"))
        {
            if let Some((td, ns)) = td.split_once("/ns/") {
                // Validate the namespace by building an ID with a dummy account.
                let trust_domain = TrustDomain::parse(td)?;
                SpiffeId::new(&trust_domain, ns, "x")?;
                return Ok(IdentityPattern::Namespace {
                    trust_domain,
                    namespace: ns.to_owned(),
                });
            }
            return Ok(IdentityPattern::TrustDomain(TrustDomain::parse(td)?));
        }
        SpiffeId::parse(s).map(IdentityPattern::Exact)
    }

    /// Whether `id` is in this set.
    pub fn matches(&self, id: &SpiffeId) -> bool {
        match self {
            IdentityPattern::Exact(exact) => exact == id,
            IdentityPattern::TrustDomain(td) => id.trust_domain() == td.as_str(),
            IdentityPattern::Namespace {
                trust_domain,
                namespace,
            } => id.trust_domain() == trust_domain.as_str() && id.namespace() == namespace,
        }
    }
}

impl fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentityPattern::Exact(id) => write!(f, "{id}"),
            IdentityPattern::TrustDomain(td) => write!(f, "spiffe://{td}/*"),
            IdentityPattern::Namespace {
                trust_domain,
                namespace,
            } => write!(f, "spiffe://{trust_domain}/ns/{namespace}/*"),
        }
    }
}

/// What one inbound port admits.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Policy {
    /// Every peer, meshed or not.
    #[default]
    AllowAll,
    /// Any peer with a verified mesh identity.
    RequireMtls,
    /// Peers whose identity matches one of these patterns.
    AllowIdentities(Vec<IdentityPattern>),
}

/// Why a connection was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The port requires mTLS and the peer has no verified identity.
    #[error("port {port} requires mutual TLS; the peer is unauthenticated")]
    Unauthenticated {
        /// The inbound port.
        port: u16,
    },
    /// The peer's identity is not in the port's allow list.
    #[error("identity {identity} is not allowed on port {port}")]
    IdentityNotAllowed {
        /// The inbound port.
        port: u16,
        /// Who was refused.
        identity: SpiffeId,
    },
}

impl Policy {
    /// Decides whether `peer` may connect to `port` under this policy.
    pub fn authorize(&self, port: u16, peer: &Peer) -> Result<(), Refusal> {
        match (self, peer) {
            (Policy::AllowAll, _) => Ok(()),
            (_, Peer::Unauthenticated) => Err(Refusal::Unauthenticated { port }),
            (Policy::RequireMtls, Peer::Mtls(_)) => Ok(()),
            (Policy::AllowIdentities(allowed), Peer::Mtls(id)) => {
                if allowed.iter().any(|p| p.matches(id)) {
                    Ok(())
                } else {
                    Err(Refusal::IdentityNotAllowed {
                        port,
                        identity: id.clone(),
                    })
                }
            }
        }
    }
}

/// The policies of every inbound port, with a default for the rest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortPolicies {
    default: Policy,
    ports: BTreeMap<u16, Policy>,
}

impl PortPolicies {
    /// Ports without their own policy get `default`.
    pub fn new(default: Policy) -> Self {
        PortPolicies {
            default,
            ports: BTreeMap::new(),
        }
    }

    /// Sets the policy of one port, replacing any it had.
    pub fn set(&mut self, port: u16, policy: Policy) -> &mut Self {
        self.ports.insert(port, policy);
        self
    }

    /// The policy that governs `port`.
    pub fn policy(&self, port: u16) -> &Policy {
        self.ports.get(&port).unwrap_or(&self.default)
    }

    /// Decides whether `peer` may connect to `port`.
    pub fn authorize(&self, port: u16, peer: &Peer) -> Result<(), Refusal> {
        self.policy(port).authorize(port, peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> SpiffeId {
        SpiffeId::parse(s).unwrap()
    }
    fn pat(s: &str) -> IdentityPattern {
        IdentityPattern::parse(s).unwrap()
    }

    #[test]
    fn patterns_parse_and_print_back() {
        for s in [
            "spiffe://cluster.local/ns/default/sa/web",
            "spiffe://cluster.local/ns/default/*",
            "spiffe://cluster.local/*",
        ] {
            assert_eq!(pat(s).to_string(), s);
        }
        assert!(IdentityPattern::parse("spiffe://cluster.local/ns/*").is_err());
        assert!(IdentityPattern::parse("spiffe://cluster.local/ns/Bad/*").is_err());
        assert!(IdentityPattern::parse("spiffe://*").is_err());
    }

    #[test]
    fn allow_all_admits_everyone() {
        let p = Policy::AllowAll;
        assert_eq!(p.authorize(80, &Peer::Unauthenticated), Ok(()));
        assert_eq!(
            p.authorize(80, &Peer::Mtls(id("spiffe://a/ns/b/sa/c"))),
            Ok(())
        );
    }

    #[test]
    fn require_mtls_refuses_plaintext_with_a_reason() {
        let p = Policy::RequireMtls;
        let refusal = p.authorize(8080, &Peer::Unauthenticated).unwrap_err();
        assert_eq!(refusal, Refusal::Unauthenticated { port: 8080 });
        assert_eq!(
            refusal.to_string(),
            "port 8080 requires mutual TLS; the peer is unauthenticated"
        );
        assert_eq!(
            p.authorize(8080, &Peer::Mtls(id("spiffe://a/ns/b/sa/c"))),
            Ok(())
        );
    }

    #[test]
    fn allow_identities_matches_exact_namespace_and_trust_domain() {
        let p = Policy::AllowIdentities(vec![
            pat("spiffe://cluster.local/ns/prod/sa/web"),
            pat("spiffe://cluster.local/ns/ops/*"),
            pat("spiffe://partner.example/*"),
        ]);
        let ok = [
            "spiffe://cluster.local/ns/prod/sa/web",
            "spiffe://cluster.local/ns/ops/sa/anything",
            "spiffe://partner.example/ns/x/sa/y",
        ];
        for s in ok {
            assert_eq!(p.authorize(1, &Peer::Mtls(id(s))), Ok(()), "{s}");
        }
        let refused = [
            "spiffe://cluster.local/ns/prod/sa/db",
            "spiffe://cluster.local/ns/ops2/sa/x",
            "spiffe://other.local/ns/ops/sa/x",
            "spiffe://partner.example.evil/ns/x/sa/y",
        ];
        for s in refused {
            assert_eq!(
                p.authorize(1, &Peer::Mtls(id(s))),
                Err(Refusal::IdentityNotAllowed {
                    port: 1,
                    identity: id(s)
                }),
                "{s}"
            );
        }
        assert_eq!(
            p.authorize(1, &Peer::Unauthenticated),
            Err(Refusal::Unauthenticated { port: 1 })
        );
        let empty = Policy::AllowIdentities(vec![]);
        assert!(empty.authorize(1, &Peer::Mtls(id(ok[0]))).is_err());
    }

    #[test]
    fn port_policies_fall_back_to_the_default() {
        let mut ports = PortPolicies::new(Policy::RequireMtls);
        ports.set(9090, Policy::AllowAll);
        assert_eq!(ports.authorize(9090, &Peer::Unauthenticated), Ok(()));
        assert_eq!(
            ports.authorize(8080, &Peer::Unauthenticated),
            Err(Refusal::Unauthenticated { port: 8080 })
        );
    }
}
