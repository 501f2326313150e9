//! The adaptive in-flight limit of one HTTP/2 connection: how many streams it keeps open at once, below the
//! server's `SETTINGS_MAX_CONCURRENT_STREAMS`.
//!
//! A latency-based controller in the spirit of TCP Vegas: answer times are gathered over short windows and
//! compared with the connection's base round trip (the fastest answers seen lately). While answers come back
//! close to the base, the limit grows (at first by one stream per fast answer, as TCP's slow start, so it doubles
//! per round trip rather than per window; after the first slowdown by about its square root per window);
//! when they slow down, queueing is assumed (in APNs or on the way) and the limit shrinks in proportion to how
//! much slower they are, at most halving per window. A response timeout counts as an answer as slow as the
//! timeout. So a slow or throttling server gets fewer streams, and the notifications herald holds back wait in
//! herald's queue, where they can still be routed, expired or failed, instead of in the server's buffers where
//! they can only time out and be sent again.
//!
//! The base drifts up by at most a factor of two per [`BASE_REFRESH`], so a server that becomes slower for good
//! is eventually taken as it is, and the target latency never exceeds a quarter of the response timeout, so the
//! limit keeps answers well inside it.

use std::time::{Duration, Instant};

/// Streams a connection starts with (below the server's limit if that is lower).
pub const INITIAL_LIMIT: usize = 20;
/// The limit never goes below this.
pub const MIN_LIMIT: usize = 2;
/// Shortest window over which answer times are averaged before the limit changes.
const WINDOW: Duration = Duration::from_millis(100);
/// How often the base round trip may be raised to what was seen lately.
pub const BASE_REFRESH: Duration = Duration::from_secs(10);
/// Answers within `2 × base + SLACK` count as unqueued.
const SLACK: Duration = Duration::from_millis(25);

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct AdaptiveLimit {
    limit: f64,
    /// The largest the limit may become (the server's stream limit, updated with [`AdaptiveLimit::set_max`]).
    max: usize,
    /// Answers slower than this shrink the limit, whatever the base (a quarter of the response timeout).
    ceiling: Duration,
    slow_start: bool,
    base: Option<Duration>,
    /// Fastest answer since the base was last refreshed.
    period_min: Option<Duration>,
    period_start: Instant,
    window_start: Instant,
    window_sum: Duration,
    window_samples: u32,
    window_peak_in_flight: usize,
}

impl AdaptiveLimit {
    /// A controller for a connection whose answers should come well within `response_timeout`.
    pub fn new(response_timeout: Duration, now: Instant) -> AdaptiveLimit {
        AdaptiveLimit {
            limit: INITIAL_LIMIT as f64,
            max: usize::MAX,
            ceiling: (response_timeout / 4).max(Duration::from_millis(1)),
            slow_start: true,
            base: None,
            period_min: None,
            period_start: now,
            window_start: now,
            window_sum: Duration::ZERO,
            window_samples: 0,
            window_peak_in_flight: 0,
        }
    }

    /// A controller that starts at `initial` streams instead of [`INITIAL_LIMIT`] (never below it): for a further
    /// connection to a server whose open connections already carry that many with fast answers, so the new one
    /// need not ramp up from the start. Slow answers shrink it as they would any limit.
    pub fn starting_at(response_timeout: Duration, now: Instant, initial: usize) -> AdaptiveLimit {
        AdaptiveLimit {
            limit: initial.max(INITIAL_LIMIT) as f64,
            ..AdaptiveLimit::new(response_timeout, now)
        }
    }

    /// The current limit, between [`MIN_LIMIT`] (or the server's limit, if lower) and the server's limit.
    pub fn limit(&self) -> usize {
        (self.limit as usize).clamp(MIN_LIMIT.min(self.max), self.max.max(1))
    }

    /// The server's stream limit changed. It caps what [`AdaptiveLimit::limit`] answers and how far the limit
    /// grows, but does not lower the level the answers earned: APNs allows one stream before a provider token got
    /// through and drops to one for a moment after a rejected notification, and when it allows more again the
    /// connection takes up where it was instead of ramping up from one.
    pub fn set_max(&mut self, max: usize) {
        self.max = max.max(1);
    }

    /// Grows the limit by `step`, up to the server's limit (a level already above it stays).
    fn grow_by(&mut self, step: f64) {
        let max = self.max as f64;
        if self.limit < max {
            self.limit = (self.limit + step).min(max);
        }
    }

    /// The answer time the limit aims under: twice the base plus a little, capped by the ceiling.
    pub fn target(&self) -> Duration {
        let base = self.base.unwrap_or(Duration::ZERO);
        (base * 2 + SLACK).min(self.ceiling)
    }

    /// True until the first window of slow answers: the limit is still ramping up (doubling per round trip while
    /// in use), not held back.
    pub fn in_slow_start(&self) -> bool {
        self.slow_start
    }

    /// The base round trip, once one answer was seen.
    pub fn base(&self) -> Option<Duration> {
        self.base
    }

    /// Records one answer (or a timeout, as `rtt` = the timeout) that took `rtt` from the moment the request was
    /// written; `in_flight` is how full the connection was when requests last went out (the level this answer's
    /// round trip used). Returns true when the limit changed.
    pub fn on_sample(&mut self, rtt: Duration, in_flight: usize, now: Instant) -> bool {
        self.period_min = Some(self.period_min.map_or(rtt, |m| m.min(rtt)));
        self.base = Some(self.base.map_or(rtt, |b| b.min(rtt)));
        self.window_sum += rtt;
        self.window_samples += 1;
        self.window_peak_in_flight = self.window_peak_in_flight.max(in_flight);
        let before = self.limit();
        // Slow start: every fast answer while the limit is in use opens room for one more stream, so a fast server
        // gets its full concurrency within a few round trips, not a few windows.
        if self.slow_start && rtt <= self.target() && in_flight * 2 >= before {
            self.grow_by(1.0);
        }
        if now.duration_since(self.window_start) < WINDOW {
            return self.limit() != before;
        }
        let avg = self.window_sum / self.window_samples;
        let target = self.target();
        if avg <= target {
            // Grow only a limit that is being used: an idle connection proves nothing about the server.
            // In slow start the answers themselves grew the limit (above).
            if !self.slow_start && self.window_peak_in_flight * 2 >= before {
                self.grow_by(self.limit.sqrt().max(1.0));
            }
        } else {
            self.slow_start = false;
            let gradient = (target.as_secs_f64() / avg.as_secs_f64()).clamp(0.5, 0.9);
            self.limit *= gradient;
        }
        self.limit = self.limit.max(MIN_LIMIT as f64);
        if now.duration_since(self.period_start) >= BASE_REFRESH {
            if let (Some(base), Some(seen)) = (self.base, self.period_min) {
                self.base = Some(seen.min(base * 2).max(base));
            }
            self.period_min = None;
            self.period_start = now;
        }
        self.window_start = now;
        self.window_sum = Duration::ZERO;
        self.window_samples = 0;
        self.window_peak_in_flight = 0;
        self.limit() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(5);

    /// Feeds `windows` windows of `per_window` answers of `rtt`, with the limit fully used.
    fn feed(l: &mut AdaptiveLimit, now: &mut Instant, rtt: Duration, windows: usize) {
        for _ in 0..windows {
            *now += WINDOW;
            let used = l.limit();
            for _ in 0..10 {
                l.on_sample(rtt, used, *now);
            }
        }
    }

    #[test]
    fn a_limit_started_high_still_shrinks_when_answers_slow_down() {
        let mut now = Instant::now();
        let mut l = AdaptiveLimit::starting_at(TIMEOUT, now, 1000);
        l.set_max(1000);
        assert_eq!(l.limit(), 1000);
        feed(&mut l, &mut now, Duration::from_millis(10), 3);
        assert_eq!(l.limit(), 1000);
        // Answers ten times slower, beyond the target: the limit comes down.
        feed(&mut l, &mut now, Duration::from_millis(900), 3);
        assert!(l.limit() < 1000, "{}", l.limit());
        // Never below the usual start, whatever it is asked to start at (a server that allowed one stream
        // before a provider token got through proved nothing).
        for below in [0, 1, INITIAL_LIMIT - 1] {
            assert_eq!(
                AdaptiveLimit::starting_at(TIMEOUT, now, below).limit(),
                INITIAL_LIMIT
            );
        }
    }

    #[test]
    fn fast_answers_grow_the_limit_up_to_the_servers() {
        let mut now = Instant::now();
        let mut l = AdaptiveLimit::new(TIMEOUT, now);
        l.set_max(1000);
        assert_eq!(l.limit(), INITIAL_LIMIT);
        feed(&mut l, &mut now, Duration::from_millis(10), 3);
        assert!(l.limit() > INITIAL_LIMIT, "{}", l.limit());
        feed(&mut l, &mut now, Duration::from_millis(10), 200);
        assert_eq!(l.limit(), 1000);
        l.set_max(100);
        assert_eq!(l.limit(), 100);
    }

    #[test]
    fn slow_answers_shrink_it_to_the_floor_and_recovery_grows_it_again() {
        let mut now = Instant::now();
        let mut l = AdaptiveLimit::new(TIMEOUT, now);
        l.set_max(1000);
        feed(&mut l, &mut now, Duration::from_millis(10), 100);
        let high = l.limit();
        feed(&mut l, &mut now, Duration::from_millis(400), 1);
        let lower = l.limit();
        assert!(lower < high && lower >= high / 2, "{high} -> {lower}");
        // Answers as slow as the timeout: down to the floor within a few windows.
        feed(&mut l, &mut now, TIMEOUT, 12);
        assert_eq!(l.limit(), MIN_LIMIT);
        feed(&mut l, &mut now, Duration::from_millis(10), 60);
        assert!(l.limit() > 50, "{}", l.limit());
    }

    #[test]
    fn a_moment_of_one_stream_does_not_cost_the_level_the_answers_earned() {
        // docs/apns-protocol.md: one stream until a provider token got through, and one for a moment after a
        // rejected notification.
        let mut now = Instant::now();
        let mut l = AdaptiveLimit::new(TIMEOUT, now);
        l.set_max(1);
        assert_eq!(l.limit(), 1);
        // The first answer (the token accepted) comes while the server still allows one stream.
        l.on_sample(
            Duration::from_millis(10),
            1,
            now + Duration::from_millis(10),
        );
        feed(&mut l, &mut now, Duration::from_millis(10), 2);
        l.set_max(1000);
        assert_eq!(l.limit(), INITIAL_LIMIT);
        feed(&mut l, &mut now, Duration::from_millis(10), 200);
        assert_eq!(l.limit(), 1000);
        // A rejection drops the server to one stream for a few windows of fast answers, then it allows 1000 again.
        l.set_max(1);
        feed(&mut l, &mut now, Duration::from_millis(10), 3);
        assert_eq!(l.limit(), 1);
        l.set_max(1000);
        assert_eq!(l.limit(), 1000);
        // A server that lowers its limit for good still caps the growth.
        l.set_max(100);
        feed(&mut l, &mut now, Duration::from_millis(10), 20);
        assert_eq!(l.limit(), 100);
    }

    #[test]
    fn slow_start_grows_by_one_per_fast_answer_within_a_window() {
        let now = Instant::now();
        let mut l = AdaptiveLimit::new(TIMEOUT, now);
        l.set_max(1000);
        // 100 fast answers in the first millisecond, the limit in use: no window has closed yet.
        for _ in 0..100 {
            let used = l.limit();
            l.on_sample(
                Duration::from_micros(300),
                used,
                now + Duration::from_millis(1),
            );
        }
        assert_eq!(l.limit(), INITIAL_LIMIT + 100);
        // Answers slower than the target do not grow it.
        let before = l.limit();
        l.on_sample(
            Duration::from_secs(1),
            before,
            now + Duration::from_millis(2),
        );
        assert_eq!(l.limit(), before);
    }

    #[test]
    fn an_unused_limit_does_not_grow() {
        let mut now = Instant::now();
        let mut l = AdaptiveLimit::new(TIMEOUT, now);
        l.set_max(1000);
        for _ in 0..50 {
            now += WINDOW;
            l.on_sample(Duration::from_millis(5), 1, now);
        }
        assert_eq!(l.limit(), INITIAL_LIMIT);
    }

    #[test]
    fn the_target_stays_well_inside_the_timeout() {
        let mut now = Instant::now();
        let mut l = AdaptiveLimit::new(Duration::from_millis(400), now);
        l.set_max(1000);
        feed(&mut l, &mut now, Duration::from_millis(300), 1);
        assert_eq!(l.target(), Duration::from_millis(100));
        assert!(l.limit() < INITIAL_LIMIT);
    }

    #[test]
    fn the_base_rises_at_most_twofold_per_refresh() {
        let mut now = Instant::now();
        let mut l = AdaptiveLimit::new(Duration::from_secs(60), now);
        l.set_max(1000);
        feed(&mut l, &mut now, Duration::from_millis(10), 1);
        assert_eq!(l.base(), Some(Duration::from_millis(10)));
        // The server is now slower for good: the base follows, step by step.
        let windows = (BASE_REFRESH.as_millis() / WINDOW.as_millis()) as usize + 1;
        // The first refresh still saw the fast answers of its period; the next one doubles the base.
        feed(&mut l, &mut now, Duration::from_millis(200), windows);
        assert_eq!(l.base(), Some(Duration::from_millis(10)));
        feed(&mut l, &mut now, Duration::from_millis(200), windows);
        assert_eq!(l.base(), Some(Duration::from_millis(20)));
        feed(&mut l, &mut now, Duration::from_millis(200), windows * 5);
        assert_eq!(l.base(), Some(Duration::from_millis(200)));
    }
}
