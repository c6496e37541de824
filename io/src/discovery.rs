//! Where a destination's requests may go: its backends, their endpoints and
//! its routes.
//!
//! The proxy asks [`Discovery`] once per destination address and then
//! *watches* the answer: discovery publishes a new [`Service`] whenever
//! endpoints come and go or routes change, and the proxy applies it before
//! the next request to that destination, while earlier requests finish on
//! the connections they already hold. A `tokio::sync::watch` channel is the
//! whole protocol: the proxy only ever needs the latest value.
//!
//! [`StaticDiscovery`] is the in-memory source (tests, and fixed
//! configuration); file and DNS sources come with the sidecar.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use needle_core::identity::SpiffeId;
use needle_core::route::{HttpMatch, Route};
use tokio::sync::watch;

/// One endpoint of a backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Balancer weight (0: known but takes no traffic).
    pub weight: u32,
    /// Set when the endpoint has a Needle sidecar: connections to it are
    /// mutual TLS with this identity. `None`: plain connections.
    pub mesh: Option<Meshed>,
}

impl Endpoint {
    /// An unmeshed endpoint of weight 1.
    pub fn new(addr: SocketAddr) -> Self {
        Endpoint {
            addr,
            weight: 1,
            mesh: None,
        }
    }

    /// A meshed endpoint of weight 1.
    pub fn meshed(addr: SocketAddr, mesh: Meshed) -> Self {
        Endpoint {
            mesh: Some(mesh),
            ..Endpoint::new(addr)
        }
    }
}

/// How to reach a meshed endpoint's sidecar.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meshed {
    /// The identity the endpoint's proxy must prove; any other fails the
    /// handshake.
    pub identity: SpiffeId,
    /// Where the endpoint's inbound proxy listens. `None`: dial the
    /// endpoint's own address, which the peer pod's iptables rules redirect
    /// to its inbound proxy (the transparent case). Either way the
    /// connection names the endpoint's port inside the TLS stream, so one
    /// inbound port serves every application port.
    pub proxy_addr: Option<SocketAddr>,
}

/// A named set of endpoints that a route's split sends traffic to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// The name routes refer to it by.
    pub name: String,
    /// Its endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// Everything the proxy needs to know to send a destination's requests.
#[derive(Clone, Debug, Default)]
pub struct Service {
    /// The backends, by name.
    pub backends: Vec<Backend>,
    /// HTTPRoutes whose splits name backends. Empty: every request goes to
    /// every backend in equal shares, with the proxy's default timeouts and
    /// retry policy.
    pub routes: Vec<Route<HttpMatch, String>>,
    /// What connections to the destination speak, when known in advance.
    pub protocol: ProtocolHint,
}

/// What the operator says a destination speaks, so detection can be
/// skipped for it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolHint {
    /// Detect it per connection (the default).
    #[default]
    Detect,
    /// Opaque TCP: forward bytes at once, without reading any first (for
    /// protocols detection would misjudge, and to save the dial delay of
    /// server-speaks-first ones).
    Opaque,
}

impl Service {
    /// A service with a single backend `default` over `endpoints`.
    pub fn with_endpoints(endpoints: impl IntoIterator<Item = Endpoint>) -> Self {
        Service {
            backends: vec![Backend {
                name: "default".to_owned(),
                endpoints: endpoints.into_iter().collect(),
            }],
            routes: Vec::new(),
            protocol: ProtocolHint::Detect,
        }
    }

    /// What an unknown destination resolves to: itself, as its only endpoint
    /// (the client already said where it wanted to go).
    pub fn passthrough(dst: SocketAddr) -> Self {
        Service::with_endpoints([Endpoint::new(dst)])
    }
}

/// A source of services, watched for changes.
pub trait Discovery: Send + Sync + 'static {
    /// The service behind destination `dst`, and its future updates.
    fn resolve(&self, dst: SocketAddr) -> watch::Receiver<Arc<Service>>;
}

/// In-memory discovery, updatable at run time.
///
/// A destination it was never told about resolves to itself
/// ([`Service::passthrough`]); [`set`](Self::set) later replaces that too.
#[derive(Debug, Default)]
pub struct StaticDiscovery {
    services: Mutex<Services>,
}

/// The services published, and the passthrough ones handed out for
/// destinations nobody described.
#[derive(Debug, Default)]
struct Services {
    by_dst: BTreeMap<SocketAddr, Published>,
    /// How many passthrough entries trigger the next prune (doubles, so a
    /// prune costs O(1) per resolve on average).
    prune_at: usize,
}

#[derive(Debug)]
struct Published {
    tx: watch::Sender<Arc<Service>>,
    /// Set through [`StaticDiscovery::set`]: kept for good. Passthrough
    /// entries are dropped once nobody watches them, so resolving many
    /// different destinations does not grow the map without bound.
    explicit: bool,
}

/// The fewest passthrough entries worth pruning for.
const MIN_PRUNE_AT: usize = 64;

impl StaticDiscovery {
    /// An empty source.
    pub fn new() -> Arc<Self> {
        Arc::new(StaticDiscovery::default())
    }

    /// Publishes `service` for `dst`; watchers see it before their next
    /// request.
    pub fn set(&self, dst: SocketAddr, service: Service) {
        let mut services = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        let service = Arc::new(service);
        match services.by_dst.get_mut(&dst) {
            Some(published) => {
                published.explicit = true;
                published.tx.send_replace(service);
            }
            None => {
                let tx = watch::channel(service).0;
                services
                    .by_dst
                    .insert(dst, Published { tx, explicit: true });
            }
        }
    }

    /// How many destinations the source holds an entry for.
    pub fn len(&self) -> usize {
        self.services
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_dst
            .len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Discovery for StaticDiscovery {
    fn resolve(&self, dst: SocketAddr) -> watch::Receiver<Arc<Service>> {
        let mut services = self.services.lock().unwrap_or_else(PoisonError::into_inner);
        if !services.by_dst.contains_key(&dst) && services.by_dst.len() >= services.prune_at {
            services
                .by_dst
                .retain(|_, p| p.explicit || p.tx.receiver_count() > 0);
            services.prune_at = (services.by_dst.len() * 2).max(MIN_PRUNE_AT);
        }
        services
            .by_dst
            .entry(dst)
            .or_insert_with(|| Published {
                tx: watch::channel(Arc::new(Service::passthrough(dst))).0,
                explicit: false,
            })
            .tx
            .subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(i: u32) -> SocketAddr {
        SocketAddr::from((std::net::Ipv4Addr::from(0x0a00_0000 + i), 80))
    }

    /// Resolving ever more destinations nobody described keeps the source
    /// bounded: passthrough entries without watchers are pruned, while
    /// published services and watched passthroughs stay.
    #[test]
    fn passthrough_entries_nobody_watches_are_pruned() {
        let discovery = StaticDiscovery::new();
        discovery.set(addr(0), Service::passthrough(addr(0)));
        let watched = discovery.resolve(addr(1));
        for i in 2..10_000 {
            drop(discovery.resolve(addr(i)));
            assert!(
                discovery.len() <= 2 * MIN_PRUNE_AT + 2,
                "grew to {}",
                discovery.len()
            );
        }
        let services = discovery.services.lock().unwrap();
        assert!(
            services.by_dst.contains_key(&addr(0)),
            "published service kept"
        );
        assert!(
            services.by_dst.contains_key(&addr(1)),
            "watched passthrough kept"
        );
        drop(watched);
    }
}
