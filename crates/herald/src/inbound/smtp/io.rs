//! The connection under an SMTP session: plain TCP or TLS after STARTTLS, a read buffer that yields lines with a
//! length limit, and an output buffer flushed when the client's pipelined commands are all read (RFC 2920).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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

/// One read from [`LineIo::read_line`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadLine {
    /// A whole line, with its line feed.
    Line(Bytes),
    /// A line longer than the limit; it was read and dropped up to its line feed.
    TooLong,
    /// The client closed the connection (a partial last line is dropped).
    Eof,
}

/// Buffered, line-oriented reading and batched writing over a [`Conn`].
pub struct LineIo {
    conn: Option<Conn>,
    input: BytesMut,
    output: Vec<u8>,
    /// Dropping the rest of an over-long line.
    discarding: bool,
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
    pub fn new(stream: TcpStream) -> LineIo {
        LineIo {
            conn: Some(Conn::Plain(stream)),
            input: BytesMut::with_capacity(8192),
            output: Vec::with_capacity(1024),
            discarding: false,
        }
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.conn, Some(Conn::Tls(_)))
    }

    /// Whether the client sent bytes that are not yet read (pipelined commands).
    pub fn has_buffered_input(&self) -> bool {
        !self.input.is_empty()
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
                if self.discarding {
                    let _ = self.input.split_to(i + 1);
                    self.discarding = false;
                    return Ok(ReadLine::TooLong);
                }
                if i + 1 > limit {
                    let _ = self.input.split_to(i + 1);
                    return Ok(ReadLine::TooLong);
                }
                return Ok(ReadLine::Line(self.input.split_to(i + 1).freeze()));
            }
            if self.discarding || self.input.len() >= limit {
                self.discarding = true;
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

    pub async fn flush(&mut self) -> io::Result<()> {
        if self.output.is_empty() {
            return Ok(());
        }
        let conn = self.conn.as_mut().ok_or_else(closed)?;
        conn.write_all(&self.output).await?;
        conn.flush().await?;
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

    /// Flushes what is queued and closes the write side.
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        if let Some(conn) = self.conn.as_mut() {
            let _ = conn.shutdown().await;
        }
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "the connection is closed")
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (LineIo, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        (LineIo::new(server), client)
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
        assert_eq!(io.read_line(10).await.unwrap(), ReadLine::TooLong);
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
        assert_eq!(io.read_line(10).await.unwrap(), ReadLine::TooLong);
    }
}
