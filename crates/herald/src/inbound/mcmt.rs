//! MCMT: `multipart/vnd.msys.mcmt` messages carrying `message/vnd.msys.apn` push parts
//! (docs/momentum-compat.md#mcmt-push-part, docs/momentum-compat.md#mcmt).
//!
//! [`parse_with`] reads a message received over SMTP (or rendered from a REST template, [`parse`]) and returns its push parts, each with its device token (if the
//! part names one), JSON payload and APNs attributes; [`McmtMessage::submissions`] turns them into one
//! [`Submission`] per push part per recipient. Parsing never validates the payload or the token: the intake does,
//! and the caller names the part in the refusal; only a payload larger than any APNs push takes ([`MAX_PAYLOAD`]) is
//! refused here, before it is copied. A push part header, or a top-level `X-Binding` or `Return-Path`, given with an
//! empty value is refused over SMTP, and not given in a REST template ([`EmptyValue`]). A refusal repeats at most [`ECHO_LIMIT`] characters of a value
//! taken from the message ([`echo`]).
//!
//! A push part is laid out as Momentum documents it: the MIME part headers (`Content-Type: message/vnd.msys.apn`),
//! a blank line, then a body that starts with its own header block (`X-Device-Token: …`), a blank line, and the
//! JSON. A body that starts with `{` has no inner header block. Attribute headers are looked up in the inner block
//! first, then among the MIME part headers.
//!
//! The container is split at its delimiter lines by [`mime`], not by the MIME parser, so every `--BOUNDARY` line
//! is a part and refusals name parts by that ordinal: a part whose headers run into its body (no empty line), a
//! part that gives `Content-Type` twice, or more than [`MAX_MIME_DEPTH`] nested levels refuse the message instead
//! of hiding or shifting parts. The MIME parser reads only single header blocks. The message's own `Content-Type`
//! given twice, one of them MCMT, refuses it too: which one applies decides whether it is MCMT and its boundary.

mod mime;

use std::borrow::Cow;

use base64::Engine as _;
use bytes::Bytes;
use mail_parser::MessageParser;

use super::accept::Submission;
use herald_apns::notification::PushHeaders;

/// The `Content-Type` of an MCMT container.
pub const MCMT_TYPE: (&str, &str) = ("multipart", "vnd.msys.mcmt");
/// The `Content-Type` of an APNs push part.
pub const APN_PART_TYPE: (&str, &str) = ("message", "vnd.msys.apn");

/// Header names (case-insensitive) read from a push part, each with its accepted aliases.
pub mod headers {
    pub const DEVICE_TOKEN: &[&str] = &["X-Device-Token"];
    pub const RETURN_PATH: &[&str] = &["Return-Path"];
    pub const TRANSFER_ENCODING: &[&str] = &["Content-Transfer-Encoding"];
    pub const TOPIC: &[&str] = &["X-APNs-Topic", "apns-topic"];
    pub const PUSH_TYPE: &[&str] = &["X-APNs-Push-Type", "apns-push-type"];
    pub const PRIORITY: &[&str] = &["X-APNs-Priority", "apns-priority"];
    pub const EXPIRATION: &[&str] = &["X-APNs-Expiration", "apns-expiration"];
    pub const COLLAPSE_ID: &[&str] = &["X-APNs-Collapse-Id", "apns-collapse-id"];
    pub const APNS_ID: &[&str] = &["X-APNs-Id", "apns-id"];
    /// The binding to deliver from (a top-level header of the message, or a push part's own).
    pub const BINDING: &[&str] = &["X-Binding"];
    /// The headers a push part gives at most once in each of its header blocks.
    pub const SINGLE: &[&[&str]] = &[
        DEVICE_TOKEN,
        RETURN_PATH,
        TRANSFER_ENCODING,
        TOPIC,
        PUSH_TYPE,
        PRIORITY,
        EXPIRATION,
        COLLAPSE_ID,
        APNS_ID,
        BINDING,
    ];
    /// The headers read from the message's own header block, each given at most once.
    pub const TOP_LEVEL: &[&[&str]] = &[RETURN_PATH, BINDING];
}

/// The largest payload APNs takes of any push (VoIP pushes over HTTP/2; docs/apns-protocol.md#payload-limits): a push
/// part whose payload is larger is refused before its payload is copied, whatever route its recipients' domains take.
pub const MAX_PAYLOAD: usize = herald_apns::push::VOIP_PAYLOAD_LIMIT;

/// The most characters of a value from the message (a boundary, a header value) that a refusal repeats: the
/// rest is cut and marked `…`, so a refusal stays within a reply line (RFC 5321 §4.5.3.1.5: 512 octets).
pub const ECHO_LIMIT: usize = 100;

/// `text` as a refusal or reply repeats it: its first [`ECHO_LIMIT`] characters, then `…` when there were more
/// (cut on a character boundary).
pub fn echo(text: &str) -> std::borrow::Cow<'_, str> {
    match text.char_indices().nth(ECHO_LIMIT) {
        None => std::borrow::Cow::Borrowed(text),
        Some((cut, _)) => std::borrow::Cow::Owned(format!("{}…", &text[..cut])),
    }
}

/// How deep MIME containers may nest, counting the MCMT container as the first level: an email part
/// (`message/rfc822`) is the second, a multipart inside it the third. Real mail stays far below; a deeper message
/// is refused (each level costs the MIME tools that read it a stack frame or more).
pub const MAX_MIME_DEPTH: usize = 32;

/// Why a message is not a usable MCMT message. The text is what the SMTP client reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum McmtError {
    /// The message is empty. (A message whose first line is empty has no headers and is [`Parsed::NotMcmt`].)
    #[error("the message has no header block")]
    NoHeaders,
    /// The MIME parser could not read the message's own header block.
    #[error("the message's header block cannot be read")]
    Malformed,
    #[error(
        "the MCMT container has no parts (a boundary parameter matching the body's delimiters is required)"
    )]
    NoParts,
    #[error(
        "the MCMT container is not closed: no --{boundary}-- line follows its last part (is the message truncated?)"
    )]
    Unclosed { boundary: String },
    #[error(
        "a --{boundary} line follows the MCMT container's close delimiter --{boundary}--: the part after it would be lost"
    )]
    DelimiterAfterClose { boundary: String },
    #[error(
        "herald delivers push notifications only: the MCMT message has no message/vnd.msys.apn part"
    )]
    NoPushPart,
    #[error("part {part}: {reason}")]
    Part { part: usize, reason: PartError },
    /// The message's own header block gives `Content-Type` more than once, one of them `multipart/vnd.msys.mcmt`:
    /// mail readers differ on which one applies (the MIME parser reads the last, others the first), and it decides
    /// whether the message is MCMT at all and which boundary splits it. (Ordinary mail that repeats it, none of
    /// them MCMT, is [`Parsed::NotMcmt`] whichever applies.)
    #[error(
        "Content-Type is given more than once in the message's headers: whether the message is MCMT (multipart/vnd.msys.mcmt), and which boundary splits it, would be ambiguous (give it once)"
    )]
    RepeatedContentType,
    /// A header of [`headers::TOP_LEVEL`] is given more than once in the message's own header block.
    #[error(
        "header {} is given more than once in the message's headers (which one applies would be ambiguous: give it once)",
        spelled(names)
    )]
    RepeatedHeader { names: &'static [&'static str] },
    /// A header of [`headers::TOP_LEVEL`] is given with an empty value in the message's own header block, where
    /// empty values are refused ([`EmptyValue::Refused`]): given, so not the missing header whose default applies.
    #[error(
        "header {} is given with an empty value in the message's headers (an empty header is not a missing one: give a value, or leave the header out)",
        spelled(names)
    )]
    EmptyHeader { names: &'static [&'static str] },
    /// The top-level header block of a `multipart/vnd.msys.mcmt` message is over the limit. (A message of another
    /// type with such a block is [`Parsed::NotMcmt`].)
    #[error(
        "the message's header block is over {limit} bytes (herald's limit on one header block)"
    )]
    HeadersTooLarge { limit: usize },
}

/// What is wrong with one part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartError {
    #[error(
        "line {line} of the part is not a MIME header (Name: value): a part's MIME headers must be followed by a blank line, then its body"
    )]
    MimeHeadersNotEnded { line: usize },
    #[error(
        "its first line starts with a space or tab, but no MIME header precedes it to continue (a line of spaces or tabs continues the header before it; only an empty line ends a part's MIME headers)"
    )]
    MimeHeadersStartFolded,
    #[error(
        "Content-Type is given more than once in the part's MIME headers: whether it is a push part (message/vnd.msys.apn) would be ambiguous"
    )]
    RepeatedContentType,
    #[error(
        "its Content-Type {value:?} is not a MIME type (type/subtype): whether it is a push part (message/vnd.msys.apn) cannot be told"
    )]
    UnreadableContentType { value: String },
    #[error("a header block in it is over {limit} bytes (herald's limit on one header block)")]
    HeadersTooLarge { limit: usize },
    #[error(
        "its MIME parts nest more than {limit} levels deep (herald's limit, counting the MCMT container)"
    )]
    TooDeep { limit: usize },
    #[error(
        "header {} is given more than once in {block} (APNs refuses repeated headers: give each once)",
        spelled(names)
    )]
    RepeatedHeader {
        names: &'static [&'static str],
        block: HeaderBlockName,
    },
    #[error("Content-Transfer-Encoding {0:?} is not supported (use 7bit, 8bit or base64)")]
    UnsupportedEncoding(String),
    /// base64's reason, whose offset counts the base64 characters only.
    #[error(
        "the base64 body does not decode: {0} (the offset counts base64 characters, line breaks and other white space excluded)"
    )]
    BadBase64(String),
    #[error("the inner header block is not terminated by a blank line before the JSON payload")]
    UnterminatedHeaders,
    #[error("inner header line {line} is not `Name: value`")]
    BadHeaderLine { line: usize },
    #[error("the JSON payload is empty")]
    EmptyPayload,
    #[error(
        "payload is {size} bytes; no APNs push allows more than {limit} (VoIP pushes over HTTP/2; other pushes allow less)"
    )]
    PayloadTooLarge { size: usize, limit: usize },
    /// A header of [`headers::SINGLE`] given with nothing after its colon: given, so not the missing header whose
    /// default applies (the recipient's local part for `X-Device-Token`).
    #[error(
        "header {} is given with an empty value in {block} (an empty header is not a missing one: give a value, or leave the header out)",
        spelled(names)
    )]
    EmptyHeader {
        names: &'static [&'static str],
        block: HeaderBlockName,
    },
    #[error("header {name}: {value:?} is not {expected}")]
    BadHeader {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
}

/// The header block of a push part that repeats a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderBlockName {
    /// The part's MIME headers.
    Mime,
    /// The header block at the start of the part's body.
    Inner,
}

impl std::fmt::Display for HeaderBlockName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HeaderBlockName::Mime => "the part's MIME headers",
            HeaderBlockName::Inner => "the inner header block",
        })
    }
}

/// `X-APNs-Topic (or apns-topic)`.
fn spelled(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [first, rest @ ..] => format!("{first} (or {})", rest.join(", ")),
    }
}

/// Whether a message is MCMT at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    Mcmt(McmtMessage),
    /// Not `multipart/vnd.msys.mcmt`: ordinary mail, which herald does not deliver.
    NotMcmt,
}

/// The push parts of an MCMT message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McmtMessage {
    pub push_parts: Vec<PushPart>,
    /// The top-level `Return-Path` header, if any.
    pub return_path: Option<String>,
    /// The top-level `X-Binding` header, if any: the binding every push part is delivered from unless the part
    /// names its own.
    pub binding: Option<String>,
}

/// One `message/vnd.msys.apn` part, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushPart {
    /// 1-based position among the container's parts (what refusals name).
    pub number: usize,
    /// `X-Device-Token`; absent = the recipient's local part.
    pub token: Option<String>,
    /// The JSON bytes, with surrounding whitespace removed.
    pub payload: Bytes,
    /// `X-APNs-*` request headers (topic, push type, priority, expiration, collapse id, apns-id).
    pub headers: PushHeaders,
    /// The part's `Return-Path`, if any.
    pub return_path: Option<String>,
    /// The part's `X-Binding`, if any.
    pub binding: Option<String>,
}

/// One submission with where it came from, so a refusal can name the part and the recipient.
#[derive(Debug, Clone)]
pub struct PartSubmission {
    pub part: usize,
    pub recipient: String,
    pub submission: Submission,
}

impl McmtMessage {
    /// One submission per push part per recipient (`local@domain`); the domain picks the app. `mail_from` is the
    /// envelope sender, used when no `Return-Path` header names one.
    pub fn submissions(&self, recipients: &[String], mail_from: &str) -> Vec<PartSubmission> {
        let mut out = Vec::with_capacity(recipients.len() * self.push_parts.len());
        for rcpt in recipients {
            let (local, domain) = split_address(rcpt);
            for p in &self.push_parts {
                let sender = p
                    .return_path
                    .as_deref()
                    .or(self.return_path.as_deref())
                    .map(strip_angle)
                    .unwrap_or(mail_from);
                out.push(PartSubmission {
                    part: p.number,
                    recipient: rcpt.clone(),
                    submission: Submission {
                        domain: domain.to_owned(),
                        token: p.token.clone().unwrap_or_else(|| local.to_owned()),
                        payload: p.payload.clone(),
                        headers: p.headers.clone(),
                        sender: sender.to_owned(),
                        recipient: rcpt.clone(),
                        binding: p.binding.clone().or_else(|| self.binding.clone()),
                    },
                });
            }
        }
        out
    }
}

/// `local@domain` split at the last `@`; no `@` = all local part.
pub fn split_address(addr: &str) -> (&str, &str) {
    match addr.rsplit_once('@') {
        Some((l, d)) => (l, d),
        None => (addr, ""),
    }
}

fn strip_angle(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix('<')
        .and_then(|x| x.strip_suffix('>'))
        .unwrap_or(s)
}

/// What a push part header of [`headers::SINGLE`], or a message header of [`headers::TOP_LEVEL`], given with an
/// empty value means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EmptyValue {
    /// The header is given: the message is refused naming the header, and the part for a push part's
    /// ([`PartError::EmptyHeader`], [`McmtError::EmptyHeader`]). Momentum falls back to a default only for a header
    /// that is not given: an empty `X-Device-Token` that fell back to the recipient's local part would reach
    /// another device, an empty `X-Binding` that fell back to `default` would deliver from another binding.
    /// Messages received over SMTP.
    Refused,
    /// The header is not given, and what applies without it does: a REST injection template renders a header
    /// empty for a recipient whose value for its key is empty (`""` or `null`; a recipient without the key is
    /// refused), and an empty `X-Device-Token` leaves the recipient's local part as device token.
    NotGiven,
}

/// [`parse_with`] for a REST injection's rendered template: a header rendered empty is not given
/// ([`EmptyValue::NotGiven`]).
pub fn parse(raw: &[u8]) -> Result<Parsed, McmtError> {
    parse_with(raw, EmptyValue::NotGiven)
}

/// Reads a message (received over SMTP after dot-unstuffing, or rendered from a template) and finds its push parts;
/// `empty` says what a push part header given with an empty value means.
pub fn parse_with(raw: &[u8], empty: EmptyValue) -> Result<Parsed, McmtError> {
    // Only the top-level header block goes to the MIME parser; the body is split here, line by line.
    let Some(body_start) = mime::top_block_end(raw) else {
        // The block is over the limit and the MIME parser is not given it. Its Content-Type field alone says whether
        // the message is MCMT: ordinary mail is answered as not MCMT, as with a smaller header block, and only an
        // MCMT message is refused for the size of its header block.
        return match mime::top_content_type(raw) {
            Some(t) if t.is(MCMT_TYPE) => Err(McmtError::HeadersTooLarge {
                limit: mime::MAX_HEADER_BLOCK,
            }),
            _ => Ok(Parsed::NotMcmt),
        };
    };
    let top_block = raw.get(..body_start).unwrap_or_default();
    // The MIME parser is a dependency that asserted on some malformed input (found by fuzzing, fuzz/README.md):
    // whatever a client sends, the message is refused with an answer rather than the session ended by a panic.
    let message = match std::panic::catch_unwind(|| MessageParser::new().parse_headers(top_block)) {
        Err(_) => return Err(McmtError::Malformed),
        Ok(Some(message)) => message,
        Ok(None) if raw.is_empty() => return Err(McmtError::NoHeaders),
        // A first line that is empty (or folded): no headers, so no Content-Type, as before the body was split here.
        Ok(None) => return Ok(Parsed::NotMcmt),
    };
    let root = message.root_part();
    if repeats_an_mcmt_type(root, top_block) {
        return Err(McmtError::RepeatedContentType);
    }
    // Read from the block with its folds joined, as a part's type is: the MIME parser alone reads a type folded
    // after its `/` as having no subtype.
    let Some(root_type) = mime::mime_type(top_block) else {
        return Ok(Parsed::NotMcmt);
    };
    if !root_type.is(MCMT_TYPE) {
        return Ok(Parsed::NotMcmt);
    }
    for names in headers::TOP_LEVEL {
        let given = root
            .headers()
            .iter()
            .filter(|h| {
                names
                    .iter()
                    .any(|n| h.name.as_str().eq_ignore_ascii_case(n))
            })
            .count();
        if given > 1 {
            return Err(McmtError::RepeatedHeader { names });
        }
    }
    // A top-level header's value, unfolded and trimmed (empty when it is given with none).
    let top_header = |names: &[&str]| {
        root.headers()
            .iter()
            .find(|h| {
                names
                    .iter()
                    .any(|n| h.name.as_str().eq_ignore_ascii_case(n))
            })
            .map(|h| {
                let value = top_block
                    .get(h.offset_start as usize..h.offset_end as usize)
                    .unwrap_or_default();
                unfold(&String::from_utf8_lossy(value)).trim().to_owned()
            })
    };
    if empty == EmptyValue::Refused {
        for names in headers::TOP_LEVEL {
            if top_header(names).is_some_and(|v| v.is_empty()) {
                return Err(McmtError::EmptyHeader { names });
            }
        }
    }
    let Some(boundary) = root_type.boundary.as_deref().filter(|b| !b.is_empty()) else {
        return Err(McmtError::NoParts);
    };
    let body = raw.get(body_start..).unwrap_or_default();
    // The container's structure first: a truncated message is named as such rather than by its cut last part.
    let boundary_text = || echo(&String::from_utf8_lossy(boundary)).into_owned();
    match mime::Parts::new(body, boundary).ending() {
        mime::Ending::Closed => {}
        mime::Ending::NoParts => return Err(McmtError::NoParts),
        mime::Ending::Unclosed => {
            return Err(McmtError::Unclosed {
                boundary: boundary_text(),
            });
        }
        mime::Ending::DelimiterAfterClose => {
            return Err(McmtError::DelimiterAfterClose {
                boundary: boundary_text(),
            });
        }
    }
    let mut push_parts = Vec::new();
    let mut count = 0;
    for (i, part) in mime::Parts::new(body, boundary).enumerate() {
        let number = i + 1;
        count = number;
        let refuse = |reason| McmtError::Part {
            part: number,
            reason,
        };
        if mime::block_over_limit(part) {
            return Err(refuse(PartError::HeadersTooLarge {
                limit: mime::MAX_HEADER_BLOCK,
            }));
        }
        let block = mime::header_block(part).map_err(|bad| {
            refuse(if bad.folded {
                PartError::MimeHeadersStartFolded
            } else {
                PartError::MimeHeadersNotEnded { line: bad.number }
            })
        })?;
        // The Content-Type decides whether the part is a push part: one only, never the last of several.
        let content_types = block
            .fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("Content-Type"))
            .count();
        if content_types > 1 {
            return Err(refuse(PartError::RepeatedContentType));
        }
        let part_type =
            mime::mime_type(part.get(..block.body).unwrap_or_default()).unwrap_or_default();
        if content_types == 1 && (part_type.ctype.is_empty() || part_type.subtype.is_empty()) {
            let value = block
                .fields
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("Content-Type"))
                .map(|(_, v)| echo(v.trim()).into_owned())
                .unwrap_or_default();
            return Err(refuse(PartError::UnreadableContentType { value }));
        }
        let part_body = part.get(block.body..).unwrap_or_default();
        if part_type.is(APN_PART_TYPE) {
            let push = push_part(number, &block.fields, part_body, empty).map_err(refuse)?;
            push_parts.push(push);
        } else if part_type.ctype == "message" || part_type.ctype == "multipart" {
            mime::check_email_part(&part_type, part_body).map_err(refuse)?;
        }
    }
    if count == 0 {
        return Err(McmtError::NoParts);
    }
    if push_parts.is_empty() {
        return Err(McmtError::NoPushPart);
    }
    let given = |names: &[&str]| top_header(names).filter(|v| !v.is_empty());
    Ok(Parsed::Mcmt(McmtMessage {
        push_parts,
        return_path: given(headers::RETURN_PATH),
        binding: given(headers::BINDING),
    }))
}

/// Whether the message's own header block (`top_block`, as the MIME parser read it into `root`) gives
/// `Content-Type` more than once with any of them `multipart/vnd.msys.mcmt`. Each field is read on its own, its folds
/// joined, as the one field of a block is.
fn repeats_an_mcmt_type(root: &mail_parser::MessagePart<'_>, top_block: &[u8]) -> bool {
    let fields: Vec<_> = root
        .headers()
        .iter()
        .filter(|h| h.name.as_str().eq_ignore_ascii_case("Content-Type"))
        .collect();
    fields.len() > 1
        && fields.iter().any(|h| {
            let mut field = top_block
                .get(h.offset_field as usize..h.offset_end as usize)
                .unwrap_or_default()
                .to_vec();
            // The MIME parser reads a field up to its line ending: the last field of a message that is all header
            // block may have none.
            if !field.ends_with(b"\n") {
                field.extend_from_slice(b"\r\n");
            }
            mime::mime_type(&field).is_some_and(|t| t.is(MCMT_TYPE))
        })
}

/// Header fields as (name, unfolded value), in order.
type HeaderList = Vec<(String, String)>;

/// Header lookup: the inner block first, then the MIME part headers.
struct Headers<'a> {
    inner: &'a [(String, String)],
    mime: &'a [(String, String)],
}

impl Headers<'_> {
    fn get(&self, names: &[&str]) -> Option<&str> {
        let find = |list: &[(String, String)]| -> Option<usize> {
            list.iter()
                .position(|(n, _)| names.iter().any(|want| n.eq_ignore_ascii_case(want)))
        };
        if let Some(i) = find(self.inner) {
            return Some(self.inner[i].1.as_str());
        }
        find(self.mime).map(|i| self.mime[i].1.as_str())
    }

    fn string(&self, names: &[&str]) -> Option<String> {
        self.get(names)
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    }

    fn number<T: std::str::FromStr>(
        &self,
        names: &'static [&'static str],
        expected: &'static str,
    ) -> Result<Option<T>, PartError> {
        // ASCII digits only, as the REST API takes them: `from_str` would also take a leading `+`.
        let bad = |v: &str| PartError::BadHeader {
            name: names[0],
            value: echo(v).into_owned(),
            expected,
        };
        match self.string(names) {
            None => Ok(None),
            Some(v) if !v.bytes().all(|b| b.is_ascii_digit()) => Err(bad(&v)),
            Some(v) => v.parse::<T>().map(Some).map_err(|_| bad(&v)),
        }
    }
}

fn push_part(
    number: usize,
    mime: &[(String, String)],
    body: &[u8],
    empty: EmptyValue,
) -> Result<PushPart, PartError> {
    let refuse_empty = empty == EmptyValue::Refused;
    no_repeats(mime, HeaderBlockName::Mime)?;
    if refuse_empty {
        no_empty_values(mime, HeaderBlockName::Mime)?;
    }
    let outer = Headers { inner: &[], mime };
    let decoded = decode(outer.string(headers::TRANSFER_ENCODING).as_deref(), body)?;
    let (inner, json) = split_inner_headers(&decoded)?;
    no_repeats(&inner, HeaderBlockName::Inner)?;
    if refuse_empty {
        no_empty_values(&inner, HeaderBlockName::Inner)?;
    }
    // A transfer encoding named in the inner block applies to the JSON after it (docs/momentum-compat.md#mcmt-push-part
    // lists Content-Transfer-Encoding among the push part's own headers).
    let inner_cte = Headers {
        inner: &inner,
        mime: &[],
    }
    .string(headers::TRANSFER_ENCODING);
    let json = decode(inner_cte.as_deref(), json)?;
    let payload = trim_ascii(&json);
    if payload.is_empty() {
        return Err(PartError::EmptyPayload);
    }
    // Refused before it is copied: the intake would refuse it for every push type and route.
    if payload.len() > MAX_PAYLOAD {
        return Err(PartError::PayloadTooLarge {
            size: payload.len(),
            limit: MAX_PAYLOAD,
        });
    }
    let h = Headers {
        inner: &inner,
        mime,
    };
    Ok(PushPart {
        number,
        token: h.string(headers::DEVICE_TOKEN),
        payload: Bytes::copy_from_slice(payload),
        headers: PushHeaders {
            topic: h.string(headers::TOPIC),
            push_type: h.string(headers::PUSH_TYPE),
            priority: h.number(headers::PRIORITY, "a priority (10, 5 or 1)")?,
            expiration: h.number(headers::EXPIRATION, "an epoch time in seconds")?,
            collapse_id: h.string(headers::COLLAPSE_ID),
            apns_id: h.string(headers::APNS_ID),
        },
        return_path: h.string(headers::RETURN_PATH),
        binding: h.string(headers::BINDING),
    })
}

/// Applies a `Content-Transfer-Encoding` (its comments aside: `base64 (json)` is base64). The identity encodings
/// (none, `7bit`, `8bit`, `binary`) borrow `body`: only base64 makes a copy.
fn decode<'a>(cte: Option<&str>, body: &'a [u8]) -> Result<Cow<'a, [u8]>, PartError> {
    let cte = cte.map(|c| mime::without_comments(c).to_ascii_lowercase());
    match cte.as_deref() {
        None | Some("" | "7bit" | "8bit" | "binary") => Ok(Cow::Borrowed(body)),
        Some("base64") => {
            let compact: Vec<u8> = body
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect();
            base64::engine::general_purpose::STANDARD
                .decode(&compact)
                .map(Cow::Owned)
                .map_err(|e| PartError::BadBase64(e.to_string()))
        }
        Some(other) => Err(PartError::UnsupportedEncoding(echo(other).into_owned())),
    }
}

/// Refuses a header of [`headers::SINGLE`] given twice (under any of its names) in one header block. Across the
/// two blocks of a push part the inner one wins, as documented.
fn no_repeats(list: &[(String, String)], block: HeaderBlockName) -> Result<(), PartError> {
    for names in headers::SINGLE {
        let given = list
            .iter()
            .filter(|(n, _)| names.iter().any(|want| n.eq_ignore_ascii_case(want)))
            .count();
        if given > 1 {
            return Err(PartError::RepeatedHeader { names, block });
        }
    }
    Ok(())
}

/// Refuses a header of [`headers::SINGLE`] given with an empty value (spaces and folds aside) in one header block:
/// Momentum falls back to a default only for a header that is not given, and a push that falls back to the
/// recipient's local part for an empty `X-Device-Token` would reach another device.
fn no_empty_values(list: &[(String, String)], block: HeaderBlockName) -> Result<(), PartError> {
    for names in headers::SINGLE {
        let empty = list.iter().any(|(n, v)| {
            names.iter().any(|want| n.eq_ignore_ascii_case(want)) && v.trim().is_empty()
        });
        if empty {
            return Err(PartError::EmptyHeader { names, block });
        }
    }
    Ok(())
}

/// Splits a push part body into its inner header block and the JSON. A body whose first non-blank byte is `{`
/// has no inner block.
fn split_inner_headers(body: &[u8]) -> Result<(HeaderList, &[u8]), PartError> {
    let start = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(body.len());
    let rest = body.get(start..).unwrap_or_default();
    if rest.first().is_none_or(|&b| b == b'{') {
        return Ok((Vec::new(), rest));
    }
    if mime::block_over_limit(rest) {
        return Err(PartError::HeadersTooLarge {
            limit: mime::MAX_HEADER_BLOCK,
        });
    }
    match mime::header_block(rest) {
        Ok(block) if block.blank_line => {
            Ok((block.fields, rest.get(block.body..).unwrap_or_default()))
        }
        Ok(_) => Err(PartError::UnterminatedHeaders),
        Err(bad) if bad.json || bad.last => Err(PartError::UnterminatedHeaders),
        Err(bad) => Err(PartError::BadHeaderLine { line: bad.number }),
    }
}

fn unfold(v: &str) -> String {
    v.split(['\r', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mcmt(parts: &[&str]) -> Vec<u8> {
        let mut m = String::from(
            "From: a@example.com\r\nTo: t@apps.example\r\nMIME-Version: 1.0\r\n\
             Content-Type: multipart/vnd.msys.mcmt; boundary=\"B\"\r\n\r\n",
        );
        for p in parts {
            m.push_str("--B\r\n");
            m.push_str(p);
            m.push_str("\r\n");
        }
        m.push_str("--B--\r\n");
        m.into_bytes()
    }

    fn parsed(raw: &[u8]) -> McmtMessage {
        match parse(raw).unwrap() {
            Parsed::Mcmt(m) => m,
            Parsed::NotMcmt => panic!("not MCMT"),
        }
    }

    // docs/momentum-compat.md#mcmt-push-part: the part headers, a blank line, the inner header block, a blank line, the
    // JSON.
    #[test]
    fn inner_header_block_then_json() {
        let raw = mcmt(&[
            "Content-Type: message/rfc822\r\n\r\nSubject: mail\r\n\r\nhello",
            "Content-Type: message/vnd.msys.apn\r\n\r\nX-Device-Token: 123acb90\r\nX-APNs-Topic: com.example.app\r\n\r\n{\"aps\":{\"alert\":\"You have mail\"}}",
        ]);
        let m = parsed(&raw);
        assert_eq!(m.push_parts.len(), 1);
        let p = &m.push_parts[0];
        assert_eq!(p.number, 2);
        assert_eq!(p.token.as_deref(), Some("123acb90"));
        assert_eq!(p.headers.topic.as_deref(), Some("com.example.app"));
        assert_eq!(&p.payload[..], b"{\"aps\":{\"alert\":\"You have mail\"}}");
    }

    #[test]
    fn json_without_inner_headers_and_attributes_in_mime_headers() {
        let raw = mcmt(&[
            "Content-Type: message/vnd.msys.apn\r\napns-priority: 5\r\napns-push-type: background\r\n\
             apns-expiration: 1700000000\r\napns-collapse-id: c1\r\n\r\n{\"aps\":{\"content-available\":1}}",
        ]);
        let p = &parsed(&raw).push_parts[0];
        assert_eq!(p.token, None);
        assert_eq!(p.headers.priority, Some(5));
        assert_eq!(p.headers.push_type.as_deref(), Some("background"));
        assert_eq!(p.headers.expiration, Some(1_700_000_000));
        assert_eq!(p.headers.collapse_id.as_deref(), Some("c1"));
        assert_eq!(&p.payload[..], b"{\"aps\":{\"content-available\":1}}");
    }

    #[test]
    fn base64_part_body_is_decoded() {
        let inner = "X-Device-Token: abcd\r\n\r\n{\"aps\":{\"alert\":\"h\u{e9}\"}}";
        let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
        let (a, b) = b64.split_at(10);
        let part = format!(
            "Content-Type: message/vnd.msys.apn\r\nContent-Transfer-Encoding: base64\r\n\r\n{a}\r\n{b}"
        );
        let p = &parsed(&mcmt(&[&part])).push_parts[0];
        assert_eq!(p.token.as_deref(), Some("abcd"));
        assert_eq!(
            &p.payload[..],
            "{\"aps\":{\"alert\":\"h\u{e9}\"}}".as_bytes()
        );
    }

    #[test]
    fn inner_transfer_encoding_applies_to_the_json() {
        let json = "{\"aps\":{\"alert\":\"x\"}}";
        let b64 = base64::engine::general_purpose::STANDARD.encode(json);
        let part = format!(
            "Content-Type: message/vnd.msys.apn\r\n\r\nX-Device-Token: ab\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}"
        );
        let p = &parsed(&mcmt(&[&part])).push_parts[0];
        assert_eq!(&p.payload[..], json.as_bytes());
    }

    #[test]
    fn refusals_name_the_part() {
        let raw = mcmt(&[
            "Content-Type: text/plain\r\n\r\nhi",
            "Content-Type: message/vnd.msys.apn\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n{}",
        ]);
        let e = parse(&raw).unwrap_err();
        assert_eq!(
            e.to_string(),
            "part 2: Content-Transfer-Encoding \"quoted-printable\" is not supported (use 7bit, 8bit or base64)"
        );
        let raw = mcmt(&["Content-Type: message/vnd.msys.apn\r\n\r\nX-Device-Token: ab\r\n{}"]);
        assert_eq!(
            parse(&raw).unwrap_err().to_string(),
            "part 1: the inner header block is not terminated by a blank line before the JSON payload"
        );
        let raw = mcmt(&[
            "Content-Type: message/vnd.msys.apn\r\n\r\nX-Device-Token: ab\r\nnot a header\r\n\r\n{}",
        ]);
        assert_eq!(
            parse(&raw).unwrap_err().to_string(),
            "part 1: inner header line 2 is not `Name: value`"
        );
        let raw = mcmt(&["Content-Type: message/vnd.msys.apn\r\nX-APNs-Priority: high\r\n\r\n{}"]);
        assert_eq!(
            parse(&raw).unwrap_err().to_string(),
            "part 1: header X-APNs-Priority: \"high\" is not a priority (10, 5 or 1)"
        );
        let raw = mcmt(&["Content-Type: message/vnd.msys.apn\r\n\r\nX-Device-Token: ab\r\n\r\n  "]);
        assert_eq!(
            parse(&raw).unwrap_err(),
            McmtError::Part {
                part: 1,
                reason: PartError::EmptyPayload
            }
        );
        let raw = mcmt(&[
            "Content-Type: message/vnd.msys.apn\r\nContent-Transfer-Encoding: base64\r\n\r\n@@@",
        ]);
        assert!(matches!(
            parse(&raw).unwrap_err(),
            McmtError::Part {
                part: 1,
                reason: PartError::BadBase64(_)
            }
        ));
    }

    // The parser reads client bytes: no truncation or corruption of a valid message may panic.
    #[test]
    fn truncated_and_corrupted_messages_never_panic() {
        let inner = "X-Device-Token: abcd\r\n\r\n{\"aps\":{}}";
        let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
        let raw = mcmt(&[
            "Content-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\nbody",
            &format!("Content-Type: message/vnd.msys.apn\r\n\r\n{inner}"),
            &format!(
                "Content-Type: message/vnd.msys.apn\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}"
            ),
        ]);
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut outcomes = [0usize; 2];
        for cut in 0..raw.len() {
            outcomes[usize::from(parse(&raw[..cut]).is_ok())] += 1;
        }
        for _ in 0..2000 {
            let mut m = raw.clone();
            for _ in 0..1 + next() % 4 {
                let i = (next() % m.len() as u64) as usize;
                m[i] = (next() % 256) as u8;
            }
            outcomes[usize::from(parse(&m).is_ok())] += 1;
        }
        assert!(outcomes[0] > 0 && outcomes[1] > 0, "{outcomes:?}");
    }

    #[test]
    fn no_push_part_and_not_mcmt() {
        let raw = mcmt(&["Content-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\nbody"]);
        assert_eq!(parse(&raw).unwrap_err(), McmtError::NoPushPart);
        assert_eq!(
            parse(b"Subject: hi\r\n\r\njust mail\r\n").unwrap(),
            Parsed::NotMcmt
        );
    }

    #[test]
    fn submissions_per_part_per_recipient_with_token_fallback_and_return_path() {
        let raw = mcmt(&[
            "Content-Type: message/vnd.msys.apn\r\n\r\nX-Device-Token: aa\r\nReturn-Path: <bounce@example.com>\r\n\r\n{\"n\":1}",
            "Content-Type: message/vnd.msys.apn\r\n\r\n{\"n\":2}",
        ]);
        let m = parsed(&raw);
        let subs = m.submissions(
            &["bb@one.example".to_owned(), "cc@two.example".to_owned()],
            "from@example.com",
        );
        let got: Vec<_> = subs
            .iter()
            .map(|s| {
                (
                    s.part,
                    s.submission.domain.as_str(),
                    s.submission.token.as_str(),
                    s.submission.sender.as_str(),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (1, "one.example", "aa", "bounce@example.com"),
                (2, "one.example", "bb", "from@example.com"),
                (1, "two.example", "aa", "bounce@example.com"),
                (2, "two.example", "cc", "from@example.com"),
            ]
        );
    }

    const APN: &str =
        "Content-Type: message/vnd.msys.apn\r\n\r\nX-Device-Token: ab\r\n\r\n{\"aps\":{}}";

    // Parsed on a thread with a small stack: nothing in the parse may recurse once per MIME level.
    fn parse_on_small_stack(raw: Vec<u8>) -> Result<Parsed, McmtError> {
        std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || parse(&raw))
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn a_header_block_over_the_limit_is_refused_wherever_it_is() {
        // 2.5 million 4-byte header lines in 10 MB: the MIME parser would keep every one (gigabytes).
        let lines = "a:\r\n".repeat(mime::MAX_HEADER_BLOCK / 4 + 10);
        let top = format!(
            "{lines}Content-Type: multipart/vnd.msys.mcmt; boundary=\"B\"\r\n\r\n--B\r\n{APN}\r\n--B--\r\n"
        );
        assert_eq!(
            parse(top.as_bytes()).unwrap_err(),
            McmtError::HeadersTooLarge {
                limit: mime::MAX_HEADER_BLOCK
            }
        );
        let too_large = PartError::HeadersTooLarge {
            limit: mime::MAX_HEADER_BLOCK,
        };
        // A part's MIME headers.
        let part = format!("{lines}Content-Type: text/plain\r\n\r\nhi");
        assert_eq!(
            parse(&mcmt(&[APN, &part])).unwrap_err(),
            McmtError::Part {
                part: 2,
                reason: too_large.clone()
            }
        );
        // A push part's inner header block.
        let push = format!("Content-Type: message/vnd.msys.apn\r\n\r\n{lines}\r\n{{\"aps\":{{}}}}");
        assert_eq!(
            parse(&mcmt(&[&push])).unwrap_err(),
            McmtError::Part {
                part: 1,
                reason: too_large.clone()
            }
        );
        // A header block inside an email part.
        let email = format!("Content-Type: message/rfc822\r\n\r\n{lines}\r\nbody");
        assert_eq!(
            parse(&mcmt(&[&email, APN])).unwrap_err(),
            McmtError::Part {
                part: 1,
                reason: too_large
            }
        );
        // Just under the limit is read.
        let under = "a:\r\n".repeat(mime::MAX_HEADER_BLOCK / 4 - 100);
        let part = format!("{under}Content-Type: text/plain\r\n\r\nhi");
        assert_eq!(parsed(&mcmt(&[APN, &part])).push_parts.len(), 1);
    }

    /// `fields`, then an `X-Pad` header that makes the block `len` bytes long with its line endings (CRLF).
    fn block_of(fields: &str, len: usize) -> String {
        block_ending(fields, len, "\r\n")
    }

    /// [`block_of`] with the line ending `eol`.
    fn block_ending(fields: &str, len: usize, eol: &str) -> String {
        let pad = len - fields.len() - "X-Pad: ".len() - eol.len();
        let block = format!("{fields}X-Pad: {}{eol}", "a".repeat(pad));
        assert_eq!(block.len(), len);
        block
    }

    // A header block is measured by its length, whatever its lines: one line running past the limit with no empty
    // line after it (a REST template may end a part there) is over the limit as much as many short lines. Such a
    // line once reached the MIME parser whole.
    #[test]
    fn one_long_header_line_without_an_empty_line_is_over_the_limit() {
        let too_large = |part| McmtError::Part {
            part,
            reason: PartError::HeadersTooLarge {
                limit: mime::MAX_HEADER_BLOCK,
            },
        };
        let long = "a".repeat(10 * 1024 * 1024);
        // A part's MIME headers: one 10 MB line, no line ending, no body.
        let part = format!("X-Pad: {long}");
        assert_eq!(parse(&mcmt(&[APN, &part])).unwrap_err(), too_large(2));
        // The Content-Type itself, with a line ending but no empty line after it.
        let part = format!("Content-Type: text/plain; x=\"{long}\"\r\n");
        assert_eq!(parse(&mcmt(&[&part, APN])).unwrap_err(), too_large(1));
        // A push part's inner header block.
        let push = format!("Content-Type: message/vnd.msys.apn\r\n\r\nX-Device-Token: {long}");
        assert_eq!(parse(&mcmt(&[APN, &push])).unwrap_err(), too_large(2));
        // A header block inside an email part.
        let email = format!("Content-Type: message/rfc822\r\n\r\nSubject: {long}");
        assert_eq!(parse(&mcmt(&[APN, &email])).unwrap_err(), too_large(2));
        // A line past the limit that is not a header ends the block before it: that line is what is named.
        let json =
            format!("Content-Type: message/vnd.msys.apn\r\n{{\"aps\":{{\"alert\":\"{long}\"}}}}");
        assert_eq!(
            parse(&mcmt(&[&json])).unwrap_err(),
            McmtError::Part {
                part: 1,
                reason: PartError::MimeHeadersNotEnded { line: 2 }
            }
        );
        // The refusal names the part.
        assert_eq!(
            too_large(2).to_string(),
            "part 2: a header block in it is over 102400 bytes (herald's limit on one header block)"
        );
    }

    // The message's own header block and the parts' blocks are measured alike: the header lines with their line
    // endings, the empty line that ends the block not counted. A block of exactly the limit is read at every level,
    // one byte more is refused at every level.
    #[test]
    fn a_header_block_of_exactly_the_limit_is_read_at_every_level() {
        let max = mime::MAX_HEADER_BLOCK;
        let top = |len| {
            let block = block_of("Content-Type: multipart/vnd.msys.mcmt; boundary=B\r\n", len);
            format!("{block}\r\n--B\r\n{APN}\r\n--B--\r\n")
        };
        assert_eq!(parsed(top(max).as_bytes()).push_parts.len(), 1);
        assert_eq!(
            parse(top(max + 1).as_bytes()).unwrap_err(),
            McmtError::HeadersTooLarge { limit: max }
        );
        // With LF line endings (REST templates) as with CRLF.
        let top_lf = |len| {
            let block = block_ending(
                "Content-Type: multipart/vnd.msys.mcmt; boundary=B\n",
                len,
                "\n",
            );
            format!("{block}\n--B\n{}\n--B--\n", APN.replace("\r\n", "\n"))
        };
        assert_eq!(parsed(top_lf(max).as_bytes()).push_parts.len(), 1);
        assert_eq!(
            parse(top_lf(max + 1).as_bytes()).unwrap_err(),
            McmtError::HeadersTooLarge { limit: max }
        );

        let too_large = |part| McmtError::Part {
            part,
            reason: PartError::HeadersTooLarge { limit: max },
        };
        // A part's MIME headers.
        let part = |len| format!("{}\r\nhi", block_of("Content-Type: text/plain\r\n", len));
        assert_eq!(parsed(&mcmt(&[APN, &part(max)])).push_parts.len(), 1);
        assert_eq!(
            parse(&mcmt(&[APN, &part(max + 1)])).unwrap_err(),
            too_large(2)
        );
        // A push part's inner header block.
        let push = |len| {
            format!(
                "Content-Type: message/vnd.msys.apn\r\n\r\n{}\r\n{{}}",
                block_of("X-Device-Token: ab\r\n", len)
            )
        };
        assert_eq!(
            parsed(&mcmt(&[&push(max)])).push_parts[0].token.as_deref(),
            Some("ab")
        );
        assert_eq!(parse(&mcmt(&[&push(max + 1)])).unwrap_err(), too_large(1));
        // A header block inside an email part.
        let email = |len| {
            format!(
                "Content-Type: message/rfc822\r\n\r\n{}\r\nbody",
                block_of("Subject: x\r\n", len)
            )
        };
        assert_eq!(parsed(&mcmt(&[&email(max), APN])).push_parts[0].number, 2);
        assert_eq!(
            parse(&mcmt(&[&email(max + 1), APN])).unwrap_err(),
            too_large(1)
        );
    }

    // Ordinary mail whose header block is over the limit is not MCMT, as with a smaller block: its Content-Type (the
    // last one, as the MIME parser reads) is looked up without the MIME parser reading the block. Only an MCMT
    // message is refused for the size of its header block.
    #[test]
    fn ordinary_mail_with_a_large_header_block_is_not_mcmt() {
        let lines = "Received: from x\r\n".repeat(mime::MAX_HEADER_BLOCK / 18 + 10);
        let mcmt_type = "Content-Type: multipart/vnd.msys.mcmt; boundary=\"B\"\r\n";
        let body = format!("\r\n--B\r\n{APN}\r\n--B--\r\n");
        let too_large = Err(McmtError::HeadersTooLarge {
            limit: mime::MAX_HEADER_BLOCK,
        });
        for (raw, want) in [
            // Text mail, its Content-Type before or after the limit, or none at all.
            (
                format!("Content-Type: text/plain\r\n{lines}\r\nhello\r\n"),
                Ok(Parsed::NotMcmt),
            ),
            (
                format!("{lines}Content-Type: text/plain\r\n\r\nhello\r\n"),
                Ok(Parsed::NotMcmt),
            ),
            (
                format!("Subject: hi\r\n{lines}\r\nhello\r\n"),
                Ok(Parsed::NotMcmt),
            ),
            (format!("{lines}\r\n\r\nhello\r\n"), Ok(Parsed::NotMcmt)),
            // The last Content-Type decides, folded or not.
            (
                format!("{mcmt_type}{lines}Content-Type:\r\n text/plain\r\n{body}"),
                Ok(Parsed::NotMcmt),
            ),
            (
                format!(
                    "Content-Type: text/plain\r\n{lines}Content-Type:\r\n\tmultipart/vnd.msys.mcmt;\r\n boundary=B\r\n{body}"
                ),
                too_large.clone(),
            ),
            // MCMT, its Content-Type before or after the limit.
            (format!("{mcmt_type}{lines}{body}"), too_large.clone()),
            (format!("{lines}{mcmt_type}{body}"), too_large.clone()),
            // A Content-Type field over the limit itself: its type comes first.
            (
                format!(
                    "Content-Type: multipart/vnd.msys.mcmt; boundary=B; x=\"{}\"\r\n{body}",
                    "a".repeat(10 * 1024 * 1024)
                ),
                too_large.clone(),
            ),
            (
                format!(
                    "Content-Type: text/plain; x=\"{}\"\r\n\r\nhello",
                    "a".repeat(2 * mime::MAX_HEADER_BLOCK)
                ),
                Ok(Parsed::NotMcmt),
            ),
        ] {
            assert_eq!(parse(raw.as_bytes()), want, "{}", &raw[..80]);
        }
    }

    #[test]
    fn deep_mime_nesting_is_refused_naming_the_limit() {
        // 50000 nested message/rfc822 header blocks (1.6 MB): the MIME parser used to build one nested message per
        // level, whose drop overflowed the stack and aborted the process.
        let deep = "Content-Type: message/rfc822\r\n\r\n".repeat(50_000);
        let raw = mcmt(&[&deep, APN]);
        let e = parse_on_small_stack(raw).unwrap_err();
        assert_eq!(
            e,
            McmtError::Part {
                part: 1,
                reason: PartError::TooDeep {
                    limit: MAX_MIME_DEPTH
                }
            }
        );
        assert_eq!(
            e.to_string(),
            "part 1: its MIME parts nest more than 32 levels deep (herald's limit, counting the MCMT container)"
        );
        // Multiparts nest as deep, each with its own boundary; and an email part that is a multipart itself.
        let mut deep = String::new();
        for i in 0..20_000 {
            deep.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"
            ));
        }
        let raw = mcmt(&[APN, &deep]);
        assert_eq!(
            parse_on_small_stack(raw).unwrap_err(),
            McmtError::Part {
                part: 2,
                reason: PartError::TooDeep {
                    limit: MAX_MIME_DEPTH
                }
            }
        );
        // At the limit (the container, then 31 messages): the email part is read and ignored; one more is refused.
        let ok = "Content-Type: message/rfc822\r\n\r\n".repeat(MAX_MIME_DEPTH - 1)
            + "Subject: x\r\n\r\nbody";
        let m = parsed(&mcmt(&[&ok, APN]));
        assert_eq!(m.push_parts[0].number, 2);
        let too_deep = format!("Content-Type: message/rfc822\r\n\r\n{ok}");
        assert_eq!(
            parse(&mcmt(&[&too_deep, APN])).unwrap_err(),
            McmtError::Part {
                part: 1,
                reason: PartError::TooDeep {
                    limit: MAX_MIME_DEPTH
                }
            }
        );
    }

    #[test]
    fn a_part_whose_headers_run_into_its_body_is_refused_by_its_ordinal() {
        let no_blank = "Content-Type: message/vnd.msys.apn\r\nX-Device-Token: ab\r\n{\"aps\":{\"alert\":\"x\"}}";
        let raw = mcmt(&[APN, no_blank, APN]);
        let e = parse(&raw).unwrap_err();
        assert_eq!(
            e,
            McmtError::Part {
                part: 2,
                reason: PartError::MimeHeadersNotEnded { line: 3 }
            }
        );
        assert_eq!(
            e.to_string(),
            "part 2: line 3 of the part is not a MIME header (Name: value): a part's MIME headers must be followed by a blank line, then its body"
        );
        // The only part: named, not "the container has no parts".
        assert_eq!(
            parse(&mcmt(&[no_blank])).unwrap_err(),
            McmtError::Part {
                part: 1,
                reason: PartError::MimeHeadersNotEnded { line: 3 }
            }
        );
        // Part numbers are delimiter ordinals, also after an empty part: one holding an empty line, and one whose
        // delimiter line is followed directly by the next (`--B` CRLF `--B`: the CRLF belongs to the delimiter).
        let raw = mcmt(&["", APN]);
        assert_eq!(parsed(&raw).push_parts[0].number, 2);
        let raw = format!(
            "Content-Type: multipart/vnd.msys.mcmt; boundary=B\r\n\r\n--B\r\n--B\r\n{APN}\r\n--B--\r\n"
        );
        let m = parsed(raw.as_bytes());
        assert_eq!(m.push_parts.len(), 1);
        assert_eq!(m.push_parts[0].number, 2);
    }

    // The container is split at its own delimiter lines first, so an email part's multipart that never closes
    // cannot swallow the parts after it: the email part is not herald's to judge and is ignored.
    #[test]
    fn an_email_part_with_an_unclosed_multipart_is_ignored() {
        for email in [
            "Content-Type: message/rfc822\r\n\r\nSubject: x\r\nContent-Type: multipart/alternative; boundary=C\r\n\r\n--C\r\nContent-Type: text/plain\r\n\r\nhi",
            "Content-Type: multipart/alternative; boundary=C\r\n\r\n--C\r\nContent-Type: text/plain\r\n\r\nhi",
            "Content-Type: multipart/alternative; boundary=C\r\n\r\n--C\r\n\r\nhi\r\n--C--",
        ] {
            let m = parsed(&mcmt(&[email, APN, APN]));
            let numbers: Vec<usize> = m.push_parts.iter().map(|p| p.number).collect();
            assert_eq!(numbers, [2, 3], "{email}");
        }
    }

    #[test]
    fn the_container_must_be_closed_once() {
        let mut raw = mcmt(&[APN]);
        let cut = raw.len() - "--B--\r\n".len();
        assert_eq!(
            parse(&raw[..cut]).unwrap_err().to_string(),
            "the MCMT container is not closed: no --B-- line follows its last part (is the message truncated?)"
        );
        // RFC 2046 §5.1.1: the epilogue is ignored; a close delimiter repeated there opens no part.
        raw.extend_from_slice(b"epilogue\r\n--B--\r\n--B--  \r\n");
        assert_eq!(parsed(&raw).push_parts.len(), 1);
        // An opening delimiter there would start a part that is never read.
        raw.extend_from_slice(b"--B\r\n");
        raw.extend_from_slice(APN.as_bytes());
        raw.extend_from_slice(b"\r\n--B--\r\n");
        let e = parse(&raw).unwrap_err();
        assert_eq!(
            e,
            McmtError::DelimiterAfterClose {
                boundary: "B".into()
            }
        );
        assert_eq!(
            e.to_string(),
            "a --B line follows the MCMT container's close delimiter --B--: the part after it would be lost"
        );
    }

    // RFC 5322 §4.2: a line of spaces or tabs in a header block continues the header before it; only an empty line
    // ends the block. Such a line once ended a push part's MIME headers, which dropped the part (`250` with one
    // notification fewer), and the top-level headers, which lost X-Binding and Return-Path.
    #[test]
    fn a_white_space_line_in_a_header_block_is_a_continuation() {
        let folded = "X-Mailer: app\r\n \r\nContent-Type: message/vnd.msys.apn\r\n\r\nX-Device-Token: cd\r\n\r\n{}";
        let m = parsed(&mcmt(&[APN, folded]));
        let got: Vec<_> = m
            .push_parts
            .iter()
            .map(|p| (p.number, p.token.as_deref()))
            .collect();
        assert_eq!(got, [(1, Some("ab")), (2, Some("cd"))]);
        // In the inner block: the topic after it is a header, not the start of the payload.
        let inner = "Content-Type: message/vnd.msys.apn\r\n\r\nX-Device-Token: ab\r\n\t\r\nX-APNs-Topic: t\r\n\r\n{}";
        let p = &parsed(&mcmt(&[inner])).push_parts[0];
        assert_eq!(
            (p.headers.topic.as_deref(), &p.payload[..]),
            (Some("t"), &b"{}"[..])
        );
        // At the top level.
        let raw = format!(
            "Subject: x\r\n \r\nContent-Type: multipart/vnd.msys.mcmt; boundary=B\r\n\t \r\nX-Binding: b2\r\n\
             Return-Path: <r@example.com>\r\n\r\n--B\r\n{APN}\r\n--B--\r\n"
        );
        let m = parsed(raw.as_bytes());
        assert_eq!(m.binding.as_deref(), Some("b2"));
        assert_eq!(m.return_path.as_deref(), Some("<r@example.com>"));
        // First in a part, it continues nothing: the part cannot be read, and is named rather than dropped.
        let first = " \r\nContent-Type: message/vnd.msys.apn\r\n\r\nX-Device-Token: cd\r\n\r\n{}";
        let e = parse(&mcmt(&[APN, first])).unwrap_err();
        assert_eq!(
            e,
            McmtError::Part {
                part: 2,
                reason: PartError::MimeHeadersStartFolded
            }
        );
        assert_eq!(
            e.to_string(),
            "part 2: its first line starts with a space or tab, but no MIME header precedes it to continue (a line of spaces or tabs continues the header before it; only an empty line ends a part's MIME headers)"
        );
    }

    // A message whose first line is empty has no headers: not MCMT, as before the body was split by herald (the
    // REST injector says so; SMTP answers 554 for both). An empty message has no header block.
    #[test]
    fn a_message_starting_with_an_empty_line_is_not_mcmt() {
        let raw = format!(
            "\r\nContent-Type: multipart/vnd.msys.mcmt; boundary=B\r\n\r\n--B\r\n{APN}\r\n--B--\r\n"
        );
        assert_eq!(parse(raw.as_bytes()), Ok(Parsed::NotMcmt));
        assert_eq!(parse(b"\n"), Ok(Parsed::NotMcmt));
        assert_eq!(parse(b" \r\nSubject: x\r\n\r\n"), Ok(Parsed::NotMcmt));
        assert_eq!(parse(b""), Err(McmtError::NoHeaders));
    }

    // RFC 5322 field names (printable ASCII but `:`) in both header blocks of a push part; a JSON line after the
    // headers is still no header.
    #[test]
    fn rfc_5322_field_names_are_headers() {
        let part = "Content-Type: message/vnd.msys.apn\r\nX-Foo/Bar: 1\r\n\r\nX-Foo[1]: 1\r\nX-Device-Token: ab\r\n\r\n{}";
        let m = parsed(&mcmt(&[part]));
        assert_eq!(m.push_parts[0].token.as_deref(), Some("ab"));
        let json_in_mime = "Content-Type: message/vnd.msys.apn\r\nX-Foo/Bar: 1\r\n{\"aps\":{}}";
        assert_eq!(
            parse(&mcmt(&[json_in_mime])).unwrap_err(),
            McmtError::Part {
                part: 1,
                reason: PartError::MimeHeadersNotEnded { line: 3 }
            }
        );
        let json_in_inner =
            "Content-Type: message/vnd.msys.apn\r\n\r\nX-Foo[1]: 1\r\n{\"aps\":{}}\r\n";
        assert_eq!(
            parse(&mcmt(&[json_in_inner])).unwrap_err(),
            McmtError::Part {
                part: 1,
                reason: PartError::UnterminatedHeaders
            }
        );
    }

    // A Content-Type folded anywhere a structured header may be (RFC 5322 §2.2.3), after the `/` included, is read
    // as written: the part is a push part, not skipped. At the top level, the container is MCMT.
    #[test]
    fn a_folded_content_type_is_read_as_written() {
        for folded in [
            "Content-Type: message/\r\n vnd.msys.apn\r\n\r\nX-Device-Token: cd\r\n\r\n{}",
            "Content-Type: message/\r\n\tvnd.msys.apn\r\n\r\nX-Device-Token: cd\r\n\r\n{}",
            "Content-Type: message /\r\n vnd.msys.apn\r\n\r\nX-Device-Token: cd\r\n\r\n{}",
            "Content-Type: message/\n vnd.msys.apn\n\nX-Device-Token: cd\n\n{}",
        ] {
            assert_eq!(
                parsed(&mcmt(&[APN, folded])).push_parts.len(),
                2,
                "{folded:?}"
            );
        }
        let top = String::from_utf8(mcmt(&[APN]))
            .unwrap()
            .replace("multipart/vnd.msys.mcmt", "multipart/\r\n vnd.msys.mcmt");
        assert_eq!(parsed(top.as_bytes()).push_parts.len(), 1);
    }

    // A part whose Content-Type is not type/subtype cannot be told a push part or not: refused, naming it, rather
    // than skipped with the message accepted.
    #[test]
    fn a_content_type_that_is_not_a_mime_type_is_refused() {
        for (bad, value) in [
            (
                "Content-Type: message\r\n\r\nX-Device-Token: cd\r\n\r\n{}",
                "message",
            ),
            (
                "Content-Type: ;message/vnd.msys.apn\r\n\r\n{}",
                ";message/vnd.msys.apn",
            ),
        ] {
            assert_eq!(
                parse(&mcmt(&[APN, bad])).unwrap_err(),
                McmtError::Part {
                    part: 2,
                    reason: PartError::UnreadableContentType {
                        value: value.to_owned()
                    }
                },
                "{bad:?}"
            );
        }
        // A part with no Content-Type at all is plain text (RFC 2045 §5.2): not a push part, not refused.
        assert_eq!(parsed(&mcmt(&[APN, "\r\nhello"])).push_parts.len(), 1);
    }

    // The Content-Type decides whether a part is a push part: given twice, whichever comes first or last, the part
    // is refused rather than read by the last one.
    #[test]
    fn a_repeated_content_type_is_refused() {
        for twice in [
            "Content-Type: message/vnd.msys.apn\r\ncontent-type: text/plain\r\n\r\n{}",
            "Content-Type: text/plain\r\nCONTENT-TYPE: message/vnd.msys.apn\r\n\r\n{}",
            "Content-Type: message/vnd.msys.apn\r\nContent-Type: message/vnd.msys.apn\r\n\r\n{}",
        ] {
            let e = parse(&mcmt(&[APN, twice])).unwrap_err();
            assert_eq!(
                e,
                McmtError::Part {
                    part: 2,
                    reason: PartError::RepeatedContentType
                },
                "{twice}"
            );
        }
        assert_eq!(
            McmtError::Part {
                part: 2,
                reason: PartError::RepeatedContentType
            }
            .to_string(),
            "part 2: Content-Type is given more than once in the part's MIME headers: whether it is a push part (message/vnd.msys.apn) would be ambiguous"
        );
    }

    // A Content-Transfer-Encoding is read without its comments.
    #[test]
    fn a_transfer_encoding_comment_is_not_the_encoding() {
        let inner = "X-Device-Token: abcd\r\n\r\n{\"aps\":{}}";
        let b64 = base64::engine::general_purpose::STANDARD.encode(inner);
        let part = format!(
            "Content-Type: message/vnd.msys.apn\r\nContent-Transfer-Encoding: base64 (the whole body)\r\n\r\n{b64}"
        );
        let p = &parsed(&mcmt(&[&part])).push_parts[0];
        assert_eq!(p.token.as_deref(), Some("abcd"));
        let part = "Content-Type: message/vnd.msys.apn\r\nContent-Transfer-Encoding: (plain) 7bit\r\n\r\n{}";
        assert_eq!(&parsed(&mcmt(&[part])).push_parts[0].payload[..], b"{}");
    }

    #[test]
    fn a_header_given_twice_in_a_block_is_refused() {
        let raw = mcmt(&[
            APN,
            "Content-Type: message/vnd.msys.apn\r\n\r\nX-Device-Token: aa\r\nX-Device-Token: bb\r\n\r\n{}",
        ]);
        let e = parse(&raw).unwrap_err();
        assert_eq!(
            e.to_string(),
            "part 2: header X-Device-Token is given more than once in the inner header block (APNs refuses repeated headers: give each once)"
        );
        let raw = mcmt(&[
            "Content-Type: message/vnd.msys.apn\r\nX-APNs-Topic: a\r\napns-topic: b\r\n\r\n{}",
        ]);
        assert_eq!(
            parse(&raw).unwrap_err().to_string(),
            "part 1: header X-APNs-Topic (or apns-topic) is given more than once in the part's MIME headers (APNs refuses repeated headers: give each once)"
        );
        // One in each block: the inner one wins, as documented.
        let raw = mcmt(&[
            "Content-Type: message/vnd.msys.apn\r\nX-APNs-Priority: 5\r\n\r\nX-APNs-Priority: 10\r\n\r\n{}",
        ]);
        assert_eq!(parsed(&raw).push_parts[0].headers.priority, Some(10));
    }

    #[test]
    fn a_mime_nesting_the_parser_asserts_on_is_refused_not_a_panic() {
        // Found by the `mcmt` fuzz target: a part whose delimiter follows a bare LF and a stray byte, then a part
        // with no blank line after its header. mail-parser asserted (debug builds) that it lost the enclosing
        // multipart when it read the parts; it now reads header blocks only. Either way the message is not
        // accepted and the session goes on.
        let raw = b"From: t2.0\r\nContent-Type: multipart/vnd.mss.mcmt; boundary=\"B\"\r\n\r\n--B\r\n\
Content-Type: message/rfc822\r\n\r\nSuype: m\n\r\xf5--B\r\nContent-Type: message/rfc822\r\nound\r\n\r\n\r\n--B--\r\n";
        let result = parse(raw);
        assert!(
            matches!(result, Ok(Parsed::NotMcmt) | Err(McmtError::Malformed)),
            "{result:?}"
        );
        // As MCMT: `--B` after a stray byte is content, not a delimiter line, so all is one email part.
        let raw = String::from_utf8_lossy(raw).replace("vnd.mss.mcmt", "vnd.msys.mcmt");
        assert_eq!(parse(raw.as_bytes()), Err(McmtError::NoPushPart));
        assert_eq!(
            McmtError::Malformed.to_string(),
            "the message's header block cannot be read"
        );
    }

    // Momentum falls back to a default only for a header that is not given: an empty `X-Device-Token` once sent the
    // push to the recipient's local part, another device, answered 250. Every header of `headers::SINGLE` given
    // empty, in either block, refuses the message naming the part, the header and the block.
    #[test]
    fn a_header_given_empty_is_refused_not_defaulted() {
        let parse = |raw: &[u8]| parse_with(raw, EmptyValue::Refused);
        for names in headers::SINGLE {
            for name in names.iter() {
                let inner = format!(
                    "Content-Type: message/vnd.msys.apn\r\n\r\n{name}:\r\nX-Pad: 1\r\n\r\n{{}}"
                );
                let mime = format!("Content-Type: message/vnd.msys.apn\r\n{name}:  \r\n\r\n{{}}");
                for (part, block) in [
                    (inner, HeaderBlockName::Inner),
                    (mime, HeaderBlockName::Mime),
                ] {
                    assert_eq!(
                        parse(&mcmt(&[APN, &part])).unwrap_err(),
                        McmtError::Part {
                            part: 2,
                            reason: PartError::EmptyHeader { names, block }
                        },
                        "{part:?}"
                    );
                }
            }
        }
        let part = "Content-Type: message/vnd.msys.apn\r\n\r\nX-Device-Token:\r\n\r\n{}";
        assert_eq!(
            parse(&mcmt(&[part])).unwrap_err().to_string(),
            "part 1: header X-Device-Token is given with an empty value in the inner header block (an empty header is not a missing one: give a value, or leave the header out)"
        );
        // A REST template renders the header empty for a recipient whose token is "" or null: not given there.
        assert_eq!(parsed(&mcmt(&[part])).push_parts[0].token, None);
    }

    // As the REST API, a priority or expiration is ASCII digits: Rust's parsing alone would take a leading `+`.
    #[test]
    fn priority_and_expiration_are_digits_only() {
        for (header, value, expected) in [
            ("X-APNs-Priority", "+10", "a priority (10, 5 or 1)"),
            ("apns-priority", "-5", "a priority (10, 5 or 1)"),
            (
                "X-APNs-Expiration",
                "+1700000000",
                "an epoch time in seconds",
            ),
            ("X-APNs-Expiration", "1 700", "an epoch time in seconds"),
        ] {
            let part =
                format!("Content-Type: message/vnd.msys.apn\r\n{header}: {value}\r\n\r\n{{}}");
            let e = parse(&mcmt(&[&part])).unwrap_err();
            assert!(
                matches!(
                    &e,
                    McmtError::Part {
                        part: 1,
                        reason: PartError::BadHeader { value: v, expected: x, .. }
                    } if v == value && *x == expected
                ),
                "{header}: {value}: {e:?}"
            );
        }
        let part = "Content-Type: message/vnd.msys.apn\r\nX-APNs-Priority: +10\r\n\r\n{}";
        assert_eq!(
            parse(&mcmt(&[part])).unwrap_err().to_string(),
            "part 1: header X-APNs-Priority: \"+10\" is not a priority (10, 5 or 1)"
        );
        let part = "Content-Type: message/vnd.msys.apn\r\nX-APNs-Priority: 05\r\nX-APNs-Expiration: 0\r\n\r\n{}";
        let p = &parsed(&mcmt(&[part])).push_parts[0];
        assert_eq!(
            (p.headers.priority, p.headers.expiration),
            (Some(5), Some(0))
        );
    }

    // The message's own X-Binding and Return-Path apply to every push part: given twice, which one applies would be
    // ambiguous, so the message is refused naming the header, as a repeat inside a push part is.
    #[test]
    fn a_top_level_header_given_twice_is_refused() {
        let with = |headers: &str| {
            format!(
                "{headers}Content-Type: multipart/vnd.msys.mcmt; boundary=B\r\n\r\n--B\r\n{APN}\r\n--B--\r\n"
            )
        };
        for (headers, names) in [
            ("X-Binding: b1\r\nX-Binding: b2\r\n", headers::BINDING),
            (
                "x-binding: b1\r\nSubject: s\r\nX-BINDING: b1\r\n",
                headers::BINDING,
            ),
            (
                "Return-Path: <a@example.com>\r\nReturn-Path: <b@example.com>\r\n",
                headers::RETURN_PATH,
            ),
        ] {
            assert_eq!(
                parse(with(headers).as_bytes()).unwrap_err(),
                McmtError::RepeatedHeader { names },
                "{headers:?}"
            );
        }
        assert_eq!(
            McmtError::RepeatedHeader {
                names: headers::BINDING
            }
            .to_string(),
            "header X-Binding is given more than once in the message's headers (which one applies would be ambiguous: give it once)"
        );
        // Once each is read.
        let m = parsed(with("X-Binding: b1\r\nReturn-Path: <a@example.com>\r\n").as_bytes());
        assert_eq!(
            (m.binding.as_deref(), m.return_path.as_deref()),
            (Some("b1"), Some("<a@example.com>"))
        );
    }

    // The message's own Content-Type decides whether it is MCMT and which boundary splits it: given twice, one of
    // them MCMT, mail readers differ on which applies (the MIME parser reads the last, Python's email the first), so
    // the message is refused naming it, in either order, as a part repeating it is. Ordinary mail repeating it is
    // not MCMT whichever applies.
    #[test]
    fn a_top_level_content_type_given_twice_is_refused() {
        let body = format!("\r\n--B\r\n{APN}\r\n--B--\r\n");
        let mcmt_type = "Content-Type: multipart/vnd.msys.mcmt; boundary=B\r\n";
        for headers in [
            format!("Content-Type: text/plain\r\n{mcmt_type}"),
            format!("{mcmt_type}Subject: s\r\ncontent-type: text/plain\r\n"),
            format!("{mcmt_type}CONTENT-TYPE: multipart/vnd.msys.mcmt; boundary=C\r\n"),
            // Folded after its `/`, as a part's type may be.
            "Content-Type: multipart/\r\n vnd.msys.mcmt; boundary=B\r\nContent-Type: text/plain\r\n".into(),
        ] {
            let raw = format!("{headers}{body}");
            assert_eq!(
                parse(raw.as_bytes()).unwrap_err(),
                McmtError::RepeatedContentType,
                "{headers:?}"
            );
        }
        // A message that is all header block, its last field without a line ending.
        assert_eq!(
            parse(format!("Content-Type: text/plain\r\n{}", mcmt_type.trim_end()).as_bytes())
                .unwrap_err(),
            McmtError::RepeatedContentType
        );
        assert_eq!(
            parse(
                format!("Content-Type: text/plain\r\nContent-Type: text/html\r\n{body}").as_bytes()
            ),
            Ok(Parsed::NotMcmt)
        );
        assert_eq!(
            McmtError::RepeatedContentType.to_string(),
            "Content-Type is given more than once in the message's headers: whether the message is MCMT (multipart/vnd.msys.mcmt), and which boundary splits it, would be ambiguous (give it once)"
        );
        // Once is read.
        assert_eq!(
            parsed(format!("{mcmt_type}{body}").as_bytes())
                .push_parts
                .len(),
            1
        );
    }

    // The message's own X-Binding or Return-Path given empty over SMTP is refused as a push part's is: an empty
    // X-Binding used to fall back to the default binding. A REST template that renders one empty leaves it not given.
    #[test]
    fn a_top_level_header_given_empty_is_refused_over_smtp() {
        let with = |headers: &str| {
            format!(
                "{headers}Content-Type: multipart/vnd.msys.mcmt; boundary=B\r\n\r\n--B\r\n{APN}\r\n--B--\r\n"
            )
        };
        for (headers, names) in [
            ("X-Binding:\r\n", headers::BINDING),
            ("x-binding: \r\n \r\nSubject: s\r\n", headers::BINDING),
            ("Return-Path:  \r\n", headers::RETURN_PATH),
        ] {
            let raw = with(headers);
            assert_eq!(
                parse_with(raw.as_bytes(), EmptyValue::Refused).unwrap_err(),
                McmtError::EmptyHeader { names },
                "{headers:?}"
            );
            let m = parsed(raw.as_bytes());
            assert_eq!((m.binding, m.return_path), (None, None), "{headers:?}");
        }
        assert_eq!(
            McmtError::EmptyHeader {
                names: headers::BINDING
            }
            .to_string(),
            "header X-Binding is given with an empty value in the message's headers (an empty header is not a missing one: give a value, or leave the header out)"
        );
        let m = parse_with(with("X-Binding: b1\r\n").as_bytes(), EmptyValue::Refused).unwrap();
        assert!(matches!(m, Parsed::Mcmt(m) if m.binding.as_deref() == Some("b1")));
    }

    // No APNs push takes a payload over MAX_PAYLOAD (VoIP over HTTP/2): a larger one is refused by its part before it
    // is copied; one of exactly that size goes on to the intake, which judges it for its push type and route.
    #[test]
    fn a_payload_larger_than_any_apns_push_takes_is_refused_by_its_part() {
        let payload = |len: usize| {
            let pad = len - "{\"a\":\"\"}".len();
            format!("{{\"a\":\"{}\"}}", "x".repeat(pad))
        };
        let part = |len| {
            format!(
                "Content-Type: message/vnd.msys.apn\r\n\r\nX-Device-Token: ab\r\n\r\n  {}\r\n",
                payload(len)
            )
        };
        assert_eq!(
            parsed(&mcmt(&[&part(MAX_PAYLOAD)])).push_parts[0]
                .payload
                .len(),
            MAX_PAYLOAD
        );
        let e = parse(&mcmt(&[APN, &part(MAX_PAYLOAD + 1)])).unwrap_err();
        assert_eq!(
            e,
            McmtError::Part {
                part: 2,
                reason: PartError::PayloadTooLarge {
                    size: MAX_PAYLOAD + 1,
                    limit: MAX_PAYLOAD
                }
            }
        );
        assert_eq!(
            e.to_string(),
            "part 2: payload is 5121 bytes; no APNs push allows more than 5120 (VoIP pushes over HTTP/2; other pushes allow less)"
        );
        // base64 alike, measured decoded.
        let b64 = base64::engine::general_purpose::STANDARD.encode(payload(MAX_PAYLOAD + 1));
        let part = format!(
            "Content-Type: message/vnd.msys.apn\r\nContent-Transfer-Encoding: base64\r\n\r\n{b64}"
        );
        assert!(matches!(
            parse(&mcmt(&[&part])).unwrap_err(),
            McmtError::Part {
                reason: PartError::PayloadTooLarge { .. },
                ..
            }
        ));
    }

    // A push part in an identity encoding is read where it lies in the message: only base64 is copied to decode it.
    #[test]
    fn identity_encodings_are_borrowed_not_copied() {
        let body = b"X-Device-Token: ab\r\n\r\n{}";
        for cte in [
            None,
            Some("7bit"),
            Some("8bit (json)"),
            Some("binary"),
            Some(""),
        ] {
            assert!(
                matches!(decode(cte, body), Ok(Cow::Borrowed(b)) if std::ptr::eq(b, &body[..])),
                "{cte:?}"
            );
        }
        assert!(matches!(decode(Some("base64"), b"e30="), Ok(Cow::Owned(v)) if v == b"{}"));
    }

    // base64's offset counts the base64 characters of the body, its line breaks and other white space left out: the
    // refusal says so, as the offset is not a position in the part as sent.
    #[test]
    fn a_base64_refusal_says_what_its_offset_counts() {
        let part = "Content-Type: message/vnd.msys.apn\r\nContent-Transfer-Encoding: base64\r\n\r\ne30=\r\ne3!=";
        assert_eq!(
            parse(&mcmt(&[part])).unwrap_err().to_string(),
            "part 1: the base64 body does not decode: Invalid symbol 61, offset 3. (the offset counts base64 characters, line breaks and other white space excluded)"
        );
    }
}
