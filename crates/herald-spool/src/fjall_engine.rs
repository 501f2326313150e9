//! The [`Engine`] on fjall (an LSM tree), the store herald uses: a keyspace directory `fjall/` with a `records` and
//! a `schedules` partition, keys as 16 big-endian bytes. Every commit is one atomic write batch; a synced one is
//! persisted with `PersistMode::SyncAll` (fsync) before it returns, the others with `PersistMode::Buffer` (written
//! to the operating system, which keeps them across a crash of the process).
//!
//! fjall's own write stalls are turned off: they sleep in a loop inside a commit that is already durable until a flush
//! frees memory or journal space, or until compaction has brought level 0 below 32 runs, and when that flush or
//! compaction fails (a full disk) fjall's worker stops for good, so that commit would never return and the spool
//! would never learn that the store refuses writes. Its write-buffer and journal limits are set out of reach, and so
//! is each partition's memtable size ([`UNBOUNDED_MEMTABLE`]): fjall looks at level 0 only in a commit in which it
//! sealed a memtable itself, which it then never does. That holds for partitions created by an earlier herald too,
//! whose stored size is raised when the store opens (`lift_memtable_limit`). `Store::admit` does their work before
//! each commit instead: it seals every memtable that reached [`MEMTABLE_BYTES`], and others where fjall's monitor
//! would have, and waits, for at most [`STALL_WAIT`], while flushes or compactions are behind, stopping at once with
//! an error when the store has turned to refusing writes, and not waiting at all once the spool is stopping
//! ([`Engine::stop_waiting`]).

use std::io::Write;
use std::ops::{Bound, ControlFlow};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use fjall::{AbstractTree, Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

use crate::engine::{CommitBatch, Engine, Table};
use crate::error::SpoolError;
use crate::key::SpoolKey;

/// The keyspace directory inside the spool directory.
pub const FJALL_DIR: &str = "fjall";

/// Options of the fjall store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FjallOptions {
    /// Block cache size in bytes.
    pub cache_bytes: u64,
}

impl Default for FjallOptions {
    fn default() -> Self {
        FjallOptions {
            cache_bytes: 32 << 20,
        }
    }
}

/// At most this many entries are read with the store locked during a scan ([`Engine::scan`])...
const SCAN_CHUNK: usize = 1024;
/// ...or about this many bytes of keys and values.
const SCAN_CHUNK_BYTES: usize = 4 << 20;
/// Entries read in one go: keys and values, as fjall hands them out (they outlive the read and the lock).
type Chunk = Vec<(fjall::Slice, fjall::Slice)>;
/// How long a scan waits for the store when a reopen could not open it again, before it fails.
const SCAN_REOPEN_WAIT: Duration = Duration::from_secs(30);

/// Free space [`FjallEngine::reopen`] wants to see before it reopens the store: enough for the journal to take
/// commits again, so that a reopen on a disk that is still nearly full does not fail at the next write.
pub const REOPEN_FREE_BYTES: u64 = 1 << 20;

/// A commit waits (`Store::admit`) while more than this many bytes of memtables wait to be flushed (fjall's
/// default write-buffer limit); above half of it in memtables still taking writes, the largest is sealed and flushed.
pub const WRITE_BUFFER_BYTES: u64 = 64 << 20;
/// A commit waits while the journal holds more than this many bytes (fjall's default journal limit); above half of it,
/// the memtable that keeps the oldest journal file alive is sealed and flushed, so that the file can be deleted.
pub const JOURNAL_BYTES: u64 = 512 << 20;
/// A commit waits while a partition has this many segment runs in its first level, waiting for compaction. fjall
/// slows each write by at most half a millisecond from 20 runs; its halt at 32 runs, which sleeps until compaction
/// catches up however long that takes, is never reached whatever the count ([`UNBOUNDED_MEMTABLE`]). This wait keeps
/// reads from going through ever more runs while compaction is merely behind.
pub const LEVEL0_RUNS: usize = 24;
/// The longest a commit waits for flushes or compactions to catch up; then it is written regardless (nothing in
/// fjall waits after it: see [`UNBOUNDED_MEMTABLE`]).
pub const STALL_WAIT: Duration = Duration::from_secs(30);
/// A partition's memtable is sealed and handed to the flush worker (`Store::relieve`, before the next commit) once it
/// holds this many bytes, as fjall does with its default memtable size: the memtables taking writes hold at most this
/// much and one commit each.
pub const MEMTABLE_BYTES: u64 = 16 << 20;
/// The memtable size the partitions are given in fjall: one it never reaches, so that fjall never seals a memtable
/// inside a commit. After doing so it waits, with no end and no look at a failed store, while level 0 has 32 runs or
/// more (`check_write_halt` in fjall 2): with compaction failed for want of room, that commit would never return.
/// `Store::relieve` seals them instead, at [`MEMTABLE_BYTES`].
pub const UNBOUNDED_MEMTABLE: u32 = u32::MAX;
/// The partitions of the keyspace.
const PARTITIONS: [&str; 2] = ["records", "schedules"];
/// Where fjall 2 keeps a partition's options (`fjall/partitions/<name>/config`): `FJL` and format 2, the number of
/// levels and the tree type (a byte each), then the memtable size (u32, big-endian), then the rest. fjall reads them
/// when it opens a partition it finds on disk, whatever options the partition is opened with.
const PARTITION_CONFIG_MAGIC: [u8; 4] = *b"FJL\x02";
const PARTITION_CONFIG_MEMTABLE_AT: usize = 6;
/// How often a waiting commit looks again.
const STALL_POLL: Duration = Duration::from_millis(10);

/// A spool store in a fjall keyspace.
///
/// The keyspace sits behind a lock so that [`Engine::reopen`] can replace it: after a failed write or fsync fjall
/// refuses every later write ("poisoned") until it is opened again. Reads hold the lock briefly: a scan takes it
/// for one chunk at a time, so that a recovery paced by its visitor (hours, for a large backlog while APNs is down)
/// never keeps a reopen waiting.
pub struct FjallEngine {
    dir: PathBuf,
    options: FjallOptions,
    tuning: Tuning,
    /// Set once the spool is stopping ([`Engine::stop_waiting`]): commits no longer wait for the store to catch up.
    stopping: AtomicBool,
    /// `None` after a reopen that closed the old keyspace but could not open the new one.
    store: RwLock<Option<Store>>,
    /// The size last measured ([`FjallEngine::measure`]): all [`Engine::disk_bytes`] reads. Measuring takes
    /// fjall's journal lock, which a commit holds through its write and fsync: only the writer thread measures.
    disk_bytes: AtomicU64,
}

/// How long a commit waits for the store, and what works in its background: [`STALL_WAIT`] and fjall's defaults,
/// which tests change.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    /// The longest a commit waits for flushes or compactions to catch up.
    pub(crate) stall_wait: Duration,
    /// fjall's compaction threads (`None`: its default, one per core). With none, level 0 only grows.
    pub(crate) compaction_workers: Option<usize>,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            stall_wait: STALL_WAIT,
            compaction_workers: None,
        }
    }
}

struct Store {
    keyspace: Keyspace,
    records: PartitionHandle,
    schedules: PartitionHandle,
    /// Per partition (records, schedules), the highest sequence number flushed when [`Store::relieve`] last sealed
    /// its memtable: it seals another only once that has moved (the flush is done), so that a slow flush does not
    /// make every commit seal one more small memtable.
    sealed_at: Mutex<[Option<Option<u64>>; 2]>,
}

impl Store {
    fn open(dir: &Path, options: FjallOptions, tuning: Tuning) -> Result<Store, SpoolError> {
        const CTX: &str = "opening the spool store";
        // Created here for herald's user only, before fjall would create it with the umask's mode: its files hold
        // device tokens and payloads.
        let fjall_dir = dir.join(FJALL_DIR);
        crate::state_dir::create_dir(&fjall_dir).map_err(|e| SpoolError::Open {
            path: fjall_dir,
            source: std::sync::Arc::new(e),
        })?;
        for name in PARTITIONS {
            lift_memtable_limit(&dir.join(FJALL_DIR), name)?;
        }
        let keyspace = keyspace_config(dir, options, tuning)
            .open()
            .map_err(|e| error(CTX, e))?;
        let [records, schedules] = PARTITIONS.map(|name| {
            keyspace
                .open_partition(name, partition_options())
                .map_err(|e| error(CTX, e))
        });
        let (records, schedules) = (records?, schedules?);
        Ok(Store {
            keyspace,
            records,
            schedules,
            sealed_at: Mutex::new([None; 2]),
        })
    }

    fn partition(&self, table: Table) -> &PartitionHandle {
        match table {
            Table::Records => &self.records,
            Table::Schedules => &self.schedules,
        }
    }

    /// Makes room before a commit, as fjall's write stalls would have after the previous one, but never for longer
    /// than `stall_wait` ([`STALL_WAIT`]): seals memtables when needed ([`Store::relieve`]), then waits while the
    /// store is behind ([`Store::behind`]), and not at all once `stopping` is set (the spool is stopping: its last
    /// commit must not wait longer than herald's stop waits for it). Fails at once when the store refuses writes: a
    /// flush or compaction that failed (a full disk) stops fjall's worker for good, and nothing would catch up.
    fn admit(&self, stall_wait: Duration, stopping: &AtomicBool) -> Result<(), fjall::Error> {
        self.relieve()?;
        let Some(mut why) = self.behind() else {
            return Ok(());
        };
        let deadline = Instant::now() + stall_wait;
        loop {
            // Refused with `Poisoned` once a write, flush or compaction failed; otherwise it only hands the
            // journal's buffer to the operating system.
            self.keyspace.persist(PersistMode::Buffer)?;
            if stopping.load(Ordering::Relaxed) {
                tracing::warn!(
                    "spool: writing although the store is behind ({why}): the spool is stopping"
                );
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::warn!(
                    "spool: writing although the store is still behind after {stall_wait:?} ({why})"
                );
                return Ok(());
            }
            std::thread::sleep(STALL_POLL);
            self.relieve()?;
            match self.behind() {
                Some(still) => why = still,
                None => return Ok(()),
            }
        }
    }

    /// What the store is behind with, if a commit should wait for it.
    fn behind(&self) -> Option<&'static str> {
        if self.keyspace.write_buffer_size() > WRITE_BUFFER_BYTES {
            return Some("memtables waiting to be flushed");
        }
        if self.keyspace.journal_disk_space() > JOURNAL_BYTES {
            return Some("journal files waiting for their memtables to be flushed");
        }
        if [&self.records, &self.schedules]
            .iter()
            .any(|p| p.tree.l0_run_count() >= LEVEL0_RUNS)
        {
            return Some("segments waiting to be compacted");
        }
        None
    }

    /// Seals memtables and hands them to the flush worker: every one that holds [`MEMTABLE_BYTES`] or more, whether
    /// or not earlier ones are flushed yet (fjall would have sealed it within the commit that filled it); then one
    /// where fjall's monitor would have: when the journal passed half of [`JOURNAL_BYTES`], that of the partition
    /// flushed least recently (it keeps the oldest journal file alive); when the memtables taking writes hold more
    /// than half of [`WRITE_BUFFER_BYTES`], the largest.
    fn relieve(&self) -> Result<(), fjall::Error> {
        let partitions = [&self.records, &self.schedules];
        let active = |i: usize| u64::from(partitions[i].tree.active_memtable_size());
        let mut sealed_at = self.sealed_at.lock().unwrap_or_else(|p| p.into_inner());
        for (i, partition) in partitions.iter().enumerate() {
            if active(i) >= MEMTABLE_BYTES {
                let flushed = partition.tree.get_highest_persisted_seqno();
                // An error leaves the store to be reopened (the spool does that once the commit failed): its
                // journal still holds everything the memtable did.
                if partition.rotate_memtable()? {
                    sealed_at[i] = Some(flushed);
                }
            }
        }
        let pick = if self.keyspace.journal_disk_space() > JOURNAL_BYTES / 2 {
            (0..2)
                .filter(|&i| active(i) > 0)
                .min_by_key(|&i| partitions[i].tree.get_highest_persisted_seqno())
        } else if active(0) + active(1) > WRITE_BUFFER_BYTES / 2 {
            (0..2).filter(|&i| active(i) > 0).max_by_key(|&i| active(i))
        } else {
            None
        };
        let Some(i) = pick else {
            return Ok(());
        };
        let flushed = partitions[i].tree.get_highest_persisted_seqno();
        if sealed_at[i] == Some(flushed) {
            // The memtable sealed last time is not flushed yet.
            return Ok(());
        }
        // An error leaves the store to be reopened (the spool does that once the commit failed): its journal
        // still holds everything the memtable did.
        if partitions[i].rotate_memtable()? {
            sealed_at[i] = Some(flushed);
        }
        Ok(())
    }
}

/// The keyspace's configuration: fjall's write-buffer and journal limits out of reach, so that its write stalls
/// never wait inside a commit ([`Store::admit`] waits before one instead, for a bounded time).
fn keyspace_config(dir: &Path, options: FjallOptions, tuning: Tuning) -> Config {
    let config = Config::new(dir.join(FJALL_DIR))
        .cache_size(options.cache_bytes)
        .max_write_buffer_size(u64::MAX)
        .max_journaling_size(u64::MAX);
    match tuning.compaction_workers {
        Some(n) => config.compaction_workers(n),
        None => config,
    }
}

/// The options of a partition created now: a memtable size fjall never reaches ([`UNBOUNDED_MEMTABLE`]).
fn partition_options() -> PartitionCreateOptions {
    PartitionCreateOptions::default().max_memtable_size(UNBOUNDED_MEMTABLE)
}

/// Raises the memtable size stored for partition `name` of the spool's keyspace in `fjall_dir` (see
/// [`raise_stored_memtable_size`]), saying so in the log.
fn lift_memtable_limit(fjall_dir: &Path, name: &str) -> Result<(), SpoolError> {
    let raised = raise_stored_memtable_size(
        fjall_dir,
        name,
        "raising the memtable size of the spool store",
    )?;
    if let Some(path) = raised {
        tracing::info!(
            "spool: raised the memtable size stored in {} (memtables are sealed by herald at {} MiB)",
            path.display(),
            MEMTABLE_BYTES >> 20
        );
    }
    Ok(())
}

/// Raises the memtable size stored for partition `name` of the keyspace in `keyspace_dir` to
/// [`UNBOUNDED_MEMTABLE`], before the keyspace is opened: fjall keeps the size a partition was created with (16 MiB
/// for one created by an earlier herald) and ignores the options it is opened with; having sealed a memtable itself,
/// it would wait inside that write, with no end, while compaction is far behind. Returns the file it rewrote;
/// `None` when the partition does not exist yet or has that size already. The spool's store and the outcome store
/// both use it.
///
/// The four bytes of the size are overwritten in place and synced: that takes no new room on a full disk, and a
/// write torn by a crash still leaves a file fjall reads (any four bytes are a size), raised again at the next open.
pub(crate) fn raise_stored_memtable_size(
    keyspace_dir: &Path,
    name: &str,
    context: &'static str,
) -> Result<Option<std::path::PathBuf>, SpoolError> {
    let path = keyspace_dir.join("partitions").join(name).join("config");
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(config_error(context, &path, "cannot read", e)),
    };
    let at = PARTITION_CONFIG_MEMTABLE_AT..PARTITION_CONFIG_MEMTABLE_AT + 4;
    let (Some(magic), Some(stored)) = (bytes.get(..4), bytes.get(at.clone())) else {
        return Err(SpoolError::Storage {
            context,
            detail: format!(
                "{} holds {} bytes, too few for fjall's partition options",
                path.display(),
                bytes.len()
            ),
            temporary: false,
        });
    };
    if magic != PARTITION_CONFIG_MAGIC {
        return Err(SpoolError::Storage {
            context,
            detail: format!(
                "{} does not start with the magic of fjall 2's partition options ({magic:02x?} instead of {:02x?})",
                path.display(),
                PARTITION_CONFIG_MAGIC
            ),
            temporary: false,
        });
    }
    let unbounded = UNBOUNDED_MEMTABLE.to_be_bytes();
    if stored == unbounded {
        return Ok(None);
    }
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|file| {
            file.write_all_at(&unbounded, at.start as u64)?;
            file.sync_all()
        });
    written.map_err(|e| config_error(context, &path, "cannot write", e))?;
    Ok(Some(path))
}

/// An I/O error on fjall's file `path`: a full disk as such, anything else with the file named.
fn config_error(context: &'static str, path: &Path, what: &str, e: std::io::Error) -> SpoolError {
    let detail = format!("{what} {}: {e}", path.display());
    match SpoolError::from_io(context, e) {
        full @ SpoolError::DiskFull { .. } => full,
        _ => SpoolError::Storage {
            context,
            detail,
            temporary: true,
        },
    }
}

/// Maps a fjall error. After a failed write or fsync fjall refuses every later write ("poisoned") until it is
/// reopened: [`Engine::reopen`] does that once there is room again.
pub(crate) fn error(context: &'static str, e: fjall::Error) -> SpoolError {
    match e {
        fjall::Error::Io(io) => SpoolError::from_io(context, io),
        fjall::Error::Storage(lsm_error) => match lsm_error {
            fjall::LsmError::Io(io) => SpoolError::from_io(context, io),
            other => SpoolError::Storage {
                context,
                detail: other.to_string(),
                temporary: true,
            },
        },
        fjall::Error::Poisoned => SpoolError::Storage {
            context,
            detail: "the store refuses writes since an earlier write or fsync failed (disk full or I/O error); \
                     it is reopened once the disk has room again"
                .into(),
            temporary: true,
        },
        e @ (fjall::Error::InvalidVersion(_)
        | fjall::Error::Decode(_)
        | fjall::Error::JournalRecovery(_)) => SpoolError::Storage {
            context,
            detail: e.to_string(),
            temporary: false,
        },
        e => SpoolError::Storage {
            context,
            detail: e.to_string(),
            temporary: true,
        },
    }
}

impl FjallEngine {
    /// Opens (or creates) the keyspace in `dir/fjall`, recovering its journal after a crash.
    pub fn open(dir: &Path, options: FjallOptions) -> Result<FjallEngine, SpoolError> {
        FjallEngine::open_tuned(dir, options, Tuning::default())
    }

    /// [`FjallEngine::open`], waiting for the store and working in its background as `tuning` says.
    pub(crate) fn open_tuned(
        dir: &Path,
        options: FjallOptions,
        tuning: Tuning,
    ) -> Result<FjallEngine, SpoolError> {
        let store = Store::open(dir, options, tuning)?;
        let bytes = store.keyspace.disk_space();
        Ok(FjallEngine {
            dir: dir.to_path_buf(),
            options,
            tuning,
            stopping: AtomicBool::new(false),
            store: RwLock::new(Some(store)),
            disk_bytes: AtomicU64::new(bytes),
        })
    }

    /// Measures the size of `store` for [`Engine::disk_bytes`]. Waits for fjall's journal lock: on the writer
    /// thread only (in a commit, a reopen, [`Engine::refresh_disk_bytes`]).
    fn measure(&self, store: &Store) {
        self.disk_bytes
            .store(store.keyspace.disk_space(), Ordering::Relaxed);
    }

    fn store(
        &self,
        context: &'static str,
    ) -> Result<RwLockReadGuard<'_, Option<Store>>, SpoolError> {
        let guard = self.store.read().map_err(|_| SpoolError::Storage {
            context,
            detail: "the store's lock is poisoned by a panic".into(),
            temporary: false,
        })?;
        if guard.is_none() {
            return Err(SpoolError::Storage {
                context,
                detail: "the store is closed after a failed reopen; it is reopened once the disk has room".into(),
                temporary: true,
            });
        }
        Ok(guard)
    }
}

impl FjallEngine {
    /// The entries of `table` after the key `after` (from the first when `None`) up to `end` inclusive, at most
    /// [`SCAN_CHUNK`] of them or about [`SCAN_CHUNK_BYTES`], and whether they are all there is.
    fn read_chunk(
        &self,
        table: Table,
        after: Option<&fjall::Slice>,
        end: &[u8; 16],
    ) -> Result<(Chunk, bool), SpoolError> {
        const CTX: &str = "reading the spool";
        let guard = self.store_for_reading(CTX)?;
        let Some(store) = guard.as_ref() else {
            return Err(SpoolError::Closed);
        };
        let start = match after {
            Some(key) => Bound::Excluded(key.to_vec()),
            None => Bound::Unbounded,
        };
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for kv in store
            .partition(table)
            .range((start, Bound::Included(end.to_vec())))
        {
            let (k, v) = kv.map_err(|e| error(CTX, e))?;
            bytes += k.len() + v.len();
            chunk.push((k, v));
            if chunk.len() >= SCAN_CHUNK || bytes >= SCAN_CHUNK_BYTES {
                return Ok((chunk, false));
            }
        }
        Ok((chunk, true))
    }

    /// The store to read, waiting up to [`SCAN_REOPEN_WAIT`] for it when a reopen closed it and could not open it
    /// again yet (the writer thread keeps trying): a scan that spans a reopen goes on in the reopened store.
    fn store_for_reading(
        &self,
        context: &'static str,
    ) -> Result<RwLockReadGuard<'_, Option<Store>>, SpoolError> {
        let deadline = Instant::now() + SCAN_REOPEN_WAIT;
        loop {
            match self.store(context) {
                Err(SpoolError::Storage {
                    temporary: true, ..
                }) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// Maps an error of a write. fjall answers a failed journal write with "poisoned" and no cause: when the disk
    /// turns out to be full, that is what is reported.
    fn classify(&self, context: &'static str, e: fjall::Error) -> SpoolError {
        let e = error(context, e);
        if e.is_disk_full() {
            return e;
        }
        match probe_free_space(&self.dir, 64 << 10) {
            Err(SpoolError::DiskFull { source, .. }) => SpoolError::DiskFull { context, source },
            _ => e,
        }
    }
}

/// Writes and fsyncs `bytes` bytes in a scratch file of `dir`, then deletes it: whether the disk has room.
pub fn probe_free_space(dir: &Path, bytes: u64) -> Result<(), SpoolError> {
    const CTX: &str = "checking for free space in the spool directory";
    let path = dir.join(".herald-space-probe");
    let result = (|| {
        let mut file = std::fs::File::create(&path)?;
        let chunk = vec![0u8; 64 << 10];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            file.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        file.sync_all()
    })();
    let _ = std::fs::remove_file(&path);
    result.map_err(|e| SpoolError::from_io(CTX, e))
}

fn key_of(bytes: &[u8]) -> Option<SpoolKey> {
    <[u8; 16]>::try_from(bytes)
        .ok()
        .map(SpoolKey::from_be_bytes)
}

impl Engine for FjallEngine {
    fn name(&self) -> &'static str {
        "fjall"
    }

    fn commit(&self, batch: &CommitBatch) -> Result<(), SpoolError> {
        let mode = if batch.sync {
            PersistMode::SyncAll
        } else {
            PersistMode::Buffer
        };
        const CTX: &str = "committing to the spool";
        let guard = self.store(CTX)?;
        let Some(store) = guard.as_ref() else {
            return Err(SpoolError::Closed);
        };
        store
            .admit(self.tuning.stall_wait, &self.stopping)
            .map_err(|e| self.classify(CTX, e))?;
        let mut b = store.keyspace.batch().durability(Some(mode));
        for (k, v) in &batch.inserts {
            b.insert(&store.records, k.to_be_bytes(), v.as_slice());
        }
        for (k, v) in &batch.schedules {
            b.insert(&store.schedules, k.to_be_bytes(), v.as_slice());
        }
        for k in &batch.removes {
            b.remove(&store.records, k.to_be_bytes());
        }
        for k in &batch.unschedules {
            b.remove(&store.schedules, k.to_be_bytes());
        }
        b.commit().map_err(|e| self.classify(CTX, e))?;
        self.measure(store);
        Ok(())
    }

    fn sync(&self) -> Result<(), SpoolError> {
        const CTX: &str = "syncing the spool";
        let guard = self.store(CTX)?;
        let Some(store) = guard.as_ref() else {
            return Err(SpoolError::Closed);
        };
        store
            .keyspace
            .persist(PersistMode::SyncAll)
            .map_err(|e| self.classify(CTX, e))
    }

    /// Reads in chunks of at most [`SCAN_CHUNK`] entries or [`SCAN_CHUNK_BYTES`], each with the store locked and
    /// an iterator of its own; `visit` runs between them, with the lock free. The next chunk starts after the last
    /// key read, in the store as it is then (reopened meanwhile, perhaps).
    fn scan(
        &self,
        table: Table,
        upto: SpoolKey,
        visit: &mut dyn FnMut(SpoolKey, &[u8]) -> ControlFlow<()>,
    ) -> Result<(), SpoolError> {
        let end = upto.to_be_bytes();
        let mut after: Option<fjall::Slice> = None;
        loop {
            let (chunk, complete) = self.read_chunk(table, after.as_ref(), &end)?;
            for (k, v) in &chunk {
                match key_of(k) {
                    Some(key) => {
                        if visit(key, v).is_break() {
                            return Ok(());
                        }
                    }
                    None => tracing::warn!(
                        len = k.len(),
                        "spool: skipping an entry whose key is not 16 bytes"
                    ),
                }
            }
            match chunk.into_iter().next_back() {
                Some((last, _)) if !complete && *last != end[..] => after = Some(last),
                _ => return Ok(()),
            }
        }
    }

    fn last_key(&self, table: Table) -> Result<Option<SpoolKey>, SpoolError> {
        const CTX: &str = "reading the spool";
        let guard = self.store(CTX)?;
        let Some(store) = guard.as_ref() else {
            return Err(SpoolError::Closed);
        };
        // The greatest key of 16 bytes: an entry with a key of another length (which a scan skips) must not hide the
        // others.
        for key in store.partition(table).keys().rev() {
            let key = key.map_err(|e| error(CTX, e))?;
            match key_of(&key) {
                Some(key) => return Ok(Some(key)),
                None => tracing::warn!(
                    len = key.len(),
                    "spool: skipping an entry whose key is not 16 bytes"
                ),
            }
        }
        Ok(None)
    }

    /// The size measured last, by a commit or [`Engine::refresh_disk_bytes`] on the writer thread: measuring
    /// takes fjall's journal lock (`Keyspace::journal_disk_space`), which a commit holds through its write and its
    /// fsync, for as long as a failing disk takes to answer.
    fn disk_bytes(&self) -> u64 {
        self.disk_bytes.load(Ordering::Relaxed)
    }

    fn refresh_disk_bytes(&self) {
        // A reopen holding the lock measures itself.
        if let Ok(guard) = self.store.try_read()
            && let Some(store) = guard.as_ref()
        {
            self.measure(store);
        }
    }

    fn stop_waiting(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    fn reopen(&self) -> Result<(), SpoolError> {
        const CTX: &str = "reopening the spool store";
        probe_free_space(&self.dir, REOPEN_FREE_BYTES)?;
        // A scan holds the lock for one chunk at most, `last_key` for a moment: never wait here all the same, the
        // writer thread tries again later.
        let mut guard = match self.store.try_write() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::WouldBlock) => {
                return Err(SpoolError::Storage {
                    context: CTX,
                    detail: "the store is being read; retrying later".into(),
                    temporary: true,
                });
            }
            Err(std::sync::TryLockError::Poisoned(_)) => {
                return Err(SpoolError::Storage {
                    context: CTX,
                    detail: "the store's lock is poisoned by a panic".into(),
                    temporary: false,
                });
            }
        };
        // The old keyspace must be gone (its journal closed) before the directory is opened again.
        *guard = None;
        let store = Store::open(&self.dir, self.options, self.tuning)?;
        self.measure(&store);
        *guard = Some(store);
        Ok(())
    }
}

#[cfg(test)]
impl FjallEngine {
    /// Gives partition `table` at least `runs` segment runs in level 0 that compaction has to merge: each a flushed
    /// memtable holding the same two keys (of one byte, which the spool skips), so that no run is apart from the
    /// others. Only stays so with no compaction threads ([`Tuning::compaction_workers`]).
    pub(crate) fn pile_up_level0(&self, table: Table, runs: usize) {
        let guard = self.store.read().unwrap();
        let partition = guard.as_ref().unwrap().partition(table);
        while partition.tree.l0_run_count() < runs {
            // An empty level 0 counts as one run too.
            let before = partition.segment_count();
            partition.insert("a", "level 0").unwrap();
            partition.insert("b", "level 0").unwrap();
            assert!(partition.rotate_memtable().unwrap());
            let deadline = Instant::now() + Duration::from_secs(60);
            while partition.segment_count() <= before {
                assert!(Instant::now() < deadline, "the memtable was not flushed");
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }

    /// Runs `f` while measuring the store's size would wait: with the keyspace's list of partitions locked, which
    /// `Keyspace::disk_space` reads after the journal's size (a lock the test cannot take: a commit holds it
    /// through its write and its fsync).
    pub(crate) fn with_measuring_blocked<T>(&self, f: impl FnOnce() -> T) -> T {
        let guard = self.store.read().unwrap();
        let _partitions = guard.as_ref().unwrap().keyspace.partitions.write().unwrap();
        f()
    }

    /// Bytes in the memtable of `table` that takes writes.
    fn active_memtable(&self, table: Table) -> u64 {
        let guard = self.store.read().unwrap();
        u64::from(
            guard
                .as_ref()
                .unwrap()
                .partition(table)
                .tree
                .active_memtable_size(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Far longer than any step here takes: only a commit that never returns runs into it.
    const HANG: Duration = Duration::from_secs(60);

    /// No compaction, so that level 0 only grows; a short wait for it, so that commits go ahead soon.
    fn no_compaction() -> Tuning {
        Tuning {
            stall_wait: Duration::from_millis(100),
            compaction_workers: Some(0),
        }
    }

    /// The memtable size fjall keeps for partition `name` of the store in `dir`.
    fn stored_memtable_size(dir: &Path, name: &str) -> u32 {
        let path = dir
            .join(FJALL_DIR)
            .join("partitions")
            .join(name)
            .join("config");
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes[..4], PARTITION_CONFIG_MAGIC, "{}", path.display());
        let at = PARTITION_CONFIG_MEMTABLE_AT;
        u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    /// Level 0 of the records has fjall's halt count (32) and compaction does not come: a commit that fills more
    /// than fjall's default memtable size returns all the same, and the memtable it filled is sealed before the next.
    fn a_commit_past_fjalls_halt_returns(dir: &Path) {
        let engine = Arc::new(
            FjallEngine::open_tuned(dir, FjallOptions::default(), no_compaction()).unwrap(),
        );
        for name in PARTITIONS {
            assert_eq!(stored_memtable_size(dir, name), UNBOUNDED_MEMTABLE);
        }
        engine.pile_up_level0(Table::Records, 32);
        let big = CommitBatch {
            inserts: (1..=20)
                .map(|i| (SpoolKey(i), vec![7u8; 1 << 20]))
                .collect(),
            sync: true,
            ..CommitBatch::default()
        };
        let (done, answer) = std::sync::mpsc::channel();
        let committing = Arc::clone(&engine);
        std::thread::spawn(move || {
            let _ = done.send(committing.commit(&big));
        });
        answer
            .recv_timeout(HANG)
            .expect(
                "a commit that fills a memtable past 16 MiB returns although level 0 has 32 runs",
            )
            .unwrap();
        assert!(engine.active_memtable(Table::Records) > MEMTABLE_BYTES);

        let small = CommitBatch {
            inserts: vec![(SpoolKey(21), vec![1u8; 100])],
            ..CommitBatch::default()
        };
        engine.commit(&small).unwrap();
        assert!(engine.active_memtable(Table::Records) < 1 << 20);
        let mut keys = Vec::new();
        engine
            .scan(Table::Records, SpoolKey(u128::MAX), &mut |k, _| {
                keys.push(k);
                ControlFlow::Continue(())
            })
            .unwrap();
        assert_eq!(keys, (1..=21).map(SpoolKey).collect::<Vec<_>>());
    }

    /// Reading the size never waits for the store: a failing disk that keeps a commit in its fsync (holding fjall's
    /// journal lock, which measuring takes) must not stop the async threads that serve `/readyz` and `/metrics`.
    #[test]
    fn the_size_is_read_without_waiting_for_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Arc::new(FjallEngine::open(dir.path(), FjallOptions::default()).unwrap());
        // Forgotten, to see the commit measure it (the journal file is allocated ahead: its size may not change).
        engine.disk_bytes.store(0, Ordering::Relaxed);
        let batch = CommitBatch {
            inserts: (1..=16)
                .map(|i| (SpoolKey(i), vec![i as u8; 4096]))
                .collect(),
            sync: true,
            ..CommitBatch::default()
        };
        engine.commit(&batch).unwrap();
        let measured = engine.disk_bytes();
        assert!(measured > 0, "measured by the commit");

        let read = engine.with_measuring_blocked(|| {
            let (done, answer) = std::sync::mpsc::channel();
            let reading = Arc::clone(&engine);
            std::thread::spawn(move || {
                let _ = done.send(reading.disk_bytes());
            });
            answer.recv_timeout(HANG)
        });
        assert_eq!(
            read.expect("the size is read while measuring it would wait"),
            measured
        );
        engine.refresh_disk_bytes();
        assert_eq!(engine.disk_bytes(), measured, "nothing changed since");
    }

    #[test]
    fn a_commit_never_waits_for_compaction_in_a_new_store() {
        let dir = tempfile::tempdir().unwrap();
        a_commit_past_fjalls_halt_returns(dir.path());
    }

    #[test]
    fn a_commit_never_waits_for_compaction_in_a_store_created_with_fjalls_default_memtable_size() {
        let dir = tempfile::tempdir().unwrap();
        {
            // As an earlier herald created it.
            let keyspace = Config::new(dir.path().join(FJALL_DIR))
                .compaction_workers(0)
                .open()
                .unwrap();
            for name in PARTITIONS {
                let partition = keyspace
                    .open_partition(name, PartitionCreateOptions::default())
                    .unwrap();
                partition.insert("a", "earlier").unwrap();
            }
            keyspace.persist(PersistMode::SyncAll).unwrap();
        }
        for name in PARTITIONS {
            assert_eq!(stored_memtable_size(dir.path(), name), 16 << 20);
        }
        a_commit_past_fjalls_halt_returns(dir.path());
    }

    /// Where fjall keeps a partition's memtable size: what [`lift_memtable_limit`] overwrites.
    #[test]
    fn fjall_stores_the_memtable_size_where_the_spool_raises_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let keyspace = Config::new(dir.path().join(FJALL_DIR)).open().unwrap();
            keyspace
                .open_partition(
                    "records",
                    PartitionCreateOptions::default().max_memtable_size(0x0123_4567),
                )
                .unwrap();
        }
        assert_eq!(stored_memtable_size(dir.path(), "records"), 0x0123_4567);
        lift_memtable_limit(&dir.path().join(FJALL_DIR), "records").unwrap();
        assert_eq!(
            stored_memtable_size(dir.path(), "records"),
            UNBOUNDED_MEMTABLE
        );
        // Raised once only.
        lift_memtable_limit(&dir.path().join(FJALL_DIR), "records").unwrap();
        assert_eq!(
            stored_memtable_size(dir.path(), "records"),
            UNBOUNDED_MEMTABLE
        );
    }

    #[test]
    fn a_partition_config_of_another_format_is_refused_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let partition = dir.path().join("partitions").join("records");
        std::fs::create_dir_all(&partition).unwrap();
        std::fs::write(partition.join("config"), b"FJL\x03\x07\x00\x01\x00\x00\x00").unwrap();
        let err = lift_memtable_limit(dir.path(), "records").unwrap_err();
        assert!(!err.is_temporary(), "{err}");
        assert!(err.to_string().contains("records/config"), "{err}");
        std::fs::write(partition.join("config"), b"FJL\x02").unwrap();
        let err = lift_memtable_limit(dir.path(), "records").unwrap_err();
        assert!(err.to_string().contains("4 bytes"), "{err}");
        lift_memtable_limit(dir.path(), "schedules").unwrap();
    }
}
