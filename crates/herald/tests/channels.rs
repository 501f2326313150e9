//! Live Activity channel management through herald (docs/api.md "Channels", docs/apns-protocol.md §6.2): every
//! call of `POST/GET/DELETE /api/v1/channels` performed against the simulator's management port with token auth
//! and with certificate auth, checked against the simulator's own channel list; APNs' refusals passed back with
//! their reason (ChannelNotRegistered as 404, FeatureNotEnabled as 403), an unreachable management host as 503, a
//! create sent and not answered as 504 or 502 without `retry-after` (the channel may exist),
//! bad input as 400 naming the field, a request without the listener's API key or from an address its lists
//! deny refused, a reload moving the management route, the console's `channels DOMAIN`, and the operation
//! counters of `/metrics`.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use herald::server::Server;
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use reqwest::StatusCode;
use serde_json::{Value, json};
use support::{cert_auth_options, free_port, token_auth_options};

const TOPIC: &str = "com.example.channels";
const TOKEN: &str = "token.example";
const CERT: &str = "cert.example";
/// A domain whose route is not Apple's and which names no management route.
const NO_ROUTE: &str = "noroute.example";
/// A domain whose management route nothing listens on.
const DOWN: &str = "down.example";
const KEY: &str = "channel-test-key";

struct Setup {
    _dir: tempfile::TempDir,
    _server: Arc<Server>,
    sim: SimHandle,
    http: String,
    /// The listener whose always_deny refuses 127.0.0.1.
    denied: String,
    socket: String,
}

async fn setup(disabled: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let mut sim_config = SimConfig::from_pki(&pki.manifest).unwrap();
    if disabled {
        sim_config.scenario.broadcast_disabled = vec![TOPIC.to_string()];
    }
    let sim = Simulator::start(sim_config).await.unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(&config, config_text(dir.path(), &pki, &sim)).unwrap();
    let server = Server::start(&config).await.unwrap();
    let addrs = server.addrs().await;
    Setup {
        http: addrs.http[0].to_string(),
        denied: addrs.http[1].to_string(),
        socket: dir.path().join("control.sock").display().to_string(),
        _dir: dir,
        _server: server,
        sim,
    }
}

fn config_text(dir: &Path, pki: &Pki, sim: &SimHandle) -> String {
    let h2 = sim.addrs.h2.port();
    let manage = sim.addrs.management.port();
    format!(
        r#"
spool_dir = "{spool}"
http_listener {{
  listen "127.0.0.1:0" {{ api_keys = ( "{KEY}" ) }}
  listen "127.0.0.2:0" {{ api_keys = ( "{KEY}" ) always_deny = ( "127.0.0.0/8" ) }}
}}
control_listener {{ listen "{sock}" {{ file_mode = 0600 }} }}
domain "{TOKEN}" {{
{token}  apn_channel_route = "https://127.0.0.1:{manage}"
}}
domain "{CERT}" {{
{cert_auth}  apn_channel_route = "https://127.0.0.1:{manage}"
}}
domain "{NO_ROUTE}" {{
{token}}}
domain "{DOWN}" {{
{token}  apn_channel_route = "https://127.0.0.1:{down}"
}}
"#,
        spool = dir.join("spool").display(),
        sock = dir.join("control.sock").display(),
        token = token_auth_options(pki, h2, TOPIC),
        cert_auth = cert_auth_options(pki, h2, TOPIC),
        down = free_port(),
    )
}

/// One REST call with the API key: (status, JSON body or Null when empty).
async fn call(
    s: &Setup,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
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

/// A channel id as a path segment.
fn seg(id: &str) -> String {
    id.replace('+', "%2B")
        .replace('/', "%2F")
        .replace('=', "%3D")
}

async fn create(s: &Setup, domain: &str, policy: u8) -> String {
    let (status, v) = call(
        s,
        reqwest::Method::POST,
        "/api/v1/channels",
        Some(json!({"domain": domain, "message_storage_policy": policy, "push_type": "liveactivity"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["domain"], domain);
    assert_eq!(v["bundle_id"], TOPIC);
    assert_eq!(v["message_storage_policy"], policy);
    v["channel_id"].as_str().unwrap().to_owned()
}

async fn list(s: &Setup, domain: &str) -> Vec<String> {
    let (status, v) = call(
        s,
        reqwest::Method::GET,
        &format!("/api/v1/channels?domain={domain}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["bundle_id"], TOPIC);
    let mut ids: Vec<String> = v["channels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

/// Create → list contains → read → delete → list lacks → read and delete of the deleted one refused with
/// ChannelNotRegistered, each step checked against the simulator's own list.
async fn full_flow(s: &Setup, domain: &str) {
    assert!(s.sim.channels(TOPIC).is_empty());
    let stored = create(s, domain, 1).await;
    let no_storage = create(s, domain, 0).await;
    let mut both = vec![stored.clone(), no_storage.clone()];
    both.sort();
    assert_eq!(s.sim.channels(TOPIC), both, "the simulator holds both");
    assert_eq!(list(s, domain).await, both);

    for (id, policy) in [(&stored, 1), (&no_storage, 0)] {
        let (status, v) = call(
            s,
            reqwest::Method::GET,
            &format!("/api/v1/channels/{}?domain={domain}", seg(id)),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "read {id}: {v}");
        assert_eq!(v["channel_id"], id.as_str());
        assert_eq!(v["message_storage_policy"], policy);
        assert_eq!(v["push_type"], "liveactivity");
    }

    let (status, v) = call(
        s,
        reqwest::Method::DELETE,
        &format!("/api/v1/channels/{}?domain={domain}", seg(&stored)),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{v}");
    assert_eq!(s.sim.channels(TOPIC), vec![no_storage.clone()]);
    assert_eq!(list(s, domain).await, vec![no_storage.clone()]);

    for method in [reqwest::Method::GET, reqwest::Method::DELETE] {
        let (status, v) = call(
            s,
            method.clone(),
            &format!("/api/v1/channels/{}?domain={domain}", seg(&stored)),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{method} {v}");
        assert_eq!(v["apns_reason"], "ChannelNotRegistered", "{v}");
        assert_eq!(v["apns_status"], 400, "{v}");
        assert!(
            v["error"]
                .as_str()
                .unwrap()
                .contains("ChannelNotRegistered"),
            "{v}"
        );
    }
    // The id unencoded in the path (base64 may hold `/`) reaches the same channel.
    let (status, _) = call(
        s,
        reqwest::Method::DELETE,
        &format!(
            "/api/v1/channels/{}?domain={domain}",
            no_storage.replace('+', "%2B")
        ),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(s.sim.channels(TOPIC).is_empty());
    assert!(list(s, domain).await.is_empty());

    // The simulator counts the calls it performed (the refused ones are counted by reason).
    let stats = s.sim.stats().broadcast;
    let ops: Vec<(&str, u64)> = stats
        .channel_ops
        .iter()
        .map(|(k, v)| (k.as_str(), *v))
        .collect();
    assert_eq!(
        ops,
        [("create", 2), ("delete", 2), ("list", 3), ("read", 2)],
        "{stats:?}"
    );
    assert_eq!(stats.rejected["ChannelNotRegistered"], 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_management_call_with_token_auth() {
    let s = setup(false).await;
    full_flow(&s, TOKEN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_management_call_with_certificate_auth() {
    let s = setup(false).await;
    full_flow(&s, CERT).await;
}

fn console(socket: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("console")
        .arg(socket)
        .args(args)
        .env_remove("HERALD_CONSOLE_PASSWORD")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_lists_a_domains_channels() {
    let s = setup(false).await;
    let a = create(&s, TOKEN, 1).await;
    let b = create(&s, CERT, 0).await;
    let socket = s.socket.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || console(&socket, &["channels", TOKEN]))
        .await
        .unwrap();
    assert!(ok, "{out}");
    // Both domains are the same app: its channels, however they were created.
    assert!(
        out.starts_with(&format!("2 channel(s) of {TOPIC} (domain {TOKEN}):\n")),
        "{out}"
    );
    let listed: Vec<&str> = out.lines().skip(1).map(str::trim).collect();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(listed, want, "{out}");

    let socket = s.socket.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || console(&socket, &["channels", DOWN]))
        .await
        .unwrap();
    assert!(!ok, "{out}");
    assert!(out.contains("down.example"), "{out}");
    let socket = s.socket.clone();
    let (ok, out) = tokio::task::spawn_blocking(move || console(&socket, &["channels"]))
        .await
        .unwrap();
    assert!(!ok && out.contains("usage: channels DOMAIN"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_and_unusable_domains_are_refused_naming_what_is_wrong() {
    let s = setup(false).await;
    let post = |body: Value| call(&s, reqwest::Method::POST, "/api/v1/channels", Some(body));
    for (body, field) in [
        (json!({"message_storage_policy": 1}), "domain: missing"),
        (json!({"domain": TOKEN}), "message_storage_policy: missing"),
        (
            json!({"domain": TOKEN, "message_storage_policy": 3}),
            "message_storage_policy: 3",
        ),
        (
            json!({"domain": TOKEN, "message_storage_policy": 1, "push_type": "alert"}),
            "push_type",
        ),
        (
            json!({"domain": TOKEN, "message_storage_policy": 1, "ttl": 5}),
            "unknown field \"ttl\"",
        ),
    ] {
        let (status, v) = post(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} {v}");
        assert!(v["error"].as_str().unwrap().contains(field), "{body} {v}");
    }
    let (status, v) = call(&s, reqwest::Method::GET, "/api/v1/channels", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(v["error"].as_str().unwrap().starts_with("domain:"), "{v}");
    let (status, v) = call(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/channels/not%20base64?domain={TOKEN}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        v["error"].as_str().unwrap().starts_with("channel id:"),
        "{v}"
    );

    // An unknown domain, and one with no management route: 400 naming the domain and what to set.
    let (status, v) = post(json!({"domain": "nobody.example", "message_storage_policy": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("nobody.example"),
        "{v}"
    );
    let (status, v) = post(json!({"domain": NO_ROUTE, "message_storage_policy": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("apn_channel_route"),
        "{v}"
    );
    // Nothing listens on the management route: APNs unreachable is 503, to be retried.
    let (status, v) = call(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/channels?domain={DOWN}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert!(v.get("apns_reason").is_none(), "{v}");
    assert!(s.sim.channels(TOPIC).is_empty());
}

/// Every error of the channel routes carries the domain the request named (docs/api.md "Channels": `{"error",
/// "domain"}`), also a field or parameter herald refuses before any call; a request that names no readable domain
/// gets none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_fields_and_parameters_answer_with_the_domain_named() {
    let s = setup(false).await;
    let post = |body: Value| call(&s, reqwest::Method::POST, "/api/v1/channels", Some(body));
    for (body, field) in [
        (json!({"domain": TOKEN}), "message_storage_policy: missing"),
        (
            json!({"domain": TOKEN.to_uppercase(), "message_storage_policy": 3}),
            "message_storage_policy: 3",
        ),
        (
            json!({"domain": TOKEN, "message_storage_policy": 1, "push_type": "alert"}),
            "push_type: \"alert\"",
        ),
        (
            json!({"domain": TOKEN, "message_storage_policy": 1, "ttl": 5}),
            "unknown field \"ttl\"",
        ),
    ] {
        let (status, v) = post(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} {v}");
        assert!(
            v["error"].as_str().unwrap().starts_with(field),
            "{body} {v}"
        );
        assert_eq!(v["domain"], TOKEN, "{body} {v}");
    }
    for path in [
        format!("/api/v1/channels?domain={TOKEN}&limit=5"),
        format!("/api/v1/channels/not%20base64?domain={TOKEN}"),
        format!("/api/v1/channels/dHN0LXNyY2gtY2hubA%3D%3D?x=1&domain={TOKEN}"),
    ] {
        let (status, v) = call(&s, reqwest::Method::GET, &path, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {v}");
        assert_eq!(v["domain"], TOKEN, "{path} {v}");
    }
    // No readable domain: none in the answer.
    for body in [
        json!({"message_storage_policy": 1}),
        json!({"domain": " ", "message_storage_policy": 1}),
        json!({"domain": 5, "message_storage_policy": 1}),
        json!([TOKEN]),
    ] {
        let (status, v) = post(body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} {v}");
        assert!(v.get("domain").is_none(), "{body} {v}");
    }
    let (status, v) = call(&s, reqwest::Method::GET, "/api/v1/channels?x=1", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(v.get("domain").is_none(), "{v}");
    assert!(s.sim.stats().broadcast.channel_ops.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_api_key_or_from_a_denied_address_are_refused() {
    let s = setup(false).await;
    let client = reqwest::Client::new();
    let url = format!("http://{}/api/v1/channels", s.http);
    let body = json!({"domain": TOKEN, "message_storage_policy": 1});
    let none = client.post(&url).json(&body).send().await.unwrap();
    assert_eq!(none.status(), StatusCode::UNAUTHORIZED);
    let wrong = client
        .post(&url)
        .bearer_auth("not-the-key")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    let listing = client
        .get(format!("{url}?domain={TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status(), StatusCode::UNAUTHORIZED);
    // The listener's address lists apply as to injection: a refused address is 403, key or not.
    let denied = client
        .post(format!("http://{}/api/v1/channels", s.denied))
        .bearer_auth(KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    let text = denied.text().await.unwrap();
    assert!(text.contains("always_deny"), "{text}");
    assert!(s.sim.channels(TOPIC).is_empty(), "nothing was created");
    assert!(s.sim.stats().broadcast.channel_ops.is_empty());
    // With the key in x-api-key, the same request is performed.
    let ok = client
        .post(&url)
        .header("x-api-key", KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert_eq!(s.sim.channels(TOPIC).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_refusals_come_back_with_their_reason_and_are_counted() {
    let s = setup(true).await;
    let (status, v) = call(
        &s,
        reqwest::Method::POST,
        "/api/v1/channels",
        Some(json!({"domain": TOKEN, "message_storage_policy": 0})),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["apns_reason"], "FeatureNotEnabled");
    assert_eq!(v["apns_status"], 400);
    assert_eq!(v["domain"], TOKEN);
    let (status, v) = call(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/channels?domain={CERT}"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{v}");
    let _ = call(
        &s,
        reqwest::Method::GET,
        &format!("/api/v1/channels?domain={DOWN}"),
        None,
    )
    .await;

    let text = reqwest::Client::new()
        .get(format!("http://{}/metrics", s.http))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("herald_channel_operations_total{"))
        .collect();
    assert_eq!(
        series,
        [
            "herald_channel_operations_total{domain=\"cert.example\",operation=\"list\",result=\"FeatureNotEnabled\"} 1",
            "herald_channel_operations_total{domain=\"down.example\",operation=\"list\",result=\"unreachable\"} 1",
            "herald_channel_operations_total{domain=\"token.example\",operation=\"create\",result=\"FeatureNotEnabled\"} 1",
        ],
        "{text}"
    );
    assert!(text.contains("# TYPE herald_channel_operations_total counter"));
}

// docs/architecture.md#inbound "Channels": the domain's target is read from the configuration in force at each
// call, so a reload that moves the management route takes effect at the next call (a new connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_the_management_route() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let first = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
        .await
        .unwrap();
    let second = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
        .await
        .unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(&config, config_text(dir.path(), &pki, &first)).unwrap();
    let server = Server::start(&config).await.unwrap();
    let s = Setup {
        http: server.addrs().await.http[0].to_string(),
        denied: server.addrs().await.http[1].to_string(),
        socket: String::new(),
        _dir: dir,
        _server: server.clone(),
        sim: first,
    };
    let on_first = create(&s, TOKEN, 1).await;
    assert_eq!(list(&s, TOKEN).await, vec![on_first.clone()]);

    std::fs::write(
        &config,
        config_text(config.parent().unwrap(), &pki, &second),
    )
    .unwrap();
    server.reload(None).await.unwrap();
    assert!(
        list(&s, TOKEN).await.is_empty(),
        "asked the second simulator"
    );
    let on_second = create(&s, TOKEN, 0).await;
    assert_eq!(second.channels(TOPIC), vec![on_second]);
    assert_eq!(s.sim.channels(TOPIC), vec![on_first]);
}

/// A management host (TLS with the simulator's certificate, ALPN h2) that takes requests and never answers them:
/// with `lose`, it drops the connection as soon as a request came; else it keeps the connection open, silent.
/// Returns its port and one `METHOD PATH` per request received.
async fn silent_management_host(
    sim_config: &SimConfig,
    lose: bool,
) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let tls = herald_sim::tls::server_config(&sim_config.tls, false, true).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (seen, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let Ok(stream) = acceptor.accept(tcp).await else {
                continue;
            };
            let seen = seen.clone();
            let (came, mut arrived) = tokio::sync::mpsc::unbounded_channel::<()>();
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let _ = seen.send(format!("{} {}", request.method(), request.uri().path()));
                let _ = came.send(());
                async move {
                    std::future::pending::<()>().await;
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(
                        http_body_util::Empty::<bytes::Bytes>::new(),
                    ))
                }
            });
            tokio::spawn(async move {
                let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service);
                tokio::select! {
                    _ = connection => {}
                    // Dropping the connection closes the socket: no GOAWAY, no answer.
                    Some(()) = arrived.recv(), if lose => {}
                }
            });
        }
    });
    (port, received)
}

/// A create whose request went out and got no answer (none in time, or the connection lost under it) may have
/// been done at APNs: it is answered 504 or 502 without `retry-after`, with `channel_may_exist` and a text saying
/// to list the channels before creating again (a blind retry could make a second channel). A create that never
/// left (nothing listens) stays 503 with `retry-after`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_sent_and_not_answered_is_not_to_be_retried_blindly() {
    const HANG: &str = "hang.example";
    const LOST: &str = "lost.example";
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim_config = SimConfig::from_pki(&pki.manifest).unwrap();
    let (hang_port, mut hang_seen) = silent_management_host(&sim_config, false).await;
    let (lost_port, mut lost_seen) = silent_management_host(&sim_config, true).await;
    let sim = Simulator::start(sim_config).await.unwrap();
    let token = token_auth_options(&pki, sim.addrs.h2.port(), TOPIC);
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            "{}domain \"{HANG}\" {{\n{token}  apn_channel_route = \"https://127.0.0.1:{hang_port}\"\n}}\n\
             domain \"{LOST}\" {{\n{token}  apn_channel_route = \"https://127.0.0.1:{lost_port}\"\n}}\n",
            config_text(dir.path(), &pki, &sim)
        ),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let http = server.addrs().await.http[0].to_string();
    let create = |domain: &'static str| {
        reqwest::Client::new()
            .post(format!("http://{http}/api/v1/channels"))
            .bearer_auth(KEY)
            .json(&json!({"domain": domain, "message_storage_policy": 1}))
            .send()
    };
    // Both at once: the silent host keeps herald waiting its whole call timeout.
    let (hung, lost, down) = tokio::join!(create(HANG), create(LOST), create(DOWN));
    for (domain, response, status, seen) in [
        (
            HANG,
            hung.unwrap(),
            StatusCode::GATEWAY_TIMEOUT,
            &mut hang_seen,
        ),
        (LOST, lost.unwrap(), StatusCode::BAD_GATEWAY, &mut lost_seen),
    ] {
        assert_eq!(
            seen.try_recv().ok().as_deref(),
            Some(format!("POST /1/apps/{TOPIC}/channels").as_str()),
            "{domain}: the create went out"
        );
        assert_eq!(response.status(), status, "{domain}");
        assert!(
            response.headers().get("retry-after").is_none(),
            "{domain}: {:?}",
            response.headers()
        );
        let v: Value = response.json().await.unwrap();
        assert_eq!(v["channel_may_exist"], true, "{domain}: {v}");
        assert_eq!(v["domain"], domain, "{v}");
        let error = v["error"].as_str().unwrap();
        assert!(
            error.contains("may have been created")
                && error.contains(&format!("GET /api/v1/channels?domain={domain}")),
            "{domain}: {error}"
        );
    }
    // Nothing listens: the create never left, and may be retried.
    let down = down.unwrap();
    assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        down.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let v: Value = down.json().await.unwrap();
    assert!(v.get("channel_may_exist").is_none(), "{v}");
}
