//! Discovery from a watched TOML file, with DNS names for headless services.
//!
//! The file lists the destinations applications dial (a Service's cluster IP
//! and port, say) and, for each, its backends (endpoints with weights and
//! mesh identities, or a DNS name re-resolved on a schedule) and its
//! HTTPRoutes (matches, weighted splits, timeouts, retries). See
//! `docs/configuration.md` for the format and an example.
//!
//! The file is read at start and whenever its contents change (polled). A
//! file that does not parse, or that names something impossible (an
//! unknown backend, a bad identity), is refused whole: the last good state
//! stays in force and the log says why. A destination removed from the
//! file falls back to passthrough (its own address as its only endpoint).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use needle_core::identity::SpiffeId;
use needle_core::retry::{RetryPolicy, RetryableRequests, Timeouts};
use needle_core::route::{HeaderMatch, HttpMatch, PathMatch, Route, Rule, Split};
use needle_io::discovery::{Backend, Endpoint, Meshed, ProtocolHint, Service, StaticDiscovery};
use serde::Deserialize;
use tracing::{info, warn};

use crate::config::duration;

/// The file's top level.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    service: Vec<ServiceSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    /// The address clients dial.
    dst: SocketAddr,
    /// `detect` (default) or `opaque`: forward without detection.
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    backend: Vec<BackendSpec>,
    #[serde(default)]
    route: Vec<RouteSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendSpec {
    name: String,
    #[serde(default)]
    endpoint: Vec<EndpointSpec>,
    /// `host:port` resolved to A/AAAA records, each an endpoint.
    dns: Option<String>,
    /// How often `dns` is resolved again (default 5s).
    dns_refresh: Option<String>,
    /// The mesh identity of every endpoint `dns` yields (meshed if set).
    identity: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointSpec {
    addr: SocketAddr,
    #[serde(default = "one")]
    weight: u32,
    /// Set when the endpoint has a Needle sidecar with this identity.
    identity: Option<String>,
    /// Where that sidecar's inbound port is (default: the endpoint's own
    /// address, redirected by the peer's iptables rules).
    proxy: Option<SocketAddr>,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    name: String,
    #[serde(default)]
    namespace: String,
    rule: Vec<RuleSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    path_prefix: Option<String>,
    path_exact: Option<String>,
    method: Option<String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// Backend name → weight.
    backends: BTreeMap<String, u32>,
    timeout: Option<String>,
    per_try_timeout: Option<String>,
    /// Attempts in total, the first included (default 3; 1: no retries).
    attempts: Option<u32>,
    /// Retry any method, not only idempotent ones (e.g. gRPC routes).
    #[serde(default)]
    retry_any_method: bool,
}

/// A DNS name a backend follows.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct DnsBackend {
    pub(crate) dst: SocketAddr,
    pub(crate) backend: String,
    pub(crate) name: String,
    pub(crate) refresh: Duration,
    pub(crate) identity: Option<SpiffeId>,
}

/// A parsed discovery file.
#[derive(Clone, Debug, Default)]
pub(crate) struct Parsed {
    pub(crate) services: BTreeMap<SocketAddr, Service>,
    pub(crate) dns: Vec<DnsBackend>,
}

/// Why a discovery file was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DiscoveryError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid discovery file: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{path}: service {dst}: {message}")]
    Invalid {
        path: PathBuf,
        dst: SocketAddr,
        message: String,
    },
}

/// Parses a discovery file's text.
pub(crate) fn parse(text: &str, path: &Path) -> Result<Parsed, DiscoveryError> {
    let file: File = toml::from_str(text).map_err(|e| DiscoveryError::Syntax {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let mut parsed = Parsed::default();
    for spec in file.service {
        let dst = spec.dst;
        let invalid = |message: String| DiscoveryError::Invalid {
            path: path.to_owned(),
            dst,
            message,
        };
        let (service, dns) = service(spec).map_err(invalid)?;
        if parsed.services.insert(dst, service).is_some() {
            return Err(DiscoveryError::Invalid {
                path: path.to_owned(),
                dst,
                message: "listed twice".into(),
            });
        }
        parsed.dns.extend(dns);
    }
    Ok(parsed)
}

fn identity(s: &str) -> Result<SpiffeId, String> {
    SpiffeId::parse(s).map_err(|e| format!("identity {s:?}: {e}"))
}

fn service(spec: ServiceSpec) -> Result<(Service, Vec<DnsBackend>), String> {
    let mut backends = Vec::new();
    let mut dns = Vec::new();
    let mut names = BTreeSet::new();
    for b in spec.backend {
        if !names.insert(b.name.clone()) {
            return Err(format!("backend {:?} listed twice", b.name));
        }
        let mut endpoints = Vec::new();
        for e in b.endpoint {
            let mesh = match e.identity {
                Some(id) => Some(Meshed {
                    identity: identity(&id)?,
                    proxy_addr: e.proxy,
                }),
                None if e.proxy.is_some() => {
                    return Err(format!("endpoint {}: `proxy` without `identity`", e.addr));
                }
                None => None,
            };
            endpoints.push(Endpoint {
                addr: e.addr,
                weight: e.weight,
                mesh,
            });
        }
        match b.dns {
            Some(name) => {
                if !endpoints.is_empty() {
                    return Err(format!("backend {:?}: both `dns` and endpoints", b.name));
                }
                let refresh = match b.dns_refresh.as_deref() {
                    None => Duration::from_secs(5),
                    Some(r) => duration(r)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| format!("backend {:?}: dns_refresh {r:?}", b.name))?,
                };
                dns.push(DnsBackend {
                    dst: spec.dst,
                    backend: b.name.clone(),
                    name,
                    refresh,
                    identity: b.identity.as_deref().map(identity).transpose()?,
                });
            }
            None if b.identity.is_some() || b.dns_refresh.is_some() => {
                return Err(format!(
                    "backend {:?}: `identity`/`dns_refresh` belong with `dns`; set identities per endpoint",
                    b.name
                ));
            }
            None => {}
        }
        backends.push(Backend {
            name: b.name,
            endpoints,
        });
    }
    let mut routes = Vec::new();
    for r in spec.route {
        let mut rules = Vec::new();
        for rule in r.rule {
            for name in rule.backends.keys() {
                if !names.contains(name) {
                    return Err(format!("route {:?} names unknown backend {name:?}", r.name));
                }
            }
            rules.push(route_rule(rule).map_err(|e| format!("route {:?}: {e}", r.name))?);
        }
        routes.push(Route {
            namespace: r.namespace,
            name: r.name,
            created: 0,
            rules,
        });
    }
    let protocol = match spec.protocol.as_deref() {
        None | Some("detect") => ProtocolHint::Detect,
        Some("opaque") => ProtocolHint::Opaque,
        Some(other) => return Err(format!("protocol {other:?}: expected `detect` or `opaque`")),
    };
    Ok((
        Service {
            backends,
            routes,
            protocol,
        },
        dns,
    ))
}

fn route_rule(rule: RuleSpec) -> Result<Rule<HttpMatch, String>, String> {
    let path = match (rule.path_prefix, rule.path_exact) {
        (Some(_), Some(_)) => return Err("both path_prefix and path_exact".into()),
        (Some(p), None) => PathMatch::prefix(&p),
        (None, Some(p)) => PathMatch::Exact(p),
        (None, None) => PathMatch::prefix("/"),
    };
    let mut m = HttpMatch::path(path);
    if let Some(method) = &rule.method {
        m = m.with_method(method);
    }
    for (name, value) in &rule.headers {
        m = m.with_header(HeaderMatch::exact(name, value));
    }
    let parse = |d: Option<String>| -> Result<Option<Duration>, String> {
        d.map(|d| duration(&d).map_err(|e| format!("{d:?}: expected {e}")))
            .transpose()
    };
    let mut retry = RetryPolicy::default();
    if let Some(attempts) = rule.attempts {
        if attempts == 0 {
            return Err("attempts must be at least 1".into());
        }
        retry.max_attempts = attempts;
    }
    if rule.retry_any_method {
        retry.requests = RetryableRequests::Any;
    }
    Ok(Rule {
        matches: vec![m],
        timeouts: Timeouts {
            request: parse(rule.timeout)?,
            per_try: parse(rule.per_try_timeout)?,
        },
        retry,
        backends: Split::new(rule.backends),
    })
}

/// Applies discovery files (and DNS answers) to a [`StaticDiscovery`].
#[derive(Debug)]
pub(crate) struct FileSource {
    path: PathBuf,
    discovery: Arc<StaticDiscovery>,
    state: Mutex<SourceState>,
}

#[derive(Debug, Default)]
struct SourceState {
    /// The last good file's text.
    loaded: Option<String>,
    /// The last good file.
    parsed: Parsed,
    /// DNS answers, per (dst, backend).
    resolved: BTreeMap<(SocketAddr, String), Vec<SocketAddr>>,
}

impl FileSource {
    /// Reads `path` now; an error here stops the start (a sidecar with a
    /// broken discovery file from the start has no good state to keep).
    pub(crate) fn start(
        path: PathBuf,
        discovery: Arc<StaticDiscovery>,
    ) -> Result<Arc<Self>, DiscoveryError> {
        let source = Arc::new(FileSource {
            path,
            discovery,
            state: Mutex::new(SourceState::default()),
        });
        if let Some(Err(e)) = source.reload() {
            return Err(e);
        }
        Ok(source)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SourceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the file; if it changed and is valid, publishes it. `None`:
    /// unchanged.
    pub(crate) fn reload(&self) -> Option<Result<usize, DiscoveryError>> {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(source) => {
                return Some(Err(DiscoveryError::Read {
                    path: self.path.clone(),
                    source,
                }));
            }
        };
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.loaded.as_deref() == Some(text.as_str()) {
            return None;
        }
        let parsed = match parse(&text, &self.path) {
            Ok(p) => p,
            Err(e) => return Some(Err(e)),
        };
        // Destinations gone from the file fall back to passthrough.
        for gone in state.parsed.services.keys() {
            if !parsed.services.contains_key(gone) {
                self.discovery.set(*gone, Service::passthrough(*gone));
            }
        }
        let count = parsed.services.len();
        state.parsed = parsed;
        state.loaded = Some(text);
        let dns = &state.parsed.dns;
        state
            .resolved
            .retain(|(dst, backend), _| has_dns(dns, *dst, backend));
        self.publish(state);
        Some(Ok(count))
    }

    /// Publishes every service, with DNS backends filled from the latest
    /// answers.
    fn publish(&self, state: &SourceState) {
        for (dst, service) in &state.parsed.services {
            let mut service = service.clone();
            for dns in state.parsed.dns.iter().filter(|d| d.dst == *dst) {
                let addrs = state
                    .resolved
                    .get(&(dns.dst, dns.backend.clone()))
                    .cloned()
                    .unwrap_or_default();
                if let Some(b) = service.backends.iter_mut().find(|b| b.name == dns.backend) {
                    b.endpoints = addrs
                        .into_iter()
                        .map(|addr| Endpoint {
                            addr,
                            weight: 1,
                            mesh: dns.identity.clone().map(|identity| Meshed {
                                identity,
                                proxy_addr: None,
                            }),
                        })
                        .collect();
                }
            }
            self.discovery.set(*dst, service);
        }
    }

    /// Records a DNS answer for `dns` and republishes if it changed.
    fn resolved(&self, dns: &DnsBackend, mut addrs: Vec<SocketAddr>) -> bool {
        addrs.sort_unstable();
        addrs.dedup();
        let mut state = self.lock();
        if !has_dns(&state.parsed.dns, dns.dst, &dns.backend) {
            return false;
        }
        let key = (dns.dst, dns.backend.clone());
        if state.resolved.get(&key) == Some(&addrs) {
            return false;
        }
        state.resolved.insert(key, addrs);
        self.publish(&state);
        true
    }

    /// Watches the file (and resolves DNS names) until the process ends.
    pub(crate) async fn watch(self: Arc<Self>, poll: Duration) {
        let mut next_dns: BTreeMap<(SocketAddr, String, String), tokio::time::Instant> =
            BTreeMap::new();
        loop {
            let dns = self.lock().parsed.dns.clone();
            let now = tokio::time::Instant::now();
            for d in &dns {
                let key = (d.dst, d.backend.clone(), d.name.clone());
                if next_dns.get(&key).is_some_and(|at| *at > now) {
                    continue;
                }
                next_dns.insert(key, now + d.refresh);
                match tokio::net::lookup_host(d.name.as_str()).await {
                    Ok(addrs) => {
                        let addrs: Vec<SocketAddr> = addrs.collect();
                        if self.resolved(d, addrs.clone()) {
                            info!(name = %d.name, dst = %d.dst, backend = %d.backend,
                                endpoints = addrs.len(), "DNS endpoints changed");
                        }
                    }
                    // Keep the last answer: a resolver hiccup must not
                    // empty a backend.
                    Err(error) => {
                        warn!(name = %d.name, %error, "DNS lookup failed; keeping the last answer")
                    }
                }
            }
            next_dns.retain(|(dst, backend, name), _| {
                dns.iter()
                    .any(|d| d.dst == *dst && d.backend == *backend && d.name == *name)
            });
            tokio::time::sleep(poll).await;
            match self.reload() {
                None => {}
                Some(Ok(services)) => {
                    info!(path = %self.path.display(), services, "discovery file reloaded")
                }
                Some(Err(error)) => {
                    warn!(%error, "discovery file refused; keeping the last good state")
                }
            }
        }
    }
}

fn has_dns(dns: &[DnsBackend], dst: SocketAddr, backend: &str) -> bool {
    dns.iter().any(|d| d.dst == dst && d.backend == backend)
}

#[cfg(test)]
mod tests {
    use super::*;
    use needle_io::discovery::Discovery;

    const EXAMPLE: &str = r#"
[[service]]
dst = "10.96.0.10:80"

[[service.backend]]
name = "v1"
endpoint = [
  { addr = "10.1.0.5:8080", weight = 9, identity = "spiffe://cluster.local/ns/shop/sa/api" },
  { addr = "10.1.0.6:8080", identity = "spiffe://cluster.local/ns/shop/sa/api", proxy = "10.1.0.6:4143" },
]

[[service.backend]]
name = "v2"
dns = "localhost:8080"
dns_refresh = "1s"

[[service.route]]
name = "canary"
namespace = "shop"
[[service.route.rule]]
path_prefix = "/api"
headers = { x-canary = "1" }
backends = { v2 = 1 }
[[service.route.rule]]
backends = { v1 = 90, v2 = 10 }
timeout = "10s"
per_try_timeout = "1s"
attempts = 2

[[service]]
dst = "10.96.0.11:3306"
protocol = "opaque"
[[service.backend]]
name = "mysql"
endpoint = [{ addr = "10.1.0.9:3306", identity = "spiffe://cluster.local/ns/shop/sa/db" }]
"#;

    #[test]
    fn the_documented_example_parses() {
        let parsed = parse(EXAMPLE, Path::new("example.toml")).unwrap();
        let dst: SocketAddr = "10.96.0.10:80".parse().unwrap();
        let service = &parsed.services[&dst];
        assert_eq!(service.backends.len(), 2);
        let v1 = &service.backends[0].endpoints;
        assert_eq!(v1[0].weight, 9);
        assert_eq!(v1[1].weight, 1);
        assert_eq!(
            v1[1].mesh.as_ref().unwrap().proxy_addr,
            Some("10.1.0.6:4143".parse().unwrap())
        );
        assert_eq!(service.routes[0].rules.len(), 2);
        assert_eq!(service.routes[0].rules[1].retry.max_attempts, 2);
        assert_eq!(
            service.routes[0].rules[1].timeouts.per_try,
            Some(Duration::from_secs(1))
        );
        assert_eq!(parsed.dns.len(), 1);
        assert_eq!(service.protocol, ProtocolHint::Detect);
        let mysql: SocketAddr = "10.96.0.11:3306".parse().unwrap();
        assert_eq!(parsed.services[&mysql].protocol, ProtocolHint::Opaque);
        assert_eq!(parsed.dns[0].refresh, Duration::from_secs(1));
        // The example in the docs is this one.
        let docs = include_str!("../../docs/configuration.md");
        assert!(
            docs.contains(EXAMPLE.trim()),
            "docs/configuration.md shows the tested example"
        );
    }

    #[test]
    fn impossible_files_are_refused_with_the_reason() {
        let cases = [
            (
                "[[service]]\ndst = \"nope\"\n",
                "not a valid discovery file",
            ),
            (
                "[[service]]\ndst = \"1.2.3.4:80\"\ntypo = 1\n",
                "unknown field",
            ),
            (
                "[[service]]\ndst = \"1.2.3.4:80\"\n[[service.backend]]\nname = \"a\"\nendpoint = [{ addr = \"1.1.1.1:1\", identity = \"http://x\" }]\n",
                "identity \"http://x\"",
            ),
            (
                "[[service]]\ndst = \"1.2.3.4:80\"\n[[service.route]]\nname = \"r\"\n[[service.route.rule]]\nbackends = { ghost = 1 }\n",
                "unknown backend \"ghost\"",
            ),
            (
                "[[service]]\ndst = \"1.2.3.4:80\"\n[[service]]\ndst = \"1.2.3.4:80\"\n",
                "listed twice",
            ),
            (
                "[[service]]\ndst = \"1.2.3.4:80\"\nprotocol = \"smtp\"\n",
                "expected `detect` or `opaque`",
            ),
        ];
        for (text, expected) in cases {
            let e = parse(text, Path::new("d.toml")).unwrap_err().to_string();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }

    #[tokio::test]
    async fn a_bad_update_keeps_the_last_good_state_and_removals_fall_back() {
        let dir = std::env::temp_dir().join(format!("needle-disco-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("services.toml");
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let file = |dsts: &[SocketAddr]| {
            dsts.iter()
                .map(|d| format!("[[service]]\ndst = \"{d}\"\n[[service.backend]]\nname = \"x\"\nendpoint = [{{ addr = \"10.9.9.9:8080\" }}]\n"))
                .collect::<String>()
        };
        std::fs::write(&path, file(&[a, b])).unwrap();
        let discovery = StaticDiscovery::new();
        let source = FileSource::start(path.clone(), discovery.clone()).unwrap();
        let endpoint = |dst| discovery.resolve(dst).borrow().backends[0].endpoints[0].addr;
        let backend_addr: SocketAddr = "10.9.9.9:8080".parse().unwrap();
        assert_eq!(endpoint(a), backend_addr);
        assert!(source.reload().is_none(), "unchanged file: nothing to do");

        std::fs::write(&path, "this is not toml [").unwrap();
        assert!(matches!(
            source.reload(),
            Some(Err(DiscoveryError::Syntax { .. }))
        ));
        assert_eq!(endpoint(a), backend_addr, "last good state kept");

        std::fs::write(&path, file(&[a])).unwrap();
        assert!(matches!(source.reload(), Some(Ok(1))));
        assert_eq!(
            endpoint(b),
            b,
            "removed destination falls back to passthrough"
        );
        assert_eq!(endpoint(a), backend_addr);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn dns_backends_follow_their_name() {
        let dir = std::env::temp_dir().join(format!("needle-dns-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("services.toml");
        std::fs::write(
            &path,
            "[[service]]\ndst = \"10.0.0.1:80\"\n[[service.backend]]\nname = \"web\"\ndns = \"localhost:8080\"\nidentity = \"spiffe://cluster.local/ns/a/sa/web\"\n",
        )
        .unwrap();
        let discovery = StaticDiscovery::new();
        let source = FileSource::start(path, discovery.clone()).unwrap();
        let dst: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let mut watch = discovery.resolve(dst);
        assert!(
            watch.borrow().backends[0].endpoints.is_empty(),
            "not resolved yet"
        );
        tokio::spawn(source.watch(Duration::from_millis(50)));
        tokio::time::timeout(Duration::from_secs(5), watch.changed())
            .await
            .unwrap()
            .unwrap();
        let service = watch.borrow().clone();
        let endpoints = &service.backends[0].endpoints;
        assert!(!endpoints.is_empty());
        assert!(
            endpoints
                .iter()
                .all(|e| e.addr.ip().is_loopback() && e.addr.port() == 8080)
        );
        assert!(
            endpoints.iter().all(|e| e.mesh.is_some()),
            "meshed by the backend's identity"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
