//! [`DiskSpool`]: the durable spool over an [`Engine`], with a writer thread that does group commit.
//!
//! Callers encode their records and queue them to the writer thread. The writer takes whatever is queued, writes it
//! in one transaction with one fsync, and then answers every append in it. While it commits, new appends queue up
//! and form the next group, so the number of fsyncs follows the disk's speed, not the number of callers.
//! Reschedules and removals are collected and committed with the next group of appends, or after
//! [`SpoolOptions::maintenance_interval`], whichever comes first; a commit of those alone is written to the
//! operating system without an fsync (it survives a crash of the process; the next fsync covers it).

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::engine::{CommitBatch, Engine, Table};
use crate::error::SpoolError;
use crate::fjall_engine::{FjallEngine, FjallOptions, REOPEN_FREE_BYTES, probe_free_space};
use crate::key::{KeyGenerator, SpoolKey};
use crate::record::{Schedule, StoredNotification};
use crate::spool::{RecoveryReport, Spool, SpoolFuture, SpoolStats};

/// Tuning of a [`DiskSpool`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpoolOptions {
    /// A group commit stops taking appends once it holds this many bytes of records.
    pub max_group_bytes: usize,
    /// Reschedules and removals wait at most this long for a commit.
    pub maintenance_interval: Duration,
    /// ...or until this many are pending.
    pub maintenance_max_ops: usize,
    /// Pending reschedules kept across failed commits before the oldest are dropped (they would only bring back an
    /// older schedule after a restart). Removals are never dropped: they wait in memory until the store takes writes
    /// again, so that nothing delivered is sent again after a restart.
    pub maintenance_cap: usize,
    /// After a failed commit the writer refuses appends at once and tries to make the store writable again
    /// ([`Engine::reopen`]) at the next request, then at most this often while it keeps failing.
    pub retry_interval: Duration,
    /// Options of the fjall store ([`DiskSpool::open`]).
    pub store: FjallOptions,
}

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            max_group_bytes: 32 << 20,
            maintenance_interval: Duration::from_millis(10),
            maintenance_max_ops: 50_000,
            maintenance_cap: 4_000_000,
            retry_interval: Duration::from_secs(1),
            store: FjallOptions::default(),
        }
    }
}

type Reply = oneshot::Sender<Result<(), SpoolError>>;

/// Records handed from the reading thread to the decoding one at a time during recovery.
const RECOVERY_CHUNK: usize = 1024;

enum Op {
    Append {
        records: Vec<(SpoolKey, Vec<u8>)>,
        bytes: usize,
        reply: Reply,
    },
    Reschedule(SpoolKey, Schedule),
    Remove(Vec<SpoolKey>),
    /// Removal of records recovery could not read (not counted as stored), and of orphan schedules.
    Purge(Vec<SpoolKey>),
    /// Keys that recovery found with a schedule entry.
    Scheduled(Vec<SpoolKey>),
    Flush(Reply),
    Close(Reply),
}

#[derive(Debug, Default)]
struct Counters {
    commits: AtomicU64,
    failed_commits: AtomicU64,
    append_calls: AtomicU64,
    appended: AtomicU64,
    rescheduled: AtomicU64,
    removed: AtomicU64,
    /// Records stored: counted by recovery as it visits them, and kept up to date by each commit.
    records: AtomicU64,
    /// Set while the store refuses writes (since a failed commit, until one succeeds again).
    unwritable: AtomicBool,
    /// Set while the store refuses writes because its disk is full.
    disk_full: AtomicBool,
    /// Removals waiting for a commit.
    pending_removals: AtomicU64,
    /// The error of the failed commit, while unwritable.
    last_error: Mutex<Option<SpoolError>>,
}

/// The durable spool: an [`Engine`] (fjall by default) behind a group-committing writer thread.
pub struct DiskSpool<E: Engine = FjallEngine> {
    engine: Arc<E>,
    ops: Sender<Op>,
    counters: Arc<Counters>,
    keys: KeyGenerator,
    /// The greatest key stored at open (records or schedules): what recovery reads up to.
    recovery_bound: Option<SpoolKey>,
    writer: Mutex<Option<JoinHandle<()>>>,
    /// The lock on the spool directory, held for the spool's life (released by the kernel if the process dies).
    lock: Option<std::fs::File>,
}

impl DiskSpool<FjallEngine> {
    /// Opens the spool in directory `dir`, creating it if missing. Fails with a clear error when the directory
    /// cannot be created or written.
    pub fn open(dir: impl AsRef<Path>, options: SpoolOptions) -> Result<Self, SpoolError> {
        let dir = dir.as_ref();
        prepare_dir(dir)?;
        let lock = lock_dir(dir)?;
        let engine = FjallEngine::open(dir, options.store)?;
        // On a full disk the spool opens refusing appends, so that what it holds can still be delivered.
        let full = probe_free_space(dir, REOPEN_FREE_BYTES)
            .err()
            .filter(SpoolError::is_disk_full);
        let mut spool = DiskSpool::start(engine, options, full)?;
        spool.lock = Some(lock);
        Ok(spool)
    }
}

/// Creates `dir` if needed and checks that files can be created in it. A full disk is not an error here: the spool
/// opens refusing appends until there is room.
pub fn prepare_dir(dir: &Path) -> Result<(), SpoolError> {
    std::fs::create_dir_all(dir).map_err(|e| SpoolError::Open {
        path: dir.to_path_buf(),
        source: Arc::new(e),
    })?;
    let probe: PathBuf = dir.join(".herald-spool-probe");
    let written = std::fs::write(&probe, b"probe");
    let _ = std::fs::remove_file(&probe);
    match written {
        Err(e)
            if e.kind() != std::io::ErrorKind::StorageFull
                && !matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) =>
        {
            Err(SpoolError::NotWritable {
                path: dir.to_path_buf(),
                source: Arc::new(e),
            })
        }
        _ => Ok(()),
    }
}

/// Takes an exclusive lock on `dir/LOCK`, so that two processes never write the same spool.
fn lock_dir(dir: &Path) -> Result<std::fs::File, SpoolError> {
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| SpoolError::NotWritable {
            path: dir.to_path_buf(),
            source: Arc::new(e),
        })?;
    // An advisory lock held as long as the file is open (flock on Unix): a second herald on the same directory is
    // refused at once instead of corrupting the spool.
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(SpoolError::Locked {
                path: dir.to_path_buf(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(SpoolError::from_io("locking the spool directory", e));
        }
    }
    Ok(file)
}

impl<E: Engine> DiskSpool<E> {
    /// A spool over an opened engine; starts the writer thread.
    pub fn with_engine(engine: E, options: SpoolOptions) -> Result<Self, SpoolError> {
        DiskSpool::start(engine, options, None)
    }

    /// Starts the writer thread; with `unwritable`, refusing appends until the store takes writes again.
    fn start(
        engine: E,
        options: SpoolOptions,
        unwritable: Option<SpoolError>,
    ) -> Result<Self, SpoolError> {
        let engine = Arc::new(engine);
        let recovery_bound = engine
            .last_key(Table::Records)?
            .max(engine.last_key(Table::Schedules)?);
        let keys = KeyGenerator::new(recovery_bound);
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            engine: Arc::clone(&engine),
            counters: Arc::clone(&counters),
            options,
            rx,
            pending: CommitBatch::default(),
            pending_since: None,
            unsynced: false,
            purged: 0,
            scheduled: HashSet::new(),
            broken: None,
            refused: Vec::new(),
        };
        let mut writer = writer;
        if let Some(e) = unwritable {
            writer.mark_broken(e, Instant::now() + options.retry_interval, false);
        }
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| SpoolError::from_io("starting the spool writer thread", e))?;
        Ok(DiskSpool {
            engine,
            ops: tx,
            counters,
            keys,
            recovery_bound,
            writer: Mutex::new(Some(handle)),
            lock: None,
        })
    }

    /// The engine (for its name and size; tests write to it directly).
    pub fn engine(&self) -> &E {
        &self.engine
    }

    fn request(&self, make: impl FnOnce(Reply) -> Op) -> SpoolFuture<()> {
        let (reply, answer) = oneshot::channel();
        let sent = self.ops.send(make(reply));
        Box::pin(async move {
            if sent.is_err() {
                return Err(SpoolError::Closed);
            }
            answer.await.unwrap_or(Err(SpoolError::Closed))
        })
    }
}

impl<E: Engine> Spool for DiskSpool<E> {
    fn next_key(&self) -> SpoolKey {
        self.keys.next()
    }

    fn append(&self, batch: Vec<StoredNotification>) -> SpoolFuture<()> {
        if batch.is_empty() {
            return Box::pin(async { Ok(()) });
        }
        let records: Vec<(SpoolKey, Vec<u8>)> = batch.iter().map(|n| (n.key, n.encode())).collect();
        let bytes = records.iter().map(|(_, v)| v.len() + 16).sum();
        let future = self.request(|reply| Op::Append {
            records,
            bytes,
            reply,
        });
        // Counted once queued, so a caller that sees the count knows the writer can take the request.
        self.counters.append_calls.fetch_add(1, Ordering::Relaxed);
        future
    }

    fn reschedule(&self, key: SpoolKey, retries: u32, next_attempt_ms: u64) {
        self.counters.rescheduled.fetch_add(1, Ordering::Relaxed);
        let schedule = Schedule {
            retries,
            next_attempt_ms,
        };
        if self.ops.send(Op::Reschedule(key, schedule)).is_err() {
            tracing::warn!(%key, "spool closed: reschedule not recorded");
        }
    }

    fn remove(&self, keys: &[SpoolKey]) {
        if keys.is_empty() {
            return;
        }
        self.counters
            .removed
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        if self.ops.send(Op::Remove(keys.to_vec())).is_err() {
            tracing::warn!(count = keys.len(), "spool closed: removal not recorded");
        }
    }

    fn recovery_bound(&self) -> Option<SpoolKey> {
        self.recovery_bound
    }

    fn recover_each(
        &self,
        visit: &mut dyn FnMut(StoredNotification) -> ControlFlow<()>,
    ) -> Result<RecoveryReport, SpoolError> {
        let mut report = RecoveryReport::default();
        let Some(bound) = self.recovery_bound else {
            return Ok(report);
        };
        let mut schedules: HashMap<SpoolKey, Schedule> = HashMap::new();
        self.engine
            .scan(Table::Schedules, bound, &mut |key, value| {
                match Schedule::decode(key, value) {
                    Ok(s) => {
                        schedules.insert(key, s);
                    }
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "spool: skipping a corrupt schedule; the record's own applies");
                    }
                }
                ControlFlow::Continue(())
            })?;
        // The store is read on a helper thread while this one decodes: the two halves take similar time.
        let mut corrupt = Vec::new();
        let mut stopped = false;
        let engine = &*self.engine;
        std::thread::scope(|scope| -> Result<(), SpoolError> {
            let (chunks, received) = mpsc::sync_channel::<Vec<(SpoolKey, Vec<u8>)>>(8);
            let reader = scope.spawn(move || {
                let mut chunk = Vec::with_capacity(RECOVERY_CHUNK);
                engine.scan(Table::Records, bound, &mut |key, value| {
                    chunk.push((key, value.to_vec()));
                    if chunk.len() == RECOVERY_CHUNK {
                        let full =
                            std::mem::replace(&mut chunk, Vec::with_capacity(RECOVERY_CHUNK));
                        if chunks.send(full).is_err() {
                            // The decoding side stopped.
                            return ControlFlow::Break(());
                        }
                    }
                    ControlFlow::Continue(())
                })?;
                let _ = chunks.send(chunk);
                Ok(())
            });
            'chunks: for chunk in received.iter() {
                for (key, value) in chunk {
                    match StoredNotification::decode(key, &value) {
                        Ok(mut n) => {
                            if let Some(s) = schedules.remove(&key) {
                                n.retries = s.retries;
                                n.next_attempt_ms = s.next_attempt_ms;
                                // Before the visit: a removal the visit leads to must also delete the schedule.
                                let _ = self.ops.send(Op::Scheduled(vec![key]));
                            }
                            report.recovered += 1;
                            self.counters.records.fetch_add(1, Ordering::Relaxed);
                            if visit(n).is_break() {
                                stopped = true;
                                break 'chunks;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(%key, error = %e, "spool: skipping a corrupt or torn record");
                            report.skipped += 1;
                            corrupt.push(key);
                        }
                    }
                }
            }
            drop(received);
            match reader.join() {
                Ok(result) => result,
                Err(_) => Err(SpoolError::Storage {
                    context: "reading the spool",
                    detail: "the reading thread panicked".into(),
                    temporary: false,
                }),
            }
        })?;
        // Delete what cannot be used, so the warnings are not repeated at every start. The schedule of a corrupt
        // record goes with it; a corrupt schedule is rewritten by the next reschedule or goes with its record. A
        // recovery stopped early has not seen every record, so its leftover schedules are not orphans.
        if !stopped {
            report.orphan_schedules = schedules.len() as u64;
            corrupt.extend(schedules.into_keys());
        }
        if !corrupt.is_empty() {
            let _ = self.ops.send(Op::Purge(corrupt));
        }
        Ok(report)
    }

    fn stats(&self) -> SpoolStats {
        let c = &self.counters;
        SpoolStats {
            records: c.records.load(Ordering::Relaxed),
            bytes_on_disk: self.engine.disk_bytes(),
            commits: c.commits.load(Ordering::Relaxed),
            failed_commits: c.failed_commits.load(Ordering::Relaxed),
            append_calls: c.append_calls.load(Ordering::Relaxed),
            appended: c.appended.load(Ordering::Relaxed),
            rescheduled: c.rescheduled.load(Ordering::Relaxed),
            removed: c.removed.load(Ordering::Relaxed),
            unwritable: c.unwritable.load(Ordering::Relaxed),
            disk_full: c.disk_full.load(Ordering::Relaxed),
            pending_removals: c.pending_removals.load(Ordering::Relaxed),
        }
    }

    fn write_error(&self) -> Option<SpoolError> {
        self.counters.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn flush(&self) -> SpoolFuture<()> {
        self.request(Op::Flush)
    }

    fn close(&self) -> SpoolFuture<()> {
        self.request(Op::Close)
    }
}

impl<E: Engine> Drop for DiskSpool<E> {
    fn drop(&mut self) {
        let (reply, _answer) = oneshot::channel();
        let _ = self.ops.send(Op::Close(reply));
        let handle = self.writer.lock().ok().and_then(|mut h| h.take());
        if let Some(handle) = handle
            && handle.join().is_err()
        {
            tracing::error!("spool writer thread panicked");
        }
    }
}

/// The writer thread's state.
struct Writer<E: Engine> {
    engine: Arc<E>,
    counters: Arc<Counters>,
    options: SpoolOptions,
    rx: Receiver<Op>,
    /// Reschedules and removals not yet committed.
    pending: CommitBatch,
    pending_since: Option<Instant>,
    /// Whether a commit since the last fsync was written without one.
    unsynced: bool,
    /// How many of the pending removals are purges of unreadable records.
    purged: usize,
    /// Keys that have an entry in the schedules table (rescheduled at least once).
    scheduled: HashSet<SpoolKey>,
    /// Set while the store refuses writes: the error, when to try again in the background, and whether the next
    /// request may try at once (only the first after a failed commit).
    broken: Option<(SpoolError, Instant, bool)>,
    /// Keys of appends refused by a failed commit. Part of such a commit may still reach the disk (the store's
    /// journal is flushed when it is reopened): they are deleted with the first commit that succeeds again, so a
    /// refused notification never comes back.
    refused: Vec<SpoolKey>,
}

/// One group: the appends and requests answered by the next commit.
#[derive(Default)]
struct Group {
    inserts: Vec<(SpoolKey, Vec<u8>)>,
    appended: u64,
    bytes: usize,
    replies: Vec<Reply>,
    close: Option<Reply>,
    force: bool,
}

impl<E: Engine> Writer<E> {
    fn run(mut self) {
        let mut group = Group::default();
        loop {
            // While the store refuses writes, pending maintenance waits for the next retry, not for its interval.
            let deadline = match (&self.broken, self.pending_since) {
                (Some((_, retry_at, _)), _) => Some(*retry_at),
                (None, Some(since)) => Some(since + self.options.maintenance_interval),
                (None, None) => None,
            };
            let first = match deadline {
                None => self.rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
                Some(deadline) => self
                    .rx
                    .recv_timeout(deadline.saturating_duration_since(Instant::now())),
            };
            let disconnected = match first {
                Ok(op) => {
                    self.take(op, &mut group);
                    while group.close.is_none() && group.bytes < self.options.max_group_bytes {
                        match self.rx.try_recv() {
                            Ok(op) => self.take(op, &mut group),
                            Err(_) => break,
                        }
                    }
                    false
                }
                Err(RecvTimeoutError::Timeout) => {
                    group.force = true;
                    false
                }
                Err(RecvTimeoutError::Disconnected) => true,
            };
            let maintenance_due = match &self.broken {
                // Retried in the background even with nothing pending, so the state clears without traffic.
                Some((_, retry_at, _)) => Instant::now() >= *retry_at,
                None => {
                    self.pending.schedules.len() + self.pending.removes.len()
                        >= self.options.maintenance_max_ops
                        || self
                            .pending_since
                            .is_some_and(|t| t.elapsed() >= self.options.maintenance_interval)
                }
            };
            let result =
                if group.force || !group.inserts.is_empty() || maintenance_due || disconnected {
                    self.commit(&mut group)
                } else {
                    Ok(())
                };
            if let Some(reply) = group.close.take() {
                let _ = reply.send(result);
                return;
            }
            if disconnected {
                return;
            }
        }
    }

    fn take(&mut self, op: Op, group: &mut Group) {
        match op {
            Op::Append {
                mut records,
                bytes,
                reply,
            } => {
                group.appended += records.len() as u64;
                group.bytes += bytes;
                group.inserts.append(&mut records);
                group.replies.push(reply);
            }
            Op::Reschedule(key, schedule) => {
                self.scheduled.insert(key);
                self.pending.schedules.push((key, schedule.encode(key)));
                self.pending_since.get_or_insert_with(Instant::now);
            }
            Op::Remove(keys) => {
                for key in keys {
                    if self.scheduled.remove(&key) {
                        self.pending.unschedules.push(key);
                    }
                    self.pending.removes.push(key);
                }
                self.counters
                    .pending_removals
                    .store(self.pending.removes.len() as u64, Ordering::Relaxed);
                self.pending_since.get_or_insert_with(Instant::now);
            }
            Op::Purge(keys) => {
                self.purged += keys.len();
                for key in keys {
                    self.scheduled.remove(&key);
                    self.pending.unschedules.push(key);
                    self.pending.removes.push(key);
                }
                self.pending_since.get_or_insert_with(Instant::now);
            }
            Op::Scheduled(keys) => self.scheduled.extend(keys),
            Op::Flush(reply) => {
                group.force = true;
                group.replies.push(reply);
            }
            Op::Close(reply) => {
                group.force = true;
                group.close = Some(reply);
            }
        }
    }

    /// Commits the group's appends with every pending reschedule and removal, then answers the group. While the
    /// store refuses writes, first tries to make it writable again (at most every `retry_interval`, and at close),
    /// and refuses the group without touching the disk when that fails or is not due.
    fn commit(&mut self, group: &mut Group) -> Result<(), SpoolError> {
        if let Some((error, retry_at, request_retry)) = &self.broken {
            let due = Instant::now() >= *retry_at
                || group.close.is_some()
                || (*request_retry && !group.replies.is_empty());
            let refusal = if !due {
                Some(error.clone())
            } else {
                match self.engine.reopen() {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::debug!(error = %e, "spool: still not writable");
                        Some(e)
                    }
                }
            };
            if let Some(e) = refusal {
                let retry_at = if due {
                    Instant::now() + self.options.retry_interval
                } else {
                    *retry_at
                };
                self.mark_broken(e.clone(), retry_at, false);
                return self.answer(group, Err(e));
            }
            // Writable again: the removals that waited are in this commit, with the deletion of refused appends.
            self.purged += self.refused.len();
            self.pending.removes.append(&mut self.refused);
        }
        let mut batch = std::mem::take(&mut self.pending);
        batch.inserts = std::mem::take(&mut group.inserts);
        // Appends are acknowledged only once durable, and a flush or close promises durability; reschedules and
        // removals alone are only written to the operating system (they survive a crash of herald; a crash of the
        // machine before the next fsync can only bring back a delivered notification or an older schedule).
        batch.sync =
            !batch.inserts.is_empty() || !group.replies.is_empty() || group.close.is_some();
        let result = if !batch.is_empty() {
            self.engine.commit(&batch)
        } else if batch.sync && self.unsynced {
            self.engine.sync()
        } else {
            Ok(())
        };
        match &result {
            Ok(()) => {
                if !batch.is_empty() {
                    self.counters.commits.fetch_add(1, Ordering::Relaxed);
                }
                if batch.sync {
                    self.unsynced = false;
                } else if !batch.is_empty() {
                    self.unsynced = true;
                }
                self.counters
                    .appended
                    .fetch_add(group.appended, Ordering::Relaxed);
                let removed = batch.removes.len().saturating_sub(self.purged) as u64;
                self.purged = 0;
                let inserted = batch.inserts.len() as u64;
                // Recovery counts concurrently: an update, not a store.
                let _ =
                    self.counters
                        .records
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |r| {
                            Some(r.saturating_add(inserted).saturating_sub(removed))
                        });
                batch.clear();
                self.pending = batch;
                self.pending_since = None;
                if self.broken.take().is_some() {
                    tracing::info!("spool: the store takes writes again; intake resumes");
                    self.counters.unwritable.store(false, Ordering::Relaxed);
                    self.counters.disk_full.store(false, Ordering::Relaxed);
                    if let Ok(mut last) = self.counters.last_error.lock() {
                        *last = None;
                    }
                }
            }
            Err(e) => {
                self.counters.failed_commits.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    error = %e,
                    records = batch.inserts.len(),
                    pending_removals = batch.removes.len(),
                    "spool commit failed; refusing new notifications until the store takes writes again"
                );
                // The appends are refused (and deleted once writable, in case part of them reached the disk);
                // reschedules and removals are kept for the next commit. The next request tries again at once,
                // the background after `retry_interval`.
                self.refused.extend(batch.inserts.drain(..).map(|(k, _)| k));
                trim_front(&mut batch.schedules, self.options.maintenance_cap);
                self.pending = batch;
                self.pending_since = Some(Instant::now());
                self.mark_broken(
                    e.clone(),
                    Instant::now() + self.options.retry_interval,
                    self.broken.is_none(),
                );
            }
        }
        self.counters
            .pending_removals
            .store(self.pending.removes.len() as u64, Ordering::Relaxed);
        self.answer(group, result)
    }

    fn mark_broken(&mut self, error: SpoolError, retry_at: Instant, request_retry: bool) {
        if self.broken.is_none() {
            tracing::error!(
                "spool: the store refuses writes ({error}); new notifications are refused until it takes writes \
                 again, held ones are still delivered"
            );
        }
        self.counters.unwritable.store(true, Ordering::Relaxed);
        // A failed reopen may report its own error (the probe); a full disk is reported as long as it lasts.
        self.counters
            .disk_full
            .store(error.is_disk_full(), Ordering::Relaxed);
        self.counters
            .pending_removals
            .store(self.pending.removes.len() as u64, Ordering::Relaxed);
        if let Ok(mut last) = self.counters.last_error.lock() {
            *last = Some(error.clone());
        }
        self.broken = Some((error, retry_at, request_retry));
    }

    /// Answers every request of the group with `result` and resets it.
    fn answer(
        &mut self,
        group: &mut Group,
        result: Result<(), SpoolError>,
    ) -> Result<(), SpoolError> {
        for reply in group.replies.drain(..) {
            let _ = reply.send(result.clone());
        }
        group.inserts.clear();
        group.appended = 0;
        group.bytes = 0;
        group.force = false;
        result
    }
}

fn trim_front<T>(v: &mut Vec<T>, cap: usize) {
    if v.len() > cap {
        let excess = v.len() - cap;
        tracing::warn!(
            dropped = excess,
            "spool: dropping pending maintenance after failed commits"
        );
        v.drain(..excess);
    }
}
