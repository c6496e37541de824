//! `needle-sim`: list scenarios, run one seed with its timeline, sweep a
//! range of seeds, replay a failure.

use std::ops::Range;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use needle_sim::oracle;
use needle_sim::scenario::{self, Scenario};
use needle_sim::sweep;
use needle_sim::world;

#[derive(Parser, Debug)]
#[command(about = "Needle under simulated faults, replayable by seed")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The scenarios.
    List,
    /// One run: its timeline (simulated time) and the oracles' verdicts.
    Run {
        /// Scenario name (see `list`).
        scenario: String,
        /// The seed.
        #[arg(long)]
        seed: u64,
        /// Print only the verdicts, not the timeline.
        #[arg(long)]
        quiet: bool,
    },
    /// Many seeds, in parallel: failures with their replay commands, and
    /// coverage of faults and oracles.
    Sweep {
        /// Scenario name, or `all`.
        scenario: String,
        /// Seeds as `A..B` (B excluded).
        #[arg(long, value_parser = parse_range)]
        seeds: Range<u64>,
        /// Worker threads (default: available cores).
        #[arg(long)]
        threads: Option<usize>,
        /// Run each seed twice and compare trace digests.
        #[arg(long)]
        twice: bool,
    },
    /// Replays a failure: runs the seed twice (the digests must agree),
    /// prints the timeline and the verdicts.
    Replay {
        /// Scenario name.
        scenario: String,
        /// The seed.
        #[arg(long)]
        seed: u64,
    },
}

fn parse_range(s: &str) -> Result<Range<u64>, String> {
    let (a, b) = s.split_once("..").ok_or("expected A..B")?;
    let a = a.parse().map_err(|e| format!("{a}: {e}"))?;
    let b = b.parse().map_err(|e| format!("{b}: {e}"))?;
    if a >= b {
        return Err("empty range".into());
    }
    Ok(a..b)
}

fn scenario_named(name: &str) -> Result<Scenario, String> {
    scenario::find(name).ok_or_else(|| format!("no scenario {name:?}; see `needle-sim list`"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::List => {
            for s in scenario::all() {
                println!("{:<18} {}", s.name, s.about);
            }
            Ok(true)
        }
        Command::Run {
            scenario,
            seed,
            quiet,
        } => scenario_named(&scenario).map(|s| run_one(&s, seed, !quiet, false)),
        Command::Replay { scenario, seed } => {
            scenario_named(&scenario).map(|s| run_one(&s, seed, true, true))
        }
        Command::Sweep {
            scenario,
            seeds,
            threads,
            twice,
        } => {
            let scenarios = if scenario == "all" {
                Ok(scenario::all())
            } else {
                scenario_named(&scenario).map(|s| vec![s])
            };
            let threads = threads.unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
            });
            scenarios.map(|all| {
                let mut ok = true;
                for s in &all {
                    ok &= sweep_one(s, seeds.clone(), threads, twice);
                }
                ok
            })
        }
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// Runs one seed; prints the timeline when asked; returns whether every
/// oracle held.
fn run_one(scenario: &Scenario, seed: u64, timeline: bool, twice: bool) -> bool {
    println!("scenario {} seed {seed}", scenario.name);
    let run = world::run(scenario, seed);
    if timeline {
        for event in &run.events {
            println!("{event}");
        }
    }
    let mut findings = oracle::check(&run, scenario.checks);
    if twice {
        let again = world::run(scenario, seed);
        findings.push(oracle::Finding {
            oracle: "same-seed-same-digest",
            verdict: oracle::same_seed_same_digest(&run, &again),
        });
    }
    let kinds: Vec<_> = run.drawn.iter().map(|k| k.name()).collect();
    println!(
        "\n{} requests, {} server arrivals, {} sessions; swarm drew {kinds:?}; digest {:016x}",
        run.requests.len(),
        run.arrivals.len(),
        run.sessions.len(),
        run.digest
    );
    for f in &findings {
        let state = match (&f.verdict.violation, f.verdict.exercised) {
            (Some(_), _) => "FAIL",
            (None, true) => "ok",
            (None, false) => "ok (not exercised)",
        };
        println!("  {:<28} {state}", f.oracle);
    }
    let failures = oracle::failures(&run, &findings);
    for failure in &failures {
        println!("{failure}");
    }
    failures.is_empty()
}

/// Sweeps one scenario and prints its summary.
fn sweep_one(scenario: &Scenario, seeds: Range<u64>, threads: usize, twice: bool) -> bool {
    let started = Instant::now();
    let summary = sweep::sweep(scenario, seeds.clone(), threads, twice);
    println!(
        "{}: seeds {}..{} on {threads} threads: {} runs, {} requests, {} failures, {:.1} s",
        scenario.name,
        seeds.start,
        seeds.end,
        summary.runs,
        summary.requests,
        summary.failures.len(),
        started.elapsed().as_secs_f64()
    );
    println!("  faults applied (runs): {:?}", summary.faults);
    println!("  oracles exercised (runs): {:?}", summary.oracles);
    println!("  Needle's own answers: {:?}", summary.needle_errors);
    for failure in summary.failures.iter().take(20) {
        println!("  {failure}");
    }
    if summary.failures.len() > 20 {
        println!("  ... and {} more", summary.failures.len() - 20);
    }
    summary.failures.is_empty()
}
