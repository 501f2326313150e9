//! Answer delays with sub-millisecond precision.
//!
//! tokio's timer counts whole milliseconds and rounds a deadline up twice (to its wheel's next tick, then the
//! poller's timeout to the next millisecond), so a 30 ms latency came out as 31–33 ms, and a client measured
//! against "streams / latency" was charged for the simulator's clock. The simulator's latency stands for APNs'
//! round trip, so it keeps its own clock: one thread sleeps until the earliest deadline (a futex wait, precise to
//! tens of microseconds) and wakes every delay that is due. Registering a deadline later than the earliest one —
//! every answer under a fixed latency — does not wake the thread.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::thread::Thread;
use std::time::Instant;

use futures_util::task::AtomicWaker;

/// A future that is ready at `at` (or as soon as it is polled after it).
pub(crate) struct Delay {
    at: Instant,
    entry: Option<Arc<Entry>>,
}

impl Delay {
    pub(crate) fn until(at: Instant) -> Delay {
        Delay { at, entry: None }
    }
}

impl Future for Delay {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if let Some(entry) = &self.entry {
            entry.waker.register(cx.waker());
            return if entry.fired.load(AtomicOrdering::Acquire) {
                Poll::Ready(())
            } else {
                Poll::Pending
            };
        }
        if Instant::now() >= self.at {
            return Poll::Ready(());
        }
        let entry = Arc::new(Entry::default());
        entry.waker.register(cx.waker());
        clock().schedule(self.at, entry.clone());
        self.entry = Some(entry);
        Poll::Pending
    }
}

#[derive(Default)]
struct Entry {
    fired: AtomicBool,
    waker: AtomicWaker,
}

struct Due {
    at: Instant,
    seq: u64,
    entry: Arc<Entry>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Due {}
impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Due {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct Pending {
    heap: BinaryHeap<Reverse<Due>>,
    seq: u64,
    /// The deadline the clock thread sleeps until (`None`: it sleeps until woken).
    sleeping_until: Option<Instant>,
}

struct Clock {
    pending: Mutex<Pending>,
    thread: Thread,
}

impl Clock {
    fn schedule(&self, at: Instant, entry: Arc<Entry>) {
        let wake = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.seq += 1;
            let seq = p.seq;
            p.heap.push(Reverse(Due { at, seq, entry }));
            let earlier = p.sleeping_until.is_none_or(|s| at < s);
            if earlier {
                p.sleeping_until = Some(at);
            }
            earlier
        };
        if wake {
            self.thread.unpark();
        }
    }
}

/// The process's clock thread, started on first use; it lives as long as the process (parked when idle).
fn clock() -> &'static Clock {
    static CLOCK: OnceLock<Clock> = OnceLock::new();
    CLOCK.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("sim-clock".into())
            .spawn(move || {
                // Wait until the Clock is stored, then run.
                let _ = rx.recv();
                run(clock());
            });
        let thread = match handle {
            Ok(h) => h.thread().clone(),
            // Without its clock no delayed answer would ever leave: the simulator cannot run.
            Err(e) => panic!("the simulator cannot start its clock thread: {e}"),
        };
        let clock = Clock {
            pending: Mutex::new(Pending::default()),
            thread,
        };
        let _ = tx.send(());
        clock
    })
}

fn run(clock: &Clock) {
    let mut due = Vec::new();
    loop {
        let next = {
            let mut p = clock.pending.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            while p.heap.peek().is_some_and(|Reverse(d)| d.at <= now) {
                if let Some(Reverse(d)) = p.heap.pop() {
                    due.push(d.entry);
                }
            }
            p.sleeping_until = p.heap.peek().map(|Reverse(d)| d.at);
            p.sleeping_until
        };
        for entry in due.drain(..) {
            entry.fired.store(true, AtomicOrdering::Release);
            entry.waker.wake();
        }
        match next {
            Some(at) => std::thread::park_timeout(at.saturating_duration_since(Instant::now())),
            None => std::thread::park(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn delays_registered_out_of_order_each_end_at_or_after_their_deadline() {
        // How close to the deadline is measured by the benchmarks (bench/engine), not asserted here.
        let start = Instant::now();
        let mut tasks = Vec::new();
        for i in 0..50u64 {
            let at = start + Duration::from_micros(3_000 + (i * 7_919) % 20_000);
            tasks.push(tokio::spawn(async move {
                Delay::until(at).await;
                // Panics (fails the test) if the delay ended before its deadline.
                Instant::now()
                    .checked_duration_since(at)
                    .expect("ended before its deadline")
            }));
        }
        for t in tasks {
            let late = t.await.expect("delay task");
            assert!(late >= Duration::ZERO);
        }
    }

    #[tokio::test]
    async fn a_past_deadline_is_ready_at_once_and_a_dropped_delay_is_harmless() {
        Delay::until(Instant::now() - Duration::from_millis(1)).await;
        let dropped = Delay::until(Instant::now() + Duration::from_millis(2));
        let mut dropped = Box::pin(dropped);
        assert!(futures_util::FutureExt::now_or_never(dropped.as_mut()).is_none());
        drop(dropped);
        let before = Instant::now();
        Delay::until(before + Duration::from_millis(5)).await;
        assert!(Instant::now() >= before + Duration::from_millis(5));
    }
}
