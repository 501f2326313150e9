//! The spool contract, run against both backends with the same test code: the embedded store ([`DiskSpool`]) and
//! the NATS JetStream stream ([`JetStreamSpool`], docs/scale-out.md). What an append acknowledged comes back for
//! delivery (from recovery after a reopen, or pulled from the stream) byte for byte, once removed it does not come
//! back, and a closed spool refuses appends.
//!
//! The JetStream run starts its own `nats-server` on a loopback port and kills it at the end; without
//! `nats-server` on PATH it is skipped with a message (failing under `CI`).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_spool::{
    DiskSpool, JetStreamOptions, JetStreamSpool, Spool, SpoolError, SpoolKey, SpoolOptions,
    StoredNotification,
};

/// A backend under test: opens the spool, and reads back what is there for delivery (reopening when it must).
#[allow(async_fn_in_trait)]
trait Backend {
    async fn open(&mut self) -> Arc<dyn Spool>;
    /// What the spool offers for delivery now, by token.
    async fn pending(
        &mut self,
        spool: Arc<dyn Spool>,
        expect: usize,
    ) -> (Arc<dyn Spool>, Vec<StoredNotification>);
}

struct Disk<'a>(&'a Path);

impl Backend for Disk<'_> {
    async fn open(&mut self) -> Arc<dyn Spool> {
        Arc::new(DiskSpool::open(self.0, SpoolOptions::default()).unwrap())
    }
    async fn pending(
        &mut self,
        spool: Arc<dyn Spool>,
        _expect: usize,
    ) -> (Arc<dyn Spool>, Vec<StoredNotification>) {
        spool.close().await.unwrap();
        drop(spool);
        let spool = self.open().await;
        let found = spool.recover().unwrap().notifications;
        (spool, found)
    }
}

struct Js {
    url: String,
    stream: String,
}

/// The consumer's ack wait in the JetStream run: far longer than the test waits, so that whatever a stopping node
/// failed to give back would not come back in time and the test would fail.
const JS_ACK_WAIT: Duration = Duration::from_secs(60);

/// How long a fresh node may take to get everything a stopped node gave back: well under the ack wait.
const JS_GIVEN_BACK_WITHIN: Duration = Duration::from_secs(10);

impl Js {
    async fn connect(&self) -> Arc<JetStreamSpool> {
        let mut o = JetStreamOptions::new(vec![self.url.clone()], &self.stream);
        o.ack_wait = JS_ACK_WAIT;
        JetStreamSpool::connect(o).await.unwrap()
    }
}

impl Backend for Js {
    async fn open(&mut self) -> Arc<dyn Spool> {
        self.connect().await
    }
    async fn pending(
        &mut self,
        spool: Arc<dyn Spool>,
        expect: usize,
    ) -> (Arc<dyn Spool>, Vec<StoredNotification>) {
        // A fresh node: what the old one held, and what its pull under way was still bringing in (nobody reads
        // the old node's deliveries here), goes back to the stream on close, at once: all of it comes to the fresh
        // node well within the ack wait.
        let stopped = Instant::now();
        spool.close().await.unwrap();
        drop(spool);
        let js = self.connect().await;
        let mut rx = js.take_deliveries().unwrap();
        let mut found = Vec::new();
        let deadline = stopped + JS_GIVEN_BACK_WITHIN;
        while found.len() < expect {
            match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
                Ok(Some(n)) => found.push(n),
                Ok(None) => panic!("the fresh node stopped delivering"),
                Err(_) => panic!(
                    "{} of {expect} notifications given back by the stopped node came within {:?} (ack wait {:?})",
                    found.len(),
                    JS_GIVEN_BACK_WITHIN,
                    JS_ACK_WAIT
                ),
            }
        }
        if expect == 0 {
            // Nothing more may come.
            if let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await
            {
                found.push(n);
            }
        }
        // Given back once at the stop (held, or brought in by the pull under way), each came back once, not round
        // and round: its delivery count is the retries the next node sees.
        for n in &found {
            assert!(
                n.retries <= 1,
                "delivered {} times before: {n:?}",
                n.retries + 1
            );
        }
        let spool: Arc<dyn Spool> = js;
        (spool, found)
    }
}

fn by_token(v: &[StoredNotification]) -> BTreeMap<Vec<u8>, StoredNotification> {
    v.iter()
        .map(|n| {
            let mut n = n.clone();
            n.key = SpoolKey(0);
            n.retries = 0;
            (n.token.clone(), n)
        })
        .collect()
}

async fn contract(mut backend: impl Backend) {
    let spool = backend.open().await;
    let batch: Vec<StoredNotification> = (0..50)
        .map(|_| common::notification(spool.next_key()))
        .map(|mut n| {
            n.token = n.key.0.to_be_bytes().to_vec();
            n
        })
        .collect();
    spool.append(batch.clone()).await.unwrap();
    assert!(spool.stats().appended >= 50);

    // What was acknowledged comes back, byte for byte.
    let (spool, found) = backend.pending(spool, batch.len()).await;
    assert_eq!(by_token(&found), by_token(&batch));

    // Removed (final outcome): it does not come back.
    let keys: Vec<SpoolKey> = found.iter().map(|n| n.key).collect();
    spool.remove(&keys);
    spool.flush().await.unwrap();
    let (spool, found) = backend.pending(spool, 0).await;
    assert!(
        found.is_empty(),
        "removed notifications came back: {}",
        found.len()
    );

    // Closed: appends are refused.
    spool.close().await.unwrap();
    let refused = spool
        .append(vec![common::notification(spool.next_key())])
        .await;
    assert!(matches!(refused, Err(SpoolError::Closed)), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_spool_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    contract(Disk(dir.path())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jetstream_spool_keeps_the_contract() {
    if !herald_testkit::nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let nats = herald_testkit::nats::single(dir.path());
    let url = nats.url();
    contract(Js {
        url,
        stream: "contract".into(),
    })
    .await;
}
