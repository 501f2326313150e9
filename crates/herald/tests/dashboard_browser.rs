//! The web dashboard in a real browser (docs/architecture.md, "Web dashboard"): headless Chromium driven over the
//! W3C WebDriver protocol (chromedriver, spoken with reqwest). A wrong key gets the login page and no data; after
//! logging in the Overview shows zero; 1,000 notifications sent through the REST API show as delivered on the
//! page without a reload; the domain whose simulator answers 503 shows the reason and its queued count; a
//! read-only key's flush is refused; an admin's flush makes the simulator receive the notifications again; outcomes
//! arriving while the Outcomes page opens show once; a reload whose new listener cannot start shows as a failure.
//! A screenshot of every page is saved under `target/dashboard-screenshots/`.
//!
//! Needs `/usr/bin/chromium` and `/usr/bin/chromedriver` (Debian `chromium`, `chromium-driver`): without them the
//! test fails when `CI=1` and is skipped (with a message) otherwise.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{CertVariant, Pki, SimConfig, SimHandle, Simulator};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const TOPIC: &str = "com.example.dashboard";
const READER: &str = "dash-reader-key";
const ADMIN: &str = "dash-admin-key";
const OK: &str = "ok.example";
const BUSY: &str = "busy.example";
const SENT: usize = 1000;
const BUSY_SENT: usize = 5;
const WAIT: Duration = Duration::from_secs(60);
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// Whether the browser is installed; `false` means skip (outside CI).
fn browser_available() -> bool {
    let present = Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists();
    if !present {
        let ci = std::env::var("CI").is_ok_and(|v| v == "1" || v == "true");
        assert!(
            !ci,
            "the dashboard browser test needs {CHROMIUM} and {CHROMEDRIVER} (Debian packages chromium and \
             chromium-driver); install them in CI"
        );
        eprintln!(
            "SKIPPED: dashboard browser test: {CHROMIUM} or {CHROMEDRIVER} is missing (apt install chromium \
             chromium-driver); set CI=1 to make this a failure"
        );
    }
    present
}

fn screenshot_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let dir = target.join("dashboard-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A chromedriver process and one browser session.
struct Browser {
    http: reqwest::Client,
    url: String,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Browser {
    async fn start() -> Browser {
        let port = support::free_port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let http = reqwest::Client::new();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = match http.get(format!("{base}/status")).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .ok()
                    .is_some_and(|v| v["value"]["ready"] == true),
                Err(_) => false,
            };
            if ready {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                         "--disable-background-networking", "--disable-component-update", "--disable-sync",
                         format!("--user-data-dir={}", profile.path().display()), "--window-size=1280,900"],
            },
        }}});
        let r: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {r}"))
            .to_owned();
        Browser {
            http,
            url: format!("{base}/session/{session}"),
            driver,
            _profile: profile,
        }
    }

    async fn cmd(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let v: Value = req.send().await.unwrap().json().await.unwrap();
        if v["value"].get("error").is_some() {
            panic!("WebDriver {path}: {v}");
        }
        v["value"].clone()
    }

    async fn goto(&self, url: &str) {
        self.cmd(reqwest::Method::POST, "/url", Some(json!({ "url": url })))
            .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.cmd(
            reqwest::Method::POST,
            "/execute/sync",
            Some(json!({ "script": script, "args": [] })),
        )
        .await
    }

    async fn element(&self, css: &str) -> String {
        let v = self
            .cmd(
                reqwest::Method::POST,
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        v[ELEMENT].as_str().unwrap().to_owned()
    }

    /// Runs `actions` (element command, body) on the element matching `css`. The pages re-render on their refresh
    /// tick, so an element found a moment ago may have been replaced by the time a command arrives ("stale element
    /// reference"): it is then looked up again and the actions start over, until a deadline.
    async fn on_element(&self, css: &str, actions: &[(&str, Value)]) {
        let deadline = Instant::now() + WAIT;
        'again: loop {
            let e = self.element(css).await;
            for (action, body) in actions {
                let v: Value = self
                    .http
                    .post(format!("{}/element/{e}/{action}", self.url))
                    .json(body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                match v["value"].get("error").and_then(Value::as_str) {
                    None => {}
                    Some("stale element reference") if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue 'again;
                    }
                    Some(_) => panic!("WebDriver {action} on {css}: {v}"),
                }
            }
            return;
        }
    }

    async fn click(&self, css: &str) {
        self.on_element(css, &[("click", json!({}))]).await;
    }

    async fn type_into(&self, css: &str, text: &str) {
        self.on_element(
            css,
            &[("clear", json!({})), ("value", json!({ "text": text }))],
        )
        .await;
    }

    /// The text of the first element matching `css`, or "" when there is none.
    async fn text(&self, css: &str) -> String {
        let script = format!(
            "const e = document.querySelector({}); return e ? e.textContent : '';",
            serde_json::to_string(css).unwrap()
        );
        self.js(&script)
            .await
            .as_str()
            .unwrap_or("")
            .trim()
            .to_owned()
    }

    /// Waits until the text of `css` satisfies `ok` (the page updates itself; nothing reloads it).
    async fn wait_text(&self, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let t = self.text(css).await;
            if ok(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "{css}: waited for {what}, the page shows {t:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let v = self.cmd(reqwest::Method::GET, "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(v.as_str().unwrap())
            .unwrap();
        std::fs::write(screenshot_dir().join(format!("{name}.png")), png).unwrap();
    }

    async fn resize(&self, width: u32, height: u32) {
        self.cmd(
            reqwest::Method::POST,
            "/window/rect",
            Some(json!({ "width": width, "height": height })),
        )
        .await;
    }

    async fn login(&self, key: &str) {
        self.wait_text("#login h1", "the login page", |t| t == "Log in")
            .await;
        self.type_into("#key", key).await;
        self.click("#login-button").await;
    }

    async fn close(&self) {
        self.cmd(reqwest::Method::DELETE, "", None).await;
    }
}

struct Setup {
    dir: tempfile::TempDir,
    server: Arc<Server>,
    http: String,
    ok_sim: SimHandle,
    busy_sim: SimHandle,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let m = &pki.manifest;
    let ok_sim = Simulator::start(SimConfig::from_pki(m).unwrap())
        .await
        .unwrap();
    let mut busy = SimConfig::from_pki(m).unwrap();
    busy.scenario
        .errors
        .insert("ServiceUnavailable".into(), 1.0);
    let busy_sim = Simulator::start(busy).await.unwrap();
    let client = pki.client(TOPIC, CertVariant::Universal).unwrap();
    let text = format!(
        r#"spool_dir = "{spool}"
http_listener {{
  api_keys = ( "{READER}" "{ADMIN}" )
  dashboard_admin_keys = ( "{ADMIN}" )
  listen "127.0.0.1:0" {{ http_services = ( push dashboard ) }}
}}
domain "{OK}" {{
  delivery_method = apn
  routes = ( "https://{ok}" )
  tls_verify = ca
  tls_ca = "{ca}"
  tls_certificate = "{cert}"
  tls_key = "{key}"
  apn_topic = "{TOPIC}"
}}
domain "{BUSY}" {{
  delivery_method = apn
  routes = ( "https://{busy}" )
  tls_verify = ca
  tls_ca = "{ca}"
  tls_certificate = "{cert}"
  tls_key = "{key}"
  apn_topic = "{TOPIC}"
  max_outbound_connections = 1
  retry_interval = 3600
  max_retry_interval = 3600
}}
"#,
        spool = dir.path().join("spool").display(),
        ok = ok_sim.addrs.h2,
        busy = busy_sim.addrs.h2,
        ca = m.ca_cert.display(),
        cert = client.cert.display(),
        key = client.key.display(),
    );
    let config = dir.path().join("herald.conf");
    std::fs::write(&config, text).unwrap();
    let server = Server::start(&config).await.unwrap();
    let http = server.addrs().await.http[0].to_string();
    Setup {
        dir,
        server,
        http,
        ok_sim,
        busy_sim,
    }
}

async fn push(http: &str, domain: &str, tokens: Vec<String>) {
    let r = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/push"))
        .bearer_auth(READER)
        .json(&json!({ "domain": domain, "tokens": tokens, "payload": {"aps": {"alert": "dashboard"}} }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
}

fn tokens(kind: u64, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{:064x}", (kind << 40) + i as u64))
        .collect()
}

/// Outcomes keep arriving while the Outcomes page reads its list (between two ticks): the next tick carries
/// some of those the list had, and each still shows once. Opened a few times, as the moment of the read within the
/// second decides how many arrive twice.
async fn outcomes_show_once_while_they_arrive(s: &Setup, b: &Browser, page: &str) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = Arc::new(AtomicBool::new(false));
    let pusher = {
        let (http, stop) = (s.http.clone(), stop.clone());
        tokio::spawn(async move {
            // About 20 outcomes a second: several between any two ticks.
            while !stop.load(Ordering::Relaxed) {
                push(&http, OK, tokens(3, 1)).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let newest = "return state.outcomes.reduce((m, o) => Math.max(m, o.seq), 0)";
    for round in 0..4 {
        b.goto(&format!("{page}#/overview")).await;
        b.wait_text("#delivered", "the overview", |t| !t.is_empty())
            .await;
        b.goto(&format!("{page}#/outcomes")).await;
        b.wait_text("#outcomes tbody", "outcomes", |t| t.contains(OK))
            .await;
        // The list read, then a few ticks' outcomes after it (the read adds at most a tick's worth).
        let first = b.js(newest).await.as_u64().unwrap();
        let deadline = Instant::now() + WAIT;
        while b.js(newest).await.as_u64().unwrap() < first + 60 {
            assert!(
                Instant::now() < deadline,
                "round {round}: no new outcomes on the page"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let seqs: Vec<u64> =
            serde_json::from_value(b.js("return state.outcomes.map((o) => o.seq)").await).unwrap();
        let mut unique = seqs.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            seqs.len(),
            "round {round}: outcomes shown twice: {seqs:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    pusher.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_watches_delivery_and_acts_in_a_browser() {
    if !browser_available() {
        return;
    }
    let s = setup().await;
    let b = Browser::start().await;
    let page = format!("http://{}/dashboard/", s.http);

    // A wrong key gets the login page back, and no data.
    b.goto(&page).await;
    b.login("not-a-key").await;
    b.wait_text("#login-error", "a refusal", |t| !t.is_empty())
        .await;
    assert_eq!(
        b.js("return document.querySelector('#nav').hidden").await,
        true
    );
    assert_eq!(b.text("#page").await, "");
    b.screenshot("login-refused").await;

    // A read-only key: the overview shows zero.
    b.login(READER).await;
    b.wait_text("#delivered", "zero delivered", |t| t == "0")
        .await;
    assert_eq!(b.text("#accepted").await, "0");
    assert_eq!(b.text("#oldest-queued").await, "none");
    assert!(b.text("#who").await.starts_with("read-only"));

    // A malformed link (no percent-encoded text) says so, instead of throwing at every tick; the pages go on.
    b.goto(&format!("{page}#/domain/%E0")).await;
    b.wait_text("#bad-link", "the malformed link's note", |t| {
        t.contains("malformed")
    })
    .await;
    b.goto(&format!("{page}#/overview")).await;

    // 1,000 notifications through the REST API: the page counts them without a reload.
    b.js("window.__not_reloaded = true; return null").await;
    push(&s.http, OK, tokens(1, SENT)).await;
    b.wait_text("#delivered", "1,000 delivered", |t| t == "1,000")
        .await;
    assert_eq!(b.text("#accepted").await, "1,000");
    assert_eq!(
        b.js("return window.__not_reloaded === true").await,
        true,
        "the page was reloaded"
    );
    b.screenshot("overview").await;
    b.resize(390, 844).await;
    b.screenshot("overview-phone").await;
    b.resize(1280, 900).await;

    // The domain whose simulator answers 503: the reason and the queued count.
    push(&s.http, BUSY, tokens(2, BUSY_SENT)).await;
    b.goto(&format!("{page}#/domains")).await;
    b.wait_text("#domains tbody", "the busy domain's error", |t| {
        t.contains("ServiceUnavailable")
    })
    .await;
    // Its row says when the delayed ones are tried again (retry_interval is an hour).
    b.wait_text("#domains tbody", "the busy domain's next retry", |t| {
        t.split("in ")
            .skip(1)
            .any(|rest| rest.starts_with(|c: char| c.is_ascii_digit()) && rest.contains(" s"))
    })
    .await;
    let overflow = b
        .js("return document.documentElement.scrollWidth > window.innerWidth")
        .await;
    assert_eq!(
        overflow, false,
        "the Domains table needs horizontal scrolling at 1280 px"
    );
    b.screenshot("domains").await;
    // The Overview names the age of the oldest of them.
    b.goto(&format!("{page}#/overview")).await;
    b.wait_text(
        "#oldest-queued",
        "the oldest queued notification's age",
        |t| t.ends_with(" s") || t.ends_with(" min"),
    )
    .await;
    b.goto(&format!("{page}#/domain/{BUSY}")).await;
    b.wait_text("#d-delayed", "5 delayed", |t| t == BUSY_SENT.to_string())
        .await;
    b.wait_text("#d-last-error", "the APNs reason", |t| {
        t == "ServiceUnavailable"
    })
    .await;
    b.wait_text("#failures", "failures by reason", |t| {
        t.contains("ServiceUnavailable")
    })
    .await;
    b.screenshot("domain").await;

    // A read-only key may not flush.
    let received_before = s.busy_sim.stats().rejected.total;
    assert!(received_before >= BUSY_SENT as u64);
    b.click("#act-flush").await;
    b.wait_text("#toast", "the refusal", |t| {
        t.contains("Refused") && t.contains("admin")
    })
    .await;
    assert_eq!(s.busy_sim.stats().rejected.total, received_before);

    // An admin's flush: the simulator receives them again.
    b.click("#logout").await;
    b.login(ADMIN).await;
    b.wait_text("#who", "an admin session", |t| t.starts_with("admin"))
        .await;
    b.goto(&format!("{page}#/domain/{BUSY}")).await;
    b.wait_text("#d-delayed", "5 delayed", |t| t == BUSY_SENT.to_string())
        .await;
    b.click("#act-flush").await;
    let deadline = Instant::now() + WAIT;
    while s.busy_sim.stats().rejected.total < received_before + BUSY_SENT as u64 {
        assert!(
            Instant::now() < deadline,
            "the simulator did not receive the flushed notifications"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    b.wait_text("#toast", "the flush", |t| t.contains("due now"))
        .await;

    // Outcomes and Configuration.
    b.goto(&format!("{page}#/outcomes")).await;
    b.wait_text("#outcomes tbody", "outcomes", |t| {
        t.contains(OK) && t.contains("ServiceUnavailable")
    })
    .await;
    b.screenshot("outcomes").await;
    outcomes_show_once_while_they_arrive(&s, &b, &page).await;
    b.goto(&format!("{page}#/config")).await;
    b.wait_text("#disk-status", "the file's validation", |t| {
        t.starts_with("Valid")
    })
    .await;
    let running = b.text("#running").await;
    assert!(
        !running.contains(READER) && !running.contains(ADMIN),
        "{running}"
    );
    b.screenshot("config").await;

    // A reload whose new listener cannot bind its address: in force, and the page says the listener failed.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let config = s.dir.path().join("herald.conf");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "http_listener {{ listen \"{taken_addr}\" {{ http_services = ( push ) }} }}\n"
    ));
    std::fs::write(&config, text).unwrap();
    b.click("#reload").await;
    let errors = b
        .wait_text("#reload-listener-errors", "the listener's failure", |t| {
            !t.is_empty()
        })
        .await;
    assert!(errors.contains(&taken_addr.to_string()), "{errors}");
    let toast = b
        .wait_text("#toast", "the reload's toast", |t| t.contains("Reloaded"))
        .await;
    assert!(toast.contains("1 listener failed"), "{toast}");
    assert_eq!(
        b.js("return document.querySelector('#toast').className")
            .await,
        "bad"
    );
    b.screenshot("config-reload-listener-failed").await;
    drop(taken);

    b.close().await;
    let _ = s.ok_sim.stats();
    drop(s.server);
}

/// A time no date can show (APNs answered 410 with a timestamp far out of range) shows as its number and the
/// Domain page still renders; during a lockout the login page says what the server says (429, and the wait), not
/// that the key is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_show_an_out_of_range_time_and_a_lockouts_message() {
    if !browser_available() {
        return;
    }
    let s = setup().await;
    let b = Browser::start().await;
    let page = format!("http://{}/dashboard/", s.http);

    // A 410 whose timestamp (ms since the epoch, reference/apns.md) is past any date a browser can show.
    const FAR: u64 = 9_000_000_000_000_000;
    let token = tokens(4, 1);
    s.ok_sim.set_token(
        &token[0],
        herald_sim::TokenState::Unregistered,
        Some(TOPIC.into()),
        Some(FAR),
    );
    push(&s.http, OK, token.clone()).await;
    b.goto(&page).await;
    b.login(READER).await;
    b.wait_text("#who", "a session", |t| t.starts_with("read-only"))
        .await;
    b.goto(&format!("{page}#/domain/{OK}")).await;
    let invalid = b
        .wait_text("#invalid tbody", "the invalid token", |t| {
            t.contains(&token[0][..8])
        })
        .await;
    assert!(invalid.contains(&FAR.to_string()), "{invalid}");
    b.screenshot("domain-time-out-of-range").await;

    // Wrong keys up to auth_failure_limit (5): each "not accepted"; then the right key is refused for the wait,
    // and the page says so.
    b.click("#logout").await;
    let clear = "document.querySelector('#login-error').textContent = ''; return null";
    for _ in 0..5 {
        b.js(clear).await;
        b.login("not-a-key").await;
        let said = b
            .wait_text("#login-error", "the refusal", |t| !t.is_empty())
            .await;
        assert_eq!(said, "That key is not accepted here.");
    }
    b.js(clear).await;
    b.login(READER).await;
    let said = b
        .wait_text("#login-error", "the lockout", |t| !t.is_empty())
        .await;
    assert!(
        said.contains("too many wrong keys") && said.contains("try again in"),
        "{said}"
    );
    b.screenshot("login-locked-out").await;

    b.close().await;
    drop(s.server);
}
