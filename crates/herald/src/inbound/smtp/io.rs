//! The connection under an SMTP session: plain TCP or TLS after STARTTLS, a read buffer that yields lines with a
//! length limit, and an output buffer flushed when the client's pipelined commands are all read (RFC 2920) or when
//! it holds more than [`MAX_PENDING_OUTPUT`]; every flush is bounded by the listener's `timeout`.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

/// Plain TCP, or TLS once STARTTLS succeeded.
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Queued replies beyond which they are sent although pipelined input is still unread. Without it a client that
/// pipelines commands forever, always leaving a partial line unread, and never reads its replies would grow the
/// output buffer without limit; sending early is harmless, since the replies stay in command order.
pub const MAX_PENDING_OUTPUT: usize = 64 * 1024;

/// One read from [`LineIo::read_line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadLine {
    /// A whole line, with its line feed.
    Line(Bytes),
    /// A line longer than the limit; it was read and dropped up to its line feed. `crlf` says whether it ended
    /// with CRLF, which DATA needs: only a dot line after a CRLF ends the data.
    TooLong { crlf: bool },
    /// The client closed the connection (a partial last line is dropped).
    Eof,
}

/// Buffered, line-oriented reading and batched writing over a [`Conn`].
pub struct LineIo {
    conn: Option<Conn>,
    input: BytesMut,
    output: Vec<u8>,
    /// How long one flush may wait for the client to take the replies (the listener's `timeout`).
    write_timeout: Duration,
    /// Dropping the rest of an over-long line.
    discarding: bool,
    /// Whether the last byte dropped while discarding was a CR (the LF ending the line may come in a later read).
    dropped_cr: bool,
}

/// What STARTTLS could not do.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error("the connection is already TLS")]
    AlreadyTls,
    #[error("TLS handshake failed: {0}")]
    Handshake(io::Error),
}

impl LineIo {
    /// A connection whose flushes each give the client `write_timeout` to take the replies.
    pub fn new(stream: TcpStream, write_timeout: Duration) -> LineIo {
        LineIo {
            conn: Some(Conn::Plain(stream)),
            input: BytesMut::with_capacity(8192),
            output: Vec::with_capacity(1024),
            write_timeout,
            discarding: false,
            dropped_cr: false,
        }
    }

    /// How long a write waits for the client to take the replies from now on.
    pub fn set_write_timeout(&mut self, write_timeout: Duration) {
        self.write_timeout = write_timeout;
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.conn, Some(Conn::Tls(_)))
    }

    /// Whether the queued replies should be sent now: once every command the client pipelined is answered
    /// (RFC 2920), or as soon as more than [`MAX_PENDING_OUTPUT`] bytes wait, however much input is buffered.
    pub fn flush_due(&self) -> bool {
        self.input.is_empty() || self.output.len() > MAX_PENDING_OUTPUT
    }

    /// Drops unread input (bytes pipelined after STARTTLS must not be taken as sent over TLS, RFC 3207 §4.2).
    pub fn discard_buffered_input(&mut self) -> usize {
        let n = self.input.len();
        self.input.clear();
        n
    }

    /// The next line of at most `limit` bytes including its line feed. Cancel-safe: bytes read so far stay
    /// buffered.
    pub async fn read_line(&mut self, limit: usize) -> io::Result<ReadLine> {
        loop {
            if let Some(i) = memchr(b'\n', &self.input) {
                if self.discarding || i + 1 > limit {
                    let crlf = match i.checked_sub(1) {
                        Some(cr) => self.input[cr] == b'\r',
                        None => self.discarding && self.dropped_cr,
                    };
                    let _ = self.input.split_to(i + 1);
                    self.discarding = false;
                    return Ok(ReadLine::TooLong { crlf });
                }
                return Ok(ReadLine::Line(self.input.split_to(i + 1).freeze()));
            }
            if self.discarding || self.input.len() >= limit {
                self.discarding = true;
                if let Some(&last) = self.input.last() {
                    self.dropped_cr = last == b'\r';
                }
                self.input.clear();
            }
            let conn = self.conn.as_mut().ok_or_else(closed)?;
            self.input.reserve(8192);
            if conn.read_buf(&mut self.input).await? == 0 {
                return Ok(ReadLine::Eof);
            }
        }
    }

    /// Queues bytes to send at the next [`flush`](Self::flush).
    pub fn queue(&mut self) -> &mut Vec<u8> {
        &mut self.output
    }

    /// Sends what is queued. Fails with `TimedOut` when the client has not taken it within the write timeout, so
    /// a client that never reads cannot hold its session (the connection is then unusable: close it).
    pub async fn flush(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let conn = self.conn.as_mut().ok_or_else(closed)?;
        let output = &self.output;
        let write = async {
            conn.write_all(output).await?;
            conn.flush().await
        };
        tokio::time::timeout(self.write_timeout, write)
            .await
            .map_err(|_| not_reading(self.write_timeout))??;
        self.output.clear();
        Ok(())
    }

    /// Runs the server side of a TLS handshake on the TCP connection.
    pub async fn upgrade(&mut self, config: Arc<rustls::ServerConfig>) -> Result<(), UpgradeError> {
        let tcp = match self.conn.take() {
            Some(Conn::Plain(tcp)) => tcp,
            other => {
                self.conn = other;
                return Err(UpgradeError::AlreadyTls);
            }
        };
        let tls = tokio_rustls::TlsAcceptor::from(config)
            .accept(tcp)
            .await
            .map_err(UpgradeError::Handshake)?;
        self.conn = Some(Conn::Tls(Box::new(tls)));
        Ok(())
    }

    /// Flushes what is queued and closes the write side, each within the write timeout (a TLS close is a write
    /// too). The error is the flush's: whether the last replies reached the client.
    pub async fn close(&mut self) -> io::Result<()> {
        self.flush().await?;
        if let Some(conn) = self.conn.as_mut() {
            let _ = tokio::time::timeout(self.write_timeout, conn.shutdown()).await;
        }
        Ok(())
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection is closed")
}

fn not_reading(waited: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("the client did not read its replies for {waited:?}"),
    )
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

    async fn pair() -> (LineIo, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (LineIo::new(server, WRITE_TIMEOUT), client)
    }

    #[tokio::test]
    async fn lines_and_the_length_limit() {
        let (mut io, mut client) = pair().await;
        let long = "x".repeat(30);
        client
            .write_all(format!("ab\r\n{long}\r\ncd\r\npartial").as_bytes())
            .await
            .unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(
            io.read_line(10).await.unwrap(),
            ReadLine::Line(Bytes::from("ab\r\n"))
        );
        assert_eq!(
            io.read_line(10).await.unwrap(),
            ReadLine::TooLong { crlf: true }
        );
        assert_eq!(
            io.read_line(10).await.unwrap(),
            ReadLine::Line(Bytes::from("cd\r\n"))
        );
        assert_eq!(io.read_line(10).await.unwrap(), ReadLine::Eof);
    }

    #[tokio::test]
    async fn a_line_at_the_limit_passes() {
        let (mut io, mut client) = pair().await;
        client
            .write_all(b"12345678\r\n123456789\r\n")
            .await
            .unwrap();
        assert_eq!(
            io.read_line(10).await.unwrap(),
            ReadLine::Line(Bytes::from("12345678\r\n"))
        );
        assert_eq!(
            io.read_line(10).await.unwrap(),
            ReadLine::TooLong { crlf: true }
        );
    }

    // DATA ends only on a dot line after CRLF, so a dropped line must still say how it ended: within one read, and
    // when the CR and the LF come in different reads while the line is being discarded.
    #[tokio::test]
    async fn too_long_lines_say_whether_they_ended_with_crlf() {
        let (mut io, mut client) = pair().await;
        let long = "x".repeat(30);
        client
            .write_all(format!("{long}\n{long}\r\n").as_bytes())
            .await
            .unwrap();
        assert_eq!(
            io.read_line(10).await.unwrap(),
            ReadLine::TooLong { crlf: false }
        );
        assert_eq!(
            io.read_line(10).await.unwrap(),
            ReadLine::TooLong { crlf: true }
        );
        for (first, second, crlf) in [("\r", "\n", true), ("", "\n", false), ("\r", "y\n", false)] {
            client
                .write_all(format!("{long}{first}").as_bytes())
                .await
                .unwrap();
            // The first part is read and dropped before the rest is sent.
            let (read, written) = tokio::join!(io.read_line(10), async {
                tokio::task::yield_now().await;
                client.write_all(second.as_bytes()).await
            });
            written.unwrap();
            assert_eq!(
                read.unwrap(),
                ReadLine::TooLong { crlf },
                "{first:?} then {second:?}"
            );
        }
    }

    // A client that keeps a partial line unread still gets its replies once they pass the bound.
    #[tokio::test]
    async fn replies_are_due_past_the_bound_even_with_input_buffered() {
        let (mut io, mut client) = pair().await;
        client.write_all(b"NOOP\r\nNO").await.unwrap();
        assert_eq!(
            io.read_line(10).await.unwrap(),
            ReadLine::Line(Bytes::from("NOOP\r\n"))
        );
        assert!(!io.flush_due(), "pipelined input is left to answer");
        io.queue().resize(MAX_PENDING_OUTPUT, b'x');
        assert!(!io.flush_due());
        io.queue().push(b'x');
        assert!(io.flush_due(), "past the bound");
        io.flush().await.unwrap();
        let mut got = vec![0; MAX_PENDING_OUTPUT + 1];
        client.read_exact(&mut got).await.unwrap();
        assert!(!io.flush_due(), "nothing left to send");
    }

    // A client that never reads makes a flush fail once the write timeout passes, instead of holding it forever.
    #[tokio::test]
    async fn a_flush_to_a_client_that_does_not_read_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // A small receive window (no autotuning): a few MB fill both ends' buffers.
        socket.set_recv_buffer_size(4096).unwrap();
        let _client = socket.connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let mut io = LineIo::new(server, Duration::from_millis(200));
        io.queue().resize(16 << 20, b'x');
        let err = tokio::time::timeout(WRITE_TIMEOUT, io.flush())
            .await
            .expect("the flush was not bounded")
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
    }
}
