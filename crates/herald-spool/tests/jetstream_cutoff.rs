//! A JetStream node cut off from NATS without its connection closing (a network partition: the packets go nowhere,
//! no reset comes) while it holds notifications (docs/scale-out.md, failure table): its NATS client keeps taking
//! its in-progress acks into its buffers, but the server never has them, so JetStream gives the held
//! notifications to another node after the ack wait. By then the cut-off node must have found its claims lapsed,
//! and send none of them: a delay instead of a duplicate.
//!
//! The node reaches its `nats-server` through a TCP relay in the test that, once cut, holds what either side sends
//! without closing anything. Skipped without `nats-server` on PATH (failing under `CI`), as the other JetStream
//! tests.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_spool::{JetStreamOptions, JetStreamSpool, Spool, SpoolKey, StoredNotification};
use herald_testkit::nats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::Receiver;
use tokio::sync::watch;

async fn wait_for(what: &str, within: Duration, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP relay to `target` that can be cut: from then on it holds what it reads, in either direction, and closes
/// nothing, as a network that drops every packet.
struct Relay {
    port: u16,
    cut: watch::Sender<bool>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (cut, _) = watch::channel(false);
        let cuts = cut.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(pump(in_read, out_write, cuts.subscribe()));
                tokio::spawn(pump(out_read, in_write, cuts.subscribe()));
            }
        });
        Relay { port, cut }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Cuts the relay (`true`) or mends it.
    fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// Copies `from` to `to`, holding each chunk while the relay is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut cut: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if cut.wait_for(|cut| !*cut).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn start(options: JetStreamOptions) -> (Arc<JetStreamSpool>, Receiver<StoredNotification>) {
    let spool = JetStreamSpool::connect(options).await.unwrap();
    let rx = spool.take_deliveries().unwrap();
    wait_for("the stream set up", Duration::from_secs(20), async || {
        spool.connected()
    })
    .await;
    (spool, rx)
}

/// A node holding notifications is cut off from NATS without its connection closing: once JetStream has handed
/// them to another node (the ack wait passed without an in-progress ack reaching the server), the cut-off node
/// finds every one of them lapsed, and its delivery path sends none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_nats_does_not_send_what_another_node_was_given() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = nats::single(dir.path());
    let relay = Relay::start(server.url().trim_start_matches("nats://").to_owned()).await;
    // Short, so that the test takes seconds; long enough that a loaded machine's stalls do not outlast the
    // in-progress acks (every third of it) before the cut.
    let ack_wait = Duration::from_secs(6);
    let options = |url: String, node: &str| {
        let mut o = JetStreamOptions::new(vec![url], "cutoff");
        o.ack_wait = ack_wait;
        o.node = node.to_owned();
        o
    };
    let (cut_off, mut held_rx) = start(options(relay.url(), "cut-off")).await;
    let count = 20u64;
    let batch: Vec<_> = (1..=count)
        .map(|n| common::notification(SpoolKey(0xC7u128 << 64 | u128::from(n))))
        .collect();
    let keys: BTreeSet<SpoolKey> = batch.iter().map(|n| n.key).collect();
    cut_off.append(batch).await.unwrap();
    let mut held = BTreeSet::new();
    while (held.len() as u64) < count {
        let n = tokio::time::timeout(Duration::from_secs(20), held_rx.recv())
            .await
            .expect("the cut-off node is handed every notification")
            .unwrap();
        held.insert(n.key);
    }
    assert_eq!(held, keys);
    // Held for over an ack wait before the cut: the in-progress acks keep them this node's.
    tokio::time::sleep(ack_wait + ack_wait / 2).await;
    assert!(
        keys.iter().all(|&k| !cut_off.lapsed(k)),
        "claims lapsed while the node reached NATS"
    );

    relay.set_cut(true);
    let (other, mut other_rx) = start(options(server.url(), "other")).await;
    let mut given = BTreeSet::new();
    while (given.len() as u64) < count {
        let n = tokio::time::timeout(ack_wait * 4, other_rx.recv())
            .await
            .expect(
                "JetStream hands what the cut-off node held to the other node after the ack wait",
            )
            .unwrap();
        given.insert(n.key);
    }
    assert_eq!(given, keys);
    // JetStream gave them to the other node: the cut-off node's delivery path must not send any of them.
    let still_sent: Vec<SpoolKey> = keys
        .iter()
        .copied()
        .filter(|&k| !cut_off.lapsed(k))
        .collect();
    assert!(
        still_sent.is_empty(),
        "the cut-off node would still send {} of the {count} notifications the other node was given: {still_sent:?}",
        still_sent.len()
    );
    assert_eq!(cut_off.stream_stats().lapsed, count);

    other.remove(&given.into_iter().collect::<Vec<_>>());
    relay.set_cut(false);
    other.close().await.unwrap();
    let _ = cut_off.close().await;
}
