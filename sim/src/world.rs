//! Building a turmoil world from a [`Scenario`] and a seed, and driving it:
//! the driver steps the simulation tick by tick and applies the fault
//! schedule at its simulated times.
//!
//! Topology: `client0` → `sidecar` (the real `needle_io::proxy::Port` and
//! `HttpProxy` over turmoil sockets) → `server0..N` (HTTP) and `legacy`
//! (opaque echo, banner). The sidecar has three ports, each with a fixed
//! target since simulated connections are never redirected: 4140 is HTTP
//! to the service (its key is `server0:80`; discovery maps it to the
//! servers it currently publishes), 4141 forwards to the legacy echo and
//! 4142 to the legacy banner service.
//!
//! Meshed scenarios ([`Scenario::mesh`]) give the sidecar an identity and
//! put an inbound sidecar (a `Port` on 4143, 4144 on `legacy`) in front
//! of each server's application, on its host; discovery publishes the
//! endpoints as meshed, so every hop between hosts is mutual TLS (see
//! [`crate::mesh`]).
//!
//! Determinism: turmoil's `rng_seed` is the seed, its epoch is fixed, the
//! proxy's RNG and every client and server RNG derive from the seed, hyper
//! adds no `date` header, and nothing here reads the system clock or
//! iterates a hash map.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Once};
use std::time::{Duration, UNIX_EPOCH};

use needle_core::retry::{RetryPolicy, Timeouts};
use needle_core::route::{HttpMatch, PathMatch, Route, Rule, Split};
use needle_io::discovery::{Endpoint, Meshed, Service, StaticDiscovery};
use needle_io::http::{HttpConfig, HttpProxy};
use needle_io::metrics::Metrics;
use needle_io::net::Network;
use needle_io::proxy::{Port, PortConfig};
use needle_io::tls::CredentialFiles;
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::faults::{self, Action, FaultKind, Scheduled};
use crate::ledger::{Arrival, Departure, GRPC_GET, Ledger, RequestRecord, SessionRecord};
use crate::mesh::{self, Identities, ImposterKind, MeshRecord, Pki, Sidecar};
use crate::net::{ConnCounts, CountingNet};
use crate::scenario::Scenario;
use crate::servers::{self, BANNER_PORT, ECHO_PORT, HTTP_PORT, ServerCtl};
use crate::trace::{self, Event};
use crate::workload::{self, ClientPlan, SidecarPorts};

/// The sidecar's ports.
pub const PORTS: SidecarPorts = SidecarPorts {
    http: 4140,
    echo: 4141,
    banner: 4142,
};
/// The sidecar's request timeout (to the response head).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
/// The sidecar's per-try timeout.
pub const PER_TRY_TIMEOUT: Duration = Duration::from_millis(500);
/// How long clients wait after closing everything, for the sidecar to
/// close its side.
pub const DRAIN: Duration = Duration::from_secs(1);
/// turmoil's clock starts at 2026-01-01T00:00:00Z in every run.
pub const EPOCH_SECS: u64 = 1_767_225_600;
/// Link latency outside latency faults.
const LINK_MIN: Duration = Duration::from_millis(1);
const LINK_MAX: Duration = Duration::from_millis(3);
/// Simulated time advances by this much per step. Every host is polled once per
/// tick, so the tick bounds both timing resolution and the cost of a run.
const TICK: Duration = Duration::from_millis(2);

/// Everything a run produced, for the oracles and the timeline.
#[derive(Debug, Clone)]
pub struct Run {
    /// Scenario name.
    pub scenario: &'static str,
    /// The seed.
    pub seed: u64,
    /// The ordered event log.
    pub events: Vec<Event>,
    /// Its digest.
    pub digest: u64,
    /// Every request and its answer.
    pub requests: Vec<RequestRecord>,
    /// Every attempt that reached a server.
    pub arrivals: Vec<Arrival>,
    /// Every attempt that left a server, answered or cancelled.
    pub departures: Vec<Departure>,
    /// Every opaque session.
    pub sessions: Vec<SessionRecord>,
    /// The actions applied, at the times they were applied.
    pub applied: Vec<Scheduled>,
    /// The fault kinds swarm testing drew for this seed.
    pub drawn: Vec<FaultKind>,
    /// The sidecar's connection counts at the end.
    pub counts: ConnCounts,
    /// Panics seen on the simulation's thread.
    pub panics: Vec<String>,
    /// The simulation's own error (a host failed, or time ran out).
    pub error: Option<String>,
    /// When the quiet phase started.
    pub quiet_from: Duration,
    /// When the traffic stopped.
    pub stop_at: Duration,
    /// The servers discovery published at the start.
    pub initial: Vec<usize>,
    /// How many HTTP servers.
    pub servers: usize,
    /// What the mesh did, in a meshed world.
    pub mesh: Option<MeshRecord>,
}

impl Run {
    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        replay_command(self.scenario, self.seed)
    }
}

/// The command that replays `scenario` with `seed`.
pub fn replay_command(scenario: &str, seed: u64) -> String {
    format!("cargo run --release -p needle-sim -- replay {scenario} --seed {seed}")
}

thread_local! {
    static PANICS: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Counts panics on each thread (turmoil runs a world on one thread, and
/// tokio swallows a panicking task's unwind), then lets the previous hook
/// print them as usual.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.with(|p| p.borrow_mut().push(info.to_string()));
            previous(info);
        }));
    });
}

/// The schedule for `scenario` and `seed`: its plan, the swarm's faults,
/// and the quiet phase's heal, in time order.
pub fn schedule(scenario: &Scenario, seed: u64) -> (Vec<FaultKind>, Vec<Scheduled>) {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x05ee_d0ff_a017);
    let mut schedule = (scenario.plan)(&mut rng, scenario);
    let (drawn, extra) = faults::swarm(
        &mut rng,
        scenario.swarm,
        scenario.servers,
        Duration::from_secs(1),
        scenario.traffic - Duration::from_millis(500),
    );
    schedule.extend(extra);
    schedule.push(Scheduled {
        at: scenario.traffic,
        action: Action::HealAll,
    });
    // Stable: simultaneous actions keep their planned order.
    schedule.sort_by_key(|s| s.at);
    (drawn, schedule)
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

/// Runs `scenario` with `seed` to its end.
pub fn run(scenario: &Scenario, seed: u64) -> Run {
    install_panic_hook();
    PANICS.with(|p| p.borrow_mut().clear());
    let ledger = Ledger::default();
    let (drawn, schedule) = schedule(scenario, seed);
    let setup = scenario.mesh;
    let imposter = setup
        .filter(|m| m.imposter)
        .map(|_| ImposterKind::draw(seed));
    let identities = Identities::default();
    let mut pki = setup.map(|m| {
        mesh::start_run(seed, ledger.trace.clone());
        let good = scenario.servers - usize::from(m.imposter);
        let mut sidecars = vec![Sidecar::Client];
        sidecars.extend((0..good).map(Sidecar::Server));
        if m.legacy {
            sidecars.push(Sidecar::Legacy);
        }
        Pki::new(seed, EPOCH_SECS, &sidecars, imposter).expect("credential files written")
    });
    if let Some(kind) = imposter {
        let index = scenario.servers - 1;
        let what = format!("imposter server{index}: {kind:?}");
        ledger.trace.record_at(Duration::ZERO, "driver", what);
    }
    // The sidecar each server host runs, and its files.
    let server_sidecar = |index: usize| {
        let sidecar = match imposter {
            Some(_) if index == scenario.servers - 1 => Sidecar::Imposter,
            _ => Sidecar::Server(index),
        };
        pki.as_ref().map(|pki| (sidecar, pki.files(sidecar)))
    };
    let stop_at = scenario.traffic + scenario.quiet;

    let mut sim = turmoil::Builder::new()
        .rng_seed(seed)
        .tick_duration(TICK)
        .epoch(UNIX_EPOCH + Duration::from_secs(EPOCH_SECS))
        .min_message_latency(LINK_MIN)
        .max_message_latency(LINK_MAX)
        .simulation_duration(stop_at + Duration::from_secs(30))
        .build();

    let ctls: Vec<ServerCtl> = (0..scenario.servers)
        .map(|i| ServerCtl::new(i, &format!("v{}", 1 + i % 2), seed ^ (i as u64 + 1) << 40))
        .collect();
    if let Some(n) = scenario.capacity {
        for ctl in &ctls {
            ctl.set_capacity(n);
        }
    }
    for ctl in &ctls {
        let (name, ctl, ledger) = (ctl.name.clone(), ctl.clone(), ledger.clone());
        let Some((sidecar, files)) = server_sidecar(ctl.index) else {
            sim.host(name.as_str(), move || {
                servers::http_server(ctl.clone(), ledger.clone())
            });
            continue;
        };
        let (ids, kind) = (
            identities.clone(),
            imposter.filter(|_| sidecar == Sidecar::Imposter),
        );
        let rng_seed = seed ^ (ctl.index as u64 + 1) << 24;
        sim.host(name.as_str(), move || {
            let app = servers::http_server(ctl.clone(), ledger.clone());
            let inbound = mesh::server_side(sidecar, kind, files.clone(), rng_seed, ids.clone());
            async move {
                let (app, inbound) = tokio::join!(app, inbound);
                app.and(inbound)
            }
        });
    }
    match pki.as_ref().filter(|_| setup.is_some_and(|m| m.legacy)) {
        None => sim.host("legacy", servers::legacy_server),
        Some(pki) => {
            let (files, ids) = (pki.files(Sidecar::Legacy), identities.clone());
            sim.host("legacy", move || {
                let inbound = mesh::inbound_sidecar(
                    Sidecar::Legacy,
                    files.clone(),
                    EPOCH_SECS,
                    mesh::LEGACY_MESH_PORT,
                    seed ^ 0x001e_6ac1,
                    ids.clone(),
                );
                async move {
                    let (app, inbound) = tokio::join!(servers::legacy_server(), inbound);
                    app.and(inbound)
                }
            })
        }
    }

    let addrs: Vec<SocketAddr> = ctls
        .iter()
        .map(|c| SocketAddr::new(sim.lookup(c.name.as_str()), HTTP_PORT))
        .collect();
    let service = addrs[0];
    let legacy = sim.lookup("legacy");
    let discovery = StaticDiscovery::new();
    let timeouts = Timeouts {
        request: Some(REQUEST_TIMEOUT),
        per_try: Some(PER_TRY_TIMEOUT),
    };
    // Meshed worlds: each endpoint's inbound sidecar, on its host.
    let meshed: Option<Vec<Meshed>> = setup.map(|_| {
        addrs
            .iter()
            .map(|a| {
                mesh::meshed(
                    mesh::API_ID,
                    SocketAddr::new(a.ip(), mesh::SERVER_MESH_PORT),
                )
            })
            .collect()
    });
    let publish = |servers: &[usize]| {
        let mut svc = Service::with_endpoints(servers.iter().map(|&i| match &meshed {
            None => Endpoint::new(addrs[i]),
            Some(m) => Endpoint::meshed(addrs[i], m[i].clone()),
        }));
        if scenario.grpc_route {
            svc.routes = grpc_routes(timeouts);
        }
        discovery.set(service, svc);
    };
    if setup.is_some_and(|m| m.legacy) {
        let proxy = SocketAddr::new(legacy, mesh::LEGACY_MESH_PORT);
        for port in [ECHO_PORT, BANNER_PORT] {
            let dst = SocketAddr::new(legacy, port);
            let endpoint = Endpoint::meshed(dst, mesh::meshed(mesh::LEGACY_ID, proxy));
            discovery.set(dst, Service::with_endpoints([endpoint]));
        }
    }
    let initial: Vec<usize> = (0..scenario.discovered).collect();
    publish(&initial);

    let net = CountingNet::new();
    let http_config = HttpConfig {
        rng_seed: seed ^ 0x6e65_6564_6c65,
        auto_date_header: false,
        default_timeouts: timeouts,
        // turmoil never retransmits: a partition leaves connections
        // silently dead, which only keepalive finds. Shorter than the
        // production default (10 s + 20 s) so runs stay short.
        h2_keepalive_interval: Duration::from_secs(1),
        h2_keepalive_timeout: Duration::from_secs(2),
        ..HttpConfig::default()
    };
    let mut port_config = PortConfig::default();
    port_config.detect.detect.timeout = scenario.detect_timeout;
    {
        let (net, discovery) = (net.clone(), discovery.clone());
        let client_mesh = pki
            .as_ref()
            .map(|pki| (pki.files(Sidecar::Client), identities.clone()));
        sim.host("sidecar", move || {
            sidecar(
                net.clone(),
                discovery.clone(),
                http_config.clone(),
                port_config.clone(),
                [
                    service,
                    SocketAddr::new(legacy, ECHO_PORT),
                    SocketAddr::new(legacy, BANNER_PORT),
                ],
                client_mesh.clone(),
            )
        });
    }

    let plan = ClientPlan {
        name: "client0".into(),
        seed,
        workload: scenario.workload.clone(),
        ports: PORTS,
        stop_at,
        request_timeout: REQUEST_TIMEOUT,
        detect_timeout: scenario.detect_timeout,
        drain: DRAIN,
    };
    sim.client("client0", workload::client(plan, ledger.clone()));

    let mut applied = Vec::new();
    let driven = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut crashed = BTreeSet::new();
        let mut next = 0;
        loop {
            let now = sim.elapsed();
            while let Some(step) = schedule.get(next).filter(|s| s.at <= now) {
                ledger
                    .trace
                    .record_at(now, "driver", format!("{:?}", step.action));
                match (&step.action, pki.as_mut()) {
                    (Action::Rotate { sidecar }, Some(pki)) => {
                        pki.rotate(*sidecar, now).expect("credential files written")
                    }
                    (Action::AddCa, Some(pki)) => pki.add_ca().expect("credential files written"),
                    _ => apply(&mut sim, &step.action, &ctls, &mut crashed, &publish),
                }
                applied.push(Scheduled {
                    at: now,
                    action: step.action.clone(),
                });
                next += 1;
            }
            match sim.step() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }));
    let error = match driven {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some("the driver panicked".to_owned()),
    };
    let mesh = pki.as_ref().map(|pki| MeshRecord {
        handshakes: mesh::finish_run(),
        issued: pki.issued(),
        generations: mesh::generations(pki, &identities),
        imposter: imposter.map(|kind| {
            let index = scenario.servers - 1;
            let proxy = SocketAddr::new(addrs[index].ip(), mesh::SERVER_MESH_PORT);
            (kind, index, proxy)
        }),
    });
    let events = ledger.trace.events();
    Run {
        scenario: scenario.name,
        seed,
        digest: trace::digest(&events),
        events,
        requests: ledger.requests(),
        arrivals: ledger.arrivals(),
        departures: ledger.departures(),
        sessions: ledger.sessions(),
        applied,
        drawn,
        counts: net.counts(),
        panics: PANICS.with(|p| p.borrow().clone()),
        error,
        quiet_from: scenario.traffic,
        stop_at,
        initial,
        servers: scenario.servers,
        mesh,
    }
}

/// The routes of a world with gRPC calls: [`GRPC_GET`] on a route whose
/// policy vouches for retrying it (`RetryPolicy::grpc()`: `UNAVAILABLE`,
/// connection failures and refused streams, for any method), everything
/// else on the default policy (idempotent methods only, so a gRPC call,
/// a `POST`, is sent again only if it provably never left).
fn grpc_routes(timeouts: Timeouts) -> Vec<Route<HttpMatch, String>> {
    let rule = |matches: Vec<HttpMatch>, retry: RetryPolicy| Rule {
        matches,
        timeouts,
        retry,
        backends: Split::single("default".to_owned()),
    };
    vec![Route {
        namespace: "sim".to_owned(),
        name: "items".to_owned(),
        created: 0,
        rules: vec![
            rule(
                vec![HttpMatch::path(PathMatch::exact(GRPC_GET))],
                RetryPolicy::grpc(),
            ),
            rule(Vec::new(), RetryPolicy::default()),
        ],
    }]
}

/// The sidecar's software: one HTTP proxy behind three ports.
async fn sidecar(
    net: CountingNet,
    discovery: Arc<StaticDiscovery>,
    http_config: HttpConfig,
    port_config: PortConfig,
    targets: [SocketAddr; 3],
    mesh: Option<(CredentialFiles, Identities)>,
) -> turmoil::Result {
    let http = match mesh {
        None => HttpProxy::new(net.clone(), http_config, discovery),
        // Meshed: the same proxy, originating mTLS to meshed endpoints.
        Some((files, identities)) => {
            let identity = mesh::load_identity(Sidecar::Client, files, EPOCH_SECS, &identities)?;
            HttpProxy::meshed(
                net.clone(),
                http_config,
                discovery,
                Some(identity),
                Metrics::new(),
            )
        }
    };
    let port = |target: SocketAddr| {
        Port::with_http(
            net.clone(),
            PortConfig {
                target: Some(target),
                ..port_config.clone()
            },
            http.clone(),
        )
    };
    let http_listener = net.bind(any(PORTS.http)).await?;
    let echo_listener = net.bind(any(PORTS.echo)).await?;
    let banner_listener = net.bind(any(PORTS.banner)).await?;
    tokio::join!(
        port(targets[0]).run(http_listener, std::future::pending()),
        port(targets[1]).run(echo_listener, std::future::pending()),
        port(targets[2]).run(banner_listener, std::future::pending()),
    );
    Ok(())
}

/// Applies one action to the world.
fn apply(
    sim: &mut turmoil::Sim<'_>,
    action: &Action,
    ctls: &[ServerCtl],
    crashed: &mut BTreeSet<usize>,
    publish: &dyn Fn(&[usize]),
) {
    let name = |server: usize| ctls[server].name.as_str();
    match *action {
        Action::Partition { server } => sim.partition("sidecar", name(server)),
        Action::Repair { server } => sim.repair("sidecar", name(server)),
        Action::PartitionOneWay { server, to_server } => {
            if to_server {
                sim.partition_oneway("sidecar", name(server));
            } else {
                sim.partition_oneway(name(server), "sidecar");
            }
        }
        Action::RepairOneWay { server, to_server } => {
            if to_server {
                sim.repair_oneway("sidecar", name(server));
            } else {
                sim.repair_oneway(name(server), "sidecar");
            }
        }
        Action::Hold { server } => sim.hold("sidecar", name(server)),
        Action::Release { server } => sim.release("sidecar", name(server)),
        Action::Crash { server } => {
            if crashed.insert(server) {
                sim.crash(name(server));
            }
        }
        Action::Bounce { server } => {
            if crashed.remove(&server) {
                sim.bounce(name(server));
            }
        }
        Action::Latency { server, latency } => {
            sim.set_link_latency("sidecar", name(server), latency)
        }
        Action::RestoreLatency { server } => {
            sim.set_link_latency("sidecar", name(server), LINK_MIN);
            sim.set_link_max_message_latency("sidecar", name(server), LINK_MAX);
        }
        Action::Loss { server, rate } => sim.set_link_fail_rate("sidecar", name(server), rate),
        Action::StopLoss { server } => sim.set_link_fail_rate("sidecar", name(server), 0.0),
        Action::Slow { server, delay } => ctls[server].set_delay(delay),
        Action::Failing { server, ratio } => ctls[server].set_fail_ratio(ratio),
        Action::Behave { server } => ctls[server].heal(),
        Action::Endpoints { ref servers } => publish(servers),
        // Credentials: the driver writes them (see `run`).
        Action::Rotate { .. } | Action::AddCa => {}
        Action::HealAll => {
            for (server, ctl) in ctls.iter().enumerate() {
                sim.release("sidecar", name(server));
                sim.repair("sidecar", name(server));
                sim.set_link_fail_rate("sidecar", name(server), 0.0);
                sim.set_link_latency("sidecar", name(server), LINK_MIN);
                sim.set_link_max_message_latency("sidecar", name(server), LINK_MAX);
                ctl.heal();
                if crashed.remove(&server) {
                    sim.bounce(name(server));
                }
            }
        }
    }
}
