//! The bridge between the queue and herald-spool: accepted notifications become [`StoredNotification`]s (the
//! message id is the spool key), final outcomes remove them, transient failures record the next attempt, and on
//! start every spooled notification is queued again with its retry state, in the background while the server
//! already serves. A final outcome's removal waits until the outcome's records are stored ([`removals`]).

pub mod removals;

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
use crate::queue::{Engine, QueueObserver, SubmitError};

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
}

impl Durable for SpoolBridge {
    fn persist<'a>(&'a self, batch: &'a [Notification]) -> BoxFuture<'a, Result<(), SpoolError>> {
        let records: Vec<StoredNotification> = batch.iter().map(to_stored).collect();
        Box::pin(async move { self.spool.append(records).await })
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

    fn parked(&self, delta: i64) -> usize {
        if self.shared {
            self.spool.park(delta)
        } else {
            0
        }
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
    /// Dropped: unreadable fields, or a domain that is no longer configured (left in the spool).
    pub dropped: u64,
    /// The restore stopped early because the queue is shutting down (the rest stays spooled).
    pub interrupted: bool,
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

/// Reads every notification the spool held when it was opened and queues it again, with its retry state. The
/// spool may already take new notifications meanwhile (recovery does not visit them), so a server can serve while
/// its backlog is restored. Stops early, leaving the rest spooled, when the queue shuts down.
pub async fn restore(
    spool: Arc<dyn Spool>,
    engine: Arc<Engine>,
    progress: &RestoreProgress,
) -> Result<Restored, SpoolError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<StoredNotification>>(8);
    let reader = tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(RESTORE_CHUNK);
        let report = spool.recover_each(&mut |n| {
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
        let _ = tx.blocking_send(chunk);
        report
    });
    let mut restored = Restored::default();
    let mut unroutable = std::collections::HashSet::new();
    'chunks: while let Some(chunk) = rx.recv().await {
        for stored in chunk {
            let id = MessageId(stored.key.0);
            match from_stored(stored) {
                Ok((n, retries, next)) => match engine.restore(n, retries, next).await {
                    Ok(()) => {
                        restored.queued += 1;
                        progress
                            .queued
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    Err(SubmitError::ShuttingDown) => {
                        restored.interrupted = true;
                        break 'chunks;
                    }
                    Err(SubmitError::Unroutable { domain, reason }) => {
                        restored.dropped += 1;
                        // Once per domain: a domain removed from the configuration may hold many.
                        if !unroutable.contains(&domain) {
                            tracing::warn!(
                                "spooled notifications of {domain:?} stay in the spool, not queued: the domain \
                                 cannot deliver: {reason} (first: {id})"
                            );
                            unroutable.insert(domain);
                        }
                    }
                },
                Err(e) => {
                    restored.dropped += 1;
                    tracing::warn!("{e}");
                }
            }
        }
    }
    drop(rx);
    restored.report = reader.await.map_err(|e| {
        SpoolError::from_io("recovery thread", std::io::Error::other(e.to_string()))
    })??;
    Ok(restored)
}

/// Restores the spool (see [`restore`]) in a task of its own and logs the outcome: the server serves meanwhile.
pub fn spawn_restore(
    spool: Arc<dyn Spool>,
    engine: Arc<Engine>,
    progress: Arc<RestoreProgress>,
) -> tokio::task::JoinHandle<Result<Restored, SpoolError>> {
    progress
        .running
        .store(true, std::sync::atomic::Ordering::Relaxed);
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let result = restore(spool, engine, &progress).await;
        progress
            .running
            .store(false, std::sync::atomic::Ordering::Relaxed);
        match &result {
            Ok(r) if r.interrupted => tracing::info!(
                queued = r.queued,
                "spool restore stopped by shutdown after {:?}; the rest stays spooled",
                started.elapsed()
            ),
            Ok(r) if r.report.recovered > 0 || r.report.skipped > 0 => tracing::info!(
                queued = r.queued,
                dropped = r.dropped,
                skipped = r.report.skipped,
                "restored the spool in {:?}",
                started.elapsed()
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(
                "restoring the spool failed after {:?}: {e}; what was not queued stays spooled until the next start",
                started.elapsed()
            ),
        }
        result
    })
}

/// Queues the notifications this node pulls from the JetStream spool, as long as the engine runs. Each keeps the id
/// its sender was answered on the node that accepted it (its spool key, carried in the message): it is delivered,
/// logged, looked up and reported to webhooks under that id, and the spool acks, naks or hands back its message by
/// that id ([`QueueObserver`] above). A notification that cannot be queued (unreadable, or of a domain this node does
/// not know) goes back to the stream after a delay, for a node that can.
pub fn spawn_pull(spool: Arc<herald_spool::JetStreamSpool>, engine: Arc<Engine>) {
    let Some(mut deliveries) = spool.take_deliveries() else {
        return;
    };
    tokio::spawn(async move {
        while let Some(stored) = deliveries.recv().await {
            let key = stored.key;
            match from_stored(stored) {
                Ok((n, retries, next)) => {
                    if let Err(e) = engine.restore(n, retries, next).await {
                        tracing::warn!("{key}: not queued ({e}); back to the stream for a minute");
                        spool.release(key, Duration::from_secs(60));
                        if matches!(e, SubmitError::ShuttingDown) {
                            return;
                        }
                    }
                }
                // A field value this build does not know (a newer herald accepted it): for a node that does.
                Err(e) => {
                    let delay = herald_spool::jetstream::NEWER_FORMAT_DELAY;
                    tracing::warn!(
                        "{e}; back to the stream for {delay:?}, for a node that reads it"
                    );
                    spool.release(key, delay);
                }
            }
        }
    });
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

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

    /// Notifications of a domain the configuration no longer has are not queued and stay in the spool (the next
    /// start with the domain configured again delivers them).
    #[tokio::test]
    async fn notifications_of_an_unconfigured_domain_stay_spooled() {
        use crate::logs::Logs;
        use crate::queue::{EngineLimits, MemoryInvalidTokens, StaticResolver};
        use herald_spool::MemorySpool;

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
        let progress = RestoreProgress::default();
        let restored = restore(spool.clone(), engine, &progress).await.unwrap();
        assert_eq!(progress.queued(), 0);
        assert_eq!(
            (restored.report.recovered, restored.queued, restored.dropped),
            (3, 0, 3)
        );
        assert!(!restored.interrupted);
        assert_eq!(spool.stats().records, 3);
        assert_eq!(spool.stats().removed, 0);
    }
}
