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
    /// After a transient failure: the notification went back to the shared store for its retry (the JetStream
    /// spool), to be delivered by whichever node pulls it; this node hears nothing more of it.
    fn left(&self, _id: MessageId) {}
}

/// A writer of outcome records (the status book's final outcomes, webhook events) that a crash must not lose:
/// the spool forgets a notification only once its records are stored, or a `kill -9` in between would lose them
/// with nothing left to deliver again ([`crate::spool::SpoolBridge::gate_removals_on`]).
///
/// The two counts are such that once [`OutcomeWriter::stored`] reaches a value [`OutcomeWriter::handed`] had
/// after a record was handed over, that record is stored (or given up on, counted as dropped).
///
/// A writer whose thread is gone (it could not start, or it panicked) answers `u64::MAX` for `stored`: nothing it
/// was handed will be stored, and removals must not wait for it for ever.
pub trait OutcomeWriter: Send + Sync + 'static {
    /// Records handed to the writer so far.
    fn handed(&self) -> u64;
    /// Records the writer has stored, or given up on, so far.
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
    fn left(&self, id: MessageId) {
        self.0.iter().for_each(|l| l.left(id));
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
