//! The outcome store: final outcomes of notifications kept for a retention period, and the answers of idempotent
//! requests, in a fjall keyspace `outcomes/` inside the spool directory (next to the spool's own `fjall/`).
//!
//! It stores opaque values: herald encodes them. Outcomes are keyed by a 16-byte id key whose first 8 bytes name
//! the accepting process (its "run") and whose last 8 bytes increase within it; an expiry index (finish time, key)
//! lets [`OutcomeStore::prune`] delete what is older than the retention, or the oldest beyond a bound, in finish
//! order. Per run it remembers the greatest key pruned, so that a lookup can say "expired" rather than "unknown".
//! How many outcomes the index names is stored with it, in the same writes, so that the bound counts exactly across
//! restarts. Idempotency answers have an expiry index of their own, so that
//! [`OutcomeStore::prune_idempotency`] visits only what has expired.
//!
//! Outcome writes are buffered (they reach the operating system, which keeps them across a crash of the process, not
//! across a power loss); [`OutcomeStore::sync`] makes them durable (herald calls it at a graceful stop), and
//! idempotency answers can be written synced. After a failed write (disk full, I/O error) fjall refuses every later
//! write until the keyspace is opened again: the store reopens it, as the spool does its own, once there is room: at
//! the next write, then at most every [`REOPEN_INTERVAL`], and at once when a failed write finds room again. Only
//! writes reopen it (they run on writer or blocking threads); reads, some of which run on async threads (status
//! lookups, `Idempotency-Key` checks), never do, nor wait for a reopen under way: they fail with a temporary error
//! meanwhile.
//!
//! Before each write the store seals its memory tables when due and waits, for a bounded time, while flushes or
//! compactions are behind ([`upkeep`]): its journal files are freed within a bounded size, and fjall's own write
//! stalls, which could wait without end on a full disk, never run.

mod upkeep;

use std::collections::HashMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, TryLockError};
use std::time::{Duration, Instant};

use fjall::{Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

use crate::error::SpoolError;
use crate::fjall_engine::{REOPEN_FREE_BYTES, UNBOUNDED_MEMTABLE, error, probe_free_space};
use upkeep::{Tuning, Upkeep};

/// The keyspace directory inside the spool directory.
pub const OUTCOMES_DIR: &str = "outcomes";

/// While the store refuses writes, the next write tries to reopen it at once, later ones at most this often (the
/// spool's default `retry_interval`).
pub const REOPEN_INTERVAL: Duration = Duration::from_secs(1);

/// The keyspace's partitions, by name (see [`Parts`]).
const PARTITIONS: [&str; 9] = [
    "outcomes",
    "expiry",
    "pruned",
    "idempotency",
    "idempotency_expiry",
    "webhook",
    "webhook_heads",
    "broadcasts",
    "meta",
];

/// Idempotency index entries handled per write by [`OutcomeStore::prune_idempotency`] and by the one-time indexing
/// of a store written by an earlier version.
const IDEMPOTENCY_BATCH: usize = 256;

/// `meta` key: the outcome references in the expiry index (u64 BE), written in every batch that changes them.
const COUNT_KEY: &[u8] = b"outcome_count";
/// `meta` key, present once every idempotency answer has its expiry index entry (stores of earlier versions get
/// them at their first open).
const IDEMPOTENCY_INDEX_KEY: &[u8] = b"idempotency_index";

/// Every idempotency answer has its expiry index entry, and [`IDEMPOTENCY_INDEX_KEY`] says so.
const INDEX_MARKED: u8 = 0;
/// Every idempotency answer has its expiry index entry; the first one stored writes [`IDEMPOTENCY_INDEX_KEY`].
const INDEX_COMPLETE: u8 = 1;
/// The answers of an earlier version could not all be indexed: the key is not written, so the next open tries
/// again.
const INDEX_INCOMPLETE: u8 = 2;

/// Events of a webhook queue read from one stored entry (see [`OutcomeStore::hook_chunks`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookChunk {
    /// The number of its first event; the others follow without gaps.
    pub first_seq: u64,
    pub events: Vec<Vec<u8>>,
}

/// A webhook queue as stored (see [`OutcomeStore::hook_queues`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookQueue {
    pub name: String,
    pub head: u64,
    /// (first number, events) of each chunk, oldest first.
    pub chunks: Vec<(u64, u64)>,
}

/// A stored broadcast: its key and herald's encoding of it.
pub type StoredBroadcast = (Vec<u8>, Vec<u8>);

/// An outcome's key: run (8 bytes), then a number increasing within the run (8 bytes).
pub type OutcomeKey = [u8; 16];

/// The open keyspace and its partitions.
struct Parts {
    keyspace: Keyspace,
    outcomes: PartitionHandle,
    /// (finish ms BE, first key) -> the keys of outcomes finished in that second (16 bytes each; empty: the key
    /// in the index key).
    expiry: PartitionHandle,
    /// run (8 bytes) -> greatest pruned key suffix (8 bytes BE).
    pruned: PartitionHandle,
    /// idempotency key -> (expires ms BE, value).
    idempotency: PartitionHandle,
    /// (expires ms BE, idempotency key) -> nothing.
    idempotency_expiry: PartitionHandle,
    /// Webhook queues: (queue name, 0, first sequence BE) -> a chunk of events ([`ChunkBuilder`]).
    webhook: PartitionHandle,
    /// Webhook queue name -> the first sequence number not yet done with (BE).
    webhook_heads: PartitionHandle,
    /// Broadcasts accepted and not finished: id -> encoded broadcast (herald's encoding).
    broadcasts: PartitionHandle,
    /// [`COUNT_KEY`] and [`IDEMPOTENCY_INDEX_KEY`].
    meta: PartitionHandle,
}

/// What opening the keyspace found.
struct Opened {
    parts: Parts,
    /// `INDEX_*`: whether every idempotency answer has its expiry index entry, and whether that is written.
    indexed: u8,
    /// The outcome references in the expiry index.
    count: u64,
    watermarks: HashMap<[u8; 8], u64>,
}

impl Parts {
    /// Opens the keyspace in `dir` (`spool_dir/outcomes`); a store of an earlier version gets its count and its
    /// idempotency index here, once (should writing them fail, the next open does it).
    fn open(dir: &Path, context: &'static str) -> Result<Opened, SpoolError> {
        // Created here for herald's user only, before fjall would create it with the umask's mode: outcomes and
        // webhook batches name device tokens.
        crate::state_dir::create_dir(dir).map_err(|e| SpoolError::Open {
            path: dir.to_path_buf(),
            source: Arc::new(e),
        })?;
        for name in PARTITIONS {
            upkeep::lift_memtable_limit(dir, name, context)?;
        }
        // fjall's write-buffer and journal limits out of reach, so that its write stalls never wait inside a write
        // (see `upkeep`).
        let keyspace = Config::new(dir)
            .cache_size(8 << 20)
            .max_write_buffer_size(u64::MAX)
            .max_journaling_size(u64::MAX)
            .open()
            .map_err(|e| error(context, e))?;
        let part = |name: &str| {
            keyspace
                .open_partition(name, partition_options())
                .map_err(|e| error(context, e))
        };
        let outcomes = part("outcomes")?;
        let expiry = part("expiry")?;
        let pruned = part("pruned")?;
        let idempotency = part("idempotency")?;
        let idempotency_expiry = part("idempotency_expiry")?;
        // The webhook queue's chunks are deleted once the receiver has them, mostly before a flush: compressing
        // them would cost CPU for data that rarely reaches a segment (the option applies to a new store only).
        let webhook = keyspace
            .open_partition(
                "webhook",
                partition_options().compression(fjall::CompressionType::None),
            )
            .map_err(|e| error(context, e))?;
        let webhook_heads = part("webhook_heads")?;
        let broadcasts = part("broadcasts")?;
        let meta = part("meta")?;
        let parts = Parts {
            keyspace,
            outcomes,
            expiry,
            pruned,
            idempotency,
            idempotency_expiry,
            webhook,
            webhook_heads,
            broadcasts,
            meta,
        };
        let mut watermarks = HashMap::new();
        for kv in parts.pruned.iter() {
            let (k, v) = kv.map_err(|e| error(context, e))?;
            if let (Ok(run), Ok(mark)) = (<[u8; 8]>::try_from(&*k), <[u8; 8]>::try_from(&*v)) {
                watermarks.insert(run, u64::from_be_bytes(mark));
            }
        }
        let stored = parts
            .meta
            .get(COUNT_KEY)
            .map_err(|e| error(context, e))?
            .and_then(|v| <[u8; 8]>::try_from(&*v).ok())
            .map(u64::from_be_bytes);
        let count = match stored {
            Some(count) => count,
            None => {
                let count = parts.count_index().map_err(|e| error(context, e))?;
                // The next put or prune writes it in any case: only a store of an earlier version that holds
                // outcomes has it written now (a new one is not written to before it is used).
                if count > 0
                    && let Err(e) = parts.meta.insert(COUNT_KEY, count.to_be_bytes())
                {
                    tracing::warn!("{}", error("storing the outcome count", e));
                }
                count
            }
        };
        let marked = parts
            .meta
            .get(IDEMPOTENCY_INDEX_KEY)
            .map_err(|e| error(context, e))?
            .is_some();
        let indexed = if marked {
            INDEX_MARKED
        } else {
            match parts.index_idempotency() {
                Ok(0) => INDEX_COMPLETE,
                Ok(n) => {
                    tracing::info!(
                        keys = n,
                        "outcome store: idempotency keys of an earlier version indexed by expiry"
                    );
                    INDEX_MARKED
                }
                // Their keys do not expire until an open that indexes them; later keys do.
                Err(e) => {
                    tracing::warn!(
                        "{}; retried at the next open",
                        error("indexing the idempotency keys of an earlier version", e)
                    );
                    INDEX_INCOMPLETE
                }
            }
        };
        Ok(Opened {
            parts,
            count,
            indexed,
            watermarks,
        })
    }

    /// Every partition, for [`Upkeep`].
    fn all(&self) -> [&PartitionHandle; PARTITIONS.len()] {
        [
            &self.outcomes,
            &self.expiry,
            &self.pruned,
            &self.idempotency,
            &self.idempotency_expiry,
            &self.webhook,
            &self.webhook_heads,
            &self.broadcasts,
            &self.meta,
        ]
    }

    /// The outcome references in the expiry index, counted (for a store of an earlier version).
    fn count_index(&self) -> Result<u64, fjall::Error> {
        let mut n = 0;
        for kv in self.expiry.iter() {
            let (k, v) = kv?;
            if k.len() == 24 {
                n += if v.is_empty() {
                    1
                } else {
                    (v.len() / 16) as u64
                };
            }
        }
        Ok(n)
    }

    /// Writes the expiry index entry of every idempotency answer, then [`IDEMPOTENCY_INDEX_KEY`]; returns how many
    /// were indexed. Reads every stored answer: done once, for a store of an earlier version. With none, it writes
    /// nothing (the first answer stored writes the key).
    fn index_idempotency(&self) -> Result<u64, fjall::Error> {
        let mut n = 0;
        let mut batch = self.keyspace.batch().durability(Some(PersistMode::Buffer));
        for kv in self.idempotency.iter() {
            let (k, v) = kv?;
            batch.insert(
                &self.idempotency_expiry,
                idempotency_index_key(expires_of(&v), &k),
                [],
            );
            n += 1;
            if batch.len() >= IDEMPOTENCY_BATCH {
                batch.commit()?;
                batch = self.keyspace.batch().durability(Some(PersistMode::Buffer));
            }
        }
        if n > 0 {
            batch.insert(&self.meta, IDEMPOTENCY_INDEX_KEY, [1]);
            batch.commit()?;
        }
        Ok(n)
    }
}

/// The options of a partition created now: a memtable size fjall never reaches, so that it never seals one inside a
/// write (see `upkeep`).
fn partition_options() -> PartitionCreateOptions {
    PartitionCreateOptions::default().max_memtable_size(UNBOUNDED_MEMTABLE)
}

/// Final outcomes and idempotency answers, durable across restarts.
pub struct OutcomeStore {
    /// The keyspace directory (`spool_dir/outcomes`).
    dir: PathBuf,
    retry_interval: Duration,
    /// Seals memtables and holds writes back while the store is behind.
    upkeep: Upkeep,
    /// `None` after a reopen that closed the old keyspace but could not open the new one.
    parts: RwLock<Option<Parts>>,
    /// Set by a failed write, cleared by one that succeeds.
    broken: Mutex<Option<Broken>>,
    /// run -> greatest pruned suffix, cached.
    watermarks: Mutex<HashMap<[u8; 8], u64>>,
    /// The outcome references in the expiry index, as stored under [`COUNT_KEY`]; changed under `count_lock`
    /// together with the write that stores it.
    count: AtomicU64,
    count_lock: Mutex<()>,
    /// `INDEX_*` (see [`Opened`]).
    idempotency_indexed: AtomicU8,
    /// Held by the write of an idempotency answer and by each batch of [`OutcomeStore::prune_idempotency`], so that
    /// a key stored again is not deleted on the strength of its earlier, expired answer.
    idempotency_lock: Mutex<()>,
    /// Set by [`OutcomeStore::refuse_writes`]: every write fails as on a failing disk (tests of the writers).
    refusing: AtomicBool,
    /// Writes refused while `refusing` was set.
    refused: AtomicU64,
    /// Called by each prune batch just before its commit (tests).
    #[cfg(test)]
    before_prune_commit: Mutex<Option<PruneHook>>,
}

#[cfg(test)]
type PruneHook = Box<dyn Fn(&OutcomeStore) + Send>;

/// Whether a write first makes room in the store ([`OutcomeStore::run_write`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    /// Seals memtables when due and waits, for a bounded time, while the store is behind: a write that adds to the
    /// journal.
    Wait,
    /// Goes ahead at once: a sync, which adds nothing.
    Skip,
}

/// What [`OutcomeStore::lookup`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Vec<u8>),
    /// Not kept any more: pruned after the retention or beyond the bound.
    Expired,
    /// Never stored (or not yet).
    Unknown,
}

/// The store refuses writes: when to try a reopen.
#[derive(Debug, Clone, Copy)]
struct Broken {
    /// A write from then on first reopens the keyspace.
    reopen_at: Instant,
    /// The last failure found the disk full.
    full: bool,
}

/// What one call of [`OutcomeStore::prune_idempotency`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct IdempotencyPruned {
    /// Answers deleted.
    deleted: u64,
    /// Expiry index entries read (each one expired).
    visited: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn closed(context: &'static str) -> SpoolError {
    SpoolError::Storage {
        context,
        detail: "the outcome store is closed after a failed reopen; its next write reopens it once the disk has room \
                 again"
            .into(),
        temporary: true,
    }
}

impl OutcomeStore {
    /// Opens (or creates) the store in `spool_dir/outcomes`.
    pub fn open(spool_dir: &Path) -> Result<OutcomeStore, SpoolError> {
        OutcomeStore::open_with(spool_dir, REOPEN_INTERVAL, Tuning::default())
    }

    fn open_with(
        spool_dir: &Path,
        retry_interval: Duration,
        tuning: Tuning,
    ) -> Result<OutcomeStore, SpoolError> {
        // Opened at every start, whatever the spool backend: a spool directory open to other users is said here
        // when the disk spool did not say it already.
        crate::state_dir::create_dir(spool_dir).map_err(|e| SpoolError::Open {
            path: spool_dir.to_path_buf(),
            source: Arc::new(e),
        })?;
        crate::state_dir::warn_if_shared(spool_dir);
        let dir = spool_dir.join(OUTCOMES_DIR);
        let opened = Parts::open(&dir, "opening the outcome store")?;
        Ok(OutcomeStore {
            dir,
            retry_interval,
            upkeep: Upkeep::new(tuning),
            parts: RwLock::new(Some(opened.parts)),
            broken: Mutex::new(None),
            watermarks: Mutex::new(opened.watermarks),
            count: AtomicU64::new(opened.count),
            count_lock: Mutex::new(()),
            idempotency_indexed: AtomicU8::new(opened.indexed),
            idempotency_lock: Mutex::new(()),
            refusing: AtomicBool::new(false),
            refused: AtomicU64::new(0),
            #[cfg(test)]
            before_prune_commit: Mutex::new(None),
        })
    }

    /// The keyspace, for a write. While writes fail, a write first reopens it when that is due: at once after the
    /// first failure, then at most every `retry_interval`, except that a failed write that finds room on a disk found
    /// full makes it due at once (see [`OutcomeStore::failed`]). Writes run on writer or blocking threads, never on
    /// async ones: a reopen writes and syncs a probe file and opens the keyspace again, recovering its journal.
    fn writable(
        &self,
        context: &'static str,
    ) -> Result<RwLockReadGuard<'_, Option<Parts>>, SpoolError> {
        let guard = self.parts.read().unwrap_or_else(|p| p.into_inner());
        if self.claim_reopen() {
            drop(guard);
            if let Err(e) = self.reopen() {
                if let Some(b) = lock(&self.broken).as_mut() {
                    b.full = e.is_disk_full();
                }
                return Err(e);
            }
            let guard = self.parts.read().unwrap_or_else(|p| p.into_inner());
            return match *guard {
                Some(_) => Ok(guard),
                None => Err(closed(context)),
            };
        }
        match *guard {
            Some(_) => Ok(guard),
            None => Err(closed(context)),
        }
    }

    /// The keyspace, for a read, without waiting: reads also run on async threads (status lookups,
    /// `Idempotency-Key` checks). A keyspace that a failed reopen left closed is not reopened here (the next write
    /// does that), and one being reopened is not waited for: both fail with a temporary error.
    fn readable(
        &self,
        context: &'static str,
    ) -> Result<RwLockReadGuard<'_, Option<Parts>>, SpoolError> {
        let guard = match self.parts.try_read() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => {
                return Err(SpoolError::Storage {
                    context,
                    detail: "the outcome store is being reopened; try again shortly".into(),
                    temporary: true,
                });
            }
        };
        match *guard {
            Some(_) => Ok(guard),
            None => Err(closed(context)),
        }
    }

    /// True when a reopen is due; it then counts as tried now.
    fn claim_reopen(&self) -> bool {
        match lock(&self.broken).as_mut() {
            Some(b) if Instant::now() >= b.reopen_at => {
                b.reopen_at = Instant::now() + self.retry_interval;
                true
            }
            _ => false,
        }
    }

    /// Closes the keyspace and opens it again, once the disk has room: fjall refuses every write after a failed
    /// one until then. The count is read again from the keyspace, where it is written with what it counts.
    fn reopen(&self) -> Result<(), SpoolError> {
        const CTX: &str = "reopening the outcome store";
        probe_free_space(&self.dir, REOPEN_FREE_BYTES)?;
        let mut guard = self.parts.write().unwrap_or_else(|p| p.into_inner());
        // The old keyspace must be gone (its journal closed) before the directory is opened again.
        *guard = None;
        let opened = Parts::open(&self.dir, CTX)?;
        self.count.store(opened.count, Ordering::Relaxed);
        self.idempotency_indexed
            .store(opened.indexed, Ordering::Relaxed);
        let mut marks = lock(&self.watermarks);
        for (run, mark) in opened.watermarks {
            let m = marks.entry(run).or_insert(0);
            *m = (*m).max(mark);
        }
        drop(marks);
        *guard = Some(opened.parts);
        tracing::info!("outcome store reopened");
        Ok(())
    }

    /// Runs the write `f` on the keyspace (see [`OutcomeStore::parts`]), remembering whether it failed.
    fn write<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Parts) -> Result<T, fjall::Error>,
    ) -> Result<T, SpoolError> {
        self.write_if(context, |p| f(p).map(|t| (t, true)))
    }

    /// Runs `f`, which says whether it wrote anything, on the keyspace: as [`OutcomeStore::write`], except that
    /// only a write that took place shows that the keyspace takes writes again.
    fn write_if<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Parts) -> Result<(T, bool), fjall::Error>,
    ) -> Result<T, SpoolError> {
        self.run_write(context, Admission::Wait, f)
    }

    /// Runs the write `f` as [`OutcomeStore::write_if`] does; with [`Admission::Wait`], first makes room for it
    /// ([`Upkeep::admit`]: seals memtables when due, waits a bounded time while the store is behind).
    fn run_write<T>(
        &self,
        context: &'static str,
        admission: Admission,
        f: impl FnOnce(&Parts) -> Result<(T, bool), fjall::Error>,
    ) -> Result<T, SpoolError> {
        let guard = self.writable(context)?;
        let Some(parts) = guard.as_ref() else {
            return Err(closed(context));
        };
        if self.refusing.load(Ordering::Relaxed) {
            drop(guard);
            self.refused.fetch_add(1, Ordering::Relaxed);
            let e = SpoolError::Io {
                context,
                source: std::sync::Arc::new(std::io::Error::from_raw_os_error(libc::EIO)),
            };
            return Err(self.note_failure(e));
        }
        let result = match admission {
            Admission::Wait => self.upkeep.admit(&parts.keyspace, &parts.all()),
            Admission::Skip => Ok(()),
        }
        .and_then(|()| f(parts));
        drop(guard);
        match result {
            Ok((t, wrote)) => {
                if wrote && lock(&self.broken).take().is_some() {
                    tracing::info!("the outcome store takes writes again");
                }
                Ok(t)
            }
            Err(e) => Err(self.failed(context, e)),
        }
    }

    /// From now on (`on`) every write fails with an I/O error, as on a failing disk, and the store takes it for a
    /// failed write (it reopens its keyspace when a reopen is due, as after a real one); until called again with
    /// `false`. For the tests of the writers that must outlast such a failure.
    #[doc(hidden)]
    pub fn refuse_writes(&self, on: bool) {
        self.refusing.store(on, Ordering::Relaxed);
    }

    /// Writes refused by [`OutcomeStore::refuse_writes`] so far.
    #[doc(hidden)]
    pub fn writes_refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Notes a failed write and maps its error. fjall answers a failed journal write with "poisoned" and no cause,
    /// so the disk is checked for the room a reopen wants: where there is none, the error says the disk is full;
    /// where there is again, after a failure that found it full, the next write reopens the keyspace without
    /// waiting for `retry_interval` (the writers of outcomes and webhook events keep what was not stored and try
    /// again, no sooner than that). On a full disk the check fails at its first block.
    fn failed(&self, context: &'static str, e: fjall::Error) -> SpoolError {
        let mut e = error(context, e);
        if !e.is_disk_full()
            && let Err(SpoolError::DiskFull { source, .. }) =
                probe_free_space(&self.dir, REOPEN_FREE_BYTES)
        {
            e = SpoolError::DiskFull { context, source };
        }
        self.note_failure(e)
    }

    /// Notes a failed write whose error is `e`: the store refuses writes until a reopen (see
    /// [`OutcomeStore::failed`]).
    fn note_failure(&self, e: SpoolError) -> SpoolError {
        let full = e.is_disk_full();
        let mut broken = lock(&self.broken);
        match broken.as_mut() {
            None => {
                *broken = Some(Broken {
                    reopen_at: Instant::now(),
                    full,
                });
                tracing::error!(
                    "the outcome store refuses writes ({e}); it is reopened once the disk has room again"
                );
            }
            Some(b) => {
                if b.full && !full {
                    b.reopen_at = Instant::now();
                }
                b.full = full;
            }
        }
        e
    }

    /// Runs the read `f` on the keyspace.
    fn read<T>(
        &self,
        context: &'static str,
        f: impl FnOnce(&Parts) -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        let guard = self.readable(context)?;
        let Some(parts) = guard.as_ref() else {
            return Err(closed(context));
        };
        f(parts)
    }

    /// Outcomes stored now (one stored twice, as after a crash and a second delivery, counts twice until both
    /// are pruned).
    pub fn len(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores final outcomes `(key, finished ms, value)` in one buffered write.
    ///
    /// The expiry index gets one entry per finish second of the batch, not one per outcome: its key is the
    /// latest finish time of the group and the group's first key, its value the group's keys (16 bytes each, in
    /// the order given). An index entry with an empty value (written by earlier versions) stands for the one key
    /// in its own key.
    pub fn put<V: AsRef<[u8]>>(&self, entries: &[(OutcomeKey, u64, V)]) -> Result<(), SpoolError> {
        self.write("writing outcomes", |p| {
            let mut batch = p.keyspace.batch().durability(Some(PersistMode::Buffer));
            let mut groups: Vec<(u64, OutcomeKey, Vec<u8>)> = Vec::new();
            for (key, finished_ms, value) in entries {
                batch.insert(&p.outcomes, key, value.as_ref());
                match groups
                    .iter_mut()
                    .find(|(at, _, _)| at / 1000 == finished_ms / 1000)
                {
                    Some((at, _, keys)) => {
                        *at = (*at).max(*finished_ms);
                        keys.extend_from_slice(key);
                    }
                    None => groups.push((*finished_ms, *key, key.to_vec())),
                }
            }
            for (finished_ms, first, keys) in &groups {
                batch.insert(&p.expiry, expiry_key(*finished_ms, first), keys.as_slice());
            }
            // A final outcome is stored once; counting without a read per entry keeps the write path cheap.
            let _counting = lock(&self.count_lock);
            let count = self.len() + entries.len() as u64;
            batch.insert(&p.meta, COUNT_KEY, count.to_be_bytes());
            batch.commit()?;
            self.count.store(count, Ordering::Relaxed);
            Ok(())
        })
    }

    /// The outcome stored under `key`.
    pub fn lookup(&self, key: &OutcomeKey) -> Result<Lookup, SpoolError> {
        const CTX: &str = "reading outcomes";
        if let Some(v) = self.read(CTX, |p| p.outcomes.get(key).map_err(|e| error(CTX, e)))? {
            return Ok(Lookup::Found(v.to_vec()));
        }
        let (run, suffix) = split(key);
        let marks = lock(&self.watermarks);
        Ok(match marks.get(&run) {
            Some(mark) if suffix <= *mark => Lookup::Expired,
            _ => Lookup::Unknown,
        })
    }

    /// Deletes outcomes finished before `cutoff_ms`, then the oldest while more than `max_entries` remain. Returns
    /// how many were deleted. Works in batches of at most 10,000 so that lookups go on meanwhile.
    pub fn prune(&self, cutoff_ms: u64, max_entries: u64) -> Result<u64, SpoolError> {
        let mut total = 0;
        loop {
            let n = self.write_if("pruning outcomes", |p| {
                let n = self.prune_batch(p, cutoff_ms, max_entries)?;
                Ok((n, n > 0))
            })?;
            if n == 0 {
                return Ok(total);
            }
            total += n;
        }
    }

    /// One batch of [`OutcomeStore::prune`]: how many it deleted.
    fn prune_batch(
        &self,
        p: &Parts,
        cutoff_ms: u64,
        max_entries: u64,
    ) -> Result<u64, fjall::Error> {
        let over = self.len().saturating_sub(max_entries) as usize;
        // Index entries to delete, the outcomes they name, and (at most one) index entry cut short by the bound.
        let mut index_doomed: Vec<Vec<u8>> = Vec::new();
        let mut doomed: Vec<OutcomeKey> = Vec::new();
        let mut rewrite: Option<(Vec<u8>, Vec<u8>)> = None;
        for kv in p.expiry.iter() {
            let (k, v) = kv?;
            if k.len() != 24 || doomed.len() >= 10_000 {
                break;
            }
            let mut fin = [0u8; 8];
            fin.copy_from_slice(&k[..8]);
            let keys: Vec<OutcomeKey> = if v.is_empty() {
                k[8..].try_into().into_iter().collect()
            } else {
                v.chunks_exact(16)
                    .filter_map(|c| c.try_into().ok())
                    .collect()
            };
            let take = if u64::from_be_bytes(fin) < cutoff_ms {
                keys.len()
            } else {
                over.saturating_sub(doomed.len()).min(keys.len())
            };
            if take == 0 {
                break;
            }
            doomed.extend_from_slice(&keys[..take]);
            if take == keys.len() {
                index_doomed.push(k.to_vec());
            } else {
                rewrite = Some((k.to_vec(), keys[take..].concat()));
                break;
            }
        }
        if doomed.is_empty() {
            return Ok(0);
        }
        let mut batch = p.keyspace.batch().durability(Some(PersistMode::Buffer));
        for ek in &index_doomed {
            batch.remove(&p.expiry, ek.as_slice());
        }
        if let Some((ek, rest)) = &rewrite {
            batch.insert(&p.expiry, ek.as_slice(), rest.as_slice());
        }
        // The highest suffix deleted per run (a batch holds few runs).
        let mut highest: Vec<([u8; 8], u64)> = Vec::new();
        for key in &doomed {
            batch.remove(&p.outcomes, key.as_slice());
            let (run, suffix) = split(key);
            match highest.iter_mut().find(|(r, _)| *r == run) {
                Some((_, s)) => *s = (*s).max(suffix),
                None => highest.push((run, suffix)),
            }
        }
        // The marks are raised in memory before the commit and the lock is released before it, so that lookups
        // (every one that misses the store takes this lock) do not wait for a commit of up to 10,000 deletions.
        // That is safe: an outcome this commit deletes is missed by a lookup only after the commit, which then finds
        // its run's mark already raised (expired, as when the lock was held throughout); before the commit the
        // lookup finds the outcome itself. An id never stored (or not yet) below the new mark reads as expired
        // a moment early, as it will once the commit is done. Should the commit fail, the marks stay raised (as
        // they did before) and the outcomes stay found; a mark equal to the one in memory is written again with
        // the next batch, so that the mark the store keeps is never left behind the deletions.
        {
            let mut marks = lock(&self.watermarks);
            for (run, suffix) in highest {
                let mark = marks.entry(run).or_insert(0);
                if suffix >= *mark {
                    *mark = suffix;
                    batch.insert(&p.pruned, run, suffix.to_be_bytes());
                }
            }
        }
        #[cfg(test)]
        if let Some(hook) = lock(&self.before_prune_commit).as_ref() {
            hook(self);
        }
        let n = doomed.len() as u64;
        let _counting = lock(&self.count_lock);
        let count = self.len().saturating_sub(n);
        batch.insert(&p.meta, COUNT_KEY, count.to_be_bytes());
        batch.commit()?;
        self.count.store(count, Ordering::Relaxed);
        Ok(n)
    }

    /// The answer stored for idempotency key `key`, if it has not expired at `now_ms`.
    pub fn idempotent_get(&self, key: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>, SpoolError> {
        const CTX: &str = "reading idempotency keys";
        let Some(v) = self.read(CTX, |p| p.idempotency.get(key).map_err(|e| error(CTX, e)))? else {
            return Ok(None);
        };
        if v.len() < 8 {
            return Ok(None);
        }
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&v[..8]);
        if u64::from_be_bytes(exp) <= now_ms {
            return Ok(None);
        }
        Ok(Some(v[8..].to_vec()))
    }

    /// Stores the answer for idempotency key `key` until `expires_ms`; with `sync`, durable (fsync) on return.
    pub fn idempotent_put(
        &self,
        key: &[u8],
        expires_ms: u64,
        value: &[u8],
        sync: bool,
    ) -> Result<(), SpoolError> {
        let mut v = Vec::with_capacity(8 + value.len());
        v.extend_from_slice(&expires_ms.to_be_bytes());
        v.extend_from_slice(value);
        let mode = if sync {
            PersistMode::SyncAll
        } else {
            PersistMode::Buffer
        };
        self.write("writing an idempotency key", |p| {
            let mut batch = p.keyspace.batch().durability(Some(mode));
            batch.insert(&p.idempotency, key, v);
            batch.insert(
                &p.idempotency_expiry,
                idempotency_index_key(expires_ms, key),
                [],
            );
            let mark = self.idempotency_indexed.load(Ordering::Relaxed) == INDEX_COMPLETE;
            if mark {
                batch.insert(&p.meta, IDEMPOTENCY_INDEX_KEY, [1]);
            }
            let _writing = lock(&self.idempotency_lock);
            batch.commit()?;
            if mark {
                self.idempotency_indexed
                    .store(INDEX_MARKED, Ordering::Relaxed);
            }
            Ok(())
        })
    }

    /// Deletes idempotency keys expired at `now_ms`; returns how many. Visits only the expired ones (by their
    /// expiry index), in writes of at most a few hundred.
    pub fn prune_idempotency(&self, now_ms: u64) -> Result<u64, SpoolError> {
        self.prune_idempotency_counted(now_ms).map(|r| r.deleted)
    }

    fn prune_idempotency_counted(&self, now_ms: u64) -> Result<IdempotencyPruned, SpoolError> {
        let mut total = IdempotencyPruned::default();
        // The last index entry visited: the next batch starts after it, not at the deletions of this one.
        let mut after = None;
        loop {
            let batch = self.write_if("pruning idempotency keys", |p| {
                let batch = self.prune_idempotency_batch(p, now_ms, &mut after)?;
                Ok((batch, batch.visited > 0))
            })?;
            total.deleted += batch.deleted;
            total.visited += batch.visited;
            if batch.visited < IDEMPOTENCY_BATCH as u64 {
                return Ok(total);
            }
        }
    }

    /// One batch of [`OutcomeStore::prune_idempotency`]: deletes the index entries expired at `now_ms` (at most
    /// [`IDEMPOTENCY_BATCH`], from the one after `after` on, which it moves to the last one) and the answers they
    /// name unless stored again since with a later expiry.
    fn prune_idempotency_batch(
        &self,
        p: &Parts,
        now_ms: u64,
        after: &mut Option<Vec<u8>>,
    ) -> Result<IdempotencyPruned, fjall::Error> {
        let _writing = lock(&self.idempotency_lock);
        // Index keys start with the expiry: those before (now + 1) have expired.
        let end = match now_ms.checked_add(1) {
            Some(end) => Bound::Excluded(end.to_be_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let start = match after.take() {
            Some(k) => Bound::Excluded(k),
            None => Bound::Unbounded,
        };
        let expired = p.idempotency_expiry.range((start, end));
        let mut result = IdempotencyPruned::default();
        let mut batch = p.keyspace.batch().durability(Some(PersistMode::Buffer));
        // A key stored again has an index entry per answer: it is deleted once.
        let mut deleted: Vec<Vec<u8>> = Vec::new();
        for kv in expired.take(IDEMPOTENCY_BATCH) {
            let (ik, _) = kv?;
            result.visited += 1;
            batch.remove(&p.idempotency_expiry, ik.clone());
            *after = Some(ik.to_vec());
            let Some(key) = ik.get(8..).map(<[u8]>::to_vec) else {
                continue;
            };
            if deleted.contains(&key) {
                continue;
            }
            // An answer stored again since has a later expiry: it stays (its own index entry names it).
            if p.idempotency
                .get(&key)?
                .is_some_and(|v| expires_of(&v) <= now_ms)
            {
                batch.remove(&p.idempotency, key.as_slice());
                deleted.push(key);
                result.deleted += 1;
            }
        }
        if result.visited > 0 {
            batch.commit()?;
        }
        Ok(result)
    }

    /// Appends a chunk of events (built with [`ChunkBuilder`]) whose first is numbered `first_seq` to the webhook
    /// queue `queue`: one buffered write, one entry (a queue's events are written, read and deleted by the chunk,
    /// not one by one).
    pub fn hook_append(&self, queue: &str, first_seq: u64, chunk: &[u8]) -> Result<(), SpoolError> {
        self.write("writing webhook outcomes", |p| {
            let mut batch = p.keyspace.batch().durability(Some(PersistMode::Buffer));
            batch.insert(&p.webhook, hook_key(queue, first_seq), chunk);
            batch.commit()
        })
    }

    /// The waiting events of webhook queue `queue`, by chunk: from the chunk numbered `from_first_seq` on, the events
    /// numbered `head` or more, `limit` at most in all. Each chunk read is still read from the store whole and
    /// checked to its end (its events stepped over by their lengths); only the events returned are copied, so a
    /// batch from a large chunk copies a batch, not the chunk. A chunk wholly before `head` is left out.
    ///
    /// Deleted chunks stay in the tree as tombstones until compaction: a reader that always started at the front
    /// would step over every chunk delivered so far, so the caller passes the first chunk that may still be there.
    pub fn hook_chunks(
        &self,
        queue: &str,
        from_first_seq: u64,
        head: u64,
        limit: usize,
    ) -> Result<Vec<HookChunk>, SpoolError> {
        const CTX: &str = "reading webhook outcomes";
        let range = hook_key(queue, from_first_seq)..=hook_key(queue, u64::MAX);
        self.read(CTX, |p| {
            let mut out = Vec::new();
            let mut events = 0;
            for kv in p.webhook.range(range) {
                if events >= limit {
                    break;
                }
                let (k, v) = kv.map_err(|e| error(CTX, e))?;
                let Some(first_seq) = hook_seq(&k) else {
                    tracing::error!("{}: skipped", corrupt_chunk(queue));
                    continue;
                };
                let skip = head.saturating_sub(first_seq);
                let Some(chunk) = chunk_events(&v, skip, limit - events) else {
                    // Its events cannot be sent; the ones after it still are.
                    tracing::error!("{}: skipped", corrupt_chunk(queue));
                    continue;
                };
                if chunk.is_empty() {
                    continue;
                }
                events += chunk.len();
                out.push(HookChunk {
                    first_seq: first_seq + skip,
                    events: chunk,
                });
            }
            Ok(out)
        })
    }

    /// Records that every event of webhook queue `queue` numbered below `head` is done with (delivered or
    /// dropped) and deletes the chunks `done` (by their first numbers), in one buffered write.
    pub fn hook_advance(&self, queue: &str, head: u64, done: &[u64]) -> Result<(), SpoolError> {
        self.hook_advance_over(queue, head, done, &[]).map(drop)
    }

    /// As [`OutcomeStore::hook_advance`], and deletes too every chunk whose first number lies in one of `ranges`
    /// (`from..until`) and whose events all lie below `head` (a chunk cut short, whose events cannot be sent, once
    /// `head` passed its first number): the chunks of a stretch of the queue that its sender keeps no list of, only
    /// where it starts and ends. Only the chunks of those ranges are read (the one that `head` falls into, to know
    /// where it ends). Returns, for each range, the first number of the first chunk in it that stays (`until` when
    /// none does): where the stretch starts now, past the deletions (and their tombstones, which a later read that
    /// started before them would step over).
    pub fn hook_advance_over(
        &self,
        queue: &str,
        head: u64,
        done: &[u64],
        ranges: &[(u64, u64)],
    ) -> Result<Vec<u64>, SpoolError> {
        self.write("deleting webhook outcomes", |p| {
            let mut batch = p.keyspace.batch().durability(Some(PersistMode::Buffer));
            for first_seq in done {
                batch.remove(&p.webhook, hook_key(queue, *first_seq));
            }
            let mut starts = Vec::with_capacity(ranges.len());
            for &(from, until) in ranges {
                let mut start = None;
                if from < until {
                    for kv in p
                        .webhook
                        .range(hook_key(queue, from)..hook_key(queue, until))
                    {
                        let (k, v) = kv?;
                        let Some(first_seq) = hook_seq(&k) else {
                            continue;
                        };
                        let passed = match chunk_len(&v) {
                            Some(n) => first_seq.saturating_add(n) <= head,
                            None => first_seq < head,
                        };
                        if passed {
                            batch.remove(&p.webhook, k);
                        } else if start.is_none() {
                            start = Some(first_seq);
                        }
                    }
                }
                starts.push(start.unwrap_or(until));
            }
            batch.insert(&p.webhook_heads, queue.as_bytes(), head.to_be_bytes());
            batch.commit()?;
            Ok(starts)
        })
    }

    /// Forgets webhook queue `queue`, whose events are all done with: deletes its recorded number and whatever chunk
    /// is still stored under its name from number `from` on (one whose deletion failed), in one buffered write. A
    /// later queue of that name then numbers its events from the start and meets nothing of this one, provided no
    /// chunk of it is left below `from`: the caller passes its head, or the first number of a chunk whose deletion
    /// failed if lower. Deleted chunks stay in the tree as tombstones until compaction, so a scan from 0 would step
    /// over every chunk the queue ever had since.
    pub fn hook_forget(&self, queue: &str, from: u64) -> Result<(), SpoolError> {
        self.write("forgetting a webhook queue", |p| {
            let mut batch = p.keyspace.batch().durability(Some(PersistMode::Buffer));
            for kv in p
                .webhook
                .range(hook_key(queue, from)..=hook_key(queue, u64::MAX))
            {
                let (k, _) = kv?;
                batch.remove(&p.webhook, k);
            }
            batch.remove(&p.webhook_heads, queue.as_bytes());
            batch.commit()
        })
    }

    /// Every webhook queue with events or a recorded number: its name, the number recorded by
    /// [`OutcomeStore::hook_advance`] (events below it are done; 0 when none was) and its chunks as (first number,
    /// events), oldest first.
    pub fn hook_queues(&self) -> Result<Vec<HookQueue>, SpoolError> {
        const CTX: &str = "reading webhook outcomes";
        self.read(CTX, |p| {
            let mut out: Vec<HookQueue> = Vec::new();
            for kv in p.webhook.iter() {
                let (k, v) = kv.map_err(|e| error(CTX, e))?;
                let Some(name_len) = k.len().checked_sub(9) else {
                    continue;
                };
                let name = String::from_utf8_lossy(&k[..name_len]).into_owned();
                let (Some(first_seq), Some(events)) = (hook_seq(&k), chunk_len(&v)) else {
                    tracing::error!("{}: skipped", corrupt_chunk(&name));
                    continue;
                };
                match out.last_mut() {
                    Some(last) if last.name == name => last.chunks.push((first_seq, events)),
                    _ => out.push(HookQueue {
                        name,
                        head: 0,
                        chunks: vec![(first_seq, events)],
                    }),
                }
            }
            // A queue whose chunks are all done keeps its number, so that its next events are numbered after it.
            for kv in p.webhook_heads.iter() {
                let (k, v) = kv.map_err(|e| error(CTX, e))?;
                let Ok(head) = <[u8; 8]>::try_from(&*v) else {
                    continue;
                };
                let name = String::from_utf8_lossy(&k);
                match out.iter_mut().find(|q| q.name == name) {
                    Some(q) => q.head = u64::from_be_bytes(head),
                    None => out.push(HookQueue {
                        name: name.into_owned(),
                        head: u64::from_be_bytes(head),
                        chunks: Vec::new(),
                    }),
                }
            }
            out.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(out)
        })
    }

    /// Stores broadcasts under their keys and makes them durable (synced) before returning: a broadcast is
    /// acknowledged to its sender only after this.
    pub fn broadcast_put(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<(), SpoolError> {
        self.broadcast_apply(entries, &[])
    }

    /// Stores broadcasts and deletes finished ones in one write: synced when anything is stored (the stores are
    /// acknowledged after it), buffered when there are only deletions.
    pub fn broadcast_apply(
        &self,
        entries: &[(Vec<u8>, Vec<u8>)],
        finished: &[Vec<u8>],
    ) -> Result<(), SpoolError> {
        let mode = if entries.is_empty() {
            PersistMode::Buffer
        } else {
            PersistMode::SyncAll
        };
        self.write("storing broadcasts", |p| {
            let mut batch = p.keyspace.batch().durability(Some(mode));
            for (k, v) in entries {
                batch.insert(&p.broadcasts, k.as_slice(), v.as_slice());
            }
            for k in finished {
                batch.remove(&p.broadcasts, k.as_slice());
            }
            batch.commit()
        })
    }

    /// Replaces a stored broadcast (a retry's new state), buffered like a reschedule of the spool.
    pub fn broadcast_update(&self, key: &[u8], value: &[u8]) -> Result<(), SpoolError> {
        self.write("updating a broadcast", |p| {
            let mut batch = p.keyspace.batch().durability(Some(PersistMode::Buffer));
            batch.insert(&p.broadcasts, key, value);
            batch.commit()
        })
    }

    /// Deletes a finished broadcast.
    pub fn broadcast_remove(&self, key: &[u8]) -> Result<(), SpoolError> {
        self.write("deleting a broadcast", |p| {
            let mut batch = p.keyspace.batch().durability(Some(PersistMode::Buffer));
            batch.remove(&p.broadcasts, key);
            batch.commit()
        })
    }

    /// Every stored broadcast, in key order.
    pub fn broadcast_all(&self) -> Result<Vec<StoredBroadcast>, SpoolError> {
        const CTX: &str = "reading broadcasts";
        self.read(CTX, |p| {
            let mut out = Vec::new();
            for kv in p.broadcasts.iter() {
                let (k, v) = kv.map_err(|e| error(CTX, e))?;
                out.push((k.to_vec(), v.to_vec()));
            }
            Ok(out)
        })
    }

    /// Makes everything written so far durable. It adds nothing to the journal, so it does not wait for the store
    /// to catch up (herald calls it at a stop).
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.run_write("syncing the outcome store", Admission::Skip, |p| {
            p.keyspace
                .persist(PersistMode::SyncAll)
                .map(|()| ((), true))
        })
    }
}

/// When a stored idempotency answer expires (ms); a value too short to say counts as expired, as
/// [`OutcomeStore::idempotent_get`] treats it.
fn expires_of(value: &[u8]) -> u64 {
    value
        .first_chunk::<8>()
        .map_or(0, |b| u64::from_be_bytes(*b))
}

fn idempotency_index_key(expires_ms: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&expires_ms.to_be_bytes());
    k.extend_from_slice(key);
    k
}

fn expiry_key(finished_ms: u64, key: &OutcomeKey) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&finished_ms.to_be_bytes());
    k[8..].copy_from_slice(key);
    k
}

/// The sequence number of a webhook event's key (its last 8 bytes).
fn hook_seq(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8).map(|at| &key[at..])?;
    <[u8; 8]>::try_from(tail).ok().map(u64::from_be_bytes)
}

fn hook_key(queue: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(queue.len() + 9);
    k.extend_from_slice(queue.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The first byte of a chunk of several events; a stored value that starts otherwise is one event, as earlier
/// versions stored them (a JSON object, starting with `{`).
const CHUNK_TAG: u8 = 1;

/// Builds a chunk of webhook events as the store keeps it: [`CHUNK_TAG`], then each event as its length (u32 LE)
/// and its bytes. Events are written in place, so that a chunk costs one buffer, not one per event.
#[derive(Debug, Clone)]
pub struct ChunkBuilder {
    buf: Vec<u8>,
    /// Where each event's bytes start and end in `buf`.
    spans: Vec<(u32, u32)>,
}

impl Default for ChunkBuilder {
    fn default() -> Self {
        ChunkBuilder::with_capacity(0)
    }
}

impl ChunkBuilder {
    pub fn with_capacity(bytes: usize) -> ChunkBuilder {
        let mut buf = Vec::with_capacity(bytes.max(1));
        buf.push(CHUNK_TAG);
        ChunkBuilder {
            buf,
            spans: Vec::new(),
        }
    }

    /// Appends one event, written by `write` at the end of the buffer it is given.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        let start = self.buf.len();
        write(&mut self.buf);
        let len = self.buf.len() - start;
        self.buf[at..start].copy_from_slice(&(len as u32).to_le_bytes());
        self.spans.push((start as u32, self.buf.len() as u32));
    }

    /// Events in the chunk.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The stored form and where each event lies in it.
    pub fn into_parts(self) -> (Vec<u8>, Vec<(u32, u32)>) {
        (self.buf, self.spans)
    }
}

#[cfg(test)]
fn encode_chunk(events: &[impl AsRef<[u8]>]) -> Vec<u8> {
    let mut chunk = ChunkBuilder::default();
    for e in events {
        chunk.push_with(|buf| buf.extend_from_slice(e.as_ref()));
    }
    chunk.into_parts().0
}

/// The events of a stored chunk; `None` when it is cut short.
#[cfg(test)]
fn decode_chunk(value: &[u8]) -> Option<Vec<Vec<u8>>> {
    chunk_events(value, 0, usize::MAX)
}

/// Up to `take` events of a stored chunk after its first `skip`, copied; the others are stepped over by their
/// lengths. `None` when the chunk is cut short (anywhere: it is checked to its end, without copying).
fn chunk_events(value: &[u8], skip: u64, take: usize) -> Option<Vec<Vec<u8>>> {
    let Some((&CHUNK_TAG, mut rest)) = value.split_first() else {
        // One event, as earlier versions stored them.
        return Some(if skip == 0 && take > 0 {
            vec![value.to_vec()]
        } else {
            Vec::new()
        });
    };
    let mut out = Vec::new();
    let mut i = 0u64;
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        let event = tail.get(..len)?;
        if i >= skip && out.len() < take {
            out.push(event.to_vec());
        }
        rest = &tail[len..];
        i += 1;
    }
    Some(out)
}

/// How many events a stored chunk holds, without copying them.
fn chunk_len(value: &[u8]) -> Option<u64> {
    let Some((&CHUNK_TAG, mut rest)) = value.split_first() else {
        return Some(1);
    };
    let mut n = 0;
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        rest = tail.get(u32::from_le_bytes(*len) as usize..)?;
        n += 1;
    }
    Some(n)
}

fn corrupt_chunk(queue: &str) -> SpoolError {
    SpoolError::Storage {
        context: "reading webhook outcomes",
        detail: format!("a stored chunk of webhook queue {queue} is cut short"),
        temporary: false,
    }
}

fn split(key: &OutcomeKey) -> ([u8; 8], u64) {
    let mut run = [0u8; 8];
    run.copy_from_slice(&key[..8]);
    let mut suffix = [0u8; 8];
    suffix.copy_from_slice(&key[8..]);
    (run, u64::from_be_bytes(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    impl OutcomeStore {
        /// Runs `f` on the open keyspace: to write as an earlier version did.
        fn raw<T>(&self, f: impl FnOnce(&Parts) -> T) -> T {
            let guard = self.parts.read().unwrap();
            f(guard.as_ref().unwrap())
        }
    }

    fn key(run: u8, n: u64) -> OutcomeKey {
        let mut k = [0u8; 16];
        k[0] = run;
        k[8..].copy_from_slice(&n.to_be_bytes());
        k
    }

    #[test]
    fn outcomes_survive_reopen_and_prune_says_expired() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = OutcomeStore::open(dir.path()).unwrap();
            store
                .put(&[
                    (key(1, 1), 1_000, b"one".to_vec()),
                    (key(1, 2), 5_000, b"two".to_vec()),
                ])
                .unwrap();
            assert_eq!(store.len(), 2);
            store.sync().unwrap();
        }
        let store = OutcomeStore::open(dir.path()).unwrap();
        assert_eq!(
            store.lookup(&key(1, 1)).unwrap(),
            Lookup::Found(b"one".to_vec())
        );
        assert_eq!(store.prune(2_000, u64::MAX).unwrap(), 1);
        assert_eq!(store.lookup(&key(1, 1)).unwrap(), Lookup::Expired);
        assert_eq!(
            store.lookup(&key(1, 2)).unwrap(),
            Lookup::Found(b"two".to_vec())
        );
        assert_eq!(store.lookup(&key(1, 3)).unwrap(), Lookup::Unknown);
        assert_eq!(store.lookup(&key(2, 1)).unwrap(), Lookup::Unknown);
        drop(store);
        let store = OutcomeStore::open(dir.path()).unwrap();
        assert_eq!(store.lookup(&key(1, 1)).unwrap(), Lookup::Expired);
    }

    #[test]
    fn the_bound_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        let entries: Vec<_> = (1..=10)
            .map(|n| (key(1, n), n * 10, vec![n as u8]))
            .collect();
        store.put(&entries).unwrap();
        assert_eq!(store.prune(0, 4).unwrap(), 6);
        assert_eq!(store.len(), 4);
        assert_eq!(store.lookup(&key(1, 6)).unwrap(), Lookup::Expired);
        assert!(matches!(
            store.lookup(&key(1, 7)).unwrap(),
            Lookup::Found(_)
        ));
    }

    #[test]
    fn a_group_cut_by_the_bound_keeps_the_rest_and_old_single_key_index_entries_still_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        // As an earlier version wrote it: one index entry per outcome, the key inside the index key.
        store.raw(|p| {
            p.outcomes.insert(key(2, 1), b"old").unwrap();
            p.expiry.insert(expiry_key(500, &key(2, 1)), []).unwrap();
        });
        let entries: Vec<_> = (1..=6)
            .map(|n| (key(3, n), 1_000 + n, vec![n as u8]))
            .collect();
        store.put(&entries).unwrap();
        store.put(&[(key(3, 7), 9_000, vec![7])]).unwrap();
        // Nor did it store a count: the next open counts the index.
        store.raw(|p| p.meta.remove(COUNT_KEY).unwrap());
        drop(store);
        let store = OutcomeStore::open(dir.path()).unwrap();
        assert_eq!(store.len(), 8);
        // The bound first takes the old entry, then part of the second-1 group.
        assert_eq!(store.prune(0, 5).unwrap(), 3);
        assert_eq!(store.lookup(&key(2, 1)).unwrap(), Lookup::Expired);
        assert_eq!(store.lookup(&key(3, 2)).unwrap(), Lookup::Expired);
        assert!(matches!(
            store.lookup(&key(3, 3)).unwrap(),
            Lookup::Found(_)
        ));
        // The rest of that group goes with the retention, the later one stays.
        assert_eq!(store.prune(2_000, u64::MAX).unwrap(), 4);
        assert_eq!(store.lookup(&key(3, 6)).unwrap(), Lookup::Expired);
        assert!(matches!(
            store.lookup(&key(3, 7)).unwrap(),
            Lookup::Found(_)
        ));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn webhook_chunks_keep_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = OutcomeStore::open(dir.path()).unwrap();
            store
                .hook_append("a.example", 1, &encode_chunk(&[b"1", b"2"]))
                .unwrap();
            store
                .hook_append("a.example", 3, &encode_chunk(&[b"3"]))
                .unwrap();
            store
                .hook_append("b.example", 1, &encode_chunk(&[b"x"]))
                .unwrap();
            store.sync().unwrap();
        }
        let store = OutcomeStore::open(dir.path()).unwrap();
        let queue = |name: &str, head, chunks: &[(u64, u64)]| HookQueue {
            name: name.to_owned(),
            head,
            chunks: chunks.to_vec(),
        };
        assert_eq!(
            store.hook_queues().unwrap(),
            vec![
                queue("a.example", 0, &[(1, 2), (3, 1)]),
                queue("b.example", 0, &[(1, 1)])
            ]
        );
        let a = store.hook_chunks("a.example", 0, 0, 10).unwrap();
        assert_eq!(
            a,
            vec![
                HookChunk {
                    first_seq: 1,
                    events: vec![b"1".to_vec(), b"2".to_vec()]
                },
                HookChunk {
                    first_seq: 3,
                    events: vec![b"3".to_vec()]
                }
            ]
        );
        // Reading stops at the chunk that reaches the limit; from a chunk on, what is before it is not read.
        assert_eq!(store.hook_chunks("a.example", 0, 0, 2).unwrap().len(), 1);
        assert_eq!(store.hook_chunks("a.example", 3, 0, 10).unwrap(), a[1..]);
        // Events 1 and 2 done: their chunk goes, the number stays.
        store.hook_advance("a.example", 3, &[1]).unwrap();
        assert_eq!(store.hook_chunks("a.example", 0, 0, 10).unwrap(), a[1..]);
        assert_eq!(
            store.hook_queues().unwrap()[0],
            queue("a.example", 3, &[(3, 1)])
        );
        assert_eq!(store.hook_chunks("b.example", 0, 0, 10).unwrap().len(), 1);
        // A queue with every chunk done is still listed, with its number.
        store.hook_advance("a.example", 4, &[3]).unwrap();
        assert_eq!(store.hook_queues().unwrap()[0], queue("a.example", 4, &[]));
        // Forgotten, it is gone, with a chunk whose deletion was missed; the other queue stays.
        store
            .hook_append("a.example", 9, &encode_chunk(&[b"9"]))
            .unwrap();
        store.hook_forget("a.example", 4).unwrap();
        assert_eq!(
            store.hook_queues().unwrap(),
            vec![queue("b.example", 0, &[(1, 1)])]
        );
    }

    /// A stretch of chunks the sender keeps no list of is deleted by its range: the chunks wholly behind the head
    /// go, the one the head is in stays (and is where the stretch starts now), those after it stay; a chunk cut
    /// short goes once the head passed its first number. The other queues are not touched.
    #[test]
    fn webhook_chunks_of_a_stretch_are_deleted_by_its_range() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        for (first, events) in [(1, 2), (3, 3), (6, 1), (7, 2)] {
            let events: Vec<String> = (first..first + events).map(|i| i.to_string()).collect();
            store
                .hook_append("a.example", first, &encode_chunk(&events))
                .unwrap();
        }
        store
            .hook_append("b.example", 1, &encode_chunk(&[b"x"]))
            .unwrap();
        let chunks = |name: &str| {
            store
                .hook_queues()
                .unwrap()
                .into_iter()
                .find(|q| q.name == name)
                .map(|q| (q.head, q.chunks))
        };
        // Head 4: the chunk 1..3 goes, 3..6 holds the head.
        assert_eq!(
            store
                .hook_advance_over("a.example", 4, &[], &[(1, 4)])
                .unwrap(),
            vec![3]
        );
        assert_eq!(chunks("a.example"), Some((4, vec![(3, 3), (6, 1), (7, 2)])));
        // Head 7, exactly where a chunk starts: nothing before it stays, the stretch starts at the head.
        assert_eq!(
            store
                .hook_advance_over("a.example", 7, &[], &[(3, 7)])
                .unwrap(),
            vec![7]
        );
        assert_eq!(chunks("a.example"), Some((7, vec![(7, 2)])));
        // A chunk cut short after it, and the head past both: both go, with a chunk named by its number.
        let mut cut = encode_chunk(&[b"abc"]);
        cut.pop();
        store.raw(|p| p.webhook.insert(hook_key("a.example", 9), cut).unwrap());
        store
            .hook_append("a.example", 20, &encode_chunk(&[b"20"]))
            .unwrap();
        assert_eq!(
            store
                .hook_advance_over("a.example", 21, &[20], &[(7, 10), (10, 20)])
                .unwrap(),
            vec![10, 20]
        );
        assert_eq!(chunks("a.example"), Some((21, vec![])));
        assert_eq!(chunks("b.example"), Some((0, vec![(1, 1)])));
    }

    /// A prune does not hold the marks while it commits its deletions: lookups that miss the store take them. The
    /// marks are raised before the commit: an id the commit makes expired is never seen unknown.
    #[test]
    fn a_prune_does_not_hold_the_marks_through_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        store
            .put(&[
                (key(1, 2), 1_000, b"two".to_vec()),
                (key(1, 3), 1_000, b"three".to_vec()),
            ])
            .unwrap();
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let during = seen.clone();
        *lock(&store.before_prune_commit) = Some(Box::new(move |store: &OutcomeStore| {
            let free = store.watermarks.try_lock().is_ok();
            // Not yet deleted: found; never stored, below the mark being raised: expired already.
            let lookups = (store.lookup(&key(1, 3)), store.lookup(&key(1, 1)));
            lock(&during).push((free, lookups));
        }));
        assert_eq!(store.prune(2_000, u64::MAX).unwrap(), 2);
        let seen = lock(&seen);
        assert_eq!(seen.len(), 1);
        let (free, (found, below)) = &seen[0];
        assert!(free, "the marks were held through the commit");
        assert_eq!(found.as_ref().unwrap(), &Lookup::Found(b"three".to_vec()));
        assert_eq!(below.as_ref().unwrap(), &Lookup::Expired);
        assert_eq!(store.lookup(&key(1, 3)).unwrap(), Lookup::Expired);
        assert_eq!(store.lookup(&key(1, 4)).unwrap(), Lookup::Unknown);
        drop(seen);
        drop(store);
        let store = OutcomeStore::open(dir.path()).unwrap();
        assert_eq!(store.lookup(&key(1, 3)).unwrap(), Lookup::Expired);
    }

    /// A sender reading from a head inside a large chunk gets the events from the head on, at most its limit, and
    /// the next chunks' after them; a chunk wholly behind the head gives nothing.
    #[test]
    fn webhook_events_are_read_from_the_head_up_to_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        let big: Vec<String> = (1..=1000).map(|i| i.to_string()).collect();
        store
            .hook_append("a.example", 1, &encode_chunk(&big))
            .unwrap();
        store
            .hook_append("a.example", 1001, &encode_chunk(&[b"1001", b"1002"]))
            .unwrap();
        let events = |v: &[&str]| v.iter().map(|e| e.as_bytes().to_vec()).collect::<Vec<_>>();
        assert_eq!(
            store.hook_chunks("a.example", 1, 998, 2).unwrap(),
            vec![HookChunk {
                first_seq: 998,
                events: events(&["998", "999"])
            }]
        );
        assert_eq!(
            store.hook_chunks("a.example", 1, 999, 10).unwrap(),
            vec![
                HookChunk {
                    first_seq: 999,
                    events: events(&["999", "1000"])
                },
                HookChunk {
                    first_seq: 1001,
                    events: events(&["1001", "1002"])
                }
            ]
        );
        assert_eq!(
            store.hook_chunks("a.example", 1, 1002, 10).unwrap(),
            vec![HookChunk {
                first_seq: 1002,
                events: events(&["1002"])
            }]
        );
        assert!(
            store
                .hook_chunks("a.example", 1, 1003, 10)
                .unwrap()
                .is_empty()
        );
        // A chunk cut short is skipped whole, even when the events asked for lie before the cut.
        let mut cut = encode_chunk(&[b"a", b"b", b"c"]);
        cut.pop();
        assert_eq!(chunk_events(&cut, 0, 1), None);
        assert_eq!(
            chunk_events(&encode_chunk(&[b"a", b"b", b"c"]), 1, 1),
            Some(events(&["b"]))
        );
        // An event stored alone by an earlier version is one event.
        assert_eq!(chunk_events(br#"{"id":"x"}"#, 1, 10), Some(vec![]));
    }

    #[test]
    fn a_webhook_event_stored_alone_by_an_earlier_version_reads_as_a_chunk_of_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        store.raw(|p| {
            p.webhook
                .insert(hook_key("a.example", 7), br#"{"id":"x"}"#)
                .unwrap()
        });
        assert_eq!(
            store.hook_queues().unwrap(),
            vec![HookQueue {
                name: "a.example".into(),
                head: 0,
                chunks: vec![(7, 1)]
            }]
        );
        assert_eq!(
            store.hook_chunks("a.example", 0, 0, 10).unwrap()[0].events,
            vec![br#"{"id":"x"}"#.to_vec()]
        );
    }

    #[test]
    fn a_chunk_built_in_place_says_where_each_event_lies() {
        let mut chunk = ChunkBuilder::with_capacity(64);
        chunk.push_with(|b| b.extend_from_slice(b"{\"id\":1}"));
        chunk.push_with(|_| {});
        chunk.push_with(|b| b.extend_from_slice(b"xyz"));
        assert_eq!(chunk.len(), 3);
        let bytes = chunk.as_bytes().to_vec();
        assert_eq!(
            decode_chunk(&bytes),
            Some(vec![b"{\"id\":1}".to_vec(), vec![], b"xyz".to_vec()])
        );
        let (buf, spans) = chunk.into_parts();
        let events: Vec<&[u8]> = spans
            .iter()
            .map(|&(s, e)| &buf[s as usize..e as usize])
            .collect();
        assert_eq!(events, vec![&b"{\"id\":1}"[..], b"", b"xyz"]);
        assert!(ChunkBuilder::default().is_empty());
    }

    #[test]
    fn a_cut_chunk_is_skipped_and_named() {
        assert_eq!(
            decode_chunk(&encode_chunk(&[&b"ab"[..], b""])),
            Some(vec![b"ab".to_vec(), vec![]])
        );
        assert_eq!(chunk_len(&encode_chunk(&[&b"ab"[..], b"c"])), Some(2));
        let mut cut = encode_chunk(&[b"abc"]);
        cut.pop();
        assert_eq!(decode_chunk(&cut), None);
        assert_eq!(chunk_len(&cut), None);
        assert!(corrupt_chunk("a.example").to_string().contains("a.example"));
        // Stored, it is passed over: the queue goes on with the chunks after it.
        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        store.raw(|p| p.webhook.insert(hook_key("a.example", 1), cut).unwrap());
        store
            .hook_append("a.example", 2, &encode_chunk(&[b"ok"]))
            .unwrap();
        assert_eq!(store.hook_queues().unwrap()[0].chunks, vec![(2, 1)]);
        assert_eq!(
            store.hook_chunks("a.example", 0, 0, 10).unwrap(),
            vec![HookChunk {
                first_seq: 2,
                events: vec![b"ok".to_vec()]
            }]
        );
    }

    #[test]
    fn idempotency_answers_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        store.idempotent_put(b"k", 100, b"answer", true).unwrap();
        assert_eq!(
            store.idempotent_get(b"k", 50).unwrap(),
            Some(b"answer".to_vec())
        );
        assert_eq!(store.idempotent_get(b"k", 100).unwrap(), None);
        assert_eq!(store.prune_idempotency(100).unwrap(), 1);
        assert_eq!(store.idempotent_get(b"k", 50).unwrap(), None);
    }

    /// Restarted with its expiry index, prune and the deletions it leaves in the tree, the store counts exactly what
    /// it holds: the bound deletes nothing while fewer are stored.
    #[test]
    fn after_a_reopen_the_count_is_exact_and_the_bound_keeps_new_outcomes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = OutcomeStore::open(dir.path()).unwrap();
            for batch in 0..10u64 {
                let entries: Vec<_> = (0..100)
                    .map(|n| (key(1, batch * 100 + n), 1_000 + batch, vec![1u8; 64]))
                    .collect();
                store.put(&entries).unwrap();
            }
            assert_eq!(store.len(), 1_000);
            assert_eq!(store.prune(u64::MAX, u64::MAX).unwrap(), 1_000);
            assert_eq!(store.len(), 0);
            store.sync().unwrap();
        }
        let store = OutcomeStore::open(dir.path()).unwrap();
        assert_eq!(store.len(), 0);
        let entries: Vec<_> = (1..=100)
            .map(|n| (key(2, n), 50_000 + n, vec![2u8; 64]))
            .collect();
        store.put(&entries).unwrap();
        assert_eq!(store.len(), 100);
        assert_eq!(store.prune(0, 1_500).unwrap(), 0);
        for n in 1..=100 {
            assert!(matches!(
                store.lookup(&key(2, n)).unwrap(),
                Lookup::Found(_)
            ));
        }
        drop(store);
        let store = OutcomeStore::open(dir.path()).unwrap();
        assert_eq!(store.len(), 100);
        assert_eq!(store.prune(0, 40).unwrap(), 60);
        assert_eq!(store.len(), 40);
    }

    /// A tick of the idempotency prune reads only the expired keys (through their expiry index), in bounded
    /// batches; a key stored again keeps its newer answer.
    #[test]
    fn the_idempotency_prune_visits_only_expired_keys() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        let expiring = IDEMPOTENCY_BATCH as u64 + 44;
        for n in 0..expiring {
            store
                .idempotent_put(format!("k{n}").as_bytes(), 1_000, b"answer", false)
                .unwrap();
        }
        store
            .idempotent_put(b"late", 5_000, b"later", true)
            .unwrap();
        let nothing = IdempotencyPruned::default();
        assert_eq!(store.prune_idempotency_counted(999).unwrap(), nothing);
        assert_eq!(
            store.prune_idempotency_counted(1_000).unwrap(),
            IdempotencyPruned {
                deleted: expiring,
                visited: expiring
            }
        );
        assert_eq!(store.idempotent_get(b"k0", 0).unwrap(), None);
        assert_eq!(store.raw(|p| p.idempotency.len().unwrap()), 1);
        assert_eq!(store.prune_idempotency_counted(1_000).unwrap(), nothing);
        assert_eq!(
            store.idempotent_get(b"late", 1_000).unwrap(),
            Some(b"later".to_vec())
        );
        // Stored again with a later expiry: its first index entry goes, the answer stays.
        store
            .idempotent_put(b"again", 2_000, b"first", false)
            .unwrap();
        store
            .idempotent_put(b"again", 8_000, b"second", false)
            .unwrap();
        assert_eq!(
            store.prune_idempotency_counted(3_000).unwrap(),
            IdempotencyPruned {
                deleted: 0,
                visited: 1
            }
        );
        assert_eq!(
            store.idempotent_get(b"again", 3_000).unwrap(),
            Some(b"second".to_vec())
        );
        assert_eq!(store.prune_idempotency(8_000).unwrap(), 2);
        assert_eq!(store.raw(|p| p.idempotency.len().unwrap()), 0);
        assert_eq!(store.raw(|p| p.idempotency_expiry.len().unwrap()), 0);
    }

    /// Answers stored by a version without the idempotency expiry index are indexed at the first open, and expire.
    #[test]
    fn idempotency_keys_of_an_earlier_version_still_expire() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = OutcomeStore::open(dir.path()).unwrap();
            store.raw(|p| {
                let mut old = 1_000u64.to_be_bytes().to_vec();
                old.extend_from_slice(b"answer");
                p.idempotency.insert(b"old", old).unwrap();
                p.idempotency.insert(b"cut", b"x").unwrap();
                p.meta.remove(IDEMPOTENCY_INDEX_KEY).unwrap();
            });
            store.sync().unwrap();
        }
        let store = OutcomeStore::open(dir.path()).unwrap();
        assert_eq!(
            store.idempotent_get(b"old", 999).unwrap(),
            Some(b"answer".to_vec())
        );
        // A value too short to hold its expiry has expired, as a lookup reads it.
        assert_eq!(store.prune_idempotency(999).unwrap(), 1);
        assert_eq!(store.prune_idempotency(1_000).unwrap(), 1);
        assert_eq!(store.raw(|p| p.idempotency.len().unwrap()), 0);
        drop(store);
        // Indexed once: the next open reads nothing.
        let store = OutcomeStore::open(dir.path()).unwrap();
        assert_eq!(store.raw(|p| p.idempotency_expiry.len().unwrap()), 0);
        assert_eq!(
            store.prune_idempotency_counted(u64::MAX).unwrap(),
            IdempotencyPruned::default()
        );
    }

    /// Writes refused for a test fail as on a failing disk (a temporary error, the store reopened when due); once
    /// they are taken again, nothing stored before is lost and the count is exact.
    #[test]
    fn refused_writes_fail_as_on_a_failing_disk_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            OutcomeStore::open_with(dir.path(), Duration::from_millis(1), Tuning::default())
                .unwrap();
        store.put(&[(key(1, 1), 1_000, b"before")]).unwrap();
        store.refuse_writes(true);
        let refused = store.put(&[(key(1, 2), 1_000, b"refused")]).unwrap_err();
        assert!(refused.is_temporary(), "{refused}");
        assert!(
            refused.to_string().contains("writing outcomes"),
            "{refused}"
        );
        assert!(store.hook_append("a.example", 1, b"x").is_err());
        assert_eq!(store.writes_refused(), 2);
        // Reads go on meanwhile.
        assert_eq!(
            store.lookup(&key(1, 1)).unwrap(),
            Lookup::Found(b"before".to_vec())
        );
        store.refuse_writes(false);
        std::thread::sleep(Duration::from_millis(2));
        store.put(&[(key(1, 2), 1_000, b"after")]).unwrap();
        assert_eq!(
            store.lookup(&key(1, 2)).unwrap(),
            Lookup::Found(b"after".to_vec())
        );
        assert_eq!(store.len(), 2);
        store.sync().unwrap();
    }

    /// Far longer than any step here takes: only a read that waits for a reopen runs into it.
    const HANG: Duration = Duration::from_secs(60);

    /// A reopen that fails after closing the keyspace leaves the store closed: reads (some on async threads) fail
    /// at once with a temporary error and do not reopen it, however due a reopen is; the next write reopens it.
    #[test]
    fn a_read_of_a_closed_store_fails_at_once_and_the_next_write_reopens_it() {
        let dir = tempfile::tempdir().unwrap();
        // Every reopen is due at once.
        let store = OutcomeStore::open_with(dir.path(), Duration::ZERO, Tuning::default()).unwrap();
        store.put(&[(key(1, 1), 1_000, b"before")]).unwrap();
        store
            .idempotent_put(b"k", u64::MAX, b"answer", false)
            .unwrap();
        // The keyspace cannot be opened again for now (fjall refuses a marker it does not know).
        let marker = dir.path().join(OUTCOMES_DIR).join("version");
        let intact = std::fs::read(&marker).unwrap();
        std::fs::write(&marker, b"not fjall").unwrap();
        store.refuse_writes(true);
        assert!(store.put(&[(key(1, 2), 1_000, b"refused")]).is_err());
        store.refuse_writes(false);
        assert!(store.put(&[(key(1, 2), 1_000, b"closed")]).is_err());
        assert!(store.parts.read().unwrap().is_none(), "closed");

        // The keyspace could be opened again now: reads still do not do it.
        std::fs::write(&marker, intact).unwrap();
        let e = store.lookup(&key(1, 1)).unwrap_err();
        assert!(e.is_temporary(), "{e}");
        assert!(e.to_string().contains("closed"), "{e}");
        let e = store.idempotent_get(b"k", 0).unwrap_err();
        assert!(e.is_temporary(), "{e}");
        assert!(store.hook_queues().is_err());
        assert!(store.parts.read().unwrap().is_none(), "still closed");

        store.put(&[(key(1, 3), 1_000, b"after")]).unwrap();
        assert_eq!(
            store.lookup(&key(1, 1)).unwrap(),
            Lookup::Found(b"before".to_vec())
        );
        assert_eq!(
            store.lookup(&key(1, 3)).unwrap(),
            Lookup::Found(b"after".to_vec())
        );
        assert_eq!(
            store.idempotent_get(b"k", 0).unwrap(),
            Some(b"answer".to_vec())
        );
        assert_eq!(store.len(), 2);
    }

    /// A read does not wait for a reopen under way (which holds the keyspace's lock while it opens it, recovering its
    /// journal): it fails at once with a temporary error.
    #[test]
    fn a_read_does_not_wait_for_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(OutcomeStore::open(dir.path()).unwrap());
        store.put(&[(key(1, 1), 1_000, b"stored")]).unwrap();
        let reopening = store.parts.write().unwrap();
        let (done, answer) = std::sync::mpsc::channel();
        let reader = std::sync::Arc::clone(&store);
        std::thread::spawn(move || {
            let _ = done.send(reader.lookup(&key(1, 1)));
        });
        let read = answer.recv_timeout(HANG);
        drop(reopening);
        let e = read
            .expect("a read answers while a reopen holds the lock")
            .unwrap_err();
        assert!(e.is_temporary(), "{e}");
        assert!(e.to_string().contains("being reopened"), "{e}");
        assert_eq!(
            store.lookup(&key(1, 1)).unwrap(),
            Lookup::Found(b"stored".to_vec())
        );
    }

    use herald_testkit::tmpfs::mount as tmpfs;

    /// Writes a file in `dir` until its file system is full.
    fn fill(dir: &Path) -> std::path::PathBuf {
        use std::io::Write;
        let path = dir.join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let chunk = vec![7u8; 64 << 10];
        loop {
            if let Err(e) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
                assert_eq!(e.raw_os_error(), Some(28), "filling: {e}");
                return path;
            }
        }
    }

    /// fjall refuses every write after one failed; the store reopens its keyspace once the disk has room, without
    /// a restart, and keeps what it held.
    #[test]
    fn after_a_full_disk_the_store_takes_writes_again_once_there_is_room() {
        let dir = tempfile::tempdir().unwrap();
        let spool = dir.path().join("spool");
        let Some(_mount) = tmpfs(&spool, "8m") else {
            return;
        };
        // Reopens that fail are not tried again within the hour: the one that succeeds is not due to the interval.
        let store =
            OutcomeStore::open_with(&spool, Duration::from_secs(3600), Tuning::default()).unwrap();
        store.put(&[(key(1, 0), 1_000, b"before")]).unwrap();
        let filler = fill(&spool);
        // The filler may leave a few blocks the first writes still fit in.
        let mut n = 0;
        let refused = loop {
            n += 1;
            match store.put(&[(key(1, n), 1_000, [0u8; 4096])]) {
                Ok(()) => assert!(n < 10_000, "a full disk never refused a write"),
                Err(e) => break e,
            }
        };
        assert!(refused.is_disk_full(), "{refused}");
        let chunk = encode_chunk(&[b"event"]);
        assert!(
            store
                .idempotent_put(b"k", u64::MAX, b"answer", true)
                .is_err()
        );
        assert!(store.hook_append("a.example", 1, &chunk).is_err());

        std::fs::remove_file(&filler).unwrap();
        // The first write still meets the refusing keyspace and finds room; the next one reopens it (the outcome
        // writers try again until a write is stored).
        let after = [(key(2, 1), 2_000, b"after")];
        if let Err(e) = store.put(&after) {
            assert!(!e.is_disk_full(), "{e}");
            store.put(&after).unwrap();
        }
        store
            .idempotent_put(b"k", u64::MAX, b"answer", true)
            .unwrap();
        store.hook_append("a.example", 1, &chunk).unwrap();

        // What it held is still there, counted exactly.
        let held = |store: &OutcomeStore| {
            (0..=n)
                .filter(|&i| matches!(store.lookup(&key(1, i)).unwrap(), Lookup::Found(_)))
                .count() as u64
        };
        assert_eq!(
            store.lookup(&key(1, 0)).unwrap(),
            Lookup::Found(b"before".to_vec())
        );
        assert_eq!(store.len(), held(&store) + 1);
        store.sync().unwrap();
        drop(store);
        let store = OutcomeStore::open(&spool).unwrap();
        assert_eq!(
            store.lookup(&key(2, 1)).unwrap(),
            Lookup::Found(b"after".to_vec())
        );
        assert_eq!(store.len(), held(&store) + 1);
        assert_eq!(
            store.idempotent_get(b"k", 0).unwrap(),
            Some(b"answer".to_vec())
        );
        assert_eq!(store.hook_queues().unwrap()[0].chunks, vec![(1, 1)]);
    }

    /// Journal files in `spool_dir/outcomes/journals` and the bytes they take on disk (fjall makes each one 32 MiB
    /// long, sparse: what it holds is what is allocated).
    fn journals_on_disk(spool_dir: &Path) -> (usize, u64) {
        use std::os::unix::fs::MetadataExt;
        let mut files = 0;
        let mut bytes = 0;
        for entry in std::fs::read_dir(spool_dir.join(OUTCOMES_DIR).join("journals")).unwrap() {
            // fjall deletes journal files while the store works: one listed may be gone by now.
            let Ok(metadata) = entry.and_then(|e| e.metadata()) else {
                continue;
            };
            files += 1;
            bytes += metadata.blocks() * 512;
        }
        (files, bytes)
    }

    /// Outcomes written at a steady rate, with the small partitions (expiry index, count, webhook heads,
    /// idempotency answers) written alongside as herald writes them: once the memtables are flushed, the journal
    /// files written before are deleted, so the journal stays within a few times the sealing size. With fjall left
    /// to itself, the small partitions kept every journal file until the journal reached 256 MiB.
    #[test]
    fn journal_files_are_freed_as_the_outcomes_are_written() {
        const SEAL: u64 = 256 << 10;
        let dir = tempfile::tempdir().unwrap();
        let tuning = Tuning {
            seal_bytes: SEAL,
            journal_files: 4,
            ..Tuning::default()
        };
        let store = OutcomeStore::open_with(dir.path(), REOPEN_INTERVAL, tuning).unwrap();
        let value = vec![0x5a; 4096];
        let mut n = 0;
        // 8 MiB of outcomes, 32 times the sealing size.
        for round in 0..128u64 {
            let entries: Vec<_> = (0..16)
                .map(|_| {
                    n += 1;
                    (key(1, n), 1_000 * round, value.clone())
                })
                .collect();
            store.put(&entries).unwrap();
            store
                .idempotent_put(&round.to_be_bytes(), u64::MAX, b"answer", false)
                .unwrap();
            store.hook_advance("a.example", round, &[]).unwrap();
        }
        let written = n * value.len() as u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (files, bytes) = journals_on_disk(dir.path());
            if files <= tuning.journal_files && bytes <= 3 * SEAL {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{files} journal files with {bytes} bytes after writing {written} bytes of outcomes \
                 (sealed at {SEAL})"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Nothing was lost with the journal files.
        assert!(matches!(
            store.lookup(&key(1, 1)).unwrap(),
            Lookup::Found(_)
        ));
        assert!(matches!(
            store.lookup(&key(1, n)).unwrap(),
            Lookup::Found(_)
        ));
        assert_eq!(store.len(), n);
        drop(store);
        let store = OutcomeStore::open(dir.path()).unwrap();
        assert_eq!(store.len(), n);
        assert_eq!(store.hook_queues().unwrap()[0].head, 127);
    }

    /// A store created by an earlier herald (fjall's default options, 16 MiB memtables stored with each partition)
    /// opens with what it holds, its partitions' memtable size raised out of fjall's reach, so that fjall never
    /// seals a memtable inside a write (where it could wait without end for compaction).
    #[test]
    fn a_store_of_an_earlier_version_opens_with_its_memtable_size_raised() {
        let dir = tempfile::tempdir().unwrap();
        let outcomes_dir = dir.path().join(OUTCOMES_DIR);
        {
            let keyspace = Config::new(&outcomes_dir).open().unwrap();
            for name in PARTITIONS {
                keyspace
                    .open_partition(name, PartitionCreateOptions::default())
                    .unwrap();
            }
            let outcomes = keyspace
                .open_partition("outcomes", PartitionCreateOptions::default())
                .unwrap();
            outcomes.insert(key(4, 1), b"kept").unwrap();
            keyspace.persist(PersistMode::SyncAll).unwrap();
        }
        let memtable_size = |name: &str| {
            let config =
                std::fs::read(outcomes_dir.join("partitions").join(name).join("config")).unwrap();
            u32::from_be_bytes(config[6..10].try_into().unwrap())
        };
        assert_eq!(memtable_size("meta"), 16 << 20);
        let store = OutcomeStore::open(dir.path()).unwrap();
        assert_eq!(
            store.lookup(&key(4, 1)).unwrap(),
            Lookup::Found(b"kept".to_vec())
        );
        store.put(&[(key(4, 2), 1_000, b"new")]).unwrap();
        for name in PARTITIONS {
            assert_eq!(memtable_size(name), UNBOUNDED_MEMTABLE, "{name}");
        }
        drop(store);
        let store = OutcomeStore::open(dir.path()).unwrap();
        assert_eq!(
            store.lookup(&key(4, 2)).unwrap(),
            Lookup::Found(b"new".to_vec())
        );
    }
}
