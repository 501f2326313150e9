//! Helpers shared by the integration tests: sample notifications, engines that block or fail on demand, and a
//! condition wait with a deadline.
#![allow(dead_code)]

use std::io;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use herald_spool::{
    CommitBatch, Engine, FjallEngine, FjallOptions, SpoolError, SpoolKey, StoredNotification, Table,
};

/// A notification of about 300 bytes, its content derived from `key`.
pub fn notification(key: SpoolKey) -> StoredNotification {
    let n = key.0 as u64;
    StoredNotification {
        key,
        domain: "com.example.app".into(),
        token: (0..32).map(|i| (n as u8).wrapping_add(i)).collect(),
        topic: Some("com.example.app".into()),
        push_type: Some("alert".into()),
        priority: Some(10),
        expiration: Some(1_900_000_000),
        collapse_id: n.is_multiple_of(3).then(|| format!("c{n}")),
        apns_id: Some(format!("00000000-0000-4000-8000-{n:012x}")),
        binding: None,
        payload: format!(r#"{{"aps":{{"alert":{{"title":"Order {n}","body":"Your order has shipped and is on its way"}},"badge":1}},"n":{n}}}"#).into_bytes(),
        sender: "orders@example.com".into(),
        recipient: format!("{n:016x}@com.example.app"),
        received_at: 1_790_000_000 + n,
        batch_id: n as u128 / 10,
        conn_id: 1,
        retries: 0,
        next_attempt_ms: 0,
    }
}

/// The keys the store holds now in `table` (what a restart would find once the writer's queue is committed).
pub fn stored_keys(engine: &dyn Engine, table: Table) -> std::collections::BTreeSet<SpoolKey> {
    let mut keys = std::collections::BTreeSet::new();
    engine
        .scan(table, SpoolKey(u128::MAX), &mut |k, _| {
            keys.insert(k);
            ControlFlow::Continue(())
        })
        .unwrap();
    keys
}

/// Waits until `cond` holds, panicking after `secs` seconds.
pub fn wait_until(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Control of a [`GatedEngine`]: a gate that holds commits, and a switch that makes them fail.
#[derive(Default)]
pub struct Gate {
    open: Mutex<bool>,
    cv: Condvar,
    pub entered: AtomicU64,
    pub fail: AtomicBool,
    /// Commits asked to fsync, commits written without one, and [`Engine::sync`] calls.
    pub synced_commits: AtomicU64,
    pub buffered_commits: AtomicU64,
    pub syncs: AtomicU64,
}

impl Gate {
    pub fn new(open: bool) -> Arc<Gate> {
        let g = Gate::default();
        *g.open.lock().unwrap() = open;
        Arc::new(g)
    }

    pub fn set_open(&self, open: bool) {
        *self.open.lock().unwrap() = open;
        self.cv.notify_all();
    }
}

/// The fjall engine, but its commits wait for a gate and can be made to fail with an I/O error.
pub struct GatedEngine {
    pub inner: FjallEngine,
    pub gate: Arc<Gate>,
}

impl GatedEngine {
    pub fn open(dir: &Path, gate: Arc<Gate>) -> GatedEngine {
        std::fs::create_dir_all(dir).unwrap();
        GatedEngine {
            inner: FjallEngine::open(dir, FjallOptions::default()).unwrap(),
            gate,
        }
    }
}

impl Engine for GatedEngine {
    fn name(&self) -> &'static str {
        "gated"
    }

    fn commit(&self, batch: &CommitBatch) -> Result<(), SpoolError> {
        self.gate.entered.fetch_add(1, Ordering::SeqCst);
        let mut open = self.gate.open.lock().unwrap();
        while !*open {
            open = self.gate.cv.wait(open).unwrap();
        }
        drop(open);
        if self.gate.fail.load(Ordering::SeqCst) {
            return Err(SpoolError::from_io(
                "committing",
                io::Error::from_raw_os_error(28),
            ));
        }
        let kind = if batch.sync {
            &self.gate.synced_commits
        } else {
            &self.gate.buffered_commits
        };
        kind.fetch_add(1, Ordering::SeqCst);
        self.inner.commit(batch)
    }

    fn sync(&self) -> Result<(), SpoolError> {
        self.gate.syncs.fetch_add(1, Ordering::SeqCst);
        self.inner.sync()
    }

    fn scan(
        &self,
        table: Table,
        upto: SpoolKey,
        visit: &mut dyn FnMut(SpoolKey, &[u8]) -> ControlFlow<()>,
    ) -> Result<(), SpoolError> {
        self.inner.scan(table, upto, visit)
    }

    fn last_key(&self, table: Table) -> Result<Option<SpoolKey>, SpoolError> {
        self.inner.last_key(table)
    }

    fn disk_bytes(&self) -> u64 {
        self.inner.disk_bytes()
    }
}
