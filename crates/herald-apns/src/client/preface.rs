//! Opening an HTTP/2 client connection, for the device connection ([`super::http2`]) and the broadcast client
//! ([`crate::broadcast`]) alike: the connection counts as open only once the server's connection preface (its
//! first SETTINGS frame, RFC 9113 §3.4) has arrived, within a timeout.
//!
//! Until then the connection assumes the strictest stream limit, one stream (APNs' limit for a token connection
//! until a request has authenticated it, docs/apns-protocol.md#http2-connection): requests made at once on a new
//! connection wait in h2 for the server's limit instead of opening streams the server refuses. A connection that
//! fails before the preface failed to connect: under TLS 1.3 a server rejects a client certificate only after the
//! client's handshake is done (docs/apns-protocol.md#certificates), so the rejection (a TLS alert) is the first
//! thing read, and it is reported here with its TLS reason rather than as a connection lost after opening.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use h2::client::{Builder, Connection, SendRequest};

use super::ConnectionError;

/// The HTTP/2 handshake on an established transport with `builder`'s settings (and a send limit of one stream
/// until the server's SETTINGS say otherwise), complete only once the server's preface has arrived, within
/// `timeout`. `host` names the server in errors. The connection is returned not yet driven past the preface: the
/// caller drives it (its own task, or alongside its requests) for as long as it is used.
pub(crate) async fn open<S>(
    io: S,
    builder: Builder,
    host: &str,
    timeout: Duration,
) -> Result<(SendRequest<Bytes>, Connection<FirstFrame<S>, Bytes>), ConnectionError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (send, connection, _) = open_watched(io, builder, host, timeout).await?;
    Ok((send, connection))
}

/// [`open`], with what the connection reads watched for the server's GOAWAY frames ([`FrameWatch`]).
pub(crate) async fn open_watched<S>(
    io: S,
    mut builder: Builder,
    host: &str,
    timeout: Duration,
) -> Result<
    (
        SendRequest<Bytes>,
        Connection<FirstFrame<S>, Bytes>,
        Arc<FrameWatch>,
    ),
    ConnectionError,
>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let host = || host.to_owned();
    let preface = Arc::new(Preface::default());
    let watch = preface.clone();
    let opened = async {
        let (send, mut connection) = builder
            // Until the server's SETTINGS arrive assume the strictest limit: token connections start at 1 stream.
            .initial_max_send_streams(1)
            .handshake::<_, Bytes>(FirstFrame::new(io, preface.clone()))
            .await
            .map_err(|e| handshake_error(e, &preface, host()))?;
        poll_fn(|cx| {
            // Driving the connection reads what the server sent, the preface first.
            let ended = Pin::new(&mut connection).poll(cx);
            // An HTTP/1 server answers the client's preface with an HTTP/1 response, which h2 reads as a frame
            // of an impossible size: what matters is that the server does not speak HTTP/2.
            if preface.first_frame.load(Ordering::Acquire) == PREFACE_HTTP1 {
                return Poll::Ready(Err(ConnectionError::NotHttp2 {
                    host: host(),
                    detail: "it answered the HTTP/2 connection preface in HTTP/1".to_owned(),
                }));
            }
            if let Poll::Ready(ended) = ended {
                return Poll::Ready(Err(match ended {
                    Err(e) => handshake_error(e, &preface, host()),
                    Ok(()) => ConnectionError::Preface {
                        host: host(),
                        detail: "the connection ended before the server's SETTINGS".to_owned(),
                    },
                }));
            }
            match preface.first_frame.load(Ordering::Acquire) {
                PREFACE_WAITING => Poll::Pending,
                PREFACE_SETTINGS => Poll::Ready(Ok(())),
                _ => Poll::Ready(Err(ConnectionError::Preface {
                    host: host(),
                    detail: "the server's first frame is not SETTINGS".to_owned(),
                })),
            }
        })
        .await?;
        Ok((send, connection, watch))
    };
    tokio::time::timeout(timeout, opened)
        .await
        .map_err(|_| ConnectionError::PrefaceTimeout {
            host: host(),
            after: timeout,
        })?
}

/// [`FirstFrame`]: no frame header read yet.
const PREFACE_WAITING: u8 = 0;
/// [`FirstFrame`]: the server's first frame is a SETTINGS frame (not an acknowledgement): its preface.
const PREFACE_SETTINGS: u8 = 1;
/// [`FirstFrame`]: the server's first frame is something else, which breaks the protocol.
const PREFACE_OTHER: u8 = 2;
/// [`FirstFrame`]: the server's first bytes are an HTTP/1 response (`HTTP/`): it does not speak HTTP/2.
const PREFACE_HTTP1: u8 = 3;

/// What [`FirstFrame`] saw of the server's frames: its preface, and the last GOAWAY it sent.
#[derive(Debug, Default)]
pub(crate) struct Preface {
    /// One of the `PREFACE_*` values.
    first_frame: AtomicU8,
    /// A TLS failure reading before the preface came (h2 keeps only the text of an I/O error).
    tls_error: std::sync::Mutex<Option<rustls::Error>>,
    /// The last GOAWAY frame the server sent.
    goaway: std::sync::Mutex<Option<GoAwaySeen>>,
    /// Whether the server has sent a GOAWAY: read on every turn of a connection's task, without a lock.
    goaway_seen: AtomicBool,
}

/// What the connection's reader saw: see [`Preface`].
pub(crate) type FrameWatch = Preface;

/// A GOAWAY frame the server sent: h2 passes its error code and debug data on only when the code is an error
/// (after `NO_ERROR` the connection just ends), so the reader keeps them for the logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GoAwaySeen {
    pub last_stream_id: u32,
    pub error_code: u32,
    /// The debug data, at most [`MAX_GOAWAY_DEBUG`] bytes of it.
    pub debug: Vec<u8>,
}

/// The most GOAWAY debug data kept: APNs sends a short JSON object (`{"reason":"Shutdown"}`) or a line of text.
const MAX_GOAWAY_DEBUG: usize = 1024;

impl Preface {
    /// The last GOAWAY the server sent, if it sent one.
    pub(crate) fn goaway(&self) -> Option<GoAwaySeen> {
        self.goaway.lock().ok().and_then(|g| g.clone())
    }

    /// Whether the server has sent a GOAWAY ([`Preface::goaway`] has it), known as soon as its frame has been
    /// read: the connection learns of it whether or not it asks h2 for another stream.
    pub(crate) fn has_goaway(&self) -> bool {
        self.goaway_seen.load(Ordering::Acquire)
    }
}

/// The connection's transport, noting what the server's first frame header is, so that [`open`] knows when the
/// server's preface came, and a TLS failure before it. After the preface it follows the frame boundaries of what
/// it reads (headers only, payloads are skipped) to keep the server's GOAWAY frames ([`Preface::goaway`]).
pub(crate) struct FirstFrame<S> {
    io: S,
    /// The header of the frame being read, `got` bytes of it so far; once whole, `remaining` payload bytes follow.
    head: [u8; 9],
    got: usize,
    remaining: usize,
    /// Whether the first frame header has been read.
    first_seen: bool,
    /// The payload of a GOAWAY being read (up to its first 8 bytes and [`MAX_GOAWAY_DEBUG`] of debug data).
    goaway: Option<Vec<u8>>,
    preface: Arc<Preface>,
}

impl<S> FirstFrame<S> {
    fn new(io: S, preface: Arc<Preface>) -> Self {
        FirstFrame {
            io,
            head: [0; 9],
            got: 0,
            remaining: 0,
            first_seen: false,
            goaway: None,
            preface,
        }
    }

    /// Follows the frames in `data`, the next bytes read.
    fn scan(&mut self, mut data: &[u8]) {
        const SETTINGS: u8 = 0x4;
        const GOAWAY: u8 = 0x7;
        const ACK: u8 = 0x1;
        while !data.is_empty() {
            if self.got < self.head.len() {
                let take = data.len().min(self.head.len() - self.got);
                self.head[self.got..self.got + take].copy_from_slice(&data[..take]);
                self.got += take;
                data = &data[take..];
                if self.got < self.head.len() {
                    return;
                }
                if !self.first_seen {
                    self.first_seen = true;
                    let settings = self.head[3] == SETTINGS && self.head[4] & ACK == 0;
                    self.preface.first_frame.store(
                        if settings {
                            PREFACE_SETTINGS
                        } else if self.head.starts_with(b"HTTP/") {
                            PREFACE_HTTP1
                        } else {
                            PREFACE_OTHER
                        },
                        Ordering::Release,
                    );
                }
                self.remaining = usize::from(self.head[0]) << 16
                    | usize::from(self.head[1]) << 8
                    | usize::from(self.head[2]);
                self.goaway = (self.head[3] == GOAWAY).then(Vec::new);
            } else {
                let take = data.len().min(self.remaining);
                if let Some(payload) = &mut self.goaway {
                    let room = (8 + MAX_GOAWAY_DEBUG).saturating_sub(payload.len());
                    payload.extend_from_slice(&data[..take.min(room)]);
                }
                self.remaining -= take;
                data = &data[take..];
            }
            if self.remaining == 0 {
                // The frame is complete.
                self.got = 0;
                if let Some(payload) = self.goaway.take()
                    && payload.len() >= 8
                    && let Ok(mut slot) = self.preface.goaway.lock()
                {
                    let word = |at: usize| {
                        u32::from_be_bytes([
                            payload[at],
                            payload[at + 1],
                            payload[at + 2],
                            payload[at + 3],
                        ])
                    };
                    *slot = Some(GoAwaySeen {
                        last_stream_id: word(0) & 0x7fff_ffff,
                        error_code: word(4),
                        debug: payload[8..].to_vec(),
                    });
                    self.preface.goaway_seen.store(true, Ordering::Release);
                }
            }
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstFrame<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if !this.first_seen
            && let Poll::Ready(Err(e)) = &read
            && let Some(tls) = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            && let Ok(mut slot) = this.preface.tls_error.lock()
        {
            *slot = Some(tls.clone());
        }
        if let Poll::Ready(Ok(())) = &read {
            let filled = buf.filled();
            if filled.len() > before {
                this.scan(&filled[before..]);
            }
        }
        read
    }
}

/// Implements `AsyncWrite` for a wrapper `$wrapper<S>` that only watches what is read: every write call goes to its
/// `io` field unchanged.
macro_rules! forward_async_write {
    ($wrapper:ident) => {
        impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for $wrapper<S> {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
            }

            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
            }

            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }

            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
            }

            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
            }
        }
    };
}
pub(crate) use forward_async_write;

forward_async_write!(FirstFrame);

/// A connection error from h2 before the connection was open: a TLS failure (an alert from the server, such as
/// its refusal of the client certificate) is reported as one, with the TLS reason; anything else as a failed
/// HTTP/2 handshake.
fn handshake_error(e: h2::Error, preface: &Preface, host: String) -> ConnectionError {
    let tls = preface.tls_error.lock().ok().and_then(|mut t| t.take());
    match tls {
        Some(tls) => ConnectionError::Tls {
            host,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, tls),
        },
        None => ConnectionError::Handshake { host, source: e },
    }
}

#[cfg(test)]
mod tests {
    //! [`open`] against servers on 127.0.0.1 that read the client's preface and then answer as a test says.

    use super::*;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    const SETTINGS: u8 = 0x4;

    /// [`open`] against a server that reads the client's preface and then does what `serve` does.
    async fn open_with<F, Fut>(timeout: Duration, serve: F) -> Result<(), ConnectionError>
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut preface = [0u8; 24];
            sock.read_exact(&mut preface).await.unwrap();
            serve(sock).await;
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        open(tcp, Builder::new(), "127.0.0.1", timeout)
            .await
            .map(|_| ())
    }

    /// A connection counts as open only once the server's preface (a SETTINGS frame) came: one that ends or
    /// breaks the protocol before, or says nothing within the timeout, failed to connect.
    #[tokio::test]
    async fn a_connection_is_open_only_once_the_servers_settings_came() {
        let settings = |mut sock: TcpStream| async move {
            sock.write_all(&[0, 0, 0, SETTINGS, 0, 0, 0, 0, 0])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        };
        assert!(open_with(Duration::from_secs(5), settings).await.is_ok());
        // The SETTINGS frame in pieces.
        let split = |mut sock: TcpStream| async move {
            for b in [0, 0, 0, SETTINGS, 0, 0, 0, 0, 0] {
                sock.write_all(&[b]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        };
        assert!(open_with(Duration::from_secs(5), split).await.is_ok());
        let closes = |sock: TcpStream| async move { drop(sock) };
        let e = open_with(Duration::from_secs(5), closes).await.unwrap_err();
        assert!(
            matches!(
                e,
                ConnectionError::Handshake { .. } | ConnectionError::Preface { .. }
            ),
            "{e}"
        );
        let silent = |sock: TcpStream| async move {
            tokio::time::sleep(Duration::from_secs(5)).await;
            drop(sock);
        };
        let started = Instant::now();
        let e = open_with(Duration::from_millis(300), silent)
            .await
            .unwrap_err();
        assert!(matches!(e, ConnectionError::PrefaceTimeout { .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "HTTP/2 handshake with 127.0.0.1 timed out after 300ms: the connection is up but the server sent no \
             HTTP/2 SETTINGS"
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        // A PING before any SETTINGS breaks the protocol.
        let ping_first = |mut sock: TcpStream| async move {
            sock.write_all(&[0, 0, 8, 0x6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        };
        let e = open_with(Duration::from_secs(5), ping_first)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                ConnectionError::Handshake { .. } | ConnectionError::Preface { .. }
            ),
            "{e}"
        );
    }

    /// A server that answers the connection preface in HTTP/1 (an HTTP/1.1-only server) does not speak HTTP/2,
    /// and the error says so rather than what h2 makes of the answer read as frames (a frame of an impossible size).
    #[tokio::test]
    async fn a_server_answering_in_http1_does_not_speak_http2() {
        let http1 = |mut sock: TcpStream| async move {
            sock.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n")
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
        };
        let e = open_with(Duration::from_secs(5), http1).await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "127.0.0.1 does not speak HTTP/2: it answered the HTTP/2 connection preface in HTTP/1"
        );
    }

    /// The reader follows frame boundaries however the bytes arrive, skips payloads, and keeps the last GOAWAY's
    /// last stream id, error code and debug data (the debug data cut at its limit).
    #[test]
    fn the_servers_goaway_is_kept_whatever_the_reads() {
        fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
            let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
            let mut out = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 0];
            out.extend_from_slice(payload);
            out
        }
        fn goaway(last: u32, code: u32, debug: &[u8]) -> Vec<u8> {
            let mut payload = last.to_be_bytes().to_vec();
            payload.extend_from_slice(&code.to_be_bytes());
            payload.extend_from_slice(debug);
            frame(0x7, &payload)
        }
        let mut bytes = frame(SETTINGS, &[0, 3, 0, 0, 0, 100]);
        // A DATA frame whose payload looks like a GOAWAY header: skipped.
        bytes.extend(frame(0x0, &goaway(9, 9, b"not one")));
        bytes.extend(goaway(5, 0, br#"{"reason":"Shutdown"}"#));
        let long = vec![b'x'; 3 * MAX_GOAWAY_DEBUG];
        let mut with_long = bytes.clone();
        with_long.extend(frame(0x6, &[0; 8]));
        with_long.extend(goaway(7, 2, &long));
        for chunk in [1, 5, 9, 10, 4096] {
            let preface = Arc::new(Preface::default());
            let mut reader = FirstFrame::new((), preface.clone());
            for piece in bytes.chunks(chunk) {
                reader.scan(piece);
            }
            assert_eq!(
                preface.first_frame.load(Ordering::Acquire),
                PREFACE_SETTINGS
            );
            assert_eq!(
                preface.goaway(),
                Some(GoAwaySeen {
                    last_stream_id: 5,
                    error_code: 0,
                    debug: br#"{"reason":"Shutdown"}"#.to_vec(),
                }),
                "chunks of {chunk}"
            );
            let preface = Arc::new(Preface::default());
            let mut reader = FirstFrame::new((), preface.clone());
            for piece in with_long.chunks(chunk) {
                reader.scan(piece);
            }
            let last = preface.goaway().unwrap();
            assert_eq!((last.last_stream_id, last.error_code), (7, 2));
            assert_eq!(last.debug, long[..MAX_GOAWAY_DEBUG]);
        }
    }
}
