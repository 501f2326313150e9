//! The storage engine behind [`crate::DiskSpool`]: an ordered key-value store with two tables and atomic, durable
//! commits. The spool's writer thread is its only writer; recovery reads it from other threads.

use std::ops::ControlFlow;

use crate::error::SpoolError;
use crate::key::SpoolKey;
use crate::record::SCHEDULE_LEN;

/// The two tables a spool keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Encoded [`crate::StoredNotification`]s by key.
    Records,
    /// Encoded [`crate::Schedule`]s by key, for notifications rescheduled since they were appended.
    Schedules,
}

/// What one commit writes, applied in this order: inserts, schedules, removals.
#[derive(Debug, Default)]
pub struct CommitBatch {
    pub inserts: Vec<(SpoolKey, Vec<u8>)>,
    pub schedules: Vec<(SpoolKey, [u8; SCHEDULE_LEN])>,
    /// Keys to delete from [`Table::Records`].
    pub removes: Vec<SpoolKey>,
    /// Keys to delete from [`Table::Schedules`] (only those known to have a schedule, so that a notification
    /// delivered at its first attempt costs one deletion, not two).
    pub unschedules: Vec<SpoolKey>,
    /// Make the commit durable (fsync) before returning. When false it only has to reach the operating system:
    /// it survives a crash of the process, and the next synced commit or [`Engine::sync`] makes it durable.
    pub sync: bool,
}

impl CommitBatch {
    pub fn is_empty(&self) -> bool {
        self.inserts.is_empty()
            && self.schedules.is_empty()
            && self.removes.is_empty()
            && self.unschedules.is_empty()
    }

    pub fn clear(&mut self) {
        self.sync = false;
        self.inserts.clear();
        self.schedules.clear();
        self.removes.clear();
        self.unschedules.clear();
    }
}

/// An embedded ordered key-value store with durable atomic commits.
pub trait Engine: Send + Sync + 'static {
    /// A short name for logs and benchmarks.
    fn name(&self) -> &'static str;

    /// Applies `batch` atomically; with `batch.sync`, makes it durable (fsync) before returning. On error nothing
    /// of the batch is applied and everything committed before is intact.
    fn commit(&self, batch: &CommitBatch) -> Result<(), SpoolError>;

    /// Makes every commit so far durable (fsync).
    fn sync(&self) -> Result<(), SpoolError>;

    /// Visits the entries of `table` with keys up to `upto` (inclusive) in key order, until `visit` breaks.
    ///
    /// `visit` may take long (recovery hands each record to herald, which may wait for room in memory): an engine
    /// that [`Engine::reopen`]s must not keep the store locked, nor an iterator open, across calls to it. The scan
    /// need not be one snapshot: it may see commits made while it runs (keys up to `upto` are only ever removed
    /// meanwhile, and a removed entry not yet visited is then not visited).
    fn scan(
        &self,
        table: Table,
        upto: SpoolKey,
        visit: &mut dyn FnMut(SpoolKey, &[u8]) -> ControlFlow<()>,
    ) -> Result<(), SpoolError>;

    /// The greatest key in `table`.
    fn last_key(&self, table: Table) -> Result<Option<SpoolKey>, SpoolError>;

    /// Bytes the store occupies on disk, as last measured: returns at once, whatever the store is doing. It is
    /// called on async threads (`/readyz`, `/metrics`, the dashboard), where waiting for a lock the store holds
    /// through a write and its fsync (fjall's journal) would stop a worker thread for as long as a failing disk
    /// takes to answer. An engine whose measurement may wait measures in [`Engine::commit`] and
    /// [`Engine::refresh_disk_bytes`], on the writer thread.
    fn disk_bytes(&self) -> u64;

    /// Measures what [`Engine::disk_bytes`] reports, which may wait for the store. Called by the spool's writer
    /// thread between commits, about every second (also when idle: the store's background work changes its size),
    /// never on an async thread. The default has nothing to do.
    fn refresh_disk_bytes(&self) {}

    /// The spool is stopping ([`crate::DiskSpool`]'s close or drop; called from another thread than the writer's):
    /// from now on a commit, and one waiting now, must not wait for the store's background work (flushes,
    /// compactions) to catch up, so that the last commits take no longer than their writes and herald's stop, which
    /// waits for them only so long, does not give up on them. The default has nothing to do.
    fn stop_waiting(&self) {}

    /// Makes the store take writes again after a commit failed (disk full, I/O error): checks there is room and
    /// reopens it if it needs that. Fails, changing nothing that was committed, while the condition lasts. Called by
    /// the spool's writer thread only; the default has nothing to do.
    fn reopen(&self) -> Result<(), SpoolError> {
        Ok(())
    }
}
