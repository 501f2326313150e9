//! The legacy binary gateway (docs/apns-protocol.md#legacy-binary) and feedback service
//! (docs/apns-protocol.md#feedback-service), both TLS with a required client certificate whose UID names the topic.
//! Apple ran separate hosts per environment, each taking only certificates for its own environment (or universal
//! ones): a certificate for the other environment gets nothing, its connection is closed as soon as the TLS
//! handshake is over, before a byte is decoded, recorded or served.
//!
//! Gateway: commands 0, 1 and 2 are decoded with herald-apns's incremental decoder. Accepted notifications get no
//! answer. The first bad one gets the 6-byte error packet (the decoder's status, 8 for a token the scenario marks
//! bad, or a scenario status) naming its identifier, and the connection closes; a command-0 error and an unknown
//! command byte just close (zero bytes back).
//! A scenario status 10 (shutdown) names the last notification processed: the one it falls on is accepted and
//! recorded first, then named. A closing connection reads and discards what the client still sends until the
//! client closes (5 s and 4 MiB at most), so that the client gets the packet and a clean end rather than a reset.
//! On a shutdown request (admin `POST /shutdown-binary`) every connection sends status 10 with the identifier of
//! its last accepted notification and closes; one speaking command 0 (its last notification, or the one being read
//! when none was yet) just closes, as command 0 never gets a packet.
//!
//! Feedback: on connect, the 38-byte tuples of the tokens marked unregistered for the certificate's topic are
//! written, then the connection closes; what was read is gone.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use herald_apns::binary::{BinaryFormat, ErrorPacket, FeedbackTuple, NotificationDecoder, Status};
use herald_apns::identity::CertificateInfo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

use crate::config::Environment;
use crate::record::{DeliveryRecord, RecordProtocol, Recorder};
use crate::registry::{TokenRegistry, now_ms};
use crate::scenario::{CompiledScenario, Rng, TokenState};
use crate::stats::Stats;

/// Shared by every binary and feedback connection.
pub(crate) struct BinaryContext {
    pub stats: Arc<Stats>,
    pub recorder: Arc<Recorder>,
    pub registry: Arc<TokenRegistry>,
    pub scenario: CompiledScenario,
    /// The environment the simulator plays: certificates for the other one are turned away.
    pub environment: Environment,
    pub ordinal: std::sync::atomic::AtomicU64,
    /// Bumped by `POST /shutdown-binary`.
    pub shutdown: watch::Receiver<u64>,
}

/// Which service a listener runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    Gateway,
    Feedback,
}

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// The topic (UID) of the client certificate, if it has one and is valid in `environment`.
fn cert_topic(stream: &TlsStream<TcpStream>, environment: Environment) -> Option<String> {
    let der = stream.get_ref().1.peer_certificates()?.first()?;
    let info = CertificateInfo::from_der(der).ok()?;
    if !crate::h2::auth::cert_fits_environment(info.environment, environment) {
        tracing::debug!(
            "binary: a {} client certificate on the {} simulator; closing",
            info.environment,
            environment.as_str()
        );
        return None;
    }
    info.uid
}

pub(crate) async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    ctx: Arc<BinaryContext>,
    service: Service,
    stop: watch::Receiver<bool>,
) {
    let stats = ctx.stats.clone();
    crate::accept::serve_tls(
        listener,
        tls,
        stop,
        format!("{service:?}"),
        stats,
        move |_peer| {
            let ctx = ctx.clone();
            move |stream| async move {
                match service {
                    Service::Gateway => gateway_connection(ctx, stream).await,
                    Service::Feedback => feedback_connection(ctx, stream).await,
                }
            }
        },
    )
    .await
}

/// How long a closing connection keeps reading what the client still sends, at most.
const DRAIN_TIME: Duration = Duration::from_secs(5);
/// How many bytes a closing connection reads (and discards) from the client, at most.
const DRAIN_BYTES: usize = 4 << 20;

/// Writes the error packet (if any), shuts the write side, then reads and discards what the client still sends
/// until it closes (within [`DRAIN_TIME`] and [`DRAIN_BYTES`]), and only then closes, as the HTTP/2 side does
/// (`FrameIo::poll_shutdown`). Closing a socket with unread data makes the kernel reset the connection, and a
/// client still writing the notifications that followed the failed one would get the reset instead of a clean
/// end, and could lose the packet before reading it.
async fn close_with(stream: &mut TlsStream<TcpStream>, packet: Option<ErrorPacket>) {
    if let Some(p) = packet {
        let _ = stream.write_all(&p.encode()).await;
    }
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    let mut scratch = vec![0u8; 16 * 1024];
    let mut drained = 0usize;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while drained < DRAIN_BYTES {
            match stream.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    })
    .await;
}

async fn gateway_connection(ctx: Arc<BinaryContext>, mut stream: TlsStream<TcpStream>) {
    let _open = ctx.stats.binary_connections.opened();
    let Some(topic) = cert_topic(&stream, ctx.environment) else {
        tracing::debug!("binary: no usable client certificate; closing");
        close_with(&mut stream, None).await;
        return;
    };
    let counter = ctx.stats.topic(&topic);
    let ordinal = ctx.ordinal.fetch_add(1, Ordering::Relaxed);
    let mut rng = Rng::new(ctx.scenario.seed, ordinal);
    let mut shutdown = ctx.shutdown.clone();
    shutdown.mark_unchanged();
    let mut decoder = NotificationDecoder::new(Default::default());
    let mut buf = BytesMut::with_capacity(16 * 1024);
    let mut last_good = 0u32;
    // The format of the last notification decoded: on shutdown, command 0 gets no packet.
    let mut format: Option<BinaryFormat> = None;
    loop {
        // Decode everything buffered.
        loop {
            match decoder.decode(&mut buf) {
                Ok(None) => break,
                Ok(Some(d)) => {
                    format = Some(d.format);
                    let n = d.notification;
                    let token = hex(&n.token);
                    let mut status = match ctx.registry.get(&token) {
                        Some(e) if e.state == TokenState::Bad => Some(Status::InvalidToken),
                        _ => None,
                    };
                    if status.is_none() {
                        status = ctx.scenario.roll_binary_error(&mut rng);
                    }
                    // Status 10 (shutdown) names the last notification processed
                    // (docs/apns-protocol.md#binary-error-packet): this one is accepted and recorded, then named.
                    let shutdown = status == Some(Status::Shutdown);
                    if let Some(status) = status.filter(|_| !shutdown) {
                        ctx.stats.reject_binary(status.code());
                        let packet = d.format.sends_error_packet().then_some(ErrorPacket {
                            status,
                            identifier: n.identifier,
                        });
                        close_with(&mut stream, packet).await;
                        return;
                    }
                    // Room in the record first, so that counting and recording go together.
                    let slot = ctx.recorder.slot().await;
                    ctx.stats.accepted_binary.fetch_add(1, Ordering::Relaxed);
                    counter.binary.fetch_add(1, Ordering::Relaxed);
                    last_good = n.identifier;
                    if ctx.recorder.enabled() {
                        let has_meta = d.format != BinaryFormat::Simple;
                        let mut rec = DeliveryRecord {
                            protocol: RecordProtocol::Binary,
                            token,
                            topic: topic.clone(),
                            apns_id: None,
                            priority: n.priority,
                            expiration: has_meta.then_some(n.expiry as u64),
                            collapse_id: None,
                            push_type: None,
                            payload: String::new(),
                            payload_base64: None,
                            identifier: has_meta.then_some(n.identifier),
                            format: Some(d.format.command()),
                            received_ms: now_ms(),
                            channel_id: None,
                        };
                        rec.set_payload(&n.payload);
                        slot.push(rec);
                    }
                    if shutdown {
                        ctx.stats.reject_binary(Status::Shutdown.code());
                        let packet = d.format.sends_error_packet().then_some(ErrorPacket {
                            status: Status::Shutdown,
                            identifier: n.identifier,
                        });
                        close_with(&mut stream, packet).await;
                        return;
                    }
                }
                Err(e) => {
                    tracing::debug!("binary: {e}");
                    ctx.stats.reject_binary(e.status().code());
                    close_with(&mut stream, e.error_packet()).await;
                    return;
                }
            }
        }
        tokio::select! {
            r = stream.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            changed = shutdown.changed() => {
                if changed.is_ok() {
                    ctx.stats.reject_binary(Status::Shutdown.code());
                    // Before any notification was decoded, the command byte of the one being read (if any) tells.
                    let simple = match format {
                        Some(f) => !f.sends_error_packet(),
                        None => buf.first() == Some(&BinaryFormat::Simple.command()),
                    };
                    let packet = (!simple).then_some(ErrorPacket {
                        status: Status::Shutdown,
                        identifier: last_good,
                    });
                    close_with(&mut stream, packet).await;
                }
                return;
            }
        }
    }
}

async fn feedback_connection(ctx: Arc<BinaryContext>, mut stream: TlsStream<TcpStream>) {
    let _open = ctx.stats.feedback_connections.opened();
    // Only a certificate valid here may read (and so empty) its topic's list.
    let Some(topic) = cert_topic(&stream, ctx.environment) else {
        close_with(&mut stream, None).await;
        return;
    };
    let items = ctx.registry.take_feedback(&topic);
    let mut out = BytesMut::with_capacity(items.len() * 38);
    let mut n = 0u64;
    for item in &items {
        let Ok(token) = herald_apns::token_hex::DeviceToken::from_hex(&item.token) else {
            continue;
        };
        let tuple = FeedbackTuple {
            timestamp: item.timestamp,
            token: token.as_bytes().to_vec(),
        };
        if tuple.encode(&mut out).is_ok() {
            n += 1;
        }
    }
    ctx.stats.feedback_tuples.fetch_add(n, Ordering::Relaxed);
    let _ = stream.write_all(&out).await;
    close_with(&mut stream, None).await;
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_lowercase() {
        assert_eq!(super::hex(&[0xAB, 0x01]), "ab01");
    }
}
