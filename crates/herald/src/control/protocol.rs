//! The control socket's wire format, shared by the listener and `herald console`.
//!
//! A request is one command line in UTF-8 ending in `\n` (at most [`MAX_REQUEST`] bytes). The answer is a status
//! line, `OK LEN\n` or `ERR LEN\n`, followed by exactly `LEN` bytes of output text. `ERR` means the command
//! failed (the console exits non-zero in batch mode). One connection carries any number of request/answer pairs;
//! the server closes it after `quit`, on `shutdown`, or when it stays idle for the listener's `timeout`.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The longest request line accepted.
pub const MAX_REQUEST: usize = 64 * 1024;
/// The longest answer a client accepts.
pub const MAX_REPLY: usize = 256 * 1024 * 1024;

/// One answer: whether the command succeeded, and its output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub ok: bool,
    pub text: String,
}

impl Reply {
    pub fn ok(text: impl Into<String>) -> Reply {
        Reply {
            ok: true,
            text: text.into(),
        }
    }

    pub fn err(text: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            text: text.into(),
        }
    }
}

/// What went wrong on the wire.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("control connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("request longer than {MAX_REQUEST} bytes")]
    RequestTooLong,
    #[error("request is not UTF-8")]
    NotUtf8,
    #[error("malformed status line from the server: {0:?}")]
    BadStatus(String),
    #[error(
        "the server answered with a TLS record instead of a status line: this control listener speaks TLS; use \
         --tls (or --ca FILE)"
    )]
    TlsAnswer,
    #[error("answer of {0} bytes is larger than {MAX_REPLY}")]
    ReplyTooLong(usize),
    #[error("the server closed the connection")]
    Closed,
}

/// Reads one request line; `Ok(None)` at end of stream. The line is returned without its line ending.
pub async fn read_request<R: AsyncBufRead + Unpin>(
    r: &mut R,
) -> Result<Option<String>, ProtocolError> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_REQUEST as u64 + 1)
        .read_until(b'\n', &mut buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') && buf.len() > MAX_REQUEST {
        return Err(ProtocolError::RequestTooLong);
    }
    while matches!(buf.last(), Some(b'\n' | b'\r')) {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| ProtocolError::NotUtf8)
}

/// Writes one request line (a line break inside `command` is replaced by a space).
pub async fn write_request<W: AsyncWrite + Unpin>(
    w: &mut W,
    command: &str,
) -> Result<(), ProtocolError> {
    let line = command.replace(['\r', '\n'], " ");
    w.write_all(line.as_bytes()).await?;
    w.write_all(b"\n").await?;
    w.flush().await?;
    Ok(())
}

/// Writes one answer.
pub async fn write_reply<W: AsyncWrite + Unpin>(
    w: &mut W,
    reply: &Reply,
) -> Result<(), ProtocolError> {
    let status = if reply.ok { "OK" } else { "ERR" };
    let mut out = format!("{status} {}\n", reply.text.len()).into_bytes();
    out.extend_from_slice(reply.text.as_bytes());
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one answer.
pub async fn read_reply<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Reply, ProtocolError> {
    let mut status = Vec::new();
    let n = (&mut *r).take(64).read_until(b'\n', &mut status).await?;
    if n == 0 {
        return Err(ProtocolError::Closed);
    }
    if is_tls_record(&status) {
        return Err(ProtocolError::TlsAnswer);
    }
    let status = String::from_utf8_lossy(&status);
    let line = status.trim_end();
    let (ok, len) = match line.split_once(' ') {
        Some(("OK", len)) => (true, len),
        Some(("ERR", len)) => (false, len),
        _ => return Err(ProtocolError::BadStatus(line.to_string())),
    };
    let len: usize = len
        .parse()
        .map_err(|_| ProtocolError::BadStatus(line.to_string()))?;
    if len > MAX_REPLY {
        return Err(ProtocolError::ReplyTooLong(len));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).await?;
    Ok(Reply {
        ok,
        text: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Whether `bytes` open like a TLS record of the kind a TLS server sends to a client that does not speak TLS: an
/// alert (content type 21) or a handshake (22), with a TLS major version of 3.
fn is_tls_record(bytes: &[u8]) -> bool {
    matches!(bytes, [0x15 | 0x16, 0x03, ..])
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[tokio::test]
    async fn replies_round_trip_with_their_status_and_exact_text() {
        let mut wire = Vec::new();
        write_reply(&mut wire, &Reply::ok("two\nlines\n"))
            .await
            .unwrap();
        write_reply(&mut wire, &Reply::err("")).await.unwrap();
        assert!(wire.starts_with(b"OK 10\ntwo\nlines\nERR 0\n"));
        let mut r = BufReader::new(&wire[..]);
        assert_eq!(read_reply(&mut r).await.unwrap(), Reply::ok("two\nlines\n"));
        assert_eq!(read_reply(&mut r).await.unwrap(), Reply::err(""));
        assert!(matches!(
            read_reply(&mut r).await,
            Err(ProtocolError::Closed)
        ));
    }

    #[tokio::test]
    async fn requests_are_lines_and_overlong_ones_are_refused() {
        let mut wire = Vec::new();
        write_request(&mut wire, "config eval\nmax_retries")
            .await
            .unwrap();
        wire.extend_from_slice(b"pid\r\n");
        let mut r = BufReader::new(&wire[..]);
        assert_eq!(
            read_request(&mut r).await.unwrap().as_deref(),
            Some("config eval max_retries")
        );
        assert_eq!(read_request(&mut r).await.unwrap().as_deref(), Some("pid"));
        assert_eq!(read_request(&mut r).await.unwrap(), None);

        let long = vec![b'x'; MAX_REQUEST + 10];
        let mut r = BufReader::new(&long[..]);
        assert!(matches!(
            read_request(&mut r).await,
            Err(ProtocolError::RequestTooLong)
        ));
    }

    /// A TLS listener answers a plain-text request with a TLS alert record (RFC 8446 §5.1 record layout: content
    /// type, then version 3.x); the error says the listener speaks TLS and which flag to use.
    #[tokio::test]
    async fn a_tls_answer_says_to_use_tls() {
        for wire in [
            &b"\x15\x03\x03\x00\x02\x02\x32"[..],
            &b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03\xff\xfe"[..],
        ] {
            let mut r = BufReader::new(wire);
            let err = read_reply(&mut r).await.unwrap_err();
            assert!(matches!(err, ProtocolError::TlsAnswer), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains("speaks TLS") && text.contains("--tls"),
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn a_garbled_status_line_is_an_error() {
        let mut r = BufReader::new(&b"HELLO\n"[..]);
        assert!(matches!(
            read_reply(&mut r).await,
            Err(ProtocolError::BadStatus(_))
        ));
    }
}
