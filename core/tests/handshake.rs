//! The mTLS handshake driver, client and server paired in virtual time.
//!
//! Each test names the issue point it proves: a good handshake, wrong CA,
//! wrong identity, expiry at exact instants, a missing client certificate,
//! rotation mid-stream, and the same outcome for every byte split.
#![cfg(feature = "tls")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::pair::{Pair, Raw, RawEvent, start};
use common::*;
use needle_core::identity::sni;
use needle_core::time::Instant;
use needle_core::tls::{
    Alpn, CredentialStore, Credentials, Established, Fingerprint, HandshakeError, InputClock, Now,
    Output, Reload, Session,
};
use quickcheck::{QuickCheck, TestResult};
use rustls::AlertDescription;

const DEADLINE: Instant = Instant::from_secs(10);

fn client(creds: &Credentials, target: &str, now: Now) -> Session {
    Session::client(creds, &id(target), &[Alpn::H2], now, DEADLINE).unwrap()
}

fn server(creds: &Credentials, now: Now) -> Session {
    Session::server(creds, &Alpn::ALL, now, DEADLINE).unwrap()
}

/// Client `db` dials server `web`, both issued by one CA, at wall time `at`.
fn pair_at(
    client_creds: &Credentials,
    server_creds: &Credentials,
    at: u64,
) -> Pair<Session, Session> {
    let now = Now::new(Instant::ZERO, unix(at));
    let mut pair = Pair::new(
        client(client_creds, WEB, now),
        server(server_creds, now),
        now,
    );
    pair.drive();
    pair
}

fn established(peer: &str, alpn: Alpn) -> Output {
    Output::Established(Established {
        peer: id(peer),
        alpn,
    })
}

struct Mesh {
    ca: Ca,
    web: Credentials,
    db: Credentials,
}

fn mesh() -> Mesh {
    let ca = Ca::new("mesh ca");
    let web = creds(&ca.leaf(WEB), &ca.pem);
    let db = creds(&ca.leaf(DB), &ca.pem);
    Mesh { ca, web, db }
}

#[test]
fn good_handshake_establishes_both_sides_and_carries_data() {
    let m = mesh();
    let mut pair = pair_at(&m.db, &m.web, T0);
    assert_eq!(pair.client_events, vec![established(WEB, Alpn::H2)]);
    assert_eq!(pair.server_events, vec![established(DB, Alpn::H2)]);
    assert_eq!(
        pair.client.poll_timeout(),
        None,
        "no deadline once established"
    );
    // One round trip: ClientHello, the server's flight, the client's
    // certificate and Finished.
    assert_eq!(pair.wire.len(), 3, "{:?}", pair.wire);
    assert_eq!(
        pair.echo(true, b"GET / HTTP/1.1\r\n\r\n"),
        b"GET / HTTP/1.1\r\n\r\n"
    );
    assert_eq!(
        pair.echo(false, b"HTTP/1.1 200 OK\r\n\r\n"),
        b"HTTP/1.1 200 OK\r\n\r\n"
    );
}

#[test]
fn the_client_sends_the_target_identity_as_sni() {
    let m = mesh();
    let pair = pair_at(&m.db, &m.web, T0);
    let rustls::Connection::Server(conn) = pair.server.rustls() else {
        panic!("server session holds a server connection")
    };
    assert_eq!(
        conn.server_name(),
        Some("web.default.sa.needle.cluster.local")
    );
    assert_eq!(
        sni::server_name(&id(WEB)).unwrap(),
        "web.default.sa.needle.cluster.local"
    );
}

#[test]
fn alpn_picks_the_transport_both_sides_support() {
    let m = mesh();
    let now = start();
    let c = Session::client(&m.db, &id(WEB), &[Alpn::Opaque], now, DEADLINE).unwrap();
    let mut pair = Pair::new(c, server(&m.web, now), now);
    pair.drive();
    assert_eq!(pair.client_events, vec![established(WEB, Alpn::Opaque)]);

    let c = Session::client(&m.db, &id(WEB), &[Alpn::Opaque], now, DEADLINE).unwrap();
    let s = Session::server(&m.web, &[Alpn::H2], now, DEADLINE).unwrap();
    let mut pair = Pair::new(c, s, now);
    pair.drive();
    assert_eq!(
        pair.server_events,
        vec![Output::Failed(HandshakeError::AlpnMismatch)]
    );
    assert_eq!(
        pair.client_events,
        vec![Output::Failed(HandshakeError::PeerAlert(
            AlertDescription::NoApplicationProtocol
        ))]
    );
}

#[test]
fn wrong_ca_is_unknown_issuer() {
    let m = mesh();
    let rogue = Ca::new("rogue ca");
    // The server's certificate is from a CA the client does not trust (the
    // rogue trusts both CAs, so only the client's check can fail).
    let both = format!("{}{}", rogue.pem, m.ca.pem);
    let rogue_web = creds(&rogue.leaf(WEB), &both);
    let pair = pair_at(&m.db, &rogue_web, T0);
    assert_eq!(
        pair.client_events,
        vec![Output::Failed(HandshakeError::UnknownIssuer)]
    );
    assert_eq!(
        pair.server_events,
        vec![Output::Failed(HandshakeError::PeerAlert(
            AlertDescription::UnknownCA
        ))]
    );

    // The client's certificate is from a CA the server does not trust: the
    // client finishes first (TLS 1.3), then learns of the refusal.
    let rogue_db = creds(&rogue.leaf(DB), &both);
    let pair = pair_at(&rogue_db, &m.web, T0);
    assert_eq!(
        pair.server_events,
        vec![Output::Failed(HandshakeError::UnknownIssuer)]
    );
    assert_eq!(
        pair.client_events,
        vec![
            established(WEB, Alpn::H2),
            Output::Failed(HandshakeError::PeerAlert(AlertDescription::UnknownCA))
        ]
    );
}

#[test]
fn wrong_identity_is_refused_by_the_client() {
    // An impostor answers any SNI with a valid certificate for another
    // workload (what a proxy would see after stale discovery sent it to a
    // reused IP, or an attacker with any mesh certificate).
    let m = mesh();
    let leaf = m.ca.leaf(DB);
    let clock = Arc::new(InputClock::new(unix(T0)));
    let key: rustls::pki_types::PrivateKeyDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ServerConfig::builder_with_details(provider(), clock.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone().into()], key)
        .unwrap();
    config.alpn_protocols = vec![b"needle/h2".to_vec()];
    let impostor = Raw::new(
        rustls::ServerConnection::new(Arc::new(config)).unwrap(),
        clock,
    );
    let now = start();
    let mut pair = Pair::new(client(&m.db, WEB, now), impostor, now);
    pair.drive();
    assert_eq!(
        pair.client_events,
        vec![Output::Failed(HandshakeError::WrongIdentity {
            expected: id(WEB),
            found: id(DB)
        })]
    );
    assert_eq!(
        pair.server_events,
        vec![RawEvent::Error(rustls::Error::AlertReceived(
            AlertDescription::CertificateUnknown
        ))]
    );
}

/// A workload of another trust domain, with a certificate from the mesh's
/// own (trusted) CA.
const FOREIGN: &str = "spiffe://other.example/ns/x/sa/y";

fn td(s: &str) -> needle_core::identity::TrustDomain {
    needle_core::identity::TrustDomain::parse(s).unwrap()
}

#[test]
fn a_server_from_a_foreign_trust_domain_is_refused_by_the_client() {
    let m = mesh();
    // The trusted CA issued it, but the bundle vouches for cluster.local
    // only: an SVID must be verified by its own trust domain's bundle.
    let foreign = creds(&m.ca.leaf(FOREIGN), &m.ca.pem);
    let now = start();
    let mut pair = Pair::new(client(&m.db, FOREIGN, now), server(&foreign, now), now);
    pair.drive();
    assert_eq!(
        pair.client_events,
        vec![Output::Failed(HandshakeError::ForeignTrustDomain {
            expected: td("cluster.local"),
            found: td("other.example"),
        })]
    );
    assert_eq!(
        pair.server_events,
        vec![Output::Failed(HandshakeError::PeerAlert(
            AlertDescription::CertificateUnknown
        ))]
    );
}

#[test]
fn a_client_from_a_foreign_trust_domain_is_refused_by_the_server() {
    let m = mesh();
    let leaf = m.ca.leaf(FOREIGN);
    // A Needle client of other.example would refuse web's cluster.local
    // certificate itself; use a raw client that accepts web.
    let clock = Arc::new(InputClock::new(unix(T0)));
    let key: rustls::pki_types::PrivateKeyDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_details(provider(), clock.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(
            needle_core::tls::verify::SpiffeServerVerifier::new(&m.db, id(WEB)),
        ))
        .with_client_auth_cert(vec![leaf.der.clone().into()], key)
        .unwrap();
    config.alpn_protocols = vec![b"needle/h2".to_vec()];
    let name = sni::server_name(&id(WEB)).unwrap().try_into().unwrap();
    let client = Raw::new(
        rustls::ClientConnection::new(Arc::new(config), name).unwrap(),
        clock,
    );
    let now = start();
    let mut pair = Pair::new(client, server(&m.web, now), now);
    pair.drive();
    assert_eq!(
        pair.server_events,
        vec![Output::Failed(HandshakeError::ForeignTrustDomain {
            expected: td("cluster.local"),
            found: td("other.example"),
        })]
    );
}

#[test]
fn sni_for_another_workload_is_refused_by_the_server() {
    let m = mesh();
    let now = start();
    // The client wants `db` but reached `web`'s proxy.
    let mut pair = Pair::new(client(&m.db, DB, now), server(&m.web, now), now);
    pair.drive();
    assert_eq!(
        pair.server_events,
        vec![Output::Failed(HandshakeError::ServerNameMismatch {
            sni: Some("db.default.sa.needle.cluster.local".into())
        })]
    );
    assert_eq!(
        pair.client_events,
        vec![Output::Failed(HandshakeError::PeerAlert(
            AlertDescription::AccessDenied
        ))]
    );
}

#[test]
fn expiry_is_judged_at_the_time_fed_in_exactly() {
    let m = mesh();
    let not_after = T0 + 100;
    let web = creds(&m.ca.leaf_valid(WEB, T0 - DAY, not_after), &m.ca.pem);
    // Valid through its last second...
    let pair = pair_at(&m.db, &web, not_after);
    assert_eq!(pair.client_events, vec![established(WEB, Alpn::H2)]);
    // ...and expired one second later.
    let pair = pair_at(&m.db, &web, not_after + 1);
    assert_eq!(
        pair.client_events,
        vec![Output::Failed(HandshakeError::Expired {
            now: unix(not_after + 1),
            not_after: Some(unix(not_after)),
        })]
    );
    assert_eq!(
        pair.server_events,
        vec![Output::Failed(HandshakeError::PeerAlert(
            AlertDescription::CertificateExpired
        ))]
    );

    // The same holds for the client's certificate, judged by the server.
    let db = creds(&m.ca.leaf_valid(DB, T0 - DAY, not_after), &m.ca.pem);
    let pair = pair_at(&db, &m.web, not_after + 1);
    assert_eq!(
        pair.server_events,
        vec![Output::Failed(HandshakeError::Expired {
            now: unix(not_after + 1),
            not_after: Some(unix(not_after)),
        })]
    );
}

#[test]
fn not_yet_valid_is_judged_at_the_time_fed_in_exactly() {
    let m = mesh();
    let not_before = T0 + 50;
    // Loaded once valid; the handshake then runs at an earlier wall time
    // (a clock stepped back, or a peer whose clock is behind).
    let web = creds_at(
        &m.ca.leaf_valid(WEB, not_before, T0 + DAY),
        &m.ca.pem,
        T0 + 60,
    );
    let pair = pair_at(&m.db, &web, not_before);
    assert_eq!(pair.client_events, vec![established(WEB, Alpn::H2)]);
    let pair = pair_at(&m.db, &web, not_before - 1);
    assert_eq!(
        pair.client_events,
        vec![Output::Failed(HandshakeError::NotYetValid {
            now: unix(not_before - 1),
            not_before: Some(unix(not_before)),
        })]
    );
}

#[test]
fn missing_client_certificate_is_refused() {
    let m = mesh();
    let clock = Arc::new(InputClock::new(unix(T0)));
    let mut config = rustls::ClientConfig::builder_with_details(provider(), clock.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(
            needle_core::tls::verify::SpiffeServerVerifier::new(&m.db, id(WEB)),
        ))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"needle/h2".to_vec()];
    let name = sni::server_name(&id(WEB)).unwrap().try_into().unwrap();
    let anonymous = Raw::new(
        rustls::ClientConnection::new(Arc::new(config), name).unwrap(),
        clock,
    );
    let now = start();
    let mut pair = Pair::new(anonymous, server(&m.web, now), now);
    pair.drive();
    assert_eq!(
        pair.server_events,
        vec![Output::Failed(HandshakeError::NoClientCertificate)]
    );
    assert_eq!(
        pair.client_events,
        vec![
            RawEvent::HandshakeDone,
            RawEvent::Error(rustls::Error::AlertReceived(
                AlertDescription::CertificateRequired
            ))
        ]
    );
}

#[test]
fn a_certificate_without_a_spiffe_id_is_refused() {
    let m = mesh();
    // Trusted CA, but a DNS SAN instead of a SPIFFE ID. It cannot even be
    // loaded as local credentials, so build the client from a raw config.
    let leaf = m.ca.leaf_with_sans(
        vec![rcgen::SanType::DnsName("db.example".try_into().unwrap())],
        T0 - DAY,
        T0 + DAY,
    );
    let err = Credentials::from_pem(
        provider(),
        leaf.chain_pem.as_bytes(),
        leaf.key_pem.as_bytes(),
        m.ca.pem.as_bytes(),
        unix(T0),
    )
    .unwrap_err();
    assert!(
        matches!(err, needle_core::tls::CredentialsError::Identity(_)),
        "{err:?}"
    );
    let clock = Arc::new(InputClock::new(unix(T0)));
    let key: rustls::pki_types::PrivateKeyDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_details(provider(), clock.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(
            needle_core::tls::verify::SpiffeServerVerifier::new(&m.db, id(WEB)),
        ))
        .with_client_auth_cert(vec![leaf.der.clone().into()], key)
        .unwrap();
    config.alpn_protocols = vec![b"needle/h2".to_vec()];
    let name = sni::server_name(&id(WEB)).unwrap().try_into().unwrap();
    let client = Raw::new(
        rustls::ClientConnection::new(Arc::new(config), name).unwrap(),
        clock,
    );
    let now = start();
    let mut pair = Pair::new(client, server(&m.web, now), now);
    pair.drive();
    assert!(
        matches!(
            pair.server_events.as_slice(),
            [Output::Failed(HandshakeError::NoIdentity(_))]
        ),
        "{:?}",
        pair.server_events
    );
}

#[test]
fn the_deadline_fails_a_stalled_handshake() {
    let m = mesh();
    let now = start();
    let mut c = client(&m.db, WEB, now);
    assert_eq!(c.poll_timeout(), Some(DEADLINE));
    assert!(matches!(c.poll_output(), Some(Output::Transmit(_))));
    c.handle_timeout(Now::new(
        DEADLINE.saturating_sub(Duration::from_nanos(1)),
        unix(T0),
    ));
    assert!(c.is_handshaking());
    c.handle_timeout(Now::new(DEADLINE, unix(T0)));
    assert_eq!(
        c.poll_output(),
        Some(Output::Failed(HandshakeError::Timeout))
    );
    assert_eq!(c.poll_timeout(), None);
    assert_eq!(c.poll_output(), None);
}

#[test]
fn eof_during_the_handshake_is_a_failure() {
    let m = mesh();
    let now = start();
    let mut s = server(&m.web, now);
    s.handle_eof(now);
    assert_eq!(
        s.poll_output(),
        Some(Output::Failed(HandshakeError::UnexpectedEof))
    );
}

#[test]
fn rotation_mid_stream_keeps_old_connections_and_uses_new_certs() {
    let ca = Ca::new("mesh ca");
    let db = creds(&ca.leaf(DB), &ca.pem);
    let first = ca.leaf(WEB);
    let second = ca.leaf_valid(WEB, T0 - 10, T0 + 7 * DAY);
    let fp1 = Fingerprint::of_contents(&[first.chain_pem.as_bytes(), first.key_pem.as_bytes()]);
    let fp2 = Fingerprint::of_contents(&[second.chain_pem.as_bytes(), second.key_pem.as_bytes()]);
    let poll = Duration::from_secs(10);
    let mut store = CredentialStore::new(creds(&first, &ca.pem), fp1, poll, Instant::ZERO);

    // A connection established with the first certificate.
    let mut old = pair_at(&db, store.current(), T0);
    assert_eq!(old.client_events, vec![established(WEB, Alpn::H2)]);

    // io polls: nothing changed, then the files change and are read.
    assert_eq!(store.poll_timeout(), Instant::from_secs(10));
    assert_eq!(
        store.handle_fingerprint(Instant::from_secs(10), fp1),
        Reload::Unchanged
    );
    assert_eq!(
        store.handle_fingerprint(Instant::from_secs(20), fp2),
        Reload::Read
    );
    let rotated = store
        .handle_files(
            fp2,
            second.chain_pem.as_bytes(),
            second.key_pem.as_bytes(),
            ca.pem.as_bytes(),
            unix(T0),
        )
        .unwrap();
    assert_eq!(rotated.generation, 1);
    assert!(!rotated.identity_changed);
    assert_eq!(store.not_after(), unix(T0 + 7 * DAY));
    assert_eq!(
        store.handle_fingerprint(Instant::from_secs(30), fp2),
        Reload::Unchanged
    );

    // The established connection keeps working, both ways.
    assert_eq!(old.echo(true, b"still here"), b"still here");
    assert_eq!(old.echo(false, b"me too"), b"me too");

    // A new handshake presents the new certificate.
    let new = pair_at(&db, store.current(), T0);
    assert_eq!(new.client_events, vec![established(WEB, Alpn::H2)]);
    let presented = new.client.rustls().peer_certificates().unwrap()[0].to_vec();
    assert_eq!(presented, second.der);
    let before = old.client.rustls().peer_certificates().unwrap()[0].to_vec();
    assert_eq!(before, first.der);
}

/// The outcome of one handshake with transmissions cut into `chunks`.
fn outcome(
    client_creds: &Credentials,
    server_creds: &Credentials,
    chunks: Vec<usize>,
) -> (Vec<Output>, Vec<Output>) {
    let now = start();
    let mut pair = Pair::new(
        client(client_creds, WEB, now),
        server(server_creds, now),
        now,
    );
    pair.chunks = chunks;
    pair.drive();
    (pair.client_events, pair.server_events)
}

/// Credentials shared by the property's runs (quickcheck wants a plain fn).
struct SplitFixture {
    web: Credentials,
    db: Credentials,
    rogue_db: Credentials,
    good: (Vec<Output>, Vec<Output>),
    bad: (Vec<Output>, Vec<Output>),
}

fn split_fixture() -> &'static SplitFixture {
    static FIXTURE: std::sync::OnceLock<SplitFixture> = std::sync::OnceLock::new();
    FIXTURE.get_or_init(|| {
        let m = mesh();
        let rogue = Ca::new("rogue");
        let rogue_db = creds(&rogue.leaf(DB), &format!("{}{}", rogue.pem, m.ca.pem));
        let good = outcome(&m.db, &m.web, vec![]);
        let bad = outcome(&rogue_db, &m.web, vec![]);
        SplitFixture {
            web: m.web,
            db: m.db,
            rogue_db,
            good,
            bad,
        }
    })
}

fn same_outcome_for_split(chunks: Vec<u16>) -> TestResult {
    let f = split_fixture();
    // Chunk sizes from 1 byte to 300, in any order.
    let chunks: Vec<usize> = chunks
        .into_iter()
        .map(|c| usize::from(c % 300) + 1)
        .collect();
    if outcome(&f.db, &f.web, chunks.clone()) != f.good {
        return TestResult::error(format!("good handshake differs for {chunks:?}"));
    }
    if outcome(&f.rogue_db, &f.web, chunks.clone()) != f.bad {
        return TestResult::error(format!("failed handshake differs for {chunks:?}"));
    }
    TestResult::passed()
}

#[test]
fn every_byte_split_gives_the_same_outcome() {
    let f = split_fixture();
    assert_eq!(f.good.0, vec![established(WEB, Alpn::H2)]);
    assert_eq!(f.good.1, vec![established(DB, Alpn::H2)]);
    assert_eq!(f.bad.1, vec![Output::Failed(HandshakeError::UnknownIssuer)]);
    QuickCheck::new()
        .tests(200)
        .quickcheck(same_outcome_for_split as fn(Vec<u16>) -> TestResult);
}

#[test]
fn one_byte_at_a_time_gives_the_same_outcome() {
    let m = mesh();
    let (c, s) = outcome(&m.db, &m.web, vec![1]);
    assert_eq!(c, vec![established(WEB, Alpn::H2)]);
    assert_eq!(s, vec![established(DB, Alpn::H2)]);
}

#[test]
fn input_stops_being_taken_when_received_plaintext_is_not_drained() {
    let m = mesh();
    let mut pair = pair_at(&m.db, &m.web, T0);
    let big = vec![7u8; 200 * 1024];
    let mut sent = 0;
    let mut wire = Vec::new();
    while sent < big.len() {
        sent += pair.client.send(&big[sent..]).unwrap();
        while let Some(Output::Transmit(bytes)) = pair.client.poll_output() {
            wire.extend_from_slice(&bytes);
        }
    }
    let now = pair.now;
    let mut fed = 0;
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut stalls = 0;
    while fed < wire.len() {
        let taken = pair.server.handle_input(now, &wire[fed..]);
        if fed + taken < wire.len() {
            stalls += 1;
        }
        fed += taken;
        while let needle_core::tls::Received::Data(n) = pair.server.recv(&mut buf) {
            received.extend_from_slice(&buf[..n]);
        }
    }
    assert!(
        stalls > 0,
        "a 200 KiB burst must hit the plaintext buffer limit"
    );
    assert_eq!(received, big);
}

#[test]
fn input_after_close_notify_is_taken_and_discarded() {
    let m = mesh();
    let mut pair = pair_at(&m.db, &m.web, T0);
    assert_eq!(pair.echo(true, b"request"), b"request");
    // The server answers and closes; the same read brings trailing bytes
    // (whatever a peer writes after close_notify means nothing).
    pair.server.send(b"response").unwrap();
    pair.server.close();
    let mut wire = Vec::new();
    while let Some(Output::Transmit(bytes)) = pair.server.poll_output() {
        wire.extend_from_slice(&bytes);
    }
    let closed_at = wire.len();
    wire.extend_from_slice(&[0x17, 0x03, 0x03, 0x00, 0x05, 1, 2, 3, 4, 5]);
    let now = pair.now;
    assert_eq!(pair.client.handle_input(now, &wire), wire.len());
    let mut buf = [0u8; 64];
    assert_eq!(
        pair.client.recv(&mut buf),
        needle_core::tls::Received::Data(8)
    );
    assert_eq!(&buf[..8], b"response");
    assert_eq!(
        pair.client.recv(&mut buf),
        needle_core::tls::Received::Closed
    );
    // And an io loop feeding more (or re-feeding) is never stuck.
    assert_eq!(
        pair.client.handle_input(now, &wire[closed_at..]),
        wire.len() - closed_at
    );
    assert_eq!(pair.client.handle_input(now, b"x"), 1);
    assert_eq!(pair.client.poll_output(), None);
}

/// A well-formed ClientHello offering TLS 1.2 only, addressed to `sni`, with
/// everything a TLS 1.2 server needs to answer it (ECDHE-AEAD suites, groups,
/// point formats, signature algorithms, EMS, renegotiation_info, ALPN).
/// With `supported_versions`, it also carries that extension listing
/// TLS 1.2 alone (a modern client configured for 1.2); without, it is a
/// legacy client's (legacy_version 0x0303 is all it says).
fn tls12_client_hello(sni: &str, supported_versions: bool) -> Vec<u8> {
    fn u16be(n: usize) -> [u8; 2] {
        u16::try_from(n).unwrap().to_be_bytes()
    }
    fn ext(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
        out.extend_from_slice(&kind.to_be_bytes());
        out.extend_from_slice(&u16be(body.len()));
        out.extend_from_slice(body);
    }
    let mut exts = Vec::new();
    let mut name = vec![0u8];
    name.extend_from_slice(&u16be(sni.len()));
    name.extend_from_slice(sni.as_bytes());
    let mut list = u16be(name.len()).to_vec();
    list.extend_from_slice(&name);
    ext(&mut exts, 0x0000, &list); // server_name
    ext(
        &mut exts,
        0x000a,
        &[0, 6, 0x00, 0x1d, 0x00, 0x17, 0x00, 0x18],
    ); // groups
    ext(&mut exts, 0x000b, &[1, 0]); // ec_point_formats: uncompressed
    ext(
        &mut exts,
        0x000d, // signature_algorithms
        &[
            0, 12, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01, 0x05, 0x03, 0x08, 0x05, 0x05, 0x01,
        ],
    );
    let alpn = b"needle/h2";
    let mut protos = u16be(alpn.len() + 1).to_vec();
    protos.push(u8::try_from(alpn.len()).unwrap());
    protos.extend_from_slice(alpn);
    ext(&mut exts, 0x0010, &protos); // ALPN
    ext(&mut exts, 0x0017, &[]); // extended_master_secret
    ext(&mut exts, 0xff01, &[0]); // renegotiation_info
    if supported_versions {
        ext(&mut exts, 0x002b, &[2, 0x03, 0x03]);
    }

    let mut body = vec![0x03, 0x03]; // legacy_version: TLS 1.2
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session id
    let suites: [u16; 6] = [0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8];
    body.extend_from_slice(&u16be(suites.len() * 2));
    for suite in suites {
        body.extend_from_slice(&suite.to_be_bytes());
    }
    body.extend_from_slice(&[1, 0]); // null compression
    body.extend_from_slice(&u16be(exts.len()));
    body.extend_from_slice(&exts);

    let mut handshake = vec![0x01, 0]; // ClientHello, 24-bit length
    handshake.extend_from_slice(&u16be(body.len()));
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01];
    record.extend_from_slice(&u16be(handshake.len()));
    record.extend_from_slice(&handshake);
    record
}

#[test]
fn a_tls12_only_client_is_refused() {
    // Needle offers TLS 1.3 only. The workspace's rustls is built without
    // its `tls12` feature, so no rustls client can even be configured for
    // 1.2: this ClientHello is made by hand. Were 1.2 ever enabled on the
    // server, it would answer with a ServerHello and this test would fail.
    let m = mesh();
    let name = sni::server_name(&id(WEB)).unwrap();
    for (supported_versions, why) in [
        (
            false,
            rustls::PeerIncompatible::SupportedVersionsExtensionRequired,
        ),
        (true, rustls::PeerIncompatible::Tls12NotOfferedOrEnabled),
    ] {
        let now = start();
        let mut s = server(&m.web, now);
        let hello = tls12_client_hello(&name, supported_versions);
        assert_eq!(s.handle_input(now, &hello), hello.len());
        // A fatal protocol_version alert (level 2, description 70), then
        // the failure.
        assert_eq!(
            s.poll_output(),
            Some(Output::Transmit(vec![0x15, 0x03, 0x03, 0x00, 0x02, 2, 70]))
        );
        assert_eq!(
            s.poll_output(),
            Some(Output::Failed(HandshakeError::Protocol(
                rustls::Error::PeerIncompatible(why)
            )))
        );
        assert_eq!(s.poll_output(), None);
    }
}

#[test]
fn the_client_refuses_a_server_that_picks_no_alpn() {
    // A server with web's genuine certificate that ignores ALPN (an old or
    // misconfigured proxy): the client must not guess the transport.
    let m = mesh();
    let leaf = m.ca.leaf(WEB);
    let clock = Arc::new(InputClock::new(unix(T0)));
    let key: rustls::pki_types::PrivateKeyDer<'static> =
        rustls::pki_types::pem::PemObject::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let config = rustls::ServerConfig::builder_with_details(provider(), clock.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der.clone().into()], key)
        .unwrap();
    assert!(config.alpn_protocols.is_empty());
    let no_alpn = Raw::new(
        rustls::ServerConnection::new(Arc::new(config)).unwrap(),
        clock,
    );
    let now = start();
    let mut pair = Pair::new(client(&m.db, WEB, now), no_alpn, now);
    pair.drive();
    assert_eq!(
        pair.client_events,
        vec![Output::Failed(HandshakeError::AlpnMismatch)]
    );
    assert!(pair.client.send(b"x").is_err());
}
