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
use std::sync::atomic::{AtomicU8, Ordering};
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
    mut builder: Builder,
    host: &str,
    timeout: Duration,
) -> Result<(SendRequest<Bytes>, Connection<FirstFrame<S>, Bytes>), ConnectionError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let host = || host.to_owned();
    let preface = Arc::new(Preface::default());
    let opened = async {
        let (send, mut connection) = builder
            // Until the server's SETTINGS arrive assume the strictest limit: token connections start at 1 stream.
            .initial_max_send_streams(1)
            .handshake::<_, Bytes>(FirstFrame::new(io, preface.clone()))
            .await
            .map_err(|e| handshake_error(e, &preface, host()))?;
        poll_fn(|cx| {
            // Driving the connection reads what the server sent, the preface first.
            if let Poll::Ready(ended) = Pin::new(&mut connection).poll(cx) {
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
        Ok((send, connection))
    };
    tokio::time::timeout(timeout, opened)
        .await
        .map_err(|_| ConnectionError::Timeout {
            host: host(),
            secs: timeout.as_secs(),
        })?
}

/// [`FirstFrame`]: no frame header read yet.
const PREFACE_WAITING: u8 = 0;
/// [`FirstFrame`]: the server's first frame is a SETTINGS frame (not an acknowledgement): its preface.
const PREFACE_SETTINGS: u8 = 1;
/// [`FirstFrame`]: the server's first frame is something else, which breaks the protocol.
const PREFACE_OTHER: u8 = 2;

/// What [`FirstFrame`] saw of the server's preface.
#[derive(Debug, Default)]
struct Preface {
    /// One of the `PREFACE_*` values.
    first_frame: AtomicU8,
    /// A TLS failure reading before the preface came (h2 keeps only the text of an I/O error).
    tls_error: std::sync::Mutex<Option<rustls::Error>>,
}

/// The connection's transport, noting what the server's first frame header is, so that [`open`] knows when the
/// server's preface came, and a TLS failure before it. After the first nine bytes it only passes through.
pub(crate) struct FirstFrame<S> {
    io: S,
    head: [u8; 9],
    got: usize,
    preface: Arc<Preface>,
}

impl<S> FirstFrame<S> {
    fn new(io: S, preface: Arc<Preface>) -> Self {
        FirstFrame {
            io,
            head: [0; 9],
            got: 0,
            preface,
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
        if this.got < this.head.len()
            && let Poll::Ready(Err(e)) = &read
            && let Some(tls) = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            && let Ok(mut slot) = this.preface.tls_error.lock()
        {
            *slot = Some(tls.clone());
        }
        if this.got < this.head.len() {
            let new = &buf.filled()[before..];
            let take = new.len().min(this.head.len() - this.got);
            this.head[this.got..this.got + take].copy_from_slice(&new[..take]);
            this.got += take;
            if this.got == this.head.len() {
                const SETTINGS: u8 = 0x4;
                const ACK: u8 = 0x1;
                let settings = this.head[3] == SETTINGS && this.head[4] & ACK == 0;
                this.preface.first_frame.store(
                    if settings {
                        PREFACE_SETTINGS
                    } else {
                        PREFACE_OTHER
                    },
                    Ordering::Release,
                );
            }
        }
        read
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstFrame<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

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
        assert!(matches!(e, ConnectionError::Timeout { .. }), "{e}");
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
}
