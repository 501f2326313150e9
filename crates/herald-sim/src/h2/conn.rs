//! One HTTP/2 connection: authentication mode from the TLS session, the request loop, stream-limit changes and
//! overruns, GOAWAY (on the first request, every N requests, a stream-limit overrun, idle, shutdown), and the
//! per-request futures that read the body, apply the payload and scenario rules, record and answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use h2::RecvStream;
use h2::server::SendResponse;
use herald_apns::reason::{Reason, error_body};
use http::{HeaderValue, Response, StatusCode};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use super::H2Context;
use super::io::{FrameControl, FrameIo, Injection};
use super::request::{self, Checked, ConnAuth, Rejection};
use crate::config::{AuthPolicy, STREAM_OVERRUN_DEBUG, StreamOverrun};
use crate::record::{DeliveryRecord, RecordProtocol};
use crate::registry::now_ms;
use crate::scenario::Rng;
use crate::stats::{TopicCache, TopicCounters};

/// Bodies beyond this are not read further: the answer is PayloadTooLarge (or the head's rejection) either way.
/// Only the bytes of a body within its payload limit are kept ([`BodyBuf`]); the rest is only counted.
const MAX_BODY_READ: usize = 64 * 1024;

/// HTTP/2 error code PROTOCOL_ERROR (RFC 9113 §7), the code of the GOAWAY for a stream-limit overrun.
const PROTOCOL_ERROR: u32 = 0x1;

/// Requests a connection holds at most, per stream of its limit: those open, and those the client reset while
/// they wait their turn under a rate (they are still processed, [`crate::pace`], but no longer count against the
/// limit). Beyond, a new stream is refused, so a client that opens and resets streams in a loop (Rapid Reset)
/// cannot grow the queue without bound.
const QUEUED_PER_STREAM: usize = 2;

enum Outcome {
    Accepted,
    Rejected,
    Dropped,
    Broken,
}

/// What the connection decided for a request before its body arrived.
struct Plan {
    checked: Result<Checked, Rejection>,
    apns_id: HeaderValue,
    unique_id: Option<HeaderValue>,
    transient: Option<Reason>,
    drop: bool,
    /// When the answer may leave: the request's arrival plus the latency (so the simulator's own processing time
    /// is part of the round trip, not added to it). `None` without latency.
    answer_at: Option<std::time::Instant>,
    /// The body must have ended by then (the request's arrival plus the body timeout), else the stream is reset.
    body_deadline: tokio::time::Instant,
    counter: Option<Arc<TopicCounters>>,
    /// The request's place under the stream limit.
    slot: StreamSlot,
}

/// A request's place under the connection's stream limit: given back when the request is done, or as soon as the
/// client is seen to reset its stream (a reset stream is closed, whatever the simulator still does with it).
struct StreamSlot {
    open: Arc<AtomicU32>,
    held: bool,
}

impl StreamSlot {
    fn take(open: &Arc<AtomicU32>) -> StreamSlot {
        open.fetch_add(1, Ordering::Relaxed);
        StreamSlot {
            open: open.clone(),
            held: true,
        }
    }

    fn release(&mut self) {
        if std::mem::take(&mut self.held) {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// Generates lowercase UUIDs (v4 layout) as header values, carving them out of one shared buffer so a request
/// costs no allocation of its own.
struct IdMaker {
    rng: Rng,
    arena: BytesMut,
}

impl IdMaker {
    const LEN: usize = uuid::fmt::Hyphenated::LENGTH;

    fn next(&mut self) -> HeaderValue {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        bytes[8..].copy_from_slice(&self.rng.next_u64().to_le_bytes());
        let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
        let mut buf = [0u8; Self::LEN];
        id.hyphenated().encode_lower(&mut buf);
        if self.arena.capacity() - self.arena.len() < Self::LEN {
            self.arena = BytesMut::with_capacity(Self::LEN * 256);
        }
        self.arena.extend_from_slice(&buf);
        let shared = self.arena.split_to(Self::LEN).freeze();
        HeaderValue::from_maybe_shared(shared)
            .unwrap_or_else(|_| HeaderValue::from_static("00000000-0000-4000-8000-000000000000"))
    }
}

pub(crate) async fn serve_connection(ctx: Arc<H2Context>, tls: TlsStream<TcpStream>, ordinal: u64) {
    let _open = ctx.stats.h2_connections.opened();
    let mut auth = ConnAuth::of_connection(
        &tls,
        ctx.environment,
        &ctx.keys,
        ctx.token_max_age,
        ctx.token_update_interval,
    );
    let gated = matches!(auth, ConnAuth::Token(_)) && ctx.auth == AuthPolicy::Required;
    let max = ctx.settings.max_streams.max(1);
    let max_queued = (max as usize).saturating_mul(QUEUED_PER_STREAM);
    // A token connection gets one stream until a valid token (docs/apns-protocol.md#http2-connection): its first
    // SETTINGS says so, and streams beyond are refused from the start. The connection advertises the full limit
    // once authenticated.
    let first = if gated { 1 } else { max };
    let control = Arc::new(FrameControl::new(first));
    let mut advertised = first;
    // h2 is built with room beyond the limit (up to the queue's bound), so that the connection sees the streams
    // that overrun it and answers them as the scenario says, h2 refusing only beyond that room.
    let mut builder = ctx.settings.builder();
    builder.max_concurrent_streams(u32::try_from(max_queued).unwrap_or(u32::MAX));
    let mut conn = match tokio::time::timeout(
        Duration::from_secs(10),
        builder.handshake::<_, Bytes>(FrameIo::new(tls, control.clone()).first_limit(first)),
    )
    .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!("h2 handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("h2 handshake timed out");
            return;
        }
    };

    let mut rng = Rng::new(ctx.scenario.seed, ordinal);
    let mut ids = IdMaker {
        rng: Rng::new(
            ctx.scenario.seed ^ 0x05EE_D1D5,
            ordinal.wrapping_add(0x1000),
        ),
        arena: BytesMut::new(),
    };
    let mut topics = TopicCache::default();
    let mut inflight = FuturesUnordered::new();
    // Streams that count against the limit: taken but neither done nor reset by the client.
    let open = Arc::new(AtomicU32::new(0));
    let mut requests = 0u64;
    let mut going_away = false;
    let mut goaway_all = ctx.goaway_all.clone();
    goaway_all.mark_unchanged();
    let idle_after = ctx.scenario.idle_timeout_secs.map(Duration::from_secs);
    let idle = tokio::time::sleep(idle_after.unwrap_or(Duration::from_secs(86_400 * 365)));
    tokio::pin!(idle);
    let mut last_stream = 0u32;

    loop {
        if going_away && inflight.is_empty() {
            break;
        }
        // Accept first: every request already received is taken (and its response queued) before h2 is polled
        // again, so one poll writes many responses in one TLS record and one syscall.
        tokio::select! {
            biased;
            accepted = conn.accept() => {
                let (req, mut respond) = match accepted {
                    Some(Ok(x)) => x,
                    Some(Err(e)) => {
                        tracing::debug!("h2 connection error: {e}");
                        break;
                    }
                    None => break,
                };
                let arrived = std::time::Instant::now();
                ctx.stats.streams_total.fetch_add(1, Ordering::Relaxed);
                let stream_id = u32::from(respond.stream_id());
                if ctx.scenario.goaway_first_request && !going_away {
                    // Nothing is processed: the GOAWAY names no stream, and this one is refused.
                    send_goaway(&ctx, &control, 0, ctx.scenario.goaway_debug.clone());
                    going_away = true;
                }
                let full = |inflight: &FuturesUnordered<_>| {
                    open.load(Ordering::Relaxed) >= control.limit() || inflight.len() >= max_queued
                };
                if !going_away && full(&inflight) {
                    // h2 may have read a client's reset of a waiting stream together with this new stream: let
                    // the waiting streams look for their resets (giving their places back) before refusing.
                    while full(&inflight) {
                        match inflight.next().now_or_never() {
                            Some(Some(outcome)) => {
                                if !settle(&ctx, &control, max, &mut advertised, outcome) {
                                    return;
                                }
                            }
                            Some(None) | None => break,
                        }
                    }
                }
                if !going_away
                    && ctx.stream_overrun == StreamOverrun::Goaway
                    && control.limit_binds(stream_id)
                    && open.load(Ordering::Relaxed) >= control.limit()
                {
                    // Beyond the limit the client knows: GOAWAY as APNs has answered it, plain text and all
                    // (docs/apns-protocol.md#http2-connection). The streams taken are finished; this one is not.
                    send_goaway_code(
                        &ctx,
                        &control,
                        last_stream,
                        PROTOCOL_ERROR,
                        Bytes::from_static(STREAM_OVERRUN_DEBUG.as_bytes()),
                    );
                    going_away = true;
                }
                if going_away || full(&inflight) {
                    respond.send_reset(h2::Reason::REFUSED_STREAM);
                    ctx.stats.streams_refused.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let slot = StreamSlot::take(&open);
                last_stream = last_stream.max(stream_id);
                requests += 1;
                if let Some(after) = idle_after {
                    idle.as_mut().reset(tokio::time::Instant::now() + after);
                }
                let (parts, body) = req.into_parts();
                let apns_id = request::request_apns_id(&parts.headers).cloned().unwrap_or_else(|| ids.next());
                let checked = request::check(&parts, &mut auth, ctx.auth, &ctx.registry, ctx.recorder.enabled());
                if let ConnAuth::Token(t) = &auth
                    && gated && advertised == 1 && t.authenticated() && !ctx.choppy_streams && max > 1 {
                        control.inject(Injection::MaxConcurrentStreams(max));
                        advertised = max;
                    }
                let mut plan = Plan {
                    checked,
                    apns_id,
                    unique_id: ctx.unique_id.then(|| ids.next()),
                    transient: None,
                    drop: false,
                    answer_at: None,
                    body_deadline: tokio::time::Instant::from_std(arrived) + ctx.body_timeout,
                    counter: None,
                    slot,
                };
                if let Ok(c) = &plan.checked {
                    plan.transient = ctx.scenario.roll_error(&mut rng);
                    plan.drop = ctx.scenario.roll_drop(&mut rng);
                    plan.answer_at = ctx.pace.latency(&mut rng).and_then(|d| arrived.checked_add(d));
                    plan.counter = Some(topics.get(&ctx.stats, &c.topic));
                }
                if let Some(n) = ctx.scenario.goaway_every
                    && requests.is_multiple_of(n) {
                        send_goaway(&ctx, &control, stream_id, ctx.scenario.goaway_debug.clone());
                        going_away = true;
                    }
                inflight.push(handle_stream(ctx.clone(), body, respond, plan));
            }
            Some(first) = inflight.next(), if !inflight.is_empty() => {
                // Take every finished request now, so their responses leave in one write.
                let mut next = Some(first);
                while let Some(outcome) = next {
                    if !settle(&ctx, &control, max, &mut advertised, outcome) {
                        return;
                    }
                    // The next select! polls `inflight` again with the task's waker.
                    next = inflight.next().now_or_never().flatten();
                }
                if let Some(after) = idle_after {
                    idle.as_mut().reset(tokio::time::Instant::now() + after);
                }
            }
            _ = &mut idle, if idle_after.is_some() && inflight.is_empty() && !going_away => {
                // A PING keeps an idle connection alive (docs/apns-protocol.md#http2-connection): the idle time
                // counts from the last one.
                let after_ping = control
                    .last_ping()
                    .zip(idle_after)
                    .map(|(ping, after)| tokio::time::Instant::from_std(ping) + after)
                    .filter(|until| *until > tokio::time::Instant::now());
                if let Some(until) = after_ping {
                    idle.as_mut().reset(until);
                } else {
                    send_goaway(&ctx, &control, last_stream, Bytes::from_static(br#"{"reason":"IdleTimeout"}"#));
                    going_away = true;
                }
            }
            changed = goaway_all.changed(), if !going_away => {
                if changed.is_ok() {
                    send_goaway(&ctx, &control, last_stream, Bytes::from_static(br#"{"reason":"Shutdown"}"#));
                    going_away = true;
                } else {
                    // The simulator is gone: stop at once.
                    return;
                }
            }
        }
    }
    // Let h2 write what the last requests queued (one completed flush after this point), then close. Our GOAWAY
    // (if any) is already on its way; h2's own is suppressed by the shim.
    let epoch = control.flushes();
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        std::future::poll_fn(|cx| match conn.poll_closed(cx) {
            std::task::Poll::Ready(_) => std::task::Poll::Ready(()),
            std::task::Poll::Pending if control.flushes() > epoch => std::task::Poll::Ready(()),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }),
    )
    .await;
    conn.abrupt_shutdown(h2::Reason::NO_ERROR);
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        std::future::poll_fn(|cx| conn.poll_closed(cx)),
    )
    .await;
}

/// What a finished request does to its connection: the choppy stream limit follows its outcome. False when the
/// scenario drops the connection.
fn settle(
    ctx: &H2Context,
    control: &FrameControl,
    max: u32,
    advertised: &mut u32,
    outcome: Outcome,
) -> bool {
    match outcome {
        Outcome::Accepted => {
            if ctx.choppy_streams && *advertised == 1 && max > 1 {
                control.inject(Injection::MaxConcurrentStreams(max));
                *advertised = max;
            }
        }
        Outcome::Rejected => {
            if ctx.choppy_streams && *advertised > 1 {
                control.inject(Injection::MaxConcurrentStreams(1));
                *advertised = 1;
            }
        }
        Outcome::Dropped => {
            ctx.stats
                .dropped_connections
                .fetch_add(1, Ordering::Relaxed);
            return false;
        }
        Outcome::Broken => {}
    }
    true
}

/// GOAWAY with NO_ERROR.
fn send_goaway(ctx: &H2Context, control: &FrameControl, last_stream_id: u32, debug: Bytes) {
    send_goaway_code(ctx, control, last_stream_id, 0, debug);
}

fn send_goaway_code(
    ctx: &H2Context,
    control: &FrameControl,
    last_stream_id: u32,
    error_code: u32,
    debug: Bytes,
) {
    ctx.stats.goaways.fetch_add(1, Ordering::Relaxed);
    control.inject(Injection::GoAway {
        last_stream_id,
        error_code,
        debug,
    });
}

/// A request body as it arrives: every byte counted, but kept only while the body is within `keep` bytes (its
/// payload limit; 0 for a request already rejected by its head). A larger body is answered without its bytes, so
/// they are let go as soon as it is known to be too large.
struct BodyBuf {
    keep: usize,
    total: usize,
    first: Option<Bytes>,
    more: Option<BytesMut>,
}

impl BodyBuf {
    fn new(keep: usize) -> BodyBuf {
        BodyBuf {
            keep,
            total: 0,
            first: None,
            more: None,
        }
    }

    fn push(&mut self, chunk: Bytes) {
        let n = chunk.len();
        self.total = self.total.saturating_add(n);
        if self.total > self.keep {
            self.first = None;
            self.more = None;
            return;
        }
        match (&mut self.first, &mut self.more) {
            (None, None) => self.first = Some(chunk),
            (Some(f), None) => {
                let mut m = BytesMut::with_capacity(f.len() + n);
                m.extend_from_slice(f);
                m.extend_from_slice(&chunk);
                self.more = Some(m);
            }
            (_, Some(m)) => m.extend_from_slice(&chunk),
        }
    }

    /// Bytes held now.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.more
            .as_ref()
            .map(|m| m.len())
            .or(self.first.as_ref().map(|f| f.len()))
            .unwrap_or(0)
    }

    /// The body (empty when it was over `keep`) and its length.
    fn finish(self) -> (Bytes, usize) {
        let bytes = match (self.first, self.more) {
            (_, Some(m)) => m.freeze(),
            (Some(f), None) => f,
            (None, None) => Bytes::new(),
        };
        (bytes, self.total)
    }
}

/// Reads the body (counted up to [`MAX_BODY_READ`], kept up to `keep` bytes), returning its bytes and length.
async fn read_body(body: &mut RecvStream, keep: usize) -> Result<(Bytes, usize), h2::Error> {
    let mut buf = BodyBuf::new(keep);
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.push(chunk);
        if buf.total > MAX_BODY_READ {
            break;
        }
    }
    Ok(buf.finish())
}

async fn handle_stream(
    ctx: Arc<H2Context>,
    mut body: RecvStream,
    mut respond: SendResponse<Bytes>,
    mut plan: Plan,
) -> Outcome {
    let keep = plan.checked.as_ref().map_or(0, |c| c.payload_limit);
    let (payload, total) =
        match tokio::time::timeout_at(plan.body_deadline, read_body(&mut body, keep)).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                tracing::debug!("h2 stream error while reading the body: {e}");
                return Outcome::Broken;
            }
            Err(_) => {
                // A body that stalls would hold the stream (and its place under the limit) for ever and keep
                // the connection from being idle: the stream is reset, unprocessed, so the client may retry it.
                tracing::debug!("h2: the request body did not end in time; resetting the stream");
                respond.send_reset(h2::Reason::REFUSED_STREAM);
                ctx.stats.streams_timed_out.fetch_add(1, Ordering::Relaxed);
                return Outcome::Broken;
            }
        };
    let checked = match plan.checked {
        Ok(c) => c,
        Err(rej) => return reject(&ctx, &mut respond, rej, plan.apns_id, plan.unique_id),
    };
    if total == 0 {
        return reject(
            &ctx,
            &mut respond,
            Reason::PayloadEmpty.into(),
            plan.apns_id,
            plan.unique_id,
        );
    }
    if total > checked.payload_limit {
        return reject(
            &ctx,
            &mut respond,
            Reason::PayloadTooLarge.into(),
            plan.apns_id,
            plan.unique_id,
        );
    }
    // Under a rate, wait for this request's turn. Like a busy server that has read the request, a reset does not
    // take it out of the queue: it is processed when its turn comes (see crate::pace). But its stream is closed,
    // so from the reset on it no longer counts against the stream limit; it still counts against the
    // connection's queue ([`QUEUED_PER_STREAM`]).
    // The time spent waiting for the turn comes on top of the latency (queueing at the server, then the way back).
    if let Some(turn) = ctx.pace.turn() {
        let waited = turn.saturating_duration_since(tokio::time::Instant::now());
        let sleep = tokio::time::sleep_until(turn);
        tokio::pin!(sleep);
        tokio::select! {
            _ = &mut sleep => {}
            _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => {
                plan.slot.release();
                sleep.await;
            }
        }
        plan.answer_at = plan
            .answer_at
            .map(|at| at.checked_add(waited).unwrap_or(at));
    }
    if plan.drop {
        return Outcome::Dropped;
    }
    if let Some(reason) = plan.transient {
        if !answer_after(&ctx, &mut respond, plan.answer_at).await {
            return Outcome::Broken;
        }
        // Every 410 carries the moment the token stopped being valid (docs/apns-protocol.md#http2-response): for
        // one the scenario injects, now.
        let rejection = Rejection {
            reason,
            timestamp_ms: (reason.status() == 410).then(now_ms),
        };
        return reject(&ctx, &mut respond, rejection, plan.apns_id, plan.unique_id);
    }

    // Processed now: accepted and recorded whatever happens to the answer (see crate::pace). The record's room is
    // taken first (a wait only when its writer is far behind), so that counting and recording go together.
    let slot = ctx.recorder.slot().await;
    ctx.stats.accepted_h2.fetch_add(1, Ordering::Relaxed);
    if let Some(c) = &plan.counter {
        c.h2.fetch_add(1, Ordering::Relaxed);
    }
    if ctx.recorder.enabled() {
        let mut rec = DeliveryRecord {
            protocol: RecordProtocol::H2,
            token: checked.token,
            topic: checked.topic,
            apns_id: plan.apns_id.to_str().ok().map(str::to_owned),
            priority: checked.priority,
            expiration: checked.expiration,
            collapse_id: checked.collapse_id,
            push_type: checked.push_type.map(|p| p.as_str().to_owned()),
            payload: String::new(),
            payload_base64: None,
            identifier: None,
            format: None,
            received_ms: now_ms(),
            channel_id: None,
        };
        rec.set_payload(&payload);
        slot.push(rec);
    }
    if !answer_after(&ctx, &mut respond, plan.answer_at).await {
        return Outcome::Broken;
    }
    let mut resp = Response::new(());
    *resp.status_mut() = StatusCode::OK;
    resp.headers_mut().insert("apns-id", plan.apns_id);
    if let Some(u) = plan.unique_id {
        resp.headers_mut().insert("apns-unique-id", u);
    }
    if let Err(e) = respond.send_response(resp, true) {
        tracing::debug!("h2: cannot send the response: {e}");
        return Outcome::Broken;
    }
    Outcome::Accepted
}

/// Waits until the answer may leave (the request's arrival plus the latency, on the simulator's precise clock:
/// [`super::delay`]). False when the client has reset the stream (before or during the wait):
/// the answer is not sent, and what was processed stays processed.
async fn answer_after(
    ctx: &H2Context,
    respond: &mut SendResponse<Bytes>,
    answer_at: Option<std::time::Instant>,
) -> bool {
    let reset = match answer_at {
        None => std::future::poll_fn(|cx| respond.poll_reset(cx))
            .now_or_never()
            .is_some(),
        Some(d) => tokio::select! {
            _ = super::delay::Delay::until(d) => false,
            _ = std::future::poll_fn(|cx| respond.poll_reset(cx)) => true,
        },
    };
    if reset {
        ctx.stats.streams_cancelled.fetch_add(1, Ordering::Relaxed);
    }
    !reset
}

fn reject(
    ctx: &H2Context,
    respond: &mut SendResponse<Bytes>,
    rej: Rejection,
    apns_id: HeaderValue,
    unique_id: Option<HeaderValue>,
) -> Outcome {
    ctx.stats.reject(rej.reason);
    let status = StatusCode::from_u16(rej.reason.status()).unwrap_or(StatusCode::BAD_REQUEST);
    let mut resp = Response::new(());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut().insert("apns-id", apns_id);
    if let Some(u) = unique_id {
        resp.headers_mut().insert("apns-unique-id", u);
    }
    let body = Bytes::from(error_body(rej.reason, rej.timestamp_ms));
    match respond.send_response(resp, false) {
        Ok(mut stream) => {
            if let Err(e) = stream.send_data(body, true) {
                tracing::debug!("h2: cannot send the error body: {e}");
                return Outcome::Broken;
            }
        }
        Err(e) => {
            tracing::debug!("h2: cannot send the error response: {e}");
            return Outcome::Broken;
        }
    }
    Outcome::Rejected
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_is_kept_only_within_its_limit_and_counted_in_full() {
        let mut b = BodyBuf::new(10);
        b.push(Bytes::from_static(b"0123"));
        b.push(Bytes::from_static(b"456789"));
        assert_eq!(b.held(), 10);
        assert_eq!(b.finish(), (Bytes::from_static(b"0123456789"), 10));

        // Over the limit: nothing more is held, but every byte is counted (PayloadTooLarge needs only the count).
        let mut b = BodyBuf::new(10);
        for _ in 0..100 {
            b.push(Bytes::from(vec![b'x'; 7]));
            assert!(b.held() <= 10, "{} bytes held", b.held());
        }
        assert_eq!(b.held(), 0);
        assert_eq!(b.finish(), (Bytes::new(), 700));

        // A single chunk over the limit is not held either; a request rejected by its head keeps nothing.
        let mut b = BodyBuf::new(4096);
        b.push(Bytes::from(vec![b'y'; 5000]));
        assert_eq!((b.held(), b.total), (0, 5000));
        let mut b = BodyBuf::new(0);
        b.push(Bytes::from_static(b"{}"));
        assert_eq!(b.finish(), (Bytes::new(), 2));
    }
}
