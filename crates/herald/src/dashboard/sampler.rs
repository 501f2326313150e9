//! The dashboard's clock: once a second it reads the engine's counters, keeps the per-second rates of the last
//! 15 minutes and per-domain totals for the last hour, and — only while an event stream is open — builds one
//! JSON tick that every stream forwards as it is.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::broadcast;

use super::outcomes::{Filter, RecentOutcomes};
use crate::control::ServerHandle;

/// Seconds of history the Overview charts show.
pub const HISTORY_SECS: usize = 15 * 60;
/// Per-domain totals are kept every this many seconds, for an hour.
const DOMAIN_STEP: u64 = 5;
const DOMAIN_POINTS: usize = 3600 / DOMAIN_STEP as usize + 1;
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

/// A domain's (unix seconds, delivered, failed) points.
type Points = VecDeque<(u64, u64, u64)>;

/// What the dashboard keeps for every listener of one server.
#[derive(Debug)]
pub struct Hub {
    pub outcomes: Arc<RecentOutcomes>,
    history: Mutex<VecDeque<Sample>>,
    /// Per domain: (unix seconds, delivered, failed) every [`DOMAIN_STEP`] seconds.
    windows: Mutex<HashMap<Arc<str>, Points>>,
    ticks: broadcast::Sender<Arc<str>>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            outcomes: Arc::default(),
            history: Mutex::new(VecDeque::with_capacity(HISTORY_SECS)),
            windows: Mutex::default(),
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
        let back = |secs: u64| {
            points
                .iter()
                .find(|(t, _, _)| now.saturating_sub(*t) <= secs)
                .map(|&(_, d, f)| (delivered.saturating_sub(d), failed.saturating_sub(f)))
                .unwrap_or((0, 0))
        };
        let (delivered_1m, failed_1m) = back(60);
        let (delivered_1h, failed_1h) = back(3600);
        Windows {
            delivered_1m,
            failed_1m,
            delivered_1h,
            failed_1h,
        }
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
                let mut w = hub.windows.lock().unwrap_or_else(|p| p.into_inner());
                for (domain, d) in server.engine().all_stats() {
                    let points = w.entry(domain).or_default();
                    if points.len() == DOMAIN_POINTS {
                        points.pop_front();
                    }
                    points.push_back((
                        sample.t,
                        d.delivered.load(Ordering::Relaxed),
                        d.permanent.load(Ordering::Relaxed) + d.transient.load(Ordering::Relaxed),
                    ));
                }
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
