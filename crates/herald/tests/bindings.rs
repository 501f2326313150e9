//! Bindings, binding groups and host stanzas drive delivery, not only `config eval`
//! (docs/momentum-compat.md#outbound-connections, docs/momentum-compat.md#fallback): every notification is delivered
//! from a binding (`default` unless the injection names one), each (binding, domain) has a pool of its own, every
//! delivery option resolves with the full fallback, a `host` stanza caps the connections to its host, and
//! `bind_address` is the source address of the binding's connections.
//!
//! Each test runs herald in-process against an APNs simulator that allows one stream per connection and answers
//! after a delay, so a connection saturates at once and the pool opens every connection it may: the number of
//! connections the simulator accepted is the pool size the configuration gave. Nothing closes a connection during
//! a test (long idle timeout, no errors), so that number is exact.

mod support;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use support::token_auth_options;

const TOPIC: &str = "com.example.bindings";
const DOMAIN: &str = "bindings.example";
const WAIT: Duration = Duration::from_secs(60);
/// Enough notifications to keep every allowed connection busy for a while.
const COUNT: usize = 120;

async fn start_sim(pki: &Pki) -> SimHandle {
    let mut config = SimConfig::from_pki(&pki.manifest).unwrap();
    config.max_concurrent_streams = 1;
    config.scenario.latency_ms = 20;
    Simulator::start(config).await.unwrap()
}

struct Rig {
    dir: tempfile::TempDir,
    sim: SimHandle,
    server: Arc<Server>,
    http: String,
}

/// herald with DOMAIN routed to a fresh simulator; `scopes` is the rest of the configuration, where `{DOMAIN}`
/// stanzas may appear, and `{CREDENTIALS}` stands for the route and credential lines of the domain.
async fn rig(scopes: &str) -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let pki = Pki::generate(&dir.join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim = start_sim(&pki).await;
    let text = config_text(&dir, &pki, sim.addrs.h2.port(), scopes);
    let path = dir.join("herald.conf");
    std::fs::write(&path, text).unwrap();
    let server = Server::start(&path).await.unwrap();
    let http = server.addrs().await.http[0].to_string();
    Rig {
        dir: tmp,
        sim,
        server,
        http,
    }
}

fn config_text(dir: &Path, pki: &Pki, port: u16, scopes: &str) -> String {
    let credentials = token_auth_options(pki, port, TOPIC);
    format!(
        r#"
spool_dir = "{spool}"
ec_logger "main" {{ mainlog = "{log}" }}
apn_logger "apn" {{ logfile = "{apnlog}" }}
http_listener {{ listen "127.0.0.1:0" {{ }} }}
esmtp_listener {{ listen "127.0.0.1:0" {{ mcmt_reception = allow }} }}
idle_timeout = 120
retry_interval = 1
max_retry_interval = 1
domain "{DOMAIN}" {{
{credentials}}}
{scopes}
"#,
        scopes = scopes.replace("{CREDENTIALS}", &credentials),
        spool = dir.join("spool").display(),
        log = dir.join("mainlog.ec").display(),
        apnlog = dir.join("apnlog.ec").display(),
    )
}

impl Rig {
    /// Posts COUNT notifications for DOMAIN from `binding` (none: the field is left out); returns the answer.
    async fn push(&self, binding: Option<&str>, base: u64) -> (u16, serde_json::Value) {
        self.push_to(DOMAIN, binding, base).await
    }

    /// [`Rig::push`] for any domain.
    async fn push_to(
        &self,
        domain: &str,
        binding: Option<&str>,
        base: u64,
    ) -> (u16, serde_json::Value) {
        let tokens: Vec<String> = (0..COUNT as u64)
            .map(|i| format!("{:064x}", base + i))
            .collect();
        let mut body = serde_json::json!({
            "domain": domain,
            "tokens": tokens,
            "payload": {"aps": {"alert": "binding"}},
        });
        if let Some(b) = binding {
            body["binding"] = serde_json::Value::from(b);
        }
        let response = reqwest::Client::new()
            .post(format!("http://{}/api/v1/push", self.http))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// Posts and expects every notification accepted.
    async fn push_ok(&self, binding: Option<&str>, base: u64) {
        let (status, body) = self.push(binding, base).await;
        assert_eq!(status, 202, "{body}");
    }

    async fn wait_accepted(&self, n: u64) {
        let deadline = Instant::now() + WAIT;
        while self.sim.counters().accepted() < n {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} deliveries (have {})",
                self.sim.counters().accepted()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Connections the simulator accepted in all.
    fn connections(&self) -> u64 {
        self.sim
            .counters()
            .h2_connections
            .total
            .load(Ordering::Relaxed)
    }

    /// Connections open at the simulator now.
    fn open_connections(&self) -> u64 {
        self.sim
            .counters()
            .h2_connections
            .open
            .load(Ordering::Relaxed)
    }

    fn connections_from(&self, ip: &str) -> u64 {
        let ip: IpAddr = ip.parse().unwrap();
        self.sim
            .counters()
            .connections_by_source()
            .get(&ip)
            .copied()
            .unwrap_or(0)
    }
}

/// The issue's example: `binding "default"` sets the limit of notifications injected without a binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_binding_scope_limits_the_pool() {
    let rig = rig(r#"binding "default" { max_outbound_connections = 2 }"#).await;
    rig.push_ok(None, 0).await;
    rig.wait_accepted(COUNT as u64).await;
    assert_eq!(rig.connections(), 2, "binding default sets 2 connections");
    rig.server.shutdown(Duration::from_secs(5)).await;
}

/// A binding's own value, a binding group's value inherited by its binding, and a binding::domain value each
/// decide the pool of notifications injected from that binding; the default binding keeps the global value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_delivery_scope_level_sets_the_pool_size() {
    let rig = rig(&format!(
        r#"
max_outbound_connections = 1
binding "b3" {{ max_outbound_connections = 3 }}
binding_group "g" {{
  max_outbound_connections = 4
  binding "in_group" {{ }}
}}
binding "b_domain" {{
  max_outbound_connections = 5
  domain "{DOMAIN}" {{ max_outbound_connections = 2 }}
}}
"#
    ))
    .await;
    let mut expected = 0;
    let mut delivered = 0;
    for (i, (binding, pool)) in [
        (None, 1),
        (Some("b3"), 3),
        (Some("in_group"), 4),
        (Some("b_domain"), 2),
    ]
    .into_iter()
    .enumerate()
    {
        rig.push_ok(binding, (i as u64) << 32).await;
        delivered += COUNT as u64;
        rig.wait_accepted(delivered).await;
        expected += pool;
        assert_eq!(
            rig.connections(),
            expected,
            "binding {binding:?} should open {pool} connections"
        );
    }
    // The apn_logger names the binding group and binding each notification was delivered from.
    // The simulator accepts a notification before herald reads the answer and logs it: wait for the lines.
    let path = rig.dir.path().join("apnlog.ec");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let lines = loop {
        rig.server.logs().flush();
        let lines = support::log_fields(&path);
        let delivered_lines = lines.iter().filter(|f| f[1] == "D").count();
        if delivered_lines >= 4 * COUNT || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let from = |group: &str, binding: &str| {
        lines
            .iter()
            .filter(|f| f[1] == "D" && f[6] == group && f[7] == binding)
            .count()
    };
    assert_eq!(from("default", "default"), COUNT);
    assert_eq!(from("default", "b3"), COUNT);
    assert_eq!(from("g", "in_group"), COUNT);
    assert_eq!(from("default", "b_domain"), COUNT);
    // The mainlog's R lines name them as well (the last two fields), as its D lines do.
    let mainlog = support::log_fields(&rig.dir.path().join("mainlog.ec"));
    let received = |group: &str, binding: &str| {
        mainlog
            .iter()
            .filter(|f| f[4] == "R" && f[f.len() - 2] == group && f[f.len() - 1] == binding)
            .count()
    };
    assert_eq!(received("default", "default"), COUNT);
    assert_eq!(received("default", "b3"), COUNT);
    assert_eq!(received("g", "in_group"), COUNT);
    assert_eq!(received("default", "b_domain"), COUNT);
    rig.server.shutdown(Duration::from_secs(5)).await;
}

/// A `host` stanza for the route's host caps the connections to it; one inside a binding applies to that binding only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_stanzas_cap_the_connections_to_their_host() {
    let rig = rig(r#"
max_outbound_connections = 6
host "127.0.0.1" { max_outbound_connections = 2 }
binding "other" {
  host "127.0.0.1" { max_outbound_connections = 3 }
}
"#)
    .await;
    rig.push_ok(None, 0).await;
    rig.wait_accepted(COUNT as u64).await;
    assert_eq!(rig.connections(), 2, "the global host stanza caps at 2");
    rig.push_ok(Some("other"), 1 << 32).await;
    rig.wait_accepted(2 * COUNT as u64).await;
    assert_eq!(
        rig.connections(),
        2 + 3,
        "binding other's host stanza caps at 3"
    );
    rig.server.shutdown(Duration::from_secs(5)).await;
}

/// A `host` stanza caps every connection to its host together, whichever (binding, domain) pool opens it
/// (docs/configuration.md, "Bindings in delivery"): two domains routed to one host, each allowed 6 connections of its own, and
/// the host capped at 3 — the simulator sees 3 connections in all, while both domains are delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cap_covers_every_pool_routed_to_the_host() {
    let rig = rig(r#"
max_outbound_connections = 6
host "127.0.0.1" { max_outbound_connections = 3 }
domain "second.example" {
{CREDENTIALS}}
"#)
    .await;
    let (a, b, c) = tokio::join!(
        rig.push_to(DOMAIN, None, 0),
        rig.push_to("second.example", None, 1 << 32),
        rig.push_to("second.example", Some("default"), 2 << 32),
    );
    for (status, body) in [a, b, c] {
        assert_eq!(status, 202, "{body}");
    }
    rig.wait_accepted(3 * COUNT as u64).await;
    let peak = rig
        .sim
        .counters()
        .h2_connections
        .peak
        .load(Ordering::Relaxed);
    assert_eq!(peak, 3, "the host cap is shared by both domains");
    rig.server.shutdown(Duration::from_secs(5)).await;
}

/// A reload that lowers a host's cap drains connections (of whichever pools) down to it, and later work opens no
/// connection beyond it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_lowering_a_host_cap_drains_the_host_down_to_it() {
    let scopes = |cap: u32| {
        format!(
            r#"
max_outbound_connections = 6
host "127.0.0.1" {{ max_outbound_connections = {cap} }}
domain "second.example" {{
{{CREDENTIALS}}}}
"#
        )
    };
    let rig = rig(&scopes(4)).await;
    let (a, b) = tokio::join!(
        rig.push_to(DOMAIN, None, 0),
        rig.push_to("second.example", None, 1 << 32),
    );
    assert_eq!(a.0, 202, "{}", a.1);
    assert_eq!(b.0, 202, "{}", b.1);
    rig.wait_accepted(2 * COUNT as u64).await;
    let peak = || {
        rig.sim
            .counters()
            .h2_connections
            .peak
            .load(Ordering::Relaxed)
    };
    assert_eq!(peak(), 4);

    let path = rig.dir.path().join("herald.conf");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace(
            r#"host "127.0.0.1" { max_outbound_connections = 4 }"#,
            r#"host "127.0.0.1" { max_outbound_connections = 2 }"#,
        ),
    )
    .unwrap();
    let report = rig.server.reload(None).await.unwrap();
    assert!(report.unroutable.is_empty(), "{report:?}");
    // Work keeps every pool busy while the surplus drains.
    let (a, b) = tokio::join!(
        rig.push_to(DOMAIN, None, 2 << 32),
        rig.push_to("second.example", None, 3 << 32),
    );
    assert_eq!(a.0, 202, "{}", a.1);
    assert_eq!(b.0, 202, "{}", b.1);
    let deadline = Instant::now() + WAIT;
    while rig.open_connections() > 2 {
        assert!(
            Instant::now() < deadline,
            "still {} connections open",
            rig.open_connections()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rig.wait_accepted(4 * COUNT as u64).await;
    assert!(rig.open_connections() <= 2, "{}", rig.open_connections());
    rig.server.shutdown(Duration::from_secs(5)).await;
}

/// `bind_address` is the source address of the binding's connections, and each (binding, domain) has a pool of
/// its own: two bindings on two loopback addresses open their limit each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_address_is_the_source_of_each_binding_s_own_pool() {
    let rig = rig(r#"
binding "two" { bind_address = 127.0.0.2  max_outbound_connections = 2 }
binding_group "grp" {
  bind_address = 127.0.0.3
  binding "three" { max_outbound_connections = 3 }
}
"#)
    .await;
    // Both bindings at once: their pools fill side by side.
    let (a, b) = tokio::join!(rig.push(Some("two"), 0), rig.push(Some("three"), 1 << 32));
    assert_eq!(a.0, 202, "{}", a.1);
    assert_eq!(b.0, 202, "{}", b.1);
    rig.wait_accepted(2 * COUNT as u64).await;
    assert_eq!(rig.connections_from("127.0.0.2"), 2);
    assert_eq!(rig.connections_from("127.0.0.3"), 3);
    assert_eq!(rig.connections_from("127.0.0.1"), 0);
    assert_eq!(rig.connections(), 5);
    rig.server.shutdown(Duration::from_secs(5)).await;
}

/// A binding that is not declared is refused at the door, naming the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_binding_is_refused() {
    let rig = rig("").await;
    let (status, body) = rig.push(Some("nowhere"), 0).await;
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap_or_default().to_string();
    assert!(
        error.contains("binding") && error.contains("nowhere"),
        "{body}"
    );
    rig.server.shutdown(Duration::from_secs(5)).await;
}

/// Momentum's REST injection names the binding with an `X-Binding` header of the MCMT message (the same header
/// works over SMTP): the notification goes out from that binding's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcmt_x_binding_header_selects_the_binding() {
    let rig = rig(r#"binding "two" { bind_address = 127.0.0.2 }"#).await;
    let template = "From: <%= :from %>\r\nTo: <%= :to %>\r\nX-Binding: two\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/vnd.msys.mcmt; boundary=\"b\"\r\n\r\n--b\r\n\
        Content-Type: message/vnd.msys.apn\r\n\r\n{\"aps\":{\"alert\":\"hi\"}}\r\n--b--\r\n";
    let token = "ab".repeat(32);
    let body = serde_json::json!({
        "template": template,
        "recipients": [{"to": format!("{token}@{DOMAIN}"), "from": "app@example.com"}],
    });
    let response = reqwest::Client::new()
        .post(format!("http://{}/v1.0/inject", rig.http))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    rig.wait_accepted(1).await;
    assert_eq!(rig.connections_from("127.0.0.2"), 1);
    assert_eq!(rig.connections_from("127.0.0.1"), 0);
    rig.server.shutdown(Duration::from_secs(5)).await;
}

/// `herald serve` as a process (a restart needs the spool released).
struct Daemon(std::process::Child, String);

impl Daemon {
    fn start(config: &Path) -> Daemon {
        use std::io::BufRead;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["serve", "-c"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let http = v["http"][0].as_str().unwrap().to_owned();
        Daemon(child, http)
    }

    fn terminate(mut self) {
        let pid = self.0.id().to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(self.0.wait().unwrap().success());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binding is kept with the spooled notification: accepted while APNs cannot be reached, delivered after a
/// restart from the binding's address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binding_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let pki = Pki::generate(&dir.join("pki"), &[TOPIC.to_string()]).unwrap();
    let scopes = r#"binding "two" { bind_address = 127.0.0.2 }"#;
    let path = dir.join("herald.conf");
    // First run: nothing listens on the route's port yet.
    let port = support::free_port();
    std::fs::write(&path, config_text(&dir, &pki, port, scopes)).unwrap();
    let daemon = Daemon::start(&path);
    let tokens: Vec<String> = (0..5u64).map(|i| format!("{:064x}", i + 1)).collect();
    let response = reqwest::Client::new()
        .post(format!("http://{}/api/v1/push", daemon.1))
        .json(&serde_json::json!({
            "domain": DOMAIN, "binding": "two", "tokens": tokens,
            "payload": {"aps": {"alert": "later"}},
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
    daemon.terminate();

    // Second run: the simulator is there.
    let mut config = SimConfig::from_pki(&pki.manifest).unwrap();
    config.h2_port = port;
    let sim = Simulator::start(config).await.unwrap();
    let daemon = Daemon::start(&path);
    let deadline = Instant::now() + WAIT;
    while sim.counters().accepted() < 5 {
        assert!(
            Instant::now() < deadline,
            "the spooled notifications were not delivered"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let by_source = sim.counters().connections_by_source();
    let two: IpAddr = "127.0.0.2".parse().unwrap();
    assert!(
        by_source.get(&two).copied().unwrap_or(0) >= 1,
        "{by_source:?}"
    );
    assert_eq!(
        by_source.len(),
        1,
        "only binding two's address: {by_source:?}"
    );
    daemon.terminate();
}

/// One MCMT message over SMTP to `rcpt`, with an `X-Binding` header when `binding` is given; returns the reply
/// to the end of DATA.
async fn smtp(addr: std::net::SocketAddr, rcpt: &str, binding: Option<&str>) -> String {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    async fn reply<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).await.unwrap();
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return all;
            }
        }
    }
    assert!(reply(&mut r).await.starts_with("220"));
    let header = binding
        .map(|b| format!("X-Binding: {b}\r\n"))
        .unwrap_or_default();
    let message = format!(
        "From: <app@sender.example>\r\nTo: <{rcpt}>\r\n{header}MIME-Version: 1.0\r\n\
         Content-Type: multipart/vnd.msys.mcmt; boundary=\"b\"\r\n\r\n--b\r\n\
         Content-Type: message/vnd.msys.apn\r\n\r\n{{\"aps\":{{\"alert\":\"smtp\"}}}}\r\n--b--\r\n.\r\n"
    );
    for (cmd, code) in [
        ("EHLO test\r\n".to_owned(), "250"),
        ("MAIL FROM:<app@sender.example>\r\n".to_owned(), "250"),
        (format!("RCPT TO:<{rcpt}>\r\n"), "250"),
        ("DATA\r\n".to_owned(), "354"),
    ] {
        w.write_all(cmd.as_bytes()).await.unwrap();
        let answer = reply(&mut r).await;
        assert!(answer.starts_with(code), "{cmd:?}: {answer}");
    }
    w.write_all(message.as_bytes()).await.unwrap();
    let answer = reply(&mut r).await;
    let _ = w.write_all(b"QUIT\r\n").await;
    answer
}

/// Over SMTP, the `X-Binding` header selects the binding; a domain declared only inside a binding is accepted at
/// RCPT and delivered from that binding's address, and refused when the message names no binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtp_x_binding_delivers_a_domain_declared_in_a_binding() {
    let rig = rig(r#"
binding "b2" {
  bind_address = 127.0.0.2
  domain "only.example" {
{CREDENTIALS}  }
}
"#)
    .await;
    let esmtp = rig.server.addrs().await.esmtp[0];
    let rcpt = format!("{}@only.example", "cd".repeat(32));
    let answer = smtp(esmtp, &rcpt, Some("b2")).await;
    assert!(answer.starts_with("250"), "{answer}");
    rig.wait_accepted(1).await;
    assert_eq!(rig.connections_from("127.0.0.2"), 1);
    let answer = smtp(esmtp, &rcpt, None).await;
    assert!(answer.starts_with('5'), "{answer}");
    assert!(answer.contains("only.example"), "{answer}");
    rig.server.shutdown(Duration::from_secs(5)).await;
}

/// A reload that removes a binding in use reports its queue as unroutable by `binding:domain`, and the domain's
/// other queues stay in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_removes_a_binding_names_its_queue() {
    let binding = r#"binding "gone" { max_outbound_connections = 1 }"#;
    let rig = rig(binding).await;
    rig.push_ok(None, 0).await;
    rig.push_ok(Some("gone"), 1 << 32).await;
    rig.wait_accepted(2 * COUNT as u64).await;
    let path = rig.server.config_path().to_owned();
    let text = std::fs::read_to_string(&path).unwrap().replace(binding, "");
    std::fs::write(&path, text).unwrap();
    let report = rig.server.reload(None).await.unwrap();
    assert_eq!(report.unroutable.len(), 1, "{report:?}");
    assert_eq!(report.unroutable[0].0, format!("gone:{DOMAIN}"));
    assert!(
        report.unroutable[0]
            .1
            .contains("binding \"gone\" is not declared")
    );
    // The default binding's queue of the same domain took the new settings.
    assert_eq!(report.domains, 1, "{report:?}");
    rig.server.shutdown(Duration::from_secs(5)).await;
}

/// `showqueue binding NAME DOMAIN` shows that binding's queue of the domain; without a selector every binding's,
/// each line naming its binding. Delivery is held (`apn { enabled = false }`) so the notifications stay queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn showqueue_selects_a_binding() {
    use herald::control::commands::{execute, parse};
    let rig = rig(r#"
apn { enabled = false }
binding "b" { }
"#)
    .await;
    rig.push_ok(None, 0).await;
    rig.push_ok(Some("b"), 1 << 32).await;
    let run = |line: &'static str| {
        let server = rig.server.clone();
        async move {
            let cmd = parse(line).unwrap().unwrap();
            let reply = execute(server.as_ref(), cmd).await;
            assert!(reply.ok, "{line}: {}", reply.text);
            reply.text
        }
    };
    let wait = Instant::now() + WAIT;
    while rig.server.summary().active_queue < 2 * COUNT as u64 {
        assert!(Instant::now() < wait, "queued: {:?}", rig.server.summary());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let count = |text: &str, tag: &str| text.lines().filter(|l| l.starts_with(tag)).count();
    let only_b = run("showqueue binding b bindings.example 1000,0").await;
    assert_eq!(count(&only_b, "[active/b]"), COUNT, "{only_b}");
    assert_eq!(count(&only_b, "[active/default]"), 0);
    let all = run("showqueue bindings.example 1000,0").await;
    assert_eq!(count(&all, "[active/b]"), COUNT);
    assert_eq!(count(&all, "[active/default]"), COUNT);
    // Momentum's spelling of every binding (docs/momentum-compat.md, console queue commands): `binding all`.
    let all_bindings = run("showqueue binding all bindings.example 1000,0").await;
    assert_eq!(all_bindings, all);
    // A binding named as mailq prints a grouped one (`group/binding`) selects that binding's queue.
    let grouped = run("showqueue binding grp/b bindings.example 1000,0").await;
    assert_eq!(grouped, only_b);
    // A binding without a queue for a domain that has queues is told apart from a domain without any.
    let unknown = execute(
        rig.server.as_ref(),
        parse("showqueue binding nosuch bindings.example")
            .unwrap()
            .unwrap(),
    )
    .await;
    assert!(!unknown.ok);
    assert_eq!(
        unknown.text,
        "Binding nosuch has no queue for domain bindings.example (no traffic from it since start).\n"
    );
    let no_domain = execute(
        rig.server.as_ref(),
        parse("showqueue binding b other.example").unwrap().unwrap(),
    )
    .await;
    assert!(!no_domain.ok);
    assert!(
        no_domain
            .text
            .starts_with("Domain other.example has no queue"),
        "{}",
        no_domain.text
    );
    rig.server.shutdown(Duration::from_secs(1)).await;
}

/// The feedback service is polled from every binding that reaches APNs differently (here: another source
/// address), with that binding's certificate and `bind_address`; a binding that changes nothing adds no poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feedback_service_is_polled_from_each_binding_s_address() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let pki = Pki::generate(&dir.join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim = start_sim(&pki).await;
    let client = pki
        .client(TOPIC, herald_sim::CertVariant::Universal)
        .unwrap();
    let scopes = format!(
        r#"
binding "two" {{ bind_address = 127.0.0.2 }}
binding "same" {{ max_outbound_connections = 3 }}
domain "legacy.example" {{
  delivery_method = apn
  routes = ( "apn://127.0.0.1?port={bin}" )
  tls_verify = ca
  tls_ca = "{ca}"
  tls_certificate = "{cert}"
  tls_key = "{key}"
  apn_feedback_interval = 1
  apn_feedback_address = "{feedback}"
}}
"#,
        bin = sim.addrs.binary.port(),
        ca = pki.manifest.ca_cert.display(),
        cert = client.cert.display(),
        key = client.key.display(),
        feedback = sim.addrs.feedback,
    );
    let path = dir.join("herald.conf");
    std::fs::write(&path, config_text(&dir, &pki, sim.addrs.h2.port(), &scopes)).unwrap();
    let server = Server::start(&path).await.unwrap();
    let from = |ip: &str| {
        let ip: IpAddr = ip.parse().unwrap();
        sim.counters()
            .connections_by_source()
            .get(&ip)
            .copied()
            .unwrap_or(0)
    };
    let feedback = || {
        sim.counters()
            .feedback_connections
            .total
            .load(Ordering::Relaxed)
    };
    // Polls go on (every second) while the counters are read, and a poll is counted by its source when its
    // connection is accepted and as a feedback poll once its handshake is done: a snapshot is taken between
    // polls, when the two agree.
    let snapshot = || async {
        let deadline = Instant::now() + WAIT;
        loop {
            let before = feedback();
            let (one, two) = (from("127.0.0.1"), from("127.0.0.2"));
            if feedback() == before && before == one + two {
                return (one, two);
            }
            assert!(
                Instant::now() < deadline,
                "{before} feedback polls, by source: {:?}",
                sim.counters().connections_by_source()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let deadline = Instant::now() + WAIT;
    // A few polls from each source, so that a second schedule would show as twice the pace.
    while from("127.0.0.1") < 3 || from("127.0.0.2") < 3 {
        assert!(
            Instant::now() < deadline,
            "feedback polls by source: {:?}",
            sim.counters().connections_by_source()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing is delivered: every connection is a feedback poll. The default binding and `same` reach APNs
    // the same way and share one schedule, so the two sources poll at the same pace (give or take the polls
    // of the moment the schedules start apart).
    assert_eq!(sim.counters().accepted(), 0);
    // Every connection is a feedback poll (the snapshot waits for the counts to agree).
    let (one, two) = snapshot().await;
    assert!(
        one <= two + 2 && two <= one + 2,
        "{:?}",
        sim.counters().connections_by_source()
    );
    server.shutdown(Duration::from_secs(5)).await;
}
