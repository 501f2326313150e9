//! The retry state of the notifications of a JetStream spool, shared by its nodes in a key-value bucket next to the
//! stream (`<stream>_retries`, the stream's replica count, file storage).
//!
//! JetStream counts every delivery of a message, whatever ended the one before: a retry handed back to the stream
//! (an attempt), but also a notification given back at a graceful stop, one of a domain this node does not deliver,
//! one in a record format it does not read (none of them an attempt), while the retries a node makes without giving
//! the notification back (short retry intervals) are no delivery at all. So the count of retries travels with the
//! notification in the bucket, one entry per message (its key is the message's stream sequence), written by the
//! node holding it:
//!
//! - after a transient failure whose retry it keeps ([`crate::Spool::reschedule`]): the retries so far, and when the
//!   next attempt is due ("in progress": whatever ends that delivery may follow another attempt, and counts as one);
//! - before it gives the notification back without an attempt (a graceful stop, a domain it does not deliver, a
//!   record format it does not read, another notification under the same id held): the same, "settled": the end of
//!   that delivery is no attempt.
//!
//! A node that pulls a message delivered before (a first delivery reads nothing) reads its entry
//! ([`retries_at`]): the retries it says, plus one for each delivery since that ended without a word (a retry
//! handed back to the stream, a node that died, an in-progress ack that came too late); with no entry, every earlier
//! delivery counts as one retry. A delivery whose end nobody recorded counts as an attempt: a node that died may
//! have died during one, and a retry handed back to the stream is one. The entry goes on the notification's final
//! outcome.
//!
//! Writes go out in the background, at most [`WRITES_IN_FLIGHT`] at once and [`MAX_PENDING_WRITES`] waiting (the
//! oldest dropped past that); a newer write for a message replaces its waiting one, and writes for one message go
//! out one after the other. A read that fails (NATS unreachable, the bucket not open yet) falls back to the delivery
//! count, with a warning, and for [`READ_PAUSE`] after it no read is tried: delivery never waits on the bucket for
//! more than [`READ_LIMIT`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::jetstream::Reported;

/// Writes waiting to go out at most; past it the oldest is dropped, with a warning, and counted.
pub const MAX_PENDING_WRITES: usize = 10_000;

/// Writes awaiting NATS's answer at once.
pub const WRITES_IN_FLIGHT: usize = 64;

/// How long a read of an entry may take before the delivery goes on without it.
pub const READ_LIMIT: Duration = Duration::from_secs(1);

/// After a read failed, reads are not tried for this long: the deliveries meanwhile fall back to the delivery count.
pub const READ_PAUSE: Duration = Duration::from_secs(5);

/// An entry not written again for this long goes (the bucket's age limit): a notification's entry is written again
/// at each of its transient failures kept by a node, and at each give-back without an attempt, so that only an
/// entry nobody deleted (its final outcome's delete lost) stays this long. One that outlived it falls back to the
/// delivery count.
pub const STATE_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// The format of an entry this build writes.
const STATE_VERSION: u8 = 1;
/// Length of an encoded [`RetryState`].
const STATE_LEN: usize = 38;
const SETTLED: u8 = 1;

/// The bucket of a stream's retry state.
pub fn bucket_name(stream: &str) -> String {
    format!("{stream}_retries")
}

/// What an entry says of a message: the notification's retries and next attempt, as known during one of its
/// deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryState {
    /// The notification's id (the key the accepting node gave it): an entry of another notification (the stream
    /// made again numbers its messages from 1 again) is not taken for it.
    pub id: u128,
    /// Transient failures so far.
    pub retries: u32,
    /// Unix milliseconds of the next attempt; 0: none set.
    pub next_attempt_ms: u64,
    /// The delivery (JetStream's count, from 1) during which it was written.
    pub delivered: u64,
    /// Written as the notification went back to the stream without an attempt: the end of that delivery is none.
    pub settled: bool,
}

impl RetryState {
    /// `version | flags | id u128 | retries u32 | next_attempt_ms u64 | delivered u64`, big-endian.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(STATE_LEN);
        out.push(STATE_VERSION);
        out.push(if self.settled { SETTLED } else { 0 });
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.retries.to_be_bytes());
        out.extend_from_slice(&self.next_attempt_ms.to_be_bytes());
        out.extend_from_slice(&self.delivered.to_be_bytes());
        out
    }

    /// `None` for a value this build does not read (another format, written by another herald).
    pub fn decode(value: &[u8]) -> Option<RetryState> {
        let value: &[u8; STATE_LEN] = value.try_into().ok()?;
        let (head, rest) = value.split_first_chunk::<2>()?;
        if head[0] != STATE_VERSION || head[1] & !SETTLED != 0 {
            return None;
        }
        let (id, rest) = rest.split_first_chunk::<16>()?;
        let (retries, rest) = rest.split_first_chunk::<4>()?;
        let (next, rest) = rest.split_first_chunk::<8>()?;
        let delivered = rest.first_chunk::<8>()?;
        Some(RetryState {
            id: u128::from_be_bytes(*id),
            retries: u32::from_be_bytes(*retries),
            next_attempt_ms: u64::from_be_bytes(*next),
            delivered: u64::from_be_bytes(*delivered),
            settled: head[1] & SETTLED != 0,
        })
    }
}

/// The retries of notification `id` arriving for the `delivered`-th time, its record saying `recorded`, given the
/// entry read for its message (`None`: there is none).
///
/// An entry written during delivery `d` says the retries so far; the deliveries after it that ended without a
/// word each count as one (a retry handed back to the stream, a node that died during an attempt or waiting for
/// one): those from `d + 1` when it is settled, from `d` itself otherwise. With no entry (or one of another
/// notification), every earlier delivery counts as one. An entry of a later delivery than this one (the consumer
/// was made again, and counts from 1 again) says its retries, and one more unless settled.
pub fn retries_at(id: u128, recorded: u32, delivered: u64, state: Option<&RetryState>) -> u32 {
    let counted = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let derived = match state.filter(|s| s.id == id) {
        None => counted(delivered.saturating_sub(1)),
        Some(s) => {
            let unrecorded = if s.delivered < delivered {
                delivered - s.delivered - u64::from(s.settled)
            } else {
                u64::from(!s.settled)
            };
            s.retries.saturating_add(counted(unrecorded))
        }
    };
    recorded.max(derived)
}

/// Why a read of the bucket gave nothing to go by.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("key-value bucket {bucket}: not open yet")]
    NotOpen { bucket: String },
    #[error(
        "key-value bucket {bucket}: a read failed {ago_ms} ms ago; not tried again before {pause_ms} ms"
    )]
    Paused {
        bucket: String,
        ago_ms: u128,
        pause_ms: u128,
    },
    #[error("key-value bucket {bucket}: no answer within {limit_ms} ms")]
    TimedOut { bucket: String, limit_ms: u128 },
    #[error("key-value bucket {bucket}: {detail}")]
    Failed { bucket: String, detail: String },
}

/// An entry as read: what it says (`None`: a value this build does not read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadState(pub Option<RetryState>);

/// A write waiting to go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put(RetryState),
    Delete,
}

/// The writes waiting to go out, by message (stream sequence), oldest first; one per message, the newest.
#[derive(Default)]
struct Queue {
    order: VecDeque<u64>,
    ops: HashMap<u64, Op>,
    /// Messages whose write awaits NATS's answer: their next write waits for it.
    in_flight: HashSet<u64>,
    /// Told once a write of their message made after they asked went out ([`RetryBook::put_confirmed`]); dropped
    /// (their receiver sees an error) when it is dropped.
    waiters: HashMap<u64, Vec<tokio::sync::oneshot::Sender<()>>>,
}

struct Pending {
    name: String,
    cap: usize,
    queue: Mutex<Queue>,
    dropped: AtomicU64,
    reported: Mutex<Reported>,
    /// True while nothing waits and nothing is in flight.
    idle: tokio::sync::watch::Sender<bool>,
}

impl Pending {
    fn push(&self, seq: u64, op: Op, waiter: Option<tokio::sync::oneshot::Sender<()>>) {
        let dropped = {
            let mut queue = lock(&self.queue);
            let mut dropped = None;
            if let Some(waiter) = waiter {
                queue.waiters.entry(seq).or_default().push(waiter);
            }
            if queue.ops.insert(seq, op).is_none() {
                queue.order.push_back(seq);
                if queue.ops.len() > self.cap
                    && let Some(oldest) = queue.order.pop_front()
                {
                    queue.ops.remove(&oldest);
                    queue.waiters.remove(&oldest);
                    dropped = Some(oldest);
                }
            }
            self.idle.send_replace(false);
            dropped
        };
        if let Some(seq) = dropped {
            let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if lock(&self.reported).due("dropped") {
                tracing::warn!(
                    "key-value bucket {}: {} writes of retry counts wait for NATS already; the oldest (message \
                     {seq}) is dropped ({total} dropped so far): its next node counts its retries from an older \
                     state or from its delivery count",
                    self.name,
                    self.cap
                );
            }
        }
    }

    /// The oldest waiting write of a message with none in flight, now in flight.
    fn next(&self) -> Option<(u64, Op)> {
        let mut queue = lock(&self.queue);
        let at = queue
            .order
            .iter()
            .position(|seq| !queue.in_flight.contains(seq))?;
        let seq = queue.order.remove(at)?;
        let op = queue.ops.remove(&seq)?;
        queue.in_flight.insert(seq);
        Some((seq, op))
    }

    /// The write of `seq` in flight ended; a failed one waits again, first, unless a newer one is waiting. Once
    /// nothing more waits for `seq`, those waiting for its writes are told.
    fn ended(&self, seq: u64, failed: Option<Op>) {
        let mut queue = lock(&self.queue);
        queue.in_flight.remove(&seq);
        if let Some(op) = failed
            && !queue.ops.contains_key(&seq)
        {
            queue.ops.insert(seq, op);
            queue.order.push_front(seq);
        }
        if !queue.ops.contains_key(&seq)
            && let Some(waiters) = queue.waiters.remove(&seq)
        {
            for waiter in waiters {
                let _ = waiter.send(());
            }
        }
        if queue.ops.is_empty() && queue.in_flight.is_empty() {
            self.idle.send_replace(true);
        }
    }

    fn has_ready(&self) -> bool {
        let queue = lock(&self.queue);
        queue.order.iter().any(|seq| !queue.in_flight.contains(seq))
    }
}

/// The handle of the bucket: reads, and writes that go out in the background. Cheap to clone.
#[derive(Clone)]
pub struct RetryBook {
    name: String,
    store: Arc<Mutex<Option<kv::Store>>>,
    pending: Arc<Pending>,
    wake: tokio::sync::mpsc::Sender<()>,
    /// When the last read failed.
    read_failed: Arc<Mutex<Option<Instant>>>,
    read_limit: Duration,
    reported: Arc<Mutex<Reported>>,
}

impl RetryBook {
    /// Opens (creating when missing) the bucket of `stream` in the background, retried every second until NATS
    /// answers; the writer task ends once the handle is dropped and what waits went out. Needs a Tokio runtime.
    pub fn start(ctx: jetstream::Context, stream: &str, replicas: usize) -> RetryBook {
        let name = bucket_name(stream);
        let pending = Arc::new(Pending {
            name: name.clone(),
            cap: MAX_PENDING_WRITES,
            queue: Mutex::new(Queue::default()),
            dropped: AtomicU64::new(0),
            reported: Mutex::new(Reported::default()),
            idle: tokio::sync::watch::Sender::new(true),
        });
        let store = Arc::new(Mutex::new(None));
        let (wake, woken) = tokio::sync::mpsc::channel(1);
        let bucket = Bucket {
            ctx,
            name: name.clone(),
            replicas,
        };
        tokio::spawn(run(bucket, store.clone(), pending.clone(), woken));
        RetryBook {
            name,
            store,
            pending,
            wake,
            read_failed: Arc::new(Mutex::new(None)),
            read_limit: READ_LIMIT,
            reported: Arc::new(Mutex::new(Reported::default())),
        }
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes `state` for the message at stream sequence `seq` (in the background).
    pub fn put(&self, seq: u64, state: RetryState) {
        self.pending.push(seq, Op::Put(state), None);
        let _ = self.wake.try_send(());
    }

    /// [`RetryBook::put`], and what resolves once it went out (an error when it was dropped: see
    /// [`MAX_PENDING_WRITES`]).
    pub fn put_confirmed(&self, seq: u64, state: RetryState) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.pending.push(seq, Op::Put(state), Some(tx));
        let _ = self.wake.try_send(());
        rx
    }

    /// Deletes the entry of the message at `seq` (in the background).
    pub fn delete(&self, seq: u64) {
        self.pending.push(seq, Op::Delete, None);
        let _ = self.wake.try_send(());
    }

    /// Resolves once every write made before this call went out (or was dropped), or `limit` passed first
    /// (false).
    pub fn written(&self, limit: Duration) -> impl Future<Output = bool> + Send + 'static {
        let mut idle = self.pending.idle.subscribe();
        async move {
            tokio::time::timeout(limit, idle.wait_for(|idle| *idle))
                .await
                .is_ok_and(|r| r.is_ok())
        }
    }

    /// Writes dropped since start because [`MAX_PENDING_WRITES`] waited already.
    pub fn dropped_writes(&self) -> u64 {
        self.pending.dropped.load(Ordering::Relaxed)
    }

    /// The entry of the message at `seq`: `Ok(None)` when there is none.
    pub async fn read(&self, seq: u64) -> Result<Option<ReadState>, ReadError> {
        if let Some(at) = *lock(&self.read_failed) {
            let ago = at.elapsed();
            if ago < READ_PAUSE {
                return Err(ReadError::Paused {
                    bucket: self.name.clone(),
                    ago_ms: ago.as_millis(),
                    pause_ms: READ_PAUSE.as_millis(),
                });
            }
        }
        let Some(store) = lock(&self.store).clone() else {
            return Err(ReadError::NotOpen {
                bucket: self.name.clone(),
            });
        };
        let read = match tokio::time::timeout(self.read_limit, store.entry(seq.to_string())).await {
            Ok(Ok(entry)) => Ok(entry
                .filter(|e| e.operation == kv::Operation::Put)
                .map(|e| ReadState(RetryState::decode(&e.value)))),
            Ok(Err(e)) => Err(ReadError::Failed {
                bucket: self.name.clone(),
                detail: e.to_string(),
            }),
            Err(_) => Err(ReadError::TimedOut {
                bucket: self.name.clone(),
                limit_ms: self.read_limit.as_millis(),
            }),
        };
        *lock(&self.read_failed) = read.is_err().then(Instant::now);
        read
    }

    /// Says (once a minute at most) that a read failed and the delivery count stands in.
    pub fn report_read_failure(&self, e: &ReadError) {
        if lock(&self.reported).due("read") {
            tracing::warn!(
                "{e}: the retries of notifications delivered again are counted from their delivery count for now \
                 (every earlier delivery counts as one)"
            );
        } else {
            tracing::debug!("{e}");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the bucket is, to open it (or make it) again.
struct Bucket {
    ctx: jetstream::Context,
    name: String,
    replicas: usize,
}

impl Bucket {
    async fn open(&self) -> Result<kv::Store, String> {
        if let Ok(store) = self.ctx.get_key_value(&self.name).await {
            return Ok(store);
        }
        let config = kv::Config {
            bucket: self.name.clone(),
            history: 1,
            max_age: STATE_MAX_AGE,
            num_replicas: self.replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        self.ctx.create_key_value(config).await.map_err(|e| {
            format!(
                "key-value bucket {}: cannot open or create it: {e}",
                self.name
            )
        })
    }

    async fn open_until_done(&self, reported: &mut Reported) -> kv::Store {
        loop {
            match self.open().await {
                Ok(store) => {
                    if reported.clear() {
                        tracing::info!("key-value bucket {}: open again", self.name);
                    }
                    return store;
                }
                Err(e) => {
                    if reported.due("open") {
                        tracing::warn!(
                            "{e}; retrying every second (meanwhile the retries of notifications delivered again \
                             are counted from their delivery count)"
                        );
                    } else {
                        tracing::debug!("{e}; retrying");
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// One write: a put, or a delete that removes the entry's message from the bucket's stream (a purge of its
/// subject, leaving no delete marker behind).
async fn write(store: kv::Store, seq: u64, op: Op) -> (u64, Op, Result<(), String>) {
    let key = seq.to_string();
    let result = match op {
        Op::Put(state) => store
            .put(&key, state.encode().into())
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
        Op::Delete => store
            .stream
            .purge()
            .filter(format!("{}{key}", store.prefix))
            .await
            .map(drop)
            .map_err(|e| e.to_string()),
    };
    (seq, op, result)
}

async fn run(
    bucket: Bucket,
    shared: Arc<Mutex<Option<kv::Store>>>,
    pending: Arc<Pending>,
    mut woken: tokio::sync::mpsc::Receiver<()>,
) {
    let mut reported = Reported::default();
    let mut store = {
        let open = bucket.open_until_done(&mut reported);
        tokio::pin!(open);
        loop {
            tokio::select! {
                store = &mut open => break store,
                // Every handle dropped before the bucket opened: nothing more to do. A write waiting is taken
                // once the bucket is open.
                woke = woken.recv() => if woke.is_none() {
                    return;
                },
            }
        }
    };
    *lock(&shared) = Some(store.clone());
    let mut in_flight = FuturesUnordered::new();
    let mut delay = Duration::from_millis(100);
    let mut handles_gone = false;
    loop {
        while in_flight.len() < WRITES_IN_FLIGHT
            && let Some((seq, op)) = pending.next()
        {
            in_flight.push(write(store.clone(), seq, op));
        }
        if in_flight.is_empty() {
            if handles_gone {
                return;
            }
            match woken.recv().await {
                Some(()) => continue,
                // Every handle dropped: what waits goes out, then the task ends.
                None if pending.has_ready() => {
                    handles_gone = true;
                    continue;
                }
                None => return,
            }
        }
        let next = tokio::select! {
            ended = in_flight.next() => ended,
            woke = woken.recv(), if !handles_gone => {
                handles_gone = woke.is_none();
                continue;
            }
        };
        let Some((seq, op, result)) = next else {
            continue;
        };
        match result {
            Ok(()) => {
                pending.ended(seq, None);
                if reported.clear() {
                    tracing::info!("key-value bucket {}: writes go through again", bucket.name);
                }
                delay = Duration::from_millis(100);
            }
            Err(e) => {
                pending.ended(seq, Some(op));
                if reported.due("write") {
                    tracing::warn!(
                        "key-value bucket {}: writing the retries of message {seq} failed ({e}); opening the \
                         bucket again (creating it when it is missing) and retrying",
                        bucket.name
                    );
                } else {
                    tracing::debug!("key-value bucket {}: message {seq}: {e}", bucket.name);
                }
                // The writes in flight end first; then a pause, and the bucket opened again (it may be gone).
                while let Some((seq, op, result)) = in_flight.next().await {
                    pending.ended(seq, result.err().map(|_| op));
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
                match bucket.open().await {
                    Ok(again) => {
                        *lock(&shared) = Some(again.clone());
                        store = again;
                    }
                    Err(e) => tracing::debug!("{e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(retries: u32, delivered: u64, settled: bool) -> RetryState {
        RetryState {
            id: 7,
            retries,
            next_attempt_ms: 1_800_000_000_000,
            delivered,
            settled,
        }
    }

    #[test]
    fn a_state_reads_back_as_written_and_another_format_is_not_read() {
        for s in [state(3, 9, true), state(0, 1, false)] {
            assert_eq!(RetryState::decode(&s.encode()), Some(s));
        }
        let mut newer = state(1, 2, false).encode();
        newer[0] = STATE_VERSION + 1;
        assert_eq!(RetryState::decode(&newer), None);
        let mut flags = state(1, 2, false).encode();
        flags[1] = 2;
        assert_eq!(RetryState::decode(&flags), None);
        assert_eq!(RetryState::decode(&newer[..10]), None);
    }

    #[test]
    fn the_deliveries_nobody_recorded_count_as_one_retry_each() {
        // No entry: every earlier delivery.
        assert_eq!(retries_at(7, 0, 1, None), 0);
        assert_eq!(retries_at(7, 0, 4, None), 3);
        // Retries kept on a node (5 of them, during delivery 2), then handed back: the hand-back's delivery end
        // counts, the earlier ones are said by the entry.
        assert_eq!(retries_at(7, 0, 3, Some(&state(5, 2, false))), 6);
        // Given back without an attempt during delivery 2: nothing more.
        assert_eq!(retries_at(7, 0, 3, Some(&state(5, 2, true))), 5);
        // ... and two deliveries since that ended without a word.
        assert_eq!(retries_at(7, 0, 5, Some(&state(5, 2, true))), 7);
        // An entry of another notification is not taken.
        let other = RetryState {
            id: 8,
            ..state(5, 2, true)
        };
        assert_eq!(retries_at(7, 0, 3, Some(&other)), 2);
        // The consumer made again counts deliveries from 1 again.
        assert_eq!(retries_at(7, 0, 2, Some(&state(5, 9, true))), 5);
        assert_eq!(retries_at(7, 0, 2, Some(&state(5, 9, false))), 6);
        // The record's own count is never lowered.
        assert_eq!(retries_at(7, 9, 3, Some(&state(5, 2, true))), 9);
    }

    #[test]
    fn waiting_writes_keep_the_newest_per_message_within_bounds_one_in_flight_per_message() {
        let pending = Pending {
            name: "bounded".into(),
            cap: 3,
            queue: Mutex::new(Queue::default()),
            dropped: AtomicU64::new(0),
            reported: Mutex::new(Reported::default()),
            idle: tokio::sync::watch::Sender::new(true),
        };
        pending.push(1, Op::Put(state(1, 1, false)), None);
        pending.push(2, Op::Put(state(1, 1, false)), None);
        let (tx, mut told) = tokio::sync::oneshot::channel();
        pending.push(1, Op::Put(state(2, 1, false)), Some(tx));
        assert!(!*pending.idle.borrow());
        assert_eq!(pending.next(), Some((1, Op::Put(state(2, 1, false)))));
        // 1 in flight: its next write waits for it.
        pending.push(1, Op::Delete, None);
        assert_eq!(pending.next(), Some((2, Op::Put(state(1, 1, false)))));
        assert_eq!(pending.next(), None);
        // A failed write does not come back over a newer one.
        pending.ended(1, Some(Op::Put(state(2, 1, false))));
        assert!(
            told.try_recv().is_err(),
            "told while a write of its message waits"
        );
        assert_eq!(pending.next(), Some((1, Op::Delete)));
        pending.ended(2, Some(Op::Put(state(1, 1, false))));
        assert_eq!(pending.next(), Some((2, Op::Put(state(1, 1, false)))));
        pending.ended(1, None);
        assert_eq!(told.try_recv(), Ok(()));
        assert!(!*pending.idle.borrow());
        pending.ended(2, None);
        assert!(*pending.idle.borrow());
        // Bounded: the oldest dropped.
        for seq in 10..15 {
            pending.push(seq, Op::Delete, None);
        }
        assert_eq!(pending.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(pending.next(), Some((12, Op::Delete)));
    }
}
