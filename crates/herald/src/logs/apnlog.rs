//! The `apn_logger` push log (docs/momentum-compat.md#apn-logger): one `@`-delimited line per outcome with the entry
//! type in field 1, in formats built from Momentum's macros (`%t`, `%i`, `%sa`, `%da`, `%d`, `%g`, `%b`, `%H`, `%B`,
//! `%ti`, `%S`, `%e`, `%dt`). The defaults are Momentum's.

use std::fmt::Write as _;

use super::file::{LogFile, push_escaped, push_escaped_in_quotes};
use super::{OutcomeKind, OutcomeRecord};

pub const DEFAULT_DELIVERY_FORMAT: &str = "%t@D@%i@\"%sa\"@\"%da\"@%d@%g@%b@%H@%B@%ti";
pub const DEFAULT_TEMPFAIL_FORMAT: &str = "%t@T@%i@\"%sa\"@\"%da\"@%d@%g@%b@%H@%B@%ti@%S@%e";
pub const DEFAULT_PERMFAIL_FORMAT: &str = "%t@P@%i@%sa@%da@%d@%g@%b@%H@%S@%e";
pub const DEFAULT_HEARTBEAT_FORMAT: &str = "%t@M";

/// One macro of an apn_logger format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Macro {
    Time,
    MessageId,
    SourceAddr,
    DestAddr,
    DeviceToken,
    Domain,
    BindingGroup,
    Binding,
    RemoteIp,
    Bytes,
    TransactionId,
    Status,
    Error,
}

/// Longest names first, so `%sa` is not read as `%s` + `a`.
const MACROS: [(&str, Macro); 13] = [
    ("ti", Macro::TransactionId),
    ("sa", Macro::SourceAddr),
    ("da", Macro::DestAddr),
    ("dt", Macro::DeviceToken),
    ("t", Macro::Time),
    ("i", Macro::MessageId),
    ("d", Macro::Domain),
    ("g", Macro::BindingGroup),
    ("b", Macro::Binding),
    ("H", Macro::RemoteIp),
    ("B", Macro::Bytes),
    ("S", Macro::Status),
    ("e", Macro::Error),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Macro(Macro),
}

/// A parsed log format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogFormat(Vec<Segment>);

/// A format with a `%` that names no macro.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown apn_logger macro %{name} at byte {offset} of {format:?}")]
pub struct FormatError {
    pub format: String,
    pub name: String,
    pub offset: usize,
}

impl LogFormat {
    pub fn parse(format: &str) -> Result<Self, FormatError> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = format;
        while let Some(pos) = rest.find('%') {
            literal.push_str(&rest[..pos]);
            let after = &rest[pos + 1..];
            if let Some(tail) = after.strip_prefix('%') {
                literal.push('%');
                rest = tail;
                continue;
            }
            let Some((name, m)) = MACROS.iter().find(|(name, _)| after.starts_with(name)) else {
                let name: String = after
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                return Err(FormatError {
                    format: format.to_owned(),
                    name,
                    offset: format.len() - rest.len() + pos,
                });
            };
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
            }
            segments.push(Segment::Macro(*m));
            rest = &after[name.len()..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(LogFormat(segments))
    }

    /// Writes the line of `r`. A field between double quotes (an odd number of `"` in the literals before it, as
    /// `"%sa"` in the default formats) has its `"` escaped as `\"`, so that it cannot end the quotes early.
    ///
    /// `%B` and `%ti` describe what went to APNs: for an outcome that reached no connection (nothing was sent) they
    /// are `0` and empty, as the mainlog's bytes are and as the binary protocol's identifier is.
    fn render(&self, r: &OutcomeRecord<'_>, line: &mut String) {
        let n = r.notification;
        let sent = r.kind == OutcomeKind::Delivered || r.connected;
        let mut quoted = false;
        for segment in &self.0 {
            let push_escaped = if quoted {
                push_escaped_in_quotes
            } else {
                push_escaped
            };
            match segment {
                Segment::Literal(s) => {
                    line.push_str(s);
                    quoted ^= s.matches('"').count() % 2 == 1;
                }
                Segment::Macro(m) => match m {
                    Macro::Time => {
                        let _ = write!(line, "{}", r.at);
                    }
                    Macro::MessageId => {
                        let _ = write!(line, "{}", n.id);
                    }
                    Macro::SourceAddr => push_escaped(line, &n.sender),
                    Macro::DestAddr => push_escaped(line, &n.recipient()),
                    Macro::DeviceToken => n.push.token.write_hex(line),
                    Macro::Domain => push_escaped(line, &n.domain),
                    Macro::BindingGroup => push_escaped(line, r.binding_group),
                    Macro::Binding => push_escaped(line, r.binding),
                    Macro::RemoteIp => {
                        if let Some(ip) = r.remote_ip {
                            let _ = write!(line, "{ip}");
                        }
                    }
                    Macro::Bytes => {
                        let _ = write!(line, "{}", if sent { r.bytes } else { 0 });
                    }
                    Macro::TransactionId => {
                        if sent {
                            push_escaped(line, r.transaction_id.unwrap_or(""));
                        }
                    }
                    Macro::Status => {
                        if let Some(s) = r.status {
                            let _ = write!(line, "{s}");
                        }
                    }
                    Macro::Error => push_escaped(line, r.error),
                },
            }
        }
    }
}

/// The formats and switches of one apn_logger instance.
#[derive(Debug, Clone)]
pub struct ApnLogFormats {
    pub delivery: Option<LogFormat>,
    pub tempfail: Option<LogFormat>,
    pub permfail: Option<LogFormat>,
    pub heartbeat: LogFormat,
}

impl Default for ApnLogFormats {
    fn default() -> Self {
        let parse = |f: &str| {
            LogFormat::parse(f).unwrap_or(LogFormat(vec![Segment::Literal(f.to_owned())]))
        };
        ApnLogFormats {
            delivery: Some(parse(DEFAULT_DELIVERY_FORMAT)),
            tempfail: Some(parse(DEFAULT_TEMPFAIL_FORMAT)),
            permfail: Some(parse(DEFAULT_PERMFAIL_FORMAT)),
            heartbeat: parse(DEFAULT_HEARTBEAT_FORMAT),
        }
    }
}

/// One apn_logger instance.
#[derive(Debug)]
pub struct ApnLog {
    file: LogFile,
    formats: ApnLogFormats,
    heartbeat: Option<std::time::Duration>,
}

impl ApnLog {
    pub fn new(file: LogFile, formats: ApnLogFormats) -> Self {
        ApnLog {
            file,
            formats,
            heartbeat: None,
        }
    }

    /// This instance's `heartbeat`: how often it writes an `M` line; `None` (0) writes none.
    pub fn with_heartbeat(mut self, every: Option<std::time::Duration>) -> Self {
        self.heartbeat = every;
        self
    }

    pub fn heartbeat_interval(&self) -> Option<std::time::Duration> {
        self.heartbeat
    }

    pub fn file(&self) -> &LogFile {
        &self.file
    }

    pub fn outcome(&self, r: &OutcomeRecord<'_>) {
        let format = match r.kind {
            OutcomeKind::Delivered => &self.formats.delivery,
            OutcomeKind::Transient => &self.formats.tempfail,
            OutcomeKind::Permanent => &self.formats.permfail,
        };
        if let Some(format) = format {
            let mut line = String::with_capacity(200);
            format.render(r, &mut line);
            self.file.write_line(&line);
        }
    }

    /// Whether outcomes of this kind (`D`, `T`, `P`) are logged (their format is set).
    pub fn logs_result(&self, result: char) -> bool {
        match result {
            'D' => self.formats.delivery.is_some(),
            'T' => self.formats.tempfail.is_some(),
            _ => self.formats.permfail.is_some(),
        }
    }

    pub fn heartbeat(&self, at: u64) {
        let mut line = String::new();
        for segment in &self.formats.heartbeat.0 {
            match segment {
                Segment::Literal(s) => line.push_str(s),
                Segment::Macro(Macro::Time) => {
                    let _ = write!(line, "{at}");
                }
                Segment::Macro(_) => {}
            }
        }
        self.file.write_line(&line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_formats_parse() {
        for f in [
            DEFAULT_DELIVERY_FORMAT,
            DEFAULT_TEMPFAIL_FORMAT,
            DEFAULT_PERMFAIL_FORMAT,
            DEFAULT_HEARTBEAT_FORMAT,
        ] {
            LogFormat::parse(f).unwrap();
        }
    }

    #[test]
    fn two_letter_macros_win_over_one_letter_ones() {
        let f = LogFormat::parse("%sa%ti%t%%").unwrap();
        assert_eq!(
            f.0,
            vec![
                Segment::Macro(Macro::SourceAddr),
                Segment::Macro(Macro::TransactionId),
                Segment::Macro(Macro::Time),
                Segment::Literal("%".into()),
            ]
        );
    }

    /// A sender with a double quote (SMTP `MAIL FROM:<"x\" y"@…>`, the REST `from`) used to end the default
    /// formats' `"%sa"` early; inside quotes `"` is escaped, outside (the P format's bare `%sa`) it is left as is.
    #[test]
    fn a_quote_inside_a_quoted_field_is_escaped() {
        let mut n = crate::outcomes::fixtures::notification(
            crate::model::message::MessageId::from_parts(0, 1_800_000_000_000, 1),
            "quotes.example",
            1,
        );
        n.sender = std::sync::Arc::from("x\" y@a@b");
        n.recipient_given = Some(std::sync::Arc::from("\"r\"@quotes.example"));
        let delivered = crate::outcomes::fixtures::delivered(&n);
        let render = |format: &str, r: &OutcomeRecord<'_>| {
            let mut line = String::new();
            LogFormat::parse(format).unwrap().render(r, &mut line);
            line
        };
        let line = render(DEFAULT_DELIVERY_FORMAT, &delivered);
        assert!(
            line.contains(r#"@"x\" y\@a\@b"@"\"r\"\@quotes.example"@quotes.example@"#),
            "{line}"
        );
        let permanent = OutcomeRecord {
            kind: OutcomeKind::Permanent,
            ..delivered
        };
        let line = render(DEFAULT_PERMFAIL_FORMAT, &permanent);
        assert!(
            line.contains(r#"@x" y\@a\@b@"r"\@quotes.example@quotes.example@"#),
            "{line}"
        );
        // Quotes in the literals open and close: only the fields between them are escaped.
        let line = render(r#"%sa "%da" %sa"#, &delivered);
        assert_eq!(line, r#"x" y\@a\@b "\"r\"\@quotes.example" x" y\@a\@b"#);
    }

    /// An outcome that reached no connection (a route whose connection never opened) sent nothing: `%B` is 0 and
    /// `%ti` empty, although the notification has the `apns-id` it would have been sent with
    /// (docs/operations.md, apn_logger fields). Once on a connection, both say what was sent.
    #[test]
    fn nothing_sent_is_0_bytes_and_no_transaction_id() {
        let n = crate::outcomes::fixtures::notification(
            crate::model::message::MessageId::from_parts(0, 1_800_000_000_000, 1),
            "unsent.example",
            1,
        );
        let format = LogFormat::parse("%B@%ti").unwrap();
        let render = |r: &OutcomeRecord<'_>| {
            let mut line = String::new();
            format.render(r, &mut line);
            line
        };
        let delivered = crate::outcomes::fixtures::delivered(&n);
        for kind in [OutcomeKind::Transient, OutcomeKind::Permanent] {
            let unsent = OutcomeRecord {
                kind,
                connected: false,
                remote_ip: None,
                bytes: 256,
                transaction_id: Some("7C1B0B2E-9A51-4F5B-8E1C-2D6A4B3F0001"),
                error: "connection to 127.0.0.1:9 failed: connection refused",
                ..delivered
            };
            assert_eq!(render(&unsent), "0@", "{kind:?}");
            let on_a_connection = OutcomeRecord {
                connected: true,
                ..unsent
            };
            assert_eq!(
                render(&on_a_connection),
                "256@7C1B0B2E-9A51-4F5B-8E1C-2D6A4B3F0001",
                "{kind:?}"
            );
        }
        let sent = OutcomeRecord {
            bytes: 300,
            transaction_id: Some("id"),
            ..delivered
        };
        assert_eq!(render(&sent), "300@id");
    }

    #[test]
    fn unknown_macro_is_refused_with_its_place() {
        let e = LogFormat::parse("%t@%q").unwrap_err();
        assert_eq!(e.name, "q");
        assert_eq!(e.offset, 3);
    }
}
