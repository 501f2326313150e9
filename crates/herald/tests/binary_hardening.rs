//! Binary-protocol connections that must neither stall a domain nor spin on a gateway that takes no work, over real
//! sockets and real TLS (docs/apns-protocol.md#binary-error-packet):
//!
//! - a gateway that stops reading: the connection whose write waits takes no more work once
//!   `delivery_response_timeout` has passed, new work goes out on a second connection meanwhile, and what the stalled
//!   one carried comes back unsent at its write timeout, to be delivered once, without an attempt counted;
//! - a gateway that closes every connection right after the TLS handshake (the simulator refusing a certificate
//!   for the other environment): each connection is a failed connection attempt, so the attempts back off and the
//!   queue is delayed after `mx_failures_to_delay`, instead of one new connection per batch;
//! - an error packet with status 0 ("No errors encountered", which something on the way may send): a transient
//!   failure, retried, not the notification given up for good.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use herald::logs::Logs;
use herald::logs::apnlog::{ApnLog, ApnLogFormats};
use herald::logs::file::LogFile;
use herald::logs::mainlog::MainLog;
use herald::outbound::settings::{DeliverySettings, RouteProtocol};
use herald::queue::message::{IdGenerator, Notification, unix_now};
use herald::queue::stats::DomainStats;
use herald::queue::{Engine, EngineLimits, MemoryInvalidTokens, StaticResolver};
use herald_apns::binary::{BinaryFormat, NotificationDecoder};
use herald_apns::client::PushRequest;
use herald_apns::client::connect::Endpoint;
use herald_apns::identity::{ClientIdentity, RootSource, client_config};
use herald_apns::push::{Priority, PushType};
use herald_apns::token_hex::DeviceToken;
use herald_sim::{CertVariant, Pki, SimConfig, Simulator};
use support::{log_fields, test_settings};
use tokio::io::AsyncReadExt;

const TOPIC: &str = "com.example.binary";
const DOMAIN: &str = "binary.example";
/// How long a test waits for what it expects: far below the hour a counted attempt would wait for its retry.
const WAIT: Duration = Duration::from_secs(60);
const AN_HOUR: Duration = Duration::from_secs(3600);

struct Harness {
    dir: tempfile::TempDir,
    pki: Pki,
    mainlog: PathBuf,
    logs: Logs,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
        let mainlog = dir.path().join("log/mainlog.ec");
        let logs = Logs {
            mainlog: vec![Arc::new(MainLog::new(
                LogFile::open(&mainlog, 0o644).unwrap(),
            ))],
            apnlog: vec![Arc::new(ApnLog::new(
                LogFile::open(&dir.path().join("log/apnlog.ec"), 0o644).unwrap(),
                ApnLogFormats::default(),
            ))],
            recent: None,
        };
        Harness {
            dir,
            pki,
            mainlog,
            logs,
        }
    }

    /// The binary protocol (frame format) to `addr` with the topic's `variant` certificate; a counted attempt is
    /// retried only after an hour.
    fn binary(&self, addr: SocketAddr, variant: CertVariant) -> DeliverySettings {
        let files = self.pki.client(TOPIC, variant).unwrap();
        let identity = ClientIdentity::from_pem_files(&files.cert, Some(&files.key)).unwrap();
        let roots = RootSource::CaFile(self.pki.manifest.ca_cert.clone());
        let tls = client_config(Some(&identity), roots, false).unwrap();
        let mut s = DeliverySettings {
            host_budget: None,
            ..test_settings(
                DOMAIN,
                TOPIC,
                RouteProtocol::Binary(BinaryFormat::Frame),
                Endpoint::new(addr.ip().to_string(), addr.port()),
                tls,
                None,
            )
        };
        // Silence for this long after a write counts as delivered: long enough that an error packet or a close
        // delayed by a loaded machine still comes within it.
        s.response_timeout = Duration::from_secs(2);
        s.retry.retry_interval = AN_HOUR;
        s.retry.max_retry_interval = AN_HOUR;
        s.retry.message_expiration = 48 * AN_HOUR;
        // The APNs expiration lies past the hour's retry: with the test settings' hour, a retry falling on the
        // expiration (once a second boundary passed since reception) fails at once instead of being delayed.
        s.apn_expiry = 48 * AN_HOUR;
        s
    }

    fn engine(&self, settings: DeliverySettings) -> Engine {
        Engine::new(
            Arc::new(StaticResolver::default().with(settings)),
            self.logs.clone(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits::default(),
        )
    }

    /// The mainlog's transient-failure lines (type `T`).
    fn transient_lines(&self) -> Vec<Vec<String>> {
        self.logs.flush();
        log_fields(&self.mainlog)
            .into_iter()
            .filter(|f| f.len() > 13 && f[4] == "T")
            .collect()
    }
}

fn token(i: usize) -> String {
    format!("{:064x}", 0xb1_0000_0000u64 + i as u64)
}

/// Submits one notification per token, each with a payload of about `payload_len` bytes.
async fn submit(engine: &Engine, tokens: &[String], payload_len: usize) {
    let ids = IdGenerator::new(1);
    for t in tokens {
        let n = Notification {
            id: ids.next(),
            batch_id: herald::queue::message::MessageId::NONE,
            conn_id: herald::queue::message::MessageId::NONE,
            domain: Arc::from(DOMAIN),
            binding: Arc::from("default"),
            push: PushRequest {
                token: DeviceToken::from_hex(t).unwrap(),
                topic: None,
                push_type: Some(PushType::Alert),
                priority: Some(Priority::Immediate),
                expiration: None,
                collapse_id: None,
                apns_id: None,
                payload: Bytes::from(format!(
                    "{{\"aps\":{{\"alert\":\"{}\"}}}}",
                    "x".repeat(payload_len.saturating_sub(20))
                )),
            },
            sender: Arc::from("sender@example.com"),
            recipient_given: None,
            received_at: unix_now(),
        };
        engine.submit(n).await.unwrap();
    }
}

/// Waits until `done` holds, failing after [`WAIT`] with `what`.
async fn wait_until(what: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{} within {WAIT:?}", what());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The payload size of the notifications sent to [`StallingGateway`] (the binary protocol takes 2048 at most).
const PAYLOAD: usize = 2000;

/// The most a TCP socket's send buffer grows to (Linux `tcp_wmem`), or 8 MiB where the system does not say.
fn send_buffer_limit() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(8 << 20)
}

/// A binary gateway that never reads from its first connection (with a receive buffer of a few KiB, so the
/// client's writes soon wait) and reads every later one, answering nothing: what it reads is delivered by silence.
struct StallingGateway {
    addr: SocketAddr,
    /// Connections accepted (TLS handshake done).
    accepted: Arc<AtomicUsize>,
    /// The tokens read, in order, on the connections after the first.
    read: Arc<Mutex<Vec<String>>>,
    /// How many notifications the domain had requeued when the first notification came on a later connection.
    requeued_at_second: Arc<Mutex<Option<u64>>>,
    /// The domain's counters, once it has some.
    stats: Arc<OnceLock<Arc<DomainStats>>>,
}

impl StallingGateway {
    async fn start(pki: &Pki) -> StallingGateway {
        let material = SimConfig::from_pki(&pki.manifest).unwrap().tls;
        let tls = herald_sim::tls::server_config(&material, true, false).unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(16).unwrap();
        let gateway = StallingGateway {
            addr: listener.local_addr().unwrap(),
            accepted: Arc::default(),
            read: Arc::default(),
            requeued_at_second: Arc::default(),
            stats: Arc::default(),
        };
        let (accepted, read, requeued_at_second, stats) = (
            gateway.accepted.clone(),
            gateway.read.clone(),
            gateway.requeued_at_second.clone(),
            gateway.stats.clone(),
        );
        tokio::spawn(async move {
            let mut stalled = Vec::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let Ok(mut stream) = tokio_rustls::TlsAcceptor::from(tls.clone())
                    .accept(tcp)
                    .await
                else {
                    continue;
                };
                if accepted.fetch_add(1, Ordering::SeqCst) == 0 {
                    // Kept open, never read.
                    stalled.push(stream);
                    continue;
                }
                let (read, requeued_at_second, stats) =
                    (read.clone(), requeued_at_second.clone(), stats.clone());
                tokio::spawn(async move {
                    let mut decoder = NotificationDecoder::default();
                    let mut buf = BytesMut::with_capacity(64 * 1024);
                    while stream.read_buf(&mut buf).await.is_ok_and(|n| n > 0) {
                        while let Ok(Some(d)) = decoder.decode(&mut buf) {
                            let mut first = requeued_at_second.lock().unwrap();
                            if first.is_none() {
                                *first = Some(
                                    stats.get().map_or(0, |s| s.requeued.load(Ordering::SeqCst)),
                                );
                            }
                            let token: String = d
                                .notification
                                .token
                                .iter()
                                .map(|b| format!("{b:02x}"))
                                .collect();
                            read.lock().unwrap().push(token);
                        }
                    }
                });
            }
        });
        gateway
    }
}

/// A gateway that stops reading makes the connection's write wait. Once it has waited for
/// `delivery_response_timeout` the connection takes no more work, and the pool, which does not count a draining
/// connection against `max_outbound_connections`, sends what waits on a second connection at once, not after the
/// write timeout. At the write timeout what the stalled connection carried comes back unsent, and goes out on the
/// second: every notification reaches the gateway once, with no attempt counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_stops_reading_gets_new_work_on_another_connection() {
    let h = Harness::new();
    let gateway = StallingGateway::start(&h.pki).await;
    let mut settings = h.binary(gateway.addr, CertVariant::Universal);
    settings.max_connections = 2;
    let engine = h.engine(settings);
    // More than the stalled connection's socket buffers take, so that its write waits with work still queued.
    let n = (send_buffer_limit() + (1 << 20)) / PAYLOAD;
    let tokens: Vec<String> = (0..n).map(token).collect();
    submit(&engine, &tokens[..1], PAYLOAD).await;
    let stats = engine.stats(DOMAIN).unwrap();
    let _ = gateway.stats.set(stats.clone());
    submit(&engine, &tokens[1..], PAYLOAD).await;
    wait_until(
        || {
            format!(
                "all delivered ({} delivered, {} requeued, {} connections, {} read)",
                stats.delivered.load(Ordering::SeqCst),
                stats.requeued.load(Ordering::SeqCst),
                gateway.accepted.load(Ordering::SeqCst),
                gateway.read.lock().unwrap().len()
            )
        },
        || stats.finished() >= n as u64,
    )
    .await;
    assert_eq!(stats.delivered.load(Ordering::SeqCst), n as u64);
    // The second connection took new work while the stalled one still held its own.
    assert_eq!(
        *gateway.requeued_at_second.lock().unwrap(),
        Some(0),
        "the second connection opened only once the stalled one had given its work back"
    );
    // What the stalled connection carried came back unsent and was sent again once.
    assert!(stats.requeued.load(Ordering::SeqCst) > 0);
    // Each notification reached the gateway once: on a later connection, or (a few) into the stalled
    // connection's receive buffer, whose TCP acknowledgement and silence made them delivered there.
    let mut counts: HashMap<String, usize> = HashMap::new();
    for t in gateway.read.lock().unwrap().iter() {
        *counts.entry(t.clone()).or_default() += 1;
    }
    assert!(
        counts.values().all(|&c| c == 1),
        "a notification was sent twice"
    );
    let unread = tokens.iter().filter(|t| !counts.contains_key(*t)).count();
    assert!(
        unread * PAYLOAD < 64 * 1024,
        "{unread} notifications never reached a connection that reads"
    );
    assert!(h.transient_lines().is_empty(), "an attempt was counted");
    assert_eq!(gateway.accepted.load(Ordering::SeqCst), 2);
}

/// The simulator closes a binary connection right after the TLS handshake when the client certificate is for the
/// other environment (here a production certificate on the sandbox simulator), before any answer. Such a
/// connection is a failed connection attempt, not a success: the attempts back off, and after
/// `mx_failures_to_delay` of them the queue is delayed, naming the cause, with no attempt counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_closing_every_connection_after_the_handshake_gets_backoff_and_a_delayed_queue() {
    let h = Harness::new();
    let mut config = SimConfig::from_pki(&h.pki.manifest).unwrap();
    config.record_in_memory = true;
    let sim = Simulator::start(config).await.unwrap();
    let mut settings = h.binary(sim.addrs.binary, CertVariant::Production);
    settings.max_connections = 1;
    // Each connection carries every waiting notification, and one lost with three connections in a row counts an
    // attempt: the queue is delayed before that.
    settings.mx_failures_to_delay = 2;
    let engine = h.engine(settings);
    let n = 20;
    let tokens: Vec<String> = (0..n).map(token).collect();
    submit(&engine, &tokens, 100).await;
    let stats = engine.stats(DOMAIN).unwrap();
    wait_until(
        || {
            format!(
                "{} of {n} notifications delayed; simulator: {:?}",
                stats.delayed.load(Ordering::SeqCst),
                sim.stats()
            )
        },
        || stats.delayed.load(Ordering::SeqCst) >= n,
    )
    .await;
    let connections = sim.stats().connections.binary.total;
    assert!(
        (2..=3).contains(&connections),
        "{connections} connections for {n} notifications"
    );
    assert_eq!(sim.stats().accepted.total, 0);
    let lines = h.transient_lines();
    assert_eq!(lines.len(), n, "{lines:?}");
    assert!(
        lines.iter().all(|f| f[9] == "0"
            && f[13].contains("before APNs accepted a notification on it")
            && f[13].contains("lost without an error packet")),
        "{:?}",
        lines[0]
    );
    drop(h.dir);
}

/// An error packet with status 0 ("No errors encountered") names a notification without saying what is wrong with
/// it; Apple never says when it is sent, so it more likely comes from a proxy or gateway on the way. The notification
/// is not given up for good: the failure is transient and takes the retry schedule
/// (docs/apns-protocol.md#binary-error-packet).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_packet_with_status_zero_is_a_transient_failure() {
    let h = Harness::new();
    let mut config = SimConfig::from_pki(&h.pki.manifest).unwrap();
    config.record_in_memory = true;
    config.scenario.binary_errors.insert("0".into(), 1.0);
    let sim = Simulator::start(config).await.unwrap();
    let engine = h.engine(h.binary(sim.addrs.binary, CertVariant::Universal));
    submit(&engine, &[token(0)], 100).await;
    let stats = engine.stats(DOMAIN).unwrap();
    wait_until(
        || format!("an answer; simulator: {:?}", sim.stats()),
        || stats.transient.load(Ordering::SeqCst) + stats.permanent.load(Ordering::SeqCst) > 0,
    )
    .await;
    assert_eq!(
        (
            stats.transient.load(Ordering::SeqCst),
            stats.permanent.load(Ordering::SeqCst)
        ),
        (1, 0),
        "status 0 gave the notification up"
    );
    let lines = h.transient_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0][13].contains("No errors encountered"),
        "{:?}",
        lines[0]
    );
    assert_eq!(sim.stats().rejected.binary_by_status["0"], 1);
}
