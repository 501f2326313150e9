//! Broadcast pushes through herald (docs/api.md "Broadcasts", docs/apns-protocol.md §6.2): `POST /api/v1/broadcast`
//! accepted once durable and delivered to the simulator's broadcast port with token auth and with certificate
//! auth (the simulator's record holds the channel, the bundle id, the payload, the priority and the
//! `apns-request-id`); a broadcast to a deleted channel fails permanently with ChannelNotRegistered after one
//! attempt and is logged once; FeatureNotEnabled is permanent too; an unreachable broadcast host is transient,
//! retried by the domain's schedule and failed when `max_retries` is used up; a Live Activity start is refused at
//! the door with the field named; broadcasts accepted before a restart are delivered after it; every reason of the
//! broadcast error table, answered by the simulator, is classified (permanent: one attempt; temporary: retried); an
//! expired broadcast fails without an attempt.

mod support;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{Pki, RecordProtocol, SimConfig, SimHandle, Simulator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{cert_auth_options, free_port, token_auth_options};

const TOPIC: &str = "com.example.broadcast";
const TOKEN: &str = "token.example";
const CERT: &str = "cert.example";
/// A domain whose broadcast route nothing listens on: retried once, a second apart, then failed.
const DOWN: &str = "down.example";
/// A domain whose broadcast route nothing listens on, retried an hour later: its broadcasts stay queued.
const HELD: &str = "held.example";
/// A domain routed to Apple's binary gateway, without `apn_broadcast_route`: it cannot broadcast.
const BINARY: &str = "binary.example";
const KEY: &str = "broadcast-test-key";
const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    dir: tempfile::TempDir,
    server: Arc<Server>,
    sim: SimHandle,
    http: String,
}

async fn start_sim(pki: &Pki, disabled: bool) -> SimHandle {
    let mut sim_config = SimConfig::from_pki(&pki.manifest).unwrap();
    if disabled {
        sim_config.scenario.broadcast_disabled = vec![TOPIC.to_string()];
    }
    Simulator::start(sim_config).await.unwrap()
}

async fn setup(disabled: bool) -> Setup {
    setup_with(disabled, "").await
}

/// [`setup`] with `global` options added to the configuration.
async fn setup_with(disabled: bool, global: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim = start_sim(&pki, disabled).await;
    let down = free_port();
    let config = dir.path().join("herald.conf");
    let text = format!("{global}\n{}", config_text(dir.path(), &pki, &sim, down));
    std::fs::write(&config, text).unwrap();
    let server = Server::start(&config).await.unwrap();
    let http = server.addrs().await.http[0].to_string();
    Setup {
        dir,
        server,
        sim,
        http,
    }
}

fn config_text(dir: &Path, pki: &Pki, sim: &SimHandle, down: u16) -> String {
    let client = pki
        .client(TOPIC, herald_sim::CertVariant::Universal)
        .unwrap();
    let h2 = sim.addrs.h2.port();
    let manage = sim.addrs.management.port();
    let bcast = sim.addrs.broadcast.port();
    format!(
        r#"
spool_dir = "{spool}"
ec_logger "main" {{ mainlog = "{mainlog}" }}
apn_logger "all" {{ logfile = "{apnlog}" }}
http_listener {{
  listen "127.0.0.1:0" {{ api_keys = ( "{KEY}" ) }}
}}
domain "{TOKEN}" {{
{token}  apn_channel_route = "https://127.0.0.1:{manage}"
  apn_broadcast_route = "https://127.0.0.1:{bcast}"
  retry_interval = 1
}}
domain "{CERT}" {{
{cert_auth}  apn_channel_route = "https://127.0.0.1:{manage}"
  apn_broadcast_route = "https://127.0.0.1:{bcast}"
}}
domain "{DOWN}" {{
{token}  apn_broadcast_route = "https://127.0.0.1:{down}"
  retry_interval = 1
  max_retries = 1
}}
domain "{HELD}" {{
{token}  apn_broadcast_route = "https://127.0.0.1:{down}"
  retry_interval = 3600
}}
domain "{BINARY}" {{
  delivery_method = apn
  routes = ( "apn://gateway.push.apple.com?port=2195" )
  tls_certificate = "{cert}"
  tls_key = "{key}"
  apn_topic = "{TOPIC}"
}}
"#,
        spool = dir.join("spool").display(),
        mainlog = dir.join("mainlog.ec").display(),
        apnlog = dir.join("apn.log").display(),
        token = token_auth_options(pki, h2, TOPIC),
        cert_auth = cert_auth_options(pki, h2, TOPIC),
        cert = client.cert.display(),
        key = client.key.display(),
    )
}

async fn call(s: &Setup, method: reqwest::Method, path: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .request(method, format!("http://{}{path}", s.http))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, value)
}

async fn create_channel(s: &Setup, domain: &str) -> String {
    create_channel_with(s, domain, 1).await
}

async fn create_channel_with(s: &Setup, domain: &str, policy: u8) -> String {
    let (status, v) = call(
        s,
        reqwest::Method::POST,
        "/api/v1/channels",
        json!({"domain": domain, "message_storage_policy": policy, "push_type": "liveactivity"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    v["channel_id"].as_str().unwrap().to_owned()
}

fn update(n: u32) -> Value {
    json!({"aps": {"timestamp": 1_700_000_000 + n, "event": "update", "content-state": {"score": n}}})
}

async fn broadcast(s: &Setup, body: Value) -> (StatusCode, Value) {
    call(s, reqwest::Method::POST, "/api/v1/broadcast", body).await
}

fn broadcasts_in(sim: &SimHandle) -> Vec<herald_sim::DeliveryRecord> {
    sim.record()
        .into_iter()
        .filter(|r| r.protocol == RecordProtocol::Broadcast)
        .collect()
}

async fn metrics_text(client: &reqwest::Client, http: &str) -> String {
    client
        .get(format!("http://{http}/metrics"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The log's lines that are broadcast lines (field 3 of the mainlog, field 2 of the apn_logger, is `B`).
fn broadcast_lines(path: &Path, field: usize) -> Vec<Vec<String>> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split('@').map(str::to_owned).collect::<Vec<_>>())
        .filter(|f| f.get(field).map(String::as_str) == Some("B"))
        .collect()
}

#[tokio::test]
async fn broadcasts_reach_the_simulator_with_token_and_certificate_auth() {
    let s = setup(false).await;
    for domain in [TOKEN, CERT] {
        let channel = create_channel(&s, domain).await;
        let id = "5b6f7c3e-1d2a-4b8c-9e0f-a1b2c3d4e5f6";
        let (status, v) = broadcast(
            &s,
            json!({"domain": domain, "channel_id": channel, "payload": update(1), "priority": 5,
                   "apns_id": id}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{domain}: {v}");
        assert_eq!(v["id"], id);
        assert_eq!(v["channel_id"], channel.as_str());
        wait_for("the broadcast in the simulator's record", || {
            broadcasts_in(&s.sim)
                .iter()
                .any(|r| r.channel_id.as_deref() == Some(channel.as_str()))
        })
        .await;
        let r = broadcasts_in(&s.sim)
            .into_iter()
            .find(|r| r.channel_id.as_deref() == Some(channel.as_str()))
            .unwrap();
        assert_eq!(r.topic, TOPIC, "{domain}");
        assert_eq!(r.priority, 5);
        assert_eq!(r.apns_id.as_deref(), Some(id));
        assert_eq!(r.push_type.as_deref(), Some("liveactivity"));
        let payload: Value = serde_json::from_str(&r.payload).unwrap();
        assert_eq!(payload, update(1));
    }
    assert_eq!(s.sim.stats().broadcast.accepted, 2);
    // Delivered once each, logged once each in both logs, counted in /metrics.
    let mainlog = s.dir.path().join("mainlog.ec");
    let apnlog = s.dir.path().join("apn.log");
    wait_for("two delivered broadcast lines in each log", || {
        broadcast_lines(&mainlog, 2).len() == 2 && broadcast_lines(&apnlog, 1).len() == 2
    })
    .await;
    for f in broadcast_lines(&mainlog, 2) {
        assert_eq!(f[5], "D", "{f:?}");
    }
    // Counted as each attempt ends, right after its log line: read until both show (or fail after 30 s).
    let lines: Vec<String> = [TOKEN, CERT]
        .iter()
        .map(|domain| {
            format!(
                "herald_broadcasts_total{{domain=\"{domain}\",outcome=\"delivered\",reason=\"\"}} 1"
            )
        })
        .collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = metrics_text(&reqwest::Client::new(), &s.http).await;
        if lines.iter().all(|line| metrics.contains(line.as_str())) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{lines:?} missing from:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_deleted_channel_fails_permanently_once_and_an_unreachable_host_is_retried_then_failed() {
    let s = setup(false).await;
    let channel = create_channel(&s, TOKEN).await;
    let (status, _) = call(
        &s,
        reqwest::Method::DELETE,
        &format!(
            "/api/v1/channels/{}?domain={TOKEN}",
            channel
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        ),
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, v) = broadcast(
        &s,
        json!({"domain": TOKEN, "channel_id": channel, "payload": update(2)}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let other = create_channel(&s, TOKEN).await;
    let (status, _) = broadcast(
        &s,
        json!({"domain": DOWN, "channel_id": other, "payload": update(3)}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mainlog = s.dir.path().join("mainlog.ec");
    wait_for("the permanent failures in the mainlog", || {
        broadcast_lines(&mainlog, 2)
            .iter()
            .filter(|f| f[5] == "P")
            .count()
            == 2
    })
    .await;
    let lines = broadcast_lines(&mainlog, 2);
    // The deleted channel: one attempt, one line, APNs' status and reason.
    let deleted: Vec<_> = lines.iter().filter(|f| f[4] == channel).collect();
    assert_eq!(deleted.len(), 1, "{lines:?}");
    assert_eq!(deleted[0][5], "P");
    assert_eq!(deleted[0][9], "400");
    assert_eq!(deleted[0][10], "ChannelNotRegistered", "{:?}", deleted[0]);
    assert_eq!(
        s.sim.stats().broadcast.rejected.get("ChannelNotRegistered"),
        Some(&1),
        "one attempt only"
    );
    // The unreachable host: transient on the first attempt, retried once (max_retries = 1), and that retry's
    // failure is the permanent one.
    let down: Vec<_> = lines.iter().filter(|f| f[3] == DOWN).collect();
    let kinds: Vec<&str> = down.iter().map(|f| f[5].as_str()).collect();
    assert_eq!(kinds, ["T", "P"], "{down:?}");
    assert_eq!(
        down[1][7], "1",
        "retries before the last attempt: {:?}",
        down[1]
    );
    assert!(down[1][10].contains("max_retries used up"), "{:?}", down[1]);
    assert_eq!(s.server.broadcasts.queued(), 0);
}

#[tokio::test]
async fn feature_not_enabled_is_permanent() {
    let s = setup(true).await;
    // Channels cannot be created for a disabled app; any well-formed id will do for the send.
    let channel = "dHN0LXNyY2gtY2hubA==";
    let (status, _) = broadcast(
        &s,
        json!({"domain": TOKEN, "channel_id": channel, "payload": update(4)}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let mainlog = s.dir.path().join("mainlog.ec");
    wait_for("the permanent failure", || {
        broadcast_lines(&mainlog, 2).iter().any(|f| f[5] == "P")
    })
    .await;
    let lines = broadcast_lines(&mainlog, 2);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0][10], "FeatureNotEnabled", "{lines:?}");
}

/// `max_queued_broadcasts` bounds the broadcasts accepted and not finished: up to it they are accepted, the next
/// one is `503` with `retry-after` and an error naming the option; once one finishes there is room again.
#[tokio::test]
async fn broadcasts_beyond_max_queued_broadcasts_are_refused_with_503() {
    let s = setup_with(false, "max_queued_broadcasts = 2").await;
    let channel = "dHN0LXNyY2gtY2hubA==";
    let held = |n: u32| json!({"domain": HELD, "channel_id": channel, "payload": update(n)});
    let (status, v) = broadcast(&s, held(0)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    // One that finishes at once (expired) gives its room back.
    let (status, v) = broadcast(
        &s,
        json!({"domain": TOKEN, "channel_id": channel, "payload": update(1), "expiration": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    wait_for("the expired broadcast to finish", || {
        s.server.broadcasts.queued() == 1
    })
    .await;
    let (status, v) = broadcast(&s, held(2)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "at the bound: {v}");
    assert_eq!(s.server.broadcasts.queued(), 2);
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1/broadcast", s.http))
        .bearer_auth(KEY)
        .json(&held(3))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        response.headers().contains_key("retry-after"),
        "{:?}",
        response.headers()
    );
    let v: Value = response.json().await.unwrap();
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("max_queued_broadcasts = 2") && error.contains("holds 2"),
        "{error}"
    );
    assert_eq!(
        s.server.broadcasts.queued(),
        2,
        "the refused one is not queued"
    );
}

/// A domain whose credentials cannot be read now (its key file is missing: the operator's to fix, as for pushes)
/// refuses broadcasts and channel calls with `503` and `retry-after`, the text naming the file: not `400`, which
/// tells the sender to drop the request.
#[tokio::test]
async fn a_domain_whose_key_cannot_be_read_now_answers_503() {
    let missing = tempfile::tempdir().unwrap();
    let key = missing.path().join("AuthKey_LATER.p8");
    let stanza = format!(
        r#"domain "nokey.example" {{
  delivery_method = apn
  routes = ( "https://127.0.0.1:1" )
  apn_key = "{key}"
  apn_key_id = "ABC123DEFG"
  apn_team_id = "DEF123GHIJ"
  apn_topic = "{TOPIC}"
  apn_channel_route = "https://127.0.0.1:1"
  apn_broadcast_route = "https://127.0.0.1:1"
}}"#,
        key = key.display()
    );
    let s = setup_with(false, &stanza).await;
    let client = reqwest::Client::new();
    for (path, body) in [
        (
            "/api/v1/broadcast",
            json!({"domain": "nokey.example", "channel_id": "dHN0LXNyY2gtY2hubA==", "payload": update(1)}),
        ),
        (
            "/api/v1/channels",
            json!({"domain": "nokey.example", "message_storage_policy": 1}),
        ),
    ] {
        let response = client
            .post(format!("http://{}{path}", s.http))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(
            response.headers().contains_key("retry-after"),
            "{path}: {:?}",
            response.headers()
        );
        let v: Value = response.json().await.unwrap();
        let error = v["error"].as_str().unwrap_or_default();
        assert!(error.contains("AuthKey_LATER.p8"), "{path}: {error}");
    }
    assert_eq!(s.server.broadcasts.queued(), 0);
}

/// herald does not know a channel's storage policy at the door (docs/api.md "Broadcasts"): a non-zero expiration
/// to a channel that stores nothing is accepted, then fails permanently at its one attempt with APNs'
/// `BadExpirationDate`; expiration 0 to the same channel is delivered.
#[tokio::test]
async fn a_non_zero_expiration_to_a_channel_that_stores_nothing_fails_at_apns() {
    let s = setup(false).await;
    let channel = create_channel_with(&s, TOKEN, 0).await;
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    for expiration in [later, 0] {
        let (status, v) = broadcast(
            &s,
            json!({"domain": TOKEN, "channel_id": channel, "payload": update(8), "expiration": expiration}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "expiration {expiration}: {v}");
    }
    let mainlog = s.dir.path().join("mainlog.ec");
    wait_for("both broadcasts to end", || {
        broadcast_lines(&mainlog, 2).len() == 2
    })
    .await;
    let lines = broadcast_lines(&mainlog, 2);
    let mut results: Vec<(&str, &str, &str)> = lines
        .iter()
        .map(|f| (f[5].as_str(), f[9].as_str(), f[10].as_str()))
        .collect();
    results.sort();
    assert_eq!(
        results,
        [("D", "", ""), ("P", "400", "BadExpirationDate")],
        "{lines:?}"
    );
}

/// `Idempotency-Key` on the broadcast route: the same key and body answer the first answer again (marked
/// `idempotent-replayed`) without a second broadcast; the same key with another body is `409` naming the key.
#[tokio::test]
async fn an_idempotency_key_replays_an_accepted_broadcast_and_refuses_another_body() {
    let s = setup(false).await;
    let channel = create_channel(&s, TOKEN).await;
    let client = reqwest::Client::new();
    let send = |body: String| {
        client
            .post(format!("http://{}/api/v1/broadcast", s.http))
            .bearer_auth(KEY)
            .header("content-type", "application/json")
            .header("idempotency-key", "bcast-1")
            .body(body)
            .send()
    };
    let body = json!({"domain": TOKEN, "channel_id": channel, "payload": update(9)}).to_string();
    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), StatusCode::ACCEPTED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: Value = first.json().await.unwrap();
    let again = send(body.clone()).await.unwrap();
    assert_eq!(again.status(), StatusCode::ACCEPTED);
    assert_eq!(
        again
            .headers()
            .get("idempotent-replayed")
            .map(|v| v.to_str().unwrap()),
        Some("true")
    );
    let again: Value = again.json().await.unwrap();
    assert_eq!(again, first, "the first answer, id included");
    let other = json!({"domain": TOKEN, "channel_id": channel, "payload": update(10)}).to_string();
    let conflict = send(other).await.unwrap();
    assert_eq!(conflict.status(), StatusCode::CONFLICT);
    let v: Value = conflict.json().await.unwrap();
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("\"bcast-1\"") && error.contains("another body"),
        "{error}"
    );
    // One broadcast was sent: the replay queued nothing.
    wait_for("the broadcast to finish", || {
        s.server.broadcasts.queued() == 0
    })
    .await;
    assert_eq!(broadcasts_in(&s.sim).len(), 1);
    let metrics = metrics_text(&client, &s.http).await;
    let line = format!(
        "herald_broadcasts_total{{domain=\"{TOKEN}\",outcome=\"delivered\",reason=\"\"}} 1\n"
    );
    assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
}

/// A broadcast whose expiration has passed is accepted, then failed without an attempt: one `P` line with the
/// notifications' reason and no status, nothing sent.
#[tokio::test]
async fn an_expired_broadcast_fails_without_an_attempt() {
    let s = setup(false).await;
    let channel = create_channel(&s, TOKEN).await;
    let (status, v) = broadcast(
        &s,
        json!({"domain": TOKEN, "channel_id": channel, "payload": update(7), "expiration": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let mainlog = s.dir.path().join("mainlog.ec");
    wait_for("the permanent failure", || {
        broadcast_lines(&mainlog, 2).iter().any(|f| f[5] == "P")
    })
    .await;
    let lines = broadcast_lines(&mainlog, 2);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0][7], "0", "no retry: {lines:?}");
    assert_eq!(lines[0][9], "", "no APNs status: {lines:?}");
    assert_eq!(
        lines[0][10], "Delivery not attempted (APNs expiration passed)",
        "{lines:?}"
    );
    assert_eq!(s.sim.stats().broadcast.accepted, 0);
}

#[tokio::test]
async fn bad_broadcasts_are_refused_at_the_door_naming_the_field() {
    let s = setup(false).await;
    let channel = "dHN0LXNyY2gtY2hubA==";
    let start = json!({"aps": {"timestamp": 1, "event": "start", "content-state": {},
                               "attributes-type": "T", "attributes": {}}});
    let cases = [
        (
            json!({"domain": TOKEN, "channel_id": channel, "payload": start}),
            "start",
        ),
        (
            json!({"domain": TOKEN, "channel_id": "not base64!", "payload": update(1)}),
            "channel_id",
        ),
        (
            json!({"domain": TOKEN, "channel_id": channel, "payload": update(1), "priority": 3}),
            "priority",
        ),
        (
            json!({"domain": "nowhere.example", "channel_id": channel, "payload": update(1)}),
            "nowhere.example",
        ),
        (json!({"domain": TOKEN, "channel_id": channel}), "payload"),
        // Routed to the binary gateway: no broadcast host to default to.
        (
            json!({"domain": BINARY, "channel_id": channel, "payload": update(1)}),
            "domain \"binary.example\" cannot send broadcasts: apn_broadcast_route is not set and the \
             domain's route apn://gateway.push.apple.com?port=2195 speaks the binary protocol",
        ),
    ];
    for (body, want) in cases {
        let (status, v) = broadcast(&s, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(error.contains(want), "{body}: {error}");
    }
    // A key repeated inside the payload: the strict check sees the payload as sent, and names the key.
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1/broadcast", s.http))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(format!(
            r#"{{"domain":"{TOKEN}","channel_id":"{channel}","payload":{{"aps":{{"event":"start","timestamp":1,"content-state":{{}},"event":"update"}}}}}}"#
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let v: Value = response.json().await.unwrap();
    let error = v["error"].as_str().unwrap_or_default();
    assert!(error.contains("repeats the key \"event\""), "{error}");
    assert_eq!(s.sim.stats().broadcast.accepted, 0);
    // Without the API key: refused.
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1/broadcast", s.http))
        .json(&json!({"domain": TOKEN, "channel_id": channel, "payload": update(1)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// A `herald serve` configuration with one token-auth domain whose broadcasts go to `bcast_port`.
fn daemon_config(dir: &Path, pki: &Pki, sim: &SimHandle, bcast_port: u16) -> std::path::PathBuf {
    let path = dir.join("serve.conf");
    let text = format!(
        r#"
spool_dir = "{spool}"
esmtp_listener {{ listen "127.0.0.1:0" {{ }} }}
http_listener {{ listen "127.0.0.1:0" {{ api_keys = ( "{KEY}" ) }} }}
domain "{TOKEN}" {{
{token}  apn_channel_route = "https://127.0.0.1:{manage}"
  apn_broadcast_route = "https://127.0.0.1:{bcast_port}"
  retry_interval = 1
}}
"#,
        spool = dir.join("serve-spool").display(),
        token = token_auth_options(pki, sim.addrs.h2.port(), TOPIC),
        manage = sim.addrs.management.port(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Acknowledged means durable: a broadcast accepted while its host is down, then `kill -9`, is delivered by the
/// next start, once.
#[tokio::test]
async fn a_broadcast_acknowledged_before_a_kill_9_is_delivered_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim = start_sim(&pki, false).await;
    let config = daemon_config(dir.path(), &pki, &sim, free_port());
    let daemon = support::daemon::Daemon::start(&config);
    let client = reqwest::Client::new();
    let created: Value = client
        .post(format!("http://{}/api/v1/channels", daemon.http))
        .bearer_auth(KEY)
        .json(&json!({"domain": TOKEN, "message_storage_policy": 1}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let channel = created["channel_id"].as_str().unwrap().to_owned();
    let response = client
        .post(format!("http://{}/api/v1/broadcast", daemon.http))
        .bearer_auth(KEY)
        .json(&json!({"domain": TOKEN, "channel_id": channel, "payload": update(6)}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    daemon.kill9();
    assert!(broadcasts_in(&sim).is_empty());
    let config = daemon_config(dir.path(), &pki, &sim, sim.addrs.broadcast.port());
    let daemon = support::daemon::Daemon::start(&config);
    wait_for("the broadcast after the restart", || {
        !broadcasts_in(&sim).is_empty()
    })
    .await;
    let got = broadcasts_in(&sim);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].channel_id.as_deref(), Some(channel.as_str()));
    // Delivered, then a graceful stop: the next start finds nothing stored, so nothing is sent twice.
    let deadline = Instant::now() + WAIT;
    loop {
        let m = metrics_text(&client, &daemon.http).await;
        if m.contains("herald_broadcasts_queued 0") {
            break;
        }
        assert!(Instant::now() < deadline, "the broadcast never finished");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    daemon.terminate();
    let daemon = support::daemon::Daemon::start(&config);
    let metrics = metrics_text(&client, &daemon.http).await;
    assert!(
        metrics.contains("herald_broadcasts_queued 0"),
        "a delivered broadcast was stored again"
    );
    assert_eq!(broadcasts_in(&sim).len(), 1);
}

/// `herald send --channel ID` sends one broadcast through the REST API and prints its id, the payload byte for byte
/// (spacing and key order kept); a refusal exits non-zero with the server's words, and a payload with a repeated
/// key is refused as the REST route refuses it (not sent with one of the two values).
#[tokio::test]
async fn herald_send_channel_sends_one_broadcast() {
    let s = setup(false).await;
    let channel = create_channel(&s, TOKEN).await;
    let url = format!("http://{}", s.http);
    let send = |channel: String, payload: &'static str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["send", "--url", &url, "--api-key", KEY, "--domain", TOKEN])
            .args([
                "--channel",
                &channel,
                "--priority",
                "5",
                "--payload",
                payload,
            ])
            .output()
    };
    let payload = r#"{"aps": {"timestamp": 1700000000, "event": "update", "content-state": {"score": "1-0"}}}"#;
    let ok = send(channel.clone(), payload).await.unwrap();
    let stdout = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout.contains("accepted, id "), "{stdout}");
    wait_for("the broadcast sent by herald send", || {
        broadcasts_in(&s.sim)
            .iter()
            .any(|r| r.channel_id.as_deref() == Some(channel.as_str()) && r.priority == 5)
    })
    .await;
    assert_eq!(broadcasts_in(&s.sim)[0].payload, payload);
    let repeated = send(
        channel.clone(),
        r#"{"aps":{"event":"update","timestamp":1700000000,"content-state":{"score":"1-0"},"event":"end"}}"#,
    )
    .await
    .unwrap();
    // A refusal is reported on stderr, as the other refusals of `herald send` (docs/api.md, broadcasts).
    let stderr = String::from_utf8_lossy(&repeated.stderr);
    assert!(!repeated.status.success(), "{stderr}");
    assert!(
        stderr.contains("refused") && stderr.contains("repeats the key \"event\""),
        "{stderr}"
    );
    let refused = send(
        channel,
        r#"{"aps":{"event":"start","timestamp":1,"content-state":{},"attributes-type":"T","attributes":{}}}"#,
    )
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("refused") && stderr.contains("start"),
        "{stderr}"
    );
    assert_eq!(broadcasts_in(&s.sim).len(), 1, "only the first was sent");
}

/// Every reason of the broadcast error table, answered by the simulator to one broadcast each
/// (docs/apns-protocol.md#broadcast-decisions): a permanent one fails the broadcast after one attempt with one `P`
/// line; a temporary one (429, 500, 503, Shutdown) gives a `T` line and the retry a second later is delivered;
/// `ExpiredProviderToken` drops the connection, and the token here is too young to be renewed (APNs limits
/// renewals to one per 20 minutes), so it is a temporary failure too: `T`, then delivered on the schedule.
#[tokio::test]
async fn every_broadcast_reason_is_classified_permanent_ones_not_retried_temporary_ones_retried() {
    use herald_apns::broadcast::BroadcastReason;
    use herald_apns::outcome::FailureClass;
    let s = setup(false).await;
    let channel = create_channel(&s, TOKEN).await;
    let mainlog = s.dir.path().join("mainlog.ec");
    for (n, reason) in BroadcastReason::ALL.into_iter().enumerate() {
        s.sim.fail_next_broadcasts(&[reason]);
        let id = format!("00000000-0000-4000-8000-{:012x}", n + 1);
        let (status, v) = broadcast(
            &s,
            json!({"domain": TOKEN, "channel_id": channel, "payload": update(n as u32), "apns_id": id}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{reason:?}: {v}");
        let lines_of = || -> Vec<Vec<String>> {
            broadcast_lines(&mainlog, 2)
                .into_iter()
                .filter(|f| f[1] == id)
                .collect()
        };
        let done = |l: &Vec<Vec<String>>| l.iter().any(|f| f[5] == "D" || f[5] == "P");
        wait_for(
            &format!("the end of the broadcast answered {reason:?}"),
            || done(&lines_of()),
        )
        .await;
        let kinds: Vec<String> = lines_of().iter().map(|f| f[5].clone()).collect();
        match reason.class() {
            FailureClass::Permanent => {
                assert_eq!(kinds, ["P"], "{reason:?}");
                assert_eq!(lines_of()[0][10], reason.as_str(), "{reason:?}");
            }
            FailureClass::Transient | FailureClass::RefreshTokenAndRetry => {
                assert_eq!(kinds, ["T", "D"], "{reason:?}")
            }
            _ => assert_eq!(kinds, ["D"], "{reason:?}"),
        }
    }
}
