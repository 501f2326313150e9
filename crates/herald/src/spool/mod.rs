//! The bridge between the queue and herald-spool: accepted notifications become [`StoredNotification`]s (the
//! message id is the spool key), final outcomes remove them, transient failures record the next attempt, and on
//! start every spooled notification is queued again with its retry state, in the background while the server
//! already serves. Those of a domain that cannot be delivered then stay in the spool, noted in a [`LeftInSpool`]:
//! after a reload, [`spawn_requeue`] queues the ones whose domain the new configuration delivers. A final outcome's
//! removal waits until the outcome's records are stored ([`removals`]).

pub mod removals;

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_apns::client::PushRequest;
use herald_apns::push::{ApnsId, Priority, PushType};
use herald_apns::token_hex::DeviceToken;
use herald_spool::{RecoveryReport, Spool, SpoolError, SpoolKey, StoredNotification};

use crate::inbound::accept::{BoxFuture, Durable};
use crate::outcomes::OutcomeWriter;
use crate::queue::message::{DEFAULT_BINDING, MessageId, Notification};
use crate::queue::{Engine, QueueObserver, SettingsResolver, SubmitError};

/// Makes accepted notifications durable in a spool, and keeps the spool in step with the queue.
pub struct SpoolBridge {
    spool: Arc<dyn Spool>,
    /// The JetStream spool: accepted notifications are delivered by whichever node pulls them.
    shared: bool,
    /// Where final outcomes' removals wait for the outcome writers, once they are known.
    removals: OnceLock<Arc<removals::RemovalGate>>,
}

impl SpoolBridge {
    pub fn new(spool: Arc<dyn Spool>) -> Self {
        SpoolBridge {
            spool,
            shared: false,
            removals: OnceLock::new(),
        }
    }

    /// A bridge to a spool shared by several nodes, which hands notifications to the queue itself (see
    /// [`spawn_pull`]).
    pub fn shared(spool: Arc<dyn Spool>) -> Self {
        SpoolBridge {
            spool,
            shared: true,
            removals: OnceLock::new(),
        }
    }

    pub fn spool(&self) -> &Arc<dyn Spool> {
        &self.spool
    }

    /// From now on, a finished notification leaves the spool only once `writers` have stored its outcome
    /// ([`removals`]). Set once; later calls are ignored. Needs a tokio runtime.
    pub fn gate_removals_on(&self, writers: Vec<Arc<dyn OutcomeWriter>>) {
        if self.removals.get().is_none() {
            let _ = self
                .removals
                .set(removals::RemovalGate::start(writers, &self.spool));
        }
    }

    /// At a graceful stop, after the outcome writers were flushed: applies the removals whose outcomes are
    /// stored; returns how many notifications stay spooled because theirs are not.
    pub fn release_removals(&self) -> usize {
        self.removals
            .get()
            .map_or(0, |gate| gate.release(&*self.spool))
    }

    /// Finished notifications whose removal from the spool waits for the outcome writers now
    /// ([`removals::RemovalGate::held`]).
    pub fn held_removals(&self) -> usize {
        self.removals.get().map_or(0, |gate| gate.held())
    }

    /// Removals made without waiting for their outcomes because the line of held ones was full
    /// ([`removals::RemovalGate::forced`]).
    pub fn forced_removals(&self) -> u64 {
        self.removals.get().map_or(0, |gate| gate.forced())
    }
}

impl Durable for SpoolBridge {
    fn persist<'a>(&'a self, batch: &'a [Notification]) -> BoxFuture<'a, Result<(), SpoolError>> {
        let records: Vec<StoredNotification> = batch.iter().map(to_stored).collect();
        // A request a retry may repeat (one with an Idempotency-Key, on the JetStream spool): published so that
        // the retry's copies of what the stream took are dropped (see `retry_ids`).
        let stored = match retry_ids::current() {
            Some(ids) => {
                ids.storing();
                self.spool.append_deduplicated(records, ids.dedup())
            }
            None => self.spool.append(records),
        };
        Box::pin(stored)
    }

    fn queues_elsewhere(&self) -> bool {
        self.shared
    }
}

impl QueueObserver for SpoolBridge {
    fn finished(&self, ids: &[MessageId]) {
        let keys: Vec<SpoolKey> = ids.iter().map(|id| SpoolKey(id.0)).collect();
        match self.removals.get() {
            Some(gate) => gate.remove(&*self.spool, keys),
            None => self.spool.remove(&keys),
        }
    }

    fn hand_back(&self, id: MessageId, _retries: u32, delay: Duration) -> bool {
        self.shared && delay >= HAND_BACK_AFTER && self.spool.hand_back(SpoolKey(id.0), delay)
    }

    /// The JetStream spool's claim on the notification lapsed: JetStream gives it to another node, and this one
    /// does not send it ([`Spool::lapsed`]).
    fn lapsed(&self, id: MessageId) -> bool {
        self.shared && self.spool.lapsed(SpoolKey(id.0))
    }

    fn parked(&self, delta: i64) -> usize {
        if self.shared {
            self.spool.park(delta)
        } else {
            0
        }
    }

    /// The JetStream spool gives each back to the stream for `hold` (a nak with that delay, counted as a hand-back),
    /// for whichever node pulls it then; otherwise it could not go to another node before this one stops, as its
    /// in-progress acks keep it here. The embedded spool keeps them as they are: they are delivered again at the
    /// next start (its records cannot be read one by one while it serves).
    fn abandoned(&self, ids: &[MessageId], hold: Duration) -> bool {
        if !self.shared {
            return false;
        }
        for id in ids {
            self.spool.hand_back(SpoolKey(id.0), hold);
        }
        true
    }

    fn rescheduled(&self, id: MessageId, retries: u32, next_attempt: SystemTime) {
        let ms = next_attempt
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.spool.reschedule(SpoolKey(id.0), retries, ms);
    }
}

/// With the JetStream spool, a retry due this long after a transient failure or later goes back to the stream
/// (nak with delay) rather than waiting in this node's memory; shorter ones wait here (docs/scale-out.md).
pub const HAND_BACK_AFTER: Duration = Duration::from_secs(5);

/// The record of a notification.
pub fn to_stored(n: &Notification) -> StoredNotification {
    StoredNotification {
        key: SpoolKey(n.id.0),
        domain: n.domain.to_string(),
        token: n.push.token.as_bytes().to_vec(),
        topic: n.push.topic.as_deref().map(str::to_owned),
        push_type: n.push.push_type.map(|p| p.as_str().to_owned()),
        priority: n.push.priority.map(Priority::as_u8),
        expiration: n.push.expiration,
        collapse_id: n.push.collapse_id.as_deref().map(str::to_owned),
        apns_id: n.push.apns_id.map(|id| id.to_string()),
        binding: (&*n.binding != DEFAULT_BINDING).then(|| n.binding.to_string()),
        payload: n.push.payload.to_vec(),
        sender: n.sender.to_string(),
        recipient: n.recipient().into_owned(),
        received_at: n.received_at,
        batch_id: n.batch_id.0,
        conn_id: n.conn_id.0,
        retries: 0,
        next_attempt_ms: 0,
    }
}

/// Why a spooled record could not become a notification again.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("spooled notification {key}: {what}")]
    Invalid { key: SpoolKey, what: String },
}

/// The notification of a record, with its retry count and next attempt time.
pub fn from_stored(
    s: StoredNotification,
) -> Result<(Notification, u32, Option<SystemTime>), RestoreError> {
    let key = s.key;
    let invalid = |what: String| RestoreError::Invalid { key, what };
    let token =
        DeviceToken::from_bytes(s.token).map_err(|e| invalid(format!("device token: {e}")))?;
    let push_type = match s.push_type.as_deref() {
        Some(p) => Some(
            p.parse::<PushType>()
                .map_err(|e| invalid(format!("push type: {e}")))?,
        ),
        None => None,
    };
    let priority = match s.priority {
        Some(p) => Some(Priority::from_u8(p).map_err(|e| invalid(format!("priority: {e}")))?),
        None => None,
    };
    let next =
        (s.next_attempt_ms > 0).then(|| UNIX_EPOCH + Duration::from_millis(s.next_attempt_ms));
    let apns_id = match s.apns_id.as_deref() {
        Some(id) => Some(
            id.parse::<ApnsId>()
                .map_err(|e| invalid(format!("apns-id: {e}")))?,
        ),
        None => None,
    };
    let recipient_given = Notification::given_recipient(&s.recipient, &token, &s.domain);
    let n = Notification {
        id: MessageId(s.key.0),
        batch_id: MessageId(s.batch_id),
        conn_id: MessageId(s.conn_id),
        domain: Arc::from(s.domain),
        binding: Arc::from(s.binding.as_deref().unwrap_or(DEFAULT_BINDING)),
        push: PushRequest {
            token,
            topic: s.topic.map(Arc::from),
            push_type,
            priority,
            expiration: s.expiration,
            collapse_id: s.collapse_id.map(Arc::from),
            apns_id,
            payload: Bytes::from(s.payload),
        },
        sender: Arc::from(s.sender),
        recipient_given,
        received_at: s.received_at,
    };
    Ok((n, s.retries, next))
}

/// What a restart found in the spool.
#[derive(Debug, Default, Clone, Copy)]
pub struct Restored {
    pub report: RecoveryReport,
    /// Queued again.
    pub queued: u64,
    /// Not queued because a field could not be read.
    pub dropped: u64,
    /// Not queued because their domain cannot be delivered now (no longer configured, its credentials failing):
    /// left in the spool for a reload that delivers them ([`LeftInSpool`]).
    pub left_in_spool: u64,
    /// Not queued because their final outcome was stored before the restart ([`FinalOutcomes`]): removed from the
    /// spool instead.
    pub already_final: u64,
    /// The restore stopped early because the queue is shutting down (the rest stays spooled).
    pub interrupted: bool,
}

/// The final outcomes a restore looks spooled notifications up in. A notification is removed from the spool only
/// once its final outcome is stored ([`removals`]), and that removal is not waited on: a crash just after it can
/// leave a delivered (or failed) notification in the spool. One whose final outcome is found was finished before
/// the restart; the restore removes it rather than sending it again (or failing it as expired, although APNs took it).
pub trait FinalOutcomes: Send + Sync {
    /// Whether the final outcome of `n` (this very notification, not another that took its printed id in an earlier
    /// run) is stored. Blocking. A store that cannot be read answers no: the notification is delivered again, at
    /// least once as before.
    fn has_final(&self, n: &StoredNotification) -> bool;
}

/// The spooled notifications a restore left in the spool because their domain could not be delivered (from their
/// binding) then: spans of spool keys by domain and binding. A later restore restricted to them ([`spawn_requeue`])
/// queues exactly those, none that was queued already.
#[derive(Debug, Default)]
pub struct LeftInSpool {
    /// By domain, then binding.
    queues: HashMap<Arc<str>, HashMap<Arc<str>, Spans>>,
}

/// Spans of keys `(first, last)` in increasing order. While the restore that records them runs, the last one is
/// `open` until a notification of its queue is queued: a span holds no key of its queue that was queued.
#[derive(Debug, Default)]
struct Spans {
    spans: Vec<(SpoolKey, SpoolKey)>,
    open: bool,
}

impl LeftInSpool {
    pub fn is_empty(&self) -> bool {
        self.queues.is_empty()
    }

    /// The domains it holds notifications of, sorted.
    pub fn domains(&self) -> Vec<String> {
        let mut out: Vec<String> = self.queues.keys().map(|d| d.to_string()).collect();
        out.sort();
        out
    }

    /// Notes that `key`, of (`binding`, `domain`) and greater than every key noted before, stays in the spool.
    fn left(&mut self, binding: &Arc<str>, domain: &Arc<str>, key: SpoolKey) {
        let spans = self
            .queues
            .entry(domain.clone())
            .or_default()
            .entry(binding.clone())
            .or_default();
        match spans.spans.last_mut() {
            Some(last) if spans.open => last.1 = key,
            _ => spans.spans.push((key, key)),
        }
        spans.open = true;
    }

    /// Notes that a notification of (`binding`, `domain`) was queued: the span open ends before it.
    fn queued(&mut self, binding: &str, domain: &str) {
        if let Some(spans) = self.queues.get_mut(domain).and_then(|b| b.get_mut(binding)) {
            spans.open = false;
        }
    }

    /// Whether `key` of (`binding`, `domain`) is in one of its spans.
    fn holds(&self, binding: &str, domain: &str, key: SpoolKey) -> bool {
        self.queues
            .get(domain)
            .and_then(|b| b.get(binding))
            .is_some_and(|s| {
                let i = s.spans.partition_point(|(_, last)| *last < key);
                s.spans.get(i).is_some_and(|(first, _)| *first <= key)
            })
    }

    /// The (binding, domain) queues it holds spans of.
    fn queues(&self) -> Vec<(Arc<str>, Arc<str>)> {
        self.queues
            .iter()
            .flat_map(|(d, bindings)| bindings.keys().map(|b| (b.clone(), d.clone())))
            .collect()
    }

    /// Takes the spans of `queues` out.
    fn take(&mut self, queues: &[(Arc<str>, Arc<str>)]) -> LeftInSpool {
        let mut out = LeftInSpool::default();
        for (binding, domain) in queues {
            let Some(bindings) = self.queues.get_mut(domain) else {
                continue;
            };
            if let Some(spans) = bindings.remove(binding) {
                out.queues
                    .entry(domain.clone())
                    .or_default()
                    .insert(binding.clone(), spans);
            }
            if bindings.is_empty() {
                self.queues.remove(domain);
            }
        }
        out
    }

    /// Adds the spans `other` holds; every span is closed.
    fn merge(&mut self, other: LeftInSpool) {
        for (domain, bindings) in other.queues {
            let mine = self.queues.entry(domain).or_default();
            for (binding, spans) in bindings {
                let merged = mine.entry(binding).or_default();
                merged.spans.extend(spans.spans);
                merged.spans.sort();
                merged.open = false;
            }
        }
    }
}

/// How far the restore of the spool is: for metrics while it runs in the background.
#[derive(Debug, Default)]
pub struct RestoreProgress {
    running: std::sync::atomic::AtomicBool,
    queued: std::sync::atomic::AtomicU64,
}

impl RestoreProgress {
    /// Whether spooled notifications of an earlier run are still being queued again.
    pub fn is_running(&self) -> bool {
        self.running.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notifications queued again so far.
    pub fn queued(&self) -> u64 {
        self.queued.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Notifications handed from the spool's reading thread to the queueing task at a time.
const RESTORE_CHUNK: usize = 512;

/// The wait before the restore reads the spool again after a failed read; doubled after each failure in a row, up
/// to [`RESTORE_RETRY_MAX`].
const RESTORE_RETRY_FIRST: Duration = Duration::from_secs(1);
const RESTORE_RETRY_MAX: Duration = Duration::from_secs(300);

/// Reads every notification the spool held when it was opened and queues it again, with its retry state. The
/// spool may already take new notifications meanwhile (recovery does not visit them), so a server can serve while
/// its backlog is restored. Stops early, leaving the rest spooled, when the queue shuts down.
///
/// A read of the spool that fails (an I/O error) is tried again after a wait that doubles up to
/// [`RESTORE_RETRY_MAX`], one warning per attempt, until it succeeds or the spool is closed: the next read skips
/// what the failed ones queued (the spool is read in key order), so nothing is queued twice.
///
/// A notification whose final outcome `finals` holds is removed from the spool, not queued ([`FinalOutcomes`]).
pub async fn restore(
    spool: Arc<dyn Spool>,
    engine: Arc<Engine>,
    progress: &RestoreProgress,
    finals: Option<Arc<dyn FinalOutcomes>>,
) -> Result<Restored, SpoolError> {
    let from = RestoreFrom { spool, finals };
    restore_retrying(from, engine, progress, RESTORE_RETRY_FIRST, None)
        .await
        .map(|(restored, _)| restored)
}

/// What a restore reads: the spool, and where it looks for final outcomes stored before the restart.
#[derive(Clone)]
pub struct RestoreFrom {
    pub spool: Arc<dyn Spool>,
    pub finals: Option<Arc<dyn FinalOutcomes>>,
}

/// [`restore`], with `first_wait` before the first read again, of the notifications `only` holds (all without it);
/// also returns what it left in the spool.
async fn restore_retrying(
    from: RestoreFrom,
    engine: Arc<Engine>,
    progress: &RestoreProgress,
    first_wait: Duration,
    only: Option<Arc<LeftInSpool>>,
) -> Result<(Restored, LeftInSpool), SpoolError> {
    let mut pass = RestorePass::default();
    let mut wait = first_wait;
    let mut attempt = 1u32;
    loop {
        match restore_pass(
            from.clone(),
            engine.clone(),
            progress,
            &mut pass,
            only.clone(),
        )
        .await
        {
            Ok(report) => {
                pass.restored.report = RecoveryReport {
                    recovered: pass.recovered,
                    ..report
                };
                return Ok((pass.restored, pass.left));
            }
            Err(SpoolError::Closed) => return Err(SpoolError::Closed),
            Err(e) => {
                let resume = pass
                    .last
                    .map_or_else(|| "from the start".to_owned(), |k| format!("after {k}"));
                tracing::warn!(
                    attempt,
                    queued = pass.restored.queued,
                    "restoring the spool failed: {e}; reading it again in {wait:?}, {resume}"
                );
                tokio::time::sleep(wait).await;
                wait = wait.saturating_mul(2).min(RESTORE_RETRY_MAX);
                attempt = attempt.saturating_add(1);
            }
        }
    }
}

/// What the reads of a restore have done so far.
#[derive(Default)]
struct RestorePass {
    restored: Restored,
    /// The last key handed to the queue (queued or dropped): a read again skips up to it.
    last: Option<SpoolKey>,
    /// Notifications handed to the queue, over every read.
    recovered: u64,
    /// Domains that cannot deliver, warned about once each.
    unroutable: std::collections::HashSet<String>,
    /// The notifications left in the spool because their domain cannot deliver.
    left: LeftInSpool,
}

/// One read of the spool for [`restore`]: queues what comes after `pass.last` (of it, what `only` holds).
async fn restore_pass(
    from: RestoreFrom,
    engine: Arc<Engine>,
    progress: &RestoreProgress,
    pass: &mut RestorePass,
    only: Option<Arc<LeftInSpool>>,
) -> Result<RecoveryReport, SpoolError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<StoredNotification>>(8);
    let after = pass.last;
    let RestoreFrom { spool, finals } = from;
    let reader = tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(RESTORE_CHUNK);
        // Finished before the restart: removed, in batches, rather than queued.
        let mut finished: Vec<SpoolKey> = Vec::new();
        let mut already_final = 0u64;
        let report = spool.recover_each(&mut |n| {
            if after.is_some_and(|after| n.key <= after) {
                return ControlFlow::Continue(());
            }
            if let Some(only) = &only
                && !only.holds(
                    n.binding.as_deref().unwrap_or(DEFAULT_BINDING),
                    &n.domain,
                    n.key,
                )
            {
                return ControlFlow::Continue(());
            }
            if finals.as_ref().is_some_and(|f| f.has_final(&n)) {
                finished.push(n.key);
                already_final += 1;
                if finished.len() >= RESTORE_CHUNK {
                    spool.remove(&std::mem::take(&mut finished));
                }
                return ControlFlow::Continue(());
            }
            chunk.push(n);
            if chunk.len() < RESTORE_CHUNK {
                return ControlFlow::Continue(());
            }
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(RESTORE_CHUNK));
            match tx.blocking_send(full) {
                Ok(()) => ControlFlow::Continue(()),
                // The queueing side stopped: shutting down.
                Err(_) => ControlFlow::Break(()),
            }
        });
        // Also after a failed read: what it visited is queued, and the next read starts after it.
        let _ = tx.blocking_send(chunk);
        spool.remove(&finished);
        (report, already_final)
    });
    'chunks: while let Some(chunk) = rx.recv().await {
        for stored in chunk {
            let key = stored.key;
            let id = MessageId(key.0);
            match from_stored(stored) {
                Ok((n, retries, next)) => {
                    let (binding, domain) = (n.binding.clone(), n.domain.clone());
                    match engine.restore(n, retries, next).await {
                        Ok(()) => {
                            pass.left.queued(&binding, &domain);
                            pass.restored.queued += 1;
                            progress
                                .queued
                                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(SubmitError::ShuttingDown) => {
                            pass.restored.interrupted = true;
                            break 'chunks;
                        }
                        Err(SubmitError::Unroutable {
                            domain: name,
                            reason,
                        }) => {
                            pass.restored.left_in_spool += 1;
                            pass.left.left(&binding, &domain, key);
                            // Once per domain: a domain removed from the configuration may hold many.
                            if !pass.unroutable.contains(&name) {
                                tracing::warn!(
                                    "spooled notifications of {name:?} stay in the spool, not queued: the domain \
                                 cannot deliver: {reason} (first: {id}); a reload that makes it deliverable \
                                 queues them"
                                );
                                pass.unroutable.insert(name);
                            }
                        }
                    }
                }
                Err(e) => {
                    pass.restored.dropped += 1;
                    tracing::warn!("{e}");
                }
            }
            pass.last = Some(key);
            pass.recovered += 1;
        }
    }
    drop(rx);
    let (report, already_final) = reader.await.map_err(|e| {
        SpoolError::from_io("recovery thread", std::io::Error::other(e.to_string()))
    })?;
    pass.restored.already_final += already_final;
    if pass.restored.interrupted {
        return Ok(report.unwrap_or_default());
    }
    report
}

/// Restores the spool (see [`restore`]) in a task of its own and logs the outcome: the server serves meanwhile.
/// What it leaves in the spool is noted in `left`, which it holds until it is done.
pub fn spawn_restore(
    from: RestoreFrom,
    engine: Arc<Engine>,
    progress: Arc<RestoreProgress>,
    left: Arc<tokio::sync::Mutex<LeftInSpool>>,
) -> tokio::task::JoinHandle<Result<Restored, SpoolError>> {
    progress
        .running
        .store(true, std::sync::atomic::Ordering::Relaxed);
    // Taken now, before anything (a reload's requeue) can ask for it.
    let held = left.clone().try_lock_owned();
    tokio::spawn(async move {
        let mut held = match held {
            Ok(held) => held,
            Err(_) => left.lock_owned().await,
        };
        let started = std::time::Instant::now();
        let result = restore_retrying(from, engine, &progress, RESTORE_RETRY_FIRST, None)
            .await
            .map(|(restored, left)| {
                held.merge(left);
                restored
            });
        drop(held);
        progress
            .running
            .store(false, std::sync::atomic::Ordering::Relaxed);
        match &result {
            Ok(r) if r.interrupted => tracing::info!(
                queued = r.queued,
                "spool restore stopped by shutdown after {:?}; the rest stays spooled",
                started.elapsed()
            ),
            Ok(r)
                if r.report.recovered > 0
                    || r.already_final > 0
                    || r.report.skipped > 0
                    || r.report.newer_format > 0 =>
            {
                tracing::info!(
                    queued = r.queued,
                    left_in_spool = r.left_in_spool,
                    already_final = r.already_final,
                    unreadable = r.dropped,
                    skipped = r.report.skipped,
                    kept_for_a_newer_herald = r.report.newer_format,
                    "restored the spool in {:?}",
                    started.elapsed()
                )
            }
            Ok(_) => {}
            Err(e) => tracing::error!(
                "restoring the spool stopped after {:?}: {e}; what was not queued stays spooled until the next start",
                started.elapsed()
            ),
        }
        result
    })
}

/// After a reload: queues the notifications a restore left in the spool (`left`) of every (binding, domain) that
/// `resolver` now resolves, in a task of its own, once the start-up restore and the passes of earlier reloads are
/// done. What it still cannot queue stays noted for the next reload. Returns how many it queued.
///
/// The JetStream spool leaves nothing there (its recovery reads nothing locally): a pulled notification of a domain
/// this node cannot deliver goes back to the stream for [`UNROUTED_RELEASE`] and is pulled again ([`spawn_pull`]), so
/// after a reload that makes its domain deliverable it is delivered at its next pull.
pub fn spawn_requeue(
    from: RestoreFrom,
    engine: Arc<Engine>,
    progress: Arc<RestoreProgress>,
    left: Arc<tokio::sync::Mutex<LeftInSpool>>,
    resolver: Arc<dyn SettingsResolver>,
) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut left = left.lock_owned().await;
        if left.is_empty() {
            return 0;
        }
        let queues = left.queues();
        let ready = crate::queue::run_blocking(move || {
            queues
                .into_iter()
                .filter(|(binding, domain)| resolver.resolve_binding(binding, domain).is_ok())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        if ready.is_empty() {
            return 0;
        }
        let wanted = left.take(&ready);
        let domains = wanted.domains().join(", ");
        let started = std::time::Instant::now();
        match restore_retrying(
            from,
            engine,
            &progress,
            RESTORE_RETRY_FIRST,
            Some(Arc::new(wanted)),
        )
        .await
        {
            Ok((restored, still)) => {
                left.merge(still);
                tracing::info!(
                    queued = restored.queued,
                    left = restored.left_in_spool,
                    unreadable = restored.dropped,
                    "queued spooled notifications of {domains} left in the spool at start, now that the \
                     configuration delivers them, in {:?}",
                    started.elapsed()
                );
                restored.queued
            }
            Err(e) => {
                tracing::warn!(
                    "queueing the spooled notifications of {domains} stopped: {e}; they stay in the spool until \
                     the next start"
                );
                0
            }
        }
    })
}

/// How long a pulled notification of a domain this node cannot deliver goes back to the stream for.
const UNROUTED_RELEASE: Duration = Duration::from_secs(60);

/// At most one warning per domain this often about pulled notifications this node cannot deliver.
const UNROUTED_WARN_EVERY: Duration = Duration::from_secs(60);

/// Queues the notifications this node pulls from the JetStream spool, as long as the engine runs. Each keeps the id
/// its sender was answered on the node that accepted it (its spool key, carried in the message): it is delivered,
/// logged, looked up and reported to webhooks under that id, and the spool acks, naks or hands back its message by
/// that id ([`QueueObserver`] above). A notification that cannot be queued (unreadable, or of a domain this node does
/// not know) goes back to the stream after a delay, for a node that can; one of a domain this node cannot deliver
/// fails once the global `message_expiration` has passed since its reception, as an expired one does.
pub fn spawn_pull(spool: Arc<herald_spool::JetStreamSpool>, engine: Arc<Engine>) {
    let Some(mut deliveries) = spool.take_deliveries() else {
        return;
    };
    tokio::spawn(async move {
        let mut warnings = UnroutedWarnings::default();
        let release = |key: SpoolKey, delay: Duration| spool.release(key, delay);
        while let Some(stored) = deliveries.recv().await {
            if pull_one(&engine, stored, &release, &mut warnings)
                .await
                .is_break()
            {
                return;
            }
        }
    });
}

/// Queues one notification pulled from the shared stream, or gives it back to the stream with `release` (or fails
/// it: see [`spawn_pull`]). Breaks when the engine shuts down.
async fn pull_one(
    engine: &Engine,
    stored: StoredNotification,
    release: &(dyn Fn(SpoolKey, Duration) + Send + Sync),
    warnings: &mut UnroutedWarnings,
) -> ControlFlow<()> {
    let key = stored.key;
    let (n, retries, next) = match from_stored(stored) {
        Ok(restored) => restored,
        // A field value this build does not know (a newer herald accepted it): for a node that does.
        Err(e) => {
            let delay = herald_spool::jetstream::NEWER_FORMAT_DELAY;
            tracing::warn!("{e}; back to the stream for {delay:?}, for a node that reads it");
            release(key, delay);
            return ControlFlow::Continue(());
        }
    };
    // Kept to fail it if it cannot be queued (a clone shares the token and the payload).
    let pulled = n.clone();
    match engine.restore(n, retries, next).await {
        Ok(()) => ControlFlow::Continue(()),
        Err(e @ SubmitError::ShuttingDown) => {
            tracing::warn!("{key}: not queued ({e}); back to the stream for a minute");
            release(key, UNROUTED_RELEASE);
            ControlFlow::Break(())
        }
        Err(SubmitError::Unroutable { domain, reason }) => {
            let age = Duration::from_secs(
                crate::queue::message::unix_now().saturating_sub(pulled.received_at),
            );
            if age >= engine.message_expiration() {
                let error = format!(
                    "554 5.4.7 [internal] exceeded max time without delivery; last error: domain {domain:?} \
                     cannot be delivered here: {reason}"
                );
                engine.fail_unqueued(
                    &pulled,
                    retries,
                    &error,
                    "exceeded max time without delivery; last error: Unroutable",
                );
                return ControlFlow::Continue(());
            }
            release(key, UNROUTED_RELEASE);
            if let Some(count) = warnings.note(&domain, std::time::Instant::now()) {
                tracing::warn!(
                    "{count} pulled notification(s) of {domain:?} not queued ({reason}); each goes back to the \
                     stream for {} s, for a node that delivers the domain, and fails once message_expiration \
                     ({} s) has passed since its reception",
                    UNROUTED_RELEASE.as_secs(),
                    engine.message_expiration().as_secs()
                );
            }
            ControlFlow::Continue(())
        }
    }
}

/// Counts the pulled notifications of each domain this node cannot deliver, so that it warns about them at most
/// once per domain per [`UNROUTED_WARN_EVERY`], with how many there were.
#[derive(Default)]
struct UnroutedWarnings {
    /// By domain: when its last warning was given, and the notifications since then.
    domains: std::collections::HashMap<String, (std::time::Instant, u64)>,
}

impl UnroutedWarnings {
    /// Domains remembered before those not warned about lately are forgotten.
    const REMEMBERED: usize = 1024;

    /// Counts one notification of `domain` at `now`: `Some(count)` when a warning is due, with the notifications
    /// it covers (this one included).
    fn note(&mut self, domain: &str, now: std::time::Instant) -> Option<u64> {
        if let Some((warned, count)) = self.domains.get_mut(domain) {
            *count += 1;
            if now.duration_since(*warned) < UNROUTED_WARN_EVERY {
                return None;
            }
            let covered = *count;
            *warned = now;
            *count = 0;
            return Some(covered);
        }
        if self.domains.len() >= Self::REMEMBERED {
            self.domains
                .retain(|_, (warned, _)| now.duration_since(*warned) < UNROUTED_WARN_EVERY);
        }
        self.domains.insert(domain.to_owned(), (now, 0));
        Some(1)
    }
}

/// The ids of a request with an `Idempotency-Key` on the JetStream spool, which a retry of it after a refusal
/// reuses (docs/api.md "Idempotent requests").
///
/// NATS may take part of a batch before failing (an ack timeout, a connection lost, a full stream): a refused
/// request then leaves some of its notifications in the stream. A request with a key therefore publishes its
/// notifications with [`Spool::append_deduplicated`], under message ids made of its key and their ids; once
/// refused, it records the ids it assigned (each with a fingerprint of its submission), and a retry with the key
/// gives each notification it repeats the id the refused attempt gave it. The stream then drops the copies of
/// those it took already (within its duplicate window), and the answer names the ids the first attempt assigned.
///
/// A request whose node vanishes (cut off from NATS, its heartbeat gone) never gets to record its ids as refused: so
/// before each batch goes to the spool, the ids it assigned so far are recorded in its key's claim
/// ([`retry_ids::RecordIds`]), and a request taking the key over reuses them the same way.
///
/// The request's [`retry_ids::RequestIds`] travels with it as a task-local value: [`retry_ids::running`] runs the
/// request with it, [`crate::inbound::accept::Intake::prepare`] takes each notification's id from it
/// ([`retry_ids::assign`]), [`retry_ids::within`] runs each commit of a batch of it once its ids are recorded, and
/// the [`SpoolBridge`] stores such a batch with [`Spool::append_deduplicated`].
pub mod retry_ids {
    use std::collections::{HashMap, VecDeque};
    use std::future::Future;
    use std::sync::{Arc, Mutex};

    use herald_spool::SpoolError;
    use sha2::{Digest, Sha256};

    use crate::inbound::accept::{BoxFuture, NoRoom, Submission, Unavailable};
    use crate::queue::message::{MessageId, Notification};

    tokio::task_local! {
        static CURRENT: Arc<RequestIds>;
    }

    /// Where a request records the ids it is about to hand to the spool, so that a request taking its key over
    /// (its node gone before it answered) reuses them: the claim of its `Idempotency-Key` in the bucket the nodes
    /// share.
    pub trait RecordIds: Send + Sync + std::fmt::Debug {
        /// Records `pairs` (fingerprint, id): every id the request assigned so far, then those of an earlier attempt
        /// it did not repeat. Done before each batch goes to the spool ([`within`]); an error keeps the batch out.
        fn record(&self, pairs: Vec<(u64, MessageId)>) -> BoxFuture<'_, Result<(), RecordError>>;
    }

    /// Why a request's ids could not be recorded before a batch of it went to the spool: the batch is refused as
    /// when NATS does not take it, so that nothing is published under ids a request taking the key over would not
    /// know.
    #[derive(Debug, Clone, thiserror::Error)]
    pub enum RecordError {
        /// NATS did not take the write (it may still store it).
        #[error(
            "cannot record the ids of the request's notifications in the claim of its Idempotency-Key: {0}"
        )]
        Unrecorded(String),
        /// Another request holds the key now: this node was taken for gone (its heartbeat lapsed).
        #[error(
            "the claim of the request's Idempotency-Key was taken over by a retry through another node (this node's \
             heartbeat lapsed)"
        )]
        TakenOver,
    }

    impl From<RecordError> for NoRoom {
        fn from(e: RecordError) -> NoRoom {
            NoRoom::Now(Unavailable::Spool(SpoolError::Unreachable(e.to_string())))
        }
    }

    /// The ids of one request (one attempt of it).
    #[derive(Debug)]
    pub struct RequestIds {
        dedup: String,
        inner: Mutex<Inner>,
        /// Where its ids are recorded before each batch goes to the spool; `None`: nowhere.
        recorder: Option<Arc<dyn RecordIds>>,
    }

    #[derive(Debug, Default)]
    struct Inner {
        /// Ids a refused attempt assigned, by the fingerprint of their submission, in the order it assigned them.
        earlier: HashMap<u64, VecDeque<MessageId>>,
        /// Fingerprint and id of each notification this attempt built, in order.
        assigned: Vec<(u64, MessageId)>,
        /// Those of `assigned` whose id came from `earlier`: the stream may hold them whatever this attempt does.
        reused: Vec<(u64, MessageId)>,
        /// This attempt handed a batch to the spool.
        stored: bool,
    }

    impl RequestIds {
        /// A request whose notifications are published under `dedup` (see
        /// [`herald_spool::Spool::append_deduplicated`]), reusing `earlier` (fingerprint, id) pairs, those of a
        /// refused attempt, in their order.
        pub fn new(dedup: String, earlier: Vec<(u64, MessageId)>) -> Arc<RequestIds> {
            RequestIds::build(dedup, earlier, None)
        }

        /// [`RequestIds::new`], whose ids `recorder` records before each batch of the request goes to the spool
        /// ([`within`]).
        pub fn recorded(
            dedup: String,
            earlier: Vec<(u64, MessageId)>,
            recorder: Arc<dyn RecordIds>,
        ) -> Arc<RequestIds> {
            RequestIds::build(dedup, earlier, Some(recorder))
        }

        fn build(
            dedup: String,
            earlier: Vec<(u64, MessageId)>,
            recorder: Option<Arc<dyn RecordIds>>,
        ) -> Arc<RequestIds> {
            let mut by_fingerprint: HashMap<u64, VecDeque<MessageId>> = HashMap::new();
            for (fingerprint, id) in earlier {
                by_fingerprint.entry(fingerprint).or_default().push_back(id);
            }
            Arc::new(RequestIds {
                dedup,
                inner: Mutex::new(Inner {
                    earlier: by_fingerprint,
                    ..Inner::default()
                }),
                recorder,
            })
        }

        /// The prefix of the message ids of the request's notifications.
        pub fn dedup(&self) -> &str {
            &self.dedup
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
            self.inner.lock().unwrap_or_else(|p| p.into_inner())
        }

        /// The ids a retry must reuse after this attempt was refused, `None` when there are none: this attempt's
        /// (fingerprint, id) pairs if it handed a batch to the spool, else those it took from an earlier attempt
        /// (nothing new of it can be in the stream, but what the earlier one published can), then those of an
        /// earlier attempt it did not repeat.
        pub fn to_reuse(&self) -> Option<Vec<(u64, MessageId)>> {
            let inner = self.lock();
            let mut pairs = if inner.stored {
                inner.assigned.clone()
            } else {
                inner.reused.clone()
            };
            pairs.extend(unrepeated(&inner.earlier));
            (!pairs.is_empty()).then_some(pairs)
        }

        /// The ids a request taking this one's key over must reuse should this one never answer, once it hands a
        /// batch to the spool: every (fingerprint, id) pair it assigned, then those of an earlier attempt it did
        /// not repeat (what that one published may be in the stream).
        pub fn to_record(&self) -> Vec<(u64, MessageId)> {
            let inner = self.lock();
            let mut pairs = inner.assigned.clone();
            pairs.extend(unrepeated(&inner.earlier));
            pairs
        }

        /// Records the request's ids where its recorder keeps them (nothing without one).
        async fn record(&self) -> Result<(), RecordError> {
            match &self.recorder {
                Some(recorder) => recorder.record(self.to_record()).await,
                None => Ok(()),
            }
        }

        /// Notes that the request hands a batch to the spool.
        pub fn storing(&self) {
            self.lock().stored = true;
        }
    }

    /// The ids of an earlier attempt no notification of this one took, in their order.
    fn unrepeated(earlier: &HashMap<u64, VecDeque<MessageId>>) -> Vec<(u64, MessageId)> {
        let mut left: Vec<(u64, MessageId)> = earlier
            .iter()
            .flat_map(|(f, ids)| ids.iter().map(move |id| (*f, *id)))
            .collect();
        left.sort_unstable_by_key(|(_, id)| *id);
        left
    }

    /// Runs `f`, the commit of a batch of the request whose ids are `ids` (none: a request without them), with
    /// them as its ids. The ids the request assigned so far (the batch's among them) are first recorded
    /// ([`RecordIds`]): should that fail, `f` does not run and the batch is refused with the reason.
    pub async fn within<T, E, F>(ids: Option<Arc<RequestIds>>, f: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
        E: From<RecordError>,
    {
        let Some(ids) = ids else {
            return f.await;
        };
        ids.record().await?;
        CURRENT.scope(ids, f).await
    }

    /// Runs `f`, a whole request, with `ids` as its ids (none: a request without them).
    pub async fn running<F: Future>(ids: Option<Arc<RequestIds>>, f: F) -> F::Output {
        match ids {
            Some(ids) => CURRENT.scope(ids, f).await,
            None => f.await,
        }
    }

    /// The ids of the request the current task runs, if it has them.
    pub fn current() -> Option<Arc<RequestIds>> {
        CURRENT.try_with(Arc::clone).ok()
    }

    /// A submission's fingerprint, when the current request has ids to reuse or record (`None` otherwise: nothing
    /// is computed). It covers what the sender gave, so a retry of the same request gives the same whatever
    /// herald's configuration added since.
    pub fn fingerprint(s: &Submission) -> Option<u64> {
        CURRENT.try_with(|_| ()).ok()?;
        let mut h = Sha256::new();
        let mut field = |bytes: &[u8]| {
            h.update((bytes.len() as u64).to_be_bytes());
            h.update(bytes);
        };
        fn opt(v: &Option<String>) -> Option<&[u8]> {
            v.as_deref().map(str::as_bytes)
        }
        field(s.domain.as_bytes());
        field(s.token.as_bytes());
        field(&s.payload);
        field(s.sender.as_bytes());
        field(s.recipient.as_bytes());
        for v in [
            opt(&s.binding),
            opt(&s.headers.topic),
            opt(&s.headers.push_type),
            opt(&s.headers.collapse_id),
            opt(&s.headers.apns_id),
        ] {
            match v {
                Some(v) => {
                    field(b"1");
                    field(v);
                }
                None => field(b"0"),
            }
        }
        field(&s.headers.priority.map_or(-1, i64::from).to_be_bytes());
        field(
            &s.headers
                .expiration
                .map_or(-1, |e| e.min(i64::MAX as u64) as i64)
                .to_be_bytes(),
        );
        let digest = h.finalize();
        let mut word = [0u8; 8];
        word.copy_from_slice(&digest[..8]);
        Some(u64::from_be_bytes(word))
    }

    /// Gives `n`, built from a submission of fingerprint `fingerprint`, the id a refused attempt gave the same
    /// submission if one is left, and records its id.
    pub fn assign(fingerprint: u64, n: &mut Notification) {
        let Ok(ids) = CURRENT.try_with(Arc::clone) else {
            return;
        };
        let mut inner = ids.lock();
        if let Some(id) = inner
            .earlier
            .get_mut(&fingerprint)
            .and_then(VecDeque::pop_front)
        {
            n.id = id;
            inner.reused.push((fingerprint, id));
        }
        inner.assigned.push((fingerprint, n.id));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A request's ids (`retry_ids`): a submission repeated from a refused attempt takes the id it had there, in
    /// order when it came several times; another takes a fresh one; only a request that stored something (or
    /// carries an earlier attempt's ids) leaves ids to reuse; outside such a request nothing is computed.
    #[tokio::test]
    async fn a_retry_reuses_the_ids_of_the_submissions_it_repeats() {
        use crate::inbound::accept::Submission;
        let submission = |token: &str| Submission {
            domain: "apps.example".into(),
            token: token.into(),
            payload: Bytes::from_static(b"{}"),
            ..Submission::default()
        };
        assert_eq!(retry_ids::fingerprint(&submission("aa")), None);
        let notification = |id: u128| {
            let mut n = sample();
            n.id = MessageId(id);
            n
        };
        let first = retry_ids::RequestIds::new("i0".into(), Vec::new());
        retry_ids::running(Some(first.clone()), async {
            for (token, id) in [("aa", 1), ("bb", 2), ("aa", 3)] {
                let fingerprint = retry_ids::fingerprint(&submission(token)).unwrap();
                let mut n = notification(id);
                retry_ids::assign(fingerprint, &mut n);
                assert_eq!(n.id, MessageId(id));
            }
            assert_eq!(retry_ids::current().unwrap().dedup(), "i0");
        })
        .await;
        assert_eq!(first.to_reuse(), None, "nothing stored");
        first.storing();
        let pairs = first.to_reuse().unwrap();
        assert_eq!(pairs.len(), 3);
        assert_ne!(pairs[0].0, pairs[1].0);
        assert_eq!(pairs[0].0, pairs[2].0);

        let retry = retry_ids::RequestIds::new("i0".into(), pairs);
        let ids = retry_ids::running(Some(retry.clone()), async {
            ["cc", "aa", "aa"]
                .iter()
                .enumerate()
                .map(|(i, token)| {
                    let fingerprint = retry_ids::fingerprint(&submission(token)).unwrap();
                    let mut n = notification(10 + i as u128);
                    retry_ids::assign(fingerprint, &mut n);
                    n.id.0
                })
                .collect::<Vec<_>>()
        })
        .await;
        assert_eq!(ids, [10, 1, 3]);
        // Refused before storing, the retry leaves every id of the earlier attempt, those it repeated too (the
        // earlier attempt may have published them), but none of its own new ones.
        let left = retry.to_reuse().unwrap();
        assert_eq!(
            left.iter().map(|(_, id)| id.0).collect::<Vec<_>>(),
            [1, 3, 2]
        );
        // And a third attempt reuses them all.
        let third = retry_ids::RequestIds::new("i0".into(), left);
        let ids = retry_ids::running(Some(third), async {
            ["aa", "bb", "aa"]
                .iter()
                .enumerate()
                .map(|(i, token)| {
                    let fingerprint = retry_ids::fingerprint(&submission(token)).unwrap();
                    let mut n = notification(20 + i as u128);
                    retry_ids::assign(fingerprint, &mut n);
                    n.id.0
                })
                .collect::<Vec<_>>()
        })
        .await;
        assert_eq!(ids, [1, 2, 3]);
    }

    /// A commit of a batch of a request with a recorder (`retry_ids::within`) records every id the request
    /// assigned so far, then those of an earlier attempt it did not repeat, before the batch goes to the spool; a
    /// record that fails keeps the batch out, refused for now (503) with the reason.
    #[tokio::test]
    async fn a_batch_goes_to_the_spool_only_once_its_ids_are_recorded() {
        use retry_ids::{RecordError, RecordIds, RequestIds};
        #[derive(Debug, Default)]
        struct Book {
            records: std::sync::Mutex<Vec<Vec<(u64, MessageId)>>>,
            refuse: std::sync::atomic::AtomicBool,
        }
        impl RecordIds for Book {
            fn record(
                &self,
                pairs: Vec<(u64, MessageId)>,
            ) -> BoxFuture<'_, Result<(), RecordError>> {
                self.records.lock().unwrap().push(pairs);
                let refuse = self.refuse.load(std::sync::atomic::Ordering::SeqCst);
                Box::pin(async move {
                    if refuse {
                        Err(RecordError::TakenOver)
                    } else {
                        Ok(())
                    }
                })
            }
        }
        let book = Arc::new(Book::default());
        let earlier = vec![(7, MessageId(1)), (9, MessageId(2))];
        let ids = RequestIds::recorded("i0".into(), earlier, book.clone());
        let assign = |fingerprint: u64, id: u128| {
            let mut n = sample();
            n.id = MessageId(id);
            retry_ids::assign(fingerprint, &mut n);
            n.id
        };
        let committed = std::sync::atomic::AtomicUsize::new(0);
        let commit = || async {
            committed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok::<(), crate::inbound::accept::NoRoom>(())
        };
        retry_ids::running(Some(ids.clone()), async {
            assert_eq!(assign(5, 10), MessageId(10));
            retry_ids::within(retry_ids::current(), commit())
                .await
                .unwrap();
            assert_eq!(assign(9, 11), MessageId(2));
            retry_ids::within(retry_ids::current(), commit())
                .await
                .unwrap();
            book.refuse.store(true, std::sync::atomic::Ordering::SeqCst);
            assign(4, 12);
            let refused = retry_ids::within(retry_ids::current(), commit())
                .await
                .unwrap_err();
            assert!(
                refused
                    .to_string()
                    .contains("NATS unreachable: the claim of"),
                "{refused}"
            );
        })
        .await;
        assert_eq!(committed.load(std::sync::atomic::Ordering::SeqCst), 2);
        let ids_of =
            |pairs: &Vec<(u64, MessageId)>| pairs.iter().map(|(_, id)| id.0).collect::<Vec<_>>();
        let records = book.records.lock().unwrap().clone();
        assert_eq!(
            records.iter().map(ids_of).collect::<Vec<_>>(),
            [vec![10, 1, 2], vec![10, 2, 1], vec![10, 2, 12, 1]]
        );
        // A request without a recorder, or without ids, commits at once.
        let plain = RequestIds::new("i1".into(), Vec::new());
        retry_ids::within(Some(plain), commit()).await.unwrap();
        retry_ids::within(None, commit()).await.unwrap();
        assert_eq!(committed.load(std::sync::atomic::Ordering::SeqCst), 4);
    }

    /// A stored notification to put in a test spool.
    pub(crate) fn stored_sample() -> StoredNotification {
        to_stored(&sample())
    }

    fn sample() -> Notification {
        Notification {
            id: MessageId::from_parts(3, 1_800_000_000_000, 42),
            batch_id: MessageId::from_parts(3, 1_800_000_000_000, 40),
            conn_id: MessageId::from_parts(3, 1_800_000_000_000, 41),
            domain: Arc::from("apps.example"),
            binding: Arc::from("outbound-b"),
            push: PushRequest {
                token: DeviceToken::from_hex(&"ab".repeat(32)).unwrap(),
                topic: Some(Arc::from("com.example.app")),
                push_type: Some(PushType::Alert),
                priority: Some(Priority::Conserve),
                expiration: Some(1_900_000_000),
                collapse_id: Some(Arc::from("c1")),
                apns_id: Some(
                    "123e4567-e89b-12d3-a456-426614174000"
                        .parse()
                        .expect("uuid"),
                ),
                payload: Bytes::from_static(b"{\"aps\":{\"alert\":\"hi\"}}"),
            },
            sender: Arc::from("from@example.com"),
            recipient_given: Some(Arc::from("to@apps.example")),
            received_at: 1_800_000_000,
        }
    }

    /// A spool whose first reads fail after visiting `visits_before_failing` notifications.
    struct FailingReads {
        inner: herald_spool::MemorySpool,
        failures_left: std::sync::atomic::AtomicU32,
        visits_before_failing: usize,
    }

    impl Spool for FailingReads {
        fn next_key(&self) -> SpoolKey {
            self.inner.next_key()
        }
        fn append(&self, batch: Vec<StoredNotification>) -> herald_spool::SpoolFuture<()> {
            self.inner.append(batch)
        }
        fn reschedule(&self, key: SpoolKey, retries: u32, next_attempt_ms: u64) {
            self.inner.reschedule(key, retries, next_attempt_ms)
        }
        fn remove(&self, keys: &[SpoolKey]) {
            self.inner.remove(keys)
        }
        fn recovery_bound(&self) -> Option<SpoolKey> {
            self.inner.recovery_bound()
        }
        fn recover_each(
            &self,
            visit: &mut dyn FnMut(StoredNotification) -> ControlFlow<()>,
        ) -> Result<RecoveryReport, SpoolError> {
            let failing = self
                .failures_left
                .fetch_update(
                    std::sync::atomic::Ordering::SeqCst,
                    std::sync::atomic::Ordering::SeqCst,
                    |n| n.checked_sub(1),
                )
                .is_ok();
            if !failing {
                return self.inner.recover_each(visit);
            }
            let mut visited = 0;
            self.inner.recover_each(&mut |n| {
                if visited == self.visits_before_failing {
                    return ControlFlow::Break(());
                }
                visited += 1;
                visit(n)
            })?;
            Err(SpoolError::Io {
                context: "reading the test spool",
                source: Arc::new(std::io::Error::other("a read error of the test")),
            })
        }
        fn stats(&self) -> herald_spool::SpoolStats {
            self.inner.stats()
        }
        fn flush(&self) -> herald_spool::SpoolFuture<()> {
            self.inner.flush()
        }
        fn close(&self) -> herald_spool::SpoolFuture<()> {
            self.inner.close()
        }
    }

    /// A read of the spool that fails part-way through the restore is tried again, after a wait, from where it
    /// stopped: every spooled notification is queued, none twice.
    #[tokio::test]
    async fn a_failed_read_of_the_spool_is_tried_again_from_where_it_stopped() {
        use crate::logs::Logs;
        use crate::outbound::settings::DeliverySettings;
        use crate::queue::{EngineLimits, MemoryInvalidTokens, StaticResolver};
        use herald_spool::MemorySpool;

        let before = MemorySpool::new();
        let mut n = sample();
        n.binding = Arc::from(DEFAULT_BINDING);
        let ids: Vec<MessageId> = (0..10u64)
            .map(|i| MessageId::from_parts(1, 1_800_000_000_000, i))
            .collect();
        for id in &ids {
            n.id = *id;
            before.append(vec![to_stored(&n)]).await.unwrap();
        }
        let spool: Arc<dyn Spool> = Arc::new(FailingReads {
            inner: before.reopened(),
            failures_left: std::sync::atomic::AtomicU32::new(2),
            visits_before_failing: 4,
        });
        // A route nothing listens on, with delivery held: the notifications stay queued to be counted.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let engine = Arc::new(Engine::new(
            Arc::new(
                StaticResolver::default().with(DeliverySettings::for_tests("apps.example", port)),
            ),
            Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits::default(),
        ));
        engine.set_held(true);
        let progress = RestoreProgress::default();
        let (restored, _) = restore_retrying(
            RestoreFrom {
                spool: spool.clone(),
                finals: None,
            },
            engine.clone(),
            &progress,
            Duration::from_millis(1),
            None,
        )
        .await
        .unwrap();
        assert_eq!((restored.queued, restored.dropped), (10, 0));
        assert_eq!(restored.report.recovered, 10);
        assert!(!restored.interrupted);
        let mut queued: Vec<MessageId> = engine
            .showqueue("apps.example", 100, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        queued.sort();
        assert_eq!(queued, ids, "each spooled notification queued once");
    }

    /// Told which notifications finished (the spool's side of the queue).
    #[derive(Default)]
    struct Finished(std::sync::Mutex<Vec<MessageId>>);

    impl QueueObserver for Finished {
        fn finished(&self, ids: &[MessageId]) {
            self.0.lock().unwrap().extend_from_slice(ids);
        }
        fn rescheduled(&self, _: MessageId, _: u32, _: SystemTime) {}
    }

    /// Outcomes as the status book and the webhooks hear them.
    #[derive(Default)]
    struct Outcomes(std::sync::Mutex<Vec<(MessageId, crate::logs::OutcomeKind, String)>>);

    impl crate::outcomes::OutcomeListener for Outcomes {
        fn outcome(&self, r: &crate::logs::OutcomeRecord<'_>) {
            self.0
                .lock()
                .unwrap()
                .push((r.notification.id, r.kind, r.error.to_owned()));
        }
    }

    /// A notification pulled from the shared stream whose domain this node cannot deliver goes back to the stream
    /// while it is younger than the global `message_expiration`, and fails permanently once it is older, as an
    /// expired notification does: logged and reported with the reason, and removed from the stream.
    #[tokio::test]
    async fn a_pulled_notification_no_node_delivers_fails_once_it_expires() {
        use crate::logs::{Logs, OutcomeKind};
        use crate::queue::{EngineLimits, MemoryInvalidTokens, StaticResolver};

        let engine = Engine::new(
            Arc::new(StaticResolver::default()),
            Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits {
                message_expiration: Duration::from_secs(3600),
                ..EngineLimits::default()
            },
        );
        let finished = Arc::new(Finished::default());
        let outcomes = Arc::new(Outcomes::default());
        engine.set_observer(finished.clone());
        engine.set_outcome_listener(outcomes.clone());
        let released = std::sync::Mutex::new(Vec::new());
        let release = |key: SpoolKey, delay: Duration| released.lock().unwrap().push((key, delay));
        let mut warnings = UnroutedWarnings::default();
        let now = crate::queue::message::unix_now();
        let mut young = sample();
        young.id = MessageId::from_parts(1, 1_800_000_000_000, 1);
        young.received_at = now - 60;
        let mut old = sample();
        old.id = MessageId::from_parts(1, 1_800_000_000_000, 2);
        old.received_at = now - 3601;

        let flow = pull_one(&engine, to_stored(&young), &release, &mut warnings).await;
        assert!(flow.is_continue());
        assert_eq!(
            *released.lock().unwrap(),
            vec![(SpoolKey(young.id.0), UNROUTED_RELEASE)]
        );
        assert!(finished.0.lock().unwrap().is_empty());
        assert!(outcomes.0.lock().unwrap().is_empty());

        let flow = pull_one(&engine, to_stored(&old), &release, &mut warnings).await;
        assert!(flow.is_continue());
        assert_eq!(
            released.lock().unwrap().len(),
            1,
            "the expired one is not given back"
        );
        assert_eq!(*finished.0.lock().unwrap(), vec![old.id]);
        let outcomes = outcomes.0.lock().unwrap();
        assert_eq!(outcomes.len(), 1);
        let (id, kind, error) = &outcomes[0];
        assert_eq!((*id, *kind), (old.id, OutcomeKind::Permanent));
        assert!(
            error.starts_with("554 5.4.7 [internal] exceeded max time without delivery")
                && error.contains("apps.example"),
            "{error}"
        );
        let stats = engine.stats("apps.example").unwrap();
        assert_eq!(
            stats.permanent.load(std::sync::atomic::Ordering::Relaxed),
            1
        );
    }

    /// One warning per domain per interval, counting the notifications it covers.
    #[test]
    fn unrouted_warnings_are_one_per_domain_per_interval_with_a_count() {
        let mut w = UnroutedWarnings::default();
        let t0 = std::time::Instant::now();
        assert_eq!(w.note("a.example", t0), Some(1));
        assert_eq!(w.note("b.example", t0), Some(1));
        for s in 1..=3 {
            assert_eq!(w.note("a.example", t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(w.note("a.example", t0 + UNROUTED_WARN_EVERY), Some(4));
        assert_eq!(w.note("a.example", t0 + UNROUTED_WARN_EVERY), None);
        assert_eq!(w.note("b.example", t0 + UNROUTED_WARN_EVERY * 2), Some(1));
    }

    /// A restore notes the keys it leaves in the spool in spans per queue; a key of the queue it queued in between
    /// ends a span, so that a later pass over the spans queues none that is queued already.
    #[test]
    fn the_keys_left_in_the_spool_are_noted_in_spans_a_queued_one_ends() {
        let (b, d, other): (Arc<str>, Arc<str>, Arc<str>) = (
            Arc::from(DEFAULT_BINDING),
            Arc::from("a.example"),
            Arc::from("b.example"),
        );
        let mut left = LeftInSpool::default();
        left.left(&b, &d, SpoolKey(1));
        left.left(&b, &other, SpoolKey(2));
        left.left(&b, &d, SpoolKey(3));
        left.queued(&b, &d);
        left.left(&b, &d, SpoolKey(5));
        left.left(&b, &d, SpoolKey(6));
        // Spans are ranges of keys: key 2 (another domain's) is in one, but is never a notification of this queue.
        let held: Vec<u128> = (0..8u128)
            .filter(|k| left.holds(&b, &d, SpoolKey(*k)))
            .collect();
        assert_eq!(held, [1, 2, 3, 5, 6], "key 4 of the queue was queued");
        assert!(!left.holds("other-binding", &d, SpoolKey(1)));
        assert!(left.holds(&b, &other, SpoolKey(2)));

        let taken = left.take(&[(b.clone(), d.clone())]);
        assert_eq!(taken.domains(), ["a.example"]);
        assert_eq!(left.domains(), ["b.example"]);
        assert!(!left.holds(&b, &d, SpoolKey(1)));
        left.merge(taken);
        assert!(left.holds(&b, &d, SpoolKey(6)) && !left.holds(&b, &d, SpoolKey(4)));
    }

    #[test]
    fn a_notification_survives_the_round_trip_through_its_record() {
        let n = sample();
        let mut stored = to_stored(&n);
        stored.retries = 2;
        stored.next_attempt_ms = 1_800_000_123_000;
        let (back, retries, next) = from_stored(stored).unwrap();
        assert_eq!(format!("{back:?}"), format!("{n:?}"));
        assert_eq!(retries, 2);
        assert_eq!(
            next,
            Some(UNIX_EPOCH + Duration::from_millis(1_800_000_123_000))
        );
    }

    /// A spooled notification whose final outcome was stored before the restart (its removal from the spool lost to
    /// a crash) is removed from the spool, not queued to be sent again; the others are queued.
    #[tokio::test]
    async fn what_finished_before_the_restart_is_removed_not_sent_again() {
        use crate::logs::Logs;
        use crate::outbound::settings::DeliverySettings;
        use crate::queue::{EngineLimits, MemoryInvalidTokens, StaticResolver};
        use herald_spool::MemorySpool;

        struct Finished(Vec<SpoolKey>);
        impl FinalOutcomes for Finished {
            fn has_final(&self, n: &StoredNotification) -> bool {
                self.0.contains(&n.key)
            }
        }
        let before = MemorySpool::new();
        let mut n = sample();
        n.binding = Arc::from(DEFAULT_BINDING);
        let mut keys = Vec::new();
        for i in 0..4u64 {
            n.id = MessageId::from_parts(1, 1_800_000_000_000, i);
            keys.push(SpoolKey(n.id.0));
            before.append(vec![to_stored(&n)]).await.unwrap();
        }
        let spool: Arc<dyn Spool> = Arc::new(before.reopened());
        let engine = Arc::new(Engine::new(
            Arc::new(
                StaticResolver::default().with(DeliverySettings::for_tests("apps.example", 9)),
            ),
            Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits::default(),
        ));
        engine.set_held(true);
        let finals: Arc<dyn FinalOutcomes> = Arc::new(Finished(vec![keys[1], keys[3]]));
        let progress = RestoreProgress::default();
        let restored = restore(spool.clone(), engine, &progress, Some(finals))
            .await
            .unwrap();
        assert_eq!(
            (
                restored.report.recovered,
                restored.queued,
                restored.already_final
            ),
            (2, 2, 2)
        );
        assert_eq!(
            spool.stats().removed,
            2,
            "the finished ones leave the spool"
        );
    }

    /// Notifications of a domain the configuration no longer has are not queued and stay in the spool (the next
    /// start with the domain configured again delivers them). The status book does not follow them: a lookup does
    /// not call them queued, and the book does not grow with each of them.
    #[tokio::test]
    async fn notifications_of_an_unconfigured_domain_stay_spooled() {
        use crate::logs::Logs;
        use crate::outcomes::book::{Found, StatusBook};
        use crate::queue::{EngineLimits, MemoryInvalidTokens, StaticResolver};
        use herald_spool::{MemorySpool, OutcomeStore};

        let before = MemorySpool::new();
        let mut n = sample();
        for i in 0..3u64 {
            n.id = MessageId::from_parts(1, 1_800_000_000_000, i);
            n.domain = Arc::from("gone.example");
            before.append(vec![to_stored(&n)]).await.unwrap();
        }
        let spool: Arc<dyn Spool> = Arc::new(before.reopened());
        let engine = Arc::new(Engine::new(
            Arc::new(StaticResolver::default()),
            Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits::default(),
        ));
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(3600), 1000);
        engine.set_outcome_listener(book.clone());
        let progress = RestoreProgress::default();
        let restored = restore(spool.clone(), engine, &progress, None)
            .await
            .unwrap();
        assert_eq!(
            book.stats().tracked,
            0,
            "the book follows notifications not queued"
        );
        assert!(matches!(
            book.lookup(&crate::outcomes::key_of(n.id)).unwrap(),
            Found::Unknown
        ));
        assert_eq!(progress.queued(), 0);
        assert_eq!(
            (
                restored.report.recovered,
                restored.queued,
                restored.left_in_spool,
                restored.dropped
            ),
            (3, 0, 3, 0),
            "left in the spool, not dropped"
        );
        assert!(!restored.interrupted);
        assert_eq!(spool.stats().records, 3);
        assert_eq!(spool.stats().removed, 0);
    }
}
