//! `herald send` (the built binary) against a herald running in-process from a configuration file, delivering to
//! the APNs simulator over real TLS: one notification from flags, a CSV file, JSON lines from stdin, refusals and
//! failed requests (non-zero exit with the summary), and bad input reported with line numbers. A scripted REST
//! server stands in for herald where an answer cannot be provoked (`--wait` on outcomes pruned or unreadable).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{DeliveryRecord, Pki, SimConfig, SimHandle, Simulator};
use tokio::io::AsyncWriteExt;

const TOPIC: &str = "com.example.send";
const DOMAIN: &str = "send.example";
const KEY: &str = "send-test-key";
const WAIT: Duration = Duration::from_secs(60);

struct Setup {
    dir: tempfile::TempDir,
    sim: SimHandle,
    server: Arc<Server>,
    url: String,
}

async fn setup() -> Setup {
    setup_with(false).await
}

/// `https`: the http listener speaks TLS with the PKI's server certificate.
async fn setup_with(https: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
        .await
        .unwrap();
    let m = &pki.manifest;
    let config = dir.path().join("herald.conf");
    std::fs::write(
        &config,
        format!(
            r#"
spool_dir = "{spool}"
http_listener {{ listen "127.0.0.1:0" {{ api_key = "{KEY}" {tls} }} }}
domain "{DOMAIN}" {{
  delivery_method = apn
  routes = ( "https://{h2}" )
  tls_verify = ca
  tls_ca = "{ca}"
  apn_key = "{p8}"
  apn_key_id = "{kid}"
  apn_team_id = "{tid}"
  apn_topic = "{TOPIC}"
}}
"#,
            spool = dir.path().join("spool").display(),
            tls = if https {
                format!(
                    "tls_certificate = \"{}\" tls_key = \"{}\"",
                    m.server_cert.display(),
                    m.server_key.display()
                )
            } else {
                String::new()
            },
            h2 = sim.addrs.h2,
            ca = m.ca_cert.display(),
            p8 = m.token_key.p8.display(),
            kid = m.token_key.key_id,
            tid = m.token_key.team_id,
        ),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let scheme = if https { "https" } else { "http" };
    let url = format!("{scheme}://{}", server.addrs().await.http[0]);
    Setup {
        dir,
        sim,
        server,
        url,
    }
}

struct Run {
    ok: bool,
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `herald send --url URL --api-key KEY --domain DOMAIN ARGS…`, feeding `stdin`.
async fn send(s: &Setup, args: &[&str], stdin: &str) -> Run {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "send",
            "--url",
            &s.url,
            "--api-key",
            KEY,
            "--domain",
            DOMAIN,
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let out = child.wait_with_output().await.unwrap();
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

fn token(i: usize) -> String {
    format!("{:064x}", 0x5e4d_0000u64 + i as u64)
}

/// Waits until the simulator has recorded every token; returns their records in the order given.
async fn delivered(sim: &SimHandle, tokens: &[String]) -> Vec<DeliveryRecord> {
    let deadline = Instant::now() + WAIT;
    loop {
        let record = sim.record();
        let found: Vec<DeliveryRecord> = tokens
            .iter()
            .filter_map(|t| record.iter().find(|r| &r.token == t).cloned())
            .collect();
        if found.len() == tokens.len() {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} tokens never reached the simulator",
            tokens.len() - found.len(),
            tokens.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_notification_from_flags() {
    let s = setup().await;
    let t = token(1);
    let run = send(
        &s,
        &[
            "--token",
            &t,
            "--alert",
            "Hello \"there\"",
            "--priority",
            "5",
            "--collapse-id",
            "greeting",
            "--push-type",
            "alert",
        ],
        "",
    )
    .await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.starts_with(
            "sent 1 notification from the command line to send.example in 1 request\n"
        ),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("accepted: 1 (id "), "{}", run.stdout);
    assert!(run.stdout.contains("rejected: 0\n"), "{}", run.stdout);
    assert!(run.stdout.contains("failed: 0\n"), "{}", run.stdout);
    let rec = &delivered(&s.sim, std::slice::from_ref(&t)).await[0];
    assert_eq!(rec.payload, r#"{"aps":{"alert":"Hello \"there\""}}"#);
    assert_eq!(rec.priority, 5);
    assert_eq!(rec.collapse_id.as_deref(), Some("greeting"));
    assert_eq!(rec.topic, TOPIC);
    s.server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_file_in_batches() {
    let s = setup().await;
    let tokens: Vec<String> = (10..15).map(token).collect();
    let mut csv = String::from("token,alert\n");
    for (i, t) in tokens.iter().enumerate() {
        csv.push_str(&format!("{t},\"Hi, number {i}\"\n"));
    }
    let file = write(s.dir.path(), "tokens.csv", &csv);
    let run = send(
        &s,
        &[
            "--file",
            file.to_str().unwrap(),
            "--format",
            "csv",
            "--batch",
            "2",
        ],
        "",
    )
    .await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("in 3 requests\n"), "{}", run.stdout);
    assert!(run.stdout.contains("accepted: 5\n"), "{}", run.stdout);
    let recs = delivered(&s.sim, &tokens).await;
    for (i, rec) in recs.iter().enumerate() {
        assert_eq!(
            rec.payload,
            format!(r#"{{"aps":{{"alert":"Hi, number {i}"}}}}"#)
        );
    }

    // A plain list of tokens takes the payload from the flags.
    let more: Vec<String> = (20..23).map(token).collect();
    let file = write(s.dir.path(), "plain.csv", &(more.join("\n") + "\n"));
    let run = send(
        &s,
        &[
            "--file",
            file.to_str().unwrap(),
            "--payload",
            r#"{"aps" : {"badge":3}}"#,
        ],
        "",
    )
    .await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("accepted: 3\n"), "{}", run.stdout);
    for rec in delivered(&s.sim, &more).await {
        assert_eq!(
            rec.payload, r#"{"aps" : {"badge":3}}"#,
            "sent byte for byte"
        );
    }
    s.server.shutdown(Duration::from_secs(5)).await;
}

/// README's `--file tokens.csv --payload '{"aps":{"badge":1}}'` with an `alert` column: each row's alert is set
/// in the shared payload (its badge stays), and a row without an alert takes the payload as given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_column_is_merged_into_the_shared_payload() {
    let s = setup().await;
    let tokens: Vec<String> = (30..32).map(token).collect();
    let csv = format!("token,alert\n{},Hi\n{},\n", tokens[0], tokens[1]);
    let file = write(s.dir.path(), "alerts.csv", &csv);
    let run = send(
        &s,
        &[
            "--file",
            file.to_str().unwrap(),
            "--payload",
            r#"{"aps":{"badge":1}}"#,
        ],
        "",
    )
    .await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    let recs = delivered(&s.sim, &tokens).await;
    assert_eq!(recs[0].payload, r#"{"aps":{"alert":"Hi","badge":1}}"#);
    assert_eq!(recs[1].payload, r#"{"aps":{"badge":1}}"#);
    s.server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_from_stdin() {
    let s = setup().await;
    let (a, b) = (token(30), token(31));
    let stdin = format!(
        "{{\"token\":\"{a}\",\"payload\":{{\"aps\":{{\"alert\":\"A\"}}, \"n\": 1.50}},\"priority\":5}}\n\n\
         {{\"token\":\"{b}\",\"payload\":{{\"aps\":{{\"content-available\":1}}}},\"push_type\":\"background\"}}\n"
    );
    let run = send(&s, &["--file", "-", "--format", "jsonl"], &stdin).await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.starts_with("sent 2 notifications from stdin"),
        "{}",
        run.stdout
    );
    let recs = delivered(&s.sim, &[a, b]).await;
    assert_eq!(recs[0].payload, r#"{"aps":{"alert":"A"}, "n": 1.50}"#);
    assert_eq!(recs[0].priority, 5);
    assert_eq!(recs[1].push_type.as_deref(), Some("background"));
    s.server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_exit_non_zero_with_grouped_reasons() {
    let s = setup().await;
    let good = token(40);
    let csv = format!("{good}\nnot-a-token\n{}zz\n", &token(41)[..62]);
    let file = write(s.dir.path(), "mixed.csv", &csv);
    let run = send(&s, &["--file", file.to_str().unwrap(), "--alert", "x"], "").await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("accepted: 1\n"), "{}", run.stdout);
    assert!(run.stdout.contains("rejected: 2\n"), "{}", run.stdout);
    // The one accepted among several is not named by the summary: its id is printed below it.
    let ids = run
        .stdout
        .split_once("ids:\n")
        .unwrap_or_else(|| panic!("no ids:\n{}", run.stdout))
        .1;
    assert_eq!(ids.lines().count(), 1, "{}", run.stdout);
    assert!(ids.starts_with("  00/"), "{}", run.stdout);
    assert!(
        run.stdout
            .contains("         2  device token: device token has a non-hex character\n"),
        "{}",
        run.stdout
    );
    // Each refused notification is named by its line on stderr.
    let name = file.display().to_string();
    assert!(
        run.stderr.contains(&format!(
            "{name}:2: device token: device token has a non-hex character"
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&format!("{name}:3: device token: ")),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains(&format!("{name}:1:")),
        "{}",
        run.stderr
    );
    // The good one is delivered all the same.
    delivered(&s.sim, &[good]).await;

    // A wrong API key fails the request: every notification counts as failed, with the server's answer.
    let t = token(42);
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "send",
            "--url",
            &s.url,
            "--api-key",
            "wrong",
            "--domain",
            DOMAIN,
        ])
        .args(["--token", &t, "--alert", "x"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(run.stdout).unwrap();
    assert_eq!(run.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("accepted: 0\n"), "{stdout}");
    assert!(
        stdout.contains("failed: 1\n         1  HTTP 401: "),
        "{stdout}"
    );

    // An unknown domain is the server's 400 for the whole request.
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "send",
            "--url",
            &s.url,
            "--api-key",
            KEY,
            "--domain",
            "nowhere.example",
        ])
        .args(["--token", &t, "--alert", "x"])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8(run.stdout).unwrap();
    assert_eq!(run.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("HTTP 400: domain: "), "{stdout}");
    s.server.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_reported_with_line_numbers_and_nothing_is_sent() {
    let s = setup().await;
    let file = write(
        s.dir.path(),
        "bad.jsonl",
        &format!(
            "{{\"token\":\"{}\",\"payload\":{{}}}}\n{{\"token\":1,\"payload\":{{}}}}\n{{\"token\":\"aa\",\"payload\":{{}},\"prio\":5}}\n",
            token(50)
        ),
    );
    let run = send(
        &s,
        &["--file", file.to_str().unwrap(), "--format", "jsonl"],
        "",
    )
    .await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    let name = file.display().to_string();
    assert!(
        run.stderr.contains(&format!("{name}:2: invalid type")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("{name}:3: unknown member \"prio\"")),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);

    // Without a payload for the tokens of a plain list, nothing is sent either.
    let file = write(s.dir.path(), "plain.csv", &format!("{}\n", token(51)));
    let run = send(&s, &["--file", file.to_str().unwrap()], "").await;
    assert_eq!(run.code, Some(1));
    assert!(
        run.stderr.contains(&format!(
            "{}:1: this notification has no payload of its own",
            file.display()
        )),
        "{}",
        run.stderr
    );
    // A line that is not UTF-8 is named, and the other errors are reported with it.
    let path = s.dir.path().join("latin1.csv");
    std::fs::write(&path, b"token,alert\naa,caf\xe9\nbb,ok,extra\n").unwrap();
    let run = send(&s, &["--file", path.to_str().unwrap()], "").await;
    assert_eq!(run.code, Some(1));
    let name = path.display().to_string();
    assert!(
        run.stderr
            .contains(&format!("{name}:2: not UTF-8 (at byte 7 of the line)\n")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("{name}:3: 3 columns where the header names 2")),
        "{}",
        run.stderr
    );

    // 1,000 unclosed quotes: the first 20 are shown, and the rest counted.
    let file = write(s.dir.path(), "quotes.csv", &"\"x\n".repeat(1000));
    let run = send(&s, &["--file", file.to_str().unwrap(), "--alert", "x"], "").await;
    assert_eq!(run.code, Some(1));
    assert_eq!(run.stderr.lines().count(), 21, "{}", run.stderr);
    assert!(
        run.stderr
            .ends_with("… and 980 more errors not shown (only the first 20 are)\n"),
        "{}",
        run.stderr
    );
    assert_eq!(s.server.summary().received, 0, "nothing reached herald");
    s.server.shutdown(Duration::from_secs(5)).await;
}

/// After a CSV header, a row whose first value starts with `#` is a notification, not a comment (it used to be
/// dropped without a word); before the header, and in a list of tokens without one, `#` starts a comment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_after_the_header_is_a_row() {
    let s = setup().await;
    let (a, b) = (token(70), token(71));
    let file = write(
        s.dir.path(),
        "deals.csv",
        &format!("# today's deals\nalert,token\n#1 deal,{a}\n#2 deal,{b}\n"),
    );
    let run = send(&s, &["--file", file.to_str().unwrap()], "").await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("sent 2 notifications"),
        "{}",
        run.stdout
    );
    let recs = delivered(&s.sim, &[a, b]).await;
    assert_eq!(recs[0].payload, r##"{"aps":{"alert":"#1 deal"}}"##);
    assert_eq!(recs[1].payload, r##"{"aps":{"alert":"#2 deal"}}"##);

    let c = token(72);
    let file = write(s.dir.path(), "list.csv", &format!("# list\n{c}\n# end\n"));
    let run = send(&s, &["--file", file.to_str().unwrap(), "--alert", "x"], "").await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("sent 1 notification from"),
        "{}",
        run.stdout
    );
    delivered(&s.sim, &[c]).await;
    s.server.shutdown(Duration::from_secs(5)).await;
}

/// A server that cannot be reached: the summary counts the failure, and stderr gives the whole cause (connection
/// refused) and the URL, which the summary's grouped reason cuts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_named_with_the_cause() {
    let port = herald_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["send", "--url", &url, "--domain", DOMAIN])
        .args(["--token", &token(80), "--alert", "x"])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.contains("failed: 1\n"), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "herald send: a request failed: POST {url}/api/v1/push: "
        )),
        "{stderr}"
    );
    assert!(stderr.contains("Connection refused"), "{stderr}");
}

/// What the scripted server answers `--wait` with, and how often it was asked.
#[derive(Default)]
struct Script {
    queries: std::sync::atomic::AtomicUsize,
    lookups: std::sync::atomic::AtomicUsize,
}

/// A REST server on 127.0.0.1 that accepts every token (ids `01/00-1-N`) and answers the status queries: the first
/// id delivered, the second `expired`, the third an error that its lookup alone answers `500`, the fourth `unknown`
/// at the first query and delivered from the second on.
async fn scripted_server() -> (String, Arc<Script>) {
    use axum::extract::State;
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use serde_json::{Value, json};
    use std::sync::atomic::Ordering;

    async fn push(body: String) -> (StatusCode, axum::Json<Value>) {
        let v: Value = serde_json::from_str(&body).unwrap();
        let n = v["tokens"].as_array().unwrap().len();
        let results: Vec<Value> = (1..=n)
            .map(|i| json!({"status": "accepted", "id": format!("01/00-1-{i}")}))
            .collect();
        (
            StatusCode::ACCEPTED,
            axum::Json(json!({ "results": results })),
        )
    }
    async fn query(State(script): State<Arc<Script>>, body: String) -> axum::Json<Value> {
        let round = script.queries.fetch_add(1, Ordering::SeqCst);
        let asked: Value = serde_json::from_str(&body).unwrap();
        let (mut found, mut not_found) = (Vec::new(), Vec::new());
        for id in asked["ids"].as_array().unwrap() {
            match id.as_str().unwrap() {
                "01/00-1-1" => found.push(json!({"id": id, "state": "delivered"})),
                "01/00-1-2" => {
                    not_found.push(json!({"id": id, "found": "expired", "error": "pruned"}))
                }
                "01/00-1-3" => {
                    not_found.push(json!({"id": id, "error": "the entry does not decode"}))
                }
                _ if round == 0 => not_found
                    .push(json!({"id": id, "found": "unknown", "error": "ask again later"})),
                _ => found.push(json!({"id": id, "state": "delivered"})),
            }
        }
        axum::Json(json!({"notifications": found, "not_found": not_found}))
    }
    async fn one(State(script): State<Arc<Script>>) -> (StatusCode, axum::Json<Value>) {
        script.lookups.fetch_add(1, Ordering::SeqCst);
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            axum::Json(json!({"id": "01/00-1-3", "error": "the entry does not decode"})),
        )
    }
    let script = Arc::new(Script::default());
    let app = axum::Router::new()
        .route("/api/v1/push", post(push))
        .route("/api/v1/notifications/query", post(query))
        .route("/api/v1/notifications/{*id}", get(one))
        .with_state(script.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, script)
}

/// `--wait` counts an `expired` answer as final (outcome unknown) and an error as a failed lookup, and ends as soon
/// as nothing can change: it used to count both as pending and wait out its whole timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_ends_once_nothing_can_change() {
    use std::sync::atomic::Ordering;
    let (url, script) = scripted_server().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<String> = (90..94).map(token).collect();
    let file = write(dir.path(), "four.csv", &(tokens.join("\n") + "\n"));
    let started = Instant::now();
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["send", "--url", &url, "--domain", DOMAIN])
            .args(["--file", file.to_str().unwrap(), "--alert", "x"])
            .args(["--wait", "--wait-timeout", "600"])
            .output(),
    )
    .await
    .expect("--wait ended before its timeout")
    .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        started.elapsed() < WAIT,
        "the wait took {:?}",
        started.elapsed()
    );
    assert!(
        stdout.contains(
            "outcomes of 4 notifications:\ndelivered: 2\nfailed: 0\n\
             expired: 1 (outcome unknown: herald kept it for outcome_retention and pruned it)\n\
             not looked up: 1 (outcome unknown)\n         1  HTTP 500: the entry does not decode\n"
        ),
        "{stdout}"
    );
    assert!(!stdout.contains("pending"), "{stdout}");
    // The unknown one was asked about again; the expired and the broken ones were not.
    assert_eq!(script.queries.load(Ordering::SeqCst), 2);
    assert_eq!(script.lookups.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_listener_with_a_private_ca() {
    let s = setup_with(true).await;
    let t = token(60);
    let ca = s.dir.path().join("pki/ca.pem");
    let run = send(
        &s,
        &[
            "--ca",
            ca.to_str().unwrap(),
            "--token",
            &t,
            "--alert",
            "over TLS",
        ],
        "",
    )
    .await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("accepted: 1 (id "), "{}", run.stdout);
    delivered(&s.sim, &[t]).await;

    // Without the CA the server's certificate is not trusted: the request fails, the exit status says so.
    let run = send(&s, &["--token", &token(61), "--alert", "x"], "").await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("failed: 1\n"), "{}", run.stdout);
    s.server.shutdown(Duration::from_secs(5)).await;
}

/// `--wait` polls the status API until every notification has its final outcome and prints them; the ids are
/// printed (docs/api.md "Status of a notification"). A `--wait-timeout` beyond the clock's range is as good as
/// none (it was a panic).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_prints_the_ids_and_the_final_outcomes() {
    let s = setup().await;
    let tokens: Vec<String> = (60..63).map(token).collect();
    let csv = tokens.join("\n") + "\n";
    let file = write(s.dir.path(), "wait.csv", &csv);
    let run = send(
        &s,
        &[
            "--file",
            file.to_str().unwrap(),
            "--alert",
            "w",
            "--wait",
            "--wait-timeout",
            "18446744073709551615",
        ],
        "",
    )
    .await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("ids:\n"), "{}", run.stdout);
    assert_eq!(run.stdout.matches("\n  00/").count(), 3, "{}", run.stdout);
    assert!(
        run.stdout
            .contains("outcomes of 3 notifications:\ndelivered: 3\nfailed: 0\n"),
        "{}",
        run.stdout
    );
    delivered(&s.sim, &tokens).await;
}

/// A fake herald for the retry tests: `POST /api/v1/push` answers as `answer` says for the request's number (from
/// 0), remembering each request's `Idempotency-Key`; the status query says lookups are off; a broadcast is `400`.
struct Fake {
    url: String,
    keys: Keys,
}

/// Each push request's `Idempotency-Key` and when it came.
type Keys = Arc<std::sync::Mutex<Vec<(Option<String>, Instant)>>>;

async fn fake_server(answer: fn(usize) -> (u16, Option<u64>)) -> Fake {
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::post;
    use serde_json::{Value, json};
    let keys: Keys = Arc::default();
    let seen = keys.clone();
    let push = move |headers: HeaderMap, body: String| {
        let seen = seen.clone();
        async move {
            let n = {
                let mut seen = seen.lock().unwrap();
                let key = headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                seen.push((key, Instant::now()));
                seen.len() - 1
            };
            let (status, retry_after) = answer(n);
            if status != 202 {
                let mut r = (
                    StatusCode::from_u16(status).unwrap(),
                    axum::Json(json!({"error": "queue full: retry later"})),
                )
                    .into_response();
                if let Some(s) = retry_after {
                    r.headers_mut()
                        .insert("retry-after", s.to_string().parse().unwrap());
                }
                return r;
            }
            let v: Value = serde_json::from_str(&body).unwrap();
            let results: Vec<Value> = (0..v["tokens"].as_array().unwrap().len())
                .map(|i| json!({"status": "accepted", "id": format!("01/00-{n}-{i}")}))
                .collect();
            (
                StatusCode::ACCEPTED,
                axum::Json(json!({ "results": results })),
            )
                .into_response()
        }
    };
    async fn query(body: String) -> axum::Json<Value> {
        let asked: Value = serde_json::from_str(&body).unwrap();
        let not_found: Vec<Value> = asked["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| json!({"id": id, "found": "unknown", "error": format!("{}: unknown: status lookups are off on this herald (outcome_retention = 0): it keeps no outcome to look up", id.as_str().unwrap())}))
            .collect();
        axum::Json(json!({"notifications": [], "not_found": not_found}))
    }
    async fn broadcast() -> (StatusCode, axum::Json<Value>) {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"error": "channel_id: not base64"})),
        )
    }
    let app = axum::Router::new()
        .route("/api/v1/push", post(push))
        .route("/api/v1/notifications/query", post(query))
        .route("/api/v1/broadcast", post(broadcast));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Fake { url, keys }
}

/// Runs the built binary `herald send --url URL --domain DOMAIN ARGS…` with a deadline.
async fn run_send(url: &str, args: &[&str]) -> Run {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args(["send", "--url", url, "--domain", DOMAIN])
            .args(args)
            .output(),
    )
    .await
    .expect("herald send ended within its deadline")
    .unwrap();
    Run {
        ok: out.status.success(),
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).unwrap(),
        stderr: String::from_utf8(out.stderr).unwrap(),
    }
}

/// A batch answered `503` is tried again with the same `Idempotency-Key`, so that the server answers a repeat of
/// an accepted try again rather than queueing it twice (docs/api.md "Idempotent requests"); the summary counts
/// the requests made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_503_is_tried_again_with_the_same_idempotency_key() {
    let fake = fake_server(|n| if n == 0 { (503, Some(0)) } else { (202, None) }).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "two.csv",
        &format!("{}\n{}\n", token(1), token(2)),
    );
    let run = run_send(
        &fake.url,
        &["--file", file.to_str().unwrap(), "--alert", "x"],
    )
    .await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.starts_with(&format!(
            "sent 2 notifications from {} to {DOMAIN} in 2 requests (1 batch, 1 tried again)\naccepted: 2\n",
            file.display()
        )),
        "{}",
        run.stdout
    );
    let keys = fake.keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 2);
    let key = keys[0]
        .0
        .clone()
        .expect("the request carries an Idempotency-Key");
    assert!(key.ends_with("-0"), "{key}");
    assert_eq!(
        keys[1].0.as_deref(),
        Some(key.as_str()),
        "the same key again"
    );
}

/// A server that answers `503` for as long as `--retry-for` lasts: the batch tried counts as failed, the batches
/// never sent as not sent, named by their lines with the key prefix to resend them with; the counts are those of
/// the requests made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_never_sent_are_named_apart_from_failed_ones() {
    let fake = fake_server(|_| (503, Some(0))).await;
    let dir = tempfile::tempdir().unwrap();
    let tokens: Vec<String> = (0..6).map(token).collect();
    let file = write(dir.path(), "six.csv", &(tokens.join("\n") + "\n"));
    let f = file.to_str().unwrap();
    let run = run_send(
        &fake.url,
        &[
            "--file",
            f,
            "--alert",
            "x",
            "--batch",
            "2",
            "--parallel",
            "1",
            "--retry-for",
            "1",
            "--idempotency-key",
            "run7",
        ],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    let keys = fake.keys.lock().unwrap().clone();
    assert!(keys.len() >= 2, "tried again: {keys:?}");
    assert!(
        keys.iter().all(|(k, _)| k.as_deref() == Some("run7-0")),
        "{keys:?}"
    );
    assert!(
        run.stdout.starts_with(&format!(
            "sent 2 notifications from {f} to {DOMAIN} in {} requests (1 batch, {} tried again)\n",
            keys.len(),
            keys.len() - 1
        )),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains(
            "failed: 2\n         2  HTTP 503: queue full: retry later\nnot sent: 4 (in 2 batches never sent"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stderr.contains(&format!(
            "herald send: failed (sent; herald's answer unknown or a refusal): {f} lines 1-2\n"
        )),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains(&format!("herald send: not sent: {f} lines 3-6\n")),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr
            .contains("rerun with --idempotency-key run7 --batch 2"),
        "{}",
        run.stderr
    );
}

/// A `429` with `retry-after` is tried again no sooner than it asks, with the same key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_is_tried_again_after_its_retry_after() {
    let fake = fake_server(|n| if n == 0 { (429, Some(1)) } else { (202, None) }).await;
    let run = run_send(&fake.url, &["--token", &token(3), "--alert", "x"]).await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    let keys = fake.keys.lock().unwrap().clone();
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys[0].0, keys[1].0);
    assert!(keys[0].0.is_some());
    assert!(
        keys[1].1 - keys[0].1 >= Duration::from_millis(900),
        "retry-after: 1 honoured"
    );
}

/// A REST server on 127.0.0.1 speaking just enough HTTP/1.1: each push request's `Idempotency-Key` is recorded,
/// and request `drop_at` (counted from 0) gets no answer: its connection is closed once the request was read, as
/// a herald killed or restarted mid-request would. Every other request is accepted.
async fn dropping_server(drop_at: usize) -> Fake {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let keys: Keys = Arc::default();
    let seen = keys.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: its head, then as many body bytes as it says.
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    let header = |name: &str| {
                        head.lines()
                            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_owned()))
                    };
                    let length: usize = header("content-length:").unwrap().parse().unwrap();
                    while buf.len() < head_end + length {
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body: serde_json::Value =
                        serde_json::from_slice(&buf[head_end..head_end + length]).unwrap();
                    buf.drain(..head_end + length);
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push((header("idempotency-key:"), Instant::now()));
                        seen.len() - 1
                    };
                    if n == drop_at {
                        return;
                    }
                    let results: Vec<serde_json::Value> = (0..body["tokens"].as_array().unwrap().len())
                        .map(|i| serde_json::json!({"status": "accepted", "id": format!("01/00-{n}-{i}")}))
                        .collect();
                    let answer = serde_json::json!({ "results": results }).to_string();
                    let reply = format!(
                        "HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{answer}",
                        answer.len()
                    );
                    if sock.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    Fake { url, keys }
}

/// A request that gets no answer (its connection closed, as when herald is restarted mid-request) after herald has
/// answered an earlier one is tried again with the same key, which makes it safe whether or not the lost try was
/// accepted (docs/api.md "Idempotent requests"); nothing is counted failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_lost_in_transit_is_tried_again_with_the_same_key() {
    let fake = dropping_server(1).await;
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "two.csv",
        &format!("{}\n{}\n", token(1), token(2)),
    );
    let run = run_send(
        &fake.url,
        &[
            "--file",
            file.to_str().unwrap(),
            "--alert",
            "x",
            "--batch",
            "1",
            "--parallel",
            "1",
        ],
    )
    .await;
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.starts_with(&format!(
            "sent 2 notifications from {} to {DOMAIN} in 3 requests (2 batches, 1 tried again)\naccepted: 2\n",
            file.display()
        )),
        "{}",
        run.stdout
    );
    let keys: Vec<Option<String>> = fake
        .keys
        .lock()
        .unwrap()
        .iter()
        .map(|k| k.0.clone())
        .collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(
        keys[0].as_deref().is_some_and(|k| k.ends_with("-0")),
        "{keys:?}"
    );
    assert!(
        keys[1].as_deref().is_some_and(|k| k.ends_with("-1")),
        "{keys:?}"
    );
    assert_eq!(keys[1], keys[2], "the same key again");
}

/// A request lost before herald answered any (a wrong URL, a herald not running yet) is not tried again: the run
/// fails at once, naming the cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_request_lost_in_transit_fails_at_once() {
    let fake = dropping_server(0).await;
    let run = run_send(&fake.url, &["--token", &token(4), "--alert", "x"]).await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("failed: 1\n"), "{}", run.stdout);
    assert_eq!(fake.keys.lock().unwrap().len(), 1, "not tried again");
}

/// A herald with `outcome_retention = 0` answers every id `unknown` because it keeps no outcomes: `--wait` ends at
/// once, the ids not looked up, rather than waiting out `--wait-timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_ends_at_once_when_lookups_are_off() {
    let fake = fake_server(|_| (202, None)).await;
    let run = run_send(
        &fake.url,
        &[
            "--token",
            &token(4),
            "--alert",
            "x",
            "--wait",
            "--wait-timeout",
            "600",
        ],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains(
            "not looked up: 1 (outcome unknown)\n         1  status lookups are off on this herald (outcome_retention = 0)\n"
        ),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("pending"), "{}", run.stdout);
}

/// `--ca` with a file holding no certificate, or with a plain http:// URL, is a usage error (exit 2) naming it,
/// not a TLS failure at the first request nor silently ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_without_a_certificate_or_for_http_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let csv = write(dir.path(), "tokens.csv", &format!("{}\n", token(5)));
    let c = csv.to_str().unwrap();
    let run = run_send(
        "https://127.0.0.1:9",
        &["--ca", c, "--token", &token(5), "--alert", "x"],
    )
    .await;
    assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains(&format!("--ca {c}: no CA certificate found")),
        "{}",
        run.stderr
    );
    let run = run_send(
        "http://127.0.0.1:9",
        &["--ca", c, "--token", &token(5), "--alert", "x"],
    )
    .await;
    assert_eq!(run.code, Some(2), "{}{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("is not https://"), "{}", run.stderr);
}

/// A refused broadcast is reported on standard error, as the other refusals of `herald send`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_broadcast_is_reported_on_stderr() {
    let fake = fake_server(|_| (202, None)).await;
    let run = run_send(
        &fake.url,
        &["--channel", "abc", "--payload", "{\"aps\":{}}"],
    )
    .await;
    assert_eq!(run.code, Some(1), "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(run.stderr.contains("refused: POST "), "{}", run.stderr);
}
