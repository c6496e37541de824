//! # needle-core: every decision, none of the waiting
//!
//! This crate is Needle's sans-IO core. It decides which protocol a
//! connection speaks, which endpoint gets a request, whether a failed request
//! is retried, which backend of a split is taken and whether a peer's
//! certificate names the right workload. It never touches a socket, a clock or
//! the operating system's randomness:
//!
//! - time is an input: every state machine is handed `now` as a
//!   [`time::Instant`] and says when it next wants to be woken;
//! - bytes are inputs: slices in, decisions and bytes to send out;
//! - randomness is an input: a seeded RNG owned by the caller.
//!
//! That is what lets the same decisions run under a real runtime in
//! production and under a deterministic network simulator in tests, and what
//! lets every state machine be property-tested alone. The rules are enforced
//! by `core/clippy.toml` (no `HashMap`/`HashSet`, no `std::time::Instant`, no
//! `SystemTime::now`, no OS-seeded RNG) and by `#![forbid(unsafe_code)]`.
//!
//! The modules, one per decision:
//! - [`authz`]: whether an inbound peer may reach a port (a pure function of
//!   the port's policy and the peer's identity).
//! - [`detect`]: which protocol the first bytes of a connection speak.
//! - [`http1`]: where each HTTP/1 request of a client's byte stream ends,
//!   refusing the ambiguous framings request smuggling is built on.
//! - [`identity`]: SPIFFE workload identities, their TLS server-name
//!   encoding, and (with `tls`) reading them out of certificates.
//! - [`route`]: which route a request matches (Gateway API HTTPRoute and
//!   GRPCRoute semantics) and which backend of its weighted split it takes.
//! - [`balance`]: which endpoint of a backend gets the request (power of two
//!   choices over peak-EWMA, on an endpoint set that changes under traffic).
//! - [`accrual`]: when an endpoint is failing enough to be ejected, and when
//!   it is tried again.
//! - [`retry`]: whether a failed attempt is retried (policy, budget,
//!   backoff) and how long each attempt and the whole request may take.
//! - [`backoff`]: exponential backoff with jitter, shared by accrual and
//!   retries.
//! - [`time`]: the core's notion of time (a number, not a clock).
//! - [`transport_header`]: the ten bytes a meshed client proxy sends after
//!   the handshake to name the application port it wants.
//! - `tls` (feature `tls`, on by default): the sans-IO mutual-TLS handshake
//!   driver over rustls, credentials from PEM, and their rotation.
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(
    not(test),
    warn(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod accrual;
pub mod authz;
pub mod backoff;
pub mod balance;
pub mod detect;
pub mod http1;
pub mod identity;
pub mod retry;
pub mod route;
pub mod time;
#[cfg(feature = "tls")]
pub mod tls;
pub mod transport_header;
