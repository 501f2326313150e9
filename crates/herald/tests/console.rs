//! `herald console` in batch mode against a real control socket (docs/momentum-compat.md#console): every command's
//! output after known traffic, the queue commands while APNs is down, reload errors, the TCP password and `shutdown`.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use support::{free_port, token_auth_options};

const TOPIC: &str = "com.example.console";
const WAIT: Duration = Duration::from_secs(60);
/// With a space and double quotes: the console sends any password whole.
const PASSWORD: &str = r#"s3cret "word""#;

/// What one `herald console` run printed.
#[derive(Debug)]
struct Output {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `herald console SOCKET ARGS…` (batch mode: a command is given, stdin is not a terminal).
async fn console(socket: &str, args: &[&str], password: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.arg("console").arg(socket).args(args);
    cmd.env_remove("HERALD_CONSOLE_PASSWORD");
    if let Some(p) = password {
        cmd.env("HERALD_CONSOLE_PASSWORD", p);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// Runs a command that must succeed; returns its output.
async fn ok(socket: &str, args: &[&str]) -> String {
    let out = console(socket, args, None).await;
    assert!(out.ok, "console {args:?} failed: {out:?}");
    out.stdout
}

/// Runs `args` until `accept` holds for its output.
async fn until(socket: &str, args: &[&str], accept: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = console(socket, args, None).await;
        if out.ok && accept(&out.stdout) {
            return out.stdout;
        }
        assert!(Instant::now() < deadline, "console {args:?}: {out:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The value of `Label:` in `summary`-style output.
fn field(text: &str, label: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}:")))
        .map(|v| v.trim().to_string())
}

fn token(i: usize) -> String {
    format!("{:064x}", 0xc0_2025_0000u64 + i as u64)
}

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    config: PathBuf,
    socket: String,
    server: Arc<Server>,
    http: String,
}

fn config_text(dir: &Path, pki: &Pki, routes: &[(&str, u16)], retry_interval: u32) -> String {
    let mut text = format!(
        r#"
spool_dir = "{spool}"
ec_logger "main" {{ mainlog = "{log}" }}
http_listener {{ listen "127.0.0.1:0" {{ }} }}
control_listener {{
  listen "{sock}" {{ file_mode = 0600 }}
  listen "127.0.0.1:0" {{ control_password = '{PASSWORD}' }}
}}
"#,
        spool = dir.join("spool").display(),
        log = dir.join("mainlog.ec").display(),
        sock = dir.join("control.sock").display(),
    );
    for (domain, port) in routes {
        text.push_str(&format!(
            r#"
domain "{domain}" {{
{credentials}  retry_interval = {retry_interval}
  max_retry_interval = {retry_interval}
  mx_failures_to_delay = 1
}}
"#,
            credentials = token_auth_options(pki, *port, TOPIC),
        ));
    }
    text
}

async fn setup(pki_dir: tempfile::TempDir, pki: &Pki, routes: &[(&str, u16)], retry: u32) -> Setup {
    setup_with(pki_dir, pki, routes, retry, "").await
}

/// [`setup`] with `extra` appended to the configuration.
async fn setup_with(
    pki_dir: tempfile::TempDir,
    pki: &Pki,
    routes: &[(&str, u16)],
    retry: u32,
    extra: &str,
) -> Setup {
    let dir = pki_dir.path().to_owned();
    let config = dir.join("herald.conf");
    let text = config_text(&dir, pki, routes, retry) + extra;
    std::fs::write(&config, text).unwrap();
    let server = Server::start(&config).await.unwrap();
    let addrs = server.addrs().await;
    let socket = dir.join("control.sock").display().to_string();
    assert!(addrs.control.contains(&socket), "{addrs:?}");
    Setup {
        http: addrs.http[0].to_string(),
        _dir: pki_dir,
        dir,
        config,
        socket,
        server,
    }
}

async fn start_sim(pki: &Pki, port: u16, unregistered: &[String]) -> SimHandle {
    let mut config = SimConfig::from_pki(&pki.manifest).unwrap();
    config.h2_port = port;
    config.scenario.unregistered = unregistered.to_vec();
    Simulator::start(config).await.unwrap()
}

async fn push(http: &str, domain: &str, tokens: &[String]) {
    push_from(http, None, domain, tokens).await
}

/// [`push`] from `binding` (none: the request names no binding).
async fn push_from(http: &str, binding: Option<&str>, domain: &str, tokens: &[String]) {
    let mut body = serde_json::json!({
        "domain": domain,
        "tokens": tokens,
        "payload": {"aps": {"alert": "console"}},
    });
    if let Some(b) = binding {
        body["binding"] = serde_json::Value::from(b);
    }
    let r = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/push"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

async fn wait_for_sim(sim: &SimHandle, tokens: &[String]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let got: Vec<String> = sim.record().into_iter().map(|r| r.token).collect();
        if tokens.iter().all(|t| got.contains(t)) {
            return;
        }
        assert!(Instant::now() < deadline, "not delivered: {tokens:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_commands_answer_in_momentum_shapes_after_known_traffic() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&tmp.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = free_port();
    let gone = token(99);
    let sim = start_sim(&pki, port, std::slice::from_ref(&gone)).await;
    let s = setup(tmp, &pki, &[("live.example", port)], 1).await;
    let sock = s.socket.as_str();

    // docs/momentum-compat.md#console: the Unix socket gets the stanza's File_Mode.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Ten notifications and one for a token APNs says is unregistered.
    let tokens: Vec<String> = (0..10).map(token).collect();
    push(&s.http, "live.example", &tokens).await;
    push(&s.http, "live.example", std::slice::from_ref(&gone)).await;
    wait_for_sim(&sim, &tokens).await;

    // docs/momentum-compat.md#console-queue-commands `summary`: the counters, one `Label: value` per line.
    let summary = until(sock, &["summary"], |o| {
        field(o, "Successfully Delivered Messages").as_deref() == Some("10")
            && field(o, "Failed Messages").as_deref() == Some("1")
    })
    .await;
    assert_eq!(field(&summary, "Received Messages").as_deref(), Some("11"));
    assert_eq!(field(&summary, "Total Queue Size").as_deref(), Some("0"));
    assert!(field(&summary, "Uptime").is_some(), "{summary}");

    // `domain NAME`: per-binding counters.
    let domain = ok(sock, &["domain", "live.example"]).await;
    assert!(domain.starts_with("Domain: live.example\n"), "{domain}");
    assert!(
        domain.contains(&format!("Route: https://127.0.0.1:{port}")),
        "{domain}"
    );
    let counter = |label: &str| {
        domain
            .lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{label}:")))
            .map(|v| v.trim().to_string())
    };
    assert_eq!(counter("Receptions").as_deref(), Some("11"));
    assert_eq!(counter("Deliveries").as_deref(), Some("10"));
    assert_eq!(counter("Failures (5xx)").as_deref(), Some("1"));
    // `domain all` shows the same report; gauges (connections, in flight, queues) may move between the calls.
    let counters_only = |report: &str| -> Vec<String> {
        report
            .lines()
            .filter(|l| {
                ![
                    "Active Connections:",
                    "In Flight:",
                    "Active Queue:",
                    "Delayed Queue:",
                ]
                .iter()
                .any(|g| l.trim_start().starts_with(g))
            })
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(
        counters_only(&ok(sock, &["domain", "all"]).await),
        counters_only(&domain)
    );

    // The unregistered token is in the invalid-token list (docs/apns-protocol.md#feedback-service: 410 Unregistered).
    let invalid = until(sock, &["tokens", "invalid"], |o| o.contains(&gone)).await;
    assert!(invalid.contains("live.example"), "{invalid}");
    assert!(
        invalid.ends_with("Total: 1 invalid token(s)\n"),
        "{invalid}"
    );
    let later = ok(sock, &["tokens", "invalid", "4102444800"]).await; // 2100-01-01
    assert_eq!(later, "Total: 0 invalid token(s)\n");

    // `summary reset` starts from zero.
    assert_eq!(ok(sock, &["summary", "reset"]).await, "Statistics reset.\n");
    let summary = ok(sock, &["summary"]).await;
    assert_eq!(
        field(&summary, "Successfully Delivered Messages").as_deref(),
        Some("0")
    );
    assert_eq!(field(&summary, "Received Messages").as_deref(), Some("0"));

    // docs/momentum-compat.md#console-config: `config eval` and `config show` print `name = value`.
    assert_eq!(
        ok(
            sock,
            &["config", "eval", "domain", "live.example", "retry_interval"]
        )
        .await,
        "retry_interval = 1\n"
    );
    assert_eq!(
        ok(
            sock,
            &["config", "show", "domain", "live.example", "apn_topic"]
        )
        .await,
        format!("apn_topic = {TOPIC}\n")
    );
    let shown = ok(sock, &["config", "show", "domain", "live.example"]).await;
    assert!(
        shown.contains("domain live.example {") || shown.contains("domain \"live.example\" {"),
        "{shown}"
    );
    let bad = console(
        sock,
        &["config", "eval", "domain", "live.example", "no_such_option"],
        None,
    )
    .await;
    assert!(!bad.ok && bad.stderr.contains("no_such_option"), "{bad:?}");

    // A broken file: every error printed, the running configuration stays.
    let broken = s.dir.join("broken.conf");
    std::fs::write(
        &broken,
        "domain \"x\" {\n  retry_interval = soon\n  max_retries = many\n}\n",
    )
    .unwrap();
    let out = console(sock, &["config", "reload", broken.to_str().unwrap()], None).await;
    assert!(!out.ok, "{out:?}");
    assert!(out.stderr.contains("broken.conf:2:"), "{out:?}");
    assert!(out.stderr.contains("broken.conf:3:"), "{out:?}");
    assert!(out.stderr.contains("running one stays in force"), "{out:?}");
    assert_eq!(s.server.generation(), 0);
    assert_eq!(
        ok(
            sock,
            &["config", "eval", "domain", "live.example", "retry_interval"]
        )
        .await,
        "retry_interval = 1\n"
    );

    // A good one is put in force.
    let text = std::fs::read_to_string(&s.config)
        .unwrap()
        .replace("retry_interval = 1", "retry_interval = 7")
        .replace("file_mode = 0600", "file_mode = 0600 timeout = 1");
    std::fs::write(&s.config, text).unwrap();
    let out = ok(sock, &["config", "reload"]).await;
    assert!(out.starts_with("Configuration reloaded from "), "{out}");
    assert!(out.contains("(generation 1)"), "{out}");
    assert_eq!(
        ok(
            sock,
            &["config", "eval", "domain", "live.example", "retry_interval"]
        )
        .await,
        "retry_interval = 7\n"
    );

    // The reloaded `timeout` holds for new connections: an idle one is told and closed
    // (docs/momentum-compat.md#console).
    {
        use tokio::io::AsyncReadExt;
        let mut idle = tokio::net::UnixStream::connect(sock).await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(WAIT, idle.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(answer, "ERR 23\nIdle timeout; closing.\n");
    }

    // The TCP listener wants its password (a herald addition to the Control_Listener of
    // docs/momentum-compat.md#console).
    let tcp = s
        .server
        .addrs()
        .await
        .control
        .into_iter()
        .find(|a| a.starts_with("127.0.0.1:"))
        .unwrap();
    let refused = console(&tcp, &["pid"], None).await;
    assert!(
        !refused.ok && refused.stderr.contains("auth PASSWORD"),
        "{refused:?}"
    );
    let wrong = console(&tcp, &["pid"], Some("guess")).await;
    assert!(
        !wrong.ok && wrong.stderr.contains("Authentication failed"),
        "{wrong:?}"
    );
    let right = console(&format!("admin@{tcp}"), &["pid"], Some(PASSWORD)).await;
    assert!(right.ok, "{right:?}");
    assert_eq!(right.stdout, format!("{}\n", std::process::id()));

    // The small ones.
    assert_eq!(
        ok(sock, &["version"]).await,
        format!("herald {}\n", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(
        ok(sock, &["pid"]).await,
        format!("{}\n", std::process::id())
    );
    assert_eq!(ok(sock, &["reopen", "logs"]).await, "Logs reopened.\n");
    let help = ok(sock, &["help"]).await;
    for c in [
        "summary",
        "config reload",
        "showqueue",
        "fail domain",
        "message retry",
        "tokens invalid",
        "shutdown",
    ] {
        assert!(help.contains(c), "help lacks {c}: {help}");
    }
    let unknown = console(sock, &["frobnicate"], None).await;
    assert!(!unknown.ok, "{unknown:?}");
    assert!(
        unknown.stderr.contains("unknown command `frobnicate`"),
        "{unknown:?}"
    );
    assert!(unknown.stderr.contains("help"), "{unknown:?}");

    // Without a command and without a terminal, commands come from standard input, one per line.
    let script = "# a comment\nversion\n\npid\nno such thing\nversion\n";
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["console", sock])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let version = format!("herald {}\n", env!("CARGO_PKG_VERSION"));
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{version}{}\n{version}", std::process::id())
    );
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("unknown command `no such thing`")
    );
    assert!(
        !out.status.success(),
        "a failed line makes the exit status non-zero"
    );

    // `shutdown` asks the process to stop.
    let server = s.server.clone();
    let stopped = tokio::spawn(async move { server.stop_requested().await });
    assert_eq!(ok(sock, &["shutdown"]).await, "Shutdown requested.\n");
    tokio::time::timeout(WAIT, stopped).await.unwrap().unwrap();
    s.server.shutdown(Duration::from_secs(5)).await;
    assert!(
        !Path::new(sock).exists(),
        "the socket file is removed on stop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_list_retry_flush_and_fail_while_apns_is_down() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&tmp.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let (up_later, never) = (free_port(), free_port());
    // Retries an hour apart: what is delayed stays delayed until the console says otherwise.
    let s = setup(
        tmp,
        &pki,
        &[("later.example", up_later), ("never.example", never)],
        3600,
    )
    .await;
    let sock = s.socket.as_str();

    let later: Vec<String> = (0..3).map(token).collect();
    let doomed: Vec<String> = (10..12).map(token).collect();
    push(&s.http, "later.example", &later).await;
    push(&s.http, "never.example", &doomed).await;

    // docs/momentum-compat.md#console-queue-commands `showqueue`: `[queue/binding] ID Created: T` then
    // `  From: <…> To: <…>`.
    let listing = until(sock, &["showqueue", "later.example"], |o| {
        o.lines()
            .filter(|l| l.starts_with("[delayed/default] "))
            .count()
            == 3
    })
    .await;
    let ids: Vec<String> = listing
        .lines()
        .filter_map(|l| l.strip_prefix("[delayed/default] "))
        .map(|l| l.split(' ').next().unwrap().to_string())
        .collect();
    for t in &later {
        assert!(
            listing.contains(&format!("To: <{t}@later.example>")),
            "{listing}"
        );
    }
    // A domain is found whatever its case, as by `domain` and `mailq -d`; keywords too.
    assert_eq!(
        ok(sock, &["SHOWQUEUE", "ALL", "Later.Example"]).await,
        listing
    );
    let window = ok(sock, &["showqueue", "later.example", "1,1"]).await;
    assert_eq!(
        window.lines().filter(|l| l.starts_with('[')).count(),
        1,
        "{window}"
    );
    until(sock, &["showqueue", "never.example"], |o| {
        o.matches("[delayed/default]").count() == 2
    })
    .await;

    // `mailq`: one row per domain with its queue sizes.
    let mailq = ok(sock, &["mailq"]).await;
    assert!(mailq.starts_with("Group/Binding"), "{mailq}");
    let row = |d: &str| {
        mailq
            .lines()
            .find(|l| l.contains(d))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_else(|| panic!("{d} in {mailq}"))
    };
    assert_eq!(row("later.example"), ["default", "later.example", "0", "3"]);
    assert_eq!(row("never.example"), ["default", "never.example", "0", "2"]);
    let one = ok(sock, &["mailq", "-d", "never.example"]).await;
    assert!(
        !one.contains("later.example") && one.contains("never.example"),
        "{one}"
    );

    // `message details ID`.
    let details = ok(sock, &["message", "details", &ids[0]]).await;
    assert!(
        details.starts_with(&format!("Message ID: {}\n", ids[0])),
        "{details}"
    );
    assert!(details.contains("Domain: later.example\n"), "{details}");
    assert!(details.contains("Queue: delayed/default\n"), "{details}");
    assert!(details.contains("Retries: 1\n"), "{details}");
    // docs/momentum-compat.md#console-queue-commands: the token is redacted, in the recipient made of it too.
    let shown = details
        .lines()
        .find_map(|l| l.strip_prefix("Device Token: "))
        .unwrap_or_else(|| panic!("{details}"));
    assert!(shown.ends_with('…') && shown.len() < 20, "{details}");
    assert!(
        details.contains(&format!("To: <{shown}@later.example>\n")),
        "{details}"
    );
    for t in &later {
        assert!(!details.contains(t.as_str()), "{t} shown: {details}");
    }
    let missing = console(sock, &["message", "details", "FF/FF-99999-FFFFFFFF"], None).await;
    assert!(
        !missing.ok && missing.stderr.contains("not in the queue"),
        "{missing:?}"
    );

    // APNs comes back: `message retry` sends one at once, `flush domain` the rest.
    let sim = start_sim(&pki, up_later, &[]).await;
    let retried = ok(sock, &["message", "retry", &ids[0]]).await;
    assert_eq!(
        retried,
        format!("Message {} scheduled for immediate retry\n", ids[0])
    );
    let deadline = Instant::now() + WAIT;
    while sim.record().len() != 1 {
        assert!(Instant::now() < deadline, "message retry delivered nothing");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        ok(sock, &["FLUSH", "DOMAIN", "Later.Example"]).await,
        "Domain later.example flushed.\n"
    );
    wait_for_sim(&sim, &later).await;
    assert_eq!(sim.record().len(), 3);
    until(sock, &["showqueue", "later.example"], str::is_empty).await;

    // `message fail ID` fails one; `fail domain` the rest with Momentum's text.
    let failed = ok(
        sock,
        &[
            "message",
            "fail",
            ids_of(sock, "never.example").await[0].as_str(),
        ],
    )
    .await;
    assert!(
        failed.ends_with("failed: 554 Message manually purged.\n"),
        "{failed}"
    );
    let out = ok(sock, &["fail", "DOMAIN", "Never.Example", "QUIET"]).await;
    assert_eq!(
        out,
        "Failed 1 message(s) of domain never.example: 554 Message manually purged.\n"
    );
    assert_eq!(ok(sock, &["showqueue", "never.example"]).await, "");
    let summary = until(sock, &["summary"], |o| {
        field(o, "Failed Messages").as_deref() == Some("2")
    })
    .await;
    assert_eq!(
        field(&summary, "Successfully Delivered Messages").as_deref(),
        Some("3")
    );
    assert_eq!(field(&summary, "Total Queue Size").as_deref(), Some("0"));
    let mainlog = std::fs::read_to_string(s.dir.join("mainlog.ec")).unwrap_or_default();
    let purged = until_log(
        &s.dir.join("mainlog.ec"),
        "554 Message manually purged.",
        2,
        mainlog,
    )
    .await;
    assert_eq!(purged, 2);

    let unknown = console(sock, &["fail", "domain", "nowhere.example"], None).await;
    assert!(
        !unknown.ok && unknown.stderr.contains("nowhere.example"),
        "{unknown:?}"
    );
    assert_eq!(
        ok(sock, &["flush", "domain", "all"]).await,
        "2 domain(s) flushed.\n"
    );
    assert_eq!(
        ok(sock, &["flush", "domain", "ALL"]).await,
        "2 domain(s) flushed.\n"
    );
    assert_eq!(ok(sock, &["SUMMARY", "RESET"]).await, "Statistics reset.\n");
    s.server.shutdown(Duration::from_secs(5)).await;
}

/// `mailq` has a row per (binding, domain) queue naming its group and binding, `--binding` selects a binding's
/// rows, and `domain NAME` has a block per binding with that binding's counters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailq_and_domain_report_each_binding_s_queue() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&tmp.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    // Nothing listens on the route: everything stays delayed an hour.
    let down = free_port();
    let groups = r#"
binding_group "g" { binding "b" { } }
binding "solo" { }
"#;
    let s = setup_with(tmp, &pki, &[("held.example", down)], 3600, groups).await;
    let sock = s.socket.as_str();
    push_from(
        &s.http,
        None,
        "held.example",
        &(0..2).map(token).collect::<Vec<_>>(),
    )
    .await;
    push_from(
        &s.http,
        Some("b"),
        "held.example",
        &(10..13).map(token).collect::<Vec<_>>(),
    )
    .await;
    push_from(
        &s.http,
        Some("solo"),
        "held.example",
        &(20..21).map(token).collect::<Vec<_>>(),
    )
    .await;
    until(sock, &["showqueue", "held.example"], |o| {
        o.matches("[delayed/").count() == 6
    })
    .await;

    let rows = |text: &str| -> Vec<Vec<String>> {
        text.lines()
            .skip(1)
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    };
    let mailq = ok(sock, &["mailq"]).await;
    assert!(mailq.starts_with("Group/Binding"), "{mailq}");
    assert_eq!(
        rows(&mailq),
        [
            ["default", "held.example", "0", "2"],
            ["g/b", "held.example", "0", "3"],
            ["solo", "held.example", "0", "1"],
        ],
        "{mailq}"
    );
    for selector in [["-b", "b"], ["--binding", "g/b"]] {
        let only_b = ok(sock, &["mailq", selector[0], selector[1]]).await;
        assert_eq!(
            rows(&only_b),
            [["g/b", "held.example", "0", "3"]],
            "{only_b}"
        );
    }
    let two = ok(
        sock,
        &["mailq", "-b", "default", "-b", "solo", "-d", "held.example"],
    )
    .await;
    assert_eq!(rows(&two).len(), 2, "{two}");
    let limited = ok(sock, &["mailq", "-l", "1"]).await;
    assert_eq!(
        rows(&limited),
        [["default", "held.example", "0", "2"]],
        "{limited}"
    );

    // `domain NAME`: one block per binding, each with its routes and its own counters.
    let domain = ok(sock, &["domain", "held.example"]).await;
    assert!(domain.starts_with("Domain: held.example\n"), "{domain}");
    assert_eq!(domain.matches("Domain: ").count(), 1, "{domain}");
    let blocks: Vec<(&str, Option<String>, Option<String>)> = domain
        .split("  Binding: ")
        .skip(1)
        .map(|block| {
            let value = |label: &str| {
                block
                    .lines()
                    .find_map(|l| l.trim().strip_prefix(&format!("{label}:")))
                    .map(|v| v.trim().to_string())
            };
            (
                block.lines().next().unwrap(),
                value("Receptions"),
                value("Delayed Queue"),
            )
        })
        .collect();
    let some = |n: &str| Some(n.to_string());
    assert_eq!(
        blocks,
        [
            ("default", some("2"), some("2")),
            ("b", some("3"), some("3")),
            ("solo", some("1"), some("1")),
        ],
        "{domain}"
    );
    assert_eq!(
        domain
            .matches(&format!("  Route: https://127.0.0.1:{down}"))
            .count(),
        3,
        "{domain}"
    );
    // `message details` names the binding of the queue the notification is in.
    let listing = ok(sock, &["showqueue", "binding", "solo", "held.example"]).await;
    let solo = ids_of_listing(&listing);
    assert_eq!(solo.len(), 1, "{listing}");
    let details = ok(sock, &["message", "details", &solo[0]]).await;
    assert!(details.contains("Queue: delayed/solo\n"), "{details}");
    s.server.shutdown(Duration::from_secs(5)).await;
}

async fn ids_of(sock: &str, domain: &str) -> Vec<String> {
    ids_of_listing(&ok(sock, &["showqueue", domain]).await)
}

/// The ids of a `showqueue` answer.
fn ids_of_listing(listing: &str) -> Vec<String> {
    listing
        .lines()
        .filter_map(|l| l.strip_prefix('['))
        .filter_map(|l| l.split(' ').nth(1).map(str::to_string))
        .collect()
}

/// Waits until `needle` occurs `n` times in the log (written in the background); returns the count.
async fn until_log(path: &Path, needle: &str, n: usize, mut text: String) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        let count = text.matches(needle).count();
        if count >= n {
            return count;
        }
        assert!(
            Instant::now() < deadline,
            "{needle} {count} times in {text}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        text = std::fs::read_to_string(path).unwrap_or_default();
    }
}

/// `status ID` prints one notification's final outcome; `webhooks` lists the webhook queues (none here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_a_notifications_outcome() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&tmp.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = free_port();
    let gone = token(77);
    let sim = start_sim(&pki, port, std::slice::from_ref(&gone)).await;
    let s = setup(tmp, &pki, &[("status.example", port)], 1).await;
    let body = serde_json::json!({"domain": "status.example", "tokens": [gone], "payload": {"aps": {"alert": "s"}}});
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{}/api/v1/push", s.http))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = v["results"][0]["id"].as_str().unwrap().to_owned();
    let text = until(&s.socket, &["status", &id], |t| t.contains("failed")).await;
    assert_eq!(field(&text, "state").as_deref(), Some("failed"), "{text}");
    assert_eq!(
        field(&text, "reason").as_deref(),
        Some("Unregistered"),
        "{text}"
    );
    assert_eq!(
        field(&text, "invalid_token").as_deref(),
        Some("true"),
        "{text}"
    );
    let out = console(&s.socket, &["status", "00/00-00000-FFFFFFFF"], None).await;
    assert!(!out.ok, "{out:?}");
    let text = ok(&s.socket, &["webhooks"]).await;
    assert!(text.starts_with("domain"), "{text}");
    s.server.shutdown(Duration::from_secs(1)).await;
    sim.shutdown().await;
}

/// A TCP control listener with `tls_certificate` speaks TLS: `herald console --tls --ca CA` authenticates and runs
/// commands over it, a client that does not trust the certificate is refused by its own TLS check, and one that
/// speaks plain text gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_listener_with_a_certificate_speaks_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            "spool_dir = \"{}\"\ncontrol_listener {{ listen \"127.0.0.1:0\" {{ tls_certificate = \"{}\" tls_key = \"{}\" control_password = \"pw\" }} }}\n",
            dir.path().join("spool").display(),
            pki.manifest.server_cert.display(),
            pki.manifest.server_key.display(),
        ),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let port = server.addrs().await.control[0]
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .port();
    let run = |flags: Vec<String>| async move {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
        cmd.arg("console")
            .args(flags)
            .arg(format!("localhost:{port}"))
            .arg("summary")
            .env("HERALD_CONSOLE_PASSWORD", "pw");
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ca = pki.manifest.ca_cert.display().to_string();
    let (ok, stdout, stderr) = run(vec!["--ca".into(), ca]).await;
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("Received"), "{stdout}");
    // Without the CA, the web's roots do not trust the test PKI.
    let (ok, _, stderr) = run(vec!["--tls".into()]).await;
    assert!(!ok);
    assert!(stderr.contains("TLS handshake"), "{stderr}");
    // Plain text to a TLS listener: no answer.
    let (ok, _, _) = run(vec![]).await;
    assert!(!ok);
    server.shutdown(Duration::from_secs(2)).await;
}

/// One answer of the control protocol (`OK LEN` / `ERR LEN`, then LEN bytes); `None` once the server closed.
async fn answer<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R) -> Option<(bool, String)> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let mut status = String::new();
    if r.read_line(&mut status).await.ok()? == 0 {
        return None;
    }
    let (word, len) = status.trim_end().split_once(' ')?;
    let mut text = vec![0; len.parse().unwrap()];
    r.read_exact(&mut text).await.ok()?;
    Some((word == "OK", String::from_utf8(text).unwrap()))
}

/// A connection to a listener with `control_password` must log in within `timeout` of connecting: refused
/// commands sent more often than `timeout` do not keep it open. A session that logged in stays while it is busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_does_not_log_in_within_timeout_is_closed_however_busy() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            "spool_dir = \"{}\"\ncontrol_listener {{ listen \"127.0.0.1:0\" {{ control_password = \"pw\" timeout = 1 }} }}\n",
            dir.path().join("spool").display(),
        ),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let addr = server.addrs().await.control[0].clone();
    let every = Duration::from_millis(500);

    // Never logged in, never idle: closed with a word, within a few seconds. Answers are read as they come (first,
    // before the next command), and commands go out between the half seconds the deadline falls on. A loaded
    // machine may still write one after the server closed the connection: its failure is no concern, the answers
    // read tell how the connection ended.
    let connected = Instant::now();
    let (r, mut w) = tokio::net::TcpStream::connect(&addr)
        .await
        .unwrap()
        .into_split();
    let (answers, mut answered) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut r = tokio::io::BufReader::new(r);
        loop {
            let a = answer(&mut r).await;
            let end = a.is_none();
            if answers.send(a).is_err() || end {
                return;
            }
        }
    });
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every / 2, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut refused = 0;
    let last = loop {
        let left = Duration::from_secs(10).saturating_sub(connected.elapsed());
        tokio::select! {
            biased;
            a = answered.recv() => match a.unwrap() {
                Some((false, text)) if text.starts_with("Authentication required") => refused += 1,
                other => break other,
            },
            _ = tick.tick() => {
                let _ = w.write_all(b"version\n").await;
            }
            () = tokio::time::sleep(left) => panic!("still open after {:?}, {refused} commands refused", connected.elapsed()),
        }
    };
    let closed_after = connected.elapsed();
    assert!(refused >= 1, "{refused} commands were refused before");
    assert_eq!(
        last,
        Some((
            false,
            "Not authenticated within 1 s of connecting (timeout); closing.\n".to_owned()
        ))
    );
    assert_eq!(
        tokio::time::timeout(WAIT, answered.recv()).await.unwrap(),
        Some(None),
        "the server closed the connection"
    );
    assert!(
        closed_after < Duration::from_secs(5),
        "closed after {closed_after:?}"
    );

    // Logged in: busy beyond the login deadline (and several `timeout`s), it stays.
    let connected = Instant::now();
    let (r, mut w) = tokio::net::TcpStream::connect(&addr)
        .await
        .unwrap()
        .into_split();
    let mut r = tokio::io::BufReader::new(r);
    w.write_all(b"auth pw\n").await.unwrap();
    assert_eq!(
        answer(&mut r).await,
        Some((true, "Authenticated.\n".to_owned()))
    );
    let version = format!("herald {}\n", env!("CARGO_PKG_VERSION"));
    // A command every 200 ms: a stall of the machine short of the 1 s `timeout` does not make the session idle.
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    while connected.elapsed() < Duration::from_secs(3) {
        tick.tick().await;
        w.write_all(b"version\n").await.unwrap();
        assert_eq!(
            tokio::time::timeout(WAIT, answer(&mut r)).await.unwrap(),
            Some((true, version.clone())),
            "after {:?}",
            connected.elapsed()
        );
    }
    server.shutdown(Duration::from_secs(2)).await;
}

/// A client of a listener with `control_password` that sends nothing at all is closed when its `timeout` runs out
/// with the word for not having logged in (its login deadline and its idle time end at the same instant), never
/// with the idle one; a client that logged in and then fell silent gets the idle one. Several silent clients at
/// once, since which of the two ends came first was a toss-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_that_never_logged_in_is_told_it_did_not_log_in() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let server = control_only(
        dir.path(),
        "listen \"127.0.0.1:0\" { control_password = \"pw\" timeout = 1 }",
    )
    .await;
    let addr = server.addrs().await.control[0].clone();
    let silent: Vec<_> = (0..8)
        .map(|_| {
            let addr = addr.clone();
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
                let mut r = tokio::io::BufReader::new(stream);
                let first = tokio::time::timeout(WAIT, answer(&mut r))
                    .await
                    .expect("an answer in time");
                let then = tokio::time::timeout(WAIT, answer(&mut r))
                    .await
                    .expect("the connection closed in time");
                (first, then)
            })
        })
        .collect();
    for client in silent {
        assert_eq!(
            client.await.unwrap(),
            (
                Some((
                    false,
                    "Not authenticated within 1 s of connecting (timeout); closing.\n".to_owned()
                )),
                None
            )
        );
    }

    // Logged in, then silent: idle.
    let (r, mut w) = tokio::net::TcpStream::connect(&addr)
        .await
        .unwrap()
        .into_split();
    let mut r = tokio::io::BufReader::new(r);
    w.write_all(b"auth pw\n").await.unwrap();
    assert_eq!(
        tokio::time::timeout(WAIT, answer(&mut r)).await.unwrap(),
        Some((true, "Authenticated.\n".to_owned()))
    );
    assert_eq!(
        tokio::time::timeout(WAIT, answer(&mut r)).await.unwrap(),
        Some((false, "Idle timeout; closing.\n".to_owned()))
    );
    assert_eq!(
        tokio::time::timeout(WAIT, answer(&mut r)).await.unwrap(),
        None
    );
    server.shutdown(Duration::from_secs(2)).await;
}

/// Sends `lines` on a new connection to the control listener at `addr`, one at a time, and returns each answer
/// (`None` once the server closed the connection).
async fn session(addr: &str, lines: &[&str]) -> Vec<Option<(bool, String)>> {
    use tokio::io::AsyncWriteExt;
    let (r, mut w) = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap()
        .into_split();
    let mut r = tokio::io::BufReader::new(r);
    let mut answers = Vec::new();
    for line in lines {
        if w.write_all(format!("{line}\n").as_bytes()).await.is_err() {
            answers.push(None);
            continue;
        }
        answers.push(
            tokio::time::timeout(WAIT, answer(&mut r))
                .await
                .expect("an answer"),
        );
    }
    answers
}

/// A TCP control listener is held to the rules of its `listen` stanza in the configuration in force; one that a
/// reload cannot move (its new address is taken) keeps its old address and the rules it last ran with. The
/// configuration in force has no stanza for that address, whose defaults would ask for no password: its password is
/// still asked for, and `shutdown` without it is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_listener_kept_on_its_old_address_keeps_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    let port = free_port();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap().port();
    let write = |port: u16, password: &str| {
        std::fs::write(
            &config,
            format!(
                "spool_dir = \"{}\"\ncontrol_listener {{ listen \"127.0.0.1:{port}\" {{ control_password = \"{password}\" }} }}\n",
                dir.path().join("spool").display(),
            ),
        )
        .unwrap()
    };
    write(port, "first");
    let server = Server::start(&config).await.unwrap();
    let addr = format!("127.0.0.1:{port}");
    let pid = format!("{}\n", std::process::id());
    let required = Some((
        false,
        "Authentication required: send `auth PASSWORD` first.\n".to_owned(),
    ));
    let authenticated = Some((true, "Authenticated.\n".to_owned()));
    let failed = Some((false, "Authentication failed.\n".to_owned()));
    assert_eq!(session(&addr, &["pid"]).await, vec![required.clone()]);

    // The same address with a new password: the listener stays, and new connections want the new password.
    write(port, "second");
    let report = server.reload(None).await.unwrap();
    assert!(report.listener_errors.is_empty(), "{report:?}");
    assert!(report.listeners_restarted.is_empty(), "{report:?}");
    assert_eq!(session(&addr, &["auth first"]).await, vec![failed]);
    assert_eq!(
        session(&addr, &["auth second", "pid"]).await,
        vec![authenticated.clone(), Some((true, pid.clone()))]
    );

    // Moved to a taken address: it keeps running on its old one, still wanting its password.
    write(taken, "third");
    let report = server.reload(None).await.unwrap();
    assert_eq!(report.listener_errors.len(), 1, "{report:?}");
    assert!(
        report.listener_errors[0].contains(&format!(
            "Control {addr} keeps running with its previous settings"
        )),
        "{report:?}"
    );
    assert_eq!(server.addrs().await.control, vec![addr.clone()]);
    assert_eq!(session(&addr, &["shutdown"]).await, vec![required]);
    assert_eq!(
        session(&addr, &["auth second", "pid"]).await,
        vec![authenticated, Some((true, pid))]
    );
    drop(holder);
    server.shutdown(Duration::from_secs(2)).await;
}

/// `config reload` names each domain the configuration it put in force cannot deliver, even one without traffic,
/// with why, after its usual first line; the reload itself succeeds (the configuration is valid and in force).
/// `config reload PATH` makes PATH the file later reloads read, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reload_names_an_undeliverable_domain_and_remembers_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let config = dir.path().join("herald.conf");
    let socket = dir.path().join("control.sock");
    let port = free_port();
    let text = |extra: &str| {
        format!(
            "spool_dir = \"{spool}\"\ncontrol_listener {{ listen \"{sock}\" {{ }} }}\ndomain \"idle.example\" {{\n{credentials}{extra}}}\n",
            spool = dir.path().join("spool").display(),
            sock = socket.display(),
            credentials = token_auth_options(&pki, port, TOPIC),
        )
    };
    std::fs::write(&config, text("")).unwrap();
    let server = Server::start(&config).await.unwrap();
    let sock = socket.to_str().unwrap();

    let missing = dir.path().join("no-such-key.p8");
    std::fs::write(
        &config,
        text(&format!("  apn_key = \"{}\"\n", missing.display())),
    )
    .unwrap();
    let out = console(sock, &["config", "reload"], None).await;
    assert!(out.ok, "a valid configuration is in force: {out:?}");
    assert!(
        out.stdout.starts_with(&format!(
            "Configuration reloaded from {} (generation 1).\n",
            config.display()
        )),
        "{out:?}"
    );
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("Domain idle.example cannot be delivered: "))
        .unwrap_or_else(|| panic!("the domain is not named: {out:?}"));
    assert!(
        line.contains("apn_key") && line.contains(&missing.display().to_string()),
        "{line}"
    );
    assert_eq!(server.generation(), 1, "the configuration is in force");

    // Another file: in force, and read by the reloads after it.
    let other = dir.path().join("other.conf");
    std::fs::write(&other, text("  retry_interval = 9\n")).unwrap();
    let out = ok(sock, &["config", "reload", other.to_str().unwrap()]).await;
    assert!(
        out.contains(&format!(
            "Later reloads (config reload without a path, SIGHUP, the dashboard) read {}.",
            other.display()
        )),
        "{out}"
    );
    assert_eq!(server.config_path(), other);
    std::fs::write(&config, "this is not a configuration {").unwrap();
    std::fs::write(&other, text("  retry_interval = 11\n")).unwrap();
    let out = ok(sock, &["config", "reload"]).await;
    assert!(
        out.starts_with(&format!(
            "Configuration reloaded from {} (generation 3).\n",
            other.display()
        )),
        "{out}"
    );
    assert!(!out.contains("Later reloads"), "{out}");
    assert_eq!(
        ok(
            sock,
            &["config", "eval", "domain", "idle.example", "retry_interval"]
        )
        .await,
        "retry_interval = 11\n"
    );
    server.shutdown(Duration::from_secs(2)).await;
}

/// A TCP relay to the listener at `upstream`, one upstream connection per client, as a network path passes a
/// connection on: what the server writes before it closes reaches the client, then the client's side is
/// half-closed, and what the client sends afterwards is taken (and dropped) without a reset. (On loopback the
/// kernel would answer such a write with a reset at once, which a client then reads instead of what the server
/// wrote; across a network, the reset comes a round trip later, after that has been read.) Returns the relay's
/// address and a receiver told each time the server has closed a connection and its end has been passed on.
async fn relay(upstream: String) -> (String, tokio::sync::mpsc::UnboundedReceiver<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (closed, closes) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                return;
            };
            let closed = closed.clone();
            tokio::spawn(async move {
                let (mut client_r, mut client_w) = client.into_split();
                let (mut server_r, mut server_w) = server.into_split();
                let down = async move {
                    let _ = tokio::io::copy(&mut server_r, &mut client_w).await;
                    let _ = client_w.shutdown().await;
                    let _ = closed.send(());
                };
                let up = async move {
                    let mut buf = [0; 4096];
                    while let Ok(n @ 1..) = client_r.read(&mut buf).await {
                        let _ = server_w.write_all(&buf[..n]).await;
                    }
                };
                tokio::join!(down, up);
            });
        }
    });
    (addr, closes)
}

/// A console session left idle past the listener's `timeout` connects again for its next command, which gets its
/// own answer (not the `Idle timeout` the listener wrote before it closed the idle connection), and logs in again
/// with the password of the `auth` the listener accepted earlier in the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_after_the_idle_timeout_gets_its_own_answer() {
    command_after_the_idle_timeout(false).await;
}

/// The same over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_after_the_idle_timeout_gets_its_own_answer_over_tls() {
    command_after_the_idle_timeout(true).await;
}

async fn command_after_the_idle_timeout(tls: bool) {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let identity = if tls {
        format!(
            "tls_certificate = \"{}\" tls_key = \"{}\"",
            pki.manifest.server_cert.display(),
            pki.manifest.server_key.display(),
        )
    } else {
        String::new()
    };
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            "spool_dir = \"{}\"\ncontrol_listener {{ listen \"127.0.0.1:0\" {{ {identity} control_password = \"pw\" timeout = 1 }} }}\n",
            dir.path().join("spool").display(),
        ),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let (addr, mut closes) = relay(server.addrs().await.control[0].clone()).await;
    let port = addr.rsplit_once(':').unwrap().1;

    // Batch mode, fed line by line: the first commands, then nothing until the listener has closed the connection.
    let mut console = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    console.arg("console");
    if tls {
        console.arg("--ca").arg(&pki.manifest.ca_cert);
        console.arg(format!("localhost:{port}"));
    } else {
        console.arg(&addr);
    }
    let mut child = console
        .env_remove("HERALD_CONSOLE_PASSWORD")
        .env_remove("HERALD_CONSOLE_SOCKET")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"auth pw\npid\n").await.unwrap();
    stdin.flush().await.unwrap();
    tokio::time::timeout(WAIT, closes.recv())
        .await
        .expect("the listener never closed the idle console connection")
        .unwrap();
    stdin.write_all(b"pid\n").await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let pid = std::process::id();
    assert_eq!(
        stdout,
        format!("Authenticated.\n{pid}\n{pid}\n"),
        "stderr: {stderr}"
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    server.shutdown(Duration::from_secs(2)).await;
}

/// Starts a server with only a spool and `control` (the body of a `control_listener` stanza).
async fn control_only(dir: &Path, control: &str) -> Arc<Server> {
    let config = dir.join("herald.conf");
    std::fs::write(
        &config,
        format!(
            "spool_dir = \"{}\"\ncontrol_listener {{\n{control}\n}}\n",
            dir.join("spool").display()
        ),
    )
    .unwrap();
    Server::start(&config).await.unwrap()
}

/// `config reload PATH` of a file that is no configuration (a private key, here with one line that parses, so
/// that the parser reports on every other) answers with where each error is and its kind, never with the text
/// the parser quotes from the file: a console user must not read a key that way. The first line is as ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reload_shows_no_text_of_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let server = control_only(
        dir.path(),
        &format!("listen \"{}\" {{ file_mode = 0600 }}", sock.display()),
    )
    .await;
    let sock = sock.to_str().unwrap();
    let secret = "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgSeCrEtSeCrEt";
    let key = dir.path().join("AuthKey_X.p8");
    std::fs::write(
        &key,
        format!(
            "max_retries = 3\n{secret}\n{secret}x = {secret}\nmax_retries = \"{secret}\"\ndomain \"/(?P<{secret}/\" {{ }}\n"
        ),
    )
    .unwrap();
    let out = console(sock, &["config", "reload", key.to_str().unwrap()], None).await;
    assert!(!out.ok, "{out:?}");
    let k = key.display();
    assert!(
        out.stderr.starts_with(&format!(
            "{k}: the new configuration has errors; the running one stays in force:\n"
        )),
        "{out:?}"
    );
    for line in [2, 3, 4, 5] {
        assert!(out.stderr.contains(&format!("{k}:{line}:")), "{out:?}");
    }
    assert!(out.stderr.contains(": error: invalid value …"), "{out:?}");
    assert!(out.stderr.contains("herald's log"), "{out:?}");
    for i in 0..secret.len() - 8 {
        let piece = &secret[i..i + 8];
        assert!(!out.stderr.contains(piece), "{piece:?} shown: {out:?}");
        assert!(!out.stdout.contains(piece), "{piece:?} shown: {out:?}");
    }
    // The file herald reads stays its own, and nothing changed.
    assert_eq!(server.generation(), 0);
    let again = console(sock, &["config", "reload"], None).await;
    assert!(again.ok, "{again:?}");
    server.shutdown(Duration::from_secs(2)).await;
}

/// A console whose reader went away (`herald console SOCKET summary | head -0`) ends with the command's status,
/// quietly: it neither panics nor reports the closed pipe as an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_answer_into_a_closed_pipe_ends_quietly() {
    use std::os::fd::{FromRawFd, OwnedFd};
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let server = control_only(
        dir.path(),
        &format!("listen \"{}\" {{ file_mode = 0600 }}", sock.display()),
    )
    .await;
    let mut fds = [0; 2];
    // SAFETY: pipe fills the two descriptors of the array it is given.
    assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
    // SAFETY: both descriptors were just opened by pipe and are owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.arg("console").arg(&sock).arg("summary");
    cmd.env_remove("HERALD_CONSOLE_PASSWORD");
    cmd.stdout(std::process::Stdio::from(write));
    cmd.stderr(std::process::Stdio::piped());
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    server.shutdown(Duration::from_secs(2)).await;
}

/// Opens a TCP connection to `addr` from the loopback address `from` (any of 127.0.0.0/8).
async fn connect_from(from: std::net::Ipv4Addr, addr: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    socket.connect(addr.parse().unwrap()).await.unwrap()
}

/// Sends `auth PASSWORD` from `from` and returns the answer.
async fn auth_from(from: std::net::Ipv4Addr, addr: &str, password: &str) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let (r, mut w) = connect_from(from, addr).await.into_split();
    w.write_all(format!("auth {password}\n").as_bytes())
        .await
        .unwrap();
    let mut r = tokio::io::BufReader::new(r);
    tokio::time::timeout(WAIT, answer(&mut r))
        .await
        .expect("an answer")
        .expect("an answer before the close")
}

/// Wrong passwords sent at once on many connections from one address are counted as they are let through, not
/// once compared: no more than 5 are compared. Across every loopback address, a listener takes at most
/// `LISTENER_AUTH_FAILURES` wrong passwords a minute: then every `auth` from loopback is refused, right password
/// included, from any loopback address, while another listener of the same server (its Unix socket) still lets the
/// operator in. (Clients elsewhere have a budget of their own, which guesses from loopback do not spend: the
/// control module's tests show it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_passwords_are_counted_before_they_are_compared_and_a_listener_has_a_budget() {
    use std::net::Ipv4Addr;
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("control.sock");
    let server = control_only(
        dir.path(),
        &format!(
            "control_password = \"pw\"\nlisten \"127.0.0.1:0\" {{ }}\nlisten \"{}\" {{ file_mode = 0600 }}",
            sock.display()
        ),
    )
    .await;
    let addr = server
        .addrs()
        .await
        .control
        .into_iter()
        .find(|a| a.starts_with("127.0.0.1:"))
        .unwrap();

    // 30 connections from one address, each with an `auth` sent before any is answered.
    let guesser = Ipv4Addr::new(127, 0, 0, 2);
    let mut conns = Vec::new();
    for _ in 0..30 {
        conns.push(connect_from(guesser, &addr).await.into_split());
    }
    for (_, w) in &mut conns {
        w.write_all(b"auth wrong\n").await.unwrap();
    }
    let mut failed = 0;
    let mut locked = 0;
    for (r, _) in conns {
        let mut r = tokio::io::BufReader::new(r);
        match tokio::time::timeout(WAIT, answer(&mut r)).await.unwrap() {
            Some((false, t)) if t == "Authentication failed.\n" => failed += 1,
            Some((false, t))
                if t.starts_with("Too many failed authentications from 127.0.0.2;") =>
            {
                locked += 1
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        (failed, locked),
        (
            herald::control::AUTH_FAILURES,
            30 - herald::control::AUTH_FAILURES
        )
    );
    let (ok, text) = auth_from(guesser, &addr, "pw").await;
    assert!(
        !ok && text.starts_with("Too many failed authentications from 127.0.0.2;"),
        "{text}"
    );
    // Another address is not locked out by it.
    assert_eq!(
        auth_from(Ipv4Addr::new(127, 0, 0, 3), &addr, "pw").await,
        (true, "Authenticated.\n".to_owned())
    );

    // Guesses spread over many loopback addresses, a few from each, all count against the listener's loopback
    // budget.
    let budget = herald::control::LISTENER_AUTH_FAILURES;
    let mut spent = failed;
    let mut from = 10u8;
    while spent < budget {
        for _ in 0..herald::control::AUTH_FAILURES.min(budget - spent) {
            let (ok, text) = auth_from(Ipv4Addr::new(127, 0, 1, from), &addr, "wrong").await;
            assert_eq!((ok, text.as_str()), (false, "Authentication failed.\n"));
            spent += 1;
        }
        from += 1;
    }
    for from in [Ipv4Addr::new(127, 0, 2, 1), Ipv4Addr::new(127, 0, 0, 3)] {
        let (ok, text) = auth_from(from, &addr, "pw").await;
        assert!(
            !ok && text.starts_with(
                "Too many failed authentications on this listener from loopback; every `auth` from loopback is \
                 refused for "
            ),
            "{from}: {text}"
        );
    }
    // The Unix socket is another listener, with a count of its own.
    let sock = sock.to_str().unwrap();
    let unix = {
        let s = tokio::net::UnixStream::connect(sock).await.unwrap();
        let (r, mut w) = s.into_split();
        w.write_all(b"auth pw\npid\n").await.unwrap();
        let mut r = tokio::io::BufReader::new(r);
        (answer(&mut r).await, answer(&mut r).await)
    };
    assert_eq!(
        unix,
        (
            Some((true, "Authenticated.\n".to_owned())),
            Some((true, format!("{}\n", std::process::id())))
        )
    );
    server.shutdown(Duration::from_secs(2)).await;
}

/// An empty `control_password` is not a password: herald refuses to start with the configuration, naming where it
/// sets one (herald-conf's check; a listener given one anyway lets nobody in: `control`'s unit tests).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_control_password_refuses_the_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            "spool_dir = \"{}\"\ncontrol_listener {{\n  listen \"127.0.0.1:0\" {{\n    control_password = \"\"\n  }}\n}}\n",
            dir.path().join("spool").display()
        ),
    )
    .unwrap();
    let Err(e) = Server::start(&config).await else {
        panic!("herald started with an empty control_password");
    };
    let e = e.to_string();
    assert!(
        e.contains(&format!(
            "{}:4:5: error: control_password is empty",
            config.display()
        )),
        "{e}"
    );
}

/// The console sends a password over a Unix socket only to one owned by its user or root: a socket another user
/// put at the path (any local user may create one in `/tmp`, where the default path is) gets nothing, and the
/// console says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_sends_no_password_to_another_users_socket() {
    use tokio::io::AsyncReadExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("2025");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    // What each connection received: its first line, or all of it if the console closed it before one.
    let (received, mut got) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let mut bytes = Vec::new();
                let mut chunk = [0u8; 1024];
                while !bytes.contains(&b'\n') {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                    }
                }
                // Closed without an answer.
                drop(s);
                let _ = received.send(String::from_utf8_lossy(&bytes).into_owned());
            });
        }
    });
    let sock = path.to_str().unwrap();
    let nobody = 65534;
    if let Err(e) = std::os::unix::fs::chown(&path, Some(nobody), None) {
        // Only root may give a file away: as another user, the console's side of it is covered by its unit tests.
        eprintln!("skipped: chown to uid {nobody}: {e}");
        return;
    }
    let out = console(sock, &["pid"], Some("s3cret")).await;
    assert!(
        out.stderr
            .contains(&format!("{sock}: refusing to send the console password over this socket: the socket belongs to uid {nobody}")),
        "{out:?}"
    );
    // The command goes without the password (a listener without one still answers it).
    let first = tokio::time::timeout(WAIT, got.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        !first.contains("s3cret") && !first.starts_with("auth"),
        "the other user's socket received {first:?}"
    );
    // The console tried again on a new connection when the stand-in closed the first: no password there either.
    while let Ok(more) = got.try_recv() {
        assert!(
            !more.contains("s3cret"),
            "the other user's socket received {more:?}"
        );
    }

    // The user's own socket gets it (the stand-in answers nothing: the console then fails, after sending it).
    std::os::unix::fs::chown(&path, Some(my_uid()), None).unwrap();
    let _ = console(sock, &["pid"], Some("s3cret")).await;
    // (Skipping what the first run's connections sent, which may arrive late: never the password.)
    let sent = tokio::time::timeout(WAIT, async {
        loop {
            let sent = got.recv().await.unwrap();
            if sent.starts_with("auth") {
                break sent;
            }
            assert!(!sent.contains("s3cret"), "{sent:?}");
        }
    })
    .await
    .unwrap();
    assert!(sent.starts_with("auth \"s3cret\"\n"), "{sent:?}");
}

/// This process's effective user id (the owner of the files it creates).
fn my_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    let probe = tempfile::tempfile().unwrap();
    probe.metadata().unwrap().uid()
}
