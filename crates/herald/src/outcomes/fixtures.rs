//! Notifications and outcome records for the unit tests of the outcome listeners.

use std::sync::Arc;

use bytes::Bytes;
use herald_apns::client::PushRequest;
use herald_apns::token_hex::DeviceToken;

use crate::logs::{OutcomeKind, OutcomeRecord};
use crate::queue::message::{MessageId, Notification, unix_now};

/// A notification to `domain` for the token of 32 bytes `token_byte`, accepted now.
pub fn notification(id: MessageId, domain: &str, token_byte: u8) -> Notification {
    Notification {
        id,
        batch_id: MessageId::NONE,
        conn_id: MessageId::NONE,
        domain: Arc::from(domain),
        binding: Arc::from("default"),
        recipient_given: None,
        push: PushRequest {
            token: DeviceToken::from_bytes([token_byte; 32]).unwrap(),
            topic: None,
            push_type: None,
            priority: None,
            expiration: None,
            collapse_id: None,
            apns_id: None,
            payload: Bytes::from_static(b"{}"),
        },
        sender: Arc::from("test"),
        received_at: unix_now(),
    }
}

/// `n` delivered at its first attempt, now.
pub fn delivered(n: &Notification) -> OutcomeRecord<'_> {
    OutcomeRecord {
        kind: OutcomeKind::Delivered,
        notification: n,
        binding_group: "",
        binding: "default",
        retries: 0,
        remote_ip: None,
        transaction_id: Some("apns-id"),
        status: None,
        error: "",
        connected: true,
        bytes: 0,
        at: unix_now(),
        apns_unique_id: None,
        apns_timestamp_ms: None,
    }
}

/// The ids a test webhook receiver took, in the order it took them.
pub type Took = Arc<std::sync::Mutex<Vec<String>>>;

/// A webhook receiver on a loopback port that takes every batch (204): its URL and the ids it took.
pub async fn receiver() -> (String, Took) {
    receiver_refusing(|_| false).await
}

/// A webhook receiver on a loopback port that answers `413 Payload Too Large` to the bodies `too_large` says so of,
/// and takes the others (204): its URL and the ids it took.
pub async fn receiver_refusing(
    too_large: impl Fn(&[u8]) -> bool + Clone + Send + Sync + 'static,
) -> (String, Took) {
    let took: Took = Arc::default();
    let kept = took.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (kept, too_large) = (kept.clone(), too_large.clone());
            async move {
                if too_large(&body) {
                    return axum::http::StatusCode::PAYLOAD_TOO_LARGE;
                }
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let mut kept = kept.lock().unwrap();
                for e in v["outcomes"].as_array().unwrap() {
                    kept.push(e["id"].as_str().unwrap().to_owned());
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}/hook"), took)
}

/// Waits (at most 30 s) until `done` holds; fails the test naming `what` otherwise.
pub async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !done() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}
