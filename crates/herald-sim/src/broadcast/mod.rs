//! Broadcast push and channel management (docs/apns-protocol.md §6.2), on two ports of their own as Apple
//! separates the hosts: the management port serves `/1/apps/<bundle>/channels` (POST create, GET read, DELETE
//! delete) and `/1/apps/<bundle>/all-channels` (GET list); the broadcast port serves
//! `POST /4/broadcasts/apps/<bundle>`. Both authenticate like the device port (client certificate, or provider
//! token in `authorization`) and answer every failure with `{"reason":…}` and `apns-request-id`.
//!
//! Checks, first failure wins:
//! 1. a repeated `apns-*` header -> BadRequestParams; `apns-id` not a lowercase UUID or `apns-request-id` not a
//!    UUID -> BadMessageId
//! 2. a path of the other port or no path at all -> 404 BadPath; a method the path does not serve -> 405
//!    MethodNotAllowed
//! 3. authentication: certificate (BadCertificate, BadCertificateEnvironment) or token (MissingProviderToken,
//!    InvalidProviderToken, ExpiredProviderToken, TooManyProviderTokenUpdates)
//! 4. the bundle id of the path with a push-type suffix (`.push-type.liveactivity`, `.voip`, …) -> TopicDisallowed;
//!    a bundle id the certificate's topics or the token's key do not cover -> 403 TopicMismatch
//! 5. the bundle id's broadcast capability off (scenario `broadcast_disabled`) -> FeatureNotEnabled
//! 6. management: read and delete need `apns-channel-id` (MissingChannelId; BadChannelId for an id that is not
//!    base64 or is too long, as [`ChannelId::parse`] judges it; ChannelNotRegistered);
//!    create needs a JSON object body (BadRequestPayload) holding no attribute but `message-storage-policy` and
//!    `push-type` (BadRequestParams), with `message-storage-policy` 0 or 1 (missing or any other value ->
//!    MissingChannelQueueSize) and `push-type` `LiveActivity` (missing -> MissingPushType, other ->
//!    InvalidPushType); at the limit (10,000 per bundle id) -> CannotCreateChannelConfig. Success: 201 with
//!    `apns-channel-id`, 200 with the channel as JSON, 204, 200 with `{"channels":[…]}`.
//! 7. broadcast: `apns-channel-id` (MissingChannelId, BadChannelId), `apns-push-type` `liveactivity` (any case;
//!    missing -> MissingPushType, other -> InvalidPushType), `apns-priority` 10, 5 or 1 (BadPriority),
//!    `apns-expiration` an integer (BadExpirationDate), the channel known (ChannelNotRegistered), an expiration
//!    other than 0 on a no-storage channel (BadExpirationDate); then the body: empty -> PayloadEmpty, over 5120
//!    bytes -> 413 PayloadTooLarge, not a Live Activity update (including an `event` of `start`: a broadcast
//!    cannot start an activity) -> BadRequestPayload. `apns-topic` is not part of these APIs and is ignored.
//! 8. failures queued by the test ([`crate::SimHandle::fail_next_broadcasts`]) are answered next, in order
//!
//! An accepted broadcast answers 200 with `apns-request-id` and is recorded once (`"protocol":"broadcast"`) and
//! counted in `/stats` under `broadcast`.
//!
//! Both ports serve the device port's HTTP/2 limits (stream limit, windows, header list size:
//! [`crate::SimConfig`]) and its body timeout: a request whose body has not ended in time has its stream reset
//! (`REFUSED_STREAM`, unprocessed). Of a body, only what a payload may hold (5120 bytes, and one more to tell a
//! longer one) is kept; the rest is counted up to 64 KiB and not read beyond. Admin `POST /goaway` and the
//! simulator's shutdown send GOAWAY `{"reason":"Shutdown"}` naming the last stream taken, as on the device port;
//! the streams taken are finished, later ones refused (`REFUSED_STREAM`), and the connection closes.

mod channels;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use h2::RecvStream;
use h2::server::SendResponse;
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode};
use tokio::net::TcpListener;
use tokio::sync::watch;

use herald_apns::broadcast::request::{APNS_CHANNEL_ID, APNS_REQUEST_ID};
use herald_apns::broadcast::{BroadcastReason, ChannelId, StoragePolicy};
use herald_apns::payload::{BROADCAST_PAYLOAD_LIMIT, PayloadError, validate_broadcast};
use herald_apns::push::{parse_expiration, validate_apns_id};
use herald_apns::reason::Reason;

pub(crate) use channels::ChannelStore;

use crate::config::{AuthPolicy, Environment};
use crate::h2::auth::topic_base;
use crate::h2::io::{FrameControl, FrameIo, Injection};
use crate::h2::request::{ConnAuth, apns_id_header_ok};
use crate::h2::{ConnSettings, KeyRing};
use crate::record::{DeliveryRecord, RecordProtocol, Recorder};
use crate::registry::now_ms;
use crate::stats::Stats;

static APNS_PUSH_TYPE: HeaderName = HeaderName::from_static("apns-push-type");
static APNS_PRIORITY: HeaderName = HeaderName::from_static("apns-priority");
static APNS_EXPIRATION: HeaderName = HeaderName::from_static("apns-expiration");
static APNS_ID: HeaderName = HeaderName::from_static("apns-id");

/// Bodies beyond this are not read further: the answer is PayloadTooLarge either way.
const MAX_BODY_READ: usize = 64 * 1024;

/// Which of the two ports a listener is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Port {
    Management,
    Broadcast,
}

/// Shared by both ports.
pub(crate) struct BroadcastContext {
    pub stats: Arc<Stats>,
    pub recorder: Arc<Recorder>,
    pub keys: Arc<KeyRing>,
    pub environment: Environment,
    pub auth: AuthPolicy,
    pub token_max_age: Duration,
    pub token_update_interval: Duration,
    pub channels: ChannelStore,
    pub disabled: Vec<String>,
    /// Reasons to answer to the next broadcasts, in order.
    pub fail_next: Mutex<VecDeque<BroadcastReason>>,
    /// The device port's HTTP/2 limits.
    pub settings: ConnSettings,
    /// How long a request's body may take to end, from its HEADERS.
    pub body_timeout: Duration,
    /// Bumped by admin `POST /goaway` and at shutdown: every connection sends GOAWAY `{"reason":"Shutdown"}`,
    /// as on the device port.
    pub goaway_all: watch::Receiver<u64>,
}

impl BroadcastContext {
    fn reject(&self, reason: BroadcastReason) {
        let mut s = self
            .stats
            .broadcast
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *s.rejected.entry(reason.as_str().to_owned()).or_default() += 1;
    }

    fn channel_op(&self, name: &str) {
        let count = self.channels.count() as u64;
        let mut s = self
            .stats
            .broadcast
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        *s.channel_ops.entry(name.to_owned()).or_default() += 1;
        s.channels = count;
    }

    fn accepted(&self, bundle: &str) {
        let mut s = self
            .stats
            .broadcast
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        s.accepted += 1;
        *s.by_bundle.entry(bundle.to_owned()).or_default() += 1;
    }
}

/// Accepts TLS connections on one port until `stop` turns true.
pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ctx: Arc<BroadcastContext>,
    port: Port,
    stop: watch::Receiver<bool>,
) {
    let stats = ctx.stats.clone();
    crate::accept::serve_tls(
        listener,
        tls,
        stop,
        format!("{port:?}"),
        stats,
        move |_peer| {
            let ctx = ctx.clone();
            move |stream| serve_connection(ctx, stream, port)
        },
    )
    .await
}

async fn serve_connection(
    ctx: Arc<BroadcastContext>,
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    port: Port,
) {
    let mut auth = ConnAuth::of_connection(
        &tls,
        ctx.environment,
        &ctx.keys,
        ctx.token_max_age,
        ctx.token_update_interval,
    );
    let builder = ctx.settings.builder();
    // The device port's shim, for its GOAWAY with JSON debug data (h2 sends none).
    let control = Arc::new(FrameControl::new(ctx.settings.max_streams.max(1)));
    let mut conn = match tokio::time::timeout(
        Duration::from_secs(10),
        builder.handshake::<_, Bytes>(FrameIo::new(tls, control.clone())),
    )
    .await
    {
        Ok(Ok(c)) => c,
        _ => return,
    };
    let mut goaway_all = ctx.goaway_all.clone();
    goaway_all.mark_unchanged();
    // Set once the connection has sent GOAWAY: the last stream it takes.
    let mut going_away: Option<u32> = None;
    let mut last_stream = 0u32;
    // After GOAWAY, the streams taken have this long to finish (their bodies are bounded by the body timeout)
    // before the connection is closed.
    let drain = tokio::time::sleep(Duration::from_secs(86_400 * 365));
    tokio::pin!(drain);
    loop {
        let accepted = tokio::select! {
            accepted = conn.accept() => match accepted {
                Some(a) => a,
                None => break,
            },
            changed = goaway_all.changed(), if going_away.is_none() => {
                if changed.is_err() {
                    // The simulator is gone: stop at once.
                    return;
                }
                ctx.stats.goaways.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                control.inject(Injection::GoAway {
                    last_stream_id: last_stream,
                    error_code: 0,
                    debug: Bytes::from_static(br#"{"reason":"Shutdown"}"#),
                });
                going_away = Some(last_stream);
                // h2 stops taking new streams and closes the connection once the streams taken are done; its own
                // GOAWAY frames are dropped by the shim, so the client sees only the one above.
                conn.graceful_shutdown();
                drain
                    .as_mut()
                    .reset(tokio::time::Instant::now() + ctx.body_timeout + Duration::from_secs(2));
                continue;
            }
            _ = &mut drain, if going_away.is_some() => break,
        };
        let body_deadline = tokio::time::Instant::now() + ctx.body_timeout;
        let (req, mut respond) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("{port:?} connection error: {e}");
                break;
            }
        };
        let stream_id = u32::from(respond.stream_id());
        if going_away.is_some_and(|last| stream_id > last) {
            // Opened after the GOAWAY that named the last stream taken: unprocessed.
            respond.send_reset(h2::Reason::REFUSED_STREAM);
            continue;
        }
        last_stream = last_stream.max(stream_id);
        let (parts, body) = req.into_parts();
        let request_id = parts
            .headers
            .get(&APNS_REQUEST_ID)
            .filter(|v| v.to_str().is_ok_and(|s| validate_apns_id(s).is_ok()))
            .cloned()
            .unwrap_or_else(new_request_id);
        let checked = check_head(&ctx, &parts, &mut auth, port);
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let result = match checked {
                // The body, within the body timeout: a stalled one is reset, unprocessed, rather than held for
                // ever.
                Ok(call) => match tokio::time::timeout_at(body_deadline, read_body(body)).await {
                    Ok(Ok(body)) => finish(&ctx, call, &request_id, body).await,
                    Ok(Err(r)) => Err(r),
                    Err(_) => {
                        tracing::debug!(
                            "{port:?}: the request body did not end in time; resetting the stream"
                        );
                        respond.send_reset(h2::Reason::REFUSED_STREAM);
                        return;
                    }
                },
                Err(r) => Err(r),
            };
            match result {
                Ok(resp) => answer(respond, resp, &request_id),
                Err(reason) => {
                    ctx.reject(reason);
                    answer_error(respond, reason, &request_id);
                }
            }
        });
    }
}

fn new_request_id() -> HeaderValue {
    HeaderValue::from_str(&uuid::Uuid::new_v4().hyphenated().to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
}

/// A request whose head passed: what remains to do once the body is in.
enum Call {
    Create { bundle: String },
    Read { bundle: String, channel: String },
    Delete { bundle: String, channel: String },
    List { bundle: String },
    Broadcast(Broadcast),
}

struct Broadcast {
    bundle: String,
    channel: String,
    policy: StoragePolicy,
    priority: u8,
    expiration: Option<u64>,
}

/// A success answer.
struct Answer {
    status: u16,
    channel: Option<String>,
    body: Option<String>,
}

fn has_duplicate_apns_header(h: &HeaderMap) -> bool {
    h.len() != h.keys_len()
        && h.keys()
            .any(|k| k.as_str().starts_with("apns-") && h.get_all(k).iter().nth(1).is_some())
}

fn header_str<'a>(h: &'a HeaderMap, name: &HeaderName) -> Result<Option<&'a str>, ()> {
    h.get(name).map(|v| v.to_str().map_err(|_| ())).transpose()
}

fn channel_header(h: &HeaderMap) -> Result<String, BroadcastReason> {
    match header_str(h, &APNS_CHANNEL_ID) {
        Err(()) => Err(BroadcastReason::BadChannelId),
        Ok(None) | Ok(Some("")) => Err(BroadcastReason::MissingChannelId),
        Ok(Some(c)) => ChannelId::parse(c)
            .map(|c| c.as_str().to_owned())
            .map_err(|_| BroadcastReason::BadChannelId),
    }
}

fn auth_reason(r: Reason) -> BroadcastReason {
    match r {
        Reason::MissingProviderToken => BroadcastReason::MissingProviderToken,
        Reason::ExpiredProviderToken => BroadcastReason::ExpiredProviderToken,
        Reason::TooManyProviderTokenUpdates => BroadcastReason::TooManyProviderTokenUpdates,
        Reason::BadCertificate => BroadcastReason::BadCertificate,
        Reason::BadCertificateEnvironment => BroadcastReason::BadCertificateEnvironment,
        _ => BroadcastReason::InvalidProviderToken,
    }
}

/// A UUID header that is absent or well formed; BadMessageId otherwise.
fn check_uuid_header(h: &HeaderMap, name: &HeaderName) -> Result<(), BroadcastReason> {
    match h.get(name) {
        Some(v) if v.to_str().map_or(true, |s| validate_apns_id(s).is_err()) => {
            Err(BroadcastReason::BadMessageId)
        }
        _ => Ok(()),
    }
}

/// Checks 1–5 and the header part of 6–7.
fn check_head(
    ctx: &BroadcastContext,
    parts: &Parts,
    auth: &mut ConnAuth,
    port: Port,
) -> Result<Call, BroadcastReason> {
    let h = &parts.headers;
    if has_duplicate_apns_header(h) {
        return Err(BroadcastReason::BadRequestParams);
    }
    // docs/apns-protocol.md#broadcast: BadMessageId answers a bad `apns-id`, which is a lowercase UUID as on the
    // device port; `apns-request-id` is held to a UUID in either case.
    if h.get(&APNS_ID).is_some_and(|v| !apns_id_header_ok(v)) {
        return Err(BroadcastReason::BadMessageId);
    }
    check_uuid_header(h, &APNS_REQUEST_ID)?;
    let path = parts.uri.path();
    let (bundle, kind) = match port {
        Port::Management => {
            let rest = path
                .strip_prefix("/1/apps/")
                .ok_or(BroadcastReason::BadPath)?;
            match rest.rsplit_once('/') {
                Some((b, "channels")) => (b, "channels"),
                Some((b, "all-channels")) => (b, "all-channels"),
                _ => return Err(BroadcastReason::BadPath),
            }
        }
        Port::Broadcast => (
            path.strip_prefix("/4/broadcasts/apps/")
                .ok_or(BroadcastReason::BadPath)?,
            "broadcast",
        ),
    };
    if bundle.is_empty() || bundle.contains('/') {
        return Err(BroadcastReason::BadPath);
    }
    let method = &parts.method;
    let allowed = match kind {
        "channels" => [Method::POST, Method::GET, Method::DELETE].contains(method),
        "all-channels" => method == Method::GET,
        _ => method == Method::POST,
    };
    if !allowed {
        return Err(BroadcastReason::MethodNotAllowed);
    }
    let unauthenticated_ok = ctx.auth == AuthPolicy::AllowUnauthenticated
        && h.get(http::header::AUTHORIZATION).is_none();
    // The bundle ids the credentials cover (None: any), once they are known to be good.
    let covered = match auth {
        ConnAuth::Cert(c) => {
            c.status.map_err(auth_reason)?;
            Some(c.bases.iter().any(|b| b == bundle))
        }
        ConnAuth::Token(t) if !unauthenticated_ok => t
            .check(h.get(http::header::AUTHORIZATION).map(|v| v.as_bytes()))
            .map_err(auth_reason)?
            .map(|list| list.iter().any(|k| k == bundle)),
        ConnAuth::Token(_) => None,
    };
    // The bundle id of a path carries no push-type suffix: Apple answers one that does with TopicDisallowed
    // (docs/apns-protocol.md#broadcast).
    if topic_base(bundle) != bundle {
        return Err(BroadcastReason::TopicDisallowed);
    }
    // Certificate or token, credentials that do not cover the bundle id of the path: TopicMismatch
    // (docs/apns-protocol.md#broadcast).
    if covered == Some(false) {
        return Err(BroadcastReason::TopicMismatch);
    }
    if ctx.disabled.iter().any(|d| d == bundle) {
        return Err(BroadcastReason::FeatureNotEnabled);
    }
    let bundle = bundle.to_owned();
    match (kind, method.as_str()) {
        ("channels", "POST") => Ok(Call::Create { bundle }),
        ("channels", "GET") => Ok(Call::Read {
            channel: channel_header(h)?,
            bundle,
        }),
        ("channels", _) => Ok(Call::Delete {
            channel: channel_header(h)?,
            bundle,
        }),
        ("all-channels", _) => Ok(Call::List { bundle }),
        _ => check_broadcast(ctx, h, bundle).map(Call::Broadcast),
    }
}

fn check_broadcast(
    ctx: &BroadcastContext,
    h: &HeaderMap,
    bundle: String,
) -> Result<Broadcast, BroadcastReason> {
    let channel = channel_header(h)?;
    match header_str(h, &APNS_PUSH_TYPE) {
        Ok(None) => return Err(BroadcastReason::MissingPushType),
        Ok(Some(p)) if p.eq_ignore_ascii_case("liveactivity") => {}
        _ => return Err(BroadcastReason::InvalidPushType),
    }
    let priority = match h.get(&APNS_PRIORITY).map(|v| v.as_bytes()) {
        None | Some(b"10") => 10,
        Some(b"5") => 5,
        Some(b"1") => 1,
        Some(_) => return Err(BroadcastReason::BadPriority),
    };
    let expiration = match header_str(h, &APNS_EXPIRATION) {
        Err(()) => return Err(BroadcastReason::BadExpirationDate),
        Ok(None) => None,
        Ok(Some(e)) => Some(parse_expiration(e).map_err(|_| BroadcastReason::BadExpirationDate)?),
    };
    let policy = ctx.channels.get(&bundle, &channel)?;
    if policy == StoragePolicy::NoStorage && expiration.is_some_and(|e| e != 0) {
        return Err(BroadcastReason::BadExpirationDate);
    }
    Ok(Broadcast {
        bundle,
        channel,
        policy,
        priority,
        expiration,
    })
}

/// Bytes of a body kept: a payload's limit and one more, so that a longer body is still seen to be too long.
const BODY_KEPT: usize = BROADCAST_PAYLOAD_LIMIT + 1;

/// Reads a body, keeping its first [`BODY_KEPT`] bytes and reading at most [`MAX_BODY_READ`].
async fn read_body(mut body: RecvStream) -> Result<Bytes, BroadcastReason> {
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|_| BroadcastReason::BadRequestPayload)?;
        let _ = body.flow_control().release_capacity(chunk.len());
        total = total.saturating_add(chunk.len());
        let room = BODY_KEPT.saturating_sub(buf.len());
        buf.extend_from_slice(&chunk[..room.min(chunk.len())]);
        if total > MAX_BODY_READ {
            break;
        }
    }
    Ok(buf.freeze())
}

/// Completes the call with its body.
async fn finish(
    ctx: &BroadcastContext,
    call: Call,
    request_id: &HeaderValue,
    body: Bytes,
) -> Result<Answer, BroadcastReason> {
    match call {
        Call::Create { bundle } => {
            let policy = create_body(&body)?;
            let id = ctx.channels.create(&bundle, policy)?;
            ctx.channel_op("create");
            Ok(Answer {
                status: 201,
                channel: Some(id),
                body: None,
            })
        }
        Call::Read { bundle, channel } => {
            let policy = ctx.channels.get(&bundle, &channel)?;
            ctx.channel_op("read");
            Ok(Answer {
                status: 200,
                body: Some(format!(
                    "{{\"message-storage-policy\":{},\"push-type\":\"LiveActivity\"}}",
                    policy.as_u8()
                )),
                channel: Some(channel),
            })
        }
        Call::Delete { bundle, channel } => {
            ctx.channels.delete(&bundle, &channel)?;
            ctx.channel_op("delete");
            Ok(Answer {
                status: 204,
                channel: None,
                body: None,
            })
        }
        Call::List { bundle } => {
            let list = ctx.channels.list(&bundle);
            ctx.channel_op("list");
            Ok(Answer {
                status: 200,
                channel: None,
                body: Some(serde_json::json!({ "channels": list }).to_string()),
            })
        }
        Call::Broadcast(b) => {
            validate_broadcast(&body).map_err(|e| match e {
                PayloadError::Empty => BroadcastReason::PayloadEmpty,
                PayloadError::BroadcastTooLarge { .. } => BroadcastReason::PayloadTooLarge,
                _ => BroadcastReason::BadRequestPayload,
            })?;
            debug_assert!(body.len() <= BROADCAST_PAYLOAD_LIMIT);
            let injected = ctx
                .fail_next
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            if let Some(r) = injected {
                return Err(r);
            }
            let _ = b.policy;
            // Room in the record first, so that counting and recording go together.
            let slot = ctx.recorder.slot().await;
            ctx.accepted(&b.bundle);
            if ctx.recorder.enabled() {
                let mut rec = DeliveryRecord {
                    protocol: RecordProtocol::Broadcast,
                    token: String::new(),
                    topic: b.bundle.clone(),
                    apns_id: request_id.to_str().ok().map(str::to_owned),
                    priority: b.priority,
                    expiration: b.expiration,
                    collapse_id: None,
                    push_type: Some("liveactivity".into()),
                    payload: String::new(),
                    payload_base64: None,
                    identifier: None,
                    format: None,
                    received_ms: now_ms(),
                    channel_id: Some(b.channel),
                };
                rec.set_payload(&body);
                slot.push(rec);
            }
            Ok(Answer {
                status: 200,
                channel: None,
                body: None,
            })
        }
    }
}

/// The attributes of a create body.
const CREATE_ATTRIBUTES: [&str; 2] = ["message-storage-policy", "push-type"];

/// The storage policy of a create body (check 6). docs/apns-protocol.md#broadcast: an unrecognised attribute is
/// BadRequestParams; a missing or invalid storage policy has been seen answered MissingChannelQueueSize.
fn create_body(body: &[u8]) -> Result<StoragePolicy, BroadcastReason> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| BroadcastReason::BadRequestPayload)?;
    let obj = v.as_object().ok_or(BroadcastReason::BadRequestPayload)?;
    if obj.keys().any(|k| !CREATE_ATTRIBUTES.contains(&k.as_str())) {
        return Err(BroadcastReason::BadRequestParams);
    }
    let policy = obj
        .get("message-storage-policy")
        .and_then(serde_json::Value::as_i64)
        .and_then(|n| StoragePolicy::try_from(n).ok())
        .ok_or(BroadcastReason::MissingChannelQueueSize)?;
    match obj.get("push-type").map(|p| p.as_str()) {
        None => Err(BroadcastReason::MissingPushType),
        Some(Some(p)) if p.eq_ignore_ascii_case("liveactivity") => Ok(policy),
        Some(_) => Err(BroadcastReason::InvalidPushType),
    }
}

fn answer(mut respond: SendResponse<Bytes>, a: Answer, request_id: &HeaderValue) {
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::from_u16(a.status).unwrap_or(StatusCode::OK);
    let h = resp.headers_mut();
    h.insert(APNS_REQUEST_ID.clone(), request_id.clone());
    if let Some(c) = a.channel.and_then(|c| HeaderValue::from_str(&c).ok()) {
        h.insert(APNS_CHANNEL_ID.clone(), c);
    }
    if a.body.is_some() {
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    match a.body {
        None => {
            let _ = respond.send_response(resp, true);
        }
        Some(body) => {
            if let Ok(mut s) = respond.send_response(resp, false) {
                let _ = s.send_data(Bytes::from(body), true);
            }
        }
    }
}

fn answer_error(
    mut respond: SendResponse<Bytes>,
    reason: BroadcastReason,
    request_id: &HeaderValue,
) {
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::from_u16(reason.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let h = resp.headers_mut();
    h.insert(APNS_REQUEST_ID.clone(), request_id.clone());
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(mut s) = respond.send_response(resp, false) {
        let body = format!("{{\"reason\":\"{}\"}}", reason.as_str());
        let _ = s.send_data(Bytes::from(body), true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_bodies() {
        let ok = br#"{"message-storage-policy":1,"push-type":"LiveActivity"}"#;
        assert_eq!(create_body(ok), Ok(StoragePolicy::MostRecentMessage));
        let cases: [(&[u8], BroadcastReason); 9] = [
            (b"nope", BroadcastReason::BadRequestPayload),
            (b"[1]", BroadcastReason::BadRequestPayload),
            (
                br#"{"push-type":"LiveActivity"}"#,
                BroadcastReason::MissingChannelQueueSize,
            ),
            (
                br#"{"message-storage-policy":null,"push-type":"LiveActivity"}"#,
                BroadcastReason::MissingChannelQueueSize,
            ),
            (
                br#"{"message-storage-policy":3,"push-type":"LiveActivity"}"#,
                BroadcastReason::MissingChannelQueueSize,
            ),
            (
                br#"{"message-storage-policy":"1","push-type":"LiveActivity"}"#,
                BroadcastReason::MissingChannelQueueSize,
            ),
            (
                br#"{"message-storage-policy":1,"push-type":"LiveActivity","ttl":5}"#,
                BroadcastReason::BadRequestParams,
            ),
            (
                br#"{"message-storage-policy":0}"#,
                BroadcastReason::MissingPushType,
            ),
            (
                br#"{"message-storage-policy":0,"push-type":"alert"}"#,
                BroadcastReason::InvalidPushType,
            ),
        ];
        for (body, reason) in cases {
            assert_eq!(create_body(body), Err(reason));
        }
    }
}
