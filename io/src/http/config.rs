//! What an operator can tune about HTTP proxying, with defaults that are
//! safe to run in production as they are.

use std::time::Duration;

use needle_core::balance::BalanceConfig;
use needle_core::retry::{BudgetConfig, RetryPolicy, Timeouts};

/// Configuration of an [`HttpProxy`](super::HttpProxy).
///
/// Every limit here exists because a peer that does not respect it can
/// otherwise make the proxy hold memory, sockets or tasks for free; the
/// defaults are the ones documented in `docs/data-plane.md`.
#[derive(Clone, Debug)]
pub struct HttpConfig {
    /// Seed of the proxy's random number generator (balancer draws, retry
    /// jitter): the same seed replays the same decisions under simulation.
    pub rng_seed: u64,

    // --- server side (towards the application's client) ---
    /// Time a client has to send a complete HTTP/1 request head (default
    /// 10 s): the slowloris defence. The connection is closed after it.
    pub header_read_timeout: Duration,
    /// Largest HTTP/1 request head, request line included (default 16 KiB);
    /// larger heads are answered 431. For HTTP/2 this is the advertised
    /// `SETTINGS_MAX_HEADER_LIST_SIZE`, enforced by h2 with a 431 too.
    pub max_header_bytes: usize,
    /// Most header fields in one HTTP/1 request (default 100); more are
    /// answered 431.
    pub max_headers: usize,
    /// Longest request target (path and query) Needle forwards (default
    /// 8 KiB); longer targets are answered 414.
    pub max_uri_len: usize,
    /// Most concurrent HTTP/2 streams a client may open (default 256).
    pub h2_max_concurrent_streams: u32,
    /// Streams a client may reset before they are accepted, before the
    /// connection is closed with GOAWAY (default 20; h2's own default): the
    /// HTTP/2 rapid-reset defence (CVE-2023-44487).
    pub h2_max_pending_accept_reset_streams: usize,
    /// Streams Needle may reset because the client misbehaved, before the
    /// connection is closed (default 1024, hyper's default; RUSTSEC-2024-0003).
    pub h2_max_local_error_reset_streams: usize,
    /// Bytes h2 buffers per stream for sending before applying backpressure
    /// (default 400 KiB, h2's default).
    pub h2_max_send_buf_size: usize,
    /// Whether `CONNECT` requests are forwarded (default false: refused with
    /// 405 and `needle-error: connect-not-allowed`). A sidecar forwards to a
    /// known destination; a client asking it to open tunnels elsewhere is
    /// more often an abuse than a need.
    pub allow_connect: bool,

    // --- client side (towards endpoints) ---
    /// Time to establish a TCP connection to an endpoint (default 1 s).
    pub connect_timeout: Duration,
    /// Time for the mutual-TLS handshake and transport header with a
    /// meshed endpoint's proxy, after TCP connected (default 5 s).
    pub mesh_handshake_timeout: Duration,
    /// An idle pooled HTTP/1 connection is closed after this (default 60 s).
    pub h1_idle_timeout: Duration,
    /// Idle HTTP/1 connections kept per endpoint (default 64).
    pub h1_max_idle_per_endpoint: usize,
    /// Interval of HTTP/2 keepalive PINGs to endpoints (default 10 s).
    pub h2_keepalive_interval: Duration,
    /// An endpoint that does not answer a PING within this is considered
    /// dead and its connection closed (default 20 s).
    pub h2_keepalive_timeout: Duration,

    // --- requests ---
    /// Timeouts of routes that do not set their own, and of destinations
    /// without routes (default: 30 s per request, no per-try timeout). They
    /// bound the time to the response head; a streaming body may last longer.
    pub default_timeouts: Timeouts,
    /// Retry policy of destinations without routes (default: core's, i.e.
    /// idempotent methods, 3 attempts, 502–504, 64 KiB replay buffer).
    pub default_retry: RetryPolicy,
    /// Each destination's retry budget (default 20 % + 10/s over 10 s).
    pub retry_budget: BudgetConfig,
    /// Each backend's balancer (RTT prior, decay, failure accrual).
    pub balance: BalanceConfig,
    /// A destination with no client connection for this long is forgotten
    /// (its balancer history and endpoint connections are dropped), so a
    /// proxy that sees many destinations over time does not grow without
    /// bound (default 10 min).
    pub destination_idle_timeout: Duration,
    /// Whether hyper adds a `date` header to responses it generates (default
    /// true; the simulator turns it off, it reads the system clock).
    pub auto_date_header: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            rng_seed: 0x6e65_6564_6c65,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            max_uri_len: 8 * 1024,
            h2_max_concurrent_streams: 256,
            h2_max_pending_accept_reset_streams: 20,
            h2_max_local_error_reset_streams: 1024,
            h2_max_send_buf_size: 400 * 1024,
            allow_connect: false,
            connect_timeout: Duration::from_secs(1),
            mesh_handshake_timeout: Duration::from_secs(5),
            h1_idle_timeout: Duration::from_secs(60),
            h1_max_idle_per_endpoint: 64,
            h2_keepalive_interval: Duration::from_secs(10),
            h2_keepalive_timeout: Duration::from_secs(20),
            default_timeouts: Timeouts {
                request: Some(Duration::from_secs(30)),
                per_try: None,
            },
            default_retry: RetryPolicy::default(),
            retry_budget: BudgetConfig::default(),
            balance: BalanceConfig::default(),
            destination_idle_timeout: Duration::from_secs(600),
            auto_date_header: true,
        }
    }
}
