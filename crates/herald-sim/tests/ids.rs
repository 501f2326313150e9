//! The simulator's judgement of ids, raw over TLS + HTTP/2: an `apns-id` must be a lowercase canonical UUID on the
//! device and broadcast ports alike, and an `apns-channel-id` must be base64, not merely drawn from its alphabet.

mod common;

use common::*;
use herald_apns::broadcast::{BroadcastClient, StoragePolicy};
use herald_apns::client::connect::Endpoint;
use herald_apns::provider_token::ProviderTokenCache;
use herald_sim::CertVariant;
use std::time::Duration;

const UPDATE: &[u8] =
    br#"{"aps":{"event":"update","timestamp":1700000000,"content-state":{"score":"1-0"}}}"#;

/// apns.md line 170: `apns-id` is a canonical UUID in lowercase, anything else BadMessageId; the lowercase form is
/// taken and echoed.
#[tokio::test]
async fn the_device_port_takes_only_a_lowercase_apns_id() {
    let t = start().await;
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    let mut client = h2_connect(
        t.sim.addrs.h2,
        client_config(&t.pki, Some((&cert, &key)), true),
    )
    .await;
    let path = format!("/3/device/{}", token(3));
    let upper = "123E4567-E89B-42D3-A456-426614174000";
    let a = send(
        &mut client,
        "POST",
        &path,
        &[("apns-topic", TOPIC), ("apns-id", upper)],
        PAYLOAD,
    )
    .await;
    assert_eq!(
        (a.status, a.reason().as_deref()),
        (400, Some("BadMessageId"))
    );

    let lower = upper.to_ascii_lowercase();
    let a = send(
        &mut client,
        "POST",
        &path,
        &[("apns-topic", TOPIC), ("apns-id", &lower)],
        PAYLOAD,
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.reason());
    assert_eq!(a.headers["apns-id"], lower.as_str());
}

/// apns.md line 510: BadMessageId on the broadcast API too, for the same `apns-id` as on the device port.
#[tokio::test]
async fn the_broadcast_port_takes_only_a_lowercase_apns_id() {
    let t = start().await;
    let channel = create_channel(&t).await;
    let bearer = format!("bearer {}", jwt(&t.pki, now()));
    let mut client = h2_connect(t.sim.addrs.broadcast, client_config(&t.pki, None, true)).await;
    let path = format!("/4/broadcasts/apps/{TOPIC}");
    for (id, status, reason) in [
        (
            "123E4567-E89B-42D3-A456-426614174000",
            400,
            Some("BadMessageId"),
        ),
        ("123e4567-e89b-42d3-a456-426614174000", 200, None),
    ] {
        let headers = [
            ("authorization", bearer.as_str()),
            ("apns-channel-id", channel.as_str()),
            ("apns-push-type", "liveactivity"),
            ("apns-id", id),
        ];
        let a = send(&mut client, "POST", &path, &headers, UPDATE).await;
        assert_eq!((a.status, a.reason().as_deref()), (status, reason), "{id}");
    }
}

/// apns.md line 505: BadChannelId answers an id that is not properly encoded, which these are although every
/// character is in the base64 alphabet; ChannelNotRegistered is for a well-formed id of no channel.
#[tokio::test]
async fn a_channel_id_that_is_not_laid_out_as_base64_is_bad() {
    let t = start().await;
    create_channel(&t).await;
    let bearer = format!("bearer {}", jwt(&t.pki, now()));
    let mut broadcast = h2_connect(t.sim.addrs.broadcast, client_config(&t.pki, None, true)).await;
    let mut manage = h2_connect(t.sim.addrs.management, client_config(&t.pki, None, true)).await;
    let send_path = format!("/4/broadcasts/apps/{TOPIC}");
    let chan_path = format!("/1/apps/{TOPIC}/channels");
    for (id, reason) in [
        ("A", "BadChannelId"),
        ("A===", "BadChannelId"),
        ("AA=A", "BadChannelId"),
        ("AAAAAAAAAAAAAAAAAAAAAA==", "ChannelNotRegistered"),
    ] {
        let a = send(
            &mut broadcast,
            "POST",
            &send_path,
            &[
                ("authorization", bearer.as_str()),
                ("apns-channel-id", id),
                ("apns-push-type", "liveactivity"),
            ],
            UPDATE,
        )
        .await;
        assert_eq!(
            (a.status, a.reason().as_deref()),
            (400, Some(reason)),
            "broadcast to {id}"
        );
        for method in ["GET", "DELETE"] {
            let a = send(
                &mut manage,
                method,
                &chan_path,
                &[("authorization", bearer.as_str()), ("apns-channel-id", id)],
                b"",
            )
            .await;
            assert_eq!(
                (a.status, a.reason().as_deref()),
                (400, Some(reason)),
                "{method} {id}"
            );
        }
    }
}

/// A channel made through herald-apns's client, as herald makes them: its id is the simulator's own.
async fn create_channel(t: &TestSim) -> String {
    let cache = ProviderTokenCache::new(signing_key(&t.pki), Duration::from_secs(50 * 60)).unwrap();
    let client = BroadcastClient::connect(
        &Endpoint::new("localhost", t.sim.addrs.management.port()),
        client_config(&t.pki, None, true),
        Some(cache),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    let channel = client
        .create_channel(TOPIC, StoragePolicy::NoStorage)
        .await
        .unwrap();
    channel.to_string()
}
