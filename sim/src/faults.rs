//! Fault schedules: what goes wrong, when, and to whom, derived from the
//! seed.
//!
//! Faults target the links between the sidecar and the HTTP servers, and
//! the servers themselves; never the client's link to its own sidecar
//! (a pod's loopback) nor the legacy host (see `servers`). Every fault is a
//! window: an action that starts it and one that heals it, and the run's
//! quiet phase begins with [`Action::HealAll`] in any case.
//!
//! **Swarm testing**: a scenario names the fault kinds it may use; the
//! seed decides which of them appear at all in this run (each with
//! probability ½, at least one), then how often, when, for how long and
//! where. Runs with few kinds exercise interactions that a run with every
//! kind at once drowns out.

use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;

use crate::mesh::Sidecar;

/// The kinds of fault a schedule can contain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// Both directions between sidecar and a server drop everything.
    Partition,
    /// One direction drops everything (turmoil `partition_oneway`).
    OneWayPartition,
    /// Messages are held, then delivered at once on release.
    Hold,
    /// A server host crashes, then restarts (turmoil `crash` + `bounce`).
    Crash,
    /// A link's latency rises, then returns.
    Latency,
    /// A link flaps: each millisecond it fails with some probability,
    /// dropping what is in flight (turmoil `fail_rate`, repaired next tick).
    Loss,
    /// A server answers slowly.
    Slow,
    /// A server answers a share of its requests with 503.
    Failing,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 8] = [
        FaultKind::Partition,
        FaultKind::OneWayPartition,
        FaultKind::Hold,
        FaultKind::Crash,
        FaultKind::Latency,
        FaultKind::Loss,
        FaultKind::Slow,
        FaultKind::Failing,
    ];

    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Partition => "partition",
            FaultKind::OneWayPartition => "one-way-partition",
            FaultKind::Hold => "hold",
            FaultKind::Crash => "crash",
            FaultKind::Latency => "latency",
            FaultKind::Loss => "loss",
            FaultKind::Slow => "slow",
            FaultKind::Failing => "failing",
        }
    }
}

/// One change the driver makes to the world.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Cut sidecar ↔ server both ways.
    Partition { server: usize },
    /// Heal a two-way partition.
    Repair { server: usize },
    /// Cut one direction: sidecar → server when `to_server`, else back.
    PartitionOneWay { server: usize, to_server: bool },
    /// Heal a one-way partition.
    RepairOneWay { server: usize, to_server: bool },
    /// Hold messages both ways.
    Hold { server: usize },
    /// Deliver held messages and stop holding.
    Release { server: usize },
    /// Crash the server host.
    Crash { server: usize },
    /// Restart the server host.
    Bounce { server: usize },
    /// Fixed link latency sidecar ↔ server.
    Latency { server: usize, latency: Duration },
    /// Back to the world's latency.
    RestoreLatency { server: usize },
    /// Link flapping with probability `rate` per tick.
    Loss { server: usize, rate: f64 },
    /// No more flapping.
    StopLoss { server: usize },
    /// The server answers `delay` later.
    Slow { server: usize, delay: Duration },
    /// The server answers `ratio` of its requests with 503.
    Failing { server: usize, ratio: f64 },
    /// The server behaves again.
    Behave { server: usize },
    /// Discovery publishes the service with exactly these servers.
    Endpoints { servers: Vec<usize> },
    /// Start of the quiet phase: every fault healed, every server up and
    /// behaving.
    HealAll,
    /// A meshed sidecar's credentials are rotated: a new leaf certificate
    /// written to its files (from the CA issuing at that moment).
    Rotate { sidecar: Sidecar },
    /// CA rollover: a new CA joins every trust bundle and issues every
    /// leaf from then on.
    AddCa,
}

impl Action {
    /// The fault kind this action starts, if it starts one.
    pub fn starts(&self) -> Option<FaultKind> {
        Some(match self {
            Action::Partition { .. } => FaultKind::Partition,
            Action::PartitionOneWay { .. } => FaultKind::OneWayPartition,
            Action::Hold { .. } => FaultKind::Hold,
            Action::Crash { .. } => FaultKind::Crash,
            Action::Latency { .. } => FaultKind::Latency,
            Action::Loss { .. } => FaultKind::Loss,
            Action::Slow { .. } => FaultKind::Slow,
            Action::Failing { .. } => FaultKind::Failing,
            _ => return None,
        })
    }
}

/// An action and when the driver applies it (simulated time since start).
#[derive(Clone, Debug, PartialEq)]
pub struct Scheduled {
    /// When.
    pub at: Duration,
    /// What.
    pub action: Action,
}

/// The start and end actions of a `kind` fault on `server`, with
/// parameters drawn from `rng`.
pub fn window(
    rng: &mut StdRng,
    kind: FaultKind,
    server: usize,
    start: Duration,
    len: Duration,
) -> [Scheduled; 2] {
    let (begin, end) = match kind {
        FaultKind::Partition => (Action::Partition { server }, Action::Repair { server }),
        FaultKind::OneWayPartition => {
            let to_server = rng.random_bool(0.5);
            (
                Action::PartitionOneWay { server, to_server },
                Action::RepairOneWay { server, to_server },
            )
        }
        FaultKind::Hold => (Action::Hold { server }, Action::Release { server }),
        FaultKind::Crash => (Action::Crash { server }, Action::Bounce { server }),
        FaultKind::Latency => (
            Action::Latency {
                server,
                latency: Duration::from_millis(rng.random_range(50..=300)),
            },
            Action::RestoreLatency { server },
        ),
        FaultKind::Loss => (
            Action::Loss {
                server,
                rate: rng.random_range(0.002..0.02),
            },
            Action::StopLoss { server },
        ),
        FaultKind::Slow => (
            Action::Slow {
                server,
                delay: Duration::from_millis(rng.random_range(100..=400)),
            },
            Action::Behave { server },
        ),
        FaultKind::Failing => (
            Action::Failing {
                server,
                ratio: rng.random_range(0.2..=0.8),
            },
            Action::Behave { server },
        ),
    };
    [
        Scheduled {
            at: start,
            action: begin,
        },
        Scheduled {
            at: start + len,
            action: end,
        },
    ]
}

/// Draws which of `kinds` appear in this run (swarm testing), then 1–2
/// windows of each, 0.3–2.5 s long, on random servers, all within
/// `[from, until]`. Returns the kinds drawn and the schedule.
pub fn swarm(
    rng: &mut StdRng,
    kinds: &[FaultKind],
    servers: usize,
    from: Duration,
    until: Duration,
) -> (Vec<FaultKind>, Vec<Scheduled>) {
    let mut drawn: Vec<FaultKind> = kinds
        .iter()
        .copied()
        .filter(|_| rng.random_bool(0.5))
        .collect();
    if drawn.is_empty() && !kinds.is_empty() {
        drawn.push(kinds[rng.random_range(0..kinds.len())]);
    }
    let mut schedule = Vec::new();
    let latest_start = until.saturating_sub(Duration::from_millis(2500)).max(from);
    for &kind in &drawn {
        for _ in 0..rng.random_range(1..=2) {
            let start = rng.random_range(from..=latest_start);
            let len = rng.random_range(Duration::from_millis(300)..=Duration::from_millis(2500));
            let server = rng.random_range(0..servers);
            schedule.extend(window(rng, kind, server, start, len));
        }
    }
    (drawn, schedule)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// The same seed draws the same schedule; every fault ends before the
    /// quiet phase; across seeds, swarm testing leaves kinds out.
    #[test]
    fn schedules_are_seeded_bounded_and_swarmed() {
        let until = Duration::from_secs(8);
        let mut sizes = std::collections::BTreeSet::new();
        for seed in 0..200 {
            let draw = |seed| {
                swarm(
                    &mut StdRng::seed_from_u64(seed),
                    &FaultKind::ALL,
                    3,
                    Duration::from_secs(1),
                    until,
                )
            };
            let (kinds, schedule) = draw(seed);
            assert_eq!((kinds.clone(), schedule.clone()), draw(seed));
            assert!(!kinds.is_empty());
            sizes.insert(kinds.len());
            assert!(
                schedule.iter().all(|s| s.at <= until),
                "seed {seed}: {schedule:?}"
            );
        }
        assert!(
            sizes.contains(&1) && sizes.iter().any(|&n| n >= 6),
            "{sizes:?}"
        );
    }
}
