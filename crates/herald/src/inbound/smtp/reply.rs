//! SMTP replies: a code, an enhanced status code (RFC 3463) and a text naming what happened, rendered one or
//! several lines long.

use std::fmt;

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

    /// Appends the wire form to `out`. Line breaks in a text are never sent raw: each becomes its own line.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let lines: Vec<&str> = self
            .lines
            .iter()
            .flat_map(|l| l.split(['\r', '\n']))
            .filter(|l| !l.is_empty())
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

    #[test]
    fn embedded_newlines_become_lines() {
        let mut out = Vec::new();
        Reply::new(550, "5.6.0", "a\nb").write_to(&mut out);
        assert_eq!(out, b"550-5.6.0 a\r\n550 5.6.0 b\r\n");
    }
}
