//! The engine's one clock: coarse and monotonic.

use std::time::Duration;

/// A point on a coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`, a few milliseconds of
/// resolution). Expiry is counted in seconds, and reading the precise clock on every delivery
/// cost 8 % of a fan-out; this one costs a memory read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Instant(coarsetime::Instant);

impl Instant {
    pub(crate) fn now() -> Instant {
        Instant(coarsetime::Instant::now_without_cache_update())
    }

    /// How long after `earlier` this is (zero if it is not after it).
    pub(crate) fn duration_since(self, earlier: Instant) -> Duration {
        if self.0 > earlier.0 {
            (self.0 - earlier.0).into()
        } else {
            Duration::ZERO
        }
    }
}

impl std::ops::Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        // coarsetime counts 2^32 ticks a second in a u64: a century past boot still fits, a
        // configured "never" (`Duration::MAX`) would overflow, so it is held to a century.
        const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
        Instant(self.0 + coarsetime::Duration::from(d.min(CENTURY)))
    }
}
