//! The run's ordered event log, and its digest.
//!
//! Every host of a world (clients, servers, the driver applying faults)
//! appends what it observes, stamped with *simulated* time since the start
//! of the run. Two runs of the same scenario and seed must produce the same
//! log; the [`digest`] is how tests and sweeps compare them cheaply. It is
//! FNV-1a, fixed and portable, never `DefaultHasher` (randomly keyed per
//! process) or anything that iterates a `HashMap`.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// One thing that happened, when, and where.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Simulated time since the run started.
    pub at: Duration,
    /// Who saw it (`driver`, `client0`, `server1`, ...).
    pub host: String,
    /// What happened, in words.
    pub what: String,
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.at.as_micros() as f64 / 1000.0;
        write!(f, "{ms:>10.3} ms  {:<9} {}", self.host, self.what)
    }
}

/// A shared, append-only event log.
#[derive(Clone, Debug, Default)]
pub struct Trace(Arc<Mutex<Vec<Event>>>);

impl Trace {
    /// Appends an event seen by `host` at `at`.
    pub fn record_at(&self, at: Duration, host: &str, what: impl Into<String>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Event {
                at,
                host: host.to_owned(),
                what: what.into(),
            });
    }

    /// Appends an event seen from inside a simulated host, now.
    pub fn record(&self, host: &str, what: impl Into<String>) {
        self.record_at(now(), host, what);
    }

    /// The events so far, in the order they were recorded.
    pub fn events(&self) -> Vec<Event> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Simulated time since the run started, from inside a host (zero outside
/// one).
pub fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

/// The FNV-1a (64-bit) hash of the ordered events: time, host and text of
/// each.
pub fn digest(events: &[Event]) -> u64 {
    let mut hash = Fnv::default();
    for event in events {
        hash.write(&event.at.as_nanos().to_le_bytes());
        hash.write(event.host.as_bytes());
        hash.write(&[0]);
        hash.write(event.what.as_bytes());
        hash.write(&[0xff]);
    }
    hash.0
}

/// FNV-1a, 64 bits: tiny, stable across platforms and releases.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(ms: u64, what: &str) -> Event {
        Event {
            at: Duration::from_millis(ms),
            host: "h".into(),
            what: what.into(),
        }
    }

    /// The digest sees order, time and text, and is a fixed function (the
    /// empty log hashes to FNV's offset basis).
    #[test]
    fn digest_depends_on_order_time_and_text() {
        assert_eq!(digest(&[]), 0xcbf2_9ce4_8422_2325);
        let a = [event(1, "x"), event(2, "y")];
        assert_eq!(digest(&a), digest(&a.clone()));
        assert_ne!(digest(&a), digest(&[event(2, "y"), event(1, "x")]));
        assert_ne!(digest(&a), digest(&[event(1, "x"), event(3, "y")]));
        assert_ne!(digest(&a), digest(&[event(1, "x"), event(2, "z")]));
    }
}
