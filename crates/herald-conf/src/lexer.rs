//! The lexer: turns configuration text into tokens (words, quoted strings, punctuation), skipping whitespace and
//! `#` / `/* */` comments, and reporting unterminated strings and comments. It streams: memory stays bounded by one
//! token, and every character is looked at a constant number of times.

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

/// Streams tokens from a text. Lexing errors are collected in `errors` and lexing goes on after them.
pub struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    line: u32,
    col: u32,
    pub errors: Vec<LexError>,
}

fn is_punct(c: char) -> bool {
    matches!(
        c,
        '{' | '}' | '(' | ')' | '[' | ']' | '=' | '"' | '\'' | '#'
    )
}

impl<'a> Lexer<'a> {
    pub fn new(src: &'a str) -> Self {
        Self {
            src,
            pos: 0,
            line: 1,
            col: 1,
            errors: Vec::new(),
        }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
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

    fn starts_comment(&self) -> bool {
        self.src[self.pos..].starts_with("/*")
    }

    /// Skips whitespace and comments.
    fn skip_trivia(&mut self) {
        loop {
            match self.peek() {
                Some(c) if c.is_whitespace() => {
                    self.bump();
                }
                Some('#') => {
                    // to end of line (the newline itself is whitespace)
                    match self.src[self.pos..].find('\n') {
                        Some(n) => {
                            let chars = self.src[self.pos..self.pos + n].chars().count() as u32;
                            self.pos += n;
                            self.col += chars;
                        }
                        None => {
                            let chars = self.src[self.pos..].chars().count() as u32;
                            self.pos = self.src.len();
                            self.col += chars;
                        }
                    }
                }
                Some('/') if self.starts_comment() => {
                    let (line, col) = (self.line, self.col);
                    self.bump();
                    self.bump();
                    match self.src[self.pos..].find("*/") {
                        Some(n) => {
                            let end = self.pos + n + 2;
                            while self.pos < end {
                                self.bump();
                            }
                        }
                        None => {
                            self.errors.push(LexError {
                                line,
                                col,
                                message: "unterminated comment: `/*` has no closing `*/`".into(),
                            });
                            self.pos = self.src.len();
                        }
                    }
                }
                _ => return,
            }
        }
    }

    fn quoted(&mut self, quote: char) -> Cow<'a, str> {
        let (line, col) = (self.line, self.col);
        self.bump(); // opening quote
        let start = self.pos;
        let mut owned: Option<String> = None;
        loop {
            match self.peek() {
                None | Some('\n') => {
                    self.errors.push(LexError {
                        line,
                        col,
                        message: format!("unterminated string: {quote} opened here is not closed on the same line"),
                    });
                    // `domain "name {`: end the string before a trailing `{`, so the scope still opens.
                    let rest = &self.src[start..self.pos];
                    if let Some(before) = rest.trim_end().strip_suffix('{') {
                        self.pos = start + before.len();
                        self.col = col + 1 + before.chars().count() as u32;
                        return Cow::Borrowed(before.trim_end());
                    }
                    return owned.map(Cow::Owned).unwrap_or(Cow::Borrowed(rest));
                }
                Some(c) if c == quote => {
                    let end = self.pos;
                    self.bump();
                    return owned
                        .map(Cow::Owned)
                        .unwrap_or(Cow::Borrowed(&self.src[start..end]));
                }
                Some('\\') if quote == '"' => {
                    let here = self.pos;
                    self.bump();
                    match self.peek() {
                        Some(c @ ('"' | '\\')) => {
                            let s = owned.get_or_insert_with(|| self.src[start..here].to_string());
                            s.push(c);
                            self.bump();
                        }
                        _ => {
                            if let Some(s) = owned.as_mut() {
                                s.push('\\');
                            }
                        }
                    }
                }
                Some(c) => {
                    if let Some(s) = owned.as_mut() {
                        s.push(c);
                    }
                    self.bump();
                }
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
