//! `Idempotency-Key` on the routes that accept work (`POST /api/v1/push`, `POST /v1.0/inject`,
//! `POST /api/v1/broadcast`): the same key with the same body within [`TTL`] answers the first request's answer again and queues nothing; the same key with another
//! body is a `409` naming the key; the same key while its first request is still running is a `409` too.
//!
//! Keys are scoped by route and by the API key the request was accepted with ([`ApiCaller`]): two callers with
//! their own API keys never see each other's keys (a listener without API keys has one scope per route). Only accepted requests (2xx answers) are remembered: a refused one may be retried as
//! is. The answer is written after the notifications are durable and before it is sent, so a key the client saw
//! acknowledged still deduplicates after a crash. Where keys live depends on the spool:
//! - the embedded spool: this node's [`OutcomeStore`] (synced writes), with the requests still running in memory;
//! - the JetStream spool: a key-value bucket every node shares (`<stream>_idempotency`, a [`ClaimBucket`]), so that a
//!   retry through another node finds the first request. A request first *claims* its key there (created only if
//!   absent); the claim becomes the answer when the request is accepted, and is removed when it is refused (a
//!   removal, or a replacement by ids as below, that NATS does not take at once is tried again in the background
//!   until it is taken or the claim reaches [`MAX_CLAIM_AGE`]; a retry meanwhile is told the request still runs,
//!   rather than given new ids for what NATS may have taken). A request refused because NATS did not answer its
//!   claim's write (which NATS may still store, on a link that delays) leaves that write to be looked for in the
//!   background until [`MAX_CLAIM_AGE`]: a claim it stored is removed, at its revision and only if it carries the
//!   request's number, so that another request's later claim is never touched (a retry on the same node takes it
//!   over at once). A node claims only once its heartbeat is written, so a claim whose node has no heartbeat any
//!   more (removed by the NATS server after the node's silence: no node's clock is involved) is taken over by the
//!   next request, as is one older than [`MAX_CLAIM_AGE`]. Only a node starting up waits for its first heartbeat;
//!   afterwards one that is not connected to NATS, or whose heartbeat NATS does not take, refuses a request with a
//!   key at once. NATS may take part of a request's notifications before it fails: such a request publishes them
//!   under message ids its retries repeat, and once refused after handing them to NATS it replaces its claim with
//!   the ids it assigned ([`crate::spool::retry_ids`]); a retry with the key within the
//!   stream's duplicate window (less a quarter, for the clocks) gives the notifications it repeats the same ids,
//!   and the stream drops the copies of those it took. A node may also vanish between its publishes and its
//!   answer, never to write those ids: so before each batch goes to the spool, the request replaces its claim by
//!   one carrying the ids it assigned so far (`SharedRecord::Publishing`, written by a `ClaimRecorder`; a
//!   write NATS does not take refuses the batch), and the request that takes such a claim over reuses them as it
//!   would a refused request's.
//!
//! Once claimed, a request runs to its end on a task of its own: a client that hangs up mid-way leaves neither its
//! key claimed nor its accepted notifications unremembered.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use herald_spool::claims::nonce;
use herald_spool::spool::Spool;
use herald_spool::{ClaimBucket, ClaimEntry, ClaimError, JetStreamSpool, OutcomeStore};
use sha2::{Digest, Sha256};

use super::auth::ApiCaller;
use super::error::{ApiError, json_response};
use crate::inbound::accept::BoxFuture;
use crate::queue::message::MessageId;
use crate::spool::retry_ids::{self, RecordError, RecordIds, RequestIds};

/// How long an accepted key is remembered.
pub const TTL: Duration = Duration::from_secs(24 * 3600);
/// The header.
pub const HEADER: &str = "idempotency-key";
/// Longest key accepted.
pub const MAX_KEY_LEN: usize = 255;
/// A shared claim older than this is taken for abandoned even if its node still lives: no request runs this long.
pub const MAX_CLAIM_AGE: Duration = Duration::from_secs(600);
/// How long an answer the shared bucket did not take at once is written again in the background.
pub const REMEMBER_FOR: Duration = Duration::from_secs(120);
/// The first pause before a refused request's claim the shared bucket did not release at once is released again
/// in the background ([`Idempotency::release_later`]); it doubles up to [`RELEASE_MAX_PAUSE`].
const RELEASE_FIRST_PAUSE: Duration = Duration::from_millis(200);
/// The longest pause between two attempts at releasing a refused request's claim.
const RELEASE_MAX_PAUSE: Duration = Duration::from_secs(5);

/// A shared bucket entry that is an answer: digest, status, body follow.
const ANSWERED: u8 = b'A';
/// A shared bucket entry that is a claim: digest, claim time (u64 ms), node name follow.
const CLAIMED: u8 = b'C';
/// A shared bucket entry left by a request refused after it handed notifications to NATS: how long after the
/// entry was stored its ids may be reused (u64 ms), then (fingerprint u64, id u128) pairs follow.
const REFUSED: u8 = b'R';
/// A shared bucket entry that is the claim of a request handing notifications to NATS, with the ids it assigned:
/// digest, nonce (u64), how long after the entry was stored its ids may be reused (u64 ms), the node name's
/// length (u16) and the name, then (fingerprint u64, id u128) pairs follow. Herald before this record reads it
/// as unknown (docs/scale-out.md, rolling upgrades).
const PUBLISHING: u8 = b'P';
/// Of the stream's duplicate window, the part a retry may reuse a refused request's ids in: the rest is room for
/// the time between a claim and its publishes and for clocks that differ (the age of a refused request's entry is
/// this node's clock against the NATS server's).
const REUSE_SHARE: (u32, u32) = (3, 4);

/// The idempotency keys of every REST listener of a server.
pub struct Idempotency {
    keys: Keys,
}

enum Keys {
    /// This node's outcome store, and the keys of the requests running here.
    Local {
        store: Arc<OutcomeStore>,
        running: Mutex<HashSet<Vec<u8>>>,
    },
    /// The bucket the nodes of a JetStream spool share; the spool tells which nodes live.
    Shared {
        bucket: Box<ClaimBucket>,
        spool: Arc<JetStreamSpool>,
        /// Set once this node's heartbeat was first written: until then a request waits for it (the node starts
        /// up), after that one finding it not written is refused at once ([`heartbeat_gate`]).
        first_beat: Arc<AtomicBool>,
        /// The claim writes of requests answered without their claim whose outcome NATS did not say, by bucket
        /// key: looked for in the background and removed should NATS have stored them ([`Idempotency::sweep`]).
        orphans: Mutex<HashMap<String, Orphans>>,
    },
}

/// The claim writes under one bucket key that NATS may still store although their requests were answered
/// without them (a create that timed out, its read back failing or finding nothing, and the request answered
/// `503`): such a claim would have every retry with the key answered `409` until [`MAX_CLAIM_AGE`], on any node,
/// since its node lives. One task per key looks for them ([`Idempotency::sweep`]).
struct Orphans {
    /// The key as the client sent it, for the log.
    key_text: String,
    writes: Vec<Unsettled>,
}

/// A claim write whose outcome NATS did not say, of a request answered without its claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unsettled {
    /// The number the request drew: its claim carries it.
    nonce: u64,
    /// The revision the write expected the entry at (`None`: absent, a create). NATS stores the write only while
    /// the entry is still there ([`may_land`]).
    expected: Option<u64>,
    /// Until when it is looked for: [`MAX_CLAIM_AGE`] after the write, when any node takes the claim over anyway.
    until: tokio::time::Instant,
}

/// What a request with a key does: answer at once (a replay), or run holding its claim.
enum Step {
    Answered(Response),
    Run(Claim),
}

/// A key held by a running request.
enum Claim {
    /// Released when dropped.
    Local(Running),
    /// The bucket entry, at the revision this request wrote.
    Shared(SharedClaim),
}

/// A claim in the shared bucket, at the revision this request wrote. Settled by the request (its answer stored,
/// or the claim released after a refusal: [`Release`]); dropped unsettled (the request panicked, or its runtime
/// stopped), it is released in the background the same way, so that a retry is not told for up to
/// [`MAX_CLAIM_AGE`] that the request still runs.
struct SharedClaim {
    owner: Arc<Idempotency>,
    /// The entry, shared with the request's record of its ids ([`ClaimRecorder`]), which moves its revision.
    held: Arc<HeldClaim>,
    settled: bool,
    /// The request's ids ([`crate::spool::retry_ids`]).
    ids: Arc<RequestIds>,
    /// When the claim was made (about: read back after the bucket took it).
    claimed_at: tokio::time::Instant,
}

impl SharedClaim {
    /// Settles the claim as refused: what releasing it takes.
    fn refused(&mut self) -> Release {
        self.settled = true;
        Release {
            key: self.held.key.clone(),
            revision: self.held.revision(),
            nonce: self.held.nonce,
            reread: self.held.unsettled.load(Ordering::SeqCst),
            ids: self.ids.clone(),
            reuse_until: self.held.reuse_until,
            until: self.claimed_at + MAX_CLAIM_AGE,
        }
    }
}

/// A claim in the shared bucket as its request holds it: where it is, the revision last written, and what a
/// rewrite of it carries.
#[derive(Debug)]
struct HeldClaim {
    key: String,
    revision: AtomicU64,
    digest: [u8; 32],
    node: String,
    /// The number the request drew: its claim carries it, so that it knows its own.
    nonce: u64,
    /// Until when a retry may reuse the request's ids.
    reuse_until: tokio::time::Instant,
    /// A record of the ids failed without NATS saying whether it stored it: the revision may be past
    /// `revision`, with this request's record ([`Release::attempt`] reads it back).
    unsettled: AtomicBool,
}

impl HeldClaim {
    fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }
}

/// Records a request's ids in its claim before each batch of it goes to the spool ([`RecordIds`]): the claim
/// becomes a [`SharedRecord::Publishing`], so that a request taking the key over, should this one's node vanish
/// before it answers, gives the notifications it repeats the same ids and the stream drops the copies.
struct ClaimRecorder {
    owner: Arc<Idempotency>,
    held: Arc<HeldClaim>,
    /// One record at a time: each names the revision the one before wrote.
    writing: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for ClaimRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimRecorder")
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl RecordIds for ClaimRecorder {
    fn record(&self, pairs: Vec<(u64, MessageId)>) -> BoxFuture<'_, Result<(), RecordError>> {
        Box::pin(self.write(pairs))
    }
}

impl ClaimRecorder {
    async fn write(&self, pairs: Vec<(u64, MessageId)>) -> Result<(), RecordError> {
        let Keys::Shared { bucket, .. } = &self.owner.keys else {
            return Ok(());
        };
        let _one_at_a_time = self.writing.lock().await;
        let held = &self.held;
        let left = held
            .reuse_until
            .saturating_duration_since(tokio::time::Instant::now());
        // Past the window no request taking the key over would reuse them: the round trip is spared.
        if left.is_zero() || pairs.is_empty() {
            return Ok(());
        }
        let record = SharedRecord::publishing(
            &held.digest,
            &held.node,
            held.nonce,
            left.as_millis() as u64,
            &pairs,
        );
        match bucket.replace(&held.key, held.revision(), &record).await {
            Ok(Some(revision)) => {
                held.revision.store(revision, Ordering::SeqCst);
                Ok(())
            }
            Ok(None) => Err(RecordError::TakenOver),
            Err(e) => {
                held.unsettled.store(true, Ordering::SeqCst);
                Err(RecordError::Unrecorded(e.to_string()))
            }
        }
    }
}

impl Drop for SharedClaim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        // Without a runtime (it is shutting down) the claim stays, and is taken over once its node is gone.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let release = self.refused();
        runtime.spawn(self.owner.clone().release_shared(release));
    }
}

/// The release of a refused request's claim in the shared bucket: replaced by the ids a retry must reuse
/// ([`SharedRecord::Refused`]) while a retry may still reuse them, else removed.
struct Release {
    key: String,
    revision: u64,
    /// The request's number, to know its own claim when the entry is read back.
    nonce: u64,
    /// A record of the request's ids may have been stored at a later revision than `revision`, its answer lost:
    /// the entry is read back before the release, and a claim of the request's own is released at its revision.
    reread: bool,
    ids: Arc<RequestIds>,
    reuse_until: tokio::time::Instant,
    /// When the claim may be taken over whatever its node ([`MAX_CLAIM_AGE`] after it was made): the release is
    /// tried until then.
    until: tokio::time::Instant,
}

impl Release {
    /// One attempt; `Ok` once done, or once the entry moved past the claim (whatever wrote it: this release, whose
    /// answer was lost, or a request that took the claim over).
    async fn attempt(&mut self, bucket: &ClaimBucket) -> Result<(), ClaimError> {
        if self.reread {
            let entry = bucket.read(&self.key).await?;
            if let Found::Own { revision } = found(entry.as_ref(), self.nonce) {
                self.revision = revision;
            }
            self.reread = false;
        }
        let left = self
            .reuse_until
            .saturating_duration_since(tokio::time::Instant::now());
        match self.ids.to_reuse().filter(|_| !left.is_zero()) {
            Some(pairs) => {
                let record = SharedRecord::refused(left.as_millis() as u64, &pairs);
                bucket
                    .replace(&self.key, self.revision, &record)
                    .await
                    .map(drop)
            }
            None => bucket.remove(&self.key, self.revision).await,
        }
    }
}

/// Releases a running key when its request ends, however it ends.
struct Running {
    owner: Arc<Idempotency>,
    key: Vec<u8>,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Keys::Local { running, .. } = &self.owner.keys {
            running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&self.key);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn still_running(key: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!(
            "Idempotency-Key {key:?}: a request with this key is still being processed; retry once it has been answered"
        ),
    )
}

/// Where a request's keys live: its route, and for a request accepted with an API key, that key's fingerprint (so
/// that callers with their own keys cannot meet). Without an API key, the route alone (as before keys were scoped
/// by caller, so that keys remembered then still answer).
fn scope(route: &str, caller: Option<&ApiCaller>) -> String {
    match caller {
        Some(caller) => format!("{route}\0key:{}", caller.fingerprint()),
        None => route.to_owned(),
    }
}

/// The shared bucket's key of `route` and `key`: a digest, since a bucket key takes only a few characters.
fn shared_key(route: &str, key: &str) -> String {
    let mut h = Sha256::new();
    h.update(route.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A shared bucket entry, decoded.
#[derive(Debug, PartialEq, Eq)]
enum SharedRecord<'a> {
    /// The first answer, in the local store's layout (digest, status, body).
    Answered(&'a [u8]),
    /// A running request's claim: the node running it, and a number drawn by that request (so that it knows its
    /// own claim when it reads it back after a write whose answer was lost).
    Claimed { node: &'a str, nonce: u64 },
    /// A request refused after it handed notifications to NATS: for `reuse_ms` after the entry was stored, a
    /// retry gives the notifications it repeats the ids of `pairs` (fingerprint, id; 24 bytes each).
    Refused { reuse_ms: u64, pairs: &'a [u8] },
    /// A running request's claim, as [`SharedRecord::Claimed`], once it hands notifications to NATS: a request
    /// taking it over reuses `ids` as a retry reuses those of [`SharedRecord::Refused`].
    Publishing {
        node: &'a str,
        nonce: u64,
        ids: Reusable<'a>,
    },
}

/// Ids a request left for the next one with its key: for `reuse_ms` after the entry was stored, the notifications
/// the next one repeats take the ids of `pairs` (fingerprint, id; 24 bytes each).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Reusable<'a> {
    reuse_ms: u64,
    pairs: &'a [u8],
}

/// Bytes of a [`PUBLISHING`] record before the node's name: digest, nonce, reuse time, name length.
const PUBLISHING_HEAD: usize = 32 + 8 + 8 + 2;

impl<'a> SharedRecord<'a> {
    fn claim(digest: &[u8; 32], node: &str, nonce: u64) -> Vec<u8> {
        let mut v = Vec::with_capacity(41 + node.len());
        v.push(CLAIMED);
        v.extend_from_slice(digest);
        v.extend_from_slice(&nonce.to_be_bytes());
        v.extend_from_slice(node.as_bytes());
        v
    }

    fn refused(reuse_ms: u64, pairs: &[(u64, MessageId)]) -> Vec<u8> {
        let mut v = Vec::with_capacity(9 + 24 * pairs.len());
        v.push(REFUSED);
        v.extend_from_slice(&reuse_ms.to_be_bytes());
        put_pairs(&mut v, pairs);
        v
    }

    /// A claim with the ids its request assigned ([`SharedRecord::Publishing`]). A node name longer than a u16
    /// counts is cut (node names are short: a host name and a few digits).
    fn publishing(
        digest: &[u8; 32],
        node: &str,
        nonce: u64,
        reuse_ms: u64,
        pairs: &[(u64, MessageId)],
    ) -> Vec<u8> {
        let mut cut = node.len().min(usize::from(u16::MAX));
        while !node.is_char_boundary(cut) {
            cut -= 1;
        }
        let node = &node[..cut];
        let mut v = Vec::with_capacity(1 + PUBLISHING_HEAD + node.len() + 24 * pairs.len());
        v.push(PUBLISHING);
        v.extend_from_slice(digest);
        v.extend_from_slice(&nonce.to_be_bytes());
        v.extend_from_slice(&reuse_ms.to_be_bytes());
        v.extend_from_slice(&(node.len() as u16).to_be_bytes());
        v.extend_from_slice(node.as_bytes());
        put_pairs(&mut v, pairs);
        v
    }

    /// The (fingerprint, id) pairs of a [`SharedRecord::Refused`].
    fn pairs(pairs: &[u8]) -> Vec<(u64, MessageId)> {
        pairs
            .chunks_exact(24)
            .map(|c| {
                let (fingerprint, id) = c.split_at(8);
                (
                    u64::from_be_bytes(fingerprint.try_into().unwrap_or_default()),
                    MessageId(u128::from_be_bytes(id.try_into().unwrap_or_default())),
                )
            })
            .collect()
    }

    fn decode(value: &'a [u8]) -> Option<SharedRecord<'a>> {
        match value.split_first()? {
            (&REFUSED, rest) if rest.len() >= 8 && (rest.len() - 8).is_multiple_of(24) => {
                let (reuse, pairs) = rest.split_at(8);
                Some(SharedRecord::Refused {
                    reuse_ms: u64::from_be_bytes(reuse.try_into().ok()?),
                    pairs,
                })
            }
            (&PUBLISHING, rest) => Self::decode_publishing(rest),
            (&ANSWERED, rest) if rest.len() >= 34 => Some(SharedRecord::Answered(rest)),
            (&CLAIMED, rest) if rest.len() >= 40 => {
                let mut nonce = [0u8; 8];
                nonce.copy_from_slice(&rest[32..40]);
                Some(SharedRecord::Claimed {
                    node: std::str::from_utf8(&rest[40..]).ok()?,
                    nonce: u64::from_be_bytes(nonce),
                })
            }
            _ => None,
        }
    }

    /// A [`PUBLISHING`] record, its tag taken off.
    fn decode_publishing(rest: &'a [u8]) -> Option<SharedRecord<'a>> {
        let head = rest.get(..PUBLISHING_HEAD)?;
        let word = |at: usize| -> Option<u64> {
            Some(u64::from_be_bytes(head.get(at..at + 8)?.try_into().ok()?))
        };
        let (nonce, reuse_ms) = (word(32)?, word(40)?);
        let node_len = usize::from(u16::from_be_bytes([head[48], head[49]]));
        let (node, pairs) = rest[PUBLISHING_HEAD..].split_at_checked(node_len)?;
        if !pairs.len().is_multiple_of(24) {
            return None;
        }
        Some(SharedRecord::Publishing {
            node: std::str::from_utf8(node).ok()?,
            nonce,
            ids: Reusable { reuse_ms, pairs },
        })
    }
}

/// Appends (fingerprint, id) pairs, 24 bytes each.
fn put_pairs(v: &mut Vec<u8>, pairs: &[(u64, MessageId)]) {
    for (fingerprint, id) in pairs {
        v.extend_from_slice(&fingerprint.to_be_bytes());
        v.extend_from_slice(&id.0.to_be_bytes());
    }
}

impl Idempotency {
    /// Keys in this node's outcome store (the embedded spool).
    pub fn local(store: Arc<OutcomeStore>) -> Self {
        Idempotency {
            keys: Keys::Local {
                store,
                running: Mutex::new(HashSet::new()),
            },
        }
    }

    /// Keys in the bucket `<stream>_idempotency` that every node of the JetStream spool `spool` shares.
    pub fn shared(spool: Arc<JetStreamSpool>) -> Self {
        let name = format!("{}_idempotency", spool.stream_name());
        let first_beat = Arc::new(AtomicBool::new(false));
        watch_first_beat(&spool, &first_beat);
        Idempotency {
            keys: Keys::Shared {
                bucket: Box::new(ClaimBucket::new(spool.clone(), &name, TTL)),
                spool,
                first_beat,
                orphans: Mutex::new(HashMap::new()),
            },
        }
    }

    /// Runs `handle` unless the request's headers carry a key seen before (on `route`, from the same caller): then
    /// answers as described in the module documentation. `momentum` selects the error shape of `/v1.0/inject`.
    pub async fn run<F>(
        self: &Arc<Self>,
        route: &str,
        request: &Parts,
        body: &Bytes,
        momentum: bool,
        handle: F,
    ) -> Result<Response, ApiError>
    where
        F: Future<Output = Result<Response, ApiError>> + Send + 'static,
    {
        let err = |e: ApiError| if momentum { e.momentum() } else { e };
        let mut values = request.headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return handle.await;
        };
        // Which of two keys would apply is not for herald to guess: either could be the one a retry sends.
        if values.next().is_some() {
            return Err(err(ApiError::bad_request(
                "Idempotency-Key: given more than once; send one key per request",
            )));
        }
        let Some(key_text) = key_text(value) else {
            return Err(err(ApiError::bad_request(format!(
                "Idempotency-Key: must be 1 to {MAX_KEY_LEN} visible ASCII characters"
            ))));
        };
        let digest: [u8; 32] = Sha256::digest(body).into();
        // From the claim on, the request runs to its end on a task of its own (see the module documentation): a
        // client hanging up can leave neither a claim without its request nor an accepted request unremembered.
        let this = self.clone();
        let route = scope(route, request.extensions.get::<ApiCaller>());
        tokio::spawn(async move {
            let step = match &this.keys {
                Keys::Local { store, running } => {
                    this.claim_local(store, running, &route, &key_text, &digest)
                }
                Keys::Shared {
                    bucket,
                    spool,
                    first_beat,
                    ..
                } => {
                    claim_shared(&this, bucket, spool, first_beat, &route, &key_text, &digest).await
                }
            };
            match step? {
                Step::Answered(response) => Ok(response),
                Step::Run(claim) => this.finish(claim, digest, key_text, handle).await,
            }
        })
        .await
        .unwrap_or_else(|e| {
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the request failed: {e}"),
            ))
        })
        .map_err(err)
    }

    fn claim_local(
        self: &Arc<Self>,
        store: &OutcomeStore,
        running: &Mutex<HashSet<Vec<u8>>>,
        route: &str,
        key_text: &str,
        digest: &[u8; 32],
    ) -> Result<Step, ApiError> {
        let mut key = Vec::with_capacity(route.len() + 1 + key_text.len());
        key.extend_from_slice(route.as_bytes());
        key.push(0);
        key.extend_from_slice(key_text.as_bytes());
        let stored = store
            .idempotent_get(&key, now_ms())
            .map_err(|e| ApiError::unavailable(format!("Idempotency-Key: {e}")))?;
        if let Some(stored) = stored {
            return replay(&stored, digest, key_text).map(Step::Answered);
        }
        if !running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone())
        {
            return Err(still_running(key_text));
        }
        let guard = Running {
            owner: self.clone(),
            key: key.clone(),
        };
        // A request with this key may have finished between the lookup and the claim.
        if let Ok(Some(stored)) = store.idempotent_get(&key, now_ms()) {
            return replay(&stored, digest, key_text).map(Step::Answered);
        }
        Ok(Step::Run(Claim::Local(guard)))
    }

    /// Runs the request holding `claim`; an accepted answer is remembered, a refused one releases the key.
    async fn finish<F>(
        self: &Arc<Self>,
        mut claim: Claim,
        digest: [u8; 32],
        key_text: String,
        handle: F,
    ) -> Result<Response, ApiError>
    where
        F: Future<Output = Result<Response, ApiError>>,
    {
        let ids = match &claim {
            Claim::Shared(shared) => Some(shared.ids.clone()),
            Claim::Local(_) => None,
        };
        let response = match retry_ids::running(ids, handle).await {
            Ok(r) if r.status().is_success() => r,
            other => {
                self.release(claim).await;
                return other;
            }
        };
        let status = response.status();
        let (parts, body) = response.into_parts();
        // The answer is built in memory already, bounded by the request's own limits: it is remembered whatever its
        // size, since the notifications it accepted are queued and a retry must not queue them again.
        let bytes = match axum::body::to_bytes(body, usize::MAX).await {
            Ok(b) => b,
            Err(e) => {
                self.release(claim).await;
                return Err(ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    e.to_string(),
                ));
            }
        };
        let mut answer = Vec::with_capacity(34 + bytes.len());
        answer.extend_from_slice(&digest);
        answer.extend_from_slice(&status.as_u16().to_be_bytes());
        answer.extend_from_slice(&bytes);
        // The notifications are queued: the answer goes out whatever happens to the record (a refusal now would
        // have the sender retry, and queue them again under new ids); only a retry with this key would run again.
        if let Err(e) = self.remember(&mut claim, answer).await {
            tracing::warn!(key = %key_text, "cannot remember an idempotency key (the answer is sent; a retry with this key would be processed again): {e}");
        }
        drop(claim);
        Ok(Response::from_parts(parts, axum::body::Body::from(bytes)))
    }

    /// Stores an accepted request's answer under its claim (which it settles: a shared claim is then the answer,
    /// another request's, or written again in the background).
    async fn remember(self: &Arc<Self>, claim: &mut Claim, answer: Vec<u8>) -> Result<(), String> {
        match (&self.keys, claim) {
            (Keys::Local { store, .. }, Claim::Local(running)) => {
                let store = store.clone();
                let key = running.key.clone();
                let expires = now_ms() + TTL.as_millis() as u64;
                tokio::task::spawn_blocking(move || {
                    store.idempotent_put(&key, expires, &answer, true)
                })
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())
            }
            (Keys::Shared { bucket, .. }, Claim::Shared(claim)) => {
                let mut value = Vec::with_capacity(1 + answer.len());
                value.push(ANSWERED);
                value.extend_from_slice(&answer);
                let (key, revision) = (&claim.held.key, &claim.held.revision());
                let written = bucket.replace(key, *revision, &value).await;
                claim.settled = true;
                match written {
                    Ok(Some(_)) => Ok(()),
                    Ok(None) => Err(format!(
                        "its claim in {} was taken over by another request",
                        bucket.name()
                    )),
                    // NATS did not answer: the claim stays, and the answer is written again in the background
                    // (until then a retry with this key is told the request is still running).
                    Err(e) => {
                        let this = self.clone();
                        let (key, revision) = (key.clone(), *revision);
                        tokio::spawn(
                            async move { this.remember_later(key, revision, value).await },
                        );
                        Err(format!("{e}; writing it again in the background"))
                    }
                }
            }
            _ => Err("claim of another store".into()),
        }
    }

    /// Writes an answer the shared bucket did not take at once, a few times over [`REMEMBER_FOR`].
    async fn remember_later(self: Arc<Self>, key: String, revision: u64, value: Vec<u8>) {
        let Keys::Shared { bucket, .. } = &self.keys else {
            return;
        };
        let deadline = tokio::time::Instant::now() + REMEMBER_FOR;
        let mut delay = Duration::from_millis(200);
        loop {
            tokio::time::sleep(delay).await;
            match bucket.replace(&key, revision, &value).await {
                // Written; or taken over meanwhile (the entry moved past the claim, whatever wrote it): done.
                Ok(_) => return,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    tracing::warn!(
                        "cannot remember an idempotency key in {} (a retry with it is refused until its claim is taken over): {e}",
                        bucket.name()
                    );
                    return;
                }
                Err(_) => delay = (delay * 2).min(Duration::from_secs(10)),
            }
        }
    }

    /// Frees the key of a request that was refused (it may be retried as is). On the shared bucket, a request that
    /// handed notifications to NATS leaves the ids it assigned instead, for a retry to reuse while the stream
    /// drops copies of what it took (see the module documentation); a release NATS does not take at once is tried
    /// again in the background ([`Self::release_shared`]).
    async fn release(self: &Arc<Self>, mut claim: Claim) {
        if let Claim::Shared(claim) = &mut claim {
            let release = claim.refused();
            self.clone().release_shared(release).await;
        }
    }

    /// Releases a refused request's shared claim, or when NATS does not take it at once (a server lost, a leader
    /// being elected), goes on in the background ([`Self::release_later`]): meanwhile a retry with the key is
    /// answered `409`, as the claim stands. Removing the claim instead of the ids would have the retry give the
    /// notifications new ids, and send again what NATS took of the refused request.
    async fn release_shared(self: Arc<Self>, mut release: Release) {
        let Keys::Shared { bucket, .. } = &self.keys else {
            return;
        };
        if let Err(e) = release.attempt(bucket).await {
            tracing::warn!(
                "cannot release the idempotency key of a refused request at once, trying again in the background \
                 (a retry with the key is answered 409 until then): {e}"
            );
            tokio::spawn(self.clone().release_later(release));
        }
    }

    /// Tries a release again, with pauses from [`RELEASE_FIRST_PAUSE`] doubling up to [`RELEASE_MAX_PAUSE`], until
    /// it is done or the claim may be taken over anyway ([`MAX_CLAIM_AGE`] after it was made).
    async fn release_later(self: Arc<Self>, mut release: Release) {
        let Keys::Shared { bucket, .. } = &self.keys else {
            return;
        };
        let mut pause = RELEASE_FIRST_PAUSE;
        for attempt in 2u32.. {
            tokio::time::sleep(pause).await;
            match release.attempt(bucket).await {
                Ok(()) => {
                    tracing::info!(
                        "released the idempotency key of a refused request at attempt {attempt}"
                    );
                    return;
                }
                Err(e) if tokio::time::Instant::now() >= release.until => {
                    tracing::warn!(
                        "cannot release the idempotency key of a refused request after {attempt} attempts; its \
                         claim is {} s old and the next request with the key takes it over: {e}",
                        MAX_CLAIM_AGE.as_secs()
                    );
                    return;
                }
                Err(_) => {
                    pause = (pause * 2).min(RELEASE_MAX_PAUSE).min(
                        release
                            .until
                            .saturating_duration_since(tokio::time::Instant::now()),
                    );
                }
            }
        }
    }
}

impl Idempotency {
    /// Looks in the background for the claim writes `writes` under `key` (the client's `key_text`), of a request
    /// answered without its claim, and removes the claim should NATS have stored one ([`Self::sweep`]). Writes
    /// under a key already looked for join its task.
    fn sweep_later(self: &Arc<Self>, key: String, key_text: &str, writes: Vec<Unsettled>) {
        let Keys::Shared { orphans, .. } = &self.keys else {
            return;
        };
        if writes.is_empty() {
            return;
        }
        let mut orphans = lock(orphans);
        match orphans.get_mut(&key) {
            Some(under_way) => under_way.writes.extend(writes),
            None => {
                orphans.insert(
                    key.clone(),
                    Orphans {
                        key_text: key_text.to_owned(),
                        writes,
                    },
                );
                tokio::spawn(self.clone().sweep(key));
            }
        }
    }

    /// Whether `nonce` is that of a request of this node answered without its claim under `key`, whose write NATS
    /// may have stored after all ([`Self::sweep_later`]): such a claim is no running request's.
    fn orphaned(&self, key: &str, nonce: u64) -> bool {
        let Keys::Shared { orphans, .. } = &self.keys else {
            return false;
        };
        lock(orphans)
            .get(key)
            .is_some_and(|o| o.writes.iter().any(|w| w.nonce == nonce))
    }

    /// Reads `key` with pauses from [`RELEASE_FIRST_PAUSE`] doubling up to [`RELEASE_MAX_PAUSE`] while writes of
    /// [`Self::sweep_later`] may still be stored: a claim one of them stored is removed (at the revision read, so a
    /// claim another request wrote since is left alone), and a write the entry moved past ([`may_land`]) or one
    /// looked for until [`MAX_CLAIM_AGE`] after it is no longer looked for. Ends when none is left.
    async fn sweep(self: Arc<Self>, key: String) {
        let Keys::Shared {
            bucket, orphans, ..
        } = &self.keys
        else {
            return;
        };
        let mut pause = RELEASE_FIRST_PAUSE;
        loop {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(RELEASE_MAX_PAUSE);
            let (key_text, writes) = {
                let mut orphans = lock(orphans);
                let now = tokio::time::Instant::now();
                let Some(o) = orphans.get_mut(&key) else {
                    return;
                };
                o.writes.retain(|w| w.until > now);
                if o.writes.is_empty() {
                    orphans.remove(&key);
                    return;
                }
                (o.key_text.clone(), o.writes.clone())
            };
            let done: Vec<Unsettled> = match bucket.read(&key).await {
                // NATS did not answer: looked for again.
                Err(_) => continue,
                Ok(entry) => match orphan_claim(entry.as_ref(), &writes) {
                    Some(revision) => match bucket.remove(&key, revision).await {
                        // The entry moved past the orphaned claim: no write looked for can be stored any more.
                        Ok(()) => {
                            tracing::info!(
                                key = %key_text,
                                "released the idempotency key of a request answered 503 before NATS stored its claim: \
                                 a retry with the key runs"
                            );
                            writes
                        }
                        Err(_) => continue,
                    },
                    None => writes
                        .into_iter()
                        .filter(|w| !may_land(entry.as_ref(), w.expected))
                        .collect(),
                },
            };
            let mut orphans = lock(orphans);
            let Some(o) = orphans.get_mut(&key) else {
                return;
            };
            o.writes.retain(|w| !done.contains(w));
            if o.writes.is_empty() {
                orphans.remove(&key);
                return;
            }
        }
    }
}

/// The revision of the claim in `entry` that one of `writes` stored, if it holds one.
fn orphan_claim(entry: Option<&ClaimEntry>, writes: &[Unsettled]) -> Option<u64> {
    let entry = entry?;
    match SharedRecord::decode(&entry.value)? {
        SharedRecord::Claimed { nonce, .. } if writes.iter().any(|w| w.nonce == nonce) => {
            Some(entry.revision)
        }
        _ => None,
    }
}

/// Whether NATS may still store a claim write that expected the entry at `expected` (`None`: absent), the entry
/// being read as `entry` (not the write's own claim): NATS stores such a write only while the entry is at the
/// revision it names. A later revision is past it for good. An earlier one, or no entry where the write found one,
/// may be a replica behind answering the read: the write is looked for still.
fn may_land(entry: Option<&ClaimEntry>, expected: Option<u64>) -> bool {
    match (entry, expected) {
        (None, _) => true,
        (Some(entry), Some(expected)) => entry.revision <= expected,
        (Some(_), None) => false,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often [`watch_first_beat`] looks at the heartbeat of a node starting up.
const FIRST_BEAT_POLL: Duration = Duration::from_millis(50);

/// Sets `first_beat` once `spool` wrote its first heartbeat (at once if it has), looking every [`FIRST_BEAT_POLL`]
/// until then, in the background; it ends with the spool. Without a runtime it is left to the requests
/// ([`heartbeat_gate`]).
fn watch_first_beat(spool: &Arc<JetStreamSpool>, first_beat: &Arc<AtomicBool>) {
    if spool.beating() {
        first_beat.store(true, Ordering::Relaxed);
        return;
    }
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let (spool, first_beat): (Weak<JetStreamSpool>, _) =
        (Arc::downgrade(spool), first_beat.clone());
    runtime.spawn(async move {
        while !first_beat.load(Ordering::Relaxed) {
            match spool.upgrade() {
                Some(spool) if spool.beating() => first_beat.store(true, Ordering::Relaxed),
                Some(_) => tokio::time::sleep(FIRST_BEAT_POLL).await,
                None => return,
            }
        }
    });
}

/// Whether this node may claim keys now: only while its heartbeat is written, so that the other nodes see it live
/// and take none of its claims over. A node starting up, whose first heartbeat is not written yet, waits for it
/// ([`BEAT_WAIT`] at most). Afterwards a node that is not connected to NATS, or whose heartbeat NATS stopped
/// taking, is refused at once (as a request without a key is), rather than each request waiting out
/// [`BEAT_WAIT`] for as long as NATS is away. The error says why.
async fn heartbeat_gate(spool: &JetStreamSpool, first_beat: &AtomicBool) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + BEAT_WAIT;
    loop {
        if !spool.connected() {
            return Err(spool.write_error().map_or_else(
                || "NATS unreachable: not connected to NATS".to_owned(),
                |e| e.to_string(),
            ));
        }
        if spool.beating() {
            first_beat.store(true, Ordering::Relaxed);
            return Ok(());
        }
        if first_beat.load(Ordering::Relaxed) {
            return Err(
                "NATS does not take this node's heartbeat now (the other nodes do not see it live): it claims no key \
                 until it does"
                    .to_owned(),
            );
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(
                "this node has not yet announced itself to the other nodes (its heartbeat is not written)".to_owned(),
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How long a request waits for this node's first heartbeat before it may claim a key (a node starting up).
const BEAT_WAIT: Duration = Duration::from_secs(5);
/// Reads and writes of one claim that found the entry changed by another request meanwhile, at most.
const CLAIM_PASSES: u32 = 5;

/// Claims `key_text` in the shared bucket, or answers from what the bucket holds for it.
///
/// A node claims keys only once its heartbeat is written ([`heartbeat_gate`]), so a claim whose node has no
/// heartbeat any more (the server removes it after the node's silence) belongs to a node that died or was cut off,
/// and is taken over. A write whose outcome is unknown (an error, a timeout; or a create that timed out, and
/// reported the key taken once it read back the claim the server stored all the same) is settled by reading the
/// entry back: the claim carries a number this request drew, so it knows its own ([`Found::Own`]). A request
/// answered without its claim while one of its writes may still be stored (NATS did not say, and the entry read
/// back, if it could be, is as the write found it) leaves that write to be looked for in the background
/// ([`Idempotency::sweep_later`]): NATS storing it later would otherwise leave a claim no request holds.
async fn claim_shared(
    owner: &Arc<Idempotency>,
    bucket: &ClaimBucket,
    spool: &JetStreamSpool,
    first_beat: &AtomicBool,
    route: &str,
    key_text: &str,
    digest: &[u8; 32],
) -> Result<Step, ApiError> {
    let key = shared_key(route, key_text);
    heartbeat_gate(spool, first_beat).await.map_err(|e| {
        ApiError::unavailable(format!("Idempotency-Key {key_text:?}: {e}; retry later"))
    })?;
    let nonce = nonce();
    let mut writes = Vec::new();
    let claimed = claim_passes(
        owner,
        bucket,
        spool,
        &key,
        key_text,
        digest,
        nonce,
        &mut writes,
    )
    .await;
    if claimed.is_err() {
        let until = tokio::time::Instant::now() + MAX_CLAIM_AGE;
        let writes = writes
            .into_iter()
            .map(|expected| Unsettled {
                nonce,
                expected,
                until,
            })
            .collect();
        owner.sweep_later(key, key_text, writes);
    }
    claimed
}

/// The passes of [`claim_shared`] for the request that drew `nonce`: `writes` ends with the revisions the claim
/// writes NATS may still store expected the entry at (`None`: a create), those NATS took or refused, or that the
/// entry moved past ([`may_land`]), left out.
#[allow(clippy::too_many_arguments)]
async fn claim_passes(
    owner: &Arc<Idempotency>,
    bucket: &ClaimBucket,
    spool: &JetStreamSpool,
    key: &str,
    key_text: &str,
    digest: &[u8; 32],
    nonce: u64,
    writes: &mut Vec<Option<u64>>,
) -> Result<Step, ApiError> {
    let unavailable = |e: &dyn std::fmt::Display| {
        ApiError::unavailable(format!("Idempotency-Key {key_text:?}: {e}; retry later"))
    };
    let claim = SharedRecord::claim(digest, spool.node_name(), nonce);
    let dedup = format!("i{}", &key[..32]);
    let held = |revision, earlier, reuse_until| {
        let held = Arc::new(HeldClaim {
            key: key.to_owned(),
            revision: AtomicU64::new(revision),
            digest: *digest,
            node: spool.node_name().to_owned(),
            nonce,
            reuse_until,
            unsettled: AtomicBool::new(false),
        });
        let recorder = Arc::new(ClaimRecorder {
            owner: owner.clone(),
            held: held.clone(),
            writing: tokio::sync::Mutex::new(()),
        });
        Step::Run(Claim::Shared(SharedClaim {
            owner: owner.clone(),
            held,
            settled: false,
            ids: RequestIds::recorded(dedup.clone(), earlier, recorder),
            claimed_at: tokio::time::Instant::now(),
        }))
    };
    // Writes of this request NATS can no longer store, the entry being `entry`, are no longer looked for.
    let settle = |writes: &mut Vec<Option<u64>>, entry: Option<&ClaimEntry>| {
        writes.retain(|expected| may_land(entry, *expected));
    };
    // Until when a retry of this request may reuse its ids (from its claim on: its publishes come after), and the
    // ids of a refused attempt it reuses: those of the claim last written.
    let fresh = || {
        (
            tokio::time::Instant::now() + reuse_window(spool.duplicate_window()),
            Vec::new(),
        )
    };
    let (mut reuse_until, mut earlier) = fresh();
    for pass in 0..CLAIM_PASSES {
        if pass > 0 {
            // Another request changed the entry between this one's read and write: look again shortly (a
            // replica may also have answered the read with an older state).
            tokio::time::sleep(Duration::from_millis(10 * u64::from(pass))).await;
        }
        let entry = bucket.read(key).await.map_err(|e| unavailable(&e))?;
        // The revision this pass found, to tell after a failed write whether another request wrote meanwhile.
        let seen = entry.as_ref().map(|e| e.revision);
        let found = found(entry.as_ref(), nonce);
        if !matches!(found, Found::Own { .. }) {
            settle(writes, entry.as_ref());
        }
        let written = match found {
            // The claim an earlier pass wrote, although its write said otherwise: held, with the ids it took.
            Found::Own { revision } => return Ok(held(revision, earlier, reuse_until)),
            Found::Free => {
                (reuse_until, earlier) = fresh();
                writes.push(seen);
                bucket.create(key, &claim).await
            }
            Found::Answered(stored) => {
                return replay(stored, digest, key_text).map(Step::Answered);
            }
            Found::Claimed {
                node,
                nonce: theirs,
                revision,
                stored_ms,
                ids,
            } => {
                // A claim of a request of this node answered without it (its write stored after the answer) is
                // no running request's: taken over at once, rather than refused until the sweep removes it.
                if node == spool.node_name() && owner.orphaned(key, theirs) {
                    tracing::info!(key = %key_text, "taking over the idempotency key of a request of this node answered 503 before NATS stored its claim");
                } else if !abandoned(spool, node, stored_ms, now_ms())
                    .await
                    .map_err(|e| unavailable(&e))?
                {
                    return Err(still_running(key_text));
                } else {
                    tracing::info!(key = %key_text, "taking over the idempotency key of a request whose node ({node}) is gone");
                }
                (reuse_until, earlier) = fresh();
                // The ids it recorded before handing notifications to NATS, as a refused request's.
                if let Some(reused) = ids.and_then(|ids| reusable(spool, ids, stored_ms)) {
                    (reuse_until, earlier) = reused;
                }
                writes.push(seen);
                bucket.replace(key, revision, &claim).await
            }
            Found::Refused {
                reuse_ms,
                pairs,
                revision,
                stored_ms,
            } => {
                (reuse_until, earlier) = fresh();
                if let Some(reused) = reusable(spool, Reusable { reuse_ms, pairs }, stored_ms) {
                    (reuse_until, earlier) = reused;
                }
                writes.push(seen);
                bucket.replace(key, revision, &claim).await
            }
            Found::Unknown => {
                return Err(ApiError::unavailable(format!(
                    "Idempotency-Key {key_text:?}: its record in {} is not one this herald reads (written by a newer version?)",
                    bucket.name()
                )));
            }
        };
        match written {
            Ok(Some(revision)) => return Ok(held(revision, earlier, reuse_until)),
            // Someone else's write came first; or this one's was stored although its answer was lost (a create
            // that timed out reads the key back and reports it taken): the next pass tells which. A replace is
            // told so by NATS itself: it was not stored.
            Ok(None) => {
                if seen.is_some() {
                    writes.pop();
                }
                continue;
            }
            // The write failed: stored all the same (its answer lost), or refused because another request wrote
            // the entry meanwhile (a failure NATS may report as an error of its own rather than as a changed
            // entry), or NATS did not take it.
            Err(e) => match bucket.read(key).await {
                Ok(entry) => match after_failed_write(entry.as_ref(), seen, nonce) {
                    AfterFailedWrite::Own { revision } => {
                        return Ok(held(revision, earlier, reuse_until));
                    }
                    AfterFailedWrite::Changed => {
                        settle(writes, entry.as_ref());
                        continue;
                    }
                    AfterFailedWrite::Unchanged => return Err(unavailable(&e)),
                },
                Err(_) => return Err(unavailable(&e)),
            },
        }
    }
    Err(still_running(key_text))
}

/// What a write of [`claim_shared`] that failed left in the bucket, read back.
#[derive(Debug, PartialEq, Eq)]
enum AfterFailedWrite {
    /// This request's claim: the write was stored although its answer said otherwise.
    Own { revision: u64 },
    /// Another request's write (or removal) came in since the pass read the entry: the next pass reads it.
    Changed,
    /// The entry as the pass read it: NATS did not take the write.
    Unchanged,
}

/// What a write that failed left under the key, read back as `entry`, for the request that drew `nonce` and whose
/// pass had read the entry at revision `seen` (`None`: absent).
fn after_failed_write(
    entry: Option<&herald_spool::ClaimEntry>,
    seen: Option<u64>,
    nonce: u64,
) -> AfterFailedWrite {
    match found(entry, nonce) {
        Found::Own { revision } => AfterFailedWrite::Own { revision },
        _ if entry.map(|e| e.revision) != seen => AfterFailedWrite::Changed,
        _ => AfterFailedWrite::Unchanged,
    }
}

/// What a pass of [`claim_shared`] found in the bucket under its key, for the request that drew `nonce`.
#[derive(Debug, PartialEq, Eq)]
enum Found<'a> {
    /// Nothing: the request creates its claim.
    Free,
    /// This request's own claim, at `revision`: an earlier write of it was stored although its answer said
    /// otherwise (async-nats's create, whose write timed out, reads the key back and reports it taken; a replace's
    /// answer lost). The request holds it: taken for another request's, it would be refused as still running, and
    /// every retry with the key too until [`MAX_CLAIM_AGE`], since no request would own the claim.
    Own { revision: u64 },
    /// Another request's answer.
    Answered(&'a [u8]),
    /// Another request's claim, made on `node` by the request that drew `nonce`; with the ids it assigned once
    /// it hands notifications to NATS ([`SharedRecord::Publishing`]).
    Claimed {
        node: &'a str,
        nonce: u64,
        revision: u64,
        stored_ms: u64,
        ids: Option<Reusable<'a>>,
    },
    /// A request refused after it handed notifications to NATS ([`SharedRecord::Refused`]).
    Refused {
        reuse_ms: u64,
        pairs: &'a [u8],
        revision: u64,
        stored_ms: u64,
    },
    /// A record this herald does not read (a newer version's).
    Unknown,
}

fn found(entry: Option<&herald_spool::ClaimEntry>, nonce: u64) -> Found<'_> {
    let Some(entry) = entry else {
        return Found::Free;
    };
    let (revision, stored_ms) = (entry.revision, entry.stored_ms);
    match SharedRecord::decode(&entry.value) {
        Some(
            SharedRecord::Claimed { nonce: n, .. } | SharedRecord::Publishing { nonce: n, .. },
        ) if n == nonce => Found::Own { revision },
        Some(SharedRecord::Claimed { node, nonce }) => Found::Claimed {
            node,
            nonce,
            revision,
            stored_ms,
            ids: None,
        },
        Some(SharedRecord::Publishing { node, nonce, ids }) => Found::Claimed {
            node,
            nonce,
            revision,
            stored_ms,
            ids: Some(ids),
        },
        Some(SharedRecord::Answered(stored)) => Found::Answered(stored),
        Some(SharedRecord::Refused { reuse_ms, pairs }) => Found::Refused {
            reuse_ms,
            pairs,
            revision,
            stored_ms,
        },
        None => Found::Unknown,
    }
}

/// The ids `ids` of an entry stored at `stored_ms` (the server's clock) that the next request with the key reuses,
/// and until when: while the stream still drops copies of what the request that left them published; past that,
/// none (the next one is a new request).
fn reusable(
    spool: &JetStreamSpool,
    ids: Reusable<'_>,
    stored_ms: u64,
) -> Option<(tokio::time::Instant, Vec<(u64, MessageId)>)> {
    let age = now_ms().saturating_sub(stored_ms);
    let left = ids.reuse_ms.checked_sub(age).filter(|left| *left > 0)?;
    let until = tokio::time::Instant::now()
        + Duration::from_millis(left).min(reuse_window(spool.duplicate_window()));
    Some((until, SharedRecord::pairs(ids.pairs)))
}

/// How long after its claim a refused request's ids may be reused: [`REUSE_SHARE`] of the stream's duplicate window.
fn reuse_window(duplicate_window: Duration) -> Duration {
    duplicate_window * REUSE_SHARE.0 / REUSE_SHARE.1
}

/// Whether a claim made by `node` (stored at `stored_ms` by the NATS server's clock) belongs to a request that will
/// never answer: its node's heartbeat is gone, or the claim is older than [`MAX_CLAIM_AGE`] (by this node's clock
/// against the server's: a safety net for a claim its own live node could not turn into an answer).
async fn abandoned(
    spool: &JetStreamSpool,
    node: &str,
    stored_ms: u64,
    now_ms: u64,
) -> Result<bool, String> {
    if now_ms.saturating_sub(stored_ms) > MAX_CLAIM_AGE.as_millis() as u64 {
        return Ok(true);
    }
    if node == spool.node_name() {
        return Ok(false);
    }
    Ok(!spool.node_alive(node).await?)
}

/// The first answer again, or 409 when the body differs.
fn replay(stored: &[u8], digest: &[u8; 32], key: &str) -> Result<Response, ApiError> {
    if stored.len() < 34 || &stored[..32] != digest {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "Idempotency-Key {key:?} was used within the last 24 hours for a request with another body; use a new key for a new request"
            ),
        ));
    }
    let status = StatusCode::from_u16(u16::from_be_bytes([stored[32], stored[33]]))
        .unwrap_or(StatusCode::OK);
    let text = String::from_utf8_lossy(&stored[34..]).into_owned();
    let mut response = json_response(status, text);
    response.headers_mut().insert(
        "idempotent-replayed",
        axum::http::HeaderValue::from_static("true"),
    );
    Ok(response.into_response())
}

/// The key a header value gives: 1 to [`MAX_KEY_LEN`] visible ASCII characters (no space, no tab, no control).
fn key_text(value: &axum::http::HeaderValue) -> Option<String> {
    let bytes = value.as_bytes();
    let visible = bytes.iter().all(|b| (0x21..=0x7e).contains(b));
    (visible && !bytes.is_empty() && bytes.len() <= MAX_KEY_LEN)
        .then(|| String::from_utf8_lossy(bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/api.md "Idempotent requests": a key is 1 to 255 visible ASCII characters; a space or a tab inside
    /// is refused like any other invalid key.
    #[test]
    fn a_key_is_one_to_255_visible_ascii_characters() {
        let key = |v: &[u8]| key_text(&axum::http::HeaderValue::from_bytes(v).unwrap());
        assert_eq!(key(b"order-42").as_deref(), Some("order-42"));
        assert_eq!(
            key(&[b'k'; MAX_KEY_LEN]).map(|k| k.len()),
            Some(MAX_KEY_LEN)
        );
        assert_eq!(key(&[b'k'; MAX_KEY_LEN + 1]), None);
        assert_eq!(key(b""), None);
        assert_eq!(key(b"a b"), None);
        assert_eq!(key(b"a\tb"), None);
        assert_eq!(key("caf\u{e9}".as_bytes()), None);
    }

    /// Two `Idempotency-Key` headers are refused (400, in the route's shape) before anything runs or is
    /// remembered: neither key is taken for the other.
    #[tokio::test]
    async fn a_key_given_twice_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let idem = Arc::new(Idempotency::local(store));
        let body = Bytes::from_static(b"{}");
        let twice = axum::http::Request::builder()
            .header(HEADER, "k-one")
            .header(HEADER, "k-two")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        for momentum in [false, true] {
            let err = idem
                .run("push", &twice, &body, momentum, async {
                    panic!("a request with two keys ran")
                })
                .await
                .unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST);
            assert_eq!(
                err.message,
                "Idempotency-Key: given more than once; send one key per request"
            );
            assert_eq!(err.momentum, momentum);
        }
        // Neither key was taken: each alone runs.
        for key in ["k-one", "k-two"] {
            let ran = idem
                .run("push", &headers(key), &body, false, async {
                    Ok(json_response(StatusCode::ACCEPTED, "{}".into()))
                })
                .await
                .unwrap();
            assert!(!ran.headers().contains_key("idempotent-replayed"), "{key}");
        }
    }

    #[test]
    fn shared_records_read_back_and_unknown_ones_are_refused() {
        let digest = [7u8; 32];
        let claim = SharedRecord::claim(&digest, "host-a-12-1f", 0x1234_5678_9abc_def0);
        assert_eq!(
            SharedRecord::decode(&claim),
            Some(SharedRecord::Claimed {
                node: "host-a-12-1f",
                nonce: 0x1234_5678_9abc_def0
            })
        );
        assert_ne!(nonce(), nonce());
        let mut answer = vec![ANSWERED];
        answer.extend_from_slice(&digest);
        answer.extend_from_slice(&202u16.to_be_bytes());
        answer.extend_from_slice(b"{}");
        assert_eq!(
            SharedRecord::decode(&answer),
            Some(SharedRecord::Answered(&answer[1..]))
        );
        // A refused request's ids: how long they may be reused, and (fingerprint, id) pairs in order.
        let pairs = vec![(7u64, MessageId(1 << 120 | 5)), (9, MessageId(3))];
        let refused = SharedRecord::refused(90_000, &pairs);
        match SharedRecord::decode(&refused) {
            Some(SharedRecord::Refused { reuse_ms, pairs: p }) => {
                assert_eq!(reuse_ms, 90_000);
                assert_eq!(SharedRecord::pairs(p), pairs);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(SharedRecord::decode(&refused[..20]), None);
        // A claim with the ids its request assigned: as a claim, with the ids and how long they may be reused.
        let publishing = SharedRecord::publishing(&digest, "host-a-12-1f", 42, 90_000, &pairs);
        assert_eq!(publishing.len(), 1 + PUBLISHING_HEAD + 12 + 2 * 24);
        match SharedRecord::decode(&publishing) {
            Some(SharedRecord::Publishing { node, nonce, ids }) => {
                assert_eq!((node, nonce, ids.reuse_ms), ("host-a-12-1f", 42, 90_000));
                assert_eq!(SharedRecord::pairs(ids.pairs), pairs);
            }
            other => panic!("{other:?}"),
        }
        let none = SharedRecord::publishing(&digest, "n", 42, 0, &[]);
        assert!(matches!(
            SharedRecord::decode(&none),
            Some(SharedRecord::Publishing {
                node: "n",
                ids: Reusable { pairs: [], .. },
                ..
            })
        ));
        // Cut anywhere but at a pair's end, or naming more of a node than it holds: not read.
        for cut in [
            10,
            PUBLISHING_HEAD,
            PUBLISHING_HEAD + 5,
            publishing.len() - 1,
        ] {
            assert_eq!(
                SharedRecord::decode(&publishing[..cut]),
                None,
                "cut at {cut}"
            );
        }
        let mut long_node = publishing.clone();
        long_node[1 + 48] = 0xff;
        assert_eq!(SharedRecord::decode(&long_node), None);
        assert_eq!(
            reuse_window(Duration::from_secs(120)),
            Duration::from_secs(90)
        );
        assert_eq!(SharedRecord::decode(b"Z12345"), None);
        assert_eq!(SharedRecord::decode(&claim[..30]), None);
        assert_eq!(SharedRecord::decode(b""), None);
        // The bucket key is a digest of route and key: hex, the same for the same pair, another per route.
        let k = shared_key("push", "order-1");
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(k, shared_key("push", "order-1"));
        assert_ne!(k, shared_key("inject", "order-1"));
        // A caller with an API key has a scope of its own, named by a digest (the key itself is not in it).
        let caller = |key: &[u8]| ApiCaller::new(key);
        assert_eq!(scope("push", None), "push");
        let a = scope("push", Some(&caller(b"secret-a")));
        assert!(
            a.starts_with("push\0key:") && !a.contains("secret"),
            "{a:?}"
        );
        assert_eq!(a, scope("push", Some(&caller(b"secret-a"))));
        assert_ne!(a, scope("push", Some(&caller(b"secret-b"))));
        assert_ne!(a, scope("inject", Some(&caller(b"secret-a"))));
        assert!(!format!("{:?}", caller(b"secret-a")).contains("secret"));
    }

    /// A claim read back is this request's own when it carries the number the request drew, whichever node wrote
    /// it: a create whose write timed out although the server stored it (async-nats then reads the key back and
    /// reports it taken, `ClaimBucket::create` answers `None`) finds it at the next pass, and holds it rather than
    /// answering `409` (this node is alive, so the claim would not be taken over either, and every retry with the
    /// key would get `409` until `MAX_CLAIM_AGE`). Another request's claim, on this node or another, is not.
    #[test]
    fn a_claim_the_request_wrote_itself_is_taken_as_created() {
        let digest = [7u8; 32];
        let entry = |value: Vec<u8>| herald_spool::ClaimEntry {
            revision: 41,
            value: value.into(),
            stored_ms: 1_800_000_000_000,
        };
        assert_eq!(found(None, 5), Found::Free);
        let own = entry(SharedRecord::claim(&digest, "node-a", 5));
        assert_eq!(found(Some(&own), 5), Found::Own { revision: 41 });
        // The same node's claim of another request (another number): still running.
        assert_eq!(
            found(Some(&own), 6),
            Found::Claimed {
                node: "node-a",
                nonce: 5,
                revision: 41,
                stored_ms: 1_800_000_000_000,
                ids: None,
            }
        );
        // Once it hands notifications to NATS, its claim carries the ids it assigned: still its own, and another
        // request's with the ids to reuse should it take it over.
        let pairs = [(3, MessageId(4)), (3, MessageId(5))];
        let publishing = entry(SharedRecord::publishing(
            &digest, "node-a", 5, 90_000, &pairs,
        ));
        assert_eq!(found(Some(&publishing), 5), Found::Own { revision: 41 });
        match found(Some(&publishing), 6) {
            Found::Claimed {
                node: "node-a",
                nonce: 5,
                revision: 41,
                ids: Some(ids),
                ..
            } => {
                assert_eq!(ids.reuse_ms, 90_000);
                assert_eq!(SharedRecord::pairs(ids.pairs), pairs);
            }
            other => panic!("{other:?}"),
        }
        let other = entry(SharedRecord::claim(&digest, "node-b", 9));
        assert!(matches!(
            found(Some(&other), 5),
            Found::Claimed { node: "node-b", .. }
        ));
        let mut answer = vec![ANSWERED];
        answer.extend_from_slice(&digest);
        answer.extend_from_slice(&202u16.to_be_bytes());
        let answered = entry(answer.clone());
        assert_eq!(found(Some(&answered), 5), Found::Answered(&answer[1..]));
        let refused = entry(SharedRecord::refused(1000, &[(3, MessageId(4))]));
        assert!(matches!(
            found(Some(&refused), 5),
            Found::Refused {
                reuse_ms: 1000,
                revision: 41,
                ..
            }
        ));
        assert_eq!(found(Some(&entry(b"Z?".to_vec())), 5), Found::Unknown);
    }

    /// A claim write that failed is settled by reading the entry back: its own claim is held (the write was
    /// stored, its answer lost); an entry another request wrote or removed since the pass read it is read again by
    /// another pass (NATS 2.12 and newer refuse a write racing another one still being replicated with an error of
    /// their own, not as a changed entry: answering `503` there would refuse a request that is to get `409` or the
    /// first answer); the entry as the pass read it means NATS took nothing, `503`.
    #[test]
    fn a_claim_write_that_failed_is_settled_by_what_the_entry_holds_then() {
        let digest = [7u8; 32];
        let entry = |revision: u64, value: Vec<u8>| herald_spool::ClaimEntry {
            revision,
            value: value.into(),
            stored_ms: 1_800_000_000_000,
        };
        let own = entry(42, SharedRecord::claim(&digest, "node-a", 5));
        let other = entry(42, SharedRecord::claim(&digest, "node-b", 9));
        assert_eq!(
            after_failed_write(Some(&own), None, 5),
            AfterFailedWrite::Own { revision: 42 }
        );
        assert_eq!(
            after_failed_write(Some(&own), Some(41), 5),
            AfterFailedWrite::Own { revision: 42 }
        );
        // Created by another request while this one created it; replaced or removed by another since.
        assert_eq!(
            after_failed_write(Some(&other), None, 5),
            AfterFailedWrite::Changed
        );
        assert_eq!(
            after_failed_write(Some(&other), Some(41), 5),
            AfterFailedWrite::Changed
        );
        assert_eq!(
            after_failed_write(None, Some(41), 5),
            AfterFailedWrite::Changed
        );
        // As it was.
        assert_eq!(
            after_failed_write(None, None, 5),
            AfterFailedWrite::Unchanged
        );
        assert_eq!(
            after_failed_write(Some(&other), Some(42), 5),
            AfterFailedWrite::Unchanged
        );
    }

    /// docs/scale-out.md "Idempotency keys": requests with one key reaching three nodes at once on a three-server
    /// cluster. One runs; every other gets `409` (still running) or the first answer again, never `503`, although
    /// NATS refuses the losing writes of such races in more than one way (see
    /// `a_claim_write_that_failed_is_settled_by_what_the_entry_holds_then`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn one_key_sent_to_three_nodes_at_once_runs_once_and_is_never_refused() {
        use herald_spool::JetStreamOptions;
        if !herald_testkit::nats::available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let servers = herald_testkit::nats::cluster(dir.path());
        let mut nodes = Vec::new();
        for (i, server) in servers.iter().enumerate() {
            let mut options = JetStreamOptions::new(vec![server.url()], "idem");
            options.replicas = 3;
            options.node = format!("node-{i}");
            let spool = JetStreamSpool::connect(options).await.unwrap();
            let _pulled = spool.take_deliveries();
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while !spool.beating() {
                assert!(std::time::Instant::now() < deadline, "no heartbeat written");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            nodes.push(Arc::new(Idempotency::shared(spool)));
        }
        let body = Bytes::from_static(b"{\"tokens\": [\"aa\"]}");
        // The bucket is made by the first request with a key; until every server serves it, a read can find no
        // one to answer it (503): each node's first request waits for that.
        for (i, idem) in nodes.iter().enumerate() {
            retry_until_it_runs(
                idem,
                &format!("k-first-{i}"),
                &body,
                Duration::from_secs(30),
                || async { Ok(json_response(StatusCode::ACCEPTED, "{}".into())) },
            )
            .await;
        }
        let mut answers: std::collections::BTreeMap<String, usize> = Default::default();
        for round in 0..40 {
            let key = format!("k-race-{round}");
            let ran = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let requests: Vec<_> = (0..6)
                .map(|i| {
                    let (idem, body, key, ran) =
                        (nodes[i % 3].clone(), body.clone(), key.clone(), ran.clone());
                    tokio::spawn(async move {
                        let handler = async move {
                            ran.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            Ok(json_response(StatusCode::ACCEPTED, "{\"id\": 1}".into()))
                        };
                        idem.run("push", &headers(&key), &body, false, handler)
                            .await
                    })
                })
                .collect();
            for request in requests {
                let said = match request.await.unwrap() {
                    Ok(r) if r.headers().contains_key("idempotent-replayed") => {
                        format!("{} replayed", r.status())
                    }
                    Ok(r) => format!("{} ran", r.status()),
                    Err(e) if e.status == StatusCode::CONFLICT => "409".into(),
                    Err(e) => format!("{e}"),
                };
                *answers.entry(said).or_default() += 1;
            }
            assert_eq!(
                ran.load(std::sync::atomic::Ordering::SeqCst),
                1,
                "{key}: {answers:#?}"
            );
        }
        let others: Vec<_> = answers
            .keys()
            .filter(|a| !a.ends_with("ran") && !a.ends_with("replayed") && *a != "409")
            .collect();
        assert!(others.is_empty(), "{answers:#?}");
    }

    fn headers(key: &str) -> Parts {
        axum::http::Request::builder()
            .header(HEADER, key)
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    /// On the shared bucket, a request whose handler panics leaves no claim behind: the key is released, and a
    /// retry with it runs instead of being told for minutes that the first one still runs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_claim_is_released_when_its_request_panics() {
        use herald_spool::{JetStreamOptions, JetStreamSpool};
        if !herald_testkit::nats::available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let server = herald_testkit::nats::single(dir.path());
        let spool = JetStreamSpool::connect(JetStreamOptions::new(vec![server.url()], "idem"))
            .await
            .unwrap();
        let _pulled = spool.take_deliveries();
        // A key is claimed only once the node's heartbeat is written (else 503): waited for here, not within
        // the claim's own few seconds.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !spool.beating() {
            assert!(std::time::Instant::now() < deadline, "no heartbeat written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let idem = Arc::new(Idempotency::shared(spool));
        let body = Bytes::from_static(b"{\"tokens\": [\"aa\"]}");
        let failed = idem
            .run("push", &headers("k-panic"), &body, false, async {
                panic!("a handler failing")
            })
            .await;
        assert_eq!(
            failed.unwrap_err().status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let retry = idem
                .run("push", &headers("k-panic"), &body, false, async {
                    Ok(json_response(StatusCode::ACCEPTED, "{\"id\": 1}".into()))
                })
                .await;
            match retry {
                Ok(r) => {
                    assert_eq!(r.status(), StatusCode::ACCEPTED);
                    assert!(!r.headers().contains_key("idempotent-replayed"));
                    break;
                }
                Err(e) => {
                    assert_eq!(e.status, StatusCode::CONFLICT, "{e}");
                    assert!(
                        std::time::Instant::now() < deadline,
                        "the key stayed claimed after its request panicked: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// A JetStream spool of `replicas` on the NATS server `server` alone, connected, with its heartbeat written
    /// (a key is claimed only then).
    async fn beating_spool(
        server: &herald_testkit::nats::NatsServer,
        replicas: usize,
    ) -> Arc<JetStreamSpool> {
        let spool = spool_at(&server.url(), replicas, Duration::from_secs(2)).await;
        wait_beating(&spool).await;
        spool
    }

    /// A JetStream spool of `replicas` on the NATS server at `url`, connected, whose requests to NATS time out after
    /// `request_timeout`.
    async fn spool_at(
        url: &str,
        replicas: usize,
        request_timeout: Duration,
    ) -> Arc<JetStreamSpool> {
        use herald_spool::JetStreamOptions;
        let mut options = JetStreamOptions::new(vec![url.to_owned()], "idem");
        options.replicas = replicas;
        options.request_timeout = request_timeout;
        let spool = JetStreamSpool::connect(options).await.unwrap();
        let _pulled = spool.take_deliveries();
        spool
    }

    /// Waits for `spool`'s heartbeat to be written (30 s at most).
    async fn wait_beating(spool: &JetStreamSpool) {
        wait_for(
            Duration::from_secs(30),
            "the node's heartbeat to be written",
            || spool.beating(),
        )
        .await;
    }

    /// Waits for `done` to hold, `within` at most (naming `what` when it does not).
    async fn wait_for(within: Duration, what: &str, mut done: impl FnMut() -> bool) {
        let deadline = std::time::Instant::now() + within;
        while !done() {
            assert!(
                std::time::Instant::now() < deadline,
                "waited {within:?} for {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Has the stream `stream` led by another server than `name` (reached through `server`), asking its leader to
    /// step down if need be.
    async fn leader_elsewhere(server: &herald_testkit::nats::NatsServer, stream: &str, name: &str) {
        let client = async_nats::connect(server.url()).await.unwrap();
        let js = async_nats::jetstream::new(client.clone());
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let leader = match js.get_stream(stream).await {
                Ok(mut s) => s
                    .info()
                    .await
                    .ok()
                    .and_then(|i| i.cluster.as_ref().and_then(|c| c.leader.clone())),
                Err(_) => None,
            };
            match leader.as_deref() {
                Some(l) if l != name => return,
                Some(_) => {
                    let _ = client
                        .request(
                            format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"),
                            "".into(),
                        )
                        .await;
                }
                None => {}
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{stream} is still led by {name}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `request` with `key` until its handler runs (a `409` or `503` is answered while the first request's
    /// claim stands or NATS is coming back), within `within`: the handler's answer.
    async fn retry_until_it_runs<F, Fut>(
        idem: &Arc<Idempotency>,
        key: &str,
        body: &Bytes,
        within: Duration,
        handler: F,
    ) -> Response
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Response, ApiError>> + Send + 'static,
    {
        let deadline = std::time::Instant::now() + within;
        loop {
            match idem
                .run("push", &headers(key), body, false, handler())
                .await
            {
                Ok(r) => return r,
                Err(e) => {
                    assert!(
                        matches!(
                            e.status,
                            StatusCode::CONFLICT | StatusCode::SERVICE_UNAVAILABLE
                        ),
                        "{e}"
                    );
                    assert!(
                        std::time::Instant::now() < deadline,
                        "a retry with key {key} still refused after {within:?}: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// docs/api.md "Idempotent requests": a refused request may be retried with its key, and with the JetStream
    /// spool a retry gives what the refused one handed to NATS the same ids, so that the stream drops the copies.
    /// Here the NATS cluster has lost its quorum (two servers of three gone: the buckets have no leader, NATS
    /// answers no write) when two requests are refused, so neither can release its claim then: one that handed a
    /// notification to NATS (its ids to be recorded) and one refused before (its claim to be removed). Once the
    /// servers are back, both are released in the background: the retries run, well before the claims would be
    /// taken over as abandoned (`MAX_CLAIM_AGE`), and the first one's retry gives its notification the id the
    /// refused attempt gave it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refusal_released_while_nats_is_down_is_released_once_it_is_back() {
        use crate::outcomes::fixtures::notification;
        use crate::queue::message::IdGenerator;
        if !herald_testkit::nats::available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut servers = herald_testkit::nats::cluster(dir.path());
        let idem = Arc::new(Idempotency::shared(beating_spool(&servers[0], 3).await));
        let body = Bytes::from_static(b"{\"tokens\": [\"aa\"]}");
        let ids = IdGenerator::new(0x2A);
        const FINGERPRINT: u64 = 7;
        // Both requests hold their claims (their handlers run) before NATS goes, and are refused after.
        let claimed = Arc::new(tokio::sync::Barrier::new(3));
        let gone = Arc::new(tokio::sync::Barrier::new(3));
        let first_id = ids.next();
        let handed = {
            let (claimed, gone) = (claimed.clone(), gone.clone());
            async move {
                // The notification is built and handed to the spool, which NATS may have taken.
                let mut n = notification(first_id, "idem.example", 1);
                retry_ids::assign(FINGERPRINT, &mut n);
                retry_ids::current().unwrap().storing();
                claimed.wait().await;
                gone.wait().await;
                Err(ApiError::unavailable("NATS did not acknowledge in time"))
            }
        };
        let not_handed = {
            let (claimed, gone) = (claimed.clone(), gone.clone());
            async move {
                claimed.wait().await;
                gone.wait().await;
                Err(ApiError::bad_request("refused before anything was stored"))
            }
        };
        let a = {
            let (idem, body) = (idem.clone(), body.clone());
            tokio::spawn(async move {
                idem.run("push", &headers("k-ids"), &body, false, handed)
                    .await
            })
        };
        let b = {
            let (idem, body) = (idem.clone(), body.clone());
            tokio::spawn(async move {
                idem.run("push", &headers("k-none"), &body, false, not_handed)
                    .await
            })
        };
        claimed.wait().await;
        // The servers lost are the bucket's leader and another: the server left is a follower without a quorum,
        // which has no one to take a write (a lost leader's write could still be committed once it is back).
        leader_elsewhere(&servers[0], "KV_idem_idempotency", "n0").await;
        tokio::task::block_in_place(|| servers[1..].iter_mut().for_each(|s| s.kill()));
        gone.wait().await;
        let refused = a.await.unwrap().unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
        assert_eq!(
            b.await.unwrap().unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
        tokio::task::block_in_place(|| {
            for s in &mut servers[1..] {
                s.restart();
            }
            for s in &mut servers {
                s.wait_healthy(Duration::from_secs(60));
            }
        });
        let within = Duration::from_secs(60);
        let retried_id = Arc::new(Mutex::new(None));
        let reused = retry_until_it_runs(&idem, "k-ids", &body, within, || {
            let (retried_id, fresh) = (retried_id.clone(), ids.next());
            async move {
                let mut n = notification(fresh, "idem.example", 1);
                retry_ids::assign(FINGERPRINT, &mut n);
                *retried_id.lock().unwrap() = Some(n.id);
                Ok(json_response(StatusCode::ACCEPTED, "{}".into()))
            }
        })
        .await;
        assert_eq!(reused.status(), StatusCode::ACCEPTED);
        assert_eq!(
            *retried_id.lock().unwrap(),
            Some(first_id),
            "the retry gave the notification a new id: what NATS took of the refused request would be sent again"
        );
        let fresh = retry_until_it_runs(&idem, "k-none", &body, within, || async {
            Ok(json_response(StatusCode::ACCEPTED, "{}".into()))
        })
        .await;
        assert_eq!(fresh.status(), StatusCode::ACCEPTED);
    }

    /// A client that hangs up while its request is being made durable: the request runs on, and its answer is
    /// remembered, so the client's retry replays it instead of queueing the notifications again.
    #[tokio::test]
    async fn a_request_whose_client_hangs_up_is_still_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(OutcomeStore::open(dir.path()).unwrap());
        let idem = Arc::new(Idempotency::local(store));
        let body = Bytes::from_static(b"{\"tokens\": [\"aa\"]}");
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let (ran_tx, mut ran_rx) = tokio::sync::mpsc::unbounded_channel();
        let handle = async move {
            let _ = gate_rx.await;
            let _ = ran_tx.send(());
            Ok(json_response(StatusCode::ACCEPTED, "{\"id\": 1}".into()))
        };
        let first = {
            let idem = idem.clone();
            let body = body.clone();
            tokio::spawn(
                async move { idem.run("push", &headers("k1"), &body, false, handle).await },
            )
        };
        // Once it runs, the key is taken.
        let claimed = || match &idem.keys {
            Keys::Local { running, .. } => !running.lock().unwrap().is_empty(),
            Keys::Shared { .. } => unreachable!(),
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !claimed() {
            assert!(
                std::time::Instant::now() < deadline,
                "the key was never claimed"
            );
            tokio::task::yield_now().await;
        }
        let again = idem
            .run("push", &headers("k1"), &body, false, async {
                panic!("a second request ran while the first held its key")
            })
            .await;
        assert_eq!(again.unwrap_err().status, StatusCode::CONFLICT);
        // The client hangs up (its request future is dropped), then the request completes.
        first.abort();
        let _ = first.await;
        gate_tx.send(()).unwrap();
        ran_rx.recv().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let retry = idem
                .run("push", &headers("k1"), &body, false, async {
                    panic!("the retry ran again")
                })
                .await;
            match retry {
                Ok(r) => {
                    assert_eq!(r.status(), StatusCode::ACCEPTED);
                    assert!(r.headers().contains_key("idempotent-replayed"));
                    break;
                }
                Err(e) => {
                    assert_eq!(e.status, StatusCode::CONFLICT, "{e}");
                    assert!(std::time::Instant::now() < deadline, "never remembered");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    /// A claim write whose outcome NATS did not say may be stored while the entry is at the revision it expected
    /// (none: a create); an entry moved past it means it never will be. An older revision, or no entry where the
    /// write found one, may be a replica behind: the write is looked for still. Only a claim carrying the number
    /// of a write looked for is taken for an orphan.
    #[test]
    fn a_claim_write_is_looked_for_while_the_entry_is_as_it_found_it() {
        let digest = [7u8; 32];
        let entry = |revision: u64, value: Vec<u8>| herald_spool::ClaimEntry {
            revision,
            value: value.into(),
            stored_ms: 1_800_000_000_000,
        };
        let other = entry(42, SharedRecord::claim(&digest, "node-b", 9));
        assert!(may_land(None, None));
        assert!(may_land(None, Some(41)));
        assert!(!may_land(Some(&other), None));
        assert!(may_land(Some(&other), Some(42)));
        assert!(may_land(Some(&other), Some(43)));
        assert!(!may_land(Some(&other), Some(41)));
        let until = tokio::time::Instant::now();
        let write = |nonce, expected| Unsettled {
            nonce,
            expected,
            until,
        };
        let own = entry(42, SharedRecord::claim(&digest, "node-a", 5));
        assert_eq!(orphan_claim(Some(&own), &[write(5, None)]), Some(42));
        assert_eq!(
            orphan_claim(Some(&own), &[write(6, None), write(5, Some(40))]),
            Some(42)
        );
        assert_eq!(orphan_claim(Some(&own), &[write(6, None)]), None);
        assert_eq!(orphan_claim(None, &[write(5, None)]), None);
        let refused = entry(42, SharedRecord::refused(1000, &[(3, MessageId(4))]));
        assert_eq!(orphan_claim(Some(&refused), &[write(5, None)]), None);
    }

    /// docs/api.md "Idempotent requests": a node that cannot reach NATS refuses a request with a key at once and
    /// says why, as it refuses one without a key: only a node starting up waits for its first heartbeat. Here the
    /// node's NATS cluster first loses its quorum (the node stays connected, but NATS takes no heartbeat of it),
    /// then the node's own server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_cut_off_from_nats_refuses_a_key_at_once_saying_why() {
        if !herald_testkit::nats::available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut servers = herald_testkit::nats::cluster(dir.path());
        let spool = spool_at(&servers[0].url(), 3, Duration::from_secs(2)).await;
        // Made before the first heartbeat: the node learns of it by itself.
        let idem = Arc::new(Idempotency::shared(spool.clone()));
        wait_beating(&spool).await;
        let body = Bytes::from_static(b"{\"tokens\": [\"aa\"]}");
        let accepted = || async { Ok(json_response(StatusCode::ACCEPTED, "{}".into())) };
        retry_until_it_runs(&idem, "k-first", &body, Duration::from_secs(30), accepted).await;
        let refused = |key: &'static str| {
            let (idem, body) = (idem.clone(), body.clone());
            async move {
                idem.run("push", &headers(key), &body, false, async {
                    panic!("a request ran while its node was cut off from NATS")
                })
                .await
                .unwrap_err()
            }
        };
        tokio::task::block_in_place(|| servers[1..].iter_mut().for_each(|s| s.kill()));
        wait_for(Duration::from_secs(60), "the heartbeat to fail", || {
            !spool.beating()
        })
        .await;
        let e = refused("k-no-quorum").await;
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE, "{e}");
        assert!(
            e.message
                .contains("NATS does not take this node's heartbeat now"),
            "{e}"
        );
        tokio::task::block_in_place(|| servers[0].kill());
        wait_for(Duration::from_secs(60), "the connection to end", || {
            !spool.connected()
        })
        .await;
        let e = refused("k-no-nats").await;
        assert_eq!(e.status, StatusCode::SERVICE_UNAVAILABLE, "{e}");
        assert!(
            e.message
                .starts_with("Idempotency-Key \"k-no-nats\": NATS unreachable: "),
            "{e}"
        );
    }

    /// A TCP proxy to the NATS server on `port` that holds what its clients send from the moment it holds `pattern`
    /// (once), until `release` turns true; `holding` turns true when it starts to. Made by [`HoldingProxy::cut_off`],
    /// it then holds what any client sends, on any connection (a client connecting again included).
    struct HoldingProxy {
        port: u16,
        holding: tokio::sync::watch::Receiver<bool>,
        release: tokio::sync::watch::Sender<bool>,
    }

    impl HoldingProxy {
        async fn start(port: u16, pattern: Vec<u8>) -> HoldingProxy {
            HoldingProxy::listen(port, pattern, false).await
        }

        /// A proxy that cuts its clients off from NATS once one sends `pattern`: nothing they send goes through
        /// from then on, until `release`.
        async fn cut_off(port: u16, pattern: Vec<u8>) -> HoldingProxy {
            HoldingProxy::listen(port, pattern, true).await
        }

        async fn listen(port: u16, pattern: Vec<u8>, hold_all: bool) -> HoldingProxy {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let proxy_port = listener.local_addr().unwrap().port();
            let (holding_tx, holding) = tokio::sync::watch::channel(false);
            let (release, released) = tokio::sync::watch::channel(false);
            let holding_tx = Arc::new(holding_tx);
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                    else {
                        continue;
                    };
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                    });
                    let (holding_tx, mut released, pattern) =
                        (holding_tx.clone(), released.clone(), pattern.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 1 << 16];
                        let mut tail: Vec<u8> = Vec::new();
                        loop {
                            let n = match client_read.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => n,
                            };
                            if !*holding_tx.borrow() {
                                tail.extend_from_slice(&buf[..n]);
                                if tail.windows(pattern.len()).any(|w| w == pattern) {
                                    holding_tx.send_replace(true);
                                    let _ = released.wait_for(|r| *r).await;
                                }
                                let keep = tail.len().saturating_sub(pattern.len());
                                tail.drain(..keep);
                            } else if hold_all {
                                let _ = released.wait_for(|r| *r).await;
                            }
                            if server_write.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    });
                }
            });
            HoldingProxy {
                port: proxy_port,
                holding,
                release,
            }
        }
    }

    /// docs/api.md "Idempotent requests": a request refused with `503` because NATS did not answer its claim
    /// (here its create is held on the way to NATS past the request's timeout, and stored once let through, as on a
    /// link that loses and delays packets) leaves no claim behind: the node removes the claim NATS stored after the
    /// answer, and a retry with the key through another node runs, rather than being answered `409` (still
    /// running) until the claim is 10 minutes old.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_stored_after_its_request_was_refused_is_released() {
        if !herald_testkit::nats::available() {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let server = herald_testkit::nats::single(dir.path());
        let key = shared_key("push", "k-late");
        let pattern = format!("PUB $KV.idem_idempotency.{key} ").into_bytes();
        let mut proxy = HoldingProxy::start(server.port, pattern).await;
        let a = spool_at(
            &format!("nats://127.0.0.1:{}", proxy.port),
            1,
            Duration::from_secs(1),
        )
        .await;
        wait_beating(&a).await;
        let node_a = Arc::new(Idempotency::shared(a));
        let node_b = Arc::new(Idempotency::shared(beating_spool(&server, 1).await));
        let body = Bytes::from_static(b"{\"tokens\": [\"aa\"]}");
        let accepted = || async { Ok(json_response(StatusCode::ACCEPTED, "{}".into())) };
        // The bucket is made and opened on node A first.
        retry_until_it_runs(&node_a, "k-first", &body, Duration::from_secs(30), accepted).await;
        let refused = node_a
            .run("push", &headers("k-late"), &body, false, async {
                panic!("a request ran whose claim NATS did not acknowledge")
            })
            .await
            .unwrap_err();
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{refused}");
        assert!(
            *proxy.holding.borrow_and_update(),
            "the create never went out: {refused}"
        );
        assert!(refused.message.contains("creating"), "{refused}");
        proxy.release.send_replace(true);
        // NATS stores the claim now (it is there, or removed already).
        let client = async_nats::connect(server.url()).await.unwrap();
        let kv = async_nats::jetstream::new(client)
            .get_key_value("idem_idempotency")
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while kv.entry(&key).await.unwrap().is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "the held create was never stored"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ran =
            retry_until_it_runs(&node_b, "k-late", &body, Duration::from_secs(60), accepted).await;
        assert_eq!(ran.status(), StatusCode::ACCEPTED);
        assert!(!ran.headers().contains_key("idempotent-replayed"));
    }

    /// A JetStream spool on the NATS server at `url` named `node`, connected, its heartbeat written.
    async fn node_spool(url: &str, node: &str) -> Arc<JetStreamSpool> {
        use herald_spool::JetStreamOptions;
        let mut options = JetStreamOptions::new(vec![url.to_owned()], "idem");
        options.node = node.to_owned();
        options.request_timeout = Duration::from_secs(1);
        let spool = JetStreamSpool::connect(options).await.unwrap();
        let _pulled = spool.take_deliveries();
        wait_beating(&spool).await;
        spool
    }

    /// The last sequence number of the notification stream: each notification it took moved it on by one, a copy
    /// it dropped as a duplicate did not.
    async fn last_sequence(url: &str) -> u64 {
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        let mut stream = js.get_stream("idem").await.unwrap();
        stream.info().await.unwrap().state.last_sequence
    }

    /// A request's handler as the routes run it on the JetStream spool: builds notifications for `tokens`
    /// (submission fingerprints) with fresh ids from `fresh`, gives them the ids a request before it left, commits
    /// them as one batch (`retry_ids::within`, then the spool bridge), and answers the ids they went out with.
    /// With `cut`, the node is then cut off from NATS (a publish the node's `HoldingProxy` holds on).
    async fn publish_and_answer(
        spool: Arc<JetStreamSpool>,
        fresh: Arc<crate::queue::message::IdGenerator>,
        tokens: u8,
        cut: Option<async_nats::Client>,
    ) -> Result<Response, ApiError> {
        use crate::inbound::accept::{Durable, NoRoom, Unavailable};
        use crate::outcomes::fixtures::notification;
        let bridge = crate::spool::SpoolBridge::shared(spool);
        let batch: Vec<_> = (0..tokens)
            .map(|token| {
                let mut n = notification(fresh.next(), "idem.example", token);
                retry_ids::assign(u64::from(token), &mut n);
                n
            })
            .collect();
        let stored = async {
            bridge
                .persist(&batch)
                .await
                .map_err(|e| NoRoom::Now(Unavailable::Spool(e)))
        };
        retry_ids::within(retry_ids::current(), stored)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        if let Some(client) = cut {
            // Not flushed: the flush's ping would be held as well.
            client
                .publish("herald.test.cut", Bytes::new())
                .await
                .unwrap();
        }
        let ids: Vec<String> = batch.iter().map(|n| n.id.to_string()).collect();
        Ok(json_response(StatusCode::ACCEPTED, ids.join(",")))
    }

    /// docs/scale-out.md "Idempotency keys": a node cut off from NATS after it handed a keyed request's
    /// notifications to the stream but before it stored the answer (its heartbeat then lapses, its claim stays).
    /// A retry through another node takes the claim over, as its node is gone, and gives the notifications the ids
    /// the first request recorded in its claim before publishing: the answer names the same ids, and the stream
    /// drops every copy, so nothing is delivered twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_key_taken_over_from_a_vanished_node_reuses_the_ids_it_published() {
        use crate::queue::message::IdGenerator;
        if !herald_testkit::nats::available() {
            return;
        }
        const TOKENS: u8 = 8;
        let dir = tempfile::tempdir().unwrap();
        let server = herald_testkit::nats::single(dir.path());
        let mut proxy = HoldingProxy::cut_off(server.port, b"PUB herald.test.cut".to_vec()).await;
        let a = node_spool(&format!("nats://127.0.0.1:{}", proxy.port), "node-a").await;
        let node_a = Arc::new(Idempotency::shared(a.clone()));
        let node_b = Arc::new(Idempotency::shared(
            node_spool(&server.url(), "node-b").await,
        ));
        let body = Bytes::from_static(b"{\"tokens\": [\"aa\"]}");
        let accepted = || async { Ok(json_response(StatusCode::ACCEPTED, "{}".into())) };
        // The bucket is made and opened first.
        retry_until_it_runs(&node_a, "k-first", &body, Duration::from_secs(30), accepted).await;

        let before = last_sequence(&server.url()).await;
        let cut = Some(a.context().client());
        let first = node_a
            .run(
                "push",
                &headers("k-takeover"),
                &body,
                false,
                publish_and_answer(a.clone(), Arc::new(IdGenerator::new(0xA)), TOKENS, cut),
            )
            .await
            .unwrap();
        assert!(
            *proxy.holding.borrow_and_update(),
            "node A was never cut off"
        );
        let first = axum::body::to_bytes(first.into_body(), usize::MAX)
            .await
            .unwrap();
        let published = last_sequence(&server.url()).await;
        assert_eq!(published - before, u64::from(TOKENS));

        let b = node_b.clone();
        let fresh = Arc::new(IdGenerator::new(0xB));
        let retried = retry_until_it_runs(
            &node_b,
            "k-takeover",
            &body,
            Duration::from_secs(90),
            || {
                let spool = match &b.keys {
                    Keys::Shared { spool, .. } => spool.clone(),
                    Keys::Local { .. } => unreachable!(),
                };
                publish_and_answer(spool, fresh.clone(), TOKENS, None)
            },
        )
        .await;
        assert_eq!(retried.status(), StatusCode::ACCEPTED);
        assert!(
            !retried.headers().contains_key("idempotent-replayed"),
            "node A's answer was stored: the test did not cut it off before"
        );
        let retried = axum::body::to_bytes(retried.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&retried),
            String::from_utf8_lossy(&first),
            "the retry gave the notifications new ids: what node A published would be sent again"
        );
        assert_eq!(
            last_sequence(&server.url()).await,
            published,
            "the stream took copies of notifications it held already"
        );
        proxy.release.send_replace(true);
    }
}
