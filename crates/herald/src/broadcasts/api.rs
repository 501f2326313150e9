//! `POST /api/v1/broadcast` (docs/api.md "Broadcasts"): a JSON body naming the domain, the channel id, the payload
//! and optionally the priority (10, 5 or 1; default 10), the expiration (Unix seconds) and the `apns_id` (sent as
//! `apns-request-id`). Answered 202 with the broadcast's id once it is durable; every refusal names the field. An
//! `Idempotency-Key` header works as on the injection routes (route name `broadcast`): an accepted broadcast's
//! answer is given again to the same key and body, without a second broadcast.
//!
//! The payload is kept as the bytes the client sent (as `POST /api/v1/push` keeps it), so the broadcast checks see
//! the original: a key repeated inside it, or a number no JSON reader keeps exactly, is not hidden by a reading and
//! rewriting of the JSON.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use herald_apns::broadcast::ChannelId;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::{BroadcastRefusal, Broadcaster, NewBroadcast};
use crate::inbound::rest::error::{ApiError, without_bom};
use crate::inbound::rest::idempotency::Idempotency;
use crate::inbound::rest::server::read_request_body;

/// Every (method, path) [`routes`] answers, as `docs/openapi.yaml` documents them.
pub const ROUTES: &[(&str, &str)] = &[("POST", "/api/v1/broadcast")];

/// The route name `Idempotency-Key`s are scoped by.
pub const IDEMPOTENCY_ROUTE: &str = "broadcast";

/// What the broadcast route works with.
#[derive(Clone)]
struct BroadcastState {
    broadcaster: Arc<Broadcaster>,
    /// Where `Idempotency-Key`s are remembered; `None` ignores the header.
    idempotency: Option<Arc<Idempotency>>,
}

/// The broadcast route over `broadcaster`, remembering `Idempotency-Key`s in `idempotency`.
pub fn routes(broadcaster: Arc<Broadcaster>, idempotency: Option<Arc<Idempotency>>) -> Router {
    Router::new()
        .route("/api/v1/broadcast", post(broadcast))
        .with_state(BroadcastState {
            broadcaster,
            idempotency,
        })
}

fn answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn broadcast(State(state): State<BroadcastState>, request: Request) -> Response {
    // Within the listener's max_request_size (413) and body_timeout (408), as the injection routes.
    let (parts, body) = match read_request_body(request).await {
        Ok(read) => read,
        Err(e) => return e.into_response(),
    };
    let broadcaster = state.broadcaster.clone();
    let request = body.clone();
    let handle = async move { Ok::<_, ApiError>(accept(&broadcaster, &request).await) };
    let answer = match &state.idempotency {
        Some(keys) => {
            keys.run(IDEMPOTENCY_ROUTE, &parts, &body, false, handle)
                .await
        }
        None => handle.await,
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// Reads, checks and accepts one broadcast: the answer, 202 or the refusal.
async fn accept(broadcaster: &Arc<Broadcaster>, body: &[u8]) -> Response {
    let new = match parse(body) {
        Ok(n) => n,
        Err(message) => return answer(StatusCode::BAD_REQUEST, json!({ "error": message })),
    };
    match broadcaster.accept(new).await {
        Ok(b) => answer(
            StatusCode::ACCEPTED,
            json!({ "id": b.id, "domain": b.domain, "channel_id": b.channel }),
        ),
        Err(
            e @ (BroadcastRefusal::NotDurable(_)
            | BroadcastRefusal::Full { .. }
            | BroadcastRefusal::Unavailable { .. }),
        ) => (
            StatusCode::SERVICE_UNAVAILABLE,
            [(CONTENT_TYPE, "application/json"), (RETRY_AFTER, "5")],
            json!({ "error": e.to_string() }).to_string(),
        )
            .into_response(),
        Err(e) => answer(StatusCode::BAD_REQUEST, json!({ "error": e.to_string() })),
    }
}

const FIELDS: &str = "domain, channel_id, payload, priority, expiration and apns_id";

/// The members of a JSON object in order, each value as the text sent (a key sent twice appears twice): how the
/// broadcast and channel routes find a field given twice.
pub(crate) struct Members<'a>(pub(crate) Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    let value: &'de RawValue = map.next_value()?;
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// The request's fields by name: the payload as its text, the others read as JSON values.
struct Fields<'a> {
    payload: Option<&'a RawValue>,
    values: std::collections::HashMap<String, Value>,
}

impl Fields<'_> {
    fn get(&self, name: &str) -> Option<&Value> {
        self.values.get(name)
    }
}

/// Reads a broadcast request; every error names the field.
pub fn parse(body: &[u8]) -> Result<NewBroadcast, String> {
    let raw: &RawValue = serde_json::from_slice(without_bom(body)).map_err(|e| {
        format!(
            "invalid JSON: {e}; send {{\"domain\": \"…\", \"channel_id\": \"…\", \"payload\": {{\"aps\": {{…}}}}}}"
        )
    })?;
    if !raw.get().starts_with('{') {
        return Err("the body must be a JSON object".into());
    }
    // Read from the body itself, so that a position is the body's (after a byte order mark).
    let Members(members) = serde_json::from_slice(without_bom(body)).map_err(|e| {
        if crate::inbound::rest::error::is_unpaired_surrogate(&e) {
            format!(
                "a member name {} at line {} column {}",
                crate::inbound::rest::error::UNPAIRED_SURROGATE,
                e.line(),
                e.column()
            )
        } else {
            format!("invalid JSON: {e}; the body must be a JSON object")
        }
    })?;
    let mut fields = Fields {
        payload: None,
        values: std::collections::HashMap::new(),
    };
    for (key, value) in members {
        if !matches!(
            key.as_str(),
            "domain" | "channel_id" | "payload" | "priority" | "expiration" | "apns_id"
        ) {
            return Err(format!("unknown field {key:?}; use {FIELDS}"));
        }
        if fields.values.contains_key(&key) || (key == "payload" && fields.payload.is_some()) {
            return Err(format!("{key}: given more than once; send each field once"));
        }
        if key == "payload" {
            fields.payload = Some(value);
        } else {
            let v = serde_json::from_str(value.get()).map_err(|e| {
                if crate::inbound::rest::error::is_unpaired_surrogate(&e) {
                    format!(
                        "{key}: {}",
                        crate::inbound::rest::error::unpaired_surrogate_in(value.get())
                    )
                } else {
                    format!("{key}: {e}")
                }
            })?;
            fields.values.insert(key, v);
        }
    }
    let domain = string(&fields, "domain")?
        .ok_or("domain: missing; name the app's domain")?
        .trim()
        .to_ascii_lowercase();
    if domain.is_empty() {
        return Err("domain: empty; name the app's domain".into());
    }
    let channel = string(&fields, "channel_id")?.ok_or("channel_id: missing")?;
    let channel = ChannelId::parse(channel).map_err(|e| format!("channel_id: {e}"))?;
    let payload = match fields.payload {
        // The text as sent, byte for byte: the broadcast checks read it strictly.
        Some(p) if p.get().starts_with('{') => Bytes::copy_from_slice(p.get().as_bytes()),
        Some(other) => return Err(format!("payload: {} is not a JSON object", other.get())),
        None => {
            return Err("payload: missing; send the Live Activity update as a JSON object".into());
        }
    };
    let priority = match fields.get("priority") {
        None | Some(Value::Null) => 10,
        Some(Value::Number(n)) => match n.as_u64() {
            Some(p @ (1 | 5 | 10)) => p as u8,
            _ => return Err(format!("priority: {n}; use 10, 5 or 1")),
        },
        Some(other) => return Err(format!("priority: {other} is not a number; use 10, 5 or 1")),
    };
    // Checked as a device push's (0 to 4294967295, herald's 32 bits), whatever the broadcast then carries.
    let expiration = match fields.get("expiration") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => {
            let seconds = n
                .as_u64()
                .ok_or_else(|| format!("expiration: {n} is not Unix seconds"))?;
            herald_apns::push::validate_expiration(seconds)
                .map_err(|e| format!("expiration: {e}"))?;
            Some(seconds)
        }
        Some(other) => {
            return Err(format!(
                "expiration: {other} is not a number of Unix seconds"
            ));
        }
    };
    let request_id = string(&fields, "apns_id")?.map(str::to_owned);
    if let Some(id) = &request_id {
        // Lowercase, as for a device push: the id herald sends is the one it was given, in the form APNs takes.
        herald_apns::push::validate_canonical_apns_id(id).map_err(|e| format!("apns_id: {e}"))?;
    }
    Ok(NewBroadcast {
        domain,
        channel,
        payload,
        priority,
        expiration,
        request_id,
    })
}

fn string<'a>(fields: &'a Fields<'_>, name: &str) -> Result<Option<&'a str>, String> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("{name}: {other} is not a string")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANNEL: &str = "dHN0LXNyY2gtY2hubA==";

    /// A string with an unpaired surrogate escape (`"\ud800"`, which JSON's grammar allows but which is no text) is
    /// named by its field, or as a member name with its position, as the other JSON routes name it.
    #[test]
    fn an_unpaired_surrogate_is_named_by_its_field() {
        let e =
            parse(br#"{"domain":"\ud800","channel_id":"dHN0","payload":{"aps":{}}}"#).unwrap_err();
        assert_eq!(
            e,
            format!(
                "domain: the string {}",
                crate::inbound::rest::error::UNPAIRED_SURROGATE
            )
        );
        let e = parse(br#"{"\udc00x":1}"#).unwrap_err();
        assert!(
            e.starts_with("a member name holds an unpaired surrogate escape"),
            "{e}"
        );
        assert!(e.contains("at line 1 column"), "{e}");
    }

    #[test]
    fn a_full_request_reads_and_defaults_apply() {
        let n = parse(
            format!(r#"{{"domain":"Live.Example","channel_id":"{CHANNEL}","payload":{{"aps":{{"event":"update"}}}}}}"#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(n.domain, "live.example");
        assert_eq!(n.channel.as_str(), CHANNEL);
        assert_eq!((n.priority, n.expiration, n.request_id), (10, None, None));
    }

    /// The payload is the text sent, byte for byte (spacing, a key repeated inside it, an integer beyond 64 bits),
    /// for the broadcast checks to read; a field of the request sent twice is refused.
    #[test]
    fn the_payload_is_kept_as_sent_and_a_repeated_field_is_refused() {
        let payload = r#"{ "aps": {"event": "update", "timestamp": 123456789012345678901234567890, "event": "end"} }"#;
        let n = parse(
            format!(r#" {{"domain":"d","channel_id":"{CHANNEL}","payload": {payload} }} "#)
                .as_bytes(),
        )
        .unwrap();
        assert_eq!(std::str::from_utf8(&n.payload).unwrap(), payload);
        for field in ["domain", "payload", "priority"] {
            let body = format!(
                r#"{{"domain":"d","channel_id":"{CHANNEL}","payload":{{}},"priority":5,"{field}":{}}}"#,
                if field == "domain" {
                    r#""e""#
                } else if field == "payload" {
                    "{}"
                } else {
                    "10"
                }
            );
            let err = parse(body.as_bytes()).err().unwrap_or_default();
            assert_eq!(
                err,
                format!("{field}: given more than once; send each field once")
            );
        }
    }

    #[test]
    fn every_bad_field_is_named() {
        let cases = [
            (r#"[]"#.to_owned(), "JSON object"),
            (
                format!(r#"{{"channel_id":"{CHANNEL}","payload":{{}}}}"#),
                "domain: missing",
            ),
            (
                r#"{"domain":"d","payload":{}}"#.to_owned(),
                "channel_id: missing",
            ),
            (
                format!(r#"{{"domain":"d","channel_id":"{CHANNEL}"}}"#),
                "payload: missing",
            ),
            (
                format!(r#"{{"domain":"d","channel_id":"{CHANNEL}","payload":"x"}}"#),
                "payload:",
            ),
            (
                format!(r#"{{"domain":"d","channel_id":"{CHANNEL}","payload":{{}},"priority":7}}"#),
                "priority: 7",
            ),
            (
                format!(
                    r#"{{"domain":"d","channel_id":"{CHANNEL}","payload":{{}},"expiration":-1}}"#
                ),
                "expiration",
            ),
            (
                format!(
                    r#"{{"domain":"d","channel_id":"{CHANNEL}","payload":{{}},"apns_id":"nope"}}"#
                ),
                "apns_id",
            ),
            // As for a device push: an expiration beyond 32 bits, an apns_id with uppercase hex digits.
            (
                format!(
                    r#"{{"domain":"d","channel_id":"{CHANNEL}","payload":{{}},"expiration":4294967296}}"#
                ),
                "expiration: apns-expiration 4294967296 is out of range",
            ),
            (
                format!(
                    r#"{{"domain":"d","channel_id":"{CHANNEL}","payload":{{}},"apns_id":"5B6F7C3E-1D2A-4B8C-9E0F-A1B2C3D4E5F6"}}"#
                ),
                "apns_id: apns-id \"5B6F7C3E-1D2A-4B8C-9E0F-A1B2C3D4E5F6\" has uppercase hex digits",
            ),
            (
                format!(r#"{{"domain":"d","channel_id":"{CHANNEL}","payload":{{}},"colour":1}}"#),
                "unknown field \"colour\"",
            ),
        ];
        for (body, want) in cases {
            let err = parse(body.as_bytes()).err().unwrap_or_default();
            assert!(err.contains(want), "{body}: {err}");
        }
        let edge = parse(
            format!(
                r#"{{"domain":"d","channel_id":"{CHANNEL}","payload":{{}},"expiration":4294967295,"apns_id":"5b6f7c3e-1d2a-4b8c-9e0f-a1b2c3d4e5f6"}}"#
            )
            .as_bytes(),
        )
        .unwrap();
        assert_eq!(edge.expiration, Some(4294967295));
    }
}
