//! Many seeds at once: runs a scenario for a range of seeds on several
//! threads (each run is one turmoil world on one thread), collects the
//! failures with their replay commands, and counts coverage: how often
//! each fault kind was drawn and each oracle exercised.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use crate::faults::{Action, FaultKind};
use crate::ledger::Answer;
use crate::mesh::ImposterKind;
use crate::oracle::{self, Failure};
use crate::scenario::Scenario;
use crate::world;

/// What a sweep found.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Runs made.
    pub runs: u64,
    /// Violations, in seed order.
    pub failures: Vec<Failure>,
    /// Runs in which each fault kind was applied at least once.
    pub faults: BTreeMap<&'static str, u64>,
    /// Runs in which each oracle had something to check.
    pub oracles: BTreeMap<&'static str, u64>,
    /// Requests sent, over all runs.
    pub requests: u64,
    /// Needle's own answers over all runs, by `needle-error` reason.
    pub needle_errors: BTreeMap<String, u64>,
}

impl Summary {
    fn add(&mut self, other: Summary) {
        self.runs += other.runs;
        self.failures.extend(other.failures);
        self.requests += other.requests;
        for (k, v) in other.needle_errors {
            *self.needle_errors.entry(k).or_default() += v;
        }
        for (k, v) in other.faults {
            *self.faults.entry(k).or_default() += v;
        }
        for (k, v) in other.oracles {
            *self.oracles.entry(k).or_default() += v;
        }
    }

    /// Records one run and its findings.
    pub fn record(&mut self, run: &world::Run, findings: &[oracle::Finding]) {
        self.runs += 1;
        self.requests += run.requests.len() as u64;
        for r in &run.requests {
            if let Answer::Response {
                needle_error: Some(reason),
                ..
            } = &r.answer
            {
                *self.needle_errors.entry(reason.clone()).or_default() += 1;
            }
        }
        for kind in FaultKind::ALL {
            if run.applied.iter().any(|s| s.action.starts() == Some(kind)) {
                *self.faults.entry(kind.name()).or_default() += 1;
            }
        }
        // The mesh's own disruptions.
        let mut mesh = Vec::new();
        if run
            .applied
            .iter()
            .any(|s| matches!(s.action, Action::Rotate { .. }))
        {
            mesh.push("rotation");
        }
        if run.applied.iter().any(|s| s.action == Action::AddCa) {
            mesh.push("ca-rollover");
        }
        match run.mesh.as_ref().and_then(|m| m.imposter) {
            Some((ImposterKind::RogueCa, ..)) => mesh.push("imposter-rogue-ca"),
            Some((ImposterKind::OtherWorkload, ..)) => mesh.push("imposter-other-workload"),
            Some((ImposterKind::Impersonator, ..)) => mesh.push("imposter-impersonator"),
            None => {}
        }
        for name in mesh {
            *self.faults.entry(name).or_default() += 1;
        }
        for f in findings {
            let n = self.oracles.entry(f.oracle).or_default();
            if f.verdict.exercised {
                *n += 1;
            }
        }
        self.failures.extend(oracle::failures(run, findings));
    }
}

/// Runs `scenario` for every seed in `seeds` on `threads` threads. With
/// `twice`, each seed runs twice and the digests must match.
pub fn sweep(scenario: &Scenario, seeds: Range<u64>, threads: usize, twice: bool) -> Summary {
    let next = AtomicU64::new(seeds.start);
    let total = Mutex::new(Summary::default());
    std::thread::scope(|scope| {
        for _ in 0..threads.max(1) {
            scope.spawn(|| {
                let mut mine = Summary::default();
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds.end {
                        break;
                    }
                    let run = world::run(scenario, seed);
                    let mut findings = oracle::check(&run, scenario.checks);
                    if twice {
                        let again = world::run(scenario, seed);
                        findings.push(oracle::Finding {
                            oracle: "same-seed-same-digest",
                            verdict: oracle::same_seed_same_digest(&run, &again),
                        });
                    }
                    mine.record(&run, &findings);
                }
                total
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .add(mine);
            });
        }
    });
    let mut summary = total.into_inner().unwrap_or_else(PoisonError::into_inner);
    summary.failures.sort_by_key(|f| f.seed);
    summary
}
