//! # needle-io: drives the core over sockets
//!
//! Everything that waits on a socket or a timer lives here; every decision is
//! a call into `needle-core`. The network seam, listeners and proxying arrive
//! with the data-plane work; for now this crate holds the tests that check the
//! core against real clients (see `tests/`): the detector against bytes real
//! clients write, and the core's mTLS server driver against a tokio-rustls
//! client over a loopback socket.
