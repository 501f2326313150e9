//! The channel and broadcast doors over real sockets, in front of the APNs simulator (docs/api.md "Channels" and
//! "Broadcasts", docs/apns-protocol.md §3.2.1 and §6.2):
//!
//! - A domain whose `apn_topic` ends in another push type's suffix (`.push-type.widgets`) manages channels and
//!   broadcasts under the bare bundle id, the one its Live Activity device pushes are sent under: the simulator
//!   holds the channel under it and records the broadcast's path with it.
//! - A channel create that gives a field twice is refused naming the field, and nothing is created.
//! - A read or delete whose path names no channel is a `400` saying the id is missing; a broadcast on a listener
//!   that does not serve `push` is a `404` naming the service, as the other push routes there.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{Pki, RecordProtocol, SimConfig, SimHandle, Simulator};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use support::token_auth_options;

/// The app's bundle id, the only topic of the test PKI.
const BUNDLE: &str = "com.example.doors";
/// A token-authenticated domain whose `apn_topic` is [`BUNDLE`] with the widgets suffix.
const WIDGETS: &str = "widgets.example";
const KEY: &str = "channel-doors-test-key";
const WAIT: Duration = Duration::from_secs(30);

struct Setup {
    _dir: tempfile::TempDir,
    server: Arc<Server>,
    sim: SimHandle,
    /// The listener that serves everything.
    http: String,
    /// The listener with `http_services = ( inject )`.
    inject_only: String,
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
  listen "127.0.0.2:0" {{ api_keys = ( "{KEY}" ) http_services = ( inject ) }}
}}
domain "{WIDGETS}" {{
{widgets}  apn_channel_route = "https://127.0.0.1:{manage}"
  apn_broadcast_route = "https://127.0.0.1:{bcast}"
}}
"#,
            spool = dir.path().join("spool").display(),
            widgets = token_auth_options(
                &pki,
                sim.addrs.h2.port(),
                &format!("{BUNDLE}.push-type.widgets")
            ),
            manage = sim.addrs.management.port(),
            bcast = sim.addrs.broadcast.port(),
        ),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let addrs = server.addrs().await.http;
    let on = |ip: &str| {
        addrs
            .iter()
            .find(|a| a.ip().to_string() == ip)
            .unwrap()
            .to_string()
    };
    Setup {
        http: on("127.0.0.1"),
        inject_only: on("127.0.0.2"),
        _dir: dir,
        server,
        sim,
    }
}

/// One call with the API key and `body` sent as it is: (status, JSON answer or Null when empty).
async fn call(addr: &str, method: Method, path: &str, body: Option<&str>) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .request(method, format!("http://{addr}{path}"))
        .bearer_auth(KEY);
    if let Some(b) = body {
        request = request
            .header("content-type", "application/json")
            .body(b.to_owned());
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

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn update() -> Value {
    json!({"aps": {"timestamp": 1_700_000_000, "event": "update", "content-state": {"score": 1}}})
}

/// docs/apns-protocol.md §3.2.1 (a topic is the bundle id plus the push type's suffix) and §6.2 (the path carries
/// the bare bundle id): a device push of type liveactivity, the channel it would share and a broadcast to that
/// channel all name the same app.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_with_another_push_types_suffix_broadcasts_under_the_bare_bundle_id() {
    let s = setup().await;
    let token = "ab".repeat(32);
    let push = json!({"domain": WIDGETS, "tokens": [token], "push_type": "liveactivity", "payload": update()});
    let (status, v) = call(
        &s.http,
        Method::POST,
        "/api/v1/push",
        Some(&push.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    wait_for("the device push in the simulator's record", || {
        s.sim.record().iter().any(|r| r.token == token)
    })
    .await;
    let device = s.sim.record().into_iter().find(|r| r.token == token);
    let device_topic = device.map(|r| r.topic).unwrap_or_default();
    assert_eq!(device_topic, format!("{BUNDLE}.push-type.liveactivity"));

    let create = json!({"domain": WIDGETS, "message_storage_policy": 1}).to_string();
    let (status, v) = call(&s.http, Method::POST, "/api/v1/channels", Some(&create)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["bundle_id"], BUNDLE, "{v}");
    let channel = v["channel_id"].as_str().unwrap().to_owned();
    assert_eq!(s.sim.channels(BUNDLE), vec![channel.clone()]);

    let broadcast = json!({"domain": WIDGETS, "channel_id": channel, "payload": update()});
    let (status, v) = call(
        &s.http,
        Method::POST,
        "/api/v1/broadcast",
        Some(&broadcast.to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let delivered = |sim: &SimHandle| {
        sim.record().into_iter().find(|r| {
            r.protocol == RecordProtocol::Broadcast
                && r.channel_id.as_deref() == Some(channel.as_str())
        })
    };
    wait_for("the broadcast in the simulator's record", || {
        delivered(&s.sim).is_some()
    })
    .await;
    // The simulator records the bundle id of the path `/4/broadcasts/apps/<bundle>`.
    assert_eq!(delivered(&s.sim).map(|r| r.topic).as_deref(), Some(BUNDLE));
    assert!(
        s.sim.stats().broadcast.rejected.is_empty(),
        "{:?}",
        s.sim.stats().broadcast.rejected
    );
    s.server.shutdown(Duration::from_secs(1)).await;
}

/// A channel's storage policy is fixed when it is created (docs/apns-protocol.md §6.2): a create naming it twice is
/// refused, as a broadcast naming a field twice is, rather than the last one applying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_naming_a_field_twice_is_refused() {
    let s = setup().await;
    let body = format!(
        r#"{{"domain":"{WIDGETS}","message_storage_policy":1,"message_storage_policy":0}}"#
    );
    let (status, v) = call(&s.http, Method::POST, "/api/v1/channels", Some(&body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(
        v["error"],
        "message_storage_policy: given more than once; send each field once"
    );
    assert_eq!(v["domain"], WIDGETS);
    assert!(s.sim.channels(BUNDLE).is_empty(), "nothing was created");
    s.server.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_channel_id_and_an_unserved_broadcast_are_named() {
    let s = setup().await;
    for method in [Method::GET, Method::DELETE] {
        let (status, v) = call(
            &s.http,
            method.clone(),
            &format!("/api/v1/channels/?domain={WIDGETS}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method}: {v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(error.starts_with("channel id: missing"), "{method}: {v}");
        assert_eq!(v["domain"], WIDGETS, "{method}: {v}");
    }
    // Without a domain, the parameter is named first, as for a read or delete of a bad id.
    let (status, v) = call(&s.http, Method::GET, "/api/v1/channels/", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.starts_with("domain: missing")),
        "{v}"
    );

    // The listener that serves only inject names the push service for every push route, broadcast included.
    let broadcast =
        json!({"domain": WIDGETS, "channel_id": "dHN0LXNyY2gtY2hubA==", "payload": update()});
    for (method, path) in [
        (Method::POST, "/api/v1/broadcast"),
        (Method::POST, "/api/v1/channels"),
        (Method::POST, "/api/v1/push"),
    ] {
        let (status, v) = call(
            &s.inject_only,
            method.clone(),
            path,
            Some(&broadcast.to_string()),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert_eq!(
            error,
            format!(
                "{method} {path}: this listener does not serve \"push\" (see http_services in its listen stanza)"
            ),
            "{path}"
        );
    }
    assert!(s.sim.record().is_empty());
    s.server.shutdown(Duration::from_secs(1)).await;
}

/// Requests at the edges are refused in the channel errors' shape (docs/api.md "Channels"), naming what is wrong
/// and carrying the domain whenever the request names one, and nothing is created: a string escaping half a
/// surrogate pair alone is said to be no valid Unicode, as `POST /api/v1/push` says it (never taken for `null`); a
/// member name holding one is named as such; a channel id that is no UTF-8 text once percent-decoded is named as
/// sent; a query parameter given twice is named rather than one of its values applying.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_requests_are_refused_naming_what_is_wrong() {
    let s = setup().await;
    let unpaired = "the string holds an unpaired surrogate escape (one of \\ud800 to \\udfff without its pair), which is not valid Unicode";
    let cases = [
        (
            r#"{"domain":"\ud800","message_storage_policy":1}"#.to_owned(),
            format!("domain: {unpaired}"),
            None,
        ),
        (
            format!(r#"{{"domain":"{WIDGETS}","message_storage_policy":1,"push_type":"\ud800"}}"#),
            format!("push_type: {unpaired}"),
            Some(WIDGETS),
        ),
    ];
    for (body, error, domain) in cases {
        let (status, v) = call(&s.http, Method::POST, "/api/v1/channels", Some(&body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert_eq!(v["error"], error.as_str(), "{body}");
        assert_eq!(v["domain"].as_str(), domain, "{body}: {v}");
    }
    let body = format!(r#"{{"domain":"{WIDGETS}","message_storage_policy":1,"\ud800":1}}"#);
    let (status, v) = call(&s.http, Method::POST, "/api/v1/channels", Some(&body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with("a member name holds an unpaired surrogate escape"),
        "{v}"
    );
    // The push route says the same of the same string.
    let push = r#"{"domain":"\ud800","tokens":["aa"],"payload":{}}"#;
    let (status, v) = call(&s.http, Method::POST, "/api/v1/push", Some(push)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let error = v["error"].as_str().unwrap_or_default();
    assert!(
        error.starts_with(&format!("domain: {unpaired} at line 1 column ")),
        "{v}"
    );

    for method in [Method::GET, Method::DELETE] {
        let (status, v) = call(
            &s.http,
            method.clone(),
            &format!("/api/v1/channels/%ff?domain={WIDGETS}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{method}: {v}");
        let error = v["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with(
                "channel id: \"%ff\" (as sent) is not UTF-8 text once percent-decoded"
            ),
            "{method}: {v}"
        );
        assert_eq!(v["domain"], WIDGETS, "{method}: {v}");
    }
    for path in [
        format!("/api/v1/channels?domain={WIDGETS}&domain=other.example"),
        format!("/api/v1/channels/dHN0LXNyY2gtY2hubA%3D%3D?domain={WIDGETS}&domain={WIDGETS}"),
    ] {
        let (status, v) = call(&s.http, Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {v}");
        assert_eq!(
            v["error"], "domain: given more than once; give each parameter once",
            "{path}"
        );
        assert!(v.get("domain").is_none(), "{path}: {v}");
    }
    assert!(s.sim.channels(BUNDLE).is_empty(), "nothing was created");
    s.server.shutdown(Duration::from_secs(1)).await;
}
