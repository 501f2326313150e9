//! The simulator against clients nobody here wrote: curl (client certificate, PKCS#12, bearer JWT), h2load and
//! openssl s_client (binary frames). A missing tool fails the test with the package to install.

mod common;

use std::io::{Read, Write};
use std::process::{Command, Stdio};

use common::*;
use herald_sim::{AuthPolicy, CertVariant};

struct Curl {
    status: u16,
    body: String,
}

impl Curl {
    fn reason(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        v["reason"].as_str().map(str::to_owned)
    }
}

/// Runs curl --http2 against the simulator with `args` (auth, headers) and returns status and body.
async fn curl(t: &TestSim, args: Vec<String>, path: &str, body: Option<&str>) -> Curl {
    let curl = tool("curl", "curl");
    let url = format!("https://{}{path}", t.sim.addrs.h2);
    let ca = t.pki.manifest.ca_cert.clone();
    let body = body.map(str::to_owned);
    tokio::task::spawn_blocking(move || {
        let mut cmd = Command::new(curl);
        cmd.args(["--http2", "-sS", "--max-time", "10", "--cacert"])
            .arg(&ca);
        cmd.args(&args);
        if let Some(b) = &body {
            cmd.args(["--data-binary", b]);
        }
        cmd.args(["-o", "-", "-w", "\n%{http_code} %{http_version}"])
            .arg(url);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "curl failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let (body, tail) = text.rsplit_once('\n').unwrap();
        let (code, version) = tail.split_once(' ').unwrap();
        assert_eq!(version, "2", "curl spoke HTTP/2");
        Curl {
            status: code.parse().unwrap(),
            body: body.to_owned(),
        }
    })
    .await
    .unwrap()
}

/// The client certificate of `v`, and the topic: the test PKI's certificates list several topics, for which APNs
/// requires `apns-topic` (docs/apns-protocol.md#http2-request).
fn cert_args(t: &TestSim, v: CertVariant) -> Vec<String> {
    let (cert, key) = cert_identity(&t.pki, v);
    vec![
        "--cert".into(),
        cert.display().to_string(),
        "--key".into(),
        key.display().to_string(),
        "-H".into(),
        format!("apns-topic: {TOPIC}"),
    ]
}

const JSON: &str = r#"{"aps":{"alert":"from curl"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_client_certificate() {
    let t = start_with(|c, _| c.scenario.bad = vec![token(0xbd)]).await;
    let dev = format!("/3/device/{}", token(1));
    let ok = curl(&t, cert_args(&t, CertVariant::Universal), &dev, Some(JSON)).await;
    assert_eq!((ok.status, ok.body.as_str()), (200, ""));

    // PKCS#12 copy of the same identity.
    let p12 = t
        .pki
        .client(TOPIC, CertVariant::Universal)
        .unwrap()
        .p12
        .display()
        .to_string();
    let ok = curl(
        &t,
        vec![
            "--cert-type".into(),
            "P12".into(),
            "--cert".into(),
            format!("{p12}:herald"),
            "-H".into(),
            format!("apns-topic: {TOPIC}"),
        ],
        &dev,
        Some(JSON),
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);

    let with = |extra: &[&str]| {
        let mut a = cert_args(&t, CertVariant::Universal);
        if extra.iter().any(|e| e.starts_with("apns-topic:")) {
            a.truncate(a.len() - 2);
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    type Case<'a> = (Vec<String>, String, Option<&'a str>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            with(&["-H", "apns-priority: 3"]),
            dev.clone(),
            Some(JSON),
            400,
            "BadPriority",
        ),
        (
            with(&["-H", "apns-push-type: nope"]),
            dev.clone(),
            Some(JSON),
            400,
            "InvalidPushType",
        ),
        (
            with(&["-H", "apns-id: 42"]),
            dev.clone(),
            Some(JSON),
            400,
            "BadMessageId",
        ),
        (
            with(&["-H", "apns-expiration: later"]),
            dev.clone(),
            Some(JSON),
            400,
            "BadExpirationDate",
        ),
        (
            with(&["-H", &format!("apns-collapse-id: {}", "c".repeat(65))]),
            dev.clone(),
            Some(JSON),
            400,
            "BadCollapseId",
        ),
        (
            with(&["-H", "apns-topic: com.someone.else"]),
            dev.clone(),
            Some(JSON),
            400,
            "TopicDisallowed",
        ),
        (
            with(&["-H", "apns-priority: 5", "-H", "apns-priority: 10"]),
            dev.clone(),
            Some(JSON),
            400,
            "DuplicateHeaders",
        ),
        (
            with(&["-X", "GET"]),
            dev.clone(),
            None,
            405,
            "MethodNotAllowed",
        ),
        (
            with(&[]),
            "/3/device/".into(),
            Some(JSON),
            400,
            "MissingDeviceToken",
        ),
        (with(&[]), "/4/device/aa".into(), Some(JSON), 404, "BadPath"),
        (
            with(&[]),
            "/3/device/zz".into(),
            Some(JSON),
            400,
            "BadDeviceToken",
        ),
        (
            with(&[]),
            format!("/3/device/{}", token(0xbd)),
            Some(JSON),
            400,
            "BadDeviceToken",
        ),
        (with(&[]), dev.clone(), Some(""), 400, "PayloadEmpty"),
        (
            cert_args(&t, CertVariant::Production),
            dev.clone(),
            Some(JSON),
            403,
            "BadCertificateEnvironment",
        ),
    ];
    for (args, path, body, status, reason) in cases {
        let r = curl(&t, args.clone(), &path, body).await;
        assert_eq!(
            (r.status, r.reason().as_deref()),
            (status, Some(reason)),
            "{args:?} {path}"
        );
    }
    let big = format!(r#"{{"aps":{{"alert":"{}"}}}}"#, "x".repeat(4100));
    let r = curl(&t, cert_args(&t, CertVariant::Universal), &dev, Some(&big)).await;
    assert_eq!(
        (r.status, r.reason().as_deref()),
        (413, Some("PayloadTooLarge"))
    );

    assert_eq!(
        t.sim
            .wait_for_records(2, std::time::Duration::from_secs(5))
            .await,
        2
    );
    let rec = t.sim.record();
    assert_eq!(rec[0].payload, JSON, "recorded byte for byte");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_a_bearer_token() {
    let t = start().await;
    let dev = format!("/3/device/{}", token(2));
    let topic = format!("apns-topic: {TOPIC}");
    let auth = |jwt: &str| {
        vec![
            "-H".to_string(),
            format!("authorization: bearer {jwt}"),
            "-H".to_string(),
            topic.clone(),
        ]
    };
    let ok = curl(&t, auth(&jwt(&t.pki, now())), &dev, Some(JSON)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    let ok = curl(&t, auth(&jwt_der(&t.pki, now())), &dev, Some(JSON)).await;
    assert_eq!(ok.status, 200, "DER signature: {}", ok.body);

    let r = curl(&t, vec!["-H".into(), topic.clone()], &dev, Some(JSON)).await;
    assert_eq!(
        (r.status, r.reason().as_deref()),
        (403, Some("MissingProviderToken"))
    );
    let r = curl(&t, auth("a.b.c"), &dev, Some(JSON)).await;
    assert_eq!(
        (r.status, r.reason().as_deref()),
        (403, Some("InvalidProviderToken"))
    );
    let r = curl(&t, auth(&jwt(&t.pki, now() - 4000)), &dev, Some(JSON)).await;
    assert_eq!(
        (r.status, r.reason().as_deref()),
        (403, Some("ExpiredProviderToken"))
    );
    let r = curl(
        &t,
        vec![
            "-H".into(),
            format!("authorization: bearer {}", jwt(&t.pki, now())),
        ],
        &dev,
        Some(JSON),
    )
    .await;
    assert_eq!(
        (r.status, r.reason().as_deref()),
        (400, Some("MissingTopic"))
    );
}

fn h2load_summary(out: &str) -> (u64, u64) {
    // "requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored, 0 timeout"
    // "status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx"
    let line = out
        .lines()
        .find(|l| l.starts_with("requests:"))
        .unwrap_or_else(|| panic!("h2load output: {out}"));
    let total: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let codes = out
        .lines()
        .find(|l| l.starts_with("status codes:"))
        .unwrap();
    let ok: u64 = codes.split_whitespace().nth(2).unwrap().parse().unwrap();
    (total, ok)
}

async fn h2load(t: &TestSim, extra: Vec<String>) -> String {
    let h2load = tool("h2load", "nghttp2-client");
    let dir = t.dir.path().to_owned();
    let payload = dir.join("payload.json");
    std::fs::write(&payload, JSON).unwrap();
    let url = format!("https://{}/3/device/{}", t.sim.addrs.h2, token(5));
    tokio::task::spawn_blocking(move || {
        let out = Command::new(h2load)
            .args(["-n", "2000", "-c", "4", "-m", "20", "-t", "1", "-d"])
            .arg(&payload)
            .args(["-H", &format!("apns-topic: {TOPIC}")])
            .args(&extra)
            .arg(url)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "h2load failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2load_gets_only_2xx() {
    let t = start_with(|c, _| {
        c.auth = AuthPolicy::AllowUnauthenticated;
        c.record_in_memory = false;
    })
    .await;
    let out = h2load(&t, vec![]).await;
    assert_eq!(h2load_summary(&out), (2000, 2000), "{out}");
    // With a provider token (one stream until it is accepted, then 1000).
    let out = h2load(
        &t,
        vec![
            "-H".into(),
            format!("authorization: bearer {}", jwt(&t.pki, now())),
        ],
    )
    .await;
    assert_eq!(h2load_summary(&out), (2000, 2000), "{out}");
    assert_eq!(t.sim.stats().accepted.h2, 4000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_s_client_gets_an_error_packet_for_a_bad_token() {
    let openssl = tool("openssl", "openssl");
    let bad = token(0x0b);
    let t = start_with(|c, _| c.scenario.bad = vec![bad.clone()]).await;
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    // Hand-built command-1 notifications: a good one (id 1), then the bad token (id 0x01020304).
    let mut bytes = Vec::new();
    for (id, tok) in [(1u32, vec![0x11u8; 32]), (0x0102_0304, vec![0x0b; 32])] {
        bytes.push(1);
        bytes.extend_from_slice(&id.to_be_bytes());
        bytes.extend_from_slice(&0u32.to_be_bytes());
        bytes.extend_from_slice(&32u16.to_be_bytes());
        bytes.extend_from_slice(&tok);
        bytes.extend_from_slice(&(PAYLOAD.len() as u16).to_be_bytes());
        bytes.extend_from_slice(PAYLOAD);
    }
    let addr = t.sim.addrs.binary.to_string();
    let ca = t.pki.manifest.ca_cert.clone();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(openssl)
            .args(["s_client", "-quiet", "-ign_eof", "-connect", &addr, "-cert"])
            .arg(&cert)
            .arg("-key")
            .arg(&key)
            .arg("-CAfile")
            .arg(&ca)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        let _ = child.wait();
        out
    })
    .await
    .unwrap();
    assert_eq!(
        out,
        vec![8, 8, 1, 2, 3, 4],
        "error packet: command 8, status 8, the bad notification's id"
    );
    assert_eq!(t.sim.stats().accepted.binary, 1);
}
