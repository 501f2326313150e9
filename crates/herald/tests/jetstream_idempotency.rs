//! A request with an `Idempotency-Key` that NATS refused part-way, retried with its key (docs/api.md "Idempotent
//! requests", JetStream spool): the notifications NATS took before the refusal are delivered once, not again with
//! the retry, and the retry's answer names the ids the first attempt gave them.
//!
//! The refusal part-way is the stream's own: a message limit with discard New (which herald accepts) refuses the
//! publishes past it, deterministically, after the stream took the first ones. The test starts its own
//! `nats-server` (skipped with a message when it is not installed, failing under `CI`).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use herald_sim::{Pki, SimConfig, SimHandle, Simulator};
use support::daemon::Daemon;
use support::{nats, token_auth_options};

const TOPIC: &str = "com.example.js";
const DOMAIN: &str = "js.example";
/// How long a test waits for something that should happen within a few seconds.
const WAIT: Duration = Duration::from_secs(60);

fn write_config(dir: &Path, name: &str, pki: &Pki, h2_port: u16, nats_url: &str) -> PathBuf {
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
ec_logger "main" {{ mainlog = "{log}" }}
http_listener {{
  always_allow = ( "127.0.0.1/32" )
  listen "127.0.0.1:0" {{ http_services = ( inject push tokens metrics ) }}
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
    format!("{:064x}", 0x16_0000_0000u64 + i as u64)
}

/// POSTs `body` to `/api/v1/push`, with `key` as its `Idempotency-Key` if any: (status, replayed, body).
async fn post(
    client: &reqwest::Client,
    http: &str,
    key: Option<&str>,
    body: &str,
) -> (u16, bool, String) {
    let mut request = client
        .post(format!("http://{http}/api/v1/push"))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let replayed = r.headers().contains_key("idempotent-replayed");
    (status, replayed, r.text().await.unwrap())
}

fn ids_of(answer: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(answer).unwrap();
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "accepted", "{r}");
            r["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// Tokens the simulator recorded, with how many times each.
fn delivered(sim: &SimHandle) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for r in sim.record() {
        *m.entry(r.token).or_insert(0) += 1;
    }
    m
}

/// Message ids of the mainlogs' delivery (`D`) lines (`time@id@batch@conn@D@…`), sorted.
fn delivery_ids(mainlogs: &[PathBuf]) -> Vec<String> {
    let mut ids: Vec<String> = mainlogs
        .iter()
        .flat_map(|log| {
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .map(|l| l.split('@').map(str::to_owned).collect::<Vec<_>>())
                .filter(|f| f.get(4).map(String::as_str) == Some("D"))
                .map(|f| f[1].clone())
                .collect::<Vec<_>>()
        })
        .collect();
    ids.sort_unstable();
    ids
}

async fn wait_until(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A keyed request of five notifications into a stream that holds three: NATS takes the first three and refuses
/// the rest, the request is refused (503), and the three are delivered. Its retry with the same key and body,
/// through another node, is accepted: its answer names the ids the first attempt gave the three delivered ones
/// (their mainlog `D` lines carry them), its publishes repeat the first attempt's message ids, the stream drops
/// the three copies, and every device gets its notification once. A request without a key is published under its
/// node's own message id, not one a retry would repeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyed_request_refused_part_way_and_retried_sends_each_notification_once() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = nats::single(dir.path());
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let sim = Simulator::start(SimConfig::from_pki(&pki.manifest).unwrap())
        .await
        .unwrap();
    let port = sim.addrs.h2.port();

    // The stream, made before herald starts: three messages at most, discard New (a full stream refuses).
    let nats_client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(nats_client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "herald".into(),
        subjects: vec!["herald.notifications".into()],
        retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
        storage: async_nats::jetstream::stream::StorageType::File,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        max_messages: 3,
        ..Default::default()
    })
    .await
    .unwrap();
    // Every publish, with its message id, as a subscriber of the subject sees it.
    let mut published = nats_client.subscribe("herald.notifications").await.unwrap();
    nats_client.flush().await.unwrap();
    let mut msg_ids = Vec::new();
    let mut more_msg_ids = async |msg_ids: &mut Vec<String>, count: usize| {
        while msg_ids.len() < count {
            let m = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut published))
                .await
                .expect("a publish")
                .unwrap();
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            msg_ids.push(id);
        }
    };

    let configs: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|n| write_config(dir.path(), n, &pki, port, &server.url()))
        .collect();
    let mainlogs: Vec<PathBuf> = configs
        .iter()
        .map(|c| c.parent().unwrap().join("mainlog.ec"))
        .collect();
    let nodes: Vec<Daemon> = configs.iter().map(|c| Daemon::start(c)).collect();
    let client = reqwest::Client::new();
    let tokens: Vec<String> = (0..5).map(token).collect();
    let body = serde_json::json!({"domain": DOMAIN, "tokens": tokens, "payload": {"aps": {"alert": "once"}}})
        .to_string();

    // The first attempt, through node a: NATS takes three of five, the request is refused.
    let (status, _, text) = post(&client, &nodes[0].http, Some("order-7"), &body).await;
    assert_eq!(status, 503, "{text}");
    more_msg_ids(&mut msg_ids, 5).await;
    // The three it took are delivered, and acked: the stream is empty again.
    let mut stream = js.get_stream("herald").await.unwrap();
    wait_until("the first three delivered and acked", async || {
        let got = delivered(&sim);
        tokens[..3].iter().all(|t| got.contains_key(t))
            && stream.info().await.unwrap().state.messages == 0
            && delivery_ids(&mainlogs).len() == 3
    })
    .await;
    let first_delivered = delivery_ids(&mainlogs);

    // The retry, through node b: accepted, under the first attempt's ids.
    let (status, replayed, answer) = post(&client, &nodes[1].http, Some("order-7"), &body).await;
    assert_eq!((status, replayed), (202, false), "{answer}");
    let ids = ids_of(&answer);
    assert_eq!(ids.len(), 5);
    let mut retried_first = ids[..3].to_vec();
    retried_first.sort_unstable();
    assert_eq!(
        retried_first, first_delivered,
        "the retry's answer does not name the ids the first attempt gave what NATS took"
    );
    more_msg_ids(&mut msg_ids, 10).await;
    assert_eq!(
        msg_ids[5..10],
        msg_ids[..5],
        "the retry's publishes do not repeat the first attempt's message ids"
    );
    assert!(
        msg_ids[..5].iter().all(|id| id.starts_with('i')),
        "{msg_ids:?}"
    );

    // Every device gets its notification once; the stream stored five messages in all.
    wait_until("all five delivered and acked", async || {
        let got = delivered(&sim);
        tokens.iter().all(|t| got.contains_key(t))
            && stream.info().await.unwrap().state.messages == 0
            && delivery_ids(&mainlogs).len() >= 5
    })
    .await;
    assert_eq!(stream.info().await.unwrap().state.last_sequence, 5);
    let got = delivered(&sim);
    assert!(tokens.iter().all(|t| got[t] == 1), "{got:?}");
    let mut all = ids.clone();
    all.sort_unstable();
    assert_eq!(delivery_ids(&mainlogs), all, "each id delivered once");

    // The accepted retry is remembered as any accepted request.
    let (status, replayed, again) = post(&client, &nodes[0].http, Some("order-7"), &body).await;
    assert_eq!((status, replayed, again), (202, true, answer));

    // A request without a key: published under its node's own message id.
    let plain = serde_json::json!({"domain": DOMAIN, "tokens": [token(9)], "payload": {"aps": {"alert": "plain"}}})
        .to_string();
    let (status, _, text) = post(&client, &nodes[0].http, None, &plain).await;
    assert_eq!(status, 202, "{text}");
    more_msg_ids(&mut msg_ids, 11).await;
    let plain_id = &msg_ids[10];
    let printed = &ids_of(&text)[0];
    assert!(
        !plain_id.is_empty() && !msg_ids[..10].contains(plain_id),
        "{plain_id:?} {msg_ids:?}"
    );
    assert!(
        !(plain_id.starts_with('i') && plain_id.len() == 66),
        "a request without a key published under a retry's message id: {plain_id}"
    );
    wait_until("the plain request delivered", async || {
        delivery_ids(&mainlogs).contains(printed)
    })
    .await;
    for node in nodes {
        node.terminate();
    }
}
