//! Broadcast pushes through herald (docs/api.md "Broadcasts", docs/apns-protocol.md#broadcast): one Live Activity
//! update to every device subscribed to a channel, sent as one request to the domain's broadcast route
//! (`apn_broadcast_route`, else the domain's own Apple host) with the domain's credentials.
//!
//! A broadcast is acknowledged only once it is durable: [`Broadcaster::accept`] stores it synced in the spool
//! directory's outcome store (partition `broadcasts`) before answering. It is then sent, and kept until it ends:
//! delivered (APNs answered 200), failed permanently (a permanent reason such as `ChannelNotRegistered`, or the
//! domain's retries used up or its `message_expiration` passed), or retried after a transient one on the domain's
//! retry schedule (`retry_interval` doubling up to `max_retry_interval`). Broadcasts still stored at start are sent
//! again; at a stop none starts any more, and those being sent are waited for ([`Broadcaster::hold`]), so that one
//! APNs answered is not sent again at the next start. Before each attempt, a broadcast whose APNs expiration passed, or (with `never_attempt_expired_messages`)
//! that is `message_expiration` old, is failed permanently without one, as a notification is and with its reasons. Each outcome is logged once, in the
//! mainlog and every apn_logger, in the broadcast forms docs/operations.md describes, and counted per domain for
//! `/metrics`.
//!
//! A broadcast's final outcome ([`BroadcastStatus`]) is stored in the outcome store, under its id's
//! [`broadcast_key`] and for `outcome_retention` as a notification's, before its deletion is written: the deletion
//! waits for it ([`Unwritten`]), so that a crash leaves the broadcast (sent again) or its outcome, never neither. The
//! status book looks a broadcast id up here first ([`Broadcaster::held_status`]: queued or in flight while held, then the final
//! outcome until the store has it), then in the store.
//!
//! At most `max_queued_broadcasts` broadcasts are held unfinished; beyond, [`Broadcaster::accept`] refuses new ones
//! ([`BroadcastRefusal::Full`]).
//!
//! Broadcasts of one channel are not delivered out of order by a retry: once one is delivered, the older ones of its
//! channel still unfinished end unsent (`ChannelOrder`, reason `Superseded`). Deletions of finished broadcasts and
//! retry states the store refuses (a full or failing disk) are kept and written later (`Unwritten`); a stored
//! broadcast that cannot be read at the start is deleted and counted (reason `Unreadable`).
//!
//! With the JetStream spool a broadcast is durable on the node that accepted it (its local outcome store), not in
//! the shared stream.

pub mod api;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herald_apns::broadcast::{
    BroadcastClient, BroadcastClientError, BroadcastSend, ChannelId, reason_label,
};
use herald_apns::outcome::FailureClass;
use herald_spool::{OutcomeKey, OutcomeStore};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};

use crate::channels::conns::{Connections, Lease, Unavailable};
use crate::channels::{Purpose, Target, Unresolved, resolve_for};
use crate::delivery::ConfigResolver;
use crate::logs::Logs;
use crate::model::retry::RetryDecision;
use crate::outcomes::book::{BroadcastStatus, broadcast_id, broadcast_key};
use crate::outcomes::{STORE_RETRY_FIRST, STORE_RETRY_MAX};

/// Broadcasts sent at once, over all domains.
const MAX_IN_FLIGHT: usize = 256;
/// Bounds connecting to the broadcast host and each send.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Times one attempt sends a broadcast again, at once, after APNs did not process it (its stream refused: on the same
/// connection; above the last stream id of a GOAWAY: on a new one) before the attempt fails as a transient failure.
const MAX_UNPROCESSED_RESENDS: u32 = 3;
/// Default `max_queued_broadcasts`.
pub const DEFAULT_MAX_QUEUED: usize = 100_000;
/// The furthest ahead a retry is scheduled: a retry option can take any number of seconds.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(100 * 365 * 86_400);
/// The most of a failure's text a broadcast's state keeps (`last_reason`, `reason`): a host may answer with a whole
/// page, which the log keeps.
const MAX_REASON: usize = 512;

/// A stored broadcast: what was accepted and how far its delivery got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Broadcast {
    /// herald's id, also sent as `apns-request-id`.
    pub id: String,
    pub domain: String,
    pub channel: String,
    /// The payload as received (a JSON object).
    pub payload: String,
    pub priority: u8,
    #[serde(default)]
    pub expiration: Option<u64>,
    /// Unix seconds.
    pub accepted_at: u64,
    /// Retries made so far (0 before the first retry).
    #[serde(default)]
    pub retries: u32,
    /// When the next attempt is due, Unix milliseconds.
    #[serde(default)]
    pub due_ms: u64,
    /// Why the last attempt failed, when one failed transiently (at most [`MAX_REASON`] bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_reason: Option<String>,
}

/// What [`Broadcaster::accept`] is given.
#[derive(Debug, Clone)]
pub struct NewBroadcast {
    pub domain: String,
    pub channel: ChannelId,
    pub payload: Bytes,
    pub priority: u8,
    pub expiration: Option<u64>,
    /// The sender's `apns-request-id`; herald makes one when absent.
    pub request_id: Option<String>,
}

/// Why a broadcast was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum BroadcastRefusal {
    /// The request itself is wrong (the message names the field).
    #[error("{0}")]
    Invalid(String),
    /// The domain cannot send broadcasts as configured.
    #[error("domain {domain:?} cannot send broadcasts: {reason}")]
    Domain { domain: String, reason: String },
    /// The domain cannot send broadcasts now: its credentials cannot be read (a key or certificate file), or looking
    /// it up failed. Nothing was accepted; try again later.
    #[error("domain {domain:?} cannot send broadcasts now: {reason}; retry later")]
    Unavailable { domain: String, reason: String },
    /// The broadcast could not be made durable: nothing was accepted, try again.
    #[error("the broadcast could not be stored: {0}")]
    NotDurable(String),
    /// `max_queued_broadcasts` broadcasts are accepted and not finished: try again later.
    #[error(
        "broadcast queue full: herald holds {held} broadcasts not finished yet (max_queued_broadcasts = {max}) and cannot take another now; retry later"
    )]
    Full { held: usize, max: usize },
}

/// The domains' targets resolved under one configuration, the one in force when they were: dropped together when
/// another is in force (so that no configuration a reload replaced is kept alive for them), and when
/// [`TARGETS_LIMIT`] are kept (every domain a client names is resolved, and with APNs options at global scope every
/// domain resolves). Those in use are resolved again on next use.
#[derive(Default)]
struct Targets {
    config: Option<Arc<herald_conf::Config>>,
    by_domain: HashMap<String, Arc<Target>>,
}

/// The most targets kept resolved: as many as the delivery settings the resolver keeps.
const TARGETS_LIMIT: usize = crate::delivery::SETTINGS_CACHE_LIMIT;

/// (due time in Unix milliseconds, key) of a stored broadcast.
type Due = (u64, Vec<u8>);

/// (domain, channel id) of a broadcast.
type ChannelKey = (String, String);

/// The `reason` of a broadcast ended unsent because a newer one of its channel was delivered first.
const SUPERSEDED: &str = "Superseded";
/// The `reason` of a stored broadcast that could not be read at a start (deleted).
const UNREADABLE: &str = "Unreadable";
/// The `reason` of an attempt whose domain cannot broadcast now (its credentials cannot be read).
const DOMAIN_UNAVAILABLE: &str = "DomainUnavailable";

/// An unfinished broadcast, and whether an attempt holds it: such a one is neither started again nor ended but by
/// that attempt.
struct Pending {
    broadcast: Broadcast,
    sending: bool,
}

/// The unfinished broadcasts of one channel, and the newest of its broadcasts delivered while any was unfinished.
/// Keys grow in acceptance order (within a run and across restarts, [`first_seq`]): a broadcast with a smaller key
/// than the newest delivered is older, and is ended unsent rather than delivered after it (APNs would keep the
/// stale one for devices that come online on a channel that stores the most recent message). Forgotten once none of
/// the channel's broadcasts is unfinished, so there is at most one per channel with unfinished broadcasts.
#[derive(Default)]
struct ChannelOrder {
    /// Keys of the channel's unfinished broadcasts.
    keys: BTreeSet<Vec<u8>>,
    /// Key and id of the newest broadcast delivered.
    delivered: Option<(Vec<u8>, String)>,
}

/// See the module documentation.
pub struct Broadcaster {
    store: Arc<OutcomeStore>,
    resolver: Arc<ConfigResolver>,
    logs: Logs,
    /// Broadcasts waiting for their next attempt, by due time.
    due: Mutex<BinaryHeap<Reverse<Due>>>,
    /// Every stored broadcast not yet finished, by key.
    pending: Mutex<HashMap<Vec<u8>, Pending>>,
    /// The channels with unfinished broadcasts, for their order.
    channels: Mutex<HashMap<ChannelKey, ChannelOrder>>,
    /// Broadcasts not finished, counting those being stored: what `max_queued_broadcasts` bounds.
    held: AtomicUsize,
    wake: Notify,
    /// Set at a stop ([`Broadcaster::hold`]): no send starts any more.
    holding: AtomicBool,
    /// One permit per broadcast being sent; all of them free when none is.
    sending: Arc<Semaphore>,
    /// The kept broadcast connection of each domain, closed when unused for the domain's `idle_timeout` or when a
    /// reload removed or changed the domain ([`crate::channels::conns`]).
    conns: Connections,
    /// (domain, outcome, reason) -> count.
    counts: Mutex<BTreeMap<(String, &'static str, String), u64>>,
    seq: AtomicU64,
    /// Resolved targets by domain, under the configuration in force.
    targets: Mutex<Targets>,
    /// The most targets kept ([`TARGETS_LIMIT`]; less in tests).
    targets_limit: AtomicUsize,
    /// To the writer thread, which stores what comes in together with one sync (group commit).
    writes: std::sync::mpsc::Sender<Write>,
    /// The keys of the unfinished broadcasts by id ([`broadcast_id`]; a sender may give two broadcasts one id), for
    /// status lookups ([`Broadcaster::held_status`]).
    by_id: Mutex<HashMap<u128, BTreeSet<Vec<u8>>>>,
    /// Final outcomes handed to the writer and not stored yet: lookups read them here meanwhile.
    finishing: Arc<Finishing>,
    /// Whether final outcomes are stored: `outcome_retention` is not 0 (read at start, as the status book reads it).
    keep_outcomes: bool,
}

/// Final outcomes handed to the writer thread and not stored yet, by outcome key ([`broadcast_key`]): the key of the
/// broadcast that ended, and its state.
type Finishing = Mutex<HashMap<OutcomeKey, (Vec<u8>, BroadcastStatus)>>;

/// A final outcome for the outcome store ([`OutcomeStore::put`]).
struct Outcome {
    key: OutcomeKey,
    /// When the broadcast ended, Unix milliseconds (when the outcome expires counts from here).
    finished_ms: u64,
    /// [`BroadcastStatus`] as JSON.
    record: Vec<u8>,
}

/// How a broadcast ended, for its final outcome.
struct Ending<'a> {
    delivered: bool,
    /// APNs' HTTP status of a failure it answered.
    status: Option<u16>,
    /// Why it failed (its log line's text); empty when delivered.
    text: &'a str,
    /// The `apns-request-id` APNs answered for a delivery.
    apns_id: Option<&'a str>,
}

impl Ending<'_> {
    fn failed(status: Option<u16>, text: &str) -> Ending<'_> {
        Ending {
            delivered: false,
            status,
            text,
            apns_id: None,
        }
    }
}

/// What the writer thread is asked to do.
enum Write {
    /// Store a broadcast; `done` hears when it is durable.
    Store {
        key: Vec<u8>,
        value: Vec<u8>,
        done: tokio::sync::oneshot::Sender<Result<(), String>>,
    },
    /// Replace a stored broadcast with its retry state (with the next write, not synced on its own).
    Retry { key: Vec<u8>, value: Vec<u8> },
    /// Delete a finished broadcast (with the next write, not synced on its own), once its final outcome, if it has
    /// one to keep, is stored.
    Finished {
        key: Vec<u8>,
        outcome: Option<Outcome>,
    },
    /// Answer once everything asked before is written, or with what could not be.
    Flush(tokio::sync::oneshot::Sender<Result<(), FlushError>>),
}

/// What [`Broadcaster::flush`] could not write: the broadcasts concerned are sent again at the next start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlushError {
    /// The outcome store refused the write that carried them (the last try failed with `error`).
    #[error(
        "{finished} finished broadcast(s) could not be removed from the store (each after its final outcome is \
         stored) and {retries} retry state(s) could not be stored ({error}): those broadcasts are sent again at the \
         next start"
    )]
    NotWritten {
        finished: usize,
        retries: usize,
        error: String,
    },
    /// The writer thread is gone: nothing asked of it since is written.
    #[error(
        "the broadcast writer has stopped: finished broadcasts may be sent again at the next start"
    )]
    WriterStopped,
}

/// What the writer thread was asked to write and the store refused: kept and written with the next write (every
/// later batch, or a try of its own after [`STORE_RETRY_FIRST`], the wait doubling up to [`STORE_RETRY_MAX`]), so
/// that a broadcast that finished is not sent again at the next start, nor one waiting for a retry sent at once
/// with its retries counted from 0.
///
/// A finished broadcast's deletion is written only once its final outcome is stored (in a write before it, in the
/// same keyspace journal): a crash between the two finds the broadcast still stored, and sends it again, rather
/// than losing its outcome.
///
/// Bounded by the broadcasts held: one retry state per unfinished broadcast (the latest), one deletion and outcome
/// per finished one; and while deletions wait, no new broadcast is stored (a store carries them, and succeeds or
/// fails with them), so no more than `max_queued_broadcasts` can finish meanwhile.
#[derive(Default)]
struct Unwritten {
    /// The latest retry state of each broadcast, by key.
    retries: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Keys of finished broadcasts.
    finished: BTreeSet<Vec<u8>>,
    /// The final outcomes of finished broadcasts not stored yet, by the broadcast's key.
    outcomes: BTreeMap<Vec<u8>, Outcome>,
    /// The error of the last write that failed, while anything is kept.
    error: Option<String>,
}

impl Unwritten {
    fn is_empty(&self) -> bool {
        self.retries.is_empty() && self.finished.is_empty()
    }

    /// Takes a batch's retries and deletions with their outcomes: a finished broadcast's retry state is not written
    /// any more.
    fn add(&mut self, retries: Vec<(Vec<u8>, Vec<u8>)>, finished: Vec<(Vec<u8>, Option<Outcome>)>) {
        self.retries.extend(retries);
        for (key, outcome) in finished {
            self.retries.remove(&key);
            if let Some(outcome) = outcome {
                self.outcomes.insert(key.clone(), outcome);
            }
            self.finished.insert(key);
        }
    }

    /// Stores the final outcomes kept, in one buffered write, and lets go of them in `finishing` (lookups read them
    /// from the store from then on).
    fn store_outcomes(
        &mut self,
        store: &OutcomeStore,
        finishing: &Finishing,
    ) -> Result<(), String> {
        if self.outcomes.is_empty() {
            return Ok(());
        }
        let entries: Vec<(OutcomeKey, u64, &[u8])> = self
            .outcomes
            .values()
            .map(|o| (o.key, o.finished_ms, o.record.as_slice()))
            .collect();
        store.put(&entries).map_err(|e| e.to_string())?;
        let mut held = lock(finishing);
        for (key, outcome) in std::mem::take(&mut self.outcomes) {
            // Not one of another broadcast with the same id, ended since.
            if held.get(&outcome.key).is_some_and(|(k, _)| *k == key) {
                held.remove(&outcome.key);
            }
        }
        Ok(())
    }

    /// Writes `entries` (new broadcasts) and everything kept, the final outcomes first. With new broadcasts, all
    /// else goes in one synced write, which succeeds or fails as a whole; without, retry states and deletions are
    /// buffered writes, as a reschedule of the spool. What is written leaves `self`; the error is the last write's.
    fn write(
        &mut self,
        store: &OutcomeStore,
        finishing: &Finishing,
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), String> {
        let result = if entries.is_empty() {
            self.write_buffered(store, finishing)
        } else {
            self.write_with(store, finishing, entries)
        };
        self.error = match &result {
            Err(e) if !self.is_empty() => Some(e.clone()),
            _ => None,
        };
        result
    }

    /// One synced write of `entries` and everything kept, after the final outcomes are stored (without them, none
    /// of it is written: the store refuses every write after a failed one until it is reopened).
    fn write_with(
        &mut self,
        store: &OutcomeStore,
        finishing: &Finishing,
        mut entries: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), String> {
        self.store_outcomes(store, finishing)?;
        let stores = entries.len();
        entries.extend(std::mem::take(&mut self.retries));
        let finished: Vec<Vec<u8>> = std::mem::take(&mut self.finished).into_iter().collect();
        match store.broadcast_apply(&entries, &finished) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.retries.extend(entries.split_off(stores));
                self.finished.extend(finished);
                Err(e.to_string())
            }
        }
    }

    /// The retry states one by one, then the final outcomes, then the deletions in one write; stops at the first
    /// refusal.
    fn write_buffered(
        &mut self,
        store: &OutcomeStore,
        finishing: &Finishing,
    ) -> Result<(), String> {
        while let Some((key, value)) = self.retries.pop_first() {
            if let Err(e) = store.broadcast_update(&key, &value) {
                self.retries.insert(key, value);
                return Err(e.to_string());
            }
        }
        self.store_outcomes(store, finishing)?;
        if self.finished.is_empty() {
            return Ok(());
        }
        let finished: Vec<Vec<u8>> = std::mem::take(&mut self.finished).into_iter().collect();
        store.broadcast_apply(&[], &finished).map_err(|e| {
            self.finished.extend(finished);
            e.to_string()
        })
    }

    /// What a flush answers now.
    fn flushed(&self) -> Result<(), FlushError> {
        match &self.error {
            Some(error) if !self.is_empty() => Err(FlushError::NotWritten {
                finished: self.finished.len(),
                retries: self.retries.len(),
                error: error.clone(),
            }),
            _ => Ok(()),
        }
    }
}

/// Stores broadcasts as they come, every one waiting at the time in one synced batch (group commit) together with
/// the retry states and deletions asked since, and answers each. What the store refuses of the retry states and
/// deletions is kept and written later ([`Unwritten`]); one error is logged per episode of refusals, and one line
/// when they are written again.
fn write_loop(
    store: Arc<OutcomeStore>,
    finishing: Arc<Finishing>,
    writes: std::sync::mpsc::Receiver<Write>,
) {
    let mut unwritten = Unwritten::default();
    let mut wait = STORE_RETRY_FIRST;
    loop {
        let first = if unwritten.is_empty() {
            match writes.recv() {
                Ok(w) => Some(w),
                Err(_) => return,
            }
        } else {
            match writes.recv_timeout(wait) {
                Ok(w) => Some(w),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    // The broadcaster is gone: one last try.
                    let _ = unwritten.write(&store, &finishing, Vec::new());
                    return;
                }
            }
        };
        let mut batch: Vec<Write> = first.into_iter().collect();
        while let Ok(more) = writes.try_recv() {
            batch.push(more);
            if batch.len() >= 1024 {
                break;
            }
        }
        let mut entries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut retries: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut finished = Vec::new();
        let mut waiting = Vec::new();
        let mut flushes = Vec::new();
        for w in batch {
            match w {
                Write::Store { key, value, done } => {
                    entries.push((key, value));
                    waiting.push(done);
                }
                Write::Retry { key, value } => retries.push((key, value)),
                Write::Finished { key, outcome } => finished.push((key, outcome)),
                Write::Flush(done) => flushes.push(done),
            }
        }
        let was_failing = unwritten.error.is_some();
        unwritten.add(retries, finished);
        let result = unwritten.write(&store, &finishing, entries);
        match (&unwritten.error, was_failing) {
            (Some(e), false) => {
                tracing::error!(
                    finished = unwritten.finished.len(),
                    retries = unwritten.retries.len(),
                    "finished broadcasts could not be removed from the store (each after its final outcome is \
                     stored), or retry states stored: {e}; kept and written with the next write (until then, a \
                     restart would send them again)"
                );
            }
            (None, true) => {
                tracing::info!(
                    "the finished broadcasts and retry states kept are written to the store again"
                );
            }
            _ => {}
        }
        wait = if unwritten.error.is_some() && was_failing {
            (wait * 2).min(STORE_RETRY_MAX)
        } else {
            STORE_RETRY_FIRST
        };
        for done in waiting {
            let _ = done.send(result.clone());
        }
        let flushed = unwritten.flushed();
        for done in flushes {
            let _ = done.send(flushed.clone());
        }
    }
}

/// The key of this run's first broadcast: after every stored one (`last_seq` the greatest stored key, 0 for none),
/// and in the clock's space (milliseconds, 16 bits of counter), even when the clock is now behind the earlier run's.
fn first_seq(last_seq: u64, now_ms: u64) -> u64 {
    last_seq.saturating_add(1).max(now_ms << 16)
}

impl Broadcaster {
    /// Loads the broadcasts stored by an earlier run and starts sending.
    pub fn start(
        store: Arc<OutcomeStore>,
        resolver: Arc<ConfigResolver>,
        logs: Logs,
    ) -> Result<Arc<Broadcaster>, herald_spool::SpoolError> {
        let stored = store.broadcast_all()?;
        let mut due = BinaryHeap::new();
        let mut pending = HashMap::new();
        let mut channels: HashMap<ChannelKey, ChannelOrder> = HashMap::new();
        let mut counts = BTreeMap::new();
        let mut unreadable = Vec::new();
        let mut by_id: HashMap<u128, BTreeSet<Vec<u8>>> = HashMap::new();
        let mut last_seq = 0;
        for (key, value) in stored {
            last_seq = last_seq.max(key_seq(&key));
            match serde_json::from_slice::<Broadcast>(&value) {
                Ok(b) => {
                    if let Some(id) = broadcast_id(&b.id) {
                        by_id.entry(id).or_default().insert(key.clone());
                    }
                    due.push(Reverse((b.due_ms, key.clone())));
                    channels
                        .entry(channel_of(&b))
                        .or_default()
                        .keys
                        .insert(key.clone());
                    let p = Pending {
                        broadcast: b,
                        sending: false,
                    };
                    pending.insert(key, p);
                }
                Err(e) => {
                    let domain = unreadable_domain(&value);
                    tracing::error!(
                        key = %hex(&key),
                        %domain,
                        "a stored broadcast cannot be read ({e}): deleted, it is not sent"
                    );
                    *counts
                        .entry((domain, "permanent", UNREADABLE.to_owned()))
                        .or_default() += 1;
                    unreadable.push(key);
                }
            }
        }
        if !pending.is_empty() {
            tracing::info!(
                count = pending.len(),
                "broadcasts from the previous run queued again"
            );
        }
        let (writes, queue) = std::sync::mpsc::channel();
        let writer_store = store.clone();
        let finishing = Arc::new(Finishing::default());
        let writer_finishing = finishing.clone();
        std::thread::Builder::new()
            .name("herald-broadcast-writer".into())
            .spawn(move || write_loop(writer_store, writer_finishing, queue))
            .map_err(|e| herald_spool::SpoolError::from_io("starting the broadcast writer", e))?;
        for key in unreadable {
            let _ = writes.send(Write::Finished { key, outcome: None });
        }
        let keep_outcomes = !outcome_retention(&resolver.config()).is_zero();
        let conns = Connections::new(resolver.clone(), Purpose::Broadcast, SEND_TIMEOUT);
        let me = Arc::new(Broadcaster {
            targets: Mutex::new(Targets::default()),
            targets_limit: AtomicUsize::new(TARGETS_LIMIT),
            writes,
            store,
            resolver,
            logs,
            due: Mutex::new(due),
            held: AtomicUsize::new(pending.len()),
            pending: Mutex::new(pending),
            channels: Mutex::new(channels),
            wake: Notify::new(),
            holding: AtomicBool::new(false),
            sending: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            conns,
            counts: Mutex::new(counts),
            seq: AtomicU64::new(first_seq(last_seq, now_ms())),
            by_id: Mutex::new(by_id),
            finishing,
            keep_outcomes,
        });
        tokio::spawn(me.clone().run());
        Ok(me)
    }

    /// Checks a broadcast, stores it durably and queues it; returns its stored form (its id among it).
    ///
    /// Once checked, the broadcast is stored and queued on a task of its own, which runs to its end even when the
    /// caller stops waiting for it (a client that hangs up mid-request drops its handler): a broadcast handed to
    /// the store is always queued as well, never left stored and unsent until the next start.
    pub async fn accept(
        self: &Arc<Self>,
        new: NewBroadcast,
    ) -> Result<Broadcast, BroadcastRefusal> {
        let domain = new.domain.trim().to_ascii_lowercase();
        let target = self.target(&domain).await?;
        let id = new
            .request_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let send = BroadcastSend {
            bundle_id: target.bundle_id.clone(),
            channel: new.channel.clone(),
            priority: new.priority,
            expiration: new.expiration,
            request_id: Some(id.clone()),
            payload: new.payload.clone(),
        };
        send.validate(None)
            .map_err(|e| BroadcastRefusal::Invalid(e.to_string()))?;
        let payload = String::from_utf8(new.payload.to_vec())
            .map_err(|_| BroadcastRefusal::Invalid("payload: not UTF-8".into()))?;
        let broadcast = Broadcast {
            id,
            domain,
            channel: new.channel.as_str().to_owned(),
            payload,
            priority: new.priority,
            expiration: new.expiration,
            accepted_at: now_ms() / 1000,
            retries: 0,
            due_ms: 0,
            last_reason: None,
        };
        let max = max_queued(&self.resolver.config());
        if let Err(held) = self
            .held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max).then_some(n + 1)
            })
        {
            return Err(BroadcastRefusal::Full { held, max });
        }
        let key = self.next_key();
        let me = self.clone();
        match tokio::spawn(async move {
            let result = me.store_and_queue(key, broadcast).await;
            if result.is_err() {
                me.held.fetch_sub(1, Ordering::SeqCst);
            }
            result
        })
        .await
        {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(BroadcastRefusal::NotDurable(
                "herald is stopping: the broadcast was not queued".into(),
            )),
        }
    }

    /// [`Broadcaster::accept`]'s store and queueing, on the task it spawned: stores `broadcast` synced under `key`,
    /// then queues it for its first attempt.
    async fn store_and_queue(
        &self,
        key: Vec<u8>,
        broadcast: Broadcast,
    ) -> Result<Broadcast, BroadcastRefusal> {
        let value = encode(&broadcast);
        let (done, stored) = tokio::sync::oneshot::channel();
        self.writes
            .send(Write::Store {
                key: key.clone(),
                value,
                done,
            })
            .map_err(|_| BroadcastRefusal::NotDurable("the broadcast writer has stopped".into()))?;
        stored
            .await
            .map_err(|_| BroadcastRefusal::NotDurable("the broadcast writer has stopped".into()))?
            .map_err(BroadcastRefusal::NotDurable)?;
        self.admit(&key, broadcast.clone());
        lock(&self.due).push(Reverse((0, key)));
        self.wake.notify_one();
        Ok(broadcast)
    }

    /// Waits until every store, retry state and deletion asked so far is written (at a stop, so that a broadcast
    /// that finished is not sent again at the next start). Those the store refused before are tried once more
    /// first; what is still not written is the error, also logged.
    pub async fn flush(&self) -> Result<(), FlushError> {
        let (done, written) = tokio::sync::oneshot::channel();
        let result = match self.writes.send(Write::Flush(done)) {
            Ok(()) => written.await.unwrap_or(Err(FlushError::WriterStopped)),
            Err(_) => Err(FlushError::WriterStopped),
        };
        if let Err(e) = &result {
            tracing::error!("flushing broadcasts: {e}");
        }
        result
    }

    /// At a stop, before [`Broadcaster::flush`]: starts no send any more (neither a new broadcast nor a due retry:
    /// they stay stored for the next start) and waits until no broadcast is being sent, or until `deadline`. A send
    /// cut off by the stop would have its outcome lost, and the broadcast, perhaps delivered, be sent again at the
    /// next start. Returns how many are still being sent.
    pub async fn hold(&self, deadline: std::time::Instant) -> usize {
        self.holding.store(true, Ordering::SeqCst);
        self.wake.notify_one();
        // Every permit free: nothing is being sent. A send starts only with a permit, and checks `holding` once it
        // has it, so none starts after this.
        let all = self.sending.acquire_many(MAX_IN_FLIGHT as u32);
        let _ = tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), all).await;
        self.in_flight()
    }

    /// Broadcasts being sent now.
    fn in_flight(&self) -> usize {
        MAX_IN_FLIGHT.saturating_sub(self.sending.available_permits())
    }

    /// Broadcasts accepted and not finished yet.
    pub fn queued(&self) -> usize {
        lock(&self.pending).len()
    }

    /// The broadcast families of `/metrics`.
    pub fn render_metrics(&self, out: &mut String) {
        out.push_str(
            "# HELP herald_broadcasts_total Broadcast attempts by domain and outcome (delivered, transient, permanent) and APNs reason.\n# TYPE herald_broadcasts_total counter\n",
        );
        for ((domain, outcome, reason), n) in lock(&self.counts).iter() {
            let _ = writeln!(
                out,
                "herald_broadcasts_total{{domain=\"{}\",outcome=\"{outcome}\",reason=\"{}\"}} {n}",
                crate::metrics::escape(domain),
                crate::metrics::escape(reason)
            );
        }
        let _ = write!(
            out,
            "# HELP herald_broadcasts_queued Broadcasts accepted and not finished.\n# TYPE herald_broadcasts_queued gauge\nherald_broadcasts_queued {}\n",
            self.queued()
        );
    }

    /// The domain's broadcast target under the configuration in force: resolved (off the async threads: it may
    /// read credential files) once per domain and configuration, and kept ([`Targets`]).
    async fn target(&self, domain: &str) -> Result<Arc<Target>, BroadcastRefusal> {
        let config = self.resolver.config();
        {
            let targets = lock(&self.targets);
            if targets
                .config
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, &config))
                && let Some(t) = targets.by_domain.get(domain)
            {
                return Ok(t.clone());
            }
        }
        let resolver = self.resolver.clone();
        let name = domain.to_owned();
        let target =
            tokio::task::spawn_blocking(move || resolve_for(&resolver, &name, Purpose::Broadcast))
                .await
                .unwrap_or_else(|e| {
                    Err(Unresolved::Unavailable(format!(
                        "resolving the domain failed: {e}"
                    )))
                })
                .map(Arc::new);
        // Kept only when resolved under the configuration still in force (a reload meanwhile: used once). The
        // targets of the configuration it replaced go, resolved or not this one.
        if Arc::ptr_eq(&self.resolver.config(), &config) {
            let mut targets = lock(&self.targets);
            let current = targets
                .config
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, &config));
            let full = targets.by_domain.len() >= self.targets_limit.load(Ordering::Relaxed)
                && !targets.by_domain.contains_key(domain);
            if !current || (target.is_ok() && full) {
                targets.by_domain.clear();
                targets.config = Some(config);
            }
            if let Ok(target) = &target {
                targets.by_domain.insert(domain.to_owned(), target.clone());
            }
        }
        target.map_err(|e| match e {
            Unresolved::Config(reason) => BroadcastRefusal::Domain {
                domain: domain.to_owned(),
                reason,
            },
            Unresolved::Unavailable(reason) => BroadcastRefusal::Unavailable {
                domain: domain.to_owned(),
                reason,
            },
        })
    }

    fn next_key(&self) -> Vec<u8> {
        self.seq
            .fetch_add(1, Ordering::Relaxed)
            .to_be_bytes()
            .to_vec()
    }

    /// Starts every due broadcast (at most [`MAX_IN_FLIGHT`] at once) and sleeps until the next is due; ends at a
    /// stop ([`Broadcaster::hold`]).
    async fn run(self: Arc<Self>) {
        loop {
            if self.holding.load(Ordering::SeqCst) {
                return;
            }
            let now = now_ms();
            let next = loop {
                let key = {
                    let mut due = lock(&self.due);
                    match due.peek() {
                        Some(Reverse((at, _))) if *at <= now => due.pop().map(|Reverse((_, k))| k),
                        Some(Reverse((at, _))) => break Some(*at),
                        None => break None,
                    }
                };
                let Some(key) = key else { break None };
                let Some(b) = self.claim(&key) else {
                    continue;
                };
                let Ok(permit) = self.sending.clone().acquire_owned().await else {
                    self.release(&key, b);
                    return;
                };
                if self.holding.load(Ordering::SeqCst) {
                    // Stopping: left due, and stored, for the next start.
                    let at = b.due_ms;
                    self.release(&key, b);
                    lock(&self.due).push(Reverse((at, key)));
                    return;
                }
                let me = self.clone();
                tokio::spawn(async move {
                    me.attempt(key, b).await;
                    drop(permit);
                });
            };
            let wait = next.map_or(Duration::from_secs(3600), |at| {
                Duration::from_millis(at.saturating_sub(now_ms()))
            });
            let _ = tokio::time::timeout(wait, self.wake.notified()).await;
        }
    }

    /// One attempt: send, then log, finish or reschedule, and count (once the deletion or retry state is queued for
    /// the writer). A broadcast that expired is finished as a permanent failure without an attempt
    /// ([`not_attempted`]).
    async fn attempt(&self, key: Vec<u8>, b: Broadcast) {
        let started = now_ms();
        let target = self.target(&b.domain).await;
        let secs = (started / 1000).saturating_sub(b.accepted_at);
        // The domain's retry schedule, as the device-push queue takes it, whether or not it can be sent to now: its
        // target's, or, when that cannot be resolved (credentials unreadable, the domain gone), the configuration's
        // ([`retry_schedule`]).
        let policy = match &target {
            Ok(t) => t.retry,
            Err(_) => retry_schedule(&self.resolver, &b.domain),
        };
        if let Some(why) = policy.not_attempted(b.expiration, b.accepted_at, started / 1000) {
            self.log(&b, 'P', secs, None, why, None);
            self.finish_counted(&key, &b, &Ending::failed(None, why), "permanent", why);
            return;
        }
        if let Some(newer) = self.superseded(&key, &b) {
            self.supersede(&key, &b, &newer, None);
            return;
        }
        let result = match target {
            Ok(target) => self.send(&target, &b).await.map(|r| (r, target)),
            Err(refusal) => Err(Failure {
                class: FailureClass::Transient,
                status: None,
                reason: match refusal {
                    BroadcastRefusal::Unavailable { .. } => DOMAIN_UNAVAILABLE.into(),
                    _ => "NotConfigured".into(),
                },
                text: refusal.to_string(),
            }),
        };
        match result {
            Ok((request_id, _)) => {
                self.log(&b, 'D', secs, None, "", request_id.as_deref());
                self.delivered(&key, &b);
                let ending = Ending {
                    delivered: true,
                    status: None,
                    text: "",
                    apns_id: Some(request_id.as_deref().unwrap_or(&b.id)),
                };
                self.finish_counted(&key, &b, &ending, "delivered", "");
            }
            Err(f) if f.class == FailureClass::Permanent => {
                self.log(&b, 'P', secs, f.status, &f.text, None);
                let ending = Ending::failed(f.status, &f.text);
                self.finish_counted(&key, &b, &ending, "permanent", &f.reason);
            }
            Err(f) => {
                // Counted once, as the attempt ends: transient when it is retried, permanent when it ends the
                // broadcast (retries used up, or `message_expiration` passed), on the domain's schedule even when
                // it could not be sent to at all.
                let decision = policy.after_failure(b.retries, Duration::from_secs(secs));
                // A newer broadcast of the channel delivered meanwhile: this one is not retried to come after it.
                if matches!(decision, RetryDecision::RetryIn(_))
                    && let Some(newer) = self.superseded(&key, &b)
                {
                    self.supersede(&key, &b, &newer, Some(&f.text));
                    return;
                }
                match decision {
                    RetryDecision::RetryIn(delay) => {
                        self.log(&b, 'T', secs, f.status, &f.text, None);
                        let mut next = b.clone();
                        next.retries += 1;
                        next.due_ms = due_after(now_ms(), delay);
                        next.last_reason = Some(bounded(&f.text));
                        // Its retry state goes to the writer before the attempt is counted: what the counts show is
                        // queued to be written (a flush after them writes it).
                        self.store_retry(&key, &next);
                        self.count(&b.domain, "transient", &f.reason);
                        self.retry_later(key, next);
                    }
                    RetryDecision::RetriesExhausted | RetryDecision::Expired => {
                        let why = if decision == RetryDecision::Expired {
                            "message_expiration passed"
                        } else {
                            "max_retries used up"
                        };
                        let text = format!("{} ({why})", f.text);
                        self.log(&b, 'P', secs, f.status, &text, None);
                        self.finish_counted(
                            &key,
                            &b,
                            &Ending::failed(f.status, &text),
                            "permanent",
                            &format!("{}Exhausted", f.reason),
                        );
                    }
                }
            }
        }
    }

    /// Sends `b` on the domain's connection (opened first when needed); the `apns-request-id` APNs answered.
    async fn send(&self, target: &Arc<Target>, b: &Broadcast) -> Result<Option<String>, Failure> {
        let channel = ChannelId::parse(&b.channel).map_err(|e| Failure {
            class: FailureClass::Permanent,
            status: None,
            reason: "BadChannelId".into(),
            text: e.to_string(),
        })?;
        let send = BroadcastSend {
            bundle_id: target.bundle_id.clone(),
            channel,
            priority: b.priority,
            expiration: b.expiration,
            request_id: Some(b.id.clone()),
            payload: Bytes::from(b.payload.clone()),
        };
        // A broadcast the server did not process is sent again at once, as never sent: no attempt counted, nothing
        // logged. Its stream refused (`REFUSED_STREAM`: the server over its stream limit, or one it lowered), on
        // the same connection, which the refusal says nothing against ([`Broadcaster::client`] gives it again while
        // it is open); above the last stream id of a GOAWAY, or not taken by a connection going away, on a new one.
        // A server that keeps refusing it ends the attempt as a transient failure after `MAX_UNPROCESSED_RESENDS`
        // resends, so that a connection refusing everything is not sent the broadcast again and again.
        let mut resends = 0;
        // Whether the broadcast was sent again after `ExpiredProviderToken` (once per attempt).
        let mut token_resent = false;
        loop {
            let client = self
                .client(&b.domain, target)
                .await
                .map_err(|e| failure(&e))?;
            let answer = tokio::time::timeout(SEND_TIMEOUT, client.broadcast(&send)).await;
            return match answer {
                Ok(Ok(request_id)) => Ok(request_id),
                Ok(Err(e)) if e.stream_refused() && resends < MAX_UNPROCESSED_RESENDS => {
                    resends += 1;
                    tracing::debug!(id = %b.id, domain = %b.domain, "broadcast's stream refused by APNs, unprocessed: sent again on the same connection: {e}");
                    continue;
                }
                Ok(Err(e)) if e.stream_refused() => {
                    // Refused every time it was sent: the attempt ends, and the connection that refused it last is
                    // dropped, so that the next attempt (or broadcast) tries a new one rather than one that may
                    // refuse everything. Calls on it still under way finish on it.
                    self.forget_connection(&b.domain, &client).await;
                    let mut f = failure(&e);
                    f.text = format!(
                        "APNs refused the broadcast's stream without processing it (sent {} times in this attempt, \
                         none processed): {e}",
                        resends + 1
                    );
                    Err(f)
                }
                Ok(Err(e)) if e.not_processed() && resends < MAX_UNPROCESSED_RESENDS => {
                    resends += 1;
                    tracing::debug!(id = %b.id, domain = %b.domain, "broadcast not processed by APNs, sent again on a new connection: {e}");
                    self.forget_connection(&b.domain, &client).await;
                    continue;
                }
                Ok(Err(e)) if e.token_expired().is_some() => {
                    let renewed = e.token_expired() == Some(true);
                    // APNs may stop serving a connection after this answer (docs/apns-protocol.md#http2-connection):
                    // it is dropped, and the broadcast sent again at once on a new one when the token was renewed,
                    // else it waits for the retry schedule.
                    self.forget_connection(&b.domain, &client).await;
                    if renewed && !token_resent {
                        token_resent = true;
                        tracing::debug!(id = %b.id, domain = %b.domain, "provider token renewed after ExpiredProviderToken, broadcast sent again on a new connection");
                        continue;
                    }
                    Err(failure(&e))
                }
                Ok(Err(e)) => {
                    // A refusal came over a working connection; a request refused before sending, or an answer
                    // herald could not read, says nothing against it. Any other failure drops this connection
                    // (not one another broadcast opened meanwhile).
                    // A token refused as changed too often on this connection would be refused on it again: the
                    // retry goes out on a new connection, whose first token is no update.
                    if !matches!(
                        e,
                        BroadcastClientError::Rejected { .. }
                            | BroadcastClientError::Request(_)
                            | BroadcastClientError::BadAnswer(_)
                    ) || e.token_updates_refused()
                    {
                        self.forget_connection(&b.domain, &client).await;
                    }
                    Err(failure(&e))
                }
                Err(_) => {
                    self.forget_connection(&b.domain, &client).await;
                    Err(Failure {
                        class: FailureClass::Transient,
                        status: None,
                        reason: "ResponseTimeout".into(),
                        text: format!("no answer within {} s", SEND_TIMEOUT.as_secs()),
                    })
                }
            };
        }
    }

    /// The domain's connection, opened when there is none, it closed, or the target changed (a reload).
    async fn client(
        &self,
        domain: &str,
        target: &Arc<Target>,
    ) -> Result<Lease, BroadcastClientError> {
        match self.conns.get(domain, target, None, None).await {
            Ok((client, _)) => Ok(client),
            Err(Unavailable::Connect(e)) => Err(e),
            // Not waited for with a bound: a call opening the connection is bounded by `SEND_TIMEOUT` itself.
            Err(Unavailable::Wait { secs }) => Err(BroadcastClientError::Timeout {
                host: target.endpoint.to_string(),
                secs,
            }),
        }
    }

    /// Drops the domain's connection if it is still `failed`'s: of the broadcasts that failed on one connection
    /// together, the first makes a new connection and the others use it rather than drop it in turn.
    async fn forget_connection(&self, domain: &str, failed: &BroadcastClient) {
        self.conns.forget(domain, failed).await;
    }

    /// Takes `b`, stored under `key`, into the unfinished broadcasts (stored, about to be queued).
    fn admit(&self, key: &[u8], b: Broadcast) {
        lock(&self.channels)
            .entry(channel_of(&b))
            .or_default()
            .keys
            .insert(key.to_vec());
        let id = broadcast_id(&b.id);
        let p = Pending {
            broadcast: b,
            sending: false,
        };
        lock(&self.pending).insert(key.to_vec(), p);
        if let Some(id) = id {
            lock(&self.by_id)
                .entry(id)
                .or_default()
                .insert(key.to_vec());
        }
    }

    /// The state of broadcast `id` while this broadcaster holds it (the newest of that id: queued or in flight), or
    /// its final outcome until the store has it.
    pub(crate) fn held_status(&self, id: u128) -> Option<BroadcastStatus> {
        let key = lock(&self.by_id)
            .get(&id)
            .and_then(|keys| keys.last().cloned());
        // Ended since: its outcome was in `finishing` before it left `pending`.
        if let Some(key) = key
            && let Some(p) = lock(&self.pending).get(&key)
        {
            return Some(pending_status(p));
        }
        lock(&self.finishing)
            .get(&broadcast_key(id))
            .map(|(_, s)| s.clone())
    }

    /// Claims an unfinished broadcast for an attempt, or to end it: `None` when it is finished or claimed already.
    fn claim(&self, key: &[u8]) -> Option<Broadcast> {
        let mut pending = lock(&self.pending);
        let p = pending.get_mut(key).filter(|p| !p.sending)?;
        p.sending = true;
        Some(p.broadcast.clone())
    }

    /// Gives back a claimed broadcast, `b` its state now: it waits for its next attempt.
    fn release(&self, key: &[u8], b: Broadcast) {
        if let Some(p) = lock(&self.pending).get_mut(key) {
            p.broadcast = b;
            p.sending = false;
        }
    }

    /// Hands `b`'s retry state (stored under `key`) to the writer; stores it here when the writer is gone.
    fn store_retry(&self, key: &[u8], b: &Broadcast) {
        let retry = Write::Retry {
            key: key.to_vec(),
            value: encode(b),
        };
        if let Err(std::sync::mpsc::SendError(Write::Retry { key, value })) =
            self.writes.send(retry)
            && let Err(e) = self.store.broadcast_update(&key, &value)
        {
            tracing::error!(id = %b.id, "a broadcast's retry could not be stored: {e}");
        }
    }

    /// Gives back `b` (stored under `key`, claimed by the attempt that just failed, its retry state stored): it
    /// waits for its next attempt, due at `b.due_ms`. Unless a newer broadcast of its channel was delivered while it
    /// was being sent ([`Broadcaster::delivered`] could not end it then): it ends at once, superseded, not at its
    /// retry. Whichever of this and [`Broadcaster::delivered`] claims it once given back ends it.
    fn retry_later(&self, key: Vec<u8>, b: Broadcast) {
        self.release(&key, b.clone());
        lock(&self.due).push(Reverse((b.due_ms, key.clone())));
        self.wake.notify_one();
        // `delivered` marks the newest delivered broadcast before it claims the older ones: either it claimed this
        // one after the release, or this sees the mark.
        if let Some(newer) = self.superseded(&key, &b)
            && let Some(b) = self.claim(&key)
        {
            self.supersede(&key, &b, &newer, None);
        }
    }

    /// The id of a newer broadcast of `b`'s channel delivered already, if any: `b` (stored under `key`) is then
    /// superseded.
    fn superseded(&self, key: &[u8], b: &Broadcast) -> Option<String> {
        let channels = lock(&self.channels);
        let (newest, id) = channels.get(&channel_of(b))?.delivered.as_ref()?;
        (newest.as_slice() > key).then(|| id.clone())
    }

    /// After `b` (stored under `key`) was delivered: it is its channel's newest delivered broadcast, unless a newer
    /// one was, and the channel's older broadcasts waiting for an attempt end at once, superseded (those being sent
    /// now end so as their attempt ends: [`Broadcaster::retry_later`]).
    fn delivered(&self, key: &[u8], b: &Broadcast) {
        let older: Vec<Vec<u8>> = {
            let mut channels = lock(&self.channels);
            let Some(order) = channels.get_mut(&channel_of(b)) else {
                return;
            };
            if order
                .delivered
                .as_ref()
                .is_none_or(|(newest, _)| newest.as_slice() < key)
            {
                order.delivered = Some((key.to_vec(), b.id.clone()));
            }
            order.keys.range(..key.to_vec()).cloned().collect()
        };
        for old in older {
            if let Some(older) = self.claim(&old) {
                self.supersede(&old, &older, &b.id, None);
            }
        }
    }

    /// Ends `b` (stored under `key`, claimed) unsent, as a permanent failure: `newer`, a newer broadcast of its
    /// channel, was delivered first. `after` is the failure of the attempt that just ended, if one did.
    fn supersede(&self, key: &[u8], b: &Broadcast, newer: &str, after: Option<&str>) {
        let secs = (now_ms() / 1000).saturating_sub(b.accepted_at);
        let mut text = format!(
            "superseded by a newer broadcast on the channel, delivered first ({newer}); not sent after it"
        );
        if let Some(failed) = after {
            let _ = write!(text, " (its last attempt: {failed})");
        }
        self.log(b, 'P', secs, None, &text, None);
        self.finish_counted(
            key,
            b,
            &Ending::failed(None, &text),
            "permanent",
            SUPERSEDED,
        );
    }

    /// Ends `b`, stored under `key`, as `ending` says: its final outcome and deletion go to the writer (the outcome
    /// readable by lookups from then on), then it is counted (`outcome`, `reason`), then it leaves the unfinished
    /// ones: once the counts show it, a flush writes its outcome and deletion, and once [`Broadcaster::queued`] no
    /// longer counts it, the counts show it. An entry it left in the due-time queue (one ended while waiting for its
    /// retry) goes with a pruning ([`prune`]).
    fn finish_counted(
        &self,
        key: &[u8],
        b: &Broadcast,
        ending: &Ending<'_>,
        outcome: &'static str,
        reason: &str,
    ) {
        let record = self.final_outcome(key, b, ending);
        self.hand_deletion(key, record);
        self.count(&b.domain, outcome, reason);
        self.leave(key);
    }

    /// `b`'s final outcome (stored under `key`, ended as `ending` says) for the outcome store, now readable by lookups
    /// ([`Finishing`]); `None` when outcomes are not kept (`outcome_retention = 0`) or its id is no UUID.
    fn final_outcome(&self, key: &[u8], b: &Broadcast, ending: &Ending<'_>) -> Option<Outcome> {
        let id = broadcast_id(&b.id).filter(|_| self.keep_outcomes)?;
        let finished_ms = now_ms();
        let status = BroadcastStatus {
            id: b.id.clone(),
            kind: BroadcastStatus::KIND.to_owned(),
            state: if ending.delivered {
                "delivered"
            } else {
                "failed"
            }
            .to_owned(),
            domain: b.domain.clone(),
            channel_id: b.channel.clone(),
            accepted_at: b.accepted_at,
            attempts: b.retries,
            last_reason: b.last_reason.clone(),
            next_attempt_at: None,
            finished_at: Some(finished_ms / 1000),
            apns_id: ending.apns_id.map(str::to_owned),
            reason: (!ending.delivered).then(|| bounded(ending.text)),
            status: ending.status,
        };
        let record = serde_json::to_vec(&status).ok()?;
        let outcome_key = broadcast_key(id);
        lock(&self.finishing).insert(outcome_key, (key.to_vec(), status));
        Some(Outcome {
            key: outcome_key,
            finished_ms,
            record,
        })
    }

    /// Hands the deletion of the broadcast stored under `key`, and its final outcome, to the writer thread (written
    /// with its next write: no store write on this thread). Written here when the writer is gone: the outcome first,
    /// and the deletion only once it is stored.
    fn hand_deletion(&self, key: &[u8], outcome: Option<Outcome>) {
        let finished = Write::Finished {
            key: key.to_vec(),
            outcome,
        };
        let Err(std::sync::mpsc::SendError(Write::Finished { key, outcome })) =
            self.writes.send(finished)
        else {
            return;
        };
        let mut unwritten = Unwritten::default();
        unwritten.add(Vec::new(), vec![(key, outcome)]);
        if let Err(e) = unwritten.write(&self.store, &self.finishing, Vec::new()) {
            tracing::error!(
                "a finished broadcast could not be removed from the store (after its final outcome is stored): {e}"
            );
        }
    }

    /// The broadcast stored under `key` leaves its channel's order, then the unfinished ones, in the same step as the
    /// due-time queue is pruned ([`prune`]): once [`Broadcaster::queued`] no longer counts it, the
    /// rest is done.
    fn leave(&self, key: &[u8]) {
        let channel = lock(&self.pending)
            .get(key)
            .map(|p| channel_of(&p.broadcast));
        if let Some(channel) = channel {
            let mut channels = lock(&self.channels);
            if let Some(order) = channels.get_mut(&channel) {
                order.keys.remove(key);
                if order.keys.is_empty() {
                    channels.remove(&channel);
                }
            }
        }
        let left = {
            let mut due = lock(&self.due);
            let mut pending = lock(&self.pending);
            let left = pending.remove(key);
            if left.is_some() {
                self.held.fetch_sub(1, Ordering::SeqCst);
            }
            prune(&mut due, &pending);
            left
        };
        if let Some(id) = left.and_then(|p| broadcast_id(&p.broadcast.id)) {
            let mut by_id = lock(&self.by_id);
            if let Some(keys) = by_id.get_mut(&id) {
                keys.remove(key);
                if keys.is_empty() {
                    by_id.remove(&id);
                }
            }
        }
    }

    fn count(&self, domain: &str, outcome: &'static str, reason: &str) {
        *lock(&self.counts)
            .entry((domain.to_owned(), outcome, reason.to_owned()))
            .or_default() += 1;
    }

    fn log(
        &self,
        b: &Broadcast,
        result: char,
        secs: u64,
        status: Option<u16>,
        error: &str,
        request_id: Option<&str>,
    ) {
        self.logs.broadcast(&crate::logs::BroadcastRecord {
            at: now_ms() / 1000,
            id: &b.id,
            domain: &b.domain,
            channel: &b.channel,
            result,
            retries: b.retries,
            secs,
            bytes: b.payload.len(),
            status,
            error,
            request_id,
        });
    }
}

/// How one attempt failed.
struct Failure {
    class: FailureClass,
    status: Option<u16>,
    /// A bounded label: APNs' reason or herald's own.
    reason: String,
    /// For the logs.
    text: String,
}

fn failure(e: &BroadcastClientError) -> Failure {
    let (status, reason) = match e {
        // A known reason, or one label for any other text the host sent (the log keeps the text).
        BroadcastClientError::Rejected { status, reason, .. } => {
            (Some(*status), reason_label(reason).to_owned())
        }
        BroadcastClientError::Request(_) => (None, "BadRequest".into()),
        BroadcastClientError::BadAnswer(_) => (None, "BadAnswer".into()),
        BroadcastClientError::Timeout { .. } => (None, "ResponseTimeout".into()),
        // Its stream refused unprocessed, as for a notification: the connection was sound.
        BroadcastClientError::Http { .. } if e.stream_refused() => (None, "StreamRefused".into()),
        BroadcastClientError::Connection(_)
        | BroadcastClientError::NotSent { .. }
        | BroadcastClientError::TokenRetired { .. }
        | BroadcastClientError::Http { .. } => (None, "ConnectionFailed".into()),
    };
    // APNs' reason alone for its refusals (the status has a field of its own), herald's words otherwise.
    let text = match e {
        BroadcastClientError::Rejected { reason, .. } => reason.clone(),
        other => other.to_string(),
    };
    Failure {
        class: e.class(),
        status,
        reason,
        text,
    }
}

/// The retry schedule of `domain` under the configuration in force, from its options alone (no credential file is
/// read, nothing can fail): the schedule of a broadcast whose domain's target cannot be resolved now, as a
/// notification's queue keeps its domain's schedule while its credentials cannot be read. The same options as a
/// resolved target's ([`resolve_for`]: the `default` binding's view of the domain).
///
/// A domain the configuration no longer names (a reload removed its stanza, or gave it another delivery method)
/// gets the schedule of the scopes around it, as any domain the configuration does not name (the `default`
/// binding's, then the global options; Momentum's defaults for what none sets), not the one it last resolved to.
/// That one would live in this process's memory only: after a restart, which sends the stored broadcast again, it
/// would be retried on another schedule than in a run that had resolved the domain before, and on different nodes
/// differently; and a schedule the operator removed (an unlimited `max_retries`, a long `message_expiration`) would
/// keep the broadcast on for as long as herald runs. The configuration in force is what every run and node reads
/// alike, and what the operator said last.
fn retry_schedule(resolver: &ConfigResolver, domain: &str) -> crate::model::retry::RetryPolicy {
    let settings = resolver.config().domain_settings(
        None,
        Some(crate::queue::message::DEFAULT_BINDING),
        domain,
    );
    crate::delivery::retry_policy(&settings)
}

/// `max_queued_broadcasts` of `config`.
fn max_queued(config: &herald_conf::Config) -> usize {
    config
        .eval_opt(
            &herald_conf::ScopePath::global(),
            herald_conf::Opt::MaxQueuedBroadcasts,
        )
        .ok()
        .and_then(|v| v.as_int())
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_MAX_QUEUED)
}

/// The state of an unfinished broadcast: in flight while an attempt holds it, else queued.
fn pending_status(p: &Pending) -> BroadcastStatus {
    let b = &p.broadcast;
    BroadcastStatus {
        id: b.id.clone(),
        kind: BroadcastStatus::KIND.to_owned(),
        state: if p.sending { "in_flight" } else { "queued" }.to_owned(),
        domain: b.domain.clone(),
        channel_id: b.channel.clone(),
        accepted_at: b.accepted_at,
        attempts: b.retries,
        last_reason: b.last_reason.clone(),
        next_attempt_at: (!p.sending && b.retries > 0).then(|| b.due_ms.div_ceil(1000)),
        finished_at: None,
        apns_id: None,
        reason: None,
        status: None,
    }
}

/// `outcome_retention` of `config`, as the status book takes it (read at start only).
fn outcome_retention(config: &herald_conf::Config) -> Duration {
    config
        .eval_opt(
            &herald_conf::ScopePath::global(),
            herald_conf::Opt::OutcomeRetention,
        )
        .ok()
        .and_then(|v| v.as_int())
        .and_then(|s| u64::try_from(s).ok())
        .map_or(
            crate::outcomes::book::DEFAULT_RETENTION,
            Duration::from_secs,
        )
}

/// `text` cut to at most [`MAX_REASON`] bytes (at a character boundary, marked with `…`).
fn bounded(text: &str) -> String {
    if text.len() <= MAX_REASON {
        return text.to_owned();
    }
    let mut end = MAX_REASON - '…'.len_utf8();
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

fn encode(b: &Broadcast) -> Vec<u8> {
    serde_json::to_vec(b).unwrap_or_default()
}

/// When a retry `delay` after `now_ms` is due, in Unix milliseconds: at most [`MAX_RETRY_DELAY`] ahead.
fn due_after(now_ms: u64, delay: Duration) -> u64 {
    let delay = u64::try_from(delay.min(MAX_RETRY_DELAY).as_millis()).unwrap_or(u64::MAX);
    now_ms.saturating_add(delay)
}

/// Drops the due-time queue's entries of finished broadcasts (ended while waiting for a retry: superseded) once the
/// queue holds more than twice as many entries as there are unfinished broadcasts (`pending`), each of which has at
/// most one: the queue stays bounded by the broadcasts held, and each entry dropped costs O(1) amortized. (The run
/// loop also drops such an entry when it comes due.)
fn prune(due: &mut BinaryHeap<Reverse<Due>>, pending: &HashMap<Vec<u8>, Pending>) {
    if due.len() > 2 * pending.len() {
        due.retain(|Reverse((_, key))| pending.contains_key(key));
    }
}

/// The (domain, channel id) of `b`.
fn channel_of(b: &Broadcast) -> ChannelKey {
    (b.domain.clone(), b.channel.clone())
}

/// The domain a stored broadcast that cannot be read names, when it is a JSON object with a string `domain`; else
/// empty.
fn unreadable_domain(value: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(value)
        .ok()
        .and_then(|v| v.get("domain")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn key_seq(key: &[u8]) -> u64 {
    <[u8; 8]>::try_from(key).map_or(0, u64::from_be_bytes)
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_apns::broadcast::StoragePolicy;
    use herald_sim::{Pki, RecordProtocol, SimConfig, SimHandle, Simulator};
    use std::pin::Pin;
    use std::task::Poll;
    use std::time::Instant;

    const TOPIC: &str = "com.example.unit";
    const DOMAIN: &str = "unit.example";
    const WAIT: Duration = Duration::from_secs(30);

    /// A simulator and a configuration whose domain [`DOMAIN`] broadcasts to it with token auth.
    struct Fixture {
        dir: tempfile::TempDir,
        sim: SimHandle,
        resolver: Arc<ConfigResolver>,
    }

    impl Fixture {
        /// `global` goes before the domain stanza, `domain` inside it.
        async fn new(global: &str, domain: &str) -> Fixture {
            Fixture::routed(global, domain, None).await.0
        }

        /// [`Fixture::new`], with the domain's broadcasts going to a [`RawApns`] started with `raw` when given.
        async fn routed(
            global: &str,
            domain: &str,
            raw: Option<RawOptions>,
        ) -> (Fixture, Option<RawApns>) {
            let dir = tempfile::tempdir().unwrap();
            let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
            let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
                .await
                .unwrap();
            let m = &pki.manifest;
            let raw = match raw {
                Some(options) => Some(RawApns::start(m, options).await),
                None => None,
            };
            let text = format!(
                r#"
{global}
domain "{DOMAIN}" {{
  delivery_method = apn
  routes = ( "https://127.0.0.1:{h2}" )
  tls_verify = ca
  tls_ca = "{ca}"
  apn_key = "{p8}"
  apn_key_id = "{kid}"
  apn_team_id = "{tid}"
  apn_topic = "{TOPIC}"
  apn_channel_route = "https://127.0.0.1:{manage}"
  apn_broadcast_route = "https://127.0.0.1:{bcast}"
{domain}
}}
"#,
                h2 = sim.addrs.h2.port(),
                manage = sim.addrs.management.port(),
                bcast = raw.as_ref().map_or(sim.addrs.broadcast.port(), |r| r.port),
                ca = m.ca_cert.display(),
                p8 = m.token_key.p8.display(),
                kid = m.token_key.key_id,
                tid = m.token_key.team_id,
            );
            let config = herald_conf::Config::parse_str("herald.conf", &text).unwrap();
            let fixture = Fixture {
                dir,
                sim,
                resolver: Arc::new(ConfigResolver::new(Arc::new(config))),
            };
            (fixture, raw)
        }

        fn store(&self) -> Arc<OutcomeStore> {
            Arc::new(OutcomeStore::open(&self.dir.path().join("spool")).unwrap())
        }

        async fn channel(&self) -> ChannelId {
            crate::channels::ChannelManager::new(self.resolver.clone())
                .create(DOMAIN, StoragePolicy::MostRecentMessage)
                .await
                .unwrap()
                .channel
        }

        fn broadcasts(&self) -> Vec<herald_sim::DeliveryRecord> {
            self.sim
                .record()
                .into_iter()
                .filter(|r| r.protocol == RecordProtocol::Broadcast)
                .collect()
        }
    }

    fn update(channel: &ChannelId, expiration: Option<u64>) -> NewBroadcast {
        NewBroadcast {
            domain: DOMAIN.into(),
            channel: channel.clone(),
            payload: Bytes::from_static(
                br#"{"aps":{"event":"update","timestamp":1700000000,"content-state":{"score":1}}}"#,
            ),
            priority: 10,
            expiration,
            request_id: None,
        }
    }

    async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// A client that hangs up once its broadcast was handed to the store drops the handler's future there: the
    /// broadcast is queued and sent all the same (it is not left stored and unsent until the next start).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broadcast_whose_caller_stops_waiting_after_the_store_is_still_sent() {
        let f = Fixture::new("", "").await;
        let channel = f.channel().await;
        let broadcaster =
            Broadcaster::start(f.store(), f.resolver.clone(), Logs::default()).unwrap();
        let key_before = broadcaster.seq.load(Ordering::Relaxed);
        let mut accept: Pin<Box<_>> = Box::pin(broadcaster.accept(update(&channel, None)));
        // Polled until it has taken its key, which it hands to the store in the same step, then dropped.
        let deadline = Instant::now() + WAIT;
        loop {
            let polled = std::future::poll_fn(|cx| Poll::Ready(accept.as_mut().poll(cx))).await;
            assert!(
                polled.is_pending(),
                "accept finished before the test could drop it: {polled:?}"
            );
            if broadcaster.seq.load(Ordering::Relaxed) != key_before {
                break;
            }
            assert!(Instant::now() < deadline, "accept never reached the store");
            tokio::task::yield_now().await;
        }
        drop(accept);
        wait_for("the broadcast in the simulator's record", || {
            f.broadcasts()
                .iter()
                .any(|r| r.channel_id.as_deref() == Some(channel.as_str()))
        })
        .await;
        wait_for("the broadcast to finish", || broadcaster.queued() == 0).await;
    }

    /// A clock behind the earlier run's (or a key stored ahead of it) never gives the first new broadcast the key of
    /// a stored one, which would replace it unsent.
    #[test]
    fn the_first_key_comes_after_every_stored_one() {
        let now = 1_800_000_000_000u64;
        assert_eq!(first_seq(0, now), now << 16);
        let stored_ahead = (now + 60_000) << 16;
        assert_eq!(first_seq(stored_ahead, now), stored_ahead + 1);
        assert_eq!(first_seq((now - 1) << 16, now), now << 16);
    }

    #[test]
    fn a_stored_broadcast_reads_back_and_older_records_get_defaults() {
        let b = Broadcast {
            id: "0b3f9e7e-6f2d-4c9a-9d4e-2f1a3b4c5d6e".into(),
            domain: "live.example".into(),
            channel: "dHN0LXNyY2gtY2hubA==".into(),
            payload: r#"{"aps":{"event":"update"}}"#.into(),
            priority: 10,
            expiration: None,
            accepted_at: 1_700_000_000,
            retries: 2,
            due_ms: 1_700_000_100_000,
            last_reason: Some("TooManyRequests".into()),
        };
        let back: Broadcast = serde_json::from_slice(&encode(&b)).unwrap();
        assert_eq!(back, b);
        // A record without the delivery state (as first written) decodes with retries 0 and due at once.
        let first: Broadcast = serde_json::from_str(
            r#"{"id":"x","domain":"d","channel":"c","payload":"{}","priority":5,"accepted_at":1}"#,
        )
        .unwrap();
        assert_eq!(
            (first.retries, first.due_ms, first.expiration),
            (0, 0, None)
        );
    }

    /// Expired broadcasts are finished without an attempt, with the notifications' reasons: one stored by an earlier
    /// run that outlived `message_expiration` meanwhile, one whose APNs expiration passed meanwhile, and a new one
    /// accepted with an expiration already past; a stored one still in time is sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_broadcasts_end_without_an_attempt() {
        let f = Fixture::new(
            "",
            "  message_expiration = 3600\n  never_attempt_expired_messages = true",
        )
        .await;
        let channel = f.channel().await;
        let store = f.store();
        let now = now_ms() / 1000;
        let stored = |n: u64, accepted_at: u64, expiration: Option<u64>| {
            let b = Broadcast {
                id: format!("00000000-0000-4000-8000-{n:012x}"),
                domain: DOMAIN.into(),
                channel: channel.as_str().to_owned(),
                payload: r#"{"aps":{"event":"update","timestamp":1700000000,"content-state":{}}}"#
                    .into(),
                priority: 10,
                expiration,
                accepted_at,
                retries: 0,
                due_ms: 0,
                last_reason: None,
            };
            (n.to_be_bytes().to_vec(), encode(&b))
        };
        store
            .broadcast_put(&[
                stored(1, now - 3600, None),
                stored(2, now - 10, Some(now - 5)),
                stored(3, now - 10, Some(now + 3600)),
            ])
            .unwrap();
        let broadcaster = Broadcaster::start(store, f.resolver.clone(), Logs::default()).unwrap();
        broadcaster
            .accept(update(&channel, Some(1)))
            .await
            .expect("a past expiration is not refused at the door");
        wait_for("every broadcast to finish", || broadcaster.queued() == 0).await;
        let sent: Vec<Option<String>> = f.broadcasts().into_iter().map(|r| r.apns_id).collect();
        assert_eq!(
            sent,
            [Some("00000000-0000-4000-8000-000000000003".to_owned())],
            "only the broadcast still in time is sent"
        );
        let mut metrics = String::new();
        broadcaster.render_metrics(&mut metrics);
        for (reason, n) in [
            ("Delivery not attempted (message expired)", 1),
            ("Delivery not attempted (APNs expiration passed)", 2),
        ] {
            let line = format!(
                "herald_broadcasts_total{{domain=\"{DOMAIN}\",outcome=\"permanent\",reason=\"{reason}\"}} {n}"
            );
            assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
        }
    }

    /// How [`RawApns`] treats the first request it gets.
    #[derive(Debug, Clone, Copy)]
    enum Refuse {
        /// `RST_STREAM(REFUSED_STREAM)`.
        Stream,
        /// GOAWAY with last stream id 0, and the connection closed.
        GoAway,
        /// `403 {"reason":"ExpiredProviderToken"}`, the connection kept open.
        ExpiredToken,
        /// `503 {"reason":"ServiceUnavailable"}`, the connection kept open.
        Unavailable,
        /// `429 {"reason":"TooManyProviderTokenUpdates"}`, the connection kept open.
        TokenUpdates,
    }

    /// How a [`RawApns`] behaves.
    #[derive(Debug, Clone, Copy, Default)]
    struct RawOptions {
        /// Its `SETTINGS_MAX_CONCURRENT_STREAMS`: a stream opened while as many others are open is refused.
        limit: Option<u32>,
        /// What the first request of all gets instead of `200`.
        first: Option<Refuse>,
        /// How long it takes to answer `200` once a request came in full.
        latency: Duration,
        /// Every request gets `RST_STREAM(REFUSED_STREAM)` (after the `first` refusal, if any).
        refuse_all: bool,
        /// The first connection, once it answered its first request, reads everything and answers nothing more,
        /// PINGs included, and stays open: a connection a NAT dropped without a word.
        silent_after_first: bool,
    }

    impl RawOptions {
        fn first(refuse: Refuse) -> RawOptions {
            RawOptions {
                first: Some(refuse),
                ..RawOptions::default()
            }
        }
    }

    /// A broadcast host on 127.0.0.1 (TLS with the fixture's server certificate, ALPN `h2`) that speaks HTTP/2 frame
    /// by frame: its SETTINGS first (with `SETTINGS_MAX_CONCURRENT_STREAMS` when it has a limit), then `200` to every
    /// request once its body came and the latency passed; the first request of all gets the `first` refusal instead,
    /// and a stream opened while `limit` others are open is refused and counted. It answers PINGs.
    struct RawApns {
        port: u16,
        connections: Arc<AtomicUsize>,
        answered: Arc<AtomicUsize>,
        over_limit: Arc<AtomicUsize>,
        /// Requests (streams opened) per connection, in the order the connections came.
        streams: Arc<Mutex<Vec<usize>>>,
        /// The connections that ended, in the order they did.
        ended: Arc<Mutex<Vec<usize>>>,
    }

    impl RawApns {
        async fn start(m: &herald_sim::PkiManifest, options: RawOptions) -> RawApns {
            let tls =
                herald_sim::TlsMaterial::from_files(&m.server_cert, &m.server_key, &m.ca_cert)
                    .unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(
                herald_sim::tls::server_config(&tls, false, true).unwrap(),
            );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let raw = RawApns {
                port: listener.local_addr().unwrap().port(),
                connections: Arc::default(),
                answered: Arc::default(),
                over_limit: Arc::default(),
                streams: Arc::default(),
                ended: Arc::default(),
            };
            let ended = raw.ended.clone();
            let first = Arc::new(Mutex::new(options.first));
            let counters = Counters {
                answered: raw.answered.clone(),
                over_limit: raw.over_limit.clone(),
                streams: raw.streams.clone(),
            };
            let connections = raw.connections.clone();
            tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    connections.fetch_add(1, Ordering::SeqCst);
                    let conn = {
                        let mut streams = lock(&counters.streams);
                        streams.push(0);
                        streams.len() - 1
                    };
                    let acceptor = acceptor.clone();
                    let (first, counters) = (first.clone(), counters.clone());
                    let ended = ended.clone();
                    tokio::spawn(async move {
                        if let Ok(tls) = acceptor.accept(tcp).await {
                            let _ = serve_raw(tls, options, &first, &counters, conn).await;
                            lock(&ended).push(conn);
                        }
                    });
                }
            });
            raw
        }

        /// Requests it got, over all connections.
        fn requests(&self) -> usize {
            lock(&self.streams).iter().sum()
        }
    }

    /// What a [`RawApns`] counts.
    #[derive(Clone)]
    struct Counters {
        answered: Arc<AtomicUsize>,
        over_limit: Arc<AtomicUsize>,
        streams: Arc<Mutex<Vec<usize>>>,
    }

    /// One connection of [`RawApns`], the `conn`th.
    async fn serve_raw<S>(
        mut io: S,
        options: RawOptions,
        first: &Mutex<Option<Refuse>>,
        counters: &Counters,
        conn: usize,
    ) -> std::io::Result<()>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        const DATA: u8 = 0x0;
        const HEADERS: u8 = 0x1;
        const RST_STREAM: u8 = 0x3;
        const SETTINGS: u8 = 0x4;
        const PING: u8 = 0x6;
        const GOAWAY: u8 = 0x7;
        const END_STREAM: u8 = 0x1;
        const ACK: u8 = 0x1;
        const END_HEADERS: u8 = 0x4;
        let limit = options.limit;
        // Set once the connection answers nothing more (`silent_after_first`).
        let mut silent = false;
        let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
            let len = (payload.len() as u32).to_be_bytes();
            let mut f = vec![len[1], len[2], len[3], kind, flags];
            f.extend_from_slice(&stream.to_be_bytes());
            f.extend_from_slice(payload);
            f
        };
        // `:status: 200`, index 8 of HPACK's static table.
        let ok = |stream: u32| frame(HEADERS, END_STREAM | END_HEADERS, stream, &[0x88]);
        let refused = |stream: u32| frame(RST_STREAM, 0, stream, &7u32.to_be_bytes());
        // `:status` (a literal without indexing, the name index 8), then the reason as the body.
        let refusal = |stream: u32, status: &[u8; 3], body: &[u8]| {
            let mut f = frame(
                HEADERS,
                END_HEADERS,
                stream,
                &[&[0x08, 3][..], status].concat(),
            );
            f.extend(frame(DATA, END_STREAM, stream, body));
            f
        };
        let mut preface = [0u8; 24];
        io.read_exact(&mut preface).await?;
        let settings = match limit {
            Some(n) => [&[0, 3][..], &n.to_be_bytes()].concat(),
            None => Vec::new(),
        };
        io.write_all(&frame(SETTINGS, 0, 0, &settings)).await?;
        io.flush().await?;
        // Streams whose request is coming, not answered yet.
        let mut open = std::collections::HashSet::new();
        loop {
            let mut head = [0u8; 9];
            io.read_exact(&mut head).await?;
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            io.read_exact(&mut payload).await?;
            if silent {
                if kind == HEADERS {
                    lock(&counters.streams)[conn] += 1;
                }
                continue;
            }
            let scripted = if kind == HEADERS {
                lock(&counters.streams)[conn] += 1;
                lock(first)
                    .take()
                    .or(options.refuse_all.then_some(Refuse::Stream))
            } else {
                None
            };
            let answer = match kind {
                SETTINGS if flags & ACK == 0 => Some(frame(SETTINGS, ACK, 0, &[])),
                PING if flags & ACK == 0 => Some(frame(PING, ACK, 0, &payload)),
                HEADERS => match scripted {
                    Some(Refuse::GoAway) => {
                        let goaway = frame(GOAWAY, 0, 0, &[0; 8]);
                        io.write_all(&goaway).await?;
                        io.shutdown().await?;
                        return Ok(());
                    }
                    Some(Refuse::Stream) => Some(refused(stream)),
                    Some(Refuse::ExpiredToken) => Some(refusal(
                        stream,
                        b"403",
                        br#"{"reason":"ExpiredProviderToken"}"#,
                    )),
                    Some(Refuse::Unavailable) => Some(refusal(
                        stream,
                        b"503",
                        br#"{"reason":"ServiceUnavailable"}"#,
                    )),
                    Some(Refuse::TokenUpdates) => Some(refusal(
                        stream,
                        b"429",
                        br#"{"reason":"TooManyProviderTokenUpdates"}"#,
                    )),
                    None if limit.is_some_and(|n| open.len() >= n as usize) => {
                        counters.over_limit.fetch_add(1, Ordering::SeqCst);
                        Some(refused(stream))
                    }
                    None if flags & END_STREAM != 0 => None,
                    None => {
                        open.insert(stream);
                        continue;
                    }
                },
                DATA if flags & END_STREAM != 0 && open.remove(&stream) => None,
                _ => continue,
            };
            // A request come in full is answered 200 once the latency passed.
            let out = match answer {
                Some(out) => out,
                None => {
                    if !options.latency.is_zero() {
                        tokio::time::sleep(options.latency).await;
                    }
                    counters.answered.fetch_add(1, Ordering::SeqCst);
                    silent = options.silent_after_first && conn == 0;
                    ok(stream)
                }
            };
            io.write_all(&out).await?;
            io.flush().await?;
        }
    }

    /// `herald_broadcasts_total` lines of `broadcaster` other than those of delivered broadcasts.
    fn not_delivered(broadcaster: &Broadcaster) -> Vec<String> {
        let mut metrics = String::new();
        broadcaster.render_metrics(&mut metrics);
        metrics
            .lines()
            .filter(|l| l.starts_with("herald_broadcasts_total{") && !l.contains("delivered"))
            .map(str::to_owned)
            .collect()
    }

    /// A broadcast APNs did not process is sent again at once and delivered, without an attempt counted: not after
    /// `retry_interval`. Its stream refused, on the same connection, which the refusal says nothing against (it is
    /// kept); above the last stream id of a GOAWAY, on a new connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broadcast_apns_did_not_process_is_sent_again_at_once() {
        for (refuse, connections) in [(Refuse::Stream, 1), (Refuse::GoAway, 2)] {
            let (f, raw) = Fixture::routed(
                "",
                "  retry_interval = 3600",
                Some(RawOptions::first(refuse)),
            )
            .await;
            let raw = raw.unwrap();
            let channel = ChannelId::parse("dHN0LXNyY2gtY2hubA==").unwrap();
            let broadcaster =
                Broadcaster::start(f.store(), f.resolver.clone(), Logs::default()).unwrap();
            broadcaster.accept(update(&channel, None)).await.unwrap();
            wait_for("the broadcast to be delivered", || {
                broadcaster.queued() == 0
            })
            .await;
            assert_eq!(raw.answered.load(Ordering::SeqCst), 1, "{refuse:?}");
            assert_eq!(
                raw.connections.load(Ordering::SeqCst),
                connections,
                "{refuse:?}"
            );
            assert_eq!(raw.requests(), 2, "{refuse:?}");
            assert!(
                not_delivered(&broadcaster).is_empty(),
                "{refuse:?}: {:?}",
                not_delivered(&broadcaster)
            );
            // The connection the broadcast was delivered on serves the next one.
            broadcaster.accept(update(&channel, None)).await.unwrap();
            wait_for("the next broadcast to be delivered", || {
                broadcaster.queued() == 0
            })
            .await;
            assert_eq!(raw.answered.load(Ordering::SeqCst), 2, "{refuse:?}");
            assert_eq!(
                raw.connections.load(Ordering::SeqCst),
                connections,
                "{refuse:?}"
            );
        }
    }

    /// A host that refuses every stream (without a GOAWAY) does not have a broadcast sent to it again and again: the
    /// attempt sends it `1 + MAX_UNPROCESSED_RESENDS` times, on the one connection, then ends as a transient failure
    /// (`StreamRefused`) retried on the domain's schedule; and the connection that refused it every time is not kept
    /// for the next attempt.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_host_refusing_every_stream_ends_the_attempt_after_a_bounded_number_of_sends() {
        let options = RawOptions {
            refuse_all: true,
            ..RawOptions::default()
        };
        let (f, raw) = Fixture::routed("", "  retry_interval = 3600", Some(options)).await;
        let raw = raw.unwrap();
        let channel = ChannelId::parse("dHN0LXNyY2gtY2hubA==").unwrap();
        let broadcaster =
            Broadcaster::start(f.store(), f.resolver.clone(), Logs::default()).unwrap();
        let accepted_ms = now_ms();
        broadcaster.accept(update(&channel, None)).await.unwrap();
        wait_for("the broadcast to wait for its retry", || {
            lock(&broadcaster.pending)
                .values()
                .any(|p| !p.sending && p.broadcast.retries == 1)
        })
        .await;
        assert_eq!(raw.requests(), 1 + MAX_UNPROCESSED_RESENDS as usize);
        assert_eq!(
            raw.connections.load(Ordering::SeqCst),
            1,
            "the refusals were sent again on the same connection"
        );
        assert_eq!(
            not_delivered(&broadcaster),
            [format!(
                "herald_broadcasts_total{{domain=\"{DOMAIN}\",outcome=\"transient\",reason=\"StreamRefused\"}} 1"
            )]
        );
        let due = lock(&broadcaster.pending)
            .values()
            .map(|p| p.broadcast.due_ms)
            .next()
            .unwrap();
        assert!(due >= accepted_ms + 3_600_000, "due at {due}");
        assert_eq!(
            broadcaster.conns.domains(),
            Vec::<String>::new(),
            "the connection that refused everything is kept"
        );
    }

    /// The domain's broadcast connection, unused for its `idle_timeout`, is closed and forgotten; the next broadcast
    /// opens a new one and is delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unused_broadcast_connection_closes_and_the_next_broadcast_opens_another() {
        let (f, raw) = Fixture::routed("", "  idle_timeout = 1", Some(RawOptions::default())).await;
        let raw = raw.unwrap();
        let channel = ChannelId::parse("dHN0LXNyY2gtY2hubA==").unwrap();
        let broadcaster =
            Broadcaster::start(f.store(), f.resolver.clone(), Logs::default()).unwrap();
        broadcaster.accept(update(&channel, None)).await.unwrap();
        wait_for("the first broadcast", || {
            raw.answered.load(Ordering::SeqCst) == 1
        })
        .await;
        wait_for("the idle connection to close", || {
            *lock(&raw.ended) == [0] && broadcaster.conns.domains().is_empty()
        })
        .await;
        broadcaster.accept(update(&channel, None)).await.unwrap();
        wait_for("the second broadcast", || {
            raw.answered.load(Ordering::SeqCst) == 2 && broadcaster.queued() == 0
        })
        .await;
        assert_eq!(*lock(&raw.streams), [1, 1], "requests per connection");
    }

    /// A kept broadcast connection that died without a word (the host reads everything and answers nothing, PINGs
    /// included, and keeps the socket open), long before its `idle_timeout`, does not take the next broadcast:
    /// nothing heard from it for the liveness threshold, its PING goes unanswered and it is closed and forgotten; the
    /// broadcast goes out on a new connection and is delivered at once, no failure counted, no retry waited for.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_kept_broadcast_connection_gone_silent_is_dropped_and_the_broadcast_goes_out_on_a_new_one()
     {
        let options = RawOptions {
            silent_after_first: true,
            ..RawOptions::default()
        };
        let (f, raw) = Fixture::routed(
            "",
            "  idle_timeout = 3600\n  retry_interval = 3600",
            Some(options),
        )
        .await;
        let raw = raw.unwrap();
        let channel = ChannelId::parse("dHN0LXNyY2gtY2hubA==").unwrap();
        let broadcaster =
            Broadcaster::start(f.store(), f.resolver.clone(), Logs::default()).unwrap();
        let silence = Duration::from_millis(300);
        broadcaster
            .conns
            .set_liveness(silence, Duration::from_millis(500));
        broadcaster.accept(update(&channel, None)).await.unwrap();
        wait_for("the first broadcast", || {
            raw.answered.load(Ordering::SeqCst) == 1 && broadcaster.queued() == 0
        })
        .await;
        wait_for("the kept connection to be silent for the threshold", || {
            broadcaster
                .conns
                .silent_for(DOMAIN)
                .is_some_and(|s| s >= silence)
        })
        .await;
        broadcaster.accept(update(&channel, None)).await.unwrap();
        wait_for("the second broadcast", || {
            raw.answered.load(Ordering::SeqCst) == 2 && broadcaster.queued() == 0
        })
        .await;
        assert_eq!(
            *lock(&raw.streams),
            [1, 1],
            "nothing sent on the silent connection"
        );
        assert_eq!(not_delivered(&broadcaster), Vec::<String>::new());
        wait_for("the silent connection to be closed", || {
            *lock(&raw.ended) == [0]
        })
        .await;
        assert_eq!(broadcaster.conns.domains(), [DOMAIN]);
    }

    /// A reload that removes the domain closes its broadcast connection, even one `idle_timeout = 0` keeps.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reload_that_removes_the_domain_closes_its_broadcast_connection() {
        let (f, raw) = Fixture::routed("", "  idle_timeout = 0", Some(RawOptions::default())).await;
        let raw = raw.unwrap();
        let channel = ChannelId::parse("dHN0LXNyY2gtY2hubA==").unwrap();
        let broadcaster =
            Broadcaster::start(f.store(), f.resolver.clone(), Logs::default()).unwrap();
        broadcaster.accept(update(&channel, None)).await.unwrap();
        wait_for("the broadcast", || raw.answered.load(Ordering::SeqCst) == 1).await;
        assert_eq!(broadcaster.conns.domains(), [DOMAIN]);
        let without = herald_conf::Config::parse_str("herald.conf", "").unwrap();
        f.resolver.replace(Arc::new(without));
        wait_for("the removed domain's connection to close", || {
            *lock(&raw.ended) == [0] && broadcaster.conns.domains().is_empty()
        })
        .await;
    }

    /// A broadcast whose domain cannot be sent to now (its provider key cannot be read) is retried on the domain's own
    /// schedule, as its notifications would be, not on the defaults: its retry is due after the domain's
    /// `retry_interval`, and one older than the domain's `message_expiration` ends without an attempt under its
    /// `never_attempt_expired_messages`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_domain_that_cannot_be_sent_to_now_keeps_its_own_retry_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
domain "{DOMAIN}" {{
  delivery_method = apn
  routes = ( "https://127.0.0.1:1" )
  apn_key = "{missing}"
  apn_key_id = "ABC123DEFG"
  apn_team_id = "DEF123GHIJ"
  apn_topic = "{TOPIC}"
  apn_broadcast_route = "https://127.0.0.1:1"
  retry_interval = 86400
  max_retry_interval = 86400
  message_expiration = 864000
  never_attempt_expired_messages = true
}}
"#,
            missing = dir.path().join("missing.p8").display()
        );
        let config = herald_conf::Config::parse_str("herald.conf", &text).unwrap();
        let resolver = Arc::new(ConfigResolver::new(Arc::new(config)));
        let store = Arc::new(OutcomeStore::open(&dir.path().join("spool")).unwrap());
        let (fresh, old) = (stored(1, 10), stored(2, 10));
        let mut aged: Broadcast = serde_json::from_slice(&old.1).unwrap();
        aged.accepted_at -= 11 * 86_400;
        store
            .broadcast_put(&[fresh.clone(), (old.0, encode(&aged))])
            .unwrap();
        let started_ms = now_ms();
        let broadcaster = Broadcaster::start(store.clone(), resolver, Logs::default()).unwrap();
        wait_for(
            "the fresh one to wait for its retry, the old one to end",
            || {
                let pending = lock(&broadcaster.pending);
                pending.len() == 1
                    && pending
                        .values()
                        .all(|p| !p.sending && p.broadcast.retries == 1)
            },
        )
        .await;
        assert_eq!(
            not_delivered(&broadcaster),
            [
                format!(
                    "herald_broadcasts_total{{domain=\"{DOMAIN}\",outcome=\"permanent\",reason=\"Delivery not attempted (message expired)\"}} 1"
                ),
                format!(
                    "herald_broadcasts_total{{domain=\"{DOMAIN}\",outcome=\"transient\",reason=\"DomainUnavailable\"}} 1"
                ),
            ]
        );
        broadcaster.flush().await.unwrap();
        let left = stored_now(&store);
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].retries, 1, "{left:?}");
        assert!(
            left[0].due_ms >= started_ms + 86_400_000,
            "due after the domain's retry_interval: {left:?}"
        );
    }

    /// A broadcast of a domain a reload removed (it cannot be resolved at all any more) is retried on the schedule the
    /// configuration in force gives a domain it does not name (here the global options), not on the one the domain
    /// last resolved to, which a restart would not know, nor on the defaults.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_domain_a_reload_removed_takes_the_configurations_schedule_not_its_last_one() {
        let global =
            "retry_interval = 86400\nmax_retry_interval = 86400\nmessage_expiration = 864000";
        let f = Fixture::new(global, "  retry_interval = 60").await;
        let store = f.store();
        let broadcaster =
            Broadcaster::start(store.clone(), f.resolver.clone(), Logs::default()).unwrap();
        let last = broadcaster.target(DOMAIN).await.unwrap();
        assert_eq!(last.retry.retry_interval, Duration::from_secs(60));
        // The reload: the domain's stanza is gone.
        let config = herald_conf::Config::parse_str("herald.conf", global).unwrap();
        f.resolver.replace(Arc::new(config));
        // Accepted just before the reload: stored and queued as `accept` does once the domain was checked.
        let (_, value) = stored(1, 10);
        let b: Broadcast = serde_json::from_slice(&value).unwrap();
        let key = broadcaster.next_key();
        broadcaster.held.fetch_add(1, Ordering::SeqCst);
        let started_ms = now_ms();
        broadcaster.store_and_queue(key, b).await.unwrap();
        wait_for("the broadcast to wait for its retry", || {
            lock(&broadcaster.pending)
                .values()
                .any(|p| !p.sending && p.broadcast.retries == 1)
        })
        .await;
        assert_eq!(
            not_delivered(&broadcaster),
            [format!(
                "herald_broadcasts_total{{domain=\"{DOMAIN}\",outcome=\"transient\",reason=\"NotConfigured\"}} 1"
            )]
        );
        let due = lock(&broadcaster.pending)
            .values()
            .map(|p| p.broadcast.due_ms)
            .next()
            .unwrap();
        assert!(
            due >= started_ms + 86_400_000,
            "due after the global retry_interval, at {due} (started {started_ms})"
        );
        assert!(
            lock(&broadcaster.targets).by_domain.is_empty(),
            "a target of the replaced configuration is kept"
        );
    }

    /// The targets kept are those of the configuration in force, and at most `targets_limit` of them: more domains
    /// than the limit (with APNs options at global scope every domain name resolves), or a reload, drop the others,
    /// and no configuration a reload replaced is kept alive by them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn resolved_targets_are_bounded_and_of_the_configuration_in_force() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
        let k = &pki.manifest.token_key;
        let text = format!(
            r#"
delivery_method = apn
routes = ( "https://127.0.0.1:1" )
apn_key = "{p8}"
apn_key_id = "{kid}"
apn_team_id = "{tid}"
apn_topic = "{TOPIC}"
apn_broadcast_route = "https://127.0.0.1:1"
"#,
            p8 = k.p8.display(),
            kid = k.key_id,
            tid = k.team_id,
        );
        let parse = || Arc::new(herald_conf::Config::parse_str("herald.conf", &text).unwrap());
        let first = parse();
        let resolver = Arc::new(ConfigResolver::new(first.clone()));
        let store = Arc::new(OutcomeStore::open(&dir.path().join("spool")).unwrap());
        let broadcaster = Broadcaster::start(store, resolver.clone(), Logs::default()).unwrap();
        broadcaster.targets_limit.store(2, Ordering::SeqCst);
        for n in 0..5 {
            broadcaster
                .target(&format!("d{n}.example"))
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(lock(&broadcaster.targets).by_domain.len() <= 2);
        }
        resolver.replace(parse());
        broadcaster.target("d0.example").await.unwrap();
        let targets = lock(&broadcaster.targets);
        assert_eq!(targets.by_domain.len(), 1);
        assert!(
            targets
                .config
                .as_ref()
                .is_some_and(|c| Arc::ptr_eq(c, &resolver.config()))
        );
        assert_eq!(
            Arc::strong_count(&first),
            1,
            "the replaced configuration is kept alive"
        );
    }

    /// Broadcasts due together on a new connection to a host that allows one stream at a time (as APNs does on a
    /// token connection not yet authenticated) keep to its limit: none is refused, all are delivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn broadcasts_due_together_keep_to_the_hosts_stream_limit() {
        const COUNT: u64 = 8;
        let options = RawOptions {
            limit: Some(1),
            ..RawOptions::default()
        };
        let (f, raw) = Fixture::routed("", "  retry_interval = 3600", Some(options)).await;
        let raw = raw.unwrap();
        let store = f.store();
        let stored: Vec<(Vec<u8>, Vec<u8>)> = (1..=COUNT)
            .map(|n| {
                let b = Broadcast {
                    id: format!("00000000-0000-4000-8000-{n:012x}"),
                    domain: DOMAIN.into(),
                    channel: "dHN0LXNyY2gtY2hubA==".into(),
                    payload:
                        r#"{"aps":{"event":"update","timestamp":1700000000,"content-state":{}}}"#
                            .into(),
                    priority: 10,
                    expiration: None,
                    accepted_at: now_ms() / 1000,
                    retries: 0,
                    due_ms: 0,
                    last_reason: None,
                };
                (n.to_be_bytes().to_vec(), encode(&b))
            })
            .collect();
        store.broadcast_put(&stored).unwrap();
        let broadcaster = Broadcaster::start(store, f.resolver.clone(), Logs::default()).unwrap();
        wait_for("every broadcast to be delivered", || {
            broadcaster.queued() == 0
        })
        .await;
        assert_eq!(raw.over_limit.load(Ordering::SeqCst), 0);
        assert_eq!(raw.answered.load(Ordering::SeqCst), COUNT as usize);
        assert!(
            not_delivered(&broadcaster).is_empty(),
            "{:?}",
            not_delivered(&broadcaster)
        );
    }

    /// A stop holds the broadcaster: the broadcast on its way to APNs when it comes (answered a second later) is
    /// waited for and its end stored, and one accepted meanwhile is not sent. After a restart on the same store,
    /// only the second is left to send: each reaches APNs once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stop_waits_for_the_broadcast_being_sent_and_starts_no_other() {
        let options = RawOptions {
            latency: Duration::from_secs(1),
            ..RawOptions::default()
        };
        let (f, raw) = Fixture::routed("", "  retry_interval = 3600", Some(options)).await;
        let raw = raw.unwrap();
        let channel = ChannelId::parse("dHN0LXNyY2gtY2hubA==").unwrap();
        let store = f.store();
        let first = Broadcaster::start(store.clone(), f.resolver.clone(), Logs::default()).unwrap();
        first.accept(update(&channel, None)).await.unwrap();
        wait_for("the broadcast on its way to APNs", || raw.requests() == 1).await;
        let grace = std::time::Instant::now() + WAIT;
        assert_eq!(first.hold(grace).await, 0, "a broadcast still being sent");
        assert_eq!(raw.answered.load(Ordering::SeqCst), 1);
        let during_the_stop = first.accept(update(&channel, None)).await.unwrap();
        first.flush().await.unwrap();
        let restarted = Broadcaster::start(store, f.resolver.clone(), Logs::default()).unwrap();
        let left: Vec<String> = lock(&restarted.pending)
            .values()
            .map(|p| p.broadcast.id.clone())
            .collect();
        assert_eq!(left, [during_the_stop.id], "left for the restart");
        wait_for("the restart to deliver it", || restarted.queued() == 0).await;
        assert_eq!(raw.requests(), 2, "each broadcast reaches APNs once");
    }

    /// `ExpiredProviderToken` for a token herald cannot renew yet (minted moments ago) is not answered by sending the
    /// broadcast again at once with that token: it is a transient failure on the retry schedule, and the connection
    /// that answered it is dropped, so the retry goes out on a new one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expired_token_drops_the_connection_and_takes_the_retry_schedule() {
        let options = RawOptions::first(Refuse::ExpiredToken);
        let (f, raw) = Fixture::routed("", "  retry_interval = 1", Some(options)).await;
        let raw = raw.unwrap();
        let channel = ChannelId::parse("dHN0LXNyY2gtY2hubA==").unwrap();
        let broadcaster =
            Broadcaster::start(f.store(), f.resolver.clone(), Logs::default()).unwrap();
        broadcaster.accept(update(&channel, None)).await.unwrap();
        wait_for("the broadcast to be delivered", || {
            broadcaster.queued() == 0
        })
        .await;
        assert_eq!(*lock(&raw.streams), [1, 1], "requests per connection");
        assert_eq!(
            not_delivered(&broadcaster),
            [format!(
                "herald_broadcasts_total{{domain=\"{DOMAIN}\",outcome=\"transient\",reason=\"ExpiredProviderToken\"}} 1"
            )]
        );
    }

    /// `429 TooManyProviderTokenUpdates` refuses the connection's token, not the broadcast: the connection is not
    /// kept (every later call on it would get the same answer) and the next broadcast goes out on a new one, whose
    /// first token is no update; a `503` on a connection says nothing against it, which is kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_token_update_drops_the_connection() {
        for (refuse, connections) in [(Refuse::TokenUpdates, 2), (Refuse::Unavailable, 1)] {
            let options = RawOptions::first(refuse);
            let (f, raw) = Fixture::routed("", "  retry_interval = 3600", Some(options)).await;
            let raw = raw.unwrap();
            let broadcaster =
                Broadcaster::start(f.store(), f.resolver.clone(), Logs::default()).unwrap();
            let first = ChannelId::parse("dHN0LXNyY2gtY2hubA==").unwrap();
            broadcaster.accept(update(&first, None)).await.unwrap();
            wait_for("the refusal", || raw.requests() == 1).await;
            let second = ChannelId::parse("c2Vjb25kLWNoYW5uZWw=").unwrap();
            broadcaster.accept(update(&second, None)).await.unwrap();
            wait_for("the second broadcast to be delivered", || {
                raw.answered.load(Ordering::SeqCst) == 1
            })
            .await;
            assert_eq!(
                raw.connections.load(Ordering::SeqCst),
                connections,
                "{refuse:?}"
            );
        }
    }

    /// An attempt is counted once in `herald_broadcasts_total`, by how it ended: a transient failure with no retry
    /// left ends the broadcast, and is counted as permanent only, not as transient as well.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_attempt_that_uses_up_the_retries_is_counted_once() {
        let options = RawOptions::first(Refuse::Unavailable);
        let (f, raw) = Fixture::routed("", "  max_retries = 0", Some(options)).await;
        let raw = raw.unwrap();
        let channel = ChannelId::parse("dHN0LXNyY2gtY2hubA==").unwrap();
        let broadcaster =
            Broadcaster::start(f.store(), f.resolver.clone(), Logs::default()).unwrap();
        broadcaster.accept(update(&channel, None)).await.unwrap();
        wait_for("the broadcast to end", || broadcaster.queued() == 0).await;
        assert_eq!(raw.requests(), 1, "one attempt, no retry");
        assert_eq!(
            not_delivered(&broadcaster),
            [format!(
                "herald_broadcasts_total{{domain=\"{DOMAIN}\",outcome=\"permanent\",reason=\"ServiceUnavailableExhausted\"}} 1"
            )]
        );
    }

    /// A retry delay too large for the clock (retry options take any number of seconds) is due a century ahead,
    /// not at a time wrapped around.
    #[test]
    fn a_retry_delay_too_large_is_due_a_century_ahead() {
        let now = 1_800_000_000_000u64;
        let century = 100 * 365 * 86_400 * 1000;
        assert_eq!(
            due_after(now, Duration::from_secs(i64::MAX as u64)),
            now + century
        );
        assert_eq!(due_after(now, Duration::from_secs(5)), now + 5000);
        assert_eq!(due_after(u64::MAX - 1, Duration::from_secs(5)), u64::MAX);
    }

    #[test]
    fn keys_sort_in_acceptance_order() {
        let a = 5u64.to_be_bytes().to_vec();
        let b = 6u64.to_be_bytes().to_vec();
        assert!(a < b);
        assert_eq!(key_seq(&b), 6);
    }

    /// A broadcast stored under key `n` for [`DOMAIN`]'s test channel, due at once.
    fn stored(n: u64, priority: u8) -> (Vec<u8>, Vec<u8>) {
        let b = Broadcast {
            id: format!("00000000-0000-4000-8000-{n:012x}"),
            domain: DOMAIN.into(),
            channel: "dHN0LXNyY2gtY2hubA==".into(),
            payload: r#"{"aps":{"event":"update","timestamp":1700000000,"content-state":{}}}"#
                .into(),
            priority,
            expiration: None,
            accepted_at: now_ms() / 1000,
            retries: 0,
            due_ms: 0,
            last_reason: None,
        };
        (n.to_be_bytes().to_vec(), encode(&b))
    }

    /// The broadcasts `store` holds, decoded.
    fn stored_now(store: &OutcomeStore) -> Vec<Broadcast> {
        store
            .broadcast_all()
            .unwrap()
            .iter()
            .map(|(_, v)| serde_json::from_slice(v).unwrap())
            .collect()
    }

    /// A delivered broadcast whose deletion the store refused (a failing disk) is not forgotten: a flush meanwhile
    /// says it is still stored, and once the store takes writes again the deletion is written, so that a restart
    /// does not send it again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deletion_the_store_refused_is_written_later() {
        let (f, raw) = Fixture::routed("", "", Some(RawOptions::default())).await;
        let raw = raw.unwrap();
        let store = f.store();
        store.broadcast_put(&[stored(1, 10)]).unwrap();
        store.refuse_writes(true);
        let broadcaster =
            Broadcaster::start(store.clone(), f.resolver.clone(), Logs::default()).unwrap();
        wait_for("the broadcast to be delivered", || {
            broadcaster.queued() == 0
        })
        .await;
        assert_eq!(raw.answered.load(Ordering::SeqCst), 1);
        match broadcaster.flush().await {
            Err(FlushError::NotWritten {
                finished: 1,
                retries: 0,
                ..
            }) => {}
            other => panic!("a flush with the deletion refused: {other:?}"),
        }
        store.refuse_writes(false);
        broadcaster.flush().await.unwrap();
        assert_eq!(
            stored_now(&store),
            [],
            "the delivered broadcast is still stored"
        );
        let restarted = Broadcaster::start(store, f.resolver.clone(), Logs::default()).unwrap();
        assert_eq!(restarted.queued(), 0, "sent again after a restart");
    }

    /// A broadcast's final outcome is stored before the broadcast leaves the store: while the store refuses writes
    /// (a failing disk) the delivered broadcast stays stored, its outcome is looked up from memory, and once the
    /// store takes writes again the outcome is stored and only then the broadcast deleted; a status book on the
    /// same store, and one after a restart, finds it there (delivered, with the `apns-request-id` APNs answered).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_final_outcome_is_stored_before_the_broadcast_leaves_the_store() {
        use crate::outcomes::book::{LookupError, StatusBook};
        use herald_spool::Lookup;
        // A store that refused writes reopens its keyspace at a later write (a pruning's, a writer's), and a read
        // meanwhile fails for now: such a read is made again, as a client would.
        let lookup = |book: &StatusBook, id| {
            book.lookup_broadcast(id).map_err(|e| match e {
                LookupError::Store(e) => e,
                other => panic!("{other}"),
            })
        };
        let (f, raw) = Fixture::routed("", "", Some(RawOptions::default())).await;
        let raw = raw.unwrap();
        let store = f.store();
        let (key, value) = stored(1, 10);
        let b: Broadcast = serde_json::from_slice(&value).unwrap();
        let id = broadcast_id(&b.id).unwrap();
        store.broadcast_put(&[(key, value)]).unwrap();
        store.refuse_writes(true);
        let book = StatusBook::new(store.clone(), Duration::from_secs(3600), 1_000_000);
        let broadcaster =
            readable(|| Broadcaster::start(store.clone(), f.resolver.clone(), Logs::default()))
                .await;
        book.attach_broadcasts(&broadcaster);
        wait_for("the broadcast to be delivered", || {
            broadcaster.queued() == 0
        })
        .await;
        assert_eq!(raw.answered.load(Ordering::SeqCst), 1);
        assert!(
            broadcaster.flush().await.is_err(),
            "written to a refusing store"
        );
        assert_eq!(
            readable(|| store.broadcast_all()).await.len(),
            1,
            "deleted with its outcome not stored"
        );
        assert_eq!(
            readable(|| store.lookup(&broadcast_key(id))).await,
            Lookup::Unknown
        );
        let held = readable(|| lookup(&book, id))
            .await
            .expect("found from memory");
        assert_eq!(
            (
                held.state.as_str(),
                held.kind.as_str(),
                held.channel_id.as_str()
            ),
            ("delivered", "broadcast", b.channel.as_str())
        );
        store.refuse_writes(false);
        broadcaster.flush().await.unwrap();
        assert_eq!(
            readable(|| store.broadcast_all()).await,
            [],
            "the delivered broadcast is still stored"
        );
        assert!(lock(&broadcaster.finishing).is_empty());
        assert!(lock(&broadcaster.by_id).is_empty());
        let Lookup::Found(record) = readable(|| store.lookup(&broadcast_key(id))).await else {
            panic!("the outcome is not stored");
        };
        let stored: BroadcastStatus = serde_json::from_slice(&record).unwrap();
        assert_eq!(stored, held);
        assert_eq!(stored.apns_id.as_deref(), Some(b.id.as_str()));
        assert!(stored.finished_at.is_some() && stored.reason.is_none());
        let restarted =
            readable(|| Broadcaster::start(store.clone(), f.resolver.clone(), Logs::default()))
                .await;
        assert_eq!(restarted.queued(), 0, "sent again after a restart");
        let again = StatusBook::new(store, Duration::from_secs(3600), 1_000_000);
        assert_eq!(readable(|| lookup(&again, id)).await, Some(stored));
    }

    /// What `read` answers once the store does not fail it for now (a temporary error: its keyspace being reopened).
    async fn readable<T>(mut read: impl FnMut() -> Result<T, herald_spool::SpoolError>) -> T {
        let deadline = Instant::now() + WAIT;
        loop {
            match read() {
                Ok(t) => return t,
                Err(e) if e.is_temporary() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    /// A broadcast is looked up from memory once accepted (queued, or in flight while it is sent); one waiting for
    /// its retry is `queued` with its attempts, the failure of the last one and when the next is due.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_broadcast_waiting_for_its_retry_is_queued_with_its_last_failure() {
        let options = RawOptions::first(Refuse::Unavailable);
        let (f, raw) = Fixture::routed("", "  retry_interval = 3600", Some(options)).await;
        let raw = raw.unwrap();
        let channel = ChannelId::parse("dHN0LXNyY2gtY2hubA==").unwrap();
        let store = f.store();
        let broadcaster =
            Broadcaster::start(store.clone(), f.resolver.clone(), Logs::default()).unwrap();
        let b = broadcaster.accept(update(&channel, None)).await.unwrap();
        let id = broadcast_id(&b.id).unwrap();
        let first = broadcaster.held_status(id).expect("held once accepted");
        assert!(
            matches!(first.state.as_str(), "queued" | "in_flight"),
            "{first:?}"
        );
        wait_for("the first attempt to fail", || {
            broadcaster
                .held_status(id)
                .is_some_and(|s| s.state == "queued" && s.attempts == 1)
        })
        .await;
        let waiting = broadcaster.held_status(id).unwrap();
        assert_eq!(
            waiting.last_reason.as_deref(),
            Some("ServiceUnavailable"),
            "{waiting:?}"
        );
        assert!(
            waiting
                .next_attempt_at
                .is_some_and(|at| at > now_ms() / 1000 + 3000),
            "{waiting:?}"
        );
        assert_eq!(raw.requests(), 1);
    }

    /// With `outcome_retention = 0` no broadcast outcome is stored (status lookups are off).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_outcome_is_stored_when_outcome_retention_is_0() {
        let (f, raw) =
            Fixture::routed("outcome_retention = 0", "", Some(RawOptions::default())).await;
        let raw = raw.unwrap();
        let store = f.store();
        let broadcaster =
            Broadcaster::start(store.clone(), f.resolver.clone(), Logs::default()).unwrap();
        let channel = ChannelId::parse("dHN0LXNyY2gtY2hubA==").unwrap();
        broadcaster.accept(update(&channel, None)).await.unwrap();
        wait_for("the broadcast to be delivered", || {
            broadcaster.queued() == 0
        })
        .await;
        broadcaster.flush().await.unwrap();
        assert_eq!(raw.answered.load(Ordering::SeqCst), 1);
        assert_eq!(stored_now(&store), []);
        assert_eq!(store.len(), 0, "an outcome stored");
    }

    /// A failure's text kept in a broadcast's state is bounded, cut at a character boundary.
    #[test]
    fn a_long_failure_text_is_cut_at_a_character_boundary() {
        assert_eq!(bounded("TooManyRequests"), "TooManyRequests");
        let page = "é".repeat(MAX_REASON);
        let cut = bounded(&page);
        assert!(
            cut.len() <= MAX_REASON && cut.ends_with('…'),
            "{}",
            cut.len()
        );
    }

    /// A retry state the store refused (a failing disk) is not forgotten: once the store takes writes again it is
    /// written, so that a restart finds the broadcast with its retry counted and due when the schedule says, not
    /// due at once with its retries counted from 0.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_state_the_store_refused_is_written_later() {
        let options = RawOptions::first(Refuse::Unavailable);
        let (f, raw) = Fixture::routed("", "  retry_interval = 3600", Some(options)).await;
        let raw = raw.unwrap();
        let store = f.store();
        store.broadcast_put(&[stored(1, 10)]).unwrap();
        store.refuse_writes(true);
        let broadcaster =
            Broadcaster::start(store.clone(), f.resolver.clone(), Logs::default()).unwrap();
        wait_for("the attempt to fail", || {
            !not_delivered(&broadcaster).is_empty()
        })
        .await;
        assert_eq!(raw.requests(), 1);
        match broadcaster.flush().await {
            Err(FlushError::NotWritten {
                finished: 0,
                retries: 1,
                ..
            }) => {}
            other => panic!("a flush with the retry state refused: {other:?}"),
        }
        store.refuse_writes(false);
        broadcaster.flush().await.unwrap();
        let left = stored_now(&store);
        assert_eq!(left.len(), 1, "{left:?}");
        assert_eq!(left[0].retries, 1, "{left:?}");
        assert!(left[0].due_ms > now_ms() + 3_000_000, "{left:?}");
    }

    /// A broadcast that waits for its retry while a newer one of its channel is delivered is not sent after it
    /// (APNs would keep the older one for the devices that come online): it ends at once, a permanent failure with
    /// its own reason, and its deletion is written. Nothing of the channel stays in memory.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_broadcast_waiting_for_its_retry_is_superseded_by_a_newer_one_delivered() {
        let options = RawOptions::first(Refuse::Unavailable);
        let (f, raw) = Fixture::routed("", "  retry_interval = 60", Some(options)).await;
        let raw = raw.unwrap();
        let channel = ChannelId::parse("dHN0LXNyY2gtY2hubA==").unwrap();
        let store = f.store();
        let broadcaster =
            Broadcaster::start(store.clone(), f.resolver.clone(), Logs::default()).unwrap();
        let older = broadcaster.accept(update(&channel, None)).await.unwrap();
        wait_for("the older one to wait for its retry", || {
            lock(&broadcaster.pending)
                .values()
                .any(|p| !p.sending && p.broadcast.retries == 1)
        })
        .await;
        broadcaster.accept(update(&channel, None)).await.unwrap();
        wait_for("both broadcasts to end", || broadcaster.queued() == 0).await;
        assert_eq!(raw.requests(), 2, "the older one was sent again");
        assert_eq!(raw.answered.load(Ordering::SeqCst), 1);
        assert_eq!(
            not_delivered(&broadcaster),
            [
                format!(
                    "herald_broadcasts_total{{domain=\"{DOMAIN}\",outcome=\"permanent\",reason=\"Superseded\"}} 1"
                ),
                format!(
                    "herald_broadcasts_total{{domain=\"{DOMAIN}\",outcome=\"transient\",reason=\"ServiceUnavailable\"}} 1"
                ),
            ]
        );
        broadcaster.flush().await.unwrap();
        assert_eq!(stored_now(&store), [], "{} left stored", older.id);
        assert!(lock(&broadcaster.channels).is_empty());
        assert!(
            lock(&broadcaster.due).is_empty(),
            "the older one's retry left queued"
        );
    }

    /// A broadcast still being sent when a newer one of its channel is delivered (so that the delivery cannot end
    /// it) ends superseded as soon as its attempt fails and its retry is scheduled, not at that retry: nothing of
    /// it is left queued, held, or stored. The attempt's end is played here step by step, as
    /// [`Broadcaster::attempt`] takes it, to have the delivery come in between for certain.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_older_broadcast_being_sent_when_a_newer_one_is_delivered_ends_as_its_attempt_fails()
    {
        let f = Fixture::new("", "  retry_interval = 60").await;
        let store = f.store();
        let broadcaster =
            Broadcaster::start(store.clone(), f.resolver.clone(), Logs::default()).unwrap();
        let (older, newer) = (stored(1, 10), stored(2, 10));
        store
            .broadcast_put(&[older.clone(), newer.clone()])
            .unwrap();
        // Taken in as accepted, but not queued: the run loop leaves them to the test.
        let decoded = |(key, value): &(Vec<u8>, Vec<u8>)| -> (Vec<u8>, Broadcast) {
            (key.clone(), serde_json::from_slice(value).unwrap())
        };
        let ((older_key, older), (newer_key, newer)) = (decoded(&older), decoded(&newer));
        for (key, b) in [(&older_key, &older), (&newer_key, &newer)] {
            broadcaster.held.fetch_add(1, Ordering::SeqCst);
            broadcaster.admit(key, b.clone());
        }
        // Both on their way to APNs; the newer one is delivered first.
        assert!(broadcaster.claim(&older_key).is_some());
        assert!(broadcaster.claim(&newer_key).is_some());
        broadcaster.delivered(&newer_key, &newer);
        let ending = Ending {
            delivered: true,
            status: None,
            text: "",
            apns_id: None,
        };
        broadcaster.finish_counted(&newer_key, &newer, &ending, "delivered", "");
        assert_eq!(broadcaster.queued(), 1, "the older one, being sent, ended");
        // The older one's attempt fails, transiently.
        let mut next = older.clone();
        next.retries += 1;
        next.due_ms = due_after(now_ms(), Duration::from_secs(60));
        broadcaster.store_retry(&older_key, &next);
        broadcaster.retry_later(older_key, next);
        assert_eq!(broadcaster.queued(), 0, "the older one waits for its retry");
        assert_eq!(broadcaster.held.load(Ordering::SeqCst), 0);
        assert!(lock(&broadcaster.due).is_empty(), "its retry left queued");
        assert!(lock(&broadcaster.channels).is_empty());
        assert_eq!(
            not_delivered(&broadcaster),
            [format!(
                "herald_broadcasts_total{{domain=\"{DOMAIN}\",outcome=\"permanent\",reason=\"Superseded\"}} 1"
            )]
        );
        broadcaster.flush().await.unwrap();
        assert_eq!(stored_now(&store), [], "left stored");
    }

    /// A broadcast refused before anything was sent (here one stored with a priority APNs does not take) keeps the
    /// domain's connection: the next broadcast goes out on it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_refused_before_sending_keeps_the_connection() {
        let (f, raw) = Fixture::routed("", "", Some(RawOptions::default())).await;
        let raw = raw.unwrap();
        let store = f.store();
        store.broadcast_put(&[stored(1, 7)]).unwrap();
        let broadcaster = Broadcaster::start(store, f.resolver.clone(), Logs::default()).unwrap();
        wait_for("the bad broadcast to end", || broadcaster.queued() == 0).await;
        assert_eq!(
            not_delivered(&broadcaster),
            [format!(
                "herald_broadcasts_total{{domain=\"{DOMAIN}\",outcome=\"permanent\",reason=\"BadRequest\"}} 1"
            )]
        );
        let channel = ChannelId::parse("dHN0LXNyY2gtY2hubA==").unwrap();
        broadcaster.accept(update(&channel, None)).await.unwrap();
        wait_for("the next one to be delivered", || broadcaster.queued() == 0).await;
        assert_eq!(raw.answered.load(Ordering::SeqCst), 1);
        assert_eq!(
            raw.connections.load(Ordering::SeqCst),
            1,
            "a new connection"
        );
    }

    /// A stored broadcast that cannot be read is deleted at the start (not read and logged again at every start),
    /// and counted; the others are sent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unreadable_stored_broadcast_is_deleted_and_counted() {
        let (f, raw) = Fixture::routed("", "", Some(RawOptions::default())).await;
        let raw = raw.unwrap();
        let store = f.store();
        let unreadable = br#"{"domain":"unit.example","payload":7}"#.to_vec();
        store
            .broadcast_put(&[(1u64.to_be_bytes().to_vec(), unreadable), stored(2, 10)])
            .unwrap();
        let broadcaster =
            Broadcaster::start(store.clone(), f.resolver.clone(), Logs::default()).unwrap();
        wait_for("the readable one to be delivered", || {
            broadcaster.queued() == 0
        })
        .await;
        broadcaster.flush().await.unwrap();
        assert_eq!(store.broadcast_all().unwrap(), []);
        assert_eq!(raw.answered.load(Ordering::SeqCst), 1);
        assert_eq!(
            not_delivered(&broadcaster),
            [format!(
                "herald_broadcasts_total{{domain=\"{DOMAIN}\",outcome=\"permanent\",reason=\"Unreadable\"}} 1"
            )]
        );
    }

    /// The `reason` label of a refusal is APNs' reason when it is one of the broadcast reasons, else one label
    /// for any other text (a proxy's page): the log keeps the text.
    #[test]
    fn an_unknown_reason_is_counted_under_one_label_and_logged_whole() {
        let rejected = |reason: &str| BroadcastClientError::Rejected {
            status: 502,
            reason: reason.into(),
            class: FailureClass::Transient,
        };
        let known = failure(&rejected("TooManyRequests"));
        assert_eq!(
            (known.reason.as_str(), known.text.as_str()),
            ("TooManyRequests", "TooManyRequests")
        );
        let page = "<html>502 Bad Gateway</html>";
        let other = failure(&rejected(page));
        assert_eq!(other.reason, herald_apns::client::UNRECOGNIZED_REASON);
        assert_eq!(other.text, page);
    }

    /// A domain whose credentials cannot be read now (its key file is missing) refuses a broadcast as a passing
    /// failure, to be tried again, not as a configuration mistake.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_domain_whose_key_cannot_be_read_refuses_for_now() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            r#"
domain "{DOMAIN}" {{
  delivery_method = apn
  routes = ( "https://127.0.0.1:1" )
  apn_key = "{missing}"
  apn_key_id = "ABC123DEFG"
  apn_team_id = "DEF123GHIJ"
  apn_topic = "{TOPIC}"
  apn_broadcast_route = "https://127.0.0.1:1"
}}
"#,
            missing = dir.path().join("missing.p8").display()
        );
        let config = herald_conf::Config::parse_str("herald.conf", &text).unwrap();
        let resolver = Arc::new(ConfigResolver::new(Arc::new(config)));
        let store = Arc::new(OutcomeStore::open(&dir.path().join("spool")).unwrap());
        let broadcaster = Broadcaster::start(store, resolver, Logs::default()).unwrap();
        let channel = ChannelId::parse("dHN0LXNyY2gtY2hubA==").unwrap();
        let refusal = broadcaster
            .accept(update(&channel, None))
            .await
            .unwrap_err();
        assert!(
            matches!(refusal, BroadcastRefusal::Unavailable { .. }),
            "{refusal:?}"
        );
        assert!(refusal.to_string().contains("missing.p8"), "{refusal}");
    }
}
