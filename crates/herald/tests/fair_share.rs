//! One app whose deliveries fail does not stop the others, over real sockets: while herald holds at least half of
//! `max_resident_notifications`, a domain that would pass its share of it (what is left once every other domain
//! herald keeps a queue of has what it holds, or a reserve of the maximum / 2k if more) is refused with a temporary
//! answer naming it (REST 503, ESMTP 452 4.3.1), while another domain is still accepted and delivered
//! (docs/operations.md#fair-share). With one domain known, nothing changes: it fills the memory up to the
//! queue-full refusal, as before.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const TOPIC: &str = "com.example.share";
const KEY: &str = "share-key";
/// Its route points at a port nothing listens on: what it is sent stays in memory, retrying.
const DOWN: &str = "down.example";
/// Another app whose route is down.
const ALSO_DOWN: &str = "also-down.example";
/// Delivered to the simulator.
const UP: &str = "up.example";
/// `max_resident_notifications` of these tests.
const MAX: usize = 40;
/// How long a test waits for something that should happen (never a speed assertion).
const WAIT: Duration = Duration::from_secs(20);

struct Herald {
    _dir: tempfile::TempDir,
    sim: SimHandle,
    server: Arc<Server>,
    http: SocketAddr,
    smtp: SocketAddr,
}

impl Herald {
    /// herald with `max_resident_notifications` = [`MAX`], [`DOWN`] and [`ALSO_DOWN`] routed to a closed port,
    /// [`UP`] to a simulator.
    async fn start() -> Herald {
        Herald::start_with(600).await
    }

    /// [`Herald::start`] with `idle_queue_timeout` = `idle` seconds.
    async fn start_with(idle: u64) -> Herald {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let pki = Pki::generate(&path.join("pki"), &[TOPIC.to_string()]).unwrap();
        let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
            .await
            .unwrap();
        let closed = support::free_port();
        let config = path.join("herald.conf");
        std::fs::write(
            &config,
            format!(
                r#"
spool_dir = "{spool}"
ec_logger "main" {{ mainlog = "{log}" }}
max_resident_notifications = {MAX}
idle_queue_timeout = {idle}
http_listener {{ listen "127.0.0.1:0" {{ api_key = "{KEY}" }} }}
esmtp_listener {{ listen "127.0.0.1:0" {{ mcmt_reception = allow }} }}
domain "{DOWN}" {{
{down}  retry_interval = 3600
}}
domain "{ALSO_DOWN}" {{
{down}  retry_interval = 3600
}}
domain "{UP}" {{
{up}}}
"#,
                spool = path.join("spool").display(),
                log = path.join("mainlog.ec").display(),
                down = support::token_auth_options(&pki, closed, TOPIC),
                up = support::token_auth_options(&pki, sim.addrs.h2.port(), TOPIC),
            ),
        )
        .unwrap();
        let server = Server::start(&config).await.unwrap();
        let addrs = server.addrs().await;
        Herald {
            _dir: dir,
            sim,
            http: addrs.http[0],
            smtp: addrs.esmtp[0],
            server,
        }
    }

    /// Pushes one notification per token of `tokens` to `domain` over the native REST API: (status, retry-after,
    /// the error text of a refusal).
    async fn push(
        &self,
        domain: &str,
        tokens: std::ops::Range<usize>,
    ) -> (u16, Option<String>, String) {
        let body = serde_json::json!({
            "domain": domain,
            "tokens": tokens.map(token).collect::<Vec<_>>(),
            "payload": {"aps": {"alert": "hi"}},
        });
        let answer = reqwest::Client::new()
            .post(format!("http://{}/api/v1/push", self.http))
            .bearer_auth(KEY)
            .timeout(WAIT)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = answer.status().as_u16();
        let retry = answer
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        let json: serde_json::Value = answer.json().await.unwrap();
        let error = json["error"].as_str().unwrap_or_default().to_owned();
        (status, retry, error)
    }

    /// Pushes one notification at a time to `domain`, as its senders keep sending, until one is refused: how many
    /// were accepted, and the refusal (as [`Herald::push`] gives it).
    async fn fill_until_refused(&self, domain: &str) -> (usize, (u16, Option<String>, String)) {
        let mut accepted = 0;
        loop {
            let answer = self.push(domain, accepted..accepted + 1).await;
            if answer.0 != 202 {
                return (accepted, answer);
            }
            accepted += 1;
            assert!(accepted <= MAX, "{domain} was never refused");
        }
    }

    async fn stop(self) {
        self.server.shutdown(Duration::from_secs(2)).await;
    }
}

fn token(i: usize) -> String {
    format!("{:064x}", 0x5ea7_0000u64 + i as u64)
}

/// Reads one SMTP reply (multi-line aware) and returns its last line.
async fn smtp_reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, r.read_line(&mut line))
            .await
            .expect("an SMTP reply in time")
            .unwrap();
        assert!(n > 0, "the server closed the connection");
        if line.as_bytes().get(3) == Some(&b' ') {
            return line.trim_end().to_owned();
        }
    }
}

/// Sends one MCMT message with one push part to `recipient`; returns the reply to the end of its data.
async fn smtp_send(to: SocketAddr, recipient: &str) -> String {
    let (r, mut w) = TcpStream::connect(to).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    assert!(smtp_reply(&mut r).await.starts_with("220"));
    let message = "From: app@backend.example\r\nTo: push@example\r\nSubject: push\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/vnd.msys.mcmt; boundary=\"B\"\r\n\r\n\
         --B\r\nContent-Type: message/vnd.msys.apn\r\n\r\n\r\n{\"aps\":{\"alert\":\"hi\"}}\r\n--B--\r\n.\r\n";
    for (command, want) in [
        ("EHLO client.example\r\n".to_owned(), "250"),
        ("MAIL FROM:<app@backend.example>\r\n".to_owned(), "250"),
        (format!("RCPT TO:<{recipient}>\r\n"), "250"),
        ("DATA\r\n".to_owned(), "354"),
    ] {
        w.write_all(command.as_bytes()).await.unwrap();
        let answer = smtp_reply(&mut r).await;
        assert!(answer.starts_with(want), "{command}: {answer}");
    }
    w.write_all(message.as_bytes()).await.unwrap();
    smtp_reply(&mut r).await
}

/// Waits (at most [`WAIT`]) until `done` holds, looking again every 10 ms.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// [`DOWN`] fills the memory while another app holds notifications too: past its share (40 less the other's
/// reserve of 40 / 4 = 10) it is refused, REST 503 and ESMTP 452 4.3.1, naming it; [`UP`] is still accepted and
/// delivered, and [`ALSO_DOWN`] still accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_whose_deliveries_fail_is_refused_past_its_share_while_the_others_are_accepted() {
    let h = Herald::start().await;
    let (status, _, error) = h.push(ALSO_DOWN, 0..1).await;
    assert_eq!(status, 202, "{error}");
    // One at a time, as its senders keep sending, until refused.
    let (accepted, (status, retry, error)) = h.fill_until_refused(DOWN).await;
    assert_eq!((status, retry.as_deref()), (503, Some("1")), "{error}");
    assert_eq!(accepted, 30, "refused once it would pass its share");
    assert!(
        error.contains(&format!(
            "domain {DOWN} holds 30 notifications in memory, and 1 more would pass its share (30 of \
             max_resident_notifications = {MAX}, shared by 2 domains"
        )) && error.contains("other domains are still accepted"),
        "{error}"
    );
    assert_eq!(h.server.engine.resident_in(DOWN), 30);
    // ESMTP: 452 4.3.1, naming the domain.
    let reply = smtp_send(h.smtp, &format!("{}@{DOWN}", token(100))).await;
    assert!(
        reply.starts_with("452 4.3.1") && reply.contains(DOWN),
        "{reply}"
    );
    // The other apps are still accepted; the one whose route works is delivered.
    for i in 0..5 {
        let (status, _, error) = h.push(UP, i..i + 1).await;
        assert_eq!(status, 202, "{UP}: {error}");
    }
    let reply = smtp_send(h.smtp, &format!("{}@{UP}", token(5))).await;
    assert!(reply.starts_with("250"), "{reply}");
    let (status, _, error) = h.push(ALSO_DOWN, 1..3).await;
    assert_eq!(status, 202, "{ALSO_DOWN}: {error}");
    wait_until(&format!("{UP}'s notifications delivered"), || {
        h.sim.record().len() == 6
    })
    .await;
    let mut delivered: Vec<String> = h.sim.record().into_iter().map(|r| r.token).collect();
    delivered.sort();
    assert_eq!(delivered, (0..6).map(token).collect::<Vec<_>>());
    // DOWN is still refused: it holds as much as before.
    let (status, _, error) = h.push(DOWN, 200..201).await;
    assert_eq!(status, 503, "{error}");
    assert!(error.contains("would pass its share"), "{error}");
    h.stop().await;
}

/// An app whose notifications are delivered as they come holds none most of the time, yet its queue keeps
/// a reserve for it (40 / 4): [`DOWN`] is refused past its share of 30 all the same, and [`UP`] is still accepted
/// and delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_delivered_as_it_comes_still_takes_part_in_the_share() {
    let h = Herald::start().await;
    let (status, _, error) = h.push(UP, 0..1).await;
    assert_eq!(status, 202, "{error}");
    wait_until(&format!("{UP}'s first notification delivered"), || {
        h.sim.record().len() == 1
    })
    .await;
    wait_until(&format!("{UP} holding nothing"), || {
        h.server.engine.resident_in(UP) == 0
    })
    .await;
    let (accepted, (status, _, error)) = h.fill_until_refused(DOWN).await;
    assert_eq!(status, 503, "{error}");
    assert_eq!(accepted, 30, "refused once it would pass its share");
    assert!(error.contains("shared by 2 domains"), "{error}");
    let (status, _, error) = h.push(UP, 1..2).await;
    assert_eq!(status, 202, "{UP}: {error}");
    wait_until(&format!("{UP}'s second notification delivered"), || {
        h.sim.record().len() == 2
    })
    .await;
    h.stop().await;
}

/// An app that sends now and then keeps its reserve while its queue, idle, has retired: the engine still knows it,
/// so [`DOWN`] is refused past its share of 30 as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_whose_idle_queue_retired_keeps_its_reserve() {
    let h = Herald::start_with(1).await;
    let (status, _, error) = h.push(UP, 0..1).await;
    assert_eq!(status, 202, "{error}");
    let stats = h.server.engine.stats(UP).expect("UP's counters");
    wait_until(&format!("{UP}'s idle queue retired"), || {
        stats.retired.load(std::sync::atomic::Ordering::Relaxed) > 0
    })
    .await;
    assert_eq!(h.sim.record().len(), 1);
    let (accepted, (status, _, error)) = h.fill_until_refused(DOWN).await;
    assert_eq!(status, 503, "{error}");
    assert_eq!(accepted, 30, "refused once it would pass its share");
    let (status, _, error) = h.push(UP, 1..2).await;
    assert_eq!(status, 202, "{UP}: {error}");
    h.stop().await;
}

/// With one app holding notifications, its share is all of the memory: it fills it, and is then refused with the
/// queue-full answer, as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_app_alone_fills_the_memory_up_to_the_queue_full_refusal() {
    let h = Herald::start().await;
    for batch in 0..4 {
        let (status, _, error) = h.push(DOWN, batch * 10..batch * 10 + 10).await;
        assert_eq!(status, 202, "batch {batch}: {error}");
    }
    assert_eq!(h.server.engine.resident_in(DOWN), MAX);
    let (status, retry, error) = h.push(DOWN, MAX..MAX + 1).await;
    assert_eq!((status, retry.as_deref()), (503, Some("1")), "{error}");
    assert!(
        error.starts_with(&format!(
            "queue full: herald holds {MAX} notifications in memory (max_resident_notifications = {MAX})"
        )),
        "{error}"
    );
    h.stop().await;
}
