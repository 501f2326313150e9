//! The JetStream backend (`spool_backend = jetstream`): several herald nodes share one NATS JetStream stream as
//! their spool (docs/scale-out.md).
//!
//! It owns the NATS connection, the creation (or the check) of the stream and of its shared durable pull consumer,
//! the publishing of accepted notifications (one message each, with a message id for JetStream's duplicate window:
//! `<node>.<key>`, or for a request that may be retried after a refusal `<dedup>.<key>`, the same on every node, so
//! that the copies a retry publishes of the notifications the stream took before the refusal are dropped; all
//! publishes of a batch in flight at once, the batch acknowledged only once every publish ack came back), the
//! pulling of notifications for this node ([`JetStreamSpool::take_deliveries`]), the acks on final outcomes, the
//! in-progress acks that keep a held notification from being redelivered to another node, and the stream's figures.
//!
//! Unlike the embedded spool it has nothing to recover at start: what a node did not finish is redelivered by
//! JetStream, to whichever node pulls next, once the consumer's ack wait has passed.

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::FromConsumer;
use async_nats::jetstream::{self, AckKind, consumer, stream};
use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::{FuturesOrdered, FuturesUnordered};

use crate::error::SpoolError;
use crate::key::SpoolKey;
use crate::nodes::{self, ClusterView, NodeBeat};
use crate::record::{DecodeError, StoredNotification};
use crate::retry_state::{ReadState, RetryBook, RetryState, Slot, retries_at};
use crate::spool::{RecoveryReport, Spool, SpoolFuture, SpoolStats};

/// Publishes awaiting their ack, over all the batches of a node. A batch takes its share at once (a larger one goes
/// in parts of this size), so concurrent batches never hold part of the room each while waiting for the rest.
pub const MAX_PUBLISHES_IN_FLIGHT: usize = 8192;

/// A message pulled while another one of the same id is held, and whose content differs (two notifications under
/// one id), goes back to the stream for this long: it comes again once the held one is finished.
pub const SAME_ID_DELAY: Duration = Duration::from_secs(5);

/// A pulled notification this node cannot read (a newer record format or field value, from a newer herald during
/// a rolling upgrade) goes back to the stream for this long, for a node that reads it; it is never dropped.
pub const NEWER_FORMAT_DELAY: Duration = Duration::from_secs(60);

/// A pull asks for this many messages at most (fewer when the node has less room).
pub const MAX_PULL_BATCH: usize = 512;

/// How long the server keeps a pull open while it has nothing to deliver. A stopping node waits for the pull under
/// way to end before it gives back what it holds ([`Spool::close`]): this bounds that wait.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

/// Pulls failing one after the other (no responders: the consumer was deleted) before the node sets the stream and
/// the consumer up again.
const PULL_FAILURES_BEFORE_SETUP: u32 = 3;

/// Final acks awaiting the server's answer at most; past it further final acks wait their turn in [`ack_loop`],
/// while the in-progress acks and naks queued behind them go on.
const MAX_ACKS_IN_FLIGHT: usize = 4096;

/// The pause before a final ack (or term) the server did not confirm is sent again; it doubles with each attempt,
/// up to [`FINAL_ACK_MAX_PAUSE`].
const FINAL_ACK_FIRST_PAUSE: Duration = Duration::from_millis(500);

/// The longest pause between two attempts of a final ack.
const FINAL_ACK_MAX_PAUSE: Duration = Duration::from_secs(2);

/// A final ack is sent again until the server confirms it, for the consumer's ack wait and never less than this: a
/// NATS leader election (the server leading the consumer died) answers "no responders" for several seconds, up to
/// some ten.
const FINAL_ACK_MIN_PATIENCE: Duration = Duration::from_secs(30);

/// Notifications finished lately that the node remembers (their stream sequences), at most: a redelivery of one of
/// them (its final ack was lost) is acked again, not delivered again ([`Finished`]).
pub const MAX_RECENTLY_FINISHED: usize = 100_000;

/// How often at most a failure that lasts (a heartbeat not written, a consumer that does not fit) is reported again.
const REPORT_EVERY: Duration = Duration::from_secs(60);

/// Before notifications go back to the stream without an attempt at a stop, the retry counts written for them
/// ([`crate::retry_state`]) are waited for this long at most by default ([`JetStreamOptions::retry_writes_wait`]):
/// the node that pulls them next reads them.
pub const RETRY_WRITES_WAIT: Duration = Duration::from_secs(2);

/// Reads of the bucket of retry counts under way at once for the messages of a pull; the messages are handed over
/// in the order they came.
pub const READS_AT_ONCE: usize = 64;

/// The reads of the bucket of retry counts for the messages of a pull take this long at most, and never more than
/// a third of the consumer's ack wait: the messages not read by then are counted from their
/// delivery count (with a warning), so that the end of a large batch is held, its in-progress acks going, well
/// before the ack wait hands it to another node.
pub const READS_BUDGET: Duration = Duration::from_secs(10);

/// How to reach NATS and which stream to use.
#[derive(Debug, Clone)]
pub struct JetStreamOptions {
    /// One or more `nats://host:port` URLs (a cluster's servers).
    pub servers: Vec<String>,
    /// Stream name; its subject is `<stream>.notifications`.
    pub stream: String,
    /// 1 or 3.
    pub replicas: usize,
    /// Name of the shared durable consumer.
    pub consumer: String,
    pub token: Option<String>,
    pub credentials: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Limit on the connection attempt at start.
    pub connect_timeout: Duration,
    /// Limit on a publish ack (and on other JetStream requests).
    pub request_timeout: Duration,
    /// After this long without an ack or an in-progress ack, a pulled notification goes to another node.
    pub ack_wait: Duration,
    /// Notifications pulled but not yet acked, over all nodes (the consumer's `max_ack_pending`); 0 (or less): no
    /// limit. Those handed back with a delay ([`JetStreamSpool::release`]) count toward it until they are delivered
    /// again: a limit they fill holds up every node's pulls, whatever the domain ([`consumer_max_ack_pending`]).
    pub max_ack_pending: i64,
    /// Notifications this node holds unfinished at most; it stops pulling at this many.
    pub max_held: usize,
    /// Notifications this node parks at most besides `max_held` (held without being sent, their queue paused or
    /// without a route); above, its queues hand the newest back ([`JetStreamSpool::park`]).
    pub max_parked: usize,
    /// The duplicate window of message ids.
    pub duplicate_window: Duration,
    /// Name of this node in the message ids it publishes and in the connection name.
    pub node: String,
    /// How long notifications given back without an attempt at a stop (or pulled and not handed over) wait at most
    /// for the writes of their retry counts ([`crate::retry_state`]) before they go; one given back while the node
    /// runs ([`JetStreamSpool::release`]) waits at most this or `request_timeout`, whichever is longer.
    pub retry_writes_wait: Duration,
}

impl JetStreamOptions {
    pub fn new(servers: Vec<String>, stream: &str) -> Self {
        JetStreamOptions {
            servers,
            stream: stream.to_owned(),
            replicas: 1,
            consumer: "herald".to_owned(),
            token: None,
            credentials: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 0,
            max_held: 10_000,
            max_parked: 10_000,
            duplicate_window: Duration::from_secs(120),
            node: default_node_name(),
            retry_writes_wait: RETRY_WRITES_WAIT,
        }
    }

    fn subject(&self) -> String {
        format!("{}.notifications", self.stream)
    }
}

/// Host name and process id: unique among live nodes, so message ids of two nodes never collide.
pub fn default_node_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "herald".to_owned());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!("{host}-{}-{nanos:x}", std::process::id())
}

fn nats_error(context: &'static str, e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Storage {
        context,
        detail: format!("NATS: {e}"),
        temporary: true,
    }
}

/// As [`nats_error`], for an error of the NATS client, said as [`nats_failure_text`] says it.
fn nats_request_error(context: &'static str, e: &(dyn std::error::Error + 'static)) -> SpoolError {
    nats_error(context, nats_failure_text(e))
}

/// What a NATS request that failed for the moment says of the stream or bucket it was for, where the client's own
/// words mislead ([`nats_failure_text`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// A publish that no server took (the client's "no stream found for given subject"): the stream has no leader
    /// (its servers are electing one, after a partition or a lost server), or is not there yet.
    NoLeader,
    /// A read (a direct get, a request to the JetStream API) that no server took: the bucket or stream is not
    /// available yet (being created on a fresh cluster, or its leader being elected).
    NotAvailable,
    /// JetStream answered that its cluster cannot handle the request now (error 10008, temporarily unavailable, or
    /// 10009, not the leader): a leader election under way.
    Electing,
}

/// Error codes of the JetStream API that say the cluster cannot answer for now, as after a partition.
const ELECTING_CODES: [u64; 2] = [
    jetstream::ErrorCode::CLUSTER_NOT_AVAILABLE.0,
    jetstream::ErrorCode::CLUSTER_NOT_LEADER.0,
];

impl Unanswered {
    /// What `e` (or an error it stems from) says, when it is one of these.
    pub fn of(e: &(dyn std::error::Error + 'static)) -> Option<Unanswered> {
        let chain = std::iter::successors(Some(e), |e| e.source());
        for cause in chain {
            if let Some(publish) = cause.downcast_ref::<jetstream::context::PublishError>()
                && publish.kind() == jetstream::context::PublishErrorKind::StreamNotFound
            {
                return Some(Unanswered::NoLeader);
            }
            if let Some(get) = cause.downcast_ref::<jetstream::stream::DirectGetError>()
                && let jetstream::stream::DirectGetErrorKind::ErrorResponse(status, _) = get.kind()
                && status == async_nats::StatusCode::NO_RESPONDERS
            {
                return Some(Unanswered::NotAvailable);
            }
            if let Some(request) = cause.downcast_ref::<async_nats::RequestError>()
                && request.kind() == async_nats::RequestErrorKind::NoResponders
            {
                return Some(Unanswered::NotAvailable);
            }
            if let Some(api) = cause.downcast_ref::<jetstream::Error>()
                && ELECTING_CODES.contains(&api.error_code().0)
            {
                return Some(Unanswered::Electing);
            }
        }
        // Errors whose kind holds the API's answer (not a cause) show its code in their text.
        let text = e.to_string();
        ELECTING_CODES
            .iter()
            .any(|code| text.contains(&format!("error code {code})")))
            .then_some(Unanswered::Electing)
    }

    /// What to tell a sender and an operator.
    pub fn explain(self) -> &'static str {
        match self {
            Unanswered::NoLeader => {
                "no NATS server took the publish (no responders): the stream has no leader now (the NATS cluster is \
                 electing one) or is not available yet; retry later"
            }
            Unanswered::NotAvailable => {
                "no NATS server answered for the bucket or stream (no responders): it is not available yet (being \
                 created, or its leader being elected); retry later"
            }
            Unanswered::Electing => {
                "the stream has no leader now (the NATS cluster is electing one); retry later"
            }
        }
    }
}

/// The credentials a server URL carries, percent-decoded: a user with a password, or a user alone, which NATS
/// takes for a token.
#[derive(Debug, PartialEq, Eq)]
enum UrlAuth {
    UserPassword { user: String, password: String },
    Token(String),
}

impl UrlAuth {
    fn of(server: &async_nats::ServerAddr) -> Option<UrlAuth> {
        let user = percent_decoded(server.username()?);
        Some(match server.password() {
            Some(password) => UrlAuth::UserPassword {
                user,
                password: percent_decoded(password),
            },
            None => UrlAuth::Token(user),
        })
    }
}

/// `text` with its `%XX` escapes decoded (a URL's user and password are kept encoded); an escape that is not two
/// hex digits, or bytes that are not UTF-8, are kept as they are.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

/// The text of a failed NATS request: the client's own, but for the failures [`Unanswered`] knows, which are said
/// for what they mean (the stream without a leader, the bucket not available yet) rather than as the client says
/// them ("no stream found for given subject" for a stream that exists but has no leader); the JetStream API's own
/// answer is kept after the explanation.
pub fn nats_failure_text(e: &(dyn std::error::Error + 'static)) -> String {
    match Unanswered::of(e) {
        Some(Unanswered::Electing) => format!("{} ({e})", Unanswered::Electing.explain()),
        Some(other) => other.explain().to_owned(),
        None => e.to_string(),
    }
}

/// Figures of the stream and its consumer, refreshed in the background.
#[derive(Debug, Default)]
struct StreamFigures {
    messages: AtomicU64,
    bytes: AtomicU64,
    ack_pending: AtomicU64,
    redelivered: AtomicU64,
    pending: AtomicU64,
    /// The oldest message in the stream, Unix milliseconds; 0 when the stream is empty.
    oldest_ms: AtomicU64,
    /// The stream's servers and the nodes' heartbeats.
    view: Mutex<ClusterView>,
    /// Whether the claims on what this node holds are alive, read without a lock (kept beside the figures, which
    /// are built with the spool).
    claims: Claims,
}

/// What the delivery path reads, without a lock, to know that this node still owns what it holds
/// ([`Spool::lapsed`]); and how many notifications it found it no longer owned.
#[derive(Debug)]
struct Claims {
    /// The instant `alive_until_ms` counts from.
    epoch: Instant,
    /// Milliseconds after `epoch` until which the claim on every held notification is alive ([`Held::alive_until`]);
    /// written under the `held` lock. 0 while some lapsed notifications are not yet forgotten.
    alive_until_ms: AtomicU64,
    /// Held notifications whose claim lapsed, since start.
    lapsed: AtomicU64,
}

impl Default for Claims {
    fn default() -> Self {
        Claims {
            epoch: Instant::now(),
            alive_until_ms: AtomicU64::new(0),
            lapsed: AtomicU64::new(0),
        }
    }
}

impl Claims {
    /// Publishes what `held` says now; called under its lock.
    fn publish<M>(&self, held: &Held<M>, span: Duration, now: Instant) {
        let ms = match held.alive_until(span, now) {
            None => u64::MAX,
            Some(until) => duration_ms(until.saturating_duration_since(self.epoch)),
        };
        self.alive_until_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether every held claim is alive now, as last published: one load and a clock read.
    fn all_alive(&self) -> bool {
        duration_ms(self.epoch.elapsed()) < self.alive_until_ms.load(Ordering::Relaxed)
    }
}

/// The spool on a JetStream stream shared by several nodes.
pub struct JetStreamSpool {
    client: async_nats::Client,
    ctx: jetstream::Context,
    options: JetStreamOptions,
    subject: String,
    /// Pulled notifications this node holds until their final outcome, by their id (the key the accepting node
    /// gave them), each with every message JetStream handed this node for it.
    held: Arc<Mutex<Held<jetstream::Message>>>,
    next_local: AtomicU64,
    deliveries: Mutex<Option<tokio::sync::mpsc::Receiver<StoredNotification>>>,
    /// The stream and the consumer are set up.
    ready: AtomicBool,
    /// Whether JetStream answers through the server the client is connected to, as the liveness probe last found
    /// (`crate::liveness`): a server cut off from its cluster answers the client but not for JetStream.
    jetstream_health: crate::liveness::JetStreamHealth,
    /// The node stops: set under the `held` lock, so that every pulled message is either held (and given back by
    /// [`Spool::close`]) or kept by the pull loop (and given back once its pull ended).
    closed: AtomicBool,
    /// Said when the node stops, to a pull loop waiting for room in the deliveries' queue.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Once the node stops: until when the pull under way may read the bucket of retry counts for what it gives
    /// back (one read's limit after the stop began), so that the stop is not held up by them.
    stop_reads_until: Mutex<Option<tokio::time::Instant>>,
    /// Held by the pull loop while a pull is open: a stop waits for the pull under way to end before it gives
    /// anything back ([`Spool::close`]).
    pull_open: Arc<tokio::sync::Mutex<()>>,
    figures: StreamFigures,
    append_calls: AtomicU64,
    appended: AtomicU64,
    failed_commits: AtomicU64,
    removed: AtomicU64,
    rescheduled: AtomicU64,
    pulled: AtomicU64,
    redelivered_here: AtomicU64,
    handed_back: AtomicU64,
    /// Held notifications whose queue holds them back for now (paused, no route): they take no pull room, up to
    /// `max_parked` of them ([`JetStreamSpool::park`]).
    parked: std::sync::atomic::AtomicI64,
    last_error: Mutex<Option<SpoolError>>,
    /// Why the NATS client's last attempt to connect failed, while it has no connection ([`ConnectFailure`]).
    connect_failure: ConnectFailure,
    /// Acks go out in order from one task ([`ack_loop`]), not a task each.
    acks: tokio::sync::mpsc::UnboundedSender<AckJob>,
    /// The retry counts of the notifications, shared by the nodes ([`crate::retry_state`]).
    retry_book: RetryBook,
    /// Room for publishes awaiting their ack ([`MAX_PUBLISHES_IN_FLIGHT`]).
    publish_permits: Arc<tokio::sync::Semaphore>,
    started_ms: u64,
    /// The heartbeat bucket, once open (this node's entry is deleted from it on close).
    beats: Mutex<Option<async_nats::jetstream::kv::Store>>,
    /// When the last heartbeat written was sent (taken just before it went out); `None` until the first one is
    /// written and once one fails.
    last_beat: Mutex<Option<Instant>>,
    /// This node answers the other nodes' status lookups (said in its heartbeat).
    serves_lookups: AtomicBool,
    /// In-progress acks queued and not yet sent: the keep-alive queues a round only once the last one went out.
    progress_queued: Arc<AtomicU64>,
    /// In-progress acks the NATS client refused, since start: a round with one of them renews nothing
    /// ([`RoundOut`]).
    progress_failed: Arc<AtomicU64>,
    /// The consumer's ack wait as the server has it (milliseconds), which may differ from `options.ack_wait` when
    /// another node changed it: in-progress acks go every third of it, and final acks are sent again for at least
    /// that long ([`final_ack`]).
    consumer_ack_wait_ms: Arc<AtomicU64>,
    /// The stream's duplicate window as the server has it (milliseconds; `options.duplicate_window` until the
    /// stream is read).
    duplicate_window_ms: AtomicU64,
    /// Publishes the stream answered as duplicates of a message it took within its duplicate window (dropped).
    duplicates: Arc<AtomicU64>,
    /// What the last check of the stream and the consumer found that does not fit herald ([`refresh_figures`]).
    unfit: Mutex<Unfit>,
}

/// What does not fit herald in the stream and in the consumer, as last checked; `None` where it fits.
#[derive(Debug, Default)]
struct Unfit {
    stream: Option<String>,
    consumer: Option<String>,
}

impl JetStreamSpool {
    /// Connects, creates the stream and the consumer when missing (refusing a stream with incompatible settings),
    /// and starts pulling. Needs a Tokio runtime.
    pub async fn connect(options: JetStreamOptions) -> Result<Arc<JetStreamSpool>, SpoolError> {
        if options.servers.is_empty() {
            return Err(SpoolError::Config(
                "spool_nats_url is empty: name at least one NATS server".into(),
            ));
        }
        if options.replicas != 1 && options.replicas != 3 {
            return Err(SpoolError::Config(format!(
                "spool_nats_replicas = {}: use 1 or 3",
                options.replicas
            )));
        }
        let mut connect = async_nats::ConnectOptions::new()
            .name(format!("herald {}", options.node))
            .connection_timeout(options.connect_timeout)
            .request_timeout(Some(options.request_timeout))
            // The client's own pings (two unanswered, and the third ends the connection) go out only after this
            // long without a command, so they end a connection too blocked to take commands (the probe's request
            // to reconnect included) within three of them; a working one is watched by the liveness probe
            // (`crate::liveness`) instead.
            .ping_interval(crate::liveness::CLIENT_PING_INTERVAL)
            .max_reconnects(None::<usize>);
        let connect_failure = ConnectFailure::default();
        connect = connect.event_callback({
            let failure = connect_failure.clone();
            move |event| {
                failure.note(&event);
                std::future::ready(())
            }
        });
        if let Some(token) = &options.token {
            connect = connect.token(token.clone());
        }
        if let Some(path) = &options.credentials {
            connect = connect.credentials_file(path).await.map_err(|e| {
                SpoolError::Config(format!("spool_nats_credentials {}: {e}", path.display()))
            })?;
        }
        if let Some(ca) = &options.tls_ca {
            connect = connect.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&options.tls_cert, &options.tls_key) {
            (Some(cert), Some(key)) => {
                connect = connect.add_client_certificate(cert.clone(), key.clone());
            }
            (None, None) => {}
            _ => {
                return Err(SpoolError::Config(
                    "spool_nats_tls_cert and spool_nats_tls_key go together".into(),
                ));
            }
        }
        let servers: Vec<async_nats::ServerAddr> = options
            .servers
            .iter()
            .map(|s| {
                s.parse::<async_nats::ServerAddr>()
                    .map_err(|e| SpoolError::Config(format!("spool_nats_url {s:?}: {e}")))
            })
            .collect::<Result<_, _>>()?;
        // The client sends no credentials a URL carries (`nats://user:password@host`, `nats://token@host`): they are
        // handed to it here, unless spool_nats_token or spool_nats_credentials give others.
        if options.token.is_none()
            && options.credentials.is_none()
            && let Some(auth) = servers.iter().find_map(UrlAuth::of)
        {
            connect = match auth {
                UrlAuth::UserPassword { user, password } => {
                    connect.user_and_password(user, password)
                }
                UrlAuth::Token(token) => connect.token(token),
            };
        }
        // The client connects (and reconnects) in the background: herald starts while NATS is down and refuses
        // notifications until it is reachable.
        let client = connect
            .retry_on_initial_connect()
            .connect(servers)
            .await
            .map_err(|e| {
                SpoolError::Unreachable(format!("{}: {e}", shown_servers(&options.servers)))
            })?;
        // The context's own cap on publishes awaiting their ack is taken one publish at a time: batches sent
        // side by side, each holding part of it while waiting for the rest, would wait on each other for ever.
        // herald bounds them itself, a batch's whole share at once (`publish_permits`), below the context's cap.
        let ctx = jetstream::ContextBuilder::new()
            .timeout(options.request_timeout)
            .max_ack_inflight(MAX_PUBLISHES_IN_FLIGHT * 2)
            .build(client.clone());
        let subject = options.subject();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let (acks, ack_jobs) = tokio::sync::mpsc::unbounded_channel();
        let progress_queued = Arc::new(AtomicU64::new(0));
        let progress_failed = Arc::new(AtomicU64::new(0));
        let consumer_ack_wait_ms = Arc::new(AtomicU64::new(duration_ms(options.ack_wait)));
        let held = Arc::new(Mutex::new(Held::default()));
        tokio::spawn(ack_loop(
            NatsAcks {
                client: client.clone(),
                held: held.clone(),
                ack_wait_ms: consumer_ack_wait_ms.clone(),
                progress_failed: progress_failed.clone(),
            },
            ack_jobs,
            progress_queued.clone(),
            FinalAckRetry {
                first_pause: FINAL_ACK_FIRST_PAUSE,
                max_pause: FINAL_ACK_MAX_PAUSE,
                min_patience: FINAL_ACK_MIN_PATIENCE,
                ack_wait_ms: consumer_ack_wait_ms.clone(),
            },
        ));
        let first_try = options.connect_timeout;
        let retry_book = RetryBook::start(ctx.clone(), &options.stream, options.replicas);
        let spool = Arc::new(JetStreamSpool {
            client,
            ctx,
            subject,
            held,
            next_local: AtomicU64::new(1),
            deliveries: Mutex::new(Some(rx)),
            ready: AtomicBool::new(false),
            jetstream_health: crate::liveness::JetStreamHealth::default(),
            closed: AtomicBool::new(false),
            stopping: tokio::sync::watch::Sender::new(false),
            stop_reads_until: Mutex::new(None),
            pull_open: Arc::new(tokio::sync::Mutex::new(())),
            figures: StreamFigures::default(),
            append_calls: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            failed_commits: AtomicU64::new(0),
            removed: AtomicU64::new(0),
            rescheduled: AtomicU64::new(0),
            pulled: AtomicU64::new(0),
            redelivered_here: AtomicU64::new(0),
            handed_back: AtomicU64::new(0),
            parked: std::sync::atomic::AtomicI64::new(0),
            last_error: Mutex::new(None),
            connect_failure,
            acks,
            retry_book,
            publish_permits: Arc::new(tokio::sync::Semaphore::new(MAX_PUBLISHES_IN_FLIGHT)),
            started_ms: nodes::unix_ms(),
            beats: Mutex::new(None),
            last_beat: Mutex::new(None),
            serves_lookups: AtomicBool::new(false),
            progress_queued,
            progress_failed,
            consumer_ack_wait_ms,
            duplicate_window_ms: AtomicU64::new(duration_ms(options.duplicate_window)),
            duplicates: Arc::new(AtomicU64::new(0)),
            unfit: Mutex::new(Unfit::default()),
            options,
        });
        // From the start, set up or not: a server that hangs is left for another one of the cluster; once set up,
        // one through which JetStream does not answer (cut off from its cluster) too.
        tokio::spawn(crate::liveness::probe(
            {
                let me = Arc::downgrade(&spool);
                move || {
                    me.upgrade()
                        .filter(|s| !s.closed.load(Ordering::Relaxed))
                        .map(|s| crate::liveness::Target {
                            client: s.client.clone(),
                            jetstream: s
                                .ready
                                .load(Ordering::Relaxed)
                                .then(|| (s.ctx.clone(), s.options.stream.clone())),
                        })
                }
            },
            spool.stopping.subscribe(),
            crate::liveness::silence_limit(spool.options.request_timeout),
            crate::liveness::jetstream_limit(spool.options.request_timeout),
            spool.jetstream_health.clone(),
        ));
        match tokio::time::timeout(first_try, spool.setup()).await {
            Ok(Ok((consumer, stream))) => spool.start_tasks(consumer, stream, tx),
            // An incompatible stream is the operator's to fix: refuse to start.
            Ok(Err(e @ SpoolError::Config(_))) => return Err(e),
            Ok(Err(e)) => spool.setup_in_background(e.to_string(), tx),
            Err(_) => spool.setup_in_background(format!("no answer within {first_try:?}"), tx),
        }
        Ok(spool)
    }

    /// Creates or checks the stream and the consumer. An existing consumer is brought to this node's settings
    /// where they can change in place (its ack wait, its room for unacked messages, ...); one that cannot serve
    /// herald as it is (another ack policy, a delivery limit, another filter) is refused with a
    /// [`SpoolError::Config`] naming the setting.
    async fn setup(
        &self,
    ) -> Result<(consumer::PullConsumer, jetstream::stream::Stream), SpoolError> {
        ensure_stream(&self.ctx, &self.options, &self.subject).await?;
        let stream = self
            .ctx
            .get_stream(&self.options.stream)
            .await
            .map_err(|e| nats_request_error("opening the stream", &e))?;
        let name = self.options.consumer.as_str();
        let consumer: consumer::PullConsumer = match stream.consumer_info(name).await {
            Ok(info) => match reconcile_consumer(&info.config, &self.options, &self.subject) {
                Err(why) => {
                    return Err(SpoolError::Config(format!(
                        "the existing JetStream consumer {name:?} of stream {:?} does not fit herald: {why}; delete \
                         it (nats consumer rm {} {name}: the notifications stay in the stream) and herald creates \
                         it again, or name another one",
                        self.options.stream, self.options.stream
                    )));
                }
                Ok(None) => {
                    let config =
                        consumer::pull::Config::try_from_consumer_config(info.config.clone())
                            .map_err(|e| nats_request_error("reading the consumer", &*e))?;
                    consumer::PullConsumer::new(config, info, self.ctx.clone())
                }
                Ok(Some((wanted, changes))) => {
                    let config = consumer::pull::Config::try_from_consumer_config(wanted)
                        .map_err(|e| nats_request_error("updating the consumer", &*e))?;
                    let updated = stream
                        .update_consumer(config)
                        .await
                        .map_err(|e| nats_request_error("updating the consumer", &e))?;
                    tracing::info!(
                        stream = %self.options.stream,
                        consumer = %name,
                        "updated the JetStream consumer: {}",
                        changes.join(", ")
                    );
                    updated
                }
            },
            Err(e)
                if matches!(
                    e.kind(),
                    jetstream::context::ConsumerInfoErrorKind::NotFound
                ) =>
            {
                let created = stream
                    .create_consumer(wanted_consumer(&self.options, &self.subject))
                    .await
                    .map_err(|e| nats_request_error("creating the consumer", &e))?;
                tracing::info!(
                    stream = %self.options.stream,
                    consumer = %name,
                    "created the JetStream consumer"
                );
                created
            }
            Err(e) => return Err(nats_request_error("reading the consumer", &e)),
        };
        self.consumer_ack_wait_ms.store(
            duration_ms(consumer.cached_info().config.ack_wait),
            Ordering::Relaxed,
        );
        self.note_duplicate_window(stream.cached_info().config.duplicate_window);
        Ok((consumer, stream))
    }

    fn start_tasks(
        self: &Arc<Self>,
        consumer: consumer::PullConsumer,
        stream: jetstream::stream::Stream,
        tx: tokio::sync::mpsc::Sender<StoredNotification>,
    ) {
        self.ready.store(true, Ordering::Relaxed);
        tokio::spawn(pull_loop(
            Arc::downgrade(self),
            consumer,
            tx,
            self.pull_open.clone(),
            self.stopping.subscribe(),
        ));
        tokio::spawn(keep_alive(Arc::downgrade(self)));
        tokio::spawn(refresh_figures(Arc::downgrade(self), stream));
        tokio::spawn(heartbeat(Arc::downgrade(self), nodes::BEAT_EVERY));
    }

    /// NATS was not reachable at start: tries again every second until the stream and consumer are set up.
    fn setup_in_background(
        self: &Arc<Self>,
        why: String,
        tx: tokio::sync::mpsc::Sender<StoredNotification>,
    ) {
        let why = self.connect_failure.explain(why);
        tracing::warn!(
            servers = %shown_servers(&self.options.servers),
            "NATS JetStream not reachable yet ({why}): notifications are refused until it is; retrying"
        );
        *lock(&self.last_error) = Some(SpoolError::Unreachable(why));
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut reported = Reported::default();
            // Why connecting fails, said once learnt and then at most once a minute while it lasts (with several
            // servers it may change at each round): the first warning may have come before the client's first
            // attempt failed.
            let mut cause_said = me
                .upgrade()
                .and_then(|s| s.connect_failure.get())
                .map(|_| Instant::now());
            loop {
                let Some(spool) = me.upgrade() else {
                    return;
                };
                if spool.closed.load(Ordering::Relaxed) {
                    return;
                }
                match spool.setup().await {
                    Ok((consumer, stream)) => {
                        tracing::info!("NATS JetStream reachable: the spool is ready");
                        spool.start_tasks(consumer, stream, tx);
                        return;
                    }
                    // A stream or consumer that does not fit is the operator's to fix: said as an error (once, and
                    // again every minute while it lasts), and tried again.
                    Err(e @ SpoolError::Config(_)) => {
                        if reported.due(&e.to_string()) {
                            tracing::error!(
                                "JetStream setup: {e}; notifications are refused until it is fixed"
                            );
                        }
                        *lock(&spool.last_error) = Some(e);
                    }
                    Err(e) => {
                        tracing::debug!("JetStream setup: {e}");
                        if let Some(why) = spool.connect_failure.get()
                            && cause_said.is_none_or(|at| at.elapsed() >= REPORT_EVERY)
                        {
                            cause_said = Some(Instant::now());
                            tracing::warn!(
                                servers = %shown_servers(&spool.options.servers),
                                "NATS JetStream still not reachable: connecting failed: {why}; retrying"
                            );
                        }
                        // Without a connection, what failed is reaching NATS: said with its cause.
                        let e = match spool.connect_failure.get() {
                            Some(_) => SpoolError::Unreachable(
                                spool.connect_failure.explain(e.to_string()),
                            ),
                            None => e,
                        };
                        *lock(&spool.last_error) = Some(e);
                    }
                }
                drop(spool);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
    }

    /// Keeps the stream's duplicate window as the server has it (zero: the server's default, 2 minutes).
    fn note_duplicate_window(&self, window: Duration) {
        let window = if window.is_zero() {
            Duration::from_secs(120)
        } else {
            window
        };
        self.duplicate_window_ms
            .store(duration_ms(window), Ordering::Relaxed);
    }

    /// The stream's duplicate window: for this long after the stream took a message published with
    /// [`Spool::append_deduplicated`], a copy of it (the same `dedup` and key) is dropped rather than stored again.
    pub fn duplicate_window(&self) -> Duration {
        Duration::from_millis(self.duplicate_window_ms.load(Ordering::Relaxed))
    }

    /// Publishes the stream answered as duplicates (dropped, counted as stored) so far.
    pub fn duplicates(&self) -> u64 {
        self.duplicates.load(Ordering::Relaxed)
    }

    /// Publishes `batch`, each message under the message id `message_id` gives it, and waits for every ack.
    fn publish(
        &self,
        batch: Vec<StoredNotification>,
        message_id: impl Fn(&StoredNotification) -> String + Send + 'static,
    ) -> SpoolFuture<()> {
        self.append_calls.fetch_add(1, Ordering::Relaxed);
        if self.closed.load(Ordering::Relaxed) {
            return Box::pin(async { Err(SpoolError::Closed) });
        }
        if !self.connected() {
            let e = match self.jetstream_health.unavailable() {
                Some(why) => SpoolError::Unreachable(why),
                None => SpoolError::Unreachable("not connected to NATS".into()),
            };
            self.failed_commits.fetch_add(1, Ordering::Relaxed);
            *lock(&self.last_error) = Some(e.clone());
            return Box::pin(async move { Err(e) });
        }
        let ctx = self.ctx.clone();
        let subject = self.subject.clone();
        let n = batch.len() as u64;
        let permits = self.publish_permits.clone();
        let limit = self.options.request_timeout;
        let duplicates = self.duplicates.clone();
        let fut = async move {
            for part in batch.chunks(MAX_PUBLISHES_IN_FLIGHT) {
                // The part's whole room first, so that no batch waits half-published for another.
                let _room = tokio::time::timeout(
                    limit,
                    permits.acquire_many(part.len() as u32),
                )
                .await
                .map_err(|_| {
                    nats_error(
                        "publishing",
                        format!(
                            "{MAX_PUBLISHES_IN_FLIGHT} publishes await NATS's ack and none came back within {limit:?}"
                        ),
                    )
                })?
                .map_err(|e| nats_request_error("publishing", &e))?;
                // Every publish goes out before the first ack is awaited: one round trip for the part.
                let mut acks = Vec::with_capacity(part.len());
                for s in part {
                    let publish = jetstream::message::PublishMessage::build()
                        .payload(encode_message(s).into())
                        .message_id(message_id(s));
                    let ack = ctx
                        .send_publish(subject.clone(), publish)
                        .await
                        .map_err(|e| nats_request_error("publishing", &e))?;
                    acks.push(ack);
                }
                for r in join_all(acks.into_iter().map(|a| a.into_future())).await {
                    // A duplicate is a copy of a message the stream took within its duplicate window (a retry of a
                    // request refused part-way): it is stored.
                    if r.map_err(|e| nats_request_error("waiting for the publish ack", &e))?
                        .duplicate
                    {
                        duplicates.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Ok::<(), SpoolError>(())
        };
        self.appended.fetch_add(n, Ordering::Relaxed);
        Box::pin(fut)
    }

    /// The notifications this node pulls from the stream, each under the key the accepting node gave it (the id its
    /// sender was answered), to be passed to `remove` on its final outcome. A notification comes out once while this
    /// node holds it, even when JetStream delivers its message again meanwhile. Taken once.
    pub fn take_deliveries(&self) -> Option<tokio::sync::mpsc::Receiver<StoredNotification>> {
        lock(&self.deliveries).take()
    }

    /// The JetStream context, for the key-value bucket of invalid tokens.
    pub fn context(&self) -> &jetstream::Context {
        &self.ctx
    }

    /// The largest message the connected NATS server takes (its `max_payload`).
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// The stream's replica count (1 or 3).
    pub fn replicas(&self) -> usize {
        self.options.replicas
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.options.stream
    }

    /// Whether the spool is set up and the client connected now, to a server through which JetStream answers
    /// (`crate::liveness`): what readiness and `herald_jetstream_connected` say.
    pub fn connected(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
            && self.client.connection_state() == async_nats::connection::State::Connected
            && self.jetstream_health.unavailable().is_none()
    }

    /// Why the spool takes no notifications while not [`JetStreamSpool::connected`]: JetStream unavailable through
    /// the server, else the last error, else no connection.
    fn unreachable(&self) -> SpoolError {
        if let Some(why) = self.jetstream_health.unavailable() {
            return SpoolError::Unreachable(why);
        }
        lock(&self.last_error)
            .clone()
            .unwrap_or_else(|| SpoolError::Unreachable("not connected to NATS".into()))
    }

    /// How long [`Spool::close`] takes at most: the pull under way ends (within [`PULL_EXPIRES`], its reads of the
    /// bucket of retry counts under way within [`crate::retry_state::READ_LIMIT`]), the retry counts of what goes back are written
    /// (within `retry_writes_wait`, once for the pull's and once for the held ones) and NATS answers the give-back
    /// (within `request_timeout`). A caller's own limit on the close should not be shorter.
    pub fn close_limit(&self) -> Duration {
        self.options.request_timeout
            + PULL_EXPIRES
            + self.retry_book.read_limit()
            + self.options.retry_writes_wait * 2
    }

    /// How long a notification given back without an attempt while the node runs waits at most for the writes of
    /// its retry counts ([`JetStreamSpool::release`]).
    fn release_wait(&self) -> Duration {
        self.options
            .request_timeout
            .max(self.options.retry_writes_wait)
    }

    /// Notifications pulled by this node and not yet finished.
    pub fn held(&self) -> u64 {
        lock(&self.held).len() as u64
    }

    /// Held notifications parked by their queue (paused, no route), as far as they take no pull room: at most
    /// `max_parked`.
    pub fn parked(&self) -> u64 {
        let parked = self.parked.load(Ordering::Relaxed).max(0) as u64;
        parked.min(self.options.max_parked as u64)
    }

    /// How many more notifications the pull may fetch: `max_held` for those being delivered, besides those
    /// parked (up to `max_parked` more), so that a paused or unroutable domain does not stop the pull for the
    /// others.
    fn room(&self) -> usize {
        let held = self.held() as usize;
        (self.options.max_held + self.parked() as usize).saturating_sub(held)
    }

    /// The stream's and the consumer's figures, as last refreshed (every second).
    pub fn stream_stats(&self) -> JetStreamStats {
        JetStreamStats {
            connected: self.connected(),
            stream_messages: self.figures.messages.load(Ordering::Relaxed),
            stream_bytes: self.figures.bytes.load(Ordering::Relaxed),
            consumer_ack_pending: self.figures.ack_pending.load(Ordering::Relaxed),
            consumer_pending: self.figures.pending.load(Ordering::Relaxed),
            consumer_redelivered: self.figures.redelivered.load(Ordering::Relaxed),
            oldest_ms: self.figures.oldest_ms.load(Ordering::Relaxed),
            held: self.held(),
            parked: self.parked(),
            pulled: self.pulled.load(Ordering::Relaxed),
            redelivered_here: self.redelivered_here.load(Ordering::Relaxed),
            handed_back: self.handed_back.load(Ordering::Relaxed),
            lapsed: self.figures.claims.lapsed.load(Ordering::Relaxed),
        }
    }

    /// The stream's servers and the live nodes, as last refreshed.
    pub fn cluster_view(&self) -> ClusterView {
        let mut view = lock(&self.figures.view).clone();
        view.this_node = self.options.node.clone();
        view
    }

    /// This node's name (its heartbeat's key).
    pub fn node_name(&self) -> &str {
        &self.options.node
    }

    /// Whether the other nodes can see this one live: its last heartbeat was written less than half of
    /// [`nodes::BEAT_MAX_AGE`] ago (the server removes it at that age). False until the first one is written, once
    /// one fails, and while one takes long to answer (NATS slow or unreachable), well before the last one written
    /// expires.
    pub fn beating(&self) -> bool {
        beat_fresh(*lock(&self.last_beat), Instant::now())
    }

    /// Whether `node` has a heartbeat now, read from the server: `false` once it has been silent for
    /// [`nodes::BEAT_MAX_AGE`] by the server's clock. An error while the heartbeats cannot be read, and while the
    /// heartbeat bucket is younger than [`nodes::BEAT_MAX_AGE`] (NATS lost it, and the live nodes may not have
    /// written theirs again yet: [`nodes::has_beat`]).
    pub async fn node_alive(&self, node: &str) -> Result<bool, String> {
        let store = lock(&self.beats).clone();
        match store {
            Some(store) => nodes::has_beat(&store, node).await,
            None => Err("the node heartbeats are not read yet".into()),
        }
    }

    /// Says in this node's heartbeat whether it answers the other nodes' status lookups.
    pub fn set_serves_lookups(&self, serves: bool) {
        self.serves_lookups.store(serves, Ordering::Relaxed);
    }

    /// What the last check of the stream and the consumer (every second, while the node runs) found that does not
    /// fit herald, as the error it logs (once a minute while it lasts) says; `None` when both fit.
    pub fn unfit(&self) -> Option<String> {
        let unfit = lock(&self.unfit);
        match (&unfit.stream, &unfit.consumer) {
            (None, None) => None,
            (Some(one), None) | (None, Some(one)) => Some(one.clone()),
            (Some(stream), Some(consumer)) => Some(format!("{stream}; {consumer}")),
        }
    }

    /// Gives a pulled notification back to the stream (every message held for it) without an attempt (a domain
    /// this node does not deliver, a record it does not read, the node stopping), to be delivered again (by any
    /// node) after `delay`. Its retries so far go with it, written to the bucket of retry counts
    /// ([`crate::retry_state`]): unlike a retry handed back ([`Spool::hand_back`]), the delivery it ends counts as
    /// no retry. The node keeps holding it (its in-progress acks go on) until NATS confirmed those writes, or for
    /// `request_timeout` (or `retry_writes_wait` when longer) at most, then gives it back; a stop meanwhile gives it
    /// back at once, with the same delay. Until it is delivered again it stays in the consumer's pending set,
    /// counted toward its `max_ack_pending` (when it has one: [`consumer_max_ack_pending`]).
    pub fn release(&self, key: SpoolKey, delay: Duration) {
        self.ack(key.0, AckKind::Nak(Some(delay)), Attempted::No);
    }

    /// The bucket of retry counts ([`crate::retry_state`]).
    pub fn retry_book(&self) -> &RetryBook {
        &self.retry_book
    }

    /// A pulled message on its way to [`JetStreamSpool::take_in`], with what the bucket of retry counts says of
    /// it. The bucket is read only where it may say something this node does not know and there is time for it:
    /// not for a first delivery (nothing to read), nor for a message this node holds already or finished lately
    /// (it is not handed over again), nor past `read_until` (the delivery count stands in), nor once the node has
    /// been stopping for one read's limit (the message goes back with its entry as it is). The read goes on in its
    /// own task.
    fn prepare(&self, pulled: Pulled, read_until: tokio::time::Instant) -> Preparing {
        let (delivered, seq) = delivery_of(pulled.message());
        let stop = *lock(&self.stop_reads_until);
        let now = tokio::time::Instant::now();
        let skip = match seq {
            Some(seq) if delivered > 1 => {
                if stop.is_some_and(|until| now >= until)
                    || pulled.id().is_some_and(|id| self.known_here(id, seq))
                {
                    Some(Looked::Skipped)
                } else if now >= read_until {
                    Some(Looked::OverBudget)
                } else {
                    None
                }
            }
            _ => Some(Looked::First),
        };
        let (Some(seq), None) = (seq, skip) else {
            let looked = skip.unwrap_or(Looked::First);
            return Preparing::Ready(Some((pulled, looked)));
        };
        let book = self.retry_book.clone();
        let (until, late) = match stop {
            Some(stop) if stop < read_until => (stop, Looked::Skipped),
            _ => (read_until, Looked::OverBudget),
        };
        let read = tokio::spawn(async move {
            match tokio::time::timeout_at(until, book.read(seq)).await {
                Ok(Ok(Some(ReadState(state)))) => Looked::Entry(state),
                Ok(Ok(None)) => Looked::NoEntry,
                Ok(Err(e)) => {
                    book.report_read_failure(&e);
                    Looked::Unknown
                }
                Err(_) => late,
            }
        });
        Preparing::Reading(Some(pulled), read)
    }

    /// Whether the message at `seq` of notification `id` is held here already, or was finished here lately.
    fn known_here(&self, id: u128, seq: u64) -> bool {
        let (now, keep) = (Instant::now(), self.finished_for());
        let mut held = lock(&self.held);
        held.finished_lately(id, seq, now, keep)
            || held.holds(id, |m| m.info().is_ok_and(|i| i.stream_sequence == seq))
    }

    /// Takes in a pulled `message` (stream sequence `seq`) of notification `id`, whose retry state on arrival is
    /// `known`. A message of a notification held here already is kept with it; when that is the message held
    /// (JetStream delivered it again, its in-progress acks came late), its entry in the bucket of retry counts is
    /// written again with the new delivery count: the delivery that ended was no attempt.
    fn take_in(
        &self,
        id: u128,
        seq: Option<u64>,
        message: jetstream::Message,
        known: Known,
        tx_closed: bool,
    ) -> Taken {
        let (now, keep) = (Instant::now(), self.finished_for());
        let mut held = lock(&self.held);
        if seq.is_some_and(|seq| held.finished_lately(id, seq, now, keep)) {
            return Taken::Finished(message);
        }
        if self.closed.load(Ordering::Relaxed) || tx_closed {
            // Under the held lock, as the stop sets `closed`: held now, or kept here, never neither.
            return Taken::Kept(message);
        }
        let arrival = held.arrive(id, message, same_message);
        // The arrival may lower the floor of the renewals.
        self.figures
            .claims
            .publish(&held, self.claim_span(), Instant::now());
        match arrival {
            Arrival::New => held.know(id, known),
            Arrival::Again => {
                if let Some(known) = held.known_mut(id) {
                    known.entry = true;
                    let known = *known;
                    // Settled when it is being given back without an attempt.
                    let settled = held.is_releasing(id);
                    for (slot, state) in states_of(id, held.messages_for(id), known, settled) {
                        self.retry_book.put(slot, state);
                    }
                }
            }
            Arrival::Conflict(_) => {}
        }
        Taken::Arrived(arrival)
    }

    /// Acks (or naks, or terminates) every message held for the notification `key`, and forgets it. A final
    /// outcome (ack, term) is remembered for a while by the messages' stream sequences ([`Finished`]), and deletes
    /// the entries of its messages in the bucket of retry counts. A nak without an attempt writes them first, and
    /// goes once they are written ([`JetStreamSpool::release`]).
    fn ack(&self, key: u128, kind: AckKind, attempted: Attempted) {
        let finished = matches!(kind, AckKind::Ack | AckKind::Term);
        let (now, keep) = (Instant::now(), self.finished_for());
        // Queued under the held lock, as [`keep_alive`] queues its in-progress acks: none of those can follow this
        // ack (a nak's delay would be reset to the ack wait by an in-progress ack arriving after it).
        let mut held = lock(&self.held);
        // A nak (or any but a final ack) of a notification whose claim lapsed would hit the delivery another node
        // may have now: it is forgotten without one. A final outcome reached meanwhile is acked all the same.
        if !finished {
            self.sweep(&mut held, now);
            if held.forget_lapsed(key) {
                return;
            }
        }
        if !finished
            && attempted == Attempted::No
            && let Some(known) = held.known_of(key)
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let states = states_of(key, held.messages_for(key), known, true);
            if !states.is_empty() {
                let wait = self.release_wait();
                let deadline = Instant::now() + wait;
                let written: Vec<_> = states
                    .into_iter()
                    .map(|(slot, state)| self.retry_book.put_confirmed(slot, state, deadline))
                    .collect();
                // Still held (its in-progress acks go on) until the node that pulls it next can read its retries,
                // or NATS did not take them in time; then taken, and its nak queued under the held lock. A stop
                // meanwhile gives it back itself, and nothing is left to take here.
                let token = held.release_later(key, kind);
                drop(held);
                let (held, acks, book) = (
                    self.held.clone(),
                    self.acks.clone(),
                    self.retry_book.clone(),
                );
                runtime.spawn(async move {
                    confirmed(
                        &book,
                        written,
                        deadline,
                        wait,
                        "a notification given back without an attempt",
                    )
                    .await;
                    let mut held = lock(&held);
                    for message in held.take_released(key, token) {
                        let _ = acks.send(AckJob::Ack(message, kind));
                    }
                });
                return;
            }
        }
        let (messages, known) = held.take_known(key);
        if let Some(known) = known {
            if finished {
                if known.entry {
                    let mut seqs: Vec<u64> = messages
                        .iter()
                        .filter_map(|m| m.info().ok().map(|i| i.stream_sequence))
                        .collect();
                    seqs.dedup();
                    for seq in seqs {
                        self.retry_book.delete(seq);
                    }
                }
            } else if attempted == Attempted::No {
                for (slot, state) in states_of(key, &messages, known, true) {
                    self.retry_book.put(slot, state);
                }
            }
        }
        for message in messages {
            if finished && let Ok(info) = message.info() {
                held.finished.record(info.stream_sequence, key, now, keep);
            }
            let _ = self.acks.send(AckJob::Ack(message, kind));
        }
    }

    /// How long after its last renewal a held notification counts as this node's: [`claim_span`] of the consumer's
    /// ack wait as the server has it.
    fn claim_span(&self) -> Duration {
        claim_span(self.consumer_ack_wait())
    }

    /// Marks lapsed, at `now`, the held notifications whose claims JetStream may have let go of ([`Held::lapse`]),
    /// says so, and publishes what the delivery path reads. Called under the `held` lock, by whichever runs first
    /// after the node was stopped or NATS unreachable: the keep-alive, the delivery path, a give-back, the stop.
    fn sweep(&self, held: &mut Held<jetstream::Message>, now: Instant) {
        let span = self.claim_span();
        let lapse = held.lapse(now, span);
        self.figures.claims.publish(held, span, now);
        if let Some(lapse) = lapse {
            self.figures
                .claims
                .lapsed
                .fetch_add(lapse.count as u64, Ordering::Relaxed);
            tracing::warn!(
                "{} held notification(s) lapsed: their claims were not renewed for {:.1} s (the consumer's ack                  wait is {:?}; this node was stopped, or its in-progress acks could not go out), so JetStream gives                  them to other nodes; this node does not send them",
                lapse.count,
                now.saturating_duration_since(lapse.renewed).as_secs_f64(),
                self.consumer_ack_wait(),
            );
        }
    }

    /// [`Spool::lapsed`] past its fast answer: under the `held` lock.
    fn lapsed_now(&self, id: u128) -> bool {
        let mut held = lock(&self.held);
        self.sweep(&mut held, Instant::now());
        held.forget_lapsed(id)
    }

    /// How often held notifications get an in-progress ack: a third of the consumer's ack wait.
    fn progress_every(&self) -> Duration {
        (self.consumer_ack_wait() / 3).max(Duration::from_millis(100))
    }

    /// The consumer's ack wait, as the server last said.
    fn consumer_ack_wait(&self) -> Duration {
        Duration::from_millis(self.consumer_ack_wait_ms.load(Ordering::Relaxed))
    }

    /// How long a finished notification is remembered once its final ack was confirmed or given up
    /// ([`finished_for`]).
    fn finished_for(&self) -> Duration {
        finished_for(self.consumer_ack_wait())
    }
}

/// How long a final ack is sent again at most while the server does not confirm it: the consumer's `ack_wait`, and
/// never less than [`FINAL_ACK_MIN_PATIENCE`].
fn final_ack_patience(ack_wait: Duration, min_patience: Duration) -> Duration {
    ack_wait.max(min_patience)
}

/// Whether a heartbeat sent at `sent` (and written) still stands at `now`: less than half of
/// [`nodes::BEAT_MAX_AGE`] ago, leaving the other half for a claim made meanwhile to be seen live.
fn beat_fresh(sent: Option<Instant>, now: Instant) -> bool {
    sent.is_some_and(|sent| now.saturating_duration_since(sent) < nodes::BEAT_MAX_AGE / 2)
}

/// How long a finished notification is remembered once its final ack was confirmed or given up (until then it is
/// kept whatever the time: [`Finished`]), for a consumer's `ack_wait`: one ack wait (after which an ack that never
/// arrived lets the message be redelivered), and one more for good measure. A redelivery meanwhile is acked again,
/// not delivered.
fn finished_for(ack_wait: Duration) -> Duration {
    ack_wait * 2
}

/// How long after JetStream last renewed its claim (delivered it, or took an in-progress ack for it) a held
/// notification still counts as this node's, for a consumer's `ack_wait`: the ack wait less a sixth of it. The
/// sixth covers what the node's own bound does not see: the way from the NATS client to the server leading the
/// consumer, and from the check to the notification's write on its APNs connection. A live node renews its claims
/// every third of the ack wait, so that it is never that near the end unless its in-progress acks stopped going
/// out (the process was stopped, NATS was unreachable) for half the ack wait or more.
fn claim_span(ack_wait: Duration) -> Duration {
    ack_wait.saturating_sub(ack_wait / 6)
}

/// Whether the claim on a held notification is still this node's at `now`: JetStream renewed it no earlier than
/// `renewal`, less than `span` ([`claim_span`]) ago. Once it is not, JetStream may have given the notification to
/// another node (after the ack wait it redelivers it), and in-progress acks sent now do not win it back.
fn claim_alive(renewal: Instant, now: Instant, span: Duration) -> bool {
    now < renewal + span
}

/// How long a pull stays open while the server has nothing to deliver: [`PULL_EXPIRES`], and no more than a sixth
/// of the ack wait, as a message it brings counts as delivered when the pull was asked for ([`Held::arrive`]).
fn pull_expires(ack_wait: Duration) -> Duration {
    PULL_EXPIRES
        .min(ack_wait / 6)
        .max(Duration::from_millis(100))
}

/// The notifications a node finished lately (acked or terminated), by the stream sequences of their messages.
/// Should a final ack be lost (the connection dropped just after it went out, its confirmation never came),
/// JetStream delivers the message again once the ack wait has passed: when it comes back to this node, it is
/// acked again rather than delivered a second time.
///
/// Each is kept while its final ack is on its way, however long that takes (it may wait its turn in [`ack_loop`]
/// for long before it is sent again and confirmed), then for a while once it was confirmed or given up
/// ([`JetStreamSpool::finished_for`]); [`MAX_RECENTLY_FINISHED`] at most, the oldest recorded forgotten first.
#[derive(Debug)]
struct Finished {
    /// Stream sequence -> what is remembered of it.
    by_seq: HashMap<u64, Remembered>,
    /// Stream sequences in the order they were recorded, oldest first, with their entry's stamp: the oldest give way
    /// first to newer ones. An item whose entry was forgotten, or recorded again since, is skipped.
    recorded: VecDeque<(u64, u64)>,
    /// When final acks ended (confirmed or given up), in that order, with their message's stream sequence and entry
    /// stamp. An item whose entry was forgotten or settled again since is skipped.
    settled: VecDeque<(Instant, u64, u64)>,
    /// The stamp of the next entry recorded.
    next_stamp: u64,
    cap: usize,
}

/// A finished notification's message, as [`Finished`] remembers it.
#[derive(Debug, Clone, Copy)]
struct Remembered {
    id: u128,
    /// Tells this entry from an earlier one at the same stream sequence.
    stamp: u64,
    /// When its final ack was last confirmed or given up; `None` while it is on its way.
    settled_at: Option<Instant>,
}

impl Default for Finished {
    fn default() -> Self {
        Finished::with_cap(MAX_RECENTLY_FINISHED)
    }
}

impl Finished {
    fn with_cap(cap: usize) -> Self {
        Finished {
            by_seq: HashMap::new(),
            recorded: VecDeque::new(),
            settled: VecDeque::new(),
            next_stamp: 0,
            cap,
        }
    }

    /// The message at stream sequence `seq`, notification `id`, got its final ack at `now`: remembered until the
    /// ack is settled ([`Finished::settle`]) and `keep` after, or until `cap` newer ones push it out.
    fn record(&mut self, seq: u64, id: u128, now: Instant, keep: Duration) {
        self.expire(now, keep);
        let stamp = self.next_stamp;
        self.next_stamp += 1;
        self.by_seq.insert(
            seq,
            Remembered {
                id,
                stamp,
                settled_at: None,
            },
        );
        self.recorded.push_back((seq, stamp));
        while self.by_seq.len() > self.cap {
            let Some((oldest, stamp)) = self.recorded.pop_front() else {
                break;
            };
            if self.by_seq.get(&oldest).is_some_and(|r| r.stamp == stamp) {
                self.by_seq.remove(&oldest);
            }
        }
        self.compact();
    }

    /// The final ack of the message at `seq`, notification `id`, was confirmed or given up at `now` (calls come in
    /// time order): it is forgotten `keep` after, unless settled again meanwhile (acked again on a redelivery).
    fn settle(&mut self, seq: u64, id: u128, now: Instant, keep: Duration) {
        self.expire(now, keep);
        if let Some(r) = self.by_seq.get_mut(&seq)
            && r.id == id
        {
            r.settled_at = Some(now);
            self.settled.push_back((now, seq, r.stamp));
        }
        self.compact();
    }

    /// Whether the message at `seq`, of notification `id`, is remembered as finished: its final ack is on its way,
    /// or ended less than `keep` ago. The id must match too: a stream deleted and created again numbers its
    /// messages from 1 again.
    fn matches(&mut self, seq: u64, id: u128, now: Instant, keep: Duration) -> bool {
        self.expire(now, keep);
        self.by_seq.get(&seq).is_some_and(|r| r.id == id)
    }

    /// Forgets the messages whose final ack ended `keep` ago or more.
    fn expire(&mut self, now: Instant, keep: Duration) {
        while let Some(&(at, seq, stamp)) = self.settled.front() {
            if now.saturating_duration_since(at) < keep {
                break;
            }
            self.settled.pop_front();
            if self
                .by_seq
                .get(&seq)
                .is_some_and(|r| r.stamp == stamp && r.settled_at == Some(at))
            {
                self.by_seq.remove(&seq);
            }
        }
        while let Some(&(seq, stamp)) = self.recorded.front() {
            if self.by_seq.get(&seq).is_some_and(|r| r.stamp == stamp) {
                break;
            }
            self.recorded.pop_front();
        }
    }

    /// Drops the items of `recorded` and `settled` that no longer stand for an entry, once they are twice as many
    /// as the entries can be: they stay bounded however the entries come and go.
    fn compact(&mut self) {
        let most = self.cap.max(16) * 2;
        let by_seq = &self.by_seq;
        if self.recorded.len() > most {
            self.recorded
                .retain(|(seq, stamp)| by_seq.get(seq).is_some_and(|r| r.stamp == *stamp));
        }
        if self.settled.len() > most {
            self.settled.retain(|(at, seq, stamp)| {
                by_seq
                    .get(seq)
                    .is_some_and(|r| r.stamp == *stamp && r.settled_at == Some(*at))
            });
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_seq.len()
    }
}

/// What a node holds: by notification id, every message JetStream handed it for that notification and not yet
/// acked. One id holds more than one message when JetStream delivers a message again to the node that still works
/// on it (its in-progress acks came late, NATS was unreachable for a while): the notification is not queued a second
/// time, and its final ack, nak or term goes to every message held for it.
#[derive(Debug)]
struct Held<M> {
    by_id: HashMap<u128, HeldEntry<M>>,
    /// The retry state of each notification held ([`Held::know`]).
    known: HashMap<u128, Known>,
    /// Notifications given back without an attempt, held until the writes of their retry counts are confirmed
    /// ([`JetStreamSpool::release`]): the token of that give-back (a later one of the same id is another) and its
    /// nak.
    releasing: HashMap<u128, (u64, AckKind)>,
    next_token: u64,
    /// What the node finished lately, kept here so that an arrival and a final ack never cross unseen.
    finished: Finished,
    /// Rounds of in-progress acks queued so far ([`keep_alive`]): the number of the last one.
    rounds: u64,
    /// The last round whose in-progress acks the server is known to have (its echo came back: [`RoundOut`]): its
    /// number and when it began. Every notification held (and not lapsed) when it began had its claim renewed no
    /// earlier than that.
    renewed: (u64, Instant),
    /// The earliest `since` of the notifications taken in (or claimed again) since the last round began: not
    /// renewed by it.
    since_round: Option<Instant>,
    /// No held notification that has not lapsed was renewed (or delivered) before this, as far as the node knows
    /// ([`Held::renewal`]); `None` when none is held. Lowered by each arrival, raised when a round went out and by a
    /// lapse sweep.
    floor: Option<Instant>,
    /// Notifications marked lapsed and not yet forgotten.
    lapsed: usize,
    /// When the pull under way was asked for: JetStream delivered none of its messages before.
    pull_since: Option<Instant>,
}

impl<M> Default for Held<M> {
    fn default() -> Self {
        Held {
            by_id: HashMap::new(),
            known: HashMap::new(),
            releasing: HashMap::new(),
            next_token: 0,
            finished: Finished::default(),
            rounds: 0,
            renewed: (0, Instant::now()),
            since_round: None,
            floor: None,
            lapsed: 0,
            pull_since: None,
        }
    }
}

/// A notification held: its messages, and what bounds when JetStream last renewed its claim.
#[derive(Debug)]
struct HeldEntry<M> {
    /// Every message JetStream handed this node for it, not yet acked.
    messages: Vec<M>,
    /// When the pull that brought it (its latest delivery) was asked for: JetStream delivered it no earlier.
    since: Instant,
    /// The round of in-progress acks last queued when it was taken in: it had none of that round, and has those
    /// of every later one.
    round: u64,
    /// Its claim lapsed: JetStream may have given it to another node. It gets no more in-progress acks, nor a nak;
    /// the queue forgets it before sending it ([`Spool::lapsed`]), and a final outcome reached meanwhile (it was on
    /// its way to APNs) is still acked.
    lapsed: bool,
}

/// Held notifications a lapse sweep found lapsed ([`Held::lapse`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lapse {
    count: usize,
    /// The oldest renewal bound among them.
    renewed: Instant,
}

/// What a node knows of a held notification's retries ([`crate::retry_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Known {
    /// Transient failures so far, as counted at its arrival and by the reschedules since.
    retries: u32,
    /// Unix milliseconds of its next attempt (0: none set).
    next_attempt_ms: u64,
    /// The bucket may have an entry for its message (it came again, or this node wrote one): deleted on its final
    /// outcome.
    entry: bool,
    /// `retries` is a guess from the delivery count: the bucket was not read at its arrival (the read failed or
    /// took too long, the pull's read budget was spent, it was skipped). Nothing is written from a guess
    /// ([`states_of`]): it would replace the state the bucket has, which may say more or fewer retries. Once this
    /// node reschedules it (an attempt made here), its count is this node's own and is written from then on.
    guessed: bool,
}

/// A notification as [`Held::drain_known`] gives it: its id, its messages, its retry state, and the nak it was being
/// given back with.
type Drained<M> = (u128, Vec<M>, Option<Known>, Option<AckKind>);

/// What to do with a pulled message ([`Held::arrive`]).
#[derive(Debug, PartialEq, Eq)]
enum Arrival<M> {
    /// Its notification was not held: it is now, and goes to the queue.
    New,
    /// The same message (or the same notification) is held already: kept with it, not queued again.
    Again,
    /// Another notification with the same id is held: not taken; the message goes back to the stream.
    Conflict(M),
}

impl<M> Held<M> {
    /// Takes in a pulled `message` of notification `id`; `same` tells whether two messages carry the same
    /// notification. It came with the pull under way (now, when none is: tests).
    fn arrive(&mut self, id: u128, message: M, same: impl Fn(&M, &M) -> bool) -> Arrival<M> {
        let since = self.pull_since.unwrap_or_else(Instant::now);
        self.arrive_at(id, message, same, since)
    }

    /// [`Held::arrive`] for a message JetStream delivered no earlier than `since`. Another delivery of a
    /// notification whose claim lapsed claims it again: this node owns it once more, and the queue, which still has
    /// it, sends it.
    fn arrive_at(
        &mut self,
        id: u128,
        message: M,
        same: impl Fn(&M, &M) -> bool,
        since: Instant,
    ) -> Arrival<M> {
        let rounds = self.rounds;
        let arrival = match self.by_id.entry(id) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(HeldEntry {
                    messages: vec![message],
                    since,
                    round: rounds,
                    lapsed: false,
                });
                Arrival::New
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let entry = o.get_mut();
                if entry.messages.iter().any(|m| same(m, &message)) {
                    entry.messages.push(message);
                    if entry.lapsed {
                        entry.lapsed = false;
                        entry.round = rounds;
                        self.lapsed -= 1;
                    }
                    entry.since = entry.since.max(since);
                    Arrival::Again
                } else {
                    return Arrival::Conflict(message);
                }
            }
        };
        self.floor = Some(self.floor.map_or(since, |f| f.min(since)));
        self.since_round = Some(self.since_round.map_or(since, |f| f.min(since)));
        arrival
    }

    /// No earlier than this did JetStream last renew the claim on `entry` (deliver it, or take an in-progress ack
    /// for it), as far as the node knows: the start of the last round that went out, when `entry` was held at that
    /// start; else the pull that brought it.
    fn renewal(renewed: (u64, Instant), entry: &HeldEntry<M>) -> Instant {
        if entry.round < renewed.0 {
            entry.since.max(renewed.1)
        } else {
            entry.since
        }
    }

    /// A round of in-progress acks begins at `now`, for every message held (those of lapsed notifications
    /// excepted: [`Held::messages`]); returns its number.
    fn start_round(&mut self) -> u64 {
        self.rounds += 1;
        self.since_round = None;
        self.rounds
    }

    /// The server has every in-progress ack of round `number`, begun at `start` ([`RoundOut`]): the claims it
    /// covered were renewed no earlier than `start`.
    fn round_out(&mut self, number: u64, start: Instant) {
        if number <= self.renewed.0 {
            return;
        }
        self.renewed = (number, start);
        // Those held when it began are renewed; those taken in since came no earlier than `since_round`.
        let bound = self.since_round.map_or(start, |s| s.min(start));
        self.floor = self.floor.map(|f| f.max(bound));
    }

    /// Marks lapsed every held notification whose claim JetStream may have let go of at `now` ([`claim_alive`],
    /// `span` being the part of the ack wait a claim is counted on): it was not renewed for that long. Only looks
    /// at each when one may have lapsed (the floor is that old). Returns what lapsed, if any.
    fn lapse(&mut self, now: Instant, span: Duration) -> Option<Lapse> {
        let floor = self.floor?;
        if claim_alive(floor, now, span) {
            return None;
        }
        let renewed = self.renewed;
        let (mut count, mut oldest, mut floor) = (0, now, None::<Instant>);
        for entry in self.by_id.values_mut().filter(|e| !e.lapsed) {
            let renewal = Self::renewal(renewed, entry);
            if claim_alive(renewal, now, span) {
                floor = Some(floor.map_or(renewal, |f| f.min(renewal)));
            } else {
                entry.lapsed = true;
                count += 1;
                oldest = oldest.min(renewal);
            }
        }
        self.floor = floor;
        self.lapsed += count;
        (count > 0).then_some(Lapse {
            count,
            renewed: oldest,
        })
    }

    /// Until when every held notification's claim is alive, as far as the node knows (`None`: nothing held, no
    /// limit); now (no fast answer) while some lapsed ones are not yet forgotten.
    fn alive_until(&self, span: Duration, now: Instant) -> Option<Instant> {
        if self.lapsed > 0 {
            return Some(now);
        }
        self.floor.map(|f| f + span)
    }

    /// Whether `id` is held and its claim lapsed.
    fn is_lapsed(&self, id: u128) -> bool {
        self.by_id.get(&id).is_some_and(|e| e.lapsed)
    }

    /// Forgets `id` without any ack when its claim lapsed; true when it did.
    fn forget_lapsed(&mut self, id: u128) -> bool {
        if !self.is_lapsed(id) {
            return false;
        }
        self.take_known(id);
        true
    }

    /// Whether a pulled message (stream sequence `seq`) is a notification this node finished lately and does not
    /// hold: its final ack was lost, and it is to be acked again, not delivered.
    fn finished_lately(&mut self, id: u128, seq: u64, now: Instant, keep: Duration) -> bool {
        !self.contains(id) && self.finished.matches(seq, id, now, keep)
    }

    /// Every message held for `id`, forgotten here (none when the id is not held).
    #[cfg(test)]
    fn take(&mut self, id: u128) -> Vec<M> {
        self.take_known(id).0
    }

    /// Every message held for `id` and its retry state, forgotten here.
    fn take_known(&mut self, id: u128) -> (Vec<M>, Option<Known>) {
        let known = self.known.remove(&id);
        self.releasing.remove(&id);
        match self.by_id.remove(&id) {
            Some(entry) => {
                if entry.lapsed {
                    self.lapsed -= 1;
                }
                (entry.messages, known)
            }
            None => (Vec::new(), known),
        }
    }

    /// Marks `id` as given back with `nak` once the writes of its retry counts are confirmed; what
    /// [`Held::take_released`] takes it with.
    fn release_later(&mut self, id: u128, nak: AckKind) -> u64 {
        let token = self.next_token;
        self.next_token += 1;
        self.releasing.insert(id, (token, nak));
        token
    }

    /// Every message held for `id`, forgotten here, when it is still held for the give-back of `token` (nothing
    /// when it went back otherwise meanwhile, and when a later give-back, or a new delivery, took its place).
    fn take_released(&mut self, id: u128, token: u64) -> Vec<M> {
        if self.releasing.get(&id).is_some_and(|(t, _)| *t == token) {
            // Lapsed meanwhile: forgotten without its nak (another node may hold it now).
            let lapsed = self.is_lapsed(id);
            let messages = self.take_known(id).0;
            if lapsed { Vec::new() } else { messages }
        } else {
            Vec::new()
        }
    }

    /// Whether `id` is held until it is given back ([`Held::release_later`]).
    fn is_releasing(&self, id: u128) -> bool {
        self.releasing.contains_key(&id)
    }

    /// The retry state of `id`, when it is held and known.
    fn known_of(&self, id: u128) -> Option<Known> {
        self.known.get(&id).copied()
    }

    /// Whether a message for which `is` holds is held for `id`.
    fn holds(&self, id: u128, is: impl Fn(&M) -> bool) -> bool {
        self.by_id
            .get(&id)
            .is_some_and(|e| e.messages.iter().any(is))
    }

    /// Sets the retry state of `id`, when it is held.
    fn know(&mut self, id: u128, known: Known) {
        if self.by_id.get(&id).is_some_and(|e| !e.lapsed) {
            self.known.insert(id, known);
        }
    }

    /// The retry state of `id`, when it is held and known, to change.
    fn known_mut(&mut self, id: u128) -> Option<&mut Known> {
        self.known.get_mut(&id)
    }

    /// The messages held for `id`, when it is.
    fn messages_for(&self, id: u128) -> &[M] {
        self.by_id.get(&id).map_or(&[], |e| e.messages.as_slice())
    }

    fn contains(&self, id: u128) -> bool {
        self.by_id.contains_key(&id)
    }

    /// Notifications held.
    fn len(&self) -> usize {
        self.by_id.len()
    }

    #[cfg(test)]
    fn messages_of(&self, id: u128) -> usize {
        self.by_id.get(&id).map_or(0, |e| e.messages.len())
    }

    /// Every message held, of every notification whose claim has not lapsed.
    fn messages(&self) -> impl Iterator<Item = &M> {
        self.by_id
            .values()
            .filter(|e| !e.lapsed)
            .flat_map(|e| e.messages.iter())
    }

    /// Every message held, all forgotten.
    #[cfg(test)]
    fn drain(&mut self) -> Vec<M> {
        self.drain_known()
            .into_iter()
            .flat_map(|(_, m, _, _)| m)
            .collect()
    }

    /// Every notification held, with its messages, its retry state and the nak it was being given back with
    /// ([`Held::release_later`]), all forgotten; those whose claim lapsed are forgotten without being given.
    fn drain_known(&mut self) -> Vec<Drained<M>> {
        let mut known = std::mem::take(&mut self.known);
        let mut releasing = std::mem::take(&mut self.releasing);
        self.lapsed = 0;
        self.floor = None;
        self.by_id
            .drain()
            .filter(|(_, e)| !e.lapsed)
            .map(|(id, e)| {
                let nak = releasing.remove(&id).map(|(_, nak)| nak);
                (id, e.messages, known.remove(&id), nak)
            })
            .collect()
    }
}

/// Whether two pulled messages carry the same notification: the same stream message (a redelivery), or, should
/// either reply subject not say, the same payload.
fn same_message(a: &jetstream::Message, b: &jetstream::Message) -> bool {
    match (a.info(), b.info()) {
        (Ok(a), Ok(b)) => a.stream == b.stream && a.stream_sequence == b.stream_sequence,
        _ => a.payload == b.payload,
    }
}

/// Work for [`ack_loop`]: acks of pulled messages (`M`: [`jetstream::Message`] in service). Nearly every job is an
/// ack: boxing the message to shrink the rare barrier would cost an allocation per notification.
#[allow(clippy::large_enum_variant)]
enum AckJob<M = jetstream::Message> {
    Ack(M, AckKind),
    /// Answered once every ack queued before it went out (a stop waits for it).
    Barrier(tokio::sync::oneshot::Sender<()>),
}

/// How [`ack_loop`] reaches the server: [`NatsAcks`] in service, a stand-in in its tests.
trait AckClient: Clone + Send + Sync + 'static {
    /// A pulled message, which the acks answer.
    type Message: Send + 'static;

    /// Sends `kind` (an in-progress ack, a nak) for `message` without waiting for an answer.
    fn send(
        &self,
        message: &Self::Message,
        kind: AckKind,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// Sends `kind` (a final ack, a term) for `message` once, and waits for the server to answer that it has it.
    fn confirm(
        &self,
        message: &Self::Message,
        kind: AckKind,
    ) -> impl Future<Output = Result<(), String>> + Send;

    /// The final ack (or term) of `message` was confirmed, or given up ([`final_ack`]): from now on, what the node
    /// remembers of its notification may be forgotten after a while ([`Finished`]).
    fn settled(&self, message: &Self::Message);
}

/// Acks over the node's NATS connection.
#[derive(Clone)]
struct NatsAcks {
    client: async_nats::Client,
    /// What the node holds and finished lately ([`JetStreamSpool::held`]).
    held: Arc<Mutex<Held<jetstream::Message>>>,
    /// The consumer's ack wait as the server has it (milliseconds).
    ack_wait_ms: Arc<AtomicU64>,
    /// In-progress acks the client refused ([`JetStreamSpool::progress_failed`]).
    progress_failed: Arc<AtomicU64>,
}

impl AckClient for NatsAcks {
    type Message = jetstream::Message;

    fn settled(&self, message: &jetstream::Message) {
        // The notification's id is the message's first 16 bytes ([`encode_message`]): a final ack only goes to a
        // message read as a notification.
        let (Ok(info), Some(key)) = (message.info(), message.payload.first_chunk::<16>()) else {
            return;
        };
        let ack_wait = Duration::from_millis(self.ack_wait_ms.load(Ordering::Relaxed));
        lock(&self.held).finished.settle(
            info.stream_sequence,
            u128::from_be_bytes(*key),
            Instant::now(),
            finished_for(ack_wait),
        );
    }

    async fn send(&self, message: &jetstream::Message, kind: AckKind) -> Result<(), String> {
        let sent = message.ack_with(kind).await.map_err(|e| e.to_string());
        if sent.is_err() && matches!(kind, AckKind::Progress) {
            self.progress_failed.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }

    async fn confirm(&self, message: &jetstream::Message, kind: AckKind) -> Result<(), String> {
        // Not a JetStream message (nothing to answer): nothing to confirm.
        let Some(reply) = message.reply.clone() else {
            return Ok(());
        };
        self.client
            .request(reply, kind.into())
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}

/// How [`final_ack`] sends a final ack again while the server does not confirm it.
#[derive(Debug, Clone)]
struct FinalAckRetry {
    /// The pause after the first attempt; it doubles with each one, up to `max_pause`.
    first_pause: Duration,
    max_pause: Duration,
    /// Attempts go on at least this long, however short the ack wait.
    min_patience: Duration,
    /// The consumer's ack wait as the server has it (milliseconds): attempts go on at least this long.
    ack_wait_ms: Arc<AtomicU64>,
}

impl FinalAckRetry {
    fn patience(&self) -> Duration {
        let ack_wait = Duration::from_millis(self.ack_wait_ms.load(Ordering::Relaxed));
        final_ack_patience(ack_wait, self.min_patience)
    }
}

/// Sends the acks of finished notifications and the in-progress acks of held ones, in the order they were queued.
/// A final ack (or term) waits for the server's answer ([`final_ack`]), [`MAX_ACKS_IN_FLIGHT`] at once; further
/// ones wait their turn here, in order, while the loop goes on reading its queue: the in-progress acks and naks
/// queued behind them go out at once, so that final acks a slow server does not answer (a leader election) never
/// hold up the in-progress acks that keep this node's held notifications from going to other nodes. A final ack
/// that has to wait its turn is sent once at once, without waiting for an answer: its notification gets no more
/// in-progress acks, and the server has its ack before the ack wait runs out however long the turn takes; the
/// confirmed one follows when its turn comes (the server answers the confirmation of an ack it has already, so it
/// takes its room for a round trip). No ack is overtaken that it must follow: a notification leaves
/// `held` before its final ack is queued, so no in-progress ack or nak of it comes after. A barrier is answered
/// once every final ack queued before it was answered (or given up).
async fn ack_loop<A: AckClient>(
    client: A,
    mut jobs: tokio::sync::mpsc::UnboundedReceiver<AckJob<A::Message>>,
    progress_queued: Arc<AtomicU64>,
    retry: FinalAckRetry,
) {
    let mut confirming = FuturesUnordered::new();
    // Final acks beyond the room of `confirming`, oldest first.
    let mut waiting: VecDeque<(A::Message, AckKind)> = VecDeque::new();
    let start_waiting = |confirming: &mut FuturesUnordered<_>,
                         waiting: &mut VecDeque<(A::Message, AckKind)>| {
        while confirming.len() < MAX_ACKS_IN_FLIGHT
            && let Some((message, kind)) = waiting.pop_front()
        {
            confirming.push(final_ack(client.clone(), message, kind, retry.clone()));
        }
    };
    loop {
        start_waiting(&mut confirming, &mut waiting);
        let job = if confirming.is_empty() {
            match jobs.recv().await {
                Some(job) => job,
                None => return,
            }
        } else {
            tokio::select! {
                job = jobs.recv() => match job {
                    Some(job) => job,
                    None => {
                        loop {
                            start_waiting(&mut confirming, &mut waiting);
                            if confirming.next().await.is_none() {
                                return;
                            }
                        }
                    }
                },
                _ = confirming.next() => continue,
            }
        };
        match job {
            AckJob::Ack(message, AckKind::Progress) => {
                // Sent again at the next keep-alive; a notification whose in-progress acks all fail goes to
                // another node after the ack wait.
                if let Err(e) = client.send(&message, AckKind::Progress).await {
                    tracing::debug!("JetStream in-progress ack failed: {e}");
                }
                progress_queued.fetch_sub(1, Ordering::Relaxed);
            }
            AckJob::Ack(message, kind @ (AckKind::Ack | AckKind::Term)) => {
                if waiting.is_empty() && confirming.len() < MAX_ACKS_IN_FLIGHT {
                    confirming.push(final_ack(client.clone(), message, kind, retry.clone()));
                } else {
                    // No room to await its answer yet: sent once now, confirmed when its turn comes.
                    if let Err(e) = client.send(&message, kind).await {
                        tracing::debug!(
                            "JetStream ack (its confirmation waits its turn) failed: {e}"
                        );
                    }
                    waiting.push_back((message, kind));
                }
            }
            AckJob::Ack(message, kind) => {
                if let Err(e) = client.send(&message, kind).await {
                    tracing::warn!(
                        "JetStream ack failed (the notification will be redelivered): {e}"
                    );
                }
            }
            AckJob::Barrier(done) => {
                loop {
                    start_waiting(&mut confirming, &mut waiting);
                    if confirming.next().await.is_none() {
                        break;
                    }
                }
                let _ = done.send(());
            }
        }
    }
}

/// Sends a final ack (or term) and waits for the server to answer that it has it, sending it again while no answer
/// comes (the connection dropped after it went out; "no responders" while NATS elects a new leader for the
/// consumer), after pauses doubling up to `retry.max_pause`, until it is confirmed or the consumer's ack wait has
/// passed since the first attempt (never less than `retry.min_patience`). One that is never answered leaves the
/// message to be redelivered: to this node, it is acked again ([`Finished`] remembers it until the ack is confirmed
/// or given up, and a while after); to another, it is delivered a second time.
async fn final_ack<A: AckClient>(
    client: A,
    message: A::Message,
    kind: AckKind,
    retry: FinalAckRetry,
) {
    let patience = retry.patience();
    let until = tokio::time::Instant::now() + patience;
    let mut pause = retry.first_pause;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let e = match client.confirm(&message, kind).await {
            Ok(()) => {
                if attempts > 1 {
                    tracing::debug!("JetStream ack confirmed at attempt {attempts}");
                }
                break;
            }
            Err(e) => e,
        };
        let now = tokio::time::Instant::now();
        if now >= until {
            tracing::warn!(
                "JetStream ack not confirmed after {attempts} attempts over {patience:?} ({e}); the notification \
                 may be redelivered"
            );
            break;
        }
        tracing::debug!("JetStream ack not confirmed ({e}); sending it again");
        // The last attempt goes out once the patience has run out, not before.
        tokio::time::sleep(pause.min(until - now)).await;
        pause = (pause * 2).min(retry.max_pause);
    }
    client.settled(&message);
}

/// Figures of a JetStream spool for `/metrics` and the console.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JetStreamStats {
    pub connected: bool,
    /// Messages in the stream (not yet acked by any node).
    pub stream_messages: u64,
    pub stream_bytes: u64,
    /// Delivered to some node, not yet acked.
    pub consumer_ack_pending: u64,
    /// Not yet delivered to any node.
    pub consumer_pending: u64,
    /// Messages delivered more than once (the consumer's figure, over all nodes).
    pub consumer_redelivered: u64,
    /// The oldest message in the stream (the oldest notification not finished by any node), Unix milliseconds; 0
    /// when the stream is empty.
    pub oldest_ms: u64,
    /// Pulled by this node, not yet finished.
    pub held: u64,
    /// ...of which parked by their queue (paused, no route) and taking no pull room (at most `max_parked`).
    pub parked: u64,
    /// Pulled by this node since start.
    pub pulled: u64,
    /// ...of which had been delivered before (to this or another node).
    pub redelivered_here: u64,
    /// Notifications this node gave back to the stream for a later retry, or that a failed queue task left (nak
    /// with delay).
    pub handed_back: u64,
    /// Held notifications whose claim lapsed (this node was stopped, or could not renew its claims, for about the
    /// ack wait): forgotten without being sent, as JetStream gives them to other nodes.
    pub lapsed: u64,
}

/// The server URLs for a log line or an error: without their user information (a password or token may be in it).
fn shown_servers(servers: &[String]) -> String {
    servers
        .iter()
        .map(|url| {
            let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
            let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
            match rest[..authority_end].rsplit_once('@') {
                Some((_, host)) if scheme.is_empty() => format!("{host}{}", &rest[authority_end..]),
                Some((_, host)) => format!("{scheme}://{host}{}", &rest[authority_end..]),
                None => url.clone(),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Creates the stream, or checks that the existing one fits: work-queue retention, our subject, the replicas asked.
async fn ensure_stream(
    ctx: &jetstream::Context,
    options: &JetStreamOptions,
    subject: &str,
) -> Result<(), SpoolError> {
    match ctx.get_stream(&options.stream).await {
        Ok(mut existing) => {
            let info = existing
                .info()
                .await
                .map_err(|e| nats_request_error("reading the stream", &e))?;
            check_compatible(&info.config, options, subject)
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(_)
            ) =>
        {
            let config = stream::Config {
                name: options.stream.clone(),
                subjects: vec![subject.to_owned()],
                retention: stream::RetentionPolicy::WorkQueue,
                storage: stream::StorageType::File,
                num_replicas: options.replicas,
                duplicate_window: options.duplicate_window,
                // Should someone set a limit on the stream later, a full stream refuses new notifications (the
                // senders are told to retry) rather than deleting accepted ones.
                discard: stream::DiscardPolicy::New,
                ..Default::default()
            };
            ctx.create_stream(config)
                .await
                .map_err(|e| nats_request_error("creating the stream", &e))?;
            tracing::info!(
                stream = %options.stream,
                replicas = options.replicas,
                "created the JetStream stream"
            );
            Ok(())
        }
        Err(e) => Err(nats_request_error("looking up the stream", &e)),
    }
}

/// Why an existing stream cannot serve as herald's spool.
pub fn check_compatible(
    config: &stream::Config,
    options: &JetStreamOptions,
    subject: &str,
) -> Result<(), SpoolError> {
    let refuse = |what: String| {
        Err(SpoolError::Config(format!(
            "the existing JetStream stream {:?} does not fit herald: {what}; fix or delete the stream, or name another one with spool_nats_stream",
            options.stream
        )))
    };
    if config.retention != stream::RetentionPolicy::WorkQueue {
        return refuse(format!(
            "its retention is {:?}, herald needs WorkQueue",
            config.retention
        ));
    }
    if !config.subjects.iter().any(|s| s == subject) {
        return refuse(format!(
            "its subjects {:?} do not include {subject:?}",
            config.subjects
        ));
    }
    if config.num_replicas != options.replicas {
        return refuse(format!(
            "it has {} replicas, spool_nats_replicas asks for {}",
            config.num_replicas, options.replicas
        ));
    }
    if config.storage != stream::StorageType::File {
        return refuse("its storage is memory, herald needs file storage".into());
    }
    // Limits that delete accepted notifications: an age limit deletes them whatever the discard policy, and with
    // discard Old a full stream makes room by deleting the oldest. With discard New a full stream refuses new
    // notifications instead (the senders are told to retry), which loses nothing.
    if !config.max_age.is_zero() {
        return refuse(format!(
            "its max_age is {:?}, which deletes notifications not yet delivered; remove it (nats stream edit {} --max-age=0)",
            config.max_age, options.stream
        ));
    }
    if config.max_messages_per_subject > 0 {
        return refuse(format!(
            "its max_msgs_per_subject is {}, which deletes notifications not yet delivered; remove it (nats stream \
             edit {} --max-msgs-per-subject=-1)",
            config.max_messages_per_subject, options.stream
        ));
    }
    if config.discard == stream::DiscardPolicy::Old {
        for (field, value, flag) in [
            ("max_msgs", config.max_messages, "--max-msgs=-1"),
            ("max_bytes", config.max_bytes, "--max-bytes=-1"),
        ] {
            if value > 0 {
                return refuse(format!(
                    "its {field} is {value} with discard Old, which deletes the oldest notifications not yet \
                     delivered when the stream is full; set discard New (nats stream edit {} --discard=new) or \
                     remove the limit ({flag})",
                    options.stream
                ));
            }
        }
    }
    Ok(())
}

/// The consumer's `max_ack_pending` for this node's options: `options.max_ack_pending`, or -1 (no limit) for 0.
///
/// A message given back with a nak and a delay (a retry handed back to the stream, one of a domain or format this
/// node does not deliver, a parked one above the bound) stays in the consumer's pending set until it is delivered
/// again, and counts toward this limit meanwhile. One failing domain's retries (hours apart) could fill it: the
/// server would then deliver nothing to any node, for any domain, until their delays run out. Each node bounds
/// what it holds itself (`max_held`, `max_parked`), so no limit is needed here by default.
fn consumer_max_ack_pending(options: &JetStreamOptions) -> i64 {
    if options.max_ack_pending > 0 {
        options.max_ack_pending
    } else {
        -1
    }
}

/// Whether `ack_pending` notifications pulled and not acked come near the consumer's `max_ack_pending` (80 % of
/// it), past which the server delivers nothing more to any node. Never with no limit (-1).
fn near_ack_pending_limit(ack_pending: u64, limit: i64) -> bool {
    u64::try_from(limit).is_ok_and(|limit| limit > 0 && ack_pending.saturating_mul(5) >= limit * 4)
}

/// The consumer this node creates when there is none: a durable pull consumer on the notifications' subject,
/// explicit acks, redelivered without limit (herald counts the retries itself), its replica count and storage the
/// stream's (left to the server).
fn wanted_consumer(options: &JetStreamOptions, subject: &str) -> consumer::pull::Config {
    consumer::pull::Config {
        durable_name: Some(options.consumer.clone()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: options.ack_wait,
        max_deliver: -1,
        max_ack_pending: consumer_max_ack_pending(options),
        filter_subject: subject.to_owned(),
        ..Default::default()
    }
}

/// When an existing consumer is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checked {
    /// At this node's start: its ack wait and its room for unacked messages are set to this node's options.
    AtStart,
    /// While the nodes run (every figures refresh): only what every node wants alike is put right. The ack wait
    /// and the room for unacked messages are each node's to set at its start (the last to start wins, the others
    /// follow what the server has): nodes configured otherwise would undo each other's every second.
    Running,
}

/// What a check of an existing consumer found ([`check_consumer`]).
#[derive(Debug, PartialEq)]
struct ConsumerCheck {
    /// Its settings that cannot serve herald and that herald does not change, each saying what it is and what
    /// herald needs.
    unfit: Vec<String>,
    /// Its configuration with what may change in place put right, with what changed; `None` when nothing needs to.
    update: Option<(consumer::Config, Vec<String>)>,
}

/// Checks an existing consumer against what herald needs (the same check at start and while the nodes run).
fn check_consumer(
    existing: &consumer::Config,
    options: &JetStreamOptions,
    subject: &str,
    when: Checked,
) -> ConsumerCheck {
    let mut unfit = Vec::new();
    if let Some(deliver) = &existing.deliver_subject {
        unfit.push(format!(
            "it is a push consumer (deliver_subject {deliver:?}), herald needs a pull consumer"
        ));
    }
    if existing.ack_policy != consumer::AckPolicy::Explicit {
        unfit.push(format!(
            "its ack_policy is {:?}, herald needs Explicit",
            existing.ack_policy
        ));
    }
    if existing.max_deliver > 0 {
        unfit.push(format!(
            "its max_deliver is {}, herald needs it unlimited (-1): it counts the retries itself, and a \
             notification delivered that many times would stay in the stream undelivered",
            existing.max_deliver
        ));
    }
    let filters: Vec<&str> = if existing.filter_subject.is_empty() {
        existing
            .filter_subjects
            .iter()
            .map(String::as_str)
            .collect()
    } else {
        vec![existing.filter_subject.as_str()]
    };
    if filters != [subject] {
        unfit.push(format!(
            "its filter subject is {filters:?}, herald needs {subject:?}"
        ));
    }
    if existing.deliver_policy != consumer::DeliverPolicy::All {
        unfit.push(format!(
            "its deliver_policy is {:?}, herald needs All",
            existing.deliver_policy
        ));
    }
    if existing.headers_only {
        unfit.push("it delivers headers only, herald needs the messages' content".into());
    }
    // 0: the stream's. Fewer servers than the stream's would stop delivery when one of them is lost, and NATS
    // cannot change a work-queue consumer's replicas in place.
    if existing.num_replicas != 0 && existing.num_replicas != options.replicas {
        unfit.push(format!(
            "it has {} replicas, herald needs the stream's {} (spool_nats_replicas)",
            existing.num_replicas, options.replicas
        ));
    }
    // NATS cannot change a consumer's storage in place.
    if existing.memory_storage {
        unfit.push(
            "its state is stored in memory (mem_storage), herald needs it on file like the stream's: a NATS \
             restart would lose what it delivered and what waits for a retry"
                .into(),
        );
    }
    let mut wanted = existing.clone();
    let mut changes = Vec::new();
    if when == Checked::AtStart {
        if wanted.ack_wait != options.ack_wait {
            changes.push(format!(
                "ack_wait {:?} -> {:?}",
                wanted.ack_wait, options.ack_wait
            ));
            wanted.ack_wait = options.ack_wait;
        }
        let max_ack_pending = consumer_max_ack_pending(options);
        if wanted.max_ack_pending != max_ack_pending {
            changes.push(format!(
                "max_ack_pending {} -> {max_ack_pending}",
                wanted.max_ack_pending
            ));
            wanted.max_ack_pending = max_ack_pending;
        }
    }
    // A backoff list replaces the ack wait of redeliveries: a held notification would go to another node before
    // its in-progress ack.
    if !wanted.backoff.is_empty() {
        changes.push(format!("backoff {:?} -> none", wanted.backoff));
        wanted.backoff.clear();
    }
    // A durable consumer with an inactivity threshold is deleted by the server when no node pulls for that long.
    if !wanted.inactive_threshold.is_zero() {
        changes.push(format!(
            "inactive_threshold {:?} -> none",
            wanted.inactive_threshold
        ));
        wanted.inactive_threshold = Duration::ZERO;
    }
    if wanted.max_batch > 0 && wanted.max_batch < MAX_PULL_BATCH as i64 {
        changes.push(format!("max_batch {} -> none", wanted.max_batch));
        wanted.max_batch = 0;
    }
    if !wanted.max_expires.is_zero() && wanted.max_expires < PULL_EXPIRES {
        changes.push(format!("max_expires {:?} -> none", wanted.max_expires));
        wanted.max_expires = Duration::ZERO;
    }
    ConsumerCheck {
        unfit,
        update: (!changes.is_empty()).then_some((wanted, changes)),
    }
}

/// What an existing consumer needs to serve this node at its start: `Err` says which of its settings cannot serve
/// herald and cannot change in place (another ack policy, a delivery limit, another filter, replicas or storage
/// other than the stream's, ...); `Ok(Some((config, changes)))` is its configuration with what may change in
/// place set to this node's options (the ack wait, the room for unacked messages, and limits that would get in the
/// way of its pulls), with what changed, to update it with; `Ok(None)` when it fits as it is.
fn reconcile_consumer(
    existing: &consumer::Config,
    options: &JetStreamOptions,
    subject: &str,
) -> Result<Option<(consumer::Config, Vec<String>)>, String> {
    let check = check_consumer(existing, options, subject, Checked::AtStart);
    if check.unfit.is_empty() {
        Ok(check.update)
    } else {
        Err(check.unfit.join("; "))
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Why the NATS client's last attempt to connect failed (`IO error: invalid peer certificate: UnknownIssuer`, a
/// TLS handshake with a server that does not speak TLS, a refused connection), as its events report it, until it
/// connects. A request sent meanwhile only times out: what herald says of an unreachable NATS names this cause.
/// The text names no server address (it carries no password of `spool_nats_url`).
#[derive(Debug, Clone, Default)]
struct ConnectFailure(Arc<Mutex<Option<String>>>);

impl ConnectFailure {
    /// Takes in one of the client's events: a client error is the latest cause, a connection ends it.
    fn note(&self, event: &async_nats::Event) {
        match event {
            async_nats::Event::ClientError(async_nats::ClientError::Other(why)) => {
                *lock(&self.0) = Some(why.clone());
            }
            async_nats::Event::Connected => *lock(&self.0) = None,
            _ => {}
        }
    }

    /// The cause, while the client has no connection.
    fn get(&self) -> Option<String> {
        lock(&self.0).clone()
    }

    /// `why` (a request that timed out, say), with the cause of the failed connection when one is known.
    fn explain(&self, why: String) -> String {
        match self.get() {
            Some(cause) => format!("{why}; connecting failed: {cause}"),
            None => why,
        }
    }
}

/// Whether a repeated failure is to be reported again: when its text changed, or a minute after it was last.
#[derive(Debug, Default)]
pub(crate) struct Reported {
    last: Option<(String, Instant)>,
}

impl Reported {
    pub(crate) fn due(&mut self, what: &str) -> bool {
        let now = Instant::now();
        let due = match &self.last {
            Some((text, at)) => text != what || now.duration_since(*at) >= REPORT_EVERY,
            None => true,
        };
        if due {
            self.last = Some((what.to_owned(), now));
        }
        due
    }

    /// The failure is over: the next one is reported at once.
    pub(crate) fn clear(&mut self) -> bool {
        self.last.take().is_some()
    }
}

/// Pulls notifications for this node and hands them over; reconnects by itself.
///
/// Each pull asks for no more than the node's free room, and every message the server delivers for it is read and
/// taken in, so none is left unread to come back after the ack wait (counted as one more delivery, hence one more
/// retry). Should pulls keep failing (the consumer was deleted: no responders), the stream and the consumer are set
/// up again.
///
/// Once the node stops (or nobody takes the deliveries any more), the pull under way is read to its end, not given
/// up: what it still brings is kept, not handed over, and given back to the stream (a nak) once the server ended
/// the pull (it delivered all it was asked for, or said the pull expired, within [`PULL_EXPIRES`]), when nothing
/// more can come for it. Given back earlier, a message would come straight back into the pull still waiting (the
/// server redelivers a nak at once to any waiting pull), each time counting one more delivery; and a pull given up
/// on this side (its subscription dropped) loses what the server sent for it before it heard of that, which would
/// wait for the ack wait.
async fn pull_loop(
    spool: std::sync::Weak<JetStreamSpool>,
    mut consumer: consumer::PullConsumer,
    tx: tokio::sync::mpsc::Sender<StoredNotification>,
    pull_open: Arc<tokio::sync::Mutex<()>>,
    mut stopping: tokio::sync::watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    let mut reported = Reported::default();
    let mut budget_reported = Reported::default();
    loop {
        if failures >= PULL_FAILURES_BEFORE_SETUP {
            let Some(s) = spool.upgrade() else {
                return;
            };
            if s.closed.load(Ordering::Relaxed) {
                return;
            }
            match s.setup().await {
                Ok((fresh, _)) => {
                    consumer = fresh;
                    failures = 0;
                }
                // Someone changed the consumer or the stream so that it no longer fits: the operator's to fix.
                Err(e @ SpoolError::Config(_)) => {
                    if reported.due(&e.to_string()) {
                        tracing::error!(
                            "JetStream pulls fail and the stream or consumer no longer fits: {e}; this node \
                             delivers nothing until it is fixed"
                        );
                    }
                }
                Err(e) => tracing::debug!("JetStream setup after failed pulls: {e}"),
            }
            drop(s);
            if failures > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        // Room first: a node pulls no more than it holds at most (`max_held`), so that the consumer's room is
        // shared among the nodes and a node that dies leaves at most that many to the ack wait.
        let (batch, connects, read_budget, expires) = loop {
            let Some(s) = spool.upgrade() else {
                return;
            };
            if s.closed.load(Ordering::Relaxed) || tx.is_closed() {
                return;
            }
            let room = s.room();
            let connects = s.client.statistics().connects.load(Ordering::Relaxed);
            let budget = read_budget(s.consumer_ack_wait());
            let expires = pull_expires(s.consumer_ack_wait());
            drop(s);
            if room > 0 {
                break (room.min(MAX_PULL_BATCH), connects, budget, expires);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // A pull is open only under this lock, and none opens once the node stops: a stop that holds the lock
        // knows no pull of this node is open.
        let open = pull_open.clone().lock_owned().await;
        match spool.upgrade() {
            // What this pull brings was delivered no earlier than now ([`Held::arrive`]).
            Some(s) if !s.closed.load(Ordering::Relaxed) => {
                lock(&s.held).pull_since = Some(Instant::now());
            }
            _ => return,
        }
        let messages = consumer
            .batch()
            .max_messages(batch)
            .expires(expires)
            .messages()
            .await;
        let mut messages = match messages {
            Ok(m) => m,
            Err(e) => {
                pull_over(&spool);
                drop(open);
                tracing::warn!("JetStream pull: {e}; retrying");
                if tx.is_closed() {
                    return;
                }
                failures += 1;
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        // Delivered for this pull and not handed over (the node stops, or nobody takes them any more): given back
        // once the pull ended, each with its notification's id and, when it is known, its retry state.
        let mut kept: Vec<(u128, jetstream::Message, Option<Known>)> = Vec::new();
        let mut failed = false;
        // The messages of the pull, in the order they came, each once what the bucket of retry counts says of it
        // is read ([`JetStreamSpool::prepare`]): up to READS_AT_ONCE of them at once, none past the read budget.
        let mut ready: FuturesOrdered<Preparing> = FuturesOrdered::new();
        let read_until = tokio::time::Instant::now() + read_budget;
        let (mut pull_ended, mut over_budget) = (false, 0u64);
        loop {
            if pull_ended && ready.is_empty() {
                break;
            }
            let event = tokio::select! {
                biased;
                Some(prepared) = ready.next(), if !ready.is_empty() => Event::Ready(prepared),
                next = tokio::time::timeout(Duration::from_secs(1), messages.next()),
                    if !pull_ended && ready.len() < READS_AT_ONCE => Event::Pulled(next),
            };
            let (pulled, looked) = match event {
                Event::Pulled(next) => {
                    // The pull ends when the server delivered all it asked for or said it expired. A reconnection
                    // loses the server's answer: a pull that is idle after one is given up (nothing delivered for
                    // it is left in the subscription) and asked again.
                    let next = match next {
                        Ok(Some(next)) => next,
                        Ok(None) => {
                            pull_ended = true;
                            continue;
                        }
                        Err(_) => {
                            pull_ended = spool.upgrade().is_some_and(|s| {
                                s.client.statistics().connects.load(Ordering::Relaxed) != connects
                            });
                            continue;
                        }
                    };
                    let message = match next {
                        Ok(m) => m,
                        Err(e) => {
                            // No responders (the consumer is gone), the consumer deleted, a leader change: the
                            // pull ends.
                            if failures + 1 >= PULL_FAILURES_BEFORE_SETUP {
                                tracing::warn!(
                                    "JetStream pull: {e}; setting the consumer up again"
                                );
                            } else {
                                tracing::debug!("JetStream pull: {e}");
                            }
                            failed = true;
                            pull_ended = true;
                            continue;
                        }
                    };
                    let Some(spool) = spool.upgrade() else {
                        kept.push((0, message, None));
                        continue;
                    };
                    failures = 0;
                    if reported.clear() {
                        tracing::info!("JetStream pulls work again");
                    }
                    // The notification keeps the key the accepting node gave it, the id its sender was answered:
                    // it is logged, looked up and reported under that id on whichever node delivers it.
                    let pulled = match decode_message(&message.payload) {
                        Ok(stored) => Pulled::Notification(message, stored),
                        // A record of a newer format (a rolling upgrade: a newer node accepted it) goes back to
                        // the stream for a node that reads it; anything else is not a herald notification.
                        Err(e) if e.is_newer_format() => Pulled::Newer(message, e.to_string()),
                        Err(e) => {
                            drop(spool);
                            tracing::warn!(
                                "JetStream message is not a herald notification ({e}); dropped"
                            );
                            let _ = message.ack_with(AckKind::Term).await;
                            continue;
                        }
                    };
                    // Nothing to read and nothing before it in order: on at once, without the queue.
                    match spool.prepare(pulled, read_until) {
                        Preparing::Ready(Some(prepared)) if ready.is_empty() => prepared,
                        preparing => {
                            ready.push_back(preparing);
                            continue;
                        }
                    }
                }
                Event::Ready(prepared) => prepared,
            };
            let Some(spool) = spool.upgrade() else {
                kept.push((0, pulled.into_message(), None));
                continue;
            };
            if looked == Looked::OverBudget {
                over_budget += 1;
            }
            let (delivered, seq) = delivery_of(pulled.message());
            let (message, mut stored) = match pulled {
                Pulled::Notification(message, stored) => (message, stored),
                Pulled::Newer(message, e) => {
                    tracing::warn!(
                        "JetStream message in a record format this build does not read ({e}); back to the stream \
                         for {NEWER_FORMAT_DELAY:?}, for a node that reads it"
                    );
                    // Its retries so far go back with it (this delivery is no attempt), when they are known.
                    if looked.known()
                        && let (Some(slot), Some(id)) =
                            (slot_of(&message), message.payload.first_chunk::<16>())
                    {
                        let id = u128::from_be_bytes(*id);
                        let known = arrival_known(id, 0, 0, delivered, &looked);
                        spool
                            .retry_book
                            .put(slot, settled_state(id, known, delivered));
                    }
                    drop(spool);
                    let _ = message
                        .ack_with(AckKind::Nak(Some(NEWER_FORMAT_DELAY)))
                        .await;
                    continue;
                }
            };
            // A notification delivered before comes with its retries so far, from the bucket of retry counts (a
            // first delivery reads nothing), and waits for its next attempt when one is set.
            let known = arrival_known(
                stored.key.0,
                stored.retries,
                stored.next_attempt_ms,
                delivered,
                &looked,
            );
            stored.retries = known.retries;
            stored.next_attempt_ms = known.next_attempt_ms;
            let key = stored.key;
            let arrival = match spool.take_in(key.0, seq, message, known, tx.is_closed()) {
                Taken::Arrived(arrival) => arrival,
                Taken::Finished(message) => {
                    // Finished here already: its final ack was lost. Acked again, not delivered a second time.
                    tracing::debug!(
                        "{key}: delivered again by JetStream after this node finished it; acked again, not \
                         delivered twice"
                    );
                    let _ = spool.acks.send(AckJob::Ack(message, AckKind::Ack));
                    continue;
                }
                Taken::Kept(message) => {
                    kept.push((key.0, message, looked.known().then_some(known)));
                    continue;
                }
            };
            spool.pulled.fetch_add(1, Ordering::Relaxed);
            if delivered > 1 {
                spool.redelivered_here.fetch_add(1, Ordering::Relaxed);
            }
            match arrival {
                Arrival::New => {
                    let held = spool.held.clone();
                    drop(spool);
                    // Held already: should the node stop first (while the queue has no room), it is not handed
                    // over, and the stop gives it back.
                    tokio::select! {
                        biased;
                        _ = stopping.wait_for(|stop| *stop) => {}
                        sent = tx.send(stored) => {
                            if sent.is_err() {
                                // Nobody takes the deliveries any more (gone since the check above): not held
                                // until the close, but given back once the pull ended, as when kept above.
                                let (messages, known) = lock(&held).take_known(key.0);
                                kept.extend(messages.into_iter().map(|m| (key.0, m, known)));
                            }
                        }
                    }
                }
                Arrival::Again => {
                    // Still queued or in flight here: the final ack covers this message too.
                    tracing::debug!(
                        "{key}: delivered again by JetStream while this node holds it; not queued twice"
                    );
                    drop(spool);
                }
                Arrival::Conflict(message) => {
                    tracing::warn!(
                        "{key}: another notification with this id is held here; this one goes back to the \
                         stream for {SAME_ID_DELAY:?}"
                    );
                    // Not attempted: its retries so far go back with it, when they are known.
                    if looked.known() {
                        for (slot, state) in
                            states_of(key.0, std::slice::from_ref(&message), known, true)
                        {
                            spool.retry_book.put(slot, state);
                        }
                    }
                    let _ = spool
                        .acks
                        .send(AckJob::Ack(message, AckKind::Nak(Some(SAME_ID_DELAY))));
                    drop(spool);
                }
            }
        }
        drop(messages);
        if over_budget > 0 && budget_reported.due("budget") {
            tracing::warn!(
                "reading the retry counts of a pull's notifications took longer than {read_budget:?}: the retries \
                 of the {over_budget} not read by then are counted from their delivery count (every earlier \
                 delivery counts as one)"
            );
        }
        // The pull is over: nothing more comes for it, and what it brought that was not handed over goes back for
        // another node (or this one's next start) without coming back into it, its retries so far with it (it was
        // not attempted): written before it goes, for the node that pulls it next.
        if !kept.is_empty()
            && let Some(s) = spool.upgrade()
        {
            let wait = s.options.retry_writes_wait;
            let deadline = Instant::now() + wait;
            let mut written = Vec::new();
            for (id, message, known) in &kept {
                if let Some(known) = known {
                    for (slot, state) in states_of(*id, std::slice::from_ref(message), *known, true)
                    {
                        written.push(s.retry_book.put_confirmed(slot, state, deadline));
                    }
                }
            }
            let book = s.retry_book.clone();
            drop(s);
            confirmed(
                &book,
                written,
                deadline,
                wait,
                "notifications pulled and not handed over",
            )
            .await;
        }
        join_all(kept.iter().map(|(_, m, _)| m.ack_with(AckKind::Nak(None)))).await;
        pull_over(&spool);
        drop(open);
        if failed {
            failures += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// The pull under way ended: nothing more is taken in from it.
fn pull_over(spool: &std::sync::Weak<JetStreamSpool>) {
    if let Some(s) = spool.upgrade() {
        lock(&s.held).pull_since = None;
    }
}

/// Whether the delivery a nak ends was an attempt ([`JetStreamSpool::ack`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempted {
    /// A retry handed back (or a final outcome): nothing is written, the next node counts the delivery as one.
    Yes,
    /// Given back without an attempt: the retries so far are written, settled.
    No,
}

/// What the bucket of retry counts says of a pulled message ([`JetStreamSpool::look_up`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Looked {
    /// Its first delivery: nothing read.
    First,
    /// Delivered before, and no entry.
    NoEntry,
    /// Its entry (`None`: in a format this build does not read).
    Entry(Option<RetryState>),
    /// The bucket could not be read.
    Unknown,
    /// Not read: not needed (the node stops, the message is held here already or was finished here lately).
    Skipped,
    /// Not read: the pull's read budget was spent ([`read_budget`]).
    OverBudget,
}

impl Looked {
    /// Whether the retries counted from it are known, not guessed from the delivery count: a give-back without an
    /// attempt writes them for the next node only then (a guess would replace a state the bucket has).
    fn known(&self) -> bool {
        matches!(self, Looked::First | Looked::NoEntry | Looked::Entry(_))
    }
}

/// How long the reads of the bucket of retry counts for the messages of a pull may take, for a consumer's ack
/// wait: [`READS_BUDGET`], and never more than a third of it.
fn read_budget(ack_wait: Duration) -> Duration {
    (ack_wait / 3).min(READS_BUDGET)
}

/// A pulled message's delivery count (from 1) and stream sequence.
fn delivery_of(message: &jetstream::Message) -> (u64, Option<u64>) {
    match message.info() {
        Ok(i) => (
            u64::try_from(i.delivered).unwrap_or(1).max(1),
            Some(i.stream_sequence),
        ),
        Err(_) => (1, None),
    }
}

/// Where the retry state of a pulled message goes in the bucket of retry counts.
fn slot_of(message: &jetstream::Message) -> Option<Slot> {
    let info = message.info().ok()?;
    let published_ms = info.published.unix_timestamp_nanos() / 1_000_000;
    Some(Slot {
        seq: info.stream_sequence,
        published_ms: i64::try_from(published_ms).unwrap_or(i64::MAX),
    })
}

/// A pulled message, read as far as the pull loop reads it before its turn ([`JetStreamSpool::prepare`]). Nearly
/// every one is a notification: boxing it to shrink the rare other kind would cost an allocation per message.
#[allow(clippy::large_enum_variant)]
enum Pulled {
    /// A herald notification.
    Notification(jetstream::Message, StoredNotification),
    /// A record of a newer format, and why it is not read.
    Newer(jetstream::Message, String),
}

impl Pulled {
    fn message(&self) -> &jetstream::Message {
        match self {
            Pulled::Notification(m, _) | Pulled::Newer(m, _) => m,
        }
    }

    fn into_message(self) -> jetstream::Message {
        match self {
            Pulled::Notification(m, _) | Pulled::Newer(m, _) => m,
        }
    }

    /// The notification's id: its message's first 16 bytes ([`encode_message`]).
    fn id(&self) -> Option<u128> {
        match self {
            Pulled::Notification(_, s) => Some(s.key.0),
            Pulled::Newer(m, _) => m
                .payload
                .first_chunk::<16>()
                .map(|id| u128::from_be_bytes(*id)),
        }
    }
}

/// A pulled message and what the bucket of retry counts says of it, once read: at once when there is nothing to
/// read (nearly every message: no allocation for it), or once the read's task ended.
enum Preparing {
    /// Nothing to read (`None` once taken).
    Ready(Option<(Pulled, Looked)>),
    /// The message, and the task reading its entry (`None` once taken).
    Reading(Option<Pulled>, tokio::task::JoinHandle<Looked>),
}

impl Future for Preparing {
    type Output = (Pulled, Looked);

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        use std::task::Poll;
        let this = self.get_mut();
        let done = match this {
            Preparing::Ready(done) => done.take(),
            Preparing::Reading(pulled, read) => {
                let looked = match std::pin::Pin::new(read).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(looked) => looked.unwrap_or(Looked::Unknown),
                };
                pulled.take().map(|pulled| (pulled, looked))
            }
        };
        match done {
            Some(done) => Poll::Ready(done),
            // Polled again once it gave its message: never in the pull loop (a FuturesOrdered drops what ended).
            None => Poll::Pending,
        }
    }
}

/// What the pull loop goes on with: a message of the pull (`N`: what the pull's stream gave, within a second), or
/// the next one in order, prepared. Short-lived, on the pull loop's stack.
#[allow(clippy::large_enum_variant)]
enum Event<N> {
    Pulled(N),
    Ready((Pulled, Looked)),
}

/// The retry state of notification `id` arriving for the `delivered`-th time, its record saying `recorded_retries`
/// and `recorded_next_ms`, by what the bucket says ([`retries_at`]). A next attempt the entry sets later than now
/// is kept: the notification waits for it (it was given back while waiting for its retry).
fn arrival_known(
    id: u128,
    recorded_retries: u32,
    recorded_next_ms: u64,
    delivered: u64,
    looked: &Looked,
) -> Known {
    let state = match looked {
        Looked::Entry(Some(state)) if state.id == id => Some(state),
        _ => None,
    };
    let next_attempt_ms = match state {
        Some(s) if s.next_attempt_ms > nodes::unix_ms() => s.next_attempt_ms.max(recorded_next_ms),
        _ => recorded_next_ms,
    };
    Known {
        retries: retries_at(id, recorded_retries, delivered, state),
        next_attempt_ms,
        entry: !matches!(looked, Looked::First | Looked::NoEntry),
        guessed: !looked.known(),
    }
}

/// The retry state to write for notification `id` held as `messages`: one per message (by stream sequence), as of
/// its latest delivery. None while its retries are a guess ([`Known::guessed`]).
fn states_of(
    id: u128,
    messages: &[jetstream::Message],
    known: Known,
    settled: bool,
) -> Vec<(Slot, RetryState)> {
    let mut out: Vec<(Slot, RetryState)> = Vec::with_capacity(1);
    if known.guessed {
        return out;
    }
    for message in messages {
        let (Some(slot), (delivered, _)) = (slot_of(message), delivery_of(message)) else {
            continue;
        };
        match out.iter_mut().find(|(s, _)| s.seq == slot.seq) {
            Some((_, state)) => state.delivered = state.delivered.max(delivered),
            None => out.push((
                slot,
                RetryState {
                    id,
                    retries: known.retries,
                    next_attempt_ms: known.next_attempt_ms,
                    delivered,
                    settled,
                },
            )),
        }
    }
    out
}

/// Waits for the writes of the retry counts of `what`, going back to the stream, until `deadline` (`wait` after they
/// were queued), and says when they were not confirmed by then, or were dropped.
async fn confirmed(
    book: &RetryBook,
    written: Vec<tokio::sync::oneshot::Receiver<()>>,
    deadline: Instant,
    wait: Duration,
    what: &str,
) {
    let until = tokio::time::Instant::from_std(deadline);
    match tokio::time::timeout_at(until, join_all(written)).await {
        Err(_) => book.report_unconfirmed(what, wait),
        Ok(results) if results.iter().any(Result::is_err) => book.report_unwritten(what),
        Ok(_) => {}
    }
}

/// The state of a message given back without an attempt during its `delivered`-th delivery.
fn settled_state(id: u128, known: Known, delivered: u64) -> RetryState {
    RetryState {
        id,
        retries: known.retries,
        next_attempt_ms: known.next_attempt_ms,
        delivered,
        settled: true,
    }
}

/// What the pull loop does with a pulled notification.
enum Taken {
    /// Finished here lately: acked again.
    Finished(jetstream::Message),
    /// Not handed over (the node stops, or nobody takes the deliveries): given back once the pull ended.
    Kept(jetstream::Message),
    /// Taken in ([`Held::arrive`]).
    Arrived(Arrival<jetstream::Message>),
}

/// How often the keep-alive looks whether a round of in-progress acks is due, at most.
const KEEP_ALIVE_TICK: Duration = Duration::from_millis(250);

/// What the keep-alive does now ([`keep_alive_step`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeepAlive {
    /// Look again after this long.
    Wait(Duration),
    /// Queue a round of in-progress acks.
    Round,
}

/// Whether a round of in-progress acks is due at `now`: a `period` after the last round queued (at `last_round`),
/// and only once that round went out (`queued`, its in-progress acks not yet sent, is 0). A round due while the last
/// one is still queued (NATS slow to take them) is looked at again at the next tick, the last round queued staying
/// the reference: it goes out as soon as the queue drained, not a whole period later (two such skips would bring the
/// next in-progress ack to the edge of the ack wait, and the server would hand the notification to another node
/// while this one holds it).
fn keep_alive_step(last_round: Instant, period: Duration, now: Instant, queued: u64) -> KeepAlive {
    let due = last_round + period;
    if now < due {
        KeepAlive::Wait(due.duration_since(now).min(KEEP_ALIVE_TICK))
    } else if queued > 0 {
        KeepAlive::Wait(KEEP_ALIVE_TICK)
    } else {
        KeepAlive::Round
    }
}

/// A round of in-progress acks on its way to the server ([`keep_alive`]): it renews the claims it covers only once
/// the server is known to have every one of its acks, which the NATS client taking them does not tell (cut off from
/// the server without the connection closing, the client keeps taking them into its buffers, and one that
/// reconnects drops what it had not written). So once they all went to the client, an echo goes after them on the
/// same connection, to a subject this node listens to: the server processes a connection's messages in order, and
/// the echo coming back, on the connection the round began on and with none of its acks refused, means that the
/// server had every one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RoundOut {
    /// The round's number ([`Held::start_round`]).
    number: u64,
    /// When it began: what it renews is renewed no earlier.
    start: Instant,
    /// The client's connections (`Statistics::connects`) when it began: another one since, and what the one before
    /// had not written is lost.
    connects: u64,
    /// In-progress acks refused when it began ([`JetStreamSpool::progress_failed`]).
    failed: u64,
    /// Until when its echo is awaited, once sent: past it the round renews nothing.
    echo_until: Option<Instant>,
}

/// Where a round of in-progress acks stands ([`RoundOut::check`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RoundState {
    /// Its acks are still going to the client, or its echo has not come back yet.
    Going,
    /// The server has every one of its acks: it renews the claims it covered.
    Renewed,
    /// Some of its acks may not have reached the server (refused, lost with a connection, no echo in time): it
    /// renews nothing.
    Lost,
}

impl RoundOut {
    /// Where the round stands at `now`: `connects` and `failed` as the client and the ack loop say now, `echoed`
    /// the highest round number whose echo came back.
    fn check(&self, connects: u64, failed: u64, echoed: u64, now: Instant) -> RoundState {
        if connects != self.connects || failed != self.failed {
            RoundState::Lost
        } else if echoed >= self.number {
            RoundState::Renewed
        } else if self.echo_until.is_some_and(|until| now >= until) {
            RoundState::Lost
        } else {
            RoundState::Going
        }
    }
}

/// How long the echo of a round is awaited ([`RoundOut`]): the limit on NATS requests, and no more than the last
/// sixth of the ack wait that a claim is not counted on ([`claim_span`]), so that a round that renews nothing
/// holds up the next one by that much at most.
fn echo_wait(request_timeout: Duration, ack_wait: Duration) -> Duration {
    request_timeout
        .min(ack_wait.saturating_sub(claim_span(ack_wait)))
        .max(KEEP_ALIVE_TICK)
}

/// The echoes that came back so far ([`RoundOut`]): the highest round number read, without waiting.
fn read_echoes(echoes: &mut Option<async_nats::Subscriber>, echoed: &mut u64) {
    use futures_util::FutureExt;
    while let Some(sub) = echoes.as_mut() {
        match sub.next().now_or_never() {
            None => return,
            Some(Some(message)) => {
                if let Some(number) = std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(|n| n.parse::<u64>().ok())
                {
                    *echoed = (*echoed).max(number);
                }
            }
            // The client closed: no echo comes any more.
            Some(None) => *echoes = None,
        }
    }
}

/// Listens on a subject of its own for the echoes of the rounds of in-progress acks ([`RoundOut`]); `None` (with a
/// warning) when the client cannot: no round then renews a claim, and what this node holds lapses after about the
/// ack wait.
async fn listen_for_echoes(
    client: &async_nats::Client,
) -> (String, Option<async_nats::Subscriber>) {
    let subject = client.new_inbox();
    match client.subscribe(subject.clone()).await {
        Ok(sub) => (subject, Some(sub)),
        Err(e) => {
            tracing::warn!(
                "JetStream keep-alive: cannot listen on {subject} for the echoes of its in-progress acks ({e}); \
                 they renew no claim, and what this node holds lapses after about the ack wait"
            );
            (subject, None)
        }
    }
}

/// Sends in-progress acks for every held notification, so a slow delivery or a retry wait is not redelivered to
/// another node while this one still has it: a round every third of the consumer's ack wait as the server has it
/// (another node may have changed it), looked at again at every check ([`keep_alive_step`]). Once the server is
/// known to have every in-progress ack of a round (its echo came back: [`RoundOut`]), the claims it covered count as
/// renewed at its start ([`Held::round_out`]); a round whose echo does not come back in time renews nothing. At
/// every look, and before a round, the claims not renewed for about the ack wait are marked lapsed
/// ([`JetStreamSpool::sweep`]) and get no more in-progress acks.
async fn keep_alive(spool: std::sync::Weak<JetStreamSpool>) {
    let Some(client) = spool.upgrade().map(|s| s.client.clone()) else {
        return;
    };
    let (subject, mut sub) = listen_for_echoes(&client).await;
    let mut echoed = 0u64;
    let mut last_round = Instant::now();
    // The round queued last whose in-progress acks the server is not yet known to have.
    let mut going: Option<RoundOut> = None;
    loop {
        let Some(spool) = spool.upgrade() else {
            return;
        };
        if spool.closed.load(Ordering::Relaxed) {
            return;
        }
        read_echoes(&mut sub, &mut echoed);
        let now = Instant::now();
        let queued = spool.progress_queued.load(Ordering::Relaxed);
        let connects = spool.client.statistics().connects.load(Ordering::Relaxed);
        let failed = spool.progress_failed.load(Ordering::Relaxed);
        // Its acks all went to the client: the echo follows them.
        if queued == 0
            && let Some(round) = going.as_mut()
            && round.echo_until.is_none()
        {
            round.echo_until =
                Some(now + echo_wait(spool.options.request_timeout, spool.consumer_ack_wait()));
            if sub.is_some() {
                let client = spool.client.clone();
                let (subject, number) = (subject.clone(), round.number);
                tokio::spawn(async move {
                    if let Err(e) = client.publish(subject, number.to_string().into()).await {
                        tracing::debug!(
                            "JetStream keep-alive: echo of round {number} not sent: {e}"
                        );
                    }
                });
            }
        }
        let state = going.map(|round| round.check(connects, failed, echoed, now));
        // A round still on its way (NATS unreachable or slow: its acks have not all gone out, or its echo has not
        // come back) is not followed by another, so the queue holds at most one in-progress ack per held message.
        let busy = u64::from(state == Some(RoundState::Going)).max(queued);
        let step = keep_alive_step(last_round, spool.progress_every(), now, busy);
        // Every message held, a redelivered one's earlier copies too: whichever the server counts stays alive.
        // They go through the ordered ack queue, queued under the held lock: a notification finished or given back
        // meanwhile has its ack queued after these (its in-progress ack cannot undo a nak's delay), or is no longer
        // held and gets none.
        {
            let mut held = lock(&spool.held);
            match (state, going) {
                (Some(RoundState::Renewed), Some(round)) => {
                    held.round_out(round.number, round.start);
                    going = None;
                }
                (Some(RoundState::Lost), Some(round)) => {
                    tracing::debug!(
                        "JetStream keep-alive: round {} of in-progress acks not known to have reached the server; \
                         it renews no claim",
                        round.number
                    );
                    going = None;
                }
                _ => {}
            }
            // Before a round, and at every look: a claim not renewed for about the ack wait has lapsed, and an
            // in-progress ack sent now would not win it back (JetStream may have given it to another node).
            spool.sweep(&mut held, now);
            if step == KeepAlive::Round {
                let number = held.start_round();
                going = Some(RoundOut {
                    number,
                    start: now,
                    connects,
                    failed,
                    echo_until: None,
                });
                for message in held.messages() {
                    spool.progress_queued.fetch_add(1, Ordering::Relaxed);
                    if spool
                        .acks
                        .send(AckJob::Ack(message.clone(), AckKind::Progress))
                        .is_err()
                    {
                        spool.progress_queued.fetch_sub(1, Ordering::Relaxed);
                    }
                }
            }
        }
        drop(spool);
        match step {
            KeepAlive::Wait(pause) => tokio::time::sleep(pause).await,
            KeepAlive::Round => last_round = now,
        }
    }
}

/// How long after its last stored heartbeat a node warns that its heartbeat is not being stored: half of the time
/// after which it stops claiming Idempotency-Keys ([`beat_fresh`], half of [`nodes::BEAT_MAX_AGE`]), so that the
/// warning comes before that does.
pub const BEAT_OVERDUE: Duration =
    Duration::from_millis(nodes::BEAT_MAX_AGE.as_millis() as u64 / 4);

/// Why a heartbeat was not stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum BeatFailure {
    /// NATS did not answer the write in time (a leader being elected, a server cut off): the last heartbeat stored
    /// still stands until it ages, and the write is tried again at the next beat.
    #[error("no answer: {0}")]
    Unanswered(String),
    /// NATS refused the write (the bucket lost, no server answering for it): the last heartbeat may be gone with the
    /// bucket, so the node counts as not beating, and the bucket is opened (or created) again in the background.
    #[error("{0}")]
    Refused(String),
}

impl BeatFailure {
    /// A failed put into the bucket `bucket`, sorted by whether NATS answered.
    fn of_put(bucket: &str, e: &async_nats::jetstream::kv::PutError) -> BeatFailure {
        let text = format!("writing to {bucket}: {}", nats_failure_text(e));
        let timed_out = std::iter::successors(Some(e as &(dyn std::error::Error + 'static)), |e| {
            e.source()
        })
        .any(|cause| {
            cause
                .downcast_ref::<jetstream::context::PublishError>()
                .is_some_and(|p| p.kind() == jetstream::context::PublishErrorKind::TimedOut)
        });
        if timed_out {
            BeatFailure::Unanswered(text)
        } else {
            BeatFailure::Refused(text)
        }
    }
}

/// The heartbeat bucket as the heartbeat loop uses it ([`heartbeat`]).
trait BeatBucket: Clone + Send + Sync + 'static {
    /// Writes `beat` under its node's name.
    fn write_beat(
        &self,
        beat: &NodeBeat,
    ) -> futures_util::future::BoxFuture<'_, Result<(), BeatFailure>>;
    /// Every node's heartbeat ([`nodes::read_beats`]).
    fn read_all(&self) -> futures_util::future::BoxFuture<'_, Result<Vec<NodeBeat>, String>>;
}

impl BeatBucket for async_nats::jetstream::kv::Store {
    fn write_beat(
        &self,
        beat: &NodeBeat,
    ) -> futures_util::future::BoxFuture<'_, Result<(), BeatFailure>> {
        let (key, value) = (beat.node.clone(), beat.encode());
        Box::pin(async move {
            self.put(&key, value.into())
                .await
                .map(|_| ())
                .map_err(|e| BeatFailure::of_put(&self.name, &e))
        })
    }

    fn read_all(&self) -> futures_util::future::BoxFuture<'_, Result<Vec<NodeBeat>, String>> {
        Box::pin(nodes::read_beats(self))
    }
}

/// The node whose heartbeat the loop writes ([`heartbeat`]): the spool, or a test's stand-in.
trait BeatNode: Send + Sync + 'static {
    type Bucket: BeatBucket;
    /// The node stops: the loop ends.
    fn stopping(&self) -> bool;
    /// The heartbeat to write now.
    fn beat(&self) -> NodeBeat;
    /// Opens the bucket, creating it when missing; run in a task of its own.
    fn open_bucket(&self)
    -> futures_util::future::BoxFuture<'static, Result<Self::Bucket, String>>;
    /// The bucket was opened.
    fn opened(&self, bucket: &Self::Bucket);
    /// When the last heartbeat stored was sent; `None` once one was refused.
    fn set_stored(&self, sent: Option<tokio::time::Instant>);
    fn stored(&self) -> Option<tokio::time::Instant>;
    /// The heartbeats read.
    fn saw(&self, beats: Vec<NodeBeat>);
}

impl BeatNode for JetStreamSpool {
    type Bucket = async_nats::jetstream::kv::Store;

    fn stopping(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    fn beat(&self) -> NodeBeat {
        NodeBeat {
            node: self.options.node.clone(),
            started_ms: self.started_ms,
            seen_ms: nodes::unix_ms(),
            held: self.held(),
            pulled: self.pulled.load(Ordering::Relaxed),
            lookups: self.serves_lookups.load(Ordering::Relaxed),
        }
    }

    fn open_bucket(
        &self,
    ) -> futures_util::future::BoxFuture<'static, Result<Self::Bucket, String>> {
        let (ctx, stream, replicas) = (
            self.ctx.clone(),
            self.options.stream.clone(),
            self.options.replicas,
        );
        Box::pin(async move { nodes::open_bucket(&ctx, &stream, replicas).await })
    }

    fn opened(&self, bucket: &Self::Bucket) {
        *lock(&self.beats) = Some(bucket.clone());
    }

    fn set_stored(&self, sent: Option<tokio::time::Instant>) {
        *lock(&self.last_beat) = sent.map(tokio::time::Instant::into_std);
    }

    fn stored(&self) -> Option<tokio::time::Instant> {
        lock(&self.last_beat).map(tokio::time::Instant::from_std)
    }

    fn saw(&self, beats: Vec<NodeBeat>) {
        lock(&self.figures.view).nodes = beats;
    }
}

/// What one beat did, for the loop's warnings.
enum Beat {
    Stored,
    Failed(BeatFailure),
    /// The bucket is not open yet (the attempt to open it is under way, or failed with this).
    NoBucket(Option<String>),
}

/// Writes this node's heartbeat and reads every node's, `every` ([`nodes::BEAT_EVERY`]).
///
/// Each beat is bounded, so that one begins every [`nodes::BEAT_EVERY`] whatever NATS does: the write waits for
/// NATS's answer for [`nodes::BEAT_EVERY`] at most (during a leader election NATS answers none: the next beat tries
/// again), and the read of the heartbeats for what is left of that time. A write NATS refuses (the bucket was lost:
/// a memory-stored bucket on a single NATS server that restarted, a whole cluster restarted) makes the node open
/// the bucket again, creating it when it is missing, in a task of its own (it may wait for NATS as long as
/// `request_timeout`), while the beats go on through the bucket as it was opened; they are stored again once the
/// bucket is back. Meanwhile [`JetStreamSpool::beating`] is false (this node claims no idempotency key: the other
/// nodes cannot see it live) and a warning says so, once a minute at most. A write NATS does not answer leaves the
/// last stored heartbeat standing: [`JetStreamSpool::beating`] turns false half of [`nodes::BEAT_MAX_AGE`] after it
/// was sent, and a warning says, from [`BEAT_OVERDUE`] on, how long none was stored.
async fn heartbeat<N: BeatNode>(node: std::sync::Weak<N>, every: Duration) {
    let mut bucket: Option<N::Bucket> = None;
    let mut opening: Option<tokio::task::JoinHandle<Result<N::Bucket, String>>> = None;
    let mut reported = Reported::default();
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::time::sleep_until(next).await;
        let Some(me) = node.upgrade() else {
            return;
        };
        if me.stopping() {
            return;
        }
        let started = tokio::time::Instant::now();
        next = started + every;
        // Without a bucket (at start, or the last attempt failed) the beat waits for the attempt to open it, within
        // its own time; with one, an attempt under way is taken once it ended.
        if bucket.is_none() && opening.is_none() {
            opening = Some(tokio::spawn(me.open_bucket()));
        }
        let mut open_failure = None;
        if let Some(task) = opening.as_mut() {
            let ended = match &bucket {
                None => tokio::time::timeout_at(next, task).await.ok(),
                Some(_) if task.is_finished() => Some(task.await),
                Some(_) => None,
            };
            if let Some(ended) = ended {
                opening = None;
                match ended {
                    Ok(Ok(opened)) => {
                        me.opened(&opened);
                        bucket = Some(opened);
                    }
                    Ok(Err(e)) => open_failure = Some(e),
                    Err(e) => {
                        open_failure = Some(format!("the attempt to open the bucket stopped: {e}"))
                    }
                }
            }
        }
        let beat = match &bucket {
            None => Beat::NoBucket(open_failure),
            Some(bucket) => beat_once(&*me, bucket, next).await,
        };
        if matches!(
            beat,
            Beat::NoBucket(_) | Beat::Failed(BeatFailure::Refused(_))
        ) && opening.is_none()
        {
            opening = Some(tokio::spawn(me.open_bucket()));
        }
        report_beat(&*me, &beat, every, &mut reported);
        drop(me);
    }
}

/// One beat through `bucket`: the write, then the read of every node's heartbeat, both done by `until`.
async fn beat_once<N: BeatNode>(me: &N, bucket: &N::Bucket, until: tokio::time::Instant) -> Beat {
    let sent = tokio::time::Instant::now();
    let written = tokio::time::timeout_at(until, bucket.write_beat(&me.beat())).await;
    let beat = match written {
        Ok(Ok(())) => {
            me.set_stored(Some(sent));
            Beat::Stored
        }
        Ok(Err(failure)) => Beat::Failed(failure),
        Err(_) => Beat::Failed(BeatFailure::Unanswered(format!(
            "writing the heartbeat: no answer within {:?}",
            until.saturating_duration_since(sent)
        ))),
    };
    if let Beat::Failed(BeatFailure::Refused(_)) = beat {
        me.set_stored(None);
    }
    match tokio::time::timeout_at(until, bucket.read_all()).await {
        Ok(Ok(beats)) => me.saw(beats),
        Ok(Err(e)) => tracing::debug!("reading the node heartbeats: {e}"),
        Err(_) => tracing::debug!("reading the node heartbeats: no answer in time"),
    }
    beat
}

/// Says what the beat found: a warning once a minute at most while the heartbeat is refused, not stored for
/// [`BEAT_OVERDUE`] or more, or its bucket not open; a line once it is stored again after that.
fn report_beat<N: BeatNode>(me: &N, beat: &Beat, every: Duration, reported: &mut Reported) {
    let why = match beat {
        Beat::Stored => {
            if reported.clear() {
                tracing::info!("node heartbeat written again: the other nodes see this one live");
            }
            return;
        }
        Beat::Failed(failure) => failure.to_string(),
        Beat::NoBucket(Some(e)) => e.clone(),
        Beat::NoBucket(None) => {
            format!("opening the heartbeat bucket: no answer within {:?}", every)
        }
    };
    let unseen = matches!(
        beat,
        Beat::NoBucket(_) | Beat::Failed(BeatFailure::Refused(_))
    );
    if unseen {
        // Once a minute, whatever the error says this time.
        if reported.due("heartbeat") {
            tracing::warn!(
                "node heartbeat not written ({why}): the other nodes do not see this one live, and it claims no \
                 Idempotency-Key until it is; retrying every {:?}",
                every
            );
        }
        return;
    }
    let Some(stored) = me.stored() else { return };
    let age = stored.elapsed();
    if age >= BEAT_OVERDUE && reported.due("heartbeat overdue") {
        tracing::warn!(
            "node heartbeat not stored for {:.1} s ({why}): this node claims no Idempotency-Key once that reaches \
             {:?}, and the other nodes take it for gone at {:?}; retrying every {:?}",
            age.as_secs_f64(),
            nodes::BEAT_MAX_AGE / 2,
            nodes::BEAT_MAX_AGE,
            every
        );
    }
}

/// Reads the stream's and the consumer's figures every second, and checks both as at start. A stream edited
/// meanwhile so that it would delete notifications (a limit with discard Old, an age limit), or a consumer edited so
/// that it no longer serves herald (a delivery limit, ...), is reported as an error, once a minute while it lasts
/// ([`JetStreamSpool::unfit`]); what herald may put right on the consumer (a backoff list, an inactivity threshold,
/// ...: [`Checked::Running`]) it puts right, with a warning. A consumer whose unacked notifications near its
/// `max_ack_pending` (a finite one) is warned about once a minute.
async fn refresh_figures(
    spool: std::sync::Weak<JetStreamSpool>,
    mut stream: jetstream::stream::Stream,
) {
    let mut reported = Reported::default();
    let mut consumer_reported = Reported::default();
    let mut near_limit = Reported::default();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(spool) = spool.upgrade() else {
            return;
        };
        if spool.closed.load(Ordering::Relaxed) {
            return;
        }
        if let Ok(info) = stream.info().await {
            spool.note_duplicate_window(info.config.duplicate_window);
            match check_compatible(&info.config, &spool.options, &spool.subject) {
                Ok(()) => {
                    reported.clear();
                    lock(&spool.unfit).stream = None;
                }
                Err(e) => {
                    let e = e.to_string();
                    if reported.due(&e) {
                        tracing::error!("{e}");
                    }
                    lock(&spool.unfit).stream = Some(e);
                }
            }
            spool
                .figures
                .messages
                .store(info.state.messages, Ordering::Relaxed);
            let oldest = if info.state.messages == 0 {
                0
            } else {
                (info.state.first_timestamp.unix_timestamp_nanos() / 1_000_000).max(0) as u64
            };
            spool.figures.oldest_ms.store(oldest, Ordering::Relaxed);
            let (cluster, servers) = nodes::servers_of(info);
            let mut view = lock(&spool.figures.view);
            view.cluster = cluster;
            view.servers = servers;
            drop(view);
            spool
                .figures
                .bytes
                .store(info.state.bytes, Ordering::Relaxed);
        }
        let consumer: Result<consumer::PullConsumer, _> =
            stream.get_consumer(&spool.options.consumer).await;
        if let Ok(mut c) = consumer
            && let Ok(info) = c.info().await
        {
            let f = &spool.figures;
            f.ack_pending
                .store(info.num_ack_pending as u64, Ordering::Relaxed);
            f.pending.store(info.num_pending, Ordering::Relaxed);
            f.redelivered
                .store(info.num_redelivered as u64, Ordering::Relaxed);
            // Another node may have changed the ack wait (its spool_nats_ack_wait differs): the in-progress acks
            // follow what the server has.
            if !info.config.ack_wait.is_zero() {
                spool
                    .consumer_ack_wait_ms
                    .store(duration_ms(info.config.ack_wait), Ordering::Relaxed);
            }
            let (ack_pending, limit) = (info.num_ack_pending as u64, info.config.max_ack_pending);
            if near_ack_pending_limit(ack_pending, limit) {
                if near_limit.due("near max_ack_pending") {
                    tracing::warn!(
                        stream = %spool.options.stream,
                        consumer = %spool.options.consumer,
                        "{ack_pending} notifications pulled and not acked, {}% of the JetStream consumer's \
                         max_ack_pending ({limit}): once they reach it NATS delivers nothing more to any node, for \
                         any domain, until some are acked or their retry delays end (those handed back to the \
                         stream for a later retry count until they are delivered again); set \
                         spool_nats_max_ack_pending = 0 (no limit) or raise it",
                        ack_pending.saturating_mul(100) / limit.max(1) as u64
                    );
                }
            } else {
                near_limit.clear();
            }
            let unfit = check_running_consumer(&spool, &stream, &info.config).await;
            match &unfit {
                None => {
                    consumer_reported.clear();
                }
                Some(why) => {
                    if consumer_reported.due(why) {
                        tracing::error!("{why}");
                    }
                }
            }
            lock(&spool.unfit).consumer = unfit;
        }
    }
}

/// Checks the consumer as the nodes run ([`check_consumer`], [`Checked::Running`]): puts right what herald may (a
/// backoff list added, ...), with a warning, and says what does not fit herald and stays (a delivery limit, ...).
async fn check_running_consumer(
    spool: &JetStreamSpool,
    stream: &jetstream::stream::Stream,
    config: &consumer::Config,
) -> Option<String> {
    let (name, stream_name) = (&spool.options.consumer, &spool.options.stream);
    let mut check = check_consumer(config, &spool.options, &spool.subject, Checked::Running);
    if let Some((wanted, changes)) = check.update {
        let changes = changes.join(", ");
        let updated = match consumer::pull::Config::try_from_consumer_config(wanted) {
            Ok(config) => stream
                .update_consumer(config)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match updated {
            Ok(()) => tracing::warn!(
                stream = %stream_name,
                consumer = %name,
                "the JetStream consumer was changed while the nodes run; put back: {changes}"
            ),
            Err(e) => check
                .unfit
                .push(format!("herald could not put back {changes}: {e}")),
        }
    }
    (!check.unfit.is_empty()).then(|| {
        format!(
            "the JetStream consumer {name:?} of stream {stream_name:?} no longer fits herald: {}; put it back \
             (nats consumer edit {stream_name} {name}) or delete it (nats consumer rm {stream_name} {name}: the \
             notifications stay in the stream) and herald creates it again",
            check.unfit.join("; ")
        )
    })
}

impl Spool for JetStreamSpool {
    fn next_key(&self) -> SpoolKey {
        SpoolKey(u128::from(self.next_local.fetch_add(1, Ordering::Relaxed)))
    }

    fn append(&self, batch: Vec<StoredNotification>) -> SpoolFuture<()> {
        let node = self.options.node.clone();
        self.publish(batch, move |s| format!("{node}.{}", s.key.0))
    }

    /// The message id is `<dedup>.<key, 32 hex digits>`, whichever node publishes it: a retry of the request, on
    /// any node, publishes the notifications the first attempt published under the same ids.
    fn append_deduplicated(&self, batch: Vec<StoredNotification>, dedup: &str) -> SpoolFuture<()> {
        let dedup = dedup.to_owned();
        self.publish(batch, move |s| deduplicated_id(&dedup, s.key))
    }

    /// Writes the retries of a held notification, and its next attempt, to the bucket of retry counts
    /// ([`crate::retry_state`]), in the background: the node that pulls it next (once handed back, or once this
    /// one stopped or died) goes on from there rather than from its delivery count, which does not count the
    /// retries made here.
    fn reschedule(&self, key: SpoolKey, retries: u32, next_attempt_ms: u64) {
        self.rescheduled.fetch_add(1, Ordering::Relaxed);
        let mut held = lock(&self.held);
        if held.is_lapsed(key.0) {
            return;
        }
        let Some(known) = held.known_mut(key.0) else {
            return;
        };
        known.retries = retries;
        known.next_attempt_ms = next_attempt_ms;
        known.entry = true;
        // An attempt made here: written even when the count on arrival was a guess (the attempt would be lost
        // otherwise), and from then on this node's count is the notification's.
        known.guessed = false;
        let known = *known;
        for (slot, state) in states_of(key.0, held.messages_for(key.0), known, false) {
            self.retry_book.put(slot, state);
        }
    }

    fn remove(&self, keys: &[SpoolKey]) {
        for k in keys {
            self.removed.fetch_add(1, Ordering::Relaxed);
            self.ack(k.0, AckKind::Ack, Attempted::Yes);
        }
    }

    fn recovery_bound(&self) -> Option<SpoolKey> {
        None
    }

    fn recover_each(
        &self,
        _visit: &mut dyn FnMut(StoredNotification) -> ControlFlow<()>,
    ) -> Result<RecoveryReport, SpoolError> {
        // Nothing is local: JetStream redelivers what any node left unfinished.
        Ok(RecoveryReport::default())
    }

    fn stats(&self) -> SpoolStats {
        SpoolStats {
            records: self.figures.messages.load(Ordering::Relaxed),
            bytes_on_disk: self.figures.bytes.load(Ordering::Relaxed),
            commits: self.append_calls.load(Ordering::Relaxed),
            failed_commits: self.failed_commits.load(Ordering::Relaxed),
            append_calls: self.append_calls.load(Ordering::Relaxed),
            appended: self.appended.load(Ordering::Relaxed),
            rescheduled: self.rescheduled.load(Ordering::Relaxed),
            removed: self.removed.load(Ordering::Relaxed),
            unwritable: !self.connected(),
            disk_full: false,
            pending_removals: 0,
        }
    }

    fn write_error(&self) -> Option<SpoolError> {
        if self.connected() {
            None
        } else {
            Some(self.unreachable())
        }
    }

    fn park(&self, delta: i64) -> usize {
        let parked = self.parked.fetch_add(delta, Ordering::Relaxed) + delta;
        usize::try_from(parked.max(0))
            .unwrap_or(usize::MAX)
            .saturating_sub(self.options.max_parked)
    }

    /// Gives the notification back to the stream as a retry: the delivery it ends counts as one retry for the node
    /// that pulls it next (on top of those written by [`Spool::reschedule`]), so the caller does not write the one
    /// that led here. [`JetStreamSpool::release`] gives one back without an attempt.
    /// One whose claim lapsed is taken too (the caller forgets it), without a nak: JetStream gives it to whichever
    /// node pulls it.
    fn hand_back(&self, key: SpoolKey, delay: Duration) -> bool {
        {
            let mut held = lock(&self.held);
            if !held.contains(key.0) {
                return false;
            }
            self.sweep(&mut held, Instant::now());
            if held.forget_lapsed(key.0) {
                return true;
            }
        }
        self.handed_back.fetch_add(1, Ordering::Relaxed);
        self.ack(key.0, AckKind::Nak(Some(delay)), Attempted::Yes);
        true
    }

    /// The fast answer: every held claim is alive (one load and a clock read). Else, under the `held` lock, the
    /// claims that lapsed are marked ([`Held::lapse`]), and `key`, when one of them, is forgotten without an ack.
    fn lapsed(&self, key: SpoolKey) -> bool {
        if self.figures.claims.all_alive() {
            return false;
        }
        self.lapsed_now(key.0)
    }

    fn stream_stats(&self) -> Option<JetStreamStats> {
        Some(JetStreamSpool::stream_stats(self))
    }

    fn cluster_view(&self) -> Option<ClusterView> {
        Some(JetStreamSpool::cluster_view(self))
    }

    fn flush(&self) -> SpoolFuture<()> {
        let client = self.client.clone();
        let limit = self.options.request_timeout;
        Box::pin(async move {
            match tokio::time::timeout(limit, client.flush()).await {
                Ok(done) => done.map_err(|e| nats_request_error("flushing", &e)),
                Err(_) => Err(nats_error(
                    "flushing",
                    format!("no answer within {limit:?}"),
                )),
            }
        })
    }

    fn close(&self) -> SpoolFuture<()> {
        // Under the held lock, as the pull loop takes a message in: each pulled message is held now (given back
        // below) or kept by the pull loop (given back by it once its pull ended).
        {
            let mut held = lock(&self.held);
            // What lapsed (the node was stopped or cut off from NATS just before) is not given back: another node
            // may hold it now.
            self.sweep(&mut held, Instant::now());
            self.closed.store(true, Ordering::Relaxed);
            *lock(&self.stop_reads_until) =
                Some(tokio::time::Instant::now() + self.retry_book.read_limit());
        }
        self.stopping.send_replace(true);
        let held = self.held.clone();
        let pull_open = self.pull_open.clone();
        let acks = self.acks.clone();
        let retry_book = self.retry_book.clone();
        let retry_writes_wait = self.options.retry_writes_wait;
        let client = self.client.clone();
        let beats = lock(&self.beats).take();
        let node = self.options.node.clone();
        // The pull under way ends within PULL_EXPIRES.
        let limit = self.close_limit();
        // Bounded: with NATS gone, the held notifications are redelivered after the ack wait anyway, and a node
        // asked to stop must stop.
        Box::pin(async move {
            let give_back = async {
                // The pull under way ends first, and none opens after: a message given back while this node's
                // pull is open would come straight back into it.
                let _no_pull = pull_open.lock().await;
                // Held notifications go back to the stream at once rather than after the ack wait, with their
                // retries so far (the stop is no attempt), written first for the node that pulls them next. Those
                // being given back already, waiting for the same writes ([`JetStreamSpool::release`]), go with
                // the delay they were given back with.
                let deadline = Instant::now() + retry_writes_wait;
                let (mut messages, mut written) = (Vec::new(), Vec::new());
                for (id, held, known, nak) in lock(&held).drain_known() {
                    if let Some(known) = known {
                        for (slot, state) in states_of(id, &held, known, true) {
                            written.push(retry_book.put_confirmed(slot, state, deadline));
                        }
                    }
                    let nak = nak.unwrap_or(AckKind::Nak(None));
                    messages.extend(held.into_iter().map(|m| (m, nak)));
                }
                let written = confirmed(
                    &retry_book,
                    written,
                    deadline,
                    retry_writes_wait,
                    "the notifications held at the stop",
                );
                // The acks of notifications finished before the stop go out before the flush.
                let (barrier, acked) = tokio::sync::oneshot::channel();
                let _ = acks.send(AckJob::Barrier(barrier));
                let _ = acked.await;
                written.await;
                join_all(messages.iter().map(|(m, nak)| m.ack_with(*nak))).await;
                // Gone from the list of nodes at once rather than when its heartbeat expires.
                if let Some(store) = beats {
                    let _ = store.delete(&node).await;
                }
                client
                    .flush()
                    .await
                    .map_err(|e| nats_request_error("flushing", &e))
            };
            match tokio::time::timeout(limit, give_back).await {
                Ok(done) => done,
                Err(_) => Err(nats_error(
                    "stopping",
                    format!(
                        "NATS did not answer within {limit:?}; what this node held is redelivered after the ack wait"
                    ),
                )),
            }
        })
    }
}

/// The message id of a notification published with [`Spool::append_deduplicated`].
pub fn deduplicated_id(dedup: &str, key: SpoolKey) -> String {
    format!("{dedup}.{:032x}", key.0)
}

/// A message's payload: the key the accepting node gave the notification (16 bytes, big-endian; its record's
/// checksum covers it), then the record.
fn encode_message(s: &StoredNotification) -> Vec<u8> {
    let record = s.encode();
    let mut out = Vec::with_capacity(16 + record.len());
    out.extend_from_slice(&s.key.0.to_be_bytes());
    out.extend_from_slice(&record);
    out
}

fn decode_message(payload: &[u8]) -> Result<StoredNotification, DecodeError> {
    let Some((key, record)) = payload.split_first_chunk::<16>() else {
        return Err(DecodeError::Truncated("message key"));
    };
    StoredNotification::decode(SpoolKey(u128::from_be_bytes(*key)), record)
}

/// Its NATS helpers (`nats`, `connected`, `wait_for`) serve the tests of [`crate::peer_lookup`] too.
#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::record::RECORD_VERSION;
    use std::time::Instant;

    /// The credentials a server URL carries, as the NATS client would need them (it sends none of them itself):
    /// user and password, or a token, percent-decoded.
    #[test]
    fn a_urls_credentials_are_read_decoded() {
        let auth = |url: &str| UrlAuth::of(&url.parse::<async_nats::ServerAddr>().unwrap());
        assert_eq!(
            auth("nats://herald:s3cr%40t%25@127.0.0.1:4222"),
            Some(UrlAuth::UserPassword {
                user: "herald".into(),
                password: "s3cr@t%".into()
            })
        );
        assert_eq!(
            auth("nats://t0ken@127.0.0.1:4222"),
            Some(UrlAuth::Token("t0ken".into()))
        );
        assert_eq!(auth("nats://127.0.0.1:4222"), None);
        assert_eq!(percent_decoded("100%zz%4"), "100%zz%4");
    }

    /// A message handle stand-in: (stream sequence, delivery count).
    type Handle = (u64, u64);

    fn same(a: &Handle, b: &Handle) -> bool {
        a.0 == b.0
    }

    #[test]
    fn server_urls_are_shown_without_their_credentials() {
        let servers = [
            "nats://herald:s3cret@10.0.0.1:4222".to_owned(),
            "tok@10.0.0.2:4222".to_owned(),
            "tls://10.0.0.3:4222".to_owned(),
        ];
        assert_eq!(
            shown_servers(&servers),
            "nats://10.0.0.1:4222, 10.0.0.2:4222, tls://10.0.0.3:4222"
        );
    }

    /// The client's last connection error is kept until it connects, and names the cause of a timed-out request.
    #[test]
    fn a_connection_failure_is_kept_until_connected_and_explains_a_timeout() {
        let failure = ConnectFailure::default();
        assert_eq!(
            failure.explain("request timed out".into()),
            "request timed out"
        );
        failure.note(&async_nats::Event::ClientError(
            async_nats::ClientError::Other(
                "IO error: invalid peer certificate: UnknownIssuer".into(),
            ),
        ));
        failure.note(&async_nats::Event::Disconnected);
        assert_eq!(
            failure.explain("request timed out".into()),
            "request timed out; connecting failed: IO error: invalid peer certificate: UnknownIssuer"
        );
        failure.note(&async_nats::Event::Connected);
        assert_eq!(failure.get(), None);
    }

    #[test]
    fn a_redelivery_of_a_held_notification_is_kept_with_it_not_queued_twice() {
        let mut held: Held<Handle> = Held::default();
        let id = 0x42u128 << 64 | 7;
        assert_eq!(held.arrive(id, (10, 1), same), Arrival::New);
        assert_eq!(held.arrive(id, (10, 2), same), Arrival::Again);
        assert_eq!(held.arrive(id + 1, (11, 1), same), Arrival::New);
        // Two notifications held, three messages.
        assert_eq!(held.len(), 2);
        assert_eq!(held.messages_of(id), 2);
        assert_eq!(held.messages().count(), 3);
        // The final outcome covers every message of the notification, the earlier delivery first.
        assert_eq!(held.take(id), vec![(10, 1), (10, 2)]);
        assert!(!held.contains(id));
        assert!(held.take(id).is_empty());
        assert_eq!(held.len(), 1);
        // Delivered again after its outcome: a new arrival (JetStream had not yet seen the ack).
        assert_eq!(held.arrive(id, (10, 3), same), Arrival::New);
        let mut all = held.drain();
        all.sort_unstable();
        assert_eq!(all, vec![(10, 3), (11, 1)]);
        assert_eq!(held.len(), 0);
    }

    #[test]
    fn another_notification_under_a_held_id_is_not_taken() {
        let mut held: Held<Handle> = Held::default();
        assert_eq!(held.arrive(5, (1, 1), same), Arrival::New);
        assert_eq!(held.arrive(5, (2, 1), same), Arrival::Conflict((2, 1)));
        assert_eq!(held.messages_of(5), 1);
        assert_eq!(held.take(5), vec![(1, 1)]);
        assert_eq!(held.arrive(5, (2, 2), same), Arrival::New);
    }

    /// A final ack is remembered by stream sequence and id for a while: a redelivery of that message matches (not
    /// one of another notification at that sequence), until it expires once the ack ended, or the oldest give way to
    /// newer ones.
    #[test]
    fn a_finished_notification_is_remembered_for_a_while_and_within_bounds() {
        let keep = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut f = Finished::with_cap(3);
        f.record(10, 0xa, t0, keep);
        assert!(f.matches(10, 0xa, t0 + Duration::from_secs(1), keep));
        assert!(
            !f.matches(10, 0xb, t0, keep),
            "another notification at that sequence"
        );
        assert!(!f.matches(11, 0xa, t0, keep), "another sequence");
        f.settle(10, 0xa, t0, keep);
        assert!(!f.matches(10, 0xa, t0 + keep, keep), "kept past its time");
        assert_eq!(f.len(), 0);
        for seq in 1..=5u64 {
            f.record(seq, u128::from(seq), t0, keep);
        }
        assert_eq!(f.len(), 3, "bounded");
        assert!(!f.matches(2, 2, t0, keep), "the oldest give way");
        assert!(f.matches(5, 5, t0, keep));

        // Held and finished: only a notification the node does not hold counts as finished.
        let mut held: Held<Handle> = Held::default();
        held.finished.record(7, 0x42, t0, keep);
        assert!(held.finished_lately(0x42, 7, t0, keep));
        assert_eq!(held.arrive(0x42, (7, 2), same), Arrival::New);
        assert!(!held.finished_lately(0x42, 7, t0, keep));
    }

    /// An existing consumer with other changeable settings is updated to this node's (the ack wait above all: the
    /// in-progress acks go by it); one whose settings cannot serve herald is refused, naming the setting.
    #[test]
    fn an_existing_consumer_is_updated_where_it_can_change_and_refused_where_it_cannot() {
        use consumer::IntoConsumerConfig as _;
        let subject = "herald.notifications";
        let mut options = JetStreamOptions::new(vec![], "herald");
        options.ack_wait = Duration::from_secs(120);
        let fits = {
            let mut c = wanted_consumer(&options, subject).into_consumer_config();
            c.name = c.durable_name.clone();
            c
        };
        assert_eq!(reconcile_consumer(&fits, &options, subject), Ok(None));

        let mut older = fits.clone();
        older.ack_wait = Duration::from_secs(30);
        older.max_ack_pending = 1000;
        older.backoff = vec![Duration::from_secs(1)];
        older.inactive_threshold = Duration::from_secs(3600);
        let (updated, changes) = reconcile_consumer(&older, &options, subject)
            .unwrap()
            .expect("an update");
        assert_eq!(updated, fits, "{changes:?}");
        assert!(changes[0].contains("ack_wait 30s -> 120s"), "{changes:?}");
        assert_eq!(changes.len(), 4, "{changes:?}");

        let refused = |edit: &dyn Fn(&mut consumer::Config)| {
            let mut c = fits.clone();
            edit(&mut c);
            reconcile_consumer(&c, &options, subject).expect_err("refused")
        };
        let why = refused(&|c| c.ack_policy = consumer::AckPolicy::All);
        assert!(why.contains("ack_policy is All"), "{why}");
        let why = refused(&|c| c.max_deliver = 5);
        assert!(why.contains("max_deliver is 5"), "{why}");
        let why = refused(&|c| c.filter_subject = "herald.>".into());
        assert!(
            why.contains("filter subject") && why.contains("herald.>"),
            "{why}"
        );
        let why = refused(&|c| c.filter_subject.clear());
        assert!(why.contains("filter subject is []"), "{why}");
        let why = refused(&|c| c.deliver_subject = Some("push.here".into()));
        assert!(why.contains("push consumer"), "{why}");
        let why = refused(&|c| c.headers_only = true);
        assert!(why.contains("headers only"), "{why}");
        // Replicas or storage other than the stream's: NATS changes neither in place (an R1 consumer left on a
        // stream made R3 since stops delivery when its one server is lost).
        let mut three = options.clone();
        three.replicas = 3;
        let mut one = fits.clone();
        one.num_replicas = 1;
        let why = reconcile_consumer(&one, &three, subject).expect_err("refused");
        assert!(
            why.contains("it has 1 replicas, herald needs the stream's 3"),
            "{why}"
        );
        let why = refused(&|c| c.memory_storage = true);
        assert!(why.contains("mem_storage"), "{why}");
        // The same filter given as a list fits, and so does the stream's replica count named (0: the stream's).
        let mut listed = fits.clone();
        listed.filter_subject.clear();
        listed.filter_subjects = vec![subject.into()];
        assert_eq!(reconcile_consumer(&listed, &options, subject), Ok(None));
        listed.num_replicas = 3;
        assert_eq!(reconcile_consumer(&listed, &three, subject), Ok(None));
    }

    /// With `spool_nats_max_ack_pending = 0` (the default) the consumer has no limit (-1): notifications handed
    /// back with a delay stay in its pending set, and a limit they filled would hold up every node. A consumer left
    /// with a finite limit (an older herald's default) is brought to none; a finite value configured is kept.
    #[test]
    fn the_consumer_has_no_ack_pending_limit_unless_one_is_configured() {
        use consumer::IntoConsumerConfig as _;
        let subject = "herald.notifications";
        let mut options = JetStreamOptions::new(vec![], "herald");
        assert_eq!(options.max_ack_pending, 0);
        let created = wanted_consumer(&options, subject).into_consumer_config();
        assert_eq!(created.max_ack_pending, -1);
        let mut older = created.clone();
        older.max_ack_pending = 100_000;
        let (updated, changes) = reconcile_consumer(&older, &options, subject)
            .unwrap()
            .expect("an update");
        assert_eq!(updated.max_ack_pending, -1);
        assert_eq!(changes, ["max_ack_pending 100000 -> -1"]);
        options.max_ack_pending = 5000;
        let (updated, _) = reconcile_consumer(&created, &options, subject)
            .unwrap()
            .expect("an update");
        assert_eq!(updated.max_ack_pending, 5000);
        // The warning comes at 80 % of a finite limit, never without one.
        assert!(!near_ack_pending_limit(3999, 5000));
        assert!(near_ack_pending_limit(4000, 5000));
        assert!(near_ack_pending_limit(9000, 5000));
        assert!(!near_ack_pending_limit(u64::MAX, -1));
        assert!(!near_ack_pending_limit(u64::MAX, 0));
    }

    /// While the nodes run, the consumer gets the same check as at start: what does not fit is named, what every
    /// node wants alike is put right (a backoff list would hand a held notification to another node before its
    /// in-progress ack), and the ack wait and the room for unacked messages are left as they are (each node sets
    /// its own at its start: nodes configured otherwise would undo each other's every second).
    #[test]
    fn a_consumer_changed_while_the_nodes_run_is_checked_as_at_start() {
        use consumer::IntoConsumerConfig as _;
        let subject = "herald.notifications";
        let options = JetStreamOptions::new(vec![], "herald");
        let fits = wanted_consumer(&options, subject).into_consumer_config();
        let running = |c: &consumer::Config| check_consumer(c, &options, subject, Checked::Running);
        assert_eq!(
            running(&fits),
            ConsumerCheck {
                unfit: vec![],
                update: None
            }
        );
        let mut edited = fits.clone();
        edited.max_deliver = 5;
        edited.backoff = vec![Duration::from_secs(1), Duration::from_secs(2)];
        edited.ack_wait = Duration::from_secs(90);
        edited.max_ack_pending = 1000;
        let check = running(&edited);
        assert_eq!(check.unfit.len(), 1, "{:?}", check.unfit);
        assert!(
            check.unfit[0].contains("max_deliver is 5"),
            "{:?}",
            check.unfit
        );
        let (wanted, changes) = check.update.expect("the backoff list removed");
        assert_eq!(changes, ["backoff [1s, 2s] -> none"]);
        assert!(wanted.backoff.is_empty());
        assert_eq!(
            (wanted.max_deliver, wanted.ack_wait, wanted.max_ack_pending),
            (5, Duration::from_secs(90), 1000),
            "only what herald puts right changed"
        );
    }

    /// A round of in-progress acks is due a third of the ack wait after the last one queued. One due while the last
    /// is still queued (NATS slow to take them) is tried again at the next tick and goes out once the queue drained,
    /// not a whole period later: however long the queue took, the next round comes no later than a tick after it
    /// drained (with the old schedule, two skips put the next in-progress ack at the edge of the ack wait).
    #[test]
    fn a_keep_alive_round_that_finds_the_last_one_queued_is_tried_again_at_the_next_tick() {
        let start = Instant::now();
        let period = Duration::from_secs(10);
        let at = |ms: u64| start + Duration::from_millis(ms);
        assert_eq!(
            keep_alive_step(start, period, at(1_000), 0),
            KeepAlive::Wait(KEEP_ALIVE_TICK)
        );
        assert_eq!(
            keep_alive_step(start, period, at(9_900), 0),
            KeepAlive::Wait(Duration::from_millis(100))
        );
        assert_eq!(
            keep_alive_step(start, period, at(10_000), 0),
            KeepAlive::Round
        );
        assert_eq!(
            keep_alive_step(start, period, at(10_000), 3),
            KeepAlive::Wait(KEEP_ALIVE_TICK)
        );
        // A keep-alive run against a queue that takes 12.1 s to drain the first round: the second round goes out
        // within a tick of the queue draining, and the third a period after the second.
        let drained = at(12_100);
        let (mut now, mut last_round, mut rounds) = (start, start, vec![]);
        while rounds.len() < 2 {
            let queued = u64::from(now < drained);
            match keep_alive_step(last_round, period, now, queued) {
                KeepAlive::Wait(pause) => now += pause,
                KeepAlive::Round => {
                    rounds.push(now);
                    last_round = now;
                }
            }
        }
        assert!(
            rounds[0] >= drained && rounds[0] <= drained + KEEP_ALIVE_TICK,
            "{:?} after the queue drained",
            rounds[0].duration_since(drained)
        );
        assert_eq!(rounds[1].duration_since(rounds[0]), period);
    }

    /// A round of in-progress acks renews its claims only once its echo came back on the connection it began on,
    /// with none of its acks refused: the client taking them (a node cut off without its connection closing) or
    /// an echo on a new connection (the old one's unwritten acks lost) renews nothing, nor does an echo that does
    /// not come back within its wait.
    #[test]
    fn a_round_renews_its_claims_only_once_the_server_echoed_it() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let round = RoundOut {
            number: 7,
            start,
            connects: 1,
            failed: 2,
            echo_until: None,
        };
        // Its acks still going to the client: no echo awaited yet, however long that takes.
        assert_eq!(round.check(1, 2, 6, at(60_000)), RoundState::Going);
        let sent = RoundOut {
            echo_until: Some(at(5_000)),
            ..round
        };
        assert_eq!(sent.check(1, 2, 6, at(4_999)), RoundState::Going);
        assert_eq!(sent.check(1, 2, 7, at(4_999)), RoundState::Renewed);
        assert_eq!(
            sent.check(1, 2, 8, at(1)),
            RoundState::Renewed,
            "a later echo"
        );
        assert_eq!(
            sent.check(1, 2, 6, at(5_000)),
            RoundState::Lost,
            "no echo in time"
        );
        assert_eq!(sent.check(2, 2, 7, at(1)), RoundState::Lost, "reconnected");
        assert_eq!(round.check(2, 2, 6, at(1)), RoundState::Lost, "reconnected");
        assert_eq!(
            sent.check(1, 3, 7, at(1)),
            RoundState::Lost,
            "an ack refused"
        );
        // The echo is awaited for the request limit, at most the sixth of the ack wait a claim is not counted on.
        let s = Duration::from_secs;
        assert_eq!(echo_wait(s(5), s(30)), s(5));
        assert_eq!(echo_wait(s(5), s(12)), s(2));
        assert_eq!(echo_wait(s(5), Duration::from_millis(600)), KEEP_ALIVE_TICK);
    }

    /// A stream whose limits would delete accepted notifications is refused, naming the stream, the limit and its
    /// value; a limit with discard New (a full stream refuses new notifications) is accepted.
    #[test]
    fn a_stream_whose_limits_delete_notifications_is_refused() {
        let subject = "herald.notifications";
        let options = JetStreamOptions::new(vec![], "herald");
        let fits = stream::Config {
            name: "herald".into(),
            subjects: vec![subject.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            num_replicas: 1,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            ..Default::default()
        };
        // As an older herald created it: discard Old, no limit.
        assert!(check_compatible(&fits, &options, subject).is_ok());
        let check = |edit: &dyn Fn(&mut stream::Config)| {
            let mut c = fits.clone();
            edit(&mut c);
            check_compatible(&c, &options, subject).map_err(|e| e.to_string())
        };
        let why = check(&|c| c.max_age = Duration::from_secs(3600)).unwrap_err();
        assert!(
            why.contains("\"herald\"") && why.contains("max_age is 3600s"),
            "{why}"
        );
        let why = check(&|c| c.max_messages = 10).unwrap_err();
        assert!(
            why.contains("max_msgs is 10 with discard Old") && why.contains("--discard=new"),
            "{why}"
        );
        let why = check(&|c| c.max_bytes = 1 << 30).unwrap_err();
        assert!(why.contains("max_bytes is 1073741824"), "{why}");
        let why = check(&|c| {
            c.max_messages_per_subject = 1;
            c.discard = stream::DiscardPolicy::New;
        })
        .unwrap_err();
        assert!(why.contains("max_msgs_per_subject is 1"), "{why}");
        assert!(
            check(&|c| {
                c.max_messages = 10;
                c.max_bytes = 1 << 30;
                c.discard = stream::DiscardPolicy::New;
            })
            .is_ok()
        );
    }

    /// A server that sends nothing back for final acks until it is told to ([`AckClient`] stand-in): what goes
    /// out without an answer (in-progress acks, naks) is recorded, by message, in order.
    #[derive(Clone)]
    struct SilentServer {
        sent: tokio::sync::mpsc::UnboundedSender<(u64, String)>,
        /// Final acks sent so far, those answered, and those that ended (confirmed or given up).
        confirms: Arc<AtomicU64>,
        confirmed: Arc<AtomicU64>,
        settled: Arc<AtomicU64>,
        /// Whether the server answers the final acks now.
        answers: tokio::sync::watch::Receiver<bool>,
    }

    impl AckClient for SilentServer {
        type Message = u64;

        fn send(
            &self,
            message: &u64,
            kind: AckKind,
        ) -> impl Future<Output = Result<(), String>> + Send {
            let _ = self.sent.send((*message, format!("{kind:?}")));
            async { Ok(()) }
        }

        fn confirm(
            &self,
            _message: &u64,
            _kind: AckKind,
        ) -> impl Future<Output = Result<(), String>> + Send {
            self.confirms.fetch_add(1, Ordering::Relaxed);
            let mut answers = self.answers.clone();
            let confirmed = self.confirmed.clone();
            async move {
                let _ = answers.wait_for(|answers| *answers).await;
                confirmed.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }

        fn settled(&self, _message: &u64) {
            self.settled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A heartbeat stands for half its lifetime on the server: a node whose writes hang stops counting itself live
    /// well before the last one it wrote expires.
    #[test]
    fn a_heartbeat_stands_for_half_its_lifetime() {
        let sent = Instant::now();
        assert!(!beat_fresh(None, sent));
        assert!(beat_fresh(Some(sent), sent));
        assert!(beat_fresh(Some(sent), sent + nodes::BEAT_MAX_AGE / 3));
        assert!(!beat_fresh(Some(sent), sent + nodes::BEAT_MAX_AGE / 2));
        assert!(!beat_fresh(Some(sent), sent + nodes::BEAT_MAX_AGE));
    }

    /// How a stand-in heartbeat bucket answers writes.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Writes {
        Stored,
        /// Never answered, as NATS during a leader election.
        Unanswered,
        /// Refused at once, as when the bucket is lost.
        Refused,
    }

    /// A heartbeat bucket whose writes answer as told, and a node on it whose attempts to open the bucket after the
    /// first are never answered (NATS electing a leader).
    struct StandInNode {
        writes: Arc<Mutex<Writes>>,
        attempts: Arc<AtomicU64>,
        opens: AtomicU64,
        stored: Mutex<Option<tokio::time::Instant>>,
    }

    #[derive(Clone)]
    struct StandInBucket {
        writes: Arc<Mutex<Writes>>,
        attempts: Arc<AtomicU64>,
    }

    impl BeatBucket for StandInBucket {
        fn write_beat(
            &self,
            _beat: &NodeBeat,
        ) -> futures_util::future::BoxFuture<'_, Result<(), BeatFailure>> {
            self.attempts.fetch_add(1, Ordering::Relaxed);
            let writes = *lock(&self.writes);
            Box::pin(async move {
                match writes {
                    Writes::Stored => Ok(()),
                    Writes::Unanswered => std::future::pending().await,
                    Writes::Refused => Err(BeatFailure::Refused("no responders".into())),
                }
            })
        }

        fn read_all(&self) -> futures_util::future::BoxFuture<'_, Result<Vec<NodeBeat>, String>> {
            Box::pin(async { Ok(Vec::new()) })
        }
    }

    impl BeatNode for StandInNode {
        type Bucket = StandInBucket;

        fn stopping(&self) -> bool {
            false
        }

        fn beat(&self) -> NodeBeat {
            NodeBeat {
                node: "stand-in".into(),
                started_ms: 0,
                seen_ms: 0,
                held: 0,
                pulled: 0,
                lookups: false,
            }
        }

        fn open_bucket(
            &self,
        ) -> futures_util::future::BoxFuture<'static, Result<StandInBucket, String>> {
            let bucket = StandInBucket {
                writes: self.writes.clone(),
                attempts: self.attempts.clone(),
            };
            let first = self.opens.fetch_add(1, Ordering::Relaxed) == 0;
            Box::pin(async move {
                if !first {
                    std::future::pending::<()>().await;
                }
                Ok(bucket)
            })
        }

        fn opened(&self, _bucket: &StandInBucket) {}

        fn set_stored(&self, sent: Option<tokio::time::Instant>) {
            *lock(&self.stored) = sent;
        }

        fn stored(&self) -> Option<tokio::time::Instant> {
            *lock(&self.stored)
        }

        fn saw(&self, _beats: Vec<NodeBeat>) {}
    }

    /// A stand-in node beating every 20 ms, its first heartbeat stored.
    async fn beating_stand_in() -> Arc<StandInNode> {
        let node = Arc::new(StandInNode {
            writes: Arc::new(Mutex::new(Writes::Stored)),
            attempts: Arc::new(AtomicU64::new(0)),
            opens: AtomicU64::new(0),
            stored: Mutex::new(None),
        });
        tokio::spawn(heartbeat(Arc::downgrade(&node), Duration::from_millis(20)));
        wait_for(
            "the first heartbeat stored",
            Duration::from_secs(20),
            async || node.stored().is_some(),
        )
        .await;
        node
    }

    /// Heartbeats NATS does not answer (a leader election after a partition) do not hold up the next ones: a beat
    /// is tried again at every period while the earlier ones are still unanswered, the last one stored still counts
    /// meanwhile, and the first one answered afterwards is stored.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_unanswered_heartbeat_does_not_hold_up_the_next_ones() {
        let node = beating_stand_in().await;
        *lock(&node.writes) = Writes::Unanswered;
        let before = node.attempts.load(Ordering::Relaxed);
        let stored = node.stored();
        wait_for(
            "beats tried again while unanswered",
            Duration::from_secs(20),
            async || node.attempts.load(Ordering::Relaxed) >= before + 4,
        )
        .await;
        assert_eq!(
            node.stored(),
            stored,
            "an unanswered beat keeps the last one stored"
        );
        *lock(&node.writes) = Writes::Stored;
        wait_for("a beat stored again", Duration::from_secs(20), async || {
            node.stored() > stored
        })
        .await;
    }

    /// Heartbeats NATS refuses (the bucket lost) make the node open the bucket again in the background: while that
    /// waits for NATS, the beats go on through the bucket as it was, and are stored once NATS takes them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reopening_the_heartbeat_bucket_does_not_hold_up_the_beats() {
        let node = beating_stand_in().await;
        *lock(&node.writes) = Writes::Refused;
        wait_for(
            "the node not beating",
            Duration::from_secs(20),
            async || node.stored().is_none(),
        )
        .await;
        let before = node.attempts.load(Ordering::Relaxed);
        wait_for(
            "beats tried again while the bucket is reopened",
            Duration::from_secs(20),
            async || node.attempts.load(Ordering::Relaxed) >= before + 4,
        )
        .await;
        assert_eq!(
            node.opens.load(Ordering::Relaxed),
            2,
            "one attempt to open the bucket again, under way"
        );
        *lock(&node.writes) = Writes::Stored;
        wait_for("a beat stored again", Duration::from_secs(20), async || {
            node.stored().is_some()
        })
        .await;
    }

    /// The warning that the heartbeat is not being stored comes at half of the time after which the node stops
    /// claiming keys.
    #[test]
    fn the_heartbeat_is_overdue_at_half_of_its_standing() {
        assert_eq!(BEAT_OVERDUE * 2, nodes::BEAT_MAX_AGE / 2);
        assert!(BEAT_OVERDUE > nodes::BEAT_EVERY);
    }

    /// Final acks sent again quickly (tests), for the consumer's `ack_wait` (no minimum).
    fn quick_retry(ack_wait: Duration) -> FinalAckRetry {
        FinalAckRetry {
            first_pause: Duration::from_millis(1),
            max_pause: Duration::from_millis(5),
            min_patience: Duration::ZERO,
            ack_wait_ms: Arc::new(AtomicU64::new(duration_ms(ack_wait))),
        }
    }

    /// A server that answers "no responders" at once to the first `failures` attempts of final acks (a NATS leader
    /// election), then confirms them ([`AckClient`] stand-in).
    #[derive(Clone)]
    struct ElectingServer {
        failures: Arc<AtomicU64>,
        attempts: Arc<AtomicU64>,
        confirmed: Arc<AtomicU64>,
        settled: Arc<AtomicU64>,
    }

    impl ElectingServer {
        fn new(failures: u64) -> Self {
            ElectingServer {
                failures: Arc::new(AtomicU64::new(failures)),
                attempts: Arc::new(AtomicU64::new(0)),
                confirmed: Arc::new(AtomicU64::new(0)),
                settled: Arc::new(AtomicU64::new(0)),
            }
        }
    }

    impl AckClient for ElectingServer {
        type Message = u64;

        async fn send(&self, _message: &u64, _kind: AckKind) -> Result<(), String> {
            Ok(())
        }

        async fn confirm(&self, _message: &u64, _kind: AckKind) -> Result<(), String> {
            self.attempts.fetch_add(1, Ordering::Relaxed);
            let left = self.failures.load(Ordering::Relaxed);
            if left > 0 {
                self.failures.store(left - 1, Ordering::Relaxed);
                return Err("nats: no responders".into());
            }
            self.confirmed.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }

        fn settled(&self, _message: &u64) {
            self.settled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Runs an [`ack_loop`] against `server` for one final ack, and waits until it is confirmed or given up.
    async fn one_final_ack(server: &ElectingServer, retry: FinalAckRetry) {
        let (jobs, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(ack_loop(
            server.clone(),
            queue,
            Arc::new(AtomicU64::new(0)),
            retry,
        ));
        jobs.send(AckJob::Ack(7, AckKind::Ack)).unwrap();
        let (barrier, passed) = tokio::sync::oneshot::channel();
        jobs.send(AckJob::Barrier(barrier)).unwrap();
        tokio::time::timeout(Duration::from_secs(60), passed)
            .await
            .expect("the final ack was neither confirmed nor given up")
            .unwrap();
    }

    /// A final ack the server answers with fast failures for a while (the server leading the consumer died and a new
    /// one is being elected) is sent again until it is confirmed, however many attempts that takes within the ack
    /// wait; one never confirmed is given up once the ack wait has passed.
    #[tokio::test]
    async fn a_final_ack_is_sent_again_until_confirmed_within_the_ack_wait() {
        let server = ElectingServer::new(40);
        one_final_ack(&server, quick_retry(Duration::from_secs(60))).await;
        assert_eq!(server.confirmed.load(Ordering::Relaxed), 1, "not confirmed");
        assert_eq!(server.attempts.load(Ordering::Relaxed), 41);
        assert_eq!(server.settled.load(Ordering::Relaxed), 1, "its end");

        let never = ElectingServer::new(u64::MAX);
        one_final_ack(&never, quick_retry(Duration::from_millis(50))).await;
        assert_eq!(never.confirmed.load(Ordering::Relaxed), 0);
        assert!(never.attempts.load(Ordering::Relaxed) >= 2);
        assert_eq!(never.settled.load(Ordering::Relaxed), 1, "given up");
    }

    /// A notification is remembered as finished while its final ack is on its way, however long it waits its turn
    /// (a long outage: the plain ack sent at once may have been lost), and one ack wait after the ack was
    /// confirmed or given up, more when it is acked again meanwhile: a redelivery until then is acked again rather
    /// than delivered. The count stays bounded, the acks on their way included.
    #[test]
    fn a_finished_notification_is_remembered_until_its_final_ack_ends_and_an_ack_wait_after() {
        let ack_wait = Duration::from_secs(30);
        let keep = finished_for(ack_wait);
        assert!(keep >= ack_wait);
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        let mut f = Finished::with_cap(3);
        f.record(10, 0xa, t0, keep);
        // Its final ack waited its turn for an hour: still remembered.
        assert!(
            f.matches(10, 0xa, t0 + hour, keep),
            "forgotten while its final ack is on its way"
        );
        // Confirmed (or given up) then: kept an ack wait and more, then forgotten.
        let t1 = t0 + hour;
        f.settle(10, 0xa, t1, keep);
        assert!(f.matches(10, 0xa, t1 + ack_wait, keep));
        assert!(!f.matches(10, 0xa, t1 + keep, keep), "kept past its time");

        // Acked again on a redelivery: kept from its last ack's end.
        f.record(11, 0xb, t1, keep);
        f.settle(11, 0xb, t1, keep);
        let t2 = t1 + keep / 2;
        f.settle(11, 0xb, t2, keep);
        assert!(
            f.matches(11, 0xb, t1 + keep, keep),
            "forgotten by its first ack's end"
        );
        assert!(!f.matches(11, 0xb, t2 + keep, keep));

        // The end of another notification's ack at that sequence changes nothing.
        f.record(12, 0xc, t2, keep);
        f.settle(12, 0xd, t2, keep);
        assert!(f.matches(12, 0xc, t2 + hour, keep));

        // Bounded, acks on their way included: the oldest recorded give way.
        let t3 = t2 + hour;
        for seq in 20..25u64 {
            f.record(seq, u128::from(seq), t3, keep);
        }
        assert_eq!(f.len(), 3);
        assert!(!f.matches(12, 0xc, t3, keep), "the oldest give way");
        assert!(f.matches(24, 24, t3 + hour, keep));

        // However many come and go, the bookkeeping stays within twice the bound.
        let mut f = Finished::with_cap(16);
        let mut now = t0;
        for seq in 0..10_000u64 {
            now += Duration::from_millis(10);
            f.record(seq, u128::from(seq), now, keep);
            f.settle(seq, u128::from(seq), now, keep);
            if seq % 3 == 0 {
                f.settle(seq, u128::from(seq), now, keep);
            }
            assert!(f.recorded.len() <= 32 && f.settled.len() <= 32, "at {seq}");
        }
        assert_eq!(f.len(), 16);
        assert!(f.matches(9_999, 9_999, now, keep));
    }

    /// More final acks than may await an answer at once, none answered (a server electing a leader): the
    /// in-progress ack and the nak queued after them go out without waiting for those answers, and the final
    /// acks beyond the room go out once answers free it, every one of them before a barrier queued after them.
    #[tokio::test]
    async fn final_acks_awaiting_answers_do_not_hold_up_in_progress_acks() {
        let (sent_tx, mut sent) = tokio::sync::mpsc::unbounded_channel();
        let (answer, answers) = tokio::sync::watch::channel(false);
        let server = SilentServer {
            sent: sent_tx,
            confirms: Arc::new(AtomicU64::new(0)),
            confirmed: Arc::new(AtomicU64::new(0)),
            settled: Arc::new(AtomicU64::new(0)),
            answers,
        };
        let (jobs, queue) = tokio::sync::mpsc::unbounded_channel();
        let progress_queued = Arc::new(AtomicU64::new(0));
        tokio::spawn(ack_loop(
            server.clone(),
            queue,
            progress_queued.clone(),
            quick_retry(Duration::from_secs(60)),
        ));
        let finals = 5000u64;
        for message in 0..finals {
            jobs.send(AckJob::Ack(message, AckKind::Ack)).unwrap();
        }
        progress_queued.fetch_add(1, Ordering::Relaxed);
        jobs.send(AckJob::Ack(finals, AckKind::Progress)).unwrap();
        jobs.send(AckJob::Ack(finals + 1, AckKind::Nak(None)))
            .unwrap();
        let within = Duration::from_secs(20);
        // The final acks beyond the room for answers are sent at once, each once, without waiting for an answer:
        // the server has them before the ack wait runs out, however long their turn takes.
        for message in MAX_ACKS_IN_FLIGHT as u64..finals {
            let plain = tokio::time::timeout(within, sent.recv())
                .await
                .expect("a final ack waiting its turn was not sent")
                .unwrap();
            assert_eq!(plain, (message, "Ack".to_owned()));
        }
        let first = tokio::time::timeout(within, sent.recv())
            .await
            .expect("the in-progress ack waited for the answers to the final acks queued before it")
            .unwrap();
        assert_eq!(first, (finals, "Progress".to_owned()));
        let second = tokio::time::timeout(within, sent.recv())
            .await
            .expect("the nak waited for the answers to the final acks")
            .unwrap();
        assert_eq!(second, (finals + 1, "Nak(None)".to_owned()));
        assert_eq!(
            server.confirmed.load(Ordering::Relaxed),
            0,
            "the server answered no final ack yet"
        );
        wait_for("the in-progress ack counted out", within, async || {
            progress_queued.load(Ordering::Relaxed) == 0
        })
        .await;
        wait_for("the final acks sent", within, async || {
            server.confirms.load(Ordering::Relaxed) == MAX_ACKS_IN_FLIGHT as u64
        })
        .await;
        // None ended, the final acks sent plainly while they wait their turn included: their notifications are
        // remembered as finished until their confirmed acks end.
        assert_eq!(server.settled.load(Ordering::Relaxed), 0);
        // No more than the room awaits an answer; the rest go out as answers come.
        let (barrier, passed) = tokio::sync::oneshot::channel();
        jobs.send(AckJob::Barrier(barrier)).unwrap();
        answer.send(true).unwrap();
        tokio::time::timeout(within, passed)
            .await
            .expect("the barrier answered once the final acks were")
            .unwrap();
        assert_eq!(server.confirmed.load(Ordering::Relaxed), finals);
        assert_eq!(server.confirms.load(Ordering::Relaxed), finals);
        assert_eq!(server.settled.load(Ordering::Relaxed), finals);
    }

    /// A `nats-server -js` on a loopback port (herald-testkit), or `None` (with a message; a failure under `CI`)
    /// without one.
    pub(crate) fn nats(
        dir: &std::path::Path,
    ) -> Option<(herald_testkit::nats::NatsServer, String)> {
        if !herald_testkit::nats::available() {
            return None;
        }
        let server = herald_testkit::nats::single(dir);
        let url = server.url();
        Some((server, url))
    }

    fn notification(key: u128, token: u8) -> StoredNotification {
        StoredNotification {
            key: SpoolKey(key),
            domain: "apps.example".into(),
            token: vec![token; 32],
            topic: Some("com.example.app".into()),
            push_type: Some("alert".into()),
            priority: Some(10),
            expiration: None,
            collapse_id: None,
            apns_id: None,
            binding: None,
            payload: br#"{"aps":{"alert":"hi"}}"#.to_vec(),
            sender: "from@example.com".into(),
            recipient: "to@apps.example".into(),
            received_at: 1_800_000_000,
            batch_id: key,
            conn_id: 1,
            retries: 0,
            next_attempt_ms: 0,
        }
    }

    pub(crate) async fn wait_for(
        what: &str,
        within: Duration,
        mut cond: impl AsyncFnMut() -> bool,
    ) {
        let deadline = Instant::now() + within;
        while !cond().await {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A spool on `stream` at `url` with an ack wait of a minute (longer than any test), set up, and what it pulls.
    pub(crate) async fn connected(
        url: String,
        stream: &str,
    ) -> (
        Arc<JetStreamSpool>,
        tokio::sync::mpsc::Receiver<StoredNotification>,
    ) {
        let mut options = JetStreamOptions::new(vec![url], stream);
        options.ack_wait = Duration::from_secs(60);
        set_up(options).await
    }

    /// A spool with `options`, set up, its bucket of retry counts open, and what it pulls. Writes and reads of
    /// retry counts have room for a loaded machine.
    async fn set_up(
        mut options: JetStreamOptions,
    ) -> (
        Arc<JetStreamSpool>,
        tokio::sync::mpsc::Receiver<StoredNotification>,
    ) {
        options.retry_writes_wait = Duration::from_secs(20);
        let spool = JetStreamSpool::connect(options).await.unwrap();
        spool.retry_book().set_read_limit(Duration::from_secs(20));
        let rx = spool.take_deliveries().unwrap();
        wait_for("the stream set up", Duration::from_secs(20), async || {
            spool.connected()
        })
        .await;
        assert!(
            spool.retry_book().ready(Duration::from_secs(20)).await,
            "the bucket of retry counts open"
        );
        (spool, rx)
    }

    /// A pulled notification waiting for room in the queue's channel, whose handing over then fails because nobody
    /// takes the deliveries any more (the receiver dropped), is not held (with in-progress acks) until the close:
    /// it goes back to the stream once the pull ended, as one the pull loop kept.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_notification_nobody_takes_any_more_is_given_back_not_held() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        let (spool, rx) = connected(url.clone(), "gone").await;
        spool
            .append((1..=1030u128).map(|k| notification(k, 0xaa)).collect())
            .await
            .unwrap();
        // The channel full (1024 in it), and one more held, waiting for room in it.
        wait_for(
            "the pull waiting for room",
            Duration::from_secs(20),
            async || spool.held() == 1025,
        )
        .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(spool.held(), 1025);
        drop(rx);
        wait_for(
            "the one being handed over given back",
            Duration::from_secs(20),
            async || spool.held() == 1024,
        )
        .await;
        // Back in the stream at once, not at the close: another node pulls what this one did not hand over, the
        // one whose handing over failed among them, while this one still holds what it handed over.
        let mut options = JetStreamOptions::new(vec![url], "gone");
        options.ack_wait = Duration::from_secs(60);
        options.node = "other".to_owned();
        let other = JetStreamSpool::connect(options).await.unwrap();
        let mut other_rx = other.take_deliveries().unwrap();
        let mut keys = Vec::new();
        while keys.len() < 6 {
            let n = tokio::time::timeout(Duration::from_secs(20), other_rx.recv())
                .await
                .expect("the other node gets what this one did not hand over")
                .unwrap();
            keys.push(n.key.0);
        }
        keys.sort_unstable();
        assert_eq!(keys, (1025..=1030).collect::<Vec<u128>>());
        assert_eq!(spool.held(), 1024);
        other.close().await.unwrap();
        spool.close().await.unwrap();
    }

    /// A message in a record format this build does not read (as a newer herald writes during a rolling upgrade)
    /// is neither queued nor dropped: it goes back to the stream, for a node that reads it. A damaged record (its
    /// checksum does not match) is dropped.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_record_of_a_newer_format_stays_in_the_stream_and_a_damaged_one_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        let (spool, mut rx) = connected(url, "newer").await;
        // Its checksum made right (it covers the key, the version byte and the body), as a newer herald writes it.
        let checksum = |record: &mut Vec<u8>| {
            let mut crc = crc32fast::Hasher::new();
            crc.update(&record[..16]);
            crc.update(&record[16..17]);
            crc.update(&record[21..]);
            let crc = crc.finalize().to_le_bytes();
            record[17..21].copy_from_slice(&crc);
        };
        // A higher record version, and this version with a field appended at the end.
        let mut newer = encode_message(&notification(9, 0xcc));
        newer[16] = RECORD_VERSION + 1;
        checksum(&mut newer);
        let mut longer = encode_message(&notification(11, 0xee));
        longer.push(0x01);
        checksum(&mut longer);
        let subject = spool.subject.clone();
        // A record of this format whose checksum does not match: damaged, not newer.
        let mut damaged = encode_message(&notification(10, 0xdd));
        let last = damaged.len() - 1;
        damaged[last] ^= 0xff;
        for payload in [newer, longer, damaged] {
            spool
                .ctx
                .publish(subject.clone(), payload.into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
        let mut stream = spool.ctx.get_stream("newer").await.unwrap();
        // All pulled: the damaged one terminated, the newer records given back with a delay.
        wait_for("all pulled", Duration::from_secs(20), async || {
            spool.pulled.load(Ordering::Relaxed) == 0
                && stream.info().await.unwrap().state.messages == 2
        })
        .await;
        assert!(rx.try_recv().is_err(), "nothing was queued");
        assert_eq!(spool.held(), 0);
        let info = spool
            .ctx
            .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
                spool.options.consumer.as_str(),
                "newer",
            )
            .await;
        let mut consumer = info.unwrap();
        let c = consumer.info().await.unwrap();
        assert_eq!(
            c.num_ack_pending, 2,
            "the newer records wait for their redelivery"
        );
    }

    /// A pulled notification keeps the key it was accepted under; JetStream delivering its message again to the
    /// node that holds it does not queue it twice, and the final ack covers both deliveries (the stream empties and
    /// nothing comes back). Another notification published under the same id waits in the stream until the held
    /// one is finished, then comes under its id.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_pulled_notification_keeps_its_id_and_a_redelivery_is_acked_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        // No redelivery by the ack wait during the test: only the nak below causes one.
        let (spool, mut rx) = connected(url, "held").await;
        let id = 0x42u128 << 64 | 7;
        spool.append(vec![notification(id, 0xaa)]).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.key, SpoolKey(id), "the pulled notification's key");
        assert_eq!(first.token, vec![0xaa; 32]);

        // JetStream delivers the message again (as after in-progress acks that came too late) to this node.
        let message = lock(&spool.held).by_id[&id].messages[0].clone();
        message.ack_with(AckKind::Nak(None)).await.unwrap();
        wait_for(
            "the redelivery pulled",
            Duration::from_secs(20),
            async || lock(&spool.held).messages_of(id) == 2,
        )
        .await;
        assert_eq!(spool.held(), 1);
        assert_eq!(spool.stream_stats().redelivered_here, 1);
        assert!(rx.try_recv().is_err(), "queued twice");

        // Another notification under the same id (published without a message id, as another node would): not
        // taken while the first is held.
        let other = notification(id, 0xbb);
        let subject = spool.subject.clone();
        spool
            .ctx
            .publish(subject, encode_message(&other).into())
            .await
            .unwrap()
            .await
            .unwrap();
        let pulled = spool.pulled.load(Ordering::Relaxed);
        wait_for(
            "the other one pulled",
            Duration::from_secs(20),
            async || spool.pulled.load(Ordering::Relaxed) > pulled,
        )
        .await;
        assert_eq!(lock(&spool.held).messages_of(id), 2);
        assert!(
            rx.try_recv().is_err(),
            "a second notification under a held id was queued"
        );

        // The final outcome acks both deliveries of the first: only the other one stays in the stream, and it comes
        // next, under its id.
        spool.remove(&[SpoolKey(id)]);
        assert_eq!(spool.held(), 0);
        let next = tokio::time::timeout(SAME_ID_DELAY * 4, rx.recv())
            .await
            .expect("the other notification after the first was finished")
            .unwrap();
        assert_eq!(
            (next.key, next.token.clone()),
            (SpoolKey(id), vec![0xbb; 32])
        );
        spool.remove(&[SpoolKey(id)]);
        spool.flush().await.unwrap();
        let mut stream = spool.ctx.get_stream("held").await.unwrap();
        wait_for("the stream empty", Duration::from_secs(20), async || {
            stream.info().await.unwrap().state.messages == 0
        })
        .await;
        // Their final acks confirmed: what the node remembers of them goes after a while from now on.
        wait_for(
            "the final acks settled",
            Duration::from_secs(20),
            async || {
                let held = lock(&spool.held);
                let finished = &held.finished.by_seq;
                finished.len() == 2 && finished.values().all(|r| r.settled_at.is_some())
            },
        )
        .await;
        spool.close().await.unwrap();
    }

    /// A final ack that never reached the server (the connection dropped just after it went out) leaves the
    /// message to be delivered again: to the node that finished it, it is acked again, not delivered twice.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_redelivery_of_a_notification_finished_here_is_acked_not_delivered_again() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        let (spool, mut rx) = connected(url, "finished").await;
        let id = 0x44u128 << 64 | 3;
        spool.append(vec![notification(id, 0xaa)]).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.key, SpoolKey(id));
        // Finished here as `remove` does, but its ack lost on the way: JetStream delivers the message again (at
        // once here, as after the ack wait).
        let message = {
            let mut held = lock(&spool.held);
            let mut messages = held.take(id);
            assert_eq!(messages.len(), 1);
            let message = messages.remove(0);
            let seq = message.info().unwrap().stream_sequence;
            held.finished
                .record(seq, id, Instant::now(), spool.finished_for());
            message
        };
        message.ack_with(AckKind::Nak(None)).await.unwrap();
        // Acked on its arrival: the stream empties, and nothing was queued or held.
        let mut stream = spool.ctx.get_stream("finished").await.unwrap();
        wait_for("the stream empty", Duration::from_secs(20), async || {
            stream.info().await.unwrap().state.messages == 0
        })
        .await;
        assert!(rx.try_recv().is_err(), "delivered a second time");
        assert_eq!(spool.held(), 0);
        spool.close().await.unwrap();
    }

    /// Another node may set the consumer's ack wait shorter than this node's `ack_wait` (its own option differs):
    /// this node's in-progress acks follow what the server has, and what it holds is not redelivered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_in_progress_acks_follow_the_ack_wait_the_server_has() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        // An ack wait of a minute here: in-progress acks every 20 seconds by this node's own option.
        let (spool, mut rx) = connected(url, "follow").await;
        let stream = spool.ctx.get_stream("follow").await.unwrap();
        let mut config = stream.consumer_info("herald").await.unwrap().config;
        config.ack_wait = Duration::from_secs(2);
        stream
            .update_consumer(consumer::pull::Config::try_from_consumer_config(config).unwrap())
            .await
            .unwrap();
        wait_for(
            "the new ack wait seen",
            Duration::from_secs(20),
            async || spool.consumer_ack_wait() == Duration::from_secs(2),
        )
        .await;
        let id = 0x45u128 << 64 | 1;
        spool.append(vec![notification(id, 0xbb)]).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap();
        // Held for three of the server's ack waits: never delivered again.
        tokio::time::sleep(Duration::from_secs(6)).await;
        assert_eq!(
            lock(&spool.held).messages_of(id),
            1,
            "redelivered while held"
        );
        assert_eq!(
            stream
                .consumer_info("herald")
                .await
                .unwrap()
                .num_redelivered,
            0
        );
        spool.remove(&[SpoolKey(id)]);
        spool.close().await.unwrap();
    }

    /// In-progress acks keep a held notification with its node past the ack wait (they go through the ordered ack
    /// queue, as the acks do); given back with a delay, it comes again after that delay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_notification_stays_past_the_ack_wait_and_comes_back_after_its_release() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        let mut options = JetStreamOptions::new(vec![url], "alive");
        // In-progress acks go out every third of it: 3 s leaves a loaded machine 2 s of stall before one is late.
        options.ack_wait = Duration::from_secs(3);
        let spool = JetStreamSpool::connect(options).await.unwrap();
        let mut rx = spool.take_deliveries().unwrap();
        wait_for("the stream set up", Duration::from_secs(20), async || {
            spool.connected()
        })
        .await;
        let id = 0x43u128 << 64 | 9;
        spool.append(vec![notification(id, 0xcc)]).await.unwrap();
        let first = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(first.key, SpoolKey(id));
        // Three ack waits, held: JetStream never delivers it again.
        tokio::time::sleep(Duration::from_secs(9)).await;
        assert_eq!(
            lock(&spool.held).messages_of(id),
            1,
            "redelivered while held"
        );
        assert_eq!(spool.stream_stats().redelivered_here, 0);
        // Given back for 300 ms: it comes again (to this node, the only one), long before another ack wait
        // would have passed many times over.
        spool.release(SpoolKey(id), Duration::from_millis(300));
        // Held (its in-progress acks going) until its retry count is written, then given back.
        wait_for(
            "the notification given back",
            Duration::from_secs(20),
            async || spool.held() == 0,
        )
        .await;
        let again = tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("the given-back notification came again")
            .unwrap();
        assert_eq!(again.key, SpoolKey(id));
        spool.remove(&[SpoolKey(id)]);
        spool.close().await.unwrap();
    }

    /// A batch published with [`Spool::append_deduplicated`] that the stream refuses part-way (here its message
    /// limit, with discard New, as any failure after some publish acks) is refused, the stream keeping what it
    /// took; the same batch published again under the same `dedup` (a retry, on any node) is acknowledged, the
    /// stream dropping the copies of what it took (answered as duplicates) and storing the rest: each notification
    /// is in the stream once. A plain append's messages keep their `<node>.<key>` ids.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_refused_part_way_and_published_again_is_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        let client = async_nats::connect(url.clone()).await.unwrap();
        let js = jetstream::new(client.clone());
        js.create_stream(stream::Config {
            name: "dedup".into(),
            subjects: vec!["dedup.notifications".into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::File,
            discard: stream::DiscardPolicy::New,
            max_messages: 3,
            duplicate_window: Duration::from_secs(90),
            ..Default::default()
        })
        .await
        .unwrap();
        // What is published, with its message ids, as any subscriber of the subject sees it.
        let mut published = client.subscribe("dedup.notifications").await.unwrap();
        client.flush().await.unwrap();
        let (spool, mut rx) = connected(url, "dedup").await;
        assert_eq!(spool.duplicate_window(), Duration::from_secs(90));
        let batch: Vec<StoredNotification> = (1..=5u128)
            .map(|i| notification(0x2a << 120 | i, i as u8))
            .collect();

        let refused = spool.append_deduplicated(batch.clone(), "i-k1").await;
        assert!(refused.is_err(), "five notifications in a stream of three");
        // The three the stream took are pulled and finished: the stream is empty again.
        let mut pulled = Vec::new();
        for _ in 0..3 {
            let n = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .unwrap()
                .unwrap();
            pulled.push(n.key);
        }
        assert_eq!(pulled, batch[..3].iter().map(|n| n.key).collect::<Vec<_>>());
        spool.remove(&pulled);
        let mut info = js.get_stream("dedup").await.unwrap();
        wait_for("the stream emptied", Duration::from_secs(20), async || {
            info.info().await.unwrap().state.messages == 0
        })
        .await;

        // The retry: acknowledged, the three dropped as duplicates, the other two stored.
        spool
            .append_deduplicated(batch.clone(), "i-k1")
            .await
            .unwrap();
        assert_eq!(spool.duplicates(), 3);
        for expected in &batch[3..] {
            let n = tokio::time::timeout(Duration::from_secs(20), rx.recv())
                .await
                .unwrap()
                .unwrap();
            assert_eq!(n.key, expected.key);
            spool.remove(&[n.key]);
        }
        wait_for("the stream emptied", Duration::from_secs(20), async || {
            info.info().await.unwrap().state.messages == 0
        })
        .await;
        // Five messages stored in all, each notification once.
        assert_eq!(info.info().await.unwrap().state.last_sequence, 5);
        assert!(rx.try_recv().is_err(), "a notification came twice");

        // A plain append: the node's message id, not one a retry would repeat.
        let plain = notification(0x2a << 120 | 6, 6);
        spool.append(vec![plain.clone()]).await.unwrap();
        let mut ids = Vec::new();
        while ids.len() < 11 {
            let m = tokio::time::timeout(Duration::from_secs(20), published.next())
                .await
                .unwrap()
                .unwrap();
            let id = m
                .headers
                .as_ref()
                .and_then(|h| h.get(async_nats::header::NATS_MESSAGE_ID))
                .map(|v| v.as_str().to_owned());
            ids.push(id);
        }
        let dedup: Vec<Option<String>> = batch
            .iter()
            .map(|n| Some(deduplicated_id("i-k1", n.key)))
            .collect();
        assert_eq!(ids[..5], dedup[..], "the first attempt");
        assert_eq!(ids[5..10], dedup[..], "the retry");
        assert_eq!(
            ids[10],
            Some(format!("{}.{}", spool.node_name(), plain.key.0)),
            "a plain append"
        );
        spool.close().await.unwrap();
    }

    /// A second node on `stream` at `url`, named `node`, set up, and what it pulls.
    async fn other_node(
        url: String,
        stream: &str,
        node: &str,
    ) -> (
        Arc<JetStreamSpool>,
        tokio::sync::mpsc::Receiver<StoredNotification>,
    ) {
        let mut options = JetStreamOptions::new(vec![url], stream);
        options.ack_wait = Duration::from_secs(60);
        options.node = node.to_owned();
        set_up(options).await
    }

    async fn next(rx: &mut tokio::sync::mpsc::Receiver<StoredNotification>) -> StoredNotification {
        tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("a notification pulled")
            .expect("the deliveries go on")
    }

    /// The stream sequence of the message held for `id`.
    fn held_seq(spool: &JetStreamSpool, id: u128) -> u64 {
        lock(&spool.held).by_id[&id].messages[0]
            .info()
            .unwrap()
            .stream_sequence
    }

    /// The entry of the message at `seq` in the bucket of retry counts, read from the server.
    async fn retry_entry(spool: &JetStreamSpool, seq: u64) -> Option<RetryState> {
        let name = crate::retry_state::bucket_name(spool.stream_name());
        let store = spool.ctx.get_key_value(&name).await.ok()?;
        let entry = store.entry(seq.to_string()).await.unwrap()?;
        (entry.operation == jetstream::kv::Operation::Put)
            .then(|| RetryState::decode(&entry.value))
            .flatten()
    }

    /// Retries a node keeps in memory (short retry intervals: no delivery of the message) go with the notification
    /// to the next node: handed back after one more failed attempt, it comes to another node with every retry made
    /// on the first counted; and once finished its entry leaves the bucket.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retries_kept_on_a_node_are_counted_on_the_node_a_retry_is_handed_back_to() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        let (a, mut a_rx) = connected(url.clone(), "carry").await;
        let id = 0x51u128 << 64 | 1;
        a.append(vec![notification(id, 0xaa)]).await.unwrap();
        let first = next(&mut a_rx).await;
        assert_eq!((first.key, first.retries), (SpoolKey(id), 0));
        let seq = held_seq(&a, id);
        // Five transient failures, each retried here a second later.
        for retries in 1..=5 {
            a.reschedule(SpoolKey(id), retries, nodes::unix_ms() + 1000);
        }
        assert!(a.retry_book().written(Duration::from_secs(20)).await);
        assert_eq!(retry_entry(&a, seq).await.map(|s| s.retries), Some(5));
        // The sixth attempt fails too, and its retry goes back to the stream; this node stops.
        assert!(a.hand_back(SpoolKey(id), Duration::from_millis(500)));
        a.close().await.unwrap();
        drop(a_rx);

        let (b, mut b_rx) = other_node(url, "carry", "b").await;
        let again = next(&mut b_rx).await;
        assert_eq!(again.key, SpoolKey(id));
        assert_eq!(
            again.retries, 6,
            "five retries kept on the first node and the one handed back"
        );
        b.remove(&[SpoolKey(id)]);
        wait_for("the entry deleted", Duration::from_secs(20), async || {
            retry_entry(&b, seq).await.is_none()
        })
        .await;
        b.close().await.unwrap();
    }

    /// A node that stops gives back a notification waiting for its retry with its retries and its next attempt:
    /// the next node neither counts the stop as a retry nor tries it before it is due.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_notification_given_back_at_a_stop_keeps_its_retries_and_next_attempt() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        let (a, mut a_rx) = connected(url.clone(), "stop").await;
        let id = 0x52u128 << 64 | 1;
        a.append(vec![notification(id, 0xaa)]).await.unwrap();
        next(&mut a_rx).await;
        let seq = held_seq(&a, id);
        let due = nodes::unix_ms() + 600_000;
        for retries in 1..=3 {
            a.reschedule(SpoolKey(id), retries, due);
        }
        assert!(a.retry_book().written(Duration::from_secs(20)).await);
        a.close().await.unwrap();
        drop(a_rx);

        let (b, mut b_rx) = other_node(url, "stop", "b").await;
        let again = next(&mut b_rx).await;
        assert_eq!(
            (again.key, again.retries, again.next_attempt_ms),
            (SpoolKey(id), 3, due)
        );
        b.remove(&[SpoolKey(id)]);
        wait_for("the entry deleted", Duration::from_secs(20), async || {
            retry_entry(&b, seq).await.is_none()
        })
        .await;
        b.close().await.unwrap();
    }

    /// Giving a notification back without an attempt (a domain this node does not deliver, a record it does not
    /// read: [`JetStreamSpool::release`]; a graceful stop) again and again uses up none of its retries, though each
    /// is one more delivery of its message; once finished its entry leaves the bucket.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_notification_given_back_without_an_attempt_keeps_its_retries() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        let (a, mut a_rx) = connected(url.clone(), "noattempt").await;
        let id = 0x53u128 << 64 | 1;
        a.append(vec![notification(id, 0xaa)]).await.unwrap();
        assert_eq!(next(&mut a_rx).await.retries, 0);
        let seq = held_seq(&a, id);
        for _ in 0..3 {
            a.release(SpoolKey(id), Duration::from_millis(100));
            assert_eq!(next(&mut a_rx).await.retries, 0);
        }
        // Stopped, and pulled by another node which stops too, then by a third one.
        a.close().await.unwrap();
        drop(a_rx);
        let (b, mut b_rx) = other_node(url.clone(), "noattempt", "b").await;
        assert_eq!(next(&mut b_rx).await.retries, 0);
        b.close().await.unwrap();
        drop(b_rx);
        let (c, mut c_rx) = other_node(url, "noattempt", "c").await;
        let last = next(&mut c_rx).await;
        assert_eq!((last.key, last.retries), (SpoolKey(id), 0));
        let delivered = lock(&c.held).by_id[&id].messages[0]
            .info()
            .unwrap()
            .delivered;
        assert_eq!(delivered, 6, "each give-back was a delivery of the message");
        c.remove(&[SpoolKey(id)]);
        wait_for("the entry deleted", Duration::from_secs(20), async || {
            retry_entry(&c, seq).await.is_none()
        })
        .await;
        c.close().await.unwrap();
    }

    /// A node whose read of a notification's entry failed counts its retries from the delivery count, a guess:
    /// giving it back without an attempt writes nothing, and the entry keeps the state the node before wrote
    /// (written, the guess would have replaced it: it is of a later delivery).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retry_count_guessed_from_the_delivery_count_is_not_written_over_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        let (a, mut a_rx) = connected(url.clone(), "guess").await;
        let id = 0x55u128 << 64 | 1;
        a.append(vec![notification(id, 0xaa)]).await.unwrap();
        next(&mut a_rx).await;
        let seq = held_seq(&a, id);
        a.reschedule(SpoolKey(id), 4, nodes::unix_ms() + 1000);
        // Stopped: given back with its four retries, settled.
        a.close().await.unwrap();
        drop(a_rx);

        let bucket = crate::retry_state::bucket_name("guess");
        lock(&crate::retry_state::FAILING_READS).push(bucket.clone());
        let (b, mut b_rx) = other_node(url, "guess", "b").await;
        let before = retry_entry(&b, seq).await.expect("written at a's stop");
        assert_eq!(
            (before.retries, before.delivered, before.settled),
            (4, 1, true)
        );
        let again = next(&mut b_rx).await;
        assert_eq!(
            (again.key, again.retries),
            (SpoolKey(id), 1),
            "the read failed: every earlier delivery counts as one"
        );
        assert!(lock(&b.held).known_of(id).is_some_and(|k| k.guessed));
        b.release(SpoolKey(id), Duration::from_secs(600));
        assert!(b.retry_book().written(Duration::from_secs(20)).await);
        assert_eq!(b.held(), 0, "given back");
        assert_eq!(retry_entry(&b, seq).await, Some(before));
        lock(&crate::retry_state::FAILING_READS).retain(|b| *b != bucket);
        b.close().await.unwrap();
    }

    /// A copy of `message` as JetStream would hand it over for its `delivered`-th time.
    fn delivered_again(message: &jetstream::Message, delivered: u64) -> jetstream::Message {
        let mut again = message.clone();
        let reply = again.message.reply.as_ref().unwrap().to_string();
        let mut tokens: Vec<&str> = reply.split('.').collect();
        // `$JS.ACK.<stream>.<consumer>.<delivered>...`, or with a domain and an account first.
        let at = if tokens.len() == 9 { 4 } else { 6 };
        let count = delivered.to_string();
        tokens[at] = &count;
        again.message.reply = Some(tokens.join(".").into());
        assert_eq!(again.info().unwrap().delivered, delivered as i64);
        again
    }

    /// JetStream delivers a held notification again to the node holding it (its in-progress acks came late): the
    /// bucket is not read for it, and its entry is written again with the new delivery count, so that a retry
    /// handed back after it counts as one, not two; another message delivered again is read, unless the pull's
    /// read budget is spent.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_notification_delivered_again_to_its_node_has_its_entry_written_for_that_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let Some((_server, url)) = nats(dir.path()) else {
            return;
        };
        let (a, mut a_rx) = connected(url, "again").await;
        let id = 0x54u128 << 64 | 1;
        a.append(vec![notification(id, 0xaa)]).await.unwrap();
        let stored = next(&mut a_rx).await;
        let seq = held_seq(&a, id);
        let due = nodes::unix_ms() + 600_000;
        a.reschedule(SpoolKey(id), 3, due);
        let within = Duration::from_secs(20);
        assert!(a.retry_book().written(within).await);
        let written = retry_entry(&a, seq).await.unwrap();
        assert_eq!(
            (written.retries, written.delivered, written.settled),
            (3, 1, false)
        );

        let held = lock(&a.held).by_id[&id].messages[0].clone();
        let again = delivered_again(&held, 2);
        let far = tokio::time::Instant::now() + within;
        let pulled = Pulled::Notification(again.clone(), stored.clone());
        let (pulled, looked) = a.prepare(pulled, far).await;
        assert_eq!(looked, Looked::Skipped, "held here: not read");
        // Another notification's message delivered again is read; past the budget it is not.
        let other = StoredNotification {
            key: SpoolKey(id + 1),
            ..stored.clone()
        };
        let (_, looked) = a
            .prepare(Pulled::Notification(again.clone(), other.clone()), far)
            .await;
        assert_eq!(looked, Looked::Entry(Some(written)));
        let spent = tokio::time::Instant::now();
        let (_, looked) = a
            .prepare(Pulled::Notification(again.clone(), other), spent)
            .await;
        assert_eq!(looked, Looked::OverBudget);

        let known = arrival_known(id, 0, 0, 2, &looked);
        let taken = a.take_in(id, Some(seq), pulled.into_message(), known, false);
        assert!(matches!(taken, Taken::Arrived(Arrival::Again)));
        assert!(a.retry_book().written(within).await);
        assert_eq!(
            retry_entry(&a, seq).await,
            Some(RetryState {
                delivered: 2,
                ..written
            }),
            "its retries so far, as of its second delivery"
        );
        a.remove(&[SpoolKey(id)]);
        wait_for("the entry deleted", within, async || {
            retry_entry(&a, seq).await.is_none()
        })
        .await;
        a.close().await.unwrap();
    }

    /// A notification given back without an attempt stays held (its in-progress acks go on) until the writes of its
    /// retry counts are confirmed; then it is taken for its nak, unless a stop gave it back meanwhile (with the same
    /// delay) or it went back otherwise and came again.
    #[test]
    fn a_notification_being_given_back_stays_held_until_its_nak_is_queued() {
        let mut held: Held<Handle> = Held::default();
        let id = 0x42u128 << 64 | 9;
        let known = Known {
            retries: 2,
            next_attempt_ms: 0,
            entry: true,
            guessed: false,
        };
        let nak = AckKind::Nak(Some(Duration::from_secs(60)));
        assert_eq!(held.arrive(id, (10, 1), same), Arrival::New);
        held.know(id, known);
        let token = held.release_later(id, nak);
        assert!(held.contains(id) && held.is_releasing(id));
        assert_eq!(held.messages().count(), 1, "in-progress acks go on");
        assert_eq!(held.take_released(id, token), vec![(10, 1)]);
        assert!(!held.contains(id) && !held.is_releasing(id));

        // A later give-back of the same notification takes the place of the first.
        held.arrive(id, (10, 2), same);
        held.know(id, known);
        let first = held.release_later(id, nak);
        let second = held.release_later(id, nak);
        assert!(held.take_released(id, first).is_empty());
        assert_eq!(held.take_released(id, second), vec![(10, 2)]);

        // Gone back otherwise (handed back), then delivered again: the old give-back takes nothing.
        held.arrive(id, (10, 3), same);
        let old = held.release_later(id, nak);
        assert_eq!(held.take_known(id).0, vec![(10, 3)]);
        held.arrive(id, (10, 4), same);
        assert!(held.take_released(id, old).is_empty());
        assert!(held.contains(id) && !held.is_releasing(id));

        // A stop gives it back with the delay it was being given back with.
        held.release_later(id, nak);
        let drained = held.drain_known();
        assert_eq!(drained.len(), 1);
        let (drained_id, messages, _, given_back) = &drained[0];
        assert_eq!((*drained_id, messages.as_slice()), (id, &[(10, 4)][..]));
        assert!(
            matches!(given_back, Some(AckKind::Nak(Some(d))) if *d == Duration::from_secs(60)),
            "{given_back:?}"
        );
    }

    #[test]
    fn a_pulls_reads_take_a_third_of_the_ack_wait_at_most() {
        assert_eq!(read_budget(Duration::from_secs(3)), Duration::from_secs(1));
        assert_eq!(read_budget(Duration::from_secs(30)), READS_BUDGET);
    }

    /// A claim counts as the node's for the ack wait less a sixth of it after its last renewal, and a pull asked
    /// for stays open a sixth of the ack wait at most.
    #[test]
    fn a_claim_counts_until_the_ack_wait_less_its_margin() {
        let ack_wait = Duration::from_secs(30);
        let span = claim_span(ack_wait);
        assert_eq!(span, Duration::from_secs(25));
        let t0 = Instant::now();
        assert!(claim_alive(t0, t0 + Duration::from_secs(24), span));
        assert!(!claim_alive(t0, t0 + span, span));
        assert!(!claim_alive(t0, t0 + Duration::from_secs(45), span));
        assert_eq!(pull_expires(ack_wait), PULL_EXPIRES);
        assert_eq!(
            pull_expires(Duration::from_secs(3)),
            Duration::from_millis(500)
        );
    }

    /// A node stopped for longer than the ack wait while it holds notifications (the chaos test: 45 s with an ack
    /// wait of 30 s) finds, once it runs again, their claims lapsed: marked so, given no in-progress ack, naked
    /// neither at a give-back nor at the stop, and forgotten when the queue asks. One pulled after the last round
    /// that went out counts from its pull; a stop shorter than the ack wait lapses nothing.
    #[test]
    fn claims_not_renewed_for_the_ack_wait_lapse() {
        let span = claim_span(Duration::from_secs(30));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut held: Held<Handle> = Held::default();
        for id in 1..=3u128 {
            assert_eq!(
                held.arrive_at(id, (id as u64, 1), same, at(0)),
                Arrival::New
            );
        }
        // A round begins at 10 s and all its acks go out; another notification's pull was asked for at 12 s.
        let round = held.start_round();
        held.round_out(round, at(10));
        assert_eq!(held.arrive_at(4, (4, 1), same, at(12)), Arrival::New);
        // Id 3 is being given back, waiting for its retry counts to be written.
        let token = held.release_later(3, AckKind::Nak(Some(Duration::from_secs(60))));
        // Stopped from 12 s to 30 s (less than the ack wait): nothing lapsed.
        assert_eq!(held.lapse(at(30), span), None);
        assert_eq!(held.alive_until(span, at(30)), Some(at(35)));
        // Stopped until 57 s: the three renewed at 10 s lapsed, the one pulled at 12 s too.
        let lapse = held.lapse(at(57), span).expect("lapsed");
        assert_eq!(
            lapse,
            Lapse {
                count: 4,
                renewed: at(10)
            }
        );
        assert_eq!(held.messages().count(), 0, "no in-progress ack for them");
        assert_eq!(
            held.alive_until(span, at(57)),
            Some(at(57)),
            "no fast answer while some lapsed ones are not forgotten"
        );
        assert_eq!(held.len(), 4, "still counted until forgotten");
        // The give-back under way sends no nak; the queue asking forgets them without an ack.
        assert!(held.take_released(3, token).is_empty());
        assert!(held.forget_lapsed(1));
        assert!(!held.forget_lapsed(1), "forgotten once");
        assert!(!held.contains(1));
        // A final outcome reached meanwhile is still acked: its messages are taken.
        assert_eq!(held.take_known(2).0, vec![(2, 1)]);
        // The stop gives back nothing of what lapsed.
        assert!(held.drain_known().is_empty());
        assert_eq!(held.alive_until(span, at(57)), None);
    }

    /// A notification taken in after a round began (its pull asked for before) is not renewed by that round: it
    /// counts from its pull; those held when the round began count from the round.
    #[test]
    fn a_round_renews_only_what_was_held_when_it_began() {
        let span = claim_span(Duration::from_secs(30));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut held: Held<Handle> = Held::default();
        held.arrive_at(1, (1, 1), same, at(0));
        let round = held.start_round();
        held.arrive_at(2, (2, 1), same, at(5));
        held.round_out(round, at(10));
        assert_eq!(held.alive_until(span, at(10)), Some(at(30)));
        let lapse = held
            .lapse(at(31), span)
            .expect("the one pulled at 5 s lapsed");
        assert_eq!(
            lapse,
            Lapse {
                count: 1,
                renewed: at(5)
            }
        );
        assert!(held.is_lapsed(2) && !held.is_lapsed(1));
        assert!(held.forget_lapsed(2));
        assert_eq!(held.alive_until(span, at(31)), Some(at(35)));
        // A round that never went out (its acks stuck) renews nothing: at 35 s the first one lapses too.
        held.start_round();
        assert!(held.lapse(at(34), span).is_none());
        assert_eq!(held.lapse(at(35), span).map(|l| l.count), Some(1));
    }

    /// JetStream delivering a lapsed notification again to this node, which still has it queued, makes it this
    /// node's again: not lapsed, kept with its earlier message (its final ack goes to both), renewed from then on.
    #[test]
    fn a_lapsed_notification_delivered_here_again_is_owned_again() {
        let span = claim_span(Duration::from_secs(6));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut held: Held<Handle> = Held::default();
        held.arrive_at(7, (7, 1), same, at(0));
        assert_eq!(held.lapse(at(25), span).map(|l| l.count), Some(1));
        assert_eq!(held.arrive_at(7, (7, 2), same, at(26)), Arrival::Again);
        assert!(!held.is_lapsed(7));
        assert_eq!(held.messages().count(), 2);
        assert_eq!(held.alive_until(span, at(26)), Some(at(31)));
        assert!(!held.forget_lapsed(7));
        // Forgotten once lapsed, it comes back as new.
        assert_eq!(held.lapse(at(40), span).map(|l| l.count), Some(1));
        assert!(held.forget_lapsed(7));
        assert_eq!(held.arrive_at(7, (7, 3), same, at(41)), Arrival::New);
    }

    /// The delivery path's fast answer: yes while every claim is alive, no once one may have lapsed and while
    /// lapsed ones are not forgotten.
    #[test]
    fn the_fast_answer_follows_the_oldest_renewal() {
        let claims = Claims::default();
        let span = claim_span(Duration::from_secs(30));
        let now = Instant::now();
        let mut held: Held<Handle> = Held::default();
        claims.publish(&held, span, now);
        assert!(claims.all_alive(), "nothing held");
        held.arrive_at(1, (1, 1), same, now);
        claims.publish(&held, span, now);
        assert!(claims.all_alive());
        let old = now.checked_sub(Duration::from_secs(40)).unwrap();
        held.arrive_at(2, (2, 1), same, old);
        claims.publish(&held, span, now);
        assert!(!claims.all_alive(), "one pulled 40 s ago");
        assert!(held.lapse(now, span).is_some());
        claims.publish(&held, span, now);
        assert!(!claims.all_alive(), "a lapsed one is not forgotten yet");
        assert!(held.forget_lapsed(2));
        claims.publish(&held, span, now);
        assert!(claims.all_alive());
    }
}
