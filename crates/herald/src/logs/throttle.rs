//! Warnings said at most once per interval, for conditions that last or repeat (a refused page polling every
//! second, a line of removals that stays full): the first occurrence is said at once, the next only once the
//! interval has passed since.

use std::sync::atomic::{AtomicU64, Ordering};

/// At most one `true` per `every_secs` seconds of the wall clock, from any thread.
#[derive(Debug)]
pub struct OncePer {
    every_secs: u64,
    /// Unix seconds of the last `true`; 0 before the first.
    last: AtomicU64,
}

impl OncePer {
    pub const fn new(every_secs: u64) -> OncePer {
        OncePer {
            every_secs,
            last: AtomicU64::new(0),
        }
    }

    /// Whether to say it now: the first call, then once `every_secs` have passed since the last `true`.
    pub fn now(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.at(now)
    }

    fn at(&self, now: u64) -> bool {
        let last = self.last.load(Ordering::Relaxed);
        (last == 0 || now >= last + self.every_secs)
            && self
                .last
                .compare_exchange(last, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn said_first_then_once_per_interval() {
        let once = OncePer::new(60);
        assert!(once.at(1_000));
        assert!(!once.at(1_000));
        assert!(!once.at(1_059));
        assert!(once.at(1_060));
        assert!(!once.at(1_061));
    }
}
