//! Finds the push parts of an injected message (momentum.md §1.8, §2.2): the `message/vnd.msys.apn` parts of a
//! `multipart/vnd.msys.mcmt` message (any `multipart/*` nesting), or the whole message when its own type is
//! `message/vnd.msys.apn`. A push part's body may start with its own header block (`X-Device-Token`,
//! `Return-Path`, `Content-Transfer-Encoding`), then a blank line, then the JSON payload, which is decoded per
//! `Content-Transfer-Encoding` (`7bit`, `8bit`, `binary` or `base64`) and stripped of surrounding whitespace.

use base64::Engine as _;

/// The push content type.
const APN_TYPE: &str = "message/vnd.msys.apn";

/// One push part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushPart {
    /// `X-Device-Token`, when the part (or, for a bare push message, the message) has one.
    pub token: Option<String>,
    /// `Return-Path`, when given.
    pub return_path: Option<String>,
    pub payload: Vec<u8>,
}

/// Why a message yielded no push notification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MimeError {
    #[error(
        "the message has no {APN_TYPE} part (its type is {0}); herald delivers push notifications only"
    )]
    NoPushPart(String),
    #[error("{content_type} has no boundary parameter")]
    NoBoundary { content_type: String },
    #[error("the multipart body has no closing --{0}-- line")]
    Unterminated(String),
    #[error("push part {part}: the payload is not valid base64: {detail}")]
    Base64 { part: usize, detail: String },
    #[error(
        "push part {part}: Content-Transfer-Encoding {encoding:?} is not supported (use 7bit or base64)"
    )]
    Encoding { part: usize, encoding: String },
    #[error("push part {part}: the payload is empty")]
    Empty { part: usize },
}

/// Header fields of one entity, unfolded, in order.
#[derive(Debug, Default)]
struct Headers<'a>(Vec<(&'a str, String)>);

impl Headers<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The media type, lowercase, without parameters; `text/plain` when absent (RFC 2045).
    fn media_type(&self) -> String {
        self.get("content-type")
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_else(|| "text/plain".into())
    }
}

/// Splits an entity into its header fields and body at the first empty line.
fn split_entity(text: &str) -> (Headers<'_>, &str) {
    let mut headers = Headers::default();
    let mut pos = 0;
    while pos < text.len() {
        let line_end = text[pos..].find('\n').map_or(text.len(), |i| pos + i);
        let next = (line_end + 1).min(text.len());
        let line = text[pos..line_end].trim_end_matches('\r');
        if line.is_empty() {
            return (headers, &text[next..]);
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.0.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((name, value)) = line.split_once(':') {
            headers.0.push((name.trim(), value.trim().to_owned()));
        } else {
            // Not a header line: the entity has no header block.
            return (Headers::default(), text);
        }
        pos = next;
    }
    (headers, "")
}

/// The value of parameter `name` in a structured header value (`multipart/x; boundary="b"`).
fn parameter<'v>(value: &'v str, name: &str) -> Option<&'v str> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().trim_matches('"'))
    })
}

/// The bodies of a multipart entity.
fn split_multipart<'a>(body: &'a str, boundary: &str) -> Result<Vec<&'a str>, MimeError> {
    let mut parts = Vec::new();
    let mut current: Option<usize> = None;
    let mut pos = 0;
    while pos < body.len() {
        let line_end = body[pos..].find('\n').map_or(body.len(), |i| pos + i);
        let line = body[pos..line_end].trim_end_matches('\r');
        if let Some(rest) = line
            .strip_prefix("--")
            .and_then(|l| l.strip_prefix(boundary))
        {
            let rest = rest.trim_end();
            if rest.is_empty() || rest == "--" {
                if let Some(start) = current.take() {
                    // The line break before the delimiter belongs to the delimiter (RFC 2046 §5.1.1).
                    let end = if pos > start { pos - 1 } else { pos };
                    let end = if end > start && body.as_bytes()[end - 1] == b'\r' {
                        end - 1
                    } else {
                        end
                    };
                    parts.push(&body[start..end.max(start)]);
                }
                if rest == "--" {
                    return Ok(parts);
                }
                current = Some((line_end + 1).min(body.len()));
            }
        }
        pos = line_end + 1;
    }
    Err(MimeError::Unterminated(boundary.to_owned()))
}

/// Every push part of `message`, in order.
pub fn push_parts(message: &str) -> Result<Vec<PushPart>, MimeError> {
    let (headers, body) = split_entity(message);
    let mut out = Vec::new();
    collect(&headers, body, &Headers::default(), &mut out)?;
    if out.is_empty() {
        return Err(MimeError::NoPushPart(headers.media_type()));
    }
    Ok(out)
}

fn collect(
    headers: &Headers<'_>,
    body: &str,
    outer: &Headers<'_>,
    out: &mut Vec<PushPart>,
) -> Result<(), MimeError> {
    let media = headers.media_type();
    if media == APN_TYPE {
        let part = out.len() + 1;
        out.push(push_part(part, headers, outer, body)?);
    } else if media.starts_with("multipart/") {
        let content_type = headers.get("content-type").unwrap_or_default();
        let boundary =
            parameter(content_type, "boundary").ok_or_else(|| MimeError::NoBoundary {
                content_type: content_type.to_owned(),
            })?;
        for part in split_multipart(body, boundary)? {
            let (part_headers, part_body) = split_entity(part);
            collect(&part_headers, part_body, headers, out)?;
        }
    }
    Ok(())
}

/// Reads one push part: its inner header block (if any), then the decoded payload.
fn push_part(
    part: usize,
    headers: &Headers<'_>,
    outer: &Headers<'_>,
    body: &str,
) -> Result<PushPart, MimeError> {
    let trimmed = body.trim_start();
    let (inner, payload) = if trimmed.starts_with(['{', '[']) || trimmed.is_empty() {
        (Headers::default(), trimmed)
    } else {
        split_entity(trimmed)
    };
    let field = |name: &str| {
        inner
            .get(name)
            .or_else(|| headers.get(name))
            .or_else(|| outer.get(name))
            .map(str::to_owned)
    };
    let encoding = inner
        .get("content-transfer-encoding")
        .or_else(|| headers.get("content-transfer-encoding"))
        .unwrap_or("7bit")
        .to_ascii_lowercase();
    let payload = match encoding.as_str() {
        "7bit" | "8bit" | "binary" => payload.trim().as_bytes().to_vec(),
        "base64" => {
            let compact: Vec<u8> = payload
                .bytes()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(&compact)
                .map_err(|e| MimeError::Base64 {
                    part,
                    detail: e.to_string(),
                })?;
            decoded.trim_ascii().to_vec()
        }
        _ => return Err(MimeError::Encoding { part, encoding }),
    };
    if payload.is_empty() {
        return Err(MimeError::Empty { part });
    }
    Ok(PushPart {
        token: field("x-device-token").filter(|t| !t.is_empty()),
        return_path: field("return-path"),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MCMT: &str = "From: a@b\r\nTo: t@apps.example\r\nMIME-Version: 1.0\r\n\
        Content-Type: multipart/vnd.msys.mcmt; boundary=\"MCMT_BOUNDARY\"\r\n\r\n\
        --MCMT_BOUNDARY\r\nContent-Type: message/rfc822\r\n\r\nFrom: a@b\r\n\r\nmail\r\n\
        --MCMT_BOUNDARY\r\nContent-Type: message/vnd.msys.apn\r\n\r\n\
        X-Device-Token: 00ff\r\n\r\n{\"aps\":{\"alert\":\"You have mail\",\"badge\":9}}\r\n\
        --MCMT_BOUNDARY--\r\n";

    #[test]
    fn the_documented_scheme_yields_token_and_exact_payload() {
        // momentum.md §1.8: the part body has its own header block, a blank line, then the JSON.
        let parts = push_parts(MCMT).unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].token.as_deref(), Some("00ff"));
        assert_eq!(
            parts[0].payload,
            br#"{"aps":{"alert":"You have mail","badge":9}}"#
        );
    }

    #[test]
    fn base64_parts_are_decoded() {
        let json = r#"{"aps":{"alert":"é"}}"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(json);
        let msg = format!(
            "Content-Type: multipart/vnd.msys.mcmt; boundary=B\r\n\r\n--B\r\n\
             Content-Type: message/vnd.msys.apn\r\n\r\nContent-Transfer-Encoding: base64\r\n\r\n\
             {}\r\n{}\r\n--B--\r\n",
            &b64[..10],
            &b64[10..]
        );
        let parts = push_parts(&msg).unwrap();
        assert_eq!(parts[0].payload, json.as_bytes());
        assert_eq!(parts[0].token, None);
    }

    #[test]
    fn a_bare_push_message_is_one_part() {
        let msg =
            "X-Device-Token: abcd\r\nContent-Type: message/vnd.msys.apn\r\n\r\n{\"aps\":{}}\r\n";
        let parts = push_parts(msg).unwrap();
        assert_eq!(parts[0].token.as_deref(), Some("abcd"));
        assert_eq!(parts[0].payload, b"{\"aps\":{}}");
    }

    #[test]
    fn refusals_say_why() {
        assert_eq!(
            push_parts("Subject: x\r\n\r\nhello\r\n"),
            Err(MimeError::NoPushPart("text/plain".into()))
        );
        assert!(matches!(
            push_parts("Content-Type: multipart/vnd.msys.mcmt\r\n\r\nx"),
            Err(MimeError::NoBoundary { .. })
        ));
        assert_eq!(
            push_parts("Content-Type: multipart/vnd.msys.mcmt; boundary=B\r\n\r\n--B\r\n\r\nx\r\n"),
            Err(MimeError::Unterminated("B".into()))
        );
        let bad = "Content-Type: message/vnd.msys.apn\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}";
        assert!(matches!(
            push_parts(bad),
            Err(MimeError::Encoding { part: 1, .. })
        ));
    }
}
