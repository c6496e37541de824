//! # needle-sim: Needle under faults, replayable by seed
//!
//! Turmoil worlds built from the real `needle-io` stack arrive with the
//! simulation work (see `docs/simulation.md` once it exists).
