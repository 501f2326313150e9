//! One connection to the legacy binary provider API (docs/apns-protocol.md#legacy-binary).
//!
//! Notifications are written back to back (frame format by default, enhanced selectable) and APNs answers only
//! failures, so a window remembers what was written in the last `response_timeout`: a notification leaves the
//! window as delivered when that time passes with no error packet. An error packet names one notification: the
//! ones written before it were processed and are delivered, it gets its status, and every one written after it
//! was discarded by APNs and comes back unsent (docs/apns-protocol.md#binary-error-packet). Status 10 (shutdown) names
//! the last notification processed instead. A connection lost with no error packet hands the whole window back unsent.
//!
//! Silence proves nothing while the bytes have not reached APNs: a write counts once it has left the process (the
//! TLS layer flushed), and where the system tells (Linux), a notification's silence counts only from when APNs'
//! TCP stack acknowledged the write that carried it ([`super::acked`]). A peer that vanished without a word
//! therefore never turns a notification into a delivery: its bytes stay unacknowledged until the system ends the
//! connection (`TCP_USER_TIMEOUT`, see [`super::connect`]) and the window comes back unsent. A write that cannot
//! complete within `write_timeout` ends the connection the same way.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::acked::{Acknowledged, counted};
use super::connect::{Endpoint, connect_tls_over};
use super::{
    ConnectionError, ConnectionInfo, ConnectionState, Job, JobReceiver, NotSentReason, OutcomeSink,
    PushResult, Rejection,
};
use crate::binary::{BinaryFormat, BinaryNotification, ErrorPacket, Status, encode};
use crate::push::Priority;

/// How many bytes to gather before one write.
const WRITE_BATCH_BYTES: usize = 64 * 1024;

/// Default [`BinaryOptions::write_timeout`]: as long as the system lets written bytes go unacknowledged.
pub const WRITE_TIMEOUT: Duration = super::connect::TCP_USER_TIMEOUT;

/// Settings of a binary connection.
#[derive(Clone)]
pub struct BinaryOptions {
    pub endpoint: Endpoint,
    /// rustls configuration carrying the client certificate (no ALPN).
    pub tls: Arc<rustls::ClientConfig>,
    pub format: BinaryFormat,
    pub connect_timeout: Duration,
    /// `delivery_response_timeout`: silence this long after a write means delivered.
    pub response_timeout: Duration,
    /// Longest a write (one batch, flushed) may take; a connection whose peer stopped reading for this long is
    /// ended and its window comes back unsent.
    pub write_timeout: Duration,
    /// Close after this long with an empty window and nothing taken; `None` keeps the connection open.
    pub idle_timeout: Option<Duration>,
    /// Most notifications inside the response window; above it the connection takes no more work, which bounds
    /// memory when APNs is slow.
    pub max_window: usize,
}

impl std::fmt::Debug for BinaryOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BinaryOptions")
            .field("endpoint", &self.endpoint)
            .field("format", &self.format)
            .field("response_timeout", &self.response_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("max_window", &self.max_window)
            .finish()
    }
}

struct Written<T> {
    identifier: u32,
    /// When its silence started counting: the write, or the moment its acknowledgement was seen.
    at: Instant,
    /// Bytes written to the socket once its write was done: acknowledged when the peer has acknowledged as many.
    end: u64,
    acknowledged: bool,
    tag: T,
}

/// What the reader half saw.
enum ReadEnd {
    Packet(ErrorPacket),
    /// EOF or an I/O error with no (complete, valid) error packet.
    Lost(String),
}

/// Opens a connection and starts its task, which pulls from `jobs` until it closes. Returns its live state.
pub async fn open<T: Send + 'static>(
    opts: Arc<BinaryOptions>,
    id: u64,
    jobs: JobReceiver<T>,
    sink: Arc<dyn OutcomeSink<T>>,
) -> Result<Arc<ConnectionState>, ConnectionError> {
    let mut acks = None;
    let wrap = |tcp| {
        let (tcp, reader) = counted(tcp);
        acks = reader;
        tcp
    };
    let (tls, remote) =
        connect_tls_over(&opts.endpoint, opts.tls.clone(), opts.connect_timeout, wrap).await?;
    let state = ConnectionState::new(opts.max_window);
    let info = ConnectionInfo { remote, id };
    tokio::spawn(run(opts, tls, acks, jobs, sink, state.clone(), info));
    Ok(state)
}

async fn run<T: Send + 'static, S>(
    opts: Arc<BinaryOptions>,
    stream: S,
    acks: Option<Acknowledged>,
    jobs: JobReceiver<T>,
    sink: Arc<dyn OutcomeSink<T>>,
    state: Arc<ConnectionState>,
    info: ConnectionInfo,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (read_tx, mut read_rx) = tokio::sync::oneshot::channel();
    let reader_task = tokio::spawn(async move {
        let mut buf = [0u8; 6];
        let end = match reader.read_exact(&mut buf).await {
            Ok(_) => match ErrorPacket::decode(&buf) {
                Ok(p) => ReadEnd::Packet(p),
                Err(e) => ReadEnd::Lost(format!("unreadable error packet: {e}")),
            },
            Err(e) => ReadEnd::Lost(e.to_string()),
        };
        let _ = read_tx.send(end);
    });

    let mut window: VecDeque<Written<T>> = VecDeque::new();
    let mut next_id: u32 = 1;
    let mut buf = BytesMut::with_capacity(WRITE_BATCH_BYTES + 4096);
    let tick_every =
        (opts.response_timeout / 4).clamp(Duration::from_millis(5), Duration::from_millis(250));
    let mut tick = tokio::time::interval(tick_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_activity = Instant::now();
    // How many notifications at the front of the window are known acknowledged.
    let mut acknowledged = 0;
    let mut taking = true;
    let mut end: Option<ReadEnd> = None;

    loop {
        state.set_in_flight(window.len());
        tokio::select! {
            biased;
            got = &mut read_rx => {
                end = Some(got.unwrap_or_else(|_| ReadEnd::Lost("reader stopped".into())));
                break;
            }
            job = jobs.recv(), if taking && window.len() < opts.max_window => {
                let Ok(job) = job else { taking = false; continue };
                let batch_start = window.len();
                let mut job = Some(job);
                // Gather what is already queued into one write.
                while let Some(j) = job.take() {
                    match encode_job(&opts, &mut buf, next_id, &j) {
                        Ok(()) => {
                            // `at` is set once the write is done (below).
                            window.push_back(Written {
                                identifier: next_id,
                                at: last_activity,
                                end: 0,
                                acknowledged: false,
                                tag: j.tag,
                            });
                            next_id = next_id.wrapping_add(1);
                        }
                        Err(e) => {
                            tracing::warn!(conn = info.id, error = %e, "notification cannot be encoded");
                            sink.report(
                                j.tag,
                                PushResult::Rejected(Rejection::Binary { status: Status::ProtocolError, identifier: None }),
                                &info,
                            );
                        }
                    }
                    if next_id == u32::MAX {
                        // Identifiers would wrap; a fresh connection starts over.
                        state.drain();
                        break;
                    }
                    if buf.len() < WRITE_BATCH_BYTES && window.len() < opts.max_window {
                        job = jobs.try_recv().ok();
                    }
                }
                // Flushed, or the TLS layer may keep the tail of the batch and silence would "deliver" it.
                let written = async {
                    writer.write_all(&buf).await?;
                    writer.flush().await
                };
                let written = match tokio::time::timeout(opts.write_timeout, written).await {
                    Ok(r) => r,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("a write took over {} ms; the peer stopped reading", opts.write_timeout.as_millis()),
                    )),
                };
                if let Err(e) = written {
                    tracing::debug!(conn = info.id, error = %e, "write failed");
                    // The server may have written an error packet before closing: give the reader a moment.
                    end = Some(match tokio::time::timeout(opts.response_timeout, &mut read_rx).await {
                        Ok(Ok(got)) => got,
                        _ => ReadEnd::Lost(e.to_string()),
                    });
                    break;
                }
                buf.clear();
                // The response window counts from when the notifications were written, not from when they were
                // taken: a write that waited on a slow reader must not make them look answered by silence.
                last_activity = Instant::now();
                let end = acks.as_ref().map_or(0, Acknowledged::written);
                for w in window.range_mut(batch_start..) {
                    w.at = last_activity;
                    w.end = end;
                    // Without a way to ask, the write is all the proof there is.
                    w.acknowledged = acks.is_none();
                }
            }
            _ = tick.tick() => {
                let now = Instant::now();
                if let Some(acks) = &acks {
                    // A system that cannot tell counts everything written as acknowledged.
                    let upto = acks.acknowledged().unwrap_or_else(|| acks.written());
                    for w in window.range_mut(acknowledged..) {
                        if w.end > upto {
                            break;
                        }
                        // Acknowledged since the last look: the silence counts from now.
                        w.acknowledged = true;
                        w.at = w.at.max(now);
                        acknowledged += 1;
                    }
                }
                let answered_by_silence = |w: &Written<T>| {
                    w.acknowledged && now.duration_since(w.at) >= opts.response_timeout
                };
                while window.front().is_some_and(answered_by_silence) {
                    if let Some(w) = window.pop_front() {
                        acknowledged = acknowledged.saturating_sub(1);
                        sink.report(w.tag, delivered(w.identifier), &info);
                    }
                }
                if state.is_draining() {
                    taking = false;
                }
                if window.is_empty() {
                    let idle = opts.idle_timeout.is_some_and(|idle| now.duration_since(last_activity) >= idle);
                    if !taking || idle {
                        break;
                    }
                }
            }
        }
    }

    match end {
        Some(ReadEnd::Packet(packet)) => settle_error_packet(packet, &mut window, &*sink, &info),
        Some(ReadEnd::Lost(why)) if !window.is_empty() => {
            tracing::info!(conn = info.id, remote = %info.remote, in_window = window.len(),
                "connection lost without an error packet ({why}); requeueing the window");
        }
        Some(ReadEnd::Lost(_)) | None => {}
    }
    for w in window.drain(..) {
        sink.report(
            w.tag,
            PushResult::NotSent(NotSentReason::ConnectionLost),
            &info,
        );
    }
    state.set_in_flight(0);
    state.set_closed();
    let _ = writer.shutdown().await;
    reader_task.abort();
}

fn encode_job<T>(
    opts: &BinaryOptions,
    buf: &mut BytesMut,
    identifier: u32,
    job: &Job<T>,
) -> Result<(), String> {
    let r = &job.request;
    let notification = BinaryNotification {
        identifier,
        expiry: r.expiration.unwrap_or(0),
        priority: r.priority.unwrap_or(Priority::Immediate).as_u8(),
        token: r.token.as_bytes().to_vec(),
        payload: r.payload.clone(),
    };
    encode(&notification, opts.format, buf).map_err(|e| e.to_string())
}

/// Applies docs/apns-protocol.md#binary-error-packet to the window: before the named notification delivered, it failed,
/// after it unsent.
fn settle_error_packet<T: 'static>(
    packet: ErrorPacket,
    window: &mut VecDeque<Written<T>>,
    sink: &dyn OutcomeSink<T>,
    info: &ConnectionInfo,
) {
    let shutdown = packet.status == Status::Shutdown;
    let Some(pos) = window
        .iter()
        .position(|w| w.identifier == packet.identifier)
    else {
        tracing::warn!(
            conn = info.id,
            identifier = packet.identifier,
            status = packet.status.code(),
            "error packet names a notification outside the response window; requeueing the window"
        );
        return;
    };
    // With status 10 the identifier is the last notification APNs processed
    // (docs/apns-protocol.md#binary-error-packet).
    let processed = if shutdown { pos + 1 } else { pos };
    for w in window.drain(..processed) {
        sink.report(w.tag, delivered(w.identifier), info);
    }
    if !shutdown && let Some(w) = window.pop_front() {
        sink.report(
            w.tag,
            PushResult::Rejected(Rejection::Binary {
                status: packet.status,
                identifier: Some(w.identifier),
            }),
            info,
        );
    }
    for w in window.drain(..) {
        sink.report(
            w.tag,
            PushResult::NotSent(NotSentReason::AfterRejected),
            info,
        );
    }
}

/// The binary protocol's transaction id is the notification identifier.
fn delivered(identifier: u32) -> PushResult {
    PushResult::Delivered {
        transaction_id: Some(identifier.to_string()),
        unique_id: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::binary::{ErrorPacket, Status};
    use crate::client::PushRequest;
    #[cfg(target_os = "linux")]
    use crate::client::acked::tests::tight_pair;
    use crate::client::test_sink::Results;
    use crate::identity::{RootSource, client_config};
    use crate::token_hex::DeviceToken;
    use bytes::Bytes;

    fn job(tag: u32) -> Job<u32> {
        Job {
            request: PushRequest {
                token: DeviceToken::from_bytes(vec![tag as u8; 32]).unwrap(),
                topic: None,
                push_type: None,
                priority: None,
                expiration: None,
                collapse_id: None,
                apns_id: None,
                payload: Bytes::from(format!("{{\"aps\":{{\"alert\":\"{}\"}}}}", "x".repeat(100))),
            },
            tag,
        }
    }

    /// Options with a 200 ms response window.
    fn options(write_timeout: Duration) -> Arc<BinaryOptions> {
        Arc::new(BinaryOptions {
            endpoint: Endpoint::new("127.0.0.1", 2195),
            tls: client_config(None, RootSource::NoVerify, false).unwrap(),
            format: BinaryFormat::Frame,
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_millis(200),
            write_timeout,
            idle_timeout: None,
            max_window: 10_000,
        })
    }

    /// The size of one test notification on the wire.
    fn encoded_len() -> usize {
        let mut b = BytesMut::new();
        encode_job(&options(WRITE_TIMEOUT), &mut b, 1, &job(1)).unwrap();
        b.len()
    }

    /// Runs a connection over `stream` with notifications 1..=`jobs` waiting for it.
    fn start<S>(
        stream: S,
        acks: Option<Acknowledged>,
        jobs: u32,
        write_timeout: Duration,
    ) -> (
        async_channel::Sender<Job<u32>>,
        Arc<Results>,
        tokio::task::JoinHandle<()>,
    )
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (tx, rx) = async_channel::unbounded();
        for tag in 1..=jobs {
            tx.try_send(job(tag)).unwrap();
        }
        let results = Arc::new(Results::default());
        let info = ConnectionInfo {
            remote: "127.0.0.1:2195".parse().unwrap(),
            id: 1,
        };
        let conn = tokio::spawn(run(
            options(write_timeout),
            stream,
            acks,
            rx,
            results.clone(),
            ConnectionState::new(10_000),
            info,
        ));
        (tx, results, conn)
    }

    /// Reads from `server` until `len` bytes came (failing after 20 s).
    async fn read_at_least<R: tokio::io::AsyncRead + Unpin>(server: &mut R, len: usize) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while got.len() < len {
            let n =
                tokio::time::timeout_at(deadline, tokio::io::AsyncReadExt::read(server, &mut buf))
                    .await
                    .unwrap_or_else(|_| panic!("only {} of {len} bytes came", got.len()))
                    .unwrap();
            assert!(n > 0, "the connection closed after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        got
    }

    /// The response window counts from when a notification was written: a write held up by a server reading
    /// slowly (longer than the response timeout) does not make the notifications it carried count as delivered
    /// before the server could answer them (docs/apns-protocol.md#binary-error-packet: silence for the response
    /// time means delivered).
    #[tokio::test]
    async fn a_write_held_up_by_a_slow_reader_does_not_count_as_answered_silence() {
        let (client, mut server) = tokio::io::duplex(64);
        let (tx, results, conn) = start(client, None, 3, WRITE_TIMEOUT);
        // The server reads nothing for three response times (the write waits meanwhile), then reads what was
        // written and, 50 ms later (within the response time), refuses the first notification.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got.len() < 3 * 150 {
            let n = tokio::io::AsyncReadExt::read(&mut server, &mut buf)
                .await
                .unwrap();
            assert!(n > 0, "the connection closed early");
            got.extend_from_slice(&buf[..n]);
            if tokio::time::timeout(Duration::from_millis(20), std::future::pending::<()>())
                .await
                .is_err()
                && got.len() >= 3 * 150
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let packet = ErrorPacket {
            status: Status::InvalidToken,
            identifier: 1,
        };
        tokio::io::AsyncWriteExt::write_all(&mut server, &packet.encode())
            .await
            .unwrap();
        let mut reported = results.wait_for(3).await;
        reported.sort_by_key(|(tag, _)| *tag);
        assert_eq!(
            reported,
            vec![
                (
                    1,
                    PushResult::Rejected(Rejection::Binary {
                        status: Status::InvalidToken,
                        identifier: Some(1),
                    })
                ),
                (2, PushResult::NotSent(NotSentReason::AfterRejected)),
                (3, PushResult::NotSent(NotSentReason::AfterRejected)),
            ]
        );
        drop(tx);
        conn.await.unwrap();
    }

    /// A batch leaves the process before its silence counts: a stream that holds written bytes until it is flushed
    /// (as TLS does with the tail of a write the socket could not take) still gets every notification to the peer,
    /// and none is reported delivered while it sits in the buffer (docs/apns-protocol.md#binary-error-packet).
    #[tokio::test]
    async fn a_batch_is_flushed_before_its_silence_counts() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let buffered = tokio::io::BufWriter::with_capacity(1 << 20, client);
        let (_tx, results, _conn) = start(buffered, None, 3, WRITE_TIMEOUT);
        let one = encoded_len();
        read_at_least(&mut server, 3 * one).await;
        let reported = results.wait_for(3).await;
        assert!(
            reported
                .iter()
                .all(|(_, r)| matches!(r, PushResult::Delivered { .. })),
            "{reported:?}"
        );
    }

    /// A write the peer does not take within `write_timeout` ends the connection and hands its window back unsent:
    /// a peer that stopped reading never turns the notifications into silent deliveries.
    #[tokio::test]
    async fn a_write_the_peer_never_takes_ends_the_connection_with_the_window_unsent() {
        let (client, _server) = tokio::io::duplex(64);
        let (_tx, results, conn) = start(client, None, 3, Duration::from_millis(300));
        let reported = results.wait_for(3).await;
        assert!(
            reported
                .iter()
                .all(|(_, r)| *r == PushResult::NotSent(NotSentReason::ConnectionLost)),
            "{reported:?}"
        );
        tokio::time::timeout(Duration::from_secs(20), conn)
            .await
            .unwrap()
            .unwrap();
    }

    /// Silence counts only once the peer's TCP stack acknowledged what was written: notifications sitting in the
    /// socket's send queue of a peer that does not read (a full receive window, as with a vanished peer whose
    /// bytes are never acknowledged) are not reported delivered, however long the silence; once the peer reads,
    /// its error packet settles them as usual (docs/apns-protocol.md#binary-error-packet).
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn silence_counts_only_after_the_peer_acknowledged_the_bytes() {
        // The server does not read; the client's send buffer holds everything.
        let (client, mut server) = tight_pair().await;
        let (client, acks) = counted(client);
        let jobs = 200;
        let (_tx, results, conn) = start(client, acks, jobs, WRITE_TIMEOUT);
        let one = encoded_len();
        // Three response windows of silence with the bytes unacknowledged: nothing is delivered.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(
            results.wait_for(0).await,
            vec![],
            "silence before the bytes were acknowledged"
        );
        // The server reads everything, then refuses the first notification within the response window.
        read_at_least(&mut server, jobs as usize * one).await;
        let packet = ErrorPacket {
            status: Status::InvalidToken,
            identifier: 1,
        };
        tokio::io::AsyncWriteExt::write_all(&mut server, &packet.encode())
            .await
            .unwrap();
        let reported = results.wait_for(jobs as usize).await;
        assert_eq!(
            reported[0],
            (
                1,
                PushResult::Rejected(Rejection::Binary {
                    status: Status::InvalidToken,
                    identifier: Some(1),
                })
            )
        );
        assert!(
            reported[1..]
                .iter()
                .all(|(_, r)| *r == PushResult::NotSent(NotSentReason::AfterRejected)),
            "{reported:?}"
        );
        tokio::time::timeout(Duration::from_secs(20), conn)
            .await
            .unwrap()
            .unwrap();
    }

    /// Acknowledgement is tracked per write: a notification the peer took is delivered by silence while later
    /// writes still wait behind the peer's full receive window, so a busy connection keeps delivering.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn an_acknowledged_write_is_delivered_while_later_ones_wait() {
        let (client, mut server) = tight_pair().await;
        let (client, acks) = counted(client);
        let (tx, results, _conn) = start(client, acks, 1, WRITE_TIMEOUT);
        let one = encoded_len();
        read_at_least(&mut server, one).await;
        for tag in 2..=200 {
            tx.send(job(tag)).await.unwrap();
        }
        // The first is delivered; the rest, unread by the server, are not.
        let reported = results.wait_for(1).await;
        assert_eq!(reported, vec![(1, delivered(1))]);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(
            results.wait_for(1).await.len(),
            1,
            "unacknowledged notifications delivered"
        );
        read_at_least(&mut server, 199 * one).await;
        let reported = results.wait_for(200).await;
        assert!(
            reported
                .iter()
                .all(|(_, r)| matches!(r, PushResult::Delivered { .. })),
            "{reported:?}"
        );
    }
}
