//! The `Spool` trait herald holds as `Arc<dyn Spool>`, and the figures and reports it returns.

use std::future::Future;
use std::ops::ControlFlow;
use std::pin::Pin;

use crate::error::SpoolError;
use crate::key::SpoolKey;
use crate::record::StoredNotification;

/// The future of an append, flush or close. It does not borrow the spool: the work is submitted when the method is
/// called, and the future only waits for its outcome.
pub type SpoolFuture<T> = Pin<Box<dyn Future<Output = Result<T, SpoolError>> + Send + 'static>>;

/// A durable queue of notifications.
///
/// Order of use: open, then `append` for each accepted batch, `reschedule` after a transient failure, `remove` after a
/// final outcome, and `close` on shutdown. [`Spool::recover_each`] reads what the spool held when it was opened; it
/// may run while the spool already serves new appends (they are not visited).
pub trait Spool: Send + Sync + 'static {
    /// A fresh key, greater than every key issued before, also by earlier runs on the same store.
    fn next_key(&self) -> SpoolKey;

    /// Stores `batch`. The returned future resolves once the whole batch is durable (fsync'd), or with an error,
    /// in which case nothing of the batch may be acknowledged. Concurrent appends share one commit.
    fn append(&self, batch: Vec<StoredNotification>) -> SpoolFuture<()>;

    /// [`Spool::append`] for a request that may be retried after a refusal (one with an `Idempotency-Key`): each
    /// notification is stored under an identity made of `dedup` and its key, the same whichever node stores it, so
    /// that a spool that can take part of a batch before failing (NATS JetStream) drops, within its duplicate
    /// window, a copy of one it took already, and counts it as stored. A spool whose appends are all or nothing
    /// (the embedded one) stores the batch as `append` does.
    fn append_deduplicated(&self, batch: Vec<StoredNotification>, _dedup: &str) -> SpoolFuture<()> {
        self.append(batch)
    }

    /// Records the delivery state after a transient failure. Not waited on: after a crash an older state may come
    /// back.
    fn reschedule(&self, key: SpoolKey, retries: u32, next_attempt_ms: u64);

    /// Forgets notifications that reached a final outcome. Not waited on: after a crash a removed notification may
    /// come back (at-least-once delivery). The disk spool writes removals out within its maintenance interval
    /// (10 ms by default), so that a crash of the process brings back only the last few.
    fn remove(&self, keys: &[SpoolKey]);

    /// The greatest key the spool held when it was opened, or listed as refused (`spool_dir/refused-keys`), if
    /// greater (`None` when there is neither). Recovery visits keys up to it; every key issued afterwards, by
    /// [`Spool::next_key`] or by the caller, must be greater, so that no new notification takes a key whose deletion
    /// is still due.
    fn recovery_bound(&self) -> Option<SpoolKey>;

    /// Visits every notification stored when the spool was opened (keys up to [`Spool::recovery_bound`]) in key
    /// order, with its latest schedule, until `visit` breaks. Records that fail their checksum or cannot be decoded
    /// are skipped with a warning, counted in the report, and deleted; records a newer herald wrote are counted
    /// apart and kept, not visited, with one warning. Appends, reschedules and removals may run
    /// concurrently: a notification removed after it was visited is simply gone. Blocking: call it from a blocking
    /// thread.
    fn recover_each(
        &self,
        visit: &mut dyn FnMut(StoredNotification) -> ControlFlow<()>,
    ) -> Result<RecoveryReport, SpoolError>;

    /// Every stored notification in key order (see [`Spool::recover_each`], which avoids holding them all twice).
    fn recover(&self) -> Result<Recovered, SpoolError> {
        let mut notifications = Vec::new();
        let report = self.recover_each(&mut |n| {
            notifications.push(n);
            ControlFlow::Continue(())
        })?;
        Ok(Recovered {
            notifications,
            report,
        })
    }

    /// Counters and sizes, cheap to call.
    fn stats(&self) -> SpoolStats;

    /// Why the spool refuses writes, while it does (see [`SpoolStats::unwritable`]).
    fn write_error(&self) -> Option<SpoolError> {
        None
    }

    /// Takes a notification back to deliver it again after `delay` (by any node), so that the caller forgets
    /// it. False when the spool cannot (the embedded one: the caller keeps it and calls `reschedule`).
    fn hand_back(&self, _key: SpoolKey, _delay: std::time::Duration) -> bool {
        false
    }

    /// Asked right before a held notification is sent (a first attempt or a later one): true when this node no
    /// longer owns it, and the spool forgot it without an ack, so that the caller forgets it too and does not send
    /// it. The JetStream spool: its claim on the notification was not renewed for about the consumer's ack wait
    /// (the node was stopped, or NATS unreachable), and JetStream gives it, or has given it, to another node. A
    /// spool that does not share its notifications always owns them (false). Cheap while every claim is alive:
    /// called for every notification sent.
    fn lapsed(&self, _key: SpoolKey) -> bool {
        false
    }

    /// The caller now parks `delta` more notifications (fewer when negative): it holds them without sending
    /// them for now, their queue paused or without a route. Returns how many of all parked ones are above what
    /// the spool lets the node park, for the caller to hand back. A spool that does not share its work with
    /// other nodes lets it park everything (0).
    fn park(&self, _delta: i64) -> usize {
        0
    }

    /// The shared stream's figures, for a spool on NATS JetStream (`None` for the embedded spool).
    fn stream_stats(&self) -> Option<crate::jetstream::JetStreamStats> {
        None
    }

    /// The stream's servers and the nodes sharing it, for a spool on NATS JetStream (`None` for the embedded spool).
    fn cluster_view(&self) -> Option<crate::nodes::ClusterView> {
        None
    }

    /// Makes every reschedule and removal issued so far durable.
    fn flush(&self) -> SpoolFuture<()>;

    /// Flushes, then stops the writer: later appends fail with [`SpoolError::Closed`].
    fn close(&self) -> SpoolFuture<()>;
}

/// What a recovery found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    /// Notifications handed to the visitor.
    pub recovered: u64,
    /// Records skipped because they were corrupt or torn (their checksum or structure is wrong), deleted.
    pub skipped: u64,
    /// Records kept, neither delivered nor deleted, because a newer herald wrote them (a newer format version, or
    /// fields this build does not know): they wait for that herald.
    pub newer_format: u64,
    /// Schedules whose record no longer exists (removed earlier), deleted.
    pub orphan_schedules: u64,
}

/// The notifications a recovery found, in key order.
#[derive(Debug, Clone, Default)]
pub struct Recovered {
    pub notifications: Vec<StoredNotification>,
    pub report: RecoveryReport,
}

/// Figures about a spool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SpoolStats {
    /// Notifications stored now: those found by recovery (also those kept for a newer herald) plus those appended
    /// since, less those removed (once the removals are committed). Before recovery it counts only this run's appends.
    pub records: u64,
    /// Size of the store's files.
    pub bytes_on_disk: u64,
    /// Durable commits made (one per group of concurrent appends).
    pub commits: u64,
    /// Commits that failed.
    pub failed_commits: u64,
    /// Calls to `append` so far, and notifications they carried.
    pub append_calls: u64,
    pub appended: u64,
    /// Reschedules and removals requested.
    pub rescheduled: u64,
    pub removed: u64,
    /// The store refuses writes (a commit failed, for lack of space or an I/O error): appends are refused while the
    /// spool retries in the background; removals and reschedules wait in memory. Cleared by the next commit that
    /// succeeds.
    pub unwritable: bool,
    /// ...because its disk is full.
    pub disk_full: bool,
    /// Removals of notifications that reached a final outcome, waiting for a commit.
    pub pending_removals: u64,
}
