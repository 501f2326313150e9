//! The MIME structure of an MCMT message, read with plain line scans.
//!
//! The container is split at its delimiter lines here, never by the MIME parser: every `--BOUNDARY` line is a part,
//! numbered by its ordinal, whatever the parts hold. The MIME parser (mail-parser) only ever reads single header
//! blocks, so a client's nesting never reaches it. Email parts (`message/rfc822`, `multipart/*`) are not delivered
//! but their structure is checked by [`check_email_part`]: at most [`super::MAX_MIME_DEPTH`] levels, and every
//! multipart inside them closed before the part ends. Both scans are linear in the message size and use no
//! recursion.

use mail_parser::{MessageParser, MessagePart, MimeHeaders};

use super::{HeaderList, MAX_MIME_DEPTH, PartError};

/// One line: its start offset, its text without the line ending (LF or CRLF), and the offset after the ending.
#[derive(Debug, Clone, Copy)]
pub(super) struct Line<'a> {
    pub start: usize,
    pub text: &'a [u8],
    pub end: usize,
    /// Whether a line ending follows (false only for the last line of a text that does not end in one).
    pub terminated: bool,
}

/// The lines of a text; LF and CRLF endings alike (SMTP gives CRLF, REST templates often LF).
pub(super) struct Lines<'a> {
    text: &'a [u8],
    pos: usize,
}

impl<'a> Lines<'a> {
    pub fn new(text: &'a [u8]) -> Self {
        Lines { text, pos: 0 }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Line<'a>> {
        let start = self.pos;
        let rest = self.text.get(start..).filter(|r| !r.is_empty())?;
        let (raw, end, terminated) = match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => (&rest[..nl], start + nl + 1, true),
            None => (rest, self.text.len(), false),
        };
        self.pos = end;
        let text = if terminated {
            raw.strip_suffix(b"\r").unwrap_or(raw)
        } else {
            raw
        };
        Some(Line {
            start,
            text,
            end,
            terminated,
        })
    }
}

/// A line of nothing but spaces and tabs: the end of a header block.
pub(super) fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|b| *b == b' ' || *b == b'\t')
}

/// Whether `line` is a delimiter line of `boundary` (RFC 2046 §5.1.1: `--` boundary, then `--` for the close
/// delimiter, then optional white space): `Some(true)` for the close delimiter.
pub(super) fn delimiter(line: &[u8], boundary: &[u8]) -> Option<bool> {
    let rest = line.strip_prefix(b"--")?.strip_prefix(boundary)?;
    let (close, rest) = match rest.strip_prefix(b"--") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    is_blank(rest).then_some(close)
}

/// How the parts of a container end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// No delimiter line at all.
    NoParts,
    /// Parts, then the close delimiter and an epilogue without delimiter lines.
    Closed,
    /// Parts, but no close delimiter: the message ends inside the last part.
    Unclosed,
    /// A delimiter line after the close delimiter: what follows it would not be read as parts.
    DelimiterAfterClose,
}

/// The parts of a multipart body, each as the bytes between its delimiter line and the line ending that precedes
/// the next delimiter (which RFC 2046 counts as part of the delimiter). The preamble is skipped. After the last
/// part, [`Parts::ending`] tells how the container ended.
pub(super) struct Parts<'a> {
    body: &'a [u8],
    boundary: &'a [u8],
    lines: Lines<'a>,
    /// Start of the part being read, once a delimiter has been seen.
    current: Option<usize>,
    /// End of the text of the previous line (before its line ending).
    prev_text_end: usize,
    closed: bool,
    ending: Option<Ending>,
}

impl<'a> Parts<'a> {
    pub fn new(body: &'a [u8], boundary: &'a [u8]) -> Self {
        Parts {
            body,
            boundary,
            lines: Lines::new(body),
            current: None,
            prev_text_end: 0,
            closed: false,
            ending: None,
        }
    }

    /// How the container ended; reads the rest of the body if the parts were not all taken.
    pub fn ending(mut self) -> Ending {
        while self.next().is_some() {}
        self.ending.unwrap_or(Ending::NoParts)
    }

    fn part(&self, start: usize) -> &'a [u8] {
        self.body
            .get(start..self.prev_text_end.max(start))
            .unwrap_or_default()
    }
}

impl<'a> Iterator for Parts<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.ending.is_some() {
            return None;
        }
        for line in self.lines.by_ref() {
            let found = delimiter(line.text, self.boundary);
            let prev_text_end =
                std::mem::replace(&mut self.prev_text_end, line.start + line.text.len());
            let Some(close) = found else {
                continue;
            };
            if self.closed {
                self.ending = Some(Ending::DelimiterAfterClose);
                return None;
            }
            let previous = self.current.replace(line.end);
            self.closed = close;
            if let Some(start) = previous {
                let part = self
                    .body
                    .get(start..prev_text_end.max(start))
                    .unwrap_or_default();
                return Some(part);
            }
        }
        // End of the body.
        self.ending = Some(if self.closed {
            Ending::Closed
        } else if self.current.is_none() {
            Ending::NoParts
        } else {
            Ending::Unclosed
        });
        match (self.closed, self.current) {
            (false, Some(start)) => {
                self.prev_text_end = self.body.len();
                Some(self.part(start))
            }
            _ => None,
        }
    }
}

/// A header block: its fields and where the body after it starts.
#[derive(Debug)]
pub(super) struct HeaderBlock {
    pub fields: HeaderList,
    /// Offset of the body (after the blank line), or the text's length when there is none.
    pub body: usize,
    /// Whether a blank line ended the block.
    pub blank_line: bool,
}

/// A line of a header block that is neither a field, a continuation of one, nor the blank line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BadLine {
    /// 1-based line number within the block.
    pub number: usize,
    /// The line starts with `{`: a JSON payload where a header or the blank line was due.
    pub json: bool,
    /// The line is the last of the text and has no line ending.
    pub last: bool,
}

/// Reads `Name: value` lines (a line starting with a space or tab continues the previous one) up to a blank line.
/// Names are RFC 9110 tokens, so a JSON line is never taken for a header.
pub(super) fn header_block(text: &[u8]) -> Result<HeaderBlock, BadLine> {
    let mut fields: HeaderList = Vec::new();
    for (i, line) in Lines::new(text).enumerate() {
        if is_blank(line.text) {
            return Ok(HeaderBlock {
                fields,
                body: line.end,
                blank_line: true,
            });
        }
        let bad = BadLine {
            number: i + 1,
            json: line.text.first() == Some(&b'{'),
            last: !line.terminated,
        };
        let value = String::from_utf8_lossy(line.text);
        if matches!(line.text.first(), Some(b' ' | b'\t')) {
            let (_, v) = fields.last_mut().ok_or(bad)?;
            if !v.is_empty() {
                v.push(' ');
            }
            v.push_str(value.trim());
            continue;
        }
        match value.split_once(':') {
            Some((name, v)) => {
                let name = name.trim_end_matches([' ', '\t']);
                if name.is_empty() || !name.bytes().all(is_tchar) {
                    return Err(bad);
                }
                fields.push((name.to_owned(), v.trim().to_owned()));
            }
            None => return Err(bad),
        }
    }
    Ok(HeaderBlock {
        fields,
        body: text.len(),
        blank_line: false,
    })
}

/// RFC 9110 `tchar`: what a header name is made of.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Where the top-level header block of a message ends: the offset of the body (after the first blank line), or
/// the message's length when it has no blank line.
pub(super) fn top_block_end(raw: &[u8]) -> usize {
    Lines::new(raw)
        .find(|l| is_blank(l.text))
        .map_or(raw.len(), |l| l.end)
}

/// What the `Content-Type` and `Content-Transfer-Encoding` of a header block say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct MimeType {
    /// Lowercase type and subtype; empty when there is no `Content-Type`.
    pub ctype: String,
    pub subtype: String,
    pub boundary: Option<Vec<u8>>,
    /// No transfer encoding, or 7bit, 8bit or binary: an encapsulated message can be read as it is.
    pub identity: bool,
}

impl MimeType {
    pub fn is(&self, (ctype, subtype): (&str, &str)) -> bool {
        self.ctype.eq_ignore_ascii_case(ctype) && self.subtype.eq_ignore_ascii_case(subtype)
    }

    /// `message/rfc822` or `message/global`: a whole message inside.
    fn is_message(&self) -> bool {
        self.ctype == "message" && matches!(self.subtype.as_str(), "rfc822" | "global")
    }

    fn multipart_boundary(&self) -> Option<&[u8]> {
        if self.ctype == "multipart" {
            self.boundary.as_deref().filter(|b| !b.is_empty())
        } else {
            None
        }
    }

    /// The default type of a part of a `multipart/digest` (RFC 2046 §5.1.5).
    fn digest_default() -> MimeType {
        MimeType {
            ctype: "message".into(),
            subtype: "rfc822".into(),
            boundary: None,
            identity: true,
        }
    }
}

/// The MIME type of a header block, read by the MIME parser (which handles quoting, comments and RFC 2231
/// parameters). `None` when the block has no readable `Content-Type`, or the parser gave up.
pub(super) fn mime_type(block: &[u8]) -> Option<MimeType> {
    // The MIME parser is a dependency that asserted on some malformed input (found by fuzzing, fuzz/README.md):
    // whatever a client sends, the message gets an answer rather than the session ending in a panic.
    let headers = std::panic::catch_unwind(|| MessageParser::new().parse_headers(block))
        .ok()
        .flatten()?;
    mime_type_of(headers.root_part())
}

/// The MIME type of a part the MIME parser has read.
pub(super) fn mime_type_of(root: &MessagePart<'_>) -> Option<MimeType> {
    let ct = root.content_type()?;
    let identity = root.content_transfer_encoding().is_none_or(|e| {
        ["7bit", "8bit", "binary"]
            .iter()
            .any(|x| e.trim().eq_ignore_ascii_case(x))
    });
    Some(MimeType {
        ctype: ct.ctype().to_ascii_lowercase(),
        subtype: ct.subtype().unwrap_or_default().to_ascii_lowercase(),
        boundary: ct.attribute("boundary").map(|b| b.as_bytes().to_vec()),
        identity,
    })
}

/// An open container inside an email part.
enum Frame {
    Multipart {
        boundary: Vec<u8>,
        digest: bool,
        ctype: String,
    },
    /// An encapsulated message: it ends where the enclosing part ends.
    Message,
}

/// What the scan expects next.
enum Mode {
    /// A header block starting at this offset; `digest` when a part without `Content-Type` is a message.
    Headers { start: usize, digest: bool },
    /// Body text (a leaf, a preamble or an epilogue): only delimiter lines matter.
    Body,
}

/// Checks the structure inside an email part (type `mime`, body `body`): containers nest at most
/// [`MAX_MIME_DEPTH`] levels counting the MCMT container, and every multipart is closed by its close delimiter
/// before the part, or the part of an enclosing multipart it sits in, ends. Nothing is decoded: a base64
/// `message/rfc822` is a leaf.
pub(super) fn check_email_part(mime: &MimeType, body: &[u8]) -> Result<(), PartError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut mode = enter(&mut stack, mime, 0)?;
    for line in Lines::new(body) {
        if let Some((k, close)) = find_delimiter(&stack, line.text) {
            if let Some(unclosed) = stack[k + 1..].iter().rev().find_map(multipart) {
                return Err(unclosed);
            }
            stack.truncate(k + 1);
            let digest = matches!(stack.last(), Some(Frame::Multipart { digest: true, .. }));
            if close {
                stack.pop();
                mode = Mode::Body;
            } else {
                mode = Mode::Headers {
                    start: line.end,
                    digest,
                };
            }
            continue;
        }
        if let Mode::Headers { start, digest } = mode
            && is_blank(line.text)
        {
            let block = body.get(start..line.end).unwrap_or_default();
            let found = mime_type(block).filter(|t| !t.ctype.is_empty());
            let t = match found {
                Some(t) => t,
                None if digest => MimeType::digest_default(),
                None => MimeType::default(),
            };
            mode = enter(&mut stack, &t, line.end)?;
        }
    }
    match stack.iter().rev().find_map(multipart) {
        Some(unclosed) => Err(unclosed),
        None => Ok(()),
    }
}

/// Opens the container a part of type `t` is (if it is one), its body starting at `body`.
fn enter(stack: &mut Vec<Frame>, t: &MimeType, body: usize) -> Result<Mode, PartError> {
    let mode = if let Some(boundary) = t.multipart_boundary() {
        stack.push(Frame::Multipart {
            boundary: boundary.to_vec(),
            digest: t.subtype == "digest",
            ctype: format!("{}/{}", t.ctype, t.subtype),
        });
        Mode::Body
    } else if t.is_message() && t.identity {
        stack.push(Frame::Message);
        Mode::Headers {
            start: body,
            digest: false,
        }
    } else {
        Mode::Body
    };
    // The MCMT container is the first level.
    if 1 + stack.len() > MAX_MIME_DEPTH {
        return Err(PartError::TooDeep {
            limit: MAX_MIME_DEPTH,
        });
    }
    Ok(mode)
}

/// The innermost open multipart whose delimiter `line` is, and whether it is the close delimiter.
fn find_delimiter(stack: &[Frame], line: &[u8]) -> Option<(usize, bool)> {
    if !line.starts_with(b"--") {
        return None;
    }
    stack.iter().enumerate().rev().find_map(|(k, f)| match f {
        Frame::Multipart { boundary, .. } => delimiter(line, boundary).map(|close| (k, close)),
        Frame::Message => None,
    })
}

/// The refusal for a multipart left open.
fn multipart(f: &Frame) -> Option<PartError> {
    match f {
        Frame::Multipart {
            boundary, ctype, ..
        } => Some(PartError::UnclosedMultipart {
            ctype: ctype.clone(),
            boundary: String::from_utf8_lossy(boundary).into_owned(),
        }),
        Frame::Message => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(body: &str, boundary: &str) -> (Vec<String>, Ending) {
        let mut it = Parts::new(body.as_bytes(), boundary.as_bytes());
        let got = it
            .by_ref()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .collect();
        (got, it.ending())
    }

    #[test]
    fn parts_are_split_at_whole_delimiter_lines_with_either_line_ending() {
        let (got, end) = parts(
            "preamble\r\n--B\r\nA: 1\r\n\r\none\r\n--B \t\r\n\r\ntwo --B\r\n--Bx\r\n--B--\r\nepilogue\r\n",
            "B",
        );
        assert_eq!(got, ["A: 1\r\n\r\none", "\r\ntwo --B\r\n--Bx"]);
        assert_eq!(end, Ending::Closed);
        let (got, end) = parts("--B\nA: 1\n\n{}\n--B\n--B--\n", "B");
        assert_eq!(got, ["A: 1\n\n{}", ""]);
        assert_eq!(end, Ending::Closed);
    }

    #[test]
    fn how_a_container_ends() {
        assert_eq!(parts("no delimiter\r\n", "B").1, Ending::NoParts);
        assert_eq!(parts("--B--\r\n", "B"), (vec![], Ending::Closed));
        let (got, end) = parts("--B\r\nA: 1\r\n\r\ncut", "B");
        assert_eq!(
            (got, end),
            (vec!["A: 1\r\n\r\ncut".to_owned()], Ending::Unclosed)
        );
        let (got, end) = parts(
            "--B\r\n\r\none\r\n--B--\r\n--B\r\n\r\nlost\r\n--B--\r\n",
            "B",
        );
        assert_eq!(
            (got, end),
            (vec!["\r\none".to_owned()], Ending::DelimiterAfterClose)
        );
    }

    #[test]
    fn header_blocks_stop_at_a_line_that_is_not_a_header() {
        let b = header_block(b"A: 1\r\n  folded\r\nB:2\r\n\r\nbody").unwrap();
        assert_eq!(
            b.fields,
            [("A".into(), "1 folded".into()), ("B".into(), "2".into())]
        );
        assert_eq!(&b"A: 1\r\n  folded\r\nB:2\r\n\r\nbody"[b.body..], b"body");
        assert!(b.blank_line);
        let e = header_block(b"A: 1\r\n{\"aps\":{}}\r\n\r\n").unwrap_err();
        assert_eq!(
            e,
            BadLine {
                number: 2,
                json: true,
                last: false
            }
        );
        assert!(header_block(b" folded first\r\n\r\n").is_err());
        let b = header_block(b"A: 1\r\nB: 2").unwrap();
        assert!(!b.blank_line);
        assert_eq!(b.fields.len(), 2);
    }

    fn email(body: &str) -> Result<(), PartError> {
        let t = mime_type(b"Content-Type: message/rfc822\r\n\r\n").unwrap();
        check_email_part(&t, body.as_bytes())
    }

    #[test]
    fn email_parts_with_closed_multiparts_pass() {
        email(
            "Subject: x\r\nContent-Type: multipart/mixed; boundary=\"C\"\r\n\r\npre\r\n--C\r\n\
             Content-Type: multipart/alternative; boundary=D\r\n\r\n--D\r\n\r\ntext\r\n--D--\r\n\
             --C\r\nContent-Type: message/rfc822\r\n\r\nSubject: inner\r\n\r\nbody\r\n--C--\r\nepilogue",
        )
        .unwrap();
        // A digest's parts are messages by default.
        email(
            "Content-Type: multipart/digest; boundary=G\r\n\r\n--G\r\n\r\nSubject: a\r\n\r\nx\r\n--G--",
        )
        .unwrap();
    }

    #[test]
    fn an_unclosed_multipart_is_named() {
        let e = email("Content-Type: multipart/mixed; boundary=\"C\"\r\n\r\n--C\r\n\r\ntext\r\n")
            .unwrap_err();
        assert_eq!(
            e,
            PartError::UnclosedMultipart {
                ctype: "multipart/mixed".into(),
                boundary: "C".into()
            }
        );
        // Closed by the delimiter of an enclosing multipart instead of its own.
        let e = email(
            "Content-Type: multipart/mixed; boundary=C\r\n\r\n--C\r\n\
             Content-Type: multipart/related; boundary=D\r\n\r\n--D\r\n\r\nx\r\n--C--\r\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            PartError::UnclosedMultipart {
                ctype: "multipart/related".into(),
                boundary: "D".into()
            }
        );
    }

    #[test]
    fn nesting_is_bounded_for_messages_and_multiparts_alike() {
        let levels = |n: usize, multipart: bool| {
            let mut s = String::new();
            for i in 0..n {
                if multipart {
                    s.push_str(&format!(
                        "Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n"
                    ));
                } else {
                    s.push_str("Content-Type: message/rfc822\r\n\r\n");
                }
            }
            s.push_str("\r\nleaf\r\n");
            if multipart {
                for i in (0..n).rev() {
                    s.push_str(&format!("--b{i}--\r\n"));
                }
            }
            s
        };
        // The container, the email part, then 30 more levels: 32.
        email(&levels(30, false)).unwrap();
        email(&levels(30, true)).unwrap();
        for multipart in [false, true] {
            assert_eq!(
                email(&levels(31, multipart)),
                Err(PartError::TooDeep { limit: 32 })
            );
        }
    }
}
