//! Spool removals held until the outcomes of the notifications they forget are stored.
//!
//! A notification that reached its final outcome leaves the spool; its status record and its webhook event are
//! stored by writer threads of their own a few milliseconds later. Were the removal committed first, a `kill -9`
//! in between would lose both: nothing left to deliver again, nothing stored to report (docs/api.md promises each
//! webhook outcome at least once across a `kill -9`). So a removal waits, with the counts the writers had handed
//! over when it was made ([`OutcomeWriter`]), until every writer has stored that much. A crash before then
//! delivers the notification again after the restart, as a crash between a delivery and its outcome's record always
//! could, and its outcome is recorded again with it. A crash after its outcome was stored, before the removal was
//! written, does not: the restore finds the stored outcome and removes the notification ([`super::FinalOutcomes`]).
//!
//! Held removals wait in the order they were made, with their counts read in that order under the gate's lock:
//! each writer's count only grows, so a removal is released no sooner than the ones before it, and the gate looks
//! only at the front of the line. A writer that stalls without failing makes the line grow (one entry per finished
//! batch, see [`RemovalGate::held`]) but not the cost of each look.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use herald_spool::{Spool, SpoolKey};
use tokio::sync::Notify;

use crate::outcomes::OutcomeWriter;

/// How often held removals are looked at while some wait (the writers store every few milliseconds).
const LOOK_EVERY: Duration = Duration::from_millis(2);

/// Notifications whose removals are held at most. An outcome store that takes no writes for hours while delivery
/// goes on would otherwise grow the line without bound; beyond this many the oldest removals are made without
/// waiting (those notifications would not be delivered again after a crash, their outcomes not stored yet), with a
/// warning. Outcomes the writers could not even keep (their hand-off full) were dropped and counted already.
pub const MAX_HELD: usize = 1_000_000;

/// Removals waiting for outcome writers (see the module documentation).
pub struct RemovalGate {
    writers: Vec<Arc<dyn OutcomeWriter>>,
    /// In the order the removals were made, so in ticket order (see the module documentation).
    held: Mutex<VecDeque<Held>>,
    /// Notifications in `held`, for [`RemovalGate::held`] without the lock.
    held_keys: std::sync::atomic::AtomicUsize,
    /// [`MAX_HELD`], smaller in tests.
    max_held: usize,
    /// Removals made without waiting because the line was full, and when that was last said (Unix seconds).
    forced: std::sync::atomic::AtomicU64,
    forced_said: crate::logs::throttle::OncePer,
    wake: Arc<Notify>,
}

/// Keys to remove once every writer's stored count reaches `ticket` (one count per writer, in order).
struct Held {
    ticket: Vec<u64>,
    keys: Vec<SpoolKey>,
}

impl RemovalGate {
    /// A gate on `writers`, with its task (on the current tokio runtime) handing released removals to `spool`.
    /// The task ends when the gate or the spool is gone.
    pub fn start(writers: Vec<Arc<dyn OutcomeWriter>>, spool: &Arc<dyn Spool>) -> Arc<RemovalGate> {
        RemovalGate::start_holding(writers, spool, MAX_HELD)
    }

    /// [`RemovalGate::start`] holding at most `max_held` notifications' removals.
    fn start_holding(
        writers: Vec<Arc<dyn OutcomeWriter>>,
        spool: &Arc<dyn Spool>,
        max_held: usize,
    ) -> Arc<RemovalGate> {
        let gate = Arc::new(RemovalGate {
            writers,
            held: Mutex::new(VecDeque::new()),
            held_keys: std::sync::atomic::AtomicUsize::new(0),
            max_held,
            forced: std::sync::atomic::AtomicU64::new(0),
            forced_said: crate::logs::throttle::OncePer::new(60),
            wake: Arc::new(Notify::new()),
        });
        tokio::spawn(release_loop(
            Arc::downgrade(&gate),
            Arc::downgrade(spool),
            gate.wake.clone(),
        ));
        gate
    }

    /// Removes `keys` from `spool` at once when no removal is held and every writer has stored all it was handed;
    /// holds them otherwise. Called after the notifications' outcomes were handed to the writers.
    pub fn remove(&self, spool: &dyn Spool, keys: Vec<SpoolKey>) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        // Read under the lock, so that the line is in ticket order (the module documentation).
        let ticket: Vec<u64> = self.writers.iter().map(|w| w.handed()).collect();
        if held.is_empty() && self.stored(&ticket) {
            drop(held);
            spool.remove(&keys);
            return;
        }
        let first = held.is_empty();
        let mut now_held = self
            .held_keys
            .fetch_add(keys.len(), std::sync::atomic::Ordering::Relaxed)
            + keys.len();
        held.push_back(Held { ticket, keys });
        // A full line: the oldest removals are made now (see MAX_HELD).
        let mut forced = Vec::new();
        while now_held > self.max_held {
            let Some(mut h) = held.pop_front() else {
                break;
            };
            now_held -= h.keys.len();
            forced.append(&mut h.keys);
        }
        drop(held);
        if !forced.is_empty() {
            self.held_keys
                .fetch_sub(forced.len(), std::sync::atomic::Ordering::Relaxed);
            spool.remove(&forced);
            self.note_forced(forced.len());
        }
        if first {
            self.wake.notify_one();
        }
    }

    /// Counts removals made without their outcomes stored, and warns about them at most once a minute.
    fn note_forced(&self, n: usize) {
        use std::sync::atomic::Ordering;
        let total = self.forced.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        if self.forced_said.now() {
            tracing::warn!(
                "{} removal(s) of delivered notifications waited for outcomes the outcome store does not take: \
                 the oldest are made without waiting ({total} so far); their notifications would not be delivered \
                 again after a crash, and their outcomes are stored only if the store takes writes again before \
                 the writers give them up",
                self.max_held
            );
        }
    }

    /// Removals made without waiting because [`MAX_HELD`] were held.
    pub fn forced(&self) -> u64 {
        self.forced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Notifications whose removal waits for the outcome writers now: they stay in the spool meanwhile, and a
    /// number that keeps growing means a writer that stores nothing any more (a hung disk).
    pub fn held(&self) -> usize {
        self.held_keys.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// At a graceful stop, once the writers were flushed: removes every held removal whose outcomes are stored,
    /// and returns how many notifications stay held (kept in the spool, delivered again after the restart).
    pub fn release(&self, spool: &dyn Spool) -> usize {
        let keys = self.take_released();
        if !keys.is_empty() {
            spool.remove(&keys);
        }
        self.held()
    }

    fn stored(&self, ticket: &[u64]) -> bool {
        self.writers
            .iter()
            .zip(ticket)
            .all(|(w, &t)| w.stored() >= t)
    }

    /// The keys of the held removals whose outcomes are stored now, taken out of the gate.
    fn take_released(&self) -> Vec<SpoolKey> {
        self.take_released_looking().0
    }

    /// [`RemovalGate::take_released`], and how many held removals it looked at: those released, and the first one
    /// still waiting (the line is in ticket order, so none after it can be released).
    fn take_released_looking(&self) -> (Vec<SpoolKey>, usize) {
        let stored: Vec<u64> = self.writers.iter().map(|w| w.stored()).collect();
        let mut keys = Vec::new();
        let mut looked = 0;
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(front) = held.front() {
            looked += 1;
            if !front.ticket.iter().zip(&stored).all(|(t, s)| s >= t) {
                break;
            }
            if let Some(mut h) = held.pop_front() {
                keys.append(&mut h.keys);
            }
        }
        drop(held);
        self.held_keys
            .fetch_sub(keys.len(), std::sync::atomic::Ordering::Relaxed);
        (keys, looked)
    }

    fn is_holding(&self) -> bool {
        !self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }
}

/// Hands released removals to the spool: looks every [`LOOK_EVERY`] while some are held, sleeps otherwise.
async fn release_loop(gate: Weak<RemovalGate>, spool: Weak<dyn Spool>, wake: Arc<Notify>) {
    loop {
        let woken = wake.notified();
        let holding = {
            let (Some(gate), Some(spool)) = (gate.upgrade(), spool.upgrade()) else {
                return;
            };
            let keys = gate.take_released();
            if !keys.is_empty() {
                spool.remove(&keys);
            }
            gate.is_holding()
        };
        if holding {
            tokio::time::sleep(LOOK_EVERY).await;
        } else {
            // Woken by the next held removal; the timeout notices the gate going away.
            let _ = tokio::time::timeout(Duration::from_secs(1), woken).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_spool::MemorySpool;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct Counts {
        handed: AtomicU64,
        stored: AtomicU64,
    }

    impl OutcomeWriter for Counts {
        fn handed(&self) -> u64 {
            self.handed.load(Ordering::SeqCst)
        }
        fn stored(&self) -> u64 {
            self.stored.load(Ordering::SeqCst)
        }
    }

    /// A spool holding notifications 1..=n (keys `i`).
    async fn spool_of(n: u8) -> Arc<MemorySpool> {
        let spool = Arc::new(MemorySpool::new());
        let records = (1..=n)
            .map(|i| {
                let mut r = crate::spool::tests::stored_sample();
                r.key = key(i);
                r
            })
            .collect();
        spool.append(records).await.unwrap();
        spool
    }

    fn key(n: u8) -> SpoolKey {
        SpoolKey(u128::from(n))
    }

    async fn wait_until(done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition never held"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// A notification stays spooled until every writer has stored the outcomes it was handed before the removal:
    /// a crash before then finds it again (module documentation).
    #[tokio::test]
    async fn a_removal_waits_until_every_writer_stored_what_it_was_handed() {
        let spool = spool_of(2).await;
        let dyn_spool: Arc<dyn Spool> = spool.clone();
        let book = Arc::new(Counts::default());
        let hooks = Arc::new(Counts::default());
        let gate = RemovalGate::start(vec![book.clone(), hooks.clone()], &dyn_spool);

        book.handed.store(1, Ordering::SeqCst);
        hooks.handed.store(1, Ordering::SeqCst);
        gate.remove(&*spool, vec![key(1)]);
        // Handed, not stored: the notification stays.
        tokio::time::sleep(LOOK_EVERY * 10).await;
        assert!(
            spool.get(key(1)).is_some(),
            "removed before its outcomes were stored"
        );

        book.stored.store(1, Ordering::SeqCst);
        tokio::time::sleep(LOOK_EVERY * 10).await;
        assert!(
            spool.get(key(1)).is_some(),
            "removed with the webhook event not stored"
        );

        hooks.stored.store(1, Ordering::SeqCst);
        wait_until(|| spool.get(key(1)).is_none()).await;
        assert!(spool.get(key(2)).is_some());
    }

    /// A writer that stores nothing for good does not grow the line without bound: beyond the cap the oldest
    /// removals are made without waiting, and counted.
    #[tokio::test]
    async fn the_line_of_held_removals_is_bounded() {
        let spool = spool_of(5).await;
        let dyn_spool: Arc<dyn Spool> = spool.clone();
        let book = Arc::new(Counts::default());
        let gate = RemovalGate::start_holding(vec![book.clone()], &dyn_spool, 3);
        for i in 1..=5 {
            book.handed.store(u64::from(i), Ordering::SeqCst);
            gate.remove(&*spool, vec![key(i)]);
        }
        assert_eq!(gate.held(), 3);
        assert_eq!(gate.forced(), 2);
        assert!(spool.get(key(1)).is_none() && spool.get(key(2)).is_none());
        for i in 3..=5 {
            assert!(spool.get(key(i)).is_some(), "{i} is held, not removed");
        }
    }

    /// With everything stored and nothing held, a removal goes through at once, on the caller's thread.
    #[tokio::test]
    async fn with_the_writers_caught_up_a_removal_is_immediate() {
        let spool = spool_of(1).await;
        let dyn_spool: Arc<dyn Spool> = spool.clone();
        let book = Arc::new(Counts::default());
        book.handed.store(5, Ordering::SeqCst);
        book.stored.store(5, Ordering::SeqCst);
        let gate = RemovalGate::start(vec![book.clone()], &dyn_spool);
        gate.remove(&*spool, vec![key(1)]);
        assert!(spool.get(key(1)).is_none());
    }

    /// A writer that stalls without failing holds every removal after it; each look of the gate costs what it
    /// releases, not what it holds, and releases in the order the removals were made.
    #[tokio::test]
    async fn a_stalled_writer_makes_the_line_grow_not_the_cost_of_each_look() {
        let spool = spool_of(1).await;
        let dyn_spool: Arc<dyn Spool> = spool.clone();
        let book = Arc::new(Counts::default());
        let gate = RemovalGate::start(vec![book.clone()], &dyn_spool);
        for i in 0..1000u32 {
            book.handed.store(u64::from(i) + 1, Ordering::SeqCst);
            gate.remove(&*spool, vec![SpoolKey(1000 + u128::from(i))]);
        }
        assert_eq!(gate.held(), 1000);
        let (keys, looked) = gate.take_released_looking();
        assert!(keys.is_empty());
        assert_eq!(
            looked, 1,
            "a look with nothing stored sees only the first removal"
        );
        book.stored.store(10, Ordering::SeqCst);
        let (keys, looked) = gate.take_released_looking();
        assert_eq!(
            keys,
            (0..10u128).map(|i| SpoolKey(1000 + i)).collect::<Vec<_>>()
        );
        assert_eq!(looked, 11, "the ten released and the first still waiting");
        assert_eq!(gate.held(), 990);
        book.stored.store(1000, Ordering::SeqCst);
        assert_eq!(gate.release(&*spool), 0);
        assert_eq!(gate.held(), 0);
    }

    /// At a graceful stop the released removals are applied and the ones still waiting are counted (they stay
    /// spooled for the next start).
    #[tokio::test]
    async fn release_at_a_stop_applies_what_is_stored_and_counts_the_rest() {
        let spool = spool_of(3).await;
        let dyn_spool: Arc<dyn Spool> = spool.clone();
        let book = Arc::new(Counts::default());
        let gate = RemovalGate::start(vec![book.clone()], &dyn_spool);
        book.handed.store(1, Ordering::SeqCst);
        gate.remove(&*spool, vec![key(1)]);
        book.handed.store(2, Ordering::SeqCst);
        gate.remove(&*spool, vec![key(2), key(3)]);
        book.stored.store(1, Ordering::SeqCst);
        assert_eq!(gate.release(&*spool), 2);
        assert!(spool.get(key(1)).is_none());
        assert!(spool.get(key(2)).is_some() && spool.get(key(3)).is_some());
    }
}
