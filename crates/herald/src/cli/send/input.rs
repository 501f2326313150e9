//! What `herald send` reads: notifications from a CSV of tokens or from JSON lines, each checked with its line
//! number so a bad file is reported in full before anything is sent.
//!
//! The CSV reader is a small line splitter of its own rather than the `csv` crate: that crate reads malformed
//! quoting without an error (`"open` takes the rest of the file as one field, `"a"b` becomes `ab`), and a file
//! of device tokens with a stray quote should be refused with its line and column, not sent with a wrong token.
//! A field cannot span lines here, which no column of this input needs.

use std::io::BufRead;

use serde::Deserialize;
use serde_json::value::RawValue;

/// APNs options of one notification (or, at the top of a request, of every notification without its own).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Options {
    #[serde(default)]
    pub apns_id: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub push_type: Option<String>,
    #[serde(default)]
    pub priority: Option<u8>,
    #[serde(default)]
    pub expiration: Option<u64>,
    #[serde(default)]
    pub collapse_id: Option<String>,
}

impl Options {
    pub fn is_empty(&self) -> bool {
        *self == Options::default()
    }
}

/// One notification to send. `payload: None` means the request's shared payload.
#[derive(Debug, Clone)]
pub struct Item {
    pub token: String,
    pub payload: Option<Box<RawValue>>,
    /// The text of a CSV `alert` column, which `payload` holds alone until [`merge_alerts`] sets it in a shared
    /// `--payload`.
    pub alert: Option<String>,
    pub options: Options,
    /// The line of the input it was read from (`None` for one not read from a file).
    pub line: Option<usize>,
}

impl Item {
    /// A token that takes the shared payload and options.
    pub fn plain(token: impl Into<String>) -> Item {
        Item {
            token: token.into(),
            payload: None,
            alert: None,
            options: Options::default(),
            line: None,
        }
    }
}

/// With no shared payload (`--payload`, `--alert`), every notification read needs its own: the first one without
/// is named by its line, with how many more lack one.
pub fn check_payloads(items: &[Item], source_name: &str) -> Result<(), InputError> {
    let mut missing = items.iter().filter(|i| i.payload.is_none());
    let Some(first) = missing.next() else {
        return Ok(());
    };
    let others = missing.count();
    let message = format!(
        "this notification has no payload of its own{}: give one for all with --payload JSON or --alert TEXT \
         (or an `alert` column)",
        match others {
            0 => String::new(),
            1 => " (nor has 1 other)".to_owned(),
            n => format!(" (nor have {n} others)"),
        }
    );
    Err(match first.line {
        Some(line) => InputError::Line {
            source_name: source_name.to_owned(),
            line,
            message,
        },
        None => InputError::Payload(format!("{source_name}: {message}")),
    })
}

/// The input formats of `--file`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One device token per line; an optional header row names the columns (`token`, and optionally `alert`,
    /// `topic`, `push_type`, `priority`, `expiration`, `collapse_id`); with --payload, a row's alert is set in its
    /// aps. Lines starting with `#` are comments before
    /// the header and anywhere in a list of tokens without one; after a header every line is a row.
    Csv,
    /// One JSON object per line, as the items of the native API's `notifications` (`token`, `payload`, options).
    Jsonl,
}

/// A problem in the input, with where it is.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("{source_name}: cannot read: {error}")]
    Read {
        source_name: String,
        error: std::io::Error,
    },
    #[error("{source_name}:{line}: {message}")]
    Line {
        source_name: String,
        line: usize,
        message: String,
    },
    #[error("{0}: no notifications in it")]
    Empty(String),
    #[error("{0}")]
    Payload(String),
}

/// Every problem of an input: the first [`MAX_ERRORS`] of them, and how many more there were.
#[derive(Debug, Default)]
pub struct InputErrors {
    pub errors: Vec<InputError>,
    /// Errors found beyond the first [`MAX_ERRORS`]: counted, not shown.
    pub not_shown: usize,
}

impl InputErrors {
    fn one(error: InputError) -> InputErrors {
        InputErrors {
            errors: vec![error],
            not_shown: 0,
        }
    }

    /// Keeps `error` if fewer than [`MAX_ERRORS`] are kept, else counts it.
    fn push(&mut self, error: InputError) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(error);
        } else {
            self.not_shown += 1;
        }
    }

    fn is_empty(&self) -> bool {
        self.errors.is_empty() && self.not_shown == 0
    }
}

impl std::fmt::Display for InputErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        if self.not_shown > 0 {
            write!(
                f,
                "\n… and {} more error{} not shown (only the first {MAX_ERRORS} are)",
                self.not_shown,
                if self.not_shown == 1 { "" } else { "s" }
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for InputErrors {}

/// Show at most this many errors of an input (the others are counted): past them the file is surely the wrong one.
const MAX_ERRORS: usize = 20;

/// The payload `--alert TEXT` stands for.
pub fn alert_payload(text: &str) -> Box<RawValue> {
    let json = serde_json::json!({"aps": {"alert": text}}).to_string();
    // A serialized `Value` is always valid JSON.
    RawValue::from_string(json).unwrap_or_else(|_| empty_object())
}

fn empty_object() -> Box<RawValue> {
    RawValue::from_string("{}".to_owned()).unwrap_or_else(|_| unreachable!("{{}} is valid JSON"))
}

/// With a shared payload (`--payload`), a CSV row's `alert` is set as `aps.alert` in a copy of it, so that the
/// rest of the payload (a `badge`, a `sound`, custom keys) stays: the row's own payload is the shared one with its
/// alert. Such a payload is written anew (its keys in order, a repeated key once); the rows without an alert take
/// the shared payload byte for byte. Refused when the shared payload's `aps` is not an object.
pub fn merge_alerts(items: &mut [Item], shared: &RawValue) -> Result<(), InputError> {
    if items.iter().all(|i| i.alert.is_none()) {
        return Ok(());
    }
    let base: serde_json::Map<String, serde_json::Value> = serde_json::from_str(shared.get())
        .map_err(|e| InputError::Payload(format!("--payload: not a JSON object: {e}")))?;
    if base.get("aps").is_some_and(|aps| !aps.is_object()) {
        return Err(InputError::Payload(
            "--payload: its aps is not an object, so the alert column cannot be set in it".into(),
        ));
    }
    for item in items.iter_mut() {
        if let Some(alert) = &item.alert {
            item.payload = Some(with_alert(&base, alert));
        }
    }
    Ok(())
}

/// `base` with `aps.alert` set to `alert` (`base`'s `aps` is an object or absent).
fn with_alert(base: &serde_json::Map<String, serde_json::Value>, alert: &str) -> Box<RawValue> {
    let mut payload = base.clone();
    let aps = payload
        .entry("aps")
        .or_insert_with(|| serde_json::Value::Object(serde_json::Map::new()));
    if let Some(aps) = aps.as_object_mut() {
        aps.insert("alert".to_owned(), serde_json::Value::from(alert));
    }
    let json = serde_json::Value::Object(payload).to_string();
    // A serialized `Value` is always valid JSON.
    RawValue::from_string(json).unwrap_or_else(|_| empty_object())
}

/// Checks `--payload JSON`: a JSON object, kept byte for byte.
pub fn parse_payload(text: &str) -> Result<Box<RawValue>, InputError> {
    let raw: Box<RawValue> = serde_json::from_str(text)
        .map_err(|e| InputError::Payload(format!("--payload: not valid JSON: {e}")))?;
    if !raw.get().trim_start().starts_with('{') {
        return Err(InputError::Payload(
            "--payload: must be a JSON object, such as {\"aps\":{\"alert\":\"Hello\"}}".into(),
        ));
    }
    Ok(raw)
}

/// Reads notifications in `format` from `reader`; `source_name` names it in errors.
pub fn read(
    reader: impl BufRead,
    format: Format,
    source_name: &str,
) -> Result<Vec<Item>, InputErrors> {
    let items = match format {
        Format::Csv => read_csv(reader, source_name)?,
        Format::Jsonl => read_jsonl(reader, source_name)?,
    };
    if items.is_empty() {
        return Err(InputErrors::one(InputError::Empty(source_name.to_owned())));
    }
    Ok(items)
}

/// Calls `each` with every line of `reader` (numbered from 1, without its `\n` or `\r\n`) that is UTF-8 text; a line
/// that is not is an error of its own, named by its number, and the others are read all the same. A read error
/// ends the input (after the errors found before it).
fn for_each_line(
    mut reader: impl BufRead,
    source_name: &str,
    errors: &mut InputErrors,
    mut each: impl FnMut(usize, &str, &mut InputErrors),
) {
    let mut buf = Vec::new();
    let mut number = 0;
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(error) => {
                errors.push(InputError::Read {
                    source_name: source_name.to_owned(),
                    error,
                });
                return;
            }
        }
        number += 1;
        let bytes = buf.strip_suffix(b"\n").unwrap_or(&buf);
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        match std::str::from_utf8(bytes) {
            Ok(line) => each(number, line, errors),
            Err(e) => errors.push(InputError::Line {
                source_name: source_name.to_owned(),
                line: number,
                message: format!("not UTF-8 (at byte {} of the line)", e.valid_up_to() + 1),
            }),
        }
    }
}

/// The byte order mark some programs write at the start of a UTF-8 file.
const BOM: char = '\u{feff}';

/// The columns a CSV header may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Token,
    Alert,
    Topic,
    PushType,
    Priority,
    Expiration,
    CollapseId,
}

impl Column {
    fn parse(name: &str) -> Option<Column> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "token" | "device_token" => Column::Token,
            "alert" => Column::Alert,
            "topic" => Column::Topic,
            "push_type" => Column::PushType,
            "priority" => Column::Priority,
            "expiration" => Column::Expiration,
            "collapse_id" => Column::CollapseId,
            _ => return None,
        })
    }
}

/// Reads a CSV of tokens. A line starting with `#` is a comment before the header row and anywhere in a list
/// without one (no device token starts with `#`); after a header every line is a row, so that a value starting with
/// `#` (an alert `#1 deal`) is sent, not dropped.
fn read_csv(reader: impl BufRead, source_name: &str) -> Result<Vec<Item>, InputErrors> {
    let mut items = Vec::new();
    let mut errors = InputErrors::default();
    let mut columns: Option<Vec<Column>> = None;
    let mut first = true;
    for_each_line(reader, source_name, &mut errors, |number, line, errors| {
        // A byte order mark (as spreadsheet programs write) is not part of the first field.
        let line = if number == 1 {
            line.strip_prefix(BOM).unwrap_or(line)
        } else {
            line
        };
        if line.trim().is_empty() || (columns.is_none() && line.starts_with('#')) {
            return;
        }
        let fail = |message: String| InputError::Line {
            source_name: source_name.to_owned(),
            line: number,
            message,
        };
        let fields = match split_csv(line) {
            Ok(f) => f,
            Err(m) => {
                errors.push(fail(m));
                return;
            }
        };
        // The first row is a header when it names a column (any case; `device_token` for `token`): no device
        // token reads as a column name.
        if std::mem::take(&mut first) && fields.iter().any(|f| Column::parse(f).is_some()) {
            let mut parsed = Vec::new();
            for f in &fields {
                match Column::parse(f) {
                    Some(c) if parsed.contains(&c) => {
                        errors.push(fail(format!("the header names column {f:?} twice")))
                    }
                    Some(c) => parsed.push(c),
                    None => errors.push(fail(format!(
                        "unknown column {f:?} in the header (known: token, alert, topic, push_type, \
                         priority, expiration, collapse_id)"
                    ))),
                }
            }
            if !parsed.contains(&Column::Token) {
                errors.push(fail(
                    "the header names no token column (`token` or `device_token`)".to_owned(),
                ));
            }
            columns = Some(parsed);
            return;
        }
        match csv_item(&fields, columns.as_deref()) {
            // Once the input is refused its items are not needed: only its errors are.
            Ok(_) if !errors.is_empty() => {}
            Ok(item) => items.push(Item {
                line: Some(number),
                ..item
            }),
            Err(m) => errors.push(fail(m)),
        }
    });
    if errors.is_empty() {
        Ok(items)
    } else {
        Err(errors)
    }
}

fn csv_item(fields: &[String], columns: Option<&[Column]>) -> Result<Item, String> {
    let Some(columns) = columns else {
        if fields.len() > 1 {
            return Err(format!(
                "{} columns, but without a header row only a token per line is read (add a header such as \
                 `token,alert`)",
                fields.len()
            ));
        }
        return Ok(Item::plain(fields[0].trim()));
    };
    if fields.len() != columns.len() {
        return Err(format!(
            "{} columns where the header names {}",
            fields.len(),
            columns.len()
        ));
    }
    let mut item = Item::plain(String::new());
    for (column, value) in columns.iter().zip(fields) {
        let value = value.trim();
        let text = || (!value.is_empty()).then(|| value.to_owned());
        match column {
            Column::Token => item.token = value.to_owned(),
            Column::Alert => {
                if !value.is_empty() {
                    item.payload = Some(alert_payload(value));
                    item.alert = Some(value.to_owned());
                }
            }
            Column::Topic => item.options.topic = text(),
            Column::PushType => item.options.push_type = text(),
            Column::CollapseId => item.options.collapse_id = text(),
            Column::Priority => {
                item.options.priority = (!value.is_empty())
                    .then(|| value.parse())
                    .transpose()
                    .map_err(|_| format!("priority {value:?} is not a number"))?
            }
            Column::Expiration => {
                item.options.expiration = (!value.is_empty())
                    .then(|| value.parse())
                    .transpose()
                    .map_err(|_| format!("expiration {value:?} is not epoch seconds"))?
            }
        }
    }
    if item.token.is_empty() {
        return Err("the token column is empty".into());
    }
    Ok(item)
}

/// Splits one CSV line: fields separated by commas, optionally in double quotes (`""` is a quote inside).
fn split_csv(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    let mut was_quoted = false;
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                field.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.trim().is_empty() && !was_quoted => {
                field.clear();
                quoted = true;
                was_quoted = true;
            }
            (false, ',') => {
                fields.push(std::mem::take(&mut field));
                was_quoted = false;
            }
            (false, c) if was_quoted && !c.is_whitespace() => {
                return Err(format!(
                    "column {}: text after a closing quote",
                    fields.len() + 1
                ));
            }
            (false, c) => field.push(c),
        }
    }
    if quoted {
        return Err(format!("column {}: unclosed quote", fields.len() + 1));
    }
    fields.push(field);
    Ok(fields)
}

/// One line of JSONL input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonLine {
    token: String,
    payload: Box<RawValue>,
    #[serde(flatten)]
    options: Options,
}

fn read_jsonl(reader: impl BufRead, source_name: &str) -> Result<Vec<Item>, InputErrors> {
    let mut items = Vec::new();
    let mut errors = InputErrors::default();
    for_each_line(reader, source_name, &mut errors, |number, line, errors| {
        let line = if number == 1 {
            line.strip_prefix(BOM).unwrap_or(line)
        } else {
            line
        };
        if line.trim().is_empty() {
            return;
        }
        match parse_json_line(line) {
            Ok(_) if !errors.is_empty() => {}
            Ok(item) => items.push(Item {
                line: Some(number),
                ..item
            }),
            Err(message) => errors.push(InputError::Line {
                source_name: source_name.to_owned(),
                line: number,
                message,
            }),
        }
    });
    if errors.is_empty() {
        Ok(items)
    } else {
        Err(errors)
    }
}

fn parse_json_line(line: &str) -> Result<Item, String> {
    // `flatten` and `deny_unknown_fields` do not combine in serde: check the member names first.
    let names: std::collections::BTreeMap<String, serde::de::IgnoredAny> =
        serde_json::from_str(line).map_err(|e| format!("not a JSON object: {e}"))?;
    const KNOWN: [&str; 8] = [
        "token",
        "payload",
        "apns_id",
        "topic",
        "push_type",
        "priority",
        "expiration",
        "collapse_id",
    ];
    if let Some(unknown) = names.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!(
            "unknown member {unknown:?} (known: {})",
            KNOWN.join(", ")
        ));
    }
    let parsed: JsonLine = serde_json::from_str(line).map_err(|e| e.to_string())?;
    if !parsed.payload.get().trim_start().starts_with('{') {
        return Err("payload: must be a JSON object".into());
    }
    Ok(Item {
        token: parsed.token,
        payload: Some(parsed.payload),
        alert: None,
        options: parsed.options,
        line: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv(text: &str) -> Result<Vec<Item>, InputErrors> {
        read(text.as_bytes(), Format::Csv, "t.csv")
    }

    #[test]
    fn csv_without_header_is_one_token_per_line() {
        let items = csv("aa\n\n# comment\nbb\r\n").unwrap();
        let tokens: Vec<_> = items.iter().map(|i| i.token.as_str()).collect();
        assert_eq!(tokens, ["aa", "bb"]);
        assert!(items.iter().all(|i| i.payload.is_none()));
    }

    #[test]
    fn csv_header_names_columns_and_quotes_work() {
        let items = csv("token,alert,priority\naa,\"Hi, \"\"you\"\"\",5\nbb,,\n").unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[0].payload.as_ref().unwrap().get(),
            r#"{"aps":{"alert":"Hi, \"you\""}}"#
        );
        assert_eq!(items[0].options.priority, Some(5));
        assert!(items[1].payload.is_none());
        assert_eq!(items[1].options.priority, None);
    }

    /// A shared `--payload` keeps its keys when a row has an alert: the alert goes into its aps (the badge
    /// stays), a row without one takes the payload as given, and an aps that is no object is refused.
    #[test]
    fn an_alert_column_is_set_in_the_shared_payload() {
        let mut items = csv("token,alert\naa,Hi\nbb,\n").unwrap();
        let shared = parse_payload(r#"{"aps":{"badge":1},"x":2}"#).unwrap();
        merge_alerts(&mut items, &shared).unwrap();
        assert_eq!(
            items[0].payload.as_ref().map(|p| p.get()),
            Some(r#"{"aps":{"alert":"Hi","badge":1},"x":2}"#)
        );
        assert!(items[1].payload.is_none(), "the shared payload as given");
        let mut items = csv("token,alert\naa,Hi\n").unwrap();
        merge_alerts(&mut items, &parse_payload(r#"{"x":2}"#).unwrap()).unwrap();
        assert_eq!(
            items[0].payload.as_ref().map(|p| p.get()),
            Some(r#"{"aps":{"alert":"Hi"},"x":2}"#)
        );
        let err = merge_alerts(&mut items, &parse_payload(r#"{"aps":1}"#).unwrap()).unwrap_err();
        assert!(err.to_string().contains("aps is not an object"), "{err}");
    }

    #[test]
    fn csv_errors_carry_line_numbers() {
        let err = csv("aa\nbb,cc\n\"open\n").unwrap_err().to_string();
        assert!(err.contains("t.csv:2: 2 columns"), "{err}");
        assert!(err.contains("t.csv:3: column 1: unclosed quote"), "{err}");
        // Refused, not read as `ab` (as a lenient CSV reader would): a stray quote in a token file is a mistake.
        let err = csv("token,alert\naa,\"a\"b\n").unwrap_err().to_string();
        assert!(
            err.contains("t.csv:2: column 2: text after a closing quote"),
            "{err}"
        );
        let err = csv("token,colour\n").unwrap_err().to_string();
        assert!(err.contains("t.csv:1: unknown column \"colour\""), "{err}");
        let err = csv("token,priority\naa,high\n").unwrap_err().to_string();
        assert!(err.contains("t.csv:2: priority \"high\""), "{err}");
        let err = csv("\n\n").unwrap_err().to_string();
        assert_eq!(err, "t.csv: no notifications in it");
        let err = csv("alert,topic\nhi,t\n").unwrap_err().to_string();
        assert!(
            err.contains("t.csv:1: the header names no token column"),
            "{err}"
        );

        // A notification without a payload (and none given for all) is named by its line, not its rank.
        let items = csv("# tokens\ntoken,alert\naa,Hi\n\nbb,\ncc,\n").unwrap();
        assert_eq!(
            items.iter().map(|i| i.line).collect::<Vec<_>>(),
            [Some(3), Some(5), Some(6)]
        );
        let err = check_payloads(&items, "t.csv").unwrap_err().to_string();
        assert!(
            err.starts_with(
                "t.csv:5: this notification has no payload of its own (nor has 1 other)"
            ),
            "{err}"
        );
        assert!(check_payloads(&items[..1], "t.csv").is_ok());
    }

    #[test]
    fn a_header_is_recognised_as_the_columns_are_read() {
        let tokens = |items: &[Item]| items.iter().map(|i| i.token.clone()).collect::<Vec<_>>();
        for header in [
            "token,alert",
            "Token,Alert",
            "device_token,alert",
            "DEVICE_TOKEN , alert",
            "\u{feff}token,alert",
            "\u{feff}Device_Token,alert",
        ] {
            let items =
                csv(&format!("{header}\naa,Hi\n")).unwrap_or_else(|e| panic!("{header:?}: {e}"));
            assert_eq!(tokens(&items), ["aa"], "{header:?}");
            assert_eq!(
                items[0].payload.as_ref().map(|p| p.get()),
                Some(r#"{"aps":{"alert":"Hi"}}"#),
                "{header:?}"
            );
        }
        // A byte order mark before a plain list of tokens is not part of the first token.
        assert_eq!(tokens(&csv("\u{feff}aa\nbb\n").unwrap()), ["aa", "bb"]);
        let items = read(
            "\u{feff}{\"token\":\"aa\",\"payload\":{}}\n".as_bytes(),
            Format::Jsonl,
            "-",
        )
        .unwrap();
        assert_eq!(tokens(&items), ["aa"]);
    }

    #[test]
    fn a_hash_is_a_comment_only_before_the_header_or_without_one() {
        // After a header, a row whose first value starts with `#` is a row (it used to vanish as a comment).
        let items = csv("# exported today\nalert,token\n#1 deal,aa\n").unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].token, "aa");
        assert_eq!(items[0].line, Some(3));
        assert_eq!(
            items[0].payload.as_ref().unwrap().get(),
            r##"{"aps":{"alert":"#1 deal"}}"##
        );
        // A `#` token after a header is sent (and refused by herald, with its line), not skipped.
        let items = csv("token\n#aa\nbb\n").unwrap();
        assert_eq!(
            items.iter().map(|i| i.token.as_str()).collect::<Vec<_>>(),
            ["#aa", "bb"]
        );
        // Without a header, comments go anywhere.
        let items = csv("# list\naa\n# more\nbb\n").unwrap();
        assert_eq!(
            items
                .iter()
                .map(|i| (i.token.as_str(), i.line))
                .collect::<Vec<_>>(),
            [("aa", Some(2)), ("bb", Some(4))]
        );
    }

    #[test]
    fn a_line_that_is_not_utf8_is_named_and_the_other_errors_are_kept() {
        let err = read(&b"aa\n\xff\xfe\nbb,cc\n\xc3\n"[..], Format::Csv, "bad.csv").unwrap_err();
        let text = err.to_string();
        assert_eq!(
            text,
            "bad.csv:2: not UTF-8 (at byte 1 of the line)\nbad.csv:3: 2 columns, but without a header row only a \
             token per line is read (add a header such as `token,alert`)\nbad.csv:4: not UTF-8 (at byte 1 of the line)"
        );
        let err = read(
            &b"{\"token\":\"aa\",\"payload\":{}}\n{\"token\":\"a\xffa\"}\nnope\n"[..],
            Format::Jsonl,
            "in.jsonl",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(
                "in.jsonl:2: not UTF-8 (at byte 12 of the line)\nin.jsonl:3: not a JSON object"
            ),
            "{err}"
        );
    }

    #[test]
    fn at_most_20_errors_are_shown_of_every_kind_and_the_rest_are_counted() {
        // Quoting errors used to escape the cap.
        let err = csv(&"\"x\n".repeat(1000)).unwrap_err();
        assert_eq!(err.errors.len(), 20);
        assert_eq!(err.not_shown, 980);
        let text = err.to_string();
        assert_eq!(text.lines().count(), 21, "{text}");
        assert!(
            text.starts_with("t.csv:1: column 1: unclosed quote\n"),
            "{text}"
        );
        assert!(
            text.contains("t.csv:20: column 1: unclosed quote\n"),
            "{text}"
        );
        assert!(
            text.ends_with("\n… and 980 more errors not shown (only the first 20 are)"),
            "{text}"
        );
        // Row errors alike, and the count says when it is one.
        let err = csv(&"a,b\n".repeat(21)).unwrap_err().to_string();
        assert!(
            err.ends_with("\n… and 1 more error not shown (only the first 20 are)"),
            "{err}"
        );
        // 20 errors exactly: nothing was left out, nothing says so.
        let err = csv(&"a,b\n".repeat(20)).unwrap_err().to_string();
        assert!(!err.contains("not shown"), "{err}");
        assert_eq!(err.lines().count(), 20);
        let err = read("x\n".repeat(25).as_bytes(), Format::Jsonl, "-")
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("… and 5 more errors not shown (only the first 20 are)"),
            "{err}"
        );
    }

    #[test]
    fn jsonl_keeps_payload_bytes_and_options() {
        let text = "{\"token\":\"aa\",\"payload\":{\"aps\" : {\"badge\":1.0}},\"priority\":5}\n\n{\"token\":\"bb\",\"payload\":{}}";
        let items = read(text.as_bytes(), Format::Jsonl, "-").unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(
            items[0].payload.as_ref().unwrap().get(),
            "{\"aps\" : {\"badge\":1.0}}"
        );
        assert_eq!(items[0].options.priority, Some(5));
        assert_eq!(items[1].token, "bb");
    }

    #[test]
    fn jsonl_errors_name_line_and_member() {
        let text = "{\"token\":\"aa\",\"payload\":{}}\nnot json\n{\"token\":\"aa\",\"payload\":{},\"colour\":1}\n{\"token\":\"aa\",\"payload\":[1]}\n{\"payload\":{}}";
        let err = read(text.as_bytes(), Format::Jsonl, "in.jsonl")
            .unwrap_err()
            .to_string();
        assert!(err.contains("in.jsonl:2: not a JSON object"), "{err}");
        assert!(
            err.contains("in.jsonl:3: unknown member \"colour\""),
            "{err}"
        );
        assert!(
            err.contains("in.jsonl:4: payload: must be a JSON object"),
            "{err}"
        );
        assert!(err.contains("in.jsonl:5: missing field `token`"), "{err}");
    }

    #[test]
    fn payload_flag_must_be_an_object() {
        assert_eq!(
            parse_payload(" {\"aps\":{}} ").unwrap().get(),
            "{\"aps\":{}}"
        );
        assert!(parse_payload("[1]").is_err());
        assert!(parse_payload("{").is_err());
        assert_eq!(
            alert_payload("Hi \"x\"").get(),
            r#"{"aps":{"alert":"Hi \"x\""}}"#
        );
    }
}
