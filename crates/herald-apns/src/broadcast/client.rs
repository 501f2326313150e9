//! One HTTP/2 connection to a channel management host or a broadcast host (docs/apns-protocol.md §6.2). Each
//! call is one stream; answers are read whole (bodies are small) and any status other than the call's success
//! status becomes [`BroadcastClientError::Rejected`] with the reason and its class. With token auth, an
//! `ExpiredProviderToken` answer, to a management call or a broadcast alike, is returned at once and the call never
//! sent again on this connection, which APNs may no longer serve (docs/apns-protocol.md §3.7); the refused token is
//! renewed when it may be, and [`BroadcastClientError::token_expired`] says whether it was, for a retry on a new
//! connection. A call the connection could not take is [`BroadcastClientError::NotSent`]: nothing went out. A call
//! whose stream the server refused ([`BroadcastClientError::stream_refused`]) was not processed either, and leaves
//! the connection open for the next call. The connection closes once its last clone is dropped: `GOAWAY(NO_ERROR)`,
//! sent as soon as its streams have ended, then the socket.
//!
//! A connection keeps track of when it last heard from the server (any bytes read: an answer, a PING's answer,
//! SETTINGS; [`BroadcastClient::silent_for`]) and can ask whether the server is still there with an HTTP/2 PING
//! ([`BroadcastClient::ping`]). A caller that keeps a connection between calls asks before it hands out one it has
//! not heard from for a while: a NAT or a middlebox may have dropped it without a word, and a call sent on it would
//! wait its whole timeout for nothing (docs/apns-protocol.md §6.2.1).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use h2::client::SendRequest;
use http::header::AUTHORIZATION;
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderName, HeaderValue, Method, Request, Uri};

use super::reason::classify_broadcast;
use super::request::{
    APNS_CHANNEL_ID, APNS_REQUEST_ID, BroadcastSend, ChannelId, ChannelOp, MAX_CHANNEL_ID_LEN,
    RequestError, StoragePolicy, bundle_for_path,
};
use crate::client::connect::{Endpoint, alpn_h2, connect_tls, without_alpn};
use crate::client::{ConnectionError, not_processed, preface};
use crate::outcome::FailureClass;
use crate::provider_token::{ConnectionToken, ProviderTokenCache, TokenChoice};
use crate::reason::parse_error_body;

/// Largest answer body read, but a channel list's ([`MAX_LIST_BODY`]).
const MAX_BODY: usize = 1024 * 1024;
/// The most channels an app has in one environment: APNs refuses a create beyond (`CannotCreateChannelConfig`).
pub const MAX_CHANNELS: usize = 10_000;
/// Largest channel list read: [`MAX_CHANNELS`] ids of [`MAX_CHANNEL_ID_LEN`] characters (the longest herald takes),
/// each with its quotes, comma and some whitespace, and room for the object around them. An app's every channel can
/// be listed, whatever the ids' size.
const MAX_LIST_BODY: usize = MAX_CHANNELS * (MAX_CHANNEL_ID_LEN + 16) + MAX_BODY;
/// The reason APNs gives for a provider token too old.
const EXPIRED_PROVIDER_TOKEN: &str = "ExpiredProviderToken";
/// The reason APNs gives for a provider token changed too often on a connection.
const TOO_MANY_TOKEN_UPDATES: &str = "TooManyProviderTokenUpdates";

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum BroadcastClientError {
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The connection could not take the request (it had failed, or was going away, before the request was handed
    /// to it): nothing was sent, and the call can be made again on a new connection.
    #[error("HTTP/2 connection to {host} could not take the request, nothing was sent: {source}")]
    NotSent { host: String, source: h2::Error },
    /// The connection can no longer send a provider token APNs takes: the shared token was renewed less than 20
    /// minutes after this connection adopted its own, which is too close to its hour to keep
    /// ([`TokenChoice::Retire`]). Nothing was sent; the call can be made again on a new connection.
    #[error(
        "HTTP/2 connection to {host} retired, nothing was sent: it adopted its provider token {adopted_secs} s ago \
         (a new one within 20 minutes would be refused) and that token, {token_age_secs} s old, is too close to its hour"
    )]
    TokenRetired {
        host: String,
        adopted_secs: u64,
        token_age_secs: u64,
    },
    /// The connection or the call's stream failed once the request was handed to the connection: it may have
    /// reached the server and been processed, unless [`BroadcastClientError::not_processed`] says otherwise.
    #[error("HTTP/2 error talking to {host}: {source}")]
    Http { host: String, source: h2::Error },
    #[error("no answer from {host} within {secs} s")]
    Timeout { host: String, secs: u64 },
    #[error("APNs answered {status}@{reason} ({class})")]
    Rejected {
        status: u16,
        reason: String,
        class: FailureClass,
    },
    #[error("unexpected answer from APNs: {0}")]
    BadAnswer(String),
}

impl BroadcastClientError {
    /// How the failure is treated: a rejection by its reason, a timeout or lost connection as transient, a
    /// request refused before sending as permanent.
    pub fn class(&self) -> FailureClass {
        match self {
            BroadcastClientError::Rejected { class, .. } => *class,
            BroadcastClientError::Request(_) | BroadcastClientError::BadAnswer(_) => {
                FailureClass::Permanent
            }
            _ => FailureClass::Transient,
        }
    }

    /// Whether the server did not process the call, so that it can be sent again at once as never sent: it was not
    /// sent at all ([`BroadcastClientError::NotSent`]), or its stream was left above the last stream id of the
    /// server's GOAWAY (RFC 9113 §8.7, docs/apns-protocol.md §3.7), which calls for a new connection; or its stream
    /// was refused (`RST_STREAM(REFUSED_STREAM)`), which does not: the connection is sound
    /// ([`BroadcastClientError::stream_refused`]).
    pub fn not_processed(&self) -> bool {
        match self {
            BroadcastClientError::NotSent { .. } | BroadcastClientError::TokenRetired { .. } => {
                true
            }
            BroadcastClientError::Http { source, .. } => not_processed(source),
            _ => false,
        }
    }

    /// Whether the server refused the call's stream (`RST_STREAM(REFUSED_STREAM)`, RFC 9113 §8.7): it did not
    /// process the call, and said nothing against the connection, which goes on serving other streams (a server
    /// over its stream limit, or one that lowered it). Unlike the other calls not processed
    /// ([`BroadcastClientError::not_processed`]: not sent, or above a GOAWAY's last stream id), the call can be made
    /// again at once on the same connection, while it is open ([`BroadcastClient::is_closed`]).
    pub fn stream_refused(&self) -> bool {
        match self {
            BroadcastClientError::Http { source, .. } => {
                source.is_reset()
                    && source.is_remote()
                    && source.reason() == Some(h2::Reason::REFUSED_STREAM)
            }
            _ => false,
        }
    }

    /// For an `ExpiredProviderToken` answer (to a management call or a broadcast): whether the provider token in
    /// force is a newer one than the refused one by now (`Some(true)`, the class is then
    /// [`FailureClass::RefreshTokenAndRetry`]), so that the call can be sent again at once on a new connection;
    /// `Some(false)` when it is still the refused one (it is younger than 20 minutes by herald's clock, or the
    /// connection has no token), a transient failure. `None` for any other error.
    pub fn token_expired(&self) -> Option<bool> {
        match self {
            BroadcastClientError::Rejected { reason, class, .. }
                if reason == EXPIRED_PROVIDER_TOKEN =>
            {
                Some(*class == FailureClass::RefreshTokenAndRetry)
            }
            _ => None,
        }
    }

    /// Whether APNs refused the call's provider token as changed too often on this connection (`429
    /// TooManyProviderTokenUpdates`): the connection would get the same answer for every call, while a new one's
    /// first token is no update (docs/apns-protocol.md#provider-tokens), so the caller drops it.
    pub fn token_updates_refused(&self) -> bool {
        matches!(self, BroadcastClientError::Rejected { reason, .. } if reason == TOO_MANY_TOKEN_UPDATES)
    }

    /// The reason text of a rejection.
    pub fn reason(&self) -> Option<&str> {
        match self {
            BroadcastClientError::Rejected { reason, .. } => Some(reason),
            _ => None,
        }
    }
}

/// What a channel read answers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub struct ChannelInfo {
    #[serde(rename = "message-storage-policy")]
    pub policy: StoragePolicy,
    #[serde(rename = "push-type")]
    pub push_type: String,
}

/// A whole answer.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Bytes,
}

/// One connection; cheap to clone (calls on clones share the connection).
#[derive(Clone)]
pub struct BroadcastClient {
    send: SendRequest<Bytes>,
    authority: Authority,
    host: String,
    auth: Option<ProviderTokenCache>,
    /// The provider token this connection adopted, and when (shared by the clones, which share the connection):
    /// a connection takes a renewed token only 20 minutes after adopting its own.
    token: Arc<std::sync::Mutex<ConnectionToken>>,
    timeout: Duration,
    /// When something was last read from the server (shared by the clones, which share the connection).
    heard: Arc<LastHeard>,
    /// The connection's PINGs (shared by the clones): one out at a time.
    pinger: Arc<tokio::sync::Mutex<Pinger>>,
    _driver: Arc<DriverGuard>,
}

/// When something was last read from a connection's server. On the real clock: the silence of a real socket.
struct LastHeard(std::sync::Mutex<Instant>);

impl LastHeard {
    fn new() -> LastHeard {
        LastHeard(std::sync::Mutex::new(Instant::now()))
    }

    fn get(&self) -> Instant {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now(&self) {
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Instant::now();
    }
}

/// The transport of a connection, noting when something was read from it ([`LastHeard`]).
struct Heard<S> {
    io: S,
    heard: Arc<LastHeard>,
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Heard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if matches!(read, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.heard.now();
        }
        read
    }
}

crate::client::preface::forward_async_write!(Heard);

/// A connection's PINGs: h2 lets one be out at a time.
struct Pinger {
    /// `None` when h2 gave none (it gives them once, to the connection's opener).
    pong: Option<h2::PingPong>,
    /// A PING is out and its answer not yet taken (a caller stopped waiting for it): the next caller waits for that
    /// answer instead of sending another.
    out: bool,
}

/// How long a connection whose every clone was dropped has to close itself cleanly (GOAWAY, then the socket)
/// before its task is ended.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The task driving the connection, shared by the clones. Dropped with the last clone, once every handle that sends
/// on the connection is gone: h2 then sends `GOAWAY(NO_ERROR)` and closes the connection as soon as its open
/// streams have ended, which it has [`CLOSE_GRACE`] to do before the task is ended.
struct DriverGuard(Option<tokio::task::JoinHandle<()>>);

impl DriverGuard {
    fn is_finished(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished)
    }
}

impl Drop for DriverGuard {
    fn drop(&mut self) {
        let Some(mut driver) = self.0.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if !driver.is_finished() => {
                runtime.spawn(async move {
                    if tokio::time::timeout(CLOSE_GRACE, &mut driver)
                        .await
                        .is_err()
                    {
                        driver.abort();
                    }
                });
            }
            _ => driver.abort(),
        }
    }
}

impl BroadcastClient {
    /// Connects (TLS with ALPN `h2`; the client certificate in `tls` for certificate auth, `auth` for token
    /// auth). `timeout` bounds the connection and each call.
    pub async fn connect(
        endpoint: &Endpoint,
        tls: Arc<rustls::ClientConfig>,
        auth: Option<ProviderTokenCache>,
        timeout: Duration,
    ) -> Result<BroadcastClient, ConnectionError> {
        let (stream, _remote) = connect_tls(endpoint, tls, timeout).await?;
        // As the notification client does: a server that chose another ALPN protocol does not speak HTTP/2, and one
        // that agreed on none and then fails the HTTP/2 handshake is reported as not speaking it.
        let h2_agreed = alpn_h2(&stream, &endpoint.host)?;
        BroadcastClient::over(stream, endpoint, auth, timeout)
            .await
            .map_err(|e| {
                if h2_agreed {
                    e
                } else {
                    without_alpn(e, &endpoint.host)
                }
            })
    }

    /// [`BroadcastClient::connect`] on an established transport: the HTTP/2 handshake, complete once the server's
    /// preface came ([`preface::open`]), within `timeout`.
    async fn over<S>(
        io: S,
        endpoint: &Endpoint,
        auth: Option<ProviderTokenCache>,
        timeout: Duration,
    ) -> Result<BroadcastClient, ConnectionError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        // Complete only once the server's SETTINGS came: until then the connection keeps to one stream, so calls
        // made at once on a new connection wait for the server's limit instead of opening streams it refuses.
        let mut builder = h2::client::Builder::new();
        builder.enable_push(false);
        let heard = Arc::new(LastHeard::new());
        let io = Heard {
            io,
            heard: heard.clone(),
        };
        let (send, mut connection) = preface::open(io, builder, &endpoint.host, timeout).await?;
        let pinger = Pinger {
            pong: connection.ping_pong(),
            out: false,
        };
        let driver = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("broadcast connection ended: {e}");
            }
        });
        let authority: Authority = endpoint
            .authority()
            .parse()
            .map_err(|_| ConnectionError::ServerName(endpoint.host.clone()))?;
        Ok(BroadcastClient {
            send,
            authority,
            host: endpoint.host.clone(),
            auth,
            token: Arc::default(),
            timeout,
            heard,
            pinger: Arc::new(tokio::sync::Mutex::new(pinger)),
            _driver: Arc::new(DriverGuard(Some(driver))),
        })
    }

    /// How long since something was last read from the server (an answer, a PING's answer, any frame), or since the
    /// connection opened.
    pub fn silent_for(&self) -> Duration {
        self.heard.get().elapsed()
    }

    /// Asks the server with an HTTP/2 PING whether it is still there, and waits for its answer at most `limit`
    /// (never longer than the call timeout). An error (no answer in time, the connection ended) says the
    /// connection should not be given another call. Nothing of any call is sent; a PING already out, whose answer
    /// a caller stopped waiting for, is waited for rather than another sent. An answer to such a PING that came
    /// before this check is no answer to it (the server may have gone since): it is set aside, and a new PING
    /// goes out.
    pub async fn ping(&self, limit: Duration) -> Result<(), BroadcastClientError> {
        let limit = limit.min(self.timeout);
        let http_err = |source| BroadcastClientError::Http {
            host: self.host.clone(),
            source,
        };
        let asked = async {
            let mut pinger = self.pinger.lock().await;
            let Pinger { pong, out } = &mut *pinger;
            // h2 gives the PINGs to the connection's opener, which took them: never without.
            let Some(pong) = pong.as_mut() else {
                return Ok(());
            };
            // The answer to a PING a caller stopped waiting for may have come since, and waits in h2 to be taken.
            if *out && let Some(stale) = poll_fn(|cx| pong.poll_pong(cx)).now_or_never() {
                stale.map_err(http_err)?;
                *out = false;
            }
            if !*out {
                pong.send_ping(h2::Ping::opaque()).map_err(http_err)?;
                *out = true;
            }
            poll_fn(|cx| pong.poll_pong(cx)).await.map_err(http_err)?;
            *out = false;
            Ok(())
        };
        tokio::time::timeout(limit, asked)
            .await
            .map_err(|_| BroadcastClientError::Timeout {
                host: self.host.clone(),
                secs: limit.as_secs(),
            })?
    }

    /// Whether `other` is a clone of this client (calls on both share one connection).
    pub fn same_connection(&self, other: &BroadcastClient) -> bool {
        Arc::ptr_eq(&self._driver, &other._driver)
    }

    /// Whether the connection has ended (closed by the server, GOAWAY, an error): a caller that keeps a client
    /// connects again instead of using it.
    pub fn is_closed(&self) -> bool {
        self._driver.is_finished()
    }

    /// Creates a channel; returns its id.
    pub async fn create_channel(
        &self,
        bundle: &str,
        policy: StoragePolicy,
    ) -> Result<ChannelId, BroadcastClientError> {
        let a = self.channel(bundle, &ChannelOp::Create { policy }).await?;
        let id = a
            .headers
            .get(&APNS_CHANNEL_ID)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| BroadcastClientError::BadAnswer("201 without apns-channel-id".into()))?;
        ChannelId::parse(id).map_err(|e| BroadcastClientError::BadAnswer(e.to_string()))
    }

    /// Reads a channel's storage policy and push type.
    pub async fn read_channel(
        &self,
        bundle: &str,
        channel: &ChannelId,
    ) -> Result<ChannelInfo, BroadcastClientError> {
        let op = ChannelOp::Read {
            channel: channel.clone(),
        };
        let a = self.channel(bundle, &op).await?;
        serde_json::from_slice(&a.body).map_err(|e| BroadcastClientError::BadAnswer(e.to_string()))
    }

    /// Deletes a channel.
    pub async fn delete_channel(
        &self,
        bundle: &str,
        channel: &ChannelId,
    ) -> Result<(), BroadcastClientError> {
        let op = ChannelOp::Delete {
            channel: channel.clone(),
        };
        self.channel(bundle, &op).await.map(|_| ())
    }

    /// Every channel of the app in this environment.
    pub async fn list_channels(
        &self,
        bundle: &str,
    ) -> Result<Vec<ChannelId>, BroadcastClientError> {
        #[derive(serde::Deserialize)]
        struct List {
            channels: Vec<String>,
        }
        let a = self.channel(bundle, &ChannelOp::List).await?;
        let list: List = serde_json::from_slice(&a.body)
            .map_err(|e| BroadcastClientError::BadAnswer(e.to_string()))?;
        list.channels
            .iter()
            .map(|c| {
                ChannelId::parse(c).map_err(|e| BroadcastClientError::BadAnswer(e.to_string()))
            })
            .collect()
    }

    /// Sends one broadcast (checked first, without knowing the channel's policy). Returns the
    /// `apns-request-id` of the answer.
    pub async fn broadcast(
        &self,
        send: &BroadcastSend,
    ) -> Result<Option<String>, BroadcastClientError> {
        send.validate(None)?;
        let path = send.path()?;
        let headers = send.headers()?;
        let a = self
            .call(
                Method::POST,
                &path,
                &headers,
                send.payload.clone(),
                200,
                MAX_BODY,
            )
            .await?;
        Ok(request_id(&a.headers))
    }

    /// One management call; the answer when it has the operation's success status.
    async fn channel(&self, bundle: &str, op: &ChannelOp) -> Result<Answer, BroadcastClientError> {
        let bundle = bundle_for_path(bundle)?;
        let mut headers = Vec::new();
        if let Some(ch) = op.channel_header() {
            headers.push((APNS_CHANNEL_ID.clone(), ch));
        }
        let max_body = match op {
            ChannelOp::List => MAX_LIST_BODY,
            _ => MAX_BODY,
        };
        self.call(
            op.method(),
            &op.path(bundle),
            &headers,
            op.body(),
            op.success_status(),
            max_body,
        )
        .await
    }

    /// One call; the answer when it has the `success` status (its body at most `max_body` bytes). An `ExpiredProviderToken` answer is never followed by
    /// another stream on this connection, which APNs may no longer serve (docs/apns-protocol.md §3.7): the refused
    /// token is renewed when the cache allows, and the rejection returned, [`FailureClass::RefreshTokenAndRetry`]
    /// when it was (the caller sends again on a new connection) and [`FailureClass::Transient`] when the cache kept
    /// it (younger than 20 minutes here: it would be refused again).
    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        success: u16,
        max_body: usize,
    ) -> Result<Answer, BroadcastClientError> {
        let token = match &self.auth {
            None => None,
            Some(auth) => {
                let mut held = self
                    .token
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match auth.for_connection(&mut held) {
                    TokenChoice::Send(token) => Some(token),
                    TokenChoice::Retire {
                        adopted_for,
                        token_age,
                    } => {
                        return Err(BroadcastClientError::TokenRetired {
                            host: self.host.clone(),
                            adopted_secs: adopted_for.as_secs(),
                            token_age_secs: token_age.as_secs(),
                        });
                    }
                }
            }
        };
        let answer = self
            .once(&method, path, headers, body, token.as_deref(), max_body)
            .await?;
        if answer.status == success {
            return Ok(answer);
        }
        let reason = parse_error_body(&answer.body).ok().map(|b| b.reason);
        let mut class = classify_broadcast(answer.status, reason.as_deref());
        if class == FailureClass::RefreshTokenAndRetry {
            // The first report about a token renews it (docs/apns-protocol.md#provider-tokens).
            let renewed = match (&self.auth, &token) {
                (Some(auth), Some(seen)) => *auth.expired(seen) != **seen,
                _ => false,
            };
            if !renewed {
                class = FailureClass::Transient;
            }
        }
        Err(BroadcastClientError::Rejected {
            status: answer.status,
            reason: reason.unwrap_or_else(|| "-".into()),
            class,
        })
    }

    async fn once(
        &self,
        method: &Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        token: Option<&str>,
        max_body: usize,
    ) -> Result<Answer, BroadcastClientError> {
        let http_err = |source| BroadcastClientError::Http {
            host: self.host.clone(),
            source,
        };
        let not_sent = |source| BroadcastClientError::NotSent {
            host: self.host.clone(),
            source,
        };
        let fut = async {
            let mut parts = http::uri::Parts::default();
            parts.scheme = Some(Scheme::HTTPS);
            parts.authority = Some(self.authority.clone());
            parts.path_and_query = Some(
                PathAndQuery::try_from(path)
                    .map_err(|_| BroadcastClientError::BadAnswer(format!("bad path {path:?}")))?,
            );
            let uri = Uri::from_parts(parts)
                .map_err(|e| BroadcastClientError::BadAnswer(e.to_string()))?;
            let mut req = Request::new(());
            *req.method_mut() = method.clone();
            *req.uri_mut() = uri;
            let h = req.headers_mut();
            if let Some(t) = token
                && let Ok(v) = HeaderValue::try_from(format!("bearer {t}"))
            {
                h.insert(AUTHORIZATION, v);
            }
            for (k, v) in headers {
                h.insert(k.clone(), v.clone());
            }
            // Until `send_request` took it, the request is nowhere but here: a connection that fails, or is going
            // away, before then sent nothing.
            let mut send = self.send.clone().ready().await.map_err(not_sent)?;
            let end = body.is_empty();
            let (response, mut stream) = send.send_request(req, end).map_err(not_sent)?;
            // The server may answer, and close the stream, before the body is written (a refusal of the headers):
            // that answer is the outcome, so it is read whether or not the body went out.
            // A stream reset or a lost connection fails the read with the same cause.
            if !end {
                let _ = stream.send_data(body, true);
            }
            let response = response.await.map_err(http_err)?;
            let status = response.status().as_u16();
            let (parts, mut recv) = response.into_parts();
            let mut buf = BytesMut::new();
            while let Some(chunk) = recv.data().await {
                let chunk = chunk.map_err(http_err)?;
                let _ = recv.flow_control().release_capacity(chunk.len());
                if buf.len() + chunk.len() > max_body {
                    return Err(BroadcastClientError::BadAnswer(format!(
                        "answer body over {max_body} bytes"
                    )));
                }
                buf.extend_from_slice(&chunk);
            }
            Ok(Answer {
                status,
                headers: parts.headers,
                body: buf.freeze(),
            })
        };
        tokio::time::timeout(self.timeout, fut).await.map_err(|_| {
            BroadcastClientError::Timeout {
                host: self.host.clone(),
                secs: self.timeout.as_secs(),
            }
        })?
    }
}

fn request_id(h: &http::HeaderMap) -> Option<String> {
    h.get(&APNS_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    //! The connection's stream limit and its refused streams, against servers on 127.0.0.1.

    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const SETTINGS: u8 = 0x4;
    const WAIT: Duration = Duration::from_secs(10);

    fn update() -> BroadcastSend {
        BroadcastSend {
            bundle_id: "com.example.app".into(),
            channel: ChannelId::parse("dHN0LXNyY2gtY2hubA==").unwrap(),
            priority: 10,
            expiration: None,
            request_id: None,
            payload: Bytes::from_static(
                br#"{"aps":{"event":"update","timestamp":1700000000,"content-state":{"score":1}}}"#,
            ),
        }
    }

    /// A client on a new TCP connection to `addr`.
    async fn client(addr: std::net::SocketAddr) -> Result<BroadcastClient, ConnectionError> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        BroadcastClient::over(tcp, &Endpoint::new("127.0.0.1", addr.port()), None, WAIT).await
    }

    /// A TLS server answering the HTTP/2 connection preface in HTTP/1, whose handshake chose `alpn` (none when
    /// empty); returns the error of a connect to it.
    async fn connect_to_http1_server(alpn: &[&[u8]]) -> ConnectionError {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor =
            tokio_rustls::TlsAcceptor::from(crate::client::http2::tests::test_server_tls(alpn));
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let Ok(mut tls) = acceptor.accept(sock).await else {
                return;
            };
            let mut request = [0u8; 24];
            if tls.read_exact(&mut request).await.is_ok() {
                let _ = tls
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .await;
                let _ = tls.shutdown().await;
            }
        });
        let mut tls =
            crate::identity::client_config(None, crate::identity::RootSource::NoVerify, true)
                .unwrap();
        Arc::make_mut(&mut tls).alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        BroadcastClient::connect(&Endpoint::new("127.0.0.1", addr.port()), tls, None, WAIT)
            .await
            .map(|_| ())
            .unwrap_err()
    }

    /// A channel or broadcast host that chose another ALPN protocol than `h2`, or none and answered in HTTP/1,
    /// does not speak HTTP/2, and the error says so, as for the notification client (not a frame error from
    /// reading its HTTP/1 answer as frames, nor a timeout).
    #[tokio::test]
    async fn a_host_that_does_not_speak_http2_is_named_so() {
        let e = connect_to_http1_server(&[b"http/1.1"]).await;
        assert!(matches!(e, ConnectionError::NotHttp2 { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "127.0.0.1 does not speak HTTP/2: it chose the ALPN protocol \"http/1.1\", not h2"
        );
        let e = connect_to_http1_server(&[]).await;
        assert_eq!(
            e.to_string(),
            "127.0.0.1 does not speak HTTP/2: it agreed on no ALPN protocol (herald offers h2), and it answered \
             the HTTP/2 connection preface in HTTP/1"
        );
    }

    /// An h2 server allowing one stream at a time (as APNs does on a token connection not yet authenticated)
    /// answers calls made at once on a new connection: every one goes out within the limit, none is refused.
    #[tokio::test]
    async fn calls_at_once_on_a_new_connection_keep_to_the_servers_stream_limit() {
        const CALLS: usize = 8;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let answered = Arc::new(AtomicUsize::new(0));
        let counted = answered.clone();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::Builder::new()
                .max_concurrent_streams(1)
                .handshake::<_, Bytes>(sock)
                .await
                .unwrap();
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                let counted = counted.clone();
                tokio::spawn(async move {
                    let mut body = req.into_body();
                    while let Some(chunk) = body.data().await {
                        let _ = body.flow_control().release_capacity(chunk.unwrap().len());
                    }
                    let answer = http::Response::builder().status(200).body(()).unwrap();
                    respond.send_response(answer, true).unwrap();
                    counted.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        let c = client(addr).await.unwrap();
        let send = update();
        let results = futures_util::future::join_all((0..CALLS).map(|_| c.broadcast(&send))).await;
        for r in &results {
            assert!(r.is_ok(), "a call failed: {r:?}");
        }
        assert_eq!(answered.load(Ordering::SeqCst), CALLS);
    }

    /// A token cache on a clock the test moves: the first token is minted at the clock's start.
    fn token_cache(clock: &crate::provider_token::ManualClock) -> ProviderTokenCache {
        token_cache_renewed_after(clock, crate::provider_token::MAX_REFRESH)
    }

    /// [`token_cache`] renewing its token after `refresh`.
    fn token_cache_renewed_after(
        clock: &crate::provider_token::ManualClock,
        refresh: Duration,
    ) -> ProviderTokenCache {
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
        ProviderTokenCache::with_clock(key, refresh, Arc::new(clock.clone())).unwrap()
    }

    /// The `authorization` header of every stream, per TCP connection in the order they were accepted.
    type Streams = Arc<std::sync::Mutex<Vec<Vec<String>>>>;

    /// An h2 server that answers the first stream of all `403 {"reason":"ExpiredProviderToken"}` and every other
    /// one 200, and records the streams of each connection.
    async fn expired_token_server() -> (std::net::SocketAddr, Streams) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let streams: Streams = Arc::default();
        let record = streams.clone();
        tokio::spawn(async move {
            let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
            while let Ok((sock, _)) = listener.accept().await {
                let conn_no = {
                    let mut all = record.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                let (record, first) = (record.clone(), first.clone());
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(sock).await.unwrap();
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let auth = req
                            .headers()
                            .get(AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned();
                        record.lock().unwrap()[conn_no].push(auth);
                        if first.swap(false, Ordering::SeqCst) {
                            let answer = http::Response::builder().status(403).body(()).unwrap();
                            let mut body = respond.send_response(answer, false).unwrap();
                            let reason =
                                Bytes::from_static(br#"{"reason":"ExpiredProviderToken"}"#);
                            body.send_data(reason, true).unwrap();
                        } else {
                            let answer = http::Response::builder().status(200).body(()).unwrap();
                            respond.send_response(answer, true).unwrap();
                        }
                    }
                });
            }
        });
        (addr, streams)
    }

    /// An h2 server that answers every stream 200 and records the streams of each connection.
    async fn recording_server() -> (std::net::SocketAddr, Streams) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let streams: Streams = Arc::default();
        let record = streams.clone();
        tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                let conn_no = {
                    let mut all = record.lock().unwrap();
                    all.push(Vec::new());
                    all.len() - 1
                };
                let record = record.clone();
                tokio::spawn(async move {
                    let mut conn = h2::server::handshake(sock).await.unwrap();
                    while let Some(Ok((req, mut respond))) = conn.accept().await {
                        let auth = req
                            .headers()
                            .get(AUTHORIZATION)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-")
                            .to_owned();
                        record.lock().unwrap()[conn_no].push(auth);
                        let answer = http::Response::builder().status(200).body(()).unwrap();
                        respond.send_response(answer, true).unwrap();
                    }
                });
            }
        });
        (addr, streams)
    }

    /// A kept connection takes a renewed provider token only 20 minutes after adopting its own (APNs answers
    /// TooManyProviderTokenUpdates sooner): it keeps its token while that is young enough, and is then retired,
    /// nothing sent, for a new connection to adopt the renewal (docs/apns-protocol.md#provider-tokens).
    #[tokio::test]
    async fn a_kept_connection_keeps_its_token_then_retires_instead_of_switching_within_20_minutes()
    {
        let (addr, streams) = recording_server().await;
        let clock = crate::provider_token::ManualClock::new(1_800_000_000);
        let auth = token_cache_renewed_after(&clock, Duration::from_secs(50 * 60));
        // The shared token is 45 minutes old when this connection adopts it.
        clock.advance(Duration::from_secs(45 * 60));
        let c = token_client(addr, &auth).await;
        c.broadcast(&update()).await.unwrap();
        // Renewed at 50 minutes; the connection adopted its own 6 minutes ago, and keeps it (51 minutes old).
        clock.advance(Duration::from_secs(6 * 60));
        c.broadcast(&update()).await.unwrap();
        assert_eq!(auth.mints(), 2, "the shared token was renewed");
        // 56 minutes old, adopted 11 minutes ago: neither kept nor switched.
        clock.advance(Duration::from_secs(5 * 60));
        let e = c.broadcast(&update()).await.unwrap_err();
        assert!(
            matches!(e, BroadcastClientError::TokenRetired { .. }),
            "{e}"
        );
        assert!(e.not_processed(), "made again on a new connection: {e}");
        // A new connection adopts the renewal.
        token_client(addr, &auth)
            .await
            .broadcast(&update())
            .await
            .unwrap();
        let streams = streams.lock().unwrap().clone();
        assert_eq!(streams.len(), 2, "{streams:?}");
        assert_eq!(
            streams[0].len(),
            2,
            "nothing sent once retired: {streams:?}"
        );
        assert_eq!(
            streams[0][0], streams[0][1],
            "the kept connection kept its token"
        );
        assert_ne!(
            streams[1][0], streams[0][0],
            "the new connection adopted the renewal"
        );
    }

    /// A client with token auth from `auth` on a new TCP connection to `addr`.
    async fn token_client(
        addr: std::net::SocketAddr,
        auth: &ProviderTokenCache,
    ) -> BroadcastClient {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let endpoint = Endpoint::new("127.0.0.1", addr.port());
        BroadcastClient::over(tcp, &endpoint, Some(auth.clone()), WAIT)
            .await
            .unwrap()
    }

    /// `ExpiredProviderToken` for a token old enough to renew: the broadcast is not sent again on the connection that
    /// answered it (APNs may no longer serve it), the error says the token was renewed, and the retry, made on a new
    /// connection, carries the new token and is delivered.
    #[tokio::test]
    async fn an_expired_token_renewed_is_retried_on_a_new_connection_only() {
        let (addr, streams) = expired_token_server().await;
        let clock = crate::provider_token::ManualClock::new(1_800_000_000);
        let auth = token_cache(&clock);
        clock.advance(Duration::from_secs(25 * 60));
        let first = token_client(addr, &auth).await;
        let e = first.broadcast(&update()).await.unwrap_err();
        assert_eq!(e.token_expired(), Some(true), "{e}");
        assert_eq!(e.class(), FailureClass::RefreshTokenAndRetry);
        assert_eq!(auth.mints(), 2, "the refused token was renewed");
        token_client(addr, &auth)
            .await
            .broadcast(&update())
            .await
            .unwrap();
        let streams = streams.lock().unwrap().clone();
        assert_eq!(streams.len(), 2, "{streams:?}");
        assert_eq!(
            streams.iter().map(Vec::len).collect::<Vec<_>>(),
            [1, 1],
            "one stream per connection: {streams:?}"
        );
        assert_ne!(
            streams[0][0], streams[1][0],
            "the retry carries the new token"
        );
    }

    /// `ExpiredProviderToken` for a token too young to renew (the clocks disagree): no second stream is sent with
    /// the token just refused; the broadcast is a transient failure, for the caller's retry schedule.
    #[tokio::test]
    async fn an_expired_token_not_renewed_is_not_sent_again() {
        let (addr, streams) = expired_token_server().await;
        let clock = crate::provider_token::ManualClock::new(1_800_000_000);
        let auth = token_cache(&clock);
        let c = token_client(addr, &auth).await;
        let e = c.broadcast(&update()).await.unwrap_err();
        assert_eq!(e.token_expired(), Some(false), "{e}");
        assert_eq!(e.class(), FailureClass::Transient);
        assert_eq!(auth.mints(), 1);
        assert_eq!(
            streams.lock().unwrap().clone(),
            [vec![format!("bearer {}", auth.current())]]
        );
    }

    /// A management call gets the same treatment as a broadcast: `ExpiredProviderToken` for a token too young to
    /// renew is not answered by a second stream with the token just refused, on a connection APNs may no longer
    /// serve; the create is a transient failure. For a token old enough, it is renewed and the error says so, for a
    /// retry on a new connection, and still nothing more goes out on this one.
    #[tokio::test]
    async fn an_expired_token_to_a_management_call_is_not_sent_again_on_its_connection() {
        for (age, renewed) in [
            (Duration::ZERO, false),
            (Duration::from_secs(25 * 60), true),
        ] {
            let (addr, streams) = expired_token_server().await;
            let clock = crate::provider_token::ManualClock::new(1_800_000_000);
            let auth = token_cache(&clock);
            clock.advance(age);
            let refused = format!("bearer {}", auth.current());
            let c = token_client(addr, &auth).await;
            let e = c
                .create_channel("com.example.app", StoragePolicy::MostRecentMessage)
                .await
                .unwrap_err();
            assert_eq!(e.token_expired(), Some(renewed), "{e}");
            let class = if renewed {
                FailureClass::RefreshTokenAndRetry
            } else {
                FailureClass::Transient
            };
            assert_eq!(e.class(), class, "{e}");
            assert_eq!(auth.mints(), if renewed { 2 } else { 1 });
            assert_eq!(streams.lock().unwrap().clone(), [vec![refused]]);
        }
    }

    /// APNs publishes no size for channel ids: a create answered with a 400-character id gives that id, and a list
    /// holding it lists it.
    #[tokio::test]
    async fn channel_ids_from_apns_are_not_held_to_a_size_herald_guessed() {
        let long = "QUJD".repeat(100);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let id = long.clone();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(sock).await.unwrap();
            while let Some(Ok((req, mut respond))) = conn.accept().await {
                let answer = if req.method() == Method::POST {
                    http::Response::builder()
                        .status(201)
                        .header("apns-channel-id", id.as_str())
                        .body(())
                        .unwrap()
                } else {
                    http::Response::builder().status(200).body(()).unwrap()
                };
                let list = format!(r#"{{"channels":["{id}"]}}"#);
                if req.method() == Method::POST {
                    respond.send_response(answer, true).unwrap();
                } else {
                    let mut body = respond.send_response(answer, false).unwrap();
                    body.send_data(Bytes::from(list), true).unwrap();
                }
            }
        });
        let c = client(addr).await.unwrap();
        let created = c
            .create_channel("com.example.app", StoragePolicy::NoStorage)
            .await
            .unwrap();
        assert_eq!(created.as_str(), long);
        assert_eq!(c.list_channels("com.example.app").await.unwrap(), [created]);
    }

    /// An app's every channel can be listed whatever the ids' size: the bound on a list's answer holds
    /// [`MAX_CHANNELS`] ids of the longest length herald takes, and a list over the 1 MiB of other answers (1,000
    /// such ids) is read, not taken for an unreadable answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_channel_list_over_a_mebibyte_is_read() {
        let full = format!(
            r#"{{"channels":[{}]}}"#,
            vec![format!("\"{}\"", "A".repeat(MAX_CHANNEL_ID_LEN)); MAX_CHANNELS].join(",")
        );
        assert!(full.len() <= MAX_LIST_BODY, "{} bytes", full.len());
        const LISTED: usize = 1_000;
        let ids: Vec<String> = (0..LISTED)
            .map(|n| format!("{n:04}{}", "A".repeat(MAX_CHANNEL_ID_LEN - 4)))
            .collect();
        let list = format!(r#"{{"channels":["{}"]}}"#, ids.join("\",\""));
        assert!(list.len() > MAX_BODY);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(sock).await.unwrap();
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                let body = Bytes::from(list.clone());
                tokio::spawn(async move {
                    let answer = http::Response::builder().status(200).body(()).unwrap();
                    let mut stream = respond.send_response(answer, false).unwrap();
                    // Within the flow-control window the client grants.
                    let mut rest = body;
                    while !rest.is_empty() {
                        stream.reserve_capacity(rest.len());
                        let Some(Ok(room)) =
                            std::future::poll_fn(|cx| stream.poll_capacity(cx)).await
                        else {
                            return;
                        };
                        let chunk = rest.split_to(room.min(rest.len()));
                        if stream.send_data(chunk, rest.is_empty()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let c = client(addr).await.unwrap();
        let listed = c.list_channels("com.example.app").await.unwrap();
        let listed: Vec<&str> = listed.iter().map(ChannelId::as_str).collect();
        assert_eq!(listed, ids);
    }

    /// A call on a connection that had already ended (the server closed it) was not sent at all: the error says so,
    /// and that the server did not process it, so that it can be made again at once on a new connection.
    #[tokio::test]
    async fn a_call_on_a_connection_that_ended_was_not_sent() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (close, closing) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(sock).await.unwrap();
            tokio::select! {
                _ = closing => {}
                _ = conn.accept() => {}
            }
            // Dropping the connection closes the socket: no GOAWAY.
        });
        let c = client(addr).await.unwrap();
        close.send(()).unwrap();
        let deadline = tokio::time::Instant::now() + WAIT;
        while !c.is_closed() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the connection never ended"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let e = c
            .create_channel("com.example.app", StoragePolicy::NoStorage)
            .await
            .unwrap_err();
        assert!(matches!(e, BroadcastClientError::NotSent { .. }), "{e:?}");
        assert!(e.not_processed(), "{e}");
        assert!(!e.stream_refused(), "{e}");
        assert_eq!(e.class(), FailureClass::Transient);
    }

    /// A stream the server refused was not processed, is told apart from the other calls not processed (it needs no
    /// new connection), and the connection, still open, takes the next call.
    #[tokio::test]
    async fn a_refused_stream_is_not_processed() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            let mut conn = h2::server::handshake(sock).await.unwrap();
            let mut first = true;
            while let Some(Ok((_req, mut respond))) = conn.accept().await {
                if std::mem::take(&mut first) {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                } else {
                    let answer = http::Response::builder().status(200).body(()).unwrap();
                    respond.send_response(answer, true).unwrap();
                }
            }
        });
        let c = client(addr).await.unwrap();
        let e = c.broadcast(&update()).await.unwrap_err();
        assert!(e.not_processed(), "{e}");
        assert!(e.stream_refused(), "{e}");
        assert_eq!(e.class(), FailureClass::Transient);
        assert!(!c.is_closed(), "the refusal closed the connection");
        c.broadcast(&update()).await.unwrap();
    }

    /// Dropping the last clone of a client (a connection no longer kept) closes the connection cleanly: the server
    /// gets `GOAWAY(NO_ERROR)`, then the end of the stream; a clone still held keeps it open for its calls.
    #[tokio::test]
    async fn dropping_the_last_clone_closes_the_connection_with_goaway() {
        const GOAWAY: u8 = 0x7;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (report, reported) = tokio::sync::oneshot::channel::<Vec<(u8, u32)>>();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut preface = [0u8; 24];
            sock.read_exact(&mut preface).await.unwrap();
            sock.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
                .await
                .unwrap();
            // Frames other than SETTINGS and WINDOW_UPDATE: (type, GOAWAY's error code), until the end of stream.
            let mut frames = Vec::new();
            loop {
                let mut head = [0u8; 9];
                if sock.read_exact(&mut head).await.is_err() {
                    break;
                }
                let len =
                    usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
                let mut payload = vec![0u8; len];
                if sock.read_exact(&mut payload).await.is_err() {
                    break;
                }
                match head[3] {
                    SETTINGS if head[4] & 1 == 0 => {
                        let _ = sock.write_all(&[0, 0, 0, SETTINGS, 1, 0, 0, 0, 0]).await;
                    }
                    SETTINGS | 0x8 => {}
                    GOAWAY if len >= 8 => frames.push((
                        GOAWAY,
                        u32::from_be_bytes([payload[4], payload[5], payload[6], payload[7]]),
                    )),
                    kind => frames.push((kind, 0)),
                }
            }
            let _ = report.send(frames);
        });
        let c = client(addr).await.unwrap();
        let kept = c.clone();
        drop(c);
        assert!(!kept.is_closed(), "a clone still holds the connection");
        drop(kept);
        let frames = tokio::time::timeout(WAIT, reported)
            .await
            .expect("the connection was never closed")
            .unwrap();
        assert_eq!(frames, [(GOAWAY, 0)], "GOAWAY(NO_ERROR), then the end");
    }

    /// A server that answers no request: once a request's HEADERS came it sends GOAWAY with `last_stream_id`
    /// and closes the connection.
    async fn goaway_then_close(mut sock: TcpStream, last_stream_id: u32) {
        let mut preface = [0u8; 24];
        sock.read_exact(&mut preface).await.unwrap();
        sock.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
            .await
            .unwrap();
        loop {
            let mut head = [0u8; 9];
            sock.read_exact(&mut head).await.unwrap();
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            sock.read_exact(&mut payload).await.unwrap();
            const HEADERS: u8 = 0x1;
            match head[3] {
                SETTINGS if head[4] & 1 == 0 => {
                    sock.write_all(&[0, 0, 0, SETTINGS, 1, 0, 0, 0, 0])
                        .await
                        .unwrap();
                }
                HEADERS => break,
                _ => {}
            }
        }
        const GOAWAY: u8 = 0x7;
        let l = last_stream_id.to_be_bytes();
        #[rustfmt::skip]
        let frame = [0, 0, 8, GOAWAY, 0, 0, 0, 0, 0, l[0], l[1], l[2], l[3], 0, 0, 0, 0];
        sock.write_all(&frame).await.unwrap();
        drop(sock);
    }

    /// A stream above the last stream id of the server's GOAWAY was not processed; one at or below it may have
    /// been (RFC 9113 §6.8), and is not said to be unprocessed.
    #[tokio::test]
    async fn a_stream_above_the_goaways_last_stream_id_is_not_processed() {
        for (last, unprocessed) in [(0, true), (1, false)] {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let (sock, _) = listener.accept().await.unwrap();
                goaway_then_close(sock, last).await;
            });
            let c = client(addr).await.unwrap();
            let e = c.broadcast(&update()).await.unwrap_err();
            assert_eq!(e.not_processed(), unprocessed, "last stream id {last}: {e}");
            assert!(!e.stream_refused(), "a GOAWAY is no refused stream: {e}");
        }
    }

    /// A live server answers a PING, and its answer counts as hearing from it.
    #[tokio::test]
    async fn a_live_server_answers_a_ping_which_counts_as_hearing_from_it() {
        let (addr, streams) = recording_server().await;
        let c = client(addr).await.unwrap();
        let asked = std::time::Instant::now();
        c.ping(WAIT).await.unwrap();
        assert!(
            c.silent_for() <= asked.elapsed(),
            "the PING's answer was heard"
        );
        c.broadcast(&update()).await.unwrap();
        assert_eq!(streams.lock().unwrap().len(), 1, "one connection");
    }

    /// A server that answers the first request, then reads everything and answers nothing, PINGs included, while
    /// keeping the connection open: a peer a NAT dropped without a word. Counts the PINGs it gets.
    async fn silent_after_first(mut sock: TcpStream, pings: Arc<AtomicUsize>) {
        const HEADERS: u8 = 0x1;
        const DATA: u8 = 0x0;
        const PING: u8 = 0x6;
        let mut preface = [0u8; 24];
        if sock.read_exact(&mut preface).await.is_err() {
            return;
        }
        let _ = sock.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]).await;
        let mut answered = false;
        loop {
            let mut head = [0u8; 9];
            if sock.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if sock.read_exact(&mut payload).await.is_err() {
                return;
            }
            match head[3] {
                SETTINGS if head[4] & 1 == 0 && !answered => {
                    let _ = sock.write_all(&[0, 0, 0, SETTINGS, 1, 0, 0, 0, 0]).await;
                }
                // The end of the first request's body: `:status 200` (static table index 8), ending the stream.
                DATA if head[4] & 1 == 1 && !answered => {
                    answered = true;
                    let s = &head[5..9];
                    let frame = [0, 0, 1, HEADERS, 0x5, s[0], s[1], s[2], s[3], 0x88];
                    let _ = sock.write_all(&frame).await;
                }
                PING if head[4] & 1 == 0 => {
                    pings.fetch_add(1, Ordering::SeqCst);
                }
                _ => {}
            }
        }
    }

    /// A PING to a server gone silent goes unanswered: the check fails within its limit, and a second check while
    /// the first PING is still out waits for that one rather than sending another.
    #[tokio::test]
    async fn a_ping_to_a_server_gone_silent_is_not_answered() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pings = Arc::new(AtomicUsize::new(0));
        let counted = pings.clone();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            silent_after_first(sock, counted).await;
        });
        let c = client(addr).await.unwrap();
        c.broadcast(&update()).await.unwrap();
        let limit = Duration::from_millis(300);
        for _ in 0..2 {
            let e = tokio::time::timeout(WAIT, c.ping(limit))
                .await
                .expect("the check outlived its limit")
                .unwrap_err();
            assert!(matches!(e, BroadcastClientError::Timeout { .. }), "{e}");
        }
        assert!(!c.is_closed(), "the connection itself is still open");
        let deadline = tokio::time::Instant::now() + WAIT;
        while pings.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no PING reached the server"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(pings.load(Ordering::SeqCst), 1, "one PING out at a time");
    }

    /// A server that answers nothing but its SETTINGS and the first PING, and that one only once `answer` says so,
    /// while keeping the connection open. Counts the PINGs it gets.
    async fn answers_first_ping_when_told(
        sock: TcpStream,
        pings: Arc<AtomicUsize>,
        answer: tokio::sync::oneshot::Receiver<()>,
    ) {
        const PING: u8 = 0x6;
        let (mut rd, mut wr) = sock.into_split();
        let (out, mut out_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(bytes) = out_rx.recv().await {
                if wr.write_all(&bytes).await.is_err() {
                    return;
                }
            }
            // The connection stays open (silent) for as long as the test runs.
            std::future::pending::<()>().await;
            drop(wr);
        });
        let mut preface = [0u8; 24];
        if rd.read_exact(&mut preface).await.is_err() {
            return;
        }
        let _ = out.send(vec![0, 0, 0, SETTINGS, 0, 0, 0, 0, 0]);
        let mut answer = Some(answer);
        loop {
            let mut head = [0u8; 9];
            if rd.read_exact(&mut head).await.is_err() {
                return;
            }
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            if rd.read_exact(&mut payload).await.is_err() {
                return;
            }
            match head[3] {
                SETTINGS if head[4] & 1 == 0 => {
                    let _ = out.send(vec![0, 0, 0, SETTINGS, 1, 0, 0, 0, 0]);
                }
                PING if head[4] & 1 == 0 => {
                    pings.fetch_add(1, Ordering::SeqCst);
                    if let Some(answer) = answer.take() {
                        let out = out.clone();
                        tokio::spawn(async move {
                            if answer.await.is_ok() {
                                let mut ack = vec![0, 0, 8, PING, 1, 0, 0, 0, 0];
                                ack.extend_from_slice(&payload);
                                let _ = out.send(ack);
                            }
                        });
                    }
                }
                _ => {}
            }
        }
    }

    /// The answer to a PING whose caller stopped waiting for it, come before the next check, is no answer to that
    /// check: the server may have gone silent since. The check sends a new PING and fails when that one goes
    /// unanswered.
    #[tokio::test]
    async fn a_late_answer_to_an_abandoned_ping_does_not_pass_the_next_check() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let pings = Arc::new(AtomicUsize::new(0));
        let counted = pings.clone();
        let (answer, told) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (sock, _) = listener.accept().await.unwrap();
            answers_first_ping_when_told(sock, counted, told).await;
        });
        let c = client(addr).await.unwrap();
        let limit = Duration::from_millis(300);
        // The first check gives up on its PING, which stays out.
        let e = c.ping(limit).await.unwrap_err();
        assert!(matches!(e, BroadcastClientError::Timeout { .. }), "{e}");
        let deadline = tokio::time::Instant::now() + WAIT;
        while pings.load(Ordering::SeqCst) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no PING reached the server"
            );
            tokio::task::yield_now().await;
        }
        // Its answer comes late, and is read by the connection.
        let told_at = Instant::now();
        answer.send(()).unwrap();
        while c.heard.get() <= told_at {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the PING's answer was not read"
            );
            tokio::task::yield_now().await;
        }
        // The server answers nothing more: the next check fails.
        let e = tokio::time::timeout(WAIT, c.ping(limit))
            .await
            .expect("the check outlived its limit")
            .unwrap_err();
        assert!(matches!(e, BroadcastClientError::Timeout { .. }), "{e}");
        assert_eq!(pings.load(Ordering::SeqCst), 2, "a new PING went out");
    }

    /// A connection is open only once the server's SETTINGS came: a server that sends something else first, closes,
    /// or says nothing within the timeout fails the connection.
    #[tokio::test]
    async fn a_connection_is_open_only_once_the_servers_settings_came() {
        async fn with(timeout: Duration, first: &'static [u8]) -> Result<(), ConnectionError> {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (done, closed) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(async move {
                let (mut sock, _) = listener.accept().await.unwrap();
                let mut preface = [0u8; 24];
                sock.read_exact(&mut preface).await.unwrap();
                sock.write_all(first).await.unwrap();
                // Kept open until the client is done with it, except when told to close at once.
                if !first.is_empty() {
                    let _ = closed.await;
                }
            });
            let tcp = TcpStream::connect(addr).await.unwrap();
            let r = BroadcastClient::over(tcp, &Endpoint::new("127.0.0.1", 1), None, timeout)
                .await
                .map(|_| ());
            drop(done);
            r
        }
        const SETTINGS_FRAME: &[u8] = &[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0];
        const PING: &[u8] = &[0, 0, 8, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        with(WAIT, SETTINGS_FRAME).await.unwrap();
        let e = with(WAIT, PING).await.unwrap_err();
        assert!(matches!(e, ConnectionError::Preface { .. }), "{e}");
        let e = with(WAIT, &[]).await.unwrap_err();
        assert!(
            matches!(
                e,
                ConnectionError::Preface { .. } | ConnectionError::Handshake { .. }
            ),
            "{e}"
        );
        // Nothing at all: a SETTINGS header cut short never completes.
        let e = with(Duration::from_millis(300), &[0, 0, 0])
            .await
            .unwrap_err();
        assert!(matches!(e, ConnectionError::PrefaceTimeout { .. }), "{e}");
    }
}
