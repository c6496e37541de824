//! # Rotation without restart
//!
//! Workload certificates live hours, not months, so the proxy must pick up
//! new files while it runs. The split is the usual one: the core decides,
//! io does. [`CredentialStore`] says when to look at the files next
//! ([`CredentialStore::poll_timeout`]); io then computes a cheap
//! [`Fingerprint`] of the three files (their contents' hash, or their
//! metadata) and hands it in; the store answers whether the files changed
//! since the credentials in use were loaded ([`Reload`]); only then does io
//! read them and hand the bytes back.
//!
//! A successful load swaps the `Arc` that new handshakes take
//! ([`CredentialStore::current`]); sessions already running keep the
//! `Arc<Credentials>` they were built with, so established connections are
//! never disturbed. A failed load (a half-written file, a key that does not
//! match yet) keeps the old credentials serving and is not retried until the
//! files change again, so a broken file costs one error, not one per poll.
//!
//! Except when the failure is a matter of time: a renewed certificate whose
//! `not_before` is its issue time is "not yet valid" on a node whose clock is
//! a second behind the issuer's, and the very same files load fine a moment
//! later. Such failures ([`CredentialsError::is_retryable`]) are not
//! remembered: the files are read again on every poll until they load or
//! change. Otherwise the renewal would never be picked up and the old
//! certificate would run out: an outage. An expired certificate is final
//! (time does not run backwards), as is every other error.

use std::sync::Arc;

use rustls_pki_types::UnixTime;

use super::{Credentials, CredentialsError};
use crate::identity::SpiffeId;
use crate::time::{Duration, Instant};

/// A summary of the three credential files that changes when they change.
///
/// io chooses what goes in: hashing the contents ([`Fingerprint::of_contents`])
/// is exact and immune to symlink swaps (how Kubernetes updates mounted
/// secrets) and to coarse mtimes; combining mtime, length and inode into
/// [`Fingerprint::from_raw`] avoids reading the files at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Fingerprint(u64);

impl Fingerprint {
    /// A fingerprint io computed itself.
    pub const fn from_raw(raw: u64) -> Self {
        Fingerprint(raw)
    }

    /// FNV-1a over each file's length and bytes: deterministic across runs
    /// and platforms, no dependency, and collisions only cost a missed
    /// rotation until the next change, never a wrong credential (the bytes
    /// themselves are what get parsed).
    pub fn of_contents(files: &[&[u8]]) -> Self {
        const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
        const PRIME: u64 = 0x0000_0100_0000_01b3;
        let mut h = OFFSET;
        for file in files {
            for b in (file.len() as u64).to_le_bytes().iter().chain(file.iter()) {
                h ^= u64::from(*b);
                h = h.wrapping_mul(PRIME);
            }
        }
        Fingerprint(h)
    }
}

/// Whether io should read the credential files now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    /// Nothing changed since the last load (or the last failed attempt,
    /// unless that failure may resolve itself with time).
    Unchanged,
    /// The files changed: read them and call [`CredentialStore::handle_files`].
    Read,
}

/// What a successful rotation installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rotated {
    /// How many credentials have been installed, the first being 0.
    pub generation: u64,
    /// The identity of the new certificate.
    pub identity: SpiffeId,
    /// Whether that identity differs from the previous certificate's. Not
    /// refused (an operator may mean it), but worth a loud log line.
    pub identity_changed: bool,
    /// The new certificate's end of validity.
    pub not_after: UnixTime,
}

/// The credentials new handshakes use, and the decision of when to re-read
/// them.
#[derive(Debug)]
pub struct CredentialStore {
    current: Arc<Credentials>,
    generation: u64,
    loaded: Fingerprint,
    failed: Option<Fingerprint>,
    poll_interval: Duration,
    next_check: Instant,
}

impl CredentialStore {
    /// Starts with `initial`, loaded from files with fingerprint `loaded`;
    /// the files are next looked at `poll_interval` after `now`.
    pub fn new(
        initial: Credentials,
        loaded: Fingerprint,
        poll_interval: Duration,
        now: Instant,
    ) -> Self {
        CredentialStore {
            current: Arc::new(initial),
            generation: 0,
            loaded,
            failed: None,
            poll_interval,
            next_check: now + poll_interval,
        }
    }

    /// The credentials a new handshake should use.
    pub fn current(&self) -> &Arc<Credentials> {
        &self.current
    }

    /// How many rotations have happened.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The current certificate's end of validity, for metrics.
    pub fn not_after(&self) -> UnixTime {
        self.current.not_after()
    }

    /// When io should next fingerprint the files.
    pub fn poll_timeout(&self) -> Instant {
        self.next_check
    }

    /// io fingerprinted the files at `now`: should it read them?
    pub fn handle_fingerprint(&mut self, now: Instant, fingerprint: Fingerprint) -> Reload {
        self.next_check = now + self.poll_interval;
        if fingerprint == self.loaded || Some(fingerprint) == self.failed {
            Reload::Unchanged
        } else {
            Reload::Read
        }
    }

    /// io read the files (whose fingerprint is `fingerprint`) at wall-clock
    /// `now`. On success new handshakes use them from now on; on failure the
    /// previous credentials stay in use and the error says why. A failure
    /// that may go away with time alone ([`CredentialsError::is_retryable`])
    /// is not remembered, so the next poll reads the same files again.
    pub fn handle_files(
        &mut self,
        fingerprint: Fingerprint,
        chain_pem: &[u8],
        key_pem: &[u8],
        bundle_pem: &[u8],
        now: UnixTime,
    ) -> Result<Rotated, CredentialsError> {
        let provider = self.current.provider().clone();
        match Credentials::from_pem(provider, chain_pem, key_pem, bundle_pem, now) {
            Ok(creds) => {
                let identity_changed = creds.identity() != self.current.identity();
                self.current = Arc::new(creds);
                self.generation += 1;
                self.loaded = fingerprint;
                self.failed = None;
                Ok(Rotated {
                    generation: self.generation,
                    identity: self.current.identity().clone(),
                    identity_changed,
                    not_after: self.current.not_after(),
                })
            }
            Err(e) => {
                // Files that are merely early will load on a later poll; any
                // other failure waits for the files to change.
                self.failed = (!e.is_retryable()).then_some(fingerprint);
                Err(e)
            }
        }
    }
}
