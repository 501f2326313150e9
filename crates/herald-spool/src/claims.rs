//! A key-value bucket of claims that every node of a JetStream spool shares, with compare-and-set writes: herald
//! keeps its `Idempotency-Key`s there, so that a request retried through another node finds the first one's claim
//! or answer.
//!
//! It owns the bucket (created on first use, next to the stream, with the stream's replica count and an age limit),
//! the atomic operations herald needs (create only when absent, replace or remove only at a known revision), and the
//! framing that lets a value exceed what one NATS message carries: a large value is written as chunks under
//! `<key>.<nonce>.c<i>` before the entry that names them (a nonce per write, so that two writers racing for one
//! entry never overwrite each other's chunks: the loser's are left to expire). It knows nothing of what the values
//! mean.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{GetStreamError, GetStreamErrorKind, KeyValueError};
use async_nats::jetstream::{self, kv};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};

use crate::jetstream::JetStreamSpool;

/// The value is stored in the entry itself.
const INLINE: u8 = 0;
/// The entry names chunks: a u32 count, a u64 total length and the u64 nonce of their keys follow (big-endian).
const CHUNKED: u8 = 1;
/// Length of a chunked entry's own bytes.
const CHUNKED_LEN: usize = 21;
/// Room left in a NATS message for the headers JetStream adds to a key-value put.
const HEADER_ROOM: usize = 4096;

/// What a bucket operation can fail with.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClaimError {
    /// NATS did not answer, or refused the operation.
    #[error("key-value bucket {bucket}: {detail}")]
    Unavailable { bucket: String, detail: String },
    /// An entry that cannot be read back: a chunk missing (expired with the entry) or a framing this build does not
    /// know (written by a newer herald).
    #[error("key-value bucket {bucket}: entry {key}: {detail}")]
    Unreadable {
        bucket: String,
        key: String,
        detail: String,
    },
}

/// An entry as read: its value, the revision a [`ClaimBucket::replace`] or [`ClaimBucket::remove`] must name, and
/// when the NATS server stored it (the server's clock, Unix milliseconds: comparable across nodes whose clocks
/// differ).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub revision: u64,
    pub value: Bytes,
    pub stored_ms: u64,
}

/// After an attempt to open the bucket failed, operations fail at once for this long (NATS unreachable, a leader
/// being elected) rather than each trying again and waiting for NATS's answer in turn.
pub const REOPEN_AFTER: Duration = Duration::from_secs(1);

/// An attempt to open the bucket, shared by the operations that need it while it runs.
type Opening = Shared<BoxFuture<'static, Result<Arc<kv::Store>, String>>>;

/// The bucket's handle. Cheap to share; the bucket is opened (created when missing) by the first operation, and
/// opened (or created) again by the next one after an operation failed: a bucket lost meanwhile (a NATS server of a
/// one-replica bucket restarted on an empty store, the bucket deleted by hand) is made again rather than failing
/// every operation until herald restarts.
///
/// No lock is held while NATS is asked anything: operations that find the bucket not open share one attempt to
/// open it, and for [`REOPEN_AFTER`] after an attempt failed they fail at once with its error. During an outage
/// each one waits for at most one attempt, however many arrive together.
pub struct ClaimBucket {
    spool: Arc<JetStreamSpool>,
    name: String,
    max_age: Duration,
    /// How long a failed attempt to open the bucket answers for the operations that follow ([`REOPEN_AFTER`]).
    reopen_after: Duration,
    /// Shared with the attempt to open the bucket under way, which records its outcome.
    state: Arc<Mutex<OpenState>>,
    /// Attempts to open the bucket so far.
    #[cfg(test)]
    opens: std::sync::atomic::AtomicU64,
}

/// Where opening the bucket stands.
#[derive(Default)]
struct OpenState {
    /// The bucket as last opened; `None` until the first operation and after a failed one.
    store: Option<Arc<kv::Store>>,
    /// The attempt to open it under way.
    opening: Option<Opening>,
    /// The last attempt that failed: when it ended, and why. Cleared once one succeeds.
    failed: Option<(Instant, String)>,
}

impl ClaimBucket {
    /// The bucket `name`; an entry lives `max_age` after its last write. An existing bucket is used with its own
    /// settings.
    pub fn new(spool: Arc<JetStreamSpool>, name: &str, max_age: Duration) -> ClaimBucket {
        ClaimBucket {
            spool,
            name: name.to_owned(),
            max_age,
            reopen_after: REOPEN_AFTER,
            state: Arc::new(Mutex::new(OpenState::default())),
            #[cfg(test)]
            opens: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn unavailable(&self, detail: impl std::fmt::Display) -> ClaimError {
        ClaimError::Unavailable {
            bucket: self.name.clone(),
            detail: detail.to_string(),
        }
    }

    /// The bucket, opened (or created when missing) if it is not open: the attempt under way when there is one, a
    /// new one otherwise, or at once the error of an attempt that failed less than `reopen_after` ago.
    async fn store(&self) -> Result<Arc<kv::Store>, ClaimError> {
        let opening = {
            let mut state = lock(&self.state);
            if let Some(store) = &state.store {
                return Ok(store.clone());
            }
            match &state.opening {
                Some(opening) => opening.clone(),
                None => {
                    if let Some((at, why)) = &state.failed {
                        let ago = at.elapsed();
                        if ago < self.reopen_after {
                            return Err(self.unavailable(format!(
                                "cannot open or create it: {why} ({} ms ago; not tried again before {} ms)",
                                ago.as_millis(),
                                self.reopen_after.as_millis()
                            )));
                        }
                    }
                    #[cfg(test)]
                    self.opens
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // A task of its own: the attempt runs to its end and records its outcome even when the
                    // operations waiting for it are dropped (their requests cancelled). It takes the lock held here
                    // to record it, so it cannot end before it is recorded as under way.
                    let open = self.open();
                    let shared = self.state.clone();
                    let task = tokio::spawn(async move {
                        let opened = open.await;
                        let mut state = lock(&shared);
                        state.opening = None;
                        match &opened {
                            Ok(store) => {
                                state.failed = None;
                                if state.store.is_none() {
                                    state.store = Some(store.clone());
                                }
                            }
                            Err(why) => state.failed = Some((Instant::now(), why.clone())),
                        }
                        opened
                    });
                    let opening = async move {
                        task.await
                            .unwrap_or_else(|e| Err(format!("the attempt to open it stopped: {e}")))
                    }
                    .boxed()
                    .shared();
                    state.opening = Some(opening.clone());
                    opening
                }
            }
        };
        opening
            .await
            .map_err(|why| self.unavailable(format!("cannot open or create it: {why}")))
    }

    /// Opens the bucket, creating it when NATS says it is missing; the error says what failed.
    fn open(&self) -> impl Future<Output = Result<Arc<kv::Store>, String>> + Send + 'static {
        let ctx = self.spool.context().clone();
        let config = kv::Config {
            bucket: self.name.clone(),
            history: 1,
            max_age: self.max_age,
            num_replicas: self.spool.replicas(),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        async move {
            let store = match ctx.get_key_value(&config.bucket).await {
                Ok(store) => store,
                // NATS did not answer (unreachable, a leader being elected): creating it would not be answered
                // either.
                Err(e) if unanswered(&e) => return Err(format!("opening it: {e}")),
                Err(_) => ctx
                    .create_key_value(config)
                    .await
                    .map_err(|e| format!("creating it: {e}"))?,
            };
            Ok(Arc::new(store))
        }
    }

    /// An operation on `store` failed (NATS unreachable, or the bucket gone: no responders, stream not found): the
    /// next operation opens the bucket again, creating it when it is missing. A handle opened since by another
    /// operation is kept.
    fn failed(&self, store: &Arc<kv::Store>, e: ClaimError) -> ClaimError {
        let mut state = lock(&self.state);
        if state.store.as_ref().is_some_and(|c| Arc::ptr_eq(c, store)) {
            state.store = None;
        }
        e
    }

    /// The largest piece of a value one put carries.
    fn chunk_size(&self) -> usize {
        // Before the first connection the server's limit is unknown: NATS's default, 1 MiB.
        let max = match self.spool.max_payload() {
            0 => 1 << 20,
            n => n,
        };
        max.saturating_sub(HEADER_ROOM).max(1024)
    }

    /// The value of `key`, `None` when absent (never written, removed, or expired).
    pub async fn read(&self, key: &str) -> Result<Option<Entry>, ClaimError> {
        let store = self.store().await?;
        let entry = match store.entry(key).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => e,
            Ok(_) => return Ok(None),
            Err(e) => {
                let e = self.unavailable(format!(
                    "reading {key}: {}",
                    crate::jetstream::nats_failure_text(&e)
                ));
                return Err(self.failed(&store, e));
            }
        };
        let unreadable = |detail: String| ClaimError::Unreadable {
            bucket: self.name.clone(),
            key: key.to_owned(),
            detail,
        };
        let framed = entry.value;
        let value = match framed.first() {
            Some(&INLINE) => framed.slice(1..),
            Some(&CHUNKED) if framed.len() == CHUNKED_LEN => {
                let count = u32::from_be_bytes([framed[1], framed[2], framed[3], framed[4]]);
                let mut word = [0u8; 8];
                word.copy_from_slice(&framed[5..13]);
                let total = u64::from_be_bytes(word) as usize;
                word.copy_from_slice(&framed[13..21]);
                let nonce = u64::from_be_bytes(word);
                let mut value = BytesMut::with_capacity(total.min(64 << 20));
                for i in 0..count {
                    let chunk_key = chunk_key(key, nonce, i);
                    match store.get(&chunk_key).await {
                        Ok(Some(chunk)) => value.put(chunk),
                        Ok(None) => {
                            return Err(unreadable(format!("chunk {chunk_key} is missing")));
                        }
                        Err(e) => {
                            let e = self.unavailable(format!(
                                "reading {chunk_key}: {}",
                                crate::jetstream::nats_failure_text(&e)
                            ));
                            return Err(self.failed(&store, e));
                        }
                    }
                }
                if value.len() != total {
                    return Err(unreadable(format!(
                        "its chunks hold {} bytes, not {total}",
                        value.len()
                    )));
                }
                value.freeze()
            }
            other => {
                return Err(unreadable(format!(
                    "unknown framing {other:?} (written by a newer herald?)"
                )));
            }
        };
        Ok(Some(Entry {
            revision: entry.revision,
            value,
            stored_ms: (entry.created.unix_timestamp_nanos() / 1_000_000).max(0) as u64,
        }))
    }

    /// Writes the chunks of a large `value` and returns the entry's own bytes.
    async fn frame(&self, key: &str, value: &[u8]) -> Result<Bytes, ClaimError> {
        let size = self.chunk_size();
        if value.len() < size {
            let mut framed = BytesMut::with_capacity(1 + value.len());
            framed.put_u8(INLINE);
            framed.put_slice(value);
            return Ok(framed.freeze());
        }
        let store = self.store().await?;
        let nonce = nonce();
        let mut count = 0u32;
        for chunk in value.chunks(size) {
            let chunk_key = chunk_key(key, nonce, count);
            if let Err(e) = store.put(&chunk_key, Bytes::copy_from_slice(chunk)).await {
                let e = self.unavailable(format!(
                    "writing {chunk_key}: {}",
                    crate::jetstream::nats_failure_text(&e)
                ));
                return Err(self.failed(&store, e));
            }
            count += 1;
        }
        let mut framed = BytesMut::with_capacity(CHUNKED_LEN);
        framed.put_u8(CHUNKED);
        framed.put_u32(count);
        framed.put_u64(value.len() as u64);
        framed.put_u64(nonce);
        Ok(framed.freeze())
    }

    /// Stores `value` under `key` only if the key holds nothing: `Some(revision)`, or `None` when it holds a value
    /// already: another request's, that got there first, or this very write's. A write that fails (it timed out)
    /// is read back by async-nats, and a key the server stored it under all the same is reported as taken. Only
    /// the caller can tell its own value (herald's claims carry a number each request draws), so it reads the key
    /// back after a `None`.
    pub async fn create(&self, key: &str, value: &[u8]) -> Result<Option<u64>, ClaimError> {
        let framed = self.frame(key, value).await?;
        let store = self.store().await?;
        match store.create(key, framed).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => {
                let e = self.unavailable(format!(
                    "creating {key}: {}",
                    crate::jetstream::nats_failure_text(&e)
                ));
                Err(self.failed(&store, e))
            }
        }
    }

    /// Replaces the value of `key` if it is still at `revision`: `Some(new revision)`, or `None` when it was
    /// changed or removed meanwhile.
    pub async fn replace(
        &self,
        key: &str,
        revision: u64,
        value: &[u8],
    ) -> Result<Option<u64>, ClaimError> {
        let framed = self.frame(key, value).await?;
        let store = self.store().await?;
        match store.update(key, framed, revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => {
                let e = self.unavailable(format!(
                    "replacing {key}: {}",
                    crate::jetstream::nats_failure_text(&e)
                ));
                Err(self.failed(&store, e))
            }
        }
    }

    /// Removes `key` if it is still at `revision` (a changed one is left alone).
    pub async fn remove(&self, key: &str, revision: u64) -> Result<(), ClaimError> {
        let store = self.store().await?;
        match store.delete_expect_revision(key, Some(revision)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == kv::DeleteErrorKind::WrongLastRevision => Ok(()),
            Err(e) => {
                let e = self.unavailable(format!(
                    "removing {key}: {}",
                    crate::jetstream::nats_failure_text(&e)
                ));
                Err(self.failed(&store, e))
            }
        }
    }
}

/// A number no other write (or request) is likely to draw: std's randomly keyed hasher over a count.
pub fn nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    static COUNT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNT.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    h.finish()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether opening the bucket failed because NATS did not answer the request (a timeout, no responders, no
/// connection) rather than with an answer (the bucket missing, say).
fn unanswered(e: &KeyValueError) -> bool {
    std::error::Error::source(e)
        .and_then(|source| source.downcast_ref::<GetStreamError>())
        .is_some_and(|e| e.kind() == GetStreamErrorKind::Request)
}

fn chunk_key(key: &str, nonce: u64, i: u32) -> String {
    format!("{key}.{nonce:016x}.c{i}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jetstream::tests::{connected, nats, wait_for};

    /// Create only when absent, replace and remove only at the revision read, values larger than a NATS message
    /// read back whole, and a removed key can be created again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_are_created_once_replaced_at_their_revision_and_large_values_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        let (spool, _rx) = connected(url, "claims").await;
        let bucket = ClaimBucket::new(spool.clone(), "claims_test", Duration::from_secs(60));
        assert_eq!(bucket.read("k1").await.unwrap(), None);

        let first = bucket.create("k1", b"claim").await.unwrap().unwrap();
        assert_eq!(bucket.create("k1", b"other").await.unwrap(), None);
        let read = bucket.read("k1").await.unwrap().unwrap();
        assert_eq!((read.revision, &read.value[..]), (first, &b"claim"[..]));

        // Replacing at a stale revision changes nothing.
        let second = bucket
            .replace("k1", first, b"answer")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(bucket.replace("k1", first, b"late").await.unwrap(), None);
        assert_eq!(
            &bucket.read("k1").await.unwrap().unwrap().value[..],
            b"answer"
        );

        // Removing at a stale revision leaves it; at its revision, the key is free again.
        bucket.remove("k1", first).await.unwrap();
        assert!(bucket.read("k1").await.unwrap().is_some());
        bucket.remove("k1", second).await.unwrap();
        assert_eq!(bucket.read("k1").await.unwrap(), None);
        assert!(bucket.create("k1", b"again").await.unwrap().is_some());

        // A value three times NATS's largest message goes out in chunks and reads back byte for byte.
        let large: Vec<u8> = (0..3 * spool.max_payload() + 17)
            .map(|i| (i % 251) as u8)
            .collect();
        let claim = bucket.create("k2", b"claim").await.unwrap().unwrap();
        assert!(bucket.replace("k2", claim, &large).await.unwrap().is_some());
        let read = bucket.read("k2").await.unwrap().unwrap();
        assert_eq!(read.value.len(), large.len());
        assert!(read.value[..] == large[..]);

        // A writer that lost the race for the entry (its replace names a revision gone by) wrote its chunks
        // first: they do not overwrite the winner's.
        let other: Vec<u8> = large.iter().map(|b| b ^ 0x5a).collect();
        assert_eq!(bucket.replace("k2", claim, &other).await.unwrap(), None);
        let read = bucket.read("k2").await.unwrap().unwrap();
        assert!(
            read.value[..] == large[..],
            "the winner's value was overwritten"
        );
        assert!(read.stored_ms > 0);

        // A chunk gone (expired before its entry) is reported, not taken for a shorter value.
        let store = bucket.store().await.unwrap();
        let mut keys = store.keys().await.unwrap();
        let mut seconds = Vec::new();
        while let Some(k) = futures_util::StreamExt::next(&mut keys).await {
            let k = k.unwrap();
            if k.starts_with("k2.") && k.ends_with(".c1") {
                seconds.push(k);
            }
        }
        // The winner's and the loser's second chunks.
        assert_eq!(seconds.len(), 2, "{seconds:?}");
        for k in &seconds {
            store.purge(k).await.unwrap();
        }
        match bucket.read("k2").await {
            Err(e) => assert!(e.to_string().contains(".c1 is missing"), "{e}"),
            Ok(entry) => panic!(
                "read {:?} bytes with a chunk missing",
                entry.map(|e| e.value.len())
            ),
        }
        crate::Spool::close(&*spool).await.unwrap();
    }

    /// NATS unreachable: claims arriving together (idempotent requests during an outage or a leader election)
    /// share one attempt to open the bucket and fail with it, rather than each opening it in turn behind the
    /// others; those that come while that failure is fresh fail at once, without asking NATS. However many they
    /// are, one attempt.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn claims_during_an_outage_share_one_attempt_to_open_the_bucket() {
        let dir = tempfile::tempdir().unwrap();
        let Some((mut server, url)) = nats(dir.path()) else {
            return;
        };
        let mut options = crate::JetStreamOptions::new(vec![url], "outage");
        options.request_timeout = Duration::from_millis(500);
        let spool = JetStreamSpool::connect(options).await.unwrap();
        wait_for("the stream set up", Duration::from_secs(20), async || {
            spool.connected()
        })
        .await;
        server.kill();
        wait_for("the connection lost", Duration::from_secs(20), async || {
            !spool.connected()
        })
        .await;
        let mut bucket = ClaimBucket::new(spool.clone(), "outage_claims", Duration::from_secs(60));
        // The failed attempt stands for the whole test, however slow the machine.
        bucket.reopen_after = Duration::from_secs(3600);
        let bucket = Arc::new(bucket);
        let claims = |first: usize, count: usize| {
            futures_util::future::join_all((first..first + count).map(|i| {
                let bucket = bucket.clone();
                tokio::spawn(async move { bucket.create(&format!("k{i}"), b"claim").await })
            }))
        };
        let opens = || bucket.opens.load(std::sync::atomic::Ordering::Relaxed);
        for (i, outcome) in claims(0, 16).await.into_iter().enumerate() {
            match outcome.unwrap() {
                Err(ClaimError::Unavailable { bucket, detail }) => {
                    assert_eq!(bucket, "outage_claims");
                    assert!(detail.contains("cannot open or create it"), "{detail}");
                }
                other => panic!("claim {i} with NATS down: {other:?}"),
            }
        }
        assert_eq!(
            opens(),
            1,
            "attempts to open the bucket for 16 claims at once"
        );
        for (i, outcome) in claims(16, 64).await.into_iter().enumerate() {
            match outcome.unwrap() {
                Err(ClaimError::Unavailable { detail, .. }) => {
                    assert!(detail.contains("ms ago"), "{detail}")
                }
                other => panic!("claim {} with NATS down: {other:?}", 16 + i),
            }
        }
        assert_eq!(opens(), 1, "attempts to open the bucket for 64 more claims");
    }

    /// The bucket deleted under a running node (as a one-replica bucket is lost when its NATS server restarts on
    /// an empty store): the operations fail while it is gone, then the bucket is made again and claims work again,
    /// without a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_bucket_is_made_again_and_claims_work_again() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        let (spool, _rx) = connected(url, "lost").await;
        let bucket = ClaimBucket::new(spool.clone(), "lost_claims", Duration::from_secs(60));
        assert!(bucket.create("k1", b"claim").await.unwrap().is_some());

        spool
            .context()
            .delete_key_value("lost_claims")
            .await
            .unwrap();
        let mut attempt = 0u32;
        wait_for(
            "a claim after the bucket was lost",
            Duration::from_secs(20),
            async || {
                attempt += 1;
                matches!(
                    bucket.create(&format!("k{attempt}-again"), b"claim").await,
                    Ok(Some(_))
                )
            },
        )
        .await;
        assert!(spool.context().get_key_value("lost_claims").await.is_ok());
        assert_eq!(bucket.read("k1").await.unwrap(), None, "the lost entry");
        assert!(bucket.create("k1", b"claim").await.unwrap().is_some());
        crate::Spool::close(&*spool).await.unwrap();
    }
}
