//! The `/v1.0/inject` template (docs/momentum-compat.md#rest-injector): an RFC 822 message with `<%= :key %>` or
//! `[%= :key %]` markers. Both spellings are plain text substitution: the value goes in as it is, with no MIME, header
//! or JSON encoding, and keys match case-insensitively. After substitution every line ending becomes CRLF.
//!
//! A template is parsed once per request ([`Template::parse`]) and rendered once per recipient, each rendering
//! bounded by [`MAX_RENDERED`]. A rendering that fails says how much it had produced ([`RenderError`]), so that a
//! request's budget counts the work of every recipient.

use std::borrow::Cow;

/// The most bytes one recipient's message may render to: the ESMTP listener's default `max_message_size`, as the
/// rendered message is read as that listener reads a received one. Without a bound, a template repeating a marker
/// 100,000 times and a 1 MB value rendered 100 GB for one recipient and ended the process.
pub const MAX_RENDERED: usize = crate::inbound::smtp::DEFAULT_MAX_MESSAGE_SIZE as usize;

/// A parsed template: literal text and keys, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template<'a> {
    parts: Vec<Part<'a>>,
    /// The length of the template's text.
    len: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part<'a> {
    Literal(&'a str),
    /// The key, lowercased.
    Key(String),
}

/// A recipient whose template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("the template uses the key {0:?}, which this recipient's keys do not give")]
    MissingKey(String),
    #[error(
        "the message rendered for this recipient exceeds {limit} bytes, the most herald renders for one recipient"
    )]
    TooLarge { limit: usize },
}

/// A rendering that failed: why, and how many bytes of the message it had produced when it stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderError {
    pub error: TemplateError,
    pub rendered: usize,
}

impl<'a> Template<'a> {
    /// Splits `source` into text and markers. Text that only looks like a marker (no `:key`, no closing
    /// `%>` / `%]`) stays literal.
    pub fn parse(source: &'a str) -> Template<'a> {
        let mut parts = Vec::new();
        let mut rest = source;
        let mut literal_start = 0;
        let mut offset = 0;
        let mut closers = [NextClose::new("%>"), NextClose::new("%]")];
        while let Some(at) = rest.find(['<', '[']) {
            let start = offset + at;
            match marker(source, start, &mut closers) {
                Some((key, len)) => {
                    if start > literal_start {
                        parts.push(Part::Literal(&source[literal_start..start]));
                    }
                    parts.push(Part::Key(key.to_lowercase()));
                    literal_start = start + len;
                    offset = literal_start;
                    rest = &source[offset..];
                }
                None => {
                    offset = start + 1;
                    rest = &source[offset..];
                }
            }
        }
        if literal_start < source.len() {
            parts.push(Part::Literal(&source[literal_start..]));
        }
        Template {
            parts,
            len: source.len(),
        }
    }

    /// The length of the template's text, in bytes: what rendering it walks through, whatever it produces.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the template's text is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The keys the template uses (lowercase), each once, in the order of their first marker.
    pub fn distinct_keys(&self) -> Vec<&str> {
        let mut seen = std::collections::HashSet::new();
        self.keys().filter(|k| seen.insert(*k)).collect()
    }

    /// The keys the template uses (lowercase), in order, with repeats.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Key(k) => Some(k.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The message for one recipient, with CRLF line endings. `lookup` gets each lowercase key. Rendering stops
    /// at the first part that takes the message over [`MAX_RENDERED`]: a message that large is refused, and
    /// what is rendered so far stays within about twice the limit.
    pub fn render<'v>(
        &self,
        lookup: impl FnMut(&str) -> Option<Cow<'v, str>>,
    ) -> Result<String, TemplateError> {
        self.render_at_most(lookup, MAX_RENDERED)
            .map_err(|e| e.error)
    }

    /// [`Template::render`] within `limit` bytes when that is less than [`MAX_RENDERED`] (what is left of a
    /// request's rendering budget). A failure says how many bytes had been produced.
    pub fn render_at_most<'v>(
        &self,
        mut lookup: impl FnMut(&str) -> Option<Cow<'v, str>>,
        limit: usize,
    ) -> Result<String, RenderError> {
        let limit = limit.min(MAX_RENDERED);
        let mut out = String::new();
        for part in &self.parts {
            let pushed = match part {
                Part::Literal(text) => push_within(&mut out, text, limit),
                Part::Key(key) => match lookup(key) {
                    Some(value) => push_within(&mut out, &value, limit),
                    None => Err(TemplateError::MissingKey(key.clone())),
                },
            };
            if let Err(error) = pushed {
                return Err(RenderError {
                    error,
                    rendered: out.len(),
                });
            }
        }
        Ok(out)
    }
}

/// Appends `text` (line endings as CRLF) unless the message would exceed `limit`. Line endings only add bytes, so
/// a text longer than what is left is refused before it is copied.
fn push_within(out: &mut String, text: &str, limit: usize) -> Result<(), TemplateError> {
    let too_large = TemplateError::TooLarge { limit };
    if text.len() > limit.saturating_sub(out.len()) {
        return Err(too_large);
    }
    push_crlf(out, text);
    if out.len() > limit {
        return Err(too_large);
    }
    Ok(())
}

/// Where the next `%>` (or `%]`) at or after a position is. The parser asks with positions that only grow, and the
/// text is searched again only once a position passes the last answer: a template full of openers without a closer
/// costs one search, not one per opener (which made a large request's parse quadratic).
struct NextClose {
    close: &'static str,
    /// The last search: where it started and what it found (absolute), `None` when nothing was left.
    last: Option<(usize, Option<usize>)>,
}

impl NextClose {
    fn new(close: &'static str) -> NextClose {
        NextClose { close, last: None }
    }

    fn at_or_after(&mut self, source: &str, pos: usize) -> Option<usize> {
        match self.last {
            Some((from, found)) if from <= pos && found.is_none_or(|f| f >= pos) => found,
            _ => {
                let found = source[pos..].find(self.close).map(|i| pos + i);
                self.last = Some((pos, found));
                found
            }
        }
    }
}

/// `<%= :key %>` or `[%= :key %]` at `start` of `source`: the key and the marker's length.
fn marker<'s>(
    source: &'s str,
    start: usize,
    closers: &mut [NextClose; 2],
) -> Option<(&'s str, usize)> {
    let s = &source[start..];
    let closer = match s.as_bytes().get(..3)? {
        b"<%=" => &mut closers[0],
        b"[%=" => &mut closers[1],
        _ => return None,
    };
    let close_len = closer.close.len();
    let end = closer.at_or_after(source, start)? - start;
    let inner = s[3..end].trim().strip_prefix(':')?.trim();
    if inner.is_empty() || inner.contains(char::is_whitespace) {
        return None;
    }
    Some((inner, end + close_len))
}

/// Appends `text` with every line ending (LF, CR or CRLF) written as CRLF.
fn push_crlf(out: &mut String, text: &str) {
    out.reserve(text.len());
    let bytes = text.as_bytes();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\r' if bytes.get(i + 1) == Some(&b'\n') => i += 2,
            b'\r' | b'\n' => {
                out.push_str(&text[start..i]);
                out.push_str("\r\n");
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&text[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn render(template: &str, keys: &[(&str, &str)]) -> Result<String, TemplateError> {
        let map: HashMap<String, String> = keys
            .iter()
            .map(|(k, v)| (k.to_lowercase(), v.to_string()))
            .collect();
        Template::parse(template).render(|k| map.get(k).map(|v| Cow::Owned(v.clone())))
    }

    #[test]
    fn both_marker_spellings_substitute_the_same_text() {
        // docs/momentum-compat.md#rest-injector: `<%= :key %>` and `[%= :key %]`, keys case-insensitive, straight
        // substitution.
        let out = render(
            "To: <%=:to%>\nSubject: [%= :Subject %]\n\n{\"a\":\"<%= :SUBJECT %>\"}",
            &[("to", "x@y"), ("subject", "hi \"there\"")],
        )
        .unwrap();
        assert_eq!(
            out,
            "To: x@y\r\nSubject: hi \"there\"\r\n\r\n{\"a\":\"hi \"there\"\"}"
        );
    }

    #[test]
    fn text_that_only_looks_like_a_marker_stays() {
        let t = "a <%= b %> [%=:c d%] <%=:e [%= :f";
        assert_eq!(render(t, &[]).unwrap(), t);
        assert_eq!(Template::parse(t).keys().count(), 0);
    }

    #[test]
    fn a_missing_key_is_named() {
        assert_eq!(
            render("x <%= :Nope %>", &[]),
            Err(TemplateError::MissingKey("nope".into()))
        );
    }

    #[test]
    fn line_endings_become_crlf() {
        assert_eq!(
            render("a\nb\r\nc\rd\n", &[]).unwrap(),
            "a\r\nb\r\nc\r\nd\r\n"
        );
        assert_eq!(render("<%=:v%>", &[("v", "1\n2")]).unwrap(), "1\r\n2");
    }

    #[test]
    fn a_rendering_stops_at_the_limit() {
        let t = Template::parse("ab<%=:v%>");
        let value = |v: &'static str| move |_: &str| Some(Cow::Borrowed(v));
        let too_large = |rendered| RenderError {
            error: TemplateError::TooLarge { limit: 5 },
            rendered,
        };
        assert_eq!(t.render_at_most(value("cde"), 5).unwrap(), "abcde");
        // Refused before it is copied: only "ab" was produced.
        assert_eq!(t.render_at_most(value("cdef"), 5), Err(too_large(2)));
        // Line endings written as CRLF count: "ab" + "c\r\nd" is 6 bytes, all produced.
        assert_eq!(t.render_at_most(value("c\nd"), 5), Err(too_large(6)));
        assert_eq!(
            Template::parse("abcdef").render_at_most(value(""), 5),
            Err(too_large(0))
        );
    }

    /// A failed rendering says how much it produced before it stopped; the template's length and its keys, each
    /// once, are known before any rendering.
    #[test]
    fn a_failed_rendering_says_what_it_produced() {
        let t = Template::parse("abc<%=:A%>[%= :b %]<%=:a%>");
        assert_eq!(t.len(), 26);
        assert_eq!(t.distinct_keys(), ["a", "b"]);
        let only_a = |k: &str| (k == "a").then_some(Cow::Borrowed("xy"));
        assert_eq!(
            t.render_at_most(only_a, 100),
            Err(RenderError {
                error: TemplateError::MissingKey("b".into()),
                rendered: 5,
            })
        );
    }

    #[test]
    fn a_marker_repeated_with_a_large_value_stops_early() {
        // A 700 KB template of 100,000 markers and a 1 MB value rendered 100 GB before there was a limit. It stops
        // at the first value past the default limit, having looked up (and copied) only the ones before it.
        let source = "<%=:a%>".repeat(100_000);
        let value = "x".repeat(1 << 20);
        let mut lookups = 0;
        let rendered = Template::parse(&source).render(|_| {
            lookups += 1;
            Some(Cow::Borrowed(value.as_str()))
        });
        assert_eq!(
            rendered,
            Err(TemplateError::TooLarge {
                limit: MAX_RENDERED
            })
        );
        assert_eq!(lookups, MAX_RENDERED / value.len() + 1);
        assert_eq!(
            rendered.unwrap_err().to_string(),
            "the message rendered for this recipient exceeds 10485760 bytes, the most herald renders for one recipient"
        );
    }

    /// The parse as first written, one search for a closer per opener: the model the linear parse must agree with.
    fn parse_by_searching_each_time(source: &str) -> Vec<Part<'_>> {
        let mut parts = Vec::new();
        let (mut literal_start, mut offset) = (0, 0);
        while let Some(at) = source[offset..].find(['<', '[']) {
            let start = offset + at;
            let s = &source[start..];
            let found = match s.as_bytes().get(..3) {
                Some(b"<%=") => Some("%>"),
                Some(b"[%=") => Some("%]"),
                _ => None,
            }
            .and_then(|close| {
                let end = s.find(close)?;
                let inner = s[3..end].trim().strip_prefix(':')?.trim();
                (!inner.is_empty() && !inner.contains(char::is_whitespace))
                    .then_some((inner, end + close.len()))
            });
            match found {
                Some((key, len)) => {
                    if start > literal_start {
                        parts.push(Part::Literal(&source[literal_start..start]));
                    }
                    parts.push(Part::Key(key.to_lowercase()));
                    literal_start = start + len;
                    offset = literal_start;
                }
                None => offset = start + 1,
            }
        }
        if literal_start < source.len() {
            parts.push(Part::Literal(&source[literal_start..]));
        }
        parts
    }

    proptest::proptest! {
        #[test]
        fn the_linear_parse_reads_what_searching_per_opener_reads(s in "([<\\[%=\\]>: ]|:k|x|é){0,60}") {
            proptest::prop_assert_eq!(Template::parse(&s).parts, parse_by_searching_each_time(&s));
        }
    }

    #[test]
    fn openers_without_a_closer_stay_text() {
        // Found by reading the code while fuzzing (fuzz/README.md): 100,000 `<%=` with no `%>` searched the rest of the
        // template once per opener. They are text, and one search answers them all.
        let source = "<%=".repeat(100_000) + "[%= :k %]";
        let t = Template::parse(&source);
        assert_eq!(t.keys().collect::<Vec<_>>(), ["k"]);
        assert_eq!(t.parts.len(), 2);
    }
}
