//! The CPU cost of one full mutual-TLS handshake between two Needle
//! sessions (client and server, both in this thread, no sockets): what each
//! new meshed connection costs the two proxies together.
//!
//! `cargo bench -p needle-bench --bench handshake`

#![allow(missing_docs)]

#[path = "../../core/tests/common/pki.rs"]
mod pki;

use criterion::{Criterion, criterion_group, criterion_main};
use needle_core::identity::SpiffeId;
use needle_core::time::Instant;
use needle_core::tls::{Alpn, Credentials, Now, Output, Session};
use pki::{Ca, T0, unix};

const WEB: &str = "spiffe://cluster.local/ns/default/sa/web";
const DB: &str = "spiffe://cluster.local/ns/default/sa/db";

/// Runs one handshake to completion; returns the bytes exchanged.
fn handshake(client_creds: &Credentials, server_creds: &Credentials, target: &SpiffeId) -> usize {
    let now = Now::new(Instant::ZERO, unix(T0));
    let deadline = Instant::from_secs(10);
    let mut client = Session::client(client_creds, target, &[Alpn::H2], now, deadline).unwrap();
    let mut server = Session::server(server_creds, &Alpn::ALL, now, deadline).unwrap();
    let mut bytes = 0;
    let mut established = 0;
    loop {
        let mut progress = false;
        while let Some(out) = client.poll_output() {
            match out {
                Output::Transmit(b) => {
                    progress = true;
                    bytes += b.len();
                    server.handle_input(now, &b);
                }
                Output::Established(_) => established += 1,
                Output::Failed(e) => panic!("client failed: {e}"),
            }
        }
        while let Some(out) = server.poll_output() {
            match out {
                Output::Transmit(b) => {
                    progress = true;
                    bytes += b.len();
                    client.handle_input(now, &b);
                }
                Output::Established(_) => established += 1,
                Output::Failed(e) => panic!("server failed: {e}"),
            }
        }
        if !progress {
            break;
        }
    }
    assert_eq!(established, 2);
    bytes
}

fn bench(c: &mut Criterion) {
    let ca = Ca::new("bench ca");
    let web = ca.credentials(WEB);
    let db = ca.credentials(DB);
    let target = SpiffeId::parse(WEB).unwrap();
    let bytes = handshake(&db, &web, &target);
    eprintln!("one handshake exchanges {bytes} bytes (ECDSA P-256 leaves, TLS 1.3)");
    c.bench_function("mtls_handshake_ecdsa_p256_client_and_server", |b| {
        b.iter(|| handshake(&db, &web, &target))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
