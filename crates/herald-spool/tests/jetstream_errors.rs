//! What a sender and an operator are told when NATS does not answer for a stream or a bucket (docs/scale-out.md,
//! failure table): the NATS client says "no stream found for given subject" for a publish no server took, which is
//! also what a stream that exists but has no leader (just after a partition healed, while its servers elect one)
//! gets, and "failed getting entry: unable to get message: 503 no responders" for a key-value read of a bucket not
//! available yet (a fresh cluster's first keyed requests). herald says what these mean. Skipped without
//! `nats-server` on PATH (failing under `CI`), as the other JetStream tests.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use herald_spool::jetstream::{Unanswered, nats_failure_text};
use herald_spool::{JetStreamOptions, JetStreamSpool, Spool, SpoolKey, StoredNotification};
use herald_testkit::nats;

fn notification(key: u128) -> StoredNotification {
    StoredNotification {
        key: SpoolKey(key),
        domain: "apps.example".into(),
        token: vec![7; 32],
        topic: Some("com.example.app".into()),
        push_type: Some("alert".into()),
        priority: Some(10),
        expiration: None,
        collapse_id: None,
        apns_id: None,
        binding: None,
        payload: br#"{"aps":{"alert":"hi"}}"#.to_vec(),
        sender: "from@example.com".into(),
        recipient: "to@apps.example".into(),
        received_at: 1_800_000_000,
        batch_id: key,
        conn_id: 1,
        retries: 0,
        next_attempt_ms: 0,
    }
}

/// A publish to the stream's subject that no server takes (here the stream was deleted under the node; after a
/// partition, the stream has no leader yet) is refused saying the stream has no leader now, not that there is no
/// stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_no_server_takes_says_the_stream_has_no_leader_now() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = nats::single(dir.path());
    let options = JetStreamOptions::new(vec![server.url()], "leaderless");
    let spool = JetStreamSpool::connect(options).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !spool.connected() {
        assert!(Instant::now() < deadline, "the stream set up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    spool.append(vec![notification(1)]).await.unwrap();
    spool.context().delete_stream("leaderless").await.unwrap();

    let e = spool
        .append(vec![notification(2)])
        .await
        .expect_err("no stream takes the publish")
        .to_string();
    assert!(e.contains("the stream has no leader now"), "{e}");
    assert!(e.contains("retry later"), "{e}");
    assert!(!e.contains("no stream found"), "{e}");
    let _ = spool.close().await;
}

/// A read of a key-value bucket that no server answers for (a bucket not made yet, or whose leader is being
/// elected) says the bucket is not available yet, not "503 no responders".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_no_server_answers_says_the_bucket_is_not_available_yet() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = nats::single(dir.path());
    let ctx = jetstream::new(async_nats::connect(server.url()).await.unwrap());
    let store = ctx
        .create_key_value(kv::Config {
            bucket: "claims".into(),
            history: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    store.put("k", "v".into()).await.unwrap();
    ctx.delete_key_value("claims").await.unwrap();

    let e = store
        .entry("k")
        .await
        .expect_err("nobody answers for the bucket");
    assert_eq!(Unanswered::of(&e), Some(Unanswered::NotAvailable), "{e}");
    let text = nats_failure_text(&e);
    assert!(text.contains("not available yet"), "{text}");
    assert!(text.contains("retry later"), "{text}");
    assert!(!text.contains("503"), "{text}");
}

/// Errors that are not about a missing answer keep the client's words.
#[test]
fn other_errors_keep_their_text() {
    let e = kv::EntryError::new(kv::EntryErrorKind::InvalidKey);
    assert_eq!(Unanswered::of(&e), None);
    assert_eq!(nats_failure_text(&e), e.to_string());
    let timed_out =
        jetstream::context::PublishError::new(jetstream::context::PublishErrorKind::TimedOut);
    assert_eq!(nats_failure_text(&timed_out), timed_out.to_string());
    let no_stream =
        jetstream::context::PublishError::new(jetstream::context::PublishErrorKind::StreamNotFound);
    assert_eq!(Unanswered::of(&no_stream), Some(Unanswered::NoLeader));
}
