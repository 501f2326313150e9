//! The dashboard's clock: once a second it reads the engine's counters, keeps the per-second rates of the last
//! 15 minutes and per-domain totals for the last hour, and — only while an event stream is open — builds one
//! JSON tick that every stream forwards as it is.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

use super::outcomes::{Filter, RecentOutcomes};
use crate::control::ServerHandle;
use crate::queue::stats::DomainStats;

/// Seconds of history the Overview charts show.
pub const HISTORY_SECS: usize = 15 * 60;
/// Per-domain totals are looked at every this many seconds, and kept for an hour.
const DOMAIN_STEP: u64 = 5;
/// The longest window a domain's totals are kept for.
const DOMAIN_HISTORY_SECS: u64 = 3600;
/// Outcomes one tick carries at most.
const TICK_OUTCOMES: usize = 200;

/// Counts over one second.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Sample {
    /// Unix seconds.
    pub t: u64,
    pub accepted: u64,
    pub delivered: u64,
    pub transient: u64,
    pub permanent: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    accepted: u64,
    delivered: u64,
    transient: u64,
    permanent: u64,
}

/// A domain's totals over the last hour: a (unix seconds, delivered, failed) point each time they changed (looked
/// at every [`DOMAIN_STEP`] seconds), so that a quiet domain keeps one point however long it stays quiet, and a busy
/// one at most an hour's worth.
#[derive(Debug, Default)]
struct Points(VecDeque<(u64, u64, u64)>);

impl Points {
    /// The totals at `t`: kept when they differ from the last ones kept. Points older than the hour go, except the
    /// last one before it, which holds the totals at the hour's start.
    ///
    /// A domain's counters start at zero when the engine makes it: the first look at a domain keeps (t, 0, 0)
    /// before its totals, so that what it delivered before that look (up to [`DOMAIN_STEP`] seconds of traffic,
    /// or a restored spool's first deliveries) counts in its windows. Totals below the last ones kept mean the
    /// counters started again from zero (the engine forgot the domain and made it again since the last look): the
    /// points before are of the old counters and go; the new counters count from zero at `t` too.
    fn record(&mut self, t: u64, delivered: u64, failed: u64) {
        if self.0.is_empty() || self.restarted(delivered, failed) {
            self.0.clear();
            self.0.push_back((t, 0, 0));
        }
        if self
            .0
            .back()
            .is_none_or(|&(_, d, f)| (d, f) != (delivered, failed))
        {
            self.0.push_back((t, delivered, failed));
        }
        let start = t.saturating_sub(DOMAIN_HISTORY_SECS);
        while self.0.get(1).is_some_and(|&(t1, _, _)| t1 <= start) {
            self.0.pop_front();
        }
    }

    /// Deliveries and failures over the `secs` before `now`, given the totals now: against the totals at the
    /// window's start (the last point at or before it), or the first point kept — zero, when the domain was first
    /// seen within the window.
    /// Totals below the newest point count from a restart of the counters that came after it: all of them are
    /// newer than any window's start.
    fn since(&self, now: u64, secs: u64, delivered: u64, failed: u64) -> (u64, u64) {
        if self.restarted(delivered, failed) {
            return (delivered, failed);
        }
        let start = now.saturating_sub(secs);
        let base = self
            .0
            .iter()
            .rev()
            .find(|&&(t, _, _)| t <= start)
            .or_else(|| self.0.front());
        base.map(|&(_, d, f)| (delivered.saturating_sub(d), failed.saturating_sub(f)))
            .unwrap_or((0, 0))
    }

    /// Whether `delivered` or `failed` is below the newest point: the counters went back to zero since.
    fn restarted(&self, delivered: u64, failed: u64) -> bool {
        self.0
            .back()
            .is_some_and(|&(_, d, f)| delivered < d || failed < f)
    }
}

/// What the dashboard keeps for every listener of one server.
#[derive(Debug)]
pub struct Hub {
    pub outcomes: Arc<RecentOutcomes>,
    history: Mutex<VecDeque<Sample>>,
    /// Per domain: (unix seconds, delivered, failed) every [`DOMAIN_STEP`] seconds.
    windows: Mutex<HashMap<Arc<str>, Points>>,
    /// What the Domains page shows of each domain's settings, resolved once per configuration.
    pub(super) row_settings: super::api::RowSettingsCache,
    ticks: broadcast::Sender<Arc<str>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            outcomes: Arc::default(),
            history: Mutex::new(VecDeque::with_capacity(HISTORY_SECS)),
            windows: Mutex::default(),
            row_settings: Default::default(),
            ticks: broadcast::channel(16).0,
        }
    }
}

/// A domain's deliveries and failures over the last minute and hour.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Windows {
    pub delivered_1m: u64,
    pub failed_1m: u64,
    pub delivered_1h: u64,
    pub failed_1h: u64,
}

impl Hub {
    /// The per-second history, oldest first.
    pub fn history(&self) -> Vec<Sample> {
        self.history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// A new listener of the ticks.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.ticks.subscribe()
    }

    /// Sends `tick` to every event stream, as the sampler does once a second (tests: a tick when they want one).
    #[cfg(test)]
    pub(super) fn send_tick(&self, tick: &str) {
        let _ = self.ticks.send(Arc::from(tick));
    }

    /// Event streams open now.
    pub fn listeners(&self) -> usize {
        self.ticks.receiver_count()
    }

    /// `domain`'s last minute and hour, given its totals now.
    pub fn windows(&self, domain: &str, delivered: u64, failed: u64) -> Windows {
        let w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let Some(points) = w.get(domain) else {
            return Windows::default();
        };
        let now = unix_now();
        let (delivered_1m, failed_1m) = points.since(now, 60, delivered, failed);
        let (delivered_1h, failed_1h) = points.since(now, DOMAIN_HISTORY_SECS, delivered, failed);
        Windows {
            delivered_1m,
            failed_1m,
            delivered_1h,
            failed_1h,
        }
    }

    /// Records every domain's totals at `t` (`stats`: the engine's counters, one entry per domain it knows) and
    /// forgets the totals and last error of every domain not among them: the engine forgets idle domains beyond
    /// its bound of retired queues, and so does the dashboard, whether or not a page is open.
    fn record_domains(&self, t: u64, stats: &[(Arc<str>, Arc<DomainStats>)]) {
        let known: HashSet<&str> = stats.iter().map(|(d, _)| &**d).collect();
        {
            let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
            w.retain(|d, _| known.contains(&**d));
            for (domain, d) in stats {
                let failed = d
                    .permanent
                    .load(Ordering::Relaxed)
                    .saturating_add(d.transient.load(Ordering::Relaxed));
                w.entry(domain.clone()).or_default().record(
                    t,
                    d.delivered.load(Ordering::Relaxed),
                    failed,
                );
            }
        }
        self.outcomes.last_errors.retain(|d| known.contains(d));
    }

    fn record(&self, s: Sample) {
        let mut h = self.history.lock().unwrap_or_else(|p| p.into_inner());
        if h.len() == HISTORY_SECS {
            h.pop_front();
        }
        h.push_back(s);
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn totals(server: &dyn ServerHandle) -> Totals {
    let mut t = Totals::default();
    for (_, d) in server.engine().all_stats() {
        t.accepted += d.received.load(Ordering::Relaxed);
        t.delivered += d.delivered.load(Ordering::Relaxed);
        t.transient += d.transient.load(Ordering::Relaxed);
        t.permanent += d.permanent.load(Ordering::Relaxed);
    }
    t
}

/// Runs the clock until the server is gone.
pub fn spawn_sampler(hub: Arc<Hub>, server: Weak<dyn ServerHandle>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(1));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last: Option<Totals> = None;
        let mut last_seq = 0u64;
        let mut step = 0u64;
        loop {
            every.tick().await;
            let Some(server) = server.upgrade() else {
                break;
            };
            let now = totals(&*server);
            let prev = last.unwrap_or(now);
            let sample = Sample {
                t: unix_now(),
                accepted: now.accepted.saturating_sub(prev.accepted),
                delivered: now.delivered.saturating_sub(prev.delivered),
                transient: now.transient.saturating_sub(prev.transient),
                permanent: now.permanent.saturating_sub(prev.permanent),
            };
            last = Some(now);
            hub.record(sample);
            if step.is_multiple_of(DOMAIN_STEP) {
                hub.record_domains(sample.t, &server.engine().all_stats());
            }
            step += 1;
            if hub.listeners() == 0 {
                last_seq = hub.outcomes.last_seq();
                continue;
            }
            let outcomes = hub
                .outcomes
                .since(last_seq, &Filter::default(), TICK_OUTCOMES);
            last_seq = hub.outcomes.last_seq();
            let tick = serde_json::json!({
                "sample": sample,
                "overview": super::api::overview_now(&*server),
                "domains": super::api::domain_rows(&*server, &hub),
                "outcomes": outcomes,
            });
            let _ = hub.ticks.send(Arc::from(tick.to_string()));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A domain's totals looked at every 5 s for `secs` from `t0`, delivering `per_step` each time while `busy`.
    fn run(points: &mut Points, t0: u64, secs: u64, per_step: u64, total: &mut u64) {
        for t in (t0..t0 + secs).step_by(DOMAIN_STEP as usize) {
            *total += per_step;
            points.record(t, *total, 0);
        }
    }

    #[test]
    fn a_quiet_domain_keeps_one_point_and_a_busy_one_at_most_an_hour() {
        let mut p = Points::default();
        let mut total = 0;
        run(&mut p, 1_000, 60, 10, &mut total);
        // The zero the counters started from, and 12 looks.
        assert_eq!(p.0.len(), 13);
        // Quiet for a day: the totals do not change, nothing is added, the hour's start is kept.
        run(&mut p, 1_060, 86_400, 0, &mut total);
        assert_eq!(p.0.len(), 1);
        assert_eq!(p.0[0], (1_055, 120, 0));
        // Busy for two hours: an hour's points and the one before it.
        run(&mut p, 100_000, 7_200, 1, &mut total);
        assert!(
            p.0.len() <= (DOMAIN_HISTORY_SECS / DOMAIN_STEP) as usize + 1,
            "{}",
            p.0.len()
        );
        assert!(p.0[1].0 > 100_000 + 7_200 - DOMAIN_HISTORY_SECS - DOMAIN_STEP);
    }

    fn stats(delivered: u64, failed: u64) -> Arc<DomainStats> {
        let s = DomainStats::default();
        s.delivered.store(delivered, Ordering::Relaxed);
        s.permanent.store(failed, Ordering::Relaxed);
        Arc::new(s)
    }

    /// The engine forgets idle domains beyond its bound: their totals and last errors go from the hub too.
    #[test]
    fn domains_the_engine_no_longer_knows_are_forgotten() {
        let hub = Hub::default();
        let all: Vec<(Arc<str>, Arc<DomainStats>)> = ["a.example", "b.example", "c.example"]
            .into_iter()
            .map(|d| (Arc::from(d), stats(1, 1)))
            .collect();
        for (domain, _) in &all {
            hub.outcomes.last_errors.set(
                domain,
                super::super::LastError {
                    at: 1,
                    reason: "BadTopic".into(),
                    status: Some(400),
                },
            );
        }
        hub.record_domains(1_000, &all);
        assert_eq!(hub.windows.lock().unwrap().len(), 3);
        assert_eq!(hub.outcomes.last_errors.len(), 3);
        hub.record_domains(1_005, &all[1..2]);
        let windows = hub.windows.lock().unwrap();
        assert_eq!(
            windows.keys().map(|d| &**d).collect::<Vec<_>>(),
            ["b.example"]
        );
        drop(windows);
        assert_eq!(hub.outcomes.last_errors.len(), 1);
        assert!(hub.outcomes.last_errors.get("b.example").is_some());
        assert!(hub.outcomes.last_errors.get("a.example").is_none());
    }

    /// A domain the engine forgot and made again counts from zero: its hour is what it delivered since, not 0
    /// until the old totals are out of the hour.
    #[test]
    fn totals_that_went_back_to_zero_count_from_there() {
        let mut p = Points::default();
        p.record(1_000, 500, 20);
        p.record(1_005, 600, 20);
        // Counters started again since the last look: all of them are new.
        assert_eq!(p.since(1_007, 3_600, 3, 0), (3, 0));
        assert_eq!(p.since(1_007, 60, 3, 0), (3, 0));
        p.record(1_010, 7, 1);
        assert_eq!(p.since(1_012, 3_600, 7, 1), (7, 1));
        assert_eq!(p.since(1_012, 60, 9, 1), (9, 1));
        p.record(1_100, 9, 1);
        // The minute from 1,040: from the totals at 1,010; the hour: from the restart.
        assert_eq!(p.since(1_100, 60, 9, 1), (2, 0));
        assert_eq!(p.since(1_100, 3_600, 9, 1), (9, 1));
        // Through the hub: the restart is seen at its next look.
        let hub = Hub::default();
        let d: Arc<str> = Arc::from("a.example");
        hub.record_domains(1_000, &[(d.clone(), stats(500, 20))]);
        hub.record_domains(1_005, &[(d.clone(), stats(4, 0))]);
        let w = hub.windows.lock().unwrap();
        assert_eq!(w[&d].since(1_006, 3_600, 4, 0), (4, 0));
    }

    /// A new domain's first deliveries (before the first look at it) count in its minute and hour, through the
    /// hub as the Domains page reads them.
    #[test]
    fn a_new_domains_first_deliveries_count() {
        let hub = Hub::default();
        let d: Arc<str> = Arc::from("new.example");
        hub.record_domains(1_000, &[(d.clone(), stats(285, 15))]);
        hub.record_domains(1_005, &[(d.clone(), stats(300, 15))]);
        let w = hub.windows.lock().unwrap();
        assert_eq!(w[&d].since(1_007, 60, 300, 15), (300, 15));
        assert_eq!(w[&d].since(1_007, 3_600, 300, 15), (300, 15));
        // A minute after the first look: the first 285 are out of the minute, still in the hour.
        assert_eq!(w[&d].since(1_061, 60, 300, 15), (15, 0));
        assert_eq!(w[&d].since(1_061, 3_600, 300, 15), (300, 15));
    }

    #[test]
    fn windows_count_from_the_totals_at_their_start() {
        let mut p = Points::default();
        // First seen at t=1000 with 50 delivered and 2 failed: all of them within the minute (the counters started
        // at zero when the domain was made, since the look before).
        p.record(1_000, 50, 2);
        assert_eq!(
            p.since(1_030, 60, 70, 3),
            (70, 3),
            "first seen within the window"
        );
        // A minute after the first look, those seen at it are out of the minute.
        assert_eq!(p.since(1_060, 60, 70, 3), (20, 1));
        p.record(1_005, 60, 2);
        p.record(1_010, 60, 2);
        p.record(2_000, 90, 4);
        // At 2,030: the minute starts at 1,970, when the totals were those of 1,005 (unchanged until 2,000).
        assert_eq!(p.since(2_030, 60, 100, 4), (40, 2));
        // The hour starts before the first point: counted from it, zero.
        assert_eq!(p.since(2_030, 3_600, 100, 4), (100, 4));
        // Nothing kept: nothing to count from.
        assert_eq!(Points::default().since(2_030, 60, 5, 5), (0, 0));
    }
}
