//! Outbound HTTP/2 connections that must not cost notifications, against the APNs simulator over real sockets and
//! real TLS (docs/apns-protocol.md#http2-connection):
//!
//! - a connection whose peer vanished while it sat idle (no FIN, no RST) is asked with a PING before it is given
//!   the next notification, which goes out on a new connection without an attempt counted;
//! - connections that open and then refuse all work (every provider token "expired", a GOAWAY right after the
//!   SETTINGS) count as failed connection attempts: they back off and delay the queue after
//!   `mx_failures_to_delay` instead of reconnecting once per notification;
//! - `503 Shutdown` retires the connection and hands the notification back once, unsent;
//! - the GOAWAY that ends a connection is logged with its reason.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::logs::Logs;
use herald::logs::apnlog::{ApnLog, ApnLogFormats};
use herald::logs::file::LogFile;
use herald::logs::mainlog::MainLog;
use herald::outbound::settings::{DeliverySettings, RouteProtocol};
use herald::queue::message::{IdGenerator, MessageId, Notification, unix_now};
use herald::queue::{Engine, EngineLimits, MemoryInvalidTokens, StaticResolver};
use herald_apns::client::PushRequest;
use herald_apns::client::connect::Endpoint;
use herald_apns::client::http2::LIVENESS_THRESHOLD;
use herald_apns::identity::{ClientIdentity, RootSource, client_config};
use herald_apns::provider_token::{ManualClock, ProviderTokenCache, SigningKey};
use herald_apns::push::{Priority, PushType};
use herald_apns::token_hex::DeviceToken;
use herald_sim::{CertVariant, Pki, SimConfig, SimHandle, Simulator};
use support::{log_fields, test_settings};

const TOPIC: &str = "com.example.liveness";
const DOMAIN: &str = "liveness.example";
/// How long a test waits for what it expects: far below the hour a notification counted as an attempt would wait
/// for its retry (`retry_interval = 3600` below), so such an attempt makes the test fail.
const WAIT: Duration = Duration::from_secs(60);
const AN_HOUR: Duration = Duration::from_secs(3600);

struct Harness {
    _dir: tempfile::TempDir,
    pki: Pki,
    sim: SimHandle,
    mainlog: PathBuf,
    logs: Logs,
}

impl Harness {
    async fn start(adjust: impl FnOnce(&mut SimConfig)) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
        let mut config = SimConfig::from_pki(&pki.manifest).unwrap();
        adjust(&mut config);
        let sim = Simulator::start(config).await.unwrap();
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
            _dir: dir,
            pki,
            sim,
            mainlog,
            logs,
        }
    }

    fn roots(&self) -> RootSource {
        RootSource::CaFile(self.pki.manifest.ca_cert.clone())
    }

    /// HTTP/2 to the simulator, one connection, a failed attempt retried only after an hour.
    fn base(&self, tls: Arc<rustls::ClientConfig>) -> DeliverySettings {
        let mut s = DeliverySettings {
            max_connections: 1,
            host_budget: None,
            idle_timeout: Some(AN_HOUR),
            keepalive: AN_HOUR,
            ..test_settings(
                DOMAIN,
                TOPIC,
                RouteProtocol::Http2,
                endpoint(self.sim.addrs.h2),
                tls,
                None,
            )
        };
        s.retry.retry_interval = AN_HOUR;
        s.retry.max_retry_interval = AN_HOUR;
        s.retry.message_expiration = 48 * AN_HOUR;
        // The APNs expiration is past the hour's retry too: a retry it would come after fails at once instead.
        s.apn_expiry = 48 * AN_HOUR;
        s
    }

    /// HTTP/2 with provider-token auth, the token cache on `clock` when given.
    fn h2_token(&self, clock: Option<Arc<ManualClock>>) -> DeliverySettings {
        let key = &self.pki.manifest.token_key;
        let signing = SigningKey::from_p8_file(&key.p8, &key.key_id, &key.team_id).unwrap();
        let refresh = Duration::from_secs(3000);
        let cache = match clock {
            Some(clock) => ProviderTokenCache::with_clock(signing, refresh, clock).unwrap(),
            None => ProviderTokenCache::new(signing, refresh).unwrap(),
        };
        let mut s = self.base(client_config(None, self.roots(), true).unwrap());
        s.auth = Some(cache);
        s
    }

    /// HTTP/2 with certificate auth (no one-stream limit before a first accepted request).
    fn h2_cert(&self) -> DeliverySettings {
        let files = self.pki.client(TOPIC, CertVariant::Universal).unwrap();
        let identity = ClientIdentity::from_pem_files(&files.cert, Some(&files.key)).unwrap();
        self.base(client_config(Some(&identity), self.roots(), true).unwrap())
    }

    fn engine(&self, settings: DeliverySettings) -> Engine {
        Engine::new(
            Arc::new(StaticResolver::default().with(settings)),
            self.logs.clone(),
            Arc::new(MemoryInvalidTokens::default()),
            EngineLimits::default(),
        )
    }

    fn mainlog_lines(&self) -> Vec<Vec<String>> {
        self.logs.flush();
        log_fields(&self.mainlog)
    }

    /// The mainlog's transient-failure lines (type `T`).
    fn transient_lines(&self) -> Vec<Vec<String>> {
        self.mainlog_lines()
            .into_iter()
            .filter(|f| f.len() > 13 && f[4] == "T")
            .collect()
    }

    fn rejected(&self, reason: &str) -> u64 {
        self.sim
            .stats()
            .rejected
            .by_reason
            .get(reason)
            .copied()
            .unwrap_or(0)
    }
}

fn endpoint(addr: std::net::SocketAddr) -> Endpoint {
    Endpoint::new(addr.ip().to_string(), addr.port())
}

fn token(i: usize) -> String {
    format!("{:064x}", 0x11fe_0000_0000u64 + i as u64)
}

/// Submits notifications for `tokens` with ids from `ids`; returns their ids in order.
async fn submit(engine: &Engine, tokens: &[String], ids: &IdGenerator) -> Vec<MessageId> {
    let mut out = Vec::new();
    for (i, t) in tokens.iter().enumerate() {
        let id = ids.next();
        let n = Notification {
            id,
            batch_id: MessageId::NONE,
            conn_id: MessageId::NONE,
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
                payload: Bytes::from(format!("{{\"aps\":{{\"alert\":\"n{i}\"}}}}")),
            },
            sender: Arc::from("sender@example.com"),
            recipient_given: None,
            received_at: unix_now(),
        };
        engine.submit(n).await.unwrap();
        out.push(id);
    }
    out
}

/// Waits until `done` holds, failing after [`WAIT`] with `what`.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `n` notifications reached a final outcome.
async fn wait_finished(engine: &Engine, n: u64) {
    wait_until(&format!("{n} notifications finished"), || {
        engine.stats(DOMAIN).map(|s| s.finished()).unwrap_or(0) >= n
    })
    .await;
    assert_eq!(engine.stats(DOMAIN).unwrap().finished(), n);
}

/// Waits until `n` notifications wait in the delayed queue.
async fn wait_delayed(engine: &Engine, sim: &SimHandle, n: usize) {
    let deadline = Instant::now() + WAIT;
    loop {
        let delayed = engine
            .stats(DOMAIN)
            .map_or(0, |s| s.delayed.load(Ordering::Relaxed));
        if delayed >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{delayed} of {n} notifications delayed within {WAIT:?}; simulator: {:?}",
            sim.stats()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A TCP relay to the simulator whose connections can be made to vanish: after [`Relay::vanish`] the connections
/// open until then forward nothing more either way, yet stay open (a peer gone without FIN or RST, as behind a NAT
/// that forgot the connection); connections opened later are relayed as usual.
struct Relay {
    addr: std::net::SocketAddr,
    /// Connections numbered below this forward nothing.
    cut_below: Arc<AtomicU64>,
    /// Connections accepted so far.
    accepted: Arc<AtomicU64>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut_below = Arc::new(AtomicU64::new(0));
        let accepted = Arc::new(AtomicU64::new(0));
        let (cut, count) = (cut_below.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let Ok(server) = tokio::net::TcpStream::connect(to).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                tokio::spawn(Relay::pipe(n, cr, sw, cut.clone()));
                tokio::spawn(Relay::pipe(n, sr, cw, cut.clone()));
            }
        });
        Relay {
            addr,
            cut_below,
            accepted,
        }
    }

    /// Copies `from` to `to` until either ends; once connection `n` is cut, reads and drops what comes.
    async fn pipe(
        n: u64,
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        cut_below: Arc<AtomicU64>,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let read = match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            if n < cut_below.load(Ordering::SeqCst) {
                continue;
            }
            if to.write_all(&buf[..read]).await.is_err() {
                break;
            }
        }
        // Keep the other side open while cut: a vanished peer sends no FIN.
        if n < cut_below.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
    }

    /// Every connection open now vanishes.
    fn vanish(&self) {
        self.cut_below
            .store(self.accepted.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    fn connections(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// A peer (or a NAT on the way) that drops an idle connection without a word, between keep-alive PINGs, does not
/// get the next notification: nothing has been heard on the connection for longer than the liveness threshold, so
/// a PING asks first; it goes unanswered, and the notification goes out on a new connection, unsent before, with
/// no attempt counted and nothing that could be a duplicate, long before the hour its retry would otherwise wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_peer_vanished_while_idle_does_not_eat_the_next_notification() {
    let h = Harness::start(|_| {}).await;
    let relay = Relay::start(h.sim.addrs.h2).await;
    let mut settings = h.h2_token(None);
    settings.endpoint = endpoint(relay.addr);
    let engine = h.engine(settings);
    let ids = IdGenerator::new(1);
    let mut all = submit(&engine, &[token(0)], &ids).await;
    wait_finished(&engine, 1).await;
    let answered = Instant::now();
    assert_eq!(relay.connections(), 1);
    // The connection sits idle past the threshold (its keep-alive PING is an hour away), then its peer vanishes.
    tokio::time::sleep_until((answered + LIVENESS_THRESHOLD + Duration::from_millis(500)).into())
        .await;
    relay.vanish();
    all.extend(submit(&engine, &[token(1)], &ids).await);
    wait_finished(&engine, 2).await;
    assert_eq!(
        relay.connections(),
        2,
        "the notification went on a new connection"
    );
    let lines = h.mainlog_lines();
    for id in &all {
        let finals: Vec<_> = lines
            .iter()
            .filter(|f| f.len() > 4 && f[1] == id.to_string() && (f[4] == "D" || f[4] == "P"))
            .collect();
        assert!(finals.len() == 1 && finals[0][4] == "D", "{id}: {finals:?}");
    }
    assert!(h.transient_lines().is_empty(), "an attempt was counted");
    assert!(
        !lines
            .iter()
            .any(|f| f.iter().any(|x| x.contains("may have accepted"))),
        "a possible duplicate was logged"
    );
    let record = h.sim.record();
    assert_eq!(record.len(), 2, "{record:?}");
}

/// Every provider token is expired for APNs (the host's clock far behind) while herald's clock says it is young,
/// so each connection carries one notification, is refused (`ExpiredProviderToken`) and stops taking work. Such a
/// connection is a failed connection attempt: the attempts back off, and after `mx_failures_to_delay` of them the
/// queue is delayed, instead of one new connection (one TLS handshake) per notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_refused_at_once_back_off_instead_of_reconnecting_per_notification() {
    let h = Harness::start(|c| c.token_max_age = Duration::ZERO).await;
    // Herald's clock says the token is new; the simulator's says it is 10 s old, past its limit.
    let clock = Arc::new(ManualClock::new(unix_now() - 10));
    let mut settings = h.h2_token(Some(clock));
    settings.mx_failures_to_delay = 5;
    let engine = h.engine(settings);
    let n = 50;
    submit(
        &engine,
        &(0..n).map(token).collect::<Vec<_>>(),
        &IdGenerator::new(1),
    )
    .await;
    wait_delayed(&engine, &h.sim, n).await;
    let connections = h.sim.stats().connections.h2.total;
    assert!(
        (5..=6).contains(&connections),
        "{connections} connections for {n} notifications"
    );
    assert_eq!(h.rejected("ExpiredProviderToken"), connections);
    // The queue's delay names the cause.
    let delayed: Vec<_> = h
        .transient_lines()
        .into_iter()
        .filter(|f| f[13].contains("before APNs accepted a notification on it"))
        .collect();
    assert!(!delayed.is_empty());
    assert!(
        delayed
            .iter()
            .all(|f| f[13].contains("ExpiredProviderToken")),
        "{:?}",
        delayed[0]
    );
}

/// A server that takes connections and processes nothing on them (a GOAWAY naming no stream at the first
/// request): connection after connection opens, has its notification refused (unsent, no attempt counted) and
/// closes. They count as failed attempts and the queue is delayed after `mx_failures_to_delay`, with the GOAWAY's
/// reason, instead of a tight reconnect loop that never counts an attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_sends_goaway_before_any_work_gets_backoff_not_a_reconnect_loop() {
    let h = Harness::start(|c| {
        c.scenario.goaway_first_request = true;
        c.scenario.goaway_reason = Some("NotTakingWork".into());
    })
    .await;
    let mut settings = h.h2_token(None);
    settings.mx_failures_to_delay = 5;
    let engine = h.engine(settings);
    let n = 20;
    submit(
        &engine,
        &(0..n).map(token).collect::<Vec<_>>(),
        &IdGenerator::new(1),
    )
    .await;
    wait_delayed(&engine, &h.sim, n).await;
    let connections = h.sim.stats().connections.h2.total;
    assert!(
        (5..=6).contains(&connections),
        "{connections} connections for {n} notifications"
    );
    assert_eq!(h.sim.stats().accepted.total, 0);
    // The queue's delay, one line per notification: each names the GOAWAY, and none counts an attempt.
    let lines = h.transient_lines();
    assert_eq!(lines.len(), n, "{lines:?}");
    assert!(
        lines.iter().all(|f| f[9] == "0"
            && f[13].contains(
                "before APNs accepted a notification on it: GOAWAY NO_ERROR (NotTakingWork)"
            )),
        "{:?}",
        lines[0]
    );
}

/// `503 Shutdown`: the APNs server is going down, and answers every new stream so until its GOAWAY. The
/// connection that got it takes no more work, and each notification comes back unsent once, to go out on a new
/// connection without an attempt counted; a second Shutdown in a row for it counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_answer_retires_the_connection_and_hands_the_notification_back_once() {
    let h = Harness::start(|c| {
        c.scenario.errors.insert("Shutdown".into(), 1.0);
    })
    .await;
    let engine = h.engine(h.h2_cert());
    let n = 5;
    submit(
        &engine,
        &(0..n).map(token).collect::<Vec<_>>(),
        &IdGenerator::new(1),
    )
    .await;
    wait_delayed(&engine, &h.sim, n).await;
    assert_eq!(
        h.rejected("Shutdown"),
        2 * n as u64,
        "each notification twice"
    );
    let connections = h.sim.stats().connections.h2.total;
    assert!(
        connections >= 2,
        "the connection went on taking work after Shutdown"
    );
    // Only the second Shutdown of each was an attempt.
    let lines = h.transient_lines();
    assert_eq!(lines.len(), n, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|f| f[10] == "0" && f[13].contains("Shutdown")),
        "{lines:?}"
    );
}

/// Everything logged through `tracing` by this test binary, from the first call on.
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
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

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The GOAWAY that ends a connection is logged with its error code and the reason of its debug data (h2 keeps
/// neither for a `NO_ERROR` GOAWAY), at info level for `NO_ERROR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_goaway_that_ends_a_connection_is_logged_with_its_reason() {
    let logs = captured_logs();
    let h = Harness::start(|c| {
        c.scenario.goaway_every = Some(1);
        c.scenario.goaway_reason = Some("HeraldLogsThisReason".into());
    })
    .await;
    let engine = h.engine(h.h2_token(None));
    submit(&engine, &[token(0)], &IdGenerator::new(1)).await;
    wait_finished(&engine, 1).await;
    let wanted = "GOAWAY NO_ERROR (HeraldLogsThisReason)";
    let line = || {
        let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        text.lines().find(|l| l.contains(wanted)).map(str::to_owned)
    };
    wait_until("the GOAWAY logged", || line().is_some()).await;
    let line = line().unwrap();
    assert!(line.contains("INFO"), "{line}");
}
