//! How much of what a connection wrote the peer's TCP stack has acknowledged: what makes the binary protocol's
//! silence mean something (docs/apns-protocol.md#binary-error-packet).
//!
//! [`Counted`] sits between TLS and the TCP socket and counts every byte the socket takes, TLS records included;
//! the system says how many of them still wait in the send queue, unsent or unacknowledged (Linux `SIOCOUTQ`).
//! Written minus queued is what the peer acknowledged, a count that only grows, so a notification is acknowledged
//! once that count reaches the end of the write that carried it.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A stream that counts the bytes written to it.
pub(crate) struct Counted<S> {
    inner: S,
    written: Arc<AtomicU64>,
}

/// Reads the peer's acknowledgements of a [`Counted`] TCP stream. It holds its own descriptor of the socket, so
/// asking never touches one the connection has closed and reused.
pub(crate) struct Acknowledged {
    socket: socket2::Socket,
    written: Arc<AtomicU64>,
}

/// Wraps `tcp` to count what is written to it; the reader is `None` where the socket cannot be duplicated.
pub(crate) fn counted(tcp: TcpStream) -> (Counted<TcpStream>, Option<Acknowledged>) {
    let written = Arc::new(AtomicU64::new(0));
    let socket = socket2::SockRef::from(&tcp).try_clone().ok();
    let reader = socket.map(|socket| Acknowledged {
        socket,
        written: written.clone(),
    });
    (
        Counted {
            inner: tcp,
            written,
        },
        reader,
    )
}

impl Acknowledged {
    /// Bytes written to the socket so far.
    pub(crate) fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    /// Makes the connection end with a reset when it closes (`SO_LINGER` 0): what still waits in the send queue is
    /// discarded rather than sent after the connection has handed its notifications back to be sent again.
    pub(crate) fn abort(&self) {
        if let Err(e) = self.socket.set_linger(Some(std::time::Duration::ZERO)) {
            tracing::debug!(error = %e, "SO_LINGER not set");
        }
    }

    /// Bytes the peer has acknowledged so far; `None` where the system cannot tell. The count is read before the
    /// queue, so a write landing in between can only make the answer smaller, never claim too much.
    pub(crate) fn acknowledged(&self) -> Option<u64> {
        let written = self.written();
        let queued = outgoing_queue(&self.socket)?;
        Some(written.saturating_sub(queued))
    }
}

/// Bytes in the socket's send queue, unsent or sent and unacknowledged (Linux `SIOCOUTQ`).
#[cfg(target_os = "linux")]
fn outgoing_queue(sock: &socket2::Socket) -> Option<u64> {
    use std::os::fd::AsRawFd;
    let mut queued: libc::c_int = 0;
    // SAFETY: the descriptor is owned by `sock` and open for the duration of the call; TIOCOUTQ (SIOCOUTQ on a
    // TCP socket) writes one int through the pointer, which points at a live c_int.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
    (rc == 0).then(|| u64::try_from(queued).unwrap_or(0))
}

#[cfg(not(target_os = "linux"))]
fn outgoing_queue(_sock: &socket2::Socket) -> Option<u64> {
    None
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.count(&polled);
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.count(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<S> Counted<S> {
    fn count(&self, polled: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = polled {
            self.written.fetch_add(*n as u64, Ordering::Release);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// What the peer has read is acknowledged; what waits behind its full receive window is not, and the count
    /// catches up once it reads.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn acknowledged_counts_what_the_peer_took() {
        let (client, mut server) = tight_pair().await;
        let (mut counted, acked) = counted(client);
        let acked = acked.unwrap();

        counted.write_all(&[7u8; 100]).await.unwrap();
        let mut got = [0u8; 100];
        server.read_exact(&mut got).await.unwrap();
        wait_until(|| acked.acknowledged() == Some(100)).await;

        let more = 200_000;
        counted.write_all(&vec![1u8; more]).await.unwrap();
        assert_eq!(acked.written(), 100 + more as u64);
        assert!(
            acked.acknowledged().unwrap() < acked.written(),
            "the peer's window is full"
        );

        let mut rest = vec![0u8; more];
        server.read_exact(&mut rest).await.unwrap();
        wait_until(|| acked.acknowledged() == Some(acked.written())).await;
    }

    /// A loopback TCP connection whose server side has a tiny receive buffer and does not read, while the
    /// client's send buffer takes a megabyte: what the client writes beyond a few KiB stays unacknowledged.
    pub(crate) async fn tight_pair() -> (TcpStream, TcpStream) {
        let listener = tokio::net::TcpSocket::new_v4().unwrap();
        listener.set_recv_buffer_size(4096).unwrap();
        listener.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = listener.listen(1).unwrap();
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        client.set_send_buffer_size(1 << 20).unwrap();
        let client = client
            .connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    async fn wait_until(mut done: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        while !done() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition never held"
            );
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}
