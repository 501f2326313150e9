//! Spool removals held until the outcomes of the notifications they forget are stored.
//!
//! A notification that reached its final outcome leaves the spool; its status record and its webhook event are
//! stored by writer threads of their own a few milliseconds later. Were the removal committed first, a `kill -9`
//! in between would lose both: nothing left to deliver again, nothing stored to report (docs/api.md promises each
//! webhook outcome at least once across a `kill -9`). So a removal waits, with the counts the writers had handed
//! over when it was made ([`OutcomeWriter`]), until every writer has stored that much. A crash before then
//! delivers the notification again after the restart, as a crash between a delivery and its removal always could,
//! and its outcome is recorded again with it.
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

/// Removals waiting for outcome writers (see the module documentation).
pub struct RemovalGate {
    writers: Vec<Arc<dyn OutcomeWriter>>,
    /// In the order the removals were made, so in ticket order (see the module documentation).
    held: Mutex<VecDeque<Held>>,
    /// Notifications in `held`, for [`RemovalGate::held`] without the lock.
    held_keys: std::sync::atomic::AtomicUsize,
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
        let gate = Arc::new(RemovalGate {
            writers,
            held: Mutex::new(VecDeque::new()),
            held_keys: std::sync::atomic::AtomicUsize::new(0),
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
        self.held_keys
            .fetch_add(keys.len(), std::sync::atomic::Ordering::Relaxed);
        held.push_back(Held { ticket, keys });
        drop(held);
        if first {
            self.wake.notify_one();
        }
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
