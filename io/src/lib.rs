//! # needle-io: drives the core over sockets
//!
//! Everything that waits on a socket or a timer lives here; every decision is
//! a call into `needle-core`. The code is written once against the
//! [`net::Network`] seam, so the same stack runs over the kernel's sockets in
//! production and over turmoil's in the simulator.
//!
//! - [`net`]: the seam (bind, accept, connect, peek, addresses, original
//!   destination) with tokio and turmoil implementations.
//! - [`prefixed`]: a stream with the bytes detection read put back in front.

pub mod net;
mod original_dst;
pub mod prefixed;
