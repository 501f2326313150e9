//! Timeouts that judge the peer only by what herald could have read (docs/apns-protocol.md#herald-stalls).
//!
//! A response timeout means that APNs did not answer in time, not that herald did not run. When herald itself stalls
//! (the process stopped and continued, a virtual machine paused, a machine too loaded to run it for seconds), the
//! answers APNs sent meanwhile wait unread in the socket, and when herald runs again a deadline that passed during
//! the stall and the reader that would take those answers become ready together. The deadline must not win: the
//! timer of a connection's task fires in the same turn of the runtime that notices the socket, or even in an
//! earlier one (on Linux, a stopped process that continues finds its wait for socket events interrupted, and the
//! runtime fires its timers that turn without having looked at any socket). So a deadline that passes is not taken
//! at its word at once:
//!
//! - an answer awaited with a timer of its own is looked for once more ([`look_again_until`]): after one more turn
//!   of the runtime (which looks at the sockets) when the timer fired on time, and for up to [`STALL_GRACE`] when it
//!   fired [`STALL`] or more after its deadline, which only a stall makes it do. Once per deadline, so a peer that
//!   really says nothing still times out, a moment later;
//! - a check made on a periodic tick (the PING's answer, the binary protocol's silence) passes no verdict on the
//!   first turn after a gap of [`STALL`] beyond the tick's period, nor on the turns within one period after it
//!   ([`Turns`]): the next tick judges what the reader took meanwhile. Never twice in a row, so a verdict is put
//!   off by one period at most.
//!
//! Nothing of this costs anything while answers come in time: no request carries more than before, a timer that
//! fires is rare, and a tick reads the clock once.

use std::time::Duration;

use tokio::time::Instant;

/// How much later than due a timer fires, or how much further apart than their period ticks come, before herald
/// counts as having stalled: the runtime fires a timer within a millisecond or so while it runs.
pub(crate) const STALL: Duration = Duration::from_millis(250);

/// How long an answer is still looked for past its deadline when herald stalled across it: time for the reader to
/// take what waits in the socket, and for a virtual machine that resumed to hand over what reached it meanwhile.
pub(crate) const STALL_GRACE: Duration = Duration::from_secs(1);

/// How long an answer is still looked for past a deadline whose timer fired on time: the next turn of the runtime
/// (a timer that falls due later than the one that just fired is fired in a later turn, after the runtime has
/// looked at the sockets again).
pub(crate) const NEXT_TURN: Duration = Duration::from_millis(2);

/// Until when an answer whose `deadline` passed is still looked for, from now: the next turn of the runtime, or
/// [`STALL_GRACE`] when the timer fired [`STALL`] or more late.
pub(crate) fn look_again_until(deadline: Instant) -> Instant {
    let now = Instant::now();
    let late = now.saturating_duration_since(deadline);
    now + if late >= STALL {
        STALL_GRACE
    } else {
        NEXT_TURN
    }
}

/// Waits once more for `answer`, whose `deadline` passed, until [`look_again_until`]: `None` when it still has not
/// come.
pub(crate) async fn look_again<F>(answer: F, deadline: Instant) -> Option<F::Output>
where
    F: std::future::Future,
{
    tokio::time::timeout_at(look_again_until(deadline), answer)
        .await
        .ok()
}

/// The turns of a periodic check, telling those that follow a stall of herald (see the module's documentation).
#[derive(Debug)]
pub(crate) struct Turns {
    /// The last turn.
    last: Instant,
    /// How often the check is made when nothing else makes it.
    period: Duration,
    /// Until when verdicts are put off after the last stall found: by then the runtime has looked at the sockets
    /// and the reader has taken what waited.
    held_until: Option<Instant>,
}

impl Turns {
    /// Turns expected at least every `period`, the first at `now`.
    pub(crate) fn new(period: Duration, now: Instant) -> Turns {
        Turns {
            last: now,
            period,
            held_until: None,
        }
    }

    /// A turn at `now`: whether it passes no verdict on the peer's silence, as the first turn after a gap of
    /// [`STALL`] beyond the period, and every turn within a period after that one. The first turn past that
    /// period judges whatever its gap, so a verdict is never put off twice in a row.
    pub(crate) fn after_stall(&mut self, now: Instant) -> bool {
        let gap = now.saturating_duration_since(self.last);
        self.last = now;
        match self.held_until {
            Some(until) if now < until => true,
            Some(_) => {
                self.held_until = None;
                false
            }
            None if gap > self.period + STALL => {
                self.held_until = Some(now + self.period);
                true
            }
            None => false,
        }
    }
}

/// Freezes a thread, for tests, as a stop of the process freezes all of them: from inside a signal handler, so that
/// a runtime waiting for socket events on that thread finds its wait interrupted when the handler returns, as after
/// SIGSTOP and SIGCONT, and fires its timers in that turn without having looked at the sockets.
#[cfg(all(test, target_os = "linux"))]
pub(crate) mod freeze {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Mutex, Once, PoisonError};
    use std::time::{Duration, Instant};

    /// How long a thread stays frozen.
    pub(crate) const FROZEN_FOR: Duration = Duration::from_millis(600);

    /// Signal handlers entered so far.
    static ENTERED: AtomicU64 = AtomicU64::new(0);

    /// One freeze starts at a time, so that [`ENTERED`] tells which one began.
    static STARTING: Mutex<()> = Mutex::new(());

    extern "C" fn frozen(_: libc::c_int) {
        ENTERED.fetch_add(1, Ordering::SeqCst);
        let ms = FROZEN_FOR.as_millis() as libc::c_long;
        let time = libc::timespec {
            tv_sec: 0,
            tv_nsec: ms * 1_000_000,
        };
        // SAFETY: `nanosleep` may be called from a signal handler; `time` lives across the call.
        unsafe { libc::nanosleep(&time, std::ptr::null_mut()) };
    }

    /// The thread calling this, to be frozen from another one.
    pub(crate) fn this_thread() -> libc::pthread_t {
        // SAFETY: no precondition.
        unsafe { libc::pthread_self() }
    }

    /// Freezes `thread` for [`FROZEN_FOR`], and returns once it is frozen. Called from another thread.
    pub(crate) fn freeze(thread: libc::pthread_t) {
        static INSTALL: Once = Once::new();
        INSTALL.call_once(|| {
            // SAFETY: a zeroed `sigaction` is valid; the handler only touches an atomic and sleeps.
            unsafe {
                let mut action: libc::sigaction = std::mem::zeroed();
                action.sa_sigaction = frozen as extern "C" fn(libc::c_int) as libc::sighandler_t;
                libc::sigemptyset(&mut action.sa_mask);
                assert_eq!(
                    libc::sigaction(libc::SIGUSR2, &action, std::ptr::null_mut()),
                    0
                );
            }
        });
        let _one = STARTING.lock().unwrap_or_else(PoisonError::into_inner);
        let before = ENTERED.load(Ordering::SeqCst);
        // SAFETY: `thread` is a running thread of this process (the test's runtime).
        assert_eq!(unsafe { libc::pthread_kill(thread, libc::SIGUSR2) }, 0);
        let deadline = Instant::now() + Duration::from_secs(5);
        while ENTERED.load(Ordering::SeqCst) == before {
            assert!(Instant::now() < deadline, "the thread never froze");
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turns_after_a_gap_are_put_off_for_a_period_but_never_twice_in_a_row() {
        let start = Instant::now();
        let period = Duration::from_millis(100);
        let mut turns = Turns::new(period, start);
        assert!(!turns.after_stall(start + period));
        assert!(!turns.after_stall(start + period * 2 + Duration::from_millis(20)));
        let resumed = start + Duration::from_secs(20);
        assert!(turns.after_stall(resumed));
        // Other work runs the check again at once: still put off.
        assert!(turns.after_stall(resumed + Duration::from_millis(1)));
        // The machine stalls again at once: the turn past the period judges all the same.
        assert!(!turns.after_stall(resumed + Duration::from_secs(20)));
        assert!(!turns.after_stall(resumed + Duration::from_secs(20) + period));
        assert!(turns.after_stall(resumed + Duration::from_secs(40)));
    }

    #[tokio::test]
    async fn a_timer_fired_late_gets_the_long_grace_and_one_on_time_the_next_turn() {
        let now = Instant::now();
        let late = look_again_until(now - Duration::from_secs(5));
        assert!(late >= now + STALL_GRACE);
        let on_time = look_again_until(now);
        assert!(on_time < now + STALL_GRACE && on_time >= now + NEXT_TURN);
    }
}
