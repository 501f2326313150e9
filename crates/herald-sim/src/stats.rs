//! Counters of what arrived, all atomics: accepted per protocol and per topic, rejected per reason (HTTP/2) and
//! per status (binary), connections, streams, GOAWAYs. [`Stats::snapshot`] renders them for `GET /stats`.
//!
//! Topics are counted one by one up to [`MAX_TOPICS`]; the notifications of further topics are counted together
//! under [`OTHER_TOPICS`], so that clients pushing to ever new topics cannot grow the map without bound (the
//! totals stay exact). Each connection keeps the counters of at most [`TopicCache::CAPACITY`] topics at hand.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use herald_apns::reason::Reason;
use serde::{Deserialize, Serialize};

/// Topics `by_topic` counts one by one.
pub const MAX_TOPICS: usize = 10_000;

/// The `by_topic` key under which the topics beyond [`MAX_TOPICS`] are counted together (it holds a space, which
/// no APNs topic does).
pub const OTHER_TOPICS: &str = "(other topics)";

/// Accepted counters of one topic.
#[derive(Debug, Default)]
pub struct TopicCounters {
    pub h2: AtomicU64,
    pub binary: AtomicU64,
}

/// Open/total counters of one listener.
#[derive(Debug, Default)]
pub struct ConnCounters {
    pub open: AtomicU64,
    pub total: AtomicU64,
    /// The most connections open at once.
    pub peak: AtomicU64,
}

impl ConnCounters {
    pub(crate) fn opened(&self) -> ConnGuard<'_> {
        let open = self.open.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak.fetch_max(open, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
        ConnGuard(self)
    }
}

/// Decrements `open` when the connection ends.
pub(crate) struct ConnGuard<'a>(&'a ConnCounters);

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every counter of a running simulator.
#[derive(Debug)]
pub struct Stats {
    pub accepted_h2: AtomicU64,
    pub accepted_binary: AtomicU64,
    by_topic: RwLock<HashMap<String, Arc<TopicCounters>>>,
    rejected: [AtomicU64; Reason::ALL.len()],
    binary_rejected: [AtomicU64; 256],
    pub h2_connections: ConnCounters,
    pub binary_connections: ConnCounters,
    pub feedback_connections: ConnCounters,
    pub streams_total: AtomicU64,
    pub streams_refused: AtomicU64,
    /// Streams the client reset before their answer: processed (and, if valid, accepted and recorded) all the same.
    pub streams_cancelled: AtomicU64,
    /// Streams reset by the simulator because their body did not end within the body timeout.
    pub streams_timed_out: AtomicU64,
    pub goaways: AtomicU64,
    pub dropped_connections: AtomicU64,
    pub feedback_tuples: AtomicU64,
    pub tls_failures: AtomicU64,
    /// Broadcast counters (written by [`crate::broadcast`], off the device-push hot path).
    pub(crate) broadcast: std::sync::Mutex<BroadcastStats>,
    /// TCP connections accepted (any listener), by the client's source address.
    peers: std::sync::Mutex<BTreeMap<std::net::IpAddr, u64>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            accepted_h2: AtomicU64::new(0),
            accepted_binary: AtomicU64::new(0),
            by_topic: RwLock::default(),
            rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            binary_rejected: std::array::from_fn(|_| AtomicU64::new(0)),
            h2_connections: ConnCounters::default(),
            binary_connections: ConnCounters::default(),
            feedback_connections: ConnCounters::default(),
            streams_total: AtomicU64::new(0),
            streams_refused: AtomicU64::new(0),
            streams_cancelled: AtomicU64::new(0),
            streams_timed_out: AtomicU64::new(0),
            goaways: AtomicU64::new(0),
            dropped_connections: AtomicU64::new(0),
            feedback_tuples: AtomicU64::new(0),
            tls_failures: AtomicU64::new(0),
            broadcast: std::sync::Mutex::default(),
            peers: std::sync::Mutex::default(),
        }
    }
}

/// `GET /stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    pub accepted: AcceptedStats,
    pub rejected: RejectedStats,
    pub connections: ConnectionStats,
    pub streams: StreamStats,
    pub goaways: u64,
    pub dropped_connections: u64,
    pub feedback_tuples: u64,
    pub tls_failures: u64,
    /// Broadcast pushes and channel management (the broadcast and management ports).
    #[serde(default)]
    pub broadcast: BroadcastStats,
    /// Notifications dropped from the in-memory record, oldest first, to keep it within
    /// [`crate::SimConfig::record_memory_limit`] (the `--record` file keeps them).
    #[serde(default)]
    pub records_dropped: u64,
}

/// The broadcast side of `GET /stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BroadcastStats {
    /// Broadcasts accepted (and recorded).
    pub accepted: u64,
    /// Accepted broadcasts by bundle id.
    pub by_bundle: BTreeMap<String, u64>,
    /// Successful channel operations by name (`create`, `read`, `delete`, `list`).
    pub channel_ops: BTreeMap<String, u64>,
    /// Rejected broadcast and management requests by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Channels that exist now, over every bundle id.
    pub channels: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptedStats {
    pub total: u64,
    pub h2: u64,
    pub binary: u64,
    /// topic -> {"h2": n, "binary": n}; at most [`MAX_TOPICS`] topics, the others together under
    /// [`OTHER_TOPICS`].
    pub by_topic: BTreeMap<String, BTreeMap<String, u64>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedStats {
    pub total: u64,
    /// HTTP/2 reason -> count.
    pub by_reason: BTreeMap<String, u64>,
    /// Binary status code -> count.
    pub binary_by_status: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenTotal {
    pub open: u64,
    pub total: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionStats {
    pub open: u64,
    pub total: u64,
    pub h2: OpenTotal,
    pub binary: OpenTotal,
    pub feedback: OpenTotal,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStats {
    pub total: u64,
    pub refused: u64,
    /// Reset by the client before the answer: processed all the same (accepted, if valid, without the client
    /// hearing so).
    #[serde(default)]
    pub cancelled: u64,
    /// Reset (`REFUSED_STREAM`, unprocessed) because the request body did not end within the body timeout.
    #[serde(default)]
    pub timed_out: u64,
}

/// The topic counters one connection keeps at hand, at most [`TopicCache::CAPACITY`] topics: beyond, the counters
/// are looked up in [`Stats`] for each notification.
#[derive(Debug, Default)]
pub(crate) struct TopicCache {
    map: HashMap<String, Arc<TopicCounters>>,
}

impl TopicCache {
    pub const CAPACITY: usize = 64;

    pub fn get(&mut self, stats: &Stats, topic: &str) -> Arc<TopicCounters> {
        if let Some(c) = self.map.get(topic) {
            return c.clone();
        }
        let counters = stats.topic(topic);
        if self.map.len() < Self::CAPACITY {
            self.map.insert(topic.to_owned(), counters.clone());
        }
        counters
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

fn reason_index(reason: Reason) -> usize {
    Reason::ALL.iter().position(|r| *r == reason).unwrap_or(0)
}

impl Stats {
    /// The counters of `topic` (those of [`OTHER_TOPICS`] once [`MAX_TOPICS`] topics are counted); callers cache
    /// the `Arc` per connection ([`TopicCache`]) so the map is read once per topic.
    pub fn topic(&self, topic: &str) -> Arc<TopicCounters> {
        if let Some(c) = self
            .by_topic
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
        {
            return c.clone();
        }
        let mut map = self.by_topic.write().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = map.get(topic) {
            return c.clone();
        }
        let key = if map.len() < MAX_TOPICS {
            topic
        } else {
            OTHER_TOPICS
        };
        map.entry(key.to_owned()).or_default().clone()
    }

    pub fn reject(&self, reason: Reason) {
        self.rejected[reason_index(reason)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn reject_binary(&self, status: u8) {
        self.binary_rejected[status as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, reason: Reason) -> u64 {
        self.rejected[reason_index(reason)].load(Ordering::Relaxed)
    }

    /// A TCP connection was accepted from `ip`.
    pub(crate) fn peer_connected(&self, ip: std::net::IpAddr) {
        *self
            .peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(ip)
            .or_default() += 1;
    }

    /// TCP connections accepted so far (any listener) from each source address.
    pub fn connections_by_source(&self) -> BTreeMap<std::net::IpAddr, u64> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn accepted(&self) -> u64 {
        self.accepted_h2.load(Ordering::Relaxed) + self.accepted_binary.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let ot = |c: &ConnCounters| OpenTotal {
            open: load(&c.open),
            total: load(&c.total),
        };
        let mut by_topic = BTreeMap::new();
        for (topic, c) in self
            .by_topic
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            let mut m = BTreeMap::new();
            m.insert("h2".to_owned(), load(&c.h2));
            m.insert("binary".to_owned(), load(&c.binary));
            by_topic.insert(topic.clone(), m);
        }
        let by_reason: BTreeMap<String, u64> = Reason::ALL
            .iter()
            .map(|r| (r.as_str().to_owned(), self.rejected(*r)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let binary_by_status: BTreeMap<String, u64> = self
            .binary_rejected
            .iter()
            .enumerate()
            .map(|(s, n)| (s.to_string(), load(n)))
            .filter(|(_, n)| *n > 0)
            .collect();
        let (h2, binary, feedback) = (
            ot(&self.h2_connections),
            ot(&self.binary_connections),
            ot(&self.feedback_connections),
        );
        StatsSnapshot {
            accepted: AcceptedStats {
                total: self.accepted(),
                h2: load(&self.accepted_h2),
                binary: load(&self.accepted_binary),
                by_topic,
            },
            rejected: RejectedStats {
                total: by_reason.values().sum::<u64>() + binary_by_status.values().sum::<u64>(),
                by_reason,
                binary_by_status,
            },
            connections: ConnectionStats {
                open: h2.open + binary.open + feedback.open,
                total: h2.total + binary.total + feedback.total,
                h2,
                binary,
                feedback,
            },
            streams: StreamStats {
                total: load(&self.streams_total),
                refused: load(&self.streams_refused),
                cancelled: load(&self.streams_cancelled),
                timed_out: load(&self.streams_timed_out),
            },
            goaways: load(&self.goaways),
            dropped_connections: load(&self.dropped_connections),
            feedback_tuples: load(&self.feedback_tuples),
            tls_failures: load(&self.tls_failures),
            broadcast: self
                .broadcast
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            // Filled in from the record by the simulator's handle and the admin port.
            records_dropped: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_counts_by_topic_reason_and_status() {
        let s = Stats::default();
        s.topic("a").h2.fetch_add(2, Ordering::Relaxed);
        s.accepted_h2.fetch_add(2, Ordering::Relaxed);
        s.reject(Reason::BadTopic);
        s.reject_binary(8);
        {
            let _g = s.h2_connections.opened();
            assert_eq!(s.snapshot().connections.open, 1);
        }
        let snap = s.snapshot();
        assert_eq!(snap.accepted.by_topic["a"]["h2"], 2);
        assert_eq!(snap.rejected.by_reason["BadTopic"], 1);
        assert_eq!(snap.rejected.binary_by_status["8"], 1);
        assert_eq!(snap.rejected.total, 2);
        assert_eq!(snap.connections.open, 0);
        assert_eq!(snap.connections.h2.total, 1);
    }

    #[test]
    fn topics_beyond_the_cap_are_counted_together() {
        let s = Stats::default();
        let mut cache = TopicCache::default();
        for i in 0..MAX_TOPICS + 5 {
            cache
                .get(&s, &format!("com.example.app{i}"))
                .h2
                .fetch_add(1, Ordering::Relaxed);
            assert!(cache.len() <= TopicCache::CAPACITY);
        }
        // A topic already counted keeps its own counters.
        s.topic("com.example.app0")
            .h2
            .fetch_add(1, Ordering::Relaxed);
        let by_topic = s.snapshot().accepted.by_topic;
        assert_eq!(by_topic.len(), MAX_TOPICS + 1);
        assert_eq!(by_topic["com.example.app0"]["h2"], 2);
        assert_eq!(by_topic[OTHER_TOPICS]["h2"], 5);
        let counted: u64 = by_topic.values().map(|c| c["h2"]).sum();
        assert_eq!(counted, MAX_TOPICS as u64 + 6);
    }
}
