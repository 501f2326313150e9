//! The delivery engine against the APNs simulator over real sockets and real TLS: every scenario ends with each
//! notification delivered exactly once or failed with the right reason, and exactly one final outcome line per
//! notification in the mainlog and the apn_logger log.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald::logs::Logs;
use herald::logs::apnlog::{ApnLog, ApnLogFormats};
use herald::logs::file::LogFile;
use herald::logs::mainlog::MainLog;
use herald::outbound::settings::{DeliverySettings, RouteProtocol};
use herald::queue::message::{IdGenerator, MessageId, Notification, unix_now};
use herald::queue::{Engine, EngineLimits, MemoryInvalidTokens, StaticResolver};
use herald_apns::binary::BinaryFormat;
use herald_apns::client::PushRequest;
use herald_apns::client::connect::Endpoint;
use herald_apns::identity::{ClientIdentity, RootSource, client_config};
use herald_apns::provider_token::{ManualClock, ProviderTokenCache, SigningKey};
use herald_apns::push::{Priority, PushType};
use herald_apns::token_hex::DeviceToken;
use herald_sim::{CertVariant, Pki, SimConfig, SimHandle, Simulator};
use support::{log_fields, test_settings};

const TOPIC: &str = "com.example.engine";
const DOMAIN: &str = "apps.example";
const WAIT: Duration = Duration::from_secs(60);

struct Harness {
    _dir: tempfile::TempDir,
    pki: Pki,
    sim: SimHandle,
    mainlog: PathBuf,
    apnlog: PathBuf,
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
        let apnlog = dir.path().join("log/apnlog.ec");
        let logs = Logs {
            mainlog: vec![Arc::new(MainLog::new(
                LogFile::open(&mainlog, 0o644).unwrap(),
            ))],
            apnlog: vec![Arc::new(ApnLog::new(
                LogFile::open(&apnlog, 0o644).unwrap(),
                ApnLogFormats::default(),
            ))],
            recent: None,
        };
        Harness {
            _dir: dir,
            pki,
            sim,
            mainlog,
            apnlog,
            logs,
        }
    }

    fn base_settings(
        &self,
        protocol: RouteProtocol,
        endpoint: Endpoint,
        tls: Arc<rustls::ClientConfig>,
    ) -> DeliverySettings {
        DeliverySettings {
            max_connections: 4,
            host_budget: None,
            max_window: 100_000,
            ..test_settings(DOMAIN, TOPIC, protocol, endpoint, tls, None)
        }
    }

    fn roots(&self) -> RootSource {
        RootSource::CaFile(self.pki.manifest.ca_cert.clone())
    }

    fn client_identity(&self) -> ClientIdentity {
        let files = self.pki.client(TOPIC, CertVariant::Universal).unwrap();
        ClientIdentity::from_pem_files(&files.cert, Some(&files.key)).unwrap()
    }

    fn token_cache(&self, clock: Option<Arc<ManualClock>>) -> ProviderTokenCache {
        let key = &self.pki.manifest.token_key;
        let signing = SigningKey::from_p8_file(&key.p8, &key.key_id, &key.team_id).unwrap();
        match clock {
            Some(clock) => {
                ProviderTokenCache::with_clock(signing, Duration::from_secs(3000), clock).unwrap()
            }
            None => ProviderTokenCache::new(signing, Duration::from_secs(3000)).unwrap(),
        }
    }

    /// HTTP/2 with provider-token auth.
    fn h2_token(&self) -> DeliverySettings {
        let tls = client_config(None, self.roots(), true).unwrap();
        let mut s = self.base_settings(RouteProtocol::Http2, endpoint(self.sim.addrs.h2), tls);
        s.auth = Some(self.token_cache(None));
        s
    }

    /// HTTP/2 with certificate auth.
    fn h2_cert(&self) -> DeliverySettings {
        let tls = client_config(Some(&self.client_identity()), self.roots(), true).unwrap();
        self.base_settings(RouteProtocol::Http2, endpoint(self.sim.addrs.h2), tls)
    }

    fn binary(&self) -> DeliverySettings {
        let tls = client_config(Some(&self.client_identity()), self.roots(), false).unwrap();
        let mut s = self.base_settings(
            RouteProtocol::Binary(BinaryFormat::Frame),
            endpoint(self.sim.addrs.binary),
            tls,
        );
        // The binary protocol's "silence means delivered" window: long enough that an error packet delayed by a
        // loaded machine still comes within it.
        s.response_timeout = Duration::from_secs(2);
        s
    }

    fn engine(&self, settings: DeliverySettings) -> (Engine, Arc<MemoryInvalidTokens>) {
        self.engine_with(settings, EngineLimits::default())
    }

    fn engine_with(
        &self,
        settings: DeliverySettings,
        limits: EngineLimits,
    ) -> (Engine, Arc<MemoryInvalidTokens>) {
        let invalid = Arc::new(MemoryInvalidTokens::default());
        let engine = Engine::new(
            Arc::new(StaticResolver::default().with(settings)),
            self.logs.clone(),
            invalid.clone(),
            limits,
        );
        (engine, invalid)
    }

    fn mainlog_lines(&self) -> Vec<Vec<String>> {
        self.logs.flush();
        log_fields(&self.mainlog)
    }

    fn apnlog_lines(&self) -> Vec<Vec<String>> {
        self.logs.flush();
        log_fields(&self.apnlog)
    }
}

fn endpoint(addr: std::net::SocketAddr) -> Endpoint {
    Endpoint::new(addr.ip().to_string(), addr.port())
}

/// Distinct tokens: token `i` is 32 bytes ending in `i`.
fn token(i: usize) -> String {
    format!("{:064x}", 0xabc0_0000_0000u64 + i as u64)
}

fn payload(i: usize) -> Bytes {
    Bytes::from(format!(
        "{{\"aps\":{{\"alert\":\"notification {i}\"}},\"n\":{i}}}"
    ))
}

/// Submits notifications for `tokens`; returns their ids in order.
async fn submit(engine: &Engine, tokens: &[String]) -> Vec<MessageId> {
    submit_with(engine, tokens, &IdGenerator::new(1)).await
}

/// [`submit`], with ids from `ids` (one generator for several submissions gives them distinct ids).
async fn submit_with(engine: &Engine, tokens: &[String], ids: &IdGenerator) -> Vec<MessageId> {
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
                payload: payload(i),
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

/// Waits until `n` notifications reached a final outcome.
async fn wait_finished(engine: &Engine, n: u64) {
    let deadline = Instant::now() + WAIT;
    loop {
        let finished = engine.stats(DOMAIN).map(|s| s.finished()).unwrap_or(0);
        if finished >= n {
            assert_eq!(finished, n, "more outcomes than notifications");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {finished} of {n} notifications finished in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Final outcome lines (D or P) per message id in the mainlog (type in field 4) and the apn_logger log (type in
/// field 1), asserting exactly one per notification in each; returns the mainlog's final lines by id.
fn final_outcomes(h: &Harness, ids: &[MessageId]) -> HashMap<String, Vec<String>> {
    let mut main: HashMap<String, Vec<Vec<String>>> = HashMap::new();
    for f in h.mainlog_lines() {
        if f.len() > 4 && (f[4] == "D" || f[4] == "P") {
            main.entry(f[1].clone()).or_default().push(f);
        }
    }
    let mut apn: HashMap<String, usize> = HashMap::new();
    for f in h.apnlog_lines() {
        if f.len() > 2 && (f[1] == "D" || f[1] == "P") {
            *apn.entry(f[2].clone()).or_default() += 1;
        }
    }
    let mut out = HashMap::new();
    for id in ids {
        let key = id.to_string();
        let lines = main.remove(&key).unwrap_or_default();
        assert_eq!(
            lines.len(),
            1,
            "mainlog final outcome lines for {key}: {lines:?}"
        );
        assert_eq!(
            apn.get(&key).copied().unwrap_or(0),
            1,
            "apn_logger final outcome lines for {key}"
        );
        out.insert(key, lines.into_iter().next().unwrap());
    }
    assert!(
        main.is_empty(),
        "final outcome lines for unknown ids: {main:?}"
    );
    out
}

fn transient_lines(h: &Harness) -> usize {
    h.mainlog_lines()
        .iter()
        .filter(|f| f.len() > 4 && f[4] == "T")
        .count()
}

/// The simulator's record once it holds `n` distinct tokens (or at the deadline).
async fn settled_record_counts(sim: &SimHandle, n: usize) -> BTreeMap<String, usize> {
    let deadline = Instant::now() + WAIT;
    loop {
        let counts = record_counts(sim);
        if counts.len() >= n || Instant::now() >= deadline {
            return counts;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Delivered tokens as the simulator recorded them: token -> count.
fn record_counts(sim: &SimHandle) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for r in sim.record() {
        *m.entry(r.token).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_token_auth_delivers_each_notification_exactly_once_byte_for_byte() {
    let h = Harness::start(|_| {}).await;
    let (engine, _) = h.engine(h.h2_token());
    let tokens: Vec<String> = (0..500).map(token).collect();
    let ids = submit(&engine, &tokens).await;
    wait_finished(&engine, 500).await;
    h.sim.wait_for_records(500, WAIT).await;
    let record = h.sim.record();
    assert_eq!(record.len(), 500);
    let by_token: HashMap<_, _> = record.iter().map(|r| (r.token.clone(), r)).collect();
    for (i, t) in tokens.iter().enumerate() {
        let r = by_token
            .get(t)
            .unwrap_or_else(|| panic!("token {i} not delivered"));
        assert_eq!(r.topic, TOPIC);
        assert_eq!(r.payload.as_bytes(), &payload(i)[..]);
        assert_eq!(r.push_type.as_deref(), Some("alert"));
        assert_eq!(r.priority, 10);
    }
    let finals = final_outcomes(&h, &ids);
    assert!(
        finals
            .values()
            .all(|f| f[4] == "D" && f[5] == DOMAIN && f[11] == "127.0.0.1")
    );
    assert_eq!(transient_lines(&h), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_certificate_auth_delivers() {
    let h = Harness::start(|_| {}).await;
    let (engine, _) = h.engine(h.h2_cert());
    let tokens: Vec<String> = (0..200).map(token).collect();
    let ids = submit(&engine, &tokens).await;
    wait_finished(&engine, 200).await;
    assert_eq!(record_counts(&h.sim).len(), 200);
    assert!(record_counts(&h.sim).values().all(|&c| c == 1));
    final_outcomes(&h, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_transient_errors_are_retried_until_delivered() {
    let h = Harness::start(|c| {
        c.scenario.seed = 7;
        c.scenario.errors.insert("InternalServerError".into(), 0.1);
        c.scenario.errors.insert("ServiceUnavailable".into(), 0.1);
        c.scenario.errors.insert("TooManyRequests".into(), 0.1);
    })
    .await;
    let (engine, _) = h.engine(h.h2_token());
    let tokens: Vec<String> = (0..300).map(token).collect();
    let ids = submit(&engine, &tokens).await;
    wait_finished(&engine, 300).await;
    let counts = record_counts(&h.sim);
    assert_eq!(counts.len(), 300, "every token delivered");
    assert!(counts.values().all(|&c| c == 1), "none delivered twice");
    let finals = final_outcomes(&h, &ids);
    assert!(finals.values().all(|f| f[4] == "D"));
    let rejected = h.sim.stats().rejected.total as usize;
    assert!(rejected > 0, "the scenario produced errors");
    assert_eq!(
        transient_lines(&h),
        rejected,
        "one T line per transient answer"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unregistered_and_bad_tokens_fail_permanently_and_are_reported_invalid() {
    let unregistered = token(1);
    let bad = token(2);
    let (u, b) = (unregistered.clone(), bad.clone());
    let h = Harness::start(move |c| {
        c.scenario.unregistered.push(u);
        c.scenario.bad.push(b);
    })
    .await;
    let (engine, invalid) = h.engine(h.h2_token());
    let tokens: Vec<String> = (0..10).map(token).collect();
    let ids = submit(&engine, &tokens).await;
    wait_finished(&engine, 10).await;
    let finals = final_outcomes(&h, &ids);
    let p: Vec<_> = finals.values().filter(|f| f[4] == "P").collect();
    assert_eq!(p.len(), 2);
    // docs/apns-protocol.md#reasons: 410 Unregistered, 400 BadDeviceToken.
    let errors: Vec<&str> = p.iter().map(|f| f[13].as_str()).collect();
    assert!(errors.contains(&"410 Unregistered"), "{errors:?}");
    assert!(errors.contains(&"400 BadDeviceToken"), "{errors:?}");
    let invalid = invalid.0.lock().unwrap().clone();
    assert_eq!(invalid.len(), 2);
    let u = invalid
        .iter()
        .find(|t| t.token.to_hex() == unregistered)
        .unwrap();
    assert!(
        u.timestamp_ms.is_some(),
        "410 carries the invalidation time"
    );
    assert!(
        invalid
            .iter()
            .any(|t| t.token.to_hex() == bad && t.timestamp_ms.is_none())
    );
    assert_eq!(record_counts(&h.sim).len(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goaway_every_n_requests_loses_and_duplicates_nothing() {
    let h = Harness::start(|c| c.scenario.goaway_every = Some(37)).await;
    let (engine, _) = h.engine(h.h2_token());
    let tokens: Vec<String> = (0..1000).map(token).collect();
    let ids = submit(&engine, &tokens).await;
    wait_finished(&engine, 1000).await;
    let counts = settled_record_counts(&h.sim, 1000).await;
    assert_eq!(counts.len(), 1000);
    let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "delivered twice: {dups:?}");
    assert!(h.sim.stats().goaways > 0);
    let finals = final_outcomes(&h, &ids);
    assert!(finals.values().all(|f| f[4] == "D"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_lose_nothing() {
    let h = Harness::start(|c| {
        c.scenario.seed = 3;
        c.scenario.drop_rate = 0.01;
    })
    .await;
    let (engine, _) = h.engine(h.h2_token());
    let tokens: Vec<String> = (0..1000).map(token).collect();
    let ids = submit(&engine, &tokens).await;
    wait_finished(&engine, 1000).await;
    assert!(
        h.sim.stats().dropped_connections > 0,
        "the scenario dropped connections"
    );
    // A connection lost before the answer may have delivered: at least once, never zero times.
    assert_eq!(settled_record_counts(&h.sim, 1000).await.len(), 1000);
    let finals = final_outcomes(&h, &ids);
    assert!(finals.values().all(|f| f[4] == "D"));
}

/// A notification that is lost with its connection every time (here: the server drops every connection a request
/// arrives on, after reading the whole request) is not sent again at the pace connections open for ever: written
/// in full and then lost, it may have been processed, so each loss is an attempt whose outcome is unknown (logged as
/// such, like a timeout) that takes the retry schedule, and `max_retries` ends it
/// (docs/apns-protocol.md#http2-connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_notification_lost_with_every_connection_runs_out_of_retries() {
    let h = Harness::start(|c| {
        c.scenario.drop_rate = 1.0;
    })
    .await;
    let mut settings = h.h2_token();
    settings.retry.retry_interval = Duration::from_millis(100);
    settings.retry.max_retry_interval = Duration::from_millis(100);
    settings.retry.max_retries = herald::queue::retry::MaxRetries::Limit(2);
    let (engine, _) = h.engine(settings);
    let ids = submit(&engine, &[token(1)]).await;
    wait_finished(&engine, 1).await;
    let stats = engine.stats(DOMAIN).unwrap();
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 0);
    assert_eq!(stats.permanent.load(Ordering::Relaxed), 1);
    // Two counted attempts, then the third ends it: one connection each.
    assert_eq!(stats.transient.load(Ordering::Relaxed), 2);
    assert_eq!(h.sim.stats().dropped_connections, 3);
    let lines = h.mainlog_lines();
    let t: Vec<_> = lines.iter().filter(|f| f[4] == "T").collect();
    assert_eq!(t.len(), 2);
    assert!(
        t.iter()
            .all(|f| f[13].contains("no answer before the stream ended")
                && f[13].contains("APNs may have accepted it")),
        "{t:?}"
    );
    let finals = final_outcomes(&h, &ids);
    let line = &finals[&ids[0].to_string()];
    assert_eq!(line[4], "P");
    assert!(
        line.iter().any(|f| f.contains("exceeded max retries")
            && f.contains("no answer before the stream ended")
            && f.contains("APNs may have accepted it")),
        "{line:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_limit_of_one_is_never_overrun() {
    let h = Harness::start(|c| c.max_concurrent_streams = 1).await;
    let mut settings = h.h2_token();
    settings.max_connections = 1;
    let (engine, _) = h.engine(settings);
    let tokens: Vec<String> = (0..200).map(token).collect();
    let ids = submit(&engine, &tokens).await;
    wait_finished(&engine, 200).await;
    let stats = h.sim.stats();
    assert_eq!(
        stats.streams.refused, 0,
        "no stream beyond the server's limit"
    );
    assert_eq!(stats.accepted.total, 200);
    final_outcomes(&h, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_server_closed_when_idle_does_not_eat_the_next_notification() {
    let h = Harness::start(|c| c.scenario.idle_timeout_secs = Some(1)).await;
    let (engine, _) = h.engine(h.h2_token());
    let first: Vec<String> = (0..5).map(token).collect();
    let mut ids = submit(&engine, &first).await;
    wait_finished(&engine, 5).await;
    // Wait for the simulator to close the idle connection.
    let deadline = Instant::now() + WAIT;
    while h.sim.stats().connections.h2.open > 0 {
        assert!(
            Instant::now() < deadline,
            "the simulator never closed the idle connection"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second: Vec<String> = (5..10).map(token).collect();
    ids.extend(submit(&engine, &second).await);
    wait_finished(&engine, 10).await;
    assert_eq!(record_counts(&h.sim).len(), 10);
    let finals = final_outcomes(&h, &ids);
    assert!(finals.values().all(|f| f[4] == "D"));
}

/// A TCP relay to the simulator whose connections can be made to vanish: after [`Relay::vanish`] the connections
/// open until then forward nothing more either way, yet stay open (a peer gone without FIN or RST, as behind a
/// failed NAT or a dead route); connections opened later are relayed as usual.
struct Relay {
    addr: std::net::SocketAddr,
    /// Connections numbered below this forward nothing.
    cut_below: Arc<std::sync::atomic::AtomicU64>,
    /// Connections accepted so far.
    accepted: Arc<std::sync::atomic::AtomicU64>,
}

impl Relay {
    async fn start(to: std::net::SocketAddr) -> Relay {
        use std::sync::atomic::AtomicU64;
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
        cut_below: Arc<std::sync::atomic::AtomicU64>,
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

/// A connection whose peer vanishes while it carries traffic is found out and replaced: the streams it carried when
/// the peer vanished time out (APNs may have had them) and are retried; the connection then asks with a PING, takes
/// no more work, and lets the pool open a new one even at `max_outbound_connections = 1`, so that nothing else is
/// eaten by it until TCP gives up (never, here: the relay keeps the socket open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_peer_vanishes_under_traffic_is_replaced_and_eats_nothing_more() {
    let h = Harness::start(|_| {}).await;
    let relay = Relay::start(h.sim.addrs.h2).await;
    let mut settings = h.h2_token();
    settings.endpoint = endpoint(relay.addr);
    settings.max_connections = 1;
    settings.response_timeout = Duration::from_secs(2);
    let (engine, _) = h.engine(settings);
    let gen_ids = IdGenerator::new(1);
    let mut ids = submit_with(&engine, &(0..20).map(token).collect::<Vec<_>>(), &gen_ids).await;
    wait_finished(&engine, 20).await;
    assert_eq!(relay.connections(), 1);
    relay.vanish();
    ids.extend(submit_with(&engine, &(20..60).map(token).collect::<Vec<_>>(), &gen_ids).await);
    wait_finished(&engine, 60).await;
    assert_eq!(relay.connections(), 2, "one replacement connection");
    assert_eq!(settled_record_counts(&h.sim, 60).await.len(), 60);
    let finals = final_outcomes(&h, &ids);
    assert!(finals.values().all(|f| f[4] == "D"));
    // Only what the connection carried when the peer vanished timed out, each once.
    let mut timeouts: HashMap<String, usize> = HashMap::new();
    for f in h.mainlog_lines() {
        if f.len() > 4 && f[4] == "T" && f.iter().any(|x| x.contains("no answer within")) {
            *timeouts.entry(f[1].clone()).or_default() += 1;
        }
    }
    assert!(timeouts.values().all(|n| *n == 1), "{timeouts:?}");
    assert!(timeouts.len() <= 40, "{timeouts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_provider_token_is_refreshed_and_the_notification_retried() {
    let h = Harness::start(|_| {}).await;
    // The first token is minted 4000 s in the past by a clock that then runs 25 minutes: herald takes its token
    // for 25 minutes old (not due for renewal), APNs for over an hour old and answers ExpiredProviderToken
    // (docs/apns-protocol.md#provider-tokens). The renewed token (issued at the clock's now - 2500 s) passes. A wall
    // clock that jumped ahead alone would have herald renew before sending (see herald-apns' provider_token tests).
    let clock = Arc::new(ManualClock::new(unix_now() - 4000));
    let cache = h.token_cache(Some(clock.clone()));
    clock.advance(Duration::from_secs(25 * 60));
    let mut settings = h.h2_token();
    settings.auth = Some(cache.clone());
    let (engine, _) = h.engine(settings);
    let ids = submit(&engine, &[token(1)]).await;
    wait_finished(&engine, 1).await;
    assert_eq!(cache.mints(), 2, "one refresh, not one per retry");
    assert_eq!(
        h.sim.stats().rejected.by_reason.get("ExpiredProviderToken"),
        Some(&1)
    );
    assert_eq!(record_counts(&h.sim).len(), 1);
    let finals = final_outcomes(&h, &ids);
    assert_eq!(finals.values().next().unwrap()[4], "D");
    assert_eq!(transient_lines(&h), 1);
}

/// `ExpiredProviderToken` after an earlier transient failure is retried at once too, once the token has been
/// renewed: the retry does not wait for the doubled interval of a second failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_provider_token_after_a_transient_failure_is_retried_at_once() {
    // Every request that gets through authentication is answered 503; a token is expired after 8 s.
    let h = Harness::start(|c| {
        c.token_max_age = Duration::from_secs(8);
        c.scenario.errors.insert("ServiceUnavailable".into(), 1.0);
    })
    .await;
    let clock = Arc::new(ManualClock::new(unix_now()));
    let cache = h.token_cache(Some(clock.clone()));
    let mut settings = h.h2_token();
    settings.auth = Some(cache.clone());
    settings.retry.retry_interval = Duration::from_secs(10);
    settings.retry.max_retry_interval = Duration::from_secs(60);
    settings.retry.max_retries = herald::queue::retry::MaxRetries::Limit(2);
    let (engine, _) = h.engine(settings);
    let ids = submit(&engine, &[token(1)]).await;
    let rejected = |reason: &str| {
        h.sim
            .stats()
            .rejected
            .by_reason
            .get(reason)
            .copied()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + WAIT;
    // The first attempt (well within 8 s of the token's `iat`): 503, and the next one in 10 s, when the token has
    // expired.
    while rejected("ServiceUnavailable") < 1 {
        assert!(Instant::now() < deadline, "no first attempt");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Meanwhile the token grows old enough for herald to renew it when APNs calls it expired; the wall clock stays
    // near the simulator's, which refuses a token issued in the future.
    clock.advance(Duration::from_secs(20 * 60));
    clock.set_unix(unix_now() + 60);
    while rejected("ExpiredProviderToken") < 1 {
        assert!(Instant::now() < deadline, "no second attempt");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let expired_at = Instant::now();
    wait_finished(&engine, 1).await;
    // At once: well within the 10 s retry_interval (20 s doubled) the schedule would have it wait.
    assert!(
        expired_at.elapsed() < Duration::from_secs(5),
        "the third attempt waited {:?} after ExpiredProviderToken",
        expired_at.elapsed()
    );
    assert_eq!(cache.mints(), 2);
    assert_eq!(rejected("ServiceUnavailable"), 2);
    assert_eq!(rejected("ExpiredProviderToken"), 1);
    let finals = final_outcomes(&h, &ids);
    let line = &finals[&ids[0].to_string()];
    assert_eq!(line[4], "P");
    assert_eq!(transient_lines(&h), 2);
}

/// `ExpiredProviderToken` for a token herald cannot renew yet (younger than 20 minutes by its clock: the clocks
/// disagree) is not retried at once, which would only be refused again: it takes the retry schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_provider_token_without_a_renewal_takes_the_schedule() {
    let h = Harness::start(|c| c.token_max_age = Duration::ZERO).await;
    // Herald's clock says the token is new; the simulator's says it is 10 s old, past its limit.
    let clock = Arc::new(ManualClock::new(unix_now() - 10));
    let cache = h.token_cache(Some(clock));
    let mut settings = h.h2_token();
    settings.auth = Some(cache.clone());
    settings.retry.max_retries = herald::queue::retry::MaxRetries::Limit(0);
    let (engine, _) = h.engine(settings);
    let ids = submit(&engine, &[token(1)]).await;
    wait_finished(&engine, 1).await;
    assert_eq!(cache.mints(), 1, "too young to renew");
    assert_eq!(
        h.sim.stats().rejected.by_reason.get("ExpiredProviderToken"),
        Some(&1),
        "no retry at once"
    );
    let finals = final_outcomes(&h, &ids);
    assert_eq!(finals[&ids[0].to_string()][4], "P");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_error_packet_mid_burst_resends_exactly_what_followed() {
    let n = 400;
    let k = 150;
    let bad = token(k);
    let b = bad.clone();
    let h = Harness::start(move |c| c.scenario.bad.push(b)).await;
    let (engine, invalid) = h.engine(h.binary());
    let tokens: Vec<String> = (0..n).map(token).collect();
    let ids = submit(&engine, &tokens).await;
    wait_finished(&engine, n as u64).await;
    let counts = record_counts(&h.sim);
    // docs/apns-protocol.md#binary-error-packet: everything after the failed notification was discarded and must arrive
    // once, resent.
    for (i, t) in tokens.iter().enumerate() {
        let expected = usize::from(i != k);
        assert_eq!(counts.get(t).copied().unwrap_or(0), expected, "token {i}");
    }
    let finals = final_outcomes(&h, &ids);
    let failed = &finals[&ids[k].to_string()];
    assert_eq!(failed[4], "P");
    assert_eq!(failed[13], "8 Invalid token");
    assert_eq!(invalid.0.lock().unwrap().len(), 1);
    assert_eq!(finals.values().filter(|f| f[4] == "D").count(), n - 1);
    // What the gateway discarded after the rejected one went out again without an attempt: requeued.
    let requeued = engine
        .stats(DOMAIN)
        .unwrap()
        .requeued
        .load(Ordering::Relaxed);
    eprintln!("requeued after the error packet: {requeued}");
    assert!(requeued > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_transient_statuses_are_retried() {
    let h = Harness::start(|c| {
        c.scenario.seed = 11;
        c.scenario.binary_errors.insert("1".into(), 0.02);
        c.scenario.binary_errors.insert("255".into(), 0.02);
    })
    .await;
    let (engine, _) = h.engine(h.binary());
    let tokens: Vec<String> = (0..500).map(token).collect();
    let ids = submit(&engine, &tokens).await;
    wait_finished(&engine, 500).await;
    let counts = record_counts(&h.sim);
    assert_eq!(counts.len(), 500);
    assert!(counts.values().all(|&c| c == 1));
    let finals = final_outcomes(&h, &ids);
    assert!(finals.values().all(|f| f[4] == "D"));
    assert!(transient_lines(&h) > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_enhanced_format_delivers() {
    let h = Harness::start(|_| {}).await;
    let mut settings = h.binary();
    settings.protocol = RouteProtocol::Binary(BinaryFormat::Enhanced);
    let (engine, _) = h.engine(settings);
    let tokens: Vec<String> = (0..100).map(token).collect();
    let ids = submit(&engine, &tokens).await;
    wait_finished(&engine, 100).await;
    assert!(h.sim.record().iter().all(|r| r.format == Some(1)));
    assert_eq!(record_counts(&h.sim).len(), 100);
    final_outcomes(&h, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_is_honoured() {
    let h = Harness::start(|c| {
        c.max_concurrent_streams = 5;
        c.scenario.latency_ms = 5;
    })
    .await;
    let mut settings = h.h2_token();
    settings.max_connections = 2;
    let (engine, _) = h.engine(settings);
    let tokens: Vec<String> = (0..400).map(token).collect();
    let ids = submit(&engine, &tokens).await;
    let mut peak = 0;
    let deadline = Instant::now() + WAIT;
    while engine.stats(DOMAIN).unwrap().finished() < 400 {
        peak = peak.max(h.sim.stats().connections.h2.open);
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(peak >= 1);
    assert!(
        peak <= 2,
        "at most max_outbound_connections open, saw {peak}"
    );
    assert!(
        h.sim.stats().connections.h2.total <= 2,
        "no connection churn under steady load"
    );
    final_outcomes(&h, &ids);
}

/// Connections open on demand (docs/momentum-compat.md#outbound-connections): a burst one connection will carry
/// once its stream limit has ramped up opens no other, even though APNs allows a token connection one stream until
/// the provider token got through (docs/apns-protocol.md#http2-connection) and the first connection's adaptive
/// limit starts below the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_one_connection_will_carry_opens_no_other() {
    let h = Harness::start(|c| {
        c.max_concurrent_streams = 1000;
        c.scenario.latency_ms = 100;
    })
    .await;
    let (engine, _) = h.engine(h.h2_token());
    let tokens: Vec<String> = (0..300).map(token).collect();
    let ids = submit(&engine, &tokens).await;
    wait_finished(&engine, 300).await;
    assert_eq!(
        h.sim.stats().connections.h2.total,
        1,
        "300 notifications, one connection allowed 1000 streams"
    );
    final_outcomes(&h, &ids);
}

/// A backlog larger than the open connection will ever carry opens the others as soon as the server has answered
/// the first (its stream limit is then known), while that one is still ramping up with fast answers, instead of
/// waiting until it carries all the server allows: every allowed connection is open before a quarter of the
/// first connection's stream limit was ever answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_backlog_opens_every_allowed_connection_while_the_first_ramps_up() {
    let h = Harness::start(|c| {
        c.max_concurrent_streams = 1000;
        c.scenario.latency_ms = 500;
    })
    .await;
    let (engine, _) = h.engine(h.h2_token());
    let tokens: Vec<String> = (0..8000).map(token).collect();
    let ids = submit(&engine, &tokens).await;
    let deadline = Instant::now() + WAIT;
    while h.sim.stats().connections.h2.total < 4 {
        assert!(Instant::now() < deadline, "never opened 4 connections");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let answered = h.sim.stats().accepted.total;
    assert!(
        answered < 250,
        "{answered} notifications accepted before the fourth connection opened"
    );
    wait_finished(&engine, 8000).await;
    assert_eq!(h.sim.stats().connections.h2.total, 4, "no churn");
    final_outcomes(&h, &ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_connection_failures_delay_the_queue() {
    let h = Harness::start(|_| {}).await;
    // Nothing listens on this port (outside the ephemeral range, so no connection takes it meanwhile).
    let port = support::free_port();
    let mut settings = h.h2_token();
    settings.endpoint = Endpoint::new("127.0.0.1", port);
    settings.mx_failures_to_delay = 2;
    settings.retry.retry_interval = Duration::from_secs(600);
    settings.retry.max_retry_interval = Duration::from_secs(600);
    let (engine, _) = h.engine(settings);
    submit(&engine, &(0..20).map(token).collect::<Vec<_>>()).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = engine.stats(DOMAIN).unwrap();
        if stats.delayed.load(Ordering::Relaxed) == 20 {
            // One per T line (below): the failed attempt's and each the delay wrote.
            assert_eq!(stats.transient.load(Ordering::Relaxed), 21);
            break;
        }
        assert!(Instant::now() < deadline, "the queue was never delayed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let t: Vec<_> = h
        .mainlog_lines()
        .into_iter()
        .filter(|f| f[4] == "T")
        .collect();
    // The first failed attempt logs one line for the oldest waiting notification; the delay then logs each.
    assert_eq!(t.len(), 21);
    assert!(
        t.iter()
            .all(|f| f[9] == "0" && f[13].contains("connection to 127.0.0.1")),
        "{:?}",
        t[0]
    );
}

/// A client certificate the server refuses under TLS 1.3 is refused after the client has finished its side of the
/// handshake, so the refusal (a TLS alert) is the first thing the client reads. That is a failed connection attempt,
/// not a connection lost after opening: each attempt backs off, the TLS reason is in the logs, and after
/// `mx_failures_to_delay` of them the queue is delayed (docs/apns-protocol.md#http2-connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_refused_after_the_tls_handshake_is_a_connection_failure() {
    let h = Harness::start(|_| {}).await;
    // A certificate from another CA than the one the simulator trusts.
    let other_dir = tempfile::tempdir().unwrap();
    let other = Pki::generate(&other_dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let files = other.client(TOPIC, CertVariant::Universal).unwrap();
    let identity = ClientIdentity::from_pem_files(&files.cert, Some(&files.key)).unwrap();
    let tls = client_config(Some(&identity), h.roots(), true).unwrap();
    let mut settings = h.base_settings(RouteProtocol::Http2, endpoint(h.sim.addrs.h2), tls);
    settings.mx_failures_to_delay = 3;
    settings.retry.retry_interval = Duration::from_secs(600);
    settings.retry.max_retry_interval = Duration::from_secs(600);
    let (engine, _) = h.engine(settings);
    submit(&engine, &(0..10).map(token).collect::<Vec<_>>()).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = engine.stats(DOMAIN).unwrap();
        if stats.delayed.load(Ordering::Relaxed) == 10 {
            // One per T line (below): the failed attempt's and each the delay wrote.
            assert_eq!(stats.transient.load(Ordering::Relaxed), 11);
            break;
        }
        assert!(Instant::now() < deadline, "the queue was never delayed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Three attempts, backing off, then none while the queue waits.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(h.sim.stats().tls_failures, 3);
    assert_eq!(h.sim.stats().accepted.total, 0);
    let t: Vec<_> = h
        .mainlog_lines()
        .into_iter()
        .filter(|f| f[4] == "T")
        .collect();
    // The first failed attempt logs one line for the oldest waiting notification; the delay then logs each.
    assert_eq!(t.len(), 11, "{t:?}");
    assert!(
        t.iter().all(|f| f[9] == "0"
            && f[13].contains("connection to 127.0.0.1")
            && f[13].contains("TLS handshake with 127.0.0.1: received fatal alert")),
        "{:?}",
        t[0]
    );
}

/// Records what the queue tells its observer.
#[derive(Default)]
struct Observed {
    finished: std::sync::Mutex<Vec<MessageId>>,
    rescheduled: std::sync::Mutex<Vec<(MessageId, u32)>>,
}

impl herald::queue::QueueObserver for Observed {
    fn finished(&self, ids: &[MessageId]) {
        self.finished.lock().unwrap().extend_from_slice(ids);
    }
    fn rescheduled(&self, id: MessageId, retries: u32, _next: std::time::SystemTime) {
        self.rescheduled.lock().unwrap().push((id, retries));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_observer_hears_every_final_outcome_and_reschedule() {
    let h = Harness::start(|c| {
        c.scenario.seed = 5;
        c.scenario.errors.insert("ServiceUnavailable".into(), 0.2);
    })
    .await;
    let (engine, _) = h.engine(h.h2_token());
    let observed = Arc::new(Observed::default());
    assert!(engine.set_observer(observed.clone()));
    let ids = submit(&engine, &(0..100).map(token).collect::<Vec<_>>()).await;
    wait_finished(&engine, 100).await;
    let mut finished = observed.finished.lock().unwrap().clone();
    finished.sort();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(
        finished, expected,
        "each notification finished exactly once"
    );
    assert_eq!(
        observed.rescheduled.lock().unwrap().len(),
        transient_lines(&h)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restored_notifications_wait_for_their_next_attempt() {
    let h = Harness::start(|_| {}).await;
    let (engine, _) = h.engine(h.h2_token());
    let ids = IdGenerator::new(2);
    let make = |i: usize| Notification {
        id: ids.next(),
        batch_id: MessageId::NONE,
        conn_id: MessageId::NONE,
        domain: Arc::from(DOMAIN),
        binding: Arc::from("default"),
        push: PushRequest {
            token: DeviceToken::from_hex(&token(i)).unwrap(),
            topic: None,
            push_type: Some(PushType::Alert),
            priority: None,
            expiration: None,
            collapse_id: None,
            apns_id: None,
            payload: payload(i),
        },
        sender: Arc::from(""),
        recipient_given: Some(Arc::from("")),
        received_at: unix_now(),
    };
    let later = std::time::SystemTime::now() + Duration::from_secs(3600);
    engine.restore(make(1), 3, Some(later)).await.unwrap();
    engine.restore(make(2), 1, None).await.unwrap();
    wait_finished(&engine, 1).await;
    let stats = engine.stats(DOMAIN).unwrap();
    assert_eq!(
        stats.delayed.load(Ordering::Relaxed),
        1,
        "the one due in an hour waits"
    );
    // The simulator's record trails its answers.
    h.sim.wait_for_records(1, WAIT).await;
    assert_eq!(
        record_counts(&h.sim).keys().collect::<Vec<_>>(),
        vec![&token(2)]
    );
    let main = h.mainlog_lines();
    let d: Vec<_> = main.iter().filter(|f| f[4] == "D").collect();
    assert_eq!(d[0][9], "1", "the retry count survives the restart");
    // Notifications from the spool were received before (by an earlier start, or by the node that accepted them
    // into the shared stream): they do not count as received again; a new one does.
    assert_eq!(stats.received.load(Ordering::Relaxed), 0);
    engine.submit(make(3)).await.unwrap();
    assert_eq!(stats.received.load(Ordering::Relaxed), 1);
    engine.count_received(&make(4));
    assert_eq!(stats.received.load(Ordering::Relaxed), 2);
}

/// A domain with nothing left to do rests: once its last connection closed it takes no more looks until work comes,
/// so that thousands of quiet domains in one process cost no CPU, and the figures it rests with say so (no
/// connection, nothing queued, no oldest notification).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_domain_rests_until_work_comes_and_rests_with_true_figures() {
    let h = Harness::start(|_| {}).await;
    let mut settings = h.h2_token();
    settings.idle_timeout = Some(Duration::from_millis(300));
    let (engine, _) = h.engine(settings);
    let tokens: Vec<String> = (0..20).map(token).collect();
    submit(&engine, &tokens).await;
    wait_finished(&engine, 20).await;
    let stats = engine.stats(DOMAIN).unwrap();
    let deadline = Instant::now() + WAIT;
    while !stats.resting.load(Ordering::Relaxed) {
        assert!(Instant::now() < deadline, "the domain never came to rest");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stats.connections.load(Ordering::Relaxed), 0);
    assert_eq!(stats.active.load(Ordering::Relaxed), 0);
    assert_eq!(stats.delayed.load(Ordering::Relaxed), 0);
    assert_eq!(stats.oldest_queued_s.load(Ordering::Relaxed), 0);
    // While it rests, time passing wakes nothing (a busy task looks every 50 ms: 20 looks in this second).
    let looks = stats.looks.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stats.looks.load(Ordering::Relaxed), looks);
    assert!(stats.resting.load(Ordering::Relaxed));
    // Work wakes it, and it is delivered as before.
    submit(&engine, &[token(100)]).await;
    wait_finished(&engine, 21).await;
    h.sim.wait_for_records(21, WAIT).await;
    assert!(stats.looks.load(Ordering::Relaxed) > looks);
}

/// A resting domain with a notification waiting for its retry wakes at the retry time, not before and not every
/// tick: the retry is attempted while the task otherwise rests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resting_domain_wakes_for_its_next_retry() {
    let h = Harness::start(|c| {
        c.scenario.errors.insert("ServiceUnavailable".into(), 1.0);
    })
    .await;
    let mut settings = h.h2_token();
    settings.idle_timeout = Some(Duration::from_millis(200));
    settings.retry.retry_interval = Duration::from_millis(1500);
    settings.retry.max_retry_interval = Duration::from_millis(1500);
    let (engine, _) = h.engine(settings);
    submit(&engine, &[token(1)]).await;
    let stats = engine.stats(DOMAIN).unwrap();
    let deadline = Instant::now() + WAIT;
    while !(stats.resting.load(Ordering::Relaxed) && stats.delayed.load(Ordering::Relaxed) == 1) {
        assert!(
            Instant::now() < deadline,
            "the domain never came to rest with its retry"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_ne!(stats.next_retry_ms.load(Ordering::Relaxed), 0);
    let rejected = h.sim.stats().rejected.total;
    while h.sim.stats().rejected.total == rejected {
        assert!(Instant::now() < deadline, "the retry was never attempted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `engine` runs no queue: the domain's queue retired (its task and pool let go).
async fn wait_retired(engine: &Engine) {
    let deadline = Instant::now() + WAIT;
    while !engine.queues().is_empty() {
        assert!(Instant::now() < deadline, "the idle queue never retired");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A queue with nothing queued and no connection for `idle_queue_timeout` lets its task and pool go, so that a
/// process serving many apps does not keep one per app used once; its counters stay (totals never go back), a
/// console action on it answers as for an empty queue, and its next notification starts it again with them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_queue_retires_and_its_next_notification_starts_it_with_its_counters() {
    let h = Harness::start(|_| {}).await;
    let mut settings = h.h2_token();
    settings.idle_timeout = Some(Duration::from_millis(100));
    let limits = EngineLimits {
        // Long enough that the queue is still there once its 20 notifications are delivered on a loaded machine.
        idle_queue_timeout: Some(Duration::from_secs(5)),
        ..EngineLimits::default()
    };
    let (engine, _) = h.engine_with(settings, limits);
    let tokens: Vec<String> = (0..20).map(token).collect();
    submit(&engine, &tokens).await;
    wait_finished(&engine, 20).await;
    assert_eq!(engine.queues().len(), 1);
    wait_retired(&engine).await;
    let stats = engine
        .stats(DOMAIN)
        .expect("a retired queue keeps its counters");
    assert_eq!(stats.retired.load(Ordering::Relaxed), 1);
    assert_eq!(stats.delivered.load(Ordering::Relaxed), 20);
    assert_eq!(stats.received.load(Ordering::Relaxed), 20);
    assert_eq!(stats.connections.load(Ordering::Relaxed), 0);
    // The console's view of a retired queue: known, and empty.
    assert_eq!(
        engine.showqueue(DOMAIN, 10, 0).await.map(|q| q.len()),
        Some(0)
    );
    assert_eq!(engine.fail_domain(DOMAIN, "test").await, Some(0));
    assert!(engine.flush(DOMAIN));
    assert_eq!(
        engine
            .showqueue("other.example", 10, 0)
            .await
            .map(|q| q.len()),
        None
    );
    // A pause set while it is retired holds the queue that starts again.
    assert!(engine.set_paused(DOMAIN, true));
    submit(&engine, &[token(100)]).await;
    assert_eq!(engine.queues().len(), 1);
    assert_eq!(
        engine.showqueue(DOMAIN, 10, 0).await.map(|q| q.len()),
        Some(1)
    );
    assert!(engine.set_paused(DOMAIN, false));
    wait_finished(&engine, 21).await;
    let again = engine.stats(DOMAIN).unwrap();
    assert!(
        Arc::ptr_eq(&stats, &again),
        "the new task counts on the same counters"
    );
    assert_eq!(again.received.load(Ordering::Relaxed), 21);
    let counts = settled_record_counts(&h.sim, 21).await;
    assert_eq!(counts.len(), 21);
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    wait_retired(&engine).await;
    assert_eq!(stats.retired.load(Ordering::Relaxed), 2);
}

/// Notifications submitted while their queue retires are neither lost nor sent twice: submitters hand them over
/// under the lock the queue retires under, and a queue retires only with an empty channel. Each round waits for the
/// queue to rest, then submits around the moment it retires (`idle_queue_timeout` of 2 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_submitted_as_their_queue_retires_are_neither_lost_nor_sent_twice() {
    let h = Harness::start(|_| {}).await;
    let mut settings = h.h2_token();
    settings.idle_timeout = Some(Duration::from_millis(20));
    let limits = EngineLimits {
        idle_queue_timeout: Some(Duration::from_millis(2)),
        ..EngineLimits::default()
    };
    let (engine, _) = h.engine_with(settings, limits);
    let engine = Arc::new(engine);
    const ROUNDS: usize = 30;
    const SUBMITTERS: usize = 4;
    let mut sent = 0;
    for round in 0..ROUNDS {
        if round > 0 {
            wait_finished(&engine, sent as u64).await;
            let stats = engine.stats(DOMAIN).unwrap();
            let deadline = Instant::now() + WAIT;
            while !(stats.resting.load(Ordering::Relaxed) || engine.queues().is_empty()) {
                assert!(Instant::now() < deadline, "the queue never came to rest");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let mut submitters = Vec::new();
        for k in 0..SUBMITTERS {
            let engine = engine.clone();
            let t = token(round * SUBMITTERS + k);
            submitters.push(tokio::spawn(async move {
                // Spread over the few milliseconds around the retirement.
                tokio::time::sleep(Duration::from_micros(
                    ((round * 7 + k * 13) % 40) as u64 * 100,
                ))
                .await;
                submit(&engine, &[t]).await;
            }));
        }
        for s in submitters {
            s.await.unwrap();
        }
        sent += SUBMITTERS;
    }
    wait_finished(&engine, sent as u64).await;
    let counts = settled_record_counts(&h.sim, sent).await;
    assert_eq!(counts.len(), sent, "every notification delivered");
    assert!(counts.values().all(|&n| n == 1), "none twice: {counts:?}");
    let stats = engine.stats(DOMAIN).unwrap();
    assert_eq!(stats.received.load(Ordering::Relaxed), sent as u64);
    assert_eq!(stats.delivered.load(Ordering::Relaxed), sent as u64);
    wait_retired(&engine).await;
    assert!(stats.retired.load(Ordering::Relaxed) >= 1);
}

/// Each notification's state as an outcome listener follows it: in flight or not.
#[derive(Default)]
struct States(std::sync::Mutex<HashMap<MessageId, bool>>);

impl States {
    fn in_flight(&self) -> usize {
        self.0.lock().unwrap().values().filter(|&&f| f).count()
    }
}

impl herald::outcomes::OutcomeListener for States {
    fn queued(&self, n: &Notification, _retries: u32) {
        self.0.lock().unwrap().insert(n.id, false);
    }
    fn in_flight(&self, id: MessageId) {
        self.0.lock().unwrap().insert(id, true);
    }
    fn outcome(&self, record: &herald::logs::OutcomeRecord<'_>) {
        self.0.lock().unwrap().remove(&record.notification.id);
    }
}

/// A paused domain sends nothing beyond what is on the wire (docs/operations.md: it "queues without sending until
/// resumed"): what its connections had not taken yet waits in the queue, and goes out once it is resumed, each
/// notification once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_domain_sends_nothing_beyond_what_is_on_the_wire_until_resumed() {
    const STREAMS: u64 = 2;
    const N: usize = 60;
    let h = Harness::start(|c| {
        c.max_concurrent_streams = STREAMS as u32;
        c.scenario.latency_ms = 50;
    })
    .await;
    let mut settings = h.h2_token();
    settings.max_connections = 1;
    let (engine, _) = h.engine(settings);
    let states = Arc::new(States::default());
    assert!(engine.set_outcome_listener(states.clone()));
    let tokens: Vec<String> = (0..N).map(token).collect();
    let ids = submit(&engine, &tokens).await;
    let stats = engine.stats(DOMAIN).unwrap();
    let deadline = Instant::now() + WAIT;
    while h.sim.stats().streams.total < 2 * STREAMS {
        assert!(Instant::now() < deadline, "delivery never started");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert!(engine.set_paused(DOMAIN, true));
    let sent_at_pause = h.sim.stats().streams.total;
    // What is on the wire is answered; nothing else is handed to the connection.
    while stats.dispatched.load(Ordering::Relaxed) > 0 {
        assert!(
            Instant::now() < deadline,
            "the paused domain never stopped sending"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let sent = h.sim.stats().streams.total;
    assert!(
        sent <= sent_at_pause + 2 * STREAMS,
        "{sent} sent, {sent_at_pause} when paused with at most {STREAMS} on the wire"
    );
    assert!(stats.finished() < N as u64);
    // What was taken back is told queued again: none is left in flight while the domain is paused.
    assert_eq!(
        states.in_flight(),
        0,
        "notifications still in flight while paused"
    );
    assert!(engine.set_paused(DOMAIN, false));
    wait_finished(&engine, N as u64).await;
    let counts = settled_record_counts(&h.sim, N).await;
    assert_eq!(counts.len(), N, "every notification delivered");
    assert!(counts.values().all(|&n| n == 1), "none twice: {counts:?}");
    final_outcomes(&h, &ids);
}
