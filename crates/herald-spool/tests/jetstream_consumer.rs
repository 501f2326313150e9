//! The JetStream spool against what it finds on the NATS servers and what happens to them while it runs
//! (docs/scale-out.md): a consumer made with other settings, a stream whose limits would delete notifications, a
//! node at its bound, a node that stops while notifications keep coming, a heartbeat bucket lost with a server
//! restart, a consumer deleted under a running node, an ack confirmed after it was sent plainly, notifications
//! handed back with a delay against the consumer's `max_ack_pending`, a consumer edited while a node runs.
//!
//! Each test starts its own `nats-server` on a loopback port (herald-testkit) and kills it at the end; without
//! `nats-server` on PATH they are skipped with a message (failing under `CI`).

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, stream};
use herald_spool::nodes::BEAT_MAX_AGE;
use herald_spool::{JetStreamOptions, JetStreamSpool, Spool, SpoolError, SpoolKey};
use herald_testkit::nats::{self, NatsServer};
use tokio::sync::mpsc::Receiver;

fn server(dir: &std::path::Path) -> Option<NatsServer> {
    nats::available().then(|| nats::single(dir))
}

async fn wait_for(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A plain JetStream client, to set up or change what the spool finds.
async fn raw(url: &str) -> jetstream::Context {
    jetstream::new(async_nats::connect(url).await.unwrap())
}

/// The stream as herald creates it.
fn herald_stream(name: &str) -> stream::Config {
    stream::Config {
        name: name.into(),
        subjects: vec![format!("{name}.notifications")],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    }
}

/// The consumer as herald creates it.
fn herald_consumer(stream: &str, ack_wait: Duration) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some("herald".into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_deliver: -1,
        filter_subject: format!("{stream}.notifications"),
        ..Default::default()
    }
}

async fn start(
    options: JetStreamOptions,
) -> Result<
    (
        Arc<JetStreamSpool>,
        Receiver<herald_spool::StoredNotification>,
    ),
    SpoolError,
> {
    let spool = JetStreamSpool::connect(options).await?;
    let rx = spool.take_deliveries().unwrap();
    wait_for("the stream set up", Duration::from_secs(20), async || {
        spool.connected()
    })
    .await;
    Ok((spool, rx))
}

/// A consumer left by an earlier start with a shorter ack wait (spool_nats_ack_wait raised since) is brought to
/// the configured one: a notification held longer than the old ack wait is not delivered again (to this node or
/// another), where it used to be, the in-progress acks going by the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_with_a_shorter_ack_wait_is_updated_and_what_is_held_is_not_redelivered() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = server(dir.path()) else {
        return;
    };
    let ctx = raw(&server.url()).await;
    let stream = ctx.create_stream(herald_stream("upd")).await.unwrap();
    stream
        .create_consumer(herald_consumer("upd", Duration::from_secs(2)))
        .await
        .unwrap();

    let mut options = JetStreamOptions::new(vec![server.url()], "upd");
    options.ack_wait = Duration::from_secs(30);
    let (spool, mut rx) = start(options).await.unwrap();

    let key = SpoolKey(0x51u128 << 64 | 1);
    spool.append(vec![common::notification(key)]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.key, key);
    // Held (a slow APNs) for twice the old ack wait.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let info = stream.consumer_info("herald").await.unwrap();
    assert_eq!(info.num_redelivered, 0, "delivered again while held");
    assert_eq!(spool.stream_stats().redelivered_here, 0);
    assert_eq!(
        info.config.ack_wait,
        Duration::from_secs(30),
        "the consumer's ack wait"
    );
    spool.remove(&[key]);
    spool.close().await.unwrap();
}

/// A consumer that cannot serve herald and cannot be changed in place (here, a delivery limit) is refused at start,
/// naming the consumer and the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_with_a_delivery_limit_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = server(dir.path()) else {
        return;
    };
    let ctx = raw(&server.url()).await;
    let stream = ctx.create_stream(herald_stream("limited")).await.unwrap();
    let mut config = herald_consumer("limited", Duration::from_secs(30));
    config.max_deliver = 5;
    stream.create_consumer(config).await.unwrap();

    let options = JetStreamOptions::new(vec![server.url()], "limited");
    match JetStreamSpool::connect(options).await {
        Err(SpoolError::Config(why)) => {
            assert!(why.contains("consumer \"herald\""), "{why}");
            assert!(why.contains("max_deliver is 5"), "{why}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a consumer with max_deliver = 5 was accepted"),
    }
}

/// A stream that deletes its oldest messages when full is refused at start, saying which limit and how to fix it;
/// a stream herald creates refuses new messages when full instead (discard New).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_deletes_its_oldest_messages_when_full_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = server(dir.path()) else {
        return;
    };
    let ctx = raw(&server.url()).await;
    let mut config = herald_stream("small");
    config.max_messages = 10;
    config.discard = stream::DiscardPolicy::Old;
    ctx.create_stream(config).await.unwrap();

    match JetStreamSpool::connect(JetStreamOptions::new(vec![server.url()], "small")).await {
        Err(SpoolError::Config(why)) => {
            assert!(why.contains("stream \"small\""), "{why}");
            assert!(why.contains("max_msgs is 10 with discard Old"), "{why}");
            assert!(why.contains("--discard=new"), "{why}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a stream with max_msgs = 10, discard Old was accepted"),
    }

    let (spool, _rx) = start(JetStreamOptions::new(vec![server.url()], "fresh"))
        .await
        .unwrap();
    let mut created = ctx.get_stream("fresh").await.unwrap();
    assert_eq!(
        created.info().await.unwrap().config.discard,
        stream::DiscardPolicy::New
    );
    spool.close().await.unwrap();
}

/// A node that reaches its bound (`max_held`) leaves nothing the server delivered to it unread: no notification
/// comes back after the ack wait with one more delivery (one more retry) counted. The node here finishes what it
/// holds in bursts, so that each pull starts with room for many and ends at the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_at_its_bound_reads_everything_it_was_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = server(dir.path()) else {
        return;
    };
    let max_held = 20u64;
    let mut options = JetStreamOptions::new(vec![server.url()], "bound");
    options.max_held = max_held as usize;
    options.max_parked = 0;
    // Long enough that a loaded machine's stalls do not outlast the in-progress acks (every third of it), short
    // enough that a notification left unread comes back within the 20 s waits below.
    options.ack_wait = Duration::from_secs(5);
    let (spool, mut rx) = start(options).await.unwrap();
    let count = 200u64;
    let batch: Vec<_> = (1..=count)
        .map(|n| common::notification(SpoolKey(0x52u128 << 64 | u128::from(n))))
        .collect();
    spool.append(batch).await.unwrap();

    let mut seen = BTreeSet::new();
    let mut rounds = 0;
    while (seen.len() as u64) < count {
        rounds += 1;
        assert!(rounds < 1000, "{} of {count} delivered", seen.len());
        // The node fills up to its bound (or takes what is left)...
        let expect = max_held.min(count - seen.len() as u64);
        wait_for(
            "the node at its bound",
            Duration::from_secs(20),
            async || spool.held() >= expect,
        )
        .await;
        let mut round = Vec::new();
        while let Ok(n) = rx.try_recv() {
            round.push(n);
        }
        if round.is_empty() {
            round.push(
                tokio::time::timeout(Duration::from_secs(20), rx.recv())
                    .await
                    .expect("the next notification")
                    .unwrap(),
            );
        }
        // ... and finishes all it holds at once.
        for n in &round {
            assert_eq!(n.retries, 0, "{}: delivered more than once", n.key);
            assert!(seen.insert(n.key), "{} came twice", n.key);
        }
        let keys: Vec<SpoolKey> = round.iter().map(|n| n.key).collect();
        spool.remove(&keys);
    }
    let stream = raw(&server.url()).await.get_stream("bound").await.unwrap();
    let info = stream.consumer_info("herald").await.unwrap();
    assert_eq!(
        info.num_redelivered, 0,
        "messages left unread and delivered again"
    );
    assert!(rx.try_recv().is_err());
    spool.close().await.unwrap();
}

/// A node that stops gives back at once everything it pulled and did not finish: what it holds, and what its pull
/// under way still brings in while another node keeps publishing. The other node gets every one of them well within
/// the ack wait (a minute here: anything left to it would come too late), once each, counted as delivered once
/// before at most. Twice: with the stopping node's pull open when the stop comes, and with its pull loop waiting for
/// room in its deliveries' queue (nobody reads them, and it holds more than the queue takes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_node_gives_back_at_once_all_it_pulled_while_notifications_keep_coming() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = server(dir.path()) else {
        return;
    };
    stop_while_publishing(&server.url(), "stop_open", 100).await;
    stop_while_publishing(&server.url(), "stop_full", 1500).await;
}

/// The node stopped in [`a_stopping_node_gives_back_at_once_all_it_pulled_while_notifications_keep_coming`] is
/// given `first` notifications before the stop, and another node publishes while it stops.
async fn stop_while_publishing(url: &str, stream: &str, first: u64) {
    let ack_wait = Duration::from_secs(60);
    let options = || {
        let mut o = JetStreamOptions::new(vec![url.to_owned()], stream);
        o.ack_wait = ack_wait;
        o
    };
    let key = |n: u64| SpoolKey(0x54u128 << 64 | u128::from(n));
    let (stopping, _unread) = start(options()).await.unwrap();
    stopping
        .append((1..=first).map(|n| common::notification(key(n))).collect())
        .await
        .unwrap();
    // Its deliveries' queue takes 1,024: beyond, its pull loop waits for room.
    wait_for(
        "the stopping node holding its first notifications",
        Duration::from_secs(20),
        async || stopping.held() >= first.min(1025),
    )
    .await;
    let (other, mut rx) = start(options()).await.unwrap();
    // Published while the first node stops, in small batches: with its pull open, some reach it.
    let batches = 40u64;
    let per_batch = 25u64;
    let publisher = {
        let other = other.clone();
        tokio::spawn(async move {
            for b in 0..batches {
                let batch = (0..per_batch)
                    .map(|i| common::notification(key(first + 1 + b * per_batch + i)))
                    .collect();
                other.append(batch).await.unwrap();
            }
        })
    };
    let stopped = Instant::now();
    stopping.close().await.unwrap();
    publisher.await.unwrap();
    let total = first + batches * per_batch;
    let within = Duration::from_secs(15);
    let deadline = stopped + within;
    let mut seen = BTreeSet::new();
    while (seen.len() as u64) < total {
        let n = match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(n) => n.unwrap(),
            Err(_) => panic!(
                "{stream}: {} of {total} notifications reached the other node within {within:?} of the stop (ack \
                 wait {ack_wait:?})",
                seen.len()
            ),
        };
        assert!(seen.insert(n.key), "{stream}: {} came twice", n.key);
        assert!(
            n.retries <= 1,
            "{stream}: {} delivered {} times before",
            n.key,
            n.retries + 1
        );
    }
    assert_eq!(seen, (1..=total).map(key).collect(), "{stream}");
    other.close().await.unwrap();
}

/// The heartbeat bucket is stored in memory: a single NATS server that restarts loses it. The node makes it again
/// and its heartbeat is back, where it used to fail for ever (the node missing from the list of nodes).
///
/// A node without a heartbeat counts as gone (its idempotency claims are taken over) only once the bucket has
/// existed for a heartbeat's lifetime: before that, as after the restart, the live nodes may not have written
/// theirs yet, and whether it is live is not known (an error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_is_back_after_the_nats_server_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut server) = server(dir.path()) else {
        return;
    };
    let (spool, _rx) = start(JetStreamOptions::new(vec![server.url()], "beats"))
        .await
        .unwrap();
    let node = spool.node_name().to_owned();
    let beat = async |ctx: &jetstream::Context| match ctx.get_key_value("beats_nodes").await {
        Ok(store) => matches!(store.entry(&node).await, Ok(Some(_))),
        Err(_) => false,
    };
    let ctx = raw(&server.url()).await;
    wait_for("the first heartbeat", Duration::from_secs(20), async || {
        spool.beating() && beat(&ctx).await
    })
    .await;
    assert_eq!(spool.node_alive(&node).await, Ok(true));
    let young = spool
        .node_alive("another-node")
        .await
        .expect_err("a node without a heartbeat in a bucket just made was taken for gone");
    assert!(young.contains("beats_nodes"), "{young}");
    wait_for(
        "another node taken for gone once the bucket is old enough",
        BEAT_MAX_AGE * 3,
        async || spool.node_alive("another-node").await == Ok(false),
    )
    .await;

    server.restart();
    server.wait_healthy(Duration::from_secs(30));
    let ctx = raw(&server.url()).await;
    // Generous: the node's client reconnects with backoff, and a restarted server's JetStream may take a while to
    // take requests again on a loaded machine.
    wait_for(
        "the heartbeat back after the restart",
        Duration::from_secs(120),
        async || beat(&ctx).await,
    )
    .await;
    wait_for("the node beating", Duration::from_secs(20), async || {
        spool.beating()
    })
    .await;
    // The bucket made again holds only the heartbeats written since: another node's is not there yet.
    let young = spool
        .node_alive("another-node")
        .await
        .expect_err("a node without a heartbeat in the bucket made again was taken for gone");
    assert!(young.contains("NATS lost it"), "{young}");
    spool.close().await.unwrap();
}

/// A node whose heartbeat writes hang (NATS unreachable, and a long request timeout) stops counting itself live
/// (it claims no Idempotency-Key) before the last heartbeat it wrote expires, rather than when the write gives up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_heartbeat_hangs_is_not_beating_before_its_last_one_expires() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut server) = server(dir.path()) else {
        return;
    };
    let mut options = JetStreamOptions::new(vec![server.url()], "hang");
    options.request_timeout = Duration::from_secs(120);
    let (spool, _rx) = start(options).await.unwrap();
    wait_for("the first heartbeat", Duration::from_secs(20), async || {
        spool.beating()
    })
    .await;
    // The last heartbeat was written before this: it expires within BEAT_MAX_AGE from here.
    server.kill();
    wait_for(
        "the node not beating before its last heartbeat expires",
        BEAT_MAX_AGE,
        async || !spool.beating(),
    )
    .await;
    // Not closed: with NATS gone, a stop waits for the request timeout.
    drop(spool);
}

/// A consumer deleted under a running node (by hand, by mistake) is made again by the node, and delivery resumes
/// without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_consumer_is_made_again_and_delivery_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = server(dir.path()) else {
        return;
    };
    let (spool, mut rx) = start(JetStreamOptions::new(vec![server.url()], "gone"))
        .await
        .unwrap();
    let first = SpoolKey(0x53u128 << 64 | 1);
    spool
        .append(vec![common::notification(first)])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.key, first);
    spool.remove(&[first]);

    let ctx = raw(&server.url()).await;
    let stream = ctx.get_stream("gone").await.unwrap();
    stream.delete_consumer("herald").await.unwrap();

    let second = SpoolKey(0x53u128 << 64 | 2);
    spool
        .append(vec![common::notification(second)])
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("delivery resumed after the consumer was deleted")
        .unwrap();
    assert_eq!(got.key, second);
    assert!(stream.consumer_info("herald").await.is_ok());
    spool.remove(&[second]);
    spool.close().await.unwrap();
}

/// What the node's acks rely on: a final ack (or term) that goes out once without waiting for an answer (no room
/// to await more answers) is confirmed later by the same ack sent as a request; the server answers that request
/// although the message is no longer pending (the plain ack removed it from the stream), on one server as on a
/// three-server cluster (the ack replicated). So a confirmation waiting its turn takes its slot for one round trip,
/// not for the ack wait, and a plain ack and its confirmation never leave the message to be delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_ack_of_a_message_acked_plainly_is_answered() {
    let dir = tempfile::tempdir().unwrap();
    if !nats::available() {
        return;
    }
    for servers in [
        vec![nats::single(&dir.path().join("single"))],
        nats::cluster(&dir.path().join("cluster")),
    ] {
        let replicas = servers.len();
        let client = async_nats::connect(servers[0].url()).await.unwrap();
        let ctx = jetstream::new(client.clone());
        let mut config = herald_stream("acked");
        config.num_replicas = replicas;
        // A cluster just started may not have placed its first stream's replicas yet.
        let deadline = Instant::now() + Duration::from_secs(30);
        let stream = loop {
            match ctx.create_stream(config.clone()).await {
                Ok(stream) => break stream,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "creating an R{replicas} stream: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let consumer: consumer::PullConsumer = stream
            .create_consumer(herald_consumer("acked", Duration::from_secs(60)))
            .await
            .unwrap();
        for n in 0..3u8 {
            ctx.publish("acked.notifications", vec![n].into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let mut pulled = consumer
            .fetch()
            .max_messages(3)
            .expires(Duration::from_secs(5))
            .messages()
            .await
            .unwrap();
        let mut messages = Vec::new();
        while let Some(message) = futures_util::StreamExt::next(&mut pulled).await {
            messages.push(message.unwrap());
        }
        assert_eq!(messages.len(), 3, "R{replicas}: pulled");
        // The ack sent as a request, as the node confirms a final ack: its answer, or why none came.
        let confirm = async |message: &jetstream::Message, kind: jetstream::AckKind| {
            let reply = message
                .reply
                .clone()
                .expect("a pulled message has a reply subject");
            match tokio::time::timeout(Duration::from_secs(10), client.request(reply, kind.into()))
                .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("no answer within 10 s".to_owned()),
            }
        };
        let kinds = [
            jetstream::AckKind::Ack,
            jetstream::AckKind::Term,
            jetstream::AckKind::Ack,
        ];
        // The first two acked plainly, as the acks waiting their turn are, and taken by the server.
        for (message, kind) in messages.iter().zip(kinds).take(2) {
            message.ack_with(kind).await.unwrap();
        }
        client.flush().await.unwrap();
        wait_for(
            "the plain acks taken",
            Duration::from_secs(20),
            async || {
                stream
                    .consumer_info("herald")
                    .await
                    .unwrap()
                    .num_ack_pending
                    == 1
            },
        )
        .await;
        for (message, kind) in messages.iter().zip(kinds).take(2) {
            assert_eq!(
                confirm(message, kind).await,
                Ok(()),
                "R{replicas}: the confirmation of a {kind:?} sent plainly before"
            );
        }
        // A confirmed ack, then the same confirmation again (sent again when its answer was lost).
        assert_eq!(confirm(&messages[2], kinds[2]).await, Ok(()), "R{replicas}");
        assert_eq!(
            confirm(&messages[2], kinds[2]).await,
            Ok(()),
            "R{replicas}: a confirmation sent again"
        );
        let mut stream = ctx.get_stream("acked").await.unwrap();
        wait_for("the stream empty", Duration::from_secs(20), async || {
            stream.info().await.unwrap().state.messages == 0
        })
        .await;
        let info = stream.consumer_info("herald").await.unwrap();
        assert_eq!(
            (info.num_ack_pending, info.num_redelivered),
            (0, 0),
            "R{replicas}"
        );
    }
}

/// Notifications handed back to the stream with a delay (a retry hours away, a domain no node delivers now) stay in
/// the consumer's pending set until they are delivered again, and count toward its `max_ack_pending`. A consumer
/// with a limit they fill delivers nothing more, to any node, for any notification, until their delays run out: a
/// pull asking for the others ends with nothing while they wait in the stream. herald's consumer has no limit by
/// default (`spool_nats_max_ack_pending = 0`): a node started on that consumer lifts the limit, the waiting
/// notifications are delivered, and delayed hand-backs beyond the old limit hold up nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_hand_backs_filling_a_finite_max_ack_pending_hold_up_every_node_and_no_limit_does_not()
 {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = server(dir.path()) else {
        return;
    };
    let ctx = raw(&server.url()).await;
    let key = |n: u64| SpoolKey(0x55u128 << 64 | u128::from(n));
    let later = Duration::from_secs(600);
    let options = || {
        let mut o = JetStreamOptions::new(vec![server.url()], "hol");
        o.ack_wait = Duration::from_secs(60);
        o
    };
    let mut limited = options();
    limited.max_ack_pending = 3;
    let (node, mut rx) = start(limited).await.unwrap();
    node.append((1..=5).map(|n| common::notification(key(n))).collect())
        .await
        .unwrap();
    // Three delivered (the limit), and handed back for a retry in ten minutes (a failing domain's).
    let mut first = BTreeSet::new();
    for _ in 0..3 {
        let n = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("a notification within the limit")
            .unwrap();
        node.release(n.key, later);
        first.insert(n.key);
    }
    let stream = ctx.get_stream("hol").await.unwrap();
    wait_for(
        "the handed-back notifications pending on the consumer, two others waiting in the stream",
        Duration::from_secs(20),
        async || {
            let info = stream.consumer_info("herald").await.unwrap();
            node.held() == 0 && info.num_ack_pending == 3 && info.num_pending == 2
        },
    )
    .await;
    // Nothing is delivered any more: a pull asking for the two waiting ends with none (the server's own expiry),
    // and nothing was delivered to the node's pulls meanwhile.
    let before = stream.consumer_info("herald").await.unwrap();
    let consumer: consumer::PullConsumer = stream.get_consumer("herald").await.unwrap();
    let mut pull = consumer
        .fetch()
        .max_messages(2)
        .expires(Duration::from_secs(1))
        .messages()
        .await
        .unwrap();
    let mut got = 0;
    while let Some(m) = futures_util::StreamExt::next(&mut pull).await {
        m.unwrap();
        got += 1;
    }
    assert_eq!(got, 0, "a pull was delivered something past the limit");
    let after = stream.consumer_info("herald").await.unwrap();
    assert_eq!(
        (
            after.delivered.consumer_sequence,
            after.num_pending,
            after.num_ack_pending
        ),
        (before.delivered.consumer_sequence, 2, 3),
        "the consumer delivered while the limit was full"
    );
    assert!(rx.try_recv().is_err());
    node.close().await.unwrap();

    // A node with the default: the consumer's limit lifted, the two waiting come at once.
    let (node, mut rx) = start(options()).await.unwrap();
    assert_eq!(
        stream
            .consumer_info("herald")
            .await
            .unwrap()
            .config
            .max_ack_pending,
        -1
    );
    let mut rest = BTreeSet::new();
    for _ in 0..2 {
        let n = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("the notifications held up by the limit")
            .unwrap();
        node.release(n.key, later);
        rest.insert(n.key);
    }
    let all: BTreeSet<_> = (1..=5).map(key).collect();
    assert_eq!(all, first.union(&rest).copied().collect());
    // Five handed back with a delay, beyond the old limit: more notifications still come.
    node.append((6..=10).map(|n| common::notification(key(n))).collect())
        .await
        .unwrap();
    let mut more = BTreeSet::new();
    while more.len() < 5 {
        let n = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("notifications past the old limit")
            .unwrap();
        assert!(more.insert(n.key), "{} came twice", n.key);
    }
    assert_eq!(more, (6..=10).map(key).collect());
    node.remove(&more.iter().copied().collect::<Vec<_>>());
    wait_for(
        "only the delayed hand-backs pending",
        Duration::from_secs(20),
        async || {
            stream
                .consumer_info("herald")
                .await
                .unwrap()
                .num_ack_pending
                == 5
        },
    )
    .await;
    node.close().await.unwrap();
}

/// The consumer edited while the nodes run gets the check it gets at start, every second: a delivery limit
/// (notifications reaching it would stay in the stream undelivered, with no outcome) is reported, naming the
/// consumer and the setting, until it is removed; a backoff list (it would hand a held notification to another node
/// before its in-progress ack) is removed by the node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_edited_while_the_nodes_run_is_reported_and_what_herald_may_fix_is_put_back() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = server(dir.path()) else {
        return;
    };
    let (spool, _rx) = start(JetStreamOptions::new(vec![server.url()], "live"))
        .await
        .unwrap();
    let ctx = raw(&server.url()).await;
    let stream = ctx.get_stream("live").await.unwrap();
    assert_eq!(spool.unfit(), None);
    let mut edited = stream.consumer_info("herald").await.unwrap().config.clone();
    // NATS takes a backoff list only with a delivery limit above its length.
    edited.max_deliver = 5;
    edited.backoff = vec![Duration::from_secs(1), Duration::from_secs(2)];
    stream
        .update_consumer(consumer::pull::Config {
            durable_name: edited.durable_name.clone(),
            ack_policy: edited.ack_policy,
            ack_wait: edited.ack_wait,
            max_deliver: edited.max_deliver,
            backoff: edited.backoff.clone(),
            max_ack_pending: edited.max_ack_pending,
            filter_subject: edited.filter_subject.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_for(
        "the delivery limit reported and the backoff list removed",
        Duration::from_secs(20),
        async || {
            let info = stream.consumer_info("herald").await.unwrap();
            info.config.backoff.is_empty()
                && spool
                    .unfit()
                    .is_some_and(|why| why.contains("max_deliver is 5"))
        },
    )
    .await;
    let why = spool.unfit().unwrap();
    assert!(
        why.contains("consumer \"herald\" of stream \"live\""),
        "{why}"
    );
    assert!(why.contains("nats consumer rm live herald"), "{why}");
    assert_eq!(
        stream
            .consumer_info("herald")
            .await
            .unwrap()
            .config
            .max_deliver,
        5,
        "a delivery limit is the operator's to remove"
    );

    let mut fixed = stream.consumer_info("herald").await.unwrap().config.clone();
    fixed.max_deliver = -1;
    stream
        .update_consumer(consumer::pull::Config {
            durable_name: fixed.durable_name.clone(),
            ack_policy: fixed.ack_policy,
            ack_wait: fixed.ack_wait,
            max_deliver: fixed.max_deliver,
            max_ack_pending: fixed.max_ack_pending,
            filter_subject: fixed.filter_subject.clone(),
            ..Default::default()
        })
        .await
        .unwrap();
    wait_for(
        "the report cleared once the limit is removed",
        Duration::from_secs(20),
        async || spool.unfit().is_none(),
    )
    .await;
    spool.close().await.unwrap();
}

/// A consumer whose state NATS keeps in memory (a restart loses what it delivered and what waits for a retry), or
/// with fewer replicas than the stream (here an R1 consumer left on a stream scaled to R3 since: delivery stops
/// when its one server is lost), cannot change in place: refused at start, naming the consumer and the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_in_memory_or_with_other_replicas_than_its_stream_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    if !nats::available() {
        return;
    }
    let single = nats::single(&dir.path().join("single"));
    let ctx = raw(&single.url()).await;
    let stream = ctx.create_stream(herald_stream("mem")).await.unwrap();
    let mut config = herald_consumer("mem", Duration::from_secs(30));
    config.memory_storage = true;
    stream.create_consumer(config).await.unwrap();
    match JetStreamSpool::connect(JetStreamOptions::new(vec![single.url()], "mem")).await {
        Err(SpoolError::Config(why)) => {
            assert!(why.contains("consumer \"herald\""), "{why}");
            assert!(why.contains("mem_storage"), "{why}");
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("a consumer kept in memory was accepted"),
    }

    let cluster = nats::cluster(&dir.path().join("cluster"));
    let ctx = raw(&cluster[0].url()).await;
    // A cluster just started may not have placed its first stream yet.
    let deadline = Instant::now() + Duration::from_secs(30);
    let stream = loop {
        match ctx.create_stream(herald_stream("scaled")).await {
            Ok(stream) => break stream,
            Err(e) => {
                assert!(Instant::now() < deadline, "creating the stream: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let mut config = herald_consumer("scaled", Duration::from_secs(30));
    config.num_replicas = 1;
    stream.create_consumer(config).await.unwrap();
    let mut scaled = herald_stream("scaled");
    scaled.num_replicas = 3;
    ctx.update_stream(scaled).await.unwrap();
    let mut options = JetStreamOptions::new(cluster.iter().map(|s| s.url()).collect(), "scaled");
    options.replicas = 3;
    match JetStreamSpool::connect(options).await {
        Err(SpoolError::Config(why)) => {
            assert!(why.contains("consumer \"herald\""), "{why}");
            assert!(
                why.contains("it has 1 replicas, herald needs the stream's 3"),
                "{why}"
            );
        }
        Err(e) => panic!("refused for another reason: {e}"),
        Ok(_) => panic!("an R1 consumer on an R3 stream was accepted"),
    }
}
