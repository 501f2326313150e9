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
//! An older state never replaces a newer one: a write expects the entry's revision as its node last read or wrote
//! it, and when another node wrote meanwhile, it reads the entry and goes on only over the state of an earlier
//! delivery (or of another notification). It is not written over a state of a later delivery (the node that holds
//! the message now wrote it), over the delete marker of the notification's final outcome (written after the message
//! was published: the entry is not brought back), nor over an entry in a newer format (a newer herald wrote it).
//! A node that gives a notification back waits for its write until a deadline; a write still waiting then is not
//! sent. (A consumer made again counts deliveries from 1 again: until the final outcome deletes it, an entry left
//! from before with a higher delivery count then stands, and is read as such: see [`retries_at`].)
//!
//! Writes go out in the background, at most [`WRITES_IN_FLIGHT`] at once and [`MAX_PENDING_WRITES`] waiting (the
//! oldest dropped past that); a newer write for a message replaces its waiting one, and writes for one message go
//! out one after the other. A write that fails for a reason of its own (the entry kept changing while it was
//! written) is tried again at once, [`WRITE_ATTEMPTS`] times in all, then dropped with a warning. One that NATS did
//! not answer (unreachable, the bucket's leader changing) is no attempt of its own: it waits, with every other
//! write, while the writes pause and the bucket is opened again, until NATS answers, its deadline passes, or
//! [`MAX_PENDING_WRITES`] newer ones push it out. A read made before the bucket is open waits for it, within
//! [`READ_LIMIT`]; a read that fails (NATS unreachable, the bucket still not open) falls back to the delivery count,
//! with a warning, and for [`READ_PAUSE`] after it no read is tried: delivery never waits on the bucket for more
//! than [`READ_LIMIT`]. An entry this build cannot read (a newer format) is said, and the delivery count stands in.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::jetstream::Reported;
use crate::shared_map::Bucket;

/// Writes waiting to go out at most; past it the oldest is dropped, with a warning, and counted.
pub const MAX_PENDING_WRITES: usize = 10_000;

/// Writes awaiting NATS's answer at once.
pub const WRITES_IN_FLIGHT: usize = 64;

/// Attempts of one write before it is dropped, with a warning: one whose entry keeps changing while it is written
/// does not go round for ever. Only such failures of the write itself count; a write NATS did not answer (a failure
/// of the whole bucket) is tried again without counting.
pub const WRITE_ATTEMPTS: u32 = 5;

/// How far apart the clocks of the NATS servers may be when the time a delete marker was written (the bucket's
/// server) is set against the time the stream took a message (the stream's server): a marker counts as the
/// message's final outcome only when written at least this long after the message was published. Without it, a
/// marker left from a stream made again, on a server whose clock is ahead, could refuse every write for the new
/// message at that sequence. The cost: a late write landing after a final outcome that came less than this long after
/// the notification was published may bring its entry back; nobody reads it (its message is gone, and a message at
/// the same sequence in a stream made again is another notification), and it goes with the bucket's age limit.
pub const CLOCK_MARGIN: Duration = Duration::from_secs(60);

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

    /// Whether `value` is in a newer format than this build writes (a newer herald wrote it): it is not written
    /// over.
    pub fn is_newer_format(value: &[u8]) -> bool {
        value.first().is_some_and(|v| *v > STATE_VERSION)
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
    #[error("key-value bucket {bucket}: not open yet (waited {waited_ms} ms)")]
    NotOpen { bucket: String, waited_ms: u128 },
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

/// Where a write goes: the message's stream sequence (the entry's key), and when the stream took the message (Unix
/// milliseconds, the server's clock): a delete marker written after that says the notification was finished, and
/// a late write does not bring its entry back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    pub seq: u64,
    pub published_ms: i64,
}

/// A write waiting to go out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Put {
        state: RetryState,
        published_ms: i64,
        /// Not sent once this has passed (its notification went back to the stream without waiting for it any
        /// longer); one already sent is let finish.
        deadline: Option<Instant>,
    },
    Delete,
}

/// A write and the attempts it had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Queued {
    op: Op,
    attempts: u32,
}

impl Queued {
    fn expired(&self, now: Instant) -> bool {
        matches!(self.op, Op::Put { deadline: Some(d), .. } if now >= d)
    }
}

/// How a write that NATS answered ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Written; the entry's revision now.
    Put(u64),
    /// The entry is gone.
    Deleted,
    /// Not written: the bucket has a newer state (see [`newer_there`]), said here.
    Superseded(Superseded),
    /// Its deadline passed before it could go out.
    Expired,
}

/// What in the bucket keeps a write from going out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Superseded {
    /// A state of a later delivery of the message.
    LaterDelivery(u64),
    /// A delete marker written after the message was published: its notification was finished.
    Finished,
    /// A value in a newer format than this build writes (a newer herald): left as it is.
    NewerFormat,
}

/// Whether what the bucket holds for a message (`entry`) is newer than `ours`, written for the message published
/// at `published_ms`: then `ours` is not written. A state of the same notification wins when it was written during
/// a later delivery (the node that holds the message now wrote it); a delete marker wins when it was written after
/// the message was published (the notification was finished; one written before is of another message at the same
/// sequence, in a stream made again); a value in a newer format is never replaced by this build. Anything else
/// (an entry of another notification, a value that is no state at all) is replaced. The two times come from two
/// servers' clocks: a marker wins only when written [`CLOCK_MARGIN`] or more after the message was published.
fn newer_there(ours: &RetryState, published_ms: i64, entry: &kv::Entry) -> Option<Superseded> {
    match entry.operation {
        kv::Operation::Delete | kv::Operation::Purge => {
            let written_ms = entry.created.unix_timestamp_nanos() / 1_000_000;
            finished_by(written_ms, published_ms).then_some(Superseded::Finished)
        }
        kv::Operation::Put => match RetryState::decode(&entry.value) {
            Some(theirs) if theirs.id == ours.id && theirs.delivered > ours.delivered => {
                Some(Superseded::LaterDelivery(theirs.delivered))
            }
            Some(_) => None,
            None => RetryState::is_newer_format(&entry.value).then_some(Superseded::NewerFormat),
        },
    }
}

/// Whether a delete marker written at `written_ms` (Unix milliseconds, the bucket's server) is the final outcome of
/// the message published at `published_ms` (the stream's server): written [`CLOCK_MARGIN`] or more after it.
fn finished_by(written_ms: i128, published_ms: i64) -> bool {
    let margin_ms = i128::try_from(CLOCK_MARGIN.as_millis()).unwrap_or(i128::MAX);
    written_ms >= i128::from(published_ms).saturating_add(margin_ms)
}

/// How a write ended ([`Pending::ended`]).
#[derive(Debug)]
enum Ended {
    /// Done: written, deleted, or not needed (a newer state is there, its deadline passed).
    Done,
    /// Failed for a reason of its own (the entry kept changing): tried again, unless it had [`WRITE_ATTEMPTS`]
    /// already.
    Failed(Queued),
    /// Not answered (NATS unreachable, the bucket's leader changing): tried again, the attempt not counted.
    Interrupted(Queued),
}

/// What [`Pending::ended`] gave up.
#[derive(Debug, PartialEq, Eq)]
struct GaveUp {
    seq: u64,
    attempts: u32,
}

/// The writes waiting to go out, by message (stream sequence), oldest first; one per message, the newest.
#[derive(Default)]
struct Queue {
    order: VecDeque<u64>,
    ops: HashMap<u64, Queued>,
    /// Messages whose write awaits NATS's answer: their next write waits for it.
    in_flight: HashSet<u64>,
    /// Told once a write of their message made after they asked went out, or was not needed (a newer state is in
    /// the bucket) ([`RetryBook::put_confirmed`]); dropped (their receiver sees an error) when it was dropped.
    waiters: HashMap<u64, Vec<tokio::sync::oneshot::Sender<()>>>,
    /// Messages whose write in flight is older than one dropped (too many waited): should it fail, it is not put
    /// back (it would stand where the newer one was).
    abandoned: HashSet<u64>,
}

struct Pending {
    name: String,
    cap: usize,
    queue: Mutex<Queue>,
    dropped: AtomicU64,
    reported: Mutex<Reported>,
    /// True while nothing waits and nothing is in flight.
    idle: tokio::sync::watch::Sender<bool>,
    /// The revision of each entry as this node last read or wrote it: the next write expects it (and learns of a
    /// write by another node when it is not the entry's revision any more). Only a shortcut: without it, a write
    /// reads the entry first.
    revisions: Mutex<HashMap<u64, u64>>,
}

impl Pending {
    fn new(name: String, cap: usize) -> Pending {
        Pending {
            name,
            cap,
            queue: Mutex::new(Queue::default()),
            dropped: AtomicU64::new(0),
            reported: Mutex::new(Reported::default()),
            idle: tokio::sync::watch::Sender::new(true),
            revisions: Mutex::new(HashMap::new()),
        }
    }

    fn push(&self, seq: u64, op: Op, waiter: Option<tokio::sync::oneshot::Sender<()>>) {
        let dropped = {
            let mut queue = lock(&self.queue);
            let mut dropped = None;
            if let Some(waiter) = waiter {
                queue.waiters.entry(seq).or_default().push(waiter);
            }
            if queue.ops.insert(seq, Queued { op, attempts: 0 }).is_none() {
                queue.order.push_back(seq);
                if queue.ops.len() > self.cap
                    && let Some(oldest) = queue.order.pop_front()
                {
                    queue.ops.remove(&oldest);
                    // Those waiting for it are told it was dropped (their senders go), even while an older write
                    // of the message is in flight: that one is not what they wait for, and should it fail it is
                    // not put back.
                    queue.waiters.remove(&oldest);
                    if queue.in_flight.contains(&oldest) {
                        queue.abandoned.insert(oldest);
                    }
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

    /// The oldest waiting write of a message with none in flight, now in flight. A put whose deadline passed is
    /// dropped on the way (its notification went back without it).
    fn next(&self, now: Instant) -> Option<(u64, Queued)> {
        let mut queue = lock(&self.queue);
        loop {
            let at = queue
                .order
                .iter()
                .position(|seq| !queue.in_flight.contains(seq))?;
            let seq = queue.order.remove(at)?;
            let queued = queue.ops.remove(&seq)?;
            if queued.expired(now) {
                queue.waiters.remove(&seq);
                self.idle_if_done(&queue);
                continue;
            }
            queue.in_flight.insert(seq);
            return Some((seq, queued));
        }
    }

    /// The write of `seq` in flight ended; a failed or interrupted one waits again, first, unless a newer one is
    /// waiting, a newer one was dropped meanwhile, or it failed [`WRITE_ATTEMPTS`] times (then it is dropped: said in
    /// what is returned). Once nothing more waits for `seq`, those waiting for its writes are told (dropped when the
    /// last one was dropped).
    fn ended(&self, seq: u64, ended: Ended) -> Option<GaveUp> {
        let mut queue = lock(&self.queue);
        queue.in_flight.remove(&seq);
        let abandoned = queue.abandoned.remove(&seq);
        let mut gave_up = None;
        let again = match ended {
            Ended::Done => None,
            Ended::Failed(mut failed) => {
                failed.attempts += 1;
                Some(failed)
            }
            Ended::Interrupted(interrupted) => Some(interrupted),
        };
        if let Some(failed) = again
            && !abandoned
            && !queue.ops.contains_key(&seq)
        {
            if failed.attempts < WRITE_ATTEMPTS {
                queue.ops.insert(seq, failed);
                queue.order.push_front(seq);
            } else {
                gave_up = Some(GaveUp {
                    seq,
                    attempts: failed.attempts,
                });
            }
        }
        if !queue.ops.contains_key(&seq)
            && let Some(waiters) = queue.waiters.remove(&seq)
            && gave_up.is_none()
        {
            for waiter in waiters {
                let _ = waiter.send(());
            }
        }
        self.idle_if_done(&queue);
        gave_up
    }

    fn idle_if_done(&self, queue: &Queue) {
        if queue.ops.is_empty() && queue.in_flight.is_empty() {
            self.idle.send_replace(true);
        }
    }

    fn has_ready(&self) -> bool {
        let queue = lock(&self.queue);
        queue.order.iter().any(|seq| !queue.in_flight.contains(seq))
    }

    fn revision(&self, seq: u64) -> Option<u64> {
        lock(&self.revisions).get(&seq).copied()
    }

    /// Notes (or forgets) the revision of the entry of `seq`; bounded: past [`MAX_PENDING_WRITES`] entries, all are
    /// forgotten (the next writes read their entry first).
    fn note_revision(&self, seq: u64, revision: Option<u64>) {
        let mut revisions = lock(&self.revisions);
        match revision {
            Some(revision) => {
                if revisions.len() >= MAX_PENDING_WRITES && !revisions.contains_key(&seq) {
                    revisions.clear();
                }
                revisions.insert(seq, revision);
            }
            None => {
                revisions.remove(&seq);
            }
        }
    }
}

/// The handle of the bucket: reads, and writes that go out in the background. Cheap to clone.
#[derive(Clone)]
pub struct RetryBook {
    name: String,
    store: Arc<Mutex<Option<kv::Store>>>,
    /// True once the bucket is open.
    opened: tokio::sync::watch::Sender<bool>,
    pending: Arc<Pending>,
    wake: tokio::sync::mpsc::Sender<()>,
    /// When the last read failed.
    read_failed: Arc<Mutex<Option<Instant>>>,
    /// How long a read may take ([`READ_LIMIT`]), milliseconds.
    read_limit_ms: Arc<AtomicU64>,
    reported: Arc<Mutex<Reported>>,
}

impl RetryBook {
    /// Opens (creating when missing) the bucket of `stream` in the background, retried every second until NATS
    /// answers; the writer task ends once the handle is dropped and what waits went out. Needs a Tokio runtime.
    pub fn start(ctx: jetstream::Context, stream: &str, replicas: usize) -> RetryBook {
        let name = bucket_name(stream);
        let pending = Arc::new(Pending::new(name.clone(), MAX_PENDING_WRITES));
        let store = Arc::new(Mutex::new(None));
        let opened = tokio::sync::watch::Sender::new(false);
        let (wake, woken) = tokio::sync::mpsc::channel(1);
        let bucket = Bucket {
            ctx,
            name: name.clone(),
            replicas,
            max_age: Some(STATE_MAX_AGE),
            meanwhile: " (meanwhile the retries of notifications delivered again are counted from their delivery \
                        count)",
        };
        tokio::spawn(run(
            bucket,
            store.clone(),
            opened.clone(),
            pending.clone(),
            woken,
        ));
        RetryBook {
            name,
            store,
            opened,
            pending,
            wake,
            read_failed: Arc::new(Mutex::new(None)),
            read_limit_ms: Arc::new(AtomicU64::new(READ_LIMIT.as_millis() as u64)),
            reported: Arc::new(Mutex::new(Reported::default())),
        }
    }

    /// Lets a read take this long (tests on a loaded machine).
    #[cfg(test)]
    pub(crate) fn set_read_limit(&self, limit: Duration) {
        self.read_limit_ms
            .store(limit.as_millis() as u64, Ordering::Relaxed);
    }

    /// How long a read may take at most ([`READ_LIMIT`]).
    pub fn read_limit(&self) -> Duration {
        Duration::from_millis(self.read_limit_ms.load(Ordering::Relaxed))
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Resolves once the bucket is open (true), or `limit` passed first (false).
    pub fn ready(&self, limit: Duration) -> impl Future<Output = bool> + Send + 'static {
        let mut opened = self.opened.subscribe();
        async move {
            tokio::time::timeout(limit, opened.wait_for(|open| *open))
                .await
                .is_ok_and(|r| r.is_ok())
        }
    }

    /// Writes `state` for the message at `slot` (in the background), unless the bucket holds a newer one then
    /// (written during a later delivery, a delete marker of its final outcome, a newer format).
    pub fn put(&self, slot: Slot, state: RetryState) {
        self.push_put(slot, state, None, None);
    }

    /// [`RetryBook::put`], not sent once `deadline` passed, and what resolves once it went out or was not needed (a
    /// newer state is there); an error when it was dropped (its deadline passed, NATS refused it
    /// [`WRITE_ATTEMPTS`] times, [`MAX_PENDING_WRITES`] waited).
    pub fn put_confirmed(
        &self,
        slot: Slot,
        state: RetryState,
        deadline: Instant,
    ) -> tokio::sync::oneshot::Receiver<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.push_put(slot, state, Some(deadline), Some(tx));
        rx
    }

    fn push_put(
        &self,
        slot: Slot,
        state: RetryState,
        deadline: Option<Instant>,
        waiter: Option<tokio::sync::oneshot::Sender<()>>,
    ) {
        let op = Op::Put {
            state,
            published_ms: slot.published_ms,
            deadline,
        };
        self.pending.push(slot.seq, op, waiter);
        let _ = self.wake.try_send(());
    }

    /// Deletes the entry of the message at `seq` (in the background), leaving a small marker that expires with the
    /// bucket's age limit.
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

    /// Writes dropped since start: [`MAX_PENDING_WRITES`] waited already, or the write failed [`WRITE_ATTEMPTS`]
    /// times (its entry kept changing). Those whose deadline passed before they could go out are not counted.
    pub fn dropped_writes(&self) -> u64 {
        self.pending.dropped.load(Ordering::Relaxed)
    }

    /// The entry of the message at `seq`: `Ok(None)` when there is none. One in a format this build does not
    /// read is said (once a minute at most) and read as `ReadState(None)`.
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
        #[cfg(test)]
        if lock(&FAILING_READS).contains(&self.name) {
            return Err(ReadError::Failed {
                bucket: self.name.clone(),
                detail: "made to fail by a test".into(),
            });
        }
        let read_limit = self.read_limit();
        let started = tokio::time::Instant::now();
        let open = lock(&self.store).clone();
        let store = match open {
            Some(store) => store,
            // Right after a start the pulls begin before the bucket is open, and bring the notifications other
            // nodes gave back at their stop: the read waits for it, within its limit.
            None => {
                let opened = self.ready(read_limit).await;
                let open = lock(&self.store).clone();
                match open {
                    Some(store) if opened => store,
                    _ => {
                        *lock(&self.read_failed) = Some(Instant::now());
                        return Err(ReadError::NotOpen {
                            bucket: self.name.clone(),
                            waited_ms: read_limit.as_millis(),
                        });
                    }
                }
            }
        };
        let left = read_limit.saturating_sub(started.elapsed());
        let read = match tokio::time::timeout(left, store.entry(seq.to_string())).await {
            Ok(Ok(entry)) => Ok(entry
                .filter(|e| e.operation == kv::Operation::Put)
                .map(|e| {
                    let state = RetryState::decode(&e.value);
                    match state {
                        // The next write of this node expects this revision.
                        Some(_) => self.pending.note_revision(seq, Some(e.revision)),
                        None => self.report_unreadable(seq, &e.value),
                    }
                    ReadState(state)
                })),
            Ok(Err(e)) => Err(ReadError::Failed {
                bucket: self.name.clone(),
                detail: e.to_string(),
            }),
            Err(_) => Err(ReadError::TimedOut {
                bucket: self.name.clone(),
                limit_ms: read_limit.as_millis(),
            }),
        };
        *lock(&self.read_failed) = read.is_err().then(Instant::now);
        read
    }

    fn report_unreadable(&self, seq: u64, value: &[u8]) {
        let what = if RetryState::is_newer_format(value) {
            "in a newer format than this build reads (a newer herald wrote it); it is left as it is"
        } else {
            "not a retry state"
        };
        if lock(&self.reported).due("unreadable") {
            tracing::warn!(
                "key-value bucket {}: the entry of message {seq} is {what}: the notification's retries are \
                 counted from its delivery count",
                self.name
            );
        } else {
            tracing::debug!(
                "key-value bucket {}: message {seq}: entry {what}",
                self.name
            );
        }
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

    /// Says (once a minute at most) that notifications went back to the stream though the writes of their retry
    /// counts were dropped (their deadline passed before they could go out, they failed [`WRITE_ATTEMPTS`] times,
    /// [`MAX_PENDING_WRITES`] waited).
    pub fn report_unwritten(&self, what: &str) {
        if lock(&self.reported).due("unwritten") {
            tracing::warn!(
                "key-value bucket {}: {what} went back to the stream though the writes of their retry counts were \
                 dropped (not sent in time, or NATS kept refusing them): the nodes that pull them next may count \
                 one retry more",
                self.name
            );
        } else {
            tracing::debug!(
                "key-value bucket {}: {what}: retry counts dropped",
                self.name
            );
        }
    }

    /// Says (once a minute at most) that notifications went back to the stream before the writes of their retry
    /// counts were confirmed, within `waited`.
    pub fn report_unconfirmed(&self, what: &str, waited: Duration) {
        if lock(&self.reported).due("unconfirmed") {
            tracing::warn!(
                "key-value bucket {}: {what} went back to the stream before NATS confirmed the writes of their \
                 retry counts (waited {waited:?}): the nodes that pull them next may count one retry more",
                self.name
            );
        } else {
            tracing::debug!(
                "key-value bucket {}: {what}: retry counts not confirmed within {waited:?}",
                self.name
            );
        }
    }
}

/// Buckets whose reads fail, as if NATS did not answer (tests).
#[cfg(test)]
pub(crate) static FAILING_READS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Rounds of a put that finds another revision than it expected (another node wrote meanwhile) before it counts as
/// one failed attempt.
const PUT_ROUNDS: u32 = 3;

/// Why a write NATS answered was not done.
#[derive(Debug, Clone, PartialEq, Eq)]
enum WriteError {
    /// A failure of this write alone (its entry kept changing while it was written): counts as one of its
    /// [`WRITE_ATTEMPTS`], and does not pause the other writes.
    Own(String),
    /// A failure of the bucket, not of this write (NATS unreachable or not answering, the bucket's leader changing,
    /// the bucket gone): the writes pause, the bucket is opened again, and this one is tried again without counting.
    Bucket(String),
}

impl std::fmt::Display for WriteError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WriteError::Own(e) | WriteError::Bucket(e) => f.write_str(e),
        }
    }
}

/// One write. A put expects the entry's revision (as this node last read or wrote it; none known: no entry, which
/// is the usual case for a message whose entry this node never read): when the entry changed meanwhile, it is read,
/// and the put goes on only over an older state ([`newer_there`]). A delete purges the key through the bucket (a
/// marker stays, as small as can be, until the bucket's age limit).
async fn write(
    store: kv::Store,
    seq: u64,
    queued: Queued,
    revision: Option<u64>,
) -> (u64, Queued, Result<Outcome, WriteError>) {
    let key = seq.to_string();
    let result = match queued.op {
        Op::Put {
            state,
            published_ms,
            deadline,
        } => put(&store, &key, state, published_ms, deadline, revision).await,
        Op::Delete => store
            .purge(&key)
            .await
            .map(|()| Outcome::Deleted)
            .map_err(|e| match e.kind() {
                kv::PurgeErrorKind::InvalidKey => WriteError::Own(e.to_string()),
                _ => WriteError::Bucket(e.to_string()),
            }),
    };
    (seq, queued, result)
}

async fn put(
    store: &kv::Store,
    key: &str,
    state: RetryState,
    published_ms: i64,
    deadline: Option<Instant>,
    revision: Option<u64>,
) -> Result<Outcome, WriteError> {
    let value = bytes::Bytes::from(state.encode());
    // No revision known: no entry is expected (revision 0 creates it); when there is one, NATS says so, and it is
    // read below.
    let mut expected = revision.unwrap_or(0);
    for _ in 0..PUT_ROUNDS {
        match store.update(key, value.clone(), expected).await {
            Ok(revision) => return Ok(Outcome::Put(revision)),
            Err(e) => match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => {}
                kv::UpdateErrorKind::InvalidKey => return Err(WriteError::Own(e.to_string())),
                _ => return Err(WriteError::Bucket(e.to_string())),
            },
        }
        // The entry changed since (or was there unknown): what is there now decides.
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(Outcome::Expired);
        }
        match entry_from_leader(store, key).await? {
            None => expected = 0,
            Some(entry) => {
                if let Some(newer) = newer_there(&state, published_ms, &entry) {
                    return Ok(Outcome::Superseded(newer));
                }
                expected = entry.revision;
            }
        }
    }
    Err(WriteError::Own(format!(
        "the entry changed {PUT_ROUNDS} times while it was being written"
    )))
}

/// The entry of `key` as the bucket's leader has it. A direct get (what [`kv::Store::entry`] does when the bucket
/// allows it) may be answered by a replica that has not caught up yet, and a put expecting the revision it says would
/// be refused again.
async fn entry_from_leader(store: &kv::Store, key: &str) -> Result<Option<kv::Entry>, WriteError> {
    let subject = format!("{}{key}", store.prefix);
    match store.stream.get_last_raw_message_by_subject(&subject).await {
        Ok(message) => Ok(Some(kv::Entry {
            bucket: store.name.clone(),
            key: key.to_owned(),
            operation: operation_of(&message.headers),
            value: message.payload,
            revision: message.sequence,
            delta: 0,
            created: message.time,
            seen_current: false,
        })),
        Err(e) => match e.kind() {
            jetstream::stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            jetstream::stream::LastRawMessageErrorKind::InvalidSubject => {
                Err(WriteError::Own(e.to_string()))
            }
            _ => Err(WriteError::Bucket(e.to_string())),
        },
    }
}

/// What a message of the bucket's stream is, as the key-value API tells it: a delete or purge by its
/// `KV-Operation` header, a marker the server left by its `Nats-Marker-Reason`; anything else is a value.
fn operation_of(headers: &async_nats::HeaderMap) -> kv::Operation {
    if let Some(op) = headers.get("KV-Operation") {
        return match op.as_str() {
            "DEL" => kv::Operation::Delete,
            "PURGE" => kv::Operation::Purge,
            _ => kv::Operation::Put,
        };
    }
    match headers.get("Nats-Marker-Reason").map(|r| r.as_str()) {
        Some("MaxAge" | "Purge") => kv::Operation::Purge,
        Some("Remove") => kv::Operation::Delete,
        _ => kv::Operation::Put,
    }
}

async fn run(
    bucket: Bucket,
    shared: Arc<Mutex<Option<kv::Store>>>,
    opened: tokio::sync::watch::Sender<bool>,
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
    opened.send_replace(true);
    let mut in_flight = FuturesUnordered::new();
    let mut delay = Duration::from_millis(100);
    let mut handles_gone = false;
    loop {
        while in_flight.len() < WRITES_IN_FLIGHT
            && let Some((seq, queued)) = pending.next(Instant::now())
        {
            in_flight.push(write(store.clone(), seq, queued, pending.revision(seq)));
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
        let Some((seq, queued, result)) = next else {
            continue;
        };
        match result {
            Ok(outcome) => {
                done(&bucket.name, &pending, seq, outcome);
                if reported.clear() {
                    tracing::info!("key-value bucket {}: writes go through again", bucket.name);
                }
                delay = Duration::from_millis(100);
            }
            // This write's own trouble: tried again (counted), the others go on.
            Err(e @ WriteError::Own(_)) => {
                failed(&bucket.name, &pending, seq, queued, &e, &mut reported);
            }
            Err(e @ WriteError::Bucket(_)) => {
                failed(&bucket.name, &pending, seq, queued, &e, &mut reported);
                // The writes in flight end first; then a pause, and the bucket opened again (it may be gone).
                while let Some((seq, queued, result)) = in_flight.next().await {
                    match result {
                        Ok(outcome) => done(&bucket.name, &pending, seq, outcome),
                        Err(e) => failed(&bucket.name, &pending, seq, queued, &e, &mut reported),
                    }
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

/// A write NATS answered.
fn done(name: &str, pending: &Pending, seq: u64, outcome: Outcome) {
    match outcome {
        Outcome::Put(revision) => pending.note_revision(seq, Some(revision)),
        Outcome::Deleted => pending.note_revision(seq, None),
        Outcome::Superseded(why) => {
            pending.note_revision(seq, None);
            match why {
                Superseded::NewerFormat => {
                    if lock(&pending.reported).due("newer") {
                        tracing::warn!(
                            "key-value bucket {name}: the entry of message {seq} is in a newer format than this \
                             build writes (a newer herald wrote it); left as it is, this node's retry count for it \
                             not written"
                        );
                    }
                }
                Superseded::LaterDelivery(delivered) => tracing::debug!(
                    "key-value bucket {name}: message {seq}: a state of its delivery {delivered} is there \
                     already; an older one is not written over it"
                ),
                Superseded::Finished => tracing::debug!(
                    "key-value bucket {name}: message {seq}: its notification was finished; its entry is not \
                     written again"
                ),
            }
        }
        Outcome::Expired => tracing::debug!(
            "key-value bucket {name}: message {seq}: went back to the stream before its retry count was written; \
             not written"
        ),
    }
    pending.ended(seq, Ended::Done);
}

/// A write that failed: tried again, up to [`WRITE_ATTEMPTS`] in all when it failed for a reason of its own, without
/// counting when the bucket failed.
fn failed(
    name: &str,
    pending: &Pending,
    seq: u64,
    queued: Queued,
    e: &WriteError,
    reported: &mut Reported,
) {
    // The revision it expected may be wrong: the next attempt reads the entry first.
    pending.note_revision(seq, None);
    let ended = match e {
        WriteError::Own(_) => Ended::Failed(queued),
        WriteError::Bucket(_) => Ended::Interrupted(queued),
    };
    if let Some(gave_up) = pending.ended(seq, ended) {
        let total = pending.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if lock(&pending.reported).due("gave up") {
            tracing::warn!(
                "key-value bucket {name}: writing the retries of message {} failed {} times ({e}); dropped \
                 ({total} dropped so far): its next node counts its retries from an older state or from its \
                 delivery count",
                gave_up.seq,
                gave_up.attempts
            );
        }
    } else if let WriteError::Own(_) = e {
        tracing::debug!("key-value bucket {name}: message {seq}: {e}; tried again");
    } else if reported.due("write") {
        tracing::warn!(
            "key-value bucket {name}: writing the retries of message {seq} failed ({e}); opening the bucket again \
             (creating it when it is missing) and retrying"
        );
    } else {
        tracing::debug!("key-value bucket {name}: message {seq}: {e}");
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

    fn put(retries: u32, delivered: u64) -> Op {
        Op::Put {
            state: state(retries, delivered, false),
            published_ms: 0,
            deadline: None,
        }
    }

    fn queued(op: Op) -> Queued {
        Queued { op, attempts: 0 }
    }

    #[test]
    fn waiting_writes_keep_the_newest_per_message_within_bounds_one_in_flight_per_message() {
        let pending = Pending::new("bounded".into(), 3);
        let now = Instant::now();
        pending.push(1, put(1, 1), None);
        pending.push(2, put(1, 1), None);
        let (tx, mut told) = tokio::sync::oneshot::channel();
        pending.push(1, put(2, 1), Some(tx));
        assert!(!*pending.idle.borrow());
        assert_eq!(pending.next(now), Some((1, queued(put(2, 1)))));
        // 1 in flight: its next write waits for it.
        pending.push(1, Op::Delete, None);
        assert_eq!(pending.next(now), Some((2, queued(put(1, 1)))));
        assert_eq!(pending.next(now), None);
        // A failed write does not come back over a newer one.
        pending.ended(1, Ended::Failed(queued(put(2, 1))));
        assert!(
            told.try_recv().is_err(),
            "told while a write of its message waits"
        );
        assert_eq!(pending.next(now), Some((1, queued(Op::Delete))));
        pending.ended(2, Ended::Failed(queued(put(1, 1))));
        assert_eq!(
            pending.next(now),
            Some((
                2,
                Queued {
                    op: put(1, 1),
                    attempts: 1
                }
            ))
        );
        pending.ended(1, Ended::Done);
        assert_eq!(told.try_recv(), Ok(()));
        assert!(!*pending.idle.borrow());
        pending.ended(2, Ended::Done);
        assert!(*pending.idle.borrow());
        // Bounded: the oldest dropped.
        for seq in 10..15 {
            pending.push(seq, Op::Delete, None);
        }
        assert_eq!(pending.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(pending.next(now), Some((12, queued(Op::Delete))));
    }

    /// A write NATS keeps refusing is dropped after [`WRITE_ATTEMPTS`], and whoever waits for it is told it was
    /// dropped: it does not hold up the others for ever.
    #[test]
    fn a_write_that_keeps_failing_is_dropped_after_its_attempts() {
        let pending = Pending::new("failing".into(), 10);
        let now = Instant::now();
        let (tx, mut told) = tokio::sync::oneshot::channel();
        pending.push(1, Op::Delete, Some(tx));
        for attempt in 1..WRITE_ATTEMPTS {
            let (seq, q) = pending.next(now).expect("tried again");
            assert_eq!((seq, q.attempts), (1, attempt - 1));
            assert_eq!(pending.ended(1, Ended::Failed(q)), None);
        }
        let (_, q) = pending.next(now).expect("its last attempt");
        assert_eq!(
            pending.ended(1, Ended::Failed(q)),
            Some(GaveUp {
                seq: 1,
                attempts: WRITE_ATTEMPTS
            })
        );
        assert_eq!(pending.next(now), None);
        assert_eq!(
            told.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        );
        assert!(*pending.idle.borrow());
    }

    /// A write NATS did not answer (the bucket unreachable, its leader changing) is no attempt of its own: however
    /// long the outage, it is tried again, not dropped; one whose entry kept changing is counted.
    #[test]
    fn a_write_the_bucket_did_not_answer_is_kept_whatever_the_outage() {
        let pending = Pending::new("outage".into(), 10);
        let now = Instant::now();
        let (tx, mut told) = tokio::sync::oneshot::channel();
        pending.push(1, Op::Delete, Some(tx));
        for _ in 0..WRITE_ATTEMPTS * 4 {
            let (seq, q) = pending.next(now).expect("kept");
            assert_eq!((seq, q.attempts), (1, 0));
            assert_eq!(pending.ended(1, Ended::Interrupted(q)), None);
        }
        let (_, q) = pending.next(now).expect("kept");
        assert_eq!(pending.ended(1, Ended::Failed(q)), None);
        let (_, q) = pending.next(now).expect("tried again");
        assert_eq!(q.attempts, 1, "its own failure counted");
        pending.ended(1, Ended::Done);
        assert_eq!(told.try_recv(), Ok(()));
        assert!(*pending.idle.borrow());
    }

    /// A waiting write dropped (too many waited) while an older write of its message is in flight: those waiting
    /// for it are told it was dropped at once, and the older write, should it fail, is not put back in its place.
    #[test]
    fn a_dropped_write_is_not_replaced_by_an_older_one_of_its_message() {
        let pending = Pending::new("dropped".into(), 1);
        let now = Instant::now();
        let (tx_old, mut told_old) = tokio::sync::oneshot::channel();
        pending.push(1, put(1, 1), Some(tx_old));
        let (seq, older) = pending.next(now).expect("in flight");
        assert_eq!(seq, 1);
        let (tx_new, mut told_new) = tokio::sync::oneshot::channel();
        pending.push(1, put(2, 1), Some(tx_new));
        // One more message: the newer write of 1 is the oldest waiting, and goes.
        pending.push(2, Op::Delete, None);
        assert_eq!(pending.dropped.load(Ordering::Relaxed), 1);
        let closed = Err(tokio::sync::oneshot::error::TryRecvError::Closed);
        assert_eq!(told_new.try_recv(), closed, "told at once");
        assert_eq!(told_old.try_recv(), closed, "told at once");
        // The older write fails: not put back.
        assert_eq!(pending.ended(1, Ended::Interrupted(older)), None);
        assert_eq!(pending.next(now), Some((2, queued(Op::Delete))));
        assert_eq!(pending.next(now), None);
        pending.ended(2, Ended::Done);
        assert!(*pending.idle.borrow());
        // The mark went with it: a later write of 1 that fails is tried again.
        pending.push(1, put(3, 1), None);
        let (_, q) = pending.next(now).expect("sent");
        pending.ended(1, Ended::Interrupted(q));
        assert_eq!(pending.next(now), Some((1, queued(put(3, 1)))));
    }

    /// A delete marker is the final outcome of a message only when written a clock margin after it was published:
    /// a marker left from a stream made again, by a server whose clock is ahead, does not refuse the new message's
    /// writes.
    #[test]
    fn a_marker_is_a_final_outcome_only_past_the_clock_margin() {
        let published = 1_800_000_000_000i64;
        let margin = i128::try_from(CLOCK_MARGIN.as_millis()).unwrap();
        assert!(finished_by(i128::from(published) + margin, published));
        assert!(finished_by(i128::from(published) + 3_600_000, published));
        assert!(
            !finished_by(i128::from(published) + 30_000, published),
            "skew"
        );
        assert!(!finished_by(i128::from(published) - 1, published));
    }

    /// A read made right after the start, before the bucket is open, waits for it (within its limit) rather than
    /// failing: the notifications other nodes gave back at their stop arrive just then. (One thread: the bucket is
    /// opened only once the test awaits, after the read began.)
    #[tokio::test(flavor = "current_thread")]
    async fn a_read_before_the_bucket_is_open_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = crate::jetstream::tests::nats(dir.path()) else {
            return;
        };
        let client = async_nats::connect(url).await.unwrap();
        let book = RetryBook::start(jetstream::new(client), "early", 1);
        book.set_read_limit(Duration::from_secs(20));
        assert!(lock(&book.store).is_none(), "not open yet");
        assert_eq!(book.read(1).await, Ok(None));
    }

    /// A put whose notification went back to the stream without waiting for it any longer (its deadline passed) is
    /// not sent: a late write could land after the node that pulled the notification next wrote a newer state.
    #[test]
    fn a_put_past_its_deadline_is_not_sent() {
        let pending = Pending::new("late".into(), 10);
        let now = Instant::now();
        let (tx, mut told) = tokio::sync::oneshot::channel();
        let late = Op::Put {
            state: state(1, 1, true),
            published_ms: 0,
            deadline: Some(now),
        };
        pending.push(1, late, Some(tx));
        pending.push(2, Op::Delete, None);
        assert_eq!(pending.next(now), Some((2, queued(Op::Delete))));
        assert_eq!(pending.next(now), None);
        assert_eq!(
            told.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Closed)
        );
        pending.ended(2, Ended::Done);
        assert!(*pending.idle.borrow());
    }

    async fn entry(store: &kv::Store, seq: u64) -> Option<kv::Entry> {
        store.entry(seq.to_string()).await.unwrap()
    }

    /// Two nodes write the state of one message: an older state (an earlier delivery) never replaces a newer one,
    /// a put that lands after the final outcome deleted the entry does not bring it back, an entry in a newer format
    /// is left as it is; a marker older than the message (a stream made again) is written over.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_state_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = crate::jetstream::tests::nats(dir.path()) else {
            return;
        };
        let client = async_nats::connect(url).await.unwrap();
        let ctx = jetstream::new(client);
        let (a, b) = (
            RetryBook::start(ctx.clone(), "cas", 1),
            RetryBook::start(ctx.clone(), "cas", 1),
        );
        let within = Duration::from_secs(20);
        assert!(a.ready(within).await && b.ready(within).await);
        let store = ctx.get_key_value(bucket_name("cas")).await.unwrap();
        let now_ms = i64::try_from(crate::nodes::unix_ms()).unwrap();
        // Published well before the marker below, beyond the clock margin.
        let slot = Slot {
            seq: 1,
            published_ms: now_ms - 600_000,
        };
        let read = async |seq| {
            entry(&store, seq)
                .await
                .filter(|e| e.operation == kv::Operation::Put)
                .and_then(|e| RetryState::decode(&e.value))
        };

        a.put(slot, state(2, 1, false));
        assert!(a.written(within).await);
        assert_eq!(read(1).await, Some(state(2, 1, false)));
        // The message went to b (delivery 2), which writes its state.
        b.put(slot, state(3, 2, false));
        assert!(b.written(within).await);
        assert_eq!(read(1).await, Some(state(3, 2, false)));
        // a's late write, of delivery 1 (its revision is not the entry's any more), is not written over it.
        a.put(slot, state(5, 1, true));
        assert!(a.written(within).await);
        assert_eq!(read(1).await, Some(state(3, 2, false)));
        // Finished on b: the entry goes, and a put landing after does not bring it back.
        b.delete(1);
        assert!(b.written(within).await);
        a.put(slot, state(6, 2, true));
        assert!(a.written(within).await);
        assert_eq!(read(1).await, None);
        assert_eq!(
            entry(&store, 1).await.map(|e| e.operation),
            Some(kv::Operation::Purge)
        );
        // The stream made again: a message published after the marker at its sequence is written.
        let again = Slot {
            seq: 1,
            published_ms: now_ms + 60_000,
        };
        let other = RetryState {
            id: 9,
            ..state(1, 1, false)
        };
        b.put(again, other);
        assert!(b.written(within).await);
        assert_eq!(read(1).await, Some(other));

        // An entry in a newer format is read as nothing this build knows, and not written over.
        let mut newer = state(4, 3, false).encode();
        newer[0] = STATE_VERSION + 1;
        store.put("2", newer.clone().into()).await.unwrap();
        assert_eq!(a.read(2).await, Ok(Some(ReadState(None))));
        let slot = Slot { seq: 2, ..slot };
        assert!(
            tokio::time::timeout(
                within,
                a.put_confirmed(slot, state(1, 4, true), Instant::now() + within)
            )
            .await
            .unwrap()
            .is_ok(),
            "not needed: said as done"
        );
        assert_eq!(
            entry(&store, 2).await.map(|e| e.value.to_vec()),
            Some(newer)
        );
    }
}
