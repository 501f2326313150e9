//! Provider-side payload validation (docs/apns-protocol.md#provider-checks): size by protocol and push type, strict
//! JSON, the shape and value types of the `aps` dictionary, and the rules that tie the payload to its push type and
//! priority. A notification that fails here is refused at the door with the rule it broke.
//!
//! Decisions, where Apple leaves room:
//! - JSON is parsed strictly: one value, nothing but whitespace after it, and a key repeated in any object
//!   (at any depth) is refused, since receivers would disagree on which value counts. Detecting it costs one
//!   map lookup per key while parsing.
//! - `aps` is required for alert, background and liveactivity pushes. Other push types (voip, fileprovider,
//!   mdm, ...) carry app-defined payloads, so their `aps` is checked only when present.
//! - Unknown keys inside `aps` and `alert` are accepted (APNs ignores them), and so are the Live Activity keys
//!   (`event`, `timestamp`, `content-state`, ...) in the `aps` of any other push type, which APNs ignores there
//!   too: they are checked only in `liveactivity` pushes and broadcasts.
//! - An alert push over HTTP/2 must carry `alert`, `badge` or `sound`; a `content-available`-only payload
//!   belongs to the background push type, whose `aps` holds nothing but `content-available: 1`. The binary
//!   protocol has no push type, so neither rule applies there: a payload without `alert`, `badge` or `sound`
//!   that sets `content-available` may hold other `aps` keys, but may not use priority 10
//!   (docs/apns-protocol.md#binary-command-2 item 5).
//! - `content-available` and `mutable-content` accept 0 or 1; a sound's `critical` accepts 0 or 1.

mod infer;
mod strict;

use crate::binary::BinaryFormat;
use crate::broadcast::ChannelId;
use crate::push::{Priority, Protocol, PushType};
pub use infer::{infer_push_type, infer_push_type_for};
use strict::{Json, Object};

/// The rule a payload broke, naming the key or size at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    #[error("payload is empty")]
    Empty,
    #[error("payload is {size} bytes; {push_type} pushes over {protocol} allow at most {limit}")]
    TooLarge {
        size: usize,
        limit: usize,
        push_type: PushType,
        protocol: Protocol,
    },
    #[error("payload is not valid JSON: {detail}")]
    InvalidJson { detail: String },
    #[error("payload repeats the key {key:?} in one object (line {line}, column {column})")]
    DuplicateKey {
        key: String,
        line: usize,
        column: usize,
    },
    #[error("payload must be a JSON object, not {found}")]
    NotAnObject { found: &'static str },
    #[error("payload has no \"aps\" dictionary, which {push_type} pushes need")]
    MissingAps { push_type: PushType },
    #[error("\"aps\" must be a dictionary, not {found}")]
    ApsNotObject { found: &'static str },
    #[error("{key} must be {expected}, not {found}")]
    WrongType {
        key: String,
        expected: &'static str,
        found: &'static str,
    },
    #[error("{key} is {value}; allowed: {allowed}")]
    BadValue {
        key: String,
        value: String,
        allowed: &'static str,
    },
    /// A Live Activity time (`timestamp`, `stale-date`, `dismissal-date`) above [`MAX_LIVE_ACTIVITY_SECONDS`]: a
    /// count of milliseconds, most likely, where APNs takes seconds.
    #[error(
        "{key} is {value}, which looks like milliseconds: Live Activity times are seconds since the epoch (at most \
         {MAX_LIVE_ACTIVITY_SECONDS}, the year 5138); divide it by 1000"
    )]
    TimeInMilliseconds { key: String, value: String },
    #[error("{key} is required in {context}")]
    MissingKey {
        key: &'static str,
        context: &'static str,
    },
    /// A Live Activity's `input-push-channel` that is no channel id ([`ChannelId::parse`]); `detail` is the
    /// channel id error's text.
    #[error("{key} must be a broadcast channel id: {detail}")]
    BadInputPushChannel { key: String, detail: String },
    #[error("a background push may hold only content-available: 1 in aps, but it has {key:?}")]
    BackgroundExtraKey { key: String },
    #[error("priority {priority} is not allowed here: {why}")]
    PriorityNotAllowed {
        priority: Priority,
        why: &'static str,
    },
    /// A priority other than 10, or a background push, for a domain whose binary format has no priority field
    /// (`apn_binary_format = enhanced`): APNs would take the notification as priority 10
    /// ([`check_binary_format`]).
    #[error("priority {priority} is not allowed here: {}", priority_not_carried(.format, *.background))]
    PriorityNotCarried {
        priority: Priority,
        /// The format as [`BinaryFormat::describe`] names it.
        format: &'static str,
        /// Whether the notification is a background push (only `content-available` in `aps`), which needs
        /// priority 5.
        background: bool,
    },
    #[error(
        "an alert push needs alert, badge or sound in aps (a content-available-only push is a background push)"
    )]
    AlertWithoutContent,
    /// An alert push (named or inferred) without `alert`, `badge` or `sound` whose `aps` has `event` and
    /// `timestamp`: a Live Activity sent without its push type, which herald never infers from the payload.
    #[error(
        "an alert push needs alert, badge or sound in aps, and this aps has event and timestamp instead: the payload \
         looks like a Live Activity, which must name push type liveactivity (it is never inferred from the payload) \
         and go to a domain that sends over HTTP/2 with token authentication"
    )]
    AlertLooksLikeLiveActivity,
    #[error("broadcast payload is {size} bytes; broadcast pushes allow at most {limit}")]
    BroadcastTooLarge { size: usize, limit: usize },
    #[error("aps.event is \"start\": a broadcast cannot start a Live Activity (use update or end)")]
    BroadcastStart,
    #[error(
        "{push_type} pushes need HTTP/2, and this domain is routed to the binary protocol, which has no push type \
         or topic suffix to carry one; route the domain to an https:// host"
    )]
    NeedsHttp2 { push_type: PushType },
}

/// Checks `payload` for a push of `push_type` sent over `protocol` at `priority`
/// (docs/apns-protocol.md#provider-checks).
pub fn validate(
    payload: &[u8],
    push_type: PushType,
    protocol: Protocol,
    priority: Priority,
) -> Result<(), PayloadError> {
    // Rule 9: a Live Activity cannot go over the binary protocol.
    if protocol == Protocol::Binary && push_type == PushType::LiveActivity {
        return Err(PayloadError::NeedsHttp2 { push_type });
    }
    // Rule 1: non-empty, within the limit.
    if payload.is_empty() {
        return Err(PayloadError::Empty);
    }
    let limit = push_type.payload_limit(protocol);
    if payload.len() > limit {
        return Err(PayloadError::TooLarge {
            size: payload.len(),
            limit,
            push_type,
            protocol,
        });
    }
    // Rule 4 and docs/apns-protocol.md#push-types: priorities per protocol and push type.
    check_priority(push_type, protocol, priority)?;
    // Rule 2: a JSON object.
    let root = match strict::parse(payload)? {
        Json::Object(map) => map,
        other => {
            return Err(PayloadError::NotAnObject {
                found: other.type_name(),
            });
        }
    };
    let aps = match root.get("aps") {
        Some(Json::Object(aps)) => aps,
        Some(other) => {
            return Err(PayloadError::ApsNotObject {
                found: other.type_name(),
            });
        }
        None if matches!(
            push_type,
            PushType::Alert | PushType::Background | PushType::LiveActivity
        ) =>
        {
            return Err(PayloadError::MissingAps { push_type });
        }
        None => return Ok(()),
    };
    check_aps_types(aps, push_type)?;
    check_push_type_rules(aps, push_type, protocol, priority)
}

/// Checks the payload of a broadcast push (docs/apns-protocol.md#provider-checks rules 1, 2, 8 and 9,
/// docs/apns-protocol.md#history): non-empty, at most [`BROADCAST_PAYLOAD_LIMIT`] bytes, a Live Activity payload whose
/// `event` is `update` or `end` (a broadcast cannot start an activity). Every priority of HTTP/2 (10, 5, 1) is allowed
/// for broadcasts.
pub fn validate_broadcast(payload: &[u8]) -> Result<(), PayloadError> {
    if payload.is_empty() {
        return Err(PayloadError::Empty);
    }
    if payload.len() > BROADCAST_PAYLOAD_LIMIT {
        return Err(PayloadError::BroadcastTooLarge {
            size: payload.len(),
            limit: BROADCAST_PAYLOAD_LIMIT,
        });
    }
    let root = match strict::parse(payload)? {
        Json::Object(map) => map,
        other => {
            return Err(PayloadError::NotAnObject {
                found: other.type_name(),
            });
        }
    };
    let aps = match root.get("aps") {
        Some(Json::Object(aps)) => aps,
        Some(other) => {
            return Err(PayloadError::ApsNotObject {
                found: other.type_name(),
            });
        }
        None => {
            return Err(PayloadError::MissingAps {
                push_type: PushType::LiveActivity,
            });
        }
    };
    if aps.get("event").and_then(Json::as_str) == Some("start") {
        return Err(PayloadError::BroadcastStart);
    }
    check_aps_types(aps, PushType::LiveActivity)?;
    check_push_type_rules(
        aps,
        PushType::LiveActivity,
        Protocol::Http2,
        Priority::Immediate,
    )
}

/// The largest Live Activity time (`timestamp`, `stale-date`, `dismissal-date`) herald takes: 10^11 seconds since the
/// epoch, in the year 5138. A larger value is a time in milliseconds (docs/apns-protocol.md#rule-8), which the
/// device would read as a date thousands of years away: an update it never shows, an activity that never goes stale.
pub const MAX_LIVE_ACTIVITY_SECONDS: u64 = 100_000_000_000;

/// The largest broadcast payload APNs accepts (docs/apns-protocol.md#payload-limits, docs/apns-protocol.md#history).
pub const BROADCAST_PAYLOAD_LIMIT: usize = 5120;

fn check_priority(
    push_type: PushType,
    protocol: Protocol,
    priority: Priority,
) -> Result<(), PayloadError> {
    let why = match (protocol, push_type, priority) {
        (Protocol::Binary, _, Priority::Low) => {
            "the binary protocol knows only priorities 10 and 5"
        }
        // On the binary protocol, which has no push type, the content-available rule of
        // `check_push_type_rules` says the same about the payload itself.
        (Protocol::Http2, PushType::Background, Priority::Immediate) => {
            "background pushes must use priority 5"
        }
        (_, PushType::LiveActivity, Priority::Low) => "live activity pushes use priority 5 or 10",
        (_, PushType::PushToTalk, Priority::Conserve | Priority::Low) => {
            "push-to-talk pushes must use priority 10"
        }
        _ => return Ok(()),
    };
    Err(PayloadError::PriorityNotAllowed { priority, why })
}

/// Checks a notification's priority against the binary `format` of its domain's route
/// (docs/apns-protocol.md#binary-command-1): a format without a priority field (enhanced, simple) makes APNs take
/// every notification as priority 10, so one that asks for another priority (given, or a background push's
/// default of 5) is refused rather than sent at 10. A background push is refused at any priority, since it may not
/// use 10: `background` says the notification is one (its push type, or a payload with only `content-available`
/// in `aps`).
pub fn check_binary_format(
    format: BinaryFormat,
    priority: Priority,
    background: bool,
) -> Result<(), PayloadError> {
    if format.carries_priority() || (priority == Priority::Immediate && !background) {
        return Ok(());
    }
    Err(PayloadError::PriorityNotCarried {
        priority,
        format: format.describe(),
        background,
    })
}

/// Why [`PayloadError::PriorityNotCarried`] refuses, with the way out.
fn priority_not_carried(format: &str, background: bool) -> String {
    if background {
        format!(
            "a background push (only content-available in aps) must use priority 5, and this domain sends the \
             {format} binary format, which has no priority field: APNs would take it as priority 10. Background \
             pushes need the frame format: set apn_binary_format = frame for the domain"
        )
    } else {
        format!(
            "this domain sends the {format} binary format, which has no priority field: APNs would take the \
             notification as priority 10. Send priority 10 (or none), or set apn_binary_format = frame for the \
             domain, whose format carries the priority"
        )
    }
}

/// Whether `aps` is a silent push: content-available set and nothing for the user to see.
fn is_content_available_only(aps: &Object<'_>) -> bool {
    aps.get("content-available").and_then(Json::as_u64) == Some(1)
        && !["alert", "badge", "sound"]
            .iter()
            .any(|k| aps.contains_key(*k))
}

fn check_push_type_rules(
    aps: &Object<'_>,
    push_type: PushType,
    protocol: Protocol,
    priority: Priority,
) -> Result<(), PayloadError> {
    match (push_type, protocol) {
        // Rule 3, HTTP/2 only: the binary protocol has no push type, so a binary push that herald takes for a
        // background one (Momentum-era payloads with `category`, `mutable-content` or the like beside
        // `content-available`) is held only to the binary priority rule below.
        (PushType::Background, Protocol::Http2) => {
            // Only content-available: 1.
            if let Some(key) = aps.keys().find(|k| &**k != "content-available") {
                return Err(PayloadError::BackgroundExtraKey {
                    key: key.to_string(),
                });
            }
            match aps.get("content-available") {
                Some(v) if v.as_u64() == Some(1) => Ok(()),
                Some(v) => Err(PayloadError::BadValue {
                    key: "aps.content-available".into(),
                    value: v.to_string(),
                    allowed: "1 for a background push",
                }),
                None => Err(PayloadError::MissingKey {
                    key: "content-available",
                    context: "a background push's aps",
                }),
            }
        }
        (PushType::Alert, Protocol::Http2) => {
            if ["alert", "badge", "sound"]
                .iter()
                .any(|k| aps.contains_key(*k))
            {
                Ok(())
            } else if aps.contains_key("event") && aps.contains_key("timestamp") {
                Err(PayloadError::AlertLooksLikeLiveActivity)
            } else {
                Err(PayloadError::AlertWithoutContent)
            }
        }
        (_, Protocol::Binary)
            if priority == Priority::Immediate && is_content_available_only(aps) =>
        {
            // Rule 4, binary era: priority 10 is an error for a content-available-only push.
            Err(PayloadError::PriorityNotAllowed {
                priority,
                why: "a content-available-only notification must use priority 5",
            })
        }
        (PushType::LiveActivity, _) => check_live_activity(aps),
        _ => Ok(()),
    }
}

/// Rule 9: live activity payloads.
fn check_live_activity(aps: &Object<'_>) -> Result<(), PayloadError> {
    const CTX: &str = "a live activity push's aps";
    if !aps.contains_key("timestamp") {
        return Err(PayloadError::MissingKey {
            key: "timestamp",
            context: CTX,
        });
    }
    let Some(event) = aps.get("event") else {
        return Err(PayloadError::MissingKey {
            key: "event",
            context: CTX,
        });
    };
    if event.as_str() == Some("start") {
        for key in ["alert", "attributes-type", "attributes"] {
            if !aps.contains_key(key) {
                return Err(PayloadError::MissingKey {
                    key,
                    context: "a live activity start event",
                });
            }
        }
    }
    Ok(())
}

/// The `aps` keys only Live Activities use (docs/apns-protocol.md#aps-keys): APNs ignores them in the `aps` of any
/// other push type, as it ignores every key a push type does not use, so they are checked only for
/// `liveactivity` pushes and broadcasts.
const LIVE_ACTIVITY_KEYS: [&str; 9] = [
    "event",
    "timestamp",
    "stale-date",
    "dismissal-date",
    "content-state",
    "attributes",
    "attributes-type",
    "input-push-channel",
    "input-push-token",
];

/// Rule 8 and the types of docs/apns-protocol.md#aps-keys, docs/apns-protocol.md#alert-keys. The Live Activity keys
/// ([`LIVE_ACTIVITY_KEYS`]) are checked only when `push_type` is `liveactivity`.
fn check_aps_types(aps: &Object<'_>, push_type: PushType) -> Result<(), PayloadError> {
    let live_activity = push_type == PushType::LiveActivity;
    for (key, value) in aps {
        let path = || format!("aps.{key}");
        if !live_activity && LIVE_ACTIVITY_KEYS.contains(&&**key) {
            continue;
        }
        match &**key {
            "alert" => check_alert(value)?,
            "badge" => expect_non_negative_integer(value, path)?,
            "sound" => check_sound(value)?,
            "thread-id" | "category" | "target-content-id" | "filter-criteria"
            | "attributes-type" => expect_string(value, path)?,
            "input-push-channel" => expect_channel_id(value, path)?,
            "content-available" | "mutable-content" => expect_flag(value, path)?,
            "interruption-level" => {
                expect_string(value, path)?;
                expect_one_of(
                    value,
                    &["passive", "active", "time-sensitive", "critical"],
                    path,
                )?;
            }
            "relevance-score" => {
                let score = expect_number(value, path)?;
                if push_type != PushType::LiveActivity && !(0.0..=1.0).contains(&score) {
                    return Err(PayloadError::BadValue {
                        key: path(),
                        value: value.to_string(),
                        allowed: "0 to 1 (any number only for live activities)",
                    });
                }
            }
            "stale-date" | "timestamp" | "dismissal-date" => {
                let n = expect_number(value, path)?;
                if n < 0.0 {
                    return Err(PayloadError::BadValue {
                        key: path(),
                        value: value.to_string(),
                        allowed: "seconds since the epoch, not negative",
                    });
                }
                // Today's time in milliseconds is about 1.8e12; in seconds 1e11 is reached in the year 5138.
                if n > MAX_LIVE_ACTIVITY_SECONDS as f64 {
                    return Err(PayloadError::TimeInMilliseconds {
                        key: path(),
                        value: value.to_string(),
                    });
                }
            }
            "content-state" | "attributes" => expect_object(value, path)?,
            "event" => {
                expect_string(value, path)?;
                expect_one_of(value, &["start", "update", "end"], path)?;
            }
            "input-push-token" if value.as_u64() != Some(1) => {
                return Err(PayloadError::BadValue {
                    key: path(),
                    value: value.to_string(),
                    allowed: "1",
                });
            }
            _ => {}
        }
    }
    Ok(())
}

fn check_alert(value: &Json<'_>) -> Result<(), PayloadError> {
    let alert = match value {
        Json::String(_) => return Ok(()),
        Json::Object(map) => map,
        other => {
            return Err(PayloadError::WrongType {
                key: "aps.alert".into(),
                expected: "a string or a dictionary",
                found: other.type_name(),
            });
        }
    };
    for (key, value) in alert {
        let path = || format!("aps.alert.{key}");
        match &**key {
            // Live activity alerts may nest localisation objects in title and body (docs/apns-protocol.md#alert-keys).
            "title" | "subtitle" | "body"
                if !matches!(value, Json::String(_) | Json::Object(_)) =>
            {
                return Err(PayloadError::WrongType {
                    key: path(),
                    expected: "a string or a dictionary",
                    found: value.type_name(),
                });
            }
            "launch-image" | "title-loc-key" | "subtitle-loc-key" | "loc-key" => {
                expect_string(value, path)?
            }
            "title-loc-args" | "subtitle-loc-args" | "loc-args" => match value {
                Json::Array(items) if items.iter().all(Json::is_string) => {}
                other => {
                    return Err(PayloadError::WrongType {
                        key: path(),
                        expected: "an array of strings",
                        found: other.type_name(),
                    });
                }
            },
            _ => {}
        }
    }
    Ok(())
}

fn check_sound(value: &Json<'_>) -> Result<(), PayloadError> {
    let sound = match value {
        Json::String(_) => return Ok(()),
        Json::Object(map) => map,
        other => {
            return Err(PayloadError::WrongType {
                key: "aps.sound".into(),
                expected: "a string or a dictionary",
                found: other.type_name(),
            });
        }
    };
    for (key, value) in sound {
        let path = || format!("aps.sound.{key}");
        match &**key {
            "critical" => expect_flag(value, path)?,
            "name" => expect_string(value, path)?,
            "volume" => {
                let v = expect_number(value, path)?;
                if !(0.0..=1.0).contains(&v) {
                    return Err(PayloadError::BadValue {
                        key: path(),
                        value: value.to_string(),
                        allowed: "0 to 1",
                    });
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn expect_string(value: &Json<'_>, path: impl Fn() -> String) -> Result<(), PayloadError> {
    match value {
        Json::String(_) => Ok(()),
        other => Err(PayloadError::WrongType {
            key: path(),
            expected: "a string",
            found: other.type_name(),
        }),
    }
}

/// A string that [`ChannelId::parse`] takes: `input-push-channel` names the broadcast channel a started Live
/// Activity listens to, an id APNs handed out like any other (docs/apns-protocol.md#aps-keys).
fn expect_channel_id(value: &Json<'_>, path: impl Fn() -> String) -> Result<(), PayloadError> {
    expect_string(value, &path)?;
    match value.as_str().map(ChannelId::parse) {
        Some(Err(e)) => Err(PayloadError::BadInputPushChannel {
            key: path(),
            detail: e.to_string(),
        }),
        _ => Ok(()),
    }
}

fn expect_object(value: &Json<'_>, path: impl Fn() -> String) -> Result<(), PayloadError> {
    match value {
        Json::Object(_) => Ok(()),
        other => Err(PayloadError::WrongType {
            key: path(),
            expected: "a dictionary",
            found: other.type_name(),
        }),
    }
}

fn expect_number(value: &Json<'_>, path: impl Fn() -> String) -> Result<f64, PayloadError> {
    value.as_f64().ok_or_else(|| PayloadError::WrongType {
        key: path(),
        expected: "a number",
        found: value.type_name(),
    })
}

fn expect_non_negative_integer(
    value: &Json<'_>,
    path: impl Fn() -> String,
) -> Result<(), PayloadError> {
    match value {
        Json::Number(n) if n.is_u64() => Ok(()),
        other => Err(PayloadError::WrongType {
            key: path(),
            expected: "a non-negative integer",
            found: other.type_name(),
        }),
    }
}

fn expect_flag(value: &Json<'_>, path: impl Fn() -> String) -> Result<(), PayloadError> {
    match value {
        Json::Number(n) if matches!(n.as_u64(), Some(0 | 1)) => Ok(()),
        Json::Number(_) => Err(PayloadError::BadValue {
            key: path(),
            value: value.to_string(),
            allowed: "0 or 1",
        }),
        other => Err(PayloadError::WrongType {
            key: path(),
            expected: "the number 0 or 1",
            found: other.type_name(),
        }),
    }
}

fn expect_one_of(
    value: &Json<'_>,
    allowed: &[&str],
    path: impl Fn() -> String,
) -> Result<(), PayloadError> {
    match value.as_str() {
        Some(s) if allowed.contains(&s) => Ok(()),
        _ => Err(PayloadError::BadValue {
            key: path(),
            value: value.to_string(),
            allowed: one_of_text(allowed),
        }),
    }
}

fn one_of_text(allowed: &[&str]) -> &'static str {
    match allowed.first() {
        Some(&"passive") => "passive, active, time-sensitive or critical",
        Some(&"start") => "start, update or end",
        _ => "one of the documented values",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use serde_json::{Map, Value};
    use std::cell::RefCell;
    use std::fmt;

    /// The strict reading into serde_json's `Value` that [`strict::parse`] replaced: the model it must agree with.
    /// Parses one JSON value with nothing but whitespace after it, refusing repeated keys in any object.
    fn parse_strict(bytes: &[u8]) -> Result<Value, PayloadError> {
        let duplicate = RefCell::new(None);
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let parsed = StrictSeed {
            duplicate: &duplicate,
        }
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v));
        parsed.map_err(|e| match duplicate.into_inner() {
            Some(key) => PayloadError::DuplicateKey {
                key,
                line: e.line(),
                column: e.column(),
            },
            None => PayloadError::InvalidJson {
                detail: e.to_string(),
            },
        })
    }

    #[derive(Clone, Copy)]
    struct StrictSeed<'a> {
        duplicate: &'a RefCell<Option<String>>,
    }

    impl<'de> DeserializeSeed<'de> for StrictSeed<'_> {
        type Value = Value;
        fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for StrictSeed<'_> {
        type Value = Value;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON value")
        }
        fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
            Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
        }
        fn visit_str<E>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_owned()))
        }
        fn visit_string<E>(self, v: String) -> Result<Value, E> {
            Ok(Value::String(v))
        }
        fn visit_unit<E>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element_seed(self)? {
                items.push(item);
            }
            Ok(Value::Array(items))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
            let mut out = Map::new();
            while let Some(key) = map.next_key::<String>()? {
                if out.contains_key(&key) {
                    let msg = format!("duplicate key {key:?}");
                    *self.duplicate.borrow_mut() = Some(key);
                    return Err(de::Error::custom(msg));
                }
                let value = map.next_value_seed(self)?;
                out.insert(key, value);
            }
            Ok(Value::Object(out))
        }
    }

    use Priority::*;
    use Protocol::*;
    use PushType::*;

    fn ok(p: &str, t: PushType, proto: Protocol, prio: Priority) {
        assert_eq!(validate(p.as_bytes(), t, proto, prio), Ok(()), "{p}");
    }

    fn err(p: &str, t: PushType, proto: Protocol, prio: Priority) -> PayloadError {
        validate(p.as_bytes(), t, proto, prio).expect_err(p)
    }

    #[test]
    fn typical_payloads_pass() {
        ok(r#"{"aps":{"alert":"hi"}}"#, Alert, Http2, Immediate);
        ok(
            r#"{"aps":{"alert":{"title":"t","body":"b","loc-args":["a"]},"badge":3,"sound":"default"},"x":1}"#,
            Alert,
            Http2,
            Conserve,
        );
        ok(r#"{"aps":{"badge":0}}"#, Alert, Http2, Low);
        ok(
            r#"{"aps":{"content-available":1}}"#,
            Background,
            Http2,
            Conserve,
        );
        ok(r#"{"aps":{"alert":"hi"}}"#, Alert, Binary, Immediate);
        ok(
            r#"{"aps":{"content-available":1}}"#,
            Alert,
            Binary,
            Conserve,
        );
        ok(r#"{"anything":true}"#, Voip, Http2, Immediate);
        ok(r#"{"mdm":"magic"}"#, Mdm, Http2, Immediate);
        ok(
            r#"{"container-identifier":"NSFileProviderRootContainerItemIdentifier"}"#,
            FileProvider,
            Http2,
            Immediate,
        );
        ok(
            r#"{"aps":{"content-changed":true}}"#,
            Widgets,
            Http2,
            Conserve,
        );
        ok(
            r#"{"aps":{"alert":{"title":"t"},"sound":{"critical":1,"name":"x.caf","volume":0.5},"interruption-level":"critical","relevance-score":0.7,"thread-id":"t","mutable-content":1}}"#,
            Alert,
            Http2,
            Immediate,
        );
        ok(
            r#" {"aps":{"timestamp":1700000000,"event":"update","content-state":{"a":1},"relevance-score":100}} "#,
            LiveActivity,
            Http2,
            Immediate,
        );
        ok(
            r#"{"aps":{"timestamp":1,"event":"start","alert":{"title":{"loc-key":"k","loc-args":[]}},"attributes-type":"A","attributes":{},"content-state":{},"input-push-token":1}}"#,
            LiveActivity,
            Http2,
            Conserve,
        );
    }

    /// apns.md line 423: a start's `input-push-channel` is the id of a broadcast channel, so it is held to what a
    /// channel id is (apns.md lines 473, 505): base64 text, refused naming the key otherwise.
    #[test]
    fn input_push_channel_is_a_channel_id() {
        let start = |channel: &str| {
            format!(
                r#"{{"aps":{{"timestamp":1,"event":"start","alert":"a","attributes-type":"A","attributes":{{}},"content-state":{{}},"input-push-channel":{channel}}}}}"#
            )
        };
        ok(
            &start(r#""dHN0LWNoYW5uZWw=""#),
            LiveActivity,
            Http2,
            Immediate,
        );
        for bad in [r#""!!""#, r#""A""#, r#""A===""#, r#""""#] {
            let e = err(&start(bad), LiveActivity, Http2, Immediate);
            assert!(
                matches!(&e, PayloadError::BadInputPushChannel { key, .. } if key == "aps.input-push-channel"),
                "{bad}: {e}"
            );
            assert!(
                e.to_string().starts_with(
                    "aps.input-push-channel must be a broadcast channel id: channel id"
                ),
                "{e}"
            );
        }
    }

    /// docs/apns-protocol.md#rule-8: APNs ignores the Live Activity keys in the `aps` of other push types, so an
    /// alert (or any other push type's `aps`) may carry them with any value; in a `liveactivity` push the same keys
    /// are still checked, and refused naming the key.
    #[test]
    fn live_activity_keys_are_checked_only_for_live_activities() {
        let cases = [
            (r#""event":"message""#, "aps.event"),
            (r#""timestamp":1700000000000"#, "aps.timestamp"),
            (r#""attributes":"a""#, "aps.attributes"),
            (r#""attributes-type":3"#, "aps.attributes-type"),
            (r#""content-state":[1]"#, "aps.content-state"),
            (r#""stale-date":-1"#, "aps.stale-date"),
            (r#""dismissal-date":"soon""#, "aps.dismissal-date"),
            (r#""input-push-token":"yes""#, "aps.input-push-token"),
            (r#""input-push-channel":7"#, "aps.input-push-channel"),
            (r#""input-push-channel":"!!""#, "aps.input-push-channel"),
        ];
        for (field, key) in cases {
            let stray = format!(r#"{{"aps":{{"alert":"x",{field}}}}}"#);
            ok(&stray, Alert, Http2, Immediate);
            ok(&stray, Alert, Binary, Immediate);
            ok(&stray, Voip, Http2, Immediate);
            ok(&stray, Widgets, Http2, Conserve);
            // A Live Activity with a valid `event` and `timestamp` beside the key under test, which takes the place
            // of either when it is that key (a repeated key would be refused for that instead).
            let base = [
                (r#""event":"update""#, "event"),
                (r#""timestamp":1"#, "timestamp"),
            ];
            let mut fields: Vec<&str> = base
                .iter()
                .filter(|(_, name)| !key.ends_with(name))
                .map(|(f, _)| *f)
                .collect();
            fields.push(field);
            let live = format!(r#"{{"aps":{{{}}}}}"#, fields.join(","));
            let e = validate(live.as_bytes(), LiveActivity, Http2, Immediate).expect_err(&live);
            let named = match &e {
                PayloadError::WrongType { key, .. }
                | PayloadError::BadValue { key, .. }
                | PayloadError::TimeInMilliseconds { key, .. }
                | PayloadError::BadInputPushChannel { key, .. } => key.as_str(),
                other => panic!("{live}: {other}"),
            };
            assert_eq!(named, key, "{live}: {e}");
        }
    }

    #[test]
    fn size_limits() {
        // docs/apns-protocol.md#rule-1, docs/apns-protocol.md#payload-limits, docs/apns-protocol.md#size-limits.
        let pad = |n: usize| {
            let head = r#"{"aps":{"alert":""#;
            let tail = r#""}}"#;
            format!("{head}{}{tail}", "x".repeat(n - head.len() - tail.len()))
        };
        ok(&pad(4096), Alert, Http2, Immediate);
        assert_eq!(
            err(&pad(4097), Alert, Http2, Immediate),
            PayloadError::TooLarge {
                size: 4097,
                limit: 4096,
                push_type: Alert,
                protocol: Http2
            }
        );
        ok(&pad(5120), Voip, Http2, Immediate);
        assert!(matches!(
            err(&pad(5121), Voip, Http2, Immediate),
            PayloadError::TooLarge { limit: 5120, .. }
        ));
        ok(&pad(2048), Alert, Binary, Immediate);
        assert!(matches!(
            err(&pad(2049), Alert, Binary, Immediate),
            PayloadError::TooLarge { limit: 2048, .. }
        ));
        assert!(matches!(
            err(&pad(2049), Voip, Binary, Immediate),
            PayloadError::TooLarge { limit: 2048, .. }
        ));
        assert_eq!(err("", Alert, Http2, Immediate), PayloadError::Empty);
    }

    #[test]
    fn strict_json() {
        // docs/apns-protocol.md#rule-2.
        for bad in [
            r#"{"aps":{"alert":"x"}} x"#,
            r#"{"aps":{"alert":"x"}}{}"#,
            r#"{"aps":"#,
            "{'a':1}",
            "\u{feff}{}",
        ] {
            assert!(
                matches!(
                    err(bad, Alert, Http2, Immediate),
                    PayloadError::InvalidJson { .. }
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            validate(b"{\"aps\":{\"alert\":\"\xff\"}}", Alert, Http2, Immediate),
            Err(PayloadError::InvalidJson { .. })
        ));
        assert_eq!(
            err("[1]", Alert, Http2, Immediate),
            PayloadError::NotAnObject { found: "an array" }
        );
        assert_eq!(
            err("3", Voip, Http2, Immediate),
            PayloadError::NotAnObject { found: "a number" }
        );
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        let e = err(
            r#"{"aps":{"alert":"a"},"aps":{"alert":"b"}}"#,
            Alert,
            Http2,
            Immediate,
        );
        assert!(
            matches!(&e, PayloadError::DuplicateKey { key, line: 1, .. } if key == "aps"),
            "{e}"
        );
        let e = err(
            r#"{"aps":{"alert":"a","alert":"b"}}"#,
            Alert,
            Http2,
            Immediate,
        );
        assert!(matches!(&e, PayloadError::DuplicateKey { key, .. } if key == "alert"));
        let e = err(
            r#"{"aps":{"alert":"a"},"x":[{"k":1,"k":2}]}"#,
            Alert,
            Http2,
            Immediate,
        );
        assert!(matches!(&e, PayloadError::DuplicateKey { key, .. } if key == "k"));
        assert!(e.to_string().contains("\"k\""));
    }

    #[test]
    fn aps_presence_and_shape() {
        assert_eq!(
            err(r#"{"x":1}"#, Alert, Http2, Immediate),
            PayloadError::MissingAps { push_type: Alert }
        );
        assert_eq!(
            err(r#"{"x":1}"#, Background, Http2, Conserve),
            PayloadError::MissingAps {
                push_type: Background
            }
        );
        assert_eq!(
            err(r#"{"aps":[]}"#, Voip, Http2, Immediate),
            PayloadError::ApsNotObject { found: "an array" }
        );
    }

    #[test]
    fn aps_value_types() {
        // docs/apns-protocol.md#aps-keys, docs/apns-protocol.md#alert-keys, docs/apns-protocol.md#rule-8.
        let cases = [
            (r#"{"aps":{"alert":3}}"#, "aps.alert"),
            (r#"{"aps":{"alert":{"title":3}}}"#, "aps.alert.title"),
            (
                r#"{"aps":{"alert":{"loc-args":"x"}}}"#,
                "aps.alert.loc-args",
            ),
            (
                r#"{"aps":{"alert":{"loc-args":[1]}}}"#,
                "aps.alert.loc-args",
            ),
            (r#"{"aps":{"alert":{"loc-key":[]}}}"#, "aps.alert.loc-key"),
            (r#"{"aps":{"badge":"1"}}"#, "aps.badge"),
            (r#"{"aps":{"badge":-1}}"#, "aps.badge"),
            (r#"{"aps":{"badge":1.5}}"#, "aps.badge"),
            (r#"{"aps":{"sound":1}}"#, "aps.sound"),
            (r#"{"aps":{"sound":{"name":1}}}"#, "aps.sound.name"),
            (r#"{"aps":{"alert":"x","thread-id":1}}"#, "aps.thread-id"),
            (r#"{"aps":{"alert":"x","category":{}}}"#, "aps.category"),
            (
                r#"{"aps":{"alert":"x","mutable-content":"1"}}"#,
                "aps.mutable-content",
            ),
            (
                r#"{"aps":{"alert":"x","interruption-level":1}}"#,
                "aps.interruption-level",
            ),
            (
                r#"{"aps":{"alert":"x","relevance-score":"high"}}"#,
                "aps.relevance-score",
            ),
        ];
        for (p, key) in cases {
            match err(p, Alert, Http2, Immediate) {
                PayloadError::WrongType { key: k, .. } => assert_eq!(k, key, "{p}"),
                other => panic!("{p}: {other}"),
            }
        }
        let values = [
            (
                r#"{"aps":{"alert":"x","interruption-level":"urgent"}}"#,
                "aps.interruption-level",
            ),
            (
                r#"{"aps":{"alert":"x","relevance-score":1.5}}"#,
                "aps.relevance-score",
            ),
            (r#"{"aps":{"sound":{"volume":2}}}"#, "aps.sound.volume"),
            (r#"{"aps":{"sound":{"critical":2}}}"#, "aps.sound.critical"),
            (
                r#"{"aps":{"alert":"x","content-available":2}}"#,
                "aps.content-available",
            ),
        ];
        for (p, key) in values {
            match err(p, Alert, Http2, Immediate) {
                PayloadError::BadValue { key: k, .. } => assert_eq!(k, key, "{p}"),
                other => panic!("{p}: {other}"),
            }
        }
    }

    #[test]
    fn background_rules() {
        // docs/apns-protocol.md#push-types and docs/apns-protocol.md#rule-3: only content-available: 1, priority 5.
        assert_eq!(
            err(
                r#"{"aps":{"content-available":1,"alert":"x"}}"#,
                Background,
                Http2,
                Conserve
            ),
            PayloadError::BackgroundExtraKey {
                key: "alert".into()
            }
        );
        assert!(matches!(
            err(
                r#"{"aps":{"content-available":0}}"#,
                Background,
                Http2,
                Conserve
            ),
            PayloadError::BadValue { .. }
        ));
        assert!(matches!(
            err(r#"{"aps":{}}"#, Background, Http2, Conserve),
            PayloadError::MissingKey { .. }
        ));
        assert!(matches!(
            err(
                r#"{"aps":{"content-available":1}}"#,
                Background,
                Http2,
                Immediate
            ),
            PayloadError::PriorityNotAllowed {
                priority: Immediate,
                ..
            }
        ));
        ok(r#"{"aps":{"content-available":1}}"#, Background, Http2, Low);
    }

    /// docs/apns-protocol.md#rule-3 and docs/apns-protocol.md#rule-4: "only content-available in aps" is an HTTP/2
    /// push-type rule. On the binary protocol, which has no push type, a Momentum-era silent push that herald infers
    /// as background may carry other aps keys; only its priority is held to the binary rule.
    #[test]
    fn binary_background_pushes_may_carry_other_aps_keys() {
        for payload in [
            r#"{"aps":{"content-available":1,"category":"NEWS"}}"#,
            r#"{"aps":{"content-available":1,"mutable-content":1}}"#,
        ] {
            assert_eq!(infer_push_type(payload.as_bytes()), Background, "{payload}");
            ok(payload, Background, Binary, Conserve);
            assert!(
                matches!(
                    err(payload, Background, Http2, Conserve),
                    PayloadError::BackgroundExtraKey { .. }
                ),
                "{payload}"
            );
            assert_eq!(
                err(payload, Background, Binary, Immediate),
                PayloadError::PriorityNotAllowed {
                    priority: Immediate,
                    why: "a content-available-only notification must use priority 5",
                },
                "{payload}"
            );
        }
    }

    #[test]
    fn alert_needs_visible_content_on_http2() {
        assert_eq!(
            err(r#"{"aps":{"content-available":1}}"#, Alert, Http2, Conserve),
            PayloadError::AlertWithoutContent
        );
        assert_eq!(
            err(r#"{"aps":{}}"#, Alert, Http2, Conserve),
            PayloadError::AlertWithoutContent
        );
    }

    #[test]
    fn binary_priority_rules() {
        // docs/apns-protocol.md#binary-command-2 item 5 / docs/apns-protocol.md#rule-4.
        assert!(matches!(
            err(
                r#"{"aps":{"content-available":1}}"#,
                Alert,
                Binary,
                Immediate
            ),
            PayloadError::PriorityNotAllowed { .. }
        ));
        ok(
            r#"{"aps":{"content-available":1,"badge":1}}"#,
            Alert,
            Binary,
            Immediate,
        );
        assert!(matches!(
            err(r#"{"aps":{"alert":"x"}}"#, Alert, Binary, Low),
            PayloadError::PriorityNotAllowed { .. }
        ));
    }

    /// A binary format without a priority field (enhanced, simple) takes only priority 10, and no background push;
    /// the frame format takes both priorities (docs/apns-protocol.md#binary-command-1).
    #[test]
    fn a_binary_format_without_priority_takes_only_priority_10() {
        for format in [BinaryFormat::Enhanced, BinaryFormat::Simple] {
            assert_eq!(check_binary_format(format, Immediate, false), Ok(()));
            let text = check_binary_format(format, Conserve, false)
                .unwrap_err()
                .to_string();
            assert!(
                text.starts_with("priority 5 is not allowed here: this domain sends the ")
                    && text.contains(format.describe())
                    && text.contains("no priority field")
                    && text.contains("apn_binary_format = frame"),
                "{text}"
            );
            for priority in [Immediate, Conserve] {
                let text = check_binary_format(format, priority, true)
                    .unwrap_err()
                    .to_string();
                assert!(
                    text.starts_with(&format!(
                        "priority {priority} is not allowed here: a background push"
                    )) && text.contains(format.describe())
                        && text.contains("Background pushes need the frame format")
                        && text.contains("apn_binary_format = frame"),
                    "{text}"
                );
            }
        }
        for (priority, background) in [(Immediate, false), (Conserve, false), (Conserve, true)] {
            assert_eq!(
                check_binary_format(BinaryFormat::Frame, priority, background),
                Ok(())
            );
        }
    }

    #[test]
    fn push_to_talk_takes_priority_10_only() {
        // docs/apns-protocol.md#push-types.
        ok(r#"{"aps":{}}"#, PushToTalk, Http2, Immediate);
        for p in [Conserve, Low] {
            assert!(matches!(
                err(r#"{"aps":{}}"#, PushToTalk, Http2, p),
                PayloadError::PriorityNotAllowed { why, .. } if why.contains("priority 10")
            ));
        }
    }

    #[test]
    fn live_activity_rules() {
        // docs/apns-protocol.md#rule-9.
        let missing = |p: &str| match err(p, LiveActivity, Http2, Immediate) {
            PayloadError::MissingKey { key, .. } => key,
            other => panic!("{p}: {other}"),
        };
        assert_eq!(missing(r#"{"aps":{"event":"update"}}"#), "timestamp");
        assert_eq!(missing(r#"{"aps":{"timestamp":1}}"#), "event");
        assert_eq!(
            missing(
                r#"{"aps":{"timestamp":1,"event":"start","attributes-type":"A","attributes":{}}}"#
            ),
            "alert"
        );
        assert_eq!(
            missing(r#"{"aps":{"timestamp":1,"event":"start","alert":"x","attributes":{}}}"#),
            "attributes-type"
        );
        assert_eq!(
            missing(r#"{"aps":{"timestamp":1,"event":"start","alert":"x","attributes-type":"A"}}"#),
            "attributes"
        );
        assert!(matches!(
            err(
                r#"{"aps":{"timestamp":1,"event":"begin"}}"#,
                LiveActivity,
                Http2,
                Immediate
            ),
            PayloadError::BadValue { .. }
        ));
        assert!(matches!(
            err(
                r#"{"aps":{"timestamp":1,"event":"end"}}"#,
                LiveActivity,
                Http2,
                Low
            ),
            PayloadError::PriorityNotAllowed { .. }
        ));
        assert!(matches!(
            err(
                r#"{"aps":{"timestamp":-5,"event":"end"}}"#,
                LiveActivity,
                Http2,
                Immediate
            ),
            PayloadError::BadValue { .. }
        ));
        // Times in milliseconds (docs/apns-protocol.md#rule-8): refused naming the field, up to 10^11 seconds pass.
        for (key, payload) in [
            (
                "aps.timestamp",
                r#"{"aps":{"timestamp":1767225600000,"event":"update","content-state":{}}}"#,
            ),
            (
                "aps.stale-date",
                r#"{"aps":{"timestamp":1,"event":"update","stale-date":1767229200000}}"#,
            ),
            (
                "aps.dismissal-date",
                r#"{"aps":{"timestamp":1,"event":"end","dismissal-date":1.7672292e12}}"#,
            ),
        ] {
            let e = err(payload, LiveActivity, Http2, Immediate);
            assert!(
                matches!(&e, PayloadError::TimeInMilliseconds { key: k, .. } if k == key),
                "{payload}: {e}"
            );
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("{key} is 1"))
                    && text.contains("looks like milliseconds")
                    && !text.contains("  "),
                "{text}"
            );
        }
        ok(
            r#"{"aps":{"timestamp":100000000000,"event":"update","stale-date":1767229200}}"#,
            LiveActivity,
            Http2,
            Immediate,
        );
        assert!(matches!(
            err(
                r#"{"aps":{"timestamp":1,"event":"end","content-state":[]}}"#,
                LiveActivity,
                Http2,
                Immediate
            ),
            PayloadError::WrongType { .. }
        ));
        // A valid Live Activity update, on a domain routed to the binary protocol.
        let on_binary = err(
            r#"{"aps":{"timestamp":1,"event":"update","content-state":{}}}"#,
            LiveActivity,
            Binary,
            Immediate,
        );
        assert_eq!(
            on_binary,
            PayloadError::NeedsHttp2 {
                push_type: LiveActivity
            }
        );
        assert!(
            on_binary
                .to_string()
                .starts_with("liveactivity pushes need HTTP/2"),
            "{on_binary}"
        );
    }

    #[test]
    fn push_type_inference() {
        assert_eq!(
            infer_push_type(br#"{"aps":{"content-available":1}}"#),
            Background
        );
        assert_eq!(
            infer_push_type(br#"{"aps":{"content-available":1},"k":"v"}"#),
            Background
        );
        assert_eq!(
            infer_push_type(br#"{"aps":{"content-available":1,"badge":2}}"#),
            Alert
        );
        assert_eq!(
            infer_push_type(br#"{"aps":{"content-available":0}}"#),
            Alert
        );
        assert_eq!(infer_push_type(br#"{"aps":{"alert":"x"}}"#), Alert);
        assert_eq!(infer_push_type(b"garbage"), Alert);
        // What skipping a value does not check, a Value reading refuses (found by the `apns_infer` fuzz target).
        for refused in [
            &b"{\"aps\":{\"content-available\":1,\"t\":\"x\xff\xff\xff\xf0\"}}"[..],
            br#"{"aps":{"content-available":1},"x":1e400}"#,
            br#"{"aps":{"content-available":1},"x":"\ud800"}"#,
        ] {
            assert_eq!(
                infer_push_type(refused),
                Alert,
                "{}",
                String::from_utf8_lossy(refused)
            );
        }
        let deep = format!(
            r#"{{"aps":{{"content-available":1}},"x":{}{}}}"#,
            "[".repeat(200),
            "]".repeat(200)
        );
        assert_eq!(infer_push_type(deep.as_bytes()), Alert);
        // What it infers passes validation at the priority that type needs.
        let silent = br#"{"aps":{"content-available":1}}"#;
        assert_eq!(
            validate(silent, infer_push_type(silent), Http2, Conserve),
            Ok(())
        );
    }

    /// docs/apns-protocol.md#push-types, docs/apns-protocol.md#rule-9: a Live Activity is never inferred from its
    /// payload (only from a `.push-type.liveactivity` topic): without a push type, an `aps` with `event` and
    /// `timestamp` is an alert when it shows something, as it always was, and over HTTP/2 one that shows nothing is
    /// refused with a text that says it looks like a Live Activity and names the push type to give.
    #[test]
    fn live_activity_payloads_are_not_inferred() {
        let update = br#"{"aps":{"event":"update","timestamp":1700000000,"content-state":{}}}"#;
        assert_eq!(infer_push_type(update), Alert);
        assert_eq!(infer_push_type_for(Some("com.x"), update), Alert);
        assert_eq!(infer_push_type_for(None, update), Alert);
        // The topic's suffix still decides first.
        assert_eq!(
            infer_push_type_for(Some("com.x.push-type.liveactivity"), update),
            LiveActivity
        );
        assert_eq!(validate(update, LiveActivity, Http2, Immediate), Ok(()));
        // As an alert over HTTP/2 it is refused, saying what it looks like and what to name.
        let e = validate(update, infer_push_type(update), Http2, Immediate).unwrap_err();
        assert_eq!(e, PayloadError::AlertLooksLikeLiveActivity);
        assert_eq!(
            e.to_string(),
            "an alert push needs alert, badge or sound in aps, and this aps has event and timestamp instead: the \
             payload looks like a Live Activity, which must name push type liveactivity (it is never inferred from \
             the payload) and go to a domain that sends over HTTP/2 with token authentication"
        );
        for looks_live in [
            &br#"{"aps":{"timestamp":1,"event":"end","dismissal-date":2}}"#[..],
            br#"{"aps":{"event":"begin","timestamp":"now"}}"#,
        ] {
            let text = String::from_utf8_lossy(looks_live);
            assert_eq!(infer_push_type(looks_live), Alert, "{text}");
            assert_eq!(
                validate(looks_live, Alert, Http2, Immediate),
                Err(PayloadError::AlertLooksLikeLiveActivity),
                "{text}"
            );
        }
        // The binary protocol has no push type, and no alert rule: sent as before.
        assert_eq!(validate(update, Alert, Binary, Immediate), Ok(()));
        // With only one of the two keys, the refusal is the plain one.
        for neither in [
            &br#"{"aps":{"event":"update"}}"#[..],
            br#"{"aps":{"timestamp":1}}"#,
            br#"{"aps":{},"event":"update","timestamp":1}"#,
        ] {
            assert_eq!(
                validate(neither, infer_push_type(neither), Http2, Immediate),
                Err(PayloadError::AlertWithoutContent),
                "{}",
                String::from_utf8_lossy(neither)
            );
        }
        // An alert that also carries the Live Activity keys goes as an alert, over either protocol.
        for alert in [
            &br#"{"aps":{"alert":"x","event":"update","timestamp":1}}"#[..],
            br#"{"aps":{"event":"start","timestamp":1,"alert":"x","attributes-type":"A","attributes":{}}}"#,
            br#"{"aps":{"badge":1,"event":"message","timestamp":"now"}}"#,
        ] {
            let text = String::from_utf8_lossy(alert);
            assert_eq!(infer_push_type(alert), Alert, "{text}");
            for protocol in [Http2, Binary] {
                assert_eq!(
                    validate(alert, Alert, protocol, Immediate),
                    Ok(()),
                    "{text} {protocol:?}"
                );
            }
        }
        // A content-available-only aps is a background push, whatever Live Activity keys it holds.
        assert_eq!(
            infer_push_type(br#"{"aps":{"event":"update","timestamp":1,"content-available":1}}"#),
            Background
        );
    }

    /// docs/apns-protocol.md#push-types: without a push type, the topic's suffix decides before the payload, so a
    /// VoIP payload without `aps` to a `.voip` topic is a voip push (5120 bytes, no `aps` needed).
    #[test]
    fn push_type_inference_reads_the_topic_first() {
        let voip = format!(r#"{{"callId":"{}"}}"#, "c".repeat(4500));
        assert_eq!(
            infer_push_type_for(Some("com.x.voip"), voip.as_bytes()),
            PushType::Voip
        );
        assert_eq!(
            validate(voip.as_bytes(), PushType::Voip, Http2, Immediate),
            Ok(())
        );
        for (topic, want) in [
            ("com.x.voip-ptt", PushType::PushToTalk),
            ("com.x.complication", PushType::Complication),
            ("com.x.push-type.liveactivity", PushType::LiveActivity),
            ("com.x.push-type.widgets", PushType::Widgets),
            ("com.x.push-type.controls", PushType::Controls),
            ("com.x.pushkit.fileprovider", PushType::FileProvider),
            ("com.x.location-query", PushType::Location),
        ] {
            // Even a payload that reads as background: the topic decides.
            assert_eq!(
                infer_push_type_for(Some(topic), br#"{"aps":{"content-available":1}}"#),
                want,
                "{topic}"
            );
        }
        // A bare bundle id, or no topic: the payload decides.
        let silent = br#"{"aps":{"content-available":1}}"#;
        assert_eq!(infer_push_type_for(Some("com.x"), silent), Background);
        assert_eq!(infer_push_type_for(None, silent), Background);
        assert_eq!(
            infer_push_type_for(Some("com.x"), br#"{"aps":{"alert":"x"}}"#),
            Alert
        );
        // A one-word suffix may end the bundle id itself (an app `com.x.voip`): a payload that shows something is
        // its alert. A multi-word suffix ends no bundle id: it decides whatever the payload.
        for topic in ["com.x.voip", "com.x.voip-ptt", "com.x.complication"] {
            for visible in [
                r#"{"aps":{"alert":"x"}}"#,
                r#"{"aps":{"badge":1}}"#,
                r#"{"aps":{"sound":"default"}}"#,
            ] {
                assert_eq!(
                    infer_push_type_for(Some(topic), visible.as_bytes()),
                    Alert,
                    "{topic} {visible}"
                );
            }
        }
        assert_eq!(
            infer_push_type_for(
                Some("com.x.push-type.liveactivity"),
                br#"{"aps":{"alert":"x","event":"update","timestamp":1}}"#
            ),
            PushType::LiveActivity
        );
    }

    #[test]
    fn error_messages_name_the_rule() {
        let e = err(
            &format!(r#"{{"aps":{{"alert":"{}"}}}}"#, "x".repeat(5000)),
            Alert,
            Http2,
            Immediate,
        );
        assert_eq!(
            e.to_string(),
            "payload is 5020 bytes; alert pushes over HTTP/2 allow at most 4096"
        );
        let e = err(r#"{"aps":{"badge":"1"}}"#, Alert, Http2, Immediate);
        assert_eq!(
            e.to_string(),
            "aps.badge must be a non-negative integer, not a string"
        );
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map("[a-z]{0,4}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #[test]
        fn never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            for t in PushType::ALL {
                let _ = validate(&data, t, Http2, Immediate);
            }
        }

        #[test]
        fn strict_parsing_agrees_with_serde_json(v in json_value()) {
            // Without duplicate keys the strict parser must read exactly what serde_json reads.
            let text = serde_json::to_vec(&v).unwrap();
            let plain: Value = serde_json::from_slice(&text).unwrap();
            proptest::prop_assert_eq!(parse_strict(&text).unwrap(), plain.clone());
            proptest::prop_assert_eq!(strict::parse(&text).unwrap().to_value(), plain);
        }

        #[test]
        fn the_borrowing_reader_reads_what_the_value_reader_reads(
            s in r#"[\[\]{}":,0-9a-z\-.\\ ]{0,80}"#,
            v in json_value(),
        ) {
            // Same tree or the same refusal, position included, on any text: valid JSON, repeated keys at any
            // depth, escapes in keys and strings, and broken text.
            let texts = [
                s.clone(),
                format!("{{{s}}}"),
                format!(r#"{{"aps":{{"a\u0062":{s}}}}}"#),
                format!(r#"{{"k":{v},"k":{s}}}"#),
                format!(r#"[{{"a":1}},{{"b":{v},"b":2}}]"#),
                format!(r#"{{"esc\"aped":"x\ny","esc\"aped":{v}}}"#),
                serde_json::to_string(&v).unwrap(),
            ];
            for text in texts {
                let ours = strict::parse(text.as_bytes()).map(|j| j.to_value());
                proptest::prop_assert_eq!(ours, parse_strict(text.as_bytes()), "{}", text);
            }
        }

        #[test]
        fn push_type_inference_reads_what_a_value_reads(v in json_value(), aps in json_value(), extra in json_value()) {
            // The reading through `Value` that inference replaced, as the model: `aps` (the last one when
            // repeated) must be an object whose content-available is the integer 1, without alert, badge or sound.
            // The Live Activity keys change nothing: a Live Activity is never inferred from its payload.
            let model = |bytes: &[u8]| match serde_json::from_slice::<Value>(bytes) {
                Ok(Value::Object(root)) => match root.get("aps") {
                    Some(Value::Object(aps))
                        if aps.get("content-available").and_then(Value::as_u64) == Some(1)
                            && !["alert", "badge", "sound"].iter().any(|k| aps.contains_key(*k)) =>
                    {
                        Background
                    }
                    _ => Alert,
                },
                _ => Alert,
            };
            let silent = serde_json::json!({"content-available": 1});
            let texts = [
                serde_json::to_string(&v).unwrap(),
                serde_json::json!({"aps": aps, "x": extra}).to_string(),
                serde_json::json!({"aps": {"content-available": v}}).to_string(),
                serde_json::json!({"aps": {"content-available": 1, "k": extra}}).to_string(),
                format!(r#"{{"aps":{aps},"aps":{silent}}}"#),
                format!(r#"{{"aps":{silent},"aps":{aps}}}"#),
                format!(r#"{{"aps":{{"content-available":1,"content-available":{v}}}}}"#),
                format!(r#"{{"aps":{silent}}} {extra}"#),
                serde_json::json!({"aps": {"event": v, "timestamp": extra, "content-available": 1}}).to_string(),
                serde_json::json!({"aps": {"event": v, "alert": extra}}).to_string(),
                format!(r#"{{"aps":{{"event":{v},"timestamp":{extra}}},"aps":{aps}}}"#),
            ];
            for text in texts {
                proptest::prop_assert_eq!(infer_push_type(text.as_bytes()), model(text.as_bytes()), "{}", text);
            }
        }

        #[test]
        fn never_panics_on_json_like_text(s in r#"[\[\]{}":,0-9a-z\-. ]{0,120}"#) {
            let _ = validate(s.as_bytes(), Alert, Http2, Immediate);
            let _ = validate(format!(r#"{{"aps":{s}}}"#).as_bytes(), LiveActivity, Http2, Conserve);
            let _ = validate(format!(r#"{{"aps":{s}}}"#).as_bytes(), Alert, Binary, Immediate);
        }
    }
}
