//! The REST listener over real sockets: `/api/v1/push` (both forms) and `/v1.0/inject` deliver to the APNs
//! simulator byte for byte; every refusal has its status and text; address lists, API keys, request size, HTTPS;
//! and `docs/openapi.yaml` documents exactly the routes the server answers.

mod support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::inbound::accept::{BoxFuture, Durable, Intake, NotDurable};
use herald::inbound::doors::{AddressLists, DoorLimits};
use herald::inbound::rest;
use herald::logs::Logs;
use herald::logs::file::LogFile;
use herald::logs::mainlog::MainLog;
use herald::queue::message::{IdGenerator, Notification};
use herald::queue::{Engine, EngineLimits, MemoryInvalidTokens, StaticResolver};
use herald_conf::{
    Acl, Cidr, HttpServices, ListenAddr, ListenerKind, ListenerSettings, McmtReception,
};
use herald_sim::record::DeliveryRecord;
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::token_auth_settings;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "com.example.rest";
const DOMAIN: &str = "apps.example";
const WAIT: Duration = Duration::from_secs(60);

fn token(i: usize) -> String {
    format!("{:064x}", 0x7e57_0000_0000u64 + i as u64)
}

/// A simulator, an engine delivering `DOMAIN` to it, and a REST listener in front.
struct Harness {
    dir: tempfile::TempDir,
    pki: Pki,
    sim: SimHandle,
    engine: Arc<Engine>,
    logs: Logs,
    mainlog: PathBuf,
    addr: SocketAddr,
    tls: bool,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

/// Listener settings with nothing configured.
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

impl Harness {
    async fn start(adjust: impl FnOnce(&mut ListenerSettings, &Pki)) -> Harness {
        Harness::start_with(adjust, Arc::new(NotDurable)).await
    }

    async fn start_with(
        adjust: impl FnOnce(&mut ListenerSettings, &Pki),
        durable: Arc<dyn Durable>,
    ) -> Harness {
        Harness::start_limited(adjust, durable, None).await
    }

    /// A harness whose listener is held to `limits` (with the listener's address lists at connect), else the
    /// defaults.
    async fn start_limited(
        adjust: impl FnOnce(&mut ListenerSettings, &Pki),
        durable: Arc<dyn Durable>,
        limits: Option<DoorLimits>,
    ) -> Harness {
        Harness::start_engine(adjust, durable, limits, EngineLimits::default()).await
    }

    /// [`Harness::start_limited`] with an engine held to `engine_limits`.
    async fn start_engine(
        adjust: impl FnOnce(&mut ListenerSettings, &Pki),
        durable: Arc<dyn Durable>,
        limits: Option<DoorLimits>,
        engine_limits: EngineLimits,
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
        let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
            .await
            .unwrap();
        let mainlog = dir.path().join("mainlog.ec");
        let logs = Logs {
            mainlog: vec![Arc::new(MainLog::new(
                LogFile::open(&mainlog, 0o644).unwrap(),
            ))],
            apnlog: vec![],
            recent: None,
        };
        let resolver = Arc::new(
            StaticResolver::default().with(token_auth_settings(&pki, &sim, DOMAIN, TOPIC)),
        );
        let engine = Arc::new(Engine::new(
            resolver.clone(),
            logs.clone(),
            Arc::new(MemoryInvalidTokens::default()),
            engine_limits,
        ));
        let intake = Arc::new(Intake::new(
            resolver,
            durable,
            engine.clone(),
            IdGenerator::new(7),
        ));
        let mut settings = listener_settings();
        adjust(&mut settings, &pki);
        let tls = rest::tls_config(&settings).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let is_tls = tls.is_some();
        let server = match limits {
            None => tokio::spawn(rest::serve(listener, settings, intake, tls, stopped)),
            Some(limits) => {
                let limits = Arc::new(DoorLimits {
                    addresses: Some(AddressLists::of(&settings)),
                    ..limits
                });
                let app = rest::router(
                    rest::RestState::new(settings, intake.clone()).with_limits(limits.clone()),
                );
                tokio::spawn(rest::serve_limited(
                    listener, app, intake, tls, limits, stopped,
                ))
            }
        };
        Harness {
            dir,
            pki,
            sim,
            engine,
            logs,
            mainlog,
            addr,
            tls: is_tls,
            stop,
            server,
        }
    }

    fn url(&self, path: &str) -> String {
        if self.tls {
            format!("https://localhost:{}{path}", self.addr.port())
        } else {
            format!("http://{}{path}", self.addr)
        }
    }

    fn client(&self) -> reqwest::Client {
        let mut builder = reqwest::Client::builder().resolve("localhost", self.addr);
        if self.tls {
            let pem = std::fs::read(&self.pki.manifest.ca_cert).unwrap();
            builder = builder.tls_certs_only([reqwest::Certificate::from_pem(&pem).unwrap()]);
        }
        builder.build().unwrap()
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        let response = self
            .client()
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text:?}"));
        (status, value)
    }

    async fn post_raw(&self, path: &str, body: &'static str) -> (StatusCode, Value) {
        let response = self
            .client()
            .post(self.url(path))
            .body(body)
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap())
    }

    /// The simulator's record once it holds `n` notifications.
    async fn records(&self, n: u64) -> Vec<DeliveryRecord> {
        let seen = self.sim.wait_for_records(n, WAIT).await;
        assert!(
            seen >= n,
            "the simulator recorded {seen} of {n} notifications"
        );
        self.sim.record()
    }

    fn received(&self) -> u64 {
        self.engine
            .stats(DOMAIN)
            .map(|s| s.received.load(std::sync::atomic::Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The mainlog's reception lines, split on `@`.
    fn receptions(&self) -> Vec<Vec<String>> {
        self.logs.flush();
        std::fs::read_to_string(&self.mainlog)
            .unwrap_or_default()
            .lines()
            .map(|l| l.split('@').map(str::to_owned).collect::<Vec<_>>())
            .filter(|f| f.get(4).map(String::as_str) == Some("R"))
            .collect()
    }
}

fn error_text(body: &Value) -> &str {
    body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error text in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_payload_to_many_tokens_is_delivered_byte_for_byte() {
    let h = Harness::start(|_, _| {}).await;
    // The payload's odd spacing and number spelling must reach APNs unchanged.
    let payload = r#"{ "aps" : { "alert" : "Hello, REST" } , "n" : 1.50 }"#;
    let tokens: Vec<String> = (0..3).map(token).collect();
    let body = format!(
        r#"{{"domain":"{DOMAIN}","tokens":{},"payload":{payload},"push_type":"alert","priority":5,"collapse_id":"c1"}}"#,
        serde_json::to_string(&tokens).unwrap()
    );
    let response = h
        .client()
        .post(h.url("/api/v1/push"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.unwrap();
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|r| r["status"] == "accepted"));
    let records = h.records(3).await;
    assert_eq!(records.len(), 3);
    for t in &tokens {
        let r = records.iter().find(|r| &r.token == t).unwrap();
        assert_eq!(r.topic, TOPIC);
        assert_eq!(r.payload, payload);
        assert_eq!(r.push_type.as_deref(), Some("alert"));
        assert_eq!(r.priority, 5);
        assert_eq!(r.collapse_id.as_deref(), Some("c1"));
    }
    // Reception lines: one per notification, the result's id, this client, protocol rest, one batch.
    let lines = h.receptions();
    assert_eq!(lines.len(), 3);
    let ids: BTreeSet<&str> = results.iter().map(|r| r["id"].as_str().unwrap()).collect();
    for l in &lines {
        assert!(ids.contains(l[1].as_str()), "{l:?}");
        assert_eq!(l[9], "127.0.0.1");
        assert_eq!(l[11], "rest");
        assert_eq!(l[2], lines[0][2], "one batch id per request");
    }
}

/// An option given as `null` is taken as not given (docs/api.md "POST /api/v1/push"), at the top level and per
/// notification: the notification is accepted and sent exactly as one that leaves the option out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_options_are_taken_as_not_given() {
    let h = Harness::start(|_, _| {}).await;
    let payload = r#"{"aps":{"alert":"null options"}}"#;
    let nulls =
        r#""topic":null,"push_type":null,"priority":null,"expiration":null,"collapse_id":null"#;
    let bodies = [
        // Left out: what the others are compared with.
        format!(
            r#"{{"domain":"{DOMAIN}","tokens":["{t}"],"payload":{payload}}}"#,
            t = token(0)
        ),
        format!(
            r#"{{"domain":"{DOMAIN}","tokens":["{t}"],"payload":{payload},{nulls},"binding":null}}"#,
            t = token(1)
        ),
        format!(
            r#"{{"domain":"{DOMAIN}","notifications":[{{"token":"{t}","payload":{payload},{nulls},"apns_id":null}}]}}"#,
            t = token(2)
        ),
        format!(
            r#"{{"domain":"{DOMAIN}",{nulls},"notifications":[{{"token":"{t}","payload":{payload}}}]}}"#,
            t = token(3)
        ),
    ];
    for body in &bodies {
        let response = h
            .client()
            .post(h.url("/api/v1/push"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(
            answer["results"][0]["status"], "accepted",
            "{body}: {answer}"
        );
    }
    let records = h.records(4).await;
    let sent = |i: usize| {
        let r = records
            .iter()
            .find(|r| r.token == token(i))
            .unwrap_or_else(|| panic!("notification {i} was not sent"));
        (
            r.topic.clone(),
            r.push_type.clone(),
            r.priority,
            r.expiration,
            r.collapse_id.clone(),
            r.payload.clone(),
        )
    };
    assert_eq!(sent(0).0, TOPIC);
    // The default expiration counts from when each was taken (a second may pass between the requests): each has
    // one; the other fields are the same.
    let without_expiration = |i: usize| {
        let (topic, push_type, priority, expiration, collapse_id, payload) = sent(i);
        assert!(expiration.is_some(), "notification {i} has no expiration");
        (topic, push_type, priority, collapse_id, payload)
    };
    for (i, body) in bodies.iter().enumerate().skip(1) {
        assert_eq!(without_expiration(i), without_expiration(0), "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_notifications_get_results_in_request_order() {
    let h = Harness::start(|_, _| {}).await;
    let big = format!(r#"{{"aps":{{"alert":"{}"}}}}"#, "x".repeat(4100));
    let apns_id = "123e4567-e89b-12d3-a456-426614174000";
    let body = format!(
        r#"{{"domain":"{DOMAIN}","notifications":[
            {{"token":"{t0}","payload":{{"aps":{{"alert":"zero"}}}}}},
            {{"token":"zz{t1}","payload":{{"aps":{{"alert":"bad token"}}}}}},
            {{"token":"{t2}","payload":{{"aps":{{"badge":2}}}},"apns_id":"{apns_id}","priority":10,"expiration":0}},
            {{"token":"{t3}","payload":{big}}},
            {{"token":"{t4}","payload":{{"aps":{{"content-available":1}}}},"push_type":"background","priority":5}},
            {{"token":"{t5}","payload":{{"aps":{{"alert":"x"}}}},"push_type":"nonsense"}}
        ]}}"#,
        t0 = token(0),
        t1 = token(1),
        t2 = token(2),
        t3 = token(3),
        t4 = token(4),
        t5 = token(5),
    );
    let response = h
        .client()
        .post(h.url("/api/v1/push"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.unwrap();
    let results = answer["results"].as_array().unwrap();
    let statuses: Vec<&str> = results
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "accepted", "rejected", "accepted", "rejected", "accepted", "rejected"
        ]
    );
    let reason = |i: usize| results[i]["reason"].as_str().unwrap();
    assert!(reason(1).contains("non-hex character 'z'"), "{}", reason(1));
    // docs/apns-protocol.md#payload-limits: 4096 bytes for an alert over HTTP/2.
    assert!(reason(3).contains("at most 4096"), "{}", reason(3));
    assert!(reason(5).contains("push_type"), "{}", reason(5));
    let records = h.records(3).await;
    assert_eq!(records.len(), 3);
    let r2 = records.iter().find(|r| r.token == token(2)).unwrap();
    assert_eq!(r2.apns_id.as_deref(), Some(apns_id));
    assert_eq!(r2.payload, r#"{"aps":{"badge":2}}"#);
    let r4 = records.iter().find(|r| r.token == token(4)).unwrap();
    assert_eq!(r4.push_type.as_deref(), Some("background"));
    assert_eq!(r4.priority, 5);
    let r0 = records.iter().find(|r| r.token == token(0)).unwrap();
    assert_eq!(r0.payload, r#"{"aps":{"alert":"zero"}}"#);
    assert_eq!(r0.topic, TOPIC);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_level_problems_are_400_naming_the_field() {
    let h = Harness::start(|_, _| {}).await;
    let t = token(0);
    let cases: Vec<(String, &str)> = vec![
        (r#"{"domain": "#.into(), "invalid JSON: "),
        (
            r#"[1,2]"#.into(),
            "invalid request: the body must be a JSON object",
        ),
        (
            format!(r#"{{"tokens":["{t}"],"payload":{{}}}}"#),
            "domain: missing",
        ),
        (
            format!(r#"{{"domain":"nowhere.example","tokens":["{t}"],"payload":{{}}}}"#),
            "domain: domain \"nowhere.example\" cannot take push notifications",
        ),
        (
            format!(r#"{{"domain":"{DOMAIN}","payload":{{}}}}"#),
            "tokens, notifications: one of them is required",
        ),
        (
            format!(
                r#"{{"domain":"{DOMAIN}","tokens":["{t}"],"notifications":[],"payload":{{}}}}"#
            ),
            "tokens, notifications: give one of them, not both",
        ),
        (
            format!(r#"{{"domain":"{DOMAIN}","tokens":[],"payload":{{}}}}"#),
            "tokens: empty",
        ),
        (
            format!(r#"{{"domain":"{DOMAIN}","notifications":[]}}"#),
            "notifications: empty",
        ),
        (
            format!(r#"{{"domain":"{DOMAIN}","tokens":["{t}"]}}"#),
            "payload: missing",
        ),
        (
            format!(
                r#"{{"domain":"{DOMAIN}","notifications":[{{"token":"{t}","payload":{{}}}},{{"token":"{t}","payload":{{}}}},{{"token":"{t}","payload":{{}}}},{{"token":1,"payload":{{}}}}]}}"#
            ),
            "notifications[3].token: invalid type: integer `1`, expected a string",
        ),
        (
            format!(r#"{{"domain":"{DOMAIN}","tokens":["{t}"],"payload":{{}},"prioritty":5}}"#),
            "prioritty: unknown field",
        ),
        // A string escaping half a surrogate pair alone is no text: named, and said so (as the channel routes do).
        (
            format!(r#"{{"domain":"\ud800","tokens":["{t}"],"payload":{{}}}}"#),
            "domain: the string holds an unpaired surrogate escape (one of \\ud800 to \\udfff without its pair), which is not valid Unicode at line 1 column ",
        ),
        (
            format!(r#"{{"domain":"{DOMAIN}","tokens":["{t}"],"payload":{{}},"\ud800":1}}"#),
            "a member name holds an unpaired surrogate escape",
        ),
    ];
    for (body, expected) in cases {
        let response = h
            .client()
            .post(h.url("/api/v1/push"))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{body}"
        );
        let answer: Value = response.json().await.unwrap();
        assert!(
            error_text(&answer).starts_with(expected),
            "{body}: {answer}"
        );
    }
    assert_eq!(h.received(), 0, "nothing of a refused request is queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_and_path_are_json_405_and_404() {
    let h = Harness::start(|_, _| {}).await;
    let client = h.client();
    let response = client.get(h.url("/api/v1/push")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");
    let answer: Value = response.json().await.unwrap();
    assert_eq!(error_text(&answer), "/api/v1/push does not accept GET");
    let response = client.post(h.url("/api/v2/push")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let answer: Value = response.json().await.unwrap();
    assert_eq!(error_text(&answer), "no such endpoint: POST /api/v2/push");
    let response = client.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.text().await.unwrap(), "ok");
}

/// The scheme of docs/momentum-compat.md#mcmt-push-part as an inject template: an MCMT message whose push part has its
/// own header block.
fn mcmt_template(json: &str) -> String {
    format!(
        "From: <%= :from %>\nTo: <%= :to %>\nSubject: [%= :subject %]\nMIME-Version: 1.0\n\
         Content-Type: multipart/vnd.msys.mcmt; boundary=MCMT_BOUNDARY\n\n\
         --MCMT_BOUNDARY\nContent-Type: message/rfc822\n\nFrom: <%= :from %>\n\nmail for [%= :name %]\n\
         --MCMT_BOUNDARY\nContent-Type: message/vnd.msys.apn\n\nX-Device-Token: <%= :token %>\n\n{json}\n\
         --MCMT_BOUNDARY--\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_renders_the_template_per_recipient_and_delivers() {
    let h = Harness::start(|_, _| {}).await;
    let template = mcmt_template(r#"{"aps":{"alert":"Hi <%= :Name %>","badge":[%= :badge %]}}"#);
    let request = json!({
        "template": template,
        "recipients": [
            {"to": format!("ignored@{DOMAIN}"), "from": "sender@example.com",
             "keys": {"NAME": "Ann", "badge": 3, "token": token(10), "subject": "s"},
             "vctx": {"key": "value"}},
            // No X-Device-Token value: the token is the local part of `to`.
            {"to": format!("{}@{DOMAIN}", token(11)), "from": "sender@example.com",
             "keys": {"name": "Bob", "badge": "4", "token": "", "subject": "s"}}
        ]
    });
    let (status, answer) = h.post("/v1.0/inject", &request).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    // docs/momentum-compat.md#rest-injector: results per recipient, then the overall status.
    assert_eq!(answer["status"], "success");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results.len(), 2);
    for r in results {
        assert_eq!(r["status"], "success");
        let mid = r["mid"].as_str().unwrap();
        assert_eq!(r["reason"], format!("250 {mid}"));
    }
    let records = h.records(2).await;
    let ann = records.iter().find(|r| r.token == token(10)).unwrap();
    assert_eq!(ann.payload, r#"{"aps":{"alert":"Hi Ann","badge":3}}"#);
    assert_eq!(ann.topic, TOPIC);
    let bob = records.iter().find(|r| r.token == token(11)).unwrap();
    assert_eq!(bob.payload, r#"{"aps":{"alert":"Hi Bob","badge":4}}"#);
    let lines = h.receptions();
    assert_eq!(lines.len(), 2);
    assert!(lines.iter().all(|l| l[11] == "rest" && l[7] == "sender"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_with_two_push_parts_gives_two_notifications() {
    let h = Harness::start(|_, _| {}).await;
    let template = "To: <%= :to %>\nContent-Type: multipart/vnd.msys.mcmt; boundary=B\n\n\
        --B\nContent-Type: message/vnd.msys.apn\n\nX-Device-Token: <%= :first %>\n\n{\"aps\":{\"alert\":\"one\"}}\n\
        --B\nContent-Type: message/vnd.msys.apn\n\nX-Device-Token: <%= :second %>\nX-APNs-Priority: 5\n\
        X-APNs-Collapse-Id: grp\n\n{\"aps\":{\"alert\":\"two\"}}\n--B--\n";
    let request = json!({"template": template, "recipients": [
        {"to": format!("x@{DOMAIN}"), "from": "s@example.com", "keys": {"first": token(30), "second": token(31)}}
    ]});
    let (status, answer) = h.post("/v1.0/inject", &request).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let result = &answer["results"][0];
    let mids = result["mids"].as_array().unwrap();
    assert_eq!(mids.len(), 2);
    assert_eq!(result["mid"], mids[0]);
    let records = h.records(2).await;
    let one = records.iter().find(|r| r.token == token(30)).unwrap();
    assert_eq!(one.payload, r#"{"aps":{"alert":"one"}}"#);
    let two = records.iter().find(|r| r.token == token(31)).unwrap();
    assert_eq!(two.payload, r#"{"aps":{"alert":"two"}}"#);
    assert_eq!(two.priority, 5);
    assert_eq!(two.collapse_id.as_deref(), Some("grp"));
}

/// Over HTTP/2 APNs takes device tokens of 32 to 100 bytes (docs/apns-protocol.md#size-limits): tokens of 33, 54,
/// 80 (a Live Activity's push token) and 100 bytes are accepted and reach the simulator whole, while 1, 31 (a token
/// cut short), 101 and 150 bytes are refused at the door, naming the device token and the sizes taken, on
/// `/api/v1/push` and `/v1.0/inject` alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_tokens_of_32_to_100_bytes_are_delivered_and_others_refused_at_the_door() {
    let h = Harness::start(|_, _| {}).await;
    let taken = [33usize, 54, 80, 100];
    let refused = [1usize, 31, 101, 150];
    let sized = |bytes: usize, i: usize| format!("{:02x}", 0x10 + i).repeat(bytes);
    let mut tokens: Vec<String> = taken
        .iter()
        .enumerate()
        .map(|(i, &b)| sized(b, i))
        .collect();
    tokens.extend(refused.iter().map(|&b| "ab".repeat(b)));
    tokens.push(token(60));
    let (status, answer) = h
        .post(
            "/api/v1/push",
            &json!({"domain": DOMAIN, "tokens": tokens, "payload": {"aps": {"alert": "x"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let results = answer["results"].as_array().unwrap();
    for (i, bytes) in taken.iter().enumerate() {
        assert_eq!(results[i]["status"], "accepted", "{bytes} bytes: {answer}");
    }
    for (i, bytes) in refused.iter().enumerate() {
        let result = &results[taken.len() + i];
        assert_eq!(result["status"], "rejected", "{bytes} bytes: {answer}");
        let reason = result["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("device token: ")
                && reason.contains(&format!("is {bytes} bytes"))
                && reason.contains("32 to 100 bytes (64 to 200 hex digits)"),
            "{reason}"
        );
    }
    assert_eq!(results[tokens.len() - 1]["status"], "accepted", "{answer}");

    let template = mcmt_template(r#"{"aps":{"alert":"hi"}}"#);
    let inject = |token: String| {
        json!({"template": template, "recipients": [
            {"to": format!("x@{DOMAIN}"), "from": "s@example.com",
             "keys": {"token": token, "subject": "s", "name": "n"}}
        ]})
    };
    for bytes in refused {
        let (status, answer) = h.post("/v1.0/inject", &inject("cd".repeat(bytes))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bytes} bytes: {answer}");
        let reason = answer["results"][0]["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("550 device token: ")
                && reason.contains(&format!("is {bytes} bytes"))
                && reason.contains("32 to 100 bytes"),
            "{reason}"
        );
    }
    let live_activity = "cd".repeat(80);
    let (status, answer) = h.post("/v1.0/inject", &inject(live_activity.clone())).await;
    assert_eq!(status, StatusCode::OK, "80 bytes through inject: {answer}");
    assert_eq!(answer["results"][0]["status"], "success", "{answer}");

    let delivered = taken.len() as u64 + 2;
    let records = h.records(delivered).await;
    let mut got: Vec<&str> = records.iter().map(|r| r.token.as_str()).collect();
    got.sort_unstable();
    let mut want: Vec<String> = taken
        .iter()
        .enumerate()
        .map(|(i, &b)| sized(b, i))
        .collect();
    want.push(token(60));
    want.push(live_activity);
    want.sort_unstable();
    assert_eq!(got, want);
    assert_eq!(h.received(), delivered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_is_transactional() {
    let h = Harness::start(|_, _| {}).await;
    let template = mcmt_template(r#"{"aps":{"alert":"hi"}}"#);
    let request = json!({
        "template": template,
        "recipients": [
            {"to": format!("x@{DOMAIN}"), "from": "s@example.com",
             "keys": {"token": token(1), "subject": "s", "name": "n"}},
            {"to": format!("x@{DOMAIN}"), "from": "s@example.com",
             "keys": {"token": "not-hex", "subject": "s", "name": "n"}},
            {"to": "x@unknown.example", "from": "s@example.com",
             "keys": {"token": token(2), "subject": "s", "name": "n"}}
        ]
    });
    let (status, answer) = h.post("/v1.0/inject/", &request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(answer["status"], "failure");
    let results = answer["results"].as_array().unwrap();
    assert_eq!(results[0]["status"], "skipped");
    assert_eq!(results[1]["status"], "failure");
    let reason = results[1]["reason"].as_str().unwrap();
    assert!(reason.starts_with("550 device token"), "{reason}");
    assert!(
        results[2]["reason"]
            .as_str()
            .unwrap()
            .contains("\"unknown.example\""),
        "{answer}"
    );
    assert!(error_text(&answer).starts_with("recipients[1]: device token"));
    assert_eq!(h.received(), 0, "a failed transaction injects nothing");

    // A message without a push part, and a missing key.
    let request = json!({"template": "Subject: mail\n\nhello", "recipients": [{"to": format!("t@{DOMAIN}")}]});
    let (status, answer) = h.post("/v1.0/inject", &request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["results"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("herald delivers push notifications only"),
        "{answer}"
    );
    let request =
        json!({"template": mcmt_template("{}"), "recipients": [{"to": format!("t@{DOMAIN}")}]});
    let (_, answer) = h.post("/v1.0/inject", &request).await;
    assert!(
        answer["results"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("the key \"subject\""),
        "{answer}"
    );
    let (status, answer) = h.post_raw("/v1.0/inject", "{\"template\":").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["status"], "failure");
    assert!(error_text(&answer).starts_with("invalid JSON"));
    let (status, answer) = h
        .post("/v1.0/inject", &json!({"template": "x", "recipients": []}))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_text(&answer), "recipients: empty; list at least one");
    assert_eq!(h.received(), 0);
}

/// A template of 100,000 markers and a 1 MB value rendered 100 GB for one recipient and ended the process. The
/// rendering stops at herald's limit for one recipient's message, which refuses the recipient naming the limit;
/// the listener then still injects an ordinary template.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rendering_past_the_limit_refuses_its_recipient() {
    let h = Harness::start(|_, _| {}).await;
    let request = json!({"template": "<%=:a%>".repeat(100_000), "recipients": [
        {"to": format!("x@{DOMAIN}"), "keys": {"a": "x".repeat(1 << 20)}}
    ]});
    let (status, answer) = h.post("/v1.0/inject", &request).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["status"], "failure");
    let limit = "exceeds 10485760 bytes, the most herald renders for one recipient";
    assert!(
        error_text(&answer).starts_with("recipients[0]: template: ")
            && error_text(&answer).contains(limit),
        "{answer}"
    );
    let reason = answer["results"][0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("550 template: ") && reason.contains(limit),
        "{reason}"
    );

    let template = mcmt_template(r#"{"aps":{"alert":"still here"}}"#);
    let request = json!({"template": template, "recipients": [
        {"to": format!("x@{DOMAIN}"), "from": "s@example.com",
         "keys": {"token": token(70), "subject": "s", "name": "n"}}
    ]});
    let (status, answer) = h.post("/v1.0/inject", &request).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let records = h.records(1).await;
    assert_eq!(records[0].token, token(70));
    assert_eq!(records[0].payload, r#"{"aps":{"alert":"still here"}}"#);
}

/// One request's recipients render within a budget together (256 MiB): forty recipients of 9 MB each (each within
/// its own limit) make the request a 413 naming the budget, and nothing is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_rendering_past_its_budget_is_refused_whole() {
    let h = Harness::start(|_, _| {}).await;
    let value = "x".repeat(9 * 1024);
    let recipients: Vec<_> = (0..40)
        .map(|i| json!({"to": format!("r{i}@{DOMAIN}"), "keys": {"a": value}}))
        .collect();
    let request = json!({"template": "<%=:a%>".repeat(1000), "recipients": recipients});
    let (status, answer) = h.post("/v1.0/inject", &request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(answer["status"], "failure");
    let text = error_text(&answer);
    assert!(
        text.contains("exceed 268435456 bytes together") && text.starts_with("recipients["),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_injects_like_momentums_example() {
    let h = Harness::start(|_, _| {}).await;
    let body = json!({
        "template": mcmt_template(r#"{"aps":{"alert":"from curl"}}"#),
        "recipients": [{"to": format!("x@{DOMAIN}"), "from": "a@b.example",
                        "keys": {"token": token(20), "subject": "s", "name": "n"}}]
    });
    let file = h.dir.path().join("sample.json");
    std::fs::write(&file, body.to_string()).unwrap();
    // docs/momentum-compat.md#rest-injector: the connectivity check prints nothing on success.
    let check = Command::new("curl")
        .args(["-sS", "-f", "-X", "GET", &h.url("/v1.0/inject/")])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");
    assert!(check.stdout.is_empty());
    let url = h.url("/v1.0/inject/");
    let data = format!("@{}", file.display());
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args([
                "-sS",
                "-X",
                "POST",
                &url,
                "-d",
                &data,
                "-w",
                "\n%{http_code}",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let (json_text, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{text}");
    let answer: Value = serde_json::from_str(json_text).unwrap();
    assert_eq!(answer["status"], "success");
    let records = h.records(1).await;
    assert_eq!(records[0].token, token(20));
    assert_eq!(records[0].payload, r#"{"aps":{"alert":"from curl"}}"#);
}

/// A client address the lists refuse is answered `403` naming the address as soon as its connection is accepted
/// (before any slot is taken), and closed; a request that reaches the application from such an address anyway (an
/// embedding that serves it without the lists at connect) is refused with the same `403`. `always_allow` wins over
/// `always_deny`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn address_lists_close_refused_connections_and_refuse_their_requests_with_403() {
    let h = Harness::start(|s, _| {
        s.acl.deny = vec!["127.0.0.0/8".parse::<Cidr>().unwrap()];
    })
    .await;
    let refused = h.client().get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let text = refused.text().await.unwrap();
    assert!(
        text.contains("client address 127.0.0.1 is not allowed"),
        "{text}"
    );
    let mut settings = listener_settings();
    settings.acl.deny = vec!["127.0.0.0/8".parse::<Cidr>().unwrap()];
    let app = rest::router(rest::RestState::new(settings, idle_intake()));
    let push = json!({"domain": DOMAIN, "tokens": [token(0)], "payload": {}});
    let (status, answer) = app_answer(&app, "127.0.0.1", "POST", "/api/v1/push", &push).await;
    assert_eq!(status, 403);
    assert!(
        error_text(&answer).contains("client address 127.0.0.1 is not allowed"),
        "{answer}"
    );
    let (status, _) = app_answer(&app, "127.0.0.1", "GET", "/healthz", &Value::Null).await;
    assert_eq!(status, 403);

    // always_allow wins over always_deny.
    let h = Harness::start(|s, _| {
        s.acl.deny = vec!["0.0.0.0/0".parse::<Cidr>().unwrap()];
        s.acl.allow = vec!["127.0.0.1".parse::<Cidr>().unwrap()];
    })
    .await;
    let response = h.client().get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

/// The status and JSON answer of `app` to `method path` (with `body` as JSON unless it is null) from a client at
/// `from`, as the server records the peer address, without a socket.
async fn app_answer(
    app: &axum::Router,
    from: &str,
    method: &str,
    path: &str,
    body: &Value,
) -> (u16, Value) {
    use tower::Service;
    let body = if body.is_null() {
        axum::body::Body::empty()
    } else {
        axum::body::Body::from(body.to_string())
    };
    let mut request = axum::http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let peer: SocketAddr = SocketAddr::new(from.parse().unwrap(), 40000);
    request
        .extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    let response = app.clone().call(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|e| {
        panic!(
            "answer is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, value)
}

/// What a page on another site can make a browser send to a listener without keys (`fetch(url, {method: "POST",
/// mode: "no-cors", body})`), or a page under a name rebound to herald's address: refused with `403` naming the
/// header, and nothing is queued. The same request from an API client, without those headers, is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_browsers_send_for_web_pages_are_refused() {
    let h = Harness::start(|s, _| {
        s.acl.deny = vec!["0.0.0.0/0".parse::<Cidr>().unwrap()];
        s.acl.allow = vec!["127.0.0.1".parse::<Cidr>().unwrap()];
    })
    .await;
    let body = |i: usize| {
        format!(
            r#"{{"domain": "{DOMAIN}", "tokens": ["{}"], "payload": {{"aps": {{"alert": "x"}}}}}}"#,
            token(i)
        )
    };
    let client = h.client();
    let port = h.addr.port();
    let no_cors = |i: usize| {
        client
            .post(h.url("/api/v1/push"))
            .header("content-type", "text/plain;charset=UTF-8")
            .body(body(i))
    };
    for (request, says) in [
        (
            no_cors(1)
                .header("origin", "https://evil.example")
                .header("sec-fetch-site", "cross-site")
                .header("sec-fetch-mode", "no-cors"),
            "browser request refused: sec-fetch-site: cross-site says a page of another site sent it",
        ),
        (
            no_cors(2).header("sec-fetch-site", "same-site"),
            "browser request refused: sec-fetch-site: same-site",
        ),
        // A browser without Fetch Metadata still sends the page's origin.
        (
            no_cors(3).header("origin", "https://evil.example"),
            "cross-origin request refused: origin \"https://evil.example\" is not this listener's host",
        ),
        // DNS rebinding: the page's origin is the name it was loaded under, now resolving to herald.
        (
            no_cors(4)
                .header("host", format!("rebound.example:{port}"))
                .header("origin", format!("http://rebound.example:{port}"))
                .header("sec-fetch-site", "same-origin"),
            "browser request refused: sec-fetch-site: same-origin says a web page at \"rebound.example:",
        ),
    ] {
        let (status, answer) = answer_of(request).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
        assert!(error_text(&answer).contains(says), "{answer}");
    }
    let (status, answer) = answer_of(
        client
            .get(h.url("/healthz"))
            .header("host", format!("rebound.example:{port}"))
            .header("sec-fetch-site", "same-origin"),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{answer}");
    assert_eq!(h.received(), 0, "nothing refused was queued");

    // An API client sends no such header; an origin naming the listener's own host, or a direct visit
    // (`sec-fetch-site: none`), passes too.
    let (status, answer) = answer_of(no_cors(5)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let (status, answer) = answer_of(
        no_cors(6)
            .header("origin", format!("http://{}", h.addr))
            .header("sec-fetch-site", "none"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let mut got: Vec<String> = h.records(2).await.into_iter().map(|r| r.token).collect();
    got.sort();
    assert_eq!(got, [token(5), token(6)]);
    assert_eq!(h.received(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_required_when_configured() {
    let h = Harness::start(|s, _| s.api_keys = vec!["k-one".into(), "k-two".into()]).await;
    let body = json!({"domain": DOMAIN, "tokens": [token(0)], "payload": {"aps": {"alert": "k"}}});
    let client = h.client();
    for (auth, expected) in [
        (None, "missing API key"),
        (Some("Bearer wrong"), "the API key is not accepted"),
        (
            Some("Basic azpvbmU="),
            "the authorization header is not \"Bearer KEY\"",
        ),
    ] {
        let mut request = client.post(h.url("/api/v1/push")).json(&body);
        if let Some(a) = auth {
            request = request.header("authorization", a);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"herald\""
        );
        let answer: Value = response.json().await.unwrap();
        assert!(error_text(&answer).starts_with(expected), "{answer}");
    }
    let response = client
        .post(h.url("/api/v1/push"))
        .header("authorization", "bearer k-two")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(h.records(1).await[0].token, token(0));
    // Health probes need no key.
    let response = client.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_options_come_from_the_configuration_with_peer_overrides() {
    let config: herald_conf::Config = r#"
        http_listener {
          listen "127.0.0.1:0" {
            api_keys = ( "listen-key" )
            max_request_size = 4096
            peer "127.0.0.0/8" { api_keys = ( "peer-key" ) }
          }
        }
    "#
    .parse()
    .unwrap();
    let settings = config.listeners().remove(0);
    assert_eq!(settings.max_request_size, Some(4096));
    let h = Harness::start(move |s, _| *s = settings).await;
    let body = json!({"domain": DOMAIN, "tokens": [token(0)], "payload": {"aps": {"alert": "p"}}});
    let send = |header: &'static str, key: &'static str| {
        h.client()
            .post(h.url("/api/v1/push"))
            .header(header, key)
            .json(&body)
            .send()
    };
    // The peer stanza holding 127.0.0.1 replaces the listen stanza's key.
    assert_eq!(
        send("authorization", "Bearer listen-key")
            .await
            .unwrap()
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send("authorization", "Bearer peer-key")
            .await
            .unwrap()
            .status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send("x-api-key", "peer-key").await.unwrap().status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        send("x-api-key", "listen-key").await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(h.records(2).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_max_request_size_are_413() {
    let h = Harness::start(|s, _| s.max_request_size = Some(300)).await;
    let body = json!({"domain": DOMAIN, "tokens": [token(0)], "payload": {"aps": {"alert": "y".repeat(400)}}});
    let (status, answer) = h.post("/api/v1/push", &body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(
        error_text(&answer).contains("this listener's max_request_size is 300"),
        "{answer}"
    );
    // Without a content-length (chunked), the limit holds while reading.
    let url = h.url("/api/v1/push");
    let big = body.to_string();
    let output = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args([
                "-sS",
                "-X",
                "POST",
                &url,
                "-H",
                "Transfer-Encoding: chunked",
                "--data-binary",
                &big,
                "-w",
                "\n%{http_code}",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8(output.stdout).unwrap();
    let (json_text, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "413", "{text}");
    let answer: Value = serde_json::from_str(json_text).unwrap();
    assert!(error_text(&answer).contains("more than 300"), "{answer}");
    // A small request still passes.
    let (status, _) = h
        .post(
            "/api/v1/push",
            &json!({"domain": DOMAIN, "tokens": [token(1)], "payload": {"aps": {"alert": "a"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(h.received(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_listeners_certificate() {
    let h = Harness::start(|s, pki| {
        s.tls_certificate = Some(pki.manifest.server_cert.clone());
        s.tls_key = Some(pki.manifest.server_key.clone());
    })
    .await;
    assert!(h.url("/").starts_with("https://"));
    let payload = json!({"aps": {"alert": "over TLS"}});
    let (status, answer) = h
        .post(
            "/api/v1/push",
            &json!({"domain": DOMAIN, "tokens": [token(5)], "payload": payload}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let records = h.records(1).await;
    assert_eq!(records[0].token, token(5));
    assert_eq!(records[0].payload, payload.to_string());
    // curl over HTTPS with the CA, too.
    let output = Command::new("curl")
        .args([
            "-sS",
            "--cacert",
            h.pki.manifest.ca_cert.to_str().unwrap(),
            "--resolve",
            &format!("localhost:{}:127.0.0.1", h.addr.port()),
            &h.url("/healthz"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "ok", "{output:?}");
    // Plain HTTP to the TLS port does not get an answer.
    let plain = reqwest::Client::new()
        .get(format!("http://{}/healthz", h.addr))
        .send()
        .await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
}

/// A TLS handshake is held to `header_timeout` from its first byte (docs/api.md, the listener's timeouts), as a
/// request's head is, not to `first_byte_timeout` and `header_timeout` together from the connect: a hello whose
/// first byte comes at once and its rest 3 s later is closed unanswered with `header_timeout = 2`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_is_held_to_header_timeout_from_its_first_byte() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let two = Duration::from_secs(2);
    let limits = DoorLimits {
        first_byte_timeout: two,
        header_timeout: two,
        ..DoorLimits::default()
    };
    let h = Harness::start_limited(
        |s, pki| {
            s.tls_certificate = Some(pki.manifest.server_cert.clone());
            s.tls_key = Some(pki.manifest.server_key.clone());
        },
        Arc::new(NotDurable),
        Some(limits),
    )
    .await;
    // A client's hello, as bytes: the handshake is never finished, so no certificate is checked.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut client =
        rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    let mut stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    stream.write_all(&hello[..1]).await.unwrap();
    // The rest of the hello after the handshake's bound from the first byte (but within both bounds together).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = stream.write_all(&hello[1..]).await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("the connection is closed or answered within the deadline");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "the server answered a hello finished past header_timeout: {read:?}"
    );
}

/// A spool that cannot write.
struct FullDisk;

impl Durable for FullDisk {
    fn persist<'a>(
        &'a self,
        _batch: &'a [Notification],
    ) -> BoxFuture<'a, Result<(), herald_spool::SpoolError>> {
        Box::pin(async {
            Err(herald_spool::SpoolError::from_io(
                "appending",
                std::io::Error::from_raw_os_error(28),
            ))
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_failure_is_a_temporary_503() {
    let h = Harness::start_with(|_, _| {}, Arc::new(FullDisk)).await;
    let response = h
        .client()
        .post(h.url("/api/v1/push"))
        .json(&json!({"domain": DOMAIN, "tokens": [token(0)], "payload": {"aps": {"alert": "a"}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let answer: Value = response.json().await.unwrap();
    assert!(error_text(&answer).contains("spool disk full"), "{answer}");
    let request = json!({"template": mcmt_template(r#"{"aps":{"alert":"a"}}"#),
        "recipients": [{"to": format!("x@{DOMAIN}"), "keys": {"token": token(1), "subject": "s", "name": "n"}}]});
    let (status, answer) = h.post("/v1.0/inject", &request).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer["status"], "failure");
    assert_eq!(h.received(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_accepting() {
    let h = Harness::start(|_, _| {}).await;
    let response = h.client().get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    h.stop.cancel();
    let deadline = Instant::now() + WAIT;
    let result = tokio::time::timeout_at(deadline.into(), h.server).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "{result:?}");
    let fresh = reqwest::Client::new()
        .get(format!("http://{}/healthz", h.addr))
        .send()
        .await;
    assert!(fresh.is_err(), "the listener still answers after shutdown");
}

/// The `(method, path)` operations of an OpenAPI file's `paths`, each with the media type of its inline `200`
/// answer if it has one (a line-level reading: paths at two spaces, operations at four, status codes at eight,
/// `content` at ten, media types at twelve).
fn documented_routes(yaml: &str) -> std::collections::BTreeMap<(String, String), Option<String>> {
    let mut out = std::collections::BTreeMap::new();
    let mut in_paths = false;
    let mut path = None;
    let mut operation: Option<(String, String)> = None;
    let mut in_ok = false;
    let mut in_content = false;
    for line in yaml.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            in_paths = line.trim_end() == "paths:";
            continue;
        }
        if !in_paths || line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let text = line.trim().trim_end_matches(':');
        match indent {
            2 => {
                path = Some(text.trim_matches(['"', '\'']).to_string());
                operation = None;
            }
            4 => {
                operation = None;
                if ["get", "post", "put", "delete", "patch", "head", "options"].contains(&text) {
                    let key = (text.to_ascii_uppercase(), path.clone().unwrap());
                    out.insert(key.clone(), None);
                    operation = Some(key);
                }
            }
            8 => in_ok = text.trim_matches('"') == "200",
            10 => in_content = in_ok && text == "content",
            12 if in_ok && in_content => {
                if let Some(key) = &operation {
                    out.entry(key.clone())
                        .and_modify(|m: &mut Option<String>| *m = m.take().or(Some(text.into())));
                }
            }
            _ => {}
        }
        if indent <= 6 {
            in_ok = false;
        }
        if indent <= 8 {
            in_content = false;
        }
    }
    out
}

/// The answers (status codes) and parameter references each operation of an OpenAPI file's `paths` documents (a
/// line-level reading: sections such as `responses` and `parameters` at six spaces, their entries at eight).
fn documented_answers(
    yaml: &str,
) -> std::collections::BTreeMap<(String, String), BTreeSet<String>> {
    let mut out = std::collections::BTreeMap::new();
    let (mut in_paths, mut path, mut operation, mut section) = (false, None, None, String::new());
    for line in yaml.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() {
            in_paths = line.trim_end() == "paths:";
            continue;
        }
        if !in_paths || line.trim().is_empty() {
            continue;
        }
        let indent = line.len() - line.trim_start().len();
        let text = line.trim().trim_end_matches(':');
        match indent {
            2 => path = Some(text.trim_matches(['"', '\'']).to_string()),
            4 => operation = Some((text.to_ascii_uppercase(), path.clone().unwrap())),
            6 => section = text.to_string(),
            8 => {
                let Some(key) = operation.clone() else {
                    continue;
                };
                let entry: &mut BTreeSet<String> = out.entry(key).or_default();
                match section.as_str() {
                    "responses" => {
                        entry.insert(text.trim_matches('"').to_string());
                    }
                    "parameters" => {
                        if let Some(name) = text.strip_prefix("- $ref: \"#/components/parameters/")
                        {
                            entry.insert(name.trim_end_matches('"').to_string());
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    out
}

/// The answers the handlers can give are documented: both spellings of the injector take `Idempotency-Key` (409)
/// as they run one handler; every route reading a body documents its `408` and `413`; a status lookup its `500`;
/// every route behind the API keys its `429` next to the `401`.
#[test]
fn openapi_documents_the_answers_the_routes_give() {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/openapi.yaml"
    ))
    .unwrap();
    let answers = documented_answers(&yaml);
    let of = |method: &str, path: &str| {
        answers
            .get(&(method.to_string(), path.to_string()))
            .unwrap_or_else(|| panic!("{method} {path} is not documented"))
    };
    assert_eq!(of("POST", "/v1.0/inject/"), of("POST", "/v1.0/inject"));
    for wanted in ["IdempotencyKey", "409"] {
        assert!(of("POST", "/v1.0/inject/").contains(wanted), "{wanted}");
    }
    for path in [
        "/v1.0/inject",
        "/v1.0/inject/",
        "/api/v1/push",
        "/api/v1/broadcast",
        "/api/v1/channels",
        "/api/v1/notifications/query",
    ] {
        for status in ["408", "413"] {
            assert!(
                of("POST", path).contains(status),
                "POST {path} does not document {status}: {:?}",
                of("POST", path)
            );
        }
    }
    assert!(of("GET", "/api/v1/notifications/{id}").contains("500"));
    // A store that cannot be read for now (crate::outcomes::api: `503` with `retry-after: 1`).
    assert!(of("GET", "/api/v1/notifications/{id}").contains("503"));
    // The login reads a body of its own; a path segment that is no UTF-8 text is refused before a handler runs.
    for status in ["408", "413"] {
        assert!(
            of("POST", "/dashboard/api/login").contains(status),
            "{status}"
        );
    }
    assert!(of("GET", "/dashboard/api/domains/{domain}").contains("400"));
    assert!(of("POST", "/dashboard/api/domains/{domain}/{action}").contains("400"));
    for ((method, path), codes) in &answers {
        assert_eq!(
            codes.contains("401"),
            codes.contains("429"),
            "{method} {path}: 401 and 429 go together"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_exactly_the_routes_the_server_answers() {
    let yaml = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/openapi.yaml"
    ))
    .unwrap();
    let documented = documented_routes(&yaml);
    let routes: BTreeSet<(String, String)> = rest::ROUTES
        .iter()
        .chain(herald::ops::ROUTES)
        .chain(herald::dashboard::api::ROUTES)
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented.keys().cloned().collect::<BTreeSet<_>>(),
        routes,
        "docs/openapi.yaml and rest::ROUTES ∪ ops::ROUTES ∪ dashboard::api::ROUTES differ"
    );
    assert_eq!(
        documented.get(&("GET".into(), "/metrics".into())),
        Some(&Some(herald::ops::METRICS_CONTENT_TYPE.to_string())),
        "the documented /metrics media type"
    );

    // `herald serve` as it runs: the injection router with the operator routes merged in.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            "spool_dir = \"{}\"\nhttp_listener {{ listen \"127.0.0.1:0\" {{ http_services = ( inject push tokens metrics dashboard ) }} }}\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let server = herald::server::Server::start(&config).await.unwrap();
    let addr = server.addrs().await.http[0];
    let client = reqwest::Client::new();
    // Paths with parameters ({domain}) are probed by tests/dashboard.rs with real values.
    let paths: BTreeSet<&str> = routes
        .iter()
        .map(|(_, p)| p.as_str())
        .filter(|p| !p.contains('{'))
        .collect();
    for path in paths {
        for method in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            let response = client
                .request(method.parse().unwrap(), format!("http://{addr}{path}"))
                .body("{}")
                .send()
                .await
                .unwrap();
            let status = response.status();
            let key = (method.to_string(), path.to_string());
            match documented.get(&key) {
                Some(media) => {
                    assert!(
                        ![StatusCode::NOT_FOUND, StatusCode::METHOD_NOT_ALLOWED].contains(&status),
                        "{method} {path} is documented but answers {status}"
                    );
                    // Where the probe got the documented success answer, its body has the documented type.
                    if let (StatusCode::OK, Some(media)) = (status, media) {
                        let got = response.headers()[reqwest::header::CONTENT_TYPE]
                            .to_str()
                            .unwrap()
                            .to_string();
                        assert!(
                            got.starts_with(media.as_str()),
                            "{method} {path} answers {got:?}; the documentation says {media:?}"
                        );
                        if media == "application/json" {
                            let body: Value = response.json().await.unwrap();
                            assert!(body.is_object(), "{method} {path}: {body}");
                        }
                    }
                }
                None => assert_eq!(
                    status,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} is not documented but answers"
                ),
            }
        }
    }
    server.shutdown(Duration::from_secs(1)).await;
}

/// `http_services` splits what listeners serve: here one listen stanza takes injections only and another serves
/// metrics only (a metrics listener of its own); a route a listener does not serve is a 404 that names the option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_services_give_metrics_a_listener_of_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            r#"spool_dir = "{}"
http_listener {{
  listen "127.0.0.1:0" {{ http_services = ( inject push ) }}
  listen "127.0.0.2:0" {{ http_services = metrics }}
}}
"#,
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let server = herald::server::Server::start(&config).await.unwrap();
    let addrs = server.addrs().await.http;
    let inject = addrs
        .iter()
        .find(|a| a.ip().to_string() == "127.0.0.1")
        .unwrap();
    let metrics = addrs
        .iter()
        .find(|a| a.ip().to_string() == "127.0.0.2")
        .unwrap();
    let client = reqwest::Client::new();
    let get = |addr: std::net::SocketAddr, path: &'static str| {
        let client = client.clone();
        async move {
            let r = client
                .get(format!("http://{addr}{path}"))
                .send()
                .await
                .unwrap();
            (r.status(), r.text().await.unwrap())
        }
    };

    let (status, body) = get(*metrics, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body.contains("# TYPE herald_received_total counter"),
        "{body}"
    );
    for (addr, path) in [
        (*metrics, "/healthz"),
        (*metrics, "/readyz"),
        (*inject, "/healthz"),
    ] {
        assert_eq!(get(addr, path).await.0, StatusCode::OK, "{addr}{path}");
    }
    // Injection is refused on the metrics listener, metrics and tokens on the injection one: 404 naming why.
    let push = client
        .post(format!("http://{metrics}/api/v1/push"))
        .json(&json!({"domain": "x.example", "tokens": ["ab"], "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(push.status(), StatusCode::NOT_FOUND);
    let answer: Value = push.json().await.unwrap();
    let error = answer["error"].as_str().unwrap().to_owned();
    assert!(
        error.contains(r#"does not serve "push" (see http_services"#),
        "{error}"
    );
    for (path, service) in [
        ("/metrics", "metrics"),
        ("/api/v1/tokens/invalid", "tokens"),
    ] {
        let (status, body) = get(*inject, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        let body: Value = serde_json::from_str(&body).unwrap();
        let error = body["error"].as_str().unwrap();
        assert!(
            error.contains(&format!("does not serve {service:?}")),
            "{error}"
        );
    }
    assert_eq!(get(*metrics, "/v1.0/inject").await.0, StatusCode::NOT_FOUND);
    // The injection listener still injects (the domain is unknown here: a 400 naming it, not a 404).
    let push = client
        .post(format!("http://{inject}/api/v1/push"))
        .json(&json!({"domain": "x.example", "tokens": ["ab"], "payload": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(push.status(), StatusCode::BAD_REQUEST);
    server.shutdown(Duration::from_secs(1)).await;
}

/// Sends `request`; the status and the JSON answer.
async fn answer_of(request: reqwest::RequestBuilder) -> (StatusCode, Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {text:?}"));
    (status, value)
}

/// Asserts that `answer` is Momentum's failure shape: an error text starting with `error` and
/// `"status": "failure"`.
fn assert_momentum_failure(answer: &Value, error: &str) {
    assert!(error_text(answer).starts_with(error), "{answer}");
    assert_eq!(answer["status"], "failure", "{answer}");
}

/// Asserts that `answer` is herald's own error shape: an error text starting with `error` and nothing else.
fn assert_plain_error(answer: &Value, error: &str) {
    assert!(error_text(answer).starts_with(error), "{answer}");
    assert_eq!(answer.as_object().map(|o| o.len()), Some(1), "{answer}");
}

/// The refusals given before the injector runs, the API keys' (401) and the address lists' (403), carry
/// Momentum's `"status": "failure"` on its paths (docs/api.md#errors): Momentum clients test that member. Other
/// paths keep herald's `{"error": …}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injectors_key_and_address_refusals_say_failure() {
    let h = Harness::start(|s, _| s.api_keys = vec!["k-one".into()]).await;
    let client = h.client();
    let inject = json!({"template": "x", "recipients": [{"to": format!("x@{DOMAIN}")}]});
    for path in ["/v1.0/inject", "/v1.0/inject/"] {
        for (auth, expected) in [
            (None, "missing API key"),
            (Some("Bearer wrong"), "the API key is not accepted"),
        ] {
            let mut request = client.post(h.url(path)).json(&inject);
            if let Some(a) = auth {
                request = request.header("authorization", a);
            }
            let (status, answer) = answer_of(request).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{path} {auth:?}");
            assert_momentum_failure(&answer, expected);
        }
        let (status, answer) = answer_of(client.get(h.url(path))).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "GET {path}");
        assert_momentum_failure(&answer, "missing API key");
    }
    let push = json!({"domain": DOMAIN, "tokens": [token(0)], "payload": {}});
    let (status, answer) = answer_of(client.post(h.url("/api/v1/push")).json(&push)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_plain_error(&answer, "missing API key");

    // The application's own check (an embedding serving it without the lists at connect) answers as the path's
    // answers do.
    let mut settings = listener_settings();
    settings.acl.deny = vec!["127.0.0.0/8".parse::<Cidr>().unwrap()];
    let intake = idle_intake();
    let app = rest::router(rest::RestState::new(settings, intake.clone()));
    let refused = "client address 127.0.0.1 is not allowed";
    let (status, answer) = app_answer(&app, "127.0.0.1", "POST", "/v1.0/inject", &inject).await;
    assert_eq!(status, 403);
    assert_momentum_failure(&answer, refused);
    let (status, answer) = app_answer(&app, "127.0.0.1", "POST", "/api/v1/push", &push).await;
    assert_eq!(status, 403);
    assert_plain_error(&answer, refused);

    // The refusal at connect, over a socket, takes the same shapes.
    let h = Harness::start(|s, _| {
        s.acl.deny = vec!["127.0.0.0/8".parse::<Cidr>().unwrap()];
    })
    .await;
    let (status, answer) = answer_of(h.client().post(h.url("/v1.0/inject")).json(&inject)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_momentum_failure(&answer, refused);
    let (status, answer) = answer_of(h.client().post(h.url("/api/v1/push")).json(&push)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_plain_error(&answer, refused);
}

/// The listener's own answers on the injector's paths carry `"status": "failure"` too: 405 for another method,
/// 404 where the listener does not serve `inject`. A path under it that is none of the injector's
/// (`/v1.0/inject/nope`) and other paths keep herald's `{"error": …}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_injectors_404_and_405_say_failure() {
    let h = Harness::start(|_, _| {}).await;
    let client = h.client();
    for path in ["/v1.0/inject", "/v1.0/inject/"] {
        let (status, answer) = answer_of(client.put(h.url(path))).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "PUT {path}");
        assert_momentum_failure(&answer, &format!("{path} does not accept PUT"));
    }
    let (status, answer) = answer_of(client.get(h.url("/api/v1/push"))).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_plain_error(&answer, "/api/v1/push does not accept GET");
    let (status, answer) = answer_of(client.post(h.url("/v1.0/inject/nope"))).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_plain_error(&answer, "no such endpoint: POST /v1.0/inject/nope");

    let h = Harness::start(|s, _| s.http_services.inject = false).await;
    let client = h.client();
    for path in ["/v1.0/inject", "/v1.0/inject/"] {
        let (status, answer) = answer_of(client.post(h.url(path))).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "POST {path}");
        let expected = format!("POST {path}: this listener does not serve \"inject\"");
        assert_momentum_failure(&answer, &expected);
    }
}

/// `restinjector { enabled = false }`: the injector's 403 says `"status": "failure"` (so does a 405 there); the
/// native API's 403 keeps herald's `{"error": …}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injection_turned_off_says_failure_on_the_injectors_paths() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            "spool_dir = \"{}\"\nrestinjector {{ enabled = false }}\nhttp_listener {{ listen \"127.0.0.1:0\" {{ }} }}\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let server = herald::server::Server::start(&config).await.unwrap();
    let base = format!("http://{}", server.addrs().await.http[0]);
    let client = reqwest::Client::new();
    let off =
        "REST injection is turned off in this configuration (restinjector { enabled = false })";
    for path in ["/v1.0/inject", "/v1.0/inject/"] {
        let inject = json!({"template": "x", "recipients": [{"to": "x@x.example"}]});
        let (status, answer) = answer_of(client.post(format!("{base}{path}")).json(&inject)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "POST {path}");
        assert_momentum_failure(&answer, off);
        let (status, answer) = answer_of(client.get(format!("{base}{path}"))).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "GET {path}");
        assert_momentum_failure(&answer, off);
        let (status, answer) = answer_of(client.delete(format!("{base}{path}"))).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "DELETE {path}");
        assert_momentum_failure(&answer, &format!("{path} does not accept DELETE"));
    }
    let push = json!({"domain": "x.example", "tokens": [token(0)], "payload": {}});
    let (status, answer) = answer_of(client.post(format!("{base}/api/v1/push")).json(&push)).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_plain_error(&answer, off);
    server.shutdown(Duration::from_secs(1)).await;
}

/// Throughput smoke run (`cargo test --release -p herald --test rest -- --ignored --nocapture`): batches of
/// tokens from several clients at once, to the simulator. Prints the rates; asserts only that every
/// notification was accepted and delivered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run it in release mode"]
async fn throughput_smoke() {
    const CLIENTS: usize = 4;
    const BATCHES: usize = 10;
    const PER_BATCH: usize = 2_000;
    let h = Harness::start(|_, _| {}).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let client = h.client();
        let url = h.url("/api/v1/push");
        tasks.push(tokio::spawn(async move {
            for b in 0..BATCHES {
                let base = (c * BATCHES + b) * PER_BATCH;
                let tokens: Vec<String> = (base..base + PER_BATCH).map(token).collect();
                let body = json!({"domain": DOMAIN, "tokens": tokens,
                    "payload": {"aps": {"alert": "throughput"}}, "priority": 10});
                let response = client.post(&url).json(&body).send().await.unwrap();
                assert_eq!(response.status(), StatusCode::ACCEPTED);
                let answer: Value = response.json().await.unwrap();
                assert!(
                    answer["results"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .all(|r| r["status"] == "accepted")
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let accepted = started.elapsed();
    let total = (CLIENTS * BATCHES * PER_BATCH) as u64;
    let records = h.records(total).await;
    let delivered = started.elapsed();
    assert_eq!(records.len() as u64, total);
    println!(
        "{total} notifications: accepted at {:.0}/s, delivered at {:.0}/s",
        total as f64 / accepted.as_secs_f64(),
        total as f64 / delivered.as_secs_f64()
    );
}

/// An intake for a listener whose tests accept no notification (nothing is configured to deliver to).
fn idle_intake() -> Arc<Intake> {
    let resolver = Arc::new(StaticResolver::default());
    let engine = Arc::new(Engine::new(
        resolver.clone(),
        Logs {
            mainlog: vec![],
            apnlog: vec![],
            recent: None,
        },
        Arc::new(MemoryInvalidTokens::default()),
        EngineLimits::default(),
    ));
    Arc::new(Intake::new(
        resolver,
        Arc::new(NotDurable),
        engine,
        IdGenerator::new(7),
    ))
}

/// One HTTP/2 connection carries at most `HTTP2_MAX_CONCURRENT_STREAMS` requests at once (each may hold a body of
/// up to `max_request_size`): a client sending three times as many at once on it gets every answer right, the
/// ones beyond the limit waiting for a stream, and the server never holds more than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_connection_carries_at_most_its_stream_limit_at_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    let limit = rest::server::HTTP2_MAX_CONCURRENT_STREAMS as usize;
    let open = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let (release, released) = tokio::sync::watch::channel(false);
    let held = {
        let (open, most) = (open.clone(), most.clone());
        axum::Router::new().route(
            "/held/{n}",
            axum::routing::get(move |axum::extract::Path(n): axum::extract::Path<usize>| {
                let (open, most, mut released) = (open.clone(), most.clone(), released.clone());
                async move {
                    let now = open.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    let _ = released.wait_for(|r| *r).await;
                    open.fetch_sub(1, Ordering::SeqCst);
                    format!("request {n}")
                }
            }),
        )
    };
    let intake = idle_intake();
    let app = rest::router_with(
        rest::RestState::new(listener_settings(), intake.clone()),
        held,
    );
    // One connection per client: every request below goes over the same HTTP/2 connection.
    let limits = Arc::new(DoorLimits {
        max_connections_per_client: 1,
        ..Default::default()
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(rest::serve_limited(
        listener,
        app,
        intake,
        None,
        limits,
        stop.clone(),
    ));
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let ok = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.version(), reqwest::Version::HTTP_2);
    let requests: Vec<_> = (0..3 * limit)
        .map(|n| {
            let request = client.get(format!("http://{addr}/held/{n}")).send();
            tokio::spawn(async move {
                let response = request.await.unwrap();
                (response.status(), response.text().await.unwrap())
            })
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    while open.load(Ordering::SeqCst) < limit && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Time for any request beyond the limit to arrive, were it let in.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(open.load(Ordering::SeqCst), limit, "requests open at once");
    release.send(true).unwrap();
    for (n, request) in requests.into_iter().enumerate() {
        let (status, text) = request.await.unwrap();
        assert_eq!(status, StatusCode::OK, "request {n}: {text}");
        assert_eq!(text, format!("request {n}"));
    }
    assert_eq!(
        most.load(Ordering::SeqCst),
        limit,
        "most requests open at once"
    );
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// The HTTP/2 SETTINGS the listener sends: the stream limit and the header list size.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http2_settings_announce_the_limits() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let h = Harness::start(|_, _| {}).await;
    let mut stream = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    // The client preface, then an empty SETTINGS frame.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let settings = tokio::time::timeout(WAIT, async {
        loop {
            let mut head = [0u8; 9];
            stream.read_exact(&mut head).await.unwrap();
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            stream.read_exact(&mut payload).await.unwrap();
            // SETTINGS (type 4), not an acknowledgement (flag 1).
            if head[3] == 4 && head[4] & 1 == 0 {
                return payload
                    .chunks_exact(6)
                    .map(|c| {
                        (
                            u16::from_be_bytes([c[0], c[1]]),
                            u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                        )
                    })
                    .collect::<std::collections::BTreeMap<_, _>>();
            }
        }
    })
    .await
    .unwrap();
    // SETTINGS_MAX_CONCURRENT_STREAMS and SETTINGS_MAX_HEADER_LIST_SIZE.
    assert_eq!(
        settings.get(&3),
        Some(&rest::server::HTTP2_MAX_CONCURRENT_STREAMS),
        "{settings:?}"
    );
    assert_eq!(
        settings.get(&6),
        Some(&rest::server::HTTP2_MAX_HEADER_LIST_SIZE),
        "{settings:?}"
    );
}

/// Writes `request` on a fresh connection and reads one answer (up to its content-length); its status and JSON.
async fn raw_answer(to: SocketAddr, request: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut stream = tokio::net::TcpStream::connect(to).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut got = Vec::new();
    let answer = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 8192];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len = head.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .and_then(|v| v.trim().parse::<usize>().ok())
                });
                if n == 0 || len.is_some_and(|len| body.len() >= len) {
                    return text;
                }
            } else if n == 0 {
                return text;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no answer: {:?}", String::from_utf8_lossy(&got)));
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let (_, body) = answer.split_once("\r\n\r\n").unwrap();
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
    (status, json)
}

/// Every route that reads a body, the injection routes and the ones `herald serve` merges in (broadcasts, channel
/// creation, status queries), holds it to the listener's `max_request_size` and `body_timeout` with the same `413`
/// and `408` answers; a body over HTTP's usual 2 MiB but within `max_request_size` is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_reading_a_body_holds_it_to_max_request_size_and_body_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            "spool_dir = \"{}\"\nhttp_listener {{ listen \"127.0.0.1:0\" {{ http_services = ( inject push ) body_timeout = 1 }} }}\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let server = herald::server::Server::start(&config).await.unwrap();
    let addr = server.addrs().await.http[0];
    let client = reqwest::Client::new();
    let filler = format!("{{\"filler\":\"{}\"}}", "x".repeat(3 * 1024 * 1024));
    for path in [
        "/api/v1/push",
        "/v1.0/inject",
        "/api/v1/broadcast",
        "/api/v1/channels",
        "/api/v1/notifications/query",
    ] {
        let head = |length: usize| {
            format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n"
            )
        };
        // Declared over the limit: refused before reading.
        let (status, answer) = raw_answer(addr, head(10_485_761).as_bytes()).await;
        assert_eq!(status, 413, "{path}: {answer}");
        assert!(
            error_text(&answer).contains(
                "request body is 10485761 bytes; this listener's max_request_size is 10485760"
            ),
            "{path}: {answer}"
        );
        // 3 MiB, within the limit: read, then refused for what it says.
        let response = client
            .post(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body(filler.clone())
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        assert!(
            !error_text(&answer).contains("max_request_size"),
            "{path}: {answer}"
        );
        // Part of the body, then nothing: 408 after body_timeout.
        let (status, answer) =
            raw_answer(addr, format!("{}{{\"ids\":", head(100)).as_bytes()).await;
        assert_eq!(status, 408, "{path}: {answer}");
        assert!(
            error_text(&answer).contains("(this listener's body_timeout)"),
            "{path}: {answer}"
        );
    }
    server.shutdown(Duration::from_secs(1)).await;
}

/// The dashboard's login reads its body as the API routes do: one slower than `body_timeout` is `408`, one that
/// could not be read is not called too large, and one over its 4 KiB limit is `413` naming that limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_login_holds_its_body_to_body_timeout_and_its_limit() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            "spool_dir = \"{}\"\nhttp_listener {{ listen \"127.0.0.1:0\" {{ http_services = ( dashboard ) api_key = \"k\" body_timeout = 1 }} }}\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let server = herald::server::Server::start(&config).await.unwrap();
    let addr = server.addrs().await.http[0];
    let head = |length: usize| {
        format!(
            "POST /dashboard/api/login HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n"
        )
    };
    let (status, answer) = raw_answer(addr, format!("{}{{\"key\"", head(100)).as_bytes()).await;
    assert_eq!(status, 408, "{answer}");
    assert!(
        error_text(&answer).contains("(this listener's body_timeout)"),
        "{answer}"
    );
    let big = format!("{{\"key\":\"{}\"}}", "k".repeat(5000));
    let (status, answer) = raw_answer(addr, format!("{}{big}", head(big.len())).as_bytes()).await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(
        error_text(&answer),
        "the login body is too large (at most 4096 bytes)"
    );
    server.shutdown(Duration::from_secs(1)).await;
}

/// A spool slow to make a batch durable (a group commit's fsync on a slow disk): it takes `delay` per batch.
struct SlowDisk {
    delay: Duration,
}

impl Durable for SlowDisk {
    fn persist<'a>(
        &'a self,
        _batch: &'a [Notification],
    ) -> BoxFuture<'a, Result<(), herald_spool::SpoolError>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            Ok(())
        })
    }
}

/// While the server works on a request (here its spool takes longer than the send timeout to make the
/// notifications durable) the client waits and gets its answer: cut off, it would take the stored notifications
/// for refused and send them again. (Timeouts of 1 s make the send timeout its least, `SEND_TIMEOUT_MIN`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_ready_after_the_send_timeout_still_reaches_its_client() {
    let second = Duration::from_secs(1);
    let limits = DoorLimits {
        first_byte_timeout: second,
        header_timeout: second,
        body_timeout: second,
        keepalive_timeout: second,
        ..DoorLimits::default()
    };
    // Past the send timeout, its grace of a second and a tick of the watchdog.
    let delay = rest::server::send_timeout(&limits) + Duration::from_secs(4);
    let h = Harness::start_limited(|_, _| {}, Arc::new(SlowDisk { delay }), Some(limits)).await;
    let body =
        json!({"domain": DOMAIN, "tokens": [token(0)], "payload": {"aps": {"alert": "slow"}}});
    let answer = tokio::time::timeout(delay + WAIT, h.post("/api/v1/push", &body)).await;
    let Ok((status, answer)) = answer else {
        panic!("no answer within {:?}", delay + WAIT);
    };
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(h.records(1).await[0].token, token(0));
}

/// A client address the lists refuse takes no connection slot: with `max_connections = 1`, a refused client
/// holding a connection open does not keep an allowed one (another loopback address) out. Its connection is answered
/// `403` naming its address and closed at once, well before any timeout of the listener would close it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_addresses_take_no_connection_slot() {
    use tokio::io::AsyncReadExt;

    let long = Duration::from_secs(600);
    let limits = DoorLimits {
        max_connections: 1,
        first_byte_timeout: long,
        header_timeout: long,
        keepalive_timeout: long,
        ..DoorLimits::default()
    };
    let h = Harness::start_limited(
        |s, _| s.acl.deny = vec!["127.0.0.1/32".parse::<Cidr>().unwrap()],
        Arc::new(NotDurable),
        Some(limits),
    )
    .await;
    let mut refused = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let allowed = reqwest::Client::builder()
        .local_address(Some("127.0.0.2".parse().unwrap()))
        .build()
        .unwrap();
    let response = allowed.get(h.url("/healthz")).send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{text}");
    // Told why, then closed.
    let mut got = Vec::new();
    let closed = tokio::time::timeout(WAIT, refused.read_to_end(&mut got)).await;
    assert!(closed.is_ok(), "the refused connection is still open");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 403 "), "{got}");
    assert!(
        got.contains("client address 127.0.0.1 is not allowed by this listener's always_deny / always_allow lists"),
        "{got}"
    );
    // A refused client's request is read and answered 403, not reset.
    let refused_client = reqwest::Client::new();
    let response = refused_client.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

/// A proxy's `authorization: Basic …` does not hide the key in `x-api-key`; a Bearer token is still taken first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxys_basic_authorization_leaves_the_key_to_x_api_key() {
    let h = Harness::start(|s, _| s.api_keys = vec!["k-one".into()]).await;
    let body = json!({"domain": DOMAIN, "tokens": [token(0)], "payload": {"aps": {"alert": "p"}}});
    let send = |authorization: &'static str, key: &'static str| {
        h.client()
            .post(h.url("/api/v1/push"))
            .header("authorization", authorization)
            .header("x-api-key", key)
            .json(&body)
            .send()
    };
    let response = send("Basic cHJveHk6c2VjcmV0", "k-one").await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(h.records(1).await[0].token, token(0));
    let response = send("Bearer wrong", "k-one").await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
}

/// Refusals at connect are written at most `MAX_REFUSALS` at once: with that many refused clients taking their time
/// to send a request head, the next refused connection is closed without an answer instead of holding a task and a
/// descriptor of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_at_connect_beyond_the_cap_are_closed_at_once() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let h = Harness::start(|s, _| {
        s.acl.deny = vec!["127.0.0.1/32".parse::<Cidr>().unwrap()];
    })
    .await;
    // Each sends half a request head and waits: its refusal waits for the rest (up to a second). They connect all
    // at once rather than one after the other, so that the next one comes while they all still hold their
    // refusal, however slow the machine.
    let addr = h.addr;
    let connecting: Vec<_> = (0..rest::server::MAX_REFUSALS)
        .map(|_| {
            tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
                s
            })
        })
        .collect();
    let mut slow = Vec::new();
    for c in connecting {
        slow.push(c.await.unwrap());
    }
    let mut beyond = tokio::net::TcpStream::connect(h.addr).await.unwrap();
    let mut got = Vec::new();
    tokio::time::timeout(WAIT, beyond.read_to_end(&mut got))
        .await
        .expect("closed")
        .unwrap();
    assert!(
        got.is_empty(),
        "answered instead of closed: {}",
        String::from_utf8_lossy(&got)
    );
    // The slow ones are answered once their wait is over.
    let mut first = slow.swap_remove(0);
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, first.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 403 "),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}

/// A listener with the healthz route and `/conn`, which answers the id of the connection it came on; held to
/// `limits`.
async fn conn_id_listener(
    limits: DoorLimits,
) -> (
    SocketAddr,
    CancellationToken,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let conn = axum::Router::new().route(
        "/conn",
        axum::routing::get(
            |axum::Extension(id): axum::Extension<rest::ConnId>| async move { id.0.to_string() },
        ),
    );
    let intake = idle_intake();
    let app = rest::router_with(
        rest::RestState::new(listener_settings(), intake.clone()),
        conn,
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(rest::serve_limited(
        listener,
        app,
        intake,
        None,
        Arc::new(limits),
        stop.clone(),
    ));
    (addr, stop, server)
}

/// An idle HTTP/2 connection whose client keeps it alive with PINGs is held to `keepalive_timeout`, not to
/// `header_timeout`: a request after header_timeout has passed goes over the same connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_sending_pings_outlives_header_timeout() {
    let second = Duration::from_secs(1);
    let (addr, stop, server) = conn_id_listener(DoorLimits {
        first_byte_timeout: second,
        header_timeout: second,
        keepalive_timeout: Duration::from_secs(600),
        ..DoorLimits::default()
    })
    .await;
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .http2_keep_alive_interval(Duration::from_millis(100))
        .http2_keep_alive_while_idle(true)
        .build()
        .unwrap();
    let conn = || async {
        let response = client
            .get(format!("http://{addr}/conn"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        response.text().await.unwrap()
    };
    let first = conn().await;
    // The client pings meanwhile; header_timeout passes, and the watchdog looks (every 250 ms here) several times.
    tokio::time::sleep(3 * second).await;
    assert_eq!(conn().await, first, "the connection was closed while idle");
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// A bare HTTP/2 client over plain TCP (prior knowledge): enough to send a GET and PINGs and to see every frame the
/// server sends. It acknowledges the server's SETTINGS and PINGs.
struct RawH2 {
    stream: tokio::net::TcpStream,
}

/// HTTP/2 frame types.
const H2_HEADERS: u8 = 1;
const H2_SETTINGS: u8 = 4;
const H2_PING: u8 = 6;
const H2_GOAWAY: u8 = 7;

impl RawH2 {
    async fn connect(to: SocketAddr) -> RawH2 {
        use tokio::io::AsyncWriteExt;
        let mut stream = tokio::net::TcpStream::connect(to).await.unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        let mut h2 = RawH2 { stream };
        h2.send(H2_SETTINGS, 0, 0, &[]).await;
        h2
    }

    async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        use tokio::io::AsyncWriteExt;
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut frame = vec![len[1], len[2], len[3], kind, flags];
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).await.unwrap();
    }

    /// The next frame the server sends other than a SETTINGS or PING it wants acknowledged (acknowledged here):
    /// (type, flags, stream, payload); `None` once the connection is closed.
    async fn frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        use tokio::io::AsyncReadExt;
        loop {
            let mut head = [0u8; 9];
            let read = tokio::time::timeout(WAIT, self.stream.read_exact(&mut head)).await;
            if read.expect("the server neither sends nor closes").is_err() {
                return None;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).await.ok()?;
            let (kind, flags) = (head[3], head[4]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            match (kind, flags & 1) {
                (H2_SETTINGS, 0) => self.send(H2_SETTINGS, 1, 0, &[]).await,
                (H2_PING, 0) => self.send(H2_PING, 1, 0, &payload).await,
                (H2_SETTINGS, _) => {}
                _ => return Some((kind, flags, stream, payload)),
            }
        }
    }

    /// `GET /healthz` on `stream` (odd, increasing); returns once its answer ended.
    async fn get_healthz(&mut self, stream: u32) {
        // HPACK: :method GET, :scheme http (static table), :path /healthz, :authority h (literals, not indexed).
        let mut block = vec![0x82, 0x86, 0x04, 8];
        block.extend_from_slice(b"/healthz");
        block.extend_from_slice(&[0x01, 1, b'h']);
        // END_STREAM | END_HEADERS.
        self.send(H2_HEADERS, 0x5, stream, &block).await;
        loop {
            let (kind, flags, on, _) = self.frame().await.expect("closed before the answer");
            assert_ne!(kind, H2_GOAWAY, "GOAWAY before the answer");
            if on == stream && flags & 1 == 1 {
                return;
            }
        }
    }

    /// Sends a PING and waits for its acknowledgement.
    async fn ping(&mut self, n: u64) {
        self.send(H2_PING, 0, 0, &n.to_be_bytes()).await;
        loop {
            let (kind, flags, _, payload) = self.frame().await.expect("closed while pinging");
            assert_ne!(kind, H2_GOAWAY, "GOAWAY while pinging");
            if kind == H2_PING && flags & 1 == 1 && payload == n.to_be_bytes() {
                return;
            }
        }
    }
}

/// An idle HTTP/2 connection whose client pings it (as clients keep connections alive) is held to
/// `keepalive_timeout`, not `header_timeout`, and carries another request past header_timeout; once
/// keepalive_timeout ends it, the server sends GOAWAY before it closes, so that the client knows that a request it
/// sends meanwhile was not taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_held_to_keepalive_timeout_and_ended_with_goaway() {
    let second = Duration::from_secs(1);
    let keepalive = 8 * second;
    let (addr, stop, server) = conn_id_listener(DoorLimits {
        first_byte_timeout: second,
        header_timeout: second,
        keepalive_timeout: keepalive,
        ..DoorLimits::default()
    })
    .await;
    let mut h2 = RawH2::connect(addr).await;
    h2.get_healthz(1).await;
    // PINGs (one every 100 ms) for longer than header_timeout and the watchdog's look every 250 ms, well within
    // keepalive_timeout: each is answered.
    let until = Instant::now() + 3 * second;
    let mut every = tokio::time::interval(Duration::from_millis(100));
    let mut n = 0;
    while Instant::now() < until {
        every.tick().await;
        h2.ping(n).await;
        n += 1;
    }
    h2.get_healthz(3).await;
    // Then nothing: keepalive_timeout ends the connection, with GOAWAY first.
    let mut seen = Vec::new();
    while let Some((kind, ..)) = h2.frame().await {
        seen.push(kind);
    }
    assert!(
        seen.contains(&H2_GOAWAY),
        "closed without GOAWAY; frames seen: {seen:?}"
    );
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// A `tokens` request whose one payload is larger than APNs takes for any push type is refused whole (`400`, in
/// the words each token's refusal would use), before any token is checked; in the `notifications` form such a
/// payload refuses only its own item. Unless the push type is given or named by the topic, the refusal names no
/// push type, as only reading the payload would tell it (an alert on a VoIP topic is an alert push).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_payload_too_large_for_any_push_type_refuses_the_request() {
    let h = Harness::start(|_, _| {}).await;
    let big = json!({"aps": {"alert": "x".repeat(6000 - 20)}});
    assert_eq!(big.to_string().len(), 6000);
    let silent = json!({"aps": {"content-available": 1}, "pad": "x".repeat(6000 - 40)});
    assert_eq!(silent.to_string().len(), 6000);
    let text = "payload is 6000 bytes; no APNs push allows more than 5120 (VoIP pushes over HTTP/2; other pushes \
                allow less)";
    let tokens: Vec<_> = (0..3).map(token).chain(["zz".into()]).collect();
    for (payload, topic) in [
        (&big, None),
        (&silent, None),
        (&big, Some(format!("{TOPIC}.voip"))),
    ] {
        let (status, answer) = h
            .post(
                "/api/v1/push",
                &json!({"domain": DOMAIN, "tokens": tokens, "payload": payload, "topic": topic}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(error_text(&answer), text, "{topic:?}");
    }
    let (status, answer) = h
        .post(
            "/api/v1/push",
            &json!({"domain": DOMAIN, "tokens": [token(1)], "payload": big, "push_type": "voip",
                    "topic": format!("{TOPIC}.voip")}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(
        error_text(&answer),
        "payload is 6000 bytes; voip pushes over HTTP/2 allow at most 5120"
    );
    let (status, answer) = h
        .post(
            "/api/v1/push",
            &json!({"domain": DOMAIN, "notifications": [
                {"token": token(4), "payload": {"aps": {"alert": "fits"}}},
                {"token": token(5), "payload": big},
                {"token": token(6), "payload": big, "push_type": "background"},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["results"][0]["status"], "accepted", "{answer}");
    assert_eq!(
        answer["results"][1],
        json!({"status": "rejected", "reason": text})
    );
    assert_eq!(
        answer["results"][2],
        json!({"status": "rejected",
               "reason": "payload is 6000 bytes; background pushes over HTTP/2 allow at most 4096"})
    );
    assert_eq!(h.records(1).await.len(), 1);
    assert_eq!(h.received(), 1);
}

/// `priority` and `expiration` are read per notification: a notification's own value that APNs does not take (out
/// of range, too large for the field, negative, fractional, in exponent notation) refuses only that notification,
/// named `notifications[i].FIELD` whichever check refuses it; another JSON type is a `400`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_out_of_range_option_refuses_only_its_notification() {
    let h = Harness::start(|_, _| {}).await;
    let body = format!(
        r#"{{"domain":"{DOMAIN}","notifications":[
            {{"token":"{t0}","payload":{{"aps":{{"alert":"a"}}}},"priority":10}},
            {{"token":"{t1}","payload":{{"aps":{{"alert":"b"}}}},"priority":300}},
            {{"token":"{t2}","payload":{{"aps":{{"alert":"c"}}}},"expiration":1e20}},
            {{"token":"{t3}","payload":{{"aps":{{"alert":"d"}}}},"expiration":100000000000000000000}},
            {{"token":"{t4}","payload":{{"aps":{{"alert":"e"}}}},"priority":-1}},
            {{"token":"{t5}","payload":{{"aps":{{"alert":"f"}}}},"priority":7}},
            {{"token":"{t6}","payload":{{"aps":{{"alert":"g"}}}},"expiration":4294967296}},
            {{"token":"{t7}","payload":{{"aps":{{"alert":"h"}}}},"priority":5.0}},
            {{"token":"{t8}","payload":{{"aps":{{"content-available":1}}}},"priority":10}},
            {{"token":"{t9}","payload":{{"aps":{{}}}},"push_type":"pushtotalk","expiration":5}}
        ]}}"#,
        t0 = token(0),
        t1 = token(1),
        t2 = token(2),
        t3 = token(3),
        t4 = token(4),
        t5 = token(5),
        t6 = token(6),
        t7 = token(7),
        t8 = token(8),
        t9 = token(9),
    );
    let response = h
        .client()
        .post(h.url("/api/v1/push"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let answer: Value = response.json().await.unwrap();
    let reasons: Vec<_> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or("accepted").to_owned())
        .collect();
    assert_eq!(
        reasons,
        [
            "accepted",
            "notifications[1].priority: apns-priority must be 10, 5 or 1, not \"300\"",
            "notifications[2].expiration: apns-expiration \"1e20\" is not a decimal count of seconds since the epoch",
            "notifications[3].expiration: apns-expiration 100000000000000000000 is out of range: at most 4294967295 \
             (seconds since the epoch, 32 bits)",
            "notifications[4].priority: apns-priority must be 10, 5 or 1, not \"-1\"",
            "notifications[5].priority: apns-priority must be 10, 5 or 1, not \"7\"",
            "notifications[6].expiration: apns-expiration 4294967296 is out of range: at most 4294967295 (seconds \
             since the epoch, 32 bits)",
            "notifications[7].priority: apns-priority must be 10, 5 or 1, not \"5.0\"",
            "notifications[8].priority: priority 10 is not allowed here: background pushes must use priority 5",
            "notifications[9].expiration: push-to-talk pushes must use expiration 0, not 5",
        ]
    );
    assert_eq!(h.records(1).await[0].token, token(0));

    // Not a number at all: the request is wrong, and the refusal shows the value.
    let (status, answer) = h
        .post(
            "/api/v1/push",
            &json!({"domain": DOMAIN, "notifications": [
                {"token": token(12), "payload": {"aps": {"alert": "l"}}, "priority": "10"},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(
        error_text(&answer).starts_with(
            "notifications[0].priority: invalid type: string \"10\", expected a number"
        ),
        "{answer}"
    );
    assert_eq!(h.received(), 1);
}

/// A shared `priority` or `expiration` that APNs does not take is checked once and refuses the request (`400`,
/// naming the top-level field), in either form, as every notification that does not set its own would be refused
/// for it; a string is refused naming its value. A shared value the door refuses only with the push type (a
/// background push at priority 10) refuses the notifications it applies to, named by the top-level field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_option_apns_does_not_take_refuses_the_request() {
    let h = Harness::start(|_, _| {}).await;
    let alert = json!({"aps": {"alert": "hi"}});
    for (field, value, text) in [
        (
            "priority",
            json!(10.0),
            "priority: apns-priority must be 10, 5 or 1, not \"10.0\"",
        ),
        (
            "priority",
            json!(300),
            "priority: apns-priority must be 10, 5 or 1, not \"300\"",
        ),
        (
            "priority",
            json!(-1),
            "priority: apns-priority must be 10, 5 or 1, not \"-1\"",
        ),
        (
            "priority",
            json!(7),
            "priority: apns-priority must be 10, 5 or 1, not \"7\"",
        ),
        (
            "expiration",
            json!(-5),
            "expiration: apns-expiration \"-5\" is not a decimal count of seconds since the epoch",
        ),
        (
            "expiration",
            json!(4294967296_u64),
            "expiration: apns-expiration 4294967296 is out of range: at most 4294967295 (seconds since the epoch, \
             32 bits)",
        ),
        (
            "priority",
            json!("10"),
            "priority: invalid type: string \"10\", expected a number",
        ),
    ] {
        let mut tokens =
            json!({"domain": DOMAIN, "tokens": [token(0), token(1)], "payload": alert});
        tokens[field] = value.clone();
        let mut items = json!({"domain": DOMAIN, "notifications": [
            {"token": token(2), "payload": alert},
            {"token": token(3), "payload": alert, "priority": 10, "expiration": 0},
        ]});
        items[field] = value.clone();
        for body in [tokens, items] {
            let (status, answer) = h.post("/api/v1/push", &body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{value}: {answer}");
            assert!(error_text(&answer).starts_with(text), "{value}: {answer}");
        }
    }
    // `1e1` as written in the body (serde_json would write it 10.0).
    let (status, answer) = h
        .post_raw(
            "/api/v1/push",
            r#"{"domain":"apps.example","tokens":["00000000000000000000000000000000000000000000000000000000000000aa"],
                "payload":{"aps":{"alert":"hi"}},"priority":1e1}"#,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(
        error_text(&answer),
        "priority: apns-priority must be 10, 5 or 1, not \"1e1\""
    );
    let (status, answer) = h
        .post(
            "/api/v1/push",
            &json!({"domain": DOMAIN, "tokens": [token(4)], "priority": 10,
                    "payload": {"aps": {"content-available": 1}}}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(
        answer["results"][0]["reason"],
        "priority: priority 10 is not allowed here: background pushes must use priority 5"
    );
    assert_eq!(h.received(), 0);
}

/// A recipient whose rendering fails counts what it produced against the request's budget: recipients each
/// rendering past the limit for one message (10 MiB) spend the 256 MiB together, and the request is refused whole
/// with `413` at the recipient that spends it, not rendered on to its last recipient.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_renderings_count_against_the_request_budget() {
    let h = Harness::start(|_, _| {}).await;
    let value = "x".repeat(200);
    let recipients: Vec<_> = (0..40)
        .map(|i| json!({"to": format!("r{i}@{DOMAIN}"), "keys": {"a": value}}))
        .collect();
    let request = json!({"template": "<%=:a%>".repeat(100_000), "recipients": recipients});
    let (status, answer) = h.post("/v1.0/inject", &request).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(answer["status"], "failure");
    // Each refused recipient produced 10485600 bytes: the 26th (recipients[25]) spends the budget.
    assert_eq!(
        error_text(&answer),
        "recipients[25]: the messages rendered for this request exceed 268435456 bytes together; send the \
         recipients in several requests"
    );
    assert_eq!(h.received(), 0);
}

/// A recipient that lacks a key the template uses is refused before anything is rendered, at no cost to the
/// request's budget: a large template and many such recipients are a `400` naming the key, not a `413`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_key_refuses_its_recipient_before_rendering() {
    let h = Harness::start(|_, _| {}).await;
    let template = "x".repeat(5 << 20) + "<%= :Nope %>";
    let recipients: Vec<_> = (0..60)
        .map(|i| json!({"to": format!("r{i}@{DOMAIN}"), "keys": {"a": "1"}}))
        .collect();
    let (status, answer) = h
        .post(
            "/v1.0/inject",
            &json!({"template": template, "recipients": recipients}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(
        error_text(&answer),
        "recipients[0]: template: the template uses the key \"nope\", which this recipient's keys do not give"
    );
    assert_eq!(answer["results"].as_array().unwrap().len(), 60);
    assert_eq!(h.received(), 0);
}

/// Rendering walks the whole template whatever it produces: each recipient counts at least the template's length
/// against the request's budget, so markers whose values are empty cannot make herald walk a large template for
/// every recipient of a request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rendering_counts_at_least_the_template() {
    let h = Harness::start(|_, _| {}).await;
    let key = "k".repeat(1000);
    let template = format!("<%=:{key}%>").repeat(2000);
    assert_eq!(template.len(), 2_012_000);
    let recipients: Vec<_> = (0..140)
        .map(|i| json!({"to": format!("r{i}@{DOMAIN}"), "keys": {key.clone(): ""}}))
        .collect();
    let (status, answer) = h
        .post(
            "/v1.0/inject",
            &json!({"template": template, "recipients": recipients}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    // 268435456 / 2012000 = 133.4: the 134th rendering (recipients[133]) cannot be paid for.
    assert!(
        error_text(&answer)
            .starts_with("recipients[133]: the messages rendered for this request exceed"),
        "{answer}"
    );
}

/// An injection whose recipients' messages make more notifications than herald ever holds in memory at once
/// (several push parts each) is refused for good with `413` naming `max_resident_notifications`, not told to
/// retry: no retry would take it. As many as herald holds are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injection_larger_than_the_queue_ever_holds_is_refused_for_good() {
    let h = Harness::start_engine(
        |_, _| {},
        Arc::new(herald::inbound::accept::NotDurable),
        None,
        EngineLimits {
            max_resident: 10,
            ..EngineLimits::default()
        },
    )
    .await;
    let template = "To: <%= :to %>\nContent-Type: multipart/vnd.msys.mcmt; boundary=B\n\n\
        --B\nContent-Type: message/vnd.msys.apn\n\n{\"aps\":{\"alert\":\"one\"}}\n\
        --B\nContent-Type: message/vnd.msys.apn\n\n{\"aps\":{\"alert\":\"two\"}}\n--B--\n";
    let recipients = |range: std::ops::Range<usize>| -> Vec<Value> {
        range
            .map(|i| json!({"to": format!("{}@{DOMAIN}", token(i))}))
            .collect()
    };
    let (status, answer) = h
        .post(
            "/v1.0/inject",
            &json!({"template": template, "recipients": recipients(0..6)}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(answer["status"], "failure");
    assert_eq!(
        error_text(&answer),
        "12 notifications are more than herald ever holds in memory at once (max_resident_notifications = 10): \
         split the request into smaller ones"
    );
    assert_eq!(h.received(), 0);
    let (status, answer) = h
        .post(
            "/v1.0/inject",
            &json!({"template": template, "recipients": recipients(0..5)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(h.records(10).await.len(), 10);
    // Refused before its last recipient is rendered (16 notifications in all): the count is what the request
    // makes at least, not all of it.
    let (status, answer) = h
        .post(
            "/v1.0/inject",
            &json!({"template": template, "recipients": recipients(10..18)}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(
        error_text(&answer),
        "at least 12 notifications (those of the first 6 of the request's 8 recipients) are more than herald \
         ever holds in memory at once (max_resident_notifications = 10): split the request into smaller ones"
    );
}

/// Every option of a notification follows one rule, the text options as the numbers (docs/api.md "POST
/// /api/v1/push"): a shared `collapse_id`, `topic` or `push_type` APNs refuses whatever the push type refuses the
/// request (`400`), in either form, named by the field; a notification's own bad value (`apns_id` included)
/// refuses only it, named `notifications[i].FIELD`; a shared value only some push types refuse refuses the
/// notifications it applies to, named by the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_option_is_named_by_its_field_where_the_request_gives_it() {
    let h = Harness::start(|_, _| {}).await;
    let alert = json!({"aps": {"alert": "hi"}});
    let not_printable = "apns-collapse-id \" x\" must be printable ASCII without leading or trailing spaces (no \
                         control characters), which an HTTP/2 header carries unchanged";
    for (field, value, text) in [
        (
            "collapse_id",
            json!(" x"),
            format!("collapse_id: {not_printable}"),
        ),
        (
            "collapse_id",
            json!("c".repeat(65)),
            "collapse_id: apns-collapse-id is 65 bytes; at most 64 are allowed".to_owned(),
        ),
        ("topic", json!(""), "topic: apns-topic is empty".to_owned()),
        (
            "topic",
            json!(format!("{TOPIC} x")),
            format!("topic: apns-topic \"{TOPIC} x\" has characters outside printable ASCII"),
        ),
        (
            "push_type",
            json!("bogus"),
            "push_type: unknown apns-push-type \"bogus\"".to_owned(),
        ),
    ] {
        let mut tokens =
            json!({"domain": DOMAIN, "tokens": [token(0), token(1)], "payload": alert});
        tokens[field] = value.clone();
        let mut items = json!({"domain": DOMAIN, "notifications": [
            {"token": token(2), "payload": alert},
            {"token": token(3), "payload": alert},
        ]});
        items[field] = value.clone();
        for body in [tokens, items] {
            let (status, answer) = h.post("/api/v1/push", &body).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
            assert_eq!(error_text(&answer), text, "{body}");
        }
    }

    // Each notification's own value: only it is refused, named where it is given.
    let (status, answer) = h
        .post(
            "/api/v1/push",
            &json!({"domain": DOMAIN, "notifications": [
                {"token": token(4), "payload": alert, "collapse_id": " x"},
                {"token": token(5), "payload": alert, "topic": ""},
                {"token": token(6), "payload": alert, "push_type": "bogus"},
                {"token": token(7), "payload": alert, "apns_id": "nope"},
                {"token": token(8), "payload": alert, "collapse_id": "c".repeat(65)},
                {"token": token(9), "payload": alert, "push_type": "voip", "topic": TOPIC},
                {"token": token(10), "payload": alert, "collapse_id": "fine"},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let reasons: Vec<_> = answer["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap_or("accepted").to_owned())
        .collect();
    assert_eq!(
        reasons,
        [
            format!("notifications[0].collapse_id: {not_printable}"),
            "notifications[1].topic: apns-topic is empty".to_owned(),
            "notifications[2].push_type: unknown apns-push-type \"bogus\"".to_owned(),
            "notifications[3].apns_id: apns-id \"nope\" is not a canonical 8-4-4-4-12 UUID"
                .to_owned(),
            "notifications[4].collapse_id: apns-collapse-id is 65 bytes; at most 64 are allowed"
                .to_owned(),
            format!(
                "notifications[5].topic: apns-topic \"{TOPIC}\" does not end in \".voip\", which push type voip \
                 needs"
            ),
            "accepted".to_owned(),
        ]
    );
    assert_eq!(h.records(1).await[0].collapse_id.as_deref(), Some("fine"));

    // A shared topic only some push types refuse: the notifications it applies to are refused, named by the
    // field; a notification with its own topic, or a push type that takes it, is not.
    let (status, answer) = h
        .post(
            "/api/v1/push",
            &json!({"domain": DOMAIN, "topic": TOPIC, "notifications": [
                {"token": token(11), "payload": alert, "push_type": "voip"},
                {"token": token(12), "payload": alert, "push_type": "voip", "topic": format!("{TOPIC}.voip")},
                {"token": token(13), "payload": alert},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(
        answer["results"][0]["reason"],
        format!(
            "topic: apns-topic \"{TOPIC}\" does not end in \".voip\", which push type voip needs"
        ),
        "{answer}"
    );
    assert_eq!(answer["results"][1]["status"], "accepted", "{answer}");
    assert_eq!(answer["results"][2]["status"], "accepted", "{answer}");
    let (status, answer) = h
        .post(
            "/api/v1/push",
            &json!({"domain": DOMAIN, "topic": TOPIC, "push_type": "voip", "tokens": [token(14)],
                    "payload": alert}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(
        answer["results"][0]["reason"],
        format!(
            "topic: apns-topic \"{TOPIC}\" does not end in \".voip\", which push type voip needs"
        ),
        "{answer}"
    );
    assert_eq!(h.records(3).await.len(), 3);
    assert_eq!(h.received(), 3);
}

/// A body that is JSON but not an object (an array, a string, a number, `true`, `false`, `null`) is a `400` that
/// says the body must be a JSON object, on every route that reads a JSON body: the derived readers would take
/// `[]` for an object without fields (and answer that `domain` is missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_json_route_refuses_a_body_that_is_not_an_object() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            "spool_dir = \"{}\"\nhttp_listener {{ listen \"127.0.0.1:0\" {{ http_services = ( inject push ) }} }}\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let server = herald::server::Server::start(&config).await.unwrap();
    let addr = server.addrs().await.http[0];
    let client = reqwest::Client::new();
    for path in [
        "/api/v1/push",
        "/v1.0/inject",
        "/api/v1/broadcast",
        "/api/v1/channels",
        "/api/v1/notifications/query",
    ] {
        for body in [
            "[]",
            "[\"apps.example\"]",
            "[{\"domain\": \"apps.example\"}]",
            "\"str\"",
            "12",
            "true",
            "false",
            "null",
        ] {
            let response = client
                .post(format!("http://{addr}{path}"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = response.status();
            let answer: Value = response.json().await.unwrap();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {body}: {answer}");
            assert!(
                error_text(&answer).contains("the body must be a JSON object"),
                "{path} {body}: {answer}"
            );
        }
    }
    // A UTF-8 byte order mark before the object is skipped on every JSON route (RFC 8259 §8.1 lets a parser
    // ignore it): `{}` after one is read as an object, whose missing fields are what the answer names.
    for path in [
        "/api/v1/push",
        "/v1.0/inject",
        "/api/v1/broadcast",
        "/api/v1/channels",
        "/api/v1/notifications/query",
    ] {
        let response = client
            .post(format!("http://{addr}{path}"))
            .header("content-type", "application/json")
            .body("\u{feff}{}")
            .send()
            .await
            .unwrap();
        let status = response.status();
        let answer: Value = response.json().await.unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {answer}");
        let text = error_text(&answer);
        assert!(
            !text.contains("invalid JSON") && text.contains("missing"),
            "{path}: {answer}"
        );
    }
    // A `[` is not JSON: that is what the answer says.
    let response = client
        .post(format!("http://{addr}/api/v1/push"))
        .body("[")
        .send()
        .await
        .unwrap();
    let answer: Value = response.json().await.unwrap();
    assert!(
        error_text(&answer).starts_with("invalid JSON: "),
        "{answer}"
    );
    server.shutdown(Duration::from_secs(1)).await;
}
