//! Scenarios as data: a topology, a workload, the faults the seed may
//! draw, a plan of scenario-specific actions, and the extra oracles that
//! apply. The catalogue is [`all`]; `needle-sim list` prints it.

use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use crate::faults::{Action, FaultKind, Scheduled, window};
use crate::mesh::{MeshSetup, Sidecar};
use crate::workload::{OpenLoop, Workload};

/// Oracles that only make sense for some scenarios.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Check {
    /// The balancer moves traffic away from the endpoint made slow.
    SlowShunned,
    /// Retries turn a failing minority of answers into successes, within
    /// the budget.
    RetriesRecover,
    /// The same for gRPC calls: `UNAVAILABLE` retried on the route that
    /// vouches for it.
    GrpcRetriesRecover,
    /// Every attempt leaves its server (answered, or cancelled by Needle)
    /// within the per-try timeout: nothing queues past Needle's deadlines.
    AttemptsEndInTime,
    /// Once an overload ends, answers are fast again: no backlog outlives
    /// it.
    LatencyRecovers,
    /// Handshakes after a rotation (once picked up) show the new
    /// certificate; every rotation is installed.
    CertificatesFresh,
    /// Rotations cost nothing: every request and session succeeds.
    RotationLosesNothing,
    /// No request reaches the imposter; no handshake accepts its
    /// certificate.
    NoWrongIdentity,
}

/// A scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name on the command line.
    pub name: &'static str,
    /// One line: what it exercises.
    pub about: &'static str,
    /// HTTP servers (`server0`...).
    pub servers: usize,
    /// How many of them (the first ones) discovery publishes at the start.
    pub discovered: usize,
    /// What the client sends.
    pub workload: Workload,
    /// The traffic phase: faults happen in it, and it ends with every
    /// fault healed.
    pub traffic: Duration,
    /// The quiet phase after it: traffic goes on, nothing fails.
    pub quiet: Duration,
    /// The sidecar's protocol detection timeout.
    pub detect_timeout: Duration,
    /// The fault kinds the seed may draw (swarm testing).
    pub swarm: &'static [FaultKind],
    /// Scenario-specific actions, drawn from the seed.
    pub plan: fn(&mut StdRng, &Scenario) -> Vec<Scheduled>,
    /// Scenario-specific oracles.
    pub checks: &'static [Check],
    /// Publish the gRPC route (`world::grpc_routes`): gRPC `Get` calls
    /// retried on `UNAVAILABLE`. Off: one default route.
    pub grpc_route: bool,
    /// How many requests each server works on at once (the rest queue);
    /// `None`: unlimited.
    pub capacity: Option<usize>,
    /// Meshed worlds: sidecars on both sides, mTLS between them.
    pub mesh: Option<MeshSetup>,
}

fn base(name: &'static str, about: &'static str) -> Scenario {
    Scenario {
        name,
        about,
        servers: 3,
        discovered: 3,
        workload: Workload::default(),
        traffic: Duration::from_secs(6),
        quiet: Duration::from_secs(4),
        detect_timeout: Duration::from_secs(5),
        swarm: &[],
        plan: |_, _| Vec::new(),
        checks: &[],
        grpc_route: false,
        capacity: None,
        mesh: None,
    }
}

fn secs(rng: &mut StdRng, from: f64, to: f64) -> Duration {
    Duration::from_secs_f64(rng.random_range(from..=to))
}

/// Requests each server of `overload` works on at once: 3 servers × 4
/// slots at 150–250 ms a request serve 48–80 a second, under the 100 a
/// second that arrive.
pub const OVERLOAD_CAPACITY: usize = 4;

/// Two servers of `s` answer half their requests with a failure from
/// 500 ms on (the `half-fail` plan).
fn half_failing(rng: &mut StdRng, s: &Scenario) -> Vec<Scheduled> {
    let first = rng.random_range(0..s.servers);
    let second = (first + rng.random_range(1..s.servers)) % s.servers;
    [first, second]
        .into_iter()
        .map(|server| Scheduled {
            at: Duration::from_millis(500),
            action: Action::Failing { server, ratio: 0.5 },
        })
        .collect()
}

/// Every scenario.
pub fn all() -> Vec<Scenario> {
    vec![
        Scenario {
            swarm: &[FaultKind::Latency, FaultKind::Hold],
            plan: |rng, s| {
                let server = rng.random_range(0..s.servers);
                let (start, len) = (secs(rng, 1.0, 2.5), secs(rng, 1.0, 2.5));
                window(rng, FaultKind::Partition, server, start, len).to_vec()
            },
            ..base(
                "partition",
                "sidecar and one server partitioned mid-traffic, then healed",
            )
        },
        Scenario {
            swarm: &[FaultKind::Latency, FaultKind::Partition],
            plan: |rng, s| {
                let server = rng.random_range(0..s.servers);
                let (start, len) = (secs(rng, 1.0, 2.5), secs(rng, 1.0, 2.5));
                window(rng, FaultKind::Crash, server, start, len).to_vec()
            },
            ..base("crash-restart", "a server host crashes, then restarts")
        },
        Scenario {
            plan: |rng, s| {
                vec![Scheduled {
                    at: secs(rng, 1.0, 1.5),
                    action: Action::Slow {
                        server: rng.random_range(0..s.servers),
                        delay: Duration::from_millis(250),
                    },
                }]
            },
            checks: &[Check::SlowShunned],
            ..base(
                "slow-endpoint",
                "one endpoint becomes 250 ms slower; the balancer moves traffic away",
            )
        },
        Scenario {
            servers: 4,
            discovered: 4,
            plan: half_failing,
            checks: &[Check::RetriesRecover],
            ..base(
                "half-fail",
                "half the endpoints answer half their requests with 503",
            )
        },
        Scenario {
            servers: 4,
            discovered: 3,
            swarm: &[FaultKind::Latency],
            plan: |rng, _| {
                let first = rng.random_range(0..3);
                let second = (first + rng.random_range(1..3)) % 3;
                let mut members: Vec<usize> = vec![0, 1, 2, 3];
                let mut steps = Vec::new();
                let mut publish = |at: Duration, members: &[usize]| {
                    steps.push(Scheduled {
                        at,
                        action: Action::Endpoints {
                            servers: members.to_vec(),
                        },
                    });
                };
                publish(secs(rng, 0.8, 1.5), &members);
                members.retain(|&m| m != first);
                publish(secs(rng, 1.8, 2.6), &members);
                members.retain(|&m| m != second);
                publish(secs(rng, 3.0, 3.8), &members);
                members.push(first);
                members.sort_unstable();
                publish(secs(rng, 4.2, 5.0), &members);
                steps
            },
            ..base(
                "discovery-churn",
                "endpoints added and removed under load; none gets traffic after removal plus drain",
            )
        },
        Scenario {
            servers: 2,
            discovered: 2,
            workload: Workload {
                h1_workers: 1,
                h2_workers: 1,
                banner_sessions: 3,
                echo_sessions: 2,
                ..Workload::default()
            },
            swarm: &[FaultKind::Partition, FaultKind::Latency, FaultKind::Crash],
            ..base(
                "server-first",
                "SMTP-like banner and echo sessions beside HTTP: no detection stall",
            )
        },
        Scenario {
            servers: 2,
            discovered: 2,
            detect_timeout: Duration::from_secs(1),
            workload: Workload {
                h1_workers: 1,
                h2_workers: 1,
                silent_sessions: 2,
                echo_sessions: 1,
                ..Workload::default()
            },
            ..base(
                "silent-client",
                "clients silent past the detection timeout are forwarded, not dropped",
            )
        },
        Scenario {
            swarm: &[FaultKind::Latency],
            plan: |rng, s| {
                let server = rng.random_range(0..s.servers);
                let (start, len) = (secs(rng, 1.0, 2.5), secs(rng, 1.0, 2.5));
                window(rng, FaultKind::OneWayPartition, server, start, len).to_vec()
            },
            ..base(
                "one-way-partition",
                "one direction between sidecar and a server drops everything, then heals",
            )
        },
        Scenario {
            plan: |rng, s| {
                let (start, len) = (secs(rng, 1.0, 2.0), secs(rng, 2.0, 3.5));
                let mut steps = Vec::new();
                for server in 0..s.servers {
                    steps.extend(window(rng, FaultKind::Loss, server, start, len));
                }
                steps
            },
            ..base(
                "lossy-links",
                "every sidecar-server link flaps and loses what is in flight",
            )
        },
        Scenario {
            swarm: &FaultKind::ALL,
            ..base("chaos", "swarm of every fault kind, drawn from the seed")
        },
        Scenario {
            servers: 4,
            discovered: 4,
            workload: Workload {
                h1_workers: 1,
                h2_workers: 1,
                grpc_workers: 4,
                ..Workload::default()
            },
            grpc_route: true,
            swarm: &[FaultKind::Crash, FaultKind::Latency],
            plan: half_failing,
            checks: &[Check::RetriesRecover, Check::GrpcRetriesRecover],
            ..base(
                "grpc",
                "gRPC unary calls, half the endpoints half UNAVAILABLE, crashes: the retrying route recovers them",
            )
        },
        Scenario {
            capacity: Some(OVERLOAD_CAPACITY),
            workload: Workload {
                h1_workers: 0,
                h2_workers: 0,
                open_loop: Some(OpenLoop {
                    rate: 100.0,
                    connections: 2,
                }),
                ..Workload::default()
            },
            plan: |rng, s| {
                let at = secs(rng, 1.0, 2.0);
                let delay = Duration::from_millis(rng.random_range(150..=250));
                (0..s.servers)
                    .map(|server| Scheduled {
                        at,
                        action: Action::Slow { server, delay },
                    })
                    .collect()
            },
            checks: &[Check::AttemptsEndInTime, Check::LatencyRecovers],
            ..base(
                "overload",
                "open-loop arrivals above what slowed servers serve until the quiet phase: deadlines bound the queues",
            )
        },
        Scenario {
            servers: 4,
            discovered: 3,
            workload: Workload {
                echo_sessions: 2,
                ..Workload::default()
            },
            mesh: Some(MeshSetup {
                imposter: false,
                legacy: true,
            }),
            plan: rotation_plan,
            checks: &[Check::CertificatesFresh, Check::RotationLosesNothing],
            ..base(
                "credential-rotation",
                "mTLS both ways; every sidecar's certificate rotated under traffic (maybe a CA rollover)",
            )
        },
        Scenario {
            servers: 4,
            discovered: 3,
            mesh: Some(MeshSetup {
                imposter: true,
                legacy: false,
            }),
            swarm: &[FaultKind::Latency],
            plan: |rng, s| {
                let good: Vec<usize> = (0..s.servers - 1).collect();
                let all: Vec<usize> = (0..s.servers).collect();
                vec![
                    Scheduled {
                        at: secs(rng, 0.5, 2.0),
                        action: Action::Endpoints { servers: all },
                    },
                    Scheduled {
                        at: s.traffic,
                        action: Action::Endpoints { servers: good },
                    },
                ]
            },
            checks: &[Check::NoWrongIdentity],
            ..base(
                "wrong-identity",
                "an imposter (rogue CA, other workload, or impersonator) published for the service",
            )
        },
    ]
}

/// `credential-rotation`: maybe a CA rollover first (a new CA trusted
/// everywhere, then issuing); every sidecar rotated once or twice, at
/// least 0.6 s apart (several polls); the fourth server published
/// mid-rotations (fresh HTTP connections); mild latency on some links.
fn rotation_plan(rng: &mut StdRng, s: &Scenario) -> Vec<Scheduled> {
    let mut steps = Vec::new();
    let mut first = 1.0;
    if rng.random_bool(0.5) {
        steps.push(Scheduled {
            at: secs(rng, 0.8, 1.2),
            action: Action::AddCa,
        });
        first = 1.8;
    }
    let mut sidecars = vec![Sidecar::Client, Sidecar::Legacy];
    sidecars.extend((0..s.servers).map(Sidecar::Server));
    for sidecar in sidecars {
        let mut at = secs(rng, first, 3.0);
        for _ in 0..rng.random_range(1..=2) {
            steps.push(Scheduled {
                at,
                action: Action::Rotate { sidecar },
            });
            at += secs(rng, 0.6, 2.0);
        }
    }
    steps.push(Scheduled {
        at: secs(rng, 1.5, 4.5),
        action: Action::Endpoints {
            servers: (0..s.servers).collect(),
        },
    });
    for _ in 0..rng.random_range(0..=2) {
        let server = rng.random_range(0..s.servers);
        let at = secs(rng, 0.5, 4.0);
        steps.push(Scheduled {
            at,
            action: Action::Latency {
                server,
                latency: Duration::from_millis(rng.random_range(10..=40)),
            },
        });
        steps.push(Scheduled {
            at: at + secs(rng, 0.5, 1.5),
            action: Action::RestoreLatency { server },
        });
    }
    steps
}

/// The scenario called `name`.
pub fn find(name: &str) -> Option<Scenario> {
    all().into_iter().find(|s| s.name == name)
}
