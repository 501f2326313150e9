//! Every error answer of the REST listener carries the JSON body docs/api.md promises, `{"error": "…"}`, also
//! those herald's handlers do not write themselves:
//!
//! - [`json_errors`], a layer over the whole application, gives a JSON body to any error response that lacks one
//!   (a rejection of the HTTP framework, say), keeping its text as the message;
//! - [`JsonErrorIo`], under the HTTP/1 connection, completes the answers hyper writes on its own when a request
//!   cannot be parsed (`400` for a malformed request line, header or URI, `431` for headers too large, `414` for
//!   a URI too long): hyper sends them with an empty body, and this adds the JSON one.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::Response;
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::error::push_json_string;

/// The most of a non-JSON error body kept as the message.
const MAX_MESSAGE: usize = 1024;

/// Gives an error response without a JSON body one: `{"error": TEXT}` with the body's text, or the status's
/// reason when the body is empty.
pub async fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match http_body_util::Limited::new(body, 64 * 1024)
        .collect()
        .await
    {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
        Err(_) => String::new(),
    };
    let message = message_for(status, &text);
    let body = json_body(&message);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(body))
}

/// The message for an error answer: its own text (trimmed, shortened), else what the status means.
fn message_for(status: StatusCode, text: &str) -> String {
    let text = text.trim();
    if text.is_empty() {
        return describe(status);
    }
    let mut end = text.len().min(MAX_MESSAGE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// What herald says for a status it has no text of its own for.
fn describe(status: StatusCode) -> String {
    match status.as_u16() {
        400 => "bad request: the request is not valid HTTP (malformed request line, header or URI)"
            .into(),
        414 => "the request URI is too long".into(),
        431 => "the request headers are too large".into(),
        _ => status
            .canonical_reason()
            .map_or_else(|| format!("HTTP {}", status.as_u16()), str::to_lowercase),
    }
}

fn json_body(message: &str) -> String {
    let mut body = String::with_capacity(message.len() + 12);
    body.push_str("{\"error\":");
    push_json_string(&mut body, message);
    body.push('}');
    body
}

/// If `head` is a whole HTTP/1.1 error response head with `content-length: 0` (what hyper writes for a request
/// it cannot parse), the same head with a JSON body.
fn complete_error_head(head: &[u8]) -> Option<Vec<u8>> {
    if !(head.starts_with(b"HTTP/1.1 4") || head.starts_with(b"HTTP/1.1 5"))
        || !head.ends_with(b"\r\n\r\n")
    {
        return None;
    }
    let text = std::str::from_utf8(head).ok()?;
    let head_end = text.find("\r\n\r\n")?;
    if head_end + 4 != text.len() {
        return None;
    }
    let status: u16 = text.get(9..12)?.parse().ok()?;
    let status = StatusCode::from_u16(status).ok()?;
    let lower = text.to_ascii_lowercase();
    let at = lower.find("\r\ncontent-length: 0\r\n")?;
    let body = json_body(&describe(status));
    let mut out = Vec::with_capacity(head.len() + body.len() + 40);
    out.extend_from_slice(&head[..at]);
    out.extend_from_slice(
        format!(
            "\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            body.len()
        )
        .as_bytes(),
    );
    out.extend_from_slice(&head[at + "\r\ncontent-length: 0\r\n".len()..]);
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

/// A connection's stream that completes hyper's own error answers with a JSON body (see the module).
pub struct JsonErrorIo<S> {
    inner: S,
    /// Bytes taken from a write but not yet passed on.
    pending: Vec<u8>,
    sent: usize,
}

impl<S> JsonErrorIo<S> {
    pub fn new(inner: S) -> Self {
        JsonErrorIo {
            inner,
            pending: Vec::new(),
            sent: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> JsonErrorIo<S> {
    /// Passes on what is pending; ready when nothing is.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.pending.len() {
            let n = std::task::ready!(
                Pin::new(&mut self.inner).poll_write(cx, &self.pending[self.sent..])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.pending.clear();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for JsonErrorIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for JsonErrorIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        std::task::ready!(self.poll_pending(cx))?;
        if let Some(completed) = complete_error_head(buf) {
            self.pending = completed;
            self.sent = 0;
            // The caller's bytes are taken; they go out with the body on this or a later poll.
            let _ = self.poll_pending(cx)?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|b| !b.is_empty());
        if first.is_some_and(|b| b.starts_with(b"HTTP/1.1 4") || b.starts_with(b"HTTP/1.1 5")) {
            let joined: Vec<u8> = bufs.iter().flat_map(|b| b.iter().copied()).collect();
            if complete_error_head(&joined).is_some() {
                return self.poll_write(cx, &joined);
            }
        }
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_pending(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hypers_empty_error_heads_get_a_json_body() {
        let head = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\ndate: x\r\n\r\n";
        let out = String::from_utf8(complete_error_head(head).unwrap()).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("content-type: application/json"), "{out}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{out}"
        );
        assert!(head.ends_with("date: x"), "{out}");
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(json["error"].as_str().unwrap().contains("not valid HTTP"));
        // Anything else passes untouched.
        assert!(complete_error_head(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").is_none());
        assert!(
            complete_error_head(b"HTTP/1.1 404 Not Found\r\ncontent-length: 12\r\n\r\n").is_none()
        );
        assert!(
            complete_error_head(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n").is_none()
        );
    }

    #[tokio::test]
    async fn plain_error_responses_become_json() {
        let plain = Response::builder()
            .status(StatusCode::UNSUPPORTED_MEDIA_TYPE)
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(
                "Expected request with `Content-Type: application/json`",
            ))
            .unwrap();
        let out = json_errors(plain).await;
        assert_eq!(out.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(out.headers()[header::CONTENT_TYPE], "application/json");
        let body = out.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            json["error"],
            "Expected request with `Content-Type: application/json`"
        );
        let empty = Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(Body::empty())
            .unwrap();
        let body = json_errors(empty)
            .await
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(json["error"].as_str().unwrap().starts_with("bad request"));
    }
}
