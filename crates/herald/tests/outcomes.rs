//! Outcomes for the apps that send, against `herald serve` as a process and the APNs simulator: a notification's
//! status through every state (queued with its transient reason, delivered, failed with an invalid token), after a
//! restart and after `outcome_retention`; `Idempotency-Key` across a `kill -9` (docs/api.md "Status" and
//! "Idempotent requests").

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use support::daemon::Daemon;
use support::{free_port, token_auth_options};

const TOPIC: &str = "com.example.outcomes";
const WAIT: Duration = Duration::from_secs(60);

fn write_config(dir: &Path, pki: &Pki, h2_port: u16, retention: u64) -> PathBuf {
    let path = dir.join("herald.conf");
    let text = format!(
        r#"
spool_dir = "{spool}"
outcome_retention = {retention}
http_listener {{ listen "127.0.0.1:0" {{ }} }}
esmtp_listener {{ listen "127.0.0.1:0" {{ }} }}
domain "outcomes.example" {{
{credentials}  retry_interval = 1
  max_retry_interval = 1
  mx_failures_to_delay = 1
}}
"#,
        spool = dir.join("spool").display(),
        credentials = token_auth_options(pki, h2_port, TOPIC),
    );
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
    format!("{:064x}", 0x0c0e_0000_0000u64 + i as u64)
}

/// Posts `tokens`; returns (status, answer, whether it was replayed).
async fn push(
    http: &str,
    tokens: &[String],
    key: Option<&str>,
    alert: &str,
) -> (u16, serde_json::Value, bool) {
    let body = serde_json::json!({
        "domain": "outcomes.example",
        "tokens": tokens,
        "payload": {"aps": {"alert": alert}},
    });
    let mut request = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/push"))
        .json(&body);
    if let Some(k) = key {
        request = request.header("Idempotency-Key", k);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let replayed = r.headers().get("idempotent-replayed").is_some();
    (status, r.json().await.unwrap(), replayed)
}

/// Posts `tokens` to a daemon that may be killed meanwhile: their ids if they were acknowledged, `None` if the
/// request failed.
async fn push_quietly(http: &str, tokens: &[String]) -> Option<Vec<String>> {
    let body = serde_json::json!({
        "domain": "outcomes.example",
        "tokens": tokens,
        "payload": {"aps": {"alert": "more"}},
    });
    let r = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/push"))
        .json(&body)
        .send()
        .await
        .ok()?;
    if r.status().as_u16() != 202 {
        return None;
    }
    Some(ids(&r.json().await.ok()?))
}

fn ids(answer: &serde_json::Value) -> Vec<String> {
    answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn status(http: &str, id: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("http://{http}/api/v1/notifications/{id}"))
        .await
        .unwrap();
    let code = r.status().as_u16();
    (code, r.json().await.unwrap())
}

/// Polls the status of `id` until `done` holds, failing at the deadline.
async fn wait_status(
    http: &str,
    id: &str,
    what: &str,
    done: impl Fn(u16, &serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, v) = status(http, id).await;
        if done(code, &v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never {what}: last {code} {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_goes_through_every_state_survives_a_restart_and_expires() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &pki, port, 3600);
    // APNs is down at first: the notifications stay queued with a transient reason and a next attempt.
    let daemon = Daemon::start(&config);
    let good = token(1);
    let gone = token(2);
    let (code, answer, _) = push(&daemon.http, &[good.clone(), gone.clone()], None, "states").await;
    assert_eq!(code, 202, "{answer}");
    let ids = ids(&answer);
    let queued = wait_status(&daemon.http, &ids[0], "queued after a failure", |c, v| {
        c == 200
            && v["state"] == "queued"
            && v["attempts"].as_u64() >= Some(1)
            && v["next_attempt_at"].is_u64()
    })
    .await;
    assert_eq!(queued["domain"], "outcomes.example");
    assert_eq!(queued["token"], good.as_str());
    assert!(
        queued["accepted_at"].as_u64().unwrap() > 1_700_000_000,
        "{queued}"
    );
    assert!(
        queued["last_reason"]
            .as_str()
            .unwrap()
            .contains("connection"),
        "{queued}"
    );
    assert!(queued["next_attempt_at"].as_u64().is_some(), "{queued}");

    // APNs comes up: one is delivered, the other fails for an unregistered token.
    let sim = start_sim(&pki, port, std::slice::from_ref(&gone)).await;
    let delivered = wait_status(&daemon.http, &ids[0], "delivered", |c, v| {
        c == 200 && v["state"] == "delivered"
    })
    .await;
    assert!(delivered["finished_at"].as_u64().is_some(), "{delivered}");
    assert!(
        delivered["apns_id"].as_str().is_some_and(|s| s.len() == 36),
        "{delivered}"
    );
    // The simulator runs as the development environment, which adds `apns-unique-id` to every 200.
    let unique = delivered["apns_unique_id"].as_str().unwrap_or_default();
    assert!(
        unique.len() == 36 && unique != delivered["apns_id"],
        "{delivered}"
    );
    let failed = wait_status(&daemon.http, &ids[1], "failed", |c, v| {
        c == 200 && v["state"] == "failed"
    })
    .await;
    assert_eq!(failed["reason"], "Unregistered", "{failed}");
    assert_eq!(failed["status"], 410, "{failed}");
    assert_eq!(failed["invalid_token"], true, "{failed}");
    // APNs' 410 says since when the token is invalid (Unix ms, in the past).
    let since = failed["unregistered_at_ms"].as_u64().unwrap_or(0);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    assert!(since > 1_500_000_000_000 && since <= now_ms, "{failed}");

    // An id herald never issued.
    let mut unknown = ids[0].clone();
    unknown.replace_range(12.., "FFFFFFFF");
    let (code, v) = status(&daemon.http, &unknown).await;
    assert_eq!((code, v["found"].as_str()), (404, Some("unknown")), "{v}");
    let (code, v) = status(&daemon.http, "not-an-id").await;
    assert_eq!(code, 400, "{v}");

    // The batch form answers each id.
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/api/v1/notifications/query", daemon.http))
        .json(&serde_json::json!({"ids": [ids[0], ids[1], unknown]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["notifications"][0]["state"], "delivered", "{v}");
    assert_eq!(v["notifications"][1]["state"], "failed", "{v}");
    assert_eq!(v["not_found"][0]["found"], "unknown", "{v}");

    // Final outcomes survive a crash of the process.
    daemon.kill9();
    let daemon = Daemon::start(&config);
    let (code, after) = status(&daemon.http, &ids[0]).await;
    assert_eq!((code, &after), (200, &delivered));
    let (code, after) = status(&daemon.http, &ids[1]).await;
    assert_eq!((code, &after), (200, &failed));
    daemon.terminate();

    // With a retention of one second they expire, and the answer says so.
    let config = write_config(dir.path(), &pki, port, 1);
    let daemon = Daemon::start(&config);
    let v = wait_status(&daemon.http, &ids[0], "expired", |c, v| {
        c == 404 && v["found"] == "expired"
    })
    .await;
    assert!(
        v["error"].as_str().unwrap().contains("outcome_retention"),
        "{v}"
    );
    daemon.terminate();
    sim.shutdown().await;
}

/// A notification waiting for its retry shows, after a restart (graceful or `kill -9`), the attempts and the next
/// attempt time it showed before: the spool keeps both (docs/api.md "Status of a notification").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_notification_keeps_its_next_attempt_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &pki, port, 3600);
    // An hour to the retry: none happens during the test, so what the status shows after a restart is what the
    // spool kept.
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "retry_interval = 1\n  max_retry_interval = 1",
        "retry_interval = 3600\n  max_retry_interval = 3600\n  max_retries = 10",
    );
    assert!(text.contains("retry_interval = 3600"), "{text}");
    std::fs::write(&config, text).unwrap();
    let mut sim_config = SimConfig::from_pki(&pki.manifest).unwrap();
    sim_config.h2_port = port;
    sim_config
        .scenario
        .errors
        .insert("ServiceUnavailable".into(), 1.0);
    let sim = Simulator::start(sim_config).await.unwrap();

    let daemon = Daemon::start(&config);
    let (code, answer, _) = push(&daemon.http, &[token(60)], None, "later").await;
    assert_eq!(code, 202, "{answer}");
    let id = ids(&answer).remove(0);
    let waiting = |c: u16, v: &serde_json::Value| {
        c == 200
            && v["state"] == "queued"
            && v["attempts"].as_u64() >= Some(1)
            && v["next_attempt_at"].is_u64()
    };
    let before = wait_status(&daemon.http, &id, "queued for its retry", waiting).await;
    assert!(
        before["last_reason"]
            .as_str()
            .is_some_and(|r| r.contains("ServiceUnavailable")),
        "{before}"
    );
    let due = before["next_attempt_at"].as_u64().unwrap();
    let same = |after: &serde_json::Value, how: &str| {
        assert_eq!(after["attempts"], before["attempts"], "{how}: {after}");
        // Restored as a delay from now: the second it falls in may move by one.
        let at = after["next_attempt_at"].as_u64().unwrap();
        assert!(at.abs_diff(due) <= 1, "{how}: due at {due}, now {after}");
    };

    daemon.terminate();
    let daemon = Daemon::start(&config);
    let after = wait_status(&daemon.http, &id, "restored after SIGTERM", waiting).await;
    same(&after, "after SIGTERM");

    daemon.kill9();
    let daemon = Daemon::start(&config);
    let after = wait_status(&daemon.http, &id, "restored after kill -9", waiting).await;
    same(&after, "after kill -9");
    daemon.terminate();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_request_after_kill_9_sends_each_notification_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &pki, port, 3600);
    // APNs is down until after the crash, so the simulator's record counts every send.
    let daemon = Daemon::start(&config);
    let tokens: Vec<String> = (10..15).map(token).collect();
    let (code, first, replayed) = push(&daemon.http, &tokens, Some("order-17"), "once").await;
    assert_eq!(code, 202, "{first}");
    assert!(!replayed);
    daemon.kill9();

    let daemon = Daemon::start(&config);
    let sim = start_sim(&pki, port, &[]).await;
    // The client retries after the crash: the first answer again, nothing queued.
    let (code, again, replayed) = push(&daemon.http, &tokens, Some("order-17"), "once").await;
    assert_eq!((code, &again), (202, &first));
    assert!(replayed);
    // The same key with another body is refused, naming the key.
    let (code, conflict, _) = push(&daemon.http, &tokens, Some("order-17"), "other").await;
    assert_eq!(code, 409, "{conflict}");
    assert!(
        conflict["error"].as_str().unwrap().contains("order-17"),
        "{conflict}"
    );

    // Everything acknowledged arrives; then a later notification, so that a duplicate would have arrived too.
    sim.wait_for_records(tokens.len() as u64, WAIT).await;
    let (code, later, _) = push(&daemon.http, &[token(99)], Some("order-18"), "later").await;
    assert_eq!(code, 202, "{later}");
    wait_status(&daemon.http, &ids(&later)[0], "delivered", |c, v| {
        c == 200 && v["state"] == "delivered"
    })
    .await;
    for id in ids(&first) {
        wait_status(&daemon.http, &id, "delivered", |c, v| {
            c == 200 && v["state"] == "delivered"
        })
        .await;
    }
    let record = sim.record();
    for t in &tokens {
        let n = record.iter().filter(|r| &r.token == t).count();
        assert_eq!(n, 1, "{t} was sent {n} times");
    }
    daemon.terminate();
    sim.shutdown().await;
}

/// A `kill -9` in the middle of delivery loses no outcome: a notification leaves the spool only once its final
/// outcome is stored, so every id that was acknowledged has a final state after the restart, whether it was
/// delivered before the crash (its outcome stored) or sent again after it (docs/api.md "Status of a notification").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_id_has_its_final_state_after_a_kill_9_mid_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &pki, port, 3600);
    let daemon = Daemon::start(&config);
    let total = 20_000;
    let mut all = Vec::with_capacity(total);
    for batch in (0..total).collect::<Vec<_>>().chunks(5_000) {
        let tokens: Vec<String> = batch.iter().map(|&i| token(1_000 + i)).collect();
        let (code, answer, _) = push(&daemon.http, &tokens, None, "crash").await;
        assert_eq!(code, 202, "{answer}");
        all.extend(ids(&answer));
    }
    // APNs comes up; the crash lands while notifications stream out and new ones keep coming in (their spool
    // commits carry the removals of the delivered ones).
    let sim = start_sim(&pki, port, &[]).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pushers: Vec<_> = (0..2)
        .map(|p| {
            let (http, stop) = (daemon.http.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut round = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let tokens: Vec<String> = (0..200)
                        .map(|i| token(100_000 * (p + 1) + round * 200 + i))
                        .collect();
                    round += 1;
                    match push_quietly(&http, &tokens).await {
                        Some(ids) => acknowledged.extend(ids),
                        None => break,
                    }
                }
                acknowledged
            })
        })
        .collect();
    let seen = sim.wait_for_accepted(total as u64 / 4, WAIT).await;
    assert!(seen >= total as u64 / 4, "only {seen} reached APNs");
    daemon.kill9();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for p in pushers {
        all.extend(p.await.unwrap());
    }
    let before = sim.stats().accepted.total;
    assert!(
        before < total as u64,
        "everything was delivered before the crash: nothing to test"
    );

    let daemon = Daemon::start(&config);
    let client = reqwest::Client::new();
    // Redelivering thousands takes a while on a loaded machine: the deadline is for progress, not for all of it.
    let mut deadline = Instant::now() + WAIT;
    let mut waiting: Vec<String> = all.clone();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for chunk in waiting.chunks(1_000) {
            let v: serde_json::Value = client
                .post(format!("http://{}/api/v1/notifications/query", daemon.http))
                .json(&serde_json::json!({ "ids": chunk }))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for n in v["notifications"].as_array().unwrap() {
                if n["state"] != "delivered" {
                    still.push(n["id"].as_str().unwrap().to_owned());
                }
            }
            for n in v["not_found"].as_array().unwrap() {
                still.push(n["id"].as_str().unwrap().to_owned());
            }
        }
        assert!(
            Instant::now() < deadline || still.is_empty(),
            "{} acknowledged ids got no final state for {WAIT:?} after the restart (crash after {before} reached APNs), e.g. {:?}",
            still.len(),
            &still[..still.len().min(3)]
        );
        if still.len() < waiting.len() {
            deadline = Instant::now() + WAIT;
        }
        waiting = still;
        if !waiting.is_empty() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    daemon.terminate();
    sim.shutdown().await;
}

/// Idempotency keys belong to the caller: on a listener with two API keys, the same `Idempotency-Key` and body
/// sent under each key are two requests (each queued, each with its own ids), and each caller's retry replays its
/// own answer (docs/api.md "Idempotent requests").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_of_two_api_keys_do_not_meet() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let config = write_config(dir.path(), &pki, free_port(), 3600);
    let text = std::fs::read_to_string(&config).unwrap().replace(
        r#"http_listener { listen "127.0.0.1:0" { } }"#,
        r#"http_listener { listen "127.0.0.1:0" { api_keys = ( "key-a" "key-b" ) } }"#,
    );
    assert!(text.contains("key-a"), "{text}");
    std::fs::write(&config, text).unwrap();
    let daemon = Daemon::start(&config);
    let post = |api_key: &'static str, alert: &'static str| {
        let http = daemon.http.clone();
        async move {
            let body = serde_json::json!({
                "domain": "outcomes.example",
                "tokens": [token(40), token(41)],
                "payload": {"aps": {"alert": alert}},
            });
            let r = reqwest::Client::new()
                .post(format!("http://{http}/api/v1/push"))
                .header("authorization", format!("Bearer {api_key}"))
                .header("Idempotency-Key", "order-1")
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let replayed = r.headers().get("idempotent-replayed").is_some();
            let answer: serde_json::Value = r.json().await.unwrap();
            (status, answer, replayed)
        }
    };
    let (code, a, replayed) = post("key-a", "same").await;
    assert_eq!((code, replayed), (202, false), "{a}");
    let (code, b, replayed) = post("key-b", "same").await;
    assert_eq!((code, replayed), (202, false), "{b}");
    assert_ne!(
        ids(&a),
        ids(&b),
        "the second caller got the first one's answer"
    );
    let (code, a_again, replayed) = post("key-a", "same").await;
    assert_eq!((code, replayed, &a_again), (202, true, &a));
    let (code, b_again, replayed) = post("key-b", "same").await;
    assert_eq!((code, replayed, &b_again), (202, true, &b));
    // Each caller's key is still its own: another body under it is a conflict.
    let (code, conflict, _) = post("key-b", "other").await;
    assert_eq!(code, 409, "{conflict}");
    daemon.terminate();
}

/// Requests that cannot be answered as asked are refused in the shapes docs/api.md and docs/openapi.yaml give: two
/// `Idempotency-Key` headers are a `400` naming the header, with nothing queued and neither key taken; an id that
/// is not UTF-8 text once percent-decoded is a `400` `StatusNotFound` (`id` as sent, `found` false).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_idempotency_keys_and_an_id_that_is_no_text_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let config = write_config(dir.path(), &pki, free_port(), 3600);
    let daemon = Daemon::start(&config);
    let body = serde_json::json!({
        "domain": "outcomes.example",
        "tokens": [token(50)],
        "payload": {"aps": {"alert": "twice"}},
    });
    let r = reqwest::Client::new()
        .post(format!("http://{}/api/v1/push", daemon.http))
        .header("Idempotency-Key", "k-1")
        .header("Idempotency-Key", "k-2")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        answer["error"], "Idempotency-Key: given more than once; send one key per request",
        "{answer}"
    );
    // Neither key was taken: each alone runs as a first request.
    for key in ["k-1", "k-2"] {
        let (code, answer, replayed) = push(&daemon.http, &[token(50)], Some(key), "twice").await;
        assert_eq!((code, replayed), (202, false), "{key}: {answer}");
    }

    let (code, answer) = status(&daemon.http, "%ff").await;
    assert_eq!(code, 400, "{answer}");
    assert_eq!(answer["id"], "%ff", "{answer}");
    assert_eq!(answer["found"], false, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("is not UTF-8 text once percent-decoded")),
        "{answer}"
    );
    daemon.terminate();
}
