//! The syntax tree of one file, exactly as written (before includes are expanded and options are typed). Every node
//! keeps the position of the text it came from.

/// A 1-based line and column in the file the node came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

/// A single value: a bare word or a quoted string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scalar {
    pub text: String,
    pub quoted: bool,
    pub pos: Pos,
}

/// The right-hand side of `name = …`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawValue {
    /// `value` or `"value"`.
    Scalar(Scalar),
    /// `( a "b" c )`, whitespace separated, may span lines.
    List(Vec<Scalar>),
    /// `[ key = value … ]`.
    Pairs(Vec<(Scalar, Scalar)>),
}

impl RawValue {
    /// Where the value starts.
    pub fn pos(&self, fallback: Pos) -> Pos {
        match self {
            RawValue::Scalar(s) => s.pos,
            RawValue::List(items) => items.first().map(|s| s.pos).unwrap_or(fallback),
            RawValue::Pairs(p) => p.first().map(|(k, _)| k.pos).unwrap_or(fallback),
        }
    }
}

/// One statement of a scope body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    /// `name = value`.
    Option {
        name: String,
        name_pos: Pos,
        value: RawValue,
        value_pos: Pos,
    },
    /// `kind [name] { body }`.
    Scope {
        kind: String,
        kind_pos: Pos,
        name: Option<Scalar>,
        body: Vec<Stmt>,
    },
    /// `include "path"` or `readonly_include "path"`.
    Include {
        readonly: bool,
        path: Scalar,
        pos: Pos,
    },
}
