//! The [`Engine`] on fjall (an LSM tree), the store herald uses: a keyspace directory `fjall/` with a `records` and
//! a `schedules` partition, keys as 16 big-endian bytes. Every commit is one atomic write batch; a synced one is
//! persisted with `PersistMode::SyncAll` (fsync) before it returns, the others with `PersistMode::Buffer` (written
//! to the operating system, which keeps them across a crash of the process).
//!
//! fjall's own write stalls are turned off (its write-buffer and journal limits are set out of reach): they sleep in
//! a loop inside a commit that is already durable until a flush frees memory or journal space, and when that flush
//! fails (a full disk) the flush worker stops for good, so that commit would never return and the spool would never
//! learn that the store refuses writes. `Store::admit` does their work before each commit instead: it seals a
//! memtable where fjall's monitor would have, and waits, for at most [`STALL_WAIT`], while flushes or compactions are
//! behind, stopping at once with an error when the store has turned to refusing writes.

use std::io::Write;
use std::ops::{Bound, ControlFlow};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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
/// slows writes from 20 runs and halts them at 32, sleeping until compaction catches up; staying below that keeps
/// its halt out of reach (only the flushes finishing during one commit add runs).
pub const LEVEL0_RUNS: usize = 24;
/// The longest a commit waits for flushes or compactions to catch up; then it is written regardless.
pub const STALL_WAIT: Duration = Duration::from_secs(30);
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
    /// `None` after a reopen that closed the old keyspace but could not open the new one.
    store: RwLock<Option<Store>>,
    /// The last size measured, for [`Engine::disk_bytes`] while a reopen holds the lock.
    disk_bytes: AtomicU64,
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
    fn open(dir: &Path, options: FjallOptions) -> Result<Store, SpoolError> {
        const CTX: &str = "opening the spool store";
        let keyspace = keyspace_config(dir, options)
            .open()
            .map_err(|e| error(CTX, e))?;
        let records = keyspace
            .open_partition("records", PartitionCreateOptions::default())
            .map_err(|e| error(CTX, e))?;
        let schedules = keyspace
            .open_partition("schedules", PartitionCreateOptions::default())
            .map_err(|e| error(CTX, e))?;
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
    /// than [`STALL_WAIT`]: seals a memtable when needed ([`Store::relieve`]), then waits while the store is behind
    /// ([`Store::behind`]). Fails at once when the store refuses writes: a flush or compaction that failed (a full
    /// disk) stops fjall's worker for good, and nothing would catch up.
    fn admit(&self) -> Result<(), fjall::Error> {
        self.relieve()?;
        let Some(mut why) = self.behind() else {
            return Ok(());
        };
        let deadline = Instant::now() + STALL_WAIT;
        loop {
            // Refused with `Poisoned` once a write, flush or compaction failed; otherwise it only hands the
            // journal's buffer to the operating system.
            self.keyspace.persist(PersistMode::Buffer)?;
            if Instant::now() >= deadline {
                tracing::warn!(
                    "spool: writing although the store is still behind after {STALL_WAIT:?} ({why})"
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

    /// Seals a memtable and hands it to the flush worker where fjall's monitor would have: when the journal passed
    /// half of [`JOURNAL_BYTES`], that of the partition flushed least recently (it keeps the oldest journal file
    /// alive); when the memtables taking writes hold more than half of [`WRITE_BUFFER_BYTES`], the largest.
    fn relieve(&self) -> Result<(), fjall::Error> {
        let partitions = [&self.records, &self.schedules];
        let active = |i: usize| u64::from(partitions[i].tree.active_memtable_size());
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
        let mut sealed_at = self.sealed_at.lock().unwrap_or_else(|p| p.into_inner());
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
fn keyspace_config(dir: &Path, options: FjallOptions) -> Config {
    Config::new(dir.join(FJALL_DIR))
        .cache_size(options.cache_bytes)
        .max_write_buffer_size(u64::MAX)
        .max_journaling_size(u64::MAX)
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
        let store = Store::open(dir, options)?;
        let bytes = store.keyspace.disk_space();
        Ok(FjallEngine {
            dir: dir.to_path_buf(),
            options,
            store: RwLock::new(Some(store)),
            disk_bytes: AtomicU64::new(bytes),
        })
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
        store.admit().map_err(|e| self.classify(CTX, e))?;
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
        b.commit().map_err(|e| self.classify(CTX, e))
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

    fn disk_bytes(&self) -> u64 {
        // Never waits: a reopen or a long recovery may hold the lock.
        if let Ok(guard) = self.store.try_read()
            && let Some(store) = guard.as_ref()
        {
            self.disk_bytes
                .store(store.keyspace.disk_space(), Ordering::Relaxed);
        }
        self.disk_bytes.load(Ordering::Relaxed)
    }

    fn reopen(&self) -> Result<(), SpoolError> {
        const CTX: &str = "reopening the spool store";
        probe_free_space(&self.dir, REOPEN_FREE_BYTES)?;
        // A scan holds the lock for one chunk at most, `last_key` and `disk_bytes` for a moment: never wait here
        // all the same, the writer thread tries again later.
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
        let store = Store::open(&self.dir, self.options)?;
        self.disk_bytes
            .store(store.keyspace.disk_space(), Ordering::Relaxed);
        *guard = Some(store);
        Ok(())
    }
}
