//! One clock for every process of a run: `CLOCK_MONOTONIC` in nanoseconds. A sender stamps each
//! message with it and the receiving worker (maybe another process) subtracts.

/// Nanoseconds of `CLOCK_MONOTONIC`.
pub(crate) fn now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(ts) => (ts.tv_sec() as u64) * 1_000_000_000 + ts.tv_nsec() as u64,
        Err(_) => 0,
    }
}
