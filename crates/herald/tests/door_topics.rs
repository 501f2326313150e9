//! Topics and push types worked out at the door (docs/apns-protocol.md#http2-request, #push-types, #rule-8):
//! `herald serve` in process, its REST door over a real socket, in front of the APNs simulator.
//!
//! - A token-authenticated domain without `apn_topic` refuses a notification that names no topic (APNs would answer
//!   `MissingTopic`, for good), naming the topic and how to give one; nothing is queued.
//! - A certificate domain without `apn_topic` sends a VoIP push to the certificate's bundle id plus `.voip`, not to
//!   the bare bundle id APNs would use (`TopicDisallowed`).
//! - Without a push type, a `.voip` topic makes a voip push: a VoIP payload without `aps` over 4096 bytes is
//!   accepted and sent as `voip`.
//! - A Live Activity time in milliseconds is refused, naming the field.

mod support;

use std::sync::Arc;
use std::time::Duration;

use herald::server::Server;
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use serde_json::{Value, json};
use support::{cert_auth_options, token_auth_options};

const TOPIC: &str = "com.example.door";
const KEY: &str = "door-topics-test-key";
/// Token auth, no `apn_topic`.
const TOKEN_NO_TOPIC: &str = "token.example";
/// Certificate auth, no `apn_topic`.
const CERT_NO_TOPIC: &str = "cert.example";
/// Token auth with `apn_topic` = [`TOPIC`].
const TOKEN_WITH_TOPIC: &str = "apps.example";
const WAIT: Duration = Duration::from_secs(30);

/// A domain's options without their `apn_topic` line.
fn without_apn_topic(options: &str) -> String {
    options
        .lines()
        .filter(|l| !l.trim_start().starts_with("apn_topic"))
        .map(|l| format!("{l}\n"))
        .collect()
}

struct Setup {
    _dir: tempfile::TempDir,
    sim: SimHandle,
    server: Arc<Server>,
    http: String,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
        .await
        .unwrap();
    let port = sim.addrs.h2.port();
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            r#"
spool_dir = "{spool}"
http_listener {{ listen "127.0.0.1:0" {{ api_keys = ( "{KEY}" ) }} }}
domain "{TOKEN_NO_TOPIC}" {{
{token_no_topic}}}
domain "{CERT_NO_TOPIC}" {{
{cert_no_topic}}}
domain "{TOKEN_WITH_TOPIC}" {{
{token_with_topic}}}
"#,
            spool = dir.path().join("spool").display(),
            token_no_topic = without_apn_topic(&token_auth_options(&pki, port, TOPIC)),
            cert_no_topic = without_apn_topic(&cert_auth_options(&pki, port, TOPIC)),
            token_with_topic = token_auth_options(&pki, port, TOPIC),
        ),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let http = server.addrs().await.http[0].to_string();
    Setup {
        _dir: dir,
        sim,
        server,
        http,
    }
}

/// `POST /api/v1/push` with `body`; the answer, which must be a 202.
async fn push(http: &str, body: Value) -> Value {
    let response = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/push"))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{answer}");
    answer
}

/// The simulator's records once it has `n`, within [`WAIT`].
async fn records(sim: &SimHandle, n: u64) -> Vec<herald_sim::record::DeliveryRecord> {
    let seen = sim.wait_for_records(n, WAIT).await;
    assert_eq!(
        seen,
        n,
        "records: {:?}, rejected by the simulator: {:?}",
        sim.record(),
        sim.stats().rejected.by_reason
    );
    sim.record()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_domain_without_apn_topic_refuses_a_notification_without_topic_at_the_door() {
    let s = setup().await;
    let answer = push(
        &s.http,
        json!({"domain": TOKEN_NO_TOPIC, "tokens": ["ab".repeat(32)], "payload": {"aps": {"alert": "hi"}}}),
    )
    .await;
    let result = &answer["results"][0];
    assert_eq!(result["status"], "rejected", "{answer}");
    let reason = result["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("apns-topic: the notification names no topic")
            && reason.contains(&format!("{TOKEN_NO_TOPIC:?} has no apn_topic"))
            && reason.contains("MissingTopic")
            && reason.contains("REST \"topic\"")
            && reason.contains("set apn_topic"),
        "{reason}"
    );
    let summary = s.server.summary();
    assert_eq!((summary.received, summary.rejected), (0, 1), "{summary:?}");

    // The same notification with its topic goes, and is the only one the simulator sees.
    let answer = push(
        &s.http,
        json!({"domain": TOKEN_NO_TOPIC, "tokens": ["cd".repeat(32)], "payload": {"aps": {"alert": "hi"}},
               "topic": TOPIC}),
    )
    .await;
    assert_eq!(answer["results"][0]["status"], "accepted", "{answer}");
    let records = records(&s.sim, 1).await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].token, "cd".repeat(32));
    assert_eq!(records[0].topic, TOPIC);
    assert_eq!(s.sim.stats().rejected.total, 0);
    assert_eq!(s.server.summary().received, 1);
    s.server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_domain_without_apn_topic_sends_voip_to_the_bundle_id_with_its_suffix() {
    let s = setup().await;
    let answer = push(
        &s.http,
        json!({"domain": CERT_NO_TOPIC, "push_type": "voip", "tokens": ["ef".repeat(32)],
               "payload": {"callId": "42"}}),
    )
    .await;
    assert_eq!(answer["results"][0]["status"], "accepted", "{answer}");
    let records = records(&s.sim, 1).await;
    assert_eq!(records[0].topic, format!("{TOPIC}.voip"));
    assert_eq!(records[0].push_type.as_deref(), Some("voip"));
    assert_eq!(s.sim.stats().rejected.total, 0);
    s.server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voip_topic_without_push_type_is_sent_as_voip_with_voip_s_limit() {
    let s = setup().await;
    // Over 4096 bytes (the limit of every other type), within VoIP's 5120, and no aps: an app's own payload.
    let payload = json!({"callId": "c".repeat(4500)});
    assert!(payload.to_string().len() > 4096);
    let answer = push(
        &s.http,
        json!({"domain": TOKEN_WITH_TOPIC, "topic": format!("{TOPIC}.voip"),
               "tokens": ["12".repeat(32)], "payload": payload}),
    )
    .await;
    assert_eq!(answer["results"][0]["status"], "accepted", "{answer}");
    let records = records(&s.sim, 1).await;
    assert_eq!(records[0].topic, format!("{TOPIC}.voip"));
    assert_eq!(records[0].push_type.as_deref(), Some("voip"));
    assert_eq!(records[0].payload, payload.to_string());
    s.server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_activity_time_in_milliseconds_is_refused_naming_the_field() {
    let s = setup().await;
    let answer = push(
        &s.http,
        json!({"domain": TOKEN_WITH_TOPIC, "push_type": "liveactivity", "tokens": ["34".repeat(32)],
               "payload": {"aps": {"event": "update", "timestamp": 1_767_225_600_000u64, "content-state": {}}}}),
    )
    .await;
    let result = &answer["results"][0];
    assert_eq!(result["status"], "rejected", "{answer}");
    let reason = result["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("aps.timestamp is 1767225600000") && reason.contains("milliseconds"),
        "{reason}"
    );
    assert_eq!(s.server.summary().received, 0);
    s.server.shutdown(Duration::from_secs(5)).await;
}
