//! Connection-level behaviour seen frame by frame with a hand-written HTTP/2 client
//! (docs/apns-protocol.md#http2-connection, docs/apns-protocol.md#simulator): the stream limit of token connections,
//! choppy limits, REFUSED_STREAM, GOAWAY with JSON debug data, idle close, PING, and prior knowledge without ALPN.

mod common;

use std::time::Duration;

use common::*;
use herald_sim::CertVariant;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

const SETTINGS: u8 = 4;
const HEADERS: u8 = 1;
const DATA: u8 = 0;
const RST_STREAM: u8 = 3;
const PING: u8 = 6;
const GOAWAY: u8 = 7;

#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

impl Frame {
    fn max_streams(&self) -> Option<u32> {
        if self.kind != SETTINGS || self.flags & 1 != 0 {
            return None;
        }
        self.payload
            .chunks(6)
            .find(|c| c[..2] == [0, 3])
            .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
    }
}

struct Raw {
    io: TlsStream<TcpStream>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn literal(out: &mut Vec<u8>, name: &str, value: &str) {
    assert!(name.len() < 127 && value.len() < 127);
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

impl Raw {
    async fn connect(t: &TestSim, cert: bool, alpn: bool) -> Raw {
        let cfg = if cert {
            let (c, k) = cert_identity(&t.pki, CertVariant::Universal);
            client_config(&t.pki, Some((&c, &k)), alpn)
        } else {
            client_config(&t.pki, None, alpn)
        };
        let mut io = tls(t.sim.addrs.h2, cfg).await;
        io.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        io.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
        Raw { io }
    }

    async fn next(&mut self) -> Option<Frame> {
        let mut h = [0u8; 9];
        match tokio::time::timeout(Duration::from_secs(10), self.io.read_exact(&mut h))
            .await
            .expect("frame in time")
        {
            Ok(_) => {}
            Err(_) => return None,
        }
        let len = u32::from_be_bytes([0, h[0], h[1], h[2]]) as usize;
        let mut payload = vec![0; len];
        self.io.read_exact(&mut payload).await.unwrap();
        Some(Frame {
            kind: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// Reads frames (acking SETTINGS) until `pred` matches one.
    async fn until(&mut self, pred: impl Fn(&Frame) -> bool) -> Frame {
        loop {
            let f = self
                .next()
                .await
                .expect("connection closed before the expected frame");
            if f.kind == SETTINGS && f.flags & 1 == 0 {
                self.io
                    .write_all(&frame(SETTINGS, 1, 0, &[]))
                    .await
                    .unwrap();
            }
            if pred(&f) {
                return f;
            }
        }
    }

    async fn request(&mut self, stream: u32, auth: Option<&str>, body: Option<&[u8]>) {
        let mut block = Vec::new();
        literal(&mut block, ":method", "POST");
        literal(&mut block, ":scheme", "https");
        literal(&mut block, ":path", &format!("/3/device/{}", token(7)));
        literal(&mut block, ":authority", "localhost");
        literal(&mut block, "apns-topic", TOPIC);
        if let Some(a) = auth {
            // Longer than 126 bytes: use a two-byte length.
            block.push(0x00);
            block.push(13);
            block.extend_from_slice(b"authorization");
            let v = format!("bearer {a}");
            let mut n = v.len() - 127;
            block.push(0x7f);
            while n >= 128 {
                block.push((n % 128) as u8 | 0x80);
                n /= 128;
            }
            block.push(n as u8);
            block.extend_from_slice(v.as_bytes());
        }
        // END_HEADERS only: the body (if any) ends the stream.
        self.io
            .write_all(&frame(HEADERS, 0x4, stream, &block))
            .await
            .unwrap();
        if let Some(b) = body {
            self.io
                .write_all(&frame(DATA, 0x1, stream, b))
                .await
                .unwrap();
        }
    }
}

/// `:status 200` is HPACK static index 8.
fn is_200(f: &Frame) -> bool {
    f.kind == HEADERS && f.payload.first() == Some(&0x88)
}

#[tokio::test]
async fn token_connections_get_one_stream_until_a_valid_token() {
    let t = start().await;
    let mut raw = Raw::connect(&t, false, true).await;
    let first = raw.until(|f| f.max_streams().is_some()).await;
    assert_eq!(
        first.max_streams(),
        Some(1),
        "the first SETTINGS has the limit of an unauthenticated token connection"
    );

    // Stream 1 stays open (no body yet); stream 3 exceeds the limit of 1 and is refused.
    raw.request(1, None, None).await;
    raw.request(3, None, Some(PAYLOAD)).await;
    let rst = raw.until(|f| f.kind == RST_STREAM).await;
    assert_eq!(rst.stream, 3);
    assert_eq!(rst.payload, 7u32.to_be_bytes(), "REFUSED_STREAM");
    raw.io.write_all(&frame(DATA, 1, 1, PAYLOAD)).await.unwrap();
    let rejected = raw.until(|f| f.kind == HEADERS && f.stream == 1).await;
    assert!(!is_200(&rejected), "no token: rejected");

    // A valid token raises the limit.
    let jwt = jwt(&t.pki, now());
    raw.request(5, Some(&jwt), Some(PAYLOAD)).await;
    let raised = raw.until(|f| f.max_streams().is_some()).await;
    assert_eq!(raised.max_streams(), Some(1000));
    let ok = raw.until(|f| f.kind == HEADERS && f.stream == 5).await;
    assert!(is_200(&ok));
    assert_eq!(t.sim.stats().streams.refused, 1);
}

/// A client may open streams before it has read the server's SETTINGS: on a token connection, all but one are
/// refused, and the first SETTINGS already says 1 (docs/apns-protocol.md#http2-connection).
#[tokio::test]
async fn a_token_connection_allows_one_stream_before_its_settings_are_read() {
    let t = start().await;
    let mut raw = Raw::connect(&t, false, true).await;
    // Three requests at once, nothing read yet; no body, so stream 1 stays open.
    for stream in [1, 3, 5] {
        raw.request(stream, None, None).await;
    }
    let first = raw.until(|f| f.max_streams().is_some()).await;
    assert_eq!(first.max_streams(), Some(1), "the server's first SETTINGS");
    let mut refused = Vec::new();
    while refused.len() < 2 {
        let rst = raw
            .until(|f| f.kind == RST_STREAM || f.kind == HEADERS)
            .await;
        assert_eq!(rst.kind, RST_STREAM, "stream {} answered", rst.stream);
        assert_eq!(rst.payload, 7u32.to_be_bytes(), "REFUSED_STREAM");
        refused.push(rst.stream);
    }
    assert_eq!(refused, [3, 5]);
    raw.io.write_all(&frame(DATA, 1, 1, PAYLOAD)).await.unwrap();
    let answer = raw.until(|f| f.kind == HEADERS).await;
    assert_eq!(answer.stream, 1);
    assert!(!is_200(&answer), "no token: rejected");
    assert_eq!(t.sim.stats().streams.refused, 2);
}

#[tokio::test]
async fn h2_refuses_streams_beyond_the_configured_limit() {
    let t = start_with(|c, _| c.max_concurrent_streams = 2).await;
    let mut raw = Raw::connect(&t, true, true).await;
    let s = raw.until(|f| f.max_streams().is_some()).await;
    assert_eq!(s.max_streams(), Some(2));
    raw.io.write_all(&frame(PING, 0, 0, &[2; 8])).await.unwrap();
    raw.until(|f| f.kind == PING && f.flags & 1 == 1).await;
    raw.request(1, None, None).await;
    raw.request(3, None, None).await;
    raw.request(5, None, None).await;
    let rst = raw.until(|f| f.kind == RST_STREAM).await;
    assert_eq!(
        (rst.stream, rst.payload.as_slice()),
        (5, &7u32.to_be_bytes()[..])
    );
    raw.io.write_all(&frame(DATA, 1, 1, PAYLOAD)).await.unwrap();
    assert!(is_200(&raw.until(|f| f.kind == HEADERS).await));
}

#[tokio::test]
async fn choppy_streams_drop_to_one_after_a_rejection_and_recover() {
    let t = start_with(|c, _| c.choppy_streams = true).await;
    let mut raw = Raw::connect(&t, true, true).await;
    raw.until(|f| f.max_streams() == Some(1000)).await;
    raw.request(1, None, Some(b"")).await; // PayloadEmpty
    let drop = raw.until(|f| f.max_streams().is_some()).await;
    assert_eq!(drop.max_streams(), Some(1));
    raw.request(3, None, Some(PAYLOAD)).await;
    let up = raw.until(|f| f.max_streams().is_some()).await;
    assert_eq!(up.max_streams(), Some(1000));
}

#[tokio::test]
async fn goaway_every_n_requests_carries_json_debug_data() {
    let t = start_with(|c, _| c.scenario.goaway_every = Some(2)).await;
    let mut raw = Raw::connect(&t, true, true).await;
    raw.request(1, None, Some(PAYLOAD)).await;
    raw.request(3, None, Some(PAYLOAD)).await;
    let mut answered = 0;
    let g = loop {
        let f = raw.until(|f| f.kind == GOAWAY || f.kind == HEADERS).await;
        if f.kind == GOAWAY {
            break f;
        }
        assert!(is_200(&f));
        answered += 1;
    };
    assert_eq!(&g.payload[..4], &3u32.to_be_bytes(), "last stream id");
    assert_eq!(&g.payload[4..8], &0u32.to_be_bytes(), "NO_ERROR");
    assert_eq!(
        herald_apns::reason::goaway_reason(&g.payload[8..]).as_deref(),
        Some("Shutdown")
    );
    // Both requests are answered, then the connection closes with no second GOAWAY.
    while let Some(f) = raw.next().await {
        assert_ne!(f.kind, GOAWAY, "exactly one GOAWAY");
        if f.kind == HEADERS {
            assert!(is_200(&f));
            answered += 1;
        }
    }
    assert_eq!(answered, 2);
    assert_eq!(t.sim.stats().goaways, 1);
}

#[tokio::test]
async fn idle_connections_get_goaway_idle_timeout() {
    let t = start_with(|c, _| c.scenario.idle_timeout_secs = Some(1)).await;
    let mut raw = Raw::connect(&t, true, true).await;
    let g = raw.until(|f| f.kind == GOAWAY).await;
    assert_eq!(
        herald_apns::reason::goaway_reason(&g.payload[8..]).as_deref(),
        Some("IdleTimeout")
    );
    while raw.next().await.is_some() {}
}

/// docs/apns-protocol.md#http2-connection: a PING keeps an idle connection alive. Idle timeout 2 s, a PING every
/// 0.5 s for 5 s: no GOAWAY; once the PINGs stop, GOAWAY IdleTimeout.
#[tokio::test]
async fn pings_keep_an_idle_connection_open() {
    let t = start_with(|c, _| c.scenario.idle_timeout_secs = Some(2)).await;
    let mut raw = Raw::connect(&t, true, true).await;
    let started = tokio::time::Instant::now();
    let mut every = tokio::time::interval(Duration::from_millis(500));
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(5) {
        every.tick().await;
        n += 1;
        raw.io
            .write_all(&frame(PING, 0, 0, &n.to_be_bytes()))
            .await
            .unwrap();
        let f = raw
            .until(|f| f.kind == GOAWAY || (f.kind == PING && f.flags & 1 == 1))
            .await;
        assert_ne!(
            f.kind,
            GOAWAY,
            "GOAWAY after {:?} while PINGs came every 0.5 s: {:?}",
            started.elapsed(),
            herald_apns::reason::goaway_reason(f.payload.get(8..).unwrap_or_default())
        );
        assert_eq!(f.payload, n.to_be_bytes());
    }
    assert_eq!(t.sim.stats().goaways, 0);
    let g = raw.until(|f| f.kind == GOAWAY).await;
    assert_eq!(
        herald_apns::reason::goaway_reason(&g.payload[8..]).as_deref(),
        Some("IdleTimeout")
    );
}

#[tokio::test]
async fn ping_is_answered_and_admin_goaway_reaches_every_connection() {
    let t = start().await;
    let mut raw = Raw::connect(&t, true, true).await;
    raw.io
        .write_all(&frame(PING, 0, 0, b"herald!!"))
        .await
        .unwrap();
    let pong = raw.until(|f| f.kind == PING).await;
    assert_eq!((pong.flags, pong.payload.as_slice()), (1, &b"herald!!"[..]));
    wait_stats(&t.sim, "an open connection", |s| s.connections.h2.open == 1).await;
    let admin = t.sim.addrs.admin;
    let mut tcp = TcpStream::connect(admin).await.unwrap();
    tcp.write_all(
        b"POST /goaway HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut resp = String::new();
    tcp.read_to_string(&mut resp).await.unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    let g = raw.until(|f| f.kind == GOAWAY).await;
    assert_eq!(
        herald_apns::reason::goaway_reason(&g.payload[8..]).as_deref(),
        Some("Shutdown")
    );
}

#[tokio::test]
async fn prior_knowledge_without_alpn_is_accepted() {
    let t = start().await;
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    let mut client = h2_connect(
        t.sim.addrs.h2,
        client_config(&t.pki, Some((&cert, &key)), false),
    )
    .await;
    let a = send(
        &mut client,
        "POST",
        &format!("/3/device/{}", token(1)),
        &[("apns-topic", TOPIC)],
        PAYLOAD,
    )
    .await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn dropped_connections_and_latency_follow_the_scenario() {
    let t = start_with(|c, _| {
        c.scenario.drop_rate = 1.0;
    })
    .await;
    let mut raw = Raw::connect(&t, true, true).await;
    raw.request(1, None, Some(PAYLOAD)).await;
    while let Some(f) = raw.next().await {
        assert_ne!(f.kind, HEADERS, "a dropped request gets no answer");
    }
    assert_eq!(t.sim.stats().dropped_connections, 1);

    let t = start_with(|c, _| c.scenario.latency_ms = 150).await;
    let (cert, key) = cert_identity(&t.pki, CertVariant::Universal);
    let mut client = h2_connect(
        t.sim.addrs.h2,
        client_config(&t.pki, Some((&cert, &key)), true),
    )
    .await;
    let started = std::time::Instant::now();
    let a = send(
        &mut client,
        "POST",
        &format!("/3/device/{}", token(1)),
        &[("apns-topic", TOPIC)],
        PAYLOAD,
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "the configured latency is applied"
    );
}

/// Under a rate, a request waits for its turn; one the client resets while it waits is closed, and no longer holds
/// its place under the stream limit (docs/apns-protocol.md#simulator). Limit 1, one request a second: stream 1 is
/// answered, stream 3 waits its turn and is reset by the client, and stream 5, opened with nothing else open, is
/// taken (not refused) and answered in its own turn. The reset and stream 5 go in one write, so the server reads
/// both at once.
#[tokio::test]
async fn a_stream_reset_while_it_waits_its_turn_frees_its_place() {
    let t = start_with(|c, _| {
        c.max_concurrent_streams = 1;
        c.scenario.rate = 1;
    })
    .await;
    let mut raw = Raw::connect(&t, true, true).await;
    let s = raw.until(|f| f.max_streams().is_some()).await;
    assert_eq!(s.max_streams(), Some(1));
    raw.request(1, None, Some(PAYLOAD)).await;
    let first = raw
        .until(|f| f.kind == HEADERS || f.kind == RST_STREAM)
        .await;
    assert!(is_200(&first) && first.stream == 1, "{first:?}");
    raw.request(3, None, Some(PAYLOAD)).await;
    // Stream 3 is taken and waits for its turn (about a second after stream 1's).
    wait_stats(&t.sim, "stream 3 taken", |s| s.streams.total == 2).await;
    assert_eq!(t.sim.stats().accepted.h2, 1, "stream 3 is still waiting");
    let mut both = frame(RST_STREAM, 0, 3, &8u32.to_be_bytes()); // CANCEL
    let mut block = Vec::new();
    literal(&mut block, ":method", "POST");
    literal(&mut block, ":scheme", "https");
    literal(&mut block, ":path", &format!("/3/device/{}", token(7)));
    literal(&mut block, ":authority", "localhost");
    literal(&mut block, "apns-topic", TOPIC);
    both.extend(frame(HEADERS, 0x4, 5, &block));
    both.extend(frame(DATA, 0x1, 5, PAYLOAD));
    raw.io.write_all(&both).await.unwrap();
    let answer = raw
        .until(|f| f.kind == HEADERS || f.kind == RST_STREAM)
        .await;
    assert_eq!(
        (answer.kind, answer.stream),
        (HEADERS, 5),
        "stream 5 answered, not refused: {answer:?}"
    );
    assert!(is_200(&answer));
    let s = t.sim.stats();
    assert_eq!(s.streams.refused, 0);
    // Stream 3 was processed in its turn all the same (crate::pace), without an answer.
    assert_eq!(s.accepted.h2, 3);
    assert_eq!(s.streams.cancelled, 1);
}

/// A request whose body stalls (HEADERS without END_STREAM, then nothing) has its stream reset unprocessed
/// (`REFUSED_STREAM`) after the body timeout, so it neither holds its place nor keeps the connection from its idle
/// close. Body timeout 1 s, idle timeout 1 s: the reset, then GOAWAY IdleTimeout.
#[tokio::test]
async fn a_stalled_body_is_reset_and_the_idle_close_follows() {
    let t = start_with(|c, _| {
        c.body_timeout = Duration::from_secs(1);
        c.scenario.idle_timeout_secs = Some(1);
    })
    .await;
    let mut raw = Raw::connect(&t, true, true).await;
    raw.request(1, None, None).await;
    let rst = raw
        .until(|f| f.kind == RST_STREAM || f.kind == HEADERS || f.kind == GOAWAY)
        .await;
    assert_eq!(
        (rst.kind, rst.stream, rst.payload.as_slice()),
        (RST_STREAM, 1, &7u32.to_be_bytes()[..]),
        "REFUSED_STREAM on the stalled stream"
    );
    let g = raw.until(|f| f.kind == GOAWAY).await;
    assert_eq!(
        herald_apns::reason::goaway_reason(&g.payload[8..]).as_deref(),
        Some("IdleTimeout")
    );
    let s = t.sim.stats();
    assert_eq!((s.streams.timed_out, s.accepted.h2), (1, 0));
}

/// A body over the limit in several DATA frames is counted in full (only what fits the limit is ever kept) and
/// answered PayloadTooLarge, as is one far over it.
#[tokio::test]
async fn an_oversized_body_in_pieces_is_payload_too_large() {
    let t = start().await;
    let mut raw = Raw::connect(&t, true, true).await;
    for (stream, pieces, size) in [(1u32, 3, 2000usize), (3, 10, 16_000)] {
        raw.request(stream, None, None).await;
        for i in 0..pieces {
            let end = if i + 1 == pieces { 1 } else { 0 };
            raw.io
                .write_all(&frame(DATA, end, stream, &vec![b' '; size]))
                .await
                .unwrap();
        }
        let answer = raw.until(|f| f.kind == HEADERS && f.stream == stream).await;
        assert!(!is_200(&answer));
        let body = raw.until(|f| f.kind == DATA && f.stream == stream).await;
        assert_eq!(
            herald_apns::reason::goaway_reason(&body.payload).as_deref(),
            Some("PayloadTooLarge"),
            "stream {stream}"
        );
    }
    wait_stats(&t.sim, "two PayloadTooLarge", |s| {
        s.rejected.by_reason.get("PayloadTooLarge") == Some(&2)
    })
    .await;
}

/// A request block for `stream` on the certificate connection (no authorization), ending its HEADERS only.
fn request_block() -> Vec<u8> {
    let mut block = Vec::new();
    literal(&mut block, ":method", "POST");
    literal(&mut block, ":scheme", "https");
    literal(&mut block, ":path", &format!("/3/device/{}", token(7)));
    literal(&mut block, ":authority", "localhost");
    literal(&mut block, "apns-topic", TOPIC);
    block
}

/// Rapid Reset under a rate: a client that opens a stream and resets it while it waits its turn, again and again,
/// frees its place under the stream limit each time, but every such request is still processed in its turn
/// (crate::pace) and so held. The connection holds at most twice its stream limit of them and refuses the streams
/// beyond, instead of queueing without bound. Limit 2, one request a second: of 60 request-and-reset pairs, at
/// most a handful (4, plus one per second the test takes) are taken.
#[tokio::test]
async fn rapid_reset_under_a_rate_is_bounded() {
    const PAIRS: u32 = 60;
    let t = start_with(|c, _| {
        c.max_concurrent_streams = 2;
        c.scenario.rate = 1;
    })
    .await;
    let mut raw = Raw::connect(&t, true, true).await;
    let s = raw.until(|f| f.max_streams().is_some()).await;
    assert_eq!(s.max_streams(), Some(2));
    // The first request takes the turn due now; the ones after wait a second each.
    raw.request(1, None, Some(PAYLOAD)).await;
    let first = raw
        .until(|f| f.kind == HEADERS || f.kind == RST_STREAM)
        .await;
    assert!(is_200(&first) && first.stream == 1, "{first:?}");
    for i in 0..PAIRS {
        let stream = 3 + 2 * i;
        let mut out = frame(HEADERS, 0x4, stream, &request_block());
        out.extend(frame(DATA, 0x1, stream, PAYLOAD));
        raw.io.write_all(&out).await.unwrap();
        // Reset only once the server has taken (or refused) the stream, so that it is a reset of a stream the
        // simulator holds, not one h2 drops before handing it over.
        wait_stats(&t.sim, "the stream taken or refused", |s| {
            s.streams.total == u64::from(i) + 2
        })
        .await;
        raw.io
            .write_all(&frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()))
            .await
            .unwrap();
    }
    let s = t.sim.stats();
    let taken = u64::from(PAIRS) - s.streams.refused;
    assert!(
        taken <= u64::from(PAIRS) / 2,
        "{taken} of {PAIRS} reset requests held by one connection: {s:?}"
    );
    // The connection still serves once the queue drains: a PING is answered.
    raw.io.write_all(&frame(PING, 0, 0, &[5; 8])).await.unwrap();
    raw.until(|f| f.kind == PING && f.flags & 1 == 1).await;
}

/// Beyond the acknowledged stream limit: by default `RST_STREAM(REFUSED_STREAM)` and the connection carries on;
/// with `stream_overrun` `goaway`, a GOAWAY with PROTOCOL_ERROR and APNs' plain-text debug data, the stream taken
/// before it answered, then the connection closes (docs/apns-protocol.md#http2-connection).
#[tokio::test]
async fn a_stream_overrun_is_refused_or_answered_with_goaway() {
    for overrun in [
        herald_sim::StreamOverrun::Refuse,
        herald_sim::StreamOverrun::Goaway,
    ] {
        let t = start_with(|c, _| {
            c.max_concurrent_streams = 1;
            c.stream_overrun = overrun;
        })
        .await;
        let mut raw = Raw::connect(&t, true, true).await;
        // Reading the SETTINGS acknowledges it (Raw::until), and a PING answered shows the ACK was read.
        let s = raw.until(|f| f.max_streams().is_some()).await;
        assert_eq!(s.max_streams(), Some(1));
        raw.io.write_all(&frame(PING, 0, 0, &[3; 8])).await.unwrap();
        raw.until(|f| f.kind == PING && f.flags & 1 == 1).await;
        raw.request(1, None, None).await;
        raw.request(3, None, None).await;
        let f = raw
            .until(|f| f.kind == RST_STREAM || f.kind == GOAWAY || f.kind == HEADERS)
            .await;
        match overrun {
            herald_sim::StreamOverrun::Refuse => {
                assert_eq!(
                    (f.kind, f.stream, f.payload.as_slice()),
                    (RST_STREAM, 3, &7u32.to_be_bytes()[..]),
                    "REFUSED_STREAM on stream 3"
                );
                raw.io.write_all(&frame(DATA, 1, 1, PAYLOAD)).await.unwrap();
                assert!(is_200(&raw.until(|f| f.kind == HEADERS).await));
                assert_eq!(t.sim.stats().goaways, 0);
            }
            herald_sim::StreamOverrun::Goaway => {
                assert_eq!(f.kind, GOAWAY, "{f:?}");
                assert_eq!(&f.payload[..4], &1u32.to_be_bytes(), "last stream 1");
                assert_eq!(&f.payload[4..8], &1u32.to_be_bytes(), "PROTOCOL_ERROR");
                assert_eq!(
                    &f.payload[8..],
                    b"Maximum active streams violated for this endpoint."
                );
                assert_eq!(herald_sim::STREAM_OVERRUN_DEBUG.as_bytes(), &f.payload[8..]);
                // Stream 1, taken before, is still answered; then the connection closes.
                raw.io.write_all(&frame(DATA, 1, 1, PAYLOAD)).await.unwrap();
                let answer = raw.until(|f| f.kind == HEADERS).await;
                assert!(is_200(&answer) && answer.stream == 1, "{answer:?}");
                loop {
                    match raw.next().await {
                        None => break,
                        Some(f) => assert!(f.kind != HEADERS, "nothing more answered: {f:?}"),
                    }
                }
                assert_eq!(t.sim.stats().goaways, 1);
            }
        }
        assert_eq!(t.sim.stats().streams.refused, 1, "{overrun:?}");
    }
}

/// In goaway mode, streams a client opens before it has acknowledged the first SETTINGS break no rule: they are
/// refused, with no GOAWAY, as by default.
#[tokio::test]
async fn streams_before_the_settings_ack_are_refused_without_goaway() {
    let t = start_with(|c, _| c.stream_overrun = herald_sim::StreamOverrun::Goaway).await;
    let mut raw = Raw::connect(&t, false, true).await;
    for stream in [1, 3] {
        raw.request(stream, None, None).await;
    }
    let rst = raw
        .until(|f| f.kind == RST_STREAM || f.kind == GOAWAY)
        .await;
    assert_eq!((rst.kind, rst.stream), (RST_STREAM, 3), "{rst:?}");
    assert_eq!(t.sim.stats().goaways, 0);
}

/// The SETTINGS values of one connection: (INITIAL_WINDOW_SIZE, MAX_HEADER_LIST_SIZE) from the first SETTINGS,
/// and the connection-window increments sent before the answer to one request.
async fn served_settings(t: &TestSim) -> (Option<u32>, Option<u32>, u32) {
    let mut raw = Raw::connect(t, true, true).await;
    let mut settings = None;
    let mut increments = 0u32;
    raw.request(1, None, Some(PAYLOAD)).await;
    loop {
        let f = raw.until(|_| true).await;
        if f.kind == SETTINGS && f.flags & 1 == 0 && settings.is_none() {
            settings = Some(f.payload.clone());
        }
        if f.kind == 8 && f.stream == 0 {
            increments +=
                u32::from_be_bytes([f.payload[0], f.payload[1], f.payload[2], f.payload[3]]);
        }
        if f.kind == HEADERS && f.stream == 1 {
            assert!(is_200(&f), "{f:?}");
            break;
        }
    }
    let settings = settings.expect("the server's SETTINGS");
    let value = |id: u16| {
        settings
            .chunks(6)
            .find(|c| c[..2] == id.to_be_bytes())
            .map(|c| u32::from_be_bytes([c[2], c[3], c[4], c[5]]))
    };
    (value(4), value(6), increments)
}

/// The stream window, the connection window and the header list size are configurable; by default they stay as
/// they were (1 MiB, 8 MiB, 16,384), and `apple_settings` serves the values observed from APNs (65,535, a
/// connection window never raised, 8000; docs/apns-protocol.md#hpack).
#[tokio::test]
async fn settings_carry_the_configured_windows_and_header_list_size() {
    let t = start().await;
    assert_eq!(
        served_settings(&t).await,
        (Some(1 << 20), Some(16 * 1024), (8 << 20) - 65_535)
    );
    let t = start_with(|c, _| c.apple_settings()).await;
    assert_eq!(served_settings(&t).await, (Some(65_535), Some(8000), 0));
    let t = start_with(|c, _| {
        c.scenario.apple_settings = true;
        c.scenario.initial_window_size = Some(100_000);
        c.scenario.connection_window_size = Some(1 << 20);
        c.scenario.max_header_list_size = Some(9000);
    })
    .await;
    assert_eq!(
        served_settings(&t).await,
        (Some(100_000), Some(9000), (1 << 20) - 65_535)
    );
}

/// Settings the simulator cannot serve are refused at start, naming the setting.
#[tokio::test]
async fn settings_out_of_range_are_refused() {
    let (_dir, pki) = pki();
    for name in [
        "connection_window_size 1000",
        "initial_window_size 2147483648",
        "max_header_list_size 0",
    ] {
        let mut config = herald_sim::SimConfig::from_pki(&pki.manifest).unwrap();
        match name.split(' ').next() {
            Some("connection_window_size") => config.connection_window_size = 1000,
            Some("initial_window_size") => config.initial_window_size = 1 << 31,
            _ => config.max_header_list_size = 0,
        }
        let e = match herald_sim::Simulator::start(config).await {
            Ok(_) => panic!("{name}: started"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(name), "{e}");
    }
}

/// A request head over the header list size is answered 431 by the HTTP/2 layer and never reaches the checks.
#[tokio::test]
async fn a_head_over_the_header_list_size_is_refused() {
    let t = start_with(|c, _| c.apple_settings()).await;
    let (c, k) = cert_identity(&t.pki, CertVariant::Universal);
    let mut client = h2_connect(t.sim.addrs.h2, client_config(&t.pki, Some((&c, &k)), true)).await;
    let path = format!("/3/device/{}", token(1));
    let pad = "x".repeat(7000);
    let ok = send(
        &mut client,
        "POST",
        &path,
        &[("apns-topic", TOPIC), ("x-pad", &pad)],
        PAYLOAD,
    )
    .await;
    assert_eq!(ok.status, 200, "7000 bytes fit in 8000");
    let pad = "x".repeat(9000);
    let big = send(
        &mut client,
        "POST",
        &path,
        &[("apns-topic", TOPIC), ("x-pad", &pad)],
        PAYLOAD,
    )
    .await;
    assert_eq!(big.status, 431);
    assert_eq!(t.sim.stats().accepted.h2, 1);
}
