//! Channel management and broadcast push against the simulator over real TLS + HTTP/2 (docs/apns-protocol.md
//! §6.2): every management call and a broadcast with token and with certificate auth through herald-apns's
//! broadcast client, asserting the record; every broadcast reason provoked (table-driven, raw requests) and
//! classified; a broadcast to a deleted channel failing permanently with ChannelNotRegistered; an `apns-topic`
//! ignored; a topic-specific key that does not cover the bundle id answered TopicMismatch.

mod common;

use std::time::Duration;

use common::*;
use herald_apns::broadcast::{
    BroadcastClient, BroadcastClientError, BroadcastReason, BroadcastSend, ChannelId, StoragePolicy,
};
use herald_apns::client::connect::Endpoint;
use herald_apns::outcome::FailureClass;
use herald_apns::provider_token::ProviderTokenCache;
use herald_sim::{CertVariant, ProviderKey, RecordProtocol, Scenario};

const UPDATE: &str =
    r#"{"aps":{"event":"update","timestamp":1700000000,"content-state":{"score":"1-0"}}}"#;

fn endpoint(addr: std::net::SocketAddr) -> Endpoint {
    Endpoint::new("localhost", addr.port())
}

async fn token_client(t: &TestSim, addr: std::net::SocketAddr) -> BroadcastClient {
    let cache = ProviderTokenCache::new(signing_key(&t.pki), Duration::from_secs(50 * 60)).unwrap();
    BroadcastClient::connect(
        &endpoint(addr),
        client_config(&t.pki, None, true),
        Some(cache),
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

async fn cert_client(t: &TestSim, addr: std::net::SocketAddr) -> BroadcastClient {
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    BroadcastClient::connect(
        &endpoint(addr),
        client_config(&t.pki, Some((&cert, &key)), true),
        None,
        Duration::from_secs(10),
    )
    .await
    .unwrap()
}

fn update(channel: &ChannelId) -> BroadcastSend {
    BroadcastSend {
        bundle_id: format!("{TOPIC}.push-type.liveactivity"),
        channel: channel.clone(),
        priority: 10,
        expiration: None,
        request_id: Some("5f7e8d2c-0000-4000-8000-00000000beef".into()),
        payload: bytes::Bytes::from_static(UPDATE.as_bytes()),
    }
}

async fn full_flow(t: &TestSim, manage: BroadcastClient, send: BroadcastClient) {
    let ch = manage
        .create_channel(TOPIC, StoragePolicy::MostRecentMessage)
        .await
        .unwrap();
    let info = manage.read_channel(TOPIC, &ch).await.unwrap();
    assert_eq!(info.policy, StoragePolicy::MostRecentMessage);
    assert_eq!(info.push_type, "LiveActivity");
    assert_eq!(manage.list_channels(TOPIC).await.unwrap(), vec![ch.clone()]);

    let before = t.sim.record().len() as u64;
    let rid = send.broadcast(&update(&ch)).await.unwrap();
    assert_eq!(rid.as_deref(), Some("5f7e8d2c-0000-4000-8000-00000000beef"));
    t.sim
        .wait_for_records(before + 1, Duration::from_secs(10))
        .await;
    let rec = t.sim.record().pop().unwrap();
    assert_eq!(rec.protocol, RecordProtocol::Broadcast);
    assert_eq!(rec.topic, TOPIC);
    assert_eq!(rec.channel_id.as_deref(), Some(ch.as_str()));
    assert_eq!(rec.payload, UPDATE);
    assert_eq!(rec.push_type.as_deref(), Some("liveactivity"));
    assert_eq!(rec.apns_id.as_deref(), rid.as_deref());

    manage.delete_channel(TOPIC, &ch).await.unwrap();
    assert!(manage.list_channels(TOPIC).await.unwrap().is_empty());

    // A broadcast to the deleted channel: permanent, ChannelNotRegistered, nothing recorded.
    let err = send.broadcast(&update(&ch)).await.unwrap_err();
    assert_eq!(err.reason(), Some("ChannelNotRegistered"), "{err}");
    assert_eq!(err.class(), FailureClass::Permanent);
    assert!(!err.class().is_retryable());
    let s = t.sim.stats();
    assert_eq!(s.broadcast.rejected["ChannelNotRegistered"], 1);
    assert_eq!(t.sim.record().len() as u64, before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_with_token_auth() {
    let t = start().await;
    let manage = token_client(&t, t.sim.addrs.management).await;
    let send = token_client(&t, t.sim.addrs.broadcast).await;
    full_flow(&t, manage, send).await;
    let s = t.sim.stats();
    assert_eq!(s.broadcast.accepted, 1);
    assert_eq!(s.broadcast.by_bundle[TOPIC], 1);
    for op in ["create", "read", "delete"] {
        assert_eq!(s.broadcast.channel_ops[op], 1, "{op}");
    }
    assert_eq!(s.broadcast.channel_ops["list"], 2);
    assert_eq!(s.accepted.h2, 0, "broadcasts are not device pushes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_with_certificate_auth() {
    let t = start().await;
    let manage = cert_client(&t, t.sim.addrs.management).await;
    let send = cert_client(&t, t.sim.addrs.broadcast).await;
    full_flow(&t, manage, send).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ready_line_names_both_new_ports() {
    let t = start().await;
    let v: serde_json::Value = serde_json::from_str(&t.sim.addrs_json()).unwrap();
    for k in [
        "h2",
        "binary",
        "feedback",
        "admin",
        "management",
        "broadcast",
    ] {
        assert!(v[k].is_string(), "{k} missing in {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_limit_and_storage_policy() {
    let t = start_with(|c, _| {
        c.scenario = Scenario {
            max_channels: Some(2),
            ..Scenario::default()
        }
    })
    .await;
    let manage = token_client(&t, t.sim.addrs.management).await;
    let send = token_client(&t, t.sim.addrs.broadcast).await;
    let none = manage
        .create_channel(TOPIC, StoragePolicy::NoStorage)
        .await
        .unwrap();
    manage
        .create_channel(TOPIC, StoragePolicy::MostRecentMessage)
        .await
        .unwrap();
    let err = manage
        .create_channel(TOPIC, StoragePolicy::NoStorage)
        .await
        .unwrap_err();
    assert_eq!(err.reason(), Some("CannotCreateChannelConfig"));
    assert_eq!(t.sim.channel_count(), 2);
    // Expiration must be 0 on a channel that stores nothing.
    let mut b = update(&none);
    b.expiration = Some(now() + 3600);
    let err = send.broadcast(&b).await.unwrap_err();
    assert_eq!(err.reason(), Some("BadExpirationDate"), "{err}");
    b.expiration = Some(0);
    send.broadcast(&b).await.unwrap();
}

/// Temporary reasons (injected) are retryable, ExpiredProviderToken asks for a new token; the rest permanent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_reasons_are_classified() {
    let t = start().await;
    let manage = token_client(&t, t.sim.addrs.management).await;
    let send = token_client(&t, t.sim.addrs.broadcast).await;
    let ch = manage
        .create_channel(TOPIC, StoragePolicy::NoStorage)
        .await
        .unwrap();
    let temporary = [
        BroadcastReason::TooManyRequests,
        BroadcastReason::InternalServerError,
        BroadcastReason::ServiceUnavailable,
        BroadcastReason::Shutdown,
        BroadcastReason::TooManyProviderTokenUpdates,
    ];
    t.sim.fail_next_broadcasts(&temporary);
    for r in temporary {
        let err = send.broadcast(&update(&ch)).await.unwrap_err();
        let BroadcastClientError::Rejected {
            status,
            reason,
            class,
        } = &err
        else {
            panic!("{err}")
        };
        assert_eq!((*status, reason.as_str()), (r.status(), r.as_str()));
        assert_eq!(*class, FailureClass::Transient, "{r}");
    }
    send.broadcast(&update(&ch)).await.unwrap();
}

struct Case {
    port: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    reason: &'static str,
}

/// Every reason a request can provoke, raw over HTTP/2, then classified as herald classifies it. The answers
/// follow Apple's broadcast and channel-management error table (docs/apns-protocol.md §6.2, "Broadcast errors"):
/// a push-type suffix on the bundle id of the path is TopicDisallowed (not BadPath: that is for a path the port
/// does not serve); a create body with an attribute APNs does not know is BadRequestParams; a bad `apns-id` is
/// BadMessageId; a storage policy that is missing or not 0/1 has been seen answered MissingChannelQueueSize.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_reason_is_provoked() {
    let t = start_with(|c, _| {
        c.scenario = Scenario {
            broadcast_disabled: vec!["com.example.nobroadcast".into()],
            ..Scenario::default()
        }
    })
    .await;
    let manage = token_client(&t, t.sim.addrs.management).await;
    let ch = manage
        .create_channel(TOPIC, StoragePolicy::NoStorage)
        .await
        .unwrap();
    let bearer = format!("bearer {}", jwt(&t.pki, now()));
    let old = format!("bearer {}", jwt(&t.pki, now() - 7200));
    let send_path = format!("/4/broadcasts/apps/{TOPIC}");
    let chan_path = format!("/1/apps/{TOPIC}/channels");
    let bc = |headers: Vec<(&'static str, String)>, body: &str, reason| Case {
        port: "broadcast",
        method: "POST",
        path: send_path.clone(),
        headers,
        body: body.as_bytes().to_vec(),
        reason,
    };
    let std_headers = |extra: &[(&'static str, &str)]| {
        let mut h = vec![
            ("authorization", bearer.clone()),
            ("apns-channel-id", ch.to_string()),
            ("apns-push-type", "liveactivity".to_string()),
        ];
        for (k, v) in extra {
            h.retain(|(n, _)| n != k);
            if !v.is_empty() {
                h.push((k, v.to_string()));
            }
        }
        h
    };
    let mg = |method, headers: Vec<(&'static str, String)>, body: &str, reason| Case {
        port: "management",
        method,
        path: chan_path.clone(),
        headers,
        body: body.as_bytes().to_vec(),
        reason,
    };
    let auth = vec![("authorization", bearer.clone())];
    let big = format!(
        r#"{{"aps":{{"event":"update","timestamp":1,"content-state":{{"s":"{}"}}}}}}"#,
        "x".repeat(5200)
    );
    let mut dup = std_headers(&[]);
    dup.push(("apns-priority", "10".into()));
    dup.push(("apns-priority", "5".into()));
    let cases = vec![
        bc(
            std_headers(&[("apns-channel-id", "")]),
            UPDATE,
            "MissingChannelId",
        ),
        bc(
            std_headers(&[("apns-channel-id", "not base64!")]),
            UPDATE,
            "BadChannelId",
        ),
        bc(
            std_headers(&[("apns-channel-id", "AAAAAAAAAAAAAAAAAAAAAA==")]),
            UPDATE,
            "ChannelNotRegistered",
        ),
        bc(dup, UPDATE, "BadRequestParams"),
        bc(
            std_headers(&[]),
            r#"{"aps":{"event":"start","timestamp":1,"alert":"x","attributes-type":"A","attributes":{}}}"#,
            "BadRequestPayload",
        ),
        bc(std_headers(&[]), "not json", "BadRequestPayload"),
        bc(std_headers(&[]), "", "PayloadEmpty"),
        bc(
            std_headers(&[("apns-request-id", "nope")]),
            UPDATE,
            "BadMessageId",
        ),
        // §6.2: BadMessageId is the answer to an `apns-id` that is not a UUID.
        bc(
            std_headers(&[("apns-id", "not-a-uuid")]),
            UPDATE,
            "BadMessageId",
        ),
        mg(
            "GET",
            vec![
                ("authorization", bearer.clone()),
                ("apns-channel-id", ch.to_string()),
                ("apns-id", "123".into()),
            ],
            "",
            "BadMessageId",
        ),
        bc(
            std_headers(&[("apns-push-type", "")]),
            UPDATE,
            "MissingPushType",
        ),
        bc(
            std_headers(&[("apns-push-type", "alert")]),
            UPDATE,
            "InvalidPushType",
        ),
        bc(
            std_headers(&[("apns-expiration", "soon")]),
            UPDATE,
            "BadExpirationDate",
        ),
        bc(
            std_headers(&[("apns-priority", "7")]),
            UPDATE,
            "BadPriority",
        ),
        bc(
            std_headers(&[("authorization", "")]),
            UPDATE,
            "MissingProviderToken",
        ),
        bc(
            std_headers(&[("authorization", "bearer x.y.z")]),
            UPDATE,
            "InvalidProviderToken",
        ),
        bc(std_headers(&[]), &big, "PayloadTooLarge"),
        Case {
            path: "/4/broadcasts/apps/com.example.nobroadcast".into(),
            ..bc(std_headers(&[]), UPDATE, "FeatureNotEnabled")
        },
        Case {
            path: "/3/device/x".into(),
            ..bc(std_headers(&[]), UPDATE, "BadPath")
        },
        // §6.2: the bundle id of a path carries no push-type suffix, and Apple's table answers one that does
        // with TopicDisallowed, on both ports.
        Case {
            path: format!("/4/broadcasts/apps/{TOPIC}.push-type.liveactivity"),
            ..bc(std_headers(&[]), UPDATE, "TopicDisallowed")
        },
        Case {
            path: format!("/1/apps/{TOPIC}.push-type.liveactivity/channels"),
            ..mg(
                "POST",
                auth.clone(),
                r#"{"message-storage-policy":0,"push-type":"LiveActivity"}"#,
                "TopicDisallowed",
            )
        },
        Case {
            path: format!("/1/apps/{TOPIC}.push-type.liveactivity/all-channels"),
            ..mg("GET", auth.clone(), "", "TopicDisallowed")
        },
        Case {
            method: "GET",
            ..bc(std_headers(&[]), "", "MethodNotAllowed")
        },
        mg(
            "POST",
            auth.clone(),
            r#"{"push-type":"LiveActivity"}"#,
            "MissingChannelQueueSize",
        ),
        // §6.2: an invalid storage policy, like a missing one, has been seen answered MissingChannelQueueSize.
        mg(
            "POST",
            auth.clone(),
            r#"{"message-storage-policy":5,"push-type":"LiveActivity"}"#,
            "MissingChannelQueueSize",
        ),
        mg(
            "POST",
            auth.clone(),
            r#"{"message-storage-policy":"one","push-type":"LiveActivity"}"#,
            "MissingChannelQueueSize",
        ),
        // §6.2: BadRequestParams is Apple's answer to an attribute it does not recognise in the request's JSON.
        mg(
            "POST",
            auth.clone(),
            r#"{"message-storage-policy":0,"push-type":"LiveActivity","ttl":60}"#,
            "BadRequestParams",
        ),
        mg(
            "POST",
            auth.clone(),
            r#"{"message-storage-policy":0}"#,
            "MissingPushType",
        ),
        mg(
            "POST",
            auth.clone(),
            r#"{"message-storage-policy":0,"push-type":"Alert"}"#,
            "InvalidPushType",
        ),
        mg("POST", auth.clone(), "{", "BadRequestPayload"),
        mg("GET", auth.clone(), "", "MissingChannelId"),
        mg("PUT", auth.clone(), "", "MethodNotAllowed"),
        mg(
            "DELETE",
            vec![
                ("authorization", bearer.clone()),
                ("apns-channel-id", "AAAA".into()),
            ],
            "",
            "ChannelNotRegistered",
        ),
    ];
    let mut mclient = h2_connect(t.sim.addrs.management, client_config(&t.pki, None, true)).await;
    let mut bclient = h2_connect(t.sim.addrs.broadcast, client_config(&t.pki, None, true)).await;
    for c in cases {
        let client = if c.port == "management" {
            &mut mclient
        } else {
            &mut bclient
        };
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let a = send(client, c.method, &c.path, &headers, &c.body).await;
        let reason: BroadcastReason = c.reason.parse().unwrap();
        assert_eq!(
            a.reason().as_deref(),
            Some(c.reason),
            "{} {} {:?}",
            c.method,
            c.path,
            c.headers
        );
        assert_eq!(a.status, reason.status(), "{}", c.reason);
        assert!(a.headers.contains_key("apns-request-id"), "{}", c.reason);
        assert_eq!(
            herald_apns::broadcast::classify_broadcast(a.status, a.reason().as_deref()),
            FailureClass::Permanent,
            "{}",
            c.reason
        );
    }

    // Authentication: a stale token on a fresh connection, a certificate for another app.
    let mut fresh = h2_connect(t.sim.addrs.broadcast, client_config(&t.pki, None, true)).await;
    let stale = std_headers(&[("authorization", old.as_str())]);
    let stale: Vec<(&str, &str)> = stale.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let a = send(&mut fresh, "POST", &send_path, &stale, UPDATE.as_bytes()).await;
    assert_eq!(a.reason().as_deref(), Some("ExpiredProviderToken"));
    assert_eq!(
        herald_apns::broadcast::classify_broadcast(a.status, Some("ExpiredProviderToken")),
        FailureClass::RefreshTokenAndRetry
    );
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    let mut certc = h2_connect(
        t.sim.addrs.broadcast,
        client_config(&t.pki, Some((&cert, &key)), true),
    )
    .await;
    let h = [
        ("apns-channel-id", ch.as_str()),
        ("apns-push-type", "liveactivity"),
    ];
    let a = send(
        &mut certc,
        "POST",
        "/4/broadcasts/apps/com.other.app",
        &h,
        UPDATE.as_bytes(),
    )
    .await;
    assert_eq!(a.reason().as_deref(), Some("TopicMismatch"));
    assert_eq!(a.status, 403);
    let a = send(&mut certc, "POST", &send_path, &h, UPDATE.as_bytes()).await;
    assert_eq!(a.status, 200, "{:?}", a.reason());
}

/// `apns-topic` is not used by the broadcast and channel-management APIs (docs/apns-protocol.md §6.2): the
/// bundle id comes from the path, and TopicDisallowed is about a suffix there. A broadcast carrying an
/// `apns-topic`, even one naming another app or a suffixed topic, is accepted and recorded under the path's
/// bundle id; so is a create.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apns_topic_is_ignored() {
    let t = start().await;
    let bearer = format!("bearer {}", jwt(&t.pki, now()));
    let mut m = h2_connect(t.sim.addrs.management, client_config(&t.pki, None, true)).await;
    let a = send(
        &mut m,
        "POST",
        &format!("/1/apps/{TOPIC}/channels"),
        &[
            ("authorization", bearer.as_str()),
            ("apns-topic", "com.other.app"),
        ],
        br#"{"message-storage-policy":1,"push-type":"LiveActivity"}"#,
    )
    .await;
    assert_eq!(a.status, 201, "{:?}", a.reason());
    let ch = a.headers["apns-channel-id"].to_str().unwrap().to_owned();
    let mut b = h2_connect(t.sim.addrs.broadcast, client_config(&t.pki, None, true)).await;
    let path = format!("/4/broadcasts/apps/{TOPIC}");
    let other = format!("{TOPIC}.push-type.liveactivity");
    for topic in ["com.other.app", other.as_str()] {
        let a = send(
            &mut b,
            "POST",
            &path,
            &[
                ("authorization", bearer.as_str()),
                ("apns-channel-id", ch.as_str()),
                ("apns-push-type", "liveactivity"),
                ("apns-topic", topic),
            ],
            UPDATE.as_bytes(),
        )
        .await;
        assert_eq!(a.status, 200, "{topic}: {:?}", a.reason());
    }
    t.sim.wait_for_records(2, Duration::from_secs(10)).await;
    assert!(t.sim.record().iter().all(|r| r.topic == TOPIC));
    assert_eq!(t.sim.stats().broadcast.accepted, 2);
}

/// A provider token whose key is restricted to other apps' topics: Apple's broadcast table answers 403
/// TopicMismatch when the bundle ids of the token (or certificate) do not include the one in the path
/// (docs/apns-protocol.md §6.2), on both ports; herald classifies it permanent. The same token works for the app
/// it covers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_other_apps_is_topic_mismatch() {
    const KID: &str = "BCASTKEY01";
    let t = start_with(|c, pki| {
        let kp = rcgen::KeyPair::generate().unwrap();
        let path = pki.manifest.dir.join(format!("AuthKey_{KID}.p8"));
        std::fs::write(&path, kp.serialize_pem()).unwrap();
        let mut k = ProviderKey::from_p8_file(&path, KID, &pki.manifest.team_id).unwrap();
        k.topics = Some(vec!["com.example.allowed".into()]);
        c.provider_keys.push(k);
    })
    .await;
    let key = herald_apns::provider_token::SigningKey::from_p8_file(
        &t.pki.manifest.dir.join(format!("AuthKey_{KID}.p8")),
        KID,
        &t.pki.manifest.team_id,
    )
    .unwrap();
    let bearer = format!("bearer {}", key.sign(now()).unwrap());
    let auth = [("authorization", bearer.as_str())];
    let mut m = h2_connect(t.sim.addrs.management, client_config(&t.pki, None, true)).await;
    let a = send(
        &mut m,
        "GET",
        &format!("/1/apps/{TOPIC}/all-channels"),
        &auth,
        b"",
    )
    .await;
    assert_eq!(
        (a.status, a.reason().as_deref()),
        (403, Some("TopicMismatch"))
    );
    assert_eq!(
        herald_apns::broadcast::classify_broadcast(a.status, a.reason().as_deref()),
        FailureClass::Permanent
    );
    let mut b = h2_connect(t.sim.addrs.broadcast, client_config(&t.pki, None, true)).await;
    let a = send(
        &mut b,
        "POST",
        &format!("/4/broadcasts/apps/{TOPIC}"),
        &[
            ("authorization", bearer.as_str()),
            ("apns-channel-id", "AAAAAAAAAAAAAAAAAAAAAA=="),
            ("apns-push-type", "liveactivity"),
        ],
        UPDATE.as_bytes(),
    )
    .await;
    assert_eq!(
        (a.status, a.reason().as_deref()),
        (403, Some("TopicMismatch"))
    );
    let a = send(
        &mut m,
        "GET",
        "/1/apps/com.example.allowed/all-channels",
        &auth,
        b"",
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.reason());
}

/// The management and broadcast ports serve the device port's HTTP/2 limits: its stream limit, its header list
/// size (a larger head is answered 431 before any check) and its body timeout (a body that has not ended in time
/// has its stream reset, `REFUSED_STREAM`, unprocessed), so one connection cannot hold unbounded headers or
/// stalled streams.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ports_serve_the_device_ports_limits() {
    let t = start_with(|c, _| {
        c.apple_settings();
        c.max_concurrent_streams = 5;
        c.body_timeout = Duration::from_secs(1);
    })
    .await;
    let ch = cert_client(&t, t.sim.addrs.management)
        .await
        .create_channel(TOPIC, StoragePolicy::NoStorage)
        .await
        .unwrap();
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    let management = format!("/1/apps/{TOPIC}/channels");
    let broadcast = format!("/4/broadcasts/apps/{TOPIC}");
    let ch_header = ch.to_string();
    for (addr, path, headers) in [
        (t.sim.addrs.management, &management, vec![]),
        (
            t.sim.addrs.broadcast,
            &broadcast,
            vec![
                ("apns-channel-id", ch_header.as_str()),
                ("apns-push-type", "liveactivity"),
            ],
        ),
    ] {
        let mut client = h2_connect(addr, client_config(&t.pki, Some((&cert, &key)), true)).await;
        // A first exchange, so that both sides have applied each other's SETTINGS.
        let first = send(&mut client, "POST", path, &headers, b"{").await;
        assert_eq!(first.status, 400, "{path}: {:?}", first.reason());
        assert_eq!(client.current_max_send_streams(), 5, "{path}");
        let pad = "x".repeat(9000);
        let mut padded = headers.clone();
        padded.push(("x-pad", &pad));
        let big = send(&mut client, "POST", path, &padded, UPDATE.as_bytes()).await;
        assert_eq!(big.status, 431, "{path}");
        // HEADERS that pass every check, and a body that never comes.
        let mut req = http::Request::builder()
            .method("POST")
            .uri(format!("https://localhost{path}"));
        for (k, v) in &headers {
            req = req.header(*k, *v);
        }
        let mut ready = client.clone().ready().await.unwrap();
        let (resp, _body) = ready.send_request(req.body(()).unwrap(), false).unwrap();
        let err = tokio::time::timeout(Duration::from_secs(10), resp)
            .await
            .expect("the stalled stream is reset in time")
            .expect_err("no answer to a body that never ends");
        assert_eq!(
            err.reason(),
            Some(h2::Reason::REFUSED_STREAM),
            "{path}: {err}"
        );
    }
    let s = t.sim.stats();
    assert_eq!(s.broadcast.accepted, 0);
    assert_eq!(s.broadcast.channel_ops.get("create"), Some(&1));
}

/// A raw HTTP/2 connection to `addr` with the universal certificate: the preface and an empty SETTINGS sent.
async fn raw_h2(
    t: &TestSim,
    addr: std::net::SocketAddr,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    let mut io = tls(addr, client_config(&t.pki, Some((&cert, &key)), true)).await;
    io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    io.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    io
}

/// The next frame (type, payload), answering SETTINGS and PING as a client does; `None` once the connection is
/// closed.
async fn next_frame(
    io: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Option<(u8, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut h = [0u8; 9];
    let read = tokio::time::timeout(Duration::from_secs(10), io.read_exact(&mut h))
        .await
        .expect("a frame, or the end of the connection, in time");
    read.ok()?;
    let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
    let mut payload = vec![0; len];
    io.read_exact(&mut payload).await.ok()?;
    let (kind, ack) = (h[3], h[4] & 1 == 1);
    let reply = match kind {
        4 if !ack => Some([&[0, 0, 0, 4, 1, 0, 0, 0, 0][..]].concat()),
        6 if !ack => Some([&[0, 0, 8, 6, 1, 0, 0, 0, 0][..], &payload].concat()),
        _ => None,
    };
    if let Some(r) = reply {
        // The server may already have closed its side.
        let _ = io.write_all(&r).await;
    }
    Some((kind, payload))
}

/// docs/apns-protocol.md#simulator: admin `POST /goaway` and the simulator's shutdown reach every HTTP/2
/// connection, the management and broadcast ports' too: one GOAWAY with `{"reason":"Shutdown"}` naming the last
/// stream taken, then the connection closes; a client cannot open another stream on it.
#[tokio::test]
async fn goaway_and_shutdown_reach_both_ports() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = start().await;
    // One exchange on the management port first, so that its GOAWAY names stream 1.
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    let mut client = h2_connect(
        t.sim.addrs.management,
        client_config(&t.pki, Some((&cert, &key)), true),
    )
    .await;
    let listed = send(
        &mut client,
        "GET",
        &format!("/1/apps/{TOPIC}/all-channels"),
        &[],
        b"",
    )
    .await;
    assert_eq!(listed.status, 200);
    let mut raws = Vec::new();
    for (port, addr) in [
        ("management", t.sim.addrs.management),
        ("broadcast", t.sim.addrs.broadcast),
    ] {
        let mut io = raw_h2(&t, addr).await;
        // The server's SETTINGS: the connection is up.
        loop {
            let (kind, _) = next_frame(&mut io).await.expect("the server's SETTINGS");
            if kind == 4 {
                break;
            }
        }
        raws.push((port, io));
    }
    let mut admin = tokio::net::TcpStream::connect(t.sim.addrs.admin)
        .await
        .unwrap();
    admin
        .write_all(
            b"POST /goaway HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut resp = String::new();
    admin.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    for (port, io) in &mut raws {
        let goaway = loop {
            match next_frame(io).await {
                Some((7, payload)) => break payload,
                Some(_) => {}
                None => panic!("{port}: closed without GOAWAY"),
            }
        };
        assert_eq!(&goaway[..8], &[0; 8], "{port}: no stream taken, NO_ERROR");
        assert_eq!(
            herald_apns::reason::goaway_reason(&goaway[8..]).as_deref(),
            Some("Shutdown"),
            "{port}"
        );
        while let Some((kind, _)) = next_frame(io).await {
            assert_ne!(kind, 7, "{port}: one GOAWAY");
        }
    }
    // The h2 client's connection got its GOAWAY too: it cannot open another stream.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.clone().ready().await {
                Err(e) => break e,
                Ok(mut c) => {
                    let req = http::Request::get(format!(
                        "https://localhost/1/apps/{TOPIC}/all-channels"
                    ))
                    .body(())
                    .unwrap();
                    if let Err(e) = c.send_request(req, true) {
                        break e;
                    }
                }
            }
        }
    })
    .await
    .expect("the management connection goes away in time");
    assert!(closed.is_go_away() || closed.is_io(), "{closed}");
    assert!(t.sim.stats().goaways >= 3);

    // Shutdown: the same GOAWAY on a connection of each port.
    let t = start().await;
    let mut raws = Vec::new();
    for (port, addr) in [
        ("management", t.sim.addrs.management),
        ("broadcast", t.sim.addrs.broadcast),
    ] {
        let mut io = raw_h2(&t, addr).await;
        loop {
            let (kind, _) = next_frame(&mut io).await.expect("the server's SETTINGS");
            if kind == 4 {
                break;
            }
        }
        raws.push((port, io));
    }
    let TestSim { dir, pki, sim } = t;
    let stopping = tokio::spawn(sim.shutdown());
    for (port, io) in &mut raws {
        let goaway = loop {
            match next_frame(io).await {
                Some((7, payload)) => break payload,
                Some(_) => {}
                None => panic!("{port}: closed without GOAWAY at shutdown"),
            }
        };
        assert_eq!(
            herald_apns::reason::goaway_reason(&goaway[8..]).as_deref(),
            Some("Shutdown"),
            "{port}"
        );
    }
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("the simulator stops in time")
        .unwrap();
    drop((dir, pki));
}
