//! # needle-io: drives the core over sockets
//!
//! Everything that waits on a socket or a timer lives here; every decision is
//! a call into `needle-core`. The network seam, listeners and proxying arrive
//! with the data-plane work; for now this crate holds the tests that check the
//! core's detector against bytes written by real clients (see `tests/`).
