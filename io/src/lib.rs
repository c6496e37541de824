//! # needle-io: drives the core over sockets
//!
//! Everything that waits on a socket or a timer lives here; every decision is
//! a call into `needle-core`. The code is written once against the
//! [`net::Network`] seam, so the same stack runs over the kernel's sockets in
//! production and over turmoil's in the simulator.
//!
//! - [`net`]: the seam (bind, accept, connect, peek, addresses, original
//!   destination) with tokio and turmoil implementations.
//! - [`clock`]: the core's time read from tokio's (virtual under turmoil).
//! - [`detect`]: drives the core detector over a socket, dialling ahead so
//!   server-speaks-first protocols never stall.
//! - [`opaque`]: forwards opaque TCP with half-close, idle timeout, counts.
//! - [`proxy`]: a port's accept loop and one connection's life.
//! - [`prefixed`]: a stream with the bytes detection read put back in front.
//! - [`http`]: HTTP/1.1 and HTTP/2 (gRPC) proxying: routes, balancing,
//!   retries, per-endpoint connections, upgrades, protections.
//! - [`meta`]: a connection's direction and TLS status (for authorization,
//!   logs and metrics).
//! - [`tls`]: mutual TLS between meshed proxies: the local identity, the
//!   core's handshake driven over a socket, the transport header, and the
//!   established stream.
//! - [`discovery`]: where a destination's requests may go, watched for
//!   changes.
//! - [`metrics`]: golden metrics (Linkerd-compatible names and labels) and
//!   their Prometheus text exposition.

pub mod clock;
pub mod detect;
pub mod discovery;
pub mod http;
pub mod meta;
pub mod metrics;
pub mod net;
pub mod opaque;
mod original_dst;
pub mod prefixed;
pub mod proxy;
pub mod tls;
