//! The mesh in the simulator: sidecars on both sides speaking mutual TLS.
//!
//! In a meshed world the client's sidecar originates mTLS
//! (`HttpProxy::meshed`), and every server host (and the legacy host) runs
//! an inbound `Port` in front of its application, on the same turmoil
//! host: discovery publishes each endpoint as meshed, with the identity
//! its proxy must prove and the proxy's address. Everything is the
//! production stack; this module brings what a run needs around it:
//!
//! - **a PKI drawn from the seed** ([`Pki`]): Ed25519 keys from the seed's
//!   RNG (rcgen, PKCS#8 built from 32 seed bytes), certificates valid on
//!   *simulated* time, written to credential files the sidecars load with
//!   `MeshIdentity::from_files` and watch with `MeshIdentity::watch`, as
//!   in production; rotating a sidecar's credentials is writing new files;
//! - **a crypto provider for the simulation** ([`provider`]): *ring*'s,
//!   with rustls's randomness (client and server randoms, session ids)
//!   drawn from a per-thread RNG seeded for the run, and Ed25519
//!   verification that records which certificate each handshake's
//!   `CertificateVerify` proved ([`Handshake`]). *ring* still draws the
//!   ECDHE (X25519) key shares from the OS: its RNG trait is sealed. Key
//!   shares have a fixed size, so the trace (times, sizes, outcomes) does
//!   not depend on them; the same-seed-same-digest tests check it;
//! - **the inbound sidecars** ([`inbound_sidecar`]) and a rogue
//!   [`impersonator`] that presents its certificate whatever it is asked.
//!
//! Everything a run records lands in a [`MeshRecord`] for the oracles.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use needle_core::identity::SpiffeId;
use needle_io::discovery::{Meshed, StaticDiscovery};
use needle_io::http::{HttpConfig, HttpProxy};
use needle_io::meta::Direction;
use needle_io::metrics::Metrics;
use needle_io::net::{Network, TurmoilNet};
use needle_io::proxy::{Port, PortConfig};
use needle_io::tls::{self, CredentialFiles, MeshIdentity, WallClock};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::SignatureScheme;
use rustls::crypto::{CryptoProvider, GetRandomFailed, SecureRandom, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    AlgorithmIdentifier, InvalidSignature, PrivatePkcs8KeyDer, SignatureVerificationAlgorithm,
    UnixTime,
};
use time::OffsetDateTime;

use crate::trace::{self, Trace};

/// Where each server host's inbound sidecar listens.
pub const SERVER_MESH_PORT: u16 = 4143;
/// Where the legacy host's inbound sidecar listens.
pub const LEGACY_MESH_PORT: u16 = 4144;
/// How often every sidecar looks at its credential files.
pub const POLL: Duration = Duration::from_millis(100);
/// How long after new files are written a handshake may still show the
/// previous certificate: the next poll, plus a handshake already under
/// way (a few round trips of at most 40 ms).
pub const PICKUP: Duration = Duration::from_millis(400);
/// The client workload's identity.
pub const CLIENT_ID: &str = "spiffe://sim.test/ns/default/sa/client";
/// The servers' identity (one service, one identity).
pub const API_ID: &str = "spiffe://sim.test/ns/default/sa/api";
/// The legacy host's identity.
pub const LEGACY_ID: &str = "spiffe://sim.test/ns/default/sa/legacy";
/// A workload of the same trust domain that is not the service.
pub const OTHER_ID: &str = "spiffe://sim.test/ns/default/sa/billing";

/// A sidecar with credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Sidecar {
    /// The client's (outbound) sidecar.
    Client,
    /// The inbound sidecar of `server{i}`.
    Server(usize),
    /// The legacy host's inbound sidecar.
    Legacy,
    /// The imposter's.
    Imposter,
}

impl Sidecar {
    /// Its name in records and file paths.
    pub fn label(self) -> String {
        match self {
            Sidecar::Client => "client".into(),
            Sidecar::Server(i) => format!("server{i}"),
            Sidecar::Legacy => "legacy".into(),
            Sidecar::Imposter => "imposter".into(),
        }
    }
}

/// What the imposter endpoint is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImposterKind {
    /// A Needle sidecar with the service's SPIFFE ID, signed by a CA the
    /// mesh does not trust: the client must refuse its certificate.
    RogueCa,
    /// A Needle sidecar of another workload of the trust domain: it
    /// refuses the connection itself (the SNI names someone else).
    OtherWorkload,
    /// A rogue server holding a valid certificate of another workload,
    /// presenting it whatever the SNI: the client must refuse the identity.
    Impersonator,
}

impl ImposterKind {
    /// The kind a seed uses.
    pub fn draw(seed: u64) -> ImposterKind {
        match StdRng::seed_from_u64(seed ^ 0x1390_57e4).random_range(0..3) {
            0 => ImposterKind::RogueCa,
            1 => ImposterKind::OtherWorkload,
            _ => ImposterKind::Impersonator,
        }
    }
}

/// How a scenario meshes its world.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeshSetup {
    /// The last server is an imposter (of a seed-drawn [`ImposterKind`]).
    pub imposter: bool,
    /// Opaque sessions to the legacy host cross the mesh too.
    pub legacy: bool,
}

/// Which certificate a handshake's `CertificateVerify` proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handshake {
    /// When it was verified.
    pub at: Duration,
    /// `"server"` (verified by a client) or `"client"`.
    pub side: &'static str,
    /// Whose certificate and which of its leaves (0 is the first); `None`
    /// for a key this run never issued.
    pub cert: Option<(Sidecar, u32)>,
}

/// What the mesh did during a run.
#[derive(Clone, Debug, Default)]
pub struct MeshRecord {
    /// Every verified `CertificateVerify`, in order.
    pub handshakes: Vec<Handshake>,
    /// Every leaf issued and written to a sidecar's files: when, whose,
    /// which (the initial ones at zero).
    pub issued: Vec<(Duration, Sidecar, u32)>,
    /// Per sidecar: how many times its files were rewritten after the
    /// start, and the generation its identity reached.
    pub generations: Vec<(Sidecar, u64, u64)>,
    /// The imposter: its kind, its server index, its proxy's address.
    pub imposter: Option<(ImposterKind, usize, SocketAddr)>,
}

// ---------------------------------------------------------------------
// Seeded randomness and recorded verification.

struct Recorder {
    keys: BTreeMap<Vec<u8>, (Sidecar, u32)>,
    handshakes: Vec<Handshake>,
    trace: Trace,
}

thread_local! {
    static TLS_RNG: RefCell<StdRng> = RefCell::new(StdRng::seed_from_u64(0));
    static RECORDER: RefCell<Option<Recorder>> = const { RefCell::new(None) };
}

/// Seeds this thread's TLS randomness and starts recording handshakes
/// into `trace` (one world runs on one thread).
pub fn start_run(seed: u64, trace: Trace) {
    TLS_RNG.with(|r| *r.borrow_mut() = StdRng::seed_from_u64(seed ^ 0x7e15_5eed));
    RECORDER.with(|r| {
        *r.borrow_mut() = Some(Recorder {
            keys: BTreeMap::new(),
            handshakes: Vec::new(),
            trace,
        });
    });
}

/// Stops recording; returns the handshakes seen.
pub fn finish_run() -> Vec<Handshake> {
    RECORDER.with(|r| {
        r.borrow_mut()
            .take()
            .map(|r| r.handshakes)
            .unwrap_or_default()
    })
}

fn register_key(public: Vec<u8>, owner: Sidecar, leaf: u32) {
    RECORDER.with(|r| {
        if let Some(r) = r.borrow_mut().as_mut() {
            r.keys.insert(public, (owner, leaf));
        }
    });
}

/// rustls's randomness, from the run's seed.
#[derive(Debug)]
struct SeededRandom;

impl SecureRandom for SeededRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        TLS_RNG.with(|r| r.borrow_mut().fill_bytes(buf));
        Ok(())
    }
}

/// *ring*'s Ed25519 verification, recording every TLS 1.3
/// `CertificateVerify` it accepts (not the chain's signatures, nor the
/// proof of possession made when credentials load).
#[derive(Debug)]
struct RecordingEd25519;

fn ed25519() -> &'static dyn SignatureVerificationAlgorithm {
    static INNER: OnceLock<&'static dyn SignatureVerificationAlgorithm> = OnceLock::new();
    *INNER.get_or_init(|| {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == SignatureScheme::ED25519)
            .map(|(_, algs)| algs[0])
            .expect("ring verifies Ed25519")
    })
}

/// The context strings TLS 1.3 signs after 64 spaces (RFC 8446, 4.4.3).
const SERVER_CONTEXT: &[u8] = b"TLS 1.3, server CertificateVerify\0";
const CLIENT_CONTEXT: &[u8] = b"TLS 1.3, client CertificateVerify\0";

impl SignatureVerificationAlgorithm for RecordingEd25519 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        ed25519().verify_signature(public_key, message, signature)?;
        let side = match message.get(64..) {
            Some(m) if message[..64].iter().all(|&b| b == b' ') => {
                if m.starts_with(SERVER_CONTEXT) {
                    "server"
                } else if m.starts_with(CLIENT_CONTEXT) {
                    "client"
                } else {
                    return Ok(());
                }
            }
            _ => return Ok(()),
        };
        RECORDER.with(|r| {
            if let Some(r) = r.borrow_mut().as_mut() {
                let cert = r.keys.get(public_key).copied();
                let at = trace::now();
                let name = cert.map_or("unknown".to_owned(), |(s, n)| format!("{}#{n}", s.label()));
                r.trace
                    .record_at(at, "tls", format!("{side} certificate {name}"));
                r.handshakes.push(Handshake { at, side, cert });
            }
        });
        Ok(())
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        ed25519().public_key_alg_id()
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        ed25519().signature_alg_id()
    }
}

static ALGORITHMS: &[&dyn SignatureVerificationAlgorithm] = &[&RecordingEd25519];
type Mapping = [(
    SignatureScheme,
    &'static [&'static dyn SignatureVerificationAlgorithm],
)];
static MAPPING: &Mapping = &[(SignatureScheme::ED25519, ALGORITHMS)];

/// The simulation's crypto provider: *ring*'s, with seeded randomness and
/// recorded (Ed25519-only) verification.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(CryptoProvider {
        secure_random: &SeededRandom,
        signature_verification_algorithms: WebPkiSupportedAlgorithms {
            all: ALGORITHMS,
            mapping: MAPPING,
        },
        ..rustls::crypto::ring::default_provider()
    })
}

// ---------------------------------------------------------------------
// The PKI.

/// An Ed25519 PKCS#8 (v1) document: this prefix, then the 32-byte seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

fn key(rng: &mut StdRng) -> KeyPair {
    let mut der = ED25519_PKCS8_PREFIX.to_vec();
    let mut seed = [0u8; 32];
    rng.fill_bytes(&mut seed);
    der.extend_from_slice(&seed);
    KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(der), &rcgen::PKCS_ED25519)
        .expect("an Ed25519 key from 32 bytes")
}

fn at(secs: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(i64::MAX))
        .expect("a representable time")
}

/// A certificate authority.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    /// Valid from a day before `epoch` to a year after.
    fn new(name: &str, rng: &mut StdRng, epoch: u64) -> Ca {
        let key = key(rng);
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.not_before = at(epoch - 86_400);
        params.not_after = at(epoch + 365 * 86_400);
        let cert = params.self_signed(&key).expect("a CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `id` valid over `[not_before, not_after]`: its PEM and
    /// key PEM, and its raw public key.
    fn leaf(
        &self,
        id: &str,
        rng: &mut StdRng,
        not_before: u64,
        not_after: u64,
    ) -> (String, String, Vec<u8>) {
        let key = key(rng);
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "workload");
        params.subject_alt_names = vec![SanType::URI(id.try_into().expect("a URI"))];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = at(not_before);
        params.not_after = at(not_after);
        let cert = params
            .signed_by(&key, &self.issuer)
            .expect("a leaf certificate");
        (
            cert.pem(),
            key.serialize_pem(),
            key.public_key_raw().to_vec(),
        )
    }
}

/// One sidecar's credential files and what was written to them.
struct Holder {
    id: &'static str,
    files: CredentialFiles,
    leaves: u32,
    writes: u64,
    chain: String,
    key: String,
    rogue: bool,
}

/// The run's certificate authorities and every sidecar's credential files
/// (in a directory of their own, removed when the PKI is dropped).
pub struct Pki {
    dir: PathBuf,
    rng: StdRng,
    epoch: u64,
    /// Leaves come from `cas[issuing]`; the bundle trusts all of `cas`.
    cas: Vec<Ca>,
    issuing: usize,
    rogue: Ca,
    holders: BTreeMap<Sidecar, Holder>,
    issued: Vec<(Duration, Sidecar, u32)>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish()
    }
}

/// How long the first leaves last: past the traffic phase, so that a
/// sidecar whose rotation was never installed fails in the quiet phase.
pub const FIRST_LEAF_LIFETIME: Duration = Duration::from_secs(7);

impl Pki {
    /// A PKI for `sidecars`, drawn from `seed`, its certificates valid
    /// around `epoch` (seconds since 1970, the simulation's start).
    /// `imposter` (if any) gets credentials of its kind.
    pub fn new(
        seed: u64,
        epoch: u64,
        sidecars: &[Sidecar],
        imposter: Option<ImposterKind>,
    ) -> std::io::Result<Pki> {
        static RUNS: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "needle-sim-{}-{}-{seed}",
            std::process::id(),
            RUNS.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let mut rng = StdRng::seed_from_u64(seed ^ 0x0c0f_fee5);
        let mesh = Ca::new("mesh CA", &mut rng, epoch);
        let rogue = Ca::new("rogue CA", &mut rng, epoch);
        let mut pki = Pki {
            dir,
            rng,
            epoch,
            cas: vec![mesh],
            issuing: 0,
            rogue,
            holders: BTreeMap::new(),
            issued: Vec::new(),
        };
        let mut all: Vec<(Sidecar, &'static str, bool)> = sidecars
            .iter()
            .map(|&s| {
                let id = match s {
                    Sidecar::Client => CLIENT_ID,
                    Sidecar::Server(_) | Sidecar::Imposter => API_ID,
                    Sidecar::Legacy => LEGACY_ID,
                };
                (s, id, false)
            })
            .collect();
        match imposter {
            Some(ImposterKind::RogueCa) => all.push((Sidecar::Imposter, API_ID, true)),
            Some(_) => all.push((Sidecar::Imposter, OTHER_ID, false)),
            None => {}
        }
        for (sidecar, id, rogue) in all {
            let sub = pki.dir.join(sidecar.label());
            std::fs::create_dir_all(&sub)?;
            pki.holders.insert(
                sidecar,
                Holder {
                    id,
                    files: CredentialFiles {
                        chain: sub.join("cert.pem"),
                        key: sub.join("key.pem"),
                        bundle: sub.join("ca.pem"),
                    },
                    leaves: 0,
                    writes: 0,
                    chain: String::new(),
                    key: String::new(),
                    rogue,
                },
            );
            let lifetime = if sidecar == Sidecar::Imposter {
                Duration::from_secs(3600)
            } else {
                FIRST_LEAF_LIFETIME
            };
            pki.issue(sidecar, Duration::ZERO, lifetime)?;
        }
        Ok(pki)
    }

    /// The files `sidecar` loads.
    pub fn files(&self, sidecar: Sidecar) -> CredentialFiles {
        self.holders[&sidecar].files.clone()
    }

    /// A new leaf for `sidecar`, issued `now` into the run, written to its
    /// files (the first write is not a rotation).
    fn issue(
        &mut self,
        sidecar: Sidecar,
        now: Duration,
        lifetime: Duration,
    ) -> std::io::Result<()> {
        let start = self.epoch + now.as_secs();
        let holder = self.holders.get_mut(&sidecar).expect("a known sidecar");
        let ca = if holder.rogue {
            &self.rogue
        } else {
            &self.cas[self.issuing]
        };
        // Valid from a second before now: issue times are rounded down.
        let (chain, key, public) = ca.leaf(
            holder.id,
            &mut self.rng,
            start - 1,
            start + lifetime.as_secs(),
        );
        let number = holder.leaves;
        holder.leaves += 1;
        holder.chain = chain;
        holder.key = key;
        register_key(public, sidecar, number);
        self.issued.push((now, sidecar, number));
        self.write(sidecar, number > 0)
    }

    /// Writes `sidecar`'s files; `rotation`: counted as a rewrite the
    /// identity must install.
    fn write(&mut self, sidecar: Sidecar, rotation: bool) -> std::io::Result<()> {
        let bundle: String = if self.holders[&sidecar].rogue {
            self.rogue.pem.clone()
        } else {
            self.cas.iter().map(|c| c.pem.as_str()).collect()
        };
        let holder = self.holders.get_mut(&sidecar).expect("a known sidecar");
        // As a rotator does: each file to a temporary name, then renamed
        // over the old one.
        for (path, contents) in [
            (&holder.files.bundle, &bundle),
            (&holder.files.chain, &holder.chain),
            (&holder.files.key, &holder.key),
        ] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, contents)?;
            std::fs::rename(&tmp, path)?;
        }
        if rotation {
            holder.writes += 1;
        }
        Ok(())
    }

    /// Rotates `sidecar`'s credentials at `now`: a new leaf (an hour long)
    /// from the issuing CA.
    pub fn rotate(&mut self, sidecar: Sidecar, now: Duration) -> std::io::Result<()> {
        self.issue(sidecar, now, Duration::from_secs(3600))
    }

    /// CA rollover, first step: a new CA joins every mesh sidecar's trust
    /// bundle (their files are rewritten with the same leaf) and issues
    /// every leaf from now on.
    pub fn add_ca(&mut self) -> std::io::Result<()> {
        let n = self.cas.len();
        let ca = Ca::new(&format!("mesh CA {n}"), &mut self.rng, self.epoch);
        self.cas.push(ca);
        self.issuing = n;
        let sidecars: Vec<Sidecar> = self
            .holders
            .iter()
            .filter(|(_, h)| !h.rogue)
            .map(|(s, _)| *s)
            .collect();
        for s in sidecars {
            self.write(s, true)?;
        }
        Ok(())
    }

    /// Leaves issued so far.
    pub fn issued(&self) -> Vec<(Duration, Sidecar, u32)> {
        self.issued.clone()
    }

    /// How many times each sidecar's files were rewritten after the start.
    pub fn writes(&self) -> Vec<(Sidecar, u64)> {
        self.holders.iter().map(|(s, h)| (*s, h.writes)).collect()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------
// Sidecars.

/// The identities the sidecars loaded, for the generations at the end.
pub type Identities = Arc<Mutex<BTreeMap<Sidecar, Arc<MeshIdentity>>>>;

/// Loads `sidecar`'s identity from `files` on a wall clock on simulated
/// time, starts watching the files, and records it in `identities`.
pub fn load_identity(
    sidecar: Sidecar,
    files: CredentialFiles,
    epoch: u64,
    identities: &Identities,
) -> Result<Arc<MeshIdentity>, Box<dyn std::error::Error>> {
    let unix = Duration::from_secs(epoch) + trace::now();
    let wall = WallClock::starting_at(UnixTime::since_unix_epoch(unix));
    let identity = MeshIdentity::from_files(files, provider(), POLL, wall)?;
    identities
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(sidecar, identity.clone());
    // The production watcher (the binary spawns it the same way).
    tokio::spawn(identity.clone().watch());
    Ok(identity)
}

fn any(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
}

/// An inbound sidecar on `port`, in front of the applications of its
/// host: terminates mTLS addressed to its identity, serves what is inside
/// to `127.0.0.1` and the port the transport header names.
pub async fn inbound_sidecar(
    sidecar: Sidecar,
    files: CredentialFiles,
    epoch: u64,
    port: u16,
    rng_seed: u64,
    identities: Identities,
) -> turmoil::Result {
    let identity = load_identity(sidecar, files, epoch, &identities)?;
    let http = HttpProxy::meshed(
        TurmoilNet,
        HttpConfig {
            rng_seed,
            auto_date_header: false,
            ..HttpConfig::default()
        },
        StaticDiscovery::new(),
        Some(identity),
        Metrics::new(),
    );
    let port_ = Port::with_http(
        TurmoilNet,
        PortConfig {
            direction: Direction::Inbound,
            target: None,
            ..PortConfig::default()
        },
        http,
    );
    let listener = TurmoilNet.bind(any(port)).await?;
    port_.run(listener, std::future::pending()).await;
    Ok(())
}

/// A rogue server on `port`: answers every ClientHello with its own
/// certificate (whatever the SNI asks for) and, should a client accept
/// it, forwards the connection to the application on its host.
pub async fn impersonator(
    files: CredentialFiles,
    epoch: u64,
    port: u16,
    identities: Identities,
) -> turmoil::Result {
    let identity = load_identity(Sidecar::Imposter, files, epoch, &identities)?;
    let listener = turmoil::net::TcpListener::bind(any(port)).await?;
    loop {
        let (conn, _) = listener.accept().await?;
        let identity = identity.clone();
        tokio::task::spawn_local(async move {
            let Ok(mut accepted) = tls::accept(conn, &identity, Duration::from_secs(5)).await
            else {
                return;
            };
            let app = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), accepted.header.port);
            if let Ok(mut app) = turmoil::net::TcpStream::connect(app).await {
                let _ = tokio::io::copy_bidirectional(&mut accepted.stream, &mut app).await;
            }
        });
    }
}

/// The discovery entry of an endpoint whose inbound proxy is at `proxy`
/// and must prove `identity`.
pub fn meshed(identity: &str, proxy: SocketAddr) -> Meshed {
    Meshed {
        identity: SpiffeId::parse(identity).expect("a SPIFFE ID"),
        proxy_addr: Some(proxy),
    }
}

/// The generations the sidecars' identities reached, against the
/// rewrites of their files.
pub fn generations(pki: &Pki, identities: &Identities) -> Vec<(Sidecar, u64, u64)> {
    let ids = identities.lock().unwrap_or_else(PoisonError::into_inner);
    pki.writes()
        .into_iter()
        .map(|(s, writes)| (s, writes, ids.get(&s).map_or(0, |i| i.generation())))
        .collect()
}

/// What a meshed server host runs beside its application: Needle's
/// inbound sidecar, or (for [`ImposterKind::Impersonator`]) the rogue
/// server.
pub fn server_side(
    sidecar: Sidecar,
    imposter: Option<ImposterKind>,
    files: CredentialFiles,
    rng_seed: u64,
    identities: Identities,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = turmoil::Result>>> {
    let epoch = crate::world::EPOCH_SECS;
    match imposter {
        Some(ImposterKind::Impersonator) => {
            Box::pin(impersonator(files, epoch, SERVER_MESH_PORT, identities))
        }
        _ => Box::pin(inbound_sidecar(
            sidecar,
            files,
            epoch,
            SERVER_MESH_PORT,
            rng_seed,
            identities,
        )),
    }
}
