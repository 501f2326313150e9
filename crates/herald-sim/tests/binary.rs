//! The binary gateway and feedback service over real TLS with client certificates (docs/apns-protocol.md#legacy-binary,
//! docs/apns-protocol.md#feedback-service): every error status a byte sequence (or a scenario) can cause, status 10 on
//! shutdown, command 0 closing silently, and feedback tuples that are gone once read.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::*;
use herald_apns::binary::{
    BinaryFormat, BinaryNotification, ErrorPacket, FeedbackDecoder, Status, encode,
};
use herald_sim::{CertVariant, RecordProtocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn note(id: u32, token: Vec<u8>, payload: &[u8]) -> BinaryNotification {
    BinaryNotification {
        identifier: id,
        expiry: 0,
        priority: 10,
        token,
        payload: Bytes::copy_from_slice(payload),
    }
}

fn encoded(n: &BinaryNotification, f: BinaryFormat) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(n, f, &mut out).unwrap();
    out.to_vec()
}

fn item(id: u8, data: &[u8]) -> Vec<u8> {
    let mut v = vec![id];
    v.extend_from_slice(&(data.len() as u16).to_be_bytes());
    v.extend_from_slice(data);
    v
}

fn frame(items: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = items.concat();
    let mut v = vec![2];
    v.extend_from_slice(&(body.len() as u32).to_be_bytes());
    v.extend_from_slice(&body);
    v
}

/// Writes `bytes` on a fresh gateway connection and reads until EOF.
async fn exchange(t: &TestSim, bytes: &[u8]) -> Vec<u8> {
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    let mut io = tls(
        t.sim.addrs.binary,
        client_config(&t.pki, Some((&cert, &key)), false),
    )
    .await;
    io.write_all(bytes).await.unwrap();
    io.flush().await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut out))
        .await
        .expect("server closes");
    out
}

#[tokio::test]
async fn every_status_a_byte_sequence_can_cause() {
    let t = start_with(|c, _| c.scenario.bad = vec![token(8)]).await;
    let good = |id| encoded(&note(id, vec![1; 32], PAYLOAD), BinaryFormat::Frame);
    let tok = item(1, &[1; 32]);
    let pay = item(2, PAYLOAD);
    let id = |n: u32| item(3, &n.to_be_bytes());
    let cases: Vec<(&str, Vec<u8>, Status, u32)> = vec![
        (
            "2 missing token",
            frame(&[pay.clone(), id(21)]),
            Status::MissingDeviceToken,
            21,
        ),
        (
            "4 missing payload",
            frame(&[tok.clone(), id(41)]),
            Status::MissingPayload,
            41,
        ),
        (
            "5 token size",
            encoded(&note(51, vec![1; 31], PAYLOAD), BinaryFormat::Enhanced),
            Status::InvalidTokenSize,
            51,
        ),
        (
            "7 payload size",
            encoded(
                &note(71, vec![1; 32], &vec![b' '; 2049]),
                BinaryFormat::Enhanced,
            ),
            Status::InvalidPayloadSize,
            71,
        ),
        (
            "8 bad token",
            encoded(&note(81, hex(&token(8)), PAYLOAD), BinaryFormat::Frame),
            Status::InvalidToken,
            81,
        ),
        (
            "128 unknown item",
            frame(&[tok.clone(), pay.clone(), id(128), item(9, &[0])]),
            Status::ProtocolError,
            128,
        ),
    ];
    for (name, bad, status, ident) in cases {
        // Two good notifications, then the bad one, then one that must be discarded.
        let mut bytes = good(1);
        bytes.extend(good(2));
        bytes.extend(&bad);
        bytes.extend(good(3));
        let before = t.sim.stats().accepted.binary;
        let out = exchange(&t, &bytes).await;
        assert_eq!(out.len(), 6, "{name}: one error packet, then close");
        let p = ErrorPacket::decode(&out).unwrap();
        assert_eq!((p.status, p.identifier), (status, ident), "{name}");
        assert_eq!(
            t.sim.stats().accepted.binary,
            before + 2,
            "{name}: what follows the bad one is discarded"
        );
    }
    // An unknown command byte gets zero bytes back, only the close (docs/apns-protocol.md#binary-error-packet).
    let mut bytes = good(1);
    bytes.extend(good(2));
    bytes.extend([9, 0, 0, 0, 0, 0, 0, 0]);
    bytes.extend(good(3));
    let before = t.sim.stats().accepted.binary;
    let out = exchange(&t, &bytes).await;
    assert!(out.is_empty(), "unknown command: no packet, got {out:?}");
    assert_eq!(t.sim.stats().accepted.binary, before + 2);
    let stats = t.sim.stats();
    for code in ["2", "4", "5", "7", "8", "128"] {
        assert!(
            stats.rejected.binary_by_status[code] >= 1,
            "status {code} counted"
        );
    }
    t.sim.wait_for_records(14, Duration::from_secs(5)).await;
    let rec = t.sim.record();
    assert_eq!(rec.len(), 14);
    assert!(rec.iter().all(|r| r.protocol == RecordProtocol::Binary
        && r.topic == TOPIC
        && r.payload.as_bytes() == PAYLOAD));
    assert_eq!(rec[0].identifier, Some(1));
    assert_eq!(rec[0].format, Some(2));
}

fn hex(s: &str) -> Vec<u8> {
    herald_apns::token_hex::DeviceToken::from_hex(s)
        .unwrap()
        .as_bytes()
        .to_vec()
}

/// A client still writing after the notification that failed reads the error packet and sees the connection end
/// cleanly: the gateway reads (and discards) what follows until the client closes, since closing a socket with
/// unread data makes the kernel reset the connection, and a reset can throw away the packet before the client
/// reads it (docs/apns-protocol.md#binary-error-packet). Notification 1 of 1,000 has a bad token; the client
/// writes the first two, and the other 998 one by one once the packet is in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_error_packet_reaches_a_client_that_keeps_writing() {
    let t = start_with(|c, _| c.scenario.bad = vec![token(8)]).await;
    let frames: Vec<Vec<u8>> = (0..1000u32)
        .map(|id| {
            let tok = if id == 1 { hex(&token(8)) } else { vec![1; 32] };
            encoded(&note(id, tok, PAYLOAD), BinaryFormat::Frame)
        })
        .collect();
    let frames = std::sync::Arc::new(frames);
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    let cfg = client_config(&t.pki, Some((&cert, &key)), false);
    for run in 0..5 {
        let io = tls(t.sim.addrs.binary, cfg.clone()).await;
        let (mut rd, mut wr) = tokio::io::split(io);
        let (packet_in, wait_packet) = tokio::sync::oneshot::channel::<()>();
        let all = frames.clone();
        let writer = tokio::spawn(async move {
            wr.write_all(&all[..2].concat()).await?;
            wr.flush().await?;
            let _ = wait_packet.await;
            for f in &all[2..] {
                wr.write_all(f).await?;
                wr.flush().await?;
            }
            Ok::<_, std::io::Error>(wr)
        });
        let mut packet = [0u8; 6];
        tokio::time::timeout(Duration::from_secs(10), rd.read_exact(&mut packet))
            .await
            .expect("the error packet in time")
            .unwrap_or_else(|e| panic!("run {run}: no error packet: {e}"));
        assert_eq!(packet, [8, 8, 0, 0, 0, 1], "run {run}");
        let _ = packet_in.send(());
        let mut rest = Vec::new();
        let end = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut rest))
            .await
            .expect("the gateway closes");
        assert!(
            end.is_ok() && rest.is_empty(),
            "run {run}: a clean end after the packet: {end:?} {rest:?}"
        );
        let wr = tokio::time::timeout(Duration::from_secs(10), writer)
            .await
            .expect("the writes end")
            .unwrap()
            .unwrap_or_else(|e| {
                panic!("run {run}: the gateway reset the connection while the client wrote: {e}")
            });
        drop((rd, wr));
        wait_stats(&t.sim, "the gateway closes once the client has", |s| {
            s.connections.binary.open == 0
        })
        .await;
    }
    assert_eq!(
        t.sim.stats().accepted.binary,
        5,
        "notification 0 of each run"
    );
}

#[tokio::test]
async fn command_zero_errors_close_without_a_packet_and_all_formats_deliver() {
    let t = start().await;
    let mut bytes = encoded(&note(0, vec![2; 32], PAYLOAD), BinaryFormat::Simple);
    bytes.extend(encoded(
        &note(7, vec![2; 32], PAYLOAD),
        BinaryFormat::Enhanced,
    ));
    bytes.extend(encoded(
        &note(0, vec![2; 31], PAYLOAD),
        BinaryFormat::Simple,
    ));
    let out = exchange(&t, &bytes).await;
    assert!(out.is_empty(), "command 0: close, no error packet");
    assert_eq!(t.sim.wait_for_records(2, Duration::from_secs(5)).await, 2);
    let rec = t.sim.record();
    assert_eq!((rec[0].format, rec[0].identifier), (Some(0), None));
    assert_eq!((rec[1].format, rec[1].identifier), (Some(1), Some(7)));
}

#[tokio::test]
async fn scenario_statuses_and_shutdown() {
    for code in [1u8, 3, 6, 255] {
        let t = start_with(|c, _| {
            c.scenario.binary_errors.insert(code.to_string(), 1.0);
        })
        .await;
        let out = exchange(
            &t,
            &encoded(&note(99, vec![3; 32], PAYLOAD), BinaryFormat::Frame),
        )
        .await;
        let p = ErrorPacket::decode(&out).unwrap();
        assert_eq!((p.status.code(), p.identifier), (code, 99));
    }

    // Status 10 names the last notification processed (docs/apns-protocol.md#binary-error-packet): the one it
    // names was accepted and recorded; what followed it was not.
    let t = start_with(|c, _| {
        c.scenario.binary_errors.insert("10".into(), 1.0);
    })
    .await;
    let mut bytes = encoded(&note(98, vec![3; 32], PAYLOAD), BinaryFormat::Frame);
    bytes.extend(encoded(
        &note(99, vec![3; 32], PAYLOAD),
        BinaryFormat::Frame,
    ));
    let out = exchange(&t, &bytes).await;
    let p = ErrorPacket::decode(&out).unwrap();
    assert_eq!((p.status, p.identifier), (Status::Shutdown, 98));
    assert_eq!(t.sim.stats().accepted.binary, 1);
    assert_eq!(t.sim.stats().rejected.binary_by_status["10"], 1);
    assert_eq!(t.sim.wait_for_records(1, Duration::from_secs(5)).await, 1);
    let rec = t.sim.record();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].identifier, Some(98));

    let t = start().await;
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    let mut io = tls(
        t.sim.addrs.binary,
        client_config(&t.pki, Some((&cert, &key)), false),
    )
    .await;
    let mut bytes = encoded(&note(41, vec![4; 32], PAYLOAD), BinaryFormat::Frame);
    bytes.extend(encoded(
        &note(42, vec![4; 32], PAYLOAD),
        BinaryFormat::Frame,
    ));
    io.write_all(&bytes).await.unwrap();
    io.flush().await.unwrap();
    wait_stats(&t.sim, "two binary notifications", |s| {
        s.accepted.binary == 2
    })
    .await;
    t.sim.shutdown_binary();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let p = ErrorPacket::decode(&out).unwrap();
    assert_eq!(
        (p.status, p.identifier),
        (Status::Shutdown, 42),
        "status 10 names the last accepted notification"
    );
}

/// A shutdown request (admin `POST /shutdown-binary`) closes a connection speaking command 0 without an error
/// packet: command 0 never gets one, only the close (docs/apns-protocol.md#binary-command-0), while one speaking
/// command 1 on the same simulator gets status 10 naming its last accepted notification.
#[tokio::test]
async fn shutdown_closes_a_command_zero_connection_without_a_packet() {
    let t = start().await;
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    let cfg = client_config(&t.pki, Some((&cert, &key)), false);
    let mut simple = tls(t.sim.addrs.binary, cfg.clone()).await;
    let mut bytes = encoded(&note(0, vec![5; 32], PAYLOAD), BinaryFormat::Simple);
    bytes.extend(encoded(
        &note(0, vec![5; 32], PAYLOAD),
        BinaryFormat::Simple,
    ));
    simple.write_all(&bytes).await.unwrap();
    simple.flush().await.unwrap();
    let mut enhanced = tls(t.sim.addrs.binary, cfg).await;
    enhanced
        .write_all(&encoded(
            &note(61, vec![6; 32], PAYLOAD),
            BinaryFormat::Enhanced,
        ))
        .await
        .unwrap();
    enhanced.flush().await.unwrap();
    wait_stats(&t.sim, "three binary notifications", |s| {
        s.accepted.binary == 3
    })
    .await;
    t.sim.shutdown_binary();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), simple.read_to_end(&mut out))
        .await
        .expect("the gateway closes the command-0 connection")
        .unwrap();
    assert!(
        out.is_empty(),
        "command 0: close, no error packet, got {out:?}"
    );
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), enhanced.read_to_end(&mut out))
        .await
        .expect("the gateway closes the command-1 connection")
        .unwrap();
    let p = ErrorPacket::decode(&out).unwrap();
    assert_eq!((p.status, p.identifier), (Status::Shutdown, 61));
}

#[tokio::test]
async fn feedback_lists_unregistered_tokens_once() {
    let t = start_with(|c, _| c.scenario.unregistered = vec![token(0xaa)]).await;
    t.sim.set_token(
        &token(0xbb),
        herald_sim::TokenState::Unregistered,
        Some(TOPIC.into()),
        Some(1_700_000_000_000),
    );
    t.sim.set_token(
        &token(0xcc),
        herald_sim::TokenState::Unregistered,
        Some("com.other".into()),
        None,
    );
    let read = || async {
        let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
        let mut io = tls(
            t.sim.addrs.feedback,
            client_config(&t.pki, Some((&cert, &key)), false),
        )
        .await;
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut out))
            .await
            .unwrap()
            .unwrap();
        out
    };
    let out = read().await;
    assert_eq!(
        out.len(),
        2 * 38,
        "two 38-byte tuples for this certificate's topic"
    );
    let mut buf = BytesMut::from(&out[..]);
    let mut dec = FeedbackDecoder::new();
    let mut tuples = Vec::new();
    while let Some(tp) = dec.decode(&mut buf).unwrap() {
        tuples.push(tp);
    }
    tuples.sort_by_key(|t| t.token.clone());
    assert_eq!(tuples[0].token, vec![0xaa; 32]);
    assert_eq!(tuples[1].token, vec![0xbb; 32]);
    assert_eq!(tuples[1].timestamp, 1_700_000_000);
    assert!(read().await.is_empty(), "the list empties once read");
    assert_eq!(t.sim.stats().feedback_tuples, 2);
}

/// Apple's gateways and feedback services were per environment, each taking only certificates for its own
/// environment (docs/apns-protocol.md#certificates): a certificate for the other one gets nothing back, nothing it
/// sends is recorded, and it reads (and so empties) no feedback list. A universal certificate works on both.
#[tokio::test]
async fn a_certificate_for_the_other_environment_is_turned_away() {
    for (env, wrong) in [
        (herald_sim::Environment::Sandbox, CertVariant::Production),
        (herald_sim::Environment::Production, CertVariant::Sandbox),
    ] {
        let t = start_with(|c, _| {
            c.environment = env;
            c.scenario.unregistered = vec![token(0xaa)];
        })
        .await;
        let (cert, key) = cert_identity(&t.pki, wrong);
        let cfg = client_config(&t.pki, Some((&cert, &key)), false);
        let mut io = tls(t.sim.addrs.binary, cfg.clone()).await;
        let mut bytes = encoded(&note(1, vec![1; 32], PAYLOAD), BinaryFormat::Frame);
        bytes.extend(encoded(
            &note(2, vec![1; 32], PAYLOAD),
            BinaryFormat::Enhanced,
        ));
        // The gateway may already have closed: a failed write is as good as a refusal.
        let _ = io.write_all(&bytes).await;
        let _ = io.flush().await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut out))
            .await
            .expect("the gateway closes");
        assert!(out.is_empty(), "{env:?}: nothing back, got {out:?}");
        drop(io);
        wait_stats(&t.sim, "the gateway connection closed", |s| {
            s.connections.binary.total == 1 && s.connections.binary.open == 0
        })
        .await;
        assert_eq!(
            t.sim.stats().accepted.binary,
            0,
            "{env:?}: nothing accepted"
        );
        assert!(t.sim.record().is_empty(), "{env:?}: nothing recorded");

        let read_feedback = |cfg| async move {
            let mut io = tls(t.sim.addrs.feedback, cfg).await;
            let mut out = Vec::new();
            let _ = tokio::time::timeout(Duration::from_secs(10), io.read_to_end(&mut out))
                .await
                .expect("the feedback service closes");
            out
        };
        assert!(
            read_feedback(cfg).await.is_empty(),
            "{env:?}: no feedback for the other environment"
        );
        assert_eq!(t.sim.stats().feedback_tuples, 0);
        let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
        let universal = client_config(&t.pki, Some((&cert, &key)), false);
        assert_eq!(
            read_feedback(universal.clone()).await.len(),
            38,
            "{env:?}: the list is still there for a certificate of this environment"
        );
        let mut io = tls(t.sim.addrs.binary, universal).await;
        io.write_all(&encoded(
            &note(3, vec![1; 32], PAYLOAD),
            BinaryFormat::Frame,
        ))
        .await
        .unwrap();
        io.flush().await.unwrap();
        wait_stats(&t.sim, "a universal certificate's notification", |s| {
            s.accepted.binary == 1
        })
        .await;
    }
}
