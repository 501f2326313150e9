//! Provider-side APNs connections: one TLS connection speaking either HTTP/2 ([`http2`]) or the legacy binary
//! protocol ([`legacy`]).
//!
//! A connection pulls [`Job`]s from a queue shared by every connection of its pool (so work spreads by itself
//! across connections that have room), sends them, and reports each one's [`PushResult`] exactly once to an
//! [`OutcomeSink`]. A job APNs did not process (stream refused, above the last stream id of a GOAWAY, stream reset
//! or connection lost before the request was written in full) comes back as [`PushResult::NotSent`] so the caller
//! can requeue it without counting an attempt; one written in full whose answer never came may have been processed,
//! and says so ([`PushResult::TimedOut`], [`PushResult::Unanswered`]). The caller's tag `T` travels with the job and
//! comes back untouched.

mod acked;
pub mod connect;
pub mod http2;
pub mod legacy;
pub mod limit;
pub(crate) mod preface;
mod stall;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::binary::Status;
use crate::outcome::{FailureClass, classify_binary, classify_http};
use crate::push::{ApnsId, Priority, PushType};
use crate::token_hex::DeviceToken;

/// Everything a connection needs to send one notification.
#[derive(Debug, Clone)]
pub struct PushRequest {
    pub token: DeviceToken,
    /// `apns-topic`; `None` lets a single-topic certificate supply it.
    pub topic: Option<Arc<str>>,
    pub push_type: Option<PushType>,
    pub priority: Option<Priority>,
    /// `apns-expiration` (epoch seconds; 0 = deliver once or drop). `None` leaves it to APNs' storage policy.
    pub expiration: Option<u32>,
    pub collapse_id: Option<Arc<str>>,
    /// `apns-id`, a canonical UUID.
    pub apns_id: Option<ApnsId>,
    pub payload: Bytes,
}

/// A request and the caller's tag, which comes back with the result.
#[derive(Debug)]
pub struct Job<T> {
    pub request: PushRequest,
    pub tag: T,
}

/// The shared queue connections pull from.
pub type JobReceiver<T> = async_channel::Receiver<Job<T>>;
/// The sending side of [`JobReceiver`].
pub type JobSender<T> = async_channel::Sender<Job<T>>;

/// How one notification ended on one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushResult {
    /// HTTP/2: a 200 answer. Binary: no error packet within the response window. The transaction id is the
    /// `apns-id` APNs answered with (HTTP/2) or the notification identifier (binary). `unique_id` is the
    /// `apns-unique-id` APNs adds in the development environment (HTTP/2 only), to look the push up in Apple's
    /// delivery log.
    Delivered {
        transaction_id: Option<String>,
        unique_id: Option<String>,
    },
    /// APNs refused this notification.
    Rejected(Rejection),
    /// HTTP/2 `403 ExpiredProviderToken`: the provider token the request carried was too old. `renewed` says
    /// whether the token in force is a newer one by now, so that a retry at once can succeed; if not (the token is
    /// younger than 20 minutes by herald's clock, which APNs disagrees with), a retry at once would be refused
    /// again.
    TokenExpired { rejection: Rejection, renewed: bool },
    /// APNs did not process it (refused stream, above the last stream id of a GOAWAY, stream reset or connection
    /// lost before the request was written in full; binary: written after a failed notification, or in the window
    /// of a connection lost without an error packet): send it again without counting an attempt.
    NotSent(NotSentReason),
    /// Sent, but no answer came within the response timeout: whether APNs accepted it is unknown. On HTTP/2 the
    /// stream was cancelled (`RST_STREAM CANCEL`) before this report, so it can no longer be answered.
    TimedOut { cancelled: Option<CancelledStream> },
    /// HTTP/2: sent in full, then the stream ended without an answer: the connection was lost (even after a GOAWAY
    /// whose last stream id covers it), or the stream was reset for another reason than `REFUSED_STREAM`. APNs
    /// may have processed it (RFC 9113 §6.8), so, as with [`PushResult::TimedOut`], whether it was accepted is
    /// unknown. `cause` says how the stream ended.
    Unanswered {
        stream: CancelledStream,
        cause: String,
    },
}

/// An HTTP/2 stream named for the logs: one herald cancelled after its response timeout, or one that ended
/// without an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CancelledStream {
    /// The connection's number (as in the connection logs).
    pub connection: u64,
    pub stream: u32,
}

/// A refusal by APNs, in either protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    Http {
        status: u16,
        reason: String,
        timestamp_ms: Option<u64>,
    },
    Binary {
        status: Status,
        /// The notification identifier it was sent with (what the error packet names); `None` when it could not
        /// be encoded, so was never sent.
        identifier: Option<u32>,
    },
}

impl Rejection {
    /// What the delivery engine should do about it (one table: [`crate::outcome`]).
    pub fn class(&self) -> FailureClass {
        match self {
            Rejection::Http { status, reason, .. } => classify_http(*status, Some(reason.as_str())),
            Rejection::Binary { status, .. } => classify_binary(*status),
        }
    }

    /// The binary notification identifier the rejected notification was sent with (`None` on HTTP/2, where the
    /// answer's `apns-id` names it).
    pub fn identifier(&self) -> Option<u32> {
        match self {
            Rejection::Http { .. } => None,
            Rejection::Binary { identifier, .. } => *identifier,
        }
    }

    /// The status code as logged: the HTTP status or the binary status byte.
    pub fn code(&self) -> u16 {
        match self {
            Rejection::Http { status, .. } => *status,
            Rejection::Binary { status, .. } => u16::from(status.code()),
        }
    }

    /// The reason text as logged.
    pub fn text(&self) -> &str {
        match self {
            Rejection::Http { reason, .. } => reason,
            Rejection::Binary { status, .. } => status.apple_text(),
        }
    }

    /// The reason as counters name it: one of APNs' documented reasons (or binary status texts), else
    /// [`UNRECOGNIZED_REASON`]. The logged text may be anything the server sent (a proxy's HTML page, a made-up
    /// reason); counting under it would let a misbehaving server add a series per answer.
    pub fn label(&self) -> &'static str {
        match self {
            Rejection::Http { reason, .. } => reason
                .parse::<crate::reason::Reason>()
                .map_or(UNRECOGNIZED_REASON, crate::reason::Reason::as_str),
            Rejection::Binary { status, .. } => status.apple_text(),
        }
    }
}

/// The counter label of an HTTP/2 rejection whose reason is not one APNs documents ([`Rejection::label`]).
pub const UNRECOGNIZED_REASON: &str = "UnrecognizedReason";

/// Why a job was handed back unsent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotSentReason {
    /// The server refused the stream (RST_STREAM REFUSED_STREAM), reset it with another code before the request
    /// was written in full (HTTP/2: APNs never had the whole request), or announced GOAWAY before processing it.
    Refused,
    /// The connection failed or closed: on HTTP/2 before the request was written in full; on the binary protocol
    /// with the notification in the response window and no error packet (docs/apns-protocol.md#binary-error-packet).
    ConnectionLost,
    /// Binary protocol: written after a notification APNs rejected, so APNs discarded it.
    AfterRejected,
    /// The connection is closing (idle, error, reload) and did not send it.
    Closing,
}

/// Whether an HTTP/2 stream that ended with `e` was not processed by the server: it refused the stream
/// (`RST_STREAM(REFUSED_STREAM)`) or left it above the last stream id of its GOAWAY (RFC 9113 §8.7,
/// docs/apns-protocol.md#http2-connection). Any other end (a GOAWAY h2 raised itself on a protocol error, a lost
/// connection) says nothing of the kind.
pub(crate) fn not_processed(e: &h2::Error) -> bool {
    (e.is_go_away() && e.is_remote()) || e.reason() == Some(h2::Reason::REFUSED_STREAM)
}

/// Where a connection reports results. Called once per job, from the connection's task: keep it cheap.
pub trait OutcomeSink<T>: Send + Sync + 'static {
    fn report(&self, tag: T, result: PushResult, conn: &ConnectionInfo);
}

/// Facts about the connection a result came from, for logs.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub remote: SocketAddr,
    pub id: u64,
}

/// Live state of one connection, shared with its pool.
#[derive(Debug)]
pub struct ConnectionState {
    in_flight: AtomicUsize,
    capacity: AtomicUsize,
    /// The adaptive in-flight limit (HTTP/2); 0 = none, the capacity applies.
    limit: AtomicUsize,
    closed: AtomicBool,
    draining: AtomicBool,
    /// The capacity is the server's settled limit (see [`ConnectionState::is_saturated`]).
    settled: AtomicBool,
    /// The adaptive limit is still in its slow start and a full round of its answers came back fast, none slow
    /// (set by the HTTP/2 connection's ramp check; see [`ConnectionState::is_ramping_up`]).
    ramping: AtomicBool,
    /// When the connection opened.
    opened: Instant,
    /// APNs has judged a notification on it (see [`ConnectionState::is_proven`]).
    proven: AtomicBool,
    /// When the connection stopped taking work through a fault (see [`ConnectionState::fault`]): milliseconds after
    /// it opened, plus one; 0 while there was none.
    fault_after_ms: AtomicU64,
    /// What that fault was.
    fault: Mutex<Option<String>>,
    /// Streams a GOAWAY from the server covers were in flight at the fault (see
    /// [`ConnectionState::awaits_covered_answers`]).
    awaits_covered: AtomicBool,
}

impl Default for ConnectionState {
    fn default() -> Self {
        ConnectionState {
            in_flight: AtomicUsize::new(0),
            capacity: AtomicUsize::new(0),
            limit: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            settled: AtomicBool::new(false),
            ramping: AtomicBool::new(false),
            opened: Instant::now(),
            proven: AtomicBool::new(false),
            fault_after_ms: AtomicU64::new(0),
            fault: Mutex::new(None),
            awaits_covered: AtomicBool::new(false),
        }
    }
}

impl ConnectionState {
    /// The state of a connection whose capacity is known from the start (binary: the response window).
    pub fn new(initial_capacity: usize) -> Arc<Self> {
        let state = ConnectionState::unsettled(initial_capacity);
        state.set_settled();
        state
    }
    /// The state of an HTTP/2 connection, whose capacity is only settled once the server has answered (APNs allows
    /// one stream on a token connection until a request with a valid provider token got through).
    pub fn unsettled(initial_capacity: usize) -> Arc<Self> {
        let state = ConnectionState::default();
        state.capacity.store(initial_capacity, Ordering::Relaxed);
        Arc::new(state)
    }
    /// Notifications sent and not yet answered (HTTP/2) or still inside the response window (binary).
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
    /// How many may be in flight: the server's stream limit (HTTP/2) or the window size (binary).
    pub fn capacity(&self) -> usize {
        self.capacity.load(Ordering::Relaxed)
    }
    /// How many it keeps in flight now: the adaptive limit on HTTP/2 (see [`limit`]), never above the capacity.
    pub fn limit(&self) -> usize {
        let capacity = self.capacity();
        match self.limit.load(Ordering::Relaxed) {
            0 => capacity,
            l => l.min(capacity),
        }
    }
    /// True when the server's own limit is what holds the connection back: it carries all the server allows.
    /// A connection held back by its adaptive limit (the server is slow) is not saturated, so slowness does not
    /// open more connections; nor is one whose server has not answered yet, whose one-stream limit before the
    /// provider token is accepted says nothing about what it will carry.
    pub fn is_saturated(&self) -> bool {
        self.settled.load(Ordering::Relaxed) && self.in_flight() >= self.capacity().max(1)
    }
    /// True when the connection uses all its adaptive limit while that limit is still ramping up (a full round of
    /// answers came fast and none slow, and it grows each round trip): it will carry more, and only time holds it
    /// back, not the server.
    pub fn is_ramping_up(&self) -> bool {
        self.settled.load(Ordering::Relaxed)
            && self.ramping.load(Ordering::Relaxed)
            && self.in_flight() >= self.limit().max(1)
    }
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
    /// Ask the connection to finish what it carries and close (configuration reload, pool shrink).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
    }
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
    pub(crate) fn set_in_flight(&self, n: usize) {
        self.in_flight.store(n, Ordering::Relaxed);
    }
    pub(crate) fn set_limit(&self, n: usize) {
        self.limit.store(n, Ordering::Relaxed);
    }
    pub(crate) fn set_capacity(&self, n: usize) {
        self.capacity.store(n, Ordering::Relaxed);
    }
    pub(crate) fn set_ramping(&self, ramping: bool) {
        self.ramping.store(ramping, Ordering::Relaxed);
    }
    /// The server has answered: its stream limit is the one it means.
    pub(crate) fn set_settled(&self) {
        self.settled.store(true, Ordering::Relaxed);
    }
    pub(crate) fn set_closed(&self) {
        self.closed.store(true, Ordering::Release);
    }
    /// How long ago the connection opened.
    pub fn age(&self) -> Duration {
        self.opened.elapsed()
    }
    /// True once APNs has accepted a notification on the connection, or refused one for a fault of the
    /// notification itself (a bad device token, say): APNs processes what the connection carries. A refusal of the
    /// connection's credentials or of the server's state (`ExpiredProviderToken`, 5xx, 429) proves nothing.
    pub fn is_proven(&self) -> bool {
        self.proven.load(Ordering::Relaxed)
    }
    pub(crate) fn set_proven(&self) {
        if !self.proven.load(Ordering::Relaxed) {
            self.proven.store(true, Ordering::Relaxed);
        }
    }
    /// Why, and how long after opening, the connection stopped taking work through a fault of the server or the
    /// network (a GOAWAY, the connection lost, `ExpiredProviderToken`, `503 Shutdown`,
    /// `429 TooManyProviderTokenUpdates`, streams reset one after another, a PING unanswered), if it did; an idle
    /// close, a drain the pool asked for or a closed queue is no fault. The pool counts a young
    /// connection's fault as a failed connection attempt unless APNs accepts a notification on it, waiting for the
    /// answers of the streams a GOAWAY covers first ([`ConnectionState::awaits_covered_answers`],
    /// docs/apns-protocol.md#http2-connection).
    pub fn fault(&self) -> Option<(Duration, String)> {
        let after = self.fault_after_ms.load(Ordering::Acquire);
        if after == 0 {
            return None;
        }
        let why = lock(&self.fault).clone().unwrap_or_default();
        Some((Duration::from_millis(after - 1), why))
    }
    /// True when the connection's fault was a GOAWAY from the server while streams its last stream id covers
    /// were in flight: the server processes those, and an accepted one proves the connection, so whether the
    /// connection failed is known only once they have ended (the connection has closed). Set before the fault,
    /// so read after [`ConnectionState::fault`] it is never behind it.
    pub fn awaits_covered_answers(&self) -> bool {
        self.awaits_covered.load(Ordering::Relaxed)
    }
    pub(crate) fn set_awaits_covered_answers(&self) {
        self.awaits_covered.store(true, Ordering::Relaxed);
    }
    /// Records the connection's first fault (later ones are consequences of it).
    pub(crate) fn set_fault(&self, why: impl FnOnce() -> String) {
        if self.fault_after_ms.load(Ordering::Acquire) != 0 {
            return;
        }
        let mut slot = lock(&self.fault);
        if slot.is_none() {
            *slot = Some(why());
            let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
            self.fault_after_ms
                .store(ms.saturating_add(1), Ordering::Release);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: String,
        source: std::io::Error,
    },
    #[error("resolving {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("{host} resolved to no address")]
    NoAddress { host: String },
    #[error("TLS handshake with {host}: {source}")]
    Tls {
        host: String,
        source: std::io::Error,
    },
    #[error("invalid server name {0:?}")]
    ServerName(String),
    #[error("HTTP/2 handshake with {host}: {source}")]
    Handshake { host: String, source: h2::Error },
    /// The server's HTTP/2 connection preface (its first SETTINGS frame) did not come as it should.
    #[error("HTTP/2 handshake with {host}: {detail}")]
    Preface { host: String, detail: String },
    #[error("connection to {host} timed out after {secs} s")]
    Timeout { host: String, secs: u64 },
    /// The server accepted the TCP connection but did not complete the TLS handshake within the connect timeout.
    #[error(
        "TLS handshake with {host} timed out ({secs} s connect timeout): the server accepted the TCP connection \
         but did not complete the handshake"
    )]
    TlsTimeout { host: String, secs: u64 },
    /// The transport (TLS) was up, but the server's HTTP/2 connection preface (its first SETTINGS frame) did not
    /// come within the timeout.
    #[error(
        "HTTP/2 handshake with {host} timed out after {after:?}: the connection is up but the server sent no \
         HTTP/2 SETTINGS"
    )]
    PrefaceTimeout { host: String, after: Duration },
    /// The server does not speak HTTP/2: it chose another ALPN protocol than `h2`, or chose none and did not
    /// answer the HTTP/2 connection preface as HTTP/2 (an HTTP/1 answer, say).
    #[error("{host} does not speak HTTP/2: {detail}")]
    NotHttp2 { host: String, detail: String },
    /// A connection that opened and then stopped taking work through a fault within its first seconds, before
    /// APNs had accepted a notification on it ([`ConnectionState::fault`]): the pool counts it as a failed
    /// connection attempt (docs/apns-protocol.md#http2-connection).
    #[error(
        "the connection stopped taking work {after_ms} ms after it opened, before APNs accepted a notification on it: {cause}"
    )]
    EndedEarly { after_ms: u64, cause: String },
    /// The attempt to connect panicked (a defect, in herald or a library it uses): it counts as a failed attempt.
    #[error("connecting to {host}: the attempt panicked: {message}")]
    Panicked { host: String, message: String },
}

/// What a caught panic said: its message when it carried one (`panic!` with text), else a word that it had none.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Runs `work`, catching a panic of any of its polls: `Err` with the panic's message ([`panic_message`]) when it
/// panicked; the future is dropped then, not polled again. The catch costs nothing while nothing panics.
pub async fn catch_panic<F: std::future::Future>(work: F) -> Result<F::Output, String> {
    use futures_util::FutureExt;
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|panic| panic_message(&*panic))
}

/// Marks a connection's state closed, with nothing in flight, when dropped: a connection's task holds one, so that
/// its pool learns that the connection is gone however the task ends (a panic no guard caught, the runtime
/// shutting down), and opens another on demand.
pub(crate) struct ClosedOnDrop(pub(crate) Arc<ConnectionState>);

impl Drop for ClosedOnDrop {
    fn drop(&mut self) {
        self.0.set_in_flight(0);
        self.0.set_closed();
    }
}

/// What the connection tests collect: every result reported, by tag.
#[cfg(test)]
pub(crate) mod test_sink {
    use std::time::Duration;

    use super::{ConnectionInfo, OutcomeSink, PushResult};

    /// Results by tag, as a connection reports them.
    #[derive(Default)]
    pub(crate) struct Results(
        std::sync::Mutex<Vec<(u32, PushResult)>>,
        tokio::sync::Notify,
    );

    impl OutcomeSink<u32> for Results {
        fn report(&self, tag: u32, result: PushResult, _conn: &ConnectionInfo) {
            self.0.lock().unwrap().push((tag, result));
            self.1.notify_one();
        }
    }

    impl Results {
        /// The results once there are `n` of them (failing after 20 s), in the order they were reported.
        pub(crate) async fn wait_for(&self, n: usize) -> Vec<(u32, PushResult)> {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                let notified = self.1.notified();
                if self.0.lock().unwrap().len() >= n {
                    return self.0.lock().unwrap().clone();
                }
                tokio::time::timeout_at(deadline, notified)
                    .await
                    .unwrap_or_else(|_| {
                        panic!("{n} results never came: {:?}", self.0.lock().unwrap())
                    });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_labels_are_documented_reasons_only() {
        let http = |reason: &str| Rejection::Http {
            status: 400,
            reason: reason.to_owned(),
            timestamp_ms: None,
        };
        assert_eq!(http("BadDeviceToken").label(), "BadDeviceToken");
        assert_eq!(http("BadDeviceToken").text(), "BadDeviceToken");
        // A proxy's page or an invented reason: logged as sent, counted under one label.
        let page = http("<html><body>502 Bad Gateway</body></html>");
        assert_eq!(page.label(), UNRECOGNIZED_REASON);
        assert_eq!(page.text(), "<html><body>502 Bad Gateway</body></html>");
        assert_eq!(http("badDeviceToken").label(), UNRECOGNIZED_REASON);
        let binary = Rejection::Binary {
            status: Status::InvalidToken,
            identifier: Some(7),
        };
        assert_eq!(binary.identifier(), Some(7));
        assert_eq!(binary.label(), binary.text());
    }
}
