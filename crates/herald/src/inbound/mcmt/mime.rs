//! The MIME structure of an MCMT message, read with plain line scans.
//!
//! The container is split at its delimiter lines here, never by the MIME parser: every `--BOUNDARY` line is a part,
//! numbered by its ordinal, whatever the parts hold. The MIME parser (mail-parser) only ever reads single header
//! blocks, so a client's nesting never reaches it. Email parts (`message/rfc822`, `multipart/*`) are not delivered
//! but their nesting is bounded by [`check_email_part`]: at most [`super::MAX_MIME_DEPTH`] levels. Both scans are
//! linear in the message size and use no recursion.
//!
//! A header block ends at an empty line only: a line of spaces and tabs inside one is a folded continuation of the
//! header before it (RFC 5322 §4.2, obsolete syntax that mail readers and the MIME parser accept).

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

/// A line of nothing but spaces and tabs (or nothing at all).
fn is_white(line: &[u8]) -> bool {
    line.iter().all(|b| *b == b' ' || *b == b'\t')
}

/// The empty line that ends a header block. A line of spaces or tabs does not: it continues the header before it.
fn ends_block(line: &[u8]) -> bool {
    line.is_empty()
}

/// Whether `line` is a delimiter line of `boundary` (RFC 2046 §5.1.1: `--` boundary, then `--` for the close
/// delimiter, then optional white space): `Some(true)` for the close delimiter.
pub(super) fn delimiter(line: &[u8], boundary: &[u8]) -> Option<bool> {
    let rest = line.strip_prefix(b"--")?.strip_prefix(boundary)?;
    let (close, rest) = match rest.strip_prefix(b"--") {
        Some(r) => (true, r),
        None => (false, rest),
    };
    is_white(rest).then_some(close)
}

/// How the parts of a container end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// No delimiter line at all.
    NoParts,
    /// Parts, then the close delimiter and an epilogue (ignored, RFC 2046 §5.1.1) in which only close delimiters
    /// may repeat.
    Closed,
    /// Parts, but no close delimiter: the message ends inside the last part.
    Unclosed,
    /// A delimiter line that opens a part after the close delimiter: that part would not be read.
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
                // A close delimiter in the epilogue starts nothing; an opening one would start a part that is lost.
                if close {
                    continue;
                }
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
    /// Offset of the body (after the empty line), or the text's length when there is none.
    pub body: usize,
    /// Whether an empty line ended the block.
    pub blank_line: bool,
}

/// A line of a header block that is neither a field, a continuation of one, nor the empty line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct BadLine {
    /// 1-based line number within the block.
    pub number: usize,
    /// The line starts with `{` or `[`: a JSON payload where a header or the empty line was due.
    pub json: bool,
    /// The line is the last of the text and has no line ending.
    pub last: bool,
    /// The line starts with a space or tab (a continuation) but no header precedes it.
    pub folded: bool,
}

/// Reads `Name: value` lines up to an empty line. A line starting with a space or tab continues the previous one,
/// also a line of nothing else (RFC 5322 obsolete folding: it is no end of the block). Names are RFC 5322 field
/// names (printable ASCII but `:`) that do not start with `{` or `[`, so a JSON line is never taken for a header.
pub(super) fn header_block(text: &[u8]) -> Result<HeaderBlock, BadLine> {
    let mut fields: HeaderList = Vec::new();
    for (i, line) in Lines::new(text).enumerate() {
        if ends_block(line.text) {
            return Ok(HeaderBlock {
                fields,
                body: line.end,
                blank_line: true,
            });
        }
        let bad = BadLine {
            number: i + 1,
            json: matches!(line.text.first(), Some(b'{' | b'[')),
            last: !line.terminated,
            folded: false,
        };
        if matches!(line.text.first(), Some(b' ' | b'\t')) {
            let value = String::from_utf8_lossy(line.text);
            let (_, v) = fields.last_mut().ok_or(BadLine {
                folded: true,
                ..bad
            })?;
            let more = value.trim();
            if !v.is_empty() && !more.is_empty() {
                v.push(' ');
            }
            v.push_str(more);
            continue;
        }
        let (name, v) = field(line.text).ok_or(bad)?;
        fields.push((
            String::from_utf8_lossy(name).into_owned(),
            String::from_utf8_lossy(v).trim().to_owned(),
        ));
    }
    Ok(HeaderBlock {
        fields,
        body: text.len(),
        blank_line: false,
    })
}

/// A header field line split into its name and its value (after the colon), if it is one: the name is an RFC 5322
/// field name, white space before the colon aside (RFC 5322 §4.5.3, obsolete syntax).
fn field(line: &[u8]) -> Option<(&[u8], &[u8])> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (name, value) = line.split_at(colon);
    let name = trim_end_white(name);
    is_field_name(name).then(|| (name, value.get(1..).unwrap_or_default()))
}

/// `text` without the spaces and tabs at its end.
fn trim_end_white(text: &[u8]) -> &[u8] {
    let end = text
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(0, |i| i + 1);
    text.get(..end).unwrap_or_default()
}

/// An RFC 5322 field name (`ftext`: printable ASCII, 33 to 126, but `:`) that does not start with `{` or `[`: a JSON
/// value does (`{"aps":…}` would otherwise be the field `{"aps"`), and no header name in use does.
fn is_field_name(name: &[u8]) -> bool {
    match name.first() {
        None | Some(b'{' | b'[') => false,
        Some(_) => name.iter().all(|&b| (33..=126).contains(&b) && b != b':'),
    }
}

/// Where the top-level header block of a message ends: the offset of the body (after the first empty line), or
/// the message's length when it has no empty line. `None` when the block is over [`MAX_HEADER_BLOCK`]; the scan
/// then stops at the limit.
pub(super) fn top_block_end(raw: &[u8]) -> Option<usize> {
    let head = limit_head(raw);
    for line in Lines::new(head) {
        if ends_block(line.text) {
            return Some(line.end);
        }
        if line.end > MAX_HEADER_BLOCK {
            return None;
        }
    }
    // No empty line: the whole message is the block, within the limit unless the message goes on past the head.
    (head.len() == raw.len()).then_some(raw.len())
}

/// The MIME type the last `Content-Type` field of a message's top-level header block gives (the MIME parser reads
/// the last one), for a block over [`MAX_HEADER_BLOCK`] that the MIME parser is never given: the block is scanned
/// to its empty line without being copied, and only that field, at most [`MAX_HEADER_BLOCK`] bytes of it (the type
/// comes first), is parsed.
pub(super) fn top_content_type(raw: &[u8]) -> Option<MimeType> {
    // Start and end of the last Content-Type field, with its continuation lines.
    let mut last: Option<(usize, usize)> = None;
    let mut in_content_type = false;
    for line in Lines::new(raw) {
        if ends_block(line.text) {
            break;
        }
        if matches!(line.text.first(), Some(b' ' | b'\t')) {
            if let (true, Some((_, end))) = (in_content_type, last.as_mut()) {
                *end = line.end;
            }
            continue;
        }
        in_content_type =
            field(line.text).is_some_and(|(name, _)| name.eq_ignore_ascii_case(b"Content-Type"));
        if in_content_type {
            last = Some((line.start, line.end));
        }
    }
    let (start, end) = last?;
    let end = end.min(start.saturating_add(MAX_HEADER_BLOCK));
    let mut field = raw.get(start..end)?.to_vec();
    // The MIME parser reads a field up to its line ending: a field cut at the limit is given one.
    if !field.ends_with(b"\n") {
        field.extend_from_slice(b"\r\n");
    }
    mime_type(&field)
}

/// A header value without its RFC 5322 comments (`(…)`, nested, `\` quoting the next character) and with its runs
/// of white space made one space, trimmed: `7bit (plain)` is `7bit`. Quoted strings are kept as they are.
pub(super) fn without_comments(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut depth = 0usize;
    let mut quoted = false;
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' if depth > 0 || quoted => {
                let next = chars.next();
                if depth == 0 {
                    out.push(c);
                    out.extend(next);
                }
            }
            '(' if !quoted => {
                // A comment separates what is around it, as white space does.
                if depth == 0 && !out.is_empty() && !out.ends_with(' ') {
                    out.push(' ');
                }
                depth += 1;
            }
            ')' if depth > 0 => depth -= 1,
            '"' if depth == 0 => {
                quoted = !quoted;
                out.push(c);
            }
            _ if depth > 0 => {}
            c if c.is_whitespace() && !quoted => {
                if !out.is_empty() && !out.ends_with(' ') {
                    out.push(' ');
                }
            }
            c => out.push(c),
        }
    }
    out.trim_end().to_owned()
}

/// What the `Content-Type` and `Content-Transfer-Encoding` of a header block say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct MimeType {
    /// Lowercase type and subtype; empty when there is no `Content-Type`.
    pub ctype: String,
    pub subtype: String,
    pub boundary: Option<Vec<u8>>,
    /// Any transfer encoding but base64 (comments aside): an encapsulated message is scanned as it is. Under base64
    /// its bytes say nothing and it is a leaf. An unknown encoding is scanned, so the depth check stays on.
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

/// The most bytes one header block may have (the message's, a part's, or one inside an email part), its lines
/// counted with their line endings and the empty line that ends it not counted: as Postfix's `header_size_limit`.
/// The MIME parser keeps every header it reads, some 200 bytes for a 4-byte line, so an unbounded block would let a
/// 10 MiB message take gigabytes.
pub(super) const MAX_HEADER_BLOCK: usize = 100 * 1024;

/// The part of `text` a limit check reads: [`MAX_HEADER_BLOCK`] bytes and two more, so that an empty line starting
/// right at the limit is seen whole (CRLF) and any other line there is seen to go past it.
fn limit_head(text: &[u8]) -> &[u8] {
    text.get(..MAX_HEADER_BLOCK + 2).unwrap_or(text)
}

/// Whether the header block at the start of `text` is over [`MAX_HEADER_BLOCK`]: its lines up to the first empty
/// line, or up to the first line that is not a header (where [`header_block`] stops and names that line), with
/// their line endings, the empty line not counted. The block's length counts, whatever its lines: one line that
/// runs past the limit with no empty line after it is over it as much as many short ones. No more than the limit
/// and two bytes is read.
pub(super) fn block_over_limit(text: &[u8]) -> bool {
    let head = limit_head(text);
    for (i, line) in Lines::new(head).enumerate() {
        if ends_block(line.text) {
            return false;
        }
        // A line that runs past the head is seen only in part.
        let cut = !line.terminated && head.len() < text.len();
        if !is_header_line(line.text, i == 0, cut) {
            return false;
        }
        if line.end > MAX_HEADER_BLOCK {
            return true;
        }
    }
    false
}

/// Whether [`header_block`] reads `line` as part of a block (`first`: as its first line): a field, or a
/// continuation of the field before. A `cut` line, seen only in part, is a field if the part seen is one, or the
/// start of one (a field name with no colon yet).
fn is_header_line(line: &[u8], first: bool, cut: bool) -> bool {
    match line.first() {
        Some(b' ' | b'\t') => !first,
        _ if cut && !line.contains(&b':') => is_field_name(trim_end_white(line)),
        _ => field(line).is_some(),
    }
}

/// The MIME type of a header block, read by the MIME parser (which handles quoting, comments and RFC 2231
/// parameters) once the block's folded lines are joined (see [`unfolded`]). `None` when the block has no readable
/// `Content-Type`, or the parser gave up.
pub(super) fn mime_type(block: &[u8]) -> Option<MimeType> {
    let block = unfolded(block);
    // The MIME parser is a dependency that asserted on some malformed input (found by fuzzing, fuzz/README.md):
    // whatever a client sends, the message gets an answer rather than the session ending in a panic.
    let headers = std::panic::catch_unwind(|| MessageParser::new().parse_headers(&block))
        .ok()
        .flatten()?;
    mime_type_of(headers.root_part())
}

/// `block` with its folds removed (RFC 5322 §2.2.3: a line break followed by a space or tab is taken out, the
/// white space stays). The MIME parser ends a type or a subtype at a line break, so `message/` folded before
/// `vnd.msys.apn`, which is legal, would read as the type `message` with no subtype.
fn unfolded(block: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    let folded = |i: usize| matches!(block.get(i), Some(b' ' | b'\t'));
    if !block
        .iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && folded(i + 1))
    {
        return std::borrow::Cow::Borrowed(block);
    }
    let mut out = Vec::with_capacity(block.len());
    let mut i = 0;
    while let Some(&b) = block.get(i) {
        if b == b'\r' && block.get(i + 1) == Some(&b'\n') && folded(i + 2) {
            i += 2;
        } else if b == b'\n' && folded(i + 1) {
            i += 1;
        } else {
            out.push(b);
            i += 1;
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The MIME type of a part the MIME parser has read.
pub(super) fn mime_type_of(root: &MessagePart<'_>) -> Option<MimeType> {
    let ct = root.content_type()?;
    let identity = root
        .content_transfer_encoding()
        .is_none_or(|e| !without_comments(e).eq_ignore_ascii_case("base64"));
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

/// Checks the nesting inside an email part (type `mime`, body `body`): containers nest at most [`MAX_MIME_DEPTH`]
/// levels counting the MCMT container. Nothing else is judged: a multipart that is never closed ends with the part
/// (or with the enclosing multipart whose delimiter comes first), as mail readers take it. Nothing is decoded: a
/// base64 `message/rfc822` is a leaf.
pub(super) fn check_email_part(mime: &MimeType, body: &[u8]) -> Result<(), PartError> {
    let mut stack: Vec<Frame> = Vec::new();
    let mut mode = enter(&mut stack, mime, 0)?;
    for line in Lines::new(body) {
        if let Some((k, close)) = find_delimiter(&stack, line.text) {
            // Containers opened inside the part this delimiter ends end with it, closed or not.
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
        // The MIME parser reads every line of a block up to its empty line: each counts, with its line ending, the
        // empty line not counted (as at the top level and in the container's parts).
        if let Mode::Headers { start, .. } = mode
            && !ends_block(line.text)
            && line.end.saturating_sub(start) > MAX_HEADER_BLOCK
        {
            return Err(PartError::HeadersTooLarge {
                limit: MAX_HEADER_BLOCK,
            });
        }
        if let Mode::Headers { start, digest } = mode
            && ends_block(line.text)
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
    Ok(())
}

/// Opens the container a part of type `t` is (if it is one), its body starting at `body`.
fn enter(stack: &mut Vec<Frame>, t: &MimeType, body: usize) -> Result<Mode, PartError> {
    let mode = if let Some(boundary) = t.multipart_boundary() {
        stack.push(Frame::Multipart {
            boundary: boundary.to_vec(),
            digest: t.subtype == "digest",
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
        // The epilogue is ignored: a close delimiter repeated there opens no part.
        let (got, end) = parts(
            "--B\r\n\r\none\r\n--B--\r\n--B--\r\nepilogue\r\n--B-- \r\n",
            "B",
        );
        assert_eq!((got, end), (vec!["\r\none".to_owned()], Ending::Closed));
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
                last: false,
                folded: false
            }
        );
        let e = header_block(b" folded first\r\n\r\n").unwrap_err();
        assert!(e.folded && e.number == 1, "{e:?}");
        let b = header_block(b"A: 1\r\nB: 2").unwrap();
        assert!(!b.blank_line);
        assert_eq!(b.fields.len(), 2);
    }

    // RFC 5322 §4.2: a line of spaces or tabs in a header block is a folded (empty) continuation; only an empty line
    // ends the block, with either line ending.
    #[test]
    fn a_line_of_white_space_continues_a_header_block() {
        let text = b"X-Mailer: app\r\n \t\r\nContent-Type: message/vnd.msys.apn\r\n\r\nbody";
        let b = header_block(text).unwrap();
        assert_eq!(
            b.fields,
            [
                ("X-Mailer".into(), "app".into()),
                ("Content-Type".into(), "message/vnd.msys.apn".into())
            ]
        );
        assert_eq!(&text[b.body..], b"body");
        let b = header_block(b"A: 1\n  \n  more\n\nbody").unwrap();
        assert_eq!(b.fields, [("A".into(), "1 more".into())]);
        // First in a block, it continues nothing.
        let e = header_block(b" \r\nContent-Type: message/vnd.msys.apn\r\n\r\n").unwrap_err();
        assert!(e.folded && e.number == 1, "{e:?}");
        // The top-level block too: it ends at the empty line, not at the white-space line.
        let raw = b"Subject: x\r\n \r\nX-Binding: b\r\n\r\n--B--\r\n";
        assert_eq!(
            top_block_end(raw).map(|b| &raw[b..]),
            Some(&b"--B--\r\n"[..])
        );
    }

    /// A header line of `len` bytes with its line ending `eol`.
    fn line_of(len: usize, eol: &str) -> String {
        format!("X: {}{eol}", "a".repeat(len - "X: ".len() - eol.len()))
    }

    // A header block is over the limit by its length with its line endings, whatever its lines; the empty line that
    // ends it is not counted. One line running past the limit with no empty line after it is over it.
    #[test]
    fn the_header_block_limit_counts_the_length_whatever_the_lines() {
        let max = MAX_HEADER_BLOCK;
        for eol in ["\r\n", "\n"] {
            let within = line_of(max, eol);
            let over = line_of(max + 1, eol);
            assert!(!block_over_limit(format!("{within}{eol}body").as_bytes()));
            assert!(block_over_limit(format!("{over}{eol}body").as_bytes()));
            assert!(!block_over_limit(within.as_bytes()));
            assert!(block_over_limit(over.as_bytes()));
            // Many short lines count alike.
            let short = format!("A: 1{eol}").repeat(max / (4 + eol.len()) + 1);
            assert!(block_over_limit(short.as_bytes()));
            // The message's own block is measured the same way.
            let body = format!("{within}{eol}body");
            assert_eq!(top_block_end(body.as_bytes()), Some(max + eol.len()));
            assert_eq!(top_block_end(within.as_bytes()), Some(max));
            assert_eq!(top_block_end(format!("{over}{eol}body").as_bytes()), None);
            assert_eq!(top_block_end(over.as_bytes()), None);
        }
        // One line, no line ending.
        assert!(!block_over_limit(line_of(max, "").as_bytes()));
        assert!(block_over_limit(line_of(max + 1, "").as_bytes()));
        assert!(block_over_limit(line_of(10 * 1024 * 1024, "").as_bytes()));
        assert_eq!(
            top_block_end(line_of(10 * 1024 * 1024, "").as_bytes()),
            None
        );
        // A field name still being read at the limit, and a continuation across it, are header.
        assert!(block_over_limit("X".repeat(2 * max).as_bytes()));
        let folded = format!("A: 1\r\n {}", "a".repeat(2 * max));
        assert!(block_over_limit(folded.as_bytes()));
        // A line that is not a header ends the block, before the limit or across it: header_block names that line.
        let json = format!("A: 1\r\n{{\"aps\":\"{}\"}}", "a".repeat(2 * max));
        assert!(!block_over_limit(json.as_bytes()));
        let text = format!("A: 1\r\nnot a header\r\n{}", line_of(2 * max, "\r\n"));
        assert!(!block_over_limit(text.as_bytes()));
        assert!(!block_over_limit(
            format!(" {}", "a".repeat(2 * max)).as_bytes()
        ));
    }

    // The type of a top-level block over the limit comes from its last Content-Type field (as the MIME parser reads
    // the block), folded or not, cut at the limit when the field is longer.
    #[test]
    fn the_type_of_a_large_top_level_block_is_its_last_content_type() {
        let filler = "Received: x\r\n".repeat(MAX_HEADER_BLOCK / 13);
        let ctype = |raw: String| top_content_type(raw.as_bytes()).map(|t| (t.ctype, t.subtype));
        let mcmt = Some(("multipart".to_owned(), "vnd.msys.mcmt".to_owned()));
        let text = Some(("text".to_owned(), "plain".to_owned()));
        assert_eq!(
            ctype(format!(
                "{filler}content-type: multipart/vnd.msys.mcmt; boundary=B\r\n\r\n"
            )),
            mcmt
        );
        assert_eq!(
            ctype(format!(
                "Content-Type: multipart/vnd.msys.mcmt; boundary=B\r\n{filler}Content-Type :\r\n text/plain\r\n\r\n"
            )),
            text
        );
        assert_eq!(
            ctype(format!("{filler}\r\nContent-Type: text/plain\r\n")),
            None
        );
        let long = format!(
            "Content-Type: multipart/vnd.msys.mcmt; boundary=B; x=\"{}\"\r\n\r\n",
            "a".repeat(2 * MAX_HEADER_BLOCK)
        );
        assert_eq!(ctype(long), mcmt);
    }

    // RFC 5322 §3.6.8: a field name is printable ASCII but `:`, not only an RFC 9110 token; a JSON line is still no
    // header.
    #[test]
    fn field_names_are_rfc_5322_names_but_json_is_not_one() {
        let b = header_block(b"X-Foo/Bar: 1\r\nX-Foo[1]: 2\r\nX-\"q\"@{}: 3\r\nObs : 4\r\n\r\n")
            .unwrap();
        let names: Vec<&str> = b.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["X-Foo/Bar", "X-Foo[1]", "X-\"q\"@{}", "Obs"]);
        for json in [&b"{\"aps\":{}}"[..], b"[\"a\":1]", b"{ \"aps\": {}}"] {
            let text = [&b"A: 1\r\n"[..], json, b"\r\n\r\n"].concat();
            let e = header_block(&text).unwrap_err();
            assert!(e.json && e.number == 2, "{e:?}");
        }
        for bad in [
            &b"X Y: 1"[..],
            b"X\x01Y: 1",
            b"X\xc3\xa9: 1",
            b": 1",
            b"no colon",
        ] {
            let text = [bad, b"\r\n\r\n"].concat();
            let e = header_block(&text).unwrap_err();
            assert!(!e.json && e.number == 1, "{e:?}");
        }
    }

    #[test]
    fn comments_are_removed_from_header_values() {
        assert_eq!(without_comments("7bit (plain)"), "7bit");
        assert_eq!(without_comments(" (a (nested) one) base64 "), "base64");
        assert_eq!(without_comments("a(x)b"), "a b");
        assert_eq!(without_comments("8bit (\\) still comment)"), "8bit");
        assert_eq!(without_comments("\"(kept)\"  x\t y"), "\"(kept)\" x y");
        assert_eq!(without_comments("(only)"), "");
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
    }

    // RFC 2046 §5.1.5: a part of a multipart/digest without Content-Type is a message/rfc822, so its own nesting
    // counts: the container, the email part, the digest and the digest's part are 4 levels.
    #[test]
    fn a_digest_part_without_content_type_counts_as_a_message() {
        let digest = |inner: usize, part_headers: &str| {
            format!(
                "Content-Type: multipart/digest; boundary=G\r\n\r\n--G\r\n{part_headers}\r\n{}Subject: a\r\n\r\nx\r\n--G--",
                "Content-Type: message/rfc822\r\n\r\n".repeat(inner)
            )
        };
        email(&digest(28, "")).unwrap();
        assert_eq!(
            email(&digest(29, "")),
            Err(PartError::TooDeep { limit: 32 })
        );
        // Only the Content-Type is defaulted: a part's other headers do not make it text.
        assert_eq!(
            email(&digest(29, "Content-Description: one\r\n")),
            Err(PartError::TooDeep { limit: 32 })
        );
        // A part that says it is text is a leaf, whatever its body looks like.
        email(&digest(29, "Content-Type: text/plain\r\n")).unwrap();
    }

    // A multipart inside an email part that is never closed ends with the part (or the enclosing multipart): the
    // email part is not herald's to judge, and the container's parts are split before it is read.
    #[test]
    fn an_unclosed_multipart_ends_with_its_part() {
        email("Content-Type: multipart/mixed; boundary=\"C\"\r\n\r\n--C\r\n\r\ntext\r\n").unwrap();
        email(
            "Content-Type: multipart/mixed; boundary=C\r\n\r\n--C\r\n\
             Content-Type: multipart/related; boundary=D\r\n\r\n--D\r\n\r\nx\r\n--C--\r\n",
        )
        .unwrap();
        // The levels it opened end with it: the next part of the enclosing multipart starts at its level.
        let mut s = String::from("Content-Type: multipart/mixed; boundary=C\r\n\r\n--C\r\n");
        for i in 0..20 {
            s.push_str(&format!(
                "Content-Type: multipart/mixed; boundary=u{i}\r\n\r\n--u{i}\r\n"
            ));
        }
        s.push_str("\r\nx\r\n--C\r\n");
        s.push_str(&"Content-Type: message/rfc822\r\n\r\n".repeat(28));
        s.push_str("\r\nleaf\r\n--C--\r\n");
        email(&s).unwrap();
    }

    // Content-Transfer-Encoding comments are no encoding: a `7bit (plain)` message is scanned, a `base64 (x)` one is
    // opaque.
    #[test]
    fn transfer_encoding_comments_do_not_hide_nesting() {
        let nested = |cte: &str| {
            format!(
                "Content-Type: message/rfc822\r\nContent-Transfer-Encoding: {cte}\r\n\r\n{}Subject: x\r\n\r\nbody",
                "Content-Type: message/rfc822\r\n\r\n".repeat(31)
            )
        };
        for cte in [
            "7bit",
            "7bit (plain)",
            "(c) 8bit",
            "quoted-printable",
            "x-unknown",
        ] {
            assert_eq!(
                email(&nested(cte)),
                Err(PartError::TooDeep { limit: 32 }),
                "{cte}"
            );
        }
        for cte in ["base64", "BASE64 (encoded)", "(c) base64"] {
            assert_eq!(email(&nested(cte)), Ok(()), "{cte}");
        }
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
