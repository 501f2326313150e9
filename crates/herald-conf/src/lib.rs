//! herald-conf: Momentum's `ecelerity.conf` configuration language.
//!
//! Owns the lexer, parser, the syntax tree with source spans, `include` handling, the scope tree with Momentum's
//! fallback rules, the typed option table, and validation. Every diagnostic carries `file:line:col`.
