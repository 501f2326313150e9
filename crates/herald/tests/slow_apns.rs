//! A slow or throttling APNs must not cause duplicates. A `herald serve` (in process) delivers over HTTP/2 with 4
//! connections to the simulator while the simulator slows down:
//!
//! - its latency rises from 10 ms to 8,000 ms during the run (beyond the response timeout), then comes back: the
//!   streams herald keeps in flight fall as the answers slow (read from `/metrics`), and every notification is in
//!   the simulator's record exactly once, except copies of notifications whose stream herald cancelled after its
//!   response timeout (logged in mainlog as such) — the simulator had accepted them before the answer was due, as
//!   APNs may;
//! - it processes only 500 requests/s (the others wait their turn, as at a busy server): no duplicates at all.
//!
//! The sizes are 50,000 and 20,000 notifications (each run takes well under a minute in a debug build);
//! `HERALD_SLOW_APNS_N` and `HERALD_RATE_APNS_N` override them. The rising-latency run needs work left when the
//! latency reaches 8 s, so it takes at least 20,000. `bench/slow/run.sh` measures throughput and duplicates against
//! a slow simulator on a release build.

mod support;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{PaceSettings, Pki, SimConfig, SimHandle, Simulator};
use serde_json::{Value, json};
use support::{log_fields, token_auth_options};

const TOPIC: &str = "com.example.slow";
const DOMAIN: &str = "slow.example";
const CONNECTIONS: usize = 4;

fn count_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(default)
}

fn token(i: usize) -> String {
    format!("5e{i:062x}")
}

struct Setup {
    dir: tempfile::TempDir,
    server: Arc<Server>,
    http: String,
    sim: SimHandle,
}

async fn setup(sim_config: impl FnOnce(&mut SimConfig), response_timeout_ms: u64) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let mut config = SimConfig::from_pki(&pki.manifest).unwrap();
    config.record_in_memory = true;
    sim_config(&mut config);
    let sim = Simulator::start(config).await.unwrap();
    let text = format!(
        r#"
spool_dir = "{spool}"
ec_logger "main" {{ mainlog = "{log}" }}
http_listener {{ listen "127.0.0.1:0" {{ }} }}
domain "{DOMAIN}" {{
{credentials}  max_outbound_connections = {CONNECTIONS}
  delivery_response_timeout = {response_timeout_ms}
  idle_timeout = 3600
  retry_interval = 1
  max_retry_interval = 1
  mx_failures_to_delay = 0
}}
"#,
        spool = dir.path().join("spool").display(),
        log = dir.path().join("mainlog.ec").display(),
        credentials = token_auth_options(&pki, sim.addrs.h2.port(), TOPIC),
    );
    let path = dir.path().join("herald.conf");
    std::fs::write(&path, text).unwrap();
    let server = Server::start(&path).await.unwrap();
    let http = server.addrs().await.http[0].to_string();
    Setup {
        dir,
        server,
        http,
        sim,
    }
}

/// Posts `n` notifications (tokens 0..n) in batches; every one must be accepted.
async fn push_all(http: &str, n: usize) {
    let client = reqwest::Client::new();
    let mut i = 0;
    while i < n {
        let end = (i + 1000).min(n);
        let tokens: Vec<String> = (i..end).map(token).collect();
        let response = client
            .post(format!("http://{http}/api/v1/push"))
            .json(
                &json!({"domain": DOMAIN, "tokens": tokens, "payload": {"aps": {"alert": "slow"}}}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let v: Value = response.json().await.unwrap();
        let results = v["results"].as_array().unwrap();
        assert!(
            results.iter().all(|r| r["status"] == "accepted"),
            "{results:?}"
        );
        i = end;
    }
}

/// One value of a `{domain="…"}` series of the exposition (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    let prefix = format!("{name}{{domain=\"{DOMAIN}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

async fn scrape(client: &reqwest::Client, http: &str) -> String {
    client
        .get(format!("http://{http}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Polls `/metrics` until `done` holds for it, or panics after `deadline` with `what`.
async fn wait_metrics(
    client: &reqwest::Client,
    http: &str,
    deadline: Duration,
    what: &str,
    mut done: impl FnMut(&str) -> bool,
) -> String {
    let end = Instant::now() + deadline;
    loop {
        let text = scrape(client, http).await;
        if done(&text) {
            return text;
        }
        assert!(
            Instant::now() < end,
            "{what} within {deadline:?}; last metrics:\n{}",
            text.lines()
                .filter(|l| l.contains(DOMAIN))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How many times each token is in the simulator's record.
fn record_counts(sim: &SimHandle) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in sim.record() {
        *counts.entry(r.token).or_default() += 1;
    }
    counts
}

/// Per device token, the mainlog's transient failures that name a cancelled stream.
fn cancelled_streams_by_token(mainlog: &Path) -> HashMap<String, usize> {
    let lines = log_fields(mainlog);
    let token_of: HashMap<&str, &str> = lines
        .iter()
        .filter(|f| f.len() > 5 && f[4] == "R")
        .map(|f| (f[1].as_str(), f[5].as_str()))
        .collect();
    let mut cancelled = HashMap::new();
    for f in &lines {
        if f.len() > 13 && f[4] == "T" && f[13].contains("cancelled") {
            assert!(
                f[13].contains("no answer within"),
                "a cancelled stream that did not time out: {f:?}"
            );
            let token = token_of
                .get(f[1].as_str())
                .unwrap_or_else(|| panic!("no reception line for {}", f[1]));
            *cancelled.entry((*token).to_owned()).or_default() += 1;
        }
    }
    cancelled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rising_latency_lowers_streams_in_flight_and_every_duplicate_is_a_cancelled_stream() {
    let n = count_from_env("HERALD_SLOW_APNS_N", 50_000).max(20_000);
    // 100 streams per connection, so that at 10 ms all 4 connections are busy.
    let s = setup(
        |c| {
            c.max_concurrent_streams = 100;
            c.scenario.latency_ms = 10;
        },
        2000,
    )
    .await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let pusher = {
        let http = s.http.clone();
        tokio::spawn(async move { push_all(&http, n).await })
    };

    // At 10 ms: wait for a fifth of the run, noting the most streams in flight.
    let mut fast_peak = 0.0f64;
    let mut most_connections = 0.0f64;
    wait_metrics(
        &client,
        &s.http,
        Duration::from_secs(300),
        "a fifth delivered at 10 ms",
        |m| {
            fast_peak = fast_peak.max(metric(m, "herald_streams_in_flight"));
            most_connections = most_connections.max(metric(m, "herald_connections_open"));
            metric(m, "herald_delivered_total") >= (n / 5) as f64
        },
    )
    .await;
    assert!(fast_peak >= 20.0, "streams in flight at 10 ms: {fast_peak}");

    // Slower and slower, up to 8 s: well beyond the 2 s response timeout.
    for latency in [100, 1000, 8000] {
        s.sim.set_pace(PaceSettings {
            latency_ms: Some(latency),
            ..PaceSettings::default()
        });
        let since = Instant::now();
        wait_metrics(
            &client,
            &s.http,
            Duration::from_secs(60),
            "latency step",
            |m| {
                most_connections = most_connections.max(metric(m, "herald_connections_open"));
                since.elapsed() >= Duration::from_millis(1500)
            },
        )
        .await;
    }
    // The streams in flight (and the limit) fall far below the fast peak, and streams time out (8 s > 2 s).
    let slow = wait_metrics(
        &client,
        &s.http,
        Duration::from_secs(120),
        "streams in flight falling at 8000 ms",
        |m| {
            most_connections = most_connections.max(metric(m, "herald_connections_open"));
            metric(m, "herald_streams_in_flight") <= fast_peak / 4.0
                && metric(m, "herald_stream_limit") <= fast_peak / 4.0
                && metric(m, "herald_streams_cancelled_total") > 0.0
        },
    )
    .await;
    let slow_in_flight = metric(&slow, "herald_streams_in_flight");
    let slow_limit = metric(&slow, "herald_stream_limit");

    // Fast again: everything is delivered.
    s.sim.set_pace(PaceSettings {
        latency_ms: Some(10),
        ..PaceSettings::default()
    });
    pusher.await.unwrap();
    let done = wait_metrics(
        &client,
        &s.http,
        Duration::from_secs(600),
        "every notification delivered",
        |m| {
            most_connections = most_connections.max(metric(m, "herald_connections_open"));
            metric(m, "herald_delivered_total") >= n as f64
        },
    )
    .await;
    assert_eq!(metric(&done, "herald_delivered_total"), n as f64);
    assert!(
        most_connections <= CONNECTIONS as f64,
        "{most_connections} connections open"
    );

    // Every notification is in the record; a copy beyond the first only where herald cancelled that token's
    // stream after a timeout (the simulator had accepted it before the answer was due).
    let counts = record_counts(&s.sim);
    let cancelled = cancelled_streams_by_token(&s.dir.path().join("mainlog.ec"));
    let mut duplicates = 0;
    for i in 0..n {
        let t = token(i);
        let c = counts.get(&t).copied().unwrap_or(0);
        assert!(c >= 1, "token {i} was never delivered");
        if c > 1 {
            duplicates += c - 1;
            let explained = cancelled.get(&t).copied().unwrap_or(0);
            assert!(
                c - 1 <= explained,
                "token {i} recorded {c} times, {explained} cancelled streams logged"
            );
        }
    }
    assert_eq!(counts.len(), n, "tokens that were not sent were recorded");
    let cancelled_total = metric(&done, "herald_streams_cancelled_total");
    assert_eq!(
        cancelled.values().sum::<usize>() as f64,
        cancelled_total,
        "mainlog and /metrics disagree on cancelled streams"
    );
    let sim_cancelled = s.sim.stats().streams;
    assert!(
        duplicates as u64 <= sim_cancelled.cancelled,
        "{duplicates} duplicates, {sim_cancelled:?}"
    );
    eprintln!(
        "{n} notifications in {:?}: streams in flight {fast_peak} at 10 ms, {slow_in_flight} (limit {slow_limit}) \
         at 8000 ms; {cancelled_total} streams cancelled, {duplicates} duplicates",
        started.elapsed()
    );
    s.server.shutdown(Duration::from_secs(5)).await;
    s.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_answering_500_requests_per_second_gets_no_duplicates() {
    let n = count_from_env("HERALD_RATE_APNS_N", 20_000);
    let s = setup(|c| c.scenario.rate = 500, 5000).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let pusher = {
        let http = s.http.clone();
        tokio::spawn(async move { push_all(&http, n).await })
    };
    let mut most_in_flight = 0.0f64;
    let mut most_connections = 0.0f64;
    let done = wait_metrics(
        &client,
        &s.http,
        Duration::from_secs(n as u64 / 500 * 4 + 120),
        "every notification delivered at 500/s",
        |m| {
            most_in_flight = most_in_flight.max(metric(m, "herald_streams_in_flight"));
            most_connections = most_connections.max(metric(m, "herald_connections_open"));
            metric(m, "herald_delivered_total") >= n as f64
        },
    )
    .await;
    pusher.await.unwrap();
    assert_eq!(metric(&done, "herald_delivered_total"), n as f64);
    assert_eq!(metric(&done, "herald_streams_cancelled_total"), 0.0);
    let counts = record_counts(&s.sim);
    assert_eq!(counts.len(), n);
    let duplicated: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        duplicated.is_empty(),
        "{} tokens recorded more than once",
        duplicated.len()
    );
    assert_eq!(s.sim.record().len(), n);
    // At 500/s, 5 s of answers is 2,500 streams: herald keeps far fewer in flight, so none can time out.
    assert!(
        most_in_flight < 2500.0,
        "{most_in_flight} streams in flight"
    );
    assert!(most_connections <= CONNECTIONS as f64);
    eprintln!(
        "{n} notifications at 500/s in {:?}: at most {most_in_flight} streams in flight on {most_connections} \
         connections",
        started.elapsed()
    );
    s.server.shutdown(Duration::from_secs(5)).await;
    s.sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------
// One HTTP/2 connection, driven directly: when the response timeout starts, and what happens when it expires.

mod direct {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use herald_apns::client::http2::{self, Http2Options};
    use herald_apns::client::{ConnectionInfo, Job, OutcomeSink, PushRequest, PushResult};
    use herald_apns::push::PushType;
    use herald_apns::token_hex::DeviceToken;
    use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
    use tokio::sync::mpsc;

    use super::{TOPIC, support};

    struct Sink(mpsc::UnboundedSender<(u32, PushResult, Instant)>);

    impl OutcomeSink<u32> for Sink {
        fn report(&self, tag: u32, result: PushResult, _: &ConnectionInfo) {
            let _ = self.0.send((tag, result, Instant::now()));
        }
    }

    struct Conn {
        _dir: tempfile::TempDir,
        sim: SimHandle,
        jobs: herald_apns::client::JobSender<u32>,
        results: mpsc::UnboundedReceiver<(u32, PushResult, Instant)>,
    }

    async fn connect(response_timeout: Duration, sim_config: impl FnOnce(&mut SimConfig)) -> Conn {
        connect_starting_at(response_timeout, None, sim_config)
            .await
            .0
    }

    async fn connect_starting_at(
        response_timeout: Duration,
        start_limit: Option<usize>,
        sim_config: impl FnOnce(&mut SimConfig),
    ) -> (Conn, Arc<herald_apns::client::ConnectionState>) {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
        let mut config = SimConfig::from_pki(&pki.manifest).unwrap();
        sim_config(&mut config);
        let sim = Simulator::start(config).await.unwrap();
        let settings = support::token_auth_settings(&pki, &sim, "direct.example", TOPIC);
        let opts = Arc::new(Http2Options {
            endpoint: settings.endpoint.clone(),
            tls: settings.tls.clone(),
            auth: settings.auth.clone(),
            connect_timeout: Duration::from_secs(5),
            response_timeout,
            idle_timeout: None,
            keepalive: Duration::from_secs(60),
        });
        let (jobs, rx) = async_channel::unbounded();
        let (tx, results) = mpsc::unbounded_channel();
        let state = http2::open_starting_at(opts, 1, rx, Arc::new(Sink(tx)), start_limit)
            .await
            .unwrap();
        let conn = Conn {
            _dir: dir,
            sim,
            jobs,
            results,
        };
        (conn, state)
    }

    /// A connection opened beside saturated ones starts its adaptive limit where they are, not at 20: with
    /// answers held back 2 s, 200 requests handed over at once are all in flight before the first answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_started_at_a_proven_limit_opens_that_many_streams_at_once() {
        for (start, expected) in [
            (None, herald_apns::client::limit::INITIAL_LIMIT),
            (Some(200), 200),
        ] {
            let (mut c, state) = connect_starting_at(Duration::from_secs(10), start, |s| {
                s.max_concurrent_streams = 1000;
                s.scenario.latency_ms = 2000;
            })
            .await;
            for i in 0..300 {
                c.jobs.send(job(i)).await.unwrap();
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while state.in_flight() < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(state.in_flight(), expected, "start {start:?}");
            assert!(c.results.try_recv().is_err(), "no answer yet");
            c.jobs.close();
        }
    }

    /// Slow start doubles the streams in flight per round trip even when a round's answers come back together
    /// and are handled in one turn: the 20 first streams' answers open 40 streams, not the ~27 they opened when
    /// each answer was judged by the streams left after the ones before it. Answers take 2.5 s, so that a loaded
    /// machine cannot bring the next round's answers in before the check.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_that_arrive_together_each_grow_a_ramping_limit() {
        let initial = herald_apns::client::limit::INITIAL_LIMIT;
        let (mut c, state) = connect_starting_at(Duration::from_secs(30), None, |s| {
            s.max_concurrent_streams = 1000;
            s.scenario.latency_ms = 2500;
        })
        .await;
        // A first request authenticates the connection (one stream until then), so that the next round of
        // `initial` streams goes out at once and its answers come back together.
        c.jobs.send(job(0)).await.unwrap();
        let (_, first, _) = c.results.recv().await.unwrap();
        assert!(matches!(first, PushResult::Delivered { .. }), "{first:?}");
        assert_eq!(state.limit(), initial, "one stream in use proves nothing");
        for i in 1..500 {
            c.jobs.send(job(i)).await.unwrap();
        }
        for _ in 0..initial {
            let (tag, result, _) = c.results.recv().await.unwrap();
            assert!(
                matches!(result, PushResult::Delivered { .. }),
                "{tag}: {result:?}"
            );
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while state.in_flight() < 2 * initial && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(state.in_flight(), 2 * initial);
        assert_eq!(state.limit(), 2 * initial);
        assert!(
            c.results.try_recv().is_err(),
            "the second round is not answered yet"
        );
        c.jobs.close();
    }

    /// After a rejected notification APNs allows one stream until the next accepted one ("choppy" streams,
    /// docs/apns-protocol.md#http2-connection). The streams a connection earned with fast answers are back as soon
    /// as APNs allows them again: a rejection costs a moment of one stream, not a ramp up from one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rejection_costs_a_moment_of_one_stream_not_the_earned_limit() {
        let bad = super::token(9999);
        let (mut c, state) = connect_starting_at(Duration::from_secs(10), Some(200), |s| {
            s.max_concurrent_streams = 1000;
            s.choppy_streams = true;
            // Long enough that a loaded machine's delays do not read as a slower server.
            s.scenario.latency_ms = 200;
            s.scenario.bad = vec![bad.clone()];
        })
        .await;
        let mut sent = 0u32;
        let mut send = |c: &mut Conn, n: u32| {
            for _ in 0..n {
                sent += 1;
                c.jobs.try_send(job(sent)).unwrap();
            }
        };
        send(&mut c, 400);
        for _ in 0..400 {
            c.results.recv().await.unwrap();
        }
        let earned = state.limit();
        assert!(earned >= 200, "{earned}");
        // The rejection, then a few windows of answers one at a time while APNs allows one stream.
        c.jobs
            .try_send(Job {
                request: PushRequest {
                    token: DeviceToken::from_hex(&bad).unwrap(),
                    ..job(0).request
                },
                tag: 0,
            })
            .unwrap();
        let (_, rejected, _) = c.results.recv().await.unwrap();
        assert!(matches!(rejected, PushResult::Rejected(_)), "{rejected:?}");
        send(&mut c, 20);
        for _ in 0..20 {
            c.results.recv().await.unwrap();
        }
        // APNs allows its 1000 streams again after the first accepted one: the earned limit applies at once. The
        // rejection itself, answered at once while deliveries take 200 ms, says nothing about how fast deliveries
        // are and must not make them look queued (the limit would halve per tenth of a second).
        let deadline = Instant::now() + Duration::from_secs(5);
        while state.capacity() < 1000 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(state.capacity(), 1000);
        assert!(
            state.limit() >= earned,
            "limit {} after the rejection, {earned} before",
            state.limit()
        );
        c.jobs.close();
    }

    fn job(i: u32) -> Job<u32> {
        Job {
            request: PushRequest {
                token: DeviceToken::from_hex(&super::token(i as usize)).unwrap(),
                topic: Some(Arc::from(TOPIC)),
                push_type: Some(PushType::Alert),
                priority: None,
                expiration: None,
                collapse_id: None,
                apns_id: None,
                payload: bytes::Bytes::from_static(br#"{"aps":{"alert":"direct"}}"#),
            },
            tag: i,
        }
    }

    /// The timeout counts from when a request was written, not from when it was queued behind the server's
    /// stream limit: with one stream allowed and 1,000 ms per answer, the third of three requests is answered about
    /// 3,000 ms after it was handed over, and none of them times out at 2,500 ms (each answer has 1.5 s to spare on
    /// a loaded machine).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_response_timeout_counts_from_the_write_not_from_the_queue() {
        let mut c = connect(Duration::from_millis(2500), |s| {
            s.max_concurrent_streams = 1;
            s.scenario.latency_ms = 1000;
        })
        .await;
        // A first request authenticates the connection (token connections start with one stream anyway).
        c.jobs.send(job(0)).await.unwrap();
        let (_, first, _) = c.results.recv().await.unwrap();
        assert!(matches!(first, PushResult::Delivered { .. }), "{first:?}");
        let handed = Instant::now();
        for i in 1..=3 {
            c.jobs.send(job(i)).await.unwrap();
        }
        let mut last = handed;
        for _ in 1..=3 {
            let (tag, result, at) = c.results.recv().await.unwrap();
            assert!(
                matches!(result, PushResult::Delivered { .. }),
                "request {tag}: {result:?}"
            );
            last = last.max(at);
        }
        // Longer than the timeout: counted from the hand-over, the third would have timed out.
        assert!(
            last - handed >= Duration::from_millis(2500),
            "three answers of 1,000 ms one at a time took {:?}",
            last - handed
        );
        assert_eq!(c.sim.stats().streams.cancelled, 0);
        assert_eq!(c.sim.stats().accepted.total, 4);
    }

    /// A request without an answer within the timeout is reported only after its stream was cancelled: the
    /// simulator sees the reset (its answer is then never sent), and the report names the stream.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_timed_out_stream_is_cancelled_before_it_is_reported() {
        let mut c = connect(Duration::from_millis(300), |s| {
            s.scenario.latency_ms = 3000;
        })
        .await;
        c.jobs.send(job(7)).await.unwrap();
        let (tag, result, at) = c.results.recv().await.unwrap();
        assert_eq!(tag, 7);
        let PushResult::TimedOut {
            cancelled: Some(cancelled),
        } = result
        else {
            panic!("{result:?}");
        };
        assert_eq!(cancelled.connection, 1);
        assert_eq!(cancelled.stream % 2, 1, "client streams are odd");
        // The RST_STREAM left with the report: the simulator sees it before its 3 s answer was due.
        let deadline = at + Duration::from_millis(2500);
        while c.sim.stats().streams.cancelled == 0 {
            assert!(
                Instant::now() < deadline,
                "the simulator never saw the reset"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // It had accepted the notification before the answer was due: the case a retry can duplicate.
        assert_eq!(c.sim.stats().accepted.total, 1);
    }
}
