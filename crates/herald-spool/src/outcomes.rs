//! The outcome store: final outcomes of notifications kept for a retention period, and the answers of idempotent
//! requests, in a fjall keyspace `outcomes/` inside the spool directory (next to the spool's own `fjall/`).
//!
//! It stores opaque values: herald encodes them. Outcomes are keyed by a 16-byte id key whose first 8 bytes name
//! the accepting process (its "run") and whose last 8 bytes increase within it; an expiry index (finish time, key)
//! lets [`OutcomeStore::prune`] delete what is older than the retention, or the oldest beyond a bound, in finish
//! order. Per run it remembers the greatest key pruned, so that a lookup can say "expired" rather than "unknown".
//! Outcome writes are buffered (they reach the operating system, which keeps them across a crash of the process);
//! idempotency answers can be written synced.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use fjall::{Config, Keyspace, PartitionCreateOptions, PartitionHandle, PersistMode};

use crate::error::SpoolError;
use crate::fjall_engine::error;

/// The keyspace directory inside the spool directory.
pub const OUTCOMES_DIR: &str = "outcomes";

/// Events of a webhook queue stored as one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookChunk {
    /// The number of its first event; the others follow without gaps.
    pub first_seq: u64,
    pub events: Vec<Vec<u8>>,
}

/// A webhook queue as stored (see [`OutcomeStore::hook_queues`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookQueue {
    pub name: String,
    pub head: u64,
    /// (first number, events) of each chunk, oldest first.
    pub chunks: Vec<(u64, u64)>,
}

/// A stored broadcast: its key and herald's encoding of it.
pub type StoredBroadcast = (Vec<u8>, Vec<u8>);

/// An outcome's key: run (8 bytes), then a number increasing within the run (8 bytes).
pub type OutcomeKey = [u8; 16];

/// Final outcomes and idempotency answers, durable across restarts.
pub struct OutcomeStore {
    keyspace: Keyspace,
    outcomes: PartitionHandle,
    /// (finish ms BE, first key) -> the keys of outcomes finished in that second (16 bytes each; empty: the key
    /// in the index key).
    expiry: PartitionHandle,
    /// run (8 bytes) -> greatest pruned key suffix (8 bytes BE).
    pruned: PartitionHandle,
    /// idempotency key -> (expires ms BE, value).
    idempotency: PartitionHandle,
    /// Webhook queues: (queue name, 0, first sequence BE) -> a chunk of events ([`ChunkBuilder`]).
    webhook: PartitionHandle,
    /// Webhook queue name -> the first sequence number not yet done with (BE).
    webhook_heads: PartitionHandle,
    /// Broadcasts accepted and not finished: id -> encoded broadcast (herald's encoding).
    broadcasts: PartitionHandle,
    /// run -> greatest pruned suffix, cached.
    watermarks: Mutex<HashMap<[u8; 8], u64>>,
    count: AtomicU64,
}

/// What [`OutcomeStore::lookup`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Found(Vec<u8>),
    /// Not kept any more: pruned after the retention or beyond the bound.
    Expired,
    /// Never stored (or not yet).
    Unknown,
}

impl OutcomeStore {
    /// Opens (or creates) the store in `spool_dir/outcomes`.
    pub fn open(spool_dir: &Path) -> Result<OutcomeStore, SpoolError> {
        const CTX: &str = "opening the outcome store";
        let keyspace = Config::new(spool_dir.join(OUTCOMES_DIR))
            .cache_size(8 << 20)
            .open()
            .map_err(|e| error(CTX, e))?;
        let part = |name: &str| {
            keyspace
                .open_partition(name, PartitionCreateOptions::default())
                .map_err(|e| error(CTX, e))
        };
        let outcomes = part("outcomes")?;
        let expiry = part("expiry")?;
        let pruned = part("pruned")?;
        let idempotency = part("idempotency")?;
        // The webhook queue's chunks are deleted once the receiver has them, mostly before a flush: compressing
        // them would cost CPU for data that rarely reaches a segment (the option applies to a new store only).
        let webhook = keyspace
            .open_partition(
                "webhook",
                PartitionCreateOptions::default().compression(fjall::CompressionType::None),
            )
            .map_err(|e| error(CTX, e))?;
        let webhook_heads = part("webhook_heads")?;
        let broadcasts = part("broadcasts")?;
        let mut watermarks = HashMap::new();
        for kv in pruned.iter() {
            let (k, v) = kv.map_err(|e| error(CTX, e))?;
            if let (Ok(run), Ok(mark)) = (<[u8; 8]>::try_from(&*k), <[u8; 8]>::try_from(&*v)) {
                watermarks.insert(run, u64::from_be_bytes(mark));
            }
        }
        let count = outcomes.approximate_len() as u64;
        Ok(OutcomeStore {
            keyspace,
            outcomes,
            expiry,
            pruned,
            idempotency,
            webhook,
            webhook_heads,
            broadcasts,
            watermarks: Mutex::new(watermarks),
            count: AtomicU64::new(count),
        })
    }

    /// Outcomes stored now, approximately (one stored twice, as after a crash and a second delivery, counts twice
    /// until the store is next opened).
    pub fn len(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Stores final outcomes `(key, finished ms, value)` in one buffered write.
    ///
    /// The expiry index gets one entry per finish second of the batch, not one per outcome: its key is the
    /// latest finish time of the group and the group's first key, its value the group's keys (16 bytes each, in
    /// the order given). An index entry with an empty value (written by earlier versions) stands for the one key
    /// in its own key.
    pub fn put<V: AsRef<[u8]>>(&self, entries: &[(OutcomeKey, u64, V)]) -> Result<(), SpoolError> {
        const CTX: &str = "writing outcomes";
        let mut batch = self.keyspace.batch().durability(Some(PersistMode::Buffer));
        let mut groups: Vec<(u64, OutcomeKey, Vec<u8>)> = Vec::new();
        for (key, finished_ms, value) in entries {
            batch.insert(&self.outcomes, key, value.as_ref());
            match groups
                .iter_mut()
                .find(|(at, _, _)| at / 1000 == finished_ms / 1000)
            {
                Some((at, _, keys)) => {
                    *at = (*at).max(*finished_ms);
                    keys.extend_from_slice(key);
                }
                None => groups.push((*finished_ms, *key, key.to_vec())),
            }
        }
        for (finished_ms, first, keys) in &groups {
            batch.insert(
                &self.expiry,
                expiry_key(*finished_ms, first),
                keys.as_slice(),
            );
        }
        batch.commit().map_err(|e| error(CTX, e))?;
        // A final outcome is stored once; counting without a read per entry keeps the write path cheap.
        self.count
            .fetch_add(entries.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The outcome stored under `key`.
    pub fn lookup(&self, key: &OutcomeKey) -> Result<Lookup, SpoolError> {
        if let Some(v) = self
            .outcomes
            .get(key)
            .map_err(|e| error("reading outcomes", e))?
        {
            return Ok(Lookup::Found(v.to_vec()));
        }
        let (run, suffix) = split(key);
        let marks = self.watermarks.lock().unwrap_or_else(|p| p.into_inner());
        Ok(match marks.get(&run) {
            Some(mark) if suffix <= *mark => Lookup::Expired,
            _ => Lookup::Unknown,
        })
    }

    /// Deletes outcomes finished before `cutoff_ms`, then the oldest while more than `max_entries` remain. Returns
    /// how many were deleted. Works in batches of at most 10,000 so that lookups go on meanwhile.
    pub fn prune(&self, cutoff_ms: u64, max_entries: u64) -> Result<u64, SpoolError> {
        const CTX: &str = "pruning outcomes";
        let mut total = 0;
        loop {
            let over = self.len().saturating_sub(max_entries) as usize;
            // Index entries to delete, the outcomes they name, and (at most one) index entry cut short by the bound.
            let mut index_doomed: Vec<Vec<u8>> = Vec::new();
            let mut doomed: Vec<OutcomeKey> = Vec::new();
            let mut rewrite: Option<(Vec<u8>, Vec<u8>)> = None;
            for kv in self.expiry.iter() {
                let (k, v) = kv.map_err(|e| error(CTX, e))?;
                if k.len() != 24 || doomed.len() >= 10_000 {
                    break;
                }
                let mut fin = [0u8; 8];
                fin.copy_from_slice(&k[..8]);
                let keys: Vec<OutcomeKey> = if v.is_empty() {
                    k[8..].try_into().into_iter().collect()
                } else {
                    v.chunks_exact(16)
                        .filter_map(|c| c.try_into().ok())
                        .collect()
                };
                let take = if u64::from_be_bytes(fin) < cutoff_ms {
                    keys.len()
                } else {
                    over.saturating_sub(doomed.len()).min(keys.len())
                };
                if take == 0 {
                    break;
                }
                doomed.extend_from_slice(&keys[..take]);
                if take == keys.len() {
                    index_doomed.push(k.to_vec());
                } else {
                    rewrite = Some((k.to_vec(), keys[take..].concat()));
                    break;
                }
            }
            if doomed.is_empty() {
                return Ok(total);
            }
            let mut batch = self.keyspace.batch().durability(Some(PersistMode::Buffer));
            let mut marks = self.watermarks.lock().unwrap_or_else(|p| p.into_inner());
            for ek in &index_doomed {
                batch.remove(&self.expiry, ek.as_slice());
            }
            if let Some((ek, rest)) = &rewrite {
                batch.insert(&self.expiry, ek.as_slice(), rest.as_slice());
            }
            for key in &doomed {
                batch.remove(&self.outcomes, key.as_slice());
                let (run, suffix) = split(key);
                let mark = marks.entry(run).or_insert(0);
                if suffix > *mark {
                    *mark = suffix;
                    batch.insert(&self.pruned, run, suffix.to_be_bytes());
                }
            }
            batch.commit().map_err(|e| error(CTX, e))?;
            drop(marks);
            let n = doomed.len() as u64;
            total += n;
            let _ = self
                .count
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |c| {
                    Some(c.saturating_sub(n))
                });
        }
    }

    /// The answer stored for idempotency key `key`, if it has not expired at `now_ms`.
    pub fn idempotent_get(&self, key: &[u8], now_ms: u64) -> Result<Option<Vec<u8>>, SpoolError> {
        let Some(v) = self
            .idempotency
            .get(key)
            .map_err(|e| error("reading idempotency keys", e))?
        else {
            return Ok(None);
        };
        if v.len() < 8 {
            return Ok(None);
        }
        let mut exp = [0u8; 8];
        exp.copy_from_slice(&v[..8]);
        if u64::from_be_bytes(exp) <= now_ms {
            return Ok(None);
        }
        Ok(Some(v[8..].to_vec()))
    }

    /// Stores the answer for idempotency key `key` until `expires_ms`; with `sync`, durable (fsync) on return.
    pub fn idempotent_put(
        &self,
        key: &[u8],
        expires_ms: u64,
        value: &[u8],
        sync: bool,
    ) -> Result<(), SpoolError> {
        const CTX: &str = "writing an idempotency key";
        let mut v = Vec::with_capacity(8 + value.len());
        v.extend_from_slice(&expires_ms.to_be_bytes());
        v.extend_from_slice(value);
        self.idempotency.insert(key, v).map_err(|e| error(CTX, e))?;
        if sync {
            self.keyspace
                .persist(PersistMode::SyncAll)
                .map_err(|e| error(CTX, e))?;
        }
        Ok(())
    }

    /// Deletes idempotency keys expired at `now_ms`; returns how many.
    pub fn prune_idempotency(&self, now_ms: u64) -> Result<u64, SpoolError> {
        const CTX: &str = "pruning idempotency keys";
        let mut doomed = Vec::new();
        for kv in self.idempotency.iter() {
            let (k, v) = kv.map_err(|e| error(CTX, e))?;
            let expired = v.len() < 8 || {
                let mut exp = [0u8; 8];
                exp.copy_from_slice(&v[..8]);
                u64::from_be_bytes(exp) <= now_ms
            };
            if expired {
                doomed.push(k.to_vec());
            }
        }
        for k in &doomed {
            self.idempotency
                .remove(k.as_slice())
                .map_err(|e| error(CTX, e))?;
        }
        Ok(doomed.len() as u64)
    }

    /// Appends a chunk of events (built with [`ChunkBuilder`]) whose first is numbered `first_seq` to the webhook
    /// queue `queue`: one buffered write, one entry (a queue's events are written, read and deleted by the chunk,
    /// not one by one).
    pub fn hook_append(&self, queue: &str, first_seq: u64, chunk: &[u8]) -> Result<(), SpoolError> {
        let mut batch = self.keyspace.batch().durability(Some(PersistMode::Buffer));
        batch.insert(&self.webhook, hook_key(queue, first_seq), chunk);
        batch
            .commit()
            .map_err(|e| error("writing webhook outcomes", e))
    }

    /// The chunks of webhook queue `queue` from the one numbered `from_first_seq` on, until they hold `limit`
    /// events or more.
    ///
    /// Deleted chunks stay in the tree as tombstones until compaction: a reader that always started at the front
    /// would step over every chunk delivered so far, so the caller passes the first chunk that may still be there.
    pub fn hook_chunks(
        &self,
        queue: &str,
        from_first_seq: u64,
        limit: usize,
    ) -> Result<Vec<HookChunk>, SpoolError> {
        const CTX: &str = "reading webhook outcomes";
        let range = hook_key(queue, from_first_seq)..=hook_key(queue, u64::MAX);
        let mut out = Vec::new();
        let mut events = 0;
        for kv in self.webhook.range(range) {
            if events >= limit {
                break;
            }
            let (k, v) = kv.map_err(|e| error(CTX, e))?;
            let (Some(first_seq), Some(chunk)) = (hook_seq(&k), decode_chunk(&v)) else {
                // Its events cannot be sent; the ones after it still are.
                tracing::error!("{}: skipped", corrupt_chunk(queue));
                continue;
            };
            events += chunk.len();
            out.push(HookChunk {
                first_seq,
                events: chunk,
            });
        }
        Ok(out)
    }

    /// Records that every event of webhook queue `queue` numbered below `head` is done with (delivered or
    /// dropped) and deletes the chunks `done` (by their first numbers), in one buffered write.
    pub fn hook_advance(&self, queue: &str, head: u64, done: &[u64]) -> Result<(), SpoolError> {
        let mut batch = self.keyspace.batch().durability(Some(PersistMode::Buffer));
        for first_seq in done {
            batch.remove(&self.webhook, hook_key(queue, *first_seq));
        }
        batch.insert(&self.webhook_heads, queue.as_bytes(), head.to_be_bytes());
        batch
            .commit()
            .map_err(|e| error("deleting webhook outcomes", e))
    }

    /// Every webhook queue with events or a recorded number: its name, the number recorded by
    /// [`OutcomeStore::hook_advance`] (events below it are done; 0 when none was) and its chunks as (first number,
    /// events), oldest first.
    pub fn hook_queues(&self) -> Result<Vec<HookQueue>, SpoolError> {
        const CTX: &str = "reading webhook outcomes";
        let mut out: Vec<HookQueue> = Vec::new();
        for kv in self.webhook.iter() {
            let (k, v) = kv.map_err(|e| error(CTX, e))?;
            let Some(name_len) = k.len().checked_sub(9) else {
                continue;
            };
            let name = String::from_utf8_lossy(&k[..name_len]).into_owned();
            let (Some(first_seq), Some(events)) = (hook_seq(&k), chunk_len(&v)) else {
                tracing::error!("{}: skipped", corrupt_chunk(&name));
                continue;
            };
            match out.last_mut() {
                Some(last) if last.name == name => last.chunks.push((first_seq, events)),
                _ => out.push(HookQueue {
                    name,
                    head: 0,
                    chunks: vec![(first_seq, events)],
                }),
            }
        }
        // A queue whose chunks are all done keeps its number, so that its next events are numbered after it.
        for kv in self.webhook_heads.iter() {
            let (k, v) = kv.map_err(|e| error(CTX, e))?;
            let Ok(head) = <[u8; 8]>::try_from(&*v) else {
                continue;
            };
            let name = String::from_utf8_lossy(&k);
            match out.iter_mut().find(|q| q.name == name) {
                Some(q) => q.head = u64::from_be_bytes(head),
                None => out.push(HookQueue {
                    name: name.into_owned(),
                    head: u64::from_be_bytes(head),
                    chunks: Vec::new(),
                }),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Stores broadcasts under their keys and makes them durable (synced) before returning: a broadcast is
    /// acknowledged to its sender only after this.
    pub fn broadcast_put(&self, entries: &[(Vec<u8>, Vec<u8>)]) -> Result<(), SpoolError> {
        self.broadcast_apply(entries, &[])
    }

    /// Stores broadcasts and deletes finished ones in one write: synced when anything is stored (the stores are
    /// acknowledged after it), buffered when there are only deletions.
    pub fn broadcast_apply(
        &self,
        entries: &[(Vec<u8>, Vec<u8>)],
        finished: &[Vec<u8>],
    ) -> Result<(), SpoolError> {
        const CTX: &str = "storing broadcasts";
        let mode = if entries.is_empty() {
            PersistMode::Buffer
        } else {
            PersistMode::SyncAll
        };
        let mut batch = self.keyspace.batch().durability(Some(mode));
        for (k, v) in entries {
            batch.insert(&self.broadcasts, k.as_slice(), v.as_slice());
        }
        for k in finished {
            batch.remove(&self.broadcasts, k.as_slice());
        }
        batch.commit().map_err(|e| error(CTX, e))
    }

    /// Replaces a stored broadcast (a retry's new state), buffered like a reschedule of the spool.
    pub fn broadcast_update(&self, key: &[u8], value: &[u8]) -> Result<(), SpoolError> {
        let mut batch = self.keyspace.batch().durability(Some(PersistMode::Buffer));
        batch.insert(&self.broadcasts, key, value);
        batch.commit().map_err(|e| error("updating a broadcast", e))
    }

    /// Deletes a finished broadcast.
    pub fn broadcast_remove(&self, key: &[u8]) -> Result<(), SpoolError> {
        let mut batch = self.keyspace.batch().durability(Some(PersistMode::Buffer));
        batch.remove(&self.broadcasts, key);
        batch.commit().map_err(|e| error("deleting a broadcast", e))
    }

    /// Every stored broadcast, in key order.
    pub fn broadcast_all(&self) -> Result<Vec<StoredBroadcast>, SpoolError> {
        let mut out = Vec::new();
        for kv in self.broadcasts.iter() {
            let (k, v) = kv.map_err(|e| error("reading broadcasts", e))?;
            out.push((k.to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    /// Makes everything written so far durable.
    pub fn sync(&self) -> Result<(), SpoolError> {
        self.keyspace
            .persist(PersistMode::SyncAll)
            .map_err(|e| error("syncing the outcome store", e))
    }
}

fn expiry_key(finished_ms: u64, key: &OutcomeKey) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&finished_ms.to_be_bytes());
    k[8..].copy_from_slice(key);
    k
}

/// The sequence number of a webhook event's key (its last 8 bytes).
fn hook_seq(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8).map(|at| &key[at..])?;
    <[u8; 8]>::try_from(tail).ok().map(u64::from_be_bytes)
}

fn hook_key(queue: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(queue.len() + 9);
    k.extend_from_slice(queue.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The first byte of a chunk of several events; a stored value that starts otherwise is one event, as earlier
/// versions stored them (a JSON object, starting with `{`).
const CHUNK_TAG: u8 = 1;

/// Builds a chunk of webhook events as the store keeps it: [`CHUNK_TAG`], then each event as its length (u32 LE)
/// and its bytes. Events are written in place, so that a chunk costs one buffer, not one per event.
#[derive(Debug, Clone)]
pub struct ChunkBuilder {
    buf: Vec<u8>,
    /// Where each event's bytes start and end in `buf`.
    spans: Vec<(u32, u32)>,
}

impl Default for ChunkBuilder {
    fn default() -> Self {
        ChunkBuilder::with_capacity(0)
    }
}

impl ChunkBuilder {
    pub fn with_capacity(bytes: usize) -> ChunkBuilder {
        let mut buf = Vec::with_capacity(bytes.max(1));
        buf.push(CHUNK_TAG);
        ChunkBuilder {
            buf,
            spans: Vec::new(),
        }
    }

    /// Appends one event, written by `write` at the end of the buffer it is given.
    pub fn push_with(&mut self, write: impl FnOnce(&mut Vec<u8>)) {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        let start = self.buf.len();
        write(&mut self.buf);
        let len = self.buf.len() - start;
        self.buf[at..start].copy_from_slice(&(len as u32).to_le_bytes());
        self.spans.push((start as u32, self.buf.len() as u32));
    }

    /// Events in the chunk.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// The bytes to store.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    /// The stored form and where each event lies in it.
    pub fn into_parts(self) -> (Vec<u8>, Vec<(u32, u32)>) {
        (self.buf, self.spans)
    }
}

#[cfg(test)]
fn encode_chunk(events: &[impl AsRef<[u8]>]) -> Vec<u8> {
    let mut chunk = ChunkBuilder::default();
    for e in events {
        chunk.push_with(|buf| buf.extend_from_slice(e.as_ref()));
    }
    chunk.into_parts().0
}

/// The events of a stored chunk; `None` when it is cut short.
fn decode_chunk(value: &[u8]) -> Option<Vec<Vec<u8>>> {
    let Some((&CHUNK_TAG, mut rest)) = value.split_first() else {
        return Some(vec![value.to_vec()]);
    };
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        out.push(tail.get(..len)?.to_vec());
        rest = &tail[len..];
    }
    Some(out)
}

/// How many events a stored chunk holds, without copying them.
fn chunk_len(value: &[u8]) -> Option<u64> {
    let Some((&CHUNK_TAG, mut rest)) = value.split_first() else {
        return Some(1);
    };
    let mut n = 0;
    while !rest.is_empty() {
        let (len, tail) = rest.split_first_chunk::<4>()?;
        rest = tail.get(u32::from_le_bytes(*len) as usize..)?;
        n += 1;
    }
    Some(n)
}

fn corrupt_chunk(queue: &str) -> SpoolError {
    SpoolError::Storage {
        context: "reading webhook outcomes",
        detail: format!("a stored chunk of webhook queue {queue} is cut short"),
        temporary: false,
    }
}

fn split(key: &OutcomeKey) -> ([u8; 8], u64) {
    let mut run = [0u8; 8];
    run.copy_from_slice(&key[..8]);
    let mut suffix = [0u8; 8];
    suffix.copy_from_slice(&key[8..]);
    (run, u64::from_be_bytes(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(run: u8, n: u64) -> OutcomeKey {
        let mut k = [0u8; 16];
        k[0] = run;
        k[8..].copy_from_slice(&n.to_be_bytes());
        k
    }

    #[test]
    fn outcomes_survive_reopen_and_prune_says_expired() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = OutcomeStore::open(dir.path()).unwrap();
            store
                .put(&[
                    (key(1, 1), 1_000, b"one".to_vec()),
                    (key(1, 2), 5_000, b"two".to_vec()),
                ])
                .unwrap();
            assert_eq!(store.len(), 2);
            store.sync().unwrap();
        }
        let store = OutcomeStore::open(dir.path()).unwrap();
        assert_eq!(
            store.lookup(&key(1, 1)).unwrap(),
            Lookup::Found(b"one".to_vec())
        );
        assert_eq!(store.prune(2_000, u64::MAX).unwrap(), 1);
        assert_eq!(store.lookup(&key(1, 1)).unwrap(), Lookup::Expired);
        assert_eq!(
            store.lookup(&key(1, 2)).unwrap(),
            Lookup::Found(b"two".to_vec())
        );
        assert_eq!(store.lookup(&key(1, 3)).unwrap(), Lookup::Unknown);
        assert_eq!(store.lookup(&key(2, 1)).unwrap(), Lookup::Unknown);
        drop(store);
        let store = OutcomeStore::open(dir.path()).unwrap();
        assert_eq!(store.lookup(&key(1, 1)).unwrap(), Lookup::Expired);
    }

    #[test]
    fn the_bound_drops_the_oldest() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        let entries: Vec<_> = (1..=10)
            .map(|n| (key(1, n), n * 10, vec![n as u8]))
            .collect();
        store.put(&entries).unwrap();
        assert_eq!(store.prune(0, 4).unwrap(), 6);
        assert_eq!(store.len(), 4);
        assert_eq!(store.lookup(&key(1, 6)).unwrap(), Lookup::Expired);
        assert!(matches!(
            store.lookup(&key(1, 7)).unwrap(),
            Lookup::Found(_)
        ));
    }

    #[test]
    fn a_group_cut_by_the_bound_keeps_the_rest_and_old_single_key_index_entries_still_prune() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        // As an earlier version wrote it: one index entry per outcome, the key inside the index key.
        store.outcomes.insert(key(2, 1), b"old").unwrap();
        store
            .expiry
            .insert(expiry_key(500, &key(2, 1)), [])
            .unwrap();
        let entries: Vec<_> = (1..=6)
            .map(|n| (key(3, n), 1_000 + n, vec![n as u8]))
            .collect();
        store.put(&entries).unwrap();
        store.put(&[(key(3, 7), 9_000, vec![7])]).unwrap();
        drop(store);
        let store = OutcomeStore::open(dir.path()).unwrap();
        assert_eq!(store.len(), 8);
        // The bound first takes the old entry, then part of the second-1 group.
        assert_eq!(store.prune(0, 5).unwrap(), 3);
        assert_eq!(store.lookup(&key(2, 1)).unwrap(), Lookup::Expired);
        assert_eq!(store.lookup(&key(3, 2)).unwrap(), Lookup::Expired);
        assert!(matches!(
            store.lookup(&key(3, 3)).unwrap(),
            Lookup::Found(_)
        ));
        // The rest of that group goes with the retention, the later one stays.
        assert_eq!(store.prune(2_000, u64::MAX).unwrap(), 4);
        assert_eq!(store.lookup(&key(3, 6)).unwrap(), Lookup::Expired);
        assert!(matches!(
            store.lookup(&key(3, 7)).unwrap(),
            Lookup::Found(_)
        ));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn webhook_chunks_keep_order_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = OutcomeStore::open(dir.path()).unwrap();
            store
                .hook_append("a.example", 1, &encode_chunk(&[b"1", b"2"]))
                .unwrap();
            store
                .hook_append("a.example", 3, &encode_chunk(&[b"3"]))
                .unwrap();
            store
                .hook_append("b.example", 1, &encode_chunk(&[b"x"]))
                .unwrap();
            store.sync().unwrap();
        }
        let store = OutcomeStore::open(dir.path()).unwrap();
        let queue = |name: &str, head, chunks: &[(u64, u64)]| HookQueue {
            name: name.to_owned(),
            head,
            chunks: chunks.to_vec(),
        };
        assert_eq!(
            store.hook_queues().unwrap(),
            vec![
                queue("a.example", 0, &[(1, 2), (3, 1)]),
                queue("b.example", 0, &[(1, 1)])
            ]
        );
        let a = store.hook_chunks("a.example", 0, 10).unwrap();
        assert_eq!(
            a,
            vec![
                HookChunk {
                    first_seq: 1,
                    events: vec![b"1".to_vec(), b"2".to_vec()]
                },
                HookChunk {
                    first_seq: 3,
                    events: vec![b"3".to_vec()]
                }
            ]
        );
        // Reading stops at the chunk that reaches the limit; from a chunk on, what is before it is not read.
        assert_eq!(store.hook_chunks("a.example", 0, 2).unwrap().len(), 1);
        assert_eq!(store.hook_chunks("a.example", 3, 10).unwrap(), a[1..]);
        // Events 1 and 2 done: their chunk goes, the number stays.
        store.hook_advance("a.example", 3, &[1]).unwrap();
        assert_eq!(store.hook_chunks("a.example", 0, 10).unwrap(), a[1..]);
        assert_eq!(
            store.hook_queues().unwrap()[0],
            queue("a.example", 3, &[(3, 1)])
        );
        assert_eq!(store.hook_chunks("b.example", 0, 10).unwrap().len(), 1);
        // A queue with every chunk done is still listed, with its number.
        store.hook_advance("a.example", 4, &[3]).unwrap();
        assert_eq!(store.hook_queues().unwrap()[0], queue("a.example", 4, &[]));
    }

    #[test]
    fn a_webhook_event_stored_alone_by_an_earlier_version_reads_as_a_chunk_of_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        store
            .webhook
            .insert(hook_key("a.example", 7), br#"{"id":"x"}"#)
            .unwrap();
        assert_eq!(
            store.hook_queues().unwrap(),
            vec![HookQueue {
                name: "a.example".into(),
                head: 0,
                chunks: vec![(7, 1)]
            }]
        );
        assert_eq!(
            store.hook_chunks("a.example", 0, 10).unwrap()[0].events,
            vec![br#"{"id":"x"}"#.to_vec()]
        );
    }

    #[test]
    fn a_chunk_built_in_place_says_where_each_event_lies() {
        let mut chunk = ChunkBuilder::with_capacity(64);
        chunk.push_with(|b| b.extend_from_slice(b"{\"id\":1}"));
        chunk.push_with(|_| {});
        chunk.push_with(|b| b.extend_from_slice(b"xyz"));
        assert_eq!(chunk.len(), 3);
        let bytes = chunk.as_bytes().to_vec();
        assert_eq!(
            decode_chunk(&bytes),
            Some(vec![b"{\"id\":1}".to_vec(), vec![], b"xyz".to_vec()])
        );
        let (buf, spans) = chunk.into_parts();
        let events: Vec<&[u8]> = spans
            .iter()
            .map(|&(s, e)| &buf[s as usize..e as usize])
            .collect();
        assert_eq!(events, vec![&b"{\"id\":1}"[..], b"", b"xyz"]);
        assert!(ChunkBuilder::default().is_empty());
    }

    #[test]
    fn a_cut_chunk_is_skipped_and_named() {
        assert_eq!(
            decode_chunk(&encode_chunk(&[&b"ab"[..], b""])),
            Some(vec![b"ab".to_vec(), vec![]])
        );
        assert_eq!(chunk_len(&encode_chunk(&[&b"ab"[..], b"c"])), Some(2));
        let mut cut = encode_chunk(&[b"abc"]);
        cut.pop();
        assert_eq!(decode_chunk(&cut), None);
        assert_eq!(chunk_len(&cut), None);
        assert!(corrupt_chunk("a.example").to_string().contains("a.example"));
        // Stored, it is passed over: the queue goes on with the chunks after it.
        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        store.webhook.insert(hook_key("a.example", 1), cut).unwrap();
        store
            .hook_append("a.example", 2, &encode_chunk(&[b"ok"]))
            .unwrap();
        assert_eq!(store.hook_queues().unwrap()[0].chunks, vec![(2, 1)]);
        assert_eq!(
            store.hook_chunks("a.example", 0, 10).unwrap(),
            vec![HookChunk {
                first_seq: 2,
                events: vec![b"ok".to_vec()]
            }]
        );
    }

    #[test]
    fn idempotency_answers_expire() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutcomeStore::open(dir.path()).unwrap();
        store.idempotent_put(b"k", 100, b"answer", true).unwrap();
        assert_eq!(
            store.idempotent_get(b"k", 50).unwrap(),
            Some(b"answer".to_vec())
        );
        assert_eq!(store.idempotent_get(b"k", 100).unwrap(), None);
        assert_eq!(store.prune_idempotency(100).unwrap(), 1);
        assert_eq!(store.idempotent_get(b"k", 50).unwrap(), None);
    }
}
