//! Nothing a Momentum configuration says is accepted and then ignored: the module stanzas' `enabled = false`
//! turns their part off (docs/momentum-compat.md#modules, docs/momentum-compat.md#rest-injector), `herald check`
//! reports every option it accepts without acting on it and counts exactly the warnings it prints, and it refuses what
//! `herald serve` would refuse.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use support::token_auth_options;

const TOPIC: &str = "com.example.fidelity";
const DOMAIN: &str = "fidelity.example";
const WAIT: Duration = Duration::from_secs(60);

fn herald(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .output()
        .expect("run herald")
}

fn config_text(dir: &Path, pki: &Pki, port: u16, extra: &str) -> String {
    format!(
        r#"
spool_dir = "{spool}"
ec_logger "main" {{ mainlog = "{log}" }}
http_listener {{ listen "127.0.0.1:0" {{ }} }}
domain "{DOMAIN}" {{
{credentials}}}
{extra}
"#,
        spool = dir.join("spool").display(),
        log = dir.join("mainlog.ec").display(),
        credentials = token_auth_options(pki, port, TOPIC),
    )
}

struct Rig {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    pki: Pki,
    sim: SimHandle,
    server: Arc<Server>,
}

async fn rig(extra: &str) -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let pki = Pki::generate(&dir.join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
        .await
        .unwrap();
    let path = dir.join("herald.conf");
    std::fs::write(&path, config_text(&dir, &pki, sim.addrs.h2.port(), extra)).unwrap();
    let server = Server::start(&path).await.unwrap();
    Rig {
        _dir: tmp,
        path,
        pki,
        sim,
        server,
    }
}

impl Rig {
    fn rewrite(&self, extra: &str) {
        let dir = self.path.parent().unwrap();
        let text = config_text(dir, &self.pki, self.sim.addrs.h2.port(), extra);
        std::fs::write(&self.path, text).unwrap();
    }

    async fn push(&self, n: u64) -> (u16, serde_json::Value) {
        let http = self.server.addrs().await.http[0];
        let tokens: Vec<String> = (0..n).map(|i| format!("{:064x}", i + 1)).collect();
        let response = reqwest::Client::new()
            .post(format!("http://{http}/api/v1/push"))
            .json(&serde_json::json!({
                "domain": DOMAIN, "tokens": tokens, "payload": {"aps": {"alert": "x"}},
            }))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `restinjector { enabled = false }`: the REST injection routes answer 403 naming the stanza; a reload that
/// enables it again serves them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restinjector_off_refuses_rest_injection() {
    let rig = rig("restinjector { enabled = false }").await;
    let (status, body) = rig.push(1).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap_or_default()
            .contains("restinjector { enabled = false }"),
        "{body}"
    );
    rig.rewrite("restinjector { }");
    rig.server.reload(None).await.unwrap();
    let (status, body) = rig.push(1).await;
    assert_eq!(status, 202, "{body}");
    rig.server.shutdown(Duration::from_secs(5)).await;
}

/// `apn { enabled = false }`: notifications are accepted and queued but not sent; enabling the module (reload)
/// delivers them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apn_off_holds_delivery_until_it_is_enabled() {
    let rig = rig("apn { enabled = false }").await;
    assert!(rig.server.engine.is_held());
    let (status, body) = rig.push(3).await;
    assert_eq!(status, 202, "{body}");
    wait_until("the notifications to be queued", || {
        rig.server.summary().active_queue == 3
    })
    .await;
    // Held: the queue has had many dispatch rounds (50 ms ticks) and opened no connection.
    let queued_at = Instant::now();
    wait_until("a few queue ticks", || {
        queued_at.elapsed() > Duration::from_millis(300)
    })
    .await;
    assert_eq!(rig.sim.counters().accepted(), 0);
    assert_eq!(
        rig.sim
            .counters()
            .h2_connections
            .total
            .load(Ordering::Relaxed),
        0
    );
    rig.rewrite("apn { enabled = true }");
    rig.server.reload(None).await.unwrap();
    assert!(!rig.server.engine.is_held());
    wait_until("the held notifications to be delivered", || {
        rig.sim.counters().accepted() == 3
    })
    .await;
    rig.server.shutdown(Duration::from_secs(5)).await;
}

/// `httpsrv { enabled = false }`: no HTTP listener is started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httpsrv_off_starts_no_http_listener() {
    let rig = rig("httpsrv { enabled = false }").await;
    assert!(rig.server.addrs().await.http.is_empty());
    rig.rewrite("httpsrv { }");
    rig.server.reload(None).await.unwrap();
    assert_eq!(rig.server.addrs().await.http.len(), 1);
    rig.server.shutdown(Duration::from_secs(5)).await;
}

/// The warnings `herald check` prints, and the count in its summary line.
fn check_warnings(path: &Path) -> (Vec<String>, usize) {
    let p = path.display().to_string();
    let o = herald(&["check", "-c", &p]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{err}");
    let shown: Vec<String> = err
        .lines()
        .filter(|l| l.contains("warning"))
        .map(str::to_owned)
        .collect();
    let count = out
        .split(", ")
        .find_map(|part| {
            part.strip_suffix(" warnings\n")
                .or(part.strip_suffix(" warnings"))
        })
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no warning count in {out:?}"));
    (shown, count)
}

/// Every accepted-but-inert setting is a warning of `herald check`, and the count it prints is the number of
/// warnings it shows (configuration and credential warnings together).
#[test]
fn check_warns_about_every_inert_setting_and_counts_what_it_shows() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let text = format!(
        r#"
ec_logger "main" {{ mainlog = "{log}" }}
http_listener {{ listen "127.0.0.1:8081" {{ mcmt_reception = allow }} }}
restinjector {{ enabled = false }}
domain "{DOMAIN}" {{
{credentials}  tls = required
}}
domain "two.example" {{
{credentials}  routes = ( "https://127.0.0.1:1" "https://127.0.0.1:2" )
  tls_verify = no
}}
"#,
        log = dir.path().join("mainlog.ec").display(),
        credentials = token_auth_options(&pki, 2197, TOPIC),
    );
    let path = dir.path().join("herald.conf");
    std::fs::write(&path, text).unwrap();
    let (shown, count) = check_warnings(&path);
    let has = |needle: &str| shown.iter().any(|w| w.contains(needle));
    assert!(
        has("`mcmt_reception` has no effect in an http_listener"),
        "{shown:#?}"
    );
    assert!(has("restinjector { enabled = false }"), "{shown:#?}");
    assert!(has("`routes` lists 2 routes"), "{shown:#?}");
    assert!(has("`tls`"), "{shown:#?}");
    assert!(has("tls_verify"), "{shown:#?}");
    assert_eq!(count, shown.len(), "{shown:#?}");
}

/// An unreachable route writes transient-failure lines while notifications wait for a connection, naming the route
/// and the reason, before `mx_failures_to_delay` (here 0: never) would delay the queue. One line per logged
/// attempt, for the oldest waiting notification, not one per notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_connection_attempts_are_logged_as_transient_failures() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = support::free_port();
    let apnlog = dir.path().join("apnlog.ec");
    let extra = format!(
        "apn_logger \"a\" {{ logfile = \"{}\" }}\nmx_failures_to_delay = 0",
        apnlog.display()
    );
    let path = dir.path().join("herald.conf");
    std::fs::write(&path, config_text(dir.path(), &pki, port, &extra)).unwrap();
    let server = Server::start(&path).await.unwrap();
    let http = server.addrs().await.http[0];
    let tokens: Vec<String> = (0..2u64).map(|i| format!("{:064x}", i + 1)).collect();
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/push"))
        .json(&serde_json::json!({
            "domain": DOMAIN, "tokens": tokens, "payload": {"aps": {"alert": "x"}},
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let first_id = answer["results"][0]["id"].as_str().unwrap().to_owned();
    let t_lines = || -> Vec<Vec<String>> {
        server.logs().flush();
        support::log_fields(&apnlog)
            .into_iter()
            .filter(|f| f.get(1).map(String::as_str) == Some("T"))
            .collect()
    };
    wait_until("two transient-failure lines", || t_lines().len() >= 2).await;
    for t in t_lines() {
        assert_eq!(t[2], first_id, "the oldest waiting notification: {t:?}");
        assert_eq!(t[5], DOMAIN);
        assert!(
            t[12].contains(&format!("connection to 127.0.0.1:{port} failed")),
            "{t:?}"
        );
    }
    assert_eq!(server.summary().active_queue, 2, "still queued");
    server.shutdown(Duration::from_secs(1)).await;
}

/// `herald check` refuses what `herald serve` would refuse when it opens the logs: an apn_logger format with an
/// unknown macro, and a log file that cannot be written; `serve` names the problem once.
#[test]
fn check_refuses_bad_logger_formats_and_unwritable_log_files() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_dir = dir.path().join("plain-file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let write = |name: &str, body: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let bad_format = write(
        "format.conf",
        &format!(
            "spool_dir = \"{}\"\napn_logger \"a\" {{\n  logfile = \"{}\"\n  log_delivery_format = \"%t@D@%vctx_mess{{x}}\"\n}}\n",
            dir.path().join("spool").display(),
            dir.path().join("apn.ec").display()
        ),
    );
    let o = herald(&["check", "-c", &bad_format]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("apn_logger \"a\" log_delivery_format: unknown apn_logger macro %vctx_mess"),
        "{err}"
    );
    let serve = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "-c", &bad_format])
        .env("RUST_LOG", "off")
        .output()
        .unwrap();
    let serve_err = String::from_utf8_lossy(&serve.stderr).into_owned();
    assert!(!serve.status.success());
    assert_eq!(
        serve_err.matches("unknown apn_logger macro").count(),
        1,
        "{serve_err}"
    );

    let unwritable = write(
        "path.conf",
        &format!(
            "ec_logger \"m\" {{ mainlog = \"{}\" }}\n",
            not_a_dir.join("mainlog.ec").display()
        ),
    );
    let o = herald(&["check", "-c", &unwritable]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("ec_logger \"m\" mainlog") && err.contains("is not a directory"),
        "{err}"
    );
}

/// Runs `herald serve` on a configuration with `module` appended, delivers one notification, stops it, and
/// returns what it wrote on standard error (RUST_LOG unset, so the configuration sets the levels).
async fn serve_stderr(module: &str) -> String {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
        .await
        .unwrap();
    let path = dir.path().join("herald.conf");
    std::fs::write(
        &path,
        config_text(dir.path(), &pki, sim.addrs.h2.port(), module),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "-c"])
        .arg(&path)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    let http = ready["http"][0].as_str().unwrap().to_owned();
    let status = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/push"))
        .json(&serde_json::json!({
            "domain": DOMAIN, "tokens": ["ab".repeat(32)], "payload": {"aps": {"alert": "x"}},
        }))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status.as_u16(), 202);
    wait_until("the delivery", || sim.counters().accepted() == 1).await;
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `apn { debug_level = "debug" }` shows delivery's debug diagnostics (here: a (binding, domain) queue starting,
/// with its settings); without it the process stays at info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apn_debug_level_sets_the_level_of_delivery_diagnostics() {
    let debug = serve_stderr(r#"apn { debug_level = "debug" }"#).await;
    assert!(debug.contains("queue started"), "{debug}");
    let quiet = serve_stderr("apn { }").await;
    assert!(!quiet.contains("queue started"), "{quiet}");
}

/// A domain stanza that delivers to the simulator's binary gateway at `port` with the universal client certificate
/// of [`TOPIC`], in `format` (`apn_binary_format`).
fn binary_domain(pki: &Pki, domain: &str, port: u16, format: &str) -> String {
    let client = pki
        .client(TOPIC, herald_sim::CertVariant::Universal)
        .unwrap();
    format!(
        r#"
domain "{domain}" {{
  delivery_method = apn
  routes = ( "apn://127.0.0.1?port={port}" )
  tls_verify = ca
  tls_ca = "{ca}"
  tls_certificate = "{cert}"
  tls_key = "{key}"
  apn_binary_format = {format}
}}
"#,
        ca = pki.manifest.ca_cert.display(),
        cert = client.cert.display(),
        key = client.key.display(),
    )
}

/// What a binary domain's format cannot carry is refused at the door, never accepted and then dropped
/// (docs/apns-protocol.md#binary-options): with `apn_binary_format = enhanced` (command 1, no priority field, which
/// APNs takes as priority 10) a priority 5 and a background push (default priority 5) are refused naming the
/// priority and the frame format; on any binary domain a collapse id is refused naming it. The frame format takes
/// and sends priority 5, and what the enhanced format takes goes out as command 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_domain_refuses_the_options_its_format_cannot_carry() {
    let rig = rig("").await;
    let port = rig.sim.addrs.binary.port();
    rig.rewrite(&format!(
        "{}{}",
        binary_domain(&rig.pki, "enhanced.example", port, "enhanced"),
        binary_domain(&rig.pki, "frame.example", port, "frame"),
    ));
    rig.server.reload(None).await.unwrap();
    let http = rig.server.addrs().await.http[0];
    let token = |i: u64| format!("{:064x}", 0xb1_0000 + i);
    let push = |domain: &'static str, notifications: serde_json::Value| async move {
        let response = reqwest::Client::new()
            .post(format!("http://{http}/api/v1/push"))
            .json(&serde_json::json!({"domain": domain, "notifications": notifications}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 202, "{domain}");
        let answer: serde_json::Value = response.json().await.unwrap();
        answer["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["reason"].as_str().unwrap_or("accepted").to_owned())
            .collect::<Vec<_>>()
    };
    let notifications = |first: u64, collapse_id: bool| {
        let mut n = vec![
            serde_json::json!({"token": token(first), "payload": {"aps": {"alert": "five"}}, "priority": 5}),
            serde_json::json!({"token": token(first + 1), "payload": {"aps": {"content-available": 1}}}),
            serde_json::json!({"token": token(first + 2), "payload": {"aps": {"alert": "ten"}}}),
        ];
        if collapse_id {
            n.push(serde_json::json!({"token": token(first + 3), "payload": {"aps": {"alert": "c"}}, "collapse_id": "c"}));
        }
        serde_json::Value::Array(n)
    };

    let reasons = push("enhanced.example", notifications(0, true)).await;
    assert_eq!(reasons.len(), 4, "{reasons:?}");
    assert!(
        reasons[0].starts_with(
            "notifications[0].priority: priority 5 is not allowed here: this domain sends the enhanced (command 1) \
             binary format, which has no priority field"
        ) && reasons[0].contains("apn_binary_format = frame"),
        "{reasons:?}"
    );
    // The priority is the background push's default, which the request does not give: the door's text.
    assert!(
        reasons[1].starts_with("priority 5 is not allowed here: a background push")
            && reasons[1]
                .contains("Background pushes need the frame format: set apn_binary_format = frame"),
        "{reasons:?}"
    );
    assert_eq!(reasons[2], "accepted");
    assert!(
        reasons[3].starts_with(
            "notifications[3].collapse_id: apns-collapse-id cannot be sent over the binary protocol"
        ),
        "{reasons:?}"
    );
    let reasons = push("frame.example", notifications(10, true)).await;
    assert_eq!(reasons[..3], ["accepted", "accepted", "accepted"]);
    assert!(
        reasons[3].starts_with("notifications[3].collapse_id: "),
        "{reasons:?}"
    );

    wait_until("the deliveries", || rig.sim.counters().accepted() == 4).await;
    let mut sent: Vec<_> = rig
        .sim
        .record()
        .into_iter()
        .map(|r| (r.token, r.format, r.priority))
        .collect();
    sent.sort();
    assert_eq!(
        sent,
        [
            (token(2), Some(1), 10),
            (token(10), Some(2), 5),
            (token(11), Some(2), 5),
            (token(12), Some(2), 10),
        ]
    );
    rig.server.shutdown(Duration::from_secs(5)).await;
}
