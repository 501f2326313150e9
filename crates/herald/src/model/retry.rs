//! Momentum's retry schedule (docs/momentum-compat.md#retries): the first retry `retry_interval` after the first
//! failure, each later one twice the one before, capped by `max_retry_interval`; given up after `max_retries` retries
//! or when `message_expiration` has passed since reception, whichever comes first.

use std::time::Duration;

/// The `max_retries` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxRetries {
    /// As many retries as the schedule fits into `message_expiration`.
    Auto,
    /// No count limit: only `message_expiration` ends the retries.
    Unlimited,
    Limit(u32),
}

/// The retry settings of one domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub retry_interval: Duration,
    pub max_retry_interval: Duration,
    pub max_retries: MaxRetries,
    pub message_expiration: Duration,
    pub never_attempt_expired: bool,
}

impl Default for RetryPolicy {
    /// Momentum's defaults (docs/momentum-compat.md#retries).
    fn default() -> Self {
        RetryPolicy {
            retry_interval: Duration::from_secs(1200),
            max_retry_interval: Duration::from_secs(43200),
            max_retries: MaxRetries::Auto,
            message_expiration: Duration::from_secs(86400),
            never_attempt_expired: false,
        }
    }
}

/// The most retries `max_retries = auto` allows, however many fit into `message_expiration`.
pub const AUTO_LIMIT_MOST: u32 = 10_000;

/// What to do after a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// Try again after this delay.
    RetryIn(Duration),
    /// Stop: the retry count is used up.
    RetriesExhausted,
    /// Stop: the message would outlive `message_expiration`.
    Expired,
}

impl RetryPolicy {
    /// Delay before retry number `retry` (1 = the first retry).
    pub fn interval(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(32);
        let delay = self
            .retry_interval
            .saturating_mul(1u32 << doublings.min(31));
        delay.min(self.max_retry_interval.max(self.retry_interval))
    }

    /// The retry count `auto` allows: how many retries the schedule fits into `message_expiration` (at most
    /// [`AUTO_LIMIT_MOST`]).
    ///
    /// Asked at every transient failure, on the queue's task: it costs at most 33 steps, whatever the settings.
    /// The intervals double until they reach `max_retry_interval` (or stop doubling after 31 doublings) and stay
    /// the same from there, so the retries of that second part are counted with one division.
    pub fn auto_limit(&self) -> u32 {
        self.auto_limit_counted().0
    }

    /// [`RetryPolicy::auto_limit`], and the intervals it looked at to find it.
    fn auto_limit_counted(&self) -> (u32, u32) {
        let mut total = Duration::ZERO;
        let mut retries: u32 = 0;
        let cap = self.max_retry_interval.max(self.retry_interval);
        // The doubling part: at most 32 intervals, each below the cap.
        loop {
            let next = self.interval(retries + 1);
            if next >= cap || retries >= 31 {
                break;
            }
            total = total.saturating_add(next);
            if total > self.message_expiration {
                return (retries, retries + 1);
            }
            retries += 1;
        }
        // Every later interval is `step`: as many more as fit in what is left of `message_expiration`.
        let looked = retries + 1;
        let step = self.interval(retries + 1).as_nanos();
        if step == 0 {
            return (AUTO_LIMIT_MOST, looked);
        }
        let room = self.message_expiration.saturating_sub(total).as_nanos();
        let more = room / step;
        let limit = u32::try_from(u128::from(retries) + more)
            .unwrap_or(u32::MAX)
            .min(AUTO_LIMIT_MOST);
        (limit, looked)
    }

    /// Decides after a failure. `retries_so_far` counts the retries already made (0 after the first attempt
    /// failed); `age` is the time since reception.
    pub fn after_failure(&self, retries_so_far: u32, age: Duration) -> RetryDecision {
        let next = retries_so_far + 1;
        let limit = match self.max_retries {
            MaxRetries::Auto => Some(self.auto_limit()),
            MaxRetries::Unlimited => None,
            MaxRetries::Limit(n) => Some(n),
        };
        if limit.is_some_and(|l| next > l) {
            return RetryDecision::RetriesExhausted;
        }
        let delay = self.interval(next);
        if age + delay > self.message_expiration {
            return RetryDecision::Expired;
        }
        RetryDecision::RetryIn(delay)
    }

    /// Whether a message of this age has outlived `message_expiration`.
    pub fn is_expired(&self, age: Duration) -> bool {
        age >= self.message_expiration
    }

    /// Why a push (a notification or a broadcast) received at `received_at` must fail at `now` (Unix seconds)
    /// without an attempt: its APNs expiration is set (not 0) and passed, or, with `never_attempt_expired_messages`,
    /// it is `message_expiration` old. The text is the log's error and the counter's reason.
    pub fn not_attempted(
        &self,
        expiration: Option<u64>,
        received_at: u64,
        now: u64,
    ) -> Option<&'static str> {
        if expiration.is_some_and(|e| e != 0 && e < now) {
            return Some("Delivery not attempted (APNs expiration passed)");
        }
        let age = Duration::from_secs(now.saturating_sub(received_at));
        if self.never_attempt_expired && self.is_expired(age) {
            return Some("Delivery not attempted (message expired)");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn intervals_double_from_retry_interval() {
        // docs/momentum-compat.md#retries: 1200 + 2400 + 4800 + 9600 + 19200 = 37200 s for 5 retries without the cap.
        let p = RetryPolicy {
            max_retry_interval: secs(1_000_000),
            ..RetryPolicy::default()
        };
        let total: Duration = (1..=5).map(|r| p.interval(r)).sum();
        assert_eq!(total, secs(37200));
        assert_eq!(p.interval(1), secs(1200));
        assert_eq!(p.interval(3), secs(4800));
    }

    #[test]
    fn max_retry_interval_caps_the_doubling() {
        let p = RetryPolicy::default();
        assert_eq!(p.interval(6), secs(38400));
        assert_eq!(p.interval(7), secs(43200));
        assert_eq!(p.interval(40), secs(43200));
    }

    #[test]
    fn fixed_interval_recipe_expires_after_6000_seconds() {
        // docs/momentum-compat.md#retries: retry_interval = max_retry_interval = 1200, max_retries = 5.
        let p = RetryPolicy {
            retry_interval: secs(1200),
            max_retry_interval: secs(1200),
            max_retries: MaxRetries::Limit(5),
            message_expiration: secs(604800),
            never_attempt_expired: false,
        };
        let mut age = Duration::ZERO;
        for retries in 0..5 {
            match p.after_failure(retries, age) {
                RetryDecision::RetryIn(d) => age += d,
                other => panic!("retry {retries} gave {other:?}"),
            }
        }
        assert_eq!(age, secs(6000));
        assert_eq!(p.after_failure(5, age), RetryDecision::RetriesExhausted);
    }

    #[test]
    fn auto_fits_the_schedule_into_message_expiration() {
        let p = RetryPolicy::default();
        // 1200+2400+4800+9600+19200 = 37200 <= 86400; adding 38400 gives 75600 <= 86400; adding 43200 exceeds.
        assert_eq!(p.auto_limit(), 6);
        assert_eq!(
            p.after_failure(6, secs(75600)),
            RetryDecision::RetriesExhausted
        );
    }

    /// How `auto_limit` counted before it was computed: one interval at a time, up to [`AUTO_LIMIT_MOST`] of
    /// them at every transient failure.
    fn auto_limit_by_steps(p: &RetryPolicy) -> u32 {
        let mut total = Duration::ZERO;
        let mut retries = 0;
        while retries < AUTO_LIMIT_MOST {
            total += p.interval(retries + 1);
            if total > p.message_expiration {
                break;
            }
            retries += 1;
        }
        retries
    }

    #[test]
    fn auto_limit_counts_as_the_schedule_steps_at_the_edges() {
        let policy = |interval: u64, cap: u64, expiration: u64| RetryPolicy {
            retry_interval: secs(interval),
            max_retry_interval: secs(cap),
            message_expiration: secs(expiration),
            ..RetryPolicy::default()
        };
        for p in [
            RetryPolicy::default(),
            // A retry due exactly at the expiration still fits.
            policy(1200, 1200, 6000),
            policy(1200, 1200, 5999),
            // Fixed 1 s retries over a year: capped.
            policy(1, 1, 31_536_000),
            // No interval: capped.
            policy(0, 0, 10),
            policy(0, 60, 10),
            // The cap below the first interval: the first interval throughout.
            policy(100, 10, 1000),
            // Doubling without a cap in reach: 31 doublings, then the same interval.
            policy(1, u64::MAX / 4, u64::MAX / 2),
            policy(5, 1_000_000, 0),
        ] {
            assert_eq!(p.auto_limit(), auto_limit_by_steps(&p), "{p:?}");
        }
        assert_eq!(policy(1200, 1200, 6000).auto_limit(), 5);
        assert_eq!(policy(1, 1, 31_536_000).auto_limit(), AUTO_LIMIT_MOST);
    }

    /// `auto_limit` is asked at every transient failure, on the queue's task (once per queued notification when a
    /// domain is delayed): it looks at a bounded number of intervals, not at every retry it counts.
    #[test]
    fn auto_limit_looks_at_a_bounded_number_of_intervals() {
        let fixed = RetryPolicy {
            retry_interval: secs(1),
            max_retry_interval: secs(1),
            message_expiration: secs(31_536_000),
            ..RetryPolicy::default()
        };
        assert_eq!(fixed.auto_limit_counted(), (AUTO_LIMIT_MOST, 1));
        let doubling = RetryPolicy {
            retry_interval: Duration::from_millis(1),
            max_retry_interval: secs(u64::MAX / 4),
            message_expiration: secs(u64::MAX / 2),
            ..RetryPolicy::default()
        };
        let (limit, looked) = doubling.auto_limit_counted();
        assert_eq!(limit, AUTO_LIMIT_MOST);
        assert!(looked <= 33, "{looked} intervals");
    }

    proptest::proptest! {
        #[test]
        fn auto_limit_counts_as_the_schedule_steps(
            interval in 0u64..100_000,
            cap in 0u64..2_000_000,
            expiration in 0u64..100_000_000,
            interval_ms in 0u64..1000,
        ) {
            let p = RetryPolicy {
                retry_interval: Duration::from_secs(interval) + Duration::from_millis(interval_ms),
                max_retry_interval: secs(cap),
                message_expiration: secs(expiration),
                ..RetryPolicy::default()
            };
            proptest::prop_assert_eq!(p.auto_limit(), auto_limit_by_steps(&p));
        }
    }

    #[test]
    fn none_retries_until_expiration() {
        let p = RetryPolicy {
            max_retries: MaxRetries::Unlimited,
            ..RetryPolicy::default()
        };
        assert_eq!(
            p.after_failure(50, secs(1000)),
            RetryDecision::RetryIn(secs(43200))
        );
        assert_eq!(p.after_failure(50, secs(50000)), RetryDecision::Expired);
    }
}
