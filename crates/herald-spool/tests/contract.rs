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

impl Backend for Js {
    async fn open(&mut self) -> Arc<dyn Spool> {
        let mut o = JetStreamOptions::new(vec![self.url.clone()], &self.stream);
        o.ack_wait = Duration::from_secs(5);
        JetStreamSpool::connect(o).await.unwrap()
    }
    async fn pending(
        &mut self,
        spool: Arc<dyn Spool>,
        expect: usize,
    ) -> (Arc<dyn Spool>, Vec<StoredNotification>) {
        // A fresh node: what the old one held, and what its pull under way was still bringing in (nobody reads
        // the old node's deliveries here), goes back to the stream on close; anything a stop could not give back
        // comes after the ack wait (5 s, within the 20 s this waits).
        spool.close().await.unwrap();
        drop(spool);
        let mut o = JetStreamOptions::new(vec![self.url.clone()], &self.stream);
        o.ack_wait = Duration::from_secs(5);
        let js = JetStreamSpool::connect(o).await.unwrap();
        let mut rx = js.take_deliveries().unwrap();
        let mut found = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while found.len() < expect {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left.min(Duration::from_millis(1500)), rx.recv()).await {
                Ok(Some(n)) => found.push(n),
                _ if Instant::now() >= deadline => break,
                _ if expect == 0 => break,
                _ => {}
            }
        }
        if expect == 0 {
            // Nothing more may come.
            if let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(1500), rx.recv()).await
            {
                found.push(n);
            }
        }
        // Given back at the stop, each came back once or twice (the old node's nak of what it held, and of what its
        // pull still brought in), not round and round: its delivery count is the retries the next node sees.
        for n in &found {
            assert!(
                n.retries <= 2,
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
