//! [`MemorySpool`]: a spool in memory, for tests of other crates. NOT durable: everything is lost with the process.

use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::error::SpoolError;
use crate::key::{KeyGenerator, SpoolKey};
use crate::record::StoredNotification;
use crate::spool::{RecoveryReport, Spool, SpoolFuture, SpoolStats};

/// A [`Spool`] that keeps notifications in a map in memory. It is **not durable**: an append "commits" at once and
/// nothing survives the process. Meant for tests of code that uses a spool, never for serving.
#[derive(Debug)]
pub struct MemorySpool {
    records: Mutex<BTreeMap<SpoolKey, StoredNotification>>,
    keys: KeyGenerator,
    /// The greatest key held when this spool was made by [`MemorySpool::reopened`]: what recovery visits.
    recovery_bound: Option<SpoolKey>,
    closed: AtomicBool,
    commits: AtomicU64,
    append_calls: AtomicU64,
    appended: AtomicU64,
    rescheduled: AtomicU64,
    removed: AtomicU64,
}

impl Default for MemorySpool {
    fn default() -> Self {
        MemorySpool::new()
    }
}

impl MemorySpool {
    pub fn new() -> MemorySpool {
        MemorySpool {
            records: Mutex::new(BTreeMap::new()),
            keys: KeyGenerator::new(None),
            recovery_bound: None,
            closed: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            append_calls: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            rescheduled: AtomicU64::new(0),
            removed: AtomicU64::new(0),
        }
    }

    /// What a restart would find: a new spool holding this one's notifications, which its recovery visits.
    pub fn reopened(&self) -> MemorySpool {
        let records = self.lock().clone();
        let bound = records.keys().next_back().copied();
        MemorySpool {
            records: Mutex::new(records),
            keys: KeyGenerator::new(bound),
            recovery_bound: bound,
            ..MemorySpool::new()
        }
    }

    /// A copy of one stored notification, for assertions.
    pub fn get(&self, key: SpoolKey) -> Option<StoredNotification> {
        self.lock().get(&key).cloned()
    }

    /// Number of notifications held.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<SpoolKey, StoredNotification>> {
        // A panic while holding the lock leaves a consistent map (every operation is a single insert or remove).
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Spool for MemorySpool {
    fn next_key(&self) -> SpoolKey {
        self.keys.next()
    }

    fn append(&self, batch: Vec<StoredNotification>) -> SpoolFuture<()> {
        self.append_calls.fetch_add(1, Ordering::Relaxed);
        let result = if self.closed.load(Ordering::Acquire) {
            Err(SpoolError::Closed)
        } else {
            self.appended
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            self.commits.fetch_add(1, Ordering::Relaxed);
            let mut map = self.lock();
            for n in batch {
                map.insert(n.key, n);
            }
            Ok(())
        };
        Box::pin(async move { result })
    }

    fn reschedule(&self, key: SpoolKey, retries: u32, next_attempt_ms: u64) {
        self.rescheduled.fetch_add(1, Ordering::Relaxed);
        if let Some(n) = self.lock().get_mut(&key) {
            n.retries = retries;
            n.next_attempt_ms = next_attempt_ms;
        }
    }

    fn remove(&self, keys: &[SpoolKey]) {
        self.removed.fetch_add(keys.len() as u64, Ordering::Relaxed);
        let mut map = self.lock();
        for k in keys {
            map.remove(k);
        }
    }

    fn recovery_bound(&self) -> Option<SpoolKey> {
        self.recovery_bound
    }

    fn recover_each(
        &self,
        visit: &mut dyn FnMut(StoredNotification) -> ControlFlow<()>,
    ) -> Result<RecoveryReport, SpoolError> {
        let Some(bound) = self.recovery_bound else {
            return Ok(RecoveryReport::default());
        };
        let all: Vec<StoredNotification> = self
            .lock()
            .range(..=bound)
            .map(|(_, n)| n.clone())
            .collect();
        let mut recovered = 0;
        for n in all {
            recovered += 1;
            if visit(n).is_break() {
                break;
            }
        }
        Ok(RecoveryReport {
            recovered,
            ..RecoveryReport::default()
        })
    }

    fn stats(&self) -> SpoolStats {
        SpoolStats {
            records: self.lock().len() as u64,
            bytes_on_disk: 0,
            commits: self.commits.load(Ordering::Relaxed),
            failed_commits: 0,
            append_calls: self.append_calls.load(Ordering::Relaxed),
            appended: self.appended.load(Ordering::Relaxed),
            rescheduled: self.rescheduled.load(Ordering::Relaxed),
            removed: self.removed.load(Ordering::Relaxed),
            ..SpoolStats::default()
        }
    }

    fn flush(&self) -> SpoolFuture<()> {
        Box::pin(async { Ok(()) })
    }

    fn close(&self) -> SpoolFuture<()> {
        self.closed.store(true, Ordering::Release);
        Box::pin(async { Ok(()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::tests::sample;

    #[tokio::test]
    async fn append_reschedule_remove_recover() {
        let spool = MemorySpool::new();
        let k1 = spool.next_key();
        let k2 = spool.next_key();
        assert!(k2 > k1);
        spool
            .append(vec![sample(k2.0), sample(k1.0)])
            .await
            .unwrap();
        spool.reschedule(k2, 2, 99);
        spool.remove(&[k1]);
        assert_eq!(spool.recover().unwrap().notifications.len(), 0);
        let st = spool.stats();
        assert_eq!(
            (st.records, st.appended, st.removed, st.rescheduled),
            (1, 2, 1, 1)
        );
        let spool = spool.reopened();
        assert!(spool.next_key() > k2);
        let r = spool.recover().unwrap();
        assert_eq!(r.notifications.len(), 1);
        assert_eq!(r.notifications[0].key, k2);
        assert_eq!(
            (
                r.notifications[0].retries,
                r.notifications[0].next_attempt_ms
            ),
            (2, 99)
        );
        assert_eq!(spool.stats().records, 1);
        spool.close().await.unwrap();
        assert!(matches!(
            spool.append(vec![sample(1)]).await,
            Err(SpoolError::Closed)
        ));
    }
}
