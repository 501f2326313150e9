//! Diagnostics: errors and warnings that point at `FILE:LINE:COL` and quote the offending text, bounded in size.

use std::{fmt, sync::Arc};

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The configuration is rejected.
    Error,
    /// The configuration loads, but something in it deserves attention.
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// A position in a source file: 1-based line and column (columns count characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file as it was named (the path given to the loader, or the name given to `parse_str`).
    pub file: Arc<str>,
    pub line: u32,
    pub col: u32,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// One error or warning, displayed as `FILE:LINE:COL: error: message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub severity: Severity,
    pub location: Location,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.location, self.severity, self.message)
    }
}

/// Every diagnostic of a load, in the order found. Returned as the error of [`crate::Config::load`].
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct Diagnostics {
    items: Vec<Diagnostic>,
    errors: usize,
    warnings: usize,
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// The most errors one load reports; past it a last error says the rest were not shown.
pub const MAX_ERRORS: usize = 200;
/// The most warnings one load reports; past it a last warning says the rest were not shown.
pub const MAX_WARNINGS: usize = 1000;

impl Diagnostics {
    pub fn new() -> Self {
        Self::default()
    }

    /// All diagnostics, errors and warnings mixed, in the order found.
    pub fn all(&self) -> &[Diagnostic] {
        &self.items
    }

    pub fn errors(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items.iter().filter(|d| d.severity == Severity::Error)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Diagnostic> {
        self.items
            .iter()
            .filter(|d| d.severity == Severity::Warning)
    }

    pub fn error_count(&self) -> usize {
        self.errors
    }

    pub fn has_errors(&self) -> bool {
        self.errors > 0
    }

    /// How many diagnostics are recorded (a mark for [`Diagnostics::truncate`]).
    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    /// Forgets every diagnostic recorded after the first `len`.
    pub(crate) fn truncate(&mut self, len: usize) {
        self.items.truncate(len);
        self.errors = self
            .items
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count();
        self.warnings = self.items.len() - self.errors;
    }

    /// True once [`MAX_ERRORS`] errors were recorded; further errors are dropped.
    pub fn is_full(&self) -> bool {
        self.errors > MAX_ERRORS
    }

    pub fn push(&mut self, d: Diagnostic) {
        let (count, max, what) = match d.severity {
            Severity::Error => (&mut self.errors, MAX_ERRORS, "errors"),
            Severity::Warning => (&mut self.warnings, MAX_WARNINGS, "warnings"),
        };
        if *count > max {
            return;
        }
        *count += 1;
        if *count > max {
            self.items.push(Diagnostic {
                severity: d.severity,
                location: d.location,
                message: format!("too many {what} ({max}); the rest are not shown"),
            });
            return;
        }
        self.items.push(d);
    }

    pub fn error(&mut self, location: Location, message: impl Into<String>) {
        self.push(Diagnostic {
            severity: Severity::Error,
            location,
            message: message.into(),
        });
    }

    pub fn warning(&mut self, location: Location, message: impl Into<String>) {
        self.push(Diagnostic {
            severity: Severity::Warning,
            location,
            message: message.into(),
        });
    }

    pub(crate) fn into_warnings(self) -> Vec<Diagnostic> {
        self.items
            .into_iter()
            .filter(|d| d.severity == Severity::Warning)
            .collect()
    }
}

/// The longest piece of offending text quoted in a diagnostic, in characters.
pub const MAX_QUOTE: usize = 60;

/// Quotes offending text for a message: backticked, control and invisible characters escaped (`\u{feff}`), cut to [`MAX_QUOTE`] characters
/// with the full length noted, so a 10 MB token yields a short message.
pub fn quote(text: &str) -> String {
    let mut out = String::from("`");
    for (chars, c) in text.chars().enumerate() {
        if chars == MAX_QUOTE {
            let total = text.chars().count();
            out.push_str(&format!("…` ({total} characters)"));
            return out;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() || crate::suggest::is_invisible(c) => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('`');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc() -> Location {
        Location {
            file: Arc::from("a.conf"),
            line: 3,
            col: 7,
        }
    }

    #[test]
    fn display_is_file_line_col_severity_message() {
        let mut d = Diagnostics::new();
        d.error(loc(), "bad thing");
        d.warning(loc(), "odd thing");
        assert_eq!(
            d.to_string(),
            "a.conf:3:7: error: bad thing\na.conf:3:7: warning: odd thing"
        );
        assert_eq!(d.error_count(), 1);
    }

    #[test]
    fn quote_truncates_long_text() {
        let long = "x".repeat(10_000);
        let q = quote(&long);
        assert!(q.len() < 100, "{q}");
        assert!(q.contains("10000 characters"));
        assert_eq!(quote("a\nb"), "`a\\nb`");
    }

    #[test]
    fn errors_are_capped() {
        let mut d = Diagnostics::new();
        for _ in 0..1000 {
            d.error(loc(), "e");
        }
        assert_eq!(d.error_count(), MAX_ERRORS + 1);
        assert!(d.all().last().unwrap().message.contains("too many errors"));
    }
}
