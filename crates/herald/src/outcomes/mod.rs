//! Outcomes for the apps that send: what happened to each notification, by id.
//!
//! The delivery path reports through one narrow seam, [`OutcomeListener`]: the queue calls it when a notification
//! is queued, handed to a connection, and at every attempt's outcome. The calls are made on the domain task, so an
//! implementation must be cheap and must never block (record in memory, hand the rest to a thread). The
//! [`book::StatusBook`] implements it to answer `GET /api/v1/notifications/{id}` ([`api`]; on the JetStream spool
//! together with the other nodes' books, [`peers`]); other consumers (a
//! dashboard) implement it too and are combined with [`Fanout`].
//!
//! Ids are looked up by their printed form (`NN/NN-PPPPP-XXXXXXXX`, see [`MessageId`]), which is what every
//! answer and log line shows; [`key_of`] and [`parse_id`] map both to the store's 16-byte key.

pub mod api;
pub mod book;
pub mod codec;
pub mod in_stream;
pub mod peers;
pub mod slots;
pub mod webhook;

#[cfg(test)]
pub(crate) mod fixtures;

use std::sync::Arc;
use std::time::SystemTime;

use herald_spool::OutcomeKey;

use crate::logs::OutcomeRecord;
use crate::queue::message::{MessageId, Notification};

/// Told about the life of every notification. Every method runs on the delivery path: keep it cheap, never block.
pub trait OutcomeListener: Send + Sync + 'static {
    /// The notification entered its queue (accepted, restored after a restart), after `retries` failed attempts.
    fn queued(&self, _notification: &Notification, _retries: u32) {}
    /// The notification was handed to a connection.
    fn in_flight(&self, _id: MessageId) {}
    /// One attempt's outcome. Delivered and permanent ones are final; a transient one is followed by
    /// [`OutcomeListener::rescheduled`] when it will be retried, or by a permanent one when retries ran out.
    fn outcome(&self, record: &OutcomeRecord<'_>);
    /// After a transient failure: the next attempt is due at `next_attempt`.
    fn rescheduled(&self, _id: MessageId, _retries: u32, _next_attempt: SystemTime) {}
    /// The notification entered its queue held back until `next_attempt`, after `retries` failed attempts: restored
    /// after a restart with the retry it waited for still ahead (the spool keeps the retry count and that time, not
    /// the reason of the last failure). By default [`OutcomeListener::queued`], then
    /// [`OutcomeListener::rescheduled`]; a listener that answers lookups records both at once, so that no lookup
    /// finds it queued without its next attempt.
    fn queued_until(&self, notification: &Notification, retries: u32, next_attempt: SystemTime) {
        self.queued(notification, retries);
        self.rescheduled(notification.id, retries, next_attempt);
    }
    /// After a transient failure: the notification went back to the shared store for its retry (the JetStream
    /// spool), to be delivered by whichever node pulls it; this node hears nothing more of it.
    fn left(&self, _id: MessageId) {}
    /// The notification was accepted into the shared store (the JetStream spool) and waits there for whichever
    /// node pulls it; no queue of this node holds it.
    fn entered_stream(&self, _notification: &Notification) {}
}

/// A writer of outcome records (the status book's final outcomes, webhook events) that a crash must not lose:
/// the spool forgets a notification only once its records are stored, or a `kill -9` in between would lose them
/// with nothing left to deliver again ([`crate::spool::SpoolBridge::gate_removals_on`]).
///
/// The two counts are such that once [`OutcomeWriter::stored`] reaches a value [`OutcomeWriter::handed`] had
/// after a record was handed over, that record is stored: a writer never counts a record it could not store (it
/// keeps it and tries again, [`StoreRetry`]).
///
/// A writer whose thread is gone (it could not start, or it panicked) answers `u64::MAX` for `stored`: nothing it
/// was handed will be stored, and removals must not wait for it for ever.
pub trait OutcomeWriter: Send + Sync + 'static {
    /// Records handed to the writer so far.
    fn handed(&self) -> u64;
    /// Records the writer has stored so far.
    fn stored(&self) -> u64;
}

/// Runs its closure when dropped: how a writer thread says it ended, however it ended (a panic unwinds through
/// it too).
pub(crate) struct OnExit<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for OnExit<F> {
    fn drop(&mut self) {
        (self.0)()
    }
}

/// How long a writer thread (final outcomes, webhook events) lets work gather after a batch that did not fill
/// up, before it looks again. While it waits, the delivery path hands work over without waking it: at tens of
/// thousands of outcomes a second, waking per handful cost more CPU (futex wakes, context switches, one store
/// commit each) than storing them. Lookups read a final outcome from memory until it is stored, so the pause is
/// not visible to them.
pub const WRITER_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// The first wait of a writer thread after the outcome store refused a write: the store reopens its keyspace at most
/// this often after a failure, so a sooner try would meet the same refusal.
pub const STORE_RETRY_FIRST: std::time::Duration = herald_spool::outcomes::REOPEN_INTERVAL;
/// The longest wait between two tries of a refused write.
pub const STORE_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// How a writer thread (final outcomes, webhook events) outlasts an outcome store that refuses writes (disk full, I/O
/// error): what it could not store stays in its hands, uncounted as stored, so the spool keeps the notifications
/// (their removals are held, [`OutcomeWriter`]) and lookups still read final outcomes from memory; it tries again
/// after [`STORE_RETRY_FIRST`], the wait doubling up to [`STORE_RETRY_MAX`], until the write is stored or its owner
/// is gone. Meanwhile new work waits in the writer's bounded hand-off, and past that bound is dropped and counted,
/// as when the writer falls behind. One error is logged per episode of refusals, and one line when a write is
/// stored again.
pub(crate) struct StoreRetry {
    /// What the writer stores, for the log lines.
    what: &'static str,
    wait: std::time::Duration,
    /// Since when, and how many tries were refused, while the store refuses writes.
    failing: Option<(std::time::Instant, u64)>,
}

impl StoreRetry {
    pub(crate) fn new(what: &'static str) -> StoreRetry {
        StoreRetry {
            what,
            wait: STORE_RETRY_FIRST,
            failing: None,
        }
    }

    /// After a refused write of `held` records: logs the first refusal of an episode, and returns how long to wait
    /// before the next try.
    pub(crate) fn refused(
        &mut self,
        error: &dyn std::fmt::Display,
        held: usize,
    ) -> std::time::Duration {
        match &mut self.failing {
            Some((_, tries)) => *tries += 1,
            None => {
                tracing::error!("{}", self.refused_line(error, held));
                self.failing = Some((std::time::Instant::now(), 1));
            }
        }
        let wait = self.wait;
        self.wait = (self.wait * 2).min(STORE_RETRY_MAX);
        wait
    }

    /// The error line of the first refusal of an episode.
    fn refused_line(&self, error: &dyn std::fmt::Display, held: usize) -> String {
        format!(
            "storing {held} {}: {error}; kept in memory and tried again until the outcome store takes them (the \
             notifications stay spooled meanwhile)",
            self.what
        )
    }

    /// After a write that was stored: ends an episode of refusals (logged) and the backoff.
    pub(crate) fn stored(&mut self) {
        if let Some((since, tries)) = self.failing.take() {
            tracing::info!(
                "the outcome store takes {} again, after {tries} refused tries over {:?}",
                self.what,
                since.elapsed()
            );
        }
        self.wait = STORE_RETRY_FIRST;
    }
}

/// Sleeps `wait` on a writer thread, in short slices: false as soon as `alive` says the writer's owner is gone (the
/// thread then ends instead of waiting out a long backoff).
pub(crate) fn pause_while(alive: impl Fn() -> bool, wait: std::time::Duration) -> bool {
    const SLICE: std::time::Duration = std::time::Duration::from_millis(50);
    let until = std::time::Instant::now() + wait;
    loop {
        if !alive() {
            return false;
        }
        let left = until.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(SLICE));
    }
}

/// Makes what the outcome store holds durable (at a graceful stop, after a writer's flush), waiting at most `within`
/// (at least a second) for it; a failure is logged.
async fn sync_store(store: &Arc<herald_spool::OutcomeStore>, within: std::time::Duration) {
    let store = store.clone();
    let synced = tokio::time::timeout(
        within.max(std::time::Duration::from_secs(1)),
        tokio::task::spawn_blocking(move || store.sync()),
    )
    .await;
    match synced {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!("{e}"),
        Ok(Err(e)) => tracing::warn!("syncing the outcome store: {e}"),
        Err(_) => tracing::warn!("syncing the outcome store: not done within {within:?}"),
    }
}

/// Waits (at most `within`) until `done` reaches `target`: a writer's count of work finished, against what was
/// handed to it (the flushes at a graceful stop). False when the time ran out first.
async fn reached(
    done: &std::sync::atomic::AtomicU64,
    target: u64,
    within: std::time::Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while done.load(std::sync::atomic::Ordering::Acquire) < target {
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    true
}

/// Several listeners as one.
pub struct Fanout(pub Vec<Arc<dyn OutcomeListener>>);

impl OutcomeListener for Fanout {
    fn queued(&self, n: &Notification, retries: u32) {
        self.0.iter().for_each(|l| l.queued(n, retries));
    }
    fn in_flight(&self, id: MessageId) {
        self.0.iter().for_each(|l| l.in_flight(id));
    }
    fn outcome(&self, record: &OutcomeRecord<'_>) {
        self.0.iter().for_each(|l| l.outcome(record));
    }
    fn rescheduled(&self, id: MessageId, retries: u32, next_attempt: SystemTime) {
        self.0
            .iter()
            .for_each(|l| l.rescheduled(id, retries, next_attempt));
    }
    fn queued_until(&self, n: &Notification, retries: u32, next_attempt: SystemTime) {
        self.0
            .iter()
            .for_each(|l| l.queued_until(n, retries, next_attempt));
    }
    fn left(&self, id: MessageId) {
        self.0.iter().for_each(|l| l.left(id));
    }
    fn entered_stream(&self, n: &Notification) {
        self.0.iter().for_each(|l| l.entered_stream(n));
    }
}

/// The store key of an id: what its printed form carries (node, process start second modulo 100000, the low 40
/// bits of the counter), run first.
pub fn key_of(id: MessageId) -> OutcomeKey {
    let run = ((id.epoch_ms() / 1000) % 100_000) as u32;
    pack(id.node(), run, id.counter() & ((1 << 40) - 1))
}

/// The id whose printed form [`key_of`] packed into `key` (the printed form is all a key keeps: ids that print
/// alike share a key).
pub fn id_of(key: &OutcomeKey) -> MessageId {
    let mut run = [0u8; 4];
    run.copy_from_slice(&key[1..5]);
    let mut counter = [0u8; 8];
    counter.copy_from_slice(&key[8..]);
    MessageId::from_parts(
        key[0],
        u64::from(u32::from_be_bytes(run)) * 1000,
        u64::from_be_bytes(counter),
    )
}

fn pack(node: u8, run: u32, counter: u64) -> OutcomeKey {
    let mut k = [0u8; 16];
    k[0] = node;
    k[1..5].copy_from_slice(&run.to_be_bytes());
    k[8..].copy_from_slice(&counter.to_be_bytes());
    k
}

/// The key of a printed id `NN/NN-PPPPP-XXXXXXXX`; `None` when the text is not one.
pub fn parse_id(text: &str) -> Option<OutcomeKey> {
    let b = text.as_bytes();
    if b.len() != 20 || b[2] != b'/' || b[5] != b'-' || b[11] != b'-' {
        return None;
    }
    // Digits only: `from_str_radix` alone would also take a sign (`+F`), an id no one was given.
    let hex = |s: &str| {
        s.bytes()
            .all(|c| c.is_ascii_hexdigit())
            .then(|| u64::from_str_radix(s, 16).ok())
            .flatten()
    };
    let node = u8::try_from(hex(text.get(0..2)?)?).ok()?;
    let high = hex(text.get(3..5)?)?;
    let run_text = text.get(6..11)?;
    if !run_text.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let run: u32 = run_text.parse().ok()?;
    let low = hex(text.get(12..20)?)?;
    Some(pack(node, run, (high << 32) | low))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer thread that panics still says it ended, so the spool's removals stop waiting for it
    /// ([`OutcomeWriter`]).
    #[test]
    fn a_writer_thread_that_panics_says_it_ended() {
        let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = gone.clone();
        let thread = std::thread::spawn(move || {
            let _exit = OnExit(move || flag.store(true, std::sync::atomic::Ordering::Release));
            panic!("a writer failing");
        });
        assert!(thread.join().is_err());
        assert!(gone.load(std::sync::atomic::Ordering::Acquire));
    }

    /// An outcome store that refuses writes for a while (a failing disk) loses nothing: the writers keep what they
    /// hold and try again until it is stored, the spool keeps the notifications meanwhile, every lookup answers the
    /// final state (from memory, then from the store), every webhook event arrives, and the held removals go
    /// through once it is all stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outcomes_outlast_a_store_that_refuses_writes_for_a_while() {
        use crate::outcomes::book::{Found, StatusBook};
        use crate::outcomes::fixtures::{delivered, notification, receiver, wait_until};
        use crate::outcomes::webhook::{HookSettings, Webhooks};
        use crate::queue::message::IdGenerator;
        use crate::spool::removals::RemovalGate;
        use herald_spool::{Lookup, MemorySpool, OutcomeStore, Spool, SpoolKey};
        use std::time::Duration;

        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let book = StatusBook::new(store.clone(), Duration::from_secs(3600), 1_000_000);
        let (url, took) = receiver().await;
        let settings = Arc::new(HookSettings {
            url,
            secret: "s".into(),
            delivered: true,
            failed: true,
            invalid_token: true,
            max_age: Duration::from_secs(3600),
            backlog: 1_000_000,
        });
        let hooks = Webhooks::start(store.clone(), Box::new(move |_| Some(settings.clone())));
        let memory = Arc::new(MemorySpool::new());
        let spool: Arc<dyn Spool> = memory.clone();
        let gate = RemovalGate::start(vec![book.clone(), hooks.clone()], &spool);
        const N: u32 = 300;
        let records = (0..N)
            .map(|i| {
                let mut r = crate::spool::tests::stored_sample();
                r.key = SpoolKey(u128::from(i) + 1);
                r
            })
            .collect();
        memory.append(records).await.unwrap();

        store.refuse_writes(true);
        let ids = IdGenerator::new(0);
        let mut done = Vec::new();
        for i in 0..N {
            let n = notification(ids.next(), "refused.example", i as u8);
            book.queued(&n, 0);
            book.in_flight(n.id);
            book.outcome(&delivered(&n));
            hooks.outcome(&delivered(&n));
            gate.remove(&*memory, vec![SpoolKey(u128::from(i) + 1)]);
            done.push(n);
        }
        // Both writers met refusals, and tried again after one (a writer that gave up after a few quick tries would
        // have dropped its work by now).
        wait_until("the writers tried again after a refusal", || {
            store.writes_refused() >= 4
        })
        .await;
        assert_eq!(
            memory.stats().records,
            u64::from(N),
            "removed with outcomes not stored"
        );
        assert_eq!(gate.held(), N as usize);
        for n in &done {
            match book.lookup(&key_of(n.id)).unwrap() {
                Found::Status(s) => assert_eq!(s.state, "delivered", "{}", n.id),
                other => panic!("{}: {other:?}", n.id),
            }
        }

        store.refuse_writes(false);
        wait_until("every webhook event arrived", || {
            took.lock().unwrap().len() >= N as usize
        })
        .await;
        wait_until("the held removals went through", || {
            gate.held() == 0 && memory.stats().records == 0
        })
        .await;
        wait_until("the book's memory emptied", || book.stats().tracked == 0).await;
        for n in &done {
            assert!(
                matches!(store.lookup(&key_of(n.id)).unwrap(), Lookup::Found(_)),
                "{} not stored",
                n.id
            );
            match book.lookup(&key_of(n.id)).unwrap() {
                Found::Status(s) => assert_eq!(s.state, "delivered", "{}", n.id),
                other => panic!("{}: {other:?}", n.id),
            }
        }
        let sent: Vec<String> = done.iter().map(|n| n.id.to_string()).collect();
        assert_eq!(*took.lock().unwrap(), sent);
        assert_eq!(book.stats().dropped, 0);
        assert_eq!(hooks.handoff_dropped(), 0);
        assert_eq!(hooks.stats()[0].dropped, 0);
    }

    #[test]
    fn the_refusal_line_reads_as_one_sentence() {
        let line = StoreRetry::new("webhook outcomes").refused_line(&"disk full", 3);
        assert!(
            line.starts_with("storing 3 webhook outcomes: disk full; kept in memory"),
            "{line}"
        );
        assert!(!line.contains("  "), "a run of spaces in {line:?}");
    }

    #[test]
    fn printed_ids_map_to_the_same_key() {
        let id = MessageId::from_parts(3, 1_800_000_123_456, (0xAB << 32) | 0x1234_5678);
        assert_eq!(parse_id(&id.to_string()), Some(key_of(id)));
        assert_eq!(id_of(&key_of(id)).to_string(), id.to_string());
        assert_eq!(key_of(id_of(&key_of(id))), key_of(id));
        let other = MessageId::from_parts(3, 1_800_000_123_456, (0xAB << 32) | 0x1234_5679);
        assert_ne!(key_of(id), key_of(other));
        assert!(key_of(id) < key_of(other), "keys increase within a run");
        for bad in [
            "",
            "nope",
            "03/AB-00123-1234567",
            "03/AB-0012x-12345678",
            "03/AB-00123-1234567g",
            // A sign is not a digit, though `from_str_radix` takes one.
            "+3/AB-00123-12345678",
            "03/+B-00123-12345678",
            "03/AB-00123-+2345678",
            "03/AB-+0123-12345678",
        ] {
            assert_eq!(parse_id(bad), None, "{bad}");
        }
    }
}
