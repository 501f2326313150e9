//! Writes racing for one key-value entry on a three-server NATS cluster, as herald's `Idempotency-Key` claims do
//! when one key reaches several nodes at once (docs/scale-out.md, "Idempotency keys": the first to create the
//! key's entry runs, the others get `409`). Each write names the revision it expects (none for a create); the
//! losers must be told the entry changed, whatever the server's version says it with: NATS 2.12 and newer answer
//! a write that races another one still being replicated with error code 10164 rather than 10071, and the
//! async-nats herald builds reads both as a wrong last revision (vendor/async-nats/HERALD-PATCH.md). Told apart
//! from a failure of NATS, a loser reads the entry again instead of refusing its request with `503`.
//!
//! The test starts its own `nats-server` cluster (skipped with a message when `nats-server` is not installed,
//! failing under `CI`).

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use support::nats;

/// Keys raced for, and writers per key (spread over the three servers).
const KEYS: usize = 100;
const WRITERS: usize = 6;

/// What a racing write came to, named for the report of a failure.
fn outcome<K>(r: &Result<u64, async_nats::error::Error<K>>, lost: K) -> String
where
    K: Clone + std::fmt::Debug + std::fmt::Display + PartialEq,
{
    match r {
        Ok(_) => "won".into(),
        Err(e) if e.kind() == lost => "lost".into(),
        Err(e) => format!("failed: {e:?}"),
    }
}

/// The bucket `name` (three replicas) opened through each server of `servers`.
async fn bucket_on_each(servers: &[nats::NatsServer], name: &str) -> Vec<kv::Store> {
    let mut stores = Vec::new();
    for server in servers {
        let js = jetstream::new(async_nats::connect(server.url()).await.unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        let store = loop {
            let config = kv::Config {
                bucket: name.into(),
                history: 1,
                num_replicas: 3,
                ..Default::default()
            };
            match js.create_key_value(config).await {
                Ok(store) => break store,
                Err(e) => {
                    assert!(Instant::now() < deadline, "bucket {name}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        stores.push(store);
    }
    stores
}

/// Each key's entry is created by `WRITERS` writers at once through the three servers: one wins, every other is
/// told the key exists. Then each is replaced by as many writers at once, all at the revision it was created at:
/// again one wins, and every other is told the revision is not the last. No writer sees another error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_racing_for_one_entry_on_a_cluster_lose_as_a_changed_entry() {
    if !nats::available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let servers = nats::cluster(dir.path());
    let stores = bucket_on_each(&servers, "race").await;
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for round in 0..KEYS {
        let key = format!("k{round}");
        let creates: Vec<_> = (0..WRITERS)
            .map(|i| {
                let (store, key) = (stores[i % stores.len()].clone(), key.clone());
                tokio::spawn(async move { store.create(&key, "claim".into()).await })
            })
            .collect();
        let mut revision = None;
        let mut won = 0;
        for create in creates {
            let r = create.await.unwrap();
            let said = outcome(&r, kv::CreateErrorKind::AlreadyExists);
            if let Ok(rev) = r {
                revision = Some(rev);
                won += 1;
            }
            *outcomes.entry(format!("create {said}")).or_default() += 1;
        }
        assert_eq!(won, 1, "{key}: {outcomes:?}");
        let revision = revision.unwrap();
        let updates: Vec<_> = (0..WRITERS)
            .map(|i| {
                let (store, key) = (stores[i % stores.len()].clone(), key.clone());
                tokio::spawn(async move { store.update(&key, "answer".into(), revision).await })
            })
            .collect();
        for update in updates {
            let r = update.await.unwrap();
            let said = outcome(&r, kv::UpdateErrorKind::WrongLastRevision);
            *outcomes.entry(format!("update {said}")).or_default() += 1;
        }
    }
    eprintln!("{outcomes:?}");
    let failed: Vec<_> = outcomes.keys().filter(|k| k.contains("failed")).collect();
    assert!(
        failed.is_empty(),
        "writes failed rather than lost: {outcomes:#?}"
    );
    assert_eq!(outcomes["create won"], KEYS, "{outcomes:?}");
    assert_eq!(outcomes["update won"], KEYS, "{outcomes:?}");
}
