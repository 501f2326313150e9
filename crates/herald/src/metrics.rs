//! Prometheus text exposition of herald's counters (`GET /metrics`): receptions, deliveries, transient and
//! permanent failures by domain and reason, queue sizes, open connections and streams, the delivery-latency
//! histogram, certificate expiry times, the spool's size and the progress of its restore at start, and the size of the
//! invalid-token store. docs/api.md's metrics table documents every family (the tests below hold them in step).
//!
//! The text is written here from snapshots of the engine's counters rather than through `prometheus-client`:
//! that crate encodes OpenMetrics (its own content type, `# EOF`, `_total` and unit naming rules), which would change
//! the families and the format scrapers and dashboards already read from herald, and its registry wants every
//! series registered up front while herald's label sets (domains, reasons) come and go with the configuration.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;

use crate::queue::Engine;
use crate::queue::stats::{FailureKind, LATENCY_BUCKETS};

/// Facts from outside the engine that the exposition includes.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    /// (domain, certificate path, not-after as Unix seconds).
    pub certificate_expiry: Vec<(String, String, u64)>,
    /// Records and bytes in the spool, when there is one.
    pub spool: Option<(u64, u64)>,
    /// Whether the spool takes writes, whether its disk is full, and removals waiting for a commit.
    pub spool_health: Option<SpoolHealth>,
    /// The shared JetStream stream's figures, with the JetStream spool.
    pub stream: Option<herald_spool::JetStreamStats>,
    /// The restore of the spool at start: whether it still runs, and how many notifications it queued again.
    pub restore: Option<(bool, u64)>,
    /// Entries in the invalid-token store (one per domain and token; the store outlives restarts).
    pub invalid_tokens: Option<u64>,
}

/// The spool's state as the exposition shows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpoolHealth {
    pub writable: bool,
    pub disk_full: bool,
    pub pending_removals: u64,
}

/// Renders every metric in the Prometheus text format (version 0.0.4).
pub fn render(engine: &Engine, extra: &Extra) -> String {
    let domains = engine.all_stats();
    let mut out = String::with_capacity(4096 + domains.len() * 2048);
    let counter = |out: &mut String,
                   name: &str,
                   help: &str,
                   get: &dyn Fn(&crate::queue::stats::DomainStats) -> u64| {
        header(out, name, help, "counter");
        for (domain, stats) in &domains {
            let _ = writeln!(
                out,
                "{name}{{domain=\"{}\"}} {}",
                escape(domain),
                get(stats)
            );
        }
    };
    counter(
        &mut out,
        "herald_received_total",
        "Notifications accepted for delivery.",
        &|s| s.received.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "herald_delivered_total",
        "Notifications APNs accepted.",
        &|s| s.delivered.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "herald_requeued_total",
        "Notifications sent again without counting an attempt.",
        &|s| s.requeued.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "herald_queue_task_failures_total",
        "Times a queue's task failed (a panic: a defect of herald) and a new task took its notifications over.",
        &|s| s.task_failures.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "herald_streams_cancelled_total",
        "HTTP/2 streams cancelled (RST_STREAM CANCEL) after no answer within the response timeout.",
        &|s| s.streams_cancelled.load(Ordering::Relaxed),
    );

    for (kind, name, help) in [
        (
            FailureKind::Transient,
            "herald_transient_failures_total",
            "Transient failures (retried), by reason.",
        ),
        (
            FailureKind::Permanent,
            "herald_permanent_failures_total",
            "Permanent failures (removed), by reason.",
        ),
    ] {
        header(&mut out, name, help, "counter");
        for (domain, stats) in &domains {
            let mut failures: Vec<_> = stats
                .failures()
                .into_iter()
                .filter_map(|((k, reason), v)| (k == kind).then_some((reason, v)))
                .collect();
            failures.sort();
            for (reason, count) in failures {
                let _ = writeln!(
                    out,
                    "{name}{{domain=\"{}\",reason=\"{}\"}} {count}",
                    escape(domain),
                    escape(&reason)
                );
            }
        }
    }

    let gauge = |out: &mut String,
                 name: &str,
                 help: &str,
                 get: &dyn Fn(&crate::queue::stats::DomainStats) -> usize| {
        header(out, name, help, "gauge");
        for (domain, stats) in &domains {
            let _ = writeln!(
                out,
                "{name}{{domain=\"{}\"}} {}",
                escape(domain),
                get(stats)
            );
        }
    };
    gauge(
        &mut out,
        "herald_queue_active",
        "Notifications ready or being delivered.",
        &|s| s.active.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "herald_queue_delayed",
        "Notifications waiting for a retry.",
        &|s| s.delayed.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "herald_connections_open",
        "Open APNs connections (including ones being opened).",
        &|s| s.connections.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "herald_streams_in_flight",
        "Streams open on APNs connections: notifications sent and not yet answered.",
        &|s| s.in_flight.load(Ordering::Relaxed),
    );
    gauge(
        &mut out,
        "herald_stream_limit",
        "Streams the open APNs connections may keep in flight now (adaptive, at most the servers' limits).",
        &|s| s.stream_limit.load(Ordering::Relaxed),
    );
    header(
        &mut out,
        "herald_queues_running",
        "(binding, domain) queues whose task and connection pool run; one idle for idle_queue_timeout retires and keeps only its counters.",
        "gauge",
    );
    let _ = writeln!(out, "herald_queues_running {}", engine.queues().len());

    let name = "herald_delivery_latency_seconds";
    header(
        &mut out,
        name,
        "Time from queueing to APNs' acceptance.",
        "histogram",
    );
    for (domain, stats) in &domains {
        let d = escape(domain);
        let cumulative = stats.latency_cumulative();
        for (i, count) in cumulative.iter().enumerate() {
            let le = LATENCY_BUCKETS
                .get(i)
                .map(|b| b.to_string())
                .unwrap_or_else(|| "+Inf".into());
            let _ = writeln!(out, "{name}_bucket{{domain=\"{d}\",le=\"{le}\"}} {count}");
        }
        let sum = stats.latency_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum{{domain=\"{d}\"}} {sum}");
        let _ = writeln!(
            out,
            "{name}_count{{domain=\"{d}\"}} {}",
            cumulative.last().copied().unwrap_or(0)
        );
    }

    if !extra.certificate_expiry.is_empty() {
        let name = "herald_certificate_expiry_timestamp_seconds";
        header(
            &mut out,
            name,
            "When each configured client certificate expires (Unix time).",
            "gauge",
        );
        for (domain, path, not_after) in &extra.certificate_expiry {
            let _ = writeln!(
                out,
                "{name}{{domain=\"{}\",certificate=\"{}\"}} {not_after}",
                escape(domain),
                escape(path)
            );
        }
    }
    if let Some((records, bytes)) = extra.spool {
        header(
            &mut out,
            "herald_spool_records",
            "Notifications in the spool.",
            "gauge",
        );
        let _ = writeln!(out, "herald_spool_records {records}");
        header(
            &mut out,
            "herald_spool_bytes",
            "Size of the spool on disk.",
            "gauge",
        );
        let _ = writeln!(out, "herald_spool_bytes {bytes}");
    }
    if let Some(h) = extra.spool_health {
        header(
            &mut out,
            "herald_spool_writable",
            "1 while the spool takes writes; 0 while it refuses new notifications (disk full or I/O error, or a \
             write its disk has not completed for 5 s or more) and retries in the background.",
            "gauge",
        );
        let _ = writeln!(out, "herald_spool_writable {}", u8::from(h.writable));
        header(
            &mut out,
            "herald_spool_disk_full",
            "1 while the spool refuses writes because its disk is full, else 0.",
            "gauge",
        );
        let _ = writeln!(out, "herald_spool_disk_full {}", u8::from(h.disk_full));
        header(
            &mut out,
            "herald_spool_pending_removals",
            "Delivered or failed notifications whose removal from the spool waits for a commit.",
            "gauge",
        );
        let _ = writeln!(out, "herald_spool_pending_removals {}", h.pending_removals);
    }
    if let Some(j) = extra.stream {
        let rows: [(&str, &str, &str, u64); 11] = [
            (
                "herald_jetstream_connected",
                "1 while this node is connected to NATS, the stream is set up and JetStream answers through its server (the stream has a leader), else 0 (notifications are refused meanwhile).",
                "gauge",
                u64::from(j.connected),
            ),
            (
                "herald_jetstream_stream_messages",
                "Notifications in the shared stream: accepted by any node and not yet finished.",
                "gauge",
                j.stream_messages,
            ),
            (
                "herald_jetstream_stream_bytes",
                "Size of the shared stream.",
                "gauge",
                j.stream_bytes,
            ),
            (
                "herald_jetstream_consumer_pending",
                "Notifications in the stream that no node has pulled yet.",
                "gauge",
                j.consumer_pending,
            ),
            (
                "herald_jetstream_consumer_ack_pending",
                "Notifications pulled by some node and not yet acknowledged (all nodes).",
                "gauge",
                j.consumer_ack_pending,
            ),
            (
                "herald_jetstream_consumer_redelivered",
                "Notifications the stream delivered more than once (all nodes; after a node stopped or gave one back).",
                "gauge",
                j.consumer_redelivered,
            ),
            (
                "herald_jetstream_held",
                "Notifications this node pulled and has not finished.",
                "gauge",
                j.held,
            ),
            (
                "herald_jetstream_parked",
                "Of the held notifications, those whose queue is paused or has no route: they take no pull room, up to spool_nats_max_held of them.",
                "gauge",
                j.parked,
            ),
            (
                "herald_jetstream_pulled_total",
                "Notifications this node pulled from the stream since start.",
                "counter",
                j.pulled,
            ),
            (
                "herald_jetstream_handed_back_total",
                "Notifications this node gave back to the stream for a retry later (nak with delay) instead of holding them.",
                "counter",
                j.handed_back,
            ),
            (
                "herald_jetstream_lapsed_total",
                "Held notifications this node did not send because its claim on them lapsed (it was stopped, or its in-progress acks could not go out, for about the ack wait): JetStream gives them to other nodes.",
                "counter",
                j.lapsed,
            ),
        ];
        for (name, help, kind, value) in rows {
            header(&mut out, name, help, kind);
            let _ = writeln!(out, "{name} {value}");
        }
    }
    if let Some((running, queued)) = extra.restore {
        header(
            &mut out,
            "herald_spool_restoring",
            "1 while notifications spooled by an earlier run are being queued again, else 0.",
            "gauge",
        );
        let _ = writeln!(out, "herald_spool_restoring {}", u8::from(running));
        header(
            &mut out,
            "herald_spool_restored_total",
            "Notifications spooled by an earlier run and queued again since start.",
            "counter",
        );
        let _ = writeln!(out, "herald_spool_restored_total {queued}");
    }
    if let Some(n) = extra.invalid_tokens {
        // The store's size goes down when an entry is deleted, so it is a gauge: typed `counter`, `rate()` would
        // read each deletion as a reset. `herald_invalid_tokens_total` is the name dashboards read already.
        header(
            &mut out,
            "herald_invalid_tokens",
            "Entries in the invalid-token store: device tokens APNs or its feedback service reported invalid, one \
             per domain and token; goes down when an entry is deleted.",
            "gauge",
        );
        let _ = writeln!(out, "herald_invalid_tokens {n}");
        header(
            &mut out,
            "herald_invalid_tokens_total",
            "The size of the invalid-token store, as herald_invalid_tokens (a gauge: it goes down when an entry is \
             deleted; the name is kept for the dashboards that read it).",
            "gauge",
        );
        let _ = writeln!(out, "herald_invalid_tokens_total {n}");
    }
    out
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Escapes a label value: backslash, double quote and newline.
pub fn escape(value: &str) -> String {
    let mut s = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};
    use std::sync::Arc;

    use crate::logs::Logs;
    use crate::queue::{EngineLimits, MemoryInvalidTokens, StaticResolver};

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    fn engine() -> Engine {
        Engine::new(
            Arc::new(StaticResolver::default()),
            Logs::default(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits::default(),
        )
    }

    /// Every optional part present, so that the exposition holds every family this module writes.
    fn everything() -> Extra {
        Extra {
            certificate_expiry: vec![(
                "apps.example".into(),
                "/etc/herald/apps.pem".into(),
                1_900_000_000,
            )],
            spool: Some((3, 4096)),
            spool_health: Some(SpoolHealth {
                writable: true,
                disk_full: false,
                pending_removals: 0,
            }),
            stream: Some(herald_spool::JetStreamStats::default()),
            restore: Some((false, 0)),
            invalid_tokens: Some(3),
        }
    }

    /// Family name -> (TYPE, the label names of its samples, `le` of a histogram's buckets left out).
    fn families(text: &str) -> BTreeMap<String, (String, BTreeSet<String>)> {
        let mut out: BTreeMap<String, (String, BTreeSet<String>)> = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                out.insert(name.to_owned(), (kind.to_owned(), BTreeSet::new()));
            }
        }
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let series = line.split([' ', '{']).next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| series.strip_suffix(s))
                .filter(|f| out.get(*f).is_some_and(|(k, _)| k == "histogram"))
                .unwrap_or(series);
            let (_, labels) = out
                .get_mut(family)
                .unwrap_or_else(|| panic!("a sample of no declared family: {line}"));
            if let Some((_, rest)) = line.split_once('{') {
                for pair in rest.split("\",") {
                    let label = pair.split_once('=').unwrap().0;
                    if label != "le" {
                        labels.insert(label.to_owned());
                    }
                }
            }
        }
        out
    }

    /// The metrics table of docs/api.md: family -> (type, labels).
    fn documented() -> BTreeMap<String, (String, BTreeSet<String>)> {
        let api = include_str!("../../../docs/api.md");
        api.lines()
            .filter(|l| l.trim_start().starts_with("| `herald_"))
            .map(|row| {
                let cells: Vec<&str> = row.split('|').map(str::trim).collect();
                let name = cells[1].trim_matches('`').to_owned();
                let labels = cells[3]
                    .split(',')
                    .map(|l| l.trim().trim_matches('`'))
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect();
                (name, (cells[2].to_owned(), labels))
            })
            .collect()
    }

    /// The store's size goes down when an entry is deleted: both of its series are gauges with its size, the
    /// `_total` one kept for the dashboards that read it (typed `counter`, `rate()` read each deletion as a reset).
    #[test]
    fn the_invalid_token_store_s_size_is_a_gauge_under_both_names() {
        let engine = engine();
        for n in [3, 2] {
            let text = render(
                &engine,
                &Extra {
                    invalid_tokens: Some(n),
                    ..Extra::default()
                },
            );
            for name in ["herald_invalid_tokens", "herald_invalid_tokens_total"] {
                assert!(
                    text.contains(&format!("\n# TYPE {name} gauge\n{name} {n}\n")),
                    "{text}"
                );
                let help = text
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("# HELP {name} ")))
                    .unwrap_or_else(|| panic!("no HELP of {name}: {text}"));
                assert!(help.contains("invalid-token store"), "{help}");
            }
            assert!(!text.contains(" counter\nherald_invalid_tokens"), "{text}");
        }
        // Without a store, neither.
        assert!(!render(&engine, &Extra::default()).contains("herald_invalid_tokens"));
    }

    /// Every family this module writes is in docs/api.md's metrics table with its type and labels, and named in
    /// the `/metrics` description of docs/openapi.yaml: a family added without its documentation fails here.
    /// (The families the server adds after these are checked against the table by tests/metrics.rs.)
    #[test]
    fn every_family_written_is_documented_with_its_type_and_labels() {
        let text = render(&engine(), &everything());
        let written = families(&text);
        assert!(written.len() > 30, "{text}");
        let documented = documented();
        let openapi = include_str!("../../../docs/openapi.yaml");
        let metrics_route = openapi
            .split_once("\n  /metrics:\n")
            .and_then(|(_, rest)| rest.split_once("operationId: metrics"))
            .map(|(description, _)| description)
            .unwrap_or_else(|| panic!("no /metrics route in docs/openapi.yaml"));
        let mut missing = Vec::new();
        for (name, (kind, labels)) in &written {
            match documented.get(name) {
                None => missing.push(format!("{name}: not in docs/api.md's metrics table")),
                Some((k, _)) if k != kind => {
                    missing.push(format!("{name}: a {kind}, documented as a {k}"))
                }
                // Per-domain families have no sample without traffic; the others show their labels here.
                Some((_, l)) if !labels.is_empty() || !l.contains("domain") => {
                    if l != labels {
                        missing.push(format!("{name}: labels {labels:?}, documented as {l:?}"));
                    }
                }
                Some(_) => {}
            }
            if !metrics_route.contains(&format!("`{name}`")) {
                missing.push(format!(
                    "{name}: not named in docs/openapi.yaml's /metrics description"
                ));
            }
        }
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
