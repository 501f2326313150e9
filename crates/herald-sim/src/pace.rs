//! How fast the HTTP/2 service answers, changeable while it runs: response latency (with jitter) and an overall
//! request rate.
//!
//! With a rate of N requests/s, valid requests over every connection are taken in turn, one every 1/N s; a request
//! waits for its turn, as at a busy server (APNs slows down under load; its 429 TooManyRequests is about too many
//! pushes to one device token, so the rate does not answer 429). A request is processed (accepted or rejected, and
//! recorded) when its turn comes; its answer leaves when the latency has passed since the request arrived, plus the
//! wait for its turn (the simulator's own processing is inside the latency, as APNs' is inside its round trip), on
//! a clock precise to a fraction of a millisecond (`h2::delay`). A stream the client resets before its answer is
//! processed all the same — a server that has read a request may well act on it, and a client must not count on a
//! cancel — and only its answer is left out (its stream, closed, no longer counts against the stream limit while it
//! waits, but a connection holds at most twice its stream limit of requests, such ones included, and refuses new
//! streams beyond); such streams are counted (`streams.cancelled` in `GET /stats`), so that a test can match duplicates to
//! the client's cancellations.
//!
//! Changed at run time through the admin port (`POST /pace`) or [`crate::SimHandle::set_pace`]; the new values
//! apply to requests that arrive afterwards. The latency and its jitter are each at most [`MAX_LATENCY_MS`] (one
//! hour): a scenario or `POST /pace` beyond is refused naming the field, and [`crate::SimHandle::set_pace`] caps
//! them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::scenario::Rng;

/// The longest `latency_ms`, and the longest `latency_jitter_ms`: one hour. A slower answer is as good as none to
/// any client, and the sum of both must stay within the clock's range.
pub const MAX_LATENCY_MS: u64 = 3_600_000;

/// The pace values as set and shown (`GET/POST /pace`); absent fields are left as they are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaceSettings {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_jitter_ms: Option<u64>,
    /// Requests per second over all HTTP/2 connections; 0 = no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
}

impl PaceSettings {
    /// Refuses a latency or jitter over [`MAX_LATENCY_MS`], naming the field and the maximum.
    pub fn check(&self) -> Result<(), String> {
        for (field, value) in [
            ("latency_ms", self.latency_ms),
            ("latency_jitter_ms", self.latency_jitter_ms),
        ] {
            if let Some(v) = value
                && v > MAX_LATENCY_MS
            {
                return Err(format!(
                    "{field} {v} is over the maximum of {MAX_LATENCY_MS} (one hour)"
                ));
            }
        }
        Ok(())
    }
}

/// The live pace, shared by every connection.
#[derive(Debug)]
pub struct Pace {
    latency_ms: AtomicU64,
    jitter_ms: AtomicU64,
    rate: AtomicU64,
    /// Nanoseconds after `epoch` at which the next request's turn comes.
    next_turn_ns: AtomicU64,
    epoch: Instant,
}

impl Pace {
    /// The latency and jitter are capped at [`MAX_LATENCY_MS`].
    pub fn new(latency_ms: u64, jitter_ms: u64, rate: u64) -> Pace {
        Pace {
            latency_ms: AtomicU64::new(latency_ms.min(MAX_LATENCY_MS)),
            jitter_ms: AtomicU64::new(jitter_ms.min(MAX_LATENCY_MS)),
            rate: AtomicU64::new(rate),
            next_turn_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    /// Applies the fields that are set, the latency and jitter capped at [`MAX_LATENCY_MS`] (see
    /// [`PaceSettings::check`] to refuse them instead).
    pub fn set(&self, s: PaceSettings) {
        if let Some(l) = s.latency_ms {
            self.latency_ms
                .store(l.min(MAX_LATENCY_MS), Ordering::Relaxed);
        }
        if let Some(j) = s.latency_jitter_ms {
            self.jitter_ms
                .store(j.min(MAX_LATENCY_MS), Ordering::Relaxed);
        }
        if let Some(r) = s.rate {
            self.rate.store(r, Ordering::Relaxed);
        }
    }

    /// Every value now.
    pub fn get(&self) -> PaceSettings {
        PaceSettings {
            latency_ms: Some(self.latency_ms.load(Ordering::Relaxed)),
            latency_jitter_ms: Some(self.jitter_ms.load(Ordering::Relaxed)),
            rate: Some(self.rate.load(Ordering::Relaxed)),
        }
    }

    /// The latency of one answer, `None` for none.
    pub(crate) fn latency(&self, rng: &mut Rng) -> Option<Duration> {
        let base = self.latency_ms.load(Ordering::Relaxed);
        let jitter = self.jitter_ms.load(Ordering::Relaxed);
        if base == 0 && jitter == 0 {
            return None;
        }
        // Saturating, so no value can overflow (they are capped anyway).
        let extra = if jitter > 0 {
            rng.next_u64() % jitter.saturating_add(1)
        } else {
            0
        };
        Some(Duration::from_millis(base.saturating_add(extra)))
    }

    /// Takes the next turn under the rate: when this request may be processed. `None` without a rate.
    pub(crate) fn turn(&self) -> Option<Instant> {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return None;
        }
        let step = 1_000_000_000 / rate.max(1);
        let now = self.epoch.elapsed().as_nanos() as u64;
        let mut current = self.next_turn_ns.load(Ordering::Relaxed);
        loop {
            let turn = current.max(now);
            match self.next_turn_ns.compare_exchange_weak(
                current,
                turn + step,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(self.epoch + Duration::from_nanos(turn)),
                Err(seen) => current = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn turns_are_spaced_by_the_rate_and_settings_change_at_run_time() {
        let pace = Pace::new(0, 0, 0);
        assert_eq!(pace.turn(), None);
        let mut rng = Rng::new(1, 1);
        assert_eq!(pace.latency(&mut rng), None);
        pace.set(PaceSettings {
            rate: Some(100),
            latency_ms: Some(8000),
            ..PaceSettings::default()
        });
        let turns: Vec<Instant> = (0..5).map(|_| pace.turn().unwrap()).collect();
        for w in turns.windows(2) {
            assert_eq!(w[1] - w[0], Duration::from_millis(10));
        }
        assert_eq!(pace.latency(&mut rng), Some(Duration::from_millis(8000)));
        assert_eq!(
            pace.get(),
            PaceSettings {
                latency_ms: Some(8000),
                latency_jitter_ms: Some(0),
                rate: Some(100)
            }
        );
        let json: PaceSettings = serde_json::from_str(r#"{"latency_ms": 10}"#).unwrap();
        pace.set(json);
        assert_eq!(pace.get().rate, Some(100));
        assert_eq!(pace.get().latency_ms, Some(10));
        assert!(serde_json::from_str::<PaceSettings>(r#"{"latency": 10}"#).is_err());
    }

    #[test]
    fn latency_and_jitter_are_capped_at_an_hour() {
        let huge = PaceSettings {
            latency_ms: Some(u64::MAX),
            latency_jitter_ms: Some(u64::MAX),
            rate: Some(u64::MAX),
        };
        let e = huge.check().unwrap_err();
        assert!(e.contains("latency_ms") && e.contains("3600000"), "{e}");
        let e = PaceSettings {
            latency_jitter_ms: Some(MAX_LATENCY_MS + 1),
            ..PaceSettings::default()
        }
        .check()
        .unwrap_err();
        assert!(e.contains("latency_jitter_ms"), "{e}");
        assert!(
            PaceSettings {
                latency_ms: Some(MAX_LATENCY_MS),
                latency_jitter_ms: Some(MAX_LATENCY_MS),
                rate: Some(u64::MAX),
            }
            .check()
            .is_ok()
        );
        // Set anyway (as SimHandle::set_pace does): capped, and a latency is still computed without overflow.
        for pace in [Pace::new(u64::MAX, u64::MAX, 0), Pace::new(0, 0, 0)] {
            pace.set(huge);
            assert_eq!(pace.get().latency_ms, Some(MAX_LATENCY_MS));
            assert_eq!(pace.get().latency_jitter_ms, Some(MAX_LATENCY_MS));
            let mut rng = Rng::new(1, 2);
            for _ in 0..100 {
                let d = pace.latency(&mut rng).unwrap();
                assert!(d <= Duration::from_millis(2 * MAX_LATENCY_MS), "{d:?}");
            }
            assert!(pace.turn().is_some());
        }
    }
}
