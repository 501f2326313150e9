//! The admin port and the delivery record: `GET /stats`, `POST /tokens`, `GET /record`, and every accepted
//! notification recorded exactly once, byte for byte, in the JSON-lines file.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use herald_sim::{CertVariant, DeliveryRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: sim\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_accepted_notification_is_recorded_exactly_once() {
    let record = tempfile::NamedTempFile::new().unwrap();
    let path = record.path().to_owned();
    let t = start_with(|c, _| c.record_path = Some(path.clone())).await;
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    let cfg = client_config(&t.pki, Some((&cert, &key)), true);
    let mut tasks = Vec::new();
    for conn in 0..4u8 {
        let client = h2_connect(t.sim.addrs.h2, cfg.clone()).await;
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut inner = Vec::new();
            for i in 0..50u8 {
                let mut c = client.clone();
                inner.push(tokio::spawn(async move {
                    let payload = format!(r#"{{"aps":{{"alert":"n{conn}-{i} é"}}}}"#);
                    let a = send(
                        &mut c,
                        "POST",
                        &format!("/3/device/{}", token(conn)),
                        &[("apns-topic", TOPIC), ("apns-priority", "5")],
                        payload.as_bytes(),
                    )
                    .await;
                    assert_eq!(a.status, 200);
                    (a.headers["apns-id"].to_str().unwrap().to_owned(), payload)
                }));
            }
            for h in inner {
                ids.push(h.await.unwrap());
            }
            ids
        }));
    }
    let mut sent = BTreeSet::new();
    for t in tasks {
        sent.extend(t.await.unwrap());
    }
    assert_eq!(sent.len(), 200);
    assert_eq!(
        t.sim.wait_for_records(200, Duration::from_secs(10)).await,
        200
    );
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<DeliveryRecord> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 200, "exactly once");
    let recorded: BTreeSet<(String, String)> = lines
        .iter()
        .map(|r| (r.apns_id.clone().unwrap(), r.payload.clone()))
        .collect();
    assert_eq!(recorded, sent, "same ids, same payload bytes");
    assert!(lines.iter().all(|r| r.priority == 5 && r.topic == TOPIC));
    assert_eq!(t.sim.record().len(), 200);

    let (status, body) = http(t.sim.addrs.admin, "GET", "/stats", "").await;
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["accepted"]["total"], 200);
    assert_eq!(stats["accepted"]["h2"], 200);
    assert_eq!(stats["accepted"]["by_topic"][TOPIC]["h2"], 200);
    assert_eq!(stats["connections"]["h2"]["total"], 4);
    assert_eq!(stats["streams"]["total"], 200);
    let (status, body) = http(t.sim.addrs.admin, "GET", "/record", "").await;
    assert_eq!(status, 200);
    assert_eq!(body.lines().count(), 200);
}

#[tokio::test]
async fn tokens_can_be_invalidated_at_run_time() {
    let t = start().await;
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    let mut client = h2_connect(
        t.sim.addrs.h2,
        client_config(&t.pki, Some((&cert, &key)), true),
    )
    .await;
    let path = format!("/3/device/{}", token(0x42));
    assert_eq!(
        send(
            &mut client,
            "POST",
            &path,
            &[("apns-topic", TOPIC)],
            PAYLOAD
        )
        .await
        .status,
        200
    );
    let body = format!(
        r#"{{"token":"{}","state":"unregistered","timestamp_ms":1600000000000}}"#,
        token(0x42).to_uppercase()
    );
    let (status, _) = http(t.sim.addrs.admin, "POST", "/tokens", &body).await;
    assert_eq!(status, 200);
    let a = send(
        &mut client,
        "POST",
        &path,
        &[("apns-topic", TOPIC)],
        PAYLOAD,
    )
    .await;
    assert_eq!(
        (a.status, a.reason().as_deref()),
        (410, Some("Unregistered"))
    );
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&a.body).unwrap()["timestamp"],
        1_600_000_000_000u64
    );
    let (status, body) = http(
        t.sim.addrs.admin,
        "POST",
        "/tokens",
        r#"{"token":"xyz","state":"bad"}"#,
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = http(t.sim.addrs.admin, "GET", "/nope", "").await;
    assert_eq!(status, 404);
}

/// A latency or jitter beyond an hour is refused by `POST /pace` (400 naming the field and the maximum) and changes
/// nothing; before, a jitter of u64::MAX was taken and the next request's connection died computing it.
#[tokio::test]
async fn pace_refuses_a_latency_beyond_an_hour() {
    let t = start().await;
    let admin = t.sim.addrs.admin;
    for field in ["latency_jitter_ms", "latency_ms"] {
        let (status, body) = http(
            admin,
            "POST",
            "/pace",
            &format!(r#"{{"{field}": 18446744073709551615}}"#),
        )
        .await;
        assert_eq!(status, 400, "{field}: {body}");
        assert!(body.contains(field) && body.contains("3600000"), "{body}");
    }
    let (status, body) = http(admin, "GET", "/pace", "").await;
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        serde_json::json!({"latency_ms": 0, "latency_jitter_ms": 0, "rate": 0}),
        "nothing changed"
    );
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    let mut client = h2_connect(
        t.sim.addrs.h2,
        client_config(&t.pki, Some((&cert, &key)), true),
    )
    .await;
    let path = format!("/3/device/{}", token(1));
    assert_eq!(
        send(
            &mut client,
            "POST",
            &path,
            &[("apns-topic", TOPIC)],
            PAYLOAD
        )
        .await
        .status,
        200
    );
    // An hour is allowed.
    let (status, body) = http(admin, "POST", "/pace", r#"{"latency_jitter_ms": 3600000}"#).await;
    assert_eq!(status, 200, "{body}");
}

/// The in-memory record keeps the latest `record_memory_limit` notifications: older ones are dropped and counted
/// (`SimHandle::record_dropped`, `/stats` `records_dropped`, the `GET /record` header), the file keeps them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_record_keeps_the_latest_within_its_limit() {
    let record = tempfile::NamedTempFile::new().unwrap();
    let path = record.path().to_owned();
    let t = start_with(|c, _| {
        c.record_path = Some(path.clone());
        c.record_memory_limit = 2;
    })
    .await;
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    let mut client = h2_connect(
        t.sim.addrs.h2,
        client_config(&t.pki, Some((&cert, &key)), true),
    )
    .await;
    for n in 1..=3u8 {
        let a = send(
            &mut client,
            "POST",
            &format!("/3/device/{}", token(n)),
            &[("apns-topic", TOPIC)],
            PAYLOAD,
        )
        .await;
        assert_eq!(a.status, 200);
    }
    let kept: Vec<String> = t.sim.record().into_iter().map(|r| r.token).collect();
    assert_eq!(kept, [token(2), token(3)]);
    assert_eq!(t.sim.record_dropped(), 1);
    assert_eq!(t.sim.stats().records_dropped, 1);
    let (status, body) = http(t.sim.addrs.admin, "GET", "/stats", "").await;
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(stats["records_dropped"], 1);
    assert_eq!(t.sim.wait_for_records(3, Duration::from_secs(10)).await, 3);
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 3);
}
