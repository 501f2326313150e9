//! The `/v1.0/inject` template (docs/momentum-compat.md#rest-injector): an RFC 822 message with `<%= :key %>` or
//! `[%= :key %]` markers. Both spellings are plain text substitution: the value goes in as it is, with no MIME, header
//! or JSON encoding, and keys match case-insensitively. After substitution every line ending becomes CRLF.
//!
//! A template is parsed once per request ([`Template::parse`]) and rendered once per recipient.

use std::borrow::Cow;

/// A parsed template: literal text and keys, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template<'a> {
    parts: Vec<Part<'a>>,
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
}

impl<'a> Template<'a> {
    /// Splits `source` into text and markers. Text that only looks like a marker (no `:key`, no closing
    /// `%>` / `%]`) stays literal.
    pub fn parse(source: &'a str) -> Template<'a> {
        let mut parts = Vec::new();
        let mut rest = source;
        let mut literal_start = 0;
        let mut offset = 0;
        while let Some(at) = rest.find(['<', '[']) {
            let candidate = &rest[at..];
            match marker(candidate) {
                Some((key, len)) => {
                    let start = offset + at;
                    if start > literal_start {
                        parts.push(Part::Literal(&source[literal_start..start]));
                    }
                    parts.push(Part::Key(key.to_lowercase()));
                    literal_start = start + len;
                    offset = literal_start;
                    rest = &source[offset..];
                }
                None => {
                    offset += at + 1;
                    rest = &source[offset..];
                }
            }
        }
        if literal_start < source.len() {
            parts.push(Part::Literal(&source[literal_start..]));
        }
        Template { parts }
    }

    /// The keys the template uses (lowercase), in order, with repeats.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Key(k) => Some(k.as_str()),
            Part::Literal(_) => None,
        })
    }

    /// The message for one recipient, with CRLF line endings. `lookup` gets each lowercase key.
    pub fn render<'v>(
        &self,
        mut lookup: impl FnMut(&str) -> Option<Cow<'v, str>>,
    ) -> Result<String, TemplateError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => push_crlf(&mut out, text),
                Part::Key(key) => match lookup(key) {
                    Some(value) => push_crlf(&mut out, &value),
                    None => return Err(TemplateError::MissingKey(key.clone())),
                },
            }
        }
        Ok(out)
    }
}

/// `<%= :key %>` or `[%= :key %]` at the start of `s`: the key and the marker's length.
fn marker(s: &str) -> Option<(&str, usize)> {
    let close = match s.as_bytes().get(..3)? {
        b"<%=" => "%>",
        b"[%=" => "%]",
        _ => return None,
    };
    let end = s.find(close)?;
    let inner = s[3..end].trim().strip_prefix(':')?.trim();
    if inner.is_empty() || inner.contains(char::is_whitespace) {
        return None;
    }
    Some((inner, end + close.len()))
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
}
