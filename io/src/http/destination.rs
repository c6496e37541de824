//! One destination's live state: its routes, a balancer per backend, the
//! endpoints' connections and its retry budget, kept in step with
//! discovery.
//!
//! Every decision here is a call into `needle-core` ([`HttpRouteTable`],
//! [`Balancer`], [`RetryState`]/[`RetryBudget`]); this module only holds
//! them behind a lock (never across an `.await`), feeds them the time, and
//! applies discovery's updates between requests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use needle_core::accrual::Transition;
use needle_core::balance::{Balancer, Completion, Dispatch, PickError};
use needle_core::retry::{
    AttemptOutcome, RequestMeta, RetryBudget, RetryPolicy, RetryState, Step, Timeouts,
};
use needle_core::route::{HttpRouteTable, RequestHead, Route, Rule, Split};
use needle_core::time::Instant;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::sync::watch;

use super::client::EndpointClient;
use super::config::HttpConfig;
use super::errors::ProxyError;
use crate::discovery::{Meshed, Service};
use crate::metrics::Metrics;
use crate::net::Network;
use crate::tls::MeshIdentity;

/// What routing decided for a request.
#[derive(Debug, Clone)]
pub(crate) struct Routed {
    /// The matched route's metric label (`namespace/name`, or `default`).
    pub(crate) route: Arc<str>,
    pub(crate) backend: String,
    pub(crate) timeouts: Timeouts,
    pub(crate) retry: RetryPolicy,
}

#[derive(Debug)]
struct BackendState {
    balancer: Balancer<SocketAddr>,
    /// Distinguishes this balancer from an earlier one of the same name, so
    /// a completion of a request picked before a backend was re-created is
    /// not applied to an unrelated endpoint.
    epoch: u64,
    addrs: BTreeSet<SocketAddr>,
}

#[derive(Debug)]
struct Inner<N: Network> {
    updates: watch::Receiver<Arc<Service>>,
    routes: HttpRouteTable<String>,
    /// Each route's metric label, by index in `routes`: built when the
    /// routes change, not per request.
    route_labels: Vec<Arc<str>>,
    backends: BTreeMap<String, BackendState>,
    clients: BTreeMap<SocketAddr, Arc<EndpointClient<N>>>,
    budget: RetryBudget,
    rng: StdRng,
    next_epoch: u64,
}

/// A destination's routes, balancers, connections and retry budget.
#[derive(Debug)]
pub(crate) struct Destination<N: Network> {
    connector: Connector<N>,
    metrics: Metrics,
    /// `dst` as the `authority` label says it.
    authority: Arc<str>,
    inner: Mutex<Inner<N>>,
}

/// A request in flight to an endpoint. Completing it feeds the balancer;
/// dropping it uncompleted (the client went away) reports a cancellation,
/// so the balancer's pending count never leaks.
#[derive(Debug)]
pub(crate) struct InFlight<N: Network> {
    destination: Arc<Destination<N>>,
    backend: String,
    epoch: u64,
    dispatch: Option<Dispatch>,
    pub(crate) client: Arc<EndpointClient<N>>,
}

impl<N: Network> InFlight<N> {
    /// Reports how the request ended at `now`.
    pub(crate) fn complete(mut self, now: Instant, completion: Completion) {
        if let Some(dispatch) = self.dispatch.take() {
            self.destination
                .complete(&self.backend, self.epoch, now, dispatch, completion);
        }
    }
}

impl<N: Network> Drop for InFlight<N> {
    fn drop(&mut self) {
        if let Some(dispatch) = self.dispatch.take() {
            // The sent_at time stands in for now: a cancellation teaches the
            // balancer nothing about latency.
            let now = dispatch.sent_at();
            self.destination.complete(
                &self.backend,
                self.epoch,
                now,
                dispatch,
                Completion::Cancelled,
            );
        }
    }
}

/// How a destination reaches its endpoints: the network, the local mesh
/// identity (for meshed endpoints) and the proxy's configuration.
#[derive(Debug, Clone)]
pub(crate) struct Connector<N: Network> {
    pub(crate) network: N,
    pub(crate) identity: Option<Arc<MeshIdentity>>,
    pub(crate) config: Arc<HttpConfig>,
}

impl<N: Network> Connector<N> {
    /// The connections to a new endpoint.
    fn client(&self, addr: SocketAddr, mesh: Option<Meshed>) -> Arc<EndpointClient<N>> {
        EndpointClient::new(
            addr,
            mesh,
            self.identity.clone(),
            self.network.clone(),
            self.config.clone(),
        )
    }
}

impl<N: Network> Destination<N> {
    pub(crate) fn new(
        connector: Connector<N>,
        mut updates: watch::Receiver<Arc<Service>>,
        seed: u64,
        now: Instant,
        metrics: Metrics,
        authority: Arc<str>,
    ) -> Arc<Self> {
        let service = updates.borrow_and_update().clone();
        let mut inner = Inner {
            updates,
            routes: HttpRouteTable::new(Vec::new()),
            route_labels: Vec::new(),
            backends: BTreeMap::new(),
            clients: BTreeMap::new(),
            budget: RetryBudget::new(connector.config.retry_budget),
            rng: StdRng::seed_from_u64(seed),
            next_epoch: 0,
        };
        apply(&connector, &mut inner, &service, now);
        Arc::new(Destination {
            connector,
            metrics,
            authority,
            inner: Mutex::new(inner),
        })
    }

    /// The destination as metrics label it.
    pub(crate) fn authority(&self) -> &Arc<str> {
        &self.authority
    }

    fn lock(&self) -> MutexGuard<'_, Inner<N>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies discovery's latest service, if it changed.
    fn refresh(&self, inner: &mut Inner<N>, now: Instant) {
        if inner.updates.has_changed().unwrap_or(false) {
            let service = inner.updates.borrow_and_update().clone();
            apply(&self.connector, inner, &service, now);
        }
    }

    /// Routes a request: the rule's timeouts and retry policy, and the
    /// backend its split picked.
    pub(crate) fn route<R: RequestHead + ?Sized>(
        &self,
        head: &R,
        now: Instant,
    ) -> Result<Routed, ProxyError> {
        let mut guard = self.lock();
        self.refresh(&mut guard, now);
        let inner = &mut *guard;
        let selected = inner.routes.select(head).ok_or(ProxyError::NoRoute)?;
        let route = inner.route_labels.get(selected.rule.route).cloned();
        let route = route.unwrap_or_else(|| Arc::from("default"));
        let backend = selected.backend.ok_or(ProxyError::NoBackend)?.clone();
        Ok(Routed {
            route,
            backend,
            timeouts: selected.timeouts,
            retry: selected.retry.clone(),
        })
    }

    /// Picks an endpoint of `backend` through its balancer.
    pub(crate) fn pick(
        self: &Arc<Self>,
        backend: &str,
        now: Instant,
    ) -> Result<InFlight<N>, ProxyError> {
        let mut inner = self.lock();
        self.refresh(&mut inner, now);
        let Inner {
            backends,
            clients,
            rng,
            ..
        } = &mut *inner;
        let state = backends.get_mut(backend).ok_or(ProxyError::NoBackend)?;
        let dispatch = state.balancer.pick(now, rng).map_err(|e| match e {
            PickError::AllEjected => ProxyError::AllEjected,
            _ => ProxyError::NoEndpoints,
        })?;
        let client = state
            .balancer
            .key(dispatch.endpoint())
            .and_then(|addr| clients.get(addr))
            .cloned();
        let Some(client) = client else {
            // Cannot happen: every balancer key has a client. Hand the
            // dispatch back rather than leak it.
            state
                .balancer
                .complete(now, dispatch, Completion::Cancelled, rng);
            return Err(ProxyError::NoEndpoints);
        };
        Ok(InFlight {
            destination: self.clone(),
            backend: backend.to_owned(),
            epoch: state.epoch,
            dispatch: Some(dispatch),
            client,
        })
    }

    fn complete(
        &self,
        backend: &str,
        epoch: u64,
        now: Instant,
        dispatch: Dispatch,
        completion: Completion,
    ) {
        let mut inner = self.lock();
        let Inner { backends, rng, .. } = &mut *inner;
        if let Some(state) = backends.get_mut(backend).filter(|s| s.epoch == epoch) {
            let transition = state.balancer.complete(now, dispatch, completion, rng);
            if let Some(Transition::Ejected { .. }) = transition {
                self.metrics.endpoint_ejected(&self.authority, backend);
            }
        }
    }

    /// Starts a request's retry state (recording it in the budget).
    pub(crate) fn start_retries(
        &self,
        now: Instant,
        policy: &RetryPolicy,
        timeouts: Timeouts,
        meta: &RequestMeta<'_>,
    ) -> RetryState {
        let mut inner = self.lock();
        RetryState::new(now, policy, timeouts, meta, &mut inner.budget)
    }

    /// Feeds an attempt's outcome to the request's retry state.
    pub(crate) fn on_outcome(
        &self,
        state: &mut RetryState,
        now: Instant,
        outcome: AttemptOutcome,
        policy: &RetryPolicy,
    ) -> Step {
        let mut inner = self.lock();
        let Inner { budget, rng, .. } = &mut *inner;
        state
            .on_outcome(now, outcome, policy, budget, rng)
            .unwrap_or_else(|_| state.step())
    }

    /// Advances the request's retry state to `now` (deadlines, backoffs).
    pub(crate) fn on_timeout(
        &self,
        state: &mut RetryState,
        now: Instant,
        policy: &RetryPolicy,
    ) -> Step {
        let mut inner = self.lock();
        let Inner { budget, rng, .. } = &mut *inner;
        state
            .handle_timeout(now, policy, budget, rng)
            .unwrap_or_else(|| state.step())
    }
}

/// Makes the routes, balancers and connections match `service`.
fn apply<N: Network>(
    connector: &Connector<N>,
    inner: &mut Inner<N>,
    service: &Service,
    now: Instant,
) {
    let routes = if service.routes.is_empty() {
        vec![Route {
            namespace: String::new(),
            name: "default".to_owned(),
            created: 0,
            rules: vec![Rule {
                matches: Vec::new(),
                timeouts: connector.config.default_timeouts,
                retry: connector.config.default_retry.clone(),
                backends: Split::new(service.backends.iter().map(|b| (b.name.clone(), 1))),
            }],
        }]
    } else {
        service.routes.clone()
    };
    inner.routes = HttpRouteTable::new(routes);
    inner.route_labels = (0..)
        .map_while(|i| inner.routes.route(i))
        .map(|r| match r.namespace.as_str() {
            "" => Arc::from(r.name.as_str()),
            ns => Arc::from(format!("{ns}/{}", r.name)),
        })
        .collect();

    let mut backends = std::mem::take(&mut inner.backends);
    let mut wanted_addrs = BTreeMap::new();
    for backend in &service.backends {
        let mut state = backends.remove(&backend.name).unwrap_or_else(|| {
            inner.next_epoch += 1;
            BackendState {
                balancer: Balancer::new(connector.config.balance),
                epoch: inner.next_epoch,
                addrs: BTreeSet::new(),
            }
        });
        let wanted: BTreeMap<SocketAddr, u32> = backend
            .endpoints
            .iter()
            .map(|e| (e.addr, e.weight))
            .collect();
        for gone in state.addrs.difference(&wanted.keys().copied().collect()) {
            state.balancer.remove_key(gone);
        }
        for (&addr, &weight) in &wanted {
            state.balancer.insert(now, addr, weight);
        }
        state.addrs = wanted.keys().copied().collect();
        wanted_addrs.extend(backend.endpoints.iter().map(|e| (e.addr, e.mesh.clone())));
        inner.backends.insert(backend.name.clone(), state);
    }
    // Backends left in `backends` are gone; their in-flight requests
    // finish on connections they hold.
    // A client whose endpoint became (un)meshed or changed identity is
    // replaced: its connections were made under the old terms.
    inner
        .clients
        .retain(|addr, client| wanted_addrs.get(addr) == Some(client.mesh()));
    for (addr, mesh) in wanted_addrs {
        inner
            .clients
            .entry(addr)
            .or_insert_with(|| connector.client(addr, mesh));
    }
}
