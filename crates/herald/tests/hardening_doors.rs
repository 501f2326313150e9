//! The doors of a running herald under hostile clients, over real sockets: idle and slow HTTP connections are
//! closed by their timeouts, connection floods stop at the per-client and per-listener caps while the console
//! still answers, oversized requests and messages are refused naming the limit, a full resident queue refuses
//! instead of growing, wrong console passwords are throttled and logged with the address, every HTTP error has a
//! JSON body, and `herald send` takes its API key from a file or the environment.

mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};

const TOPIC: &str = "com.example.doors";
const DOMAIN: &str = "doors.example";
const KEY: &str = "doors-key";
const PASSWORD: &str = "console-secret";
/// How long a test waits for something that should happen (never a speed assertion).
const WAIT: Duration = Duration::from_secs(20);

struct Herald {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    _sim: Option<SimHandle>,
    server: Arc<Server>,
    http: SocketAddr,
    smtp: SocketAddr,
    control: SocketAddr,
}

/// Options of the listeners and the global scope, as configuration text.
#[derive(Default)]
struct Opts {
    global: &'static str,
    http: &'static str,
    smtp: &'static str,
    control: &'static str,
    /// Deliver to a simulator (else the route points at a closed port and everything stays queued).
    sim: bool,
}

impl Herald {
    async fn start(opts: Opts) -> Herald {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let pki = Pki::generate(&path.join("pki"), &[TOPIC.to_string()]).unwrap();
        let (sim, port) = if opts.sim {
            let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
                .await
                .unwrap();
            let port = sim.addrs.h2.port();
            (Some(sim), port)
        } else {
            (None, support::free_port())
        };
        let config = path.join("herald.conf");
        std::fs::write(
            &config,
            format!(
                r#"
spool_dir = "{spool}"
ec_logger "main" {{ mainlog = "{log}" }}
{global}
http_listener {{ listen "127.0.0.1:0" {{ api_key = "{KEY}" {http} }} }}
esmtp_listener {{ listen "127.0.0.1:0" {{ mcmt_reception = allow {smtp} }} }}
control_listener {{ listen "127.0.0.1:0" {{ control_password = "{PASSWORD}" {control} }} }}
domain "{DOMAIN}" {{
{credentials}  retry_interval = 3600
}}
"#,
                spool = path.join("spool").display(),
                log = path.join("mainlog.ec").display(),
                global = opts.global,
                http = opts.http,
                smtp = opts.smtp,
                control = opts.control,
                credentials = support::token_auth_options(&pki, port, TOPIC),
            ),
        )
        .unwrap();
        let server = Server::start(&config).await.unwrap();
        let addrs = server.addrs().await;
        Herald {
            _dir: dir,
            dir: path,
            _sim: sim,
            http: addrs.http[0],
            smtp: addrs.esmtp[0],
            control: addrs.control[0].parse().unwrap(),
            server,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    async fn stop(self) {
        self.server.shutdown(Duration::from_secs(2)).await;
    }
}

fn token(i: usize) -> String {
    format!("{:064x}", 0xd00c_0000u64 + i as u64)
}

/// A TCP connection from `from` (any 127.0.0.0/8 address) to `to`.
async fn connect_from(from: &str, to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    socket.connect(to).await.unwrap()
}

/// Reads until the peer closes the connection (within [`WAIT`]); returns what arrived before.
async fn until_closed(stream: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "the connection is still open; it sent {:?}",
        String::from_utf8_lossy(&got)
    );
    String::from_utf8_lossy(&got).into_owned()
}

/// The status code and JSON body of a raw HTTP/1.1 answer.
fn status_and_json(answer: &str) -> (u16, serde_json::Value) {
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"));
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no body in {answer:?}"));
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{answer}"
    );
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer:?}"));
    (status, json)
}

/// The `error` text of a JSON error body.
fn error_of(json: &serde_json::Value) -> &str {
    json["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no \"error\" string in {json}"))
}

/// Runs one console command over the TCP control listener (after `auth`); returns (ok, text).
async fn console(addr: SocketAddr, password: &str, command: &str) -> (bool, String) {
    use herald::control::protocol::{read_reply, write_request};
    let stream = TcpStream::connect(addr).await.unwrap();
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    write_request(&mut w, &format!("auth {password}"))
        .await
        .unwrap();
    let auth = read_reply(&mut r).await.unwrap();
    if !auth.ok {
        return (false, auth.text);
    }
    write_request(&mut w, command).await.unwrap();
    let reply = read_reply(&mut r).await.unwrap();
    (reply.ok, reply.text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_http_connections_are_closed_by_their_timeouts() {
    let h = Herald::start(Opts {
        // The first byte may take 3 s: the connections below that send theirs at once do so within it even on a
        // loaded machine, and are then held to the other timeouts.
        http: "first_byte_timeout = 3 header_timeout = 1 body_timeout = 1 keepalive_timeout = 1",
        ..Opts::default()
    })
    .await;
    // Sends nothing at all.
    let mut silent = TcpStream::connect(h.http).await.unwrap();
    // Half a request head, then nothing (slowloris).
    let mut slow_head = TcpStream::connect(h.http).await.unwrap();
    slow_head
        .write_all(b"POST /api/v1/push HTTP/1.1\r\nhost: x\r\nx-slow: ")
        .await
        .unwrap();
    // A head that keeps trickling: a byte now and then never completes it.
    let mut trickle = TcpStream::connect(h.http).await.unwrap();
    trickle
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    // A complete head, then part of the body.
    let mut slow_body = TcpStream::connect(h.http).await.unwrap();
    slow_body
        .write_all(
            format!(
                "POST /api/v1/push HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\n\
                 content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"domain\":"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // A finished request on a keep-alive connection, then silence.
    let mut idle = TcpStream::connect(h.http).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();

    let trickling = tokio::spawn(async move {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            if trickle.write_all(b"x").await.is_err() {
                return true;
            }
            let mut buf = [0u8; 64];
            match tokio::time::timeout(Duration::from_millis(200), trickle.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return true,
                _ => {}
            }
        }
        false
    });
    assert_eq!(until_closed(&mut silent).await, "", "first_byte_timeout");
    assert_eq!(until_closed(&mut slow_head).await, "", "header_timeout");
    let answer = until_closed(&mut slow_body).await;
    let (status, json) = status_and_json(&answer);
    assert_eq!(status, 408, "{answer}");
    assert!(error_of(&json).contains("body_timeout"), "{json}");
    let answer = until_closed(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        trickling.await.unwrap(),
        "a head trickling in byte by byte stayed open past header_timeout"
    );
    // The listener still serves.
    let ok = reqwest::get(h.url("/healthz")).await.unwrap();
    assert_eq!(ok.status(), 200);
    h.stop().await;
}

/// An HTTP/2 client that leaves its flow-control window at 0 never takes its answer: its request stays open, so no
/// idle timeout applies, but the connection is closed once it has sent nothing for the send timeout, and its slot
/// is free again. (The h2 client is reqwest's, with a stream window of 0: it sends no WINDOW_UPDATE until it reads
/// data, and none can arrive.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_that_never_takes_its_answer_is_disconnected() {
    use herald::inbound::rest::server::SEND_TIMEOUT_MIN;
    let h = Herald::start(Opts {
        http: "first_byte_timeout = 1 header_timeout = 1 body_timeout = 1 keepalive_timeout = 1 \
               max_connections = 2",
        ..Opts::default()
    })
    .await;
    let stalled = || {
        reqwest::Client::builder()
            .http2_prior_knowledge()
            .http2_initial_stream_window_size(0)
            .build()
            .unwrap()
    };
    // Two such connections fill the listener (/healthz needs no key).
    let mut answers = Vec::new();
    for _ in 0..2 {
        let answer = stalled().get(h.url("/healthz")).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        answers.push(answer);
    }
    let healthz = || raw_http(h.http, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
    let full = healthz().await;
    assert!(full.starts_with("HTTP/1.1 503"), "{full}");
    // The body never arrives; the server ends the connection (1 s timeouts: the send timeout is its least).
    for mut answer in answers {
        let body = tokio::time::timeout(SEND_TIMEOUT_MIN + WAIT, answer.chunk()).await;
        let Ok(body) = body else {
            panic!("the connection is still open");
        };
        assert!(body.is_err(), "{body:?}");
    }
    // The listener serves again.
    let deadline = Instant::now() + WAIT;
    loop {
        let answer = healthz().await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "still {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_stops_at_the_caps_and_the_console_still_answers() {
    let h = Herald::start(Opts {
        http: "max_connections = 12 max_connections_per_client = 8",
        smtp: "max_connections = 12 max_connections_per_client = 8",
        ..Opts::default()
    })
    .await;
    for (name, door) in [("http", h.http), ("smtp", h.smtp)] {
        // One client fills its share; its next connection is refused with the option named.
        let mut held = Vec::new();
        for _ in 0..8 {
            held.push(connect_from("127.0.0.1", door).await);
        }
        let mut refused = connect_from("127.0.0.1", door).await;
        let answer = until_closed(&mut refused).await;
        if name == "http" {
            let (status, json) = status_and_json(&answer);
            assert_eq!(status, 503, "{answer}");
            assert!(
                error_of(&json).contains("max_connections_per_client"),
                "{json}"
            );
            // Another client still gets in.
            let client = reqwest::Client::builder()
                .local_address("127.0.0.2".parse::<std::net::IpAddr>().unwrap())
                .build()
                .unwrap();
            let ok = client.get(h.url("/healthz")).send().await.unwrap();
            assert_eq!(ok.status(), 200);
        } else {
            assert!(answer.starts_with("421 4.7.0"), "{answer:?}");
            assert!(answer.contains("max_connections_per_client"), "{answer:?}");
        }
        // Other addresses fill the listener; beyond it everyone is refused.
        for _ in 0..4 {
            held.push(connect_from("127.0.0.3", door).await);
        }
        let mut refused = connect_from("127.0.0.4", door).await;
        let answer = until_closed(&mut refused).await;
        assert!(
            answer.contains("max_connections") && !answer.contains("per_client"),
            "{name}: {answer:?}"
        );
        // The console is outside the network caps.
        let (ok, text) = console(h.control, PASSWORD, "version").await;
        assert!(ok && text.starts_with("herald "), "{text}");
        // Closing the flood frees the slots.
        drop(held);
        let deadline = Instant::now() + WAIT;
        loop {
            let mut s = connect_from("127.0.0.4", door).await;
            let mut buf = [0u8; 512];
            let got = if name == "http" {
                s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                    .await
                    .ok();
                tokio::time::timeout(WAIT, s.read(&mut buf)).await
            } else {
                tokio::time::timeout(WAIT, s.read(&mut buf)).await
            };
            let text = match got {
                Ok(Ok(n)) => String::from_utf8_lossy(&buf[..n]).into_owned(),
                _ => String::new(),
            };
            if text.starts_with("HTTP/1.1 200") || text.starts_with("220") {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: still refused: {text:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    h.stop().await;
}

/// Runs the built `herald send` with `env` and `args`; returns (success, stdout + stderr).
async fn herald_send(h: &Herald, env: &[(&str, &str)], args: &[&str]) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"));
    cmd.args(["send", "--url", &h.url(""), "--domain", DOMAIN])
        .args(args)
        .env_remove("HERALD_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herald_send_reads_the_api_key_from_a_file_or_the_environment() {
    let h = Herald::start(Opts::default()).await;
    let key_file = h.dir.join("api.key");
    std::fs::write(&key_file, format!("{KEY}\n")).unwrap();
    let alert = ["--alert", "hi"];
    let t1 = token(1);
    let (ok, out) = herald_send(
        &h,
        &[],
        &[
            &["--api-key-file", key_file.to_str().unwrap(), "--token", &t1][..],
            &alert,
        ]
        .concat(),
    )
    .await;
    assert!(ok && out.contains("accepted: 1"), "{out}");
    let t2 = token(2);
    let (ok, out) = herald_send(
        &h,
        &[("HERALD_API_KEY", KEY)],
        &[&["--token", &t2][..], &alert].concat(),
    )
    .await;
    assert!(ok && out.contains("accepted: 1"), "{out}");
    // Without a key the listener refuses, so the two above really sent it.
    let t3 = token(3);
    let (ok, out) = herald_send(&h, &[], &[&["--token", &t3][..], &alert].concat()).await;
    assert!(!ok && out.contains("401"), "{out}");
    let (ok, out) = herald_send(
        &h,
        &[("HERALD_API_KEY", "wrong")],
        &[&["--token", &t3][..], &alert].concat(),
    )
    .await;
    assert!(!ok && out.contains("401"), "{out}");
    h.stop().await;
}

/// Everything herald logs through `tracing` in this test process.
fn captured_logs() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .finish();
        let _ = tracing::subscriber::set_global_default(subscriber);
        buf
    })
    .clone()
}

struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `auth PASSWORD` from `from` on a fresh connection: (ok, text).
async fn auth_from(from: &str, to: SocketAddr, password: &str) -> (bool, String) {
    use herald::control::protocol::{read_reply, write_request};
    let stream = connect_from(from, to).await;
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    write_request(&mut w, &format!("auth {password}"))
        .await
        .unwrap();
    let reply = read_reply(&mut r).await.unwrap();
    (reply.ok, reply.text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_console_passwords_are_throttled_per_address_and_logged_with_it() {
    let logs = captured_logs();
    let h = Herald::start(Opts::default()).await;
    for i in 0..herald::control::AUTH_FAILURES {
        let (ok, text) = auth_from("127.0.0.5", h.control, "guess").await;
        assert!(
            !ok && text.contains("Authentication failed"),
            "try {i}: {text}"
        );
    }
    // Locked out now, even with the right password; the reply says for how long.
    let (ok, text) = auth_from("127.0.0.5", h.control, PASSWORD).await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("Too many failed authentications from 127.0.0.5; try again in"),
        "{text}"
    );
    // Another address is not affected.
    let (ok, text) = auth_from("127.0.0.6", h.control, PASSWORD).await;
    assert!(ok, "{text}");
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logged.contains("wrong password from 127.0.0.5"),
        "failures are logged with the address:\n{logged}"
    );
    assert!(
        logged.contains("auth from 127.0.0.5 refused: locked out"),
        "{logged}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_listener_caps_its_connections_per_client() {
    use herald::control::protocol::read_reply;
    let h = Herald::start(Opts {
        control: "max_connections = 3 max_connections_per_client = 2",
        ..Opts::default()
    })
    .await;
    let _a = connect_from("127.0.0.7", h.control).await;
    let _b = connect_from("127.0.0.7", h.control).await;
    let refused = connect_from("127.0.0.7", h.control).await;
    let reply = read_reply(&mut BufReader::new(refused)).await.unwrap();
    assert!(!reply.ok);
    assert!(
        reply.text.contains("max_connections_per_client"),
        "{}",
        reply.text
    );
    let (ok, text) = auth_from("127.0.0.8", h.control, PASSWORD).await;
    assert!(ok, "{text}");
    h.stop().await;
}

/// A console client that sends commands and never reads the replies does not hold its connection for good: a reply
/// not taken within the listener's `timeout` closes the connection (it would otherwise hold a slot of
/// `max_connections` past every timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_client_that_does_not_read_is_disconnected() {
    let h = Herald::start(Opts {
        control: "timeout = 1",
        ..Opts::default()
    })
    .await;
    let socket = TcpSocket::new_v4().unwrap();
    // A small window, so that unread replies fill both ends' buffers soon.
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(h.control).await.unwrap();
    // Each line gets "Authentication required…": far more reply bytes than the buffers hold.
    let lines = "help\n".repeat(16 * 1024);
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if s.write_all(lines.as_bytes()).await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "the connection stayed open while its client read nothing"
    );
    h.stop().await;
}

/// Sends `request` on a fresh connection and returns the whole answer (the server closes or answers in full).
async fn raw_http(to: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(to).await.unwrap();
    let _ = s.write_all(request).await;
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&got);
                    // A complete answer with a content-length: stop there (keep-alive).
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .map(str::to_owned)
                            })
                            .and_then(|v| v.trim().parse::<usize>().ok());
                        if len.is_some_and(|n| body.len() >= n) {
                            return;
                        }
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_http_error_has_a_json_body_even_those_hyper_writes() {
    let h = Herald::start(Opts {
        http: "max_request_size = 100",
        ..Opts::default()
    })
    .await;
    let auth = format!("authorization: Bearer {KEY}\r\n");
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "malformed header line",
            b"GET /healthz HTTP/1.1\r\nhost: x\r\nthis is not a header\r\n\r\n".to_vec(),
            400,
        ),
        ("bad method", b"G(T /healthz HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), 400),
        ("bad path", b"GET /a\x01b HTTP/1.1\r\nhost: x\r\n\r\n".to_vec(), 400),
        (
            "headers too large",
            format!(
                "GET /healthz HTTP/1.1\r\nhost: x\r\nx-big: {}\r\n\r\n",
                "a".repeat(600 * 1024)
            )
            .into_bytes(),
            431,
        ),
        (
            "unknown path",
            format!("GET /no/such/thing HTTP/1.1\r\nhost: x\r\n{auth}\r\n").into_bytes(),
            404,
        ),
        (
            "wrong method",
            format!("GET /api/v1/push HTTP/1.1\r\nhost: x\r\n{auth}\r\n").into_bytes(),
            405,
        ),
        (
            "no API key",
            b"POST /api/v1/push HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{}".to_vec(),
            401,
        ),
        (
            "bad JSON",
            format!(
                "POST /api/v1/push HTTP/1.1\r\nhost: x\r\n{auth}content-type: application/json\r\n\
                 content-length: 9\r\n\r\n{{\"domain\""
            )
            .into_bytes(),
            400,
        ),
        (
            "wrong content type, not JSON",
            format!(
                "POST /api/v1/push HTTP/1.1\r\nhost: x\r\n{auth}content-type: text/plain\r\n\
                 content-length: 5\r\n\r\nhello"
            )
            .into_bytes(),
            400,
        ),
        (
            "body too large",
            format!(
                "POST /api/v1/push HTTP/1.1\r\nhost: x\r\n{auth}content-length: 101\r\n\r\n{}",
                "x".repeat(101)
            )
            .into_bytes(),
            413,
        ),
        (
            "bad chunked body",
            format!(
                "POST /api/v1/push HTTP/1.1\r\nhost: x\r\n{auth}transfer-encoding: chunked\r\n\r\nzz\r\n"
            )
            .into_bytes(),
            400,
        ),
    ];
    for (what, request, want) in cases {
        let answer = raw_http(h.http, &request).await;
        assert!(!answer.is_empty(), "{what}: no answer");
        let (status, json) = status_and_json(&answer);
        assert_eq!(status, want, "{what}: {answer}");
        assert!(!error_of(&json).is_empty(), "{what}: {json}");
    }
    h.stop().await;
}

/// An MCMT message with `parts` push parts (docs/momentum-compat.md#mcmt-format), CRLF line endings.
fn mcmt_message(parts: usize) -> String {
    let mut m = String::from(
        "From: app@backend.example\r\nTo: push@doors.example\r\nSubject: push\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/vnd.msys.mcmt; boundary=\"B\"\r\n\r\n\
         --B\r\nContent-Type: message/rfc822\r\n\r\nSubject: the email\r\n\r\nNot delivered.\r\n",
    );
    for i in 0..parts {
        m.push_str(&format!(
            "--B\r\nContent-Type: message/vnd.msys.apn\r\n\r\n\r\n{{\"aps\":{{\"alert\":\"part {i}\"}}}}\r\n"
        ));
    }
    m.push_str("--B--\r\n");
    m
}

/// A minimal SMTP client: reads one reply (multi-line aware) and returns its last line.
async fn smtp_reply(r: &mut BufReader<tokio::net::tcp::OwnedReadHalf>) -> String {
    use tokio::io::AsyncBufReadExt;
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(WAIT, r.read_line(&mut line))
            .await
            .expect("no SMTP reply in time")
            .unwrap();
        assert!(n > 0, "the server closed the connection");
        if line.as_bytes().get(3) == Some(&b' ') {
            return line.trim_end().to_owned();
        }
    }
}

/// Sends one message to `rcpts` and returns every reply from MAIL on (MAIL, each RCPT, DATA, end of data);
/// stops early at the first refusal of MAIL or DATA.
async fn smtp_send(to: SocketAddr, rcpts: &[String], message: &str) -> Vec<String> {
    let (r, mut w) = TcpStream::connect(to).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    let mut replies = Vec::new();
    assert!(smtp_reply(&mut r).await.starts_with("220"));
    w.write_all(b"EHLO client.example\r\n").await.unwrap();
    assert!(smtp_reply(&mut r).await.starts_with("250"));
    w.write_all(b"MAIL FROM:<app@backend.example>\r\n")
        .await
        .unwrap();
    replies.push(smtp_reply(&mut r).await);
    if !replies[0].starts_with("250") {
        return replies;
    }
    for rcpt in rcpts {
        w.write_all(format!("RCPT TO:<{rcpt}>\r\n").as_bytes())
            .await
            .unwrap();
        replies.push(smtp_reply(&mut r).await);
    }
    w.write_all(b"DATA\r\n").await.unwrap();
    let data = smtp_reply(&mut r).await;
    replies.push(data.clone());
    if !data.starts_with("354") {
        return replies;
    }
    w.write_all(message.as_bytes()).await.unwrap();
    w.write_all(b".\r\n").await.unwrap();
    replies.push(smtp_reply(&mut r).await);
    let _ = w.write_all(b"QUIT\r\n").await;
    replies
}

/// POSTs `body` to /api/v1/push with the API key; returns (status, retry-after, JSON body).
async fn push(h: &Herald, body: &serde_json::Value) -> (u16, Option<String>, serde_json::Value) {
    let answer = reqwest::Client::new()
        .post(h.url("/api/v1/push"))
        .bearer_auth(KEY)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = answer.status().as_u16();
    let retry = answer
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry, answer.json().await.unwrap())
}

fn tokens_body(range: std::ops::Range<usize>) -> serde_json::Value {
    serde_json::json!({
        "domain": DOMAIN,
        "tokens": range.map(token).collect::<Vec<_>>(),
        "payload": {"aps": {"alert": "hi"}},
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_and_messages_are_refused_naming_the_limit() {
    let h = Herald::start(Opts {
        http: "max_notifications_per_request = 50",
        smtp: "max_notifications_per_message = 50",
        ..Opts::default()
    })
    .await;
    // REST, native API: one token too many.
    let (status, _, json) = push(&h, &tokens_body(0..51)).await;
    assert_eq!(status, 413, "{json}");
    assert!(
        error_of(&json).contains("51 notifications")
            && error_of(&json).contains("max_notifications_per_request is 50"),
        "{json}"
    );
    let (status, _, json) = push(&h, &tokens_body(0..50)).await;
    assert_eq!(status, 202, "{json}");
    // REST, Momentum's inject: 51 recipients.
    let recipients: Vec<serde_json::Value> = (100..151)
        .map(|i| serde_json::json!({"to": format!("{}@{DOMAIN}", token(i))}))
        .collect();
    let template = "From: a@b\nTo: <%= :to %>\nMIME-Version: 1.0\nContent-Type: multipart/vnd.msys.mcmt; boundary=B\n\n--B\nContent-Type: message/vnd.msys.apn\n\n\n{\"aps\":{\"alert\":\"x\"}}\n--B--\n";
    let answer = reqwest::Client::new()
        .post(h.url("/v1.0/inject"))
        .bearer_auth(KEY)
        .json(&serde_json::json!({"template": template, "recipients": recipients}))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 413);
    let json: serde_json::Value = answer.json().await.unwrap();
    assert!(
        error_of(&json).contains("max_notifications_per_request"),
        "{json}"
    );
    // The default max_request_size refuses a body over 10 MiB before reading it.
    let answer = raw_http(
        h.http,
        format!(
            "POST /api/v1/push HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {KEY}\r\ncontent-length: 10485761\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let (status, json) = status_and_json(&answer);
    assert_eq!(status, 413, "{answer}");
    assert!(
        error_of(&json).contains("max_request_size is 10485760"),
        "{json}"
    );
    // SMTP: 10 push parts × 6 recipients = 60 notifications.
    let rcpts: Vec<String> = (200..206)
        .map(|i| format!("{}@{DOMAIN}", token(i)))
        .collect();
    let replies = smtp_send(h.smtp, &rcpts, &mcmt_message(10)).await;
    let last = replies.last().unwrap();
    assert!(last.starts_with("552 5.3.4"), "{replies:?}");
    assert!(
        last.contains("60 notifications") && last.contains("max_notifications_per_message is 50"),
        "{last}"
    );
    let replies = smtp_send(h.smtp, &rcpts[..5], &mcmt_message(10)).await;
    assert!(
        replies.last().unwrap().starts_with("250"),
        "50 is within the limit: {replies:?}"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_resident_queue_refuses_new_work_instead_of_growing() {
    let h = Herald::start(Opts {
        global: "max_resident_notifications = 100",
        ..Opts::default()
    })
    .await;
    // APNs is unreachable: what is accepted stays in memory, retrying.
    let (status, _, json) = push(&h, &tokens_body(0..60)).await;
    assert_eq!(status, 202, "{json}");
    // 60 more do not fit in the 40 left: refused as a whole, nothing of it accepted.
    let (status, retry, json) = push(&h, &tokens_body(60..120)).await;
    assert_eq!(status, 503, "{json}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(
        error_of(&json).contains("queue full")
            && error_of(&json).contains("max_resident_notifications = 100"),
        "{json}"
    );
    let (status, _, json) = push(&h, &tokens_body(60..100)).await;
    assert_eq!(status, 202, "the last 40 fit: {json}");
    // Full: REST 503, SMTP 452 4.3.1 at MAIL; the console and /healthz still answer.
    let (status, retry, json) = push(&h, &tokens_body(100..101)).await;
    assert_eq!((status, retry.as_deref()), (503, Some("1")), "{json}");
    let replies = smtp_send(
        h.smtp,
        &[format!("{}@{DOMAIN}", token(101))],
        &mcmt_message(1),
    )
    .await;
    assert!(replies[0].starts_with("452 4.3.1"), "{replies:?}");
    assert!(
        replies[0].contains("max_resident_notifications"),
        "{replies:?}"
    );
    let ok = reqwest::get(h.url("/healthz")).await.unwrap();
    assert_eq!(ok.status(), 200);
    let (ok, text) = console(h.control, PASSWORD, "summary").await;
    assert!(ok, "{text}");
    assert_eq!(h.server.engine.resident_room(), 0);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_smtp_message_trickling_line_by_line_is_cut_off() {
    let h = Herald::start(Opts {
        smtp: "timeout = 2",
        ..Opts::default()
    })
    .await;
    let (r, mut w) = TcpStream::connect(h.smtp).await.unwrap().into_split();
    let mut r = BufReader::new(r);
    assert!(smtp_reply(&mut r).await.starts_with("220"));
    for (cmd, want) in [
        ("EHLO client.example\r\n".to_string(), "250"),
        ("MAIL FROM:<a@b.example>\r\n".to_string(), "250"),
        (format!("RCPT TO:<{}@{DOMAIN}>\r\n", token(1)), "250"),
        ("DATA\r\n".to_string(), "354"),
    ] {
        w.write_all(cmd.as_bytes()).await.unwrap();
        let reply = smtp_reply(&mut r).await;
        assert!(reply.starts_with(want), "{cmd}: {reply}");
    }
    // Every line comes well within the 2 s timeout (a stall of the machine short of that does not end the
    // session early), but the message never ends.
    let writer = tokio::spawn(async move {
        let deadline = Instant::now() + 3 * WAIT;
        while Instant::now() < deadline {
            if w.write_all(b"X-Trickle: more\r\n").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    // The cut comes 20 s (ten timeouts) after DATA: waited for with a deadline of its own, past the 20 s a reply
    // is otherwise given.
    let reply = tokio::time::timeout(3 * WAIT, async {
        use tokio::io::AsyncBufReadExt;
        let mut line = String::new();
        r.read_line(&mut line).await.unwrap();
        line.trim_end().to_owned()
    })
    .await
    .expect("the trickling message was not cut off");
    assert!(reply.starts_with("421 4.4.2"), "{reply}");
    assert!(reply.contains("did not arrive within 20 s"), "{reply}");
    writer.abort();
    h.stop().await;
}

/// Kills the spawned daemon when the test ends, however it ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_descriptor_limit_the_console_and_the_spool_still_work() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let pki = Pki::generate(&path.join("pki"), &[TOPIC.to_string()]).unwrap();
    let config = path.join("herald.conf");
    std::fs::write(
        &config,
        format!(
            r#"
spool_dir = "{spool}"
http_listener {{ listen "127.0.0.1:0" {{ max_connections_per_client = 10000 max_connections = 10000 }} }}
control_listener {{ listen "127.0.0.1:0" {{ control_password = "{PASSWORD}" }} }}
domain "{DOMAIN}" {{
{credentials}  retry_interval = 3600
}}
"#,
            spool = path.join("spool").display(),
            credentials = support::token_auth_options(&pki, support::free_port(), TOPIC),
        ),
    )
    .unwrap();
    // 640 descriptors in all (soft and hard): 512 stay in reserve, 128 are for network clients.
    let mut child = Child(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "ulimit -n 640 && exec '{}' serve -c '{}'",
                env!("CARGO_BIN_EXE_herald"),
                config.display()
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    std::io::BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let addrs: serde_json::Value = serde_json::from_str(&ready).unwrap();
    let http: SocketAddr = addrs["http"][0].as_str().unwrap().parse().unwrap();
    let control: SocketAddr = addrs["control"][0].as_str().unwrap().parse().unwrap();
    // The first connection is admitted; then the flood takes every network descriptor there is.
    let mut first = TcpStream::connect(http).await.unwrap();
    first
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = first.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let mut flood = Vec::new();
    for _ in 0..300 {
        flood.push(TcpStream::connect(http).await.unwrap());
    }
    let mut refused = TcpStream::connect(http).await.unwrap();
    let answer = until_closed(&mut refused).await;
    assert!(
        answer.contains("503") && answer.contains("file descriptors"),
        "{answer}"
    );
    // The console still answers, and an admitted client still gets its notifications spooled.
    let (ok, text) = console(control, PASSWORD, "version").await;
    assert!(ok && text.starts_with("herald "), "{text}");
    let body = tokens_body(0..3).to_string();
    first
        .write_all(
            format!(
                "POST /api/v1/push HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let n = tokio::time::timeout(WAIT, first.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    drop(flood);
}

/// On a dual-stack listener (`[::]:port`) an IPv4 client arrives as `::ffff:a.b.c.d`: the address lists and the
/// key lockout must still see the IPv4 address (else an IPv4 block in `always_deny` would not apply, and every IPv4
/// client would share one /64 of wrong keys).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_listener_sees_ipv4_clients_as_ipv4() {
    if std::net::TcpListener::bind("[::]:0").is_err() {
        return; // no IPv6 on this machine
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let config = path.join("herald.conf");
    std::fs::write(
        &config,
        format!(
            r#"
spool_dir = "{spool}"
http_listener {{
  listen "[::]:0" {{ api_key = "{KEY}" always_deny = ( 127.0.0.2/32 ) }}
}}
domain "{DOMAIN}" {{ apn_topic = "{TOPIC}" }}
"#,
            spool = path.join("spool").display(),
        ),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let port = server.addrs().await.http[0].port();
    let client = |from: &str| {
        reqwest::Client::builder()
            .local_address(Some(from.parse().unwrap()))
            .build()
            .unwrap()
    };
    let r = client("127.0.0.2")
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(
        r.text()
            .await
            .unwrap()
            .contains("client address 127.0.0.2 is not allowed")
    );
    // Wrong keys from one IPv4 client lock out that client only.
    let push = |from: &str, key: &str| {
        client(from)
            .get(format!("http://127.0.0.1:{port}/api/v1/tokens/invalid"))
            .bearer_auth(key)
            .send()
    };
    for _ in 0..5 {
        assert_eq!(push("127.0.0.3", "wrong").await.unwrap().status(), 401);
    }
    let r = push("127.0.0.3", KEY).await.unwrap();
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("from 127.0.0.3"));
    assert_eq!(push("127.0.0.4", KEY).await.unwrap().status(), 200);
    server.shutdown(Duration::from_secs(2)).await;
}

/// On a dual-stack listener (`[::]:port`) each IPv4 client has its own `max_connections_per_client`, on the HTTP
/// and ESMTP listeners alike: counted as `::ffff:a.b.c.d`, all of them would share the one /64 `::/64`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dual_stack_listener_caps_each_ipv4_client_apart() {
    if std::net::TcpListener::bind("[::]:0").is_err() {
        return; // no IPv6 on this machine
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    let config = path.join("herald.conf");
    std::fs::write(
        &config,
        format!(
            r#"
spool_dir = "{spool}"
http_listener {{ listen "[::]:0" {{ max_connections_per_client = 2 }} }}
esmtp_listener {{ listen "[::]:0" {{ max_connections_per_client = 2 }} }}
domain "{DOMAIN}" {{ apn_topic = "{TOPIC}" }}
"#,
            spool = path.join("spool").display(),
        ),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    let addrs = server.addrs().await;
    let v4 = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    for (name, door) in [
        ("http", v4(addrs.http[0].port())),
        ("smtp", v4(addrs.esmtp[0].port())),
    ] {
        // What a new connection from `from` is told first (after a request, over HTTP, when `ask`: a refused
        // client is told at once, and a request could reset the connection before the refusal is read).
        let greeting = |from: &'static str, ask: bool| async move {
            let mut s = connect_from(from, door).await;
            if name == "http" && ask {
                s.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                    .await
                    .unwrap();
            }
            let mut buf = [0u8; 512];
            let n = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .unwrap()
                .unwrap_or(0);
            (s, String::from_utf8_lossy(&buf[..n]).into_owned())
        };
        let admitted = |text: &str| text.starts_with("HTTP/1.1 200") || text.starts_with("220");
        let mut held = Vec::new();
        for _ in 0..2 {
            let (s, text) = greeting("127.0.0.2", true).await;
            assert!(admitted(&text), "{name}: {text:?}");
            held.push(s);
        }
        let (_s, text) = greeting("127.0.0.2", false).await;
        assert!(
            text.contains("max_connections_per_client"),
            "{name}: {text:?}"
        );
        let (_s, text) = greeting("127.0.0.3", true).await;
        assert!(
            admitted(&text),
            "{name}: another IPv4 client is refused: {text:?}"
        );
    }
    server.shutdown(Duration::from_secs(2)).await;
}

/// The routes merged into the REST application (status queries, broadcasts, channels) hold a body to the
/// listener's own `max_request_size`, not to the option's default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_holds_a_body_to_the_listeners_max_request_size() {
    let h = Herald::start(Opts {
        http: "max_request_size = 1000",
        ..Opts::default()
    })
    .await;
    let ids: Vec<String> = (0..100).map(|i| format!("{i:032x}")).collect();
    let body = serde_json::json!({ "ids": ids }).to_string();
    assert!(body.len() > 1000);
    let r = reqwest::Client::new()
        .post(h.url("/api/v1/notifications/query"))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let text = r.text().await.unwrap();
    assert!(text.contains("max_request_size is 1000"), "{text}");
    h.stop().await;
}

/// A request needing more notifications than the queue ever holds at once is refused for good (413, naming the
/// option), not told to retry (503) for ever; one that fits later is told to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_larger_than_the_queue_ever_holds_is_refused_for_good() {
    let h = Herald::start(Opts {
        global: "max_resident_notifications = 100",
        ..Opts::default()
    })
    .await;
    let (status, retry, json) = push(&h, &tokens_body(0..101)).await;
    assert_eq!(status, 413, "{json}");
    assert_eq!(retry, None, "{json}");
    assert!(
        error_of(&json).contains("101 notifications")
            && error_of(&json).contains("max_resident_notifications = 100")
            && error_of(&json).contains("split"),
        "{json}"
    );
    let (status, _, json) = push(&h, &tokens_body(0..100)).await;
    assert_eq!(status, 202, "100 fit: {json}");
    let (status, _, json) = push(&h, &tokens_body(100..101)).await;
    assert_eq!(status, 503, "full now, room later: {json}");
    h.stop().await;
}

/// A native request of the wrong shape is a `400` naming the field whatever room the queue has: larger than the
/// queue ever holds, or while it is full, it is not taken for one to split (413) or to retry (503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_of_the_wrong_shape_is_400_whatever_room_the_queue_has() {
    let h = Herald::start(Opts {
        global: "max_resident_notifications = 100",
        ..Opts::default()
    })
    .await;
    // Each with the error it gets: no payload for the tokens, both lists, a payload next to the notifications.
    let wrong_shapes = |range: std::ops::Range<usize>| {
        let items: Vec<_> = range
            .clone()
            .map(|i| serde_json::json!({"token": token(i), "payload": {}}))
            .collect();
        let mut without_payload = tokens_body(range);
        without_payload.as_object_mut().unwrap().remove("payload");
        let mut with_both = without_payload.clone();
        with_both["notifications"] = serde_json::json!(items);
        let payload_next_to_notifications =
            serde_json::json!({"domain": DOMAIN, "notifications": items, "payload": {}});
        [
            (without_payload, "payload: missing"),
            (
                with_both,
                "tokens, notifications: give one of them, not both",
            ),
            (
                payload_next_to_notifications,
                "payload: not allowed with \"notifications\"",
            ),
        ]
    };
    // More than the queue ever holds.
    for (body, error) in wrong_shapes(0..101) {
        let (status, _, json) = push(&h, &body).await;
        assert_eq!(status, 400, "{json}");
        assert!(error_of(&json).starts_with(error), "{json}");
    }
    // The queue full.
    let (status, _, json) = push(&h, &tokens_body(0..100)).await;
    assert_eq!(status, 202, "{json}");
    for (body, error) in wrong_shapes(100..101) {
        let (status, _, json) = push(&h, &body).await;
        assert_eq!(status, 400, "{json}");
        assert!(error_of(&json).starts_with(error), "{json}");
    }
    h.stop().await;
}

/// A domain whose provider key herald cannot read is the operator's to fix: the native API answers 503 (retry), not
/// 400, naming the key file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_whose_key_cannot_be_read_is_a_temporary_refusal() {
    let h = Herald::start(Opts::default()).await;
    let config = h.dir.join("herald.conf");
    let text = std::fs::read_to_string(&config).unwrap();
    let missing = h.dir.join("no-such-key.p8");
    let broken: String = text
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("apn_key ") {
                format!("  apn_key = \"{}\"\n", missing.display())
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(broken, text, "the configuration names an apn_key");
    std::fs::write(&config, broken).unwrap();
    h.server.reload(None).await.unwrap();
    let (status, _, json) = push(&h, &tokens_body(0..1)).await;
    assert_eq!(status, 503, "{json}");
    assert!(
        error_of(&json).contains("no-such-key.p8"),
        "the key file is named: {json}"
    );
    h.stop().await;
}

/// An injection whose template has two push parts renders two notifications per recipient: the room it takes
/// before rendering (one per recipient) is topped up before anything is stored, or the request is refused with
/// nothing stored — for now (503) when the queue holds too much to take it, for good (413) when it is larger than the
/// queue ever holds — never stored and then left waiting for room unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injection_rendering_more_than_the_room_left_is_refused_before_it_is_stored() {
    let h = Herald::start(Opts {
        global: "max_resident_notifications = 100",
        ..Opts::default()
    })
    .await;
    let template = "From: a@b\nTo: <%= :to %>\nMIME-Version: 1.0\nContent-Type: multipart/vnd.msys.mcmt; boundary=B\n\n\
        --B\nContent-Type: message/vnd.msys.apn\n\n\n{\"aps\":{\"alert\":\"one\"}}\n\
        --B\nContent-Type: message/vnd.msys.apn\n\n\n{\"aps\":{\"alert\":\"two\"}}\n--B--\n";
    let inject = |range: std::ops::Range<usize>| {
        let recipients: Vec<serde_json::Value> = range
            .map(|i| serde_json::json!({"to": format!("{}@{DOMAIN}", token(i))}))
            .collect();
        reqwest::Client::new()
            .post(h.url("/v1.0/inject"))
            .bearer_auth(KEY)
            .timeout(Duration::from_secs(20))
            .json(&serde_json::json!({"template": template, "recipients": recipients}))
            .send()
    };
    // 60 recipients, 120 notifications: more than the 100 the queue ever holds.
    let answer = inject(0..60).await.expect("answered, not left waiting");
    assert_eq!(answer.status(), 413);
    let json: serde_json::Value = answer.json().await.unwrap();
    assert!(
        error_of(&json).contains("max_resident_notifications = 100"),
        "{json}"
    );
    assert_eq!(
        h.server.engine.resident_room(),
        100,
        "nothing was taken or stored"
    );
    // 40 recipients, 80 notifications: accepted (and held: no APNs answers here).
    let answer = inject(100..140).await.unwrap();
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    assert_eq!(h.server.engine.resident_room(), 20);
    // 15 recipients, 30 notifications: room for 15 is there before rendering, not for 30 after.
    let answer = inject(200..215).await.expect("answered, not left waiting");
    assert_eq!(answer.status(), 503);
    let json: serde_json::Value = answer.json().await.unwrap();
    assert!(
        error_of(&json).contains("max_resident_notifications = 100"),
        "{json}"
    );
    assert_eq!(
        h.server.engine.resident_room(),
        20,
        "nothing more was taken or stored"
    );
    h.stop().await;
}
