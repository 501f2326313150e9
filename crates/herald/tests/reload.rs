//! `config reload` while traffic flows (docs/architecture.md#configuration, docs/momentum-compat.md#console): a new
//! route and a new `max_outbound_connections` take effect without losing anything, old connections drain and close, and
//! a broken file keeps the running configuration.
//!
//! Every test runs herald in-process (`Server::start`, `Server::reload`), two APNs simulators A and B with a small
//! stream limit and some latency (so that a connection saturates and the pool has a reason to open more), and an
//! injector that posts batches to `POST /api/v1/push` until told to stop. "Nothing lost" means: every token herald
//! acknowledged is in A's or B's delivery record, exactly once, and the simulators accepted exactly that many.
//!
//! The simulator counts open connections but keeps no peak, so a sampler task reads A's and B's open count every
//! millisecond and keeps the maximum of each; a peak it reports is a lower bound of the true one. The total of
//! connections ever accepted (exact) backs up every "never more than" assertion.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use support::token_auth_options;
use tokio::task::JoinHandle;

const TOPIC: &str = "com.example.reload";
const DOMAIN: &str = "reload.example";
const WAIT: Duration = Duration::from_secs(90);
/// Streams the simulators allow per connection, and their answer latency: one connection carries at most
/// STREAMS / LATENCY (800) notifications a second, less than the injector offers, so connections saturate and
/// the pool has work waiting for another one.
const STREAMS: u32 = 4;
const LATENCY_MS: u64 = 5;
/// Notifications per REST request, requests in flight at once, and the pace the injector keeps (per second):
/// more than four connections carry, so that work is always queued, yet bounded so that the backlog drains.
const BATCH: usize = 100;
const INJECTORS: usize = 4;
const RATE: u64 = 4_000;

fn token(base: u64, i: usize) -> String {
    format!("{:064x}", base + i as u64)
}

async fn start_sim(pki: &Pki) -> SimHandle {
    let mut config = SimConfig::from_pki(&pki.manifest).unwrap();
    config.max_concurrent_streams = STREAMS;
    config.scenario.latency_ms = LATENCY_MS;
    Simulator::start(config).await.unwrap()
}

/// herald's configuration: DOMAIN routed to `port` with `max_outbound_connections = max`; `extra` is appended
/// inside the domain scope (to break the file).
fn config_text(dir: &Path, pki: &Pki, port: u16, max: i64, extra: &str) -> String {
    format!(
        r#"
spool_dir = "{spool}"
ec_logger "main" {{ mainlog = "{log}" }}
http_listener {{ listen "127.0.0.1:0" {{ }} }}
domain "{DOMAIN}" {{
{credentials}  max_outbound_connections = {max}
  idle_timeout = 60
  retry_interval = 1
  max_retry_interval = 1
  mx_failures_to_delay = 0
{extra}}}
"#,
        spool = dir.join("spool").display(),
        log = dir.join("mainlog.ec").display(),
        credentials = token_auth_options(pki, port, TOPIC),
    )
}

/// Posts batches of fresh tokens from several tasks until stopped; remembers every token herald acknowledged.
struct Injector {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<String>>>,
    acked_count: Arc<AtomicUsize>,
    /// 503 answers (herald holding back); those tokens were not acknowledged and are not expected anywhere.
    busy: Arc<AtomicU64>,
    /// Anything else that went wrong: a failed request, an unexpected status, a refused item.
    errors: Arc<Mutex<Vec<String>>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Injector {
    fn start(http: &str, base: u64) -> Injector {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let acked_count = Arc::new(AtomicUsize::new(0));
        let busy = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(Mutex::new(Vec::new()));
        let next = Arc::new(AtomicUsize::new(0));
        let started = tokio::time::Instant::now();
        let url = format!("http://{http}/api/v1/push");
        let client = reqwest::Client::new();
        let tasks = (0..INJECTORS)
            .map(|_| {
                let (stop, acked, acked_count, busy, errors, next, url, client) = (
                    stop.clone(),
                    acked.clone(),
                    acked_count.clone(),
                    busy.clone(),
                    errors.clone(),
                    next.clone(),
                    url.clone(),
                    client.clone(),
                );
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let first = next.fetch_add(BATCH, Ordering::Relaxed);
                        // Pacing: batch k leaves no earlier than k * BATCH / RATE after the start.
                        let due = started + Duration::from_micros(first as u64 * 1_000_000 / RATE);
                        tokio::time::sleep_until(due).await;
                        let tokens: Vec<String> =
                            (first..first + BATCH).map(|i| token(base, i)).collect();
                        let body = serde_json::json!({
                            "domain": DOMAIN,
                            "tokens": tokens,
                            "payload": {"aps": {"alert": "reload"}},
                        });
                        let answer = client.post(&url).json(&body).send().await;
                        let response = match answer {
                            Ok(r) => r,
                            Err(e) => {
                                errors.lock().unwrap().push(format!("POST failed: {e}"));
                                continue;
                            }
                        };
                        match response.status().as_u16() {
                            202 => {
                                let v: serde_json::Value = response.json().await.unwrap();
                                let results = v["results"].as_array().unwrap();
                                let mut mine = Vec::with_capacity(tokens.len());
                                for (t, r) in tokens.into_iter().zip(results) {
                                    if r["status"] == "accepted" {
                                        mine.push(t);
                                    } else {
                                        errors.lock().unwrap().push(format!("item refused: {r}"));
                                    }
                                }
                                acked_count.fetch_add(mine.len(), Ordering::Relaxed);
                                acked.lock().unwrap().extend(mine);
                            }
                            503 => {
                                busy.fetch_add(1, Ordering::Relaxed);
                                // Pacing after a "hold back" answer, not a wait for a condition.
                                tokio::time::sleep(Duration::from_millis(20)).await;
                            }
                            status => {
                                let text = response.text().await.unwrap_or_default();
                                errors
                                    .lock()
                                    .unwrap()
                                    .push(format!("HTTP {status}: {text}"));
                            }
                        }
                    }
                })
            })
            .collect();
        Injector {
            stop,
            acked,
            acked_count,
            busy,
            errors,
            tasks,
        }
    }

    fn acked_so_far(&self) -> usize {
        self.acked_count.load(Ordering::Relaxed)
    }

    /// Waits until `n` more notifications than now have been acknowledged.
    async fn wait_for_more(&self, n: usize, what: &str) {
        let target = self.acked_so_far() + n;
        wait_until(what, || self.acked_so_far() >= target).await;
    }

    /// Stops injecting; returns every acknowledged token. No request may have failed.
    async fn stop(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let errors = self.errors.lock().unwrap();
        assert!(
            errors.is_empty(),
            "{} injector errors, first: {:?}",
            errors.len(),
            errors.first()
        );
        let acked = std::mem::take(&mut *self.acked.lock().unwrap());
        eprintln!(
            "injector: {} acknowledged, {} answers 503",
            acked.len(),
            self.busy.load(Ordering::Relaxed)
        );
        acked
    }
}

/// Reads A's and B's open connection counts every millisecond and keeps the largest seen of each.
struct Sampler {
    peak_a: Arc<AtomicU64>,
    peak_b: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Sampler {
    fn start(a: &Arc<SimHandle>, b: &Arc<SimHandle>) -> Sampler {
        let peak_a = Arc::new(AtomicU64::new(0));
        let peak_b = Arc::new(AtomicU64::new(0));
        let (a, b, pa, pb) = (a.clone(), b.clone(), peak_a.clone(), peak_b.clone());
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1));
            loop {
                tick.tick().await;
                pa.fetch_max(open(&a), Ordering::Relaxed);
                pb.fetch_max(open(&b), Ordering::Relaxed);
            }
        });
        Sampler {
            peak_a,
            peak_b,
            task,
        }
    }

    /// The peaks seen since the last reset, and starts a new observation window.
    fn reset(&self) -> (u64, u64) {
        (
            self.peak_a.swap(0, Ordering::Relaxed),
            self.peak_b.swap(0, Ordering::Relaxed),
        )
    }

    fn peaks(&self) -> (u64, u64) {
        (
            self.peak_a.load(Ordering::Relaxed),
            self.peak_b.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn open(sim: &SimHandle) -> u64 {
    sim.counters().h2_connections.open.load(Ordering::Relaxed)
}

fn opened_total(sim: &SimHandle) -> u64 {
    sim.counters().h2_connections.total.load(Ordering::Relaxed)
}

fn accepted(sim: &SimHandle) -> u64 {
    sim.counters().accepted()
}

/// Polls `count` until it reaches `target`; fails the test naming `what` once it has not grown for [`WAIT`].
async fn wait_while_progressing(what: &str, target: u64, mut count: impl FnMut() -> u64) {
    let mut last = count();
    let mut deadline = Instant::now() + WAIT;
    while last < target {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {last} of {target}, no progress for {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
        let now = count();
        if now > last {
            last = now;
            deadline = Instant::now() + WAIT;
        }
    }
}

/// Polls `cond` until it holds; fails the test naming `what` after [`WAIT`].
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Waits until every acknowledged token is in A's or B's record; then checks each arrived exactly once, that
/// the simulators accepted nothing else, and that herald counts every one as delivered. Returns how many went
/// to (A, B).
async fn assert_nothing_lost(
    server: &Server,
    a: &SimHandle,
    b: &SimHandle,
    acked: &[String],
) -> (usize, usize) {
    let expected = acked.len() as u64;
    // The backlog left when the injector stops grows with how long the reload took to show (a loaded machine makes
    // it larger): the wait fails when delivery stops making progress, not after a fixed time.
    wait_while_progressing(
        "the simulators to accept every acknowledged notification",
        expected,
        || accepted(a) + accepted(b),
    )
    .await;
    wait_until("the delivery records to catch up", || {
        a.record().len() + b.record().len() >= acked.len()
    })
    .await;
    wait_until("herald to count every notification delivered", || {
        server.summary().delivered >= expected
    })
    .await;

    let mut seen: HashMap<String, (usize, usize)> = HashMap::with_capacity(acked.len());
    for r in a.record() {
        seen.entry(r.token).or_default().0 += 1;
    }
    for r in b.record() {
        seen.entry(r.token).or_default().1 += 1;
    }
    let lost: Vec<&String> = acked.iter().filter(|t| !seen.contains_key(*t)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged notifications lost, e.g. {:?}",
        lost.len(),
        acked.len(),
        lost.first()
    );
    let twice: Vec<(&String, &(usize, usize))> =
        seen.iter().filter(|(_, (x, y))| x + y > 1).collect();
    assert!(
        twice.is_empty(),
        "{} notifications delivered more than once, e.g. {:?}",
        twice.len(),
        twice.first()
    );
    assert_eq!(
        seen.len(),
        acked.len(),
        "the simulators recorded tokens nobody acknowledged"
    );
    assert_eq!(accepted(a) + accepted(b), expected, "simulator stats");
    let summary = server.summary();
    assert_eq!(summary.delivered, expected, "{summary:?}");
    assert_eq!(summary.failed, 0, "{summary:?}");
    let to_a = seen.values().filter(|(x, _)| *x == 1).count();
    (to_a, acked.len() - to_a)
}

struct Rig {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    pki: Pki,
    config: PathBuf,
    a: Arc<SimHandle>,
    b: Arc<SimHandle>,
    server: Arc<Server>,
    http: String,
}

async fn rig(max: i64) -> Rig {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_owned();
    let pki = Pki::generate(&dir.join("pki"), &[TOPIC.to_string()]).unwrap();
    let a = Arc::new(start_sim(&pki).await);
    let b = Arc::new(start_sim(&pki).await);
    let config = dir.join("herald.conf");
    std::fs::write(&config, config_text(&dir, &pki, a.addrs.h2.port(), max, "")).unwrap();
    let server = Server::start(&config).await.unwrap();
    let http = server.addrs().await.http[0].to_string();
    Rig {
        _dir: tmp,
        dir,
        pki,
        config,
        a,
        b,
        server,
        http,
    }
}

impl Rig {
    fn rewrite(&self, port: u16, max: i64, extra: &str) {
        let text = config_text(&self.dir, &self.pki, port, max, extra);
        std::fs::write(&self.config, text).unwrap();
    }

    async fn reload_ok(&self) {
        let report = self.server.reload(None).await.unwrap();
        assert_eq!(report.domains, 1, "{report:?}");
        assert!(report.unroutable.is_empty(), "{report:?}");
        assert_eq!(self.server.generation(), 1);
    }

    /// (route port, max_outbound_connections) of the configuration in force.
    fn in_force(&self) -> (u16, i64) {
        let d = self.server.config().domain_settings(None, None, DOMAIN);
        (d.routes[0].port, d.max_outbound_connections)
    }
}

/// Route A with one connection -> route B with four, while the injector runs (docs/architecture.md#configuration;
/// docs/momentum-compat.md#outbound-connections for `max_outbound_connections`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_moves_traffic_to_the_new_route_with_the_new_connection_limit() {
    let rig = rig(1).await;
    let (a, b) = (rig.a.clone(), rig.b.clone());
    let sampler = Sampler::start(&a, &b);
    let injector = Injector::start(&rig.http, 0x0a11_0000_0000);

    // Traffic flows over A's single connection, which is saturated (STREAMS in flight).
    wait_until("A to accept notifications", || accepted(&a) >= 500).await;
    injector
        .wait_for_more(2_000, "more acknowledged notifications")
        .await;
    assert_eq!(opened_total(&b), 0);
    let (peak_a, _) = sampler.reset();
    assert_eq!(peak_a, 1, "max_outbound_connections = 1 toward A");
    let queued = rig.server.summary().active_queue;
    assert!(
        queued > u64::from(STREAMS),
        "the injector must outpace A so that work waits at the reload: {queued} queued"
    );

    rig.rewrite(b.addrs.h2.port(), 4, "");
    rig.reload_ok().await;
    assert_eq!(rig.in_force(), (b.addrs.h2.port(), 4));
    let a_at_reload = accepted(&a);

    // The old connection finishes what it carries and closes; A then gets nothing more.
    wait_until("A's connection to drain and close", || open(&a) == 0).await;
    let a_drained = accepted(&a);
    // B gets the traffic over more than one connection at once.
    wait_until("B to have two connections open at once", || open(&b) >= 2).await;
    injector
        .wait_for_more(3_000, "traffic after the reload")
        .await;
    wait_until("B to accept notifications", || accepted(&b) >= 1_000).await;
    let acked = injector.stop().await;
    let (to_a, to_b) = assert_nothing_lost(&rig.server, &a, &b, &acked).await;

    let (peak_a, peak_b) = sampler.peaks();
    eprintln!(
        "A: {to_a} notifications ({} at reload, {a_drained} after the drain), B: {to_b}; \
         peak open connections after the reload A={peak_a} B={peak_b}; B opened {}",
        a_at_reload,
        opened_total(&b)
    );
    assert_eq!(
        accepted(&a),
        a_drained,
        "A received traffic after its drain"
    );
    assert_eq!(to_a as u64, a_drained);
    assert_eq!(opened_total(&a), 1, "at most one connection ever to A");
    assert!(peak_a <= 1);
    assert!(
        (2..=4).contains(&peak_b),
        "B's peak open connections: {peak_b}"
    );
    assert!(
        (2..=4).contains(&opened_total(&b)),
        "connections B accepted: {}",
        opened_total(&b)
    );
    assert!(to_b > 0);
}

/// Lowering `max_outbound_connections` (4 -> 1) on the same route and credentials: the surplus connections finish
/// what they carry and close, one goes on serving (no new handshake), and B never sees more than one open again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_lowering_the_connection_limit_drains_down_to_it() {
    let rig = rig(4).await;
    let b = rig.a.clone();
    let unused = rig.b.clone();
    let injector = Injector::start(&rig.http, 0x0b22_0000_0000);

    wait_until("four connections open at once", || open(&b) == 4).await;
    injector
        .wait_for_more(2_000, "acknowledged notifications")
        .await;
    let opened_before = opened_total(&b);
    assert_eq!(opened_before, 4);

    rig.rewrite(b.addrs.h2.port(), 1, "");
    rig.reload_ok().await;
    assert_eq!(rig.in_force(), (b.addrs.h2.port(), 1));

    // Three connections finish what they carry and close; the fourth stays.
    wait_until("the surplus connections to drain", || open(&b) <= 1).await;
    let settled_total = opened_total(&b);
    let sampler = Sampler::start(&b, &unused);
    // Watch for a while under traffic: never more than one connection, and no new ones.
    let accepted_at_settle = accepted(&b);
    injector
        .wait_for_more(3_000, "traffic after the drain")
        .await;
    wait_until("B to accept more after the drain", || {
        accepted(&b) >= accepted_at_settle + 1_000
    })
    .await;
    let (peak, _) = sampler.peaks();
    assert!(peak <= 1, "B had {peak} connections open after the drain");
    assert_eq!(
        opened_total(&b),
        settled_total,
        "connections opened after the drain"
    );
    assert_eq!(
        opened_total(&b),
        opened_before,
        "a connection that was open before the reload carries on"
    );
    let acked = injector.stop().await;
    let (to_b, to_unused) = assert_nothing_lost(&rig.server, &b, &unused, &acked).await;
    eprintln!(
        "lowering: {to_b} notifications, {opened_before} connections before the reload, {} in all",
        opened_total(&b)
    );
    assert_eq!(to_unused, 0);
    assert_eq!(to_b, acked.len());
    let (peak, _) = sampler.peaks();
    assert!(peak <= 1, "B had {peak} connections open while draining");
    assert_eq!(opened_total(&b), opened_before);
}

/// A broken file (an unknown option, then a syntax error) is refused with every problem named; the old route
/// and connection limit stay in force and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_of_a_broken_file_keeps_the_running_configuration() {
    let rig = rig(2).await;
    let (a, b) = (rig.a.clone(), rig.b.clone());
    let sampler = Sampler::start(&a, &b);
    let injector = Injector::start(&rig.http, 0x0c33_0000_0000);
    wait_until("A to accept notifications", || accepted(&a) >= 500).await;
    injector
        .wait_for_more(2_000, "acknowledged notifications")
        .await;

    // A misspelt option alongside a new route and limit: nothing of the file may take effect.
    rig.rewrite(b.addrs.h2.port(), 4, "  max_outbound_conections = 4\n");
    let err = rig.server.reload(None).await.unwrap_err().to_string();
    eprintln!("refused reload: {err}");
    assert!(err.contains("max_outbound_conections"), "{err}");
    // Line 19 of `config_text` is where `extra` goes.
    assert!(err.contains("herald.conf:19:"), "{err}");
    assert!(
        err.contains("did you mean `max_outbound_connections`"),
        "{err}"
    );
    assert!(err.contains("running one stays in force"), "{err}");
    injector
        .wait_for_more(2_000, "traffic after the refused reload")
        .await;

    // A syntax error: an unclosed scope.
    let text = config_text(&rig.dir, &rig.pki, b.addrs.h2.port(), 4, "");
    std::fs::write(&rig.config, text.trim_end().trim_end_matches('}')).unwrap();
    let err = rig.server.reload(None).await.unwrap_err().to_string();
    eprintln!("refused reload: {err}");
    // The domain scope opens on line 5.
    assert!(err.contains("herald.conf:5:"), "{err}");
    assert!(err.contains("unterminated scope"), "{err}");
    assert!(err.contains("running one stays in force"), "{err}");
    injector
        .wait_for_more(2_000, "traffic after the second refused reload")
        .await;

    assert_eq!(rig.server.generation(), 0);
    assert_eq!(rig.in_force(), (a.addrs.h2.port(), 2));
    let acked = injector.stop().await;
    let (to_a, to_b) = assert_nothing_lost(&rig.server, &a, &b, &acked).await;
    eprintln!(
        "broken file: A {to_a}, B {to_b}, A opened {} connections",
        opened_total(&a)
    );
    assert_eq!(to_b, 0, "B received traffic from a refused configuration");
    assert_eq!(to_a, acked.len());
    assert_eq!(opened_total(&b), 0);
    let (peak_a, _) = sampler.peaks();
    assert!(
        peak_a <= 2,
        "A had {peak_a} connections open with a limit of 2"
    );
    assert_eq!(
        opened_total(&a),
        2,
        "the old connections stay; none reopened"
    );
}

/// An HTTP listener's TLS identity at a reload: one that does not load leaves the listener running as it was (and
/// the reload says so, as an error); one that loads restarts it on HTTPS; a certificate renewed in place (same
/// paths, new content) is picked up by the next reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_listener_keeps_running_when_its_new_tls_identity_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let port = support::free_port();
    let config = dir.path().join("herald.conf");
    let write = |listen_options: &str| {
        std::fs::write(
            &config,
            format!(
                "spool_dir = \"{}\"\nhttp_listener {{ listen \"127.0.0.1:{port}\" {{ {listen_options} }} }}\n",
                dir.path().join("spool").display()
            ),
        )
        .unwrap()
    };
    write("");
    let server = Server::start(&config).await.unwrap();
    let plain = reqwest::Client::new();
    let healthz = format!("http://127.0.0.1:{port}/healthz");
    assert_eq!(plain.get(&healthz).send().await.unwrap().status(), 200);

    let missing = dir.path().join("missing.pem");
    write(&format!(
        "tls_certificate = \"{0}\" tls_key = \"{0}\"",
        missing.display()
    ));
    let report = server.reload(None).await.unwrap();
    assert_eq!(report.listener_errors.len(), 1, "{report:?}");
    assert!(
        report.listener_errors[0].contains("keeps running with its previous settings"),
        "{report:?}"
    );
    assert!(report.listeners_restarted.is_empty(), "{report:?}");
    assert_eq!(plain.get(&healthz).send().await.unwrap().status(), 200);

    // A loadable identity: the listener restarts on HTTPS.
    let (cert, key) = (dir.path().join("live.pem"), dir.path().join("live.key"));
    std::fs::copy(&pki.manifest.server_cert, &cert).unwrap();
    std::fs::copy(&pki.manifest.server_key, &key).unwrap();
    write(&format!(
        "tls_certificate = \"{}\" tls_key = \"{}\"",
        cert.display(),
        key.display()
    ));
    let report = server.reload(None).await.unwrap();
    assert!(report.listener_errors.is_empty(), "{report:?}");
    assert_eq!(report.listeners_restarted.len(), 1, "{report:?}");
    let https = |ca: &Path| {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap(),
            )
            .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap())
            .build()
            .unwrap()
    };
    let secure = format!("https://localhost:{port}/healthz");
    let r = https(&pki.manifest.ca_cert).get(&secure).send().await;
    assert_eq!(r.unwrap().status(), 200);

    // Renewed in place: the same text, new files. The certificate is replaced without a restart: a connection
    // opened before the reload keeps working on the same socket.
    let kept = https(&pki.manifest.ca_cert);
    assert_eq!(kept.get(&secure).send().await.unwrap().status(), 200);
    let other = tempfile::tempdir().unwrap();
    let renewed = Pki::generate(other.path(), &[TOPIC.to_string()]).unwrap();
    std::fs::copy(&renewed.manifest.server_cert, &cert).unwrap();
    std::fs::copy(&renewed.manifest.server_key, &key).unwrap();
    let report = server.reload(None).await.unwrap();
    assert!(report.listeners_restarted.is_empty(), "{report:?}");
    assert_eq!(report.certificates_reloaded.len(), 1, "{report:?}");
    assert_eq!(kept.get(&secure).send().await.unwrap().status(), 200);
    let r = https(&renewed.manifest.ca_cert).get(&secure).send().await;
    assert_eq!(r.unwrap().status(), 200);
    assert!(
        https(&pki.manifest.ca_cert)
            .get(&secure)
            .send()
            .await
            .is_err()
    );

    // An option read only at start: the reload says its new value waits for a restart.
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, format!("outcome_retention = 60\n{text}")).unwrap();
    let report = server.reload(None).await.unwrap();
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.starts_with("outcome_retention changed") && w.contains("read at start only")),
        "{report:?}"
    );
    server.shutdown(Duration::from_secs(2)).await;
}

/// A configuration with one domain, `idle.example`, that `extra` (inside its scope, after the simulator's options)
/// may break, and an HTTP listener; no traffic.
fn idle_domain_config(dir: &Path, pki: &Pki, port: u16, extra: &str) -> String {
    format!(
        r#"spool_dir = "{spool}"
http_listener {{ listen "127.0.0.1:0" {{ }} }}
domain "{IDLE}" {{
{credentials}{extra}
}}
"#,
        spool = dir.join("spool").display(),
        credentials = token_auth_options(pki, port, TOPIC),
    )
}

const IDLE: &str = "idle.example";

/// A reload that leaves a domain without a queue (no traffic since the start) unable to deliver — its provider key
/// pointed at a file that does not exist — names it and why, as it does for a domain with traffic; the new
/// configuration is in force all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_names_an_idle_domain_it_leaves_undeliverable() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let config = dir.path().join("herald.conf");
    let port = support::free_port();
    std::fs::write(&config, idle_domain_config(dir.path(), &pki, port, "")).unwrap();
    let server = Server::start(&config).await.unwrap();
    assert!(server.engine.queues().is_empty(), "the domain has no queue");

    let report = server.reload(None).await.unwrap();
    assert!(report.unroutable.is_empty(), "{report:?}");

    let missing = dir.path().join("no-such-key.p8");
    std::fs::write(
        &config,
        idle_domain_config(
            dir.path(),
            &pki,
            port,
            &format!("  apn_key = \"{}\"\n", missing.display()),
        ),
    )
    .unwrap();
    let report = server.reload(None).await.unwrap();
    assert_eq!(report.unroutable.len(), 1, "{report:?}");
    let (domain, why) = &report.unroutable[0];
    assert_eq!(domain, IDLE);
    assert!(
        why.contains("apn_key") && why.contains(&missing.display().to_string()),
        "{why}"
    );
    assert_eq!(server.generation(), 2, "the configuration is in force");
    server.shutdown(Duration::from_secs(2)).await;
}

/// Spooled notifications of a domain whose provider key was missing when herald started stay in the spool (they
/// cannot be queued); the reload that puts a usable key in force queues them, and they are delivered, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_notifications_of_a_domain_fixed_by_a_reload_are_delivered() {
    use herald_spool::{DiskSpool, Spool, SpoolOptions, StoredNotification};

    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim = start_sim(&pki).await;
    let port = sim.addrs.h2.port();
    // What an earlier run accepted and did not deliver.
    let tokens: Vec<String> = (0..20).map(|i| token(0x5b00_0000_0000, i)).collect();
    {
        let spool = DiskSpool::open(dir.path().join("spool"), SpoolOptions::default()).unwrap();
        let records = tokens
            .iter()
            .map(|t| StoredNotification {
                key: spool.next_key(),
                domain: IDLE.to_owned(),
                token: (0..32)
                    .map(|i| u8::from_str_radix(&t[i * 2..i * 2 + 2], 16).unwrap())
                    .collect(),
                topic: Some(TOPIC.to_owned()),
                push_type: Some("alert".to_owned()),
                priority: None,
                expiration: None,
                collapse_id: None,
                apns_id: None,
                binding: None,
                payload: br#"{"aps":{"alert":"left in the spool"}}"#.to_vec(),
                sender: String::new(),
                recipient: format!("{t}@{IDLE}"),
                received_at: std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs(),
                batch_id: 0,
                conn_id: 0,
                retries: 0,
                next_attempt_ms: 0,
            })
            .collect();
        spool.append(records).await.unwrap();
        spool.close().await.unwrap();
    }
    let config = dir.path().join("herald.conf");
    let missing = dir.path().join("no-such-key.p8");
    std::fs::write(
        &config,
        idle_domain_config(
            dir.path(),
            &pki,
            port,
            &format!("  apn_key = \"{}\"\n", missing.display()),
        ),
    )
    .unwrap();
    let server = Server::start(&config).await.unwrap();
    wait_until("the start-up restore to finish", || {
        !server.restore_progress.is_running()
    })
    .await;
    assert_eq!(server.restore_progress.queued(), 0);
    assert_eq!(accepted(&sim), 0);

    std::fs::write(&config, idle_domain_config(dir.path(), &pki, port, "")).unwrap();
    let report = server.reload(None).await.unwrap();
    assert!(report.unroutable.is_empty(), "{report:?}");
    wait_until("the spooled notifications to be delivered", || {
        sim.record().len() >= tokens.len()
    })
    .await;
    let mut delivered: Vec<String> = sim.record().into_iter().map(|r| r.token).collect();
    delivered.sort();
    assert_eq!(
        delivered, tokens,
        "each spooled notification delivered once"
    );
    wait_until("herald to count them delivered", || {
        server.summary().delivered == tokens.len() as u64
    })
    .await;
    // Nothing is left for a later reload to queue a second time.
    let report = server.reload(None).await.unwrap();
    assert!(report.unroutable.is_empty(), "{report:?}");
    wait_until("the delivered notifications to leave the spool", || {
        server.spool.stats().removed >= tokens.len() as u64
    })
    .await;
    assert_eq!(sim.record().len(), tokens.len());
    server.shutdown(Duration::from_secs(2)).await;
    sim.shutdown().await;
}

/// A configuration with an HTTP listener, an `ec_logger` writing `mainlog` and an `apn_logger` writing `apnlog`
/// with `apn_options` inside its stanza; `global` goes first.
fn logger_config(dir: &Path, global: &str, mainlog: &Path, apn_options: &str) -> String {
    format!(
        "{global}\nspool_dir = \"{spool}\"\nhttp_listener {{ listen \"127.0.0.1:0\" {{ }} }}\n\
         ec_logger \"main\" {{ mainlog = \"{mainlog}\" }}\n\
         apn_logger \"push\" {{ logfile = \"{apnlog}\" {apn_options} }}\n",
        spool = dir.join("spool").display(),
        mainlog = mainlog.display(),
        apnlog = dir.join("apnlog.ec").display(),
    )
}

/// A reload whose loggers `herald serve` would refuse at its next start — an apn_logger format with an unknown
/// macro, a mainlog that cannot be created — puts the configuration in force (the loggers are read at start only:
/// the running ones keep their settings) and names each problem as a warning, as `herald check` does. It used to
/// say only that the options are read at start only, and the next restart failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_warns_about_loggers_the_next_start_would_refuse() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    let mainlog = dir.path().join("mainlog.ec");
    std::fs::write(&config, logger_config(dir.path(), "", &mainlog, "")).unwrap();
    let server = Server::start(&config).await.unwrap();
    let report = server.reload(None).await.unwrap();
    assert!(report.warnings.is_empty(), "{report:?}");

    let not_a_dir = dir.path().join("plain-file");
    std::fs::write(&not_a_dir, "").unwrap();
    let unwritable = not_a_dir.join("mainlog.ec");
    std::fs::write(
        &config,
        logger_config(
            dir.path(),
            "",
            &unwritable,
            "log_delivery_format = \"%t@%q\"",
        ),
    )
    .unwrap();
    let report = server.reload(None).await.unwrap();
    let refused = |what: &str| {
        report
            .warnings
            .iter()
            .any(|w| w.contains(what) && w.contains("herald would not start with it"))
    };
    assert!(
        refused("apn_logger \"push\" log_delivery_format: unknown apn_logger macro %q"),
        "{report:?}"
    );
    assert!(
        refused(&format!(
            "ec_logger \"main\" mainlog {}",
            unwritable.display()
        )),
        "{report:?}"
    );
    assert_eq!(server.generation(), 2, "the configuration is in force");
    server.shutdown(Duration::from_secs(2)).await;
}

/// An option read at start only is named at every reload while the file's value differs from the one herald started
/// with, and no longer once the file has it again. The comparison used to be with the last reloaded configuration:
/// the second reload of the same file said nothing, while the running value was still the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_only_change_is_named_at_every_reload_until_undone() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    let mainlog = dir.path().join("mainlog.ec");
    std::fs::write(&config, logger_config(dir.path(), "", &mainlog, "")).unwrap();
    let server = Server::start(&config).await.unwrap();
    let pending = |report: &herald::server::ReloadReport| {
        report
            .warnings
            .iter()
            .any(|w| w.starts_with("outcome_retention changed") && w.contains("read at start only"))
    };
    std::fs::write(
        &config,
        logger_config(dir.path(), "outcome_retention = 60", &mainlog, ""),
    )
    .unwrap();
    for reload in 1..=2 {
        let report = server.reload(None).await.unwrap();
        assert!(pending(&report), "reload {reload}: {report:?}");
    }
    std::fs::write(&config, logger_config(dir.path(), "", &mainlog, "")).unwrap();
    let report = server.reload(None).await.unwrap();
    assert!(!pending(&report), "{report:?}");
    server.shutdown(Duration::from_secs(2)).await;
}

/// `herald serve` logs each warning of a SIGHUP reload at warn level (they used to be only in an info-level dump of
/// the report: at `RUST_LOG=warn` a pending start-only change, or a logger the next start would refuse, went
/// unsaid).
#[test]
fn a_sighup_reload_logs_its_warnings_at_warn_level() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("herald.conf");
    let mainlog = dir.path().join("mainlog.ec");
    std::fs::write(&config, logger_config(dir.path(), "", &mainlog, "")).unwrap();
    let err_path = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "-c"])
        .arg(&config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&err_path).unwrap())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let kill = |signal: &str, pid: u32| {
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };
    let waited = (|| {
        if !ready.contains("http") {
            return Err(format!("ready line: {ready:?}"));
        }
        std::fs::write(
            &config,
            logger_config(
                dir.path(),
                "outcome_retention = 60",
                &mainlog,
                "log_delivery_format = \"%t@%q\"",
            ),
        )
        .unwrap();
        kill("-HUP", child.id());
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&err_path).unwrap_or_default();
            let said = |what: &str| {
                text.lines().any(|l| {
                    l.contains("WARN") && l.contains("SIGHUP: reload:") && l.contains(what)
                })
            };
            if said("outcome_retention changed") && said("unknown apn_logger macro %q") {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("no SIGHUP reload warnings at warn level:\n{text}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })();
    kill("-TERM", child.id());
    let status = child.wait().unwrap();
    waited.unwrap();
    assert!(status.success(), "herald serve exited with {status}");
}
