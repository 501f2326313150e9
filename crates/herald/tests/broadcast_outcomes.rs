//! A broadcast's id, as `POST /api/v1/broadcast` answered it, is looked up like a notification's
//! (docs/api.md "Status of a notification", "Broadcasts"): `GET /api/v1/notifications/{id}`, the batch form and the
//! console's `status` answer its state with `"kind": "broadcast"`, its domain and channel, queued or in flight
//! while it is held, then delivered or failed with the reason, APNs' status and the `apns-request-id` (reference
//! apns.md §6.1: a broadcast is answered with the `apns-request-id` it was sent with, and an unknown channel with
//! 400 ChannelNotRegistered). Its final outcome is stored before
//! it leaves the spool's broadcasts, so it survives a restart, graceful or `kill -9`, of `herald serve` on the same
//! spool directory.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herald::outcomes::book::{BroadcastStatus, broadcast_id, broadcast_key};
use herald_sim::{Pki, RecordProtocol, SimConfig, SimHandle, Simulator};
use herald_spool::{Lookup, OutcomeStore};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::daemon::Daemon;
use support::{free_port, token_auth_options};

const TOPIC: &str = "com.example.outcomes";
/// Broadcasts to the simulator.
const LIVE: &str = "live.example";
/// Broadcasts to a port nothing listens on, retried an hour later: they stay queued.
const HELD: &str = "held.example";
const KEY: &str = "broadcast-outcome-key";
const WAIT: Duration = Duration::from_secs(30);

/// A `herald serve` configuration on `dir`'s spool, with the console on a Unix socket.
fn config(dir: &Path, pki: &Pki, sim: &SimHandle, down: u16) -> PathBuf {
    let path = dir.join("serve.conf");
    let text = format!(
        r#"
spool_dir = "{spool}"
esmtp_listener {{ listen "127.0.0.1:0" {{ }} }}
http_listener {{ listen "127.0.0.1:0" {{ api_keys = ( "{KEY}" ) }} }}
control_listener {{ listen "{socket}" {{ }} }}
domain "{LIVE}" {{
{token}  apn_channel_route = "https://127.0.0.1:{manage}"
  apn_broadcast_route = "https://127.0.0.1:{bcast}"
}}
domain "{HELD}" {{
{token}  apn_broadcast_route = "https://127.0.0.1:{down}"
  retry_interval = 3600
}}
"#,
        spool = dir.join("spool").display(),
        socket = socket(dir).display(),
        token = token_auth_options(pki, sim.addrs.h2.port(), TOPIC),
        manage = sim.addrs.management.port(),
        bcast = sim.addrs.broadcast.port(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn socket(dir: &Path) -> PathBuf {
    dir.join("control.sock")
}

async fn request(
    http: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{http}{path}"))
        .bearer_auth(KEY);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn broadcast(http: &str, domain: &str, channel: &str, n: u32) -> String {
    let payload = json!({"aps": {"timestamp": 1_700_000_000 + n, "event": "update", "content-state": {"n": n}}});
    let (status, v) = request(
        http,
        reqwest::Method::POST,
        "/api/v1/broadcast",
        Some(json!({"domain": domain, "channel_id": channel, "payload": payload})),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

async fn status(http: &str, id: &str) -> (StatusCode, Value) {
    request(
        http,
        reqwest::Method::GET,
        &format!("/api/v1/notifications/{id}"),
        None,
    )
    .await
}

/// Looks `id` up until `accept` holds for its `200` answer; returns that answer.
async fn status_until(http: &str, id: &str, accept: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let (code, v) = status(http, id).await;
        if code == StatusCode::OK && accept(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{id}: {code} {v}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `herald console SOCKET status ID`: whether it succeeded, and what it printed.
async fn console_status(dir: &Path, id: &str) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.arg("console")
        .arg(socket(dir))
        .args(["status", id])
        .env_remove("HERALD_CONSOLE_PASSWORD");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The value of `name:` in the console's `status` answer.
fn line(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_owned())
}

fn broadcasts_in(sim: &SimHandle) -> usize {
    sim.record()
        .into_iter()
        .filter(|r| r.protocol == RecordProtocol::Broadcast)
        .count()
}

/// What the stopped server left in its spool directory: the ids of the broadcasts still stored, and the final
/// outcome stored for `id`, if any.
fn left_in_spool(dir: &Path, id: &str) -> (Vec<String>, Option<BroadcastStatus>) {
    let store = OutcomeStore::open(&dir.join("spool")).unwrap();
    let held = store
        .broadcast_all()
        .unwrap()
        .iter()
        .map(|(_, v)| {
            serde_json::from_slice::<Value>(v).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let outcome = match store
        .lookup(&broadcast_key(broadcast_id(id).unwrap()))
        .unwrap()
    {
        Lookup::Found(bytes) => Some(serde_json::from_slice(&bytes).unwrap()),
        _ => None,
    };
    (held, outcome)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcasts_id_is_looked_up_before_and_after_delivery_and_after_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let pki = Pki::generate(&dir.join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
        .await
        .unwrap();
    let conf = config(dir, &pki, &sim, free_port());
    let daemon = Daemon::start(&conf);
    let http = daemon.http.clone();
    let (code, created) = request(
        &http,
        reqwest::Method::POST,
        "/api/v1/channels",
        Some(json!({"domain": LIVE, "message_storage_policy": 1, "push_type": "liveactivity"})),
    )
    .await;
    assert_eq!(code, StatusCode::CREATED, "{created}");
    let channel = created["channel_id"].as_str().unwrap().to_owned();

    // Held: looked up at once after the 202, then queued for its retry with the failure of its first attempt.
    let held = broadcast(&http, HELD, &channel, 1).await;
    let (code, first) = status(&http, &held).await;
    assert_eq!(code, StatusCode::OK, "{first}");
    assert_eq!(first["kind"], "broadcast", "{first}");
    assert_eq!(first["domain"], HELD, "{first}");
    assert_eq!(first["channel_id"], channel.as_str(), "{first}");
    assert!(
        matches!(first["state"].as_str(), Some("queued" | "in_flight")),
        "{first}"
    );
    let waiting = status_until(&http, &held, |v| v["attempts"] == 1).await;
    assert_eq!(waiting["state"], "queued", "{waiting}");
    assert!(waiting["next_attempt_at"].as_u64().is_some(), "{waiting}");
    assert!(waiting["last_reason"].as_str().is_some(), "{waiting}");

    // Delivered: its outcome says so, with the request id APNs answered, also on the console.
    let delivered = broadcast(&http, LIVE, &channel, 2).await;
    let outcome = status_until(&http, &delivered, |v| v["state"] == "delivered").await;
    assert_eq!(outcome["kind"], "broadcast", "{outcome}");
    assert_eq!(outcome["domain"], LIVE, "{outcome}");
    assert_eq!(outcome["channel_id"], channel.as_str(), "{outcome}");
    assert_eq!(outcome["apns_id"], delivered.as_str(), "{outcome}");
    assert!(outcome["finished_at"].as_u64().is_some(), "{outcome}");
    assert!(outcome.get("token").is_none(), "{outcome}");
    let (ok, text) = console_status(dir, &delivered).await;
    assert!(ok, "{text}");
    assert_eq!(line(&text, "state").as_deref(), Some("delivered"), "{text}");
    assert_eq!(line(&text, "kind").as_deref(), Some("broadcast"), "{text}");

    // Failed for good: a channel APNs does not know.
    let unknown_channel = "dW5rbm93bi1jaGFubmVs";
    let failed = broadcast(&http, LIVE, unknown_channel, 3).await;
    let outcome = status_until(&http, &failed, |v| v["state"] == "failed").await;
    assert_eq!(outcome["reason"], "ChannelNotRegistered", "{outcome}");
    assert_eq!(outcome["status"], 400, "{outcome}");
    assert_eq!(outcome["channel_id"], unknown_channel, "{outcome}");

    // The batch form, and an id no broadcast has.
    let nobody = "00000000-0000-4000-8000-000000000000";
    let (code, v) = request(
        &http,
        reqwest::Method::POST,
        "/api/v1/notifications/query",
        Some(json!({"ids": [delivered, held, nobody]})),
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{v}");
    let states: Vec<&str> = v["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["delivered", "queued"], "{v}");
    assert_eq!(v["not_found"][0]["id"], nobody, "{v}");
    let (code, v) = status(&http, nobody).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(v["found"], "unknown", "{v}");
    let (ok, text) = console_status(dir, nobody).await;
    assert!(!ok && text.contains("unknown"), "{text}");

    // A graceful stop: the delivered broadcast left the spool, its outcome is there; the held one is still stored.
    daemon.terminate();
    let (stored, kept) = left_in_spool(dir, &delivered);
    assert_eq!(stored, std::slice::from_ref(&held));
    let kept = kept.expect("the delivered broadcast's outcome is not stored");
    assert_eq!(kept.state, "delivered");
    assert_eq!(kept.apns_id.as_deref(), Some(delivered.as_str()));

    // After the restart: the outcomes from the store, the held broadcast from the spool with its retry.
    let daemon = Daemon::start(&conf);
    let http = daemon.http.clone();
    let (code, after) = status(&http, &delivered).await;
    assert_eq!(code, StatusCode::OK, "{after}");
    assert_eq!(after["state"], "delivered", "{after}");
    assert_eq!(after["finished_at"], json!(kept.finished_at), "{after}");
    let (code, after) = status(&http, &failed).await;
    assert_eq!(
        (code, after["reason"].as_str()),
        (StatusCode::OK, Some("ChannelNotRegistered")),
        "{after}"
    );
    let (code, after) = status(&http, &held).await;
    assert_eq!(code, StatusCode::OK, "{after}");
    assert_eq!(
        (after["state"].as_str(), after["attempts"].as_u64()),
        (Some("queued"), Some(1)),
        "{after}"
    );
    assert_eq!(after["last_reason"], waiting["last_reason"], "{after}");
    assert_eq!(
        broadcasts_in(&sim),
        1,
        "the delivered broadcast was sent again"
    );

    // A `kill -9` as soon as a delivery is looked up: after the restart its outcome is found, stored before it
    // left the spool (or, still spooled, it is sent again and its outcome stored then).
    let last = broadcast(&http, LIVE, &channel, 4).await;
    status_until(&http, &last, |v| v["state"] == "delivered").await;
    daemon.kill9();
    let (stored, kept) = left_in_spool(dir, &last);
    assert!(
        kept.is_some() || stored.contains(&last),
        "gone from the spool with no outcome stored: {stored:?}"
    );
    let daemon = Daemon::start(&conf);
    let after = status_until(&daemon.http, &last, |v| v["state"] == "delivered").await;
    assert_eq!(after["kind"], "broadcast", "{after}");
    daemon.terminate();
    let (stored, kept) = left_in_spool(dir, &last);
    assert!(kept.is_some() && !stored.contains(&last), "{stored:?}");
}
