//! # Workload identity: SPIFFE IDs
//!
//! Every meshed workload is named by a SPIFFE ID of one fixed shape,
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`, carried in
//! the URI subject alternative name of its X.509 certificate (an "X509-SVID").
//!
//! Parsing is strict on purpose. An identity is what authorization compares
//! and what the client checks the server against, so two spellings of the same
//! workload must not exist: there is exactly one accepted text for each
//! [`SpiffeId`], and every other input is refused with an error that says
//! which rule it broke ([`SpiffeIdError`]). The rules are the SPIFFE ID
//! specification's, narrowed to what Needle's identities are made of:
//!
//! - the scheme is exactly `spiffe://` (lowercase);
//! - the trust domain is non-empty, at most 255 bytes, made of lowercase
//!   ASCII letters, digits, `-`, `_` and `.`, with no empty label (no leading,
//!   trailing or doubled dot), and no port, user info or percent-encoding;
//! - the path is exactly `/ns/<namespace>/sa/<service-account>`, both being
//!   Kubernetes DNS-1123 labels: 1 to 63 lowercase letters, digits and `-`,
//!   starting and ending with a letter or digit;
//! - no query, no fragment, no trailing slash, at most 2048 bytes in all.
//!
//! Kubernetes lets a service account's name contain dots; Needle does not,
//! because every identity must map to exactly one TLS server name and back
//! (see [`sni`]). Such a workload gets a clear [`SpiffeIdError`] at start-up
//! rather than an identity that two workloads could share.
//!
//! Submodules:
//! - [`sni`]: how a TLS ServerName names a target identity;
//! - `x509` (with the `tls` feature): reading the SPIFFE ID and validity out
//!   of a certificate.

pub mod sni;
#[cfg(feature = "tls")]
pub mod x509;

use core::fmt;
use core::str::FromStr;

/// The scheme every SPIFFE ID starts with.
const SCHEME: &str = "spiffe://";
/// The SPIFFE specification's limit on a whole ID.
const MAX_ID_LEN: usize = 2048;
/// The SPIFFE specification's limit on a trust domain.
const MAX_TRUST_DOMAIN_LEN: usize = 255;
/// A DNS label's limit, which Kubernetes names inherit.
const MAX_LABEL_LEN: usize = 63;

/// A SPIFFE trust domain: the authority that issues identities, e.g.
/// `cluster.local`. Always in its one canonical (lowercase) spelling.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TrustDomain(String);

impl TrustDomain {
    /// Parses a bare trust domain (no scheme), e.g. `cluster.local`.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.is_empty() {
            return Err(SpiffeIdError::EmptyTrustDomain);
        }
        if s.len() > MAX_TRUST_DOMAIN_LEN {
            return Err(SpiffeIdError::TrustDomainTooLong { len: s.len() });
        }
        if let Some(c) = s.chars().find(|c| !is_trust_domain_char(*c)) {
            return Err(SpiffeIdError::InvalidTrustDomainChar { found: c });
        }
        if s.split('.').any(str::is_empty) {
            return Err(SpiffeIdError::EmptyTrustDomainLabel);
        }
        Ok(TrustDomain(s.to_owned()))
    }

    /// The trust domain as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A workload identity, `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
///
/// Holds the canonical text and the positions of its parts, so it stays one
/// small allocation, and displaying and comparing it are plain string
/// operations.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SpiffeId {
    text: String,
    /// End of the trust domain in `text`.
    td_end: u16,
    /// Start and end of the namespace in `text`.
    ns: (u16, u16),
    /// Start of the service account in `text` (it runs to the end).
    sa_start: u16,
}

impl SpiffeId {
    /// Parses an ID, refusing anything but the one canonical spelling.
    pub fn parse(s: &str) -> Result<Self, SpiffeIdError> {
        if s.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: s.len() });
        }
        let rest = s.strip_prefix(SCHEME).ok_or(SpiffeIdError::WrongScheme)?;
        if rest.contains('?') {
            return Err(SpiffeIdError::QueryNotAllowed);
        }
        if rest.contains('#') {
            return Err(SpiffeIdError::FragmentNotAllowed);
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(SpiffeIdError::UserInfoNotAllowed);
        }
        if authority.contains(':') {
            return Err(SpiffeIdError::PortNotAllowed);
        }
        TrustDomain::parse(authority)?;
        let (namespace, service_account) = parse_path(path)?;
        // Lengths are bounded by MAX_ID_LEN (2048), so they fit in u16.
        let pos = |n: usize| u16::try_from(n).unwrap_or(u16::MAX);
        let td_end = SCHEME.len() + authority.len();
        let ns_start = td_end + "/ns/".len();
        let ns_end = ns_start + namespace.len();
        Ok(SpiffeId {
            text: s.to_owned(),
            td_end: pos(td_end),
            ns: (pos(ns_start), pos(ns_end)),
            sa_start: pos(s.len() - service_account.len()),
        })
    }

    /// Builds an ID from its parts, checking each as [`SpiffeId::parse`] would.
    pub fn new(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        Self::parse(&format!(
            "{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}"
        ))
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.text[SCHEME.len()..usize::from(self.td_end)]
    }

    /// The trust domain, as a [`TrustDomain`].
    pub fn to_trust_domain(&self) -> TrustDomain {
        // Already checked by `parse`.
        TrustDomain(self.trust_domain().to_owned())
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.text[usize::from(self.ns.0)..usize::from(self.ns.1)]
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.text[usize::from(self.sa_start)..]
    }

    /// The canonical text, `spiffe://...`.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Splits `/ns/<namespace>/sa/<service-account>` into its two names.
fn parse_path(path: &str) -> Result<(&str, &str), SpiffeIdError> {
    if path.is_empty() {
        return Err(SpiffeIdError::MissingPath);
    }
    if path.ends_with('/') {
        return Err(SpiffeIdError::TrailingSlash);
    }
    // `path` starts with '/', so the first piece is always empty.
    let segments: Vec<&str> = path.split('/').skip(1).collect();
    if segments.iter().any(|s| s.is_empty()) {
        return Err(SpiffeIdError::EmptySegment);
    }
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Err(SpiffeIdError::DotSegment);
    }
    match segments.as_slice() {
        ["ns", namespace, "sa", service_account] => {
            check_label(namespace).map_err(|reason| SpiffeIdError::InvalidNamespace {
                name: (*namespace).to_owned(),
                reason,
            })?;
            check_label(service_account).map_err(|reason| {
                SpiffeIdError::InvalidServiceAccount {
                    name: (*service_account).to_owned(),
                    reason,
                }
            })?;
            Ok((namespace, service_account))
        }
        _ => Err(SpiffeIdError::NotAWorkloadPath {
            path: path.to_owned(),
        }),
    }
}

/// Checks a Kubernetes DNS-1123 label.
fn check_label(s: &str) -> Result<(), LabelError> {
    if s.len() > MAX_LABEL_LEN {
        return Err(LabelError::TooLong);
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(LabelError::InvalidChar(c));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(LabelError::EdgeHyphen);
    }
    Ok(())
}

fn is_trust_domain_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.')
}

/// Why a namespace or service-account name is not a DNS-1123 label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LabelError {
    /// Longer than 63 bytes.
    TooLong,
    /// A character other than a lowercase ASCII letter, digit or `-`.
    InvalidChar(char),
    /// Starts or ends with `-`.
    EdgeHyphen,
}

impl fmt::Display for LabelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabelError::TooLong => f.write_str("longer than 63 bytes"),
            LabelError::InvalidChar(c) => {
                write!(f, "{c:?} is not a lowercase letter, digit or '-'")
            }
            LabelError::EdgeHyphen => f.write_str("starts or ends with '-'"),
        }
    }
}

/// Each way a text can fail to be a [`SpiffeId`] or [`TrustDomain`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpiffeIdError {
    /// The ID is longer than the specification's 2048 bytes.
    #[error("SPIFFE ID is {len} bytes long; the limit is 2048")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The text does not start with `spiffe://`.
    #[error("SPIFFE ID must start with `spiffe://` (lowercase)")]
    WrongScheme,
    /// The trust domain is empty (`spiffe:///ns/...`).
    #[error("SPIFFE ID has an empty trust domain")]
    EmptyTrustDomain,
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is {len} bytes long; the limit is 255")]
    TrustDomainTooLong {
        /// Its length.
        len: usize,
    },
    /// The trust domain holds a character outside `[a-z0-9._-]`.
    #[error(
        "trust domain contains {found:?}; only lowercase letters, digits, '.', '-' and '_' are allowed"
    )]
    InvalidTrustDomainChar {
        /// The first offending character.
        found: char,
    },
    /// The trust domain has an empty dot-separated label.
    #[error("trust domain has an empty label (leading, trailing or doubled '.')")]
    EmptyTrustDomainLabel,
    /// The authority carries a port (`:8443`).
    #[error("SPIFFE ID must not carry a port")]
    PortNotAllowed,
    /// The authority carries user info (`user@`).
    #[error("SPIFFE ID must not carry user info")]
    UserInfoNotAllowed,
    /// There is a `?query`.
    #[error("SPIFFE ID must not have a query")]
    QueryNotAllowed,
    /// There is a `#fragment`.
    #[error("SPIFFE ID must not have a fragment")]
    FragmentNotAllowed,
    /// There is no path at all: a trust domain's ID, not a workload's.
    #[error("SPIFFE ID has no path; a workload ID is spiffe://<td>/ns/<ns>/sa/<sa>")]
    MissingPath,
    /// The path ends with `/`.
    #[error("SPIFFE ID path must not end with '/'")]
    TrailingSlash,
    /// The path has an empty segment (`//`).
    #[error("SPIFFE ID path has an empty segment")]
    EmptySegment,
    /// The path has a `.` or `..` segment.
    #[error("SPIFFE ID path must not contain '.' or '..' segments")]
    DotSegment,
    /// The path is well formed but not `/ns/<ns>/sa/<sa>`.
    #[error("SPIFFE ID path {path:?} is not of the form /ns/<namespace>/sa/<service-account>")]
    NotAWorkloadPath {
        /// The path found.
        path: String,
    },
    /// The namespace is not a DNS-1123 label.
    #[error("namespace {name:?} is not a DNS-1123 label: {reason}")]
    InvalidNamespace {
        /// The namespace found.
        name: String,
        /// Which rule it broke.
        reason: LabelError,
    },
    /// The service account is not a DNS-1123 label.
    #[error("service account {name:?} is not a DNS-1123 label: {reason}")]
    InvalidServiceAccount {
        /// The service account found.
        name: String,
        /// Which rule it broke.
        reason: LabelError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(s: &str) -> SpiffeIdError {
        SpiffeId::parse(s).unwrap_err()
    }

    #[test]
    fn parses_the_workload_form() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/web").unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "web");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/web");
        let td = TrustDomain::parse("cluster.local").unwrap();
        assert_eq!(SpiffeId::new(&td, "default", "web").unwrap(), id);
    }

    #[test]
    fn each_way_to_be_wrong_has_its_own_error() {
        use SpiffeIdError::*;
        assert_eq!(err("SPIFFE://td/ns/a/sa/b"), WrongScheme);
        assert_eq!(err("https://td/ns/a/sa/b"), WrongScheme);
        assert_eq!(err("spiffe:///ns/a/sa/b"), EmptyTrustDomain);
        assert_eq!(
            err("spiffe://Td/ns/a/sa/b"),
            InvalidTrustDomainChar { found: 'T' }
        );
        assert_eq!(err("spiffe://a..b/ns/a/sa/b"), EmptyTrustDomainLabel);
        assert_eq!(err("spiffe://.td/ns/a/sa/b"), EmptyTrustDomainLabel);
        assert_eq!(err("spiffe://td:443/ns/a/sa/b"), PortNotAllowed);
        assert_eq!(err("spiffe://u@td/ns/a/sa/b"), UserInfoNotAllowed);
        assert_eq!(err("spiffe://td/ns/a/sa/b?x=1"), QueryNotAllowed);
        assert_eq!(err("spiffe://td/ns/a/sa/b#f"), FragmentNotAllowed);
        assert_eq!(err("spiffe://td"), MissingPath);
        assert_eq!(err("spiffe://td/ns/a/sa/b/"), TrailingSlash);
        assert_eq!(err("spiffe://td/ns//sa/b"), EmptySegment);
        assert_eq!(err("spiffe://td/ns/../sa/b"), DotSegment);
        assert!(matches!(
            err("spiffe://td/namespace/a/sa/b"),
            NotAWorkloadPath { .. }
        ));
        assert!(matches!(
            err("spiffe://td/ns/a/sa/b/extra"),
            NotAWorkloadPath { .. }
        ));
        assert_eq!(
            err("spiffe://td/ns/Default/sa/b"),
            InvalidNamespace {
                name: "Default".into(),
                reason: LabelError::InvalidChar('D')
            }
        );
        assert_eq!(
            err("spiffe://td/ns/a/sa/-b"),
            InvalidServiceAccount {
                name: "-b".into(),
                reason: LabelError::EdgeHyphen
            }
        );
        assert_eq!(
            err("spiffe://td/ns/a/sa/b.c"),
            InvalidServiceAccount {
                name: "b.c".into(),
                reason: LabelError::InvalidChar('.')
            }
        );
        let long = "a".repeat(64);
        assert!(matches!(
            err(&format!("spiffe://td/ns/{long}/sa/b")),
            InvalidNamespace {
                reason: LabelError::TooLong,
                ..
            }
        ));
        assert!(matches!(
            err(&format!("spiffe://{}/ns/a/sa/b", "a".repeat(256))),
            TrustDomainTooLong { len: 256 }
        ));
        assert!(matches!(
            err(&format!("spiffe://td/{}", "a".repeat(2100))),
            TooLong { .. }
        ));
    }

    #[test]
    fn errors_read_as_sentences() {
        let e = err("spiffe://td/ns/a/sa/B");
        assert_eq!(
            e.to_string(),
            "service account \"B\" is not a DNS-1123 label: 'B' is not a lowercase letter, digit or '-'"
        );
    }
}
