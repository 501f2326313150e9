//! Every field of a notification is checked at the door and never changed afterwards: `herald serve` over real
//! sockets (REST `/api/v1/push` and SMTP MCMT) in front of the APNs simulator. Under property-based input, a
//! notification with a bad field is refused with that field named, and one that is accepted reaches the simulator
//! with every field exactly as it was given (docs/apns-protocol.md#http2-request: collapse id at most 64 bytes of
//! printable ASCII, expiration in 32 bits, priority 10/5/1, push type, topic, canonical lowercase apns-id).

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald_apns::push::{PushType, topic_for};
use herald_sim::record::DeliveryRecord;
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use support::{free_port, token_auth_options};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const TOPIC: &str = "com.example.fields";
const DOMAIN: &str = "fields.example";
const WAIT: Duration = Duration::from_secs(20);

struct Daemon {
    child: Child,
    http: String,
    esmtp: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_daemon(dir: &Path, pki: &Pki, h2_port: u16) -> Daemon {
    let config: PathBuf = dir.join("herald.conf");
    let text = format!(
        r#"
spool_dir = "{spool}"
ec_logger "main" {{ mainlog = "{log}" }}
http_listener {{ listen "127.0.0.1:0" {{ }} }}
esmtp_listener {{ listen "127.0.0.1:0" {{ mcmt_reception = allow }} }}
domain "{DOMAIN}" {{
{credentials}  retry_interval = 1
  max_retry_interval = 1
}}
"#,
        spool = dir.join("spool").display(),
        log = dir.join("mainlog.ec").display(),
        credentials = token_auth_options(pki, h2_port, TOPIC),
    );
    std::fs::write(&config, text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "-c"])
        .arg(&config)
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("ready line {line:?}: {e}"));
    Daemon {
        child,
        http: v["http"][0].as_str().unwrap().to_owned(),
        esmtp: v["esmtp"][0].as_str().unwrap().to_owned(),
    }
}

/// The optional fields of one notification, as a sender gives them.
#[derive(Debug, Clone)]
struct Fields {
    topic: Option<String>,
    push_type: Option<String>,
    priority: Option<u8>,
    expiration: Option<u64>,
    collapse_id: Option<String>,
    apns_id: Option<String>,
}

const PUSH_TYPES: &[&str] = &[
    "alert",
    "background",
    "voip",
    "widgets",
    "nonsense",
    "Alert",
];

fn fields() -> impl Strategy<Value = Fields> {
    let push_type = prop::option::of(prop::sample::select(PUSH_TYPES));
    // Weighted so that about one case in six is valid in every field and reaches the simulator.
    let priority = prop_oneof![
        2 => Just(None),
        2 => prop::sample::select(vec![1u8, 5, 10]).prop_map(Some),
        1 => any::<u8>().prop_map(Some),
    ];
    // A past expiration is accepted and then expires unsent (logged), so valid ones here are 0 or in the future.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let expiration = prop_oneof![
        2 => Just(None),
        1 => Just(Some(0)),
        2 => (now + 3600..=u64::from(u32::MAX)).prop_map(Some),
        1 => (u64::from(u32::MAX) + 1..=u64::MAX).prop_map(Some),
        1 => Just(Some(u64::from(u32::MAX))),
        1 => Just(Some(u64::from(u32::MAX) + 1)),
    ];
    let collapse_id = prop_oneof![
        3 => Just(None),
        3 => "[a-zA-Z0-9._-]{1,64}".prop_map(Some),
        1 => "[a-z]{60,70}".prop_map(Some),
        1 => "[a-z \\t\\r\\n\\x00\\x7f\\x1b]{1,8}".prop_map(Some),
        1 => prop::collection::vec(any::<char>(), 0..40).prop_map(|c| Some(c.into_iter().collect())),
    ];
    let apns_id = prop_oneof![
        2 => Just(None),
        2 => "[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}".prop_map(Some),
        1 => "[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}".prop_map(Some),
        1 => "[0-9a-z-]{0,40}".prop_map(Some),
    ];
    // 0: the domain's default topic, 1: the push type's topic, 2: a topic with a space, 3: empty.
    let topic = prop_oneof![2 => Just(0u8), 3 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)];
    (push_type, priority, expiration, collapse_id, apns_id, topic).prop_map(
        |(push_type, priority, expiration, collapse_id, apns_id, topic)| {
            let bundle_topic = match push_type.and_then(|p: &str| p.parse::<PushType>().ok()) {
                Some(p) => topic_for(TOPIC, p),
                None => TOPIC.to_owned(),
            };
            Fields {
                topic: match topic {
                    0 => None,
                    1 => Some(bundle_topic),
                    2 => Some(format!("{TOPIC} x")),
                    _ => Some(String::new()),
                },
                push_type: push_type.map(str::to_owned),
                priority,
                expiration,
                collapse_id,
                apns_id,
            }
        },
    )
}

/// The fields a sender got wrong, by the rules of docs/apns-protocol.md#http2-request, each with a word the refusal
/// must contain.
fn bad_fields(f: &Fields) -> Vec<&'static str> {
    let mut bad = Vec::new();
    if let Some(c) = &f.collapse_id
        && (c.len() > 64
            || !c.bytes().all(|b| (0x20..=0x7e).contains(&b))
            || c.starts_with(' ')
            || c.ends_with(' '))
    {
        bad.push("collapse-id");
    }
    if f.expiration.is_some_and(|e| e > u64::from(u32::MAX)) {
        bad.push("expiration");
    }
    if f.priority.is_some_and(|p| ![1, 5, 10].contains(&p)) {
        bad.push("priority");
    }
    if f.push_type
        .as_deref()
        .is_some_and(|p| p.parse::<PushType>().is_err())
    {
        bad.push("push-type");
    }
    // Without a topic, the domain's (the bare bundle id) gains the push type's suffix
    // (docs/apns-protocol.md#push-types), so only a given topic can be bad.
    let topic_bad = f
        .topic
        .as_deref()
        .is_some_and(|t| t.is_empty() || t.contains(' '));
    if topic_bad {
        bad.push("topic");
    }
    if let Some(id) = &f.apns_id {
        let b = id.as_bytes();
        let canonical = b.len() == 36
            && b.iter().enumerate().all(|(i, &c)| match i {
                8 | 13 | 18 | 23 => c == b'-',
                _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
            });
        if !canonical {
            bad.push("apns-id");
        }
    }
    bad
}

fn payload(f: &Fields, n: usize) -> String {
    if f.push_type.as_deref() == Some("background") {
        r#"{"aps":{"content-available":1}}"#.to_owned()
    } else {
        format!(r#"{{"aps":{{"alert":"case {n}"}}}}"#)
    }
}

fn token(n: usize) -> String {
    format!("{:064x}", 0xf1e1_d500_0000u64 + n as u64)
}

/// Whether the fields can travel in MIME headers unchanged (printable ASCII, nothing to trim, nothing empty).
fn smtp_safe(f: &Fields) -> bool {
    [&f.topic, &f.collapse_id, &f.apns_id, &f.push_type]
        .into_iter()
        .flatten()
        .all(|v| {
            !v.is_empty()
                && v.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
                && !v.starts_with(' ')
                && !v.ends_with(' ')
        })
}

/// Outcome at the door: accepted, or refused with a reason.
type Verdict = Result<(), String>;

async fn send_rest(http: &str, f: &Fields, token: &str, payload: &str) -> Verdict {
    let mut item = serde_json::json!({
        "token": token,
        "payload": serde_json::from_str::<serde_json::Value>(payload).unwrap(),
    });
    let o = item.as_object_mut().unwrap();
    if let Some(v) = &f.topic {
        o.insert("topic".into(), v.clone().into());
    }
    if let Some(v) = &f.push_type {
        o.insert("push_type".into(), v.clone().into());
    }
    if let Some(v) = f.priority {
        o.insert("priority".into(), v.into());
    }
    if let Some(v) = f.expiration {
        o.insert("expiration".into(), v.into());
    }
    if let Some(v) = &f.collapse_id {
        o.insert("collapse_id".into(), v.clone().into());
    }
    if let Some(v) = &f.apns_id {
        o.insert("apns_id".into(), v.clone().into());
    }
    let body = serde_json::json!({"domain": DOMAIN, "notifications": [item]});
    let r = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/push"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let v: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    match status {
        202 => match v["results"][0]["status"].as_str() {
            Some("accepted") => Ok(()),
            _ => Err(v["results"][0]["reason"].as_str().unwrap_or("").to_owned()),
        },
        400 => Err(v["error"].as_str().unwrap_or("").to_owned()),
        other => panic!("unexpected status {other}: {v}"),
    }
}

async fn send_smtp(esmtp: &str, f: &Fields, token: &str, payload: &str) -> Verdict {
    let stream = tokio::net::TcpStream::connect(esmtp).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    async fn reply(
        lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>>,
    ) -> String {
        loop {
            let line = lines.next_line().await.unwrap().unwrap();
            if line.as_bytes().get(3) != Some(&b'-') {
                return line;
            }
        }
    }
    reply(&mut lines).await;
    for cmd in [
        "EHLO fields.test".to_owned(),
        "MAIL FROM:<sender@example.com>".to_owned(),
        format!("RCPT TO:<{token}@{DOMAIN}>"),
        "DATA".to_owned(),
    ] {
        write
            .write_all(format!("{cmd}\r\n").as_bytes())
            .await
            .unwrap();
        let r = reply(&mut lines).await;
        assert!(r.starts_with('2') || r.starts_with('3'), "{cmd}: {r}");
    }
    let mut inner = format!("X-Device-Token: {token}\r\n");
    let mut add = |name: &str, v: &Option<String>| {
        if let Some(v) = v {
            inner.push_str(&format!("{name}: {v}\r\n"));
        }
    };
    add("X-APNs-Topic", &f.topic);
    add("X-APNs-Push-Type", &f.push_type);
    add("X-APNs-Priority", &f.priority.map(|p| p.to_string()));
    add("X-APNs-Expiration", &f.expiration.map(|e| e.to_string()));
    add("X-APNs-Collapse-Id", &f.collapse_id);
    add("X-APNs-Id", &f.apns_id);
    // The boundary holds `=`, which the generated header values (but for arbitrary text) do not: next to a
    // one-letter boundary `B`, a value ending in `--B` read as a delimiter to the MIME parser.
    let message = format!(
        "From: sender@example.com\r\nTo: {token}@{DOMAIN}\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/vnd.msys.mcmt; boundary=\"=_mcmt_=\"\r\n\r\n--=_mcmt_=\r\n\
         Content-Type: message/vnd.msys.apn\r\n\r\n{inner}\r\n{payload}\r\n--=_mcmt_=--\r\n.\r\n"
    );
    write.write_all(message.as_bytes()).await.unwrap();
    let r = reply(&mut lines).await;
    let _ = write.write_all(b"QUIT\r\n").await;
    if r.starts_with("250") {
        Ok(())
    } else {
        assert!(
            r.starts_with('5'),
            "a bad field must be refused permanently: {r}"
        );
        Err(r)
    }
}

/// Waits until the simulator has an answer for `token`: its record, or a rejection.
async fn record_of(sim: &SimHandle, token: &str, rejected_before: u64) -> DeliveryRecord {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(r) = sim.record().into_iter().find(|r| r.token == token) {
            return r;
        }
        let st = sim.stats();
        assert!(
            st.rejected.total == rejected_before,
            "accepted at the door but refused by the simulator: {:?}",
            st.rejected.by_reason
        );
        assert!(
            Instant::now() < deadline,
            "{token} never reached the simulator"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn check_record(f: &Fields, r: &DeliveryRecord, payload: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(&r.payload, payload);
    let derived = match f.push_type.as_deref().map(str::parse::<PushType>) {
        Some(Ok(p)) => topic_for(TOPIC, p),
        _ => TOPIC.to_owned(),
    };
    prop_assert_eq!(r.topic.as_str(), f.topic.as_deref().unwrap_or(&derived));
    if let Some(p) = &f.push_type {
        prop_assert_eq!(r.push_type.as_deref(), Some(p.as_str()));
    }
    if let Some(p) = f.priority {
        prop_assert_eq!(r.priority, p);
    }
    if let Some(e) = f.expiration {
        prop_assert_eq!(r.expiration, Some(e));
    }
    prop_assert_eq!(r.collapse_id.as_deref(), f.collapse_id.as_deref());
    if let Some(id) = &f.apns_id {
        prop_assert_eq!(r.apns_id.as_deref(), Some(id.as_str()));
    }
    Ok(())
}

#[test]
fn every_field_is_checked_at_the_door_and_delivered_exactly_as_accepted() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = free_port();
    let sim = rt.block_on(async {
        let mut config = SimConfig::from_pki(&pki.manifest).unwrap();
        config.h2_port = port;
        Simulator::start(config).await.unwrap()
    });
    let daemon = start_daemon(dir.path(), &pki, port);
    let mut runner = TestRunner::new(Config {
        cases: 160,
        failure_persistence: None,
        max_shrink_iters: 8,
        ..Config::default()
    });
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let (accepted, refused) = (
        std::sync::atomic::AtomicUsize::new(0),
        std::sync::atomic::AtomicUsize::new(0),
    );
    runner
        .run(&fields(), |f| {
            let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let token = token(n);
            let payload = payload(&f, n);
            let bad = bad_fields(&f);
            let over_smtp = n % 2 == 1 && smtp_safe(&f);
            rt.block_on(async {
                let rejected_before = sim.stats().rejected.total;
                let verdict = if over_smtp {
                    send_smtp(&daemon.esmtp, &f, &token, &payload).await
                } else {
                    send_rest(&daemon.http, &f, &token, &payload).await
                };
                match verdict {
                    Ok(()) => {
                        prop_assert!(bad.is_empty(), "accepted with bad {bad:?}: {f:?}");
                        accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let r = record_of(&sim, &token, rejected_before).await;
                        check_record(&f, &r, &payload)
                    }
                    Err(reason) => {
                        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        // With one bad field, the refusal names it (as the header, or as the REST field).
                        if let [field] = bad.as_slice() {
                            let rest_name = field.replace('-', "_");
                            let lower = reason.to_ascii_lowercase();
                            prop_assert!(
                                lower.contains(field) || lower.contains(&rest_name),
                                "refusal of bad {field} does not name it: {reason:?} ({f:?})"
                            );
                        }
                        Ok(())
                    }
                }
            })
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let (accepted, refused) = (accepted.into_inner(), refused.into_inner());
    eprintln!("{accepted} accepted and delivered as given, {refused} refused at the door");
    assert!(
        accepted >= 10 && refused >= 10,
        "{accepted} accepted, {refused} refused"
    );
    drop(daemon);
    rt.block_on(sim.shutdown());
}
