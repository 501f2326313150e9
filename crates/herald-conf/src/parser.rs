//! The parser: builds the syntax tree of one file from the lexer's tokens. It never stops at the first error: after
//! a bad statement it skips to the next line (or past a balanced `{ … }` block) and goes on, so that every error in
//! a file is reported, up to [`MAX_ERRORS`] of them: later ones are counted, not kept, so that a hostile file
//! cannot pile up millions of messages ([`Parser::hidden_errors`] says how many more there were). Nesting depth is
//! bounded, so hostile input cannot exhaust the stack.

use std::collections::VecDeque;

use crate::{
    ast::{Pos, RawValue, Scalar, Stmt},
    diag::{MAX_ERRORS, quote},
    lexer::{Lexer, MAX_KEPT_ERRORS, Token, TokenKind},
    options,
    scopes::ScopeKind,
    secrets,
};

/// The deepest scope nesting accepted (Momentum's deepest legal nesting is 3).
pub const MAX_DEPTH: usize = 16;

/// Added when a stray `=` most likely belongs to an unquoted value.
const EQUALS_HINT: &str =
    " (a value containing `=`, such as `apn://host?port=2195`, must be quoted)";

/// How the value of a secret option (and any text of its statement) is quoted in a message.
pub const MASKED: &str = "`********`";

/// A syntax error at a position in the parsed text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses a whole file. Returns the statements it could read and its syntax errors in text order: the first
/// [`MAX_ERRORS`], then, if there were more, one that says how many more ([`Parser::hidden_errors`]).
pub fn parse(src: &str) -> (Vec<Stmt>, Vec<SyntaxError>) {
    let mut p = Parser::new(src);
    let mut body = Vec::new();
    while let Some(s) = p.next_statement() {
        body.push(s);
    }
    let mut errors = p.take_errors();
    errors.extend(p.hidden_errors());
    (body, errors)
}

enum Step {
    Stmt(Stmt),
    Skipped,
    End,
}

/// A streaming parser: [`Parser::next_statement`] yields one top-level statement (with everything nested in it)
/// at a time, so a large file never exists as a whole syntax tree.
pub struct Parser<'a> {
    lx: Lexer<'a>,
    ahead: VecDeque<Token<'a>>,
    errors: Vec<SyntaxError>,
    /// The parser's own errors found, kept or not.
    found: usize,
    /// Errors (the parser's and the lexer's) returned by [`Parser::take_errors`]: at most [`MAX_ERRORS`].
    handed: usize,
    /// Errors not kept or not returned (the lexer's own uncounted), and where the first of them is.
    hidden: usize,
    first_hidden: Option<Pos>,
    /// The secret option (canonical name) whose statement is being read: its tokens are never quoted.
    secret: Option<&'static str>,
    /// The line of the last token consumed.
    last_line: u32,
}

impl<'a> Parser<'a> {
    pub fn new(src: &'a str) -> Self {
        Parser {
            lx: Lexer::new(src),
            ahead: VecDeque::new(),
            errors: Vec::new(),
            found: 0,
            handed: 0,
            hidden: 0,
            first_hidden: None,
            secret: None,
            last_line: 1,
        }
    }

    /// The next top-level statement; `None` at the end of the text.
    pub fn next_statement(&mut self) -> Option<Stmt> {
        loop {
            match self.step(None, 0) {
                Step::Stmt(s) => return Some(s),
                Step::Skipped => {}
                Step::End => return None,
            }
        }
    }

    /// The syntax errors found since the last call (lexer and parser), in text order, and forgets them. Over the
    /// parser's life it returns at most [`MAX_ERRORS`]; the others are counted in [`Parser::hidden_errors`].
    pub fn take_errors(&mut self) -> Vec<SyntaxError> {
        let mut errors = std::mem::take(&mut self.errors);
        errors.extend(self.lx.errors.drain(..).map(|e| SyntaxError {
            pos: Pos {
                line: e.line,
                col: e.col,
            },
            message: e.message,
        }));
        errors.sort_by_key(|e| (e.pos.line, e.pos.col));
        let room = MAX_ERRORS - self.handed;
        if errors.len() > room {
            for e in errors.drain(room..) {
                self.hide(e.pos);
            }
        }
        self.handed += errors.len();
        errors
    }

    /// How many syntax errors (lexer and parser) were found, returned or not. A statement that adds none is
    /// well-formed.
    pub fn errors_found(&self) -> usize {
        self.found + self.lx.errors_found()
    }

    /// When more syntax errors were found than [`Parser::take_errors`] returns: one error, at the first of those
    /// not returned, that says how many there were.
    pub fn hidden_errors(&self) -> Option<SyntaxError> {
        let (lexer, lexer_at) = self.lx.hidden_errors();
        let more = self.hidden + lexer;
        if more == 0 {
            return None;
        }
        let lexer_at = lexer_at.map(|(line, col)| Pos { line, col });
        let pos = match (self.first_hidden, lexer_at) {
            (Some(a), Some(b)) => std::cmp::min_by_key(a, b, |p| (p.line, p.col)),
            (a, b) => a.or(b).unwrap_or_default(),
        };
        Some(SyntaxError {
            pos,
            message: format!(
                "too many syntax errors: {more} more after the first {MAX_ERRORS} are not shown"
            ),
        })
    }

    /// Counts an error that is not returned.
    fn hide(&mut self, pos: Pos) {
        self.hidden += 1;
        if self
            .first_hidden
            .is_none_or(|f| (pos.line, pos.col) < (f.line, f.col))
        {
            self.first_hidden = Some(pos);
        }
    }
}

fn pos(t: &Token<'_>) -> Pos {
    Pos {
        line: t.line,
        col: t.col,
    }
}

/// The canonical name of the secret option named `word` (any case), if it is one.
fn secret_option(word: &str) -> Option<&'static str> {
    options::lookup(word)
        .filter(|id| secrets::is_secret(*id))
        .map(|id| id.def().name)
}

/// `domain `x`` or `apn`, for messages about a scope. The name after a secret option's name (`control_password
/// NAME {`) is masked: it is most likely the secret.
fn describe_scope(kw: &str, name: Option<&str>) -> String {
    match name {
        Some(_) if secret_option(kw).is_some() => format!("{kw} {MASKED}"),
        Some(n) => format!("{kw} {}", quote(n)),
        None => kw.to_string(),
    }
}

/// A token for a message: words and strings quoted (masked within a secret option's statement), punctuation named.
fn describe(t: &Token<'_>, secret: bool) -> String {
    match t.kind {
        TokenKind::Word | TokenKind::Quoted if secret => MASKED.to_string(),
        TokenKind::Word | TokenKind::Quoted => quote(&t.value),
        k => k.describe().to_string(),
    }
}

impl<'a> Parser<'a> {
    fn peek_n(&mut self, n: usize) -> Option<&Token<'a>> {
        while self.ahead.len() <= n {
            let t = self.lx.next()?;
            self.ahead.push_back(t);
        }
        self.ahead.get(n)
    }

    fn peek(&mut self) -> Option<&Token<'a>> {
        self.peek_n(0)
    }

    fn next(&mut self) -> Option<Token<'a>> {
        let t = match self.ahead.pop_front() {
            Some(t) => Some(t),
            None => self.lx.next(),
        };
        if let Some(t) = &t {
            self.last_line = t.line;
        }
        t
    }

    /// A token for a message, masked inside a secret option's statement.
    fn describe(&self, t: &Token<'_>) -> String {
        describe(t, self.secret.is_some())
    }

    /// Records an error (past [`MAX_KEPT_ERRORS`], only counts it). Within a secret option's statement, a
    /// message that does not name the option is prefixed with it (its tokens are masked, so the name says where the
    /// error is).
    fn error(&mut self, pos: Pos, message: String) {
        self.found += 1;
        if self.found > MAX_KEPT_ERRORS {
            self.hide(pos);
            return;
        }
        let message = match self.secret {
            Some(name) if !message.contains(name) => format!("`{name}`: {message}"),
            _ => message,
        };
        self.errors.push(SyntaxError { pos, message });
    }

    /// Skips a balanced `{ … }` block whose `{` was just consumed, iteratively.
    fn skip_block(&mut self) {
        let mut depth = 1usize;
        while let Some(t) = self.next() {
            match t.kind {
                TokenKind::LBrace => depth += 1,
                TokenKind::RBrace => {
                    depth -= 1;
                    if depth == 0 {
                        return;
                    }
                }
                _ => {}
            }
        }
    }

    /// Recovery: skips the rest of `line`, and any `{ … }` block that starts on it, stopping before a `}` that
    /// would close the enclosing scope.
    fn skip_line(&mut self, line: u32) {
        while let Some(t) = self.peek() {
            if t.line != line || t.kind == TokenKind::RBrace {
                return;
            }
            let kind = t.kind;
            self.next();
            if kind == TokenKind::LBrace {
                self.skip_block();
                return;
            }
        }
    }

    /// Parses statements until EOF (top level) or until the `}` closing the scope opened at `open`.
    fn body(&mut self, open: Option<(Pos, &str, Option<&str>)>, depth: usize) -> Vec<Stmt> {
        let mut out = Vec::new();
        loop {
            match self.step(open, depth) {
                Step::Stmt(s) => out.push(s),
                Step::Skipped => {}
                Step::End => return out,
            }
        }
    }

    /// Reads one statement of a body, or reports and skips what cannot start one.
    fn step(&mut self, open: Option<(Pos, &str, Option<&str>)>, depth: usize) -> Step {
        let Some(t) = self.peek() else {
            if let Some((p, kw, name)) = open {
                let what = describe_scope(kw, name);
                let msg = format!("unterminated scope: the `{{` of {what} has no matching `}}`");
                self.error(p, msg);
            }
            return Step::End;
        };
        match t.kind {
            TokenKind::RBrace => {
                let p = pos(t);
                self.next();
                if open.is_some() {
                    return Step::End;
                }
                self.error(p, "unexpected `}`: no scope is open here".into());
                Step::Skipped
            }
            TokenKind::Word => match self.statement(depth) {
                Some(s) => Step::Stmt(s),
                None => Step::Skipped,
            },
            _ => {
                let (p, d) = (pos(t), describe(t, false));
                let hint = if t.kind == TokenKind::Equals {
                    EQUALS_HINT
                } else {
                    ""
                };
                self.error(
                    p,
                    format!("expected an option or scope name, found {d}{hint}"),
                );
                self.next();
                self.skip_line(p.line);
                Step::Skipped
            }
        }
    }

    fn scalar(t: Token<'_>) -> Scalar {
        Scalar {
            pos: pos(&t),
            quoted: t.kind == TokenKind::Quoted,
            text: t.value.into_owned(),
        }
    }

    /// Reads one statement starting with a word. A statement naming a secret option is read with its tokens
    /// masked in messages, and what follows it that does not start a statement is taken as more of its value.
    fn statement(&mut self, depth: usize) -> Option<Stmt> {
        let w = self.next()?;
        let Some(secret) = secret_option(&w.value) else {
            return self.statement_of(w, depth);
        };
        let start = pos(&w);
        let errors = self.found;
        self.secret = Some(secret);
        let stmt = self.statement_of(w, depth);
        self.secret = None;
        if !matches!(stmt, Some(Stmt::Scope { .. })) {
            self.secret_tail(secret, start, self.found > errors);
        }
        stmt
    }

    /// Whether the lexer reported a problem (an unterminated string or comment) at or after `start`.
    fn lexed_badly_since(&self, start: Pos) -> bool {
        self.lx
            .last_error_at()
            .is_some_and(|at| at >= (start.line, start.col))
    }

    /// After a secret option's statement that started at `start`: skips (reporting once, masked, unless
    /// `reported`) whatever follows that does not start a statement, so that no piece of a value of several words
    /// (or one spread over lines by an unterminated string) is quoted as a statement of its own. On the line where
    /// the statement ended (and the next one after an unterminated string) only a known option, scope or `include`
    /// starts a statement.
    fn secret_tail(&mut self, name: &'static str, start: Pos, mut reported: bool) {
        let strict_until = self.last_line + u32::from(self.lexed_badly_since(start));
        loop {
            let Some(t) = self.peek() else {
                return;
            };
            if t.kind == TokenKind::RBrace {
                return;
            }
            let (p, strict) = (pos(t), t.line <= strict_until);
            if self.starts_statement(strict) {
                return;
            }
            if !reported {
                let what = match options::lookup(name).map(|id| id.def().kind) {
                    Some(crate::value::Kind::List) => "a list `( … )`, one word or a quoted string",
                    _ => "one word or a quoted string",
                };
                self.error(
                    p,
                    format!("`{name}`: the value must be {what}; found more after it"),
                );
                reported = true;
            }
            if self.next().is_some_and(|t| t.kind == TokenKind::LBrace) {
                self.skip_block();
            }
        }
    }

    /// Whether the next tokens start a statement. On a later line than the secret's (not `strict`): a known option,
    /// scope or `include`, or any word followed by `=`, `{` or `NAME {` (a mistake of its own, reported as such).
    /// On the secret's line (`strict`): only a known option, scope or `include` followed by what it needs
    /// (`NAME =`, `KIND {`, `KIND NAME {`, `include PATH`); anything else there is more of the value.
    fn starts_statement(&mut self, strict: bool) -> bool {
        let Some(t) = self.peek() else {
            return true;
        };
        if t.kind != TokenKind::Word {
            return false;
        }
        let include = t.value.eq_ignore_ascii_case("include")
            || t.value.eq_ignore_ascii_case("readonly_include");
        let known = include
            || options::lookup(&t.value).is_some()
            || ScopeKind::from_keyword(&t.value).is_some();
        if !strict && known {
            return true;
        }
        if strict && !known {
            return false;
        }
        let kind = |t: Option<&Token<'_>>| t.map(|t| t.kind);
        match kind(self.peek_n(1)) {
            Some(TokenKind::Word | TokenKind::Quoted) if include => true,
            Some(TokenKind::Equals | TokenKind::LBrace) => !include,
            Some(TokenKind::Word | TokenKind::Quoted) => {
                kind(self.peek_n(2)) == Some(TokenKind::LBrace)
            }
            _ => false,
        }
    }

    fn statement_of(&mut self, w: Token<'a>, depth: usize) -> Option<Stmt> {
        let wpos = pos(&w);
        let lower = w.value.to_ascii_lowercase();
        if lower == "include" || lower == "readonly_include" {
            return match self.peek() {
                Some(t) if matches!(t.kind, TokenKind::Word | TokenKind::Quoted) => {
                    let t = self.next()?;
                    Some(Stmt::Include {
                        readonly: lower == "readonly_include",
                        path: Self::scalar(t),
                        pos: wpos,
                    })
                }
                _ => {
                    self.error(wpos, format!("`{lower}` needs a file or directory name"));
                    self.skip_line(wpos.line);
                    None
                }
            };
        }
        let next_kind = self.peek().map(|t| (t.kind, t.line));
        match next_kind {
            Some((TokenKind::Equals, _)) => {
                let eq = self.next()?;
                let value = self.value(pos(&eq), &w.value)?;
                let value_pos = value.pos(pos(&eq));
                Some(Stmt::Option {
                    name: w.value.into_owned(),
                    name_pos: wpos,
                    value,
                    value_pos,
                })
            }
            Some((TokenKind::LBrace, _)) => {
                let brace = self.next()?;
                self.scope_body(w, None, pos(&brace), depth)
            }
            Some((TokenKind::Word | TokenKind::Quoted, line)) => {
                if self.peek_n(1).map(|t| t.kind) == Some(TokenKind::LBrace) {
                    let name = self.next()?;
                    let brace = self.next()?;
                    return self.scope_body(w, Some(Self::scalar(name)), pos(&brace), depth);
                }
                if line == wpos.line {
                    let secret = self.secret.is_some();
                    let t = self.peek()?;
                    let (p, d) = (pos(t), describe(t, secret));
                    self.error(
                        p,
                        format!(
                            "missing `=` between {} and its value {d} (or `{{` to open a scope)",
                            quote(&w.value)
                        ),
                    );
                    self.skip_line(wpos.line);
                } else {
                    self.error(
                        wpos,
                        format!("{} has no `= value` and opens no scope", quote(&w.value)),
                    );
                }
                None
            }
            Some((_, _)) | None => {
                let secret = self.secret.is_some();
                let found = self
                    .peek()
                    .map(|t| describe(t, secret))
                    .unwrap_or_else(|| "the end of the file".into());
                self.error(
                    wpos,
                    format!(
                        "expected `=` or `{{` after {}, found {found}",
                        quote(&w.value)
                    ),
                );
                self.skip_line(wpos.line);
                None
            }
        }
    }

    fn scope_body(
        &mut self,
        kw: Token<'_>,
        name: Option<Scalar>,
        brace: Pos,
        depth: usize,
    ) -> Option<Stmt> {
        if depth + 1 > MAX_DEPTH {
            let what = describe_scope(&kw.value, name.as_ref().map(|n| n.text.as_str()));
            self.error(
                brace,
                format!("scopes nested more than {MAX_DEPTH} deep; {what} is skipped"),
            );
            self.skip_block();
            return None;
        }
        let body = self.body(
            Some((brace, &kw.value, name.as_ref().map(|n| n.text.as_str()))),
            depth + 1,
        );
        let kind_pos = pos(&kw);
        Some(Stmt::Scope {
            kind: kw.value.into_owned(),
            kind_pos,
            name,
            body,
        })
    }

    fn value(&mut self, eq: Pos, name: &str) -> Option<RawValue> {
        let secret = self.secret.is_some();
        let Some(t) = self.peek() else {
            self.error(eq, format!("{} has no value after `=`", quote(name)));
            return None;
        };
        match t.kind {
            TokenKind::Word | TokenKind::Quoted => {
                // `name =` at the end of a line followed by `other = …` means the value is missing.
                if t.line != eq.line && self.peek_n(1).map(|n| n.kind) == Some(TokenKind::Equals) {
                    self.error(eq, format!("{} has no value after `=`", quote(name)));
                    return None;
                }
                let t = self.next()?;
                Some(RawValue::Scalar(Self::scalar(t)))
            }
            TokenKind::LParen => {
                let open = pos(t);
                self.next();
                let mut items = Vec::new();
                loop {
                    let Some(t) = self.next() else {
                        self.error(open, "unterminated list: `(` has no matching `)`".into());
                        return None;
                    };
                    match t.kind {
                        TokenKind::Word | TokenKind::Quoted => items.push(Self::scalar(t)),
                        TokenKind::RParen => return Some(RawValue::List(items)),
                        _ => {
                            let (p, d) = (pos(&t), self.describe(&t));
                            let hint = if t.kind == TokenKind::Equals {
                                EQUALS_HINT
                            } else {
                                ""
                            };
                            self.error(p, format!("expected a list item or `)`, found {d}{hint}"));
                            if t.kind == TokenKind::RBrace {
                                // give the `}` back to the enclosing scope
                                self.ahead.push_front(t);
                            } else {
                                self.skip_line(p.line);
                            }
                            return None;
                        }
                    }
                }
            }
            TokenKind::LBracket => {
                let open = pos(t);
                self.next();
                let mut pairs = Vec::new();
                loop {
                    let Some(k) = self.next() else {
                        self.error(open, "unterminated array: `[` has no matching `]`".into());
                        return None;
                    };
                    match k.kind {
                        TokenKind::RBracket => return Some(RawValue::Pairs(pairs)),
                        TokenKind::Word | TokenKind::Quoted => {
                            let key = Self::scalar(k);
                            let eq_ok = self.peek().map(|t| t.kind) == Some(TokenKind::Equals);
                            if eq_ok {
                                self.next();
                            }
                            match self.peek() {
                                Some(v)
                                    if eq_ok
                                        && matches!(
                                            v.kind,
                                            TokenKind::Word | TokenKind::Quoted
                                        ) =>
                                {
                                    let v = self.next()?;
                                    pairs.push((key, Self::scalar(v)));
                                }
                                _ => {
                                    let key_text = if self.secret.is_some() {
                                        "********".to_string()
                                    } else {
                                        key.text.escape_debug().to_string()
                                    };
                                    self.error(
                                        key.pos,
                                        format!("expected `{key_text} = value` inside `[ … ]`"),
                                    );
                                    self.skip_line(key.pos.line);
                                    return None;
                                }
                            }
                        }
                        _ => {
                            let (p, d) = (pos(&k), self.describe(&k));
                            self.error(p, format!("expected `key = value` or `]`, found {d}"));
                            if k.kind == TokenKind::RBrace {
                                self.ahead.push_front(k);
                            } else {
                                self.skip_line(p.line);
                            }
                            return None;
                        }
                    }
                }
            }
            _ => {
                let (p, d) = (pos(t), describe(t, secret));
                self.error(p, format!("expected a value after `=`, found {d}"));
                self.skip_line(p.line);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(src: &str) -> Vec<(u32, u32, String)> {
        parse(src)
            .1
            .into_iter()
            .map(|e| (e.pos.line, e.pos.col, e.message))
            .collect()
    }

    #[test]
    fn parses_options_scopes_lists_arrays_includes() {
        let (stmts, errors) = parse(
            "a = 1\nlist = ( x \"y z\"\n  w )\narr = [ uri = \"ecauth://\" k = v ]\nd \"n\" { e { f = g } }\ninclude other.conf\n",
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(stmts.len(), 5);
        match &stmts[1] {
            Stmt::Option {
                value: RawValue::List(items),
                ..
            } => assert_eq!(items.len(), 3),
            s => panic!("{s:?}"),
        }
        match &stmts[3] {
            Stmt::Scope {
                name: Some(n),
                body,
                ..
            } => {
                assert_eq!(n.text, "n");
                assert!(matches!(&body[0], Stmt::Scope { name: None, .. }));
            }
            s => panic!("{s:?}"),
        }
        assert!(matches!(
            &stmts[4],
            Stmt::Include {
                readonly: false,
                ..
            }
        ));
    }

    #[test]
    fn brace_on_next_line_is_fine() {
        let (stmts, errors) = parse("esmtp_listener\n{\n listen \":25\"\n {\n }\n}\n");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(stmts.len(), 1);
    }

    #[test]
    fn missing_equals_points_at_value_and_recovers() {
        let e = errs("tls \"required\"\ntls_verify = no\nx y\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!((e[0].0, e[0].1), (1, 5));
        assert!(e[0].2.contains("missing `=`"));
        assert_eq!((e[1].0, e[1].1), (3, 3));
    }

    #[test]
    fn unterminated_scope_points_at_brace() {
        let e = errs("domain \"a\" {\n  tls = no\n");
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].0, e[0].1), (1, 12));
        assert!(e[0].2.contains("unterminated scope"), "{}", e[0].2);
    }

    #[test]
    fn stray_close_brace_and_garbage_reported_then_continue() {
        let e = errs("}\n= 3\nok = 1\n(\n");
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!((e[0].0, e[0].1), (1, 1));
        assert_eq!((e[1].0, e[1].1), (2, 1));
        assert_eq!((e[2].0, e[2].1), (4, 1));
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let src = "a {".repeat(100_000);
        let (_, e) = parse(&src);
        assert!(!e.is_empty());
    }

    #[test]
    fn errors_pile_up_only_to_the_cap_and_the_rest_are_counted() {
        let src = "}\n".repeat(1 << 20);
        let e = errs(&src);
        assert_eq!(e.len(), MAX_ERRORS + 1, "{:?}", &e[..3]);
        assert!(
            e[..MAX_ERRORS]
                .iter()
                .all(|(_, _, m)| m.contains("unexpected `}`"))
        );
        assert_eq!((e[0].0, e[0].1), (1, 1));
        let (line, col, last) = &e[MAX_ERRORS];
        assert_eq!((*line, *col), (MAX_ERRORS as u32 + 1, 1));
        assert_eq!(
            last,
            &format!(
                "too many syntax errors: {} more after the first {MAX_ERRORS} are not shown",
                (1 << 20) - MAX_ERRORS
            )
        );
        // Lexer errors (unterminated strings) count together with the parser's.
        let src = "\"\n}\n".repeat(1000);
        let e = errs(&src);
        assert_eq!(e.len(), MAX_ERRORS + 1);
        // Three per line pair: the open string, the string where a name belongs, the stray `}`.
        assert!(
            e[MAX_ERRORS]
                .2
                .contains(&format!("{} more", 3000 - MAX_ERRORS)),
            "{:?}",
            e[MAX_ERRORS]
        );
        // Under the cap nothing changes.
        assert_eq!(errs(&"}\n".repeat(MAX_ERRORS)).len(), MAX_ERRORS);
    }

    #[test]
    fn missing_value_at_end_of_line() {
        let e = errs("a =\nb = 2\n");
        assert_eq!(e.len(), 1);
        assert_eq!((e[0].0, e[0].1), (1, 3));
    }
}
