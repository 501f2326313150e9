//! `herald serve` with its spool on a small tmpfs that fills up and empties again. While the disk is full new
//! notifications are refused (REST 503, SMTP 452 4.3.1), `/readyz`, `/metrics` and the console say so, what herald
//! holds is still delivered, its final outcomes are kept and tried again, and the removals wait for them in memory;
//! once there is room intake resumes by itself, the outcomes are stored for status lookups, and after a restart
//! nothing is delivered twice. herald also starts
//! on a full disk.
//!
//! The test mounts its own tmpfs (root or CAP_SYS_ADMIN); where that is refused it prints why and passes, except
//! when `CI` is set, where it fails.

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use support::daemon::Daemon;
use support::{free_port, token_auth_options};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const TOPIC: &str = "com.example.full";
const WAIT: Duration = Duration::from_secs(60);

use herald_testkit::tmpfs::mount as mount_tmpfs;

/// Writes a file in `dir` until its file system is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 64 << 10];
    loop {
        if let Err(e) = file.write_all(&chunk).and_then(|()| file.sync_all()) {
            assert_eq!(e.raw_os_error(), Some(28), "filling: {e}");
            return path;
        }
    }
}

fn write_config(dir: &Path, spool: &Path, pki: &Pki, h2_port: u16) -> PathBuf {
    let path = dir.join("herald.conf");
    let text = format!(
        r#"
spool_dir = "{spool}"
ec_logger "main" {{ mainlog = "{log}" }}
http_listener {{ listen "127.0.0.1:0" {{ }} }}
esmtp_listener {{ listen "127.0.0.1:0" {{ mcmt_reception = allow }} }}
control_listener {{ listen "{sock}" {{ file_mode = 0600 }} }}
domain "full.example" {{
{credentials}  retry_interval = 1
  max_retry_interval = 1
  mx_failures_to_delay = 0
  outcome_webhook_url = "http://127.0.0.1:9/hook"
  outcome_webhook_secret = "full-disk-secret"
}}
"#,
        spool = spool.display(),
        log = dir.join("mainlog.ec").display(),
        sock = dir.join("control.sock").display(),
        credentials = token_auth_options(pki, h2_port, TOPIC),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn token(i: usize) -> String {
    format!("{:064x}", 0xf0_11d1_5c00_0000u64 + i as u64)
}

/// Posts `tokens`; returns the status and the body.
async fn post(http: &str, tokens: &[String]) -> (u16, String) {
    let body = serde_json::json!({
        "domain": "full.example",
        "tokens": tokens,
        "payload": {"aps": {"alert": "full disk"}},
    });
    let r = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/push"))
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// Posts `tokens`, which must be accepted; returns their ids.
async fn post_accepted(http: &str, tokens: &[String]) -> Vec<String> {
    let (status, text) = post(http, tokens).await;
    assert_eq!(status, 202, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect()
}

/// The status lookup of notification `id`: HTTP status and body.
async fn notification_status(http: &str, id: &str) -> (u16, serde_json::Value) {
    let r = reqwest::get(format!("http://{http}/api/v1/notifications/{id}"))
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn readyz(http: &str) -> (u16, String) {
    let r = reqwest::get(format!("http://{http}/readyz")).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

async fn metrics(http: &str) -> String {
    reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' '))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
}

/// Polls `/metrics` until every `(name, value)` holds.
async fn wait_metrics(http: &str, want: &[(&str, u64)]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = metrics(http).await;
        if want.iter().all(|(n, v)| metric(&text, n) == Some(*v)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never reached {want:?}:\n{}",
            text.lines()
                .filter(|l| [
                    "herald_spool",
                    "herald_queue",
                    "herald_outcomes",
                    "herald_webhook"
                ]
                .iter()
                .any(|p| l.starts_with(p)))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn console_summary(socket: &Path) -> String {
    let socket = socket.to_path_buf();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_herald"))
            .arg("console")
            .arg(&socket)
            .arg("summary")
            .env_remove("HERALD_CONSOLE_PASSWORD")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The value of `Label:` in `summary` output.
fn field(text: &str, label: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{label}:")))
        .map(|v| v.trim().to_string())
}

/// Sends one MCMT message for `token` over SMTP; returns the reply to the end of DATA.
async fn smtp_send(esmtp: &str, token: &str) -> String {
    let stream = tokio::net::TcpStream::connect(esmtp).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(read).lines();
    // Reads one (possibly multi-line) reply.
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
        "EHLO test.example".to_owned(),
        "MAIL FROM:<sender@example.com>".to_owned(),
        format!("RCPT TO:<{token}@full.example>"),
        "DATA".to_owned(),
    ] {
        write
            .write_all(format!("{cmd}\r\n").as_bytes())
            .await
            .unwrap();
        let r = reply(&mut lines).await;
        assert!(r.starts_with('2') || r.starts_with('3'), "{cmd}: {r}");
    }
    let message = format!(
        "From: sender@example.com\r\nTo: {token}@full.example\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/vnd.msys.mcmt; boundary=\"B\"\r\n\r\n--B\r\n\
         Content-Type: message/vnd.msys.apn\r\n\r\nX-Device-Token: {token}\r\n\r\n\
         {{\"aps\":{{\"alert\":\"smtp\"}}}}\r\n--B--\r\n.\r\n"
    );
    write.write_all(message.as_bytes()).await.unwrap();
    let r = reply(&mut lines).await;
    let _ = write.write_all(b"QUIT\r\n").await;
    r
}

async fn start_sim(pki: &Pki, port: u16) -> SimHandle {
    let mut config = SimConfig::from_pki(&pki.manifest).unwrap();
    config.h2_port = port;
    Simulator::start(config).await.unwrap()
}

/// Tokens the simulator recorded, with how many times each.
fn delivered(sim: &SimHandle) -> std::collections::HashMap<String, usize> {
    let mut m = std::collections::HashMap::new();
    for r in sim.record() {
        *m.entry(r.token).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_intake_delivers_what_is_held_recovers_by_itself_and_sends_nothing_twice()
 {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let Some(_mount) = mount_tmpfs(&spool, "8m") else {
        return;
    };
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &spool, &pki, port);
    let socket = dir.path().join("control.sock");

    // Held: accepted while APNs is unreachable, then herald stops with them spooled.
    let held: Vec<String> = (0..40).map(token).collect();
    let daemon = Daemon::start(&config);
    assert_eq!(readyz(&daemon.http).await.0, 200);
    let held_ids = post_accepted(&daemon.http, &held).await;
    daemon.terminate();

    // herald starts on the full disk: up, not ready for intake, and it says why.
    let filler = fill(&spool);
    let daemon = Daemon::start(&config);
    let (status, body) = readyz(&daemon.http).await;
    assert_eq!(status, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let error = v["error"].as_str().unwrap();
    assert!(error.starts_with("not ready for intake"), "{error}");
    assert!(error.contains("disk full"), "{error}");
    wait_metrics(
        &daemon.http,
        &[("herald_spool_writable", 0), ("herald_spool_disk_full", 1)],
    )
    .await;
    let summary = console_summary(&socket).await;
    assert!(
        field(&summary, "Spool State")
            .is_some_and(|v| v.starts_with("refusing new notifications: disk full")),
        "{summary}"
    );
    // New notifications are refused, temporarily, over REST and SMTP.
    let (status, text) = post(&daemon.http, &[token(1000)]).await;
    assert_eq!(status, 503, "{text}");
    let reply = smtp_send(&daemon.esmtp, &token(1001)).await;
    assert!(reply.starts_with("452 4.3.1"), "{reply}");

    // APNs comes back: what herald holds is delivered. The final outcomes cannot be stored for status lookups, nor
    // their webhook events: they are kept and tried again, and the notifications' removals wait for them in memory
    // (nothing dropped; a crash now would deliver them again rather than lose their outcomes).
    let sim = start_sim(&pki, port).await;
    sim.wait_for_records(held.len() as u64, WAIT).await;
    wait_metrics(
        &daemon.http,
        &[
            (
                "herald_spool_removals_waiting_for_outcomes",
                held.len() as u64,
            ),
            ("herald_spool_writable", 0),
            ("herald_outcomes_dropped_total", 0),
            ("herald_webhook_dropped_total{domain=\"full.example\"}", 0),
        ],
    )
    .await;

    // The operator makes room: intake resumes without a restart, the kept outcomes are stored, and the removals
    // are written.
    std::fs::remove_file(&filler).unwrap();
    wait_metrics(
        &daemon.http,
        &[
            ("herald_spool_writable", 1),
            ("herald_spool_disk_full", 0),
            ("herald_spool_removals_waiting_for_outcomes", 0),
            ("herald_spool_pending_removals", 0),
            ("herald_spool_records", 0),
        ],
    )
    .await;
    for id in &held_ids {
        let (code, v) = notification_status(&daemon.http, id).await;
        assert_eq!(
            (code, v["state"].as_str()),
            (200, Some("delivered")),
            "delivered while the disk was full: {id}: {v}"
        );
    }
    assert_eq!(readyz(&daemon.http).await, (200, "ready".to_owned()));
    let summary = console_summary(&socket).await;
    assert_eq!(
        field(&summary, "Spool State").as_deref(),
        Some("writable"),
        "{summary}"
    );
    assert_eq!(
        field(&summary, "Spool Pending Removals").as_deref(),
        Some("0")
    );
    let later: Vec<String> = (100..120).map(token).collect();
    let later_ids = post_accepted(&daemon.http, &later).await;
    sim.wait_for_records((held.len() + later.len()) as u64, WAIT)
        .await;
    // The outcome store takes writes again too: the final outcomes of these leave memory stored, not dropped, and
    // their status lookups are answered from it. (A write refused on the full disk may still be stored when the
    // store is reopened: `herald_outcomes_stored` can count more than these.)
    wait_metrics(
        &daemon.http,
        &[
            ("herald_outcomes_tracked", 0),
            ("herald_outcomes_dropped_total", 0),
        ],
    )
    .await;
    assert!(
        metric(&metrics(&daemon.http).await, "herald_outcomes_stored") >= Some(later.len() as u64)
    );
    for id in &later_ids {
        let (code, v) = notification_status(&daemon.http, id).await;
        assert_eq!(
            (code, v["state"].as_str()),
            (200, Some("delivered")),
            "{id}: {v}"
        );
    }

    // The disk fills while herald runs: refused again, and again it recovers by itself.
    let filler = fill(&spool);
    let deadline = Instant::now() + WAIT;
    for attempt in 0.. {
        // A fresh token each time: one accepted while a few blocks were left is delivered once, like the others.
        let (status, text) = post(&daemon.http, &[token(2000 + attempt)]).await;
        if status == 503 {
            break;
        }
        // The filler may leave a few blocks the first commits still fit in.
        assert_eq!(status, 202, "{text}");
        assert!(Instant::now() < deadline, "never refused on a full disk");
    }
    assert_eq!(readyz(&daemon.http).await.0, 503);
    std::fs::remove_file(&filler).unwrap();
    wait_metrics(&daemon.http, &[("herald_spool_writable", 1)]).await;
    post_accepted(&daemon.http, &[token(3000)]).await;
    wait_metrics(&daemon.http, &[("herald_spool_records", 0)]).await;
    daemon.terminate();

    // After a restart nothing comes back: every notification was delivered exactly once.
    let daemon = Daemon::start(&config);
    wait_metrics(&daemon.http, &[("herald_spool_restoring", 0)]).await;
    let text = metrics(&daemon.http).await;
    assert_eq!(metric(&text, "herald_spool_restored_total"), Some(0));
    assert_eq!(metric(&text, "herald_spool_records"), Some(0));
    let counts = delivered(&sim);
    for t in held.iter().chain(&later) {
        assert_eq!(counts.get(t), Some(&1), "{t}");
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    // Refused notifications were never delivered.
    assert!(!counts.contains_key(&token(1000)) && !counts.contains_key(&token(1001)));
    daemon.terminate();
    sim.shutdown().await;
}

/// Copies the directory `from` to `to` (file by file, one level of subdirectories and more).
fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// A crash after a notification's final outcome was stored but before its removal from the spool was written (the
/// removal is not waited on, docs/architecture.md "The durability promise"): after the restart it is found in the
/// outcome store and removed, not sent again. The spool's files from before the delivery stand in for the lost
/// removals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_whose_outcome_was_stored_before_a_crash_is_not_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &spool, &pki, port);

    // Accepted while APNs is unreachable: spooled when herald stops.
    let tokens: Vec<String> = (0..30).map(token).collect();
    let daemon = Daemon::start(&config);
    let ids = post_accepted(&daemon.http, &tokens).await;
    daemon.terminate();
    let before = dir.path().join("spool-before-delivery");
    copy_dir(&spool.join(herald_spool::fjall_engine::FJALL_DIR), &before);

    // Delivered, their outcomes stored, their removals written.
    let sim = start_sim(&pki, port).await;
    let daemon = Daemon::start(&config);
    sim.wait_for_records(tokens.len() as u64, WAIT).await;
    wait_metrics(
        &daemon.http,
        &[("herald_spool_records", 0), ("herald_outcomes_tracked", 0)],
    )
    .await;
    daemon.terminate();

    // The removals are lost: the spool is as it was before the delivery, the outcome store as after it.
    let fjall = spool.join(herald_spool::fjall_engine::FJALL_DIR);
    std::fs::remove_dir_all(&fjall).unwrap();
    copy_dir(&before, &fjall);
    let daemon = Daemon::start(&config);
    wait_metrics(
        &daemon.http,
        &[("herald_spool_restoring", 0), ("herald_spool_records", 0)],
    )
    .await;
    assert_eq!(
        metric(&metrics(&daemon.http).await, "herald_spool_restored_total"),
        Some(0),
        "nothing queued again"
    );
    for id in &ids {
        let (code, v) = notification_status(&daemon.http, id).await;
        assert_eq!(
            (code, v["state"].as_str()),
            (200, Some("delivered")),
            "{id}: {v}"
        );
    }
    daemon.terminate();
    let counts = delivered(&sim);
    for t in &tokens {
        assert_eq!(counts.get(t), Some(&1), "{t}");
    }
    sim.shutdown().await;
}
