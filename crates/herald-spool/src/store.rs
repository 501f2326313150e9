//! [`DiskSpool`]: the durable spool over an [`Engine`], with a writer thread that does group commit.
//!
//! Callers encode their records and queue them to the writer thread. The writer takes whatever is queued, writes it
//! in one transaction with one fsync, and then answers every append in it. While it commits, new appends queue up
//! and form the next group, so the number of fsyncs follows the disk's speed, not the number of callers.
//! Reschedules and removals are collected and committed with the next group of appends, or after
//! [`SpoolOptions::maintenance_interval`], whichever comes first; a commit of those alone is written to the
//! operating system without an fsync (it survives a crash of the process; the next fsync covers it).
//!
//! When a commit fails (a full disk, an I/O error), part of its appends may still have reached the store's journal,
//! although their senders are told to try again. Their keys are deleted with the first commit that succeeds again,
//! and until then listed in a file of the spool directory ([`REFUSED_FILE`], its room reserved at open so that it
//! can be rewritten on a full disk): a herald restarted before the store takes writes again does not deliver them
//! either, and deletes them. A spool stopped while its store refuses writes lists there the removals still waiting
//! too (as many as there is room for), so that the notifications delivered meanwhile are not sent again either.
//!
//! The writer stamps each operation it makes on the disk (a commit's write and fsync, an fsync, a reopen, a
//! measurement of the store, a rewrite of [`REFUSED_FILE`]) with the time it started ([`DiskWatch`]). One that has
//! not returned after [`SpoolOptions::stall_after`] (a frozen file system, a disk or network volume that stopped
//! answering) makes the spool report itself stalled without waiting on the disk: [`Spool::stats`] says unwritable,
//! [`Spool::write_error`] names the stuck operation and its age, and new appends are refused at once rather than
//! queued behind it. A watcher thread logs a warning when the stall starts and another when it ends.
//!
//! Recovery ([`Spool::recover_each`]) hands every readable record to its visitor, deletes the damaged ones (and the
//! schedules of records that are gone), and keeps, without delivering them, the records a newer herald wrote
//! ([`crate::DecodeError::is_newer_format`]), so that going back to an older herald loses nothing.

use std::collections::{HashMap, HashSet};
use std::io;
use std::ops::ControlFlow;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::engine::{CommitBatch, Engine, Table};
use crate::error::SpoolError;
use crate::fjall_engine::{FjallEngine, FjallOptions, REOPEN_FREE_BYTES, probe_free_space};
use crate::key::{KeyGenerator, SpoolKey};
use crate::record::{DecodeError, RECORD_VERSION, SCHEDULE_LEN, Schedule, StoredNotification};
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
    /// Pending reschedules kept while the store refuses writes. They are kept one per notification (the latest; a
    /// removal drops its notification's), so they never outnumber the notifications held; beyond this many, those
    /// rescheduled longest ago are dropped (with a warning), at each failed commit or refused retry. A dropped
    /// reschedule loses no notification: should herald restart before the store takes writes again, that
    /// notification comes back with the schedule stored before (an earlier next attempt, a lower retry count), so
    /// it may be tried sooner, and more often, than planned. Removals are never dropped: they wait in memory until
    /// the store takes writes again; a spool stopped before then lists them in [`REFUSED_FILE`] (as many as its room
    /// holds, after the keys of refused appends), so that the next start neither delivers those notifications again
    /// nor keeps them.
    pub maintenance_cap: usize,
    /// After a failed commit the writer refuses appends at once and tries to make the store writable again
    /// ([`Engine::reopen`]) at the next request, then at most this often while it keeps failing.
    pub retry_interval: Duration,
    /// Options of the fjall store ([`DiskSpool::open`]).
    pub store: FjallOptions,
    /// How long dropping the spool waits for its writer thread to commit what is pending and stop; a writer still
    /// inside a commit then (a disk that does not answer) is left behind, with an error in the log.
    pub stop_wait: Duration,
    /// How long one operation of the writer on the disk (a commit's write and fsync, also when it waits for the
    /// store's background work, an fsync, a reopen) may go without returning before the spool counts its disk as
    /// stalled ([`STALL_AFTER`] by default): appends are refused at once, and the stats say unwritable, until it
    /// returns.
    pub stall_after: Duration,
}

/// The default [`SpoolOptions::stall_after`]: far above what a healthy disk takes for a write and its fsync (a few
/// milliseconds; a busy one, a few hundred), well below the 20 to 30 seconds a sender or a load balancer waits for an
/// answer before it gives up on this node.
pub const STALL_AFTER: Duration = Duration::from_secs(5);

impl Default for SpoolOptions {
    fn default() -> Self {
        SpoolOptions {
            max_group_bytes: 32 << 20,
            maintenance_interval: Duration::from_millis(10),
            maintenance_max_ops: 50_000,
            maintenance_cap: 4_000_000,
            retry_interval: Duration::from_secs(1),
            store: FjallOptions::default(),
            stop_wait: Duration::from_secs(10),
            stall_after: STALL_AFTER,
        }
    }
}

type Reply = oneshot::Sender<Result<(), SpoolError>>;

/// Records handed from the reading thread to the decoding one at a time during recovery.
const RECOVERY_CHUNK: usize = 1024;

/// How often the writer thread measures the store's size ([`Engine::refresh_disk_bytes`]) for
/// [`Spool::stats`], which only reads what was measured last.
const DISK_BYTES_REFRESH: Duration = Duration::from_secs(1);

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
    /// Keys that recovery found with a schedule entry (readable or not), so that their removal deletes it.
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
    /// Reschedules waiting for a commit (one per notification).
    pending_reschedules: AtomicU64,
    /// The error of the failed commit, while unwritable.
    last_error: Mutex<Option<SpoolError>>,
}

/// An operation of the writer thread on the disk, as [`DiskWatch`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum DiskWork {
    Commit = 0,
    Sync = 1,
    Reopen = 2,
    Measure = 3,
    ListRefused = 4,
}

impl DiskWork {
    fn from_u8(n: u8) -> DiskWork {
        match n {
            1 => DiskWork::Sync,
            2 => DiskWork::Reopen,
            3 => DiskWork::Measure,
            4 => DiskWork::ListRefused,
            _ => DiskWork::Commit,
        }
    }

    /// What is stuck, for the stall's error and log lines.
    fn stuck(self) -> &'static str {
        match self {
            DiskWork::Commit => "a commit is stuck in write/fsync",
            DiskWork::Sync => "an fsync is stuck",
            DiskWork::Reopen => "reopening the store is stuck",
            DiskWork::Measure => "measuring the store is stuck",
            DiskWork::ListRefused => "rewriting the list of refused keys is stuck",
        }
    }
}

/// The context of the error [`Spool::write_error`] gives while the disk is stalled.
const STALL_CONTEXT: &str = "waiting for its disk";

/// The writer thread's operation on the disk under way, if any, and since when: read by other threads, without
/// waiting on the disk, to tell a write that does not return ([`SpoolOptions::stall_after`]).
#[derive(Debug)]
struct DiskWatch {
    epoch: Instant,
    /// When the operation under way started, in milliseconds since `epoch` plus one; 0 while there is none.
    started: AtomicU64,
    /// Which operation that is ([`DiskWork`]).
    work: AtomicU8,
    stall_after: Duration,
}

/// An operation on the disk that has not returned for at least [`SpoolOptions::stall_after`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stall {
    work: DiskWork,
    /// [`DiskWatch::started`] of the operation, which tells it from the next one.
    stamp: u64,
    age: Duration,
}

impl Stall {
    fn error(&self) -> SpoolError {
        SpoolError::Storage {
            context: STALL_CONTEXT,
            detail: format!(
                "the spool's disk has not completed a write for {} s ({})",
                self.age.as_secs(),
                self.work.stuck()
            ),
            temporary: true,
        }
    }
}

impl DiskWatch {
    fn new(stall_after: Duration) -> DiskWatch {
        DiskWatch {
            epoch: Instant::now(),
            started: AtomicU64::new(0),
            work: AtomicU8::new(DiskWork::Commit as u8),
            stall_after,
        }
    }

    /// Runs `f`, an operation of the writer thread on the disk, stamped as under way.
    fn during<T>(&self, work: DiskWork, f: impl FnOnce() -> T) -> T {
        self.work.store(work as u8, Ordering::Relaxed);
        let stamp = self.epoch.elapsed().as_millis() as u64 + 1;
        self.started.store(stamp, Ordering::Release);
        let out = f();
        self.started.store(0, Ordering::Release);
        out
    }

    /// The operation under way, stamped and with its age, if there is one.
    fn current(&self) -> Option<Stall> {
        let stamp = self.started.load(Ordering::Acquire);
        if stamp == 0 {
            return None;
        }
        let since = Duration::from_millis(stamp - 1);
        Some(Stall {
            work: DiskWork::from_u8(self.work.load(Ordering::Relaxed)),
            stamp,
            age: self.epoch.elapsed().saturating_sub(since),
        })
    }

    /// The operation under way, when it has gone without returning for [`SpoolOptions::stall_after`] or longer.
    fn stalled(&self) -> Option<Stall> {
        self.current().filter(|s| s.age >= self.stall_after)
    }

    /// How often [`watch_stalls`] looks.
    fn tick(&self) -> Duration {
        (self.stall_after / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// The watcher thread: logs a warning when an operation of the writer on the disk has gone without returning for
/// [`SpoolOptions::stall_after`], and another when it returns. Returns when the spool is dropped (`stop` closes).
fn watch_stalls(watch: Arc<DiskWatch>, stop: Receiver<()>) {
    let mut reported: Option<Stall> = None;
    loop {
        match stop.recv_timeout(watch.tick()) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        if let Some(stall) = reported {
            if watch.current().is_some_and(|now| now.stamp == stall.stamp) {
                continue;
            }
            tracing::warn!(
                "spool: the disk answers again: the stuck operation ({}) returned after about {} s; intake \
                 resumes unless the write failed",
                stall.work.stuck(),
                watch
                    .epoch
                    .elapsed()
                    .saturating_sub(Duration::from_millis(stall.stamp - 1))
                    .as_secs()
            );
            reported = None;
        }
        if let Some(stall) = watch.stalled() {
            tracing::warn!(
                "spool: not ready for intake: the spool's disk has not completed a write for {} s ({}); new \
                 notifications are refused until it does, held ones are still delivered",
                stall.age.as_secs(),
                stall.work.stuck()
            );
            reported = Some(stall);
        }
    }
}

/// The durable spool: an [`Engine`] (fjall by default) behind a group-committing writer thread.
pub struct DiskSpool<E: Engine = FjallEngine> {
    engine: Arc<E>,
    ops: Sender<Op>,
    counters: Arc<Counters>,
    /// The writer's operation on the disk under way, to tell one that does not return.
    watch: Arc<DiskWatch>,
    /// Dropped with the spool: stops the thread that logs stalls ([`watch_stalls`]).
    _watch_stop: Sender<()>,
    keys: KeyGenerator,
    /// The greatest key stored at open (records or schedules) or listed in [`REFUSED_FILE`]: what recovery reads up
    /// to, and what every key issued afterwards must be above. A listed key may be gone from the store already, but
    /// it is deleted with the first commit: a new record under it would be deleted with it.
    recovery_bound: Option<SpoolKey>,
    /// The writer thread, and the channel it closes when it returns.
    writer: Mutex<Option<(JoinHandle<()>, Receiver<()>)>>,
    stop_wait: Duration,
    /// The lock on the spool directory, held for the spool's life (released by the kernel if the process dies).
    lock: Option<std::fs::File>,
    /// Keys of appends refused before the last stop ([`REFUSED_FILE`]): recovery does not deliver them.
    refused_at_open: HashSet<SpoolKey>,
    /// The last key an earlier recovery counted in `records`: a recovery run again (after a failed read) visits
    /// those records again and must not count them twice.
    counted_through: Mutex<Option<SpoolKey>>,
}

impl DiskSpool<FjallEngine> {
    /// Opens the spool in directory `dir`, creating it if missing. Fails with a clear error when the directory
    /// cannot be created or written.
    pub fn open(dir: impl AsRef<Path>, options: SpoolOptions) -> Result<Self, SpoolError> {
        let dir = dir.as_ref();
        prepare_dir(dir)?;
        let lock = lock_dir(dir)?;
        let refusals = RefusalLog::open(dir);
        let engine = FjallEngine::open(dir, options.store)?;
        // On a full disk the spool opens refusing appends, so that what it holds can still be delivered.
        let full = probe_free_space(dir, REOPEN_FREE_BYTES)
            .err()
            .filter(SpoolError::is_disk_full);
        let mut spool = DiskSpool::start(engine, options, full, refusals)?;
        spool.lock = Some(lock);
        Ok(spool)
    }
}

/// Creates `dir` if needed (for herald's user only: [`crate::state_dir`]), warns when an existing one lets group or
/// others in, and checks that files can be created in it. A full disk is not an error here: the spool opens
/// refusing appends until there is room.
pub fn prepare_dir(dir: &Path) -> Result<(), SpoolError> {
    crate::state_dir::create_dir(dir).map_err(|e| SpoolError::Open {
        path: dir.to_path_buf(),
        source: Arc::new(e),
    })?;
    crate::state_dir::warn_if_shared(dir);
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
    let file = crate::state_dir::file_options()
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
    /// A spool over an opened engine; starts the writer thread. The keys of appends a failed commit refused are
    /// only kept in memory (see [`DiskSpool::with_engine_in`]).
    pub fn with_engine(engine: E, options: SpoolOptions) -> Result<Self, SpoolError> {
        DiskSpool::start(engine, options, None, (None, Vec::new()))
    }

    /// A spool over an opened engine whose files are in `dir`: like [`DiskSpool::open`], it locks `dir` and lists
    /// the keys of refused appends in `dir/`[`REFUSED_FILE`] until they are deleted.
    pub fn with_engine_in(
        engine: E,
        dir: impl AsRef<Path>,
        options: SpoolOptions,
    ) -> Result<Self, SpoolError> {
        let dir = dir.as_ref();
        prepare_dir(dir)?;
        let lock = lock_dir(dir)?;
        let mut spool = DiskSpool::start(engine, options, None, RefusalLog::open(dir))?;
        spool.lock = Some(lock);
        Ok(spool)
    }

    /// Starts the writer thread; with `unwritable`, refusing appends until the store takes writes again. `refused`
    /// lists the keys of appends refused before the last stop: they are deleted with the first commit.
    fn start(
        engine: E,
        options: SpoolOptions,
        unwritable: Option<SpoolError>,
        (refusals, refused): (Option<RefusalLog>, Vec<SpoolKey>),
    ) -> Result<Self, SpoolError> {
        let engine = Arc::new(engine);
        // Above the refused keys too: they may be gone from the store but are still listed, to be deleted.
        let recovery_bound = engine
            .last_key(Table::Records)?
            .max(engine.last_key(Table::Schedules)?)
            .max(refused.iter().max().copied());
        let keys = KeyGenerator::new(recovery_bound);
        let counters = Arc::new(Counters::default());
        let watch = Arc::new(DiskWatch::new(options.stall_after));
        let (tx, rx) = mpsc::channel();
        let (stopped, writer_stopped) = mpsc::channel();
        let writer = Writer {
            engine: Arc::clone(&engine),
            counters: Arc::clone(&counters),
            watch: Arc::clone(&watch),
            options,
            rx,
            pending: CommitBatch::default(),
            schedules: HashMap::new(),
            rescheduled: 0,
            refresh_at: Instant::now(),
            pending_since: None,
            unsynced: false,
            purged: 0,
            scheduled: HashSet::new(),
            broken: None,
            refused: Vec::new(),
            unpurged: Vec::new(),
            refusals,
            _stopped: stopped,
        };
        let mut writer = writer;
        let refused_at_open: HashSet<SpoolKey> = refused.iter().copied().collect();
        if !refused.is_empty() {
            tracing::info!(
                count = refused.len(),
                "spool: deleting the notifications listed as refused (a failed write may have stored part of them) \
                 or delivered while the store refused writes before the last stop; they are not delivered"
            );
            writer.purged += refused.len();
            writer.pending.removes.extend(&refused);
            writer.unpurged = refused;
            writer.pending_since = Some(Instant::now());
        }
        if let Some(e) = unwritable {
            writer.mark_broken(e, Instant::now() + options.retry_interval, false);
        }
        let handle = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| SpoolError::from_io("starting the spool writer thread", e))?;
        let (watch_stop, watch_stopped) = mpsc::channel();
        let watcher = Arc::clone(&watch);
        std::thread::Builder::new()
            .name("spool-stall-watch".into())
            .spawn(move || watch_stalls(watcher, watch_stopped))
            .map_err(|e| SpoolError::from_io("starting the spool's stall watcher thread", e))?;
        Ok(DiskSpool {
            engine,
            ops: tx,
            counters,
            watch,
            _watch_stop: watch_stop,
            keys,
            recovery_bound,
            writer: Mutex::new(Some((handle, writer_stopped))),
            stop_wait: options.stop_wait,
            lock: None,
            refused_at_open,
            counted_through: Mutex::new(None),
        })
    }

    /// The engine (for its name and size; tests write to it directly).
    pub fn engine(&self) -> &E {
        &self.engine
    }

    /// How long the writer's operation on the disk under way has gone without returning, once that is
    /// [`SpoolOptions::stall_after`] or longer (`None` otherwise). Never waits on the disk.
    pub fn disk_stalled_for(&self) -> Option<Duration> {
        self.watch.stalled().map(|s| s.age)
    }

    /// Reschedules waiting for a commit: one per notification (the latest), at most
    /// [`SpoolOptions::maintenance_cap`] after a commit failed or was refused.
    pub fn pending_reschedules(&self) -> u64 {
        self.counters.pending_reschedules.load(Ordering::Relaxed)
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
        // Refused at once while the disk does not answer, rather than queued behind the stuck operation: the
        // sender tries again (another node) instead of waiting until it gives up.
        if let Some(stall) = self.watch.stalled() {
            let refused = stall.error();
            return Box::pin(async move { Err(refused) });
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
        // Keys whose schedule cannot be read: the record's own state applies, and the entry goes with the record
        // (or, without one, as an orphan).
        let mut unreadable_schedules: HashSet<SpoolKey> = HashSet::new();
        self.engine
            .scan(Table::Schedules, bound, &mut |key, value| {
                match Schedule::decode(key, value) {
                    Ok(s) => {
                        schedules.insert(key, s);
                    }
                    Err(e) => {
                        tracing::warn!(%key, error = %e, "spool: skipping a corrupt schedule; the record's own applies");
                        unreadable_schedules.insert(key);
                    }
                }
                ControlFlow::Continue(())
            })?;
        // The store is read on a helper thread while this one decodes: the two halves take similar time.
        let mut corrupt = Vec::new();
        let mut stopped = false;
        let mut refused = 0u64;
        let mut newest_version = None;
        let counted_before = *self
            .counted_through
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut counted_through = counted_before;
        let engine = &*self.engine;
        let read = std::thread::scope(|scope| -> Result<(), SpoolError> {
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
                    if self.refused_at_open.contains(&key) {
                        // Refused, or delivered, before the last stop, and being deleted: never delivered. A schedule
                        // it has goes with it.
                        refused += 1;
                        if schedules.remove(&key).is_some() | unreadable_schedules.remove(&key) {
                            corrupt.push(key);
                        }
                        continue;
                    }
                    match StoredNotification::decode(key, &value) {
                        Ok(mut n) => {
                            let scheduled = match schedules.remove(&key) {
                                Some(s) => {
                                    n.retries = s.retries;
                                    n.next_attempt_ms = s.next_attempt_ms;
                                    true
                                }
                                None => unreadable_schedules.remove(&key),
                            };
                            if scheduled {
                                // Before the visit: a removal the visit leads to must also delete the schedule.
                                let _ = self.ops.send(Op::Scheduled(vec![key]));
                            }
                            report.recovered += 1;
                            if counted_before.is_none_or(|c| key > c) {
                                self.counters.records.fetch_add(1, Ordering::Relaxed);
                                counted_through = Some(key);
                            }
                            if visit(n).is_break() {
                                stopped = true;
                                break 'chunks;
                            }
                        }
                        Err(e) if e.is_newer_format() => {
                            // Intact, but this build cannot read it: kept for the herald that wrote it, with its
                            // schedule. Counted as stored; one warning at the end, not one per record.
                            tracing::debug!(%key, error = %e, "spool: keeping a record of a newer format");
                            if let DecodeError::UnknownVersion(v) = e {
                                newest_version = newest_version.max(Some(v));
                            }
                            report.newer_format += 1;
                            if counted_before.is_none_or(|c| key > c) {
                                self.counters.records.fetch_add(1, Ordering::Relaxed);
                                counted_through = Some(key);
                            }
                            schedules.remove(&key);
                            unreadable_schedules.remove(&key);
                        }
                        Err(e) => {
                            tracing::warn!(%key, error = %e, "spool: skipping a corrupt or torn record");
                            report.skipped += 1;
                            // Its schedule goes with it (a purge deletes both).
                            schedules.remove(&key);
                            unreadable_schedules.remove(&key);
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
        });
        // Also after a failed read: what it counted stays counted.
        *self
            .counted_through
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = counted_through;
        read?;
        if report.newer_format > 0 {
            let format = match newest_version {
                Some(v) => {
                    format!("record format version {v}; this build reads version {RECORD_VERSION}")
                }
                None => format!(
                    "record format version {RECORD_VERSION} with fields this build does not know"
                ),
            };
            tracing::error!(
                count = report.newer_format,
                "spool: {} notifications were written by a newer herald ({format}); they are kept in the spool, \
                 neither delivered nor deleted: run that herald version or a later one on this spool to deliver them",
                report.newer_format
            );
        }
        if refused > 0 {
            tracing::info!(
                count = refused,
                "spool: skipped notifications refused or delivered before the last stop"
            );
        }
        // Delete what cannot be used, so the warnings are not repeated at every start: corrupt records with their
        // schedules, and schedules without a record (readable or not). A recovery stopped early has not seen every
        // record, so its leftover schedules are not orphans.
        if !stopped {
            report.orphan_schedules = (schedules.len() + unreadable_schedules.len()) as u64;
            corrupt.extend(schedules.into_keys());
            corrupt.extend(unreadable_schedules);
        }
        if !corrupt.is_empty() {
            let _ = self.ops.send(Op::Purge(corrupt));
        }
        Ok(report)
    }

    /// Also unwritable while an operation on the disk has not returned for [`SpoolOptions::stall_after`].
    fn stats(&self) -> SpoolStats {
        let c = &self.counters;
        let stalled = self.watch.stalled().is_some();
        SpoolStats {
            records: c.records.load(Ordering::Relaxed),
            bytes_on_disk: self.engine.disk_bytes(),
            commits: c.commits.load(Ordering::Relaxed),
            failed_commits: c.failed_commits.load(Ordering::Relaxed),
            append_calls: c.append_calls.load(Ordering::Relaxed),
            appended: c.appended.load(Ordering::Relaxed),
            rescheduled: c.rescheduled.load(Ordering::Relaxed),
            removed: c.removed.load(Ordering::Relaxed),
            unwritable: stalled || c.unwritable.load(Ordering::Relaxed),
            disk_full: c.disk_full.load(Ordering::Relaxed),
            pending_removals: c.pending_removals.load(Ordering::Relaxed),
        }
    }

    /// While the disk is stalled: the stuck operation and how long it has gone without returning.
    fn write_error(&self) -> Option<SpoolError> {
        if let Some(stall) = self.watch.stalled() {
            return Some(stall.error());
        }
        self.counters.last_error.lock().ok().and_then(|e| e.clone())
    }

    fn flush(&self) -> SpoolFuture<()> {
        self.request(Op::Flush)
    }

    /// The last commit is written without waiting for the store to catch up with its flushes or compactions
    /// ([`Engine::stop_waiting`]), and so is one waiting when the close comes: the close takes one write and one
    /// fsync, within what herald's stop waits for it. Should it fail, the removals still waiting are listed in
    /// [`REFUSED_FILE`] for the next start.
    fn close(&self) -> SpoolFuture<()> {
        self.engine.stop_waiting();
        self.request(Op::Close)
    }
}

impl<E: Engine> Drop for DiskSpool<E> {
    /// Closes the spool (see [`Spool::close`]) and waits for the writer thread, at most
    /// [`SpoolOptions::stop_wait`].
    fn drop(&mut self) {
        self.engine.stop_waiting();
        let (reply, _answer) = oneshot::channel();
        let _ = self.ops.send(Op::Close(reply));
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some((handle, stopped)) = writer else {
            return;
        };
        if let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(self.stop_wait) {
            let pending = self.counters.pending_removals.load(Ordering::Relaxed);
            tracing::error!(
                pending_removals = pending,
                "spool: the writer thread did not stop within {:?}: a commit does not return (the disk does not \
                 answer); leaving it. Notifications whose removal was not written ({pending} waiting) are sent \
                 again after the restart, appends not yet answered are sent again by their senders",
                self.stop_wait
            );
            return;
        }
        if handle.join().is_err() {
            tracing::error!("spool writer thread panicked");
        }
    }
}

/// The writer thread's state.
struct Writer<E: Engine> {
    engine: Arc<E>,
    counters: Arc<Counters>,
    /// Every operation on the disk is stamped here while under way.
    watch: Arc<DiskWatch>,
    options: SpoolOptions,
    rx: Receiver<Op>,
    /// Removals not yet committed (its `schedules` are empty but within [`Writer::commit`]).
    pending: CommitBatch,
    /// Reschedules not yet committed, one per key: the latest, with its number in `rescheduled` (the order they
    /// came in, for [`Writer::cap_schedules`]).
    schedules: HashMap<SpoolKey, (u64, [u8; SCHEDULE_LEN])>,
    /// Reschedules taken so far.
    rescheduled: u64,
    /// When to measure the store's size next ([`DISK_BYTES_REFRESH`]).
    refresh_at: Instant,
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
    /// Keys of appends refused by a failed commit, to be deleted by the next commit. Part of such a commit may still
    /// reach the disk (the store's journal is flushed when it is reopened): they are deleted with the first commit
    /// that succeeds again.
    refused: Vec<SpoolKey>,
    /// Refused keys whose deletion is not durable yet: what [`REFUSED_FILE`] lists, so that a restart before then
    /// deletes them too. The commit that deletes them is synced, and the file cleared after it.
    unpurged: Vec<SpoolKey>,
    /// The file listing `unpurged` (`None` for a spool without a directory, or when it cannot be opened).
    refusals: Option<RefusalLog>,
    /// Dropped when the writer returns: what [`DiskSpool`]'s drop waits for.
    _stopped: Sender<()>,
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
            // Measured here, not where the size is read (async threads): measuring may wait for the store.
            if Instant::now() >= self.refresh_at {
                self.watch
                    .during(DiskWork::Measure, || self.engine.refresh_disk_bytes());
                self.refresh_at = Instant::now() + DISK_BYTES_REFRESH;
            }
            // While the store refuses writes, pending maintenance waits for the next retry, not for its interval.
            let deadline = match (&self.broken, self.pending_since) {
                (Some((_, retry_at, _)), _) => Some(*retry_at),
                (None, Some(since)) => Some(since + self.options.maintenance_interval),
                (None, None) => None,
            };
            let wake = deadline.map_or(self.refresh_at, |d| d.min(self.refresh_at));
            let first = self
                .rx
                .recv_timeout(wake.saturating_duration_since(Instant::now()));
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
                    // Woken to measure the store's size only, before the deadline: nothing to commit yet.
                    group.force = deadline.is_some_and(|d| Instant::now() >= d);
                    false
                }
                Err(RecvTimeoutError::Disconnected) => true,
            };
            let maintenance_due = match &self.broken {
                // Retried in the background even with nothing pending, so the state clears without traffic.
                Some((_, retry_at, _)) => Instant::now() >= *retry_at,
                None => {
                    self.schedules.len() + self.pending.removes.len()
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
            let stopping = group.close.is_some() || disconnected;
            if stopping && result.is_err() {
                self.list_at_stop();
            }
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
                self.rescheduled += 1;
                // The latest replaces one still waiting: the store needs only the last.
                self.schedules
                    .insert(key, (self.rescheduled, schedule.encode(key)));
                self.counters
                    .pending_reschedules
                    .store(self.schedules.len() as u64, Ordering::Relaxed);
                self.pending_since.get_or_insert_with(Instant::now);
            }
            Op::Remove(keys) => {
                for key in keys {
                    if self.scheduled.remove(&key) {
                        self.pending.unschedules.push(key);
                    }
                    // Its schedule entry goes with it: a schedule still waiting need not be written.
                    self.schedules.remove(&key);
                    self.pending.removes.push(key);
                }
                self.counters
                    .pending_reschedules
                    .store(self.schedules.len() as u64, Ordering::Relaxed);
                self.counters
                    .pending_removals
                    .store(self.pending.removes.len() as u64, Ordering::Relaxed);
                self.pending_since.get_or_insert_with(Instant::now);
            }
            Op::Purge(keys) => {
                self.purged += keys.len();
                for key in keys {
                    self.scheduled.remove(&key);
                    self.schedules.remove(&key);
                    self.pending.unschedules.push(key);
                    self.pending.removes.push(key);
                }
                self.counters
                    .pending_reschedules
                    .store(self.schedules.len() as u64, Ordering::Relaxed);
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
                match self.watch.during(DiskWork::Reopen, || self.engine.reopen()) {
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
                self.cap_schedules();
                return self.answer(group, Err(e));
            }
            // Writable again: the removals that waited are in this commit, with the deletion of refused appends.
            self.purged += self.refused.len();
            self.pending.removes.append(&mut self.refused);
        }
        let mut batch = std::mem::take(&mut self.pending);
        batch.inserts = std::mem::take(&mut group.inserts);
        // Kept in `schedules` until the commit succeeds.
        batch.schedules = self.schedules.iter().map(|(k, (_, s))| (*k, *s)).collect();
        // Appends are acknowledged only once durable, and a flush or close promises durability; reschedules and
        // removals alone are only written to the operating system (they survive a crash of herald; a crash of the
        // machine before the next fsync can only bring back a delivered notification or an older schedule).
        // The deletion of refused appends is synced too, so that their listing can be cleared.
        batch.sync = !batch.inserts.is_empty()
            || !group.replies.is_empty()
            || group.close.is_some()
            || !self.unpurged.is_empty();
        let result = if !batch.is_empty() {
            self.watch
                .during(DiskWork::Commit, || self.engine.commit(&batch))
        } else if batch.sync && self.unsynced {
            self.watch.during(DiskWork::Sync, || self.engine.sync())
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
                if !self.unpurged.is_empty() {
                    // Every refused key is in this synced commit's deletions (they stay pending until one succeeds).
                    self.unpurged.clear();
                    if let Some(log) = &mut self.refusals
                        && let Err(e) = self.watch.during(DiskWork::ListRefused, || log.clear())
                    {
                        tracing::warn!(
                            "spool: cannot clear {}: {e}; the next start deletes again what is already deleted",
                            log.path.display()
                        );
                    }
                }
                batch.clear();
                self.pending = batch;
                self.schedules.clear();
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
                // the background after `retry_interval`. Their keys are listed before the senders are answered,
                // so that a restart before the store takes writes again does not deliver them either.
                if !batch.inserts.is_empty() {
                    let keys: Vec<SpoolKey> = batch.inserts.drain(..).map(|(k, _)| k).collect();
                    self.unpurged.extend_from_slice(&keys);
                    self.refused.extend(keys);
                    self.record_refusals();
                }
                batch.schedules.clear();
                self.pending = batch;
                self.cap_schedules();
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
        self.counters
            .pending_reschedules
            .store(self.schedules.len() as u64, Ordering::Relaxed);
        self.answer(group, result)
    }

    /// While the store refuses writes: keeps at most [`SpoolOptions::maintenance_cap`] pending reschedules, dropping
    /// those that came in first (see there for what that costs).
    fn cap_schedules(&mut self) {
        let cap = self.options.maintenance_cap;
        if self.schedules.len() > cap {
            let excess = self.schedules.len() - cap;
            if cap == 0 {
                self.schedules.clear();
            } else {
                let mut order: Vec<u64> = self.schedules.values().map(|(n, _)| *n).collect();
                // The number of the oldest one kept (numbers are distinct): `excess` came in before it.
                let (_, &mut first_kept, _) = order.select_nth_unstable(excess);
                self.schedules.retain(|_, (n, _)| *n >= first_kept);
            }
            tracing::warn!(
                dropped = excess,
                "spool: dropping the oldest pending reschedules while the store refuses writes (more than {cap}); \
                 after a restart before it takes writes again, those notifications are tried on their earlier \
                 schedule"
            );
        }
        self.counters
            .pending_reschedules
            .store(self.schedules.len() as u64, Ordering::Relaxed);
    }

    /// Writes `unpurged` to [`REFUSED_FILE`]; says what a restart would bring back when it cannot.
    fn record_refusals(&mut self) {
        if let Err(unlisted) = self.list_unpurged() {
            tracing::error!(
                refused = self.unpurged.len(),
                "spool: the keys of refused notifications cannot all be recorded ({unlisted}): if herald restarts \
                 before the spool takes writes again, those a failed write stored in part may be delivered although \
                 their senders were told to try again"
            );
        }
    }

    /// At a stop while the store refuses writes: lists the removals still waiting in [`REFUSED_FILE`] after the keys
    /// of refused appends, so that the next start neither delivers those notifications again nor keeps them (it
    /// deletes them with its first commit). Says how many cannot be listed.
    fn list_at_stop(&mut self) {
        if self.pending.removes.is_empty() {
            return;
        }
        if self.refusals.is_none() {
            tracing::error!(
                removals = self.pending.removes.len(),
                "spool: stopping while the store refuses writes, with removals of delivered notifications that \
                 cannot be listed ({REFUSED_FILE} is not open): they are sent again after the restart"
            );
            return;
        }
        let refused = self.unpurged.len();
        let mut listed: HashSet<SpoolKey> = self.unpurged.iter().copied().collect();
        for &key in &self.pending.removes {
            if listed.insert(key) {
                self.unpurged.push(key);
            }
        }
        let removals = self.unpurged.len() - refused;
        match self.list_unpurged() {
            Ok(()) => tracing::warn!(
                removals,
                "spool: stopping while the store refuses writes; the removals of delivered notifications are \
                 listed in {REFUSED_FILE}, to be made at the next start"
            ),
            Err(unlisted) => tracing::error!(
                removals,
                "spool: stopping while the store refuses writes, and the removals of delivered notifications \
                 cannot all be listed ({unlisted}): those not listed are sent again after the restart"
            ),
        }
    }

    /// Writes `unpurged` to [`REFUSED_FILE`]; why not all of it, when it cannot.
    fn list_unpurged(&mut self) -> Result<(), String> {
        let listed = match &mut self.refusals {
            Some(log) => self
                .watch
                .during(DiskWork::ListRefused, || log.write(&self.unpurged))
                .map_err(|e| format!("cannot write {}: {e}", log.path.display())),
            // A spool without a directory, or whose file could not be opened (said at open).
            None => return Ok(()),
        };
        match listed {
            Ok(n) if n == self.unpurged.len() => Ok(()),
            Ok(n) => Err(format!("{REFUSED_FILE} has room for {n} keys")),
            Err(why) => Err(why),
        }
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

/// The file in the spool directory that lists the keys of appends refused by a failed commit, until a commit that
/// succeeds again deletes them from the store (and, at a stop while the store refuses writes, the removals still
/// waiting).
///
/// It has two slots of [`REFUSED_SLOT_BYTES`], each a complete list with a generation number; a write goes to the
/// slot that does not hold the newest list, so that a write torn by a crash leaves the previous list to be read. A
/// file of the first format (one list at its start, magic `HRK1`, no generation) is read as generation 0.
pub const REFUSED_FILE: &str = "refused-keys";
/// The room of one slot of [`REFUSED_FILE`]: 65,534 keys.
pub const REFUSED_SLOT_BYTES: u64 = 1 << 20;
/// The room [`REFUSED_FILE`] is given at open, both slots (written with zeros, so that rewriting it needs no new
/// space on a full disk).
pub const REFUSED_FILE_BYTES: u64 = 2 * REFUSED_SLOT_BYTES;
const REFUSED_MAGIC: [u8; 4] = *b"HRK2";
/// Magic, generation (u64 LE), count (u32 LE), CRC-32 of the generation, the count and the keys (u32 LE); then the
/// keys, 16 big-endian bytes each.
const REFUSED_HEADER: usize = 20;
/// The first format: magic, count (u32 LE), CRC-32 of the count and the keys (u32 LE); then the keys.
const REFUSED_MAGIC_V1: [u8; 4] = *b"HRK1";
const REFUSED_HEADER_V1: usize = 12;

/// [`REFUSED_FILE`], open for rewriting its slots in place.
struct RefusalLog {
    file: std::fs::File,
    path: PathBuf,
    /// Bytes of the file reserved (at most [`REFUSED_FILE_BYTES`]).
    len: u64,
    /// The slot holding the newest list and its generation, if one holds a list.
    newest: Option<(usize, u64)>,
}

impl RefusalLog {
    /// Opens `dir/`[`REFUSED_FILE`], reads the keys it lists and reserves its room. Without it (it cannot be
    /// opened) refused keys are only kept in memory: said once here.
    fn open(dir: &Path) -> (Option<RefusalLog>, Vec<SpoolKey>) {
        let path = dir.join(REFUSED_FILE);
        let (newest, keys) = match std::fs::read(&path) {
            Ok(bytes) => {
                let read = read_refused(&bytes);
                if let Some(why) = read.ignored {
                    let lost = if read.newest.is_some() {
                        "an older list is read instead; notifications refused just before the last stop may be \
                         delivered"
                    } else {
                        "notifications refused before the last stop may be delivered"
                    };
                    tracing::warn!("spool: ignoring part of {}: {why}; {lost}", path.display());
                }
                (read.newest, read.keys)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, Vec::new()),
            Err(e) => {
                tracing::warn!(
                    "spool: cannot read {}: {e}; notifications refused before the last stop may be delivered",
                    path.display()
                );
                (None, Vec::new())
            }
        };
        let file = crate::state_dir::file_options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path);
        let file = match file {
            Ok(file) => file,
            Err(e) => {
                tracing::warn!(
                    "spool: cannot open {}: {e}; the keys of notifications refused by a failed write are kept in \
                     memory only",
                    path.display()
                );
                return (None, keys);
            }
        };
        let mut log = RefusalLog {
            file,
            path,
            len: 0,
            newest,
        };
        if let Err(e) = log.reserve() {
            // A full disk: what room there is serves; more is reserved at the next start.
            tracing::debug!("spool: cannot reserve room in {}: {e}", log.path.display());
        }
        (Some(log), keys)
    }

    /// Extends the file with zeros to [`REFUSED_FILE_BYTES`] (written, not a hole: rewriting it must not need space).
    fn reserve(&mut self) -> io::Result<()> {
        let mut len = self.file.metadata()?.len();
        let result = (|| {
            if len >= REFUSED_FILE_BYTES {
                // Reserved at an earlier start: nothing to write or sync.
                return Ok(());
            }
            let zeros = vec![0u8; 64 << 10];
            while len < REFUSED_FILE_BYTES {
                let n = (REFUSED_FILE_BYTES - len).min(zeros.len() as u64) as usize;
                self.file.write_all_at(&zeros[..n], len)?;
                len += n as u64;
            }
            self.file.sync_all()
        })();
        self.len = self
            .file
            .metadata()
            .map_or(0, |m| m.len())
            .min(REFUSED_FILE_BYTES);
        result
    }

    /// The slot the next list goes to: not the one holding the newest list.
    fn next_slot(&self) -> usize {
        match self.newest {
            Some((0, _)) => 1,
            _ => 0,
        }
    }

    /// Keys slot `slot` has room for.
    fn capacity(&self, slot: usize) -> usize {
        let start = slot as u64 * REFUSED_SLOT_BYTES;
        let room = self.len.saturating_sub(start).min(REFUSED_SLOT_BYTES) as usize;
        room.saturating_sub(REFUSED_HEADER) / 16
    }

    /// Lists `keys` (as many as there is room for: their number is returned), durably, in the slot that does not
    /// hold the newest list.
    fn write(&mut self, keys: &[SpoolKey]) -> io::Result<usize> {
        let mut slot = self.next_slot();
        let other = 1 - slot;
        if self.capacity(slot) < keys.len() && self.capacity(slot) < self.capacity(other) {
            // Only part of the file could be reserved (a full disk): the list is rewritten in place rather than
            // shortened.
            slot = other;
        }
        let n = keys.len().min(self.capacity(slot));
        let generation = self.newest.map_or(1, |(_, g)| g + 1);
        self.file.write_all_at(
            &encode_refused(generation, &keys[..n]),
            slot as u64 * REFUSED_SLOT_BYTES,
        )?;
        self.file.sync_data()?;
        self.newest = Some((slot, generation));
        Ok(n)
    }

    /// Lists no key, durably.
    fn clear(&mut self) -> io::Result<()> {
        self.write(&[]).map(|_| ())
    }
}

fn encode_refused(generation: u64, keys: &[SpoolKey]) -> Vec<u8> {
    let mut out = Vec::with_capacity(REFUSED_HEADER + 16 * keys.len());
    out.extend_from_slice(&REFUSED_MAGIC);
    out.extend_from_slice(&generation.to_le_bytes());
    out.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    for k in keys {
        out.extend_from_slice(&k.to_be_bytes());
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&out[4..16]);
    crc.update(&out[REFUSED_HEADER..]);
    out[16..REFUSED_HEADER].copy_from_slice(&crc.finalize().to_le_bytes());
    out
}

/// What a [`REFUSED_FILE`] lists: the keys of its newest intact slot, which slot that is and its generation, and why
/// a slot was ignored, if one was.
#[derive(Debug, PartialEq)]
struct RefusedList {
    keys: Vec<SpoolKey>,
    newest: Option<(usize, u64)>,
    ignored: Option<String>,
}

/// Reads both slots of a [`REFUSED_FILE`] (or the one list of a file of the first format) and keeps the newest
/// intact one. A slot that is empty or zeroed (never written) lists nothing and is no error.
fn read_refused(bytes: &[u8]) -> RefusedList {
    let mut list = RefusedList {
        keys: Vec::new(),
        newest: None,
        ignored: None,
    };
    for slot in 0..2 {
        let start = (slot as u64 * REFUSED_SLOT_BYTES) as usize;
        let end = start
            .saturating_add(REFUSED_SLOT_BYTES as usize)
            .min(bytes.len());
        let Some(bytes) = bytes.get(start..end) else {
            continue;
        };
        match parse_slot(bytes) {
            Ok(None) => {}
            Ok(Some((generation, keys))) => {
                if list.newest.is_none_or(|(_, g)| generation > g) {
                    list.keys = keys;
                    list.newest = Some((slot, generation));
                }
            }
            Err(why) => list.ignored = Some(format!("its slot {slot} {why}")),
        }
    }
    list
}

/// The generation and keys of one slot; `None` for a slot never written.
fn parse_slot(bytes: &[u8]) -> Result<Option<(u64, Vec<SpoolKey>)>, String> {
    if bytes.len() < REFUSED_HEADER_V1 || bytes[..REFUSED_HEADER_V1].iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let (generation, count, stored, header) = match <[u8; 4]>::try_from(&bytes[..4]) {
        Ok(REFUSED_MAGIC) if bytes.len() >= REFUSED_HEADER => (
            u64::from_le_bytes(array(&bytes[4..12])),
            u32::from_le_bytes(array(&bytes[12..16])),
            u32::from_le_bytes(array(&bytes[16..20])),
            REFUSED_HEADER,
        ),
        Ok(REFUSED_MAGIC_V1) => (
            0,
            u32::from_le_bytes(array(&bytes[4..8])),
            u32::from_le_bytes(array(&bytes[8..12])),
            REFUSED_HEADER_V1,
        ),
        _ => return Err("does not start with the expected magic bytes".into()),
    };
    let count = count as usize;
    let Some(body) = count
        .checked_mul(16)
        .and_then(|len| bytes.get(header..header + len))
    else {
        return Err(format!(
            "lists {count} keys but has room for {}",
            bytes.len().saturating_sub(header) / 16
        ));
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes[4..header - 4]);
    crc.update(body);
    if crc.finalize() != stored {
        return Err("has a checksum that does not match (a write was torn)".into());
    }
    let keys = body
        .chunks_exact(16)
        .map(|c| SpoolKey::from_be_bytes(array(c)))
        .collect();
    Ok(Some((generation, keys)))
}

/// The first N bytes of `bytes`, which has at least N (zeros for what it lacks).
fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0; N];
    let n = bytes.len().min(N);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fjall_engine::{LEVEL0_RUNS, Tuning};
    use crate::record::tests::sample;

    /// Far longer than any step here takes: only a close that waits for the store's compactions runs into it.
    const HANG: Duration = Duration::from_secs(60);

    /// The store is behind with its compactions (none come here, and a commit would wait an hour for them) when
    /// herald stops: the close does not wait for them, and the removals waiting are written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_close_while_the_store_is_behind_writes_the_removals_without_waiting_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let tuning = Tuning {
            stall_wait: Duration::from_secs(3600),
            compaction_workers: Some(0),
        };
        let engine = FjallEngine::open_tuned(dir.path(), FjallOptions::default(), tuning).unwrap();
        let spool = DiskSpool::with_engine_in(engine, dir.path(), SpoolOptions::default()).unwrap();
        let keys: Vec<SpoolKey> = (0..10).map(|_| spool.next_key()).collect();
        spool
            .append(keys.iter().map(|k| sample(k.0)).collect())
            .await
            .unwrap();
        spool.engine().pile_up_level0(Table::Schedules, LEVEL0_RUNS);
        // Delivered: their removals wait for a commit, which waits for compaction.
        spool.remove(&keys[..6]);
        tokio::time::timeout(HANG, spool.close())
            .await
            .expect("the close answers while the store is behind")
            .unwrap();
        drop(spool);

        let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
        let mut stored = Vec::new();
        engine
            .scan(Table::Records, SpoolKey(u128::MAX), &mut |key, _| {
                stored.push(key);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(stored, keys[6..]);
    }

    /// `stats` (which `/readyz`, `/metrics` and the dashboard read on async threads) answers at once while measuring
    /// the store would wait, as it does while a commit is stuck in its fsync holding fjall's journal lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stats_answer_while_measuring_the_store_would_wait() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FjallEngine::open(dir.path(), FjallOptions::default()).unwrap();
        let spool = Arc::new(DiskSpool::with_engine(engine, SpoolOptions::default()).unwrap());
        let keys: Vec<SpoolKey> = (0..10).map(|_| spool.next_key()).collect();
        spool
            .append(keys.iter().map(|k| sample(k.0)).collect())
            .await
            .unwrap();
        let bytes = spool.stats().bytes_on_disk;
        assert!(bytes > 0);
        let stats = spool.engine().with_measuring_blocked(|| {
            let (done, answer) = mpsc::channel();
            let reading = Arc::clone(&spool);
            std::thread::spawn(move || {
                let _ = done.send(reading.stats());
            });
            answer.recv_timeout(HANG)
        });
        let stats = stats.expect("the stats answer while measuring the store would wait");
        assert_eq!((stats.records, stats.bytes_on_disk), (10, bytes));
    }

    /// The size on disk follows what the store's background work writes (flushes, compactions) without a commit:
    /// the writer thread measures it about every second.
    #[test]
    fn the_size_on_disk_is_measured_without_traffic() {
        let dir = tempfile::tempdir().unwrap();
        let tuning = Tuning {
            stall_wait: Duration::from_millis(100),
            compaction_workers: Some(0),
        };
        let engine = FjallEngine::open_tuned(dir.path(), FjallOptions::default(), tuning).unwrap();
        let spool = DiskSpool::with_engine(engine, SpoolOptions::default()).unwrap();
        let before = spool.stats().bytes_on_disk;
        // Written and flushed beside the spool's writer.
        spool.engine().pile_up_level0(Table::Records, 4);
        let deadline = Instant::now() + HANG;
        while spool.stats().bytes_on_disk <= before {
            assert!(Instant::now() < deadline, "the size was not measured again");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn slot(generation: u64, keys: &[SpoolKey]) -> Vec<u8> {
        let mut bytes = encode_refused(generation, keys);
        bytes.resize(REFUSED_SLOT_BYTES as usize, 0);
        bytes
    }

    fn listed(bytes: &[u8]) -> Vec<SpoolKey> {
        read_refused(bytes).keys
    }

    #[test]
    fn the_refusal_file_round_trips_and_a_torn_slot_falls_back_to_the_other() {
        let keys = vec![SpoolKey(3), SpoolKey(u128::MAX), SpoolKey(1 << 70)];
        let encoded = encode_refused(1, &keys);
        assert_eq!(parse_slot(&encoded), Ok(Some((1, keys.clone()))));
        // Room reserved after it, or never written at all: read the same.
        assert_eq!(listed(&slot(1, &keys)), keys);
        assert_eq!(listed(&[]), Vec::<SpoolKey>::new());
        assert_eq!(read_refused(&[0; 4096]).newest, None);
        assert_eq!(listed(&slot(1, &[])), Vec::<SpoolKey>::new());
        // A torn or damaged slot is refused with the reason.
        assert!(parse_slot(&encoded[..encoded.len() - 1]).is_err());
        let mut flipped = encoded.clone();
        flipped[REFUSED_HEADER + 5] ^= 1;
        assert!(parse_slot(&flipped).unwrap_err().contains("checksum"));
        let mut magic = encoded;
        magic[0] = b'X';
        assert!(parse_slot(&magic).unwrap_err().contains("magic"));

        // Two slots: the newer generation wins, in either slot.
        let older = vec![SpoolKey(7)];
        let newer = vec![SpoolKey(7), SpoolKey(8)];
        let file = [slot(4, &older), slot(5, &newer)].concat();
        assert_eq!(
            read_refused(&file),
            RefusedList {
                keys: newer.clone(),
                newest: Some((1, 5)),
                ignored: None
            }
        );
        let file = [slot(6, &newer), slot(5, &older)].concat();
        assert_eq!(listed(&file), newer);
        // The newest slot torn by a crash while it was written: the previous list is read, and the reason said.
        let mut torn = [slot(4, &older), slot(5, &newer)].concat();
        torn[REFUSED_SLOT_BYTES as usize + REFUSED_HEADER + 3] ^= 0xff;
        let read = read_refused(&torn);
        assert_eq!((read.keys, read.newest), (older.clone(), Some((0, 4))));
        assert!(read.ignored.unwrap().contains("slot 1"));

        // Written in turn to one slot then the other: tearing the last write leaves the list before it.
        let dir = tempfile::tempdir().unwrap();
        let mut log = RefusalLog::open(dir.path()).0.unwrap();
        for keys in [&older, &newer, &older, &newer] {
            log.write(keys).unwrap();
        }
        let Some((last, _)) = log.newest else {
            panic!("a list was written");
        };
        let torn_at = last as u64 * REFUSED_SLOT_BYTES + REFUSED_HEADER as u64 + 20;
        log.file.write_all_at(&[0xee; 8], torn_at).unwrap();
        drop(log);
        assert_eq!(RefusalLog::open(dir.path()).1, older);
    }

    #[test]
    fn a_refusal_file_of_the_first_format_is_read_and_kept_until_replaced() {
        // One list at the start of a 1 MiB file: magic, count, CRC-32 of the count and the keys.
        let keys = vec![SpoolKey(11), SpoolKey(12)];
        let mut v1 = Vec::new();
        v1.extend_from_slice(b"HRK1");
        v1.extend_from_slice(&2u32.to_le_bytes());
        v1.extend_from_slice(&[0; 4]);
        for k in &keys {
            v1.extend_from_slice(&k.to_be_bytes());
        }
        let mut crc = crc32fast::Hasher::new();
        crc.update(&v1[4..8]);
        crc.update(&v1[12..]);
        v1[8..12].copy_from_slice(&crc.finalize().to_le_bytes());
        v1.resize(1 << 20, 0);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(REFUSED_FILE), &v1).unwrap();

        let (log, read) = RefusalLog::open(dir.path());
        assert_eq!(read, keys);
        let mut log = log.unwrap();
        // The next list goes to the second slot (reserved now): a write torn there leaves the first one.
        assert_eq!(log.write(&keys[..1]).unwrap(), 1);
        drop(log);
        let bytes = std::fs::read(dir.path().join(REFUSED_FILE)).unwrap();
        assert!(
            bytes[..v1.len()] == v1[..],
            "the first slot is left as it was"
        );
        assert_eq!(read_refused(&bytes).newest, Some((1, 1)));
        assert_eq!(RefusalLog::open(dir.path()).1, keys[..1]);
    }

    #[test]
    fn the_refusal_file_reserves_its_room_and_keeps_its_keys_until_cleared() {
        let dir = tempfile::tempdir().unwrap();
        let (log, keys) = RefusalLog::open(dir.path());
        let mut log = log.unwrap();
        assert!(keys.is_empty());
        assert_eq!(
            std::fs::metadata(dir.path().join(REFUSED_FILE))
                .unwrap()
                .len(),
            REFUSED_FILE_BYTES
        );
        assert_eq!((log.capacity(0), log.capacity(1)), (65_534, 65_534));
        let many: Vec<SpoolKey> = (0..70_000).map(SpoolKey).collect();
        assert_eq!(
            log.write(&many).unwrap(),
            65_534,
            "as many as there is room for"
        );
        assert_eq!(log.write(&many[..2]).unwrap(), 2);
        drop(log);
        let (log, keys) = RefusalLog::open(dir.path());
        assert_eq!(keys, many[..2]);
        log.unwrap().clear().unwrap();
        assert!(RefusalLog::open(dir.path()).1.is_empty());
    }
}
