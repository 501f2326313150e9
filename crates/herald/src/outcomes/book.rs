//! The status book: the state of every notification herald holds, and its final outcome for `outcome_retention`.
//!
//! Notifications still in the queue are kept in memory (sharded maps in id order, [`super::slots`], updated by the
//! [`OutcomeListener`] calls of the delivery path); a final outcome is handed to a writer thread that stores it in
//! the [`OutcomeStore`] (in the spool directory, so it survives a restart) and only then leaves memory, so a lookup
//! never misses it in between. A batch the store refuses (disk full, I/O error) stays in memory and is tried again
//! until it is stored ([`super::StoreRetry`]); the spool keeps its notifications meanwhile. The hand-over never
//! blocks delivery: past [`WRITE_BACKLOG`] waiting outcomes (a writer that falls behind, or waits for a refusing
//! store), new ones are dropped with a counter and a log line. A graceful stop waits for the writer and syncs the
//! store ([`StatusBook::flush`]). A background task prunes what is older than the retention, or the oldest beyond
//! `outcome_max_entries`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_apns::token_hex::DeviceToken;
use herald_spool::{Lookup, OutcomeKey, OutcomeStore, SpoolError};
use serde::{Deserialize, Serialize};

use super::in_stream::{GRACE, InStream};
use super::slots::{Deal, Slots, shard_of};
use super::{OutcomeListener, codec, key_of};
use crate::logs::{OutcomeKind, OutcomeRecord};
use crate::queue::message::{MessageId, Notification, unix_now};

/// Default `outcome_retention`.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 3600);
/// Default `outcome_max_entries`.
pub const DEFAULT_MAX_ENTRIES: u64 = 10_000_000;
/// Final outcomes waiting for the writer thread before new ones are dropped.
pub const WRITE_BACKLOG: usize = 100_000;
/// How ids are dealt to the book's shards: blocks of 64 neighbours (see [`Deal`]).
const DEAL: Deal = Deal {
    shards: 32,
    block: 64,
};

/// A notification's state as the status API answers it (JSON: docs/openapi.yaml `NotificationStatus`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub id: String,
    /// `queued`, `in_flight`, `delivered` or `failed`.
    pub state: String,
    pub domain: String,
    pub token: String,
    /// When herald accepted it, Unix seconds.
    pub accepted_at: u64,
    /// Attempts that ended in a transient failure so far.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reason: Option<String>,
    /// When the next attempt is due (queued after a transient failure), Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<u64>,
    /// When it was delivered or failed for good, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// APNs' `apns-id` (delivered) or the one herald sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apns_id: Option<String>,
    /// Why it failed for good: APNs' reason or herald's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// APNs' status for a failure (HTTP status, or the binary protocol's status byte).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// APNs said the device token is no longer valid (BadDeviceToken, Unregistered, binary status 8).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub invalid_token: bool,
    /// APNs' `apns-unique-id` of a delivery: given in the development (sandbox) environment only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apns_unique_id: Option<String>,
    /// With an `Unregistered` (410) failure: the time APNs says the token stopped being valid, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unregistered_at_ms: Option<u64>,
}

impl Status {
    pub fn is_final(&self) -> bool {
        self.state == "delivered" || self.state == "failed"
    }
}

/// A broadcast's state as the status API answers it (JSON: docs/openapi.yaml `BroadcastStatus`): the fields a
/// notification's state has, but the device token, with `kind` and `channel_id`. A final one is also what the
/// outcome store keeps (as this JSON) under the broadcast's [`broadcast_key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastStatus {
    /// The broadcast's id (its `apns-request-id`), as `POST /api/v1/broadcast` answered it.
    pub id: String,
    /// Always [`BroadcastStatus::KIND`]: what tells it from a notification's state.
    pub kind: String,
    /// `queued`, `in_flight`, `delivered` or `failed`.
    pub state: String,
    pub domain: String,
    pub channel_id: String,
    /// When herald accepted it, Unix seconds.
    pub accepted_at: u64,
    /// Attempts that ended in a transient failure so far.
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reason: Option<String>,
    /// When the next attempt is due (queued after a transient failure), Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<u64>,
    /// When it was delivered or failed for good, Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    /// The `apns-request-id` APNs answered for a delivery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apns_id: Option<String>,
    /// Why it failed for good: APNs' reason or herald's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// APNs' HTTP status for a failure it answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

impl BroadcastStatus {
    /// The `kind` of every broadcast's state.
    pub const KIND: &str = "broadcast";
}

/// The run (first 8 bytes) of every broadcast's outcome key. No notification's key has it: theirs end in three zero
/// bytes ([`super::key_of`]).
const BROADCAST_RUN: [u8; 8] = *b"broadcst";

/// The value of a broadcast id: text in a UUID's 36-character form (either case, as `apns_id` is taken), else
/// `None`.
pub fn broadcast_id(text: &str) -> Option<u128> {
    herald_apns::push::validate_apns_id(text).ok()?;
    uuid::Uuid::try_parse(text).ok().map(|u| u.as_u128())
}

/// The outcome store key of broadcast `id` ([`broadcast_id`]): [`BROADCAST_RUN`], then the id's 128 bits folded
/// into 64 (a fixed function: stored keys must be found again by later versions). Two ids can share a key; a
/// lookup checks the id the stored outcome names.
pub fn broadcast_key(id: u128) -> OutcomeKey {
    let (high, low) = ((id >> 64) as u64, id as u64);
    // splitmix64's finalizer on the high half: ids that differ in one half only never share a key.
    let mut z = high.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&BROADCAST_RUN);
    key[8..].copy_from_slice(&(z ^ low).to_be_bytes());
    key
}

/// Where a notification is, as the book keeps it in memory.
#[derive(Debug, Clone)]
enum Phase {
    Queued {
        next_attempt_at: Option<u64>,
    },
    InFlight,
    /// Final: its stored form ([`codec`]), encoded on the delivery path while the entry is in cache, kept until
    /// the writer has stored it (the writer gets the same bytes and never reads the entry).
    Final(Arc<[u8]>),
}

/// What the book keeps per notification; the id is the entry's key ([`super::id_of`]).
#[derive(Debug, Clone)]
struct Entry {
    domain: Arc<str>,
    token: DeviceToken,
    accepted_at: u64,
    attempts: u32,
    last_reason: Option<Arc<str>>,
    phase: Phase,
}

impl Entry {
    /// A notification queued after `attempts` failed attempts, the last for `last_reason`.
    fn queued(n: &Notification, attempts: u32, last_reason: Option<Arc<str>>) -> Entry {
        Entry {
            domain: n.domain.clone(),
            token: n.push.token.clone(),
            accepted_at: n.received_at,
            attempts,
            last_reason,
            phase: Phase::Queued {
                next_attempt_at: None,
            },
        }
    }

    fn status(&self, key: &OutcomeKey) -> Result<Status, codec::DecodeError> {
        let (state, next) = match &self.phase {
            Phase::Queued { next_attempt_at } => ("queued", *next_attempt_at),
            Phase::InFlight => ("in_flight", None),
            Phase::Final(record) => return codec::decode(record),
        };
        Ok(Status {
            id: super::id_of(key).to_string(),
            state: state.to_owned(),
            domain: self.domain.to_string(),
            token: self.token.to_hex(),
            accepted_at: self.accepted_at,
            attempts: self.attempts,
            last_reason: self.last_reason.as_deref().map(str::to_owned),
            next_attempt_at: next,
            finished_at: None,
            apns_id: None,
            reason: None,
            status: None,
            invalid_token: false,
            apns_unique_id: None,
            unregistered_at_ms: None,
        })
    }

    /// The stored form of this entry finished as `r` says (delivered or failed for good).
    fn final_record(&self, r: &OutcomeRecord<'_>) -> Arc<[u8]> {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(256));
        }
        let delivered = r.kind == OutcomeKind::Delivered;
        let id = r.notification.id.text();
        let fields = codec::Fields {
            id: id.as_str(),
            domain: &self.domain,
            token: self.token.as_bytes(),
            accepted_at: self.accepted_at,
            attempts: r.retries,
            last_reason: self.last_reason.as_deref(),
            delivered,
            invalid_token: !delivered && is_invalid_token(r.status, r.error),
            finished_at: r.at,
            status: if delivered { None } else { r.status },
            unregistered_at_ms: r.apns_timestamp_ms,
            apns_id: r.transaction_id,
            apns_unique_id: r.apns_unique_id,
            reason: (!delivered).then_some(r.error),
        };
        SCRATCH.with(|scratch| {
            let mut out = scratch.borrow_mut();
            out.clear();
            codec::encode(&fields, &mut out);
            Arc::from(out.as_slice())
        })
    }
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    Status(Box<Status>),
    /// On the JetStream spool: this node put the notification in the stream (accepted it, or gave it back for a
    /// retry) and no queue of its own holds it ([`super::in_stream`]). The state is `queued` as far as this node
    /// knows; another node may have pulled it since, so a lookup asks the others too.
    InStream(Box<Status>),
    /// Finished longer ago than the retention (or pruned beyond the bound).
    Expired,
    Unknown,
}

/// Why a lookup failed.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("reading the outcome store: {0}")]
    Store(#[from] SpoolError),
    #[error("a stored outcome cannot be read: {0}")]
    Corrupt(#[from] codec::DecodeError),
    #[error("a stored broadcast outcome cannot be read: {0}")]
    CorruptBroadcast(String),
}

/// Figures for `/metrics` and the console.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BookStats {
    /// Notifications followed in memory (queued, in flight, or final waiting for the store).
    pub tracked: u64,
    /// Final outcomes in the store.
    pub stored: u64,
    /// Final outcomes dropped because the writer fell [`WRITE_BACKLOG`] behind (a store that refuses writes makes
    /// it fall behind: the writer keeps trying its batch meanwhile).
    pub dropped: u64,
    /// Outcomes pruned after the retention or beyond the bound.
    pub pruned: u64,
}

/// The status book (see the module documentation).
pub struct StatusBook {
    /// By the id's counter, in blocks ([`DEAL`]); each shard keeps this run's ids in counter order ([`Slots`]).
    shards: Vec<Mutex<Slots<Entry>>>,
    store: Arc<OutcomeStore>,
    writer: SyncSender<Stored>,
    /// Held while a final outcome is handed to the writer and counted, so that the channel's order is the
    /// count's order: `written` reaching a value of `submitted` then means every outcome counted by it is stored
    /// ([`super::OutcomeWriter`]).
    handing: Mutex<()>,
    /// Final outcomes handed to the writer, and those it has stored: see [`StatusBook::flush`].
    submitted: AtomicU64,
    written: AtomicU64,
    /// The writer thread could not start or ended while the book exists (see [`super::OutcomeWriter`]).
    writer_gone: std::sync::atomic::AtomicBool,
    dropped: AtomicU64,
    pruned: Arc<AtomicU64>,
    retention: Duration,
    /// By shard, the notifications this node put in the JetStream stream that no queue of its own holds
    /// ([`super::in_stream`]); kept only once [`StatusBook::follow_the_stream`] was called.
    in_stream: Vec<Mutex<InStream<Entry>>>,
    on_stream: AtomicBool,
    /// The broadcaster sharing the store, looked at first for a broadcast id ([`StatusBook::attach_broadcasts`]).
    broadcasts: std::sync::OnceLock<std::sync::Weak<crate::broadcasts::Broadcaster>>,
}

impl StatusBook {
    /// A book over `store`, with its writer thread and (inside a tokio runtime) its pruning task.
    pub fn new(store: Arc<OutcomeStore>, retention: Duration, max_entries: u64) -> Arc<StatusBook> {
        let (tx, rx) = std::sync::mpsc::sync_channel(WRITE_BACKLOG);
        let book = Arc::new(StatusBook {
            shards: (0..DEAL.shards)
                .map(|_| Mutex::new(Slots::new(DEAL)))
                .collect(),
            store: store.clone(),
            writer: tx,
            handing: Mutex::new(()),
            submitted: AtomicU64::new(0),
            written: AtomicU64::new(0),
            writer_gone: std::sync::atomic::AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            pruned: Arc::new(AtomicU64::new(0)),
            retention,
            in_stream: (0..DEAL.shards)
                .map(|_| Mutex::new(InStream::new(DEAL.shards as usize)))
                .collect(),
            on_stream: AtomicBool::new(false),
            broadcasts: std::sync::OnceLock::new(),
        });
        let weak = Arc::downgrade(&book);
        let spawned = std::thread::Builder::new()
            .name("herald-outcomes".into())
            .spawn(move || write_loop(rx, weak));
        if let Err(e) = spawned {
            tracing::error!("cannot start the outcome writer thread: {e}");
            book.writer_gone.store(true, Ordering::Release);
        }
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(prune_loop(
                Arc::downgrade(&store),
                book.pruned.clone(),
                retention,
                max_entries,
            ));
        }
        book
    }

    pub fn store(&self) -> &Arc<OutcomeStore> {
        &self.store
    }

    /// Waits (at most `within`) until every final outcome handed to the writer so far is stored: at a graceful
    /// stop, so that the outcomes of the last deliveries are still there after the restart. False when the time ran
    /// out first.
    /// The store is synced then, stored or not (outcome writes are buffered: durable across a crash of the process,
    /// and across a power loss once synced).
    pub async fn flush(&self, within: Duration) -> bool {
        let target = self.submitted.load(Ordering::Acquire);
        let started = std::time::Instant::now();
        let reached = super::reached(&self.written, target, within).await;
        super::sync_store(&self.store, within.saturating_sub(started.elapsed())).await;
        reached
    }

    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// On the JetStream spool: from now on the book remembers the notifications this node puts in the stream
    /// (accepted here, given back for a retry) until a queue of this node holds them ([`Found::InStream`]).
    pub fn follow_the_stream(&self) {
        self.on_stream.store(true, Ordering::Relaxed);
    }

    fn in_stream_shard(&self, key: &OutcomeKey) -> &Mutex<InStream<Entry>> {
        &self.in_stream[shard_of(key, DEAL) as usize]
    }

    /// When what is remembered of a notification due to be pulled at `due` (Unix seconds) stops being answered:
    /// [`GRACE`] after that, and never later than `outcome_retention` from `now`.
    fn in_stream_until(&self, now: u64, due: u64) -> u64 {
        due.max(now)
            .saturating_add(GRACE.as_secs())
            .min(now.saturating_add(self.retention.as_secs()))
    }

    fn shard(&self, key: &OutcomeKey) -> &Mutex<Slots<Entry>> {
        &self.shards[shard_of(key, DEAL) as usize]
    }

    fn with_entry(&self, id: MessageId, f: impl FnOnce(&mut Entry)) {
        let key = key_of(id);
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = shard.get_mut(&key) {
            f(e);
        }
    }

    /// The state of the notification with store key `key`.
    pub fn lookup(&self, key: &OutcomeKey) -> Result<Found, LookupError> {
        if let Some(e) = self
            .shard(key)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
        {
            return Ok(Found::Status(Box::new(e.status(key)?)));
        }
        let stored = match self.store.lookup(key)? {
            Lookup::Found(bytes) => return Ok(Found::Status(Box::new(codec::decode(&bytes)?))),
            Lookup::Expired => Found::Expired,
            Lookup::Unknown => Found::Unknown,
        };
        if self.on_stream.load(Ordering::Relaxed)
            && let Some(e) = self
                .in_stream_shard(key)
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(key, unix_now())
        {
            return Ok(Found::InStream(Box::new(e.status(key)?)));
        }
        Ok(stored)
    }

    /// Gives broadcast lookups the broadcaster that shares this book's store: a broadcast it holds (queued, in
    /// flight, or finished with its outcome not yet stored) is found there. Kept weakly; the first one given stays.
    pub fn attach_broadcasts(&self, broadcaster: &Arc<crate::broadcasts::Broadcaster>) {
        let _ = self.broadcasts.set(Arc::downgrade(broadcaster));
    }

    /// The state of broadcast `id` ([`broadcast_id`]): while its broadcaster holds it, or holds its final outcome
    /// until the store has it, from there ([`StatusBook::attach_broadcasts`]); then its outcome as stored. `None`
    /// for an id no broadcast has here: never accepted by this herald (on the JetStream spool, by this node), or
    /// finished longer than `outcome_retention` ago; always `None` with `outcome_retention = 0` (lookups are off).
    /// Unknown and expired are not told apart: a broadcast's key keeps no order that a pruning mark could pass.
    pub fn lookup_broadcast(&self, id: u128) -> Result<Option<BroadcastStatus>, LookupError> {
        if self.retention.is_zero() {
            return Ok(None);
        }
        // The broadcaster hands a final outcome to its writer before the broadcast leaves its memory, and the
        // writer lets go of it only once it is stored: read in this order, a broadcast is always found.
        if let Some(s) = self
            .broadcasts
            .get()
            .and_then(std::sync::Weak::upgrade)
            .and_then(|b| b.held_status(id))
        {
            return Ok(Some(s));
        }
        match self.store.lookup(&broadcast_key(id))? {
            Lookup::Found(bytes) => {
                let s: BroadcastStatus = serde_json::from_slice(&bytes)
                    .map_err(|e| LookupError::CorruptBroadcast(e.to_string()))?;
                Ok((broadcast_id(&s.id) == Some(id)).then_some(s))
            }
            Lookup::Expired | Lookup::Unknown => Ok(None),
        }
    }

    pub fn stats(&self) -> BookStats {
        BookStats {
            tracked: self
                .shards
                .iter()
                .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len() as u64)
                .sum(),
            stored: self.store.len(),
            dropped: self.dropped.load(Ordering::Relaxed),
            pruned: self.pruned.load(Ordering::Relaxed),
        }
    }
}

/// A restart's restore asks the store (not this run's memory) for the outcome of each spooled notification. A key
/// holds an id's printed form only, which another run 100,000 s apart may print alike: the outcome found counts as
/// this notification's only if it was accepted the same second for the same domain.
impl crate::spool::FinalOutcomes for StatusBook {
    fn has_final(&self, n: &herald_spool::StoredNotification) -> bool {
        let key = key_of(MessageId(n.key.0));
        match self.store.lookup(&key) {
            Ok(Lookup::Found(bytes)) => codec::decode(&bytes).is_ok_and(|s| {
                s.is_final() && s.accepted_at == n.received_at && s.domain == n.domain
            }),
            Ok(Lookup::Expired | Lookup::Unknown) => false,
            Err(e) => {
                tracing::debug!(
                    "restore: looking up the outcome of {}: {e}",
                    MessageId(n.key.0)
                );
                false
            }
        }
    }
}

impl StatusBook {
    /// Follows `n`, in its queue after `retries` failed attempts; `next_attempt_at` (Unix seconds) when it is held
    /// back until then ([`OutcomeListener::queued_until`]), else it keeps what it had.
    fn enter_queue(&self, n: &Notification, retries: u32, next_attempt_at: Option<u64>) {
        let key = key_of(n.id);
        // Pulled from the stream by this node: the book follows it from here, with the last reason this node
        // knew of (it gave the notification back after that failure).
        let last_reason = if self.on_stream.load(Ordering::Relaxed) {
            self.in_stream_shard(&key)
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(&key)
                .and_then(|e| e.last_reason)
        } else {
            None
        };
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        let entry = shard.get_or_insert_with(key, || Entry::queued(n, retries, last_reason));
        if !matches!(entry.phase, Phase::Final(_)) {
            entry.attempts = retries;
        }
        match (&entry.phase, next_attempt_at) {
            (Phase::Final(_), _) => {}
            // Held back until a time it was given (restored from the spool): the lookup shows when it is due.
            (_, Some(at)) => {
                entry.phase = Phase::Queued {
                    next_attempt_at: Some(at),
                }
            }
            // Back in its queue from a connection that had not sent it (a pause, a route gone, a connection lost
            // before sending): it waits again.
            (Phase::InFlight, None) => {
                entry.phase = Phase::Queued {
                    next_attempt_at: None,
                }
            }
            (Phase::Queued { .. }, None) => {}
        }
    }
}

/// `t` in Unix seconds (0 before the epoch).
fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl OutcomeListener for StatusBook {
    fn queued(&self, n: &Notification, retries: u32) {
        self.enter_queue(n, retries, None);
    }

    fn queued_until(&self, n: &Notification, retries: u32, next_attempt: SystemTime) {
        self.enter_queue(n, retries, Some(unix_secs(next_attempt)));
    }

    fn in_flight(&self, id: MessageId) {
        self.with_entry(id, |e| {
            if !matches!(e.phase, Phase::Final(_)) {
                e.phase = Phase::InFlight;
            }
        });
    }

    /// Gone back to the stream for its retry, for whichever node pulls it then: the book forgets it, and on the
    /// JetStream spool remembers it as put in the stream, with its attempts, last reason and next attempt, until
    /// a queue of this node holds it again ([`Found::InStream`]).
    fn left(&self, id: MessageId) {
        let key = key_of(id);
        let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
        if !shard
            .get_mut(&key)
            .is_some_and(|e| !matches!(e.phase, Phase::Final(_)))
        {
            return;
        }
        let entry = shard.remove(&key);
        drop(shard);
        if let Some(mut entry) = entry
            && self.on_stream.load(Ordering::Relaxed)
        {
            // Whatever it was here (in flight when a failed task gave it up), it now waits in the stream.
            let now = unix_now();
            // A next attempt already past (a queue given up, not a retry handed back) says nothing any more.
            let next_attempt_at = match entry.phase {
                Phase::Queued { next_attempt_at } => next_attempt_at.filter(|at| *at > now),
                _ => None,
            };
            entry.phase = Phase::Queued { next_attempt_at };
            let until = self.in_stream_until(now, next_attempt_at.unwrap_or(now));
            self.in_stream_shard(&key)
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .handed_back(key, entry, now, until);
        }
    }

    fn entered_stream(&self, n: &Notification) {
        if !self.on_stream.load(Ordering::Relaxed) {
            return;
        }
        let key = key_of(n.id);
        // Recorded once the stream acknowledged it: this node may have pulled it already, and then follows it.
        if self
            .shard(&key)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .is_some()
        {
            return;
        }
        let entry = Entry::queued(n, 0, None);
        let now = unix_now();
        let until = self.in_stream_until(now, now);
        self.in_stream_shard(&key)
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .accepted(key, entry, now, until);
    }

    fn outcome(&self, r: &OutcomeRecord<'_>) {
        let key = key_of(r.notification.id);
        let record = {
            let mut shard = self.shard(&key).lock().unwrap_or_else(|p| p.into_inner());
            let Some(e) = shard.get_mut(&key) else {
                return;
            };
            match r.kind {
                OutcomeKind::Transient => {
                    // The attempt count and next attempt come with `rescheduled` (a failed connection is logged
                    // without counting an attempt).
                    e.last_reason = Some(Arc::from(r.error));
                    e.phase = Phase::Queued {
                        next_attempt_at: None,
                    };
                    return;
                }
                OutcomeKind::Delivered | OutcomeKind::Permanent => {
                    // The record carries the final attempt count; a lookup reads it from there.
                    let record = e.final_record(r);
                    e.phase = Phase::Final(record.clone());
                    record
                }
            }
        };
        let stored = Stored {
            key,
            finished_ms: r.at * 1000,
            record,
        };
        let handing = self.handing.lock().unwrap_or_else(|p| p.into_inner());
        let sent = self.writer.try_send(stored);
        if sent.is_ok() {
            self.submitted.fetch_add(1, Ordering::Release);
        }
        drop(handing);
        match sent {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.shard(&key)
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                if self
                    .dropped
                    .fetch_add(1, Ordering::Relaxed)
                    .is_multiple_of(10_000)
                {
                    tracing::warn!(
                        backlog = WRITE_BACKLOG,
                        "the outcome store falls behind: final outcomes are dropped (status lookups answer 404 \
                         for them); see herald_outcomes_dropped_total"
                    );
                }
            }
        }
    }

    fn rescheduled(&self, id: MessageId, retries: u32, next_attempt: SystemTime) {
        let at = unix_secs(next_attempt);
        self.with_entry(id, |e| {
            if !matches!(e.phase, Phase::Final(_)) {
                e.attempts = retries;
                e.phase = Phase::Queued {
                    next_attempt_at: Some(at),
                };
            }
        });
    }
}

impl super::OutcomeWriter for StatusBook {
    fn handed(&self) -> u64 {
        self.submitted.load(Ordering::Acquire)
    }

    fn stored(&self) -> u64 {
        if self.writer_gone.load(Ordering::Acquire) {
            return u64::MAX;
        }
        self.written.load(Ordering::Acquire)
    }
}

/// APNs' answers that say the token is dead (docs/apns-protocol.md#classification): HTTP 410, the reasons
/// BadDeviceToken and Unregistered, binary status 8 (`Invalid token`). The reason is compared whole: binary status
/// 5 (`Invalid token size`) says the notification was malformed, not that the token is dead, and herald's own
/// reasons may quote APNs' words.
pub fn is_invalid_token(status: Option<u16>, reason: &str) -> bool {
    matches!(
        (status, reason),
        (Some(410), _) | (_, "BadDeviceToken" | "Unregistered") | (Some(8), "Invalid token")
    )
}

/// Final outcomes stored in one write at most.
const MAX_WRITE_BATCH: usize = 4096;

/// A final outcome handed to the writer thread: its key, when it finished (Unix ms) and its stored form.
struct Stored {
    key: OutcomeKey,
    finished_ms: u64,
    record: Arc<[u8]>,
}

/// Stores final outcomes in batches, then lets them leave memory; pauses [`super::WRITER_PAUSE`] after a batch
/// that did not fill up. A batch the store refuses is tried again until it is stored ([`super::StoreRetry`]). Ends
/// when the book is gone.
fn write_loop(rx: Receiver<Stored>, book: Weak<StatusBook>) {
    let owner = book.clone();
    let _exit = super::OnExit(move || {
        if let Some(book) = owner.upgrade() {
            tracing::error!("the outcome writer thread ended; final outcomes are no longer stored");
            book.writer_gone.store(true, Ordering::Release);
        }
    });
    let mut batch = Vec::new();
    let mut retry = super::StoreRetry::new("final outcomes");
    while let Ok(first) = rx.recv() {
        batch.clear();
        batch.push(first);
        while batch.len() < MAX_WRITE_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let entries: Vec<_> = batch
            .iter()
            .map(|s| (s.key, s.finished_ms, &*s.record))
            .collect();
        // Stored, however long the store refuses writes (super::StoreRetry): until then the batch stays in memory,
        // for lookups, and uncounted, so that the spool keeps its notifications. A buffered write, not synced per
        // batch: it outlives a crash of the process, which is what the spool's removal waits for, and an fsync
        // every few milliseconds would cost the writer more than the outcomes it stores; a graceful stop syncs
        // ([`StatusBook::flush`]), and a power loss can lose the last outcomes as it can the spool's own
        // buffered removals.
        loop {
            let Some(owner) = book.upgrade() else {
                return;
            };
            match owner.store.put(&entries) {
                Ok(()) => {
                    retry.stored();
                    break;
                }
                Err(e) => {
                    let wait = retry.refused(&e, entries.len());
                    drop(owner);
                    if !super::pause_while(|| book.strong_count() > 0, wait) {
                        return;
                    }
                }
            }
        }
        drop(entries);
        let Some(book) = book.upgrade() else {
            return;
        };
        for s in &batch {
            let mut shard = book.shard(&s.key).lock().unwrap_or_else(|p| p.into_inner());
            if shard
                .get(&s.key)
                .is_some_and(|e| matches!(e.phase, Phase::Final(_)))
            {
                shard.remove(&s.key);
            }
        }
        book.written
            .fetch_add(batch.len() as u64, Ordering::Release);
        drop(book);
        if batch.len() < MAX_WRITE_BATCH {
            std::thread::sleep(super::WRITER_PAUSE);
        }
    }
}

/// Prunes the store every tenth of the retention (at most every minute) while it exists.
async fn prune_loop(
    store: Weak<OutcomeStore>,
    pruned: Arc<AtomicU64>,
    retention: Duration,
    max_entries: u64,
) {
    let every = (retention / 10).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    loop {
        tick.tick().await;
        let Some(store) = store.upgrade() else {
            return;
        };
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let cutoff = now_ms.saturating_sub(retention.as_millis() as u64);
        // Expired idempotency keys are deleted whether or not the outcomes could be pruned.
        let result = tokio::task::spawn_blocking(move || {
            (
                store.prune(cutoff, max_entries),
                store.prune_idempotency(now_ms),
            )
        })
        .await;
        match result {
            Ok((outcomes, idempotency)) => {
                match outcomes {
                    Ok(n) => {
                        if n > 0 {
                            tracing::debug!(pruned = n, "outcome store pruned");
                        }
                        pruned.fetch_add(n, Ordering::Relaxed);
                    }
                    Err(e) => tracing::warn!("pruning the outcome store: {e}"),
                }
                if let Err(e) = idempotency {
                    tracing::warn!("pruning the outcome store's idempotency keys: {e}");
                }
            }
            Err(e) => tracing::warn!("pruning the outcome store: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outcomes::fixtures::{delivered, notification};
    use crate::queue::message::IdGenerator;

    /// A restart's restore finds the stored final outcome of a notification whose removal from the spool was lost,
    /// and only that notification's: not one still on its way, not one of another run whose id prints alike.
    #[tokio::test]
    async fn a_restore_finds_only_this_notifications_stored_final_outcome() {
        use crate::spool::{FinalOutcomes, to_stored};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(3600), 1_000_000);
        let ids = IdGenerator::new(0);
        let (done, waiting) = (
            notification(ids.next(), "book.example", 1),
            notification(ids.next(), "book.example", 2),
        );
        for n in [&done, &waiting] {
            book.queued(n, 0);
        }
        book.outcome(&delivered(&done));
        assert!(book.flush(Duration::from_secs(10)).await, "stored");

        assert!(book.has_final(&to_stored(&done)));
        assert!(!book.has_final(&to_stored(&waiting)), "still queued");
        let mut another_run = to_stored(&done);
        another_run.received_at += 100_000;
        assert!(!book.has_final(&another_run), "an id of another run");
        let mut another_domain = to_stored(&done);
        another_domain.domain = "other.example".into();
        assert!(!book.has_final(&another_domain));
    }

    /// A broadcast id is a UUID in its 36-character form, either case; its outcome key is never a notification's
    /// (whatever its node, run and counter), the same for both cases, and differs for ids that differ in either half.
    #[test]
    fn broadcast_keys_are_their_own() {
        let id = "5b6f7c3e-1d2a-4b8c-9e0f-a1b2c3d4e5f6";
        let value = broadcast_id(id).unwrap();
        assert_eq!(broadcast_id(&id.to_ascii_uppercase()), Some(value));
        for bad in [
            "",
            "5b6f7c3e1d2a4b8c9e0fa1b2c3d4e5f6",
            "{5b6f7c3e-1d2a-4b8c-9e0f-a1b2c3d4e5f6}",
            "5b6f7c3e-1d2a-4b8c-9e0f-a1b2c3d4e5fg",
            "01/00-12345-0000002A",
        ] {
            assert_eq!(broadcast_id(bad), None, "{bad}");
        }
        let key = broadcast_key(value);
        let ids = IdGenerator::new(0);
        for node in [0u8, 7, 255] {
            let n = crate::queue::message::MessageId::from_parts(node, ids.epoch_ms(), u64::MAX);
            assert_ne!(key[..8], super::super::key_of(n)[..8]);
        }
        let high = 1u128 << 64;
        assert_ne!(broadcast_key(value), broadcast_key(value ^ 1));
        assert_ne!(broadcast_key(value), broadcast_key(value ^ high));
    }

    fn store_put(book: &StatusBook, key: OutcomeKey, record: &[u8]) {
        book.store()
            .put(&[(key, unix_now() * 1000, record)])
            .unwrap();
    }

    /// With `outcome_retention = 0` no broadcast is looked up (status lookups are off), even one whose outcome is in
    /// the store.
    #[test]
    fn no_broadcast_is_looked_up_with_a_retention_of_0() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let id = "5b6f7c3e-1d2a-4b8c-9e0f-a1b2c3d4e5f6";
        let value = broadcast_id(id).unwrap();
        let status = BroadcastStatus {
            id: id.into(),
            kind: BroadcastStatus::KIND.into(),
            state: "delivered".into(),
            domain: "d.example".into(),
            channel_id: "dHN0LXNyY2gtY2hubA==".into(),
            accepted_at: 1,
            attempts: 0,
            last_reason: None,
            next_attempt_at: None,
            finished_at: Some(2),
            apns_id: Some(id.into()),
            reason: None,
            status: None,
        };
        let record = serde_json::to_vec(&status).unwrap();
        store
            .put(&[(broadcast_key(value), unix_now() * 1000, record.as_slice())])
            .unwrap();
        let book = StatusBook::new(store.clone(), Duration::from_secs(3600), 1_000_000);
        assert_eq!(book.lookup_broadcast(value).unwrap(), Some(status));
        let off = StatusBook::new(store.clone(), Duration::ZERO, 1_000_000);
        assert_eq!(off.lookup_broadcast(value).unwrap(), None);
        // An outcome found under another id's key (two ids can share one) is not taken for that id's.
        let other = broadcast_id("5b6f7c3e-1d2a-4b8c-9e0f-a1b2c3d4e5f7").unwrap();
        store_put(&book, broadcast_key(other), &record);
        assert_eq!(book.lookup_broadcast(other).unwrap(), None);
    }

    /// Only APNs' answers that say the token is dead mark it invalid: binary status 5 (`Invalid token size`)
    /// and texts that merely contain a reason do not.
    #[test]
    fn invalid_token_is_bad_device_token_unregistered_410_and_binary_8() {
        for (status, reason, invalid) in [
            (Some(410), "Unregistered", true),
            (Some(410), "ExpiredToken", true),
            (Some(400), "BadDeviceToken", true),
            (Some(8), "Invalid token", true),
            (Some(5), "Invalid token size", false),
            (Some(8), "Invalid token size", false),
            (Some(400), "BadTopic", false),
            (Some(7), "Invalid payload size", false),
            (None, "expired after 3 retries: BadDeviceToken", false),
            (None, "not Unregistered", false),
            (None, "Invalid token", false),
        ] {
            assert_eq!(
                is_invalid_token(status, reason),
                invalid,
                "{status:?} {reason:?}"
            );
        }
    }

    /// The status answer of a notification that failed with binary status 5 does not call its token invalid.
    #[tokio::test]
    async fn a_binary_invalid_token_size_is_not_an_invalid_token() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(3600), 1_000_000);
        let ids = IdGenerator::new(0);
        for (status, reason, invalid) in
            [(5, "Invalid token size", false), (8, "Invalid token", true)]
        {
            let n = notification(ids.next(), "book.example", status);
            book.queued(&n, 0);
            book.in_flight(n.id);
            book.outcome(&OutcomeRecord {
                kind: OutcomeKind::Permanent,
                status: Some(u16::from(status)),
                error: reason,
                ..delivered(&n)
            });
            let Ok(Found::Status(s)) = book.lookup(&key_of(n.id)) else {
                panic!("{reason}: no status");
            };
            assert_eq!(
                (s.state.as_str(), s.status, s.invalid_token),
                ("failed", Some(u16::from(status)), invalid),
                "{reason}"
            );
        }
    }

    /// A notification a connection gave back unsent (a paused domain takes back what its connections had not
    /// taken) is `queued` again, not `in_flight` for as long as it waits; a queued one that is delayed keeps its
    /// next attempt time.
    #[tokio::test]
    async fn a_notification_given_back_unsent_is_queued_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(3600), 1_000_000);
        let n = notification(IdGenerator::new(0).next(), "book.example", 1);
        let state = || match book.lookup(&key_of(n.id)) {
            Ok(Found::Status(s)) => (s.state, s.next_attempt_at),
            other => panic!("no status: {other:?}"),
        };
        book.queued(&n, 0);
        book.in_flight(n.id);
        assert_eq!(state().0, "in_flight");
        book.queued(&n, 0);
        assert_eq!(state(), ("queued".to_owned(), None));
        let due = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        book.rescheduled(n.id, 1, due);
        book.queued(&n, 1);
        assert_eq!(state(), ("queued".to_owned(), Some(2_000_000_000)));
    }

    /// A notification restored after a restart with its retry still ahead is `queued` with the attempts and the
    /// next attempt time the spool kept, from the moment the book follows it (one call: no lookup finds it queued
    /// without its next attempt); it has no `last_reason` (the spool does not keep it) until its next failure.
    #[tokio::test]
    async fn a_restored_notification_shows_its_attempts_and_next_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(3600), 1_000_000);
        let n = notification(IdGenerator::new(0).next(), "book.example", 1);
        let due = SystemTime::UNIX_EPOCH + Duration::from_millis(2_000_000_000_750);
        book.queued_until(&n, 3, due);
        let Ok(Found::Status(s)) = book.lookup(&key_of(n.id)) else {
            panic!("{:?}", book.lookup(&key_of(n.id)));
        };
        assert_eq!(
            (
                s.state.as_str(),
                s.attempts,
                s.next_attempt_at,
                s.last_reason
            ),
            ("queued", 3, Some(2_000_000_000), None)
        );
    }

    #[tokio::test]
    async fn flush_returns_once_every_final_outcome_handed_over_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store.clone(), Duration::from_secs(3600), 1_000_000);
        let ids = IdGenerator::new(0);
        let mut keys = Vec::new();
        for i in 0..300u32 {
            let n = notification(ids.next(), "book.example", i as u8);
            book.queued(&n, 0);
            book.in_flight(n.id);
            book.outcome(&delivered(&n));
            keys.push(key_of(n.id));
        }
        assert!(book.flush(Duration::from_secs(30)).await);
        // Read from the store itself, not from the book's memory.
        for key in &keys {
            let found = store.lookup(key).unwrap();
            assert!(matches!(found, Lookup::Found(_)), "{key:?}: {found:?}");
        }
        assert_eq!(book.stats().tracked, 0);
    }

    /// A notification given back to the JetStream stream for its retry leaves this node's book (another node
    /// follows it); one that is finished here is not forgotten by it.
    #[tokio::test]
    async fn a_notification_that_left_for_another_node_is_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(3600), 1_000_000);
        let ids = IdGenerator::new(0);
        let n = notification(ids.next(), "book.example", 1);
        book.queued(&n, 0);
        book.in_flight(n.id);
        let mut failed = delivered(&n);
        failed.kind = OutcomeKind::Transient;
        failed.error = "503 ServiceUnavailable";
        book.outcome(&failed);
        assert_eq!(book.stats().tracked, 1);
        book.left(n.id);
        assert_eq!(book.stats().tracked, 0);
        assert_eq!(book.lookup(&key_of(n.id)).unwrap(), Found::Unknown);
        // Finished here: kept (until stored), whatever `left` says after.
        let done = notification(ids.next(), "book.example", 2);
        book.queued(&done, 0);
        book.outcome(&delivered(&done));
        book.left(done.id);
        assert!(matches!(
            book.lookup(&key_of(done.id)).unwrap(),
            Found::Status(_)
        ));
    }

    /// On the JetStream spool the book remembers what this node put in the stream: a notification accepted here is
    /// `queued` (docs/api.md#status-of-a-notification) until a queue of this node takes it, and one given back for its retry keeps
    /// its attempts, last reason and next attempt while it waits in the stream; once this node queues it again,
    /// the book follows it as before, with its last reason.
    #[tokio::test]
    async fn on_the_stream_what_this_node_put_there_is_queued_until_it_is_pulled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(3600), 1_000_000);
        book.follow_the_stream();
        let n = notification(IdGenerator::new(0).next(), "book.example", 1);
        let key = key_of(n.id);
        book.entered_stream(&n);
        let Ok(Found::InStream(s)) = book.lookup(&key) else {
            panic!("{:?}", book.lookup(&key));
        };
        assert_eq!(
            (
                s.state.as_str(),
                s.attempts,
                s.next_attempt_at,
                s.domain.as_str()
            ),
            ("queued", 0, None, "book.example")
        );
        assert_eq!(s.token, n.push.token.to_hex());

        // Pulled by this node: the book follows it.
        book.queued(&n, 0);
        book.in_flight(n.id);
        assert!(matches!(book.lookup(&key), Ok(Found::Status(s)) if s.state == "in_flight"));
        // A transient failure, given back to the stream for the retry in an hour.
        let mut failed = delivered(&n);
        failed.kind = OutcomeKind::Transient;
        failed.error = "503 ServiceUnavailable";
        book.outcome(&failed);
        let due = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        book.rescheduled(n.id, 1, due);
        book.left(n.id);
        assert_eq!(book.stats().tracked, 0);
        let Ok(Found::InStream(s)) = book.lookup(&key) else {
            panic!("{:?}", book.lookup(&key));
        };
        assert_eq!(
            (s.state.as_str(), s.attempts, s.next_attempt_at),
            ("queued", 1, Some(2_000_000_000))
        );
        assert_eq!(s.last_reason.as_deref(), Some("503 ServiceUnavailable"));

        // Pulled again for the retry: followed by the book, with the reason of the last failure.
        book.queued(&n, 1);
        let Ok(Found::Status(s)) = book.lookup(&key) else {
            panic!("{:?}", book.lookup(&key));
        };
        assert_eq!((s.state.as_str(), s.attempts), ("queued", 1));
        assert_eq!(s.last_reason.as_deref(), Some("503 ServiceUnavailable"));
        book.outcome(&delivered(&n));
        assert!(matches!(book.lookup(&key), Ok(Found::Status(s)) if s.state == "delivered"));
    }

    /// What the book remembers of the stream is answered for a while only ([`GRACE`] after it was due to be
    /// pulled, `outcome_retention` at most): an acceptance two hours old is not.
    #[tokio::test]
    async fn what_was_put_in_the_stream_is_not_answered_after_its_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(3600), 1_000_000);
        book.follow_the_stream();
        let n = notification(IdGenerator::new(0).next(), "book.example", 1);
        let key = key_of(n.id);
        // Put in the stream two hours ago (as the shard's clock says).
        let entry = Entry::queued(&n, 0, None);
        let two_hours_ago = unix_now() - 7200;
        let until = book.in_stream_until(two_hours_ago, two_hours_ago);
        book.in_stream_shard(&key)
            .lock()
            .unwrap()
            .accepted(key, entry, two_hours_ago, until);
        assert_eq!(book.lookup(&key).unwrap(), Found::Unknown);
    }

    /// A notification a failed queue task gave up while it was in flight goes back to the stream: it is
    /// remembered `queued`, not `in_flight` (which would outrank what the node that pulls it next says).
    #[tokio::test]
    async fn a_notification_given_up_in_flight_is_remembered_queued() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(3600), 1_000_000);
        book.follow_the_stream();
        let n = notification(IdGenerator::new(0).next(), "book.example", 1);
        book.queued(&n, 0);
        book.in_flight(n.id);
        book.left(n.id);
        let Ok(Found::InStream(s)) = book.lookup(&key_of(n.id)) else {
            panic!("{:?}", book.lookup(&key_of(n.id)));
        };
        assert_eq!((s.state.as_str(), s.next_attempt_at), ("queued", None));
    }

    /// On the embedded spool (the book does not follow a stream) nothing is remembered of notifications that were
    /// never queued here, and one that left is forgotten.
    #[tokio::test]
    async fn without_a_stream_nothing_is_remembered_of_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store, Duration::from_secs(3600), 1_000_000);
        let ids = IdGenerator::new(0);
        let accepted = notification(ids.next(), "book.example", 1);
        book.entered_stream(&accepted);
        assert_eq!(book.lookup(&key_of(accepted.id)).unwrap(), Found::Unknown);
    }

    #[test]
    fn a_status_stored_before_the_apns_answer_fields_still_reads() {
        let old = br#"{"id":"00/00-1-00000001","state":"delivered","domain":"d","token":"ab","accepted_at":1,"attempts":0,"finished_at":2,"apns_id":"x"}"#;
        let s: Status = serde_json::from_slice(old).unwrap();
        assert!(s.is_final());
        assert_eq!((s.apns_unique_id, s.unregistered_at_ms), (None, None));
    }
}
