//! A cold backlog against a slow APNs (docs/operations.md#a-slow-apns-response-timeouts-and-duplicates): two domains,
//! one with token and one with certificate authentication, reach a simulator that processes 20 requests/s over
//! all its connections, first in first out, as a busy APNs would. With both queues empty and no connection open,
//! thousands of notifications arrive for each domain at once. Slowness opens no connections: each domain keeps
//! one, and no stream goes unanswered within the response timeout (a cancelled stream is a possible duplicate).

mod support;

use std::time::{Duration, Instant};

use herald::server::Server;
use herald_sim::{Pki, SimConfig, Simulator};
use serde_json::json;
use support::{cert_auth_options, token_auth_options};

const TOPIC: &str = "com.example.cold";
const TOKEN_DOMAIN: &str = "token.example";
const CERT_DOMAIN: &str = "cert.example";

fn token(i: usize) -> String {
    format!("c0{i:062x}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_backlog_against_a_slow_fifo_apns_opens_no_connections_and_nothing_times_out() {
    const PER_DOMAIN: usize = 5000;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(&dir.path().join("pki"), &[TOPIC.to_string()]).unwrap();
    let mut config = SimConfig::from_pki(&pki.manifest).unwrap();
    config.scenario.rate = 20;
    let sim = Simulator::start(config).await.unwrap();
    let port = sim.addrs.h2.port();
    // Defaults otherwise: `max_outbound_connections` 32, `delivery_response_timeout` 5 s.
    let text = format!(
        r#"
spool_dir = "{spool}"
ec_logger "main" {{ mainlog = "{log}" }}
http_listener {{ listen "127.0.0.1:0" {{ }} }}
domain "{TOKEN_DOMAIN}" {{
{token}}}
domain "{CERT_DOMAIN}" {{
{cert}}}
"#,
        spool = dir.path().join("spool").display(),
        log = dir.path().join("mainlog.ec").display(),
        token = token_auth_options(&pki, port, TOPIC),
        cert = cert_auth_options(&pki, port, TOPIC),
    );
    let path = dir.path().join("herald.conf");
    std::fs::write(&path, text).unwrap();
    let server = Server::start(&path).await.unwrap();
    let http = server.addrs().await.http[0].to_string();
    let client = reqwest::Client::new();
    // Both domains' backlogs at once, in requests of 500 as a sender would post them.
    let mut posts = Vec::new();
    for domain in [TOKEN_DOMAIN, CERT_DOMAIN] {
        let client = client.clone();
        let http = http.clone();
        posts.push(tokio::spawn(async move {
            for start in (0..PER_DOMAIN).step_by(500) {
                let tokens: Vec<String> = (start..start + 500).map(token).collect();
                let response = client
                    .post(format!("http://{http}/api/v1/push"))
                    .json(&json!({"domain": domain, "tokens": tokens, "payload": {"aps": {"alert": "cold"}}}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 202);
            }
        }));
    }
    for post in posts {
        post.await.unwrap();
    }
    // 8 s of answers at 20/s: every stream the first round trips put in flight has been answered or timed out.
    let deadline = Instant::now() + Duration::from_secs(120);
    while sim.stats().accepted.total < 160 {
        assert!(
            Instant::now() < deadline,
            "160 notifications accepted within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = sim.stats();
    assert_eq!(
        stats.streams.cancelled, 0,
        "streams cancelled after the response timeout"
    );
    assert_eq!(
        stats.connections.h2.total, 2,
        "connections opened for two domains against a server answering 20 requests/s"
    );
    server.shutdown(Duration::from_secs(5)).await;
    sim.shutdown().await;
}
