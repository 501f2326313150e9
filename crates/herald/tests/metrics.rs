//! `GET /metrics` after known traffic. A `herald serve` (in process) delivers to an APNs simulator that knows
//! bad, unregistered, expired and wrong-topic tokens (certificate authentication), to a simulator that answers
//! every request 503 ServiceUnavailable, and to a closed port. The Prometheus text is parsed strictly (every
//! sample line, HELP and TYPE for every family) and every family herald exports must show exactly the counts
//! the traffic implies.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herald::queue::stats::LATENCY_BUCKETS;
use herald::server::Server;
use herald_sim::{CertVariant, Pki, SimConfig, SimHandle, Simulator, TokenRule, TokenState};
use serde_json::{Value, json};
use support::free_port;

const TOPIC: &str = "com.example.metrics";
const WAIT: Duration = Duration::from_secs(60);

/// Delivers to the simulator with token rules, over a client certificate.
const OK: &str = "ok.example";
/// Delivers to the simulator that answers 503 to everything, with a provider token.
const BUSY: &str = "busy.example";
/// Its route is a closed port: its notifications wait in the delayed queue.
const HELD: &str = "held.example";

const GOOD: usize = 20;
const BAD: usize = 3;
const UNREGISTERED: usize = 2;
const EXPIRED: usize = 1;
const NOT_FOR_TOPIC: usize = 2;
const BUSY_SENT: usize = 4;
/// `max_retries` of BUSY: each of its notifications is tried 1 + this many times.
const BUSY_RETRIES: usize = 2;
const HELD_SENT: usize = 3;

/// A device token of one kind of traffic (the kind picks the high bits, so tokens never collide).
fn token(kind: u64, i: usize) -> String {
    format!("{:064x}", (kind << 40) + 0x3e70_0000 + i as u64)
}

fn tokens(kind: u64, n: usize) -> Vec<String> {
    (0..n).map(|i| token(kind, i)).collect()
}

// ---------------------------------------------------------------------------------------------------------
// A strict reader of the Prometheus text format (version 0.0.4).

type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

#[derive(Debug, Default)]
struct Exposition {
    /// Family name -> HELP text.
    help: BTreeMap<String, String>,
    /// Family name -> TYPE.
    kinds: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        // Rust also reads "inf" and "infinity", which the format does not allow.
        s if s
            .chars()
            .any(|c| c.is_ascii_alphabetic() && c != 'e' && c != 'E') =>
        {
            None
        }
        s => s.parse().ok(),
    }
}

/// `{name="value",…}` (the braces included) -> labels and the rest of the line.
fn parse_labels(s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Labels::new();
    let mut rest = s.strip_prefix('{').ok_or("labels must start with {")?;
    loop {
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("label without =\"…\" in {s:?}"))?;
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated value of label {name:?}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in label {name:?}")),
                },
                Some((_, '\n')) => return Err(format!("raw newline in label {name:?}")),
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_owned(), value).is_some() {
            return Err(format!("label {name:?} appears twice"));
        }
        rest = &after[end + 1..];
        if let Some(after) = rest.strip_prefix(',') {
            rest = after;
        } else if !rest.starts_with('}') {
            return Err(format!("expected , or }} after label {name:?}"));
        }
    }
}

/// Reads the whole exposition; any line that does not parse, a sample of a family without HELP and TYPE
/// before it, a repeated HELP/TYPE or a repeated sample is an error naming the line.
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    let mut seen = BTreeSet::new();
    for (n, line) in text.lines().enumerate() {
        let at = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            if !is_metric_name(name) {
                return Err(at("bad metric name".into()));
            }
            if e.help.insert(name.to_owned(), help.to_owned()).is_some() {
                return Err(at("second HELP".into()));
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').ok_or_else(|| at("no type".into()))?;
            if !is_metric_name(name) {
                return Err(at("bad metric name".into()));
            }
            if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                return Err(at(format!("unknown type {kind:?}")));
            }
            if e.samples
                .iter()
                .any(|s| family_of(&s.name, &e.kinds) == name)
            {
                return Err(at("TYPE after samples of the family".into()));
            }
            if e.kinds.insert(name.to_owned(), kind.to_owned()).is_some() {
                return Err(at("second TYPE".into()));
            }
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ']).ok_or_else(|| at("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(at("bad metric name".into()));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end..]).map_err(at)?
        } else {
            (Labels::new(), &line[name_end..])
        };
        let rest = rest
            .strip_prefix(' ')
            .ok_or_else(|| at("no space before the value".into()))?;
        let mut fields = rest.split(' ');
        let value = fields
            .next()
            .and_then(parse_value)
            .ok_or_else(|| at("bad value".into()))?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>()
                .map_err(|_| at(format!("bad timestamp {ts:?}")))?;
        }
        if fields.next().is_some() {
            return Err(at("text after the timestamp".into()));
        }
        let family = family_of(name, &e.kinds);
        let kind = e
            .kinds
            .get(family)
            .ok_or_else(|| at("sample without a TYPE before it".into()))?;
        if !e.help.contains_key(family) {
            return Err(at("sample without a HELP before it".into()));
        }
        if kind == "histogram" && name.ends_with("_bucket") && !labels.contains_key("le") {
            return Err(at("histogram bucket without le".into()));
        }
        if kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(at("negative counter".into()));
        }
        if !seen.insert((name.to_owned(), labels.clone())) {
            return Err(at("repeated sample".into()));
        }
        e.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(e)
}

/// The family a sample belongs to: its name, or for histogram series the name without `_bucket` / `_sum` /
/// `_count`.
fn family_of<'a>(name: &'a str, kinds: &BTreeMap<String, String>) -> &'a str {
    if kinds.contains_key(name) {
        return name;
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && kinds.get(base).is_some_and(|k| k == "histogram")
        {
            return base;
        }
    }
    name
}

impl Exposition {
    /// Every sample of the series `name`, by labels.
    fn series(&self, name: &str) -> BTreeMap<Labels, f64> {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| (s.labels.clone(), s.value))
            .collect()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn by_domain(values: &[(&str, f64)]) -> BTreeMap<Labels, f64> {
    values
        .iter()
        .map(|(d, v)| (labels(&[("domain", d)]), *v))
        .collect()
}

#[test]
fn the_reader_accepts_the_format_and_refuses_malformed_lines() {
    let good = "# HELP a_total A thing.\n# TYPE a_total counter\na_total{x=\"q\\\"\\\\\\n\",y=\"\"} 3\n\
                # HELP h H.\n# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2 1700000000\nh_sum 0.5\nh_count 2\n";
    let e = parse_exposition(good).unwrap();
    assert_eq!(
        e.series("a_total"),
        BTreeMap::from([(labels(&[("x", "q\"\\\n"), ("y", "")]), 3.0)])
    );
    assert_eq!(
        e.series("h_count").values().copied().collect::<Vec<_>>(),
        [2.0]
    );
    for bad in [
        "# TYPE a counter\na 1\n",                         // no HELP
        "# HELP a A.\na 1\n",                              // no TYPE
        "# HELP a A.\n# TYPE a counter\na{b=\"c} 1\n",     // unterminated label
        "# HELP a A.\n# TYPE a counter\na{b=\"c\"} one\n", // bad value
        "# HELP a A.\n# TYPE a counter\na{b=\"c\"}1\n",    // no space
        "# HELP a A.\n# TYPE a counter\na 1\na 2\n",       // repeated sample
        "# HELP a A.\n# TYPE a counter\na -1\n",           // negative counter
        "# HELP a A.\n# TYPE a wobble\na 1\n",             // unknown type
        "# HELP h H.\n# TYPE h histogram\nh_bucket 1\n",   // bucket without le
        "# HELP a A.\n# TYPE a counter\na{b=\"\\x\"} 1\n", // bad escape
        "# HELP a A.\n# TYPE a counter\na inf\n",          // not the format's spelling
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

// ---------------------------------------------------------------------------------------------------------
// The traffic.

struct Setup {
    _dir: tempfile::TempDir,
    server: std::sync::Arc<Server>,
    http: String,
    ok_sim: SimHandle,
    busy_sim: SimHandle,
    certificate: PathBuf,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let m = &pki.manifest;

    // docs/apns-protocol.md#reasons: 400 BadDeviceToken, 410 Unregistered / ExpiredToken, 400 DeviceTokenNotForTopic.
    let mut ok_config = SimConfig::from_pki(m).unwrap();
    ok_config.scenario.bad = tokens(2, BAD);
    ok_config.scenario.unregistered = tokens(3, UNREGISTERED);
    ok_config.scenario.expired = tokens(4, EXPIRED);
    ok_config.scenario.tokens = tokens(5, NOT_FOR_TOPIC)
        .into_iter()
        .map(|token| TokenRule {
            token,
            state: TokenState::Active,
            topic: Some("com.example.another-app".into()),
            timestamp_ms: None,
        })
        .collect();
    let ok_sim = Simulator::start(ok_config).await.unwrap();
    // docs/apns-protocol.md#reasons: 503 ServiceUnavailable is transient.
    let mut busy_config = SimConfig::from_pki(m).unwrap();
    busy_config
        .scenario
        .errors
        .insert("ServiceUnavailable".into(), 1.0);
    let busy_sim = Simulator::start(busy_config).await.unwrap();
    let held_port = free_port();

    let client = pki.client(TOPIC, CertVariant::Universal).unwrap();
    let token_auth = format!(
        "apn_key = \"{}\"\n  apn_key_id = \"{}\"\n  apn_team_id = \"{}\"",
        m.token_key.p8.display(),
        m.token_key.key_id,
        m.token_key.team_id
    );
    let text = format!(
        r#"
spool_dir = "{spool}"
http_listener {{ listen "127.0.0.1:0" {{ }} }}
domain "{OK}" {{
  delivery_method = apn
  routes = ( "https://{ok_h2}" )
  tls_verify = ca
  tls_ca = "{ca}"
  tls_certificate = "{cert}"
  tls_key = "{key}"
  apn_topic = "{TOPIC}"
  max_outbound_connections = 1
  idle_timeout = 3600
}}
domain "{BUSY}" {{
  delivery_method = apn
  routes = ( "https://{busy_h2}" )
  tls_verify = ca
  tls_ca = "{ca}"
  {token_auth}
  apn_topic = "{TOPIC}"
  max_outbound_connections = 1
  idle_timeout = 3600
  retry_interval = 1
  max_retry_interval = 1
  max_retries = {BUSY_RETRIES}
}}
domain "{HELD}" {{
  delivery_method = apn
  routes = ( "https://127.0.0.1:{held_port}" )
  tls_verify = ca
  tls_ca = "{ca}"
  {token_auth}
  apn_topic = "{TOPIC}"
  max_outbound_connections = 1
  retry_interval = 3600
  max_retry_interval = 3600
  mx_failures_to_delay = 1
}}
"#,
        spool = dir.path().join("spool").display(),
        ok_h2 = ok_sim.addrs.h2,
        busy_h2 = busy_sim.addrs.h2,
        ca = m.ca_cert.display(),
        cert = client.cert.display(),
        key = client.key.display(),
    );
    let config = dir.path().join("herald.conf");
    std::fs::write(&config, text).unwrap();
    let server = Server::start(&config).await.unwrap();
    let http = server.addrs().await.http[0].to_string();
    Setup {
        certificate: client.cert.clone(),
        _dir: dir,
        server,
        http,
        ok_sim,
        busy_sim,
    }
}

/// Posts `tokens` to `domain`; returns each item's status (`accepted` / `rejected`).
async fn push(http: &str, domain: &str, tokens: &[String]) -> Vec<String> {
    let response = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/push"))
        .json(&json!({
            "domain": domain,
            "tokens": tokens,
            "payload": {"aps": {"alert": "counted"}},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let v: Value = response.json().await.unwrap();
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap().to_owned())
        .collect()
}

async fn scrape(http: &str) -> (String, String) {
    let response = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    (content_type, response.text().await.unwrap())
}

/// The not-after time of a PEM certificate, read independently of herald.
fn not_after(path: &Path) -> f64 {
    let pem = std::fs::read(path).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).unwrap();
    let cert = pem.parse_x509().unwrap();
    cert.validity().not_after.timestamp() as f64
}

/// What each exactly-known series must hold once all traffic has settled.
fn expected(s: &Setup) -> BTreeMap<&'static str, BTreeMap<Labels, f64>> {
    let ok_received = GOOD + BAD + UNREGISTERED + EXPIRED + NOT_FOR_TOPIC;
    let fail = |d: &str, r: &str, n: usize| (labels(&[("domain", d), ("reason", r)]), n as f64);
    BTreeMap::from([
        (
            "herald_received_total",
            by_domain(&[
                (OK, ok_received as f64),
                (BUSY, BUSY_SENT as f64),
                (HELD, HELD_SENT as f64),
            ]),
        ),
        (
            "herald_delivered_total",
            by_domain(&[(OK, GOOD as f64), (BUSY, 0.0), (HELD, 0.0)]),
        ),
        (
            "herald_requeued_total",
            by_domain(&[(OK, 0.0), (BUSY, 0.0), (HELD, 0.0)]),
        ),
        (
            "herald_transient_failures_total",
            BTreeMap::from([
                fail(BUSY, "ServiceUnavailable", BUSY_SENT * BUSY_RETRIES),
                // Connection failures count under one class, not their addresses and OS text.
                fail(HELD, "ConnectionFailed", HELD_SENT),
            ]),
        ),
        (
            "herald_permanent_failures_total",
            BTreeMap::from([
                fail(OK, "BadDeviceToken", BAD),
                fail(OK, "Unregistered", UNREGISTERED),
                fail(OK, "ExpiredToken", EXPIRED),
                fail(OK, "DeviceTokenNotForTopic", NOT_FOR_TOPIC),
                fail(
                    BUSY,
                    "exceeded max retries; last error: ServiceUnavailable",
                    BUSY_SENT,
                ),
            ]),
        ),
        (
            "herald_queue_active",
            by_domain(&[(OK, 0.0), (BUSY, 0.0), (HELD, 0.0)]),
        ),
        (
            "herald_queue_delayed",
            by_domain(&[(OK, 0.0), (BUSY, 0.0), (HELD, HELD_SENT as f64)]),
        ),
        // One connection each to the simulators (max_outbound_connections = 1, nothing idles it out); none to
        // the closed port, whose queue is delayed rather than reconnecting.
        (
            "herald_connections_open",
            by_domain(&[(OK, 1.0), (BUSY, 1.0), (HELD, 0.0)]),
        ),
        (
            "herald_streams_in_flight",
            by_domain(&[(OK, 0.0), (BUSY, 0.0), (HELD, 0.0)]),
        ),
        // Three domains, one binding: three queues, none idle long enough (idle_queue_timeout) to retire.
        (
            "herald_queues_running",
            BTreeMap::from([(Labels::new(), 3.0)]),
        ),
        // Every answer came in time: no stream was cancelled.
        (
            "herald_streams_cancelled_total",
            by_domain(&[(OK, 0.0), (BUSY, 0.0), (HELD, 0.0)]),
        ),
        // No queue's task failed.
        (
            "herald_queue_task_failures_total",
            by_domain(&[(OK, 0.0), (BUSY, 0.0), (HELD, 0.0)]),
        ),
        (
            "herald_delivery_latency_seconds_count",
            by_domain(&[(OK, GOOD as f64), (BUSY, 0.0), (HELD, 0.0)]),
        ),
        (
            "herald_certificate_expiry_timestamp_seconds",
            BTreeMap::from([(
                labels(&[
                    ("domain", OK),
                    ("certificate", &s.certificate.display().to_string()),
                ]),
                not_after(&s.certificate),
            )]),
        ),
        // Delivered and failed notifications leave the spool; the held ones stay.
        (
            "herald_spool_records",
            BTreeMap::from([(Labels::new(), HELD_SENT as f64)]),
        ),
        // The spool was empty at start: nothing to restore, and the restore is over.
        (
            "herald_spool_restoring",
            BTreeMap::from([(Labels::new(), 0.0)]),
        ),
        (
            "herald_spool_restored_total",
            BTreeMap::from([(Labels::new(), 0.0)]),
        ),
        // Every outcome was stored: no removal waits for one.
        (
            "herald_spool_removals_waiting_for_outcomes",
            BTreeMap::from([(Labels::new(), 0.0)]),
        ),
        (
            "herald_spool_removals_forced_total",
            BTreeMap::from([(Labels::new(), 0.0)]),
        ),
        // The invalid-token store's size, under both names.
        (
            "herald_invalid_tokens",
            BTreeMap::from([(Labels::new(), (BAD + UNREGISTERED + EXPIRED) as f64)]),
        ),
        (
            "herald_invalid_tokens_total",
            BTreeMap::from([(Labels::new(), (BAD + UNREGISTERED + EXPIRED) as f64)]),
        ),
    ])
}

/// docs/api.md's metrics table: family -> (type, labels).
fn documented_families() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/api.md");
    let api = std::fs::read_to_string(&path).unwrap();
    api.lines()
        .filter(|l| l.trim_start().starts_with("| `herald_"))
        .map(|row| {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let labels = cells[3]
                .split(',')
                .map(|l| l.trim().trim_matches('`'))
                .filter(|l| !l.is_empty())
                .map(str::to_owned)
                .collect();
            (
                cells[1].trim_matches('`').to_owned(),
                (cells[2].to_owned(), labels),
            )
        })
        .collect()
}

/// The `/metrics` route's description in docs/openapi.yaml.
fn openapi_metrics_description() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/openapi.yaml");
    let openapi = std::fs::read_to_string(&path).unwrap();
    let (_, route) = openapi.split_once("\n  /metrics:\n").unwrap();
    let (description, _) = route.split_once("operationId: metrics").unwrap();
    description.to_owned()
}

/// Families served only with the JetStream spool (this test's server has a local spool).
fn jetstream_only(family: &str) -> bool {
    family.starts_with("herald_jetstream_") || family == "herald_invalid_tokens_share_dropped_total"
}

/// What docs/api.md's metrics table and docs/openapi.yaml's `/metrics` description get wrong about `e`: a family
/// served and not documented (or with another type, or other labels than its samples carry), or documented and
/// not served.
fn undocumented(e: &Exposition) -> Vec<String> {
    let documented = documented_families();
    let description = openapi_metrics_description();
    let mut out = Vec::new();
    for (family, kind) in &e.kinds {
        let mut labels = BTreeSet::new();
        for sample in e
            .samples
            .iter()
            .filter(|s| family_of(&s.name, &e.kinds) == family)
        {
            labels.extend(sample.labels.keys().filter(|l| *l != "le").cloned());
        }
        let sampled = e
            .samples
            .iter()
            .any(|s| family_of(&s.name, &e.kinds) == family);
        match documented.get(family) {
            None => out.push(format!("{family}: not in docs/api.md's metrics table")),
            Some((k, _)) if k != kind => {
                out.push(format!("{family}: a {kind}, docs/api.md says {k}"))
            }
            Some((_, l)) if sampled && *l != labels => out.push(format!(
                "{family}: labels {labels:?}, docs/api.md says {l:?}"
            )),
            Some(_) => {}
        }
        if !description.contains(&format!("`{family}`")) {
            out.push(format!(
                "{family}: not named in docs/openapi.yaml's /metrics description"
            ));
        }
    }
    for family in documented.keys() {
        if !e.kinds.contains_key(family) && !jetstream_only(family) {
            out.push(format!(
                "{family}: in docs/api.md's metrics table, not served"
            ));
        }
    }
    out
}

fn differences(
    e: &Exposition,
    expected: &BTreeMap<&'static str, BTreeMap<Labels, f64>>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, want) in expected {
        let got = e.series(name);
        if &got != want {
            out.push(format!("{name}:\n  want {want:?}\n  got  {got:?}"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_known_traffic_show_exactly_the_counts_sent() {
    let started = Instant::now();
    let s = setup().await;

    let mut ok_tokens = tokens(1, GOOD);
    for kind_and_count in [
        (2, BAD),
        (3, UNREGISTERED),
        (4, EXPIRED),
        (5, NOT_FOR_TOPIC),
    ] {
        ok_tokens.extend(tokens(kind_and_count.0, kind_and_count.1));
    }
    // Refused at the door: never received, never counted.
    ok_tokens.push("not-a-device-token".into());
    let statuses = push(&s.http, OK, &ok_tokens).await;
    assert_eq!(
        statuses.iter().filter(|s| *s == "accepted").count(),
        ok_tokens.len() - 1
    );
    assert_eq!(statuses.last().map(String::as_str), Some("rejected"));
    for (domain, kind, n) in [(BUSY, 6, BUSY_SENT), (HELD, 7, HELD_SENT)] {
        let statuses = push(&s.http, domain, &tokens(kind, n)).await;
        assert!(statuses.iter().all(|s| s == "accepted"), "{statuses:?}");
    }

    // Wait until the exposition holds exactly what the traffic implies (counters only grow, so a wrong count
    // never turns right by waiting), then check its structure.
    let deadline = Instant::now() + WAIT;
    let (content_type, text, e) = loop {
        let (content_type, text) = scrape(&s.http).await;
        let e = parse_exposition(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
        let diff = differences(&e, &expected(&s));
        if diff.is_empty() {
            break (content_type, text, e);
        }
        assert!(
            Instant::now() < deadline,
            "metrics never matched the traffic:\n{}\n\n{text}",
            diff.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(content_type, "text/plain; version=0.0.4");

    // Every family herald exports, with its type.
    let families: BTreeMap<&str, &str> = e
        .kinds
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        families,
        BTreeMap::from([
            ("herald_received_total", "counter"),
            ("herald_delivered_total", "counter"),
            ("herald_requeued_total", "counter"),
            ("herald_transient_failures_total", "counter"),
            ("herald_permanent_failures_total", "counter"),
            ("herald_queue_active", "gauge"),
            ("herald_queue_delayed", "gauge"),
            ("herald_connections_open", "gauge"),
            ("herald_streams_in_flight", "gauge"),
            ("herald_stream_limit", "gauge"),
            ("herald_queues_running", "gauge"),
            ("herald_queue_task_failures_total", "counter"),
            ("herald_streams_cancelled_total", "counter"),
            ("herald_delivery_latency_seconds", "histogram"),
            ("herald_certificate_expiry_timestamp_seconds", "gauge"),
            ("herald_spool_records", "gauge"),
            ("herald_spool_bytes", "gauge"),
            ("herald_spool_restoring", "gauge"),
            ("herald_spool_restored_total", "counter"),
            ("herald_spool_writable", "gauge"),
            ("herald_spool_disk_full", "gauge"),
            ("herald_spool_pending_removals", "gauge"),
            ("herald_invalid_tokens", "gauge"),
            ("herald_invalid_tokens_total", "gauge"),
            ("herald_log_lines_dropped_total", "counter"),
            ("herald_outcomes_stored", "gauge"),
            ("herald_outcomes_tracked", "gauge"),
            ("herald_outcomes_dropped_total", "counter"),
            ("herald_spool_removals_waiting_for_outcomes", "gauge"),
            ("herald_spool_removals_forced_total", "counter"),
            ("herald_webhook_backlog", "gauge"),
            ("herald_webhook_delivered_total", "counter"),
            ("herald_webhook_dropped_total", "counter"),
            ("herald_webhook_failures_total", "counter"),
            ("herald_channel_operations_total", "counter"),
            ("herald_broadcasts_total", "counter"),
            ("herald_broadcasts_queued", "gauge"),
        ]),
        "{text}"
    );
    assert_eq!(
        e.help.keys().collect::<Vec<_>>(),
        e.kinds.keys().collect::<Vec<_>>()
    );
    assert!(e.help.values().all(|h| !h.is_empty()), "{text}");

    // The histogram: the declared buckets in order, cumulative, +Inf = _count = deliveries; the sum is the
    // latencies, each shorter than the test so far.
    let elapsed = started.elapsed().as_secs_f64();
    let buckets = e.series("herald_delivery_latency_seconds_bucket");
    let sums = e.series("herald_delivery_latency_seconds_sum");
    let counts = e.series("herald_delivery_latency_seconds_count");
    for domain in [OK, BUSY, HELD] {
        let mut series: Vec<(f64, f64)> = buckets
            .iter()
            .filter(|(l, _)| l.get("domain").map(String::as_str) == Some(domain))
            .map(|(l, v)| {
                assert_eq!(l.len(), 2, "{l:?}");
                let le = parse_value(&l["le"]).unwrap_or_else(|| panic!("le {l:?}"));
                (le, *v)
            })
            .collect();
        series.sort_by(|a, b| a.0.total_cmp(&b.0));
        let bounds: Vec<f64> = series.iter().map(|(le, _)| *le).collect();
        let mut declared = LATENCY_BUCKETS.to_vec();
        declared.push(f64::INFINITY);
        assert_eq!(bounds, declared, "{domain}");
        assert!(
            series.windows(2).all(|w| w[0].1 <= w[1].1),
            "{domain}: buckets are not cumulative: {series:?}"
        );
        let count = counts[&labels(&[("domain", domain)])];
        assert_eq!(series.last().unwrap().1, count, "{domain}: +Inf != _count");
        let sum = sums[&labels(&[("domain", domain)])];
        if count == 0.0 {
            assert_eq!(sum, 0.0, "{domain}");
        } else {
            assert!(sum > 0.0 && sum <= count * elapsed, "{domain}: sum {sum}");
        }
    }

    // The in-flight limit is adaptive: within the simulators' 1000 streams on each open connection, none where no
    // connection is open.
    let limits = e.series("herald_stream_limit");
    for (domain, open) in [(OK, true), (BUSY, true), (HELD, false)] {
        let limit = limits[&labels(&[("domain", domain)])];
        if open {
            assert!((1.0..=1000.0).contains(&limit), "{domain}: {limit}");
        } else {
            assert_eq!(limit, 0.0, "{domain}");
        }
    }

    let spool_bytes = e.series("herald_spool_bytes");
    assert_eq!(spool_bytes.len(), 1);
    assert!(spool_bytes[&Labels::new()] > 0.0, "{text}");

    // The simulators saw exactly the attempts these counts stand for.
    let ok_stats = s.ok_sim.stats();
    assert_eq!(ok_stats.accepted.total, GOOD as u64);
    assert_eq!(
        ok_stats.rejected.by_reason,
        BTreeMap::from([
            ("BadDeviceToken".to_string(), BAD as u64),
            ("DeviceTokenNotForTopic".to_string(), NOT_FOR_TOPIC as u64),
            ("ExpiredToken".to_string(), EXPIRED as u64),
            ("Unregistered".to_string(), UNREGISTERED as u64),
        ])
    );
    let busy_stats = s.busy_sim.stats();
    assert_eq!(busy_stats.accepted.total, 0);
    assert_eq!(
        busy_stats.rejected.by_reason,
        BTreeMap::from([(
            "ServiceUnavailable".to_string(),
            (BUSY_SENT * (1 + BUSY_RETRIES)) as u64
        )])
    );

    // Every family served is documented, with its type and the labels its samples carry.
    let wrong = undocumented(&e);
    assert!(wrong.is_empty(), "{}\n\n{text}", wrong.join("\n"));

    // The invalid tokens the store's size counts are the ones the list shows.
    let listed: Value = reqwest::get(format!("http://{}/api/v1/tokens/invalid", s.http))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let listed: BTreeSet<(String, String)> = listed["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            assert_eq!(t["domain"], OK);
            (
                t["token"].as_str().unwrap().to_owned(),
                t["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut invalid = BTreeSet::new();
    for (kind, n, reason) in [
        (2, BAD, "BadDeviceToken"),
        (3, UNREGISTERED, "Unregistered"),
        (4, EXPIRED, "ExpiredToken"),
    ] {
        invalid.extend(tokens(kind, n).into_iter().map(|t| (t, reason.to_owned())));
    }
    assert_eq!(listed, invalid);

    // Deleting an entry makes the store smaller: both series go down, and they are gauges (a counter that goes
    // down reads as a reset to `rate()`).
    let (gone, _) = invalid.first().unwrap();
    let response = reqwest::Client::new()
        .delete(format!(
            "http://{}/api/v1/tokens/invalid?domain={OK}&token={gone}",
            s.http
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, text) = scrape(&s.http).await;
    let e = parse_exposition(&text).unwrap_or_else(|err| panic!("{err}\n{text}"));
    for name in ["herald_invalid_tokens", "herald_invalid_tokens_total"] {
        assert_eq!(e.kinds[name], "gauge", "{text}");
        assert_eq!(
            e.series(name),
            BTreeMap::from([(Labels::new(), (invalid.len() - 1) as f64)]),
            "{name}: {text}"
        );
    }

    s.server.shutdown(Duration::from_secs(2)).await;
}
