//! The outcome store's share of fjall's upkeep: when its memory tables are sealed and handed to be flushed, so that
//! its journal files are freed within a bounded size, and how long a write waits for flushes and compactions.
//!
//! A journal file is deleted only once every partition that wrote to it has flushed what it wrote. The store's small
//! partitions (the expiry index, the count, the pruned marks, the webhook heads…) hold a few bytes each in memory
//! and, left to fjall, are flushed only when its journal passes half of its limit (256 MiB with fjall's default): each
//! one kept every journal file since its last flush. So the memory tables are sealed together: all of them (those
//! that hold anything) once they hold [`SEAL_BYTES`] between them, and also once the journal has more than
//! [`JOURNAL_FILES`] files while no flush is under way. When those flushes are done, every journal file sealed
//! before them is deleted.
//!
//! fjall's own write stalls are kept out of the store's writes, as the spool keeps them out of its own (see
//! `fjall_engine`): its write-buffer and journal limits are out of reach, and so is each partition's memtable size
//! (also for partitions an earlier herald created: [`lift_memtable_limit`]). A write waits here instead, before it
//! is made, while flushes or compactions are behind, for at most [`STALL_WAIT`], and fails at once when the store
//! refuses writes (a flush or compaction that failed for want of room stops fjall's worker for good).

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fjall::{AbstractTree, Keyspace, PartitionHandle, PersistMode};

use crate::error::SpoolError;
use crate::fjall_engine::{LEVEL0_RUNS, WRITE_BUFFER_BYTES};

/// The memory tables are sealed together once they hold this many bytes between them (fjall's default memtable
/// size): the journal written meanwhile is about as large.
pub const SEAL_BYTES: u64 = 16 << 20;
/// The memory tables are sealed together, when no flush is under way, once the journal has more files than this
/// (those an earlier sealing left: each sealed memtable starts a journal file, and a write made while the others
/// were sealed keeps them until the next sealing).
pub const JOURNAL_FILES: usize = 8;
/// The longest a write waits for flushes or compactions to catch up; then it is made regardless (nothing in fjall
/// waits after it).
pub const STALL_WAIT: Duration = Duration::from_secs(5);
/// How often a waiting write looks again.
const STALL_POLL: Duration = Duration::from_millis(10);

/// The bounds of [`Upkeep`]: the constants above, which tests make smaller.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tuning {
    pub(crate) seal_bytes: u64,
    pub(crate) journal_files: usize,
    pub(crate) write_buffer_bytes: u64,
    pub(crate) stall_wait: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            seal_bytes: SEAL_BYTES,
            journal_files: JOURNAL_FILES,
            write_buffer_bytes: WRITE_BUFFER_BYTES,
            stall_wait: STALL_WAIT,
        }
    }
}

/// Seals the store's memory tables and holds writes back while it is behind (see the module documentation).
#[derive(Debug)]
pub(crate) struct Upkeep {
    tuning: Tuning,
    /// Held while sealing, so that two writers do not seal the same tables one after the other.
    sealing: Mutex<()>,
}

impl Upkeep {
    pub(crate) fn new(tuning: Tuning) -> Upkeep {
        Upkeep {
            tuning,
            sealing: Mutex::new(()),
        }
    }

    /// Makes room before a write: seals the memory tables when due ([`Upkeep::relieve`]), then waits while the
    /// store is behind, for at most `stall_wait`. Fails at once when the store refuses writes.
    pub(crate) fn admit(
        &self,
        keyspace: &Keyspace,
        partitions: &[&PartitionHandle],
    ) -> Result<(), fjall::Error> {
        self.relieve(keyspace, partitions)?;
        let Some(mut why) = self.behind(keyspace, partitions) else {
            return Ok(());
        };
        let deadline = Instant::now() + self.tuning.stall_wait;
        loop {
            // Refused with `Poisoned` once a write, flush or compaction failed; otherwise it only hands the
            // journal's buffer to the operating system.
            keyspace.persist(PersistMode::Buffer)?;
            if Instant::now() >= deadline {
                tracing::warn!(
                    "outcome store: writing although the store is still behind after {:?} ({why})",
                    self.tuning.stall_wait
                );
                return Ok(());
            }
            std::thread::sleep(STALL_POLL);
            self.relieve(keyspace, partitions)?;
            match self.behind(keyspace, partitions) {
                Some(still) => why = still,
                None => return Ok(()),
            }
        }
    }

    /// Seals every memory table that holds anything, when they hold `seal_bytes` between them, or when the journal
    /// has more than `journal_files` files and no sealed table waits to be flushed.
    pub(crate) fn relieve(
        &self,
        keyspace: &Keyspace,
        partitions: &[&PartitionHandle],
    ) -> Result<(), fjall::Error> {
        let _sealing = self.sealing.lock().unwrap_or_else(|p| p.into_inner());
        let active: u64 = partitions
            .iter()
            .map(|p| u64::from(p.tree.active_memtable_size()))
            .sum();
        let full = active >= self.tuning.seal_bytes;
        let flushing = partitions
            .iter()
            .any(|p| p.tree.sealed_memtable_count() > 0);
        let journal_long = !flushing && keyspace.journal_count() > self.tuning.journal_files;
        if !(full || journal_long) {
            return Ok(());
        }
        for partition in partitions {
            if partition.tree.active_memtable_size() > 0 {
                // An error leaves the store to be reopened (the outcome store does that after a failed write): its
                // journal still holds everything the memtable did.
                partition.rotate_memtable()?;
            }
        }
        Ok(())
    }

    /// What the store is behind with, if a write should wait for it.
    fn behind(&self, keyspace: &Keyspace, partitions: &[&PartitionHandle]) -> Option<&'static str> {
        if keyspace.write_buffer_size() > self.tuning.write_buffer_bytes {
            return Some("memtables waiting to be flushed");
        }
        if partitions
            .iter()
            .any(|p| p.tree.l0_run_count() >= LEVEL0_RUNS)
        {
            return Some("segments waiting to be compacted");
        }
        None
    }
}

/// Raises the memtable size stored for partition `name` of the outcome store's keyspace in `keyspace_dir`
/// ([`crate::fjall_engine::raise_stored_memtable_size`]), saying so in the log.
pub(crate) fn lift_memtable_limit(
    keyspace_dir: &Path,
    name: &str,
    context: &'static str,
) -> Result<(), SpoolError> {
    if let Some(path) =
        crate::fjall_engine::raise_stored_memtable_size(keyspace_dir, name, context)?
    {
        tracing::info!(
            "outcome store: raised the memtable size stored in {} (memtables are sealed by herald)",
            path.display()
        );
    }
    Ok(())
}
