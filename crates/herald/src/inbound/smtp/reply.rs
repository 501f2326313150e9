//! SMTP replies: a code, an enhanced status code (RFC 3463) and a text naming what happened, rendered one or
//! several lines long. No line on the wire is longer than RFC 5321's 512 octets (§4.5.3.1.5): a longer text goes
//! on as further lines of the reply, and a text is cut at [`MAX_TEXT`] bytes. A reply's text is US-ASCII on the
//! wire, as RFC 5321 §4.2 has it without SMTPUTF8, which herald does not offer ([`ascii`]).

use std::fmt;

/// The longest reply line, code and CRLF included (RFC 5321 §4.5.3.1.5).
pub const MAX_LINE: usize = 512;
/// The most bytes of one text a reply carries (over as many lines as it takes); beyond it the text is cut and
/// marked `...`. Texts that repeat the client's own are cut shorter where they are made.
pub const MAX_TEXT: usize = 2048;

/// One SMTP reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// `x.y.z`; empty for replies that carry none (greeting, EHLO).
    pub status: &'static str,
    /// One entry per line; never empty.
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, status: &'static str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            status,
            lines: vec![text.into()],
        }
    }

    /// A reply of several lines (EHLO), without enhanced status codes.
    pub fn multi(code: u16, lines: Vec<String>) -> Reply {
        Reply {
            code,
            status: "",
            lines,
        }
    }

    /// Whether the connection is closed after this reply.
    pub fn closes(&self) -> bool {
        self.code == 421 || self.code == 221
    }

    /// Appends the wire form to `out`. Line breaks in a text are never sent raw: each becomes its own line, as
    /// does each piece of a line too long for [`MAX_LINE`] (cut after a space where there is one).
    pub fn write_to(&self, out: &mut Vec<u8>) {
        // Code, separator, status and its space, CRLF.
        let room = MAX_LINE
            - 4
            - if self.status.is_empty() {
                0
            } else {
                self.status.len() + 1
            }
            - 2;
        let texts: Vec<String> = self
            .lines
            .iter()
            .map(|l| clip(&ascii(l), MAX_TEXT).into_owned())
            .collect();
        let lines: Vec<&str> = texts
            .iter()
            .flat_map(|l| l.split(['\r', '\n']))
            .filter(|l| !l.is_empty())
            .flat_map(|l| pieces(l, room))
            .collect();
        let lines = if lines.is_empty() { vec![""] } else { lines };
        for (i, line) in lines.iter().enumerate() {
            let sep = if i + 1 == lines.len() { ' ' } else { '-' };
            out.extend_from_slice(self.code.to_string().as_bytes());
            out.push(sep as u8);
            if !self.status.is_empty() {
                out.extend_from_slice(self.status.as_bytes());
                out.push(b' ');
            }
            out.extend_from_slice(line.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// `text` in US-ASCII, as a reply's text must be without SMTPUTF8 (RFC 5321 §4.2): the few other characters
/// herald's own texts use become their ASCII spelling (`…` `...`, `§` `section `, `×` `x`, dashes and quotes), and
/// any other (a client's own text that a reply repeats, such as an EHLO name or an address) `?`.
fn ascii(text: &str) -> std::borrow::Cow<'_, str> {
    if text.is_ascii() {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            c if c.is_ascii() => out.push(c),
            '…' => out.push_str("..."),
            '§' => out.push_str("section "),
            '×' => out.push('x'),
            '–' | '—' | '−' => out.push('-'),
            '‘' | '’' => out.push('\''),
            '“' | '”' => out.push('"'),
            _ => out.push('?'),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `text` (ASCII) cut to at most `max` bytes, `...` marking the cut.
fn clip(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut cut = max - "...".len();
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    std::borrow::Cow::Owned(format!("{}...", &text[..cut]))
}

/// `line` in pieces of at most `room` bytes, each cut after its last space where it has one, else on a character
/// boundary.
fn pieces(mut line: &str, room: usize) -> Vec<&str> {
    let mut out = Vec::new();
    while line.len() > room {
        let mut cut = room;
        while !line.is_char_boundary(cut) {
            cut -= 1;
        }
        if let Some(space) = line[..cut].rfind(' ').filter(|i| *i > 0) {
            cut = space + 1;
        }
        out.push(&line[..cut]);
        line = &line[cut..];
    }
    out.push(line);
    out
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = Vec::new();
        self.write_to(&mut out);
        f.write_str(String::from_utf8_lossy(&out).trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_multi_line() {
        let mut out = Vec::new();
        Reply::new(250, "2.1.0", "sender ok").write_to(&mut out);
        assert_eq!(out, b"250 2.1.0 sender ok\r\n");
        let mut out = Vec::new();
        Reply::multi(250, vec!["herald".into(), "PIPELINING".into()]).write_to(&mut out);
        assert_eq!(out, b"250-herald\r\n250 PIPELINING\r\n");
    }

    /// RFC 5321 §4.5.3.1.5: a text too long for one line goes on over further lines, each at most 512 octets;
    /// one too long for a reply is cut, on a character boundary.
    #[test]
    fn no_line_is_longer_than_512_octets() {
        let words = "word ".repeat(300);
        let mut out = Vec::new();
        Reply::new(550, "5.6.0", words.trim_end()).write_to(&mut out);
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.split_inclusive("\r\n").collect();
        assert!(lines.len() > 1, "{text}");
        for (i, line) in lines.iter().enumerate() {
            assert!(line.len() <= MAX_LINE, "{}: {line}", line.len());
            let sep = if i + 1 == lines.len() { " " } else { "-" };
            assert!(line.starts_with(&format!("550{sep}5.6.0 word")), "{line}");
        }
        // Cut after a space: no word is split.
        let joined: String = lines
            .iter()
            .map(|l| l[10..].trim_end_matches("\r\n"))
            .collect();
        assert_eq!(joined, words.trim_end());

        let one_word = "é".repeat(3000);
        let mut out = Vec::new();
        Reply::new(550, "5.6.0", one_word).write_to(&mut out);
        assert!(out.is_ascii());
        let text = String::from_utf8(out).unwrap();
        assert!(text.len() < MAX_TEXT + 5 * 20, "{}", text.len());
        assert!(text.trim_end().ends_with("?..."));
        assert!(text.split_inclusive("\r\n").all(|l| l.len() <= MAX_LINE));
    }

    /// RFC 5321 §4.2: without SMTPUTF8 a reply's text is US-ASCII. herald's own texts spell their few other
    /// characters in ASCII; a client's text a reply repeats has each other character as `?`.
    #[test]
    fn replies_are_ascii_on_the_wire() {
        let mut out = Vec::new();
        Reply::new(
            550,
            "5.1.3",
            "<é@x> is cut… (RFC 5321 §4.5.3.1.2; 2 push parts × 3 recipients — “quoted”)",
        )
        .write_to(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "550 5.1.3 <?@x> is cut... (RFC 5321 section 4.5.3.1.2; 2 push parts x 3 recipients - \"quoted\")\r\n"
        );
    }

    #[test]
    fn embedded_newlines_become_lines() {
        let mut out = Vec::new();
        Reply::new(550, "5.6.0", "a\nb").write_to(&mut out);
        assert_eq!(out, b"550-5.6.0 a\r\n550 5.6.0 b\r\n");
    }
}
