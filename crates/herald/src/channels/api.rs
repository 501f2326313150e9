//! The channel routes (docs/api.md "Channels"): `POST /api/v1/channels` creates (a JSON body naming the domain,
//! the storage policy and optionally the push type), `GET /api/v1/channels?domain=D` lists, `GET` and `DELETE
//! /api/v1/channels/{id}?domain=D` read and delete. Each is performed at once against the domain's management
//! host; APNs' status and reason come back in the error body as `apns_status` and `apns_reason`.

use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::header::{CONTENT_TYPE, LOCATION, RETRY_AFTER};
use axum::http::{HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use herald_apns::broadcast::{ChannelId, StoragePolicy};
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::{ChannelError, ChannelManager};
use crate::broadcasts::api::Members;
use crate::inbound::rest::error::{
    UNPAIRED_SURROGATE, is_unpaired_surrogate, unpaired_surrogate_in, without_bom,
};
use crate::inbound::rest::query::Query;
use crate::inbound::rest::server::read_request_body;

/// Every (method, path) [`routes`] answers, as `docs/openapi.yaml` documents them (besides `/api/v1/channels/`
/// without an id, which [`routes`] answers only with a `400` saying the id is missing).
pub const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/v1/channels"),
    ("POST", "/api/v1/channels"),
    ("GET", "/api/v1/channels/{id}"),
    ("DELETE", "/api/v1/channels/{id}"),
];

/// The channel routes over `manager`. The channel id is the rest of the path, so an id with `/` may be sent
/// as it is or percent-encoded (`%2F`).
pub fn routes(manager: Arc<ChannelManager>) -> Router {
    Router::new()
        .route("/api/v1/channels", post(create).get(list))
        .route("/api/v1/channels/{*id}", get(read).delete(delete))
        .route(
            "/api/v1/channels/",
            get(missing_channel).delete(missing_channel),
        )
        .with_state(manager)
}

fn answer(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// A request herald refuses before any call (`400`): the text names the field or parameter, and `domain` is the
/// domain the request named, when it named one (readable, not empty), as in every error of these routes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct BadRequest {
    message: String,
    domain: Option<String>,
}

impl BadRequest {
    fn new(message: impl Into<String>, domain: Option<&str>) -> Self {
        BadRequest {
            message: message.into(),
            domain: domain.map(str::to_owned),
        }
    }
}

fn bad_request(e: BadRequest) -> Response {
    let mut body = json!({ "error": e.message });
    if let Some(domain) = e.domain {
        body["domain"] = json!(domain);
    }
    answer(StatusCode::BAD_REQUEST, body)
}

/// An operation's failure: the mapped status, the text, and APNs' status and reason when APNs answered. A create
/// that may have been done at APNs says so (`channel_may_exist`) and gets no `retry-after`: only a 503 has one, and
/// it is never the answer to such a create.
fn failure(e: &ChannelError, domain: &str) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut body = json!({ "error": e.to_string(), "domain": domain });
    if let Some((apns_status, reason)) = e.apns() {
        body["apns_status"] = json!(apns_status);
        body["apns_reason"] = json!(reason);
    }
    if e.may_exist() {
        body["channel_may_exist"] = json!(true);
    }
    let mut response = answer(status, body);
    if status == StatusCode::SERVICE_UNAVAILABLE && !e.may_exist() {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// The `domain` query parameter, the only one these routes take (trimmed, in lower case). A parameter given more
/// than once is refused naming it (the domain given twice is no domain the refusal could carry).
fn domain_param(raw: Option<&str>) -> Result<String, BadRequest> {
    let query = Query::parse(raw);
    let domain = query.get("domain").map(|d| d.trim().to_ascii_lowercase());
    let named = domain.as_deref().filter(|d| !d.is_empty());
    if let Some(other) = query.names().find(|name| *name != "domain") {
        return Err(BadRequest::new(
            format!("unknown parameter {other:?}; these routes take only domain"),
            named,
        ));
    }
    if let Err(e) = query.once_each() {
        return Err(BadRequest::new(e.to_string(), named));
    }
    match domain {
        Some(d) if !d.is_empty() => Ok(d),
        Some(_) => Err(BadRequest::new(
            "domain: empty; name the app's domain",
            None,
        )),
        None => Err(BadRequest::new(
            "domain: missing; add ?domain=D naming the app's domain",
            None,
        )),
    }
}

/// The refusal of a read or delete whose path names no channel.
const MISSING_CHANNEL: &str =
    "channel id: missing; name the channel in the path: /api/v1/channels/ID?domain=D";

/// The channel id the path captured, or what is wrong with it: a capture that is not UTF-8 text once
/// percent-decoded (`%FF`) is refused naming the path's last segment as sent.
fn captured_id(id: Result<Path<String>, PathRejection>, uri: &Uri) -> Result<String, String> {
    match id {
        Ok(Path(id)) => Ok(id),
        Err(_) => {
            let path = uri.path();
            let sent = path
                .split_once("/api/v1/channels/")
                .map_or(path, |(_, rest)| rest);
            Err(format!(
                "channel id: {sent:?} (as sent) is not UTF-8 text once percent-decoded, so not base64 (base64: A-Z a-z 0-9 + / with = padding)"
            ))
        }
    }
}

/// The channel id of the path.
fn channel_param(id: &str) -> Result<ChannelId, String> {
    if id.is_empty() {
        return Err(MISSING_CHANNEL.into());
    }
    // The capture is the id itself: a base64 id may start with `/` (sent raw or as `%2F`), so nothing is trimmed.
    ChannelId::parse(id).map_err(|e| format!("channel id: {e}"))
}

/// Percent-encodes a channel id for a path segment (`+`, `/` and `=` of base64).
fn encode(id: &str) -> String {
    let mut out = String::with_capacity(id.len() + 8);
    for c in id.chars() {
        match c {
            '+' => out.push_str("%2B"),
            '/' => out.push_str("%2F"),
            '=' => out.push_str("%3D"),
            c => out.push(c),
        }
    }
    out
}

/// What a create asks for.
struct CreateRequest {
    domain: String,
    policy: StoragePolicy,
}

/// Reads a create body: `{"domain": D, "message_storage_policy": 0|1, "push_type": "liveactivity"}` (push type
/// optional; the only one APNs takes). Every error names the field, and carries the domain when the body names one.
fn parse_create(body: &[u8]) -> Result<CreateRequest, BadRequest> {
    let body = without_bom(body);
    let raw: &RawValue = serde_json::from_slice(body).map_err(|e| {
        BadRequest::new(
            format!(
                "invalid JSON: {e}; send {{\"domain\": \"…\", \"message_storage_policy\": 0 or 1, \"push_type\": \"liveactivity\"}}"
            ),
            None,
        )
    })?;
    if !raw.get().starts_with('{') {
        return Err(BadRequest::new("the body must be a JSON object", None));
    }
    // Read from the body itself, so that a position is the body's.
    let Members(raw_members) = serde_json::from_slice(body).map_err(|e| {
        let message = if is_unpaired_surrogate(&e) {
            format!(
                "a member name {UNPAIRED_SURROGATE} at line {} column {}",
                e.line(),
                e.column()
            )
        } else {
            format!("invalid JSON: {e}")
        };
        BadRequest::new(message, None)
    })?;
    let members: Vec<(String, Result<Value, String>)> = raw_members
        .into_iter()
        .map(|(key, value)| (key, member_value(value)))
        .collect();
    // The domain as the request names it, for every error that follows (none when it is named twice).
    let mut domains = members.iter().filter(|(key, _)| key == "domain");
    let named = match (domains.next(), domains.next()) {
        (Some((_, Ok(Value::String(d)))), None) if !d.trim().is_empty() => {
            Some(d.trim().to_ascii_lowercase())
        }
        _ => None,
    };
    let refuse = |message: String| Err(BadRequest::new(message, named.as_deref()));
    // In the order sent, as `POST /api/v1/broadcast` reads its fields: a field the route does not take, or one
    // given twice (which one would apply is ambiguous; a channel's policy can never be changed afterwards).
    let mut fields = Map::new();
    for (key, value) in members {
        if !matches!(
            key.as_str(),
            "domain" | "message_storage_policy" | "push_type"
        ) {
            return refuse(format!(
                "unknown field {key:?}; use domain, message_storage_policy and push_type"
            ));
        }
        if fields.contains_key(&key) {
            return refuse(format!("{key}: given more than once; send each field once"));
        }
        match value {
            Ok(value) => fields.insert(key, value),
            Err(why) => return refuse(format!("{key}: {why}")),
        };
    }
    let domain = match (fields.get("domain"), &named) {
        (_, Some(d)) => d.clone(),
        (Some(Value::String(_)), None) => {
            return refuse("domain: empty; name the app's domain".into());
        }
        (Some(other), None) => return refuse(format!("domain: {other} is not a string")),
        (None, None) => return refuse("domain: missing; name the app's domain".into()),
    };
    let policy = match fields.get("message_storage_policy") {
        Some(Value::Number(n)) => match n.as_i64().map(StoragePolicy::try_from) {
            Some(Ok(p)) => p,
            _ => {
                return refuse(format!(
                    "message_storage_policy: {n} is not 0 (no message stored) or 1 (the most recent message stored)"
                ));
            }
        },
        Some(other) => {
            return refuse(format!(
                "message_storage_policy: {other} is not 0 (no message stored) or 1 (the most recent message stored)"
            ));
        }
        None => {
            return refuse(
                "message_storage_policy: missing; 0 (no message stored) or 1 (the most recent message stored)"
                    .into(),
            );
        }
    };
    match fields.get("push_type") {
        None => {}
        Some(Value::String(t)) if t.eq_ignore_ascii_case("liveactivity") => {}
        Some(other) => {
            return refuse(format!(
                "push_type: {other} is not allowed; channels carry only liveactivity"
            ));
        }
    }
    Ok(CreateRequest { domain, policy })
}

/// A member's value read as a JSON value, or why it cannot be: the body's grammar lets a string escape half a
/// surrogate pair alone (`"\ud800"`), which is no text.
fn member_value(raw: &RawValue) -> Result<Value, String> {
    serde_json::from_str(raw.get()).map_err(|e| {
        if is_unpaired_surrogate(&e) {
            unpaired_surrogate_in(raw.get())
        } else {
            e.to_string()
        }
    })
}

async fn create(State(manager): State<Arc<ChannelManager>>, request: Request) -> Response {
    // Within the listener's max_request_size (413) and body_timeout (408), as the injection routes.
    let body = match read_request_body(request).await {
        Ok((_, body)) => body,
        Err(e) => return e.into_response(),
    };
    let request = match parse_create(&body) {
        Ok(r) => r,
        Err(message) => return bad_request(message),
    };
    match manager.create(&request.domain, request.policy).await {
        Ok(created) => {
            let id = created.channel.as_str();
            let mut response = answer(
                StatusCode::CREATED,
                json!({
                    "domain": request.domain,
                    "bundle_id": created.bundle_id,
                    "channel_id": id,
                    "message_storage_policy": request.policy.as_u8(),
                    "push_type": "liveactivity",
                }),
            );
            let location = format!("/api/v1/channels/{}?domain={}", encode(id), request.domain);
            if let Ok(v) = HeaderValue::try_from(location) {
                response.headers_mut().insert(LOCATION, v);
            }
            response
        }
        Err(e) => failure(&e, &request.domain),
    }
}

async fn list(State(manager): State<Arc<ChannelManager>>, RawQuery(raw): RawQuery) -> Response {
    let domain = match domain_param(raw.as_deref()) {
        Ok(d) => d,
        Err(message) => return bad_request(message),
    };
    match manager.list(&domain).await {
        Ok((bundle, ids)) => {
            let ids: Vec<&str> = ids.iter().map(ChannelId::as_str).collect();
            answer(
                StatusCode::OK,
                json!({ "domain": domain, "bundle_id": bundle, "channels": ids }),
            )
        }
        Err(e) => failure(&e, &domain),
    }
}

/// The `domain` query parameter and the channel id of the path (as [`captured_id`] gives it), or what is wrong
/// with the first bad one.
fn domain_and_channel(
    raw: Option<&str>,
    id: Result<String, String>,
) -> Result<(String, ChannelId), BadRequest> {
    let domain = domain_param(raw)?;
    match id.and_then(|id| channel_param(&id)) {
        Ok(id) => Ok((domain, id)),
        Err(message) => Err(BadRequest::new(message, Some(&domain))),
    }
}

/// `GET` or `DELETE /api/v1/channels/` with no id: the id is missing (after the `domain` parameter's own checks,
/// as for a bad id).
async fn missing_channel(RawQuery(raw): RawQuery) -> Response {
    bad_request(match domain_param(raw.as_deref()) {
        Ok(domain) => BadRequest::new(MISSING_CHANNEL, Some(&domain)),
        Err(e) => e,
    })
}

async fn read(
    State(manager): State<Arc<ChannelManager>>,
    uri: Uri,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    let (domain, id) = match domain_and_channel(raw.as_deref(), captured_id(id, &uri)) {
        Ok(both) => both,
        Err(message) => return bad_request(message),
    };
    match manager.read(&domain, &id).await {
        Ok(info) => answer(
            StatusCode::OK,
            json!({
                "domain": domain,
                "channel_id": id.as_str(),
                "message_storage_policy": info.policy.as_u8(),
                "push_type": info.push_type.to_ascii_lowercase(),
            }),
        ),
        Err(e) => failure(&e, &domain),
    }
}

async fn delete(
    State(manager): State<Arc<ChannelManager>>,
    uri: Uri,
    id: Result<Path<String>, PathRejection>,
    RawQuery(raw): RawQuery,
) -> Response {
    let (domain, id) = match domain_and_channel(raw.as_deref(), captured_id(id, &uri)) {
        Ok(both) => both,
        Err(message) => return bad_request(message),
    };
    match manager.delete(&domain, &id).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => failure(&e, &domain),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_channel_id_that_starts_with_a_slash_is_kept_whole() {
        // One base64 id in 64 starts with `/`: it must reach APNs as it is.
        let id = channel_param("/3N0LXNyY2gtY2hubA==").unwrap();
        assert_eq!(id.as_str(), "/3N0LXNyY2gtY2hubA==");
    }

    #[test]
    fn create_bodies_are_checked_field_by_field() {
        let ok = parse_create(
            br#"{"domain":"Apps.Example","message_storage_policy":1,"push_type":"LiveActivity"}"#,
        )
        .unwrap();
        assert_eq!(ok.domain, "apps.example");
        assert_eq!(ok.policy, StoragePolicy::MostRecentMessage);
        let no_type = parse_create(br#"{"domain":"a","message_storage_policy":0}"#).unwrap();
        assert_eq!(no_type.policy, StoragePolicy::NoStorage);
        for (body, field) in [
            (&br#"{"message_storage_policy":0}"#[..], "domain: missing"),
            (
                br#"{"domain":" ","message_storage_policy":0}"#,
                "domain: empty",
            ),
            (br#"{"domain":"a"}"#, "message_storage_policy: missing"),
            (
                br#"{"domain":"a","message_storage_policy":2}"#,
                "message_storage_policy: 2",
            ),
            (
                br#"{"domain":"a","message_storage_policy":"1"}"#,
                "message_storage_policy: \"1\"",
            ),
            (
                br#"{"domain":"a","message_storage_policy":1,"push_type":"alert"}"#,
                "push_type: \"alert\"",
            ),
            (
                br#"{"domain":"a","message_storage_policy":1,"storage":1}"#,
                "unknown field \"storage\"",
            ),
            (br#"{"domain":"a","#, "invalid JSON"),
            (br#"[1]"#, "JSON object"),
        ] {
            let err = parse_create(body)
                .err()
                .map(|e| e.message)
                .unwrap_or_default();
            assert!(err.starts_with(field) || err.contains(field), "{err}");
        }
    }

    /// A refused create carries the domain its body names (trimmed, in lower case), whatever field is wrong; a
    /// body that names no readable domain gives none.
    #[test]
    fn refused_creates_carry_the_domain_they_name() {
        for body in [
            &br#"{"domain":" Apps.Example "}"#[..],
            br#"{"domain":"apps.example","message_storage_policy":2}"#,
            br#"{"domain":"apps.example","message_storage_policy":1,"push_type":"alert"}"#,
            br#"{"message_storage_policy":1,"storage":1,"domain":"apps.example"}"#,
        ] {
            let err = parse_create(body).err().unwrap();
            assert_eq!(err.domain.as_deref(), Some("apps.example"), "{err:?}");
        }
        for body in [
            &br#"{"message_storage_policy":1}"#[..],
            br#"{"domain":" ","message_storage_policy":1}"#,
            br#"{"domain":7,"message_storage_policy":1}"#,
            br#"{"domain":"a","#,
            br#"["apps.example"]"#,
        ] {
            let err = parse_create(body).err().unwrap();
            assert_eq!(err.domain, None, "{err:?}");
        }
    }

    #[test]
    fn query_takes_only_a_domain() {
        assert_eq!(domain_param(Some("domain=A.example")).unwrap(), "a.example");
        assert!(domain_param(None).is_err());
        assert!(domain_param(Some("domain=")).is_err());
        assert!(domain_param(Some("domain=a&x=1")).is_err());
        // A refusal carries the domain the query names, wherever it stands.
        for query in ["domain=A.example&x=1", "x=1&domain=a.example"] {
            let err = domain_param(Some(query)).unwrap_err();
            assert_eq!(err.domain.as_deref(), Some("a.example"), "{query}: {err:?}");
            assert!(
                err.message.starts_with("unknown parameter \"x\""),
                "{err:?}"
            );
        }
        assert_eq!(domain_param(Some("domain=&x=1")).unwrap_err().domain, None);
        let err = domain_and_channel(Some("domain=a.example"), Ok("a b".into())).unwrap_err();
        assert_eq!(err.domain.as_deref(), Some("a.example"), "{err:?}");
    }

    /// A field given twice is refused, as `POST /api/v1/broadcast` and the push routes refuse one, rather than the
    /// last one applying (a channel's storage policy cannot be changed once it is created, docs/apns-protocol.md
    /// §6.2); the refusal carries the domain when the body names one once.
    #[test]
    fn a_field_given_twice_is_refused() {
        for (body, field, domain) in [
            (
                &br#"{"domain":"Cert.Example","message_storage_policy":1,"message_storage_policy":0}"#[..],
                "message_storage_policy",
                Some("cert.example"),
            ),
            (
                br#"{"message_storage_policy":1,"push_type":"liveactivity","domain":"a","push_type":"LiveActivity"}"#,
                "push_type",
                Some("a"),
            ),
            (
                br#"{"domain":"a","message_storage_policy":1,"domain":"b"}"#,
                "domain",
                None,
            ),
            // Spelled differently, the same key once decoded.
            (
                br#"{"domain":"a","message_storage_policy":1,"message_storage_polic\u0079":1}"#,
                "message_storage_policy",
                Some("a"),
            ),
        ] {
            let err = parse_create(body).err().unwrap();
            assert_eq!(
                err.message,
                format!("{field}: given more than once; send each field once")
            );
            assert_eq!(err.domain.as_deref(), domain, "{err:?}");
        }
        // A key repeated inside a value is not the request's: the value is refused for its kind.
        let err = parse_create(br#"{"domain":"a","message_storage_policy":{"x":1,"x":2}}"#)
            .err()
            .unwrap();
        assert!(
            err.message.starts_with("message_storage_policy: {"),
            "{err:?}"
        );
    }

    /// A string that escapes half a surrogate pair alone is no text: the create is refused naming the field and
    /// saying so, as `POST /api/v1/push` says it, never as if the value were `null`; the refusal carries the domain
    /// when that is not the field at fault. One in a member name is refused as such, with its place in the body.
    #[test]
    fn an_unpaired_surrogate_is_refused_naming_the_field() {
        for (body, field, domain) in [
            (
                &br#"{"domain":"\ud800","message_storage_policy":1}"#[..],
                "domain",
                None,
            ),
            (
                br#"{"domain":"a.example","message_storage_policy":1,"push_type":"\ud800"}"#,
                "push_type",
                Some("a.example"),
            ),
            (
                br#"{"domain":"a.example","message_storage_policy":1,"push_type":"live\udc00"}"#,
                "push_type",
                Some("a.example"),
            ),
        ] {
            let err = parse_create(body).err().unwrap();
            assert_eq!(
                err.message,
                format!("{field}: the string {UNPAIRED_SURROGATE}"),
                "{err:?}"
            );
            assert!(!err.message.contains("null"), "{err:?}");
            assert_eq!(err.domain.as_deref(), domain, "{err:?}");
        }
        let err = parse_create(br#"{"domain":"a.example","message_storage_policy":["\ud800"]}"#)
            .err()
            .unwrap();
        assert_eq!(
            err.message,
            format!("message_storage_policy: a string in the value {UNPAIRED_SURROGATE}")
        );
        let err = parse_create(b"\xEF\xBB\xBF{\"domain\":\"a\",\n \"\\ud800\":1}")
            .err()
            .unwrap();
        assert_eq!(
            err.message,
            format!("a member name {UNPAIRED_SURROGATE} at line 2 column 9")
        );
    }

    /// A query parameter given twice is refused naming it, rather than one of its values applying; the refusal
    /// carries the domain only when the domain is given once.
    #[test]
    fn a_parameter_given_twice_is_refused() {
        let err = domain_param(Some("domain=a.example&domain=b.example")).unwrap_err();
        assert_eq!(
            err,
            BadRequest::new(
                "domain: given more than once; give each parameter once",
                None
            )
        );
        let err = domain_param(Some("domain=a.example&d%6Fmain=a.example")).unwrap_err();
        assert!(
            err.message.starts_with("domain: given more than once"),
            "{err:?}"
        );
        // An unknown parameter is named as such first, given once or more.
        let err = domain_param(Some("domain=a.example&x=1&x=2")).unwrap_err();
        assert!(
            err.message.starts_with("unknown parameter \"x\""),
            "{err:?}"
        );
        assert_eq!(err.domain.as_deref(), Some("a.example"));
        let err = domain_and_channel(Some("domain=a&domain=a"), Ok("abc=".into())).unwrap_err();
        assert!(
            err.message.starts_with("domain: given more than once"),
            "{err:?}"
        );
    }

    #[test]
    fn a_path_without_a_channel_id_says_it_is_missing() {
        let err = domain_and_channel(Some("domain=a.example"), Ok(String::new())).unwrap_err();
        assert_eq!(err.message, MISSING_CHANNEL);
        assert!(err.message.starts_with("channel id: missing"), "{err:?}");
        assert_eq!(err.domain.as_deref(), Some("a.example"));
    }

    #[test]
    fn channel_ids_are_encoded_for_paths() {
        assert_eq!(encode("ab+/c=="), "ab%2B%2Fc%3D%3D");
        assert!(channel_param("/ab=").is_ok());
        assert!(channel_param("a b").is_err());
    }
}
