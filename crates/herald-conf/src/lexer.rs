//! The lexer: turns configuration text into tokens (words, quoted strings, punctuation), skipping whitespace and
//! `#` / `/* */` comments, and reporting unterminated strings and comments. It streams: memory stays bounded by one
//! token (and at most [`MAX_KEPT_ERRORS`] errors: past them errors are only counted), and every character is looked
//! at a constant number of times.

use std::borrow::Cow;

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A bare value or keyword: a run of characters other than whitespace, quotes and `#={}[]()`.
    Word,
    /// A `"double"` or `'single'` quoted string.
    Quoted,
    LBrace,
    RBrace,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Equals,
}

impl TokenKind {
    pub fn describe(self) -> &'static str {
        match self {
            TokenKind::Word => "a word",
            TokenKind::Quoted => "a quoted string",
            TokenKind::LBrace => "`{`",
            TokenKind::RBrace => "`}`",
            TokenKind::LParen => "`(`",
            TokenKind::RParen => "`)`",
            TokenKind::LBracket => "`[`",
            TokenKind::RBracket => "`]`",
            TokenKind::Equals => "`=`",
        }
    }
}

/// One token with its value (quotes removed, escapes applied) and its 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token<'a> {
    pub kind: TokenKind,
    pub value: Cow<'a, str>,
    pub line: u32,
    pub col: u32,
}

/// A problem found while lexing, at a 1-based position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LexError {
    pub line: u32,
    pub col: u32,
    pub message: String,
}

/// The most errors one lexer records; later ones are counted ([`Lexer::hidden_errors`]), not kept, so that a
/// file of 16 MiB of unterminated strings costs no more memory than one of 201.
pub const MAX_KEPT_ERRORS: usize = crate::diag::MAX_ERRORS + 1;

/// Streams tokens from a text. Lexing errors are collected in `errors` (the first [`MAX_KEPT_ERRORS`] of them;
/// a reader may drain it) and lexing goes on after them.
pub struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    line: u32,
    col: u32,
    pub errors: Vec<LexError>,
    /// Every error found, kept or not.
    found: usize,
    /// Where the last error found is, kept or not.
    last_error_at: Option<(u32, u32)>,
    /// Where the first error not kept is.
    first_hidden_at: Option<(u32, u32)>,
}

fn is_punct(c: char) -> bool {
    matches!(
        c,
        '{' | '}' | '(' | ')' | '[' | ']' | '=' | '"' | '\'' | '#'
    )
}

/// The byte-order mark some editors put at the start of a UTF-8 file.
const BOM: char = '\u{feff}';

impl<'a> Lexer<'a> {
    /// A lexer over one file's text. A byte-order mark at its start is not part of the text: it is skipped, and
    /// the first character after it is column 1.
    pub fn new(src: &'a str) -> Self {
        Self {
            src,
            pos: if src.starts_with(BOM) {
                BOM.len_utf8()
            } else {
                0
            },
            line: 1,
            col: 1,
            errors: Vec::new(),
            found: 0,
            last_error_at: None,
            first_hidden_at: None,
        }
    }

    /// Records an error at (`line`, `col`), or only counts it past [`MAX_KEPT_ERRORS`].
    fn report(&mut self, line: u32, col: u32, message: impl FnOnce() -> String) {
        self.found += 1;
        self.last_error_at = Some((line, col));
        if self.found > MAX_KEPT_ERRORS {
            self.first_hidden_at.get_or_insert((line, col));
            return;
        }
        self.errors.push(LexError {
            line,
            col,
            message: message(),
        });
    }

    /// How many errors were found, kept or not.
    pub fn errors_found(&self) -> usize {
        self.found
    }

    /// Where the last error found is (kept or not).
    pub fn last_error_at(&self) -> Option<(u32, u32)> {
        self.last_error_at
    }

    /// How many errors were found past [`MAX_KEPT_ERRORS`] and not kept, and where the first of them is.
    pub fn hidden_errors(&self) -> (usize, Option<(u32, u32)>) {
        (
            self.found.saturating_sub(MAX_KEPT_ERRORS),
            self.first_hidden_at,
        )
    }

    fn peek(&self) -> Option<char> {
        match self.src.as_bytes().get(self.pos) {
            None => None,
            Some(&b) if b < 0x80 => Some(b as char),
            Some(_) => self.src[self.pos..].chars().next(),
        }
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        if c == '\n' {
            self.line += 1;
            self.col = 1;
        } else {
            self.col += 1;
        }
        Some(c)
    }

    /// Moves to byte `to` on the same line, counting the characters passed.
    fn advance_on_line(&mut self, to: usize) {
        let passed = &self.src.as_bytes()[self.pos..to];
        self.col += passed.iter().filter(|b| (**b & 0xC0) != 0x80).count() as u32;
        self.pos = to;
    }

    /// Moves to byte `to`, possibly across lines.
    fn advance_across_lines(&mut self, to: usize) {
        let passed = &self.src.as_bytes()[self.pos..to];
        match passed.iter().rposition(|b| *b == b'\n') {
            Some(last) => {
                self.line += passed.iter().filter(|b| **b == b'\n').count() as u32;
                self.col = 1;
                self.pos += last + 1;
                self.advance_on_line(to);
            }
            None => self.advance_on_line(to),
        }
    }

    fn starts_comment(&self) -> bool {
        self.src.as_bytes()[self.pos..].starts_with(b"/*")
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) {
        let bytes = self.src.as_bytes();
        loop {
            match bytes.get(self.pos) {
                Some(b'\n') => {
                    self.pos += 1;
                    self.line += 1;
                    self.col = 1;
                }
                Some(b' ' | b'\t' | b'\r' | b'\x0b' | b'\x0c') => {
                    self.pos += 1;
                    self.col += 1;
                }
                Some(b'#') => {
                    // to the end of the line (the newline itself is whitespace)
                    let end = bytes[self.pos..]
                        .iter()
                        .position(|b| *b == b'\n')
                        .map_or(bytes.len(), |n| self.pos + n);
                    self.advance_on_line(end);
                }
                Some(b'/') if self.starts_comment() => {
                    let (line, col) = (self.line, self.col);
                    match self.src[self.pos + 2..].find("*/") {
                        Some(n) => self.advance_across_lines(self.pos + 2 + n + 2),
                        None => {
                            self.report(line, col, || {
                                "unterminated comment: `/*` has no closing `*/`".into()
                            });
                            self.pos = self.src.len();
                        }
                    }
                }
                Some(b) if *b >= 0x80 => match self.peek() {
                    Some(c) if c.is_whitespace() => {
                        self.bump();
                    }
                    _ => return,
                },
                _ => return,
            }
        }
    }

    fn quoted(&mut self, quote: char) -> Cow<'a, str> {
        let (line, col) = (self.line, self.col);
        let bytes = self.src.as_bytes();
        let q = quote as u8;
        let start = self.pos + 1;
        let mut i = start;
        // Escapes force a copy: `owned` holds the value up to `copied`.
        let mut owned: Option<String> = None;
        let mut copied = start;
        loop {
            while i < bytes.len()
                && bytes[i] != q
                && bytes[i] != b'\n'
                && !(q == b'"' && bytes[i] == b'\\')
            {
                i += 1;
            }
            if i >= bytes.len() || bytes[i] == b'\n' {
                self.report(line, col, || {
                    format!(
                        "unterminated string: {quote} opened here is not closed on the same line"
                    )
                });
                let rest = &self.src[start..i];
                // `domain "name {`: end the string before a trailing `{`, so the scope still opens.
                if let Some(before) = rest.trim_end().strip_suffix('{') {
                    self.advance_on_line(start + before.len());
                    return Cow::Borrowed(before.trim_end());
                }
                self.advance_on_line(i);
                return match owned {
                    Some(mut s) => {
                        s.push_str(&self.src[copied..i]);
                        Cow::Owned(s)
                    }
                    None => Cow::Borrowed(rest),
                };
            }
            if bytes[i] == q {
                let value = match owned {
                    Some(mut s) => {
                        s.push_str(&self.src[copied..i]);
                        Cow::Owned(s)
                    }
                    None => Cow::Borrowed(&self.src[start..i]),
                };
                self.advance_on_line(i + 1);
                return value;
            }
            // a backslash inside double quotes: `\"` and `\\` are escapes, any other is kept as written
            match bytes.get(i + 1) {
                Some(&e @ (b'"' | b'\\')) => {
                    let s = owned.get_or_insert_with(String::new);
                    s.push_str(&self.src[copied..i]);
                    s.push(e as char);
                    i += 2;
                    copied = i;
                }
                _ => i += 1,
            }
        }
    }

    fn word(&mut self) -> &'a str {
        let start = self.pos;
        let bytes = self.src.as_bytes();
        let mut i = self.pos;
        while i < bytes.len() {
            let b = bytes[i];
            if b < 0x80 {
                let c = b as char;
                if c.is_ascii_whitespace()
                    || is_punct(c)
                    || (c == '/' && bytes.get(i + 1) == Some(&b'*'))
                {
                    break;
                }
                i += 1;
            } else {
                let c = self.src[i..].chars().next().unwrap_or(' ');
                if c.is_whitespace() {
                    break;
                }
                i += c.len_utf8();
            }
        }
        let word = &self.src[start..i];
        self.pos = i;
        self.col += word.chars().count() as u32;
        word
    }
}

impl<'a> Iterator for Lexer<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        self.skip_trivia();
        let c = self.peek()?;
        let (line, col) = (self.line, self.col);
        let punct = |kind, s: &'static str| {
            Some(Token {
                kind,
                value: Cow::Borrowed(s),
                line,
                col,
            })
        };
        let tok = match c {
            '{' => punct(TokenKind::LBrace, "{"),
            '}' => punct(TokenKind::RBrace, "}"),
            '(' => punct(TokenKind::LParen, "("),
            ')' => punct(TokenKind::RParen, ")"),
            '[' => punct(TokenKind::LBracket, "["),
            ']' => punct(TokenKind::RBracket, "]"),
            '=' => punct(TokenKind::Equals, "="),
            '"' | '\'' => {
                let value = self.quoted(c);
                return Some(Token {
                    kind: TokenKind::Quoted,
                    value,
                    line,
                    col,
                });
            }
            _ => {
                let value = Cow::Borrowed(self.word());
                return Some(Token {
                    kind: TokenKind::Word,
                    value,
                    line,
                    col,
                });
            }
        };
        self.bump();
        tok
    }
}

/// True if `text` can be written bare (unquoted) and read back as the same single word.
pub fn is_bare_safe(text: &str) -> bool {
    !text.is_empty()
        && !text.contains("/*")
        && !text
            .chars()
            .any(|c| c.is_whitespace() || is_punct(c) || c == '\\' || c.is_control())
}

/// Writes `text` as a value token: bare when that reads back the same, else double-quoted with `"` and `\` escaped.
pub fn render_value(text: &str, force_quotes: bool) -> String {
    if !force_quotes && is_bare_safe(text) {
        return text.to_string();
    }
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(src: &str) -> Vec<(TokenKind, String, u32, u32)> {
        Lexer::new(src)
            .map(|t| (t.kind, t.value.into_owned(), t.line, t.col))
            .collect()
    }

    #[test]
    fn tokens_with_positions() {
        let toks = kinds("domain \"a.com\" {\n  tls = required # c\n}");
        assert_eq!(
            toks,
            vec![
                (TokenKind::Word, "domain".into(), 1, 1),
                (TokenKind::Quoted, "a.com".into(), 1, 8),
                (TokenKind::LBrace, "{".into(), 1, 16),
                (TokenKind::Word, "tls".into(), 2, 3),
                (TokenKind::Equals, "=".into(), 2, 7),
                (TokenKind::Word, "required".into(), 2, 9),
                (TokenKind::RBrace, "}".into(), 3, 1),
            ]
        );
    }

    #[test]
    fn comments_do_not_nest_and_end_words() {
        let toks = kinds("a/* x /* y */b */ c");
        let words: Vec<_> = toks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(words, vec!["a", "b", "*/", "c"]);
    }

    #[test]
    fn escapes_in_double_quotes_only() {
        let toks = kinds(r#""a\"b\\c\.d" 'x\y'"#);
        assert_eq!(toks[0].1, r#"a"b\c\.d"#);
        assert_eq!(toks[1].1, r"x\y");
    }

    #[test]
    fn unterminated_string_and_comment_are_reported() {
        let mut lx = Lexer::new("a = \"open\nb = 1 /* never closed");
        let toks: Vec<_> = lx.by_ref().collect();
        assert_eq!(toks.len(), 6);
        assert_eq!(lx.errors.len(), 2);
        assert_eq!((lx.errors[0].line, lx.errors[0].col), (1, 5));
        assert!(lx.errors[0].message.contains("unterminated string"));
        assert_eq!((lx.errors[1].line, lx.errors[1].col), (2, 7));
        assert!(lx.errors[1].message.contains("unterminated comment"));
        let mut lx = Lexer::new("domain \"a.com {\n}");
        let toks: Vec<_> = lx
            .by_ref()
            .map(|t| (t.kind, t.value.into_owned(), t.col))
            .collect();
        assert_eq!(toks[1], (TokenKind::Quoted, "a.com".to_string(), 8));
        assert_eq!(toks[2], (TokenKind::LBrace, "{".to_string(), 15));
    }

    #[test]
    fn errors_past_the_cap_are_counted_not_kept() {
        let src = "\"\n".repeat(1000);
        let mut lx = Lexer::new(&src);
        assert_eq!(lx.by_ref().count(), 1000);
        assert_eq!(lx.errors.len(), MAX_KEPT_ERRORS);
        assert_eq!(lx.errors_found(), 1000);
        assert_eq!(
            lx.hidden_errors(),
            (
                1000 - MAX_KEPT_ERRORS,
                Some((MAX_KEPT_ERRORS as u32 + 1, 1))
            )
        );
        assert_eq!(lx.last_error_at(), Some((1000, 1)));
    }

    #[test]
    fn positions_after_multiline_comments_and_escapes() {
        let toks = kinds("a /* x\n yé */ b \"c\\\"d\" e # z\n  f");
        let at: Vec<(String, u32, u32)> = toks.into_iter().map(|t| (t.1, t.2, t.3)).collect();
        assert_eq!(
            at,
            vec![
                ("a".into(), 1, 1),
                ("b".into(), 2, 8),
                ("c\"d".into(), 2, 10),
                ("e".into(), 2, 17),
                ("f".into(), 3, 3)
            ]
        );
    }

    #[test]
    fn a_leading_byte_order_mark_is_skipped() {
        let toks = kinds("\u{feff}max_outbound_connections = 4\n");
        assert_eq!(toks[0].1, "max_outbound_connections");
        assert_eq!((toks[0].2, toks[0].3), (1, 1));
        assert_eq!(toks[1].3, 26);
        // Only at the start: elsewhere it is a character of the word (and reported as invisible there).
        let toks = kinds("a \u{feff}b");
        assert_eq!(toks[1].1, "\u{feff}b");
    }

    #[test]
    fn columns_count_characters() {
        let toks = kinds("é = ü");
        assert_eq!(toks[1].3, 3);
        assert_eq!(toks[2].3, 5);
    }

    #[test]
    fn render_round_trips() {
        for s in [
            "plain",
            "with space",
            "a\"b",
            "c\\d",
            "x=y",
            "/re/",
            "a/*b",
            "",
        ] {
            let r = render_value(s, false);
            let toks = kinds(&r);
            assert_eq!(toks.len(), 1, "{r}");
            assert_eq!(toks[0].1, s);
        }
    }
}
