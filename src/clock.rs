//! Clock reads for the hot path.
//!
//! A `put` reads [`coarse_monotonic`] for the lifetime of the tenant's active key and the
//! real-time clock ([`realtime_millis`]) to stamp the row. A `get` reads
//! [`coarse_monotonic`] once, for the lifetime of the cached data key. Lifetimes are never
//! measured on the real-time clock, which can be stepped backwards.
//!
//! On Linux both go to the vDSO through `rustix`. The coarse monotonic clock is a memory
//! read there, a few times cheaper than `Instant::now`, with a resolution of one kernel
//! tick (1 to 10 ms): ample for cache lifetimes of seconds and minutes, and an entry can
//! only expire up to one tick late. Elsewhere both fall back to `std::time`.

use std::time::Duration;

/// Time elapsed on a monotonic clock since an arbitrary origin, with a resolution of a few
/// milliseconds. Never goes backwards.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn coarse_monotonic() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
    Duration::new(
        u64::try_from(t.tv_sec).unwrap_or(0),
        u32::try_from(t.tv_nsec).unwrap_or(0),
    )
}

/// Time elapsed on a monotonic clock since an arbitrary origin. Never goes backwards.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn coarse_monotonic() -> Duration {
    static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    ORIGIN.get_or_init(std::time::Instant::now).elapsed()
}

/// Milliseconds since the Unix epoch on the real-time clock, rounded down.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn realtime_millis() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Realtime);
    // `tv_nsec` is in 0..1e9 (also before 1970, where `tv_sec` is negative).
    t.tv_sec
        .saturating_mul(1000)
        .saturating_add(t.tv_nsec / 1_000_000)
}

/// Milliseconds since the Unix epoch on the real-time clock, rounded toward the epoch.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
pub(crate) fn realtime_millis() -> i64 {
    crate::storage::Timestamp::from(std::time::SystemTime::now()).as_millis()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn realtime_millis_agrees_with_system_time() {
        let before = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let now = u128::try_from(realtime_millis()).unwrap_or(0);
        let after = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        assert!(
            before <= now && now <= after,
            "{before} <= {now} <= {after}"
        );
    }

    #[test]
    fn coarse_monotonic_does_not_go_backwards() {
        let mut last = coarse_monotonic();
        for _ in 0..1000 {
            let now = coarse_monotonic();
            assert!(now >= last);
            last = now;
        }
    }
}
