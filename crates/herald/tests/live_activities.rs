//! Live Activities through the REST door (docs/apns-protocol.md §5.3 rule 9, §6.1): start (to a push-to-start
//! token, which is a device token like any other), update and end are accepted and reach the simulator with the
//! `.push-type.liveactivity` topic suffix added to the domain's bare topic; a malformed one is refused at the door
//! with the field named, and so is a Live Activity for a domain routed to the binary protocol or authenticated by a
//! client certificate (Live Activities need token authentication). Live Activity push tokens (80 bytes) are
//! delivered over HTTP/2 and refused on the binary protocol, which takes 32-byte tokens only.

mod support;

use std::sync::Arc;
use std::time::Duration;

use herald::inbound::accept::{Intake, NotDurable};
use herald::inbound::rest;
use herald::logs::Logs;
use herald::queue::message::IdGenerator;
use herald::queue::{Engine, EngineLimits, MemoryInvalidTokens, StaticResolver};
use herald_conf::{Acl, HttpServices, ListenAddr, ListenerKind, ListenerSettings, McmtReception};
use herald_sim::{Pki, SimConfig, Simulator};
use serde_json::{Value, json};
use support::token_auth_settings;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "com.example.live";
const DOMAIN: &str = "live.example";

fn listener_settings() -> ListenerSettings {
    ListenerSettings {
        kind: ListenerKind::Http,
        address: "127.0.0.1:0".into(),
        addr: ListenAddr::Tcp("127.0.0.1:0".parse().unwrap()),
        enabled: true,
        mcmt_reception: McmtReception::Passthru,
        tls_certificate: None,
        tls_key: None,
        acl: Acl {
            allow: vec![],
            deny: vec![],
        },
        api_keys: vec![],
        admin_keys: vec![],
        dashboard_hosts: vec![],
        auth_failure_limit: 5,
        max_request_size: None,
        http_services: HttpServices::default(),
        file_mode: 0o644,
        peers: vec![],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_update_end_accepted_and_malformed_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
        .await
        .unwrap();
    let resolver =
        Arc::new(StaticResolver::default().with(token_auth_settings(&pki, &sim, DOMAIN, TOPIC)));
    let engine = Arc::new(Engine::new(
        resolver.clone(),
        Logs::default(),
        Arc::new(MemoryInvalidTokens::default()),
        EngineLimits::default(),
    ));
    let intake = Arc::new(Intake::new(
        resolver,
        Arc::new(NotDurable),
        engine.clone(),
        IdGenerator::new(3),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stopped = CancellationToken::new();
    tokio::spawn(rest::serve(
        listener,
        listener_settings(),
        intake,
        None,
        stopped,
    ));

    let push_to_start = "ab".repeat(32);
    let activity = "cd".repeat(32);
    let start = json!({"aps": {"event": "start", "timestamp": 1_700_000_000, "alert": {"title": "Kick-off"},
        "attributes-type": "MatchAttributes", "attributes": {"home": "A", "away": "B"},
        "content-state": {"score": "0-0"}, "input-push-channel": "dHN0LWNoYW5uZWw="}});
    let update = json!({"aps": {"event": "update", "timestamp": 1_700_000_100,
        "content-state": {"score": "1-0"}, "stale-date": 1_700_003_600}});
    let end = json!({"aps": {"event": "end", "timestamp": 1_700_000_200,
        "content-state": {"score": "2-1"}, "dismissal-date": 1_700_007_200}});
    let bad = json!({"aps": {"event": "start", "timestamp": 1_700_000_000, "alert": "x", "attributes": {}}});
    let notifications = json!([
        {"token": push_to_start, "payload": start},
        {"token": activity, "payload": update},
        {"token": activity, "payload": end},
        {"token": activity, "payload": bad},
    ]);
    let body = json!({"domain": DOMAIN, "push_type": "liveactivity", "priority": 10,
        "notifications": notifications});
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/push"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{answer}");
    let results = answer["results"].as_array().unwrap();
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["accepted", "accepted", "accepted", "rejected"],
        "{answer}"
    );
    let reason = results[3]["reason"].as_str().unwrap();
    assert!(reason.contains("attributes-type"), "{reason}");

    let seen = sim.wait_for_records(3, Duration::from_secs(60)).await;
    assert_eq!(seen, 3);
    let records = sim.record();
    for r in &records {
        assert_eq!(r.topic, format!("{TOPIC}.push-type.liveactivity"));
        assert_eq!(r.push_type.as_deref(), Some("liveactivity"));
    }
    let events: Vec<String> = records
        .iter()
        .map(|r| serde_json::from_str::<Value>(&r.payload).unwrap()["aps"]["event"].to_string())
        .collect();
    assert_eq!(events.len(), 3);
    for e in ["\"start\"", "\"update\"", "\"end\""] {
        assert!(events.iter().any(|x| x == e), "{events:?}");
    }
    assert!(records.iter().any(|r| r.token == push_to_start));
}

/// A Live Activity's push token is 80 bytes (160 hex digits), longer than a device token of the binary era: HTTP/2
/// takes 32 to 100 bytes (docs/apns-protocol.md#size-limits). Updates to an 80-byte and a 54-byte token go through
/// the REST door and reach the simulator whole; a 31-byte token (one cut short) and a 101-byte one are refused at the
/// door, naming the sizes taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_activity_tokens_of_80_bytes_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
        .await
        .unwrap();
    let resolver =
        Arc::new(StaticResolver::default().with(token_auth_settings(&pki, &sim, DOMAIN, TOPIC)));
    let addr = rest_door(resolver).await;
    let activity = "9f".repeat(80);
    let reported = "4e".repeat(54);
    let truncated = "ab".repeat(31);
    let too_long = "ab".repeat(101);
    let update = json!({"aps": {"event": "update", "timestamp": 1_700_000_100,
        "content-state": {"score": "1-0"}}});
    let body = json!({"domain": DOMAIN, "push_type": "liveactivity", "priority": 10,
        "tokens": [activity, reported, truncated, too_long], "payload": update});
    let response = reqwest::Client::new()
        .post(format!("http://{addr}/api/v1/push"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    let answer: Value = response.json().await.unwrap();
    assert_eq!(status, reqwest::StatusCode::ACCEPTED, "{answer}");
    let results = answer["results"].as_array().unwrap();
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        statuses,
        ["accepted", "accepted", "rejected", "rejected"],
        "{answer}"
    );
    for (result, bytes) in results[2..].iter().zip([31, 101]) {
        let reason = result["reason"].as_str().unwrap_or_default();
        assert!(
            reason.contains(&format!("device token is {bytes} bytes"))
                && reason.contains("32 to 100 bytes"),
            "{reason}"
        );
    }

    assert_eq!(sim.wait_for_records(2, Duration::from_secs(60)).await, 2);
    let records = sim.record();
    let mut tokens: Vec<&str> = records.iter().map(|r| r.token.as_str()).collect();
    tokens.sort_unstable();
    assert_eq!(tokens, [reported.as_str(), activity.as_str()]);
    for r in &records {
        assert_eq!(r.topic, format!("{TOPIC}.push-type.liveactivity"));
        assert_eq!(r.push_type.as_deref(), Some("liveactivity"));
    }
}

/// A REST listener in front of an engine that delivers what `resolver` knows; its address.
async fn rest_door(resolver: Arc<StaticResolver>) -> std::net::SocketAddr {
    let engine = Arc::new(Engine::new(
        resolver.clone(),
        Logs::default(),
        Arc::new(MemoryInvalidTokens::default()),
        EngineLimits::default(),
    ));
    let intake = Arc::new(Intake::new(
        resolver,
        Arc::new(NotDurable),
        engine,
        IdGenerator::new(4),
    ));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(rest::serve(
        listener,
        listener_settings(),
        intake,
        None,
        CancellationToken::new(),
    ));
    addr
}

/// The binary protocol has no push type and only certificate authentication: a Live Activity for a domain routed
/// to it is refused at the door (rules 9 and 10), naming the push type and what the domain would need, while an
/// alert for the same domain is accepted. The binary protocol takes 32-byte tokens only, so an alert to an 80-byte
/// Live Activity token is refused there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_activity_for_a_binary_protocol_domain_is_refused_at_the_door() {
    use herald::outbound::settings::RouteProtocol;
    use herald_apns::binary::BinaryFormat;
    use herald_apns::client::connect::Endpoint;
    use herald_apns::identity::{RootSource, client_config};
    const BINARY: &str = "binary.example";
    let tls = client_config(None, RootSource::NoVerify, false).unwrap();
    let settings = support::test_settings(
        BINARY,
        TOPIC,
        RouteProtocol::Binary(BinaryFormat::Frame),
        Endpoint::new("127.0.0.1".to_owned(), support::free_port()),
        tls,
        None,
    );
    let addr = rest_door(Arc::new(StaticResolver::default().with(settings))).await;
    let update = json!({"aps": {"event": "update", "timestamp": 1_700_000_100, "content-state": {"score": "1-0"}}});
    let client = reqwest::Client::new();
    let push = |body: Value| {
        client
            .post(format!("http://{addr}/api/v1/push"))
            .json(&body)
            .send()
    };
    let token = "cd".repeat(32);
    let answer: Value = push(
        json!({"domain": BINARY, "push_type": "liveactivity", "priority": 10,
        "tokens": [token], "payload": update}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let result = &answer["results"][0];
    assert_eq!(result["status"], "rejected", "{answer}");
    let reason = result["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("push type liveactivity needs token (JWT) authentication")
            && reason.contains("routed to the binary protocol")
            && reason.contains("https://"),
        "{reason}"
    );
    let answer: Value = push(json!({"domain": BINARY, "tokens": [token],
        "payload": {"aps": {"alert": "hi"}}}))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(answer["results"][0]["status"], "accepted", "{answer}");
    let answer: Value = push(json!({"domain": BINARY, "tokens": ["cd".repeat(80)],
        "payload": {"aps": {"alert": "hi"}}}))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let result = &answer["results"][0];
    assert_eq!(result["status"], "rejected", "{answer}");
    assert_eq!(
        result["reason"],
        "device token: device token is 80 bytes; the binary protocol needs exactly 32",
        "{answer}"
    );
}

/// A domain authenticated by a client certificate (docs/live-activities.md, docs/apns-protocol.md#rule-10): a Live
/// Activity is refused at the door, with or without a topic and even when the certificate lists the Live Activity
/// topic, naming the push type, the route and the signing key it lacks; a Live Activity payload sent without a push
/// type is an alert with nothing to show, refused saying it looks like a Live Activity; nothing reaches the
/// simulator, and an alert for the same domain is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_domain_refuses_live_activities_at_the_door() {
    use herald_sim::{CertVariant, ClientCertSpec};
    const KEY: &str = "live-activity-test-key";
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let mut spec = ClientCertSpec::for_topic(TOPIC, CertVariant::Universal);
    spec.topics.push(format!("{TOPIC}.push-type.liveactivity"));
    let client = pki.issue_client(&spec, "live").unwrap();
    let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
        .await
        .unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            r#"
spool_dir = "{spool}"
http_listener {{ listen "127.0.0.1:0" {{ api_keys = ( "{KEY}" ) }} }}
domain "{DOMAIN}" {{
  delivery_method = apn
  routes = ( "https://127.0.0.1:{port}" )
  tls_verify = ca
  tls_ca = "{ca}"
  tls_certificate = "{cert}"
  tls_key = "{key}"
}}
"#,
            spool = dir.path().join("spool").display(),
            port = sim.addrs.h2.port(),
            ca = pki.manifest.ca_cert.display(),
            cert = client.cert.display(),
            key = client.key.display(),
        ),
    )
    .unwrap();
    let server = herald::server::Server::start(&config).await.unwrap();
    let http = server.addrs().await.http[0].to_string();
    let client = reqwest::Client::new();
    let push = |body: Value| {
        client
            .post(format!("http://{http}/api/v1/push"))
            .bearer_auth(KEY)
            .json(&body)
            .send()
    };
    let update = json!({"aps": {"event": "update", "timestamp": 1_700_000_100, "content-state": {"score": "1-0"}}});
    let live_activities = [
        json!({"domain": DOMAIN, "push_type": "liveactivity", "priority": 10,
            "tokens": ["ef".repeat(32)], "payload": update}),
        json!({"domain": DOMAIN, "push_type": "liveactivity", "priority": 10,
            "topic": format!("{TOPIC}.push-type.liveactivity"), "tokens": ["ef".repeat(32)], "payload": update}),
    ];
    for body in live_activities {
        let answer: Value = push(body.clone()).await.unwrap().json().await.unwrap();
        let result = &answer["results"][0];
        assert_eq!(result["status"], "rejected", "{body}: {answer}");
        let reason = result["reason"].as_str().unwrap_or_default();
        assert!(
            reason.starts_with("push type liveactivity needs token (JWT) authentication")
                && reason.contains("HTTP/2 route authenticates with a client certificate")
                && reason.contains("apn_key"),
            "{body}: {reason}"
        );
    }
    // Without a push type the payload does not make it a Live Activity (docs/apns-protocol.md#push-types): it is an
    // alert with nothing to show, refused with a text that says what it looks like and what to name.
    let body = json!({"domain": DOMAIN, "tokens": ["ef".repeat(32)], "payload": update});
    let answer: Value = push(body.clone()).await.unwrap().json().await.unwrap();
    let result = &answer["results"][0];
    assert_eq!(result["status"], "rejected", "{body}: {answer}");
    let reason = result["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("an alert push needs alert, badge or sound in aps")
            && reason.contains("looks like a Live Activity")
            && reason.contains("push type liveactivity")
            && reason.contains("token authentication"),
        "{body}: {reason}"
    );

    let answer: Value = push(json!({"domain": DOMAIN, "tokens": ["ef".repeat(32)],
        "payload": {"aps": {"alert": "kick-off"}}}))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    assert_eq!(answer["results"][0]["status"], "accepted", "{answer}");
    assert_eq!(sim.wait_for_records(1, Duration::from_secs(60)).await, 1);
    let records = sim.record();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].push_type.as_deref(), Some("alert"));
    server.shutdown(Duration::from_secs(5)).await;
}
