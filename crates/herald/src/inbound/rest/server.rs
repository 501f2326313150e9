//! Runs the REST application on a TCP listener: plain HTTP/1.1 and HTTP/2 (prior knowledge), or HTTPS with
//! ALPN when the listener has `tls_certificate` / `tls_key`. Each connection gets an id and its peer address
//! for the handlers; on shutdown the listener stops accepting and in-flight requests finish.
//!
//! A connection from an address the listener's `always_allow` / `always_deny` lists refuse ([`DoorLimits`]'s
//! `addresses`) is refused as soon as it is accepted, with a `403` where the connection is plain HTTP (closed over
//! TLS): it takes no slot and no TLS handshake.
//! Every other connection is held to the listener's [`DoorLimits`]: it is refused at connect beyond
//! `max_connections` (in all, or from its client address) with a `503` where the connection is plain HTTP; it is
//! closed when it sends nothing within `first_byte_timeout`, when a request's headers take longer than
//! `header_timeout` from its first byte, or when it stays idle between requests for `keepalive_timeout`; a request
//! body that takes longer than `body_timeout` fails with `408`. A connection with a request open is not idle. An
//! HTTP/2 connection, once it carried a request, is held to `keepalive_timeout` alone while idle (the PINGs and
//! WINDOW_UPDATEs an idle client sends are no request's head), and is told with GOAWAY before the watchdog closes it
//! idle; it then closes by itself once its answers are written out, or, with no request open, after the
//! [`send_timeout`] its client has to take them. While the handler works on a request (reading its body, making the
//! notifications durable) nothing is expected of the connection; once an answer is ready to send, the connection is
//! closed when it has sent nothing for [`send_timeout`] (the longest of `keepalive_timeout`, `body_timeout` and
//! [`SEND_TIMEOUT_MIN`]) since then: a client that never takes its answer (an HTTP/2 client that leaves its
//! flow-control window at 0, an HTTP/1 client that does not read) cannot hold the connection for good, while an
//! answer sent slowly, or the dashboard's event stream (a keep-alive every 15 s), goes on as long as bytes leave. An
//! HTTP/2 connection carries at most
//! [`HTTP2_MAX_CONCURRENT_STREAMS`] requests at once, so that it holds no more request bodies in memory than that
//! many HTTP/1 connections would.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use herald_conf::ListenerSettings;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::{ConnId, RestState, router};
use crate::inbound::accept::Intake;
use crate::inbound::doors::{AddressLists, Busy, ConnGuard, ConnLimiter, DoorLimits};

/// Why the listener's TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error(
        "tls_key is set but tls_certificate is not; set tls_certificate (its file may hold the key too)"
    )]
    Incomplete,
    #[error(transparent)]
    Identity(crate::inbound::smtp::tls::TlsSetupError),
    #[error("the certificate and key do not make a TLS server identity: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The listener's TLS server configuration, when it has `tls_certificate` and `tls_key` (aws-lc-rs, ALPN `h2`
/// and `http/1.1`).
pub fn tls_config(
    settings: &ListenerSettings,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsSetupError> {
    Ok(tls_server(settings)?.map(|(config, _)| config))
}

/// A listener's certificate and key, which a reload replaces in place when their files were renewed: handshakes
/// from then on present the new one, while the listener keeps its socket, its connections and its state.
#[derive(Debug)]
pub struct ListenerCertificate(std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>);

impl ListenerCertificate {
    /// Puts `key` in force for the handshakes to come.
    pub fn replace(&self, key: Arc<rustls::sign::CertifiedKey>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = key;
    }
}

impl rustls::server::ResolvesServerCert for ListenerCertificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.0.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// A listener's TLS configuration and the handle that replaces its certificate.
pub type TlsServer = (Arc<rustls::ServerConfig>, Arc<ListenerCertificate>);

/// [`tls_config`], with the handle that replaces its certificate.
pub fn tls_server(settings: &ListenerSettings) -> Result<Option<TlsServer>, TlsSetupError> {
    let Some(key) = certified_key(settings)? else {
        return Ok(None);
    };
    let certificate = Arc::new(ListenerCertificate(std::sync::RwLock::new(key)));
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certificate.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some((Arc::new(config), certificate)))
}

/// The certificate chain and key the listener's `tls_certificate` and `tls_key` hold, checked to belong together.
pub fn certified_key(
    settings: &ListenerSettings,
) -> Result<Option<Arc<rustls::sign::CertifiedKey>>, TlsSetupError> {
    match (&settings.tls_certificate, &settings.tls_key) {
        (None, None) => Ok(None),
        // herald-conf refuses this when the configuration loads.
        (None, Some(_)) => Err(TlsSetupError::Incomplete),
        // One rule for every listener: without tls_key, the certificate file holds the key too.
        (Some(cert), key) => crate::inbound::smtp::tls::certified_key(cert, key.as_deref())
            .map(Some)
            .map_err(TlsSetupError::Identity),
    }
}

/// Serves the REST API of one `http_listener` `listen` stanza until `shutdown` is cancelled, then waits for
/// in-flight requests to finish. The listener is held to the default [`DoorLimits`] and to its own address lists,
/// at connect as on each request.
pub async fn serve(
    listener: TcpListener,
    settings: ListenerSettings,
    intake: Arc<Intake>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let limits = Arc::new(DoorLimits {
        addresses: Some(AddressLists::of(&settings)),
        ..DoorLimits::default()
    });
    let app = router(RestState::new(settings, intake.clone()).with_limits(limits.clone()));
    serve_limited(listener, app, intake, tls, limits, shutdown).await
}

/// [`serve`] for an application built with [`super::router_with`] (extra routes), with the default limits: no
/// address lists at connect (the application's still refuse each request with `403`).
pub async fn serve_app(
    listener: TcpListener,
    app: Router,
    intake: Arc<Intake>,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let limits = Arc::new(DoorLimits::default());
    serve_limited(listener, app, intake, tls, limits, shutdown).await
}

/// [`serve_app`] held to `limits`: a connection from an address their `addresses` refuse is refused at connect
/// ([`DoorLimits::from_config`] gives a listener its own lists).
pub async fn serve_limited(
    listener: TcpListener,
    app: Router,
    intake: Arc<Intake>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Arc<DoorLimits>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    serve_until(listener, app, intake, tls, limits, shutdown, None).await
}

/// [`serve_limited`] that sends on `closed` as soon as it stopped accepting and closed its socket, before the
/// requests still open finish (within [`DRAIN`]): from then on the address can be bound again, by a listener that
/// replaces this one at a reload.
pub async fn serve_limited_closing(
    listener: TcpListener,
    app: Router,
    intake: Arc<Intake>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Arc<DoorLimits>,
    shutdown: CancellationToken,
    closed: tokio::sync::oneshot::Sender<()>,
) -> io::Result<()> {
    serve_until(listener, app, intake, tls, limits, shutdown, Some(closed)).await
}

/// How long a stopped listener's open requests are given to finish; the connections still open then are left to
/// their own timeouts. Answers that never end by themselves (the dashboard's event stream) end when the listener
/// stops.
pub const DRAIN: Duration = Duration::from_secs(30);

async fn serve_until(
    listener: TcpListener,
    app: Router,
    intake: Arc<Intake>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: Arc<DoorLimits>,
    shutdown: CancellationToken,
    closed: Option<tokio::sync::oneshot::Sender<()>>,
) -> io::Result<()> {
    let acceptor = tls.map(TlsAcceptor::from);
    // Tells the connections the listener stops (they finish their requests, then close); every connection holds a
    // receiver until it ends, so the sender sees when all have.
    let (stopping, stop) = tokio::sync::watch::channel(false);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // The connection's watchdog times out slow or idle heads on HTTP/1 and HTTP/2 alike.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    // Each request's body may be read whole into memory (up to max_request_size): bound the requests one
    // connection carries at once, as HTTP/1 does (one at a time), to a few. A client sending more streams is told
    // in SETTINGS; well-behaved clients queue them, others get them refused (RST_STREAM REFUSED_STREAM).
    builder
        .http2()
        .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(HTTP2_MAX_HEADER_LIST_SIZE);
    let conns = ConnLimiter::network();
    let mut refusals = RefusalLog::default();
    // Refusals being written at once; a connection refused beyond them is closed without one.
    let answering = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSALS));
    let local = listener.local_addr()?;
    tracing::info!(%local, tls = acceptor.is_some(), "REST listener accepting");
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and the like: back off a little rather than spin.
                    tracing::warn!(%local, error = %e, "REST listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // An IPv4 client of a dual-stack listener counts as its IPv4 address, not as ::ffff:0:0/64.
        let ip = peer.ip().to_canonical();
        // A refused address gets no slot and no TLS handshake: were it let in to be answered 403 per request, a
        // few refused addresses could fill max_connections. Over plain HTTP it is told why (403), as a client
        // refused for want of a slot is (503); over TLS it is closed.
        if let Some(lists) = &limits.addresses
            && !lists.permits(ip)
        {
            tracing::debug!(%local, %peer, "REST connection refused at connect: its address is refused by always_deny / always_allow");
            if acceptor.is_none() {
                refuse_at_connect(
                    stream,
                    &answering,
                    "403 Forbidden",
                    "",
                    &format!(
                        "client address {ip} is not allowed by this listener's always_deny / always_allow lists"
                    ),
                );
            }
            continue;
        }
        let guard = match conns.admit(Some(ip), &limits) {
            Ok(guard) => guard,
            Err(busy) => {
                refusals.note(local, peer, busy);
                if acceptor.is_none() {
                    refuse_busy(stream, &answering, busy);
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let activity = Arc::new(Activity::new());
        let stream = Tracked {
            inner: stream,
            activity: activity.clone(),
        };
        let conn = Conn {
            app: app.clone(),
            peer,
            conn_id: intake.next_id(),
            builder: builder.clone(),
            stop: stop.clone(),
            limits: limits.clone(),
            activity,
            _guard: guard,
        };
        match &acceptor {
            None => {
                tokio::spawn(conn.run(stream));
            }
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                // The hello's first byte within first_byte_timeout, then the whole handshake within header_timeout
                // of it, as a request's head.
                let (first_byte, handshake) = (limits.first_byte_timeout, limits.header_timeout);
                tokio::spawn(async move {
                    let mut byte = [0u8; 1];
                    match tokio::time::timeout(first_byte, stream.inner.peek(&mut byte)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        Ok(_) => return,
                        Err(_) => {
                            tracing::debug!(%peer, "no TLS hello within first_byte_timeout");
                            return;
                        }
                    }
                    match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => conn.run(tls).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        }
    }
    drop(listener);
    if let Some(closed) = closed {
        let _ = closed.send(());
    }
    drop(stop);
    // No receiver left (no connection open) is no one to tell.
    let _ = stopping.send(true);
    if tokio::time::timeout(DRAIN, stopping.closed())
        .await
        .is_err()
    {
        tracing::warn!(%local, "REST listener stopped with requests still open after {} s", DRAIN.as_secs());
    }
    tracing::info!(%local, "REST listener stopped");
    Ok(())
}

/// Requests one HTTP/2 connection may carry at once (`SETTINGS_MAX_CONCURRENT_STREAMS`). With each request's body
/// bounded by `max_request_size`, a listener holds at most `max_connections` × this × `max_request_size` bytes of
/// request bodies (docs/api.md, "Listener options").
pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 8;

/// The largest HTTP/2 request head accepted, in bytes of decoded header fields (`SETTINGS_MAX_HEADER_LIST_SIZE`);
/// a larger one is refused with `431`.
pub const HTTP2_MAX_HEADER_LIST_SIZE: u32 = 16 * 1024;

/// Refusals at connect (`403` for a refused address, `503` beyond the connection limits) a listener writes at
/// once; a connection refused beyond them is closed without an answer.
pub const MAX_REFUSALS: usize = 64;

/// How long a refused plain-HTTP client is given to take the refusal.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// Tells a plain-HTTP client refused at connect for want of a slot why (503, retry in a second).
///
/// The answer is written at once, not after the request's head: at the connection limits the refused connections
/// come in floods, and each is done with as soon as its answer is written, so that the descriptors they hold are
/// given back at once (a client that sends its request first may find the answer already there).
fn refuse_busy(
    mut stream: tokio::net::TcpStream,
    answering: &Arc<tokio::sync::Semaphore>,
    busy: Busy,
) {
    let Ok(answer) = answering.clone().try_acquire_owned() else {
        return;
    };
    let response = refusal(
        "503 Service Unavailable",
        "retry-after: 1\r\n",
        &format!("too many connections: {busy}; try again later"),
        false,
    );
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let _answer = answer;
        let _ = tokio::time::timeout(REFUSAL_WRITE, async {
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await
        })
        .await;
    });
}

/// A whole HTTP/1.1 answer refusing a connection: `status`, extra `headers` (each ending in CRLF) and
/// `{"error": message}`, with Momentum's `"status": "failure"` when `momentum`; the connection closes after it.
fn refusal(status: &str, headers: &str, message: &str, momentum: bool) -> String {
    let mut body = String::from("{\"error\":");
    super::error::push_json_string(&mut body, message);
    if momentum {
        body.push_str(",\"status\":\"failure\"");
    }
    body.push('}');
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\n{headers}connection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// Most bytes of a refused client's request read (and dropped) around its refusal.
const REFUSAL_DRAIN: usize = 64 * 1024;

/// Most bytes of a refused request's head kept to find its path (the answer's shape follows the path).
const REFUSAL_HEAD: usize = 8 * 1024;

/// Tells a plain-HTTP client refused at connect why (`{"error": message}` with `status`; on the injector's paths
/// with Momentum's `"status": "failure"` too), on a task of its own (the accept loop does not wait; the whole
/// exchange is bounded by [`REFUSAL_WRITE`] twice and [`REFUSAL_DRAIN`]), then closes. The refusal follows the head
/// of the client's request, as an HTTP client takes an answer that comes before its request for a broken
/// connection; the rest of the request is read and dropped after it, as closing with bytes unread would reset the
/// connection and could destroy the refusal on its way.
fn refuse_at_connect(
    mut stream: tokio::net::TcpStream,
    answering: &Arc<tokio::sync::Semaphore>,
    status: &'static str,
    headers: &'static str,
    message: &str,
) {
    // At most MAX_REFUSALS at once: a flood of refused connections closes at once beyond them instead of holding
    // a task and a descriptor each.
    let Ok(answer) = answering.clone().try_acquire_owned() else {
        return;
    };
    let message = message.to_owned();
    tokio::spawn(async move {
        let _answer = answer;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut buf = vec![0u8; 4096];
        let mut head: Vec<u8> = Vec::new();
        let mut drained = 0;
        // The request's head (up to its blank line), or what the client sends within the bounds: a client that
        // sends nothing is answered all the same.
        let _ = tokio::time::timeout(REFUSAL_WRITE, async {
            while drained < REFUSAL_DRAIN {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                drained += n;
                let from = head.len().saturating_sub(3);
                head.extend_from_slice(&buf[..n]);
                if head[from..].windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
                if head.len() > REFUSAL_HEAD {
                    // The request line is all that is needed: keep it, and the last three bytes to find the
                    // blank line.
                    let line = head.iter().position(|&b| b == b'\n').unwrap_or(0);
                    let tail = head.len() - 3;
                    head.drain(line.min(tail)..tail);
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
        let path = std::str::from_utf8(
            head.split(|&b| b == b'\r' || b == b'\n')
                .next()
                .unwrap_or(&[]),
        )
        .ok()
        .and_then(|line| line.split(' ').nth(1))
        .map(|target| target.split('?').next().unwrap_or(target));
        let response = refusal(
            status,
            headers,
            &message,
            path.is_some_and(super::inject::is_inject_path),
        );
        let _ = tokio::time::timeout(REFUSAL_WRITE, async {
            stream.write_all(response.as_bytes()).await?;
            stream.shutdown().await?;
            while drained < REFUSAL_DRAIN {
                match stream.read(&mut buf).await? {
                    0 => break,
                    n => drained += n,
                }
            }
            Ok::<_, std::io::Error>(())
        })
        .await;
    });
}

/// Logs refused connections at most once a second per listener, with how many were refused meanwhile.
#[derive(Default)]
struct RefusalLog {
    last: Option<Instant>,
    since: u64,
}

impl RefusalLog {
    fn note(&mut self, local: SocketAddr, peer: SocketAddr, busy: Busy) {
        self.since += 1;
        if self
            .last
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        tracing::warn!(%local, %peer, refused = self.since, "REST connection refused: {busy}");
        self.last = Some(Instant::now());
        self.since = 0;
    }
}

/// No time recorded.
const NONE: u64 = u64::MAX;

/// The least [`send_timeout`]: twice the 15 s between the keep-alives of the dashboard's event stream, so that a
/// stream with nothing to say is never taken for one its client does not read.
pub const SEND_TIMEOUT_MIN: Duration = Duration::from_secs(30);

/// How long a connection with an answer to send may send nothing (no byte written to the socket) since the later
/// of that answer being ready and the last byte it sent, before it is closed: the longest of the listener's
/// `keepalive_timeout`, its `body_timeout` and [`SEND_TIMEOUT_MIN`]. The time a handler takes before its answer is
/// ready does not count: reading the body is bounded by `body_timeout`, and a client cut off while its
/// notifications are being made durable would send them again.
pub fn send_timeout(limits: &DoorLimits) -> Duration {
    limits
        .keepalive_timeout
        .max(limits.body_timeout)
        .max(SEND_TIMEOUT_MIN)
}

/// Grace past [`send_timeout`] before the watchdog closes a connection.
const SEND_TIMEOUT_GRACE: Duration = Duration::from_secs(1);

/// What a connection's watchdog looks at: open requests and how many of them have an answer to send, when the
/// connection last became idle, when a byte last arrived while it was idle (a request on its way), and when it
/// last sent something or had an answer ready.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Open requests whose handler returned: an answer being sent.
    answering: AtomicUsize,
    requests: AtomicU64,
    /// Milliseconds since `start` when the last request finished (0: the connection's start).
    idle_since: AtomicU64,
    /// Milliseconds since `start` of the first byte read since the connection became idle; [`NONE`] if none.
    first_byte: AtomicU64,
    /// Milliseconds since `start` of the last write that took bytes, or of the last answer ready if later.
    sent: AtomicU64,
    /// The connection carried an HTTP/2 request: bytes while idle are not a request's head.
    http2: AtomicBool,
}

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            answering: AtomicUsize::new(0),
            requests: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            first_byte: AtomicU64::new(NONE),
            sent: AtomicU64::new(0),
            http2: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(NONE - 1)
    }

    /// Bytes arrived. On a connection with no request open, they start a request's head (see `header_timeout`),
    /// except on HTTP/2, where an idle client sends PINGs and WINDOW_UPDATEs as well: there `keepalive_timeout`
    /// alone bounds the idle time.
    fn read_some(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && !self.http2.load(Ordering::Relaxed)
            && self.first_byte.load(Ordering::Relaxed) == NONE
        {
            let _ = self.first_byte.compare_exchange(
                NONE,
                self.now(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        }
    }

    /// The connection speaks HTTP/2 (it carried an HTTP/2 request).
    fn carries_http2(&self) {
        self.http2.store(true, Ordering::Relaxed);
    }

    /// Whether the connection the watchdog ends for `why` is told with GOAWAY first: an HTTP/2 connection ended
    /// for idleness. The decision stands on the watchdog's reason, not on a fresh look at the open requests: one
    /// that arrived since the watchdog found the connection idle is answered under the GOAWAY (whose last stream
    /// id covers it), not cut off after its notifications were stored.
    fn goes_away(&self, why: Timeout) -> bool {
        why == Timeout::Keepalive && self.http2.load(Ordering::Relaxed)
    }

    /// The connection's socket took bytes to send.
    fn wrote_some(&self) {
        self.sent.fetch_max(self.now(), Ordering::Relaxed);
    }

    fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::Release);
        self.requests.fetch_add(1, Ordering::Relaxed);
        RequestGuard {
            activity: self.clone(),
            answering: false,
        }
    }

    /// Waits until the connection broke one of its timeouts; returns which.
    async fn watchdog(&self, limits: &DoorLimits) -> Timeout {
        self.watch(limits, Self::broken).await
    }

    /// Waits, once the connection was told with GOAWAY and its grace passed, until it is to be closed: see
    /// [`Activity::done_after_goaway`].
    async fn after_goaway(&self, limits: &DoorLimits) -> Timeout {
        let grace_over = self.now();
        self.watch(limits, |a, now, limits| {
            a.done_after_goaway(now, grace_over, limits)
        })
        .await
    }

    /// Checks `ended` at every tick until it names a timeout.
    async fn watch(
        &self,
        limits: &DoorLimits,
        ended: impl Fn(&Self, u64, &DoorLimits) -> Option<Timeout>,
    ) -> Timeout {
        let shortest = limits
            .first_byte_timeout
            .min(limits.header_timeout)
            .min(limits.keepalive_timeout);
        let tick = (shortest / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
        loop {
            tokio::time::sleep(tick).await;
            if let Some(broken) = ended(self, self.now(), limits) {
                return broken;
            }
        }
    }

    /// Whether a connection told with GOAWAY, whose grace was over at `grace_over`, is to be closed at `now`. hyper
    /// closes it by itself once the client acknowledged the GOAWAY and every stream is done and written out; this
    /// bounds a client that does not let it. A request open goes on to its answer under the usual rules (the send
    /// timeout once the answer is ready). With no request open, the answers may not all be written yet: a request
    /// stops counting as open once its answer's body was handed to h2, which may hold the end of it until the
    /// client's flow-control window lets it go. So the connection is not closed then (that would cut the end of a
    /// `2xx` for notifications already stored, which the client would send again): it is given the send timeout
    /// from the later of the grace's end and its last request's end, as long as a client that does not read has
    /// to take an answer ready. Bytes leaving do not extend that (the acknowledgements of the PINGs an idle client
    /// sends would hold it for good), nor does keepalive_timeout start again: a connection with no request open
    /// is closed in the end.
    ///
    /// A client that never acknowledges the GOAWAY can go on sending requests (hyper takes them until it names its
    /// last stream): with no request open, the connection is closed twice the send timeout after the grace at the
    /// latest, however many requests came since.
    fn done_after_goaway(&self, now: u64, grace_over: u64, limits: &DoorLimits) -> Option<Timeout> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return self.broken(now, limits);
        }
        let quiet = grace_over.max(self.idle_since.load(Ordering::Relaxed));
        let bound = u64::try_from((send_timeout(limits) + SEND_TIMEOUT_GRACE).as_millis())
            .unwrap_or(NONE - 1);
        (now.saturating_sub(quiet) > bound
            || now.saturating_sub(grace_over) > bound.saturating_mul(2))
        .then_some(Timeout::AfterGoaway)
    }

    /// The timeout the connection broke at `now` (milliseconds since `start`), if any.
    fn broken(&self, now: u64, limits: &DoorLimits) -> Option<Timeout> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(NONE - 1);
        if self.in_flight.load(Ordering::Acquire) > 0 {
            // Not idle. While no answer is ready the handler is at work (its body read within body_timeout): the
            // client waits and is not cut off. An answer its client never takes (an HTTP/2 window left at 0) must
            // not hold the connection for good.
            if self.answering.load(Ordering::Acquire) == 0 {
                return None;
            }
            let silent = now.saturating_sub(self.sent.load(Ordering::Relaxed));
            return (silent > ms(send_timeout(limits) + SEND_TIMEOUT_GRACE))
                .then_some(Timeout::Send);
        }
        let first = self.first_byte.load(Ordering::Relaxed);
        if first != NONE {
            return (now.saturating_sub(first) > ms(limits.header_timeout))
                .then_some(Timeout::Header);
        }
        let idle = now.saturating_sub(self.idle_since.load(Ordering::Relaxed));
        let (limit, timeout) = if self.requests.load(Ordering::Relaxed) == 0 {
            (limits.first_byte_timeout, Timeout::FirstByte)
        } else {
            (limits.keepalive_timeout, Timeout::Keepalive)
        };
        (idle > ms(limit)).then_some(timeout)
    }
}

/// Why a connection's watchdog ends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Timeout {
    FirstByte,
    Header,
    /// Idle between requests: the one an HTTP/2 connection is told with GOAWAY.
    Keepalive,
    Send,
    /// Still open, with no request open, for the send timeout after the grace after a GOAWAY (and after its last
    /// request).
    AfterGoaway,
}

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Timeout::FirstByte => "first_byte_timeout passed",
            Timeout::Header => "header_timeout passed",
            Timeout::Keepalive => "keepalive_timeout passed",
            Timeout::Send => {
                "nothing sent for the longest of keepalive_timeout, body_timeout and 30 s with an answer to send"
            }
            Timeout::AfterGoaway => {
                "not closed by its client within the longest of keepalive_timeout, body_timeout and 30 s after the \
                 GOAWAY's 5 s grace and its last request"
            }
        })
    }
}

/// One open request; when the last one ends the connection is idle again.
struct RequestGuard {
    activity: Arc<Activity>,
    /// Its handler returned an answer, which is being sent.
    answering: bool,
}

impl RequestGuard {
    /// The request's answer is ready: from now on the connection must send it (see [`send_timeout`]).
    fn answering(mut self) -> RequestGuard {
        if !self.answering {
            let a = &self.activity;
            a.sent.fetch_max(a.now(), Ordering::Relaxed);
            // Release: a watchdog that sees the answer ready sees its time in `sent` too.
            a.answering.fetch_add(1, Ordering::Release);
            self.answering = true;
        }
        self
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.activity;
        if self.answering {
            a.answering.fetch_sub(1, Ordering::Relaxed);
        }
        // Before the count (Release): a watchdog that sees no request open (Acquire) sees when the last one ended.
        a.idle_since.fetch_max(a.now(), Ordering::Relaxed);
        if a.in_flight.fetch_sub(1, Ordering::Release) == 1 {
            a.first_byte.store(NONE, Ordering::Relaxed);
        }
    }
}

/// The TCP stream of a connection, noting when bytes arrive and when bytes leave.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(result, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote_some();
        }
        result
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote_some();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request body that fails with [`BodyTimeout`] when it has not arrived in full within `body_timeout` of the
/// headers.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    limit: Duration,
}

/// The request body took longer than the listener's `body_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the request body did not arrive within {} s (this listener's body_timeout)", .0.as_secs())]
pub struct BodyTimeout(pub Duration);

impl hyper::body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(Box::new(BodyTimeout(self.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// The `max_request_size` of the listener a request arrived on (`None`: no limit), as a request extension. The
/// routes merged into the REST application (the `extra` of [`super::router_with`]) hold no listener state: they
/// read their bodies with [`read_request_body`], which takes the limit from here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxRequestSize(pub Option<u64>);

/// The default of `max_request_size` (10 MiB, from the option table), for a request that carries no
/// [`MaxRequestSize`].
pub fn default_max_request_size() -> Option<u64> {
    const TEN_MIB: u64 = 10 * 1024 * 1024;
    let default = herald_conf::Opt::MaxRequestSize.def().default;
    Some(default.and_then(|d| d.parse().ok()).unwrap_or(TEN_MIB)).filter(|&n| n > 0)
}

/// Reads the whole body of `request` as the injection routes read theirs ([`super::error::read_body`]): over the
/// listener's `max_request_size` ([`MaxRequestSize`], else its default) it is a `413` naming the option, slower
/// than its `body_timeout` a `408`.
pub async fn read_request_body(
    request: axum::extract::Request,
) -> Result<(axum::http::request::Parts, bytes::Bytes), super::error::ApiError> {
    let (parts, body) = request.into_parts();
    let limit = parts
        .extensions
        .get::<MaxRequestSize>()
        .map_or_else(default_max_request_size, |m| m.0);
    let body = super::error::read_body(&parts.headers, body, limit).await?;
    Ok((parts, body))
}

/// An answer's body, holding its request open (see [`RequestGuard`]) until the body is sent or dropped.
struct WhileSending {
    body: axum::body::Body,
    _open: RequestGuard,
}

impl hyper::body::Body for WhileSending {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// One accepted connection.
struct Conn {
    app: Router,
    peer: SocketAddr,
    conn_id: crate::queue::message::MessageId,
    builder: auto::Builder<TokioExecutor>,
    /// Turns `true` when the listener stops; held until the connection ends.
    stop: tokio::sync::watch::Receiver<bool>,
    limits: Arc<DoorLimits>,
    activity: Arc<Activity>,
    _guard: ConnGuard,
}

impl Conn {
    async fn run<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Conn {
            app,
            peer,
            conn_id,
            builder,
            mut stop,
            limits,
            activity,
            _guard,
        } = self;
        let body_timeout = limits.body_timeout;
        let requests = activity.clone();
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            if request.version() == hyper::Version::HTTP_2 {
                requests.carries_http2();
            }
            let open = requests.request_started();
            let mut request = request.map(|inner| TimedBody {
                inner,
                deadline: Box::pin(tokio::time::sleep(body_timeout)),
                limit: body_timeout,
            });
            let extensions = request.extensions_mut();
            extensions.insert(ConnectInfo(peer));
            extensions.insert(ConnId(conn_id));
            let mut app = app.clone();
            async move {
                // The request stays open until its answer's body is sent (an event stream, a large answer), so that
                // the watchdog does not take a connection still sending for an idle one.
                // The watchdog's send timeout counts from here: the handler's own time (a slow body within
                // body_timeout, a slow disk making the notifications durable) is not the client's fault.
                app.call(request).await.map(|response| {
                    let open = open.answering();
                    response.map(|body| axum::body::Body::new(WhileSending { body, _open: open }))
                })
            }
        });
        let stream = super::json_errors::JsonErrorIo::new(stream);
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let mut connection = std::pin::pin!(connection);
        let mut stopping = false;
        let why = loop {
            tokio::select! {
                ended = connection.as_mut() => return log_end(peer, ended),
                // The listener stops: the requests open finish, then the connection closes (HTTP/2: GOAWAY).
                _ = stop.wait_for(|stop| *stop), if !stopping => {
                    stopping = true;
                    connection.as_mut().graceful_shutdown();
                }
                why = activity.watchdog(&limits) => break why,
            }
        };
        if !activity.goes_away(why) {
            tracing::debug!(%peer, "REST connection closed: {why}");
            return;
        }
        // An idle HTTP/2 connection is told with GOAWAY before it closes, so that its client knows which of the
        // requests it sends meanwhile were taken (and sends the others again on a new connection); a request that
        // arrived since the watchdog found it idle is answered. hyper closes the connection once the client
        // acknowledged the GOAWAY and every answer is written out (h2 may hold the end of one after its request
        // stopped counting as open); the watchdog closes it only when the client does not let it.
        tracing::debug!(%peer, "REST connection closing with GOAWAY: {why}");
        connection.as_mut().graceful_shutdown();
        let closed = async {
            tokio::time::sleep(GOAWAY_GRACE).await;
            activity.after_goaway(&limits).await
        };
        let mut closed = std::pin::pin!(closed);
        // The listener stopping meanwhile: the connection closes once no request is open and [`GOAWAY_GRACE`] has
        // passed since, for what h2 still holds to be written (not after the send timeout: a listener stops within
        // its drain).
        let mut stopped_at: Option<tokio::time::Instant> = None;
        loop {
            tokio::select! {
                ended = connection.as_mut() => return log_end(peer, ended),
                why = &mut closed => {
                    return tracing::debug!(%peer, "REST connection closed after GOAWAY: {why}");
                }
                _ = stop.wait_for(|stop| *stop), if !stopping && stopped_at.is_none() => {
                    stopped_at = Some(tokio::time::Instant::now());
                }
                _ = tokio::time::sleep(Duration::from_millis(100)), if stopping || stopped_at.is_some() => {
                    let since = *stopped_at.get_or_insert_with(tokio::time::Instant::now);
                    if activity.in_flight.load(Ordering::Acquire) == 0 && since.elapsed() >= GOAWAY_GRACE {
                        return tracing::debug!(%peer, "REST connection closed after GOAWAY: the listener stops");
                    }
                }
            }
        }
    }
}

/// How long an idle HTTP/2 connection the watchdog ends has after its GOAWAY (the client acknowledging its PING,
/// as hyper waits for that before it names the last stream it takes) before the watchdog looks at it again: the
/// requests it carries by then go on to their answers (held to the send timeout), and once none is open it is
/// given the send timeout to write what h2 still holds and close by itself ([`Activity::done_after_goaway`]).
const GOAWAY_GRACE: Duration = Duration::from_secs(5);

/// Logs how a connection ended, when it ended with an error.
fn log_end<E: std::fmt::Display>(peer: SocketAddr, ended: Result<(), E>) {
    if let Err(e) = ended {
        tracing::debug!(%peer, error = %e, "REST connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};

    use super::*;

    fn one_second_timeouts() -> DoorLimits {
        let second = Duration::from_secs(1);
        DoorLimits {
            first_byte_timeout: second,
            header_timeout: second,
            body_timeout: second,
            keepalive_timeout: second,
            ..DoorLimits::default()
        }
    }

    /// A connection `age` old.
    fn activity_aged(age: Duration) -> Arc<Activity> {
        let a = Activity::new();
        Arc::new(Activity {
            start: a.start.checked_sub(age).unwrap(),
            ..a
        })
    }

    /// An answer that leaves slowly but steadily is not cut, however long it takes; one that stops leaving is,
    /// after the send timeout, whatever keepalive_timeout says.
    #[test]
    fn a_request_open_is_closed_only_when_nothing_leaves_for_the_send_timeout() {
        let limits = one_second_timeouts();
        assert_eq!(send_timeout(&limits), SEND_TIMEOUT_MIN);
        let a = Arc::new(Activity::new());
        let _open = a.request_started().answering();
        let t0 = a.sent.load(Ordering::Relaxed);
        for k in 1..=20 {
            assert_eq!(a.broken(t0 + k * 10_000 - 1, &limits), None, "{k}");
            a.sent.fetch_max(t0 + k * 10_000, Ordering::Relaxed);
        }
        let last = t0 + 200_000;
        assert_eq!(a.broken(last + 30_000, &limits), None);
        assert_eq!(a.broken(last + 60_000, &limits), Some(Timeout::Send));
    }

    /// The send timeout counts from an answer being ready, not from what the connection sent before it.
    #[test]
    fn an_answer_after_a_long_pause_is_not_taken_for_a_stalled_one() {
        let limits = DoorLimits {
            keepalive_timeout: Duration::from_secs(300),
            ..DoorLimits::default()
        };
        assert_eq!(send_timeout(&limits), Duration::from_secs(300));
        let a = activity_aged(Duration::from_secs(1000));
        // Its last answer left at 10 s; the answer to a request is ready now, at 1000 s.
        a.sent.store(10_000, Ordering::Relaxed);
        let _open = a.request_started().answering();
        let now = a.now();
        assert_eq!(a.broken(now + 1_000, &limits), None);
        assert!(a.broken(now + 302_000, &limits).is_some());
        // A body may take its body_timeout when that is the longest.
        let slow_bodies = DoorLimits {
            body_timeout: Duration::from_secs(600),
            ..limits
        };
        assert_eq!(a.broken(now + 590_000, &slow_bodies), None);
    }

    /// While the handler works on a request (a body arriving slowly, then a slow disk making its notifications
    /// durable) the connection is not cut, however long that takes: its client would take the reset for a failure
    /// and send the notifications again. The send timeout counts from the answer being ready.
    #[test]
    fn a_request_being_handled_is_not_cut_however_long_it_takes() {
        let limits = DoorLimits::default();
        let cut = u64::try_from((send_timeout(&limits) + SEND_TIMEOUT_GRACE).as_millis()).unwrap();
        let a = Arc::new(Activity::new());
        let open = a.request_started();
        let arrived = a.now();
        assert_eq!(a.broken(arrived + 10 * cut, &limits), None);
        // Another request on the connection (HTTP/2) is answered and its answer goes: still nothing to cut.
        let other = a.request_started().answering();
        drop(other);
        assert_eq!(a.broken(arrived + 10 * cut, &limits), None);
        let open = open.answering();
        let ready = a.now();
        assert_eq!(a.broken(ready + cut - 1, &limits), None);
        assert_eq!(a.broken(ready + cut + 1, &limits), Some(Timeout::Send));
        drop(open);
        assert_eq!(a.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(a.answering.load(Ordering::Relaxed), 0);
    }

    /// Bytes on an idle HTTP/1 connection are a request's head, held to header_timeout. On an idle HTTP/2
    /// connection they may be PINGs or WINDOW_UPDATEs: only keepalive_timeout ends it.
    #[test]
    fn bytes_on_an_idle_http2_connection_do_not_start_header_timeout() {
        let limits = DoorLimits {
            header_timeout: Duration::from_secs(1),
            keepalive_timeout: Duration::from_secs(60),
            ..DoorLimits::default()
        };
        let http1 = Arc::new(Activity::new());
        drop(http1.request_started());
        http1.read_some();
        assert_eq!(
            http1.broken(http1.now() + 2_000, &limits),
            Some(Timeout::Header)
        );

        let http2 = Arc::new(Activity::new());
        http2.carries_http2();
        drop(http2.request_started());
        let idle = http2.now();
        // A PING now, another later.
        http2.read_some();
        assert_eq!(http2.broken(idle + 30_000, &limits), None);
        http2.read_some();
        assert_eq!(http2.broken(idle + 59_000, &limits), None);
        assert_eq!(
            http2.broken(idle + 61_000, &limits),
            Some(Timeout::Keepalive)
        );
        // A request open is not idle.
        let _open = http2.request_started();
        assert_eq!(http2.broken(idle + 61_000, &limits), None);
    }

    /// An HTTP/2 connection the watchdog found idle past keepalive_timeout is told with GOAWAY even when a
    /// request arrived since: that request is answered (its notifications are stored, its client must see the
    /// 2xx), not cut off. An HTTP/1 connection, or one ended for another timeout, just closes.
    #[test]
    fn an_http2_connection_ended_idle_goes_away_even_with_a_request_arrived_since() {
        let limits = DoorLimits {
            keepalive_timeout: Duration::from_secs(60),
            ..DoorLimits::default()
        };
        let http2 = Arc::new(Activity::new());
        http2.carries_http2();
        drop(http2.request_started());
        let why = http2.broken(http2.now() + 61_000, &limits).unwrap();
        assert_eq!(why, Timeout::Keepalive);
        // A request arrives between the watchdog's verdict and the decision.
        let _open = http2.request_started();
        assert!(http2.goes_away(why));
        assert!(!http2.goes_away(Timeout::Send));

        let http1 = Arc::new(Activity::new());
        drop(http1.request_started());
        let why = http1.broken(http1.now() + 61_000, &limits).unwrap();
        assert_eq!(why, Timeout::Keepalive);
        assert!(!http1.goes_away(why));
    }

    /// Once the grace after its GOAWAY passed, a connection with no request open is not closed at once: h2 may
    /// still hold the end of an answer whose request no longer counts as open. It is given the send timeout from
    /// the later of the grace's end and its last request's end, bytes leaving or not (an idle client's PINGs are
    /// answered); a request open goes on to its answer, held to the send timeout. It used to be closed at the first
    /// look with no request open, which could cut the end of a `2xx`.
    #[test]
    fn after_the_goaway_grace_a_connection_is_given_the_send_timeout_to_finish() {
        let limits = DoorLimits::default();
        let cut = u64::try_from((send_timeout(&limits) + SEND_TIMEOUT_GRACE).as_millis()).unwrap();
        let a = activity_aged(Duration::from_secs(1000));
        a.carries_http2();
        // Idle since long before the GOAWAY; its grace is over now.
        drop(a.request_started().answering());
        a.idle_since.store(1_000, Ordering::Relaxed);
        let grace_over = a.now();
        assert_eq!(a.done_after_goaway(grace_over, grace_over, &limits), None);
        // Bytes leave till late (acknowledged PINGs, or the end of an answer): they do not extend the bound.
        a.sent.store(grace_over + cut - 10, Ordering::Relaxed);
        assert_eq!(
            a.done_after_goaway(grace_over + cut - 1, grace_over, &limits),
            None
        );
        assert_eq!(
            a.done_after_goaway(grace_over + cut + 1, grace_over, &limits),
            Some(Timeout::AfterGoaway)
        );

        // A request open goes on to its answer, held to the send timeout once it is ready.
        let b = activity_aged(Duration::from_secs(1000));
        b.carries_http2();
        let grace_over = b.now();
        let open = b.request_started();
        assert_eq!(
            b.done_after_goaway(grace_over + 10 * cut, grace_over, &limits),
            None
        );
        let open = open.answering();
        let ready = b.sent.load(Ordering::Relaxed);
        assert_eq!(
            b.done_after_goaway(ready + cut - 1, grace_over, &limits),
            None
        );
        assert_eq!(
            b.done_after_goaway(ready + cut + 1, grace_over, &limits),
            Some(Timeout::Send)
        );
        // Its answer handed to h2, the request no longer counts as open: the connection has the send timeout from
        // then to write it out.
        drop(open);
        let ended = b.idle_since.load(Ordering::Relaxed);
        assert!(ended >= ready);
        assert_eq!(b.in_flight.load(Ordering::Relaxed), 0);
        assert_eq!(b.done_after_goaway(ended, grace_over, &limits), None);
        assert_eq!(
            b.done_after_goaway(ended + cut - 1, grace_over, &limits),
            None
        );
        assert_eq!(
            b.done_after_goaway(ended + cut + 1, grace_over, &limits),
            Some(Timeout::AfterGoaway)
        );

        // A client that never acknowledges the GOAWAY and keeps sending requests (each ending moves the quiet time
        // on): closed with no request open twice the send timeout after the grace at the latest.
        let c = activity_aged(Duration::from_secs(1000));
        c.carries_http2();
        let grace_over = c.now();
        c.idle_since
            .store(grace_over + 2 * cut - 10, Ordering::Relaxed);
        assert_eq!(
            c.done_after_goaway(grace_over + 2 * cut - 1, grace_over, &limits),
            None
        );
        assert_eq!(
            c.done_after_goaway(grace_over + 2 * cut + 1, grace_over, &limits),
            Some(Timeout::AfterGoaway)
        );
    }

    /// Serves one connection, accepted on a fresh port, with `app` and `limits` as [`serve_until`] would; returns
    /// the address and the connection's [`Activity`].
    async fn serve_one(app: Router, limits: DoorLimits) -> (SocketAddr, Arc<Activity>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let activity = Arc::new(Activity::new());
        let served = activity.clone();
        tokio::spawn(async move {
            let (stream, peer) = listener.accept().await.unwrap();
            let limits = Arc::new(limits);
            let guard = ConnLimiter::network().admit(None, &limits).unwrap();
            let mut builder = auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .timer(TokioTimer::new())
                .header_read_timeout(None);
            builder
                .http2()
                .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS);
            // The listener does not stop while the connection runs.
            let (_running, stop) = tokio::sync::watch::channel(false);
            let conn = Conn {
                app,
                peer,
                conn_id: crate::queue::message::MessageId(1),
                builder,
                stop,
                limits,
                activity: served.clone(),
                _guard: guard,
            };
            let stream = Tracked {
                inner: stream,
                activity: served,
            };
            conn.run(stream).await;
        });
        (addr, activity)
    }

    /// A bare HTTP/2 client over plain TCP (prior knowledge) that acknowledges the server's SETTINGS and leaves the
    /// rest to the test: PINGs included.
    struct RawH2 {
        stream: tokio::net::TcpStream,
    }

    const H2_DATA: u8 = 0;
    const H2_HEADERS: u8 = 1;
    const H2_SETTINGS: u8 = 4;
    const H2_PING: u8 = 6;
    const H2_GOAWAY: u8 = 7;
    const H2_WINDOW_UPDATE: u8 = 8;
    const END_STREAM: u8 = 1;

    impl RawH2 {
        /// Connects, with an `SETTINGS_INITIAL_WINDOW_SIZE` of `window` for the server's answers.
        async fn connect(to: SocketAddr, window: u32) -> RawH2 {
            use tokio::io::AsyncWriteExt;
            let mut stream = tokio::net::TcpStream::connect(to).await.unwrap();
            stream
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap();
            let mut h2 = RawH2 { stream };
            let mut settings = vec![0, 4];
            settings.extend_from_slice(&window.to_be_bytes());
            h2.send(H2_SETTINGS, 0, 0, &settings).await;
            h2
        }

        async fn send(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
            use tokio::io::AsyncWriteExt;
            let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
            let mut frame = vec![len[1], len[2], len[3], kind, flags];
            frame.extend_from_slice(&stream.to_be_bytes());
            frame.extend_from_slice(payload);
            // A connection the server closed shows in `frame`.
            let _ = self.stream.write_all(&frame).await;
        }

        /// The next frame the server sends other than SETTINGS (acknowledged here): (type, flags, stream,
        /// payload); `None` once the connection is closed.
        async fn frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
            use tokio::io::AsyncReadExt;
            loop {
                let mut head = [0u8; 9];
                let read = tokio::time::timeout(
                    Duration::from_secs(20),
                    self.stream.read_exact(&mut head),
                )
                .await;
                if read.expect("the server neither sends nor closes").is_err() {
                    return None;
                }
                let len =
                    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                let mut payload = vec![0u8; len];
                self.stream.read_exact(&mut payload).await.ok()?;
                let (kind, flags) = (head[3], head[4]);
                let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
                match (kind, flags & 1) {
                    (H2_SETTINGS, 0) => self.send(H2_SETTINGS, 1, 0, &[]).await,
                    (H2_SETTINGS, _) => {}
                    _ => return Some((kind, flags, stream, payload)),
                }
            }
        }

        /// Sends `GET path` on `stream` (odd, increasing).
        async fn get(&mut self, stream: u32, path: &str) {
            // HPACK: :method GET, :scheme http (static table), :path and :authority h (literals, not indexed).
            let mut block = vec![0x82, 0x86, 0x04, u8::try_from(path.len()).unwrap()];
            block.extend_from_slice(path.as_bytes());
            block.extend_from_slice(&[0x01, 1, b'h']);
            self.send(H2_HEADERS, 0x4 | END_STREAM, stream, &block)
                .await;
        }
    }

    /// An idle HTTP/2 connection gets its GOAWAY; a request it carries then is answered, and its handler's answer
    /// handed to h2 whole, while the client has its window open to 1000 bytes only: the request no longer counts
    /// as open, and h2 holds the rest of the answer. Past the grace after the GOAWAY the connection is not dropped
    /// at once (the end of a `2xx` for notifications already stored would be lost, and the client would send them
    /// again): its client, reading again, gets the whole answer, and the connection then closes by itself (GOAWAY
    /// naming the request's stream), once the client acknowledged the GOAWAY's PING.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_still_being_written_after_the_goaway_grace_reaches_its_client() {
        const BIG: usize = 100_000;
        let app = Router::new()
            .route("/small", axum::routing::get(|| async { "ok" }))
            .route("/big", axum::routing::get(|| async { "x".repeat(BIG) }));
        let second = Duration::from_secs(1);
        let limits = DoorLimits {
            first_byte_timeout: second,
            header_timeout: second,
            keepalive_timeout: second,
            ..DoorLimits::default()
        };
        let (addr, activity) = serve_one(app, limits).await;
        let mut h2 = RawH2::connect(addr, 1000).await;
        h2.get(1, "/small").await;
        let mut pings = Vec::new();
        let goaway = loop {
            match h2.frame().await.expect("closed before the GOAWAY") {
                (H2_GOAWAY, ..) => break tokio::time::Instant::now(),
                (H2_PING, 0, _, payload) => pings.push(payload),
                _ => {}
            }
        };
        // Under the GOAWAY (its last stream id still the highest; the PING hyper waits for left unanswered).
        h2.get(3, "/big").await;
        let mut got = 0;
        while got < 1000 {
            match h2.frame().await.expect("closed before the answer began") {
                (H2_DATA, _, 3, payload) => got += payload.len(),
                (H2_PING, 0, _, payload) => pings.push(payload),
                _ => {}
            }
        }
        assert_eq!(got, 1000, "the stream window is 1000 bytes");
        // The grace passes, and the watchdog looks several times (every 250 ms here) with no request open: h2 alone
        // holds the rest of the answer.
        tokio::time::sleep_until(goaway + GOAWAY_GRACE + 2 * second).await;
        assert_eq!(activity.in_flight.load(Ordering::Acquire), 0);
        let more = (1u32 << 20).to_be_bytes();
        h2.send(H2_WINDOW_UPDATE, 0, 0, &more).await;
        h2.send(H2_WINDOW_UPDATE, 0, 3, &more).await;
        loop {
            match h2.frame().await {
                Some((H2_DATA, flags, 3, payload)) => {
                    got += payload.len();
                    if flags & END_STREAM != 0 {
                        break;
                    }
                }
                Some((H2_PING, 0, _, payload)) => pings.push(payload),
                Some(_) => {}
                None => panic!("closed after {got} of the answer's {BIG} bytes"),
            }
        }
        assert_eq!(got, BIG);
        assert!(!pings.is_empty(), "no PING with the GOAWAY");
        for ping in &pings {
            h2.send(H2_PING, 1, 0, ping).await;
        }
        let mut last = None;
        while let Some((kind, _, _, payload)) = h2.frame().await {
            if kind == H2_GOAWAY {
                last = Some(u32::from_be_bytes(payload[..4].try_into().unwrap()) & 0x7fff_ffff);
            }
        }
        assert_eq!(
            last,
            Some(3),
            "the connection did not close with a GOAWAY naming the request"
        );
    }

    #[test]
    fn the_default_max_request_size_is_the_option_tables() {
        assert_eq!(default_max_request_size(), Some(10_485_760));
    }

    fn request(body: &'static [u8], limit: Option<MaxRequestSize>) -> axum::extract::Request {
        let mut request = Request::post("/").body(Body::from(body)).unwrap();
        if let Some(limit) = limit {
            request.extensions_mut().insert(limit);
        }
        request
    }

    /// A merged route's body is held to the limit its request carries; without one, to the option's default.
    #[tokio::test]
    async fn bodies_are_read_within_the_limit_the_request_carries() {
        let over = read_request_body(request(b"0123456789x", Some(MaxRequestSize(Some(10)))))
            .await
            .unwrap_err();
        assert_eq!(over.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            over.message
                .contains("this listener's max_request_size is 10"),
            "{}",
            over.message
        );
        let (_, body) = read_request_body(request(b"0123456789x", Some(MaxRequestSize(None))))
            .await
            .unwrap();
        assert_eq!(&body[..], b"0123456789x");
        let mut declared = request(b"", None);
        declared
            .headers_mut()
            .insert(header::CONTENT_LENGTH, "10485761".parse().unwrap());
        let over = read_request_body(declared).await.unwrap_err();
        assert!(
            over.message.contains("max_request_size is 10485760"),
            "{}",
            over.message
        );
    }
}
