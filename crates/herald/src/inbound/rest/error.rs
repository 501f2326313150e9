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
    let too_large = |size: String, limit: u64| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body is {size} bytes; this listener's max_request_size is {limit}"),
        )
    };
    if let Some(limit) = limit {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(declared) = declared.filter(|&d| d > limit) {
            return Err(too_large(declared.to_string(), limit));
        }
        let max = usize::try_from(limit).unwrap_or(usize::MAX);
        return match http_body_util::Limited::new(body, max).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(too_large(format!("more than {limit}"), limit))
            }
            Err(e) => Err(body_error(&*e)),
        };
    }
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| body_error(&e))
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

/// The error text for a body that did not parse as `T`: `field.path: what was wrong`, or `invalid JSON: …`.
/// The body is parsed a second time with path tracking, so the common case pays nothing for it.
pub fn describe_json_error<'a, T: serde::Deserialize<'a>>(
    body: &'a [u8],
    first: serde_json::Error,
) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
