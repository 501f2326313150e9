//! Channel ids at herald's doors, over real sockets in front of the APNs simulator (docs/api.md "Channels" and
//! "Broadcasts", docs/live-activities.md):
//!
//! - an id that is not base64 although every character is in its alphabet (`A`, `A===`) is refused with a 400 by
//!   the broadcast and channel routes, and nothing reaches the simulator;
//! - a too-long id is refused for its length, with only its start repeated;
//! - a Live Activity start whose `input-push-channel` is no channel id is refused naming the field;
//! - the ids the simulator hands out (herald's create) are still read and broadcast to.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::token_auth_options;

const BUNDLE: &str = "com.example.ids";
const DOMAIN: &str = "ids.example";
const KEY: &str = "channel-ids-test-key";
const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    _dir: tempfile::TempDir,
    server: Arc<Server>,
    sim: SimHandle,
    http: String,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[BUNDLE.to_string()]).unwrap();
    let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
        .await
        .unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            r#"
spool_dir = "{spool}"
http_listener {{
  listen "127.0.0.1:0" {{ api_keys = ( "{KEY}" ) }}
}}
domain "{DOMAIN}" {{
{auth}  apn_channel_route = "https://127.0.0.1:{manage}"
  apn_broadcast_route = "https://127.0.0.1:{bcast}"
}}
"#,
            spool = dir.path().join("spool").display(),
            auth = token_auth_options(
                &pki,
                sim.addrs.h2.port(),
                &format!("{BUNDLE}.push-type.liveactivity")
            ),
            manage = sim.addrs.management.port(),
            bcast = sim.addrs.broadcast.port(),
        ),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let http = server.addrs().await.http[0].to_string();
    Setup {
        _dir: dir,
        server,
        sim,
        http,
    }
}

/// One call with the API key: (status, JSON answer or Null when empty).
async fn call(s: &Setup, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{}{path}", s.http))
        .bearer_auth(KEY);
    if let Some(b) = body {
        request = request.json(&b);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"))
    };
    (status, value)
}

/// A channel id as one path segment.
fn seg(id: &str) -> String {
    id.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

fn update() -> Value {
    json!({"aps": {"timestamp": 1_700_000_000, "event": "update", "content-state": {"score": 1}}})
}

fn error_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_default()
}

/// apns.md line 505: APNs answers BadChannelId for an id that is not properly encoded, so herald refuses one at
/// its door instead of accepting a broadcast that could only fail; line 473: the ids APNs hands out are base64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_that_are_not_base64_are_refused_at_the_door() {
    let s = setup().await;
    for id in ["A", "A===", "AA=A", "AAAAA"] {
        let body = json!({"domain": DOMAIN, "channel_id": id, "payload": update()});
        let (status, v) = call(&s, Method::POST, "/api/v1/broadcast", Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "broadcast to {id}: {v}");
        let want = format!("channel_id: channel id {id:?} is not base64");
        assert!(error_of(&v).starts_with(&want), "{id}: {v}");
        for method in [Method::GET, Method::DELETE] {
            let path = format!("/api/v1/channels/{}?domain={DOMAIN}", seg(id));
            let (status, v) = call(&s, method.clone(), &path, None).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{method} {id}: {v}");
            assert!(
                error_of(&v).starts_with(&format!("channel id: channel id {id:?} is not base64")),
                "{method} {id}: {v}"
            );
        }
    }
    assert!(s.sim.record().is_empty());
    assert_eq!(s.sim.stats().broadcast.accepted, 0);
    s.server.shutdown(Duration::from_secs(1)).await;
}

/// An id over herald's bound is refused for its length, and the answer repeats only the start of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_id_is_refused_for_its_length() {
    let s = setup().await;
    let id = "QUJD".repeat(1250);
    let body = json!({"domain": DOMAIN, "channel_id": id, "payload": update()});
    let (status, v) = call(&s, Method::POST, "/api/v1/broadcast", Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let error = error_of(&v);
    assert!(
        error.contains("is 5000 characters long; herald takes at most 4096"),
        "{error}"
    );
    assert!(error.contains(&format!("\"{}…\"", &id[..40])), "{error}");
    assert!(error.len() < 200, "{error}");
    s.server.shutdown(Duration::from_secs(1)).await;
}

/// apns.md line 423: a start's `input-push-channel` names a broadcast channel, so it is held to a channel id's form
/// and refused naming the field; a start subscribing to a real channel is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_with_a_bad_input_push_channel_is_refused_naming_the_field() {
    let s = setup().await;
    let start = |channel: &str| {
        json!({"aps": {"event": "start", "timestamp": 1_700_000_000, "alert": {"title": "Kick-off"},
            "attributes-type": "MatchAttributes", "attributes": {"home": "A", "away": "B"},
            "content-state": {"score": "0-0"}, "input-push-channel": channel}})
    };
    let push = |payload: Value| {
        json!({"domain": DOMAIN, "push_type": "liveactivity", "priority": 10,
            "notifications": [{"token": "ab".repeat(32), "payload": payload}]})
    };
    let (status, v) = call(&s, Method::POST, "/api/v1/push", Some(push(start("!!")))).await;
    // One notification of a batch: the batch is taken and the notification rejected with the reason.
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["results"][0]["status"], "rejected", "{v}");
    let reason = v["results"][0]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with(
            "aps.input-push-channel must be a broadcast channel id: channel id \"!!\" is not base64"
        ),
        "{v}"
    );

    let (status, v) = call(
        &s,
        Method::POST,
        "/api/v1/channels",
        Some(json!({"domain": DOMAIN, "message_storage_policy": 0, "push_type": "liveactivity"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let channel = v["channel_id"].as_str().unwrap().to_owned();
    let (status, v) = call(
        &s,
        Method::POST,
        "/api/v1/push",
        Some(push(start(&channel))),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(v["results"][0]["status"], "accepted", "{v}");
    wait_for("the start", || s.sim.record().len() == 1).await;
    s.server.shutdown(Duration::from_secs(1)).await;
}

/// The ids the simulator makes, as APNs does (line 473), go through every door: read, broadcast, delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_the_simulator_hands_out_are_taken() {
    let s = setup().await;
    let (status, v) = call(
        &s,
        Method::POST,
        "/api/v1/channels",
        Some(json!({"domain": DOMAIN, "message_storage_policy": 0, "push_type": "liveactivity"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let channel = v["channel_id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/channels/{}?domain={DOMAIN}", seg(&channel));
    let (status, v) = call(&s, Method::GET, &path, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let body = json!({"domain": DOMAIN, "channel_id": channel, "payload": update()});
    let (status, v) = call(&s, Method::POST, "/api/v1/broadcast", Some(body)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    wait_for("the broadcast", || s.sim.stats().broadcast.accepted == 1).await;
    let (status, v) = call(&s, Method::DELETE, &path, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    s.server.shutdown(Duration::from_secs(1)).await;
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
