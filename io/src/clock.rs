//! The core's time, read from tokio's clock.
//!
//! The core takes `now` as a number of nanoseconds since an origin; the io
//! layer picks the origin (when the proxy started) and reads elapsed time
//! from `tokio::time`, which turmoil makes virtual. Never `std::time`.

use needle_core::time::Instant;

/// Converts tokio's clock into the core's [`Instant`]s.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: tokio::time::Instant,
}

impl Clock {
    /// A clock whose origin is now.
    pub fn start() -> Self {
        Clock {
            origin: tokio::time::Instant::now(),
        }
    }

    /// The core's `now`.
    pub fn now(&self) -> Instant {
        Instant::from_duration(self.origin.elapsed())
    }

    /// The tokio instant of a core instant (for `sleep_until`).
    pub fn to_tokio(&self, at: Instant) -> tokio::time::Instant {
        // A deadline too far to represent is a deadline that never comes.
        self.origin
            .checked_add(at.since_origin())
            .unwrap_or_else(|| self.origin + std::time::Duration::from_secs(86_400 * 365))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::start()
    }
}
