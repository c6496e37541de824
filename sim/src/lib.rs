//! # needle-sim: Needle under faults, replayable by seed
//!
//! A turmoil world built from the real `needle-io` stack (the production
//! `Port` and `HttpProxy` over simulated sockets), driven through a
//! seed-derived fault schedule, and judged by oracles. See
//! `docs/simulation.md`.
//!
//! - [`scenario`]: scenarios as data, and the catalogue;
//! - [`faults`]: fault kinds, windows and swarm-drawn schedules;
//! - [`workload`] and [`servers`]: what clients and servers do, and
//!   [`grpc`]: the little of gRPC they speak;
//! - [`world`]: building and driving one run;
//! - [`mesh`]: mTLS worlds: a seeded PKI, credential files and rotation,
//!   inbound sidecars, the imposter;
//! - [`oracle`]: the properties each run must have;
//! - [`trace`]: the event log and its digest;
//! - [`sweep`]: many seeds in parallel, with coverage counters.

pub mod faults;
pub mod grpc;
pub mod ledger;
pub mod mesh;
pub mod net;
pub mod oracle;
pub mod scenario;
pub mod servers;
pub mod sweep;
pub mod trace;
pub mod workload;
pub mod world;
