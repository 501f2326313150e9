//! Recovery of the disk spool in the cases that must lose nothing and bring back nothing: records a newer herald
//! wrote are kept, not delivered; unreadable schedules are deleted with their record; a store that fails a write
//! becomes writable again while a slow recovery is still under way; appends refused by a failed write stay refused
//! across a restart, even when part of them reached the store, and no key issued after it equals theirs;
//! reschedules waiting while the store refuses writes stay bounded and bring back no notification lost; and an
//! entry whose key is not 16 bytes long hides nothing.

mod common;

use std::collections::BTreeSet;
use std::io;
use std::ops::ControlFlow;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::{notification, stored_keys, wait_until};
use herald_spool::fjall_engine::FJALL_DIR;
use herald_spool::{
    CommitBatch, DiskSpool, Engine, FjallEngine, FjallOptions, KeyGenerator, RECORD_VERSION,
    Schedule, Spool, SpoolError, SpoolKey, SpoolOptions, Table,
};

fn options() -> SpoolOptions {
    SpoolOptions {
        retry_interval: Duration::from_millis(20),
        ..SpoolOptions::default()
    }
}

async fn append(spool: &dyn Spool, n: usize) -> Vec<SpoolKey> {
    let keys: Vec<SpoolKey> = (0..n).map(|_| spool.next_key()).collect();
    spool
        .append(keys.iter().map(|&k| notification(k)).collect())
        .await
        .unwrap();
    keys
}

/// Writes `inserts` and `schedules` straight into the store in `dir` (no spool open).
fn write_raw(dir: &Path, inserts: Vec<(SpoolKey, Vec<u8>)>, schedules: Vec<(SpoolKey, [u8; 17])>) {
    let engine = FjallEngine::open(dir, FjallOptions::default()).unwrap();
    engine
        .commit(&CommitBatch {
            inserts,
            schedules,
            sync: true,
            ..CommitBatch::default()
        })
        .unwrap();
}

/// Makes the record's checksum right again after a change: `version | crc32 LE | body`, the checksum over the
/// key (16 bytes big-endian), the version byte and the body.
fn reseal(key: SpoolKey, mut value: Vec<u8>) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    h.update(&key.to_be_bytes());
    h.update(&value[..1]);
    h.update(&value[5..]);
    let crc = h.finalize();
    value[1..5].copy_from_slice(&crc.to_le_bytes());
    value
}

#[tokio::test]
async fn records_of_a_newer_herald_are_kept_and_not_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let old = {
        let spool = DiskSpool::open(dir.path(), options()).unwrap();
        let keys = append(&spool, 3).await;
        spool.close().await.unwrap();
        keys
    };
    // What a newer herald may write: a greater version, a presence flag this build does not know, a field after the
    // last; and one damaged record, for contrast.
    let base = old[2].0;
    let (version, flag, field, damaged) = (
        SpoolKey(base + 10),
        SpoolKey(base + 11),
        SpoolKey(base + 12),
        SpoolKey(base + 13),
    );
    let mut v = notification(version).encode();
    v[0] = RECORD_VERSION + 1;
    let v = reseal(version, v);
    let mut f = notification(flag).encode();
    // After the header (5), the domain "com.example.app" (1 + 15) and the token (1 + 32).
    f[54] |= 0x80;
    let f = reseal(flag, f);
    let mut t = notification(field).encode();
    t.extend_from_slice(b"new field");
    let t = reseal(field, t);
    let mut d = notification(damaged).encode();
    d[0] = RECORD_VERSION + 1;
    let schedule = Schedule {
        retries: 4,
        next_attempt_ms: 1_790_000_000_000,
    };
    write_raw(
        dir.path(),
        vec![(version, v), (flag, f), (field, t), (damaged, d)],
        vec![(version, schedule.encode(version))],
    );
    let newer: BTreeSet<SpoolKey> = [version, flag, field].into();

    for run in 0..2 {
        let spool = DiskSpool::open(dir.path(), options()).unwrap();
        let r = spool.recover().unwrap();
        let got: Vec<SpoolKey> = r.notifications.iter().map(|n| n.key).collect();
        assert_eq!(
            got, old,
            "run {run}: only what this build reads is delivered"
        );
        assert_eq!(r.report.newer_format, 3, "run {run}");
        assert_eq!(r.report.skipped, if run == 0 { 1 } else { 0 }, "run {run}");
        assert_eq!(
            r.report.orphan_schedules, 0,
            "run {run}: its schedule is not an orphan"
        );
        assert_eq!(
            spool.stats().records,
            6,
            "run {run}: kept records are stored"
        );
        spool.flush().await.unwrap();
        let records = stored_keys(spool.engine(), Table::Records);
        assert!(newer.is_subset(&records), "run {run}: {records:?}");
        assert!(
            !records.contains(&damaged),
            "run {run}: the damaged one is deleted"
        );
        assert_eq!(
            stored_keys(spool.engine(), Table::Schedules),
            [version].into(),
            "run {run}"
        );
        spool.close().await.unwrap();
    }
}

#[tokio::test]
async fn an_unreadable_schedule_is_deleted_with_its_record_or_as_an_orphan() {
    let dir = tempfile::tempdir().unwrap();
    let keys = {
        let spool = DiskSpool::open(dir.path(), options()).unwrap();
        let keys = append(&spool, 2).await;
        spool.close().await.unwrap();
        keys
    };
    let orphan = SpoolKey(keys[1].0 + 1);
    write_raw(
        dir.path(),
        Vec::new(),
        vec![(keys[0], [0xee; 17]), (orphan, [0x11; 17])],
    );
    let spool = DiskSpool::open(dir.path(), options()).unwrap();
    let r = spool.recover().unwrap();
    assert_eq!(r.notifications.len(), 2);
    assert_eq!(
        (r.notifications[0].key, r.notifications[0].retries),
        (keys[0], 0),
        "the record's own state applies"
    );
    assert_eq!(r.report.orphan_schedules, 1);
    spool.remove(&keys[..1]);
    spool.flush().await.unwrap();
    spool.close().await.unwrap();
    drop(spool);
    let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
    assert_eq!(stored_keys(&engine, Table::Schedules), BTreeSet::new());
    assert_eq!(stored_keys(&engine, Table::Records), [keys[1]].into());
}

/// The fjall engine with a switch that makes commits fail as on a full disk (and, with `stores`, after storing the
/// appends anyway, as a write whose fsync failed), and reopens fail while it is on.
struct FaultyEngine {
    inner: FjallEngine,
    fail: Arc<AtomicBool>,
    stores: bool,
}

fn disk_full() -> SpoolError {
    SpoolError::from_io("committing", io::Error::from_raw_os_error(28))
}

impl Engine for FaultyEngine {
    fn name(&self) -> &'static str {
        "faulty"
    }

    fn commit(&self, batch: &CommitBatch) -> Result<(), SpoolError> {
        if !self.fail.load(Ordering::SeqCst) {
            return self.inner.commit(batch);
        }
        if self.stores && !batch.inserts.is_empty() {
            self.inner.commit(&CommitBatch {
                inserts: batch.inserts.clone(),
                sync: true,
                ..CommitBatch::default()
            })?;
        }
        Err(disk_full())
    }

    fn sync(&self) -> Result<(), SpoolError> {
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

    fn refresh_disk_bytes(&self) {
        self.inner.refresh_disk_bytes()
    }

    fn reopen(&self) -> Result<(), SpoolError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(disk_full());
        }
        self.inner.reopen()
    }
}

/// While the store refuses writes, the reschedules of held notifications wait in memory: one per notification (the
/// latest), and at most `maintenance_cap` of them, those rescheduled longest ago dropped first. A notification whose
/// reschedule was dropped comes back after a restart on the schedule stored before; none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reschedules_waiting_for_a_refusing_store_stay_bounded() {
    const CAP: usize = 4;
    const ROUNDS: u32 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let capped = SpoolOptions {
        maintenance_cap: CAP,
        ..options()
    };
    let keys = {
        let engine = FaultyEngine {
            inner: FjallEngine::open(dir.path(), FjallOptions::default()).unwrap(),
            fail: Arc::clone(&fail),
            stores: false,
        };
        let spool = DiskSpool::with_engine(engine, capped).unwrap();
        let keys = append(&spool, 8).await;
        spool.reschedule(keys[0], 1, 1_000);
        spool.flush().await.unwrap();

        fail.store(true, Ordering::SeqCst);
        assert!(
            spool
                .append(vec![notification(spool.next_key())])
                .await
                .is_err()
        );
        // Retried again and again while the store refuses writes: one reschedule waits per notification. The
        // writer has taken them once a request sent after them is answered.
        for round in 1..=ROUNDS {
            for &key in &keys[..CAP] {
                spool.reschedule(key, round + 1, u64::from(round));
            }
        }
        assert!(spool.flush().await.is_err());
        assert_eq!(
            spool.pending_reschedules(),
            CAP as u64,
            "one per notification"
        );
        // One notification more than the cap: the one rescheduled longest ago (keys[0], first of the last round)
        // is dropped.
        spool.reschedule(keys[CAP], 7, 7_000);
        assert!(spool.flush().await.is_err());
        assert_eq!(spool.pending_reschedules(), CAP as u64, "at the cap");
        // A delivered notification's reschedule goes with it.
        spool.remove(&keys[1..2]);
        assert!(spool.flush().await.is_err());
        assert_eq!(spool.pending_reschedules(), CAP as u64 - 1);

        fail.store(false, Ordering::SeqCst);
        wait_until(10, "the store to take writes again", || {
            !spool.stats().unwritable
        });
        spool.flush().await.unwrap();
        assert_eq!(spool.pending_reschedules(), 0);
        spool.close().await.unwrap();
        keys
    };

    let spool = DiskSpool::open(dir.path(), options()).unwrap();
    let r = spool.recover().unwrap();
    assert_eq!(r.report.orphan_schedules, 0);
    let got: Vec<(SpoolKey, u32, u64)> = r
        .notifications
        .iter()
        .map(|n| (n.key, n.retries, n.next_attempt_ms))
        .collect();
    let last = u64::from(ROUNDS);
    let mut want = vec![
        // Its later reschedules dropped: the schedule stored before.
        (keys[0], 1, 1_000),
        (keys[2], ROUNDS + 1, last),
        (keys[3], ROUNDS + 1, last),
        (keys[4], 7, 7_000),
    ];
    want.extend(keys[5..].iter().map(|&k| (k, 0, 0)));
    assert_eq!(got, want);
    spool.close().await.unwrap();
}

/// More records than recovery reads ahead of a visitor that waits (ten chunks of 1024), so that the reading side
/// is blocked too.
const BACKLOG: usize = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_takes_writes_again_while_a_slow_recovery_waits() {
    let dir = tempfile::tempdir().unwrap();
    let mut backlog = Vec::with_capacity(BACKLOG);
    {
        let spool = DiskSpool::open(dir.path(), options()).unwrap();
        for _ in 0..BACKLOG / 1000 {
            backlog.extend(append(&spool, 1000).await);
        }
        spool.close().await.unwrap();
    }
    let fail = Arc::new(AtomicBool::new(false));
    let engine = FaultyEngine {
        inner: FjallEngine::open(dir.path(), FjallOptions::default()).unwrap(),
        fail: Arc::clone(&fail),
        stores: false,
    };
    let spool = Arc::new(DiskSpool::with_engine(engine, options()).unwrap());

    // A recovery whose visitor waits (for memory, say) at its 100th notification until told to go on.
    let (go, wait) = std::sync::mpsc::channel::<()>();
    let visited = Arc::new(AtomicUsize::new(0));
    let recovery = {
        let spool = Arc::clone(&spool);
        let visited = Arc::clone(&visited);
        std::thread::spawn(move || {
            let mut keys = Vec::new();
            let report = spool
                .recover_each(&mut |n| {
                    keys.push(n.key);
                    if visited.fetch_add(1, Ordering::SeqCst) + 1 == 100 {
                        wait.recv().unwrap();
                    }
                    ControlFlow::Continue(())
                })
                .unwrap();
            (keys, report)
        })
    };
    wait_until(10, "the visitor to wait", || {
        visited.load(Ordering::SeqCst) == 100
    });

    // A write fails; the disk has room again; the store takes writes while the visitor still waits.
    fail.store(true, Ordering::SeqCst);
    let refused = spool.next_key();
    let result = spool.append(vec![notification(refused)]).await;
    assert!(result.is_err_and(|e| e.is_disk_full()));
    assert!(spool.stats().unwritable);
    fail.store(false, Ordering::SeqCst);
    wait_until(10, "the store to take writes again", || {
        !spool.stats().unwritable
    });
    assert_eq!(
        visited.load(Ordering::SeqCst),
        100,
        "the visitor still waits"
    );
    let later = append(&*spool, 10).await;

    go.send(()).unwrap();
    let (keys, report) = recovery.join().unwrap();
    assert_eq!(
        keys, backlog,
        "every record once, in order, across the reopen"
    );
    assert_eq!(report.recovered, BACKLOG as u64);
    spool.close().await.unwrap();
    drop(spool);

    let spool = DiskSpool::open(dir.path(), options()).unwrap();
    let got: Vec<SpoolKey> = spool
        .recover()
        .unwrap()
        .notifications
        .iter()
        .map(|n| n.key)
        .collect();
    assert_eq!(got.len(), BACKLOG + 10);
    assert_eq!(got[BACKLOG..], later[..]);
    spool.close().await.unwrap();
}

#[tokio::test]
async fn appends_refused_by_a_failed_write_stay_refused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let (accepted, refused) = {
        let engine = FaultyEngine {
            inner: FjallEngine::open(dir.path(), FjallOptions::default()).unwrap(),
            fail: Arc::clone(&fail),
            stores: true,
        };
        let spool = DiskSpool::with_engine_in(engine, dir.path(), options()).unwrap();
        let accepted = append(&spool, 10).await;
        // The write fails after its records reached the store (an fsync that failed, say): the senders are told
        // to try again.
        fail.store(true, Ordering::SeqCst);
        let refused: Vec<SpoolKey> = (0..10).map(|_| spool.next_key()).collect();
        let err = spool
            .append(refused.iter().map(|&k| notification(k)).collect())
            .await
            .unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        let stored = stored_keys(spool.engine(), Table::Records);
        assert!(refused.iter().all(|k| stored.contains(k)));
        // herald stops before the store takes writes again.
        assert!(spool.close().await.is_err());
        (accepted, refused)
    };

    for run in 0..2 {
        let spool = DiskSpool::open(dir.path(), options()).unwrap();
        let r = spool.recover().unwrap();
        let got: Vec<SpoolKey> = r.notifications.iter().map(|n| n.key).collect();
        assert_eq!(
            got, accepted,
            "run {run}: the refused ones are not delivered"
        );
        assert_eq!(spool.stats().records, 10, "run {run}");
        assert!(spool.next_key() > *refused.last().unwrap());
        spool.flush().await.unwrap();
        assert_eq!(
            stored_keys(spool.engine(), Table::Records),
            accepted.iter().copied().collect::<BTreeSet<_>>(),
            "run {run}: the refused ones are deleted"
        );
        assert_eq!(spool.stats().records, 10, "run {run}");
        spool.close().await.unwrap();
    }
}

/// Keys issued after a restart, by the spool or above its recovery bound as herald issues its message ids, stay
/// above the keys of refused appends still listed: those are deleted with the first commit, which would delete a
/// new notification under the same key with them, although it was acknowledged.
#[tokio::test]
async fn keys_issued_after_a_restart_stay_above_the_refused_ones() {
    let dir = tempfile::tempdir().unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    // Issued while the clock was far ahead: a herald whose clock went back since issues keys just above them.
    let epoch = u128::from(u64::MAX / 4);
    let accepted: Vec<SpoolKey> = (0..3).map(|n| SpoolKey(epoch << 64 | n)).collect();
    let refused: Vec<SpoolKey> = (0..3).map(|n| SpoolKey((epoch + 1) << 64 | n)).collect();
    {
        let engine = FaultyEngine {
            inner: FjallEngine::open(dir.path(), FjallOptions::default()).unwrap(),
            fail: Arc::clone(&fail),
            stores: false,
        };
        let spool = DiskSpool::with_engine_in(engine, dir.path(), options()).unwrap();
        spool
            .append(accepted.iter().map(|&k| notification(k)).collect())
            .await
            .unwrap();
        fail.store(true, Ordering::SeqCst);
        let err = spool
            .append(refused.iter().map(|&k| notification(k)).collect())
            .await
            .unwrap_err();
        assert!(err.is_disk_full(), "{err}");
        assert!(spool.close().await.is_err());
    }

    // The first commit after the restart is that of the first append: it deletes the refused keys too.
    let spool = DiskSpool::open(
        dir.path(),
        SpoolOptions {
            maintenance_interval: Duration::from_secs(3600),
            ..options()
        },
    )
    .unwrap();
    let ids = KeyGenerator::new(spool.recovery_bound());
    let new: Vec<SpoolKey> = (0..3).map(|_| ids.next()).collect();
    spool
        .append(new.iter().map(|&k| notification(k)).collect())
        .await
        .unwrap();
    spool.flush().await.unwrap();
    let want: BTreeSet<SpoolKey> = accepted.iter().chain(&new).copied().collect();
    assert_eq!(
        stored_keys(spool.engine(), Table::Records),
        want,
        "the acknowledged notifications are kept"
    );
    assert_eq!(spool.recovery_bound(), refused.last().copied());
    assert!(spool.next_key() > *refused.last().unwrap());
    spool.close().await.unwrap();
    drop(spool);
    let spool = DiskSpool::open(dir.path(), options()).unwrap();
    let got: BTreeSet<SpoolKey> = spool
        .recover()
        .unwrap()
        .notifications
        .iter()
        .map(|n| n.key)
        .collect();
    assert_eq!(got, want);
    spool.close().await.unwrap();
}

/// An entry whose key is not 16 bytes long (not written by herald) is skipped: it neither hides the records
/// below it from recovery nor lowers the bound new keys are issued above.
#[tokio::test]
async fn an_entry_with_a_key_of_another_length_hides_no_record() {
    let dir = tempfile::tempdir().unwrap();
    let keys = {
        let spool = DiskSpool::open(dir.path(), options()).unwrap();
        let keys = append(&spool, 3).await;
        spool.close().await.unwrap();
        keys
    };
    {
        // Greater than every key of 16 bytes.
        let keyspace = fjall::Config::new(dir.path().join(FJALL_DIR))
            .open()
            .unwrap();
        for table in ["records", "schedules"] {
            keyspace
                .open_partition(table, fjall::PartitionCreateOptions::default())
                .unwrap()
                .insert([0xff; 17], b"not a record".as_slice())
                .unwrap();
        }
        keyspace.persist(fjall::PersistMode::SyncAll).unwrap();
    }
    for run in 0..2 {
        let spool = DiskSpool::open(dir.path(), options()).unwrap();
        assert_eq!(spool.recovery_bound(), keys.last().copied(), "run {run}");
        let got: Vec<SpoolKey> = spool
            .recover()
            .unwrap()
            .notifications
            .iter()
            .map(|n| n.key)
            .collect();
        assert_eq!(got, keys, "run {run}");
        assert!(spool.next_key() > keys[2], "run {run}");
        spool.close().await.unwrap();
    }
}

/// The fjall engine whose first read of the records fails after `fail_after` of them (an I/O error part-way).
struct ReadFailsOnce {
    inner: FjallEngine,
    fail_after: usize,
    failed: AtomicBool,
}

impl Engine for ReadFailsOnce {
    fn name(&self) -> &'static str {
        "read-fails-once"
    }

    fn commit(&self, batch: &CommitBatch) -> Result<(), SpoolError> {
        self.inner.commit(batch)
    }

    fn sync(&self) -> Result<(), SpoolError> {
        self.inner.sync()
    }

    fn scan(
        &self,
        table: Table,
        upto: SpoolKey,
        visit: &mut dyn FnMut(SpoolKey, &[u8]) -> ControlFlow<()>,
    ) -> Result<(), SpoolError> {
        if table != Table::Records || self.failed.swap(true, Ordering::SeqCst) {
            return self.inner.scan(table, upto, visit);
        }
        let mut seen = 0;
        let mut broke = false;
        self.inner.scan(table, upto, &mut |key, value| {
            if seen == self.fail_after {
                broke = true;
                return ControlFlow::Break(());
            }
            seen += 1;
            visit(key, value)
        })?;
        if broke {
            return Err(SpoolError::from_io(
                "reading the spool",
                io::Error::other("injected read error"),
            ));
        }
        Ok(())
    }

    fn last_key(&self, table: Table) -> Result<Option<SpoolKey>, SpoolError> {
        self.inner.last_key(table)
    }

    fn disk_bytes(&self) -> u64 {
        self.inner.disk_bytes()
    }

    fn refresh_disk_bytes(&self) {
        self.inner.refresh_disk_bytes()
    }

    fn reopen(&self) -> Result<(), SpoolError> {
        self.inner.reopen()
    }
}

/// A recovery read again after a failed one (as herald's restore does) visits the first records again: the
/// spool's record count stays the number of records, not the number of visits.
#[tokio::test]
async fn a_recovery_read_again_after_a_failure_counts_each_record_once() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = DiskSpool::open(dir.path(), options()).unwrap();
        append(&spool, 3000).await;
        spool.close().await.unwrap();
    }
    let engine = ReadFailsOnce {
        inner: FjallEngine::open(dir.path(), FjallOptions::default()).unwrap(),
        fail_after: 2500,
        failed: AtomicBool::new(false),
    };
    let spool = DiskSpool::with_engine(engine, options()).unwrap();
    let mut visited = 0;
    let first = spool.recover_each(&mut |_| {
        visited += 1;
        ControlFlow::Continue(())
    });
    assert!(first.is_err(), "the injected read error");
    // The records read before the error (in whole chunks) were visited.
    let before = visited;
    assert!(before > 0 && before < 3000, "{before}");
    let again = spool
        .recover_each(&mut |_| {
            visited += 1;
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(again.recovered, 3000);
    assert_eq!(visited, before + 3000);
    assert_eq!(spool.stats().records, 3000, "each record counted once");
    spool.close().await.unwrap();
}
