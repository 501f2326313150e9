//! Counters of the queue and its outcomes, per domain and in total, read by `herald bench`, the console and
//! metrics. Plain atomics: they are updated on the delivery path.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the delivery-latency histogram buckets; a last bucket takes the rest.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
];

/// Whether a failure is retried or final; failures are counted per kind and reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// Retried later (a T line).
    Transient,
    /// Final: the notification leaves the queue (a P line).
    Permanent,
}

impl FailureKind {
    /// The log letter: `T` or `P`.
    pub fn letter(self) -> &'static str {
        match self {
            FailureKind::Transient => "T",
            FailureKind::Permanent => "P",
        }
    }
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.letter())
    }
}

/// The reason a failed connection attempt is counted under.
pub const CONNECTION_FAILED: &str = "ConnectionFailed";

/// Failures counted by kind and reason (the reason as the log lines give it).
pub type FailureCounts = HashMap<(FailureKind, String), u64>;

/// Counters of one domain.
#[derive(Debug, Default)]
pub struct DomainStats {
    pub received: AtomicU64,
    pub delivered: AtomicU64,
    pub transient: AtomicU64,
    pub permanent: AtomicU64,
    /// Requeued without an attempt (refused stream, GOAWAY, lost connection, or discarded by the binary gateway
    /// after a rejected notification).
    pub requeued: AtomicU64,
    pub active: AtomicUsize,
    pub delayed: AtomicUsize,
    /// Of `active`: handed to the connections and not yet reported back (waiting for a stream or in flight).
    pub dispatched: AtomicUsize,
    /// When the earliest delayed notification is due, Unix milliseconds; 0 when none is delayed.
    pub next_retry_ms: AtomicU64,
    /// Reception time of the oldest notification queued here (active or delayed), epoch seconds; 0 when none.
    /// Refreshed about once a second.
    pub oldest_queued_s: AtomicU64,
    pub connections: AtomicUsize,
    /// Streams open on the domain's connections: notifications sent and not yet answered.
    pub in_flight: AtomicUsize,
    /// The sum of the open connections' in-flight limits (adaptive, at most the server's stream limits).
    pub stream_limit: AtomicUsize,
    /// HTTP/2 streams cancelled after the response timeout (each a notification APNs may have accepted).
    pub streams_cancelled: AtomicU64,
    /// Sum of enqueue-to-delivery times in microseconds, for the mean latency.
    pub latency_micros: AtomicU64,
    /// Deliveries by latency bucket ([`LATENCY_BUCKETS`], then one for slower ones); not cumulative.
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    failures: Mutex<FailureCounts>,
    /// Delivery of this queue is paused by an operator (the dashboard's pause): it queues, it does not send.
    pub paused: std::sync::atomic::AtomicBool,
    /// Looks the domain's task took at its queues and pool: one per tick while it has work, one as it comes to rest,
    /// one at each retry time while it rests.
    pub looks: AtomicU64,
    /// The task rests: nothing ready, in flight or connected; it wakes for its events and its next retry time only.
    pub resting: std::sync::atomic::AtomicBool,
    /// Times the queue's task and pool were let go after `idle_queue_timeout` at rest with nothing queued.
    pub retired: AtomicU64,
    /// Times the queue's task failed (a panic, a defect) and a new one took over its notifications.
    pub task_failures: AtomicU64,
}

impl DomainStats {
    pub fn delivered(&self, latency: Duration) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.latency_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
        let secs = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|&b| secs <= b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }

    /// Deliveries per latency bucket, cumulative as Prometheus wants them, ending with the total (`+Inf`).
    pub fn latency_cumulative(&self) -> Vec<u64> {
        let mut total = 0;
        self.latency_buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect()
    }

    pub fn transient(&self, reason: &str) {
        self.transient.fetch_add(1, Ordering::Relaxed);
        self.count_reason(FailureKind::Transient, reason);
    }

    /// A failed connection attempt logged as a transient-failure line of a waiting notification (whose retry count
    /// stays unchanged): counted as a transient failure under [`CONNECTION_FAILED`], so that the logs, the metrics
    /// (`herald_transient_failures_total`) and the console's `domain` agree.
    pub fn connection_failed(&self) {
        self.transient(CONNECTION_FAILED);
    }

    pub fn permanent(&self, reason: &str) {
        self.permanent.fetch_add(1, Ordering::Relaxed);
        self.count_reason(FailureKind::Permanent, reason);
    }

    pub fn requeued(&self) {
        self.requeued.fetch_add(1, Ordering::Relaxed);
    }

    fn count_reason(&self, kind: FailureKind, reason: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(&(kind, reason.to_owned())) {
            Some(n) => *n += 1,
            None => {
                map.insert((kind, reason.to_owned()), 1);
            }
        }
    }

    /// Failures by kind and reason.
    pub fn failures(&self) -> FailureCounts {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_queue_sizes(&self, active: usize, delayed: usize) {
        self.active.store(active, Ordering::Relaxed);
        self.delayed.store(delayed, Ordering::Relaxed);
    }

    /// The reception time of the oldest queued notification (`None`: nothing is queued).
    pub fn set_oldest_queued(&self, epoch_secs: Option<u64>) {
        self.oldest_queued_s
            .store(epoch_secs.unwrap_or(0), Ordering::Relaxed);
    }

    /// The due time of the earliest delayed notification (`None`: nothing is delayed).
    pub fn set_next_retry(&self, unix_ms: Option<u64>) {
        self.next_retry_ms
            .store(unix_ms.unwrap_or(0), Ordering::Relaxed);
    }

    pub fn set_connections(&self, n: usize) {
        self.connections.store(n, Ordering::Relaxed);
    }

    pub fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n, Ordering::Relaxed);
    }

    pub fn set_stream_limit(&self, n: usize) {
        self.stream_limit.store(n, Ordering::Relaxed);
    }

    pub fn stream_cancelled(&self) {
        self.streams_cancelled.fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of several queues added up (a domain delivered from several bindings), as of now.
    pub fn sum<S: std::ops::Deref<Target = DomainStats>>(parts: &[S]) -> DomainStats {
        let total = DomainStats::default();
        total.resting.store(!parts.is_empty(), Ordering::Relaxed);
        let add64 = |to: &AtomicU64, from: &AtomicU64| {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        let add = |to: &AtomicUsize, from: &AtomicUsize| {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        for p in parts {
            add64(&total.received, &p.received);
            add64(&total.delivered, &p.delivered);
            add64(&total.transient, &p.transient);
            add64(&total.permanent, &p.permanent);
            add64(&total.requeued, &p.requeued);
            add(&total.active, &p.active);
            add(&total.delayed, &p.delayed);
            add(&total.dispatched, &p.dispatched);
            add(&total.connections, &p.connections);
            add(&total.in_flight, &p.in_flight);
            add(&total.stream_limit, &p.stream_limit);
            add64(&total.streams_cancelled, &p.streams_cancelled);
            add64(&total.latency_micros, &p.latency_micros);
            add64(&total.looks, &p.looks);
            add64(&total.retired, &p.retired);
            add64(&total.task_failures, &p.task_failures);
            if !p.resting.load(Ordering::Relaxed) {
                total.resting.store(false, Ordering::Relaxed);
            }
            // The earliest of the parts' times; 0 means none.
            for (to, from) in [
                (&total.next_retry_ms, &p.next_retry_ms),
                (&total.oldest_queued_s, &p.oldest_queued_s),
            ] {
                let (t, f) = (to.load(Ordering::Relaxed), from.load(Ordering::Relaxed));
                if f != 0 && (t == 0 || f < t) {
                    to.store(f, Ordering::Relaxed);
                }
            }
            if p.paused.load(Ordering::Relaxed) {
                total.paused.store(true, Ordering::Relaxed);
            }
            for (to, from) in total.latency_buckets.iter().zip(&p.latency_buckets) {
                add64(to, from);
            }
            let mut failures = total.failures.lock().unwrap_or_else(|p| p.into_inner());
            for (k, v) in p.failures() {
                *failures.entry(k).or_default() += v;
            }
        }
        total
    }

    /// Counters that keep, for a domain, what queues of it no longer kept count (see
    /// [`DomainStats::add_counters`]): at rest, with nothing queued or connected.
    pub fn carry_over() -> DomainStats {
        let carry = DomainStats::default();
        carry.resting.store(true, Ordering::Relaxed);
        carry
    }

    /// Adds `from`'s counters (what only ever grows: receptions, outcomes, latencies, failures by reason, looks,
    /// retirements, task failures) to these; not its live figures (queue sizes, connections, times, pause).
    pub fn add_counters(&self, from: &DomainStats) {
        let add64 = |to: &AtomicU64, from: &AtomicU64| {
            to.fetch_add(from.load(Ordering::Relaxed), Ordering::Relaxed);
        };
        add64(&self.received, &from.received);
        add64(&self.delivered, &from.delivered);
        add64(&self.transient, &from.transient);
        add64(&self.permanent, &from.permanent);
        add64(&self.requeued, &from.requeued);
        add64(&self.streams_cancelled, &from.streams_cancelled);
        add64(&self.latency_micros, &from.latency_micros);
        add64(&self.looks, &from.looks);
        add64(&self.retired, &from.retired);
        add64(&self.task_failures, &from.task_failures);
        for (to, from) in self.latency_buckets.iter().zip(&from.latency_buckets) {
            add64(to, from);
        }
        let theirs = from.failures();
        let mut failures = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        for (k, v) in theirs {
            *failures.entry(k).or_default() += v;
        }
    }

    /// Notifications that reached a final outcome.
    pub fn finished(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed) + self.permanent.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_add_every_counter() {
        let a = DomainStats::default();
        let b = DomainStats::default();
        a.delivered(Duration::from_millis(1));
        b.delivered(Duration::from_secs(100));
        b.transient("ConnectionFailed");
        a.transient("ConnectionFailed");
        a.set_connections(2);
        b.set_connections(3);
        a.retired.store(1, Ordering::Relaxed);
        b.retired.store(2, Ordering::Relaxed);
        a.task_failures.store(1, Ordering::Relaxed);
        a.resting.store(true, Ordering::Relaxed);
        let total = DomainStats::sum(&[&a, &b]);
        assert_eq!(total.retired.load(Ordering::Relaxed), 3);
        assert_eq!(total.task_failures.load(Ordering::Relaxed), 1);
        assert!(!total.resting.load(Ordering::Relaxed), "one part is busy");
        b.resting.store(true, Ordering::Relaxed);
        assert!(DomainStats::sum(&[&a, &b]).resting.load(Ordering::Relaxed));
        assert_eq!(total.delivered.load(Ordering::Relaxed), 2);
        assert_eq!(total.connections.load(Ordering::Relaxed), 5);
        a.permanent("BadDeviceToken");
        assert_eq!(
            total.failures()[&(FailureKind::Transient, "ConnectionFailed".to_owned())],
            2
        );
        assert_eq!(
            DomainStats::sum(&[&a]).failures()
                [&(FailureKind::Permanent, "BadDeviceToken".to_owned())],
            1
        );
        assert_eq!(total.latency_cumulative().last(), Some(&2));
    }
}
