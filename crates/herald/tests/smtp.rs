//! The ESMTP listener over real sockets: Python's `smtplib` (plain and STARTTLS) sends MCMT messages that reach
//! the APNs simulator byte for byte; a raw client checks pipelining and every refusal with its code and text
//! (docs/momentum-compat.md#mcmt-reception, docs/momentum-compat.md#mcmt-push-part, docs/momentum-compat.md#mcmt;
//! docs/architecture.md#inbound), the idle timeout, and the shutdown and reconfiguration `421`s
//! (docs/momentum-compat.md#console-config).

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use herald::inbound::accept::{BoxFuture, Durable, Intake, NotDurable};
use herald::inbound::smtp::{self, SmtpConfig, SmtpLimits};
use herald::logs::Logs;
use herald::logs::file::LogFile;
use herald::logs::mainlog::MainLog;
use herald::queue::message::IdGenerator;
use herald::queue::message::Notification;
use herald::queue::{
    Engine, EngineLimits, MemoryInvalidTokens, ResolveError, SettingsResolver, StaticResolver,
};
use herald_apns::identity::{RootSource, client_config};
use herald_conf::Config;
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use serde_json::{Value, json};
use support::{log_fields, token_auth_settings};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const TOPIC: &str = "com.example.smtp";
const DOMAIN: &str = "apps.example";
const DOMAIN2: &str = "other.example";
const WAIT: Duration = Duration::from_secs(60);

fn token(i: usize) -> String {
    format!("{:064x}", 0x5e7d_0000_0000u64 + i as u64)
}

/// A simulator, an engine delivering `DOMAIN` and `DOMAIN2` to it, and an ESMTP listener in front.
struct Harness {
    dir: tempfile::TempDir,
    pki: Pki,
    sim: SimHandle,
    logs: Logs,
    mainlog: PathBuf,
    port: u16,
    config: Arc<SmtpConfig>,
    config_tx: watch::Sender<Arc<SmtpConfig>>,
    stop: CancellationToken,
    server: JoinHandle<()>,
}

fn allow_conf(_: &Pki) -> String {
    "esmtp_listener { listen \"127.0.0.1:0\" { mcmt_reception = \"allow\" } }".into()
}

impl Harness {
    async fn start(conf: impl FnOnce(&Pki) -> String) -> Harness {
        Harness::start_with(conf, |_| {}).await
    }

    async fn start_with(
        conf: impl FnOnce(&Pki) -> String,
        limits: impl FnOnce(&mut SmtpLimits),
    ) -> Harness {
        Harness::start_full(conf, limits, Arc::new(NotDurable)).await
    }

    async fn start_full(
        conf: impl FnOnce(&Pki) -> String,
        limits: impl FnOnce(&mut SmtpLimits),
        durable: Arc<dyn Durable>,
    ) -> Harness {
        Harness::start_custom(
            conf,
            limits,
            durable,
            EngineLimits::default(),
            |pki, sim, _| {
                Arc::new(
                    StaticResolver::default()
                        .with(token_auth_settings(pki, sim, DOMAIN, TOPIC))
                        .with(token_auth_settings(pki, sim, DOMAIN2, TOPIC)),
                )
            },
        )
        .await
    }

    /// [`Harness::start_full`] with the engine's limits, and the resolver of the engine and the intake made from
    /// the PKI, the simulator and the test's directory.
    async fn start_custom(
        conf: impl FnOnce(&Pki) -> String,
        limits: impl FnOnce(&mut SmtpLimits),
        durable: Arc<dyn Durable>,
        engine_limits: EngineLimits,
        resolver: impl FnOnce(&Pki, &SimHandle, &Path) -> Arc<dyn SettingsResolver>,
    ) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
        let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
            .await
            .unwrap();
        let mainlog = dir.path().join("mainlog.ec");
        let logs = Logs {
            mainlog: vec![Arc::new(MainLog::new(
                LogFile::open(&mainlog, 0o644).unwrap(),
            ))],
            apnlog: vec![],
            recent: None,
        };
        let resolver = resolver(&pki, &sim, dir.path());
        let engine = Arc::new(Engine::new(
            resolver.clone(),
            logs.clone(),
            Arc::new(MemoryInvalidTokens::default()),
            engine_limits,
        ));
        let intake = Arc::new(Intake::new(resolver, durable, engine, IdGenerator::new(3)));
        let text = conf(&pki);
        let parsed = Config::parse_str("smtp-test.conf", &text).unwrap();
        let settings = parsed.listeners().into_iter().next().unwrap();
        let listener = smtp::bind(&settings).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut l = SmtpLimits::from_config(&parsed, &settings);
        limits(&mut l);
        let config = Arc::new(SmtpConfig::new(settings, l).unwrap());
        let (config_tx, config_rx) = watch::channel(config.clone());
        let stop = CancellationToken::new();
        let stopped = stop.clone();
        let server = tokio::spawn(smtp::serve(listener, config_rx, intake, stopped));
        Harness {
            dir,
            pki,
            sim,
            logs,
            mainlog,
            port,
            config,
            config_tx,
            stop,
            server,
        }
    }

    /// Publishes the listener configuration of `text` as `herald serve` does on reload.
    fn reload(&self, text: &str) {
        let parsed = Config::parse_str("smtp-reload.conf", text).unwrap();
        let settings = parsed.listeners().into_iter().next().unwrap();
        let config = SmtpConfig::from_config(&parsed, settings).unwrap();
        self.config_tx.send(Arc::new(config)).unwrap();
    }

    async fn raw(&self) -> Raw {
        Raw::connect(self.port).await
    }

    /// A client that has read the greeting and said EHLO.
    async fn greeted(&self) -> Raw {
        let mut c = self.raw().await;
        assert_eq!(c.reply().await.0, 220);
        assert_eq!(c.cmd("EHLO client.example").await.0, 250);
        c
    }

    /// Sends one message over a fresh connection; returns the reply to the end of DATA.
    async fn send_raw(&self, rcpts: &[String], message: &str) -> (u16, String) {
        let mut c = self.greeted().await;
        assert_eq!(c.cmd("MAIL FROM:<app@backend.example>").await.0, 250);
        for r in rcpts {
            let (code, text) = c.cmd(&format!("RCPT TO:<{r}>")).await;
            assert_eq!(code, 250, "{text}");
        }
        assert_eq!(c.cmd("DATA").await.0, 354);
        c.send(&stuff(message)).await;
        c.cmd(".").await
    }

    fn reception_lines(&self) -> Vec<Vec<String>> {
        self.logs.flush();
        log_fields(&self.mainlog)
            .into_iter()
            .filter(|f| f.len() > 4 && f[4] == "R")
            .collect()
    }
}

/// Dot-stuffs and CRLF-terminates a message for DATA.
fn stuff(message: &str) -> String {
    let mut out = String::new();
    for line in message.split("\r\n") {
        if line.starts_with('.') {
            out.push('.');
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.truncate(out.len() - 2);
    out
}

/// An MCMT message (docs/momentum-compat.md#mcmt-format) with an email part followed by `parts`, CRLF line endings.
fn mcmt(parts: &[String]) -> String {
    let mut m = String::from(
        "From: app@backend.example\r\nTo: push@apps.example\r\nSubject: push\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/vnd.msys.mcmt; boundary=\"MCMT_BOUNDARY\"\r\n\r\n\
         --MCMT_BOUNDARY\r\nContent-Type: message/rfc822\r\n\r\nSubject: the email\r\n\r\nNot delivered by herald.\r\n",
    );
    for p in parts {
        m.push_str("--MCMT_BOUNDARY\r\n");
        m.push_str(p);
        m.push_str("\r\n");
    }
    m.push_str("--MCMT_BOUNDARY--\r\n");
    m
}

/// A push part laid out as docs/momentum-compat.md#mcmt-push-part: part headers, blank line, inner headers, blank line,
/// JSON.
fn push_part(inner_headers: &[(&str, &str)], json: &str) -> String {
    let mut p = String::from("Content-Type: message/vnd.msys.apn\r\n\r\n");
    for (k, v) in inner_headers {
        p.push_str(&format!("{k}: {v}\r\n"));
    }
    p.push_str("\r\n");
    p.push_str(json);
    p
}

/// A raw SMTP client for protocol-level checks.
struct Raw {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
}

impl Raw {
    async fn connect(port: u16) -> Raw {
        let s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (r, w) = s.into_split();
        Raw {
            r: BufReader::new(r),
            w,
        }
    }

    async fn send(&mut self, text: &str) {
        self.w.write_all(text.as_bytes()).await.unwrap();
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).await.unwrap();
    }

    async fn cmd(&mut self, line: &str) -> (u16, String) {
        self.send(&format!("{line}\r\n")).await;
        self.reply().await
    }

    /// Sends EHLO and returns the extension lines of the reply (after the greeting line).
    async fn ehlo(&mut self) -> Vec<String> {
        self.send("EHLO client.example\r\n").await;
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(WAIT, self.r.read_line(&mut line))
                .await
                .expect("no EHLO reply in time")
                .unwrap();
            assert!(n > 0, "closed during EHLO");
            assert!(line.starts_with("250"), "{line:?}");
            lines.push(line[4..].trim_end().to_owned());
            if line.as_bytes()[3] == b' ' {
                break;
            }
        }
        lines.remove(0);
        lines
    }

    /// One reply: its code and the text of its last line (enhanced status included).
    async fn reply(&mut self) -> (u16, String) {
        self.try_reply()
            .await
            .expect("connection closed before a reply")
    }

    /// One reply: its code and its text, the lines of a reply that a long text goes on over joined.
    async fn try_reply(&mut self) -> Option<(u16, String)> {
        let lines = self.try_reply_lines().await?;
        let code: u16 = lines[0][..3].parse().unwrap();
        let status = lines[0][4..]
            .split_once(' ')
            .map(|(s, _)| s)
            .filter(|s| s.len() >= 5 && s.as_bytes()[1] == b'.')
            .unwrap_or("");
        // Without an enhanced status (EHLO) each line is its own; with one, a long text goes on over the lines.
        let last = lines[lines.len() - 1][4..].trim_end().to_owned();
        if status.is_empty() {
            return Some((code, last));
        }
        let mut text = String::new();
        for (i, line) in lines.iter().enumerate() {
            let body = line[4..].trim_end_matches("\r\n");
            if i == 0 {
                text.push_str(body);
            } else {
                text.push_str(body.strip_prefix(&format!("{status} ")).unwrap_or(body));
            }
        }
        Some((code, text.trim_end().to_owned()))
    }

    /// The lines of one reply as they came, CRLF included (RFC 5321 §4.5.3.1.5 bounds each at 512 octets).
    async fn try_reply_lines(&mut self) -> Option<Vec<String>> {
        tokio::time::timeout(WAIT, async {
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                if self.r.read_line(&mut line).await.ok()? == 0 {
                    return None;
                }
                assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
                let last = line.as_bytes()[3] == b' ';
                lines.push(line);
                if last {
                    return Some(lines);
                }
            }
        })
        .await
        .expect("no reply in time")
    }

    /// Sends a command and returns the lines of its reply.
    async fn cmd_lines(&mut self, line: &str) -> Vec<String> {
        self.send(&format!("{line}\r\n")).await;
        self.try_reply_lines()
            .await
            .expect("connection closed before a reply")
    }

    /// Asserts that the server closed the connection.
    async fn assert_closed(&mut self) {
        let mut rest = Vec::new();
        tokio::time::timeout(WAIT, self.r.read_to_end(&mut rest))
            .await
            .expect("connection still open")
            .ok();
        assert!(rest.is_empty(), "unexpected bytes: {rest:?}");
    }
}

/// Runs Python's smtplib against the listener: EHLO, optional STARTTLS, MAIL, RCPTs, DATA, QUIT.
async fn smtplib(port: u16, ca: Option<&Path>, rcpts: &[String], message: &str) -> Value {
    const SCRIPT: &str = r#"
import json, smtplib, ssl, sys
req = json.load(sys.stdin)
out = {}
s = smtplib.SMTP("127.0.0.1", req["port"], timeout=30)
s.ehlo("client.example")
out["starttls_offered"] = s.has_extn("starttls")
out["size"] = s.esmtp_features.get("size")
if req.get("ca"):
    ctx = ssl.create_default_context(cafile=req["ca"])
    code, msg = s.starttls(context=ctx)
    out["starttls"] = [code, msg.decode()]
    out["tls_version"] = s.sock.version()
    s.ehlo("client.example")
    out["starttls_offered_after"] = s.has_extn("starttls")
code, msg = s.mail(req["from"])
out["mail"] = [code, msg.decode()]
out["rcpt"] = []
for r in req["rcpts"]:
    code, msg = s.rcpt(r)
    out["rcpt"].append([code, msg.decode()])
code, msg = s.data(req["msg"].encode())
out["data"] = [code, msg.decode()]
s.quit()
print(json.dumps(out))
"#;
    let req = json!({
        "port": port,
        "ca": ca.map(|p| p.display().to_string()),
        "from": "app@backend.example",
        "rcpts": rcpts,
        "msg": message,
    });
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(SCRIPT)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the smtplib tests");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(req.to_string().as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("smtplib did not finish")
        .unwrap();
    assert!(
        out.status.success(),
        "smtplib failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

// docs/momentum-compat.md#mcmt-push-part, docs/momentum-compat.md#mcmt-format: one notification per push part per
// recipient; the token from X-Device-Token, else the recipient's local part; base64 and 7bit parts; the payload arrives
// byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smtplib_mcmt_reaches_the_simulator_byte_for_byte() {
    let h = Harness::start(allow_conf).await;
    let header_token = token(1);
    let json_a = "{\"aps\":{\"alert\":\"You have mail\",\"badge\":9},\"app-key\":\"bar\"}";
    let json_b = "{\"aps\":{\"content-available\":1},\"n\":\"caf\u{e9}\"}";
    let inner_b = format!(
        "apns-push-type: background\r\napns-priority: 5\r\napns-collapse-id: sync\r\n\r\n{json_b}"
    );
    let b64 = base64::engine::general_purpose::STANDARD.encode(inner_b.as_bytes());
    let part_b = format!(
        "Content-Type: message/vnd.msys.apn\r\nContent-Transfer-Encoding: base64\r\n\r\n{}\r\n{}",
        &b64[..40],
        &b64[40..]
    );
    let message = mcmt(&[
        push_part(
            &[("X-Device-Token", &header_token), ("X-APNs-Topic", TOPIC)],
            json_a,
        ),
        part_b,
    ]);
    let rcpts = vec![
        format!("{}@{DOMAIN}", token(2)),
        format!("{}@{DOMAIN2}", token(3)),
    ];
    let out = smtplib(h.port, None, &rcpts, &message).await;
    assert_eq!(out["starttls_offered"], false);
    assert_eq!(out["size"], smtp::DEFAULT_MAX_MESSAGE_SIZE.to_string());
    assert_eq!(out["mail"][0], 250);
    assert_eq!(out["rcpt"][0][0], 250);
    assert_eq!(out["rcpt"][1][0], 250);
    assert_eq!(out["data"][0], 250, "{}", out["data"]);
    let text = out["data"][1].as_str().unwrap();
    assert!(
        text.starts_with("2.0.0 accepted 4 notifications as batch "),
        "{text}"
    );

    h.sim.wait_for_records(4, WAIT).await;
    let mut by_token: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for r in h.sim.record() {
        by_token.entry(r.token.clone()).or_default().push(r);
    }
    // Part 1 once per recipient, to its X-Device-Token.
    let a = &by_token[&header_token];
    assert_eq!(a.len(), 2);
    for r in a {
        assert_eq!(r.payload.as_bytes(), json_a.as_bytes());
        assert_eq!(r.topic, TOPIC);
        assert_eq!(r.push_type.as_deref(), Some("alert"));
    }
    // Part 2 (base64) to each recipient's local part, with its attributes.
    for t in [token(2), token(3)] {
        let b = &by_token[&t];
        assert_eq!(b.len(), 1, "token {t}");
        assert_eq!(b[0].payload.as_bytes(), json_b.as_bytes());
        assert_eq!(b[0].push_type.as_deref(), Some("background"));
        assert_eq!(b[0].priority, 5);
        assert_eq!(b[0].collapse_id.as_deref(), Some("sync"));
        assert_eq!(b[0].topic, TOPIC);
    }
    assert_eq!(by_token.len(), 3);

    // docs/momentum-compat.md#mainlog: one reception line per notification, protocol esmtp, the client's IP, one batch
    // and one connection id for the message.
    let r = h.reception_lines();
    assert_eq!(r.len(), 4, "{r:?}");
    for f in &r {
        assert_eq!(f[9], "127.0.0.1");
        assert_eq!(f[11], "esmtp");
        assert_eq!(f[7], "app");
        assert_eq!(f[8], "backend.example");
        assert_eq!(f[2], r[0][2], "batch id");
        assert_eq!(f[3], r[0][3], "connection id");
        assert!(text.ends_with(&f[2]), "reply names batch {}", f[2]);
    }
    let domains: Vec<&str> = r.iter().map(|f| f[6].as_str()).collect();
    assert_eq!(domains.iter().filter(|d| **d == DOMAIN).count(), 2);
    assert_eq!(domains.iter().filter(|d| **d == DOMAIN2).count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starttls_then_a_message_over_tls() {
    let h = Harness::start(tls_conf).await;
    let json = "{\"aps\":{\"alert\":\"over TLS\"}}";
    let message = mcmt(&[push_part(&[], json)]);
    let rcpts = vec![format!("{}@{DOMAIN}", token(7))];
    let out = smtplib(h.port, Some(&h.pki.manifest.ca_cert), &rcpts, &message).await;
    assert_eq!(out["starttls_offered"], true);
    assert_eq!(out["starttls"][0], 220);
    assert_eq!(out["starttls"][1], "2.0.0 ready to start TLS");
    assert!(
        out["tls_version"].as_str().unwrap().starts_with("TLSv1."),
        "{out}"
    );
    assert_eq!(out["starttls_offered_after"], false);
    assert_eq!(out["data"][0], 250, "{out}");
    h.sim.wait_for_records(1, WAIT).await;
    let rec = h.sim.record();
    assert_eq!(rec[0].token, token(7));
    assert_eq!(rec[0].payload.as_bytes(), json.as_bytes());
}

// RFC 2920: replies to pipelined commands come back in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_are_answered_in_order() {
    let h = Harness::start(allow_conf).await;
    let mut c = h.raw().await;
    assert_eq!(c.reply().await.0, 220);
    c.send(&format!(
        "EHLO client.example\r\nMAIL FROM:<app@backend.example>\r\nRCPT TO:<{}@{DOMAIN}>\r\nRCPT TO:<nodomain>\r\nNOOP\r\nDATA\r\n",
        token(11)
    ))
    .await;
    let (code, last) = c.reply().await;
    assert_eq!((code, last.as_str()), (250, "HELP"));
    assert_eq!(
        c.reply().await,
        (250, "2.1.0 sender <app@backend.example> ok".into())
    );
    assert_eq!(
        c.reply().await,
        (250, format!("2.1.5 recipient <{}@{DOMAIN}> ok", token(11)))
    );
    assert_eq!(
        c.reply().await,
        (
            501,
            "5.1.3 recipient <nodomain> must be <token-or-name@app-domain>: the domain picks the app".into()
        )
    );
    assert_eq!(c.reply().await, (250, "2.0.0 ok".into()));
    assert_eq!(c.reply().await.0, 354);
    let json = "{\"aps\":{\"alert\":\".dot at line start\"}}";
    // The payload starts a line with a dot: it is stuffed on the wire and unstuffed by herald.
    let message = mcmt(&[push_part(&[], &format!("\r\n{json}"))]);
    c.send(&format!("{}\r\n.\r\nQUIT\r\n", stuff(&message)))
        .await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(c.reply().await, (221, "2.0.0 herald closing".into()));
    c.assert_closed().await;
    h.sim.wait_for_records(1, WAIT).await;
    assert_eq!(h.sim.record()[0].payload.as_bytes(), json.as_bytes());
}

// A line whose non-ASCII character straddles where `FROM:` would end used to panic the session (found by fuzzing,
// fuzz/README.md): it is a syntax error, and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_ascii_mail_argument_is_a_syntax_error_and_the_session_goes_on() {
    let h = Harness::start(allow_conf).await;
    let mut c = h.raw().await;
    assert_eq!(c.reply().await.0, 220);
    c.send("EHLO client.example\r\n").await;
    assert_eq!(c.reply().await.0, 250);
    c.send("MAIL <\u{e9}p\u{e9}\r\nNOOP\r\nQUIT\r\n").await;
    let (code, text) = c.reply().await;
    assert_eq!(code, 501, "{text}");
    assert_eq!(c.reply().await, (250, "2.0.0 ok".into()));
    assert_eq!(c.reply().await, (221, "2.0.0 herald closing".into()));
    c.assert_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_refusals_name_the_problem_and_nothing_is_accepted() {
    let h = Harness::start(allow_conf).await;
    let rcpt = vec![format!("{}@{DOMAIN}", token(20))];
    let good = push_part(&[], "{\"aps\":{\"alert\":\"hi\"}}");

    // Not MCMT at all: herald delivers push only.
    let (code, text) = h
        .send_raw(&rcpt, "Subject: hello\r\n\r\nplain mail\r\n")
        .await;
    assert_eq!(code, 554);
    assert_eq!(
        text,
        "5.6.0 herald delivers push notifications only: this message is not MCMT (multipart/vnd.msys.mcmt with message/vnd.msys.apn parts)"
    );

    // Ordinary mail whose header block is over herald's 100 KiB limit is still answered as not MCMT, not as a
    // malformed MCMT message (docs/smtp.md, the refusal table).
    let received = "Received: from relay.example by mx.example\r\n".repeat(5_000);
    let (code, text) = h
        .send_raw(
            &rcpt,
            &format!("{received}Subject: hello\r\n\r\nplain mail\r\n"),
        )
        .await;
    assert_eq!(code, 554, "{text}");
    assert!(text.contains("this message is not MCMT"), "{text}");

    // MCMT without a push part.
    let (code, text) = h.send_raw(&rcpt, &mcmt(&[])).await;
    assert_eq!(code, 554);
    assert_eq!(
        text,
        "5.6.0 herald delivers push notifications only: the MCMT message has no message/vnd.msys.apn part"
    );

    // Malformed MCMT: no boundary.
    let (code, text) = h
        .send_raw(
            &rcpt,
            "MIME-Version: 1.0\r\nContent-Type: multipart/vnd.msys.mcmt\r\n\r\nno parts here\r\n",
        )
        .await;
    assert_eq!(code, 550);
    assert!(text.starts_with("5.6.0 malformed MCMT message: "), "{text}");

    // A push part whose base64 does not decode, named by its position.
    let bad64 = "Content-Type: message/vnd.msys.apn\r\nContent-Transfer-Encoding: base64\r\n\r\n!!not base64!!".to_string();
    let (code, text) = h.send_raw(&rcpt, &mcmt(&[good.clone(), bad64])).await;
    assert_eq!(code, 550);
    assert!(
        text.starts_with("5.6.0 part 3: the base64 body does not decode"),
        "{text}"
    );

    // Invalid JSON payload.
    let (code, text) = h
        .send_raw(
            &rcpt,
            &mcmt(&[push_part(&[], "{\"aps\":{\"alert\":\"x\",}}")]),
        )
        .await;
    assert_eq!(code, 550);
    assert!(
        text.starts_with(&format!(
            "5.6.0 part 2, recipient <{}>: payload is not valid JSON",
            rcpt[0]
        )),
        "{text}"
    );

    // A bad device token in X-Device-Token, and one from the local part.
    let (code, text) = h
        .send_raw(
            &rcpt,
            &mcmt(&[push_part(
                &[("X-Device-Token", "zz")],
                "{\"aps\":{\"alert\":\"x\"}}",
            )]),
        )
        .await;
    assert_eq!(code, 550);
    assert!(
        text.starts_with(&format!(
            "5.6.0 part 2, recipient <{}>: device token",
            rcpt[0]
        )),
        "{text}"
    );
    assert!(text.contains("non-hex"), "{text}");
    let (code, text) = h
        .send_raw(
            &[format!("not-a-token@{DOMAIN}")],
            &mcmt(std::slice::from_ref(&good)),
        )
        .await;
    assert_eq!(code, 550);
    assert!(
        text.starts_with(&format!(
            "5.6.0 part 2, recipient <not-a-token@{DOMAIN}>: device token"
        )),
        "{text}"
    );

    // Tokens of another size than HTTP/2 takes (32 to 100 bytes) in X-Device-Token: 1 byte, 31 (a token cut short),
    // 101 and 150 bytes.
    for bytes in [1usize, 31, 101, 150] {
        let wrong_size = "ab".repeat(bytes);
        let (code, text) = h
            .send_raw(
                &rcpt,
                &mcmt(&[push_part(
                    &[("X-Device-Token", &wrong_size)],
                    "{\"aps\":{\"alert\":\"x\"}}",
                )]),
            )
            .await;
        assert_eq!(code, 550, "{text}");
        assert!(
            text.starts_with(&format!(
                "5.6.0 part 2, recipient <{}>: device token: device token is {bytes} bytes",
                rcpt[0]
            )) && text.contains("32 to 100 bytes (64 to 200 hex digits)"),
            "{text}"
        );
    }
    // As the local part: a hex-looking word (`cafe`, 2 bytes), a 31-byte token and a 101-byte one.
    for (local, bytes) in [
        ("cafe".to_owned(), 2usize),
        ("ab".repeat(31), 31),
        ("ab".repeat(101), 101),
    ] {
        let (code, text) = h
            .send_raw(
                &[format!("{local}@{DOMAIN}")],
                &mcmt(std::slice::from_ref(&good)),
            )
            .await;
        assert_eq!(code, 550, "{text}");
        assert!(
            text.contains(&format!("device token is {bytes} bytes"))
                && text.contains("32 to 100 bytes"),
            "{text}"
        );
    }

    // An oversized payload (docs/apns-protocol.md#payload-limits: 4096 bytes for alerts over HTTP/2).
    let big = format!("{{\"aps\":{{\"alert\":\"{}\"}}}}", "x".repeat(5000));
    let b64 = base64::engine::general_purpose::STANDARD.encode(&big);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(76)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let big_part = format!(
        "Content-Type: message/vnd.msys.apn\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
        lines.join("\r\n")
    );
    let (code, text) = h.send_raw(&rcpt, &mcmt(&[big_part])).await;
    assert_eq!(code, 550);
    assert!(
        text.starts_with(&format!(
            "5.6.0 part 2, recipient <{}>: payload is ",
            rcpt[0]
        )),
        "{text}"
    );
    assert!(text.contains("at most 4096"), "{text}");

    // None of the refused messages left a reception line.
    assert!(h.reception_lines().is_empty());
    // The connection still works after refusals: a good message goes through.
    let (code, text) = h.send_raw(&rcpt, &mcmt(&[good])).await;
    assert_eq!(code, 250, "{text}");
    h.sim.wait_for_records(1, WAIT).await;
    assert_eq!(h.sim.record().len(), 1);
    assert_eq!(h.reception_lines().len(), 1);
}

// docs/smtp.md#refusals: a message nesting MIME parts deeper than herald's limit (32 levels) is refused by the
// part, and the server goes on. 50000 nested message/rfc822 header blocks (1.6 MB, under the size limit) once
// made the MIME parser build a message per level, whose drop overflowed a worker's stack and aborted the process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_mime_is_refused_and_the_server_lives_on() {
    let h = Harness::start(allow_conf).await;
    let rcpt = vec![format!("{}@{DOMAIN}", token(40))];
    let good = push_part(&[], "{\"aps\":{\"alert\":\"hi\"}}");
    let deep = "Content-Type: message/rfc822\r\n\r\n".repeat(50_000);
    let (code, text) = h.send_raw(&rcpt, &mcmt(&[deep, good.clone()])).await;
    assert_eq!(
        (code, text.as_str()),
        (
            550,
            "5.6.0 part 2: its MIME parts nest more than 32 levels deep (herald's limit, counting the MCMT container)"
        )
    );
    let (code, text) = h.send_raw(&rcpt, &mcmt(&[good])).await;
    assert_eq!(code, 250, "{text}");
    h.sim.wait_for_records(1, WAIT).await;
    assert_eq!(h.reception_lines().len(), 1);
}

// docs/smtp.md#message-format: every delimiter line of the container is a part, numbered by its ordinal. A part
// the MIME parser used to drop (no blank line after its headers, or a first line of white space) refuses the
// message instead of leaving it `250 accepted` with fewer notifications; so does a header a push part repeats, and
// a Content-Type any part repeats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_that_would_be_lost_or_ambiguous_refuse_the_message() {
    let h = Harness::start(allow_conf).await;
    let rcpt = vec![format!("{}@{DOMAIN}", token(41))];
    let good = push_part(&[], "{\"aps\":{\"alert\":\"hi\"}}");
    let not_a_header = "line 3 of the part is not a MIME header (Name: value): a part's MIME headers must be followed by a blank line, then its body";

    // A push part without the blank line between its headers and the JSON, between two good ones.
    let no_blank = format!(
        "Content-Type: message/vnd.msys.apn\r\nX-Device-Token: {}\r\n{{\"aps\":{{\"alert\":\"x\"}}}}",
        token(41)
    );
    let (code, text) = h
        .send_raw(
            &rcpt,
            &mcmt(&[good.clone(), no_blank.clone(), good.clone()]),
        )
        .await;
    assert_eq!((code, text), (550, format!("5.6.0 part 3: {not_a_header}")));
    // As the only part: named, not "no parts".
    let only = format!(
        "MIME-Version: 1.0\r\nContent-Type: multipart/vnd.msys.mcmt; boundary=\"B\"\r\n\r\n--B\r\n{no_blank}\r\n--B--\r\n"
    );
    let (code, text) = h.send_raw(&rcpt, &only).await;
    assert_eq!((code, text), (550, format!("5.6.0 part 1: {not_a_header}")));

    // A push part whose first line is white space: it continues no header, so the part cannot be read.
    let (code, text) = h
        .send_raw(&rcpt, &mcmt(&[good.clone(), format!(" \r\n{good}")]))
        .await;
    assert_eq!(
        (code, text.as_str()),
        (
            550,
            "5.6.0 part 3: its first line starts with a space or tab, but no MIME header precedes it to continue (a line of spaces or tabs continues the header before it; only an empty line ends a part's MIME headers)"
        )
    );

    // Two Content-Types: the last one used to decide, and a push part could be ignored as text.
    let two_types = format!(
        "Content-Type: message/vnd.msys.apn\r\nContent-Type: text/plain\r\n{}",
        &good["Content-Type: message/vnd.msys.apn\r\n".len()..]
    );
    let (code, text) = h.send_raw(&rcpt, &mcmt(&[good.clone(), two_types])).await;
    assert_eq!(
        (code, text.as_str()),
        (
            550,
            "5.6.0 part 3: Content-Type is given more than once in the part's MIME headers: whether it is a push part (message/vnd.msys.apn) would be ambiguous"
        )
    );

    // A push part repeating X-Device-Token, and one giving the topic under both of its names.
    let twice = push_part(
        &[
            ("X-Device-Token", &token(41)),
            ("X-Device-Token", &token(42)),
        ],
        "{\"aps\":{}}",
    );
    let (code, text) = h.send_raw(&rcpt, &mcmt(&[twice])).await;
    assert_eq!(
        (code, text.as_str()),
        (
            550,
            "5.6.0 part 2: header X-Device-Token is given more than once in the inner header block (APNs refuses repeated headers: give each once)"
        )
    );
    let both = push_part(
        &[("X-APNs-Topic", TOPIC), ("apns-topic", TOPIC)],
        "{\"aps\":{}}",
    );
    let (code, text) = h.send_raw(&rcpt, &mcmt(&[good.clone(), both])).await;
    assert_eq!(code, 550);
    assert!(
        text.starts_with(
            "5.6.0 part 3: header X-APNs-Topic (or apns-topic) is given more than once"
        ),
        "{text}"
    );

    // Nothing of them was accepted.
    assert!(h.reception_lines().is_empty());
    assert!(h.sim.record().is_empty());
}

// docs/smtp.md#message-format: what RFC 5322 and RFC 2046 allow is read as mail readers read it, every push part
// delivered. A line of white space inside a part's headers is a folded continuation, not their end (it once made
// herald drop the push part and answer 250 with one notification fewer); field names are RFC 5322's (`X-Foo/Bar`);
// the close delimiter may repeat in the epilogue; an email part's multipart that never closes is the email
// part's business.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parts_mail_readers_accept_are_all_delivered() {
    let h = Harness::start(allow_conf).await;
    let rcpt = vec![format!("{}@{DOMAIN}", token(43))];
    let json = |n: usize| format!("{{\"aps\":{{\"alert\":\"part {n}\"}}}}");
    let folded = format!(
        "X-Mailer: backend\r\n \r\nContent-Type: message/vnd.msys.apn\r\nX-Foo/Bar: 1\r\n\r\n\
         X-Foo[1]: 1\r\nX-APNs-Topic: {TOPIC}\r\n\t\r\nX-APNs-Priority: 5\r\n\r\n{}",
        json(3)
    );
    let unclosed = "Content-Type: multipart/alternative; boundary=\"C\"\r\n\r\n--C\r\n\
                    Content-Type: text/plain\r\n\r\nhello"
        .to_owned();
    let message = mcmt(&[
        push_part(&[], &json(2)),
        folded,
        unclosed,
        push_part(&[], &json(5)),
    ]) + "epilogue\r\n--MCMT_BOUNDARY--\r\n";
    let (code, text) = h.send_raw(&rcpt, &message).await;
    assert_eq!(code, 250, "{text}");
    assert!(
        text.starts_with("2.0.0 accepted 3 notifications as batch "),
        "{text}"
    );
    assert_eq!(h.sim.wait_for_records(3, WAIT).await, 3);
    let mut got: Vec<(String, u8)> = h
        .sim
        .record()
        .iter()
        .map(|r| (r.payload.clone(), r.priority))
        .collect();
    got.sort();
    assert_eq!(got, [(json(2), 10), (json(3), 5), (json(5), 10)]);
    assert_eq!(h.reception_lines().len(), 3);
}

// docs/apns-protocol.md#size-limits: over HTTP/2 a device token may be longer than 32 bytes. An 80-byte token (the
// size of a Live Activity's push token) reaches the simulator whole, as the recipient's local part and in
// X-Device-Token alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_80_byte_token_is_delivered_from_the_local_part_and_from_x_device_token() {
    let h = Harness::start(allow_conf).await;
    let local = "5a".repeat(80);
    let header = "A5".repeat(80);
    let (code, text) = h
        .send_raw(
            &[format!("{local}@{DOMAIN}")],
            &mcmt(&[push_part(&[], "{\"aps\":{\"alert\":\"local\"}}")]),
        )
        .await;
    assert_eq!(code, 250, "{text}");
    let (code, text) = h
        .send_raw(
            &[format!("{}@{DOMAIN}", token(44))],
            &mcmt(&[push_part(
                &[("X-Device-Token", &header)],
                "{\"aps\":{\"alert\":\"header\"}}",
            )]),
        )
        .await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(h.sim.wait_for_records(2, WAIT).await, 2);
    let mut got: Vec<String> = h.sim.record().iter().map(|r| r.token.clone()).collect();
    got.sort();
    assert_eq!(got, [local, header.to_ascii_lowercase()]);
}

// docs/momentum-compat.md#mcmt-reception: mcmt_reception per listen stanza and per peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcmt_reception_reject_passthru_and_peer_override() {
    let message = mcmt(&[push_part(&[], "{\"aps\":{\"alert\":\"hi\"}}")]);
    let rcpt = vec![format!("{}@{DOMAIN}", token(30))];

    let h = Harness::start(|_| {
        "esmtp_listener { listen \"127.0.0.1:0\" { mcmt_reception = \"reject\" } }".into()
    })
    .await;
    let (code, text) = h.send_raw(&rcpt, &message).await;
    assert_eq!(
        (code, text.as_str()),
        (
            550,
            "5.7.1 MCMT messages are refused on this listener (mcmt_reception = reject)"
        )
    );

    // The default is passthru: MCMT is ordinary mail, which herald does not deliver. The listener is
    // misconfigured, not the message: the sender is told to retry (RFC 3463 4.3.5) while the operator sets allow.
    let h = Harness::start(|_| "esmtp_listener { listen \"127.0.0.1:0\" { } }".into()).await;
    let (code, text) = h.send_raw(&rcpt, &message).await;
    assert_eq!(code, 451);
    assert_eq!(
        text,
        "4.3.5 herald delivers push notifications only, and this listener passes MCMT messages through as ordinary mail (mcmt_reception = passthru); set mcmt_reception = \"allow\" to deliver push parts"
    );

    let h = Harness::start(|_| {
        "esmtp_listener { listen \"127.0.0.1:0\" { mcmt_reception = \"reject\" peer \"127.0.0.0/8\" { mcmt_reception = \"allow\" } } }".into()
    })
    .await;
    let (code, text) = h.send_raw(&rcpt, &message).await;
    assert_eq!(code, 250, "{text}");
    h.sim.wait_for_records(1, WAIT).await;
    assert_eq!(h.sim.record()[0].token, token(30));
}

fn deny_conf(_: &Pki) -> String {
    "esmtp_listener { listen \"127.0.0.1:0\" { mcmt_reception = \"allow\" always_deny = ( 127.0.0.0/8 ) } }".into()
}

/// Refused clients take none of the listener's connection slots: however many stay in their 554 phase, a client
/// the listener serves still gets in; beyond `MAX_REFUSED_SESSIONS` answered at once, a refused client is closed
/// without a word.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_clients_take_no_connection_slot() {
    let h = Harness::start_with(
        |_| {
            "esmtp_listener { listen \"127.0.0.1:0\" { mcmt_reception = \"allow\" always_deny = ( 127.0.0.2/32 ) } }"
                .into()
        },
        |l| l.max_connections = 1,
    )
    .await;
    let mut refused = Vec::new();
    for _ in 0..smtp::MAX_REFUSED_SESSIONS {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let s = socket
            .connect(format!("127.0.0.1:{}", h.port).parse().unwrap())
            .await
            .unwrap();
        let (r, w) = s.into_split();
        let mut c = Raw {
            r: BufReader::new(r),
            w,
        };
        assert_eq!(c.reply().await.0, 554);
        refused.push(c);
    }
    // One refused client more than are answered at once is closed without a word.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let s = socket
        .connect(format!("127.0.0.1:{}", h.port).parse().unwrap())
        .await
        .unwrap();
    let (r, w) = s.into_split();
    let mut beyond = Raw {
        r: BufReader::new(r),
        w,
    };
    beyond.assert_closed().await;
    // The one slot is free for a client the listener serves.
    let mut c = h.raw().await;
    assert_eq!(c.reply().await.0, 220);
    assert_eq!(c.cmd("QUIT").await.0, 221);
    drop(refused);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_peer_gets_554_at_connect() {
    let h = Harness::start(deny_conf).await;
    let refused =
        "herald: connections from 127.0.0.1 are not allowed on this listener (always_deny)";
    let mut c = h.raw().await;
    assert_eq!(c.reply().await, (554, format!("5.7.1 {refused}")));
    // RFC 5321 §3.1: after a 554 instead of the greeting, herald waits for QUIT and answers anything else 503.
    let only_quit = (503, format!("5.5.1 {refused}; only QUIT is accepted"));
    assert_eq!(c.cmd("EHLO client.example").await, only_quit);
    assert_eq!(c.cmd("MAIL FROM:<app@backend.example>").await, only_quit);
    assert_eq!(c.cmd("QUIT").await, (221, "2.0.0 herald closing".into()));
    c.assert_closed().await;

    // A refused client gets 3 answers, then 421 and the connection closes.
    let mut c = h.raw().await;
    assert_eq!(c.reply().await.0, 554);
    assert_eq!(c.cmd("NOOP").await, only_quit);
    assert_eq!(c.cmd("XYZZY").await, only_quit);
    assert_eq!(c.cmd("NOOP").await, only_quit);
    assert_eq!(
        c.reply().await,
        (
            421,
            "4.7.0 herald: too many commands from a refused client; closing".into()
        )
    );
    c.assert_closed().await;
}

// A refused client that says nothing is disconnected after the listener's timeout, or after 10 s when the
// timeout is longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_refused_client_is_closed_after_the_timeout() {
    let h = Harness::start_with(deny_conf, |l| l.idle_timeout = Duration::from_secs(1)).await;
    let mut c = h.raw().await;
    assert_eq!(c.reply().await.0, 554);
    let (code, text) = c.reply().await;
    assert_eq!(code, 421, "{text}");
    assert_eq!(
        text,
        "4.4.2 herald closing: no data from the client for 1s (idle timeout)"
    );
    c.assert_closed().await;

    let h = Harness::start_with(deny_conf, |l| l.idle_timeout = Duration::from_secs(3600)).await;
    let mut c = h.raw().await;
    assert_eq!(c.reply().await.0, 554);
    assert_eq!(
        c.reply().await,
        (
            421,
            "4.4.2 herald closing: no data from the client for 10s (idle timeout)".into()
        )
    );
    c.assert_closed().await;
}

// However it spaces its commands, a refused client stays at most `refused_stay` (30 s unless a program sets it)
// from the 554.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_is_closed_when_its_stay_is_over() {
    assert_eq!(SmtpLimits::default().refused_stay, Duration::from_secs(30));
    assert_eq!(SmtpLimits::default().refused_wait, Duration::from_secs(10));
    assert_eq!(SmtpLimits::default().refused_answers, 3);
    let h = Harness::start_with(deny_conf, |l| {
        l.idle_timeout = Duration::from_secs(3600);
        l.refused_wait = Duration::from_secs(3600);
        l.refused_stay = Duration::from_secs(2);
    })
    .await;
    let mut c = h.raw().await;
    assert_eq!(c.reply().await.0, 554);
    assert_eq!(c.cmd("NOOP").await.0, 503);
    assert_eq!(
        c.reply().await,
        (
            421,
            "4.7.0 herald: a refused client may stay 2s at most; closing".into()
        )
    );
    c.assert_closed().await;
}

/// Small limits in a listen stanza, over the listener's own (issue #5: limits per esmtp_listener and listen).
fn small_limits_conf(_: &Pki) -> String {
    "esmtp_listener {\n\
       max_message_size = 900000\n\
       max_recipients_per_message = 50\n\
       listen \"127.0.0.1:0\" {\n\
         mcmt_reception = \"allow\"\n\
         max_message_size = 2000\n\
         max_recipients_per_message = 2\n\
         max_line_length = 600\n\
       }\n\
     }"
    .into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_recipient_and_line_limits_come_from_the_listen_stanza() {
    let h = Harness::start(small_limits_conf).await;
    let mut c = h.raw().await;
    assert_eq!(c.reply().await.0, 220);
    // RFC 1870: EHLO advertises the configured size.
    let ext = c.ehlo().await;
    assert!(ext.contains(&"SIZE 2000".to_string()), "{ext:?}");
    // SIZE declared too large.
    assert_eq!(
        c.cmd("MAIL FROM:<a@backend.example> SIZE=2001").await,
        (
            552,
            "5.3.4 message size 2001 exceeds the limit of 2000 bytes".into()
        )
    );
    assert_eq!(c.cmd("MAIL FROM:<a@backend.example> SIZE=100").await.0, 250);
    for i in 0..2 {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{}@{DOMAIN}>", token(i))).await.0,
            250
        );
    }
    // RFC 5321 §4.5.3.1.8: the recipient buffer is full; the client may send the rest in another transaction.
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{}@{DOMAIN}>", token(3))).await,
        (
            452,
            "4.5.3 too many recipients: the limit is 2 per message".into()
        )
    );
    // A message larger than declared is still measured.
    assert_eq!(c.cmd("DATA").await.0, 354);
    let big = mcmt(&[
        push_part(&[], &"x".repeat(550)),
        push_part(&[], &"y".repeat(550)),
        push_part(&[], &"z".repeat(550)),
        push_part(&[], &"w".repeat(550)),
    ]);
    assert!(big.len() > 2000);
    c.send(&stuff(&big)).await;
    assert_eq!(
        c.cmd(".").await,
        (
            552,
            "5.3.4 message exceeds the size limit of 2000 bytes".into()
        )
    );
    // An over-long command line (RFC 5321 §4.5.3.1.4): 601 bytes with CRLF against a limit of 600.
    let noop = format!("NOOP {}", "a".repeat(594));
    assert_eq!(noop.len() + 2, 601);
    assert_eq!(
        c.cmd(&noop).await,
        (
            500,
            "5.5.2 command line too long: the limit is 600 bytes including CRLF".into()
        )
    );
    // At the limit it passes.
    assert_eq!(c.cmd(&noop[..598]).await, (250, "2.0.0 ok".into()));
    // An over-long text line (RFC 5321 §4.5.3.1.6).
    assert_eq!(c.cmd("MAIL FROM:<a@backend.example>").await.0, 250);
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{}@{DOMAIN}>", token(1))).await.0,
        250
    );
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(&format!("Subject: {}\r\n\r\nbody\r\n", "s".repeat(700)))
        .await;
    assert_eq!(
        c.cmd(".").await,
        (
            550,
            "5.6.0 a message line is longer than 600 bytes including CRLF; send long payloads base64-encoded".into()
        )
    );
    // Bare LF in message data, and in a command.
    assert_eq!(c.cmd("MAIL FROM:<a@backend.example>").await.0, 250);
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{}@{DOMAIN}>", token(1))).await.0,
        250
    );
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send_bytes(b"Subject: x\n\r\nbody\r\n").await;
    assert_eq!(
        c.cmd(".").await,
        (
            550,
            "5.6.0 the message contains a bare LF: lines must end with CRLF".into()
        )
    );
    c.send_bytes(b"NOOP\n").await;
    assert_eq!(
        c.reply().await,
        (
            500,
            "5.5.2 bare LF in a command: lines must end with CRLF".into()
        )
    );
    // A message within every limit still goes through on the same connection.
    assert_eq!(c.cmd("MAIL FROM:<a@backend.example>").await.0, 250);
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{}@{DOMAIN}>", token(5))).await.0,
        250
    );
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(&stuff(&mcmt(&[push_part(
        &[],
        "{\"aps\":{\"alert\":\"hi\"}}",
    )])))
    .await;
    let (code, text) = c.cmd(".").await;
    assert_eq!(code, 250, "{text}");
    h.sim.wait_for_records(1, WAIT).await;
    assert_eq!(h.reception_lines().len(), 1);
}

// RFC 5321 §4.1.1.4, §2.3.8: only <CRLF>.<CRLF> ends the data. A dot line after a bare LF, also after an over-long
// line ending in a bare LF, is content: the commands after it cannot open a second transaction (SMTP smuggling past
// the listener's access lists), and the whole data gets one reply, the refusal of the message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bare_lf_before_the_dot_does_not_end_the_data() {
    let h = Harness::start_with(allow_conf, |l| l.max_text_line = 600).await;
    let smuggled = stuff(&mcmt(&[push_part(
        &[],
        "{\"aps\":{\"alert\":\"smuggled\"}}",
    )]));
    for (head, refusal) in [
        (
            "x\n".to_string(),
            "5.6.0 the message contains a bare LF: lines must end with CRLF",
        ),
        (
            format!("{}\n", "x".repeat(700)),
            "5.6.0 a message line is longer than 600 bytes including CRLF; send long payloads base64-encoded",
        ),
    ] {
        let mut c = h.greeted().await;
        assert_eq!(c.cmd("MAIL FROM:<app@backend.example>").await.0, 250);
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{}@{DOMAIN}>", token(50))).await.0,
            250
        );
        assert_eq!(c.cmd("DATA").await.0, 354);
        c.send(&format!(
            "{head}.\r\nMAIL FROM:<app@backend.example>\r\nRCPT TO:<{}@{DOMAIN}>\r\nDATA\r\n{smuggled}.\r\nQUIT\r\n",
            token(51)
        ))
        .await;
        assert_eq!(c.reply().await, (550, refusal.to_string()));
        assert_eq!(
            c.reply().await,
            (221, "2.0.0 herald closing".into()),
            "the data got a second reply: {head:?}.<CRLF> ended it"
        );
        c.assert_closed().await;
    }
    assert!(h.reception_lines().is_empty());
    assert!(h.sim.record().is_empty());
}

// RFC 5321 §4.5.3.1.6: the 1000 octets of a text line do not count the dot a client doubles for transparency. A
// line of 998 characters starting with `.` (1001 bytes on the wire) is taken, as the same line starting with `d`
// is; a line one byte longer is refused either way, and the lone dot still ends the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dot_stuffed_line_is_measured_without_its_transparency_dot() {
    let h = Harness::start(allow_conf).await;
    let rcpt = vec![format!("{}@{DOMAIN}", token(70))];
    let with_line = |line: &str| {
        mcmt(&[
            format!("Content-Type: text/plain\r\n\r\n{line}"),
            push_part(&[], "{\"aps\":{\"alert\":\"hi\"}}"),
        ])
    };
    let long_line = "5.6.0 a message line is longer than 1000 bytes including CRLF; send long payloads base64-encoded";
    let mut accepted = 0u64;
    for (line, refused) in [
        (format!(".{}", "d".repeat(997)), false),
        (format!("..{}", "d".repeat(996)), false),
        ("d".repeat(998), false),
        (format!(".{}", "d".repeat(998)), true),
        ("d".repeat(999), true),
    ] {
        let (code, text) = h.send_raw(&rcpt, &with_line(&line)).await;
        if refused {
            assert_eq!(
                (code, text.as_str()),
                (550, long_line),
                "{} bytes with CRLF",
                line.len() + 2
            );
        } else {
            assert_eq!(code, 250, "{} bytes with CRLF: {text}", line.len() + 2);
            accepted += 1;
        }
    }
    assert_eq!(h.sim.wait_for_records(accepted, WAIT).await, accepted);
    assert_eq!(h.reception_lines().len() as u64, accepted);
}

// docs/smtp.md#refusals: the message's own Content-Type given twice, one of them MCMT, refuses it in either order:
// which one applies decides whether the message is MCMT and which boundary splits it (herald's MIME parser read
// the last, Python's email reads the first), as a part's repeated Content-Type decides whether it is a push part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_top_level_content_type_refuses_the_message() {
    let h = Harness::start(allow_conf).await;
    let rcpt = vec![format!("{}@{DOMAIN}", token(71))];
    let message = mcmt(&[push_part(&[], "{\"aps\":{\"alert\":\"hi\"}}")]);
    let mcmt_type = "Content-Type: multipart/vnd.msys.mcmt; boundary=\"MCMT_BOUNDARY\"\r\n";
    assert!(message.contains(mcmt_type));
    for repeated in [
        format!("Content-Type: text/plain\r\n{mcmt_type}"),
        format!("{mcmt_type}Content-Type: text/plain\r\n"),
    ] {
        let (code, text) = h
            .send_raw(&rcpt, &message.replacen(mcmt_type, &repeated, 1))
            .await;
        assert_eq!(
            (code, text.as_str()),
            (
                550,
                "5.6.0 malformed MCMT message: Content-Type is given more than once in the message's headers: whether the message is MCMT (multipart/vnd.msys.mcmt), and which boundary splits it, would be ambiguous (give it once)"
            ),
            "{repeated:?}"
        );
    }
    assert!(h.reception_lines().is_empty());
    assert!(h.sim.record().is_empty());
    // Given once, the message is delivered.
    let (code, text) = h.send_raw(&rcpt, &message).await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(h.sim.wait_for_records(1, WAIT).await, 1);
}

// The refusal of a message over max_notifications_per_message counts its push parts and recipients in words that
// agree with the numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notification_limit_counts_one_push_part_in_the_singular() {
    let h = Harness::start_with(allow_conf, |l| l.max_notifications = 1).await;
    let two: Vec<String> = (0..2)
        .map(|i| format!("{}@{DOMAIN}", token(72 + i)))
        .collect();
    let one_part = mcmt(&[push_part(&[], "{\"aps\":{\"alert\":\"hi\"}}")]);
    let (code, text) = h.send_raw(&two, &one_part).await;
    assert_eq!(
        (code, text.as_str()),
        (
            552,
            "5.3.4 the message would make 2 notifications (1 push part times 2 recipients); this listener's max_notifications_per_message is 1"
        )
    );
    assert!(h.reception_lines().is_empty());
}

// Replies wait while pipelined input is unread (RFC 2920), but not without bound: a client that always leaves a
// partial command unread gets its replies once more than MAX_PENDING_OUTPUT bytes wait, before its last byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_flow_while_a_partial_command_stays_unread() {
    const PER_WRITE: usize = 16;
    // HELP replies are over 64 bytes: at least four times the bound.
    let writes = 4 * smtp::io::MAX_PENDING_OUTPUT / 64 / PER_WRITE;
    // Thousands of HELPs are junk a session is not otherwise let send.
    let h = Harness::start_with(allow_conf, |l| l.max_junk = usize::MAX).await;
    let Raw { mut r, mut w } = h.raw().await;
    let mut greeting = String::new();
    r.read_line(&mut greeting).await.unwrap();
    assert!(greeting.starts_with("220 "), "{greeting:?}");
    let (seen_tx, mut seen) = watch::channel(0usize);
    let reader = tokio::spawn(async move {
        let mut helps = 0;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap() == 0 || !line.starts_with("214 ") {
                return (helps, line);
            }
            helps += 1;
            seen_tx.send_replace(helps);
        }
    });
    // Each write ends inside a HELP, so herald never finds its input fully read.
    w.write_all(b"H").await.unwrap();
    for _ in 0..writes {
        w.write_all("ELP\r\nH".repeat(PER_WRITE).as_bytes())
            .await
            .unwrap();
    }
    tokio::time::timeout(WAIT, seen.wait_for(|n| *n > 0))
        .await
        .expect("no reply before the last byte: herald buffers replies without bound")
        .unwrap();
    w.write_all(b"ELP\r\nQUIT\r\n").await.unwrap();
    let (helps, last) = tokio::time::timeout(WAIT, reader)
        .await
        .expect("replies did not finish")
        .unwrap();
    assert_eq!(helps, writes * PER_WRITE + 1);
    assert_eq!(last, "221 2.0.0 herald closing\r\n");
}

// A client that pipelines commands and never reads the replies is disconnected once a flush waits longer than the
// listener's timeout, instead of holding its session (and herald's buffer) forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_does_not_read_is_disconnected_after_the_timeout() {
    let h = Harness::start_with(allow_conf, |l| l.idle_timeout = Duration::from_millis(500)).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    // A small receive window (no autotuning): a few MB of replies fill the buffers.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut c = socket
        .connect(([127, 0, 0, 1], h.port).into())
        .await
        .unwrap();
    let chunk = "OP\r\nNO".repeat(16 * 1024);
    c.write_all(b"NO").await.unwrap();
    let err = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = c.write_all(chunk.as_bytes()).await {
                return e;
            }
        }
    })
    .await
    .expect("still connected: herald keeps a session whose client does not read");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
        ),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_fall_back_to_the_listener_then_to_the_defaults() {
    let h = Harness::start(|_| {
        "esmtp_listener { max_message_size = 4096 max_recipients_per_message = 1 listen \"127.0.0.1:0\" { mcmt_reception = \"allow\" } }".into()
    })
    .await;
    let mut c = h.raw().await;
    assert_eq!(c.reply().await.0, 220);
    assert!(c.ehlo().await.contains(&"SIZE 4096".to_string()));
    assert_eq!(c.cmd("MAIL FROM:<a@backend.example>").await.0, 250);
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{}@{DOMAIN}>", token(1))).await.0,
        250
    );
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{}@{DOMAIN}>", token(2))).await,
        (
            452,
            "4.5.3 too many recipients: the limit is 1 per message".into()
        )
    );
    // max_line_length is set nowhere: RFC 5321's 1000 applies.
    assert_eq!(
        c.cmd(&format!("NOOP {}", "a".repeat(994))).await,
        (
            500,
            "5.5.2 command line too long: the limit is 1000 bytes including CRLF".into()
        )
    );
    assert_eq!(h.config.limits.max_text_line, smtp::DEFAULT_MAX_LINE);
    assert_eq!(h.config.limits.idle_timeout, smtp::DEFAULT_IDLE_TIMEOUT);
}

// A recipient whose domain herald does not deliver is refused at RCPT, naming the domain; the transaction goes on
// with the other recipients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_domain_is_refused_at_rcpt() {
    let h = Harness::start(allow_conf).await;
    let mut c = h.greeted().await;
    assert_eq!(c.cmd("MAIL FROM:<app@backend.example>").await.0, 250);
    let unknown = format!("{}@unknown.example", token(21));
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{unknown}>")).await,
        (
            550,
            format!(
                "5.1.2 <{unknown}>: domain \"unknown.example\" cannot take push notifications: no domain stanza for \"unknown.example\" in the configuration"
            )
        )
    );
    // With no accepted recipient there is nothing to send.
    assert_eq!(
        c.cmd("DATA").await,
        (503, "5.5.1 DATA needs at least one accepted RCPT".into())
    );
    // Domains are case-insensitive.
    let known = format!("{}@Apps.Example", token(22));
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{known}>")).await,
        (250, format!("2.1.5 recipient <{known}> ok"))
    );
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(&stuff(&mcmt(&[push_part(
        &[],
        "{\"aps\":{\"alert\":\"hi\"}}",
    )])))
    .await;
    let (code, text) = c.cmd(".").await;
    assert_eq!(code, 250, "{text}");
    assert!(
        text.starts_with("2.0.0 accepted 1 notification as batch "),
        "{text}"
    );
    h.sim.wait_for_records(1, WAIT).await;
    assert_eq!(h.sim.record()[0].token, token(22));

    // The same recipient twice (its domain in another case) is one recipient: one notification, not two.
    assert_eq!(c.cmd("MAIL FROM:<app@backend.example>").await.0, 250);
    let again = format!("{}@apps.example", token(23));
    assert_eq!(c.cmd(&format!("RCPT TO:<{again}>")).await.0, 250);
    let same = format!("{}@APPS.example", token(23));
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{same}>")).await,
        (
            250,
            format!(
                "2.1.5 recipient <{same}> ok (already given: it gets one notification per push part)"
            )
        )
    );
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(&stuff(&mcmt(&[push_part(
        &[],
        "{\"aps\":{\"alert\":\"once\"}}",
    )])))
    .await;
    let (code, text) = c.cmd(".").await;
    assert_eq!(code, 250, "{text}");
    assert!(
        text.starts_with("2.0.0 accepted 1 notification as batch "),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_sequence_and_unsupported_commands() {
    let h = Harness::start(allow_conf).await;
    let mut c = h.raw().await;
    assert_eq!(c.reply().await.0, 220);
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.example>").await,
        (503, "5.5.1 say EHLO or HELO first".into())
    );
    assert_eq!(c.cmd("HELO client.example").await, (250, "herald".into()));
    assert_eq!(
        c.cmd("RCPT TO:<a@b.example>").await,
        (503, "5.5.1 RCPT before MAIL".into())
    );
    assert_eq!(c.cmd("DATA").await, (503, "5.5.1 DATA before MAIL".into()));
    assert_eq!(
        c.cmd("VRFY someone").await,
        (
            502,
            "5.5.1 VRFY is not supported: herald does not verify addresses".into()
        )
    );
    assert_eq!(
        c.cmd("STARTTLS").await,
        (
            502,
            "5.5.1 STARTTLS is not offered on this listener (it has no tls_certificate)".into()
        )
    );
    assert_eq!(
        c.cmd("XYZZY").await,
        (500, "5.5.1 unrecognized command \"XYZZY\"".into())
    );
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.example> SMTPUTF8").await,
        (555, "5.5.4 unsupported MAIL parameter \"SMTPUTF8\"".into())
    );
    assert_eq!(c.cmd("MAIL FROM:<a@b.example>").await.0, 250);
    assert_eq!(
        c.cmd("MAIL FROM:<a@b.example>").await,
        (
            503,
            "5.5.1 a transaction is already open: RSET or finish it first".into()
        )
    );
    assert_eq!(
        c.cmd("DATA").await,
        (503, "5.5.1 DATA needs at least one accepted RCPT".into())
    );
    assert_eq!(c.cmd("RSET").await, (250, "2.0.0 reset".into()));
    assert_eq!(c.cmd("HELP").await.0, 214);
    assert_eq!(c.cmd("QUIT").await, (221, "2.0.0 herald closing".into()));
    c.assert_closed().await;
}

// The listen stanza's `timeout`: a silent client is told 421 4.4.2 and disconnected. The test reads until the reply
// arrives (within WAIT). The timeout is 2 s, so that a loaded machine's pause between MAIL, RCPT and DATA does not
// end the session before DATA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_gets_421() {
    let h = Harness::start(|_| {
        "esmtp_listener { timeout = 300 listen \"127.0.0.1:0\" { mcmt_reception = \"allow\" timeout = 2 } }".into()
    })
    .await;
    let mut c = h.greeted().await;
    assert_eq!(
        c.reply().await,
        (
            421,
            "4.4.2 herald closing: no data from the client for 2s (idle timeout)".into()
        )
    );
    c.assert_closed().await;
    // Also in the middle of DATA.
    let mut c = h.greeted().await;
    assert_eq!(c.cmd("MAIL FROM:<a@backend.example>").await.0, 250);
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{}@{DOMAIN}>", token(1))).await.0,
        250
    );
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send("Subject: half a message\r\n").await;
    assert_eq!(
        c.reply().await,
        (
            421,
            "4.4.2 herald closing: no data from the client for 2s (idle timeout)".into()
        )
    );
    c.assert_closed().await;
    assert!(h.reception_lines().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_421_and_serve_returns() {
    let h = Harness::start(allow_conf).await;
    let mut idle = h.greeted().await;
    let mut in_data = h.greeted().await;
    assert_eq!(in_data.cmd("MAIL FROM:<a@backend.example>").await.0, 250);
    assert_eq!(
        in_data
            .cmd(&format!("RCPT TO:<{}@{DOMAIN}>", token(1)))
            .await
            .0,
        250
    );
    assert_eq!(in_data.cmd("DATA").await.0, 354);
    in_data.send("Subject: half a message\r\n").await;
    h.stop.cancel();
    let expected = (
        421,
        "4.3.0 herald is shutting down; try again later".to_string(),
    );
    assert_eq!(idle.reply().await, expected);
    assert_eq!(in_data.reply().await, expected);
    idle.assert_closed().await;
    in_data.assert_closed().await;
    tokio::time::timeout(WAIT, h.server)
        .await
        .expect("serve did not return after shutdown")
        .unwrap();
    // The listening socket is gone.
    assert!(TcpStream::connect(("127.0.0.1", h.port)).await.is_err());
}

// docs/momentum-compat.md#console-config: after a reload, connections opened under the old configuration get 421 4.3.2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfiguration_answers_421_to_old_sessions() {
    let h = Harness::start(allow_conf).await;
    let mut old = h.greeted().await;
    assert_eq!(old.cmd("NOOP").await.0, 250);
    let mut newer = (*h.config).clone();
    newer.limits.hostname = "herald-reloaded".into();
    h.config_tx.send(Arc::new(newer)).unwrap();
    assert_eq!(
        old.cmd("NOOP").await,
        (421, "4.3.2 Reconfiguration in progress".into())
    );
    old.assert_closed().await;
    // A new connection runs under the new configuration.
    let mut fresh = h.raw().await;
    assert_eq!(
        fresh.reply().await,
        (220, "herald-reloaded ESMTP herald ready".into())
    );
    assert_eq!(fresh.cmd("NOOP").await, (250, "2.0.0 ok".into()));
}

// Reload (docs/momentum-compat.md#console-config): new connections get the new limits; a session opened before keeps
// its own until it is told 421 4.3.2 at its next command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_gives_new_sessions_the_new_limits() {
    let h = Harness::start(small_limits_conf).await;
    let mut old = h.raw().await;
    assert_eq!(old.reply().await.0, 220);
    assert!(old.ehlo().await.contains(&"SIZE 2000".to_string()));
    assert_eq!(old.cmd("MAIL FROM:<a@backend.example>").await.0, 250);
    assert_eq!(
        old.cmd(&format!("RCPT TO:<{}@{DOMAIN}>", token(1))).await.0,
        250
    );
    assert_eq!(old.cmd("DATA").await.0, 354);

    h.reload(
        "esmtp_listener { listen \"127.0.0.1:0\" { mcmt_reception = \"allow\" max_message_size = 3000 max_recipients_per_message = 3 } }",
    );

    // About 2.5 kB in lines under 600 bytes: too big for the old limit, within the new one.
    let parts: Vec<String> = (0..4)
        .map(|i| {
            push_part(
                &[],
                &format!(
                    "{{\"aps\":{{\"alert\":\"{}\"}}}}",
                    i.to_string().repeat(450)
                ),
            )
        })
        .collect();
    let message = mcmt(&parts);
    assert!(
        message.len() > 2000 && message.len() < 3000,
        "{}",
        message.len()
    );

    old.send(&stuff(&message)).await;
    assert_eq!(
        old.cmd(".").await,
        (
            552,
            "5.3.4 message exceeds the size limit of 2000 bytes".into()
        )
    );
    assert_eq!(
        old.cmd("NOOP").await,
        (421, "4.3.2 Reconfiguration in progress".into())
    );
    old.assert_closed().await;

    let mut fresh = h.raw().await;
    assert_eq!(fresh.reply().await.0, 220);
    assert!(fresh.ehlo().await.contains(&"SIZE 3000".to_string()));
    assert_eq!(fresh.cmd("MAIL FROM:<a@backend.example>").await.0, 250);
    for i in 0..3 {
        assert_eq!(
            fresh
                .cmd(&format!("RCPT TO:<{}@{DOMAIN}>", token(10 + i)))
                .await
                .0,
            250
        );
    }
    assert_eq!(
        fresh
            .cmd(&format!("RCPT TO:<{}@{DOMAIN}>", token(13)))
            .await,
        (
            452,
            "4.5.3 too many recipients: the limit is 3 per message".into()
        )
    );
    assert_eq!(fresh.cmd("DATA").await.0, 354);
    fresh.send(&stuff(&message)).await;
    let (code, text) = fresh.cmd(".").await;
    assert_eq!(code, 250, "{text}");
    assert!(
        text.starts_with("2.0.0 accepted 12 notifications as batch "),
        "{text}"
    );
    h.sim.wait_for_records(12, WAIT).await;
}

/// Throughput benchmark with postfix's `smtp-source` (bench/smtp/run.sh runs it in release mode): one MCMT message
/// with one push part per SMTP message. Prints messages per second accepted and delivered; asserts only that
/// every message reached the simulator.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run bench/smtp/run.sh"]
async fn bench_smtp_source() {
    let messages: usize = std::env::var("SMTP_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let sessions: usize = std::env::var("SMTP_BENCH_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let h = Harness::start(allow_conf).await;
    let message = mcmt(&[push_part(
        &[("X-APNs-Topic", TOPIC)],
        "{\"aps\":{\"alert\":\"benchmark\"}}",
    )]);
    let file = h.dir.path().join("message.eml");
    // smtp-source appends CRLF to each line of the file itself.
    std::fs::write(&file, message.replace("\r\n", "\n")).unwrap();
    let started = std::time::Instant::now();
    let out = tokio::process::Command::new("smtp-source")
        .args([
            "-d",
            "-s",
            &sessions.to_string(),
            "-m",
            &messages.to_string(),
            "-f",
            "app@backend.example",
            "-t",
            &format!("{}@{DOMAIN}", token(1)),
            "-F",
        ])
        .arg(&file)
        .arg(format!("127.0.0.1:{}", h.port))
        .output()
        .await
        .expect("smtp-source (Debian package postfix) is needed");
    let accepted = started.elapsed();
    assert!(
        out.status.success(),
        "smtp-source failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.sim
        .wait_for_records(messages as u64, Duration::from_secs(600))
        .await;
    let delivered = started.elapsed();
    assert_eq!(h.sim.record().len(), messages);
    println!(
        "smtp-source: {messages} messages over {sessions} sessions; accepted in {:.2} s = {:.0} msg/s; delivered to the simulator in {:.2} s = {:.0} msg/s",
        accepted.as_secs_f64(),
        messages as f64 / accepted.as_secs_f64(),
        delivered.as_secs_f64(),
        messages as f64 / delivered.as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_over_the_session_limit_get_421() {
    let h = Harness::start_with(allow_conf, |l| l.max_connections = 1).await;
    let mut first = h.greeted().await;
    let mut second = h.raw().await;
    assert_eq!(
        second.reply().await,
        (
            421,
            "4.7.0 herald: too many connections (this listener holds 1 connections, its max_connections); try again later".into()
        )
    );
    second.assert_closed().await;
    assert_eq!(first.cmd("QUIT").await.0, 221);
    first.assert_closed().await;
    // Once the first session is gone, a new client is served (the listener notices the end asynchronously).
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let mut c = h.raw().await;
        if c.reply().await.0 == 220 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "still refused");
        tokio::task::yield_now().await;
    }
}

/// A spool that cannot store anything, failing with a fixed I/O error (classified as the spool does).
struct FailingSpool(fn() -> std::io::Error);

impl Durable for FailingSpool {
    fn persist<'a>(
        &'a self,
        _batch: &'a [Notification],
    ) -> BoxFuture<'a, Result<(), herald_spool::SpoolError>> {
        Box::pin(async move { Err(herald_spool::SpoolError::from_io("appending", (self.0)())) })
    }
}

// The sender is told to retry when the batch cannot be made durable, and nothing is logged or delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_failures_are_temporary_refusals() {
    let message = mcmt(&[push_part(&[], "{\"aps\":{\"alert\":\"hi\"}}")]);
    let rcpt = vec![format!("{}@{DOMAIN}", token(40))];
    let h = Harness::start_full(
        allow_conf,
        |_| {},
        Arc::new(FailingSpool(|| std::io::Error::from_raw_os_error(28))),
    )
    .await;
    assert_eq!(
        h.send_raw(&rcpt, &message).await,
        (
            452,
            "4.3.1 the spool could not store the notifications: spool disk full while appending: No space left on device (os error 28)".into()
        )
    );
    // The code comes from the kind of failure, not from its text.
    let h = Harness::start_full(
        allow_conf,
        |_| {},
        Arc::new(FailingSpool(|| {
            std::io::Error::other("no space for excuses")
        })),
    )
    .await;
    assert_eq!(
        h.send_raw(&rcpt, &message).await,
        (
            451,
            "4.3.0 the spool could not store the notifications: spool I/O error while appending: no space for excuses".into()
        )
    );
    assert!(h.reception_lines().is_empty());
    assert!(h.sim.record().is_empty());
}

fn tls_conf(pki: &Pki) -> String {
    format!(
        "esmtp_listener {{ listen \"127.0.0.1:0\" {{ mcmt_reception = \"allow\" tls_certificate = \"{}\" tls_key = \"{}\" }} }}",
        pki.manifest.server_cert.display(),
        pki.manifest.server_key.display()
    )
}

// RFC 3207 §4.2: commands pipelined in plaintext after STARTTLS are dropped, and the session starts over under TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_pipelined_after_starttls_is_dropped() {
    let h = Harness::start(tls_conf).await;
    let mut c = h.greeted().await;
    c.send("STARTTLS\r\nMAIL FROM:<injected@evil.example>\r\n")
        .await;
    assert_eq!(c.reply().await, (220, "2.0.0 ready to start TLS".into()));
    assert!(
        c.r.buffer().is_empty(),
        "plaintext after the 220: {:?}",
        c.r.buffer()
    );
    let tcp = c.r.into_inner().reunite(c.w).unwrap();
    let tls = client_config(
        None,
        RootSource::CaFile(h.pki.manifest.ca_cert.clone()),
        false,
    )
    .unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .unwrap();
    let (r, mut w) = tokio::io::split(stream);
    let mut r = BufReader::new(r);
    // Had the pipelined MAIL been kept, this would be "503 nested MAIL" or "250 sender ok"; the state was reset.
    w.write_all(b"MAIL FROM:<a@backend.example>\r\n")
        .await
        .unwrap();
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    assert_eq!(line, "503 5.5.1 say EHLO or HELO first\r\n");
    w.write_all(b"EHLO client.example\r\n").await.unwrap();
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        let last = line.as_bytes()[3] == b' ';
        lines.push(line);
        if last {
            break;
        }
    }
    assert_eq!(lines[0], "250-herald greets client.example\r\n");
    assert!(
        !lines.iter().any(|l| l.contains("STARTTLS")),
        "STARTTLS offered again under TLS: {lines:?}"
    );
}

// A client that asks for STARTTLS and never shakes hands is dropped after the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_tls_handshake_is_closed_after_the_idle_timeout() {
    let h = Harness::start(|pki| tls_conf(pki).replace("tls_key", "timeout = 1 tls_key")).await;
    let mut c = h.greeted().await;
    assert_eq!(c.cmd("STARTTLS").await.0, 220);
    c.assert_closed().await;
}

// docs/smtp.md "Message format", docs/apns-protocol.md §6.1 and §5.3 rule 9: Live Activity pushes over MCMT. With
// `apns-push-type: liveactivity` and no topic header, the domain's bare topic gains `.push-type.liveactivity`;
// start (to a push-to-start token), update and end reach the simulator byte for byte; a malformed one refuses the
// whole message naming the part, the recipient and the field.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_activities_over_mcmt_gain_the_topic_suffix_and_malformed_ones_are_refused() {
    let h = Harness::start(allow_conf).await;
    let push_to_start = token(40);
    let activity = token(41);
    let start = "{\"aps\":{\"event\":\"start\",\"timestamp\":1700000000,\"alert\":{\"title\":\"Kick-off\"},\
                 \"attributes-type\":\"MatchAttributes\",\"attributes\":{\"home\":\"A\",\"away\":\"B\"},\
                 \"content-state\":{\"score\":\"0-0\"},\"input-push-channel\":\"dHN0LWNoYW5uZWw=\"}}";
    let update = "{\"aps\":{\"event\":\"update\",\"timestamp\":1700000100,\"content-state\":{\"score\":\"1-0\"},\
                  \"stale-date\":1700003600}}";
    let end = "{\"aps\":{\"event\":\"end\",\"timestamp\":1700000200,\"content-state\":{\"score\":\"2-1\"},\
               \"dismissal-date\":1700007200}}";
    let message = mcmt(&[
        push_part(
            &[
                ("X-Device-Token", &push_to_start),
                ("apns-push-type", "liveactivity"),
                ("apns-priority", "10"),
            ],
            start,
        ),
        push_part(&[("X-APNs-Push-Type", "liveactivity")], update),
        push_part(
            &[("apns-push-type", "liveactivity"), ("apns-priority", "5")],
            end,
        ),
    ]);
    let rcpt = vec![format!("{activity}@{DOMAIN}")];
    let (code, text) = h.send_raw(&rcpt, &message).await;
    assert_eq!(code, 250, "{text}");
    assert!(
        text.starts_with("2.0.0 accepted 3 notifications as batch "),
        "{text}"
    );

    assert_eq!(h.sim.wait_for_records(3, WAIT).await, 3);
    let records = h.sim.record();
    assert_eq!(records.len(), 3);
    for r in &records {
        assert_eq!(r.topic, format!("{TOPIC}.push-type.liveactivity"));
        assert_eq!(r.push_type.as_deref(), Some("liveactivity"));
    }
    let by_payload = |json: &str| {
        records
            .iter()
            .find(|r| r.payload == json)
            .unwrap_or_else(|| panic!("not delivered: {json}"))
    };
    assert_eq!(by_payload(start).token, push_to_start);
    assert_eq!(by_payload(start).priority, 10);
    assert_eq!(by_payload(update).token, activity);
    assert_eq!(by_payload(end).token, activity);
    assert_eq!(by_payload(end).priority, 5);

    // A start without attributes-type, after a good update: the message is refused naming the part, the recipient
    // and the field, and nothing of it is accepted.
    let bad_start = "{\"aps\":{\"event\":\"start\",\"timestamp\":1700000000,\"alert\":\"x\",\"attributes\":{}}}";
    let (code, text) = h
        .send_raw(
            &rcpt,
            &mcmt(&[
                push_part(&[("apns-push-type", "liveactivity")], update),
                push_part(&[("apns-push-type", "liveactivity")], bad_start),
            ]),
        )
        .await;
    assert_eq!(code, 550, "{text}");
    assert!(
        text.starts_with(&format!("5.6.0 part 3, recipient <{}>:", rcpt[0])),
        "{text}"
    );
    assert!(text.contains("attributes-type"), "{text}");
    // An update whose content-state is not an object, and one without a timestamp.
    for (bad, field) in [
        (
            "{\"aps\":{\"event\":\"update\",\"timestamp\":1,\"content-state\":[1]}}",
            "content-state",
        ),
        (
            "{\"aps\":{\"event\":\"update\",\"content-state\":{}}}",
            "timestamp",
        ),
    ] {
        let (code, text) = h
            .send_raw(
                &rcpt,
                &mcmt(&[push_part(&[("apns-push-type", "liveactivity")], bad)]),
            )
            .await;
        assert_eq!(code, 550, "{bad}: {text}");
        assert!(text.contains(field), "{bad}: {text}");
    }
    assert_eq!(
        h.reception_lines().len(),
        3,
        "only the first message was received"
    );
    assert_eq!(h.sim.record().len(), 3);
}

// `timeout` takes any number of seconds: one too large for the clock (the whole-DATA deadline is ten of them)
// means no deadline in practice, not a panic that ends the session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_too_large_for_the_clock_still_takes_a_message() {
    let h = Harness::start_with(allow_conf, |l| {
        l.idle_timeout = Duration::from_secs(i64::MAX as u64)
    })
    .await;
    let rcpt = format!("{}@{DOMAIN}", token(31));
    let (code, text) = h
        .send_raw(
            &[rcpt],
            &mcmt(&[push_part(&[], "{\"aps\":{\"alert\":\"late\"}}")]),
        )
        .await;
    assert_eq!(code, 250, "{text}");
}

/// A resolver delivering `DOMAIN` from the default binding and from binding `gated`, whose settings it builds
/// only once the test opens the gate (as a slow build, reading credential files, would), saying when a build
/// started waiting.
struct GatedResolver {
    fast: StaticResolver,
    gated: Arc<herald::outbound::settings::DeliverySettings>,
    open: std::sync::Mutex<bool>,
    opened: std::sync::Condvar,
    entered: tokio::sync::Notify,
}

impl GatedResolver {
    fn open(&self) {
        *self.open.lock().unwrap() = true;
        self.opened.notify_all();
    }

    fn is_open(&self) -> bool {
        *self.open.lock().unwrap()
    }
}

impl SettingsResolver for GatedResolver {
    fn resolve(
        &self,
        domain: &str,
    ) -> Result<Arc<herald::outbound::settings::DeliverySettings>, ResolveError> {
        self.fast.resolve(domain)
    }

    fn bindings(&self) -> Vec<String> {
        vec!["default".into(), "gated".into()]
    }

    fn cached(
        &self,
        binding: &str,
        domain: &str,
    ) -> Option<Arc<herald::outbound::settings::DeliverySettings>> {
        match binding {
            "gated" => (self.is_open() && domain == DOMAIN).then(|| self.gated.clone()),
            _ => self.fast.cached(binding, domain),
        }
    }

    fn resolve_binding(
        &self,
        binding: &str,
        domain: &str,
    ) -> Result<Arc<herald::outbound::settings::DeliverySettings>, ResolveError> {
        if binding != "gated" {
            return self.fast.resolve_binding(binding, domain);
        }
        self.entered.notify_one();
        let open = self.open.lock().unwrap();
        let (open, _) = self.opened.wait_timeout_while(open, WAIT, |o| !*o).unwrap();
        assert!(*open, "the gate was never opened");
        if domain == DOMAIN {
            Ok(self.gated.clone())
        } else {
            Err(ResolveError::UnknownDomain(domain.to_owned()))
        }
    }
}

/// An engine that holds at most `max` notifications in memory.
fn resident(max: usize) -> EngineLimits {
    EngineLimits {
        max_resident: max,
        ..EngineLimits::default()
    }
}

/// Sends MAIL, one RCPT per recipient and DATA on `c`, then `message`; returns without reading the reply to the
/// end of the data.
async fn send_message(c: &mut Raw, rcpts: &[String], message: &str) {
    assert_eq!(c.cmd("MAIL FROM:<app@backend.example>").await.0, 250);
    for r in rcpts {
        let (code, text) = c.cmd(&format!("RCPT TO:<{r}>")).await;
        assert_eq!(code, 250, "{text}");
    }
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(&stuff(message)).await;
    c.send(".\r\n").await;
}

// A message that makes more notifications than the engine ever holds in memory can never be taken: it is refused
// for good (552 5.3.4, naming both options), not deferred to be retried until the sender gives up on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_larger_than_the_queue_ever_holds_is_refused_for_good() {
    let h = Harness::start_custom(
        allow_conf,
        |_| {},
        Arc::new(NotDurable),
        resident(10),
        |pki, sim, _| {
            Arc::new(StaticResolver::default().with(token_auth_settings(pki, sim, DOMAIN, TOPIC)))
        },
    )
    .await;
    let two_parts = mcmt(&[
        push_part(&[], "{\"aps\":{\"alert\":\"one\"}}"),
        push_part(&[], "{\"aps\":{\"alert\":\"two\"}}"),
    ]);
    let six: Vec<String> = (0..6)
        .map(|i| format!("{}@{DOMAIN}", token(600 + i)))
        .collect();
    let (code, text) = h.send_raw(&six, &two_parts).await;
    assert_eq!(code, 552, "{text}");
    assert_eq!(
        text,
        "5.3.4 the message would make 12 notifications (2 push parts times 6 recipients), more than herald ever holds \
         in memory at once (max_resident_notifications = 10); send it as smaller messages (this listener's \
         max_notifications_per_message is 100000, above max_resident_notifications)"
    );
    assert!(h.reception_lines().is_empty());
    // As many as the engine holds fit.
    let (code, text) = h.send_raw(&six[..5], &two_parts).await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(h.sim.wait_for_records(10, WAIT).await, 10);
}

// The room a message needs is taken before its notifications are built: while one session builds a message (its
// X-Binding's settings are being built), another whose message needs more than the room left is told to retry
// at once, before anything of it is built, and the first is accepted with the room it took.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_for_a_message_is_taken_before_it_is_built() {
    let gate: Arc<std::sync::OnceLock<Arc<GatedResolver>>> = Arc::default();
    let made = gate.clone();
    let h = Harness::start_custom(
        allow_conf,
        |_| {},
        Arc::new(NotDurable),
        resident(10),
        move |pki, sim, _| {
            let mut gated = token_auth_settings(pki, sim, DOMAIN, TOPIC);
            gated.binding = Arc::from("gated");
            let resolver = Arc::new(GatedResolver {
                fast: StaticResolver::default().with(token_auth_settings(pki, sim, DOMAIN, TOPIC)),
                gated: Arc::new(gated),
                open: std::sync::Mutex::new(false),
                opened: std::sync::Condvar::new(),
                entered: tokio::sync::Notify::new(),
            });
            made.set(resolver.clone()).ok().unwrap();
            resolver
        },
    )
    .await;
    let gate = gate.get().unwrap().clone();
    let rcpts = |from: usize| -> Vec<String> {
        (from..from + 6)
            .map(|i| format!("{}@{DOMAIN}", token(i)))
            .collect()
    };
    // A: 6 notifications from binding `gated`; it waits while their settings are built.
    let mut a = h.greeted().await;
    let gated = mcmt(&[push_part(&[], "{\"aps\":{\"alert\":\"a\"}}")]).replacen(
        "MIME-Version: 1.0\r\n",
        "MIME-Version: 1.0\r\nX-Binding: gated\r\n",
        1,
    );
    send_message(&mut a, &rcpts(700), &gated).await;
    tokio::time::timeout(WAIT, gate.entered.notified())
        .await
        .expect("session A never started building its message");
    // B: 6 more do not fit in the 4 left.
    let mut b = h.greeted().await;
    send_message(
        &mut b,
        &rcpts(710),
        &mcmt(&[push_part(&[], "{\"aps\":{\"alert\":\"b\"}}")]),
    )
    .await;
    assert_eq!(
        b.reply().await,
        (
            452,
            "4.3.1 queue full: herald holds 6 notifications in memory (max_resident_notifications = 10) and \
             cannot take 6 more now; retry later"
                .into()
        )
    );
    gate.open();
    let (code, text) = a.reply().await;
    assert_eq!(code, 250, "{text}");
    assert!(
        text.starts_with("2.0.0 accepted 6 notifications as batch "),
        "{text}"
    );
    assert_eq!(h.sim.wait_for_records(6, WAIT).await, 6);
    assert_eq!(h.reception_lines().len(), 6);
}

// A domain herald is configured to deliver, whose credentials cannot be read now (its apn_key file is missing), is
// herald's problem for the operator to fix: its recipients are deferred (451 4.3.5), not refused for good, and
// taken once the file is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_whose_credentials_cannot_be_read_is_deferred_not_refused() {
    let key_path: Arc<std::sync::OnceLock<PathBuf>> = Arc::default();
    let key = key_path.clone();
    let h = Harness::start_custom(
        allow_conf,
        |_| {},
        Arc::new(NotDurable),
        EngineLimits::default(),
        move |pki, sim, dir| {
            let missing = dir.join("keys").join("later.p8");
            let options = support::token_auth_options(pki, sim.addrs.h2.port(), TOPIC).replace(
                &pki.manifest.token_key.p8.display().to_string(),
                &missing.display().to_string(),
            );
            key.set(missing).unwrap();
            let text = format!("domain \"{DOMAIN}\" {{\n{options}}}\n");
            let config = Config::parse_str("credentials.conf", &text).unwrap();
            Arc::new(herald::delivery::ConfigResolver::new(Arc::new(config)))
        },
    )
    .await;
    let missing = key_path.get().unwrap().clone();
    let rcpt = format!("{}@{DOMAIN}", token(800));
    let mut c = h.greeted().await;
    assert_eq!(c.cmd("MAIL FROM:<app@backend.example>").await.0, 250);
    let (code, text) = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    assert_eq!(code, 451, "{text}");
    assert!(
        text.starts_with(&format!(
            "4.3.5 <{rcpt}>: domain \"{DOMAIN}\" cannot take push notifications: apn_key {}",
            missing.display()
        )),
        "{text}"
    );
    assert!(
        text.ends_with("(herald's configuration must be fixed; retry later)"),
        "{text}"
    );
    // Unknown domains are still refused for good.
    let unknown = format!("{}@unknown.example", token(801));
    assert_eq!(c.cmd(&format!("RCPT TO:<{unknown}>")).await.0, 550);
    // The operator puts the key in place: the same recipient is taken, and its notification delivered.
    std::fs::create_dir_all(missing.parent().unwrap()).unwrap();
    std::fs::copy(&h.pki.manifest.token_key.p8, &missing).unwrap();
    let (code, text) = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(&stuff(&mcmt(&[push_part(
        &[],
        "{\"aps\":{\"alert\":\"keyed\"}}",
    )])))
    .await;
    let (code, text) = c.cmd(".").await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(h.sim.wait_for_records(1, WAIT).await, 1);
    assert_eq!(h.sim.record()[0].token, token(800));
}

// When every RCPT of a transaction is deferred for herald's own state (451 4.3.5: the domain's credentials cannot
// be read), the DATA the client pipelined after them is refused (503) through no fault of its own: it counts as a
// command that does nothing, so a client retrying its message is not closed after `max_errors` transactions. A DATA
// after a recipient refused for good is still the client's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_after_recipients_herald_deferred_is_not_the_clients_error() {
    let h = Harness::start_custom(
        allow_conf,
        |l| l.max_errors = 3,
        Arc::new(NotDurable),
        EngineLimits::default(),
        move |pki, sim, dir| {
            let missing = dir.join("keys").join("never.p8");
            let options = support::token_auth_options(pki, sim.addrs.h2.port(), TOPIC).replace(
                &pki.manifest.token_key.p8.display().to_string(),
                &missing.display().to_string(),
            );
            let text = format!("domain \"{DOMAIN}\" {{\n{options}}}\n");
            let config = Config::parse_str("credentials.conf", &text).unwrap();
            Arc::new(herald::delivery::ConfigResolver::new(Arc::new(config)))
        },
    )
    .await;
    let deferred = format!("{}@{DOMAIN}", token(820));
    let unknown = format!("{}@unknown.example", token(821));
    let mut c = h.greeted().await;
    // Five pipelined retries; with max_errors = 3 the session would be closed if their DATA counted.
    for _ in 0..5 {
        c.send(&format!(
            "MAIL FROM:<app@backend.example>\r\nRCPT TO:<{deferred}>\r\nDATA\r\nRSET\r\n"
        ))
        .await;
        assert_eq!(c.reply().await.0, 250);
        let (code, text) = c.reply().await;
        assert_eq!(code, 451, "{text}");
        assert!(text.starts_with("4.3.5 "), "{text}");
        assert_eq!(
            c.reply().await,
            (
                503,
                "5.5.1 DATA needs at least one accepted RCPT (every RCPT was deferred: retry later)"
                    .into()
            )
        );
        assert_eq!(c.reply().await, (250, "2.0.0 reset".into()));
    }
    // A recipient refused for good among them: each DATA is an error, the third closes the session.
    for round in 0..3 {
        c.send(&format!(
            "MAIL FROM:<app@backend.example>\r\nRCPT TO:<{unknown}>\r\nRCPT TO:<{deferred}>\r\nDATA\r\n"
        ))
        .await;
        assert_eq!(c.reply().await.0, 250);
        assert_eq!(c.reply().await.0, 550);
        assert_eq!(c.reply().await.0, 451);
        assert_eq!(
            c.reply().await,
            (503, "5.5.1 DATA needs at least one accepted RCPT".into())
        );
        if round < 2 {
            assert_eq!(c.cmd("RSET").await, (250, "2.0.0 reset".into()));
        }
    }
    assert_eq!(c.reply().await.0, 421);
    c.assert_closed().await;
}

// RFC 5321 §4.5.3.1.5: no reply line is longer than 512 octets, whatever the client sent: text of its own that a
// reply repeats (a greeting name, addresses, an MCMT boundary) is cut and marked with an ellipsis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_never_repeat_client_text_past_a_reply_line() {
    let h = Harness::start_with(allow_conf, |l| {
        l.max_command_line = 20_000;
        l.max_text_line = 20_000;
    })
    .await;
    let within = |lines: &[String]| {
        for line in lines {
            assert!(line.len() <= 512, "{} octets: {line:?}", line.len());
        }
    };
    let mut c = h.raw().await;
    assert_eq!(c.reply().await.0, 220);
    let long = "é".repeat(2500);
    let lines = c.cmd_lines(&format!("EHLO {long}")).await;
    within(&lines);
    assert!(lines[0].contains("?..."), "{lines:?}");
    assert!(lines.iter().all(|l| l.is_ascii()), "{lines:?}");
    let lines = c
        .cmd_lines(&format!("MAIL FROM:<{long}@backend.example>"))
        .await;
    within(&lines);
    assert!(lines[0].starts_with("250 2.1.0 sender <??"), "{lines:?}");
    let lines = c.cmd_lines(&format!("RCPT TO:<{long}@{DOMAIN}>")).await;
    within(&lines);
    assert!(lines[0].starts_with("250 2.1.5 recipient <??"), "{lines:?}");
    let lines = c.cmd_lines(&format!("RCPT TO:<{long}@x.{long}>")).await;
    within(&lines);
    assert!(lines[0].starts_with("501 5.1.3 recipient <??"), "{lines:?}");
    // A boundary of 5000 bytes that is never closed.
    let boundary = "b".repeat(5000);
    let message = format!(
        "MIME-Version: 1.0\r\nContent-Type: multipart/vnd.msys.mcmt; boundary=\"{boundary}\"\r\n\r\n\
         --{boundary}\r\nContent-Type: message/vnd.msys.apn\r\n\r\n{{\"aps\":{{}}}}\r\n"
    );
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(&stuff(&message)).await;
    let lines = c.cmd_lines(".").await;
    within(&lines);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        lines[0],
        format!(
            "550 5.6.0 malformed MCMT message: the MCMT container is not closed: no --{}...-- line follows its last \
             part (is the message truncated?)\r\n",
            "b".repeat(100)
        )
    );
}

// A session that makes 20 errors without having a message accepted (as Postfix's smtpd_hard_error_limit) is told
// 421 4.7.0 and closed; commands that do nothing count past 100 (smtpd_junk_command_limit), refused recipients
// past the listener's recipient limit; an accepted message starts the count over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_keeps_erring_is_closed() {
    let h = Harness::start_with(allow_conf, |l| l.max_recipients = 3).await;
    let closing = (
        421,
        "4.7.0 herald: too many errors (20 refused commands or messages without a message accepted); closing"
            .to_owned(),
    );
    let mut c = h.greeted().await;
    for _ in 0..19 {
        assert_eq!(c.cmd("XYZZY").await.0, 500);
    }
    assert_eq!(c.cmd("MAIL FROM:<app@backend.example>").await.0, 250);
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{}@{DOMAIN}>", token(901))).await.0,
        250
    );
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(&stuff(&mcmt(&[push_part(
        &[],
        "{\"aps\":{\"alert\":\"hi\"}}",
    )])))
    .await;
    assert_eq!(c.cmd(".").await.0, 250);
    // The accepted message wiped the slate: 19 more errors, and as many refused recipients as a transaction may
    // carry, are let through.
    for _ in 0..19 {
        assert_eq!(c.cmd("XYZZY").await.0, 500);
    }
    assert_eq!(c.cmd("MAIL FROM:<app@backend.example>").await.0, 250);
    for i in 0..3 {
        let unknown = format!("{}@unknown.example", token(910 + i));
        assert_eq!(c.cmd(&format!("RCPT TO:<{unknown}>")).await.0, 550);
    }
    assert_eq!(c.cmd("NOOP").await, (250, "2.0.0 ok".into()));
    // One refused recipient more is the 20th error: answered, then the session is closed.
    let unknown = format!("{}@unknown.example", token(913));
    assert_eq!(c.cmd(&format!("RCPT TO:<{unknown}>")).await.0, 550);
    assert_eq!(c.reply().await, closing);
    c.assert_closed().await;

    // NOOP now and then: the first 100 commands that do nothing (the EHLO among them) are free, the 20 after them
    // are errors.
    let mut c = h.greeted().await;
    for _ in 0..118 {
        assert_eq!(c.cmd("NOOP").await, (250, "2.0.0 ok".into()));
    }
    assert_eq!(c.cmd("NOOP").await, (250, "2.0.0 ok".into()));
    assert_eq!(c.reply().await, closing);
    c.assert_closed().await;
}

// A domain only a binding delivers (a domain stanza inside `binding "b"`), whose credentials there cannot be read
// now, is herald's to fix: the default binding does not deliver it at all (permanent), but the recipient is deferred
// (451 4.3.5) for the binding's reason, not refused for good; once the key is there, it is taken and delivered from
// the binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_a_binding_delivers_with_unreadable_credentials_is_deferred() {
    let key_path: Arc<std::sync::OnceLock<PathBuf>> = Arc::default();
    let key = key_path.clone();
    let h = Harness::start_custom(
        allow_conf,
        |_| {},
        Arc::new(NotDurable),
        EngineLimits::default(),
        move |pki, sim, dir| {
            let missing = dir.join("keys").join("binding.p8");
            let options = support::token_auth_options(pki, sim.addrs.h2.port(), TOPIC).replace(
                &pki.manifest.token_key.p8.display().to_string(),
                &missing.display().to_string(),
            );
            key.set(missing).unwrap();
            let text = format!("binding \"b\" {{\n domain \"{DOMAIN}\" {{\n{options}}}\n}}\n");
            let config = Config::parse_str("binding-credentials.conf", &text).unwrap();
            Arc::new(herald::delivery::ConfigResolver::new(Arc::new(config)))
        },
    )
    .await;
    let missing = key_path.get().unwrap().clone();
    let rcpt = format!("{}@{DOMAIN}", token(820));
    let mut c = h.greeted().await;
    assert_eq!(c.cmd("MAIL FROM:<app@backend.example>").await.0, 250);
    let (code, text) = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    assert_eq!(code, 451, "{text}");
    assert!(
        text.starts_with(&format!(
            "4.3.5 <{rcpt}>: domain \"{DOMAIN}\" cannot take push notifications: apn_key {}",
            missing.display()
        )),
        "{text}"
    );
    std::fs::create_dir_all(missing.parent().unwrap()).unwrap();
    std::fs::copy(&h.pki.manifest.token_key.p8, &missing).unwrap();
    let (code, text) = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(c.cmd("DATA").await.0, 354);
    let message = mcmt(&[push_part(&[], "{\"aps\":{\"alert\":\"bound\"}}")])
        .replace("Subject: push\r\n", "Subject: push\r\nX-Binding: b\r\n");
    c.send(&stuff(&message)).await;
    let (code, text) = c.cmd(".").await;
    assert_eq!(code, 250, "{text}");
    assert_eq!(h.sim.wait_for_records(1, WAIT).await, 1);
    assert_eq!(h.sim.record()[0].token, token(820));
}

// RFC 5321 §4.5.1: `postmaster` is a valid address (the reserved mailbox), not a syntax error; herald has no
// mailboxes, so it is refused as an unknown recipient is, and the transaction goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postmaster_is_refused_as_no_mailbox_of_herald() {
    let h = Harness::start(allow_conf).await;
    let mut c = h.greeted().await;
    assert_eq!(c.cmd("MAIL FROM:<app@backend.example>").await.0, 250);
    for postmaster in ["postmaster", "PostMaster"] {
        assert_eq!(
            c.cmd(&format!("RCPT TO:<{postmaster}>")).await,
            (
                550,
                format!(
                    "5.1.1 <{postmaster}>: herald has no mailboxes: it takes only device-token recipients of push domains, <token-or-name@app-domain>"
                )
            )
        );
    }
    // Any other address without a domain is still a syntax error.
    assert_eq!(c.cmd("RCPT TO:<webmaster>").await.0, 501);
    assert_eq!(
        c.cmd(&format!("RCPT TO:<{}@{DOMAIN}>", token(830))).await.0,
        250
    );
}

// An empty header is given, not missing (Momentum falls back only for a header "not specified"): an empty
// X-Device-Token once sent the push to the recipient's local part, another device, with 250. It refuses the message
// naming the part and the header, as a repeated top-level X-Binding, a priority with a `+` and a payload larger than
// any APNs push do; nothing is delivered or logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_repeated_and_oversized_headers_and_payloads_refuse_the_message() {
    let h = Harness::start(allow_conf).await;
    let rcpt = vec![format!("{}@{DOMAIN}", token(840))];
    let json = "{\"aps\":{\"alert\":\"hi\"}}";
    let (code, text) = h
        .send_raw(&rcpt, &mcmt(&[push_part(&[("X-Device-Token", "")], json)]))
        .await;
    assert_eq!(
        (code, text.as_str()),
        (
            550,
            "5.6.0 part 2: header X-Device-Token is given with an empty value in the inner header block (an empty header is not a missing one: give a value, or leave the header out)"
        )
    );
    let (code, text) = h
        .send_raw(&rcpt, &mcmt(&[push_part(&[("X-APNs-Topic", " ")], json)]))
        .await;
    assert_eq!(code, 550, "{text}");
    assert!(
        text.starts_with(
            "5.6.0 part 2: header X-APNs-Topic (or apns-topic) is given with an empty value"
        ),
        "{text}"
    );
    let twice = mcmt(&[push_part(&[], json)]).replace(
        "Subject: push\r\n",
        "Subject: push\r\nX-Binding: default\r\nX-Binding: other\r\n",
    );
    let (code, text) = h.send_raw(&rcpt, &twice).await;
    assert_eq!(
        (code, text.as_str()),
        (
            550,
            "5.6.0 malformed MCMT message: header X-Binding is given more than once in the message's headers (which one applies would be ambiguous: give it once)"
        )
    );
    let (code, text) = h
        .send_raw(
            &rcpt,
            &mcmt(&[push_part(&[("X-APNs-Priority", "+10")], json)]),
        )
        .await;
    assert_eq!(
        (code, text.as_str()),
        (
            550,
            "5.6.0 part 2: header X-APNs-Priority: \"+10\" is not a priority (10, 5 or 1)"
        )
    );
    // A 7bit payload of 6000 bytes (in lines within max_line_length): refused by its part before any recipient's
    // route judges it.
    let pad = format!("\"{}\",\r\n", "x".repeat(96)).repeat(59);
    let big = format!(
        "{{\"aps\":{{\"alert\":\"hi\"}},\"pad\":[{pad}\"{}\"]}}",
        "y".repeat(8)
    );
    assert_eq!(big.len(), 6000);
    let (code, text) = h.send_raw(&rcpt, &mcmt(&[push_part(&[], &big)])).await;
    assert_eq!(
        (code, text.as_str()),
        (
            550,
            "5.6.0 part 2: payload is 6000 bytes; no APNs push allows more than 5120 (VoIP pushes over HTTP/2; other pushes allow less)"
        )
    );
    assert!(h.reception_lines().is_empty());
    assert!(h.sim.record().is_empty());
    let (code, text) = h.send_raw(&rcpt, &mcmt(&[push_part(&[], json)])).await;
    assert_eq!(code, 250, "{text}");
    h.sim.wait_for_records(1, WAIT).await;
}

// A recipient given again does nothing (the device gets one notification per push part). A transaction may give
// as many repeats as it may give recipients without it being held against the client, so a message listing devices
// more than once is delivered; past them each repeat counts as a command that does nothing, so repeating one
// cannot hold the session open for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_recipient_counts_as_a_command_that_does_nothing() {
    let h = Harness::start_with(allow_conf, |l| {
        l.max_junk = 5;
        l.max_errors = 3;
        l.max_recipients = 20;
    })
    .await;
    let closing = (
        421,
        "4.7.0 herald: too many errors (3 refused commands or messages without a message accepted); closing"
            .to_owned(),
    );
    let rcpt = |i: usize| format!("RCPT TO:<{}@{DOMAIN}>", token(i));
    // EHLO is the first command that does nothing.
    let mut c = h.greeted().await;
    assert_eq!(c.cmd("MAIL FROM:<app@backend.example>").await.0, 250);
    assert_eq!(c.cmd(&rcpt(950)).await.0, 250);
    assert_eq!(c.cmd(&rcpt(951)).await.0, 250);
    // 20 repeats, far more than max_junk + max_errors: the message is delivered all the same.
    for i in 0..20 {
        let (code, text) = c.cmd(&rcpt(950 + i % 2)).await;
        assert_eq!(code, 250, "{text}");
        assert!(text.contains("already given"), "{text}");
    }
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(&stuff(&mcmt(&[push_part(
        &[],
        "{\"aps\":{\"alert\":\"twice listed\"}}",
    )])))
    .await;
    let (code, text) = c.cmd(".").await;
    assert_eq!(code, 250, "{text}");
    assert!(
        text.starts_with("2.0.0 accepted 2 notifications as batch "),
        "{text}"
    );
    assert_eq!(h.sim.wait_for_records(2, WAIT).await, 2);

    // A recipient repeated without end: 20 repeats are free, the 5 after them are commands that do nothing (the
    // accepted message started the counts over), the 3 after those are errors, and the third closes the session.
    assert_eq!(c.cmd("MAIL FROM:<app@backend.example>").await.0, 250);
    assert_eq!(c.cmd(&rcpt(952)).await.0, 250);
    for _ in 0..27 {
        let (code, text) = c.cmd(&rcpt(952)).await;
        assert_eq!(code, 250, "{text}");
        assert!(text.contains("already given"), "{text}");
    }
    assert_eq!(c.cmd(&rcpt(952)).await.0, 250);
    assert_eq!(c.reply().await, closing);
    c.assert_closed().await;
}

// A device token in the local part names one device in any case: the same token given again in another case is
// the same recipient, and the device gets one notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_recipient_given_again_in_another_case_is_the_same_recipient() {
    let h = Harness::start(allow_conf).await;
    let lower = format!("{}@{DOMAIN}", "ab".repeat(32));
    let upper = format!("{}@{}", "AB".repeat(32), DOMAIN.to_ascii_uppercase());
    let mut c = h.greeted().await;
    assert_eq!(c.cmd("MAIL FROM:<app@backend.example>").await.0, 250);
    assert_eq!(c.cmd(&format!("RCPT TO:<{upper}>")).await.0, 250);
    let (code, text) = c.cmd(&format!("RCPT TO:<{lower}>")).await;
    assert_eq!(code, 250, "{text}");
    assert!(text.contains("already given"), "{text}");
    assert_eq!(c.cmd("DATA").await.0, 354);
    c.send(&stuff(&mcmt(&[push_part(
        &[],
        "{\"aps\":{\"alert\":\"once\"}}",
    )])))
    .await;
    let (code, text) = c.cmd(".").await;
    assert_eq!(code, 250, "{text}");
    assert!(
        text.starts_with("2.0.0 accepted 1 notification as batch "),
        "{text}"
    );
    assert_eq!(h.sim.wait_for_records(1, WAIT).await, 1);
    assert_eq!(h.sim.record()[0].token, "ab".repeat(32));
}

// Refusals for herald's own state are not the client's errors: a client that retries on its connection while
// the spool cannot store (452 4.3.1 at the end of DATA) is not closed after `max_errors` of them. They count as
// commands that do nothing, so such retries cannot hold the session for good either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_herald_cannot_store_is_not_the_clients_error() {
    let h = Harness::start_full(
        allow_conf,
        |l| {
            l.max_errors = 3;
            l.max_junk = 6;
        },
        Arc::new(FailingSpool(|| std::io::Error::from_raw_os_error(28))),
    )
    .await;
    let rcpt = vec![format!("{}@{DOMAIN}", token(960))];
    let message = mcmt(&[push_part(&[], "{\"aps\":{\"alert\":\"hi\"}}")]);
    // The EHLO and five deferred messages: six commands that do nothing, no error.
    let mut c = h.greeted().await;
    for _ in 0..5 {
        send_message(&mut c, &rcpt, &message).await;
        let (code, text) = c.reply().await;
        assert_eq!(code, 452, "{text}");
    }
    // Past the junk limit each is an error: the third closes the session.
    assert_eq!(c.cmd("NOOP").await, (250, "2.0.0 ok".into()));
    send_message(&mut c, &rcpt, &message).await;
    assert_eq!(c.reply().await.0, 452);
    send_message(&mut c, &rcpt, &message).await;
    assert_eq!(c.reply().await.0, 452);
    assert_eq!(
        c.reply().await,
        (
            421,
            "4.7.0 herald: too many errors (3 refused commands or messages without a message accepted); closing"
                .into()
        )
    );
    c.assert_closed().await;
}

// While herald's queue is full, MAIL gets 452 4.3.1, and the RCPTs and DATA a client pipelined after it get 503
// through no fault of its own: none of it is the client's error, and the session stays open for its retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_at_mail_is_not_the_clients_error() {
    let gate: Arc<std::sync::OnceLock<Arc<GatedResolver>>> = Arc::default();
    let made = gate.clone();
    let h = Harness::start_custom(
        allow_conf,
        |l| l.max_errors = 3,
        Arc::new(NotDurable),
        resident(10),
        move |pki, sim, _| {
            let mut gated = token_auth_settings(pki, sim, DOMAIN, TOPIC);
            gated.binding = Arc::from("gated");
            let resolver = Arc::new(GatedResolver {
                fast: StaticResolver::default().with(token_auth_settings(pki, sim, DOMAIN, TOPIC)),
                gated: Arc::new(gated),
                open: std::sync::Mutex::new(false),
                opened: std::sync::Condvar::new(),
                entered: tokio::sync::Notify::new(),
            });
            made.set(resolver.clone()).ok().unwrap();
            resolver
        },
    )
    .await;
    let gate = gate.get().unwrap().clone();
    // A takes all the room: 10 notifications from binding `gated`, held while their settings are built.
    let rcpts: Vec<String> = (970..980)
        .map(|i| format!("{}@{DOMAIN}", token(i)))
        .collect();
    let mut a = h.greeted().await;
    let gated = mcmt(&[push_part(&[], "{\"aps\":{\"alert\":\"a\"}}")]).replacen(
        "MIME-Version: 1.0\r\n",
        "MIME-Version: 1.0\r\nX-Binding: gated\r\n",
        1,
    );
    send_message(&mut a, &rcpts, &gated).await;
    tokio::time::timeout(WAIT, gate.entered.notified())
        .await
        .expect("session A never started building its message");
    // B pipelines its transaction four times; with max_errors = 3 it would be closed if any of it counted.
    let mut b = h.greeted().await;
    for _ in 0..4 {
        b.send(&format!(
            "MAIL FROM:<app@backend.example>\r\nRCPT TO:<{}>\r\nRCPT TO:<{}>\r\nDATA\r\n",
            rcpts[0], rcpts[1]
        ))
        .await;
        let (code, text) = b.reply().await;
        assert_eq!(code, 452, "{text}");
        assert!(text.starts_with("4.3.1 queue full: "), "{text}");
        assert_eq!(b.reply().await, (503, "5.5.1 RCPT before MAIL".into()));
        assert_eq!(b.reply().await, (503, "5.5.1 RCPT before MAIL".into()));
        assert_eq!(b.reply().await, (503, "5.5.1 DATA before MAIL".into()));
    }
    assert_eq!(b.cmd("NOOP").await, (250, "2.0.0 ok".into()));
    // Errors of its own still count.
    for _ in 0..2 {
        assert_eq!(b.cmd("DATA").await, (503, "5.5.1 DATA before MAIL".into()));
    }
    assert_eq!(b.cmd("DATA").await.0, 503);
    assert_eq!(b.reply().await.0, 421);
    b.assert_closed().await;
    gate.open();
    let (code, text) = a.reply().await;
    assert_eq!(code, 250, "{text}");
}
