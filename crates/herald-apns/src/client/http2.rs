//! One HTTP/2 connection to APNs (docs/apns-protocol.md#http2).
//!
//! One stream per notification. The server's `SETTINGS_MAX_CONCURRENT_STREAMS` is obeyed as it changes (it starts
//! at 1 until the connection is treated as not yet authorised, docs/apns-protocol.md#http2-connection), and below it an
//! adaptive limit ([`super::limit`]) lowers the streams kept open when answers slow down: a job is taken from the
//! shared queue only while both have room, judged against the server's limit as it stands when the job is taken (it
//! may have just been lowered), and `h2` says another stream may open, so every stream opens at once and work above
//! the limit waits in the queue, where another connection of the pool can take it (h2 would hold a stream above the
//! limit until a slot freed, its timers running). The response timeout counts from when a request's body was
//! written; a stream that times out is cancelled (`RST_STREAM CANCEL`) before it is reported, and a deadline that
//! passes is looked at once more first, so that an answer left unread while herald itself stalled is not taken for
//! a timeout ([`super::stall`]). Answers are matched by stream, never by `apns-id`. After a GOAWAY no stream opens:
//! the connection stops taking work as soon as the GOAWAY's frame is read, however many streams it carries, and
//! those the GOAWAY covers go on to their answers (until they have, the pool does not judge the connection,
//! [`ConnectionState::awaits_covered_answers`]). Streams the server did not process (refused, above the GOAWAY's
//! last stream id, reset before the request was written in full, or lost with the connection before then) come
//! back as [`PushResult::NotSent`], and a request written in full whose stream ends without an answer as
//! [`PushResult::Unanswered`] (APNs may have processed it). An answer with a status alone gets the reason
//! `HTTP <status> without a reason`. A server that agreed on no ALPN protocol and then fails the HTTP/2 handshake
//! is reported as not speaking HTTP/2 ([`ConnectionError::NotHttp2`]). A stream reset is an error of that stream alone and the
//! connection goes on, unless [`MAX_RESETS_IN_A_ROW`] streams are reset without an answer in between. An idle connection
//! is checked with PING, so a peer that vanished is found before a notification is trusted to it, and it closes
//! after `idle_timeout`. A job taken when nothing has been heard from the peer for [`LIVENESS_THRESHOLD`] (no answer,
//! no PONG: a NAT may have dropped the connection between keep-alive PINGs) waits for the answer to a PING; without
//! one within [`LIVENESS_PING_TIMEOUT`] the job comes back unsent ([`NotSentReason::Closing`], never written) and the
//! connection closes. A busy one is checked too: when a stream times out, or streams are open and nothing came
//! from the peer for half the response timeout, a PING goes out and no work is taken until its PONG; with no PONG
//! within the response timeout the connection stops taking work for good, tells the pool it is draining (so the
//! pool opens another), and closes once its open streams have ended with their own timeouts. `503 Shutdown` (the
//! APNs server is going down) and `429 TooManyProviderTokenUpdates` (APNs finds the provider token changed too soon
//! on this connection, where a new connection's first token is no update) stop the connection taking work as well.
//! Every such stop is recorded as the connection's fault ([`ConnectionState::fault`]), which the pool weighs against
//! the connection's age; the GOAWAY that ended a connection is logged with its error code and reason. Request bodies
//! that wait for flow-control credit take turns for it ([`exchange`]). A token connection sends the provider token
//! it adopted, and takes a renewed one only 20½ minutes after that ([`ConnectionToken`]); one that can keep neither
//! stops taking work (no fault), so that the pool opens one that adopts the new token.

use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use h2::SendStream;
use h2::client::{ResponseFuture, SendRequest};
use http::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Uri};
use tokio::sync::Semaphore;

use super::connect::{Endpoint, alpn_h2, connect_tls, without_alpn};
use super::limit::AdaptiveLimit;
use super::preface::{self, FrameWatch, GoAwaySeen};
use super::stall::{self, Turns};
use super::{
    CancelledStream, ClosedOnDrop, ConnectionError, ConnectionInfo, ConnectionState, Job,
    JobReceiver, NotSentReason, OutcomeSink, PushRequest, PushResult, Rejection, not_processed,
    panic_message,
};
use crate::outcome::FailureClass;
use crate::provider_token::{ConnectionToken, ProviderTokenCache, TokenChoice};
use crate::push::{Priority, PushType};
use crate::reason::read_error_body;

static APNS_ID: HeaderName = HeaderName::from_static("apns-id");
static APNS_UNIQUE_ID: HeaderName = HeaderName::from_static("apns-unique-id");
static APNS_TOPIC: HeaderName = HeaderName::from_static("apns-topic");
static APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
static APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
static APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
static APNS_COLLAPSE_ID: HeaderName = HeaderName::from_static("apns-collapse-id");

/// Largest error body read from APNs; real ones are a few dozen bytes.
const MAX_ERROR_BODY: usize = 16 * 1024;

/// A connection from which nothing has been heard for this long (no answer, no PONG) is asked with a PING before
/// it is given work, and the work waits for the PONG (docs/apns-protocol.md#http2-connection): a peer or a NAT that
/// dropped the connection without a word between keep-alive PINGs would otherwise take the next notification into a
/// dead socket, where it would time out as an attempt APNs may have answered.
pub const LIVENESS_THRESHOLD: Duration = Duration::from_secs(10);

/// How long the PING of [`LIVENESS_THRESHOLD`] may go unanswered (never longer than the response timeout) before
/// the connection is given up and the notification waiting for it is handed back unsent, for another connection.
pub const LIVENESS_PING_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest GOAWAY reason put in a log line or a connection's fault; APNs' reasons are a word or a sentence.
const MAX_GOAWAY_REASON: usize = 200;

/// Streams reset by the server (a code other than `REFUSED_STREAM`) one after another, with no answer in between,
/// after which the connection takes no more work. One reset is an error of its stream alone and leaves the
/// connection taking work (RFC 9113 §5.4.2); a server that resets stream after stream and answers none is as good as
/// broken, and every notification would go round on it (each reset one comes back unsent and is sent again at once)
/// until the queue's loss cap makes each take a failed attempt. A new connection is tried instead, and when new ones
/// fare no better, they count as failed connection attempts and back off.
const MAX_RESETS_IN_A_ROW: u32 = 10;

/// Settings of an HTTP/2 connection.
#[derive(Clone)]
pub struct Http2Options {
    pub endpoint: Endpoint,
    /// rustls configuration with ALPN `h2` (and the client certificate for certificate auth).
    pub tls: Arc<rustls::ClientConfig>,
    /// Provider-token auth; `None` for certificate auth.
    pub auth: Option<ProviderTokenCache>,
    pub connect_timeout: Duration,
    /// How long to wait for the answer to one notification.
    pub response_timeout: Duration,
    /// Close after this long with nothing in flight and nothing taken; `None` keeps the connection open.
    pub idle_timeout: Option<Duration>,
    /// Send a PING after this long without traffic; no PONG within `response_timeout` closes the connection.
    pub keepalive: Duration,
}

impl std::fmt::Debug for Http2Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2Options")
            .field("endpoint", &self.endpoint)
            .field("token_auth", &self.auth.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("keepalive", &self.keepalive)
            .finish()
    }
}

/// Opens a connection and starts its task, which pulls from `jobs` until it closes. Returns its live state.
pub async fn open<T: Send + 'static>(
    opts: Arc<Http2Options>,
    id: u64,
    jobs: JobReceiver<T>,
    sink: Arc<dyn OutcomeSink<T>>,
) -> Result<Arc<ConnectionState>, ConnectionError> {
    open_starting_at(opts, id, jobs, sink, None).await
}

/// [`open`], with the connection's adaptive in-flight limit starting at `start_limit` streams when given (a
/// further connection to a server whose open connections carry that many with fast answers) instead of ramping
/// up from [`super::limit::INITIAL_LIMIT`].
pub async fn open_starting_at<T: Send + 'static>(
    opts: Arc<Http2Options>,
    id: u64,
    jobs: JobReceiver<T>,
    sink: Arc<dyn OutcomeSink<T>>,
    start_limit: Option<usize>,
) -> Result<Arc<ConnectionState>, ConnectionError> {
    let (tls, remote) = connect_tls(&opts.endpoint, opts.tls.clone(), opts.connect_timeout).await?;
    // A server that agreed on no ALPN protocol may still speak HTTP/2 (prior knowledge); one that fails the HTTP/2
    // handshake then is reported as not speaking it.
    let h2_agreed = alpn_h2(&tls, &opts.endpoint.host)?;
    let (send, ping, driver, watch) = handshake(tls, &opts).await.map_err(|e| {
        if h2_agreed {
            e
        } else {
            without_alpn(e, &opts.endpoint.host)
        }
    })?;
    let authority: Authority = opts
        .endpoint
        .authority()
        .parse()
        .map_err(|_| ConnectionError::ServerName(opts.endpoint.host.clone()))?;
    let state = ConnectionState::unsettled(1);
    let info = ConnectionInfo { remote, id };
    let task = Dispatcher {
        opts,
        authority,
        send,
        ping,
        driver: Some(driver),
        jobs,
        sink,
        state: state.clone(),
        info,
        values: ValueCache::default(),
        start_limit,
        watch,
        liveness: LIVENESS_THRESHOLD,
        closed_by_us: None,
        credit: Arc::new(Semaphore::new(1)),
        #[cfg(test)]
        panic_at: None,
        #[cfg(test)]
        launched: 0,
    };
    tokio::spawn(task.run());
    Ok(state)
}

/// The h2 connection future: reads and writes frames until the connection ends.
type Driver = Pin<Box<dyn std::future::Future<Output = Result<(), h2::Error>> + Send>>;

/// The HTTP/2 handshake on an established transport with this connection's settings, complete only once the
/// server's connection preface has arrived, within `connect_timeout` ([`preface::open`]: a TLS alert before it,
/// such as the refusal of the client certificate, is reported with its reason).
async fn handshake<S>(
    io: S,
    opts: &Http2Options,
) -> Result<
    (
        SendRequest<Bytes>,
        Option<h2::PingPong>,
        Driver,
        Arc<FrameWatch>,
    ),
    ConnectionError,
>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(1 << 20)
        .initial_connection_window_size(4 << 20)
        .max_concurrent_streams(0)
        .enable_push(false);
    let (send, mut connection, watch) =
        preface::open_watched(io, builder, &opts.endpoint.host, opts.connect_timeout).await?;
    let ping = connection.ping_pong();
    // The connection is driven by the dispatcher's own task, not a task of its own: the frames a request
    // queues are written in the same turn, and no wake-up crosses between threads per request.
    let driver: Driver = Box::pin(connection);
    Ok((send, ping, driver, watch))
}

struct Dispatcher<T> {
    opts: Arc<Http2Options>,
    authority: Authority,
    send: SendRequest<Bytes>,
    ping: Option<h2::PingPong>,
    /// `None` once the connection has ended.
    driver: Option<Driver>,
    jobs: JobReceiver<T>,
    sink: Arc<dyn OutcomeSink<T>>,
    state: Arc<ConnectionState>,
    info: ConnectionInfo,
    values: ValueCache,
    /// Where the adaptive limit starts (see [`open_starting_at`]).
    start_limit: Option<usize>,
    /// What the connection's reader saw of the server's frames (its GOAWAY).
    watch: Arc<FrameWatch>,
    /// A job taken when nothing has been heard from the peer for this long waits for a PING's answer
    /// ([`LIVENESS_THRESHOLD`]).
    liveness: Duration,
    /// Set when herald stopped the connection taking work for its own reasons, with the server's GOAWAY seen
    /// until then (see [`Dispatcher::close_ourselves`]).
    closed_by_us: Option<Option<GoAwaySeen>>,
    /// The turns of the streams whose body waits for flow-control credit (see [`exchange`]).
    credit: Arc<Semaphore>,
    /// Makes the task panic at a job (tests of what follows a panic).
    #[cfg(test)]
    panic_at: Option<PanicAt>,
    /// Jobs launched so far (counted for [`Dispatcher::panic_at`]).
    #[cfg(test)]
    launched: u32,
}

/// Where a test makes a connection's task panic: at the `job`th job launched (counting from 1).
#[cfg(test)]
#[derive(Debug, Clone, Copy)]
struct PanicAt {
    job: u32,
    place: PanicPlace,
}

#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PanicPlace {
    /// The dispatcher's loop, with the job in hand, before its stream opens.
    Launch,
    /// The job's own stream, once its exchange with the server has ended (its answer in).
    Stream,
    /// The dispatcher's loop, with the job's answer in hand, before it is reported.
    Answer,
    /// The job's own stream, when its body has to wait for flow-control credit (never written in full).
    CreditWait,
    /// The job's own stream once its exchange has ended, as the stream's work is dropped: a panic outside any
    /// unwinding, as h2 panics when a stream handle is dropped after its lock was poisoned.
    Drop,
}

/// A job the dispatcher's loop holds outside the queue, its held job and its streams while it works on it: where
/// [`Dispatcher::panicked`] finds it if that work panics.
enum InHand<T> {
    Empty,
    /// Taken from the queue (or out of being held), its stream not open yet.
    Taken(Job<T>),
    /// Its stream ended with `result`; what the end means is being looked at before it is reported (the result
    /// is replaced in place by what is to be reported, [`Dispatcher::on_answer`]).
    Ended {
        tag: T,
        result: PushResult,
    },
}

impl<T> InHand<T> {
    fn take(&mut self) -> InHand<T> {
        std::mem::replace(self, InHand::Empty)
    }

    /// What to report for this job when the task panicked with it in hand, as on a lost connection: one never
    /// written comes back unsent; one whose stream ended is reported with what its stream ended with (an answer
    /// read before the panic is the outcome: reported as anything else, a delivered notification would be sent
    /// again).
    fn lost(self) -> Option<(T, PushResult)> {
        match self {
            InHand::Empty => None,
            InHand::Taken(job) => {
                Some((job.tag, PushResult::NotSent(NotSentReason::ConnectionLost)))
            }
            InHand::Ended { tag, result } => Some((tag, result)),
        }
    }
}

/// The last topic, expiration and header set sent on a connection: consecutive requests mostly repeat them, and a
/// header value or map built once is then shared (a reference count, a copy of a small map) instead of being built,
/// checked and hashed into a new map again for every request.
#[derive(Debug, Default)]
struct ValueCache {
    topic: Option<(Arc<str>, HeaderValue)>,
    expiration: Option<(u32, HeaderValue)>,
    fields: Option<SharedFields>,
}

/// The headers a run of requests on a connection have in common (authorization, topic, push type, priority,
/// expiration), in the order [`build_request`] sends them, with the values they were built from.
#[derive(Debug)]
struct SharedFields {
    auth: Option<HeaderValue>,
    topic: Option<Arc<str>>,
    push_type: Option<PushType>,
    priority: Option<Priority>,
    expiration: Option<u32>,
    map: HeaderMap,
}

impl SharedFields {
    fn fits(&self, auth: &Option<HeaderValue>, req: &PushRequest) -> bool {
        let same_topic = match (&self.topic, &req.topic) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b) || **a == **b,
            (None, None) => true,
            _ => false,
        };
        same_topic
            && self.push_type == req.push_type
            && self.priority == req.priority
            && self.expiration == req.expiration
            && self.auth == *auth
    }
}

impl ValueCache {
    fn topic(&mut self, topic: &Arc<str>) -> Result<HeaderValue, Rejection> {
        if let Some((last, value)) = &self.topic
            && (Arc::ptr_eq(last, topic) || **last == **topic)
        {
            return Ok(value.clone());
        }
        let value = header_value(topic, "BadTopic")?;
        self.topic = Some((topic.clone(), value.clone()));
        Ok(value)
    }

    fn expiration(&mut self, expiration: u32) -> HeaderValue {
        match &self.expiration {
            Some((last, value)) if *last == expiration => value.clone(),
            _ => {
                let value = HeaderValue::from(expiration);
                self.expiration = Some((expiration, value.clone()));
                value
            }
        }
    }

    /// The headers of `req` that repeat from request to request: a copy of the last map when they are the same,
    /// else a new map (kept for the requests that follow).
    fn shared_fields(
        &mut self,
        auth: Option<HeaderValue>,
        req: &PushRequest,
    ) -> Result<HeaderMap, Rejection> {
        if let Some(fields) = &self.fields
            && fields.fits(&auth, req)
        {
            return Ok(fields.map.clone());
        }
        // Room for every header herald sends, so the map never grows (and rehashes) while it is filled.
        let mut map = HeaderMap::with_capacity(8);
        if let Some(auth) = &auth {
            map.insert(AUTHORIZATION, auth.clone());
        }
        if let Some(topic) = &req.topic {
            map.insert(APNS_TOPIC.clone(), self.topic(topic)?);
        }
        if let Some(push_type) = req.push_type {
            map.insert(
                APNS_PUSH_TYPE.clone(),
                HeaderValue::from_static(push_type.as_str()),
            );
        }
        if let Some(priority) = req.priority {
            // A static value: no buffer per request.
            map.insert(
                APNS_PRIORITY.clone(),
                HeaderValue::from_static(priority.as_str()),
            );
        }
        if let Some(expiration) = req.expiration {
            map.insert(APNS_EXPIRATION.clone(), self.expiration(expiration));
        }
        self.fields = Some(SharedFields {
            auth,
            topic: req.topic.clone(),
            push_type: req.push_type,
            priority: req.priority,
            expiration: req.expiration,
            map: map.clone(),
        });
        Ok(map)
    }
}

/// A PING waiting for its PONG.
#[derive(Debug, Clone, Copy)]
struct PingSent {
    at: Instant,
    /// Sent because the peer may be gone (a stream timed out, or streams are open and nothing was heard for a
    /// while), not to keep an idle connection alive: no work is taken until the PONG comes.
    suspect: bool,
}

/// A job taken when nothing had been heard from the peer for a while ([`LIVENESS_THRESHOLD`]), held back until the
/// peer answers a PING.
struct Held<T> {
    job: Job<T>,
    /// When it was taken: without a PONG within [`Dispatcher::probe_timeout`], the connection is given up.
    since: Instant,
    /// The PONG came: the job goes out as soon as the server's stream limit has room for it.
    answered: bool,
}

/// A stream in flight: its work (boxed once, so the in-flight set moves a pointer) and its stream id, which a
/// GOAWAY's last stream id is compared with ([`covers_any`]).
struct InFlight<F> {
    stream: u32,
    work: Pin<Box<F>>,
}

impl<F: std::future::Future> std::future::Future for InFlight<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        self.work.as_mut().poll(cx)
    }
}

/// Whether a stream of `in_flight` is one the server's GOAWAY (with `last_stream_id`) covers: one the server
/// processes, whose answer may still come (RFC 9113 §6.8).
fn covers_any<F>(in_flight: &FuturesUnordered<InFlight<F>>, last_stream_id: u32) -> bool {
    in_flight.iter().any(|f| f.stream <= last_stream_id)
}

/// Whether `result` is an answer from the server to the request (a response of any status), as opposed to a stream
/// that ended without one.
fn is_answer(result: &PushResult) -> bool {
    matches!(
        result,
        PushResult::Delivered { .. } | PushResult::Rejected(_) | PushResult::TokenExpired { .. }
    )
}

/// The provider token a request carried, so an `ExpiredProviderToken` answer retires exactly that one.
type TokenUsed = Option<Arc<str>>;

/// Whether a connection's adaptive limit ramps up on answers that show the server keeps up, which the pool reads
/// ([`ConnectionState::is_ramping_up`]) to open further connections for a backlog before this one carries all the
/// server allows. Slow start alone shows too little: it ends only once a whole window of answers averages slow, and
/// a server that queues requests first in first out (a busy APNs) answers the first of a round at once and each next
/// one later, so slow start goes on for a moment while answers already queue, and a backlog would open connection
/// after connection into that queue, each with a round of streams that cannot be taken back (timeouts, and so
/// duplicates). So the ramp counts once a full round of answers (as many as the limit started at) came back within
/// the limit's target, and no longer once one answer came back slower (the connection then asks for help only when
/// it carries all the server allows).
struct RampProof {
    /// Answers a round holds: the limit the connection started at.
    round: usize,
    /// Answers within the target so far.
    fast: usize,
    /// An answer (or a timeout) came back slower than the target.
    slow_seen: bool,
}

impl RampProof {
    fn new(round: usize) -> RampProof {
        RampProof {
            round,
            fast: 0,
            slow_seen: false,
        }
    }

    /// Records an answer's round trip, as the limiter timed it, against the target the limiter aims under after it.
    fn on_sample(&mut self, rtt: Duration, target: Duration) {
        if rtt <= target {
            self.fast = self.fast.saturating_add(1);
        } else {
            self.slow_seen = true;
        }
    }

    /// The limit is in its slow start, a full round came back fast, and nothing came back slow.
    fn ramping(&self, limiter: &AdaptiveLimit) -> bool {
        limiter.in_slow_start() && !self.slow_seen && self.fast >= self.round
    }
}

/// A connection's provider token ([`ConnectionToken`]: the one it adopted, and when) and the `authorization` value
/// built from it, built once per token.
#[derive(Default)]
struct ConnectionAuth {
    token: ConnectionToken,
    header: Option<(Arc<str>, HeaderValue)>,
}

impl<T: Send + 'static> Dispatcher<T> {
    async fn run(mut self) {
        // However the task ends, the pool learns that the connection is gone.
        let _closed = ClosedOnDrop(self.state.clone());
        let mut in_flight = FuturesUnordered::new();
        // Streams open and nothing heard from the peer for this long: a PING asks whether it is still there.
        let silence = self.opts.keepalive.min(self.opts.response_timeout / 2);
        let tick_every = silence
            .min(self.opts.idle_timeout.unwrap_or(Duration::MAX))
            .min(self.probe_timeout())
            / 4;
        let tick_every = tick_every.clamp(Duration::from_millis(50), Duration::from_secs(1));
        let mut tick = tokio::time::interval(tick_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Tells the first tick after herald itself stalled, which passes no verdict on the peer's silence.
        let mut turns = Turns::new(tick_every, tokio::time::Instant::now());
        // The last request taken or answer in: `idle_timeout` counts from it, and a PING does not reset it (with
        // `keepalive` shorter than `idle_timeout`, PONGs would otherwise keep an idle connection open for good).
        let mut last_activity = Instant::now();
        // The last traffic of any kind, PONGs included: the keep-alive PING goes out after `keepalive` of none.
        let mut last_keepalive = last_activity;
        // The last answer from the peer (a response, a refusal, a PONG): a timed-out stream is not one. While no
        // stream is open it moves to when the next one opens, since silence only counts with streams open.
        let mut last_heard = last_activity;
        // The last answer or PONG from the peer (its preface, at first), whether streams were open or not: a job
        // taken when it is `liveness` old waits for a PING's answer before it is sent.
        let mut last_received = last_activity;
        let mut ping_sent: Option<PingSent> = None;
        // A job taken when nothing had been heard from the peer for `liveness`, waiting for the PONG of the PING
        // that asks whether the peer is still there, and then for room for its stream.
        let mut held: Option<Held<T>> = None;
        // Streams reset by the server without an answer since the last answer (see `MAX_RESETS_IN_A_ROW`).
        let mut resets_in_a_row = 0u32;
        let mut taking = true;
        let mut conn_auth = ConnectionAuth::default();
        // Streams open right after requests last went out (see the answers below).
        let mut filled = 0usize;
        let mut limiter = match self.start_limit {
            Some(n) => AdaptiveLimit::starting_at(self.opts.response_timeout, Instant::now(), n),
            None => AdaptiveLimit::new(self.opts.response_timeout, Instant::now()),
        };
        let mut ramp = RampProof::new(limiter.limit());

        // A job the loop holds outside the queue, `held` and `in_flight` while it works on it (see `InHand`).
        let mut in_hand = InHand::Empty;
        // The task panicked: the connection is treated as lost, and nothing more is asked of h2.
        let mut broken = false;
        // A panic in the loop (a fault of h2 or of herald) is caught where the task polls it, one catch per poll:
        // the connection is then treated as lost ([`Dispatcher::panicked`]), and the loop goes round again, taking
        // no work, until every stream it carries has ended and been reported.
        loop {
            let turns = AssertUnwindSafe(async {
                loop {
                    // Once the task has panicked, h2 may be in any state (its lock poisoned): it is not asked.
                    let (server_max, limit) = if broken {
                        (0, 0)
                    } else {
                        let server_max = self.send.current_max_send_streams();
                        limiter.set_max(server_max);
                        (server_max, limiter.limit())
                    };
                    self.state.set_in_flight(in_flight.len());
                    self.state.set_capacity(server_max);
                    self.state.set_limit(limit);
                    self.state.set_ramping(ramp.ramping(&limiter));
                    if !taking && let Some(Held { job, .. }) = held.take() {
                        // Never written: it goes to another connection, without an attempt counted.
                        self.sink.report(
                            job.tag,
                            PushResult::NotSent(NotSentReason::Closing),
                            &self.info,
                        );
                    }
                    // The peer answered the PING the held job waited for: it goes out once the server's limit (which may
                    // have dropped meanwhile) has room for its stream, so that h2 never holds it waiting for one.
                    if taking
                        && held.as_ref().is_some_and(|h| h.answered)
                        && in_flight.len() < server_max
                        && let Some(Held { job, .. }) = held.take()
                    {
                        in_hand = InHand::Taken(job);
                        match self.authorization(&mut conn_auth, &mut taking) {
                            Some((token_used, auth)) => {
                                if let Some(exchange) = self.launch(&mut in_hand, token_used, auth, &mut taking) {
                                    in_flight.push(exchange);
                                }
                            }
                            None => {
                                if let InHand::Taken(job) = in_hand.take() {
                                    self.sink.report(
                                        job.tag,
                                        PushResult::NotSent(NotSentReason::Closing),
                                        &self.info,
                                    );
                                }
                            }
                        }
                        filled = in_flight.len();
                    }
                    if !taking && in_flight.is_empty() {
                        break;
                    }
                    let open = in_flight.len();
                    tokio::select! {
                        biased;
                        // First, so that what the other branches queued last turn is written before anything else.
                        ended = poll_fn(|cx| match self.driver.as_mut() {
                            Some(driver) => driver.as_mut().poll(cx),
                            None => Poll::Pending,
                        }), if self.driver.is_some() => {
                            if let Err(e) = &ended {
                                tracing::debug!(conn = self.info.id, error = %e, "connection ended");
                            }
                            self.driver = None;
                            self.note_covered(&in_flight);
                            self.give_up(&mut taking, || self.ended_cause(ended.err().as_ref()));
                        }
                        // The server sent GOAWAY (its frame read just now, by the branch above): no stream opens any
                        // more. Noticed here whatever the streams in flight (h2 would tell only when asked for room for
                        // another, which a connection at its limit does not ask): the connection stops taking work at
                        // once, so that the pool opens another for what waits, while the streams the GOAWAY covers go on
                        // to their answers and those above it come back unsent.
                        _ = poll_fn(|_| if self.watch.has_goaway() { Poll::Ready(()) } else { Poll::Pending }), if taking => {
                            tracing::debug!(conn = self.info.id, in_flight = in_flight.len(),
                                "GOAWAY from the server: the connection takes no more work");
                            self.note_covered(&in_flight);
                            self.give_up(&mut taking, || self.ended_cause(None));
                        }
                        Some(answer) = in_flight.next(), if !in_flight.is_empty() => {
                            // Every answer already in is handled in this turn, not one per turn of the loop.
                            let mut next = Some(answer);
                            // One clock read for the answers of this turn.
                            last_activity = Instant::now();
                            last_keepalive = last_activity;
                            self.state.set_settled();
                            // Whether the limit was in use is judged by how full the connection was when requests last
                            // went out, not by what is left as the answers of a round trip come in (they come together,
                            // often over several turns before the next requests are sent, and all but the first few
                            // would find the connection half empty).
                            let open = filled.max(in_flight.len() + 1);
                            let mut timed_out = false;
                            let mut stream_panicked = None;
                            while let Some(Answer {
                                tag, result, token_used, rtt, no_credit, reset, panicked, stream,
                            }) = next.take() {
                                let unanswered = matches!(result, PushResult::TimedOut { .. });
                                let answered = is_answer(&result);
                                // Kept where a panic while the answer is looked at leaves it to be reported.
                                in_hand = InHand::Ended { tag, result };
                                #[cfg(test)]
                                self.test_panic_at_answer(stream);
                                #[cfg(not(test))]
                                let _ = stream;
                                if let Some(message) = panicked {
                                    // The connection's fault names the panic, not the loss its job may be
                                    // reported as.
                                    self.give_up(&mut taking, || {
                                        format!("the connection's task panicked: {message}")
                                    });
                                    stream_panicked = Some(message);
                                }
                                if let Some(rtt) = rtt {
                                    limiter.on_sample(rtt, open, last_activity);
                                    ramp.on_sample(rtt, limiter.target());
                                }
                                if no_credit && taking {
                                    // The server gave no window for a whole response timeout: logged once, as the
                                    // connection's fault, before the loss it is reported as.
                                    let timeout = self.opts.response_timeout.as_millis();
                                    tracing::info!(conn = self.info.id, remote = %self.info.remote,
                                        "a request body got no flow-control credit within {timeout} ms; the connection takes \
                                         no more work and closes, and the notifications waiting for credit go to another \
                                         connection unsent");
                                    self.give_up(&mut taking, || {
                                        format!("no flow-control credit for a request body within {timeout} ms")
                                    });
                                }
                                if unanswered {
                                    timed_out = true;
                                } else {
                                    last_heard = last_activity;
                                    last_received = last_activity;
                                }
                                if reset {
                                    resets_in_a_row += 1;
                                    if resets_in_a_row == MAX_RESETS_IN_A_ROW && taking {
                                        tracing::info!(conn = self.info.id, remote = %self.info.remote,
                                            "{MAX_RESETS_IN_A_ROW} streams in a row reset by the server without an answer; the \
                                             connection takes no more work and closes");
                                        self.give_up(&mut taking, || {
                                            format!("{MAX_RESETS_IN_A_ROW} streams in a row reset by the server without an answer")
                                        });
                                    }
                                } else if answered {
                                    resets_in_a_row = 0;
                                }
                                let stop = match &mut in_hand {
                                    InHand::Ended { result, .. } => self.on_answer(result, token_used),
                                    _ => None,
                                };
                                if let Some(cause) = stop {
                                    self.give_up(&mut taking, || cause);
                                }
                                if let InHand::Ended { tag, result } = in_hand.take() {
                                    self.sink.report(tag, result, &self.info);
                                }
                                if !in_flight.is_empty() {
                                    next = in_flight.next().now_or_never().flatten();
                                }
                            }
                            // A stream's own work panicked (its job was reported above): the connection is treated as
                            // lost, as after a panic of the loop itself.
                            if let Some(message) = stream_panicked {
                                self.panicked(
                                    &message, in_flight.len(), &mut broken, &mut taking, &mut held, &mut in_hand,
                                    &mut ping_sent,
                                );
                            }
                            // A stream went unanswered: before another notification is trusted to the connection, a PING
                            // asks whether the peer is still there (a slow server answers it at once, a vanished one never).
                            if timed_out && taking {
                                match ping_sent.as_mut() {
                                    Some(sent) => sent.suspect = true,
                                    None => ping_sent = self.send_ping(true),
                                }
                            }
                        }
                        // A job is taken only while the adaptive limit (itself at most the server's) has room, so the
                        // stream opens at once and the rest waits in the shared queue. The server may lower its limit while
                        // this waits (a SETTINGS frame the connection reads above, before this is polled again): the queue is
                        // read only while the limit as it stands has room, since h2 would hold a stream above it, its body
                        // and its timers waiting, until a slot frees, where no other connection can take it.
                        ready = async {
                            poll_fn(|cx| self.send.poll_ready(cx)).await?;
                            let mut recv = std::pin::pin!(self.jobs.recv());
                            Ok::<_, h2::Error>(poll_fn(|cx| {
                                // No waker of its own for the room: an answer or a tick ends this wait and the loop looks
                                // again, and a SETTINGS frame that raises the limit is read by the connection's branch in a
                                // wake of this task, after which this is polled again.
                                if open >= self.send.current_max_send_streams() {
                                    return Poll::Pending;
                                }
                                recv.as_mut().poll(cx)
                            })
                            .await)
                        }, if taking
                            && held.is_none()
                            && !ping_sent.is_some_and(|p| p.suspect)
                            && in_flight.len() < limit => match ready {
                            Ok(Ok(job)) => {
                                in_hand = InHand::Taken(job);
                                last_activity = Instant::now();
                                last_keepalive = last_activity;
                                if last_activity.saturating_duration_since(last_received) >= self.liveness {
                                    // Nothing heard from the peer for a while: it may have dropped the connection without a
                                    // word (a NAT that forgot it, a dead route). A PING asks first, and the job waits for
                                    // the PONG; without one it goes to another connection unsent (see the tick below).
                                    match ping_sent.as_mut() {
                                        Some(sent) => sent.suspect = true,
                                        None => ping_sent = self.send_ping(true),
                                    }
                                    if let InHand::Taken(job) = in_hand.take() {
                                        if ping_sent.is_some() {
                                            held = Some(Held { job, since: last_activity, answered: false });
                                        } else {
                                            self.sink.report(job.tag, PushResult::NotSent(NotSentReason::Closing), &self.info);
                                            self.give_up(&mut taking, || "no PING could be sent".to_owned());
                                        }
                                    }
                                } else {
                                    if in_flight.is_empty() {
                                        // Silence counts from when streams are open (see `silence`).
                                        last_heard = last_activity;
                                    }
                                    // Jobs already waiting are started in this turn while the limit has room and the
                                    // connection can open a stream at once, not one per turn of the loop.
                                    // The provider token is looked up once for the jobs started in this turn.
                                    match self.authorization(&mut conn_auth, &mut taking) {
                                        Some((token_used, auth)) => while matches!(in_hand, InHand::Taken(_)) {
                                            let launched =
                                                self.launch(&mut in_hand, token_used.clone(), auth.clone(), &mut taking);
                                            if let Some(exchange) = launched {
                                                in_flight.push(exchange);
                                            }
                                            let room = in_flight.len() < limit.min(self.send.current_max_send_streams());
                                            if taking
                                                && room
                                                && matches!(poll_fn(|cx| self.send.poll_ready(cx)).now_or_never(), Some(Ok(())))
                                                && let Ok(job) = self.jobs.try_recv()
                                            {
                                                in_hand = InHand::Taken(job);
                                            }
                                        },
                                        // No token this connection may send: the job goes to another connection, never
                                        // written.
                                        None => {
                                            if let InHand::Taken(job) = in_hand.take() {
                                                self.sink.report(job.tag, PushResult::NotSent(NotSentReason::Closing), &self.info);
                                            }
                                        }
                                    }
                                    filled = in_flight.len();
                                }
                            }
                            // The pool closed the queue: finish what is in flight.
                            Ok(Err(_)) => self.close_ourselves(&mut taking),
                            Err(e) => {
                                tracing::debug!(conn = self.info.id, error = %e, "connection no longer accepts streams");
                                self.note_covered(&in_flight);
                                self.give_up(&mut taking, || self.ended_cause(Some(&e)));
                            }
                        },
                        pong = poll_fn(|cx| match self.ping.as_mut() {
                            Some(p) => p.poll_pong(cx).map(Some),
                            None => Poll::Pending,
                        }), if ping_sent.is_some() => {
                            if let Some(Err(e)) = pong {
                                tracing::debug!(conn = self.info.id, error = %e, "PING failed");
                                self.give_up(&mut taking, || format!("PING failed: {e}"));
                            }
                            ping_sent = None;
                            // A PONG keeps the connection alive but is not work: the idle time goes on counting.
                            last_keepalive = Instant::now();
                            last_heard = last_keepalive;
                            last_received = last_keepalive;
                            // The peer is there: the job that waited for its answer goes out (at the top of the loop, once
                            // its stream can open).
                            if let Some(h) = held.as_mut() {
                                h.answered = true;
                            }
                        }
                        _ = tick.tick() => {
                            if taking && self.state.is_draining() {
                                // The pool asked (a reload, a lower connection limit): not a fault.
                                self.close_ourselves(&mut taking);
                            }
                            // Herald itself stalled since the last tick (the process stopped, a machine too loaded to
                            // run it): what the peer sent meanwhile (a PONG, answers) may wait unread, and is read
                            // before the next tick, which judges the silence (docs/apns-protocol.md#herald-stalls).
                            if turns.after_stall(tokio::time::Instant::now()) {
                                continue;
                            }
                            let idle_for = last_activity.elapsed();
                            if let Some(Held { since, answered: false, .. }) = &held
                                && since.elapsed() >= self.probe_timeout()
                            {
                                let quiet = last_received.elapsed();
                                tracing::info!(conn = self.info.id, remote = %self.info.remote,
                                    "nothing heard from the peer for {} ms and no PING answer within {} ms; the connection \
                                     closes and the notification waiting for it goes to another connection unsent",
                                    quiet.as_millis(), self.probe_timeout().as_millis());
                                self.give_up(&mut taking, || {
                                    format!("no PING answer within {} ms after {} ms without a word from the peer",
                                        self.probe_timeout().as_millis(), quiet.as_millis())
                                });
                                ping_sent = None;
                            } else if let Some(sent) = ping_sent {
                                if sent.at.elapsed() > self.opts.response_timeout {
                                    tracing::info!(conn = self.info.id, remote = %self.info.remote, in_flight = in_flight.len(),
                                        "no PING answer within {:?}; the connection takes no more work and closes",
                                        self.opts.response_timeout);
                                    // The pool no longer counts on it and opens another while work waits. Streams still
                                    // open end with their own response timeout (an attempt APNs may have answered), so
                                    // that none is dropped unreported.
                                    self.give_up(&mut taking, || {
                                        format!("no PING answer within {} ms", self.opts.response_timeout.as_millis())
                                    });
                                    ping_sent = None;
                                }
                            } else if !in_flight.is_empty() {
                                if taking && last_heard.elapsed() >= silence {
                                    ping_sent = self.send_ping(true);
                                }
                            } else if taking {
                                if self.opts.idle_timeout.is_some_and(|idle| idle_for >= idle) {
                                    tracing::debug!(conn = self.info.id, "idle timeout");
                                    self.close_ourselves(&mut taking);
                                } else if last_keepalive.elapsed() >= self.opts.keepalive {
                                    ping_sent = self.send_ping(false);
                                }
                            }
                        }
                    }
                }
            })
            .catch_unwind()
            .await;
            match turns {
                Ok(()) => break,
                Err(panic) => self.panicked(
                    &panic_message(&*panic),
                    in_flight.len(),
                    &mut broken,
                    &mut taking,
                    &mut held,
                    &mut in_hand,
                    &mut ping_sent,
                ),
            }
        }
        // The loop ends only with nothing in flight: every stream was reported.
        debug_assert!(in_flight.is_empty() && held.is_none());
        drop(in_flight);
        self.state.set_in_flight(0);
        self.state.set_closed();
        if broken {
            // h2 may panic again as its last handles go (a stream handle finding its lock poisoned): that says
            // nothing new, and every job has been reported.
            let send = self.send;
            let _ = std::panic::catch_unwind(AssertUnwindSafe(move || drop(send)));
            return;
        }
        // Dropping the last SendRequest lets h2 close the connection with GOAWAY(NO_ERROR); it gets a second to
        // say so before the socket is dropped.
        drop(self.send);
        if let Some(driver) = self.driver.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), driver).await;
        }
        // A GOAWAY the server sent in reply to herald closing the connection says nothing worth a log line.
        let goaway = match self.closed_by_us.take() {
            Some(seen) => seen,
            None => self.watch.goaway(),
        };
        if let Some(goaway) = goaway {
            log_goaway(&self.info, &goaway);
        }
    }

    /// How long the PING asking whether a peer not heard from for [`Dispatcher::liveness`] is still there may go
    /// unanswered before the connection is given up: [`LIVENESS_PING_TIMEOUT`], never more than the response
    /// timeout.
    fn probe_timeout(&self) -> Duration {
        LIVENESS_PING_TIMEOUT.min(self.opts.response_timeout)
    }

    /// Stops taking work for good, and tells the pool so (the connection counts as draining), so that it opens
    /// another while work waits instead of waiting for this one to close.
    fn stop_taking(&self, taking: &mut bool) {
        *taking = false;
        self.state.drain();
    }

    /// [`Self::stop_taking`] for herald's own reasons (`idle_timeout`, the pool's drain, the queue closed), noting
    /// the server's GOAWAY seen until then: only one that came before is the server ending the connection.
    fn close_ourselves(&mut self, taking: &mut bool) {
        if self.closed_by_us.is_none() {
            self.closed_by_us = Some(self.watch.goaway());
        }
        self.stop_taking(taking);
    }

    /// [`Self::stop_taking`] because of the server or the network (`why` says what happened): the connection's
    /// state records the fault, and the pool counts it as a failed connection attempt when the connection is young
    /// and APNs has accepted nothing on it (docs/apns-protocol.md#http2-connection).
    fn give_up(&self, taking: &mut bool, why: impl FnOnce() -> String) {
        self.state.set_fault(why);
        self.stop_taking(taking);
    }

    /// Notes, before the fault a GOAWAY from the server causes is recorded, whether it covers streams still in
    /// flight: the server processes those, and an accepted answer among them proves the connection, so the pool
    /// judges the connection only once they have ended ([`ConnectionState::awaits_covered_answers`]).
    fn note_covered<F>(&self, in_flight: &FuturesUnordered<InFlight<F>>) {
        if let Some(goaway) = self.watch.goaway()
            && covers_any(in_flight, goaway.last_stream_id)
        {
            self.state.set_awaits_covered_answers();
        }
    }

    /// What ended the connection, for its fault: the server's GOAWAY when it sent one, else `error`.
    fn ended_cause(&self, error: Option<&h2::Error>) -> String {
        match (self.watch.goaway(), error) {
            (Some(goaway), _) => goaway_text(&goaway),
            (None, Some(e)) => format!("the connection ended: {e}"),
            (None, None) => "the server closed the connection".to_owned(),
        }
    }

    /// Sends a PING; `suspect` when the peer may be gone (then no work is taken until the PONG).
    fn send_ping(&mut self, suspect: bool) -> Option<PingSent> {
        let ping = self.ping.as_mut()?;
        ping.send_ping(h2::Ping::opaque()).ok()?;
        if suspect {
            tracing::debug!(conn = self.info.id, "no answer from the peer lately: PING");
        }
        Some(PingSent {
            at: Instant::now(),
            suspect,
        })
    }

    /// Opens the stream of the job in hand, taking it (its HEADERS are queued): returns the exchange to carry in
    /// flight, or `None` when the job was reported at once (a header value no request can carry; a stream that
    /// could not open, after which the connection takes no more work).
    fn launch(
        &mut self,
        in_hand: &mut InHand<T>,
        token_used: TokenUsed,
        auth: Option<HeaderValue>,
        taking: &mut bool,
    ) -> Option<InFlight<impl std::future::Future<Output = Answer<T>> + Send + use<T>>> {
        #[cfg(test)]
        let panic_in_stream = self.test_panic_at_launch();
        // The job stays in hand while h2 opens its stream: a panic there leaves it to be reported.
        let started = match in_hand {
            InHand::Taken(job) => self.start(&job.request, auth),
            _ => return None,
        };
        let InHand::Taken(job) = in_hand.take() else {
            return None;
        };
        match started {
            Ok(Ok((response, stream))) => {
                let stream_id = u32::from(stream.stream_id());
                let exchange = Exchange {
                    stream,
                    response,
                    payload: job.request.payload,
                    token_used,
                    timeout: self.opts.response_timeout,
                    conn: self.info.id,
                    stream_id,
                    credit: self.credit.clone(),
                    #[cfg(test)]
                    panic_in_stream,
                };
                // Boxed once here: the in-flight set then moves a pointer, not the whole exchange.
                Some(InFlight {
                    stream: stream_id,
                    work: Box::pin(caught(exchange, job.tag)),
                })
            }
            // A value no header can carry is refused as APNs would, never sent without it.
            Err(rejection) => {
                tracing::warn!(
                    conn = self.info.id,
                    ?rejection,
                    "request not sent: a header value is not valid"
                );
                self.sink
                    .report(job.tag, PushResult::Rejected(rejection), &self.info);
                None
            }
            Ok(Err(e)) => {
                tracing::debug!(conn = self.info.id, error = %e, "stream could not open");
                self.sink.report(
                    job.tag,
                    PushResult::NotSent(not_sent_reason(&e)),
                    &self.info,
                );
                self.give_up(taking, || format!("a stream could not open: {e}"));
                None
            }
        }
    }

    /// Counts a job launched and makes the task panic as [`Dispatcher::panic_at`] asks: at once (with the job in
    /// hand) for [`PanicPlace::Launch`]; for the other places, where the job's stream is to panic.
    #[cfg(test)]
    fn test_panic_at_launch(&mut self) -> Option<PanicPlace> {
        self.launched += 1;
        match self.panic_at {
            Some(PanicAt { job, place }) if job == self.launched => match place {
                PanicPlace::Launch => panic!("a test made the connection's task panic"),
                place => Some(place),
            },
            _ => None,
        }
    }

    /// Makes the task panic as [`Dispatcher::panic_at`] asks for [`PanicPlace::Answer`], at the end of `stream`
    /// (the `job`th job's stream is `2 × job − 1` on a connection whose streams all opened).
    #[cfg(test)]
    fn test_panic_at_answer(&self, stream: u32) {
        if let Some(PanicAt {
            job,
            place: PanicPlace::Answer,
        }) = self.panic_at
            && stream == 2 * job - 1
        {
            panic!("a test made the connection's task panic at an answer");
        }
    }

    /// The task panicked (`message`: what it said) where it was polled, in the loop or in the exchange of one of
    /// its `in_flight` streams (a fault of h2 or of herald): the connection is treated as lost. Logged once, at
    /// error level; the connection stops taking work, its fault naming the panic, so that the pool opens another
    /// on demand; the h2 connection is dropped, so every stream still open ends as on a lost connection and is
    /// reported as such when the loop reads its end: unsent if its request was not written in full,
    /// [`PushResult::Unanswered`] if it was; bodies waiting for flow-control credit come back unsent. The job
    /// held for a PING answer comes back unsent ([`NotSentReason::Closing`], never written), and the job in hand
    /// as [`InHand::lost`] says.
    #[allow(clippy::too_many_arguments)]
    fn panicked(
        &mut self,
        message: &str,
        in_flight: usize,
        broken: &mut bool,
        taking: &mut bool,
        held: &mut Option<Held<T>>,
        in_hand: &mut InHand<T>,
        ping_sent: &mut Option<PingSent>,
    ) {
        if *broken {
            tracing::debug!(
                conn = self.info.id,
                "the connection's task panicked again: {message}"
            );
        } else {
            tracing::error!(conn = self.info.id, host = %self.opts.endpoint.host, remote = %self.info.remote,
                in_flight, "the connection's task panicked: {message}; the connection closes as if lost, and the \
                 notifications it carried are handed back or reported as on a lost connection");
        }
        *broken = true;
        self.give_up(taking, || {
            format!("the connection's task panicked: {message}")
        });
        *ping_sent = None;
        self.credit.close();
        // h2's connection ends its streams as it goes, as when the socket is lost (it tolerates a poisoned lock).
        let driver = self.driver.take();
        if std::panic::catch_unwind(AssertUnwindSafe(move || drop(driver))).is_err() {
            tracing::debug!(
                conn = self.info.id,
                "dropping the h2 connection panicked too"
            );
        }
        if let Some(Held { job, .. }) = held.take() {
            self.sink.report(
                job.tag,
                PushResult::NotSent(NotSentReason::Closing),
                &self.info,
            );
        }
        if let Some((tag, result)) = in_hand.take().lost() {
            self.sink.report(tag, result, &self.info);
        }
    }

    /// Handles what an answer means for the connection itself: turns `result` in place into the result to
    /// report, and returns why the connection should stop taking work, if it should. An answer that shows APNs
    /// processes what the connection carries proves the connection ([`ConnectionState::is_proven`]). Nothing is
    /// taken out of `result` before what replaces it is ready, so a panic here leaves the answer as it came.
    fn on_answer(&self, result: &mut PushResult, token_used: TokenUsed) -> Option<String> {
        match result {
            PushResult::Rejected(rejection @ Rejection::Http { .. })
                if rejection.text() == "ExpiredProviderToken" =>
            {
                // The first report about a token renews it (docs/apns-protocol.md#provider-tokens); the
                // notification can be retried at once if the token in force is no longer the one it carried.
                let renewed = match (&self.opts.auth, token_used) {
                    (Some(cache), Some(token)) => *cache.expired(&token) != *token,
                    _ => false,
                };
                // APNs wedges a connection after this answer (docs/apns-protocol.md#http2-connection); a fresh one gets
                // the new token without tripping TooManyProviderTokenUpdates.
                let cause = format!("{} ExpiredProviderToken", rejection.code());
                let rejection = std::mem::replace(
                    rejection,
                    Rejection::Http {
                        status: 0,
                        reason: String::new(),
                        timestamp_ms: None,
                    },
                );
                *result = PushResult::TokenExpired { rejection, renewed };
                Some(cause)
            }
            // The APNs server is going down: every stream opened on this connection until its GOAWAY would get the
            // same answer. The connection takes no more work, and the pool opens another for what waits (it hands
            // the notification back unsent once, `outbound::pool` in herald).
            PushResult::Rejected(rejection @ Rejection::Http { .. })
                if rejection.text() == "Shutdown" =>
            {
                Some(format!("{} Shutdown", rejection.code()))
            }
            // APNs finds the provider token changed too soon on this connection (it counts from when the connection
            // adopted its last one, and has been seen to answer so to renewals 50 minutes apart): every request on
            // it would be refused the same, while a new connection's first token is never an update
            // (docs/apns-protocol.md#provider-tokens). The connection takes no more work and the pool opens another
            // (it hands the notification back unsent once, `outbound::pool` in herald); the token is not renewed,
            // since nothing is wrong with it.
            PushResult::Rejected(rejection @ Rejection::Http { .. })
                if rejection.text() == "TooManyProviderTokenUpdates" =>
            {
                if self.state.fault().is_none() {
                    tracing::info!(conn = self.info.id, remote = %self.info.remote,
                        "APNs refuses the provider token as updated too often on this connection \
                         (429 TooManyProviderTokenUpdates); the connection takes no more work and a new one takes \
                         the token");
                }
                Some(format!("{} TooManyProviderTokenUpdates", rejection.code()))
            }
            PushResult::NotSent(NotSentReason::ConnectionLost) => {
                Some("the connection was lost".to_owned())
            }
            PushResult::Delivered { .. } => {
                self.state.set_proven();
                None
            }
            PushResult::Rejected(rejection)
                if matches!(
                    rejection.class(),
                    FailureClass::Permanent | FailureClass::InvalidToken
                ) =>
            {
                self.state.set_proven();
                None
            }
            _ => None,
        }
    }

    /// The provider token for the requests started now and its header value (`None`, `None` on a certificate
    /// connection): the token this connection adopted, by the rules of [`ConnectionToken`]. `None` when the
    /// connection may send neither the token it adopted (too near its hour) nor the renewed one (APNs would answer
    /// `TooManyProviderTokenUpdates`, docs/apns-protocol.md#provider-tokens): the connection then stops taking
    /// work, and the pool opens one that adopts the renewed token.
    fn authorization(
        &mut self,
        conn_auth: &mut ConnectionAuth,
        taking: &mut bool,
    ) -> Option<(TokenUsed, Option<HeaderValue>)> {
        let choice = match &self.opts.auth {
            Some(cache) => cache.for_connection(&mut conn_auth.token),
            None => return Some((None, None)),
        };
        let token = match choice {
            TokenChoice::Send(token) => token,
            TokenChoice::Retire {
                adopted_for,
                token_age,
            } => {
                tracing::info!(
                    conn = self.info.id,
                    remote = %self.info.remote,
                    "the provider token was renewed {} s after this connection adopted its own, which is {} s old: \
                     APNs refuses a new token on a connection within 20 minutes of the last and the old one is near \
                     its hour, so the connection takes no more work and closes; the next one takes the new token",
                    adopted_for.as_secs(),
                    token_age.as_secs()
                );
                self.close_ourselves(taking);
                return None;
            }
        };
        let cached = &mut conn_auth.header;
        Some(match cached {
            Some((t, v)) if Arc::ptr_eq(t, &token) => (Some(token), Some(v.clone())),
            _ => {
                let value = HeaderValue::try_from(format!("bearer {token}")).ok();
                if let Some(v) = &value {
                    *cached = Some((token.clone(), v.clone()));
                }
                (Some(token), value)
            }
        })
    }

    /// Sends the request's HEADERS; the body follows in [`exchange`], once flow control lets it go.
    fn start(
        &mut self,
        req: &PushRequest,
        auth: Option<HeaderValue>,
    ) -> Result<Result<(ResponseFuture, SendStream<Bytes>), h2::Error>, Rejection> {
        let request = build_request(&self.authority, req, auth, &mut self.values)?;
        Ok(self.send.send_request(request, false))
    }
}

/// How a GOAWAY reads in the logs and in a connection's fault: its error code and the reason of its debug data
/// (APNs sends `{"reason":"…"}`, or a line of text), escaped and cut to [`MAX_GOAWAY_REASON`] characters.
fn goaway_text(goaway: &GoAwaySeen) -> String {
    let code = h2::Reason::from(goaway.error_code);
    match crate::reason::goaway_reason(&goaway.debug) {
        Some(reason) => {
            let reason: String = reason.escape_debug().take(MAX_GOAWAY_REASON).collect();
            format!("GOAWAY {code:?} ({reason})")
        }
        None => format!("GOAWAY {code:?}"),
    }
}

/// Logs the GOAWAY that ended a connection, with its error code and reason: a warning unless the code is
/// `NO_ERROR` (a server going down or closing an idle connection says so with `NO_ERROR`).
fn log_goaway(info: &ConnectionInfo, goaway: &GoAwaySeen) {
    let text = goaway_text(goaway);
    if goaway.error_code == 0 {
        tracing::info!(conn = info.id, remote = %info.remote, last_stream_id = goaway.last_stream_id,
            "the server ended the connection: {text}");
    } else {
        tracing::warn!(conn = info.id, remote = %info.remote, last_stream_id = goaway.last_stream_id,
            "the server ended the connection: {text}");
    }
}

/// A header value, or the rejection APNs gives for a bad one (`reason`): herald refuses such values at the door,
/// so this guards what could only come from an old spool record.
fn header_value(value: &str, reason: &str) -> Result<HeaderValue, Rejection> {
    HeaderValue::from_str(value).map_err(|_| Rejection::Http {
        status: 400,
        reason: reason.to_owned(),
        timestamp_ms: None,
    })
}

/// Builds the request headers in a stable order, so HPACK indexes the values that repeat (docs/apns-protocol.md#hpack).
/// A value that cannot be sent as given refuses the request; nothing is dropped or changed.
fn build_request(
    authority: &Authority,
    req: &PushRequest,
    auth: Option<HeaderValue>,
    values: &mut ValueCache,
) -> Result<Request<()>, Rejection> {
    let mut path = String::with_capacity(10 + 2 * req.token.len());
    path.push_str("/3/device/");
    req.token.write_hex(&mut path);
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(Scheme::HTTPS);
    parts.authority = Some(authority.clone());
    parts.path_and_query = PathAndQuery::try_from(path).ok();
    let uri = Uri::from_parts(parts).unwrap_or_default();
    let mut request = Request::new(());
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    *request.headers_mut() = values.shared_fields(auth, req)?;
    let headers = request.headers_mut();
    if let Some(collapse) = req.collapse_id.as_deref() {
        headers.insert(
            APNS_COLLAPSE_ID.clone(),
            header_value(collapse, "BadCollapseId")?,
        );
    }
    if let Some(id) = req.apns_id {
        let mut value = HeaderValue::from_bytes(&id.encode()).map_err(|_| Rejection::Http {
            status: 400,
            reason: "BadMessageId".to_owned(),
            timestamp_ms: None,
        })?;
        // A new value on every request: sent as a literal that is never indexed, so it does not push the values
        // that do repeat (the provider token above all) out of APNs' small HPACK table.
        value.set_sensitive(true);
        headers.insert(APNS_ID.clone(), value);
    }
    Ok(request)
}

/// Why a stream that could not open was not processed, as far as its error says ([`not_processed`]): a stream the
/// server refused or left above the last stream id of its GOAWAY was not; any other end says nothing of the kind,
/// and counts as lost with the connection.
fn not_sent_reason(e: &h2::Error) -> NotSentReason {
    if not_processed(e) {
        NotSentReason::Refused
    } else {
        NotSentReason::ConnectionLost
    }
}

/// How a stream ended without an answer, as far as its error says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StreamEnd {
    /// Refused by the server, or left above the last stream id of its GOAWAY ([`not_processed`]): not processed.
    Refused,
    /// Reset with another code (by the server, or by h2 over a fault the server made on this stream): an error of
    /// this stream alone, which says nothing about the connection (RFC 9113 §5.4.2).
    Reset,
    /// The connection failed or closed.
    Lost,
}

fn stream_end(e: &h2::Error) -> StreamEnd {
    if not_processed(e) {
        StreamEnd::Refused
    } else if e.is_reset() {
        StreamEnd::Reset
    } else {
        StreamEnd::Lost
    }
}

/// The words for a connection the server closed without TLS close_notify (after a request was written in full, it
/// is the cause of [`PushResult::Unanswered`], which herald's logs show).
const CLOSED_WITHOUT_CLOSE_NOTIFY: &str =
    "the server closed the connection without a TLS close_notify";

/// Why a stream ended, as the logs and [`PushResult::Unanswered`] say it: the error's own text, except for a
/// connection closed without TLS close_notify, whose text from the TLS library carries a link to its manual.
fn stream_end_cause(e: &h2::Error) -> String {
    match e.get_io().and_then(plain_io_cause) {
        Some(plain) => plain.to_owned(),
        None => e.to_string(),
    }
}

/// Plain words for an I/O error whose own text is written for developers: the end of a TLS stream without
/// close_notify (an `UnexpectedEof` that names it).
fn plain_io_cause(e: &std::io::Error) -> Option<&'static str> {
    let unclean_close =
        e.kind() == std::io::ErrorKind::UnexpectedEof && e.to_string().contains("close_notify");
    unclean_close.then_some(CLOSED_WITHOUT_CLOSE_NOTIFY)
}

/// What one stream ended with, for the dispatcher.
struct Answer<T> {
    tag: T,
    /// The stream's id.
    stream: u32,
    /// The stream's own work panicked, saying this (see [`caught`]).
    panicked: Option<String>,
    result: PushResult,
    token_used: TokenUsed,
    /// Time from the request's last frame to its answer (the timeout, when it timed out); `None` when it was not
    /// answered (never fully written, refused, connection lost).
    rtt: Option<Duration>,
    /// The body was not written in full within the response timeout for want of flow-control credit.
    no_credit: bool,
    /// The stream was reset (a code other than `REFUSED_STREAM`, [`StreamEnd::Reset`]) before any answer.
    reset: bool,
}

/// Writes the body of one request and waits for its answer.
///
/// The body goes out once the stream is open on the wire and flow control has room for it, and the response timeout
/// counts from when its last byte was written: time spent behind an exhausted window is not the server's. (The
/// stream itself opens at once: the dispatcher starts one only while the server's stream limit has room. h2 gives no
/// credit to a stream it holds above the limit, so such a stream would wait for credit below, timed.) Usually the
/// window has room for the whole body at once, and it goes out in one piece. When it has not, the stream hands back
/// whatever part of the window it was given and waits its turn at the connection's `credit` gate (first come, first
/// served): one stream at a time gathers credit, and writes its body as the credit comes, in pieces if the server's
/// window gives it no more at once (a stream window smaller than the body), so no credit is ever held by a stream
/// that cannot use it. (Without the gate, h2 spreads returning credit over every waiting stream in turn; with
/// hundreds of them each would hold part of what its body needs, none could send, and a server that returns window
/// only as it reads would have nothing to read: the connection would stall.)
/// A request whose body was not written in full within the timeout is cancelled and comes back unsent (APNs never
/// had all of it: a request without its last byte is never processed). A stream that ends while its body waits for
/// credit is reported by what ended it: refused or reset (unsent, the connection unharmed), answered early (that
/// answer), or lost with its connection. A request written and not answered within the timeout is cancelled with
/// `RST_STREAM(CANCEL)` before it is reported, so it is never sent again while this stream could still be answered;
/// whether APNs had already accepted it is unknown, and the report says so.
#[allow(clippy::too_many_arguments)]
async fn exchange(
    mut stream: SendStream<Bytes>,
    response: ResponseFuture,
    mut payload: Bytes,
    token_used: TokenUsed,
    timeout: Duration,
    conn: u64,
    stream_id: u32,
    credit: Arc<Semaphore>,
    note: &StreamNote,
) {
    let len = payload.len();
    if len > 0 {
        stream.reserve_capacity(len);
    }
    // The answer is awaited from the start: the server may answer (and end its side of the stream) before the
    // body is written, and such an answer is the outcome whether or not the body ever goes out.
    let mut answer = std::pin::pin!(read_answer(response));
    // Whether the body may still be written: not once the stream stopped waiting for credit because its send side
    // ended or the server answered (see below).
    let mut writable = true;
    let mut early = None;
    // Usually the window has room at once: no timer is armed and the gate is not touched then.
    if len > 0 && stream.capacity() < len {
        #[cfg(test)]
        if note.panic_waiting_for_credit {
            panic!("a test made the stream's task panic while its body waited for credit");
        }
        // Part of the window held while waiting for the rest would be missing from every other stream: it goes
        // back to the connection (to the stream whose turn it is) before this one waits for its own turn.
        stream.reserve_capacity(0);
        // The wait for the turn is not timed: the streams ahead each have their own time for their credit, and the
        // server is not slow while they use it (a connection given up for that would hand back every stream
        // waiting). An answer, or the stream's or connection's end, still ends the wait.
        let turn = tokio::select! {
            biased;
            // A complete answer before the body went out (RFC 9113 §8.1). The server should reset the stream after
            // it; one that does not would otherwise leave the body waiting for credit that never comes.
            read = &mut answer => Err(Credit::Answered(read)),
            turn = credit.acquire() => match turn {
                Ok(turn) => Ok(turn),
                // Closed by a stream that got no credit within its time: the connection is given up.
                Err(_) => Err(Credit::NoTurn),
            },
        };
        let waited = match turn {
            Err(ended) => Ok(ended),
            // The turn ends when this arm does, whatever ends it (the body written, an answer, the stream ended,
            // the timeout, the connection's task dropping the future): the next stream's turn never waits on it.
            Ok(_turn) => {
                let deadline = tokio::time::Instant::now() + timeout;
                let mut gathering = std::pin::pin!(async {
                    // h2 assigns credit to the streams that asked, in order: now only this one asks.
                    stream.reserve_capacity(payload.len());
                    loop {
                        let capacity = stream.capacity();
                        if capacity >= payload.len() {
                            return Credit::Granted;
                        }
                        if capacity > 0 {
                            // What credit there is is used at once (the rest of the body follows as more comes), so the
                            // server reads it and can give the window back. The request is not complete, and not
                            // processed, until its last piece.
                            let piece = payload.split_to(capacity);
                            if stream.send_data(piece, false).is_err() {
                                return Credit::Ended;
                            }
                        }
                        tokio::select! {
                            biased;
                            read = &mut answer => return Credit::Answered(read),
                            capacity = poll_fn(|cx| stream.poll_capacity(cx)) => match capacity {
                                Some(Ok(_)) => {}
                                // h2 has no more credit to give once the stream can no longer send: the server refused it
                                // (`REFUSED_STREAM`, or above the last stream id of its GOAWAY), answered it early and
                                // reset it, or the connection failed.
                                Some(Err(_)) | None => return Credit::Ended,
                            },
                        }
                    }
                });
                match tokio::time::timeout_at(deadline, &mut gathering).await {
                    Ok(got) => Ok(got),
                    // Credit the server gave in time may wait unread when herald itself stalled (see the answer's
                    // timeout below).
                    Err(elapsed) => stall::look_again(&mut gathering, deadline)
                        .await
                        .ok_or(elapsed),
                }
            }
        };
        match waited {
            Ok(Credit::Granted) => {}
            Ok(Credit::Answered(read)) => {
                if read.is_ok() {
                    // The body will not be written: the stream is closed on this side too (the server may not
                    // have reset it), so it no longer counts against the server's stream limit.
                    stream.send_reset(h2::Reason::CANCEL);
                }
                tracing::debug!(
                    conn,
                    stream = stream_id,
                    answered = read.is_ok(),
                    "stream ended or answered while its body waited for flow-control credit"
                );
                writable = false;
                early = Some(read);
            }
            Ok(Credit::Ended) => {
                // What ended the stream is read below with its answer: a refusal is unsent and leaves the
                // connection alone, an early answer is the outcome, and only a connection really lost before the
                // body left counts as a loss (docs/apns-protocol.md#http2-connection).
                tracing::debug!(
                    conn,
                    stream = stream_id,
                    "stream ended while its body waited for flow-control credit; reading the answer"
                );
                writable = false;
            }
            Ok(Credit::NoTurn) => {
                stream.send_reset(h2::Reason::CANCEL);
                tracing::debug!(
                    conn,
                    stream = stream_id,
                    "the connection got no flow-control credit for a body ahead of this one; stream cancelled"
                );
                note.keep(Answer {
                    tag: (),
                    stream: stream_id,
                    panicked: None,
                    result: PushResult::NotSent(NotSentReason::ConnectionLost),
                    token_used: None,
                    rtt: None,
                    no_credit: false,
                    reset: false,
                });
                return;
            }
            Err(_) => {
                // No stream behind this one waits for a turn that would get no more credit than it did: they all
                // come back unsent at once, and the connection is given up (`no_credit`).
                credit.close();
                stream.send_reset(h2::Reason::CANCEL);
                tracing::debug!(
                    conn,
                    stream = stream_id,
                    "request body not written in full within {timeout:?}: no flow-control credit for it; \
                     stream cancelled"
                );
                note.keep(Answer {
                    tag: (),
                    stream: stream_id,
                    panicked: None,
                    result: PushResult::NotSent(NotSentReason::ConnectionLost),
                    token_used: None,
                    rtt: None,
                    no_credit: true,
                    reset: false,
                });
                return;
            }
        }
    }
    // The server may answer, and close the stream, before the body is written (a refusal of the headers, under
    // load on either side): that answer is the outcome, so it is read whether or not the body went out. A stream
    // reset or a lost connection fails the read with the same cause.
    // Noted before the last byte is handed to h2: should anything panic from here on, APNs may have had the
    // whole request.
    let sent = writable && {
        note.written.store(true, Ordering::Release);
        match stream.send_data(payload, true) {
            Ok(()) => true,
            Err(e) => {
                note.written.store(false, Ordering::Release);
                tracing::debug!(conn, "request body not written ({e}); reading the answer");
                false
            }
        }
    };
    let written = Instant::now();
    // The deadline from the clock read just taken (a plain `timeout` would read the clock again).
    let deadline = tokio::time::Instant::from_std(written + timeout);
    let read = match early {
        Some(read) => Ok(read),
        None => match tokio::time::timeout_at(deadline, &mut answer).await {
            Ok(read) => Ok(read),
            // The deadline passed: an answer that came in time may still wait unread in the socket when herald
            // itself stalled, so it is looked for once more before the stream counts as timed out.
            Err(elapsed) => stall::look_again(&mut answer, deadline)
                .await
                .ok_or(elapsed),
        },
    };
    let mut reset = false;
    let result = match read {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => match stream_end(&e) {
            // Refused by the server (REFUSED_STREAM, or above the last stream id of its GOAWAY): not processed.
            StreamEnd::Refused => PushResult::NotSent(NotSentReason::Refused),
            // The whole request went out and the stream ended without an answer (the connection lost, the stream
            // reset): APNs may have processed it (RFC 9113 §6.8), so, as after a timeout, the outcome is unknown.
            end if sent => {
                reset = end == StreamEnd::Reset;
                let cause = stream_end_cause(&e);
                tracing::info!(
                    conn,
                    stream = stream_id,
                    "stream ended without an answer after the request was sent ({cause}); APNs may have accepted it"
                );
                PushResult::Unanswered {
                    stream: CancelledStream {
                        connection: conn,
                        stream: stream_id,
                    },
                    cause,
                }
            }
            // Reset before its last byte went out: APNs never had the request in full, so never processed it. A
            // reset is an error of this stream alone (RFC 9113 §5.4.2): the connection goes on, and the
            // notification goes out again at once, as after a refusal.
            StreamEnd::Reset => {
                reset = true;
                tracing::debug!(
                    conn,
                    stream = stream_id,
                    "stream reset before the request was written in full ({e}); not processed"
                );
                PushResult::NotSent(NotSentReason::Refused)
            }
            StreamEnd::Lost => PushResult::NotSent(NotSentReason::ConnectionLost),
        },
        Err(_) => {
            stream.send_reset(h2::Reason::CANCEL);
            tracing::info!(
                conn,
                stream = stream_id,
                "no answer within {} ms: stream cancelled (RST_STREAM CANCEL); APNs may have accepted it",
                timeout.as_millis()
            );
            PushResult::TimedOut {
                cancelled: Some(CancelledStream {
                    connection: conn,
                    stream: stream_id,
                }),
            }
        }
    };
    // Only what went through the server's delivery path says how fast it is: a delivery, a timeout, or the
    // server's own trouble (5xx, 429). A rejection of the request itself (a bad token, a bad header: 4xx) is often
    // answered at once, and counted it would make every delivery look like queueing; a refused stream or a lost
    // connection says nothing either.
    let timed = match &result {
        PushResult::Delivered { .. } | PushResult::TimedOut { .. } => true,
        PushResult::Rejected(Rejection::Http { status, .. }) => *status >= 500 || *status == 429,
        _ => false,
    };
    // A body never written in full has no last frame to time the answer from.
    let rtt = (sent && timed).then(|| written.elapsed());
    // Kept before the stream's handles are dropped (as this returns): dropping them may panic.
    note.keep(Answer {
        tag: (),
        stream: stream_id,
        panicked: None,
        result,
        token_used,
        rtt,
        no_credit: false,
        reset,
    });
}

/// What a stream's exchange ([`exchange`]) leaves for [`caught`], outside the exchange itself: whether its request
/// may have gone out in full, and how it ended, kept as soon as that is known (before the stream's h2 handles are
/// dropped). A panic after that leaves the answer to be reported as it came.
#[derive(Default)]
struct StreamNote {
    /// Set just before the request's last byte is handed to h2 (and cleared if h2 did not take it): from then on
    /// APNs may have the whole request.
    written: AtomicBool,
    /// How the exchange ended.
    ended: std::sync::Mutex<Option<Answer<()>>>,
    /// Makes the exchange panic when its body has to wait for flow-control credit (tests of what follows a panic).
    #[cfg(test)]
    panic_waiting_for_credit: bool,
}

impl StreamNote {
    fn keep(&self, answer: Answer<()>) {
        *self.ended.lock().unwrap_or_else(PoisonError::into_inner) = Some(answer);
    }
}

/// A stream's exchange ([`exchange`]) not yet started: [`caught`] starts it with the note it keeps for it.
struct Exchange {
    stream: SendStream<Bytes>,
    response: ResponseFuture,
    payload: Bytes,
    token_used: TokenUsed,
    timeout: Duration,
    conn: u64,
    stream_id: u32,
    credit: Arc<Semaphore>,
    /// Where a test makes the stream's work panic.
    #[cfg(test)]
    panic_in_stream: Option<PanicPlace>,
}

/// The exchange of a stream (started here from `ex`; it leaves its end in a note this future holds alongside it,
/// with no allocation of its own), with its job's tag kept outside it: a panic of the exchange (a fault of h2 or of
/// herald) is caught where it is polled, and the exchange is dropped inside a catch as well, as soon as it has ended
/// or panicked (dropping an h2 handle after h2's lock was poisoned by a panic panics again). The job is then reported
/// with what the note holds: the answer, when it was read before the panic; else [`PushResult::Unanswered`] if its
/// request may have gone out in full, as when a connection is lost, and [`PushResult::NotSent`] if not. The panic's
/// message goes with it, for the dispatcher to treat the connection as lost ([`Dispatcher::panicked`]). The catches
/// cost nothing while nothing panics.
async fn caught<T>(ex: Exchange, tag: T) -> Answer<T> {
    let (conn, stream) = (ex.conn, ex.stream_id);
    // The note lives in the same future as the exchange that borrows it: no allocation of its own.
    #[cfg(test)]
    let note = StreamNote {
        panic_waiting_for_credit: ex.panic_in_stream == Some(PanicPlace::CreditWait),
        ..StreamNote::default()
    };
    #[cfg(not(test))]
    let note = StreamNote::default();
    let panicked = {
        #[cfg(test)]
        let panic_in_stream = ex.panic_in_stream;
        let work = exchange(
            ex.stream,
            ex.response,
            ex.payload,
            ex.token_used,
            ex.timeout,
            conn,
            stream,
            ex.credit,
            &note,
        );
        #[cfg(test)]
        let work = tests::PanicsOnDrop::new(
            async move {
                work.await;
                if panic_in_stream == Some(PanicPlace::Stream) {
                    panic!("a test made the stream's task panic");
                }
            },
            panic_in_stream == Some(PanicPlace::Drop),
        );
        caught_work(work).await
    };
    let ended = note
        .ended
        .into_inner()
        .unwrap_or_else(PoisonError::into_inner);
    finish(
        ended,
        note.written.into_inner(),
        panicked,
        tag,
        conn,
        stream,
    )
}

/// Polls `work` to its end inside a catch, then drops it inside one: the panic's message, if it panicked.
async fn caught_work(work: impl std::future::Future<Output = ()>) -> Option<String> {
    let mut work = std::pin::pin!(Some(work));
    let mut panicked = poll_fn(|cx| {
        let polled =
            std::panic::catch_unwind(AssertUnwindSafe(|| match work.as_mut().as_pin_mut() {
                Some(work) => work.poll(cx),
                None => Poll::Ready(()),
            }));
        match polled {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(())) => Poll::Ready(None),
            Err(panic) => Poll::Ready(Some(panic_message(&*panic))),
        }
    })
    .await;
    if let Err(panic) = std::panic::catch_unwind(AssertUnwindSafe(|| work.set(None))) {
        panicked.get_or_insert_with(|| panic_message(&*panic));
    }
    panicked
}

/// The stream's report, from what its note held once its work was dropped (see [`caught`]).
fn finish<T>(
    ended: Option<Answer<()>>,
    written: bool,
    panicked: Option<String>,
    tag: T,
    conn: u64,
    stream: u32,
) -> Answer<T> {
    if let Some(answer) = ended {
        return Answer {
            tag,
            stream: answer.stream,
            panicked,
            result: answer.result,
            token_used: answer.token_used,
            rtt: answer.rtt,
            no_credit: answer.no_credit,
            reset: answer.reset,
        };
    }
    // Not reached without a panic: the exchange keeps its end before it returns.
    let message =
        panicked.unwrap_or_else(|| "the stream's exchange ended without its answer".to_owned());
    let result = if written {
        PushResult::Unanswered {
            stream: CancelledStream {
                connection: conn,
                stream,
            },
            cause: format!("the connection's task panicked: {message}"),
        }
    } else {
        PushResult::NotSent(NotSentReason::ConnectionLost)
    };
    Answer {
        tag,
        stream,
        result,
        panicked: Some(message),
        token_used: None,
        rtt: None,
        no_credit: false,
        reset: false,
    }
}

/// How the wait for a request body's flow-control credit ended (within the response timeout).
enum Credit {
    /// The window has room for the whole body, or for what is left of it once the rest went out in pieces.
    Granted,
    /// The server answered first: the answer, or why it could not be read.
    Answered(Result<PushResult, h2::Error>),
    /// The stream can no longer send (refused, reset, or its connection failed).
    Ended,
    /// The connection gave up waiting for credit (a stream ahead got none within the response timeout): no turn
    /// comes, and the body never went out.
    NoTurn,
}

async fn read_answer(response: ResponseFuture) -> Result<PushResult, h2::Error> {
    let response = response.await?;
    let status = response.status().as_u16();
    // An answer carries one or two headers: a pass over them costs less than a hashed lookup per name.
    let (mut apns_id, mut unique_id) = (None, None);
    for (name, value) in response.headers() {
        let slot = if *name == APNS_ID {
            &mut apns_id
        } else if *name == APNS_UNIQUE_ID {
            &mut unique_id
        } else {
            continue;
        };
        if slot.is_none() {
            *slot = value.to_str().ok().map(str::to_owned);
        }
    }
    if status == 200 {
        return Ok(PushResult::Delivered {
            transaction_id: apns_id,
            unique_id,
        });
    }
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if bytes.len() + chunk.len() > MAX_ERROR_BODY {
            break;
        }
        bytes.extend_from_slice(&chunk);
    }
    // `reason` and `timestamp` are read each on its own: a body whose `reason` cannot be read is kept as text for
    // the reason, and a 410's time is kept whatever else the body holds (docs/apns-protocol.md#http2-response).
    let fields = read_error_body(&bytes);
    let reason = fields
        .reason
        .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_owned());
    // An answer with a status alone (no body, or only blanks) still says what it was, in the logs and in a
    // notification's last error.
    let reason = if reason.is_empty() {
        format!("HTTP {status} without a reason")
    } else {
        reason
    };
    Ok(PushResult::Rejected(Rejection::Http {
        status,
        reason,
        timestamp_ms: fields.timestamp,
    }))
}

#[cfg(test)]
pub(crate) mod tests {
    //! The request headers as they go on the wire: what HPACK makes of them on one connection
    //! (docs/apns-protocol.md#hpack).

    use super::*;
    use crate::client::Job;
    use crate::client::test_sink::Results;
    use crate::push::ApnsId;
    use crate::token_hex::DeviceToken;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A connection the server closed without TLS close_notify is said plainly, without the link to rustls's manual
    /// that its error text carries (it reached the logs as the cause of an unanswered stream); other I/O errors
    /// keep their own text.
    #[test]
    fn a_close_without_close_notify_is_said_plainly() {
        let rustls_eof = std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "peer closed connection without sending TLS close_notify: \
             https://docs.rs/rustls/latest/rustls/manual/_03_howto/index.html#unexpected-eof",
        );
        let cause = plain_io_cause(&rustls_eof).unwrap();
        assert_eq!(
            cause,
            "the server closed the connection without a TLS close_notify"
        );
        assert!(!cause.contains("https://"), "{cause}");
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(plain_io_cause(&reset), None);
        let other_eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "early eof");
        assert_eq!(plain_io_cause(&other_eof), None);
        // An error of h2's own (no I/O inside) keeps its text.
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert_eq!(stream_end_cause(&refused), refused.to_string());
    }

    /// Feeds answers taking `rtts` (ms), all sent at once, to a limit and its ramp proof, and says after each
    /// whether the connection shows itself ramping up.
    fn ramping_after(rtts: &[u64]) -> Vec<bool> {
        let start = Instant::now();
        let mut limiter = AdaptiveLimit::new(Duration::from_secs(5), start);
        limiter.set_max(1000);
        let mut ramp = RampProof::new(limiter.limit());
        rtts.iter()
            .map(|&ms| {
                let rtt = Duration::from_millis(ms);
                limiter.on_sample(rtt, limiter.limit(), start + rtt);
                ramp.on_sample(rtt, limiter.target());
                ramp.ramping(&limiter)
            })
            .collect()
    }

    /// A server that queues requests first in first out, 20 a second: the first answer at once, each next 50 ms
    /// later. Slow start lasts until a window of answers averages slow, but the connection never shows itself
    /// ramping up, so a backlog opens no connection into the queue. A server that answers a whole round within its
    /// usual time (500 ms each) shows it once the round is in, and no longer after an answer came slow.
    #[test]
    fn only_a_full_round_of_fast_answers_shows_a_ramp() {
        let fifo: Vec<u64> = (0..40).map(|k| 1 + 50 * k).collect();
        assert!(ramping_after(&fifo).iter().all(|r| !r), "{fifo:?}");
        let round = crate::client::limit::INITIAL_LIMIT;
        let steady = ramping_after(&vec![500; round + 5]);
        assert!(steady[..round - 1].iter().all(|r| !r), "{steady:?}");
        assert!(steady[round - 1..].iter().all(|r| *r), "{steady:?}");
        let mut one_slow = vec![500; round + 5];
        one_slow[round] = 1500;
        let after = ramping_after(&one_slow);
        assert!(
            after[round - 1] && after[round..].iter().all(|r| !r),
            "{after:?}"
        );
    }

    /// A stream's work for tests: `work`, kept after it has ended (as a future holding h2 stream handles keeps
    /// them), whose drop panics when `armed` unless a panic is already unwinding, as h2's stream handles do once
    /// its lock is poisoned.
    pub(super) struct PanicsOnDrop<F> {
        work: Pin<Box<F>>,
        armed: bool,
    }

    impl<F> PanicsOnDrop<F> {
        pub(super) fn new(work: F, armed: bool) -> Self {
            PanicsOnDrop {
                work: Box::pin(work),
                armed,
            }
        }
    }

    impl<F: std::future::Future> std::future::Future for PanicsOnDrop<F> {
        type Output = F::Output;

        fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
            self.work.as_mut().poll(cx)
        }
    }

    impl<F> Drop for PanicsOnDrop<F> {
        fn drop(&mut self) {
            if self.armed && !std::thread::panicking() {
                panic!("a test made dropping the stream's work panic");
            }
        }
    }

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    const HEADERS: u8 = 0x1;
    const SETTINGS: u8 = 0x4;

    /// One frame a test server read: its type, flags, stream and payload.
    struct Frame {
        kind: u8,
        flags: u8,
        stream: u32,
        payload: Vec<u8>,
    }

    /// Reads the next frame; `None` once the connection ended.
    async fn read_frame<R: tokio::io::AsyncRead + Unpin>(sock: &mut R) -> Option<Frame> {
        let mut head = [0u8; 9];
        sock.read_exact(&mut head).await.ok()?;
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        let mut payload = vec![0u8; len];
        sock.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            kind: head[3],
            flags: head[4],
            stream: u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    fn request(n: u8) -> PushRequest {
        let mut id = [0u8; 16];
        id[0] = n;
        PushRequest {
            token: DeviceToken::from_bytes(vec![0xab; 32]).unwrap(),
            topic: Some(Arc::from("com.example.app")),
            push_type: Some(PushType::Alert),
            priority: None,
            expiration: None,
            collapse_id: None,
            apns_id: Some(ApnsId::from_bytes(id)),
            payload: Bytes::from_static(b"{}"),
        }
    }

    /// Reads frames until `count` HEADERS frames came, answering the client's SETTINGS; returns the header
    /// blocks' sizes in order.
    async fn header_block_sizes(mut sock: TcpStream, count: usize) -> Vec<usize> {
        let mut preface = [0u8; 24];
        sock.read_exact(&mut preface).await.unwrap();
        assert_eq!(preface, PREFACE);
        sock.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        let mut sizes = Vec::new();
        while sizes.len() < count {
            let f = read_frame(&mut sock).await.expect("a frame");
            match f.kind {
                SETTINGS if f.flags & 1 == 0 => {
                    sock.write_all(&[0, 0, 0, SETTINGS, 1, 0, 0, 0, 0])
                        .await
                        .unwrap();
                }
                HEADERS => sizes.push(f.payload.len()),
                _ => {}
            }
        }
        sizes
    }

    /// A provider token is about 250 bytes and the same on every request of a connection: it goes into the HPACK
    /// table with the first request and is a one-byte index afterwards, while the apns-id, new every time, is
    /// never indexed and so cannot push it out.
    #[tokio::test]
    async fn the_provider_token_is_sent_once_per_connection_and_then_indexed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            header_block_sizes(sock, 60).await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let (mut send, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(conn);
        let authority = Authority::from_static("api.push.apple.com");
        let jwt = format!("bearer {}", "j".repeat(240));
        let mut streams = Vec::new();
        for n in 0..60 {
            let auth = HeaderValue::from_str(&jwt).unwrap();
            let req = build_request(
                &authority,
                &request(n),
                Some(auth),
                &mut ValueCache::default(),
            )
            .unwrap();
            send = send.ready().await.unwrap();
            streams.push(send.send_request(req, true).unwrap());
        }
        let sizes = server.await.unwrap();
        // The first block carries the token (Huffman-coded, about 180 bytes); every later one is smaller by about
        // that much, including after 59 distinct apns-ids.
        assert!(sizes[0] > 200, "{sizes:?}");
        for (n, size) in sizes.iter().enumerate().skip(1) {
            assert!(
                *size < 100,
                "request {n}: header block of {size} bytes: {sizes:?}"
            );
        }
    }

    /// The headers of `req` as (name, value) text pairs, in the order they are sent.
    fn header_pairs(req: &Request<()>) -> Vec<(String, String)> {
        req.headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn requests_share_the_repeated_headers_and_any_change_rebuilds_them() {
        let authority = Authority::from_static("api.push.apple.com");
        let auth = |t: &str| Some(HeaderValue::from_str(&format!("bearer {t}")).unwrap());
        let mut values = ValueCache::default();
        let mut base = request(1);
        base.priority = Some(Priority::Conserve);
        base.expiration = Some(1_700_000_000);
        let first = build_request(&authority, &base, auth("a"), &mut values).unwrap();
        let expected = |auth: &str, topic: &str, push: &str, prio: &str, exp: &str, id: u8| {
            let mut id_bytes = [0u8; 16];
            id_bytes[0] = id;
            let apns_id =
                String::from_utf8(ApnsId::from_bytes(id_bytes).encode().to_vec()).unwrap();
            [
                ("authorization", format!("bearer {auth}")),
                ("apns-topic", topic.to_owned()),
                ("apns-push-type", push.to_owned()),
                ("apns-priority", prio.to_owned()),
                ("apns-expiration", exp.to_owned()),
                ("apns-id", apns_id),
            ]
            .into_iter()
            .map(|(n, v)| (n.to_owned(), v))
            .collect::<Vec<_>>()
        };
        assert_eq!(
            header_pairs(&first),
            expected("a", "com.example.app", "alert", "5", "1700000000", 1)
        );
        // The same shared fields with another apns-id and token: the map is reused, the new id is the request's own.
        let mut next = request(2);
        next.token = DeviceToken::from_bytes(vec![0xcd; 32]).unwrap();
        next.priority = base.priority;
        next.expiration = base.expiration;
        let second = build_request(&authority, &next, auth("a"), &mut values).unwrap();
        assert_eq!(
            header_pairs(&second),
            expected("a", "com.example.app", "alert", "5", "1700000000", 2)
        );
        assert!(second.uri().path().ends_with(&"cd".repeat(32)));
        // Each shared field, changed alone, is sent as changed.
        let mut changed = next.clone();
        changed.topic = Some(Arc::from("com.example.other"));
        let r = build_request(&authority, &changed, auth("a"), &mut values).unwrap();
        assert_eq!(header_pairs(&r)[1].1, "com.example.other");
        let r = build_request(&authority, &next, auth("b"), &mut values).unwrap();
        assert_eq!(header_pairs(&r)[0].1, "bearer b");
        let mut changed = next.clone();
        changed.push_type = Some(PushType::Background);
        let r = build_request(&authority, &changed, auth("b"), &mut values).unwrap();
        assert_eq!(header_pairs(&r)[2].1, "background");
        changed.priority = Some(Priority::Immediate);
        let r = build_request(&authority, &changed, auth("b"), &mut values).unwrap();
        assert_eq!(header_pairs(&r)[3].1, "10");
        changed.expiration = Some(0);
        let r = build_request(&authority, &changed, auth("b"), &mut values).unwrap();
        assert_eq!(header_pairs(&r)[4].1, "0");
        // Fields left out are left out, and a collapse id comes after the shared ones.
        changed.expiration = None;
        changed.priority = None;
        changed.collapse_id = Some(Arc::from("group"));
        let r = build_request(&authority, &changed, None, &mut values).unwrap();
        let names: Vec<String> = header_pairs(&r).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "apns-topic",
                "apns-push-type",
                "apns-collapse-id",
                "apns-id"
            ]
        );
    }

    #[test]
    fn repeated_topics_and_expirations_reuse_one_header_value() {
        let mut values = ValueCache::default();
        let topic: Arc<str> = Arc::from("com.example.app");
        let first = values.topic(&topic).unwrap();
        // An equal topic in another allocation (a notification restored from the spool) reuses it too.
        let again = values.topic(&Arc::from("com.example.app")).unwrap();
        assert_eq!(first, again);
        let other = values.topic(&Arc::from("com.example.other")).unwrap();
        assert_eq!(other, "com.example.other");
        assert_eq!(values.topic(&topic).unwrap(), "com.example.app");
        assert!(values.topic(&Arc::from("bad\ntopic")).is_err());
        assert_eq!(values.expiration(1_700_000_000), "1700000000");
        assert_eq!(values.expiration(1_700_000_000), "1700000000");
        assert_eq!(values.expiration(0), "0");
    }

    /// What the frame-level server below saw.
    #[derive(Debug, PartialEq)]
    enum Seen {
        Ping,
        Headers(u32),
    }

    /// A server that answers the first request with 200 and then answers nothing, not even a PING: a peer gone
    /// silent. Tells what it sees.
    async fn silent_after_first(
        mut sock: TcpStream,
        seen: tokio::sync::mpsc::UnboundedSender<Seen>,
    ) {
        let mut preface = [0u8; 24];
        sock.read_exact(&mut preface).await.unwrap();
        sock.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        let mut answered = false;
        loop {
            let Some(f) = read_frame(&mut sock).await else {
                return;
            };
            const DATA: u8 = 0x0;
            const PING: u8 = 0x6;
            match f.kind {
                SETTINGS if f.flags & 1 == 0 => {
                    sock.write_all(&[0, 0, 0, SETTINGS, 1, 0, 0, 0, 0])
                        .await
                        .unwrap();
                }
                HEADERS => {
                    let _ = seen.send(Seen::Headers(f.stream));
                }
                // The end of the first request's body: `:status 200` (static table index 8), ending the stream.
                DATA if f.flags & 1 == 1 && !answered => {
                    answered = true;
                    let s = f.stream.to_be_bytes();
                    sock.write_all(&[0, 0, 1, HEADERS, 0x5, s[0], s[1], s[2], s[3], 0x88])
                        .await
                        .unwrap();
                }
                PING if f.flags & 1 == 0 => {
                    let _ = seen.send(Seen::Ping);
                }
                _ => {}
            }
        }
    }

    /// A connection's dispatcher against [`silent_after_first`], with what the test drives it by.
    struct SilentPeer {
        jobs: async_channel::Sender<Job<u32>>,
        results: Arc<Results>,
        state: Arc<ConnectionState>,
        seen: tokio::sync::mpsc::UnboundedReceiver<Seen>,
        run: tokio::task::JoinHandle<()>,
    }

    async fn silent_peer(response_timeout: Duration, keepalive: Duration) -> SilentPeer {
        silent_peer_liveness(response_timeout, keepalive, LIVENESS_THRESHOLD).await
    }

    /// [`silent_peer`], checking the peer before work after `liveness` without a word from it.
    async fn silent_peer_liveness(
        response_timeout: Duration,
        keepalive: Duration,
        liveness: Duration,
    ) -> SilentPeer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            silent_after_first(sock, seen_tx).await;
        });
        let opts = test_opts(addr, response_timeout, keepalive);
        let conn = test_conn_liveness(addr, opts, [], liveness).await;
        SilentPeer {
            jobs: conn.jobs,
            results: conn.results,
            state: conn.state,
            seen,
            run: conn.run,
        }
    }

    /// A connection's dispatcher driven by a test.
    struct TestConn {
        jobs: async_channel::Sender<Job<u32>>,
        results: Arc<Results>,
        state: Arc<ConnectionState>,
        run: tokio::task::JoinHandle<()>,
    }

    /// A dispatcher on a connection to `addr`, with the jobs `queued` waiting in its queue when it starts (so that
    /// it takes them in one turn).
    async fn test_conn(
        addr: std::net::SocketAddr,
        response_timeout: Duration,
        keepalive: Duration,
        queued: &[u32],
    ) -> TestConn {
        let jobs = queued.iter().map(|&tag| Job {
            request: request(tag as u8),
            tag,
        });
        test_conn_with(addr, test_opts(addr, response_timeout, keepalive), jobs).await
    }

    /// The options of [`test_conn`]: no idle timeout.
    fn test_opts(
        addr: std::net::SocketAddr,
        response_timeout: Duration,
        keepalive: Duration,
    ) -> Http2Options {
        Http2Options {
            endpoint: Endpoint::new("127.0.0.1", addr.port()),
            tls: crate::identity::client_config(None, crate::identity::RootSource::NoVerify, true)
                .unwrap(),
            auth: None,
            connect_timeout: Duration::from_secs(1),
            response_timeout,
            idle_timeout: None,
            keepalive,
        }
    }

    /// [`test_conn`] with the given options and jobs.
    async fn test_conn_with(
        addr: std::net::SocketAddr,
        opts: Http2Options,
        queued: impl IntoIterator<Item = Job<u32>>,
    ) -> TestConn {
        test_conn_liveness(addr, opts, queued, LIVENESS_THRESHOLD).await
    }

    /// [`test_conn_with`], checking the peer before work after `liveness` without a word from it.
    async fn test_conn_liveness(
        addr: std::net::SocketAddr,
        opts: Http2Options,
        queued: impl IntoIterator<Item = Job<u32>>,
        liveness: Duration,
    ) -> TestConn {
        test_conn_starting_at(addr, opts, queued, liveness, None).await
    }

    /// [`test_conn_liveness`], with the adaptive limit starting at `start_limit` streams when given.
    async fn test_conn_starting_at(
        addr: std::net::SocketAddr,
        opts: Http2Options,
        queued: impl IntoIterator<Item = Job<u32>>,
        liveness: Duration,
        start_limit: Option<usize>,
    ) -> TestConn {
        let (jobs_tx, jobs) = async_channel::unbounded();
        for job in queued {
            jobs_tx.send(job).await.unwrap();
        }
        let results = Arc::new(Results::default());
        let (dispatcher, state) = test_dispatcher(
            addr,
            Arc::new(opts),
            jobs,
            results.clone(),
            liveness,
            start_limit,
        )
        .await;
        TestConn {
            jobs: jobs_tx,
            results,
            state,
            run: tokio::spawn(dispatcher.run()),
        }
    }

    /// A dispatcher on a new connection to `addr`, taking `jobs` and reporting to `results`, and its state.
    async fn test_dispatcher(
        addr: std::net::SocketAddr,
        opts: Arc<Http2Options>,
        jobs: JobReceiver<u32>,
        results: Arc<Results>,
        liveness: Duration,
        start_limit: Option<usize>,
    ) -> (Dispatcher<u32>, Arc<ConnectionState>) {
        let tcp = TcpStream::connect(addr).await.unwrap();
        // As `open` does: the server's SETTINGS are in before the first request.
        let (send, ping, driver, watch) = handshake(tcp, &opts).await.unwrap();
        let state = ConnectionState::unsettled(1);
        let dispatcher = Dispatcher {
            opts,
            authority: Authority::from_static("api.push.apple.com"),
            send,
            ping,
            driver: Some(driver),
            jobs,
            sink: results,
            state: state.clone(),
            info: ConnectionInfo {
                remote: addr,
                id: 1,
            },
            values: ValueCache::default(),
            start_limit,
            watch,
            liveness,
            closed_by_us: None,
            credit: Arc::new(Semaphore::new(1)),
            panic_at: None,
            launched: 0,
        };
        (dispatcher, state)
    }

    /// A server that reads `requests` whole requests, answers none, and then sends GOAWAY with `last_stream_id`
    /// (`None`: the last stream it got) and closes the connection.
    async fn goaway_then_close(mut sock: TcpStream, requests: usize, last_stream_id: Option<u32>) {
        let mut preface = [0u8; 24];
        sock.read_exact(&mut preface).await.unwrap();
        sock.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        let (mut complete, mut last) = (0, 0);
        while complete < requests {
            let f = read_frame(&mut sock).await.expect("a frame");
            const DATA: u8 = 0x0;
            match f.kind {
                SETTINGS if f.flags & 1 == 0 => {
                    sock.write_all(&[0, 0, 0, SETTINGS, 1, 0, 0, 0, 0])
                        .await
                        .unwrap();
                }
                DATA if f.flags & 1 == 1 => {
                    complete += 1;
                    last = last.max(f.stream);
                }
                _ => {}
            }
        }
        const GOAWAY: u8 = 0x7;
        let l = last_stream_id.unwrap_or(last).to_be_bytes();
        sock.write_all(&[
            0, 0, 8, GOAWAY, 0, 0, 0, 0, 0, l[0], l[1], l[2], l[3], 0, 0, 0, 0,
        ])
        .await
        .unwrap();
        sock.flush().await.unwrap();
        drop(sock);
    }

    /// Results of two requests sent at once to [`goaway_then_close`].
    async fn goaway_then_close_results(last_stream_id: Option<u32>) -> Vec<(u32, PushResult)> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            goaway_then_close(sock, 2, last_stream_id).await;
        });
        let conn = test_conn(
            addr,
            Duration::from_secs(10),
            Duration::from_secs(30),
            &[1, 2],
        )
        .await;
        let mut results = conn.results.wait_for(2).await;
        tokio::time::timeout(Duration::from_secs(20), conn.run)
            .await
            .expect("the connection ends")
            .unwrap();
        results.sort_by_key(|(tag, _)| *tag);
        results
    }

    /// A server that reads `count` request HEADERS (or whole requests, with `whole`), then breaks the protocol (a
    /// DATA frame on stream 0, to which h2 answers with a GOAWAY of its own) and reads until the client closes.
    /// With `no_window` it grants no flow-control window, so no request body can be written.
    async fn protocol_error_after(mut sock: TcpStream, count: usize, whole: bool, no_window: bool) {
        let mut preface = [0u8; 24];
        sock.read_exact(&mut preface).await.unwrap();
        if no_window {
            // SETTINGS_INITIAL_WINDOW_SIZE = 0.
            sock.write_all(&[0, 0, 6, SETTINGS, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0])
                .await
                .unwrap();
        } else {
            sock.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
                .await
                .unwrap();
        }
        const DATA: u8 = 0x0;
        let mut seen = 0;
        loop {
            let Some(f) = read_frame(&mut sock).await else {
                return;
            };
            let counted = match f.kind {
                SETTINGS if f.flags & 1 == 0 => {
                    sock.write_all(&[0, 0, 0, SETTINGS, 1, 0, 0, 0, 0])
                        .await
                        .unwrap();
                    false
                }
                HEADERS => !whole,
                DATA => whole && f.flags & 1 == 1,
                _ => false,
            };
            if counted {
                seen += 1;
                if seen == count {
                    sock.write_all(&[0, 0, 0, DATA, 0, 0, 0, 0, 0])
                        .await
                        .unwrap();
                }
            }
        }
    }

    async fn protocol_error_results(whole: bool, no_window: bool) -> Vec<(u32, PushResult)> {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            protocol_error_after(sock, 2, whole, no_window).await;
        });
        let conn = test_conn(
            addr,
            Duration::from_secs(10),
            Duration::from_secs(30),
            &[1, 2],
        )
        .await;
        let mut results = conn.results.wait_for(2).await;
        tokio::time::timeout(Duration::from_secs(20), conn.run)
            .await
            .expect("the connection ends")
            .unwrap();
        results.sort_by_key(|(tag, _)| *tag);
        results
    }

    /// A GOAWAY h2 raises itself (the server broke the protocol) is no word from the server that it left streams
    /// unprocessed: requests written in full end unanswered (outcome unknown), and those whose body never went out
    /// come back as lost with the connection (counted towards the loss cap), never as refused.
    #[tokio::test]
    async fn a_goaway_raised_by_h2_itself_does_not_make_streams_refused() {
        let results = protocol_error_results(true, false).await;
        assert!(
            results
                .iter()
                .all(|(_, r)| matches!(r, PushResult::Unanswered { .. })),
            "{results:?}"
        );
        let results = protocol_error_results(false, true).await;
        assert!(
            results
                .iter()
                .all(|(_, r)| *r == PushResult::NotSent(NotSentReason::ConnectionLost)),
            "{results:?}"
        );
    }

    /// A request written in full whose connection closes before its answer may have been processed, even when the
    /// server's GOAWAY named its stream among those it processes (RFC 9113 §6.8: they "might have been processed"):
    /// its outcome is unknown, as after a timeout, and it is never handed back as unsent.
    #[tokio::test]
    async fn requests_written_in_full_and_lost_with_the_connection_are_unanswered_not_unsent() {
        let results = goaway_then_close_results(None).await;
        for (tag, result) in &results {
            assert!(
                matches!(result, PushResult::Unanswered { stream, .. } if stream.stream == 2 * tag - 1),
                "{results:?}"
            );
        }
        // A stream above the GOAWAY's last stream id was not processed: unsent.
        let results = goaway_then_close_results(Some(1)).await;
        assert!(
            matches!(&results[0], (1, PushResult::Unanswered { stream, .. }) if stream.stream == 1),
            "{results:?}"
        );
        assert_eq!(
            results[1],
            (2, PushResult::NotSent(NotSentReason::Refused)),
            "{results:?}"
        );
    }

    async fn send_job(jobs: &async_channel::Sender<Job<u32>>, tag: u32) {
        jobs.send(Job {
            request: request(tag as u8),
            tag,
        })
        .await
        .unwrap();
    }

    /// A peer that vanishes while the connection carries traffic (no FIN, no RST: nothing more comes) is found
    /// out: the stream it leaves unanswered makes the connection ask with a PING, take no more work meanwhile, and
    /// when no PONG comes, tell the pool it is draining and close. Work that comes later stays in the shared queue
    /// for another connection instead of timing out here one stream after another until TCP gives up.
    #[tokio::test]
    async fn a_peer_gone_silent_under_traffic_is_pinged_and_the_connection_takes_no_more_work() {
        let mut peer = silent_peer(Duration::from_millis(300), Duration::from_secs(30)).await;
        send_job(&peer.jobs, 1).await;
        let first = peer.results.wait_for(1).await;
        assert!(
            matches!(first[0], (1, PushResult::Delivered { .. })),
            "{first:?}"
        );
        // The peer goes silent: the next stream is not answered.
        send_job(&peer.jobs, 2).await;
        let both = peer.results.wait_for(2).await;
        assert!(
            matches!(both[1], (2, PushResult::TimedOut { .. })),
            "{both:?}"
        );
        // Work keeps coming.
        for tag in 3..=7 {
            send_job(&peer.jobs, tag).await;
        }
        loop {
            match tokio::time::timeout(Duration::from_secs(20), peer.seen.recv()).await {
                Ok(Some(Seen::Ping)) => break,
                Ok(Some(_)) => continue,
                other => panic!("no PING came: {other:?}"),
            }
        }
        tokio::time::timeout(Duration::from_secs(20), peer.run)
            .await
            .expect("the connection gives up on the PING and ends")
            .unwrap();
        assert!(peer.state.is_draining() && peer.state.is_closed());
        // Nothing after the silence was taken, so nothing more timed out.
        assert_eq!(peer.jobs.len(), 5, "{:?}", peer.results.wait_for(2).await);
        assert_eq!(peer.results.wait_for(2).await.len(), 2);
        let mut headers = 0;
        while let Ok(seen) = peer.seen.try_recv() {
            headers += usize::from(matches!(seen, Seen::Headers(_)));
        }
        assert_eq!(headers, 0, "no request after the PING");
    }

    /// A job taken after a keep-alive PING went out, on a connection whose peer no longer answers, is reported
    /// (as timed out: APNs may have received it) when the connection gives up on the PING, never dropped.
    #[tokio::test]
    async fn a_stream_opened_after_an_unanswered_ping_is_reported_when_the_connection_gives_up() {
        let SilentPeer {
            jobs: jobs_tx,
            results,
            mut seen,
            run,
            ..
        } = silent_peer(Duration::from_secs(3), Duration::from_millis(100)).await;
        send_job(&jobs_tx, 1).await;
        let first = results.wait_for(1).await;
        assert!(
            matches!(first[0], (1, PushResult::Delivered { .. })),
            "{first:?}"
        );
        // Idle for the keep-alive time: the PING goes out, and the peer says nothing more.
        loop {
            match tokio::time::timeout(Duration::from_secs(20), seen.recv()).await {
                Ok(Some(Seen::Ping)) => break,
                Ok(Some(_)) => continue,
                other => panic!("no PING came: {other:?}"),
            }
        }
        // The job comes a third of a response time after the PING (a stall of the machine shorter than two
        // seconds still finds the connection open): its own timeout would end after the connection gives up on the
        // PING.
        tokio::time::sleep(Duration::from_secs(1)).await;
        jobs_tx
            .send(Job {
                request: request(2),
                tag: 2,
            })
            .await
            .unwrap();
        let all = results.wait_for(2).await;
        assert!(
            matches!(all[1], (2, PushResult::TimedOut { .. })),
            "the second job is reported as timed out: {all:?}"
        );
        // The connection closed after reporting it.
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the connection ends")
            .unwrap();
    }

    // Frames a scripted server sends.
    const DATA: u8 = 0x0;
    const RST_STREAM: u8 = 0x3;
    const PING: u8 = 0x6;
    const GOAWAY: u8 = 0x7;
    const WINDOW_UPDATE: u8 = 0x8;
    const END_STREAM: u8 = 0x1;
    const END_HEADERS: u8 = 0x4;
    const REFUSED_STREAM: u32 = 0x7;
    const NO_ERROR: u32 = 0x0;
    const CANCEL: u32 = 0x8;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
        let mut out = vec![len[1], len[2], len[3], kind, flags];
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A HEADERS frame carrying only `:status`, as an index of HPACK's static table (`0x88`: 200, `0x8c`: 400).
    fn status(stream: u32, index: u8, end_stream: bool) -> Vec<u8> {
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        frame(HEADERS, flags, stream, &[index])
    }

    fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
        frame(RST_STREAM, 0, stream, &code.to_be_bytes())
    }

    fn window_update(stream: u32, increment: u32) -> Vec<u8> {
        frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
    }

    /// A SETTINGS frame with `settings` (identifier and value pairs).
    fn settings_frame(settings: &[(u16, u32)]) -> Vec<u8> {
        let mut payload = Vec::new();
        for (id, value) in settings {
            payload.extend_from_slice(&id.to_be_bytes());
            payload.extend_from_slice(&value.to_be_bytes());
        }
        frame(SETTINGS, 0, 0, &payload)
    }

    fn goaway(last_stream_id: u32, code: u32) -> Vec<u8> {
        let mut payload = last_stream_id.to_be_bytes().to_vec();
        payload.extend_from_slice(&code.to_be_bytes());
        frame(GOAWAY, 0, 0, &payload)
    }

    /// A frame-level server: sends its SETTINGS (`settings`: identifier and value pairs), acknowledges the
    /// client's, answers PINGs, and hands every frame the client sends to `on_frame` (type, flags, stream,
    /// payload), writing what it returns; it reads until the client closes.
    async fn scripted_server<F>(mut sock: TcpStream, settings: &[(u16, u32)], mut on_frame: F)
    where
        F: FnMut(u8, u8, u32, &[u8]) -> Vec<u8>,
    {
        let mut preface = [0u8; 24];
        sock.read_exact(&mut preface).await.unwrap();
        assert_eq!(preface, PREFACE);
        sock.write_all(&settings_frame(settings)).await.unwrap();
        loop {
            let Some(f) = read_frame(&mut sock).await else {
                return;
            };
            let mut out = match f.kind {
                SETTINGS if f.flags & 1 == 0 => frame(SETTINGS, 1, 0, &[]),
                PING if f.flags & 1 == 0 => frame(PING, 1, 0, &f.payload),
                _ => Vec::new(),
            };
            out.extend(on_frame(f.kind, f.flags, f.stream, &f.payload));
            if !out.is_empty() && sock.write_all(&out).await.is_err() {
                return;
            }
        }
    }

    /// What a [`freezing_server`] answers only once it has frozen the client's thread.
    #[cfg(target_os = "linux")]
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum FrozenBefore {
        /// The answer to the first request.
        Answer,
        /// The answer to the first PING.
        Pong,
    }

    /// A frame-level server on a thread of its own, for the connection accepted on `listener`: it acknowledges
    /// the client's SETTINGS, answers every request `200` and every PING at once, except that the first answer
    /// `what` names is written only once it has frozen `client` (the thread of the client's runtime, idle and
    /// waiting for the answer) as a stop of the process would ([`stall::freeze`]): the answer then waits in the
    /// socket while the client's deadline passes.
    #[cfg(target_os = "linux")]
    fn freezing_server(
        listener: std::net::TcpListener,
        client: libc::pthread_t,
        what: FrozenBefore,
    ) {
        use std::io::{Read, Write};
        std::thread::spawn(move || {
            let (mut sock, _) = listener.accept().unwrap();
            let mut preface = [0u8; 24];
            sock.read_exact(&mut preface).unwrap();
            sock.write_all(&settings_frame(&[])).unwrap();
            let mut frozen = false;
            loop {
                let mut head = [0u8; 9];
                if sock.read_exact(&mut head).is_err() {
                    return;
                }
                let len =
                    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                let mut payload = vec![0u8; len];
                if sock.read_exact(&mut payload).is_err() {
                    return;
                }
                let (kind, flags) = (head[3], head[4]);
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                let (answer, of) = match kind {
                    SETTINGS if flags & 1 == 0 => (frame(SETTINGS, 1, 0, &[]), None),
                    PING if flags & 1 == 0 => {
                        (frame(PING, 1, 0, &payload), Some(FrozenBefore::Pong))
                    }
                    DATA if flags & END_STREAM != 0 => {
                        (status(stream, 0x88, true), Some(FrozenBefore::Answer))
                    }
                    _ => continue,
                };
                if !frozen && of == Some(what) {
                    frozen = true;
                    // The client's runtime has gone back to waiting for socket events by now.
                    std::thread::sleep(Duration::from_millis(30));
                    stall::freeze::freeze(client);
                }
                if sock.write_all(&answer).is_err() {
                    return;
                }
            }
        });
    }

    /// An answer APNs sent in time that waits in the socket while herald is frozen (SIGSTOP, a virtual machine
    /// paused) past the response timeout is the outcome when herald runs again: the notification is delivered, not
    /// reported as timed out (and sent again later as a duplicate), though the stream's timer and the socket
    /// become ready together, the timer first (docs/apns-protocol.md#herald-stalls).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_answer_that_came_while_herald_was_frozen_is_not_a_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        freezing_server(listener, stall::freeze::this_thread(), FrozenBefore::Answer);
        let started = Instant::now();
        let conn = test_conn(
            addr,
            Duration::from_millis(200),
            Duration::from_secs(30),
            &[1],
        )
        .await;
        let results = conn.results.wait_for(1).await;
        assert!(
            started.elapsed() >= stall::freeze::FROZEN_FOR,
            "the client was not frozen"
        );
        assert_eq!(results, [(1, delivered())]);
        assert!(!conn.state.is_draining() && conn.state.fault().is_none());
        conn.run.abort();
    }

    /// A PING's answer that waits in the socket while herald is frozen past the PING's timeout does not make the
    /// connection count as dead when herald runs again: it is read before the PING is judged unanswered.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn a_pong_that_came_while_herald_was_frozen_keeps_the_connection() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        freezing_server(listener, stall::freeze::this_thread(), FrozenBefore::Pong);
        let started = Instant::now();
        // Idle: a keep-alive PING goes out after 100 ms, and without its answer within 200 ms the connection
        // would close.
        let conn = test_conn(
            addr,
            Duration::from_millis(200),
            Duration::from_millis(100),
            &[],
        )
        .await;
        while started.elapsed() < stall::freeze::FROZEN_FOR + Duration::from_millis(500) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            !conn.state.is_draining() && conn.state.fault().is_none(),
            "{:?}",
            conn.state.fault()
        );
        // And it still works.
        send_job(&conn.jobs, 1).await;
        assert_eq!(conn.results.wait_for(1).await, [(1, delivered())]);
        conn.run.abort();
    }

    /// A dispatcher on a connection to a [`scripted_server`], with `jobs` queued when it starts.
    async fn scripted_conn<F>(
        settings: &'static [(u16, u32)],
        opts: impl FnOnce(std::net::SocketAddr) -> Http2Options,
        jobs: Vec<Job<u32>>,
        on_frame: F,
    ) -> TestConn
    where
        F: FnMut(u8, u8, u32, &[u8]) -> Vec<u8> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            scripted_server(sock, settings, on_frame).await;
        });
        test_conn_with(addr, opts(addr), jobs).await
    }

    /// `SETTINGS_INITIAL_WINDOW_SIZE` = 0: no request body can be written before the server grants credit.
    const NO_WINDOW: &[(u16, u32)] = &[(0x4, 0)];

    fn job(tag: u32) -> Job<u32> {
        Job {
            request: request(tag as u8),
            tag,
        }
    }

    fn delivered() -> PushResult {
        PushResult::Delivered {
            transaction_id: None,
            unique_id: None,
        }
    }

    /// Under load the last requests wait for flow-control credit after their HEADERS went out; APNs may refuse one
    /// of them (`RST_STREAM(REFUSED_STREAM)` above a lowered stream limit, docs/apns-protocol.md#http2-connection).
    /// The refused notification is unsent (requeued, no attempt counted) and the connection goes on: it does not
    /// drain, as after a lost connection, and the other requests go out once credit comes.
    #[tokio::test]
    async fn a_stream_refused_while_its_body_waits_for_credit_is_unsent_and_the_connection_goes_on()
    {
        // 20 bodies of 4 KiB: the connection's window (65,535 bytes) takes 15 of them; the rest wait for credit.
        let n = 20u32;
        let jobs = (1..=n)
            .map(|tag| {
                let mut job = job(tag);
                job.request.payload = Bytes::from(vec![b' '; 4096]);
                job
            })
            .collect();
        let mut streams = Vec::new();
        let conn = scripted_conn(
            &[],
            |addr| test_opts(addr, Duration::from_secs(10), Duration::from_secs(30)),
            jobs,
            move |kind, flags, stream, _| match kind {
                HEADERS => {
                    streams.push(stream);
                    if streams.len() < n as usize {
                        return Vec::new();
                    }
                    // Every stream is open: the last one, still waiting for credit, is refused, and then the
                    // connection's window is opened for the others.
                    let mut out = rst_stream(stream, REFUSED_STREAM);
                    out.extend(window_update(0, 65_535));
                    out
                }
                DATA if flags & END_STREAM != 0 => status(stream, 0x88, true),
                _ => Vec::new(),
            },
        )
        .await;
        let mut results = conn.results.wait_for(n as usize).await;
        results.sort_by_key(|(tag, _)| *tag);
        let mut expected: Vec<_> = (1..n).map(|tag| (tag, delivered())).collect();
        expected.push((n, PushResult::NotSent(NotSentReason::Refused)));
        assert_eq!(results, expected);
        assert!(
            !conn.state.is_draining(),
            "a refused stream made the connection stop taking work"
        );
        conn.run.abort();
    }

    /// A GOAWAY whose last stream id is below a stream still waiting for flow-control credit says the server never
    /// processed that stream: it comes back unsent (refused, not a loss; docs/apns-protocol.md#http2-connection),
    /// while the stream the GOAWAY covers is carried to its answer.
    #[tokio::test]
    async fn a_stream_above_a_goaway_while_its_body_waits_for_credit_is_unsent() {
        let mut headers = 0;
        let conn = scripted_conn(
            NO_WINDOW,
            |addr| test_opts(addr, Duration::from_secs(10), Duration::from_secs(30)),
            vec![job(1), job(2)],
            move |kind, flags, stream, _| match kind {
                HEADERS => {
                    headers += 1;
                    if headers < 2 {
                        return Vec::new();
                    }
                    // Both bodies wait for credit: the first stream gets some, the second is left above the GOAWAY.
                    let mut out = window_update(1, 1024);
                    out.extend(goaway(1, NO_ERROR));
                    out
                }
                DATA if flags & END_STREAM != 0 => status(stream, 0x88, true),
                _ => Vec::new(),
            },
        )
        .await;
        let mut results = conn.results.wait_for(2).await;
        results.sort_by_key(|(tag, _)| *tag);
        assert_eq!(
            results,
            [
                (1, delivered()),
                (2, PushResult::NotSent(NotSentReason::Refused))
            ]
        );
        // After a GOAWAY no stream opens: the connection finishes and closes.
        tokio::time::timeout(Duration::from_secs(20), conn.run)
            .await
            .expect("the connection ends")
            .unwrap();
    }

    /// A GOAWAY that leaves a stream open (its last stream id covers it): the connection takes no more work at once
    /// (the pool counts it as draining and opens another), opens no stream above it, and carries the open one to its
    /// end (here the server never answers it: its response timeout), docs/apns-protocol.md#http2-connection.
    #[tokio::test]
    async fn after_a_goaway_no_new_stream_opens_while_the_covered_ones_finish() {
        let opened = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = opened.clone();
        let conn = scripted_conn(
            &[],
            |addr| test_opts(addr, Duration::from_secs(3), Duration::from_secs(30)),
            vec![job(1)],
            move |kind, _, stream, _| match kind {
                HEADERS => {
                    seen.lock().unwrap().push(stream);
                    // Stream 1 stays open: the server is going away.
                    if stream == 1 {
                        goaway(1, NO_ERROR)
                    } else {
                        Vec::new()
                    }
                }
                _ => Vec::new(),
            },
        )
        .await;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !conn.state.is_draining() {
            assert!(
                Instant::now() < deadline,
                "a GOAWAY left the connection taking work"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Work that comes now is not taken: it waits for another connection.
        conn.jobs.send(job(2)).await.unwrap();
        tokio::time::timeout(Duration::from_secs(20), conn.run)
            .await
            .expect("the connection ends")
            .unwrap();
        let results = conn.results.wait_for(1).await;
        assert!(
            matches!(results[..], [(1, PushResult::TimedOut { .. })]),
            "{results:?}"
        );
        assert_eq!(
            *opened.lock().unwrap(),
            [1],
            "a stream opened after the GOAWAY"
        );
        assert_eq!(conn.jobs.len(), 1, "the job after the GOAWAY was taken");
        assert!(
            conn.state
                .fault()
                .is_some_and(|(_, why)| why.contains("GOAWAY")),
            "{:?}",
            conn.state.fault()
        );
    }

    /// A GOAWAY that covers every stream (last stream id 2^31−1) while the connection carries all the streams the
    /// server allows, so that it asks h2 for no room for another: the connection still stops taking work as soon
    /// as the GOAWAY is read, long before any of its streams could end, so that the pool opens another for what
    /// waits; the streams go on to their answers, and, since they may still be accepted, the connection's verdict
    /// waits for them (docs/apns-protocol.md#http2-connection, RFC 9113 §6.8).
    #[tokio::test]
    async fn a_goaway_at_the_stream_limit_stops_the_connection_taking_work_at_once() {
        const TWO_STREAMS: &[(u16, u32)] = &[(0x3, 2)];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = DrivenServer::start(listener, TWO_STREAMS);
        // Response timeout and keep-alive far beyond the test: the streams end with their answers, and no timer of
        // the connection's notices the GOAWAY for it.
        let long = Duration::from_secs(3600);
        let conn = test_conn_with(addr, test_opts(addr, long, long), [job(1), job(2)]).await;
        let mut ended = Vec::new();
        while ended.len() < 2 {
            ended.push(server.until("both requests", ends_a_request).await.stream);
        }
        assert_eq!(ended, [1, 3]);
        server.send(goaway(0x7fff_ffff, NO_ERROR));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !conn.state.is_draining() {
            assert!(
                Instant::now() < deadline,
                "a GOAWAY read at the stream limit left the connection taking work"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            conn.state
                .fault()
                .is_some_and(|(_, why)| why == "GOAWAY NO_ERROR"),
            "{:?}",
            conn.state.fault()
        );
        assert!(conn.state.awaits_covered_answers());
        assert_eq!(conn.state.in_flight(), 2, "a covered stream ended");
        // Work that comes now waits for another connection.
        conn.jobs.send(job(3)).await.unwrap();
        let mut out = status(1, 0x88, true);
        out.extend(status(3, 0x88, true));
        server.send(out);
        tokio::time::timeout(Duration::from_secs(20), conn.run)
            .await
            .expect("the connection ends")
            .unwrap();
        let mut results = conn.results.wait_for(2).await;
        results.sort_by_key(|(tag, _)| *tag);
        assert_eq!(results, [(1, delivered()), (2, delivered())]);
        assert!(conn.state.is_proven());
        assert_eq!(conn.jobs.len(), 1, "the job after the GOAWAY was taken");
    }

    /// A GOAWAY that covers no stream in flight (last stream id 0: nothing processed): the stream comes back unsent,
    /// and nothing is left that could prove the connection, so its fault stands as it is.
    #[tokio::test]
    async fn a_goaway_that_covers_no_stream_in_flight_leaves_nothing_to_wait_for() {
        let conn = scripted_conn(
            &[],
            |addr| test_opts(addr, Duration::from_secs(10), Duration::from_secs(30)),
            vec![job(1)],
            |kind, _, _, _| match kind {
                HEADERS => goaway(0, NO_ERROR),
                _ => Vec::new(),
            },
        )
        .await;
        assert_eq!(
            conn.results.wait_for(1).await,
            [(1, PushResult::NotSent(NotSentReason::Refused))]
        );
        tokio::time::timeout(Duration::from_secs(20), conn.run)
            .await
            .expect("the connection ends")
            .unwrap();
        assert!(
            conn.state
                .fault()
                .is_some_and(|(_, why)| why.contains("GOAWAY"))
        );
        assert!(!conn.state.awaits_covered_answers() && !conn.state.is_proven());
    }

    /// Answers that carry a status and nothing else (no body, an empty one, or blanks) are rejections that say
    /// which status they had, so that a notification's last error is never empty.
    #[tokio::test]
    async fn an_answer_without_a_body_names_its_status() {
        for (code, body) in [
            (&b"500"[..], None),
            (b"500", Some(&b""[..])),
            (b"503", Some(b" \r\n")),
            (b"204", None),
            (b"301", None),
            (b"600", None),
        ] {
            let conn = scripted_conn(
                &[],
                |addr| test_opts(addr, Duration::from_secs(10), Duration::from_secs(30)),
                vec![job(1)],
                move |kind, flags, stream, _| match kind {
                    DATA if flags & END_STREAM != 0 => {
                        // `:status`: a literal with the static table's `:status` name (index 8).
                        let mut head = vec![0x08, 3];
                        head.extend_from_slice(code);
                        match body {
                            None => frame(HEADERS, END_HEADERS | END_STREAM, stream, &head),
                            Some(body) => {
                                let mut out = frame(HEADERS, END_HEADERS, stream, &head);
                                out.extend(frame(DATA, END_STREAM, stream, body));
                                out
                            }
                        }
                    }
                    _ => Vec::new(),
                },
            )
            .await;
            let status: u16 = std::str::from_utf8(code).unwrap().parse().unwrap();
            assert_eq!(
                conn.results.wait_for(1).await,
                [(
                    1,
                    PushResult::Rejected(Rejection::Http {
                        status,
                        reason: format!("HTTP {status} without a reason"),
                        timestamp_ms: None,
                    })
                )]
            );
            conn.run.abort();
        }
    }

    /// A self-signed certificate for 127.0.0.1 and its key, for test servers (the client does not verify).
    pub(crate) fn test_server_tls(alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// A server that speaks HTTP/1.1 only, over TLS without ALPN: the connection attempt fails, saying the server
    /// does not speak HTTP/2 (not a frame-size error from reading its HTTP/1 answer as frames).
    #[tokio::test]
    async fn a_server_that_answers_in_http1_does_not_speak_http2() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(test_server_tls(&[]));
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(sock).await.unwrap();
            let mut request = [0u8; 24];
            tls.read_exact(&mut request).await.unwrap();
            tls.write_all(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            )
            .await
            .unwrap();
            let _ = tls.shutdown().await;
        });
        let (_jobs_tx, jobs) = async_channel::unbounded::<Job<u32>>();
        let opts = Arc::new(test_opts(
            addr,
            Duration::from_secs(10),
            Duration::from_secs(30),
        ));
        let e = open(opts, 1, jobs, Arc::new(Results::default()))
            .await
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(e, ConnectionError::NotHttp2 { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "127.0.0.1 does not speak HTTP/2: it agreed on no ALPN protocol (herald offers h2), and it answered \
             the HTTP/2 connection preface in HTTP/1"
        );
    }

    /// APNs may answer a request from its headers alone (`400 BadDeviceToken`) while the body still waits for
    /// flow-control credit, and then stop the body with `RST_STREAM(NO_ERROR)` (RFC 9113 §8.1): that answer is the
    /// outcome (docs/apns-protocol.md#http2-connection), not a lost connection, and the connection goes on.
    #[tokio::test]
    async fn an_answer_that_comes_while_the_body_waits_for_credit_is_the_outcome() {
        let conn = scripted_conn(
            NO_WINDOW,
            |addr| test_opts(addr, Duration::from_secs(10), Duration::from_secs(30)),
            vec![job(1)],
            |kind, _, stream, _| match kind {
                HEADERS => {
                    let body = br#"{"reason":"BadDeviceToken"}"#;
                    let mut out = status(stream, 0x8c, false);
                    out.extend(frame(DATA, END_STREAM, stream, body));
                    out.extend(rst_stream(stream, NO_ERROR));
                    out
                }
                _ => Vec::new(),
            },
        )
        .await;
        let results = conn.results.wait_for(1).await;
        assert_eq!(
            results,
            [(
                1,
                PushResult::Rejected(Rejection::Http {
                    status: 400,
                    reason: "BadDeviceToken".to_owned(),
                    timestamp_ms: None,
                })
            )]
        );
        assert!(!conn.state.is_draining());
        conn.run.abort();
    }

    /// The same early answer without the server's `RST_STREAM` (RFC 9113 §8.1 says it should send one; nothing
    /// forces it): the answer is the outcome at once, not a timeout waiting for credit that will never come, and
    /// the client closes the stream itself (`RST_STREAM(CANCEL)`) so it stops counting against the stream limit.
    #[tokio::test]
    async fn an_early_answer_without_a_reset_is_the_outcome_and_the_stream_is_closed() {
        let resets = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = resets.clone();
        let started = Instant::now();
        let conn = scripted_conn(
            NO_WINDOW,
            |addr| test_opts(addr, Duration::from_secs(30), Duration::from_secs(30)),
            vec![job(1)],
            move |kind, _, stream, payload| match kind {
                HEADERS => {
                    let body = br#"{"reason":"BadDeviceToken"}"#;
                    let mut out = status(stream, 0x8c, false);
                    out.extend(frame(DATA, END_STREAM, stream, body));
                    out
                }
                RST_STREAM => {
                    seen.lock().unwrap().push((stream, payload.to_vec()));
                    Vec::new()
                }
                _ => Vec::new(),
            },
        )
        .await;
        let results = conn.results.wait_for(1).await;
        assert_eq!(
            results,
            [(
                1,
                PushResult::Rejected(Rejection::Http {
                    status: 400,
                    reason: "BadDeviceToken".to_owned(),
                    timestamp_ms: None,
                })
            )]
        );
        // Not after the 30 s response timeout: the answer was read while the body waited.
        assert!(started.elapsed() < Duration::from_secs(30));
        let deadline = Instant::now() + Duration::from_secs(20);
        while resets.lock().unwrap().is_empty() {
            assert!(
                Instant::now() < deadline,
                "the client never reset the stream"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(
            *resets.lock().unwrap(),
            [(1, CANCEL.to_be_bytes().to_vec())]
        );
        assert!(!conn.state.is_draining());
        conn.run.abort();
    }

    /// `idle_timeout` counts from the last request or answer, not from the last PONG: with keep-alive PINGs more
    /// frequent than the idle timeout (production PINGs after 60 s without traffic), an idle connection still
    /// closes after `idle_timeout` (docs/apns-protocol.md#http2-connection), its PINGs answered meanwhile.
    #[tokio::test]
    async fn an_idle_connection_closes_after_idle_timeout_though_its_pings_are_answered() {
        let idle_timeout = Duration::from_secs(1);
        let pings = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = pings.clone();
        let started = Instant::now();
        let conn = scripted_conn(
            &[],
            |addr| Http2Options {
                idle_timeout: Some(idle_timeout),
                ..test_opts(addr, Duration::from_secs(5), Duration::from_millis(200))
            },
            vec![job(1)],
            move |kind, flags, stream, _| match kind {
                DATA if flags & END_STREAM != 0 => status(stream, 0x88, true),
                PING if flags & 1 == 0 => {
                    counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Vec::new()
                }
                _ => Vec::new(),
            },
        )
        .await;
        let results = conn.results.wait_for(1).await;
        assert_eq!(results, [(1, delivered())]);
        tokio::time::timeout(Duration::from_secs(10), conn.run)
            .await
            .expect("the idle connection closes")
            .unwrap();
        assert!(started.elapsed() >= idle_timeout);
        assert!(conn.state.is_draining() && conn.state.is_closed());
        // PINGs went out every 200 ms and were answered, and did not keep the connection open.
        let pings = pings.load(std::sync::atomic::Ordering::Relaxed);
        assert!(pings >= 2, "{pings} PINGs answered");
    }

    /// A job for a connection from which nothing has been heard for the liveness threshold waits for a PING's
    /// answer, and then goes out on it: a peer that is there costs one round trip, not a notification.
    #[tokio::test]
    async fn a_connection_not_heard_from_lately_is_pinged_before_it_is_given_work() {
        let liveness = Duration::from_millis(300);
        let frames = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = frames.clone();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            scripted_server(sock, &[], move |kind, flags, stream, _| {
                match kind {
                    HEADERS => seen.lock().unwrap().push(Seen::Headers(stream)),
                    PING if flags & 1 == 0 => seen.lock().unwrap().push(Seen::Ping),
                    _ => {}
                }
                match kind {
                    DATA if flags & END_STREAM != 0 => status(stream, 0x88, true),
                    _ => Vec::new(),
                }
            })
            .await;
        });
        let opts = test_opts(addr, Duration::from_secs(10), Duration::from_secs(30));
        let conn = test_conn_liveness(addr, opts, [job(1)], liveness).await;
        assert_eq!(conn.results.wait_for(1).await, [(1, delivered())]);
        // Nothing is heard from the peer for longer than the threshold (keep-alive PINGs come after 30 s).
        let answered = Instant::now();
        tokio::time::sleep_until((answered + 2 * liveness).into()).await;
        send_job(&conn.jobs, 2).await;
        assert_eq!(
            conn.results.wait_for(2).await,
            [(1, delivered()), (2, delivered())]
        );
        assert_eq!(
            *frames.lock().unwrap(),
            [Seen::Headers(1), Seen::Ping, Seen::Headers(3)],
            "the second request waited for the PING's answer"
        );
        assert!(!conn.state.is_draining() && conn.state.fault().is_none());
        conn.run.abort();
    }

    /// A peer that dropped the connection without a word while it was idle (no FIN, no RST: a NAT that forgot it)
    /// does not get the next job: the PING asked first goes unanswered, and the job comes back unsent (never
    /// written, no attempt counted) while the connection stops taking work and closes, so that the pool sends it
    /// on another (docs/apns-protocol.md#http2-connection).
    #[tokio::test]
    async fn a_job_for_a_connection_whose_peer_went_silent_while_idle_comes_back_unsent() {
        let liveness = Duration::from_millis(300);
        let mut peer = silent_peer_liveness(
            Duration::from_millis(800),
            Duration::from_secs(30),
            liveness,
        )
        .await;
        send_job(&peer.jobs, 1).await;
        let first = peer.results.wait_for(1).await;
        assert!(
            matches!(first[0], (1, PushResult::Delivered { .. })),
            "{first:?}"
        );
        let answered = Instant::now();
        tokio::time::sleep_until((answered + 2 * liveness).into()).await;
        send_job(&peer.jobs, 2).await;
        let both = peer.results.wait_for(2).await;
        assert_eq!(
            both[1],
            (2, PushResult::NotSent(NotSentReason::Closing)),
            "{both:?}"
        );
        tokio::time::timeout(Duration::from_secs(20), peer.run)
            .await
            .expect("the connection closes")
            .unwrap();
        assert!(peer.state.is_draining() && peer.state.is_closed());
        let (_, fault) = peer.state.fault().expect("a fault is recorded");
        assert!(fault.contains("no PING answer"), "{fault}");
        let mut seen = Vec::new();
        while let Ok(s) = peer.seen.try_recv() {
            seen.push(s);
        }
        assert_eq!(
            seen,
            [Seen::Headers(1), Seen::Ping],
            "the second request was never written"
        );
    }

    /// `503 Shutdown`: the APNs server is going down and would answer every new stream the same until its GOAWAY.
    /// The connection takes no more work (what waits stays in the shared queue for another connection), records
    /// the fault and closes; the answer itself is reported as it came.
    #[tokio::test]
    async fn a_shutdown_answer_stops_the_connection_taking_work() {
        let conn = scripted_conn(
            &[],
            |addr| test_opts(addr, Duration::from_secs(10), Duration::from_secs(30)),
            vec![job(1)],
            |kind, flags, stream, _| match kind {
                DATA if flags & END_STREAM != 0 => {
                    // `:status 503`: a literal with the static table's `:status` name (index 8).
                    let mut out = frame(HEADERS, END_HEADERS, stream, &[0x08, 3, b'5', b'0', b'3']);
                    out.extend(frame(DATA, END_STREAM, stream, br#"{"reason":"Shutdown"}"#));
                    out
                }
                _ => Vec::new(),
            },
        )
        .await;
        let results = conn.results.wait_for(1).await;
        assert_eq!(
            results,
            [(
                1,
                PushResult::Rejected(Rejection::Http {
                    status: 503,
                    reason: "Shutdown".to_owned(),
                    timestamp_ms: None,
                })
            )]
        );
        // No idle timeout: the connection closes because it takes no more work.
        tokio::time::timeout(Duration::from_secs(20), conn.run)
            .await
            .expect("the connection closes")
            .unwrap();
        assert!(conn.state.is_draining() && !conn.state.is_proven());
        let (_, fault) = conn.state.fault().expect("a fault is recorded");
        assert_eq!(fault, "503 Shutdown");
    }

    /// `410 Unregistered` whose `timestamp` is written as text, and a `400` whose body has an odd extra field: the
    /// reason and the time APNs gave are both kept (docs/apns-protocol.md#http2-response), not the whole body as the
    /// reason and no time.
    #[tokio::test]
    async fn a_rejection_keeps_its_reason_and_timestamp_whatever_else_the_body_holds() {
        for (code, body, want) in [
            (
                &b"410"[..],
                &br#"{"reason":"Unregistered","timestamp":"1700000000123"}"#[..],
                Rejection::Http {
                    status: 410,
                    reason: "Unregistered".to_owned(),
                    timestamp_ms: Some(1_700_000_000_123),
                },
            ),
            (
                b"400",
                br#"{"reason":"BadDeviceToken","detail":1e400}"#,
                Rejection::Http {
                    status: 400,
                    reason: "BadDeviceToken".to_owned(),
                    timestamp_ms: None,
                },
            ),
        ] {
            let conn = scripted_conn(
                &[],
                |addr| test_opts(addr, Duration::from_secs(10), Duration::from_secs(30)),
                vec![job(1)],
                move |kind, flags, stream, _| match kind {
                    DATA if flags & END_STREAM != 0 => {
                        // `:status`: a literal with the static table's `:status` name (index 8).
                        let mut head = vec![0x08, 3];
                        head.extend_from_slice(code);
                        let mut out = frame(HEADERS, END_HEADERS, stream, &head);
                        out.extend(frame(DATA, END_STREAM, stream, body));
                        out
                    }
                    _ => Vec::new(),
                },
            )
            .await;
            assert_eq!(
                conn.results.wait_for(1).await,
                [(1, PushResult::Rejected(want))]
            );
            conn.run.abort();
        }
    }

    /// A GOAWAY ends the connection with its code and reason as the fault (h2 itself says nothing of a
    /// `NO_ERROR` GOAWAY's debug data); an accepted notification proves the connection.
    #[tokio::test]
    async fn a_goaway_is_the_fault_with_its_reason() {
        let conn = scripted_conn(
            &[],
            |addr| test_opts(addr, Duration::from_secs(10), Duration::from_secs(30)),
            vec![job(1)],
            |kind, flags, stream, _| match kind {
                DATA if flags & END_STREAM != 0 => {
                    let mut out = status(stream, 0x88, true);
                    let mut payload = stream.to_be_bytes().to_vec();
                    payload.extend_from_slice(&NO_ERROR.to_be_bytes());
                    payload.extend_from_slice(br#"{"reason":"Maintenance\nnow"}"#);
                    out.extend(frame(GOAWAY, 0, 0, &payload));
                    out
                }
                _ => Vec::new(),
            },
        )
        .await;
        assert_eq!(conn.results.wait_for(1).await, [(1, delivered())]);
        tokio::time::timeout(Duration::from_secs(20), conn.run)
            .await
            .expect("the connection closes")
            .unwrap();
        assert!(conn.state.is_proven());
        let (_, fault) = conn.state.fault().expect("a fault is recorded");
        assert_eq!(fault, r"GOAWAY NO_ERROR (Maintenance\nnow)");
    }

    /// A frame-level server like APNs as seen (docs/apns-protocol.md#http2-connection): 1,000 streams, the default
    /// 65,535-byte windows, and window given back only as it reads request bodies (a connection WINDOW_UPDATE for
    /// every DATA frame read); every request is answered `200` once its body has ended.
    async fn window_returning_conn(jobs: Vec<Job<u32>>) -> TestConn {
        const MAX_CONCURRENT_STREAMS_1000: &[(u16, u32)] = &[(0x3, 1000)];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            scripted_server(
                sock,
                MAX_CONCURRENT_STREAMS_1000,
                |kind, flags, stream, payload| {
                    let mut out = Vec::new();
                    if kind == DATA && !payload.is_empty() {
                        out.extend(window_update(0, u32::try_from(payload.len()).unwrap()));
                    }
                    if kind == DATA && flags & END_STREAM != 0 {
                        out.extend(status(stream, 0x88, true));
                    }
                    out
                },
            )
            .await;
        });
        let opts = test_opts(addr, Duration::from_secs(10), Duration::from_secs(30));
        test_conn_starting_at(addr, opts, jobs, LIVENESS_THRESHOLD, Some(1000)).await
    }

    /// Hundreds of streams whose bodies wait for connection credit at once (the adaptive limit grown towards
    /// APNs' 1,000 streams, a 65,535-byte connection window): the window must not end up spread over streams
    /// that each hold part of what their body needs, none able to send, while the server, with nothing to read,
    /// gives no window back. Every notification is delivered and the connection goes on.
    #[tokio::test]
    async fn hundreds_of_bodies_waiting_for_connection_credit_all_go_out() {
        let n = 400u32;
        let jobs = (1..=n)
            .map(|tag| {
                let mut job = job(tag);
                // 1,000 to 4,096 bytes.
                let len = 1000 + (tag as usize * 7919) % 3097;
                job.request.payload = Bytes::from(vec![b' '; len]);
                job
            })
            .collect();
        let conn = window_returning_conn(jobs).await;
        let mut results = conn.results.wait_for(n as usize).await;
        results.sort_by_key(|(tag, _)| *tag);
        let expected: Vec<_> = (1..=n).map(|tag| (tag, delivered())).collect();
        assert_eq!(results, expected);
        assert!(
            !conn.state.is_draining() && conn.state.fault().is_none(),
            "the connection was given up: {:?}",
            conn.state.fault()
        );
        conn.run.abort();
    }

    /// `SETTINGS_INITIAL_WINDOW_SIZE` = 1,024 (below APNs' 4 KiB payloads) and 1,000 streams.
    const SMALL_STREAM_WINDOW: &[(u16, u32)] = &[(0x4, 1024), (0x3, 1000)];

    fn jobs_of(count: u32, len: usize) -> Vec<Job<u32>> {
        (1..=count)
            .map(|tag| {
                let mut job = job(tag);
                job.request.payload = Bytes::from(vec![b' '; len]);
                job
            })
            .collect()
    }

    /// `n` bodies of 4,096 bytes to a server whose stream window (1,024 bytes) is smaller than each, and which
    /// gives the window back (of the stream and of the connection) as it reads: every one is delivered, and the
    /// connection is not given up.
    async fn bodies_in_pieces_are_all_delivered(n: u32, response_timeout: Duration) {
        let conn = scripted_conn(
            SMALL_STREAM_WINDOW,
            |addr| test_opts(addr, response_timeout, Duration::from_secs(30)),
            jobs_of(n, 4096),
            |kind, flags, stream, payload| {
                let mut out = Vec::new();
                if kind != DATA {
                    return out;
                }
                let read = u32::try_from(payload.len()).unwrap();
                if read > 0 {
                    out.extend(window_update(0, read));
                }
                if flags & END_STREAM != 0 {
                    out.extend(status(stream, 0x88, true));
                } else if read > 0 {
                    out.extend(window_update(stream, read));
                }
                out
            },
        )
        .await;
        let mut results = conn.results.wait_for(n as usize).await;
        results.sort_by_key(|(tag, _)| *tag);
        let expected: Vec<_> = (1..=n).map(|tag| (tag, delivered())).collect();
        assert_eq!(results, expected);
        assert!(
            !conn.state.is_draining() && conn.state.fault().is_none(),
            "the connection was given up: {:?}",
            conn.state.fault()
        );
        conn.run.abort();
    }

    /// A server whose stream window (1,024 bytes) is smaller than the bodies (4,096) can never give one stream
    /// credit for a whole body at once; it gives the window back as it reads. The bodies go out in pieces, one
    /// stream at a time, and are delivered.
    #[tokio::test]
    async fn bodies_larger_than_the_stream_window_go_out_in_pieces() {
        bodies_in_pieces_are_all_delivered(5, Duration::from_secs(10)).await;
    }

    /// Streams waiting their turn for credit wait longer, all together, than the response timeout while the server
    /// gives credit steadily: the wait for a turn is not the server's slowness, so none is handed back and the
    /// connection is not given up (each turn has the timeout for its own credit).
    #[tokio::test]
    async fn the_wait_for_a_turn_at_credit_is_not_timed() {
        bodies_in_pieces_are_all_delivered(400, Duration::from_millis(500)).await;
    }

    /// A server that never gives a request body the credit it needs: the body not written in full within the
    /// response timeout comes back unsent, and the connection stops taking work with a fault that names flow
    /// control, not a lost connection.
    #[tokio::test]
    async fn a_body_the_server_never_gives_credit_for_is_unsent_and_the_fault_names_flow_control() {
        let conn = scripted_conn(
            SMALL_STREAM_WINDOW,
            |addr| test_opts(addr, Duration::from_millis(500), Duration::from_secs(30)),
            jobs_of(2, 4096),
            |_, _, _, _| Vec::new(),
        )
        .await;
        let results = conn.results.wait_for(2).await;
        assert!(
            results
                .iter()
                .all(|(_, r)| *r == PushResult::NotSent(NotSentReason::ConnectionLost)),
            "{results:?}"
        );
        tokio::time::timeout(Duration::from_secs(20), conn.run)
            .await
            .expect("the connection closes")
            .unwrap();
        let (_, fault) = conn.state.fault().expect("a fault is recorded");
        assert_eq!(
            fault,
            "no flow-control credit for a request body within 500 ms"
        );
    }

    /// The stream whose turn it is to gather credit ends its turn however it ends: answered before its body could
    /// go out, it hands the turn on, and the next stream's body goes out once credit comes.
    #[tokio::test]
    async fn a_stream_answered_while_waiting_for_credit_hands_on_its_turn() {
        let conn = scripted_conn(
            NO_WINDOW,
            |addr| test_opts(addr, Duration::from_secs(10), Duration::from_secs(30)),
            vec![job(1), job(2)],
            |kind, flags, stream, _| match kind {
                // The first request is refused from its headers alone, its stream left open; the second one's
                // stream gets credit.
                HEADERS if stream == 1 => {
                    let mut out = status(stream, 0x8c, false);
                    out.extend(frame(
                        DATA,
                        END_STREAM,
                        stream,
                        br#"{"reason":"BadDeviceToken"}"#,
                    ));
                    out
                }
                HEADERS => window_update(stream, 1024),
                DATA if flags & END_STREAM != 0 => status(stream, 0x88, true),
                _ => Vec::new(),
            },
        )
        .await;
        let mut results = conn.results.wait_for(2).await;
        results.sort_by_key(|(tag, _)| *tag);
        assert_eq!(results[1], (2, delivered()), "{results:?}");
        assert!(
            matches!(&results[0], (1, PushResult::Rejected(r)) if r.text() == "BadDeviceToken"),
            "{results:?}"
        );
        conn.run.abort();
    }

    /// An h2 server that accepts connections on `listener` and answers every request `200` once its body is in;
    /// returns the `authorization` value of every request, per connection in the order they were accepted.
    fn authorization_recorder(listener: TcpListener) -> Arc<std::sync::Mutex<Vec<Vec<String>>>> {
        let seen = Arc::new(std::sync::Mutex::new(Vec::<Vec<String>>::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let conn_index = {
                    let mut seen = record.lock().unwrap();
                    seen.push(Vec::new());
                    seen.len() - 1
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(sock).await else {
                        return;
                    };
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let auth = req
                            .headers()
                            .get(AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_owned();
                        record.lock().unwrap()[conn_index].push(auth);
                        tokio::spawn(async move {
                            let mut body = req.into_body();
                            while let Some(Ok(data)) = body.data().await {
                                let _ = body.flow_control().release_capacity(data.len());
                            }
                            let _ = respond.send_response(
                                http::Response::builder().status(200).body(()).unwrap(),
                                true,
                            );
                        });
                    }
                });
            }
        });
        seen
    }

    /// A provider-token cache on `clock` (renewed after the default 50 minutes), its first token minted now.
    fn token_cache(clock: &crate::provider_token::ManualClock) -> ProviderTokenCache {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
        use base64::Engine as _;
        let der =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        let key = crate::provider_token::SigningKey::from_p8_pem(&pem, "KEYID12345", "TEAMID1234")
            .unwrap();
        ProviderTokenCache::with_clock(
            key,
            crate::provider_token::DEFAULT_REFRESH,
            Arc::new(clock.clone()),
        )
        .unwrap()
    }

    /// APNs refuses a new provider token on a connection within 20 minutes of the last one
    /// (`TooManyProviderTokenUpdates`), counted from when the connection took it. A connection opened when the
    /// shared token A is 45 minutes old does not send its renewal B 5 minutes later: it keeps A. When A is 55
    /// minutes old (10 minutes after the connection took it) the connection can keep neither: its next job comes
    /// back unsent and it closes without a fault, and a new connection sends B.
    #[tokio::test]
    async fn a_connection_does_not_take_a_renewed_token_within_20_minutes_of_adopting_its_own() {
        const MIN: Duration = Duration::from_secs(60);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = authorization_recorder(listener);
        let clock = crate::provider_token::ManualClock::new(1_700_000_000);
        let cache = token_cache(&clock);
        let a = format!("bearer {}", cache.current());
        clock.advance(MIN * 45);
        let opts = || Http2Options {
            auth: Some(cache.clone()),
            ..test_opts(addr, Duration::from_secs(10), Duration::from_secs(30))
        };
        let conn = test_conn_with(addr, opts(), [job(1)]).await;
        assert_eq!(conn.results.wait_for(1).await, [(1, delivered())]);
        clock.advance(MIN * 5);
        send_job(&conn.jobs, 2).await;
        assert_eq!(conn.results.wait_for(2).await[1], (2, delivered()));
        let b = format!("bearer {}", cache.current());
        assert_ne!(a, b, "the shared token was renewed");
        assert_eq!(*seen.lock().unwrap(), [vec![a.clone(), a.clone()]]);
        clock.advance(MIN * 5);
        send_job(&conn.jobs, 3).await;
        assert_eq!(
            conn.results.wait_for(3).await[2],
            (3, PushResult::NotSent(NotSentReason::Closing))
        );
        tokio::time::timeout(Duration::from_secs(20), conn.run)
            .await
            .expect("the connection closes")
            .unwrap();
        assert!(conn.state.is_draining() && conn.state.fault().is_none());
        let next = test_conn_with(addr, opts(), [job(4)]).await;
        assert_eq!(next.results.wait_for(1).await, [(4, delivered())]);
        assert_eq!(*seen.lock().unwrap(), [vec![a.clone(), a], vec![b]]);
        next.run.abort();
    }

    /// A frame-level server the test drives: it sends its SETTINGS (`settings`), acknowledges the client's SETTINGS
    /// and answers its PINGs by itself, hands every frame the client sends to the test ([`DrivenServer::until`]) and
    /// writes what the test gives it ([`DrivenServer::send`]), in order.
    struct DrivenServer {
        frames: tokio::sync::mpsc::UnboundedReceiver<Frame>,
        out: tokio::sync::mpsc::UnboundedSender<Vec<u8>>,
    }

    impl DrivenServer {
        fn start(listener: TcpListener, settings: &'static [(u16, u32)]) -> DrivenServer {
            let (frames_tx, frames) = tokio::sync::mpsc::unbounded_channel();
            let (out, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
            let auto = out.clone();
            tokio::spawn(async move {
                let (sock, _) = listener.accept().await.unwrap();
                let (mut rd, mut wr) = sock.into_split();
                let mut preface = [0u8; 24];
                rd.read_exact(&mut preface).await.unwrap();
                assert_eq!(preface, PREFACE);
                wr.write_all(&settings_frame(settings)).await.unwrap();
                tokio::spawn(async move {
                    while let Some(bytes) = out_rx.recv().await {
                        if wr.write_all(&bytes).await.is_err() {
                            return;
                        }
                    }
                });
                while let Some(f) = read_frame(&mut rd).await {
                    match f.kind {
                        SETTINGS if f.flags & 1 == 0 => {
                            let _ = auto.send(frame(SETTINGS, 1, 0, &[]));
                        }
                        PING if f.flags & 1 == 0 => {
                            let _ = auto.send(frame(PING, 1, 0, &f.payload));
                        }
                        _ => {}
                    }
                    if frames_tx.send(f).is_err() {
                        return;
                    }
                }
            });
            DrivenServer { frames, out }
        }

        /// Reads the client's frames until one `matches` (failing after 20 s, or if the client closes first).
        async fn until(&mut self, what: &str, mut matches: impl FnMut(&Frame) -> bool) -> Frame {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                match tokio::time::timeout_at(deadline, self.frames.recv()).await {
                    Ok(Some(f)) if matches(&f) => return f,
                    Ok(Some(_)) => {}
                    Ok(None) => panic!("the client closed the connection before {what}"),
                    Err(_) => panic!("no {what} within 20 s"),
                }
            }
        }

        fn send(&self, bytes: Vec<u8>) {
            self.out.send(bytes).unwrap();
        }
    }

    fn is_settings_ack(f: &Frame) -> bool {
        f.kind == SETTINGS && f.flags & 1 == 1
    }

    fn ends_a_request(f: &Frame) -> bool {
        f.kind == DATA && f.flags & END_STREAM != 0
    }

    /// APNs lowers its stream limit while streams are open (to one after a rejected notification,
    /// docs/apns-protocol.md#http2-connection). A job is taken only while the server's current limit lets its stream
    /// open at once: with two streams open and the limit lowered to one, the next job stays in the shared queue (where
    /// another connection can take it) instead of waiting inside h2 for a stream slot, and it goes out once the open
    /// streams have ended.
    #[tokio::test]
    async fn a_job_is_not_taken_while_a_lowered_stream_limit_leaves_no_room_for_its_stream() {
        const TEN_STREAMS: &[(u16, u32)] = &[(0x3, 10)];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = DrivenServer::start(listener, TEN_STREAMS);
        let opts = test_opts(addr, Duration::from_secs(10), Duration::from_secs(30));
        let conn = test_conn_with(addr, opts, [job(1), job(2)]).await;
        let (mut acks, mut ended) = (0, Vec::new());
        while ended.len() < 2 {
            let f = server.until("both requests", |_| true).await;
            acks += usize::from(is_settings_ack(&f));
            if ends_a_request(&f) {
                ended.push(f.stream);
            }
        }
        assert_eq!(ended, [1, 3]);
        // Both streams stay open; the limit drops to one, and the client says it has applied it.
        server.send(settings_frame(&[(0x3, 1)]));
        while acks < 2 {
            server
                .until("the lowered limit acknowledged", is_settings_ack)
                .await;
            acks += 1;
        }
        send_job(&conn.jobs, 3).await;
        server.send(status(1, 0x88, true));
        assert_eq!(conn.results.wait_for(1).await, [(1, delivered())]);
        // One stream open, one allowed: the job is still the shared queue's.
        assert_eq!(
            conn.jobs.len(),
            1,
            "a job was taken with no room for its stream"
        );
        server.send(status(3, 0x88, true));
        let f = server.until("the third request", ends_a_request).await;
        assert_eq!(f.stream, 5);
        server.send(status(5, 0x88, true));
        let mut results = conn.results.wait_for(3).await;
        results.sort_by_key(|(tag, _)| *tag);
        assert_eq!(
            results,
            [(1, delivered()), (2, delivered()), (3, delivered())]
        );
        assert!(
            !conn.state.is_draining() && conn.state.fault().is_none(),
            "{:?}",
            conn.state.fault()
        );
        conn.run.abort();
    }

    /// A server may forbid new streams altogether (`SETTINGS_MAX_CONCURRENT_STREAMS` = 0). No job is taken meanwhile:
    /// one handed to h2 then would wait there for a stream with its timers running, and be given up after the
    /// response timeout as if the server gave no flow-control credit, the connection with it. When the server allows
    /// streams again, the job goes out and is delivered.
    #[tokio::test]
    async fn no_job_is_taken_while_the_server_allows_no_stream() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut server = DrivenServer::start(listener, &[]);
        let opts = test_opts(addr, Duration::from_millis(300), Duration::from_secs(1));
        let conn = test_conn_with(addr, opts, [job(1)]).await;
        let f = server.until("the first request", ends_a_request).await;
        // The limit drops to zero before the answer comes.
        let mut out = settings_frame(&[(0x3, 0)]);
        out.extend(status(f.stream, 0x88, true));
        server.send(out);
        assert_eq!(conn.results.wait_for(1).await, [(1, delivered())]);
        send_job(&conn.jobs, 2).await;
        // Nothing in flight: the next PING is the keep-alive one, a second after the answer.
        server
            .until("a PING", |f| f.kind == PING && f.flags & 1 == 0)
            .await;
        assert_eq!(
            conn.jobs.len(),
            1,
            "a job was taken while the server allowed no stream"
        );
        server.send(settings_frame(&[(0x3, 5)]));
        let f = server.until("the second request", ends_a_request).await;
        server.send(status(f.stream, 0x88, true));
        assert_eq!(
            conn.results.wait_for(2).await,
            [(1, delivered()), (2, delivered())]
        );
        assert!(
            !conn.state.is_draining() && conn.state.fault().is_none(),
            "{:?}",
            conn.state.fault()
        );
        conn.run.abort();
    }

    const INTERNAL_ERROR: u32 = 0x2;

    /// A stream reset with another code than `REFUSED_STREAM` is an error of that stream alone (RFC 9113 §5.4.2). Reset
    /// while its body still waited to go out, the request never reached the server in full: the notification is
    /// unsent (sent again at once, no duplicate possible). Reset after the body went out, APNs may have processed it:
    /// its outcome is unknown, as after a timeout. Either way the connection goes on taking work.
    #[tokio::test]
    async fn a_stream_reset_is_an_error_of_that_stream_and_the_connection_goes_on() {
        let conn = scripted_conn(
            NO_WINDOW,
            |addr| test_opts(addr, Duration::from_secs(10), Duration::from_secs(30)),
            vec![job(1)],
            |kind, flags, stream, _| match kind {
                // The first request is reset before its body could go out (no window for it).
                HEADERS if stream == 1 => rst_stream(stream, INTERNAL_ERROR),
                HEADERS => window_update(stream, 1024),
                // The second one is reset once its body is in.
                DATA if flags & END_STREAM != 0 && stream == 3 => {
                    rst_stream(stream, INTERNAL_ERROR)
                }
                DATA if flags & END_STREAM != 0 => status(stream, 0x88, true),
                _ => Vec::new(),
            },
        )
        .await;
        assert_eq!(
            conn.results.wait_for(1).await,
            [(1, PushResult::NotSent(NotSentReason::Refused))]
        );
        assert!(
            !conn.state.is_draining() && conn.state.fault().is_none(),
            "a stream reset made the connection stop taking work: {:?}",
            conn.state.fault()
        );
        send_job(&conn.jobs, 2).await;
        let results = conn.results.wait_for(2).await;
        assert!(
            matches!(&results[1], (2, PushResult::Unanswered { stream, .. }) if stream.stream == 3),
            "{results:?}"
        );
        send_job(&conn.jobs, 3).await;
        assert_eq!(conn.results.wait_for(3).await[2], (3, delivered()));
        assert!(!conn.state.is_draining() && conn.state.fault().is_none());
        conn.run.abort();
    }

    /// A server that resets every stream and answers none (a broken proxy on the way, say): each notification comes
    /// back unsent, and after [`MAX_RESETS_IN_A_ROW`] resets in a row the connection takes no more work, with a fault
    /// that says so, and closes; what waits stays in the shared queue for a new connection.
    #[tokio::test]
    async fn streams_reset_again_and_again_without_an_answer_retire_the_connection() {
        let n = 4 * MAX_RESETS_IN_A_ROW;
        let jobs = (1..=n).map(job).collect();
        let conn = scripted_conn(
            NO_WINDOW,
            |addr| test_opts(addr, Duration::from_secs(10), Duration::from_secs(30)),
            jobs,
            |kind, _, stream, _| match kind {
                HEADERS => rst_stream(stream, INTERNAL_ERROR),
                _ => Vec::new(),
            },
        )
        .await;
        tokio::time::timeout(Duration::from_secs(20), conn.run)
            .await
            .expect("the connection closes")
            .unwrap();
        let results = conn.results.wait_for(MAX_RESETS_IN_A_ROW as usize).await;
        assert!(
            results
                .iter()
                .all(|(_, r)| *r == PushResult::NotSent(NotSentReason::Refused)),
            "{results:?}"
        );
        assert!(results.len() < n as usize, "{}", results.len());
        assert_eq!(conn.jobs.len() + results.len(), n as usize);
        assert!(conn.state.is_draining());
        let (_, fault) = conn.state.fault().expect("a fault is recorded");
        assert_eq!(
            fault,
            format!("{MAX_RESETS_IN_A_ROW} streams in a row reset by the server without an answer")
        );
    }

    /// `429 TooManyProviderTokenUpdates`: APNs refuses the provider token the connection changed to, and would refuse
    /// every request on it the same, while a new connection's first token is no update
    /// (docs/apns-protocol.md#provider-tokens). The connection takes no more work (what waits stays in the shared
    /// queue for another connection), records the fault and closes; the answer is reported as it came.
    #[tokio::test]
    async fn too_many_provider_token_updates_stops_the_connection_taking_work() {
        let conn = scripted_conn(
            &[],
            |addr| test_opts(addr, Duration::from_secs(10), Duration::from_secs(30)),
            vec![job(1)],
            |kind, flags, stream, _| match kind {
                DATA if flags & END_STREAM != 0 => {
                    // `:status 429`: a literal with the static table's `:status` name (index 8).
                    let mut out = frame(HEADERS, END_HEADERS, stream, &[0x08, 3, b'4', b'2', b'9']);
                    out.extend(frame(
                        DATA,
                        END_STREAM,
                        stream,
                        br#"{"reason":"TooManyProviderTokenUpdates"}"#,
                    ));
                    out
                }
                _ => Vec::new(),
            },
        )
        .await;
        assert_eq!(
            conn.results.wait_for(1).await,
            [(
                1,
                PushResult::Rejected(Rejection::Http {
                    status: 429,
                    reason: "TooManyProviderTokenUpdates".to_owned(),
                    timestamp_ms: None,
                })
            )]
        );
        // No idle timeout: the connection closes because it takes no more work.
        tokio::time::timeout(Duration::from_secs(20), conn.run)
            .await
            .expect("the connection closes")
            .unwrap();
        assert!(conn.state.is_draining() && !conn.state.is_proven());
        let (_, fault) = conn.state.fault().expect("a fault is recorded");
        assert_eq!(fault, "429 TooManyProviderTokenUpdates");
    }

    /// An h2 server on `listener`. Its first connection reads every request whole and tells `bodies` so, and
    /// answers them `200` only with `answer_first`; later connections answer every request `200` once its body is
    /// in.
    fn first_connection_holds(
        listener: TcpListener,
        answer_first: bool,
    ) -> tokio::sync::mpsc::UnboundedReceiver<u32> {
        let (bodies_tx, bodies) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((sock, _)) = listener.accept().await {
                let answer = answer_first || !first;
                let bodies_tx = first.then(|| bodies_tx.clone());
                first = false;
                tokio::spawn(async move {
                    let Ok(mut conn) = h2::server::handshake(sock).await else {
                        return;
                    };
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let bodies_tx = bodies_tx.clone();
                        tokio::spawn(async move {
                            let stream = u32::from(respond.stream_id());
                            let mut body = req.into_body();
                            while let Some(Ok(data)) = body.data().await {
                                let _ = body.flow_control().release_capacity(data.len());
                            }
                            if let Some(tx) = &bodies_tx {
                                let _ = tx.send(stream);
                            }
                            if answer {
                                let _ = respond.send_response(
                                    http::Response::builder().status(200).body(()).unwrap(),
                                    true,
                                );
                            } else {
                                // Held unanswered for as long as the test runs.
                                std::future::pending::<()>().await;
                            }
                        });
                    }
                });
            }
        });
        bodies
    }

    /// A connection's task that panics with jobs in hand and in flight leaves none unreported: the requests
    /// written in full are reported as on a lost connection (`Unanswered`: APNs may have processed them), the one
    /// in hand comes back unsent, and what it had not taken stays in the queue, for a new connection that delivers
    /// it. The connection shows as closed, with nothing in flight and its fault naming the panic.
    #[tokio::test]
    async fn a_panic_of_the_connections_task_reports_every_job_it_held() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut bodies = first_connection_holds(listener, false);
        let opts = Arc::new(test_opts(
            addr,
            Duration::from_secs(60),
            Duration::from_secs(60),
        ));
        let (jobs_tx, jobs) = async_channel::unbounded();
        let results = Arc::new(Results::default());
        let (mut dispatcher, state) = test_dispatcher(
            addr,
            opts.clone(),
            jobs.clone(),
            results.clone(),
            LIVENESS_THRESHOLD,
            None,
        )
        .await;
        dispatcher.panic_at = Some(PanicAt {
            job: 3,
            place: PanicPlace::Launch,
        });
        let run = tokio::spawn(dispatcher.run());
        for tag in 1..=2 {
            jobs_tx
                .send(Job {
                    request: request(tag as u8),
                    tag,
                })
                .await
                .unwrap();
        }
        // Both requests reached the server in full, and stay unanswered.
        for _ in 0..2 {
            tokio::time::timeout(Duration::from_secs(20), bodies.recv())
                .await
                .expect("a request reaches the server")
                .unwrap();
        }
        // The third job makes the task panic as it launches it; the other two wait in the queue.
        for tag in 3..=5 {
            jobs_tx
                .send(Job {
                    request: request(tag as u8),
                    tag,
                })
                .await
                .unwrap();
        }
        let mut reported = results.wait_for(3).await;
        reported.sort_by_key(|(tag, _)| *tag);
        assert!(
            matches!(&reported[0], (1, PushResult::Unanswered { stream, .. }) if stream.stream == 1),
            "{reported:?}"
        );
        assert!(
            matches!(&reported[1], (2, PushResult::Unanswered { stream, .. }) if stream.stream == 3),
            "{reported:?}"
        );
        assert_eq!(
            reported[2],
            (3, PushResult::NotSent(NotSentReason::ConnectionLost))
        );
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the connection's task ends")
            .expect("the connection's task ends without a panic");
        assert!(state.is_closed() && state.is_draining());
        assert_eq!(state.in_flight(), 0);
        let (_, fault) = state.fault().expect("a fault is recorded");
        assert!(fault.contains("panicked"), "{fault}");
        assert_eq!(jobs.len(), 2, "the jobs not taken stay in the queue");
        // A new connection takes what waits.
        let (dispatcher, _) =
            test_dispatcher(addr, opts, jobs, results.clone(), LIVENESS_THRESHOLD, None).await;
        let _second = tokio::spawn(dispatcher.run());
        let mut reported = results.wait_for(5).await;
        reported.sort_by_key(|(tag, _)| *tag);
        assert_eq!(reported[3..], [(4, delivered()), (5, delivered())]);
        assert_eq!(results.wait_for(5).await.len(), 5, "one report per job");
    }

    /// A panic in one stream's own work (its exchange with the server) after its answer came is caught there: its
    /// job is reported with that answer (reported as unanswered, a delivered notification would be sent again), the
    /// connection closes as if lost, and the next job goes out on a new connection.
    #[tokio::test]
    async fn a_panic_of_a_streams_work_reports_its_job_and_closes_the_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _bodies = first_connection_holds(listener, true);
        let opts = Arc::new(test_opts(
            addr,
            Duration::from_secs(60),
            Duration::from_secs(60),
        ));
        let (jobs_tx, jobs) = async_channel::unbounded();
        let results = Arc::new(Results::default());
        let (mut dispatcher, state) = test_dispatcher(
            addr,
            opts.clone(),
            jobs.clone(),
            results.clone(),
            LIVENESS_THRESHOLD,
            None,
        )
        .await;
        dispatcher.panic_at = Some(PanicAt {
            job: 2,
            place: PanicPlace::Stream,
        });
        let run = tokio::spawn(dispatcher.run());
        jobs_tx
            .send(Job {
                request: request(1),
                tag: 1,
            })
            .await
            .unwrap();
        assert_eq!(results.wait_for(1).await, [(1, delivered())]);
        jobs_tx
            .send(Job {
                request: request(2),
                tag: 2,
            })
            .await
            .unwrap();
        assert_eq!(results.wait_for(2).await[1], (2, delivered()));
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the connection's task ends")
            .expect("the connection's task ends without a panic");
        assert!(state.is_closed() && state.in_flight() == 0);
        let (_, fault) = state.fault().expect("a fault is recorded");
        assert!(
            fault.contains("a test made the stream's task panic"),
            "{fault}"
        );
        jobs_tx
            .send(Job {
                request: request(3),
                tag: 3,
            })
            .await
            .unwrap();
        let (dispatcher, _) =
            test_dispatcher(addr, opts, jobs, results.clone(), LIVENESS_THRESHOLD, None).await;
        let _second = tokio::spawn(dispatcher.run());
        assert_eq!(results.wait_for(3).await[2], (3, delivered()));
    }

    /// A connection's dispatcher on a new connection to `addr`, which panics as `panic_at` says: the sender of
    /// its queue, its reports, its state and its task.
    async fn panicking_conn(
        addr: std::net::SocketAddr,
        panic_at: PanicAt,
    ) -> (
        async_channel::Sender<Job<u32>>,
        Arc<Results>,
        Arc<ConnectionState>,
        tokio::task::JoinHandle<()>,
    ) {
        let opts = Arc::new(test_opts(
            addr,
            Duration::from_secs(60),
            Duration::from_secs(60),
        ));
        let (jobs_tx, jobs) = async_channel::unbounded();
        let results = Arc::new(Results::default());
        let (mut dispatcher, state) =
            test_dispatcher(addr, opts, jobs, results.clone(), LIVENESS_THRESHOLD, None).await;
        dispatcher.panic_at = Some(panic_at);
        (jobs_tx, results, state, tokio::spawn(dispatcher.run()))
    }

    /// Sends the jobs `tags` to a connection's queue, one after another, each once the one before was reported.
    async fn one_by_one(jobs: &async_channel::Sender<Job<u32>>, results: &Results, tags: &[u32]) {
        for (n, &tag) in tags.iter().enumerate() {
            jobs.send(Job {
                request: request(tag as u8),
                tag,
            })
            .await
            .unwrap();
            results.wait_for(n + 1).await;
        }
    }

    /// The connection's task ended without a panic, its fault naming `panic`.
    async fn closed_after(run: tokio::task::JoinHandle<()>, state: &ConnectionState, panic: &str) {
        tokio::time::timeout(Duration::from_secs(20), run)
            .await
            .expect("the connection's task ends")
            .expect("the connection's task ends without a panic");
        assert!(state.is_closed() && state.in_flight() == 0);
        let (_, fault) = state.fault().expect("a fault is recorded");
        assert!(fault.contains(panic), "{fault}");
    }

    /// A panic of the connection's task after a stream's answer came and before it was reported leaves the answer
    /// to be reported as it came: a delivered notification is reported delivered (as unanswered, it would be
    /// sent again), and the connection closes as if lost.
    #[tokio::test]
    async fn an_answer_in_hand_when_the_connections_task_panics_is_reported_as_it_came() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _bodies = first_connection_holds(listener, true);
        let (jobs, results, state, run) = panicking_conn(
            addr,
            PanicAt {
                job: 2,
                place: PanicPlace::Answer,
            },
        )
        .await;
        one_by_one(&jobs, &results, &[1, 2]).await;
        assert_eq!(
            results.wait_for(2).await,
            [(1, delivered()), (2, delivered())]
        );
        closed_after(
            run,
            &state,
            "a test made the connection's task panic at an answer",
        )
        .await;
        assert_eq!(results.wait_for(2).await.len(), 2, "one report per job");
    }

    /// A stream's work whose drop panics once it has ended (as h2's stream handles panic when dropped after a
    /// panic poisoned h2's lock, unless a panic is unwinding) is dropped inside a catch: its job is reported with
    /// the answer it got, never lost with the panic, and the connection closes as if lost without its task
    /// panicking.
    #[tokio::test]
    async fn a_panic_dropping_a_streams_work_still_reports_its_job() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _bodies = first_connection_holds(listener, true);
        let (jobs, results, state, run) = panicking_conn(
            addr,
            PanicAt {
                job: 2,
                place: PanicPlace::Drop,
            },
        )
        .await;
        one_by_one(&jobs, &results, &[1, 2]).await;
        assert_eq!(
            results.wait_for(2).await,
            [(1, delivered()), (2, delivered())]
        );
        closed_after(run, &state, "a test made dropping the stream's work panic").await;
    }

    /// A stream whose work panics while its body waits for flow-control credit never had its request written in
    /// full: its job comes back unsent (lost with the connection), not as a request APNs may have processed.
    #[tokio::test]
    async fn a_panic_while_a_body_waits_for_credit_hands_its_job_back_unsent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            // No window for any request body.
            let Ok(mut conn) = h2::server::Builder::new()
                .initial_window_size(0)
                .handshake::<_, Bytes>(sock)
                .await
            else {
                return;
            };
            let mut held = Vec::new();
            while let Some(Ok(stream)) = conn.accept().await {
                held.push(stream);
            }
        });
        let (jobs, results, state, run) = panicking_conn(
            addr,
            PanicAt {
                job: 1,
                place: PanicPlace::CreditWait,
            },
        )
        .await;
        one_by_one(&jobs, &results, &[1]).await;
        assert_eq!(
            results.wait_for(1).await,
            [(1, PushResult::NotSent(NotSentReason::ConnectionLost))]
        );
        closed_after(
            run,
            &state,
            "a test made the stream's task panic while its body waited for credit",
        )
        .await;
    }
}
