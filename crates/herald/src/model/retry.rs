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

    /// The retry count `auto` allows: how many retries the schedule fits into `message_expiration`.
    pub fn auto_limit(&self) -> u32 {
        let mut total = Duration::ZERO;
        let mut retries = 0;
        while retries < 10_000 {
            total += self.interval(retries + 1);
            if total > self.message_expiration {
                break;
            }
            retries += 1;
        }
        retries
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
