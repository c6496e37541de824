//! # Mutual TLS between proxies, sans IO
//!
//! Every meshed connection between two Needle proxies is mutual TLS: the
//! client proxy proves its workload's identity to the server proxy and checks
//! that the server holds the identity discovery promised. This module drives
//! that handshake without touching a socket or a clock.
//!
//! - [`Session`] wraps a rustls client or server connection. It is fed the
//!   bytes that arrived and the current time ([`Now`]), says what to send
//!   ([`Output::Transmit`]) and ends in [`Output::Established`] (the peer's
//!   [`SpiffeId`](crate::identity::SpiffeId) and the agreed [`Alpn`]) or
//!   [`Output::Failed`] with a typed [`HandshakeError`]. Afterwards it keeps
//!   carrying application data, or hands its rustls connection to the data
//!   plane.
//! - [`Credentials`] are the local workload's certificate chain, private key
//!   and trust bundle, parsed from PEM bytes; [`CredentialStore`] decides when
//!   the files should be read again and swaps in new credentials for new
//!   handshakes without disturbing established ones.
//! - [`verify`] holds the certificate checks themselves, usable directly by a
//!   tokio-rustls configuration (see [`client_config`], [`server_config`]).
//!
//! ## Time
//!
//! Certificate validity is judged against wall-clock time, and the core
//! never reads a clock. Each session owns an [`InputClock`], a rustls
//! `TimeProvider` that returns whatever time the session was last fed; every
//! input sets it first. Tests can therefore say "one second after
//! `not_after`" exactly, and the simulator's certificates expire on simulated
//! time.
//!
//! ## Cryptography
//!
//! The caller passes the rustls `CryptoProvider` (an `Arc`), so the simulator
//! can pass one whose `secure_random` is seeded and replay handshakes byte for
//! byte. Production uses `rustls::crypto::ring::default_provider()`: *ring*
//! is what the workspace builds with (pure `cargo build`, no cmake or Go
//! toolchain as aws-lc-rs needs, which matters for the fuzz and cross
//! builds), it is small and audited, and it covers everything Needle
//! negotiates. aws-lc-rs would add FIPS and post-quantum key exchange
//! (X25519MLKEM768); switching is a change of provider, not of code.
//!
//! Only TLS 1.3 is offered, with the provider's TLS 1.3 suites
//! (AES-GCM and ChaCha20-Poly1305, AEAD only) and key exchanges (X25519,
//! P-256, P-384). Session resumption is off on both sides: every connection
//! re-verifies the peer's certificate against the current trust bundle and
//! time, so a rotated bundle or an expired certificate takes effect on the
//! very next connection, and no ticket key needs rotating.

mod alpn;
mod credentials;
mod error;
mod session;
mod store;
pub mod verify;

pub use alpn::Alpn;
pub use credentials::{Credentials, CredentialsError, PemSource};
pub use error::{HandshakeError, SetupError};
pub use session::{Established, Now, Output, Received, SendError, Session};
pub use store::{CredentialStore, Fingerprint, Reload, Rotated};
pub use verify::{InputClock, client_config, server_config};
