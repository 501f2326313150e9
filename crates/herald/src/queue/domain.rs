//! One domain's queue and its task: the active queue (ready now), the delayed queue (waiting for a retry time),
//! the pool that delivers them, and the handling of every outcome: log it once, count it, and retry, fail or
//! report the token, as the retry policy and the outcome class say (docs/momentum-compat.md#retries,
//! docs/architecture.md#outcome, docs/apns-protocol.md#classification).
//!
//! The task looks at its queues and pool every [`TICK`] while it has work (notifications ready or in flight,
//! connections open); without any it rests, woken only by its events and by its first retry time, so that a process
//! serving thousands of quiet apps spends nothing on them.
//!
//! The delayed queue is a binary heap ordered by due time, not tokio-util's `DelayQueue`: the console and the
//! dashboard list it in due order, `flush` makes all of it due at once and message actions find entries by id, none
//! of which `DelayQueue` offers without a second index beside it; retry times are seconds to hours apart, so the
//! first due time is all a timer is needed for, and no timer is kept per notification.
//!
//! A task that panics does not take its queue with it: [`DomainTask::run`] catches the panic, the engine forgets
//! the task ([`EngineShared::queue_failed`]) and what it held goes to a new task of the same queue, with the same
//! counters ([`DomainTask::failed`]). The task knows by id every notification whose memory permit it holds
//! ([`Owned`]), so that those the panic took with it are known too: their memory is given back and the spool is
//! told ([`EngineShared::abandoned`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use herald_apns::client::{ConnectionInfo, Job, NotSentReason, OutcomeSink, PushResult};
use herald_apns::outcome::FailureClass;
use tokio::sync::{mpsc, oneshot};

use super::message::{MessageId, Queued, unix_now, unix_now_ms};
use super::retry::RetryDecision;
use super::stats::DomainStats;
use super::{EngineShared, InvalidToken};
use crate::logs::{OutcomeKind, OutcomeRecord};
use crate::outbound::pool::{ConnectOutcome, ConnectResult, Pool, PoolEvents};
use crate::outbound::settings::DeliverySettings;

/// How often the delayed queue and the pool are looked at.
const TICK: Duration = Duration::from_millis(50);
/// How long what a failed task held waits in the new task before it is sent again, after the queue's first
/// failure; doubled at each later one, up to [`FAILED_TASK_HOLD_MAX`]. Should one notification make the task
/// panic, the queue fails at most once per hold instead of as fast as tasks can start.
const FAILED_TASK_HOLD: Duration = Duration::from_secs(1);
const FAILED_TASK_HOLD_MAX: Duration = Duration::from_secs(64);
/// How often, at most, the oldest queued notification is looked for.
const OLDEST_SCAN_EVERY: Duration = Duration::from_secs(1);
/// How often, at most, what waits in the pool for a free stream is looked at for notifications that expired
/// meanwhile (see [`DomainTask::expire_waiting`]).
const WAITING_LOOK_EVERY: Duration = Duration::from_secs(1);
/// Events handled per loop before work is dispatched again.
const EVENT_BATCH: usize = 512;
/// At most one transient-failure line per queue this often for failed connection attempts.
const CONNECT_FAILURE_LOG_EVERY: Duration = Duration::from_secs(1);
/// Slots a busy queue keeps however little it holds (see [`shrunk_capacity`]), so that one filled and emptied in
/// every turn is not shrunk and grown again each time; a resting task keeps none.
const BUSY_QUEUE_FLOOR: usize = 4096;
/// The shortest time a parked notification above the node's parking room goes back to the shared stream for
/// (see [`DomainTask::report_parked`]): long enough not to come straight back while the queue stays parked.
const PARKED_HAND_BACK: Duration = Duration::from_secs(60);
/// A notification on a connection that is lost before it was written in full goes back to the queue without
/// counting an attempt (APNs never had all of it; one written in full is reported as unanswered and takes the retry
/// schedule, as APNs may have processed it); every third such loss in a row counts as a failed attempt
/// (`ConnectionLost`, retried on the domain's schedule), so that one notification that makes the connection drop
/// cannot be sent again and again at the pace connections open.
///
/// A refused stream (`REFUSED_STREAM`, or above the last stream id of a GOAWAY: APNs did not process it) counts
/// alike, in the same count ([`Queued::losses`]): the notification goes back to the queue at once, and the third
/// time in a row it comes back unanswered, lost or refused, it takes a failed attempt (`StreamRefused` when the
/// last was a refusal), so that stream limits that keep changing cannot refuse it again and again until it
/// expires without ever reaching `max_retries`.
pub(crate) const LOSSES_PER_ATTEMPT: u8 = 3;

/// What a domain's task is told.
pub enum DomainEvent {
    Enqueue(Box<Queued>),
    /// A notification recovered from the spool whose next attempt is this far away.
    EnqueueDelayed(Box<Queued>, Duration),
    Outcome {
        tag: Box<Queued>,
        result: PushResult,
        remote: Option<std::net::IpAddr>,
    },
    Connected {
        generation: u64,
        result: ConnectResult,
    },
    /// Make every delayed notification due now (`flush domain`).
    Flush,
    /// Look at the queue again (a pause or a hold on delivery set or lifted).
    Wake,
    /// List queued notifications (`showqueue`), active first, skipping `offset`.
    List {
        limit: usize,
        offset: usize,
        reply: oneshot::Sender<Vec<QueueEntry>>,
    },
    /// Fail every queued notification that is not on the wire (`fail domain`); replies with the count.
    FailAll {
        reason: String,
        reply: oneshot::Sender<usize>,
    },
    /// Act on one notification by id (`message details|retry|fail`); replies `None` if it is not queued here.
    Message {
        /// The id as printed (`NN/NN-PPPPP-XXXXXXXX`).
        id: String,
        action: MessageAction,
        reply: oneshot::Sender<Option<QueueEntry>>,
    },
    /// New settings (after a configuration reload): open connections drain, new ones use these.
    Reconfigure {
        settings: Arc<DeliverySettings>,
        /// The engine's reconfiguration count read before these settings were resolved (see [`Epoch`]).
        epoch: Epoch,
    },
    /// The configuration in force cannot deliver this queue (a reload removed its route, its binding, its APNs
    /// delivery, or its credentials fail): nothing more is sent until a [`DomainEvent::Reconfigure`] comes; the
    /// notifications wait, as they would in the spool across a restart.
    Unroutable {
        reason: String,
        /// As for [`DomainEvent::Reconfigure`].
        epoch: Epoch,
    },
    /// The outcome of a notification that a failed task of this queue had put on a connection
    /// ([`DomainTask::failed`]): handled as any outcome, but it was never handed to this task's pool.
    Adopt {
        tag: Box<Queued>,
        result: PushResult,
        remote: Option<std::net::IpAddr>,
    },
    /// Makes the task panic (tests of what follows a failed task); with a notification (and its memory permit),
    /// the task takes it in as an [`DomainEvent::Enqueue`] and panics with it in hand, so that the panic takes it
    /// with it.
    #[cfg(test)]
    Panic(Option<Box<Queued>>),
}

impl DomainEvent {
    /// The notification the event carries, if it carries one (and with it a memory permit).
    pub(crate) fn notification_id(&self) -> Option<MessageId> {
        match self {
            DomainEvent::Enqueue(item)
            | DomainEvent::EnqueueDelayed(item, _)
            | DomainEvent::Outcome { tag: item, .. }
            | DomainEvent::Adopt { tag: item, .. } => Some(item.notification.id),
            #[cfg(test)]
            DomainEvent::Panic(Some(item)) => Some(item.notification.id),
            _ => None,
        }
    }
}

/// How many reloads the engine had listed its queues for when a queue's settings were resolved. Resolutions run
/// on blocking threads and their answers can arrive out of order (two reloads back to back, a queue starting
/// during one): a queue applies an answer only if it is not older than the last one it applied, so an earlier
/// configuration's verdict never overrides a later one's.
pub type Epoch = u64;

/// What `message` commands do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageAction {
    Details,
    /// Make it due now.
    Retry,
    /// Fail it permanently with this reason.
    Fail(String),
}

/// One queued notification as the console shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueEntry {
    pub id: MessageId,
    pub domain: Arc<str>,
    /// The binding it is delivered from.
    pub binding: Arc<str>,
    /// `active` (ready or being delivered) or `delayed` (waiting for a retry).
    pub queue: &'static str,
    pub received_at: u64,
    pub sender: Arc<str>,
    pub recipient: Arc<str>,
    /// The device token, redacted.
    pub token: String,
    pub retries: u32,
    pub payload_len: usize,
    /// Seconds until the next attempt, for delayed ones.
    pub due_in_secs: Option<u64>,
}

/// The channel into a domain's task; also the pool's outcome sink.
#[derive(Clone)]
pub struct DomainSender(pub mpsc::UnboundedSender<DomainEvent>);

impl OutcomeSink<Box<Queued>> for DomainSender {
    fn report(&self, tag: Box<Queued>, result: PushResult, conn: &ConnectionInfo) {
        let remote = (conn.id != 0).then(|| conn.remote.ip());
        let _ = self.0.send(DomainEvent::Outcome {
            tag,
            result,
            remote,
        });
    }
}

impl PoolEvents for DomainSender {
    fn connected(&self, generation: u64, result: ConnectResult) {
        let _ = self.0.send(DomainEvent::Connected { generation, result });
    }
}

struct Delayed {
    due: Instant,
    seq: u64,
    item: Box<Queued>,
    /// Set when this queue's retry schedule set `due` (a transient failure here): a reload that changes the schedule
    /// decides it again ([`DomainTask::retime_delayed`]). Notifications held back for other reasons (taken over
    /// from a failed task, restored from the spool) keep the time they were given.
    retry: bool,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// What a notification ran out of, failing for good: its retries (`max_retries`) or its time
/// (`message_expiration`).
#[derive(Debug, Clone, Copy)]
enum OutOf {
    Retries,
    Time,
}

/// The logs' reason and the metrics' label of a notification that ran out of retries or time, after its last
/// error `error` (counted under `label`): `exceeded max retries; last error: …`, `554 5.4.7 [internal] exceeded
/// max time without delivery; last error: …`.
fn out_of(what: OutOf, error: &str, label: &str) -> (String, String) {
    let (code, why) = match what {
        OutOf::Retries => ("", "exceeded max retries"),
        OutOf::Time => (
            "554 5.4.7 [internal] ",
            "exceeded max time without delivery",
        ),
    };
    (
        format!("{code}{why}; last error: {error}"),
        format!("{why}; last error: {label}"),
    )
}

/// Notifications handed to the pool and not yet reported back: how many, and how many by reception second (few
/// distinct seconds at a time), so that the oldest of them is known without visiting them.
#[derive(Debug, Default)]
struct Outstanding {
    count: usize,
    by_received: BTreeMap<u64, u32>,
}

impl Outstanding {
    fn add(&mut self, item: &Queued) {
        self.count += 1;
        *self
            .by_received
            .entry(item.notification.received_at)
            .or_default() += 1;
    }

    fn remove(&mut self, item: &Queued) {
        self.count = self.count.saturating_sub(1);
        let at = item.notification.received_at;
        if let Some(n) = self.by_received.get_mut(&at) {
            *n -= 1;
            if *n == 0 {
                self.by_received.remove(&at);
            }
        }
    }

    fn oldest(&self) -> Option<u64> {
        self.by_received.keys().next().copied()
    }
}

/// The notifications whose memory permit a task holds, by id: what a panic took with it is what is left here once
/// the failed task has handed over the rest ([`DomainTask::failed`]). An id may be held more than once (tests give
/// notifications no id): each counts.
#[derive(Debug, Default)]
struct Owned {
    by_id: rustc_hash::FxHashMap<MessageId, u32>,
    count: usize,
}

impl Owned {
    fn add(&mut self, id: MessageId) {
        *self.by_id.entry(id).or_default() += 1;
        self.count += 1;
    }

    /// Forgets one of `id`; nothing when it is not held.
    fn remove(&mut self, id: MessageId) {
        if let std::collections::hash_map::Entry::Occupied(mut held) = self.by_id.entry(id) {
            *held.get_mut() -= 1;
            if *held.get() == 0 {
                held.remove();
            }
            self.count -= 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Every id held, as many times as it is.
    fn into_ids(self) -> Vec<MessageId> {
        self.by_id
            .into_iter()
            .flat_map(|(id, n)| std::iter::repeat_n(id, n as usize))
            .collect()
    }
}

pub struct DomainTask {
    settings: Arc<DeliverySettings>,
    active: VecDeque<Box<Queued>>,
    /// Notifications a batch of outcome events sends again at once ([`DomainTask::requeue_first`]), in the order they
    /// were reported, until the batch ends and they go to the front of `active` in that order.
    front_batch: VecDeque<Box<Queued>>,
    /// How many of the notifications at the front of `active` this batch already put there (a listing in the
    /// middle of the batch moved them from `front_batch`): those kept after it go behind them.
    front_placed: usize,
    /// Whether a batch of events is being handled (outcomes then wait in `front_batch`).
    batching: bool,
    delayed: BinaryHeap<Reverse<Delayed>>,
    seq: u64,
    pool: Pool,
    /// Pools replaced by a reload whose connections still finish their work.
    retired: Vec<Pool>,
    generation: u64,
    /// Handed to the pool and not yet reported back.
    outstanding: Outstanding,
    /// When what waits in the pool is looked at next (see [`DomainTask::expire_waiting`]).
    next_waiting_look: Instant,
    /// The first Unix second at which a notification handed to the pool since its last look could fail without an
    /// attempt ([`DomainTask::refused_from`]); `u64::MAX` for none. It stays when a connection takes the
    /// notification it came from, so it may come early, never late.
    waiting_deadline: u64,
    /// When a failed connection attempt was last logged (see [`CONNECT_FAILURE_LOG_EVERY`]).
    connect_failure_logged: Option<Instant>,
    sender: DomainSender,
    events: mpsc::UnboundedReceiver<DomainEvent>,
    shared: Arc<EngineShared>,
    stats: Arc<DomainStats>,
    /// When the oldest queued notification is looked for next (see [`DomainTask::scan_oldest`]).
    next_oldest_scan: Instant,
    /// Notifications that reached their final outcome since the observer was last told (see
    /// [`DomainTask::report_finished`]).
    finished: Vec<MessageId>,
    /// Why the configuration in force cannot deliver this queue, while it cannot (see [`DomainEvent::Unroutable`]).
    unroutable: Option<String>,
    /// The epoch of the settings in force (see [`Epoch`]).
    epoch: Epoch,
    /// How many notifications the observer was last told this queue parks (see [`DomainTask::report_parked`]).
    parked: usize,
    /// Notifications whose memory permit this task holds: taken with [`DomainEvent::Enqueue`],
    /// [`DomainEvent::EnqueueDelayed`] and [`DomainEvent::Adopt`], given back at their final outcome or when the
    /// store takes them back. What a panic takes with it is left here, so that its memory is given back and the
    /// spool hears of it ([`DomainTask::failed`]).
    owned: Owned,
}

impl DomainTask {
    pub fn new(
        settings: Arc<DeliverySettings>,
        epoch: Epoch,
        sender: DomainSender,
        events: mpsc::UnboundedReceiver<DomainEvent>,
        shared: Arc<EngineShared>,
        stats: Arc<DomainStats>,
    ) -> Self {
        let sink = Arc::new(sender.clone());
        let pool = Pool::new(settings.clone(), 0, sink.clone(), sink);
        DomainTask {
            settings,
            active: VecDeque::new(),
            front_batch: VecDeque::new(),
            front_placed: 0,
            batching: false,
            delayed: BinaryHeap::new(),
            seq: 0,
            pool,
            retired: Vec::new(),
            generation: 0,
            outstanding: Outstanding::default(),
            next_waiting_look: Instant::now(),
            waiting_deadline: u64::MAX,
            connect_failure_logged: None,
            sender,
            events,
            shared,
            stats,
            next_oldest_scan: Instant::now(),
            finished: Vec::new(),
            unroutable: None,
            epoch,
            parked: 0,
            owned: Owned::default(),
        }
    }

    /// Runs the queue until it retires. A panic of its work ends this task, not the queue: see
    /// [`DomainTask::failed`].
    pub async fn run(mut self) {
        let ended = {
            let work = std::pin::pin!(self.work());
            CatchUnwind(work).await
        };
        match ended {
            Ok(()) => {
                self.report_finished();
                self.shared.parked(-(self.parked as i64));
            }
            Err(panic) => self.failed(panic).await,
        }
    }

    /// The task's loop: events, looks every [`TICK`] while busy, rest, retirement.
    async fn work(&mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Whether the last look was taken since the task had nothing more to look after (see `Self::busy`).
        let mut settled = false;
        // When the task came to rest: with nothing delayed either, it retires `idle_queue_timeout` later.
        let mut rest_since = Instant::now();
        loop {
            self.dispatch();
            self.report_finished();
            self.report_parked();
            let busy = self.busy();
            if !busy && !settled {
                // One more look, so that the figures it publishes (no connection, the sizes, the next retry, the
                // oldest notification still here) are those the task rests with.
                self.on_tick();
                if !self.active.is_empty() {
                    // A retry came due in this look: it is sent before the task rests.
                    continue;
                }
                self.scan_oldest();
                self.give_back_memory(0);
                settled = true;
                rest_since = Instant::now();
                self.stats.resting.store(true, Ordering::Relaxed);
            } else if busy && settled {
                settled = false;
                self.stats.resting.store(false, Ordering::Relaxed);
            }
            let next_retry = self.delayed.peek().map(|Reverse(d)| d.due);
            let retire_at = self
                .shared
                .idle_queue_timeout()
                .filter(|_| settled && self.holds_nothing())
                .and_then(|after| rest_since.checked_add(after));
            tokio::select! {
                event = self.events.recv() => {
                    let Some(event) = event else { break };
                    self.handle_batch(event);
                }
                _ = tick.tick(), if busy => self.on_tick(),
                // At rest, only the first delayed notification's retry time wakes the task.
                _ = sleep_until(next_retry), if !busy && next_retry.is_some() => self.on_tick(),
                // Idle for `idle_queue_timeout`: the task and its pool go, unless something came meanwhile.
                _ = sleep_until(retire_at), if retire_at.is_some() => {
                    if self.holds_nothing() && self.shared.retire(&self.settings.binding, &self.settings.domain, &self.events) {
                        break;
                    }
                    rest_since = Instant::now();
                }
            }
        }
    }

    /// The task panicked (a defect): the engine forgets it, so that the queue's next notification starts a new task
    /// with the same counters, and what it held goes to that task. Notifications queued or delayed here, or waiting
    /// for a connection, are handed over at once, due after a hold that doubles with each failure of the queue
    /// ([`FAILED_TASK_HOLD`]); those on a connection are handed over with their outcome, as the connections finish
    /// what they carry and close; those that arrive meanwhile are handed over as they come.
    ///
    /// What the panic took with it (the notifications being handled at that moment: what is left in [`Owned`] once
    /// the rest is handed over), and whatever cannot be handed to a new task (its domain no longer configured, the
    /// engine shutting down), gives its memory back and is told to the observer ([`EngineShared::abandoned`]): the
    /// JetStream spool gives it back to the stream, to be pulled again after the same hold (by this node or
    /// another); the embedded spool keeps it for the next start.
    async fn failed(mut self, panic: Box<dyn std::any::Any + Send>) {
        self.flush_front();
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_owned());
        let DomainTask {
            settings,
            active,
            delayed,
            pool,
            retired,
            sender,
            mut events,
            shared,
            mut finished,
            parked,
            mut owned,
            stats,
            ..
        } = self;
        // Nothing is queued, in flight or connected here any more (the new task publishes its own figures).
        stats.set_queue_sizes(0, 0);
        stats.dispatched.store(0, Ordering::Relaxed);
        stats.set_connections(0);
        stats.set_in_flight(0);
        stats.set_stream_limit(0);
        stats.resting.store(true, Ordering::Relaxed);
        let failures = shared.queue_failed(&settings.binding, &settings.domain, &sender);
        tracing::error!(
            domain = %settings.domain, binding = %settings.binding,
            "the queue's task failed ({what}); a new task takes over its notifications"
        );
        let key = (settings.binding.clone(), settings.domain.clone());
        // The observer's calls may be what panicked: one panicking again leaves the spool as it is (the notifications
        // finished here come back at the next start).
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if !finished.is_empty() {
                shared.finished(&finished);
                finished.clear();
            }
            shared.parked(-(parked as i64));
        }));
        let hold = FAILED_TASK_HOLD
            .saturating_mul(1 << failures.saturating_sub(1).min(6))
            .min(FAILED_TASK_HOLD_MAX);
        // Tells the observer of notifications no task holds any more (their memory is given back already): true
        // when the store took them back to deliver them again. The observer may be what panicked: one panicking
        // again leaves them as they are (in the spool for the next start).
        let abandon = |ids: &[MessageId]| {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| shared.abandoned(ids, hold)))
                .unwrap_or(false)
        };
        let now = Instant::now();
        let mut rescued: Vec<DomainEvent> = active
            .into_iter()
            .map(|item| DomainEvent::EnqueueDelayed(item, hold))
            .chain(delayed.into_iter().map(|Reverse(d)| {
                let due = d.due.saturating_duration_since(now).max(hold);
                DomainEvent::EnqueueDelayed(d.item, due)
            }))
            .collect();
        let mut pool = pool;
        if let Ok(waiting) =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| pool.take_waiting()))
        {
            rescued.extend(
                waiting
                    .into_iter()
                    .map(|job| DomainEvent::EnqueueDelayed(job.tag, hold)),
            );
        }
        // The connections finish what they carry and close; their outcomes come here.
        drop(pool);
        drop(retired);
        drop(sender);
        // Not handed to a new task (its permit is given back by `hand_event`).
        let mut unqueued = Vec::new();
        for event in rescued {
            let id = event.notification_id();
            if let Some(id) = id {
                owned.remove(id);
            }
            if shared
                .hand_event(&key.0, &key.1, event, super::Arrival::Restored)
                .await
                .is_err()
            {
                unqueued.extend(id);
            }
        }
        if !unqueued.is_empty() {
            abandon(&unqueued);
        }
        // Until the last sender is gone: the connections' outcomes and what was sent to this task before the
        // engine forgot it.
        while let Some(event) = events.recv().await {
            let event = match event {
                // Their permits came with them: this task never counted them.
                DomainEvent::Enqueue(_)
                | DomainEvent::EnqueueDelayed(..)
                | DomainEvent::Adopt { .. } => event,
                DomainEvent::Outcome {
                    tag,
                    result,
                    remote,
                } => {
                    owned.remove(tag.notification.id);
                    DomainEvent::Adopt {
                        tag,
                        result,
                        remote,
                    }
                }
                DomainEvent::Connected {
                    result: Ok(state), ..
                } => {
                    state.drain();
                    continue;
                }
                // Replies not sent: the asker sees the queue as gone.
                _ => continue,
            };
            let id = event.notification_id();
            if shared
                .hand_event(&key.0, &key.1, event, super::Arrival::Restored)
                .await
                .is_err()
                && let Some(id) = id
            {
                abandon(&[id]);
            }
        }
        if !owned.is_empty() {
            let lost = owned.into_ids();
            // Every notification of this queue is of its domain (the queue's key, which its settings were
            // resolved for): the count by domain goes down with the permits.
            shared.release_many(&settings.domain, lost.len());
            let count = lost.len();
            if abandon(&lost) {
                tracing::warn!(
                    domain = %settings.domain, binding = %settings.binding,
                    "{count} notification(s) went with the failed task of the queue: they go back to the stream, \
                     to be delivered again in {} s",
                    hold.as_secs()
                );
            } else {
                tracing::warn!(
                    domain = %settings.domain, binding = %settings.binding,
                    "{count} notification(s) went with the failed task of the queue: they stay in the spool, \
                     delivered again at the next start"
                );
            }
        }
    }

    /// Whether the task has something to look after every [`TICK`]: notifications ready or handed to the pool,
    /// connections open or being opened (idle timeouts, the figures), a pool replaced by a reload still finishing.
    /// A domain without any rests: it wakes for its events and for its next retry time only, so that thousands of
    /// quiet domains cost no CPU.
    fn busy(&self) -> bool {
        !self.active.is_empty()
            || self.outstanding.count > 0
            || self.pool.is_active()
            || !self.retired.is_empty()
    }

    /// Whether the task holds no notification at all (none ready, delayed, handed to the pool, or whose memory
    /// permit it keeps): only such a task may retire, as retiring drops whatever it holds.
    fn holds_nothing(&self) -> bool {
        self.active.is_empty()
            && self.delayed.is_empty()
            && self.outstanding.count == 0
            && self.owned.is_empty()
    }

    /// A notification reached its final outcome: its memory is released now, and the observer (the spool, which
    /// forgets it) hears of it with the others of this turn, in one call ([`DomainTask::report_finished`]).
    fn finished(&mut self, item: &Queued) {
        self.owned.remove(item.notification.id);
        self.shared.release(&item.notification.domain);
        self.finished.push(item.notification.id);
    }

    /// Asks the store to take `item` back for a retry after `delay` ([`EngineShared::handed_back`]); true when it
    /// did, and its memory is given back. The task forgets it before the outcome listener hears that it left: should
    /// the listener panic, [`DomainTask::failed`] does not give the same memory back a second time.
    fn hand_back(&mut self, item: &Queued, delay: Duration) -> bool {
        if !self.shared.handed_back(item, delay) {
            return false;
        }
        self.owned.remove(item.notification.id);
        // What the status book remembers of it until a node pulls it again: its attempts and when it is due.
        if let Some(l) = self.shared.listener() {
            l.rescheduled(
                item.notification.id,
                item.retries,
                std::time::SystemTime::now() + delay,
            );
        }
        self.shared.left(item.notification.id);
        true
    }

    /// Forgets `item`, which this node no longer owns ([`EngineShared::lapsed`]: the store forgot it, and another
    /// node delivers it): no outcome, its memory given back (by [`EngineShared::lapsed`]), the outcome listener told
    /// that it left.
    fn forget_lapsed(&mut self, item: &Queued) {
        self.owned.remove(item.notification.id);
        self.shared.left(item.notification.id);
    }

    /// Tells the observer of the notifications finished since the last call: once per turn of the task's loop, so
    /// a busy domain hands the spool one removal per batch of answers rather than one per notification.
    fn report_finished(&mut self) {
        if !self.finished.is_empty() {
            // Taken first: should the observer fail, the task's failure does not report them a second time.
            let finished = std::mem::take(&mut self.finished);
            self.shared.finished(&finished);
            // The allocation is kept for the next turn.
            self.finished = finished;
            self.finished.clear();
        }
    }

    /// Tells the observer how many notifications this queue parks: while it is paused or has no route, everything
    /// waiting here. On the JetStream spool they take no pull room, so that a parked domain does not stop the node
    /// pulling for the others (docs/scale-out.md). Above the node's parking room the oldest go back to the stream,
    /// for another node or for later, for as long as the retry schedule would make them wait (at least
    /// [`PARKED_HAND_BACK`]): the stream counts each return as a retry, so a notification parked again and again
    /// runs out of retries no sooner than one retried on the schedule would. One whose retries or
    /// `message_expiration` would not allow that stays parked here.
    fn report_parked(&mut self) {
        let parking = self.stats.paused.load(Ordering::Relaxed) || self.unroutable.is_some();
        let now = if parking {
            self.active.len() + self.delayed.len()
        } else {
            0
        };
        if now == self.parked {
            return;
        }
        let excess = self.shared.parked(now as i64 - self.parked as i64);
        self.parked = now;
        if excess == 0 || !parking {
            return;
        }
        let now_s = unix_now();
        let mut given = 0;
        let mut kept = VecDeque::new();
        while given < excess {
            let Some(item) = self.active.pop_front() else {
                break;
            };
            let age = Duration::from_secs(now_s.saturating_sub(item.notification.received_at));
            let delay = match self.settings.retry.after_failure(item.retries, age) {
                RetryDecision::RetryIn(delay) => delay.max(PARKED_HAND_BACK),
                RetryDecision::RetriesExhausted | RetryDecision::Expired => {
                    kept.push_back(item);
                    continue;
                }
            };
            if !self.hand_back(&item, delay) {
                kept.push_back(item);
                break;
            }
            given += 1;
        }
        while let Some(item) = kept.pop_back() {
            self.active.push_front(item);
        }
        if given > 0 {
            self.shared.parked(-(given as i64));
            self.parked -= given;
            tracing::info!(
                domain = %self.settings.domain,
                "{given} parked notification(s) went back to the stream for {} s: the node parks no more \
                 (spool_nats_max_held)",
                PARKED_HAND_BACK.as_secs()
            );
        }
    }

    /// Handles `first` and the events already waiting behind it, up to [`EVENT_BATCH`] of them.
    fn handle_batch(&mut self, first: DomainEvent) {
        self.batching = true;
        self.handle(first);
        for _ in 0..EVENT_BATCH {
            match self.events.try_recv() {
                Ok(event) => self.handle(event),
                Err(_) => break,
            }
        }
        self.batching = false;
        self.flush_front();
    }

    /// Puts `item` back at the front of the active queue, to be sent again first. Within a batch of events it
    /// waits for the batch's end, so that the notifications a connection hands back together (oldest first: its
    /// window after an error packet, or what was on it when it was lost) keep their order: pushed to the front one
    /// by one they would go out newest first, while the device shows the last one received (notifications sharing
    /// an `apns-collapse-id`; and APNs keeps only an app's most recent notification for a device that is offline).
    fn requeue_first(&mut self, item: Box<Queued>) {
        if self.batching {
            self.front_batch.push_back(item);
        } else {
            self.active.push_front(item);
        }
    }

    /// Moves what [`DomainTask::requeue_first`] kept during a batch to the front of the active queue, in its order,
    /// behind those the batch put there before.
    fn flush_front(&mut self) {
        if !self.front_batch.is_empty() {
            let placed = self.front_placed.min(self.active.len());
            let earlier: Vec<Box<Queued>> = self.active.drain(..placed).collect();
            let added = self.front_batch.len();
            for item in self
                .front_batch
                .drain(..)
                .rev()
                .chain(earlier.into_iter().rev())
            {
                self.active.push_front(item);
            }
            self.front_placed = placed + added;
        }
        if !self.batching {
            self.front_placed = 0;
        }
    }

    fn handle(&mut self, event: DomainEvent) {
        // An event that reads or rearranges the active queue sees it as outcomes handled one at a time would have
        // left it; after one that rearranges it, nothing at its front is known to come from this batch.
        let (reads, rearranges) = match &event {
            DomainEvent::Outcome { .. }
            | DomainEvent::Adopt { .. }
            | DomainEvent::Enqueue(_)
            | DomainEvent::EnqueueDelayed(..)
            | DomainEvent::Wake
            | DomainEvent::Flush => (false, false),
            DomainEvent::List { .. } => (true, false),
            _ => (true, true),
        };
        if reads {
            self.flush_front();
        }
        if rearranges {
            self.front_placed = 0;
        }
        match event {
            DomainEvent::Enqueue(item) => {
                self.owned.add(item.notification.id);
                self.active.push_back(item);
            }
            DomainEvent::EnqueueDelayed(item, delay) => {
                self.owned.add(item.notification.id);
                self.seq += 1;
                self.delayed.push(Reverse(Delayed {
                    due: crate::model::instant_after(delay),
                    seq: self.seq,
                    item,
                    retry: false,
                }));
            }
            DomainEvent::Outcome {
                tag,
                result,
                remote,
            } => {
                self.outstanding.remove(&tag);
                self.on_outcome(tag, result, remote);
            }
            DomainEvent::Adopt {
                tag,
                result,
                remote,
            } => {
                self.owned.add(tag.notification.id);
                self.on_outcome(tag, result, remote);
            }
            #[cfg(test)]
            DomainEvent::Panic(item) => {
                if let Some(item) = &item {
                    self.owned.add(item.notification.id);
                }
                panic!("a test made the queue's task panic");
            }
            DomainEvent::Connected { generation, result } => {
                // An attempt a replaced pool started goes back to that pool, which closes it and counts it
                // until it has.
                let pool = match self
                    .retired
                    .iter_mut()
                    .find(|p| p.generation() == generation)
                {
                    Some(retired) => retired,
                    None => &mut self.pool,
                };
                // While the queue is unroutable, an attempt started before on the route no longer in force
                // neither delays nor logs its notifications: they wait for a configuration that delivers them.
                let current = generation == self.generation && self.unroutable.is_none();
                match pool.on_connected(generation, result) {
                    ConnectOutcome::Failed { delay_domain: true } if current => self.delay_domain(),
                    ConnectOutcome::Failed {
                        delay_domain: false,
                    } if current => self.log_connect_failure(),
                    ConnectOutcome::Opened
                    | ConnectOutcome::Failed { .. }
                    | ConnectOutcome::Stale => {}
                }
            }
            DomainEvent::Wake => {}
            DomainEvent::Flush => {
                while let Some(Reverse(d)) = self.delayed.pop() {
                    self.active.push_back(d.item);
                }
            }
            DomainEvent::List {
                limit,
                offset,
                reply,
            } => {
                let now = Instant::now();
                // Handed to the pool and not taken by a connection yet: ready, ahead of the active queue. Taken
                // out to be listed, and handed back in the same order.
                let waiting = self.pool.take_waiting();
                let pooled: Vec<QueueEntry> = waiting
                    .iter()
                    .map(|j| self.entry(&j.tag, "active", None))
                    .collect();
                for job in waiting {
                    self.pool.submit(job);
                }
                let active = pooled
                    .into_iter()
                    .chain(self.active.iter().map(|i| self.entry(i, "active", None)));
                let mut delayed: Vec<&Delayed> = self.delayed.iter().map(|Reverse(d)| d).collect();
                delayed.sort();
                let delayed = delayed.into_iter().map(|d| {
                    self.entry(
                        &d.item,
                        "delayed",
                        Some(d.due.saturating_duration_since(now).as_secs()),
                    )
                });
                let _ = reply.send(active.chain(delayed).skip(offset).take(limit).collect());
            }
            DomainEvent::FailAll { reason, reply } => {
                let mut items: Vec<Box<Queued>> = self.active.drain(..).collect();
                items.extend(
                    std::mem::take(&mut self.delayed)
                        .into_iter()
                        .map(|Reverse(d)| d.item),
                );
                let waiting = self.pool.take_waiting();
                for job in &waiting {
                    self.outstanding.remove(&job.tag);
                }
                items.extend(waiting.into_iter().map(|j| j.tag));
                let n = items.len();
                for item in items {
                    self.finish_permanent(item, Attempt::NONE, &reason, &reason, None);
                }
                let _ = reply.send(n);
            }
            DomainEvent::Message { id, action, reply } => {
                let _ = reply.send(self.message(&id, action));
            }
            DomainEvent::Unroutable { epoch, .. } | DomainEvent::Reconfigure { epoch, .. }
                if epoch < self.epoch =>
            {
                tracing::debug!(
                    domain = %self.settings.domain, binding = %self.settings.binding,
                    "a verdict on settings older than those in force is ignored"
                );
            }
            DomainEvent::Unroutable { reason, epoch } => {
                self.epoch = epoch;
                if self.unroutable.is_none() {
                    tracing::warn!(
                        domain = %self.settings.domain, binding = %self.settings.binding,
                        "the configuration in force cannot deliver this queue ({reason}): its notifications wait \
                         until a reload can (or a restart)"
                    );
                }
                self.unroutable = Some(reason);
                // What the pool had not put on a connection yet comes back to wait here, in its order.
                self.take_back_waiting();
            }
            DomainEvent::Reconfigure { settings, epoch } => {
                self.epoch = epoch;
                // What waits in the pool is looked at again under the new settings (`message_expiration`,
                // `never_attempt_expired_messages`).
                self.waiting_deadline = 0;
                let old_retry = self.settings.retry;
                if self.unroutable.take().is_some() {
                    tracing::info!(
                        domain = %settings.domain, binding = %settings.binding,
                        "the configuration in force delivers this queue again"
                    );
                }
                if self.pool.settings().same_connections(&settings) {
                    // Same route and credentials: the connections stay; a lower limit drains the surplus.
                    self.pool.reconfigure(settings.clone());
                    self.settings = settings;
                } else {
                    // What the old pool's connections had not taken yet goes to the new one, in its order.
                    self.take_back_waiting();
                    self.generation += 1;
                    let sink = Arc::new(self.sender.clone());
                    let old = std::mem::replace(
                        &mut self.pool,
                        Pool::new(settings.clone(), self.generation, sink.clone(), sink),
                    );
                    old.close();
                    // Kept until its connections have finished what they carry, so that they are counted.
                    self.retired.push(old);
                    self.settings = settings;
                }
                if self.settings.retry != old_retry {
                    self.retime_delayed(&old_retry);
                }
            }
        }
        self.publish_sizes();
    }

    /// A reload changed the retry schedule: every notification waiting here for a retry this queue scheduled is
    /// decided again under the new one, as if its last failure were judged now with the time it has waited, so
    /// that the schedule in force applies to it at once (docs/operations.md, "Live reload"). Its wait started at
    /// `due` less the interval that set `due` (under `old`, the schedule in force until now); it is now due that
    /// interval of the new schedule after that start (sooner or later than before). One that the new schedule no
    /// longer retries (`max_retries` or `message_expiration` lowered), or that would fail without an attempt when
    /// due, fails now, its reason naming the reload's option; its last error was logged with its last attempt.
    fn retime_delayed(&mut self, old: &crate::queue::retry::RetryPolicy) {
        let waiting = std::mem::take(&mut self.delayed).into_vec();
        let now = Instant::now();
        let now_s = unix_now();
        for Reverse(mut d) in waiting {
            if !d.retry || d.item.retries == 0 {
                self.delayed.push(Reverse(d));
                continue;
            }
            let retries = d.item.retries;
            let started = d
                .due
                .checked_sub(old.interval(retries))
                .unwrap_or(d.due)
                .min(now);
            let waited = now.duration_since(started);
            let age = Duration::from_secs(now_s.saturating_sub(d.item.notification.received_at));
            // Its age when the wait started: `after_failure` adds the interval to it.
            let age_then = age.saturating_sub(waited);
            let policy = self.settings.retry;
            // Due again (when, and how long from now), or failed now (reason, label).
            let verdict = match policy.after_failure(retries - 1, age_then) {
                RetryDecision::RetryIn(delay) => {
                    let left = delay.saturating_sub(waited);
                    match policy.not_attempted(
                        Some(self.apns_expiration(&d.item)),
                        d.item.notification.received_at,
                        now_s.saturating_add(left.as_secs()),
                    ) {
                        Some(reason) => Err((
                            format!(
                                "{reason}; last error: a configuration reload changed the retry schedule"
                            ),
                            reason.to_owned(),
                        )),
                        None => Ok((started + delay, left)),
                    }
                }
                RetryDecision::RetriesExhausted => Err(out_of(
                    OutOf::Retries,
                    &format!(
                        "a configuration reload lowered max_retries below its {retries} retries"
                    ),
                    "Reload",
                )),
                RetryDecision::Expired => Err(out_of(
                    OutOf::Time,
                    &format!(
                        "a configuration reload set message_expiration to {} s",
                        policy.message_expiration.as_secs()
                    ),
                    "Reload",
                )),
            };
            match verdict {
                Ok((due, left)) => {
                    if due != d.due {
                        d.due = due;
                        self.shared.rescheduled(&d.item, left);
                    }
                    self.delayed.push(Reverse(d));
                }
                Err((reason, label)) => {
                    self.finish_permanent(d.item, Attempt::NONE, &reason, &label, None);
                }
            }
        }
    }

    fn entry(&self, item: &Queued, queue: &'static str, due_in_secs: Option<u64>) -> QueueEntry {
        let n = &item.notification;
        QueueEntry {
            id: n.id,
            domain: n.domain.clone(),
            binding: n.binding.clone(),
            queue,
            received_at: n.received_at,
            sender: n.sender.clone(),
            recipient: Arc::from(n.recipient()),
            token: n.push.token.redacted().to_string(),
            retries: item.retries,
            payload_len: n.push.payload.len(),
            due_in_secs,
        }
    }

    /// Finds a queued (not in-flight) notification by id and applies `action`: in the active queue, among those
    /// handed to the pool that no connection has taken yet, or in the delayed queue.
    fn message(&mut self, id: &str, action: MessageAction) -> Option<QueueEntry> {
        let is = |i: &Queued| i.notification.id.to_string() == id;
        // Taken out of the pool to be looked at, and handed back in the same order (but for one failed here).
        let mut waiting = self.pool.take_waiting();
        let pooled = waiting.iter().position(|j| is(&j.tag));
        let found = pooled.map(|pos| {
            let entry = self.entry(&waiting[pos].tag, "active", None);
            let failed = match &action {
                MessageAction::Fail(reason) => Some((waiting.remove(pos), reason.clone())),
                // Ready already: nothing to make due.
                MessageAction::Details | MessageAction::Retry => None,
            };
            (entry, failed)
        });
        for job in waiting {
            self.pool.submit(job);
        }
        if let Some((entry, failed)) = found {
            if let Some((job, reason)) = failed {
                self.outstanding.remove(&job.tag);
                self.finish_permanent(job.tag, Attempt::NONE, &reason, &reason, None);
            }
            return Some(entry);
        }
        if let Some(pos) = self.active.iter().position(|i| is(i)) {
            let entry = self.entry(&self.active[pos], "active", None);
            if let MessageAction::Fail(reason) = action
                && let Some(item) = self.active.remove(pos)
            {
                self.finish_permanent(item, Attempt::NONE, &reason, &reason, None);
            }
            return Some(entry);
        }
        let found = self.delayed.iter().any(|Reverse(d)| is(&d.item));
        if !found {
            return None;
        }
        let mut rest = BinaryHeap::new();
        let mut hit = None;
        for Reverse(d) in std::mem::take(&mut self.delayed) {
            if is(&d.item) {
                hit = Some(d);
            } else {
                rest.push(Reverse(d));
            }
        }
        self.delayed = rest;
        let d = hit?;
        let entry = self.entry(
            &d.item,
            "delayed",
            Some(d.due.saturating_duration_since(Instant::now()).as_secs()),
        );
        match action {
            MessageAction::Details => self.delayed.push(Reverse(d)),
            MessageAction::Retry => self.active.push_back(d.item),
            MessageAction::Fail(reason) => {
                self.finish_permanent(d.item, Attempt::NONE, &reason, &reason, None)
            }
        }
        Some(entry)
    }

    fn on_tick(&mut self) {
        self.stats.looks.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        while self.delayed.peek().is_some_and(|Reverse(d)| d.due <= now) {
            if let Some(Reverse(d)) = self.delayed.pop() {
                self.active.push_back(d.item);
            }
        }
        if now >= self.next_waiting_look {
            self.next_waiting_look = now + WAITING_LOOK_EVERY;
            self.expire_waiting();
        }
        self.pool.maintain(self.active.len());
        self.retired.iter_mut().for_each(Pool::prune);
        self.retired.retain(Pool::is_active);
        let retired: usize = self.retired.iter().map(Pool::open_connections).sum();
        self.stats
            .set_connections(self.pool.open_connections() + retired);
        let (in_flight, limit) = self
            .retired
            .iter()
            .chain(std::iter::once(&self.pool))
            .map(Pool::streams)
            .fold((0usize, 0usize), |(f, l), (pf, pl)| {
                (f.saturating_add(pf), l.saturating_add(pl))
            });
        self.stats.set_in_flight(in_flight);
        self.stats.set_stream_limit(limit);
        self.publish_sizes();
        if now >= self.next_oldest_scan {
            self.scan_oldest();
        }
        self.give_back_memory(BUSY_QUEUE_FLOOR);
    }

    /// Shrinks the active and delayed queues a burst or an outage left much larger than what they hold (to no less
    /// than `floor` slots), so that a domain does not keep the memory of its largest backlog for the rest of the
    /// process's life.
    fn give_back_memory(&mut self, floor: usize) {
        if let Some(c) = shrunk_capacity(self.active.len(), self.active.capacity(), floor) {
            self.active.shrink_to(c);
        }
        if let Some(c) = shrunk_capacity(self.delayed.len(), self.delayed.capacity(), floor) {
            self.delayed.shrink_to(c);
        }
    }

    /// Publishes the reception time of the oldest notification here (active, delayed, or handed to the pool).
    /// The queues are ordered by due time, not by age, so this is a scan: at most once a second, and spaced so
    /// that it takes at most 1% of the task's time on a queue of millions.
    fn scan_oldest(&mut self) {
        let started = Instant::now();
        let oldest = self
            .active
            .iter()
            .map(|q| q.notification.received_at)
            .chain(
                self.delayed
                    .iter()
                    .map(|Reverse(d)| d.item.notification.received_at),
            )
            .chain(self.outstanding.oldest())
            .min();
        self.stats.set_oldest_queued(oldest);
        let took = started.elapsed();
        self.next_oldest_scan = Instant::now() + (took * 100).max(OLDEST_SCAN_EVERY);
    }

    fn publish_sizes(&self) {
        self.stats.set_queue_sizes(
            self.active.len() + self.outstanding.count,
            self.delayed.len(),
        );
        self.stats
            .dispatched
            .store(self.outstanding.count, Ordering::Relaxed);
        let next = self.delayed.peek().map(|Reverse(d)| {
            let wait = d.due.saturating_duration_since(Instant::now());
            unix_now_ms() + wait.as_millis() as u64
        });
        self.stats.set_next_retry(next);
    }

    /// Moves ready notifications to the pool while it has room.
    fn dispatch(&mut self) {
        if self.stats.paused.load(Ordering::Relaxed) || self.shared.is_held() {
            // Paused, or delivery held (`apn { enabled = false }`, a stop): what the pool holds and no connection has
            // taken yet comes back to wait here, so that nothing more than what is on the wire goes out until the
            // queue is resumed or the hold lifted, and the pool opens no connection for it meanwhile. At a stop,
            // what is then still counted as dispatched is only what connections carry (`Server::shutdown`).
            self.take_back_waiting();
            return;
        }
        if self.unroutable.is_some() {
            return;
        }
        let limit = self.pool.dispatch_limit();
        let now = unix_now();
        let mut took_back = false;
        while self.outstanding.count < limit {
            let Some(mut item) = self.active.pop_front() else {
                break;
            };
            // Checked first: a node that no longer owns the notification decides nothing about it.
            if self.shared.lapsed(&item) {
                self.forget_lapsed(&item);
                // Claims lapse together (the node was stopped, or NATS out of reach): what the pool holds and no
                // connection has taken yet comes back to be looked at the same way before it goes out.
                if !took_back {
                    took_back = true;
                    self.take_back_waiting();
                }
                continue;
            }
            if let Some(reason) = self.refuse_before_attempt(&mut item, now) {
                self.finish_permanent(item, Attempt::NONE, &reason, &reason, None);
                continue;
            }
            let mut request = item.request();
            if request.topic.is_none() {
                request.topic = self.settings.default_topic.clone();
            }
            self.outstanding.add(&item);
            self.waiting_deadline = self.waiting_deadline.min(self.refused_from(&item));
            if let Some(l) = self.shared.listener() {
                l.in_flight(item.notification.id);
            }
            self.pool.submit(Job { request, tag: item });
        }
        self.pool.maintain(self.active.len());
        // Published at once, so that a stop holding delivery sees what is on its way out (`Server::shutdown`).
        self.stats
            .dispatched
            .store(self.outstanding.count, Ordering::Relaxed);
    }

    /// Takes back every job the pool holds that no connection has taken yet, to the front of the active queue, in
    /// the order they were handed over.
    fn take_back_waiting(&mut self) {
        let waiting = self.pool.take_waiting();
        if waiting.is_empty() {
            return;
        }
        for job in waiting.into_iter().rev() {
            self.outstanding.remove(&job.tag);
            self.tell_queued_again(&job.tag);
            self.active.push_front(job.tag);
        }
        self.stats
            .dispatched
            .store(self.outstanding.count, Ordering::Relaxed);
    }

    /// Tells the outcome listener that `item`, handed to a connection that did not send it, waits in the queue
    /// again (its status is `queued`, not `in_flight`).
    fn tell_queued_again(&self, item: &Queued) {
        if let Some(l) = self.shared.listener() {
            l.queued(&item.notification, item.retries);
        }
    }

    /// Fixes the APNs expiration at the first attempt (a notification received without one gets
    /// `apn_expiry` after its reception); says why a notification must fail without an attempt.
    fn refuse_before_attempt(&self, item: &mut Queued, now: u64) -> Option<String> {
        let default = self.default_expiration(item.notification.received_at);
        let n = &mut item.notification;
        let expiry = *n.push.expiration.get_or_insert(default);
        self.settings
            .retry
            .not_attempted(Some(u64::from(expiry)), n.received_at, now)
            .map(str::to_owned)
    }

    /// The first Unix second at which `item` would fail without an attempt ([`DomainTask::refuse_before_attempt`]):
    /// the second after its APNs expiration (when not 0), or, with `never_attempt_expired_messages`, the one it is
    /// `message_expiration` old; `u64::MAX` for never. Never later than the refusal itself.
    fn refused_from(&self, item: &Queued) -> u64 {
        let policy = &self.settings.retry;
        let by_expiration = match self.apns_expiration(item) {
            0 => u64::MAX,
            expiry => expiry.saturating_add(1),
        };
        let by_age = if policy.never_attempt_expired {
            item.notification
                .received_at
                .saturating_add(policy.message_expiration.as_secs())
        } else {
            u64::MAX
        };
        by_expiration.min(by_age)
    }

    /// Notifications handed to the pool wait there for a free stream while the connections carry all the server
    /// allows (a low `SETTINGS_MAX_CONCURRENT_STREAMS`, slow answers, `max_outbound_connections` reached), and
    /// nothing else looks at them before a connection sends them. Those that would now be refused before an attempt
    /// ([`DomainTask::refuse_before_attempt`]: their APNs expiration passed, or, with
    /// `never_attempt_expired_messages`, they are `message_expiration` old) fail as they would have at dispatch,
    /// without an attempt, with the same outcome; one this node no longer owns is forgotten instead, as at dispatch.
    /// The others go back to the pool in their order, their status unchanged (`in_flight`). Called at most once per
    /// [`WAITING_LOOK_EVERY`]; the pool is read only once a notification it was handed may have expired
    /// (`waiting_deadline`), so a queue whose notifications do not expire soon pays a comparison.
    fn expire_waiting(&mut self) {
        if self.pool.waiting() == 0 {
            // Every notification handed over was taken by a connection (or taken back).
            self.waiting_deadline = u64::MAX;
            return;
        }
        let now = unix_now();
        if now < self.waiting_deadline {
            return;
        }
        let mut deadline = u64::MAX;
        let mut refused = Vec::new();
        for mut job in self.pool.take_waiting() {
            match self.refuse_before_attempt(&mut job.tag, now) {
                Some(reason) => refused.push((job.tag, reason)),
                None => {
                    deadline = deadline.min(self.refused_from(&job.tag));
                    self.pool.submit(job);
                }
            }
        }
        self.waiting_deadline = deadline;
        if refused.is_empty() {
            return;
        }
        for (item, _) in &refused {
            self.outstanding.remove(item);
        }
        self.stats
            .dispatched
            .store(self.outstanding.count, Ordering::Relaxed);
        for (item, reason) in refused {
            // Checked first, as at dispatch: a node that no longer owns the notification decides nothing about it.
            if self.shared.lapsed(&item) {
                self.forget_lapsed(&item);
                continue;
            }
            self.finish_permanent(item, Attempt::NONE, &reason, &reason, None);
        }
    }

    /// The APNs expiration of a notification received at `received_at` that names none: `apn_expiry` after its
    /// reception.
    fn default_expiration(&self, received_at: u64) -> u32 {
        let at = received_at.saturating_add(self.settings.apn_expiry.as_secs());
        u32::try_from(at).unwrap_or(u32::MAX)
    }

    /// The APNs expiration `item` is (or will be) sent with: its own, else the one its first attempt fixes.
    fn apns_expiration(&self, item: &Queued) -> u64 {
        let n = &item.notification;
        u64::from(
            n.push
                .expiration
                .unwrap_or_else(|| self.default_expiration(n.received_at)),
        )
    }

    fn on_outcome(
        &mut self,
        mut item: Box<Queued>,
        result: PushResult,
        remote: Option<std::net::IpAddr>,
    ) {
        match result {
            PushResult::Delivered {
                transaction_id,
                unique_id,
            } => {
                let answer = ApnsAnswer {
                    transaction_id: transaction_id.as_deref(),
                    unique_id: unique_id.as_deref(),
                    timestamp_ms: None,
                };
                let attempt = Attempt::on_connection(remote, None);
                self.log_answer(&item, OutcomeKind::Delivered, attempt, "", answer);
                self.stats.delivered(item.enqueued.elapsed());
                self.finished(&item);
            }
            PushResult::NotSent(NotSentReason::ConnectionLost)
                if item.losses + 1 >= LOSSES_PER_ATTEMPT =>
            {
                // Lost with the connection again and again: a notification that makes APNs (or something on the
                // way) drop the connection would otherwise be sent at once on every new one, for ever. It takes
                // the retry schedule like any failed attempt.
                item.losses = 0;
                let error = format!(
                    "the connection was lost while the notification was on it, without an answer; \
                     {LOSSES_PER_ATTEMPT} times in a row unanswered (connections lost or streams refused)"
                );
                let attempt = Attempt::on_connection(remote, None);
                self.transient(item, attempt, &error, "ConnectionLost");
            }
            PushResult::NotSent(NotSentReason::Refused)
                if item.losses + 1 >= LOSSES_PER_ATTEMPT =>
            {
                // Refused (or lost) again and again: stream limits that keep changing would otherwise have it sent
                // at once, and refused, until it expires, without ever reaching `max_retries`.
                item.losses = 0;
                let error = format!(
                    "the server refused the notification's stream without processing it; \
                     {LOSSES_PER_ATTEMPT} times in a row unanswered (streams refused or connections lost)"
                );
                let attempt = Attempt::on_connection(remote, None);
                self.transient(item, attempt, &error, "StreamRefused");
            }
            PushResult::NotSent(why) => {
                tracing::trace!(id = %item.notification.id, ?why, "requeued unsent");
                if matches!(why, NotSentReason::ConnectionLost | NotSentReason::Refused) {
                    item.losses += 1;
                }
                // Sent again without an attempt counted: what went out on a connection (lost with it, refused,
                // or discarded by the binary gateway after a rejected one); not what a closing connection never
                // took.
                if why != NotSentReason::Closing {
                    self.stats.requeued();
                }
                self.tell_queued_again(&item);
                self.requeue_first(item);
            }
            PushResult::TimedOut { cancelled } => {
                // APNs may have accepted it: the retry (after the retry interval, counted as an attempt) can
                // duplicate it. The log names the cancelled stream so that every possible duplicate is explained.
                let mut error = format!(
                    "no answer within {} ms",
                    self.settings.response_timeout.as_millis()
                );
                if let Some(c) = cancelled {
                    self.stats.stream_cancelled();
                    error.push_str(&format!(
                        "; stream {} on connection {} cancelled, APNs may have accepted it",
                        c.stream, c.connection
                    ));
                }
                let attempt = Attempt::on_connection(remote, None);
                self.transient(item, attempt, &error, "ResponseTimeout");
            }
            PushResult::Unanswered { stream, cause } => {
                // Written in full and lost with its connection (or its stream reset) before the answer: APNs may
                // have accepted it, as after a timeout, so it takes the retry schedule and the log names the stream
                // so that a duplicate is explained (RFC 9113 §6.8: even streams at or below a GOAWAY's last stream
                // id may or may not have been processed when the connection closes before their answers).
                let error = format!(
                    "no answer before the stream ended ({cause}); stream {} on connection {}, APNs may have accepted it",
                    stream.stream, stream.connection
                );
                let attempt = Attempt::on_connection(remote, None);
                self.transient(item, attempt, &error, "ConnectionLost");
            }
            PushResult::TokenExpired { rejection, renewed } => {
                let attempt = Attempt::on_connection(remote, Some(rejection.code()));
                let (text, label) = (rejection.text(), rejection.label());
                let age =
                    Duration::from_secs(unix_now().saturating_sub(item.notification.received_at));
                let may_retry = matches!(
                    self.settings.retry.after_failure(item.retries, age),
                    RetryDecision::RetryIn(_)
                );
                if renewed && may_retry {
                    // The connection has retired the stale token and a newer one is in force: try again at once,
                    // whatever failed before (docs/apns-protocol.md#provider-tokens), as long as `max_retries` and
                    // `message_expiration` allow a retry at all. Each such retry needs the token it was refused
                    // with to have been renewed, and a token is renewed once and never within 20 minutes of its
                    // minting, so a notification is retried at once at most once per token.
                    self.log(&item, OutcomeKind::Transient, attempt, text);
                    self.stats.transient(label);
                    item.retries += 1;
                    // A counted attempt ends a run of losses in a row.
                    item.losses = 0;
                    // The spool keeps the count, as for any retry.
                    self.shared.rescheduled(&item, Duration::ZERO);
                    self.requeue_first(item);
                } else {
                    // Retries used up (or expired): failed as any transient failure would be then.
                    // The token in force is the one refused (herald's clock and APNs' disagree, or a revoked key):
                    // a retry at once would be refused again.
                    self.transient(item, attempt, text, label);
                }
            }
            PushResult::Rejected(rejection) => {
                let class = rejection.class();
                let attempt = Attempt {
                    binary_id: rejection.identifier(),
                    ..Attempt::on_connection(remote, Some(rejection.code()))
                };
                let text = rejection.text();
                // Logs say what the server said; counters name only reasons APNs documents.
                let label = rejection.label();
                match class {
                    // A refresh-and-retry reason not reported as `TokenExpired` (no provider token was sent)
                    // takes the normal schedule.
                    FailureClass::Transient | FailureClass::RefreshTokenAndRetry => {
                        self.transient(item, attempt, text, label)
                    }
                    FailureClass::Permanent | FailureClass::InvalidToken => {
                        // docs/apns-protocol.md#classification: BadDeviceToken, Unregistered (with its timestamp),
                        // binary status 8.
                        let invalid = (class == FailureClass::InvalidToken).then(|| InvalidToken {
                            domain: item.notification.domain.clone(),
                            token: item.notification.push.token.clone(),
                            reason: rejection.text().to_owned(),
                            timestamp_ms: match &rejection {
                                herald_apns::client::Rejection::Http { timestamp_ms, .. } => {
                                    *timestamp_ms
                                }
                                herald_apns::client::Rejection::Binary { .. } => None,
                            },
                        });
                        self.finish_permanent(item, attempt, text, label, invalid);
                    }
                }
            }
        }
    }

    /// A transient failure: retried later, or final once retries or time run out. `error` is what the logs say;
    /// `label` is the reason metrics count it under (an APNs reason or a herald class such as `ConnectionFailed`,
    /// never addresses or OS text, so that the number of series stays bounded).
    ///
    /// A retry that would fail without an attempt when it comes due is not waited for: a notification whose APNs
    /// expiration (when not 0) comes before its next attempt, or (with `never_attempt_expired_messages`) that would
    /// be `message_expiration` old by then, fails now, with the reason it would fail with then. An expiration of 0
    /// is APNs' "attempt once, do not store"; herald retries such a notification on the domain's schedule like any
    /// other.
    ///
    /// A counted attempt ends a run of losses in a row ([`LOSSES_PER_ATTEMPT`]).
    fn transient(&mut self, mut item: Box<Queued>, attempt: Attempt, error: &str, label: &str) {
        item.losses = 0;
        let now = unix_now();
        let age = Duration::from_secs(now.saturating_sub(item.notification.received_at));
        let decision = self.settings.retry.after_failure(item.retries, age);
        if let RetryDecision::RetryIn(delay) = decision
            && let Some(reason) = self.settings.retry.not_attempted(
                Some(self.apns_expiration(&item)),
                item.notification.received_at,
                now.saturating_add(delay.as_secs()),
            )
        {
            // The retry would fail without an attempt: it fails now, with the reason it would fail with then.
            let error = format!("{reason}; last error: {error}");
            let attempt = Attempt {
                status: None,
                ..attempt
            };
            self.finish_permanent(item, attempt, &error, reason, None);
            return;
        }
        match decision {
            RetryDecision::RetryIn(delay) => {
                self.log(&item, OutcomeKind::Transient, attempt, error);
                self.stats.transient(label);
                item.retries += 1;
                if self.hand_back(&item, delay) {
                    return;
                }
                self.shared.rescheduled(&item, delay);
                self.seq += 1;
                self.delayed.push(Reverse(Delayed {
                    due: crate::model::instant_after(delay),
                    seq: self.seq,
                    item,
                    retry: true,
                }));
            }
            RetryDecision::RetriesExhausted => {
                let (reason, label) = out_of(OutOf::Retries, error, label);
                self.finish_permanent(item, attempt, &reason, &label, None);
            }
            RetryDecision::Expired => {
                let (reason, label) = out_of(OutOf::Time, error, label);
                let attempt = Attempt {
                    status: None,
                    ..attempt
                };
                self.finish_permanent(item, attempt, &reason, &label, None);
            }
        }
    }

    /// A final failure: logged with `error`, counted under `label` (see [`DomainTask::transient`]).
    fn finish_permanent(
        &mut self,
        item: Box<Queued>,
        attempt: Attempt,
        error: &str,
        label: &str,
        invalid: Option<InvalidToken>,
    ) {
        let answer = ApnsAnswer {
            timestamp_ms: invalid.as_ref().and_then(|i| i.timestamp_ms),
            ..ApnsAnswer::default()
        };
        self.log_answer(&item, OutcomeKind::Permanent, attempt, error, answer);
        self.stats.permanent(label);
        if let Some(invalid) = invalid {
            self.shared.invalid_token(invalid);
        }
        self.finished(&item);
    }

    /// A connection attempt failed while notifications wait for it: the oldest waiting one gets a transient-failure
    /// line naming the route and the reason (it stays queued, its retry count unchanged), at most once per
    /// [`CONNECT_FAILURE_LOG_EVERY`], so an unreachable route shows in the logs before `mx_failures_to_delay`.
    /// Each line is counted as a transient failure (`ConnectionFailed`), as the logs show it.
    fn log_connect_failure(&mut self) {
        let now = Instant::now();
        if self
            .connect_failure_logged
            .is_some_and(|t| now.duration_since(t) < CONNECT_FAILURE_LOG_EVERY)
        {
            return;
        }
        let error = format!(
            "connection to {} failed: {}",
            self.settings.endpoint,
            self.pool.last_error().unwrap_or("unknown error")
        );
        let waiting = self.pool.take_waiting();
        let oldest = waiting.first().map(|j| &j.tag).or(self.active.front());
        if let Some(item) = oldest {
            self.log(item, OutcomeKind::Transient, Attempt::NONE, &error);
            self.stats.connection_failed();
            self.connect_failure_logged = Some(now);
        }
        for job in waiting {
            self.pool.submit(job);
        }
        self.expire_unsent(&error);
    }

    /// While no connection can be opened, notifications wait here and in the pool without an attempt, and no
    /// failure of theirs would judge their age (`mx_failures_to_delay` failed attempts in a row may take minutes):
    /// those `message_expiration` old fail now, as after a failed attempt (`exceeded max time without delivery`,
    /// with the connection's error), rather than wait on past the time they may stay undelivered. Looked at once a
    /// second at most, with each failed connection attempt's line ([`DomainTask::log_connect_failure`]); a pass
    /// that finds none reads the queue without changing it.
    fn expire_unsent(&mut self, error: &str) {
        let now = unix_now();
        let policy = self.settings.retry;
        let expired = |item: &Queued| {
            policy.is_expired(Duration::from_secs(
                now.saturating_sub(item.notification.received_at),
            ))
        };
        let mut failed = Vec::new();
        let waiting = self.pool.take_waiting();
        if waiting.iter().any(|j| expired(&j.tag)) {
            for job in waiting {
                if expired(&job.tag) {
                    self.outstanding.remove(&job.tag);
                    failed.push(job.tag);
                } else {
                    self.pool.submit(job);
                }
            }
            self.stats
                .dispatched
                .store(self.outstanding.count, Ordering::Relaxed);
        } else {
            for job in waiting {
                self.pool.submit(job);
            }
        }
        if self.active.iter().any(|i| expired(i)) {
            let active = std::mem::take(&mut self.active);
            self.active.reserve(active.len());
            let placed = self.front_placed;
            for (i, item) in active.into_iter().enumerate() {
                if expired(&item) {
                    // One of those a batch of events put at the front: they are one fewer.
                    if i < placed {
                        self.front_placed -= 1;
                    }
                    failed.push(item);
                } else {
                    self.active.push_back(item);
                }
            }
        }
        if failed.is_empty() {
            return;
        }
        let (reason, label) = out_of(OutOf::Time, error, "ConnectionFailed");
        for item in failed {
            self.finish_permanent(item, Attempt::NONE, &reason, &label, None);
        }
    }

    /// `mx_failures_to_delay` connection attempts failed in a row: every waiting notification is retried later.
    fn delay_domain(&mut self) {
        let error = format!(
            "connection to {} failed: {}",
            self.settings.endpoint,
            self.pool.last_error().unwrap_or("unknown error")
        );
        tracing::warn!(domain = %self.settings.domain, "delaying the queue: {error}");
        let waiting = self.pool.take_waiting();
        for job in &waiting {
            self.outstanding.remove(&job.tag);
        }
        let active = std::mem::take(&mut self.active);
        for item in waiting.into_iter().map(|j| j.tag).chain(active) {
            self.transient(item, Attempt::NONE, &error, "ConnectionFailed");
        }
    }

    /// Logs an outcome of `item` (and tells the outcome listener): `error` as the logs say it.
    fn log(&self, item: &Queued, kind: OutcomeKind, attempt: Attempt, error: &str) {
        self.log_answer(item, kind, attempt, error, ApnsAnswer::default());
    }

    /// [`Self::log`] with what else APNs' answer said. The transaction id is APNs' when it gave one, else the
    /// notification's own `apns-id`.
    fn log_answer(
        &self,
        item: &Queued,
        kind: OutcomeKind,
        attempt: Attempt,
        error: &str,
        answer: ApnsAnswer<'_>,
    ) {
        let own = item.notification.push.apns_id.map(|id| id.encode());
        let binary = attempt.binary_id.map(|id| id.to_string());
        let record = OutcomeRecord {
            kind,
            notification: &item.notification,
            binding_group: &self.settings.binding_group,
            binding: &self.settings.binding,
            retries: item.retries,
            remote_ip: attempt.remote,
            transaction_id: answer
                .transaction_id
                .or(binary.as_deref())
                .or(id_text(&own)),
            status: attempt.status,
            error,
            connected: attempt.connected,
            bytes: self.settings.wire_bytes(item),
            at: unix_now(),
            apns_unique_id: answer.unique_id,
            apns_timestamp_ms: answer.timestamp_ms,
        };
        self.shared.logs.outcome(&record);
        if let Some(l) = self.shared.listener() {
            l.outcome(&record);
        }
    }
}

/// What an APNs answer said beyond status and reason, for the outcome record.
#[derive(Debug, Clone, Copy, Default)]
struct ApnsAnswer<'a> {
    /// The `apns-id` of the answer (binary: none); the notification's own is logged without one.
    transaction_id: Option<&'a str>,
    unique_id: Option<&'a str>,
    timestamp_ms: Option<u64>,
}

/// Where an outcome happened, as its record shows it.
#[derive(Debug, Clone, Copy)]
struct Attempt {
    /// The APNs address the notification was sent to.
    remote: Option<std::net::IpAddr>,
    /// APNs' HTTP status or binary status byte.
    status: Option<u16>,
    /// Whether the notification reached a connection (Momentum's logs tell a failed connection from a failed
    /// delivery).
    connected: bool,
    /// Binary protocol: the notification identifier it was sent with, the transaction id of its log lines.
    binary_id: Option<u32>,
}

impl Attempt {
    /// No attempt: the notification never reached a connection.
    const NONE: Attempt = Attempt {
        remote: None,
        status: None,
        connected: false,
        binary_id: None,
    };

    /// An attempt on a connection to `remote`, with the status APNs answered, if it answered one.
    fn on_connection(remote: Option<std::net::IpAddr>, status: Option<u16>) -> Attempt {
        Attempt {
            remote,
            status,
            connected: true,
            binary_id: None,
        }
    }
}

/// The capacity a queue holding `len` items in `capacity` slots should shrink to, if it should: once it uses less
/// than a quarter of them, to twice what it holds, but not below `floor`. A queue must lose half of what it held
/// after a shrink before the next, and grows by doubling, so shrinking costs O(1) per item amortized.
fn shrunk_capacity(len: usize, capacity: usize, floor: usize) -> Option<usize> {
    let target = len.saturating_mul(2).max(floor);
    (len < capacity / 4 && target < capacity).then_some(target)
}

/// Polls a future and catches a panic of its poll (as `futures::FutureExt::catch_unwind` does): the future is
/// not polled again after one.
struct CatchUnwind<F>(F);

impl<F: std::future::Future + Unpin> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::pin::Pin::new(&mut *inner).poll(cx)
        })) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(value)) => std::task::Poll::Ready(Ok(value)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// Sleeps until `due` (a `None` never comes: the branch using it is disabled then).
async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

/// The text of an encoded `apns-id` ([`herald_apns::push::ApnsId::encode`]), without allocating.
fn id_text(id: &Option<[u8; 36]>) -> Option<&str> {
    id.as_ref().and_then(|t| std::str::from_utf8(t).ok())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::logs::Logs;
    use crate::outcomes::OutcomeListener;
    use crate::queue::{Engine, EngineLimits, MemoryInvalidTokens, QueueObserver, StaticResolver};

    /// An engine holding at most `max_resident` notifications, whose queue of `apps.example` delivers to a port
    /// nothing listens on.
    fn engine(max_resident: usize) -> Engine {
        engine_with(EngineLimits {
            max_resident,
            ..EngineLimits::default()
        })
    }

    /// [`engine`], with these limits.
    fn engine_with(limits: EngineLimits) -> Engine {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        Engine::new(
            Arc::new(
                StaticResolver::default().with(DeliverySettings::for_tests("apps.example", port)),
            ),
            Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            limits,
        )
    }

    /// A task of `engine`'s queue that the test drives by hand (no loop runs), and its channel.
    fn task_of(engine: &Engine) -> (DomainTask, DomainSender) {
        let settings = engine.shared.resolver.resolve("apps.example").unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let sender = DomainSender(tx);
        let task = DomainTask::new(
            settings,
            0,
            sender.clone(),
            rx,
            engine.shared.clone(),
            Arc::new(DomainStats::default()),
        );
        (task, sender)
    }

    /// A notification for `task`, with the memory permit it takes, as the engine hands it over.
    fn enqueue(engine: &Engine, task: &mut DomainTask, token: u8) {
        engine.shared.take_permit("apps.example");
        let item = Queued::new(crate::queue::tests::notification(token));
        task.handle(DomainEvent::Enqueue(item));
    }

    /// A store that takes back every notification it is offered, and lets the node park none.
    struct TakesEverythingBack;

    impl QueueObserver for TakesEverythingBack {
        fn finished(&self, _: &[MessageId]) {}
        fn rescheduled(&self, _: MessageId, _: u32, _: std::time::SystemTime) {}
        fn hand_back(&self, _: MessageId, _: u32, _: Duration) -> bool {
            true
        }
        fn parked(&self, delta: i64) -> usize {
            usize::try_from(delta).unwrap_or(0)
        }
    }

    /// A store whose claim on every notification lapsed (the JetStream spool after the node was stopped for longer
    /// than the ack wait): this node owns none of them any more.
    struct LapsedEverything;

    impl QueueObserver for LapsedEverything {
        fn finished(&self, _: &[MessageId]) {}
        fn rescheduled(&self, _: MessageId, _: u32, _: std::time::SystemTime) {}
        fn lapsed(&self, _: MessageId) -> bool {
            true
        }
    }

    /// Counts the notifications it is told left the node, and those it is told are in flight.
    #[derive(Default)]
    struct CountsLeft {
        left: std::sync::atomic::AtomicUsize,
        in_flight: std::sync::atomic::AtomicUsize,
    }

    impl OutcomeListener for CountsLeft {
        fn outcome(&self, _: &OutcomeRecord<'_>) {}
        fn in_flight(&self, _: MessageId) {
            self.in_flight.fetch_add(1, Ordering::Relaxed);
        }
        fn left(&self, _: MessageId) {
            self.left.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Lapses only once told to, as claims do when the node was stopped for longer than the ack wait.
    #[derive(Default)]
    struct LapsesLater(std::sync::atomic::AtomicBool);

    impl QueueObserver for LapsesLater {
        fn finished(&self, _: &[MessageId]) {}
        fn rescheduled(&self, _: MessageId, _: u32, _: std::time::SystemTime) {}
        fn lapsed(&self, _: MessageId) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    /// Once a notification is found lapsed, those handed to the pool that no connection has taken yet come back
    /// and are looked at too: none of them goes out.
    #[tokio::test]
    async fn a_lapse_takes_back_what_the_pool_holds_to_look_at_it() {
        let engine = engine(10);
        let observer = Arc::new(LapsesLater::default());
        engine.set_observer(observer.clone());
        let (mut task, _sender) = task_of(&engine);
        for token in 1..=3 {
            enqueue(&engine, &mut task, token);
        }
        task.dispatch();
        assert_eq!(task.pool.waiting(), 3);
        observer.0.store(true, Ordering::Relaxed);
        enqueue(&engine, &mut task, 4);
        task.dispatch();
        assert_eq!(task.pool.waiting(), 0, "nothing waits to go out");
        assert_eq!(task.outstanding.count, 0);
        assert!(task.active.is_empty() && task.owned.is_empty());
        assert_eq!(engine.resident_room(), 10);
    }

    /// A notification this node no longer owns (its claim lapsed) is not handed to a connection, neither when it is
    /// first sent nor when its retry comes due: it is forgotten without an outcome, its memory given back, and the
    /// outcome listener hears that it left.
    #[tokio::test]
    async fn a_notification_this_node_no_longer_owns_is_forgotten_not_sent() {
        let engine = engine(10);
        engine.set_observer(Arc::new(LapsedEverything));
        let listener = Arc::new(CountsLeft::default());
        engine.set_outcome_listener(listener.clone());
        let (mut task, _sender) = task_of(&engine);
        enqueue(&engine, &mut task, 1);
        // The other waits for its retry, due now.
        let delayed = queued(&engine, 2, 2);
        task.owned.add(delayed.notification.id);
        task.delayed.push(Reverse(Delayed {
            due: Instant::now(),
            seq: 0,
            item: delayed,
            retry: true,
        }));
        assert_eq!(engine.resident_room(), 8);
        task.dispatch();
        task.on_tick();
        task.dispatch();
        assert_eq!(task.outstanding.count, 0, "nothing handed to the pool");
        assert!(task.pool.take_waiting().is_empty());
        assert!(task.active.is_empty() && task.delayed.is_empty());
        assert!(task.owned.is_empty());
        assert_eq!(engine.resident_room(), 10, "their memory given back");
        assert_eq!(listener.left.load(Ordering::Relaxed), 2);
        assert_eq!(listener.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(task.stats.delivered.load(Ordering::Relaxed), 0);
    }

    /// An outcome listener that fails (panics) when told that a notification left.
    struct FailsOnLeft;

    impl OutcomeListener for FailsOnLeft {
        fn outcome(&self, _: &OutcomeRecord<'_>) {}
        fn left(&self, _: MessageId) {
            panic!("the outcome listener failed");
        }
    }

    /// The store takes a parked notification back and the outcome listener, told it left, fails: the task fails
    /// with it, and the notification's memory is given back once, not a second time by the failed task.
    #[tokio::test]
    async fn a_listener_failing_as_a_notification_is_handed_back_gives_its_memory_back_once() {
        let engine = engine(10);
        engine.set_observer(Arc::new(TakesEverythingBack));
        engine.set_outcome_listener(Arc::new(FailsOnLeft));
        let (mut task, sender) = task_of(&engine);
        enqueue(&engine, &mut task, 1);
        assert_eq!(engine.resident_room(), 9);
        // Paused, above the node's parking room: the notification goes back to the store.
        task.stats.paused.store(true, Ordering::Relaxed);
        let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| task.report_parked()))
            .expect_err("the listener's failure fails the task");
        drop(sender);
        task.failed(panic).await;
        assert_eq!(
            engine.resident_room(),
            10,
            "the notification's memory given back once"
        );
    }

    /// Notifications a connection hands back together (oldest first, as after a binary error packet or a lost
    /// connection) are sent again in that order, ahead of the rest, and a renewed-token retry among them keeps its
    /// place; an event other than an outcome in the same batch sees them already queued.
    #[tokio::test]
    async fn notifications_handed_back_together_keep_their_order() {
        let engine = engine(10);
        let (mut task, sender) = task_of(&engine);
        for token in 1..=5 {
            enqueue(&engine, &mut task, token);
        }
        let token_of = |item: &Queued| item.notification.push.token.to_hex()[..2].to_owned();
        // 1, 2 and 3 go out; 4 and 5 wait.
        let sent: Vec<Box<Queued>> = (0..3).map(|_| task.active.pop_front().unwrap()).collect();
        let mut outcomes = sent.into_iter().map(|tag| DomainEvent::Outcome {
            tag,
            result: PushResult::NotSent(NotSentReason::ConnectionLost),
            remote: None,
        });
        let first = outcomes.next().unwrap();
        for event in outcomes {
            sender.0.send(event).unwrap();
        }
        task.handle_batch(first);
        assert_eq!(
            task.active.iter().map(|i| token_of(i)).collect::<Vec<_>>(),
            ["01", "02", "03", "04", "05"]
        );
        // A listing in the middle of a batch already sees the ones handed back before it, in order.
        let (a, b) = (
            task.active.pop_front().unwrap(),
            task.active.pop_front().unwrap(),
        );
        let (reply, listed) = oneshot::channel();
        sender
            .0
            .send(DomainEvent::List {
                limit: 10,
                offset: 0,
                reply,
            })
            .unwrap();
        sender
            .0
            .send(DomainEvent::Outcome {
                tag: b,
                result: PushResult::NotSent(NotSentReason::ConnectionLost),
                remote: None,
            })
            .unwrap();
        task.handle_batch(DomainEvent::Outcome {
            tag: a,
            result: PushResult::NotSent(NotSentReason::ConnectionLost),
            remote: None,
        });
        let listed = listed.await.expect("the task answers");
        assert_eq!(listed.len(), 4, "01 back before the listing: {listed:?}");
        assert_eq!(
            task.active.iter().map(|i| token_of(i)).collect::<Vec<_>>(),
            ["01", "02", "03", "04", "05"]
        );
    }

    /// A notification whose stream is refused goes back to the queue at once, without an attempt counted, but not
    /// for ever: the third refusal in a row counts as a failed attempt, retried on the domain's schedule.
    #[tokio::test]
    async fn a_notification_refused_again_and_again_takes_a_failed_attempt() {
        let engine = engine(10);
        let (mut task, _sender) = task_of(&engine);
        enqueue(&engine, &mut task, 2);
        for refusal in 1..=LOSSES_PER_ATTEMPT {
            let item = task
                .active
                .pop_front()
                .unwrap_or_else(|| panic!("not sent again at once before refusal {refusal}"));
            task.handle(DomainEvent::Outcome {
                tag: item,
                result: PushResult::NotSent(NotSentReason::Refused),
                remote: None,
            });
        }
        assert!(
            task.active.is_empty(),
            "refused {LOSSES_PER_ATTEMPT} times and still sent again at once"
        );
        let Some(Reverse(delayed)) = task.delayed.peek() else {
            panic!("not retried on the domain's schedule");
        };
        assert_eq!((delayed.item.retries, delayed.item.losses), (1, 0));
        assert_eq!(task.stats.transient.load(Ordering::Relaxed), 1);
        assert_eq!(
            task.stats.requeued.load(Ordering::Relaxed),
            u64::from(LOSSES_PER_ATTEMPT - 1)
        );
        let failures = task.stats.failures();
        assert_eq!(
            failures.get(&(
                super::super::stats::FailureKind::Transient,
                "StreamRefused".to_owned()
            )),
            Some(&1),
            "{failures:?}"
        );
    }

    /// A notification with `id`, taking its memory permit from `engine`, as the engine hands one over.
    fn queued(engine: &Engine, token: u8, id: u64) -> Box<Queued> {
        engine.shared.take_permit("apps.example");
        let mut n = crate::queue::tests::notification(token);
        n.id = MessageId::from_parts(1, 1_800_000_000_000, id);
        Queued::new(n)
    }

    /// Gives `task` new settings, changed by `change` from those it has.
    fn change_settings(task: &mut DomainTask, change: impl FnOnce(&mut DeliverySettings)) {
        let mut settings = (*task.settings).clone();
        change(&mut settings);
        task.settings = Arc::new(settings);
    }

    /// A notification whose retry would come after its APNs expiration fails at once, with the reason it would
    /// fail with at that retry, instead of waiting for a retry that cannot be attempted. One whose expiration comes
    /// after the retry, or is 0 (APNs' "attempt once, do not store", which herald retries), is retried.
    #[tokio::test]
    async fn a_retry_that_would_come_after_the_apns_expiration_fails_now() {
        let engine = engine(10);
        let (mut task, _sender) = task_of(&engine);
        change_settings(&mut task, |s| {
            s.retry.retry_interval = Duration::from_secs(1200);
            s.retry.max_retry_interval = Duration::from_secs(1200);
            s.retry.message_expiration = Duration::from_secs(86400);
        });
        let now = unix_now() as u32;
        for (token, expiration) in [(1, now + 300), (2, now + 5000), (3, 0)] {
            let mut item = queued(&engine, token, u64::from(token));
            item.notification.push.expiration = Some(expiration);
            task.handle(DomainEvent::Outcome {
                tag: item,
                result: PushResult::TimedOut { cancelled: None },
                remote: None,
            });
        }
        let mut delayed: Vec<u8> = task
            .delayed
            .iter()
            .map(|Reverse(d)| d.item.notification.push.token.as_bytes()[0])
            .collect();
        delayed.sort();
        assert_eq!(
            delayed,
            vec![2, 3],
            "retried: those that outlive their retry"
        );
        assert_eq!(task.stats.permanent.load(Ordering::Relaxed), 1);
        assert_eq!(task.stats.transient.load(Ordering::Relaxed), 2);
        let failures = task.stats.failures();
        assert_eq!(
            failures.get(&(
                super::super::stats::FailureKind::Permanent,
                "Delivery not attempted (APNs expiration passed)".to_owned()
            )),
            Some(&1),
            "{failures:?}"
        );
        assert_eq!(
            engine.resident_room(),
            8,
            "the failed one's memory given back"
        );
    }

    /// Losses in a row (connections lost, streams refused) count towards a failed attempt only while no counted
    /// attempt comes between them: after two losses and a timeout, a third loss sends the notification again at
    /// once rather than taking a second failed attempt.
    #[tokio::test]
    async fn a_counted_attempt_ends_a_run_of_losses() {
        let engine = engine(10);
        let (mut task, _sender) = task_of(&engine);
        enqueue(&engine, &mut task, 4);
        let answer = |task: &mut DomainTask, result: PushResult| {
            let item = task
                .active
                .pop_front()
                .or_else(|| task.delayed.pop().map(|Reverse(d)| d.item))
                .unwrap_or_else(|| panic!("the notification is not queued before {result:?}"));
            task.handle(DomainEvent::Outcome {
                tag: item,
                result,
                remote: None,
            });
        };
        for _ in 1..LOSSES_PER_ATTEMPT {
            answer(
                &mut task,
                PushResult::NotSent(NotSentReason::ConnectionLost),
            );
        }
        answer(&mut task, PushResult::TimedOut { cancelled: None });
        answer(
            &mut task,
            PushResult::NotSent(NotSentReason::ConnectionLost),
        );
        let Some(item) = task.active.front() else {
            panic!("a loss after a counted attempt took a failed attempt");
        };
        assert_eq!((item.retries, item.losses), (1, 1));
        // The same after an attempt retried at once with a renewed provider token.
        answer(&mut task, PushResult::NotSent(NotSentReason::Refused));
        answer(
            &mut task,
            PushResult::TokenExpired {
                rejection: herald_apns::client::Rejection::Http {
                    status: 403,
                    reason: "ExpiredProviderToken".to_owned(),
                    timestamp_ms: None,
                },
                renewed: true,
            },
        );
        answer(&mut task, PushResult::NotSent(NotSentReason::Refused));
        let Some(item) = task.active.front() else {
            panic!("a refusal after a counted attempt took a failed attempt");
        };
        assert_eq!((item.retries, item.losses), (2, 1));
        assert_eq!(task.stats.transient.load(Ordering::Relaxed), 2);
    }

    /// A renewed provider token retries at once only while `max_retries` allows a retry: a notification that
    /// used its last retry fails for good, as after any other transient failure (Momentum's rule), rather than
    /// taking one retry more.
    #[tokio::test]
    async fn a_renewed_token_does_not_retry_past_max_retries() {
        let engine = engine(10);
        let (mut task, _sender) = task_of(&engine);
        change_settings(&mut task, |s| {
            s.retry.max_retries = crate::model::retry::MaxRetries::Limit(1);
        });
        let expired = || PushResult::TokenExpired {
            rejection: herald_apns::client::Rejection::Http {
                status: 403,
                reason: "ExpiredProviderToken".to_owned(),
                timestamp_ms: None,
            },
            renewed: true,
        };
        task.handle(DomainEvent::Enqueue(queued(&engine, 7, 1)));
        let item = task.active.pop_front().unwrap();
        task.handle(DomainEvent::Outcome {
            tag: item,
            result: expired(),
            remote: None,
        });
        let item = task
            .active
            .pop_front()
            .expect("retried at once: one retry is allowed");
        assert_eq!(item.retries, 1);
        task.handle(DomainEvent::Outcome {
            tag: item,
            result: expired(),
            remote: None,
        });
        assert!(
            task.active.is_empty() && task.delayed.is_empty(),
            "a second retry"
        );
        assert_eq!(task.stats.permanent.load(Ordering::Relaxed), 1);
    }

    /// A retry that comes due just as the task comes to rest is sent: the task neither rests nor retires with a
    /// notification ready (retiring would drop it).
    #[tokio::test]
    async fn a_retry_due_as_the_task_comes_to_rest_is_sent() {
        let engine = engine_with(EngineLimits {
            max_resident: 10,
            idle_queue_timeout: Some(Duration::from_millis(20)),
            ..EngineLimits::default()
        });
        let (mut task, _sender) = task_of(&engine);
        task.handle(DomainEvent::EnqueueDelayed(
            queued(&engine, 5, 5),
            Duration::ZERO,
        ));
        let stats = task.stats.clone();
        let running = tokio::spawn(task.run());
        let deadline = Instant::now() + Duration::from_secs(60);
        while stats.dispatched.load(Ordering::Relaxed) == 0 {
            assert!(
                !running.is_finished(),
                "the task ended with the notification never sent"
            );
            assert!(Instant::now() < deadline, "the notification was never sent");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!running.is_finished());
        assert_eq!(engine.resident_room(), 9);
        running.abort();
    }

    /// Notifications handed to the pool that no connection has taken yet (a route that cannot be reached) are
    /// queued as much as those in the active queue: `showqueue` lists them and `message` finds them by id, and
    /// failing one takes it out of the pool.
    #[tokio::test]
    async fn notifications_waiting_in_the_pool_are_listed_and_found_by_id() {
        let engine = engine(10);
        let (mut task, _sender) = task_of(&engine);
        for n in [6, 7] {
            task.handle(DomainEvent::Enqueue(queued(&engine, n, u64::from(n))));
        }
        task.dispatch();
        assert!(task.active.is_empty());
        assert_eq!(task.pool.waiting(), 2);
        let id = |n: u64| MessageId::from_parts(1, 1_800_000_000_000, n);
        let (reply, listed) = oneshot::channel();
        task.handle(DomainEvent::List {
            limit: 10,
            offset: 0,
            reply,
        });
        let listed = listed.await.expect("the task answers");
        assert_eq!(
            listed.iter().map(|e| (e.id, e.queue)).collect::<Vec<_>>(),
            vec![(id(6), "active"), (id(7), "active")]
        );
        assert_eq!(task.pool.waiting(), 2, "handed back to the pool");
        let message = |task: &mut DomainTask, n: u64, action: MessageAction| {
            let (reply, answer) = oneshot::channel();
            task.handle(DomainEvent::Message {
                id: id(n).to_string(),
                action,
                reply,
            });
            answer
        };
        let details = message(&mut task, 7, MessageAction::Details);
        assert_eq!(details.await.ok().flatten().map(|e| e.id), Some(id(7)));
        assert_eq!(task.pool.waiting(), 2);
        let failed = message(&mut task, 6, MessageAction::Fail("purged".to_owned()));
        assert_eq!(failed.await.ok().flatten().map(|e| e.id), Some(id(6)));
        assert_eq!(task.pool.waiting(), 1);
        assert_eq!(task.outstanding.count, 1);
        assert_eq!(task.stats.permanent.load(Ordering::Relaxed), 1);
        assert_eq!(engine.resident_room(), 9);
        let unknown = message(&mut task, 8, MessageAction::Details);
        assert_eq!(unknown.await.ok().flatten(), None);
    }

    /// While no connection can be opened, a notification that waits unsent (in the pool or in the active queue)
    /// fails once it is `message_expiration` old, with the connection's error, instead of waiting on until
    /// `mx_failures_to_delay` failed attempts judge it; younger ones keep waiting where they were.
    #[tokio::test]
    async fn notifications_unsent_past_message_expiration_fail_while_connections_fail() {
        let engine = engine(10);
        let (mut task, _sender) = task_of(&engine);
        change_settings(&mut task, |s| {
            s.retry.message_expiration = Duration::from_secs(60);
        });
        let old = |engine: &Engine, token: u8, id: u64| {
            let mut item = queued(engine, token, id);
            item.notification.received_at = unix_now() - 120;
            item
        };
        // One old and one young handed to the pool, then one old and one young left in the active queue.
        task.handle(DomainEvent::Enqueue(old(&engine, 1, 1)));
        task.handle(DomainEvent::Enqueue(queued(&engine, 2, 2)));
        task.dispatch();
        assert_eq!(task.pool.waiting(), 2);
        task.handle(DomainEvent::Enqueue(old(&engine, 3, 3)));
        task.handle(DomainEvent::Enqueue(queued(&engine, 4, 4)));
        assert_eq!(engine.resident_room(), 6);

        task.expire_unsent("connection to 127.0.0.1:1 failed: refused");
        assert_eq!(task.pool.waiting(), 1);
        assert_eq!(task.outstanding.count, 1);
        assert_eq!(task.active.len(), 1);
        assert_eq!(task.stats.permanent.load(Ordering::Relaxed), 2);
        let failures = task.stats.failures();
        assert_eq!(
            failures.get(&(
                super::super::stats::FailureKind::Permanent,
                "exceeded max time without delivery; last error: ConnectionFailed".to_owned()
            )),
            Some(&2),
            "{failures:?}"
        );
        assert_eq!(engine.resident_room(), 8, "their memory given back");
        // Nothing more to fail: the young ones stay.
        task.expire_unsent("connection to 127.0.0.1:1 failed: refused");
        assert_eq!((task.pool.waiting(), task.active.len()), (1, 1));
    }

    /// A failed connection attempt's transient-failure line is counted (`ConnectionFailed`), once per line: a
    /// second failure within [`CONNECT_FAILURE_LOG_EVERY`] logs nothing and counts nothing; no retry is counted.
    #[tokio::test]
    async fn a_logged_connection_failure_is_counted_as_a_transient_failure() {
        let engine = engine(10);
        let (mut task, _sender) = task_of(&engine);
        task.handle(DomainEvent::Enqueue(queued(&engine, 1, 1)));
        task.dispatch();
        assert_eq!(task.pool.waiting(), 1);
        let counted = |task: &DomainTask| {
            let failures = task.stats.failures();
            (
                task.stats.transient.load(Ordering::Relaxed),
                failures
                    .get(&(
                        super::super::stats::FailureKind::Transient,
                        super::super::stats::CONNECTION_FAILED.to_owned(),
                    ))
                    .copied(),
            )
        };
        task.log_connect_failure();
        assert_eq!(counted(&task), (1, Some(1)));
        task.log_connect_failure();
        assert_eq!(
            counted(&task),
            (1, Some(1)),
            "not logged again within a second"
        );
        let waiting = task.pool.take_waiting();
        assert!(
            waiting.iter().all(|j| j.tag.retries == 0),
            "no retry counted"
        );
    }

    /// A reload that changes the retry schedule applies to the notifications already waiting for a retry, at once
    /// (docs/operations.md, "Live reload"): a shorter `retry_interval` brings their retry forward, a longer one puts
    /// it back (counted from when each wait started), and a `max_retries` or `message_expiration` that no longer
    /// allows the retry fails them now, the reason naming the reload. A notification held back for another reason
    /// (taken over from a failed task, restored from the spool) keeps its time.
    #[tokio::test]
    async fn a_reload_applies_the_new_retry_schedule_to_notifications_waiting_for_a_retry() {
        use crate::model::retry::MaxRetries;
        let engine = engine(10);
        let (mut task, _sender) = task_of(&engine);
        let mut epoch = 0;
        let mut reload = |task: &mut DomainTask, change: &dyn Fn(&mut DeliverySettings)| {
            let mut settings = (*task.settings).clone();
            change(&mut settings);
            epoch += 1;
            task.handle(DomainEvent::Reconfigure {
                settings: Arc::new(settings),
                epoch,
            });
        };
        reload(&mut task, &|s| {
            s.retry.retry_interval = Duration::from_secs(600);
            s.retry.max_retry_interval = Duration::from_secs(600);
            s.retry.max_retries = MaxRetries::Limit(5);
            s.retry.message_expiration = Duration::from_secs(86_400);
        });
        let held = Duration::from_secs(300);
        task.handle(DomainEvent::EnqueueDelayed(queued(&engine, 9, 9), held));
        for n in 1..=3u8 {
            task.handle(DomainEvent::Enqueue(queued(&engine, n, n.into())));
            let item = task.active.pop_front().unwrap();
            task.handle(DomainEvent::Outcome {
                tag: item,
                result: PushResult::TimedOut { cancelled: None },
                remote: None,
            });
        }
        // Due times from now, in whole seconds (rounded up), held one last.
        let due_in = |task: &DomainTask| {
            let now = Instant::now();
            let mut d: Vec<(u8, u64)> = task
                .delayed
                .iter()
                .map(|Reverse(d)| {
                    let wait = d.due.saturating_duration_since(now);
                    let token =
                        u8::from_str_radix(&d.item.notification.push.token.to_hex()[..2], 16)
                            .unwrap();
                    (token, wait.as_secs() + u64::from(wait.subsec_nanos() > 0))
                })
                .collect();
            d.sort();
            d
        };
        assert_eq!(due_in(&task), [(1, 600), (2, 600), (3, 600), (9, 300)]);
        let held_due = task
            .delayed
            .iter()
            .find(|Reverse(d)| !d.retry)
            .map(|Reverse(d)| d.due)
            .unwrap();

        // Shorter: due a second after each wait started (now, give or take the test's run time).
        reload(&mut task, &|s| {
            s.retry.retry_interval = Duration::from_secs(1)
        });
        let due = due_in(&task);
        assert!(due[..3].iter().all(|(_, s)| *s <= 1), "{due:?}");
        // Longer again: back where they were.
        reload(&mut task, &|s| {
            s.retry.retry_interval = Duration::from_secs(600)
        });
        let due = due_in(&task);
        assert!(
            due[..3].iter().all(|(_, s)| (599..=600).contains(s)),
            "{due:?}"
        );
        assert_eq!(task.stats.permanent.load(Ordering::Relaxed), 0);

        // An expiration the wait no longer fits in: failed now; the held one stays, with its time.
        reload(&mut task, &|s| {
            s.retry.message_expiration = Duration::from_secs(100);
        });
        assert_eq!(task.delayed.len(), 1);
        assert_eq!(task.delayed.peek().map(|Reverse(d)| d.due), Some(held_due));
        assert_eq!(task.stats.permanent.load(Ordering::Relaxed), 3);
        let failures = task.stats.failures();
        assert_eq!(
            failures.get(&(
                super::super::stats::FailureKind::Permanent,
                "exceeded max time without delivery; last error: Reload".to_owned()
            )),
            Some(&3),
            "{failures:?}"
        );
        assert_eq!(engine.resident_room(), 9, "their memory given back");

        // Fewer retries than a waiting notification has made: failed now.
        reload(&mut task, &|s| {
            s.retry.message_expiration = Duration::from_secs(86_400);
        });
        task.handle(DomainEvent::Enqueue(queued(&engine, 4, 4)));
        let item = task.active.pop_front().unwrap();
        task.handle(DomainEvent::Outcome {
            tag: item,
            result: PushResult::TimedOut { cancelled: None },
            remote: None,
        });
        assert_eq!(task.delayed.len(), 2);
        reload(&mut task, &|s| s.retry.max_retries = MaxRetries::Limit(0));
        assert_eq!(task.delayed.len(), 1, "only the held one waits");
        let failures = task.stats.failures();
        assert_eq!(
            failures.get(&(
                super::super::stats::FailureKind::Permanent,
                "exceeded max retries; last error: Reload".to_owned()
            )),
            Some(&1),
            "{failures:?}"
        );
    }

    /// A reload that leaves the queue without a route, or changes its route (a new pool), takes back what the pool
    /// had not put on a connection yet in the order it was handed over (older first: of two notifications with the
    /// same collapse id, the newer must arrive last), and their status says `queued` again.
    #[tokio::test]
    async fn a_reload_takes_back_what_the_pool_holds_in_its_order() {
        struct Told(std::sync::Mutex<Vec<MessageId>>);
        impl OutcomeListener for Told {
            fn outcome(&self, _: &OutcomeRecord<'_>) {}
            fn queued(&self, n: &crate::queue::message::Notification, _: u32) {
                self.0.lock().unwrap().push(n.id);
            }
        }
        let engine = engine(10);
        let told = Arc::new(Told(std::sync::Mutex::new(Vec::new())));
        engine.set_outcome_listener(told.clone());
        let (mut task, _sender) = task_of(&engine);
        let ids: Vec<MessageId> = (1..=3)
            .map(|n| MessageId::from_parts(1, 1_800_000_000_000, n))
            .collect();
        let active = |task: &DomainTask| {
            task.active
                .iter()
                .map(|q| q.notification.id)
                .collect::<Vec<_>>()
        };
        for n in 1..=3u8 {
            task.handle(DomainEvent::Enqueue(queued(&engine, n, n.into())));
        }
        let first_route = task.settings.clone();
        for (what, event) in [
            (
                "unroutable",
                DomainEvent::Unroutable {
                    reason: "no route".into(),
                    epoch: 1,
                },
            ),
            (
                "another route",
                DomainEvent::Reconfigure {
                    settings: Arc::new(DeliverySettings::for_tests("apps.example", 9)),
                    epoch: 3,
                },
            ),
        ] {
            if what == "another route" {
                // Routable again first, on the route it had.
                task.handle(DomainEvent::Reconfigure {
                    settings: first_route.clone(),
                    epoch: 2,
                });
            }
            task.dispatch();
            assert_eq!(task.pool.waiting(), 3, "{what}");
            told.0.lock().unwrap().clear();
            task.handle(event);
            assert_eq!(active(&task), ids, "{what}");
            assert_eq!(task.outstanding.count, 0, "{what}");
            let mut told = std::mem::take(&mut *told.0.lock().unwrap());
            told.sort();
            assert_eq!(told, ids, "{what}");
        }
    }

    #[test]
    fn a_queue_shrinks_only_once_it_uses_less_than_a_quarter_of_its_room() {
        const F: usize = BUSY_QUEUE_FLOOR;
        // A burst of a million left a million slots: once the queue is down to 10,000, it shrinks to 20,000.
        assert_eq!(shrunk_capacity(10_000, 1 << 20, F), Some(20_000));
        assert_eq!(shrunk_capacity(0, 1 << 20, F), Some(F));
        // A queue a quarter full or more keeps its room, and a busy one keeps the floor.
        assert_eq!(shrunk_capacity(300_000, 1 << 20, F), None);
        assert_eq!(shrunk_capacity(0, F, F), None);
        assert_eq!(shrunk_capacity(10, 2 * F, F), Some(F));
        // At rest an empty queue gives back everything.
        assert_eq!(shrunk_capacity(0, F, 0), Some(0));
        assert_eq!(shrunk_capacity(0, 0, 0), None);
        // After a shrink the queue must halve again before the next one.
        let after = shrunk_capacity(10_000, 1 << 20, F).unwrap();
        assert_eq!(shrunk_capacity(10_000, after, F), None);
        assert_eq!(shrunk_capacity(4_999, after, F), Some(9_998));
    }

    #[test]
    fn the_active_and_delayed_queues_take_the_shrunk_capacity() {
        let mut active: VecDeque<u64> = (0..100_000).collect();
        active.drain(..99_990);
        let c = shrunk_capacity(active.len(), active.capacity(), 0).unwrap();
        active.shrink_to(c);
        assert!(active.capacity() < 1_000, "{}", active.capacity());
        assert_eq!(
            active.iter().copied().collect::<Vec<_>>(),
            (99_990..100_000).collect::<Vec<_>>()
        );
        let mut delayed: BinaryHeap<Reverse<u64>> = (0..100_000).map(Reverse).collect();
        while delayed.len() > 10 {
            delayed.pop();
        }
        let c = shrunk_capacity(delayed.len(), delayed.capacity(), 0).unwrap();
        delayed.shrink_to(c);
        assert!(delayed.capacity() < 1_000, "{}", delayed.capacity());
        assert_eq!(delayed.peek(), Some(&Reverse(99_990)));
    }
}
