//! Live Activities through the REST door (docs/apns-protocol.md §5.3 rule 9, §6.1): start (to a push-to-start
//! token, which is a device token like any other), update and end are accepted and reach the simulator with the
//! `.push-type.liveactivity` topic suffix added to the domain's bare topic; a malformed one is refused at the door
//! with the field named, and so is a Live Activity for a domain routed to the binary protocol. A certificate domain
//! without `apn_topic` sends its Live Activities with the certificate's bundle id and the suffix.

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

/// The binary protocol has no push type: a Live Activity for a domain routed to it is refused at the door (rule
/// 9), naming the push type and what the domain would need, while an alert for the same domain is accepted.
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
        reason.contains("liveactivity pushes need HTTP/2") && reason.contains("binary protocol"),
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
}

/// A domain authenticated by a client certificate and configured without `apn_topic`: a Live Activity takes the
/// certificate's bundle id with the `.push-type.liveactivity` suffix as its topic (without a topic, APNs' default is
/// the bare bundle id, which a Live Activity cannot use), and reaches the simulator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_domain_without_apn_topic_sends_live_activities_with_the_suffixed_topic() {
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
    let update = json!({"aps": {"event": "update", "timestamp": 1_700_000_100, "content-state": {"score": "1-0"}}});
    let answer: Value = client
        .post(format!("http://{http}/api/v1/push"))
        .bearer_auth(KEY)
        .json(
            &json!({"domain": DOMAIN, "push_type": "liveactivity", "priority": 10,
            "tokens": ["ef".repeat(32)], "payload": update}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(answer["results"][0]["status"], "accepted", "{answer}");
    let id = answer["results"][0]["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let state = loop {
        let v: Value = client
            .get(format!("http://{http}/api/v1/notifications/{id}"))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap_or(Value::Null);
        if v["state"] == "delivered" || v["state"] == "failed" {
            break v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{id} never finished: {v}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(state["state"], "delivered", "{state}");
    let records = sim.record();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0].topic, format!("{TOPIC}.push-type.liveactivity"));
    assert_eq!(records[0].push_type.as_deref(), Some("liveactivity"));
    server.shutdown(Duration::from_secs(5)).await;
}
