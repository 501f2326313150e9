//! Outcome webhooks against `herald serve` as a process, the APNs simulator and a receiver in the test: outcomes arrive
//! signed (HMAC-SHA256 over `TIMESTAMP.BODY`), each once to a receiver that answers promptly (delivery is at least
//! once); a receiver that fails its first requests still gets everything; a dead receiver keeps a bounded backlog while
//! delivery goes on; outcomes older than `outcome_webhook_max_age` are dropped and counted; a `kill -9` with outcomes
//! pending loses none of them (docs/api.md "Outcome webhooks").

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use support::daemon::Daemon;
use support::{free_port, token_auth_options};

const TOPIC: &str = "com.example.hooks";
const SECRET: &str = "s3cret-for-tests";
const WAIT: Duration = Duration::from_secs(60);

/// What the receiver got, and how it answers.
#[derive(Default)]
struct Receiver {
    /// Every outcome event taken (answered 2xx), with a verified signature.
    events: Mutex<Vec<serde_json::Value>>,
    /// Requests still to fail with 500.
    fail_first: AtomicUsize,
    /// Answer 503 to everything.
    down: AtomicBool,
    bad_signatures: AtomicUsize,
}

async fn receive(
    State(r): State<Arc<Receiver>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    if r.down.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    if r.fail_first
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    let ts = headers["herald-timestamp"].to_str().unwrap();
    let sig = headers["herald-signature"].to_str().unwrap();
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if sig != format!("v1={hex}") {
        r.bad_signatures.fetch_add(1, Ordering::SeqCst);
        return StatusCode::UNAUTHORIZED;
    }
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    r.events
        .lock()
        .unwrap()
        .extend(v["outcomes"].as_array().unwrap().iter().cloned());
    StatusCode::NO_CONTENT
}

async fn start_receiver(receiver: Arc<Receiver>) -> String {
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

fn write_config(dir: &Path, pki: &Pki, h2_port: u16, hooks: &[(&str, &str, u64)]) -> PathBuf {
    let path = dir.join("herald.conf");
    let mut text = format!(
        r#"
spool_dir = "{spool}"
http_listener {{ listen "127.0.0.1:0" {{ }} }}
esmtp_listener {{ listen "127.0.0.1:0" {{ }} }}
"#,
        spool = dir.join("spool").display(),
    );
    for (domain, url, backlog) in hooks {
        let hook = if url.is_empty() {
            String::new()
        } else {
            format!(
                "  outcome_webhook_url = \"{url}\"\n  outcome_webhook_secret = \"{SECRET}\"\n  outcome_webhook_backlog = {backlog}\n"
            )
        };
        text.push_str(&format!(
            "domain \"{domain}\" {{\n{credentials}  retry_interval = 1\n  max_retry_interval = 1\n{hook}}}\n",
            credentials = token_auth_options(pki, h2_port, TOPIC),
        ));
    }
    std::fs::write(&path, text).unwrap();
    path
}

async fn start_sim(pki: &Pki, port: u16, unregistered: &[String]) -> SimHandle {
    let mut config = SimConfig::from_pki(&pki.manifest).unwrap();
    config.h2_port = port;
    config
        .scenario
        .unregistered
        .extend(unregistered.iter().cloned());
    Simulator::start(config).await.unwrap()
}

fn token(i: usize) -> String {
    format!("{:064x}", 0x400c_0000_0000u64 + i as u64)
}

async fn push(http: &str, domain: &str, tokens: &[String]) -> Vec<String> {
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/push"))
        .json(&serde_json::json!({"domain": domain, "tokens": tokens, "payload": {"aps": {"alert": "hook"}}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap_or_else(|| panic!("{v}")).to_owned())
        .collect()
}

/// Waits until the receiver holds `n` events.
async fn wait_events(r: &Receiver, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let events = r.events.lock().unwrap().clone();
        if events.len() >= n {
            return events;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} outcomes arrived",
            events.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(http: &str, line_start: &str) -> Option<u64> {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_arrive_signed_once_each_even_when_the_first_attempts_fail() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = free_port();
    let gone = token(0);
    let sim = start_sim(&pki, port, std::slice::from_ref(&gone)).await;
    let receiver = Arc::new(Receiver::default());
    receiver.fail_first.store(3, Ordering::SeqCst);
    let url = start_receiver(receiver.clone()).await;
    let config = write_config(dir.path(), &pki, port, &[("hooks.example", &url, 100_000)]);
    let daemon = Daemon::start(&config);

    let tokens: Vec<String> = (0..40).map(token).collect();
    let mut ids = Vec::new();
    for chunk in tokens.chunks(10) {
        ids.extend(push(&daemon.http, "hooks.example", chunk).await);
    }
    let events = wait_events(&receiver, ids.len()).await;
    assert_eq!(receiver.bad_signatures.load(Ordering::SeqCst), 0);
    assert_eq!(
        receiver.fail_first.load(Ordering::SeqCst),
        0,
        "the failing attempts happened"
    );
    let mut seen: HashMap<String, serde_json::Value> = HashMap::new();
    for e in events {
        let id = e["id"].as_str().unwrap().to_owned();
        assert!(seen.insert(id.clone(), e).is_none(), "{id} arrived twice");
    }
    for (id, t) in ids.iter().zip(&tokens) {
        let e = &seen[id];
        assert_eq!(e["token"], t.as_str());
        assert_eq!(e["domain"], "hooks.example");
        if *t == gone {
            assert_eq!(e["outcome"], "invalid_token", "{e}");
            assert_eq!(e["reason"], "Unregistered", "{e}");
            // APNs' 410 carries the time since when the token is invalid (apns.md: the timestamp of a 410).
            assert!(
                e["unregistered_at_ms"].as_u64().is_some_and(|t| t > 0),
                "{e}"
            );
        } else {
            assert_eq!(e["outcome"], "delivered", "{e}");
            // The simulator is the development environment, whose answers carry apns-unique-id.
            assert_eq!(e["apns_unique_id"].as_str().map(str::len), Some(36), "{e}");
        }
    }
    // Nothing more arrives after a later outcome (once each: this receiver answers at once).
    let later = push(&daemon.http, "hooks.example", &[token(77)]).await;
    let events = wait_events(&receiver, ids.len() + 1).await;
    assert_eq!(events.len(), ids.len() + 1);
    assert_eq!(events.last().unwrap()["id"], later[0].as_str());
    daemon.terminate();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_receiver_keeps_a_bounded_backlog_and_delivery_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = free_port();
    let sim = start_sim(&pki, port, &[]).await;
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let config = write_config(
        dir.path(),
        &pki,
        port,
        &[("dead.example", &dead, 50), ("plain.example", "", 0)],
    );
    let daemon = Daemon::start(&config);
    // The same load through a domain with a dead receiver and one without a webhook, in one run.
    let n = 400;
    for i in 0..(n / 100) {
        let with: Vec<String> = (i * 100..(i + 1) * 100).map(token).collect();
        let without: Vec<String> = (10_000 + i * 100..10_000 + (i + 1) * 100)
            .map(token)
            .collect();
        push(&daemon.http, "dead.example", &with).await;
        push(&daemon.http, "plain.example", &without).await;
    }
    assert_eq!(sim.wait_for_records(2 * n as u64, WAIT).await, 2 * n as u64);
    let deadline = Instant::now() + WAIT;
    loop {
        let backlog = metric(
            &daemon.http,
            "herald_webhook_backlog{domain=\"dead.example\"}",
        )
        .await;
        let dropped = metric(
            &daemon.http,
            "herald_webhook_dropped_total{domain=\"dead.example\"}",
        )
        .await;
        if let (Some(b), Some(d)) = (backlog, dropped) {
            assert!(b <= 50, "backlog {b} beyond its bound");
            if b + d == n as u64 {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "backlog {backlog:?}, dropped {dropped:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.terminate();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_older_than_max_age_are_dropped_and_counted_not_sent() {
    let (_dir, sim, receiver, config) = restart_setup().await;
    // docs/api.md "Outcome webhooks": retried for up to outcome_webhook_max_age seconds after the outcome.
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        "outcome_webhook_backlog = 100000\n",
        "outcome_webhook_backlog = 100000\n  outcome_webhook_max_age = 3\n",
    );
    assert!(text.contains("outcome_webhook_max_age = 3"));
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config);
    let backlog = || {
        metric(
            &daemon.http,
            "herald_webhook_backlog{domain=\"hooks.example\"}",
        )
    };

    let stale = push(
        &daemon.http,
        "hooks.example",
        &(0..10).map(token).collect::<Vec<_>>(),
    )
    .await;
    // While the receiver is down, the sender's retries find them older than three seconds, and drop them. (Three,
    // not one: compared in whole seconds, a fresh outcome sent a second or two late must not count as stale.)
    let dropped = || {
        metric(
            &daemon.http,
            "herald_webhook_dropped_total{domain=\"hooks.example\"}",
        )
    };
    let deadline = Instant::now() + WAIT;
    while dropped().await != Some(10) || backlog().await != Some(0) {
        assert!(
            Instant::now() < deadline,
            "dropped {:?}, backlog {:?}",
            dropped().await,
            backlog().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The receiver comes back: later outcomes are sent as they come, and only they.
    receiver.down.store(false, Ordering::SeqCst);
    let fresh = push(
        &daemon.http,
        "hooks.example",
        &(10..15).map(token).collect::<Vec<_>>(),
    )
    .await;
    let events = wait_events(&receiver, fresh.len()).await;
    let got: Vec<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(got, fresh.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(stale.iter().all(|id| !got.contains(&id.as_str())));
    assert_eq!(receiver.bad_signatures.load(Ordering::SeqCst), 0);
    assert_eq!(dropped().await, Some(10));
    daemon.terminate();
    sim.shutdown().await;
}

/// For the restart tests: a simulator, a receiver that is down, and a configuration with its webhook on
/// hooks.example (the directory holds the configuration and the spool).
async fn restart_setup() -> (tempfile::TempDir, SimHandle, Arc<Receiver>, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = free_port();
    let sim = start_sim(&pki, port, &[]).await;
    let receiver = Arc::new(Receiver::default());
    receiver.down.store(true, Ordering::SeqCst);
    let url = start_receiver(receiver.clone()).await;
    let config = write_config(dir.path(), &pki, port, &[("hooks.example", &url, 100_000)]);
    (dir, sim, receiver, config)
}

/// Waits until the receiver holds as many events as `ids`, then checks that each id is among them.
async fn assert_every_id_arrived(receiver: &Receiver, ids: &[String]) {
    let events = wait_events(receiver, ids.len()).await;
    let got: std::collections::HashSet<&str> =
        events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    for id in ids {
        assert!(got.contains(id.as_str()), "{id} never arrived");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_pending_at_a_kill_9_arrive_after_the_restart() {
    let (_dir, sim, receiver, config) = restart_setup().await;
    let daemon = Daemon::start(&config);
    let tokens: Vec<String> = (0..25).map(token).collect();
    let ids = push(&daemon.http, "hooks.example", &tokens).await;
    let deadline = Instant::now() + WAIT;
    while metric(
        &daemon.http,
        "herald_webhook_backlog{domain=\"hooks.example\"}",
    )
    .await
        != Some(25)
    {
        assert!(
            Instant::now() < deadline,
            "the outcomes never queued for the webhook"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.kill9();
    receiver.down.store(false, Ordering::SeqCst);
    let daemon = Daemon::start(&config);
    assert_every_id_arrived(&receiver, &ids).await;
    daemon.terminate();
    sim.shutdown().await;
}

/// A graceful stop right after the last deliveries (no wait for the webhook queue): their outcomes are stored on
/// the way out, so after the restart every one reaches the receiver and every status is final.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outcomes_of_the_last_deliveries_before_a_graceful_stop_survive_it() {
    let (_dir, sim, receiver, config) = restart_setup().await;
    let daemon = Daemon::start(&config);
    let tokens: Vec<String> = (0..200).map(token).collect();
    let ids = push(&daemon.http, "hooks.example", &tokens).await;
    assert_eq!(
        sim.wait_for_accepted(ids.len() as u64, WAIT).await,
        ids.len() as u64
    );
    daemon.terminate();
    receiver.down.store(false, Ordering::SeqCst);
    let daemon = Daemon::start(&config);
    assert_every_id_arrived(&receiver, &ids).await;
    for id in &ids {
        let r = reqwest::get(format!("http://{}/api/v1/notifications/{id}", daemon.http))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{id}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["state"], "delivered", "{v}");
    }
    daemon.terminate();
    sim.shutdown().await;
}

/// A receiver that redirects is not taken as having the outcomes: following a 302 would turn the POST into a GET
/// without them, whose 2xx would count the batch delivered (docs/api.md: only a 2xx to the POST takes a batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_not_taken_for_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = free_port();
    let _sim = start_sim(&pki, port, &[]).await;
    let gets = Arc::new(AtomicUsize::new(0));
    let counted = gets.clone();
    let app = axum::Router::new()
        .route(
            "/moved",
            post(|| async { (StatusCode::FOUND, [("location", "/elsewhere")]) }),
        )
        .route(
            "/elsewhere",
            axum::routing::get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async { StatusCode::OK }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let url = format!("http://{addr}/moved");
    let config = write_config(dir.path(), &pki, port, &[("hooks.example", &url, 100_000)]);
    let daemon = Daemon::start(&config);
    push(&daemon.http, "hooks.example", &[token(1), token(2)]).await;
    let deadline = Instant::now() + WAIT;
    while metric(
        &daemon.http,
        "herald_webhook_failures_total{domain=\"hooks.example\"}",
    )
    .await
    .unwrap_or(0)
        == 0
    {
        assert!(Instant::now() < deadline, "the webhook was never attempted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(gets.load(Ordering::SeqCst), 0, "the redirect was followed");
    assert_eq!(
        metric(
            &daemon.http,
            "herald_webhook_delivered_total{domain=\"hooks.example\"}"
        )
        .await,
        Some(0)
    );
    daemon.terminate();
}

/// `herald serve` at the default log level (no `RUST_LOG`), its standard error into `err`.
fn start_logging_to(config: &Path, err: &Path) -> Daemon {
    use std::io::{BufRead, BufReader};
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "-c"])
        .arg(config)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(err).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
    Daemon {
        child,
        http: v["http"][0].as_str().unwrap().to_owned(),
        esmtp: v["esmtp"][0].as_str().unwrap().to_owned(),
    }
}

/// The lines of the log at `path` that contain `what`, once there are `n` of them at least.
async fn wait_log_lines(path: &Path, what: &str, n: usize) -> Vec<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        let log = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains(what))
            .map(str::to_owned)
            .collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "no {n} lines with {what:?} in the log: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A receiver that cannot be reached is named in a warning at the default log level, with the cause (`Connection
/// refused`) and its host and port, the URL's password and query masked: one line for its first failure, not one per
/// retry, and one line when it takes outcomes again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_cannot_be_reached_is_logged_with_its_cause() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = free_port();
    let sim = start_sim(&pki, port, &[]).await;
    // Nothing listens there until the receiver starts below.
    let hook_port = free_port();
    let url = format!("http://hook:pw-secret@127.0.0.1:{hook_port}/hook?token=q-secret");
    let config = write_config(dir.path(), &pki, port, &[("hooks.example", &url, 100_000)]);
    let err = dir.path().join("stderr.log");
    let daemon = start_logging_to(&config, &err);
    let ids = push(&daemon.http, "hooks.example", &[token(1)]).await;
    let deadline = Instant::now() + WAIT;
    while metric(
        &daemon.http,
        "herald_webhook_failures_total{domain=\"hooks.example\"}",
    )
    .await
    .unwrap_or(0)
        < 3
    {
        assert!(Instant::now() < deadline, "the webhook did not fail thrice");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed = wait_log_lines(&err, "outcome webhook", 1).await;
    assert_eq!(failed.len(), 1, "a line per failure: {failed:?}");
    let line = &failed[0];
    assert!(line.contains("WARN"), "{line}");
    assert!(
        line.contains(&format!(
            "http://hook:********@127.0.0.1:{hook_port}/hook?********"
        )),
        "{line}"
    );
    assert!(line.to_lowercase().contains("connection refused"), "{line}");
    assert!(!line.contains("secret"), "{line}");

    let receiver = Arc::new(Receiver::default());
    let app = axum::Router::new()
        .route("/hook", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", hook_port))
        .await
        .unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    assert_every_id_arrived(&receiver, &ids).await;
    let recovered = wait_log_lines(&err, "takes outcomes again", 1).await;
    assert!(!recovered[0].contains("secret"), "{recovered:?}");
    daemon.terminate();
    sim.shutdown().await;
}

/// A graceful stop lets the webhook batch in flight get its answer within the grace period, and records it: a
/// receiver that takes its time (4 s, within the 10 s request timeout) does not get the same batch again after the
/// restart (docs/api.md "Outcome webhooks": without a crash, a late answer or a broken connection, each outcome
/// arrives once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_in_flight_at_a_graceful_stop_is_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = free_port();
    let sim = start_sim(&pki, port, &[]).await;
    // Every id the receiver took, once per time it took it; its first request is answered after 4 s.
    let took: Arc<Mutex<Vec<String>>> = Arc::default();
    let requests = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/hook",
        post({
            let (took, requests) = (took.clone(), requests.clone());
            move |body: axum::body::Bytes| {
                let (took, requests) = (took.clone(), requests.clone());
                async move {
                    if requests.fetch_add(1, Ordering::SeqCst) == 0 {
                        tokio::time::sleep(Duration::from_secs(4)).await;
                    }
                    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    let mut took = took.lock().unwrap();
                    for e in v["outcomes"].as_array().unwrap() {
                        took.push(e["id"].as_str().unwrap().to_owned());
                    }
                    StatusCode::NO_CONTENT
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = write_config(dir.path(), &pki, port, &[("hooks.example", &url, 100_000)]);

    let daemon = Daemon::start(&config);
    let first = push(&daemon.http, "hooks.example", &[token(1)]).await;
    let deadline = Instant::now() + WAIT;
    while requests.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the webhook was never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.terminate();
    assert_eq!(
        *took.lock().unwrap(),
        first,
        "the answer came after the stop"
    );

    // After the restart, a later outcome arrives; the first one is not sent again before it.
    let daemon = Daemon::start(&config);
    let later = push(&daemon.http, "hooks.example", &[token(2)]).await;
    let deadline = Instant::now() + WAIT;
    while !took.lock().unwrap().contains(&later[0]) {
        assert!(Instant::now() < deadline, "the later outcome never arrived");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(*took.lock().unwrap(), [first, later].concat());
    daemon.terminate();
    sim.shutdown().await;
}
