//! A JetStream node whose NATS server goes silent without closing anything (docs/scale-out.md, failure table: a
//! network partition that drops packets, a stopped process): the NATS client still takes its connection as open.
//! The node must report itself not ready once the liveness probe has had no echo for its limit, and get a working
//! connection again even when its client is stuck writing to the silent server (its buffers full, it takes no
//! command, not even the probe's request to reconnect).
//!
//! The node reaches `nats-server` through a TCP relay in the test that, once frozen, holds what either side of the
//! connections it carries sends, closing nothing; connections made after that are carried as usual, or frozen too.
//! Skipped without `nats-server` on PATH (failing under `CI`), as the other JetStream tests.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use herald_spool::liveness::{self, JetStreamHealth, Target};
use herald_spool::{JetStreamOptions, JetStreamSpool, Spool, SpoolKey};
use herald_testkit::nats;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

async fn wait_for(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP relay to `target` whose connections can be frozen: those numbered below the mark hold what they read, in
/// either direction, and close nothing.
struct Relay {
    port: u16,
    accepted: Arc<AtomicU64>,
    frozen_below: watch::Sender<u64>,
}

impl Relay {
    async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (frozen_below, _) = watch::channel(0u64);
        let accepted = Arc::new(AtomicU64::new(0));
        let (marks, count) = (frozen_below.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let number = count.fetch_add(1, Ordering::SeqCst);
                let Ok(outbound) = TcpStream::connect(&target).await else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(pump(number, in_read, out_write, marks.subscribe()));
                tokio::spawn(pump(number, out_read, in_write, marks.subscribe()));
            }
        });
        Relay {
            port,
            accepted,
            frozen_below,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Freezes the connections carried now; with `later_too`, those made from now on as well.
    fn freeze(&self, later_too: bool) {
        let mark = if later_too {
            u64::MAX
        } else {
            self.accepted.load(Ordering::SeqCst)
        };
        self.frozen_below.send_replace(mark);
    }
}

/// Copies `from` to `to`, holding each chunk while connection `number` is frozen.
async fn pump(
    number: u64,
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen_below: watch::Receiver<u64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if frozen_below.wait_for(|mark| number >= *mark).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// The probe reports the node not ready once its server has answered no probe for the limit, though the client
/// still takes the connection as open (and stays on it: every server it could pick is silent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_makes_the_node_not_ready_at_the_probe_limit() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = nats::single(dir.path());
    let relay = Relay::start(format!("127.0.0.1:{}", server.port)).await;
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(1))
        .connect(relay.url())
        .await
        .unwrap();
    let health = JetStreamHealth::default();
    let (stop, stopping) = watch::channel(false);
    let limit = liveness::silence_limit(Duration::from_secs(1));
    tokio::spawn(liveness::probe(
        {
            let client = client.clone();
            move || {
                Some(Target {
                    client: client.clone(),
                    jetstream: None,
                })
            }
        },
        stopping,
        limit,
        liveness::jetstream_limit(Duration::from_secs(1)),
        health.clone(),
    ));
    assert_eq!(health.unavailable(), None);

    relay.freeze(true);
    wait_for(
        "the node reported not ready",
        limit + liveness::PROBE_EVERY * 5,
        || health.unavailable().is_some(),
    )
    .await;
    let why = health.unavailable().unwrap();
    assert!(
        why.contains("has answered none of this node's last"),
        "{why}"
    );
    stop.send_replace(true);
}

/// A node whose client is stuck writing to a silent server (here a flood of messages filled its buffers after the
/// cut) gets a new connection (one the relay carries) and is ready on it well before the half minute the client's
/// default pings took to end the stuck one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stuck_writing_to_a_silent_server_gets_a_new_connection() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = nats::single(dir.path());
    let relay = Relay::start(format!("127.0.0.1:{}", server.port)).await;
    let mut options = JetStreamOptions::new(vec![relay.url()], "silent");
    options.request_timeout = Duration::from_secs(1);
    options.connect_timeout = Duration::from_secs(1);
    let spool = JetStreamSpool::connect(options).await.unwrap();
    wait_for("the stream set up", Duration::from_secs(20), || {
        spool.connected()
    })
    .await;
    let client = spool.context().client();
    let connects = client.statistics().connects.load(Ordering::Relaxed);

    relay.freeze(false);
    let cut = Instant::now();
    let flooding = Arc::new(AtomicBool::new(true));
    tokio::spawn({
        let (client, flooding) = (client.clone(), flooding.clone());
        async move {
            let junk = bytes::Bytes::from(vec![b'x'; 16 * 1024]);
            while flooding.load(Ordering::Relaxed) {
                if client.publish("flood", junk.clone()).await.is_err() {
                    return;
                }
            }
        }
    });
    // Without the client's own pings ending the stuck connection, it stays open for half a minute (the probe's
    // request to reconnect waits for room in the client's full queue), and the node on it.
    wait_for(
        "a new connection, and the node ready on it",
        Duration::from_secs(20),
        || client.statistics().connects.load(Ordering::Relaxed) > connects && spool.connected(),
    )
    .await;
    flooding.store(false, Ordering::Relaxed);
    eprintln!("connected again {:?} after the cut", cut.elapsed());
    spool
        .append(vec![common::notification(SpoolKey(1))])
        .await
        .expect("the node takes notifications again");
    let _ = spool.close().await;
}
