//! Outcome webhooks: each domain's final outcomes POSTed in batches to its `outcome_webhook_url`, signed with
//! HMAC-SHA256, retried with backoff until `outcome_webhook_max_age`, at least once across restarts.
//!
//! The delivery path only writes a small JSON event into its domain's open chunk ([`OutcomeListener`]); it never
//! waits: past [`HANDOFF`] waiting events new ones are dropped and counted. A writer thread takes the open chunks
//! every pass and appends each to its domain's queue in the outcome store (one store write that survives a crash
//! of the process; a chunk the store refuses is kept and tried again until it is stored, [`super::StoreRetry`],
//! while the events behind it wait within [`HANDOFF`]), keeping the newest chunks' events in memory; a sender task
//! per domain (all on the sender thread, away from the delivery workers; their store reads and writes on its blocking
//! pool, so that one queue's large read does not hold up the others) POSTs the oldest events (from memory, or read
//! back from the store after a restart or beyond [`QUEUE_CACHE_BYTES`] and [`CACHE_BYTES`]), and once the receiver
//! answered 2xx records how far the queue is done and deletes the chunks wholly behind that point. The chunks kept
//! by the store only are not listed one by one in memory: a run of them is one stretch (where it starts and ends),
//! so that a queue's memory is its cached events and a few bytes, however many chunks wait. A receiver that
//! answers `413`, or not within [`REQUEST_TIMEOUT`] once connected, gets smaller batches ([`BatchSize`]; a connection
//! not made within [`CONNECT_TIMEOUT`] is a failure like any other); an event it refuses alone, larger than its
//! limit as herald knows it, is dropped and counted. A receiver that is down keeps its events in its own
//! queue, bounded by `outcome_webhook_backlog`: beyond it the oldest are dropped with a counter and a log line; its
//! sender retries after a backoff with jitter ([`Backoff`]), so that the queues of a shared receiver that went down
//! do not all retry at once. After
//! a crash, the events of a partly delivered chunk that were sent after the last recorded point are sent again (at
//! least once, never lost). So is a batch whose 2xx comes after [`REQUEST_TIMEOUT`] or is lost in transit: herald
//! takes it for a failure and retries; receivers deduplicate by `id`. A graceful stop starts no batch and gives the
//! batches in flight the rest of the grace period for their answer, recorded as at any time
//! ([`Webhooks::finish_sending`]), so that a batch taken is not sent again after the restart. A failed request names
//! its receiver (password and query masked) and every cause, and is logged as a warning at most once a minute per
//! receiver, with one line when it takes batches again ([`FailureLog`]). A queue with nothing waiting for
//! [`RETIRE_AFTER`] retires (its sender ends, its rows leave the store, its counters stay, those of the
//! [`RETIRED_KEPT`] most recently retired), so that domains whose names keep changing do not grow memory for good;
//! its rows are deleted without holding the map of queues, so `/metrics` and the other senders go on meanwhile.
//!
//! The request: `POST` with `content-type: application/json`, body `{"outcomes": [event, …]}` (docs/openapi.yaml
//! `WebhookBatch`), headers `herald-timestamp: UNIX_SECONDS` and `herald-signature: v1=HEX` where HEX is
//! HMAC-SHA256 with the secret over `TIMESTAMP.BODY` (docs/api.md "Outcome webhooks").

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use herald_spool::{ChunkBuilder, HookChunk, OutcomeStore};
use hmac::{Hmac, KeyInit, Mac};
use rustc_hash::FxHashMap;
use sha2::Sha256;

use super::OutcomeListener;
use super::book::is_invalid_token;
use crate::logs::{OutcomeKind, OutcomeRecord};

/// Events waiting for the writer thread before new ones are dropped.
pub const HANDOFF: usize = 100_000;
/// Events per request at most (fewer after a receiver answered `413 Payload Too Large` or not in time: see
/// [`BatchSize`]).
pub const BATCH: usize = 500;
/// Bytes of events all queues together keep in memory for their senders, with what it takes to keep them (where
/// each event lies, the chunk's entry); chunks written beyond are read back from the store, and take no memory of
/// their own but a stretch's entry (a run of them is one entry, [`Chunks::push`]). Shared, so that many domains
/// whose receivers are down (a regex domain stanza lets clients choose domain names) cannot hold more between them.
pub const CACHE_BYTES: usize = 64 << 20;
/// Bytes of events one queue keeps in memory at most, within [`CACHE_BYTES`]: one receiver that is down leaves the
/// rest to the others.
pub const QUEUE_CACHE_BYTES: usize = 16 << 20;
/// The retired queues whose counters are kept (the most recently retired); an older one's are forgotten, its
/// metric series leave `/metrics`, and start again from 0 if the domain comes back.
pub const RETIRED_KEPT: usize = 1_000;
/// How often at most the error line for outcomes dropped as too large for the receiver is logged (the line says
/// how many were dropped since the last one).
const DROP_LOG_EVERY: Duration = Duration::from_secs(60);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request may take to connect (name lookup, TCP, TLS), within [`REQUEST_TIMEOUT`]: a receiver that
/// cannot be reached (a firewall that drops the packets) fails as a connection error, retried with the backoff,
/// never as a request not answered in time, which would shrink the batches.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a domain's queue stays with nothing waiting before it retires (its sender task ends, its rows leave the
/// store, its counters stay), and how long a domain's options and open chunk stay unused before they are forgotten
/// (resolved again at its next outcome): a regex domain with ever new names does not grow memory for good.
pub const RETIRE_AFTER: Duration = Duration::from_secs(600);
/// The first wait of a sender after a failure ([`Backoff`]), doubled at each failure in a row up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// How often at most a queue logs the outcomes it dropped as older than `outcome_webhook_max_age` (the line says how
/// many since the last one): after a long outage every batch read back may be stale.
const STALE_LOG_EVERY: Duration = Duration::from_secs(60);
/// How often at most the failures of requests to one receiver (URL) are logged as a warning: its first failure is,
/// then one line per this long at most, counting the failures since the last ([`FailureLog`]).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(60);
/// The receivers (URLs) whose failures [`FailureLog`] follows at most: beyond, those that have logged nothing for
/// [`FAILURE_LOG_EVERY`] are forgotten, and a failure of one more receiver is logged without being followed.
const FAILURE_LOG_URLS: usize = 1_000;

/// A domain's webhook options.
#[derive(Clone, PartialEq, Eq)]
pub struct HookSettings {
    pub url: String,
    pub secret: String,
    pub delivered: bool,
    pub failed: bool,
    pub invalid_token: bool,
    pub max_age: Duration,
    pub backlog: u64,
}

/// Everything but the secrets, as `config show` prints them: the secret shows as `"********"`, and so do the URL's
/// query and the password of its user information (herald_conf::secrets: `outcome_webhook_url` is a URL option).
impl std::fmt::Debug for HookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = herald_conf::secrets::mask_url_credentials(&self.url);
        f.debug_struct("HookSettings")
            .field("url", &url.as_deref().unwrap_or(&self.url))
            .field("secret", &"********")
            .field("delivered", &self.delivered)
            .field("failed", &self.failed)
            .field("invalid_token", &self.invalid_token)
            .field("max_age", &self.max_age)
            .field("backlog", &self.backlog)
            .finish()
    }
}

/// Resolves a domain's webhook options (`None`: the domain has no webhook).
pub type HookResolver = dyn Fn(&str) -> Option<Arc<HookSettings>> + Send + Sync;

/// One domain's queue, as kept in memory.
#[derive(Default)]
struct Queue {
    next_seq: AtomicU64,
    /// Events waiting (changed with `chunks` locked).
    len: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    failures: AtomicU64,
    last_error: Mutex<Option<String>>,
    chunks: Mutex<Chunks>,
    /// The head last recorded in the store. The writer's trim and the sender's advance compute their heads under
    /// `chunks` but record them after releasing it, in either order: each records under this lock, and never a
    /// head below it ([`record_head`]).
    stored_head: Mutex<u64>,
    /// The lowest first number of a chunk that may be stored still below the head: one whose deletion failed, or
    /// (0) anything an earlier run left. The queue's retirement deletes its rows from here or from the stored head,
    /// whichever is lower, not from the start, over the tombstones of every chunk delivered since the last
    /// compaction. `u64::MAX`: none.
    forget_from: AtomicU64,
    /// Its rows are being deleted ([`Webhooks::retire`]): the writer waits for that to end before it stores more
    /// of the domain's events (changed with [`Webhooks::queues`] locked).
    retiring: std::sync::atomic::AtomicBool,
    wake: tokio::sync::Notify,
    /// A reload: ends the sender's wait after a failure (its webhook may have changed).
    reload: tokio::sync::Notify,
}

/// The stored chunks of a queue that still hold waiting events.
#[derive(Default)]
struct Chunks {
    /// Every event numbered below this is done with (delivered or dropped).
    head: u64,
    /// Oldest first: chunks in memory, and between them stretches of chunks kept by the store only. Two stretches
    /// are never next to each other without a gap in the numbers between them ([`Chunks::push_stored`]), so there
    /// is at most one more stretch than chunks in memory: the entries are bounded by the memory bound, however many
    /// chunks wait in the store.
    live: VecDeque<Chunk>,
    /// Bytes charged for the chunks held in memory ([`Chunk::charge`]).
    cached: usize,
    /// Bytes all queues of the webhooks hold in memory ([`CACHE_BYTES`]); this queue's `cached` is part of it,
    /// given back as its chunks leave (and when the queue goes).
    budget: Arc<AtomicUsize>,
    /// The end (first number after) of the batch the sender has in flight, from the head; `None` between requests.
    sending: Option<u64>,
    /// Events of the batch in flight that the writer's trim passed meanwhile: they are counted by the receiver's
    /// answer (delivered on a 2xx, dropped otherwise), not as dropped by the trim.
    trimmed_in_flight: u64,
}

impl Drop for Chunks {
    fn drop(&mut self) {
        release(&self.budget, self.cached);
    }
}

/// A chunk held in memory, or a stretch of stored chunks numbered without gaps.
struct Chunk {
    /// A chunk's first number. A stretch's: at or below the first number of the first of its chunks the store may
    /// still hold (raised as the chunks before the head are deleted, [`Chunks::stretch_starts`]), so that a read
    /// from there finds the head's chunk and steps over few deleted ones.
    first_seq: u64,
    /// Up to the end (first number after) of the chunk or stretch.
    count: u64,
    /// The events, while in memory; `None` for a stretch (chunks restored at start, or written beyond
    /// [`QUEUE_CACHE_BYTES`] or [`CACHE_BYTES`]).
    events: Option<Cached>,
}

/// A chunk's events in memory: the stored bytes and where each event lies in them.
struct Cached {
    data: Bytes,
    spans: Box<[(u32, u32)]>,
}

impl Cached {
    fn event(&self, i: usize) -> Bytes {
        let (start, end) = self.spans[i];
        self.data.slice(start as usize..end as usize)
    }
}

impl Queue {
    fn stats(&self, domain: &str) -> HookStats {
        HookStats {
            domain: domain.to_owned(),
            backlog: self.len.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failures: self.failures.load(Ordering::Relaxed),
            last_error: lock(&self.last_error).clone(),
        }
    }
}

/// The memory a chunk of `events` events in `bytes` bytes takes in memory, as charged against [`CACHE_BYTES`]: its
/// bytes, where each event lies, and its entry.
fn charge_of(bytes: usize, events: usize) -> usize {
    bytes + events * std::mem::size_of::<(u32, u32)>() + std::mem::size_of::<Chunk>()
}

impl Chunk {
    fn end(&self) -> u64 {
        self.first_seq + self.count
    }

    /// What the chunk is charged while its events are in memory (0 for a stretch).
    fn charge(&self) -> usize {
        self.events
            .as_ref()
            .map_or(0, |e| charge_of(e.data.len(), e.spans.len()))
    }
}

/// What a move of the head left behind, for the store to delete ([`record_head`]).
#[derive(Debug, Default, PartialEq, Eq)]
struct Done {
    /// The first numbers of the chunks held in memory that are wholly behind the head.
    chunks: Vec<u64>,
    /// The stretches the head reached or passed, as (first number, end): their chunks wholly behind the head are
    /// deleted ([`OutcomeStore::hook_advance_over`]). The one the head is in ends at the head.
    stretches: Vec<(u64, u64)>,
}

impl Done {
    /// Adds what a later move of the head left behind: a stretch reached again is one range, to the later end.
    fn extend(&mut self, later: Done) {
        self.chunks.extend(later.chunks);
        for (from, until) in later.stretches {
            match self.stretches.last_mut() {
                Some(last) if last.0 == from => last.1 = last.1.max(until),
                _ => self.stretches.push((from, until)),
            }
        }
    }

    /// The lowest number of a chunk it names.
    fn lowest(&self) -> Option<u64> {
        let chunks = self.chunks.iter().copied();
        chunks.chain(self.stretches.iter().map(|s| s.0)).min()
    }
}

/// Where a sender finds the next events.
#[derive(Debug, PartialEq)]
enum Next {
    /// In memory: (number, event), oldest first.
    Events(Vec<(u64, Bytes)>),
    /// In the store, from this number on (a stretch's first).
    Stored(u64),
    Empty,
}

/// Takes `bytes` of the shared memory budget ([`CACHE_BYTES`]): false when they do not fit.
fn reserve(budget: &AtomicUsize, bytes: usize) -> bool {
    budget
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            used.checked_add(bytes).filter(|&n| n <= CACHE_BYTES)
        })
        .is_ok()
}

/// Gives `bytes` back to the shared memory budget.
fn release(budget: &AtomicUsize, bytes: usize) {
    let _ = budget.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
        Some(used.saturating_sub(bytes))
    });
}

impl Chunks {
    /// Chunks whose events in memory count against `budget`, shared by all queues.
    fn with_budget(budget: Arc<AtomicUsize>) -> Chunks {
        Chunks {
            head: 0,
            live: VecDeque::new(),
            cached: 0,
            budget,
            sending: None,
            trimmed_in_flight: 0,
        }
    }

    /// A chunk just stored, kept in memory while what the queue's chunks are charged stays within
    /// [`QUEUE_CACHE_BYTES`] and all queues' within [`CACHE_BYTES`], else left to the store ([`Chunks::push_stored`]).
    /// Kept in an allocation of its size exactly, so that the bytes counted are the bytes held: the writer
    /// allocates a domain's open chunk as large as its last (up to 256 KiB), which a chunk of a few events after a
    /// burst would otherwise keep.
    fn push(&mut self, first_seq: u64, chunk: ChunkBuilder) {
        let count = chunk.len() as u64;
        let charge = charge_of(chunk.as_bytes().len(), chunk.len());
        if self.cached + charge > QUEUE_CACHE_BYTES || !reserve(&self.budget, charge) {
            self.push_stored(first_seq, count);
            return;
        }
        self.cached += charge;
        let (data, spans) = chunk.into_parts();
        self.live.push_back(Chunk {
            first_seq,
            count,
            events: Some(Cached {
                data: Bytes::from(data.into_boxed_slice()),
                spans: spans.into_boxed_slice(),
            }),
        });
    }

    /// A stored chunk of `count` events from `first_seq` kept by the store only: it lengthens the last stretch when
    /// it follows it without a gap, and starts one otherwise.
    fn push_stored(&mut self, first_seq: u64, count: u64) {
        if let Some(last) = self.live.back_mut()
            && last.events.is_none()
            && last.end() == first_seq
        {
            last.count += count;
            return;
        }
        self.live.push_back(Chunk {
            first_seq,
            count,
            events: None,
        });
    }

    /// Up to `limit` of the oldest waiting events.
    fn next(&self, limit: usize) -> Next {
        let mut out = Vec::new();
        for c in &self.live {
            let from = self.head.max(c.first_seq);
            if from >= c.end() {
                continue;
            }
            let Some(events) = &c.events else {
                return if out.is_empty() {
                    Next::Stored(c.first_seq)
                } else {
                    Next::Events(out)
                };
            };
            for seq in from..c.end() {
                if out.len() >= limit {
                    return Next::Events(out);
                }
                out.push((seq, events.event((seq - c.first_seq) as usize)));
            }
        }
        if out.is_empty() {
            Next::Empty
        } else {
            Next::Events(out)
        }
    }

    /// Moves the head to `to` (never back): returns how many waiting events it passed and what it left behind for
    /// the store to delete (the chunks now wholly behind it leave memory).
    fn advance(&mut self, to: u64) -> (u64, Done) {
        let (mut passed, mut done) = (0, Done::default());
        if to <= self.head {
            return (passed, done);
        }
        while let Some(c) = self.live.front() {
            let from = self.head.max(c.first_seq);
            passed += c.end().min(to).saturating_sub(from);
            if c.end() > to {
                // A stretch the head is now in: its chunks before the head go.
                if c.events.is_none() && c.first_seq < to {
                    done.stretches.push((c.first_seq, to));
                }
                break;
            }
            match c.events {
                Some(_) => done.chunks.push(c.first_seq),
                None => done.stretches.push((c.first_seq, c.end())),
            }
            let charge = c.charge();
            self.cached -= charge;
            release(&self.budget, charge);
            self.live.pop_front();
        }
        self.head = to;
        // The entries of a backlog that drained leave no large allocation behind.
        if self.live.capacity() > 64 && self.live.len() < self.live.capacity() / 4 {
            self.live.shrink_to(self.live.len() * 2);
        }
        (passed, done)
    }

    /// The stretch that started at `from` starts at `start` now: the store deleted its chunks before that
    /// ([`record_head`]). Only the first entry can be that stretch (the head is in it); it has no effect when the
    /// head passed it meanwhile or another move of the head raised its start further.
    fn stretch_starts(&mut self, from: u64, start: u64) {
        if let Some(c) = self.live.front_mut()
            && c.events.is_none()
            && c.first_seq == from
            && start > from
            && start < c.end()
        {
            c.count = c.end() - start;
            c.first_seq = start;
        }
    }

    /// The writer's trim beyond the backlog: moves the head to `to` (never back). Returns how many waiting events it
    /// dropped, how many it passed in all, and what it left behind. Events of the batch in flight that it passes are
    /// not dropped yet: [`Chunks::sent`] hands them to the sender, which counts them by the answer.
    fn trim(&mut self, to: u64) -> (u64, u64, Done) {
        let (mut held, mut done) = (0, Done::default());
        if let Some(end) = self.sending {
            (held, done) = self.advance(to.min(end));
            self.trimmed_in_flight += held;
        }
        let (dropped, more) = self.advance(to);
        done.extend(more);
        (dropped, held + dropped, done)
    }

    /// The sender is about to POST the events numbered `first` up to `end`: marks them in flight. False when the
    /// writer's trim passed some of them since they were read (they are dropped): the sender reads again.
    fn start_sending(&mut self, first: u64, end: u64) -> bool {
        if self.head > first {
            return false;
        }
        self.sending = Some(end);
        self.trimmed_in_flight = 0;
        true
    }

    /// The receiver answered (or not) the batch in flight: how many of its events the writer's trim passed
    /// meanwhile.
    fn sent(&mut self) -> u64 {
        self.sending = None;
        std::mem::take(&mut self.trimmed_in_flight)
    }

    /// The head that passes the `n` oldest waiting events.
    fn head_after(&self, n: u64) -> u64 {
        let mut left = n;
        for c in &self.live {
            let from = self.head.max(c.first_seq);
            let waiting = c.end().saturating_sub(from);
            if left < waiting {
                return from + left;
            }
            left -= waiting;
        }
        self.live
            .back()
            .map_or(self.head, Chunk::end)
            .max(self.head)
    }
}

/// Figures of one domain's webhook, for `/metrics` and the console.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookStats {
    pub domain: String,
    pub backlog: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub failures: u64,
    pub last_error: Option<String>,
}

/// The counters of retired queues ([`RETIRE_AFTER`]), by domain: those of the [`RETIRED_KEPT`] most recently retired.
#[derive(Default)]
struct Retired {
    /// By domain: when it retired (an order, see `next`) and its counters.
    by_name: HashMap<String, (u64, HookStats)>,
    /// The domains by when they retired, oldest first.
    order: BTreeMap<u64, String>,
    next: u64,
}

impl Retired {
    /// Keeps the counters of a queue that retired, forgetting the least recently retired beyond [`RETIRED_KEPT`].
    fn insert(&mut self, stats: HookStats) {
        let at = self.next;
        self.next += 1;
        self.order.insert(at, stats.domain.clone());
        if let Some((before, _)) = self.by_name.insert(stats.domain.clone(), (at, stats)) {
            self.order.remove(&before);
        }
        while self.order.len() > RETIRED_KEPT {
            if let Some((_, domain)) = self.order.pop_first() {
                self.by_name.remove(&domain);
            }
        }
    }

    /// Takes back the counters of `domain`, whose queue comes again.
    fn take(&mut self, domain: &str) -> Option<HookStats> {
        let (at, stats) = self.by_name.remove(domain)?;
        self.order.remove(&at);
        Some(stats)
    }

    fn stats(&self) -> impl Iterator<Item = &HookStats> {
        self.by_name.values().map(|(_, s)| s)
    }
}

/// The outcome webhooks of a server.
pub struct Webhooks {
    store: Arc<OutcomeStore>,
    resolve: Box<HookResolver>,
    /// Per domain: its options as resolved, and the events written since the writer's last pass.
    domains: Mutex<Domains>,
    /// The writer thread, woken when the first event of a pass is written.
    writer: std::sync::OnceLock<std::thread::Thread>,
    queues: Mutex<HashMap<String, Arc<Queue>>>,
    /// Signalled (with `queues`) when a queue's retirement ends: the writer waits for it before it stores more
    /// events of that domain ([`Webhooks::queue`]).
    retire_done: std::sync::Condvar,
    /// Bytes of events all queues hold in memory ([`CACHE_BYTES`]).
    cached: Arc<AtomicUsize>,
    /// The counters of retired queues ([`RETIRE_AFTER`]), by domain: taken back by the queue when the domain's
    /// events come again. Locked after `queues` where both are.
    retired: Mutex<Retired>,
    /// [`RETIRE_AFTER`] (shorter in tests).
    retire_after: Duration,
    /// Events the writer has stored, against [`Domains::written`]: see [`Webhooks::flush`].
    stored: AtomicU64,
    /// The writer thread could not start or ended while the webhooks exist (see [`super::OutcomeWriter`]).
    writer_gone: std::sync::atomic::AtomicBool,
    handoff_dropped: AtomicU64,
    /// The sender thread's runtime, where every domain's sender task runs (see [`sender_thread`]).
    senders: tokio::runtime::Handle,
    /// Ends the sender thread when the webhooks go; `None` when the senders run on the main runtime.
    _stop_senders: Option<tokio::sync::oneshot::Sender<()>>,
    /// The client every webhook is POSTed with, or why it could not be built: then no webhook is sent, and each
    /// domain's queue keeps its events (within its backlog) with this error as its last one.
    http: Result<reqwest::Client, String>,
    /// The stop began ([`Webhooks::finish_sending`]): no sender starts a batch any more.
    stopping: std::sync::atomic::AtomicBool,
    /// Batches in flight: from just before a sender's request until its answer is recorded ([`InFlight`]).
    in_flight: AtomicUsize,
    /// Signalled when the last batch in flight ends.
    none_in_flight: tokio::sync::Notify,
    /// What the warnings about failed requests last said, by receiver.
    failure_log: Mutex<FailureLog>,
    /// Runs on the blocking pool just before the next retirement deletes its queue's rows (tests).
    #[cfg(test)]
    before_forget: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

/// What the delivery path writes to, behind one lock.
#[derive(Default)]
struct Domains {
    by_name: FxHashMap<Arc<str>, DomainHook>,
    /// Events in all open chunks.
    open_events: usize,
    /// Events written into open chunks since the start.
    written: u64,
}

#[derive(Default)]
struct DomainHook {
    /// `None` until resolved (again, after a reload); `Some(None)`: the domain has no webhook.
    settings: Option<Option<Arc<HookSettings>>>,
    /// Events not yet taken by the writer.
    open: ChunkBuilder,
    /// Resolved since the writer's last sweep (see [`RETIRE_AFTER`]).
    used: bool,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `v1=HEX`: HMAC-SHA256 with `secret` over `TIMESTAMP.BODY`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(3 + 64);
    out.push_str("v1=");
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The client webhooks are POSTed with: [`REQUEST_TIMEOUT`] per request ([`CONNECT_TIMEOUT`] of it to connect), and
/// no redirect followed (a
/// 301/302/303 would turn the POST into a GET without the outcomes, whose 2xx would take the batch for delivered;
/// it is a failure like any other non-2xx, retried). There is no fallback to a client without these: an error
/// names why it could not be built.
fn http_client() -> Result<reqwest::Client, String> {
    http_client_with(REQUEST_TIMEOUT)
}

/// The client with `timeout` per request, and [`CONNECT_TIMEOUT`] (half of `timeout` at most) to connect: the
/// connection fails before the request times out, so that [`answer`] tells the two apart.
fn http_client_with(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(CONNECT_TIMEOUT.min(timeout / 2))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| {
            format!("the webhook HTTP client could not be built ({e}): no webhook is sent")
        })
}

impl Webhooks {
    /// Webhooks over `store`, resuming the queues it holds, their senders on a thread of their own. Must be called
    /// inside a tokio runtime (the fallback for the senders when their thread cannot start). When the HTTP client
    /// cannot be built, that is logged as an error, and every domain's webhook reports it as its last error and
    /// sends nothing (its events wait in its queue, within its backlog).
    pub fn start(store: Arc<OutcomeStore>, resolve: Box<HookResolver>) -> Arc<Webhooks> {
        let http = http_client();
        if let Err(e) = &http {
            tracing::error!("{e}");
        }
        Self::start_with(store, resolve, http, RETIRE_AFTER)
    }

    fn start_with(
        store: Arc<OutcomeStore>,
        resolve: Box<HookResolver>,
        http: Result<reqwest::Client, String>,
        retire_after: Duration,
    ) -> Arc<Webhooks> {
        let (senders, stop_senders) = match sender_thread() {
            Ok((handle, stop)) => (handle, Some(stop)),
            Err(e) => {
                tracing::error!(
                    "cannot start the webhook sender thread ({e}): senders run on the main runtime"
                );
                (tokio::runtime::Handle::current(), None)
            }
        };
        let hooks = Arc::new(Webhooks {
            store: store.clone(),
            resolve,
            domains: Mutex::new(Domains::default()),
            writer: std::sync::OnceLock::new(),
            queues: Mutex::new(HashMap::new()),
            retire_done: std::sync::Condvar::new(),
            cached: Arc::default(),
            retired: Mutex::new(Retired::default()),
            retire_after,
            stored: AtomicU64::new(0),
            writer_gone: std::sync::atomic::AtomicBool::new(false),
            handoff_dropped: AtomicU64::new(0),
            senders,
            _stop_senders: stop_senders,
            http,
            stopping: std::sync::atomic::AtomicBool::new(false),
            in_flight: AtomicUsize::new(0),
            none_in_flight: tokio::sync::Notify::new(),
            failure_log: Mutex::new(FailureLog::default()),
            #[cfg(test)]
            before_forget: Mutex::new(None),
        });
        match store.hook_queues() {
            Ok(queues) => {
                for stored in queues {
                    let q = hooks.queue(&stored.name);
                    // An earlier run may have left chunks below the head (a deletion that failed, a chunk cut
                    // short, which the listing skips): the queue's retirement deletes its rows from the start.
                    q.forget_from.store(0, Ordering::Relaxed);
                    let mut chunks = lock(&q.chunks);
                    chunks.head = stored.head;
                    *lock(&q.stored_head) = stored.head;
                    let mut next = stored.head.max(1);
                    // In stretches: however many chunks wait, a few entries.
                    for (first_seq, count) in stored.chunks {
                        next = next.max(first_seq + count);
                        let waiting =
                            (first_seq + count).saturating_sub(stored.head.max(first_seq));
                        if waiting > 0 {
                            q.len.fetch_add(waiting, Ordering::Relaxed);
                            chunks.push_stored(first_seq, count);
                        }
                    }
                    drop(chunks);
                    q.next_seq.store(next, Ordering::Relaxed);
                    q.wake.notify_one();
                }
            }
            Err(e) => tracing::error!("reading the webhook queues: {e}"),
        }
        let weak = Arc::downgrade(&hooks);
        match std::thread::Builder::new()
            .name("herald-webhooks".into())
            .spawn(move || write_loop(weak))
        {
            Ok(handle) => {
                let _ = hooks.writer.set(handle.thread().clone());
            }
            Err(e) => {
                tracing::error!("cannot start the webhook writer thread: {e}");
                hooks.writer_gone.store(true, Ordering::Release);
            }
        }
        hooks
    }

    /// Waits (at most `within`) until every event written so far is in its queue in the store: at a graceful stop,
    /// so that the outcomes of the last deliveries are sent after the restart. False when the time ran out first. The
    /// store is synced then, stored or not (its writes are buffered: durable across a crash of the process, and
    /// across a power loss once synced).
    pub async fn flush(&self, within: Duration) -> bool {
        let target = lock(&self.domains).written;
        if let Some(writer) = self.writer.get() {
            writer.unpark();
        }
        let started = std::time::Instant::now();
        let reached = super::reached(&self.stored, target, within).await;
        super::sync_store(&self.store, within.saturating_sub(started.elapsed())).await;
        reached
    }

    /// At a graceful stop: from now on no sender starts a batch (what waits is sent after the restart), and the
    /// batches in flight get `within` for the receiver's answer, recorded as at any time (a 2xx moves the queue's
    /// head past the batch, in the store), so that a batch the receiver took is not sent again after the restart.
    /// Call it before [`Webhooks::flush`], whose sync makes those records durable. Returns how many batches were
    /// still unanswered when the time ran out: those are cut off as the process ends, and sent again after the
    /// restart (at least once).
    pub async fn finish_sending(&self, within: Duration) -> usize {
        self.stopping.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let none_left = self.none_in_flight.notified();
            tokio::pin!(none_left);
            // Registered before the count is read: the last batch's end cannot slip between the two.
            none_left.as_mut().enable();
            let left = self.in_flight.load(Ordering::SeqCst);
            if left == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, none_left).await.is_err() {
                return self.in_flight.load(Ordering::SeqCst);
            }
        }
    }

    /// A sender is about to POST a batch: counted in flight until the guard goes, or `None` once the stop began
    /// ([`Webhooks::finish_sending`]). Counted before the stop is looked at: either the stop sees this batch, or
    /// the batch sees the stop.
    fn batch_starts(&self) -> Option<InFlight<'_>> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let guard = InFlight(self);
        (!self.stopping.load(Ordering::SeqCst)).then_some(guard)
    }

    /// A request of `domain`'s sender to `url` failed with `error`: a warning, at most once per
    /// [`FAILURE_LOG_EVERY`] for the receiver ([`FailureLog`]).
    fn failed(&self, domain: &str, url: &str, error: &str) {
        let Some(failures) = lock(&self.failure_log).failed(url, Instant::now()) else {
            return;
        };
        // A request that failed names its receiver already; an answer it gave does not.
        let shown = herald_conf::secrets::mask_url_credentials(url);
        let shown = shown.as_deref().unwrap_or(url);
        let receiver = if error.contains(shown) {
            String::new()
        } else {
            format!(" (POST {shown})")
        };
        tracing::warn!(
            %domain, failures,
            "outcome webhook: {error}{receiver}; its outcomes wait in its queue and the request is retried with \
             backoff (`failures`: failed requests to this receiver since the last such line, at most one a minute)"
        );
    }

    /// A request of `domain`'s sender to `url` was taken: one line when its failures were logged.
    fn took(&self, domain: &str, url: &str) {
        let Some((failures, over)) = lock(&self.failure_log).took(url, Instant::now()) else {
            return;
        };
        let shown = herald_conf::secrets::mask_url_credentials(url);
        tracing::info!(
            %domain,
            "outcome webhook: {} takes outcomes again, after {failures} failed requests over {:?}",
            shown.as_deref().unwrap_or(url),
            Duration::from_millis(u64::try_from(over.as_millis()).unwrap_or(u64::MAX))
        );
    }

    /// Forgets the options resolved so far (after a configuration reload); events already written stay. Wakes
    /// every domain's sender: one whose webhook had been removed waits for a wake-up, and its webhook may be back;
    /// one waiting after a failure tries again at once (its URL may have been fixed; a new one starts its backoff
    /// again, [`Backoff::for_url`]).
    pub fn reconfigure(&self) {
        for d in lock(&self.domains).by_name.values_mut() {
            d.settings = None;
        }
        for q in lock(&self.queues).values() {
            q.wake.notify_one();
            q.reload.notify_one();
        }
    }

    fn settings(&self, domain: &Arc<str>) -> Option<Arc<HookSettings>> {
        let mut domains = lock(&self.domains);
        self.resolved(&mut domains, domain).0.clone()
    }

    /// The options of `domain` (resolved now if they are not yet) and its open chunk.
    fn resolved<'a>(
        &self,
        domains: &'a mut Domains,
        domain: &Arc<str>,
    ) -> (&'a Option<Arc<HookSettings>>, &'a mut ChunkBuilder) {
        if !domains.by_name.contains_key(domain) {
            domains
                .by_name
                .insert(domain.clone(), DomainHook::default());
        }
        let d = domains
            .by_name
            .get_mut(domain)
            .unwrap_or_else(|| unreachable!("inserted above"));
        d.used = true;
        let settings = d.settings.get_or_insert_with(|| (self.resolve)(domain));
        (settings, &mut d.open)
    }

    /// Runs a store call for a sender on the blocking pool of the senders' runtime: every domain's sender shares one
    /// thread, which a read of a large chunk or a write waiting for the journal (while another thread syncs it) would
    /// hold up for all of them.
    async fn store_call<T: Send + 'static>(
        &self,
        call: impl FnOnce() -> Result<T, herald_spool::SpoolError> + Send + 'static,
    ) -> Result<T, String> {
        self.senders
            .spawn_blocking(call)
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| r.map_err(|e| e.to_string()))
    }

    /// The queue of `domain`, created (with its sender task) on first use, or again after it retired (with the
    /// counters it had). While the domain's queue retires, waits until its rows are gone (a new queue numbers its
    /// events from the start) or it stays (its retirement failed): only the writer calls this, and its events wait
    /// meanwhile within [`HANDOFF`]; the lock is not held while it waits.
    fn queue(self: &Arc<Self>, domain: &str) -> Arc<Queue> {
        let mut queues = lock(&self.queues);
        while let Some(q) = queues.get(domain) {
            if !q.retiring.load(Ordering::Relaxed) {
                return q.clone();
            }
            queues = self
                .retire_done
                .wait(queues)
                .unwrap_or_else(|p| p.into_inner());
        }
        let before = lock(&self.retired).take(domain).unwrap_or_default();
        let q = Arc::new(Queue {
            next_seq: AtomicU64::new(1),
            forget_from: AtomicU64::new(u64::MAX),
            delivered: AtomicU64::new(before.delivered),
            dropped: AtomicU64::new(before.dropped),
            failures: AtomicU64::new(before.failures),
            last_error: Mutex::new(before.last_error),
            chunks: Mutex::new(Chunks::with_budget(self.cached.clone())),
            ..Queue::default()
        });
        queues.insert(domain.to_owned(), q.clone());
        self.senders.spawn(send_loop(
            Arc::downgrade(self),
            domain.to_owned(),
            q.clone(),
        ));
        q
    }

    /// Every domain's figures, by domain (retired queues' too, the [`RETIRED_KEPT`] most recent).
    pub fn stats(&self) -> Vec<HookStats> {
        // Both locked: a queue that retires or comes back meanwhile is counted once.
        let queues = lock(&self.queues);
        let mut out: Vec<HookStats> = queues.iter().map(|(d, q)| q.stats(d)).collect();
        out.extend(lock(&self.retired).stats().cloned());
        drop(queues);
        out.sort_by(|a, b| a.domain.cmp(&b.domain));
        out
    }

    /// Retires `domain`'s queue `q` when nothing waits in it and nothing but the map and its sender holds it (a
    /// writer storing into it holds it too, and takes it from the map under the same lock): forgets it in the
    /// store, keeps its counters, and removes it, so that its sender ends. A later event of the domain makes a new
    /// queue, numbered from the start. False when it stays.
    ///
    /// The store's write (a scan of the queue's rows from its head; a reopen first, should the store refuse
    /// writes) runs on the blocking pool with the map unlocked: `/metrics`, the console and the other senders go on
    /// meanwhile. The queue is marked retiring under the lock, so that the writer does not store into it nor make
    /// a new one of the name before its old rows are gone ([`Webhooks::queue`]); it leaves the map after the write.
    async fn retire(&self, domain: &str, q: &Arc<Queue>) -> bool {
        {
            let queues = lock(&self.queues);
            if !queues.get(domain).is_some_and(|x| Arc::ptr_eq(x, q)) || Arc::strong_count(q) != 2 {
                return false;
            }
            let chunks = lock(&q.chunks);
            if !chunks.live.is_empty() || q.len.load(Ordering::Relaxed) != 0 {
                return false;
            }
            q.retiring.store(true, Ordering::Relaxed);
        }
        let mut retiring = Retiring {
            hooks: self,
            domain,
            q,
            forgotten: false,
        };
        let from = q
            .forget_from
            .load(Ordering::Relaxed)
            .min(*lock(&q.stored_head));
        let (store, name) = (self.store.clone(), domain.to_owned());
        #[cfg(test)]
        let hook = lock(&self.before_forget).take();
        let forgotten = self
            .store_call(move || {
                #[cfg(test)]
                if let Some(hook) = hook {
                    hook();
                }
                store.hook_forget(&name, from)
            })
            .await;
        match forgotten {
            Ok(()) => retiring.forgotten = true,
            Err(e) => tracing::debug!(%domain, "an idle webhook queue stays: {e}"),
        }
        retiring.forgotten
    }

    /// Forgets the options and open chunk of every domain not resolved since the last sweep and with no event
    /// waiting for the writer (see [`RETIRE_AFTER`]).
    fn sweep_domains(&self) {
        let mut domains = lock(&self.domains);
        domains.by_name.retain(|_, d| {
            let keep = d.used || !d.open.is_empty();
            d.used = false;
            keep
        });
    }

    /// Events dropped before they reached a queue (the writer fell [`HANDOFF`] behind).
    pub fn handoff_dropped(&self) -> u64 {
        self.handoff_dropped.load(Ordering::Relaxed)
    }

    /// The Prometheus families of the webhooks.
    pub fn render_metrics(&self, out: &mut String) {
        let stats = self.stats();
        let family = |out: &mut String,
                      name: &str,
                      kind: &str,
                      help: &str,
                      get: &dyn Fn(&HookStats) -> u64| {
            out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
            for s in &stats {
                out.push_str(&format!(
                    "{name}{{domain=\"{}\"}} {}\n",
                    crate::metrics::escape(&s.domain),
                    get(s)
                ));
            }
        };
        family(
            out,
            "herald_webhook_backlog",
            "gauge",
            "Outcomes waiting for the domain's webhook receiver.",
            &|s| s.backlog,
        );
        family(
            out,
            "herald_webhook_delivered_total",
            "counter",
            "Outcomes the webhook receiver took (2xx).",
            &|s| s.delivered,
        );
        family(
            out,
            "herald_webhook_dropped_total",
            "counter",
            "Outcomes dropped: beyond outcome_webhook_backlog (those of a batch in flight once it is not taken), older \
             than outcome_webhook_max_age, or refused alone by the receiver as too large (413).",
            &|s| s.dropped,
        );
        family(
            out,
            "herald_webhook_failures_total",
            "counter",
            "Webhook requests that failed (no answer, timeout, non-2xx).",
            &|s| s.failures,
        );
    }
}

/// A batch a sender has in flight ([`Webhooks::batch_starts`]): uncounted when dropped, which wakes
/// [`Webhooks::finish_sending`] once none is left.
struct InFlight<'a>(&'a Webhooks);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.none_in_flight.notify_waiters();
        }
    }
}

/// A queue's retirement under way ([`Webhooks::retire`]): ends it however the retirement ends (its future may be
/// dropped with the runtime): the queue leaves the map when its rows were forgotten, and stays otherwise; either way
/// it is no longer retiring, and the writer waiting for it goes on.
struct Retiring<'a> {
    hooks: &'a Webhooks,
    domain: &'a str,
    q: &'a Arc<Queue>,
    /// The store forgot the queue's rows.
    forgotten: bool,
}

impl Drop for Retiring<'_> {
    fn drop(&mut self) {
        let mut queues = lock(&self.hooks.queues);
        if self.forgotten
            && queues
                .get(self.domain)
                .is_some_and(|x| Arc::ptr_eq(x, self.q))
        {
            queues.remove(self.domain);
            lock(&self.hooks.retired).insert(self.q.stats(self.domain));
        }
        self.q.retiring.store(false, Ordering::Relaxed);
        drop(queues);
        self.hooks.retire_done.notify_all();
    }
}

impl OutcomeListener for Webhooks {
    fn outcome(&self, r: &OutcomeRecord<'_>) {
        let n = r.notification;
        let kind = match r.kind {
            OutcomeKind::Transient => return,
            OutcomeKind::Delivered => "delivered",
            OutcomeKind::Permanent if is_invalid_token(r.status, r.error) => "invalid_token",
            OutcomeKind::Permanent => "failed",
        };
        let mut domains = lock(&self.domains);
        if domains.open_events >= HANDOFF {
            drop(domains);
            if self
                .handoff_dropped
                .fetch_add(1, Ordering::Relaxed)
                .is_multiple_of(10_000)
            {
                tracing::warn!(
                    "webhook outcomes are dropped: the webhook writer is {HANDOFF} behind"
                );
            }
            return;
        }
        let (settings, open) = self.resolved(&mut domains, &n.domain);
        let Some(settings) = settings else {
            return;
        };
        let wanted = match kind {
            "delivered" => settings.delivered,
            "invalid_token" => settings.invalid_token,
            _ => settings.failed,
        };
        if !wanted {
            return;
        }
        // Written in place into the domain's open chunk (no intermediate JSON value, no buffer of its own): this
        // runs for every outcome on the delivery path.
        open.push_with(|event| {
            let mut num = itoa::Buffer::new();
            event.extend_from_slice(b"{\"id\":\"");
            event.extend_from_slice(n.id.text().as_bytes());
            event.extend_from_slice(b"\",\"outcome\":\"");
            event.extend_from_slice(kind.as_bytes());
            event.extend_from_slice(b"\",\"domain\":");
            json_str(event, &n.domain);
            event.extend_from_slice(b",\"token\":\"");
            hex(event, n.push.token.as_bytes());
            event.extend_from_slice(b"\",\"accepted_at\":");
            event.extend_from_slice(num.format(n.received_at).as_bytes());
            event.extend_from_slice(b",\"finished_at\":");
            event.extend_from_slice(num.format(r.at).as_bytes());
            event.extend_from_slice(b",\"attempts\":");
            event.extend_from_slice(num.format(r.retries).as_bytes());
            if let Some(tx) = r.transaction_id {
                event.extend_from_slice(b",\"apns_id\":");
                json_str(event, tx);
            }
            // What APNs adds: the id of the push in its development-environment console (delivered), and when
            // the token became invalid (410 Unregistered).
            if let Some(unique) = r.apns_unique_id {
                event.extend_from_slice(b",\"apns_unique_id\":");
                json_str(event, unique);
            }
            if let Some(at) = r.apns_timestamp_ms {
                event.extend_from_slice(b",\"unregistered_at_ms\":");
                event.extend_from_slice(num.format(at).as_bytes());
            }
            if kind != "delivered" {
                event.extend_from_slice(b",\"reason\":");
                json_str(event, r.error);
                if let Some(s) = r.status {
                    event.extend_from_slice(b",\"status\":");
                    event.extend_from_slice(num.format(s).as_bytes());
                }
            }
            event.push(b'}');
        });
        domains.open_events += 1;
        domains.written += 1;
        let first = domains.open_events == 1;
        drop(domains);
        if first && let Some(writer) = self.writer.get() {
            writer.unpark();
        }
    }
}

impl super::OutcomeWriter for Webhooks {
    fn handed(&self) -> u64 {
        lock(&self.domains).written
    }

    fn stored(&self) -> u64 {
        if self.writer_gone.load(Ordering::Acquire) {
            return u64::MAX;
        }
        self.stored.load(Ordering::Acquire)
    }
}

/// Appends `bytes` as lowercase hex.
fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let start = out.len();
    out.resize(start + 2 * bytes.len(), 0);
    for (pair, b) in out[start..].chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[(b >> 4) as usize];
        pair[1] = DIGITS[(b & 0xf) as usize];
    }
}

/// Takes the open chunks every pass and appends each to its domain's queue in the store, enforcing the backlog
/// bound; after a pass that took something, lets [`super::WRITER_PAUSE`] pass before the next (the delivery path
/// writes on meanwhile without waking it), and after an empty one sleeps until the next first event. Ends when the
/// webhooks are gone.
fn write_loop(hooks: Weak<Webhooks>) {
    let mut retry = super::StoreRetry::new("webhook outcomes");
    let owner = hooks.clone();
    let _exit = super::OnExit(move || {
        if let Some(hooks) = owner.upgrade() {
            tracing::error!(
                "the webhook writer thread ended; webhook outcomes are no longer stored"
            );
            hooks.writer_gone.store(true, Ordering::Release);
        }
    });
    let mut swept = std::time::Instant::now();
    loop {
        let Some(h) = hooks.upgrade() else {
            return;
        };
        if swept.elapsed() >= h.retire_after {
            h.sweep_domains();
            swept = std::time::Instant::now();
        }
        let taken: Vec<(Arc<str>, ChunkBuilder)> = {
            let mut domains = lock(&h.domains);
            domains.open_events = 0;
            domains
                .by_name
                .iter_mut()
                .filter(|(_, d)| !d.open.is_empty())
                .map(|(name, d)| {
                    // Sized like the last pass, within reason: an idle domain keeps no burst's buffer.
                    let capacity = d.open.as_bytes().len().min(256 << 10);
                    let chunk =
                        std::mem::replace(&mut d.open, ChunkBuilder::with_capacity(capacity));
                    (name.clone(), chunk)
                })
                .collect()
        };
        if taken.is_empty() {
            drop(h);
            // Woken by the next first event; the timeout notices the webhooks going away.
            std::thread::park_timeout(Duration::from_secs(1));
            continue;
        }
        // Numbered once: a chunk the store refuses is tried again under the same numbers.
        let n: u64 = taken.iter().map(|(_, c)| c.len() as u64).sum();
        let mut pending: Vec<Pending> = taken
            .into_iter()
            .map(|(domain, chunk)| {
                let q = h.queue(&domain);
                let first_seq = q.next_seq.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                Pending {
                    domain,
                    q,
                    first_seq,
                    chunk,
                }
            })
            .collect();
        drop(h);
        // Every chunk stored, however long the store refuses writes (super::StoreRetry). Counted once the whole
        // pass is stored: `stored` then equals what `Domains::written` was when the pass took its chunks, so
        // reaching a value of it means every event counted by it is stored (super::OutcomeWriter).
        loop {
            let Some(h) = hooks.upgrade() else {
                return;
            };
            let mut refused = None;
            let mut left = Vec::new();
            for p in pending {
                match h
                    .store
                    .hook_append(&p.domain, p.first_seq, p.chunk.as_bytes())
                {
                    Ok(()) => queued(&h, p),
                    Err(e) => {
                        refused = Some(e);
                        left.push(p);
                    }
                }
            }
            pending = left;
            let Some(e) = refused else {
                retry.stored();
                h.stored.fetch_add(n, Ordering::Release);
                break;
            };
            let held = pending.iter().map(|p| p.chunk.len()).sum();
            let wait = retry.refused(&e, held);
            drop(h);
            if !super::pause_while(|| hooks.strong_count() > 0, wait) {
                return;
            }
        }
        std::thread::sleep(super::WRITER_PAUSE);
    }
}

/// A chunk taken by the writer, numbered for its domain's queue, until it is stored.
struct Pending {
    domain: Arc<str>,
    q: Arc<Queue>,
    first_seq: u64,
    chunk: ChunkBuilder,
}

/// A chunk just appended to its domain's queue in the store: in memory too, with the oldest events dropped beyond
/// the backlog.
fn queued(hooks: &Arc<Webhooks>, p: Pending) {
    let Pending {
        domain,
        q,
        first_seq,
        chunk,
    } = p;
    let n = chunk.len() as u64;
    let bound = hooks.settings(&domain).map_or(u64::MAX, |s| s.backlog);
    let mut chunks = lock(&q.chunks);
    chunks.push(first_seq, chunk);
    let len = q.len.fetch_add(n, Ordering::Relaxed) + n;
    if len > bound {
        let to = chunks.head_after(len - bound);
        // Those of the batch in flight are counted by the receiver's answer (Chunks::trim), not here.
        let (k, passed, done) = chunks.trim(to);
        q.len.fetch_sub(passed, Ordering::Relaxed);
        drop(chunks);
        if let Err(e) = record_head(&hooks.store, &q, &domain, to, done) {
            tracing::error!(%domain, "trimming the webhook backlog: {e}");
        }
        let before = q.dropped.fetch_add(k, Ordering::Relaxed);
        if k > 0 && (before == 0 || (before + k) / 10_000 > before / 10_000) {
            tracing::warn!(
                %domain, backlog = bound, dropped_total = before + k,
                "the webhook receiver falls behind: the oldest outcomes are dropped"
            );
        }
    } else {
        drop(chunks);
    }
    q.wake.notify_one();
}

/// Starts the thread that runs the senders: a runtime of their own, so that signing and POSTing batches (and the
/// receivers' answers) never wake or occupy the workers that deliver notifications. Runs until the returned sender
/// is dropped.
fn sender_thread() -> std::io::Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>)> {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let (started, handle) = std::sync::mpsc::sync_channel(1);
    // The runtime is built and dropped on its own thread (dropping one inside another runtime's task panics).
    std::thread::Builder::new()
        .name("herald-hook-send".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .thread_name("herald-hook-send")
                .build();
            match runtime {
                Ok(runtime) => {
                    let _ = started.send(Ok(runtime.handle().clone()));
                    runtime.block_on(async move {
                        let _ = stopped.await;
                    });
                }
                Err(e) => {
                    let _ = started.send(Err(e));
                }
            }
        })?;
    let handle = handle
        .recv()
        .map_err(|_| std::io::Error::other("the sender thread ended before it started"))??;
    Ok((handle, stop))
}

/// POSTs the oldest events of `domain`'s queue until it is empty, then waits for more; ends when the queue retires
/// after [`RETIRE_AFTER`] with nothing waiting.
async fn send_loop(hooks: Weak<Webhooks>, domain: String, q: Arc<Queue>) {
    let mut backoff = Backoff::default();
    let mut size = BatchSize::default();
    let mut too_large_log = Throttle::new(DROP_LOG_EVERY);
    let mut stale_log = Throttle::new(STALE_LOG_EVERY);
    loop {
        let Some(h) = hooks.upgrade() else {
            return;
        };
        let limit = size.limit();
        let next = lock(&q.chunks).next(limit);
        let events = match next {
            Next::Events(events) => events,
            Next::Stored(from) => {
                let head = lock(&q.chunks).head;
                match read_back(&h, &domain, from, head, limit).await {
                    Ok(chunks) => {
                        let head = lock(&q.chunks).head;
                        waiting_events(chunks, head, limit)
                    }
                    Err(e) => {
                        tracing::error!(%domain, "reading the webhook queue: {e}");
                        drop(h);
                        backoff.wait(&q).await;
                        continue;
                    }
                }
            }
            Next::Empty => Vec::new(),
        };
        let (Some(&(first_seq, _)), Some(&(last_seq, _))) = (events.first(), events.last()) else {
            let retire_after = h.retire_after;
            drop(h);
            // Idle for that long, the queue retires (unless events came meanwhile) and its sender ends.
            if tokio::time::timeout(retire_after, q.wake.notified())
                .await
                .is_err()
                && let Some(h) = hooks.upgrade()
                && h.retire(&domain, &q).await
            {
                return;
            }
            continue;
        };
        let Some(settings) = h.settings(&Arc::from(domain.as_str())) else {
            // The webhook was removed from the configuration: its queue waits until it comes back (a reload wakes
            // it: `reconfigure`).
            drop(h);
            q.wake.notified().await;
            continue;
        };
        // A reload that changed the URL: a new receiver, whose failures are counted from the first.
        backoff.for_url(&settings.url);
        // Events older than max_age are dropped, not sent.
        let oldest_allowed = now_secs().saturating_sub(settings.max_age.as_secs());
        let fresh = fresh_events(&events, oldest_allowed);
        let stale = (events.len() - fresh.len()) as u64;
        if fresh.is_empty() {
            let k = done_with(&h, &domain, &q, last_seq + 1).await;
            q.dropped.fetch_add(k, Ordering::Relaxed);
            stale_dropped(&mut stale_log, &domain, k);
            continue;
        }
        let mut body = Vec::with_capacity(16 + fresh.iter().map(|e| e.len() + 1).sum::<usize>());
        body.extend_from_slice(b"{\"outcomes\":[");
        for (i, e) in fresh.iter().enumerate() {
            if i > 0 {
                body.push(b',');
            }
            body.extend_from_slice(e);
        }
        body.extend_from_slice(b"]}");
        let sent = fresh.len() as u64;
        drop(fresh);
        drop(events);
        let http = match &h.http {
            Ok(http) => http,
            Err(e) => {
                // Nothing is sent without the client's timeout and redirect policy: the events wait.
                q.failures.fetch_add(1, Ordering::Relaxed);
                let first = lock(&q.last_error).replace(e.clone()).as_ref() != Some(e);
                if first {
                    tracing::error!(%domain, "outcome webhook: {e}; its outcomes wait in its queue");
                }
                drop(h);
                backoff.wait(&q).await;
                continue;
            }
        };
        let ts = now_secs();
        let body_len = body.len();
        let sig = signature(settings.secret.as_bytes(), ts, &body);
        let Some(in_flight) = h.batch_starts() else {
            // The stop began: no batch starts any more; what waits is sent after the restart.
            return;
        };
        if !lock(&q.chunks).start_sending(first_seq, last_seq + 1) {
            // The writer dropped some of these events (beyond the backlog) since they were read: read again.
            continue;
        }
        let result = http
            .post(&settings.url)
            .header("content-type", "application/json")
            .header("herald-timestamp", ts.to_string())
            .header("herald-signature", sig)
            .body(body)
            .send()
            .await;
        // Events of the batch the writer's trim passed meanwhile: delivered if it is taken, dropped otherwise.
        let trimmed = lock(&q.chunks).sent();
        let error = match answer(result, sent, body_len, &settings.url) {
            Answer::Taken => None,
            Answer::TooLarge(e) => match size.refused(sent, body_len) {
                // One event alone within the receiver's limit as known (now lowered below it: refused alone again,
                // it is dropped), or nothing taken yet (a proxy that answers 413 to everything). Retried after a
                // backoff like any failure.
                Refusal::Failure => Some(e),
                refusal => {
                    q.failures.fetch_add(1, Ordering::Relaxed);
                    *lock(&q.last_error) = Some(e.clone());
                    if refusal == Refusal::Smaller {
                        q.dropped.fetch_add(trimmed, Ordering::Relaxed);
                        tracing::debug!(%domain, "outcome webhook: {e}; sending {} per batch", size.limit());
                    } else {
                        let k = done_with(&h, &domain, &q, last_seq + 1).await + trimmed;
                        q.dropped.fetch_add(k, Ordering::Relaxed);
                        if let Some(since) = too_large_log.pass(Instant::now(), k) {
                            tracing::error!(
                                %domain, dropped = since,
                                "outcome webhook: {e}: the receiver refuses this outcome alone, larger than any batch \
                                 it took; dropped (`dropped`: outcomes dropped so since the last such line; \
                                 herald_webhook_dropped_total counts them all)"
                            );
                        }
                    }
                    // Smaller batches at once; after a drop, the next events.
                    continue;
                }
            },
            Answer::TimedOut(e) => {
                // A receiver that needs longer than the timeout for a batch this large: smaller ones, after the
                // backoff, until they are answered in time.
                size.timed_out(sent);
                Some(e)
            }
            Answer::Failed(e) => Some(e),
        };
        match error {
            None => {
                size.taken(body_len);
                let k = done_with(&h, &domain, &q, last_seq + 1).await + trimmed;
                // What the head passed (with the trim meanwhile): the events sent, and the stale ones left out.
                let delivered = k.min(sent);
                q.delivered.fetch_add(delivered, Ordering::Relaxed);
                q.dropped.fetch_add(k - delivered, Ordering::Relaxed);
                if stale > 0 {
                    stale_dropped(&mut stale_log, &domain, stale);
                }
                backoff.reset();
                drop(in_flight);
                h.took(&domain, &settings.url);
            }
            Some(e) => {
                q.failures.fetch_add(1, Ordering::Relaxed);
                q.dropped.fetch_add(trimmed, Ordering::Relaxed);
                tracing::debug!(
                    %domain,
                    "outcome webhook: {e}; retrying in {:?} at most, {} per batch",
                    backoff.delay,
                    size.limit()
                );
                h.failed(&domain, &settings.url, &e);
                *lock(&q.last_error) = Some(e);
                drop(in_flight);
                drop(h);
                backoff.wait(&q).await;
            }
        }
    }
}

/// Logs the `k` outcomes of `domain` just dropped as older than `outcome_webhook_max_age`, at most once per
/// [`STALE_LOG_EVERY`] (the line counts those dropped since the last one): after a long outage every batch read back
/// may be stale, up to `outcome_webhook_backlog` / batch lines otherwise.
fn stale_dropped(log: &mut Throttle, domain: &str, k: u64) {
    if let Some(since) = log.pass(Instant::now(), k) {
        tracing::warn!(
            %domain, dropped = since,
            "webhook outcomes older than outcome_webhook_max_age dropped (`dropped`: since the last such line; \
             herald_webhook_dropped_total counts them all)"
        );
    }
}

/// How long a sender waits after a failure: from [`FIRST_BACKOFF`], doubled at each failure in a row up to
/// [`MAX_BACKOFF`], each wait drawn at random between half the delay and the delay (jitter), so that the queues of
/// many domains whose shared receiver went down do not all retry in step. Starts again from [`FIRST_BACKOFF`] after
/// a batch taken, and when a reload gives the webhook another URL.
#[derive(Debug)]
struct Backoff {
    /// The delay of the next wait, before its jitter.
    delay: Duration,
    /// The URL the failures were counted for (`None` before the first batch).
    url: Option<String>,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            delay: FIRST_BACKOFF,
            url: None,
        }
    }
}

impl Backoff {
    /// The next wait (with its jitter); the delay doubles for the one after.
    fn next_wait(&mut self) -> Duration {
        let wait = jittered(self.delay);
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
        wait
    }

    /// A batch was taken: the next failure waits [`FIRST_BACKOFF`] again.
    fn reset(&mut self) {
        self.delay = FIRST_BACKOFF;
    }

    /// The batch goes to `url`: another one than the failures were counted for starts the backoff again.
    fn for_url(&mut self, url: &str) {
        if self.url.as_deref() != Some(url) {
            self.url = Some(url.to_owned());
            self.reset();
        }
    }

    /// Waits [`Backoff::next_wait`], or until a reload ([`Webhooks::reconfigure`]), whichever comes first.
    async fn wait(&mut self, q: &Queue) {
        let wait = self.next_wait();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = q.reload.notified() => {}
        }
    }
}

/// A random duration between `d / 2` and `d` (both included).
fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    static DRAWS: AtomicU64 = AtomicU64::new(0);
    // std's randomly keyed hasher over a count: random enough to spread retries, without a crate.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(DRAWS.fetch_add(1, Ordering::Relaxed));
    let half = d / 2;
    let span = u64::try_from((d - half).as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(h.finish() % span.saturating_add(1))
}

/// What a receiver's answer to a batch means for its sender, with the error it shows otherwise.
#[derive(Debug, PartialEq)]
enum Answer {
    /// 2xx: the batch is taken.
    Taken,
    /// `413 Payload Too Large`.
    TooLarge(String),
    /// Connected, but no answer within the client's timeout ([`REQUEST_TIMEOUT`]).
    TimedOut(String),
    /// Anything else: another status, a connection refused, broken or not made in time ([`CONNECT_TIMEOUT`]).
    Failed(String),
}

/// What the answer (or the error) to a batch of `sent` events in `body_len` bytes POSTed to `url` means. A request
/// that failed names the receiver and every cause (`Connection refused`, a name that does not resolve, a TLS
/// error), with the URL's password and query masked: the text reaches the log, the console and the dashboard.
fn answer(
    result: Result<reqwest::Response, reqwest::Error>,
    sent: u64,
    body_len: usize,
    url: &str,
) -> Answer {
    let e = match result {
        Ok(r) if r.status().is_success() => return Answer::Taken,
        Ok(r) if r.status() == reqwest::StatusCode::PAYLOAD_TOO_LARGE => {
            return Answer::TooLarge(format!(
                "the receiver answered {} to a batch of {sent} outcomes ({body_len} bytes)",
                r.status()
            ));
        }
        Ok(r) => return Answer::Failed(format!("the receiver answered {}", r.status())),
        Err(e) => e,
    };
    let shown = herald_conf::secrets::mask_url_credentials(url);
    let shown = shown.as_deref().unwrap_or(url);
    // Not the error's own URL (unmasked); its causes do not name it, but should one, it is masked too.
    let (connect, timeout) = (e.is_connect(), e.is_timeout());
    let mut causes = error_chain(&e.without_url());
    if shown != url {
        causes = causes.replace(url, shown);
    }
    match (connect, timeout) {
        // A connection not made in time says nothing of the batch (the receiver never saw it): not a reason for
        // smaller batches.
        (true, true) => Answer::Failed(format!("no connection to {shown} in time: {causes}")),
        (false, true) => Answer::TimedOut(format!(
            "no answer from {shown} in time to a batch of {sent} outcomes ({body_len} bytes): {causes}"
        )),
        _ => Answer::Failed(format!("request to {shown} failed: {causes}")),
    }
}

/// `error` and its causes, outermost first, joined with `: ` (`error sending request: client error (Connect): tcp
/// connect error: Connection refused (os error 111)`); a cause whose text is already shown is left out.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// What the warnings about failed webhook requests last said, by receiver (URL): many domains may share one
/// receiver, whose outage must not log a line per request of each. A receiver's first failure is logged, then one
/// line per [`FAILURE_LOG_EVERY`] at most (counting the failures since the last line), and one when it takes a
/// batch again after a failure was logged.
#[derive(Default)]
struct FailureLog {
    by_url: HashMap<String, UrlFailures>,
}

#[derive(Debug, Default)]
struct UrlFailures {
    /// Since the first failure after the last batch taken (`None`: the last request was taken).
    since: Option<Instant>,
    /// Failures since `since`.
    failures: u64,
    /// Failures not counted by a line yet.
    held: u64,
    /// When the last line about this receiver was logged.
    last_line: Option<Instant>,
    /// A failure was logged since the last batch taken: its recovery is logged too.
    told: bool,
}

impl FailureLog {
    /// A request to `url` failed at `now`: `Some(failures since the last line, this one included)` when a warning is
    /// due.
    fn failed(&mut self, url: &str, now: Instant) -> Option<u64> {
        if !self.by_url.contains_key(url) && self.by_url.len() >= FAILURE_LOG_URLS {
            self.by_url.retain(|_, f| {
                f.last_line
                    .is_some_and(|at| now.saturating_duration_since(at) < FAILURE_LOG_EVERY)
            });
            if self.by_url.len() >= FAILURE_LOG_URLS {
                return Some(1);
            }
        }
        let f = self.by_url.entry(url.to_owned()).or_default();
        f.since.get_or_insert(now);
        f.failures += 1;
        f.held += 1;
        if f.last_line
            .is_some_and(|at| now.saturating_duration_since(at) < FAILURE_LOG_EVERY)
        {
            return None;
        }
        f.last_line = Some(now);
        f.told = true;
        Some(std::mem::take(&mut f.held))
    }

    /// A request to `url` was taken at `now`: `Some((failures, how long they lasted))` when a line was logged about
    /// the failures before it (its recovery is logged then). A receiver that logged nothing for
    /// [`FAILURE_LOG_EVERY`] is forgotten.
    fn took(&mut self, url: &str, now: Instant) -> Option<(u64, Duration)> {
        let f = self.by_url.get_mut(url)?;
        let recovered = match (f.told, f.since) {
            (true, Some(since)) => Some((f.failures, now.saturating_duration_since(since))),
            _ => None,
        };
        (f.since, f.failures, f.held, f.told) = (None, 0, 0, false);
        if f.last_line
            .is_none_or(|at| now.saturating_duration_since(at) >= FAILURE_LOG_EVERY)
        {
            self.by_url.remove(url);
        }
        recovered
    }
}

/// Lets a log line through at most once per `every`, adding up what happened meanwhile for the next line.
struct Throttle {
    every: Duration,
    last: Option<Instant>,
    /// What the lines held back since the last one counted.
    held: u64,
}

impl Throttle {
    fn new(every: Duration) -> Throttle {
        Throttle {
            every,
            last: None,
            held: 0,
        }
    }

    /// A line counting `n` is due at `now`: `Some(n and what the lines held back since the last one counted)` when
    /// it may be logged, `None` when it is held back.
    fn pass(&mut self, now: Instant, n: u64) -> Option<u64> {
        self.held += n;
        if self
            .last
            .is_some_and(|at| now.saturating_duration_since(at) < self.every)
        {
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// The events of `events` that finished at `oldest_allowed` or later. A queue holds its events in the order the
/// outcomes came, so when the oldest is fresh all are: only a batch that starts stale is read event by event.
fn fresh_events(events: &[(u64, Bytes)], oldest_allowed: u64) -> Vec<&Bytes> {
    let is_fresh = |e: &Bytes| finished_at(e).is_none_or(|t| t >= oldest_allowed);
    let all_fresh = events.first().is_none_or(|(_, e)| is_fresh(e));
    events
        .iter()
        .map(|(_, e)| e)
        .filter(|e| all_fresh || is_fresh(e))
        .collect()
}

/// The waiting events (numbered `head` or more) of chunks read back from the store, at most `limit` (the store read
/// from the head the sender knew before the read: this drops only what the writer's trim passed meanwhile).
fn waiting_events(chunks: Vec<HookChunk>, head: u64, limit: usize) -> Vec<(u64, Bytes)> {
    chunks
        .into_iter()
        .flat_map(|c| {
            let first = c.first_seq;
            c.events
                .into_iter()
                .enumerate()
                .map(move |(i, e)| (first + i as u64, Bytes::from(e)))
        })
        .filter(|(seq, _)| *seq >= head)
        .take(limit)
        .collect()
}

/// Reads the events of `domain`'s queue numbered `head` or more, `limit` at most, from the chunk numbered `from`
/// on, on the blocking pool.
async fn read_back(
    h: &Webhooks,
    domain: &str,
    from: u64,
    head: u64,
    limit: usize,
) -> Result<Vec<HookChunk>, String> {
    let (store, domain) = (h.store.clone(), domain.to_owned());
    h.store_call(move || store.hook_chunks(&domain, from, head, limit))
        .await
}

/// How many events a sender puts in one request: [`BATCH`], halved at each `413 Payload Too Large` and at each
/// request not answered within [`REQUEST_TIMEOUT`] once connected (down to one event; after a timeout the backoff
/// applies too), and doubled again after [`GROW_AFTER`] batches taken in a row, so that a receiver whose limit was
/// raised, or that got faster, gets full batches again, at the cost of one refused or late request now and then.
///
/// A `413` to one event is a drop only when its body is larger than every body the receiver took: then the event is
/// too large by itself (dropped), and the next batches have the size last taken. Otherwise the 413 is not a matter
/// of this event's size (a proxy that answers 413 to everything, before or after it took batches) and is retried as
/// any failure, for as long as it lasts: nothing is dropped for a refusal a receiver gives to bodies it took before.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct BatchSize {
    limit: usize,
    /// Batches taken since the last change of `limit`.
    taken: u32,
    /// The limit of the last batch taken (0: none yet).
    good: usize,
    /// Bytes of the largest body taken (0: nothing taken yet).
    largest: usize,
}

/// Batches a receiver takes in a row before a sender tries batches twice as large again, after a 413 or a timeout.
const GROW_AFTER: u32 = 64;

/// What a `413` to a batch means ([`BatchSize::refused`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// Send smaller batches, at once.
    Smaller,
    /// One event larger than any batch the receiver took: dropped.
    TooLarge,
    /// One event within the receiver's limit as known, or nothing taken yet: a failure, retried after a backoff.
    Failure,
}

impl Default for BatchSize {
    fn default() -> Self {
        BatchSize {
            limit: BATCH,
            taken: 0,
            good: 0,
            largest: 0,
        }
    }
}

impl BatchSize {
    fn limit(&self) -> usize {
        self.limit
    }

    /// A batch of `sent` events in `body_len` bytes was answered 413.
    fn refused(&mut self, sent: u64, body_len: usize) -> Refusal {
        self.taken = 0;
        if sent > 1 {
            self.halve(sent);
            return Refusal::Smaller;
        }
        if self.largest > 0 && body_len > self.largest {
            self.limit = self.good.max(1);
            return Refusal::TooLarge;
        }
        self.limit = 1;
        Refusal::Failure
    }

    /// A batch of `sent` events reached the receiver (a connection was made) but was not answered in time.
    fn timed_out(&mut self, sent: u64) {
        self.taken = 0;
        self.halve(sent);
    }

    fn halve(&mut self, sent: u64) {
        self.limit = usize::try_from(sent / 2).unwrap_or(BATCH).clamp(1, BATCH);
    }

    /// A batch of `body_len` bytes was taken (2xx).
    fn taken(&mut self, body_len: usize) {
        self.good = self.limit;
        self.largest = self.largest.max(body_len);
        if self.limit >= BATCH {
            return;
        }
        self.taken += 1;
        if self.taken >= GROW_AFTER {
            self.limit = (self.limit * 2).min(BATCH);
            self.taken = 0;
        }
    }
}

/// Everything of `domain`'s queue numbered below `to` is done with: moves the head there, takes what it passed off
/// the backlog, and records it in the store with the chunks left behind deleted. Returns how many events it passed.
async fn done_with(h: &Webhooks, domain: &str, q: &Arc<Queue>, to: u64) -> u64 {
    let (k, done) = lock(&q.chunks).advance(to);
    q.len.fetch_sub(k, Ordering::Relaxed);
    let (store, d, queue) = (h.store.clone(), domain.to_owned(), q.clone());
    let stored = h
        .store_call(move || record_head(&store, &queue, &d, to, done))
        .await;
    if let Err(e) = stored {
        tracing::error!(%domain, "recording delivered webhook outcomes: {e}");
    }
    k
}

/// Records in the store that every event of `domain`'s queue below `to` is done with and deletes what `done`
/// names (the stretches' chunks wholly behind the head), then moves the start of the stretch the head is in past
/// the deletions; the head recorded never goes back (a call that computed a lower head than one already recorded
/// records that one again: see [`Queue::stored_head`]). When the write fails, the chunks stay in the store: the
/// queue's retirement deletes them ([`Queue::forget_from`]), and a stretch the head is in is scanned again from its
/// start at the next move.
fn record_head(
    store: &OutcomeStore,
    q: &Queue,
    domain: &str,
    to: u64,
    done: Done,
) -> Result<(), herald_spool::SpoolError> {
    let mut stored = lock(&q.stored_head);
    let head = to.max(*stored);
    let starts = match store.hook_advance_over(domain, head, &done.chunks, &done.stretches) {
        Ok(starts) => starts,
        Err(e) => {
            if let Some(lowest) = done.lowest() {
                q.forget_from.fetch_min(lowest, Ordering::Relaxed);
            }
            return Err(e);
        }
    };
    *stored = head;
    drop(stored);
    let mut chunks = lock(&q.chunks);
    for (&(from, _), start) in done.stretches.iter().zip(starts) {
        chunks.stretch_starts(from, start);
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Appends `s` as a JSON string.
fn json_str(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Domains, APNs ids and reasons almost never need escaping: one pass without branches tells.
    let plain_only = !bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    });
    out.push(b'"');
    if plain_only {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    let mut plain = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if b != b'"' && b != b'\\' && b >= 0x20 {
            continue;
        }
        out.extend_from_slice(&bytes[plain..i]);
        plain = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ => {
                let _ = write!(out, "\\u{b:04x}");
            }
        }
    }
    out.extend_from_slice(&bytes[plain..]);
    out.push(b'"');
}

/// An event's `finished_at`, read without parsing the whole event (herald writes it; a key in quotes followed by a
/// colon cannot occur inside a JSON string, where quotes are escaped).
fn finished_at(event: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"finished_at\":";
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    let at = FINDER.find(event)? + KEY.len();
    let digits = event[at..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .count();
    std::str::from_utf8(&event[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(seqs: std::ops::Range<u64>) -> ChunkBuilder {
        let mut chunk = ChunkBuilder::default();
        for i in seqs {
            chunk.push_with(|b| b.extend_from_slice(i.to_string().as_bytes()));
        }
        chunk
    }

    /// What a move of the head leaves behind: the chunks in memory `first` (by their first numbers).
    fn gone(first: &[u64]) -> Done {
        Done {
            chunks: first.to_vec(),
            stretches: Vec::new(),
        }
    }

    fn seqs(next: Next) -> Vec<u64> {
        match next {
            Next::Events(e) => e.into_iter().map(|(s, _)| s).collect(),
            other => panic!("expected events, got {other:?}"),
        }
    }

    fn settings(url: &str, backlog: u64) -> Arc<HookSettings> {
        Arc::new(HookSettings {
            url: url.to_owned(),
            secret: "s".into(),
            delivered: true,
            failed: true,
            invalid_token: true,
            max_age: Duration::from_secs(3600),
            backlog,
        })
    }

    use axum::http::StatusCode;

    /// A scripted receiver's answer to one request.
    type Reply = std::pin::Pin<Box<dyn std::future::Future<Output = StatusCode> + Send>>;

    /// What a scripted receiver got: the number of outcomes of every request, as they came, and the ids of the
    /// batches it took (2xx), in order.
    #[derive(Default)]
    struct Script {
        batches: Mutex<Vec<usize>>,
        took: Mutex<Vec<String>>,
    }

    /// A webhook receiver on a loopback port that answers each request as `answer` says, given its index among the
    /// requests and its number of outcomes (the answer may wait, or never come): its URL and what it got.
    async fn scripted(
        answer: impl Fn(usize, usize) -> Reply + Clone + Send + Sync + 'static,
    ) -> (String, Arc<Script>) {
        let script = Arc::new(Script::default());
        let kept = script.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: axum::body::Bytes| {
                let (kept, answer) = (kept.clone(), answer.clone());
                async move {
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let ids: Vec<String> = v["outcomes"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e["id"].as_str().unwrap().to_owned())
                        .collect();
                    let index = {
                        let mut batches = lock(&kept.batches);
                        batches.push(ids.len());
                        batches.len() - 1
                    };
                    let status = answer(index, ids.len()).await;
                    if status.is_success() {
                        lock(&kept.took).extend(ids);
                    }
                    status
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{addr}/hook"), script)
    }

    #[test]
    fn the_secret_does_not_show_in_debug_output() {
        let mut s = (*settings("https://hooks.example/in", 10)).clone();
        s.secret = "hunter2-webhook-key".into();
        let text = format!("{s:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("secret: \"********\""), "{text}");
        assert!(text.contains("https://hooks.example/in"), "{text}");
        // The URL's query and password are secrets too (herald_conf::secrets): masked, the rest kept.
        s.url = "https://hook:pa55word@hooks.example/in?token=qu3ry-key".into();
        let text = format!("{s:?}");
        assert!(
            !text.contains("qu3ry-key") && !text.contains("pa55word"),
            "{text}"
        );
        assert!(
            text.contains("https://hook:********@hooks.example/in?********"),
            "{text}"
        );
    }

    /// The memory bound is shared by all queues: at the bound, a chunk of any queue is kept by the store only, and
    /// what a queue gives back (its chunks delivered, the queue gone) is room for the others.
    #[test]
    fn all_queues_share_one_memory_bound() {
        let budget = Arc::new(AtomicUsize::new(0));
        let mut a = Chunks::with_budget(budget.clone());
        let mut b = Chunks::with_budget(budget.clone());
        a.push(1, events(1..3));
        let used = budget.load(Ordering::Relaxed);
        assert_eq!(used, a.cached);
        // The other queues hold the rest.
        budget.fetch_add(CACHE_BYTES - used, Ordering::Relaxed);
        b.push(1, events(1..3));
        assert_eq!((b.next(10), b.cached), (Next::Stored(1), 0));
        // Queue a's events delivered: their bytes are room for b's next chunk.
        a.advance(3);
        assert_eq!(budget.load(Ordering::Relaxed), CACHE_BYTES - used);
        b.push(3, events(3..5));
        assert_eq!(budget.load(Ordering::Relaxed), CACHE_BYTES);
        b.advance(3);
        assert_eq!(seqs(b.next(10)), vec![3, 4]);
        drop(b);
        assert_eq!(budget.load(Ordering::Relaxed), CACHE_BYTES - used);
        drop(a);
    }

    /// A chunk is kept in memory in an allocation of the size it is charged: one event written into an open chunk
    /// allocated as large as a burst's (the writer sizes it as the domain's last) does not keep the burst's bytes.
    /// What it takes besides its bytes (where each event lies, its entry) is charged too.
    #[test]
    fn a_chunk_in_memory_holds_the_bytes_it_is_charged() {
        let budget = Arc::new(AtomicUsize::new(0));
        let mut c = Chunks::with_budget(budget.clone());
        let mut chunk = ChunkBuilder::with_capacity(256 << 10);
        chunk.push_with(|b| b.extend_from_slice(b"{\"id\":\"1\"}"));
        let bytes = chunk.as_bytes().len();
        c.push(1, chunk);
        let charged = budget.load(Ordering::Relaxed);
        assert_eq!(charged, c.cached);
        assert_eq!(
            charged,
            bytes + std::mem::size_of::<(u32, u32)>() + std::mem::size_of::<Chunk>()
        );
        let cached = c.live.pop_back().and_then(|c| c.events).unwrap();
        // The allocation behind the bytes (taken back whole: nothing else refers to it).
        assert_eq!(Vec::from(cached.data).capacity(), bytes);
        assert_eq!(cached.spans.len(), 1);
    }

    /// Chunks kept by the store only (the memory bound reached, here by the other queues) take one entry however
    /// many they are: a receiver down for long, with a chunk per writer pass, does not grow the queue's memory. As
    /// the head moves through the stretch the store deletes the chunks wholly behind it and the stretch starts at
    /// the one the head is in; a chunk in memory between stretches keeps them apart.
    #[test]
    fn chunks_beyond_the_memory_bound_take_one_entry_however_many() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        let budget = Arc::new(AtomicUsize::new(CACHE_BYTES));
        let q = Queue {
            chunks: Mutex::new(Chunks::with_budget(budget.clone())),
            forget_from: AtomicU64::new(u64::MAX),
            ..Queue::default()
        };
        let stored_chunks = |store: &OutcomeStore| -> Vec<(u64, u64)> {
            store
                .hook_queues()
                .unwrap()
                .into_iter()
                .flat_map(|q| q.chunks)
                .collect()
        };
        // 10,000 chunks of 3 events, numbered 1, 4, 7, …
        const N: u64 = 10_000;
        for i in 0..N {
            let first = 1 + 3 * i;
            let chunk = events(first..first + 3);
            store
                .hook_append("a.example", first, chunk.as_bytes())
                .unwrap();
            lock(&q.chunks).push(first, chunk);
        }
        let end = 1 + 3 * N;
        {
            let c = lock(&q.chunks);
            assert_eq!((c.live.len(), c.cached), (1, 0));
            assert_eq!((c.live[0].first_seq, c.live[0].end()), (1, end));
            assert_eq!(c.next(10), Next::Stored(1));
            assert_eq!(c.head_after(5), 6);
        }
        // Delivered up to event 5: the first chunk goes, the second (4..7) stays, and the stretch starts there.
        let (passed, done) = lock(&q.chunks).advance(5);
        assert_eq!(
            (passed, &done.stretches, done.chunks.is_empty()),
            (4, &vec![(1, 5)], true)
        );
        record_head(&store, &q, "a.example", 5, done).unwrap();
        assert_eq!(lock(&q.chunks).next(10), Next::Stored(4));
        assert_eq!(stored_chunks(&store)[..2], [(4, 3), (7, 3)]);
        let read = store.hook_chunks("a.example", 4, 5, 3).unwrap();
        assert_eq!(waiting_events(read, 5, 3).first().map(|e| e.0), Some(5));
        // Memory frees up: the next chunk is kept in memory, and the one after starts another stretch.
        budget.store(0, Ordering::Relaxed);
        for first in [end, end + 3] {
            let chunk = events(first..first + 3);
            store
                .hook_append("a.example", first, chunk.as_bytes())
                .unwrap();
            lock(&q.chunks).push(first, chunk);
            budget.store(CACHE_BYTES, Ordering::Relaxed);
        }
        assert_eq!(lock(&q.chunks).live.len(), 3);
        // Past the first stretch and into the chunk in memory: the whole stretch is deleted, by its range.
        let (_, done) = lock(&q.chunks).advance(end + 1);
        assert_eq!(done.stretches, vec![(4, end)]);
        record_head(&store, &q, "a.example", end + 1, done).unwrap();
        assert_eq!(stored_chunks(&store), [(end, 3), (end + 3, 3)]);
        assert_eq!(seqs(lock(&q.chunks).next(10)), vec![end + 1, end + 2]);
        // The rest: nothing is left in memory or in the store.
        let (_, done) = lock(&q.chunks).advance(end + 6);
        assert_eq!(
            done,
            Done {
                chunks: vec![end],
                stretches: vec![(end + 3, end + 6)]
            }
        );
        record_head(&store, &q, "a.example", end + 6, done).unwrap();
        assert!(stored_chunks(&store).is_empty());
        let c = lock(&q.chunks);
        assert!(c.live.is_empty() && c.live.capacity() <= 64);
        assert_eq!(c.cached, 0);
        assert_eq!(q.forget_from.load(Ordering::Relaxed), u64::MAX);
    }

    /// A trim that passes a stretch in two moves (the events in flight first, then the rest) names it once, to the
    /// later end; a failed deletion leaves its chunks to the queue's retirement.
    #[test]
    fn a_stretch_trimmed_past_the_batch_in_flight_is_deleted_once() {
        let mut c = Chunks::with_budget(Arc::new(AtomicUsize::new(CACHE_BYTES)));
        c.push(1, events(1..4));
        c.push(4, events(4..7));
        assert_eq!(c.live.len(), 1);
        assert!(c.start_sending(1, 3));
        let (dropped, passed, done) = c.trim(5);
        assert_eq!((dropped, passed), (2, 4));
        assert_eq!(done.stretches, vec![(1, 5)]);
        assert_eq!(done.lowest(), Some(1));

        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        let q = Queue {
            forget_from: AtomicU64::new(u64::MAX),
            ..Queue::default()
        };
        store.refuse_writes(true);
        assert!(record_head(&store, &q, "a.example", 5, done).is_err());
        assert_eq!(q.forget_from.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn the_counters_of_the_most_recently_retired_queues_are_kept() {
        let stats = |domain: String| HookStats {
            domain,
            delivered: 1,
            ..HookStats::default()
        };
        let mut retired = Retired::default();
        for i in 0..RETIRED_KEPT {
            retired.insert(stats(format!("d{i}.example")));
        }
        // Retired again: the most recent now.
        retired.insert(stats("d0.example".into()));
        retired.insert(stats("new.example".into()));
        assert_eq!(retired.stats().count(), RETIRED_KEPT);
        assert_eq!(retired.order.len(), RETIRED_KEPT);
        assert!(retired.take("d1.example").is_none(), "the oldest forgotten");
        assert!(retired.take("d0.example").is_some());
        assert!(retired.take("d0.example").is_none(), "taken back once");
        assert_eq!(retired.stats().count(), RETIRED_KEPT - 1);
        assert_eq!(retired.order.len(), RETIRED_KEPT - 1);
    }

    /// Events of the batch in flight that the writer's trim passes are left to the sender, which counts them by the
    /// answer; a batch read before a trim passed it is not sent.
    #[test]
    fn a_trim_leaves_the_events_in_flight_to_the_sender() {
        let mut c = Chunks::default();
        c.push(1, events(1..6));
        assert!(c.start_sending(1, 4));
        // Four dropped beyond the backlog: three of them in flight, one not.
        assert_eq!(c.trim(5), (1, 4, gone(&[])));
        assert_eq!(c.sent(), 3);
        assert_eq!(c.sent(), 0);
        // Nothing in flight: a trim drops what it passes.
        assert_eq!(c.trim(6), (1, 1, gone(&[1])));
        c.push(6, events(6..9));
        assert!(c.start_sending(6, 9));
        c.sent();
        c.trim(7);
        assert!(!c.start_sending(6, 9), "event 6 was dropped meanwhile");
        assert!(c.start_sending(7, 9));
    }

    #[test]
    fn the_line_for_outcomes_too_large_is_logged_at_most_once_a_minute() {
        let mut log = Throttle::new(Duration::from_secs(60));
        let t0 = Instant::now();
        assert_eq!(log.pass(t0, 1), Some(1));
        assert_eq!(log.pass(t0 + Duration::from_secs(1), 1), None);
        assert_eq!(log.pass(t0 + Duration::from_secs(59), 2), None);
        // The next line counts those held back.
        assert_eq!(log.pass(t0 + Duration::from_secs(60), 1), Some(4));
        assert_eq!(log.pass(t0 + Duration::from_secs(61), 1), None);
    }

    /// A store call of one sender (a large read, a write waiting for the journal) runs off the thread every sender
    /// shares: the others go on meanwhile.
    #[tokio::test]
    async fn a_store_call_does_not_hold_up_the_other_senders() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let hooks = Webhooks::start(store, Box::new(|_| None));
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started, store_call_started) = tokio::sync::oneshot::channel();
        let h = hooks.clone();
        hooks.senders.spawn(async move {
            h.store_call(move || {
                let _ = started.send(());
                let _ = released.recv();
                Ok(())
            })
            .await
        });
        store_call_started.await.unwrap();
        let (ran, other_ran) = tokio::sync::oneshot::channel();
        hooks.senders.spawn(async move {
            let _ = ran.send(());
        });
        let other = tokio::time::timeout(Duration::from_secs(20), other_ran).await;
        release.send(()).unwrap();
        assert!(
            matches!(other, Ok(Ok(()))),
            "another sender's task waited for the store call"
        );
    }

    #[test]
    fn the_sender_takes_the_oldest_waiting_events_across_chunks() {
        let mut c = Chunks::default();
        assert_eq!(c.next(10), Next::Empty);
        c.push(1, events(1..4));
        c.push(4, events(4..6));
        assert_eq!(seqs(c.next(4)), vec![1, 2, 3, 4]);
        // Event 5 is the one numbered 5, from the second chunk.
        match c.next(10) {
            Next::Events(e) => assert_eq!(e[4], (5, Bytes::from_static(b"5"))),
            other => panic!("{other:?}"),
        }
        // Two delivered: the first chunk stays (one event of it waits).
        assert_eq!(c.advance(3), (2, gone(&[])));
        assert_eq!(seqs(c.next(10)), vec![3, 4, 5]);
        assert_eq!(c.advance(5), (2, gone(&[1])));
        assert_eq!(c.advance(4), (0, gone(&[])), "the head never goes back");
        assert_eq!(seqs(c.next(10)), vec![5]);
        assert_eq!(c.advance(6), (1, gone(&[4])));
        assert_eq!((c.next(10), c.cached), (Next::Empty, 0));
    }

    #[test]
    fn a_chunk_not_in_memory_is_read_from_the_store_in_its_turn() {
        let mut c = Chunks::default();
        c.live.push_back(Chunk {
            first_seq: 1,
            count: 2,
            events: None,
        });
        c.push(3, events(3..5));
        assert_eq!(c.next(10), Next::Stored(1));
        c.advance(3);
        assert_eq!(seqs(c.next(10)), vec![3, 4]);
        // Beyond the queue's memory bound a chunk is kept by the store only; the ones before it come first.
        c.cached = QUEUE_CACHE_BYTES;
        c.push(5, events(5..7));
        assert_eq!(seqs(c.next(10)), vec![3, 4]);
        c.advance(5);
        assert_eq!(c.next(10), Next::Stored(5));
    }

    #[test]
    fn dropping_the_oldest_moves_the_head_past_exactly_that_many_waiting_events() {
        let mut c = Chunks::default();
        c.push(1, events(1..4));
        // Events 4 and 5 were never stored (a failed write): the numbers jump.
        c.push(6, events(6..9));
        c.advance(2);
        assert_eq!(c.head_after(0), 2);
        assert_eq!(c.head_after(2), 6);
        assert_eq!(c.head_after(3), 7);
        assert_eq!(c.head_after(99), 9);
        assert_eq!(c.advance(c.head_after(3)), (3, gone(&[1])));
        assert_eq!(seqs(c.next(10)), vec![7, 8]);
    }

    #[tokio::test]
    async fn flush_returns_once_every_event_written_is_in_the_store() {
        use crate::outcomes::fixtures::{delivered, notification};
        use crate::queue::message::IdGenerator;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let settings = Arc::new(HookSettings {
            // Nothing listens there: the events stay queued.
            url: "http://127.0.0.1:9/hook".into(),
            secret: "s".into(),
            delivered: true,
            failed: true,
            invalid_token: true,
            max_age: Duration::from_secs(3600),
            backlog: 1_000_000,
        });
        let hooks = Webhooks::start(store.clone(), Box::new(move |_| Some(settings.clone())));
        let ids = IdGenerator::new(0);
        for i in 0..300u32 {
            let n = notification(ids.next(), "hooks.example", i as u8);
            hooks.outcome(&delivered(&n));
        }
        assert!(hooks.flush(Duration::from_secs(30)).await);
        let stored: u64 = store
            .hook_queues()
            .unwrap()
            .iter()
            .flat_map(|q| q.chunks.iter().map(|(_, n)| n))
            .sum();
        assert_eq!(stored, 300);
    }

    /// A domain's webhook removed by a reload, its events waiting, and added back by the next: the events go out
    /// then, without another outcome of the domain to wake its sender.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_webhook_removed_and_added_back_sends_its_waiting_events() {
        use crate::outcomes::fixtures::{delivered, notification};
        use crate::queue::message::IdGenerator;
        use std::time::Instant;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let hook = |url: &str| {
            Some(Arc::new(HookSettings {
                url: url.to_owned(),
                secret: "s".into(),
                delivered: true,
                failed: true,
                invalid_token: true,
                max_age: Duration::from_secs(3600),
                backlog: 1_000_000,
            }))
        };
        // What the configuration says now, and how often it was read while it had no webhook.
        let current = Arc::new(Mutex::new(hook("http://127.0.0.1:9/hook")));
        let read_without = Arc::new(AtomicU64::new(0));
        let (config, without) = (current.clone(), read_without.clone());
        let hooks = Webhooks::start(
            store,
            Box::new(move |_| {
                let settings = lock(&config).clone();
                if settings.is_none() {
                    without.fetch_add(1, Ordering::SeqCst);
                }
                settings
            }),
        );
        // Outcomes while the receiver is unreachable: they wait in the queue.
        let ids = IdGenerator::new(0);
        let mut sent = Vec::new();
        for i in 0..5u8 {
            let n = notification(ids.next(), "hooks.example", i);
            hooks.outcome(&delivered(&n));
            sent.push(n.id.to_string());
        }
        assert!(hooks.flush(Duration::from_secs(30)).await);
        // A reload removes the webhook; the sender finds it gone (the only one reading the options now) and waits.
        *lock(&current) = None;
        hooks.reconfigure();
        let deadline = Instant::now() + Duration::from_secs(20);
        while read_without.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "the sender never found the webhook gone"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The next reload adds it back, with a receiver that takes the batch.
        let (url, took) = crate::outcomes::fixtures::receiver().await;
        *lock(&current) = hook(&url);
        hooks.reconfigure();
        let deadline = Instant::now() + Duration::from_secs(20);
        while lock(&took).len() < sent.len() || hooks.stats()[0].backlog > 0 {
            assert!(
                Instant::now() < deadline,
                "the waiting events did not go out after the webhook came back: {:?}",
                lock(&took)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*lock(&took), sent);
        assert_eq!(hooks.stats()[0].delivered, sent.len() as u64);
    }

    /// Without its HTTP client (it could not be built), a webhook sends nothing, not even with a client of other
    /// settings: its events wait, and its last error says why.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_its_http_client_no_webhook_is_sent_and_the_error_says_why() {
        use crate::outcomes::fixtures::{delivered, notification};
        use crate::queue::message::IdGenerator;
        use std::time::Instant;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let (url, took) = crate::outcomes::fixtures::receiver().await;
        let settings = Arc::new(HookSettings {
            url,
            secret: "s".into(),
            delivered: true,
            failed: true,
            invalid_token: true,
            max_age: Duration::from_secs(3600),
            backlog: 1_000_000,
        });
        let hooks = Webhooks::start_with(
            store,
            Box::new(move |_| Some(settings.clone())),
            Err("the webhook HTTP client could not be built (test): no webhook is sent".into()),
            RETIRE_AFTER,
        );
        let ids = IdGenerator::new(0);
        for i in 0..5u8 {
            hooks.outcome(&delivered(&notification(ids.next(), "hooks.example", i)));
        }
        assert!(hooks.flush(Duration::from_secs(30)).await);
        let deadline = Instant::now() + Duration::from_secs(20);
        let stats = loop {
            let mut stats = hooks.stats();
            if stats.first().is_some_and(|s| s.last_error.is_some()) {
                break stats.remove(0);
            }
            assert!(Instant::now() < deadline, "no error reported: {stats:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert!(
            stats
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("could not be built")),
            "{stats:?}"
        );
        assert_eq!(stats.backlog, 5);
        assert_eq!(stats.delivered, 0);
        assert!(lock(&took).is_empty());
    }

    #[test]
    fn batches_halve_at_each_413_and_grow_back_once_taken_for_a_while() {
        let mut size = BatchSize::default();
        assert_eq!(size.limit(), BATCH);
        assert_eq!(size.refused(500, 150_000), Refusal::Smaller);
        assert_eq!(size.limit(), 250);
        // Fewer sent than the limit (stale events left out): half of what was sent.
        assert_eq!(size.refused(100, 30_000), Refusal::Smaller);
        assert_eq!(size.limit(), 50);
        size.taken(20_000);
        assert_eq!(size.refused(50, 25_000), Refusal::Smaller);
        assert_eq!(size.refused(25, 25_000), Refusal::Smaller);
        assert_eq!(size.limit(), 12);
        for sent in [12, 6, 3] {
            assert_eq!(size.refused(sent, 25_000), Refusal::Smaller);
        }
        assert_eq!(size.limit(), 1);
        // One event no larger than a body the receiver took: not a matter of size (a proxy refusing everything, say),
        // a failure retried for as long as it lasts, never dropped.
        assert_eq!(size.refused(1, 20_000), Refusal::Failure);
        assert_eq!(size.refused(1, 20_000), Refusal::Failure);
        assert_eq!((size.limit(), size.largest), (1, 20_000));
        // One event larger than any body taken: too large by itself (dropped), and the batches go back to the size
        // last taken.
        assert_eq!(size.refused(1, 20_001), Refusal::TooLarge);
        assert_eq!(size.limit(), 50);
        for _ in 0..GROW_AFTER {
            size.taken(1_000);
        }
        assert_eq!(size.limit(), 100);
        for _ in 0..4 * GROW_AFTER {
            size.taken(1_000);
        }
        assert_eq!(size.limit(), BATCH);
        // Nothing taken yet (a proxy answering 413 to everything): one event refused alone is a failure, however
        // large, and batches stay at one event until one is taken.
        let mut size = BatchSize::default();
        assert_eq!(size.refused(1, 1 << 20), Refusal::Failure);
        assert_eq!(size.limit(), 1);
        assert_eq!(size.refused(1, 1 << 20), Refusal::Failure);
        size.taken(300);
        assert_eq!(size.limit(), 1);
    }

    #[test]
    fn batches_halve_at_each_timeout_and_grow_back_once_answered_in_time() {
        let mut size = BatchSize::default();
        size.timed_out(500);
        assert_eq!(size.limit(), 250);
        size.timed_out(250);
        assert_eq!(size.limit(), 125);
        // Fewer sent than the limit: half of what was sent.
        size.timed_out(10);
        assert_eq!(size.limit(), 5);
        for sent in [5, 2, 1, 1] {
            size.timed_out(sent);
        }
        assert_eq!(size.limit(), 1, "never below one event");
        // A timeout breaks a run of batches taken: the growth counts again from it.
        for _ in 0..GROW_AFTER - 1 {
            size.taken(100);
        }
        size.timed_out(1);
        size.taken(100);
        assert_eq!(size.limit(), 1);
        for _ in 0..GROW_AFTER {
            size.taken(100);
        }
        assert_eq!(size.limit(), 2);
        for _ in 0..9 * GROW_AFTER {
            size.taken(100);
        }
        assert_eq!(size.limit(), BATCH);
    }

    /// Only a request that reached the receiver and was not answered in time makes batches smaller: a connection not
    /// made in time (a firewall that drops the packets; here a listener whose accept queue is full, where Linux drops
    /// the connection attempts) fails like a refused one, retried with the backoff at the same batch size.
    #[cfg(target_os = "linux")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn only_a_request_that_reached_the_receiver_times_out() {
        let http = http_client_with(Duration::from_secs(4)).unwrap();
        let post = |addr: std::net::SocketAddr| {
            let http = http.clone();
            async move {
                let url = format!("http://{addr}/hook");
                let result = http.post(&url).body("{}").send().await;
                let reached = result.as_ref().map_or_else(|e| !e.is_connect(), |_| true);
                (answer(result, 1, 2, &url), reached)
            }
        };
        // Refused: nothing listens there any more.
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        // Unreachable: a listener with a backlog of 0 that never accepts, its queue filled by one connection.
        let full = tokio::net::TcpSocket::new_v4().unwrap();
        full.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let full = full.listen(0).unwrap();
        let unreachable = full.local_addr().unwrap();
        let _queued = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect(unreachable),
        )
        .await;
        // Silent: takes the connection and the request, never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = silent.accept().await {
                held.push(stream);
            }
        });
        let (refused, unreachable, silent) =
            tokio::join!(post(refused), post(unreachable), post(silent_addr));
        assert!(
            matches!(&refused, (Answer::Failed(e), false) if e.starts_with("request to")),
            "{refused:?}"
        );
        assert!(
            matches!(&unreachable, (Answer::Failed(e), false) if e.starts_with("no connection to")),
            "{unreachable:?}"
        );
        assert!(
            matches!(&silent, (Answer::TimedOut(e), true) if e.starts_with("no answer from")),
            "{silent:?}"
        );
        drop(full);
    }

    /// A request that fails names its receiver (host and port) and every cause down to the system's (`Connection
    /// refused`), with the password of the URL's user information and its query masked.
    #[tokio::test]
    async fn a_failed_request_names_its_receiver_and_its_cause_without_secrets() {
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let url = format!("http://hook:pw-secret@{refused}/hook?token=q-secret");
        let result = http_client().unwrap().post(&url).body("{}").send().await;
        let Answer::Failed(e) = answer(result, 1, 2, &url) else {
            panic!("not a failure");
        };
        assert!(
            e.starts_with(&format!(
                "request to http://hook:********@{refused}/hook?******** failed: "
            )),
            "{e}"
        );
        assert!(e.to_lowercase().contains("connection refused"), "{e}");
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn an_error_chain_shows_each_cause_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("error sending request")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused",
        ));
        assert_eq!(error_chain(&e), "error sending request: Connection refused");
    }

    /// A receiver's failures are logged as warnings: the first, then one line a minute at most counting those since
    /// the last, and one line when it takes a batch again; a receiver that takes batches without having logged a
    /// failure logs nothing, and one that fails again soon after it recovered waits for its minute.
    #[test]
    fn a_receivers_failures_are_logged_once_a_minute_and_its_recovery_once() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let (a, b) = ("http://a.example/hook", "http://b.example/hook");
        assert_eq!(log.took(a, at(0)), None);
        assert_eq!(log.failed(a, at(0)), Some(1));
        assert_eq!(log.failed(a, at(1)), None);
        assert_eq!(log.failed(a, at(30)), None);
        // Another receiver has its own line.
        assert_eq!(log.failed(b, at(30)), Some(1));
        assert_eq!(log.failed(a, at(60)), Some(3));
        assert_eq!(log.took(a, at(70)), Some((4, Duration::from_secs(70))));
        assert_eq!(log.took(a, at(71)), None);
        // Failing again within the minute of its last line: held, and its recovery then is not logged either.
        assert_eq!(log.failed(a, at(80)), None);
        assert_eq!(log.took(a, at(81)), None);
        assert_eq!(log.failed(a, at(130)), Some(1));
        // Taken a minute after its last line, a receiver is forgotten.
        assert_eq!(log.took(b, at(100)), Some((1, Duration::from_secs(70))));
        assert!(!log.by_url.contains_key(b));
    }

    /// Beyond [`FAILURE_LOG_URLS`] receivers, those quiet for a minute are forgotten to make room; while all are
    /// recent, one more receiver's failure is logged without being followed.
    #[test]
    fn the_failure_log_follows_a_bounded_number_of_receivers() {
        let mut log = FailureLog::default();
        let t0 = Instant::now();
        for i in 0..FAILURE_LOG_URLS {
            assert_eq!(log.failed(&format!("http://h{i}.example/"), t0), Some(1));
        }
        assert_eq!(log.failed("http://more.example/", t0), Some(1));
        assert_eq!(log.failed("http://more.example/", t0), Some(1));
        assert_eq!(log.by_url.len(), FAILURE_LOG_URLS);
        let later = t0 + FAILURE_LOG_EVERY;
        assert_eq!(log.failed("http://more.example/", later), Some(1));
        assert_eq!(log.by_url.len(), 1);
    }

    /// At a graceful stop the batch in flight gets its answer (within the time given) and the answer is recorded in
    /// the store, so that the receiver does not get it again after the restart; no batch starts after the stop,
    /// and what waited then is sent after the restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_in_flight_at_the_stop_is_answered_and_not_sent_again() {
        use crate::outcomes::fixtures::{delivered, notification, wait_until};
        use crate::queue::message::IdGenerator;
        let release = Arc::new(tokio::sync::Notify::new());
        let gate = release.clone();
        let (url, script) = scripted(move |i, _| {
            let gate = gate.clone();
            Box::pin(async move {
                // The first request is answered only once the test lets it.
                if i == 0 {
                    gate.notified().await;
                }
                StatusCode::OK
            })
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let hook = settings(&url, 1_000_000);
        let resolve = move |_: &str| Some(hook.clone());
        // A request timeout no loaded machine reaches: the first answer comes when the test lets it.
        let hooks = Webhooks::start_with(
            store.clone(),
            Box::new(resolve.clone()),
            http_client_with(Duration::from_secs(300)),
            RETIRE_AFTER,
        );
        let ids = IdGenerator::new(0);
        let first = notification(ids.next(), "stop.example", 1);
        hooks.outcome(&delivered(&first));
        wait_until("the receiver got the first batch", || {
            lock(&script.batches).len() == 1
        })
        .await;

        let stop = tokio::spawn({
            let hooks = hooks.clone();
            async move { hooks.finish_sending(Duration::from_secs(60)).await }
        });
        wait_until("the stop began", || hooks.stopping.load(Ordering::SeqCst)).await;
        // An outcome after the stop is stored for the restart.
        let second = notification(ids.next(), "stop.example", 2);
        hooks.outcome(&delivered(&second));
        assert!(hooks.flush(Duration::from_secs(30)).await);
        // The stop waits for the answer to the batch in flight.
        assert!(!stop.is_finished());
        release.notify_one();
        assert_eq!(stop.await.unwrap(), 0, "a batch was cut off");
        // The sender, free again, does not send what waits: it ends instead (the map and the test hold its queue).
        let q = lock(&hooks.queues)["stop.example"].clone();
        wait_until("the sender ended", || Arc::strong_count(&q) == 2).await;
        assert_eq!(lock(&script.batches).len(), 1);
        let stats = hooks.stats().remove(0);
        assert_eq!((stats.delivered, stats.backlog), (1, 1), "{stats:?}");
        let stored = store.hook_queues().unwrap();
        assert_eq!(stored[0].head, 2, "the answer was not recorded");
        drop((q, hooks));

        // After the restart: only what was not taken is sent.
        let hooks = Webhooks::start(store.clone(), Box::new(resolve));
        wait_until("the waiting outcome arrived", || {
            lock(&script.took).len() >= 2
        })
        .await;
        assert_eq!(
            *lock(&script.took),
            vec![first.id.to_string(), second.id.to_string()]
        );
        assert_eq!(hooks.stats()[0].delivered, 1);
    }

    /// A receiver that refuses bodies above 64 KB (413) gets every outcome, in smaller batches; an outcome it refuses
    /// alone, larger than any batch it took, is dropped and counted, and the ones after it still go.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_receiver_that_refuses_large_bodies_gets_every_outcome_in_smaller_batches() {
        use crate::outcomes::fixtures::{delivered, notification, receiver_refusing, wait_until};
        use crate::queue::message::IdGenerator;
        let (url, took) = receiver_refusing(move |body| body.len() > 64 << 10).await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let settings = settings(&url, 1_000_000);
        let hooks = Webhooks::start(store, Box::new(move |_| Some(settings.clone())));
        let ids = IdGenerator::new(0);
        let mut sent = Vec::new();
        let total = 3 * BATCH;
        // The one outcome too large by itself: a failure whose reason is 70 KB long.
        let reason = "r".repeat(70 << 10);
        for i in 0..total {
            let n = notification(ids.next(), "hooks.example", (i % 200) as u8);
            if i == total / 2 {
                let mut r = delivered(&n);
                r.kind = OutcomeKind::Permanent;
                r.status = Some(400);
                r.error = &reason;
                hooks.outcome(&r);
            } else {
                hooks.outcome(&delivered(&n));
                sent.push(n.id.to_string());
            }
        }
        wait_until("every outcome but the refused one arrived", || {
            lock(&took).len() >= sent.len()
                && hooks
                    .stats()
                    .first()
                    .is_some_and(|s| s.backlog == 0 && s.dropped == 1)
        })
        .await;
        assert_eq!(*lock(&took), sent);
        let stats = hooks.stats().remove(0);
        assert_eq!((stats.delivered, stats.dropped), (sent.len() as u64, 1));
        assert!(
            stats
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("413")),
            "{stats:?}"
        );
    }

    /// A receiver (or a proxy before it) that answers 413 to everything: batches shrink to one outcome, and a 413 to
    /// one outcome, with no batch ever taken, is a failure retried after a backoff, not a drop. Once the receiver
    /// takes batches, every outcome arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_receiver_that_refuses_everything_as_too_large_loses_nothing() {
        use crate::outcomes::fixtures::{delivered, notification, wait_until};
        use crate::queue::message::IdGenerator;
        let refusing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let refuses = refusing.clone();
        let (url, script) = scripted(move |_, _| {
            let refuses = refuses.load(Ordering::SeqCst);
            Box::pin(async move {
                if refuses {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::NO_CONTENT
                }
            })
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let settings = settings(&url, 1_000_000);
        let hooks = Webhooks::start(store, Box::new(move |_| Some(settings.clone())));
        let ids = IdGenerator::new(0);
        let mut sent = Vec::new();
        for i in 0..5u8 {
            let n = notification(ids.next(), "hooks.example", i);
            hooks.outcome(&delivered(&n));
            sent.push(n.id.to_string());
        }
        // All five in the queue before it is looked at (the writer may store them over several passes).
        assert!(hooks.flush(Duration::from_secs(30)).await);
        wait_until("one outcome alone was refused twice", || {
            lock(&script.batches).iter().filter(|&&n| n == 1).count() >= 2
        })
        .await;
        let stats = hooks.stats().remove(0);
        assert_eq!((stats.dropped, stats.backlog), (0, 5), "{stats:?}");
        refusing.store(false, Ordering::SeqCst);
        wait_until("every outcome arrived", || {
            hooks
                .stats()
                .first()
                .is_some_and(|s| s.backlog == 0 && s.delivered == 5)
        })
        .await;
        assert_eq!(*lock(&script.took), sent);
        assert_eq!(hooks.stats()[0].dropped, 0);
    }

    /// A receiver that needs longer than the request timeout for a large batch (here it never answers one above 100
    /// outcomes) gets smaller batches after each timeout, until they are answered in time, and every outcome.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_receiver_too_slow_for_large_batches_gets_every_outcome_in_smaller_ones() {
        use crate::outcomes::fixtures::{delivered, notification, wait_until};
        use crate::queue::message::IdGenerator;
        let (url, script) = scripted(|_, events| {
            Box::pin(async move {
                if events > 100 {
                    return std::future::pending().await;
                }
                StatusCode::NO_CONTENT
            })
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let settings = settings(&url, 1_000_000);
        let hooks = Webhooks::start_with(
            store,
            Box::new(move |_| Some(settings.clone())),
            http_client_with(Duration::from_secs(1)),
            RETIRE_AFTER,
        );
        let ids = IdGenerator::new(0);
        let mut sent = Vec::new();
        for i in 0..2 * BATCH {
            let n = notification(ids.next(), "hooks.example", (i % 200) as u8);
            hooks.outcome(&delivered(&n));
            sent.push(n.id.to_string());
        }
        wait_until("every outcome arrived", || {
            hooks
                .stats()
                .first()
                .is_some_and(|s| s.backlog == 0 && s.delivered == sent.len() as u64)
        })
        .await;
        assert_eq!(*lock(&script.took), sent);
        let stats = hooks.stats().remove(0);
        assert_eq!(stats.dropped, 0);
        assert!(stats.failures > 0, "no batch timed out: {stats:?}");
        assert!(
            stats
                .last_error
                .as_deref()
                .is_some_and(|e| e.contains("no answer from")),
            "{stats:?}"
        );
    }

    /// The writer drops the oldest events beyond the backlog while the batch holding them is in flight; the receiver
    /// then takes the batch: those events count as delivered, not dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_trimmed_while_in_flight_and_then_taken_count_as_delivered() {
        use crate::outcomes::fixtures::{delivered, notification, wait_until};
        use crate::queue::message::IdGenerator;
        // The first request waits until the test lets it be answered.
        let hold = Arc::new(tokio::sync::Semaphore::new(0));
        let held = hold.clone();
        let (url, script) = scripted(move |index, _| {
            let held = held.clone();
            Box::pin(async move {
                if index == 0 {
                    let _ = held.acquire().await;
                }
                StatusCode::NO_CONTENT
            })
        })
        .await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let settings = settings(&url, 10);
        let hooks = Webhooks::start_with(
            store,
            Box::new(move |_| Some(settings.clone())),
            http_client_with(Duration::from_secs(300)),
            RETIRE_AFTER,
        );
        let ids = IdGenerator::new(0);
        let mut all = Vec::new();
        let mut send = |hooks: &Webhooks| {
            for i in 0..10u8 {
                let n = notification(ids.next(), "hooks.example", i);
                hooks.outcome(&delivered(&n));
                all.push(n.id.to_string());
            }
        };
        send(&hooks);
        wait_until("the first batch is in flight", || {
            !lock(&script.batches).is_empty()
        })
        .await;
        let first = lock(&script.batches)[0] as u64;
        // Ten more: the ten oldest go beyond the backlog of 10, the first batch's among them.
        send(&hooks);
        assert!(hooks.flush(Duration::from_secs(30)).await);
        let stats = hooks.stats().remove(0);
        assert_eq!(
            (stats.backlog, stats.dropped),
            (10, 10 - first),
            "{stats:?}"
        );
        hold.add_permits(1);
        wait_until("the rest arrived", || {
            hooks.stats().first().is_some_and(|s| s.backlog == 0)
                && lock(&script.took).len() as u64 == first + 10
        })
        .await;
        let stats = hooks.stats().remove(0);
        assert_eq!(
            (stats.delivered, stats.dropped),
            (first + 10, 10 - first),
            "{stats:?}"
        );
        let mut expected: Vec<String> = all[..first as usize].to_vec();
        expected.extend_from_slice(&all[10..]);
        assert_eq!(*lock(&script.took), expected);
    }

    /// A queue with nothing waiting retires after a while: its sender ends, its rows leave the store, its domain's
    /// options are forgotten, its counters stay. The domain's next events make a queue again, numbered from the
    /// start, and arrive; a restart finds the store consistent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_queue_retires_and_a_later_event_makes_it_again() {
        use crate::outcomes::fixtures::{delivered, notification, receiver, wait_until};
        use crate::queue::message::IdGenerator;
        let (url, took) = receiver().await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let settings = Arc::new(HookSettings {
            url,
            secret: "s".into(),
            delivered: true,
            failed: true,
            invalid_token: true,
            max_age: Duration::from_secs(3600),
            backlog: 1_000_000,
        });
        let resolve = move |_: &str| Some(settings.clone());
        let hooks = Webhooks::start_with(
            store.clone(),
            Box::new(resolve.clone()),
            http_client(),
            Duration::from_millis(200),
        );
        let ids = IdGenerator::new(0);
        let mut sent = Vec::new();
        let send = |hooks: &Webhooks, domain: &str, n: u8, sent: &mut Vec<String>| {
            for i in 0..n {
                let n = notification(ids.next(), domain, i);
                hooks.outcome(&delivered(&n));
                sent.push(n.id.to_string());
            }
        };
        send(&hooks, "a.example", 5, &mut sent);
        wait_until("the first events arrived", || lock(&took).len() == 5).await;
        wait_until("the idle queue retired", || {
            lock(&hooks.queues).is_empty()
                && lock(&hooks.domains).by_name.is_empty()
                && store.hook_queues().unwrap().is_empty()
        })
        .await;
        let stats = hooks.stats();
        assert_eq!(
            (stats.len(), stats[0].delivered, stats[0].backlog),
            (1, 5, 0),
            "{stats:?}"
        );

        send(&hooks, "a.example", 3, &mut sent);
        wait_until("the later events arrived", || lock(&took).len() == 8).await;
        assert_eq!(*lock(&took), sent);
        wait_until("the queue recorded them", || {
            hooks.stats()[0].delivered == 8
                && store
                    .hook_queues()
                    .unwrap()
                    .first()
                    .is_some_and(|q| q.head == 4 && q.chunks.is_empty())
        })
        .await;
        drop(hooks);
        // Restarted: nothing is sent again, and a new event goes out after the ones before.
        let again = Webhooks::start_with(
            store.clone(),
            Box::new(resolve),
            http_client(),
            RETIRE_AFTER,
        );
        send(&again, "a.example", 1, &mut sent);
        wait_until("the event after the restart arrived", || {
            lock(&took).len() == 9
        })
        .await;
        assert_eq!(*lock(&took), sent);
    }

    /// A receiver down while a domain's outcomes come one per writer pass, with the memory bound reached (here by
    /// the other queues): the queue holds one entry for all of its chunks, and the store no more than the backlog
    /// (the chunks trimmed beyond it are deleted). A reload that gives the webhook a receiver that is up gets the
    /// queue sending at once, whatever its backoff had grown to: the outcomes within the backlog arrive, in order,
    /// and nothing is left in the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_receiver_down_for_many_chunks_keeps_the_queue_bounded() {
        use crate::outcomes::fixtures::{delivered, notification, receiver, wait_until};
        use crate::queue::message::IdGenerator;
        const BACKLOG: u64 = 150;
        const SENT: usize = 400;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        // Nothing listens there (a port just bound and let go): every request fails, and the backoff grows.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let current = Arc::new(Mutex::new(settings(
            &format!("http://127.0.0.1:{closed}/hook"),
            BACKLOG,
        )));
        let config = current.clone();
        let hooks = Webhooks::start(
            store.clone(),
            Box::new(move |_| Some(lock(&config).clone())),
        );
        hooks.cached.store(CACHE_BYTES, Ordering::Relaxed);
        let ids = IdGenerator::new(0);
        let mut sent = Vec::new();
        for i in 0..SENT {
            let n = notification(ids.next(), "hooks.example", (i % 200) as u8);
            hooks.outcome(&delivered(&n));
            sent.push(n.id.to_string());
            // One chunk each: the writer stored it before the next comes.
            let target = i as u64 + 1;
            wait_until("the writer stored the outcome", || {
                hooks.stored.load(Ordering::Acquire) >= target
            })
            .await;
        }
        let q = lock(&hooks.queues)["hooks.example"].clone();
        {
            let chunks = lock(&q.chunks);
            assert_eq!((chunks.live.len(), chunks.cached), (1, 0));
        }
        // Events of a batch in flight that the trim passed are counted once its answer (a failure) came: every
        // outcome is counted, and one request failed, before the figures are read.
        wait_until("the batch in flight was answered", || {
            hooks.stats().first().is_some_and(|s| {
                s.backlog + s.dropped + s.delivered == SENT as u64 && s.failures > 0
            })
        })
        .await;
        let stats = hooks.stats().remove(0);
        assert_eq!(
            (stats.backlog, stats.dropped, stats.delivered),
            (BACKLOG, SENT as u64 - BACKLOG, 0),
            "{stats:?}"
        );
        assert!(stats.failures > 0, "{stats:?}");
        let stored: Vec<(u64, u64)> = store
            .hook_queues()
            .unwrap()
            .into_iter()
            .flat_map(|q| q.chunks)
            .collect();
        assert_eq!(stored.len() as u64, BACKLOG, "{stored:?}");
        // The receiver is up at another URL.
        let (url, took) = receiver().await;
        *lock(&current) = settings(&url, BACKLOG);
        hooks.reconfigure();
        wait_until("the outcomes within the backlog arrived", || {
            hooks
                .stats()
                .first()
                .is_some_and(|s| s.backlog == 0 && s.delivered == BACKLOG)
        })
        .await;
        assert_eq!(*lock(&took), sent[SENT - BACKLOG as usize..]);
        let left: Vec<_> = store
            .hook_queues()
            .unwrap()
            .into_iter()
            .flat_map(|q| q.chunks)
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert!(lock(&q.chunks).live.is_empty());
    }

    /// A queue that retires deletes its rows with the map of queues unlocked: while that write is held up (a test
    /// hook stalls it), the figures and `/metrics` are answered, and the domain's next outcome waits for it to end,
    /// then goes into a new queue and arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retiring_queue_holds_up_neither_the_figures_nor_its_next_outcomes() {
        use crate::outcomes::fixtures::{delivered, notification, receiver, wait_until};
        use crate::queue::message::IdGenerator;
        let (url, took) = receiver().await;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let settings = settings(&url, 1_000_000);
        let hooks = Webhooks::start_with(
            store.clone(),
            Box::new(move |_| Some(settings.clone())),
            http_client(),
            Duration::from_millis(200),
        );
        let (entered, forget_entered) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        *lock(&hooks.before_forget) = Some(Box::new(move || {
            let _ = entered.send(());
            let _ = released.recv();
        }));
        let ids = IdGenerator::new(0);
        let mut sent = Vec::new();
        for i in 0..3u8 {
            let n = notification(ids.next(), "a.example", i);
            hooks.outcome(&delivered(&n));
            sent.push(n.id.to_string());
        }
        wait_until("the outcomes arrived", || lock(&took).len() == 3).await;
        wait_until("the idle queue's retirement is deleting its rows", || {
            forget_entered.try_recv().is_ok()
        })
        .await;
        // Asked on a thread of its own: were the figures held up, the test fails after the deadline, not hangs.
        let (answer, answered) = std::sync::mpsc::channel();
        let h = hooks.clone();
        std::thread::spawn(move || {
            let stats = h.stats();
            let mut metrics = String::new();
            h.render_metrics(&mut metrics);
            let _ = answer.send((stats, metrics));
        });
        let (stats, metrics) = answered
            .recv_timeout(Duration::from_secs(30))
            .expect("the figures waited for the retiring queue's write");
        assert_eq!(
            (stats.len(), stats[0].delivered, stats[0].backlog),
            (1, 3, 0),
            "{stats:?}"
        );
        assert!(
            metrics.contains("herald_webhook_delivered_total{domain=\"a.example\"} 3"),
            "{metrics}"
        );
        // The next outcome of the domain: the writer waits for the retirement, then makes a new queue.
        let n = notification(ids.next(), "a.example", 9);
        hooks.outcome(&delivered(&n));
        sent.push(n.id.to_string());
        release.send(()).unwrap();
        wait_until("the outcome after the retirement arrived", || {
            lock(&took).len() == 4
        })
        .await;
        assert_eq!(*lock(&took), sent);
        wait_until("the new queue counted it", || {
            hooks.stats().first().is_some_and(|s| s.delivered == 4)
        })
        .await;
        // The new queue numbered its events from the start: the old rows were gone before it stored any.
        wait_until("the new queue recorded its head", || {
            store
                .hook_queues()
                .unwrap()
                .first()
                .is_some_and(|q| q.head == 2 && q.chunks.is_empty())
        })
        .await;
    }

    /// Each wait after a failure lies between half the delay and the delay, and the waits spread over that range;
    /// the delay doubles up to the most, and starts again after a batch taken or with another URL.
    #[test]
    fn the_backoff_waits_between_half_the_delay_and_the_delay() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            FIRST_BACKOFF,
            MAX_BACKOFF,
        ] {
            for _ in 0..1_000 {
                let wait = jittered(d);
                assert!(d / 2 <= wait && wait <= d, "{wait:?} for {d:?}");
            }
        }
        let waits: Vec<Duration> = (0..1_000).map(|_| jittered(MAX_BACKOFF)).collect();
        let (low, high) = (waits.iter().min().unwrap(), waits.iter().max().unwrap());
        assert!(
            *low < MAX_BACKOFF * 6 / 10 && *high > MAX_BACKOFF * 9 / 10,
            "{low:?}..{high:?}"
        );

        let mut backoff = Backoff::default();
        backoff.for_url("https://a.example/hook");
        let mut delays = Vec::new();
        for _ in 0..12 {
            let delay = backoff.delay;
            let wait = backoff.next_wait();
            assert!(delay / 2 <= wait && wait <= delay, "{wait:?} for {delay:?}");
            delays.push(delay);
        }
        assert_eq!(
            delays[..3],
            [FIRST_BACKOFF, FIRST_BACKOFF * 2, FIRST_BACKOFF * 4]
        );
        assert_eq!(delays[11], MAX_BACKOFF);
        // The same URL again (a reload that changed something else): the backoff goes on.
        backoff.for_url("https://a.example/hook");
        assert_eq!(backoff.delay, MAX_BACKOFF);
        // Another URL: from the first delay again.
        backoff.for_url("https://b.example/hook");
        assert_eq!(backoff.delay, FIRST_BACKOFF);
        backoff.next_wait();
        backoff.reset();
        assert_eq!(backoff.delay, FIRST_BACKOFF);
    }

    /// The domain is a label value of the text exposition format: a backslash, a double quote and a line feed in
    /// it are escaped, so that every family stays one line per domain.
    #[tokio::test]
    async fn metric_label_values_are_escaped() {
        use crate::outcomes::fixtures::{delivered, notification, wait_until};
        use crate::queue::message::IdGenerator;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let settings = Arc::new(HookSettings {
            // Nothing listens there: the event stays queued.
            url: "http://127.0.0.1:9/hook".into(),
            secret: "s".into(),
            delivered: true,
            failed: true,
            invalid_token: true,
            max_age: Duration::from_secs(3600),
            backlog: 1_000_000,
        });
        let hooks = Webhooks::start(store, Box::new(move |_| Some(settings.clone())));
        let domain = "a\\b\"c\nd.example";
        let n = notification(IdGenerator::new(0).next(), domain, 1);
        hooks.outcome(&delivered(&n));
        wait_until("the domain's queue exists", || {
            hooks.stats().iter().any(|s| s.domain == domain)
        })
        .await;
        let mut out = String::new();
        hooks.render_metrics(&mut out);
        for line in out.lines() {
            assert!(
                line.starts_with("# ") || line.starts_with("herald_webhook_"),
                "{line:?} in\n{out}"
            );
        }
        assert!(
            out.contains("herald_webhook_backlog{domain=\"a\\\\b\\\"c\\nd.example\"} "),
            "{out}"
        );
    }

    /// The writer's trim and the sender's advance record their heads after releasing the queue's lock, in either
    /// order: a head computed lower than one already recorded does not move the stored head back.
    #[test]
    fn the_stored_head_never_goes_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        let q = Queue::default();
        let head = |store: &OutcomeStore| {
            store
                .hook_queues()
                .unwrap()
                .into_iter()
                .find(|q| q.name == "hooks.example")
                .map(|q| q.head)
        };
        record_head(&store, &q, "hooks.example", 10, Done::default()).unwrap();
        assert_eq!(head(&store), Some(10));
        record_head(&store, &q, "hooks.example", 5, Done::default()).unwrap();
        assert_eq!(head(&store), Some(10));
        record_head(&store, &q, "hooks.example", 12, Done::default()).unwrap();
        assert_eq!(head(&store), Some(12));
    }

    #[test]
    fn tokens_are_written_as_lowercase_hex() {
        let mut out = b"x".to_vec();
        hex(&mut out, &[0x00, 0xab, 0x7f, 0xff]);
        assert_eq!(out, b"x00ab7fff");
    }

    #[test]
    fn json_strings_are_escaped() {
        let mut out = Vec::new();
        json_str(&mut out, "a\"b\\c\nd\u{1}é");
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }

    #[test]
    fn events_older_than_max_age_are_left_out() {
        let event = |seq: u64, at: u64| {
            (
                seq,
                Bytes::from(format!(
                    "{{\"id\":\"{seq}\",\"finished_at\":{at},\"attempts\":0}}"
                )),
            )
        };
        let ids = |fresh: Vec<&Bytes>| -> Vec<u64> {
            fresh
                .iter()
                .map(|e| {
                    serde_json::from_slice::<serde_json::Value>(e).unwrap()["id"]
                        .as_str()
                        .unwrap()
                        .parse()
                        .unwrap()
                })
                .collect()
        };
        // All fresh: every event goes.
        let events = vec![event(1, 100), event(2, 101), event(3, 102)];
        assert_eq!(ids(fresh_events(&events, 100)), [1, 2, 3]);
        // The oldest stale: each event is judged by its own time.
        let events = vec![event(1, 90), event(2, 99), event(3, 100), event(4, 105)];
        assert_eq!(ids(fresh_events(&events, 100)), [3, 4]);
        // All stale, and an empty batch.
        assert!(fresh_events(&events[..2], 100).is_empty());
        assert!(fresh_events(&[], 100).is_empty());
    }

    #[test]
    fn finished_at_is_read_from_the_event_json() {
        let event = serde_json::json!({"id": "x", "finished_at": 1_700_000_123u64, "reason": "\"finished_at\":1"});
        assert_eq!(
            finished_at(event.to_string().as_bytes()),
            Some(1_700_000_123)
        );
        assert_eq!(finished_at(b"{\"id\":\"x\"}"), None);
    }

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        // printf '1700000000.{}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature(b"secret", 1_700_000_000, b"{}"),
            "v1=b8569b78799ff9e3cbff0fc2d63a33a2b57f3282abd07c37ae5e8e7d79a5f163"
        );
    }
}
