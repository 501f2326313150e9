//! HTTP error answers of the REST listener: one JSON shape, `{"error": "…"}`, whose text names the field or the
//! rule that failed, and the request-body reader that enforces `max_request_size` (413).

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

/// A request the listener answers with an error status and a JSON body `{"error": message}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// Add Momentum's `"status": "failure"` member (the `/v1.0/inject` answers).
    pub momentum: bool,
    /// Add `www-authenticate: Bearer` (401 answers).
    pub challenge: bool,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            momentum: false,
            challenge: false,
        }
    }

    /// 400: the request itself is wrong (bad JSON, a missing or misspelt field).
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// 503: herald cannot take the request now; the client should retry it later.
    pub fn unavailable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message)
    }

    /// The same error in the shape of a Momentum injector answer.
    pub fn momentum(mut self) -> Self {
        self.momentum = true;
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = String::with_capacity(self.message.len() + 32);
        body.push_str("{\"error\":");
        push_json_string(&mut body, &self.message);
        if self.momentum {
            body.push_str(",\"status\":\"failure\"");
        }
        body.push('}');
        let mut response = json_response(self.status, body);
        if self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"herald\""),
            );
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A response with a JSON body already serialized.
pub fn json_response(status: StatusCode, body: String) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Appends `s` as a JSON string literal.
pub fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                out.push_str("\\u00");
                out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
                out.push(char::from(b"0123456789abcdef"[usize::from(b & 0xf)]));
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// Reads the whole request body, refusing with 413 what exceeds `limit` bytes (`None`: no limit, as Momentum's
/// `max_request_size` when unset). A declared `content-length` over the limit is refused before reading.
pub async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: Option<u64>,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some((declared, limit)) = declared.zip(limit).filter(|&(d, l)| d > l) {
        return Err(too_large(&declared.to_string(), limit));
    }
    let max = limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX));
    // Without a limit, a declared size is no measure of what may be reserved.
    let expected = declared
        .filter(|_| limit.is_some())
        .and_then(|d| usize::try_from(d).ok());
    match collect(body, max, expected).await {
        Ok(bytes) => Ok(bytes),
        Err(Unread::TooLarge) => {
            let limit = limit.unwrap_or(u64::MAX);
            Err(too_large(&format!("more than {limit}"), limit))
        }
        Err(Unread::Body(e)) => Err(body_error(&e)),
    }
}

/// The 413 answer for a body of `size` bytes over the listener's `limit`.
fn too_large(size: &str, limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("request body is {size} bytes; this listener's max_request_size is {limit}"),
    )
}

/// Why [`collect`] returned no body.
#[derive(Debug)]
enum Unread {
    /// The body went past the limit.
    TooLarge,
    /// The body could not be read (the connection failed, or the body took longer than `body_timeout`).
    Body(axum::Error),
}

/// Reads `body` into one buffer, stopping with [`Unread::TooLarge`] as soon as it exceeds `max` bytes.
///
/// A body that arrives as one frame is returned as that frame. Otherwise each frame is copied into one growing
/// buffer and dropped: a frame of a chunked HTTP/1 body is a slice of the connection's read buffer, so keeping the
/// frames (as a list of them) would keep a per-frame record and a read buffer alive for every few bytes of a body
/// sent in tiny chunks, many times its size. The buffer is sized by `expected` (the declared `content-length`) when
/// that is within `max`; else it doubles as needed, never beyond `max`. With no `max`, `expected` must be `None`.
async fn collect(
    mut body: Body,
    max: Option<usize>,
    expected: Option<usize>,
) -> Result<Bytes, Unread> {
    let max = max.unwrap_or(usize::MAX);
    let mut first: Option<Bytes> = None;
    let mut joined: Vec<u8> = Vec::new();
    let mut len = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Unread::Body)?.into_data() else {
            continue; // trailers: not part of the body
        };
        if data.is_empty() {
            continue;
        }
        len = len.saturating_add(data.len());
        if len > max {
            return Err(Unread::TooLarge);
        }
        if joined.capacity() == 0 {
            let Some(earlier) = first.take() else {
                first = Some(data);
                continue;
            };
            // The declared size at once when it is possible; else (or when that much memory is not to be had)
            // what has arrived, grown as more does.
            let hint = expected.filter(|&e| e > len && e <= max);
            if hint.is_none_or(|e| joined.try_reserve_exact(e).is_err()) {
                joined.reserve_exact(len);
            }
            joined.extend_from_slice(&earlier);
        } else if joined.capacity() - joined.len() < data.len() {
            let doubled = joined.capacity().saturating_mul(2).min(max);
            joined.reserve_exact(doubled.max(len) - joined.len());
        }
        joined.extend_from_slice(&data);
    }
    Ok(match first {
        Some(only) => only,
        None => Bytes::from(joined),
    })
}

/// A body that could not be read: `408` when it took longer than the listener's `body_timeout`, else `400`.
fn body_error(e: &(dyn std::error::Error + 'static)) -> ApiError {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(timeout) = c.downcast_ref::<super::server::BodyTimeout>() {
            return ApiError::new(StatusCode::REQUEST_TIMEOUT, timeout.to_string());
        }
        cause = c.source();
    }
    ApiError::bad_request(format!("could not read the request body: {e}"))
}

/// `body` without the UTF-8 byte order mark it may start with, which JSON parsers may ignore (RFC 8259, section
/// 8.1) and some clients write.
pub fn without_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

/// The answer to a request body that is JSON but not an object (an array, a string, a number, `true`, `false`,
/// `null`): every JSON route takes an object.
pub const NOT_AN_OBJECT: &str = "invalid request: the body must be a JSON object";

/// Whether `body` (after any byte order mark) is well-formed JSON whose value is not an object: [`NOT_AN_OBJECT`]
/// is its answer, which the derived readers would not give (they read an array as the object's fields in order,
/// and `[]` as an object with none of them). A body that is not JSON at all is left to the route's parser, which
/// says where it fails.
pub fn json_but_not_an_object(body: &[u8]) -> bool {
    !matches!(body.trim_ascii_start().first(), None | Some(b'{'))
        && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok()
}

/// What is wrong with a JSON string that escapes half of a UTF-16 surrogate pair alone (`"\ud800"`): JSON's grammar
/// lets it be written, but it is no Unicode text, so no text field can take it.
pub const UNPAIRED_SURROGATE: &str = "holds an unpaired surrogate escape (one of \\ud800 to \\udfff without its pair), which is not valid Unicode";

/// Whether serde_json refused a string for an unpaired surrogate escape. serde_json tells it only by its text:
/// "lone leading surrogate in hex escape" (a trailing half alone, or a leading half followed by another escape) or
/// "unexpected end of hex escape" (a leading half not followed by an escape), which it gives for nothing else. Its
/// grammar checks (a whole body read as a raw value or skipped) let such a string pass: only reading it as text
/// refuses it.
pub fn is_unpaired_surrogate(e: &serde_json::Error) -> bool {
    let text = e.to_string();
    text.starts_with("lone leading surrogate in hex escape")
        || text.starts_with("unexpected end of hex escape")
}

/// The text of a JSON value that did not read because a string in it has an unpaired surrogate escape (`raw` is
/// the value as the request spells it): `the string holds …`, or `a string in the value holds …`.
pub fn unpaired_surrogate_in(raw: &str) -> String {
    if raw.starts_with('"') {
        format!("the string {UNPAIRED_SURROGATE}")
    } else {
        format!("a string in the value {UNPAIRED_SURROGATE}")
    }
}

/// The error text for a body that did not parse as `T`: `field.path: what was wrong`, or `invalid JSON: …`.
/// The body is parsed a second time with path tracking, so the common case pays nothing for it.
pub fn describe_json_error<'a, T: serde::Deserialize<'a>>(
    body: &'a [u8],
    first: serde_json::Error,
) -> String {
    if is_unpaired_surrogate(&first) {
        return describe_unpaired_surrogate::<T>(body, &first);
    }
    if first.is_syntax() || first.is_eof() {
        return format!("invalid JSON: {first}");
    }
    if !body.trim_ascii_start().starts_with(b"{") {
        return NOT_AN_OBJECT.into();
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(e) if e.path().iter().next().is_some() => format!("{}: {}", e.path(), e.inner()),
        _ => format!("invalid request: {first}"),
    }
}

/// The error text for a body refused for an unpaired surrogate escape (`first`, the error of the first parse): the
/// member whose value holds it (`notifications[2].topic: the string holds …`), or the object one of whose member
/// names holds it (`notifications[2]: a member name holds …`; the body's own: `a member name holds …`), with the
/// place in the body.
fn describe_unpaired_surrogate<'a, T: serde::Deserialize<'a>>(
    body: &'a [u8],
    first: &serde_json::Error,
) -> String {
    let position = format!("at line {} column {}", first.line(), first.column());
    let mut de = serde_json::Deserializer::from_slice(body);
    let path = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Err(e) => e.path().clone(),
        Ok(_) => return format!("invalid JSON: {first}"),
    };
    let segments: Vec<&serde_path_to_error::Segment> = path.iter().collect();
    match segments.split_last() {
        Some((serde_path_to_error::Segment::Unknown, parent)) => {
            let mut place = String::new();
            for segment in parent {
                if !place.is_empty() && !matches!(segment, serde_path_to_error::Segment::Seq { .. })
                {
                    place.push('.');
                }
                place.push_str(&segment.to_string());
            }
            if place.is_empty() {
                format!("a member name {UNPAIRED_SURROGATE} {position}")
            } else {
                format!("{place}: a member name {UNPAIRED_SURROGATE} {position}")
            }
        }
        Some(_) => format!("{path}: the string {UNPAIRED_SURROGATE} {position}"),
        None => format!("the string {UNPAIRED_SURROGATE} {position}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A string escaping half a surrogate pair alone is refused naming the member whose value holds it, or the
    /// object one of whose member names does, and saying why, whichever half it is and whatever follows it; a
    /// whole pair reads.
    #[test]
    fn an_unpaired_surrogate_is_named_where_it_stands() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct Item {
            #[serde(default)]
            topic: Option<String>,
        }
        #[derive(Debug, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Body {
            #[serde(default)]
            domain: Option<String>,
            #[serde(default)]
            items: Vec<Item>,
        }
        let describe = |body: &str| {
            let first = serde_json::from_str::<Body>(body).unwrap_err();
            assert!(is_unpaired_surrogate(&first), "{body}: {first}");
            describe_json_error::<Body>(body.as_bytes(), first)
        };
        for (body, wanted) in [
            (
                r#"{"domain":"\ud800"}"#,
                "domain: the string holds an unpaired surrogate escape",
            ),
            (r#"{"domain":"a\udfffb"}"#, "domain: the string holds"),
            (r#"{"domain":"\ud800\n"}"#, "domain: the string holds"),
            (r#"{"domain":"\ud800\u0041"}"#, "domain: the string holds"),
            (
                r#"{"items":[{},{"topic":"\udc00"}]}"#,
                "items[1].topic: the string holds",
            ),
            (
                r#"{"\ud800":1}"#,
                "a member name holds an unpaired surrogate escape",
            ),
            (
                r#"{"items":[{"\ud800":1}]}"#,
                "items[0]: a member name holds",
            ),
        ] {
            let text = describe(body);
            assert!(text.starts_with(wanted), "{body}: {text}");
            assert!(
                text.contains("which is not valid Unicode at line 1 column "),
                "{body}: {text}"
            );
        }
        assert!(serde_json::from_str::<Body>(r#"{"domain":"\ud800\udc00"}"#).is_ok());
        let other = serde_json::from_str::<Body>(r#"{"domain":"\u00zz"}"#).unwrap_err();
        assert!(!is_unpaired_surrogate(&other), "{other}");
        assert_eq!(
            unpaired_surrogate_in("\"x\""),
            format!("the string {UNPAIRED_SURROGATE}")
        );
        assert_eq!(
            unpaired_surrogate_in("[1]"),
            format!("a string in the value {UNPAIRED_SURROGATE}")
        );
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, r#""a\"b\\c\nd\u0001é""#);
        let back: String = serde_json::from_str(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }

    /// Any JSON value but an object is told apart; an object, and text that is not JSON, are left to the parser.
    #[test]
    fn json_values_other_than_objects_are_told_apart() {
        for body in [
            &b"[]"[..],
            b" [1, {}]\n",
            b"\"str\"",
            b"12",
            b"-1.5e3",
            b"true",
            b"false",
            b"null",
        ] {
            assert!(
                json_but_not_an_object(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        for body in [
            &b"{}"[..],
            b" {\"a\":1}",
            b"",
            b"  ",
            b"[",
            b"nul",
            b"{\"a\":",
        ] {
            assert!(
                !json_but_not_an_object(body),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[tokio::test]
    async fn bodies_over_the_limit_are_413() {
        let mut headers = HeaderMap::new();
        let err = read_body(&headers, Body::from(vec![b'x'; 11]), Some(10))
            .await
            .unwrap_err();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(
            err.message.contains("max_request_size is 10"),
            "{}",
            err.message
        );
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        let err = read_body(&headers, Body::from("x"), Some(10))
            .await
            .unwrap_err();
        assert!(err.message.contains("99 bytes"), "{}", err.message);
        let ok = read_body(&HeaderMap::new(), Body::from("0123456789"), Some(10))
            .await
            .unwrap();
        assert_eq!(&ok[..], b"0123456789");
    }

    /// A request body that yields `frames`, then waits (as a client holding its last chunk) until `open` is
    /// cleared, then ends.
    struct Dribble {
        frames: std::collections::VecDeque<Bytes>,
        open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    }

    impl hyper::body::Body for Dribble {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
            use std::task::Poll;
            match self.frames.pop_front() {
                Some(data) => Poll::Ready(Some(Ok(hyper::body::Frame::data(data)))),
                None if self.open.load(std::sync::atomic::Ordering::SeqCst) => Poll::Pending,
                None => Poll::Ready(None),
            }
        }
    }

    /// `data` cut into frames of `size` bytes, each a slice of `data` (as hyper hands out the chunks of a chunked
    /// body: slices of its read buffer).
    fn dribble(data: &Bytes, size: usize) -> (Body, std::sync::Arc<std::sync::atomic::AtomicBool>) {
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let frames = (0..data.len())
            .step_by(size)
            .map(|at| data.slice(at..data.len().min(at + size)))
            .collect();
        let body = Dribble {
            frames,
            open: open.clone(),
        };
        (Body::new(body), open)
    }

    /// A body of many one-byte frames arrives whole; while the last one is awaited, the frames already read are
    /// not kept (each would hold its share of the connection's read buffer): the buffer they were cut from is
    /// referenced by nothing else again.
    #[test]
    fn a_body_of_tiny_chunks_is_copied_into_one_buffer_as_it_arrives() {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        let text: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
        let read_buffer = Bytes::from(text.clone());
        for limit in [None, Some(5000)] {
            let (body, open) = dribble(&read_buffer, 1);
            let headers = HeaderMap::new();
            let mut reading = std::pin::pin!(read_body(&headers, body, limit));
            let mut cx = Context::from_waker(Waker::noop());
            assert!(reading.as_mut().poll(&mut cx).is_pending());
            assert!(
                read_buffer.is_unique(),
                "{limit:?}: the frames read so far are kept while the body is awaited"
            );
            open.store(false, std::sync::atomic::Ordering::SeqCst);
            let Poll::Ready(Ok(got)) = reading.as_mut().poll(&mut cx) else {
                panic!("{limit:?}: the body did not end with its last frame");
            };
            assert_eq!(&got[..], &text[..], "{limit:?}");
        }
    }

    /// A body of one frame is that frame, not a copy; a body declared by `content-length` is collected whole
    /// whatever its frames; a body without frames is empty.
    #[tokio::test]
    async fn frames_are_joined_whatever_their_sizes() {
        let data = Bytes::from_static(&[7u8; 3000]);
        let one = read_body(&HeaderMap::new(), Body::from(data.clone()), Some(3000))
            .await
            .unwrap();
        assert_eq!(one.as_ptr(), data.as_ptr(), "a single frame is copied");
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("3000"));
        for size in [1, 7, 1000, 2999, 3000] {
            for limit in [None, Some(3000), Some(u64::MAX)] {
                let (body, open) = dribble(&data, size);
                open.store(false, std::sync::atomic::Ordering::SeqCst);
                let got = read_body(&headers, body, limit).await.unwrap();
                assert_eq!(got, data, "frames of {size}, limit {limit:?}");
            }
        }
        let empty = read_body(&HeaderMap::new(), Body::empty(), Some(10))
            .await
            .unwrap();
        assert!(empty.is_empty());
    }

    /// A body of many frames over the limit is refused as soon as it passes it, with the same answer as one
    /// large frame: the size is not known, only that it is over.
    #[tokio::test]
    async fn a_chunked_body_over_the_limit_is_413_once_past_it() {
        let data = Bytes::from(vec![b'x'; 101]);
        for size in [1, 10, 100, 101] {
            let (body, _open) = dribble(&data, size);
            // The body never ends: the answer comes from the frames past the limit.
            let err = read_body(&HeaderMap::new(), body, Some(100))
                .await
                .unwrap_err();
            assert_eq!(
                err.status,
                StatusCode::PAYLOAD_TOO_LARGE,
                "frames of {size}"
            );
            assert_eq!(
                err.message,
                "request body is more than 100 bytes; this listener's max_request_size is 100",
                "frames of {size}"
            );
        }
    }
}
