//! A `binding "default"` stanza (and the binding group that declares it) applies to notifications that name no
//! binding (docs/configuration.md, "Bindings in delivery"), and everything that shows a domain's settings or a
//! notification's binding says so as delivery does: the dashboard's Domains and Domain pages, `config eval domain
//! NAME OPTION` on the command line and through the console, and the mainlog's R line.
//!
//! herald runs in-process against an APNs simulator that allows one stream per connection and answers after a
//! delay, so that a pool opens every connection it may.

mod support;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use support::token_auth_options;

const DOMAIN: &str = "ok.example";
/// The topic of the global scope and of the domain stanza.
const TOPIC_A: &str = "com.example.a";
/// The topic of `binding "default"`, which delivery uses.
const TOPIC_B: &str = "com.example.b";
const KEY: &str = "default-binding-key-4f1e";
const WAIT: Duration = Duration::from_secs(60);
const COUNT: u64 = 40;
/// The default binding's scope, as the Domain page names it.
const BINDING_SCOPE: &str = r#"binding_group "gdef" binding "default""#;

struct Rig {
    dir: tempfile::TempDir,
    sim: SimHandle,
    server: Arc<Server>,
    base: String,
    socket: String,
    config: String,
}

fn config_text(dir: &Path, pki: &Pki, port: u16) -> String {
    format!(
        r#"
spool_dir = "{spool}"
ec_logger "main" {{ mainlog = "{log}" }}
http_listener {{
  api_keys = ( "{KEY}" )
  listen "127.0.0.1:0" {{ http_services = ( push dashboard ) }}
}}
control_listener {{ listen "{sock}" {{ file_mode = 0600 }} }}
idle_timeout = 120
max_retries = 5
apn_topic = "{TOPIC_A}"
domain "{DOMAIN}" {{
{credentials}}}
binding_group "gdef" {{
  binding "default" {{
    max_retries = 0
    apn_topic = "{TOPIC_B}"
    max_outbound_connections = 3
  }}
}}
"#,
        credentials = token_auth_options(pki, port, TOPIC_A),
        spool = dir.join("spool").display(),
        log = dir.join("mainlog.ec").display(),
        sock = dir.join("control.sock").display(),
    )
}

async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(
        &dir.path().join("pki"),
        &[TOPIC_A.to_string(), TOPIC_B.to_string()],
    )
    .unwrap();
    let mut sim_config = SimConfig::from_pki(&pki.manifest).unwrap();
    sim_config.max_concurrent_streams = 1;
    sim_config.scenario.latency_ms = 20;
    let sim = Simulator::start(sim_config).await.unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(&config, config_text(dir.path(), &pki, sim.addrs.h2.port())).unwrap();
    let server = Server::start(&config).await.unwrap();
    let base = format!("http://{}", server.addrs().await.http[0]);
    Rig {
        socket: dir.path().join("control.sock").display().to_string(),
        config: config.display().to_string(),
        dir,
        sim,
        server,
        base,
    }
}

impl Rig {
    /// Posts COUNT notifications for DOMAIN that name no binding.
    async fn push(&self) {
        let tokens: Vec<String> = (0..COUNT).map(|i| format!("{i:064x}")).collect();
        let r = reqwest::Client::new()
            .post(format!("{}/api/v1/push", self.base))
            .bearer_auth(KEY)
            .json(&serde_json::json!({
                "domain": DOMAIN,
                "tokens": tokens,
                "payload": {"aps": {"alert": "default binding"}},
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    }

    async fn get(&self, path: &str) -> serde_json::Value {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", self.base))
            .bearer_auth(KEY)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    /// The mainlog's lines, once `accept` holds for them (the log is flushed while waiting).
    async fn mainlog_until(&self, accept: impl Fn(&[Vec<String>]) -> bool) -> Vec<Vec<String>> {
        let path = self.dir.path().join("mainlog.ec");
        let deadline = Instant::now() + WAIT;
        loop {
            self.server.logs().flush();
            let lines = support::log_fields(&path);
            if accept(&lines) {
                return lines;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for the mainlog: {lines:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Runs the `herald` binary with `args`; returns its standard output, after checking that it succeeded.
async fn herald(args: &[&str]) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(args);
    cmd.env_remove("HERALD_CONSOLE_PASSWORD");
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "herald {args:?}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Delivery follows `binding "default"` (topic, connections); the dashboard shows its values and names it as
/// their scope, `config eval domain NAME OPTION` gives them on the command line and through the console, and the
/// R line names its binding group, as the D line does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_that_shows_a_domain_follows_the_default_binding() {
    let rig = rig().await;
    rig.push().await;
    assert_eq!(rig.sim.wait_for_accepted(COUNT, WAIT).await, COUNT);
    assert!(rig.sim.record().iter().all(|r| r.topic == TOPIC_B));

    // The Domain page: every option as delivery resolves it, and the scope it came from.
    let detail = rig.get(&format!("/dashboard/api/domains/{DOMAIN}")).await;
    let option = |name: &str| {
        detail["options"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no option {name} in {detail}"))
    };
    for (name, value) in [
        ("apn_topic", TOPIC_B),
        ("max_retries", "0"),
        ("max_outbound_connections", "3"),
    ] {
        assert_eq!(option(name)["value"], value, "{}", option(name));
        assert_eq!(option(name)["scope"], BINDING_SCOPE, "{}", option(name));
    }
    assert_eq!(option("idle_timeout")["scope"], "global");
    assert_eq!(
        option("apn_key_id")["scope"],
        format!("domain \"{DOMAIN}\"")
    );

    // The Domains page: the limit of the pool the notifications went through.
    let domains = rig.get("/dashboard/api/domains").await;
    let row = domains["domains"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["domain"] == DOMAIN)
        .cloned()
        .unwrap_or_else(|| panic!("no row for {DOMAIN} in {domains}"));
    assert_eq!(row["connection_limit"], 3, "{row}");
    assert!(row["connections"].as_u64().unwrap() <= 3, "{row}");

    // `config eval` on the command line and through the console.
    for option in ["apn_topic", "max_retries", "max_outbound_connections"] {
        let words = ["domain", DOMAIN, option];
        let binding = ["binding", "default", "domain", DOMAIN, option];
        let mut cli = vec!["config", "eval", "-c", &rig.config];
        cli.extend(words);
        let mut cli_binding = vec!["config", "eval", "-c", &rig.config];
        cli_binding.extend(binding);
        let mut console = vec!["console", &rig.socket, "config", "eval"];
        console.extend(words);
        let expected = herald(&cli_binding).await;
        assert_eq!(herald(&cli).await, expected, "{option}");
        assert_eq!(herald(&console).await.trim(), expected.trim(), "{option}");
    }
    assert_eq!(
        herald(&[
            "config",
            "eval",
            "-c",
            &rig.config,
            "domain",
            DOMAIN,
            "apn_topic"
        ])
        .await,
        format!("apn_topic = {TOPIC_B}\n")
    );

    // The R lines name the default binding's group, as the D lines do.
    let lines = rig
        .mainlog_until(|lines| {
            lines
                .iter()
                .filter(|f| f.get(4).is_some_and(|k| k == "R"))
                .count()
                >= COUNT as usize
        })
        .await;
    for f in lines.iter().filter(|f| f[4] == "R") {
        assert_eq!(
            f[f.len() - 2..],
            ["gdef".to_owned(), "default".to_owned()],
            "{f:?}"
        );
    }
    rig.server.shutdown(Duration::from_secs(5)).await;
}
