//! `herald sim pki DIR` and `herald sim --pki DIR`: the manifest, the files it names, and the one JSON line the
//! running simulator prints (STABLE interface).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_apns::identity::{CertEnvironment, CertificateInfo, ClientIdentity};
use herald_apns::provider_token::SigningKey;

fn herald() -> Command {
    Command::new(env!("CARGO_BIN_EXE_herald"))
}

fn pki(dir: &Path, topics: &[&str]) -> serde_json::Value {
    let mut cmd = herald();
    cmd.args(["sim", "pki"]).arg(dir);
    for t in topics {
        cmd.args(["--topic", t]);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "herald sim pki failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = std::fs::read(dir.join("pki.json")).unwrap();
    serde_json::from_slice(&manifest).unwrap()
}

fn path(v: &serde_json::Value) -> PathBuf {
    let p = PathBuf::from(v.as_str().unwrap_or_else(|| panic!("not a path: {v}")));
    assert!(p.is_absolute(), "{} is not absolute", p.display());
    assert!(p.is_file(), "{} does not exist", p.display());
    p
}

#[test]
fn pki_writes_a_manifest_of_parseable_files() {
    let dir = tempfile::tempdir().unwrap();
    let m = pki(dir.path(), &["com.example.one", "com.example.two"]);
    let ca = std::fs::read_to_string(path(&m["ca_cert"])).unwrap();
    assert!(ca.contains("BEGIN CERTIFICATE"));
    path(&m["ca_key"]);
    let server =
        ClientIdentity::from_pem_files(&path(&m["server_cert"]), Some(&path(&m["server_key"])))
            .unwrap();
    assert!(!server.chain.is_empty());

    for topic in ["com.example.one", "com.example.two"] {
        for (variant, env) in [
            ("universal", CertEnvironment::Universal),
            ("production", CertEnvironment::Production),
            ("sandbox", CertEnvironment::Development),
        ] {
            let files = &m["clients"][topic][variant];
            let id =
                ClientIdentity::from_pem_files(&path(&files["cert"]), Some(&path(&files["key"])))
                    .unwrap();
            let info = CertificateInfo::from_der(id.leaf()).unwrap();
            assert_eq!(info.uid.as_deref(), Some(topic));
            assert!(
                info.subject
                    .contains(&format!("Apple Push Services: {topic}")),
                "{}",
                info.subject
            );
            assert!(info.topics.iter().any(|t| t == topic), "{:?}", info.topics);
            assert!(info.topics.iter().any(|t| *t == format!("{topic}.voip")));
            assert_eq!(info.environment, env, "{topic} {variant}");
            let p12 = ClientIdentity::from_pkcs12(
                &path(&files["p12"]),
                m["p12_password"].as_str().unwrap(),
            )
            .unwrap();
            assert_eq!(
                p12.leaf(),
                id.leaf(),
                "the PKCS#12 copy holds the same certificate"
            );
        }
    }
    let key_id = m["key_id"].as_str().unwrap();
    let team_id = m["team_id"].as_str().unwrap();
    assert_eq!((key_id.len(), team_id.len()), (10, 10));
    assert_eq!(m["token_key"]["key_id"], key_id);
    let p8 = path(&m["token_key"]["p8"]);
    assert!(
        std::fs::read_to_string(&p8)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );
    let key = SigningKey::from_p8_file(&p8, key_id, team_id).unwrap();
    let jwt = key.sign(1_700_000_000).unwrap();
    assert_eq!(
        key.verifying_key().unwrap().verify(&jwt).unwrap().iss,
        team_id
    );
}

#[test]
fn pki_defaults_to_one_topic() {
    let dir = tempfile::tempdir().unwrap();
    let m = pki(dir.path(), &[]);
    let clients = m["clients"].as_object().unwrap();
    assert_eq!(
        clients.keys().collect::<Vec<_>>(),
        vec!["com.example.herald"]
    );
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

#[test]
fn sim_prints_one_json_line_and_serves() {
    let curl = ["/usr/bin/curl", "/usr/local/bin/curl", "/bin/curl"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect(
            "curl is not installed; install it with `apt-get install -y curl` (this test needs it)",
        );
    let dir = tempfile::tempdir().unwrap();
    let m = pki(dir.path(), &["com.example.cli"]);
    let record = dir.path().join("record.jsonl");
    let mut child = herald()
        .args(["sim", "--pki"])
        .arg(dir.path())
        .arg("--record")
        .arg(&record)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _running = Running(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addrs: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
    let obj = addrs.as_object().unwrap();
    assert_eq!(obj.len(), 6, "{line}");
    let addr = |k: &str| -> SocketAddr {
        let a: SocketAddr = obj[k].as_str().unwrap().parse().unwrap();
        assert_eq!(a.ip().to_string(), "127.0.0.1");
        assert_ne!(a.port(), 0);
        a
    };
    let (h2, admin) = (addr("h2"), addr("admin"));
    addr("binary");
    addr("feedback");
    addr("management");
    addr("broadcast");

    let files = &m["clients"]["com.example.cli"]["universal"];
    let payload = r#"{"aps":{"alert":"cli"}}"#;
    let out = Command::new(curl)
        .args([
            "--http2",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(m["ca_cert"].as_str().unwrap())
        .args([
            "--cert",
            files["cert"].as_str().unwrap(),
            "--key",
            files["key"].as_str().unwrap(),
            // The test PKI's certificates list several topics, for which APNs requires apns-topic.
            "-H",
            "apns-topic: com.example.cli",
        ])
        .args(["--data-binary", payload])
        .arg(format!("https://{h2}/3/device/{}", "ab".repeat(32)))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let stats: serde_json::Value = serde_json::from_str(&http_get(admin, "/stats")).unwrap();
    assert_eq!(stats["accepted"]["total"], 1);
    assert_eq!(stats["accepted"]["by_topic"]["com.example.cli"]["h2"], 1);

    // The record line is flushed promptly; wait for it with a deadline.
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = std::fs::read_to_string(&record).unwrap_or_default();
        if text.ends_with('\n') || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(5)); // poll interval, bounded by the deadline
    };
    let rec: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(rec["payload"], payload);
    assert_eq!(rec["token"], "ab".repeat(32));
    assert_eq!(rec["topic"], "com.example.cli");
    assert_eq!(rec["protocol"], "h2");
}

#[test]
fn sim_without_pki_fails_with_a_message() {
    let out = herald().args(["sim"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pki"));
}

/// Starts `herald sim --pki DIR ARGS…` and returns the child and its parsed ready line.
fn start_sim(dir: &Path, args: &[&str]) -> (Running, serde_json::Value) {
    let mut child = herald()
        .args(["sim", "--pki"])
        .arg(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    (running, serde_json::from_str(line.trim()).unwrap())
}

fn curl_status(m: &serde_json::Value, variant: &str, h2: &str, token: &str) -> (String, String) {
    let files = &m["clients"]["com.example.herald"][variant];
    let out = Command::new("curl")
        .args(["--http2", "-sS", "-w", "\n%{http_code}", "--cacert"])
        .arg(m["ca_cert"].as_str().unwrap())
        .args([
            "--cert",
            files["cert"].as_str().unwrap(),
            "--key",
            files["key"].as_str().unwrap(),
            "-H",
            "apns-topic: com.example.herald",
        ])
        .args(["--data-binary", r#"{"aps":{}}"#])
        .arg(format!("https://{h2}/3/device/{token}"))
        .output()
        .expect(
            "curl is not installed; install it with `apt-get install -y curl` (this test needs it)",
        );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.to_owned(), body.to_owned())
}

#[test]
fn scenario_file_and_flags_shape_the_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let m = pki(dir.path(), &[]);
    let gone = "cd".repeat(32);
    let scenario = dir.path().join("scenario.json");
    std::fs::write(
        &scenario,
        format!(r#"{{"tokens":[{{"token":"{gone}","state":"unregistered","timestamp_ms":1650000000000}}]}}"#),
    )
    .unwrap();
    let (_sim, addrs) = start_sim(
        dir.path(),
        &[
            "--scenario",
            scenario.to_str().unwrap(),
            "--environment",
            "production",
            "--bad-token",
            &"ee".repeat(32),
        ],
    );
    let h2 = addrs["h2"].as_str().unwrap();
    assert_eq!(
        curl_status(&m, "production", h2, &gone),
        (
            "410".into(),
            r#"{"reason":"Unregistered","timestamp":1650000000000}"#.into()
        )
    );
    assert_eq!(
        curl_status(&m, "production", h2, &"ee".repeat(32)),
        ("400".into(), r#"{"reason":"BadDeviceToken"}"#.into())
    );
    assert_eq!(
        curl_status(&m, "sandbox", h2, &"ab".repeat(32)),
        (
            "403".into(),
            r#"{"reason":"BadCertificateEnvironment"}"#.into()
        )
    );
    assert_eq!(curl_status(&m, "production", h2, &"ab".repeat(32)).0, "200");
}

#[test]
fn a_bad_scenario_file_is_refused_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path(), &[]);
    let scenario = dir.path().join("bad.json");
    std::fs::write(&scenario, r#"{"errors":{"NotAReason":0.5}}"#).unwrap();
    let out = herald()
        .args(["sim", "--pki"])
        .arg(dir.path())
        .arg("--scenario")
        .arg(&scenario)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.json") && err.contains("NotAReason"),
        "{err}"
    );
}

fn http_post(addr: SocketAddr, path: &str, body: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: sim\r\nConnection: close\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or_default();
    let status = head.split(' ').nth(1).unwrap_or_default().to_owned();
    (status, body.to_owned())
}

/// `--rate` and `--latency-ms` set the pace; the admin port shows it and changes it while running. Tokens of 32 to
/// 100 bytes are taken over HTTP/2 (an 80-byte Live Activity token among them); 1, 31 and 101 bytes are
/// BadDeviceToken.
#[test]
fn the_pace_is_set_by_flags_and_changed_at_run_time() {
    let dir = tempfile::tempdir().unwrap();
    let m = pki(dir.path(), &[]);
    let (_sim, addrs) = start_sim(
        dir.path(),
        &[
            "--rate",
            "500",
            "--latency-ms",
            "10",
            "--environment",
            "production",
        ],
    );
    let admin: SocketAddr = addrs["admin"].as_str().unwrap().parse().unwrap();
    let pace: serde_json::Value = serde_json::from_str(&http_get(admin, "/pace")).unwrap();
    assert_eq!(
        pace,
        serde_json::json!({"latency_ms": 10, "latency_jitter_ms": 0, "rate": 500})
    );
    let (status, body) = http_post(admin, "/pace", r#"{"latency_ms": 8000}"#);
    assert_eq!(status, "200", "{body}");
    let pace: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        pace,
        serde_json::json!({"latency_ms": 8000, "latency_jitter_ms": 0, "rate": 500})
    );
    let (status, body) = http_post(admin, "/pace", r#"{"latency": 1}"#);
    assert_eq!(status, "400");
    assert!(body.contains("latency"), "{body}");
    http_post(admin, "/pace", r#"{"latency_ms": 0, "rate": 0}"#);
    let h2 = addrs["h2"].as_str().unwrap();
    for bytes in [1, 31, 101] {
        assert_eq!(
            curl_status(&m, "production", h2, &"ab".repeat(bytes)),
            ("400".into(), r#"{"reason":"BadDeviceToken"}"#.into()),
            "{bytes} bytes"
        );
    }
    for bytes in [32, 33, 80, 100] {
        assert_eq!(
            curl_status(&m, "production", h2, &"ab".repeat(bytes)).0,
            "200",
            "{bytes} bytes"
        );
    }
}

/// `curl` over HTTP/2 with a client certificate and one extra header, with a payload or (`body` false) none;
/// returns the status code. A head the server refuses (431) is sent without a body: the server resets the stream
/// after its answer, which fails a curl still sending the body (`000`) on some schedules.
fn curl_with_header(m: &serde_json::Value, h2: &str, header: &str, body: bool) -> String {
    let files = &m["clients"]["com.example.herald"]["universal"];
    let out = Command::new("curl")
        .args([
            "--http2",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--cacert",
        ])
        .arg(m["ca_cert"].as_str().unwrap())
        .args([
            "--cert",
            files["cert"].as_str().unwrap(),
            "--key",
            files["key"].as_str().unwrap(),
            "-H",
            "apns-topic: com.example.herald",
            "-H",
            header,
        ])
        .args(if body {
            ["--data-binary", r#"{"aps":{}}"#]
        } else {
            ["-X", "POST"]
        })
        .arg(format!("https://{h2}/3/device/{}", "ab".repeat(32)))
        .output()
        .expect(
            "curl is not installed; install it with `apt-get install -y curl` (this test needs it)",
        );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `--apple-settings` serves APNs' header list size (8000 bytes) and `--max-header-list-size` overrides it; a
/// larger request head is answered 431. `--record-memory-limit` keeps the latest notifications in memory, counting
/// the ones dropped (admin `GET /record` header and `GET /stats`). A setting out of range is refused, named.
#[test]
fn settings_and_record_limit_flags_shape_the_simulator() {
    let dir = tempfile::tempdir().unwrap();
    let m = pki(dir.path(), &[]);
    let (_sim, addrs) = start_sim(dir.path(), &["--apple-settings"]);
    let h2 = addrs["h2"].as_str().unwrap();
    let pad = |n: usize| format!("x-pad: {}", "x".repeat(n));
    assert_eq!(curl_with_header(&m, h2, &pad(7000), true), "200");
    assert_eq!(curl_with_header(&m, h2, &pad(8500), false), "431");
    drop(_sim);

    let (_sim, addrs) = start_sim(
        dir.path(),
        &[
            "--apple-settings",
            "--max-header-list-size",
            "10000",
            "--record-in-memory",
            "--record-memory-limit",
            "1",
        ],
    );
    let h2 = addrs["h2"].as_str().unwrap();
    assert_eq!(curl_with_header(&m, h2, &pad(8500), true), "200");
    assert_eq!(curl_with_header(&m, h2, "x-n: 2", true), "200");
    let admin: SocketAddr = addrs["admin"].as_str().unwrap().parse().unwrap();
    let mut s = TcpStream::connect(admin).unwrap();
    write!(
        s,
        "GET /record HTTP/1.1\r\nHost: sim\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    assert!(
        head.to_ascii_lowercase()
            .contains("herald-sim-records-dropped: 1"),
        "{head}"
    );
    assert_eq!(body.lines().count(), 1, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&http_get(admin, "/stats")).unwrap();
    assert_eq!(stats["records_dropped"], 1);
    assert_eq!(stats["accepted"]["total"], 2);

    let out = herald()
        .args(["sim", "--pki"])
        .arg(dir.path())
        .args(["--connection-window-size", "100"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connection_window_size 100"), "{err}");
}

/// `--listen-ip` places the APNs-facing ports, not the admin one, which has no authentication: it stays on
/// 127.0.0.1 unless `--admin-ip` moves it. The ready line keeps its six addresses. (127.0.0.2 and 127.0.0.3 are
/// loopback addresses too, so nothing is exposed.)
#[test]
fn the_admin_port_stays_local_unless_admin_ip_moves_it() {
    let dir = tempfile::tempdir().unwrap();
    pki(dir.path(), &[]);
    let ip_of = |addrs: &serde_json::Value, k: &str| -> SocketAddr {
        let a: SocketAddr = addrs[k]
            .as_str()
            .unwrap_or_else(|| panic!("{k} in {addrs}"))
            .parse()
            .unwrap();
        assert_ne!(a.port(), 0);
        a
    };
    let (sim, addrs) = start_sim(dir.path(), &["--listen-ip", "127.0.0.2"]);
    assert_eq!(addrs.as_object().unwrap().len(), 6, "{addrs}");
    for k in ["h2", "binary", "feedback", "management", "broadcast"] {
        assert_eq!(ip_of(&addrs, k).ip().to_string(), "127.0.0.2", "{k}");
    }
    let admin = ip_of(&addrs, "admin");
    assert_eq!(admin.ip().to_string(), "127.0.0.1");
    assert_eq!(http_get(admin, "/healthz"), "ok\n");
    drop(sim);

    let (_sim, addrs) = start_sim(
        dir.path(),
        &["--listen-ip", "127.0.0.2", "--admin-ip", "127.0.0.3"],
    );
    assert_eq!(ip_of(&addrs, "h2").ip().to_string(), "127.0.0.2");
    let admin = ip_of(&addrs, "admin");
    assert_eq!(admin.ip().to_string(), "127.0.0.3");
    assert_eq!(http_get(admin, "/healthz"), "ok\n");
}
