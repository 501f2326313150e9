//! The leaf of the crate: the types the queue, the outbound pools and the logs all speak — the notification as
//! accepted and as queued, its message id, and Momentum's retry schedule. It names no other module of the crate,
//! so the modules that share these types depend on it and not on each other (tests/layering.rs pins this).

pub mod message;
pub mod retry;

use std::time::{Duration, Instant};

/// When `delay` from now has passed. Options that take any number of seconds can give a delay too large for the
/// clock: that is a century ahead, not a panic.
pub fn instant_after(delay: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(delay)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A retry delay or a timeout at the top of its option's range is a time far ahead, not a panic.
    #[test]
    fn a_delay_too_large_for_the_clock_is_a_century() {
        let far = instant_after(Duration::from_secs(i64::MAX as u64));
        assert!(far > Instant::now() + Duration::from_secs(99 * 365 * 86_400));
        let soon = instant_after(Duration::from_secs(5));
        assert!(soon <= Instant::now() + Duration::from_secs(5));
    }
}
