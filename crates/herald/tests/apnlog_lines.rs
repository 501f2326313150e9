//! The apn_logger's lines, whole and field by field (docs/momentum-compat.md#apn-logger), for deliveries (D), transient
//! failures (T), permanent failures (P) and heartbeats (M) on both APNs protocols, from real deliveries to the
//! simulator: one simulator answers normally (with one bad token per protocol), another answers every notification with
//! a transient error (HTTP/2 429 TooManyRequests, binary status 1). Each apn_logger instance keeps its own heartbeat: 1
//! s for one, 0 (none) for the other, while the ec_logger's is 60 s.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{CertVariant, Pki, SimConfig, SimHandle, Simulator};
use support::{log_fields, token_auth_options};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const TOPIC: &str = "com.example.apnlog";
const WAIT: Duration = Duration::from_secs(60);
const PAYLOAD: &str = r#"{"aps":{"alert":"lines"}}"#;
/// `apn_expiry` of the configuration: every request carries `apns-expiration` = reception + this.
const EXPIRY: u64 = 3600;

fn tok(i: u64) -> String {
    format!("{:064x}", 0xa000 + i)
}

struct Sims {
    ok: SimHandle,
    transient: SimHandle,
}

async fn sims(pki: &Pki) -> Sims {
    let mut ok = SimConfig::from_pki(&pki.manifest).unwrap();
    ok.scenario.bad = vec![tok(2), tok(12)];
    let mut transient = SimConfig::from_pki(&pki.manifest).unwrap();
    transient
        .scenario
        .errors
        .insert("TooManyRequests".into(), 1.0);
    transient.scenario.binary_errors.insert("1".into(), 1.0);
    Sims {
        ok: Simulator::start(ok).await.unwrap(),
        transient: Simulator::start(transient).await.unwrap(),
    }
}

fn binary_domain(name: &str, pki: &Pki, port: u16) -> String {
    let client = pki.client(TOPIC, CertVariant::Universal).unwrap();
    format!(
        r#"domain "{name}" {{
  delivery_method = apn
  routes = ( "apn://127.0.0.1?port={port}" )
  tls_verify = ca
  tls_ca = "{ca}"
  tls_certificate = "{cert}"
  tls_key = "{key}"
}}
"#,
        ca = pki.manifest.ca_cert.display(),
        cert = client.cert.display(),
        key = client.key.display(),
    )
}

fn config(dir: &Path, pki: &Pki, sims: &Sims) -> String {
    format!(
        r#"
spool_dir = "{spool}"
apn_expiry = {EXPIRY}
retry_interval = 600
max_retry_interval = 600
ec_logger "main" {{ mainlog = "{mainlog}" }}
apn_logger "all" {{ logfile = "{all}"  heartbeat = 1 }}
apn_logger "quiet" {{ logfile = "{quiet}"  heartbeat = 0 }}
http_listener {{ listen "127.0.0.1:0" {{ }} }}
esmtp_listener {{ listen "127.0.0.1:0" {{ mcmt_reception = allow }} }}
domain "h2.example" {{
{h2_ok}}}
domain "h2t.example" {{
{h2_t}}}
{bin_ok}{bin_t}"#,
        spool = dir.join("spool").display(),
        mainlog = dir.join("mainlog.ec").display(),
        all = dir.join("all.ec").display(),
        quiet = dir.join("quiet.ec").display(),
        h2_ok = token_auth_options(pki, sims.ok.addrs.h2.port(), TOPIC),
        h2_t = token_auth_options(pki, sims.transient.addrs.h2.port(), TOPIC),
        bin_ok = binary_domain("bin.example", pki, sims.ok.addrs.binary.port()),
        bin_t = binary_domain("bint.example", pki, sims.transient.addrs.binary.port()),
    )
}

/// Posts `tokens` to `domain`; returns the message id of each.
async fn push(http: &str, domain: &str, tokens: &[String]) -> Vec<String> {
    let v: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/push"))
        .json(&serde_json::json!({
            "domain": domain,
            "tokens": tokens,
            "payload": serde_json::from_str::<serde_json::Value>(PAYLOAD).unwrap(),
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap_or_else(|| panic!("{v}")).to_owned())
        .collect()
}

/// One MCMT message over SMTP: `MAIL FROM:<from>`, one `RCPT TO:<rcpt>`.
async fn smtp(addr: &str, from: &str, rcpt: &str) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    let mut expect = async |code: &str, r: &mut BufReader<_>| loop {
        line.clear();
        r.read_line(&mut line).await.unwrap();
        assert!(line.starts_with(code), "expected {code}, got {line:?}");
        if line.as_bytes().get(3) == Some(&b' ') {
            break;
        }
    };
    expect("220", &mut r).await;
    let message = format!(
        "From: <{from}>\r\nTo: <{rcpt}>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/vnd.msys.mcmt; boundary=\"b\"\r\n\r\n--b\r\n\
         Content-Type: message/vnd.msys.apn\r\n\r\n{PAYLOAD}\r\n--b--\r\n.\r\n"
    );
    for (cmd, code) in [
        ("EHLO test\r\n".to_owned(), "250"),
        (format!("MAIL FROM:<{from}>\r\n"), "250"),
        (format!("RCPT TO:<{rcpt}>\r\n"), "250"),
        ("DATA\r\n".to_owned(), "354"),
        (message, "250"),
        ("QUIT\r\n".to_owned(), "221"),
    ] {
        w.write_all(cmd.as_bytes()).await.unwrap();
        expect(code, &mut r).await;
    }
}

/// `%B` of an HTTP/2 request as herald sends this test's notifications: the header fields (name and value bytes)
/// and the payload. The topic is the domain's `apn_topic`, the push type inferred (`alert`), no priority, the
/// expiration reception + EXPIRY (10 digits), a generated `apns-id` (36 characters).
fn h2_bytes(port: u16) -> usize {
    let authority = format!("127.0.0.1:{port}");
    (":method".len() + 4)
        + (":scheme".len() + 5)
        + (":authority".len() + authority.len())
        + (":path".len() + "/3/device/".len() + 64)
        + ("apns-topic".len() + TOPIC.len())
        + ("apns-push-type".len() + "alert".len())
        + ("apns-expiration".len() + 10)
        + ("apns-id".len() + 36)
        + PAYLOAD.len()
}

/// `%B` on the binary protocol: a command-2 frame with a 32-byte token (docs/apns-protocol.md#binary-command-2: 61 +
/// payload).
const BINARY_BYTES: usize = 61 + PAYLOAD.len();

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apn_logger_lines_field_by_field_for_both_protocols() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let sims = sims(&pki).await;
    let path = dir.path().join("herald.conf");
    std::fs::write(&path, config(dir.path(), &pki, &sims)).unwrap();
    let started = herald::queue::message::unix_now();
    let server = Server::start(&path).await.unwrap();
    let addrs = server.addrs().await;
    let http = addrs.http[0].to_string();

    let h2_ok = push(&http, "h2.example", &[tok(1), tok(2)]).await;
    let bin_ok = push(&http, "bin.example", &[tok(11), tok(12)]).await;
    let h2_t = push(&http, "h2t.example", &[tok(21)]).await;
    let bin_t = push(&http, "bint.example", &[tok(31)]).await;
    smtp(
        &addrs.esmtp[0].to_string(),
        "app@sender.example",
        &format!("{}@h2.example", tok(41)),
    )
    .await;

    let all = dir.path().join("all.ec");
    let lines = || {
        server.logs().flush();
        log_fields(&all)
    };
    let deadline = Instant::now() + WAIT;
    loop {
        let l = lines();
        let count = |k: &str| l.iter().filter(|f| f[1] == k).count();
        // 3 D (h2 ×2 incl. SMTP, binary ×1), 2 P, 2 T, and at least two heartbeats.
        if count("D") >= 3 && count("P") >= 2 && count("T") >= 2 && count("M") >= 2 {
            break;
        }
        assert!(Instant::now() < deadline, "apn_logger lines so far: {l:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = herald::queue::message::unix_now();
    let l = lines();
    let by_id = |id: &str, kind: &str| -> Vec<String> {
        l.iter()
            .find(|f| f.len() > 2 && f[2] == id && f[1] == kind)
            .unwrap_or_else(|| panic!("no {kind} line for {id} in {l:#?}"))
            .clone()
    };
    // Every line starts with a Unix time from this run; the rest is compared whole, after replacing it.
    let timed = |f: &[String]| {
        let t: u64 = f[0].parse().unwrap();
        assert!((started..=now).contains(&t), "{f:?}");
        f[1..].to_vec()
    };
    let quoted = |s: &str| format!("\"{s}\"");
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    // HTTP/2 D: msgid, "sender" (none over REST), "TOKEN@DOMAIN", domain, binding group, binding, remote IP,
    // bytes as sent, apns-id (herald generates a UUID).
    let d = timed(&by_id(&h2_ok[0], "D"));
    let h2_size = h2_bytes(sims.ok.addrs.h2.port()).to_string();
    assert_eq!(d[..9].to_vec(), {
        let mut e = s(&["D", &h2_ok[0], "\"\""]);
        e.push(quoted(&format!("{}@h2.example", tok(1))));
        e.extend(s(&[
            "h2.example",
            "default",
            "default",
            "127.0.0.1",
            &h2_size,
        ]));
        e
    });
    assert_eq!(d.len(), 10, "{d:?}");
    assert_eq!(d[9].len(), 36, "apns-id {d:?}");

    // Binary D: the transaction id is the notification identifier.
    let d = timed(&by_id(&bin_ok[0], "D"));
    let mut e = s(&["D", &bin_ok[0], "\"\""]);
    e.push(quoted(&format!("{}@bin.example", tok(11))));
    e.extend(s(&[
        "bin.example",
        "default",
        "default",
        "127.0.0.1",
        &BINARY_BYTES.to_string(),
    ]));
    assert_eq!(d[..9].to_vec(), e);
    assert!(d[9].parse::<u32>().is_ok(), "identifier {d:?}");

    // P lines: no quotes around %sa/%da; APNs status and Apple's text.
    let p = timed(&by_id(&h2_ok[1], "P"));
    assert_eq!(
        p,
        s(&[
            "P",
            &h2_ok[1],
            "",
            &format!("{}@h2.example", tok(2)),
            "h2.example",
            "default",
            "default",
            "127.0.0.1",
            "400",
            "BadDeviceToken",
        ])
    );
    let p = timed(&by_id(&bin_ok[1], "P"));
    assert_eq!(
        p,
        s(&[
            "P",
            &bin_ok[1],
            "",
            &format!("{}@bin.example", tok(12)),
            "bin.example",
            "default",
            "default",
            "127.0.0.1",
            "8",
            "Invalid token",
        ])
    );

    // T lines: the D fields, then status and error text.
    let t = timed(&by_id(&h2_t[0], "T"));
    let h2t_size = h2_bytes(sims.transient.addrs.h2.port()).to_string();
    assert_eq!(t[..9].to_vec(), {
        let mut e = s(&["T", &h2_t[0], "\"\""]);
        e.push(quoted(&format!("{}@h2t.example", tok(21))));
        e.extend(s(&[
            "h2t.example",
            "default",
            "default",
            "127.0.0.1",
            &h2t_size,
        ]));
        e
    });
    assert_eq!(t[9].len(), 36, "apns-id {t:?}");
    assert_eq!(t[10..].to_vec(), s(&["429", "TooManyRequests"]));
    let t = timed(&by_id(&bin_t[0], "T"));
    let mut e = s(&["T", &bin_t[0], "\"\""]);
    e.push(quoted(&format!("{}@bint.example", tok(31))));
    e.extend(s(&[
        "bint.example",
        "default",
        "default",
        "127.0.0.1",
        &BINARY_BYTES.to_string(),
    ]));
    assert_eq!(t[..9].to_vec(), e);
    // %ti: the notification identifier the binary connection sent it with, as on its D lines.
    assert!(t[9].parse::<u32>().is_ok(), "identifier {t:?}");
    assert_eq!(t[10..].to_vec(), s(&["1", "Processing error"]));

    // SMTP: %sa is MAIL FROM, %da the RCPT TO address; in the file `@` inside a field is written `\@`.
    let smtp_d = l
        .iter()
        .find(|f| f[1] == "D" && f[4] == quoted(&format!("{}@h2.example", tok(41))))
        .unwrap_or_else(|| panic!("no D line for the SMTP notification in {l:#?}"));
    assert_eq!(smtp_d[3], "\"app@sender.example\"");
    let raw = std::fs::read_to_string(&all).unwrap();
    assert!(
        raw.contains(&format!(
            "@D@{}@\"app\\@sender.example\"@\"{}\\@h2.example\"@h2.example@",
            smtp_d[2],
            tok(41)
        )),
        "{raw}"
    );

    // M lines: `%t@M`, and only from the instance with a heartbeat.
    let m: Vec<_> = l.iter().filter(|f| f[1] == "M").collect();
    assert!(m.iter().all(|f| f.len() == 2), "{m:?}");
    server.logs().flush();
    let quiet = log_fields(&dir.path().join("quiet.ec"));
    assert!(
        quiet.iter().all(|f| f[1] != "M"),
        "heartbeat = 0 writes none"
    );
    assert!(
        quiet.iter().any(|f| f[1] == "D"),
        "the quiet logger logs outcomes"
    );
    let main = log_fields(&dir.path().join("mainlog.ec"));
    assert!(
        main.iter()
            .all(|f| f.get(4).map(String::as_str) != Some("M1")),
        "the ec_logger's heartbeat is 60 s: {main:?}"
    );
    server.shutdown(Duration::from_secs(2)).await;
}
