//! A key-value map every node of a JetStream spool shares (a JetStream key-value bucket next to the stream): herald
//! keeps its invalid-token store there, so a token reported invalid through one node is known to all.
//!
//! It owns the bucket's creation (retried in the background while NATS is unreachable), the puts of this node, and
//! the watch that hands every entry of the bucket (all of them at first, then each new one) to the node.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::jetstream::JetStreamSpool;

/// One entry of the map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedEntry {
    pub key: String,
    pub value: Bytes,
}

/// The map's handle: puts go out in the background, in order.
#[derive(Clone)]
pub struct SharedMap {
    puts: tokio::sync::mpsc::UnboundedSender<SharedEntry>,
}

impl SharedMap {
    /// Opens (creating when missing) the bucket `name` with the spool's replica count. Every entry of the bucket,
    /// then every new one (from any node, this one included), goes to `watch`.
    pub fn open(
        spool: &Arc<JetStreamSpool>,
        name: &str,
        watch: tokio::sync::mpsc::UnboundedSender<SharedEntry>,
    ) -> SharedMap {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let ctx = spool.context().clone();
        let replicas = spool.replicas();
        tokio::spawn(run(ctx, name.to_owned(), replicas, rx, watch));
        SharedMap { puts: tx }
    }

    /// Stores `value` under `key` (a NATS subject token: letters, digits, `-`, `_`, `=`, `.`).
    pub fn put(&self, key: String, value: Bytes) {
        let _ = self.puts.send(SharedEntry { key, value });
    }
}

async fn open_bucket(ctx: &jetstream::Context, name: &str, replicas: usize) -> kv::Store {
    loop {
        match ctx.get_key_value(name).await {
            Ok(store) => return store,
            Err(_) => {
                let config = kv::Config {
                    bucket: name.to_owned(),
                    history: 1,
                    num_replicas: replicas,
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                };
                match ctx.create_key_value(config).await {
                    Ok(store) => return store,
                    Err(e) => tracing::debug!("key-value bucket {name}: {e}; retrying"),
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn run(
    ctx: jetstream::Context,
    name: String,
    replicas: usize,
    mut puts: tokio::sync::mpsc::UnboundedReceiver<SharedEntry>,
    watch: tokio::sync::mpsc::UnboundedSender<SharedEntry>,
) {
    let store = open_bucket(&ctx, &name, replicas).await;
    let watcher = store.clone();
    tokio::spawn(async move {
        loop {
            match watcher.watch_with_history(">").await {
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
                Err(e) => tracing::debug!("watching the key-value bucket: {e}"),
            }
            if watch.is_closed() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    while let Some(entry) = puts.recv().await {
        // Retried until NATS takes it: a lost entry would only be reported again by APNs, but the store should
        // agree across nodes.
        let mut delay = Duration::from_millis(100);
        while let Err(e) = store.put(&entry.key, entry.value.clone()).await {
            tracing::debug!("key-value put {}: {e}; retrying", entry.key);
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}
