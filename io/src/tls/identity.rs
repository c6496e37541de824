//! The local workload's mesh identity: its credentials, kept current.
//!
//! [`MeshIdentity`] holds the core's [`CredentialStore`] and gives every new
//! handshake the credentials in force at that moment; a handshake keeps the
//! `Arc` it started with, so rotating the files never disturbs a connection
//! already made. [`MeshIdentity::watch`] is the task that looks at the files:
//! the store decides when (its poll interval) and whether (their fingerprint
//! changed) to read them; a bad rotation keeps the last good credentials
//! and logs why.
//!
//! Time: certificate validity is wall-clock time. The identity reads the
//! system clock once, when it is made, and adds `tokio::time`'s elapsed time
//! to it from then on, so under the simulator certificates age on simulated
//! time, and tests can pin the wall clock wherever their certificates are
//! valid ([`WallClock::starting_at`]).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use needle_core::identity::SpiffeId;
use needle_core::tls::{
    CredentialStore, Credentials, CredentialsError, Fingerprint, Now, Reload, Rotated,
};
use rustls::crypto::CryptoProvider;
use rustls_pki_types::UnixTime;
use tracing::{info, warn};

use crate::clock::Clock;

/// Wall-clock time as the mesh needs it: a reading taken once plus
/// `tokio::time`'s elapsed time.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    clock: Clock,
    unix_at_start: Duration,
}

impl WallClock {
    /// Starts from the system's clock, read now (the only read).
    pub fn system() -> Self {
        let unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        WallClock::starting_at(UnixTime::since_unix_epoch(unix))
    }

    /// Starts from `unix` (tests and the simulator).
    pub fn starting_at(unix: UnixTime) -> Self {
        WallClock {
            clock: Clock::start(),
            unix_at_start: Duration::from_secs(unix.as_secs()),
        }
    }

    /// Both clocks' readings, as the core's TLS sessions take them.
    pub fn now(&self) -> Now {
        let instant = self.clock.now();
        let unix = self.unix_at_start + instant.since_origin();
        Now::new(instant, UnixTime::since_unix_epoch(unix))
    }

    /// The monotonic half of [`WallClock::now`] as a `tokio` instant.
    pub fn to_tokio(&self, at: needle_core::time::Instant) -> tokio::time::Instant {
        self.clock.to_tokio(at)
    }
}

/// Where the credentials live on disk (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFiles {
    /// The workload's certificate chain, leaf first.
    pub chain: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// The trust bundle of the workload's trust domain.
    pub bundle: PathBuf,
}

/// Why the identity could not be loaded at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// A file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The files do not make valid credentials.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
}

/// The local workload's identity and credentials.
#[derive(Debug)]
pub struct MeshIdentity {
    store: Mutex<CredentialStore>,
    files: Option<CredentialFiles>,
    wall: WallClock,
}

impl MeshIdentity {
    /// Fixed credentials, never reloaded (tests, or credentials handed over
    /// in memory).
    pub fn fixed(creds: Credentials, wall: WallClock) -> Arc<Self> {
        let store = CredentialStore::new(
            creds,
            Fingerprint::of_contents(&[]),
            Duration::from_secs(3600),
            wall.now().instant,
        );
        Arc::new(MeshIdentity {
            store: Mutex::new(store),
            files: None,
            wall,
        })
    }

    /// Credentials read from `files` now, re-read when they change (looked
    /// at every `poll_interval` once [`MeshIdentity::watch`] runs).
    pub fn from_files(
        files: CredentialFiles,
        provider: Arc<CryptoProvider>,
        poll_interval: Duration,
        wall: WallClock,
    ) -> Result<Arc<Self>, IdentityError> {
        let (fingerprint, [chain, key, bundle]) = read_files(&files)?;
        let now = wall.now();
        let creds = Credentials::from_pem(provider, &chain, &key, &bundle, now.unix)?;
        let store = CredentialStore::new(creds, fingerprint, poll_interval, now.instant);
        Ok(Arc::new(MeshIdentity {
            store: Mutex::new(store),
            files: Some(files),
            wall,
        }))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CredentialStore> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The credentials a handshake starting now uses.
    pub fn current(&self) -> Arc<Credentials> {
        self.lock().current().clone()
    }

    /// The workload's identity (from the current certificate).
    pub fn id(&self) -> SpiffeId {
        self.lock().current().identity().clone()
    }

    /// How many rotations have been installed.
    pub fn generation(&self) -> u64 {
        self.lock().generation()
    }

    /// When the current certificate expires, in seconds since the epoch.
    pub fn not_after_secs(&self) -> u64 {
        self.lock().not_after().as_secs()
    }

    /// The time, as handshakes need it.
    pub fn now(&self) -> Now {
        self.wall.now()
    }

    /// The wall clock handshakes are judged by.
    pub fn wall(&self) -> &WallClock {
        &self.wall
    }

    /// Looks at the files once: reads them if the store says they changed,
    /// and installs them if they are valid. `None` when nothing was read.
    pub fn check_files(&self) -> Option<Result<Rotated, IdentityError>> {
        let files = self.files.as_ref()?;
        let now = self.wall.now();
        let read = read_files(files);
        let mut store = self.lock();
        let (fingerprint, [chain, key, bundle]) = match read {
            Ok(read) => read,
            // A file mid-replacement (or gone): try again next poll.
            Err(e) => {
                let _ = store.handle_fingerprint(now.instant, Fingerprint::of_contents(&[]));
                return Some(Err(e));
            }
        };
        match store.handle_fingerprint(now.instant, fingerprint) {
            Reload::Unchanged => None,
            Reload::Read => Some(
                store
                    .handle_files(fingerprint, &chain, &key, &bundle, now.unix)
                    .map_err(IdentityError::from),
            ),
        }
    }

    /// Watches the files until the identity is dropped elsewhere: call in
    /// its own task. Each poll reads the (small) files with blocking reads,
    /// deliberately: `tokio::fs` would hand them to a blocking pool, which
    /// the simulator cannot make deterministic.
    pub async fn watch(self: Arc<Self>) {
        if self.files.is_none() {
            return;
        }
        let weak = Arc::downgrade(&self);
        drop(self);
        loop {
            let Some(identity) = weak.upgrade() else {
                return;
            };
            let at = identity.wall.to_tokio(identity.lock().poll_timeout());
            drop(identity);
            tokio::time::sleep_until(at).await;
            let Some(identity) = weak.upgrade() else {
                return;
            };
            match identity.check_files() {
                None => {}
                Some(Ok(rotated)) if rotated.identity_changed => warn!(
                    generation = rotated.generation, identity = %rotated.identity,
                    "credentials rotated to a DIFFERENT identity"
                ),
                Some(Ok(rotated)) => info!(
                    generation = rotated.generation, identity = %rotated.identity,
                    not_after = rotated.not_after.as_secs(), "credentials rotated"
                ),
                Some(Err(error)) => {
                    warn!(%error, "credential files not loaded; keeping the previous ones")
                }
            }
        }
    }
}

/// Reads the three files and fingerprints their contents.
fn read_files(files: &CredentialFiles) -> Result<(Fingerprint, [Vec<u8>; 3]), IdentityError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| IdentityError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let contents = [read(&files.chain)?, read(&files.key)?, read(&files.bundle)?];
    let fingerprint = Fingerprint::of_contents(&[&contents[0], &contents[1], &contents[2]]);
    Ok((fingerprint, contents))
}
