//! A key-value map every node of a JetStream spool shares (a JetStream key-value bucket next to the stream): herald
//! keeps its invalid-token store there, so a token reported invalid through one node is known to all.
//!
//! It owns the bucket's creation (retried in the background while NATS is unreachable, and again whenever the
//! bucket is lost: a one-replica bucket whose NATS server restarted on an empty store, a bucket deleted by hand),
//! the puts of this node (at most [`MAX_PENDING_PUTS`] waiting, the oldest dropped past that), and the watch that
//! hands every entry of the bucket (all of them at first, then each new one) to the node.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::jetstream::{JetStreamSpool, Reported};

/// Puts waiting to go out at most (NATS unreachable, the bucket being made again); past it the oldest is dropped,
/// with a warning, and counted ([`SharedMap::dropped_puts`]).
pub const MAX_PENDING_PUTS: usize = 10_000;

/// One entry of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEntry {
    pub key: String,
    pub value: Bytes,
}

/// The map's handle: puts go out in the background, in order.
#[derive(Clone)]
pub struct SharedMap {
    pending: Arc<Pending>,
    /// Wakes the task that sends the puts; it ends once every handle is dropped.
    wake: tokio::sync::mpsc::Sender<()>,
}

/// The puts waiting to go out, oldest first, [`MAX_PENDING_PUTS`] at most.
struct Pending {
    name: String,
    cap: usize,
    queue: Mutex<VecDeque<SharedEntry>>,
    dropped: AtomicU64,
    reported: Mutex<Reported>,
}

impl Pending {
    fn new(name: &str, cap: usize) -> Pending {
        Pending {
            name: name.to_owned(),
            cap,
            queue: Mutex::new(VecDeque::new()),
            dropped: AtomicU64::new(0),
            reported: Mutex::new(Reported::default()),
        }
    }

    /// Queues `entry`, dropping the oldest waiting one when `cap` are waiting already.
    fn push(&self, entry: SharedEntry) {
        let dropped = {
            let mut queue = lock(&self.queue);
            let dropped = if queue.len() >= self.cap {
                queue.pop_front()
            } else {
                None
            };
            queue.push_back(entry);
            dropped
        };
        if let Some(dropped) = dropped {
            let total = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if lock(&self.reported).due("dropped") {
                tracing::warn!(
                    "key-value bucket {}: {} puts wait for NATS already; the oldest ({}) is dropped ({total} dropped \
                     so far): this node's entries are missing from the shared map",
                    self.name,
                    self.cap,
                    dropped.key
                );
            }
        }
    }

    fn pop(&self) -> Option<SharedEntry> {
        lock(&self.queue).pop_front()
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        lock(&self.queue).len()
    }
}

impl SharedMap {
    /// Opens (creating when missing) the bucket `name` with the spool's replica count. Every entry of the bucket,
    /// then every new one (from any node, this one included), goes to `watch`.
    pub fn open(
        spool: &Arc<JetStreamSpool>,
        name: &str,
        watch: tokio::sync::mpsc::UnboundedSender<SharedEntry>,
    ) -> SharedMap {
        let pending = Arc::new(Pending::new(name, MAX_PENDING_PUTS));
        let (wake, woken) = tokio::sync::mpsc::channel(1);
        let bucket = Bucket {
            ctx: spool.context().clone(),
            name: name.to_owned(),
            replicas: spool.replicas(),
            max_age: None,
            meanwhile: "",
        };
        tokio::spawn(run(bucket, pending.clone(), woken, watch));
        SharedMap { pending, wake }
    }

    /// Stores `value` under `key` (a NATS subject token: letters, digits, `-`, `_`, `=`, `.`).
    pub fn put(&self, key: String, value: Bytes) {
        self.pending.push(SharedEntry { key, value });
        // Full: the task is woken already and takes every waiting put.
        let _ = self.wake.try_send(());
    }

    /// Puts dropped since start because [`MAX_PENDING_PUTS`] were waiting for NATS already.
    pub fn dropped_puts(&self) -> u64 {
        self.pending.dropped.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where a key-value bucket of the spool is, to open it (or make it) again: the invalid-token map's, the retry
/// states' ([`crate::retry_state`]).
#[derive(Clone)]
pub(crate) struct Bucket {
    pub(crate) ctx: jetstream::Context,
    pub(crate) name: String,
    pub(crate) replicas: usize,
    /// How long an entry is kept (`None`: for good).
    pub(crate) max_age: Option<Duration>,
    /// What the warning of a bucket that cannot be opened adds about the meantime (empty: nothing).
    pub(crate) meanwhile: &'static str,
}

impl Bucket {
    /// Opens the bucket, creating it when it is missing.
    pub(crate) async fn open(&self) -> Result<kv::Store, String> {
        if let Ok(store) = self.ctx.get_key_value(&self.name).await {
            return Ok(store);
        }
        let config = kv::Config {
            bucket: self.name.clone(),
            history: 1,
            max_age: self.max_age.unwrap_or_default(),
            num_replicas: self.replicas,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        self.ctx.create_key_value(config).await.map_err(|e| {
            format!(
                "key-value bucket {}: cannot open or create it: {e}",
                self.name
            )
        })
    }

    /// Opens the bucket, trying again every second until NATS answers; a failure that lasts is warned about once a
    /// minute.
    pub(crate) async fn open_until_done(&self, reported: &mut Reported) -> kv::Store {
        loop {
            match self.open().await {
                Ok(store) => {
                    if reported.clear() {
                        tracing::info!("key-value bucket {}: open again", self.name);
                    }
                    return store;
                }
                Err(e) => {
                    if reported.due("open") {
                        tracing::warn!("{e}; retrying every second{}", self.meanwhile);
                    } else {
                        tracing::debug!("{e}; retrying");
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

async fn run(
    bucket: Bucket,
    pending: Arc<Pending>,
    mut woken: tokio::sync::mpsc::Receiver<()>,
    watch: tokio::sync::mpsc::UnboundedSender<SharedEntry>,
) {
    let mut reported = Reported::default();
    let mut store = bucket.open_until_done(&mut reported).await;
    tokio::spawn(watch_bucket(bucket.clone(), store.clone(), watch));
    loop {
        let Some(entry) = pending.pop() else {
            // Every handle dropped: what they put is out.
            if woken.recv().await.is_none() && lock(&pending.queue).is_empty() {
                return;
            }
            continue;
        };
        // Retried until NATS takes it: a lost entry would only be reported again by APNs, but the store should
        // agree across nodes. A failure may mean the bucket is gone: it is opened (or made) again before the next
        // attempt.
        let mut delay = Duration::from_millis(100);
        let mut failures = 0u32;
        while let Err(e) = store.put(&entry.key, entry.value.clone()).await {
            failures += 1;
            if reported.due("put") {
                tracing::warn!(
                    "key-value bucket {}: put {} failed ({e}); opening the bucket again (creating it when it is \
                     missing) and retrying, {} more puts waiting",
                    bucket.name,
                    entry.key,
                    lock(&pending.queue).len()
                );
            } else {
                tracing::debug!(
                    "key-value bucket {}: put {}: {e}; retrying",
                    bucket.name,
                    entry.key
                );
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
            match bucket.open().await {
                Ok(again) => store = again,
                Err(e) => tracing::debug!("{e}"),
            }
        }
        if failures > 0 && reported.clear() {
            tracing::info!("key-value bucket {}: puts go through again", bucket.name);
        }
    }
}

/// Hands every entry of the bucket, then every new one, to `watch`. A watch that ends (NATS unreachable, the bucket
/// lost) starts again, on the bucket opened (or made) again, with every entry.
async fn watch_bucket(
    bucket: Bucket,
    mut store: kv::Store,
    watch: tokio::sync::mpsc::UnboundedSender<SharedEntry>,
) {
    let mut reported = Reported::default();
    loop {
        match store.watch_with_history(">").await {
            Ok(mut entries) => {
                while let Some(entry) = entries.next().await {
                    let Ok(entry) = entry else { break };
                    if entry.operation != kv::Operation::Put {
                        continue;
                    }
                    let sent = watch.send(SharedEntry {
                        key: entry.key,
                        value: entry.value,
                    });
                    if sent.is_err() {
                        return;
                    }
                }
            }
            Err(e) => tracing::debug!("watching the key-value bucket {}: {e}", bucket.name),
        }
        if watch.is_closed() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        store = bucket.open_until_done(&mut reported).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jetstream::tests::{connected, nats, wait_for};

    fn entry(key: &str) -> SharedEntry {
        SharedEntry {
            key: key.to_owned(),
            value: Bytes::from_static(b"v"),
        }
    }

    /// Puts waiting for NATS are bounded: past the bound the oldest is dropped and counted.
    #[test]
    fn waiting_puts_are_bounded_and_the_oldest_dropped() {
        let pending = Pending::new("bounded", 3);
        for key in ["a", "b", "c", "d", "e"] {
            pending.push(entry(key));
        }
        assert_eq!(pending.len(), 3);
        assert_eq!(pending.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(pending.pop(), Some(entry("c")));
        assert_eq!(pending.pop(), Some(entry("d")));
        assert_eq!(pending.pop(), Some(entry("e")));
        assert_eq!(pending.pop(), None);
    }

    /// The bucket deleted under a running node (as a one-replica bucket is lost when its NATS server restarts on an
    /// empty store): the next put makes it again and goes through, and the watch sees the entries put after.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_bucket_is_made_again_and_puts_go_through() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        let (spool, _rx) = connected(url, "shared").await;
        let (watch, mut watched) = tokio::sync::mpsc::unbounded_channel();
        let map = SharedMap::open(&spool, "shared_tokens", watch);
        let within = Duration::from_secs(20);
        map.put("k1".into(), Bytes::from_static(b"one"));
        let first = tokio::time::timeout(within, watched.recv())
            .await
            .expect("the first entry watched")
            .unwrap();
        assert_eq!(first.key, "k1");

        let ctx = spool.context().clone();
        ctx.delete_key_value("shared_tokens").await.unwrap();
        map.put("k2".into(), Bytes::from_static(b"two"));
        wait_for(
            "the put after the bucket was lost",
            within,
            async || match ctx.get_key_value("shared_tokens").await {
                Ok(store) => matches!(store.get("k2").await, Ok(Some(v)) if &v[..] == b"two"),
                Err(_) => false,
            },
        )
        .await;
        // The watch notices the loss when its consumer's heartbeats stop (some seconds), then starts again.
        let again = tokio::time::timeout(within * 2, async {
            loop {
                match watched.recv().await {
                    Some(e) if e.key == "k2" => return e,
                    Some(_) => continue,
                    None => panic!("the watch ended"),
                }
            }
        })
        .await
        .expect("the entry put after the bucket was lost watched");
        assert_eq!(&again.value[..], b"two");
        assert_eq!(map.dropped_puts(), 0);
        crate::Spool::close(&*spool).await.unwrap();
    }
}
