//! Counters of the queue and its outcomes, per domain and in total, read by `herald bench`, the console and
//! metrics. Plain atomics: they are updated on the delivery path.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Counters of one domain.
#[derive(Debug, Default)]
pub struct DomainStats {
    pub received: AtomicU64,
    pub delivered: AtomicU64,
    pub transient: AtomicU64,
    pub permanent: AtomicU64,
    /// Requeued without an attempt (refused stream, GOAWAY, lost connection).
    pub requeued: AtomicU64,
    pub active: AtomicUsize,
    pub delayed: AtomicUsize,
    pub connections: AtomicUsize,
    /// Sum of enqueue-to-delivery times in microseconds, for the mean latency.
    pub latency_micros: AtomicU64,
    failures: Mutex<HashMap<String, u64>>,
}

impl DomainStats {
    pub fn delivered(&self, latency: Duration) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        self.latency_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn transient(&self, reason: &str) {
        self.transient.fetch_add(1, Ordering::Relaxed);
        self.count_reason(format!("T {reason}"));
    }

    pub fn permanent(&self, reason: &str) {
        self.permanent.fetch_add(1, Ordering::Relaxed);
        self.count_reason(format!("P {reason}"));
    }

    pub fn requeued(&self) {
        self.requeued.fetch_add(1, Ordering::Relaxed);
    }

    fn count_reason(&self, key: String) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(key).or_default() += 1;
    }

    /// Failures by kind and reason: keys are `T <reason>` and `P <reason>`.
    pub fn failures(&self) -> HashMap<String, u64> {
        self.failures
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_queue_sizes(&self, active: usize, delayed: usize) {
        self.active.store(active, Ordering::Relaxed);
        self.delayed.store(delayed, Ordering::Relaxed);
    }

    pub fn set_connections(&self, n: usize) {
        self.connections.store(n, Ordering::Relaxed);
    }

    /// Notifications that reached a final outcome.
    pub fn finished(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed) + self.permanent.load(Ordering::Relaxed)
    }
}
