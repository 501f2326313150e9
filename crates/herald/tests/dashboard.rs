//! The web dashboard's endpoints over a real socket (docs/architecture.md, "Web dashboard"): every data call and
//! the event stream refuse a request without a key (401), every action refuses a cross-site request, a request
//! without the session's CSRF token and a key without the admin right (403), and no answer ever contains a
//! secret of the configuration (API keys, admin keys, passwords, the contents of key files).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use herald::server::Server;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, ORIGIN, SET_COOKIE};

mod support;

const READER: &str = "reader-key-0c9e1f";
const ADMIN: &str = "admin-key-77ab3d";
const PKCS12_PASSWORD: &str = "pkcs12-password-5d1a";
const CONTROL_PASSWORD: &str = "control-password-e402";

const DATA: &[&str] = &[
    "/dashboard/api/session",
    "/dashboard/api/overview",
    "/dashboard/api/domains",
    "/dashboard/api/domains/held.example",
    "/dashboard/api/outcomes",
    "/dashboard/api/config",
    "/dashboard/api/events",
];

const ACTIONS: &[&str] = &[
    "/dashboard/api/domains/held.example/flush",
    "/dashboard/api/domains/held.example/pause",
    "/dashboard/api/domains/held.example/resume",
    "/dashboard/api/domains/held.example/fail",
    "/dashboard/api/config/reload",
];

/// Writes the configuration; returns its path and the base64 lines of the provider key file (a secret).
fn write_config(dir: &Path) -> (PathBuf, Vec<String>) {
    let pki =
        herald_sim::Pki::generate(&dir.join("pki"), &["com.example.dash".to_string()]).unwrap();
    let m = &pki.manifest;
    let key = m.token_key.p8.clone();
    let key_lines: Vec<String> = std::fs::read_to_string(&key)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() > 16)
        .map(str::to_owned)
        .collect();
    assert!(!key_lines.is_empty());
    let included = dir.join("domains.conf");
    std::fs::write(
        &included,
        format!(
            r#"domain "held.example" {{
  delivery_method = apn
  routes = ( "https://127.0.0.1:{port}" )
  apn_key = "{key}"
  apn_key_id = "{kid}"
  apn_team_id = "{tid}"
  apn_topic = "com.example.dash"
  tls_pkcs12_password = "{PKCS12_PASSWORD}"
  retry_interval = 3600
  max_retry_interval = 3600
}}
"#,
            port = support::free_port(),
            key = key.display(),
            kid = m.token_key.key_id,
            tid = m.token_key.team_id,
        ),
    )
    .unwrap();
    let path = dir.join("herald.conf");
    std::fs::write(
        &path,
        format!(
            r#"spool_dir = "{spool}"
http_listener {{
  api_keys = ( "{READER}" "{ADMIN}" )
  dashboard_admin_keys = ( "{ADMIN}" )
  listen "127.0.0.1:0" {{ http_services = ( push dashboard ) }}
}}
control_listener {{ listen "127.0.0.1:0" {{ control_password = "{CONTROL_PASSWORD}" }} }}
include "domains.conf"
"#,
            spool = dir.join("spool").display(),
        ),
    )
    .unwrap();
    (path, key_lines)
}

struct Setup {
    _dir: tempfile::TempDir,
    _server: Arc<Server>,
    base: String,
    client: reqwest::Client,
    key_lines: Vec<String>,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (config, key_lines) = write_config(dir.path());
    let server = Server::start(&config).await.unwrap();
    let base = format!("http://{}", server.addrs().await.http[0]);
    // Traffic so that the held domain has a queue (its route is a closed port).
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{base}/api/v1/push"))
        .bearer_auth(READER)
        .json(&serde_json::json!({
            "domain": "held.example",
            "tokens": [format!("{:064x}", 0xdead_beef_u64)],
            "payload": {"aps": {"alert": "x"}},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    Setup {
        _dir: dir,
        _server: server,
        base,
        client,
        key_lines,
    }
}

/// Reads an answer; for the event stream, the first tick (the stream does not end).
async fn body_of(r: reqwest::Response) -> String {
    let sse = r
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
    if !sse {
        return r.text().await.unwrap();
    }
    let mut r = r;
    let mut text = String::new();
    let read = async {
        while let Some(chunk) = r.chunk().await.unwrap() {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("event: tick") && text.ends_with("\n\n") {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("a tick within 30 s");
    text
}

/// The name of the session cookie of the dashboard at `base` (`http://127.0.0.1:PORT`).
fn cookie_name(base: &str) -> String {
    let port = base.rsplit(':').next().unwrap();
    format!("herald_dashboard_{port}")
}

/// Logs in with `key` at the dashboard at `base`, from its own origin; returns the session cookie (`NAME=VALUE`)
/// and the CSRF token.
async fn login(client: &reqwest::Client, base: &str, key: &str) -> (String, String) {
    let r = client
        .post(format!("{base}/dashboard/api/login"))
        .header(ORIGIN, base)
        .json(&serde_json::json!({ "key": key }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()[SET_COOKIE].to_str().unwrap();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let body: serde_json::Value = r.json().await.unwrap();
    (cookie, body["csrf"].as_str().unwrap().to_owned())
}

/// Reads an event stream until its next tick (true) or its end (false), within 30 s.
async fn next_tick(stream: &mut reqwest::Response) -> bool {
    let read = async {
        let mut text = String::new();
        while let Some(chunk) = stream.chunk().await.unwrap_or(None) {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains("event: tick") && text.ends_with("\n\n") {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("a tick or the end of the stream within 30 s")
}

/// Reads an event stream to its end, within 30 s (it may carry a tick sent before its end).
async fn ends(stream: &mut reqwest::Response, what: &str) {
    let read = async { while stream.chunk().await.unwrap_or(None).is_some() {} };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .unwrap_or_else(|_| panic!("{what}: the event stream went on for 30 s"));
}

fn assert_no_secrets(what: &str, text: &str, key_lines: &[String]) {
    let fixed = [READER, ADMIN, PKCS12_PASSWORD, CONTROL_PASSWORD];
    for secret in fixed
        .iter()
        .copied()
        .chain(key_lines.iter().map(String::as_str))
    {
        assert!(
            !text.contains(secret),
            "{what} shows a secret ({secret}):\n{text}"
        );
    }
}

#[tokio::test]
async fn every_data_call_needs_a_key() {
    let s = setup().await;
    for (i, path) in DATA.iter().enumerate() {
        let r = s
            .client
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "GET {path} without a key"
        );
        let r = s
            .client
            .get(format!("{}{path}", s.base))
            .bearer_auth("wrong-key")
            .send()
            .await
            .unwrap();
        // Past five wrong keys, the address is locked out (herald::access).
        let refused = if i < herald::access::MAX_GUESSES {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::TOO_MANY_REQUESTS
        };
        assert_eq!(r.status(), refused, "GET {path} with a wrong key");
        let r = s
            .client
            .get(format!("{}{path}", s.base))
            .header(COOKIE, format!("{}=forged", cookie_name(&s.base)))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "GET {path} with a forged session"
        );
    }
    for path in ACTIONS {
        let r = s
            .client
            .post(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::UNAUTHORIZED,
            "POST {path} without a key"
        );
    }
    // The page itself carries no data: it is the login form until a data call succeeds.
    let page = s
        .client
        .get(format!("{}/dashboard/", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(html.contains("id=\"login\""), "{html}");
    assert!(!html.contains("held.example"));
}

/// Wrong keys at the login are refused; after five within a minute the address is locked out, the right key
/// included, as the console's `auth` is (docs/operations.md).
#[tokio::test]
async fn the_login_locks_out_an_address_that_guesses_keys() {
    let s = setup().await;
    let host = s.base.trim_start_matches("http://").to_owned();
    let login = |key: &'static str| {
        s.client
            .post(format!("{}/dashboard/api/login", s.base))
            .header(ORIGIN, format!("http://{host}"))
            .json(&serde_json::json!({ "key": key }))
            .send()
    };
    for _ in 0..5 {
        assert_eq!(
            login("wrong").await.unwrap().status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let r = login(ADMIN).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert!(body_of(r).await.contains("too many wrong keys"));
}

/// The REST API and the dashboard of one listener count wrong keys together: an address that guessed five times on
/// the API is refused even the right key on both (429 + retry-after), on Momentum's inject path in its shape too.
#[tokio::test]
async fn wrong_api_keys_lock_an_address_out_of_the_api_and_the_dashboard() {
    let s = setup().await;
    let push = |key: &'static str| {
        s.client
            .post(format!("{}/api/v1/push", s.base))
            .bearer_auth(key)
            .json(&serde_json::json!({
                "domain": "held.example",
                "tokens": [format!("{:064x}", 1)],
                "payload": {"aps": {"alert": "x"}},
            }))
            .send()
    };
    // A request without a key is not a guess.
    let r = s
        .client
        .get(format!("{}/api/v1/status/x", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    for n in 0..5 {
        let r = push("wrong").await.unwrap();
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "wrong key {n}");
    }
    let r = push(READER).await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
    assert!(
        body_of(r)
            .await
            .contains("too many wrong API keys from 127.0.0.1")
    );
    let r = s
        .client
        .post(format!("{}/v1.0/inject", s.base))
        .bearer_auth(READER)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(body_of(r).await.contains("\"status\":\"failure\""));
    let r = s
        .client
        .get(format!("{}/dashboard/api/overview", s.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(r.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn actions_refuse_cross_site_requests_readers_and_missing_csrf_tokens() {
    let s = setup().await;
    let url = |p: &str| format!("{}{p}", s.base);
    let host = s.base.trim_start_matches("http://").to_owned();
    for path in ACTIONS {
        // A reader's key may read, not act.
        let r = s
            .client
            .post(url(path))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "POST {path} as a reader");
        // An admin key from another site.
        let r = s
            .client
            .post(url(path))
            .bearer_auth(ADMIN)
            .header(ORIGIN, "http://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "cross-site POST {path}");
        let r = s
            .client
            .post(url(path))
            .bearer_auth(ADMIN)
            .header("sec-fetch-site", "cross-site")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "cross-site POST {path}");
    }
    // A login from another site is refused too.
    let r = s
        .client
        .post(url("/dashboard/api/login"))
        .header(ORIGIN, "http://evil.example")
        .json(&serde_json::json!({ "key": ADMIN }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    // A browser session: the cookie alone does not act; with the CSRF token from the same origin it does.
    let r = s
        .client
        .post(url("/dashboard/api/login"))
        .header(ORIGIN, format!("http://{host}"))
        .json(&serde_json::json!({ "key": ADMIN }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let cookie = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains(ADMIN));
    let session = cookie.split(';').next().unwrap().to_owned();
    let login: serde_json::Value = r.json().await.unwrap();
    let csrf = login["csrf"].as_str().unwrap().to_owned();
    assert_eq!(login["admin"], true);
    let flush = "/dashboard/api/domains/held.example/flush";
    let r = s
        .client
        .post(url(flush))
        .header(COOKIE, &session)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "no CSRF token");
    let r = s
        .client
        .post(url(flush))
        .header(COOKIE, &session)
        .header("x-csrf-token", "not-the-token")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "wrong CSRF token");
    let r = s
        .client
        .post(url(flush))
        .header(COOKIE, &session)
        .header("x-csrf-token", &csrf)
        .header(ORIGIN, format!("http://{host}"))
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // Pause and resume show on the domain's row.
    for (action, paused) in [("pause", true), ("resume", false)] {
        let r = s
            .client
            .post(url(&format!(
                "/dashboard/api/domains/held.example/{action}"
            )))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        let d: serde_json::Value = s
            .client
            .get(url("/dashboard/api/domains/held.example"))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(d["row"]["paused"], paused, "{d}");
    }
}

#[tokio::test]
async fn no_answer_shows_a_secret() {
    let s = setup().await;
    for path in DATA {
        for key in [READER, ADMIN] {
            let r = s
                .client
                .get(format!("{}{path}", s.base))
                .bearer_auth(key)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "GET {path}");
            let text = body_of(r).await;
            assert_no_secrets(path, &text, &s.key_lines);
        }
    }
    // The configuration page shows the running file (masked), the include tree and the effective options.
    let c: serde_json::Value = s
        .client
        .get(format!("{}/dashboard/api/config", s.base))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(c["disk"]["ok"], true, "{c}");
    assert!(
        c["running"].as_str().unwrap().contains("\"********\""),
        "{c}"
    );
    assert!(
        c["includes"]["children"][0]["path"]
            .as_str()
            .unwrap()
            .ends_with("domains.conf"),
        "{c}"
    );
    let d: serde_json::Value = s
        .client
        .get(format!("{}/dashboard/api/domains/held.example", s.base))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let option = |name: &str| {
        d["options"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no option {name} in {d}"))
    };
    assert_eq!(option("retry_interval")["value"], "3600");
    assert_eq!(option("retry_interval")["scope"], "domain \"held.example\"");
    assert_eq!(option("tls_pkcs12_password")["value"], "\"********\"");
    assert_eq!(option("idle_timeout")["scope"], "default");
    // The static assets are embedded and name nothing outside herald.
    for asset in ["/dashboard/", "/dashboard/app.js", "/dashboard/app.css"] {
        let text = s
            .client
            .get(format!("{}{asset}", s.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            !text.contains("https://") && !text.contains("//cdn"),
            "{asset} loads from elsewhere"
        );
    }
}

/// The Overview names the oldest notification still queued (issue: "spool size and oldest queued notification")
/// and the spool backend: the held domain's notification, whose route is a closed port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_overview_names_the_oldest_queued_notification_and_the_spool_backend() {
    let epoch = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let before = epoch();
    let s = setup().await;
    let after = epoch();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let o = loop {
        let o: serde_json::Value = s
            .client
            .get(format!("{}/dashboard/api/overview", s.base))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if !o["oldest_queued"].is_null() {
            break o;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no oldest queued notification: {o:#}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let received = o["oldest_queued"]["received_at"].as_u64().unwrap();
    assert!(received >= before && received <= after, "{o:#}");
    assert!(o["oldest_queued"]["age_secs"].as_u64().unwrap() <= epoch() - before);
    assert_eq!(o["spool_backend"], "embedded");
    assert!(o["jetstream"].is_null(), "{o:#}");
}

#[tokio::test]
async fn the_outcomes_list_refuses_a_malformed_or_unknown_parameter_by_name() {
    let s = setup().await;
    let get = |query: &'static str| {
        s.client
            .get(format!("{}/dashboard/api/outcomes?{query}", s.base))
            .bearer_auth(READER)
            .send()
    };
    let r = get("kind=permanent&limit=5").await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["outcomes"].is_array(), "{body}");
    for (query, names) in [
        ("limit=null", "limit"),
        ("after=x", "after"),
        ("kind=failed", "kind"),
        ("limt=5", "\"limt\""),
    ] {
        let r = get(query).await.unwrap();
        assert_eq!(r.status(), 400, "{query}");
        let body: serde_json::Value = r.json().await.unwrap();
        let error = body["error"].as_str().unwrap_or_default();
        assert!(error.contains(names), "{query}: {body}");
    }
}

/// A token filter is compared with the stored 8-digit prefix as bytes: one with a multi-byte character across
/// that length (`0000000é`, whose `é` takes bytes 8 and 9) panicked the request once the list held an outcome.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_filter_with_a_multi_byte_character_matches_nothing() {
    let setup = setup().await;
    let s = &setup;
    let get = |query: &'static str| async move {
        let r = s
            .client
            .get(format!("{}/dashboard/api/outcomes?{query}", s.base))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{query}");
        let body: serde_json::Value = r.json().await.unwrap();
        body["outcomes"].as_array().unwrap().len()
    };
    // The held domain's route is a closed port: its notification's failed attempt is an outcome.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while get("").await == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no outcome within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(get("token=00000000").await > 0, "the stored prefix matches");
    assert_eq!(get("token=0000000%C3%A9").await, 0);
    assert_eq!(get("token=%C3%A9").await, 0);
}

/// Over HTTP/2 a browser sends the host as `:authority` and no `Host` header. The listener serves HTTP/2 over
/// cleartext too (prior knowledge), so the check is seen here as over HTTPS: a login and an action from the
/// dashboard's own origin are accepted (the origin is compared with the request's authority), a login from another
/// site is still refused.
#[tokio::test]
async fn over_http2_the_dashboards_own_origin_may_log_in_and_act() {
    let s = setup().await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let url = |p: &str| format!("{}{p}", s.base);
    let origin = s.base.clone();
    let login = |origin: String| {
        h2.post(url("/dashboard/api/login"))
            .header(ORIGIN, origin)
            .header("sec-fetch-site", "same-origin")
            .json(&serde_json::json!({ "key": ADMIN }))
            .send()
    };
    let r = login("http://evil.example".into()).await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "a login from another site"
    );
    let r = login(origin.clone()).await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    let session = r.headers().get(SET_COOKIE).cloned();
    let body = r.text().await.unwrap();
    let session = session.unwrap_or_else(|| panic!("no session: {body}"));
    let session = session
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_owned();
    let login: serde_json::Value = serde_json::from_str(&body).unwrap();
    let csrf = login["csrf"].as_str().unwrap();
    let r = h2
        .post(url("/dashboard/api/domains/held.example/flush"))
        .header(COOKIE, &session)
        .header("x-csrf-token", csrf)
        .header(ORIGIN, &origin)
        .header("sec-fetch-site", "same-origin")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = h2
        .post(url("/dashboard/api/logout"))
        .header(COOKIE, &session)
        .header(ORIGIN, &origin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

/// The event stream is one long answer: the listener's `keepalive_timeout` (idle between requests) does not cut
/// it while it is being sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_outlives_the_keepalive_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(dir.path());
    let text = std::fs::read_to_string(&config).unwrap();
    let text = text.replace(
        "http_services = ( push dashboard ) }",
        "http_services = ( push dashboard ) keepalive_timeout = 1 }",
    );
    assert!(text.contains("keepalive_timeout = 1"));
    std::fs::write(&config, text).unwrap();
    let server = Server::start(&config).await.unwrap();
    let base = format!("http://{}", server.addrs().await.http[0]);
    let mut r = reqwest::Client::new()
        .get(format!("{base}/dashboard/api/events"))
        .bearer_auth(READER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // A tick a second: four of them take three seconds, three times the keep-alive timeout.
    let mut ticks = 0;
    let read = async {
        while ticks < 4 {
            let chunk = r
                .chunk()
                .await
                .expect("the stream reads")
                .expect("the stream was cut");
            ticks += String::from_utf8_lossy(&chunk)
                .matches("event: tick")
                .count();
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .expect("four ticks within 30 s");
}

/// `auth_failure_limit` in a `peer` stanza: 0 turns the lockout off for a shared address (a proxy), and a right
/// key does not wipe the wrong ones counted before it (else a reader key would let its holder guess the admin key).
#[tokio::test]
async fn the_failure_limit_follows_peer_stanzas_and_a_right_key_does_not_reset_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            r#"spool_dir = "{}"
http_listener {{
  listen "127.0.0.1:0" {{
    http_services = ( push dashboard )
    api_keys = ( "{READER}" "{ADMIN}" ) dashboard_admin_keys = ( "{ADMIN}" ) auth_failure_limit = 3
    peer "127.0.0.2/32" {{ api_keys = ( "{READER}" ) auth_failure_limit = 0 }}
  }}
}}
"#,
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let port = server.addrs().await.http[0].port();
    let get = |from: &str, key: &'static str| {
        reqwest::Client::builder()
            .local_address(Some(from.parse().unwrap()))
            .build()
            .unwrap()
            .get(format!("http://127.0.0.1:{port}/dashboard/api/session"))
            .bearer_auth(key)
            .send()
    };
    // 127.0.0.1: two wrong keys, a right one, a third wrong one: locked (the right key cleared nothing).
    for key in ["wrong", "wrong"] {
        assert_eq!(get("127.0.0.1", key).await.unwrap().status(), 401);
    }
    assert_eq!(get("127.0.0.1", READER).await.unwrap().status(), 200);
    assert_eq!(get("127.0.0.1", "wrong").await.unwrap().status(), 401);
    assert_eq!(
        get("127.0.0.1", ADMIN).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    // 127.0.0.2 (a proxy's address, limit 0): never locked.
    for _ in 0..10 {
        assert_eq!(get("127.0.0.2", "wrong").await.unwrap().status(), 401);
    }
    assert_eq!(get("127.0.0.2", READER).await.unwrap().status(), 200);
    server.shutdown(std::time::Duration::from_secs(2)).await;
}

/// A session's event stream ends with its session: at once at its logout, and when logins of its key evict it
/// (16 sessions a key); another key's logins never evict a session (a read-only key cannot log the admin out),
/// and a stream opened with a key goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_event_stream_ends_with_its_session() {
    let s = setup().await;
    let url = |p: &str| format!("{}{p}", s.base);
    let (admin, _) = login(&s.client, &s.base, ADMIN).await;
    let (reader, _) = login(&s.client, &s.base, READER).await;
    let open = |header: (&'static str, String)| {
        s.client
            .get(url("/dashboard/api/events"))
            .header(header.0, header.1)
            .send()
    };
    let mut by_admin = open(("cookie", admin.clone())).await.unwrap();
    let mut by_reader = open(("cookie", reader.clone())).await.unwrap();
    let mut by_key = open(("x-api-key", READER.into())).await.unwrap();
    for stream in [&mut by_admin, &mut by_reader, &mut by_key] {
        assert_eq!(stream.status(), 200);
        assert!(next_tick(stream).await);
    }
    let session = |cookie: String| {
        s.client
            .get(url("/dashboard/api/session"))
            .header(COOKIE, cookie)
            .send()
    };

    // Logout.
    let r = s
        .client
        .post(url("/dashboard/api/logout"))
        .header(COOKIE, &admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    ends(&mut by_admin, "logged out").await;
    assert_eq!(session(admin).await.unwrap().status(), 401);

    // The admin logs in again; the reader key logs in 16 more times: its first session goes, not the admin's.
    let (admin, _) = login(&s.client, &s.base, ADMIN).await;
    for _ in 0..herald::dashboard::auth::SESSIONS_PER_KEY {
        login(&s.client, &s.base, READER).await;
    }
    ends(&mut by_reader, "evicted").await;
    assert_eq!(session(reader).await.unwrap().status(), 401);
    let r = session(admin).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (&body["via"], &body["admin"]),
        (&"session".into(), &true.into())
    );

    // The key's stream has no session to end with.
    assert!(next_tick(&mut by_key).await);
}

/// A browser sends a host's cookies to every port of it: two dashboards on one host have a cookie each, named with
/// the port, so that logging in to one neither replaces nor ends the other's session.
#[tokio::test]
async fn two_dashboards_on_one_host_keep_a_session_each() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(dir.path());
    // Two listen stanzas of one address need a port each.
    let (one, two) = (support::free_port(), support::free_port());
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "listen \"127.0.0.1:0\" { http_services = ( push dashboard ) }",
        &format!(
            "listen \"127.0.0.1:{one}\" {{ http_services = ( push dashboard ) }}\n  \
             listen \"127.0.0.1:{two}\" {{ http_services = ( dashboard ) }}"
        ),
    );
    std::fs::write(&config, text).unwrap();
    let server = Server::start(&config).await.unwrap();
    let bases: Vec<String> = server
        .addrs()
        .await
        .http
        .iter()
        .map(|a| format!("http://{a}"))
        .collect();
    assert_eq!(bases.len(), 2, "{bases:?}");
    let client = reqwest::Client::new();
    // The browser's cookie jar for 127.0.0.1: one value per name.
    let mut jar = std::collections::BTreeMap::new();
    for base in &bases {
        let (cookie, _) = login(&client, base, ADMIN).await;
        let (name, value) = cookie.split_once('=').unwrap();
        assert_eq!(name, cookie_name(base));
        jar.insert(name.to_owned(), value.to_owned());
    }
    assert_eq!(jar.len(), 2, "{jar:?}");
    let sent = |jar: &std::collections::BTreeMap<String, String>| {
        jar.iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    };
    for base in &bases {
        let r = client
            .get(format!("{base}/dashboard/api/session"))
            .header(COOKIE, sent(&jar))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{base}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["via"], "session", "{base}");
    }
    // A logout from the first clears its own cookie only; the second's session goes on.
    let r = client
        .post(format!("{}/dashboard/api/logout", bases[0]))
        .header(COOKIE, sent(&jar))
        .send()
        .await
        .unwrap();
    let cleared = r.headers()[SET_COOKIE].to_str().unwrap().to_owned();
    assert!(
        cleared.starts_with(&format!("{}=;", cookie_name(&bases[0])))
            && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    jar.remove(&cookie_name(&bases[0]));
    let r = client
        .get(format!("{}/dashboard/api/session", bases[1]))
        .header(COOKIE, sent(&jar))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.shutdown(Duration::from_secs(5)).await;
}

/// An admin's "fail" runs to its end when its client goes away (hyper then drops the request): the domain's
/// queue of every binding is failed, not only the first one's. The request is polled once (up to its wait for
/// the first binding's queue) and dropped, as a disconnect drops it.
#[tokio::test]
async fn a_fail_finishes_when_its_client_goes_away() {
    use futures_util::FutureExt;
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = write_config(dir.path());
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("binding \"two\" { }\n");
    std::fs::write(&config, text).unwrap();
    let server = Server::start(&config).await.unwrap();
    let base = format!("http://{}", server.addrs().await.http[0]);
    let client = reqwest::Client::new();
    for binding in ["default", "two"] {
        let r = client
            .post(format!("{base}/api/v1/push"))
            .bearer_auth(READER)
            .json(&serde_json::json!({
                "domain": "held.example",
                "binding": binding,
                "tokens": [format!("{:064x}", 0xfa11_u64)],
                "payload": {"aps": {"alert": "x"}},
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    }
    // Each binding's queue holds its notification (the route is a closed port), none on a connection.
    let queued = |binding: &str| {
        use std::sync::atomic::Ordering::Relaxed;
        server
            .engine
            .binding_stats(binding, "held.example")
            .map_or((0, 0), |s| {
                (
                    s.active.load(Relaxed) + s.delayed.load(Relaxed),
                    s.in_flight.load(Relaxed),
                )
            })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while queued("default") != (1, 0) || queued("two") != (1, 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "not queued within 30 s: {:?} {:?}",
            queued("default"),
            queued("two")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settings = herald_conf::Config::load(&config)
        .unwrap()
        .listeners()
        .into_iter()
        .find(|l| l.http_services.dashboard)
        .unwrap();
    let mut dashboard = herald::dashboard::routes(
        server.dashboard.clone(),
        Arc::downgrade(&server) as std::sync::Weak<dyn herald::control::ServerHandle>,
        Arc::new(settings),
        Arc::new(herald::access::GuessThrottle::default()),
        tokio_util::sync::CancellationToken::new(),
    );
    let request = axum::http::Request::post("/dashboard/api/domains/held.example/fail")
        .header("x-api-key", ADMIN)
        .body(axum::body::Body::empty())
        .unwrap();
    let answer = tower::Service::call(&mut dashboard, request);
    // One poll (this runtime has one thread: no queue task runs meanwhile), then the client is gone.
    assert!(answer.now_or_never().is_none(), "answered at once");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while queued("default").0 != 0 || queued("two").0 != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the fail stopped half-way: queued (and in flight) default {:?}, two {:?}",
            queued("default"),
            queued("two")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.shutdown(Duration::from_secs(5)).await;
}

/// Every answer says it is what its content type says (`nosniff`) and is not to be framed; the page's policy
/// forbids `<base>`, plug-ins and forms sent elsewhere.
#[tokio::test]
async fn answers_carry_the_hardening_headers() {
    let s = setup().await;
    let url = |p: &str| format!("{}{p}", s.base);
    let r = s.client.get(url("/dashboard/")).send().await.unwrap();
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    for part in [
        "default-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "object-src 'none'",
    ] {
        assert!(csp.contains(part), "{csp}");
    }
    let answers = [
        r,
        s.client
            .get(url("/dashboard/api/session"))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap(),
        s.client
            .get(url("/dashboard/api/overview"))
            .send()
            .await
            .unwrap(),
        s.client
            .post(url("/dashboard/api/login"))
            .json(&serde_json::json!({ "key": "wrong" }))
            .send()
            .await
            .unwrap(),
    ];
    for r in answers {
        let what = format!("{} {}", r.url().path(), r.status());
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(r.headers()["x-frame-options"], "DENY", "{what}");
    }
}

/// `dashboard_admin_keys` names which of the keys the listener accepts may act (docs/configuration.md): a key
/// listed there that the listener does not take from the client — replaced by the listen stanza's `api_keys`, by
/// a `peer` stanza's, or taken out of `api_keys` and left in `dashboard_admin_keys` — is refused (401) as the REST
/// API refuses it, for a read, a login and an action alike.
#[tokio::test]
async fn an_admin_key_the_listener_does_not_accept_is_refused() {
    const READER2: &str = "reader2-key-5e0b";
    const REMOVED: &str = "removed-admin-key-91fc";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    // Two listen stanzas of one address need a port each.
    let (replaced, own) = (support::free_port(), support::free_port());
    std::fs::write(
        &config,
        format!(
            r#"spool_dir = "{}"
http_listener {{
  api_keys = ( "{READER}" "{ADMIN}" ) dashboard_admin_keys = ( "{ADMIN}" "{REMOVED}" ) auth_failure_limit = 0
  listen "127.0.0.1:{replaced}" {{ http_services = ( push metrics dashboard ) api_keys = ( "{READER2}" ) }}
  listen "127.0.0.1:{own}" {{
    http_services = ( push metrics dashboard )
    peer "127.0.0.2/32" {{ api_keys = ( "{READER}" ) }}
  }}
}}
"#,
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let client = |from: &str| {
        reqwest::Client::builder()
            .local_address(Some(from.parse().unwrap()))
            .build()
            .unwrap()
    };
    // What `key` gets from `from` at the listen stanza on `port`: /metrics (the REST API's check), the dashboard's
    // session, a login and an action.
    let statuses = |from: &'static str, port: u16, key: &'static str| {
        let c = client(from);
        let base = format!("http://127.0.0.1:{port}");
        async move {
            let metrics = c
                .get(format!("{base}/metrics"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status();
            let session = c
                .get(format!("{base}/dashboard/api/session"))
                .header("x-api-key", key)
                .send()
                .await
                .unwrap();
            let session_status = session.status();
            let admin = session.json::<serde_json::Value>().await.unwrap()["admin"].clone();
            let login = c
                .post(format!("{base}/dashboard/api/login"))
                .header(ORIGIN, &base)
                .json(&serde_json::json!({ "key": key }))
                .send()
                .await
                .unwrap()
                .status();
            let act = c
                .post(format!("{base}/dashboard/api/config/reload"))
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .status();
            (
                metrics.as_u16(),
                session_status.as_u16(),
                admin,
                login.as_u16(),
                act.as_u16(),
            )
        }
    };
    let refused = (401, 401, serde_json::Value::Null, 401, 401);
    // The listen stanza's api_keys replace the listener's: the admin key is no key of it.
    assert_eq!(
        statuses("127.0.0.1", replaced, ADMIN).await,
        refused,
        "replaced by the listen stanza's api_keys"
    );
    assert_eq!(
        statuses("127.0.0.1", replaced, READER2).await,
        (200, 200, false.into(), 200, 403)
    );
    // Taken out of api_keys, left in dashboard_admin_keys.
    assert_eq!(
        statuses("127.0.0.1", own, REMOVED).await,
        refused,
        "not in api_keys"
    );
    // A peer stanza's api_keys replace them for its clients.
    assert_eq!(
        statuses("127.0.0.2", own, ADMIN).await,
        refused,
        "replaced by the peer's api_keys"
    );
    assert_eq!(
        statuses("127.0.0.2", own, READER).await,
        (200, 200, false.into(), 200, 403)
    );
    // Where the listener accepts it, the admin key acts.
    assert_eq!(
        statuses("127.0.0.1", own, ADMIN).await,
        (200, 200, true.into(), 200, 200)
    );
    server.shutdown(Duration::from_secs(5)).await;
}

/// The dashboard's "fail the queue" fails each notification with the reason of the console's `fail domain`,
/// Momentum's (reference/momentum.md §6.2): one action, one reason in the logs, the metrics and the outcomes.
#[tokio::test]
async fn the_dashboards_fail_gives_the_consoles_reason() {
    let s = setup().await;
    let url = |p: &str| format!("{}{p}", s.base);
    // The notification setup() sent waits in its queue (its route is a closed port), on no connection.
    let queued = || {
        use std::sync::atomic::Ordering::Relaxed;
        s._server
            .engine
            .binding_stats("default", "held.example")
            .map_or((0, 0), |q| {
                (
                    q.active.load(Relaxed) + q.delayed.load(Relaxed),
                    q.in_flight.load(Relaxed),
                )
            })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while queued() != (1, 0) {
        assert!(
            std::time::Instant::now() < deadline,
            "not queued within 30 s: {:?}",
            queued()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = s
        .client
        .post(url("/dashboard/api/domains/held.example/fail"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let failed = loop {
        let body: serde_json::Value = s
            .client
            .get(url(
                "/dashboard/api/outcomes?domain=held.example&kind=permanent",
            ))
            .bearer_auth(READER)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if let Some(list) = body["outcomes"].as_array().filter(|l| !l.is_empty()) {
            break list.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no permanent outcome within 30 s: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(
        failed[0]["reason"],
        herald::control::commands::MANUAL_FAIL_REASON
    );
    assert_eq!(failed[0]["reason"], "554 Message manually purged.");
}
