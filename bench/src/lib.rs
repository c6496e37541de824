//! # needle-bench
//!
//! Criterion micro-benchmarks of `needle-core` live in `benches/`; run them
//! with `cargo bench -p needle-bench`. See `docs/benchmarks.md`.
